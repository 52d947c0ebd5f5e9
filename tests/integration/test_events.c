/*
 * the kafka backbone end to end: commerce-eventsvc processes write events
 * through the outbox, the relay publishes them, a consumer process applies
 * each through the inbox. real processes, the private postgres (PG_DSN) and
 * the broker KAFKA_BROKERS names (scripts/kafka.sh's, or any other). every
 * test has its own schema and topics, created here and removed after.
 *
 * the broker-outage test runs against a mock cluster inside this process
 * (rd_kafka_mock_broker_set_down/up): stopping the shared broker would break
 * whatever else runs meanwhile (ctest -j2). EVENTS_OUTAGE_REAL=1 runs it
 * against KAFKA_BROKERS instead, with scripts/kafka.sh stop and start (which
 * must manage that broker: set KAFKA_PORT/KAFKA_RUN_DIR for a private one).
 */
#include "cm_err.h"
#include "cm_id.h"
#include "cm_kafka.h"
#include "cm_log.h"
#include "cm_rpc_client.h"
#include "harness.h"

#include "../unit/mock_kafka.h"

#include <check.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commerce/test/v1/test.pb-c.h"

static const char *brokers;
static int test_no;
static char schema[64];
static char topic[128];
static char dlq[140];

/* ---- database ---- */

static void sqlf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void sqlf(const char *fmt, ...)
{
    char q[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q, sizeof q, fmt, ap);
    va_end(ap);
    hs_sql_exec(NULL, q);
}

static long query_long(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* one number; a missing table (not migrated yet) reads as -1 */
static long query_long(const char *fmt, ...)
{
    char q[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q, sizeof q, fmt, ap);
    va_end(ap);
    long long v;
    return hs_sql_try_long(NULL, q, &v) == 0 ? (long)v : -1;
}

static long applied(void)
{
    return query_long("SELECT coalesce(sum(n), 0) FROM %s.counters", schema);
}

/* events written and no longer waiting in the outbox, in one snapshot: the
 * relay deletes a row once kafka acknowledged it (or, with
 * OUTBOX_RETENTION_SECONDS, marks it) */
static long published(void)
{
    return query_long("SELECT (SELECT coalesce(sum(next_seq), 0) FROM %s.gen WHERE key LIKE 'k%%') "
                      "- (SELECT count(*) FROM %s.outbox WHERE key LIKE 'k%%' AND published_at IS "
                      "NULL)",
                      schema, schema);
}

typedef struct at_least {
    long (*what)(void);
    long want, got;
} at_least;

static int reached(void *arg)
{
    at_least *a = arg;
    return (a->got = a->what()) >= a->want;
}

static void wait_until(long (*what)(void), long want, int timeout_ms, const char *name)
{
    at_least a = {what, want, 0};
    ck_assert_msg(hs_poll(reached, &a, timeout_ms, 100) == 0, "%s: %ld of %ld after %d ms", name,
                  a.got, want, timeout_ms);
}

/* every event applied exactly once, each key's in order */
static void verify(long total)
{
    ck_assert_int_eq(applied(), total);
    ck_assert_int_eq(query_long("SELECT count(*) FROM %s.counters c JOIN %s.gen g USING (key) "
                                "WHERE c.n <> g.next_seq OR c.last_seq <> g.next_seq - 1",
                                schema, schema),
                     0);
    ck_assert_int_eq(query_long("SELECT coalesce(sum(out_of_order), 0) FROM %s.counters", schema),
                     0);
    ck_assert_int_eq(query_long("SELECT coalesce(sum(next_seq), 0) FROM %s.gen", schema), total);
    ck_assert_int_eq(query_long("SELECT count(*) FROM %s.inbox", schema), total);
}

/* ---- processes ---- */

static void fresh(int parts, const char *bk)
{
    test_no++;
    snprintf(schema, sizeof schema, "eventsvc_%ld_%d", (long)getpid(), test_no);
    snprintf(topic, sizeof topic, "test.events.%ld.%d", (long)getpid(), test_no);
    snprintf(dlq, sizeof dlq, "%s.dlq", topic);
    hs_drop_schema(NULL, schema);
    if (bk) {
        hs_kafka_create_topic(bk, topic, parts);
        hs_kafka_create_topic(bk, dlq, 1);
    }
}

static void cleanup(const char *bk)
{
    hs_drop_schema(NULL, schema);
    if (bk) {
        hs_kafka_delete_topic(bk, topic);
        hs_kafka_delete_topic(bk, dlq);
    }
}

/* spawns an eventsvc with role and KEY=value extras (NULL-terminated) */
static void spawn(hs_proc *p, const char *role, const char *bk, const char *const *extra, int wait)
{
    char e_schema[96], e_topic[160], e_role[64], e_bk[256];
    snprintf(e_schema, sizeof e_schema, "EVENTSVC_SCHEMA=%s", schema);
    snprintf(e_topic, sizeof e_topic, "EVENTSVC_TOPIC=%s", topic);
    snprintf(e_role, sizeof e_role, "EVENTSVC_ROLE=%s", role);
    snprintf(e_bk, sizeof e_bk, "KAFKA_BROKERS=%s", bk);
    const char *env[8] = {e_schema,
                          e_topic,
                          e_role,
                          e_bk,
                          "EVENTSVC_SESSION_TIMEOUT_MS=6000",
                          "DRAIN_GRACE_SECONDS=10"};
    /* EVENTS_LOG_LEVEL=info shows the services' own story in their logs */
    char e_log[64];
    const char *lvl = getenv("EVENTS_LOG_LEVEL");
    if (lvl && *lvl) {
        snprintf(e_log, sizeof e_log, "LOG_LEVEL=%s", lvl);
        env[6] = e_log;
    }
    const char *all[32];
    ck_assert_int_eq(hs_spawn(p, EVENTSVC_BIN, hs_env_join(all, 32, env, extra)), 0);
    if (wait)
        ck_assert_msg(hs_wait_serving(p, 30000) == 0, "%s did not start, see %s", role,
                      p->log_path);
}

static void stop_ok(hs_proc *p)
{
    int code = hs_stop(p, SIGTERM, 30000);
    ck_assert_msg(code == 0, "exit %d after SIGTERM, see %s", code, p->log_path);
}

static long metric(const hs_proc *p, const char *result)
{
    char series[384];
    snprintf(series, sizeof series,
             "consumer_processed_total{topic=\"%s\",group=\"commerce.eventsvc\",result=\"%s\"}",
             topic, result);
    return (long)hs_metric(p, series);
}

/* the consumer's lag on every partition comes down to 0 */
static void wait_no_lag(const hs_proc *p, int parts)
{
    long long until = hs_now_ms() + 10000;
    for (int i = 0; i < parts; i++) {
        char series[384];
        snprintf(series, sizeof series,
                 "consumer_lag{topic=\"%s\",group=\"commerce.eventsvc\",partition=\"%d\"}", topic,
                 i);
        double lag;
        while ((lag = hs_metric(p, series)) != 0) {
            ck_assert_msg(hs_now_ms() < until, "partition %d lag %.0f", i, lag);
            usleep(100 * 1000);
        }
    }
}

/* ---- tests ---- */

START_TEST(events_arrive_once_in_key_order)
{
    fresh(3, brokers);
    hs_proc c, p;
    spawn(&c, "consumer", brokers, NULL, 1);
    const char *const w[] = {"EVENTSVC_WRITE_TOTAL=2000", "EVENTSVC_KEYS=16", "EVENTSVC_BATCH=20",
                             NULL};
    spawn(&p, "producer", brokers, w, 1);
    wait_until(applied, 2000, 120000, "applied");
    wait_until(published, 2000, 10000, "published");
    ck_assert_int_eq(metric(&c, "applied"), 2000);
    ck_assert_int_eq(metric(&c, "dead_lettered"), 0);
    wait_no_lag(&c, 3);
    ck_assert(hs_metric(&p, "outbox_published_total") == 2000);
    ck_assert(hs_metric(&p, "outbox_relay_leader") == 1);
    ck_assert(hs_metric(&p, "outbox_publish_latency_seconds_count") == 2000);
    char series[384];
    snprintf(series, sizeof series, "kafka_produced_total{topic=\"%s\",result=\"ok\"}", topic);
    ck_assert(hs_metric(&p, series) == 2000);
    long long until = hs_now_ms() + 5000;
    while (hs_metric(&p, "outbox_backlog") != 0)
        ck_assert_msg(hs_now_ms() < until, "outbox_backlog did not come down to 0");
    stop_ok(&p);
    stop_ok(&c);
    verify(2000);
    cleanup(brokers);
}
END_TEST

START_TEST(relay_killed_mid_stream_loses_nothing)
{
    fresh(3, brokers);
    hs_proc c, p;
    spawn(&c, "consumer", brokers, NULL, 1);
    /* published rows are kept (marked) so the test can make some look
     * unsent again below */
    const char *const w[] = {"EVENTSVC_WRITE_TOTAL=3000",
                             "EVENTSVC_KEYS=16",
                             "EVENTSVC_BATCH=10",
                             "EVENTSVC_PAUSE_MS=5",
                             "OUTBOX_RETENTION_SECONDS=3600",
                             NULL};
    spawn(&p, "producer", brokers, w, 1);
    wait_until(published, 300, 60000, "published before the kill");
    ck_assert_int_eq(hs_stop(&p, SIGKILL, 5000), 128 + SIGKILL);
    long written = query_long("SELECT sum(next_seq) FROM %s.gen", schema);
    ck_assert_int_lt(written, 3000); /* it died mid-stream */
    /* what a crash between the broker's ack and the mark leaves behind:
     * the newest published rows look unsent and go out again */
    sqlf("UPDATE %s.outbox SET published_at = NULL WHERE id IN (SELECT id FROM %s.outbox WHERE "
         "published_at IS NOT NULL ORDER BY id DESC LIMIT 100)",
         schema, schema);
    spawn(&p, "producer", brokers, w, 1);
    wait_until(applied, 3000, 180000, "applied");
    wait_until(published, 3000, 10000, "published");
    long dups = 0;
    long long until = hs_now_ms() + 10000;
    while ((dups = metric(&c, "duplicate")) < 100 && hs_now_ms() < until)
        usleep(100 * 1000);
    ck_assert_int_ge(dups, 100); /* absorbed by the inbox */
    stop_ok(&p);
    stop_ok(&c);
    verify(3000);
    cleanup(brokers);
}
END_TEST

START_TEST(consumer_crash_before_offset_commit_has_no_second_effect)
{
    fresh(3, brokers);
    hs_proc c, p;
    const char *const w[] = {"EVENTSVC_WRITE_TOTAL=600", "EVENTSVC_KEYS=8", "EVENTSVC_BATCH=50",
                             NULL};
    spawn(&p, "producer", brokers, w, 1);
    wait_until(published, 600, 60000, "published");
    const char *const crash[] = {"EVENTSVC_CRASH_AFTER=250", NULL};
    spawn(&c, "consumer", brokers, crash, 0);
    ck_assert_int_eq(hs_wait_exit(&c, 60000), 128 + SIGKILL);
    /* the 250th effect committed, with the rest of its batch; none of the
     * batch's offsets did */
    ck_assert_int_ge(applied(), 250);
    ck_assert_int_le(applied(), 600);
    spawn(&c, "consumer", brokers, NULL, 1);
    wait_until(applied, 600, 120000, "applied after the restart");
    /* the crashed batch may have held every event: then the effects are all
     * there already, and what shows the redelivery is the inbox absorbing it */
    long long until = hs_now_ms() + 60000;
    while (metric(&c, "duplicate") < 1) {
        ck_assert_msg(hs_now_ms() < until, "the crashed batch was not redelivered");
        usleep(100 * 1000);
    }
    stop_ok(&c);
    stop_ok(&p);
    verify(600);
    cleanup(brokers);
}
END_TEST

static void put_event(const hs_proc *p, const char *key, const char *value)
{
    cm_rpc_client *cl = hs_client(p, NULL);
    Commerce__Test__V1__PutRequest req = COMMERCE__TEST__V1__PUT_REQUEST__INIT;
    req.key = (char *)key;
    req.value = (char *)value;
    const cm_rpc_md md[] = {{"x-tenant-id", "tenant-events"}};
    ProtobufCMessage *resp = NULL;
    cm_rpc_status st;
    ck_assert_int_eq(cm_rpc_call(cl, "/commerce.test.v1.TestService/Put", &req.base,
                                 &commerce__test__v1__put_response__descriptor, NULL, &resp, md, 1,
                                 10000, 0, &st),
                     0);
    protobuf_c_message_free_unpacked(resp, NULL);
    cm_rpc_client_free(cl);
}

/* minus the unsent rows, so wait_until(..., 0) waits for none */
static long minus_unsent(void)
{
    return -query_long("SELECT count(*) FROM %s.outbox WHERE published_at IS NULL", schema);
}

START_TEST(poison_event_goes_to_dlq_and_does_not_block)
{
    fresh(1, brokers); /* one partition: the poison sits before every event */
    hs_proc c, p;
    spawn(&p, "producer", brokers, NULL, 1);
    put_event(&p, "k1", "poison");
    wait_until(minus_unsent, 0, 30000, "poison published");
    stop_ok(&p);
    /* a record without ce_id, straight to the topic */
    cm_kafka_producer *kp;
    char err[256];
    ck_assert_int_eq(cm_kafka_producer_new(&kp, brokers, "test-events", NULL, err, sizeof err), 0);
    cm_kafka_msg m = {.topic = topic, .key = "k1", .key_len = 2, .payload = "7", .len = 1};
    ck_assert_int_eq(cm_kafka_produce_sync(kp, &m, NULL), 0);
    cm_kafka_producer_free(kp, 5000);

    const char *const w[] = {"EVENTSVC_WRITE_TOTAL=300", "EVENTSVC_KEYS=4", NULL};
    spawn(&p, "producer", brokers, w, 1);
    spawn(&c, "consumer", brokers, NULL, 1);
    wait_until(applied, 300, 120000, "applied after the poison");
    ck_assert_int_eq(metric(&c, "dead_lettered"), 2);
    stop_ok(&p);
    stop_ok(&c);
    verify(300);

    hs_topic *dl = hs_topic_open(brokers, dlq, 0);
    ck_assert_uint_eq(hs_topic_read(dl, 2, 20000), 2);
    const hs_record *recs[] = {hs_topic_at(dl, 0), hs_topic_at(dl, 1)};
    ck_assert_str_eq((const char *)recs[0]->payload, "poison");
    ck_assert_str_eq(hs_record_header(recs[0], "dlq-reason"), "rejected");
    ck_assert_str_eq(hs_record_header(recs[0], "dlq-topic"), topic);
    ck_assert_str_eq(hs_record_header(recs[0], "dlq-group"), "commerce.eventsvc");
    ck_assert_str_eq(hs_record_header(recs[0], "dlq-offset"), "0");
    ck_assert_int_eq(cm_id_is_uuid(hs_record_header(recs[0], "ce_id")), 1);
    ck_assert_str_eq(hs_record_header(recs[0], "ce_type"), "commerce.test.v1.Counted");
    ck_assert_str_eq(hs_record_header(recs[0], "tenant-id"), "tenant-events");
    ck_assert_str_eq(hs_record_header(recs[0], "x-eventsvc"), "1");
    ck_assert_ptr_nonnull(hs_record_header(recs[0], "dlq-at"));
    ck_assert_str_eq(recs[0]->key, "k1");
    ck_assert_str_eq(hs_record_header(recs[1], "dlq-reason"), "malformed");
    ck_assert_str_eq(hs_record_header(recs[1], "dlq-offset"), "1");
    hs_topic_close(dl);
    cleanup(brokers);
}
END_TEST

static long writes(void)
{
    return query_long("SELECT coalesce(sum(next_seq), 0) FROM %s.gen", schema);
}

/* scripts/kafka.sh leaves a broker alone when KAFKA_BROKERS is set (the
 * user's own); KAFKA_RUN_DIR still says which one is ours, and start takes
 * the ports it remembered there (or KAFKA_PORT) again, so the broker comes
 * back on the address KAFKA_BROKERS names */
static void kafka_ctl(const char *verb)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "env -u KAFKA_BROKERS %s %s >/dev/null 2>&1", KAFKA_SH, verb);
    ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
}

START_TEST(broker_outage_delays_but_loses_nothing)
{
    int real = getenv("EVENTS_OUTAGE_REAL") && strcmp(getenv("EVENTS_OUTAGE_REAL"), "1") == 0;
    mk_cluster mk;
    const char *bk = brokers;
    if (!real) {
        ck_assert_int_eq(mk_start(&mk, 1), 0);
        bk = mk.brokers;
    }
    /* the mock (librdkafka 2.0.2) has no CreateTopics: its own call */
    fresh(3, real ? bk : NULL);
    if (!real) {
        rd_kafka_mock_topic_create(mk.mc, topic, 3, 1);
        rd_kafka_mock_topic_create(mk.mc, dlq, 1, 1);
    }
    hs_proc c, p;
    /* the consumer's session outlives the outage: it resumes, not rejoins */
    const char *const cw[] = {"EVENTSVC_SESSION_TIMEOUT_MS=30000", NULL};
    spawn(&c, "consumer", bk, cw, 1);
    /* ~125 events/s: the writer must still be writing when the outage
     * starts (at 500/s it had written up to ~1,350 of the 1,500 by then,
     * and a slow consumer start left fewer than the 50 checked below) */
    const char *const w[] = {"EVENTSVC_WRITE_TOTAL=1500", "EVENTSVC_KEYS=16", "EVENTSVC_BATCH=5",
                             "EVENTSVC_PAUSE_MS=40", NULL};
    spawn(&p, "producer", bk, w, 1);
    wait_until(applied, 100, 60000, "applied before the outage");
    if (real)
        kafka_ctl("stop");
    else
        rd_kafka_mock_broker_set_down(mk.mc, -1);
    long w0 = writes(), p0 = published();
    fprintf(stderr, "outage: from %ld written, %ld published, %ld applied\n", w0, p0, applied());
    sleep(5);
    /* writes go on into the outbox; nothing more is acknowledged */
    ck_assert_int_gt(writes(), w0 + 50);
    ck_assert_int_le(published(), p0 + 1000);
    long backlog_before = writes() - published();
    ck_assert_int_gt(backlog_before, 50);
    if (real)
        kafka_ctl("start");
    else
        rd_kafka_mock_broker_set_up(mk.mc, -1);
    wait_until(applied, 1500, 180000, "applied after the outage");
    wait_until(published, 1500, 10000, "published");
    stop_ok(&p);
    stop_ok(&c);
    verify(1500);
    cleanup(real ? bk : NULL);
    if (!real)
        mk_stop(&mk);
}
END_TEST

static Suite *events_suite(void)
{
    Suite *s = suite_create("events");
    /* CK_RUN_CASE=outage runs the outage alone (with EVENTS_OUTAGE_REAL=1) */
    TCase *outage = tcase_create("outage");
    tcase_set_timeout(outage, 300);
    tcase_add_test(outage, broker_outage_delays_but_loses_nothing);
    suite_add_tcase(s, outage);
    TCase *tc = tcase_create("events");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, events_arrive_once_in_key_order);
    tcase_add_test(tc, relay_killed_mid_stream_loses_nothing);
    tcase_add_test(tc, consumer_crash_before_offset_commit_has_no_second_effect);
    tcase_add_test(tc, poison_event_goes_to_dlq_and_does_not_block);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    brokers = getenv("KAFKA_BROKERS");
    if (!brokers || !*brokers) {
        fprintf(stderr, "test_events: FAIL: KAFKA_BROKERS is not set. these tests need a kafka "
                        "broker: scripts/kafka.sh start && scripts/kafka.sh topics, then "
                        "KAFKA_BROKERS=$(scripts/kafka.sh bootstrap) (scripts/test.sh does "
                        "this)\n");
        return EXIT_FAILURE;
    }
    if (!getenv("PG_DSN") || !*getenv("PG_DSN")) {
        fprintf(stderr, "test_events: FAIL: PG_DSN is not set: run scripts/test.sh, or "
                        "scripts/pg.sh start and PG_DSN=\"$(scripts/pg.sh dsn)\"\n");
        return EXIT_FAILURE;
    }
    cm_log_init("test_events", CM_LOG_ERROR);
    return hs_run(events_suite(), 0);
}
