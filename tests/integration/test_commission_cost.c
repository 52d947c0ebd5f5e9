/*
 * the commission cost on settlement's ledger: a real commerce-commission
 * and a real commerce-settlement against the private postgres and the
 * broker. the test plays the order events on a topic of its own, which
 * both services consume (commission accrues and claws back, settlement
 * splits); settlement also consumes commission's own topic and books each
 * change of a channel's commission as a cost entry against its payer
 * (services/settlement/README.md, "Commission cost").
 */
#include "harness.h"

#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cm_id.h"
#include "commerce/commission/v1/commission_service.pb-c.h"
#include "commerce/events/v1/commission_events.pb-c.h"
#include "commerce/events/v1/order_events.pb-c.h"
#include "commerce/events/v1/settlement_events.pb-c.h"

#define CSVC "/commerce.commission.v1.CommissionService/"
#define TENANT "tenant-cost"
#define PLATFORM "plat"
#define MERCHANT "m-1"
#define CT(x) COMMERCE__COMMISSION__V1__CHANNEL_TYPE__CHANNEL_TYPE_##x
#define MARGINAL COMMERCE__COMMISSION__V1__TIER_MODE__TIER_MODE_MARGINAL
#define WHOLE COMMERCE__COMMISSION__V1__TIER_MODE__TIER_MODE_WHOLE_VOLUME
#define ACTIVE COMMERCE__COMMISSION__V1__CHANNEL_STATE__CHANNEL_STATE_ACTIVE
#define PAYER(x) COMMERCE__COMMISSION__V1__COMMISSION_PAYER__COMMISSION_PAYER_##x
/* settlement's party types (settlement.proto) */
enum { P_MERCHANT = 1, P_PLATFORM = 2, P_COMMISSION = 102 };

static const cm_rpc_md md[1] = {{"x-tenant-id", TENANT}};

typedef struct pair {
    char cschema[64], sschema[64], otopic[128], ctopic[128], ptopic[128], stopic[128], dlq[160];
    char cgroup[128], sgroup[128], kgroup[128];
    char se[7][192];
    const char *senv[16];
    hs_proc cms, stl;
    cm_rpc_client *c;
    hs_producer *prod;
} pair;

static pair S;
static int seq;

static void pair_start(pair *s, const char *tag)
{
    memset(s, 0, sizeof *s);
    seq++;
    int pid = (int)getpid();
    snprintf(s->cschema, sizeof s->cschema, "cost_c_%s_%d_%d", tag, pid, seq);
    snprintf(s->sschema, sizeof s->sschema, "cost_s_%s_%d_%d", tag, pid, seq);
    snprintf(s->otopic, sizeof s->otopic, "commerce.order.v1.cost-%s-%d-%d", tag, pid, seq);
    snprintf(s->ctopic, sizeof s->ctopic, "commerce.commission.v1.cost-%s-%d-%d", tag, pid, seq);
    snprintf(s->ptopic, sizeof s->ptopic, "commerce.commission.partner.v1.cost-%s-%d-%d", tag, pid,
             seq);
    snprintf(s->stopic, sizeof s->stopic, "commerce.settlement.v1.cost-%s-%d-%d", tag, pid, seq);
    snprintf(s->cgroup, sizeof s->cgroup, "commerce.commission.cost-%s-%d-%d", tag, pid, seq);
    snprintf(s->sgroup, sizeof s->sgroup, "commerce.settlement.cost-%s-%d-%d", tag, pid, seq);
    snprintf(s->kgroup, sizeof s->kgroup, "commerce.settlement.commission.cost-%s-%d-%d", tag, pid,
             seq);
    snprintf(s->dlq, sizeof s->dlq, "%s.dlq", s->ctopic);
    const char *topics[] = {s->otopic, s->ctopic, s->ptopic, s->stopic, s->dlq};
    for (int i = 0; i < 5; i++)
        hs_kafka_create_topic(hs_kafka_brokers(), topics[i], i == 4 ? 1 : 2);
    /* the commission service: payable 7 days after completion, checked
     * every 200 ms */
    char ce[5][192];
    snprintf(ce[0], sizeof ce[0], "COMMISSION_SCHEMA=%s", s->cschema);
    snprintf(ce[1], sizeof ce[1], "COMMISSION_ORDER_TOPIC=%s", s->otopic);
    snprintf(ce[2], sizeof ce[2], "COMMISSION_ORDER_GROUP=%s", s->cgroup);
    snprintf(ce[3], sizeof ce[3], "COMMISSION_TOPIC=%s", s->ctopic);
    snprintf(ce[4], sizeof ce[4], "COMMISSION_PARTNER_TOPIC=%s", s->ptopic);
    const char *cenv[] = {ce[0],
                          ce[1],
                          ce[2],
                          ce[3],
                          ce[4],
                          "COMMISSION_AFTER_SALE_DAYS=7",
                          "COMMISSION_PAYABLE_MS=200",
                          "COMMISSION_FEED=off",
                          NULL};
    hs_start(&s->cms, COMMISSION_BIN, cenv);
    /* settlement: splits from the same order events, the cost from the
     * commission topic; the payer runs often (it must leave the channels'
     * commission accounts alone), the settler not at all */
    char(*se)[192] = s->se;
    snprintf(se[0], sizeof se[0], "SETTLEMENT_SCHEMA=%s", s->sschema);
    snprintf(se[1], sizeof se[1], "SETTLEMENT_ORDER_TOPIC=%s", s->otopic);
    snprintf(se[2], sizeof se[2], "SETTLEMENT_ORDER_GROUP=%s", s->sgroup);
    snprintf(se[3], sizeof se[3], "SETTLEMENT_TOPIC=%s", s->stopic);
    snprintf(se[4], sizeof se[4], "SETTLEMENT_COMMISSION_TOPIC=%s", s->ctopic);
    snprintf(se[5], sizeof se[5], "SETTLEMENT_COMMISSION_GROUP=%s", s->kgroup);
    snprintf(se[6], sizeof se[6], "SETTLEMENT_PLATFORM_ID=%s", PLATFORM);
    size_t k = 0;
    for (int i = 0; i < 7; i++)
        s->senv[k++] = se[i];
    s->senv[k++] = "SETTLEMENT_RUN_TICK_MS=3600000";
    s->senv[k++] = "SETTLEMENT_PAYOUT_MS=300";
    s->senv[k] = NULL;
    hs_start(&s->stl, SETTLEMENT_BIN, s->senv);
    s->c = hs_client(&s->cms, NULL);
    s->prod = hs_producer_new(hs_kafka_brokers());
}

static void pair_stop(pair *s)
{
    cm_rpc_client_free(s->c);
    hs_producer_free(s->prod);
    ck_assert_msg(hs_stop(&s->stl, SIGTERM, 30000) == 0, "settlement did not exit 0 (log %s)",
                  s->stl.log_path);
    ck_assert_msg(hs_stop(&s->cms, SIGTERM, 30000) == 0, "commission did not exit 0 (log %s)",
                  s->cms.log_path);
    const char *topics[] = {s->otopic, s->ctopic, s->ptopic, s->stopic, s->dlq};
    for (int i = 0; i < 5; i++)
        hs_kafka_delete_topic(hs_kafka_brokers(), topics[i]);
    hs_drop_schema(NULL, s->cschema);
    hs_drop_schema(NULL, s->sschema);
}

static void teardown(void)
{
    hs_teardown();
}

/* ---- commission: schedules and channels ---- */

/* the seed's table (5 % / 8 % from 10,000.00 / 12 % from 50,000.00) in
 * mode, monthly, paid by payer, under request id req */
static void put_schedule_as(pair *s, const char *req, const char *id, int payer, int mode)
{
    static const long long from[3] = {0, 1000000, 5000000};
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
    Commerce__Commission__V1__TierSchedule sc = COMMERCE__COMMISSION__V1__TIER_SCHEDULE__INIT;
    sc.tier_schedule_id = (char *)id;
    sc.name = "seed";
    sc.currency = "CNY";
    sc.period = COMMERCE__COMMISSION__V1__PERIOD_TYPE__PERIOD_TYPE_MONTH;
    sc.time_zone = "Asia/Shanghai";
    sc.tiers = tp;
    sc.n_tiers = 3;
    sc.mode = mode;
    sc.payer = payer;
    Commerce__Commission__V1__PutTierScheduleRequest r =
        COMMERCE__COMMISSION__V1__PUT_TIER_SCHEDULE_REQUEST__INIT;
    r.request_id = (char *)req;
    r.schedule = &sc;
    cm_rpc_status stt;
    int code = hs_call(s->c, CSVC "PutTierSchedule", &r.base,
                       &commerce__commission__v1__put_tier_schedule_response__descriptor, NULL,
                       &stt, md, 1);
    ck_assert_msg(code == 0, "PutTierSchedule %s: %d %s %s", id, code, stt.field, stt.message);
}

/* marginal, under request id "s-<id>" */
static void put_schedule(pair *s, const char *id, int payer)
{
    char req[64];
    snprintf(req, sizeof req, "s-%s", id);
    put_schedule_as(s, req, id, payer, MARGINAL);
}

static void put_channel(pair *s, const char *id, const char *parent, int bps, const char *sched)
{
    Commerce__Commission__V1__Channel c = COMMERCE__COMMISSION__V1__CHANNEL__INIT;
    c.channel_id = (char *)id;
    c.name = "a channel";
    c.type = CT(COMMUNITY_LEADER);
    c.state = ACTIVE;
    c.parent_channel_id = (char *)(parent ? parent : "");
    c.parent_override_bps = bps;
    c.tier_schedule_id = (char *)(sched ? sched : "");
    Commerce__Commission__V1__PutChannelRequest r =
        COMMERCE__COMMISSION__V1__PUT_CHANNEL_REQUEST__INIT;
    char req[64];
    snprintf(req, sizeof req, "ch-%s", id);
    r.request_id = req;
    r.channel = &c;
    cm_rpc_status stt;
    int code =
        hs_call(s->c, CSVC "PutChannel", &r.base,
                &commerce__commission__v1__put_channel_response__descriptor, NULL, &stt, md, 1);
    ck_assert_msg(code == 0, "PutChannel %s: %d %s %s", id, code, stt.field, stt.message);
}

/* ---- order events, as the order service would send them ---- */

static char *uuid(void)
{
    static char ids[64][CM_ID_SIZE];
    static int k;
    char *id = ids[k++ % 64];
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    return id;
}

static long long T0;

static void paid_by(pair *s, const char *order_id, const char *channel, const char *merchant,
                    long long amount, long long at_ms)
{
    Commerce__Common__V1__Money m = COMMERCE__COMMON__V1__MONEY__INIT;
    m.amount_minor = amount;
    m.currency = "CNY";
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = at_ms / 1000;
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
    const char *id = uuid();
    e.event_id = (char *)id;
    e.tenant_id = TENANT;
    e.order_id = (char *)order_id;
    e.order = &o;
    hs_produce_event(s->prod, s->otopic, order_id, "commerce.events.v1.OrderPaid",
                     "/commerce/order", id, TENANT, &e.base);
}

static void paid(pair *s, const char *order_id, const char *channel, long long amount)
{
    paid_by(s, order_id, channel, MERCHANT, amount, T0);
}

static void refunded(pair *s, const char *order_id, const char *channel, const char *refund_id,
                     long long amount)
{
    Commerce__Common__V1__Money m = COMMERCE__COMMON__V1__MONEY__INIT;
    m.amount_minor = amount;
    m.currency = "CNY";
    Commerce__Order__V1__Refund rf = COMMERCE__ORDER__V1__REFUND__INIT;
    rf.refund_id = (char *)refund_id;
    rf.amount = &m;
    Commerce__Order__V1__Order o = COMMERCE__ORDER__V1__ORDER__INIT;
    o.order_id = (char *)order_id;
    o.merchant_id = MERCHANT;
    o.channel_id = (char *)channel;
    Commerce__Events__V1__OrderRefunded e = COMMERCE__EVENTS__V1__ORDER_REFUNDED__INIT;
    const char *id = uuid();
    e.event_id = (char *)id;
    e.tenant_id = TENANT;
    e.order_id = (char *)order_id;
    e.order = &o;
    e.refund = &rf;
    hs_produce_event(s->prod, s->otopic, order_id, "commerce.events.v1.OrderRefunded",
                     "/commerce/order", id, TENANT, &e.base);
}

static void completed(pair *s, const char *order_id, const char *channel, long long at_ms)
{
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = at_ms / 1000;
    Commerce__Order__V1__Order o = COMMERCE__ORDER__V1__ORDER__INIT;
    o.order_id = (char *)order_id;
    o.channel_id = (char *)channel;
    o.completed_at = &at;
    Commerce__Events__V1__OrderCompleted e = COMMERCE__EVENTS__V1__ORDER_COMPLETED__INIT;
    const char *id = uuid();
    e.event_id = (char *)id;
    e.tenant_id = TENANT;
    e.occurred_at = &at;
    e.order_id = (char *)order_id;
    e.order = &o;
    hs_produce_event(s->prod, s->otopic, order_id, "commerce.events.v1.OrderCompleted",
                     "/commerce/order", id, TENANT, &e.base);
}

/* ---- reading both sides ---- */

static long long csql(const pair *s, const char *q)
{
    return hs_sql_long(s->cschema, q);
}

static long long ssql(const pair *s, const char *q)
{
    return hs_sql_long(s->sschema, q);
}

/* the channel's net commission as the commission service has it:
 * commissions net of clawbacks, plus true-ups and parent shares (a
 * CLAWBACK adjustment is the payout-side record of a clawback, no change
 * of its own) */
static long long earned(const pair *s, const char *ch)
{
    char q[512];
    snprintf(q, sizeof q,
             "SELECT (SELECT coalesce(sum(amount - clawed_back), 0) FROM commissions WHERE "
             "channel_id = '%s') + (SELECT coalesce(sum(amount), 0) FROM adjustments WHERE "
             "channel_id = '%s' AND kind <> 3)",
             ch, ch);
    return csql(s, q);
}

/* the sum of a party's postings in settlement's cost entries */
static long long cost_of(const pair *s, int type, const char *owner)
{
    char q[768];
    snprintf(q, sizeof q,
             "SELECT coalesce(sum(x.amt), 0) FROM entries e, unnest(e.account_ids, e.amounts) "
             "AS x(id, amt) JOIN accounts a ON a.account_id = x.id WHERE e.kind = 7 AND "
             "a.tenant_id = '%s' AND a.party_type = %d AND a.owner_id = '%s'",
             TENANT, type, owner);
    return ssql(s, q);
}

/* waits until settlement booked the channel's net commission */
static void wait_booked(const pair *s, const char *ch)
{
    char q[512];
    snprintf(q, sizeof q,
             "SELECT coalesce(sum(available), 0) FROM accounts WHERE tenant_id = '%s' AND "
             "party_type = 102 AND owner_id = '%s'",
             TENANT, ch);
    hs_wait_sql(s->sschema, q, earned(s, ch), s->stl.log_path);
}

static long long entries(const pair *s)
{
    return ssql(s, "SELECT count(*) FROM entries WHERE kind = 7");
}

/* every account sums to zero with the others, and its buckets equal the
 * sum of its postings */
static void ck_ledger_balanced(const pair *s)
{
    ck_assert_int_eq(ssql(s, "SELECT coalesce(sum(pending + available + paying + paid_out), 0) "
                             "FROM accounts"),
                     0);
    ck_assert_int_eq(
        ssql(s, "SELECT count(*) FROM accounts a LEFT JOIN (SELECT x.id, sum(x.amt) FILTER "
                "(WHERE x.b = 1) AS p, sum(x.amt) FILTER (WHERE x.b = 2) AS v, sum(x.amt) FILTER "
                "(WHERE x.b = 3) AS g, sum(x.amt) FILTER (WHERE x.b = 4) AS o FROM entries e, "
                "unnest(e.account_ids, e.buckets, e.amounts) AS x(id, b, amt) GROUP BY x.id) j "
                "ON j.id = a.account_id WHERE a.pending <> coalesce(j.p, 0) OR a.available <> "
                "coalesce(j.v, 0) OR a.paying <> coalesce(j.g, 0) OR a.paid_out <> "
                "coalesce(j.o, 0)"),
        0);
    ck_assert_int_eq(ssql(s, "SELECT count(*) FROM entries WHERE entry_sum(amounts) <> 0"), 0);
}

/* each channel's commission account holds its net commission, the payers
 * bear exactly what their channels earned, settlement paid none of it
 * out, and the ledger balances */
static void ck_costs(const pair *s)
{
    wait_booked(s, "ch-m");
    wait_booked(s, "ch-p");
    wait_booked(s, "par");
    long long m = earned(s, "ch-m"), p = earned(s, "ch-p"), par = earned(s, "par");
    ck_assert_int_eq(cost_of(s, P_COMMISSION, "ch-m"), m);
    ck_assert_int_eq(cost_of(s, P_COMMISSION, "ch-p"), p);
    ck_assert_int_eq(cost_of(s, P_COMMISSION, "par"), par);
    /* ch-m's schedule is the merchant's, and so is its parent's share of
     * it; ch-p's is the platform's */
    ck_assert_int_eq(cost_of(s, P_MERCHANT, MERCHANT), -(m + par));
    ck_assert_int_eq(cost_of(s, P_PLATFORM, PLATFORM), -p);
    /* the period rows agree: what each channel was posted */
    char q[256];
    snprintf(q, sizeof q,
             "SELECT coalesce(sum(posted), 0) FROM channel_periods WHERE channel_id "
             "= 'ch-m'");
    ck_assert_int_eq(csql(s, q), m);
    ck_assert_int_eq(ssql(s, "SELECT count(*) FROM payouts p JOIN accounts a USING (account_id) "
                             "WHERE a.party_type = 102"),
                     0);
    ck_assert_int_eq(ssql(s, "SELECT count(*) FROM accounts WHERE party_type = 102 AND (pending "
                             "<> 0 OR paying <> 0 OR paid_out <> 0)"),
                     0);
    ck_ledger_balanced(s);
}

/* re-sends a commission event settlement booked, under its own id and
 * under a new one; waits until settlement applied the new one */
static void replay(pair *s, const char *type, int nth)
{
    hs_topic *t = hs_topic_open(hs_kafka_brokers(), s->ctopic, 0);
    ck_assert_int_eq(hs_topic_catch_up(t, 30000), 0);
    const hs_record *r = NULL;
    for (size_t i = 0, k = 0; i < hs_topic_count(t) && !r; i++) {
        const hs_record *x = hs_topic_at(t, i);
        if (strcmp(x->type, type) == 0 && k++ == (size_t)nth)
            r = x;
    }
    ck_assert_msg(r != NULL, "no %s number %d on the commission topic", type, nth);
    char fresh[CM_ID_SIZE];
    ck_assert_int_eq(cm_id_uuid7(fresh), 0);
    const char *ids[2] = {r->id, fresh};
    for (int i = 0; i < 2; i++) {
        const char *h[] = {"ce_id",
                           ids[i],
                           "ce_type",
                           r->type,
                           "ce_source",
                           r->source,
                           "content-type",
                           "application/protobuf",
                           "tenant-id",
                           r->tenant,
                           NULL};
        hs_produce(s->prod, s->ctopic, r->key, h, r->payload, r->len);
    }
    char q[256];
    snprintf(q, sizeof q,
             "SELECT count(*) FROM inbox WHERE consumer_group = '%s' AND event_id = "
             "'%s'",
             s->kgroup, fresh);
    hs_wait_sql(s->sschema, q, 1, s->stl.log_path);
    hs_topic_close(t);
}

/* a settlement metric, once it reads want (30 s at most) */
static double wait_metric(const pair *s, const char *series, double want)
{
    double v = -1;
    for (int i = 0; i < 300 && (v = hs_metric(&s->stl, series)) != want; i++)
        usleep(100 * 1000);
    return v;
}

/* a CommissionAccrued that cannot be booked (a negative commission) */
static void bad_accrual(pair *s)
{
    Commerce__Common__V1__Money m = COMMERCE__COMMON__V1__MONEY__INIT;
    m.amount_minor = -5;
    m.currency = "CNY";
    Commerce__Commission__V1__Commission c = COMMERCE__COMMISSION__V1__COMMISSION__INIT;
    c.commission_id = uuid();
    c.channel_id = "ch-m";
    c.order_id = uuid();
    c.merchant_id = MERCHANT;
    c.amount = &m;
    Commerce__Events__V1__CommissionAccrued e = COMMERCE__EVENTS__V1__COMMISSION_ACCRUED__INIT;
    const char *id = uuid();
    e.event_id = (char *)id;
    e.tenant_id = TENANT;
    e.channel_id = "ch-m";
    e.commission = &c;
    hs_produce_event(s->prod, s->ctopic, "ch-m", "commerce.events.v1.CommissionAccrued",
                     "/commerce/commission", id, TENANT, &e.base);
}

/* settlement's CommissionCostPosted: one per cost entry, each saying
 * its payer and the signed change; returns how many say payer type/owner
 * for a change of `change` on channel ch */
static int cost_events(const pair *s, long long want, int type, const char *owner, const char *ch,
                       long long change)
{
    hs_topic *t = hs_topic_open(hs_kafka_brokers(), s->stopic, 0);
    ck_assert_int_eq(hs_topic_catch_up(t, 30000), 0);
    long long n = 0;
    int match = 0;
    for (size_t i = 0; i < hs_topic_count(t); i++) {
        const hs_record *r = hs_topic_at(t, i);
        if (strcmp(r->type, "commerce.events.v1.CommissionCostPosted") != 0)
            continue;
        n++;
        Commerce__Events__V1__CommissionCostPosted *e =
            commerce__events__v1__commission_cost_posted__unpack(NULL, r->len, r->payload);
        ck_assert_ptr_nonnull(e);
        ck_assert_ptr_nonnull(e->entry);
        ck_assert_ptr_nonnull(e->payer);
        ck_assert_ptr_nonnull(e->change);
        ck_assert_str_eq(r->key, e->merchant_id);
        ck_assert_int_eq(e->entry->kind, 7);
        ck_assert_int_eq(e->n_account_versions, e->entry->n_postings);
        ck_assert_int_eq(e->entry->postings[1]->amount_minor, e->change->amount_minor);
        ck_assert_int_eq(e->entry->postings[0]->amount_minor, -e->change->amount_minor);
        if ((int)e->payer->type == type && strcmp(e->payer->id, owner) == 0 &&
            strcmp(e->channel_id, ch) == 0 && e->change->amount_minor == change)
            match++;
        protobuf_c_message_free_unpacked(&e->base, NULL);
    }
    hs_topic_close(t);
    ck_assert_int_eq(n, want);
    return match;
}

/* ---- tests ---- */

START_TEST(cost_follows_its_payer_reverses_exactly_and_books_once)
{
    pair_start(&S, "cost");
    put_schedule(&S, "mer", PAYER(MERCHANT));
    put_schedule(&S, "plt", PAYER(PLATFORM));
    put_channel(&S, "par", NULL, 0, "mer");
    put_channel(&S, "ch-m", "par", 1000, "mer");
    put_channel(&S, "ch-p", NULL, 0, "plt");
    T0 = hs_real_ms() + 2000; /* after the schedules' effective_from */
    char o1[CM_ID_SIZE], o2[CM_ID_SIZE], o3[CM_ID_SIZE];
    memcpy(o1, uuid(), CM_ID_SIZE);
    memcpy(o2, uuid(), CM_ID_SIZE);
    memcpy(o3, uuid(), CM_ID_SIZE);
    /* 10,000.00 and 2,000.00 for ch-m: 660.00 together (5 % to 10,000.00,
     * 8 % above), par 66.00, whichever is accrued first (they are keyed
     * apart); 3,000.00 for ch-p: 150.00 at 5 %, the platform's */
    paid(&S, o1, "ch-m", 1000000);
    paid(&S, o2, "ch-m", 200000);
    paid(&S, o3, "ch-p", 300000);
    hs_wait_sql(S.cschema, "SELECT count(*) FROM commissions", 3, S.cms.log_path);
    ck_assert_int_eq(csql(&S, "SELECT count(*) FROM commissions WHERE payer = 2"), 1);
    ck_costs(&S);
    ck_assert_int_eq(earned(&S, "ch-m"), 66000);
    ck_assert_int_eq(earned(&S, "ch-p"), 15000);
    ck_assert_int_eq(earned(&S, "par"), 6600);
    /* accrued 3, parent shares 2 */
    ck_assert_int_eq(entries(&S), 5);
    char q[512];
    snprintf(q, sizeof q,
             "SELECT count(*) FROM entries e JOIN accounts a ON a.account_id = e.account_ids[1] "
             "WHERE e.kind = 7 AND e.order_id = '%s' AND a.party_type = 2 AND a.owner_id = '%s' "
             "AND e.amounts = '{-15000,15000}' AND e.amount = 15000 AND e.merchant_id = '%s'",
             o3, PLATFORM, MERCHANT);
    ck_assert_int_eq(ssql(&S, q), 1);

    /* a duplicate of an accrual and of a parent share, each under its own
     * event id (the inbox) and under a new one (the natural key) */
    replay(&S, "commerce.events.v1.CommissionAccrued", 0);
    replay(&S, "commerce.events.v1.CommissionAdjusted", 0);
    ck_assert_int_eq(entries(&S), 5);
    ck_costs(&S);

    /* o1 refunded 40 % then the rest, while FROZEN: the clawbacks give
     * its 500.00 back exactly (and the marginal true-ups of the others'
     * slices and the parent's shares follow) */
    refunded(&S, o1, "ch-m", "rf-1", 400000);
    refunded(&S, o1, "ch-m", "rf-2", 600000);
    snprintf(q, sizeof q, "SELECT state FROM commissions WHERE order_id = '%s'", o1);
    hs_wait_sql(S.cschema, q, 4, S.cms.log_path);
    ck_costs(&S);
    snprintf(q, sizeof q,
             "SELECT coalesce(sum(e.amounts[2]), 0) FROM entries e WHERE e.kind = 7 AND "
             "e.order_id = '%s' AND (e.ref LIKE 'accrued/%%' OR e.ref LIKE 'clawback/%%')",
             o1);
    ck_assert_int_eq(ssql(&S, q), 0);
    /* (o1 and o2 may be accrued in either order: they are keyed apart) */
    snprintf(q, sizeof q, "SELECT amount FROM commissions WHERE order_id = '%s'", o1);
    long long c1 = csql(&S, q), rf1 = c1 * 400000 / 1000000;
    ck_assert_int_gt(rf1, 0);
    snprintf(q, sizeof q,
             "SELECT count(*) FROM entries e WHERE e.kind = 7 AND e.order_id = '%s' AND e.ref "
             "LIKE 'clawback/%%/rf-1' AND e.amount = %lld AND e.amounts[1] = %lld",
             o1, rf1, rf1);
    ck_assert_int_eq(ssql(&S, q), 1);
    /* a clawback replayed under a new id books nothing */
    long long n = entries(&S);
    replay(&S, "commerce.events.v1.CommissionClawedBack", 1);
    ck_assert_int_eq(entries(&S), n);

    /* o2 completes 8 days ago: PAYABLE. its refund is both a clawback and
     * a CLAWBACK payout item: booked once */
    long long day = 86400000LL;
    completed(&S, o2, "ch-m", hs_real_ms() - 8 * day);
    snprintf(q, sizeof q, "SELECT state FROM commissions WHERE order_id = '%s'", o2);
    hs_wait_sql(S.cschema, q, 2, S.cms.log_path);
    refunded(&S, o2, "ch-m", "rf-3", 50000);
    snprintf(q, sizeof q,
             "SELECT count(*) FROM adjustments WHERE order_id = '%s' AND kind = 3 AND refund_id = "
             "'rf-3'",
             o2);
    hs_wait_sql(S.cschema, q, 1, S.cms.log_path);
    ck_costs(&S);
    snprintf(q, sizeof q,
             "SELECT count(*) FROM entries WHERE kind = 7 AND order_id = '%s' AND ref LIKE "
             "'clawback/%%/rf-3'",
             o2);
    ck_assert_int_eq(ssql(&S, q), 1);

    /* the platform's order refunded in full: the platform is back to 0 */
    refunded(&S, o3, "ch-p", "rf-4", 300000);
    snprintf(q, sizeof q, "SELECT state FROM commissions WHERE order_id = '%s'", o3);
    hs_wait_sql(S.cschema, q, 4, S.cms.log_path);
    /* (0 is also what an account reads before the clawback is booked) */
    hs_wait_sql(S.sschema,
                "SELECT count(*) FROM entries WHERE kind = 7 AND ref LIKE 'clawback/%/rf-4'", 1,
                S.stl.log_path);
    ck_costs(&S);
    ck_assert_int_eq(cost_of(&S, P_PLATFORM, PLATFORM), 0);
    ck_assert_int_eq(earned(&S, "ch-p"), 0);

    /* the merchant's money: what it was paid, less refunds, less the cost
     * of its channels (settlement's split gives it everything: no rule) */
    hs_wait_sql(S.sschema, "SELECT count(*) FROM entries WHERE kind = 2", 4, S.stl.log_path);
    snprintf(q, sizeof q,
             "SELECT pending + available + paying + paid_out FROM accounts WHERE party_type = 1 "
             "AND owner_id = '%s'",
             MERCHANT);
    ck_assert_int_eq(ssql(&S, q), 1500000 - 1350000 - earned(&S, "ch-m") - earned(&S, "par"));

    /* each entry is a CommissionCostPosted on settlement's topic, e.g. the
     * platform's accrual and clawback of o3 */
    long long ne = entries(&S);
    for (int i = 0; i < 300; i++) {
        hs_topic *t = hs_topic_open(hs_kafka_brokers(), S.stopic, 0);
        ck_assert_int_eq(hs_topic_catch_up(t, 30000), 0);
        long long got = 0;
        for (size_t k = 0; k < hs_topic_count(t); k++)
            got += strcmp(hs_topic_at(t, k)->type, "commerce.events.v1.CommissionCostPosted") == 0;
        hs_topic_close(t);
        if (got >= ne)
            break;
        usleep(100 * 1000);
    }
    ck_assert_int_eq(cost_events(&S, ne, P_PLATFORM, PLATFORM, "ch-p", 15000), 1);
    ck_assert_int_eq(cost_events(&S, ne, P_PLATFORM, PLATFORM, "ch-p", -15000), 1);
    ck_assert_int_eq(cost_events(&S, ne, P_MERCHANT, MERCHANT, "ch-m", c1), 1);

    /* an event that cannot be booked is dead-lettered, nothing posted */
    n = entries(&S);
    bad_accrual(&S);
    char series[512];
    snprintf(series, sizeof series,
             "consumer_processed_total{topic=\"%s\",group=\"%s\",result=\"dead_lettered\"}",
             S.ctopic, S.kgroup);
    ck_assert_int_eq((long long)wait_metric(&S, series, 1), 1);
    ck_assert_int_eq(entries(&S), n);
    hs_topic *d = hs_topic_open(hs_kafka_brokers(), S.dlq, 0);
    ck_assert_uint_eq(hs_topic_read(d, 1, 10000), 1);
    hs_topic_close(d);
    ck_costs(&S);
    /* the metrics: every entry once, the three replays under a new id as
     * duplicates (the same ids again: the inbox's) */
    ck_assert_int_eq(
        (long long)wait_metric(&S, "settlement_commission_costs_posted_total", (double)n), n);
    ck_assert_int_eq((long long)hs_metric(&S.stl, "settlement_commission_costs_duplicate_total"),
                     3);
    snprintf(series, sizeof series,
             "consumer_processed_total{topic=\"%s\",group=\"%s\",result=\"duplicate\"}", S.ctopic,
             S.kgroup);
    ck_assert_int_eq((long long)hs_metric(&S.stl, series), 3);
    pair_stop(&S);
}
END_TEST

/* a statement of the commission schema that must change a row */
static void csql_do(const pair *s, const char *q)
{
    char w[1024];
    snprintf(w, sizeof w, "WITH u AS (%s RETURNING 1) SELECT count(*) FROM u", q);
    ck_assert_int_ge(csql(s, w), 1);
}

/* the cost merchant m bore for channel ch: its commissions there and its
 * parts of ch's adjustments (the close's), as the commission service has
 * them */
static long long merchant_share(const pair *s, const char *ch, const char *m)
{
    char q[512];
    snprintf(q, sizeof q,
             "SELECT (SELECT coalesce(sum(amount - clawed_back), 0) FROM commissions WHERE "
             "channel_id = '%s' AND merchant_id = '%s') + (SELECT coalesce(sum(amount), 0) FROM "
             "adjustments WHERE channel_id = '%s' AND merchant_id = '%s' AND kind <> 3)",
             ch, m, ch, m);
    return csql(s, q);
}

START_TEST(period_close_is_booked_against_each_merchant)
{
    pair_start(&S, "close");
    put_schedule_as(&S, "w-1", "whole", PAYER(MERCHANT), WHOLE);
    put_channel(&S, "ch-w", NULL, 0, "whole");
    /* last month in the schedule's zone, the schedule in force since
     * before it (a period that has ended needs orders paid in the past) */
    long long day = 86400000LL;
    long long P = csql(&S, "SELECT (extract(epoch FROM (date_trunc('month', now() AT TIME ZONE "
                           "'Asia/Shanghai') - interval '1 month') AT TIME ZONE 'Asia/Shanghai') "
                           "* 1000)::bigint");
    char q[512];
    snprintf(q, sizeof q, "UPDATE tier_schedules SET effective_from = to_timestamp(%lld / 1000.0)",
             P - day);
    csql_do(&S, q);
    /* revision 1: 12,000.00 of m-a at 8 % (960.00); revision 2 from the
     * 6th: 2,000.00 of m-b on a row of its own at 5 % (100.00). the close
     * reprices 14,000.00 at 8 % (1,120.00): 60.00, split 12 : 2 into
     * 51.43 for m-a and 8.57 for m-b */
    paid_by(&S, uuid(), "ch-w", "m-a", 1200000, P + 2 * day);
    hs_wait_sql(S.cschema, "SELECT count(*) FROM commissions", 1, S.cms.log_path);
    put_schedule_as(&S, "w-2", "whole", PAYER(MERCHANT), WHOLE);
    snprintf(q, sizeof q,
             "UPDATE tier_schedules SET effective_from = to_timestamp(%lld / 1000.0) WHERE "
             "revision = 2",
             P + 5 * day);
    csql_do(&S, q);
    paid_by(&S, uuid(), "ch-w", "m-b", 200000, P + 10 * day);
    hs_wait_sql(S.cschema, "SELECT count(*) FROM commissions", 2, S.cms.log_path);
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = P / 1000;
    Commerce__Commission__V1__ClosePeriodRequest r =
        COMMERCE__COMMISSION__V1__CLOSE_PERIOD_REQUEST__INIT;
    r.channel_id = "ch-w";
    r.tier_schedule_id = "whole";
    r.period_start = &at;
    Commerce__Commission__V1__ClosePeriodResponse *cr = NULL;
    cm_rpc_status stt;
    ck_assert_int_eq(hs_call(S.c, CSVC "ClosePeriod", &r.base,
                             &commerce__commission__v1__close_period_response__descriptor,
                             (ProtobufCMessage **)&cr, &stt, md, 1),
                     0);
    ck_assert_int_eq(cr->close->true_up->amount_minor, 6000);
    protobuf_c_message_free_unpacked(&cr->base, NULL);
    ck_assert_int_eq(csql(&S, "SELECT amount FROM adjustments WHERE kind = 4 AND merchant_id = "
                              "'m-a'"),
                     5143);
    ck_assert_int_eq(csql(&S, "SELECT amount FROM adjustments WHERE kind = 4 AND merchant_id = "
                              "'m-b'"),
                     857);
    /* settlement books each part on its merchant, without an order, by
     * its adjustment id: the channel holds 1,120.00, each merchant bears
     * its commissions and its part */
    wait_booked(&S, "ch-w");
    ck_assert_int_eq(earned(&S, "ch-w"), 112000);
    ck_assert_int_eq(cost_of(&S, P_COMMISSION, "ch-w"), 112000);
    ck_assert_int_eq(merchant_share(&S, "ch-w", "m-a"), 96000 + 5143);
    ck_assert_int_eq(merchant_share(&S, "ch-w", "m-b"), 10000 + 857);
    ck_assert_int_eq(cost_of(&S, P_MERCHANT, "m-a"), -(96000 + 5143));
    ck_assert_int_eq(cost_of(&S, P_MERCHANT, "m-b"), -(10000 + 857));
    ck_assert_int_eq(ssql(&S, "SELECT count(*) FROM entries WHERE kind = 7 AND order_id IS NULL "
                              "AND ref LIKE 'adjustment/%' AND merchant_id IN ('m-a', 'm-b')"),
                     2);
    ck_ledger_balanced(&S);
    /* nothing dead-lettered */
    hs_topic *dl = hs_topic_open(hs_kafka_brokers(), S.dlq, 0);
    hs_topic_next(dl, 500);
    ck_assert_uint_eq(hs_topic_count(dl), 0);
    hs_topic_close(dl);
    pair_stop(&S);
}
END_TEST

START_TEST(kill_mid_batch_books_each_change_once)
{
    pair_start(&S, "kill");
    put_schedule(&S, "mer", PAYER(MERCHANT));
    put_schedule(&S, "plt", PAYER(PLATFORM));
    put_channel(&S, "par", NULL, 0, "mer");
    put_channel(&S, "ch-m", "par", 750, "mer");
    put_channel(&S, "ch-p", NULL, 0, "plt");
    T0 = hs_real_ms() + 2000;
    /* the commission events wait on their topic while settlement is down,
     * then it is killed while it books them */
    ck_assert_int_eq(hs_stop(&S.stl, SIGTERM, 30000), 0);
    enum { N = 1000 };
    for (int i = 0; i < N; i++)
        paid(&S, uuid(), i % 2 ? "ch-m" : "ch-p", 10000 + i);
    hs_wait_sql(S.cschema, "SELECT count(*) FROM commissions", N, S.cms.log_path);
    /* what books something: every accrual, the parent's shares */
    long long want = csql(&S, "SELECT (SELECT count(*) FROM commissions WHERE amount > 0) + "
                              "(SELECT count(*) FROM adjustments WHERE kind <> 3)");
    hs_start(&S.stl, SETTLEMENT_BIN, S.senv);
    ck_assert_int_eq(hs_poll_sql(S.sschema, "SELECT least(count(*), 1) FROM entries WHERE kind = 7",
                                 1, 30000, 2),
                     0);
    ck_assert_int_eq(hs_stop(&S.stl, SIGKILL, 5000), 128 + SIGKILL);
    long long before = entries(&S);
    ck_assert_msg(before < want, "all %lld booked before the kill: nothing to prove", want);
    hs_start(&S.stl, SETTLEMENT_BIN, S.senv);
    ck_costs(&S);
    ck_assert_int_eq(entries(&S), want);
    ck_assert_int_eq(ssql(&S, "SELECT count(DISTINCT ref) FROM entries WHERE kind = 7"), want);
    ck_assert_int_gt(earned(&S, "par"), 0);
    pair_stop(&S);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("commission_cost");
    TCase *tc = tcase_create("commission_cost");
    tcase_set_timeout(tc, 240);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, cost_follows_its_payer_reverses_exactly_and_books_once);
    tcase_add_test(tc, period_close_is_booked_against_each_merchant);
    tcase_add_test(tc, kill_mid_batch_books_each_change_once);
    suite_add_tcase(s, tc);
    return hs_run(s, 1);
}
