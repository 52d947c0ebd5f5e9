/*
 * commerce-order when things break (fixture.h): the database ends its
 * connections, kill -9 between Reserve and commit, inventory down or slow,
 * and a timed-out attempt racing its own retry.
 */
#include "fixture.h"

#include <grpc/status.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the database ends the service's connections ---- */

START_TEST(create_survives_lost_database_connections)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-db", "sku-db", 100);
    fx_line l[] = {FX_L("sku-db", 1, 100)};
    char id[4][64];
    fx_create_pending(f.oc, "req-db-a", l, 2, id); /* the batch statement is prepared */
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
             "WHERE application_name = 'commerce-%s'",
             f.ord_schema);
    ck_assert_int_gt(hs_sql_long(f.ord_schema, sql), 0);
    /* reads first: each worker finds its connection ended on its next
     * query and runs the read again on a new one: none fails */
    for (int i = 0; i < 32; i++) {
        fx_order *o = NULL;
        cm_rpc_status st;
        int code = fx_get_order_md(f.oc, id[i % 2], &o, &st, fx_md);
        ck_assert_msg(code == 0, "read %d after the connections ended: %d %s", i, code, st.message);
        fx_order_free(o);
    }
    ck_assert_int_gt(hs_sql_long(f.ord_schema, sql), 0);
    /* the next creates run on new connections, each on its first try (the
     * client does not retry) */
    fx_create_pending(f.oc, "req-db-b", l, 2, id + 2);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(fx_state_of(f.oc, id[i]), FX_ST(PENDING_PAYMENT));
    fx_assert_level(f.ic, "sku-db", 96, 4, 0);
    fx_settle(&f);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(fx_ev_count(f.log, id[i], FX_EV_CREATED, NULL), 1);
    fx_stop(&f);
}
END_TEST

/* ---- kill -9 between the reservation and the order's commit ---- */

typedef struct bg_create {
    cm_rpc_client *c;
    fx_order_spec s;
    fx_line l;
    int code;
} bg_create;

static void *bg_create_main(void *arg)
{
    bg_create *b = arg;
    cm_rpc_status st;
    b->s.lines = &b->l;
    b->code = fx_create(b->c, &b->s, NULL, &st);
    return NULL;
}

/* starts a create in the background and kills the order service once
 * inventory holds the stock (the service is then inside its pause); the
 * create's client sees the connection die */
static void kill_after_reserve(fx *f, bg_create *b, const char *sku, int64_t reserved_then)
{
    pthread_t t;
    cm_rpc_client *c = hs_client(&f->ord, NULL);
    b->c = c;
    pthread_create(&t, NULL, bg_create_main, b);
    long long until = hs_now_ms() + 15000;
    while (fx_get_level(f->ic, sku).reserved < reserved_then && hs_now_ms() < until)
        usleep(20000);
    ck_assert_int_eq(fx_get_level(f->ic, sku).reserved, reserved_then);
    kill(f->ord.pid, SIGKILL);
    hs_stop(&f->ord, SIGKILL, 5000);
    pthread_join(t, NULL);
    ck_assert_int_ne(b->code, 0);
    cm_rpc_client_free(c);
}

START_TEST(kill_9_between_reserve_and_commit_leaks_nothing)
{
    /* the pause opens the window; the 1 s default timeout and 2 s margin
     * make an orphaned reservation expire 3 s after it was made */
    const char *env[] = {"ORDER_DEBUG_PAUSE_AFTER_RESERVE_MS=2000", "ORDER_PAYMENT_TIMEOUT_S=1",
                         NULL};
    static fx f;
    fx_start(&f, env, 0);
    fx_set_stock(f.ic, "s-k1", "sku-k1", 10);
    fx_set_stock(f.ic, "s-k2", "sku-k2", 10);

    /* 1: killed, never retried: the reservation's ttl gives the stock back */
    bg_create b1 = {.s = fx_spec("req-k-1", NULL, 1), .l = FX_L("sku-k1", 2, 300)};
    b1.s.buyer = "buyer-k1";
    kill_after_reserve(&f, &b1, "sku-k1", 2);
    long long killed_at = hs_now_ms();
    fx_respawn_order(&f);
    fx_wait_level(f.ic, "sku-k1", 10, 0, 0);
    fprintf(stderr, "kill -9: orphaned stock back %lld ms after the kill\n",
            hs_now_ms() - killed_at);
    ck_assert_uint_eq(fx_stock_changes(f.ic, "sku-k1", FX_KIND(EXPIRE), NULL, 0), 1);
    Commerce__Order__V1__ListOrdersRequest q = COMMERCE__ORDER__V1__LIST_ORDERS_REQUEST__INIT;
    q.buyer_id = "buyer-k1";
    char ids[64][64];
    ck_assert_uint_eq(fx_list_all(f.oc, &q, ids, 64, NULL, NULL), 0);

    /* 2: killed, then retried with the same request_id: the order is made
     * with the reservation already held, nothing reserved twice */
    bg_create b2 = {.s = fx_spec("req-k-2", NULL, 1), .l = FX_L("sku-k2", 2, 300)};
    b2.s.buyer = "buyer-k2";
    b2.s.timeout_s = 600;
    kill_after_reserve(&f, &b2, "sku-k2", 2);
    fx_respawn_order(&f);
    b2.s.lines = &b2.l;
    fx_order *o = fx_must_create(f.oc, &b2.s);
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    ck_assert_int_eq(o->state, FX_ST(PENDING_PAYMENT));
    fx_order_free(o);
    fx_assert_level(f.ic, "sku-k2", 8, 2, 0);
    char reserved_for[64];
    ck_assert_uint_eq(
        fx_stock_changes(f.ic, "sku-k2", FX_KIND(RESERVE), reserved_for, sizeof reserved_for), 1);
    ck_assert_str_eq(reserved_for, id);

    /* 3: killed, then the tenant's payment timeout changes before the
     * retry: the retry asks for another ttl, inventory refuses the id as
     * "another body", and the create carries on with the reservation the
     * first attempt made instead of holding the stock a second time */
    fx_set_stock(f.ic, "s-k3", "sku-k3", 10);
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO tenant_settings (tenant_id, payment_timeout_s, flash_payment_timeout_s) "
             "VALUES ('%s', 600, 60) RETURNING 1",
             FX_TENANT);
    ck_assert_int_eq(hs_sql_long(f.ord_schema, sql), 1);
    hs_stop(&f.ord, SIGTERM, 10000); /* a fresh tenant cache */
    fx_respawn_order(&f);
    bg_create b3 = {.s = fx_spec("req-k-3", NULL, 1), .l = FX_L("sku-k3", 2, 300)};
    b3.s.buyer = "buyer-k3";
    kill_after_reserve(&f, &b3, "sku-k3", 2);
    snprintf(sql, sizeof sql,
             "UPDATE tenant_settings SET payment_timeout_s = 900 WHERE tenant_id = '%s' "
             "RETURNING 1",
             FX_TENANT);
    ck_assert_int_eq(hs_sql_long(f.ord_schema, sql), 1);
    fx_respawn_order(&f);
    b3.s.lines = &b3.l;
    o = fx_must_create(f.oc, &b3.s);
    char id3[64];
    snprintf(id3, sizeof id3, "%s", o->order_id);
    ck_assert_int_eq(o->state, FX_ST(PENDING_PAYMENT));
    /* the deadline ends before the first attempt's reservation (600 s +
     * the 2 s margin, made before this create), not 900 s from now */
    long long dl = fx_ts_ms(o->payment_deadline) - fx_ts_ms(o->created_at);
    ck_assert_msg(dl > 590000 && dl <= 600000, "deadline %lld ms after creation", dl);
    fx_order_free(o);
    fx_assert_level(f.ic, "sku-k3", 8, 2, 0);
    ck_assert_uint_eq(
        fx_stock_changes(f.ic, "sku-k3", FX_KIND(RESERVE), reserved_for, sizeof reserved_for), 1);
    ck_assert_str_eq(reserved_for, id3);
    char body[65536];
    ck_assert_int_eq(hs_http_get(f.ord.admin_port, "/metrics", body, sizeof body), 200);
    ck_assert(hs_metric_in(body, "order_reservations_continued_total") == 1);

    /* no order without its event, exactly one each */
    fx_settle(&f);
    size_t n = fx_all_orders(f.oc, ids, 64);
    ck_assert_uint_eq(n, 2);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(fx_ev_count(f.log, ids[i], FX_EV_CREATED, NULL), 1);
    size_t created = 0;
    for (size_t i = 0; i < hs_topic_count(f.log); i++)
        if (strcmp(hs_topic_at(f.log, i)->type, FX_EV_CREATED) == 0 &&
            !fx_has_id(ids, n, hs_topic_at(f.log, i)->key))
            created++;
    ck_assert_msg(created == 0, "%zu OrderCreated events for orders that do not exist", created);
    /* and the held stock still goes back through the saga */
    fx_order *cur = fx_must_get(f.oc, id);
    fx_must_pay(f.oc, cur, "pay-k-2");
    fx_order_free(cur);
    fx_wait_level(f.ic, "sku-k2", 8, 0, 2);
    ck_assert_int_eq(fx_violations(f.ic, NULL), 0);
    fx_stop(&f);
}
END_TEST

/* ---- inventory down or slow ---- */

START_TEST(inventory_down_or_slow_fails_fast_and_leaves_nothing)
{
    const char *env[] = {"ORDER_INVENTORY_TIMEOUT_MS=1000", NULL};
    static fx f;
    fx_start(&f, env, 1);
    fx_set_stock(f.ic, "s-d", "sku-d", 10);
    fx_set_stock(f.ic, "s-s", "sku-s", 10);
    fx_line ld[] = {FX_L("sku-d", 1, 100)};
    fx_order_spec s = fx_spec("req-d-0", ld, 1);
    s.buyer = "buyer-d";
    s.timeout_s = 600;
    fx_order_free(fx_must_create(f.oc, &s));
    fx_assert_level(f.ic, "sku-d", 9, 1, 0);

    /* down: the connection cut, new ones refused */
    hs_proxy_cut(f.proxy);
    s.rid = "req-d-1";
    cm_rpc_status st;
    long long t0 = hs_now_ms();
    int code = fx_create(f.oc, &s, NULL, &st);
    long long took = hs_now_ms() - t0;
    ck_assert_msg(code == GRPC_STATUS_UNAVAILABLE, "inventory down: code %d %s", code, st.message);
    ck_assert_str_eq(st.reason, "DEPENDENCY_UNAVAILABLE");
    ck_assert_msg(took < 1000 + 2000, "inventory down: the create took %lld ms", took);
    fprintf(stderr, "inventory down: UNAVAILABLE after %lld ms\n", took);
    Commerce__Order__V1__ListOrdersRequest q = COMMERCE__ORDER__V1__LIST_ORDERS_REQUEST__INIT;
    q.buyer_id = "buyer-d";
    char ids[8][64];
    ck_assert_uint_eq(fx_list_all(f.oc, &q, ids, 8, NULL, NULL), 1);

    /* back: the same request_id goes through */
    hs_proxy_restore(f.proxy);
    long long until = hs_now_ms() + 15000;
    fx_order *o = NULL;
    while ((code = fx_create(f.oc, &s, &o, &st)) != 0 && hs_now_ms() < until)
        usleep(200000);
    ck_assert_msg(code == 0, "after the restore: %d %s", code, st.message);
    fx_order_free(o);
    fx_assert_level(f.ic, "sku-d", 8, 2, 0);
    ck_assert_uint_eq(fx_list_all(f.oc, &q, ids, 8, NULL, NULL), 2);

    /* slow: inventory stopped mid-flight. the reservation's ttl would be
     * 10 min: the stock must come back because the service gave it up,
     * not because it expired */
    fx_line ls[] = {FX_L("sku-s", 3, 100)};
    fx_order_spec slow = fx_spec("req-s-1", ls, 1);
    slow.buyer = "buyer-s";
    slow.timeout_s = 600;
    kill(f.inv.pid, SIGSTOP);
    t0 = hs_now_ms();
    code = fx_create(f.oc, &slow, NULL, &st);
    took = hs_now_ms() - t0;
    kill(f.inv.pid, SIGCONT);
    ck_assert_msg(code == GRPC_STATUS_UNAVAILABLE, "inventory slow: code %d %s", code, st.message);
    ck_assert_str_eq(st.reason, "DEPENDENCY_UNAVAILABLE");
    ck_assert_msg(took < 1000 + 2000, "inventory slow: the create took %lld ms", took);
    fprintf(stderr, "inventory slow: UNAVAILABLE after %lld ms\n", took);
    fx_wait_level(f.ic, "sku-s", 10, 0, 0);
    q.buyer_id = "buyer-s";
    ck_assert_uint_eq(fx_list_all(f.oc, &q, ids, 8, NULL, NULL), 0);
    /* inventory answers again: the same request goes through, reserved once */
    until = hs_now_ms() + 15000;
    while ((code = fx_create(f.oc, &slow, &o, &st)) != 0 && hs_now_ms() < until)
        usleep(200000);
    ck_assert_msg(code == 0, "after the slow inventory: %d %s %s", code, st.reason, st.message);
    ck_assert_int_eq(o->state, FX_ST(PENDING_PAYMENT));
    fx_order_free(o);
    fx_assert_level(f.ic, "sku-s", 7, 3, 0);
    ck_assert_uint_eq(fx_list_all(f.oc, &q, ids, 8, NULL, NULL), 1);

    fx_settle(&f);
    size_t n = fx_all_orders(f.oc, ids, 8);
    ck_assert_uint_eq(n, 3);
    for (size_t i = 0; i < hs_topic_count(f.log); i++)
        ck_assert(fx_has_id(ids, n, hs_topic_at(f.log, i)->key));
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(fx_ev_count(f.log, ids[i], FX_EV_CREATED, NULL), 1);
    ck_assert_int_eq(fx_violations(f.ic, NULL), 0);
    fx_stop(&f);
}
END_TEST

/* ---- a timed-out attempt and a concurrent retry share one reservation ---- */

START_TEST(a_timed_out_attempt_never_releases_its_retrys_stock)
{
    /* replica a calls inventory through the proxy, replica b directly */
    const char *env[] = {"ORDER_INVENTORY_TIMEOUT_MS=1000", NULL};
    static fx f;
    fx_start(&f, env, 1);
    hs_proxy *px = f.proxy;
    f.proxy = NULL;
    hs_proc b;
    /* b stores its order 1.5 s after its Reserve: after a gave up */
    const char *b_env[] = {"ORDER_INVENTORY_TIMEOUT_MS=1000",
                           "ORDER_DEBUG_PAUSE_AFTER_RESERVE_MS=1500", NULL};
    fx_spawn_order(&f, &b, b_env);
    f.proxy = px;
    cm_rpc_client *bc = hs_client(&b, NULL);
    fx_set_stock(f.ic, "s-r", "sku-r", 10);
    fx_line warm[] = {FX_L("sku-r", 1, 100)};
    fx_order_spec w = fx_spec("req-r-0", warm, 1);
    fx_order_free(fx_must_create(f.oc, &w)); /* a's connection to inventory is up */
    fx_assert_level(f.ic, "sku-r", 9, 1, 0);

    /* a's Reserve reaches inventory, its answer is held back: a gives up
     * after 1 s and asks for a release of that order id ... */
    hs_proxy_hold_replies(f.proxy, 1);
    bg_create a = {.s = fx_spec("req-r-1", NULL, 1), .l = FX_L("sku-r", 2, 100)};
    a.s.buyer = "buyer-r";
    a.s.timeout_s = 600;
    pthread_t t;
    a.c = f.oc;
    pthread_create(&t, NULL, bg_create_main, &a);
    long long until = hs_now_ms() + 10000;
    while (fx_get_level(f.ic, "sku-r").reserved < 3 && hs_now_ms() < until)
        usleep(10000);
    /* ... while the caller's retry, through b, finds that reservation and
     * stores the order on it, after a found no order and asked for the
     * release */
    fx_order_spec retry = a.s;
    retry.lines = &a.l;
    fx_order *o = fx_must_create(bc, &retry);
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    fx_order_free(o);
    pthread_join(t, NULL);
    ck_assert_int_eq(a.code, GRPC_STATUS_UNAVAILABLE);
    hs_proxy_hold_replies(f.proxy, 0);

    /* a's release is due 2 s after a gave up; by then it finds b's order
     * and is not sent: the stock stays held for it (sent at once, as
     * before, it released the stock under b's order) */
    long long check_until = hs_now_ms() + 4500;
    while (hs_now_ms() < check_until) {
        fx_level l = fx_get_level(f.ic, "sku-r");
        ck_assert_msg(l.reserved == 3, "reserved %lld: the retry's stock was released",
                      (long long)l.reserved);
        usleep(200000);
    }
    ck_assert_uint_eq(fx_stock_changes(f.ic, "sku-r", FX_KIND(RELEASE), NULL, 0), 0);
    char body[65536];
    ck_assert_int_eq(hs_http_get(f.ord.admin_port, "/metrics", body, sizeof body), 200);
    ck_assert(hs_metric_in(body, "order_releases_skipped_total") == 1);
    /* and the order goes through the saga on that stock */
    fx_order *cur = fx_must_get(f.oc, id);
    fx_must_pay(f.oc, cur, "pay-r-1");
    fx_order_free(cur);
    fx_wait_level(f.ic, "sku-r", 7, 1, 2);
    cm_rpc_client_free(bc);
    ck_assert_int_eq(hs_stop(&b, SIGTERM, 30000), 0);
    fx_stop(&f);
}
END_TEST

int main(void)
{
    const TTest *const tests[] = {
        create_survives_lost_database_connections,
        kill_9_between_reserve_and_commit_leaks_nothing,
        inventory_down_or_slow_fails_fast_and_leaves_nothing,
        a_timed_out_attempt_never_releases_its_retrys_stock,
    };
    return fx_run("order_faults", tests, sizeof tests / sizeof tests[0]);
}
