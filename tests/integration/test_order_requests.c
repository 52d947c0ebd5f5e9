/*
 * commerce-order's requests (fixture.h): exactly one OrderCreated and
 * OrderPaid per order under concurrent twin requests, bad input refused
 * naming its field and storing nothing, ListOrders' filters and pages.
 */
#include "fixture.h"

#include <grpc/status.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
        fx_line ls[] = {FX_L(s1, 1 + k % 2, 150), FX_L(s2, 1, 275)};
        fx_order_spec s = fx_spec(rid, ls, k % 3 == 0 ? 1 : 2);
        s.timeout_s = 600;
        fx_order *o = NULL;
        cm_rpc_status st;
        int code = -1;
        for (int a = 0; a < 5 && code != 0; a++) {
            code = fx_create(w->c, &s, &o, &st);
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
            fx_pay_spec p = {.payment_id = pid,
                             .order_id = o->order_id,
                             .amount = o->total_amount->amount_minor};
            code = -1;
            for (int a = 0; a < 5 && code != 0; a++) {
                code = fx_mark_paid(w->c, &p, NULL, &st);
                if (code && !retrying(code))
                    break;
            }
            if (code && !w->failures++)
                snprintf(w->first_failure, sizeof w->first_failure, "mark paid %s: %d %s %s", pid,
                         code, st.reason, st.message);
        }
        fx_order_free(o);
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
        fx_set_stock(f.ic, rid, sku, 1000);
    }
    enum { PAIRS = 3, EACH = 20 };
    static dup_worker w[2 * PAIRS];
    memset(w, 0, sizeof w);
    cm_rpc_client *second = hs_client(&f.ord, NULL);
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
    size_t n = fx_all_orders(f.oc, ids, 256);
    ck_assert_uint_eq(n, PAIRS * EACH);
    /* each order reserved once: reserved + sold over all skus = ordered units */
    int64_t units = 0, paid_units = 0;
    for (int p = 0; p < PAIRS; p++)
        for (int k = 0; k < EACH; k++) {
            fx_order *o = fx_must_get(f.oc, w[2 * p].ids[k]);
            for (size_t i = 0; i < o->n_lines; i++) {
                units += o->lines[i]->quantity;
                if (k % 2 == 0)
                    paid_units += o->lines[i]->quantity;
            }
            ck_assert_int_eq(o->state, k % 2 == 0 ? FX_ST(PAID) : FX_ST(PENDING_PAYMENT));
            fx_order_free(o);
        }
    long long until = hs_now_ms() + 30000;
    int64_t reserved, sold;
    for (;;) {
        reserved = sold = 0;
        for (int i = 0; i < 10; i++) {
            char sku[16];
            snprintf(sku, sizeof sku, "sku-e%d", i);
            fx_level l = fx_get_level(f.ic, sku);
            reserved += l.reserved;
            sold += l.sold;
        }
        if (sold == paid_units || hs_now_ms() > until)
            break;
        usleep(200000);
    }
    ck_assert_int_eq(sold, paid_units);
    ck_assert_int_eq(reserved + sold, units);

    fx_settle(&f);
    int dups_total = 0;
    for (size_t i = 0; i < n; i++) {
        int d1, d2;
        ck_assert_msg(fx_ev_count(f.log, ids[i], FX_EV_CREATED, &d1) == 1,
                      "order %s: %d OrderCreated", ids[i],
                      fx_ev_count(f.log, ids[i], FX_EV_CREATED, NULL));
        int paid = fx_ev_count(f.log, ids[i], FX_EV_PAID, &d2);
        fx_order *o = fx_must_get(f.oc, ids[i]);
        ck_assert_int_eq(paid, o->state == FX_ST(PAID));
        fx_order_free(o);
        dups_total += d1 + d2;
    }
    /* nothing on the topic for an order that does not exist */
    for (size_t i = 0; i < hs_topic_count(f.log); i++)
        ck_assert_msg(fx_has_id(ids, n, hs_topic_at(f.log, i)->key), "event for unknown order %s",
                      hs_topic_at(f.log, i)->key);
    if (dups_total)
        fprintf(stderr, "note: %d redelivered OrderCreated/OrderPaid records\n", dups_total);
    ck_assert_int_eq(fx_violations(f.ic, NULL), 0);
    fx_stop(&f);
}
END_TEST

/* ---- many creates at once: their Reserves go to inventory in batches ---- */

typedef struct burst_worker {
    cm_rpc_client *c;
    int index, failures, sold_out;
    char first_failure[512];
    int64_t units; /* reserved by the orders it created */
} burst_worker;

static void *burst_main(void *arg)
{
    burst_worker *w = arg;
    for (int k = 0; k < 25; k++) {
        char rid[48], s1[16], s2[16];
        snprintf(rid, sizeof rid, "req-burst-%d-%d", w->index, k);
        snprintf(s1, sizeof s1, "sku-b%d", (w->index + k) % 8);
        snprintf(s2, sizeof s2, "sku-b%d", (w->index + k + 1) % 8);
        /* sku-b7 runs out: its orders are refused, the others go on */
        fx_line ls[] = {FX_L(s1, 1 + k % 3, 100), FX_L(s2, 1, 200)};
        fx_order_spec sp = fx_spec(rid, ls, 2);
        sp.timeout_s = 600;
        fx_order *o = NULL;
        cm_rpc_status st;
        int code = fx_create(w->c, &sp, &o, &st);
        if (code == GRPC_STATUS_FAILED_PRECONDITION && strcmp(st.reason, "SOLD_OUT") == 0) {
            w->sold_out++;
            continue;
        }
        if (code) {
            if (!w->failures++)
                snprintf(w->first_failure, sizeof w->first_failure, "create %s: %d %s %s", rid,
                         code, st.reason, st.message);
            continue;
        }
        for (size_t i = 0; i < o->n_lines; i++)
            w->units += o->lines[i]->quantity;
        fx_order_free(o);
    }
    return NULL;
}

/* 32 callers at once, 800 creates: the order service gathers their
 * Reserves into BatchReserves (ORDER_RESERVE_BATCH), two batches in flight,
 * each caller possibly leading one while its own request rides in the
 * other. every create gets its own answer: an order holding exactly its
 * units, or SOLD_OUT once a sku ran out, and nothing is reserved for
 * orders that do not exist */
/* the burst against a started pair: every create answered on its own;
 * batched says whether the Reserves went to inventory as BatchReserves */
static void burst(fx *f, int batched)
{
    for (int i = 0; i < 8; i++) {
        char sku[16], rid[16];
        snprintf(sku, sizeof sku, "sku-b%d", i);
        snprintf(rid, sizeof rid, "s-b%d", i);
        fx_set_stock(f->ic, rid, sku, i == 7 ? 40 : 100000);
    }
    enum { N = 32 };
    static burst_worker w[N];
    memset(w, 0, sizeof w);
    cm_rpc_client *second = hs_client(&f->ord, NULL);
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        w[i].c = i % 2 ? second : f->oc;
        w[i].index = i;
        pthread_create(&t[i], NULL, burst_main, &w[i]);
    }
    for (int i = 0; i < N; i++)
        pthread_join(t[i], NULL);
    cm_rpc_client_free(second);
    int64_t units = 0;
    int sold_out = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_msg(w[i].failures == 0, "worker %d: %d failures, first: %s", i, w[i].failures,
                      w[i].first_failure);
        units += w[i].units;
        sold_out += w[i].sold_out;
    }
    ck_assert_int_gt(sold_out, 0);
    /* the stock held is exactly what the stored orders hold */
    int64_t reserved = 0;
    for (int i = 0; i < 8; i++) {
        char sku[16];
        snprintf(sku, sizeof sku, "sku-b%d", i);
        fx_level l = fx_get_level(f->ic, sku);
        reserved += l.reserved;
        if (i == 7)
            ck_assert_int_le(l.reserved, 40);
    }
    ck_assert_int_eq(reserved, units);
    static char ids[1024][64];
    ck_assert_uint_eq(fx_all_orders(f->oc, ids, 1024), (size_t)(N * 25 - sold_out));
    double made = hs_metric(&f->ord, "order_batch_reserved_total");
    double ok = hs_metric(&f->inv, "rpc_server_handled_total{method=\"/"
                                   "commerce.inventory.v1.InventoryService/BatchReserve\","
                                   "code=\"OK\"}");
    if (batched) {
        ck_assert_msg(made > 0, "no reservation made through BatchReserve (%g)", made);
        ck_assert_msg(ok > 0, "inventory answered no BatchReserve");
    } else {
        /* one refused BatchReserve switched batching off: Reserve by itself */
        ck_assert_msg(made <= 0, "%g reservations made through BatchReserve", made);
        ck_assert_msg(ok <= 0, "inventory answered a BatchReserve");
        ck_assert(hs_log_contains(&f->ord, "inventory has no BatchReserve"));
    }
    ck_assert_int_eq(fx_violations(f->ic, NULL), 0);
}

/* 32 callers at once, 800 creates: the order service gathers their
 * Reserves into BatchReserves (ORDER_RESERVE_BATCH), two batches in flight,
 * each caller possibly leading one while its own request rides in the
 * other. every create gets its own answer: an order holding exactly its
 * units, or SOLD_OUT once a sku ran out, and nothing is reserved for
 * orders that do not exist */
START_TEST(concurrent_creates_reserve_in_batches_each_with_its_own_answer)
{
    static fx f;
    fx_start(&f, NULL, 0);
    burst(&f, 1);
    fx_stop(&f);
}
END_TEST

/* a rolling upgrade: an inventory without BatchReserve (RPC_DISABLE makes
 * one) answers UNIMPLEMENTED; the order service then reserves one order per
 * call, and every create still gets its own answer */
START_TEST(an_inventory_without_batch_reserve_gets_one_reserve_per_create)
{
    static fx f;
    static const char *const inv_env[] = {"INVENTORY_SWEEP_MS=100", "WORKERS=8",
                                          "RPC_DISABLE=BatchReserve", NULL};
    fx_start_opts(&f, &(fx_opts){.inventory_env = inv_env});
    burst(&f, 0);
    fx_stop(&f);
}
END_TEST

/* ---- bad input ---- */

typedef struct bad_case {
    const char *what;
    fx_order_spec s;
    int code;
    const char *field;  /* NULL: not checked */
    const char *reason; /* NULL: not checked */
} bad_case;

START_TEST(bad_input_is_refused_and_stores_nothing)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-a", "sku-a", 10);
    fx_set_stock(f.ic, "s-b", "sku-b", 10);
    fx_line ok[] = {FX_L("sku-a", 1, 100), FX_L("sku-b", 1, 100)};
    fx_line q0[] = {FX_L("sku-a", 0, 100)};
    fx_line qneg[] = {FX_L("sku-a", 1, 100), FX_L("sku-b", -2, 100)};
    fx_line pneg[] = {FX_L("sku-a", 1, 100), FX_L("sku-b", 1, -1)};
    fx_line nop[] = {{.sku = "sku-a", .qty = 1, .price = 100, .no_price = 1}};
    fx_line usd[] = {{.sku = "sku-a", .qty = 1, .price = 100, .cur = "USD"}};
    fx_line dup[] = {FX_L("sku-a", 1, 100), FX_L("sku-a", 2, 100)};
    fx_line badsku[] = {FX_L("sku a!", 1, 100)};
    fx_line nosku[] = {FX_L("", 1, 100)};
    fx_line ovf_line[] = {FX_L("sku-a", 3, INT64_MAX / 2)};
    fx_line ovf_sum[] = {FX_L("sku-a", 1, INT64_MAX / 2 + 1), FX_L("sku-b", 1, INT64_MAX / 2 + 1)};
    fx_line unknown[] = {FX_L("sku-a", 1, 100), FX_L("sku-never", 1, 100)};
    static fx_line many[101];
    static char many_sku[101][16];
    for (int i = 0; i < 101; i++) {
        snprintf(many_sku[i], sizeof many_sku[i], "sku-m%d", i);
        many[i] = (fx_line)FX_L(many_sku[i], 1, 1);
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
        int code = fx_create(f.oc, &cases[i].s, NULL, &st);
        ck_assert_msg(code == cases[i].code, "%s: code %d (%s %s), expected %d", cases[i].what,
                      code, st.reason, st.message, cases[i].code);
        if (cases[i].field)
            ck_assert_msg(fx_field_is(&st, cases[i].field), "%s: field \"%s\", expected %s",
                          cases[i].what, st.field, cases[i].field);
        if (cases[i].reason)
            ck_assert_msg(strcmp(st.reason, cases[i].reason) == 0, "%s: reason %s, expected %s",
                          cases[i].what, st.reason, cases[i].reason);
    }
    /* the sold-out sku is named, with inventory's typed detail */
    fx_create(f.oc, &cases[12].s, NULL, &st);
    ck_assert_msg(strstr(st.message, "sku-never") != NULL, "message: %s", st.message);
    int typed = 0;
    for (int i = 0; i < st.n_details; i++)
        typed |= strcmp(st.detail_types[i],
                        "type.googleapis.com/commerce.inventory.v1.StockShortageDetail") == 0;
    ck_assert_msg(typed, "SOLD_OUT without its StockShortageDetail");

    /* the order's own fields */
    fx_order_spec s = fx_spec("b-20", ok, 2);
    s.buyer = "";
    ck_assert_int_eq(fx_create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "buyer_id");
    s.buyer = long64;
    ck_assert_int_eq(fx_create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "buyer_id");
    s.buyer = "buyer-1";
    s.merchant = "";
    ck_assert_int_eq(fx_create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "merchant_id");
    s.merchant = "merchant-1";
    const char *currencies[] = {"", "XYZ", "cny", "CNYY", "C1Y"};
    for (size_t i = 0; i < sizeof currencies / sizeof currencies[0]; i++) {
        s.currency = currencies[i];
        /* the lines priced in the same (bad) currency: only "currency" is wrong */
        fx_line same[] = {{.sku = "sku-a", .qty = 1, .price = 100, .cur = currencies[i]}};
        s.lines = same;
        s.n = 1;
        ck_assert_msg(fx_create(f.oc, &s, NULL, &st) == GRPC_STATUS_INVALID_ARGUMENT,
                      "currency \"%s\": code %d", currencies[i], st.code);
        fx_ck_field(st, "currency");
    }
    s.currency = "CNY";
    s.lines = ok;
    s.n = 2;
    s.timeout_s = 59;
    ck_assert_int_eq(fx_create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "payment_timeout");
    s.timeout_s = 72 * 3600 + 1;
    ck_assert_int_eq(fx_create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "payment_timeout");
    s.timeout_s = -60;
    ck_assert_int_eq(fx_create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "payment_timeout");
    s.timeout_s = 0;
    s.external_ref = long128;
    ck_assert_int_eq(fx_create(f.oc, &s, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "external_ref");
    s.external_ref = NULL;
    /* no tenant */
    ck_assert_int_eq(fx_create_md(f.oc, &s, NULL, &st, NULL, 0), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "metadata.x-tenant-id");
    ck_assert_int_eq(fx_get_order_md(f.oc, "0190a8e0-0000-7000-8000-0000000000dd", NULL, &st, NULL),
                     GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "metadata.x-tenant-id");
    /* lookups */
    ck_assert_int_eq(fx_get_order_md(f.oc, "", NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "order_id");
    ck_assert_int_eq(
        fx_get_order_md(f.oc, "0190a8e0-0000-7000-8000-0000000000dd", NULL, &st, fx_md),
        GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.reason, "RESOURCE_NOT_FOUND");

    /* nothing stored, nothing reserved, nothing published */
    char ids[8][64];
    ck_assert_uint_eq(fx_all_orders(f.oc, ids, 8), 0);
    fx_assert_level(f.ic, "sku-a", 10, 0, 0);
    fx_assert_level(f.ic, "sku-b", 10, 0, 0);
    ck_assert_uint_eq(fx_stock_changes(f.ic, "", FX_KIND(RESERVE), NULL, 0), 0);
    ck_assert_int_eq(hs_sql_long(f.ord_schema, "SELECT count(*) FROM outbox"), 0);

    /* a request refused for one reason is not remembered: the same key
     * with a good body then works */
    fx_order *o = fx_must_create(f.oc, &(fx_order_spec){.rid = "b-3",
                                                        .buyer = "buyer-1",
                                                        .merchant = "merchant-1",
                                                        .currency = "CNY",
                                                        .lines = ok,
                                                        .n = 2});
    fx_order_free(o);
    /* a zero price is a price (>= 0): a free line */
    fx_line gift[] = {FX_L("sku-a", 1, 500), FX_L("sku-b", 1, 0)};
    o = fx_must_create(f.oc, &(fx_order_spec){.rid = "b-gift",
                                              .buyer = "buyer-1",
                                              .merchant = "merchant-1",
                                              .currency = "CNY",
                                              .lines = gift,
                                              .n = 2});
    fx_assert_money(o->total_amount, 500, "CNY");
    fx_assert_money(o->lines[1]->line_total, 0, "CNY");
    fx_order_free(o);
    /* a currency with no minor unit */
    fx_line yen[] = {FX_L("sku-a", 2, 1500)};
    o = fx_must_create(f.oc, &(fx_order_spec){.rid = "b-jpy",
                                              .buyer = "buyer-1",
                                              .merchant = "merchant-1",
                                              .currency = "JPY",
                                              .lines = yen,
                                              .n = 1});
    fx_assert_money(o->total_amount, 3000, "JPY");
    fx_order_free(o);
    ck_assert_uint_eq(fx_all_orders(f.oc, ids, 8), 3);
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
    fx_line ls[] = {FX_L("sku-l", 1, 999)};
    fx_order_spec s = fx_spec("req-l-mid", ls, 1);
    s.buyer = "b1";
    s.merchant = "m1";
    s.timeout_s = 600;
    fx_order_free(fx_must_create(m->c, &s));
}

START_TEST(list_orders_filters_and_pages)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-l", "sku-l", 1000);
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
        fx_line ls[] = {FX_L("sku-l", 1, 100 + i)};
        fx_order_spec s = fx_spec(rid, ls, 1);
        s.buyer = buyer[i];
        s.merchant = merchant[i];
        s.channel = channel[i];
        s.timeout_s = 600;
        fx_order *o = fx_must_create(f.oc, &s);
        snprintf(id[i], sizeof id[i], "%s", o->order_id);
        state[i] = FX_ST(PENDING_PAYMENT);
        if (i % 4 == 1) {
            char pid[32];
            snprintf(pid, sizeof pid, "pay-l-%d", i);
            fx_must_pay(f.oc, o, pid);
            state[i] = FX_ST(PAID);
        } else if (i % 4 == 2) {
            char cx[32];
            snprintf(cx, sizeof cx, "cx-l-%d", i);
            ck_assert_int_eq(
                fx_cancel(f.oc, cx, id[i], FX_CANCEL(BUYER_REQUESTED), NULL, NULL, NULL), 0);
            state[i] = FX_ST(CANCELLED);
        }
        fx_order_free(o);
    }
    static char got[64][64];
    Commerce__Order__V1__ListOrdersRequest q = COMMERCE__ORDER__V1__LIST_ORDERS_REQUEST__INIT;

    /* by buyer, pages of 5, an order created between pages (newer: not in
     * the later pages, and nothing shifts into a duplicate or a gap) */
    q.buyer_id = "b1";
    q.page_size = 5;
    mid_page mp = {f.oc};
    size_t n = fx_list_all(f.oc, &q, got, 64, create_between_pages, &mp);
    ck_assert_uint_eq(n, N / 2);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(fx_has_id(got, n, id[i]), strcmp(buyer[i], "b1") == 0);
    /* newest first: the last created b1 order leads */
    ck_assert_str_eq(got[0], id[N - 2]);

    /* by merchant and state */
    Commerce__Order__V1__OrderState paid[] = {FX_ST(PAID)};
    q.buyer_id = "";
    q.merchant_id = "m2";
    q.states = paid;
    q.n_states = 1;
    q.page_size = 2;
    n = fx_list_all(f.oc, &q, got, 64, NULL, NULL);
    size_t want = 0;
    for (int i = 0; i < N; i++) {
        int match = strcmp(merchant[i], "m2") == 0 && state[i] == FX_ST(PAID);
        want += match;
        ck_assert_int_eq(fx_has_id(got, n, id[i]), match);
    }
    ck_assert_uint_eq(n, want);
    ck_assert_uint_gt(n, 0);

    /* buyer and merchant and two states, pages of 1 */
    Commerce__Order__V1__OrderState two[] = {FX_ST(PENDING_PAYMENT), FX_ST(CANCELLED)};
    q.buyer_id = "b2";
    q.merchant_id = "m1";
    q.states = two;
    q.n_states = 2;
    q.page_size = 1;
    n = fx_list_all(f.oc, &q, got, 64, NULL, NULL);
    want = 0;
    for (int i = 0; i < N; i++) {
        int match = strcmp(buyer[i], "b2") == 0 && strcmp(merchant[i], "m1") == 0 &&
                    (state[i] == FX_ST(PENDING_PAYMENT) || state[i] == FX_ST(CANCELLED));
        want += match;
        ck_assert_int_eq(fx_has_id(got, n, id[i]), match);
    }
    ck_assert_uint_eq(n, want);

    /* by channel */
    q.buyer_id = "";
    q.merchant_id = "";
    q.n_states = 0;
    q.channel_id = "ch-1";
    q.page_size = 0;
    n = fx_list_all(f.oc, &q, got, 64, NULL, NULL);
    ck_assert_uint_eq(n, N / 3);
    q.channel_id = "";

    /* by creation time */
    Commerce__Common__V1__TimeRange tr = COMMERCE__COMMON__V1__TIME_RANGE__INIT;
    Google__Protobuf__Timestamp from = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    from.seconds = time(NULL) + 3600;
    tr.start_at = &from;
    q.created = &tr;
    ck_assert_uint_eq(fx_list_all(f.oc, &q, got, 64, NULL, NULL), 0);
    from.seconds = time(NULL) - 3600;
    ck_assert_uint_eq(fx_list_all(f.oc, &q, got, 64, NULL, NULL), N + 1);
    q.created = NULL;

    /* everything, page_size above 500 treated as 500: one page */
    q.page_size = 100000;
    Commerce__Order__V1__ListOrdersResponse *r = NULL;
    cm_rpc_status st;
    int code;
    ck_assert_int_eq(fx_list_orders(f.oc, &q, &r, &st, fx_md), 0);
    ck_assert_uint_eq(r->n_orders, N + 1);
    ck_assert_str_eq(r->next_page_token, "");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* a token belongs to its filters and its tenant */
    q.buyer_id = "b1";
    q.page_size = 3;
    ck_assert_int_eq(fx_list_orders(f.oc, &q, &r, &st, fx_md), 0);
    char *token = strdup(r->next_page_token);
    ck_assert(token[0]);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    q.page_token = token;
    q.buyer_id = "b2";
    ck_assert_int_eq(fx_list_orders(f.oc, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
    fx_ck_field(st, "page_token");
    q.buyer_id = "b1";
    q.states = paid;
    q.n_states = 1;
    ck_assert_int_eq(fx_list_orders(f.oc, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
    q.n_states = 0;
    /* another tenant: refused, or at least nothing of ours */
    code = fx_list_orders(f.oc, &q, &r, &st, fx_md_other);
    if (code == 0) {
        ck_assert_uint_eq(r->n_orders, 0);
        protobuf_c_message_free_unpacked(&r->base, NULL);
    } else {
        ck_assert_int_eq(code, GRPC_STATUS_INVALID_ARGUMENT);
        ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
    }
    /* the right filters: the token works */
    ck_assert_int_eq(fx_list_orders(f.oc, &q, NULL, &st, fx_md), 0);
    free(token);
    const char *garbage[] = {"zz", "not-a-token", "00", "AAAA", "{}"};
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        q.page_token = (char *)garbage[i];
        ck_assert_int_eq(fx_list_orders(f.oc, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
        ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
        fx_ck_field(st, "page_token");
    }
    q.page_token = "";
    q.page_size = -1;
    ck_assert_int_eq(fx_list_orders(f.oc, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "page_size");
    q.page_size = 0;

    /* another tenant sees nothing */
    q.buyer_id = "";
    ck_assert_int_eq(fx_list_orders(f.oc, &q, &r, &st, fx_md_other), 0);
    ck_assert_uint_eq(r->n_orders, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    ck_assert_int_eq(fx_get_order_md(f.oc, id[0], NULL, &st, fx_md_other), GRPC_STATUS_NOT_FOUND);
    fx_stop(&f);
}
END_TEST

/* the paid-time filter: orders by when their payment was captured
 * (MarkPaid's paid_at), for reconciling settlement against order */
START_TEST(list_orders_by_paid_time)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-p", "sku-p", 1000);
    /* orders 0-4 paid 1..5 hours ago (4 then fully refunded), 5 pending,
     * 6 cancelled */
    enum { N = 7, PAID = 5 };
    char id[N][64];
    long long now_ms = (long long)time(NULL) * 1000, hour = 3600 * 1000;
    for (int i = 0; i < N; i++) {
        char rid[32], pid[32];
        snprintf(rid, sizeof rid, "req-p-%d", i);
        fx_line ls[] = {FX_L("sku-p", 1, 100 + i)};
        fx_order_spec s = fx_spec(rid, ls, 1);
        s.timeout_s = 600;
        fx_order *o = fx_must_create(f.oc, &s);
        snprintf(id[i], sizeof id[i], "%s", o->order_id);
        cm_rpc_status st;
        if (i < PAID) {
            snprintf(pid, sizeof pid, "pay-p-%d", i);
            fx_pay_spec p = {.payment_id = pid,
                             .order_id = o->order_id,
                             .amount = o->total_amount->amount_minor,
                             .paid_at_ms = now_ms - (i + 1) * hour};
            ck_assert_int_eq(fx_mark_paid(f.oc, &p, NULL, &st), 0);
        } else if (i == N - 1) {
            ck_assert_int_eq(
                fx_cancel(f.oc, "cx-p", id[i], FX_CANCEL(BUYER_REQUESTED), NULL, NULL, NULL), 0);
        }
        if (i == PAID - 1) {
            fx_refund_spec r = {
                .refund_id = "rf-p", .order_id = o->order_id, .scope = FX_SCOPE(FULL)};
            ck_assert_int_eq(fx_refund_order(f.oc, &r, NULL, &st), 0);
        }
        fx_order_free(o);
    }
    static char got[64][64];
    Commerce__Order__V1__ListOrdersRequest q = COMMERCE__ORDER__V1__LIST_ORDERS_REQUEST__INIT;
    Commerce__Common__V1__TimeRange tr = COMMERCE__COMMON__V1__TIME_RANGE__INIT;
    Google__Protobuf__Timestamp from = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    Google__Protobuf__Timestamp to = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    q.paid = &tr;

    /* set with no bounds: every paid order, the refunded one too */
    size_t n = fx_list_all(f.oc, &q, got, 64, NULL, NULL);
    ck_assert_uint_eq(n, PAID);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(fx_has_id(got, n, id[i]), i < PAID);

    /* [3.5 h ago, 1.5 h ago): paid 2 and 3 hours ago, in pages of 1 */
    from.seconds = (now_ms - 7 * hour / 2) / 1000;
    to.seconds = (now_ms - 3 * hour / 2) / 1000;
    tr.start_at = &from;
    tr.end_at = &to;
    q.page_size = 1;
    n = fx_list_all(f.oc, &q, got, 64, NULL, NULL);
    ck_assert_uint_eq(n, 2);
    ck_assert(fx_has_id(got, n, id[1]) && fx_has_id(got, n, id[2]));

    /* the lower bound is inclusive, the upper exclusive (ms) */
    from.seconds = (now_ms - 2 * hour) / 1000;
    to.seconds = (now_ms - 1 * hour) / 1000;
    n = fx_list_all(f.oc, &q, got, 64, NULL, NULL);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(got[0], id[1]);

    /* open above: paid within the last 2.5 hours */
    from.seconds = (now_ms - 5 * hour / 2) / 1000;
    tr.end_at = NULL;
    n = fx_list_all(f.oc, &q, got, 64, NULL, NULL);
    ck_assert_uint_eq(n, 2);
    ck_assert(fx_has_id(got, n, id[0]) && fx_has_id(got, n, id[1]));

    /* with the created filter and a state: both apply */
    Commerce__Common__V1__TimeRange cr = COMMERCE__COMMON__V1__TIME_RANGE__INIT;
    Google__Protobuf__Timestamp cfrom = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    cfrom.seconds = now_ms / 1000 - 3600;
    cr.start_at = &cfrom;
    q.created = &cr;
    Commerce__Order__V1__OrderState paid_state[] = {FX_ST(PAID)};
    q.states = paid_state;
    q.n_states = 1;
    tr.start_at = NULL;
    n = fx_list_all(f.oc, &q, got, 64, NULL, NULL);
    ck_assert_uint_eq(n, PAID - 1); /* not the refunded one */
    ck_assert(!fx_has_id(got, n, id[PAID - 1]));
    cfrom.seconds = now_ms / 1000 + 3600; /* created in the future: none */
    ck_assert_uint_eq(fx_list_all(f.oc, &q, got, 64, NULL, NULL), 0);
    q.created = NULL;
    q.n_states = 0;

    /* a page token belongs to its paid range: another range, or none at
     * all, is refused */
    tr.start_at = NULL;
    tr.end_at = NULL;
    Commerce__Order__V1__ListOrdersResponse *r = NULL;
    cm_rpc_status st;
    ck_assert_int_eq(fx_list_orders(f.oc, &q, &r, &st, fx_md), 0);
    ck_assert_uint_eq(r->n_orders, 1);
    char *token = strdup(r->next_page_token);
    ck_assert(token[0]);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    q.page_token = token;
    from.seconds = (now_ms - 10 * hour) / 1000;
    tr.start_at = &from;
    ck_assert_int_eq(fx_list_orders(f.oc, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
    tr.start_at = NULL;
    q.paid = NULL;
    ck_assert_int_eq(fx_list_orders(f.oc, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
    q.paid = &tr;
    ck_assert_int_eq(fx_list_orders(f.oc, &q, NULL, &st, fx_md), 0);
    free(token);
    q.page_token = "";
    q.page_size = 0;

    /* bad ranges name their field */
    from.seconds = now_ms / 1000;
    to.seconds = now_ms / 1000 - 60;
    tr.start_at = &from;
    tr.end_at = &to;
    ck_assert_int_eq(fx_list_orders(f.oc, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "paid.end_at");
    from.seconds = -5;
    tr.end_at = NULL;
    ck_assert_int_eq(fx_list_orders(f.oc, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "paid.start_at");

    /* another tenant sees none of them */
    q.paid = &tr;
    tr.start_at = NULL;
    ck_assert_int_eq(fx_list_orders(f.oc, &q, &r, &st, fx_md_other), 0);
    ck_assert_uint_eq(r->n_orders, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    fx_stop(&f);
}
END_TEST

int main(void)
{
    const TTest *const tests[] = {
        every_order_has_exactly_one_created_and_paid_event,
        concurrent_creates_reserve_in_batches_each_with_its_own_answer,
        an_inventory_without_batch_reserve_gets_one_reserve_per_create,
        bad_input_is_refused_and_stores_nothing,
        list_orders_filters_and_pages,
        list_orders_by_paid_time,
    };
    return fx_run("order_requests", tests, sizeof tests / sizeof tests[0]);
}
