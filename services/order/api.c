/*
 * OrderService handlers: validate (ord_domain), reserve stock in inventory,
 * call the store, map verdicts to statuses that name the field. the saga
 * of CreateOrder is described in README.md.
 */
#include "ord_api.h"

#include "cm_auth.h"
#include "cm_err.h"
#include "cm_group.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "cm_money.h"
#include "cm_page.h"
#include "cm_pb.h"
#include "cm_rpc_client.h"
#include "ord_domain.h"
#include "ord_events.h"
#include "ord_metrics.h"
#include "ord_saga.h"
#include "ord_store.h"

#include <errno.h>
#include <grpc/status.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commerce/inventory/v1/inventory_service.pb-c.h"
#include "commerce/order/v1/order_service.pb-c.h"

/* per-tenant payment timeouts, cached for a while (tenant_settings) */
#define TENANT_CACHE 64
#define TENANT_CACHE_MS 10000

typedef struct tenant_entry {
    char tenant[128];
    int64_t normal_ms, flash_ms; /* 0: the service defaults */
    int64_t until_ms;
} tenant_entry;

typedef struct ord_app {
    cm_service *svc;
    int64_t timeout_ms, flash_timeout_ms, margin_ms;
    int64_t auto_complete_s; /* ORDER_AUTO_COMPLETE_DAYS, in seconds */
    int pause_ms;
    const char *topic; /* ORDER_TOPIC */
    cm_group *creates; /* the group commit of CreateOrder */
    pthread_mutex_t mu;
    tenant_entry tenants[TENANT_CACHE];
    ord_saga *saga; /* Reserve, and the queued Releases */
    cm_counter *rejected, *timed_out, *continued, *auto_completed;
    ord_metrics *margin; /* the gross-margin counters */
} ord_app;

/* ---- helpers ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* where a handler's events go, and the trace they carry */
static ord_ev_ctx ev_of(cm_rpc_ctx *ctx)
{
    const ord_app *app = cm_service_app(ctx);
    return (ord_ev_ctx){.topic = app->topic, .traceparent = cm_rpc_ctx_traceparent(ctx)};
}

/* a Timestamp field: unset gives def; a negative or absurd one is refused */
static int check_ts(cm_rpc_ctx *ctx, const Google__Protobuf__Timestamp *t, const char *field,
                    int64_t now, int64_t *out)
{
    if (!t) {
        *out = now;
        return 0;
    }
    /* checked before any arithmetic: seconds near 2^63 would overflow */
    if (cm_pb_timestamp_check(t, out) || t->seconds <= 0)
        return cm_rpc_fail_field(ctx, field, "must be a valid time after 1970");
    if (*out > now + ORD_PAID_AT_SKEW_MS)
        return cm_rpc_fail_field(ctx, field, "must not be more than 5 minutes in the future");
    return 0;
}

static int fail_v(cm_rpc_ctx *ctx, const ord_violation *v)
{
    if (v->reason[0])
        cm_rpc_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, cm_rpc_strdup(ctx, v->reason),
                    cm_arena_printf(cm_rpc_ctx_arena(ctx), "%s: %s", v->field, v->why));
    return cm_rpc_fail_field(ctx, v->field, v->why);
}

static int not_found(cm_rpc_ctx *ctx, const char *order_id)
{
    int f = cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND",
                        cm_arena_printf(cm_rpc_ctx_arena(ctx), "order %s not found", order_id));
    cm_rpc_fail_meta(ctx, "order_id", order_id);
    return f;
}

static int key_reused(cm_rpc_ctx *ctx, const char *field)
{
    int f = cm_rpc_fail(ctx, GRPC_STATUS_ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                        cm_arena_printf(cm_rpc_ctx_arena(ctx),
                                        "%s was already used with a different request", field));
    cm_rpc_fail_meta(ctx, "field", field);
    return f;
}

static const char *state_name(int s)
{
    static const char *names[] = {
        "UNSPECIFIED", "PENDING_PAYMENT",    "PAID",    "SHIPPED", "COMPLETED",
        "CANCELLED",   "PARTIALLY_REFUNDED", "REFUNDED"};
    return s >= 0 && s <= 7 ? names[s] : "UNKNOWN";
}

static int illegal(cm_rpc_ctx *ctx, const ord_order *o, const char *what)
{
    int f = cm_rpc_fail(
        ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
        cm_arena_printf(cm_rpc_ctx_arena(ctx), "%s: the order is %s", what, state_name(o->state)));
    cm_rpc_fail_meta(ctx, "state", state_name(o->state));
    return f;
}

static int db_fail(cm_rpc_ctx *ctx, int rc, const char *what)
{
    if (rc == CM_ECONFLICT)
        return cm_rpc_fail(ctx, GRPC_STATUS_ABORTED, "CONCURRENT_MODIFICATION",
                           "the order changed concurrently: retry with the same key");
    if (rc == CM_EUNAVAIL)
        return cm_rpc_fail(ctx, GRPC_STATUS_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                           "the database is unavailable: retry with the same key");
    return cm_rpc_fail_err(ctx, rc, what);
}

static int order_id_ok(cm_rpc_ctx *ctx, const char *id)
{
    if (!id || !*id)
        return cm_rpc_fail_field(ctx, "order_id", "required");
    /* checked before any lookup: an id is echoed in NOT_FOUND */
    if (!cm_id_is_uuid(id))
        return cm_rpc_fail_field(ctx, "order_id", "must be an order id as CreateOrder returns it");
    return 0;
}

/* a canonical body for a request's hash: fields joined with their lengths */
static char *canon(cm_arena *a, const char *fmt_tag, const char *const *fields, size_t n)
{
    char *s = cm_arena_strdup(a, fmt_tag);
    for (size_t i = 0; s && i < n; i++) {
        const char *f = fields[i] ? fields[i] : "";
        s = cm_arena_printf(a, "%s|%zu:%s", s, strlen(f), f);
    }
    return s;
}

static void hash_of(const char *body, char out[ORD_HASH_HEX + 1])
{
    ord_hash(body ? body : "", body ? strlen(body) : 0, out);
}

static const char *num(cm_arena *a, long long v)
{
    return cm_arena_printf(a, "%lld", v);
}

/* ---- tenant settings ---- */

/* the cache slot of a tenant */
static tenant_entry *tenant_slot(ord_app *app, const char *tenant)
{
    size_t h = 5381;
    for (const char *c = tenant; *c; c++)
        h = h * 33 + (unsigned char)*c;
    return &app->tenants[h % TENANT_CACHE];
}

/* the tenant's payment timeouts (cached); 0 or the database error. never
 * the defaults in place of a row that could not be read: the timeout sets
 * the reservation's ttl, which a retry must repeat exactly */
static int timeouts_for(ord_app *app, cm_rpc_ctx *ctx, const char *tenant, int64_t *normal,
                        int64_t *flash)
{
    *normal = app->timeout_ms;
    *flash = app->flash_timeout_ms;
    int64_t now = now_ms();
    tenant_entry *e = tenant_slot(app, tenant);
    pthread_mutex_lock(&app->mu);
    int hit = strcmp(e->tenant, tenant) == 0 && e->until_ms > now;
    tenant_entry copy = *e;
    pthread_mutex_unlock(&app->mu);
    if (!hit) {
        int64_t n = 0, f = 0;
        /* survives a lost connection */
        int rc = ord_store_tenant_timeouts(cm_service_db(ctx), tenant, &n, &f);
        if (rc != 0 && rc != CM_ENOTFOUND)
            return rc;
        if (rc != 0)
            n = f = 0;
        snprintf(copy.tenant, sizeof copy.tenant, "%s", tenant);
        copy.normal_ms = n;
        copy.flash_ms = f;
        copy.until_ms = now + TENANT_CACHE_MS;
        pthread_mutex_lock(&app->mu);
        *e = copy;
        pthread_mutex_unlock(&app->mu);
    }
    if (copy.normal_ms)
        *normal = copy.normal_ms;
    if (copy.flash_ms)
        *flash = copy.flash_ms;
    return 0;
}

/* ---- reads ---- */

/* cost prices are the tenant's secret (GetCost and QueryMargin are for
 * admins): a merchant's token gets its orders without the costs and the
 * margin made of them */
static Commerce__Order__V1__Order *for_caller(cm_rpc_ctx *ctx, Commerce__Order__V1__Order *m)
{
    if (!m || !cm_rpc_ctx_merchant_scope(ctx))
        return m;
    m->cost_amount = m->cost_reversed = m->gross_margin = NULL;
    m->cost_complete = 0;
    for (size_t i = 0; i < m->n_lines; i++)
        m->lines[i]->unit_cost = m->lines[i]->cost_reversed = NULL;
    for (size_t i = 0; i < m->n_refunds; i++) {
        Commerce__Order__V1__Refund *r = m->refunds[i];
        r->cost_reversed = NULL;
        for (size_t k = 0; k < r->n_lines; k++)
            r->lines[k]->cost_reversed = NULL;
    }
    return m;
}

static int get_order(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Order__V1__GetOrderRequest *req = (const void *)in;
    Commerce__Order__V1__GetOrderResponse *resp = (void *)out;
    if (order_id_ok(ctx, req->order_id))
        return -1;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    ord_order *o = cm_rpc_alloc(ctx, sizeof *o);
    if (!o)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "get order");
    /* a merchant's token: another merchant's order is as unknown */
    int rc = ord_store_get(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->order_id,
                           cm_rpc_ctx_merchant_scope(ctx), a, o);
    if (rc == CM_ENOTFOUND)
        return not_found(ctx, req->order_id);
    if (rc)
        return db_fail(ctx, rc, "could not read the order");
    resp->order = for_caller(ctx, ord_pb_order(a, o));
    return resp->order ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "get order");
}

static int int_cmp(const void *x, const void *y)
{
    return *(const int *)x - *(const int *)y;
}

/* a listing's time range filter (the field's name for errors): *from and
 * *to in ms, 0 where open. 0, or -1 with the call failed */
static int list_range(cm_rpc_ctx *ctx, const Commerce__Common__V1__TimeRange *tr, const char *name,
                      int64_t *from, int64_t *to)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    *from = *to = 0;
    if (!tr)
        return 0;
    if (tr->start_at && (cm_pb_timestamp_check(tr->start_at, from) || *from <= 0))
        return cm_rpc_fail_field(ctx, cm_arena_printf(a, "%s.start_at", name),
                                 "must be a valid time after 1970");
    if (tr->end_at && (cm_pb_timestamp_check(tr->end_at, to) || *to <= 0))
        return cm_rpc_fail_field(ctx, cm_arena_printf(a, "%s.end_at", name),
                                 "must be a valid time after 1970");
    if (*from && *to && *to <= *from)
        return cm_rpc_fail_field(ctx, cm_arena_printf(a, "%s.end_at", name),
                                 cm_arena_printf(a, "must be after %s.start_at", name));
    return 0;
}

int ord_api_list_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__ListOrdersRequest *req,
                    ord_list_in *li)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(li, 0, sizeof *li);
    if (!ord_valid_text(req->buyer_id, ORD_PARTY_MAX, 0))
        return cm_rpc_fail_field(ctx, "buyer_id",
                                 "at most 64 characters of utf-8, no control characters");
    if (!ord_valid_text(req->merchant_id, ORD_PARTY_MAX, 0))
        return cm_rpc_fail_field(ctx, "merchant_id",
                                 "at most 64 characters of utf-8, no control characters");
    if (!ord_valid_text(req->channel_id, ORD_PARTY_MAX, 0))
        return cm_rpc_fail_field(ctx, "channel_id",
                                 "at most 64 characters of utf-8, no control characters");
    if (req->n_states > 7)
        return cm_rpc_fail_field(ctx, "states", "at most 7 states");
    int *states = li->states;
    for (size_t i = 0; i < req->n_states; i++) {
        int s = (int)req->states[i];
        if (s < ORD_PENDING || s > ORD_REFUNDED)
            return cm_rpc_fail_field(ctx, cm_arena_printf(a, "states[%zu]", i),
                                     "must be a known state, not UNSPECIFIED");
        states[i] = s;
    }
    qsort(states, req->n_states, sizeof states[0], int_cmp);
    int64_t from = 0, to = 0, paid_from = 0, paid_to = 0;
    if (list_range(ctx, req->created, "created", &from, &to) ||
        list_range(ctx, req->paid, "paid", &paid_from, &paid_to))
        return -1;
    /* a merchant's token lists its own orders: its merchant_id is the
     * filter (another merchant's: an empty page) */
    const char *merchant = cm_rpc_scope_filter(cm_rpc_ctx_merchant_scope(ctx), req->merchant_id);
    char *filters = cm_arena_printf(a, "b=%s\nm=%s\nc=%s\nf=%lld\nt=%lld\ns=", req->buyer_id,
                                    merchant ? merchant : req->merchant_id, req->channel_id,
                                    (long long)from, (long long)to);
    for (size_t i = 0; filters && i < req->n_states; i++)
        filters = cm_arena_printf(a, "%s%d,", filters, states[i]);
    /* appended only when set, so the tokens of listings without it stay
     * valid across the upgrade; set with no bounds ("only paid orders")
     * differs from unset */
    if (filters && req->paid)
        filters = cm_arena_printf(a, "%s\np=%lld,%lld", filters, (long long)paid_from,
                                  (long long)paid_to);
    li->filters = cm_page_filters(filters ? filters : "");
    /* the position is "<created ms>.<order id>": the listing's order */
    char pos[CM_PAGE_POSITION_MAX + 1];
    const char *at;
    int limit;
    if (cm_page_begin(ctx, req->page_size, req->page_token, 'o', li->filters, pos, &at, &limit))
        return -1;
    if (!merchant) {
        li->none = 1; /* another merchant's orders: none to this caller */
        return 0;
    }
    li->q = (ord_list_q){.tenant = cm_rpc_ctx_tenant(ctx),
                         .buyer_id = req->buyer_id,
                         .merchant_id = merchant,
                         .channel_id = req->channel_id,
                         .states = states,
                         .nstates = req->n_states,
                         .from_ms = from,
                         .to_ms = to,
                         .paid = req->paid != NULL,
                         .paid_from_ms = paid_from,
                         .paid_to_ms = paid_to,
                         .limit = limit};
    if (at) {
        long long ms = 0;
        int used = 0;
        if (sscanf(at, "%lld.%n", &ms, &used) != 1 || used <= 0 ||
            strlen(at + used) >= sizeof li->after || !cm_id_is_uuid(at + used))
            return cm_page_bad_token(ctx);
        snprintf(li->after, sizeof li->after, "%s", at + used);
        li->q.after_created_ms = ms;
        li->q.after_id = li->after;
    }
    return 0;
}

static int list_orders(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Order__V1__ListOrdersRequest *req = (const void *)in;
    Commerce__Order__V1__ListOrdersResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    ord_list_in *li = cm_rpc_alloc(ctx, sizeof *li);
    if (!li)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "list orders");
    if (ord_api_list_in(ctx, req, li))
        return -1;
    if (li->none)
        return 0;
    const ord_list_q *q = &li->q;
    int limit = q->limit;
    uint64_t fh = li->filters;
    ord_order *rows = cm_rpc_alloc(ctx, (size_t)limit * sizeof *rows);
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "list orders");
    size_t n = 0;
    int more = 0;
    int rc = ord_store_list(cm_service_db(ctx), q, a, rows, &n, &more);
    if (rc)
        return db_fail(ctx, rc, "could not list orders");
    if (n) {
        resp->orders = cm_rpc_alloc(ctx, n * sizeof *resp->orders);
        if (!resp->orders)
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "list orders");
        for (size_t i = 0; i < n; i++) {
            resp->orders[i] = for_caller(ctx, ord_pb_order(a, &rows[i]));
            if (!resp->orders[i])
                return cm_rpc_fail_err(ctx, CM_ENOMEM, "list orders");
        }
        resp->n_orders = n;
    }
    const char *end =
        n ? cm_arena_printf(a, "%lld.%s", (long long)rows[n - 1].created_ms, rows[n - 1].order_id)
          : NULL;
    return cm_page_next(ctx, more, 'o', fh, end, &resp->next_page_token);
}

/* ---- create: reserve, then store ---- */

/* passes a refusal of inventory's on to our caller: its code, message,
 * ErrorInfo (reason, metadata such as the skus short) and typed details
 * (StockShortageDetail, BadRequest); inventory's own misconfiguration
 * towards us becomes INTERNAL (cm_rpc_fail_forward) */
static int forward(cm_rpc_ctx *ctx, const cm_rpc_status *st)
{
    return cm_rpc_fail_forward(ctx, st);
}

static int unavailable(cm_rpc_ctx *ctx)
{
    int f = cm_rpc_fail(ctx, GRPC_STATUS_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                        "inventory is unavailable or slow: nothing was created; retry with the "
                        "same request_id");
    cm_rpc_fail_meta(ctx, "dependency", "inventory");
    return f;
}

/* answers a create whose request_id has an order already */
static int answer_existing(cm_rpc_ctx *ctx, const ord_order *o, const char *stored,
                           const char *hash, Commerce__Order__V1__CreateOrderResponse *resp)
{
    if (strcmp(stored, hash) != 0)
        return key_reused(ctx, "request_id");
    resp->order = ord_pb_order(cm_rpc_ctx_arena(ctx), o);
    return resp->order ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "create order");
}

/* ---- create, in its phases: check, reserve, store ---- */

int ord_api_create_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__CreateOrderRequest *req,
                      ord_create_in *ci, ord_order *o)
{
    size_t n = req->n_lines;
    ord_line_in *lines = cm_rpc_alloc(ctx, (n ? n : 1) * sizeof *lines);
    if (!lines)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "create order");
    for (size_t i = 0; i < n; i++) {
        const Commerce__Order__V1__CreateOrderLine *l = req->lines[i];
        lines[i].sku = l->sku;
        lines[i].qty = l->quantity;
        lines[i].has_price = l->unit_price != NULL;
        lines[i].unit_price = l->unit_price ? l->unit_price->amount_minor : 0;
        lines[i].price_currency = l->unit_price ? l->unit_price->currency : NULL;
    }
    *ci = (ord_create_in){.request_id = req->request_id,
                          .buyer_id = req->buyer_id,
                          .merchant_id = req->merchant_id,
                          .channel_id = req->channel_id,
                          .currency = req->currency,
                          .external_ref = req->external_ref,
                          .lines = lines,
                          .nlines = n,
                          .timeout_ms = -1};
    if (req->payment_timeout) {
        const Google__Protobuf__Duration *d = req->payment_timeout;
        if (cm_pb_duration_check(d, &ci->timeout_ms) || ci->timeout_ms < 0 ||
            ci->timeout_ms > ORD_TIMEOUT_MAX_MS)
            return cm_rpc_fail_field(ctx, "payment_timeout",
                                     "must be between 1 minute and 72 hours");
    }
    ord_violation v;
    return ord_check_create(ci, o, &v) ? fail_v(ctx, &v) : 0;
}

/* what a create phase decided: go on, or the handler's answer is rc */
typedef struct create_step {
    int done;
    int rc;
} create_step;

static create_step answered(int rc)
{
    return (create_step){.done = 1, .rc = rc};
}

/* 1. reserve under the order id derived from the request id: a retry
 * finds its reservation instead of making a second one (README.md). a
 * retry of a create that was stored is answered from the store. */
static create_step create_reserve(cm_rpc_ctx *ctx, ord_app *app,
                                  const Commerce__Order__V1__CreateOrderRequest *req, ord_order *o,
                                  const char *hash, int64_t ttl_ms,
                                  const Commerce__Inventory__V1__Reservation **out,
                                  Commerce__Order__V1__CreateOrderResponse *resp)
{
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    const Commerce__Inventory__V1__Reservation *resv = NULL;
    cm_rpc_status st;
    int looked = 0;
    for (unsigned gen = 0; gen < ORD_ID_GENERATIONS; gen++) {
        ord_order_id(tenant, req->request_id, gen, o->order_id);
        resv = ord_saga_reserve(app->saga, ctx, req, o, ttl_ms, &st);
        if (resv &&
            resv->state == COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_ACTIVE)
            break;
        /* a retry of a create that was stored (its stock may have sold out
         * or been confirmed since) answers from the store */
        if (!looked) {
            ord_order *got = cm_rpc_alloc(ctx, sizeof *got);
            char stored[ORD_HASH_HEX + 1];
            if (!got)
                return answered(cm_rpc_fail_err(ctx, CM_ENOMEM, "create order"));
            int g = ord_store_get_by_request(cm_service_db(ctx), tenant, req->request_id,
                                             cm_rpc_ctx_arena(ctx), got, stored);
            if (g == 0)
                return answered(answer_existing(ctx, got, stored, hash, resp));
            if (g != CM_ENOTFOUND)
                return answered(db_fail(ctx, g, "could not read the order"));
            looked = 1;
        }
        if (!resv && st.code == GRPC_STATUS_ALREADY_EXISTS &&
            (resv = ord_saga_earlier_attempt(app->saga, ctx, req, o)) != NULL) {
            cm_counter_add(app->continued, 1);
            break;
        }
        if (resv || st.code == GRPC_STATUS_ALREADY_EXISTS ||
            (st.code == GRPC_STATUS_FAILED_PRECONDITION &&
             strcmp(st.reason, "ILLEGAL_STATE_TRANSITION") == 0)) {
            /* this id's reservation was given up (released, expired; or
             * released before it arrived: inventory's tombstone refuses it)
             * or made for another body by an attempt that stored nothing:
             * the next generation reserves afresh */
            resv = NULL;
            continue;
        }
        switch (st.code) {
        case GRPC_STATUS_UNAVAILABLE:
        case GRPC_STATUS_DEADLINE_EXCEEDED:
        case GRPC_STATUS_CANCELLED:
            /* inventory may still act on it: give it back so nothing stays
             * behind; a retry moves on to the next generation */
            ord_saga_release_later(app->saga, ctx, o->order_id);
            return answered(unavailable(ctx));
        case GRPC_STATUS_RESOURCE_EXHAUSTED:
        case GRPC_STATUS_ABORTED:
            return answered(unavailable(ctx));
        default:
            return answered(forward(ctx, &st));
        }
    }
    if (!resv)
        return answered(cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION,
                                    "ILLEGAL_STATE_TRANSITION",
                                    "the stock of too many abandoned attempts with this "
                                    "request_id lapsed: create the order with a new request_id"));
    *out = resv;
    return (create_step){0};
}

/* what the reservation decided for the order: its lines' flash sales, and
 * the deadlines (the payment timeout is the flash one when a line is) */
static void create_apply_reservation(ord_app *app, ord_order *o,
                                     const Commerce__Inventory__V1__Reservation *resv,
                                     int64_t timeout, int64_t flash_timeout)
{
    int64_t costs[ORD_LINES_MAX];
    const char *ccys[ORD_LINES_MAX];
    for (size_t k = 0; k < o->nlines; k++) {
        costs[k] = -1;
        ccys[k] = NULL;
    }
    for (size_t i = 0; i < resv->n_lines; i++) {
        const Commerce__Inventory__V1__ReservationLine *l = resv->lines[i];
        for (size_t k = 0; k < o->nlines; k++)
            if (strcmp(o->lines[k].sku, l->sku) == 0) {
                snprintf(o->lines[k].flash_sale_id, sizeof o->lines[k].flash_sale_id, "%s",
                         l->flash_sale_id);
                /* the cost comes with the reservation: no extra call */
                costs[k] = l->unit_cost ? l->unit_cost->amount_minor : -1;
                ccys[k] = l->unit_cost ? l->unit_cost->currency : NULL;
            }
    }
    ord_set_costs(o, costs, ccys);
    o->flash = resv->flash_sale;
    if (o->flash && flash_timeout >= 0)
        timeout = flash_timeout;
    o->created_ms = now_ms();
    o->resv_expires_ms = cm_pb_timestamp_ms(resv->expires_at);
    o->deadline_ms = ord_deadline(o->created_ms, timeout, o->resv_expires_ms, app->margin_ms);
}

/* a cm_group's commit: the creates that queued, in one statement on the
 * leading caller's connection */
static int create_batch(void *arg, void *db, void *const *items, size_t n)
{
    (void)arg;
    return ord_store_create_many(db, (ord_new *const *)items, n);
}

/* 2. the order, its lines and OrderCreated in one transaction, shared with
 * the creates running concurrently (group commit, create_batch) */
static int create_store(cm_rpc_ctx *ctx, ord_app *app,
                        const Commerce__Order__V1__CreateOrderRequest *req, ord_order *o,
                        const char *hash, const ord_ev_ctx *ev,
                        Commerce__Order__V1__CreateOrderResponse *resp)
{
    cm_db *db = cm_service_db(ctx);
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    ord_new item = {.tenant = tenant, .hash = hash, .ev = ev, .o = o};
    int rc = cm_group_submit(app->creates, db, &item);
    if (rc == 0 && item.inserted) {
        resp->order = ord_pb_order(a, o);
        return resp->order ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "create order");
    }
    /* the request_id has an order already (a concurrent retry stored it),
     * or storing failed: stored or not? only a definite "not" gives the
     * stock back */
    ord_order *got = cm_rpc_alloc(ctx, sizeof *got);
    char stored[ORD_HASH_HEX + 1];
    if (!got)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "create order");
    int g = ord_store_get_by_request(db, tenant, req->request_id, a, got, stored);
    if (g == 0) {
        /* stored under another generation: ours is nobody's */
        if (strcmp(got->order_id, o->order_id) != 0)
            ord_saga_release_later(app->saga, ctx, o->order_id);
        return answer_existing(ctx, got, stored, hash, resp);
    }
    if (g == CM_ENOTFOUND && rc != 0)
        ord_saga_release_later(app->saga, ctx, o->order_id);
    if (rc == 0)
        rc = g == CM_ENOTFOUND ? CM_ECONFLICT : g; /* skipped, yet not there: retry */
    return db_fail(ctx, rc, "could not store the order");
}

static int create_order(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Order__V1__CreateOrderRequest *req = (const void *)in;
    Commerce__Order__V1__CreateOrderResponse *resp = (void *)out;
    ord_app *app = cm_service_app(ctx);
    ord_order *o = cm_rpc_alloc(ctx, sizeof *o);
    if (!o)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "create order");
    ord_create_in ci;
    if (ord_api_create_in(ctx, req, &ci, o))
        return -1;
    char hash[ORD_HASH_HEX + 1];
    ord_create_hash(&ci, hash);
    int64_t normal, flash;
    int trc = timeouts_for(app, ctx, cm_rpc_ctx_tenant(ctx), &normal, &flash);
    if (trc)
        return db_fail(ctx, trc, "could not read the tenant's settings");
    /* no connection is held while inventory reserves (a settings miss
     * took one) */
    cm_service_db_done(ctx);
    /* the request's own timeout wins over the tenant's, flash or not */
    int64_t timeout = ci.timeout_ms >= 0 ? ci.timeout_ms : normal;
    const Commerce__Inventory__V1__Reservation *resv = NULL;
    create_step step =
        create_reserve(ctx, app, req, o, hash, timeout + app->margin_ms, &resv, resp);
    if (step.done)
        return step.rc;
    create_apply_reservation(app, o, resv, timeout, ci.timeout_ms >= 0 ? -1 : flash);
    if (app->pause_ms > 0)
        usleep((useconds_t)app->pause_ms * 1000); /* tests: a window to kill -9 in */
    ord_ev_ctx ev = ev_of(ctx);
    return create_store(ctx, app, req, o, hash, &ev, resp);
}

/* ---- payment ---- */

static int provider_ok(const char *s)
{
    if (!s || !*s || strlen(s) > ORD_PROVIDER_MAX)
        return 0;
    for (const char *c = s; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '-' ||
              *c == '.'))
            return 0;
    return 1;
}

int ord_api_pay_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__MarkPaidRequest *req, int64_t now,
                   int64_t *paid_at)
{
    if (!ord_valid_key(req->payment_id, ORD_KEY_MAX))
        return cm_rpc_fail_field(ctx, "payment_id",
                                 "required: 1-64 characters from [A-Za-z0-9._:-]");
    if (order_id_ok(ctx, req->order_id))
        return -1;
    if (!req->amount)
        return cm_rpc_fail_field(ctx, "amount", "required: the amount captured");
    if (!provider_ok(req->provider))
        return cm_rpc_fail_field(ctx, "provider",
                                 "required: at most 32 lower-case characters from [a-z0-9_.-]");
    if (!ord_valid_text(req->provider_reference, ORD_REF_MAX, 0))
        return cm_rpc_fail_field(ctx, "provider_reference",
                                 "at most 128 characters of utf-8, no control characters");
    return check_ts(ctx, req->paid_at, "paid_at", now, paid_at);
}

static int mark_paid(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    ord_ev_ctx ev = ev_of(ctx);
    const Commerce__Order__V1__MarkPaidRequest *req = (const void *)in;
    Commerce__Order__V1__MarkPaidResponse *resp = (void *)out;
    ord_app *app = cm_service_app(ctx);
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    int64_t now = now_ms(), paid_at = 0;
    if (ord_api_pay_in(ctx, req, now, &paid_at))
        return -1;
    const char *f[] = {req->order_id,         num(a, req->amount->amount_minor),
                       req->amount->currency, req->paid_at ? num(a, paid_at) : "",
                       req->provider,         req->provider_reference};
    char hash[ORD_HASH_HEX + 1];
    hash_of(canon(a, "pay.v1", f, 6), hash);
    ord_pay_req q = {.ev = &ev,
                     .tenant = cm_rpc_ctx_tenant(ctx),
                     .order_id = req->order_id,
                     .payment_id = req->payment_id,
                     .hash = hash,
                     .amount = req->amount->amount_minor,
                     .currency = req->amount->currency,
                     .provider = req->provider,
                     .provider_ref = req->provider_reference,
                     .paid_ms = paid_at,
                     .now_ms = now,
                     .grace_ms = app->margin_ms / 2};
    ord_order *o = cm_rpc_alloc(ctx, sizeof *o);
    if (!o)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "mark paid");
    int verdict = 0;
    int rc = ord_store_pay(cm_service_db(ctx), &q, a, o, &verdict);
    if (rc == CM_EEXIST)
        return key_reused(ctx, "payment_id"); /* taken by another order meanwhile */
    if (rc)
        return db_fail(ctx, rc, "could not record the payment");
    if (verdict == ORD_OK)
        ord_metrics_paid(((ord_app *)cm_service_app(ctx))->margin, cm_rpc_ctx_tenant(ctx), o);
    switch (verdict) {
    case ORD_OK:
    case ORD_SAME:
        resp->order = ord_pb_order(a, o);
        return resp->order ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "mark paid");
    case ORD_NOT_FOUND:
        return not_found(ctx, req->order_id);
    case ORD_KEY_REUSED:
        return key_reused(ctx, "payment_id");
    case ORD_AMOUNT: {
        cm_rpc_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "AMOUNT_MISMATCH",
                    cm_arena_printf(a,
                                    "amount.amount_minor: %lld differs from the order total %lld",
                                    (long long)req->amount->amount_minor, (long long)o->total));
        cm_rpc_fail_meta(ctx, "total_amount", num(a, o->total));
        return cm_rpc_fail_field(ctx, "amount.amount_minor", "must equal the order total");
    }
    case ORD_CURRENCY:
        cm_rpc_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "CURRENCY_MISMATCH",
                    cm_arena_printf(a, "amount.currency: the order is in %s", o->currency));
        return cm_rpc_fail_field(ctx, "amount.currency", "must be the order currency");
    case ORD_LATE:
        cm_counter_add(app->rejected, 1);
        return illegal(ctx, o,
                       "payment refused, refund it with the provider: the order was cancelled "
                       "before it was paid");
    case ORD_DOUBLE_PAY: {
        cm_counter_add(app->rejected, 1);
        int r = illegal(ctx, o,
                        cm_arena_printf(a,
                                        "payment refused, refund it with the provider: the order "
                                        "is already paid by payment %s",
                                        o->payment_id));
        cm_rpc_fail_meta(ctx, "paid_by", o->payment_id);
        return r;
    }
    default:
        return illegal(ctx, o, "cannot mark paid");
    }
}

/* ---- cancel, ship, complete ---- */

static int transition(cm_rpc_ctx *ctx, ord_op_req *q, const char *what,
                      Commerce__Order__V1__Order **out)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    ord_order *o = cm_rpc_alloc(ctx, sizeof *o);
    if (!o)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, what);
    int verdict = 0;
    int rc = ord_store_transition(cm_service_db(ctx), q, a, o, &verdict);
    if (rc)
        return db_fail(ctx, rc, what);
    switch (verdict) {
    case ORD_OK:
    case ORD_NOOP:
    case ORD_SAME:
        *out = ord_pb_order(a, o);
        return *out ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, what);
    case ORD_NOT_FOUND:
        return not_found(ctx, q->order_id);
    case ORD_KEY_REUSED:
        return key_reused(ctx, "request_id");
    default:
        return illegal(ctx, o, what);
    }
}

static int op_common(cm_rpc_ctx *ctx, const char *request_id, const char *order_id)
{
    if (!ord_valid_key(request_id, ORD_KEY_MAX))
        return cm_rpc_fail_field(ctx, "request_id",
                                 "required: 1-64 characters from [A-Za-z0-9._:-]");
    return order_id_ok(ctx, order_id);
}

int ord_api_cancel_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__CancelOrderRequest *req)
{
    if (op_common(ctx, req->request_id, req->order_id))
        return -1;
    int r = (int)req->reason;
    if (r == 0 || r == ORD_CANCEL_PAYMENT_TIMEOUT || r < 0 || r > ORD_CANCEL_OTHER)
        return cm_rpc_fail_field(ctx, "reason",
                                 "required: BUYER_REQUESTED, MERCHANT_REQUESTED, RISK_CONTROL or "
                                 "OTHER (PAYMENT_TIMEOUT is set by the server only)");
    if (!ord_valid_text(req->note, ORD_NOTE_MAX, 0))
        return cm_rpc_fail_field(ctx, "note",
                                 "at most 256 characters of utf-8, no control characters");
    return 0;
}

static int cancel_order(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    ord_ev_ctx ev = ev_of(ctx);
    const Commerce__Order__V1__CancelOrderRequest *req = (const void *)in;
    Commerce__Order__V1__CancelOrderResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (ord_api_cancel_in(ctx, req))
        return -1;
    int r = (int)req->reason;
    const char *f[] = {req->order_id, num(a, r), req->note};
    char hash[ORD_HASH_HEX + 1];
    hash_of(canon(a, "cancel.v1", f, 3), hash);
    ord_op_req q = {.ev = &ev,
                    .tenant = cm_rpc_ctx_tenant(ctx),
                    .order_id = req->order_id,
                    .request_id = req->request_id,
                    .hash = hash,
                    .op = ORD_OP_CANCEL,
                    .now_ms = now_ms(),
                    .cancel_reason = r,
                    .note = req->note};
    return transition(ctx, &q, "cannot cancel", &resp->order);
}

int ord_api_ship_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__ShipOrderRequest *req, int64_t now,
                    int64_t *at)
{
    if (op_common(ctx, req->request_id, req->order_id))
        return -1;
    if (!ord_valid_text(req->carrier, ORD_PARTY_MAX, 0))
        return cm_rpc_fail_field(ctx, "carrier",
                                 "at most 64 characters of utf-8, no control characters");
    if (!ord_valid_text(req->tracking_number, ORD_REF_MAX, 0))
        return cm_rpc_fail_field(ctx, "tracking_number",
                                 "at most 128 characters of utf-8, no control characters");
    return check_ts(ctx, req->shipped_at, "shipped_at", now, at);
}

static int ship_order(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    ord_ev_ctx ev = ev_of(ctx);
    const Commerce__Order__V1__ShipOrderRequest *req = (const void *)in;
    Commerce__Order__V1__ShipOrderResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    int64_t now = now_ms(), at = 0;
    if (ord_api_ship_in(ctx, req, now, &at))
        return -1;
    const char *f[] = {req->order_id, req->carrier, req->tracking_number,
                       req->shipped_at ? num(a, at) : ""};
    char hash[ORD_HASH_HEX + 1];
    hash_of(canon(a, "ship.v1", f, 4), hash);
    ord_op_req q = {.ev = &ev,
                    .tenant = cm_rpc_ctx_tenant(ctx),
                    .order_id = req->order_id,
                    .request_id = req->request_id,
                    .hash = hash,
                    .op = ORD_OP_SHIP,
                    .now_ms = now,
                    .carrier = req->carrier,
                    .tracking = req->tracking_number,
                    .at_ms = at};
    return transition(ctx, &q, "cannot ship", &resp->order);
}

int ord_api_complete_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__CompleteOrderRequest *req,
                        int64_t now, int64_t *at)
{
    if (op_common(ctx, req->request_id, req->order_id))
        return -1;
    return check_ts(ctx, req->completed_at, "completed_at", now, at);
}

static int complete_order(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    ord_ev_ctx ev = ev_of(ctx);
    const Commerce__Order__V1__CompleteOrderRequest *req = (const void *)in;
    Commerce__Order__V1__CompleteOrderResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    int64_t now = now_ms(), at = 0;
    if (ord_api_complete_in(ctx, req, now, &at))
        return -1;
    const char *f[] = {req->order_id, req->completed_at ? num(a, at) : ""};
    char hash[ORD_HASH_HEX + 1];
    hash_of(canon(a, "complete.v1", f, 2), hash);
    ord_op_req q = {.ev = &ev,
                    .tenant = cm_rpc_ctx_tenant(ctx),
                    .order_id = req->order_id,
                    .request_id = req->request_id,
                    .hash = hash,
                    .op = ORD_OP_COMPLETE,
                    .now_ms = now,
                    .at_ms = at,
                    .completed_by = cm_rpc_ctx_subject(ctx)};
    return transition(ctx, &q, "cannot complete", &resp->order);
}

/* ---- refund ---- */

int ord_api_refund_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__RefundOrderRequest *req,
                      ord_refund_in *out, char **body_out)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (!ord_valid_key(req->refund_id, ORD_KEY_MAX))
        return cm_rpc_fail_field(ctx, "refund_id",
                                 "required: 1-64 characters from [A-Za-z0-9._:-]");
    if (order_id_ok(ctx, req->order_id))
        return -1;
    if (!ord_valid_text(req->reason, ORD_NOTE_MAX, 0))
        return cm_rpc_fail_field(ctx, "reason",
                                 "at most 256 characters of utf-8, no control characters");
    size_t n = req->n_lines;
    const char **skus = cm_rpc_alloc(ctx, (n ? n : 1) * sizeof *skus);
    int64_t *qtys = cm_rpc_alloc(ctx, (n ? n : 1) * sizeof *qtys);
    if (!skus || !qtys)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "refund");
    char *body = cm_arena_printf(
        a, "refund.v1|%s|%d|%d|%lld|%s|%zu:%s", req->order_id, (int)req->scope, req->amount != NULL,
        (long long)(req->amount ? req->amount->amount_minor : 0),
        req->amount ? req->amount->currency : "", strlen(req->reason), req->reason);
    for (size_t i = 0; i < n; i++) {
        skus[i] = req->lines[i]->sku;
        qtys[i] = req->lines[i]->quantity;
        body = cm_arena_printf(a, "%s|%s:%lld", body, skus[i], (long long)qtys[i]);
    }
    ord_refund_in ri = {.scope = (int)req->scope,
                        .skus = skus,
                        .qtys = qtys,
                        .nlines = n,
                        .has_amount = req->amount != NULL,
                        .amount = req->amount ? req->amount->amount_minor : 0,
                        .amount_currency = req->amount ? req->amount->currency : NULL};
    ord_violation v;
    if (ord_check_refund(&ri, &v))
        return fail_v(ctx, &v);
    if (!body)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "refund");
    *out = ri;
    *body_out = body;
    return 0;
}

static int refund_order(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    ord_ev_ctx ev = ev_of(ctx);
    const Commerce__Order__V1__RefundOrderRequest *req = (const void *)in;
    Commerce__Order__V1__RefundOrderResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    ord_refund_in ri;
    char *body;
    if (ord_api_refund_in(ctx, req, &ri, &body))
        return -1;
    char hash[ORD_HASH_HEX + 1];
    hash_of(body, hash);
    ord_refund_req q = {.ev = &ev,
                        .tenant = cm_rpc_ctx_tenant(ctx),
                        .order_id = req->order_id,
                        .refund_id = req->refund_id,
                        .hash = hash,
                        .reason = req->reason,
                        .in = &ri,
                        .now_ms = now_ms()};
    ord_order *o = cm_rpc_alloc(ctx, sizeof *o);
    ord_refund *r = cm_rpc_alloc(ctx, sizeof *r);
    if (!o || !r)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "refund");
    int verdict = 0;
    ord_violation v;
    memset(&v, 0, sizeof v);
    int rc = ord_store_refund(cm_service_db(ctx), &q, a, o, r, &verdict, &v);
    if (rc)
        return db_fail(ctx, rc, "could not record the refund");
    if (verdict == ORD_OK)
        ord_metrics_refunded(((ord_app *)cm_service_app(ctx))->margin, cm_rpc_ctx_tenant(ctx), o,
                             r);
    switch (verdict) {
    case ORD_OK:
    case ORD_SAME:
        resp->order = ord_pb_order(a, o);
        resp->refund = ord_pb_refund(a, r, o->currency);
        return resp->order && resp->refund ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "refund");
    case ORD_NOT_FOUND:
        return not_found(ctx, req->order_id);
    case ORD_KEY_REUSED:
        return key_reused(ctx, "refund_id");
    case ORD_BAD_INPUT:
    case ORD_CURRENCY:
        return fail_v(ctx, &v);
    case ORD_EXCEEDS: {
        int f =
            cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "REFUND_EXCEEDS_REFUNDABLE",
                        cm_arena_printf(a, "%s: %s (refundable %lld of %lld)", v.field, v.why,
                                        (long long)(o->total - o->refunded), (long long)o->total));
        cm_rpc_fail_meta(ctx, "field", cm_rpc_strdup(ctx, v.field));
        cm_rpc_fail_meta(ctx, "refundable", num(a, o->total - o->refunded));
        return f;
    }
    default:
        return illegal(ctx, o, "cannot refund");
    }
}

/* ---- tenant settings: the admin rpcs ---- */

/* this replica's cached entry of the tenant goes: its next create reads
 * the row. other replicas keep theirs until it ages out (TENANT_CACHE_MS) */
static void forget_tenant(ord_app *app, const char *tenant)
{
    tenant_entry *e = tenant_slot(app, tenant);
    pthread_mutex_lock(&app->mu);
    if (strcmp(e->tenant, tenant) == 0)
        e->until_ms = 0;
    pthread_mutex_unlock(&app->mu);
}

static Google__Protobuf__Duration *pb_seconds(cm_arena *a, int64_t s)
{
    Google__Protobuf__Duration *d = cm_arena_alloc(a, sizeof *d);
    if (d) {
        google__protobuf__duration__init(d);
        d->seconds = s;
    }
    return d;
}

static Commerce__Order__V1__TenantSettings *pb_settings(cm_arena *a, const ord_settings *s)
{
    Commerce__Order__V1__TenantSettings *m = cm_arena_alloc(a, sizeof *m);
    if (!m)
        return NULL;
    commerce__order__v1__tenant_settings__init(m);
    m->payment_timeout = pb_seconds(a, s->timeout_s);
    m->flash_payment_timeout = pb_seconds(a, s->flash_s);
    m->auto_complete_after = pb_seconds(a, s->auto_s);
    m->revision = s->revision;
    m->updated_at = s->updated_ms > 0 ? cm_pb_timestamp(a, s->updated_ms) : NULL;
    m->updated_by = cm_arena_strdup(a, s->updated_by);
    if (!m->payment_timeout || !m->flash_payment_timeout || !m->auto_complete_after ||
        !m->updated_by || (s->updated_ms > 0 && !m->updated_at))
        return NULL;
    return m;
}

static Commerce__Order__V1__TenantSettingsChange *pb_change(cm_arena *a,
                                                            const ord_settings_change *c)
{
    Commerce__Order__V1__TenantSettingsChange *m = cm_arena_alloc(a, sizeof *m);
    if (!m)
        return NULL;
    commerce__order__v1__tenant_settings_change__init(m);
    m->change_id = cm_arena_strdup(a, c->change_id);
    m->request_id = cm_arena_strdup(a, c->request_id);
    m->previous = c->has_old ? pb_settings(a, &c->old) : NULL;
    m->current = pb_settings(a, &c->cur);
    m->actor = cm_arena_strdup(a, c->actor);
    m->principal = cm_arena_strdup(a, c->principal);
    m->reason = cm_arena_strdup(a, c->reason);
    m->changed_at = cm_pb_timestamp(a, c->changed_ms);
    if (!m->change_id || !m->request_id || (c->has_old && !m->previous) || !m->current ||
        !m->actor || !m->principal || !m->reason || !m->changed_at)
        return NULL;
    return m;
}

/* the settings that apply: the tenant's row, else the service defaults
 * (revision 0) */
static int settings_now(ord_app *app, cm_db *db, const char *tenant, ord_settings *s)
{
    int rc = ord_store_get_settings(db, tenant, s);
    if (rc == CM_ENOTFOUND) {
        memset(s, 0, sizeof *s);
        s->timeout_s = app->timeout_ms / 1000;
        s->flash_s = app->flash_timeout_ms / 1000;
    }
    if (rc == 0 || rc == CM_ENOTFOUND) {
        if (s->auto_s == 0)
            s->auto_s = app->auto_complete_s;
        return 0;
    }
    return rc;
}

static int get_tenant_settings(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    (void)in;
    Commerce__Order__V1__GetTenantSettingsResponse *resp = (void *)out;
    ord_app *app = cm_service_app(ctx);
    ord_settings s;
    int rc = settings_now(app, cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), &s);
    if (rc)
        return db_fail(ctx, rc, "could not read the tenant's settings");
    resp->settings = pb_settings(cm_rpc_ctx_arena(ctx), &s);
    return resp->settings ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "tenant settings");
}

int ord_api_settings_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__PutTenantSettingsRequest *req,
                        ord_settings_in *out)
{
    const Commerce__Order__V1__TenantSettings *ts = req->settings;
    const Google__Protobuf__Duration *pt = ts ? ts->payment_timeout : NULL;
    const Google__Protobuf__Duration *ft = ts ? ts->flash_payment_timeout : NULL;
    const Google__Protobuf__Duration *at = ts ? ts->auto_complete_after : NULL;
    ord_settings_in si = {.request_id = req->request_id,
                          .actor = req->actor,
                          .reason = req->reason,
                          .has_settings = ts != NULL,
                          .has_timeout = pt != NULL,
                          .has_flash = ft != NULL,
                          .timeout_s = pt ? pt->seconds : 0,
                          .timeout_nanos = pt ? pt->nanos : 0,
                          .flash_s = ft ? ft->seconds : 0,
                          .flash_nanos = ft ? ft->nanos : 0,
                          .has_auto = at != NULL,
                          .auto_s = at ? at->seconds : 0,
                          .auto_nanos = at ? at->nanos : 0,
                          .expected_revision = req->expected_revision};
    ord_violation v;
    if (ord_check_settings(&si, &v))
        return fail_v(ctx, &v);
    *out = si;
    return 0;
}

static int put_tenant_settings(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Order__V1__PutTenantSettingsRequest *req = (const void *)in;
    Commerce__Order__V1__PutTenantSettingsResponse *resp = (void *)out;
    ord_app *app = cm_service_app(ctx);
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    ord_settings_in si;
    if (ord_api_settings_in(ctx, req, &si))
        return -1;
    /* the body as the caller sent it; the output-only fields are not part
     * of it (they are ignored). without auto_complete_after it hashes as
     * before that field existed, so a retry across the upgrade is the same */
    const char *f[] = {num(a, si.timeout_s), num(a, si.flash_s), num(a, si.expected_revision),
                       req->actor,           req->reason,        num(a, si.auto_s)};
    char hash[ORD_HASH_HEX + 1];
    if (si.has_auto)
        hash_of(canon(a, "settings.v2", f, 6), hash);
    else
        hash_of(canon(a, "settings.v1", f, 5), hash);
    const char *principal = cm_rpc_ctx_subject(ctx);
    ord_settings_req q = {.tenant = cm_rpc_ctx_tenant(ctx),
                          .request_id = req->request_id,
                          .hash = hash,
                          .actor = req->actor,
                          .principal = principal ? principal : "",
                          .reason = req->reason,
                          .timeout_s = si.timeout_s,
                          .flash_s = si.flash_s,
                          .auto_s = si.has_auto ? si.auto_s : 0,
                          .expected_revision = si.expected_revision,
                          .now_ms = now_ms()};
    ord_settings *now = cm_rpc_alloc(ctx, sizeof *now);
    ord_settings_change *c = cm_rpc_alloc(ctx, sizeof *c);
    if (!now || !c)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "tenant settings");
    int verdict = 0;
    int rc = ord_store_put_settings(cm_service_db(ctx), &q, now, c, &verdict);
    if (rc)
        return db_fail(ctx, rc, "could not change the tenant's settings");
    if (now->revision == 0) {
        /* no row (a retry after an operator deleted it): the defaults apply */
        now->timeout_s = app->timeout_ms / 1000;
        now->flash_s = app->flash_timeout_ms / 1000;
    }
    /* unset: the service default, shown as it applies (the change is
     * filled only when one was made or found) */
    if (now->auto_s == 0)
        now->auto_s = app->auto_complete_s;
    if (verdict == ORD_OK || verdict == ORD_SAME) {
        if (c->has_old && c->old.auto_s == 0)
            c->old.auto_s = app->auto_complete_s;
        if (c->cur.auto_s == 0)
            c->cur.auto_s = app->auto_complete_s;
    }
    switch (verdict) {
    case ORD_OK:
        forget_tenant(app, q.tenant);
        cm_log_info("tenant settings changed", "tenant", q.tenant, "request_id", q.request_id,
                    "actor", q.actor, "principal", q.principal, "payment_timeout_s",
                    num(a, q.timeout_s), "flash_payment_timeout_s", num(a, q.flash_s),
                    "auto_complete_after_s", q.auto_s ? num(a, q.auto_s) : "default", "revision",
                    num(a, c->cur.revision), NULL);
        break;
    case ORD_SAME:
        break;
    case ORD_KEY_REUSED:
        return key_reused(ctx, "request_id");
    case ORD_VERSION: {
        int fr =
            cm_rpc_fail(ctx, GRPC_STATUS_ABORTED, "VERSION_MISMATCH",
                        cm_arena_printf(a,
                                        "expected_revision %lld is not the current revision "
                                        "%lld: read the settings again",
                                        (long long)q.expected_revision, (long long)now->revision));
        cm_rpc_fail_meta(ctx, "current_version", num(a, now->revision));
        return fr;
    }
    default:
        return cm_rpc_fail_err(ctx, CM_EINTERNAL, "tenant settings verdict");
    }
    resp->settings = pb_settings(a, now);
    resp->change = pb_change(a, c);
    return resp->settings && resp->change ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "tenant settings");
}

/* ---- margin ---- */

#define MARGIN_CURRENCIES_MAX 32

int ord_api_margin_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__QueryMarginRequest *req,
                      int64_t *from, int64_t *to)
{
    if (*req->sku && !ord_valid_key(req->sku, ORD_KEY_MAX))
        return cm_rpc_fail_field(ctx, "sku", "must be 1-64 characters from [A-Za-z0-9._:-]");
    if (*req->flash_sale_id && !ord_valid_key(req->flash_sale_id, ORD_KEY_MAX))
        return cm_rpc_fail_field(ctx, "flash_sale_id",
                                 "must be 1-64 characters from [A-Za-z0-9._:-]");
    if (*req->sku && *req->flash_sale_id)
        return cm_rpc_fail_field(ctx, "flash_sale_id", "must be empty when sku is set");
    return list_range(ctx, req->paid, "paid", from, to);
}

static int query_margin(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Order__V1__QueryMarginRequest *req = (const void *)in;
    Commerce__Order__V1__QueryMarginResponse *resp = (void *)out;
    int64_t from, to;
    if (ord_api_margin_in(ctx, req, &from, &to))
        return -1;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    ord_margin_row *rows = cm_arena_calloc(a, MARGIN_CURRENCIES_MAX, sizeof *rows);
    size_t n = 0;
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "query margin");
    int rc = ord_store_query_margin(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->sku,
                                    req->flash_sale_id, from, to, rows, MARGIN_CURRENCIES_MAX, &n);
    if (rc)
        return db_fail(ctx, rc, "could not query the margin");
    resp->margins = cm_arena_calloc(a, n ? n : 1, sizeof *resp->margins);
    if (!resp->margins)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "query margin");
    for (size_t i = 0; i < n; i++) {
        const ord_margin_row *r = &rows[i];
        Commerce__Order__V1__MarginSummary *m = cm_arena_calloc(a, 1, sizeof *m);
        if (!m)
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "query margin");
        commerce__order__v1__margin_summary__init(m);
        m->currency = cm_arena_strdup(a, r->currency);
        m->orders = r->orders;
        m->revenue = cm_pb_money(a, r->revenue, r->currency);
        m->refunded = cm_pb_money(a, r->refunded, r->currency);
        m->cost = cm_pb_money(a, r->cost, r->currency);
        m->cost_reversed = cm_pb_money(a, r->reversed, r->currency);
        int64_t net = r->revenue - r->refunded;
        int64_t margin = net - (r->cost - r->reversed);
        m->gross_margin = cm_pb_money(a, margin, r->currency);
        int64_t bps = 0;
        if (net > 0 && cm_money_muldiv(margin, CM_MONEY_BPS_ONE, net, CM_ROUND_FLOOR, &bps) != 0)
            bps = 0;
        m->margin_ratio_bps = bps;
        m->uncosted_lines = r->uncosted;
        resp->margins[i] = m;
    }
    resp->n_margins = n;
    return 0;
}

const cm_rpc_method ord_methods[] = {
    {"CreateOrder", create_order, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"GetOrder", get_order, CM_RPC_READ, CM_RPC_ROLES_READ " merchant"},
    {"ListOrders", list_orders, CM_RPC_READ, CM_RPC_ROLES_READ " merchant"},
    {"MarkPaid", mark_paid, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"CancelOrder", cancel_order, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"ShipOrder", ship_order, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"CompleteOrder", complete_order, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"RefundOrder", refund_order, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"GetTenantSettings", get_tenant_settings, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"PutTenantSettings", put_tenant_settings, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"QueryMargin", query_margin, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
};
const size_t ord_methods_count = sizeof ord_methods / sizeof ord_methods[0];

/* ---- app: inventory client, sweeper ---- */

/* a sweeper tick: the queued releases, then unpaid orders past their
 * deadline, then shipped orders past the tenant's auto_complete_after */
void ord_sweep(cm_service *svc, cm_db *db, void *p)
{
    (void)svc;
    ord_app *app = p;
    ord_saga_send_releases(app->saga, db);
    int cancelled = 0, rc;
    do {
        ord_ev_ctx ev = {.topic = app->topic};
        rc = ord_store_cancel_due(db, &ev, now_ms(), 200, &cancelled);
        if (rc == 0 && cancelled)
            cm_counter_add(app->timed_out, (uint64_t)cancelled);
    } while (rc == 0 && cancelled == 200);
    if (rc)
        cm_log_warn("sweeper could not cancel unpaid orders", "error", cm_strerror(rc), NULL);
    int completed = 0;
    do {
        ord_ev_ctx ev = {.topic = app->topic};
        rc = ord_store_complete_due(db, &ev, now_ms(), app->auto_complete_s, 200, &completed);
        if (rc == 0 && completed) {
            cm_counter_add(app->auto_completed, (uint64_t)completed);
            char n[24];
            snprintf(n, sizeof n, "%d", completed);
            cm_log_info("shipped orders auto-completed", "count", n, "completed_by",
                        ORD_AUTO_COMPLETE_ACTOR, NULL);
        }
    } while (rc == 0 && completed >= 200); /* two scans of up to 200 each */
    if (rc)
        cm_log_warn("sweeper could not complete shipped orders", "error", cm_strerror(rc), NULL);
}

int ord_app_init(cm_service *svc, void **out, char *err, size_t errlen)
{
    ord_app *app = calloc(1, sizeof *app);
    if (!app)
        return CM_ENOMEM;
    app->svc = svc;
    app->timeout_ms = cm_service_int(svc, "ORDER_PAYMENT_TIMEOUT_S") * 1000LL;
    app->flash_timeout_ms = cm_service_int(svc, "ORDER_FLASH_PAYMENT_TIMEOUT_S") * 1000LL;
    app->margin_ms = cm_service_int(svc, "ORDER_RESERVATION_MARGIN_S") * 1000LL;
    app->auto_complete_s = cm_service_int(svc, "ORDER_AUTO_COMPLETE_DAYS") * 86400LL;
    app->pause_ms = (int)cm_service_int(svc, "ORDER_DEBUG_PAUSE_AFTER_RESERVE_MS");
    int max_batch = (int)cm_service_int(svc, "ORDER_MAX_BATCH");
    app->topic = cm_service_text(svc, "ORDER_TOPIC");
    cm_metrics *m = cm_service_metrics(svc);
    int rc = cm_group_new(&app->creates,
                          &(cm_group_opts){.commit = create_batch, .max_batch = max_batch});
    if (rc == 0 && (rc = ord_saga_new(&app->saga, cm_service_peer(svc, "inventory"),
                                      (int)cm_service_int(svc, "ORDER_INVENTORY_TIMEOUT_MS"),
                                      (int)cm_service_int(svc, "ORDER_RESERVE_BATCH"), m)) != 0)
        cm_group_free(app->creates);
    if (rc) {
        snprintf(err, errlen, "could not create the group-commit queue or the release queue");
        free(app);
        return rc;
    }
    pthread_mutex_init(&app->mu, NULL);
    app->rejected = cm_metrics_counter(
        m, "order_payments_rejected_total",
        "payments refused after capture (order cancelled first, or paid twice): each must be "
        "refunded by the caller; listed in the payment_rejections table",
        NULL);
    app->timed_out = cm_metrics_counter(m, "order_payment_timeouts_total",
                                        "unpaid orders cancelled by this replica's sweeper", NULL);
    app->auto_completed = cm_metrics_counter(
        m, "order_auto_completed_total",
        "shipped orders completed by this replica's sweeper (the tenant's auto_complete_after "
        "passed)",
        NULL);
    app->continued = cm_metrics_counter(
        m, "order_reservations_continued_total",
        "creates that carried on with an earlier attempt's reservation made under another ttl "
        "(the payment timeout changed between the attempts)",
        NULL);
    app->margin = ord_metrics_new(m);
    if (!app->margin) {
        snprintf(err, errlen, "could not allocate the margin metrics");
        ord_saga_free(app->saga, cm_service_main_db(svc));
        cm_group_free(app->creates);
        free(app);
        return CM_ENOMEM;
    }
    *out = app;
    return 0;
}

void ord_app_fini(cm_service *svc, void *p)
{
    ord_app *app = p;
    if (!app)
        return;
    ord_saga_free(app->saga, cm_service_main_db(svc));
    cm_group_free(app->creates);
    ord_metrics_free(app->margin);
    pthread_mutex_destroy(&app->mu);
    free(app);
}
