/*
 * cm_outbox against the private postgres (PG_DSN) and librdkafka's mock
 * cluster: rows written in transactions come out of kafka once, in per-key
 * order, with their headers; late commits, a second replica, a killed
 * connection, a broker outage and an oversize row. every test works in
 * schema test_outbox_<pid>.
 */
#include "cm_db.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_kafka.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "cm_outbox.h"
#include "mock_kafka.h"

#include <check.h>

#include "pg_test.h"
#include <libpq-fe.h>
#include <stdarg.h>
#include <unistd.h>

#define NKEYS 7

static const char *dsn;
static char schema[64];
static mk_cluster mk;
static int seq[NKEYS]; /* next per-key sequence number the writer uses */

static long query_long(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* one number from a query; fmt gets the schema name as its arguments */
static long query_long(const char *fmt, ...)
{
    char q[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q, sizeof q, fmt, ap);
    va_end(ap);
    PGconn *c = pt_admin();
    PGresult *r = PQexec(c, q);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "%s: %s", q,
                  PQerrorMessage(c));
    long v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    PQfinish(c);
    return v;
}

static cm_db *connect_db(void)
{
    cm_db *db;
    char err[512];
    ck_assert_msg(cm_db_connect(&db, dsn, schema, err, sizeof err) == 0, "%s", err);
    return db;
}

static void setup(void)
{
    ck_assert_int_eq(mk_start(&mk, 1), 0);
    rd_kafka_mock_topic_create(mk.mc, "t.events", 3, 1);
    memset(seq, 0, sizeof seq);
    PGconn *c = pt_admin();
    char q[512];
    snprintf(q, sizeof q, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    pt_sql(c, q);
    PQfinish(c);
    cm_db *db = connect_db();
    char err[512];
    ck_assert_msg(cm_db_migrate_component(db, schema, "outbox", cm_outbox_migrations,
                                          cm_outbox_migrations_count, err, sizeof err) == 0,
                  "%s", err);
    cm_db_free(db);
    /* by default the relay deletes a row once kafka acknowledged it: this
     * log of deleted rows lets the tests count what was published in
     * either mode (marked rows + rows deleted unmarked) and keep the ids */
    c = pt_admin();
    snprintf(q, sizeof q, "CREATE TABLE %s.outbox_gone (id bigint, key text, was_marked boolean)",
             schema);
    pt_sql(c, q);
    snprintf(q, sizeof q,
             "CREATE FUNCTION %s.outbox_gone() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
             "INSERT INTO %s.outbox_gone VALUES (OLD.id, OLD.key, OLD.published_at IS NOT NULL); "
             "RETURN OLD; END $$",
             schema, schema);
    pt_sql(c, q);
    snprintf(q, sizeof q,
             "CREATE TRIGGER outbox_gone AFTER DELETE ON %s.outbox FOR EACH ROW EXECUTE "
             "FUNCTION %s.outbox_gone()",
             schema, schema);
    pt_sql(c, q);
    PQfinish(c);
}

static void teardown(void)
{
    PGconn *c = pt_admin();
    char q[256];
    snprintf(q, sizeof q, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    pt_sql(c, q);
    PQfinish(c);
    mk_stop(&mk);
}

static cm_kafka_producer *producer(const char *const *conf)
{
    cm_kafka_producer *p = NULL;
    char err[256];
    cm_kafka_producer_opts o = {.brokers = mk.brokers, .client_id = "test-outbox", .conf = conf};
    ck_assert_msg(cm_kafka_producer_new_opts(&p, &o, err, sizeof err) == 0, "%s", err);
    return p;
}

/* the next relay's idle poll (relay() below). its retention is the
 * default, 0: rows are deleted as they are acknowledged */
static int relay_poll_ms = 200;

static int relay_sweep_ms; /* 0: the relay's default */

static cm_outbox_relay *relay(cm_kafka_producer *p, cm_metrics *m, int batch)
{
    cm_outbox_relay *r = NULL;
    char err[256];
    cm_outbox_relay_opts o = {
        .sweep_ms = relay_sweep_ms,
        .dsn = dsn,
        .schema = schema,
        .producer = p,
        .metrics = m,
        .batch_size = batch,
        .poll_ms = relay_poll_ms,
        .leader_retry_ms = 200,
        .backoff_max_ms = 500,
    };
    ck_assert_msg(cm_outbox_relay_start(&r, &o, err, sizeof err) == 0, "%s", err);
    return r;
}

/* ---- writing events ---- */

typedef struct add_tx {
    int n;
    int rc;
} add_tx;

static int add_some(cm_db *db, void *arg)
{
    add_tx *t = arg;
    for (int i = 0; i < t->n; i++) {
        /* like a service: lock the aggregate's row, then write its event */
        int k = i % NKEYS;
        char key[8], payload[32], id[CM_ID_SIZE];
        snprintf(key, sizeof key, "k%d", k);
        snprintf(payload, sizeof payload, "%s:%d", key, seq[k]);
        ck_assert_int_eq(cm_id_uuid7(id), 0);
        const char *const extra[] = {"x-origin", "test", NULL};
        cm_outbox_event ev = {
            .event_id = id,
            .tenant_id = "t1",
            .topic = "t.events",
            .key = key,
            .type = "commerce.events.v1.Test",
            .source = "/commerce/test",
            .payload = payload,
            .len = strlen(payload),
            .traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            .headers = extra,
        };
        int rc = cm_outbox_add(db, &ev);
        if (rc)
            return rc;
        seq[k]++;
    }
    return 0;
}

static void add_events(cm_db *db, int n)
{
    int saved[NKEYS];
    memcpy(saved, seq, sizeof seq);
    add_tx t = {.n = n};
    int rc = cm_db_tx(db, NULL, 1, add_some, &t);
    if (rc)
        memcpy(seq, saved, sizeof seq); /* rolled back */
    ck_assert_int_eq(rc, 0);
}

static int total_events(void)
{
    int n = 0;
    for (int k = 0; k < NKEYS; k++)
        n += seq[k];
    return n;
}

/* marked published (with a retention), or deleted unmarked (without) */
static long published_rows(void)
{
    return query_long("SELECT (SELECT count(*) FROM %s.outbox WHERE published_at IS NOT NULL) + "
                      "(SELECT count(*) FROM %s.outbox_gone WHERE NOT was_marked)",
                      schema, schema);
}

static void wait_published(long n, int timeout_ms)
{
    long long until = mk_now_ms() + timeout_ms;
    long got = 0;
    while ((got = published_rows()) < n) {
        ck_assert_msg(mk_now_ms() < until, "published %ld of %ld rows", got, n);
        mk_sleep_ms(50);
    }
}

/* every event exactly once (dups allowed when allow_dups), in per-key order */
static void check_topic(int expect, int allow_dups)
{
    mk_record *recs;
    size_t n = mk_read_topic(mk.brokers, "t.events", 3, (size_t)expect + 1000, 3000, &recs);
    int next[NKEYS] = {0};
    int seen = 0;
    if (getenv("TEST_DUMP"))
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, "p%d o%lld %s\n", (int)recs[i].partition, (long long)recs[i].offset,
                    recs[i].payload);
    for (size_t i = 0; i < n; i++) {
        int k = -1, s = -1;
        ck_assert_int_eq(sscanf(recs[i].payload, "k%d:%d", &k, &s), 2);
        ck_assert(k >= 0 && k < NKEYS);
        if (s < next[k]) {
            ck_assert_msg(allow_dups, "k%d:%d delivered twice", k, s);
            continue;
        }
        ck_assert_msg(s == next[k], "k%d: got %d, expected %d (order broken)", k, s, next[k]);
        next[k]++;
        seen++;
        ck_assert_str_eq(mk_header(&recs[i], "ce_type"), "commerce.events.v1.Test");
        ck_assert_str_eq(mk_header(&recs[i], "x-origin"), "test");
        ck_assert_int_eq(cm_id_is_uuid(mk_header(&recs[i], "ce_id")), 1);
    }
    mk_records_free(recs, n);
    ck_assert_int_eq(seen, expect);
    if (!allow_dups)
        ck_assert_uint_eq(n, (size_t)expect);
}

static void wait_leader(cm_outbox_relay *r, int timeout_ms)
{
    long long until = mk_now_ms() + timeout_ms;
    while (!cm_outbox_relay_is_leader(r)) {
        ck_assert_msg(mk_now_ms() < until, "relay did not become leader");
        mk_sleep_ms(20);
    }
}

/* ---- tests ---- */

START_TEST(migrate_component_keeps_its_own_history)
{
    cm_db *db = connect_db();
    char err[512];
    ck_assert_int_eq(cm_db_migrate_component(db, schema, "outbox", cm_outbox_migrations,
                                             cm_outbox_migrations_count, err, sizeof err),
                     0);
    ck_assert_int_eq(cm_db_migrate(db, schema, NULL, 0, err, sizeof err), 0);
    ck_assert_int_eq(cm_db_migrate_component(db, schema, "Bad-Name", cm_outbox_migrations,
                                             cm_outbox_migrations_count, err, sizeof err),
                     CM_EINVAL);
    cm_db_free(db);
    ck_assert_int_eq(query_long("SELECT count(*) FROM %s.schema_migrations_outbox", schema),
                     (long)cm_outbox_migrations_count);
    ck_assert_int_eq((long)cm_outbox_migrations_count, 3);
    /* an id is taken after the row's transaction has an xid (0002) */
    ck_assert_int_eq(query_long("SELECT count(*) FROM information_schema.columns WHERE "
                                "table_schema = '%s' AND table_name = 'outbox' AND "
                                "column_name = 'id' AND column_default LIKE '%%outbox_next_id()'",
                                schema),
                     1);
    ck_assert_int_eq(query_long("SELECT count(*) FROM %s.schema_migrations", schema), 0);
}
END_TEST

static int add_one(cm_db *db, void *arg)
{
    return cm_outbox_add(db, arg);
}

START_TEST(add_needs_a_transaction_and_a_valid_event)
{
    cm_db *db = connect_db();
    char id[CM_ID_SIZE];
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    cm_outbox_event ev = {
        .event_id = id,
        .tenant_id = "t1",
        .topic = "t.events",
        .key = "k",
        .type = "commerce.events.v1.Test",
        .source = "/commerce/test",
        .payload = "\0binary\xff",
        .len = 8,
    };
    ck_assert_int_eq(cm_outbox_add(db, &ev), CM_EINVAL); /* no transaction */
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, add_one, &ev), 0);
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, add_one, &ev), CM_EEXIST);
    cm_outbox_event bad = ev;
    bad.event_id = "not-a-uuid";
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, add_one, &bad), CM_EINVAL);
    bad = ev;
    bad.topic = "no spaces";
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, add_one, &bad), CM_EINVAL);
    char id2[CM_ID_SIZE];
    ck_assert_int_eq(cm_id_uuid7(id2), 0);
    bad = ev;
    bad.event_id = id2;
    const char *const reserved[] = {"ce_id", "x", NULL};
    bad.headers = reserved;
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, add_one, &bad), CM_EINVAL);
    cm_db_free(db);
    /* the payload is stored byte for byte */
    ck_assert_int_eq(
        query_long("SELECT count(*) FROM %s.outbox WHERE payload = '\\x0062696e617279ff'::bytea",
                   schema),
        1);
}
END_TEST

START_TEST(relay_publishes_once_in_key_order_with_headers)
{
    cm_db *db = connect_db();
    for (int i = 0; i < 5; i++)
        add_events(db, 100);
    cm_kafka_producer *p = producer(NULL);
    cm_metrics *m = cm_metrics_new();
    cm_outbox_relay *r = relay(p, m, 64);
    wait_published(500, 30000);
    add_events(db, 30); /* woken by NOTIFY */
    wait_published(530, 30000);
    mk_sleep_ms(1200); /* one metrics round after the last batch */
    cm_outbox_relay_free(r);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(db);
    check_topic(total_events(), 0);

    cm_counter *pub = cm_metrics_counter(m, "outbox_published_total", "", NULL);
    ck_assert_uint_eq(cm_counter_value(pub), 530);
    ck_assert(cm_gauge_value(cm_metrics_gauge(m, "outbox_backlog", "", NULL)) == 0);
    char *text = NULL;
    ck_assert_int_eq(cm_metrics_render(m, &text, NULL), 0);
    ck_assert_ptr_nonnull(strstr(text, "outbox_publish_latency_seconds_count 530"));
    free(text);
    cm_metrics_free(m);
}
END_TEST

/* a batch in one statement, like a group-committing service writes it */
static int add_batch_fn(cm_db *db, void *arg)
{
    add_tx *t = arg;
    cm_outbox_event *evs = calloc((size_t)t->n, sizeof *evs);
    char(*ids)[CM_ID_SIZE] = calloc((size_t)t->n, CM_ID_SIZE);
    char(*keys)[8] = calloc((size_t)t->n, 8);
    char(*payloads)[32] = calloc((size_t)t->n, 32);
    int next[NKEYS];
    memcpy(next, seq, sizeof seq);
    static const char *const extra[] = {"x-origin", "test", NULL};
    for (int i = 0; i < t->n; i++) {
        int k = i % NKEYS;
        snprintf(keys[i], 8, "k%d", k);
        snprintf(payloads[i], 32, "%s:%d", keys[i], next[k]++);
        ck_assert_int_eq(cm_id_uuid7(ids[i]), 0);
        evs[i] = (cm_outbox_event){.event_id = ids[i],
                                   .tenant_id = "t1",
                                   .topic = "t.events",
                                   .key = keys[i],
                                   .type = "commerce.events.v1.Test",
                                   .source = "/commerce/test",
                                   .payload = payloads[i],
                                   .len = strlen(payloads[i]),
                                   .traceparent =
                                       "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                   .headers = extra};
    }
    if (t->rc) /* one bad event: nothing of the batch may be written */
        evs[t->n - 1].topic = "bad topic";
    int rc = cm_outbox_add_batch(db, evs, (size_t)t->n);
    if (rc == 0)
        memcpy(seq, next, sizeof seq);
    free(payloads);
    free(keys);
    free(ids);
    free(evs);
    return rc;
}

/* a leading relay whose poll is far longer than any test, already idle:
 * only the wake-up after a commit can get a row published in time */
static cm_outbox_relay *waiting_relay(cm_kafka_producer *p, cm_metrics *m)
{
    relay_poll_ms = 60000;
    cm_outbox_relay *r = relay(p, m, 64);
    relay_poll_ms = 200;
    long long until = mk_now_ms() + 10000;
    while (!cm_outbox_relay_is_leader(r) && mk_now_ms() < until)
        mk_sleep_ms(20);
    ck_assert(cm_outbox_relay_is_leader(r));
    mk_sleep_ms(300); /* its first fetch found nothing: it is waiting now */
    return r;
}

START_TEST(batch_add_is_published_in_order_and_all_or_nothing)
{
    cm_db *db = connect_db();
    cm_kafka_producer *p = producer(NULL);
    cm_metrics *m = cm_metrics_new();
    cm_outbox_relay *r = waiting_relay(p, m);
    add_tx bad = {.n = 20, .rc = 1};
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, add_batch_fn, &bad), CM_EINVAL);
    ck_assert_int_eq(query_long("SELECT count(*) FROM %s.outbox", schema), 0);
    add_tx good = {.n = 300};
    long long t0 = mk_now_ms();
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, add_batch_fn, &good), 0);
    /* woken after the commit through its wake pipe, not by its poll */
    wait_published(300, 30000);
    ck_assert_msg(mk_now_ms() - t0 < 5000, "published after %lld ms", mk_now_ms() - t0);
    cm_outbox_relay_free(r);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(db);
    check_topic(total_events(), 0);
    cm_metrics_free(m);
}
END_TEST

/* two structured-mode events: one as a partner's topic gets it (the
 * content type and the extra headers only), one asking for the envelope in
 * binary-mode headers too (an internal topic: the partner feed reads it
 * without parsing the value) */
static int add_structured_fn(cm_db *db, void *arg)
{
    char(*ids)[CM_ID_SIZE] = arg;
    static const char body[] = "{\"specversion\":\"1.0\"}";
    cm_outbox_event evs[2];
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(cm_id_uuid7(ids[i]), 0);
        evs[i] = (cm_outbox_event){
            .event_id = ids[i],
            .tenant_id = "t1",
            .topic = "t.ce",
            .key = "ch-1",
            .type = "com.commerce.test.v1.thing",
            .source = "/commerce/test",
            .payload = body,
            .len = strlen(body),
            .content_type = "application/cloudevents+json; charset=UTF-8",
            .traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            .occurred_at_ms = 1765000000123,
            .envelope_headers = i == 1,
        };
    }
    return cm_outbox_add_batch(db, evs, 2);
}

START_TEST(structured_events_carry_the_envelope_in_headers_only_when_asked)
{
    rd_kafka_mock_topic_create(mk.mc, "t.ce", 1, 1);
    cm_db *db = connect_db();
    char ids[2][CM_ID_SIZE];
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, add_structured_fn, ids), 0);
    cm_kafka_producer *p = producer(NULL);
    cm_metrics *m = cm_metrics_new();
    cm_outbox_relay *r = relay(p, m, 64);
    wait_published(2, 30000);
    cm_outbox_relay_free(r);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(db);
    mk_record *recs;
    size_t n = mk_read_topic(mk.brokers, "t.ce", 1, 2, 10000, &recs);
    ck_assert_uint_eq(n, 2);
    for (size_t i = 0; i < 2; i++)
        ck_assert_str_eq(mk_header(&recs[i], "content-type"),
                         "application/cloudevents+json; charset=UTF-8");
    /* as the contract has it for partners: the value says it all */
    const char *const envelope[] = {"ce_id",   "ce_specversion", "ce_type",    "ce_source",
                                    "ce_time", "tenant-id",      "traceparent"};
    for (size_t h = 0; h < sizeof envelope / sizeof envelope[0]; h++)
        ck_assert_ptr_null(mk_header(&recs[0], envelope[h]));
    /* asked for: the envelope again, equal to the row's fields */
    ck_assert_str_eq(mk_header(&recs[1], "ce_id"), ids[1]);
    ck_assert_str_eq(mk_header(&recs[1], "ce_specversion"), "1.0");
    ck_assert_str_eq(mk_header(&recs[1], "ce_type"), "com.commerce.test.v1.thing");
    ck_assert_str_eq(mk_header(&recs[1], "ce_source"), "/commerce/test");
    ck_assert_str_eq(mk_header(&recs[1], "ce_time"), "2025-12-06T05:46:40.123Z");
    ck_assert_str_eq(mk_header(&recs[1], "tenant-id"), "t1");
    ck_assert_str_eq(mk_header(&recs[1], "traceparent"),
                     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    ck_assert_str_eq(recs[1].payload, "{\"specversion\":\"1.0\"}");
    mk_records_free(recs, n);
    cm_metrics_free(m);
}
END_TEST

/* thousands of one-row commits in a row, each waking the relay through
 * its pipe, with a poll far longer than the test: every one is published
 * soon after its commit. (the wake-up flag was once cleared before the pipe
 * was drained: a kick landing between the two left it set over an empty
 * pipe, and from then on only the poll found new rows) */
START_TEST(wake_ups_keep_working_over_many_commits)
{
    cm_db *db = connect_db();
    cm_kafka_producer *p = producer(NULL);
    cm_metrics *m = cm_metrics_new();
    cm_outbox_relay *r = waiting_relay(p, m);
    enum { N = 3000 };
    long long slow = 0;
    for (int i = 0; i < N; i++) {
        add_events(db, 1);
        if (i % 500 == 499) {
            /* every row so far goes out without the poll's help */
            long long t0 = mk_now_ms();
            wait_published(i + 1, 10000);
            if (mk_now_ms() - t0 > slow)
                slow = mk_now_ms() - t0;
        }
    }
    ck_assert_msg(slow < 2000, "a batch of rows waited %lld ms for the relay", slow);
    cm_outbox_relay_free(r);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(db);
    check_topic(total_events(), 0);
    cm_metrics_free(m);
}
END_TEST

START_TEST(rows_committed_late_are_not_skipped)
{
    cm_db *slow = connect_db();
    cm_db *fast = connect_db();
    cm_kafka_producer *p = producer(NULL);
    cm_metrics *m = cm_metrics_new();
    /* no sweep from the first row within the test: the lower bound alone
     * must let the late row through (it holds an id the horizon has not
     * settled while its transaction runs) */
    relay_sweep_ms = 600000;
    cm_outbox_relay *r = relay(p, m, 64);
    relay_sweep_ms = 0;
    /* slow takes the smaller id (k0:0) and commits last */
    ck_assert_int_eq(cm_db_exec(slow, "begin", "BEGIN", 0, NULL, NULL), 0);
    add_tx t = {.n = 1};
    ck_assert_int_eq(add_some(slow, &t), 0);
    /* fast writes k1:0 meanwhile, and is published first */
    char id[CM_ID_SIZE];
    const char *payload = "k1:0";
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    const char *const extra[] = {"x-origin", "test", NULL};
    cm_outbox_event ev = {.event_id = id,
                          .tenant_id = "t1",
                          .topic = "t.events",
                          .key = "k1",
                          .type = "commerce.events.v1.Test",
                          .source = "/commerce/test",
                          .payload = payload,
                          .len = strlen(payload),
                          .headers = extra};
    ck_assert_int_eq(cm_db_tx(fast, NULL, 1, add_one, &ev), 0);
    seq[1] = 1;
    wait_published(1, 10000);
    ck_assert_int_eq(
        query_long("SELECT count(*) FROM %s.outbox WHERE published_at IS NULL", schema), 0);
    /* a second of relay rounds and horizon probes while slow is open: none
     * may settle its id */
    mk_sleep_ms(1000);
    /* the smaller id becomes visible after a larger one went out: still sent */
    ck_assert_int_eq(cm_db_exec(slow, "commit", "COMMIT", 0, NULL, NULL), 0);
    wait_published(2, 10000);
    cm_outbox_relay_free(r);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(slow);
    cm_db_free(fast);
    cm_metrics_free(m);
    check_topic(2, 0);
    ck_assert_int_eq(query_long("SELECT count(*) FROM %s.outbox_gone o1 JOIN %s.outbox_gone o2 ON "
                                "o1.id < o2.id WHERE o1.key = 'k0' AND o2.key = 'k1'",
                                schema, schema),
                     1);
}
END_TEST

START_TEST(two_relays_publish_each_row_once)
{
    cm_kafka_producer *p = producer(NULL);
    cm_metrics *m1 = cm_metrics_new(), *m2 = cm_metrics_new();
    cm_outbox_relay *a = relay(p, m1, 50);
    cm_outbox_relay *b = relay(p, m2, 50);
    long long until = mk_now_ms() + 5000;
    while (!cm_outbox_relay_is_leader(a) && !cm_outbox_relay_is_leader(b)) {
        ck_assert(mk_now_ms() < until);
        mk_sleep_ms(20);
    }
    ck_assert_int_eq(cm_outbox_relay_is_leader(a) + cm_outbox_relay_is_leader(b), 1);
    cm_db *db = connect_db();
    for (int i = 0; i < 6; i++)
        add_events(db, 50);
    wait_published(300, 30000);
    ck_assert_int_eq(cm_outbox_relay_is_leader(a) + cm_outbox_relay_is_leader(b), 1);
    cm_outbox_relay *leader = cm_outbox_relay_is_leader(a) ? a : b;
    cm_outbox_relay *standby = leader == a ? b : a;
    ck_assert_uint_eq(cm_outbox_relay_published(leader), 300);
    ck_assert_uint_eq(cm_outbox_relay_published(standby), 0);

    /* the leader goes away: the standby takes over */
    cm_outbox_relay_stop(leader, 1000);
    wait_leader(standby, 5000);
    add_events(db, 100);
    wait_published(400, 30000);
    ck_assert_uint_eq(cm_outbox_relay_published(standby), 100);
    cm_outbox_relay_free(a);
    cm_outbox_relay_free(b);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(db);
    check_topic(total_events(), 0);
    cm_metrics_free(m1);
    cm_metrics_free(m2);
}
END_TEST

START_TEST(relay_recovers_from_a_killed_connection)
{
    cm_kafka_producer *p = producer(NULL);
    cm_outbox_relay *r = relay(p, NULL, 100);
    wait_leader(r, 5000);
    cm_db *db = connect_db();
    add_events(db, 100);
    wait_published(100, 30000);
    /* every session of this schema's application name: the relay's too */
    char q[256];
    snprintf(q, sizeof q,
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
             "application_name = 'commerce-%s'",
             schema);
    PGconn *c = pt_admin();
    pt_sql(c, q);
    PQfinish(c);
    add_events(db, 100); /* cm_db_tx reconnects the writer */
    wait_published(200, 30000);
    ck_assert_int_eq(cm_outbox_relay_is_leader(r), 1);
    cm_outbox_relay_free(r);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(db);
    check_topic(total_events(), 0);
}
END_TEST

START_TEST(relay_survives_a_broker_outage)
{
    cm_kafka_producer *p = producer(NULL);
    cm_metrics *m = cm_metrics_new();
    cm_outbox_relay *r = relay(p, m, 64);
    wait_leader(r, 5000);
    cm_db *db = connect_db();
    add_events(db, 50);
    wait_published(50, 30000);
    rd_kafka_mock_broker_set_down(mk.mc, -1);
    for (int i = 0; i < 4; i++)
        add_events(db, 50);
    mk_sleep_ms(2500);
    ck_assert_int_eq(
        query_long("SELECT count(*) FROM %s.outbox WHERE published_at IS NULL", schema), 200);
    /* the gauges show the outage */
    ck_assert(cm_gauge_value(cm_metrics_gauge(m, "outbox_backlog", "", NULL)) == 200);
    ck_assert(cm_gauge_value(cm_metrics_gauge(m, "outbox_oldest_unsent_age_seconds", "", NULL)) >
              1.0);
    rd_kafka_mock_broker_set_up(mk.mc, -1);
    wait_published(250, 30000);
    cm_outbox_relay_free(r);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(db);
    check_topic(total_events(), 0);
    cm_metrics_free(m);
}
END_TEST

START_TEST(stop_during_an_outage_leaves_rows_unsent)
{
    cm_kafka_producer *p = producer(NULL);
    cm_outbox_relay *r = relay(p, NULL, 64);
    wait_leader(r, 5000);
    rd_kafka_mock_broker_set_down(mk.mc, -1);
    cm_db *db = connect_db();
    add_events(db, 20);
    mk_sleep_ms(500);
    long long t0 = mk_now_ms();
    cm_outbox_relay_stop(r, 500); /* purges the batch after 500 ms */
    ck_assert_int_lt(mk_now_ms() - t0, 5000);
    ck_assert_int_eq(
        query_long("SELECT count(*) FROM %s.outbox WHERE published_at IS NULL", schema), 20);
    cm_outbox_relay_free(r);
    rd_kafka_mock_broker_set_up(mk.mc, -1);
    /* a new relay (a restart) sends them */
    r = relay(p, NULL, 64);
    wait_published(20, 30000);
    cm_outbox_relay_free(r);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(db);
    check_topic(total_events(), 1);
}
END_TEST

START_TEST(oversize_row_is_parked_and_the_rest_flow)
{
    const char *const conf[] = {"message.max.bytes", "4000", NULL};
    cm_kafka_producer *p = producer(conf);
    cm_metrics *m = cm_metrics_new();
    cm_db *db = connect_db();
    add_events(db, 3);
    char id[CM_ID_SIZE];
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    char *big = calloc(1, 10000);
    memset(big, 'x', 9999);
    cm_outbox_event ev = {.event_id = id,
                          .tenant_id = "t1",
                          .topic = "t.events",
                          .key = "big",
                          .type = "commerce.events.v1.Test",
                          .source = "/commerce/test",
                          .payload = big,
                          .len = 9999};
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, add_one, &ev), 0);
    free(big);
    add_events(db, 3);
    cm_outbox_relay *r = relay(p, m, 64);
    wait_published(6, 30000);
    mk_sleep_ms(300);
    cm_outbox_relay_free(r);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(db);
    check_topic(6, 0);
    ck_assert_int_eq(query_long("SELECT count(*) FROM %s.outbox WHERE failed_at IS NOT NULL AND "
                                "key = 'big' AND last_error <> ''",
                                schema),
                     1);
    ck_assert_uint_eq(cm_counter_value(cm_metrics_counter(m, "outbox_failed_total", "", NULL)), 1);
    cm_metrics_free(m);
}
END_TEST

START_TEST(published_rows_are_deleted_after_retention)
{
    cm_kafka_producer *p = producer(NULL);
    cm_outbox_relay *r = NULL;
    char err[256];
    cm_outbox_relay_opts o = {
        .dsn = dsn,
        .schema = schema,
        .producer = p,
        .metrics = NULL,
        .poll_ms = 200,
        .retention_s = 1,
    };
    ck_assert_int_eq(cm_outbox_relay_start(&r, &o, err, sizeof err), 0);
    cm_db *db = connect_db();
    add_events(db, 10);
    long long until = mk_now_ms() + 15000;
    while (query_long("SELECT count(*) FROM %s.outbox", schema) > 0) {
        ck_assert_msg(mk_now_ms() < until, "published rows were not deleted");
        mk_sleep_ms(100);
    }
    cm_outbox_relay_free(r);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(db);
    check_topic(10, 0);
    /* kept marked first, deleted by the cleanup afterwards */
    ck_assert_int_eq(query_long("SELECT count(*) FROM %s.outbox_gone WHERE was_marked", schema),
                     10);
}
END_TEST

START_TEST(acknowledged_rows_are_deleted_by_default)
{
    /* rows a relay with a retention left marked (an earlier setting):
     * deleted when this relay takes the lead, never sent again */
    cm_db *db = connect_db();
    char q[512];
    snprintf(q, sizeof q,
             "INSERT INTO outbox (event_id, tenant_id, topic, key, type, source, payload, "
             "published_at) SELECT gen_random_uuid(), 't1', 't.events', 'old', "
             "'commerce.events.v1.Test', '/commerce/test', '\\x00', now() - interval '1 hour' "
             "FROM generate_series(1, 5)");
    ck_assert_int_eq(cm_db_exec(db, "leftovers", q, 0, NULL, NULL), 0);
    cm_kafka_producer *p = producer(NULL);
    cm_metrics *m = cm_metrics_new();
    cm_outbox_relay *r = relay(p, m, 64);
    for (int i = 0; i < 3; i++)
        add_events(db, 40);
    long long until = mk_now_ms() + 30000;
    while (query_long("SELECT count(*) FROM %s.outbox", schema) > 0) {
        ck_assert_msg(mk_now_ms() < until, "acknowledged rows were not deleted");
        mk_sleep_ms(50);
    }
    ck_assert_uint_eq(cm_outbox_relay_published(r), 120);
    cm_outbox_relay_free(r);
    cm_kafka_producer_free(p, 1000);
    cm_db_free(db);
    /* every row went out once, in key order, before its row was deleted:
     * none was ever kept marked */
    check_topic(120, 0);
    ck_assert_int_eq(query_long("SELECT count(*) FROM %s.outbox_gone WHERE NOT was_marked", schema),
                     120);
    ck_assert_int_eq(query_long("SELECT count(*) FROM %s.outbox_gone WHERE was_marked AND key = "
                                "'old'",
                                schema),
                     5);
    ck_assert_uint_eq(cm_counter_value(cm_metrics_counter(m, "outbox_published_total", "", NULL)),
                      120);
    cm_metrics_free(m);
}
END_TEST

/* the fixed-text batch insert: rows in order, each payload cut from the
 * blob exactly, a row's own traceparent or none */
START_TEST(rows_insert_writes_each_row_with_its_payload_and_trace)
{
    cm_db *db = connect_db();
    cm_outbox_rows rows;
    cm_outbox_rows_init(&rows);
    char ids[3][CM_ID_SIZE];
    static const char *const payloads[] = {"first", "", "third \"quoted\" \\ {x}"};
    static const char *const traces[] = {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                         NULL,
                                         "00-11111111111111111111111111111111-1111111111111111-01"};
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(cm_id_uuid7(ids[i]), 0);
        cm_outbox_event ev = {.event_id = ids[i],
                              .tenant_id = "t1",
                              .key = i == 1 ? "k\"1" : "k0",
                              .type = "commerce.events.v1.Test",
                              .payload = payloads[i],
                              .len = strlen(payloads[i]),
                              .occurred_at_ms = i == 2 ? 0 : 1700000000123LL,
                              .traceparent = traces[i]};
        cm_outbox_rows_add(&rows, &ev);
    }
    ck_assert_int_eq(cm_outbox_rows_close(&rows), 0);
    const char *p[CM_OUTBOX_ROWS_NPARAMS + 2];
    cm_outbox_rows_params(&rows, p);
    p[CM_OUTBOX_ROWS_NPARAMS] = "t.events";
    p[CM_OUTBOX_ROWS_NPARAMS + 1] = "/commerce/test";
    int lengths[CM_OUTBOX_ROWS_NPARAMS + 2] = {0}, formats[CM_OUTBOX_ROWS_NPARAMS + 2] = {0};
    lengths[CM_OUTBOX_ROWS_BLOB] = (int)rows.blob.len;
    formats[CM_OUTBOX_ROWS_BLOB] = 1;
    PGresult *r = NULL;
    ck_assert_int_eq(cm_db_exec_prepared(db, "rows test", "test_rows_insert",
                                         CM_OUTBOX_ROWS_INSERT("$1", "$2", "$3", "$4", "$5", "$6",
                                                               "$7", "$8", "$9", "$10", "$11"),
                                         CM_OUTBOX_ROWS_NPARAMS + 2, p, lengths, formats, &r),
                     0);
    ck_assert_int_eq(PQntuples(r), 3);
    PQclear(r);
    cm_outbox_rows_free(&rows);
    cm_db_free(db);
    PGconn *c = pt_admin();
    char q[512];
    snprintf(q, sizeof q,
             "SELECT event_id::text, key, convert_from(payload, 'UTF8'), coalesce(traceparent, "
             "'-'), topic, source, (occurred_at = to_timestamp(1700000000.123))::int "
             "FROM %s.outbox ORDER BY id",
             schema);
    PGresult *x = PQexec(c, q);
    ck_assert_int_eq(PQresultStatus(x), PGRES_TUPLES_OK);
    ck_assert_int_eq(PQntuples(x), 3);
    for (int i = 0; i < 3; i++) {
        ck_assert_str_eq(PQgetvalue(x, i, 0), ids[i]);
        ck_assert_str_eq(PQgetvalue(x, i, 1), i == 1 ? "k\"1" : "k0");
        ck_assert_str_eq(PQgetvalue(x, i, 2), payloads[i]);
        ck_assert_str_eq(PQgetvalue(x, i, 3), traces[i] ? traces[i] : "-");
        ck_assert_str_eq(PQgetvalue(x, i, 4), "t.events");
        ck_assert_str_eq(PQgetvalue(x, i, 5), "/commerce/test");
        ck_assert_str_eq(PQgetvalue(x, i, 6), i == 2 ? "0" : "1"); /* 0 ms: now() */
    }
    PQclear(x);
    PQfinish(c);
}
END_TEST

static Suite *outbox_suite(void)
{
    Suite *s = suite_create("outbox");
    TCase *tc = tcase_create("outbox");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, migrate_component_keeps_its_own_history);
    tcase_add_test(tc, add_needs_a_transaction_and_a_valid_event);
    tcase_add_test(tc, relay_publishes_once_in_key_order_with_headers);
    tcase_add_test(tc, rows_committed_late_are_not_skipped);
    tcase_add_test(tc, batch_add_is_published_in_order_and_all_or_nothing);
    tcase_add_test(tc, structured_events_carry_the_envelope_in_headers_only_when_asked);
    tcase_add_test(tc, wake_ups_keep_working_over_many_commits);
    tcase_add_test(tc, rows_insert_writes_each_row_with_its_payload_and_trace);
    tcase_add_test(tc, two_relays_publish_each_row_once);
    tcase_add_test(tc, relay_recovers_from_a_killed_connection);
    tcase_add_test(tc, relay_survives_a_broker_outage);
    tcase_add_test(tc, stop_during_an_outage_leaves_rows_unsent);
    tcase_add_test(tc, oversize_row_is_parked_and_the_rest_flow);
    tcase_add_test(tc, published_rows_are_deleted_after_retention);
    tcase_add_test(tc, acknowledged_rows_are_deleted_by_default);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (pt_init("test_outbox"))
        return EXIT_FAILURE;
    dsn = pt_dsn;
    snprintf(schema, sizeof schema, "test_outbox_%ld", (long)getpid());
    return pt_run(outbox_suite());
}
