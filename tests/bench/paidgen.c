/*
 * commerce-paidgen: the settlement and commission benchmarks' fixtures, their
 * OrderPaid generator and their watchers (scripts/bench.sh settlement and
 * commission, tests/bench/README.md).
 *
 *   commerce-paidgen setup --target HOST:PORT [--tenant T] [--merchants M]
 *       [--merchant-prefix P]
 *       PutTenantSettings (cap 10000 bps) and, per merchant P0 .. P<M-1>
 *       (P: m-),
 *       PutSplitRule with the seed's rule: fee 30 bps + 10 shared pro rata,
 *       platform 50 % T+0, service provider 30 % T+1, sub-merchant 20 % T+0.
 *
 *   commerce-paidgen cms-setup --target HOST:PORT [--tenant T] [--channels C]
 *       [--mode marginal|whole]
 *       PutTierSchedule "bench-tiers" with the seed's table (CNY, monthly in
 *       Asia/Shanghai: 0 -> 5 %, 10,000.00 -> 8 %, 50,000.00 -> 12 %; mode
 *       marginal unless whole; paid by the merchant) and PutChannel ch-0 ..
 *       ch-<C-1> (community leaders on it, partner p-<k>).
 *
 *   commerce-paidgen produce --brokers B --topic T --events N [--tenant T]
 *       [--merchants M] [--channels C] [--rate R --warmup S --dsn DSN
 *       --schema S]
 *       N OrderPaid events as the order service's relay writes them (headers
 *       ce_id, ce_type, ce_source, content-type, tenant-id; key = order id;
 *       ids UUIDv7; amounts 1.00-1000.00 CNY, merchants round robin; with
 *       --channels C a channel each, skewed: half ch-0, the rest evenly
 *       ch-1 .. ch-<C-1>),
 *       idempotent producer, acks=all. without --rate: as fast as the
 *       broker takes them (a preload), then flushed. with --rate R: R events/s
 *       on a fixed schedule after S s of warmup at the same rate (not
 *       measured); each event's paid_at is its scheduled time, and the
 *       ledger (DSN, schema S; without --dsn nothing is watched) is
 *       polled every 5 ms for new split entries: an entry's latency is the
 *       poll that first saw it minus its order's paid_at (visible), and its
 *       posted_at minus paid_at (posted).
 *
 *   commerce-paidgen watch --dsn DSN --schema S --from-ms T --done-file F
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
 *   commerce-paidgen feed-setup --target HOST:PORT --channels C --url BASE
 *       --secrets FILE [--tenant T]
 *       PutPartner p-0 .. p-<C-1> (C <= 64), each owning the channel of
 *       cms-setup that names it (ch-<k>), its webhook BASE/p/p-<k>, and
 *       writes "p-<k> <secret>" lines to FILE (commerce-webhook-sink's).
 *
 *   commerce-paidgen watch-partner --brokers B --topic T --from-ms T
 *       --done-file F
 *       the commission benchmark's: consumes the partner topic T from its
 *       start, and for every accrued event (CloudEvents JSON) takes its
 *       latency as the time it arrived here - its commission's paid_at
 *       (posted: accrued_at - paid_at); counted when paid at or after T,
 *       until F holds the number of orders paid and that many accrued
 *       events arrived.
 *
 * prints one json line. exit: 0 ok, 1 a failure (produce, rpc, entries that
 * never appeared within 30 s of the last produce), 2 usage.
 */
#include "cm_id.h"
#include "cm_rpc_client.h"

#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commerce/commission/v1/commission_service.pb-c.h"
#include "commerce/events/v1/order_events.pb-c.h"
#include "commerce/settlement/v1/settlement_service.pb-c.h"

#define SVC "/commerce.settlement.v1.SettlementService/"
#define POLL_MS 5
#define DRAIN_MS 30000

typedef struct opts {
    const char *target, *brokers, *topic, *tenant, *dsn, *schema, *merchant_prefix, *done_file;
    const char *url, *secrets; /* feed-setup */
    long events, merchants, rate, warmup, channels;
    long long from_ms;
    int whole; /* cms-setup --mode whole */
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
            "usage: commerce-paidgen setup --target HOST:PORT [--tenant T] [--merchants M]\n"
            "           [--merchant-prefix P]\n"
            "       commerce-paidgen cms-setup --target HOST:PORT [--tenant T] [--channels C]\n"
            "           [--mode marginal|whole]\n"
            "       commerce-paidgen produce --brokers B --topic T --events N [--tenant T]\n"
            "           [--merchants M] [--channels C] [--rate R --warmup S --dsn DSN\n"
            "           --schema S]\n"
            "       commerce-paidgen watch --dsn DSN --schema S --from-ms T --done-file F\n"
            "       commerce-paidgen feed-setup --target HOST:PORT --channels C --url BASE\n"
            "           --secrets FILE [--tenant T]\n"
            "       commerce-paidgen watch-partner --brokers B --topic T --from-ms T\n"
            "           --done-file F\n");
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
        fprintf(stderr, "paidgen: %s: status %d %s (%s %s)\n", method, st.code, st.message,
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
        fprintf(stderr, "paidgen: client of %s: %s\n", o->target, err);
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

/* ---- cms-setup: the seed's tier table and the channels ---- */

#define CMS "/commerce.commission.v1.CommissionService/"

static int cms_setup(const opts *o)
{
    cm_rpc_client *c = NULL;
    char err[256];
    cm_rpc_client_opts co = {.target = o->target};
    if (cm_rpc_client_new(&c, &co, err, sizeof err)) {
        fprintf(stderr, "paidgen: client of %s: %s\n", o->target, err);
        return 1;
    }
    static const int64_t from[3] = {0, 1000000, 5000000}; /* 0, 10,000.00, 50,000.00 */
    static const int bps[3] = {500, 800, 1200};
    Commerce__Common__V1__Money m[3];
    Commerce__Commission__V1__Tier t[3], *tp[3];
    for (int i = 0; i < 3; i++) {
        commerce__common__v1__money__init(&m[i]);
        m[i].amount_minor = from[i];
        m[i].currency = "CNY";
        commerce__commission__v1__tier__init(&t[i]);
        t[i].from_sales = &m[i];
        t[i].rate_bps = bps[i];
        tp[i] = &t[i];
    }
    Commerce__Commission__V1__TierSchedule ts = COMMERCE__COMMISSION__V1__TIER_SCHEDULE__INIT;
    ts.tier_schedule_id = "bench-tiers";
    ts.name = "the seed's table";
    ts.currency = "CNY";
    ts.period = COMMERCE__COMMISSION__V1__PERIOD_TYPE__PERIOD_TYPE_MONTH;
    ts.time_zone = "Asia/Shanghai";
    ts.tiers = tp;
    ts.n_tiers = 3;
    ts.mode = o->whole ? COMMERCE__COMMISSION__V1__TIER_MODE__TIER_MODE_WHOLE_VOLUME
                       : COMMERCE__COMMISSION__V1__TIER_MODE__TIER_MODE_MARGINAL;
    ts.payer = COMMERCE__COMMISSION__V1__COMMISSION_PAYER__COMMISSION_PAYER_MERCHANT;
    Commerce__Commission__V1__PutTierScheduleRequest tr =
        COMMERCE__COMMISSION__V1__PUT_TIER_SCHEDULE_REQUEST__INIT;
    tr.request_id = "bench-tiers";
    tr.schedule = &ts;
    int rc = call(c, o->tenant, CMS "PutTierSchedule", &tr.base,
                  &commerce__commission__v1__put_tier_schedule_response__descriptor);
    for (long k = 0; rc == 0 && k < o->channels; k++) {
        char id[32], partner[32], req[48];
        snprintf(id, sizeof id, "ch-%ld", k);
        snprintf(partner, sizeof partner, "p-%ld", k);
        snprintf(req, sizeof req, "bench-channel-%ld", k);
        Commerce__Commission__V1__Channel ch = COMMERCE__COMMISSION__V1__CHANNEL__INIT;
        ch.channel_id = id;
        ch.name = id;
        ch.type = COMMERCE__COMMISSION__V1__CHANNEL_TYPE__CHANNEL_TYPE_COMMUNITY_LEADER;
        ch.state = COMMERCE__COMMISSION__V1__CHANNEL_STATE__CHANNEL_STATE_ACTIVE;
        ch.tier_schedule_id = "bench-tiers";
        ch.partner_id = partner;
        Commerce__Commission__V1__PutChannelRequest pr =
            COMMERCE__COMMISSION__V1__PUT_CHANNEL_REQUEST__INIT;
        pr.request_id = req;
        pr.channel = &ch;
        rc = call(c, o->tenant, CMS "PutChannel", &pr.base,
                  &commerce__commission__v1__put_channel_response__descriptor);
    }
    cm_rpc_client_free(c);
    if (rc == 0)
        printf("{\"tenant\":\"%s\",\"channels\":%ld,\"mode\":\"%s\"}\n", o->tenant, o->channels,
               o->whole ? "whole" : "marginal");
    return rc;
}

/* ---- feed-setup: partners p-0 .. p-<C-1> with webhooks ---- */

/* the partners of cms-setup's channels: p-<k> owns ch-<k> (the channel
 * names it already), its webhook <url>/p/p-<k>, kafka off; writes
 * "p-<k> <secret>" lines to the secrets file for the receiver */
static int feed_setup(const opts *o)
{
    cm_rpc_client *c = NULL;
    char err[256];
    cm_rpc_client_opts co = {.target = o->target};
    if (cm_rpc_client_new(&c, &co, err, sizeof err)) {
        fprintf(stderr, "paidgen: client of %s: %s\n", o->target, err);
        return 1;
    }
    FILE *f = fopen(o->secrets, "w");
    if (!f) {
        perror(o->secrets);
        cm_rpc_client_free(c);
        return 1;
    }
    int rc = 0;
    for (long k = 0; rc == 0 && k < o->channels; k++) {
        char id[32], ch[32], url[512], req[48];
        snprintf(id, sizeof id, "p-%ld", k);
        snprintf(ch, sizeof ch, "ch-%ld", k);
        snprintf(url, sizeof url, "%s/p/%s", o->url, id);
        snprintf(req, sizeof req, "bench-partner-%ld", k);
        char *chans[1] = {ch};
        Commerce__Commission__V1__PartnerWebhook w =
            COMMERCE__COMMISSION__V1__PARTNER_WEBHOOK__INIT;
        w.enabled = 1;
        w.url = url;
        Commerce__Commission__V1__Partner p = COMMERCE__COMMISSION__V1__PARTNER__INIT;
        p.partner_id = id;
        p.name = id;
        p.channel_ids = chans;
        p.n_channel_ids = 1;
        p.webhook = &w;
        Commerce__Commission__V1__PutPartnerRequest r =
            COMMERCE__COMMISSION__V1__PUT_PARTNER_REQUEST__INIT;
        r.request_id = req;
        r.partner = &p;
        cm_rpc_md md[1] = {{"x-tenant-id", o->tenant}};
        cm_rpc_status st;
        ProtobufCMessage *resp = NULL;
        int code = cm_rpc_call(c, CMS "PutPartner", &r.base,
                               &commerce__commission__v1__put_partner_response__descriptor, NULL,
                               &resp, md, 1, 15000, CM_RPC_CALL_IDEMPOTENT, &st);
        if (code != 0) {
            fprintf(stderr, "paidgen: PutPartner %s: %d %s\n", id, st.code, st.message);
            rc = 1;
            break;
        }
        fprintf(f, "%s %s\n", id,
                ((Commerce__Commission__V1__PutPartnerResponse *)resp)->webhook_secret);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    if (fclose(f))
        rc = 1;
    cm_rpc_client_free(c);
    if (rc == 0)
        printf("{\"tenant\":\"%s\",\"partners\":%ld}\n", o->tenant, o->channels);
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
    char channel[32];
    if (o->channels > 0) {
        uint64_t x = next_rand();
        long ch =
            (x & 1) || o->channels == 1 ? 0 : 1 + (long)((x >> 1) % (uint64_t)(o->channels - 1));
        snprintf(channel, sizeof channel, "ch-%ld", ch);
        ord.channel_id = channel;
    }
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
            fprintf(stderr, "paidgen: produce to %s: %s\n", o->topic, rd_kafka_err2str(err));
            return 1;
        }
        rd_kafka_poll(rk, 10);
    }
    fprintf(stderr, "paidgen: the producer's queue stayed full for a minute\n");
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
        fprintf(stderr, "paidgen: polling the ledger: %s", PQerrorMessage(w->pg));
        PQclear(r);
        return 1;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        long long id = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        double paid = strtod(PQgetvalue(r, i, 2), NULL);
        double posted = strtod(PQgetvalue(r, i, 3), NULL);
        if (id > w->last_id)
            w->last_id = id;
        if (strcmp(PQgetvalue(r, i, 1), "1") != 0)
            continue; /* not a split (payouts, ...) */
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
        fprintf(stderr, "paidgen: %s", PQerrorMessage(w->pg));
        return 1;
    }
    /* the watcher must cost the run it measures next to nothing: a few new
     * entries every 5 ms, found by the primary key, each one's order_splits
     * row probed by its key. the entry's kind is filtered here, not in the
     * where clause: the tables grow faster than statistics follow, and
     * with "kind = 1" the planner (at its defaults, the dsn's) and-ed the
     * key range with a scan of every split in entries_once, and before
     * that hashed all of order_splits: 1.1-1.6 ms a poll, a fifth of
     * postgres' work in the MarkPaid run it measured. */
    snprintf(w->sql, sizeof w->sql,
             "SELECT e.entry_id, e.kind, (SELECT extract(epoch FROM s.paid_at) * 1000 FROM "
             "\"%s\".order_splits s WHERE s.tenant_id = e.tenant_id AND s.order_id = "
             "e.order_id), extract(epoch FROM e.posted_at) * 1000 FROM \"%s\".entries e "
             "WHERE e.entry_id > $1 ORDER BY e.entry_id LIMIT 10000",
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
    /* idempotent, acks=all as the services' relays; linger 5 ms, not their
     * KAFKA_LINGER_MS (20): the benchmarks' input, kept as first measured */
    const char *kv[][2] = {{"bootstrap.servers", o->brokers},
                           {"enable.idempotence", "true"},
                           {"acks", "all"},
                           {"linger.ms", "5"},
                           {"queue.buffering.max.messages", "200000"},
                           {"log_level", "3"}};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
        if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], err, sizeof err) != RD_KAFKA_CONF_OK) {
            fprintf(stderr, "paidgen: %s: %s\n", kv[i][0], err);
            rd_kafka_conf_destroy(conf);
            return 1;
        }
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "paidgen: kafka producer: %s\n", err);
        return 1;
    }
    watch w = {0};
    int rc = 0;
    int watching = o->rate > 0 && o->dsn;
    if (watching)
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
                if (watching && t >= next_poll) {
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
        fprintf(stderr, "paidgen: %ld of %ld records not acknowledged\n", total - delivered, total);
        rc = 1;
    }
    int64_t t_acked = now_us();
    /* paced: every entry visible, or give up 30 s after the last produce */
    int64_t deadline = now_us() + DRAIN_MS * 1000LL;
    while (rc == 0 && watching && w.seen < total && now_us() < deadline) {
        rc = watch_poll(&w);
        sleep_us(POLL_MS * 1000);
    }
    if (rc == 0 && watching && w.seen < total) {
        fprintf(stderr, "paidgen: %ld of %ld entries appeared within %d s of the last produce\n",
                w.seen, total, DRAIN_MS / 1000);
        rc = 1;
    }
    if (rc == 0) {
        double secs = (double)(t_produced - t0) / 1e6;
        printf("{\"events\":%ld,\"produced_per_s\":%.0f,\"acked_s\":%.3f", total,
               secs > 0 ? (double)total / secs : 0, (double)(t_acked - t0) / 1e6);
        if (o->rate > 0)
            printf(",\"offered_per_s\":%ld", o->rate);
        if (watching) {
            printf(",");
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
            fprintf(stderr, "paidgen: %ld of %ld entries appeared within %d s of the load's end\n",
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

/* "2026-11-20T02:15:29.870Z" -> epoch ms; -1 when it is not that shape */
static int64_t rfc3339_ms(const char *s)
{
    struct tm tm = {0};
    int ms = 0;
    if (!s || sscanf(s, "%d-%d-%dT%d:%d:%d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                     &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

/* one partner-topic record: an accrued event counted, its latency kept */
static void partner_record(watch *w, const rd_kafka_message_t *m, int64_t arrived_ms)
{
    json_error_t jerr;
    json_t *e = json_loadb(m->payload, m->len, 0, &jerr);
    const char *type = NULL, *paid = NULL, *accrued = NULL;
    if (!e ||
        json_unpack(e, "{s:s, s:{s:{s:s, s:s}}}", "type", &type, "data", "commission", "paid_at",
                    &paid, "accrued_at", &accrued) ||
        strcmp(type, "com.commerce.commission.v1.accrued") != 0) {
        json_decref(e);
        return;
    }
    int64_t p = rfc3339_ms(paid), a = rfc3339_ms(accrued);
    json_decref(e);
    if (p < 0 || a < 0)
        return;
    w->seen++;
    if (p < w->measure_from_ms)
        return;
    if (w->n == w->cap) {
        long cap = w->cap ? 2 * w->cap : 4096;
        double *v = realloc(w->vis, (size_t)cap * sizeof *v);
        if (!v)
            return;
        w->vis = v;
        double *q = realloc(w->posted, (size_t)cap * sizeof *q);
        if (!q)
            return;
        w->posted = q;
        w->cap = cap;
    }
    w->vis[w->n] = (double)(arrived_ms - p);
    w->posted[w->n] = (double)(a - p);
    w->n++;
}

static int watch_partner(const opts *o)
{
    char err[512], group[64];
    snprintf(group, sizeof group, "bench.watch.%lld", (long long)now_us());
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *kv[][2] = {{"bootstrap.servers", o->brokers}, {"group.id", group},
                           {"auto.offset.reset", "earliest"}, {"enable.auto.commit", "false"},
                           {"fetch.wait.max.ms", "5"},        {"log_level", "3"}};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
        if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], err, sizeof err) != RD_KAFKA_CONF_OK) {
            fprintf(stderr, "paidgen: %s: %s\n", kv[i][0], err);
            rd_kafka_conf_destroy(conf);
            return 1;
        }
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "paidgen: kafka consumer: %s\n", err);
        return 1;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, o->topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    int rc = 0;
    if (e) {
        fprintf(stderr, "paidgen: subscribe %s: %s\n", o->topic, rd_kafka_err2str(e));
        rc = 1;
    }
    watch w = {.measure_from_ms = (int64_t)o->from_ms};
    long expect = -1;
    int64_t deadline = 0, give_up = now_us() + 3600LL * 1000000;
    while (rc == 0) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, POLL_MS);
        if (m) {
            if (!m->err)
                partner_record(&w, m, now_ms());
            else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fprintf(stderr, "paidgen: consume: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
        }
        if (expect < 0 && (expect = done_count(o->done_file)) >= 0)
            deadline = now_us() + DRAIN_MS * 1000LL;
        if (expect >= 0 && w.seen >= expect)
            break;
        if ((deadline && now_us() > deadline) || now_us() > give_up) {
            fprintf(stderr,
                    "paidgen: %ld of %ld accrued events arrived within %d s of the "
                    "load's end\n",
                    w.seen, expect, DRAIN_MS / 1000);
            rc = 1;
        }
    }
    if (rc == 0) {
        printf("{\"events\":%ld,", w.seen);
        watch_report(&w);
        printf("}\n");
    }
    watch_close(&w);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
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
        else if (strcmp(a, "--channels") == 0)
            o.channels = strtol(v, NULL, 10);
        else if (strcmp(a, "--mode") == 0) {
            if (strcmp(v, "whole") != 0 && strcmp(v, "marginal") != 0)
                return usage();
            o.whole = strcmp(v, "whole") == 0;
        } else if (strcmp(a, "--merchant-prefix") == 0)
            o.merchant_prefix = v;
        else if (strcmp(a, "--done-file") == 0)
            o.done_file = v;
        else if (strcmp(a, "--from-ms") == 0)
            o.from_ms = strtoll(v, NULL, 10);
        else if (strcmp(a, "--url") == 0)
            o.url = v;
        else if (strcmp(a, "--secrets") == 0)
            o.secrets = v;
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
    if (o.channels < 0 || o.channels > 1000000)
        return usage();
    if (strcmp(argv[1], "cms-setup") == 0)
        return o.target && o.channels > 0 ? cms_setup(&o) : usage();
    if (strcmp(argv[1], "feed-setup") == 0)
        return o.target && o.url && o.secrets && o.channels > 0 && o.channels <= 64 ? feed_setup(&o)
                                                                                    : usage();
    if (strcmp(argv[1], "watch-partner") == 0) {
        if (!o.brokers || !o.topic || !o.done_file || o.from_ms <= 0)
            return usage();
        return watch_partner(&o);
    }
    if (strcmp(argv[1], "watch") == 0) {
        if (!o.dsn || !o.schema || strchr(o.schema, '"') || !o.done_file || o.from_ms <= 0)
            return usage();
        return watch_only(&o);
    }
    if (strcmp(argv[1], "produce") == 0) {
        if (!o.brokers || !o.topic || o.events < 1 || o.events > 100000000)
            return usage();
        if (o.dsn && (!o.schema || strchr(o.schema, '"')))
            return usage();
        return produce(&o);
    }
    return usage();
}
