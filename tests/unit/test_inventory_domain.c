/* the inventory service's pure decisions (services/inventory/domain.c) */
#include "cm_err.h"
#include "inv_domain.h"

#include <check.h>
#include <stdint.h>
#include <string.h>

START_TEST(reserve_rejects_bad_lines_naming_the_field)
{
    inv_violation v;
    int64_t ttl;
    inv_line ok[] = {{"sku-a", 1}, {"sku-b", 2}};
    ck_assert_int_eq(inv_check_reserve("o-1", "", ok, 2, -1, &ttl, &v), 0);
    ck_assert_int_eq(ttl, INV_TTL_DEFAULT_MS);
    ck_assert_int_eq(inv_check_reserve("o-1", "", ok, 0, -1, &ttl, &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "lines");
    inv_line zero[] = {{"sku-a", 1}, {"sku-b", 0}};
    ck_assert_int_eq(inv_check_reserve("o-1", "", zero, 2, -1, &ttl, &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "lines[1].quantity");
    inv_line neg[] = {{"sku-a", -5}};
    ck_assert_int_eq(inv_check_reserve("o-1", "", neg, 1, -1, &ttl, &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "lines[0].quantity");
    inv_line huge[] = {{"sku-a", INV_QTY_MAX + 1}};
    ck_assert_int_eq(inv_check_reserve("o-1", "", huge, 1, -1, &ttl, &v), CM_EINVAL);
    inv_line dup[] = {{"sku-a", 1}, {"sku-b", 1}, {"sku-a", 1}};
    ck_assert_int_eq(inv_check_reserve("o-1", "", dup, 3, -1, &ttl, &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "lines[2].sku");
    inv_line bad[] = {{"sku a", 1}};
    ck_assert_int_eq(inv_check_reserve("o-1", "", bad, 1, -1, &ttl, &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "lines[0].sku");
    ck_assert_int_eq(inv_check_reserve("", "", ok, 2, -1, &ttl, &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "order_id");
    ck_assert_int_eq(inv_check_reserve("o-1", "", ok, 2, 999, &ttl, &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "ttl");
    ck_assert_int_eq(inv_check_reserve("o-1", "", ok, 2, 1000, &ttl, &v), 0);
    ck_assert_int_eq(ttl, 1000);
}
END_TEST

START_TEST(reserve_body_differs_when_anything_differs)
{
    inv_line a[] = {{"sku-a", 1}, {"sku-b", 2}};
    inv_line b[] = {{"sku-a", 1}, {"sku-b", 3}};
    char x[128], y[128];
    inv_reserve_body(x, sizeof x, "u1", 1000, a, 2);
    inv_reserve_body(y, sizeof y, "u1", 1000, a, 2);
    ck_assert_str_eq(x, y);
    inv_reserve_body(y, sizeof y, "u1", 1000, b, 2);
    ck_assert_str_ne(x, y);
    inv_reserve_body(y, sizeof y, "u2", 1000, a, 2);
    ck_assert_str_ne(x, y);
    inv_reserve_body(y, sizeof y, "u1", 2000, a, 2);
    ck_assert_str_ne(x, y);
    /* the length needed is reported when the buffer is short */
    size_t need = inv_reserve_body(NULL, 0, "u1", 1000, a, 2);
    ck_assert_uint_eq(need, strlen(x));
}
END_TEST

START_TEST(admit_is_all_or_nothing)
{
    inv_counter cs[] = {{.tenant = "t", .sku = "a", .available = 5, .on_hand = 5},
                        {.tenant = "t", .sku = "b", .available = 1, .on_hand = 1}};
    inv_line lines[] = {{"a", 3}, {"b", 2}, {"c", 1}};
    size_t pos[] = {0, 1, SIZE_MAX};
    int64_t av[3];
    ck_assert_int_eq(inv_admit(cs, pos, lines, 3, av), 0);
    ck_assert_int_eq(av[0], 5);
    ck_assert_int_eq(av[1], 1);
    ck_assert_int_eq(av[2], 0);
    ck_assert_int_eq(cs[0].available, 5); /* nothing moved */
    ck_assert_int_eq(inv_admit(cs, pos, lines, 1, av), 1);
    ck_assert_int_eq(cs[0].available, 2);
    ck_assert_int_eq(cs[0].reserved, 3);
    ck_assert_int_eq(cs[0].version, 1);
}
END_TEST

START_TEST(admit_never_oversells_a_hot_sku)
{
    inv_counter c = {.tenant = "t", .sku = "hot", .available = 137, .on_hand = 137};
    inv_line one = {"hot", 1};
    size_t pos = 0;
    int64_t av;
    int admitted = 0;
    for (int i = 0; i < 1000; i++)
        admitted += inv_admit(&c, &pos, &one, 1, &av);
    ck_assert_int_eq(admitted, 137);
    ck_assert_int_eq(c.available, 0);
    ck_assert_int_eq(c.available + c.reserved + c.sold, c.on_hand);
}
END_TEST

START_TEST(resolve_follows_the_state_machine)
{
    inv_resolve_plan p = inv_plan_resolve(INV_ACTIVE, 0, INV_CONFIRMED);
    ck_assert_int_eq(p.apply_to, INV_CONFIRMED);
    ck_assert_int_eq(p.outcome, INV_RESOLVE_OK);
    p = inv_plan_resolve(INV_ACTIVE, 1, INV_CONFIRMED);
    ck_assert_int_eq(p.expire_first, 1);
    ck_assert_int_eq(p.apply_to, 0);
    ck_assert_int_eq(p.outcome, INV_RESOLVE_EXPIRED);
    p = inv_plan_resolve(INV_ACTIVE, 1, INV_RELEASED);
    ck_assert_int_eq(p.expire_first, 1);
    ck_assert_int_eq(p.outcome, INV_RESOLVE_OK);
    p = inv_plan_resolve(INV_CONFIRMED, 0, INV_CONFIRMED);
    ck_assert_int_eq(p.apply_to, 0);
    ck_assert_int_eq(p.outcome, INV_RESOLVE_OK);
    p = inv_plan_resolve(INV_CONFIRMED, 0, INV_RELEASED);
    ck_assert_int_eq(p.outcome, INV_RESOLVE_WAS_CONFIRMED);
    p = inv_plan_resolve(INV_RELEASED, 0, INV_CONFIRMED);
    ck_assert_int_eq(p.outcome, INV_RESOLVE_WAS_RELEASED);
    p = inv_plan_resolve(INV_EXPIRED, 0, INV_RELEASED);
    ck_assert_int_eq(p.outcome, INV_RESOLVE_OK);
    p = inv_plan_resolve(0, 0, INV_RELEASED);
    ck_assert_int_eq(p.tombstone, 1);
    p = inv_plan_resolve(0, 0, INV_CONFIRMED);
    ck_assert_int_eq(p.outcome, INV_RESOLVE_NOT_FOUND);
}
END_TEST

START_TEST(check_cost_names_the_bad_field)
{
    inv_violation v;
    ck_assert_int_eq(
        inv_check_cost("r-1", "sku-1", 1, 1250, "CNY", "supplier price", "ops:a", 0, &v), 0);
    ck_assert_int_eq(inv_check_cost("r-1", "sku-1", 1, 0, "JPY", "free sample", "ops:a", 3, &v), 0);
    struct {
        const char *req, *sku;
        int has;
        int64_t cost;
        const char *ccy, *reason, *actor;
        int64_t expected;
        const char *field;
    } bad[] = {
        {"", "sku-1", 1, 1, "CNY", "r", "a", 0, "request_id"},
        {"r", "bad sku", 1, 1, "CNY", "r", "a", 0, "sku"},
        {"r", "sku-1", 0, 0, NULL, "r", "a", 0, "unit_cost"},
        {"r", "sku-1", 1, -1, "CNY", "r", "a", 0, "unit_cost.amount_minor"},
        {"r", "sku-1", 1, INV_COST_MAX + 1, "CNY", "r", "a", 0, "unit_cost.amount_minor"},
        {"r", "sku-1", 1, 1, "cny", "r", "a", 0, "unit_cost.currency"},
        {"r", "sku-1", 1, 1, "", "r", "a", 0, "unit_cost.currency"},
        {"r", "sku-1", 1, 1, "CNY", "", "a", 0, "reason"},
        {"r", "sku-1", 1, 1, "CNY", "r", "", 0, "actor"},
        {"r", "sku-1", 1, 1, "CNY", "r", "a", -1, "expected_cost_version"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&v, 0, sizeof v);
        ck_assert_int_eq(inv_check_cost(bad[i].req, bad[i].sku, bad[i].has, bad[i].cost, bad[i].ccy,
                                        bad[i].reason, bad[i].actor, bad[i].expected, &v),
                         CM_EINVAL);
        ck_assert_str_eq(v.field, bad[i].field);
    }
}
END_TEST

START_TEST(admin_delta_refuses_negative_stock)
{
    int64_t d;
    ck_assert_int_eq(inv_admin_delta(INV_KIND_SET, 7, 10, &d), 0);
    ck_assert_int_eq(d, 3);
    ck_assert_int_eq(inv_admin_delta(INV_KIND_ADJUST, 7, -7, &d), 0);
    ck_assert_int_eq(d, -7);
    ck_assert_int_eq(inv_admin_delta(INV_KIND_ADJUST, 7, -8, &d), CM_ESTATE);
    inv_violation v;
    ck_assert_int_eq(inv_check_admin(INV_KIND_ADJUST, "r1", "a", 0, "x", "y", &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "delta");
    ck_assert_int_eq(inv_check_admin(INV_KIND_SET, "r1", "a", -1, "x", "y", &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "available");
    ck_assert_int_eq(inv_check_admin(INV_KIND_SET, "r1", "a", 1, "", "y", &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "reason");
    ck_assert(inv_sold_out_now(3, 0));
    ck_assert(!inv_sold_out_now(0, 0));
    ck_assert(inv_back_in_stock(0, 2));
}
END_TEST

START_TEST(sale_update_changes_only_what_the_sale_state_allows)
{
    inv_sale_cfg cur = {"sku-a", 1000, 2000, 10, 2};
    /* scheduled: everything but the sku */
    inv_sale_cfg next = {"sku-a", 1500, 3000, 5, 1};
    ck_assert_int_eq(inv_plan_sale_update(&cur, 0, &next, 500), INV_SU_OK);
    next.sku = "sku-b";
    ck_assert_int_eq(inv_plan_sale_update(&cur, 0, &next, 500), INV_SU_SKU_CHANGED);
    /* running: the start is fixed; end, stock and limit move, the stock
     * not below what the sale holds */
    next = cur;
    next.ends_ms = 2500;
    next.sale_stock = 4;
    next.per_buyer_limit = 5;
    ck_assert_int_eq(inv_plan_sale_update(&cur, 4, &next, 1500), INV_SU_OK);
    next.sale_stock = 3;
    ck_assert_int_eq(inv_plan_sale_update(&cur, 4, &next, 1500), INV_SU_STOCK_BELOW_HELD);
    next.sale_stock = 4;
    next.starts_ms = 900;
    ck_assert_int_eq(inv_plan_sale_update(&cur, 4, &next, 1500), INV_SU_STARTED);
    ck_assert_int_eq(inv_plan_sale_update(&cur, 4, &next, 1000), INV_SU_STARTED);
    /* ended: final, whatever changes */
    next = cur;
    ck_assert_int_eq(inv_plan_sale_update(&cur, 0, &next, 2000), INV_SU_ENDED);
    /* the edges a stock change makes */
    ck_assert_int_eq(inv_sale_stock_edge(4, 4, 6), 1);
    ck_assert_int_eq(inv_sale_stock_edge(4, 6, 4), 0);
    ck_assert_int_eq(inv_sale_stock_edge(3, 6, 5), -1);
    ck_assert_int_eq(inv_sale_stock_edge(6, 6, 6), -1);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("inventory_domain");
    TCase *t = tcase_create("domain");
    tcase_add_test(t, reserve_rejects_bad_lines_naming_the_field);
    tcase_add_test(t, reserve_body_differs_when_anything_differs);
    tcase_add_test(t, admit_is_all_or_nothing);
    tcase_add_test(t, admit_never_oversells_a_hot_sku);
    tcase_add_test(t, resolve_follows_the_state_machine);
    tcase_add_test(t, admin_delta_refuses_negative_stock);
    tcase_add_test(t, check_cost_names_the_bad_field);
    tcase_add_test(t, sale_update_changes_only_what_the_sale_state_allows);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
