/*
 * commerce-order as a black box: real order and inventory processes, the
 * private postgres, the kafka broker KAFKA_BROKERS names. each test gets
 * fresh schemas for both services and its own order topic, which inventory
 * consumes (INVENTORY_ORDER_TOPIC), so the whole saga runs: reserve on
 * create, confirm on OrderPaid, release on OrderCancelled.
 *
 * what is asserted is the public contract: proto/commerce/order/v1 and
 * proto/commerce/events/v1/order_events.proto. events are read back from
 * the topic with a plain consumer and counted per order by distinct event
 * id (delivery is at least once; a redelivered id is reported, not failed).
 */
#include "harness.h"

#include <check.h>
#include <grpc/status.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "commerce/events/v1/order_events.pb-c.h"
#include "commerce/inventory/v1/inventory_service.pb-c.h"
#include "commerce/order/v1/order_service.pb-c.h"

#define OSVC "/commerce.order.v1.OrderService/"
#define ISVC "/commerce.inventory.v1.InventoryService/"
#define TENANT "tenant-ord"

#define ST(s) COMMERCE__ORDER__V1__ORDER_STATE__ORDER_STATE_##s
#define CANCEL(r) COMMERCE__ORDER__V1__CANCEL_REASON__CANCEL_REASON_##r
#define SCOPE(s) COMMERCE__ORDER__V1__REFUND_SCOPE__REFUND_SCOPE_##s

#define EV_CREATED "commerce.events.v1.OrderCreated"
#define EV_PAID "commerce.events.v1.OrderPaid"
#define EV_CANCELLED "commerce.events.v1.OrderCancelled"
#define EV_SHIPPED "commerce.events.v1.OrderShipped"
#define EV_COMPLETED "commerce.events.v1.OrderCompleted"
#define EV_REFUNDED "commerce.events.v1.OrderRefunded"

typedef Commerce__Order__V1__Order Order;
typedef Commerce__Order__V1__Refund Refund;

static const cm_rpc_md md_t[] = {{"x-tenant-id", TENANT}};
static const cm_rpc_md md_other[] = {{"x-tenant-id", "tenant-ord-other"}};

/* ---- time ---- */

static long long real_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static long long ts_ms(const Google__Protobuf__Timestamp *t)
{
    return t ? (long long)t->seconds * 1000 + t->nanos / 1000000 : -1;
}

static void sleep_until_real(long long ms)
{
    long long d = ms - real_ms();
    if (d > 0)
        usleep((useconds_t)(d * 1000));
}

/* ---- the database (only to look, never to change) ---- */

static long sql_long(const char *schema, const char *sql)
{
    PGconn *pg = PQconnectdb(hs_pg_dsn());
    ck_assert_int_eq(PQstatus(pg), CONNECTION_OK);
    char path[128];
    snprintf(path, sizeof path, "SET search_path = %s", schema);
    PQclear(PQexec(pg, path));
    PGresult *r = PQexec(pg, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(pg));
    long v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    PQfinish(pg);
    return v;
}

static void drop_schema(const char *schema)
{
    PGconn *pg = PQconnectdb(hs_pg_dsn());
    char sql[128];
    snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    PQclear(PQexec(pg, "SET client_min_messages = warning"));
    PQclear(PQexec(pg, sql));
    PQfinish(pg);
}

/* ---- kafka: the test's topic and a plain reader of it ---- */

static const char *brokers(void)
{
    const char *b = getenv("KAFKA_BROKERS");
    ck_assert_msg(b && *b, "KAFKA_BROKERS is not set: run through scripts/test.sh");
    return b;
}

static void topic_admin(const char *topic, int create, int parts)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers(), err, sizeof err);
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    ck_assert_ptr_nonnull(rk);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_event_t *ev;
    if (create) {
        rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, parts, 1, err, sizeof err);
        ck_assert_ptr_nonnull(nt);
        rd_kafka_CreateTopics(rk, &nt, 1, NULL, q);
        ev = rd_kafka_queue_poll(q, 30000);
        ck_assert_ptr_nonnull(ev);
        size_t n = 0;
        const rd_kafka_topic_result_t **res =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
        ck_assert_uint_eq(n, 1);
        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(res[0]);
        ck_assert_msg(e == RD_KAFKA_RESP_ERR_NO_ERROR ||
                          e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS,
                      "could not create topic %s: %s", topic, rd_kafka_err2str(e));
        rd_kafka_NewTopic_destroy(nt);
    } else {
        rd_kafka_DeleteTopic_t *dt = rd_kafka_DeleteTopic_new(topic);
        rd_kafka_DeleteTopics(rk, &dt, 1, NULL, q);
        ev = rd_kafka_queue_poll(q, 30000);
        rd_kafka_DeleteTopic_destroy(dt);
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
}

#define NPARTS 2

/* one record as read from the topic */
typedef struct rec {
    char key[96], type[64], id[64], source[64], tenant[64], content_type[64];
    uint8_t *payload;
    size_t len;
} rec;

typedef struct evlog {
    rd_kafka_t *rk;
    char topic[128];
    int64_t next[NPARTS]; /* next offset to read per partition */
    rec *v;
    size_t n, cap;
} evlog;

static evlog *evlog_open(const char *topic)
{
    evlog *l = calloc(1, sizeof *l);
    snprintf(l->topic, sizeof l->topic, "%s", topic);
    char err[256], group[160];
    snprintf(group, sizeof group, "order-it-reader-%d-%s", (int)getpid(), topic);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers(), err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", group, err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
    l->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    ck_assert_msg(l->rk != NULL, "consumer: %s", err);
    rd_kafka_poll_set_consumer(l->rk);
    /* assigned, not subscribed: no group join, every partition from the start */
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(NPARTS);
    for (int p = 0; p < NPARTS; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    ck_assert_int_eq(rd_kafka_assign(l->rk, parts), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(parts);
    return l;
}

static void evlog_close(evlog *l)
{
    if (!l)
        return;
    rd_kafka_consumer_close(l->rk);
    rd_kafka_destroy(l->rk);
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].payload);
    free(l->v);
    free(l);
}

static void header(rd_kafka_headers_t *h, const char *name, char *out, size_t cap)
{
    const void *val = NULL;
    size_t sz = 0;
    out[0] = '\0';
    if (h && rd_kafka_header_get_last(h, name, &val, &sz) == RD_KAFKA_RESP_ERR_NO_ERROR && val)
        snprintf(out, cap, "%.*s", (int)sz, (const char *)val);
}

static void evlog_add(evlog *l, const rd_kafka_message_t *m)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
    }
    rec *r = &l->v[l->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->key, sizeof r->key, "%.*s", (int)m->key_len, m->key ? (const char *)m->key : "");
    rd_kafka_headers_t *h = NULL;
    rd_kafka_message_headers(m, &h);
    header(h, "ce_type", r->type, sizeof r->type);
    header(h, "ce_id", r->id, sizeof r->id);
    header(h, "ce_source", r->source, sizeof r->source);
    header(h, "tenant-id", r->tenant, sizeof r->tenant);
    header(h, "content-type", r->content_type, sizeof r->content_type);
    r->len = m->len;
    r->payload = malloc(m->len ? m->len : 1);
    memcpy(r->payload, m->payload, m->len);
    if (m->partition >= 0 && m->partition < NPARTS)
        l->next[m->partition] = m->offset + 1;
}

static void evlog_poll(evlog *l, int ms)
{
    long long until = hs_now_ms() + ms;
    do {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(l->rk, 50);
        if (!m)
            continue;
        if (!m->err)
            evlog_add(l, m);
        rd_kafka_message_destroy(m);
    } while (hs_now_ms() < until);
}

/* reads until every partition's end as of now; 0 or -1 after timeout_ms */
static int evlog_catch_up(evlog *l, int timeout_ms)
{
    int64_t hi[NPARTS];
    for (int p = 0; p < NPARTS; p++) {
        int64_t lo;
        if (rd_kafka_query_watermark_offsets(l->rk, l->topic, p, &lo, &hi[p], 5000))
            return -1;
    }
    long long until = hs_now_ms() + timeout_ms;
    for (;;) {
        int behind = 0;
        for (int p = 0; p < NPARTS; p++)
            behind |= l->next[p] < hi[p];
        if (!behind)
            return 0;
        if (hs_now_ms() > until)
            return -1;
        evlog_poll(l, 100);
    }
}

/* a decoded event: the fields every order event shares */
typedef struct evmsg {
    ProtobufCMessage *m;
    const char *event_id, *tenant_id, *order_id;
    const Order *order;
    int prev; /* previous_state; -1 for OrderCreated */
    const Refund *refund;
} evmsg;

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

static int ev_decode(const rec *r, evmsg *e)
{
    memset(e, 0, sizeof *e);
    e->prev = -1;
    if (strcmp(r->type, EV_CREATED) == 0)
        DECODE(Commerce__Events__V1__OrderCreated, commerce__events__v1__order_created, (void)0);
    if (strcmp(r->type, EV_PAID) == 0)
        DECODE(Commerce__Events__V1__OrderPaid, commerce__events__v1__order_paid,
               e->prev = (int)x->previous_state);
    if (strcmp(r->type, EV_CANCELLED) == 0)
        DECODE(Commerce__Events__V1__OrderCancelled, commerce__events__v1__order_cancelled,
               e->prev = (int)x->previous_state);
    if (strcmp(r->type, EV_SHIPPED) == 0)
        DECODE(Commerce__Events__V1__OrderShipped, commerce__events__v1__order_shipped,
               e->prev = (int)x->previous_state);
    if (strcmp(r->type, EV_COMPLETED) == 0)
        DECODE(Commerce__Events__V1__OrderCompleted, commerce__events__v1__order_completed,
               e->prev = (int)x->previous_state);
    if (strcmp(r->type, EV_REFUNDED) == 0)
        DECODE(Commerce__Events__V1__OrderRefunded, commerce__events__v1__order_refunded,
               (e->prev = (int)x->previous_state, e->refund = x->refund));
    return -1;
}

static void ev_free(evmsg *e)
{
    if (e->m)
        protobuf_c_message_free_unpacked(e->m, NULL);
    e->m = NULL;
}

/* distinct event ids of one type for one order; *dups (may be NULL) gets
 * the records that repeat an id already seen (redeliveries) */
static int ev_count(const evlog *l, const char *order_id, const char *type, int *dups)
{
    int distinct = 0, rep = 0;
    for (size_t i = 0; i < l->n; i++) {
        const rec *r = &l->v[i];
        if (strcmp(r->key, order_id) || strcmp(r->type, type))
            continue;
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(l->v[j].id, r->id) == 0;
        if (seen)
            rep++;
        else
            distinct++;
    }
    if (dups)
        *dups = rep;
    return distinct;
}

/* the first record of the k-th distinct event of a type for an order */
static const rec *ev_nth(const evlog *l, const char *order_id, const char *type, int k)
{
    for (size_t i = 0; i < l->n; i++) {
        const rec *r = &l->v[i];
        if (strcmp(r->key, order_id) || strcmp(r->type, type))
            continue;
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(l->v[j].id, r->id) == 0;
        if (!seen && k-- == 0)
            return r;
    }
    return NULL;
}

/* every record read so far keeps the envelope contract; redeliveries are
 * reported on stderr, not failed */
static void ev_check_all(const evlog *l)
{
    int redelivered = 0;
    for (size_t i = 0; i < l->n; i++) {
        const rec *r = &l->v[i];
        evmsg e;
        ck_assert_msg(ev_decode(r, &e) == 0, "record %zu: unknown ce_type \"%s\" or bad payload", i,
                      r->type);
        ck_assert_str_eq(r->id, e.event_id);
        ck_assert_str_eq(r->key, e.order_id);
        ck_assert_ptr_nonnull(e.order);
        ck_assert_str_eq(e.order->order_id, e.order_id);
        ck_assert_str_eq(e.tenant_id, TENANT);
        ck_assert_str_eq(r->source, "/commerce/order");
        ck_assert_str_eq(r->tenant, TENANT);
        ck_assert_ptr_nonnull(e.order->created_at);
        int s = (int)e.order->state;
        if (strcmp(r->type, EV_CREATED) == 0) {
            ck_assert_int_eq(s, ST(PENDING_PAYMENT));
        } else if (strcmp(r->type, EV_PAID) == 0) {
            ck_assert_int_eq(s, ST(PAID));
            ck_assert_int_eq(e.prev, ST(PENDING_PAYMENT));
            ck_assert_ptr_nonnull(e.order->payment);
        } else if (strcmp(r->type, EV_CANCELLED) == 0) {
            ck_assert_int_eq(s, ST(CANCELLED));
            ck_assert_int_eq(e.prev, ST(PENDING_PAYMENT));
            ck_assert_int_ne(e.order->cancel_reason, CANCEL(UNSPECIFIED));
        } else if (strcmp(r->type, EV_SHIPPED) == 0) {
            ck_assert(s == ST(SHIPPED) || s == ST(PARTIALLY_REFUNDED));
            ck_assert_ptr_nonnull(e.order->shipment);
        } else if (strcmp(r->type, EV_COMPLETED) == 0) {
            ck_assert(s == ST(COMPLETED) || s == ST(PARTIALLY_REFUNDED));
            ck_assert_ptr_nonnull(e.order->completed_at);
        } else {
            ck_assert(s == ST(PARTIALLY_REFUNDED) || s == ST(REFUNDED));
            ck_assert_ptr_nonnull(e.refund);
        }
        ev_free(&e);
        for (size_t j = 0; j < i; j++)
            if (strcmp(l->v[j].id, r->id) == 0) {
                redelivered++;
                break;
            }
    }
    if (redelivered)
        fprintf(stderr, "note: %d records redelivered an event id already read (at least once)\n",
                redelivered);
}

/* ---- processes ---- */

typedef struct fx {
    char ord_schema[64], inv_schema[64], topic[128], group[128];
    const char *extra[16];
    /* set: inventory serves mTLS with make_certs.sh's files from there, and
     * the test's client presents the client certificate */
    const char *tls_dir;
    hs_proc inv, ord;
    hs_proxy *proxy;
    cm_rpc_client *oc, *ic;
    evlog *log;
} fx;

static int fx_seq;
/* the running test's processes, for the teardown when an assertion ends
 * the test early (CK_NOFORK: nothing else would stop them) */
static fx *cur_fx;

static cm_rpc_client *client_tls(const hs_proc *p, const char *tls_dir)
{
    char ca[192], cert[192], key[192];
    cm_rpc_client_opts o = {.target = p->target, .max_attempts = 1};
    if (tls_dir) {
        snprintf(ca, sizeof ca, "%s/ca.pem", tls_dir);
        snprintf(cert, sizeof cert, "%s/client.pem", tls_dir);
        snprintf(key, sizeof key, "%s/client.key", tls_dir);
        o.tls_ca_file = ca;
        o.tls_cert_file = cert;
        o.tls_key_file = key;
    }
    cm_rpc_client *c = NULL;
    char err[256];
    ck_assert_int_eq(cm_rpc_client_new(&c, &o, err, sizeof err), 0);
    return c;
}

static cm_rpc_client *client_for(const hs_proc *p)
{
    return client_tls(p, NULL);
}

/* ready by its admin endpoint (plain HTTP, whatever the gRPC port speaks) */
static int wait_ready(const hs_proc *p, int timeout_ms)
{
    long long until = hs_now_ms() + timeout_ms;
    char body[256];
    while (hs_now_ms() < until) {
        int st;
        if (waitpid(p->pid, &st, WNOHANG) == p->pid)
            return -1;
        if (hs_http_get(p->admin_port, "/readyz", body, sizeof body) == 200)
            return 0;
        usleep(50 * 1000);
    }
    return -1;
}

static void spawn_inventory(fx *f)
{
    char s[96], t[192], g[192], cert[192], key[192], ca[192];
    snprintf(s, sizeof s, "INVENTORY_SCHEMA=%s", f->inv_schema);
    snprintf(t, sizeof t, "INVENTORY_ORDER_TOPIC=%s", f->topic);
    snprintf(g, sizeof g, "INVENTORY_ORDER_GROUP=%s", f->group);
    const char *env[] = {
        s,    t,    g,   "INVENTORY_CONSUME_ORDERS=on", "INVENTORY_SWEEP_MS=100", "WORKERS=8", NULL,
        NULL, NULL, NULL};
    if (f->tls_dir) {
        snprintf(cert, sizeof cert, "TLS_CERT_FILE=%s/server.pem", f->tls_dir);
        snprintf(key, sizeof key, "TLS_KEY_FILE=%s/server.key", f->tls_dir);
        snprintf(ca, sizeof ca, "TLS_CLIENT_CA_FILE=%s/ca.pem", f->tls_dir);
        env[6] = cert;
        env[7] = key;
        env[8] = ca;
    }
    ck_assert_int_eq(hs_spawn(&f->inv, INVENTORY_BIN, env), 0);
    ck_assert_msg((f->tls_dir ? wait_ready(&f->inv, 30000) : hs_wait_serving(&f->inv, 30000)) == 0,
                  "inventory did not become serving (log %s)", f->inv.log_path);
}

static void spawn_order_into(fx *f, hs_proc *p, const char *const *extra)
{
    char s[96], t[192], inv[64];
    snprintf(s, sizeof s, "ORDER_SCHEMA=%s", f->ord_schema);
    snprintf(t, sizeof t, "ORDER_TOPIC=%s", f->topic);
    snprintf(inv, sizeof inv, "INVENTORY_TARGET=127.0.0.1:%d",
             f->proxy ? hs_proxy_port(f->proxy) : f->inv.grpc_port);
    const char *env[32] = {
        s, t, inv, "WORKERS=8", "ORDER_SWEEP_MS=100", "ORDER_RESERVATION_MARGIN_S=2"};
    size_t n = 6;
    for (size_t i = 0; extra[i] && n < 31; i++)
        env[n++] = extra[i];
    env[n] = NULL;
    ck_assert_int_eq(hs_spawn(p, ORDER_BIN, env), 0);
    ck_assert_msg(hs_wait_serving(p, 30000) == 0, "order did not become serving (log %s)",
                  p->log_path);
}

static void spawn_order(fx *f)
{
    spawn_order_into(f, &f->ord, f->extra);
}

/* both services on fresh schemas and a fresh topic; extra: order env;
 * tls_dir: inventory serves mTLS (order's extra names its client files) */
static void fx_start_tls(fx *f, const char *const *extra, int proxy, const char *tls_dir)
{
    memset(f, 0, sizeof *f);
    f->tls_dir = tls_dir;
    cur_fx = f;
    fx_seq++;
    snprintf(f->ord_schema, sizeof f->ord_schema, "ord_it_%d_%d", (int)getpid(), fx_seq);
    snprintf(f->inv_schema, sizeof f->inv_schema, "ordinv_it_%d_%d", (int)getpid(), fx_seq);
    snprintf(f->topic, sizeof f->topic, "commerce.order.v1.it-%d-%d", (int)getpid(), fx_seq);
    snprintf(f->group, sizeof f->group, "commerce.inventory.it-ord-%d-%d", (int)getpid(), fx_seq);
    for (size_t i = 0; extra && extra[i] && i < 15; i++)
        f->extra[i] = extra[i];
    topic_admin(f->topic, 1, NPARTS);
    spawn_inventory(f);
    if (proxy) {
        f->proxy = hs_proxy_start(f->inv.grpc_port);
        ck_assert_ptr_nonnull(f->proxy);
    }
    spawn_order(f);
    f->oc = client_for(&f->ord);
    f->ic = client_tls(&f->inv, tls_dir);
    f->log = evlog_open(f->topic);
}

static void fx_start(fx *f, const char *const *extra, int proxy)
{
    fx_start_tls(f, extra, proxy, NULL);
}

static void fx_stop(fx *f)
{
    cm_rpc_client_free(f->oc);
    cm_rpc_client_free(f->ic);
    evlog_close(f->log);
    ck_assert_msg(hs_stop(&f->ord, SIGTERM, 30000) == 0, "order did not exit 0 (log %s)",
                  f->ord.log_path);
    ck_assert_msg(hs_stop(&f->inv, SIGTERM, 30000) == 0, "inventory did not exit 0 (log %s)",
                  f->inv.log_path);
    hs_proxy_free(f->proxy);
    topic_admin(f->topic, 0, 0);
    /* only reached when the test passed: a failed one keeps its schemas */
    drop_schema(f->ord_schema);
    drop_schema(f->inv_schema);
    cur_fx = NULL;
}

static void teardown(void)
{
    fx *f = cur_fx;
    cur_fx = NULL;
    if (!f)
        return;
    if (f->inv.pid > 0)
        kill(f->inv.pid, SIGCONT);
    if (f->ord.pid > 0)
        hs_stop(&f->ord, SIGKILL, 5000);
    if (f->inv.pid > 0)
        hs_stop(&f->inv, SIGKILL, 5000);
    hs_proxy_free(f->proxy);
    f->proxy = NULL;
    fprintf(stderr, "test failed: schemas %s, %s and topic %s kept\n", f->ord_schema, f->inv_schema,
            f->topic);
}

/* every outbox row of the order service published, then the topic read to
 * its end: what the log holds is everything the service committed */
static void settle(fx *f)
{
    long long until = hs_now_ms() + 30000;
    long unsent;
    while ((unsent = sql_long(f->ord_schema, "SELECT count(*) FROM outbox WHERE published_at IS "
                                             "NULL AND failed_at IS NULL")) > 0 &&
           hs_now_ms() < until)
        usleep(100000);
    ck_assert_msg(unsent == 0, "%ld outbox rows still unpublished after 30 s", unsent);
    ck_assert_int_eq(sql_long(f->ord_schema, "SELECT count(*) FROM outbox WHERE failed_at IS NOT "
                                             "NULL"),
                     0);
    ck_assert_msg(evlog_catch_up(f->log, 30000) == 0, "could not read topic %s to its end",
                  f->topic);
    ev_check_all(f->log);
}

/* ---- calls ---- */

static int call(cm_rpc_client *c, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *d, ProtobufCMessage **resp, cm_rpc_status *st,
                const cm_rpc_md *md, size_t nmd)
{
    cm_rpc_status local;
    if (!st)
        st = &local;
    ProtobufCMessage *r = NULL;
    cm_rpc_call(c, method, req, d, NULL, &r, md, nmd, 15000, 0, st);
    if (resp)
        *resp = r;
    else if (r)
        protobuf_c_message_free_unpacked(r, NULL);
    return st->code;
}

static void order_free(Order *o)
{
    if (o)
        protobuf_c_message_free_unpacked(&o->base, NULL);
}

/* the order out of a response; the response is freed */
static Order *take(ProtobufCMessage *resp, Order **slot)
{
    if (!resp)
        return NULL;
    Order *o = *slot;
    *slot = NULL;
    protobuf_c_message_free_unpacked(resp, NULL);
    return o;
}

/* "field is path or inside it": lines[0].unit_price matches
 * lines[0].unit_price.amount_minor, lines matches lines[3].sku */
static int field_is(const cm_rpc_status *st, const char *path)
{
    size_t n = strlen(path);
    char next = st->field[n];
    return strncmp(st->field, path, n) == 0 && (next == '\0' || next == '.' || next == '[');
}

#define ck_field(st, path)                                                                         \
    ck_assert_msg(field_is(&(st), path), "field: expected %s, got \"%s\" (code %d, %s)", path,     \
                  (st).field, (st).code, (st).message)

typedef struct line {
    const char *sku;
    int64_t qty;
    int64_t price;
    const char *cur; /* NULL: the order's currency */
    int no_price;    /* leave unit_price unset */
} line;

#define L(s, q, p)                                                                                 \
    {                                                                                              \
        .sku = (s), .qty = (q), .price = (p)                                                       \
    }
#define RL(s, q)                                                                                   \
    {                                                                                              \
        .sku = (s), .qty = (q)                                                                     \
    } /* a refund line: sku and units */

typedef struct order_spec {
    const char *rid, *buyer, *merchant, *channel, *currency, *external_ref;
    const line *lines;
    size_t n;
    int64_t timeout_s; /* 0: unset, the service default */
} order_spec;

static order_spec spec(const char *rid, const line *lines, size_t n)
{
    return (order_spec){.rid = rid,
                        .buyer = "buyer-1",
                        .merchant = "merchant-1",
                        .currency = "CNY",
                        .lines = lines,
                        .n = n};
}

#define MAX_LINES 128

static int create_md(cm_rpc_client *c, const order_spec *s, Order **out, cm_rpc_status *st,
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
    int code = call(c, OSVC "CreateOrder", &q.base,
                    &commerce__order__v1__create_order_response__descriptor,
                    (ProtobufCMessage **)&r, st, md, nmd);
    Order *o = r ? take(&r->base, &r->order) : NULL;
    if (out)
        *out = o;
    else
        order_free(o);
    return code;
}

static int create(cm_rpc_client *c, const order_spec *s, Order **out, cm_rpc_status *st)
{
    return create_md(c, s, out, st, md_t, 1);
}

/* creates an order that must succeed; returns it */
static Order *must_create(cm_rpc_client *c, const order_spec *s)
{
    Order *o = NULL;
    cm_rpc_status st;
    int code = create(c, s, &o, &st);
    ck_assert_msg(code == 0, "CreateOrder %s: code %d reason %s field %s: %s", s->rid, code,
                  st.reason, st.field, st.message);
    ck_assert_ptr_nonnull(o);
    return o;
}

/* creates order s and keeps only its id */
static void create_id(cm_rpc_client *c, const order_spec *s, char id[64])
{
    Order *o = must_create(c, s);
    snprintf(id, 64, "%s", o->order_id);
    order_free(o);
}

/* n unpaid orders of line l (request ids "<prefix>-<i>", 10 min to pay) */
static void create_pending(cm_rpc_client *c, const char *prefix, const line *l, int n,
                           char (*ids)[64])
{
    for (int i = 0; i < n; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "%s-%d", prefix, i);
        order_spec s = spec(rid, l, 1);
        s.timeout_s = 600;
        create_id(c, &s, ids[i]);
    }
}

static int get_order_md(cm_rpc_client *c, const char *id, Order **out, cm_rpc_status *st,
                        const cm_rpc_md *md)
{
    Commerce__Order__V1__GetOrderRequest q = COMMERCE__ORDER__V1__GET_ORDER_REQUEST__INIT;
    q.order_id = (char *)id;
    Commerce__Order__V1__GetOrderResponse *r = NULL;
    int code =
        call(c, OSVC "GetOrder", &q.base, &commerce__order__v1__get_order_response__descriptor,
             (ProtobufCMessage **)&r, st, md, md ? 1 : 0);
    Order *o = r ? take(&r->base, &r->order) : NULL;
    if (out)
        *out = o;
    else
        order_free(o);
    return code;
}

static Order *must_get(cm_rpc_client *c, const char *id)
{
    Order *o = NULL;
    cm_rpc_status st;
    ck_assert_msg(get_order_md(c, id, &o, &st, md_t) == 0, "GetOrder %s: %d %s", id, st.code,
                  st.message);
    ck_assert_ptr_nonnull(o);
    return o;
}

static int state_of(cm_rpc_client *c, const char *id)
{
    Order *o = must_get(c, id);
    int s = (int)o->state;
    order_free(o);
    return s;
}

typedef struct pay_spec {
    const char *payment_id, *order_id, *currency, *provider, *reference;
    int64_t amount;
    long long paid_at_ms; /* 0: unset */
} pay_spec;

static int mark_paid(cm_rpc_client *c, const pay_spec *p, Order **out, cm_rpc_status *st)
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
    int code =
        call(c, OSVC "MarkPaid", &q.base, &commerce__order__v1__mark_paid_response__descriptor,
             (ProtobufCMessage **)&r, st, md_t, 1);
    Order *o = r ? take(&r->base, &r->order) : NULL;
    if (out)
        *out = o;
    else
        order_free(o);
    return code;
}

/* pays an order in full with payment id pid; must succeed */
static void must_pay(cm_rpc_client *c, const Order *o, const char *pid)
{
    pay_spec p = {.payment_id = pid,
                  .order_id = o->order_id,
                  .amount = o->total_amount->amount_minor,
                  .currency = o->currency};
    cm_rpc_status st;
    int code = mark_paid(c, &p, NULL, &st);
    ck_assert_msg(code == 0, "MarkPaid %s: %d %s %s", pid, code, st.reason, st.message);
}

static int cancel_order(cm_rpc_client *c, const char *rid, const char *id, int reason,
                        const char *note, Order **out, cm_rpc_status *st)
{
    Commerce__Order__V1__CancelOrderRequest q = COMMERCE__ORDER__V1__CANCEL_ORDER_REQUEST__INIT;
    q.request_id = (char *)rid;
    q.order_id = (char *)id;
    q.reason = (Commerce__Order__V1__CancelReason)reason;
    q.note = (char *)(note ? note : "");
    Commerce__Order__V1__CancelOrderResponse *r = NULL;
    int code = call(c, OSVC "CancelOrder", &q.base,
                    &commerce__order__v1__cancel_order_response__descriptor,
                    (ProtobufCMessage **)&r, st, md_t, 1);
    Order *o = r ? take(&r->base, &r->order) : NULL;
    if (out)
        *out = o;
    else
        order_free(o);
    return code;
}

static int ship_order(cm_rpc_client *c, const char *rid, const char *id, const char *carrier,
                      const char *tracking, Order **out, cm_rpc_status *st)
{
    Commerce__Order__V1__ShipOrderRequest q = COMMERCE__ORDER__V1__SHIP_ORDER_REQUEST__INIT;
    q.request_id = (char *)rid;
    q.order_id = (char *)id;
    q.carrier = (char *)(carrier ? carrier : "");
    q.tracking_number = (char *)(tracking ? tracking : "");
    Commerce__Order__V1__ShipOrderResponse *r = NULL;
    int code =
        call(c, OSVC "ShipOrder", &q.base, &commerce__order__v1__ship_order_response__descriptor,
             (ProtobufCMessage **)&r, st, md_t, 1);
    Order *o = r ? take(&r->base, &r->order) : NULL;
    if (out)
        *out = o;
    else
        order_free(o);
    return code;
}

static int complete_order(cm_rpc_client *c, const char *rid, const char *id, Order **out,
                          cm_rpc_status *st)
{
    Commerce__Order__V1__CompleteOrderRequest q = COMMERCE__ORDER__V1__COMPLETE_ORDER_REQUEST__INIT;
    q.request_id = (char *)rid;
    q.order_id = (char *)id;
    Commerce__Order__V1__CompleteOrderResponse *r = NULL;
    int code = call(c, OSVC "CompleteOrder", &q.base,
                    &commerce__order__v1__complete_order_response__descriptor,
                    (ProtobufCMessage **)&r, st, md_t, 1);
    Order *o = r ? take(&r->base, &r->order) : NULL;
    if (out)
        *out = o;
    else
        order_free(o);
    return code;
}

typedef struct refund_spec {
    const char *refund_id, *order_id;
    int scope;
    const line *lines; /* sku and qty used */
    size_t n;
    int has_amount;
    int64_t amount;
    const char *currency; /* NULL: CNY */
} refund_spec;

static int refund_order(cm_rpc_client *c, const refund_spec *s,
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
    int code = call(c, OSVC "RefundOrder", &q.base,
                    &commerce__order__v1__refund_order_response__descriptor,
                    (ProtobufCMessage **)&r, st, md_t, 1);
    if (out)
        *out = r;
    else if (r)
        protobuf_c_message_free_unpacked(&r->base, NULL);
    return code;
}

static int list_orders(cm_rpc_client *c, Commerce__Order__V1__ListOrdersRequest *q,
                       Commerce__Order__V1__ListOrdersResponse **out, cm_rpc_status *st,
                       const cm_rpc_md *md)
{
    return call(c, OSVC "ListOrders", &q->base,
                &commerce__order__v1__list_orders_response__descriptor, (ProtobufCMessage **)out,
                st, md, 1);
}

/* walks every page of q (page_size as set); the ids, newest first, into
 * ids (cap entries of 64 bytes); returns how many. asserts no duplicate and
 * created_at never increasing. between (may be NULL) runs after page 1. */
static size_t list_all(cm_rpc_client *c, Commerce__Order__V1__ListOrdersRequest *q, char (*ids)[64],
                       size_t cap, void (*between)(void *), void *arg)
{
    char *token = strdup("");
    size_t n = 0, pages = 0;
    long long last = -1;
    for (;;) {
        q->page_token = token;
        Commerce__Order__V1__ListOrdersResponse *r = NULL;
        cm_rpc_status st;
        ck_assert_msg(list_orders(c, q, &r, &st, md_t) == 0, "ListOrders: %d %s %s", st.code,
                      st.reason, st.message);
        if (q->page_size > 0)
            ck_assert_int_le(r->n_orders, q->page_size);
        for (size_t i = 0; i < r->n_orders; i++) {
            const Order *o = r->orders[i];
            for (size_t j = 0; j < n; j++)
                ck_assert_msg(strcmp(ids[j], o->order_id) != 0, "order %s listed twice (page %zu)",
                              o->order_id, pages + 1);
            long long at = ts_ms(o->created_at);
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

static int has_id(char (*ids)[64], size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(ids[i], id) == 0)
            return 1;
    return 0;
}

/* every order of the tenant; ids as list_all */
static size_t all_orders(cm_rpc_client *c, char (*ids)[64], size_t cap)
{
    Commerce__Order__V1__ListOrdersRequest q = COMMERCE__ORDER__V1__LIST_ORDERS_REQUEST__INIT;
    q.page_size = 100;
    return list_all(c, &q, ids, cap, NULL, NULL);
}

/* ---- inventory ---- */

static void set_stock(cm_rpc_client *c, const char *rid, const char *sku, int64_t avail)
{
    Commerce__Inventory__V1__SetStockRequest q = COMMERCE__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
    q.request_id = (char *)rid;
    q.sku = (char *)sku;
    q.available = avail;
    q.reason = "goods received";
    q.actor = "ops:test";
    cm_rpc_status st;
    ck_assert_msg(call(c, ISVC "SetStock", &q.base,
                       &commerce__inventory__v1__set_stock_response__descriptor, NULL, &st, md_t,
                       1) == 0,
                  "SetStock %s: %s", sku, st.message);
}

typedef struct level {
    int64_t available, reserved, sold;
} level;

static level get_level(cm_rpc_client *c, const char *sku)
{
    Commerce__Inventory__V1__GetStockRequest q = COMMERCE__INVENTORY__V1__GET_STOCK_REQUEST__INIT;
    q.sku = (char *)sku;
    Commerce__Inventory__V1__GetStockResponse *r = NULL;
    level l = {-1, -1, -1};
    if (call(c, ISVC "GetStock", &q.base, &commerce__inventory__v1__get_stock_response__descriptor,
             (ProtobufCMessage **)&r, NULL, md_t, 1) == 0) {
        l.available = r->stock->available;
        l.reserved = r->stock->reserved;
        l.sold = r->stock->sold;
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    return l;
}

/* waits (bounded) until sku has these levels, which inventory reaches by
 * consuming the order events; asserts them */
static void wait_level(cm_rpc_client *c, const char *sku, int64_t avail, int64_t reserved,
                       int64_t sold)
{
    long long until = hs_now_ms() + 30000;
    level l;
    for (;;) {
        l = get_level(c, sku);
        if ((l.available == avail && l.reserved == reserved && l.sold == sold) ||
            hs_now_ms() > until)
            break;
        usleep(100000);
    }
    ck_assert_msg(l.available == avail && l.reserved == reserved && l.sold == sold,
                  "%s: available/reserved/sold %lld/%lld/%lld, expected %lld/%lld/%lld", sku,
                  (long long)l.available, (long long)l.reserved, (long long)l.sold,
                  (long long)avail, (long long)reserved, (long long)sold);
}

static void assert_level(cm_rpc_client *c, const char *sku, int64_t avail, int64_t reserved,
                         int64_t sold)
{
    level l = get_level(c, sku);
    ck_assert_msg(l.available == avail && l.reserved == reserved && l.sold == sold,
                  "%s: available/reserved/sold %lld/%lld/%lld, expected %lld/%lld/%lld", sku,
                  (long long)l.available, (long long)l.reserved, (long long)l.sold,
                  (long long)avail, (long long)reserved, (long long)sold);
}

/* stock changes of one kind on one sku; the first one's order id into
 * order (may be NULL) */
static size_t stock_changes(cm_rpc_client *c, const char *sku, int kind, char *order, size_t cap)
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
    ck_assert_int_eq(call(c, ISVC "ListStockChanges", &q.base,
                          &commerce__inventory__v1__list_stock_changes_response__descriptor,
                          (ProtobufCMessage **)&r, NULL, md_t, 1),
                     0);
    size_t n = r->n_changes;
    if (order && cap)
        snprintf(order, cap, "%s", n ? r->changes[n - 1]->order_id : "");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return n;
}

#define KIND_RESERVE COMMERCE__INVENTORY__V1__STOCK_CHANGE_KIND__STOCK_CHANGE_KIND_RESERVE
#define KIND_EXPIRE COMMERCE__INVENTORY__V1__STOCK_CHANGE_KIND__STOCK_CHANGE_KIND_EXPIRE
#define KIND_RELEASE COMMERCE__INVENTORY__V1__STOCK_CHANGE_KIND__STOCK_CHANGE_KIND_RELEASE

static long violations(cm_rpc_client *c)
{
    Commerce__Inventory__V1__CheckInvariantsRequest q =
        COMMERCE__INVENTORY__V1__CHECK_INVARIANTS_REQUEST__INIT;
    Commerce__Inventory__V1__CheckInvariantsResponse *r = NULL;
    if (call(c, ISVC "CheckInvariants", &q.base,
             &commerce__inventory__v1__check_invariants_response__descriptor,
             (ProtobufCMessage **)&r, NULL, md_t, 1) != 0)
        return -1;
    long n = (long)r->n_violations;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return n;
}

static void assert_money(const Commerce__Common__V1__Money *m, int64_t minor, const char *cur)
{
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(m->amount_minor, minor);
    ck_assert_str_eq(m->currency, cur);
}

/* unset money counts as 0 where the proto says "0 when none" */
static int64_t minor_or_0(const Commerce__Common__V1__Money *m)
{
    return m ? m->amount_minor : 0;
}

static const Commerce__Order__V1__OrderLine *line_of(const Order *o, const char *sku)
{
    for (size_t i = 0; i < o->n_lines; i++)
        if (strcmp(o->lines[i]->sku, sku) == 0)
            return o->lines[i];
    ck_abort_msg("order %s has no line %s", o->order_id, sku);
    return NULL;
}

static const Commerce__Order__V1__RefundLine *refund_line_of(const Refund *r, const char *sku)
{
    for (size_t i = 0; i < r->n_lines; i++)
        if (strcmp(r->lines[i]->sku, sku) == 0)
            return r->lines[i];
    return NULL;
}

/* ---- the saga ---- */

START_TEST(saga_create_pay_ship_complete)
{
    static fx f;
    fx_start(&f, NULL, 0);
    set_stock(f.ic, "s-a", "sku-a", 10);
    set_stock(f.ic, "s-b", "sku-b", 5);

    line ls[] = {L("sku-a", 3, 1250), L("sku-b", 1, 9900)};
    order_spec s = spec("req-saga-1", ls, 2);
    s.channel = "ch-7";
    s.external_ref = "EXT-1";
    s.timeout_s = 600;
    Order *o = must_create(f.oc, &s);
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    ck_assert_uint_eq(strlen(id), 36);
    ck_assert_str_eq(o->request_id, "req-saga-1");
    ck_assert_int_eq(o->state, ST(PENDING_PAYMENT));
    ck_assert_str_eq(o->buyer_id, "buyer-1");
    ck_assert_str_eq(o->merchant_id, "merchant-1");
    ck_assert_str_eq(o->channel_id, "ch-7");
    ck_assert_str_eq(o->currency, "CNY");
    ck_assert_str_eq(o->external_ref, "EXT-1");
    ck_assert_uint_eq(o->n_lines, 2);
    ck_assert_str_eq(o->lines[0]->sku, "sku-a");
    ck_assert_int_eq(o->lines[0]->quantity, 3);
    assert_money(o->lines[0]->unit_price, 1250, "CNY");
    assert_money(o->lines[0]->line_total, 3750, "CNY");
    ck_assert_str_eq(o->lines[1]->sku, "sku-b");
    assert_money(o->lines[1]->line_total, 9900, "CNY");
    ck_assert_str_eq(o->lines[0]->flash_sale_id, "");
    assert_money(o->total_amount, 13650, "CNY");
    ck_assert_int_eq(minor_or_0(o->refunded_amount), 0);
    ck_assert_ptr_null(o->payment);
    ck_assert_ptr_null(o->shipment);
    ck_assert_int_eq(o->cancel_reason, CANCEL(UNSPECIFIED));
    ck_assert(!o->flash_sale);
    ck_assert_ptr_nonnull(o->created_at);
    long long dl = ts_ms(o->payment_deadline) - ts_ms(o->created_at);
    ck_assert_msg(dl >= 599000 && dl <= 601000, "deadline - created = %lld ms", dl);
    order_free(o);
    assert_level(f.ic, "sku-a", 7, 3, 0);
    assert_level(f.ic, "sku-b", 4, 1, 0);

    /* the same request again: the same order, nothing reserved twice */
    o = must_create(f.oc, &s);
    ck_assert_str_eq(o->order_id, id);
    ck_assert_int_eq(o->state, ST(PENDING_PAYMENT));
    order_free(o);
    assert_level(f.ic, "sku-a", 7, 3, 0);
    ck_assert_uint_eq(stock_changes(f.ic, "sku-a", KIND_RESERVE, NULL, 0), 1);

    /* the same request_id with another body */
    line ls2[] = {L("sku-a", 4, 1250), L("sku-b", 1, 9900)};
    order_spec s2 = s;
    s2.lines = ls2;
    cm_rpc_status st;
    ck_assert_int_eq(create(f.oc, &s2, NULL, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");
    assert_level(f.ic, "sku-a", 7, 3, 0);

    /* pay: the provider's capture time is kept */
    long long paid_at = (real_ms() - 60000) / 1000 * 1000;
    pay_spec p = {.payment_id = "pay-saga-1",
                  .order_id = id,
                  .amount = 13650,
                  .provider = "alipay",
                  .reference = "ALI-123",
                  .paid_at_ms = paid_at};
    ck_assert_int_eq(mark_paid(f.oc, &p, &o, &st), 0);
    ck_assert_int_eq(o->state, ST(PAID));
    ck_assert_ptr_nonnull(o->payment);
    ck_assert_str_eq(o->payment->payment_id, "pay-saga-1");
    assert_money(o->payment->amount, 13650, "CNY");
    ck_assert_str_eq(o->payment->provider, "alipay");
    ck_assert_str_eq(o->payment->provider_reference, "ALI-123");
    ck_assert_int_eq(ts_ms(o->payment->paid_at), paid_at);
    ck_assert_ptr_nonnull(o->payment->recorded_at);
    order_free(o);
    /* inventory confirms from OrderPaid: reserved becomes sold */
    wait_level(f.ic, "sku-a", 7, 0, 3);
    wait_level(f.ic, "sku-b", 4, 0, 1);

    ck_assert_int_eq(ship_order(f.oc, "ship-1", id, "sf-express", "SF123", &o, &st), 0);
    ck_assert_int_eq(o->state, ST(SHIPPED));
    ck_assert_ptr_nonnull(o->shipment);
    ck_assert_str_eq(o->shipment->carrier, "sf-express");
    ck_assert_str_eq(o->shipment->tracking_number, "SF123");
    ck_assert_ptr_nonnull(o->shipment->shipped_at);
    order_free(o);
    /* a retried ship is the same ship */
    ck_assert_int_eq(ship_order(f.oc, "ship-1", id, "sf-express", "SF123", NULL, &st), 0);
    ck_assert_int_eq(ship_order(f.oc, "ship-1", id, "sf-express", "SF999", NULL, &st),
                     GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_int_eq(complete_order(f.oc, "done-1", id, &o, &st), 0);
    ck_assert_int_eq(o->state, ST(COMPLETED));
    ck_assert_ptr_nonnull(o->completed_at);
    order_free(o);
    ck_assert_int_eq(complete_order(f.oc, "done-1", id, NULL, &st), 0);

    o = must_get(f.oc, id);
    ck_assert_int_eq(o->state, ST(COMPLETED));
    ck_assert_str_eq(o->payment->payment_id, "pay-saga-1");
    ck_assert_str_eq(o->shipment->tracking_number, "SF123");
    assert_money(o->total_amount, 13650, "CNY");
    order_free(o);

    /* a late duplicate of the payment notification: OK, nothing applied
     * again, the order as it is now */
    ck_assert_int_eq(mark_paid(f.oc, &p, &o, &st), 0);
    ck_assert_str_eq(o->order_id, id);
    ck_assert_int_eq(o->state, ST(COMPLETED));
    ck_assert_str_eq(o->payment->payment_id, "pay-saga-1");
    order_free(o);
    ck_assert_int_eq(state_of(f.oc, id), ST(COMPLETED));

    /* exactly one event per step, in order, with the saga's data */
    settle(&f);
    const char *types[] = {EV_CREATED, EV_PAID, EV_SHIPPED, EV_COMPLETED};
    for (int i = 0; i < 4; i++) {
        int dups;
        ck_assert_msg(ev_count(f.log, id, types[i], &dups) == 1, "%s: %d distinct events", types[i],
                      ev_count(f.log, id, types[i], NULL));
    }
    ck_assert_int_eq(ev_count(f.log, id, EV_CANCELLED, NULL), 0);
    ck_assert_int_eq(ev_count(f.log, id, EV_REFUNDED, NULL), 0);
    /* one key, one partition: the topic holds them in the order they happened */
    int step = 0;
    for (size_t i = 0; i < f.log->n; i++) {
        if (strcmp(f.log->v[i].key, id))
            continue;
        int k = 0;
        while (k < 4 && strcmp(f.log->v[i].type, types[k]))
            k++;
        ck_assert_msg(k >= step - 1 && k <= step, "event %s out of order", f.log->v[i].type);
        if (k == step)
            step++;
    }
    ck_assert_int_eq(step, 4);
    evmsg e;
    ck_assert_int_eq(ev_decode(ev_nth(f.log, id, EV_PAID, 0), &e), 0);
    ck_assert_str_eq(e.order->merchant_id, "merchant-1");
    ck_assert_str_eq(e.order->channel_id, "ch-7");
    assert_money(e.order->total_amount, 13650, "CNY");
    ck_assert_int_eq(ts_ms(e.order->payment->paid_at), paid_at);
    ck_assert_uint_eq(e.order->n_lines, 2);
    ev_free(&e);
    ck_assert_int_eq(ev_decode(ev_nth(f.log, id, EV_SHIPPED, 0), &e), 0);
    ck_assert_int_eq(e.prev, ST(PAID));
    ev_free(&e);
    ck_assert_int_eq(ev_decode(ev_nth(f.log, id, EV_COMPLETED, 0), &e), 0);
    ck_assert_int_eq(e.prev, ST(SHIPPED));
    ev_free(&e);
    ck_assert_int_eq(violations(f.ic), 0);
    fx_stop(&f);
}
END_TEST

START_TEST(saga_payment_timeout_releases_stock)
{
    const char *env[] = {"ORDER_PAYMENT_TIMEOUT_S=2", "ORDER_FLASH_PAYMENT_TIMEOUT_S=1", NULL};
    static fx f;
    fx_start(&f, env, 0);
    set_stock(f.ic, "s-t", "sku-t", 10);
    set_stock(f.ic, "s-f", "sku-f", 10);
    /* a flash sale on sku-f, running now */
    Commerce__Inventory__V1__ConfigureFlashSaleRequest fq =
        COMMERCE__INVENTORY__V1__CONFIGURE_FLASH_SALE_REQUEST__INIT;
    Google__Protobuf__Timestamp fs = GOOGLE__PROTOBUF__TIMESTAMP__INIT,
                                fe = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    fs.seconds = time(NULL) - 5;
    fe.seconds = time(NULL) + 3600;
    fq.request_id = "fs-1";
    fq.sku = "sku-f";
    fq.starts_at = &fs;
    fq.ends_at = &fe;
    fq.sale_stock = 5;
    fq.per_buyer_limit = 2;
    fq.actor = "ops:test";
    Commerce__Inventory__V1__ConfigureFlashSaleResponse *fr = NULL;
    ck_assert_int_eq(call(f.ic, ISVC "ConfigureFlashSale", &fq.base,
                          &commerce__inventory__v1__configure_flash_sale_response__descriptor,
                          (ProtobufCMessage **)&fr, NULL, md_t, 1),
                     0);
    char sale[64];
    snprintf(sale, sizeof sale, "%s", fr->flash_sale->flash_sale_id);
    protobuf_c_message_free_unpacked(&fr->base, NULL);

    /* the default payment timeout (ORDER_PAYMENT_TIMEOUT_S) */
    line lt[] = {L("sku-t", 4, 500)};
    Order *o = must_create(f.oc, &(order_spec){.rid = "req-to-1",
                                               .buyer = "buyer-1",
                                               .merchant = "merchant-1",
                                               .currency = "CNY",
                                               .lines = lt,
                                               .n = 1});
    char id1[64];
    snprintf(id1, sizeof id1, "%s", o->order_id);
    long long dl = ts_ms(o->payment_deadline) - ts_ms(o->created_at);
    ck_assert_msg(dl >= 1500 && dl <= 2500, "deadline - created = %lld ms (expected 2 s)", dl);
    ck_assert(!o->flash_sale);
    order_free(o);
    /* a flash-sale line: the flash default (ORDER_FLASH_PAYMENT_TIMEOUT_S) */
    line lf[] = {L("sku-f", 1, 100)};
    order_spec sf = spec("req-to-2", lf, 1);
    o = must_create(f.oc, &sf);
    char id2[64];
    snprintf(id2, sizeof id2, "%s", o->order_id);
    ck_assert(o->flash_sale);
    ck_assert_str_eq(o->lines[0]->flash_sale_id, sale);
    dl = ts_ms(o->payment_deadline) - ts_ms(o->created_at);
    ck_assert_msg(dl >= 500 && dl <= 1500, "flash: deadline - created = %lld ms (expected 1 s)",
                  dl);
    order_free(o);
    /* a timeout given in the request wins over both defaults */
    sf.rid = "req-to-3";
    sf.buyer = "buyer-2";
    sf.timeout_s = 120;
    o = must_create(f.oc, &sf);
    char id3[64];
    snprintf(id3, sizeof id3, "%s", o->order_id);
    dl = ts_ms(o->payment_deadline) - ts_ms(o->created_at);
    ck_assert_msg(dl >= 119000 && dl <= 121000, "deadline - created = %lld ms (expected 120 s)",
                  dl);
    order_free(o);
    assert_level(f.ic, "sku-t", 6, 4, 0);
    assert_level(f.ic, "sku-f", 8, 2, 0);

    /* the sweeper cancels both unpaid orders after their deadline */
    long long until = hs_now_ms() + 20000;
    while (hs_now_ms() < until &&
           (state_of(f.oc, id1) != ST(CANCELLED) || state_of(f.oc, id2) != ST(CANCELLED)))
        usleep(100000);
    const char *ids[] = {id1, id2};
    for (int i = 0; i < 2; i++) {
        o = must_get(f.oc, ids[i]);
        ck_assert_int_eq(o->state, ST(CANCELLED));
        ck_assert_int_eq(o->cancel_reason, CANCEL(PAYMENT_TIMEOUT));
        ck_assert_ptr_nonnull(o->cancelled_at);
        ck_assert_int_ge(ts_ms(o->cancelled_at), ts_ms(o->payment_deadline));
        ck_assert_ptr_null(o->payment);
        order_free(o);
    }
    ck_assert_int_eq(state_of(f.oc, id3), ST(PENDING_PAYMENT));
    /* inventory releases from OrderCancelled: available back */
    wait_level(f.ic, "sku-t", 10, 0, 0);
    wait_level(f.ic, "sku-f", 9, 1, 0);

    /* a payment after the cancellation is refused, clearly, and recorded */
    pay_spec p = {.payment_id = "pay-late-1", .order_id = id1, .amount = 2000};
    cm_rpc_status st;
    ck_assert_int_eq(mark_paid(f.oc, &p, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_int_eq(sql_long(f.ord_schema, "SELECT count(*) FROM payment_rejections"), 1);
    ck_assert_int_eq(mark_paid(f.oc, &p, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_int_eq(state_of(f.oc, id1), ST(CANCELLED));
    /* a caller's cancel of a cancelled order: OK, unchanged */
    ck_assert_int_eq(cancel_order(f.oc, "cx-late", id1, CANCEL(BUYER_REQUESTED), NULL, &o, &st), 0);
    ck_assert_int_eq(o->state, ST(CANCELLED));
    ck_assert_int_eq(o->cancel_reason, CANCEL(PAYMENT_TIMEOUT));
    order_free(o);
    wait_level(f.ic, "sku-t", 10, 0, 0);

    settle(&f);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(ev_count(f.log, ids[i], EV_CREATED, NULL), 1);
        ck_assert_int_eq(ev_count(f.log, ids[i], EV_CANCELLED, NULL), 1);
        ck_assert_int_eq(ev_count(f.log, ids[i], EV_PAID, NULL), 0);
        evmsg e;
        ck_assert_int_eq(ev_decode(ev_nth(f.log, ids[i], EV_CANCELLED, 0), &e), 0);
        ck_assert_int_eq(e.order->cancel_reason, CANCEL(PAYMENT_TIMEOUT));
        ck_assert_int_eq(e.prev, ST(PENDING_PAYMENT));
        ev_free(&e);
    }
    ck_assert_int_eq(ev_count(f.log, id3, EV_CREATED, NULL), 1);
    ck_assert_int_eq(ev_count(f.log, id3, EV_CANCELLED, NULL), 0);
    ck_assert_int_eq(violations(f.ic), 0);
    fx_stop(&f);
}
END_TEST

START_TEST(saga_cancel_releases_stock)
{
    static fx f;
    fx_start(&f, NULL, 0);
    set_stock(f.ic, "s-c", "sku-c", 10);
    line ls[] = {L("sku-c", 2, 700)};
    Order *o = must_create(f.oc, &(order_spec){.rid = "req-c-1",
                                               .buyer = "buyer-1",
                                               .merchant = "merchant-1",
                                               .currency = "CNY",
                                               .lines = ls,
                                               .n = 1,
                                               .timeout_s = 600});
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    order_free(o);
    Order *o2 = must_create(f.oc, &(order_spec){.rid = "req-c-2",
                                                .buyer = "buyer-1",
                                                .merchant = "merchant-1",
                                                .currency = "CNY",
                                                .lines = ls,
                                                .n = 1,
                                                .timeout_s = 600});
    char id2[64];
    snprintf(id2, sizeof id2, "%s", o2->order_id);
    order_free(o2);
    assert_level(f.ic, "sku-c", 6, 4, 0);

    cm_rpc_status st;
    ck_assert_int_eq(
        cancel_order(f.oc, "cx-1", id, CANCEL(BUYER_REQUESTED), "changed mind", &o, &st), 0);
    ck_assert_int_eq(o->state, ST(CANCELLED));
    ck_assert_int_eq(o->cancel_reason, CANCEL(BUYER_REQUESTED));
    ck_assert_str_eq(o->cancel_note, "changed mind");
    ck_assert_ptr_nonnull(o->cancelled_at);
    ck_assert_ptr_null(o->payment);
    order_free(o);
    /* the retry is the same cancel; the same key with another body is not */
    ck_assert_int_eq(
        cancel_order(f.oc, "cx-1", id, CANCEL(BUYER_REQUESTED), "changed mind", NULL, &st), 0);
    ck_assert_int_eq(cancel_order(f.oc, "cx-1", id, CANCEL(BUYER_REQUESTED), "other", NULL, &st),
                     GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");
    /* a second cancel: OK, the order unchanged */
    ck_assert_int_eq(
        cancel_order(f.oc, "cx-2", id, CANCEL(MERCHANT_REQUESTED), "no stock", &o, &st), 0);
    ck_assert_int_eq(o->cancel_reason, CANCEL(BUYER_REQUESTED));
    ck_assert_str_eq(o->cancel_note, "changed mind");
    order_free(o);
    /* the reason is the caller's to give, but not the server's own */
    ck_assert_int_eq(cancel_order(f.oc, "cx-3", id2, CANCEL(UNSPECIFIED), NULL, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "reason");
    ck_assert_int_eq(cancel_order(f.oc, "cx-4", id2, CANCEL(PAYMENT_TIMEOUT), NULL, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "reason");
    ck_assert_int_eq(state_of(f.oc, id2), ST(PENDING_PAYMENT));
    ck_assert_int_eq(cancel_order(f.oc, "cx-5", "0190a8e0-0000-7000-8000-0000000000aa",
                                  CANCEL(BUYER_REQUESTED), NULL, NULL, &st),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.reason, "RESOURCE_NOT_FOUND");

    wait_level(f.ic, "sku-c", 8, 2, 0);
    settle(&f);
    ck_assert_int_eq(ev_count(f.log, id, EV_CREATED, NULL), 1);
    ck_assert_int_eq(ev_count(f.log, id, EV_CANCELLED, NULL), 1);
    evmsg e;
    ck_assert_int_eq(ev_decode(ev_nth(f.log, id, EV_CANCELLED, 0), &e), 0);
    ck_assert_int_eq(e.order->cancel_reason, CANCEL(BUYER_REQUESTED));
    ck_assert_str_eq(e.order->cancel_note, "changed mind");
    ev_free(&e);
    ck_assert_int_eq(ev_count(f.log, id2, EV_CANCELLED, NULL), 0);
    fx_stop(&f);
}
END_TEST

/* ---- refunds ---- */

static Commerce__Order__V1__RefundOrderResponse *must_refund(cm_rpc_client *c, const refund_spec *s)
{
    Commerce__Order__V1__RefundOrderResponse *r = NULL;
    cm_rpc_status st;
    int code = refund_order(c, s, &r, &st);
    ck_assert_msg(code == 0, "RefundOrder %s: %d %s field %s: %s", s->refund_id, code, st.reason,
                  st.field, st.message);
    ck_assert_ptr_nonnull(r->order);
    ck_assert_ptr_nonnull(r->refund);
    ck_assert_str_eq(r->refund->refund_id, s->refund_id);
    ck_assert_int_eq(r->refund->scope, s->scope);
    /* the parts sum to the whole */
    int64_t sum = 0;
    for (size_t i = 0; i < r->refund->n_lines; i++)
        sum += r->refund->lines[i]->amount->amount_minor;
    ck_assert_int_eq(sum, r->refund->amount->amount_minor);
    ck_assert_uint_ge(r->order->n_refunds, 1);
    ck_assert_str_eq(r->order->refunds[r->order->n_refunds - 1]->refund_id, s->refund_id);
    return r;
}

static int64_t refunded_on(const Commerce__Order__V1__RefundOrderResponse *r, const char *sku)
{
    const Commerce__Order__V1__RefundLine *l = refund_line_of(r->refund, sku);
    return l ? l->amount->amount_minor : 0;
}

START_TEST(refunds_by_lines_and_amount_then_the_rest)
{
    static fx f;
    fx_start(&f, NULL, 0);
    set_stock(f.ic, "s-a", "sku-a", 10);
    set_stock(f.ic, "s-b", "sku-b", 10);
    line ls[] = {L("sku-a", 3, 1000), L("sku-b", 2, 2501)};
    order_spec s = spec("req-r-1", ls, 2);
    s.timeout_s = 600;
    Order *o = must_create(f.oc, &s);
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    assert_money(o->total_amount, 8002, "CNY");
    cm_rpc_status st;
    /* not paid yet: nothing to refund */
    refund_spec full = {.refund_id = "rf-early", .order_id = id, .scope = SCOPE(FULL)};
    ck_assert_int_eq(refund_order(f.oc, &full, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    must_pay(f.oc, o, "pay-r-1");
    order_free(o);
    wait_level(f.ic, "sku-a", 7, 0, 3);

    /* 1: one unit of sku-a at its price */
    line r1l[] = {RL("sku-a", 1)};
    refund_spec r1 = {
        .refund_id = "rf-1", .order_id = id, .scope = SCOPE(LINES), .lines = r1l, .n = 1};
    Commerce__Order__V1__RefundOrderResponse *r = must_refund(f.oc, &r1);
    assert_money(r->refund->amount, 1000, "CNY");
    ck_assert_uint_eq(r->refund->n_lines, 1);
    ck_assert_str_eq(r->refund->lines[0]->sku, "sku-a");
    ck_assert_int_eq(r->refund->lines[0]->quantity, 1);
    ck_assert_int_eq(r->order->state, ST(PARTIALLY_REFUNDED));
    assert_money(r->order->refunded_amount, 1000, "CNY");
    ck_assert_int_eq(line_of(r->order, "sku-a")->refunded_quantity, 1);
    ck_assert_int_eq(minor_or_0(line_of(r->order, "sku-a")->refunded_amount), 1000);
    ck_assert_int_eq(minor_or_0(line_of(r->order, "sku-b")->refunded_amount), 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* its retry is the same refund, applied once */
    r = must_refund(f.oc, &r1);
    assert_money(r->refund->amount, 1000, "CNY");
    assert_money(r->order->refunded_amount, 1000, "CNY");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    line r1other[] = {RL("sku-a", 2)};
    refund_spec r1b = r1;
    r1b.lines = r1other;
    ck_assert_int_eq(refund_order(f.oc, &r1b, NULL, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");

    /* 2: 30.01 spread pro rata over what is left (20.00 and 50.02),
     * largest remainder: 857.18 -> 857, 2143.82 -> 2144 */
    refund_spec r2 = {.refund_id = "rf-2",
                      .order_id = id,
                      .scope = SCOPE(AMOUNT),
                      .has_amount = 1,
                      .amount = 3001};
    r = must_refund(f.oc, &r2);
    assert_money(r->refund->amount, 3001, "CNY");
    ck_assert_int_eq(refunded_on(r, "sku-a"), 857);
    ck_assert_int_eq(refunded_on(r, "sku-b"), 2144);
    for (size_t i = 0; i < r->refund->n_lines; i++)
        ck_assert_int_eq(r->refund->lines[i]->quantity, 0);
    assert_money(r->order->refunded_amount, 4001, "CNY");
    ck_assert_int_eq(line_of(r->order, "sku-a")->refunded_quantity, 1);
    ck_assert_int_eq(line_of(r->order, "sku-b")->refunded_quantity, 0);
    ck_assert_int_eq(minor_or_0(line_of(r->order, "sku-a")->refunded_amount), 1857);
    ck_assert_int_eq(minor_or_0(line_of(r->order, "sku-b")->refunded_amount), 2144);
    ck_assert_int_eq(r->order->state, ST(PARTIALLY_REFUNDED));
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* a partially refunded order is still shipped and completed */
    ck_assert_int_eq(ship_order(f.oc, "ship-r", id, "ems", "E1", &o, &st), 0);
    ck_assert_int_eq(o->state, ST(PARTIALLY_REFUNDED));
    ck_assert_ptr_nonnull(o->shipment);
    order_free(o);
    ck_assert_int_eq(complete_order(f.oc, "done-r", id, &o, &st), 0);
    ck_assert_int_eq(o->state, ST(PARTIALLY_REFUNDED));
    ck_assert_ptr_nonnull(o->completed_at);
    order_free(o);

    /* more than is left: in total, on a line by amount, on a line by units */
    refund_spec over = {.refund_id = "rf-over-1",
                        .order_id = id,
                        .scope = SCOPE(AMOUNT),
                        .has_amount = 1,
                        .amount = 4002};
    ck_assert_int_eq(refund_order(f.oc, &over, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "REFUND_EXCEEDS_REFUNDABLE");
    line b2[] = {RL("sku-b", 2)};
    refund_spec over2 = {
        .refund_id = "rf-over-2", .order_id = id, .scope = SCOPE(LINES), .lines = b2, .n = 1};
    ck_assert_int_eq(refund_order(f.oc, &over2, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "REFUND_EXCEEDS_REFUNDABLE");
    line a3[] = {RL("sku-a", 3)};
    refund_spec over3 = {
        .refund_id = "rf-over-3", .order_id = id, .scope = SCOPE(LINES), .lines = a3, .n = 1};
    ck_assert_int_eq(refund_order(f.oc, &over3, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "REFUND_EXCEEDS_REFUNDABLE");
    o = must_get(f.oc, id);
    assert_money(o->refunded_amount, 4001, "CNY");
    ck_assert_uint_eq(o->n_refunds, 2);
    order_free(o);

    /* 3: one unit of sku-b (25.01 of the 28.58 left on it) */
    line b1[] = {RL("sku-b", 1)};
    refund_spec r3 = {
        .refund_id = "rf-3", .order_id = id, .scope = SCOPE(LINES), .lines = b1, .n = 1};
    r = must_refund(f.oc, &r3);
    assert_money(r->refund->amount, 2501, "CNY");
    assert_money(r->order->refunded_amount, 6502, "CNY");
    ck_assert_int_eq(r->order->state, ST(PARTIALLY_REFUNDED));
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* 4: the rest */
    refund_spec r4 = {.refund_id = "rf-4", .order_id = id, .scope = SCOPE(FULL)};
    r = must_refund(f.oc, &r4);
    assert_money(r->refund->amount, 1500, "CNY");
    ck_assert_int_eq(refunded_on(r, "sku-a"), 1143);
    ck_assert_int_eq(refunded_on(r, "sku-b"), 357);
    ck_assert_int_eq(r->order->state, ST(REFUNDED));
    assert_money(r->order->refunded_amount, 8002, "CNY");
    for (size_t i = 0; i < r->order->n_lines; i++)
        ck_assert_int_eq(minor_or_0(r->order->lines[i]->refunded_amount),
                         r->order->lines[i]->line_total->amount_minor);
    ck_assert_uint_eq(r->order->n_refunds, 4);
    int64_t sum = 0;
    const char *want[] = {"rf-1", "rf-2", "rf-3", "rf-4"};
    for (size_t i = 0; i < 4; i++) {
        ck_assert_str_eq(r->order->refunds[i]->refund_id, want[i]);
        sum += r->order->refunds[i]->amount->amount_minor;
    }
    ck_assert_int_eq(sum, 8002);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* REFUNDED is final */
    refund_spec r5 = {.refund_id = "rf-5", .order_id = id, .scope = SCOPE(FULL)};
    ck_assert_int_eq(refund_order(f.oc, &r5, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_int_eq(complete_order(f.oc, "done-r2", id, NULL, &st),
                     GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    /* stock is not returned by a refund */
    assert_level(f.ic, "sku-a", 7, 0, 3);
    assert_level(f.ic, "sku-b", 8, 0, 2);

    /* bad refund requests name their field; on a second paid order */
    o = must_create(f.oc, &(order_spec){.rid = "req-r-2",
                                        .buyer = "buyer-1",
                                        .merchant = "merchant-1",
                                        .currency = "CNY",
                                        .lines = ls,
                                        .n = 2,
                                        .timeout_s = 600});
    char id2[64];
    snprintf(id2, sizeof id2, "%s", o->order_id);
    must_pay(f.oc, o, "pay-r-2");
    order_free(o);
    refund_spec bad = {.refund_id = "rf-bad", .order_id = id2};
    ck_assert_int_eq(refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "scope");
    bad.scope = SCOPE(LINES);
    ck_assert_int_eq(refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "lines");
    line unknown[] = {RL("sku-zz", 1)};
    bad.lines = unknown;
    bad.n = 1;
    ck_assert_int_eq(refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "lines[0].sku");
    line dup[] = {RL("sku-a", 1), RL("sku-a", 1)};
    bad.lines = dup;
    bad.n = 2;
    ck_assert_int_eq(refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "lines[1].sku");
    line zero[] = {RL("sku-a", 0)};
    bad.lines = zero;
    bad.n = 1;
    ck_assert_int_eq(refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "lines[0].quantity");
    bad.scope = SCOPE(AMOUNT);
    bad.n = 0;
    ck_assert_int_eq(refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "amount");
    bad.has_amount = 1;
    bad.amount = 0;
    ck_assert_int_eq(refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "amount");
    bad.amount = -5;
    ck_assert_int_eq(refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "amount");
    bad.amount = 100;
    bad.currency = "USD";
    ck_assert_int_eq(refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "CURRENCY_MISMATCH");
    bad.currency = NULL;
    bad.scope = SCOPE(FULL);
    ck_assert_int_eq(refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "amount");
    bad.has_amount = 0;
    bad.lines = r1l;
    bad.n = 1;
    ck_assert_int_eq(refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "lines");
    /* a refund id belongs to one order */
    ck_assert_int_eq(
        refund_order(
            f.oc,
            &(refund_spec){
                .refund_id = "rf-1", .order_id = id2, .scope = SCOPE(LINES), .lines = r1l, .n = 1},
            NULL, &st),
        GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_int_eq(refund_order(f.oc,
                                  &(refund_spec){.refund_id = "rf-nf",
                                                 .order_id = "0190a8e0-0000-7000-8000-0000000000bb",
                                                 .scope = SCOPE(FULL)},
                                  NULL, &st),
                     GRPC_STATUS_NOT_FOUND);
    o = must_get(f.oc, id2);
    ck_assert_int_eq(o->state, ST(PAID));
    ck_assert_uint_eq(o->n_refunds, 0);
    ck_assert_int_eq(minor_or_0(o->refunded_amount), 0);
    order_free(o);

    /* the events: one OrderRefunded per refund, each carrying its refund */
    settle(&f);
    ck_assert_int_eq(ev_count(f.log, id, EV_REFUNDED, NULL), 4);
    ck_assert_int_eq(ev_count(f.log, id, EV_SHIPPED, NULL), 1);
    ck_assert_int_eq(ev_count(f.log, id, EV_COMPLETED, NULL), 1);
    ck_assert_int_eq(ev_count(f.log, id2, EV_REFUNDED, NULL), 0);
    const int64_t amounts[] = {1000, 3001, 2501, 1500};
    const int prevs[] = {ST(PAID), ST(PARTIALLY_REFUNDED), ST(PARTIALLY_REFUNDED),
                         ST(PARTIALLY_REFUNDED)};
    int64_t total = 0;
    for (int i = 0; i < 4; i++) {
        evmsg e;
        ck_assert_int_eq(ev_decode(ev_nth(f.log, id, EV_REFUNDED, i), &e), 0);
        ck_assert_str_eq(e.refund->refund_id, want[i]);
        assert_money(e.refund->amount, amounts[i], "CNY");
        ck_assert_int_eq(e.prev, prevs[i]);
        total += amounts[i];
        assert_money(e.order->refunded_amount, total, "CNY");
        ck_assert_int_eq(e.order->state, i == 3 ? ST(REFUNDED) : ST(PARTIALLY_REFUNDED));
        ev_free(&e);
    }
    fx_stop(&f);
}
END_TEST

/* ---- concurrent changes of one order are serialised ---- */

typedef struct refunder {
    cm_rpc_client *c;
    const char *order_id;
    int index;
    int code;
    char reason[64];
} refunder;

static void *refund_main(void *arg)
{
    refunder *r = arg;
    char rid[32];
    snprintf(rid, sizeof rid, "rf-cc-%d", r->index);
    refund_spec s = {.refund_id = rid,
                     .order_id = r->order_id,
                     .scope = SCOPE(AMOUNT),
                     .has_amount = 1,
                     .amount = 1000};
    cm_rpc_status st;
    for (int attempt = 0; attempt < 5; attempt++) {
        r->code = refund_order(r->c, &s, NULL, &st);
        if (r->code != GRPC_STATUS_ABORTED)
            break;
        usleep(20000); /* CONCURRENT_MODIFICATION: retry with the same key */
    }
    snprintf(r->reason, sizeof r->reason, "%s", st.reason);
    return NULL;
}

typedef struct shipper {
    cm_rpc_client *c;
    const char *order_id;
    int index;
    int code;
} shipper;

static void *ship_main(void *arg)
{
    shipper *sh = arg;
    char rid[32], tracking[32];
    snprintf(rid, sizeof rid, "ship-cc-%d", sh->index);
    snprintf(tracking, sizeof tracking, "T%d", sh->index);
    cm_rpc_status st;
    for (int attempt = 0; attempt < 5; attempt++) {
        sh->code = ship_order(sh->c, rid, sh->order_id, "sf", tracking, NULL, &st);
        if (sh->code != GRPC_STATUS_ABORTED)
            break;
        usleep(20000);
    }
    return NULL;
}

START_TEST(concurrent_changes_of_one_order_lose_no_update)
{
    static fx f;
    fx_start(&f, NULL, 0);
    set_stock(f.ic, "s-cc", "sku-cc", 10);
    line ls[] = {L("sku-cc", 4, 2500)};
    order_spec s = spec("req-cc", ls, 1);
    s.timeout_s = 600;
    Order *o = must_create(f.oc, &s);
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    must_pay(f.oc, o, "pay-cc");
    order_free(o);

    /* 16 shipments at once, each its own request: exactly one ships */
    enum { N = 16 };
    shipper sh[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        sh[i] = (shipper){.c = f.oc, .order_id = id, .index = i};
        pthread_create(&t[i], NULL, ship_main, &sh[i]);
    }
    int shipped = 0, winner = -1;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        ck_assert_msg(sh[i].code == 0 || sh[i].code == GRPC_STATUS_FAILED_PRECONDITION,
                      "ship %d: code %d", i, sh[i].code);
        if (sh[i].code == 0) {
            shipped++;
            winner = i;
        }
    }
    ck_assert_int_eq(shipped, 1);
    o = must_get(f.oc, id);
    char want[32];
    snprintf(want, sizeof want, "T%d", winner);
    ck_assert_str_eq(o->shipment->tracking_number, want);
    order_free(o);

    /* 16 refunds of 10.00 at once on a 100.00 order: exactly 10 go through */
    refunder rf[N];
    for (int i = 0; i < N; i++) {
        rf[i] = (refunder){.c = f.oc, .order_id = id, .index = i};
        pthread_create(&t[i], NULL, refund_main, &rf[i]);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        if (rf[i].code == 0) {
            ok++;
            continue;
        }
        ck_assert_msg(rf[i].code == GRPC_STATUS_FAILED_PRECONDITION &&
                          (strcmp(rf[i].reason, "REFUND_EXCEEDS_REFUNDABLE") == 0 ||
                           strcmp(rf[i].reason, "ILLEGAL_STATE_TRANSITION") == 0),
                      "refund %d: code %d reason %s", i, rf[i].code, rf[i].reason);
    }
    ck_assert_int_eq(ok, 10);
    o = must_get(f.oc, id);
    ck_assert_int_eq(o->state, ST(REFUNDED));
    assert_money(o->refunded_amount, 10000, "CNY");
    ck_assert_uint_eq(o->n_refunds, 10);
    ck_assert_int_eq(minor_or_0(o->lines[0]->refunded_amount), 10000);
    ck_assert_ptr_nonnull(o->shipment);
    order_free(o);

    settle(&f);
    ck_assert_int_eq(ev_count(f.log, id, EV_SHIPPED, NULL), 1);
    ck_assert_int_eq(ev_count(f.log, id, EV_REFUNDED, NULL), 10);
    /* each event saw the one before it: refunded amounts step by 10.00 */
    for (int i = 0; i < 10; i++) {
        evmsg e;
        ck_assert_int_eq(ev_decode(ev_nth(f.log, id, EV_REFUNDED, i), &e), 0);
        assert_money(e.order->refunded_amount, 1000 * (i + 1), "CNY");
        ev_free(&e);
    }
    fx_stop(&f);
}
END_TEST

/* ---- payment notifications ---- */

START_TEST(payment_notifications_duplicated_and_out_of_order)
{
    static fx f;
    fx_start(&f, NULL, 0);
    set_stock(f.ic, "s-p", "sku-p", 100);
    line ls[] = {L("sku-p", 1, 4999)};
    char id[3][64];
    create_pending(f.oc, "req-p", ls, 3, id);
    cm_rpc_status st;
    Order *o = NULL;
    pay_spec p1 = {.payment_id = "pay-1", .order_id = id[0], .amount = 4999, .reference = "r1"};
    ck_assert_int_eq(mark_paid(f.oc, &p1, &o, &st), 0);
    ck_assert_int_eq(o->state, ST(PAID));
    long long recorded = ts_ms(o->payment->recorded_at);
    order_free(o);
    /* the gateway repeats itself: the same result */
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(mark_paid(f.oc, &p1, &o, &st), 0);
        ck_assert_int_eq(o->state, ST(PAID));
        ck_assert_str_eq(o->payment->payment_id, "pay-1");
        ck_assert_int_eq(ts_ms(o->payment->recorded_at), recorded);
        order_free(o);
    }
    /* the same payment id with another body */
    pay_spec p1b = p1;
    p1b.reference = "r1-other";
    ck_assert_int_eq(mark_paid(f.oc, &p1b, NULL, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");
    /* the same payment id for another order */
    pay_spec p1c = p1;
    p1c.order_id = id[1];
    ck_assert_int_eq(mark_paid(f.oc, &p1c, NULL, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_int_eq(state_of(f.oc, id[1]), ST(PENDING_PAYMENT));
    /* a second, different payment for the paid order: refused, recorded,
     * nothing changes */
    pay_spec p2 = {.payment_id = "pay-2", .order_id = id[0], .amount = 4999, .provider = "stripe"};
    ck_assert_int_eq(mark_paid(f.oc, &p2, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    o = must_get(f.oc, id[0]);
    ck_assert_int_eq(o->state, ST(PAID));
    ck_assert_str_eq(o->payment->payment_id, "pay-1");
    ck_assert_str_eq(o->payment->provider, "alipay");
    order_free(o);
    ck_assert_int_eq(sql_long(f.ord_schema, "SELECT count(*) FROM payment_rejections"), 1);

    /* amount and currency must be the order total */
    pay_spec bad = {.payment_id = "pay-3", .order_id = id[1], .amount = 4998};
    ck_assert_int_eq(mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "AMOUNT_MISMATCH");
    bad.amount = 4999;
    bad.currency = "USD";
    ck_assert_int_eq(mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "CURRENCY_MISMATCH");
    bad.currency = NULL;
    bad.provider = "";
    ck_assert_int_eq(mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "provider");
    bad.provider = NULL;
    bad.paid_at_ms = real_ms() + 3600 * 1000;
    ck_assert_int_eq(mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "paid_at");
    bad.paid_at_ms = 0;
    bad.payment_id = "bad payment id!";
    ck_assert_int_eq(mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "payment_id");
    bad.payment_id = "pay-3";
    bad.order_id = "0190a8e0-0000-7000-8000-0000000000cc";
    ck_assert_int_eq(mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.reason, "RESOURCE_NOT_FOUND");
    ck_assert_int_eq(state_of(f.oc, id[1]), ST(PENDING_PAYMENT));
    /* after those refusals the key is still free for the right body */
    bad.order_id = id[1];
    ck_assert_int_eq(mark_paid(f.oc, &bad, NULL, &st), 0);
    ck_assert_int_eq(state_of(f.oc, id[1]), ST(PAID));

    /* out of order: the payment arrives after the buyer cancelled */
    ck_assert_int_eq(cancel_order(f.oc, "cx-p", id[2], CANCEL(BUYER_REQUESTED), NULL, NULL, &st),
                     0);
    pay_spec late = {.payment_id = "pay-4", .order_id = id[2], .amount = 4999};
    ck_assert_int_eq(mark_paid(f.oc, &late, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_int_eq(state_of(f.oc, id[2]), ST(CANCELLED));
    ck_assert_int_eq(sql_long(f.ord_schema, "SELECT count(*) FROM payment_rejections"), 2);
    /* and the duplicate of the first payment after shipping: still OK */
    ck_assert_int_eq(ship_order(f.oc, "ship-p", id[0], NULL, NULL, NULL, &st), 0);
    ck_assert_int_eq(mark_paid(f.oc, &p1, &o, &st), 0);
    ck_assert_int_eq(o->state, ST(SHIPPED));
    order_free(o);
    ck_assert_int_eq(state_of(f.oc, id[0]), ST(SHIPPED));

    wait_level(f.ic, "sku-p", 98, 0, 2);
    settle(&f);
    ck_assert_int_eq(ev_count(f.log, id[0], EV_PAID, NULL), 1);
    ck_assert_int_eq(ev_count(f.log, id[1], EV_PAID, NULL), 1);
    ck_assert_int_eq(ev_count(f.log, id[2], EV_PAID, NULL), 0);
    ck_assert_int_eq(ev_count(f.log, id[2], EV_CANCELLED, NULL), 1);
    evmsg e;
    ck_assert_int_eq(ev_decode(ev_nth(f.log, id[0], EV_PAID, 0), &e), 0);
    ck_assert_str_eq(e.order->payment->payment_id, "pay-1");
    ev_free(&e);
    fx_stop(&f);
}
END_TEST

/* ---- MarkPaid racing the payment-timeout sweeper ---- */

typedef struct racer {
    cm_rpc_client *c;
    int round, index;
    int64_t qty;
    int offset_ms; /* MarkPaid at payment_deadline + offset */
    char id[64];
    int created, outcome; /* 1 paid, 2 refused (cancelled), 3 other */
    char other[512];
} racer;

static void *race_main(void *arg)
{
    racer *r = arg;
    char rid[48], pid[48];
    snprintf(rid, sizeof rid, "req-race-%d-%d", r->round, r->index);
    snprintf(pid, sizeof pid, "pay-race-%d-%d", r->round, r->index);
    line ls[] = {L("sku-r", r->qty, 100)};
    order_spec s = spec(rid, ls, 1);
    Order *o = NULL;
    cm_rpc_status st;
    if (create(r->c, &s, &o, &st) != 0) {
        snprintf(r->other, sizeof r->other, "create: %d %s", st.code, st.message);
        r->outcome = 3;
        return NULL;
    }
    r->created = 1;
    snprintf(r->id, sizeof r->id, "%s", o->order_id);
    long long at = ts_ms(o->payment_deadline) + r->offset_ms;
    order_free(o);
    sleep_until_real(at);
    pay_spec p = {.payment_id = pid, .order_id = r->id, .amount = 100 * r->qty};
    for (int attempt = 0; attempt < 5; attempt++) {
        int code = mark_paid(r->c, &p, NULL, &st);
        if (code == 0) {
            r->outcome = 1;
            return NULL;
        }
        if (code == GRPC_STATUS_FAILED_PRECONDITION &&
            strcmp(st.reason, "ILLEGAL_STATE_TRANSITION") == 0) {
            r->outcome = 2;
            return NULL;
        }
        snprintf(r->other, sizeof r->other, "mark paid: %d %s %s", code, st.reason, st.message);
        if (code != GRPC_STATUS_ABORTED && code != GRPC_STATUS_UNAVAILABLE)
            break;
        usleep(20000); /* the contract: retry with the same key */
    }
    r->outcome = 3;
    return NULL;
}

START_TEST(mark_paid_racing_the_timeout_has_one_winner)
{
    const char *env[] = {"ORDER_PAYMENT_TIMEOUT_S=1", "ORDER_SWEEP_MS=50", NULL};
    static fx f;
    fx_start(&f, env, 0);
    const int64_t stock = 1000;
    set_stock(f.ic, "s-r", "sku-r", stock);
    enum { ROUNDS = 4, PER = 10 };
    static racer rs[ROUNDS * PER];
    memset(rs, 0, sizeof rs);
    for (int round = 0; round < ROUNDS; round++) {
        pthread_t t[PER];
        for (int i = 0; i < PER; i++) {
            racer *r = &rs[round * PER + i];
            r->c = f.oc;
            r->round = round;
            r->index = i;
            r->qty = 1 + (i % 3);
            /* from surely in time to surely late, most near the deadline */
            r->offset_ms = -300 + 70 * i + 10 * round;
            pthread_create(&t[i], NULL, race_main, r);
        }
        for (int i = 0; i < PER; i++)
            pthread_join(t[i], NULL);
    }
    int paid = 0, refused = 0;
    int64_t sold = 0;
    for (int i = 0; i < ROUNDS * PER; i++) {
        racer *r = &rs[i];
        ck_assert_msg(r->outcome == 1 || r->outcome == 2, "order %d: %s", i, r->other);
        paid += r->outcome == 1;
        refused += r->outcome == 2;
        if (r->outcome == 1)
            sold += r->qty;
    }
    fprintf(stderr, "race: %d paid, %d cancelled by the timeout\n", paid, refused);
    /* the earliest payments are before the deadline, the latest well after
     * the sweeper ran: both outcomes happen */
    ck_assert_int_gt(paid, 0);
    ck_assert_int_gt(refused, 0);

    /* the sweeper settles what is left; then everything agrees */
    long long until = hs_now_ms() + 20000;
    for (int i = 0; i < ROUNDS * PER; i++) {
        racer *r = &rs[i];
        int s;
        while ((s = state_of(f.oc, r->id)) == ST(PENDING_PAYMENT) && hs_now_ms() < until)
            usleep(50000);
        Order *o = must_get(f.oc, r->id);
        if (r->outcome == 1) {
            ck_assert_msg(o->state == ST(PAID), "order %s: MarkPaid OK but state %d", r->id,
                          o->state);
            ck_assert_ptr_nonnull(o->payment);
        } else {
            ck_assert_msg(o->state == ST(CANCELLED), "order %s: MarkPaid refused but state %d",
                          r->id, o->state);
            ck_assert_int_eq(o->cancel_reason, CANCEL(PAYMENT_TIMEOUT));
            ck_assert_ptr_null(o->payment);
        }
        order_free(o);
    }
    ck_assert_int_eq(sql_long(f.ord_schema, "SELECT count(*) FROM payment_rejections"), refused);
    wait_level(f.ic, "sku-r", stock - sold, 0, sold);
    settle(&f);
    for (int i = 0; i < ROUNDS * PER; i++) {
        racer *r = &rs[i];
        ck_assert_int_eq(ev_count(f.log, r->id, EV_CREATED, NULL), 1);
        ck_assert_int_eq(ev_count(f.log, r->id, EV_PAID, NULL), r->outcome == 1);
        ck_assert_int_eq(ev_count(f.log, r->id, EV_CANCELLED, NULL), r->outcome == 2);
    }
    ck_assert_int_eq(violations(f.ic), 0);
    fx_stop(&f);
}
END_TEST

/* ---- two replicas: each unpaid order is cancelled exactly once ---- */

START_TEST(two_replicas_cancel_each_unpaid_order_once)
{
    const char *env[] = {"ORDER_PAYMENT_TIMEOUT_S=1", "ORDER_SWEEP_MS=50", NULL};
    static fx f;
    fx_start(&f, env, 0);
    /* a second replica on the same schema and topic */
    hs_proc second;
    char s[96], t[192], inv[64];
    snprintf(s, sizeof s, "ORDER_SCHEMA=%s", f.ord_schema);
    snprintf(t, sizeof t, "ORDER_TOPIC=%s", f.topic);
    snprintf(inv, sizeof inv, "INVENTORY_TARGET=127.0.0.1:%d", f.inv.grpc_port);
    const char *env2[] = {s,
                          t,
                          inv,
                          "WORKERS=8",
                          "ORDER_SWEEP_MS=50",
                          "ORDER_RESERVATION_MARGIN_S=2",
                          "ORDER_PAYMENT_TIMEOUT_S=1",
                          NULL};
    ck_assert_int_eq(hs_spawn(&second, ORDER_BIN, env2), 0);
    ck_assert_msg(hs_wait_serving(&second, 30000) == 0, "second replica did not serve (log %s)",
                  second.log_path);
    cm_rpc_client *c2 = client_for(&second);
    const int64_t stock = 500;
    set_stock(f.ic, "s-2r", "sku-2r", stock);
    enum { N = 60 };
    static char ids[N][64];
    for (int i = 0; i < N; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "req-2r-%d", i);
        line l[] = {L("sku-2r", 1 + i % 3, 100)};
        create_id(i % 2 ? c2 : f.oc,
                  &(order_spec){.rid = rid,
                                .buyer = "buyer-2r",
                                .merchant = "merchant-1",
                                .currency = "CNY",
                                .lines = l,
                                .n = 1},
                  ids[i]);
    }
    /* both sweepers run against the same due orders */
    long long until = hs_now_ms() + 20000;
    for (int i = 0; i < N; i++) {
        while (state_of(f.oc, ids[i]) == ST(PENDING_PAYMENT) && hs_now_ms() < until)
            usleep(50000);
        ck_assert_int_eq(state_of(f.oc, ids[i]), ST(CANCELLED));
    }
    wait_level(f.ic, "sku-2r", stock, 0, 0);
    /* both replicas' relays publish (one leads); then exactly one cancel each */
    settle(&f);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(ev_count(f.log, ids[i], EV_CREATED, NULL), 1);
        ck_assert_int_eq(ev_count(f.log, ids[i], EV_CANCELLED, NULL), 1);
    }
    /* and each replica's sweeper did part of the work, or one did all: the
     * sum of their counters is the number of orders */
    char body[65536];
    long total = 0;
    const hs_proc *ps[] = {&f.ord, &second};
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(hs_http_get(ps[k]->admin_port, "/metrics", body, sizeof body), 200);
        const char *m = strstr(body, "\norder_payment_timeouts_total ");
        if (m)
            total += strtol(m + strlen("\norder_payment_timeouts_total "), NULL, 10);
    }
    ck_assert_int_eq(total, N);
    ck_assert_int_eq(violations(f.ic), 0);
    cm_rpc_client_free(c2);
    ck_assert_int_eq(hs_stop(&second, SIGTERM, 30000), 0);
    fx_stop(&f);
}
END_TEST

/* ---- per-tenant payment timeouts ---- */

/* the key columns of both schemas and their inboxes compare bytewise
 * (inventory's migration 0005, order's 0002, the inbox's 0002): every
 * text column that is part of an index, and none left on the default */
static void assert_keys_collate_c(const char *schema)
{
    const char *sql =
        "SELECT count(*) FILTER (WHERE coalesce(c.collation_name, '') <> 'C') * 1000 + count(*) "
        "FROM information_schema.columns c WHERE c.table_schema = current_schema() "
        "AND c.data_type = 'text' AND EXISTS (SELECT 1 FROM pg_index i "
        "  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
        "  WHERE i.indrelid = (quote_ident(c.table_schema) || '.' || quote_ident(c.table_name))"
        "::regclass AND a.attname = c.column_name)";
    long v = sql_long(schema, sql);
    ck_assert_msg(v % 1000 >= 3, "%s: only %ld indexed text columns", schema, v % 1000);
    ck_assert_msg(v / 1000 == 0, "%s: %ld indexed text columns not COLLATE \"C\"", schema,
                  v / 1000);
}

START_TEST(tenant_settings_set_the_default_payment_timeout)
{
    const char *env[] = {"ORDER_PAYMENT_TIMEOUT_S=900", NULL};
    static fx f;
    fx_start(&f, env, 0);
    assert_keys_collate_c(f.ord_schema);
    assert_keys_collate_c(f.inv_schema);
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO tenant_settings (tenant_id, payment_timeout_s, flash_payment_timeout_s) "
             "VALUES ('%s', 120, 60) RETURNING 1",
             TENANT);
    ck_assert_int_eq(sql_long(f.ord_schema, sql), 1);
    set_stock(f.ic, "s-ts", "sku-ts", 10);
    Commerce__Inventory__V1__SetStockRequest q = COMMERCE__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
    q.request_id = "s-ts-other";
    q.sku = "sku-ts";
    q.available = 10;
    q.reason = "goods received";
    q.actor = "ops:test";
    cm_rpc_status st;
    ck_assert_int_eq(call(f.ic, ISVC "SetStock", &q.base,
                          &commerce__inventory__v1__set_stock_response__descriptor, NULL, &st,
                          md_other, 1),
                     0);
    line l[] = {L("sku-ts", 1, 100)};
    /* the tenant's row */
    order_spec s = spec("req-ts-1", l, 1);
    Order *o = must_create(f.oc, &s);
    long long dl = ts_ms(o->payment_deadline) - ts_ms(o->created_at);
    ck_assert_msg(dl >= 119000 && dl <= 121000, "tenant default: %lld ms (expected 120 s)", dl);
    order_free(o);
    /* a tenant without a row: the service default */
    s.rid = "req-ts-2";
    ck_assert_int_eq(create_md(f.oc, &s, &o, &st, md_other, 1), 0);
    dl = ts_ms(o->payment_deadline) - ts_ms(o->created_at);
    ck_assert_msg(dl >= 899000 && dl <= 901000, "service default: %lld ms (expected 900 s)", dl);
    order_free(o);
    /* the request's own timeout wins over both */
    s.rid = "req-ts-3";
    s.timeout_s = 300;
    o = must_create(f.oc, &s);
    dl = ts_ms(o->payment_deadline) - ts_ms(o->created_at);
    ck_assert_msg(dl >= 299000 && dl <= 301000, "request: %lld ms (expected 300 s)", dl);
    order_free(o);
    fx_stop(&f);
}
END_TEST

/* ---- the database ends the service's connections ---- */

START_TEST(create_survives_lost_database_connections)
{
    static fx f;
    fx_start(&f, NULL, 0);
    set_stock(f.ic, "s-db", "sku-db", 100);
    line l[] = {L("sku-db", 1, 100)};
    char id[4][64];
    create_pending(f.oc, "req-db-a", l, 2, id); /* the batch statement is prepared */
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
             "WHERE application_name = 'commerce-%s'",
             f.ord_schema);
    ck_assert_int_gt(sql_long(f.ord_schema, sql), 0);
    /* reads first: each worker finds its connection ended on its next
     * query and runs the read again on a new one: none fails */
    for (int i = 0; i < 32; i++) {
        Order *o = NULL;
        cm_rpc_status st;
        int code = get_order_md(f.oc, id[i % 2], &o, &st, md_t);
        ck_assert_msg(code == 0, "read %d after the connections ended: %d %s", i, code, st.message);
        order_free(o);
    }
    ck_assert_int_gt(sql_long(f.ord_schema, sql), 0);
    /* the next creates run on new connections, each on its first try (the
     * client does not retry) */
    create_pending(f.oc, "req-db-b", l, 2, id + 2);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(state_of(f.oc, id[i]), ST(PENDING_PAYMENT));
    assert_level(f.ic, "sku-db", 96, 4, 0);
    settle(&f);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(ev_count(f.log, id[i], EV_CREATED, NULL), 1);
    fx_stop(&f);
}
END_TEST

/* ---- kill -9 between the reservation and the order's commit ---- */

typedef struct bg_create {
    cm_rpc_client *c;
    order_spec s;
    line l;
    int code;
} bg_create;

static void *bg_create_main(void *arg)
{
    bg_create *b = arg;
    cm_rpc_status st;
    b->s.lines = &b->l;
    b->code = create(b->c, &b->s, NULL, &st);
    return NULL;
}

/* starts a create in the background and kills the order service once
 * inventory holds the stock (the service is then inside its pause); the
 * create's client sees the connection die */
static void kill_after_reserve(fx *f, bg_create *b, const char *sku, int64_t reserved_then)
{
    pthread_t t;
    cm_rpc_client *c = client_for(&f->ord);
    b->c = c;
    pthread_create(&t, NULL, bg_create_main, b);
    long long until = hs_now_ms() + 15000;
    while (get_level(f->ic, sku).reserved < reserved_then && hs_now_ms() < until)
        usleep(20000);
    ck_assert_int_eq(get_level(f->ic, sku).reserved, reserved_then);
    kill(f->ord.pid, SIGKILL);
    hs_stop(&f->ord, SIGKILL, 5000);
    pthread_join(t, NULL);
    ck_assert_int_ne(b->code, 0);
    cm_rpc_client_free(c);
}

START_TEST(kill_9_between_reserve_and_commit_leaks_nothing)
{
    /* the pause opens the window; the 1 s default timeout and 2 s margin
     * make an orphaned reservation expire 3 s after it was made */
    const char *env[] = {"ORDER_DEBUG_PAUSE_AFTER_RESERVE_MS=2000", "ORDER_PAYMENT_TIMEOUT_S=1",
                         NULL};
    static fx f;
    fx_start(&f, env, 0);
    set_stock(f.ic, "s-k1", "sku-k1", 10);
    set_stock(f.ic, "s-k2", "sku-k2", 10);

    /* 1: killed, never retried: the reservation's ttl gives the stock back */
    bg_create b1 = {.s = spec("req-k-1", NULL, 1), .l = L("sku-k1", 2, 300)};
    b1.s.buyer = "buyer-k1";
    kill_after_reserve(&f, &b1, "sku-k1", 2);
    long long killed_at = hs_now_ms();
    cm_rpc_client_free(f.oc);
    spawn_order(&f);
    f.oc = client_for(&f.ord);
    wait_level(f.ic, "sku-k1", 10, 0, 0);
    fprintf(stderr, "kill -9: orphaned stock back %lld ms after the kill\n",
            hs_now_ms() - killed_at);
    ck_assert_uint_eq(stock_changes(f.ic, "sku-k1", KIND_EXPIRE, NULL, 0), 1);
    Commerce__Order__V1__ListOrdersRequest q = COMMERCE__ORDER__V1__LIST_ORDERS_REQUEST__INIT;
    q.buyer_id = "buyer-k1";
    char ids[64][64];
    ck_assert_uint_eq(list_all(f.oc, &q, ids, 64, NULL, NULL), 0);

    /* 2: killed, then retried with the same request_id: the order is made
     * with the reservation already held, nothing reserved twice */
    bg_create b2 = {.s = spec("req-k-2", NULL, 1), .l = L("sku-k2", 2, 300)};
    b2.s.buyer = "buyer-k2";
    b2.s.timeout_s = 600;
    kill_after_reserve(&f, &b2, "sku-k2", 2);
    cm_rpc_client_free(f.oc);
    spawn_order(&f);
    f.oc = client_for(&f.ord);
    b2.s.lines = &b2.l;
    Order *o = must_create(f.oc, &b2.s);
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    ck_assert_int_eq(o->state, ST(PENDING_PAYMENT));
    order_free(o);
    assert_level(f.ic, "sku-k2", 8, 2, 0);
    char reserved_for[64];
    ck_assert_uint_eq(
        stock_changes(f.ic, "sku-k2", KIND_RESERVE, reserved_for, sizeof reserved_for), 1);
    ck_assert_str_eq(reserved_for, id);

    /* 3: killed, then the tenant's payment timeout changes before the
     * retry: the retry asks for another ttl, inventory refuses the id as
     * "another body", and the create carries on with the reservation the
     * first attempt made instead of holding the stock a second time */
    set_stock(f.ic, "s-k3", "sku-k3", 10);
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO tenant_settings (tenant_id, payment_timeout_s, flash_payment_timeout_s) "
             "VALUES ('%s', 600, 60) RETURNING 1",
             TENANT);
    ck_assert_int_eq(sql_long(f.ord_schema, sql), 1);
    hs_stop(&f.ord, SIGTERM, 10000); /* a fresh tenant cache */
    cm_rpc_client_free(f.oc);
    spawn_order(&f);
    f.oc = client_for(&f.ord);
    bg_create b3 = {.s = spec("req-k-3", NULL, 1), .l = L("sku-k3", 2, 300)};
    b3.s.buyer = "buyer-k3";
    kill_after_reserve(&f, &b3, "sku-k3", 2);
    snprintf(sql, sizeof sql,
             "UPDATE tenant_settings SET payment_timeout_s = 900 WHERE tenant_id = '%s' "
             "RETURNING 1",
             TENANT);
    ck_assert_int_eq(sql_long(f.ord_schema, sql), 1);
    cm_rpc_client_free(f.oc);
    spawn_order(&f);
    f.oc = client_for(&f.ord);
    b3.s.lines = &b3.l;
    o = must_create(f.oc, &b3.s);
    char id3[64];
    snprintf(id3, sizeof id3, "%s", o->order_id);
    ck_assert_int_eq(o->state, ST(PENDING_PAYMENT));
    /* the deadline ends before the first attempt's reservation (600 s +
     * the 2 s margin, made before this create), not 900 s from now */
    long long dl = ts_ms(o->payment_deadline) - ts_ms(o->created_at);
    ck_assert_msg(dl > 590000 && dl <= 600000, "deadline %lld ms after creation", dl);
    order_free(o);
    assert_level(f.ic, "sku-k3", 8, 2, 0);
    ck_assert_uint_eq(
        stock_changes(f.ic, "sku-k3", KIND_RESERVE, reserved_for, sizeof reserved_for), 1);
    ck_assert_str_eq(reserved_for, id3);
    char body[65536];
    ck_assert_int_eq(hs_http_get(f.ord.admin_port, "/metrics", body, sizeof body), 200);
    ck_assert_ptr_nonnull(strstr(body, "\norder_reservations_continued_total 1\n"));

    /* no order without its event, exactly one each */
    settle(&f);
    size_t n = all_orders(f.oc, ids, 64);
    ck_assert_uint_eq(n, 2);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(ev_count(f.log, ids[i], EV_CREATED, NULL), 1);
    size_t created = 0;
    for (size_t i = 0; i < f.log->n; i++)
        if (strcmp(f.log->v[i].type, EV_CREATED) == 0 && !has_id(ids, n, f.log->v[i].key))
            created++;
    ck_assert_msg(created == 0, "%zu OrderCreated events for orders that do not exist", created);
    /* and the held stock still goes back through the saga */
    Order *cur = must_get(f.oc, id);
    must_pay(f.oc, cur, "pay-k-2");
    order_free(cur);
    wait_level(f.ic, "sku-k2", 8, 0, 2);
    ck_assert_int_eq(violations(f.ic), 0);
    fx_stop(&f);
}
END_TEST

/* ---- exactly one OrderCreated / OrderPaid per order, under concurrency ---- */

typedef struct dup_worker {
    cm_rpc_client *c;
    int pair; /* two workers share a pair: the same request ids, at once */
    int count;
    char ids[32][64];
    int failures;
    char first_failure[512];
} dup_worker;

static int retrying(int code)
{
    return code == GRPC_STATUS_ABORTED || code == GRPC_STATUS_UNAVAILABLE;
}

static void *dup_main(void *arg)
{
    dup_worker *w = arg;
    for (int k = 0; k < w->count; k++) {
        char rid[48], pid[48];
        snprintf(rid, sizeof rid, "req-ev-%d-%d", w->pair, k);
        snprintf(pid, sizeof pid, "pay-ev-%d-%d", w->pair, k);
        char s1[16], s2[16];
        snprintf(s1, sizeof s1, "sku-e%d", (w->pair * 7 + k) % 10);
        snprintf(s2, sizeof s2, "sku-e%d", (w->pair * 7 + k + 3) % 10);
        line ls[] = {L(s1, 1 + k % 2, 150), L(s2, 1, 275)};
        order_spec s = spec(rid, ls, k % 3 == 0 ? 1 : 2);
        s.timeout_s = 600;
        Order *o = NULL;
        cm_rpc_status st;
        int code = -1;
        for (int a = 0; a < 5 && code != 0; a++) {
            code = create(w->c, &s, &o, &st);
            if (code && !retrying(code))
                break;
        }
        if (code) {
            if (!w->failures++)
                snprintf(w->first_failure, sizeof w->first_failure, "create %s: %d %s %s", rid,
                         code, st.reason, st.message);
            continue;
        }
        snprintf(w->ids[k], sizeof w->ids[k], "%s", o->order_id);
        if (k % 2 == 0) {
            pay_spec p = {.payment_id = pid,
                          .order_id = o->order_id,
                          .amount = o->total_amount->amount_minor};
            code = -1;
            for (int a = 0; a < 5 && code != 0; a++) {
                code = mark_paid(w->c, &p, NULL, &st);
                if (code && !retrying(code))
                    break;
            }
            if (code && !w->failures++)
                snprintf(w->first_failure, sizeof w->first_failure, "mark paid %s: %d %s %s", pid,
                         code, st.reason, st.message);
        }
        order_free(o);
    }
    return NULL;
}

START_TEST(every_order_has_exactly_one_created_and_paid_event)
{
    static fx f;
    fx_start(&f, NULL, 0);
    for (int i = 0; i < 10; i++) {
        char sku[16], rid[16];
        snprintf(sku, sizeof sku, "sku-e%d", i);
        snprintf(rid, sizeof rid, "s-e%d", i);
        set_stock(f.ic, rid, sku, 1000);
    }
    enum { PAIRS = 3, EACH = 20 };
    static dup_worker w[2 * PAIRS];
    memset(w, 0, sizeof w);
    cm_rpc_client *second = client_for(&f.ord);
    pthread_t t[2 * PAIRS];
    for (int i = 0; i < 2 * PAIRS; i++) {
        w[i].c = i % 2 ? second : f.oc;
        w[i].pair = i / 2;
        w[i].count = EACH;
        pthread_create(&t[i], NULL, dup_main, &w[i]);
    }
    for (int i = 0; i < 2 * PAIRS; i++)
        pthread_join(t[i], NULL);
    cm_rpc_client_free(second);
    for (int i = 0; i < 2 * PAIRS; i++)
        ck_assert_msg(w[i].failures == 0, "worker %d: %d failures, first: %s", i, w[i].failures,
                      w[i].first_failure);
    /* the twin calls got the same order */
    for (int p = 0; p < PAIRS; p++)
        for (int k = 0; k < EACH; k++)
            ck_assert_str_eq(w[2 * p].ids[k], w[2 * p + 1].ids[k]);

    static char ids[256][64];
    size_t n = all_orders(f.oc, ids, 256);
    ck_assert_uint_eq(n, PAIRS * EACH);
    /* each order reserved once: reserved + sold over all skus = ordered units */
    int64_t units = 0, paid_units = 0;
    for (int p = 0; p < PAIRS; p++)
        for (int k = 0; k < EACH; k++) {
            Order *o = must_get(f.oc, w[2 * p].ids[k]);
            for (size_t i = 0; i < o->n_lines; i++) {
                units += o->lines[i]->quantity;
                if (k % 2 == 0)
                    paid_units += o->lines[i]->quantity;
            }
            ck_assert_int_eq(o->state, k % 2 == 0 ? ST(PAID) : ST(PENDING_PAYMENT));
            order_free(o);
        }
    long long until = hs_now_ms() + 30000;
    int64_t reserved, sold;
    for (;;) {
        reserved = sold = 0;
        for (int i = 0; i < 10; i++) {
            char sku[16];
            snprintf(sku, sizeof sku, "sku-e%d", i);
            level l = get_level(f.ic, sku);
            reserved += l.reserved;
            sold += l.sold;
        }
        if (sold == paid_units || hs_now_ms() > until)
            break;
        usleep(200000);
    }
    ck_assert_int_eq(sold, paid_units);
    ck_assert_int_eq(reserved + sold, units);

    settle(&f);
    int dups_total = 0;
    for (size_t i = 0; i < n; i++) {
        int d1, d2;
        ck_assert_msg(ev_count(f.log, ids[i], EV_CREATED, &d1) == 1, "order %s: %d OrderCreated",
                      ids[i], ev_count(f.log, ids[i], EV_CREATED, NULL));
        int paid = ev_count(f.log, ids[i], EV_PAID, &d2);
        Order *o = must_get(f.oc, ids[i]);
        ck_assert_int_eq(paid, o->state == ST(PAID));
        order_free(o);
        dups_total += d1 + d2;
    }
    /* nothing on the topic for an order that does not exist */
    for (size_t i = 0; i < f.log->n; i++)
        ck_assert_msg(has_id(ids, n, f.log->v[i].key), "event for unknown order %s",
                      f.log->v[i].key);
    if (dups_total)
        fprintf(stderr, "note: %d redelivered OrderCreated/OrderPaid records\n", dups_total);
    ck_assert_int_eq(violations(f.ic), 0);
    fx_stop(&f);
}
END_TEST

/* ---- bad input ---- */

typedef struct bad_case {
    const char *what;
    order_spec s;
    int code;
    const char *field;  /* NULL: not checked */
    const char *reason; /* NULL: not checked */
} bad_case;

START_TEST(bad_input_is_refused_and_stores_nothing)
{
    static fx f;
    fx_start(&f, NULL, 0);
    set_stock(f.ic, "s-a", "sku-a", 10);
    set_stock(f.ic, "s-b", "sku-b", 10);
    line ok[] = {L("sku-a", 1, 100), L("sku-b", 1, 100)};
    line q0[] = {L("sku-a", 0, 100)};
    line qneg[] = {L("sku-a", 1, 100), L("sku-b", -2, 100)};
    line pneg[] = {L("sku-a", 1, 100), L("sku-b", 1, -1)};
    line nop[] = {{.sku = "sku-a", .qty = 1, .price = 100, .no_price = 1}};
    line usd[] = {{.sku = "sku-a", .qty = 1, .price = 100, .cur = "USD"}};
    line dup[] = {L("sku-a", 1, 100), L("sku-a", 2, 100)};
    line badsku[] = {L("sku a!", 1, 100)};
    line nosku[] = {L("", 1, 100)};
    line ovf_line[] = {L("sku-a", 3, INT64_MAX / 2)};
    line ovf_sum[] = {L("sku-a", 1, INT64_MAX / 2 + 1), L("sku-b", 1, INT64_MAX / 2 + 1)};
    line unknown[] = {L("sku-a", 1, 100), L("sku-never", 1, 100)};
    static line many[101];
    static char many_sku[101][16];
    for (int i = 0; i < 101; i++) {
        snprintf(many_sku[i], sizeof many_sku[i], "sku-m%d", i);
        many[i] = (line)L(many_sku[i], 1, 1);
    }
    char long64[66];
    memset(long64, 'x', 65);
    long64[65] = '\0';
    char long128[130];
    memset(long128, 'r', 129);
    long128[129] = '\0';

#define BASE(rid_, lines_, n_)                                                                     \
    {.rid = rid_,                                                                                  \
     .buyer = "buyer-1",                                                                           \
     .merchant = "merchant-1",                                                                     \
     .currency = "CNY",                                                                            \
     .lines = lines_,                                                                              \
     .n = n_}
    bad_case cases[] = {
        {"no lines", BASE("b-1", ok, 0), GRPC_STATUS_INVALID_ARGUMENT, "lines", NULL},
        {"101 lines", BASE("b-2", many, 101), GRPC_STATUS_INVALID_ARGUMENT, "lines", NULL},
        {"quantity 0", BASE("b-3", q0, 1), GRPC_STATUS_INVALID_ARGUMENT, "lines[0].quantity", NULL},
        {"quantity < 0", BASE("b-4", qneg, 2), GRPC_STATUS_INVALID_ARGUMENT, "lines[1].quantity",
         NULL},
        {"price < 0", BASE("b-5", pneg, 2), GRPC_STATUS_INVALID_ARGUMENT, "lines[1].unit_price",
         NULL},
        {"no price", BASE("b-6", nop, 1), GRPC_STATUS_INVALID_ARGUMENT, "lines[0].unit_price",
         NULL},
        {"price in another currency", BASE("b-7", usd, 1), GRPC_STATUS_INVALID_ARGUMENT,
         "lines[0].unit_price", "CURRENCY_MISMATCH"},
        {"duplicate sku", BASE("b-8", dup, 2), GRPC_STATUS_INVALID_ARGUMENT, "lines[1].sku", NULL},
        {"bad sku", BASE("b-9", badsku, 1), GRPC_STATUS_INVALID_ARGUMENT, "lines[0].sku", NULL},
        {"empty sku", BASE("b-10", nosku, 1), GRPC_STATUS_INVALID_ARGUMENT, "lines[0].sku", NULL},
        {"line total overflows", BASE("b-11", ovf_line, 1), GRPC_STATUS_INVALID_ARGUMENT,
         "lines[0]", NULL},
        {"order total overflows", BASE("b-12", ovf_sum, 2), GRPC_STATUS_INVALID_ARGUMENT, "lines",
         NULL},
        {"unknown sku", BASE("b-13", unknown, 2), GRPC_STATUS_FAILED_PRECONDITION, NULL,
         "SOLD_OUT"},
        {"no request_id", BASE("", ok, 2), GRPC_STATUS_INVALID_ARGUMENT, "request_id", NULL},
        {"bad request_id", BASE("b 15!", ok, 2), GRPC_STATUS_INVALID_ARGUMENT, "request_id", NULL},
        {"long request_id", BASE(long64, ok, 2), GRPC_STATUS_INVALID_ARGUMENT, "request_id", NULL},
    };
#undef BASE
    size_t ncases = sizeof cases / sizeof cases[0];
    cm_rpc_status st;
    for (size_t i = 0; i < ncases; i++) {
        int code = create(f.oc, &cases[i].s, NULL, &st);
        ck_assert_msg(code == cases[i].code, "%s: code %d (%s %s), expected %d", cases[i].what,
                      code, st.reason, st.message, cases[i].code);
        if (cases[i].field)
            ck_assert_msg(field_is(&st, cases[i].field), "%s: field \"%s\", expected %s",
                          cases[i].what, st.field, cases[i].field);
        if (cases[i].reason)
            ck_assert_msg(strcmp(st.reason, cases[i].reason) == 0, "%s: reason %s, expected %s",
                          cases[i].what, st.reason, cases[i].reason);
    }
    /* the sold-out sku is named, with inventory's typed detail */
    create(f.oc, &cases[12].s, NULL, &st);
    ck_assert_msg(strstr(st.message, "sku-never") != NULL, "message: %s", st.message);
    int typed = 0;
    for (int i = 0; i < st.n_details; i++)
        typed |= strcmp(st.detail_types[i],
                        "type.googleapis.com/commerce.inventory.v1.StockShortageDetail") == 0;
    ck_assert_msg(typed, "SOLD_OUT without its StockShortageDetail");

    /* the order's own fields */
    order_spec s = spec("b-20", ok, 2);
    s.buyer = "";
    ck_assert_int_eq(create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "buyer_id");
    s.buyer = long64;
    ck_assert_int_eq(create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "buyer_id");
    s.buyer = "buyer-1";
    s.merchant = "";
    ck_assert_int_eq(create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "merchant_id");
    s.merchant = "merchant-1";
    const char *currencies[] = {"", "XYZ", "cny", "CNYY", "C1Y"};
    for (size_t i = 0; i < sizeof currencies / sizeof currencies[0]; i++) {
        s.currency = currencies[i];
        /* the lines priced in the same (bad) currency: only "currency" is wrong */
        line same[] = {{.sku = "sku-a", .qty = 1, .price = 100, .cur = currencies[i]}};
        s.lines = same;
        s.n = 1;
        ck_assert_msg(create(f.oc, &s, NULL, &st) == GRPC_STATUS_INVALID_ARGUMENT,
                      "currency \"%s\": code %d", currencies[i], st.code);
        ck_field(st, "currency");
    }
    s.currency = "CNY";
    s.lines = ok;
    s.n = 2;
    s.timeout_s = 59;
    ck_assert_int_eq(create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "payment_timeout");
    s.timeout_s = 72 * 3600 + 1;
    ck_assert_int_eq(create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "payment_timeout");
    s.timeout_s = -60;
    ck_assert_int_eq(create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "payment_timeout");
    s.timeout_s = 0;
    s.external_ref = long128;
    ck_assert_int_eq(create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "external_ref");
    s.external_ref = NULL;
    /* no tenant */
    ck_assert_int_eq(create_md(f.oc, &s, NULL, &st, NULL, 0), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "metadata.x-tenant-id");
    ck_assert_int_eq(get_order_md(f.oc, "0190a8e0-0000-7000-8000-0000000000dd", NULL, &st, NULL),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "metadata.x-tenant-id");
    /* lookups */
    ck_assert_int_eq(get_order_md(f.oc, "", NULL, &st, md_t), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "order_id");
    ck_assert_int_eq(get_order_md(f.oc, "0190a8e0-0000-7000-8000-0000000000dd", NULL, &st, md_t),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.reason, "RESOURCE_NOT_FOUND");

    /* nothing stored, nothing reserved, nothing published */
    char ids[8][64];
    ck_assert_uint_eq(all_orders(f.oc, ids, 8), 0);
    assert_level(f.ic, "sku-a", 10, 0, 0);
    assert_level(f.ic, "sku-b", 10, 0, 0);
    ck_assert_uint_eq(stock_changes(f.ic, "", KIND_RESERVE, NULL, 0), 0);
    ck_assert_int_eq(sql_long(f.ord_schema, "SELECT count(*) FROM outbox"), 0);

    /* a request refused for one reason is not remembered: the same key
     * with a good body then works */
    Order *o = must_create(f.oc, &(order_spec){.rid = "b-3",
                                               .buyer = "buyer-1",
                                               .merchant = "merchant-1",
                                               .currency = "CNY",
                                               .lines = ok,
                                               .n = 2});
    order_free(o);
    /* a zero price is a price (>= 0): a free line */
    line gift[] = {L("sku-a", 1, 500), L("sku-b", 1, 0)};
    o = must_create(f.oc, &(order_spec){.rid = "b-gift",
                                        .buyer = "buyer-1",
                                        .merchant = "merchant-1",
                                        .currency = "CNY",
                                        .lines = gift,
                                        .n = 2});
    assert_money(o->total_amount, 500, "CNY");
    assert_money(o->lines[1]->line_total, 0, "CNY");
    order_free(o);
    /* a currency with no minor unit */
    line yen[] = {L("sku-a", 2, 1500)};
    o = must_create(f.oc, &(order_spec){.rid = "b-jpy",
                                        .buyer = "buyer-1",
                                        .merchant = "merchant-1",
                                        .currency = "JPY",
                                        .lines = yen,
                                        .n = 1});
    assert_money(o->total_amount, 3000, "JPY");
    order_free(o);
    ck_assert_uint_eq(all_orders(f.oc, ids, 8), 3);
    fx_stop(&f);
}
END_TEST

/* ---- inventory down or slow ---- */

START_TEST(inventory_down_or_slow_fails_fast_and_leaves_nothing)
{
    const char *env[] = {"ORDER_INVENTORY_TIMEOUT_MS=1000", NULL};
    static fx f;
    fx_start(&f, env, 1);
    set_stock(f.ic, "s-d", "sku-d", 10);
    set_stock(f.ic, "s-s", "sku-s", 10);
    line ld[] = {L("sku-d", 1, 100)};
    order_spec s = spec("req-d-0", ld, 1);
    s.buyer = "buyer-d";
    s.timeout_s = 600;
    order_free(must_create(f.oc, &s));
    assert_level(f.ic, "sku-d", 9, 1, 0);

    /* down: the connection cut, new ones refused */
    hs_proxy_cut(f.proxy);
    s.rid = "req-d-1";
    cm_rpc_status st;
    long long t0 = hs_now_ms();
    int code = create(f.oc, &s, NULL, &st);
    long long took = hs_now_ms() - t0;
    ck_assert_msg(code == GRPC_STATUS_UNAVAILABLE, "inventory down: code %d %s", code, st.message);
    ck_assert_str_eq(st.reason, "DEPENDENCY_UNAVAILABLE");
    ck_assert_msg(took < 1000 + 2000, "inventory down: the create took %lld ms", took);
    fprintf(stderr, "inventory down: UNAVAILABLE after %lld ms\n", took);
    Commerce__Order__V1__ListOrdersRequest q = COMMERCE__ORDER__V1__LIST_ORDERS_REQUEST__INIT;
    q.buyer_id = "buyer-d";
    char ids[8][64];
    ck_assert_uint_eq(list_all(f.oc, &q, ids, 8, NULL, NULL), 1);

    /* back: the same request_id goes through */
    hs_proxy_restore(f.proxy);
    long long until = hs_now_ms() + 15000;
    Order *o = NULL;
    while ((code = create(f.oc, &s, &o, &st)) != 0 && hs_now_ms() < until)
        usleep(200000);
    ck_assert_msg(code == 0, "after the restore: %d %s", code, st.message);
    order_free(o);
    assert_level(f.ic, "sku-d", 8, 2, 0);
    ck_assert_uint_eq(list_all(f.oc, &q, ids, 8, NULL, NULL), 2);

    /* slow: inventory stopped mid-flight. the reservation's ttl would be
     * 10 min: the stock must come back because the service gave it up,
     * not because it expired */
    line ls[] = {L("sku-s", 3, 100)};
    order_spec slow = spec("req-s-1", ls, 1);
    slow.buyer = "buyer-s";
    slow.timeout_s = 600;
    kill(f.inv.pid, SIGSTOP);
    t0 = hs_now_ms();
    code = create(f.oc, &slow, NULL, &st);
    took = hs_now_ms() - t0;
    kill(f.inv.pid, SIGCONT);
    ck_assert_msg(code == GRPC_STATUS_UNAVAILABLE, "inventory slow: code %d %s", code, st.message);
    ck_assert_str_eq(st.reason, "DEPENDENCY_UNAVAILABLE");
    ck_assert_msg(took < 1000 + 2000, "inventory slow: the create took %lld ms", took);
    fprintf(stderr, "inventory slow: UNAVAILABLE after %lld ms\n", took);
    wait_level(f.ic, "sku-s", 10, 0, 0);
    q.buyer_id = "buyer-s";
    ck_assert_uint_eq(list_all(f.oc, &q, ids, 8, NULL, NULL), 0);
    /* inventory answers again: the same request goes through, reserved once */
    until = hs_now_ms() + 15000;
    while ((code = create(f.oc, &slow, &o, &st)) != 0 && hs_now_ms() < until)
        usleep(200000);
    ck_assert_msg(code == 0, "after the slow inventory: %d %s %s", code, st.reason, st.message);
    ck_assert_int_eq(o->state, ST(PENDING_PAYMENT));
    order_free(o);
    assert_level(f.ic, "sku-s", 7, 3, 0);
    ck_assert_uint_eq(list_all(f.oc, &q, ids, 8, NULL, NULL), 1);

    settle(&f);
    size_t n = all_orders(f.oc, ids, 8);
    ck_assert_uint_eq(n, 3);
    for (size_t i = 0; i < f.log->n; i++)
        ck_assert(has_id(ids, n, f.log->v[i].key));
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(ev_count(f.log, ids[i], EV_CREATED, NULL), 1);
    ck_assert_int_eq(violations(f.ic), 0);
    fx_stop(&f);
}
END_TEST

/* ---- a timed-out attempt and a concurrent retry share one reservation ---- */

START_TEST(a_timed_out_attempt_never_releases_its_retrys_stock)
{
    /* replica a calls inventory through the proxy, replica b directly */
    const char *env[] = {"ORDER_INVENTORY_TIMEOUT_MS=1000", NULL};
    static fx f;
    fx_start(&f, env, 1);
    hs_proxy *px = f.proxy;
    f.proxy = NULL;
    hs_proc b;
    /* b stores its order 1.5 s after its Reserve: after a gave up */
    const char *b_env[] = {"ORDER_INVENTORY_TIMEOUT_MS=1000",
                           "ORDER_DEBUG_PAUSE_AFTER_RESERVE_MS=1500", NULL};
    spawn_order_into(&f, &b, b_env);
    f.proxy = px;
    cm_rpc_client *bc = client_for(&b);
    set_stock(f.ic, "s-r", "sku-r", 10);
    line warm[] = {L("sku-r", 1, 100)};
    order_spec w = spec("req-r-0", warm, 1);
    order_free(must_create(f.oc, &w)); /* a's connection to inventory is up */
    assert_level(f.ic, "sku-r", 9, 1, 0);

    /* a's Reserve reaches inventory, its answer is held back: a gives up
     * after 1 s and asks for a release of that order id ... */
    hs_proxy_hold_replies(f.proxy, 1);
    bg_create a = {.s = spec("req-r-1", NULL, 1), .l = L("sku-r", 2, 100)};
    a.s.buyer = "buyer-r";
    a.s.timeout_s = 600;
    pthread_t t;
    a.c = f.oc;
    pthread_create(&t, NULL, bg_create_main, &a);
    long long until = hs_now_ms() + 10000;
    while (get_level(f.ic, "sku-r").reserved < 3 && hs_now_ms() < until)
        usleep(10000);
    /* ... while the caller's retry, through b, finds that reservation and
     * stores the order on it, after a found no order and asked for the
     * release */
    order_spec retry = a.s;
    retry.lines = &a.l;
    Order *o = must_create(bc, &retry);
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    order_free(o);
    pthread_join(t, NULL);
    ck_assert_int_eq(a.code, GRPC_STATUS_UNAVAILABLE);
    hs_proxy_hold_replies(f.proxy, 0);

    /* a's release is due 2 s after a gave up; by then it finds b's order
     * and is not sent: the stock stays held for it (sent at once, as
     * before, it released the stock under b's order) */
    long long check_until = hs_now_ms() + 4500;
    while (hs_now_ms() < check_until) {
        level l = get_level(f.ic, "sku-r");
        ck_assert_msg(l.reserved == 3, "reserved %lld: the retry's stock was released",
                      (long long)l.reserved);
        usleep(200000);
    }
    ck_assert_uint_eq(stock_changes(f.ic, "sku-r", KIND_RELEASE, NULL, 0), 0);
    char body[65536];
    ck_assert_int_eq(hs_http_get(f.ord.admin_port, "/metrics", body, sizeof body), 200);
    ck_assert_ptr_nonnull(strstr(body, "\norder_releases_skipped_total 1\n"));
    /* and the order goes through the saga on that stock */
    Order *cur = must_get(f.oc, id);
    must_pay(f.oc, cur, "pay-r-1");
    order_free(cur);
    wait_level(f.ic, "sku-r", 7, 1, 2);
    cm_rpc_client_free(bc);
    ck_assert_int_eq(hs_stop(&b, SIGTERM, 30000), 0);
    fx_stop(&f);
}
END_TEST

/* ---- listing ---- */

typedef struct mid_page {
    cm_rpc_client *c;
} mid_page;

static void create_between_pages(void *arg)
{
    mid_page *m = arg;
    line ls[] = {L("sku-l", 1, 999)};
    order_spec s = spec("req-l-mid", ls, 1);
    s.buyer = "b1";
    s.merchant = "m1";
    s.timeout_s = 600;
    order_free(must_create(m->c, &s));
}

START_TEST(list_orders_filters_and_pages)
{
    static fx f;
    fx_start(&f, NULL, 0);
    set_stock(f.ic, "s-l", "sku-l", 1000);
    enum { N = 24 };
    char id[N][64];
    const char *buyer[N], *merchant[N], *channel[N];
    int state[N];
    for (int i = 0; i < N; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "req-l-%d", i);
        buyer[i] = i % 2 ? "b2" : "b1";
        merchant[i] = (i / 4) % 2 ? "m2" : "m1";
        channel[i] = i % 3 == 0 ? "ch-1" : "";
        line ls[] = {L("sku-l", 1, 100 + i)};
        order_spec s = spec(rid, ls, 1);
        s.buyer = buyer[i];
        s.merchant = merchant[i];
        s.channel = channel[i];
        s.timeout_s = 600;
        Order *o = must_create(f.oc, &s);
        snprintf(id[i], sizeof id[i], "%s", o->order_id);
        state[i] = ST(PENDING_PAYMENT);
        if (i % 4 == 1) {
            char pid[32];
            snprintf(pid, sizeof pid, "pay-l-%d", i);
            must_pay(f.oc, o, pid);
            state[i] = ST(PAID);
        } else if (i % 4 == 2) {
            char cx[32];
            snprintf(cx, sizeof cx, "cx-l-%d", i);
            ck_assert_int_eq(
                cancel_order(f.oc, cx, id[i], CANCEL(BUYER_REQUESTED), NULL, NULL, NULL), 0);
            state[i] = ST(CANCELLED);
        }
        order_free(o);
    }
    static char got[64][64];
    Commerce__Order__V1__ListOrdersRequest q = COMMERCE__ORDER__V1__LIST_ORDERS_REQUEST__INIT;

    /* by buyer, pages of 5, an order created between pages (newer: not in
     * the later pages, and nothing shifts into a duplicate or a gap) */
    q.buyer_id = "b1";
    q.page_size = 5;
    mid_page mp = {f.oc};
    size_t n = list_all(f.oc, &q, got, 64, create_between_pages, &mp);
    ck_assert_uint_eq(n, N / 2);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(has_id(got, n, id[i]), strcmp(buyer[i], "b1") == 0);
    /* newest first: the last created b1 order leads */
    ck_assert_str_eq(got[0], id[N - 2]);

    /* by merchant and state */
    Commerce__Order__V1__OrderState paid[] = {ST(PAID)};
    q.buyer_id = "";
    q.merchant_id = "m2";
    q.states = paid;
    q.n_states = 1;
    q.page_size = 2;
    n = list_all(f.oc, &q, got, 64, NULL, NULL);
    size_t want = 0;
    for (int i = 0; i < N; i++) {
        int match = strcmp(merchant[i], "m2") == 0 && state[i] == ST(PAID);
        want += match;
        ck_assert_int_eq(has_id(got, n, id[i]), match);
    }
    ck_assert_uint_eq(n, want);
    ck_assert_uint_gt(n, 0);

    /* buyer and merchant and two states, pages of 1 */
    Commerce__Order__V1__OrderState two[] = {ST(PENDING_PAYMENT), ST(CANCELLED)};
    q.buyer_id = "b2";
    q.merchant_id = "m1";
    q.states = two;
    q.n_states = 2;
    q.page_size = 1;
    n = list_all(f.oc, &q, got, 64, NULL, NULL);
    want = 0;
    for (int i = 0; i < N; i++) {
        int match = strcmp(buyer[i], "b2") == 0 && strcmp(merchant[i], "m1") == 0 &&
                    (state[i] == ST(PENDING_PAYMENT) || state[i] == ST(CANCELLED));
        want += match;
        ck_assert_int_eq(has_id(got, n, id[i]), match);
    }
    ck_assert_uint_eq(n, want);

    /* by channel */
    q.buyer_id = "";
    q.merchant_id = "";
    q.n_states = 0;
    q.channel_id = "ch-1";
    q.page_size = 0;
    n = list_all(f.oc, &q, got, 64, NULL, NULL);
    ck_assert_uint_eq(n, N / 3);
    q.channel_id = "";

    /* by creation time */
    Commerce__Common__V1__TimeRange tr = COMMERCE__COMMON__V1__TIME_RANGE__INIT;
    Google__Protobuf__Timestamp from = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    from.seconds = time(NULL) + 3600;
    tr.start_at = &from;
    q.created = &tr;
    ck_assert_uint_eq(list_all(f.oc, &q, got, 64, NULL, NULL), 0);
    from.seconds = time(NULL) - 3600;
    ck_assert_uint_eq(list_all(f.oc, &q, got, 64, NULL, NULL), N + 1);
    q.created = NULL;

    /* everything, page_size above 500 treated as 500: one page */
    q.page_size = 100000;
    Commerce__Order__V1__ListOrdersResponse *r = NULL;
    cm_rpc_status st;
    int code;
    ck_assert_int_eq(list_orders(f.oc, &q, &r, &st, md_t), 0);
    ck_assert_uint_eq(r->n_orders, N + 1);
    ck_assert_str_eq(r->next_page_token, "");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* a token belongs to its filters and its tenant */
    q.buyer_id = "b1";
    q.page_size = 3;
    ck_assert_int_eq(list_orders(f.oc, &q, &r, &st, md_t), 0);
    char *token = strdup(r->next_page_token);
    ck_assert(token[0]);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    q.page_token = token;
    q.buyer_id = "b2";
    ck_assert_int_eq(list_orders(f.oc, &q, NULL, &st, md_t), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
    ck_field(st, "page_token");
    q.buyer_id = "b1";
    q.states = paid;
    q.n_states = 1;
    ck_assert_int_eq(list_orders(f.oc, &q, NULL, &st, md_t), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
    q.n_states = 0;
    /* another tenant: refused, or at least nothing of ours */
    code = list_orders(f.oc, &q, &r, &st, md_other);
    if (code == 0) {
        ck_assert_uint_eq(r->n_orders, 0);
        protobuf_c_message_free_unpacked(&r->base, NULL);
    } else {
        ck_assert_int_eq(code, GRPC_STATUS_INVALID_ARGUMENT);
        ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
    }
    /* the right filters: the token works */
    ck_assert_int_eq(list_orders(f.oc, &q, NULL, &st, md_t), 0);
    free(token);
    const char *garbage[] = {"zz", "not-a-token", "00", "AAAA", "{}"};
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        q.page_token = (char *)garbage[i];
        ck_assert_int_eq(list_orders(f.oc, &q, NULL, &st, md_t), GRPC_STATUS_INVALID_ARGUMENT);
        ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
        ck_field(st, "page_token");
    }
    q.page_token = "";
    q.page_size = -1;
    ck_assert_int_eq(list_orders(f.oc, &q, NULL, &st, md_t), GRPC_STATUS_INVALID_ARGUMENT);
    ck_field(st, "page_size");
    q.page_size = 0;

    /* another tenant sees nothing */
    q.buyer_id = "";
    ck_assert_int_eq(list_orders(f.oc, &q, &r, &st, md_other), 0);
    ck_assert_uint_eq(r->n_orders, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    ck_assert_int_eq(get_order_md(f.oc, id[0], NULL, &st, md_other), GRPC_STATUS_NOT_FOUND);
    fx_stop(&f);
}
END_TEST

/* ---- illegal transitions ---- */

static void refused(int code, const cm_rpc_status *st, const char *what)
{
    ck_assert_msg(code == GRPC_STATUS_FAILED_PRECONDITION &&
                      strcmp(st->reason, "ILLEGAL_STATE_TRANSITION") == 0,
                  "%s: code %d reason %s (%s), expected FAILED_PRECONDITION "
                  "ILLEGAL_STATE_TRANSITION",
                  what, code, st->reason, st->message);
}

START_TEST(illegal_transitions_are_failed_precondition)
{
    static fx f;
    fx_start(&f, NULL, 0);
    set_stock(f.ic, "s-i", "sku-i", 100);
    line ls[] = {L("sku-i", 1, 300)};
    char id[3][64];
    create_pending(f.oc, "req-i", ls, 3, id);
    cm_rpc_status st;
    /* pending: not shippable, not completable, not refundable */
    refused(ship_order(f.oc, "x-1", id[0], NULL, NULL, NULL, &st), &st, "ship unpaid");
    refused(complete_order(f.oc, "x-2", id[0], NULL, &st), &st, "complete unpaid");
    refund_spec full = {.refund_id = "rf-x", .order_id = id[0], .scope = SCOPE(FULL)};
    refused(refund_order(f.oc, &full, NULL, &st), &st, "refund unpaid");
    ck_assert_int_eq(state_of(f.oc, id[0]), ST(PENDING_PAYMENT));

    /* paid: not cancellable, not completable before shipping */
    Order *o = must_get(f.oc, id[1]);
    must_pay(f.oc, o, "pay-i-1");
    order_free(o);
    refused(cancel_order(f.oc, "x-3", id[1], CANCEL(BUYER_REQUESTED), NULL, NULL, &st), &st,
            "cancel paid");
    refused(complete_order(f.oc, "x-4", id[1], NULL, &st), &st, "complete unshipped");
    ck_assert_int_eq(state_of(f.oc, id[1]), ST(PAID));
    /* shipped: not twice (another request), not cancellable */
    ck_assert_int_eq(ship_order(f.oc, "x-5", id[1], "ems", "1", NULL, &st), 0);
    refused(ship_order(f.oc, "x-6", id[1], "ems", "2", NULL, &st), &st, "ship twice");
    refused(cancel_order(f.oc, "x-7", id[1], CANCEL(BUYER_REQUESTED), NULL, NULL, &st), &st,
            "cancel shipped");
    /* completed: not twice */
    ck_assert_int_eq(complete_order(f.oc, "x-8", id[1], NULL, &st), 0);
    refused(complete_order(f.oc, "x-9", id[1], NULL, &st), &st, "complete twice");
    refused(cancel_order(f.oc, "x-10", id[1], CANCEL(BUYER_REQUESTED), NULL, NULL, &st), &st,
            "cancel completed");
    ck_assert_int_eq(state_of(f.oc, id[1]), ST(COMPLETED));

    /* cancelled: final */
    ck_assert_int_eq(cancel_order(f.oc, "x-11", id[2], CANCEL(RISK_CONTROL), "fraud", NULL, &st),
                     0);
    refused(ship_order(f.oc, "x-12", id[2], NULL, NULL, NULL, &st), &st, "ship cancelled");
    refused(complete_order(f.oc, "x-13", id[2], NULL, &st), &st, "complete cancelled");
    full.refund_id = "rf-x2";
    full.order_id = id[2];
    refused(refund_order(f.oc, &full, NULL, &st), &st, "refund cancelled");
    pay_spec p = {.payment_id = "pay-i-2", .order_id = id[2], .amount = 300};
    refused(mark_paid(f.oc, &p, NULL, &st), &st, "pay cancelled");
    ck_assert_int_eq(state_of(f.oc, id[2]), ST(CANCELLED));

    /* unknown orders: NOT_FOUND everywhere */
    const char *nf = "0190a8e0-0000-7000-8000-0000000000ee";
    ck_assert_int_eq(ship_order(f.oc, "x-14", nf, NULL, NULL, NULL, &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.reason, "RESOURCE_NOT_FOUND");
    ck_assert_int_eq(complete_order(f.oc, "x-15", nf, NULL, &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.reason, "RESOURCE_NOT_FOUND");

    /* the refused calls changed nothing and published nothing */
    settle(&f);
    ck_assert_int_eq(ev_count(f.log, id[0], EV_CREATED, NULL), 1);
    for (int i = 0; i < 3; i++) {
        int n = 0;
        for (size_t k = 0; k < f.log->n; k++)
            n += strcmp(f.log->v[k].key, id[i]) == 0;
        ck_assert_int_eq(n, i == 0 ? 1 : i == 1 ? 4 : 2);
    }
    fx_stop(&f);
}
END_TEST

/* ---- order calls inventory over mTLS ---- */

START_TEST(order_calls_inventory_over_mtls)
{
    char dir[128], cmd[320], ca[192], cert[192], key[192];
    snprintf(dir, sizeof dir, "/tmp/commerce-ord-certs-%d", (int)getpid());
    snprintf(cmd, sizeof cmd, "%s %s", CERTS_SCRIPT, dir);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(ca, sizeof ca, "INVENTORY_TLS_CA_FILE=%s/ca.pem", dir);
    snprintf(cert, sizeof cert, "INVENTORY_TLS_CERT_FILE=%s/client.pem", dir);
    snprintf(key, sizeof key, "INVENTORY_TLS_KEY_FILE=%s/client.key", dir);
    const char *env[] = {ca, cert, key, NULL};
    static fx f;
    fx_start_tls(&f, env, 0, dir);
    set_stock(f.ic, "s-tls", "sku-tls", 10);
    line l[] = {L("sku-tls", 3, 250)};
    order_spec s = spec("req-tls-1", l, 1);
    Order *o = must_create(f.oc, &s);
    ck_assert_int_eq(o->state, ST(PENDING_PAYMENT));
    order_free(o);
    assert_level(f.ic, "sku-tls", 7, 3, 0);

    /* a replica that trusts inventory's CA but presents no certificate, and
     * one that speaks plaintext: inventory refuses the connection, the
     * create answers UNAVAILABLE and nothing is reserved or stored */
    const char *no_cert[] = {ca, NULL}, *plain[] = {NULL};
    const char *const *bad[] = {no_cert, plain};
    for (int i = 0; i < 2; i++) {
        hs_proc p;
        spawn_order_into(&f, &p, bad[i]);
        cm_rpc_client *c = client_for(&p);
        s.rid = i ? "req-tls-3" : "req-tls-2";
        cm_rpc_status st;
        int code = create(c, &s, NULL, &st);
        ck_assert_msg(code == GRPC_STATUS_UNAVAILABLE, "%s: code %d %s",
                      i ? "plaintext" : "no client certificate", code, st.message);
        ck_assert_str_eq(st.reason, "DEPENDENCY_UNAVAILABLE");
        cm_rpc_client_free(c);
        ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
    }
    assert_level(f.ic, "sku-tls", 7, 3, 0);
    settle(&f);
    char ids[8][64];
    ck_assert_uint_eq(all_orders(f.oc, ids, 8), 1);
    fx_stop(&f);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

static Suite *suite(void)
{
    const TTest *tests[] = {saga_create_pay_ship_complete,
                            saga_payment_timeout_releases_stock,
                            saga_cancel_releases_stock,
                            refunds_by_lines_and_amount_then_the_rest,
                            concurrent_changes_of_one_order_lose_no_update,
                            payment_notifications_duplicated_and_out_of_order,
                            mark_paid_racing_the_timeout_has_one_winner,
                            two_replicas_cancel_each_unpaid_order_once,
                            create_survives_lost_database_connections,
                            tenant_settings_set_the_default_payment_timeout,
                            kill_9_between_reserve_and_commit_leaks_nothing,
                            every_order_has_exactly_one_created_and_paid_event,
                            bad_input_is_refused_and_stores_nothing,
                            inventory_down_or_slow_fails_fast_and_leaves_nothing,
                            list_orders_filters_and_pages,
                            illegal_transitions_are_failed_precondition,
                            order_calls_inventory_over_mtls,
                            a_timed_out_attempt_never_releases_its_retrys_stock};
    /* ORDER_IT_ONLY=word runs the tests whose name contains word */
    const char *only = getenv("ORDER_IT_ONLY");
    Suite *s = suite_create("order");
    TCase *t = tcase_create("order");
    tcase_set_timeout(t, 180);
    tcase_add_checked_fixture(t, NULL, teardown);
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        if (!only || !*only || strstr(tests[i]->name, only))
            tcase_add_test(t, tests[i]);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
