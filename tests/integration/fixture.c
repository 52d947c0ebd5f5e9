#include "fixture.h"

#include <grpc/status.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const cm_rpc_md fx_md[1] = {{"x-tenant-id", FX_TENANT}};
const cm_rpc_md fx_md_other[1] = {{"x-tenant-id", FX_TENANT "-other"}};

#define NPARTS 2

static int fx_seq;
/* the running test's pair, for the teardown when an assertion ends the
 * test early (CK_NOFORK: nothing else would stop its processes) */
static fx *cur_fx;

static const char *const inventory_defaults[] = {"INVENTORY_SWEEP_MS=100", "WORKERS=8", NULL};
static const char *const order_defaults[] = {"WORKERS=8", "ORDER_SWEEP_MS=100",
                                             "ORDER_RESERVATION_MARGIN_S=2", NULL};

/* ---- the pair ---- */

static void spawn_inventory(fx *f, const char *const *defaults)
{
    char s[96], t[192], g[192], d[512], cert[192], key[192], ca[192];
    const char *env[16];
    size_t n = 0;
    snprintf(s, sizeof s, "INVENTORY_SCHEMA=%s", f->inv_schema);
    env[n++] = s;
    if (f->topic[0]) {
        snprintf(t, sizeof t, "INVENTORY_ORDER_TOPIC=%s", f->topic);
        snprintf(g, sizeof g, "INVENTORY_ORDER_GROUP=%s", f->group);
        env[n++] = t;
        env[n++] = g;
        env[n++] = "INVENTORY_CONSUME_ORDERS=on";
    }
    if (f->dsn) {
        snprintf(d, sizeof d, "PG_DSN=%s", f->dsn);
        env[n++] = d;
    }
    if (f->tls_dir) {
        snprintf(cert, sizeof cert, "TLS_CERT_FILE=%s/server.pem", f->tls_dir);
        snprintf(key, sizeof key, "TLS_KEY_FILE=%s/server.key", f->tls_dir);
        snprintf(ca, sizeof ca, "TLS_CLIENT_CA_FILE=%s/ca.pem", f->tls_dir);
        env[n++] = cert;
        env[n++] = key;
        env[n++] = ca;
    }
    env[n] = NULL;
    const char *all[32];
    hs_env_join(all, 32, env, defaults);
    if (!f->tls_dir) {
        hs_start(&f->inv, INVENTORY_BIN, all);
        return;
    }
    /* health over plaintext cannot reach a TLS port: the admin port can */
    ck_assert_int_eq(hs_spawn(&f->inv, INVENTORY_BIN, all), 0);
    ck_assert_msg(hs_wait_ready(&f->inv, 30000) == 0, "inventory did not become ready (log %s)",
                  f->inv.log_path);
}

void fx_spawn_order(fx *f, hs_proc *p, const char *const *extra)
{
    char s[96], t[192], inv[64], d[512];
    const char *env[8];
    size_t n = 0;
    snprintf(s, sizeof s, "ORDER_SCHEMA=%s", f->ord_schema);
    env[n++] = s;
    if (f->topic[0]) {
        snprintf(t, sizeof t, "ORDER_TOPIC=%s", f->topic);
        env[n++] = t;
    }
    snprintf(inv, sizeof inv, "INVENTORY_TARGET=127.0.0.1:%d",
             f->proxy ? hs_proxy_port(f->proxy) : f->inv.grpc_port);
    env[n++] = inv;
    if (f->dsn) {
        snprintf(d, sizeof d, "PG_DSN=%s", f->dsn);
        env[n++] = d;
    }
    env[n] = NULL;
    const char *base[32], *all[48];
    hs_start(p, ORDER_BIN, hs_env_join(all, 48, hs_env_join(base, 32, env, f->order_env), extra));
}

void fx_respawn_order(fx *f)
{
    cm_rpc_client_free(f->oc);
    f->oc = NULL;
    fx_spawn_order(f, &f->ord, f->extra);
    f->oc = hs_client(&f->ord, NULL);
}

void fx_start_opts(fx *f, const fx_opts *o)
{
    memset(f, 0, sizeof *f);
    f->dsn = o->dsn;
    f->tls_dir = o->tls_dir;
    cur_fx = f;
    fx_seq++;
    const char *tag = o->tag ? o->tag : "it";
    int pid = (int)getpid();
    snprintf(f->ord_schema, sizeof f->ord_schema, "ord_%s_%d_%d", tag, pid, fx_seq);
    snprintf(f->inv_schema, sizeof f->inv_schema, "ordinv_%s_%d_%d", tag, pid, fx_seq);
    if (!o->no_topic) {
        snprintf(f->topic, sizeof f->topic, "commerce.order.v1.%s-%d-%d", tag, pid, fx_seq);
        snprintf(f->group, sizeof f->group, "commerce.inventory.%s-ord-%d-%d", tag, pid, fx_seq);
        hs_kafka_create_topic(hs_kafka_brokers(), f->topic, NPARTS);
    }
    for (size_t i = 0; o->extra && o->extra[i] && i < 15; i++)
        f->extra[i] = o->extra[i];
    f->order_env = o->order_env ? o->order_env : order_defaults;
    spawn_inventory(f, o->inventory_env ? o->inventory_env : inventory_defaults);
    if (o->proxy) {
        f->proxy = hs_proxy_start(f->inv.grpc_port);
        ck_assert_ptr_nonnull(f->proxy);
    }
    fx_respawn_order(f);
    f->ic = hs_client(&f->inv, f->tls_dir);
    if (f->topic[0])
        f->log = hs_topic_open(hs_kafka_brokers(), f->topic, 0);
}

void fx_start(fx *f, const char *const *extra, int proxy)
{
    fx_start_opts(f, &(fx_opts){.extra = extra, .proxy = proxy});
}

void fx_stop(fx *f)
{
    cm_rpc_client_free(f->oc);
    cm_rpc_client_free(f->ic);
    hs_topic_close(f->log);
    f->oc = f->ic = NULL;
    f->log = NULL;
    ck_assert_msg(hs_stop(&f->ord, SIGTERM, 30000) == 0, "order did not exit 0 (log %s)",
                  f->ord.log_path);
    ck_assert_msg(hs_stop(&f->inv, SIGTERM, 30000) == 0, "inventory did not exit 0 (log %s)",
                  f->inv.log_path);
    hs_proxy_free(f->proxy);
    f->proxy = NULL;
    if (f->topic[0])
        hs_kafka_delete_topic(hs_kafka_brokers(), f->topic);
    /* only reached when the test passed: a failed one keeps its schemas */
    hs_drop_schema(f->dsn, f->ord_schema);
    hs_drop_schema(f->dsn, f->inv_schema);
    cur_fx = NULL;
}

void fx_teardown(void)
{
    fx *f = cur_fx;
    cur_fx = NULL;
    hs_teardown();
    if (!f)
        return;
    hs_proxy_free(f->proxy);
    f->proxy = NULL;
    fprintf(stderr, "test failed: schemas %s, %s%s%s kept\n", f->ord_schema, f->inv_schema,
            f->topic[0] ? " and topic " : "", f->topic);
}

/* ---- order events ---- */

#define DECODE(T, fn, with_prev)                                                                   \
    do {                                                                                           \
        T *x = fn##__unpack(NULL, r->len, r->payload);                                             \
        if (!x)                                                                                    \
            return -1;                                                                             \
        e->m = &x->base;                                                                           \
        e->event_id = x->event_id;                                                                 \
        e->tenant_id = x->tenant_id;                                                               \
        e->order_id = x->order_id;                                                                 \
        e->order = x->order;                                                                       \
        with_prev;                                                                                 \
        return 0;                                                                                  \
    } while (0)

int fx_ev_decode(const hs_record *r, fx_event *e)
{
    memset(e, 0, sizeof *e);
    e->prev = -1;
    if (!r)
        return -1;
    if (strcmp(r->type, FX_EV_CREATED) == 0)
        DECODE(Commerce__Events__V1__OrderCreated, commerce__events__v1__order_created, (void)0);
    if (strcmp(r->type, FX_EV_PAID) == 0)
        DECODE(Commerce__Events__V1__OrderPaid, commerce__events__v1__order_paid,
               e->prev = (int)x->previous_state);
    if (strcmp(r->type, FX_EV_CANCELLED) == 0)
        DECODE(Commerce__Events__V1__OrderCancelled, commerce__events__v1__order_cancelled,
               e->prev = (int)x->previous_state);
    if (strcmp(r->type, FX_EV_SHIPPED) == 0)
        DECODE(Commerce__Events__V1__OrderShipped, commerce__events__v1__order_shipped,
               e->prev = (int)x->previous_state);
    if (strcmp(r->type, FX_EV_COMPLETED) == 0)
        DECODE(Commerce__Events__V1__OrderCompleted, commerce__events__v1__order_completed,
               e->prev = (int)x->previous_state);
    if (strcmp(r->type, FX_EV_REFUNDED) == 0)
        DECODE(Commerce__Events__V1__OrderRefunded, commerce__events__v1__order_refunded,
               (e->prev = (int)x->previous_state, e->refund = x->refund));
    return -1;
}

void fx_ev_free(fx_event *e)
{
    if (e->m)
        protobuf_c_message_free_unpacked(e->m, NULL);
    e->m = NULL;
}

/* 1 when record i repeats an event id read before it */
static int seen_before(const hs_topic *l, size_t i)
{
    const hs_record *r = hs_topic_at(l, i);
    for (size_t j = 0; j < i; j++)
        if (strcmp(hs_topic_at(l, j)->id, r->id) == 0)
            return 1;
    return 0;
}

int fx_ev_count(const hs_topic *l, const char *order_id, const char *type, int *dups)
{
    int distinct = 0, rep = 0;
    for (size_t i = 0; i < hs_topic_count(l); i++) {
        const hs_record *r = hs_topic_at(l, i);
        if (strcmp(r->key, order_id) || strcmp(r->type, type))
            continue;
        if (seen_before(l, i))
            rep++;
        else
            distinct++;
    }
    if (dups)
        *dups = rep;
    return distinct;
}

const hs_record *fx_ev_nth(const hs_topic *l, const char *order_id, const char *type, int k)
{
    for (size_t i = 0; i < hs_topic_count(l); i++) {
        const hs_record *r = hs_topic_at(l, i);
        if (strcmp(r->key, order_id) || strcmp(r->type, type))
            continue;
        if (!seen_before(l, i) && k-- == 0)
            return r;
    }
    return NULL;
}

/* every record read so far keeps the envelope contract; redeliveries are
 * reported on stderr, not failed */
static void ev_check_all(const hs_topic *l)
{
    int redelivered = 0;
    for (size_t i = 0; i < hs_topic_count(l); i++) {
        const hs_record *r = hs_topic_at(l, i);
        fx_event e;
        ck_assert_msg(fx_ev_decode(r, &e) == 0, "record %zu: unknown ce_type \"%s\" or bad payload",
                      i, r->type);
        ck_assert_str_eq(r->id, e.event_id);
        ck_assert_str_eq(r->key, e.order_id);
        ck_assert_ptr_nonnull(e.order);
        ck_assert_str_eq(e.order->order_id, e.order_id);
        ck_assert_str_eq(e.tenant_id, FX_TENANT);
        ck_assert_str_eq(r->source, "/commerce/order");
        ck_assert_str_eq(r->tenant, FX_TENANT);
        ck_assert_ptr_nonnull(e.order->created_at);
        int s = (int)e.order->state;
        if (strcmp(r->type, FX_EV_CREATED) == 0) {
            ck_assert_int_eq(s, FX_ST(PENDING_PAYMENT));
        } else if (strcmp(r->type, FX_EV_PAID) == 0) {
            ck_assert_int_eq(s, FX_ST(PAID));
            ck_assert_int_eq(e.prev, FX_ST(PENDING_PAYMENT));
            ck_assert_ptr_nonnull(e.order->payment);
        } else if (strcmp(r->type, FX_EV_CANCELLED) == 0) {
            ck_assert_int_eq(s, FX_ST(CANCELLED));
            ck_assert_int_eq(e.prev, FX_ST(PENDING_PAYMENT));
            ck_assert_int_ne(e.order->cancel_reason, FX_CANCEL(UNSPECIFIED));
        } else if (strcmp(r->type, FX_EV_SHIPPED) == 0) {
            ck_assert(s == FX_ST(SHIPPED) || s == FX_ST(PARTIALLY_REFUNDED));
            ck_assert_ptr_nonnull(e.order->shipment);
        } else if (strcmp(r->type, FX_EV_COMPLETED) == 0) {
            ck_assert(s == FX_ST(COMPLETED) || s == FX_ST(PARTIALLY_REFUNDED));
            ck_assert_ptr_nonnull(e.order->completed_at);
        } else {
            ck_assert(s == FX_ST(PARTIALLY_REFUNDED) || s == FX_ST(REFUNDED));
            ck_assert_ptr_nonnull(e.refund);
        }
        fx_ev_free(&e);
        redelivered += seen_before(l, i);
    }
    if (redelivered)
        fprintf(stderr, "note: %d records redelivered an event id already read (at least once)\n",
                redelivered);
}

static int outbox_drained(void *arg)
{
    fx *f = arg;
    return hs_sql_long(f->ord_schema, "SELECT count(*) FROM outbox WHERE published_at IS "
                                      "NULL AND failed_at IS NULL") == 0;
}

void fx_settle(fx *f)
{
    ck_assert_msg(f->log != NULL, "fx_settle: the pair has no topic of its own");
    if (hs_poll(outbox_drained, f, 30000, 100) != 0)
        ck_abort_msg("%lld outbox rows still unpublished after 30 s",
                     hs_sql_long(f->ord_schema, "SELECT count(*) FROM outbox WHERE published_at "
                                                "IS NULL AND failed_at IS NULL"));
    ck_assert_int_eq(hs_sql_long(f->ord_schema, "SELECT count(*) FROM outbox WHERE failed_at IS "
                                                "NOT NULL"),
                     0);
    ck_assert_msg(hs_topic_catch_up(f->log, 30000) == 0, "could not read topic %s to its end",
                  f->topic);
    ev_check_all(f->log);
}

/* ---- order calls ---- */

long long fx_ts_ms(const Google__Protobuf__Timestamp *t)
{
    return t ? (long long)t->seconds * 1000 + t->nanos / 1000000 : -1;
}

int fx_field_is(const cm_rpc_status *st, const char *path)
{
    size_t n = strlen(path);
    char next = st->field[n];
    return strncmp(st->field, path, n) == 0 && (next == '\0' || next == '.' || next == '[');
}

fx_order_spec fx_spec(const char *rid, const fx_line *lines, size_t n)
{
    return (fx_order_spec){.rid = rid,
                           .buyer = "buyer-1",
                           .merchant = "merchant-1",
                           .currency = "CNY",
                           .lines = lines,
                           .n = n};
}

void fx_order_free(fx_order *o)
{
    if (o)
        protobuf_c_message_free_unpacked(&o->base, NULL);
}

/* the order out of a response into *out (may be NULL: freed); the
 * response is freed */
static void take(ProtobufCMessage *resp, fx_order **slot, fx_order **out)
{
    fx_order *o = NULL;
    if (resp) {
        o = *slot;
        *slot = NULL;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    if (out)
        *out = o;
    else
        fx_order_free(o);
}

#define MAX_LINES 128

int fx_create_md(cm_rpc_client *c, const fx_order_spec *s, fx_order **out, cm_rpc_status *st,
                 const cm_rpc_md *md, size_t nmd)
{
    Commerce__Order__V1__CreateOrderRequest q = COMMERCE__ORDER__V1__CREATE_ORDER_REQUEST__INIT;
    static __thread Commerce__Order__V1__CreateOrderLine lines[MAX_LINES];
    static __thread Commerce__Common__V1__Money prices[MAX_LINES];
    Commerce__Order__V1__CreateOrderLine *lp[MAX_LINES];
    Google__Protobuf__Duration to = GOOGLE__PROTOBUF__DURATION__INIT;
    ck_assert_uint_le(s->n, MAX_LINES);
    for (size_t i = 0; i < s->n; i++) {
        commerce__order__v1__create_order_line__init(&lines[i]);
        commerce__common__v1__money__init(&prices[i]);
        lines[i].sku = (char *)s->lines[i].sku;
        lines[i].quantity = s->lines[i].qty;
        prices[i].amount_minor = s->lines[i].price;
        prices[i].currency = (char *)(s->lines[i].cur ? s->lines[i].cur : s->currency);
        lines[i].unit_price = s->lines[i].no_price ? NULL : &prices[i];
        lp[i] = &lines[i];
    }
    q.request_id = (char *)s->rid;
    q.buyer_id = (char *)(s->buyer ? s->buyer : "");
    q.merchant_id = (char *)(s->merchant ? s->merchant : "");
    q.channel_id = (char *)(s->channel ? s->channel : "");
    q.currency = (char *)(s->currency ? s->currency : "");
    q.external_ref = (char *)(s->external_ref ? s->external_ref : "");
    q.lines = lp;
    q.n_lines = s->n;
    if (s->timeout_s) {
        to.seconds = s->timeout_s;
        q.payment_timeout = &to;
    }
    Commerce__Order__V1__CreateOrderResponse *r = NULL;
    int code = hs_call(c, FX_OSVC "CreateOrder", &q.base,
                       &commerce__order__v1__create_order_response__descriptor,
                       (ProtobufCMessage **)&r, st, md, nmd);
    take(r ? &r->base : NULL, r ? &r->order : NULL, out);
    return code;
}

int fx_create(cm_rpc_client *c, const fx_order_spec *s, fx_order **out, cm_rpc_status *st)
{
    return fx_create_md(c, s, out, st, fx_md, 1);
}

fx_order *fx_must_create(cm_rpc_client *c, const fx_order_spec *s)
{
    fx_order *o = NULL;
    cm_rpc_status st;
    int code = fx_create(c, s, &o, &st);
    ck_assert_msg(code == 0, "CreateOrder %s: code %d reason %s field %s: %s", s->rid, code,
                  st.reason, st.field, st.message);
    ck_assert_ptr_nonnull(o);
    return o;
}

void fx_create_id(cm_rpc_client *c, const fx_order_spec *s, char id[64])
{
    fx_order *o = fx_must_create(c, s);
    snprintf(id, 64, "%s", o->order_id);
    fx_order_free(o);
}

void fx_create_pending(cm_rpc_client *c, const char *prefix, const fx_line *l, int n,
                       char (*ids)[64])
{
    for (int i = 0; i < n; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "%s-%d", prefix, i);
        fx_order_spec s = fx_spec(rid, l, 1);
        s.timeout_s = 600;
        fx_create_id(c, &s, ids[i]);
    }
}

int fx_get_order_md(cm_rpc_client *c, const char *id, fx_order **out, cm_rpc_status *st,
                    const cm_rpc_md *md)
{
    Commerce__Order__V1__GetOrderRequest q = COMMERCE__ORDER__V1__GET_ORDER_REQUEST__INIT;
    q.order_id = (char *)id;
    Commerce__Order__V1__GetOrderResponse *r = NULL;
    int code = hs_call(c, FX_OSVC "GetOrder", &q.base,
                       &commerce__order__v1__get_order_response__descriptor,
                       (ProtobufCMessage **)&r, st, md, md ? 1 : 0);
    take(r ? &r->base : NULL, r ? &r->order : NULL, out);
    return code;
}

fx_order *fx_must_get(cm_rpc_client *c, const char *id)
{
    fx_order *o = NULL;
    cm_rpc_status st;
    ck_assert_msg(fx_get_order_md(c, id, &o, &st, fx_md) == 0, "GetOrder %s: %d %s", id, st.code,
                  st.message);
    ck_assert_ptr_nonnull(o);
    return o;
}

int fx_state_of(cm_rpc_client *c, const char *id)
{
    fx_order *o = fx_must_get(c, id);
    int s = (int)o->state;
    fx_order_free(o);
    return s;
}

int fx_mark_paid(cm_rpc_client *c, const fx_pay_spec *p, fx_order **out, cm_rpc_status *st)
{
    Commerce__Order__V1__MarkPaidRequest q = COMMERCE__ORDER__V1__MARK_PAID_REQUEST__INIT;
    Commerce__Common__V1__Money amount = COMMERCE__COMMON__V1__MONEY__INIT;
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    q.payment_id = (char *)p->payment_id;
    q.order_id = (char *)p->order_id;
    amount.amount_minor = p->amount;
    amount.currency = (char *)(p->currency ? p->currency : "CNY");
    q.amount = &amount;
    q.provider = (char *)(p->provider ? p->provider : "alipay");
    q.provider_reference = (char *)(p->reference ? p->reference : "");
    if (p->paid_at_ms) {
        at.seconds = p->paid_at_ms / 1000;
        at.nanos = (int32_t)(p->paid_at_ms % 1000) * 1000000;
        q.paid_at = &at;
    }
    Commerce__Order__V1__MarkPaidResponse *r = NULL;
    int code = hs_call(c, FX_OSVC "MarkPaid", &q.base,
                       &commerce__order__v1__mark_paid_response__descriptor,
                       (ProtobufCMessage **)&r, st, fx_md, 1);
    take(r ? &r->base : NULL, r ? &r->order : NULL, out);
    return code;
}

void fx_must_pay(cm_rpc_client *c, const fx_order *o, const char *pid)
{
    fx_pay_spec p = {.payment_id = pid,
                     .order_id = o->order_id,
                     .amount = o->total_amount->amount_minor,
                     .currency = o->currency};
    cm_rpc_status st;
    int code = fx_mark_paid(c, &p, NULL, &st);
    ck_assert_msg(code == 0, "MarkPaid %s: %d %s %s", pid, code, st.reason, st.message);
}

int fx_cancel(cm_rpc_client *c, const char *rid, const char *id, int reason, const char *note,
              fx_order **out, cm_rpc_status *st)
{
    Commerce__Order__V1__CancelOrderRequest q = COMMERCE__ORDER__V1__CANCEL_ORDER_REQUEST__INIT;
    q.request_id = (char *)rid;
    q.order_id = (char *)id;
    q.reason = (Commerce__Order__V1__CancelReason)reason;
    q.note = (char *)(note ? note : "");
    Commerce__Order__V1__CancelOrderResponse *r = NULL;
    int code = hs_call(c, FX_OSVC "CancelOrder", &q.base,
                       &commerce__order__v1__cancel_order_response__descriptor,
                       (ProtobufCMessage **)&r, st, fx_md, 1);
    take(r ? &r->base : NULL, r ? &r->order : NULL, out);
    return code;
}

int fx_ship(cm_rpc_client *c, const char *rid, const char *id, const char *carrier,
            const char *tracking, fx_order **out, cm_rpc_status *st)
{
    Commerce__Order__V1__ShipOrderRequest q = COMMERCE__ORDER__V1__SHIP_ORDER_REQUEST__INIT;
    q.request_id = (char *)rid;
    q.order_id = (char *)id;
    q.carrier = (char *)(carrier ? carrier : "");
    q.tracking_number = (char *)(tracking ? tracking : "");
    Commerce__Order__V1__ShipOrderResponse *r = NULL;
    int code = hs_call(c, FX_OSVC "ShipOrder", &q.base,
                       &commerce__order__v1__ship_order_response__descriptor,
                       (ProtobufCMessage **)&r, st, fx_md, 1);
    take(r ? &r->base : NULL, r ? &r->order : NULL, out);
    return code;
}

int fx_complete(cm_rpc_client *c, const char *rid, const char *id, fx_order **out,
                cm_rpc_status *st)
{
    Commerce__Order__V1__CompleteOrderRequest q = COMMERCE__ORDER__V1__COMPLETE_ORDER_REQUEST__INIT;
    q.request_id = (char *)rid;
    q.order_id = (char *)id;
    Commerce__Order__V1__CompleteOrderResponse *r = NULL;
    int code = hs_call(c, FX_OSVC "CompleteOrder", &q.base,
                       &commerce__order__v1__complete_order_response__descriptor,
                       (ProtobufCMessage **)&r, st, fx_md, 1);
    take(r ? &r->base : NULL, r ? &r->order : NULL, out);
    return code;
}

int fx_refund_order(cm_rpc_client *c, const fx_refund_spec *s,
                    Commerce__Order__V1__RefundOrderResponse **out, cm_rpc_status *st)
{
    Commerce__Order__V1__RefundOrderRequest q = COMMERCE__ORDER__V1__REFUND_ORDER_REQUEST__INIT;
    Commerce__Order__V1__RefundOrderLine lines[8], *lp[8];
    Commerce__Common__V1__Money amount = COMMERCE__COMMON__V1__MONEY__INIT;
    ck_assert_uint_le(s->n, 8);
    for (size_t i = 0; i < s->n; i++) {
        commerce__order__v1__refund_order_line__init(&lines[i]);
        lines[i].sku = (char *)s->lines[i].sku;
        lines[i].quantity = s->lines[i].qty;
        lp[i] = &lines[i];
    }
    q.refund_id = (char *)s->refund_id;
    q.order_id = (char *)s->order_id;
    q.scope = (Commerce__Order__V1__RefundScope)s->scope;
    q.lines = lp;
    q.n_lines = s->n;
    if (s->has_amount) {
        amount.amount_minor = s->amount;
        amount.currency = (char *)(s->currency ? s->currency : "CNY");
        q.amount = &amount;
    }
    q.reason = "test refund";
    Commerce__Order__V1__RefundOrderResponse *r = NULL;
    int code = hs_call(c, FX_OSVC "RefundOrder", &q.base,
                       &commerce__order__v1__refund_order_response__descriptor,
                       (ProtobufCMessage **)&r, st, fx_md, 1);
    if (out)
        *out = r;
    else if (r)
        protobuf_c_message_free_unpacked(&r->base, NULL);
    return code;
}

int fx_list_orders(cm_rpc_client *c, Commerce__Order__V1__ListOrdersRequest *q,
                   Commerce__Order__V1__ListOrdersResponse **out, cm_rpc_status *st,
                   const cm_rpc_md *md)
{
    return hs_call(c, FX_OSVC "ListOrders", &q->base,
                   &commerce__order__v1__list_orders_response__descriptor, (ProtobufCMessage **)out,
                   st, md, 1);
}

size_t fx_list_all(cm_rpc_client *c, Commerce__Order__V1__ListOrdersRequest *q, char (*ids)[64],
                   size_t cap, void (*between)(void *), void *arg)
{
    char *token = strdup("");
    size_t n = 0, pages = 0;
    long long last = -1;
    for (;;) {
        q->page_token = token;
        Commerce__Order__V1__ListOrdersResponse *r = NULL;
        cm_rpc_status st;
        ck_assert_msg(fx_list_orders(c, q, &r, &st, fx_md) == 0, "ListOrders: %d %s %s", st.code,
                      st.reason, st.message);
        if (q->page_size > 0)
            ck_assert_int_le(r->n_orders, q->page_size);
        for (size_t i = 0; i < r->n_orders; i++) {
            const fx_order *o = r->orders[i];
            for (size_t j = 0; j < n; j++)
                ck_assert_msg(strcmp(ids[j], o->order_id) != 0, "order %s listed twice (page %zu)",
                              o->order_id, pages + 1);
            long long at = fx_ts_ms(o->created_at);
            if (last >= 0)
                ck_assert_msg(at <= last, "page %zu: not newest first", pages + 1);
            last = at;
            ck_assert_uint_lt(n, cap);
            snprintf(ids[n++], 64, "%s", o->order_id);
        }
        free(token);
        token = strdup(r->next_page_token);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        if (++pages == 1 && between)
            between(arg);
        if (!token[0])
            break;
        ck_assert_uint_lt(pages, 1000);
    }
    free(token);
    q->page_token = "";
    return n;
}

int fx_has_id(char (*ids)[64], size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(ids[i], id) == 0)
            return 1;
    return 0;
}

size_t fx_all_orders(cm_rpc_client *c, char (*ids)[64], size_t cap)
{
    Commerce__Order__V1__ListOrdersRequest q = COMMERCE__ORDER__V1__LIST_ORDERS_REQUEST__INIT;
    q.page_size = 100;
    return fx_list_all(c, &q, ids, cap, NULL, NULL);
}

void fx_assert_money(const Commerce__Common__V1__Money *m, int64_t minor, const char *cur)
{
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(m->amount_minor, minor);
    ck_assert_str_eq(m->currency, cur);
}

int64_t fx_minor_or_0(const Commerce__Common__V1__Money *m)
{
    return m ? m->amount_minor : 0;
}

const Commerce__Order__V1__OrderLine *fx_line_of(const fx_order *o, const char *sku)
{
    for (size_t i = 0; i < o->n_lines; i++)
        if (strcmp(o->lines[i]->sku, sku) == 0)
            return o->lines[i];
    ck_abort_msg("order %s has no line %s", o->order_id, sku);
    return NULL;
}

const Commerce__Order__V1__RefundLine *fx_refund_line_of(const fx_refund *r, const char *sku)
{
    for (size_t i = 0; i < r->n_lines; i++)
        if (strcmp(r->lines[i]->sku, sku) == 0)
            return r->lines[i];
    return NULL;
}

/* ---- inventory calls ---- */

void fx_set_stock(cm_rpc_client *c, const char *rid, const char *sku, int64_t avail)
{
    fx_set_stock_md(c, rid, sku, avail, fx_md);
}

void fx_set_stock_md(cm_rpc_client *c, const char *rid, const char *sku, int64_t avail,
                     const cm_rpc_md *md)
{
    Commerce__Inventory__V1__SetStockRequest q = COMMERCE__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
    q.request_id = (char *)rid;
    q.sku = (char *)sku;
    q.available = avail;
    q.reason = "goods received";
    q.actor = "ops:test";
    cm_rpc_status st;
    ck_assert_msg(hs_call(c, FX_ISVC "SetStock", &q.base,
                          &commerce__inventory__v1__set_stock_response__descriptor, NULL, &st, md,
                          1) == 0,
                  "SetStock %s: %s", sku, st.message);
}

int fx_configure_sale(cm_rpc_client *c, const Commerce__Inventory__V1__ConfigureFlashSaleRequest *q,
                      Commerce__Inventory__V1__FlashSale **out, cm_rpc_status *st)
{
    Commerce__Inventory__V1__ConfigureFlashSaleResponse *r = NULL;
    int code = hs_call(c, FX_ISVC "ConfigureFlashSale", &q->base,
                       &commerce__inventory__v1__configure_flash_sale_response__descriptor,
                       (ProtobufCMessage **)&r, st, fx_md, 1);
    if (out) {
        *out = r ? r->flash_sale : NULL;
        if (r)
            r->flash_sale = NULL;
    }
    if (r)
        protobuf_c_message_free_unpacked(&r->base, NULL);
    return code;
}

int fx_configure_sale_in(cm_rpc_client *c, const char *rid, const char *id, const char *sku,
                         long start_off, long end_off, int64_t stock, int64_t limit,
                         int64_t expected, Commerce__Inventory__V1__FlashSale **out,
                         cm_rpc_status *st)
{
    Commerce__Inventory__V1__ConfigureFlashSaleRequest q =
        COMMERCE__INVENTORY__V1__CONFIGURE_FLASH_SALE_REQUEST__INIT;
    Google__Protobuf__Timestamp s = GOOGLE__PROTOBUF__TIMESTAMP__INIT,
                                e = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    s.seconds = time(NULL) + start_off;
    e.seconds = time(NULL) + end_off;
    q.request_id = (char *)rid;
    q.flash_sale_id = (char *)(id ? id : "");
    q.sku = (char *)sku;
    q.starts_at = &s;
    q.ends_at = &e;
    q.sale_stock = stock;
    q.per_buyer_limit = limit;
    q.actor = "ops:test";
    q.expected_version = expected;
    return fx_configure_sale(c, &q, out, st);
}

fx_level fx_get_level(cm_rpc_client *c, const char *sku)
{
    return fx_get_level_md(c, sku, fx_md);
}

fx_level fx_get_level_md(cm_rpc_client *c, const char *sku, const cm_rpc_md *md)
{
    Commerce__Inventory__V1__GetStockRequest q = COMMERCE__INVENTORY__V1__GET_STOCK_REQUEST__INIT;
    q.sku = (char *)sku;
    Commerce__Inventory__V1__GetStockResponse *r = NULL;
    fx_level l = {-1, -1, -1, -1};
    if (hs_call(c, FX_ISVC "GetStock", &q.base,
                &commerce__inventory__v1__get_stock_response__descriptor, (ProtobufCMessage **)&r,
                NULL, md, 1) == 0) {
        l.available = r->stock->available;
        l.reserved = r->stock->reserved;
        l.sold = r->stock->sold;
        l.on_hand = r->stock->on_hand;
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    return l;
}

static void assert_levels(const char *sku, fx_level l, int64_t avail, int64_t reserved,
                          int64_t sold)
{
    ck_assert_msg(l.available == avail && l.reserved == reserved && l.sold == sold,
                  "%s: available/reserved/sold %lld/%lld/%lld, expected %lld/%lld/%lld", sku,
                  (long long)l.available, (long long)l.reserved, (long long)l.sold,
                  (long long)avail, (long long)reserved, (long long)sold);
}

typedef struct level_wait {
    cm_rpc_client *c;
    const char *sku;
    int64_t avail, reserved, sold;
    fx_level got;
} level_wait;

static int level_is(void *arg)
{
    level_wait *w = arg;
    w->got = fx_get_level(w->c, w->sku);
    return w->got.available == w->avail && w->got.reserved == w->reserved && w->got.sold == w->sold;
}

void fx_wait_level(cm_rpc_client *c, const char *sku, int64_t avail, int64_t reserved, int64_t sold)
{
    level_wait w = {c, sku, avail, reserved, sold, {0}};
    hs_poll(level_is, &w, 30000, 100);
    assert_levels(sku, w.got, avail, reserved, sold);
}

void fx_assert_level(cm_rpc_client *c, const char *sku, int64_t avail, int64_t reserved,
                     int64_t sold)
{
    assert_levels(sku, fx_get_level(c, sku), avail, reserved, sold);
}

size_t fx_stock_changes(cm_rpc_client *c, const char *sku, int kind, char *order, size_t cap)
{
    Commerce__Inventory__V1__ListStockChangesRequest q =
        COMMERCE__INVENTORY__V1__LIST_STOCK_CHANGES_REQUEST__INIT;
    Commerce__Inventory__V1__StockChangeKind kinds[] = {
        (Commerce__Inventory__V1__StockChangeKind)kind};
    q.sku = (char *)sku;
    q.kinds = kinds;
    q.n_kinds = 1;
    q.page_size = 500;
    Commerce__Inventory__V1__ListStockChangesResponse *r = NULL;
    ck_assert_int_eq(hs_call(c, FX_ISVC "ListStockChanges", &q.base,
                             &commerce__inventory__v1__list_stock_changes_response__descriptor,
                             (ProtobufCMessage **)&r, NULL, fx_md, 1),
                     0);
    size_t n = r->n_changes;
    if (order && cap)
        snprintf(order, cap, "%s", n ? r->changes[n - 1]->order_id : "");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return n;
}

long fx_violations(cm_rpc_client *c, int64_t *checked_skus)
{
    Commerce__Inventory__V1__CheckInvariantsRequest q =
        COMMERCE__INVENTORY__V1__CHECK_INVARIANTS_REQUEST__INIT;
    Commerce__Inventory__V1__CheckInvariantsResponse *r = NULL;
    if (hs_call(c, FX_ISVC "CheckInvariants", &q.base,
                &commerce__inventory__v1__check_invariants_response__descriptor,
                (ProtobufCMessage **)&r, NULL, fx_md, 1) != 0)
        return -1;
    long n = (long)r->n_violations;
    if (checked_skus)
        *checked_skus = r->checked_skus;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return n;
}

/* ---- the runner ---- */

int fx_run(const char *name, const TTest *const *tests, size_t n)
{
    /* ORDER_IT_ONLY=word runs the tests whose name contains word */
    const char *only = getenv("ORDER_IT_ONLY");
    Suite *s = suite_create(name);
    TCase *t = tcase_create(name);
    tcase_set_timeout(t, 180);
    tcase_add_checked_fixture(t, NULL, fx_teardown);
    for (size_t i = 0; i < n; i++)
        if (!only || !*only || strstr(tests[i]->name, only))
            tcase_add_test(t, tests[i]);
    suite_add_tcase(s, t);
    return hs_run(s, 1);
}
