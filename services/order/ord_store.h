/*
 * ord_store: the order service's only SQL. every state change runs in one
 * transaction that locks the order row, checks the idempotency key, applies
 * the change and writes its event to the outbox (ord_events.h), so a
 * committed change always has its event and concurrent changes of one
 * order are serialised by the row lock (no lost update).
 *
 * functions that take a verdict commit what they decided (a change, or a
 * rejected payment's record) and report the outcome in *verdict
 * (ord_verdict); their return value is 0 or a CM_E* for a database
 * failure. orders are filled in *o; refunds, when asked for, are allocated
 * in the arena a.
 */
#ifndef ORD_STORE_H
#define ORD_STORE_H

#include "cm_arena.h"
#include "cm_db.h"
#include "ord_domain.h"
#include "ord_events.h"

#include <stddef.h>
#include <stdint.h>

/* a new order to store. the caller fills o (created_ms set; version and
 * updated_ms are set here); inserted says whether it was stored. */
typedef struct ord_new {
    const char *tenant, *hash;
    const ord_ev_ctx *ev; /* its event's topic and the call's traceparent */
    ord_order *o;
    int inserted;
} ord_new;

/* the most creates one statement stores (ORDER_MAX_BATCH's ceiling) */
#define ORD_CREATE_MAX 256

/* stores new orders (PENDING_PAYMENT), each with its OrderCreated event, in
 * one statement (the group commit of CreateOrder, cm_group). an order whose request_id (or id)
 * exists already is skipped: inserted = 0, the caller looks it up. 0, or a CM_E* and nothing
 * stored. */
int ord_store_create_many(cm_db *db, ord_new *const *items, size_t n);

/* the order by id (CM_ENOTFOUND if none), with its refunds; with merchant
 * (not NULL) only an order of that merchant: another's is CM_ENOTFOUND. */
int ord_store_get(cm_db *db, const char *tenant, const char *order_id, const char *merchant,
                  cm_arena *a, ord_order *o);

/* 0 if an order with this id exists, CM_ENOTFOUND if not, or the error. */
int ord_store_exists(cm_db *db, const char *tenant, const char *order_id);

/* the order created by request_id and its body hash; CM_ENOTFOUND if none. */
int ord_store_get_by_request(cm_db *db, const char *tenant, const char *request_id, cm_arena *a,
                             ord_order *o, char hash[ORD_HASH_HEX + 1]);

typedef struct ord_pay_req {
    const ord_ev_ctx *ev; /* the events' topic and traceparent */
    const char *tenant, *order_id, *payment_id, *hash;
    int64_t amount;
    const char *currency;
    const char *provider, *provider_ref;
    int64_t paid_ms, now_ms;
    int64_t grace_ms; /* a payment after deadline + grace is too late */
} ord_pay_req;

/* MarkPaid: ORD_OK (paid now), ORD_SAME (this payment already recorded),
 * ORD_KEY_REUSED, ORD_NOT_FOUND, ORD_AMOUNT / ORD_CURRENCY (nothing
 * written), ORD_LATE / ORD_DOUBLE_PAY (the refusal is recorded in
 * payment_rejections; a late payment of an order past its deadline also
 * cancels the order). *o is the order after the call. */
int ord_store_pay(cm_db *db, const ord_pay_req *q, cm_arena *a, ord_order *o, int *verdict);

typedef struct ord_op_req {
    const ord_ev_ctx *ev; /* the events' topic and traceparent */
    const char *tenant, *order_id, *request_id, *hash;
    int op; /* ORD_OP_* */
    int64_t now_ms;
    /* cancel */
    int cancel_reason;
    const char *note;
    /* ship */
    const char *carrier, *tracking;
    int64_t at_ms; /* shipped_at / completed_at */
    /* complete: the order's completed_by ("" or NULL: "caller") */
    const char *completed_by;
} ord_op_req;

/* CancelOrder, ShipOrder, CompleteOrder: ORD_OK, ORD_NOOP (cancel of a
 * cancelled order), ORD_SAME (the request_id was applied before),
 * ORD_KEY_REUSED, ORD_NOT_FOUND or ORD_ILLEGAL. */
int ord_store_transition(cm_db *db, const ord_op_req *q, cm_arena *a, ord_order *o, int *verdict);

typedef struct ord_refund_req {
    const ord_ev_ctx *ev; /* the events' topic and traceparent */
    const char *tenant, *order_id, *refund_id, *hash, *reason;
    const ord_refund_in *in;
    int64_t now_ms;
} ord_refund_req;

/* RefundOrder: ORD_OK (*r is the new refund), ORD_SAME (*r is the refund
 * recorded before), ORD_KEY_REUSED, ORD_NOT_FOUND, or a refusal from
 * ord_plan_refund with v filled. */
int ord_store_refund(cm_db *db, const ord_refund_req *q, cm_arena *a, ord_order *o, ord_refund *r,
                     int *verdict, ord_violation *v);

/* the sweeper: cancels (CANCEL_REASON_PAYMENT_TIMEOUT) up to limit unpaid
 * orders whose deadline passed, each with its OrderCancelled event, in one
 * transaction; rows locked by another replica are skipped, so each order
 * is cancelled exactly once. */
int ord_store_cancel_due(cm_db *db, const ord_ev_ctx *ev, int64_t now_ms, int limit,
                         int *cancelled);

/* the auto-completing sweeper: completes (ord_plan_complete: SHIPPED ->
 * COMPLETED, a shipped PARTIALLY_REFUNDED order gets its completed_at) up
 * to limit shipped orders of tenants on the default window (default_s) and
 * up to limit of tenants with their own, whose shipped_at + that window is
 * past, in one transaction, each through the path CompleteOrder takes (the same row
 * change and OrderCompleted), completed_at = now_ms, completed_by
 * ORD_AUTO_COMPLETE_ACTOR. rows locked by another replica are skipped and a
 * completed order never matches again, so each order completes once. */
int ord_store_complete_due(cm_db *db, const ord_ev_ctx *ev, int64_t now_ms, int64_t default_s,
                           int limit, int *completed);

typedef struct ord_list_q {
    const char *tenant, *buyer_id, *merchant_id, *channel_id;
    const int *states;
    size_t nstates;
    int64_t from_ms, to_ms; /* created in [from, to); 0: open */
    /* paid: only orders with a payment, paid_at in [paid_from, paid_to)
     * (0: open); 0: paid or not */
    int paid;
    int64_t paid_from_ms, paid_to_ms;
    int64_t after_created_ms;
    const char *after_id; /* NULL: first page */
    int limit;
} ord_list_q;

/* up to q->limit orders (with refunds), newest first, after the cursor;
 * *more is 1 when another page follows. out has room for q->limit. */
int ord_store_list(cm_db *db, const ord_list_q *q, cm_arena *a, ord_order *out, size_t *n,
                   int *more);

/* the tenant's payment timeouts from tenant_settings; CM_ENOTFOUND when it
 * has no row (the service defaults apply). */
int ord_store_tenant_timeouts(cm_db *db, const char *tenant, int64_t *normal_ms, int64_t *flash_ms);

/* a tenant's settings row */
typedef struct ord_settings {
    int64_t timeout_s, flash_s;
    int64_t auto_s;   /* auto_complete_after; 0: the service default */
    int64_t revision; /* 0: no row of its own */
    int64_t updated_ms;
    char updated_by[256];
} ord_settings;

/* one audit entry of tenant_settings_changes */
typedef struct ord_settings_change {
    char change_id[40];
    char request_id[ORD_KEY_MAX + 1];
    int has_old;      /* 0: the tenant had no row (the service defaults applied) */
    ord_settings old; /* timeouts and revision before */
    ord_settings cur; /* after; updated_ms = changed_ms, updated_by = principal */
    char actor[ORD_ACTOR_MAX * 4 + 1];
    char principal[256];
    char reason[ORD_NOTE_MAX * 4 + 1];
    int64_t changed_ms;
} ord_settings_change;

/* the tenant's settings (s->revision >= 1), or CM_ENOTFOUND when it has
 * none of its own. survives a lost connection (a read). */
int ord_store_get_settings(cm_db *db, const char *tenant, ord_settings *s);

typedef struct ord_settings_req {
    const char *tenant, *request_id, *hash;
    const char *actor, *principal, *reason;
    int64_t timeout_s, flash_s;
    int64_t auto_s;            /* 0: unset (the service default applies) */
    int64_t expected_revision; /* 0: no check */
    int64_t now_ms;
} ord_settings_req;

/* PutTenantSettings in one transaction: the tenant's row locked (or
 * created), the idempotency key checked, the row written with the next
 * revision and its audit entry. *verdict: ORD_OK (changed; *c the new
 * entry), ORD_SAME (this request_id and body were applied before; *c the
 * entry it wrote), ORD_KEY_REUSED, ORD_VERSION (expected_revision is not
 * the current one: nothing written). *now is the tenant's settings after
 * the call (revision 0 if it has none). 0 or a CM_E* for the database. */
int ord_store_put_settings(cm_db *db, const ord_settings_req *q, ord_settings *now,
                           ord_settings_change *c, int *verdict);

/* QueryMargin: the margin figures of the tenant's lines (of sku, or of
 * flash sale fs, when not "") of orders paid in [from_ms, to_ms) (0: open),
 * one row per currency, at most cap. */
typedef struct ord_margin_row {
    char currency[4];
    int64_t orders, revenue, refunded, cost, reversed, uncosted;
} ord_margin_row;
int ord_store_query_margin(cm_db *db, const char *tenant, const char *sku, const char *fs,
                           int64_t from_ms, int64_t to_ms, ord_margin_row *rows, size_t cap,
                           size_t *n);

#endif
