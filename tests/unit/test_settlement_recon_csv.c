/* the provider statement's csv (services/settlement/recon_csv.c) */
#include "cm_err.h"
#include "stl_recon.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEADER                                                                                     \
    "transaction_time,provider_transaction_id,order_id,kind,currency,amount,fee,refund_id\n"
#define ORDER "0190b0c4-1e8a-7c3e-9d2b-3f4a5b6c7d8e"

typedef struct got {
    int n;
    stl_stmt_line l[8];
} got;

static int keep(void *arg, const stl_stmt_line *l)
{
    got *g = arg;
    if (g->n == 8)
        return CM_ENOMEM;
    g->l[g->n++] = *l;
    return 0;
}

static int parse(const char *csv, got *g, char *why, size_t whylen, int *line)
{
    memset(g, 0, sizeof *g);
    return stl_recon_parse(csv, strlen(csv), keep, g, why, whylen, line);
}

/* refused at line, why starting "line N: " and holding what */
static void ck_refused(const char *csv, int line, const char *what)
{
    got g;
    char why[256] = "";
    int at = -1;
    ck_assert_int_eq(parse(csv, &g, why, sizeof why, &at), CM_EINVAL);
    ck_assert_int_eq(at, line);
    char head[32];
    snprintf(head, sizeof head, "line %d: ", line);
    ck_assert_msg(strncmp(why, head, strlen(head)) == 0, "why: %s", why);
    ck_assert_msg(strstr(why, what) != NULL, "why %s lacks %s", why, what);
}

START_TEST(statement_lines_parse_to_minor_units)
{
    got g;
    char why[256];
    int at;
    ck_assert_int_eq(parse(HEADER "2026-01-01 10:00:00,4200001," ORDER ",payment,CNY,12.34,0.05,\n"
                                  "2026-01-01 11:00:00,5000001," ORDER ",refund,JPY,100,0,rf-1\n"
                                  "2026-01-01 12:00:00,4200002," ORDER ",payment,KWD,1.5,0.001,",
                           &g, why, sizeof why, &at),
                     0);
    ck_assert_int_eq(g.n, 3);
    ck_assert_int_eq(g.l[0].line, 2);
    ck_assert_int_eq(g.l[0].kind, STL_LINE_PAYMENT);
    ck_assert_int_eq(g.l[0].amount, 1234);
    ck_assert_int_eq(g.l[0].fee, 5);
    ck_assert_str_eq(g.l[0].txn, "4200001");
    ck_assert_str_eq(g.l[0].order_id, ORDER);
    ck_assert_str_eq(g.l[0].refund_id, "");
    ck_assert_str_eq(g.l[0].time, "2026-01-01 10:00:00");
    ck_assert_int_eq(g.l[1].kind, STL_LINE_REFUND);
    ck_assert_int_eq(g.l[1].amount, 100); /* JPY has no decimals */
    ck_assert_str_eq(g.l[1].refund_id, "rf-1");
    ck_assert_int_eq(g.l[2].amount, 1500); /* KWD has three */
    ck_assert_int_eq(g.l[2].fee, 1);
}
END_TEST

START_TEST(wechat_export_shape_is_accepted)
{
    got g;
    char why[256];
    int at;
    /* a BOM, CRLF, columns in another order plus one not read, backticks,
     * a quoted field with a comma and a quote, a blank line */
    const char *csv = "\xEF\xBB\xBF"
                      "product,kind,order_id,provider_transaction_id,transaction_time,currency,"
                      "amount,fee,refund_id\r\n"
                      "\"tea, \"\"green\"\"\",`SUCCESS,`" ORDER ",`4200001,`2024-02-29 23:59:59,"
                      "`CNY,`100,`0.6,\r\n"
                      "\r\n"
                      " cup , REFUND , " ORDER " , 5000001 , 2024-03-01 00:00:00 , CNY , 1.00 , "
                      "0 , rf-1 \r\n";
    ck_assert_int_eq(parse(csv, &g, why, sizeof why, &at), 0);
    ck_assert_int_eq(g.n, 2);
    ck_assert_int_eq(g.l[0].amount, 10000);
    ck_assert_int_eq(g.l[0].fee, 60);
    ck_assert_int_eq(g.l[1].line, 4);
    ck_assert_int_eq(g.l[1].kind, STL_LINE_REFUND);
    ck_assert_str_eq(g.l[1].refund_id, "rf-1");
    /* a header alone is an empty statement */
    ck_assert_int_eq(parse(HEADER, &g, why, sizeof why, &at), 0);
    ck_assert_int_eq(g.n, 0);
}
END_TEST

START_TEST(bad_lines_are_refused_by_number)
{
    ck_refused("", 1, "no header");
    ck_refused("\n" HEADER, 1, "header must be line 1");
    ck_refused("transaction_time,order_id,kind,currency,amount,fee,refund_id\n", 1,
               "no column provider_transaction_id");
    ck_refused("amount,amount,transaction_time\n", 1, "column amount twice");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,CNY,1.00,0.01,\n"
                      "2026-13-01 10:00:00,1," ORDER ",payment,CNY,1.00,0.01,\n",
               3, "transaction_time");
    ck_refused(HEADER "2025-02-29 10:00:00,1," ORDER ",payment,CNY,1.00,0.01,\n", 2,
               "transaction_time");
    ck_refused(HEADER "2026-01-01 24:00:00,1," ORDER ",payment,CNY,1.00,0.01,\n", 2,
               "transaction_time");
    ck_refused(HEADER "2026-01-01 10:00:00,a b," ORDER ",payment,CNY,1.00,0.01,\n", 2,
               "provider_transaction_id");
    ck_refused(HEADER "2026-01-01 10:00:00,1,42,payment,CNY,1.00,0.01,\n", 2, "order_id");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",PAYMENT,CNY,1.00,0.01,\n", 2, "kind");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,cny,1.00,0.01,\n", 2, "currency");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,CNY,1.001,0.01,\n", 2, "amount");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,CNY,-1,0.01,\n", 2, "amount");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,CNY,1.,0.01,\n", 2, "amount");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,CNY,.5,0.01,\n", 2, "amount");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,CNY,1234567890123456789,0,\n", 2,
               "amount");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,JPY,1.0,0,\n", 2, "amount");
    /* found by fuzz_recon_csv: 18 digits in major units overflowed int64
     * once scaled to minor units (UBSan: signed overflow) */
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,CNY,333333333333333333,0,\n", 2,
               "amount");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,KWD,1,99999999999999999,\n", 2,
               "fee");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,CNY,1,,\n", 2, "fee");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,CNY,1,0,rf-1\n", 2,
               "refund_id: must be empty");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",refund,CNY,1,0,\n", 2, "refund_id");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,CNY,1,0\n", 2, "7 fields");
    ck_refused(HEADER "2026-01-01 10:00:00,\"1," ORDER ",payment,CNY,1,0,\n", 2,
               "quoted field does not end");
    ck_refused(HEADER "2026-01-01 10:00:00,1\"2," ORDER ",payment,CNY,1,0,\n", 2, "quote");
    ck_refused(HEADER "2026-01-01 10:00:00,1," ORDER ",payment,CNY,1,0,\xff\n", 2, "UTF-8");
}
END_TEST

START_TEST(callback_failure_stops_the_parse)
{
    got g;
    char why[256];
    int at = 0;
    char csv[2048];
    snprintf(csv, sizeof csv, "%s", HEADER);
    for (int i = 0; i < 9; i++)
        snprintf(csv + strlen(csv), sizeof csv - strlen(csv),
                 "2026-01-01 10:00:00,%d," ORDER ",payment,CNY,1,0,\n", i);
    ck_assert_int_eq(parse(csv, &g, why, sizeof why, &at), CM_ENOMEM);
    ck_assert_int_eq(at, 10); /* the ninth data line */
}
END_TEST

START_TEST(times_that_exist)
{
    ck_assert(stl_recon_time_valid("2024-02-29 00:00:00"));
    ck_assert(stl_recon_time_valid("2000-02-29 23:59:59"));
    ck_assert(!stl_recon_time_valid("1900-02-29 00:00:00"));
    ck_assert(!stl_recon_time_valid("2026-04-31 00:00:00"));
    ck_assert(!stl_recon_time_valid("0000-01-01 00:00:00"));
    ck_assert(!stl_recon_time_valid("2026-01-01T00:00:00"));
    ck_assert(!stl_recon_time_valid("2026-01-01 00:00"));
    ck_assert(!stl_recon_time_valid("2026-01-01 00:60:00"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("settlement_recon_csv");
    TCase *tc = tcase_create("csv");
    tcase_add_test(tc, statement_lines_parse_to_minor_units);
    tcase_add_test(tc, wechat_export_shape_is_accepted);
    tcase_add_test(tc, bad_lines_are_refused_by_number);
    tcase_add_test(tc, callback_failure_stops_the_parse);
    tcase_add_test(tc, times_that_exist);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
