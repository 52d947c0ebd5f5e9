/*
 * gross margin (issue 19) against real commerce-inventory and commerce-order
 * (fixture.h): the cost price set, versioned and audited; a cost change in
 * the middle of a sale (orders keep the cost they were created with, on
 * the batch and the flash-sale reserve paths); refunds reversing cost; the
 * QueryMargin RPC; the counters on /metrics; and a flash sale priced under
 * cost whose scraped series trip the alert rule in `promtool test rules`.
 */
#include "fixture.h"

#include <grpc/status.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- calls ---- */

static int set_cost(cm_rpc_client *c, const char *rid, const char *sku, int64_t cost,
                    const char *cur, int64_t expected,
                    Commerce__Inventory__V1__SetCostResponse **out, cm_rpc_status *st)
{
    Commerce__Inventory__V1__SetCostRequest q = COMMERCE__INVENTORY__V1__SET_COST_REQUEST__INIT;
    Commerce__Common__V1__Money m = COMMERCE__COMMON__V1__MONEY__INIT;
    m.amount_minor = cost;
    m.currency = (char *)cur;
    q.request_id = (char *)rid;
    q.sku = (char *)sku;
    q.unit_cost = cur ? &m : NULL;
    q.reason = "supplier price list";
    q.actor = "ops:test";
    q.expected_cost_version = expected;
    return hs_call(c, FX_ISVC "SetCost", &q.base,
                   &commerce__inventory__v1__set_cost_response__descriptor,
                   (ProtobufCMessage **)out, st, fx_md, 1);
}

static void must_set_cost(cm_rpc_client *c, const char *rid, const char *sku, int64_t cost)
{
    cm_rpc_status st;
    ck_assert_msg(set_cost(c, rid, sku, cost, "CNY", 0, NULL, &st) == 0, "SetCost %s: %s %s", sku,
                  st.reason, st.message);
}

static Commerce__Inventory__V1__GetCostResponse *get_cost(cm_rpc_client *c, const char *sku,
                                                          cm_rpc_status *st)
{
    Commerce__Inventory__V1__GetCostRequest q = COMMERCE__INVENTORY__V1__GET_COST_REQUEST__INIT;
    q.sku = (char *)sku;
    Commerce__Inventory__V1__GetCostResponse *r = NULL;
    if (hs_call(c, FX_ISVC "GetCost", &q.base,
                &commerce__inventory__v1__get_cost_response__descriptor, (ProtobufCMessage **)&r,
                st, fx_md, 1) != 0)
        return NULL;
    return r;
}

static int query_margin(cm_rpc_client *c, const char *sku, const char *fs, long long from_ms,
                        long long to_ms, Commerce__Order__V1__QueryMarginResponse **out,
                        cm_rpc_status *st)
{
    Commerce__Order__V1__QueryMarginRequest q = COMMERCE__ORDER__V1__QUERY_MARGIN_REQUEST__INIT;
    Commerce__Common__V1__TimeRange tr = COMMERCE__COMMON__V1__TIME_RANGE__INIT;
    Google__Protobuf__Timestamp a = GOOGLE__PROTOBUF__TIMESTAMP__INIT,
                                b = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    q.sku = (char *)(sku ? sku : "");
    q.flash_sale_id = (char *)(fs ? fs : "");
    if (from_ms || to_ms) {
        if (from_ms) {
            a.seconds = from_ms / 1000;
            a.nanos = (int32_t)(from_ms % 1000) * 1000000;
            tr.start_at = &a;
        }
        if (to_ms) {
            b.seconds = to_ms / 1000;
            b.nanos = (int32_t)(to_ms % 1000) * 1000000;
            tr.end_at = &b;
        }
        q.paid = &tr;
    }
    return hs_call(c, FX_OSVC "QueryMargin", &q.base,
                   &commerce__order__v1__query_margin_response__descriptor,
                   (ProtobufCMessage **)out, st, fx_md, 1);
}

/* the one CNY summary of a QueryMargin that must succeed */
static Commerce__Order__V1__QueryMarginResponse *
must_margin(cm_rpc_client *c, const char *sku, const char *fs, long long from_ms, long long to_ms)
{
    Commerce__Order__V1__QueryMarginResponse *r = NULL;
    cm_rpc_status st;
    int code = query_margin(c, sku, fs, from_ms, to_ms, &r, &st);
    ck_assert_msg(code == 0, "QueryMargin: %d %s %s", code, st.reason, st.message);
    return r;
}

static void ck_summary(const Commerce__Order__V1__QueryMarginResponse *r, int64_t orders,
                       int64_t revenue, int64_t refunded, int64_t cost, int64_t reversed,
                       int64_t bps)
{
    ck_assert_uint_eq(r->n_margins, 1);
    const Commerce__Order__V1__MarginSummary *m = r->margins[0];
    ck_assert_str_eq(m->currency, "CNY");
    ck_assert_int_eq(m->orders, orders);
    fx_assert_money(m->revenue, revenue, "CNY");
    fx_assert_money(m->refunded, refunded, "CNY");
    fx_assert_money(m->cost, cost, "CNY");
    fx_assert_money(m->cost_reversed, reversed, "CNY");
    fx_assert_money(m->gross_margin, revenue - refunded - cost + reversed, "CNY");
    ck_assert_int_eq(m->margin_ratio_bps, bps);
}

static int64_t line_cost(const fx_order *o, const char *sku)
{
    const Commerce__Order__V1__OrderLine *l = fx_line_of(o, sku);
    ck_assert_ptr_nonnull(l->unit_cost);
    ck_assert_str_eq(l->unit_cost->currency, o->currency);
    return l->unit_cost->amount_minor;
}

static long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the cost price ---- */

START_TEST(cost_is_validated_versioned_idempotent_and_audited)
{
    static fx f;
    fx_start(&f, NULL, 0);
    cm_rpc_status st;
    /* never stocked: NOT_FOUND, nothing recorded */
    ck_assert_int_eq(set_cost(f.ic, "c-0", "sku-c", 100, "CNY", 0, NULL, &st),
                     GRPC_STATUS_NOT_FOUND);
    fx_set_stock(f.ic, "s-c", "sku-c", 10);
    /* bad input names the field and changes nothing */
    ck_assert_int_eq(set_cost(f.ic, "c-1", "sku-c", -1, "CNY", 0, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "unit_cost.amount_minor");
    ck_assert_int_eq(set_cost(f.ic, "c-1", "sku-c", 100, "XXX", 0, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "unit_cost.currency");
    ck_assert_int_eq(set_cost(f.ic, "c-1", "sku-c", 100, NULL, 0, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "unit_cost");
    ck_assert_int_eq(set_cost(f.ic, "c-1", "sku-c", 100, "CNY", -2, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "expected_cost_version");
    Commerce__Inventory__V1__GetCostResponse *g = get_cost(f.ic, "sku-c", &st);
    ck_assert_ptr_nonnull(g);
    ck_assert_int_eq(g->cost->cost_version, 0);
    ck_assert_ptr_null(g->cost->unit_cost);
    ck_assert_uint_eq(g->n_changes, 0);
    protobuf_c_message_free_unpacked(&g->base, NULL);

    /* version 1 */
    Commerce__Inventory__V1__SetCostResponse *r = NULL;
    ck_assert_int_eq(set_cost(f.ic, "c-1", "sku-c", 600, "CNY", 0, &r, &st), 0);
    ck_assert_int_eq(r->cost->cost_version, 1);
    fx_assert_money(r->cost->unit_cost, 600, "CNY");
    ck_assert_ptr_null(r->change->previous_unit_cost);
    ck_assert_str_eq(r->change->request_id, "c-1");
    ck_assert_str_eq(r->change->actor, "ops:test");
    char change1[64];
    snprintf(change1, sizeof change1, "%s", r->change->change_id);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* a retry returns the first result and applies nothing */
    ck_assert_int_eq(set_cost(f.ic, "c-1", "sku-c", 600, "CNY", 0, &r, &st), 0);
    ck_assert_str_eq(r->change->change_id, change1);
    ck_assert_int_eq(r->cost->cost_version, 1);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* the key with another body */
    ck_assert_int_eq(set_cost(f.ic, "c-1", "sku-c", 700, "CNY", 0, NULL, &st),
                     GRPC_STATUS_ALREADY_EXISTS);
    /* compare-and-set */
    ck_assert_int_eq(set_cost(f.ic, "c-2", "sku-c", 700, "CNY", 5, NULL, &st), GRPC_STATUS_ABORTED);
    ck_assert_str_eq(st.reason, "VERSION_MISMATCH");
    ck_assert_int_eq(set_cost(f.ic, "c-3", "sku-c", 700, "CNY", 1, &r, &st), 0);
    ck_assert_int_eq(r->cost->cost_version, 2);
    fx_assert_money(r->change->previous_unit_cost, 600, "CNY");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* the audit trail, newest first */
    g = get_cost(f.ic, "sku-c", &st);
    ck_assert_ptr_nonnull(g);
    fx_assert_money(g->cost->unit_cost, 700, "CNY");
    ck_assert_int_eq(g->cost->cost_version, 2);
    ck_assert_uint_eq(g->n_changes, 2);
    ck_assert_int_eq(g->changes[0]->cost_version, 2);
    ck_assert_str_eq(g->changes[0]->request_id, "c-3");
    fx_assert_money(g->changes[1]->unit_cost, 600, "CNY");
    ck_assert_str_eq(g->changes[1]->change_id, change1);
    protobuf_c_message_free_unpacked(&g->base, NULL);
    /* stock counters are not touched by a cost change */
    fx_assert_level(f.ic, "sku-c", 10, 0, 0);
    fx_stop(&f);
}
END_TEST

/* ---- orders keep their cost ---- */

START_TEST(orders_keep_the_cost_they_were_created_with)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-a", "sku-a", 100);
    fx_set_stock(f.ic, "s-f", "sku-f", 100);
    fx_set_stock(f.ic, "s-n", "sku-n", 100);
    must_set_cost(f.ic, "c-a1", "sku-a", 600);
    must_set_cost(f.ic, "c-f1", "sku-f", 90);
    Commerce__Inventory__V1__FlashSale *fs = NULL;
    ck_assert_int_eq(
        fx_configure_sale_in(f.ic, "fs-1", NULL, "sku-f", -5, 3600, 50, 10, 0, &fs, NULL), 0);
    char sale[64];
    snprintf(sale, sizeof sale, "%s", fs->flash_sale_id);
    protobuf_c_message_free_unpacked(&fs->base, NULL);

    /* before the change: the batch path (sku-a) and the flash path
     * (sku-f) both record the cost; sku-n has none */
    fx_line l1[] = {FX_L("sku-a", 2, 1000), FX_L("sku-n", 1, 300)};
    fx_order *a = fx_must_create(f.oc, &(fx_order_spec){.rid = "o-1",
                                                        .buyer = "buyer-1",
                                                        .merchant = "merchant-1",
                                                        .currency = "CNY",
                                                        .lines = l1,
                                                        .n = 2});
    ck_assert_int_eq(line_cost(a, "sku-a"), 600);
    ck_assert_ptr_null(fx_line_of(a, "sku-n")->unit_cost);
    fx_assert_money(a->cost_amount, 1200, "CNY");
    fx_assert_money(a->gross_margin, 2300 - 1200, "CNY");
    ck_assert(!a->cost_complete);
    fx_line l2[] = {FX_L("sku-f", 1, 80)};
    fx_order_spec s2 = fx_spec("o-2", l2, 1);
    fx_order *b = fx_must_create(f.oc, &s2);
    ck_assert_str_eq(fx_line_of(b, "sku-f")->flash_sale_id, sale);
    ck_assert_int_eq(line_cost(b, "sku-f"), 90);
    fx_assert_money(b->gross_margin, -10, "CNY");
    ck_assert(b->cost_complete);

    /* the cost changes in the middle of the sale */
    must_set_cost(f.ic, "c-a2", "sku-a", 750);
    must_set_cost(f.ic, "c-f2", "sku-f", 95);
    fx_line l3[] = {FX_L("sku-a", 1, 1000)};
    fx_order_spec s3 = fx_spec("o-3", l3, 1);
    fx_order *c = fx_must_create(f.oc, &s3);
    ck_assert_int_eq(line_cost(c, "sku-a"), 750);
    fx_line l4[] = {FX_L("sku-f", 1, 80)};
    fx_order_spec s4 = fx_spec("o-4", l4, 1);
    s4.buyer = "buyer-2";
    fx_order *d = fx_must_create(f.oc, &s4);
    ck_assert_int_eq(line_cost(d, "sku-f"), 95);

    /* the earlier orders still have theirs, paid or not, and a retry of a
     * create answers with the order as created */
    fx_must_pay(f.oc, a, "pay-1");
    fx_order *a2 = fx_must_get(f.oc, a->order_id);
    ck_assert_int_eq(line_cost(a2, "sku-a"), 600);
    fx_assert_money(a2->cost_amount, 1200, "CNY");
    fx_order *b2 = fx_must_create(f.oc, &s2);
    ck_assert_str_eq(b2->order_id, b->order_id);
    ck_assert_int_eq(line_cost(b2, "sku-f"), 90);

    /* OrderCreated and OrderPaid carry the cost */
    fx_settle(&f);
    fx_event e;
    ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, a->order_id, FX_EV_PAID, 0), &e), 0);
    ck_assert_int_eq(line_cost(e.order, "sku-a"), 600);
    fx_assert_money(e.order->gross_margin, 1100, "CNY");
    fx_ev_free(&e);
    ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, d->order_id, FX_EV_CREATED, 0), &e), 0);
    ck_assert_int_eq(line_cost(e.order, "sku-f"), 95);
    fx_ev_free(&e);
    fx_order_free(a);
    fx_order_free(a2);
    fx_order_free(b);
    fx_order_free(b2);
    fx_order_free(c);
    fx_order_free(d);
    fx_stop(&f);
}
END_TEST

/* ---- refunds ---- */

static Commerce__Order__V1__RefundOrderResponse *must_refund(cm_rpc_client *c,
                                                             const fx_refund_spec *s)
{
    Commerce__Order__V1__RefundOrderResponse *r = NULL;
    cm_rpc_status st;
    int code = fx_refund_order(c, s, &r, &st);
    ck_assert_msg(code == 0, "RefundOrder %s: %d %s %s", s->refund_id, code, st.reason, st.message);
    return r;
}

START_TEST(refunds_reverse_cost_pro_rata_and_exactly_in_full)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-r", "sku-r", 10);
    fx_set_stock(f.ic, "s-q", "sku-q", 10);
    must_set_cost(f.ic, "c-r", "sku-r", 33);
    must_set_cost(f.ic, "c-q", "sku-q", 7);
    fx_line ls[] = {FX_L("sku-r", 3, 100), FX_L("sku-q", 2, 50)};
    fx_order_spec s = fx_spec("o-r", ls, 2);
    fx_order *o = fx_must_create(f.oc, &s);
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    fx_assert_money(o->cost_amount, 99 + 14, "CNY");
    fx_must_pay(f.oc, o, "pay-r");
    fx_order_free(o);

    /* one unit of sku-r: its cost, 33 */
    fx_line r1l[] = {FX_RL("sku-r", 1)};
    fx_refund_spec r1 = {
        .refund_id = "rf-1", .order_id = id, .scope = FX_SCOPE(LINES), .lines = r1l, .n = 1};
    Commerce__Order__V1__RefundOrderResponse *r = must_refund(f.oc, &r1);
    fx_assert_money(r->refund->cost_reversed, 33, "CNY");
    fx_assert_money(fx_refund_line_of(r->refund, "sku-r")->cost_reversed, 33, "CNY");
    fx_assert_money(r->order->cost_reversed, 33, "CNY");
    fx_assert_money(r->order->gross_margin, (400 - 100) - (113 - 33), "CNY");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* an amount of 101 spread 67/34 over what is left (200, 100):
     * sku-r reverses floor(99*167/300)-33 = 22, sku-q floor(14*34/100) = 4 */
    fx_refund_spec r2 = {.refund_id = "rf-2",
                         .order_id = id,
                         .scope = FX_SCOPE(AMOUNT),
                         .has_amount = 1,
                         .amount = 101};
    r = must_refund(f.oc, &r2);
    int64_t ra = fx_refund_line_of(r->refund, "sku-r")->amount->amount_minor;
    int64_t qa = fx_refund_line_of(r->refund, "sku-q")->amount->amount_minor;
    ck_assert_int_eq(ra + qa, 101);
    int64_t want = (99 * (100 + ra)) / 300 - 33 + (14 * qa) / 100;
    fx_assert_money(r->refund->cost_reversed, want, "CNY");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* a retry of the refund reverses nothing more */
    r = must_refund(f.oc, &r2);
    fx_assert_money(r->order->cost_reversed, 33 + want, "CNY");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* the rest: every cost is reversed, to the unit */
    fx_refund_spec r3 = {.refund_id = "rf-3", .order_id = id, .scope = FX_SCOPE(FULL)};
    r = must_refund(f.oc, &r3);
    fx_assert_money(r->refund->cost_reversed, 113 - 33 - want, "CNY");
    fx_assert_money(r->order->cost_reversed, 113, "CNY");
    fx_assert_money(r->order->gross_margin, 0, "CNY");
    fx_assert_money(fx_line_of(r->order, "sku-r")->cost_reversed, 99, "CNY");
    fx_assert_money(fx_line_of(r->order, "sku-q")->cost_reversed, 14, "CNY");
    ck_assert_int_eq(r->order->state, FX_ST(REFUNDED));
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* the events carry each refund's reversal */
    fx_settle(&f);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_REFUNDED, NULL), 3);
    int64_t sum = 0;
    for (int i = 0; i < 3; i++) {
        fx_event e;
        ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, id, FX_EV_REFUNDED, i), &e), 0);
        sum += fx_minor_or_0(e.refund->cost_reversed);
        fx_ev_free(&e);
    }
    ck_assert_int_eq(sum, 113);
    fx_stop(&f);
}
END_TEST

/* ---- the query and the metrics ---- */

START_TEST(query_margin_by_tenant_sku_flash_sale_and_time)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-a", "sku-a", 100);
    fx_set_stock(f.ic, "s-f", "sku-f", 100);
    must_set_cost(f.ic, "c-a", "sku-a", 600);
    must_set_cost(f.ic, "c-f", "sku-f", 100);
    Commerce__Inventory__V1__FlashSale *fs = NULL;
    ck_assert_int_eq(
        fx_configure_sale_in(f.ic, "fs-1", NULL, "sku-f", -5, 3600, 50, 10, 0, &fs, NULL), 0);
    char sale[64];
    snprintf(sale, sizeof sale, "%s", fs->flash_sale_id);
    protobuf_c_message_free_unpacked(&fs->base, NULL);
    cm_rpc_status st;
    Commerce__Order__V1__QueryMarginResponse *q = NULL;
    /* bad input names the field */
    ck_assert_int_eq(query_margin(f.oc, "sku-a", sale, 0, 0, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "flash_sale_id");
    ck_assert_int_eq(query_margin(f.oc, "bad sku", NULL, 0, 0, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "sku");
    ck_assert_int_eq(query_margin(f.oc, NULL, NULL, 2000, 1000, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "paid.end_at");
    /* nothing paid yet */
    q = must_margin(f.oc, NULL, NULL, 0, 0);
    ck_assert_uint_eq(q->n_margins, 0);
    protobuf_c_message_free_unpacked(&q->base, NULL);

    long long t0 = wall_ms();
    /* a regular order (2 x 1000 at cost 600) and one under cost from the
     * sale (1 x 80 at cost 100), both paid; one unpaid order not counted */
    fx_line l1[] = {FX_L("sku-a", 2, 1000)};
    fx_order_spec s1 = fx_spec("o-1", l1, 1);
    fx_order *o1 = fx_must_create(f.oc, &s1);
    fx_must_pay(f.oc, o1, "pay-1");
    fx_line l2[] = {FX_L("sku-f", 1, 80), FX_L("sku-a", 1, 1000)};
    fx_order_spec s2 = fx_spec("o-2", l2, 2);
    fx_order *o2 = fx_must_create(f.oc, &s2);
    fx_must_pay(f.oc, o2, "pay-2");
    fx_line l3[] = {FX_L("sku-a", 5, 1000)};
    fx_order_spec s3 = fx_spec("o-3", l3, 1);
    s3.timeout_s = 600;
    fx_order *o3 = fx_must_create(f.oc, &s3);
    long long t1 = wall_ms() + 1;

    /* the tenant: revenue 3080, cost 1900: margin 1180, 3831 bps */
    q = must_margin(f.oc, NULL, NULL, 0, 0);
    ck_summary(q, 2, 3080, 0, 1900, 0, 1180 * 10000 / 3080);
    protobuf_c_message_free_unpacked(&q->base, NULL);
    /* one sku over both orders */
    q = must_margin(f.oc, "sku-a", NULL, 0, 0);
    ck_summary(q, 2, 3000, 0, 1800, 0, 4000);
    protobuf_c_message_free_unpacked(&q->base, NULL);
    /* the flash sale: sold under cost, -20 %, rounded down */
    q = must_margin(f.oc, NULL, sale, 0, 0);
    ck_summary(q, 1, 80, 0, 100, 0, -2500);
    protobuf_c_message_free_unpacked(&q->base, NULL);
    /* by time: the range holds both, a range before them holds nothing */
    q = must_margin(f.oc, NULL, NULL, t0 - 1000, t1 + 1000);
    ck_assert_uint_eq(q->n_margins, 1);
    protobuf_c_message_free_unpacked(&q->base, NULL);
    q = must_margin(f.oc, NULL, NULL, t0 - 60000, t0 - 30000);
    ck_assert_uint_eq(q->n_margins, 0);
    protobuf_c_message_free_unpacked(&q->base, NULL);
    /* a refund of the sale's unit takes its revenue and cost back */
    fx_line rl[] = {FX_RL("sku-f", 1)};
    fx_refund_spec r = {.refund_id = "rf-1",
                        .order_id = o2->order_id,
                        .scope = FX_SCOPE(LINES),
                        .lines = rl,
                        .n = 1};
    protobuf_c_message_free_unpacked(&must_refund(f.oc, &r)->base, NULL);
    q = must_margin(f.oc, NULL, sale, 0, 0);
    ck_summary(q, 1, 80, 80, 100, 100, 0);
    protobuf_c_message_free_unpacked(&q->base, NULL);

    /* /metrics: the counters by tenant, currency and sale */
    const hs_proc *p = &f.ord;
    ck_assert_int_eq((long long)hs_metric(p, "order_revenue_minor_total{tenant=\"" FX_TENANT
                                             "\",currency=\"CNY\",sale=\"regular\"}"),
                     2000);
    ck_assert_int_eq((long long)hs_metric(p, "order_revenue_minor_total{tenant=\"" FX_TENANT
                                             "\",currency=\"CNY\",sale=\"flash\"}"),
                     1080);
    ck_assert_int_eq((long long)hs_metric(p, "order_cost_minor_total{tenant=\"" FX_TENANT
                                             "\",currency=\"CNY\",sale=\"flash\"}"),
                     700);
    ck_assert_int_eq((long long)hs_metric(p, "order_refunded_minor_total{tenant=\"" FX_TENANT
                                             "\",currency=\"CNY\",sale=\"flash\"}"),
                     80);
    ck_assert_int_eq((long long)hs_metric(p, "order_cost_reversed_minor_total{tenant=\"" FX_TENANT
                                             "\",currency=\"CNY\",sale=\"flash\"}"),
                     100);
    ck_assert_int_eq((long long)hs_metric(p, "order_margin_orders_total{tenant=\"" FX_TENANT
                                             "\",currency=\"CNY\",sale=\"flash\"}"),
                     1);
    /* o-2 as a whole kept a margin (1080 - 700): not a negative one */
    ck_assert_int_eq((long long)hs_metric(p,
                                          "order_negative_margin_orders_total{tenant=\"" FX_TENANT
                                          "\",currency=\"CNY\",sale=\"flash\"}"),
                     0);
    /* a retried payment counts nothing again */
    fx_must_pay(f.oc, o1, "pay-1");
    ck_assert_int_eq((long long)hs_metric(p, "order_revenue_minor_total{tenant=\"" FX_TENANT
                                             "\",currency=\"CNY\",sale=\"regular\"}"),
                     2000);
    fx_order_free(o1);
    fx_order_free(o2);
    fx_order_free(o3);
    fx_stop(&f);
}
END_TEST

/* ---- who may see and set costs ---- */

#define SECRET "0123456789abcdef0123456789abcdef-margin-test"

START_TEST(cost_and_margin_calls_require_the_admin_role)
{
    static fx f;
    const char *inv_env[] = {"INVENTORY_SWEEP_MS=100", "WORKERS=8", "AUTH_MODE=required",
                             "JWT_HS256_SECRET=" SECRET, NULL};
    fx_start_opts(&f, &(fx_opts){.inventory_env = inv_env, .no_topic = 1});
    char *clerk = hs_bearer(SECRET, FX_TENANT, "clerk-7", "support", 300);
    char *admin = hs_bearer(SECRET, FX_TENANT, "admin-1", "admin", 300);
    cm_rpc_md mc[] = {{"authorization", clerk}}, ma[] = {{"authorization", admin}};
    fx_set_stock_md(f.ic, "s-1", "sku-1", 5, ma);
    Commerce__Inventory__V1__SetCostRequest q = COMMERCE__INVENTORY__V1__SET_COST_REQUEST__INIT;
    Commerce__Common__V1__Money m = COMMERCE__COMMON__V1__MONEY__INIT;
    m.amount_minor = 100;
    m.currency = "CNY";
    q.request_id = "c-1";
    q.sku = "sku-1";
    q.unit_cost = &m;
    q.reason = "supplier price list";
    q.actor = "ops:test";
    cm_rpc_status st;
    ck_assert_int_eq(hs_call(f.ic, FX_ISVC "SetCost", &q.base,
                             &commerce__inventory__v1__set_cost_response__descriptor, NULL, &st, mc,
                             1),
                     GRPC_STATUS_PERMISSION_DENIED);
    ck_assert_str_eq(st.reason, "ROLE_REQUIRED");
    Commerce__Inventory__V1__GetCostRequest g = COMMERCE__INVENTORY__V1__GET_COST_REQUEST__INIT;
    g.sku = "sku-1";
    ck_assert_int_eq(hs_call(f.ic, FX_ISVC "GetCost", &g.base,
                             &commerce__inventory__v1__get_cost_response__descriptor, NULL, &st, mc,
                             1),
                     GRPC_STATUS_PERMISSION_DENIED);
    ck_assert_str_eq(st.reason, "ROLE_REQUIRED");
    /* the refused call changed nothing: the admin's is version 1 */
    Commerce__Inventory__V1__SetCostResponse *r = NULL;
    ck_assert_int_eq(hs_call(f.ic, FX_ISVC "SetCost", &q.base,
                             &commerce__inventory__v1__set_cost_response__descriptor,
                             (ProtobufCMessage **)&r, &st, ma, 1),
                     0);
    ck_assert_int_eq(r->cost->cost_version, 1);
    ck_assert_str_eq(r->change->principal, "admin-1");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    hs_proc o;
    const char *ord_env[] = {"AUTH_MODE=required", "JWT_HS256_SECRET=" SECRET, NULL};
    fx_spawn_order(&f, &o, ord_env);
    cm_rpc_client *oc = hs_client(&o, NULL);
    Commerce__Order__V1__QueryMarginRequest mq = COMMERCE__ORDER__V1__QUERY_MARGIN_REQUEST__INIT;
    ck_assert_int_eq(hs_call(oc, FX_OSVC "QueryMargin", &mq.base,
                             &commerce__order__v1__query_margin_response__descriptor, NULL, &st, mc,
                             1),
                     GRPC_STATUS_PERMISSION_DENIED);
    ck_assert_str_eq(st.reason, "ROLE_REQUIRED");
    ck_assert_int_eq(hs_call(oc, FX_OSVC "QueryMargin", &mq.base,
                             &commerce__order__v1__query_margin_response__descriptor, NULL, &st, ma,
                             1),
                     0);
    cm_rpc_client_free(oc);
    ck_assert_int_eq(hs_stop(&o, SIGTERM, 30000), 0);
    free(clerk);
    free(admin);
    fx_stop(&f);
}
END_TEST

/* ---- the alert, from a real run ---- */

#define SCRAPES 30
#define MAX_SERIES 64

typedef struct series {
    char name[512];
    long long v[SCRAPES + 1];
    int have[SCRAPES + 1];
} series;

static const char *const margin_metrics[] = {
    "order_revenue_minor_total",
    "order_refunded_minor_total",
    "order_cost_minor_total",
    "order_cost_reversed_minor_total",
    "order_margin_orders_total",
    "order_negative_margin_orders_total",
    "order_flash_sale_revenue_minor_total",
    "order_flash_sale_refunded_minor_total",
    "order_flash_sale_cost_minor_total",
    "order_flash_sale_cost_reversed_minor_total",
};

/* every sample of the margin metrics in a /metrics body, as scrape k,
 * with the job label Prometheus would add */
static void take_samples(const char *body, int k, series *ss, size_t *n)
{
    const char *line = body;
    while (line && *line) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        for (size_t m = 0; m < sizeof margin_metrics / sizeof margin_metrics[0]; m++) {
            size_t ml = strlen(margin_metrics[m]);
            if (len <= ml || strncmp(line, margin_metrics[m], ml) != 0 || line[ml] != '{')
                continue;
            const char *sp = memchr(line, ' ', len);
            ck_assert_ptr_nonnull(sp);
            char name[512];
            snprintf(name, sizeof name, "%.*s{job=\"commerce-order\",%.*s", (int)ml, line,
                     (int)(sp - line - ml - 1), line + ml + 1);
            size_t i = 0;
            while (i < *n && strcmp(ss[i].name, name) != 0)
                i++;
            if (i == *n) {
                ck_assert_uint_lt(*n, MAX_SERIES);
                memset(&ss[i], 0, sizeof ss[i]);
                snprintf(ss[i].name, sizeof ss[i].name, "%s", name);
                (*n)++;
            }
            ss[i].v[k] = atoll(sp + 1);
            ss[i].have[k] = 1;
        }
        line = end ? end + 1 : NULL;
    }
}

static const char alert_tests[] =
    "    alert_rule_test:\n"
    "      # the flash sale is sold under cost: its margin ratio is far below\n"
    "      # the default threshold (5 %) for more than 10 minutes\n"
    "      - eval_time: 28m\n"
    "        alertname: CommerceGrossMarginLow\n"
    "        exp_alerts:\n"
    "          - exp_labels:\n"
    "              severity: warning\n"
    "              tenant: " FX_TENANT "\n"
    "              currency: CNY\n"
    "              sale: flash\n"
    "            exp_annotations:\n"
    "              summary: \"" FX_TENANT ": gross margin of flash sales (CNY) under the "
    "tenant's threshold\"\n"
    "              runbook: >-\n"
    "                look for a mispriced flash sale, a coupon gone wrong or a cost change\n"
    "                not passed on: QueryMargin by flash_sale_id and sku, GetCost's audit\n"
    "                trail; pause the sale (ConfigureFlashSale) or fix the price.\n"
    "      # every flash order loses money\n"
    "      - eval_time: 28m\n"
    "        alertname: CommerceNegativeMarginOrders\n"
    "        exp_alerts:\n"
    "          - exp_labels:\n"
    "              severity: warning\n"
    "              tenant: " FX_TENANT "\n"
    "              currency: CNY\n"
    "              sale: flash\n"
    "            exp_annotations:\n"
    "              summary: \"" FX_TENANT ": orders sold under cost (flash, CNY)\"\n"
    "              runbook: >-\n"
    "                more than 1 % of the paid orders have a negative gross margin: find\n"
    "                them with ListOrders and Order.gross_margin, then check the sale's\n"
    "                price against GetCost.\n"
    "      # nothing before the sale has run long enough\n"
    "      - eval_time: 5m\n"
    "        alertname: CommerceGrossMarginLow\n"
    "        exp_alerts: []\n";

static const char *promtool_path(void)
{
    static char buf[512];
    const char *e = getenv("PROMTOOL");
    if (e && *e)
        return e;
    const char *home = getenv("HOME");
    snprintf(buf, sizeof buf, "%s/.cache/commerce/promtool-v0.316.0/promtool", home ? home : "");
    return access(buf, X_OK) == 0 ? buf : NULL;
}

START_TEST(flash_sale_under_cost_trips_the_alert_rule)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-a", "sku-a", 1000);
    fx_set_stock(f.ic, "s-f", "sku-f", 1000);
    must_set_cost(f.ic, "c-a", "sku-a", 500);
    must_set_cost(f.ic, "c-f", "sku-f", 100);
    Commerce__Inventory__V1__FlashSale *fs = NULL;
    ck_assert_int_eq(
        fx_configure_sale_in(f.ic, "fs-1", NULL, "sku-f", -5, 3600, 500, 5, 0, &fs, NULL), 0);
    char sale_id[40];
    snprintf(sale_id, sizeof sale_id, "%s", fs->flash_sale_id);
    protobuf_c_message_free_unpacked(&fs->base, NULL);
    static series ss[MAX_SERIES];
    size_t n = 0;
    static char body[1 << 20];
    /* one scrape per step of the run, read as one sample a minute: each
     * step sells a flash unit at 80 (cost 100) and a regular one at 1000
     * (cost 500, a healthy 50 %) */
    for (int k = 0; k <= SCRAPES; k++) {
        if (k > 0) {
            char rid[32], pid[32], buyer[32];
            fx_line lf[] = {FX_L("sku-f", 1, 80)};
            snprintf(rid, sizeof rid, "of-%d", k);
            snprintf(buyer, sizeof buyer, "buyer-%d", k);
            fx_order_spec sf = fx_spec(rid, lf, 1);
            sf.buyer = buyer;
            fx_order *o = fx_must_create(f.oc, &sf);
            snprintf(pid, sizeof pid, "pf-%d", k);
            fx_must_pay(f.oc, o, pid);
            fx_order_free(o);
            fx_line lr[] = {FX_L("sku-a", 1, 1000)};
            snprintf(rid, sizeof rid, "or-%d", k);
            fx_order_spec sr = fx_spec(rid, lr, 1);
            o = fx_must_create(f.oc, &sr);
            snprintf(pid, sizeof pid, "pr-%d", k);
            fx_must_pay(f.oc, o, pid);
            fx_order_free(o);
        }
        ck_assert_int_eq(hs_http_get(f.ord.admin_port, "/metrics", body, sizeof body), 200);
        take_samples(body, k, ss, &n);
    }
    /* both sales' series, each of the six metrics, and the zero series
     * the families start with (tenant _other, currency XXX), which no
     * alert may pick up */
    ck_assert_uint_eq(n, 26); /* and the sale's four, and their zero series */

    const char *out = getenv("MARGIN_ALERT_TEST_OUT");
    char path[512], dir[256] = "";
    if (out && *out) {
        snprintf(path, sizeof path, "%s", out);
    } else {
        snprintf(dir, sizeof dir, "/tmp/commerce-margin-alert-%d", (int)getpid());
        ck_assert_int_eq(mkdir(dir, 0700), 0);
        snprintf(path, sizeof path, "%s/margin-alert.test.yaml", dir);
    }
    FILE *fp = fopen(path, "w");
    ck_assert_ptr_nonnull(fp);
    fprintf(fp,
            "# generated by tests/integration/test_order_margin.c "
            "(flash_sale_under_cost_trips_the_alert_rule):\n"
            "# the order service's /metrics scraped %d times during a real run (a flash\n"
            "# sale priced under cost beside a regular sale), each scrape read as one\n"
            "# sample a minute. regenerate with MARGIN_ALERT_TEST_OUT=<this file>.\n"
            "rule_files:\n  - %s\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n"
            "    input_series:\n",
            SCRAPES + 1,
            out && *out ? "../commerce/files/prometheus-rules.yaml"
                        : SOURCE_DIR "/k8s/commerce/files/prometheus-rules.yaml");
    for (size_t i = 0; i < n; i++) {
        fprintf(fp, "      - series: '%s'\n        values: \"", ss[i].name);
        for (int k = 0; k <= SCRAPES; k++) {
            if (ss[i].have[k])
                fprintf(fp, "%s%lld", k ? " " : "", ss[i].v[k]);
            else
                fprintf(fp, "%s_", k ? " " : "");
        }
        fprintf(fp, "\"\n");
    }
    fputs(alert_tests, fp);
    /* the sale's own ratio, recorded per flash_sale, is below 0 */
    fprintf(fp,
            "      # the sale itself sells under cost (its own series)\n"
            "      - eval_time: 28m\n"
            "        alertname: CommerceFlashSaleUnderCost\n"
            "        exp_alerts:\n"
            "          - exp_labels:\n"
            "              severity: warning\n"
            "              tenant: " FX_TENANT "\n"
            "              currency: CNY\n"
            "              flash_sale: %s\n"
            "            exp_annotations:\n"
            "              summary: \"" FX_TENANT ": flash sale %s sells under cost (CNY)\"\n"
            "              runbook: >-\n"
            "                the sale's paid lines over the last 15 minutes cost more than they\n"
            "                brought in: check its price against GetCost (QueryMargin with this\n"
            "                flash_sale_id gives the whole sale), then pause it with\n"
            "                ConfigureFlashSale or fix the price.\n"
            "      - eval_time: 3m\n"
            "        alertname: CommerceFlashSaleUnderCost\n"
            "        exp_alerts: []\n",
            sale_id, sale_id);
    ck_assert_int_eq(fclose(fp), 0);

    const char *promtool = promtool_path();
    if (!promtool) {
        fprintf(stderr,
                "test_order_margin: promtool not found (PROMTOOL, or ~/.cache/commerce: "
                "scripts/k8s-check.sh --tools-only builds it): %s written, not run\n",
                path);
    } else {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "'%s' test rules '%s'", promtool, path);
        int rc = system(cmd);
        ck_assert_msg(rc == 0, "promtool test rules %s failed (%d)", path, rc);
    }
    if (dir[0] && promtool) {
        unlink(path);
        rmdir(dir);
    }
    fx_stop(&f);
}
END_TEST

int main(void)
{
    const TTest *const tests[] = {
        cost_is_validated_versioned_idempotent_and_audited,
        orders_keep_the_cost_they_were_created_with,
        refunds_reverse_cost_pro_rata_and_exactly_in_full,
        query_margin_by_tenant_sku_flash_sale_and_time,
        cost_and_margin_calls_require_the_admin_role,
        flash_sale_under_cost_trips_the_alert_rule,
    };
    return fx_run("order_margin", tests, sizeof tests / sizeof tests[0]);
}
