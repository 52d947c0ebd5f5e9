/*
 * commerce-stlgen: the settlement benchmark's fixture and load generator
 * (scripts/bench.sh settlement, tests/bench/README.md).
 *
 *   commerce-stlgen setup --target HOST:PORT [--tenant T] [--merchants M]
 *       [--merchant-prefix P]
 *       PutTenantSettings (cap 10000 bps) and, per merchant P0 .. P<M-1>
 *       (P: m-),
 *       PutSplitRule with the seed's rule: fee 30 bps + 10 shared pro rata,
 *       platform 50 % T+0, service provider 30 % T+1, sub-merchant 20 % T+0.
 *
 *   commerce-stlgen produce --brokers B --topic T --events N [--tenant T]
 *       [--merchants M] [--rate R --warmup S --dsn DSN --schema S]
 *       N OrderPaid events as the order service's relay writes them (headers
 *       ce_id, ce_type, ce_source, content-type, tenant-id; key = order id;
 *       ids UUIDv7; amounts 1.00-1000.00 CNY, merchants round robin),
 *       idempotent producer, acks=all. without --rate: as fast as the
 *       broker takes them (a preload), then flushed. with --rate R: R events/s
 *       on a fixed schedule after S s of warmup at the same rate (not
 *       measured); each event's paid_at is its scheduled time, and the
 *       ledger (DSN, schema S) is polled every 5 ms for new split entries:
 *       an entry's latency is the poll that first saw it minus its order's
 *       paid_at (visible), and its posted_at minus paid_at (posted).
 *
 *   commerce-stlgen watch --dsn DSN --schema S --from-ms T --done-file F
 *       the ledger's side of a run whose OrderPaid events come from the
 *       order service (MarkPaid): polls the ledger every 5 ms as above,
 *       counting entries whose order was paid at or after T (epoch ms; the
 *       warmup's are seen, not counted), until F exists and holds the number
 *       of orders paid (the caller writes it once its load has ended) and
 *       that many entries were seen. latency = the poll that first saw the
 *       entry - the order's paid_at, which the order service takes when the
 *       MarkPaid call arrives, before its commit: so it includes MarkPaid's
 *       own transaction, an upper bound of commit -> visible.
 *
 * prints one json line. exit: 0 ok, 1 a failure (produce, rpc, entries that
 * never appeared within 30 s of the last produce), 2 usage.
 */
#include "cm_id.h"
#include "cm_rpc_client.h"

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commerce/events/v1/order_events.pb-c.h"
#include "commerce/settlement/v1/settlement_service.pb-c.h"

#define SVC "/commerce.settlement.v1.SettlementService/"
#define POLL_MS 5
#define DRAIN_MS 30000

typedef struct opts {
    const char *target, *brokers, *topic, *tenant, *dsn, *schema, *merchant_prefix, *done_file;
    long events, merchants, rate, warmup;
    long long from_ms;
} opts;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_us(int64_t us)
{
    if (us <= 0)
        return;
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static int usage(void)
{
    fprintf(stderr,
            "usage: commerce-stlgen setup --target HOST:PORT [--tenant T] [--merchants M]\n"
            "       commerce-stlgen produce --brokers B --topic T --events N [--tenant T]\n"
            "           [--merchants M] [--rate R --warmup S --dsn DSN --schema S]\n"
            "       commerce-stlgen watch --dsn DSN --schema S --from-ms T --done-file F\n");
    return 2;
}

/* ---- setup: settings and the seed's rule through the api ---- */

static int call(cm_rpc_client *c, const char *tenant, const char *method,
                const ProtobufCMessage *req, const ProtobufCMessageDescriptor *rd)
{
    cm_rpc_md md[1] = {{"x-tenant-id", tenant}};
    cm_rpc_status st;
    ProtobufCMessage *resp = NULL;
    int rc =
        cm_rpc_call(c, method, req, rd, NULL, &resp, md, 1, 10000, CM_RPC_CALL_IDEMPOTENT, &st);
    if (rc) {
        fprintf(stderr, "stlgen: %s: status %d %s (%s %s)\n", method, st.code, st.message,
                st.reason, st.field);
        return 1;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return 0;
}

static int setup(const opts *o)
{
    cm_rpc_client *c = NULL;
    char err[256];
    cm_rpc_client_opts co = {.target = o->target};
    if (cm_rpc_client_new(&c, &co, err, sizeof err)) {
        fprintf(stderr, "stlgen: client of %s: %s\n", o->target, err);
        return 1;
    }
    Commerce__Settlement__V1__TenantSettings ts = COMMERCE__SETTLEMENT__V1__TENANT_SETTINGS__INIT;
    ts.time_zone = "Asia/Shanghai";
    ts.max_split_bps = 10000;
    ts.run_at = "02:00";
    Commerce__Settlement__V1__PutTenantSettingsRequest sr =
        COMMERCE__SETTLEMENT__V1__PUT_TENANT_SETTINGS_REQUEST__INIT;
    sr.request_id = "bench-settings";
    sr.settings = &ts;
    int rc = call(c, o->tenant, SVC "PutTenantSettings", &sr.base,
                  &commerce__settlement__v1__put_tenant_settings_response__descriptor);
    static const struct {
        int type;
        const char *id;
        int bps, delay;
    } def[3] = {
        {COMMERCE__SETTLEMENT__V1__PARTY_TYPE__PARTY_TYPE_PLATFORM, "plat", 5000, 0},
        {COMMERCE__SETTLEMENT__V1__PARTY_TYPE__PARTY_TYPE_SERVICE_PROVIDER, "sp-1", 3000, 1},
        {COMMERCE__SETTLEMENT__V1__PARTY_TYPE__PARTY_TYPE_SUB_MERCHANT, "sub-1", 2000, 0}};
    Commerce__Settlement__V1__SplitReceiver r[3], *rp[3];
    for (int i = 0; i < 3; i++) {
        commerce__settlement__v1__split_receiver__init(&r[i]);
        r[i].type = def[i].type;
        r[i].receiver_id = (char *)def[i].id;
        r[i].share_bps = def[i].bps;
        r[i].settle_delay_days = (uint32_t)def[i].delay;
        rp[i] = &r[i];
    }
    Commerce__Settlement__V1__FeeModel fee = COMMERCE__SETTLEMENT__V1__FEE_MODEL__INIT;
    fee.bps = 30;
    fee.fixed_minor = 10;
    fee.bearer = COMMERCE__SETTLEMENT__V1__FEE_BEARER__FEE_BEARER_PRO_RATA;
    for (long m = 0; rc == 0 && m < o->merchants; m++) {
        char merchant[32], req_id[48];
        snprintf(merchant, sizeof merchant, "%s%ld", o->merchant_prefix, m);
        snprintf(req_id, sizeof req_id, "bench-rule-%ld", m);
        Commerce__Settlement__V1__SplitRule rule = COMMERCE__SETTLEMENT__V1__SPLIT_RULE__INIT;
        rule.merchant_id = merchant;
        rule.currency = "CNY";
        rule.receivers = rp;
        rule.n_receivers = 3;
        rule.fee = &fee;
        Commerce__Settlement__V1__PutSplitRuleRequest pr =
            COMMERCE__SETTLEMENT__V1__PUT_SPLIT_RULE_REQUEST__INIT;
        pr.request_id = req_id;
        pr.rule = &rule;
        rc = call(c, o->tenant, SVC "PutSplitRule", &pr.base,
                  &commerce__settlement__v1__put_split_rule_response__descriptor);
    }
    cm_rpc_client_free(c);
    if (rc == 0)
        printf("{\"tenant\":\"%s\",\"merchants\":%ld,\"rules\":%ld}\n", o->tenant, o->merchants,
               o->merchants);
    return rc;
}

/* ---- produce ---- */

static long delivered, failed;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err)
        failed++;
    else
        delivered++;
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* one OrderPaid, as the order service writes it; 0 or 1 */
static int produce_paid(rd_kafka_t *rk, const opts *o, long i, int64_t paid_ms)
{
    char order_id[CM_ID_SIZE], event_id[CM_ID_SIZE], merchant[48], pay_id[32];
    if (cm_id_uuid7(order_id) || cm_id_uuid7(event_id))
        return 1;
    snprintf(merchant, sizeof merchant, "%s%ld", o->merchant_prefix, i % o->merchants);
    snprintf(pay_id, sizeof pay_id, "pay-%ld", i);
    Commerce__Common__V1__Money m = COMMERCE__COMMON__V1__MONEY__INIT;
    m.amount_minor = 100 + (int64_t)(next_rand() % 99901);
    m.currency = "CNY";
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = paid_ms / 1000;
    at.nanos = (int32_t)(paid_ms % 1000) * 1000000;
    Commerce__Order__V1__Payment pay = COMMERCE__ORDER__V1__PAYMENT__INIT;
    pay.payment_id = pay_id;
    pay.amount = &m;
    pay.paid_at = &at;
    pay.recorded_at = &at;
    Commerce__Order__V1__Order ord = COMMERCE__ORDER__V1__ORDER__INIT;
    ord.order_id = order_id;
    ord.merchant_id = merchant;
    ord.currency = "CNY";
    ord.total_amount = &m;
    ord.payment = &pay;
    Commerce__Events__V1__OrderPaid e = COMMERCE__EVENTS__V1__ORDER_PAID__INIT;
    e.event_id = event_id;
    e.tenant_id = (char *)o->tenant;
    e.order_id = order_id;
    e.occurred_at = &at;
    e.order = &ord;
    uint8_t buf[1024];
    size_t len = protobuf_c_message_get_packed_size(&e.base);
    if (len > sizeof buf)
        return 1;
    protobuf_c_message_pack(&e.base, buf);
    /* a full local queue: serve delivery reports and try again, bounded */
    for (int attempt = 0; attempt < 6000; attempt++) {
        rd_kafka_headers_t *h = rd_kafka_headers_new(5);
        rd_kafka_header_add(h, "ce_id", -1, event_id, -1);
        rd_kafka_header_add(h, "ce_type", -1, "commerce.events.v1.OrderPaid", -1);
        rd_kafka_header_add(h, "ce_source", -1, "/commerce/order", -1);
        rd_kafka_header_add(h, "content-type", -1, "application/protobuf", -1);
        rd_kafka_header_add(h, "tenant-id", -1, o->tenant, -1);
        rd_kafka_resp_err_t err = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(o->topic), RD_KAFKA_V_KEY(order_id, strlen(order_id)),
            RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
            return 0;
        rd_kafka_headers_destroy(h);
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            fprintf(stderr, "stlgen: produce to %s: %s\n", o->topic, rd_kafka_err2str(err));
            return 1;
        }
        rd_kafka_poll(rk, 10);
    }
    fprintf(stderr, "stlgen: the producer's queue stayed full for a minute\n");
    return 1;
}

/* ---- watching the ledger (paced runs) ---- */

typedef struct watch {
    PGconn *pg;
    char sql[512];
    long long last_id;
    int64_t measure_from_ms; /* entries paid before: warmup, not counted */
    long seen;               /* every entry seen, warmup included */
    double *vis, *posted;    /* ms, one per measured entry */
    long n, cap;
} watch;

static int watch_poll(watch *w)
{
    char last[32];
    snprintf(last, sizeof last, "%lld", w->last_id);
    const char *params[1] = {last};
    int64_t sent = now_us();
    PGresult *r = PQexecParams(w->pg, w->sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "stlgen: polling the ledger: %s", PQerrorMessage(w->pg));
        PQclear(r);
        return 1;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        long long id = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        double paid = strtod(PQgetvalue(r, i, 1), NULL);
        double posted = strtod(PQgetvalue(r, i, 2), NULL);
        if (id > w->last_id)
            w->last_id = id;
        w->seen++;
        if (paid < (double)w->measure_from_ms)
            continue;
        if (w->n == w->cap) {
            long cap = w->cap ? 2 * w->cap : 4096;
            double *v = realloc(w->vis, (size_t)cap * sizeof *v);
            if (!v)
                break;
            w->vis = v;
            double *p = realloc(w->posted, (size_t)cap * sizeof *p);
            if (!p)
                break;
            w->posted = p;
            w->cap = cap;
        }
        w->vis[w->n] = (double)sent / 1000.0 - paid;
        w->posted[w->n] = posted - paid;
        w->n++;
    }
    PQclear(r);
    return 0;
}

static int watch_open(watch *w, const opts *o)
{
    w->pg = PQconnectdb(o->dsn);
    if (PQstatus(w->pg) != CONNECTION_OK) {
        fprintf(stderr, "stlgen: %s", PQerrorMessage(w->pg));
        return 1;
    }
    snprintf(w->sql, sizeof w->sql,
             "SELECT e.entry_id, extract(epoch FROM s.paid_at) * 1000, "
             "extract(epoch FROM e.posted_at) * 1000 FROM \"%s\".entries e JOIN "
             "\"%s\".order_splits s USING (tenant_id, order_id) WHERE e.entry_id > $1 "
             "AND e.kind = 1 ORDER BY e.entry_id LIMIT 10000",
             o->schema, o->schema);
    return 0;
}

static void watch_close(watch *w)
{
    free(w->vis);
    free(w->posted);
    if (w->pg)
        PQfinish(w->pg);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, long n, double p)
{
    if (n == 0)
        return 0;
    long i = (long)(p / 100.0 * (double)n);
    return v[i < n ? i : n - 1];
}

/* the latency fields of the json line: sorts the samples */
static void watch_report(watch *w)
{
    qsort(w->vis, (size_t)w->n, sizeof *w->vis, cmp_double);
    qsort(w->posted, (size_t)w->n, sizeof *w->posted, cmp_double);
    printf("\"measured\":%ld,\"p50_ms\":%.1f,\"p90_ms\":%.1f,\"p99_ms\":%.1f,"
           "\"p999_ms\":%.1f,\"max_ms\":%.1f,\"posted_p50_ms\":%.1f,\"posted_p99_ms\":%.1f",
           w->n, pct(w->vis, w->n, 50), pct(w->vis, w->n, 90), pct(w->vis, w->n, 99),
           pct(w->vis, w->n, 99.9), w->n ? w->vis[w->n - 1] : 0, pct(w->posted, w->n, 50),
           pct(w->posted, w->n, 99));
}

static int produce(const opts *o)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* as the order service's relay: idempotent, acks=all; linger 5 ms */
    const char *kv[][2] = {{"bootstrap.servers", o->brokers},
                           {"enable.idempotence", "true"},
                           {"acks", "all"},
                           {"linger.ms", "5"},
                           {"queue.buffering.max.messages", "200000"},
                           {"log_level", "3"}};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
        if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], err, sizeof err) != RD_KAFKA_CONF_OK) {
            fprintf(stderr, "stlgen: %s: %s\n", kv[i][0], err);
            rd_kafka_conf_destroy(conf);
            return 1;
        }
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "stlgen: kafka producer: %s\n", err);
        return 1;
    }
    watch w = {0};
    int rc = 0;
    if (o->rate > 0)
        rc = watch_open(&w, o);
    long total = o->events + (o->rate > 0 ? o->rate * o->warmup : 0);
    int64_t t0 = now_us();
    w.measure_from_ms = t0 / 1000 + (o->rate > 0 ? o->warmup * 1000 : 0);
    int64_t next_poll = t0;
    for (long i = 0; rc == 0 && i < total; i++) {
        int64_t paid_ms;
        if (o->rate > 0) {
            int64_t due = t0 + (int64_t)((double)i * 1e6 / (double)o->rate);
            /* poll the ledger while waiting for the next event's time */
            for (int64_t t = now_us(); t < due && rc == 0; t = now_us()) {
                if (t >= next_poll) {
                    rc = watch_poll(&w);
                    next_poll = t + POLL_MS * 1000;
                }
                rd_kafka_poll(rk, 0);
                int64_t until = due < next_poll ? due : next_poll;
                sleep_us(until - now_us());
            }
            paid_ms = due / 1000;
        } else {
            paid_ms = now_ms();
            if ((i & 1023) == 0)
                rd_kafka_poll(rk, 0);
        }
        if (rc == 0)
            rc = produce_paid(rk, o, i, paid_ms);
    }
    int64_t t_produced = now_us();
    if (rd_kafka_flush(rk, 60000) != RD_KAFKA_RESP_ERR_NO_ERROR || failed) {
        fprintf(stderr, "stlgen: %ld of %ld records not acknowledged\n", total - delivered, total);
        rc = 1;
    }
    int64_t t_acked = now_us();
    /* paced: every entry visible, or give up 30 s after the last produce */
    int64_t deadline = now_us() + DRAIN_MS * 1000LL;
    while (rc == 0 && o->rate > 0 && w.seen < total && now_us() < deadline) {
        rc = watch_poll(&w);
        sleep_us(POLL_MS * 1000);
    }
    if (rc == 0 && o->rate > 0 && w.seen < total) {
        fprintf(stderr, "stlgen: %ld of %ld entries appeared within %d s of the last produce\n",
                w.seen, total, DRAIN_MS / 1000);
        rc = 1;
    }
    if (rc == 0) {
        double secs = (double)(t_produced - t0) / 1e6;
        printf("{\"events\":%ld,\"produced_per_s\":%.0f,\"acked_s\":%.3f", total,
               secs > 0 ? (double)total / secs : 0, (double)(t_acked - t0) / 1e6);
        if (o->rate > 0) {
            printf(",\"offered_per_s\":%ld,", o->rate);
            watch_report(&w);
        }
        printf("}\n");
    }
    watch_close(&w);
    rd_kafka_destroy(rk);
    return rc;
}

/* the number the caller wrote to the done file, or -1 while there is none */
static long done_count(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long n = -1;
    if (fscanf(f, "%ld", &n) != 1)
        n = -1;
    fclose(f);
    return n;
}

static int watch_only(const opts *o)
{
    watch w = {.measure_from_ms = (int64_t)o->from_ms};
    int rc = watch_open(&w, o);
    int64_t deadline = 0; /* set once the done file names the count */
    long expect = -1;
    /* bounded: a caller that never writes the done file ends this in an hour */
    int64_t give_up = now_us() + 3600LL * 1000000;
    while (rc == 0) {
        int64_t t = now_us();
        rc = watch_poll(&w);
        if (rc)
            break;
        if (expect < 0 && (expect = done_count(o->done_file)) >= 0)
            deadline = now_us() + DRAIN_MS * 1000LL;
        if (expect >= 0 && w.seen >= expect)
            break;
        if ((deadline && now_us() > deadline) || now_us() > give_up) {
            fprintf(stderr, "stlgen: %ld of %ld entries appeared within %d s of the load's end\n",
                    w.seen, expect, DRAIN_MS / 1000);
            rc = 1;
            break;
        }
        sleep_us(t + POLL_MS * 1000 - now_us());
    }
    if (rc == 0) {
        printf("{\"events\":%ld,", w.seen);
        watch_report(&w);
        printf("}\n");
    }
    watch_close(&w);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    opts o = {.tenant = "bench", .merchants = 1, .warmup = 2, .merchant_prefix = "m-"};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            return usage();
        const char *v = argv[++i];
        if (strcmp(a, "--target") == 0)
            o.target = v;
        else if (strcmp(a, "--brokers") == 0)
            o.brokers = v;
        else if (strcmp(a, "--topic") == 0)
            o.topic = v;
        else if (strcmp(a, "--tenant") == 0)
            o.tenant = v;
        else if (strcmp(a, "--dsn") == 0)
            o.dsn = v;
        else if (strcmp(a, "--schema") == 0)
            o.schema = v;
        else if (strcmp(a, "--events") == 0)
            o.events = strtol(v, NULL, 10);
        else if (strcmp(a, "--merchants") == 0)
            o.merchants = strtol(v, NULL, 10);
        else if (strcmp(a, "--rate") == 0)
            o.rate = strtol(v, NULL, 10);
        else if (strcmp(a, "--warmup") == 0)
            o.warmup = strtol(v, NULL, 10);
        else if (strcmp(a, "--merchant-prefix") == 0)
            o.merchant_prefix = v;
        else if (strcmp(a, "--done-file") == 0)
            o.done_file = v;
        else if (strcmp(a, "--from-ms") == 0)
            o.from_ms = strtoll(v, NULL, 10);
        else
            return usage();
    }
    if (o.merchants < 1 || o.merchants > 100000 || o.rate < 0 || o.warmup < 0)
        return usage();
    rng ^= (uint64_t)now_us();
    if (strcmp(argv[1], "setup") == 0)
        return o.target ? setup(&o) : usage();
    if (strlen(o.merchant_prefix) > 24)
        return usage();
    if (strcmp(argv[1], "watch") == 0) {
        if (!o.dsn || !o.schema || strchr(o.schema, '"') || !o.done_file || o.from_ms <= 0)
            return usage();
        return watch_only(&o);
    }
    if (strcmp(argv[1], "produce") == 0) {
        if (!o.brokers || !o.topic || o.events < 1 || o.events > 100000000)
            return usage();
        if (o.rate > 0 && (!o.dsn || !o.schema || strchr(o.schema, '"')))
            return usage();
        return produce(&o);
    }
    return usage();
}
