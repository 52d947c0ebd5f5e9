/*
 * commerce-settlement's reconciliation (对账) against the private postgres
 * and the broker: the test plays the order events (as test_settlement.c
 * does), imports the provider's statement as CSV and compares: a clean day,
 * planted differences found item by item and paged, bad CSV refused naming
 * the line, tenants apart, and the metrics of the recon ticker.
 */
#include "harness.h"

#include <check.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cm_id.h"
#include "commerce/events/v1/order_events.pb-c.h"
#include "commerce/settlement/v1/settlement_service.pb-c.h"

#define SVC "/commerce.settlement.v1.SettlementService/"
#define TENANT "tenant-rec"
#define OTHER TENANT "-other"
#define PT(x) COMMERCE__SETTLEMENT__V1__PARTY_TYPE__PARTY_TYPE_##x
#define DK(x) COMMERCE__SETTLEMENT__V1__DIFFERENCE_KIND__DIFFERENCE_KIND_##x
#define LK(x) COMMERCE__SETTLEMENT__V1__STATEMENT_LINE_KIND__STATEMENT_LINE_KIND_##x

static const cm_rpc_md md[1] = {{"x-tenant-id", TENANT}};
static const cm_rpc_md md_other[1] = {{"x-tenant-id", OTHER}};

typedef struct st {
    char schema[64], otopic[128], stopic[128], group[128];
    hs_proc p;
    cm_rpc_client *c;
    hs_producer *prod;
} st;

static st S;
static int seq;

static void st_start(st *s, const char *tag)
{
    memset(s, 0, sizeof *s);
    seq++;
    int pid = (int)getpid();
    snprintf(s->schema, sizeof s->schema, "stlr_%s_%d_%d", tag, pid, seq);
    snprintf(s->otopic, sizeof s->otopic, "commerce.order.v1.stlr-%s-%d-%d", tag, pid, seq);
    snprintf(s->stopic, sizeof s->stopic, "commerce.settlement.v1.r-%s-%d-%d", tag, pid, seq);
    snprintf(s->group, sizeof s->group, "commerce.settlement.r-%s-%d-%d", tag, pid, seq);
    hs_kafka_create_topic(hs_kafka_brokers(), s->otopic, 2);
    hs_kafka_create_topic(hs_kafka_brokers(), s->stopic, 1);
    char e1[128], e2[192], e3[192], e4[192];
    snprintf(e1, sizeof e1, "SETTLEMENT_SCHEMA=%s", s->schema);
    snprintf(e2, sizeof e2, "SETTLEMENT_ORDER_TOPIC=%s", s->otopic);
    snprintf(e3, sizeof e3, "SETTLEMENT_ORDER_GROUP=%s", s->group);
    snprintf(e4, sizeof e4, "SETTLEMENT_TOPIC=%s", s->stopic);
    const char *env[] = {e1, e2, e3, e4, "SETTLEMENT_RECON_MS=200", NULL};
    hs_start(&s->p, SETTLEMENT_BIN, env);
    s->c = hs_client(&s->p, NULL);
    s->prod = hs_producer_new(hs_kafka_brokers());
}

static void st_stop(st *s)
{
    cm_rpc_client_free(s->c);
    hs_producer_free(s->prod);
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

/* ---- rules, settings and order events (as in test_settlement.c) ---- */

static void put_settings(st *s, const cm_rpc_md *m, const char *tz)
{
    Commerce__Settlement__V1__TenantSettings ts = COMMERCE__SETTLEMENT__V1__TENANT_SETTINGS__INIT;
    ts.time_zone = (char *)tz;
    ts.max_split_bps = 10000;
    ts.run_at = "02:00";
    Commerce__Settlement__V1__PutTenantSettingsRequest r =
        COMMERCE__SETTLEMENT__V1__PUT_TENANT_SETTINGS_REQUEST__INIT;
    r.request_id = "settings-1";
    r.settings = &ts;
    cm_rpc_status stt;
    int code = hs_call(s->c, SVC "PutTenantSettings", &r.base,
                       &commerce__settlement__v1__put_tenant_settings_response__descriptor, NULL,
                       &stt, m, 1);
    ck_assert_msg(code == 0, "PutTenantSettings: %d %s", code, stt.message);
}

/* the seed's rule: fee 0.3 % + 0.10, platform 50 %, service provider 30 %
 * (T+1), sub-merchant 20 % */
static void put_seed_rule(st *s, const cm_rpc_md *m)
{
    static const struct {
        int type;
        const char *id;
        int bps, delay;
    } def[3] = {{PT(PLATFORM), "plat", 5000, 0},
                {PT(SERVICE_PROVIDER), "sp-1", 3000, 1},
                {PT(SUB_MERCHANT), "sub-1", 2000, 0}};
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
    Commerce__Settlement__V1__SplitRule rule = COMMERCE__SETTLEMENT__V1__SPLIT_RULE__INIT;
    rule.merchant_id = "m-1";
    rule.currency = "CNY";
    rule.receivers = rp;
    rule.n_receivers = 3;
    rule.fee = &fee;
    Commerce__Settlement__V1__PutSplitRuleRequest req =
        COMMERCE__SETTLEMENT__V1__PUT_SPLIT_RULE_REQUEST__INIT;
    req.request_id = "rule-1";
    req.rule = &rule;
    cm_rpc_status stt;
    int code =
        hs_call(s->c, SVC "PutSplitRule", &req.base,
                &commerce__settlement__v1__put_split_rule_response__descriptor, NULL, &stt, m, 1);
    ck_assert_msg(code == 0, "PutSplitRule: %d %s", code, stt.message);
}

static void send_event(st *s, const char *type, const char *order_id, const char *event_id,
                       const char *tenant, const ProtobufCMessage *m)
{
    hs_produce_event(s->prod, s->otopic, order_id, type, "/commerce/order", event_id, tenant, m);
}

static char *uuid(void)
{
    static char ids[64][CM_ID_SIZE];
    static int k;
    char *id = ids[k++ % 64];
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    return id;
}

static void paid(st *s, const char *tenant, const char *order_id, long long amount)
{
    long long paid_ms = hs_real_ms() + 1000; /* after the rule */
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
    o.merchant_id = "m-1";
    o.currency = "CNY";
    o.total_amount = &m;
    o.payment = &pay;
    Commerce__Events__V1__OrderPaid e = COMMERCE__EVENTS__V1__ORDER_PAID__INIT;
    char *ev = uuid();
    e.event_id = ev;
    e.tenant_id = (char *)tenant;
    e.order_id = (char *)order_id;
    e.order = &o;
    send_event(s, "commerce.events.v1.OrderPaid", order_id, ev, tenant, &e.base);
}

static void refunded(st *s, const char *order_id, const char *refund_id, long long amount)
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
    char *ev = uuid();
    e.event_id = ev;
    e.tenant_id = TENANT;
    e.order_id = (char *)order_id;
    e.order = &o;
    e.refund = &rf;
    send_event(s, "commerce.events.v1.OrderRefunded", order_id, ev, TENANT, &e.base);
}

/* ---- sql ---- */

static long long sql(const st *s, const char *q)
{
    return hs_sql_long(s->schema, q);
}

static void wait_for(const st *s, const char *q, long long want)
{
    hs_wait_sql(s->schema, q, want, s->p.log_path);
}

typedef struct wait_metric {
    const st *s;
    const char *series;
    double want;
} wait_metric;

static int metric_is(void *arg)
{
    wait_metric *w = arg;
    return hs_metric(&w->s->p, w->series) == w->want;
}

static void wait_metric_eq(const st *s, const char *series, double want)
{
    wait_metric w = {s, series, want};
    int rc = hs_poll(metric_is, &w, 30000, 100);
    ck_assert_msg(rc == 0, "metric %s: %g, expected %g (log %s)", series, hs_metric(&s->p, series),
                  want, s->p.log_path);
}

/* a local date from "SELECT to_char(..., 'YYYYMMDD')::bigint" */
static Commerce__Common__V1__Date date_of(long long ymd)
{
    Commerce__Common__V1__Date d = COMMERCE__COMMON__V1__DATE__INIT;
    d.year = (int32_t)(ymd / 10000);
    d.month = (int32_t)(ymd / 100 % 100);
    d.day = (int32_t)(ymd % 100);
    return d;
}

/* the local date the tenant's orders were paid on (all on one) */
static Commerce__Common__V1__Date paid_date(const st *s, const char *tz)
{
    char q[256];
    snprintf(q, sizeof q,
             "SELECT to_char(min(paid_at AT TIME ZONE '%s'), 'YYYYMMDD')::bigint FROM "
             "order_splits WHERE tenant_id = '" TENANT "'",
             tz);
    return date_of(sql(s, q));
}

/* ---- the statement ---- */

typedef struct csv {
    char *p;
    size_t len, cap;
} csv;

__attribute__((format(printf, 2, 3))) static void csv_add(csv *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    ck_assert_int_ge(n, 0);
    if (c->len + (size_t)n + 1 > c->cap) {
        c->cap = (c->len + (size_t)n + 1) * 2;
        c->p = realloc(c->p, c->cap);
        ck_assert_ptr_nonnull(c->p);
    }
    va_start(ap, fmt);
    vsnprintf(c->p + c->len, c->cap - c->len, fmt, ap);
    va_end(ap);
    c->len += (size_t)n;
}

/* minor units of CNY as the bill prints them */
static const char *yuan(long long minor)
{
    static char b[8][32];
    static int k;
    char *o = b[k++ % 8];
    snprintf(o, 32, "%lld.%02lld", minor / 100, minor % 100);
    return o;
}

#define HEADER                                                                                     \
    "transaction_time,provider_transaction_id,order_id,kind,currency,amount,fee,refund_id\n"

static void csv_pay(csv *c, const char *txn, const char *order, long long amount, long long fee)
{
    csv_add(c, "2026-01-01 10:00:00,%s,%s,payment,CNY,%s,%s,\n", txn, order, yuan(amount),
            yuan(fee));
}

static void csv_refund(csv *c, const char *txn, const char *order, const char *refund_id,
                       long long amount, long long fee)
{
    csv_add(c, "2026-01-01 11:00:00,%s,%s,refund,CNY,%s,%s,%s\n", txn, order, yuan(amount),
            yuan(fee), refund_id);
}

static int import(st *s, const cm_rpc_md *m, const char *req_id,
                  const Commerce__Common__V1__Date *date, const char *text,
                  Commerce__Settlement__V1__ImportStatementResponse **out, cm_rpc_status *stt)
{
    Commerce__Settlement__V1__ImportStatementRequest r =
        COMMERCE__SETTLEMENT__V1__IMPORT_STATEMENT_REQUEST__INIT;
    r.request_id = (char *)req_id;
    r.bill_date = (Commerce__Common__V1__Date *)date;
    r.csv = (char *)text;
    return hs_call(s->c, SVC "ImportStatement", &r.base,
                   &commerce__settlement__v1__import_statement_response__descriptor,
                   (ProtobufCMessage **)out, stt, m, 1);
}

static Commerce__Settlement__V1__Reconciliation *
get_recon(st *s, const cm_rpc_md *m, const Commerce__Common__V1__Date *d,
          Commerce__Settlement__V1__GetReconciliationResponse **keep)
{
    Commerce__Settlement__V1__GetReconciliationRequest r =
        COMMERCE__SETTLEMENT__V1__GET_RECONCILIATION_REQUEST__INIT;
    r.date = (Commerce__Common__V1__Date *)d;
    r.currency = "CNY";
    cm_rpc_status stt;
    int code = hs_call(s->c, SVC "GetReconciliation", &r.base,
                       &commerce__settlement__v1__get_reconciliation_response__descriptor,
                       (ProtobufCMessage **)keep, &stt, m, 1);
    ck_assert_msg(code == 0, "GetReconciliation: %d %s", code, stt.message);
    return (*keep)->reconciliation;
}

static int list_diffs(st *s, const cm_rpc_md *m, const Commerce__Common__V1__Date *d, int page_size,
                      const char *token,
                      Commerce__Settlement__V1__ListReconciliationDifferencesResponse **out,
                      cm_rpc_status *stt)
{
    Commerce__Settlement__V1__ListReconciliationDifferencesRequest r =
        COMMERCE__SETTLEMENT__V1__LIST_RECONCILIATION_DIFFERENCES_REQUEST__INIT;
    r.date = (Commerce__Common__V1__Date *)d;
    r.currency = "CNY";
    r.page_size = page_size;
    r.page_token = (char *)(token ? token : "");
    return hs_call(s->c, SVC "ListReconciliationDifferences", &r.base,
                   &commerce__settlement__v1__list_reconciliation_differences_response__descriptor,
                   (ProtobufCMessage **)out, stt, m, 1);
}

static long long refund_fee(const st *s, const char *refund_id)
{
    char q[256];
    snprintf(q, sizeof q, "SELECT fee FROM entries WHERE kind = 2 AND ref = '%s'", refund_id);
    return sql(s, q);
}

/* ---- tests ---- */

START_TEST(clean_day_reconciles_and_the_ledger_is_balanced)
{
    st_start(&S, "clean");
    const char *tz = "America/New_York";
    put_settings(&S, md, tz);
    put_seed_rule(&S, md);
    char a[CM_ID_SIZE], b[CM_ID_SIZE], c[CM_ID_SIZE];
    snprintf(a, sizeof a, "%s", uuid());
    snprintf(b, sizeof b, "%s", uuid());
    snprintf(c, sizeof c, "%s", uuid());
    paid(&S, TENANT, a, 10000);
    paid(&S, TENANT, b, 12345);
    paid(&S, TENANT, c, 20000);
    wait_for(&S, "SELECT count(*) FROM entries", 3);
    refunded(&S, b, "rf-b", 12345); /* whole */
    refunded(&S, c, "rf-c", 5000);  /* part */
    wait_for(&S, "SELECT count(*) FROM entries WHERE kind = 2", 2);
    Commerce__Common__V1__Date d = paid_date(&S, tz);
    /* before a statement: the ledger against itself */
    Commerce__Settlement__V1__GetReconciliationResponse *keep = NULL;
    Commerce__Settlement__V1__Reconciliation *r = get_recon(&S, md, &d, &keep);
    ck_assert_str_eq(r->time_zone, tz);
    ck_assert_int_eq(r->paid_orders, 3);
    ck_assert_int_eq(r->paid_amount_minor, 42345);
    ck_assert_int_eq(r->split_entries, 3);
    ck_assert_int_eq(r->split_amount_minor, 42345);
    ck_assert_int_eq(r->split_fee_minor, 40 + 47 + 70); /* 0.3 % + 0.10 each */
    ck_assert_int_eq(r->unposted_orders, 0);
    ck_assert_int_eq(r->refund_entries, 2);
    ck_assert_int_eq(r->refunded_amount_minor, 17345);
    long long fee_c = refund_fee(&S, "rf-c");
    ck_assert_int_eq(r->refund_fee_minor, 47 + fee_c);
    ck_assert(r->ledger_balanced);
    ck_assert_int_eq(r->ledger_total_minor, 0);
    ck_assert_int_eq(r->mismatched_accounts, 0);
    ck_assert_ptr_null(r->statement);
    ck_assert_int_eq(r->differences, 0);
    protobuf_c_message_free_unpacked(&keep->base, NULL);
    cm_rpc_status stt;
    ck_assert_int_eq(list_diffs(&S, md, &d, 0, NULL, NULL, &stt), 5);
    ck_assert_str_eq(stt.reason, "RESOURCE_NOT_FOUND");
    /* the provider's bill as WeChat Pay exports it: a BOM, CRLF, columns
     * in its own order with one we do not read, values behind backticks */
    csv x = {0};
    csv_add(&x, "\xEF\xBB\xBF"
                "transaction_time,order_id,provider_transaction_id,kind,currency,amount,fee,"
                "refund_id,product\r\n");
    csv_add(&x, "`2026-01-01 10:00:00,`%s,`4200001,`SUCCESS,`CNY,`100.00,`0.40,,\"tea, green\"\r\n",
            a);
    csv_add(&x, "`2026-01-01 10:00:01,`%s,`4200002,`SUCCESS,`CNY,`123.45,`0.47,,cup\r\n", b);
    csv_add(&x, "`2026-01-01 10:00:02,`%s,`4200003,`SUCCESS,`CNY,`200,`0.7,,pot\r\n", c);
    csv_add(&x, "\r\n");
    csv_add(&x, "`2026-01-01 11:00:00,`%s,`5000001,`REFUND,`CNY,`123.45,`0.47,`rf-b,cup\r\n", b);
    csv_add(&x, "`2026-01-01 11:00:01,`%s,`5000002,`REFUND,`CNY,`50.00,`%s,`rf-c,pot\r\n", c,
            yuan(fee_c));
    Commerce__Settlement__V1__ImportStatementResponse *imp = NULL;
    int code = import(&S, md, "bill-1", &d, x.p, &imp, &stt);
    ck_assert_msg(code == 0, "ImportStatement: %d %s", code, stt.message);
    ck_assert_int_eq(imp->lines, 5);
    ck_assert_int_eq(imp->payment_count, 3);
    ck_assert_int_eq(imp->refund_count, 2);
    ck_assert(!imp->replaced);
    ck_assert_int_eq(imp->bill_date->day, d.day);
    protobuf_c_message_free_unpacked(&imp->base, NULL);
    /* a retry answers the same; the key with another body is refused */
    ck_assert_int_eq(import(&S, md, "bill-1", &d, x.p, &imp, &stt), 0);
    ck_assert_int_eq(imp->lines, 5);
    protobuf_c_message_free_unpacked(&imp->base, NULL);
    ck_assert_int_eq(import(&S, md, "bill-1", &d, HEADER, NULL, &stt), 6);
    ck_assert_str_eq(stt.reason, "IDEMPOTENCY_KEY_REUSED");
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM statement_lines"), 5);
    /* clean */
    r = get_recon(&S, md, &d, &keep);
    ck_assert_ptr_nonnull(r->statement);
    ck_assert_str_eq(r->statement->request_id, "bill-1");
    ck_assert_int_eq(r->statement->lines, 5);
    ck_assert_int_eq(r->statement->payment_count, 3);
    ck_assert_int_eq(r->statement->payment_amount_minor, 42345);
    ck_assert_int_eq(r->statement->payment_fee_minor, 157);
    ck_assert_int_eq(r->statement->refund_count, 2);
    ck_assert_int_eq(r->statement->refund_amount_minor, 17345);
    ck_assert_int_eq(r->differences, 0);
    ck_assert(r->ledger_balanced);
    protobuf_c_message_free_unpacked(&keep->base, NULL);
    Commerce__Settlement__V1__ListReconciliationDifferencesResponse *l = NULL;
    ck_assert_int_eq(list_diffs(&S, md, &d, 0, NULL, &l, &stt), 0);
    ck_assert_uint_eq(l->n_differences, 0);
    ck_assert_str_eq(l->next_page_token, "");
    protobuf_c_message_free_unpacked(&l->base, NULL);
    /* the ticker's metrics */
    wait_metric_eq(&S, "settlement_ledger_balanced", 1);
    wait_metric_eq(&S, "settlement_reconciliation_differences", 0);
    /* a bucket changed behind the journal's back: the ledger is no longer
     * balanced, and both the RPC and the metric say so */
    hs_sql_exec(S.schema, "UPDATE accounts SET available = available + 1 WHERE party_type = 2");
    r = get_recon(&S, md, &d, &keep);
    ck_assert(!r->ledger_balanced);
    ck_assert_int_eq(r->ledger_total_minor, 1);
    ck_assert_int_eq(r->mismatched_accounts, 1);
    protobuf_c_message_free_unpacked(&keep->base, NULL);
    wait_metric_eq(&S, "settlement_ledger_balanced", 0);
    hs_sql_exec(S.schema, "UPDATE accounts SET available = available - 1 WHERE party_type = 2");
    wait_metric_eq(&S, "settlement_ledger_balanced", 1);
    free(x.p);
    st_stop(&S);
}
END_TEST

typedef struct want_diff {
    const char *order, *refund;
    int kind, line_kind;
    long long ledger_amount, statement_amount, ledger_fee, statement_fee;
    int seen;
} want_diff;

START_TEST(planted_differences_found_item_by_item_and_paged)
{
    st_start(&S, "planted");
    const char *tz = "Asia/Shanghai";
    put_settings(&S, md, tz);
    put_seed_rule(&S, md);
    char a[CM_ID_SIZE], b[CM_ID_SIZE], c[CM_ID_SIZE], dd[CM_ID_SIZE], u[CM_ID_SIZE];
    snprintf(a, sizeof a, "%s", uuid());
    snprintf(b, sizeof b, "%s", uuid());
    snprintf(c, sizeof c, "%s", uuid());
    snprintf(dd, sizeof dd, "%s", uuid());
    snprintf(u, sizeof u, "%s", uuid()); /* an order we never saw */
    paid(&S, TENANT, a, 10000);
    paid(&S, TENANT, b, 12345);
    paid(&S, TENANT, c, 20000);
    paid(&S, TENANT, dd, 5000);
    wait_for(&S, "SELECT count(*) FROM entries", 4);
    refunded(&S, c, "rf-c", 5000);
    wait_for(&S, "SELECT count(*) FROM entries WHERE kind = 2", 1);
    long long fee_c = refund_fee(&S, "rf-c");
    Commerce__Common__V1__Date d = paid_date(&S, tz);
    csv x = {0};
    csv_add(&x, HEADER);
    csv_pay(&x, "4200001", a, 9900, 40);               /* line 2: amount differs */
    csv_pay(&x, "4200002", b, 12345, 50);              /* line 3: fee differs (ours 47) */
    csv_pay(&x, "4200003", c, 20000, 70);              /* line 4: clean */
    csv_pay(&x, "4200009", u, 3000, 19);               /* line 5: missing in the ledger */
    csv_refund(&x, "5000001", c, "rf-c", 6000, fee_c); /* line 6: refund differs */
    csv_refund(&x, "5000002", a, "rf-x", 100, 0);      /* line 7: a refund we never posted */
    /* d's payment is not listed: missing in the statement */
    cm_rpc_status stt;
    int code = import(&S, md, "bill-1", &d, x.p, NULL, &stt);
    ck_assert_msg(code == 0, "ImportStatement: %d %s", code, stt.message);
    Commerce__Settlement__V1__GetReconciliationResponse *keep = NULL;
    Commerce__Settlement__V1__Reconciliation *r = get_recon(&S, md, &d, &keep);
    ck_assert_int_eq(r->differences, 6);
    ck_assert(r->ledger_balanced);
    ck_assert_int_eq(r->paid_orders, 4);
    ck_assert_int_eq(r->statement->payment_count, 4);
    protobuf_c_message_free_unpacked(&keep->base, NULL);
    want_diff want[] = {
        {a, "", DK(AMOUNT_DIFFERS), LK(PAYMENT), 10000, 9900, 40, 40, 0},
        {b, "", DK(FEE_DIFFERS), LK(PAYMENT), 12345, 12345, 47, 50, 0},
        {u, "", DK(MISSING_IN_LEDGER), LK(PAYMENT), 0, 3000, 0, 19, 0},
        {dd, "", DK(MISSING_IN_STATEMENT), LK(PAYMENT), 5000, 0, 25, 0, 0},
        {c, "rf-c", DK(REFUND_DIFFERS), LK(REFUND), 5000, 6000, fee_c, fee_c, 0},
        {a, "rf-x", DK(MISSING_IN_LEDGER), LK(REFUND), 0, 100, 0, 0, 0},
    };
    size_t nwant = sizeof want / sizeof want[0];
    /* item by item, four to a page */
    char token[512] = "";
    int pages = 0;
    size_t total = 0;
    char prev[64] = "";
    for (;;) {
        Commerce__Settlement__V1__ListReconciliationDifferencesResponse *l = NULL;
        code = list_diffs(&S, md, &d, 4, token, &l, &stt);
        ck_assert_msg(code == 0, "ListReconciliationDifferences: %d %s", code, stt.message);
        pages++;
        for (size_t i = 0; i < l->n_differences; i++) {
            const Commerce__Settlement__V1__ReconciliationDifference *x2 = l->differences[i];
            ck_assert_msg(strcmp(prev, x2->order_id) <= 0, "ordered by order id");
            snprintf(prev, sizeof prev, "%s", x2->order_id);
            size_t k = 0;
            for (; k < nwant; k++)
                if (strcmp(want[k].order, x2->order_id) == 0 &&
                    strcmp(want[k].refund, x2->refund_id) == 0)
                    break;
            ck_assert_msg(k < nwant, "unexpected difference %d for %s/%s", x2->kind, x2->order_id,
                          x2->refund_id);
            ck_assert_int_eq(want[k].seen, 0);
            want[k].seen = 1;
            ck_assert_int_eq(x2->kind, want[k].kind);
            ck_assert_int_eq(x2->line_kind, want[k].line_kind);
            ck_assert_int_eq(x2->ledger_amount_minor, want[k].ledger_amount);
            ck_assert_int_eq(x2->statement_amount_minor, want[k].statement_amount);
            ck_assert_int_eq(x2->ledger_fee_minor, want[k].ledger_fee);
            ck_assert_int_eq(x2->statement_fee_minor, want[k].statement_fee);
            if (want[k].kind == DK(MISSING_IN_STATEMENT)) {
                ck_assert_int_eq(x2->statement_line, 0);
                ck_assert_str_eq(x2->provider_transaction_id, "");
                ck_assert_int_gt(x2->entry_id, 0);
            } else {
                ck_assert_int_gt(x2->statement_line, 1);
                ck_assert_str_ne(x2->provider_transaction_id, "");
            }
            if (want[k].kind == DK(MISSING_IN_LEDGER))
                ck_assert_int_eq(x2->entry_id, 0);
            total++;
        }
        int last = l->next_page_token[0] == '\0';
        if (pages == 1)
            ck_assert_uint_eq(l->n_differences, 4);
        snprintf(token, sizeof token, "%s", l->next_page_token);
        protobuf_c_message_free_unpacked(&l->base, NULL);
        if (last)
            break;
        ck_assert_int_lt(pages, 5);
    }
    ck_assert_int_eq(pages, 2);
    ck_assert_uint_eq(total, nwant);
    /* a token is bound to its date and currency */
    Commerce__Settlement__V1__ListReconciliationDifferencesResponse *l = NULL;
    ck_assert_int_eq(list_diffs(&S, md, &d, 4, NULL, &l, &stt), 0);
    Commerce__Common__V1__Date other_day = d;
    other_day.day = d.day == 1 ? 2 : 1;
    ck_assert_int_eq(list_diffs(&S, md, &other_day, 4, l->next_page_token, NULL, &stt), 3);
    ck_assert_str_eq(stt.field, "page_token");
    protobuf_c_message_free_unpacked(&l->base, NULL);
    wait_metric_eq(&S, "settlement_reconciliation_differences", 6);
    wait_metric_eq(&S, "settlement_ledger_balanced", 1);
    /* the provider's corrected bill replaces the first: clean */
    csv y = {0};
    csv_add(&y, HEADER);
    csv_pay(&y, "4200001", a, 10000, 40);
    csv_pay(&y, "4200002", b, 12345, 47);
    csv_pay(&y, "4200003", c, 20000, 70);
    csv_pay(&y, "4200004", dd, 5000, 25);
    csv_refund(&y, "5000001", c, "rf-c", 5000, fee_c);
    Commerce__Settlement__V1__ImportStatementResponse *imp = NULL;
    ck_assert_int_eq(import(&S, md, "bill-2", &d, y.p, &imp, &stt), 0);
    ck_assert(imp->replaced);
    protobuf_c_message_free_unpacked(&imp->base, NULL);
    r = get_recon(&S, md, &d, &keep);
    ck_assert_int_eq(r->differences, 0);
    ck_assert_str_eq(r->statement->request_id, "bill-2");
    protobuf_c_message_free_unpacked(&keep->base, NULL);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM statement_lines"), 5);
    wait_metric_eq(&S, "settlement_reconciliation_differences", 0);
    free(x.p);
    free(y.p);
    st_stop(&S);
}
END_TEST

/* a bad statement is refused naming csv and the line; nothing stored */
static void ck_bad(st *s, const Commerce__Common__V1__Date *d, const char *text, const char *line)
{
    cm_rpc_status stt;
    int code = import(s, md, "bad", d, text, NULL, &stt);
    ck_assert_msg(code == 3, "accepted (%d): %s", code, text);
    ck_assert_str_eq(stt.field, "csv");
    ck_assert_msg(strstr(stt.message, line) != NULL, "%s does not name %s", stt.message, line);
}

START_TEST(bad_csv_refused_naming_the_line)
{
    st_start(&S, "badcsv");
    Commerce__Common__V1__Date d = date_of(20260101);
    const char *o = "0190b0c4-1e8a-7c3e-9d2b-3f4a5b6c7d8e";
    char t[1024];
    /* an amount with more decimals than CNY has */
    snprintf(t, sizeof t,
             HEADER "2026-01-01 10:00:00,1,%s,payment,CNY,1.00,0.01,\n"
                    "2026-01-01 10:00:00,2,%s,payment,CNY,1.005,0.01,\n",
             o, "0190b0c4-1e8a-7c3e-9d2b-3f4a5b6c7d8f");
    ck_bad(&S, &d, t, "csv: line 3: amount");
    snprintf(t, sizeof t, HEADER "2026-01-01 10:00:00,1,%s,chargeback,CNY,1.00,0.01,\n", o);
    ck_bad(&S, &d, t, "line 2: kind");
    snprintf(t, sizeof t,
             HEADER "\n2026-01-01 10:00:00,1,%s,payment,CNY,1.00,0.01,\n"
                    "2026-01-01 10:00:00,2,not-an-order,payment,CNY,1.00,0.01,\n",
             o);
    ck_bad(&S, &d, t, "line 4: order_id");
    ck_bad(&S, &d, "transaction_time,order_id,kind,currency,amount,fee,refund_id\n",
           "line 1: header");
    snprintf(t, sizeof t, HEADER "2026-01-01 10:00:00,1,%s,refund,CNY,1.00,0.01,\n", o);
    ck_bad(&S, &d, t, "line 2: refund_id");
    snprintf(t, sizeof t, HEADER "2026-02-30 10:00:00,1,%s,payment,CNY,1.00,0.01,\n", o);
    ck_bad(&S, &d, t, "line 2: transaction_time");
    snprintf(t, sizeof t, HEADER "2026-01-01 10:00:00,1,%s,payment,CNY,1.00\n", o);
    ck_bad(&S, &d, t, "line 2: 6 fields");
    snprintf(t, sizeof t, HEADER "2026-01-01 10:00:00,1,%s,payment,CNY,-1.00,0.01,\n", o);
    ck_bad(&S, &d, t, "line 2: amount");
    snprintf(t, sizeof t, HEADER "2026-01-01 10:00:00,1,%s,payment,XXQ,1.00,0.01,\n", o);
    ck_bad(&S, &d, t, "line 2: currency");
    /* the same payment twice: the later line */
    snprintf(t, sizeof t,
             HEADER "2026-01-01 10:00:00,1,%s,payment,CNY,1.00,0.01,\n"
                    "2026-01-01 10:00:00,3,%s,refund,CNY,1.00,0.01,rf-1\n"
                    "2026-01-01 10:00:00,2,%s,payment,CNY,1.00,0.01,\n",
             o, o, o);
    ck_bad(&S, &d, t, "line 4: the order's payment listed twice (first at line 2)");
    /* too large */
    size_t big = 4000001;
    char *huge = malloc(big + 1);
    ck_assert_ptr_nonnull(huge);
    memset(huge, 'x', big);
    huge[big] = '\0';
    cm_rpc_status stt;
    ck_assert_int_eq(import(&S, md, "bad", &d, huge, NULL, &stt), 3);
    ck_assert_str_eq(stt.field, "csv");
    free(huge);
    /* a date that does not exist */
    Commerce__Common__V1__Date bad_day = date_of(20260230);
    snprintf(t, sizeof t, HEADER "2026-01-01 10:00:00,1,%s,payment,CNY,1.00,0.01,\n", o);
    ck_assert_int_eq(import(&S, md, "bad", &bad_day, t, NULL, &stt), 3);
    ck_assert_str_eq(stt.field, "bill_date");
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM statement_lines"), 0);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM statements"), 0);
    ck_assert_int_eq(sql(&S, "SELECT count(*) FROM statement_imports"), 0);
    /* and the same key with a good statement is then accepted */
    ck_assert_int_eq(import(&S, md, "bad", &d, t, NULL, &stt), 0);
    st_stop(&S);
}
END_TEST

START_TEST(tenants_do_not_see_each_others_reconciliation)
{
    st_start(&S, "tenants");
    put_settings(&S, md, "Asia/Shanghai");
    put_settings(&S, md_other, "Asia/Shanghai");
    char a[CM_ID_SIZE], o2[CM_ID_SIZE];
    snprintf(a, sizeof a, "%s", uuid());
    snprintf(o2, sizeof o2, "%s", uuid());
    paid(&S, TENANT, a, 777);
    paid(&S, OTHER, o2, 100);
    wait_for(&S, "SELECT count(*) FROM entries", 2);
    Commerce__Common__V1__Date d = paid_date(&S, "Asia/Shanghai");
    csv x = {0};
    csv_add(&x, HEADER);
    csv_pay(&x, "4200001", a, 777, 0); /* no rule: no fee */
    cm_rpc_status stt;
    ck_assert_int_eq(import(&S, md, "bill-1", &d, x.p, NULL, &stt), 0);
    /* the other tenant sees neither the statement nor the order */
    Commerce__Settlement__V1__GetReconciliationResponse *keep = NULL;
    Commerce__Settlement__V1__Reconciliation *r = get_recon(&S, md_other, &d, &keep);
    ck_assert_ptr_null(r->statement);
    ck_assert_int_eq(r->paid_orders, 1);
    ck_assert_int_eq(r->paid_amount_minor, 100);
    ck_assert_int_eq(r->differences, 0);
    protobuf_c_message_free_unpacked(&keep->base, NULL);
    ck_assert_int_eq(list_diffs(&S, md_other, &d, 0, NULL, NULL, &stt), 5);
    /* its own statement listing the first tenant's order does not match
     * that tenant's ledger */
    ck_assert_int_eq(import(&S, md_other, "bill-1", &d, x.p, NULL, &stt), 0);
    Commerce__Settlement__V1__ListReconciliationDifferencesResponse *l = NULL;
    ck_assert_int_eq(list_diffs(&S, md_other, &d, 0, NULL, &l, &stt), 0);
    ck_assert_uint_eq(l->n_differences, 2);
    for (size_t i = 0; i < l->n_differences; i++) {
        const Commerce__Settlement__V1__ReconciliationDifference *y = l->differences[i];
        if (strcmp(y->order_id, a) == 0) {
            ck_assert_int_eq(y->kind, DK(MISSING_IN_LEDGER));
        } else {
            ck_assert_str_eq(y->order_id, o2);
            ck_assert_int_eq(y->kind, DK(MISSING_IN_STATEMENT));
        }
    }
    protobuf_c_message_free_unpacked(&l->base, NULL);
    /* and the first tenant's stays clean */
    r = get_recon(&S, md, &d, &keep);
    ck_assert_int_eq(r->differences, 0);
    ck_assert_int_eq(r->paid_orders, 1);
    ck_assert_int_eq(r->paid_amount_minor, 777);
    ck_assert_str_eq(r->statement->request_id, "bill-1");
    protobuf_c_message_free_unpacked(&keep->base, NULL);
    free(x.p);
    st_stop(&S);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("settlement_recon");
    TCase *tc = tcase_create("settlement_recon");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, clean_day_reconciles_and_the_ledger_is_balanced);
    tcase_add_test(tc, planted_differences_found_item_by_item_and_paged);
    tcase_add_test(tc, bad_csv_refused_naming_the_line);
    tcase_add_test(tc, tenants_do_not_see_each_others_reconciliation);
    suite_add_tcase(s, tc);
    return hs_run(s, 1);
}
