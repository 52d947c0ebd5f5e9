/*
 * cm_kafka and cm_consumer against librdkafka's in-process mock cluster:
 * headers round-trip, delivery failures injected with
 * rd_kafka_mock_push_request_errors and broker outages, and the consumer's
 * inbox and dead-letter routing. the consumer tests also need PG_DSN (the
 * inbox lives in postgres); each works in schema test_kafka_<pid>.
 */
#include "cm_consumer.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_kafka.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "mock_kafka.h"

#include <check.h>

#include "pg_test.h"
#include <libpq-fe.h>
#include <stdatomic.h>
#include <unistd.h>

#define PRODUCE_REQ 0 /* kafka protocol api key of ProduceRequest */

static const char *dsn;
static char schema[64];
static mk_cluster mk;

static void cluster_up(void)
{
    ck_assert_int_eq(mk_start(&mk, 1), 0);
}

static void cluster_down(void)
{
    mk_stop(&mk);
}

static cm_kafka_producer *producer(cm_metrics *m, int timeout_ms)
{
    cm_kafka_producer *p = NULL;
    char err[256];
    cm_kafka_producer_opts o = {
        .brokers = mk.brokers,
        .client_id = "test-kafka",
        .metrics = m,
        .message_timeout_ms = timeout_ms,
    };
    ck_assert_msg(cm_kafka_producer_new_opts(&p, &o, err, sizeof err) == 0, "%s", err);
    return p;
}

static cm_kafka_msg event(const char *topic, const char *key, const char *payload, char *id)
{
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    return (cm_kafka_msg){
        .topic = topic,
        .key = key,
        .key_len = strlen(key),
        .payload = payload,
        .len = strlen(payload),
        .id = id,
        .type = "commerce.events.v1.Test",
        .source = "/commerce/test",
        .time = "2026-11-03T08:15:00.123Z",
        .content_type = "application/protobuf",
        .traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        .tenant_id = "t1",
    };
}

/* ---- producer ---- */

START_TEST(produce_sync_carries_cloudevents_headers)
{
    rd_kafka_mock_topic_create(mk.mc, "t.headers", 1, 1);
    cm_kafka_producer *p = producer(NULL, 0);
    char id[CM_ID_SIZE];
    cm_kafka_msg m = event("t.headers", "order-1", "payload-bytes", id);
    cm_kafka_header extra[] = {{"x-extra", "v", 1}};
    m.headers = extra;
    m.nheaders = 1;
    cm_kafka_report r;
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, &r), 0);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_int_eq(r.partition, 0);
    ck_assert_int_eq(r.offset, 0);
    cm_kafka_producer_free(p, 1000);

    mk_record *recs;
    size_t n = mk_read_topic(mk.brokers, "t.headers", 1, 1, 10000, &recs);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(recs[0].key, "order-1");
    ck_assert_str_eq(recs[0].payload, "payload-bytes");
    ck_assert_str_eq(mk_header(&recs[0], "ce_id"), id);
    ck_assert_str_eq(mk_header(&recs[0], "ce_specversion"), "1.0");
    ck_assert_str_eq(mk_header(&recs[0], "ce_type"), "commerce.events.v1.Test");
    ck_assert_str_eq(mk_header(&recs[0], "ce_source"), "/commerce/test");
    ck_assert_str_eq(mk_header(&recs[0], "ce_time"), "2026-11-03T08:15:00.123Z");
    ck_assert_str_eq(mk_header(&recs[0], "content-type"), "application/protobuf");
    ck_assert_str_eq(mk_header(&recs[0], "traceparent"),
                     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    ck_assert_str_eq(mk_header(&recs[0], "tenant-id"), "t1");
    ck_assert_str_eq(mk_header(&recs[0], "x-extra"), "v");
    mk_records_free(recs, n);
}
END_TEST

START_TEST(batch_reports_every_message_in_partition_order)
{
    rd_kafka_mock_topic_create(mk.mc, "t.batch", 3, 1);
    cm_metrics *metrics = cm_metrics_new();
    cm_kafka_producer *p = producer(metrics, 0);
    cm_kafka_batch *b;
    ck_assert_int_eq(cm_kafka_batch_new(&b, 300), 0);
    char ids[300][CM_ID_SIZE], keys[300][16], vals[300][16];
    for (int i = 0; i < 300; i++) {
        snprintf(keys[i], sizeof keys[i], "k%d", i % 7);
        snprintf(vals[i], sizeof vals[i], "%d", i);
        cm_kafka_msg m = event("t.batch", keys[i], vals[i], ids[i]);
        ck_assert_int_eq(cm_kafka_batch_add(p, b, &m), 0);
    }
    char id[CM_ID_SIZE];
    cm_kafka_msg over = event("t.batch", "k", "v", id);
    ck_assert_int_eq(cm_kafka_batch_add(p, b, &over), CM_ELIMIT);
    ck_assert_int_eq(cm_kafka_batch_wait(b, 20000), 0);
    ck_assert_uint_eq(cm_kafka_batch_size(b), 300);
    int64_t last[3] = {-1, -1, -1};
    for (size_t i = 0; i < 300; i++) {
        const cm_kafka_report *r = cm_kafka_batch_report(b, i);
        ck_assert_int_eq(r->rc, 0);
        ck_assert(r->partition >= 0 && r->partition < 3);
        /* a later message of a partition always lands after an earlier one */
        ck_assert_int_gt(r->offset, last[r->partition]);
        last[r->partition] = r->offset;
    }
    ck_assert_int_eq(cm_kafka_batch_reset(b), 0);
    ck_assert_uint_eq(cm_kafka_batch_size(b), 0);
    cm_kafka_batch_free(b);
    cm_kafka_producer_free(p, 1000);

    cm_counter *ok =
        cm_metrics_counter(metrics, "kafka_produced_total", "", "topic=\"t.batch\",result=\"ok\"");
    ck_assert_uint_eq(cm_counter_value(ok), 300);
    char *text = NULL;
    ck_assert_int_eq(cm_metrics_render(metrics, &text, NULL), 0);
    ck_assert_ptr_nonnull(
        strstr(text, "kafka_delivery_latency_seconds_count{topic=\"t.batch\"} 300"));
    free(text);
    cm_metrics_free(metrics);
}
END_TEST

START_TEST(produce_refuses_invalid_messages)
{
    cm_kafka_producer *p = producer(NULL, 0);
    char id[CM_ID_SIZE];
    cm_kafka_msg m = event("bad topic!", "k", "v", id);
    ck_assert_int_eq(cm_kafka_produce(p, &m, NULL, NULL), CM_EINVAL);
    m.topic = "";
    ck_assert_int_eq(cm_kafka_produce(p, &m, NULL, NULL), CM_EINVAL);
    m.topic = "t.ok";
    m.payload = NULL; /* with a length */
    ck_assert_int_eq(cm_kafka_produce(p, &m, NULL, NULL), CM_EINVAL);
    ck_assert_int_eq(cm_kafka_topic_valid("commerce.order.v1.dlq"), 1);
    ck_assert_int_eq(cm_kafka_topic_valid("a/b"), 0);
    cm_kafka_producer_free(p, 1000);

    char err[256];
    cm_kafka_producer *q = NULL;
    ck_assert_int_eq(cm_kafka_producer_new(&q, "", "x", NULL, err, sizeof err), CM_EINVAL);
    const char *const bad[] = {"no.such.setting", "1", NULL};
    cm_kafka_producer_opts o = {.brokers = mk.brokers, .conf = bad};
    ck_assert_int_eq(cm_kafka_producer_new_opts(&q, &o, err, sizeof err), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "no.such.setting"));
    ck_assert_ptr_null(q);
}
END_TEST

START_TEST(permanent_broker_error_fails_the_message)
{
    rd_kafka_mock_topic_create(mk.mc, "t.perm", 1, 1);
    cm_metrics *metrics = cm_metrics_new();
    cm_kafka_producer *p = producer(metrics, 0);
    char id[CM_ID_SIZE];
    cm_kafka_msg m = event("t.perm", "k", "warm-up", id);
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);

    rd_kafka_mock_push_request_errors(mk.mc, PRODUCE_REQ, 1, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
    m = event("t.perm", "k", "refused", id);
    cm_kafka_report r;
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, &r), CM_EINVAL);
    ck_assert_int_eq(r.permanent, 1);
    ck_assert_str_ne(r.error, "");

    /* the producer goes on */
    m = event("t.perm", "k", "after", id);
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, &r), 0);
    cm_kafka_producer_free(p, 1000);
    cm_counter *bad = cm_metrics_counter(metrics, "kafka_produced_total", "",
                                         "topic=\"t.perm\",result=\"error\"");
    ck_assert_uint_eq(cm_counter_value(bad), 1);
    cm_metrics_free(metrics);
}
END_TEST

START_TEST(transient_broker_errors_are_retried)
{
    rd_kafka_mock_topic_create(mk.mc, "t.retry", 1, 1);
    cm_kafka_producer *p = producer(NULL, 0);
    rd_kafka_mock_push_request_errors(mk.mc, PRODUCE_REQ, 4, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                                      RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                                      RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                                      RD_KAFKA_RESP_ERR__TRANSPORT);
    char ids[3][CM_ID_SIZE];
    cm_kafka_batch *b;
    ck_assert_int_eq(cm_kafka_batch_new(&b, 3), 0);
    const char *vals[] = {"1", "2", "3"};
    for (int i = 0; i < 3; i++) {
        cm_kafka_msg m = event("t.retry", "k", vals[i], ids[i]);
        ck_assert_int_eq(cm_kafka_batch_add(p, b, &m), 0);
    }
    ck_assert_int_eq(cm_kafka_batch_wait(b, 30000), 0);
    for (size_t i = 0; i < 3; i++)
        ck_assert_int_eq(cm_kafka_batch_report(b, i)->rc, 0);
    cm_kafka_batch_free(b);
    cm_kafka_producer_free(p, 1000);

    /* idempotence: retries neither duplicated nor reordered anything */
    mk_record *recs;
    size_t n = mk_read_topic(mk.brokers, "t.retry", 1, 4, 3000, &recs);
    ck_assert_uint_eq(n, 3);
    for (size_t i = 0; i < 3; i++)
        ck_assert_str_eq(recs[i].payload, vals[i]);
    mk_records_free(recs, n);
}
END_TEST

START_TEST(broker_outage_delays_but_delivers_in_order)
{
    rd_kafka_mock_topic_create(mk.mc, "t.outage", 1, 1);
    cm_kafka_producer *p = producer(NULL, 0);
    char id[CM_ID_SIZE];
    cm_kafka_msg m = event("t.outage", "k", "before", id);
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);

    rd_kafka_mock_broker_set_down(mk.mc, -1);
    cm_kafka_batch *b;
    ck_assert_int_eq(cm_kafka_batch_new(&b, 50), 0);
    char ids[50][CM_ID_SIZE], vals[50][8];
    for (int i = 0; i < 50; i++) {
        snprintf(vals[i], sizeof vals[i], "%d", i);
        cm_kafka_msg x = event("t.outage", "k", vals[i], ids[i]);
        ck_assert_int_eq(cm_kafka_batch_add(p, b, &x), 0);
    }
    /* no message timeout: they wait for the broker rather than fail */
    ck_assert_int_eq(cm_kafka_batch_wait(b, 3000), CM_ETIMEDOUT);
    rd_kafka_mock_broker_set_up(mk.mc, -1);
    ck_assert_int_eq(cm_kafka_batch_wait(b, 30000), 0);
    for (size_t i = 0; i < 50; i++)
        ck_assert_int_eq(cm_kafka_batch_report(b, i)->rc, 0);
    cm_kafka_batch_free(b);
    cm_kafka_producer_free(p, 1000);

    mk_record *recs;
    size_t n = mk_read_topic(mk.brokers, "t.outage", 1, 52, 3000, &recs);
    ck_assert_uint_eq(n, 51);
    for (size_t i = 0; i < 50; i++)
        ck_assert_str_eq(recs[i + 1].payload, vals[i]);
    mk_records_free(recs, n);
}
END_TEST

START_TEST(message_timeout_reports_timed_out)
{
    rd_kafka_mock_topic_create(mk.mc, "t.timeout", 1, 1);
    cm_kafka_producer *p = producer(NULL, 1500);
    char id[CM_ID_SIZE];
    cm_kafka_msg m = event("t.timeout", "k", "warm-up", id);
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    rd_kafka_mock_broker_set_down(mk.mc, -1);
    m = event("t.timeout", "k", "lost", id);
    cm_kafka_report r;
    long long t0 = mk_now_ms();
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, &r), CM_ETIMEDOUT);
    ck_assert_int_eq(r.permanent, 0);
    ck_assert_int_lt(mk_now_ms() - t0, 10000);
    rd_kafka_mock_broker_set_up(mk.mc, -1);
    /* the next messages go through once the client has reconnected (its
     * reconnect backoff may outlast one short timeout) */
    int rc = -1;
    for (int i = 0; i < 20 && rc != 0; i++) {
        m = event("t.timeout", "k", "again", id);
        rc = cm_kafka_produce_sync(p, &m, &r);
    }
    ck_assert_int_eq(rc, 0);
    cm_kafka_producer_free(p, 1000);
}
END_TEST

static void count_report(const cm_kafka_report *r, void *arg)
{
    atomic_int *n = arg;
    if (r->rc == CM_ECANCELLED)
        atomic_fetch_add(n, 1);
}

START_TEST(purge_cancels_waiting_messages)
{
    rd_kafka_mock_topic_create(mk.mc, "t.purge", 1, 1);
    cm_kafka_producer *p = producer(NULL, 0);
    rd_kafka_mock_broker_set_down(mk.mc, -1);
    atomic_int cancelled = 0;
    char id[CM_ID_SIZE];
    for (int i = 0; i < 10; i++) {
        cm_kafka_msg m = event("t.purge", "k", "x", id);
        ck_assert_int_eq(cm_kafka_produce(p, &m, count_report, &cancelled), 0);
    }
    ck_assert_int_eq(cm_kafka_producer_flush(p, 500), CM_ETIMEDOUT);
    ck_assert_int_gt(cm_kafka_producer_outq(p), 0);
    cm_kafka_producer_purge(p);
    ck_assert_int_eq(cm_kafka_producer_flush(p, 5000), 0);
    ck_assert_int_eq(atomic_load(&cancelled), 10);
    /* free with undelivered messages still runs every callback once */
    for (int i = 0; i < 5; i++) {
        cm_kafka_msg m = event("t.purge", "k", "y", id);
        ck_assert_int_eq(cm_kafka_produce(p, &m, count_report, &cancelled), 0);
    }
    cm_kafka_producer_free(p, 200);
    ck_assert_int_eq(atomic_load(&cancelled), 15);
}
END_TEST

START_TEST(time_is_rfc3339_utc_with_milliseconds)
{
    char t[CM_KAFKA_TIME_SIZE];
    cm_kafka_time_rfc3339(1793693700123LL, t);
    ck_assert_str_eq(t, "2026-11-03T08:15:00.123Z");
    cm_kafka_time_rfc3339(0, t);
    ck_assert_str_eq(t, "1970-01-01T00:00:00.000Z");
}
END_TEST

/* ---- consumer ---- */

static void fresh_schema(void)
{
    cluster_up();
    PGconn *c = pt_admin();
    char q[256];
    snprintf(q, sizeof q, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    pt_sql(c, q);
    PQfinish(c);
    cm_db *db;
    char err[512];
    ck_assert_msg(cm_db_connect(&db, dsn, schema, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(cm_db_migrate_component(db, schema, "inbox", cm_inbox_migrations,
                                          cm_inbox_migrations_count, err, sizeof err) == 0,
                  "%s", err);
    /* the effect the handler applies: a counter per key, and the last value
     * seen, so order can be checked */
    ck_assert_int_eq(cm_db_exec(db, "effects",
                                "CREATE TABLE effects (key text PRIMARY KEY, n int NOT NULL, "
                                "last text NOT NULL)",
                                0, NULL, NULL),
                     0);
    cm_db_free(db);
}

static void drop_schema(void)
{
    PGconn *c = pt_admin();
    char q[256];
    snprintf(q, sizeof q, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    pt_sql(c, q);
    PQfinish(c);
    cluster_down();
}

typedef struct handler_state {
    atomic_int calls;
    atomic_int flaky_left; /* "flaky" payloads fail this many times first */
} handler_state;

static int handler(cm_db *db, const cm_event *ev, void *arg)
{
    handler_state *st = arg;
    atomic_fetch_add(&st->calls, 1);
    char text[64];
    snprintf(text, sizeof text, "%.*s", (int)ev->len, (const char *)ev->payload);
    if (strcmp(text, "poison") == 0)
        return CM_EINVAL;
    if (strcmp(text, "always-busy") == 0)
        return CM_ECONFLICT;
    if (strcmp(text, "flaky") == 0 && atomic_fetch_sub(&st->flaky_left, 1) > 0)
        return CM_EUNAVAIL;
    ck_assert_str_eq(ev->type, "commerce.events.v1.Test");
    ck_assert_str_eq(ev->tenant_id, "t1");
    const char *p[] = {ev->key, text};
    return cm_db_exec(db, "apply",
                      "INSERT INTO effects (key, n, last) VALUES ($1, 1, $2) ON CONFLICT (key) "
                      "DO UPDATE SET n = effects.n + 1, last = $2",
                      2, p, NULL);
}

/* the next consumer's type filter (NULL: every type) and inbox option */
static const char *const *consumer_types;
static int consumer_idempotent;

static cm_consumer *start_consumer(cm_kafka_producer *p, const char *topic, handler_state *st,
                                   cm_metrics *metrics)
{
    cm_consumer *c = NULL;
    char err[512];
    cm_consumer_opts o = {
        .brokers = mk.brokers,
        .topic = topic,
        .group = "g1",
        .dsn = dsn,
        .schema = schema,
        .fn = handler,
        .arg = st,
        .producer = p,
        .metrics = metrics,
        .max_attempts = 3,
        .backoff_min_ms = 10,
        .backoff_max_ms = 50,
        .commit_interval_ms = 100,
        .conf = getenv("TEST_KAFKA_DEBUG") ? (const char *const[]){"debug", "cgrp", NULL} : NULL,
        .types = consumer_types,
        .idempotent = consumer_idempotent,
    };
    ck_assert_msg(cm_consumer_start(&c, &o, err, sizeof err) == 0, "%s", err);
    return c;
}

static void wait_handled(cm_consumer *c, uint64_t n)
{
    long long until = mk_now_ms() + 30000;
    cm_consumer_stats s;
    for (;;) {
        cm_consumer_get_stats(c, &s);
        if (s.applied + s.duplicates + s.dead_lettered >= n)
            return;
        ck_assert_msg(mk_now_ms() < until, "consumer handled %llu of %llu events",
                      (unsigned long long)(s.applied + s.duplicates + s.dead_lettered),
                      (unsigned long long)n);
        mk_sleep_ms(20);
    }
}

START_TEST(consumer_applies_each_event_once)
{
    rd_kafka_mock_topic_create(mk.mc, "t.once", 3, 1);
    cm_kafka_producer *p = producer(NULL, 0);
    char ids[30][CM_ID_SIZE], keys[30][8], vals[30][8];
    for (int i = 0; i < 30; i++) {
        snprintf(keys[i], sizeof keys[i], "k%d", i % 3);
        snprintf(vals[i], sizeof vals[i], "%d", i);
        cm_kafka_msg m = event("t.once", keys[i], vals[i], ids[i]);
        ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    }
    /* redeliveries: the same event ids again, as a relay restart would */
    for (int i = 25; i < 30; i++) {
        char fresh[CM_ID_SIZE];
        cm_kafka_msg m = event("t.once", keys[i], vals[i], fresh);
        m.id = ids[i];
        ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    }
    cm_metrics *metrics = cm_metrics_new();
    handler_state st = {0};
    cm_consumer *c = start_consumer(p, "t.once", &st, metrics);
    wait_handled(c, 35);
    cm_consumer_stats s;
    cm_consumer_get_stats(c, &s);
    cm_consumer_free(c);
    cm_kafka_producer_free(p, 1000);
    ck_assert_uint_eq(s.applied, 30);
    ck_assert_uint_eq(s.duplicates, 5);
    ck_assert_uint_eq(s.dead_lettered, 0);

    PGconn *a = pt_admin();
    char q[256];
    snprintf(q, sizeof q, "SELECT sum(n) FROM %s.effects", schema);
    ck_assert_int_eq(pt_query_long(a, q), 30);
    /* per key, the last effect is the key's last event: order held */
    snprintf(q, sizeof q, "SELECT count(*) FROM %s.effects WHERE last IN ('27','28','29')", schema);
    ck_assert_int_eq(pt_query_long(a, q), 3);
    snprintf(q, sizeof q, "SELECT count(*) FROM %s.inbox WHERE consumer_group = 'g1'", schema);
    ck_assert_int_eq(pt_query_long(a, q), 30);
    PQfinish(a);

    cm_counter *dup = cm_metrics_counter(metrics, "consumer_processed_total", "",
                                         "topic=\"t.once\",group=\"g1\",result=\"duplicate\"");
    ck_assert_uint_eq(cm_counter_value(dup), 5);
    cm_metrics_free(metrics);
}
END_TEST

START_TEST(consumer_dead_letters_and_does_not_block_the_partition)
{
    rd_kafka_mock_topic_create(mk.mc, "t.dlq", 1, 1);
    rd_kafka_mock_topic_create(mk.mc, "t.dlq.dlq", 1, 1);
    cm_kafka_producer *p = producer(NULL, 0);
    char id[CM_ID_SIZE], poison_id[CM_ID_SIZE];
    cm_kafka_msg m = event("t.dlq", "k", "1", id);
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    m = event("t.dlq", "k", "poison", poison_id);
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    m = event("t.dlq", "k", "always-busy", id);
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    m = event("t.dlq", "k", "2", id);
    m.id = NULL; /* malformed: no ce_id */
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    m = event("t.dlq", "k", "3", id);
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);

    handler_state st = {0};
    cm_consumer *c = start_consumer(p, "t.dlq", &st, NULL);
    wait_handled(c, 5);
    cm_consumer_stats s;
    cm_consumer_get_stats(c, &s);
    cm_consumer_free(c);
    cm_kafka_producer_free(p, 1000);
    ck_assert_uint_eq(s.applied, 2);
    ck_assert_uint_eq(s.dead_lettered, 3);
    ck_assert_uint_eq(s.retries, 2); /* always-busy: 3 attempts */

    PGconn *a = pt_admin();
    char q[256];
    snprintf(q, sizeof q, "SELECT count(*) FROM %s.effects WHERE key = 'k' AND last = '3'", schema);
    ck_assert_int_eq(pt_query_long(a, q), 1);
    /* dead letters are not in the inbox: a replay after a fix must apply */
    snprintf(q, sizeof q, "SELECT count(*) FROM %s.inbox", schema);
    ck_assert_int_eq(pt_query_long(a, q), 2);
    PQfinish(a);

    mk_record *recs;
    size_t n = mk_read_topic(mk.brokers, "t.dlq.dlq", 1, 3, 10000, &recs);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(recs[0].payload, "poison");
    ck_assert_str_eq(mk_header(&recs[0], "dlq-reason"), "rejected");
    ck_assert_str_eq(mk_header(&recs[0], "dlq-topic"), "t.dlq");
    ck_assert_str_eq(mk_header(&recs[0], "dlq-partition"), "0");
    ck_assert_str_eq(mk_header(&recs[0], "dlq-offset"), "1");
    ck_assert_str_eq(mk_header(&recs[0], "dlq-group"), "g1");
    ck_assert_str_eq(mk_header(&recs[0], "ce_id"), poison_id);
    ck_assert_str_eq(mk_header(&recs[0], "tenant-id"), "t1");
    ck_assert_str_eq(recs[0].key, "k");
    ck_assert_str_eq(mk_header(&recs[1], "dlq-reason"), "retries_exhausted");
    ck_assert_ptr_nonnull(strstr(mk_header(&recs[1], "dlq-error"), "3 attempts"));
    ck_assert_str_eq(mk_header(&recs[2], "dlq-reason"), "malformed");
    ck_assert_str_eq(mk_header(&recs[2], "dlq-offset"), "3");
    mk_records_free(recs, n);
}
END_TEST

START_TEST(consumer_retries_transient_errors)
{
    rd_kafka_mock_topic_create(mk.mc, "t.flaky", 1, 1);
    cm_kafka_producer *p = producer(NULL, 0);
    char id[CM_ID_SIZE];
    cm_kafka_msg m = event("t.flaky", "k", "flaky", id);
    ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    handler_state st = {0};
    atomic_store(&st.flaky_left, 2);
    cm_consumer *c = start_consumer(p, "t.flaky", &st, NULL);
    wait_handled(c, 1);
    cm_consumer_stats s;
    cm_consumer_get_stats(c, &s);
    cm_consumer_free(c);
    cm_kafka_producer_free(p, 1000);
    ck_assert_uint_eq(s.applied, 1);
    ck_assert_uint_eq(s.retries, 2);
    ck_assert_int_eq(atomic_load(&st.calls), 3);
}
END_TEST

/* 300 events already waiting: they are applied in a few transactions, and a
 * poison one in the middle is dead-lettered alone, after the events before
 * it in its partition and before the ones after it */
START_TEST(consumer_batches_and_isolates_a_failing_event)
{
    rd_kafka_mock_topic_create(mk.mc, "t.batch", 2, 1);
    rd_kafka_mock_topic_create(mk.mc, "t.batch.dlq", 1, 1);
    cm_kafka_producer *p = producer(NULL, 0);
    char id[CM_ID_SIZE];
    for (int i = 0; i < 300; i++) {
        char key[8], val[16];
        snprintf(key, sizeof key, "k%d", i % 5);
        if (i == 150)
            snprintf(val, sizeof val, "poison");
        else
            snprintf(val, sizeof val, "%d", i);
        cm_kafka_msg m = event("t.batch", key, val, id);
        ck_assert_int_eq(cm_kafka_produce(p, &m, NULL, NULL), 0);
    }
    ck_assert_int_eq(cm_kafka_producer_flush(p, 10000), 0);
    handler_state st = {0};
    cm_consumer *c = start_consumer(p, "t.batch", &st, NULL);
    wait_handled(c, 300);
    cm_consumer_stats s;
    cm_consumer_get_stats(c, &s);
    cm_consumer_free(c);
    cm_kafka_producer_free(p, 1000);
    ck_assert_uint_eq(s.applied, 299);
    ck_assert_uint_eq(s.dead_lettered, 1);

    PGconn *a = pt_admin();
    char q[512];
    snprintf(q, sizeof q, "SELECT sum(n) FROM %s.effects", schema);
    ck_assert_int_eq(pt_query_long(a, q), 299);
    /* every key's last effect is its last event: nothing overtook */
    snprintf(q, sizeof q,
             "SELECT count(*) FROM %s.effects WHERE last IN ('295','296','297','298','299')",
             schema);
    ck_assert_int_eq(pt_query_long(a, q), 5);
    /* inbox rows share transactions: far fewer commits than events */
    snprintf(q, sizeof q, "SELECT count(DISTINCT xmin::text) FROM %s.inbox", schema);
    long txs = pt_query_long(a, q);
    ck_assert_int_le(txs, 30);
    snprintf(q, sizeof q, "SELECT count(*) FROM %s.inbox", schema);
    ck_assert_int_eq(pt_query_long(a, q), 299);
    PQfinish(a);

    mk_record *recs;
    size_t n = mk_read_topic(mk.brokers, "t.batch.dlq", 1, 1, 10000, &recs);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(recs[0].payload, "poison");
    ck_assert_str_eq(mk_header(&recs[0], "dlq-reason"), "rejected");
    mk_records_free(recs, n);
}
END_TEST

/* the offsets the group has committed, summed over nparts partitions */
static int64_t committed_sum(const char *topic, int nparts)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", mk.brokers, err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", "g1", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    ck_assert_ptr_nonnull(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(nparts);
    for (int i = 0; i < nparts; i++)
        rd_kafka_topic_partition_list_add(l, topic, i);
    ck_assert_int_eq(rd_kafka_committed(rk, l, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    int64_t sum = 0;
    for (int i = 0; i < l->cnt; i++)
        sum += l->elems[i].offset > 0 ? l->elems[i].offset : 0;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
    return sum;
}

START_TEST(consumer_commits_offsets_after_effects)
{
    rd_kafka_mock_topic_create(mk.mc, "t.resume", 2, 1);
    cm_kafka_producer *p = producer(NULL, 0);
    char id[CM_ID_SIZE];
    for (int i = 0; i < 10; i++) {
        cm_kafka_msg m = event("t.resume", i % 2 ? "a" : "b", "x", id);
        ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    }
    handler_state st = {0};
    cm_consumer *c = start_consumer(p, "t.resume", &st, NULL);
    wait_handled(c, 10);
    /* committed in the background while running, */
    long long until = mk_now_ms() + 10000;
    while (committed_sum("t.resume", 2) < 10) {
        ck_assert_msg(mk_now_ms() < until, "offsets not committed while running");
        mk_sleep_ms(100);
    }
    for (int i = 0; i < 4; i++) {
        cm_kafka_msg m = event("t.resume", "a", "y", id);
        ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    }
    wait_handled(c, 14);
    /* and at stop, at once */
    cm_consumer_free(c);
    ck_assert_int_eq(committed_sum("t.resume", 2), 14);
    cm_kafka_producer_free(p, 1000);
    ck_assert_int_eq(atomic_load(&st.calls), 14);
}
END_TEST

START_TEST(consumer_skips_types_it_does_not_act_on)
{
    rd_kafka_mock_topic_create(mk.mc, "t.types", 2, 1);
    cm_kafka_producer *p = producer(NULL, 0);
    char id[CM_ID_SIZE];
    for (int i = 0; i < 20; i++) {
        cm_kafka_msg m = event("t.types", i % 4 < 2 ? "a" : "b", "x", id);
        if (i % 2)
            m.type = "commerce.events.v1.Other"; /* the handler would fail the test */
        ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    }
    static const char *const only[] = {"commerce.events.v1.Test", NULL};
    consumer_types = only;
    cm_metrics *metrics = cm_metrics_new();
    handler_state st = {0};
    cm_consumer *c = start_consumer(p, "t.types", &st, metrics);
    consumer_types = NULL;
    wait_handled(c, 10);
    /* the skipped records' offsets are committed too */
    long long until = mk_now_ms() + 10000;
    while (committed_sum("t.types", 2) < 20) {
        ck_assert_msg(mk_now_ms() < until, "offsets of skipped records not committed");
        mk_sleep_ms(100);
    }
    cm_consumer_free(c);
    cm_kafka_producer_free(p, 1000);
    ck_assert_int_eq(atomic_load(&st.calls), 10);
    PGconn *a = pt_admin();
    char q[256];
    snprintf(q, sizeof q, "SELECT count(*) FROM %s.inbox WHERE consumer_group = 'g1'", schema);
    ck_assert_int_eq(pt_query_long(a, q), 10); /* no inbox rows for skipped records */
    PQfinish(a);
    cm_counter *sk = cm_metrics_counter(metrics, "consumer_processed_total", "",
                                        "topic=\"t.types\",group=\"g1\",result=\"skipped\"");
    ck_assert_uint_eq(cm_counter_value(sk), 10);
    cm_metrics_free(metrics);
}
END_TEST

/* a handler idempotent by itself: no inbox, every delivery handed over,
 * redeliveries in later batches too (one id twice in a batch is still
 * handed over once) */
START_TEST(idempotent_consumer_keeps_no_inbox)
{
    rd_kafka_mock_topic_create(mk.mc, "t.idem", 2, 1);
    cm_kafka_producer *p = producer(NULL, 0);
    char ids[20][CM_ID_SIZE], keys[20][8];
    for (int i = 0; i < 20; i++) {
        snprintf(keys[i], sizeof keys[i], "k%d", i % 4);
        cm_kafka_msg m = event("t.idem", keys[i], "x", ids[i]);
        ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
        if (i == 3) {
            /* the same record twice in a row: handed over once when
             * both land in one batch (counted a duplicate), twice when a
             * batch ends between them; which one is up to the fetches */
            char fresh[CM_ID_SIZE];
            cm_kafka_msg d = event("t.idem", keys[i], "x", fresh);
            d.id = ids[i];
            ck_assert_int_eq(cm_kafka_produce_sync(p, &d, NULL), 0);
        }
    }
    consumer_idempotent = 1;
    handler_state st = {0};
    cm_consumer *c = start_consumer(p, "t.idem", &st, NULL);
    consumer_idempotent = 0;
    wait_handled(c, 21);
    /* redeliveries after their events were applied (a relay restart):
     * handed to the handler again, which must absorb them itself */
    for (int i = 15; i < 20; i++) {
        char fresh[CM_ID_SIZE];
        cm_kafka_msg m = event("t.idem", keys[i], "x", fresh);
        m.id = ids[i];
        ck_assert_int_eq(cm_kafka_produce_sync(p, &m, NULL), 0);
    }
    wait_handled(c, 26);
    cm_consumer_stats s;
    cm_consumer_get_stats(c, &s);
    cm_consumer_free(c);
    cm_kafka_producer_free(p, 1000);
    ck_assert_uint_eq(s.applied + s.duplicates, 26);
    ck_assert_uint_le(s.duplicates, 1);
    ck_assert_uint_ge(s.applied, 25);
    ck_assert_int_eq(atomic_load(&st.calls), (int)s.applied);
    PGconn *a = pt_admin();
    char q[256];
    snprintf(q, sizeof q, "SELECT count(*) FROM %s.inbox", schema);
    ck_assert_int_eq(pt_query_long(a, q), 0);
    snprintf(q, sizeof q, "SELECT sum(n) FROM %s.effects", schema);
    ck_assert_int_eq(pt_query_long(a, q), (long)s.applied);
    PQfinish(a);
}
END_TEST

static Suite *kafka_suite(void)
{
    Suite *s = suite_create("kafka");
    TCase *prod = tcase_create("producer");
    tcase_add_checked_fixture(prod, cluster_up, cluster_down);
    tcase_set_timeout(prod, 60);
    tcase_add_test(prod, produce_sync_carries_cloudevents_headers);
    tcase_add_test(prod, batch_reports_every_message_in_partition_order);
    tcase_add_test(prod, produce_refuses_invalid_messages);
    tcase_add_test(prod, permanent_broker_error_fails_the_message);
    tcase_add_test(prod, transient_broker_errors_are_retried);
    tcase_add_test(prod, broker_outage_delays_but_delivers_in_order);
    tcase_add_test(prod, message_timeout_reports_timed_out);
    tcase_add_test(prod, purge_cancels_waiting_messages);
    tcase_add_test(prod, time_is_rfc3339_utc_with_milliseconds);
    suite_add_tcase(s, prod);

    TCase *cons = tcase_create("consumer");
    tcase_add_checked_fixture(cons, fresh_schema, drop_schema);
    tcase_set_timeout(cons, 90);
    tcase_add_test(cons, consumer_applies_each_event_once);
    tcase_add_test(cons, consumer_dead_letters_and_does_not_block_the_partition);
    tcase_add_test(cons, consumer_retries_transient_errors);
    tcase_add_test(cons, consumer_commits_offsets_after_effects);
    tcase_add_test(cons, consumer_skips_types_it_does_not_act_on);
    tcase_add_test(cons, consumer_batches_and_isolates_a_failing_event);
    tcase_add_test(cons, idempotent_consumer_keeps_no_inbox);
    suite_add_tcase(s, cons);
    return s;
}

int main(void)
{
    if (pt_init("test_kafka_mock"))
        return EXIT_FAILURE;
    dsn = pt_dsn;
    snprintf(schema, sizeof schema, "test_kafka_%ld", (long)getpid());
    return pt_run(kafka_suite());
}
