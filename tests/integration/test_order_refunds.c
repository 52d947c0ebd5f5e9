/*
 * commerce-order's refunds (fixture.h): by lines and by amount, then the
 * rest; and concurrent changes of one order serialised, none lost.
 */
#include "fixture.h"

#include <grpc/status.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- refunds ---- */

static Commerce__Order__V1__RefundOrderResponse *must_refund(cm_rpc_client *c,
                                                             const fx_refund_spec *s)
{
    Commerce__Order__V1__RefundOrderResponse *r = NULL;
    cm_rpc_status st;
    int code = fx_refund_order(c, s, &r, &st);
    ck_assert_msg(code == 0, "RefundOrder %s: %d %s field %s: %s", s->refund_id, code, st.reason,
                  st.field, st.message);
    ck_assert_ptr_nonnull(r->order);
    ck_assert_ptr_nonnull(r->refund);
    ck_assert_str_eq(r->refund->refund_id, s->refund_id);
    ck_assert_int_eq(r->refund->scope, s->scope);
    /* the parts sum to the whole */
    int64_t sum = 0;
    for (size_t i = 0; i < r->refund->n_lines; i++)
        sum += r->refund->lines[i]->amount->amount_minor;
    ck_assert_int_eq(sum, r->refund->amount->amount_minor);
    ck_assert_uint_ge(r->order->n_refunds, 1);
    ck_assert_str_eq(r->order->refunds[r->order->n_refunds - 1]->refund_id, s->refund_id);
    return r;
}

static int64_t refunded_on(const Commerce__Order__V1__RefundOrderResponse *r, const char *sku)
{
    const Commerce__Order__V1__RefundLine *l = fx_refund_line_of(r->refund, sku);
    return l ? l->amount->amount_minor : 0;
}

START_TEST(refunds_by_lines_and_amount_then_the_rest)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-a", "sku-a", 10);
    fx_set_stock(f.ic, "s-b", "sku-b", 10);
    fx_line ls[] = {FX_L("sku-a", 3, 1000), FX_L("sku-b", 2, 2501)};
    fx_order_spec s = fx_spec("req-r-1", ls, 2);
    s.timeout_s = 600;
    fx_order *o = fx_must_create(f.oc, &s);
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    fx_assert_money(o->total_amount, 8002, "CNY");
    cm_rpc_status st;
    /* not paid yet: nothing to refund */
    fx_refund_spec full = {.refund_id = "rf-early", .order_id = id, .scope = FX_SCOPE(FULL)};
    ck_assert_int_eq(fx_refund_order(f.oc, &full, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    fx_must_pay(f.oc, o, "pay-r-1");
    fx_order_free(o);
    fx_wait_level(f.ic, "sku-a", 7, 0, 3);

    /* 1: one unit of sku-a at its price */
    fx_line r1l[] = {FX_RL("sku-a", 1)};
    fx_refund_spec r1 = {
        .refund_id = "rf-1", .order_id = id, .scope = FX_SCOPE(LINES), .lines = r1l, .n = 1};
    Commerce__Order__V1__RefundOrderResponse *r = must_refund(f.oc, &r1);
    fx_assert_money(r->refund->amount, 1000, "CNY");
    ck_assert_uint_eq(r->refund->n_lines, 1);
    ck_assert_str_eq(r->refund->lines[0]->sku, "sku-a");
    ck_assert_int_eq(r->refund->lines[0]->quantity, 1);
    ck_assert_int_eq(r->order->state, FX_ST(PARTIALLY_REFUNDED));
    fx_assert_money(r->order->refunded_amount, 1000, "CNY");
    ck_assert_int_eq(fx_line_of(r->order, "sku-a")->refunded_quantity, 1);
    ck_assert_int_eq(fx_minor_or_0(fx_line_of(r->order, "sku-a")->refunded_amount), 1000);
    ck_assert_int_eq(fx_minor_or_0(fx_line_of(r->order, "sku-b")->refunded_amount), 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* its retry is the same refund, applied once */
    r = must_refund(f.oc, &r1);
    fx_assert_money(r->refund->amount, 1000, "CNY");
    fx_assert_money(r->order->refunded_amount, 1000, "CNY");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    fx_line r1other[] = {FX_RL("sku-a", 2)};
    fx_refund_spec r1b = r1;
    r1b.lines = r1other;
    ck_assert_int_eq(fx_refund_order(f.oc, &r1b, NULL, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");

    /* 2: 30.01 spread pro rata over what is left (20.00 and 50.02),
     * largest remainder: 857.18 -> 857, 2143.82 -> 2144 */
    fx_refund_spec r2 = {.refund_id = "rf-2",
                         .order_id = id,
                         .scope = FX_SCOPE(AMOUNT),
                         .has_amount = 1,
                         .amount = 3001};
    r = must_refund(f.oc, &r2);
    fx_assert_money(r->refund->amount, 3001, "CNY");
    ck_assert_int_eq(refunded_on(r, "sku-a"), 857);
    ck_assert_int_eq(refunded_on(r, "sku-b"), 2144);
    for (size_t i = 0; i < r->refund->n_lines; i++)
        ck_assert_int_eq(r->refund->lines[i]->quantity, 0);
    fx_assert_money(r->order->refunded_amount, 4001, "CNY");
    ck_assert_int_eq(fx_line_of(r->order, "sku-a")->refunded_quantity, 1);
    ck_assert_int_eq(fx_line_of(r->order, "sku-b")->refunded_quantity, 0);
    ck_assert_int_eq(fx_minor_or_0(fx_line_of(r->order, "sku-a")->refunded_amount), 1857);
    ck_assert_int_eq(fx_minor_or_0(fx_line_of(r->order, "sku-b")->refunded_amount), 2144);
    ck_assert_int_eq(r->order->state, FX_ST(PARTIALLY_REFUNDED));
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* a partially refunded order is still shipped and completed */
    ck_assert_int_eq(fx_ship(f.oc, "ship-r", id, "ems", "E1", &o, &st), 0);
    ck_assert_int_eq(o->state, FX_ST(PARTIALLY_REFUNDED));
    ck_assert_ptr_nonnull(o->shipment);
    fx_order_free(o);
    ck_assert_int_eq(fx_complete(f.oc, "done-r", id, &o, &st), 0);
    ck_assert_int_eq(o->state, FX_ST(PARTIALLY_REFUNDED));
    ck_assert_ptr_nonnull(o->completed_at);
    fx_order_free(o);

    /* more than is left: in total, on a line by amount, on a line by units */
    fx_refund_spec over = {.refund_id = "rf-over-1",
                           .order_id = id,
                           .scope = FX_SCOPE(AMOUNT),
                           .has_amount = 1,
                           .amount = 4002};
    ck_assert_int_eq(fx_refund_order(f.oc, &over, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "REFUND_EXCEEDS_REFUNDABLE");
    fx_line b2[] = {FX_RL("sku-b", 2)};
    fx_refund_spec over2 = {
        .refund_id = "rf-over-2", .order_id = id, .scope = FX_SCOPE(LINES), .lines = b2, .n = 1};
    ck_assert_int_eq(fx_refund_order(f.oc, &over2, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "REFUND_EXCEEDS_REFUNDABLE");
    fx_line a3[] = {FX_RL("sku-a", 3)};
    fx_refund_spec over3 = {
        .refund_id = "rf-over-3", .order_id = id, .scope = FX_SCOPE(LINES), .lines = a3, .n = 1};
    ck_assert_int_eq(fx_refund_order(f.oc, &over3, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "REFUND_EXCEEDS_REFUNDABLE");
    o = fx_must_get(f.oc, id);
    fx_assert_money(o->refunded_amount, 4001, "CNY");
    ck_assert_uint_eq(o->n_refunds, 2);
    fx_order_free(o);

    /* 3: one unit of sku-b (25.01 of the 28.58 left on it) */
    fx_line b1[] = {FX_RL("sku-b", 1)};
    fx_refund_spec r3 = {
        .refund_id = "rf-3", .order_id = id, .scope = FX_SCOPE(LINES), .lines = b1, .n = 1};
    r = must_refund(f.oc, &r3);
    fx_assert_money(r->refund->amount, 2501, "CNY");
    fx_assert_money(r->order->refunded_amount, 6502, "CNY");
    ck_assert_int_eq(r->order->state, FX_ST(PARTIALLY_REFUNDED));
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* 4: the rest */
    fx_refund_spec r4 = {.refund_id = "rf-4", .order_id = id, .scope = FX_SCOPE(FULL)};
    r = must_refund(f.oc, &r4);
    fx_assert_money(r->refund->amount, 1500, "CNY");
    ck_assert_int_eq(refunded_on(r, "sku-a"), 1143);
    ck_assert_int_eq(refunded_on(r, "sku-b"), 357);
    ck_assert_int_eq(r->order->state, FX_ST(REFUNDED));
    fx_assert_money(r->order->refunded_amount, 8002, "CNY");
    for (size_t i = 0; i < r->order->n_lines; i++)
        ck_assert_int_eq(fx_minor_or_0(r->order->lines[i]->refunded_amount),
                         r->order->lines[i]->line_total->amount_minor);
    ck_assert_uint_eq(r->order->n_refunds, 4);
    int64_t sum = 0;
    const char *want[] = {"rf-1", "rf-2", "rf-3", "rf-4"};
    for (size_t i = 0; i < 4; i++) {
        ck_assert_str_eq(r->order->refunds[i]->refund_id, want[i]);
        sum += r->order->refunds[i]->amount->amount_minor;
    }
    ck_assert_int_eq(sum, 8002);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* REFUNDED is final */
    fx_refund_spec r5 = {.refund_id = "rf-5", .order_id = id, .scope = FX_SCOPE(FULL)};
    ck_assert_int_eq(fx_refund_order(f.oc, &r5, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_int_eq(fx_complete(f.oc, "done-r2", id, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    /* stock is not returned by a refund */
    fx_assert_level(f.ic, "sku-a", 7, 0, 3);
    fx_assert_level(f.ic, "sku-b", 8, 0, 2);

    /* bad refund requests name their field; on a second paid order */
    o = fx_must_create(f.oc, &(fx_order_spec){.rid = "req-r-2",
                                              .buyer = "buyer-1",
                                              .merchant = "merchant-1",
                                              .currency = "CNY",
                                              .lines = ls,
                                              .n = 2,
                                              .timeout_s = 600});
    char id2[64];
    snprintf(id2, sizeof id2, "%s", o->order_id);
    fx_must_pay(f.oc, o, "pay-r-2");
    fx_order_free(o);
    fx_refund_spec bad = {.refund_id = "rf-bad", .order_id = id2};
    ck_assert_int_eq(fx_refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "scope");
    bad.scope = FX_SCOPE(LINES);
    ck_assert_int_eq(fx_refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "lines");
    fx_line unknown[] = {FX_RL("sku-zz", 1)};
    bad.lines = unknown;
    bad.n = 1;
    ck_assert_int_eq(fx_refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "lines[0].sku");
    fx_line dup[] = {FX_RL("sku-a", 1), FX_RL("sku-a", 1)};
    bad.lines = dup;
    bad.n = 2;
    ck_assert_int_eq(fx_refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "lines[1].sku");
    fx_line zero[] = {FX_RL("sku-a", 0)};
    bad.lines = zero;
    bad.n = 1;
    ck_assert_int_eq(fx_refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "lines[0].quantity");
    bad.scope = FX_SCOPE(AMOUNT);
    bad.n = 0;
    ck_assert_int_eq(fx_refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "amount");
    bad.has_amount = 1;
    bad.amount = 0;
    ck_assert_int_eq(fx_refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "amount");
    bad.amount = -5;
    ck_assert_int_eq(fx_refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "amount");
    bad.amount = 100;
    bad.currency = "USD";
    ck_assert_int_eq(fx_refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "CURRENCY_MISMATCH");
    bad.currency = NULL;
    bad.scope = FX_SCOPE(FULL);
    ck_assert_int_eq(fx_refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "amount");
    bad.has_amount = 0;
    bad.lines = r1l;
    bad.n = 1;
    ck_assert_int_eq(fx_refund_order(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "lines");
    /* a refund id belongs to one order */
    ck_assert_int_eq(fx_refund_order(f.oc,
                                     &(fx_refund_spec){.refund_id = "rf-1",
                                                       .order_id = id2,
                                                       .scope = FX_SCOPE(LINES),
                                                       .lines = r1l,
                                                       .n = 1},
                                     NULL, &st),
                     GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_int_eq(
        fx_refund_order(f.oc,
                        &(fx_refund_spec){.refund_id = "rf-nf",
                                          .order_id = "0190a8e0-0000-7000-8000-0000000000bb",
                                          .scope = FX_SCOPE(FULL)},
                        NULL, &st),
        GRPC_STATUS_NOT_FOUND);
    o = fx_must_get(f.oc, id2);
    ck_assert_int_eq(o->state, FX_ST(PAID));
    ck_assert_uint_eq(o->n_refunds, 0);
    ck_assert_int_eq(fx_minor_or_0(o->refunded_amount), 0);
    fx_order_free(o);

    /* the events: one OrderRefunded per refund, each carrying its refund */
    fx_settle(&f);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_REFUNDED, NULL), 4);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_SHIPPED, NULL), 1);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_COMPLETED, NULL), 1);
    ck_assert_int_eq(fx_ev_count(f.log, id2, FX_EV_REFUNDED, NULL), 0);
    const int64_t amounts[] = {1000, 3001, 2501, 1500};
    const int prevs[] = {FX_ST(PAID), FX_ST(PARTIALLY_REFUNDED), FX_ST(PARTIALLY_REFUNDED),
                         FX_ST(PARTIALLY_REFUNDED)};
    int64_t total = 0;
    for (int i = 0; i < 4; i++) {
        fx_event e;
        ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, id, FX_EV_REFUNDED, i), &e), 0);
        ck_assert_str_eq(e.refund->refund_id, want[i]);
        fx_assert_money(e.refund->amount, amounts[i], "CNY");
        ck_assert_int_eq(e.prev, prevs[i]);
        total += amounts[i];
        fx_assert_money(e.order->refunded_amount, total, "CNY");
        ck_assert_int_eq(e.order->state, i == 3 ? FX_ST(REFUNDED) : FX_ST(PARTIALLY_REFUNDED));
        fx_ev_free(&e);
    }
    fx_stop(&f);
}
END_TEST

/* ---- concurrent changes of one order are serialised ---- */

typedef struct refunder {
    cm_rpc_client *c;
    const char *order_id;
    int index;
    int code;
    char reason[64];
} refunder;

static void *refund_main(void *arg)
{
    refunder *r = arg;
    char rid[32];
    snprintf(rid, sizeof rid, "rf-cc-%d", r->index);
    fx_refund_spec s = {.refund_id = rid,
                        .order_id = r->order_id,
                        .scope = FX_SCOPE(AMOUNT),
                        .has_amount = 1,
                        .amount = 1000};
    cm_rpc_status st;
    for (int attempt = 0; attempt < 5; attempt++) {
        r->code = fx_refund_order(r->c, &s, NULL, &st);
        if (r->code != GRPC_STATUS_ABORTED)
            break;
        usleep(20000); /* CONCURRENT_MODIFICATION: retry with the same key */
    }
    snprintf(r->reason, sizeof r->reason, "%s", st.reason);
    return NULL;
}

typedef struct shipper {
    cm_rpc_client *c;
    const char *order_id;
    int index;
    int code;
} shipper;

static void *ship_main(void *arg)
{
    shipper *sh = arg;
    char rid[32], tracking[32];
    snprintf(rid, sizeof rid, "ship-cc-%d", sh->index);
    snprintf(tracking, sizeof tracking, "T%d", sh->index);
    cm_rpc_status st;
    for (int attempt = 0; attempt < 5; attempt++) {
        sh->code = fx_ship(sh->c, rid, sh->order_id, "sf", tracking, NULL, &st);
        if (sh->code != GRPC_STATUS_ABORTED)
            break;
        usleep(20000);
    }
    return NULL;
}

START_TEST(concurrent_changes_of_one_order_lose_no_update)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-cc", "sku-cc", 10);
    fx_line ls[] = {FX_L("sku-cc", 4, 2500)};
    fx_order_spec s = fx_spec("req-cc", ls, 1);
    s.timeout_s = 600;
    fx_order *o = fx_must_create(f.oc, &s);
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    fx_must_pay(f.oc, o, "pay-cc");
    fx_order_free(o);

    /* 16 shipments at once, each its own request: exactly one ships */
    enum { N = 16 };
    shipper sh[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        sh[i] = (shipper){.c = f.oc, .order_id = id, .index = i};
        pthread_create(&t[i], NULL, ship_main, &sh[i]);
    }
    int shipped = 0, winner = -1;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        ck_assert_msg(sh[i].code == 0 || sh[i].code == GRPC_STATUS_FAILED_PRECONDITION,
                      "ship %d: code %d", i, sh[i].code);
        if (sh[i].code == 0) {
            shipped++;
            winner = i;
        }
    }
    ck_assert_int_eq(shipped, 1);
    o = fx_must_get(f.oc, id);
    char want[32];
    snprintf(want, sizeof want, "T%d", winner);
    ck_assert_str_eq(o->shipment->tracking_number, want);
    fx_order_free(o);

    /* 16 refunds of 10.00 at once on a 100.00 order: exactly 10 go through */
    refunder rf[N];
    for (int i = 0; i < N; i++) {
        rf[i] = (refunder){.c = f.oc, .order_id = id, .index = i};
        pthread_create(&t[i], NULL, refund_main, &rf[i]);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        if (rf[i].code == 0) {
            ok++;
            continue;
        }
        ck_assert_msg(rf[i].code == GRPC_STATUS_FAILED_PRECONDITION &&
                          (strcmp(rf[i].reason, "REFUND_EXCEEDS_REFUNDABLE") == 0 ||
                           strcmp(rf[i].reason, "ILLEGAL_STATE_TRANSITION") == 0),
                      "refund %d: code %d reason %s", i, rf[i].code, rf[i].reason);
    }
    ck_assert_int_eq(ok, 10);
    o = fx_must_get(f.oc, id);
    ck_assert_int_eq(o->state, FX_ST(REFUNDED));
    fx_assert_money(o->refunded_amount, 10000, "CNY");
    ck_assert_uint_eq(o->n_refunds, 10);
    ck_assert_int_eq(fx_minor_or_0(o->lines[0]->refunded_amount), 10000);
    ck_assert_ptr_nonnull(o->shipment);
    fx_order_free(o);

    fx_settle(&f);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_SHIPPED, NULL), 1);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_REFUNDED, NULL), 10);
    /* each event saw the one before it: refunded amounts step by 10.00 */
    for (int i = 0; i < 10; i++) {
        fx_event e;
        ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, id, FX_EV_REFUNDED, i), &e), 0);
        fx_assert_money(e.order->refunded_amount, 1000 * (i + 1), "CNY");
        fx_ev_free(&e);
    }
    fx_stop(&f);
}
END_TEST

int main(void)
{
    const TTest *const tests[] = {
        refunds_by_lines_and_amount_then_the_rest,
        concurrent_changes_of_one_order_lose_no_update,
    };
    return fx_run("order_refunds", tests, sizeof tests / sizeof tests[0]);
}
