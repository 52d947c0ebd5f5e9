/*
 * inv_store: the inventory service's only SQL. every write runs in one
 * transaction with its audit rows and its outbox events (inv_events.h).
 */
#ifndef INV_STORE_H
#define INV_STORE_H

#include "cm_db.h"
#include "cm_outbox.h"
#include "inv_domain.h"

#include <stddef.h>
#include <stdint.h>

typedef struct inv_level {
    char sku[INV_SKU_MAX + 1];
    int64_t available, reserved, sold, on_hand, version;
    int64_t updated_ms; /* 0: never stocked */
} inv_level;

typedef struct inv_change {
    char change_id[40];
    int kind;
    int64_t da, dr, ds;
    inv_level level;
    char order_id[INV_KEY_MAX + 1];
    char request_id[INV_KEY_MAX + 1];
    char reason[INV_REASON_MAX + 1];
    char actor[INV_ACTOR_MAX + 1];
    char principal[256];
    int64_t occurred_ms;
} inv_change;

typedef struct inv_resv_line {
    char sku[INV_SKU_MAX + 1];
    int64_t qty;
    char flash_sale_id[40];
    int64_t unit_cost;     /* the sku's cost price when reserved */
    char cost_currency[4]; /* "" when the sku had no cost */
} inv_resv_line;

typedef struct inv_resv {
    char order_id[INV_KEY_MAX + 1];
    int state;
    char buyer_id[INV_BUYER_MAX + 1];
    int flash;
    int64_t created_ms, expires_ms, resolved_ms;
    size_t nlines;
    inv_resv_line lines[INV_LINES_MAX];
} inv_resv;

typedef struct inv_shortage {
    char sku[INV_SKU_MAX + 1];
    int64_t requested, available;
    char flash_sale_id[40];
} inv_shortage;

/* outcomes of one reservation in a batch */
enum {
    INV_R_RESERVED = 0,
    INV_R_SAME = 1,      /* the order already has this reservation: a retry */
    INV_R_DIFFERENT = 2, /* the order has a reservation with another body */
    INV_R_SOLD_OUT = 3,
    INV_R_TOMBSTONE = 4, /* the order was released before it was reserved */
    INV_R_BUYER_REQUIRED = 5,
    INV_R_LIMIT = 6,
    INV_R_PENDING = 99
};

typedef struct inv_ev_ctx inv_ev_ctx; /* inv_events.h */

typedef struct inv_reserve_item {
    /* in */
    const inv_ev_ctx *ev; /* events on, and the call's trace (one process: on agrees) */
    const char *tenant, *order_id, *buyer_id, *body, *principal;
    int64_t ttl_ms;
    const inv_line *lines;
    size_t nlines;
    /* out; shortages points at room for nlines entries */
    int outcome;
    int64_t created_ms, expires_ms;
    inv_shortage *shortages;
    size_t nshort;
    int flash_batch;      /* decided by the flash-sale path: lines may carry a sale id */
    inv_resv_line *costs; /* optional, room for nlines: each line's cost (batch path) */
} inv_reserve_item;

/* called after commit for each sku whose available reached 0 (sold out)
 * or left 0 (back in stock: restock = 1) */
typedef void (*inv_stock_cb)(void *arg, const char *tenant, const char *sku, int restock);

/* reserves a batch in one transaction (see inv_reserve_batch in the
 * migration): each item gets its outcome. returns 0, or a CM_E* when the
 * transaction failed (then no item was reserved). */
int inv_store_reserve_batch(cm_db *db, inv_reserve_item *const *items, size_t n, inv_stock_cb cb,
                            void *arg);

/* confirm (to = INV_CONFIRMED) or release (INV_RELEASED) an order's
 * reservation; *outcome says whether it was refused. out gets the
 * reservation as it is after the call (unless NOT_FOUND). */
int inv_store_resolve(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const char *order_id,
                      int to, const char *principal, inv_resolve_outcome *outcome, inv_resv *out,
                      inv_stock_cb cb, void *arg);

/* the same inside the caller's open transaction (the inbox consumer's) */
int inv_store_resolve_tx(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const char *order_id,
                         int to, const char *principal, inv_resolve_outcome *outcome,
                         inv_resv *out);

/* one OrderPaid of the order-event consumer's batch */
typedef struct inv_confirm_item {
    const inv_ev_ctx *ec; /* events on, and the event's trace for the ones it causes */
    const char *tenant, *order_id;
    int left; /* out: 1 when not confirmed here (no reservation, resolved, due): the
               * per-event path (inv_store_resolve_tx) decides it */
} inv_confirm_item;

/* confirms the items' ACTIVE reservations not yet due in the caller's open
 * transaction, in array order, with their events, as inv_store_resolve_tx
 * would one by one; marks the others left. 0 or a CM_E*. */
int inv_store_confirm_batch(cm_db *db, inv_confirm_item *items, size_t n, const char *principal);

/* expires up to limit due reservations (any tenant), skipping rows other
 * sweepers hold; *expired gets the count. */
int inv_store_expire_due(cm_db *db, const inv_ev_ctx *ec, int limit, int *expired, inv_stock_cb cb,
                         void *arg);

/* writes rows staged by inv_ev_ctx.stage into the outbox of the caller's
 * open transaction, one statement, and wakes the relay after its commit;
 * closes rows (free or re-init them after). 0, CM_ENOMEM or the database
 * error. */
int inv_store_write_events(cm_db *db, cm_outbox_rows *rows);
int inv_store_get_reservation(cm_db *db, const char *tenant, const char *order_id, inv_resv *out);
int inv_store_get_stock(cm_db *db, const char *tenant, const char *sku, inv_level *out);

/* admin set/adjust. verdict: 0 applied, 1 replay of request_id, 2
 * request_id reused with another body, 3 version mismatch, 4 unknown sku,
 * 5 available would go negative, 6 a set would create a sku beyond the
 * tenant's sku_quota (nothing written). */
enum {
    INV_A_APPLIED,
    INV_A_REPLAY,
    INV_A_REUSED,
    INV_A_VERSION,
    INV_A_NOT_FOUND,
    INV_A_NEGATIVE,
    INV_A_QUOTA
};
typedef struct inv_admin_req {
    const inv_ev_ctx *ev; /* events on, and the call's trace */
    const char *tenant, *request_id, *body, *sku, *reason, *actor, *principal;
    int kind;
    int64_t value, expected_version;
    /* a set that creates a sku: how many skus the tenant may have, counted
     * in the creating transaction under a lock per tenant (README: quotas) */
    long long sku_quota;
} inv_admin_req;
/* SetCost: verdict as for inv_store_admin (INV_A_NOT_FOUND: never
 * stocked). change gets the change written (or replayed); the cost after it
 * is change->unit_cost / currency / cost_version. */
typedef struct inv_cost_change {
    char change_id[40];
    char sku[INV_SKU_MAX + 1];
    int64_t unit_cost, previous_cost, cost_version;
    char currency[4], previous_currency[4];
    char request_id[INV_KEY_MAX + 1];
    char reason[INV_REASON_MAX + 1];
    char actor[INV_ACTOR_MAX + 1];
    char principal[256];
    int64_t occurred_ms;
} inv_cost_change;
typedef struct inv_cost_req {
    const char *tenant, *request_id, *body, *sku, *currency, *reason, *actor, *principal;
    int64_t unit_cost, expected_version;
} inv_cost_req;
int inv_store_set_cost(cm_db *db, const inv_cost_req *r, int *verdict, inv_cost_change *change);

/* a sku's cost (unit_cost, currency, cost_version in *cur) and up to cap of
 * its changes, newest first; CM_ENOTFOUND when never stocked */
int inv_store_get_cost(cm_db *db, const char *tenant, const char *sku, inv_cost_change *cur,
                       inv_cost_change *changes, size_t cap, size_t *n);

int inv_store_admin(cm_db *db, const inv_admin_req *r, int *verdict, inv_change *change,
                    inv_level *level, inv_stock_cb cb, void *arg);

typedef struct inv_breach {
    int invariant; /* the proto's Invariant enum value */
    int64_t expected, actual;
    inv_level level;
    char flash_sale_id[40];
} inv_breach;
/* checks the invariants for a tenant (NULL: every tenant) and the given
 * skus (none: all) in one snapshot. fills at most cap breaches; *total
 * counts all found. */
int inv_store_check(cm_db *db, const char *tenant, const char *const *skus, size_t nskus,
                    inv_breach *out, size_t cap, size_t *total, int64_t *checked, int64_t *at_ms);

/* flash sales */
typedef struct inv_sale {
    char flash_sale_id[40];
    char sku[INV_SKU_MAX + 1];
    int64_t starts_ms, ends_ms, sale_stock, per_buyer_limit, reserved, sold, version;
    int64_t created_ms, updated_ms, now_ms;
} inv_sale;

typedef struct inv_sale_req {
    const inv_ev_ctx *ev; /* events on, and the call's trace */
    const char *tenant, *request_id, *body, *sku;
    const char *flash_sale_id; /* NULL or "": create; else update this sale */
    int64_t starts_ms, ends_ms, sale_stock, per_buyer_limit;
    int64_t expected_version; /* updates: compare-and-set, 0 = none */
    /* a create: how many sales not yet ended the tenant may have, counted
     * under a lock per tenant (README: quotas) */
    long long sale_quota;
} inv_sale_req;

/* creates or updates a sale. verdict: created, replay of request_id (out
 * is the sale as it is now), request_id reused with another body, overlaps
 * another sale of the sku, updated, unknown flash_sale_id, version
 * mismatch, or refused by inv_plan_sale_update (*refusal says why, *held
 * is the sale's reserved + sold), or a create over the tenant's
 * sale_quota (nothing written). */
enum {
    INV_S_CREATED,
    INV_S_REPLAY,
    INV_S_REUSED,
    INV_S_OVERLAP,
    INV_S_UPDATED,
    INV_S_NOT_FOUND,
    INV_S_VERSION,
    INV_S_REFUSED,
    INV_S_QUOTA
};
int inv_store_sale_configure(cm_db *db, const inv_sale_req *q, int *verdict, int *refusal,
                             int64_t *held, inv_sale *out);
int inv_store_sale_get(cm_db *db, const char *tenant, const char *id, inv_sale *out);
/* a page of the audit trail of a tenant, newest first (occurred_at, then
 * change_id, descending). empty sku / order_id and nkinds = 0 filter
 * nothing; from_us / to_us (microseconds since the epoch) bound occurred_at
 * when has_from / has_to (from inclusive, to exclusive). after_id: the
 * change_id the previous page ended with, or NULL for the first page. */
typedef struct inv_change_query {
    const char *tenant, *sku, *order_id, *after_id;
    const int *kinds;
    size_t nkinds;
    int has_from, has_to;
    int64_t from_us, to_us;
} inv_change_query;

/* fills up to cap changes into out, *n of them, and sets *more when rows
 * follow. CM_ENOTFOUND when after_id is not a change of the tenant. */
int inv_store_list_changes(cm_db *db, const inv_change_query *q, inv_change *out, size_t cap,
                           size_t *n, int *more);

/* a page of a tenant's flash sales, most recent starts_at first (then
 * flash_sale_id, descending). empty sku and nstates = 0 filter nothing;
 * states are the proto's FlashSaleState values, derived from now() and the
 * counters as pb_sale does. after_id as above; CM_ENOTFOUND when unknown. */
int inv_store_list_sales(cm_db *db, const char *tenant, const char *sku, const int *states,
                         size_t nstates, const char *after_id, inv_sale *out, size_t cap, size_t *n,
                         int *more);
#endif
