/*
 * commerce-commission against the private postgres and the broker:
 * channels and tier schedules, accrual and clawback from order events
 * (played by the test on a topic of its own, so that every case controls
 * ids, order and duplicates exactly), true-ups, parent shares, parking,
 * idempotency, tenant isolation, and the events it publishes.
 */
#include "harness.h"

#include <check.h>
#include <grpc/status.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cm_id.h"
#include "commerce/commission/v1/commission_service.pb-c.h"
#include "commerce/events/v1/commission_events.pb-c.h"
#include "commerce/events/v1/order_events.pb-c.h"

#define SVC "/commerce.commission.v1.CommissionService/"
#define TENANT "tenant-cms"
#define CT(x) COMMERCE__COMMISSION__V1__CHANNEL_TYPE__CHANNEL_TYPE_##x
#define MARGINAL COMMERCE__COMMISSION__V1__TIER_MODE__TIER_MODE_MARGINAL
#define WHOLE COMMERCE__COMMISSION__V1__TIER_MODE__TIER_MODE_WHOLE_VOLUME
#define ACTIVE COMMERCE__COMMISSION__V1__CHANNEL_STATE__CHANNEL_STATE_ACTIVE
#define SUSPENDED COMMERCE__COMMISSION__V1__CHANNEL_STATE__CHANNEL_STATE_SUSPENDED

static const cm_rpc_md md[1] = {{"x-tenant-id", TENANT}};
static const cm_rpc_md md_other[1] = {{"x-tenant-id", TENANT "-other"}};

typedef struct st {
    char schema[64], otopic[128], ctopic[128], ptopic[128], group[128];
    char e[5][192];
    hs_proc p;
    cm_rpc_client *c;
    hs_producer *prod;
    hs_topic *events; /* the commission topic */
} st;

static st S;
static int seq;

static const char *const *st_env(st *s, const char **env, size_t cap, const char *const *extra)
{
    /* the partner feed has its own test (integration.partner_feed) */
    const char *base[] = {s->e[0], s->e[1], s->e[2], s->e[3], s->e[4], "COMMISSION_FEED=off", NULL};
    return hs_env_join(env, cap, base, extra);
}

static void st_start_env(st *s, const char *tag, const char *const *extra)
{
    memset(s, 0, sizeof *s);
    seq++;
    int pid = (int)getpid();
    snprintf(s->schema, sizeof s->schema, "cms_%s_%d_%d", tag, pid, seq);
    snprintf(s->otopic, sizeof s->otopic, "commerce.order.v1.cms-%s-%d-%d", tag, pid, seq);
    snprintf(s->ctopic, sizeof s->ctopic, "commerce.commission.v1.%s-%d-%d", tag, pid, seq);
    snprintf(s->ptopic, sizeof s->ptopic, "commerce.commission.partner.v1.%s-%d-%d", tag, pid, seq);
    snprintf(s->group, sizeof s->group, "commerce.commission.%s-%d-%d", tag, pid, seq);
    hs_kafka_create_topic(hs_kafka_brokers(), s->otopic, 2);
    hs_kafka_create_topic(hs_kafka_brokers(), s->ctopic, 2);
    hs_kafka_create_topic(hs_kafka_brokers(), s->ptopic, 2);
    snprintf(s->e[0], sizeof s->e[0], "COMMISSION_SCHEMA=%s", s->schema);
    snprintf(s->e[1], sizeof s->e[1], "COMMISSION_ORDER_TOPIC=%s", s->otopic);
    snprintf(s->e[2], sizeof s->e[2], "COMMISSION_ORDER_GROUP=%s", s->group);
    snprintf(s->e[3], sizeof s->e[3], "COMMISSION_TOPIC=%s", s->ctopic);
    snprintf(s->e[4], sizeof s->e[4], "COMMISSION_PARTNER_TOPIC=%s", s->ptopic);
    const char *env[32];
    hs_start(&s->p, COMMISSION_BIN, st_env(s, env, 32, extra));
    s->c = hs_client(&s->p, NULL);
    s->prod = hs_producer_new(hs_kafka_brokers());
    s->events = hs_topic_open(hs_kafka_brokers(), s->ctopic, 0);
}

static void st_start(st *s, const char *tag)
{
    st_start_env(s, tag, NULL);
}

static void st_stop(st *s)
{
    cm_rpc_client_free(s->c);
    hs_producer_free(s->prod);
    hs_topic_close(s->events);
    ck_assert_msg(hs_stop(&s->p, SIGTERM, 30000) == 0, "commission did not exit 0 (log %s)",
                  s->p.log_path);
    hs_kafka_delete_topic(hs_kafka_brokers(), s->otopic);
    hs_kafka_delete_topic(hs_kafka_brokers(), s->ctopic);
    hs_kafka_delete_topic(hs_kafka_brokers(), s->ptopic);
    hs_drop_schema(NULL, s->schema);
}

static void teardown(void)
{
    hs_teardown();
}

/* ---- schedules and channels ---- */

/* the seed's table: 0-9,999.99 5 %, 10,000-49,999.99 8 %, >= 50,000 12 % */
typedef struct seed_sched {
    Commerce__Common__V1__Money from[3];
    Commerce__Commission__V1__Tier t[3], *tp[3];
    Commerce__Commission__V1__ChannelType types[3];
    Commerce__Commission__V1__TierSchedule s;
} seed_sched;

static void seed(seed_sched *x, const char *id, int mode)
{
    static const long long from[3] = {0, 1000000, 5000000};
    static const int bps[3] = {500, 800, 1200};
    for (int i = 0; i < 3; i++) {
        commerce__common__v1__money__init(&x->from[i]);
        x->from[i].amount_minor = from[i];
        x->from[i].currency = "CNY";
        commerce__commission__v1__tier__init(&x->t[i]);
        x->t[i].from_sales = &x->from[i];
        x->t[i].rate_bps = bps[i];
        x->tp[i] = &x->t[i];
    }
    x->types[0] = CT(COMMUNITY_LEADER);
    x->types[1] = CT(REGIONAL_AGENT);
    x->types[2] = CT(PROVINCIAL_AGENT);
    commerce__commission__v1__tier_schedule__init(&x->s);
    x->s.tier_schedule_id = (char *)id;
    x->s.name = "seed";
    x->s.currency = "CNY";
    x->s.period = COMMERCE__COMMISSION__V1__PERIOD_TYPE__PERIOD_TYPE_MONTH;
    x->s.time_zone = "Asia/Shanghai";
    x->s.tiers = x->tp;
    x->s.n_tiers = 3;
    x->s.mode = mode;
}

static int put_schedule(st *s, const char *req_id, Commerce__Commission__V1__TierSchedule *sc,
                        long long expected, cm_rpc_status *stt)
{
    Commerce__Commission__V1__PutTierScheduleRequest r =
        COMMERCE__COMMISSION__V1__PUT_TIER_SCHEDULE_REQUEST__INIT;
    r.request_id = (char *)req_id;
    r.schedule = sc;
    r.expected_revision = expected;
    return hs_call(s->c, SVC "PutTierSchedule", &r.base,
                   &commerce__commission__v1__put_tier_schedule_response__descriptor, NULL, stt, md,
                   1);
}

static int put_channel_full(st *s, const cm_rpc_md *m, const char *req_id, const char *id, int type,
                            int state, const char *parent, int bps, const char *sched,
                            long long expected, cm_rpc_status *stt)
{
    Commerce__Commission__V1__Channel c = COMMERCE__COMMISSION__V1__CHANNEL__INIT;
    c.channel_id = (char *)id;
    c.name = "a channel";
    c.type = type;
    c.state = state;
    c.parent_channel_id = (char *)(parent ? parent : "");
    c.parent_override_bps = bps;
    c.tier_schedule_id = (char *)(sched ? sched : "");
    Commerce__Commission__V1__PutChannelRequest r =
        COMMERCE__COMMISSION__V1__PUT_CHANNEL_REQUEST__INIT;
    r.request_id = (char *)req_id;
    r.channel = &c;
    r.expected_revision = expected;
    return hs_call(s->c, SVC "PutChannel", &r.base,
                   &commerce__commission__v1__put_channel_response__descriptor, NULL, stt, m, 1);
}

static void put_channel(st *s, const char *id, int state, const char *parent, int bps,
                        const char *sched)
{
    cm_rpc_status stt;
    char req[96];
    snprintf(req, sizeof req, "ch-%s-%d", id, state);
    int code =
        put_channel_full(s, md, req, id, CT(COMMUNITY_LEADER), state, parent, bps, sched, 0, &stt);
    ck_assert_msg(code == 0, "PutChannel %s: %d %s %s", id, code, stt.field, stt.message);
}

/* ---- order events, as the order service would send them ---- */

static void send_event(st *s, const char *type, const char *order_id, const char *event_id,
                       const char *tenant, const ProtobufCMessage *m)
{
    hs_produce_event(s->prod, s->otopic, order_id, type, "/commerce/order", event_id, tenant, m);
}

static void paid_by(st *s, const char *tenant, const char *order_id, const char *event_id,
                    const char *channel, const char *merchant, long long amount, long long paid_ms)
{
    Commerce__Common__V1__Money m = COMMERCE__COMMON__V1__MONEY__INIT;
    m.amount_minor = amount;
    m.currency = "CNY";
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = paid_ms / 1000;
    at.nanos = (int32_t)(paid_ms % 1000) * 1000000;
    Commerce__Order__V1__Payment pay = COMMERCE__ORDER__V1__PAYMENT__INIT;
    pay.payment_id = "pay-1";
    pay.amount = &m;
    pay.paid_at = &at;
    Commerce__Order__V1__Order o = COMMERCE__ORDER__V1__ORDER__INIT;
    o.order_id = (char *)order_id;
    o.merchant_id = (char *)merchant;
    o.channel_id = (char *)channel;
    o.currency = "CNY";
    o.total_amount = &m;
    o.payment = &pay;
    Commerce__Events__V1__OrderPaid e = COMMERCE__EVENTS__V1__ORDER_PAID__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = (char *)tenant;
    e.order_id = (char *)order_id;
    e.order = &o;
    send_event(s, "commerce.events.v1.OrderPaid", order_id, event_id, tenant, &e.base);
}

static void paid_in(st *s, const char *tenant, const char *order_id, const char *event_id,
                    const char *channel, long long amount, long long paid_ms)
{
    paid_by(s, tenant, order_id, event_id, channel, "m-1", amount, paid_ms);
}

static long long T0; /* one paid_at per test: every order in one period */

static void paid(st *s, const char *order_id, const char *event_id, const char *channel,
                 long long amount)
{
    paid_in(s, TENANT, order_id, event_id, channel, amount, T0);
}

static void refunded(st *s, const char *order_id, const char *event_id, const char *channel,
                     const char *refund_id, long long amount)
{
    Commerce__Common__V1__Money m = COMMERCE__COMMON__V1__MONEY__INIT;
    m.amount_minor = amount;
    m.currency = "CNY";
    Commerce__Order__V1__Refund rf = COMMERCE__ORDER__V1__REFUND__INIT;
    rf.refund_id = (char *)refund_id;
    rf.amount = &m;
    Commerce__Order__V1__Order o = COMMERCE__ORDER__V1__ORDER__INIT;
    o.order_id = (char *)order_id;
    o.channel_id = (char *)channel;
    Commerce__Events__V1__OrderRefunded e = COMMERCE__EVENTS__V1__ORDER_REFUNDED__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = TENANT;
    e.order_id = (char *)order_id;
    e.order = &o;
    e.refund = &rf;
    send_event(s, "commerce.events.v1.OrderRefunded", order_id, event_id, TENANT, &e.base);
}

static void completed_in(st *s, const char *tenant, const char *order_id, const char *event_id,
                         const char *channel, long long at_ms)
{
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = at_ms / 1000;
    at.nanos = (int32_t)(at_ms % 1000) * 1000000;
    Commerce__Order__V1__Order o = COMMERCE__ORDER__V1__ORDER__INIT;
    o.order_id = (char *)order_id;
    o.channel_id = (char *)channel;
    Commerce__Events__V1__OrderCompleted e = COMMERCE__EVENTS__V1__ORDER_COMPLETED__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = (char *)tenant;
    e.occurred_at = &at;
    e.order_id = (char *)order_id;
    e.order = &o;
    send_event(s, "commerce.events.v1.OrderCompleted", order_id, event_id, tenant, &e.base);
}

static void completed(st *s, const char *order_id, const char *event_id, const char *channel,
                      long long at_ms)
{
    completed_in(s, TENANT, order_id, event_id, channel, at_ms);
}

static char *uuid(void)
{
    static char ids[64][CM_ID_SIZE];
    static int k;
    char *id = ids[k++ % 64];
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    return id;
}

/* an order id of the form the order service gives: a UUIDv8 (what the
 * partner schema requires) */
static char *order_uuid(void)
{
    char *id = uuid();
    id[14] = '8';
    return id;
}

/* ---- reading ---- */
static void sql_do(const st *s, const char *q);

/* CheckInvariants: the number of violations (their list in *out when set) */
static size_t invariants(st *s, const char *channel,
                         Commerce__Commission__V1__CheckInvariantsResponse **out)
{
    Commerce__Commission__V1__CheckInvariantsRequest r =
        COMMERCE__COMMISSION__V1__CHECK_INVARIANTS_REQUEST__INIT;
    r.channel_id = (char *)(channel ? channel : "");
    Commerce__Commission__V1__CheckInvariantsResponse *resp = NULL;
    cm_rpc_status stt;
    ck_assert_int_eq(hs_call(s->c, SVC "CheckInvariants", &r.base,
                             &commerce__commission__v1__check_invariants_response__descriptor,
                             (ProtobufCMessage **)&resp, &stt, md, 1),
                     0);
    size_t n = resp->n_violations;
    for (size_t i = 0; i < n; i++) {
        Commerce__Commission__V1__CommissionViolation *v = resp->violations[i];
        fprintf(stderr, "violation: %s %s rev %lld net %lld posted %lld expected %lld: %s\n",
                v->channel_id, v->tier_schedule_id, (long long)v->tier_schedule_revision,
                (long long)v->net_sales->amount_minor, (long long)v->posted->amount_minor,
                (long long)v->expected->amount_minor, v->description);
    }
    if (out)
        *out = resp;
    else
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return n;
}

static long long sql(const st *s, const char *q)
{
    return hs_sql_long(s->schema, q);
}

static void wait_for(const st *s, const char *q, long long want)
{
    hs_wait_sql(s->schema, q, want, s->p.log_path);
}

/* a column of an order's commission */
static long long comm_col(const st *s, const char *col, const char *order_id)
{
    char q[512];
    snprintf(q, sizeof q, "SELECT %s FROM commissions WHERE order_id = '%s'", col, order_id);
    return sql(s, q);
}

/* what a channel's period rows say, and what was posted to the channel:
 * commissions net of clawbacks plus adjustments (a CLAWBACK adjustment
 * nets a clawback from payouts, it is no posting of its own) */
static long long posted(const st *s, const char *ch)
{
    char q[512];
    snprintf(q, sizeof q,
             "SELECT coalesce(sum(posted), 0) FROM channel_periods WHERE channel_id = '%s'", ch);
    return sql(s, q);
}

static long long earned(const st *s, const char *ch)
{
    char q[512];
    snprintf(q, sizeof q,
             "SELECT (SELECT coalesce(sum(amount - clawed_back), 0) FROM commissions WHERE "
             "channel_id = '%s') + (SELECT coalesce(sum(amount), 0) FROM adjustments WHERE "
             "channel_id = '%s' AND kind <> 3)",
             ch, ch);
    return sql(s, q);
}

static Commerce__Commission__V1__ChannelSummary *summary(st *s, const char *ch)
{
    Commerce__Commission__V1__GetChannelSummaryRequest r =
        COMMERCE__COMMISSION__V1__GET_CHANNEL_SUMMARY_REQUEST__INIT;
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = T0 / 1000;
    r.channel_id = (char *)ch;
    r.at = &at;
    Commerce__Commission__V1__GetChannelSummaryResponse *resp = NULL;
    cm_rpc_status stt;
    int code = hs_call(s->c, SVC "GetChannelSummary", &r.base,
                       &commerce__commission__v1__get_channel_summary_response__descriptor,
                       (ProtobufCMessage **)&resp, &stt, md, 1);
    ck_assert_msg(code == 0, "GetChannelSummary: %d %s", code, stt.message);
    Commerce__Commission__V1__ChannelSummary *sum = resp->summary;
    resp->summary = NULL;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return sum;
}

/* ---- tests ---- */

START_TEST(seed_table_to_the_minor_unit_in_both_modes)
{
    st_start(&S, "seed");
    T0 = hs_real_ms() + 60000; /* after the schedule, however slow the setup */
    seed_sched m, w;
    seed(&m, "marginal", MARGINAL);
    seed(&w, "whole", WHOLE);
    cm_rpc_status stt;
    ck_assert_int_eq(put_schedule(&S, "s-1", &m.s, 0, &stt), 0);
    ck_assert_int_eq(put_schedule(&S, "s-2", &w.s, 0, &stt), 0);
    put_channel(&S, "ch-m", ACTIVE, NULL, 0, "marginal");
    put_channel(&S, "ch-w", ACTIVE, NULL, 0, "whole");
    /* 60,000.00 in one month, as six orders of 10,000.00. om[0] accrues
     * first: the refund below takes back its own commission, the first
     * slice's 500.00, only if it came first, and the topic's two partitions
     * would otherwise let any of the six arrive first (the totals do not
     * depend on it, the refunded order's own commission does) */
    char om[6][CM_ID_SIZE];
    for (int i = 0; i < 6; i++)
        snprintf(om[i], sizeof om[i], "%s", uuid());
    paid(&S, om[0], uuid(), "ch-m", 1000000);
    wait_for(&S, "SELECT count(*) FROM commissions", 1);
    for (int i = 0; i < 6; i++) {
        if (i > 0)
            paid(&S, om[i], uuid(), "ch-m", 1000000);
        paid(&S, uuid(), uuid(), "ch-w", 1000000);
    }
    wait_for(&S, "SELECT count(*) FROM commissions", 12);
    /* marginal 4,900.00: 500, 800 x 4, 1,200 */
    ck_assert_int_eq(posted(&S, "ch-m"), 490000);
    ck_assert_int_eq(earned(&S, "ch-m"), 490000);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM commissions WHERE channel_id = 'ch-m' AND "
                             "amount = 80000 AND sales_before BETWEEN 1000000 AND 4000000"),
                     4);
    ck_assert_int_eq(sql(&S, "SELECT amount FROM commissions WHERE channel_id = 'ch-m' AND "
                             "sales_before = 0"),
                     50000);
    ck_assert_int_eq(sql(&S, "SELECT amount FROM commissions WHERE channel_id = 'ch-m' AND "
                             "sales_before = 5000000"),
                     120000);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM adjustments WHERE channel_id = 'ch-m'"), 0);
    /* whole volume 7,200.00: 800 x 4, then the fifth reaches 50,000.00:
     * 1,200 and a true-up of +1,600 for the first 40,000.00; the sixth 1,200 */
    ck_assert_int_eq(posted(&S, "ch-w"), 720000);
    ck_assert_int_eq(earned(&S, "ch-w"), 720000);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM commissions WHERE channel_id = 'ch-w' AND "
                             "amount = 80000"),
                     4);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM commissions WHERE channel_id = 'ch-w' AND "
                             "amount = 120000"),
                     2);
    ck_assert_int_eq(sql(&S, "SELECT amount FROM adjustments WHERE channel_id = 'ch-w' AND kind "
                             "= 1 AND period_start = (SELECT period_start FROM commissions LIMIT "
                             "1)"),
                     160000);
    /* brackets of the marginal order crossing nothing; whole volume: one */
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM commissions WHERE cardinality(bracket_sales) "
                             "<> 1"),
                     0);
    /* the dashboard: 60,000.00 in the top tier, nothing to reach */
    Commerce__Commission__V1__ChannelSummary *sum = summary(&S, "ch-w");
    ck_assert_int_eq(sum->period_sales->amount_minor, 6000000);
    ck_assert_int_eq(sum->period_orders, 6);
    ck_assert_int_eq(sum->period_commission->amount_minor, 720000);
    ck_assert_int_eq(sum->current_tier, 2);
    ck_assert_int_eq(sum->current_rate_bps, 1200);
    ck_assert_ptr_null(sum->sales_to_next_tier);
    ck_assert_int_eq(sum->frozen->amount_minor, 720000);
    ck_assert_int_eq(sum->mode, WHOLE);
    protobuf_c_message_free_unpacked(&sum->base, NULL);
    /* refunding the first marginal order: its own 500 back, a true-up of
     * -700 (the remaining 50,000.00 earn 3,700.00) */
    refunded(&S, om[0], uuid(), "ch-m", "rf-1", 1000000);
    wait_for(&S, "SELECT count(*) FROM refunds_applied", 1);
    ck_assert_int_eq(sql(&S, "SELECT clawed_back FROM commissions WHERE state = 4"), 50000);
    ck_assert_int_eq(sql(&S, "SELECT amount FROM adjustments WHERE channel_id = 'ch-m'"), -70000);
    ck_assert_int_eq(posted(&S, "ch-m"), 370000);
    ck_assert_int_eq(earned(&S, "ch-m"), 370000);
    sum = summary(&S, "ch-m");
    ck_assert_int_eq(sum->period_sales->amount_minor, 5000000);
    ck_assert_int_eq(sum->period_commission->amount_minor, 370000);
    ck_assert_int_eq(sum->current_tier, 2);
    protobuf_c_message_free_unpacked(&sum->base, NULL);
    /* its events: 12 accrued, 1 true-up, 1 clawback, 1 true-up, keyed by
     * the channel */
    ck_assert_uint_ge(hs_topic_read(S.events, 15, 30000), 15);
    int accrued = 0, adjusted = 0, clawed = 0;
    for (size_t i = 0; i < hs_topic_count(S.events); i++) {
        const hs_record *r = hs_topic_at(S.events, i);
        ck_assert_msg(strcmp(r->key, "ch-m") == 0 || strcmp(r->key, "ch-w") == 0, "key %s", r->key);
        if (strcmp(r->type, "commerce.events.v1.CommissionAccrued") == 0) {
            Commerce__Events__V1__CommissionAccrued *e =
                commerce__events__v1__commission_accrued__unpack(NULL, r->len, r->payload);
            ck_assert_ptr_nonnull(e);
            ck_assert_str_eq(e->channel_id, r->key);
            ck_assert_int_eq(e->commission->state,
                             COMMERCE__COMMISSION__V1__COMMISSION_STATE__COMMISSION_STATE_FROZEN);
            ck_assert_int_eq(e->commission->order_amount->amount_minor, 1000000);
            ck_assert_uint_eq(e->commission->n_brackets, 1);
            protobuf_c_message_free_unpacked(&e->base, NULL);
            accrued++;
        } else if (strcmp(r->type, "commerce.events.v1.CommissionAdjusted") == 0) {
            adjusted++;
        } else if (strcmp(r->type, "commerce.events.v1.CommissionClawedBack") == 0) {
            Commerce__Events__V1__CommissionClawedBack *e =
                commerce__events__v1__commission_clawed_back__unpack(NULL, r->len, r->payload);
            ck_assert_ptr_nonnull(e);
            ck_assert_int_eq(e->clawback_amount->amount_minor, 50000);
            ck_assert_str_eq(e->refund_id, "rf-1");
            protobuf_c_message_free_unpacked(&e->base, NULL);
            clawed++;
        }
    }
    ck_assert_int_eq(accrued, 12);
    ck_assert_int_eq(adjusted, 2);
    ck_assert_int_eq(clawed, 1);
    st_stop(&S);
}
END_TEST

START_TEST(threshold_crossed_and_uncrossed_trues_up_and_parent_shares_exactly)
{
    st_start(&S, "trueup");
    T0 = hs_real_ms() + 60000; /* after the schedule, however slow the setup */
    seed_sched w;
    seed(&w, "whole", WHOLE);
    cm_rpc_status stt;
    ck_assert_int_eq(put_schedule(&S, "s-1", &w.s, 0, &stt), 0);
    /* the parent earns 10 % of its child's net commission, on top */
    put_channel(&S, "par", ACTIVE, NULL, 0, "whole");
    put_channel(&S, "kid", ACTIVE, "par", 1000, "whole");
    char *a = uuid(), *b = uuid();
    /* A 9,000.00 at 5 %: 450.00 */
    paid(&S, a, uuid(), "kid", 900000);
    wait_for(&S, "SELECT count(*) FROM commissions", 1);
    /* B 2,000.00 crosses 10,000.00: 160.00, A trued up +270.00 */
    paid(&S, b, uuid(), "kid", 200000);
    wait_for(&S, "SELECT count(*) FROM commissions", 2);
    ck_assert_int_eq(comm_col(&S, "amount", b), 16000);
    ck_assert_int_eq(sql(&S, "SELECT amount FROM adjustments WHERE channel_id = 'kid'"), 27000);
    ck_assert_int_eq(posted(&S, "kid"), 88000);
    /* B refunds 1,500.00 back under 10,000.00: 120.00 (3/4 of 160.00)
     * back, true-up -285.00 */
    refunded(&S, b, uuid(), "kid", "rf-b", 150000);
    wait_for(&S, "SELECT count(*) FROM refunds_applied", 1);
    ck_assert_int_eq(comm_col(&S, "clawed_back", b), 12000);
    ck_assert_int_eq(sql(&S, "SELECT amount FROM adjustments WHERE channel_id = 'kid' AND "
                             "refund_id = 'rf-b'"),
                     -28500);
    ck_assert_int_eq(posted(&S, "kid"), 47500);
    ck_assert_int_eq(earned(&S, "kid"), 47500);
    /* the parent: 4,500 + 4,300 - 4,050 = 4,750 = floor(10 % of 47,500) */
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM adjustments WHERE channel_id = 'par' AND kind "
                             "= 2 AND child_id = 'kid'"),
                     3);
    ck_assert_int_eq(earned(&S, "par"), 4750);
    ck_assert_int_eq(sql(&S, "SELECT base FROM parent_pools"), 47500);
    /* listed newest first, with a cursor */
    Commerce__Commission__V1__ListAdjustmentsRequest lr =
        COMMERCE__COMMISSION__V1__LIST_ADJUSTMENTS_REQUEST__INIT;
    lr.channel_id = "kid";
    lr.page_size = 1;
    Commerce__Commission__V1__ListAdjustmentsResponse *resp = NULL;
    ck_assert_int_eq(hs_call(S.c, SVC "ListAdjustments", &lr.base,
                             &commerce__commission__v1__list_adjustments_response__descriptor,
                             (ProtobufCMessage **)&resp, &stt, md, 1),
                     0);
    ck_assert_uint_eq(resp->n_adjustments, 1);
    ck_assert_int_eq(resp->adjustments[0]->amount->amount_minor, -28500);
    ck_assert_int_eq(resp->adjustments[0]->kind,
                     COMMERCE__COMMISSION__V1__ADJUSTMENT_KIND__ADJUSTMENT_KIND_TRUE_UP);
    ck_assert_str_ne(resp->next_page_token, "");
    Commerce__Commission__V1__ListAdjustmentsResponse *resp2 = NULL;
    lr.page_token = resp->next_page_token;
    ck_assert_int_eq(hs_call(S.c, SVC "ListAdjustments", &lr.base,
                             &commerce__commission__v1__list_adjustments_response__descriptor,
                             (ProtobufCMessage **)&resp2, &stt, md, 1),
                     0);
    ck_assert_uint_eq(resp2->n_adjustments, 1);
    ck_assert_int_eq(resp2->adjustments[0]->amount->amount_minor, 27000);
    ck_assert_str_eq(resp2->next_page_token, "");
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    protobuf_c_message_free_unpacked(&resp2->base, NULL);
    /* the dashboard: 9,500.00 at 5 %, 500.00 still needed for 8 % */
    Commerce__Commission__V1__ChannelSummary *sum = summary(&S, "kid");
    ck_assert_int_eq(sum->period_sales->amount_minor, 950000);
    ck_assert_int_eq(sum->current_tier, 0);
    ck_assert_int_eq(sum->current_rate_bps, 500);
    ck_assert_int_eq(sum->next_tier_from_sales->amount_minor, 1000000);
    ck_assert_int_eq(sum->sales_to_next_tier->amount_minor, 50000);
    ck_assert_int_eq(sum->next_rate_bps, 800);
    ck_assert_int_eq(sum->period_commission->amount_minor, 47500);
    ck_assert_int_eq(sum->frozen->amount_minor, 47500);
    protobuf_c_message_free_unpacked(&sum->base, NULL);
    /* the operator's check agrees; a posted total one fen off is named */
    ck_assert_uint_eq(invariants(&S, NULL, NULL), 0);
    sql_do(&S, "UPDATE channel_periods SET posted = posted + 1 WHERE channel_id = 'kid'");
    Commerce__Commission__V1__CheckInvariantsResponse *ir = NULL;
    ck_assert_uint_eq(invariants(&S, NULL, &ir), 1);
    ck_assert_str_eq(ir->violations[0]->channel_id, "kid");
    ck_assert_int_eq(ir->violations[0]->posted->amount_minor, 47501);
    ck_assert_int_eq(ir->violations[0]->expected->amount_minor, 47500);
    ck_assert_int_eq(ir->violations[0]->net_sales->amount_minor, 950000);
    protobuf_c_message_free_unpacked(&ir->base, NULL);
    ck_assert_uint_eq(invariants(&S, "par", NULL), 0);
    sql_do(&S, "UPDATE channel_periods SET posted = posted - 1 WHERE channel_id = 'kid'");
    ck_assert_uint_eq(invariants(&S, "kid", NULL), 0);
    st_stop(&S);
}
END_TEST

START_TEST(duplicates_accrue_and_claw_back_once)
{
    st_start(&S, "dup");
    T0 = hs_real_ms() + 60000; /* after the schedule, however slow the setup */
    seed_sched m;
    seed(&m, "marginal", MARGINAL);
    cm_rpc_status stt;
    ck_assert_int_eq(put_schedule(&S, "s-1", &m.s, 0, &stt), 0);
    put_channel(&S, "ch", ACTIVE, NULL, 0, "marginal");
    char *o = uuid(), *ev = uuid(), *rv = uuid();
    paid(&S, o, ev, "ch", 100000);
    paid(&S, o, ev, "ch", 100000);     /* redelivered */
    paid(&S, o, uuid(), "ch", 100000); /* the same order under a new event id */
    refunded(&S, o, rv, "ch", "rf-1", 40000);
    refunded(&S, o, rv, "ch", "rf-1", 40000);     /* redelivered */
    refunded(&S, o, uuid(), "ch", "rf-1", 40000); /* a new event id */
    wait_for(&S, "SELECT count(*) FROM inbox", 4);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM commissions"), 1);
    ck_assert_int_eq(sql(&S, "SELECT amount FROM commissions"), 5000);
    ck_assert_int_eq(sql(&S, "SELECT refunded FROM commissions"), 40000);
    ck_assert_int_eq(sql(&S, "SELECT clawed_back FROM commissions"), 2000);
    ck_assert_int_eq(sql(&S, "SELECT net_sales FROM channel_periods"), 60000);
    ck_assert_int_eq(sql(&S, "SELECT orders FROM channel_periods"), 1);
    ck_assert_int_eq(posted(&S, "ch"), 3000);
    ck_assert_int_eq(earned(&S, "ch"), 3000);
    st_stop(&S);
}
END_TEST

START_TEST(refund_before_its_payment_is_parked_then_applied)
{
    static const char *const env[] = {"COMMISSION_PARK_TIMEOUT_S=3", "COMMISSION_PARKER_MS=200",
                                      NULL};
    st_start_env(&S, "early", env);
    T0 = hs_real_ms() + 60000; /* after the schedule, however slow the setup */
    char dlq[160];
    snprintf(dlq, sizeof dlq, "%s.dlq", S.otopic);
    hs_kafka_create_topic(hs_kafka_brokers(), dlq, 1);
    hs_topic *dl = hs_topic_open(hs_kafka_brokers(), dlq, 0);
    seed_sched m;
    seed(&m, "marginal", MARGINAL);
    cm_rpc_status stt;
    ck_assert_int_eq(put_schedule(&S, "s-1", &m.s, 0, &stt), 0);
    put_channel(&S, "ch", ACTIVE, NULL, 0, "marginal");
    char *o = uuid(), *never = uuid();
    refunded(&S, o, uuid(), "ch", "rf-1", 50000);
    refunded(&S, never, uuid(), "ch", "rf-9", 100);
    wait_for(&S, "SELECT count(*) FROM parked_refunds", 2);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM commissions"), 0);
    paid(&S, o, uuid(), "ch", 100000);
    wait_for(&S, "SELECT count(*) FROM refunds_applied", 1);
    ck_assert_int_eq(sql(&S, "SELECT amount FROM commissions"), 5000);
    ck_assert_int_eq(sql(&S, "SELECT clawed_back FROM commissions"), 2500);
    ck_assert_int_eq(sql(&S, "SELECT net_sales FROM channel_periods"), 50000);
    ck_assert_int_eq(earned(&S, "ch"), 2500);
    /* the other payment never comes: dead-lettered, with the record as sent */
    const hs_record *r = hs_topic_next(dl, 30000);
    ck_assert_msg(r != NULL, "no dead letter (log %s)", S.p.log_path);
    ck_assert_str_eq(r->key, never);
    ck_assert_str_eq(r->type, "commerce.events.v1.OrderRefunded");
    wait_for(&S, "SELECT count(*) FROM parked_refunds", 0);
    hs_topic_close(dl);
    hs_kafka_delete_topic(hs_kafka_brokers(), dlq);
    st_stop(&S);
}
END_TEST

START_TEST(suspended_or_unknown_channel_accrues_nothing)
{
    st_start(&S, "susp");
    T0 = hs_real_ms() + 60000; /* after the schedule, however slow the setup */
    seed_sched m;
    seed(&m, "marginal", MARGINAL);
    m.s.n_channel_types = 3; /* assigned by type: the channels name none */
    m.s.channel_types = m.types;
    cm_rpc_status stt;
    ck_assert_int_eq(put_schedule(&S, "s-1", &m.s, 0, &stt), 0);
    put_channel(&S, "on", ACTIVE, NULL, 0, NULL);
    put_channel(&S, "off", SUSPENDED, NULL, 0, NULL);
    char *o = uuid();
    paid(&S, uuid(), uuid(), "on", 100000);
    paid(&S, o, uuid(), "off", 100000);
    paid(&S, uuid(), uuid(), "nobody", 100000);
    refunded(&S, o, uuid(), "off", "rf-1", 100000); /* nothing to claw back, not parked */
    wait_for(&S, "SELECT count(*) FROM inbox", 4);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM commissions"), 1);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM commissions WHERE channel_id = 'on' AND "
                             "schedule_id = 's-1'"),
                     0);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM commissions WHERE channel_id = 'on' AND "
                             "schedule_id = 'marginal' AND amount = 5000"),
                     1);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM uncommissioned_orders"), 2);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM parked_refunds"), 0);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM channel_periods WHERE channel_id <> 'on'"), 0);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM refunds_applied"), 0);
    st_stop(&S);
}
END_TEST

START_TEST(bad_input_is_named_and_tenants_are_apart)
{
    st_start(&S, "bad");
    T0 = hs_real_ms() + 60000; /* after the schedule, however slow the setup */
    seed_sched m;
    cm_rpc_status stt;
    /* tiers: not from 0, not increasing, a rate out of range, too many */
    seed(&m, "s", MARGINAL);
    m.from[0].amount_minor = 1;
    ck_assert_int_eq(put_schedule(&S, "s-1", &m.s, 0, &stt), 3);
    ck_assert_str_eq(stt.field, "schedule.tiers[0].from_sales.amount_minor");
    seed(&m, "s", MARGINAL);
    m.from[2].amount_minor = 1000000;
    ck_assert_int_eq(put_schedule(&S, "s-2", &m.s, 0, &stt), 3);
    ck_assert_str_eq(stt.field, "schedule.tiers[2].from_sales.amount_minor");
    seed(&m, "s", MARGINAL);
    m.t[1].rate_bps = 10001;
    ck_assert_int_eq(put_schedule(&S, "s-3", &m.s, 0, &stt), 3);
    ck_assert_str_eq(stt.field, "schedule.tiers[1].rate_bps");
    seed(&m, "s", MARGINAL);
    m.s.n_tiers = 0;
    ck_assert_int_eq(put_schedule(&S, "s-4", &m.s, 0, &stt), 3);
    ck_assert_str_eq(stt.field, "schedule.tiers");
    seed(&m, "s", 0);
    ck_assert_int_eq(put_schedule(&S, "s-5", &m.s, 0, &stt), 3);
    ck_assert_str_eq(stt.field, "schedule.mode");
    seed(&m, "s", MARGINAL);
    m.from[1].currency = "USD";
    ck_assert_int_eq(put_schedule(&S, "s-6", &m.s, 0, &stt), 3);
    ck_assert_str_eq(stt.reason, "CURRENCY_MISMATCH");
    seed(&m, "s", MARGINAL);
    m.s.time_zone = "Mars/Olympus";
    ck_assert_int_eq(put_schedule(&S, "s-7", &m.s, 0, &stt), 3);
    ck_assert_str_eq(stt.field, "schedule.time_zone");
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM tier_schedules"), 0);
    /* stored; a retry answers the same; another body under the key is refused */
    seed(&m, "s", MARGINAL);
    ck_assert_int_eq(put_schedule(&S, "s-8", &m.s, 0, &stt), 0);
    ck_assert_int_eq(put_schedule(&S, "s-8", &m.s, 0, &stt), 0);
    m.t[0].rate_bps = 600;
    ck_assert_int_eq(put_schedule(&S, "s-8", &m.s, 0, &stt), 6);
    ck_assert_str_eq(stt.reason, "IDEMPOTENCY_KEY_REUSED");
    ck_assert_int_eq(put_schedule(&S, "s-9", &m.s, 7, &stt), 10);
    ck_assert_str_eq(stt.reason, "VERSION_MISMATCH");
    ck_assert_int_eq(put_schedule(&S, "s-9", &m.s, 1, &stt), 0);
    ck_assert_int_eq(sql(&S, "SELECT max(revision) FROM tier_schedules"), 2);
    /* channels: an unknown type, a missing schedule, a third level */
    ck_assert_int_eq(put_channel_full(&S, md, "c-1", "ch", 9, ACTIVE, NULL, 0, NULL, 0, &stt), 3);
    ck_assert_str_eq(stt.field, "channel.type");
    ck_assert_int_eq(put_channel_full(&S, md, "c-2", "ch", 0, ACTIVE, NULL, 0, NULL, 0, &stt), 3);
    ck_assert_str_eq(stt.field, "channel.type");
    ck_assert_int_eq(
        put_channel_full(&S, md, "c-3", "ch", CT(AFFILIATE), ACTIVE, NULL, 0, "nope", 0, &stt), 9);
    ck_assert_str_eq(stt.reason, "REFERENCE_NOT_FOUND");
    ck_assert_int_eq(
        put_channel_full(&S, md, "c-4", "ch", CT(AFFILIATE), ACTIVE, "ch", 100, NULL, 0, &stt), 3);
    ck_assert_str_eq(stt.field, "channel.parent_channel_id");
    put_channel(&S, "top", ACTIVE, NULL, 0, "s");
    put_channel(&S, "mid", ACTIVE, "top", 500, "s");
    ck_assert_int_eq(
        put_channel_full(&S, md, "c-5", "low", CT(AFFILIATE), ACTIVE, "mid", 100, NULL, 0, &stt),
        9);
    ck_assert_str_eq(stt.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM channels"), 2);
    /* another tenant sees none of it */
    Commerce__Commission__V1__GetChannelRequest g =
        COMMERCE__COMMISSION__V1__GET_CHANNEL_REQUEST__INIT;
    g.channel_id = "top";
    ck_assert_int_eq(hs_call(S.c, SVC "GetChannel", &g.base,
                             &commerce__commission__v1__get_channel_response__descriptor, NULL,
                             &stt, md_other, 1),
                     5);
    ck_assert_int_eq(hs_call(S.c, SVC "GetChannel", &g.base,
                             &commerce__commission__v1__get_channel_response__descriptor, NULL,
                             &stt, md, 1),
                     0);
    Commerce__Commission__V1__ListChannelsRequest l =
        COMMERCE__COMMISSION__V1__LIST_CHANNELS_REQUEST__INIT;
    Commerce__Commission__V1__ListChannelsResponse *lr = NULL;
    ck_assert_int_eq(hs_call(S.c, SVC "ListChannels", &l.base,
                             &commerce__commission__v1__list_channels_response__descriptor,
                             (ProtobufCMessage **)&lr, &stt, md_other, 1),
                     0);
    ck_assert_uint_eq(lr->n_channels, 0);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    ck_assert_int_eq(hs_call(S.c, SVC "ListChannels", &l.base,
                             &commerce__commission__v1__list_channels_response__descriptor,
                             (ProtobufCMessage **)&lr, &stt, md, 1),
                     0);
    ck_assert_uint_eq(lr->n_channels, 2);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    /* nor its commissions: an order of the tenant paid to "top" */
    paid(&S, uuid(), uuid(), "top", 100000);
    paid_in(&S, TENANT "-other", uuid(), uuid(), "top", 100000, T0); /* no such channel there */
    wait_for(&S, "SELECT count(*) FROM inbox", 2);
    Commerce__Commission__V1__ListCommissionsRequest lc =
        COMMERCE__COMMISSION__V1__LIST_COMMISSIONS_REQUEST__INIT;
    Commerce__Commission__V1__ListCommissionsResponse *lcr = NULL;
    ck_assert_int_eq(hs_call(S.c, SVC "ListCommissions", &lc.base,
                             &commerce__commission__v1__list_commissions_response__descriptor,
                             (ProtobufCMessage **)&lcr, &stt, md_other, 1),
                     0);
    ck_assert_uint_eq(lcr->n_commissions, 0);
    protobuf_c_message_free_unpacked(&lcr->base, NULL);
    ck_assert_int_eq(hs_call(S.c, SVC "ListCommissions", &lc.base,
                             &commerce__commission__v1__list_commissions_response__descriptor,
                             (ProtobufCMessage **)&lcr, &stt, md, 1),
                     0);
    ck_assert_uint_eq(lcr->n_commissions, 1);
    ck_assert_int_eq(lcr->commissions[0]->amount->amount_minor, 6000);
    protobuf_c_message_free_unpacked(&lcr->base, NULL);
    st_stop(&S);
}
END_TEST

/* the CommissionPayable events read so far, of one order (NULL: all) */
static int payable_events(st *s, const char *order_id)
{
    int n = 0;
    for (size_t i = 0; i < hs_topic_count(s->events); i++) {
        const hs_record *r = hs_topic_at(s->events, i);
        if (strcmp(r->type, "commerce.events.v1.CommissionPayable") != 0)
            continue;
        Commerce__Events__V1__CommissionPayable *e =
            commerce__events__v1__commission_payable__unpack(NULL, r->len, r->payload);
        ck_assert_ptr_nonnull(e);
        ck_assert_str_eq(e->channel_id, r->key);
        ck_assert_int_eq(e->commission->state,
                         COMMERCE__COMMISSION__V1__COMMISSION_STATE__COMMISSION_STATE_PAYABLE);
        ck_assert_ptr_nonnull(e->commission->payable_at);
        if (!order_id || strcmp(e->commission->order_id, order_id) == 0)
            n++;
        protobuf_c_message_free_unpacked(&e->base, NULL);
    }
    return n;
}

/* the partner topic as a client that is not ours reads it (kcat), checked
 * by the contract's validate.py: every record of channel valid against the
 * schema and its invariants, and as many records of each type of
 * partner_types as want says (-1: at least one) */
static const char *const partner_types[] = {"accrued",        "payable",     "clawed_back",
                                            "settled",        "adjusted",    "adjustment_payable",
                                            "payout_created", "payout_paid", "payout_failed"};
enum { NPT = sizeof partner_types / sizeof partner_types[0] };

static void partner_check(const st *s, const char *channel, const int want[NPT])
{
    char out[] = "/tmp/test_commission_XXXXXX", cmd[2048];
    int fd = mkstemp(out);
    ck_assert_int_ge(fd, 0);
    close(fd);
    int have[NPT] = {0};
    for (int tries = 0; tries < 100; tries++) {
        snprintf(cmd, sizeof cmd, "kcat -C -b '%s' -t %s -o beginning -e -q -J > %s 2>/dev/null",
                 hs_kafka_brokers(), s->ptopic, out);
        ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
        int same = 1;
        for (int k = 0; k < NPT; k++) {
            /* kcat -J escapes the value's quotes */
            snprintf(cmd, sizeof cmd,
                     "exit $(grep -F '\"key\":\"%s\"' %s | grep -oF "
                     "'com.commerce.commission.v1.%s\\\"' | wc -l)",
                     channel, out, partner_types[k]);
            int ws = system(cmd);
            have[k] = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
            same = same && (want[k] < 0 ? have[k] > 0 : have[k] == want[k]);
        }
        if (same)
            break;
        usleep(200 * 1000);
    }
    for (int k = 0; k < NPT; k++)
        ck_assert_msg(want[k] < 0 ? have[k] > 0 : have[k] == want[k],
                      "partner %s events of %s: %d, want %d", partner_types[k], channel, have[k],
                      want[k]);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 %s/validate.py --records --internal --key '%s' < %s", PARTNER_DIR,
             channel, out);
    int ws = system(cmd);
    ck_assert_msg(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "validate.py rejected a record: %s", cmd);
    unlink(out);
}

/* the protobuf events of a type read so far, keyed key (NULL: any) */
static int events_of(st *s, const char *type, const char *key)
{
    int n = 0;
    for (size_t i = 0; i < hs_topic_count(s->events); i++) {
        const hs_record *r = hs_topic_at(s->events, i);
        n += strcmp(r->type, type) == 0 && (!key || strcmp(r->key, key) == 0);
    }
    return n;
}

START_TEST(completed_past_the_window_is_payable_and_later_refunds_net_from_it)
{
    static const char *const env[] = {"COMMISSION_AFTER_SALE_DAYS=7", "COMMISSION_PAYABLE_MS=200",
                                      NULL};
    st_start_env(&S, "pay", env);
    seed_sched m;
    seed(&m, "marginal", MARGINAL);
    cm_rpc_status stt;
    ck_assert_int_eq(put_schedule(&S, "s-1", &m.s, 0, &stt), 0);
    put_channel(&S, "par", ACTIVE, NULL, 0, "marginal");
    put_channel(&S, "ch", ACTIVE, "par", 1000, "marginal");
    /* after the schedule's effective_from by more than the second the
     * summary's `at` is truncated to */
    T0 = hs_real_ms() + 2000;
    char *o1 = order_uuid(), *o2 = order_uuid(), *o3 = order_uuid();
    paid(&S, o1, uuid(), "ch", 1000000); /* 500.00 at 5 %, parent 50.00 */
    /* o1 first: the topic's two partitions would otherwise let o2 and o3
     * accrue before it and take its 5 % slice */
    wait_for(&S, "SELECT count(*) FROM commissions", 1);
    paid(&S, o2, uuid(), "ch", 200000); /* 160.00 at 8 %, parent 16.00 */
    paid(&S, o3, uuid(), "ch", 100000); /* 80.00 */
    wait_for(&S, "SELECT count(*) FROM commissions WHERE state = 1", 3);
    /* completed 8 days ago: past the window; 6 days ago: inside it; o3
     * completes before its payment is seen again (the order is kept) */
    long long now = hs_real_ms(), day = 86400000LL;
    completed(&S, o1, uuid(), "ch", now - 8 * day);
    completed(&S, o2, uuid(), "ch", now - 6 * day);
    char q[256];
    snprintf(q, sizeof q, "SELECT state FROM commissions WHERE order_id = '%s'", o1);
    wait_for(&S, q, 2);
    wait_for(&S, "SELECT count(*) FROM inbox", 5);
    usleep(600 * 1000); /* three more ticks: o2 stays frozen */
    ck_assert_int_eq(comm_col(&S, "state", o2), 1);
    ck_assert_int_eq(comm_col(&S, "state", o3), 1);
    ck_assert_int_eq(comm_col(&S, "payable_amount", o1), 50000);
    ck_assert_int_eq(comm_col(&S, "(payable_at IS NOT NULL)::int", o1), 1);
    /* the parent's share of o1 follows it; o2's stays frozen */
    snprintf(q, sizeof q, "SELECT state FROM adjustments WHERE order_id = '%s'", o1);
    ck_assert_int_eq(sql(&S, q), 2);
    snprintf(q, sizeof q, "SELECT state FROM adjustments WHERE order_id = '%s'", o2);
    ck_assert_int_eq(sql(&S, q), 1);
    Commerce__Commission__V1__ChannelSummary *sum = summary(&S, "ch");
    ck_assert_int_eq(sum->payable->amount_minor, 50000);
    ck_assert_int_eq(sum->frozen->amount_minor, 16000 + 8000);
    protobuf_c_message_free_unpacked(&sum->base, NULL);
    sum = summary(&S, "par");
    ck_assert_int_eq(sum->payable->amount_minor, 5000);
    protobuf_c_message_free_unpacked(&sum->base, NULL);
    /* one CommissionPayable for o1 */
    for (int tries = 0; tries < 300 && payable_events(&S, o1) < 1; tries++)
        hs_topic_next(S.events, 100);
    ck_assert_int_eq(payable_events(&S, o1), 1);
    /* a refund of 40 % of o1 after PAYABLE: the commission keeps its state
     * and payable figure, the 200.00 clawed back is a negative payable
     * item, and the parent's share follows (marginal: o1's refund also
     * trues up the others' slices: the true-up is payable with o1 too) */
    refunded(&S, o1, uuid(), "ch", "rf-1", 400000);
    wait_for(&S, "SELECT count(*) FROM inbox", 6);
    ck_assert_int_eq(comm_col(&S, "state", o1), 2);
    ck_assert_int_eq(comm_col(&S, "clawed_back", o1), 20000);
    ck_assert_int_eq(comm_col(&S, "payable_amount", o1), 50000);
    snprintf(q, sizeof q,
             "SELECT amount FROM adjustments WHERE order_id = '%s' AND kind = 3 AND state = 2 AND "
             "refund_id = 'rf-1' AND channel_id = 'ch'",
             o1);
    ck_assert_int_eq(sql(&S, q), -20000);
    snprintf(q, sizeof q,
             "SELECT count(*) FROM adjustments WHERE order_id = '%s' AND refund_id = 'rf-1' AND "
             "state <> 2",
             o1);
    ck_assert_int_eq(sql(&S, q), 0);
    /* payable = what the channel earned on o1 net of its refund, plus the
     * refund's true-up; the whole ledger still telescopes */
    snprintf(q, sizeof q,
             "SELECT 50000 + coalesce(sum(amount), 0) FROM adjustments WHERE channel_id = 'ch' "
             "AND state = 2");
    long long want = sql(&S, q);
    sum = summary(&S, "ch");
    ck_assert_int_eq(sum->payable->amount_minor, want);
    ck_assert_int_eq(sum->payable->amount_minor + sum->frozen->amount_minor, posted(&S, "ch"));
    protobuf_c_message_free_unpacked(&sum->base, NULL);
    /* a full refund after PAYABLE keeps it PAYABLE with net 0 to pay */
    refunded(&S, o1, uuid(), "ch", "rf-2", 600000);
    wait_for(&S, "SELECT count(*) FROM inbox", 7);
    ck_assert_int_eq(comm_col(&S, "state", o1), 2);
    snprintf(q, sizeof q,
             "SELECT sum(amount) FROM adjustments WHERE order_id = '%s' AND kind = 3 AND "
             "channel_id = 'ch'",
             o1);
    ck_assert_int_eq(sql(&S, q), -50000);
    /* for partners: 3 accrued, 1 payable, 2 clawed back (of a PAYABLE
     * commission), the adjustments (true-ups, clawbacks after PAYABLE),
     * all valid against kafka/partner's schema */
    int kinds[NPT] = {3, 1, 2, 0, -1, 0, 0, 0, 0};
    partner_check(&S, "ch", kinds);
    /* the parent: its shares, o1's made payable with o1 (one
     * adjustment_payable; the shares of the refunds were payable at once) */
    int par[NPT] = {0, 0, 0, 0, -1, 1, 0, 0, 0};
    partner_check(&S, "par", par);
    for (int tries = 0;
         tries < 100 && events_of(&S, "commerce.events.v1.CommissionAdjustmentPayable", NULL) < 1;
         tries++)
        hs_topic_next(S.events, 100);
    hs_topic_catch_up(S.events, 5000);
    ck_assert_int_eq(events_of(&S, "commerce.events.v1.CommissionAdjustmentPayable", "par"), 1);
    ck_assert_int_eq(events_of(&S, "commerce.events.v1.CommissionAdjustmentPayable", NULL), 1);
    for (size_t i = 0; i < hs_topic_count(S.events); i++) {
        const hs_record *r = hs_topic_at(S.events, i);
        if (strcmp(r->type, "commerce.events.v1.CommissionAdjustmentPayable") != 0)
            continue;
        Commerce__Events__V1__CommissionAdjustmentPayable *e =
            commerce__events__v1__commission_adjustment_payable__unpack(NULL, r->len, r->payload);
        ck_assert_ptr_nonnull(e);
        ck_assert_str_eq(e->adjustment->order_id, o1);
        ck_assert_str_eq(e->adjustment->child_channel_id, "ch");
        ck_assert_int_eq(e->adjustment->amount->amount_minor, 5000);
        ck_assert_int_eq(e->adjustment->state,
                         COMMERCE__COMMISSION__V1__COMMISSION_STATE__COMMISSION_STATE_PAYABLE);
        ck_assert_ptr_nonnull(e->adjustment->payable_at);
        protobuf_c_message_free_unpacked(&e->base, NULL);
    }
    st_stop(&S);
}
END_TEST

static int settle(st *s, const char *req_id, const char *ch,
                  Commerce__Commission__V1__SettleCommissionsResponse **out, cm_rpc_status *stt)
{
    Commerce__Commission__V1__SettleCommissionsRequest r =
        COMMERCE__COMMISSION__V1__SETTLE_COMMISSIONS_REQUEST__INIT;
    r.request_id = (char *)req_id;
    r.channel_id = (char *)ch;
    r.currency = "CNY";
    return hs_call(s->c, SVC "SettleCommissions", &r.base,
                   &commerce__commission__v1__settle_commissions_response__descriptor,
                   (ProtobufCMessage **)out, stt, md, 1);
}

static int report(st *s, const char *payout_id, int result,
                  Commerce__Commission__V1__ReportPayoutResultResponse **out, cm_rpc_status *stt)
{
    Commerce__Commission__V1__ReportPayoutResultRequest r =
        COMMERCE__COMMISSION__V1__REPORT_PAYOUT_RESULT_REQUEST__INIT;
    r.payout_id = (char *)payout_id;
    r.result = result;
    r.provider_reference = "alipay-transfer-1";
    r.failure_reason = "the channel's account was closed";
    return hs_call(s->c, SVC "ReportPayoutResult", &r.base,
                   &commerce__commission__v1__report_payout_result_response__descriptor,
                   (ProtobufCMessage **)out, stt, md, 1);
}

#define PAID COMMERCE__COMMISSION__V1__PAYOUT_STATE__PAYOUT_STATE_PAID
#define FAILED COMMERCE__COMMISSION__V1__PAYOUT_STATE__PAYOUT_STATE_FAILED
#define PENDING COMMERCE__COMMISSION__V1__PAYOUT_STATE__PAYOUT_STATE_PENDING

/* the net a payout of ch would pay now */
static long long payable_now(const st *s, const char *ch)
{
    char q[512];
    snprintf(q, sizeof q,
             "SELECT (SELECT coalesce(sum(payable_amount), 0) FROM commissions WHERE channel_id = "
             "'%s' AND state = 2 AND payout_id IS NULL) + (SELECT coalesce(sum(amount), 0) FROM "
             "adjustments WHERE channel_id = '%s' AND state = 2 AND payout_id IS NULL)",
             ch, ch);
    return sql(s, q);
}

START_TEST(payouts_net_payables_and_clawbacks_after_settlement)
{
    static const char *const env[] = {"COMMISSION_AFTER_SALE_DAYS=0", "COMMISSION_PAYABLE_MS=100",
                                      NULL};
    st_start_env(&S, "payout", env);
    seed_sched m;
    seed(&m, "marginal", MARGINAL);
    m.s.min_payout_minor = 10000; /* 100.00 */
    cm_rpc_status stt;
    ck_assert_int_eq(put_schedule(&S, "s-1", &m.s, 0, &stt), 0);
    put_channel(&S, "ch", ACTIVE, NULL, 0, "marginal");
    T0 = hs_real_ms() + 2000;
    char *o1 = order_uuid(), *o2 = order_uuid(), *o3 = order_uuid();
    paid(&S, o1, uuid(), "ch", 1000000);                 /* 500.00 */
    wait_for(&S, "SELECT count(*) FROM commissions", 1); /* o1 first, whatever the partitions */
    paid(&S, o2, uuid(), "ch", 100000);                  /* 80.00 (8 % from 10,000.00) */
    wait_for(&S, "SELECT count(*) FROM commissions WHERE state = 1", 2);
    /* only o2 payable: 80.00 is below the minimum of 100.00 */
    completed(&S, o2, uuid(), "ch", hs_real_ms());
    wait_for(&S, "SELECT count(*) FROM commissions WHERE state = 2", 1);
    Commerce__Commission__V1__SettleCommissionsResponse *sr = NULL;
    ck_assert_int_eq(settle(&S, "pay-1", "ch", &sr, &stt), 0);
    ck_assert(sr->below_minimum);
    ck_assert_ptr_null(sr->payout);
    ck_assert_int_eq(sr->payable->amount_minor, 8000);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM payouts"), 0);
    /* o1 too: 580.00, one payout, idempotent by request_id */
    completed(&S, o1, uuid(), "ch", hs_real_ms());
    wait_for(&S, "SELECT count(*) FROM commissions WHERE state = 2", 2);
    ck_assert_int_eq(settle(&S, "pay-2", "ch", &sr, &stt), 0);
    ck_assert(!sr->below_minimum);
    ck_assert_int_eq(sr->payout->amount->amount_minor, 58000);
    ck_assert_int_eq(sr->payout->commissions, 2);
    ck_assert_int_eq(sr->payout->state, PENDING);
    char p1[CM_ID_SIZE];
    snprintf(p1, sizeof p1, "%s", sr->payout->payout_id);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    ck_assert_int_eq(settle(&S, "pay-2", "ch", &sr, &stt), 0);
    ck_assert_str_eq(sr->payout->payout_id, p1);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    ck_assert_int_eq(settle(&S, "pay-2", "other", &sr, &stt), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_int_eq(settle(&S, "pay-3", "nobody", &sr, &stt), GRPC_STATUS_NOT_FOUND);
    /* nothing left for another payout while it is pending */
    ck_assert_int_eq(settle(&S, "pay-3", "ch", &sr, &stt), 0);
    ck_assert(sr->below_minimum);
    ck_assert_int_eq(sr->payable->amount_minor, 0);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    /* the transfer failed: the items are payable again */
    Commerce__Commission__V1__ReportPayoutResultResponse *rr = NULL;
    ck_assert_int_eq(report(&S, p1, FAILED, &rr, &stt), 0);
    ck_assert_int_eq(rr->payout->state, FAILED);
    protobuf_c_message_free_unpacked(&rr->base, NULL);
    ck_assert_int_eq(report(&S, p1, PAID, &rr, &stt), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_int_eq(payable_now(&S, "ch"), 58000);
    ck_assert_int_eq(settle(&S, "pay-4", "ch", &sr, &stt), 0);
    ck_assert_int_eq(sr->payout->amount->amount_minor, 58000);
    char p2[CM_ID_SIZE];
    snprintf(p2, sizeof p2, "%s", sr->payout->payout_id);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    ck_assert_int_eq(report(&S, p2, PAID, &rr, &stt), 0);
    ck_assert_int_eq(rr->payout->state, PAID);
    ck_assert_str_eq(rr->payout->provider_reference, "alipay-transfer-1");
    protobuf_c_message_free_unpacked(&rr->base, NULL);
    ck_assert_int_eq(report(&S, p2, PAID, &rr, &stt), 0); /* again: as it is */
    ck_assert_int_eq(rr->payout->state, PAID);
    protobuf_c_message_free_unpacked(&rr->base, NULL);
    ck_assert_int_eq(report(&S, p2, FAILED, &rr, &stt), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM commissions WHERE state = 3 AND settled_at IS "
                             "NOT NULL"),
                     2);
    /* o1 refunded by 40 % after settlement: 200.00 is owed by the channel
     * (with the refund's true-up of o2's slice), netted from the next
     * payout, never lost */
    refunded(&S, o1, uuid(), "ch", "rf-1", 400000);
    wait_for(&S, "SELECT count(*) FROM refunds_applied", 1);
    ck_assert_int_eq(comm_col(&S, "state", o1), 3);
    char q[256];
    snprintf(q, sizeof q, "SELECT amount FROM adjustments WHERE order_id = '%s' AND kind = 3", o1);
    ck_assert_int_eq(sql(&S, q), -20000);
    long long owed = payable_now(&S, "ch");
    ck_assert_int_lt(owed, 0);
    ck_assert_int_eq(settle(&S, "pay-5", "ch", &sr, &stt), 0);
    ck_assert(sr->below_minimum);
    ck_assert_int_eq(sr->payable->amount_minor, owed);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    /* o3 pays it back: the next payout is o3's commission net of it */
    paid(&S, o3, uuid(), "ch", 1000000);
    wait_for(&S, "SELECT count(*) FROM commissions", 3);
    completed(&S, o3, uuid(), "ch", hs_real_ms());
    snprintf(q, sizeof q, "SELECT state FROM commissions WHERE order_id = '%s'", o3);
    wait_for(&S, q, 2);
    long long want = comm_col(&S, "payable_amount", o3) + owed;
    ck_assert_int_eq(payable_now(&S, "ch"), want);
    ck_assert_int_eq(settle(&S, "pay-6", "ch", &sr, &stt), 0);
    ck_assert(!sr->below_minimum);
    ck_assert_int_eq(sr->payout->amount->amount_minor, want);
    ck_assert_int_eq(sr->payout->commissions, 1);
    ck_assert_int_ge(sr->payout->adjustments, 1);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    /* the CommissionSettled events, and the partner topic: 3 accrued, 3
     * payable, 2 settled, 1 clawed back after settlement */
    ck_assert_uint_ge(hs_topic_read(S.events, 3, 30000), 3);
    int settled = 0;
    for (int tries = 0; tries < 100 && settled < 2; tries++) {
        settled = 0;
        hs_topic_next(S.events, 100);
        for (size_t i = 0; i < hs_topic_count(S.events); i++)
            settled +=
                strcmp(hs_topic_at(S.events, i)->type, "commerce.events.v1.CommissionSettled") == 0;
    }
    ck_assert_int_eq(settled, 2);
    /* and the payouts: pay-2 (failed), pay-4 (paid), pay-6 (pending) */
    int kinds[NPT] = {3, 3, 1, 2, -1, 0, 3, 1, 1};
    partner_check(&S, "ch", kinds);
    st_stop(&S);
}
END_TEST

START_TEST(two_replicas_make_each_commission_payable_once)
{
    static const char *const env[] = {"COMMISSION_AFTER_SALE_DAYS=0", "COMMISSION_PAYABLE_MS=100",
                                      NULL};
    st_start_env(&S, "pay2", env);
    const char *env2[32];
    hs_proc second;
    hs_start(&second, COMMISSION_BIN, st_env(&S, env2, 32, env));
    T0 = hs_real_ms() + 60000; /* after the schedule, however slow the setup */
    seed_sched m;
    seed(&m, "marginal", MARGINAL);
    cm_rpc_status stt;
    ck_assert_int_eq(put_schedule(&S, "s-1", &m.s, 0, &stt), 0);
    put_channel(&S, "ch", ACTIVE, NULL, 0, "marginal");
    enum { N = 200 };
    static char ids[N][CM_ID_SIZE];
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(cm_id_uuid7(ids[i]), 0);
        paid(&S, ids[i], uuid(), "ch", 10000 + i);
    }
    /* completions trickle in while both replicas tick */
    for (int i = 0; i < N; i++) {
        completed(&S, ids[i], uuid(), "ch", hs_real_ms());
        if (i % 50 == 0)
            usleep(150 * 1000);
    }
    wait_for(&S, "SELECT count(*) FROM commissions WHERE state = 2", N);
    ck_assert_uint_ge(hs_topic_read(S.events, 2 * N, 30000), 2 * N);
    usleep(500 * 1000);
    hs_topic_catch_up(S.events, 5000);
    ck_assert_int_eq(payable_events(&S, NULL), N);
    ck_assert_int_eq(hs_stop(&second, SIGTERM, 30000), 0);
    st_stop(&S);
}
END_TEST

START_TEST(kill_mid_batch_accrues_each_order_once)
{
    st_start(&S, "kill");
    T0 = hs_real_ms() + 60000; /* after the schedule, however slow the setup */
    seed_sched w;
    seed(&w, "whole", WHOLE);
    cm_rpc_status stt;
    ck_assert_int_eq(put_schedule(&S, "s-1", &w.s, 0, &stt), 0);
    static const char *const chans[] = {"c0", "c1", "c2", "c3"};
    put_channel(&S, "par", ACTIVE, NULL, 0, "whole");
    for (int i = 0; i < 4; i++)
        put_channel(&S, chans[i], ACTIVE, i % 2 ? "par" : NULL, i % 2 ? 750 : 0, "whole");
    /* the events wait on the topic while the service is down, then it is
     * killed while it accrues them */
    ck_assert_int_eq(hs_stop(&S.p, SIGTERM, 30000), 0);
    enum { N = 3000 };
    long long total = 0;
    for (int i = 0; i < N; i++) {
        paid(&S, uuid(), uuid(), chans[i % 4], 10000 + i);
        total += 10000 + i;
    }
    const char *env[32];
    st_env(&S, env, 32, NULL);
    hs_start(&S.p, COMMISSION_BIN, env);
    ck_assert_int_eq(
        hs_poll_sql(S.schema, "SELECT least(count(*), 1) FROM commissions", 1, 30000, 2), 0);
    ck_assert_int_eq(hs_stop(&S.p, SIGKILL, 5000), 128 + SIGKILL);
    long long before = sql(&S, "SELECT count(*) FROM commissions");
    ck_assert_msg(before < N, "all %d accrued before the kill: nothing to prove", N);
    hs_start(&S.p, COMMISSION_BIN, env);
    cm_rpc_client_free(S.c);
    S.c = hs_client(&S.p, NULL);
    wait_for(&S, "SELECT count(*) FROM commissions", N);
    ck_assert_int_eq(sql(&S, "SELECT count(DISTINCT order_id) FROM commissions"), N);
    ck_assert_int_eq(sql(&S, "SELECT sum(orders) FROM channel_periods"), N);
    ck_assert_int_eq(sql(&S, "SELECT sum(net_sales) FROM channel_periods"), total);
    /* each period's posted sum is the formula on its net sales: 12 % of
     * everything past 50,000.00 (each channel has about 7,500,000) */
    ck_assert_int_eq(
        sql(&S, "SELECT count(*) FROM channel_periods WHERE posted <> net_sales * 1200 / 10000"),
        0);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(earned(&S, chans[i]), posted(&S, chans[i]));
    /* the parent: floor(7.5 % of its children's net commission) */
    ck_assert_int_eq(earned(&S, "par"),
                     sql(&S, "SELECT sum(posted) * 750 / 10000 FROM channel_periods WHERE "
                             "channel_id IN ('c1', 'c3')"));
    st_stop(&S);
}
END_TEST

/* ---- per-tenant settings ---- */

/* PutTenantSettings of tenant m: window_s WINDOW_DEFAULT leaves the window
 * unset (the default); nanos for the bad-input cases */
#define WINDOW_DEFAULT (-1000000LL)
static int put_settings(st *s, const cm_rpc_md *m, const char *req_id, long long window_s,
                        int nanos, long long expected,
                        Commerce__Commission__V1__TenantSettings **out, cm_rpc_status *stt)
{
    Google__Protobuf__Duration w = GOOGLE__PROTOBUF__DURATION__INIT;
    w.seconds = window_s;
    w.nanos = nanos;
    Commerce__Commission__V1__TenantSettings ts = COMMERCE__COMMISSION__V1__TENANT_SETTINGS__INIT;
    ts.after_sale_window = window_s == WINDOW_DEFAULT ? NULL : &w;
    Commerce__Commission__V1__PutTenantSettingsRequest r =
        COMMERCE__COMMISSION__V1__PUT_TENANT_SETTINGS_REQUEST__INIT;
    r.request_id = (char *)req_id;
    r.settings = &ts;
    r.expected_revision = expected;
    Commerce__Commission__V1__PutTenantSettingsResponse *resp = NULL;
    int code = hs_call(s->c, SVC "PutTenantSettings", &r.base,
                       &commerce__commission__v1__put_tenant_settings_response__descriptor,
                       (ProtobufCMessage **)&resp, stt, m, 1);
    if (out && code == 0) {
        *out = resp->settings;
        resp->settings = NULL;
    }
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return code;
}

static Commerce__Commission__V1__TenantSettings *get_settings(st *s, const cm_rpc_md *m)
{
    Commerce__Commission__V1__GetTenantSettingsRequest r =
        COMMERCE__COMMISSION__V1__GET_TENANT_SETTINGS_REQUEST__INIT;
    Commerce__Commission__V1__GetTenantSettingsResponse *resp = NULL;
    cm_rpc_status stt;
    int code = hs_call(s->c, SVC "GetTenantSettings", &r.base,
                       &commerce__commission__v1__get_tenant_settings_response__descriptor,
                       (ProtobufCMessage **)&resp, &stt, m, 1);
    ck_assert_msg(code == 0, "GetTenantSettings: %d %s", code, stt.message);
    Commerce__Commission__V1__TenantSettings *out = resp->settings;
    resp->settings = NULL;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return out;
}

#define FREE_SETTINGS(x) protobuf_c_message_free_unpacked(&(x)->base, NULL)

START_TEST(tenant_window_decides_when_commissions_become_payable)
{
    /* the knob's default: 0 days, so a tenant without settings is payable
     * at the first tick after completion */
    static const char *const env[] = {"COMMISSION_AFTER_SALE_DAYS=0", "COMMISSION_PAYABLE_MS=100",
                                      NULL};
    st_start_env(&S, "window", env);
    cm_rpc_status stt;
    Commerce__Commission__V1__TenantSettings *ts = get_settings(&S, md);
    ck_assert_int_eq(ts->revision, 0);
    ck_assert(ts->after_sale_window_default);
    ck_assert_int_eq(ts->after_sale_window->seconds, 0);
    FREE_SETTINGS(ts);
    /* bad input, named */
    ck_assert_int_eq(put_settings(&S, md, "", 60, 0, 0, NULL, &stt), 3);
    ck_assert_str_eq(stt.field, "request_id");
    ck_assert_int_eq(put_settings(&S, md, "w-0", -5, 0, 0, NULL, &stt), 3);
    ck_assert_str_eq(stt.field, "settings.after_sale_window");
    ck_assert_int_eq(put_settings(&S, md, "w-0", 91 * 86400LL, 0, 0, NULL, &stt), 3);
    ck_assert_str_eq(stt.field, "settings.after_sale_window");
    ck_assert_int_eq(put_settings(&S, md, "w-0", 60, 500, 0, NULL, &stt), 3);
    ck_assert_str_eq(stt.field, "settings.after_sale_window");
    ck_assert_int_eq(put_settings(&S, md, "w-0", 60, 0, -1, NULL, &stt), 3);
    ck_assert_str_eq(stt.field, "expected_revision");
    {
        Commerce__Commission__V1__PutTenantSettingsRequest r =
            COMMERCE__COMMISSION__V1__PUT_TENANT_SETTINGS_REQUEST__INIT;
        r.request_id = "w-0";
        ck_assert_int_eq(
            hs_call(S.c, SVC "PutTenantSettings", &r.base,
                    &commerce__commission__v1__put_tenant_settings_response__descriptor, NULL, &stt,
                    md, 1),
            3);
        ck_assert_str_eq(stt.field, "settings");
    }
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM tenant_settings"), 0);
    /* an hour for TENANT; idempotent; compare-and-set */
    ck_assert_int_eq(put_settings(&S, md, "w-1", 3600, 0, 0, &ts, &stt), 0);
    ck_assert_int_eq(ts->revision, 1);
    ck_assert_int_eq(ts->after_sale_window->seconds, 3600);
    ck_assert(!ts->after_sale_window_default);
    ck_assert_ptr_nonnull(ts->updated_at);
    FREE_SETTINGS(ts);
    ck_assert_int_eq(put_settings(&S, md, "w-1", 3600, 0, 0, &ts, &stt), 0);
    ck_assert_int_eq(ts->revision, 1);
    FREE_SETTINGS(ts);
    ck_assert_int_eq(put_settings(&S, md, "w-1", 7200, 0, 0, NULL, &stt), 6);
    ck_assert_str_eq(stt.reason, "IDEMPOTENCY_KEY_REUSED");
    ck_assert_int_eq(put_settings(&S, md, "w-2", 0, 0, 5, NULL, &stt), 10);
    ck_assert_str_eq(stt.reason, "VERSION_MISMATCH");
    /* the other tenant still has the default */
    ts = get_settings(&S, md_other);
    ck_assert_int_eq(ts->revision, 0);
    ck_assert(ts->after_sale_window_default);
    FREE_SETTINGS(ts);
    /* a channel in each tenant; an order each, completed now */
    seed_sched m;
    seed(&m, "marginal", MARGINAL);
    ck_assert_int_eq(put_schedule(&S, "s-1", &m.s, 0, &stt), 0);
    put_channel(&S, "ch", ACTIVE, NULL, 0, "marginal");
    {
        Commerce__Commission__V1__PutTierScheduleRequest r =
            COMMERCE__COMMISSION__V1__PUT_TIER_SCHEDULE_REQUEST__INIT;
        r.request_id = "s-1";
        r.schedule = &m.s;
        ck_assert_int_eq(hs_call(S.c, SVC "PutTierSchedule", &r.base,
                                 &commerce__commission__v1__put_tier_schedule_response__descriptor,
                                 NULL, &stt, md_other, 1),
                         0);
    }
    ck_assert_int_eq(put_channel_full(&S, md_other, "c-o", "ch", CT(COMMUNITY_LEADER), ACTIVE, NULL,
                                      0, "marginal", 0, &stt),
                     0);
    T0 = hs_real_ms() + 2000;
    char *o1 = order_uuid(), *o2 = order_uuid();
    paid(&S, o1, uuid(), "ch", 1000000);
    paid_in(&S, TENANT "-other", o2, uuid(), "ch", 1000000, T0);
    wait_for(&S, "SELECT count(*) FROM commissions WHERE state = 1", 2);
    completed(&S, o1, uuid(), "ch", hs_real_ms());
    completed_in(&S, TENANT "-other", o2, uuid(), "ch", hs_real_ms());
    char q[256];
    /* the other tenant's (default 0 days) becomes payable; TENANT's waits
     * its hour */
    snprintf(q, sizeof q, "SELECT state FROM commissions WHERE order_id = '%s'", o2);
    wait_for(&S, q, 2);
    wait_for(&S, "SELECT count(*) FROM completed_orders", 2);
    usleep(500 * 1000); /* five more ticks */
    ck_assert_int_eq(comm_col(&S, "state", o1), 1);
    /* TENANT shortens its window: the next tick makes o1 payable */
    ck_assert_int_eq(put_settings(&S, md, "w-3", 0, 0, 1, &ts, &stt), 0);
    ck_assert_int_eq(ts->revision, 2);
    ck_assert_int_eq(ts->after_sale_window->seconds, 0);
    FREE_SETTINGS(ts);
    snprintf(q, sizeof q, "SELECT state FROM commissions WHERE order_id = '%s'", o1);
    wait_for(&S, q, 2);
    /* back to the default: shown as the knob's days */
    ck_assert_int_eq(put_settings(&S, md, "w-4", WINDOW_DEFAULT, 0, 2, &ts, &stt), 0);
    ck_assert_int_eq(ts->revision, 3);
    ck_assert(ts->after_sale_window_default);
    ck_assert_int_eq(ts->after_sale_window->seconds, 0);
    FREE_SETTINGS(ts);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM tenant_settings WHERE after_sale_s IS NULL"), 1);
    st_stop(&S);
}
END_TEST

/* ---- payouts per period, listed, with their events ---- */

static int settle_in(st *s, const cm_rpc_md *m, const char *req_id, const char *ch,
                     long long period_ms, int nanos,
                     Commerce__Commission__V1__SettleCommissionsResponse **out, cm_rpc_status *stt)
{
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = period_ms / 1000;
    at.nanos = nanos;
    Commerce__Commission__V1__SettleCommissionsRequest r =
        COMMERCE__COMMISSION__V1__SETTLE_COMMISSIONS_REQUEST__INIT;
    r.request_id = (char *)req_id;
    r.channel_id = (char *)ch;
    r.currency = "CNY";
    r.period_start = period_ms || nanos ? &at : NULL;
    return hs_call(s->c, SVC "SettleCommissions", &r.base,
                   &commerce__commission__v1__settle_commissions_response__descriptor,
                   (ProtobufCMessage **)out, stt, m, 1);
}

/* ListPayouts of tenant m: channel ("" any), one state filter (0 none) */
static int list_payouts(st *s, const cm_rpc_md *m, const char *ch, int state, int page_size,
                        const char *token, Commerce__Commission__V1__ListPayoutsResponse **out,
                        cm_rpc_status *stt)
{
    Commerce__Commission__V1__PayoutState states[1] = {state};
    Commerce__Commission__V1__ListPayoutsRequest r =
        COMMERCE__COMMISSION__V1__LIST_PAYOUTS_REQUEST__INIT;
    r.channel_id = (char *)ch;
    r.states = states;
    r.n_states = state >= 0 && state != 0 ? 1 : 0;
    if (state == -1) { /* an UNSPECIFIED state, for the bad input */
        states[0] = 0;
        r.n_states = 1;
    }
    r.page_size = page_size;
    r.page_token = (char *)(token ? token : "");
    return hs_call(s->c, SVC "ListPayouts", &r.base,
                   &commerce__commission__v1__list_payouts_response__descriptor,
                   (ProtobufCMessage **)out, stt, m, 1);
}

/* the payout events of a type read so far, for payout id (NULL: any) */
static int payout_events(st *s, const char *type, const char *payout_id)
{
    int n = 0;
    for (size_t i = 0; i < hs_topic_count(s->events); i++) {
        const hs_record *r = hs_topic_at(s->events, i);
        if (strcmp(r->type, type) != 0)
            continue;
        /* the three share one shape: read them as the created event */
        Commerce__Events__V1__CommissionPayoutCreated *e =
            commerce__events__v1__commission_payout_created__unpack(NULL, r->len, r->payload);
        ck_assert_ptr_nonnull(e);
        ck_assert_ptr_nonnull(e->payout);
        ck_assert_ptr_nonnull(e->occurred_at);
        ck_assert_str_eq(e->channel_id, r->key);
        ck_assert_str_eq(e->payout->channel_id, r->key);
        if (!payout_id || strcmp(e->payout->payout_id, payout_id) == 0)
            n++;
        protobuf_c_message_free_unpacked(&e->base, NULL);
    }
    return n;
}

START_TEST(payouts_per_period_are_listed_per_tenant_with_their_events)
{
    static const char *const env[] = {"COMMISSION_AFTER_SALE_DAYS=0", "COMMISSION_PAYABLE_MS=100",
                                      NULL};
    st_start_env(&S, "plist", env);
    seed_sched m;
    seed(&m, "marginal", MARGINAL);
    cm_rpc_status stt;
    ck_assert_int_eq(put_schedule(&S, "s-1", &m.s, 0, &stt), 0);
    put_channel(&S, "ch", ACTIVE, NULL, 0, "marginal");
    {
        Commerce__Commission__V1__PutTierScheduleRequest r =
            COMMERCE__COMMISSION__V1__PUT_TIER_SCHEDULE_REQUEST__INIT;
        r.request_id = "s-1";
        r.schedule = &m.s;
        ck_assert_int_eq(hs_call(S.c, SVC "PutTierSchedule", &r.base,
                                 &commerce__commission__v1__put_tier_schedule_response__descriptor,
                                 NULL, &stt, md_other, 1),
                         0);
    }
    ck_assert_int_eq(put_channel_full(&S, md_other, "c-o", "ch", CT(COMMUNITY_LEADER), ACTIVE, NULL,
                                      0, "marginal", 0, &stt),
                     0);
    /* two periods of TENANT's channel (this month, and one 40 days on:
     * another month), and one order of the other tenant's */
    long long day = 86400000LL;
    T0 = hs_real_ms() + 2000;
    char *o1 = order_uuid(), *o2 = order_uuid(), *o3 = order_uuid();
    paid(&S, o1, uuid(), "ch", 1000000);                           /* 500.00 */
    paid_in(&S, TENANT, o2, uuid(), "ch", 2000000, T0 + 40 * day); /* 500 + 800 */
    paid_in(&S, TENANT "-other", o3, uuid(), "ch", 1000000, T0);   /* 500.00 */
    wait_for(&S, "SELECT count(*) FROM commissions WHERE state = 1", 3);
    ck_assert_int_eq(sql(&S, "SELECT count(DISTINCT period_start) FROM commissions"), 2);
    completed(&S, o1, uuid(), "ch", hs_real_ms());
    completed(&S, o2, uuid(), "ch", hs_real_ms());
    completed_in(&S, TENANT "-other", o3, uuid(), "ch", hs_real_ms());
    wait_for(&S, "SELECT count(*) FROM commissions WHERE state = 2", 3);
    long long p1 = comm_col(&S, "(extract(epoch FROM period_start) * 1000)::bigint", o1);
    /* bad input, named */
    Commerce__Commission__V1__SettleCommissionsResponse *sr = NULL;
    ck_assert_int_eq(settle_in(&S, md, "pp-0", "ch", p1, -1, &sr, &stt), 3);
    ck_assert_str_eq(stt.field, "period_start");
    /* the first period only: o1's 500.00 */
    ck_assert_int_eq(settle_in(&S, md, "pp-1", "ch", p1, 0, &sr, &stt), 0);
    ck_assert(!sr->below_minimum);
    ck_assert_int_eq(sr->payout->amount->amount_minor, 50000);
    ck_assert_int_eq(sr->payout->commissions, 1);
    ck_assert_ptr_nonnull(sr->payout->period_start);
    ck_assert_int_eq(sr->payout->period_start->seconds, p1 / 1000);
    char pay1[CM_ID_SIZE];
    snprintf(pay1, sizeof pay1, "%s", sr->payout->payout_id);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    /* the same key for another period (here: every period) is refused;
     * the same request answers the same payout */
    ck_assert_int_eq(settle_in(&S, md, "pp-1", "ch", 0, 0, &sr, &stt), 6);
    ck_assert_int_eq(settle_in(&S, md, "pp-1", "ch", p1, 0, &sr, &stt), 0);
    ck_assert_str_eq(sr->payout->payout_id, pay1);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    /* nothing more in that period */
    ck_assert_int_eq(settle_in(&S, md, "pp-2", "ch", p1, 0, &sr, &stt), 0);
    ck_assert(sr->below_minimum);
    ck_assert_int_eq(sr->payable->amount_minor, 0);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    /* without a period: everything payable, here o2's 1,300.00 */
    ck_assert_int_eq(settle_in(&S, md, "pp-3", "ch", 0, 0, &sr, &stt), 0);
    ck_assert_int_eq(sr->payout->amount->amount_minor, 130000);
    ck_assert_ptr_null(sr->payout->period_start);
    char pay2[CM_ID_SIZE];
    snprintf(pay2, sizeof pay2, "%s", sr->payout->payout_id);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    /* the other tenant's payout */
    ck_assert_int_eq(settle_in(&S, md_other, "pp-1", "ch", 0, 0, &sr, &stt), 0);
    ck_assert_int_eq(sr->payout->amount->amount_minor, 50000);
    char pay3[CM_ID_SIZE];
    snprintf(pay3, sizeof pay3, "%s", sr->payout->payout_id);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    /* results: the first paid, the second failed */
    Commerce__Commission__V1__ReportPayoutResultResponse *rr = NULL;
    ck_assert_int_eq(report(&S, pay1, PAID, &rr, &stt), 0);
    protobuf_c_message_free_unpacked(&rr->base, NULL);
    ck_assert_int_eq(report(&S, pay2, FAILED, &rr, &stt), 0);
    protobuf_c_message_free_unpacked(&rr->base, NULL);
    /* ListPayouts: newest first, a page at a time, TENANT's only */
    Commerce__Commission__V1__ListPayoutsResponse *lr = NULL;
    ck_assert_int_eq(list_payouts(&S, md, "", 0, 1, NULL, &lr, &stt), 0);
    ck_assert_uint_eq(lr->n_payouts, 1);
    ck_assert_str_eq(lr->payouts[0]->payout_id, pay2);
    ck_assert_int_eq(lr->payouts[0]->state, FAILED);
    ck_assert_str_ne(lr->next_page_token, "");
    char tok[512];
    snprintf(tok, sizeof tok, "%s", lr->next_page_token);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    ck_assert_int_eq(list_payouts(&S, md, "", 0, 1, tok, &lr, &stt), 0);
    ck_assert_uint_eq(lr->n_payouts, 1);
    ck_assert_str_eq(lr->payouts[0]->payout_id, pay1);
    ck_assert_int_eq(lr->payouts[0]->state, PAID);
    ck_assert_str_eq(lr->payouts[0]->provider_reference, "alipay-transfer-1");
    ck_assert_str_eq(lr->next_page_token, "");
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    ck_assert_int_eq(list_payouts(&S, md, "ch", PAID, 0, NULL, &lr, &stt), 0);
    ck_assert_uint_eq(lr->n_payouts, 1);
    ck_assert_str_eq(lr->payouts[0]->payout_id, pay1);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    ck_assert_int_eq(list_payouts(&S, md, "nobody", 0, 0, NULL, &lr, &stt), 0);
    ck_assert_uint_eq(lr->n_payouts, 0);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    /* the other tenant sees its own payout, never TENANT's */
    ck_assert_int_eq(list_payouts(&S, md_other, "", 0, 0, NULL, &lr, &stt), 0);
    ck_assert_uint_eq(lr->n_payouts, 1);
    ck_assert_str_eq(lr->payouts[0]->payout_id, pay3);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    ck_assert_int_eq(list_payouts(&S, md_other, "ch", PAID, 0, NULL, &lr, &stt), 0);
    ck_assert_uint_eq(lr->n_payouts, 0);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    /* a token of one tenant's query with other filters is refused */
    ck_assert_int_eq(list_payouts(&S, md, "ch", 0, 1, tok, &lr, &stt), 3);
    ck_assert_str_eq(stt.reason, "PAGE_TOKEN_INVALID");
    /* bad input, named */
    ck_assert_int_eq(list_payouts(&S, md, "", -1, 0, NULL, &lr, &stt), 3);
    ck_assert_str_eq(stt.field, "states[0]");
    ck_assert_int_eq(list_payouts(&S, md, "bad id!", 0, 0, NULL, &lr, &stt), 3);
    ck_assert_str_eq(stt.field, "channel_id");
    ck_assert_int_eq(list_payouts(&S, md, "", 0, -1, NULL, &lr, &stt), 3);
    ck_assert_str_eq(stt.field, "page_size");
    ck_assert_int_eq(list_payouts(&S, md, "", 0, 0, "garbage", &lr, &stt), 3);
    ck_assert_str_eq(stt.reason, "PAGE_TOKEN_INVALID");
    /* the payout events, keyed by channel: 3 created, 1 paid, 1 failed */
    for (int tries = 0; tries < 300; tries++) {
        if (payout_events(&S, "commerce.events.v1.CommissionPayoutCreated", NULL) == 3 &&
            payout_events(&S, "commerce.events.v1.CommissionPayoutPaid", NULL) == 1 &&
            payout_events(&S, "commerce.events.v1.CommissionPayoutFailed", NULL) == 1)
            break;
        hs_topic_next(S.events, 100);
    }
    ck_assert_int_eq(payout_events(&S, "commerce.events.v1.CommissionPayoutCreated", NULL), 3);
    ck_assert_int_eq(payout_events(&S, "commerce.events.v1.CommissionPayoutCreated", pay1), 1);
    ck_assert_int_eq(payout_events(&S, "commerce.events.v1.CommissionPayoutPaid", pay1), 1);
    ck_assert_int_eq(payout_events(&S, "commerce.events.v1.CommissionPayoutFailed", pay2), 1);
    st_stop(&S);
}
END_TEST

/* ---- closing a whole-volume period ---- */

static int close_period(st *s, const char *ch, const char *sched, long long start_ms,
                        Commerce__Commission__V1__ClosePeriodResponse **out, cm_rpc_status *stt)
{
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = start_ms / 1000;
    Commerce__Commission__V1__ClosePeriodRequest r =
        COMMERCE__COMMISSION__V1__CLOSE_PERIOD_REQUEST__INIT;
    r.channel_id = (char *)ch;
    r.tier_schedule_id = (char *)sched;
    r.period_start = start_ms ? &at : NULL;
    return hs_call(s->c, SVC "ClosePeriod", &r.base,
                   &commerce__commission__v1__close_period_response__descriptor,
                   (ProtobufCMessage **)out, stt, md, 1);
}

/* what a statement changed, through a CTE that counts it */
static void sql_do(const st *s, const char *q)
{
    char w[1024];
    snprintf(w, sizeof w, "WITH u AS (%s RETURNING 1) SELECT count(*) FROM u", q);
    ck_assert_int_ge(sql(s, w), 1);
}

/* a close's parts of channel: count, sum, and the part of merchant m
 * (amount, payer) */
static long long close_parts(const st *s, const char *channel, const char *what, const char *m)
{
    char q[512];
    snprintf(q, sizeof q,
             "SELECT %s FROM adjustments WHERE kind = 4 AND channel_id = '%s' AND order_id IS "
             "NULL%s%s%s",
             what, channel, m ? " AND merchant_id = '" : "", m ? m : "", m ? "'" : "");
    return sql(s, q);
}

START_TEST(closing_a_whole_volume_period_posts_its_true_up_once)
{
    /* the ticker stays away from last month while the rpc is tested */
    static const char *const env[] = {"COMMISSION_CLOSE_MS=3600000",
                                      "COMMISSION_CLOSE_AFTER_S=2592000", NULL};
    st_start_env(&S, "close", env);
    cm_rpc_status stt;
    seed_sched w, m;
    seed(&w, "whole", WHOLE);
    seed(&m, "marginal", MARGINAL);
    ck_assert_int_eq(put_schedule(&S, "s-1", &w.s, 0, &stt), 0);
    ck_assert_int_eq(put_schedule(&S, "s-m", &m.s, 0, &stt), 0);
    put_channel(&S, "par", ACTIVE, NULL, 0, "whole");
    put_channel(&S, "ch", ACTIVE, "par", 1000, "whole"); /* the parent earns 10 % */
    put_channel(&S, "ch2", ACTIVE, NULL, 0, "whole");
    put_channel(&S, "chm", ACTIVE, NULL, 0, "marginal");
    /* last month in the schedules' zone; the schedules are made to have
     * been in force since before it (a finished period needs orders paid
     * in the past) */
    long long day = 86400000LL;
    long long P = sql(&S, "SELECT (extract(epoch FROM (date_trunc('month', now() AT TIME ZONE "
                          "'Asia/Shanghai') - interval '1 month') AT TIME ZONE 'Asia/Shanghai') "
                          "* 1000)::bigint");
    long long cur = sql(&S, "SELECT (extract(epoch FROM date_trunc('month', now() AT TIME ZONE "
                            "'Asia/Shanghai') AT TIME ZONE 'Asia/Shanghai') * 1000)::bigint");
    char q[512];
    snprintf(q, sizeof q, "UPDATE tier_schedules SET effective_from = to_timestamp(%lld / 1000.0)",
             P - day);
    sql_do(&S, q);
    /* revision 1: 12,000.00 of merchant m-a reaches 8 % (960.00) */
    char *o1 = order_uuid(), *o2 = order_uuid(), *o3 = order_uuid(), *o4 = order_uuid();
    paid_by(&S, TENANT, o1, uuid(), "ch", "m-a", 1200000, P + 2 * day);
    paid_in(&S, TENANT, o3, uuid(), "ch2", 1200000, P + 2 * day);
    paid_in(&S, TENANT, order_uuid(), uuid(), "chm", 100000, P + 2 * day);
    wait_for(&S, "SELECT count(*) FROM commissions", 3);
    /* the schedule changes mid-month (same tiers, revision 2, the
     * platform pays): 2,000.00 more (1,500.00 of m-b, 500.00 of m-c)
     * counts on a row of its own at 5 % (100.00) */
    w.s.payer = COMMERCE__COMMISSION__V1__COMMISSION_PAYER__COMMISSION_PAYER_PLATFORM;
    ck_assert_int_eq(put_schedule(&S, "s-2", &w.s, 0, &stt), 0);
    snprintf(q, sizeof q,
             "UPDATE tier_schedules SET effective_from = to_timestamp(%lld / 1000.0) WHERE "
             "schedule_id = 'whole' AND revision = 2",
             P + 5 * day);
    sql_do(&S, q);
    paid_by(&S, TENANT, o2, uuid(), "ch", "m-b", 150000, P + 10 * day);
    paid_by(&S, TENANT, order_uuid(), uuid(), "ch", "m-c", 50000, P + 10 * day);
    paid_in(&S, TENANT, o4, uuid(), "ch2", 200000, P + 10 * day);
    paid_in(&S, TENANT, order_uuid(), uuid(), "ch2", 100000, hs_real_ms()); /* this month */
    wait_for(&S, "SELECT count(*) FROM commissions", 7);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM channel_periods WHERE channel_id = 'ch'"), 2);
    ck_assert_int_eq(posted(&S, "ch"), 96000 + 10000);
    /* bad input, named; what cannot close */
    Commerce__Commission__V1__ClosePeriodResponse *cr = NULL;
    ck_assert_int_eq(close_period(&S, "", "whole", P, &cr, &stt), 3);
    ck_assert_str_eq(stt.field, "channel_id");
    ck_assert_int_eq(close_period(&S, "ch", "", P, &cr, &stt), 3);
    ck_assert_str_eq(stt.field, "tier_schedule_id");
    ck_assert_int_eq(close_period(&S, "ch", "whole", 0, &cr, &stt), 3);
    ck_assert_str_eq(stt.field, "period_start");
    ck_assert_int_eq(close_period(&S, "nobody", "whole", P, &cr, &stt), 5);
    ck_assert_int_eq(close_period(&S, "ch", "whole", P + day, &cr, &stt), 5);
    ck_assert_int_eq(close_period(&S, "ch2", "whole", cur, &cr, &stt), 9);
    ck_assert_str_eq(stt.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_int_eq(close_period(&S, "chm", "marginal", P, &cr, &stt), 9);
    ck_assert_str_eq(stt.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM channel_periods WHERE closed_at IS NOT NULL"),
                     0);
    /* 14,000.00 of the month at 8 %: 1,120.00; 1,060.00 was posted */
    ck_assert_int_eq(close_period(&S, "ch", "whole", P, &cr, &stt), 0);
    ck_assert(!cr->already_closed);
    ck_assert_int_eq(cr->close->net_sales->amount_minor, 1400000);
    ck_assert_int_eq(cr->close->commission->amount_minor, 112000);
    ck_assert_int_eq(cr->close->true_up->amount_minor, 6000);
    ck_assert_int_eq(cr->close->tier_schedule_revision, 2);
    ck_assert_int_eq(cr->close->period_start->seconds, P / 1000);
    ck_assert_str_ne(cr->close->adjustment_id, "");
    /* the parent's pool: 10 % of 1,060.00 before, of 1,120.00 after */
    ck_assert_str_eq(cr->close->parent_channel_id, "par");
    ck_assert_int_eq(cr->close->parent_share->amount_minor, 600);
    ck_assert_str_ne(cr->close->parent_adjustment_id, "");
    char adj[CM_ID_SIZE];
    snprintf(adj, sizeof adj, "%s", cr->close->adjustment_id);
    protobuf_c_message_free_unpacked(&cr->base, NULL);
    /* again: the same close, nothing posted */
    ck_assert_int_eq(close_period(&S, "ch", "whole", P, &cr, &stt), 0);
    ck_assert(cr->already_closed);
    ck_assert_int_eq(cr->close->true_up->amount_minor, 6000);
    ck_assert_str_eq(cr->close->adjustment_id, adj);
    ck_assert_int_eq(cr->close->parent_share->amount_minor, 600);
    protobuf_c_message_free_unpacked(&cr->base, NULL);
    /* one part per merchant, pro rata to its net sales (12,000.00,
     * 1,500.00, 500.00 of 14,000.00) by largest remainder: 60.00 ->
     * 51.43, 6.43, 2.14; the parent's 6.00 -> 5.14, 0.64, 0.22; each on
     * its merchant and on the newest revision's payer (the platform) */
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM adjustments WHERE kind = 4"), 6);
    ck_assert_int_eq(close_parts(&S, "ch", "count(*)", NULL), 3);
    ck_assert_int_eq(close_parts(&S, "ch", "sum(amount)", NULL), 6000);
    ck_assert_int_eq(close_parts(&S, "ch", "amount", "m-a"), 5143);
    ck_assert_int_eq(close_parts(&S, "ch", "amount", "m-b"), 643);
    ck_assert_int_eq(close_parts(&S, "ch", "amount", "m-c"), 214);
    ck_assert_int_eq(close_parts(&S, "par", "count(*)", NULL), 3);
    ck_assert_int_eq(close_parts(&S, "par", "sum(amount)", NULL), 600);
    ck_assert_int_eq(close_parts(&S, "par", "amount", "m-a"), 514);
    ck_assert_int_eq(close_parts(&S, "par", "amount", "m-b"), 64);
    ck_assert_int_eq(close_parts(&S, "par", "amount", "m-c"), 22);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM adjustments WHERE kind = 4 AND payer = 2 AND "
                             "child_id = (CASE channel_id WHEN 'par' THEN 'ch' ELSE '' END)"),
                     6);
    /* the close's adjustment_id is the first merchant's part */
    snprintf(q, sizeof q,
             "SELECT count(*) FROM adjustments WHERE adjustment_id = '%s' AND merchant_id = 'm-a'",
             adj);
    ck_assert_int_eq(sql(&S, q), 1);
    /* the parent earned floor(10 % of the child's net commission) */
    ck_assert_int_eq(earned(&S, "par"), posted(&S, "ch") / 10);
    ck_assert_int_eq(sql(&S, "SELECT sum(amount) FROM adjustments WHERE kind = 4 AND channel_id = "
                             "'ch' AND state = 2 AND order_id IS NULL"),
                     6000);
    ck_assert_int_eq(posted(&S, "ch"), 112000);
    ck_assert_int_eq(earned(&S, "ch"), 112000);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM channel_periods WHERE channel_id = 'ch' AND "
                             "closed_at IS NOT NULL"),
                     2);
    /* a refund after the close: o1 gives back its own 240.00 (a quarter of
     * 960.00); the month is not repriced (open, its row falling from
     * 12,000.00 to 9,000.00 would also have trued its sales down to 5 %) */
    refunded(&S, o1, uuid(), "ch", "rf-late", 300000);
    wait_for(&S, "SELECT count(*) FROM refunds_applied", 1);
    ck_assert_int_eq(comm_col(&S, "clawed_back", o1), 24000);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM adjustments WHERE refund_id = 'rf-late' AND "
                             "channel_id = 'ch'"),
                     0);
    ck_assert_int_eq(posted(&S, "ch"), 112000 - 24000);
    ck_assert_int_eq(earned(&S, "ch"), posted(&S, "ch"));
    ck_assert_int_eq(earned(&S, "par"), posted(&S, "ch") / 10);
    /* a payment arriving after the close earns its own commission (on its
     * revision's row, 2,000.00 -> 3,000.00 at 5 %: 50.00) and reprices
     * no one */
    char *o5 = order_uuid();
    paid_in(&S, TENANT, o5, uuid(), "ch", 100000, P + 11 * day);
    wait_for(&S, "SELECT count(*) FROM commissions WHERE channel_id = 'ch'", 4);
    ck_assert_int_eq(comm_col(&S, "amount", o5), 5000);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM adjustments WHERE channel_id = 'ch'"), 3);
    ck_assert_int_eq(earned(&S, "ch"), posted(&S, "ch"));
    ck_assert_int_eq(earned(&S, "par"), posted(&S, "ch") / 10);
    /* the close's CommissionAdjusted, and the partners' adjusted (no
     * order), valid against the schema */
    for (int tries = 0;
         tries < 100 && events_of(&S, "commerce.events.v1.CommissionAdjusted", "ch") < 3; tries++)
        hs_topic_next(S.events, 100);
    ck_assert_int_eq(events_of(&S, "commerce.events.v1.CommissionAdjusted", "ch"), 3);
    int kinds[NPT] = {4, 0, 1, 0, 3, 0, 0, 0, 0};
    partner_check(&S, "ch", kinds);
    int par[NPT] = {0, 0, 0, 0, -1, 0, 0, 0, 0};
    partner_check(&S, "par", par);
    /* the ticker, in a restarted service, closes ch2's month by itself:
     * the same true-up, once; ch's stays as it was, this month and the
     * marginal month stay open */
    ck_assert_int_eq(hs_stop(&S.p, SIGTERM, 30000), 0);
    static const char *const tick[] = {"COMMISSION_CLOSE_MS=200", "COMMISSION_CLOSE_AFTER_S=0",
                                       NULL};
    const char *env2[32];
    hs_start(&S.p, COMMISSION_BIN, st_env(&S, env2, 32, tick));
    cm_rpc_client_free(S.c);
    S.c = hs_client(&S.p, NULL);
    wait_for(&S,
             "SELECT count(*) FROM channel_periods WHERE channel_id = 'ch2' AND closed_at IS "
             "NOT NULL",
             2);
    usleep(600 * 1000); /* three more ticks */
    /* ch2's orders are all m-1's: one part */
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM adjustments WHERE kind = 4"), 7);
    ck_assert_int_eq(close_parts(&S, "ch2", "amount", "m-1"), 6000);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM channel_periods WHERE closed_at IS NULL"), 2);
    ck_assert_int_eq(close_period(&S, "ch2", "whole", P, &cr, &stt), 0);
    ck_assert(cr->already_closed);
    ck_assert_int_eq(cr->close->true_up->amount_minor, 6000);
    protobuf_c_message_free_unpacked(&cr->base, NULL);
    /* closed periods hold together, open ones row by row */
    ck_assert_uint_eq(invariants(&S, NULL, NULL), 0);
    st_stop(&S);
}
END_TEST

START_TEST(channel_quota_refuses_a_new_channel_naming_the_quota)
{
    char path[128], env_file[160];
    snprintf(path, sizeof path, "/tmp/commerce-cms-quotas-%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"tenants\": {\"" TENANT "\": {\"quotas\": {\"channels\": 2}}}}", f);
    ck_assert_int_eq(fclose(f), 0);
    snprintf(env_file, sizeof env_file, "RATE_LIMITS_FILE=%s", path);
    const char *extra[] = {env_file, NULL};
    st_start_env(&S, "quota", extra);
    put_channel(&S, "CH-1", ACTIVE, NULL, 0, NULL);
    put_channel(&S, "CH-2", ACTIVE, NULL, 0, NULL);
    cm_rpc_status stt;
    ck_assert_int_eq(put_channel_full(&S, md, "ch-3", "CH-3", CT(COMMUNITY_LEADER), ACTIVE, NULL, 0,
                                      NULL, 0, &stt),
                     GRPC_STATUS_RESOURCE_EXHAUSTED);
    ck_assert_str_eq(stt.reason, "QUOTA_EXCEEDED");
    ck_assert_str_eq(cm_rpc_status_meta(&stt, "quota"), "channels");
    ck_assert_str_eq(cm_rpc_status_meta(&stt, "limit"), "2");
    ck_assert_int_eq(hs_sql_long(S.schema, "SELECT count(*) FROM channels"), 2);
    /* changing a channel it has is no creation; another tenant has its own */
    put_channel(&S, "CH-2", SUSPENDED, NULL, 0, NULL);
    ck_assert_int_eq(put_channel_full(&S, md_other, "ch-3", "CH-3", CT(COMMUNITY_LEADER), ACTIVE,
                                      NULL, 0, NULL, 0, &stt),
                     0);
    st_stop(&S);
    unlink(path);
}
END_TEST

/* a RATE_LIMITS_FILE of channel quotas for this test; path: its name */
static void quota_file(char *path, size_t cap, const char *json)
{
    snprintf(path, cap, "/tmp/commerce-cms-quotas-%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(json, f);
    ck_assert_int_eq(fclose(f), 0);
}

typedef struct creator {
    int index, created, refused;
} creator;

static const cm_rpc_md md_race[1] = {{"x-tenant-id", "race"}};

static void *create_channels(void *arg)
{
    creator *k = arg;
    for (int i = 0; i < 4; i++) {
        char rid[64], id[64];
        snprintf(rid, sizeof rid, "race-%d-%d", k->index, i);
        snprintf(id, sizeof id, "RACE-%d-%d", k->index, i);
        cm_rpc_status stt;
        int code = put_channel_full(&S, md_race, rid, id, CT(COMMUNITY_LEADER), ACTIVE, NULL, 0,
                                    NULL, 0, &stt);
        k->created += code == 0;
        k->refused += code == GRPC_STATUS_RESOURCE_EXHAUSTED;
    }
    return NULL;
}

START_TEST(channel_quota_holds_exactly_under_concurrent_creators)
{
    char path[128], env_file[160];
    quota_file(path, sizeof path, "{\"tenants\": {\"race\": {\"quotas\": {\"channels\": 5}}}}");
    snprintf(env_file, sizeof env_file, "RATE_LIMITS_FILE=%s", path);
    const char *extra[] = {env_file, NULL};
    st_start_env(&S, "quota", extra);
    enum { N = 8 };
    pthread_t th[N];
    creator k[N];
    for (int i = 0; i < N; i++) {
        k[i] = (creator){i, 0, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, create_channels, &k[i]), 0);
    }
    int created = 0, refused = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        created += k[i].created;
        refused += k[i].refused;
    }
    ck_assert_int_eq(created, 5);
    ck_assert_int_eq(refused, N * 4 - 5);
    ck_assert_int_eq(
        hs_sql_long(S.schema, "SELECT count(*) FROM channels WHERE tenant_id = 'race'"), 5);
    ck_assert_int_eq(hs_sql_long(S.schema, "SELECT used FROM quota_usage WHERE tenant_id = 'race' "
                                           "AND quota = 'channels'"),
                     5);
    st_stop(&S);
    unlink(path);
}
END_TEST

START_TEST(channel_quota_counter_is_backfilled_and_follows_deletes)
{
    char path[128], env_file[160];
    quota_file(path, sizeof path,
               "{\"tenants\": {\"" TENANT "\": {\"quotas\": {\"channels\": 3}}}}");
    snprintf(env_file, sizeof env_file, "RATE_LIMITS_FILE=%s", path);
    const char *extra[] = {env_file, NULL};
    st_start_env(&S, "quota", extra);
    const char *used = "SELECT COALESCE((SELECT used FROM quota_usage WHERE tenant_id = '" TENANT
                       "' AND quota = 'channels'), -1)";
    /* channels written in sql (a bulk load) are counted too */
    hs_sql_exec(S.schema, "INSERT INTO channels (tenant_id, channel_id, name, type, state, "
                          "revision) SELECT '" TENANT "', 'PRE-' || i, 'pre', 1, 1, 1 "
                          "FROM generate_series(1, 2) i");
    ck_assert_int_eq(hs_sql_long(S.schema, used), 2);
    /* a deployment from before the counter: rows, no counts; the
     * migration's recount (the backfill) counts them */
    hs_sql_exec(S.schema, "DELETE FROM quota_usage");
    hs_sql_exec(S.schema, "SELECT cms_quota_recount()");
    ck_assert_int_eq(hs_sql_long(S.schema, used), 2);
    hs_sql_exec(S.schema, "SELECT cms_quota_recount()");
    ck_assert_int_eq(hs_sql_long(S.schema, used), 2);
    put_channel(&S, "CH-1", ACTIVE, NULL, 0, NULL);
    cm_rpc_status stt;
    ck_assert_int_eq(put_channel_full(&S, md, "ch-2", "CH-2", CT(COMMUNITY_LEADER), ACTIVE, NULL, 0,
                                      NULL, 0, &stt),
                     GRPC_STATUS_RESOURCE_EXHAUSTED);
    ck_assert_str_eq(cm_rpc_status_meta(&stt, "quota"), "channels");
    /* an update is no creation; a deleted channel frees its place */
    put_channel(&S, "CH-1", SUSPENDED, NULL, 0, NULL);
    ck_assert_int_eq(hs_sql_long(S.schema, used), 3);
    hs_sql_exec(S.schema, "DELETE FROM channels WHERE channel_id = 'PRE-1'");
    ck_assert_int_eq(hs_sql_long(S.schema, used), 2);
    ck_assert_int_eq(put_channel_full(&S, md, "ch-2", "CH-2", CT(COMMUNITY_LEADER), ACTIVE, NULL, 0,
                                      NULL, 0, &stt),
                     0);
    ck_assert_int_eq(hs_sql_long(S.schema, used), 3);
    ck_assert_int_eq(hs_sql_long(S.schema, "SELECT count(*) FROM channels"), 3);
    st_stop(&S);
    unlink(path);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("commission");
    TCase *tc = tcase_create("commission");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, seed_table_to_the_minor_unit_in_both_modes);
    tcase_add_test(tc, threshold_crossed_and_uncrossed_trues_up_and_parent_shares_exactly);
    tcase_add_test(tc, duplicates_accrue_and_claw_back_once);
    tcase_add_test(tc, refund_before_its_payment_is_parked_then_applied);
    tcase_add_test(tc, suspended_or_unknown_channel_accrues_nothing);
    tcase_add_test(tc, bad_input_is_named_and_tenants_are_apart);
    tcase_add_test(tc, kill_mid_batch_accrues_each_order_once);
    tcase_add_test(tc, completed_past_the_window_is_payable_and_later_refunds_net_from_it);
    tcase_add_test(tc, two_replicas_make_each_commission_payable_once);
    tcase_add_test(tc, payouts_net_payables_and_clawbacks_after_settlement);
    tcase_add_test(tc, tenant_window_decides_when_commissions_become_payable);
    tcase_add_test(tc, payouts_per_period_are_listed_per_tenant_with_their_events);
    tcase_add_test(tc, closing_a_whole_volume_period_posts_its_true_up_once);
    suite_add_tcase(s, tc);
    TCase *q = tcase_create("quotas");
    tcase_set_timeout(q, 120);
    tcase_add_checked_fixture(q, NULL, teardown);
    tcase_add_test(q, channel_quota_refuses_a_new_channel_naming_the_quota);
    tcase_add_test(q, channel_quota_holds_exactly_under_concurrent_creators);
    tcase_add_test(q, channel_quota_counter_is_backfilled_and_follows_deletes);
    suite_add_tcase(s, q);
    return hs_run(s, 1);
}
