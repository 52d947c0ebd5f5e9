/*
 * the partner topic end to end, read by a client that is not ours: events
 * of every commission type are written through the outbox as structured
 * cloudevents (cm_cloudevent_json), the relay publishes them to
 * commerce.commission.partner.v1 on KAFKA_BROKERS, then kcat reads the
 * topic and kafka/partner/validate.py --records checks every record of this
 * run against the json schema and the contract (key = channel id,
 * content-type application/cloudevents+json, no ce_* headers).
 */
#include "cm_cloudevents.h"
#include "cm_db.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_kafka.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "harness.h"

#include <check.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TOPIC "commerce.commission.partner.v1"

static const char *brokers;
static const char *const kinds[] = {"accrued", "payable", "settled", "clawed_back"};
enum { NKINDS = 4 };

/* ---- the envelope alone ---- */

START_TEST(envelope_has_the_contract_attributes)
{
    char id[CM_ID_SIZE];
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    cm_cloudevent ce = {
        .id = id,
        .source = "/commerce/commission",
        .type = "com.commerce.commission.v1.accrued",
        .time_ms = 1795400130112LL,
        .subject = "s-1",
        .tenant_id = "shop-cn-01",
        .partition_key = "partner-\"42\"",
    };
    char *out = NULL;
    size_t len = 0;
    ck_assert_int_eq(cm_cloudevent_json(&ce, "{\"channel_id\":\"partner-\\\"42\\\"\"}", &out, &len),
                     0);
    ck_assert_uint_eq(strlen(out), len);
    json_error_t jerr;
    json_t *doc = json_loads(out, 0, &jerr);
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "specversion")), "1.0");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "id")), id);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "time")), "2026-11-23T02:15:30.112Z");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "datacontenttype")),
                     "application/json");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "partitionkey")), "partner-\"42\"");
    /* absent optional attributes are left out, never null */
    ck_assert_ptr_null(json_object_get(doc, "traceparent"));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(doc, "data"), "channel_id")),
                     "partner-\"42\"");
    json_decref(doc);
    free(out);

    ck_assert_int_eq(cm_cloudevent_json(&ce, "[1]", &out, &len), CM_EINVAL);
    ck_assert_int_eq(cm_cloudevent_json(&ce, "{\"a\":", &out, &len), CM_EINVAL);
    ck_assert_ptr_null(out);
    ce.id = "not-a-uuid";
    ck_assert_int_eq(cm_cloudevent_json(&ce, "{}", &out, &len), CM_EINVAL);
    ce.id = id;
    ce.type = NULL;
    ck_assert_int_eq(cm_cloudevent_json(&ce, "{}", &out, &len), CM_EINVAL);

    ck_assert_int_eq(cm_cloudevent_is_structured(CM_CLOUDEVENTS_JSON_CONTENT_TYPE), 1);
    ck_assert_int_eq(cm_cloudevent_is_structured("application/cloudevents+json"), 1);
    ck_assert_int_eq(cm_cloudevent_is_structured("application/cloudevents-batch+json"), 0);
    ck_assert_int_eq(cm_cloudevent_is_structured("application/protobuf"), 0);
    ck_assert_int_eq(cm_cloudevent_is_structured(NULL), 0);
}
END_TEST

/* ---- through the outbox, the relay and the broker ---- */

typedef struct partner_tx {
    const char *channel;
    char ids[NKINDS][CM_ID_SIZE];
} partner_tx;

/* the example of a kind, with this run's channel id and the envelope's
 * attributes taken out: what the commission service will put in data */
static char *example_data(const char *kind, const char *channel, char *type, size_t typelen,
                          char *subject, size_t subjlen)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/examples/%s.json", PARTNER_DIR, kind);
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    ck_assert_msg(doc != NULL, "%s: %s", path, jerr.text);
    snprintf(type, typelen, "%s", json_string_value(json_object_get(doc, "type")));
    json_t *data = json_object_get(doc, "data");
    json_t *c = json_object_get(data, "commission");
    snprintf(subject, subjlen, "%s", json_string_value(json_object_get(c, "commission_id")));
    json_object_set_new(data, "channel_id", json_string(channel));
    json_object_set_new(c, "channel_id", json_string(channel));
    char *text = json_dumps(data, JSON_COMPACT);
    ck_assert_ptr_nonnull(text);
    json_decref(doc);
    return text;
}

static int write_events(cm_db *db, void *arg)
{
    partner_tx *t = arg;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    for (int i = 0; i < NKINDS; i++) {
        char type[128], subject[64];
        char *data = example_data(kinds[i], t->channel, type, sizeof type, subject, sizeof subject);
        cm_cloudevent ce = {
            .id = t->ids[i],
            .source = "/commerce/commission",
            .type = type,
            .time_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 + i,
            .subject = subject,
            .tenant_id = "shop-cn-01",
            .partition_key = t->channel,
            .traceparent =
                i == 0 ? "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" : NULL,
        };
        char *payload = NULL;
        size_t len = 0;
        int rc = cm_cloudevent_json(&ce, data, &payload, &len);
        free(data);
        if (rc)
            return rc;
        cm_outbox_event ev = {
            .event_id = t->ids[i],
            .tenant_id = "shop-cn-01",
            .topic = TOPIC,
            .key = t->channel,
            .type = type,
            .source = "/commerce/commission",
            .payload = payload,
            .len = len,
            .content_type = CM_CLOUDEVENTS_JSON_CONTENT_TYPE,
            .traceparent = ce.traceparent,
        };
        rc = cm_outbox_add(db, &ev);
        free(payload);
        if (rc)
            return rc;
    }
    return 0;
}

/* rows not yet acknowledged by kafka (the relay then deletes them) */
static long unsent(cm_db *db)
{
    PGresult *r = NULL;
    if (cm_db_exec(db, "count unsent", "SELECT count(*) FROM outbox WHERE published_at IS NULL", 0,
                   NULL, &r) != 0)
        return -1;
    long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

START_TEST(kcat_reads_valid_partner_cloudevents)
{
    /* as kafka/topics.tsv has it; an existing topic is left alone */
    hs_kafka_create_topic(brokers, TOPIC, 6);
    char schema[64], channel[64], err[512];
    snprintf(schema, sizeof schema, "partner_%ld", (long)getpid());
    snprintf(channel, sizeof channel, "partner-t%ld-%lld", (long)getpid(), hs_now_ms());
    cm_db *db;
    ck_assert_msg(cm_db_connect(&db, hs_pg_dsn(), schema, err, sizeof err) == 0, "%s", err);
    char drop[128];
    snprintf(drop, sizeof drop, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    ck_assert_int_eq(cm_db_exec(db, "drop", drop, 0, NULL, NULL), 0);
    ck_assert_msg(cm_db_migrate_component(db, schema, "outbox", cm_outbox_migrations,
                                          cm_outbox_migrations_count, err, sizeof err) == 0,
                  "%s", err);
    partner_tx t = {.channel = channel};
    for (int i = 0; i < NKINDS; i++)
        ck_assert_int_eq(cm_id_uuid7(t.ids[i]), 0);
    ck_assert_int_eq(cm_db_tx(db, NULL, 3, write_events, &t), 0);

    cm_kafka_producer *p;
    ck_assert_int_eq(cm_kafka_producer_new(&p, brokers, "test-partner", NULL, err, sizeof err), 0);
    cm_outbox_relay *relay;
    cm_outbox_relay_opts ro = {.dsn = hs_pg_dsn(), .schema = schema, .producer = p};
    ck_assert_msg(cm_outbox_relay_start(&relay, &ro, err, sizeof err) == 0, "%s", err);
    long long until = hs_now_ms() + 30000;
    while (unsent(db) != 0) {
        ck_assert_msg(hs_now_ms() < until, "the relay did not publish the partner events");
        usleep(100 * 1000);
    }
    cm_outbox_relay_free(relay);
    cm_kafka_producer_free(p, 5000);

    /* kcat, not our client, reads the whole topic */
    char out[] = "/tmp/test_partner_XXXXXX";
    int fd = mkstemp(out);
    ck_assert_int_ge(fd, 0);
    close(fd);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "kcat -C -b '%s' -t %s -o beginning -e -q -J > %s 2>/dev/null",
             brokers, TOPIC, out);
    ck_assert_msg(system(cmd) == 0, "%s failed", cmd);

    /* this run's records: all four, in commit order (one key, one partition) */
    FILE *f = fopen(out, "r");
    ck_assert_ptr_nonnull(f);
    char line[65536];
    int seen = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t jerr;
        json_t *rec = json_loads(line, 0, &jerr);
        if (!rec)
            continue;
        const char *key = json_string_value(json_object_get(rec, "key"));
        if (key && strcmp(key, channel) == 0) {
            ck_assert_int_lt(seen, NKINDS);
            json_t *doc = json_loads(json_string_value(json_object_get(rec, "payload")), 0, &jerr);
            ck_assert_ptr_nonnull(doc);
            ck_assert_str_eq(json_string_value(json_object_get(doc, "id")), t.ids[seen]);
            char type[96];
            snprintf(type, sizeof type, "com.commerce.commission.v1.%s", kinds[seen]);
            ck_assert_str_eq(json_string_value(json_object_get(doc, "type")), type);
            json_decref(doc);
            seen++;
        }
        json_decref(rec);
    }
    fclose(f);
    ck_assert_int_eq(seen, NKINDS);

    /* the contract's own checker accepts every one of them */
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/validate.py --records --key '%s' < %s",
             PARTNER_DIR, channel, out);
    int st = system(cmd);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "validate.py rejected a record: %s", cmd);
    unlink(out);
    ck_assert_int_eq(cm_db_exec(db, "drop", drop, 0, NULL, NULL), 0);
    cm_db_free(db);
}
END_TEST

static Suite *partner_suite(void)
{
    Suite *s = suite_create("partner");
    TCase *env = tcase_create("envelope");
    tcase_add_test(env, envelope_has_the_contract_attributes);
    suite_add_tcase(s, env);
    TCase *tc = tcase_create("kcat");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, kcat_reads_valid_partner_cloudevents);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    brokers = getenv("KAFKA_BROKERS");
    if (!brokers || !*brokers || !getenv("PG_DSN") || !*getenv("PG_DSN")) {
        fprintf(stderr, "test_partner: FAIL: KAFKA_BROKERS and PG_DSN must be set (scripts/test.sh "
                        "sets both)\n");
        return EXIT_FAILURE;
    }
    if (system("kcat -V >/dev/null 2>&1") != 0) {
        fprintf(stderr, "test_partner: FAIL: kcat is missing (scripts/install-deps.sh)\n");
        return EXIT_FAILURE;
    }
    cm_log_init("test_partner", CM_LOG_ERROR);
    return hs_run(partner_suite(), 0);
}
