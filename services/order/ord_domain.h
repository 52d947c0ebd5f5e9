/*
 * ord_domain: the order service's pure decisions (no i/o): input limits and
 * validation, totals in minor units, the canonical bodies compared for
 * idempotency, the order id derived from the caller's key, the state
 * machine, and the refund arithmetic. unit-tested without a database.
 */
#ifndef ORD_DOMAIN_H
#define ORD_DOMAIN_H

#include <stddef.h>
#include <stdint.h>

#define ORD_KEY_MAX 64   /* request_id, payment_id, refund_id, sku */
#define ORD_PARTY_MAX 64 /* buyer_id, merchant_id, channel_id, carrier */
#define ORD_REF_MAX 128  /* external_ref, provider_reference, tracking_number */
#define ORD_NOTE_MAX 256 /* cancel note, refund reason */
#define ORD_PROVIDER_MAX 32
#define ORD_LINES_MAX 100
#define ORD_QTY_MAX 1000000000LL /* inventory's per-line limit */
#define ORD_TIMEOUT_MIN_MS (60LL * 1000)
#define ORD_TIMEOUT_MAX_MS (72LL * 3600 * 1000)
/* auto_complete_after: whole seconds, 1 s (tests) to 90 days */
#define ORD_AUTO_COMPLETE_MIN_S 1LL
#define ORD_AUTO_COMPLETE_MAX_S (90LL * 86400)
/* who completed an order when the sweeper did */
#define ORD_AUTO_COMPLETE_ACTOR "system:auto-complete"
#define ORD_PAID_AT_SKEW_MS (5LL * 60 * 1000)
#define ORD_HASH_HEX 64 /* sha-256 as hex */

/* order states, as stored and as in commerce.order.v1.OrderState */
enum {
    ORD_PENDING = 1,
    ORD_PAID = 2,
    ORD_SHIPPED = 3,
    ORD_COMPLETED = 4,
    ORD_CANCELLED = 5,
    ORD_PART_REFUNDED = 6,
    ORD_REFUNDED = 7
};

/* cancel reasons, as in commerce.order.v1.CancelReason */
enum { ORD_CANCEL_PAYMENT_TIMEOUT = 3, ORD_CANCEL_OTHER = 5 };

/* refund scopes, as in commerce.order.v1.RefundScope */
enum { ORD_SCOPE_FULL = 1, ORD_SCOPE_LINES = 2, ORD_SCOPE_AMOUNT = 3 };

/* the operations keyed by request_id besides CreateOrder */
enum { ORD_OP_CANCEL = 1, ORD_OP_SHIP = 2, ORD_OP_COMPLETE = 3 };

typedef struct ord_line {
    char sku[ORD_KEY_MAX + 1];
    int64_t qty;
    int64_t unit_price;
    int64_t line_total;
    int64_t refunded_qty;
    int64_t refunded_amount;
    char flash_sale_id[40];
    int64_t unit_cost;     /* fixed at creation; < 0: unknown (no cost in the order currency) */
    int64_t cost_reversed; /* cumulative, by refunds (ord_cost_share) */
} ord_line;

typedef struct ord_refund_line {
    char sku[ORD_KEY_MAX + 1];
    int64_t qty;
    int64_t amount;
    int64_t cost; /* the line's cost this refund reverses */
} ord_refund_line;

typedef struct ord_refund {
    char refund_id[ORD_KEY_MAX + 1];
    int scope;
    int64_t amount;
    size_t nlines;
    ord_refund_line lines[ORD_LINES_MAX];
    char reason[ORD_NOTE_MAX * 4 + 1];
    int64_t created_ms;
    int64_t cost_reversed; /* sum of the lines' cost */
} ord_refund;

/* an order as stored; strings are NUL-terminated, times unix ms (0: unset) */
typedef struct ord_order {
    char order_id[40];
    char request_id[ORD_KEY_MAX + 1];
    int state;
    char buyer_id[ORD_PARTY_MAX * 4 + 1];
    char merchant_id[ORD_PARTY_MAX * 4 + 1];
    char channel_id[ORD_PARTY_MAX * 4 + 1];
    char currency[4];
    size_t nlines;
    ord_line lines[ORD_LINES_MAX];
    int64_t total;
    int64_t refunded;
    int flash;
    char external_ref[ORD_REF_MAX * 4 + 1];
    int64_t created_ms, updated_ms, deadline_ms, cancelled_ms, completed_ms;
    int64_t resv_expires_ms; /* when inventory lets the reservation go */
    int cancel_reason;
    char cancel_note[ORD_NOTE_MAX * 4 + 1];
    /* payment: payment_id[0] == 0 while unpaid */
    char payment_id[ORD_KEY_MAX + 1];
    int64_t pay_amount;
    char provider[ORD_PROVIDER_MAX + 1];
    char provider_ref[ORD_REF_MAX * 4 + 1];
    int64_t paid_ms, pay_recorded_ms;
    /* shipment: shipped_ms == 0 while not shipped */
    char carrier[ORD_PARTY_MAX * 4 + 1];
    char tracking[ORD_REF_MAX * 4 + 1];
    int64_t shipped_ms;
    /* "system:auto-complete", the CompleteOrder caller's principal, or
     * "caller"; "" while not completed */
    char completed_by[256];
    int64_t version;
    /* refunds, oldest first (loaded with the order when asked) */
    size_t nrefunds;
    ord_refund *refunds;
} ord_order;

/* a field violation: the field path ("lines[2].quantity") and why */
typedef struct ord_violation {
    char field[64];
    char why[160];
    char reason[40]; /* ErrorInfo reason; "" for plain INVALID_ARGUMENT */
} ord_violation;

/* 1 when s is 1-max characters from [A-Za-z0-9._:-] */
int ord_valid_key(const char *s, size_t max);

/* 1 when s is valid utf-8 of at most max characters without control
 * characters (and not empty when required) */
int ord_valid_text(const char *s, size_t max, int required);

/* one line of a create request as received */
typedef struct ord_line_in {
    const char *sku;
    int64_t qty;
    int has_price;
    int64_t unit_price;
    const char *price_currency;
} ord_line_in;

typedef struct ord_create_in {
    const char *request_id, *buyer_id, *merchant_id, *channel_id, *currency, *external_ref;
    const ord_line_in *lines;
    size_t nlines;
    int64_t timeout_ms; /* -1: unset (the service default applies) */
} ord_create_in;

/* checks a create request and fills o's request fields, lines and line
 * totals and the total (o is zeroed first). 0, or CM_EINVAL with v filled
 * (reason CURRENCY_MISMATCH for a unit price in another currency). amounts
 * that overflow int64 are CM_EINVAL on the line or on "lines". */
int ord_check_create(const ord_create_in *in, ord_order *o, ord_violation *v);

/* the canonical create body (everything the caller sent, in order) hashed:
 * a retry with the same request_id and the same hash is the same request */
void ord_create_hash(const ord_create_in *in, char out[ORD_HASH_HEX + 1]);

/* sha-256 hex of an arbitrary canonical body */
void ord_hash(const char *body, size_t len, char out[ORD_HASH_HEX + 1]);

/* the order id for (tenant, request_id, generation): a UUID (version 8,
 * RFC 9562) made from sha-256 of the three, so every retry of a create
 * reserves under the same id and inventory's Reserve, keyed by it, never
 * reserves twice. the generation moves on only when the id's reservation
 * was given up without an order (released after an inventory timeout,
 * expired, refused): the next attempt then reserves afresh under the next
 * id. generation 0 hashes no generation at all. */
#define ORD_ID_GENERATIONS 4
void ord_order_id(const char *tenant, const char *request_id, unsigned gen, char out[40]);

/* the payment deadline of a new order: created + timeout, but never later
 * than margin before the reservation expires (a retried create can reuse a
 * reservation made long before) */
int64_t ord_deadline(int64_t created_ms, int64_t timeout_ms, int64_t resv_expires_ms,
                     int64_t margin_ms);

/* outcomes of the state machine checks */
typedef enum ord_verdict {
    ORD_OK = 0,
    ORD_NOOP,       /* nothing to change (cancel of a cancelled order) */
    ORD_ILLEGAL,    /* FAILED_PRECONDITION ILLEGAL_STATE_TRANSITION */
    ORD_LATE,       /* payment for a cancelled or timed-out order */
    ORD_DOUBLE_PAY, /* the order is already paid by another payment */
    ORD_AMOUNT,     /* INVALID_ARGUMENT AMOUNT_MISMATCH */
    ORD_CURRENCY,   /* INVALID_ARGUMENT CURRENCY_MISMATCH */
    ORD_EXCEEDS,    /* FAILED_PRECONDITION REFUND_EXCEEDS_REFUNDABLE */
    ORD_BAD_INPUT,  /* INVALID_ARGUMENT, see the violation */
    ORD_KEY_REUSED, /* ALREADY_EXISTS IDEMPOTENCY_KEY_REUSED */
    ORD_NOT_FOUND,  /* NOT_FOUND */
    ORD_SAME,       /* an idempotent retry: answer with the order as it is */
    ORD_VERSION     /* ABORTED VERSION_MISMATCH (compare-and-set) */
} ord_verdict;

/* MarkPaid against the locked order (the payment id is not the order's):
 * ORD_OK, ORD_LATE (cancelled, or now past deadline + grace: the sweeper is
 * about to cancel and the reservation may lapse), ORD_DOUBLE_PAY,
 * ORD_CURRENCY or ORD_AMOUNT. */
ord_verdict ord_plan_pay(const ord_order *o, int64_t amount, const char *currency, int64_t now_ms,
                         int64_t grace_ms);

/* cancel by a caller: ORD_OK, ORD_NOOP (already cancelled) or ORD_ILLEGAL */
ord_verdict ord_plan_cancel(const ord_order *o);
/* ship: ORD_OK (new state in *to: SHIPPED, or PARTIALLY_REFUNDED kept) or
 * ORD_ILLEGAL */
ord_verdict ord_plan_ship(const ord_order *o, int *to);
/* complete: ORD_OK (*to: COMPLETED or PARTIALLY_REFUNDED kept) or
 * ORD_ILLEGAL */
ord_verdict ord_plan_complete(const ord_order *o, int *to);

/* a refund request as received */
typedef struct ord_refund_in {
    int scope;
    const char *const *skus;
    const int64_t *qtys;
    size_t nlines;
    int has_amount;
    int64_t amount;
    const char *amount_currency;
} ord_refund_in;

/* checks the request's shape, independent of the order: 0 or CM_EINVAL
 * with v filled */
int ord_check_refund(const ord_refund_in *in, ord_violation *v);

/* plans a refund of the locked order: fills r (scope, amount, per-line
 * breakdown in line order, lines untouched omitted) and returns ORD_OK,
 * ORD_ILLEGAL (not paid, or already REFUNDED), ORD_BAD_INPUT (unknown sku:
 * v filled), ORD_CURRENCY, or ORD_EXCEEDS (more than is left, in total or
 * on a line: v names the line). AMOUNT spreads over the lines pro rata to
 * what each has left (largest remainder, so the parts sum exactly). each
 * line's cost reversal (r->lines[k].cost, r->cost_reversed) is the
 * cumulative ord_cost_share after the refund minus before it, by refunded
 * amount over line_total (by refunded units for a line priced 0). */
ord_verdict ord_plan_refund(const ord_order *o, const ord_refund_in *in, ord_refund *r,
                            ord_violation *v);

/* applies a planned refund to o: line counters (with cost_reversed), refunded total, state
 * (REFUNDED when everything paid is refunded, else PARTIALLY_REFUNDED) */
void ord_apply_refund(ord_order *o, const ord_refund *r);

/* ---- gross margin (README.md, "Cost and margin") ---- */

/* records each line's unit cost from the reservation: costs[i] for line i
 * in ccys[i]; a cost in another currency than the order's, a missing one
 * (ccy NULL or "") or a negative one leaves the line's cost unknown (-1).
 * cost_reversed starts at 0. */
void ord_set_costs(ord_order *o, const int64_t *costs, const char *const *ccys);

/* a line's cost of goods: qty * unit_cost, 0 when unknown. CM_EOVERFLOW
 * past int64 (the line then counts 0 and is reported unknown). */
int ord_line_cost(const ord_line *l, int64_t *out);

/* the cost of the refunded part of a line: floor(cost * done / whole),
 * exact in 128 bits; cost when done >= whole, 0 when whole <= 0. used
 * cumulatively (after minus before), so partial refunds reverse floor(...)
 * each and the refund that completes the line reverses the remainder: the
 * reversals of a fully refunded line sum to its cost exactly. */
int64_t ord_cost_share(int64_t cost, int64_t done, int64_t whole);

/* the order's margin figures from its lines: cost (sum of known line
 * costs), reversed (sum of cost_reversed), margin = (total - refunded) -
 * (cost - reversed), complete = 1 when every line's cost is known */
typedef struct ord_margin {
    int64_t cost, reversed, margin;
    int complete;
} ord_margin;
ord_margin ord_order_margin(const ord_order *o);

/* tenant settings (PutTenantSettings) as received: the Durations' raw
 * seconds and nanos, so nothing is computed before it is checked */
#define ORD_ACTOR_MAX 128 /* characters */
typedef struct ord_settings_in {
    const char *request_id, *actor, *reason;
    int has_settings, has_timeout, has_flash, has_auto;
    int64_t timeout_s, flash_s, auto_s;
    int32_t timeout_nanos, flash_nanos, auto_nanos;
    int64_t expected_revision; /* 0: no check */
} ord_settings_in;

/* checks a PutTenantSettings request: 0, or CM_EINVAL with v naming the
 * field (settings.payment_timeout, ...). timeouts are whole seconds within
 * ORD_TIMEOUT_MIN_MS..ORD_TIMEOUT_MAX_MS, as CreateOrder's payment_timeout;
 * auto_complete_after, when set, whole seconds within
 * ORD_AUTO_COMPLETE_MIN_S..ORD_AUTO_COMPLETE_MAX_S */
int ord_check_settings(const ord_settings_in *in, ord_violation *v);

#endif
