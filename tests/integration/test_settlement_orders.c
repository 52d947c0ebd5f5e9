/*
 * settlement fed by a real commerce-order (and commerce-inventory): orders
 * created, paid, refunded and completed through order's API reach the
 * ledger through the order topic, split by the seed's rule to the minor
 * unit, with every part back to zero after full refunds.
 */
#include "fixture.h"

#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "commerce/settlement/v1/settlement_service.pb-c.h"

#define SVC "/commerce.settlement.v1.SettlementService/"
#define PT(x) COMMERCE__SETTLEMENT__V1__PARTY_TYPE__PARTY_TYPE_##x

static fx F;
static hs_proc P;
static char schema[64], group[128], stopic[128];

static void teardown(void)
{
    fx_teardown();
}

static void start_settlement(void)
{
    snprintf(schema, sizeof schema, "stl_orders_%d", (int)getpid());
    snprintf(group, sizeof group, "commerce.settlement.orders-%d", (int)getpid());
    snprintf(stopic, sizeof stopic, "commerce.settlement.v1.orders-%d", (int)getpid());
    hs_kafka_create_topic(hs_kafka_brokers(), stopic, 1);
    char e1[128], e2[192], e3[192], e4[192];
    snprintf(e1, sizeof e1, "SETTLEMENT_SCHEMA=%s", schema);
    snprintf(e2, sizeof e2, "SETTLEMENT_ORDER_TOPIC=%s", F.topic);
    snprintf(e3, sizeof e3, "SETTLEMENT_ORDER_GROUP=%s", group);
    snprintf(e4, sizeof e4, "SETTLEMENT_TOPIC=%s", stopic);
    const char *env[] = {
        e1, e2, e3, e4, "SETTLEMENT_RUN_TICK_MS=3600000", "SETTLEMENT_PAYOUT_MS=3600000", NULL};
    hs_start(&P, SETTLEMENT_BIN, env);
}

static void stop_settlement(void)
{
    ck_assert_int_eq(hs_stop(&P, SIGTERM, 30000), 0);
    hs_kafka_delete_topic(hs_kafka_brokers(), stopic);
    hs_drop_schema(NULL, schema);
}

static void wait_for(const char *q, long long v)
{
    hs_wait_sql(schema, q, v, P.log_path);
}

static long long available(int type, const char *owner)
{
    char q[256];
    snprintf(q, sizeof q,
             "SELECT coalesce(sum(available), 0) FROM accounts WHERE party_type = %d AND "
             "owner_id = '%s'",
             type, owner);
    return hs_sql_long(schema, q);
}

START_TEST(orders_from_the_order_service_are_split_and_reversed)
{
    fx_start(&F, NULL, 0);
    start_settlement();
    cm_rpc_client *sc = hs_client(&P, NULL);
    cm_rpc_status st;
    /* the seed's rule for the fixture's merchant */
    Commerce__Settlement__V1__TenantSettings ts = COMMERCE__SETTLEMENT__V1__TENANT_SETTINGS__INIT;
    ts.time_zone = "Asia/Shanghai";
    ts.max_split_bps = 10000;
    ts.run_at = "02:00";
    Commerce__Settlement__V1__PutTenantSettingsRequest pr =
        COMMERCE__SETTLEMENT__V1__PUT_TENANT_SETTINGS_REQUEST__INIT;
    pr.request_id = "s-1";
    pr.settings = &ts;
    ck_assert_int_eq(hs_call(sc, SVC "PutTenantSettings", &pr.base,
                             &commerce__settlement__v1__put_tenant_settings_response__descriptor,
                             NULL, &st, fx_md, 1),
                     0);
    Commerce__Settlement__V1__SplitReceiver r[3];
    Commerce__Settlement__V1__SplitReceiver *rp[3] = {&r[0], &r[1], &r[2]};
    const int types[3] = {PT(PLATFORM), PT(SERVICE_PROVIDER), PT(SUB_MERCHANT)};
    const char *ids[3] = {"plat", "sp-1", "sub-1"};
    const int bps[3] = {5000, 3000, 2000}, delay[3] = {0, 1, 0};
    for (int i = 0; i < 3; i++) {
        commerce__settlement__v1__split_receiver__init(&r[i]);
        r[i].type = types[i];
        r[i].receiver_id = (char *)ids[i];
        r[i].share_bps = bps[i];
        r[i].settle_delay_days = (uint32_t)delay[i];
    }
    Commerce__Settlement__V1__FeeModel fee = COMMERCE__SETTLEMENT__V1__FEE_MODEL__INIT;
    fee.bps = 30;
    fee.fixed_minor = 10;
    Commerce__Settlement__V1__SplitRule rule = COMMERCE__SETTLEMENT__V1__SPLIT_RULE__INIT;
    rule.merchant_id = "merchant-1";
    rule.currency = "CNY";
    rule.receivers = rp;
    rule.n_receivers = 3;
    rule.fee = &fee;
    Commerce__Settlement__V1__PutSplitRuleRequest rr =
        COMMERCE__SETTLEMENT__V1__PUT_SPLIT_RULE_REQUEST__INIT;
    rr.request_id = "r-1";
    rr.rule = &rule;
    ck_assert_int_eq(hs_call(sc, SVC "PutSplitRule", &rr.base,
                             &commerce__settlement__v1__put_split_rule_response__descriptor, NULL,
                             &st, fx_md, 1),
                     0);
    /* two orders of 100.00 and 123.45 through the order service */
    fx_set_stock(F.ic, "stock-1", "sku-a", 100);
    const fx_line l1[] = {FX_L("sku-a", 2, 5000)};
    const fx_line l2[] = {FX_L("sku-a", 1, 12345)};
    fx_order_spec s1 = fx_spec("o-1", l1, 1), s2 = fx_spec("o-2", l2, 1);
    fx_order *o1 = fx_must_create(F.oc, &s1), *o2 = fx_must_create(F.oc, &s2);
    fx_must_pay(F.oc, o1, "pay-1");
    fx_must_pay(F.oc, o2, "pay-2");
    wait_for("SELECT count(*) FROM entries WHERE kind = 1", 2);
    ck_assert_int_eq(available(PT(PLATFORM), "plat"), 4980 + 6149);
    ck_assert_int_eq(available(PT(SUB_MERCHANT), "sub-1"), 1992 + 2460);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT sum(pending) FROM accounts WHERE owner_id = "
                                         "'sp-1'"),
                     2988 + 3689);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT sum(fee) FROM entries WHERE kind = 1"), 87);
    /* the order service's ids and amounts, as it sent them */
    char q[256];
    snprintf(q, sizeof q, "SELECT amount FROM order_splits WHERE order_id = '%s'", o2->order_id);
    ck_assert_int_eq(hs_sql_long(schema, q), 12345);
    /* refunds through the order service: partial, then the rest of o1,
     * and all of o2: every party of both orders back to zero */
    fx_refund_spec f1 = {.refund_id = "rf-1",
                         .order_id = o1->order_id,
                         .scope = FX_SCOPE(AMOUNT),
                         .has_amount = 1,
                         .amount = 3333};
    ck_assert_int_eq(fx_refund_order(F.oc, &f1, NULL, &st), 0);
    fx_refund_spec f2 = {.refund_id = "rf-2",
                         .order_id = o1->order_id,
                         .scope = FX_SCOPE(AMOUNT),
                         .has_amount = 1,
                         .amount = 10000 - 3333};
    ck_assert_int_eq(fx_refund_order(F.oc, &f2, NULL, &st), 0);
    fx_refund_spec f3 = {.refund_id = "rf-3", .order_id = o2->order_id, .scope = FX_SCOPE(FULL)};
    ck_assert_int_eq(fx_refund_order(F.oc, &f3, NULL, &st), 0);
    wait_for("SELECT count(*) FROM entries WHERE kind = 2", 3);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM accounts WHERE pending <> 0 OR "
                                         "available <> 0"),
                     0);
    ck_assert_int_eq(
        hs_sql_long(schema, "SELECT count(*) FROM entries WHERE entry_sum(amounts) <> 0"), 0);
    fx_order_free(o1);
    fx_order_free(o2);
    cm_rpc_client_free(sc);
    stop_settlement();
    fx_stop(&F);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("settlement_orders");
    TCase *tc = tcase_create("settlement_orders");
    tcase_set_timeout(tc, 180);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, orders_from_the_order_service_are_split_and_reversed);
    suite_add_tcase(s, tc);
    return hs_run(s, 1);
}
