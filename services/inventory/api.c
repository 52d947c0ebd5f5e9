/*
 * InventoryService handlers: validate (inv_domain), call the store or the
 * hot path, map outcomes to statuses that name the field or the sku.
 */
#include "inv_api.h"

#include "cm_err.h"
#include "cm_group.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "cm_page.h"
#include "cm_pb.h"
#include "inv_domain.h"
#include "inv_events.h"
#include "inv_soldout.h"
#include "inv_store.h"

#include <errno.h>
#include <grpc/status.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commerce/events/v1/order_events.pb-c.h"
#include "commerce/inventory/v1/inventory_service.pb-c.h"

typedef struct inv_app {
    cm_service *svc;
    cm_group *hot;                     /* NULL: INVENTORY_HOT_PATH=off, one transaction per call */
    cm_db *batch_db[INV_BATCHERS_MAX]; /* the hot path's connections, one per batch in flight */
    inv_soldout *soldout;              /* the hot path's sold-out cache, or NULL */
    int check_s;                       /* invariant metric period */
    long long next_check;              /* the sweeper's thread only */
    cm_gauge *invariants_ok, *violations;
    cm_counter *expired, *soldout_fast, *refused_events;
    int events_on; /* INVENTORY_EVENTS */
    /* the order-event consumer's events, written once per batch by its
     * tx_end hook (its thread only) */
    cm_outbox_rows staged;
    /* its OrderPaid events not yet applied: confirmed together before the
     * next other event and at the batch's end (README.md, "Paid orders in
     * batches"); their strings in pend_arena */
    inv_confirm_item *pend;
    inv_ev_ctx *pend_ec;
    size_t npend, cap_pend;
    cm_arena *pend_arena;
} inv_app;

/* ---- helpers ---- */

static const char *principal_of(cm_rpc_ctx *ctx)
{
    const char *s = cm_rpc_ctx_subject(ctx);
    return s ? s : "";
}

/* what a handler's events are written with: on, and the call's trace */
static inv_ev_ctx ev_of(cm_rpc_ctx *ctx)
{
    const inv_app *app = cm_service_app(ctx);
    return (inv_ev_ctx){.on = app->events_on, .traceparent = cm_rpc_ctx_traceparent(ctx)};
}

static int fail_v(cm_rpc_ctx *ctx, const inv_violation *v)
{
    return cm_rpc_fail_field(ctx, v->field, v->why);
}

static int internal(cm_rpc_ctx *ctx, int rc, const char *what)
{
    return cm_rpc_fail_err(ctx, rc, what);
}

/* ---- stock reads ---- */

static int get_stock(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__GetStockRequest *req = (const void *)in;
    Commerce__Inventory__V1__GetStockResponse *resp = (void *)out;
    if (!inv_valid_key(req->sku, INV_SKU_MAX))
        return cm_rpc_fail_field(ctx, "sku", "must be 1-64 characters from [A-Za-z0-9._:-]");
    inv_level l;
    int rc = inv_store_get_stock(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->sku, &l);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail(
            ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND",
            cm_arena_printf(cm_rpc_ctx_arena(ctx), "sku %s was never stocked", req->sku));
    if (rc)
        return internal(ctx, rc, "could not read stock");
    resp->stock = inv_pb_level(cm_rpc_ctx_arena(ctx), &l);
    return 0;
}

int inv_api_batch_get_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__BatchGetStockRequest *req)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (req->n_skus == 0)
        return cm_rpc_fail_field(ctx, "skus", "must hold at least one sku");
    if (req->n_skus > INV_BATCH_GET_MAX)
        return cm_rpc_fail_field(ctx, "skus", "must hold at most 500 skus");
    for (size_t i = 0; i < req->n_skus; i++) {
        if (!inv_valid_key(req->skus[i], INV_SKU_MAX))
            return cm_rpc_fail_field(ctx, cm_arena_printf(a, "skus[%zu]", i),
                                     "must be 1-64 characters from [A-Za-z0-9._:-]");
        for (size_t j = 0; j < i; j++)
            if (strcmp(req->skus[i], req->skus[j]) == 0)
                return cm_rpc_fail_field(ctx, cm_arena_printf(a, "skus[%zu]", i),
                                         "duplicates an earlier sku");
    }
    return 0;
}

static int batch_get_stock(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__BatchGetStockRequest *req = (const void *)in;
    Commerce__Inventory__V1__BatchGetStockResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (inv_api_batch_get_in(ctx, req))
        return -1;
    resp->stocks = cm_rpc_alloc(ctx, req->n_skus * sizeof *resp->stocks);
    resp->missing_skus = cm_rpc_alloc(ctx, req->n_skus * sizeof *resp->missing_skus);
    for (size_t i = 0; i < req->n_skus; i++) {
        inv_level l;
        int rc = inv_store_get_stock(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->skus[i], &l);
        if (rc == CM_ENOTFOUND) {
            resp->missing_skus[resp->n_missing_skus++] = req->skus[i];
            continue;
        }
        if (rc)
            return internal(ctx, rc, "could not read stock");
        resp->stocks[resp->n_stocks++] = inv_pb_level(a, &l);
    }
    return 0;
}

/* ---- admin ---- */

int inv_api_admin_in(cm_rpc_ctx *ctx, int kind, const char *request_id, const char *sku,
                     int64_t value, const char *reason, const char *actor, int64_t expected)
{
    inv_violation v;
    if (inv_check_admin(kind, request_id, sku, value, reason, actor, &v))
        return fail_v(ctx, &v);
    if (expected < 0)
        return cm_rpc_fail_field(ctx, "expected_version", "must not be negative");
    return 0;
}

static int admin_change(cm_rpc_ctx *ctx, int kind, const char *request_id, const char *sku,
                        int64_t value, const char *reason, const char *actor, int64_t expected,
                        Commerce__Inventory__V1__StockLevel **stock_out,
                        Commerce__Inventory__V1__StockChange **change_out)
{
    inv_app *app = cm_service_app(ctx);
    if (inv_api_admin_in(ctx, kind, request_id, sku, value, reason, actor, expected))
        return -1;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    char *body = cm_arena_printf(a, "k=%d;s=%s;v=%lld;r=%s;a=%s;e=%lld", kind, sku,
                                 (long long)value, reason, actor, (long long)expected);
    inv_ev_ctx ev = ev_of(ctx);
    inv_admin_req q = {.ev = &ev,
                       .tenant = cm_rpc_ctx_tenant(ctx),
                       .request_id = request_id,
                       .body = body,
                       .sku = sku,
                       .reason = reason,
                       .actor = actor,
                       .principal = principal_of(ctx),
                       .kind = kind,
                       .value = value,
                       .expected_version = expected,
                       .sku_quota = cm_rpc_ctx_quota(ctx, "skus", INV_SKUS_QUOTA)};
    inv_change *c = cm_arena_calloc(a, 1, sizeof *c);
    inv_level *l = cm_arena_calloc(a, 1, sizeof *l);
    int verdict = -1;
    int rc =
        inv_store_admin(cm_service_db(ctx), &q, &verdict, c, l, inv_soldout_mark, app->soldout);
    if (rc == CM_EEXIST) /* the same request_id raced in on another sku */
        verdict = INV_A_REUSED;
    else if (rc)
        return internal(ctx, rc, "could not change stock");
    switch (verdict) {
    case INV_A_APPLIED:
    case INV_A_REPLAY:
        *stock_out = inv_pb_level(a, l);
        *change_out = inv_pb_change(a, c);
        return 0;
    case INV_A_REUSED:
        return cm_rpc_fail(ctx, GRPC_STATUS_ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                           "request_id was already used with a different body");
    case INV_A_VERSION:
        return cm_rpc_fail(ctx, GRPC_STATUS_ABORTED, "VERSION_MISMATCH",
                           "expected_version differs from the sku's version");
    case INV_A_NOT_FOUND:
        return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND",
                           cm_arena_printf(a, "sku %s was never stocked", sku));
    case INV_A_QUOTA: {
        int f = cm_rpc_fail_quota(ctx, "skus", q.sku_quota, cm_arena_printf(a, "sku %s", sku));
        cm_rpc_fail_meta(ctx, "sku", sku);
        return f;
    }
    case INV_A_NEGATIVE: {
        int f = cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "STOCK_WOULD_GO_NEGATIVE",
                            cm_arena_printf(a, "sku %s: available would go below 0", sku));
        cm_rpc_fail_meta(ctx, "sku", sku);
        return f;
    }
    default:
        return internal(ctx, CM_EINTERNAL, "could not change stock");
    }
}

static int set_stock(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__SetStockRequest *req = (const void *)in;
    Commerce__Inventory__V1__SetStockResponse *resp = (void *)out;
    return admin_change(ctx, INV_KIND_SET, req->request_id, req->sku, req->available, req->reason,
                        req->actor, req->expected_version, &resp->stock, &resp->change);
}

static int adjust_stock(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__AdjustStockRequest *req = (const void *)in;
    Commerce__Inventory__V1__AdjustStockResponse *resp = (void *)out;
    return admin_change(ctx, INV_KIND_ADJUST, req->request_id, req->sku, req->delta, req->reason,
                        req->actor, req->expected_version, &resp->stock, &resp->change);
}

/* ---- cost price ---- */

int inv_api_cost_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__SetCostRequest *req)
{
    const Commerce__Common__V1__Money *m = req->unit_cost;
    inv_violation v;
    if (inv_check_cost(req->request_id, req->sku, m != NULL, m ? m->amount_minor : 0,
                       m ? m->currency : NULL, req->reason, req->actor, req->expected_cost_version,
                       &v))
        return fail_v(ctx, &v);
    return 0;
}

static int set_cost(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__SetCostRequest *req = (const void *)in;
    Commerce__Inventory__V1__SetCostResponse *resp = (void *)out;
    const Commerce__Common__V1__Money *m = req->unit_cost;
    if (inv_api_cost_in(ctx, req))
        return -1;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    char *body = cm_arena_printf(a, "s=%s;c=%lld;u=%s;r=%s;a=%s;e=%lld", req->sku,
                                 (long long)m->amount_minor, m->currency, req->reason, req->actor,
                                 (long long)req->expected_cost_version);
    inv_cost_req q = {.tenant = cm_rpc_ctx_tenant(ctx),
                      .request_id = req->request_id,
                      .body = body,
                      .sku = req->sku,
                      .currency = m->currency,
                      .reason = req->reason,
                      .actor = req->actor,
                      .principal = principal_of(ctx),
                      .unit_cost = m->amount_minor,
                      .expected_version = req->expected_cost_version};
    inv_cost_change *c = cm_arena_calloc(a, 1, sizeof *c);
    int verdict = -1;
    int rc = inv_store_set_cost(cm_service_db(ctx), &q, &verdict, c);
    if (rc == CM_EEXIST)
        verdict = INV_A_REUSED;
    else if (rc)
        return internal(ctx, rc, "could not set the cost");
    switch (verdict) {
    case INV_A_APPLIED:
    case INV_A_REPLAY:
        resp->cost = inv_pb_cost(a, c->sku, c->unit_cost, c->currency, c->cost_version);
        resp->change = inv_pb_cost_change(a, c);
        return 0;
    case INV_A_REUSED:
        return cm_rpc_fail(ctx, GRPC_STATUS_ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                           "request_id was already used with a different body");
    case INV_A_VERSION:
        return cm_rpc_fail(ctx, GRPC_STATUS_ABORTED, "VERSION_MISMATCH",
                           "expected_cost_version differs from the sku's cost_version");
    case INV_A_NOT_FOUND:
        return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND",
                           cm_arena_printf(a, "sku %s was never stocked", req->sku));
    default:
        return internal(ctx, CM_EINTERNAL, "could not set the cost");
    }
}

#define INV_COST_CHANGES_MAX 100

static int get_cost(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__GetCostRequest *req = (const void *)in;
    Commerce__Inventory__V1__GetCostResponse *resp = (void *)out;
    /* cost prices are confidential, as QueryMargin's figures are */
    if (!inv_valid_key(req->sku, INV_SKU_MAX))
        return cm_rpc_fail_field(ctx, "sku", "must be 1-64 characters from [A-Za-z0-9._:-]");
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    inv_cost_change cur;
    inv_cost_change *cs = cm_arena_calloc(a, INV_COST_CHANGES_MAX, sizeof *cs);
    size_t n = 0;
    if (!cs)
        return internal(ctx, CM_ENOMEM, "could not read the cost");
    int rc = inv_store_get_cost(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->sku, &cur, cs,
                                INV_COST_CHANGES_MAX, &n);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND",
                           cm_arena_printf(a, "sku %s was never stocked", req->sku));
    if (rc)
        return internal(ctx, rc, "could not read the cost");
    resp->cost = inv_pb_cost(a, req->sku, cur.unit_cost, cur.currency, cur.cost_version);
    if (n) {
        resp->changes = cm_arena_calloc(a, n, sizeof *resp->changes);
        if (!resp->changes)
            return internal(ctx, CM_ENOMEM, "could not read the cost");
        for (size_t i = 0; i < n; i++)
            resp->changes[i] = inv_pb_cost_change(a, &cs[i]);
        resp->n_changes = n;
    }
    return 0;
}

/* ---- reservations ---- */

static int sold_out(cm_rpc_ctx *ctx, const inv_reserve_item *it)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    char *skus = "", *avail = "", *msg = "could not reserve stock: sold out:";
    for (size_t i = 0; i < it->nshort; i++) {
        const inv_shortage *s = &it->shortages[i];
        skus = cm_arena_printf(a, "%s%s%s", skus, i ? "," : "", s->sku);
        avail =
            cm_arena_printf(a, "%s%s%s:%lld", avail, i ? "," : "", s->sku, (long long)s->available);
        msg = cm_arena_printf(a, "%s%s sku %s requested %lld available %lld", msg, i ? ";" : "",
                              s->sku, (long long)s->requested, (long long)s->available);
    }
    int f = cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "SOLD_OUT", msg);
    cm_rpc_fail_meta(ctx, "skus", skus);
    cm_rpc_fail_meta(ctx, "available", avail);
    /* the typed detail the proto documents, beside the ErrorInfo metadata */
    Commerce__Inventory__V1__StockShortageDetail detail =
        COMMERCE__INVENTORY__V1__STOCK_SHORTAGE_DETAIL__INIT;
    Commerce__Inventory__V1__StockShortage *rows = cm_rpc_alloc(ctx, it->nshort * sizeof *rows);
    Commerce__Inventory__V1__StockShortage **ptrs = cm_rpc_alloc(ctx, it->nshort * sizeof *ptrs);
    if (rows && ptrs) {
        for (size_t i = 0; i < it->nshort; i++) {
            const inv_shortage *s = &it->shortages[i];
            commerce__inventory__v1__stock_shortage__init(&rows[i]);
            rows[i].sku = (char *)s->sku;
            rows[i].requested = s->requested;
            rows[i].available = s->available;
            rows[i].flash_sale_id = (char *)s->flash_sale_id;
            ptrs[i] = &rows[i];
        }
        detail.n_shortages = it->nshort;
        detail.shortages = ptrs;
        cm_rpc_fail_detail(ctx, &detail.base);
    }
    return f;
}

int inv_api_reserve_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__ReserveRequest *req,
                       inv_line **out, int64_t *ttl_out)
{
    size_t n = req->n_lines;
    inv_line *lines = cm_rpc_alloc(ctx, (n ? n : 1) * sizeof *lines);
    if (!lines)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "reserve");
    for (size_t i = 0; i < n; i++) {
        lines[i].sku = req->lines[i]->sku;
        lines[i].qty = req->lines[i]->quantity;
    }
    int64_t ttl = -1;
    if (req->ttl) {
        if (cm_pb_duration_check(req->ttl, &ttl) || ttl < 0 || ttl > INV_TTL_MAX_MS)
            return cm_rpc_fail_field(ctx, "ttl", "must be between 1 second and 7 days");
    }
    inv_violation v;
    if (inv_check_reserve(req->order_id, req->buyer_id, lines, n, ttl, &ttl, &v))
        return fail_v(ctx, &v);
    *out = lines;
    *ttl_out = ttl;
    return 0;
}

/* a Reserve's item, checked, with its body; 0 when it goes to the store.
 * otherwise the request's failure is recorded on ctx: invalid, or sold out
 * from memory (the fast path: no database) */
static int reserve_item(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__ReserveRequest *req,
                        const inv_ev_ctx *ev, inv_reserve_item *it)
{
    inv_app *app = cm_service_app(ctx);
    size_t n = req->n_lines;
    inv_line *lines;
    int64_t ttl;
    if (inv_api_reserve_in(ctx, req, &lines, &ttl))
        return -1;
    size_t cap = inv_reserve_body(NULL, 0, req->buyer_id, ttl, lines, n) + 1;
    char *body = cm_rpc_alloc(ctx, cap);
    if (!body)
        return internal(ctx, CM_ENOMEM, "could not reserve stock");
    inv_reserve_body(body, cap, req->buyer_id, ttl, lines, n);
    *it = (inv_reserve_item){.ev = ev,
                             .tenant = cm_rpc_ctx_tenant(ctx),
                             .order_id = req->order_id,
                             .buyer_id = req->buyer_id,
                             .body = body,
                             .principal = principal_of(ctx),
                             .ttl_ms = ttl,
                             .lines = lines,
                             .nlines = n,
                             .shortages = cm_rpc_alloc(ctx, n * sizeof(inv_shortage)),
                             .costs = cm_rpc_alloc(ctx, (n ? n : 1) * sizeof(inv_resv_line))};
    if (!it->shortages || !it->costs)
        return internal(ctx, CM_ENOMEM, "could not reserve stock");
    if (app->soldout) {
        for (size_t i = 0; i < n; i++) {
            if (inv_soldout_hit(app->soldout, it->tenant, lines[i].sku)) {
                inv_shortage *sh = &it->shortages[it->nshort++];
                snprintf(sh->sku, sizeof sh->sku, "%s", lines[i].sku);
                sh->requested = lines[i].qty;
                sh->available = 0;
            }
        }
        if (it->nshort) {
            cm_counter_add(app->soldout_fast, 1);
            return sold_out(ctx, it);
        }
    }
    return 0;
}

/* what the store decided for a Reserve's item: *out the reservation, or
 * the failure recorded on ctx */
static int reserve_answer(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__ReserveRequest *req,
                          const inv_reserve_item *it, Commerce__Inventory__V1__Reservation **out)
{
    inv_app *app = cm_service_app(ctx);
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    size_t n = it->nlines;
    inv_resv *r;
    int rc;
    switch (it->outcome) {
    case INV_R_RESERVED:
        r = cm_arena_calloc(a, 1, sizeof *r);
        if (!r)
            return internal(ctx, CM_ENOMEM, "could not reserve stock");
        if (it->flash_batch) {
            /* the flash-sale path: read back the lines' sale ids */
            rc = inv_store_get_reservation(cm_service_db(ctx), it->tenant, req->order_id, r);
            if (rc)
                return internal(ctx, rc, "could not read the reservation");
            *out = inv_pb_resv(a, r);
            return 0;
        }
        snprintf(r->order_id, sizeof r->order_id, "%s", req->order_id);
        snprintf(r->buyer_id, sizeof r->buyer_id, "%s", req->buyer_id);
        r->state = INV_ACTIVE;
        r->created_ms = it->created_ms;
        r->expires_ms = it->expires_ms;
        r->nlines = n;
        for (size_t i = 0; i < n; i++) {
            snprintf(r->lines[i].sku, sizeof r->lines[i].sku, "%s", it->lines[i].sku);
            r->lines[i].qty = it->lines[i].qty;
            r->lines[i].unit_cost = it->costs[i].unit_cost;
            memcpy(r->lines[i].cost_currency, it->costs[i].cost_currency,
                   sizeof r->lines[i].cost_currency);
        }
        *out = inv_pb_resv(a, r);
        return 0;
    case INV_R_SAME:
        r = cm_arena_calloc(a, 1, sizeof *r);
        if (!r)
            return internal(ctx, CM_ENOMEM, "could not reserve stock");
        rc = inv_store_get_reservation(cm_service_db(ctx), it->tenant, req->order_id, r);
        if (rc)
            return internal(ctx, rc, "could not read the reservation");
        *out = inv_pb_resv(a, r);
        return 0;
    case INV_R_DIFFERENT:
        return cm_rpc_fail(ctx, GRPC_STATUS_ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                           "order_id already has a reservation with other lines, buyer_id or ttl");
    case INV_R_SOLD_OUT:
        for (size_t i = 0; i < it->nshort; i++)
            if (it->shortages[i].available == 0 && !it->shortages[i].flash_sale_id[0])
                inv_soldout_mark(app->soldout, it->tenant, it->shortages[i].sku, 0);
        return sold_out(ctx, it);
    case INV_R_TOMBSTONE:
        return cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
                           "order_id was released before it was reserved");
    case INV_R_BUYER_REQUIRED:
        return cm_rpc_fail_field(ctx, "buyer_id", "is required: a sku is in an active flash sale");
    case INV_R_LIMIT:
        return cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "FLASH_SALE_LIMIT_EXCEEDED",
                           "the buyer's flash-sale purchase limit would be exceeded");
    default:
        return internal(ctx, CM_EINTERNAL, "could not reserve stock");
    }
}

/* the items to the store: the hot path's batchers (sharing their commits
 * with concurrent calls), or one transaction on the call's connection.
 * rcs[i]: item i's transaction's result */
static int reserve_store(cm_rpc_ctx *ctx, inv_reserve_item **items, size_t n, int *rcs)
{
    inv_app *app = cm_service_app(ctx);
    if (n == 0)
        return 0;
    if (app->hot && n == 1) {
        rcs[0] = cm_group_submit(app->hot, NULL, items[0]);
        return 0;
    }
    if (app->hot)
        return cm_group_submit_many(app->hot, (void *const *)items, n, rcs);
    int rc = inv_store_reserve_batch(cm_service_db(ctx), items, n, inv_soldout_mark, app->soldout);
    for (size_t i = 0; i < n; i++)
        rcs[i] = rc;
    return 0;
}

static int reserve(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__ReserveRequest *req = (const void *)in;
    Commerce__Inventory__V1__ReserveResponse *resp = (void *)out;
    inv_ev_ctx ev = ev_of(ctx);
    inv_reserve_item it, *one = &it;
    if (reserve_item(ctx, req, &ev, &it))
        return -1;
    int rc = 0;
    int src = reserve_store(ctx, &one, 1, &rc);
    if (src || rc)
        return internal(ctx, src ? src : rc, "could not reserve stock");
    return reserve_answer(ctx, req, &it, &resp->reservation);
}

/* README.md, "BatchReserve": Reserve's items side by side, each answered on
 * its own (an item context holds its failure), stored together */
static int batch_reserve(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__BatchReserveRequest *req = (const void *)in;
    Commerce__Inventory__V1__BatchReserveResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    size_t n = req->n_requests;
    if (n == 0 || n > INV_BATCH_RESERVE_MAX)
        return cm_rpc_fail_field(ctx, "requests", "must hold 1 to 100 requests");
    for (size_t i = 1; i < n; i++)
        for (size_t k = 0; k < i; k++)
            if (req->requests[i]->order_id && req->requests[i]->order_id[0] &&
                req->requests[k]->order_id &&
                strcmp(req->requests[i]->order_id, req->requests[k]->order_id) == 0)
                return cm_rpc_fail_field(
                    ctx, cm_arena_printf(a, "requests[%zu].order_id", i),
                    cm_arena_printf(a, "appears twice (requests[%zu] has it as well)", k));
    cm_rpc_ctx_charge(ctx, (unsigned)(n - 1));
    inv_ev_ctx ev = ev_of(ctx);
    cm_rpc_ctx **sub = cm_arena_calloc(a, n, sizeof *sub);
    inv_reserve_item *items = cm_arena_calloc(a, n, sizeof *items);
    inv_reserve_item **stored = cm_arena_calloc(a, n, sizeof *stored);
    size_t *at = cm_arena_calloc(a, n, sizeof *at);
    int *rcs = cm_arena_calloc(a, n, sizeof *rcs);
    resp->results = cm_arena_calloc(a, n, sizeof *resp->results);
    if (!sub || !items || !stored || !at || !rcs || !resp->results)
        return internal(ctx, CM_ENOMEM, "could not reserve stock");
    size_t nstored = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(sub[i] = cm_rpc_ctx_item(ctx)))
            return internal(ctx, CM_ENOMEM, "could not reserve stock");
        if (reserve_item(sub[i], req->requests[i], &ev, &items[i]) == 0) {
            at[nstored] = i;
            stored[nstored++] = &items[i];
        }
    }
    int src = reserve_store(ctx, stored, nstored, rcs);
    if (src)
        return internal(ctx, src, "could not reserve stock");
    for (size_t k = 0; k < nstored; k++) {
        size_t i = at[k];
        if (rcs[k])
            internal(sub[i], rcs[k], "could not reserve stock");
    }
    for (size_t i = 0; i < n; i++) {
        Commerce__Inventory__V1__BatchReserveResult *r = cm_arena_calloc(a, 1, sizeof *r);
        if (!r)
            return internal(ctx, CM_ENOMEM, "could not reserve stock");
        commerce__inventory__v1__batch_reserve_result__init(r);
        if (cm_rpc_ctx_code(sub[i], NULL, NULL) == 0)
            reserve_answer(sub[i], req->requests[i], &items[i], &r->reservation);
        size_t len = 0;
        const uint8_t *st = cm_rpc_ctx_item_status(sub[i], &len);
        if (cm_rpc_ctx_code(sub[i], NULL, NULL) != 0) {
            r->reservation = NULL;
            r->code = cm_rpc_ctx_code(sub[i], NULL, NULL);
            r->error.data = (uint8_t *)st;
            r->error.len = len;
        }
        resp->results[i] = r;
    }
    resp->n_results = n;
    return 0;
}

int inv_api_resolve_in(cm_rpc_ctx *ctx, const char *order_id)
{
    if (!inv_valid_key(order_id, INV_KEY_MAX))
        return cm_rpc_fail_field(ctx, "order_id", "must be 1-64 characters from [A-Za-z0-9._:-]");
    return 0;
}

static int resolve(cm_rpc_ctx *ctx, const char *order_id, int to,
                   Commerce__Inventory__V1__Reservation **out)
{
    inv_app *app = cm_service_app(ctx);
    if (inv_api_resolve_in(ctx, order_id))
        return -1;
    inv_resv *r = cm_rpc_alloc(ctx, sizeof *r);
    inv_resolve_outcome oc;
    inv_ev_ctx ev = ev_of(ctx);
    int rc = inv_store_resolve(cm_service_db(ctx), &ev, cm_rpc_ctx_tenant(ctx), order_id, to,
                               principal_of(ctx), &oc, r, inv_soldout_mark, app->soldout);
    if (rc)
        return internal(ctx, rc,
                        to == INV_CONFIRMED ? "could not confirm the reservation"
                                            : "could not release the reservation");
    int f;
    switch (oc) {
    case INV_RESOLVE_OK:
        *out = inv_pb_resv(cm_rpc_ctx_arena(ctx), r);
        return 0;
    case INV_RESOLVE_NOT_FOUND:
        return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND",
                           "order_id has no reservation");
    case INV_RESOLVE_EXPIRED:
        f = cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
                        "could not confirm: the reservation expired and its stock was released");
        cm_rpc_fail_meta(ctx, "state", "EXPIRED");
        return f;
    case INV_RESOLVE_WAS_RELEASED:
        f = cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
                        "could not confirm: the reservation was released");
        cm_rpc_fail_meta(ctx, "state", "RELEASED");
        return f;
    case INV_RESOLVE_WAS_CONFIRMED:
        f = cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
                        "could not release: the reservation is confirmed (sold)");
        cm_rpc_fail_meta(ctx, "state", "CONFIRMED");
        return f;
    }
    return internal(ctx, CM_EINTERNAL, "could not resolve the reservation");
}

static int confirm(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__ConfirmRequest *req = (const void *)in;
    Commerce__Inventory__V1__ConfirmResponse *resp = (void *)out;
    return resolve(ctx, req->order_id, INV_CONFIRMED, &resp->reservation);
}

static int release(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__ReleaseRequest *req = (const void *)in;
    Commerce__Inventory__V1__ReleaseResponse *resp = (void *)out;
    return resolve(ctx, req->order_id, INV_RELEASED, &resp->reservation);
}

static int get_reservation(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__GetReservationRequest *req = (const void *)in;
    Commerce__Inventory__V1__GetReservationResponse *resp = (void *)out;
    if (!inv_valid_key(req->order_id, INV_KEY_MAX))
        return cm_rpc_fail_field(ctx, "order_id", "must be 1-64 characters from [A-Za-z0-9._:-]");
    inv_resv *r = cm_rpc_alloc(ctx, sizeof *r);
    int rc =
        inv_store_get_reservation(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->order_id, r);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND",
                           "order_id has no reservation");
    if (rc)
        return internal(ctx, rc, "could not read the reservation");
    resp->reservation = inv_pb_resv(cm_rpc_ctx_arena(ctx), r);
    return 0;
}

/* ---- invariants ---- */

static const char *invariant_text(int inv)
{
    switch (inv) {
    case 1:
        return "on_hand differs from available + reserved + sold";
    case 2:
        return "a counter is negative";
    case 3:
        return "reserved differs from the sum of active reservation lines";
    case 4:
        return "sold differs from the sum of confirmed reservation lines";
    case 5:
        return "a counter differs from the sum of its audit trail deltas";
    case 6:
        return "a flash sale's reserved + sold exceeds its sale_stock";
    }
    return "";
}

int inv_api_check_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__CheckInvariantsRequest *req)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (req->n_skus > INV_BATCH_GET_MAX)
        return cm_rpc_fail_field(ctx, "skus", "must hold at most 500 skus");
    for (size_t i = 0; i < req->n_skus; i++)
        if (!inv_valid_key(req->skus[i], INV_SKU_MAX))
            return cm_rpc_fail_field(ctx, cm_arena_printf(a, "skus[%zu]", i),
                                     "must be 1-64 characters from [A-Za-z0-9._:-]");
    return 0;
}

static int check_invariants(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__CheckInvariantsRequest *req = (const void *)in;
    Commerce__Inventory__V1__CheckInvariantsResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (inv_api_check_in(ctx, req))
        return -1;
    size_t cap = 1000, total = 0;
    inv_breach *b = cm_rpc_alloc(ctx, cap * sizeof *b);
    int64_t checked = 0, at = 0;
    int rc =
        inv_store_check(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), (const char *const *)req->skus,
                        req->n_skus, b, cap, &total, &checked, &at);
    if (rc)
        return internal(ctx, rc, "could not check the invariants");
    size_t n = total < cap ? total : cap;
    resp->checked_skus = checked;
    resp->truncated = total > cap;
    resp->checked_at = cm_pb_timestamp(a, at);
    resp->violations = cm_rpc_alloc(ctx, (n ? n : 1) * sizeof *resp->violations);
    for (size_t i = 0; i < n; i++) {
        Commerce__Inventory__V1__InvariantViolation *v = cm_arena_calloc(a, 1, sizeof *v);
        commerce__inventory__v1__invariant_violation__init(v);
        v->sku = cm_arena_strdup(a, b[i].level.sku);
        v->invariant = (Commerce__Inventory__V1__Invariant)b[i].invariant;
        v->expected = b[i].expected;
        v->actual = b[i].actual;
        v->level = inv_pb_level(a, &b[i].level);
        v->flash_sale_id = cm_arena_strdup(a, b[i].flash_sale_id);
        v->description = (char *)invariant_text(b[i].invariant);
        resp->violations[i] = v;
    }
    resp->n_violations = n;
    return 0;
}

/* ---- lists ---- */

/* INVALID_ARGUMENT / PAGE_TOKEN_INVALID, naming the field */
static int64_t ts_us(const Google__Protobuf__Timestamp *t)
{
    return t->seconds * 1000000 + t->nanos / 1000;
}

int inv_api_changes_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__ListStockChangesRequest *req,
                       inv_changes_in *li)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(li, 0, sizeof *li);
    if (req->sku[0] && !inv_valid_key(req->sku, INV_SKU_MAX))
        return cm_rpc_fail_field(ctx, "sku", "must be 1-64 characters from [A-Za-z0-9._:-]");
    if (req->order_id[0] && !inv_valid_key(req->order_id, INV_KEY_MAX))
        return cm_rpc_fail_field(ctx, "order_id", "must be 1-64 characters from [A-Za-z0-9._:-]");
    if (req->n_kinds > 16)
        return cm_rpc_fail_field(ctx, "kinds", "must hold at most 16 kinds");
    int *kinds = cm_rpc_alloc(ctx, (req->n_kinds ? req->n_kinds : 1) * sizeof *kinds);
    char *canon = cm_arena_printf(a, "s=%s;o=%s;k=", req->sku, req->order_id);
    for (size_t i = 0; i < req->n_kinds; i++) {
        int k = (int)req->kinds[i];
        if (k < INV_KIND_SET || k > INV_KIND_EXPIRE)
            return cm_rpc_fail_field(ctx, cm_arena_printf(a, "kinds[%zu]", i),
                                     "must be a StockChangeKind other than UNSPECIFIED");
        kinds[i] = k;
        canon = cm_arena_printf(a, "%s%d,", canon, k);
    }
    inv_change_query *q = &li->q;
    *q = (inv_change_query){.tenant = cm_rpc_ctx_tenant(ctx),
                            .sku = req->sku,
                            .order_id = req->order_id,
                            .kinds = kinds,
                            .nkinds = req->n_kinds};
    if (req->occurred) {
        const Google__Protobuf__Timestamp *st = req->occurred->start_at,
                                          *en = req->occurred->end_at;
        int64_t ms;
        if (st && cm_pb_timestamp_check(st, &ms))
            return cm_rpc_fail_field(ctx, "occurred.start_at", "must be a valid timestamp");
        if (en && cm_pb_timestamp_check(en, &ms))
            return cm_rpc_fail_field(ctx, "occurred.end_at", "must be a valid timestamp");
        if (st && en && ts_us(en) <= ts_us(st))
            return cm_rpc_fail_field(ctx, "occurred.end_at", "must be after occurred.start_at");
        q->has_from = st != NULL;
        q->has_to = en != NULL;
        q->from_us = st ? ts_us(st) : 0;
        q->to_us = en ? ts_us(en) : 0;
    }
    canon = cm_arena_printf(a, "%s;f=%d:%lld;t=%d:%lld", canon, q->has_from, (long long)q->from_us,
                            q->has_to, (long long)q->to_us);
    li->filters = cm_page_filters(canon);
    return cm_page_begin(ctx, req->page_size, req->page_token, 'c', li->filters, li->after,
                         &q->after_id, &li->size);
}

static int list_stock_changes(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__ListStockChangesRequest *req = (const void *)in;
    Commerce__Inventory__V1__ListStockChangesResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    inv_changes_in *li = cm_rpc_alloc(ctx, sizeof *li);
    if (!li)
        return internal(ctx, CM_ENOMEM, "could not list stock changes");
    if (inv_api_changes_in(ctx, req, li))
        return -1;
    const inv_change_query *q = &li->q;
    int size = li->size;
    uint64_t fp = li->filters;
    inv_change *rows = cm_rpc_alloc(ctx, (size_t)size * sizeof *rows);
    if (!rows)
        return internal(ctx, CM_ENOMEM, "could not list stock changes");
    size_t n = 0;
    int more = 0;
    int rc = inv_store_list_changes(cm_service_db(ctx), q, rows, (size_t)size, &n, &more);
    if (rc == CM_ENOTFOUND)
        return cm_page_bad_token(ctx);
    if (rc)
        return internal(ctx, rc, "could not list stock changes");
    resp->changes = cm_rpc_alloc(ctx, (n ? n : 1) * sizeof *resp->changes);
    for (size_t i = 0; i < n; i++)
        resp->changes[i] = inv_pb_change(a, &rows[i]);
    resp->n_changes = n;
    return cm_page_next(ctx, more, 'c', fp, n ? rows[n - 1].change_id : NULL,
                        &resp->next_page_token);
}

/* ---- flash sales ---- */

static Commerce__Inventory__V1__FlashSale *pb_sale(cm_arena *a, const inv_sale *s)
{
    Commerce__Inventory__V1__FlashSale *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__inventory__v1__flash_sale__init(m);
    m->flash_sale_id = cm_arena_strdup(a, s->flash_sale_id);
    m->sku = cm_arena_strdup(a, s->sku);
    m->starts_at = cm_pb_timestamp(a, s->starts_ms);
    m->ends_at = cm_pb_timestamp(a, s->ends_ms);
    m->sale_stock = s->sale_stock;
    m->per_buyer_limit = s->per_buyer_limit;
    m->reserved = s->reserved;
    m->sold = s->sold;
    m->version = s->version;
    m->created_at = cm_pb_timestamp(a, s->created_ms);
    m->updated_at = cm_pb_timestamp(a, s->updated_ms);
    /* derived from the clock and the counters, never stored */
    if (s->now_ms < s->starts_ms)
        m->state = COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_SCHEDULED;
    else if (s->now_ms >= s->ends_ms)
        m->state = COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_ENDED;
    else if (s->reserved + s->sold >= s->sale_stock)
        m->state = COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_SOLD_OUT;
    else
        m->state = COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_ACTIVE;
    return m;
}

int inv_api_sale_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__ConfigureFlashSaleRequest *req,
                    int64_t now_ms, int64_t *starts_ms, int64_t *ends_ms)
{
    if (!inv_valid_key(req->request_id, INV_KEY_MAX))
        return cm_rpc_fail_field(ctx, "request_id", "must be 1-64 characters from [A-Za-z0-9._:-]");
    int update = req->flash_sale_id[0] != 0;
    if (update && !inv_valid_key(req->flash_sale_id, INV_KEY_MAX))
        return cm_rpc_fail_field(ctx, "flash_sale_id",
                                 "must be empty (create) or the id of a sale (update)");
    if (req->expected_version < 0)
        return cm_rpc_fail_field(ctx, "expected_version", "must not be negative");
    if (!inv_valid_key(req->sku, INV_SKU_MAX))
        return cm_rpc_fail_field(ctx, "sku", "must be 1-64 characters from [A-Za-z0-9._:-]");
    if (!req->starts_at)
        return cm_rpc_fail_field(ctx, "starts_at", "is required");
    if (!req->ends_at)
        return cm_rpc_fail_field(ctx, "ends_at", "is required");
    int64_t st, en;
    /* in range before any arithmetic: seconds near 2^63 would overflow */
    if (cm_pb_timestamp_check(req->starts_at, &st) || st <= 0)
        return cm_rpc_fail_field(ctx, "starts_at", "must be a valid time after 1970");
    if (cm_pb_timestamp_check(req->ends_at, &en) || en <= 0)
        return cm_rpc_fail_field(ctx, "ends_at", "must be a valid time after 1970");
    if (en <= st)
        return cm_rpc_fail_field(ctx, "ends_at", "must be after starts_at");
    if (en <= now_ms)
        return cm_rpc_fail_field(ctx, "ends_at", "must be in the future");
    if (req->sale_stock < 1 || req->sale_stock > INV_QTY_MAX)
        return cm_rpc_fail_field(ctx, "sale_stock", "must be between 1 and 1000000000");
    if (req->per_buyer_limit < 1 || req->per_buyer_limit > INV_QTY_MAX)
        return cm_rpc_fail_field(ctx, "per_buyer_limit", "must be between 1 and 1000000000");
    if (!req->actor[0] || strlen(req->actor) > INV_ACTOR_MAX)
        return cm_rpc_fail_field(ctx, "actor", "must be 1 to 128 characters");
    *starts_ms = st;
    *ends_ms = en;
    return 0;
}

static int configure_flash_sale(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__ConfigureFlashSaleRequest *req = (const void *)in;
    Commerce__Inventory__V1__ConfigureFlashSaleResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    int update = req->flash_sale_id[0] != 0;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t st, en;
    /* whole seconds: a sale ending within the current second is refused */
    if (inv_api_sale_in(ctx, req, (int64_t)now.tv_sec * 1000, &st, &en))
        return -1;
    /* a create's body is unchanged from before updates existed, so its
     * stored request ids keep matching */
    char *body = cm_arena_printf(a, "s=%s;a=%lld;b=%lld;n=%lld;l=%lld;x=%s", req->sku,
                                 (long long)st, (long long)en, (long long)req->sale_stock,
                                 (long long)req->per_buyer_limit, req->actor);
    if (update)
        body = cm_arena_printf(a, "u=%s;%s;e=%lld", req->flash_sale_id, body,
                               (long long)req->expected_version);
    inv_ev_ctx ev = ev_of(ctx);
    inv_sale_req q = {.ev = &ev,
                      .tenant = cm_rpc_ctx_tenant(ctx),
                      .request_id = req->request_id,
                      .body = body,
                      .sku = req->sku,
                      .flash_sale_id = update ? req->flash_sale_id : NULL,
                      .starts_ms = st,
                      .ends_ms = en,
                      .sale_stock = req->sale_stock,
                      .per_buyer_limit = req->per_buyer_limit,
                      .expected_version = update ? req->expected_version : 0,
                      .sale_quota = cm_rpc_ctx_quota(ctx, "flash_sales", INV_FLASH_SALES_QUOTA)};
    inv_sale *sale = cm_rpc_alloc(ctx, sizeof *sale);
    int verdict = -1, refusal = 0, f;
    int64_t held = 0;
    int rc = inv_store_sale_configure(cm_service_db(ctx), &q, &verdict, &refusal, &held, sale);
    if (rc == CM_EEXIST)
        verdict = INV_S_REUSED;
    else if (rc)
        return internal(ctx, rc, "could not configure the flash sale");
    switch (verdict) {
    case INV_S_CREATED:
    case INV_S_UPDATED:
    case INV_S_REPLAY:
        resp->flash_sale = pb_sale(a, sale);
        return 0;
    case INV_S_REUSED:
        return cm_rpc_fail(ctx, GRPC_STATUS_ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                           "request_id was already used with a different body");
    case INV_S_OVERLAP:
        return cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "FLASH_SALE_OVERLAP",
                           "another flash sale of the sku overlaps the window");
    case INV_S_NOT_FOUND:
        return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND", "no such flash sale");
    case INV_S_VERSION:
        return cm_rpc_fail(ctx, GRPC_STATUS_ABORTED, "VERSION_MISMATCH",
                           "expected_version differs from the flash sale's version");
    case INV_S_QUOTA:
        return cm_rpc_fail_quota(ctx, "flash_sales", q.sale_quota,
                                 cm_arena_printf(a, "a flash sale of sku %s", req->sku));
    case INV_S_REFUSED:
        break;
    default:
        return internal(ctx, CM_EINTERNAL, "could not configure the flash sale");
    }
    /* refusals name the field (google.rpc.BadRequest beside the status) */
    switch ((inv_sale_update)refusal) {
    case INV_SU_SKU_CHANGED:
        return cm_rpc_fail_field(ctx, "sku", "cannot change: it differs from the sale's sku");
    case INV_SU_ENDED:
        f = cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
                        "could not update the flash sale: it has ended");
        cm_rpc_fail_meta(ctx, "state", "ENDED");
        return f;
    case INV_SU_STARTED:
        f = cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
                        "starts_at: cannot change once the sale has started");
        cm_rpc_fail_field(ctx, "starts_at", "cannot change once the sale has started");
        return f;
    case INV_SU_STOCK_BELOW_HELD:
        f = cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "STOCK_WOULD_GO_NEGATIVE",
                        cm_arena_printf(a,
                                        "sale_stock: %lld is below the %lld units the sale "
                                        "already holds (reserved + sold)",
                                        (long long)req->sale_stock, (long long)held));
        cm_rpc_fail_field(ctx, "sale_stock", "is below the sale's reserved + sold");
        cm_rpc_fail_meta(ctx, "held", cm_arena_printf(a, "%lld", (long long)held));
        return f;
    case INV_SU_OK:
        break;
    }
    return internal(ctx, CM_EINTERNAL, "could not configure the flash sale");
}

static int get_flash_sale(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__GetFlashSaleRequest *req = (const void *)in;
    Commerce__Inventory__V1__GetFlashSaleResponse *resp = (void *)out;
    if (!req->flash_sale_id[0])
        return cm_rpc_fail_field(ctx, "flash_sale_id", "is required");
    if (!inv_valid_key(req->flash_sale_id, INV_KEY_MAX))
        return cm_rpc_fail_field(ctx, "flash_sale_id",
                                 "must be 1-64 characters from [A-Za-z0-9._:-]");
    inv_sale s;
    int rc = inv_store_sale_get(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->flash_sale_id, &s);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND", "no such flash sale");
    if (rc)
        return internal(ctx, rc, "could not read the flash sale");
    resp->flash_sale = pb_sale(cm_rpc_ctx_arena(ctx), &s);
    return 0;
}

int inv_api_sales_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__ListFlashSalesRequest *req,
                     inv_sales_in *li)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(li, 0, sizeof *li);
    if (req->sku[0] && !inv_valid_key(req->sku, INV_SKU_MAX))
        return cm_rpc_fail_field(ctx, "sku", "must be 1-64 characters from [A-Za-z0-9._:-]");
    if (req->n_states > 16)
        return cm_rpc_fail_field(ctx, "states", "must hold at most 16 states");
    int *states = cm_rpc_alloc(ctx, (req->n_states ? req->n_states : 1) * sizeof *states);
    char *canon = cm_arena_printf(a, "s=%s;st=", req->sku);
    for (size_t i = 0; i < req->n_states; i++) {
        int v = (int)req->states[i];
        if (v < COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_SCHEDULED ||
            v > COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_ENDED)
            return cm_rpc_fail_field(ctx, cm_arena_printf(a, "states[%zu]", i),
                                     "must be a FlashSaleState other than UNSPECIFIED");
        states[i] = v;
        canon = cm_arena_printf(a, "%s%d,", canon, v);
    }
    li->states = states;
    li->nstates = req->n_states;
    li->filters = cm_page_filters(canon);
    return cm_page_begin(ctx, req->page_size, req->page_token, 'f', li->filters, li->after,
                         &li->after_id, &li->size);
}

static int list_flash_sales(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Inventory__V1__ListFlashSalesRequest *req = (const void *)in;
    Commerce__Inventory__V1__ListFlashSalesResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    inv_sales_in *li = cm_rpc_alloc(ctx, sizeof *li);
    if (!li)
        return internal(ctx, CM_ENOMEM, "could not list flash sales");
    if (inv_api_sales_in(ctx, req, li))
        return -1;
    uint64_t fp = li->filters;
    int size = li->size;
    inv_sale *rows = cm_rpc_alloc(ctx, (size_t)size * sizeof *rows);
    if (!rows)
        return internal(ctx, CM_ENOMEM, "could not list flash sales");
    size_t n = 0;
    int more = 0;
    int rc = inv_store_list_sales(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->sku, li->states,
                                  li->nstates, li->after_id, rows, (size_t)size, &n, &more);
    if (rc == CM_ENOTFOUND)
        return cm_page_bad_token(ctx);
    if (rc)
        return internal(ctx, rc, "could not list flash sales");
    resp->flash_sales = cm_rpc_alloc(ctx, (n ? n : 1) * sizeof *resp->flash_sales);
    for (size_t i = 0; i < n; i++)
        resp->flash_sales[i] = pb_sale(a, &rows[i]);
    resp->n_flash_sales = n;
    return cm_page_next(ctx, more, 'f', fp, n ? rows[n - 1].flash_sale_id : NULL,
                        &resp->next_page_token);
}

const cm_rpc_method inv_methods[] = {
    {"GetStock", get_stock, CM_RPC_READ, CM_RPC_ROLES_READ},
    {"BatchGetStock", batch_get_stock, CM_RPC_READ, CM_RPC_ROLES_READ},
    {"SetStock", set_stock, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"AdjustStock", adjust_stock, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"Reserve", reserve, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"BatchReserve", batch_reserve, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"Confirm", confirm, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"Release", release, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"GetReservation", get_reservation, CM_RPC_READ, CM_RPC_ROLES_READ},
    {"SetCost", set_cost, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"GetCost", get_cost, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"CheckInvariants", check_invariants, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"ConfigureFlashSale", configure_flash_sale, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"GetFlashSale", get_flash_sale, CM_RPC_READ, CM_RPC_ROLES_READ},
    {"ListFlashSales", list_flash_sales, CM_RPC_READ, CM_RPC_ROLES_READ},
    {"ListStockChanges", list_stock_changes, CM_RPC_READ, CM_RPC_ROLES_READ},
};
const size_t inv_methods_count = sizeof inv_methods / sizeof inv_methods[0];

/* ---- order events (inbox) ---- */

int inv_ev_order_in(const cm_event *ev, ProtobufCMessage **msg, inv_order_in *in)
{
    *msg = NULL;
    ProtobufCMessage *m;
    const char *tenant, *order_id;
    if (strcmp(ev->type, "commerce.events.v1.OrderPaid") == 0) {
        Commerce__Events__V1__OrderPaid *p =
            commerce__events__v1__order_paid__unpack(NULL, ev->len, ev->payload);
        if (!p)
            return CM_EINVAL;
        m = &p->base;
        in->to = INV_CONFIRMED;
        tenant = p->tenant_id;
        order_id = p->order_id;
    } else if (strcmp(ev->type, "commerce.events.v1.OrderCancelled") == 0) {
        Commerce__Events__V1__OrderCancelled *p =
            commerce__events__v1__order_cancelled__unpack(NULL, ev->len, ev->payload);
        if (!p)
            return CM_EINVAL;
        m = &p->base;
        in->to = INV_RELEASED;
        tenant = p->tenant_id;
        order_id = p->order_id;
    } else {
        return 1; /* not ours to act on */
    }
    if (!*tenant)
        tenant = ev->tenant_id;
    if (!*tenant || !inv_valid_key(order_id, INV_KEY_MAX)) {
        protobuf_c_message_free_unpacked(m, NULL);
        return CM_EINVAL;
    }
    in->tenant = tenant;
    in->order_id = order_id;
    *msg = m;
    return 0;
}

/* an order event's change of its reservation, one at a time: a refused
 * transition (paid after expiry, ...) is a fact, not an error to retry:
 * it is logged and counted, and the event is done */
static int resolve_one(cm_db *db, inv_app *app, const inv_ev_ctx *ec, const char *tenant,
                       const char *order_id, int to, const char *type)
{
    inv_resv *r = malloc(sizeof *r);
    if (!r)
        return CM_ENOMEM;
    inv_resolve_outcome oc;
    int rc = inv_store_resolve_tx(db, ec, tenant, order_id, to, "order-events", &oc, r);
    if (rc == 0 && oc != INV_RESOLVE_OK) {
        cm_log_warn("order event could not change the reservation", "tenant", tenant, "order_id",
                    order_id, "type", type, NULL);
        if (app)
            cm_counter_add(app->refused_events, 1);
    }
    if (rc == 0 && to == INV_RELEASED && app)
        for (size_t i = 0; i < r->nlines; i++)
            inv_soldout_mark(app->soldout, tenant, r->lines[i].sku, 1);
    free(r);
    return rc;
}

/* the OrderPaid events waiting: one statement confirms the ACTIVE ones,
 * and the rest (no reservation, resolved, due to expire) go one by one,
 * in their order */
static int flush_confirms(cm_db *db, inv_app *app)
{
    size_t n = app->npend;
    app->npend = 0;
    if (n == 0)
        return 0;
    int rc = inv_store_confirm_batch(db, app->pend, n, "order-events");
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (app->pend[i].left)
            rc = resolve_one(db, app, app->pend[i].ec, app->pend[i].tenant, app->pend[i].order_id,
                             INV_CONFIRMED, "commerce.events.v1.OrderPaid");
    return rc;
}

/* keeps an OrderPaid for flush_confirms, its strings copied (the event's
 * memory is the consumer's until the handler returns) */
static int defer_confirm(inv_app *app, const cm_event *ev, const char *tenant, const char *order_id)
{
    if (app->npend == app->cap_pend) {
        size_t cap = app->cap_pend ? app->cap_pend * 2 : 64;
        inv_confirm_item *p = realloc(app->pend, cap * sizeof *p);
        if (!p)
            return CM_ENOMEM;
        app->pend = p;
        inv_ev_ctx *e = realloc(app->pend_ec, cap * sizeof *e);
        if (!e)
            return CM_ENOMEM;
        app->pend_ec = e;
        app->cap_pend = cap;
        /* the items point at their contexts: point them at the new ones */
        for (size_t i = 0; i < app->npend; i++)
            app->pend[i].ec = &app->pend_ec[i];
    }
    if (!app->pend_arena && !(app->pend_arena = cm_arena_new(0)))
        return CM_ENOMEM;
    size_t i = app->npend;
    char *t = cm_arena_strdup(app->pend_arena, tenant);
    char *o = cm_arena_strdup(app->pend_arena, order_id);
    char *tp = ev->traceparent ? cm_arena_strdup(app->pend_arena, ev->traceparent) : NULL;
    if (!t || !o || (ev->traceparent && !tp))
        return CM_ENOMEM;
    app->pend_ec[i] = (inv_ev_ctx){.on = app->events_on, .traceparent = tp, .stage = &app->staged};
    app->pend[i] = (inv_confirm_item){.ec = &app->pend_ec[i], .tenant = t, .order_id = o};
    app->npend++;
    return 0;
}

int inv_on_order_event(cm_db *db, const cm_event *ev, void *arg)
{
    inv_app *app = arg;
    ProtobufCMessage *m;
    inv_order_in in;
    int rc = inv_ev_order_in(ev, &m, &in);
    if (rc)
        return rc == 1 ? 0 : rc;
    if (app && in.to == INV_CONFIRMED) {
        rc = defer_confirm(app, ev, in.tenant, in.order_id);
    } else {
        /* the confirms before it first: an order's events keep their order */
        rc = app ? flush_confirms(db, app) : 0;
        /* the order event's trace goes on to the events it causes */
        inv_ev_ctx ec = {.on = app ? app->events_on : 1,
                         .traceparent = ev->traceparent,
                         .stage = app ? &app->staged : NULL};
        if (rc == 0)
            rc = resolve_one(db, app, &ec, in.tenant, in.order_id, in.to, ev->type);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

void inv_on_order_tx_begin(void *arg)
{
    inv_app *app = arg;
    cm_outbox_rows_free(&app->staged);
    cm_outbox_rows_init(&app->staged);
    /* a batch run again starts over */
    app->npend = 0;
    if (app->pend_arena)
        cm_arena_reset(app->pend_arena);
}

int inv_on_order_tx_end(cm_db *db, void *arg)
{
    inv_app *app = arg;
    int rc = flush_confirms(db, app);
    return rc ? rc : inv_store_write_events(db, &app->staged);
}

/* ---- app: hot path, sweeper, invariant metric ---- */

/* a sweeper tick: reservations past their ttl, and now and then the
 * invariant check behind the metric */
void inv_sweep(cm_service *svc, cm_db *db, void *p)
{
    (void)svc;
    inv_app *app = p;
    int expired = 0, rc;
    do {
        inv_ev_ctx ec = {.on = app->events_on};
        rc = inv_store_expire_due(db, &ec, 200, &expired, inv_soldout_mark, app->soldout);
        if (rc == 0 && expired)
            cm_counter_add(app->expired, (uint64_t)expired);
    } while (rc == 0 && expired == 200);
    if (rc)
        cm_log_warn("sweeper could not expire reservations", "error", cm_strerror(rc), NULL);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ms = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    if (ms >= app->next_check) {
        /* every tenant, every sku: the metric says whether all hold */
        size_t total = 0;
        int64_t checked = 0, at = 0;
        inv_breach one;
        if (inv_store_check(db, NULL, NULL, 0, &one, 1, &total, &checked, &at) == 0) {
            cm_gauge_set(app->invariants_ok, total == 0 ? 1 : 0);
            cm_gauge_set(app->violations, (double)total);
            if (total)
                cm_log_error("inventory invariants violated", "sku", one.level.sku, NULL);
        }
        app->next_check = ms + (long long)app->check_s * 1000;
    }
}

/* a cm_group's commit: the reservations that queued, in one transaction on
 * the leading call's connection (README.md, "Reserve: the hot path") */
static int reserve_batch(void *arg, void *db, void *const *items, size_t n)
{
    inv_app *app = arg;
    int rc = inv_store_reserve_batch(db, (inv_reserve_item *const *)items, n, inv_soldout_mark,
                                     app->soldout);
    if (rc)
        cm_log_warn("reservation batch failed", "error", cm_strerror(rc), NULL);
    return rc;
}

int inv_app_init(cm_service *svc, void **out, char *err, size_t errlen)
{
    inv_app *app = calloc(1, sizeof *app);
    if (!app)
        return CM_ENOMEM;
    app->svc = svc;
    cm_outbox_rows_init(&app->staged);
    int hot_on = (int)cm_service_int(svc, "INVENTORY_HOT_PATH");
    app->events_on = (int)cm_service_int(svc, "INVENTORY_EVENTS");
    /* the check aggregates every audit row: not too often */
    app->check_s = (int)cm_service_int(svc, "INVENTORY_INVARIANT_CHECK_S");
    int batchers = (int)cm_service_int(svc, "INVENTORY_BATCHERS");
    int max_batch = (int)cm_service_int(svc, "INVENTORY_MAX_BATCH");
    int ttl = (int)cm_service_int(svc, "INVENTORY_SOLD_OUT_TTL_MS");
    cm_metrics *m = cm_service_metrics(svc);
    app->invariants_ok = cm_metrics_gauge(m, "inventory_invariants_ok",
                                          "1 when every sku's invariants held at the last check "
                                          "(every INVENTORY_INVARIANT_CHECK_S), 0 otherwise",
                                          NULL);
    app->violations = cm_metrics_gauge(m, "inventory_invariant_violations",
                                       "invariant violations found by the last check", NULL);
    app->expired = cm_metrics_counter(m, "inventory_reservations_expired_total",
                                      "reservations expired by this replica's sweeper", NULL);
    app->soldout_fast = cm_metrics_counter(
        m, "inventory_sold_out_fast_total",
        "reserve calls answered sold out from memory, without the database", NULL);
    app->refused_events = cm_metrics_counter(
        m, "inventory_order_events_refused_total",
        "order events that could not change their reservation (an order paid after its "
        "reservation was released or expired: stock not confirmed, to be resolved by hand)",
        NULL);
    cm_gauge_set(app->invariants_ok, 1);
    if (hot_on) {
        /* batcher threads, back to back, on connections of their own: the
         * batch statements are prepared on these few (README.md) */
        cm_group_opts o = {.commit = reserve_batch,
                           .arg = app,
                           .max_batch = max_batch,
                           .leaders = batchers,
                           .conns = (void *const *)app->batch_db,
                           .threads = 1};
        const char *dsn = cm_service_config(svc)->pg_dsn;
        int rc = 0;
        for (int i = 0; i < batchers && rc == 0; i++)
            rc = cm_db_connect(&app->batch_db[i], dsn, cm_service_schema(svc), err, errlen);
        if (rc == 0 && (rc = inv_soldout_new(&app->soldout, ttl)) == 0 &&
            (rc = cm_group_new(&app->hot, &o)) != 0)
            snprintf(err, errlen, "could not create the reservation hot path");
        if (rc) {
            inv_app_fini(svc, app);
            return rc;
        }
    }
    *out = app;
    return 0;
}

void inv_app_fini(cm_service *svc, void *p)
{
    (void)svc;
    inv_app *app = p;
    if (!app)
        return;
    cm_group_free(app->hot);
    inv_soldout_free(app->soldout);
    for (int i = 0; i < INV_BATCHERS_MAX; i++)
        cm_db_free(app->batch_db[i]);
    cm_outbox_rows_free(&app->staged);
    free(app->pend);
    free(app->pend_ec);
    cm_arena_free(app->pend_arena);
    free(app);
}
