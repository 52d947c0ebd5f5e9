/*
 * the harness's and the fixture's own tests: what every integration test
 * stands on, checked against real processes (commerce-testsvc), the
 * private postgres and the kafka broker. if one of these fails, read it
 * before the failures of the tests built on it.
 */
#include "fixture.h"

#include "cm_kafka.h"
#include "cm_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- processes ---- */

static int bindable(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

START_TEST(free_port_is_bindable_below_the_ephemeral_range_and_not_repeated)
{
    int last = 0;
    for (int i = 0; i < 20; i++) {
        int p = hs_free_port();
        ck_assert_int_ge(p, 20000);
        ck_assert_int_lt(p, 32000);
        ck_assert_int_ne(p, last);
        ck_assert(bindable(p));
        last = p;
    }
}
END_TEST

START_TEST(env_join_keeps_the_order_and_its_bound)
{
    const char *a[] = {"A=1", "B=2", NULL}, *b[] = {"C=3", NULL};
    const char *out[8];
    const char *const *e = hs_env_join(out, 8, a, b);
    ck_assert_ptr_eq(e, out);
    ck_assert_str_eq(e[0], "A=1");
    ck_assert_str_eq(e[2], "C=3");
    ck_assert_ptr_null(e[3]);
    e = hs_env_join(out, 3, a, b); /* room for two and the NULL */
    ck_assert_str_eq(e[1], "B=2");
    ck_assert_ptr_null(e[2]);
    ck_assert_ptr_null(hs_env_join(out, 8, NULL, NULL)[0]);
}
END_TEST

/* the log of a process that printed its environment (env with no args) */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

START_TEST(spawn_sets_the_ports_and_later_entries_win)
{
    hs_proc p;
    const char *env[] = {"HS_TEST=first", "HS_TEST=second", "WORKERS=5", NULL};
    ck_assert_int_eq(hs_spawn(&p, "/usr/bin/env", env), 0);
    ck_assert_int_eq(hs_wait_exit(&p, 10000), 0);
    ck_assert_int_eq(p.pid, 0);
    const char *log = slurp(p.log_path);
    char want[96];
    snprintf(want, sizeof want, "\nGRPC_LISTEN=127.0.0.1:%d\n", p.grpc_port);
    ck_assert_msg(strstr(log, want), "no %s in %s", want, log);
    snprintf(want, sizeof want, "\nADMIN_LISTEN=127.0.0.1:%d\n", p.admin_port);
    ck_assert_msg(strstr(log, want), "no %s in %s", want, log);
    ck_assert_ptr_nonnull(strstr(log, "\nHS_TEST=second\n"));
    ck_assert_ptr_null(strstr(log, "HS_TEST=first"));
    ck_assert_ptr_nonnull(strstr(log, "\nWORKERS=5\n"));
    ck_assert_ptr_null(strstr(log, "WORKERS=2"));
    ck_assert_ptr_nonnull(strstr(log, "\nLOG_LEVEL=warn\n"));
    ck_assert_int_ne(p.grpc_port, p.admin_port);
    unlink(p.log_path);
}
END_TEST

START_TEST(a_service_starts_serves_and_stops_with_its_exit_code)
{
    hs_proc p;
    hs_start(&p, TESTSVC_BIN, NULL);
    ck_assert(hs_alive(&p));
    ck_assert_int_eq(hs_health(&p), 1);
    ck_assert_int_eq(hs_wait_health(&p, 1, 1000), 0);
    ck_assert_int_eq(hs_wait_ready(&p, 5000), 0);
    /* still running: waiting for its exit gives up, and leaves it be */
    ck_assert_int_eq(hs_wait_exit(&p, 200), -1);
    ck_assert(hs_alive(&p));
    ck_assert(hs_metric(&p, "process_resident_memory_bytes") > 0);
    ck_assert(hs_metric(&p, "no_such_metric_total") == -1);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
    ck_assert_int_eq(p.pid, 0);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 1000), -1); /* nothing left to stop */
    ck_assert_int_eq(hs_health(&p), -1);

    /* a signal is 128 + its number; one that is ignored ends in SIGKILL */
    hs_start(&p, TESTSVC_BIN, NULL);
    ck_assert_int_eq(hs_stop(&p, SIGKILL, 5000), 128 + SIGKILL);
    hs_start(&p, TESTSVC_BIN, NULL);
    kill(p.pid, SIGSTOP);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 300), 128 + SIGKILL);
}
END_TEST

START_TEST(a_process_that_dies_is_not_waited_for)
{
    hs_proc p;
    const char *env[] = {"WORKERS=lots", NULL}; /* refused: exits 2 */
    ck_assert_int_eq(hs_spawn(&p, TESTSVC_BIN, env), 0);
    long long t0 = hs_now_ms();
    ck_assert_int_eq(hs_wait_serving(&p, 20000), -1);
    ck_assert_int_lt(hs_now_ms() - t0, 10000);
    ck_assert_int_eq(p.pid, 0); /* reaped */
    ck_assert_int_eq(hs_spawn(&p, TESTSVC_BIN, env), 0);
    ck_assert_int_eq(hs_wait_ready(&p, 20000), -1);
    ck_assert(!hs_alive(&p));
}
END_TEST

START_TEST(teardown_kills_what_a_test_left_running)
{
    hs_proc a, b;
    hs_start(&a, TESTSVC_BIN, NULL);
    hs_start(&b, TESTSVC_BIN, NULL);
    kill(b.pid, SIGSTOP); /* stopped: killed all the same */
    hs_teardown();
    ck_assert_int_eq(kill(a.pid, 0), -1);
    ck_assert_int_eq(errno, ESRCH);
    ck_assert_int_eq(kill(b.pid, 0), -1);
    hs_teardown(); /* nothing left: nothing to do */
    /* what was stopped before is not touched */
    hs_start(&a, TESTSVC_BIN, NULL);
    ck_assert_int_eq(hs_stop(&a, SIGTERM, 30000), 0);
    hs_teardown();
}
END_TEST

typedef struct counter {
    int n, at;
} counter;

static int count_to(void *arg)
{
    counter *c = arg;
    return ++c->n >= c->at;
}

START_TEST(poll_returns_when_done_or_after_the_timeout)
{
    counter c = {0, 3};
    ck_assert_int_eq(hs_poll(count_to, &c, 5000, 1), 0);
    ck_assert_int_eq(c.n, 3);
    c = (counter){0, 1000000};
    long long t0 = hs_now_ms();
    ck_assert_int_eq(hs_poll(count_to, &c, 200, 20), -1);
    long long took = hs_now_ms() - t0;
    ck_assert_int_ge(took, 200);
    ck_assert_int_lt(took, 2000);
    ck_assert_int_gt(c.n, 1);
    ck_assert_int_gt(hs_real_ms(), 1700000000000LL); /* after 2023: the wall clock */
}
END_TEST

START_TEST(metric_in_reads_a_sample_at_a_line_start)
{
    const char *body = "x_total 7\n"
                       "# HELP y_total y_total 5 is not a sample\n"
                       "# TYPE y_total counter\n"
                       "y_total 3\n"
                       "y_total_more 9\n"
                       "z{a=\"b\",c=\"d\"} 4.5\n";
    ck_assert(hs_metric_in(body, "x_total") == 7);
    ck_assert(hs_metric_in(body, "y_total") == 3);
    ck_assert(hs_metric_in(body, "y_total_more") == 9);
    ck_assert(hs_metric_in(body, "z{a=\"b\",c=\"d\"}") == 4.5);
    ck_assert(hs_metric_in(body, "z") == -1);
    ck_assert(hs_metric_in(body, "y") == -1);
    ck_assert(hs_metric_in("", "x_total") == -1);
}
END_TEST

START_TEST(proxy_cuts_and_restores_a_connection)
{
    hs_proc p;
    hs_start(&p, TESTSVC_BIN, NULL);
    hs_proxy *px = hs_proxy_start(p.grpc_port);
    ck_assert_ptr_nonnull(px);
    hs_proc via = p; /* the same service, through the proxy */
    snprintf(via.target, sizeof via.target, "127.0.0.1:%d", hs_proxy_port(px));
    ck_assert_int_eq(hs_health(&via), 1);
    hs_proxy_cut(px);
    ck_assert_int_eq(hs_health(&via), -1);
    ck_assert_int_eq(hs_health(&p), 1);
    hs_proxy_restore(px);
    ck_assert_int_eq(hs_wait_health(&via, 1, 10000), 0);
    hs_proxy_free(px);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
}
END_TEST

START_TEST(certs_are_made_and_removed)
{
    char dir[128], ca[192];
    hs_make_certs(dir, sizeof dir, "hs");
    ck_assert_ptr_nonnull(strstr(dir, "commerce-hs-certs-"));
    const char *files[] = {"ca.pem", "server.pem", "server.key", "client.pem", "client.key"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(ca, sizeof ca, "%s/%s", dir, files[i]);
        ck_assert_msg(access(ca, R_OK) == 0, "%s missing", ca);
    }
    /* a TLS client can be made of them (it connects lazily) */
    hs_proc p = {.target = "127.0.0.1:1"};
    cm_rpc_client_free(hs_client(&p, dir));
    hs_rm_rf(dir);
    ck_assert_int_eq(access(dir, F_OK), -1);
}
END_TEST

/* ---- postgres ---- */

START_TEST(sql_helpers_read_write_and_drop)
{
    char schema[64], sql[256];
    snprintf(schema, sizeof schema, "hs_it_%d", (int)getpid());
    hs_drop_schema(NULL, schema);
    snprintf(sql, sizeof sql, "CREATE SCHEMA %s", schema);
    hs_sql_exec(NULL, sql);
    hs_sql_exec(schema, "CREATE TABLE t (n int)");
    hs_sql_exec(schema, "INSERT INTO t VALUES (1), (2), (NULL)");
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM t"), 3);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT sum(n) FROM t"), 3);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT n FROM t WHERE n IS NULL"), 0);
    long long v = -7;
    ck_assert_int_eq(hs_sql_try_long(schema, "SELECT max(n) FROM t", &v), 0);
    ck_assert_int_eq(v, 2);
    /* a table that is not there, or not one row: -1, v untouched */
    v = -7;
    ck_assert_int_eq(hs_sql_try_long(schema, "SELECT count(*) FROM missing", &v), -1);
    ck_assert_int_eq(hs_sql_try_long(schema, "SELECT n FROM t", &v), -1);
    ck_assert_int_eq(v, -7);
    PGconn *pg = hs_pg_connect(hs_pg_dsn());
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.t WHERE n > 1", schema);
    ck_assert_int_eq(hs_pg_scalar(pg, sql), 1);
    hs_drop_schema(NULL, schema);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM information_schema.schemata WHERE schema_name = '%s'", schema);
    ck_assert_int_eq(hs_pg_scalar(pg, sql), 0);
    hs_drop_schema(NULL, schema); /* again: not there, fine */
    PQfinish(pg);
    ck_assert_int_gt(hs_pg_port(), 0);
}
END_TEST

/* ---- kafka ---- */

static void produce(cm_kafka_producer *kp, const char *topic, const char *key, const char *id,
                    const char *payload)
{
    cm_kafka_header extra[] = {{"x-extra", "yes", 3}};
    cm_kafka_msg m = {.topic = topic,
                      .key = key,
                      .key_len = strlen(key),
                      .payload = payload,
                      .len = strlen(payload),
                      .id = id,
                      .type = "hs.test.v1.Thing",
                      .source = "/hs",
                      .content_type = "text/plain",
                      .tenant_id = "tenant-hs",
                      .headers = extra,
                      .nheaders = 1};
    ck_assert_int_eq(cm_kafka_produce_sync(kp, &m, NULL), 0);
}

START_TEST(topic_is_made_read_from_either_end_and_deleted)
{
    const char *bk = hs_kafka_brokers();
    char topic[96], err[256];
    snprintf(topic, sizeof topic, "hs.it.%d.%lld", (int)getpid(), hs_now_ms());
    hs_kafka_create_topic(bk, topic, 3);
    hs_kafka_create_topic(bk, topic, 3); /* there already: fine */
    cm_kafka_producer *kp;
    ck_assert_int_eq(cm_kafka_producer_new(&kp, bk, "test-harness", NULL, err, sizeof err), 0);
    char key[16], id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof key, "k%d", i % 4);
        snprintf(id, sizeof id, "id-%d", i);
        produce(kp, topic, key, id, "payload");
    }

    /* from the beginning: all ten, each with its headers */
    hs_topic *t = hs_topic_open(bk, topic, 0);
    ck_assert_int_eq(hs_topic_catch_up(t, 30000), 0);
    ck_assert_uint_eq(hs_topic_count(t), 10);
    int seen[10] = {0};
    for (size_t i = 0; i < hs_topic_count(t); i++) {
        const hs_record *r = hs_topic_at(t, i);
        int n = -1;
        ck_assert_int_eq(sscanf(r->id, "id-%d", &n), 1);
        ck_assert(n >= 0 && n < 10);
        seen[n]++;
        snprintf(key, sizeof key, "k%d", n % 4);
        ck_assert_str_eq(r->key, key);
        ck_assert_str_eq(r->type, "hs.test.v1.Thing");
        ck_assert_str_eq(r->source, "/hs");
        ck_assert_str_eq(r->tenant, "tenant-hs");
        ck_assert_str_eq(r->content_type, "text/plain");
        ck_assert_uint_eq(r->len, 7);
        ck_assert_str_eq((const char *)r->payload, "payload");
        ck_assert_str_eq(hs_record_header(r, "x-extra"), "yes");
        ck_assert_str_eq(hs_record_header(r, "ce_id"), r->id);
        ck_assert_ptr_null(hs_record_header(r, "no-such-header"));
        ck_assert(r->partition >= 0 && r->partition < 3);
    }
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(seen[i], 1);
    /* nothing more to read: no record, after the timeout */
    ck_assert_ptr_null(hs_topic_next(t, 300));
    ck_assert_int_eq(hs_topic_catch_up(t, 1000), 0);

    /* from the end: only what comes after */
    hs_topic *end = hs_topic_open(bk, topic, 1);
    ck_assert_ptr_null(hs_topic_next(end, 300));
    produce(kp, topic, "k-new", "id-new", "");
    const hs_record *r = hs_topic_next(end, 30000);
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r->id, "id-new");
    ck_assert_uint_eq(r->len, 0);
    ck_assert_str_eq((const char *)r->payload, "");
    ck_assert_ptr_eq(hs_topic_at(end, 0), r);
    ck_assert_uint_eq(hs_topic_count(end), 1);
    /* the first reader gets it too, after the ten it kept */
    ck_assert_uint_eq(hs_topic_read(t, 11, 30000), 11);
    ck_assert_str_eq(hs_topic_at(t, 10)->id, "id-new");
    ck_assert_uint_eq(hs_topic_read(t, 12, 300), 11);
    hs_topic_close(end);
    hs_topic_close(t);
    cm_kafka_producer_free(kp, 5000);
    hs_kafka_delete_topic(bk, topic);
}
END_TEST

/* ---- the fixture ---- */

static long schemas_like(const fx *f)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM information_schema.schemata WHERE schema_name IN ('%s', '%s')",
             f->ord_schema, f->inv_schema);
    return (long)hs_sql_long(NULL, sql);
}

START_TEST(fixture_runs_the_saga_and_stop_leaves_nothing)
{
    static fx f;
    fx_start(&f, NULL, 0);
    ck_assert_int_eq(schemas_like(&f), 2);
    ck_assert_ptr_nonnull(f.log);
    ck_assert_int_eq(hs_health(&f.inv), 1);
    ck_assert_int_eq(hs_health(&f.ord), 1);
    /* order reserves at inventory, publishes on the test's topic, and
     * inventory, consuming it, confirms on OrderPaid */
    fx_set_stock(f.ic, "s-fx", "sku-fx", 5);
    fx_line l[] = {FX_L("sku-fx", 2, 150)};
    fx_order *o = fx_must_create(f.oc, &(fx_order_spec){.rid = "req-fx-1",
                                                        .buyer = "buyer-1",
                                                        .merchant = "merchant-1",
                                                        .currency = "CNY",
                                                        .lines = l,
                                                        .n = 1,
                                                        .timeout_s = 600});
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    fx_assert_level(f.ic, "sku-fx", 3, 2, 0);
    fx_must_pay(f.oc, o, "pay-fx-1");
    fx_order_free(o);
    fx_wait_level(f.ic, "sku-fx", 3, 0, 2);
    ck_assert_int_eq(fx_get_level(f.ic, "sku-fx").on_hand, 5);
    ck_assert_int_eq(fx_violations(f.ic, NULL), 0);
    fx_settle(&f);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_CREATED, NULL), 1);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_PAID, NULL), 1);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_CANCELLED, NULL), 0);
    ck_assert_ptr_null(fx_ev_nth(f.log, id, FX_EV_PAID, 1));
    fx_event e;
    ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, id, FX_EV_PAID, 0), &e), 0);
    ck_assert_str_eq(e.order_id, id);
    ck_assert_int_eq(e.prev, FX_ST(PENDING_PAYMENT));
    fx_ev_free(&e);
    ck_assert_int_eq(fx_ev_decode(NULL, &e), -1);

    /* a replica on the same schema and topic, and order respawned */
    hs_proc r;
    fx_spawn_order(&f, &r, NULL);
    ck_assert_int_eq(fx_state_of(f.oc, id), FX_ST(PAID));
    ck_assert_int_eq(hs_stop(&r, SIGTERM, 30000), 0);
    ck_assert_int_eq(hs_stop(&f.ord, SIGKILL, 5000), 128 + SIGKILL);
    fx_respawn_order(&f);
    ck_assert_int_eq(fx_state_of(f.oc, id), FX_ST(PAID));

    fx_stop(&f);
    ck_assert_int_eq(f.ord.pid, 0);
    ck_assert_int_eq(f.inv.pid, 0);
    ck_assert_int_eq(schemas_like(&f), 0);
}
END_TEST

START_TEST(fixture_teardown_kills_the_pair_and_keeps_its_schemas)
{
    static fx f;
    fx_start_opts(&f, &(fx_opts){.tag = "td", .no_topic = 1, .proxy = 1});
    ck_assert_ptr_null(f.log);
    ck_assert_str_eq(f.topic, "");
    ck_assert_ptr_nonnull(strstr(f.ord_schema, "_td_"));
    pid_t ord = f.ord.pid, inv = f.inv.pid;
    /* what a test that failed before fx_stop leaves to the teardown */
    fx_teardown();
    ck_assert_int_eq(kill(ord, 0), -1);
    ck_assert_int_eq(kill(inv, 0), -1);
    ck_assert_ptr_null(f.proxy);
    ck_assert_int_eq(schemas_like(&f), 2);
    fx_teardown(); /* nothing left: nothing to do */
    cm_rpc_client_free(f.oc);
    cm_rpc_client_free(f.ic);
    hs_drop_schema(NULL, f.ord_schema);
    hs_drop_schema(NULL, f.inv_schema);
}
END_TEST

START_TEST(fixture_field_and_money_helpers)
{
    cm_rpc_status st = {0};
    snprintf(st.field, sizeof st.field, "lines[0].unit_price.amount_minor");
    ck_assert(fx_field_is(&st, "lines[0].unit_price"));
    ck_assert(fx_field_is(&st, "lines"));
    ck_assert(!fx_field_is(&st, "lines[0].unit"));
    ck_assert(!fx_field_is(&st, "lines[1]"));
    Google__Protobuf__Timestamp t = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    t.seconds = 12;
    t.nanos = 345678901;
    ck_assert_int_eq(fx_ts_ms(&t), 12345);
    ck_assert_int_eq(fx_ts_ms(NULL), -1);
    ck_assert_int_eq(fx_minor_or_0(NULL), 0);
    fx_order_spec s = fx_spec("r", NULL, 0);
    ck_assert_str_eq(s.currency, "CNY");
    ck_assert_str_eq(s.buyer, "buyer-1");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("harness");
    TCase *t = tcase_create("harness");
    tcase_set_timeout(t, 120);
    tcase_add_checked_fixture(t, NULL, fx_teardown);
    tcase_add_test(t, free_port_is_bindable_below_the_ephemeral_range_and_not_repeated);
    tcase_add_test(t, env_join_keeps_the_order_and_its_bound);
    tcase_add_test(t, spawn_sets_the_ports_and_later_entries_win);
    tcase_add_test(t, a_service_starts_serves_and_stops_with_its_exit_code);
    tcase_add_test(t, a_process_that_dies_is_not_waited_for);
    tcase_add_test(t, teardown_kills_what_a_test_left_running);
    tcase_add_test(t, poll_returns_when_done_or_after_the_timeout);
    tcase_add_test(t, metric_in_reads_a_sample_at_a_line_start);
    tcase_add_test(t, proxy_cuts_and_restores_a_connection);
    tcase_add_test(t, certs_are_made_and_removed);
    tcase_add_test(t, sql_helpers_read_write_and_drop);
    tcase_add_test(t, topic_is_made_read_from_either_end_and_deleted);
    tcase_add_test(t, fixture_runs_the_saga_and_stop_leaves_nothing);
    tcase_add_test(t, fixture_teardown_kills_the_pair_and_keeps_its_schemas);
    tcase_add_test(t, fixture_field_and_money_helpers);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    cm_log_init("test_harness", CM_LOG_ERROR);
    return hs_run(suite(), 1);
}
