/*
 * commerce-settlement against the private postgres and the broker: rules,
 * posting from order events (played by the test on a topic of its own, so
 * that every case controls ids, order and duplicates exactly), refunds,
 * idempotency, tenant isolation, and the events it publishes.
 */
#include "harness.h"

#include <check.h>
#include <signal.h>
#include <grpc/status.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cm_id.h"
#include "commerce/events/v1/order_events.pb-c.h"
#include "commerce/events/v1/settlement_events.pb-c.h"
#include "commerce/settlement/v1/settlement_service.pb-c.h"

#define SVC "/commerce.settlement.v1.SettlementService/"
#define TENANT "tenant-stl"
#define PT(x) COMMERCE__SETTLEMENT__V1__PARTY_TYPE__PARTY_TYPE_##x

static const cm_rpc_md md[1] = {{"x-tenant-id", TENANT}};
static const cm_rpc_md md_other[1] = {{"x-tenant-id", TENANT "-other"}};

typedef struct st {
    char schema[64], otopic[128], stopic[128], group[128];
    hs_proc p;
    cm_rpc_client *c;
    hs_producer *prod;
    hs_topic *events; /* the settlement topic */
} st;

static st S;
static int seq;

static void st_start_env(st *s, const char *tag, const char *const *extra)
{
    memset(s, 0, sizeof *s);
    seq++;
    int pid = (int)getpid();
    snprintf(s->schema, sizeof s->schema, "stl_%s_%d_%d", tag, pid, seq);
    snprintf(s->otopic, sizeof s->otopic, "commerce.order.v1.stl-%s-%d-%d", tag, pid, seq);
    snprintf(s->stopic, sizeof s->stopic, "commerce.settlement.v1.%s-%d-%d", tag, pid, seq);
    snprintf(s->group, sizeof s->group, "commerce.settlement.%s-%d-%d", tag, pid, seq);
    hs_kafka_create_topic(hs_kafka_brokers(), s->otopic, 2);
    hs_kafka_create_topic(hs_kafka_brokers(), s->stopic, 2);
    char e1[128], e2[192], e3[192], e4[192];
    snprintf(e1, sizeof e1, "SETTLEMENT_SCHEMA=%s", s->schema);
    snprintf(e2, sizeof e2, "SETTLEMENT_ORDER_TOPIC=%s", s->otopic);
    snprintf(e3, sizeof e3, "SETTLEMENT_ORDER_GROUP=%s", s->group);
    snprintf(e4, sizeof e4, "SETTLEMENT_TOPIC=%s", s->stopic);
    /* the settler and the payer stay out of the way unless a test wants
     * them (they move money on their own) */
    const char *base[] = {
        e1, e2, e3, e4, "SETTLEMENT_RUN_TICK_MS=3600000", "SETTLEMENT_PAYOUT_MS=3600000", NULL};
    const char *env[32];
    hs_start(&s->p, SETTLEMENT_BIN, hs_env_join(env, 32, base, extra));
    s->c = hs_client(&s->p, NULL);
    s->prod = hs_producer_new(hs_kafka_brokers());
    s->events = hs_topic_open(hs_kafka_brokers(), s->stopic, 0);
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
    ck_assert_msg(hs_stop(&s->p, SIGTERM, 30000) == 0, "settlement did not exit 0 (log %s)",
                  s->p.log_path);
    hs_kafka_delete_topic(hs_kafka_brokers(), s->otopic);
    hs_kafka_delete_topic(hs_kafka_brokers(), s->stopic);
    hs_drop_schema(NULL, s->schema);
}

static void teardown(void)
{
    hs_teardown();
}

/* ---- rules and settings ---- */

static int put_settings(st *s, const char *req_id, int cap_bps, cm_rpc_status *stt)
{
    Commerce__Settlement__V1__TenantSettings ts = COMMERCE__SETTLEMENT__V1__TENANT_SETTINGS__INIT;
    ts.time_zone = "Asia/Shanghai";
    ts.max_split_bps = cap_bps;
    ts.run_at = "02:00";
    Commerce__Settlement__V1__PutTenantSettingsRequest r =
        COMMERCE__SETTLEMENT__V1__PUT_TENANT_SETTINGS_REQUEST__INIT;
    r.request_id = (char *)req_id;
    r.settings = &ts;
    return hs_call(s->c, SVC "PutTenantSettings", &r.base,
                   &commerce__settlement__v1__put_tenant_settings_response__descriptor, NULL, stt,
                   md, 1);
}

/* the seed's rule: fee 0.3 % + 0.10 shared; platform 50 % T+0, service
 * provider 30 % T+1, sub-merchant 20 % T+0 */
typedef struct seed_rule {
    Commerce__Settlement__V1__SplitReceiver r[3], *rp[3];
    Commerce__Settlement__V1__FeeModel fee;
    Commerce__Settlement__V1__SplitRule rule;
} seed_rule;

static void seed(seed_rule *x, const char *merchant)
{
    static const struct {
        int type;
        const char *id;
        int bps, delay;
    } def[3] = {{PT(PLATFORM), "plat", 5000, 0},
                {PT(SERVICE_PROVIDER), "sp-1", 3000, 1},
                {PT(SUB_MERCHANT), "sub-1", 2000, 0}};
    for (int i = 0; i < 3; i++) {
        commerce__settlement__v1__split_receiver__init(&x->r[i]);
        x->r[i].type = def[i].type;
        x->r[i].receiver_id = (char *)def[i].id;
        x->r[i].share_bps = def[i].bps;
        x->r[i].settle_delay_days = (uint32_t)def[i].delay;
        x->rp[i] = &x->r[i];
    }
    commerce__settlement__v1__fee_model__init(&x->fee);
    x->fee.bps = 30;
    x->fee.fixed_minor = 10;
    x->fee.bearer = COMMERCE__SETTLEMENT__V1__FEE_BEARER__FEE_BEARER_PRO_RATA;
    commerce__settlement__v1__split_rule__init(&x->rule);
    x->rule.merchant_id = (char *)merchant;
    x->rule.currency = "CNY";
    x->rule.receivers = x->rp;
    x->rule.n_receivers = 3;
    x->rule.fee = &x->fee;
}

static int put_rule(st *s, const char *req_id, Commerce__Settlement__V1__SplitRule *rule,
                    Commerce__Settlement__V1__PutSplitRuleResponse **out, cm_rpc_status *stt)
{
    Commerce__Settlement__V1__PutSplitRuleRequest r =
        COMMERCE__SETTLEMENT__V1__PUT_SPLIT_RULE_REQUEST__INIT;
    r.request_id = (char *)req_id;
    r.rule = rule;
    return hs_call(s->c, SVC "PutSplitRule", &r.base,
                   &commerce__settlement__v1__put_split_rule_response__descriptor,
                   (ProtobufCMessage **)out, stt, md, 1);
}

/* ---- order events, as the order service would send them ---- */

static void send_event(st *s, const char *type, const char *order_id, const char *event_id,
                       const char *tenant, const ProtobufCMessage *m)
{
    hs_produce_event(s->prod, s->otopic, order_id, type, "/commerce/order", event_id, tenant, m);
}

static void paid(st *s, const char *tenant, const char *order_id, const char *event_id,
                 const char *merchant, long long amount, long long paid_ms)
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

static void refunded(st *s, const char *order_id, const char *event_id, const char *refund_id,
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
    Commerce__Events__V1__OrderRefunded e = COMMERCE__EVENTS__V1__ORDER_REFUNDED__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = TENANT;
    e.order_id = (char *)order_id;
    e.order = &o;
    e.refund = &rf;
    send_event(s, "commerce.events.v1.OrderRefunded", order_id, event_id, TENANT, &e.base);
}

static void completed(st *s, const char *order_id, long long at_ms)
{
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = at_ms / 1000;
    Commerce__Order__V1__Order o = COMMERCE__ORDER__V1__ORDER__INIT;
    o.order_id = (char *)order_id;
    o.completed_at = &at;
    Commerce__Events__V1__OrderCompleted e = COMMERCE__EVENTS__V1__ORDER_COMPLETED__INIT;
    char id[CM_ID_SIZE];
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    e.event_id = id;
    e.tenant_id = TENANT;
    e.order_id = (char *)order_id;
    e.order = &o;
    send_event(s, "commerce.events.v1.OrderCompleted", order_id, id, TENANT, &e.base);
}

static char *uuid(void)
{
    static char ids[64][CM_ID_SIZE];
    static int k;
    char *id = ids[k++ % 64];
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    return id;
}

/* ---- reading the ledger ---- */

static long long sql(const st *s, const char *q)
{
    return hs_sql_long(s->schema, q);
}

static void wait_for(const st *s, const char *q, long long want)
{
    hs_wait_sql(s->schema, q, want, s->p.log_path);
}

/* an account's buckets through ListAccounts: pending, available */
static void balance(st *s, const cm_rpc_md *m, int type, const char *owner, long long *pending,
                    long long *available)
{
    Commerce__Settlement__V1__Party party = COMMERCE__SETTLEMENT__V1__PARTY__INIT;
    party.type = type;
    party.id = (char *)owner;
    Commerce__Settlement__V1__ListAccountsRequest r =
        COMMERCE__SETTLEMENT__V1__LIST_ACCOUNTS_REQUEST__INIT;
    r.party = &party;
    r.currency = "CNY";
    Commerce__Settlement__V1__ListAccountsResponse *resp = NULL;
    cm_rpc_status stt;
    int code = hs_call(s->c, SVC "ListAccounts", &r.base,
                       &commerce__settlement__v1__list_accounts_response__descriptor,
                       (ProtobufCMessage **)&resp, &stt, m, 1);
    ck_assert_msg(code == 0, "ListAccounts: %d %s", code, stt.message);
    *pending = *available = 0;
    if (resp->n_accounts) {
        *pending = resp->accounts[0]->pending_minor;
        *available = resp->accounts[0]->available_minor;
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
}

static void ck_balance(st *s, int type, const char *owner, long long pending, long long available)
{
    long long p, a;
    balance(s, md, type, owner, &p, &a);
    ck_assert_msg(p == pending && a == available,
                  "account %d/%s: pending %lld available %lld, expected %lld %lld", type, owner, p,
                  a, pending, available);
}

/* every account of every tenant sums to zero, and every account's buckets
 * equal the sum of its postings */
static void ck_ledger_balanced(const st *s)
{
    ck_assert_int_eq(sql(s, "SELECT coalesce(sum(pending + available + paying + paid_out), 0) "
                            "FROM accounts"),
                     0);
    ck_assert_int_eq(
        sql(s, "SELECT count(*) FROM accounts a LEFT JOIN (SELECT x.id, sum(x.amt) FILTER "
               "(WHERE x.b = 1) AS p, sum(x.amt) FILTER (WHERE x.b = 2) AS v FROM entries e, "
               "unnest(e.account_ids, e.buckets, e.amounts) AS x(id, b, amt) GROUP BY x.id) "
               "j ON j.id = a.account_id WHERE a.pending <> coalesce(j.p, 0) OR a.available <> "
               "coalesce(j.v, 0)"),
        0);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM entries WHERE entry_sum(amounts) <> 0"), 0);
}

static long long account_id(st *s, int type, const char *owner)
{
    char q[256];
    snprintf(q, sizeof q,
             "SELECT account_id FROM accounts WHERE party_type = %d AND owner_id = '%s'", type,
             owner);
    return sql(s, q);
}

static Commerce__Settlement__V1__GetAccountStatementResponse *
statement(st *s, long long account, long long from_ms, long long to_ms, int page_size,
          const char *token, cm_rpc_status *stt)
{
    Google__Protobuf__Timestamp a = GOOGLE__PROTOBUF__TIMESTAMP__INIT,
                                b = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    a.seconds = from_ms / 1000;
    b.seconds = to_ms / 1000;
    Commerce__Common__V1__TimeRange tr = COMMERCE__COMMON__V1__TIME_RANGE__INIT;
    tr.start_at = &a;
    tr.end_at = &b;
    Commerce__Settlement__V1__GetAccountStatementRequest r =
        COMMERCE__SETTLEMENT__V1__GET_ACCOUNT_STATEMENT_REQUEST__INIT;
    r.account_id = account;
    r.period = &tr;
    r.page_size = page_size;
    r.page_token = (char *)(token ? token : "");
    Commerce__Settlement__V1__GetAccountStatementResponse *resp = NULL;
    if (hs_call(s->c, SVC "GetAccountStatement", &r.base,
                &commerce__settlement__v1__get_account_statement_response__descriptor,
                (ProtobufCMessage **)&resp, stt, md, 1))
        return NULL;
    return resp;
}

/* ---- tests ---- */

START_TEST(rules_validated_versioned_idempotent)
{
    st_start(&S, "rules");
    seed_rule x;
    seed(&x, "m-1");
    cm_rpc_status stt;
    /* 100 % to others is over the default 30 % cap */
    ck_assert_int_eq(put_rule(&S, "r-1", &x.rule, NULL, &stt), 3);
    ck_assert_msg(strncmp(stt.field, "rule.receivers[", 15) == 0, "field %s", stt.field);
    ck_assert_str_eq(stt.reason, "SPLIT_RATIO_EXCEEDED");
    /* nothing was stored */
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM split_rules"), 0);
    ck_assert_int_eq(put_settings(&S, "s-1", 10000, &stt), 0);
    Commerce__Settlement__V1__PutSplitRuleResponse *resp = NULL;
    ck_assert_int_eq(put_rule(&S, "r-2", &x.rule, &resp, &stt), 0);
    ck_assert_int_eq(resp->rule->version, 1);
    ck_assert_int_eq(resp->rule->n_receivers, 3);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    /* a retry returns the same version; another body under the key is refused */
    ck_assert_int_eq(put_rule(&S, "r-2", &x.rule, &resp, &stt), 0);
    ck_assert_int_eq(resp->rule->version, 1);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    x.r[0].share_bps = 4000;
    ck_assert_int_eq(put_rule(&S, "r-2", &x.rule, NULL, &stt), 6);
    ck_assert_str_eq(stt.reason, "IDEMPOTENCY_KEY_REUSED");
    ck_assert_int_eq(put_rule(&S, "r-3", &x.rule, &resp, &stt), 0);
    ck_assert_int_eq(resp->rule->version, 2);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    /* bad rules, each naming its field, none stored */
    seed(&x, "m-1");
    x.r[1].share_bps = 6000; /* 110 % */
    ck_assert_int_eq(put_rule(&S, "r-4", &x.rule, NULL, &stt), 3);
    ck_assert_msg(strstr(stt.field, "share_bps") != NULL, "field %s", stt.field);
    seed(&x, "m-1");
    x.rule.currency = "XXQ";
    ck_assert_int_eq(put_rule(&S, "r-5", &x.rule, NULL, &stt), 3);
    ck_assert_str_eq(stt.field, "rule.currency");
    seed(&x, "m-1");
    x.r[2].fixed_amount_minor = -1;
    ck_assert_int_eq(put_rule(&S, "r-6", &x.rule, NULL, &stt), 3);
    ck_assert_str_eq(stt.field, "rule.receivers[2].fixed_amount_minor");
    seed(&x, "m-1");
    x.fee.min_minor = 100;
    x.fee.max_minor = 50;
    ck_assert_int_eq(put_rule(&S, "r-7", &x.rule, NULL, &stt), 3);
    ck_assert_msg(strstr(stt.field, "fee") != NULL, "field %s", stt.field);
    seed(&x, "m-1");
    x.r[2].type = PT(PLATFORM);
    x.r[2].receiver_id = "plat"; /* the platform twice */
    ck_assert_int_eq(put_rule(&S, "r-8", &x.rule, NULL, &stt), 3);
    ck_assert_msg(strncmp(stt.field, "rule.receivers[2]", 17) == 0, "field %s", stt.field);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM split_rules"), 2);
    /* versions, newest first */
    Commerce__Settlement__V1__ListSplitRuleVersionsRequest lr =
        COMMERCE__SETTLEMENT__V1__LIST_SPLIT_RULE_VERSIONS_REQUEST__INIT;
    lr.merchant_id = "m-1";
    lr.currency = "CNY";
    lr.page_size = 1;
    Commerce__Settlement__V1__ListSplitRuleVersionsResponse *lv = NULL;
    ck_assert_int_eq(
        hs_call(S.c, SVC "ListSplitRuleVersions", &lr.base,
                &commerce__settlement__v1__list_split_rule_versions_response__descriptor,
                (ProtobufCMessage **)&lv, &stt, md, 1),
        0);
    ck_assert_int_eq(lv->n_rules, 1);
    ck_assert_int_eq(lv->rules[0]->version, 2);
    ck_assert_str_ne(lv->next_page_token, "");
    lr.page_token = lv->next_page_token;
    Commerce__Settlement__V1__ListSplitRuleVersionsResponse *lv2 = NULL;
    ck_assert_int_eq(
        hs_call(S.c, SVC "ListSplitRuleVersions", &lr.base,
                &commerce__settlement__v1__list_split_rule_versions_response__descriptor,
                (ProtobufCMessage **)&lv2, &stt, md, 1),
        0);
    ck_assert_int_eq(lv2->n_rules, 1);
    ck_assert_int_eq(lv2->rules[0]->version, 1);
    ck_assert_str_eq(lv2->next_page_token, "");
    protobuf_c_message_free_unpacked(&lv->base, NULL);
    protobuf_c_message_free_unpacked(&lv2->base, NULL);
    /* another tenant sees no rule */
    Commerce__Settlement__V1__GetSplitRuleRequest gr =
        COMMERCE__SETTLEMENT__V1__GET_SPLIT_RULE_REQUEST__INIT;
    gr.merchant_id = "m-1";
    gr.currency = "CNY";
    ck_assert_int_eq(hs_call(S.c, SVC "GetSplitRule", &gr.base,
                             &commerce__settlement__v1__get_split_rule_response__descriptor, NULL,
                             &stt, md_other, 1),
                     5);
    st_stop(&S);
}
END_TEST

START_TEST(seed_example_posted_to_the_minor_unit)
{
    st_start(&S, "seed");
    seed_rule x;
    seed(&x, "m-1");
    cm_rpc_status stt;
    ck_assert_int_eq(put_settings(&S, "s-1", 10000, &stt), 0);
    ck_assert_int_eq(put_rule(&S, "r-1", &x.rule, NULL, &stt), 0);
    /* paid after the rule; 10000 fen and 12345 fen */
    long long now = hs_real_ms() + 1000;
    char *o1 = uuid(), *o2 = uuid();
    paid(&S, TENANT, o1, uuid(), "m-1", 10000, now);
    paid(&S, TENANT, o2, uuid(), "m-1", 12345, now);
    wait_for(&S, "SELECT count(*) FROM entries WHERE kind IN (1, 2)", 2);
    /* fee 40 + 47; platform 4980 + 6149 (T+0); service provider 2988 +
     * 3689 (T+1, pending); sub-merchant 1992 + 2460 (T+0) */
    ck_balance(&S, PT(PLATFORM), "plat", 0, 4980 + 6149);
    ck_balance(&S, PT(SERVICE_PROVIDER), "sp-1", 2988 + 3689, 0);
    ck_balance(&S, PT(SUB_MERCHANT), "sub-1", 0, 1992 + 2460);
    ck_balance(&S, PT(MERCHANT), "m-1", 0, 0);
    ck_balance(&S, PT(PROVIDER_FEE), "", 0, 87);
    ck_balance(&S, PT(CLEARING), "", 0, -22345);
    ck_ledger_balanced(&S);
    /* the platform's statement: opening 0, two lines (paged), closing the
     * balance; a period after the postings opens with the balance */
    cm_rpc_status stt2;
    long long plat = account_id(&S, PT(PLATFORM), "plat");
    long long t0 = hs_real_ms() - 3600 * 1000, t1 = hs_real_ms() + 3600 * 1000;
    Commerce__Settlement__V1__GetAccountStatementResponse *st1 =
        statement(&S, plat, t0, t1, 1, NULL, &stt2);
    ck_assert_msg(st1 != NULL, "statement: %s", stt2.message);
    ck_assert_int_eq(st1->opening->available_minor, 0);
    ck_assert_int_eq(st1->closing->available_minor, 4980 + 6149);
    ck_assert_uint_eq(st1->n_lines, 1);
    /* the two orders are keyed to different partitions: either may be
     * posted first, and the lines follow the postings */
    long long first = st1->lines[0]->amount_minor;
    ck_assert_msg(first == 4980 || first == 6149, "first line %lld", first);
    Commerce__Settlement__V1__GetAccountStatementResponse *st2 =
        statement(&S, plat, t0, t1, 1, st1->next_page_token, &stt2);
    ck_assert_ptr_nonnull(st2);
    ck_assert_uint_eq(st2->n_lines, 1);
    ck_assert_int_eq(st2->lines[0]->amount_minor, first == 4980 ? 6149 : 4980);
    ck_assert_str_eq(st2->next_page_token, "");
    protobuf_c_message_free_unpacked(&st1->base, NULL);
    protobuf_c_message_free_unpacked(&st2->base, NULL);
    st1 = statement(&S, plat, t1 - 1000, t1, 10, NULL, &stt2);
    ck_assert_ptr_nonnull(st1);
    ck_assert_int_eq(st1->opening->available_minor, 4980 + 6149);
    ck_assert_uint_eq(st1->n_lines, 0);
    protobuf_c_message_free_unpacked(&st1->base, NULL);
    /* a statement needs its period */
    Commerce__Settlement__V1__GetAccountStatementRequest bad =
        COMMERCE__SETTLEMENT__V1__GET_ACCOUNT_STATEMENT_REQUEST__INIT;
    bad.account_id = plat;
    ck_assert_int_eq(hs_call(S.c, SVC "GetAccountStatement", &bad.base,
                             &commerce__settlement__v1__get_account_statement_response__descriptor,
                             NULL, &stt2, md, 1),
                     3);
    ck_assert_str_eq(stt2.field, "period.start_at");
    /* another tenant does not see the account */
    bad.account_id = plat;
    /* the service provider's part is due the next local day */
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM pending_due WHERE amount = 6677 AND due_date "
                             "= (now() AT TIME ZONE 'Asia/Shanghai')::date + 1"),
                     1);
    /* its events: one SplitPosted per order, keyed by the merchant */
    ck_assert_uint_ge(hs_topic_read(S.events, 2, 30000), 2);
    int found = 0;
    for (size_t i = 0; i < hs_topic_count(S.events); i++) {
        const hs_record *r = hs_topic_at(S.events, i);
        ck_assert_str_eq(r->type, "commerce.events.v1.SplitPosted");
        ck_assert_str_eq(r->key, "m-1");
        Commerce__Events__V1__SplitPosted *e =
            commerce__events__v1__split_posted__unpack(NULL, r->len, r->payload);
        ck_assert_ptr_nonnull(e);
        if (strcmp(e->order_id, o1) == 0) {
            found++;
            ck_assert_int_eq(e->entry->fee->amount_minor, 40);
            ck_assert_int_eq(e->entry->rule_version, 1);
            long long sum = 0;
            for (size_t k = 0; k < e->entry->n_postings; k++)
                sum += e->entry->postings[k]->amount_minor;
            ck_assert_int_eq(sum, 0);
            ck_assert_uint_eq(e->n_account_versions, e->entry->n_postings);
        }
        protobuf_c_message_free_unpacked(&e->base, NULL);
    }
    ck_assert_int_eq(found, 1);
    st_stop(&S);
}
END_TEST

START_TEST(posted_once_per_order_and_refunds_reverse_exactly)
{
    st_start(&S, "once");
    seed_rule x;
    seed(&x, "m-1");
    cm_rpc_status stt;
    ck_assert_int_eq(put_settings(&S, "s-1", 10000, &stt), 0);
    ck_assert_int_eq(put_rule(&S, "r-1", &x.rule, NULL, &stt), 0);
    long long now = hs_real_ms() + 1000;
    char *o = uuid(), *ev = uuid();
    paid(&S, TENANT, o, ev, "m-1", 9999, now);
    paid(&S, TENANT, o, ev, "m-1", 9999, now);     /* redelivered */
    paid(&S, TENANT, o, uuid(), "m-1", 9999, now); /* the same order, another event id */
    wait_for(&S, "SELECT count(*) FROM inbox", 2);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM entries"), 1);
    /* three partial refunds, one repeated under another event id, summing
     * to the whole: every party back to zero */
    refunded(&S, o, uuid(), "rf-1", 3333);
    refunded(&S, o, uuid(), "rf-1", 3333);
    refunded(&S, o, uuid(), "rf-2", 1);
    refunded(&S, o, uuid(), "rf-3", 6665);
    wait_for(&S, "SELECT count(*) FROM entries WHERE kind = 2", 3);
    wait_for(&S, "SELECT count(*) FROM inbox", 6);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM entries WHERE kind = 2"), 3);
    ck_balance(&S, PT(PLATFORM), "plat", 0, 0);
    ck_balance(&S, PT(SERVICE_PROVIDER), "sp-1", 0, 0);
    ck_balance(&S, PT(SUB_MERCHANT), "sub-1", 0, 0);
    ck_balance(&S, PT(PROVIDER_FEE), "", 0, 0);
    ck_balance(&S, PT(CLEARING), "", 0, 0);
    ck_assert_int_eq(sql(&S, "SELECT sum(amount) FROM pending_due"), 0);
    ck_ledger_balanced(&S);
    st_stop(&S);
}
END_TEST

START_TEST(refund_before_its_payment_waits)
{
    static const char *const env[] = {"SETTLEMENT_PARK_TIMEOUT_S=3", "SETTLEMENT_PARKER_MS=200",
                                      NULL};
    st_start_env(&S, "early", env);
    char dlq[160];
    snprintf(dlq, sizeof dlq, "%s.dlq", S.otopic);
    hs_kafka_create_topic(hs_kafka_brokers(), dlq, 1);
    hs_topic *dl = hs_topic_open(hs_kafka_brokers(), dlq, 0);
    cm_rpc_status stt;
    seed_rule x;
    seed(&x, "m-1");
    ck_assert_int_eq(put_settings(&S, "s-1", 10000, &stt), 0);
    ck_assert_int_eq(put_rule(&S, "r-1", &x.rule, NULL, &stt), 0);
    char *o = uuid(), *never = uuid();
    /* the refunds arrive first (say, replayed from a dead-letter topic):
     * parked, and the consumer goes on */
    refunded(&S, o, uuid(), "rf-1", 500);
    refunded(&S, never, uuid(), "rf-9", 100);
    wait_for(&S, "SELECT count(*) FROM parked_refunds", 2);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM entries"), 0);
    paid(&S, TENANT, o, uuid(), "m-1", 1000, hs_real_ms() + 1000);
    wait_for(&S, "SELECT count(*) FROM entries WHERE kind IN (1, 2)", 2);
    ck_assert_int_eq(sql(&S, "SELECT refunded FROM order_splits"), 500);
    ck_ledger_balanced(&S);
    /* the other payment never comes: dead-lettered, with the record as sent */
    const hs_record *r = hs_topic_next(dl, 30000);
    ck_assert_msg(r != NULL, "no dead letter (log %s)", S.p.log_path);
    ck_assert_str_eq(r->key, never);
    ck_assert_str_eq(r->type, "commerce.events.v1.OrderRefunded");
    ck_assert_str_eq(hs_record_header(r, "dlq-reason"), "payment not posted in time");
    wait_for(&S, "SELECT count(*) FROM parked_refunds", 0);
    hs_topic_close(dl);
    hs_kafka_delete_topic(hs_kafka_brokers(), dlq);
    st_stop(&S);
}
END_TEST

START_TEST(no_rule_merchant_keeps_all_and_tenants_are_apart)
{
    st_start(&S, "norule");
    long long now = hs_real_ms();
    paid(&S, TENANT, uuid(), uuid(), "m-9", 777, now);
    paid(&S, TENANT "-other", uuid(), uuid(), "m-9", 100, now);
    wait_for(&S, "SELECT count(*) FROM entries WHERE kind IN (1, 2)", 2);
    ck_balance(&S, PT(MERCHANT), "m-9", 0, 777);
    long long p, a;
    balance(&S, md_other, PT(MERCHANT), "m-9", &p, &a);
    ck_assert_int_eq(a, 100);
    /* the journal of one tenant does not show the other's entries */
    Commerce__Settlement__V1__ListJournalEntriesRequest r =
        COMMERCE__SETTLEMENT__V1__LIST_JOURNAL_ENTRIES_REQUEST__INIT;
    Commerce__Settlement__V1__ListJournalEntriesResponse *resp = NULL;
    cm_rpc_status stt;
    ck_assert_int_eq(hs_call(S.c, SVC "ListJournalEntries", &r.base,
                             &commerce__settlement__v1__list_journal_entries_response__descriptor,
                             (ProtobufCMessage **)&resp, &stt, md, 1),
                     0);
    ck_assert_uint_eq(resp->n_entries, 1);
    ck_assert_int_eq(resp->entries[0]->amount->amount_minor, 777);
    ck_assert_int_eq(resp->entries[0]->rule_version, 0);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    ck_ledger_balanced(&S);
    st_stop(&S);
}
END_TEST

static Commerce__Settlement__V1__SettlementRun *run_settlement(st *s, const char *date,
                                                               cm_rpc_status *stt)
{
    Commerce__Settlement__V1__RunSettlementRequest r =
        COMMERCE__SETTLEMENT__V1__RUN_SETTLEMENT_REQUEST__INIT;
    Commerce__Common__V1__Date d = COMMERCE__COMMON__V1__DATE__INIT;
    if (date) {
        sscanf(date, "%d-%d-%d", &d.year, &d.month, &d.day);
        r.business_date = &d;
    }
    Commerce__Settlement__V1__RunSettlementResponse *resp = NULL;
    if (hs_call(s->c, SVC "RunSettlement", &r.base,
                &commerce__settlement__v1__run_settlement_response__descriptor,
                (ProtobufCMessage **)&resp, stt, md, 1))
        return NULL;
    Commerce__Settlement__V1__SettlementRun *run = resp->run;
    resp->run = NULL;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return run;
}

static int report(st *s, const char *payout_id, int paid, cm_rpc_status *stt)
{
    Commerce__Settlement__V1__ReportPayoutResultRequest r =
        COMMERCE__SETTLEMENT__V1__REPORT_PAYOUT_RESULT_REQUEST__INIT;
    r.payout_id = (char *)payout_id;
    r.result = paid ? COMMERCE__SETTLEMENT__V1__PAYOUT_STATE__PAYOUT_STATE_PAID
                    : COMMERCE__SETTLEMENT__V1__PAYOUT_STATE__PAYOUT_STATE_FAILED;
    r.provider_reference = paid ? "bank-ref-1" : "";
    r.failure_reason = paid ? "" : "account closed";
    return hs_call(s->c, SVC "ReportPayoutResult", &r.base,
                   &commerce__settlement__v1__report_payout_result_response__descriptor, NULL, stt,
                   md, 1);
}

/* the payout id of an account's payout in a state (1 pending, 2 paid) */
#define PLAT_PENDING                                                                               \
    "SELECT coalesce(sum(p.amount), 0) FROM payouts p JOIN accounts a USING (account_id) WHERE "   \
    "a.owner_id = 'plat' AND p.state = 1"

/* the oldest payout of an account in a state */
static void first_payout(const st *s, const char *owner, int state, char *id, size_t cap)
{
    char q[512];
    PGconn *pg = hs_pg_connect(NULL);
    snprintf(q, sizeof q,
             "SELECT p.payout_id FROM %s.payouts p JOIN %s.accounts a USING (account_id) WHERE "
             "a.owner_id = '%s' AND p.state = %d ORDER BY p.created_at LIMIT 1",
             s->schema, s->schema, owner, state);
    PGresult *r = PQexec(pg, q);
    ck_assert_int_eq(PQntuples(r), 1);
    snprintf(id, cap, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(pg);
}

static void payout_of(const st *s, const char *owner, int state, char *id, size_t cap)
{
    char q[512];
    snprintf(q, sizeof q,
             "SELECT count(*) FROM payouts p JOIN accounts a USING (account_id) WHERE a.owner_id "
             "= '%s' AND p.state = %d",
             owner, state);
    wait_for(s, q, 1);
    PGconn *pg = hs_pg_connect(NULL);
    snprintf(q, sizeof q,
             "SELECT p.payout_id FROM %s.payouts p JOIN %s.accounts a USING (account_id) WHERE "
             "a.owner_id = '%s' AND p.state = %d",
             s->schema, s->schema, owner, state);
    PGresult *r = PQexec(pg, q);
    ck_assert_int_eq(PQntuples(r), 1);
    snprintf(id, cap, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(pg);
}

/* one page of ListPayouts (every state, every account) */
static Commerce__Settlement__V1__ListPayoutsResponse *list_payouts(st *s, const char *page_token,
                                                                   int page_size)
{
    Commerce__Settlement__V1__ListPayoutsRequest r =
        COMMERCE__SETTLEMENT__V1__LIST_PAYOUTS_REQUEST__INIT;
    r.page_token = (char *)page_token;
    r.page_size = page_size;
    Commerce__Settlement__V1__ListPayoutsResponse *resp = NULL;
    cm_rpc_status stt;
    int rc = hs_call(s->c, SVC "ListPayouts", &r.base,
                     &commerce__settlement__v1__list_payouts_response__descriptor,
                     (ProtobufCMessage **)&resp, &stt, md, 1);
    ck_assert_msg(rc == 0, "ListPayouts: status %d %s", stt.code, stt.message);
    return resp;
}

START_TEST(run_settles_once_pays_out_and_records_debt)
{
    static const char *const env[] = {"SETTLEMENT_RUN_TICK_MS=200", "SETTLEMENT_PAYOUT_MS=200",
                                      NULL};
    st_start_env(&S, "run", env);
    /* a second replica on the same schema and topic */
    hs_proc p2;
    char e1[128], e2[192], e3[192], e4[192];
    snprintf(e1, sizeof e1, "SETTLEMENT_SCHEMA=%s", S.schema);
    snprintf(e2, sizeof e2, "SETTLEMENT_ORDER_TOPIC=%s", S.otopic);
    snprintf(e3, sizeof e3, "SETTLEMENT_ORDER_GROUP=%s", S.group);
    snprintf(e4, sizeof e4, "SETTLEMENT_TOPIC=%s", S.stopic);
    const char *env2[] = {e1, e2, e3, e4, env[0], env[1], NULL};
    hs_start(&p2, SETTLEMENT_BIN, env2);
    cm_rpc_client *c2 = hs_client(&p2, NULL);
    cm_rpc_status stt;
    seed_rule x;
    seed(&x, "m-1");
    ck_assert_int_eq(put_settings(&S, "s-1", 10000, &stt), 0);
    ck_assert_int_eq(put_rule(&S, "r-1", &x.rule, NULL, &stt), 0);
    /* the rule in force for three days (the test cannot wait a day) */
    hs_sql_exec(S.schema, "UPDATE split_rules SET effective_from = now() - interval '3 days'");
    long long day = 86400LL * 1000;
    char *o1 = uuid(), *o2 = uuid();
    paid(&S, TENANT, o1, uuid(), "m-1", 10000, hs_real_ms() - day); /* provider due today */
    paid(&S, TENANT, o2, uuid(), "m-1", 20000, hs_real_ms());       /* due tomorrow */
    wait_for(&S, "SELECT count(*) FROM entries WHERE kind = 1", 2);
    /* T+0 parties are paid out continuously */
    char pid[64];
    /* (in one payout or two: the orders may have been posted apart) */
    wait_for(&S, PLAT_PENDING, 4980 + 9965);
    first_payout(&S, "plat", 1, pid, sizeof pid);
    ck_balance(&S, PT(PLATFORM), "plat", 0, 0);
    /* the run of local today, asked for on both replicas: one run */
    Commerce__Settlement__V1__SettlementRun *r1 = run_settlement(&S, NULL, &stt);
    ck_assert_msg(r1 != NULL, "RunSettlement: status %d %s (%s %s)", stt.code, stt.message,
                  stt.reason, stt.field);
    cm_rpc_client *c1 = S.c;
    S.c = c2;
    Commerce__Settlement__V1__SettlementRun *r2 = run_settlement(&S, NULL, &stt);
    ck_assert_msg(r2 != NULL, "RunSettlement on the second replica: status %d %s (%s %s)", stt.code,
                  stt.message, stt.reason, stt.field);
    ck_assert_str_eq(r1->run_id, r2->run_id);
    wait_for(&S, "SELECT count(*) FROM settlement_runs WHERE state = 2", 1);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM settlement_runs"), 1);
    /* the provider's part of o1 (2988) was due: available, then paid out;
     * o2's (5979) waits for tomorrow */
    char sp_payout[64];
    payout_of(&S, "sp-1", 1, sp_payout, sizeof sp_payout);
    ck_assert_int_eq(sql(&S, "SELECT amount FROM payouts p JOIN accounts a USING (account_id) "
                             "WHERE a.owner_id = 'sp-1'"),
                     2988);
    ck_balance(&S, PT(SERVICE_PROVIDER), "sp-1", 5979, 0);
    /* a date after today is refused; asking again returns the same run */
    char tomorrow[16];
    PGconn *pg = hs_pg_connect(NULL);
    PGresult *tr = PQexec(pg, "SELECT to_char((now() AT TIME ZONE 'Asia/Shanghai')::date + 1, "
                              "'YYYY-MM-DD')");
    snprintf(tomorrow, sizeof tomorrow, "%s", PQgetvalue(tr, 0, 0));
    PQclear(tr);
    PQfinish(pg);
    ck_assert_ptr_null(run_settlement(&S, tomorrow, &stt));
    ck_assert_int_eq(stt.code, 3);
    ck_assert_str_eq(stt.field, "business_date");
    Commerce__Settlement__V1__SettlementRun *r3 = run_settlement(&S, NULL, &stt);
    ck_assert_str_eq(r3->run_id, r1->run_id);
    ck_assert_int_eq(
        r3->state, COMMERCE__SETTLEMENT__V1__SETTLEMENT_RUN_STATE__SETTLEMENT_RUN_STATE_SUCCEEDED);
    protobuf_c_message_free_unpacked(&r1->base, NULL);
    protobuf_c_message_free_unpacked(&r2->base, NULL);
    protobuf_c_message_free_unpacked(&r3->base, NULL);
    /* the payment system reports: paid (twice: the same), then the other
     * result is refused; the platform's payout failed: back to available,
     * and paid out again */
    ck_assert_int_eq(report(&S, sp_payout, 1, &stt), 0);
    ck_assert_int_eq(report(&S, sp_payout, 1, &stt), 0);
    ck_assert_int_eq(report(&S, sp_payout, 0, &stt), 9);
    ck_assert_str_eq(stt.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_int_eq(report(&S, pid, 0, &stt), 0);
    wait_for(&S, PLAT_PENDING, 4980 + 9965);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM payouts WHERE state = 3"), 1);
    /* a full refund of o1 after its provider part was paid out: the
     * provider owes it (debt), and gets no payout while it does */
    refunded(&S, o1, uuid(), "rf-1", 10000);
    wait_for(&S, "SELECT count(*) FROM entries WHERE kind = 2", 1);
    ck_balance(&S, PT(SERVICE_PROVIDER), "sp-1", 5979, -2988);
    usleep(600 * 1000);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM payouts p JOIN accounts a USING (account_id) "
                             "WHERE a.owner_id = 'sp-1'"),
                     1);
    ck_ledger_balanced(&S);
    /* listed over the API, page by page: the first page (no token) used
     * to fail on its empty cursor id */
    char q[256];
    snprintf(q, sizeof q, "SELECT payout_id FROM %s.payouts", S.schema);
    PGconn *pc = hs_pg_connect(NULL);
    PGresult *ids = PQexec(pc, q); /* the payer may add more meanwhile: each of these is listed */
    ck_assert_int_ge(PQntuples(ids), 4);
    /* one payout a page to the end: each listed exactly once (the
     * position is the row's own created_at, microseconds and all) */
    int nids = PQntuples(ids);
    int *seen = calloc((size_t)nids, sizeof *seen);
    ck_assert_ptr_nonnull(seen);
    char token[512] = "";
    int pages = 0;
    do {
        Commerce__Settlement__V1__ListPayoutsResponse *page = list_payouts(&S, token, 1);
        ck_assert_uint_le(page->n_payouts, 1);
        for (size_t i = 0; i < page->n_payouts; i++)
            for (int k = 0; k < nids; k++)
                if (strcmp(PQgetvalue(ids, k, 0), page->payouts[i]->payout_id) == 0)
                    ck_assert_msg(++seen[k] == 1, "payout %s listed twice", PQgetvalue(ids, k, 0));
        snprintf(token, sizeof token, "%s", page->next_page_token);
        protobuf_c_message_free_unpacked(&page->base, NULL);
        ck_assert_int_lt(++pages, 1000);
    } while (token[0]);
    for (int k = 0; k < nids; k++)
        ck_assert_msg(seen[k] == 1, "payout %s not listed", PQgetvalue(ids, k, 0));
    free(seen);
    PQclear(ids);
    PQfinish(pc);
    /* the events of payouts and the run */
    hs_topic_catch_up(S.events, 30000);
    int created = 0, paidn = 0, failed = 0, runs = 0;
    for (size_t i = 0; i < hs_topic_count(S.events); i++) {
        const char *t = hs_topic_at(S.events, i)->type;
        created += strcmp(t, "commerce.events.v1.PayoutCreated") == 0;
        paidn += strcmp(t, "commerce.events.v1.PayoutPaid") == 0;
        failed += strcmp(t, "commerce.events.v1.PayoutFailed") == 0;
        runs += strcmp(t, "commerce.events.v1.SettlementRunCompleted") == 0;
    }
    ck_assert_int_ge(created, 4);
    ck_assert_int_eq(paidn, 1);
    ck_assert_int_eq(failed, 1);
    ck_assert_int_eq(runs, 1);
    S.c = c1;
    cm_rpc_client_free(c2);
    ck_assert_int_eq(hs_stop(&p2, SIGTERM, 30000), 0);
    st_stop(&S);
}
END_TEST

START_TEST(kill_mid_batch_posts_each_order_once)
{
    st_start(&S, "kill");
    cm_rpc_status stt;
    seed_rule x;
    seed(&x, "m-1");
    ck_assert_int_eq(put_settings(&S, "s-1", 10000, &stt), 0);
    ck_assert_int_eq(put_rule(&S, "r-1", &x.rule, NULL, &stt), 0);
    /* the events wait on the topic while the service is down, then it is
     * killed while it posts them */
    ck_assert_int_eq(hs_stop(&S.p, SIGTERM, 30000), 0);
    long long now = hs_real_ms() + 1000;
    enum { N = 3000 };
    for (int i = 0; i < N; i++)
        paid(&S, TENANT, uuid(), uuid(), "m-1", 1000 + i, now);
    char e1[128], e2[192], e3[192], e4[192];
    snprintf(e1, sizeof e1, "SETTLEMENT_SCHEMA=%s", S.schema);
    snprintf(e2, sizeof e2, "SETTLEMENT_ORDER_TOPIC=%s", S.otopic);
    snprintf(e3, sizeof e3, "SETTLEMENT_ORDER_GROUP=%s", S.group);
    snprintf(e4, sizeof e4, "SETTLEMENT_TOPIC=%s", S.stopic);
    const char *env[] = {e1, e2, e3, e4, NULL};
    hs_start(&S.p, SETTLEMENT_BIN, env);
    ck_assert_int_eq(
        hs_poll_sql(S.schema, "SELECT least(count(*), 1) FROM entries WHERE kind = 1", 1, 30000, 2),
        0);
    ck_assert_int_eq(hs_stop(&S.p, SIGKILL, 5000), 128 + SIGKILL);
    long long before = sql(&S, "SELECT count(*) FROM entries WHERE kind = 1");
    ck_assert_msg(before < N, "all %d posted before the kill: nothing to prove", N);
    hs_start(&S.p, SETTLEMENT_BIN, env);
    cm_rpc_client_free(S.c);
    S.c = hs_client(&S.p, NULL);
    wait_for(&S, "SELECT count(*) FROM entries WHERE kind = 1", N);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM order_splits"), N);
    ck_assert_int_eq(sql(&S, "SELECT count(DISTINCT order_id) FROM entries WHERE kind = 1"), N);
    ck_assert_int_eq(sql(&S, "SELECT sum(amount) FROM entries WHERE kind = 1"),
                     (long long)N * 1000 + (long long)N * (N - 1) / 2);
    ck_ledger_balanced(&S);
    st_stop(&S);
}
END_TEST

START_TEST(settle_on_completion_holds_parts_until_completed)
{
    st_start(&S, "compl");
    cm_rpc_status stt;
    seed_rule x;
    seed(&x, "m-1");
    x.rule.settle_on_completion = 1;
    ck_assert_int_eq(put_settings(&S, "s-1", 10000, &stt), 0);
    ck_assert_int_eq(put_rule(&S, "r-1", &x.rule, NULL, &stt), 0);
    char *o = uuid();
    paid(&S, TENANT, o, uuid(), "m-1", 10000, hs_real_ms() + 1000);
    wait_for(&S, "SELECT count(*) FROM entries WHERE kind = 1", 1);
    /* held: every part pending, even the T+0 ones */
    ck_balance(&S, PT(PLATFORM), "plat", 4980, 0);
    ck_balance(&S, PT(SUB_MERCHANT), "sub-1", 1992, 0);
    ck_balance(&S, PT(SERVICE_PROVIDER), "sp-1", 2988, 0);
    /* a partial refund before completion comes out of the held parts */
    refunded(&S, o, uuid(), "rf-1", 5000);
    wait_for(&S, "SELECT count(*) FROM entries WHERE kind = 2", 1);
    ck_balance(&S, PT(PLATFORM), "plat", 2490, 0);
    /* completed: T+0 parts available at once, the provider's due the day
     * after the completion */
    completed(&S, o, hs_real_ms());
    wait_for(&S, "SELECT count(*) FROM order_splits WHERE NOT held", 1);
    ck_balance(&S, PT(PLATFORM), "plat", 0, 2490);
    ck_balance(&S, PT(SUB_MERCHANT), "sub-1", 0, 996);
    ck_balance(&S, PT(SERVICE_PROVIDER), "sp-1", 1494, 0);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM pending_due WHERE amount = 1494 AND due_date "
                             "= (now() AT TIME ZONE 'Asia/Shanghai')::date + 1"),
                     1);
    ck_assert_int_eq(sql(&S, "SELECT coalesce(sum(amount), 0) FROM pending_due WHERE due_date = "
                             "'9999-12-31'"),
                     0);
    /* completed again (redelivered under another id): nothing moves twice */
    completed(&S, o, hs_real_ms());
    wait_for(&S, "SELECT count(*) FROM inbox", 4);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM entries WHERE kind = 3"), 1);
    ck_ledger_balanced(&S);
    st_stop(&S);
}
END_TEST

START_TEST(split_receivers_quota_refuses_a_rule_naming_the_quota_and_the_field)
{
    char path[128], env_file[160];
    snprintf(path, sizeof path, "/tmp/commerce-stl-quotas-%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"tenants\": {\"" TENANT "\": {\"quotas\": {\"split_receivers\": 2}}}}", f);
    ck_assert_int_eq(fclose(f), 0);
    snprintf(env_file, sizeof env_file, "RATE_LIMITS_FILE=%s", path);
    const char *extra[] = {env_file, NULL};
    st_start_env(&S, "quota", extra);
    seed_rule x;
    seed(&x, "m-quota");
    cm_rpc_status stt;
    ck_assert_int_eq(put_rule(&S, "r-3", &x.rule, NULL, &stt), GRPC_STATUS_RESOURCE_EXHAUSTED);
    ck_assert_str_eq(stt.reason, "QUOTA_EXCEEDED");
    ck_assert_str_eq(cm_rpc_status_meta(&stt, "quota"), "split_receivers");
    ck_assert_str_eq(cm_rpc_status_meta(&stt, "limit"), "2");
    ck_assert_str_eq(stt.field, "rule.receivers");
    ck_assert_int_eq(hs_sql_long(S.schema, "SELECT count(*) FROM split_rules"), 0);
    /* within the quota it is stored */
    ck_assert_int_eq(put_settings(&S, "s-1", 10000, &stt), 0);
    x.r[0].share_bps = 7000;
    x.rule.n_receivers = 2;
    Commerce__Settlement__V1__PutSplitRuleResponse *resp = NULL;
    ck_assert_int_eq(put_rule(&S, "r-2", &x.rule, &resp, &stt), 0);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    ck_assert_int_eq(hs_sql_long(S.schema, "SELECT count(*) FROM split_rules"), 1);
    st_stop(&S);
    unlink(path);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("settlement");
    TCase *tc = tcase_create("settlement");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, rules_validated_versioned_idempotent);
    tcase_add_test(tc, seed_example_posted_to_the_minor_unit);
    tcase_add_test(tc, posted_once_per_order_and_refunds_reverse_exactly);
    tcase_add_test(tc, refund_before_its_payment_waits);
    tcase_add_test(tc, no_rule_merchant_keeps_all_and_tenants_are_apart);
    tcase_add_test(tc, run_settles_once_pays_out_and_records_debt);
    tcase_add_test(tc, kill_mid_batch_posts_each_order_once);
    tcase_add_test(tc, settle_on_completion_holds_parts_until_completed);
    suite_add_tcase(s, tc);
    TCase *q = tcase_create("quotas");
    tcase_set_timeout(q, 120);
    tcase_add_checked_fixture(q, NULL, teardown);
    tcase_add_test(q, split_receivers_quota_refuses_a_rule_naming_the_quota_and_the_field);
    suite_add_tcase(s, q);
    return hs_run(s, 1);
}
