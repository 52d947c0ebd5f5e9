/*
 * inv_domain: the inventory service's pure decisions (no i/o): input
 * validation, the canonical body used for idempotency, the reservation
 * state machine, stock arithmetic. unit-tested without a database.
 */
#ifndef INV_DOMAIN_H
#define INV_DOMAIN_H

#include <stddef.h>
#include <stdint.h>

#define INV_SKU_MAX 64
#define INV_KEY_MAX 64
#define INV_LINES_MAX 100
#define INV_BATCH_GET_MAX 500
#define INV_BATCH_RESERVE_MAX 100 /* requests of one BatchReserve */
#define INV_QTY_MAX 1000000000LL  /* one line, and any counter change */
#define INV_TTL_MIN_MS 1000LL
#define INV_TTL_MAX_MS (7LL * 24 * 3600 * 1000)
#define INV_TTL_DEFAULT_MS (15LL * 60 * 1000)
#define INV_REASON_MAX 256
#define INV_ACTOR_MAX 128
#define INV_BUYER_MAX 128

/* reservation states, as stored and as in the proto enum */
enum { INV_ACTIVE = 1, INV_CONFIRMED = 2, INV_RELEASED = 3, INV_EXPIRED = 4 };

/* stock change kinds, as stored and as in the proto enum */
enum {
    INV_KIND_SET = 1,
    INV_KIND_ADJUST = 2,
    INV_KIND_RESERVE = 3,
    INV_KIND_CONFIRM = 4,
    INV_KIND_RELEASE = 5,
    INV_KIND_EXPIRE = 6
};

typedef struct inv_line {
    const char *sku;
    int64_t qty;
} inv_line;

/* a field violation: the field path ("lines[2].quantity") and why */
typedef struct inv_violation {
    char field[64];
    char why[128];
} inv_violation;

/* 1 when s is 1-max characters from [A-Za-z0-9._:-] */
int inv_valid_key(const char *s, size_t max);

/* checks a reserve request; 0 or CM_EINVAL with v filled. ttl_ms < 0
 * means "unset" and is replaced by the default in *ttl_out. */
int inv_check_reserve(const char *order_id, const char *buyer_id, const inv_line *lines,
                      size_t nlines, int64_t ttl_ms, int64_t *ttl_out, inv_violation *v);

/* the canonical body of a reserve request (buyer, ttl, lines in order),
 * compared to decide retry (same) or ALREADY_EXISTS (different). writes at
 * most cap bytes; returns the length needed (>= cap: truncated). */
size_t inv_reserve_body(char *out, size_t cap, const char *buyer_id, int64_t ttl_ms,
                        const inv_line *lines, size_t nlines);

/* admin changes: kind SET (value = new available) or ADJUST (value =
 * delta). 0 or CM_EINVAL with v filled. */
int inv_check_admin(int kind, const char *request_id, const char *sku, int64_t value,
                    const char *reason, const char *actor, inv_violation *v);

/* SetCost: has_cost is 0 when unit_cost was not sent. 0 or CM_EINVAL
 * with v filled (the field named as in SetCostRequest). */
#define INV_COST_MAX 1000000000000LL /* one unit's cost, minor units */
int inv_check_cost(const char *request_id, const char *sku, int has_cost, int64_t unit_cost,
                   const char *currency, const char *reason, const char *actor,
                   int64_t expected_version, inv_violation *v);

/* the available delta an admin change makes from the current available;
 * CM_ESTATE when available would go negative, CM_EOVERFLOW past
 * INV_QTY_MAX * 1000. */
int inv_admin_delta(int kind, int64_t available, int64_t value, int64_t *delta);

/* what Confirm (to = INV_CONFIRMED) or Release (to = INV_RELEASED) does to
 * a reservation in `state` (0: none) whose expires_at passed (due). */
typedef enum inv_resolve_outcome {
    INV_RESOLVE_OK = 0,       /* apply (or nothing to do: already there) */
    INV_RESOLVE_NOT_FOUND,    /* confirm of an unknown order */
    INV_RESOLVE_EXPIRED,      /* confirm after expiry: refused */
    INV_RESOLVE_WAS_RELEASED, /* confirm after release: refused */
    INV_RESOLVE_WAS_CONFIRMED /* release after confirm: refused */
} inv_resolve_outcome;

typedef struct inv_resolve_plan {
    int expire_first; /* the reservation is past due: expire it now */
    int apply_to;     /* state to move to (0: no move) */
    int tombstone;    /* record a RELEASED tombstone (release of unknown order) */
    inv_resolve_outcome outcome;
} inv_resolve_plan;

inv_resolve_plan inv_plan_resolve(int state, int due, int to);

/* crossing zero, for SoldOut / BackInStock events */
int inv_sold_out_now(int64_t avail_before, int64_t avail_after);
int inv_back_in_stock(int64_t avail_before, int64_t avail_after);

/* one stock row's counters while a batch is admitted */
typedef struct inv_counter {
    const char *tenant, *sku;
    int64_t available, reserved, sold, on_hand, version;
    int64_t available0;        /* at the start of the batch */
    int64_t unit_cost;         /* the cost price on the row (migration 0006) */
    const char *cost_currency; /* "" when the sku has no cost */
    const char *tid;           /* the locked row's ctid, as text (the batch's update) */
} inv_counter;

/* admits one reservation against the batch's counters, all lines or none:
 * pos[i] is the counter of lines[i] (SIZE_MAX: never stocked, available
 * 0). returns 1 and moves every line's quantity from available to
 * reserved (version + 1 per line), or 0 and changes nothing; avail[i]
 * gets what line i could have had. */
int inv_admit(inv_counter *cs, const size_t *pos, const inv_line *lines, size_t n, int64_t *avail);

/* a flash sale's configuration, as ConfigureFlashSale sends it */
typedef struct inv_sale_cfg {
    const char *sku;
    int64_t starts_ms, ends_ms, sale_stock, per_buyer_limit;
} inv_sale_cfg;

/* what an update of an existing sale may do (ConfigureFlashSale with
 * flash_sale_id), decided at now_ms against the stored configuration cur
 * and the units the sale holds (reserved + sold) */
typedef enum inv_sale_update {
    INV_SU_OK = 0,
    INV_SU_SKU_CHANGED,     /* the sku of a sale never changes */
    INV_SU_ENDED,           /* an ended sale is final */
    INV_SU_STARTED,         /* starts_at is fixed once the sale started */
    INV_SU_STOCK_BELOW_HELD /* sale_stock below reserved + sold */
} inv_sale_update;

inv_sale_update inv_plan_sale_update(const inv_sale_cfg *cur, int64_t held,
                                     const inv_sale_cfg *next, int64_t now_ms);

/* the edge a change of sale_stock makes for a running sale holding held
 * units: 0 it becomes full (SoldOut), 1 it was full and is not any more
 * (BackInStock), -1 neither */
int inv_sale_stock_edge(int64_t held, int64_t old_stock, int64_t new_stock);

#endif
