/*
 * commerce-order's payment notifications (fixture.h): duplicated and out of
 * order, MarkPaid racing the payment-timeout sweeper, and two replicas'
 * sweepers cancelling each unpaid order exactly once.
 */
#include "fixture.h"

#include <grpc/status.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- payment notifications ---- */

static void sleep_until_real(long long ms)
{
    long long d = ms - hs_real_ms();
    if (d > 0)
        usleep((useconds_t)(d * 1000));
}

START_TEST(payment_notifications_duplicated_and_out_of_order)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-p", "sku-p", 100);
    fx_line ls[] = {FX_L("sku-p", 1, 4999)};
    char id[3][64];
    fx_create_pending(f.oc, "req-p", ls, 3, id);
    cm_rpc_status st;
    fx_order *o = NULL;
    fx_pay_spec p1 = {.payment_id = "pay-1", .order_id = id[0], .amount = 4999, .reference = "r1"};
    ck_assert_int_eq(fx_mark_paid(f.oc, &p1, &o, &st), 0);
    ck_assert_int_eq(o->state, FX_ST(PAID));
    long long recorded = fx_ts_ms(o->payment->recorded_at);
    fx_order_free(o);
    /* the gateway repeats itself: the same result */
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(fx_mark_paid(f.oc, &p1, &o, &st), 0);
        ck_assert_int_eq(o->state, FX_ST(PAID));
        ck_assert_str_eq(o->payment->payment_id, "pay-1");
        ck_assert_int_eq(fx_ts_ms(o->payment->recorded_at), recorded);
        fx_order_free(o);
    }
    /* the same payment id with another body */
    fx_pay_spec p1b = p1;
    p1b.reference = "r1-other";
    ck_assert_int_eq(fx_mark_paid(f.oc, &p1b, NULL, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");
    /* the same payment id for another order */
    fx_pay_spec p1c = p1;
    p1c.order_id = id[1];
    ck_assert_int_eq(fx_mark_paid(f.oc, &p1c, NULL, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_int_eq(fx_state_of(f.oc, id[1]), FX_ST(PENDING_PAYMENT));
    /* a second, different payment for the paid order: refused, recorded,
     * nothing changes */
    fx_pay_spec p2 = {
        .payment_id = "pay-2", .order_id = id[0], .amount = 4999, .provider = "stripe"};
    ck_assert_int_eq(fx_mark_paid(f.oc, &p2, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    o = fx_must_get(f.oc, id[0]);
    ck_assert_int_eq(o->state, FX_ST(PAID));
    ck_assert_str_eq(o->payment->payment_id, "pay-1");
    ck_assert_str_eq(o->payment->provider, "alipay");
    fx_order_free(o);
    ck_assert_int_eq(hs_sql_long(f.ord_schema, "SELECT count(*) FROM payment_rejections"), 1);
    /* the refused payment's id for a pending order: a reused key (the
     * order's lock statement finds the rejection), the order still unpaid */
    fx_pay_spec p2b = p2;
    p2b.order_id = id[1];
    ck_assert_int_eq(fx_mark_paid(f.oc, &p2b, NULL, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");
    ck_assert_int_eq(fx_state_of(f.oc, id[1]), FX_ST(PENDING_PAYMENT));

    /* amount and currency must be the order total */
    fx_pay_spec bad = {.payment_id = "pay-3", .order_id = id[1], .amount = 4998};
    ck_assert_int_eq(fx_mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "AMOUNT_MISMATCH");
    bad.amount = 4999;
    bad.currency = "USD";
    ck_assert_int_eq(fx_mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "CURRENCY_MISMATCH");
    bad.currency = NULL;
    bad.provider = "";
    ck_assert_int_eq(fx_mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "provider");
    bad.provider = NULL;
    bad.paid_at_ms = hs_real_ms() + 3600 * 1000;
    ck_assert_int_eq(fx_mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "paid_at");
    bad.paid_at_ms = 0;
    bad.payment_id = "bad payment id!";
    ck_assert_int_eq(fx_mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "payment_id");
    bad.payment_id = "pay-3";
    bad.order_id = "0190a8e0-0000-7000-8000-0000000000cc";
    ck_assert_int_eq(fx_mark_paid(f.oc, &bad, NULL, &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.reason, "RESOURCE_NOT_FOUND");
    ck_assert_int_eq(fx_state_of(f.oc, id[1]), FX_ST(PENDING_PAYMENT));
    /* after those refusals the key is still free for the right body */
    bad.order_id = id[1];
    ck_assert_int_eq(fx_mark_paid(f.oc, &bad, NULL, &st), 0);
    ck_assert_int_eq(fx_state_of(f.oc, id[1]), FX_ST(PAID));

    /* out of order: the payment arrives after the buyer cancelled */
    ck_assert_int_eq(fx_cancel(f.oc, "cx-p", id[2], FX_CANCEL(BUYER_REQUESTED), NULL, NULL, &st),
                     0);
    fx_pay_spec late = {.payment_id = "pay-4", .order_id = id[2], .amount = 4999};
    ck_assert_int_eq(fx_mark_paid(f.oc, &late, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_int_eq(fx_state_of(f.oc, id[2]), FX_ST(CANCELLED));
    ck_assert_int_eq(hs_sql_long(f.ord_schema, "SELECT count(*) FROM payment_rejections"), 2);
    /* and the duplicate of the first payment after shipping: still OK */
    ck_assert_int_eq(fx_ship(f.oc, "ship-p", id[0], NULL, NULL, NULL, &st), 0);
    ck_assert_int_eq(fx_mark_paid(f.oc, &p1, &o, &st), 0);
    ck_assert_int_eq(o->state, FX_ST(SHIPPED));
    fx_order_free(o);
    ck_assert_int_eq(fx_state_of(f.oc, id[0]), FX_ST(SHIPPED));

    fx_wait_level(f.ic, "sku-p", 98, 0, 2);
    fx_settle(&f);
    ck_assert_int_eq(fx_ev_count(f.log, id[0], FX_EV_PAID, NULL), 1);
    ck_assert_int_eq(fx_ev_count(f.log, id[1], FX_EV_PAID, NULL), 1);
    ck_assert_int_eq(fx_ev_count(f.log, id[2], FX_EV_PAID, NULL), 0);
    ck_assert_int_eq(fx_ev_count(f.log, id[2], FX_EV_CANCELLED, NULL), 1);
    fx_event e;
    ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, id[0], FX_EV_PAID, 0), &e), 0);
    ck_assert_str_eq(e.order->payment->payment_id, "pay-1");
    fx_ev_free(&e);
    fx_stop(&f);
}
END_TEST

/* ---- MarkPaid racing the payment-timeout sweeper ---- */

typedef struct racer {
    cm_rpc_client *c;
    int round, index;
    int64_t qty;
    int offset_ms; /* MarkPaid at payment_deadline + offset */
    char id[64];
    int created, outcome; /* 1 paid, 2 refused (cancelled), 3 other */
    char other[512];
} racer;

static void *race_main(void *arg)
{
    racer *r = arg;
    char rid[48], pid[48];
    snprintf(rid, sizeof rid, "req-race-%d-%d", r->round, r->index);
    snprintf(pid, sizeof pid, "pay-race-%d-%d", r->round, r->index);
    fx_line ls[] = {FX_L("sku-r", r->qty, 100)};
    fx_order_spec s = fx_spec(rid, ls, 1);
    fx_order *o = NULL;
    cm_rpc_status st;
    if (fx_create(r->c, &s, &o, &st) != 0) {
        snprintf(r->other, sizeof r->other, "create: %d %s", st.code, st.message);
        r->outcome = 3;
        return NULL;
    }
    r->created = 1;
    snprintf(r->id, sizeof r->id, "%s", o->order_id);
    long long at = fx_ts_ms(o->payment_deadline) + r->offset_ms;
    fx_order_free(o);
    sleep_until_real(at);
    fx_pay_spec p = {.payment_id = pid, .order_id = r->id, .amount = 100 * r->qty};
    for (int attempt = 0; attempt < 5; attempt++) {
        int code = fx_mark_paid(r->c, &p, NULL, &st);
        if (code == 0) {
            r->outcome = 1;
            return NULL;
        }
        if (code == GRPC_STATUS_FAILED_PRECONDITION &&
            strcmp(st.reason, "ILLEGAL_STATE_TRANSITION") == 0) {
            r->outcome = 2;
            return NULL;
        }
        snprintf(r->other, sizeof r->other, "mark paid: %d %s %s", code, st.reason, st.message);
        if (code != GRPC_STATUS_ABORTED && code != GRPC_STATUS_UNAVAILABLE)
            break;
        usleep(20000); /* the contract: retry with the same key */
    }
    r->outcome = 3;
    return NULL;
}

START_TEST(mark_paid_racing_the_timeout_has_one_winner)
{
    const char *env[] = {"ORDER_PAYMENT_TIMEOUT_S=1", "ORDER_SWEEP_MS=50", NULL};
    static fx f;
    fx_start(&f, env, 0);
    const int64_t stock = 1000;
    fx_set_stock(f.ic, "s-r", "sku-r", stock);
    enum { ROUNDS = 4, PER = 10 };
    static racer rs[ROUNDS * PER];
    memset(rs, 0, sizeof rs);
    for (int round = 0; round < ROUNDS; round++) {
        pthread_t t[PER];
        for (int i = 0; i < PER; i++) {
            racer *r = &rs[round * PER + i];
            r->c = f.oc;
            r->round = round;
            r->index = i;
            r->qty = 1 + (i % 3);
            /* from surely in time to surely late, most near the deadline */
            r->offset_ms = -300 + 70 * i + 10 * round;
            pthread_create(&t[i], NULL, race_main, r);
        }
        for (int i = 0; i < PER; i++)
            pthread_join(t[i], NULL);
    }
    int paid = 0, refused = 0;
    int64_t sold = 0;
    for (int i = 0; i < ROUNDS * PER; i++) {
        racer *r = &rs[i];
        ck_assert_msg(r->outcome == 1 || r->outcome == 2, "order %d: %s", i, r->other);
        paid += r->outcome == 1;
        refused += r->outcome == 2;
        if (r->outcome == 1)
            sold += r->qty;
    }
    fprintf(stderr, "race: %d paid, %d cancelled by the timeout\n", paid, refused);
    /* the earliest payments are before the deadline, the latest well after
     * the sweeper ran: both outcomes happen */
    ck_assert_int_gt(paid, 0);
    ck_assert_int_gt(refused, 0);

    /* the sweeper settles what is left; then everything agrees */
    long long until = hs_now_ms() + 20000;
    for (int i = 0; i < ROUNDS * PER; i++) {
        racer *r = &rs[i];
        int s;
        while ((s = fx_state_of(f.oc, r->id)) == FX_ST(PENDING_PAYMENT) && hs_now_ms() < until)
            usleep(50000);
        fx_order *o = fx_must_get(f.oc, r->id);
        if (r->outcome == 1) {
            ck_assert_msg(o->state == FX_ST(PAID), "order %s: MarkPaid OK but state %d", r->id,
                          o->state);
            ck_assert_ptr_nonnull(o->payment);
        } else {
            ck_assert_msg(o->state == FX_ST(CANCELLED), "order %s: MarkPaid refused but state %d",
                          r->id, o->state);
            ck_assert_int_eq(o->cancel_reason, FX_CANCEL(PAYMENT_TIMEOUT));
            ck_assert_ptr_null(o->payment);
        }
        fx_order_free(o);
    }
    ck_assert_int_eq(hs_sql_long(f.ord_schema, "SELECT count(*) FROM payment_rejections"), refused);
    fx_wait_level(f.ic, "sku-r", stock - sold, 0, sold);
    fx_settle(&f);
    for (int i = 0; i < ROUNDS * PER; i++) {
        racer *r = &rs[i];
        ck_assert_int_eq(fx_ev_count(f.log, r->id, FX_EV_CREATED, NULL), 1);
        ck_assert_int_eq(fx_ev_count(f.log, r->id, FX_EV_PAID, NULL), r->outcome == 1);
        ck_assert_int_eq(fx_ev_count(f.log, r->id, FX_EV_CANCELLED, NULL), r->outcome == 2);
    }
    ck_assert_int_eq(fx_violations(f.ic, NULL), 0);
    fx_stop(&f);
}
END_TEST

/* ---- two replicas: each unpaid order is cancelled exactly once ---- */

START_TEST(two_replicas_cancel_each_unpaid_order_once)
{
    const char *env[] = {"ORDER_PAYMENT_TIMEOUT_S=1", "ORDER_SWEEP_MS=50", NULL};
    static fx f;
    fx_start(&f, env, 0);
    /* a second replica on the same schema and topic */
    hs_proc second;
    const char *env2[] = {"ORDER_SWEEP_MS=50", "ORDER_PAYMENT_TIMEOUT_S=1", NULL};
    fx_spawn_order(&f, &second, env2);
    cm_rpc_client *c2 = hs_client(&second, NULL);
    const int64_t stock = 500;
    fx_set_stock(f.ic, "s-2r", "sku-2r", stock);
    enum { N = 60 };
    static char ids[N][64];
    for (int i = 0; i < N; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "req-2r-%d", i);
        fx_line l[] = {FX_L("sku-2r", 1 + i % 3, 100)};
        fx_create_id(i % 2 ? c2 : f.oc,
                     &(fx_order_spec){.rid = rid,
                                      .buyer = "buyer-2r",
                                      .merchant = "merchant-1",
                                      .currency = "CNY",
                                      .lines = l,
                                      .n = 1},
                     ids[i]);
    }
    /* both sweepers run against the same due orders */
    long long until = hs_now_ms() + 20000;
    for (int i = 0; i < N; i++) {
        while (fx_state_of(f.oc, ids[i]) == FX_ST(PENDING_PAYMENT) && hs_now_ms() < until)
            usleep(50000);
        ck_assert_int_eq(fx_state_of(f.oc, ids[i]), FX_ST(CANCELLED));
    }
    fx_wait_level(f.ic, "sku-2r", stock, 0, 0);
    /* both replicas' relays publish (one leads); then exactly one cancel each */
    fx_settle(&f);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(fx_ev_count(f.log, ids[i], FX_EV_CREATED, NULL), 1);
        ck_assert_int_eq(fx_ev_count(f.log, ids[i], FX_EV_CANCELLED, NULL), 1);
    }
    /* and each replica's sweeper did part of the work, or one did all: the
     * sum of their counters is the number of orders */
    char body[65536];
    long total = 0;
    const hs_proc *ps[] = {&f.ord, &second};
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(hs_http_get(ps[k]->admin_port, "/metrics", body, sizeof body), 200);
        double m = hs_metric_in(body, "order_payment_timeouts_total");
        if (m >= 0)
            total += (long)m;
    }
    ck_assert_int_eq(total, N);
    ck_assert_int_eq(fx_violations(f.ic, NULL), 0);
    cm_rpc_client_free(c2);
    ck_assert_int_eq(hs_stop(&second, SIGTERM, 30000), 0);
    fx_stop(&f);
}
END_TEST

int main(void)
{
    const TTest *const tests[] = {
        payment_notifications_duplicated_and_out_of_order,
        mark_paid_racing_the_timeout_has_one_winner,
        two_replicas_cancel_each_unpaid_order_once,
    };
    return fx_run("order_payments", tests, sizeof tests / sizeof tests[0]);
}
