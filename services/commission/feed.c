/* the partner feed: routing and webhook dispatch, see cms_feed.h */
#include "cms_feed.h"

#include "cm_buf.h"
#include "cm_cloudevents.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_kafka.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "cm_outbox.h"
#include "cms_api.h"
#include "cms_secrets.h"

#include "commerce/events/v1/commission_events.pb-c.h"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <protobuf-c/protobuf-c.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

struct cms_feed {
    cm_service *svc; /* its producer exists only after app_init */
    cms_webhook_policy policy;
    int workers;
    int timeout_ms;
    int batch;
    int64_t backoff_max_ms;
    int64_t disable_after_s;
    int partitions, replication;
    int retention_days;
    int events_on;   /* COMMISSION_EVENTS */
    char topic[256]; /* COMMISSION_TOPIC: where PartnerWebhookDisabled goes */
    cms_webhook_sender *senders[CMS_FEED_WORKERS_MAX]; /* one per dispatcher thread */
    cm_counter *routed, *delivered, *failed, *disabled;
    cm_histogram *latency;
    cms_keyring *keyring; /* COMMISSION_SECRETS_KEY_FILE; NULL: none */
    int plaintext;        /* COMMISSION_SECRETS_PLAINTEXT */
};

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

cms_feed *cms_feed_new(cm_service *svc, char *err, size_t errlen)
{
    cms_feed *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char why[160];
    if (cms_webhook_policy_parse(&f->policy, cm_service_text(svc, "COMMISSION_WEBHOOK_ALLOW_CIDRS"),
                                 why, sizeof why)) {
        snprintf(err, errlen, "COMMISSION_WEBHOOK_ALLOW_CIDRS: %s", why);
        free(f);
        return NULL;
    }
    f->policy.allow_http = (int)cm_service_int(svc, "COMMISSION_WEBHOOK_ALLOW_HTTP");
    const char *keys = cm_service_text(svc, "COMMISSION_SECRETS_KEY_FILE");
    if (keys[0] && cms_keyring_load(keys, &f->keyring, why, sizeof why)) {
        snprintf(err, errlen, "COMMISSION_SECRETS_KEY_FILE: %s", why);
        free(f);
        return NULL;
    }
    f->plaintext = (int)cm_service_int(svc, "COMMISSION_SECRETS_PLAINTEXT");
    if (!f->keyring)
        cm_log_warn(f->plaintext ? "webhook secrets are stored in plain text "
                                   "(COMMISSION_SECRETS_PLAINTEXT; for development only)"
                                 : "no COMMISSION_SECRETS_KEY_FILE: partner webhooks cannot be "
                                   "configured",
                    NULL);
    f->svc = svc;
    f->workers = (int)cm_service_int(svc, "COMMISSION_WEBHOOK_WORKERS");
    f->timeout_ms = (int)cm_service_int(svc, "COMMISSION_WEBHOOK_TIMEOUT_MS");
    f->batch = (int)cm_service_int(svc, "COMMISSION_WEBHOOK_BATCH");
    f->backoff_max_ms = cm_service_int(svc, "COMMISSION_WEBHOOK_BACKOFF_MAX_MS");
    f->disable_after_s = cm_service_int(svc, "COMMISSION_WEBHOOK_DISABLE_AFTER_S");
    f->partitions = (int)cm_service_int(svc, "COMMISSION_FEED_TOPIC_PARTITIONS");
    f->replication = (int)cm_service_int(svc, "COMMISSION_FEED_TOPIC_REPLICATION");
    f->retention_days = (int)cm_service_int(svc, "COMMISSION_FEED_RETENTION_DAYS");
    f->events_on = (int)cm_service_int(svc, "COMMISSION_EVENTS");
    snprintf(f->topic, sizeof f->topic, "%s", cm_service_text(svc, "COMMISSION_TOPIC"));
    if (!cm_service_int(svc, "COMMISSION_FEED"))
        f->workers = 0;
    cm_metrics *m = cm_service_metrics(svc);
    f->routed =
        cm_metrics_counter(m, "commission_feed_routed_total",
                           "partner events routed to the partner owning their channel", NULL);
    f->delivered = cm_metrics_counter(m, "commission_webhook_delivered_total",
                                      "webhook deliveries acknowledged with a 2xx", NULL);
    f->failed = cm_metrics_counter(m, "commission_webhook_failed_attempts_total",
                                   "webhook attempts that failed (retried with backoff)", NULL);
    f->disabled = cm_metrics_counter(
        m, "commission_webhook_disabled_total",
        "partner endpoints disabled after failing for COMMISSION_WEBHOOK_DISABLE_AFTER_S", NULL);
    static const double b[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                               0.25,  0.5,    1,     2.5,  5,     10};
    f->latency = cm_metrics_histogram(m, "commission_webhook_request_seconds",
                                      "one webhook POST, from the request to the answer", NULL, b,
                                      sizeof b / sizeof b[0]);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, errlen, "libcurl could not start");
        cms_keyring_free(f->keyring);
        free(f);
        return NULL;
    }
    return f;
}

void cms_feed_free(cms_feed *f)
{
    if (!f)
        return;
    for (int i = 0; i < CMS_FEED_WORKERS_MAX; i++)
        cms_webhook_sender_free(f->senders[i]);
    cms_keyring_free(f->keyring);
    free(f);
    curl_global_cleanup();
}

const cms_webhook_policy *cms_feed_policy(const cms_feed *f)
{
    return &f->policy;
}

/* ---- the signing secrets at rest ---- */

int cms_feed_secrets_writable(const cms_feed *f)
{
    return f->keyring || f->plaintext;
}

int cms_feed_secret_store(const cms_feed *f, const char *tenant, const char *partner,
                          const char *secret, char out[CMS_SECRETS_SEALED_SIZE])
{
    if (f->keyring)
        return cms_secrets_seal(f->keyring, tenant, partner, secret, out);
    if (!f->plaintext)
        return CM_ESTATE;
    int n = snprintf(out, CMS_SECRETS_SEALED_SIZE, "%s", secret);
    return n >= 0 && n < CMS_SECRETS_SEALED_SIZE ? 0 : CM_EINVAL;
}

int cms_feed_secret_open(const cms_feed *f, const char *tenant, const char *partner,
                         const char *stored, char out[CMS_SECRETS_PLAIN_SIZE])
{
    out[0] = '\0';
    if (!cms_secrets_is_sealed(stored)) {
        /* "", or a row from before the keyring (sealed at the next start) */
        int n = snprintf(out, CMS_SECRETS_PLAIN_SIZE, "%s", stored);
        return n >= 0 && n < CMS_SECRETS_PLAIN_SIZE ? 0 : CM_EINVAL;
    }
    if (!f->keyring)
        return CM_ENOTFOUND;
    return cms_secrets_open(f->keyring, tenant, partner, stored, out);
}

/* seals one stored value again under the primary key: 0, or a CM_E* with
 * what went wrong logged (never the value) */
static int reseal(const cms_feed *f, const char *tenant, const char *partner, const char *stored,
                  char out[CMS_SECRETS_SEALED_SIZE])
{
    char plain[CMS_SECRETS_PLAIN_SIZE];
    int rc = cms_feed_secret_open(f, tenant, partner, stored, plain);
    if (rc == 0 && plain[0])
        rc = cms_secrets_seal(f->keyring, tenant, partner, plain, out);
    else if (rc == 0)
        out[0] = '\0';
    OPENSSL_cleanse(plain, sizeof plain);
    if (rc)
        cm_log_warn("could not seal a partner's webhook secret again", "tenant", tenant, "partner",
                    partner, "error",
                    rc == CM_ENOTFOUND ? "its key id is not in the keyring" : cm_strerror(rc),
                    NULL);
    return rc;
}

static int reseal_in_tx(cm_db *db, void *arg)
{
    cms_feed *f = arg;
    char prefix[64], plen[24];
    snprintf(prefix, sizeof prefix, CMS_SECRETS_PREFIX "%s:", cms_keyring_primary(f->keyring));
    snprintf(plen, sizeof plen, "%zu", strlen(prefix));
    const char *p[] = {plen, prefix};
    PGresult *r = NULL;
    /* left(), not LIKE: '_' in a key id is a LIKE wildcard */
    int rc = cm_db_exec(db, "read webhook secrets to seal",
                        "SELECT tenant_id, partner_id, secret, previous_secret FROM partners "
                        "WHERE (secret <> '' AND left(secret, $1::int) <> $2) OR "
                        "(previous_secret <> '' AND left(previous_secret, $1::int) <> $2) "
                        "ORDER BY tenant_id, partner_id FOR UPDATE",
                        2, p, &r);
    if (rc)
        return rc;
    int n = PQntuples(r), sealed = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const char *tenant = PQgetvalue(r, i, 0), *partner = PQgetvalue(r, i, 1);
        char cur[CMS_SECRETS_SEALED_SIZE], prev[CMS_SECRETS_SEALED_SIZE];
        if (reseal(f, tenant, partner, PQgetvalue(r, i, 2), cur) ||
            reseal(f, tenant, partner, PQgetvalue(r, i, 3), prev))
            continue; /* left as it is: it does not open with this keyring */
        const char *q[] = {tenant, partner, cur, prev};
        rc = cm_db_exec(db, "seal webhook secrets",
                        "UPDATE partners SET secret = $3, previous_secret = $4 WHERE tenant_id = "
                        "$1 AND partner_id = $2",
                        4, q, NULL);
        sealed++;
    }
    PQclear(r);
    if (rc == 0 && sealed) {
        char count[16];
        snprintf(count, sizeof count, "%d", sealed);
        cm_log_info("partner webhook secrets sealed under the first key of the keyring", "key_id",
                    cms_keyring_primary(f->keyring), "partners", count, NULL);
    }
    return rc;
}

int cms_feed_secrets_reseal(cms_feed *f, cm_db *db, char *err, size_t errlen)
{
    if (!f->keyring)
        return 0;
    int rc = cm_db_tx(db, NULL, 3, reseal_in_tx, f);
    if (rc)
        snprintf(err, errlen, "could not seal the stored webhook secrets: %s", cm_strerror(rc));
    return rc;
}

void cms_feed_topic(const char *tenant, const char *partner, char out[256])
{
    snprintf(out, 256, CMS_FEED_TOPIC_PREFIX "%s.%s", tenant, partner);
}

int cms_feed_ensure_topic(cms_feed *f, const char *tenant, const char *partner, char *err,
                          size_t errlen)
{
    char topic[256];
    cms_feed_topic(tenant, partner, topic);
    cm_kafka_producer *producer = cm_service_producer(f->svc);
    if (!producer) {
        snprintf(err, errlen, "no kafka producer");
        return CM_EUNAVAIL;
    }
    static const char *const conf[] = {"retention.ms", "2592000000", NULL};
    return cm_kafka_create_topic(producer, topic, f->partitions, f->replication, conf, 10000, err,
                                 errlen);
}

/* ---- routing ---- */

/* the consumer's batch (cm_consumer's tx_begin/tx_end): each event is
 * staged by the handler and the whole batch routed in one statement at
 * the end of the transaction (README.md, "Partner feed"). one consumer
 * thread per service: no lock. */
typedef struct staged {
    const char *tenant, *channel, *id, *type, *time, *body, *source, *traceparent;
    size_t len; /* body's bytes (the record's payload) */
} staged;

struct cms_feed_batch {
    cm_arena *a; /* the staged events' strings, reset per transaction */
    staged *ev;
    size_t n, cap;
};

/* each event of the batch, once: the owner of its channel, the event kept
 * for it (a redelivered record inserts nothing), a webhook delivery when
 * its webhook is on; the channel found by one index probe per event, the
 * keys compared as "C" like the tables' columns. a row per event routed to
 * a partner (an event whose channel has none stays on the internal topic
 * only), in batch order: its place, the partner, whether the partner reads
 * kafka, whether it is new. feed_events' seq and the deliveries' ids
 * follow the batch order, so a channel's events keep theirs. */
#define ROUTE_SQL                                                                                  \
    "WITH e AS (SELECT DISTINCT ON (u.t, u.i) u.o, u.t COLLATE \"C\" AS tenant_id, "               \
    "u.c COLLATE \"C\" AS channel_id, u.i AS event_id, u.y AS type, u.w AS event_time, "           \
    "u.b AS body FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], "                     \
    "$5::timestamptz[], $6::text[]) WITH ORDINALITY AS u(t, c, i, y, w, b, o) "                    \
    "ORDER BY u.t, u.i, u.o), "                                                                    \
    "p AS (SELECT e.*, x.partner_id, x.kafka_enabled, x.hook FROM e CROSS JOIN LATERAL "           \
    "(SELECT pa.partner_id, pa.kafka_enabled, pa.webhook_enabled AS hook FROM channels c "         \
    "JOIN partners pa ON pa.tenant_id = c.tenant_id AND pa.partner_id = c.partner_id "             \
    "WHERE c.tenant_id = e.tenant_id AND c.channel_id = e.channel_id AND c.partner_id <> '' "      \
    "OFFSET 0) x), "                                                                               \
    "f AS (INSERT INTO feed_events (tenant_id, partner_id, channel_id, event_id, type, "           \
    "event_time, body) SELECT tenant_id, partner_id, channel_id, event_id, type, event_time, "     \
    "body FROM p ORDER BY o ON CONFLICT (tenant_id, partner_id, event_id) DO NOTHING "             \
    "RETURNING seq, tenant_id, partner_id, event_id), "                                            \
    "d AS (INSERT INTO webhook_deliveries (tenant_id, partner_id, seq, reason) SELECT "            \
    "f.tenant_id, f.partner_id, f.seq, 1 FROM f JOIN p USING (tenant_id, partner_id, event_id) "   \
    "WHERE p.hook ORDER BY f.seq RETURNING 1) "                                                    \
    "SELECT p.o, p.partner_id, p.kafka_enabled, f.seq IS NOT NULL, (SELECT count(*) FROM d) "      \
    "FROM p LEFT JOIN f USING (tenant_id, partner_id, event_id) ORDER BY p.o"

/* rows per cm_outbox_add_batch (its limit is 1000) */
#define CMS_FEED_OUTBOX_BATCH 1000

cms_feed_batch *cms_feed_batch_new(void)
{
    cms_feed_batch *b = calloc(1, sizeof *b);
    if (b && !(b->a = cm_arena_new(64 * 1024))) {
        free(b);
        b = NULL;
    }
    return b;
}

void cms_feed_batch_free(cms_feed_batch *b)
{
    if (!b)
        return;
    cm_arena_free(b->a);
    free(b->ev);
    free(b);
}

void cms_feed_on_tx_begin(void *arg)
{
    cms_feed_batch *b = ((cms_app *)arg)->feed_batch;
    cm_arena_reset(b->a);
    b->n = 0;
}

int cms_feed_on_event(cm_db *db, const cm_event *ev, void *arg)
{
    (void)db;
    cms_feed_batch *b = ((cms_app *)arg)->feed_batch;
    if (!*ev->tenant_id || !ev->key_len || !*ev->time || !*ev->type) {
        cm_log_warn("partner event without tenant, channel, time or type: dead-lettered", "id",
                    ev->id, NULL);
        return CM_EINVAL;
    }
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 512;
        staged *ev2 = realloc(b->ev, cap * sizeof *ev2);
        if (!ev2)
            return CM_ENOMEM;
        b->ev = ev2;
        b->cap = cap;
    }
    staged *s = &b->ev[b->n];
    s->tenant = cm_arena_strdup(b->a, ev->tenant_id);
    s->channel = cm_arena_strndup(b->a, ev->key, ev->key_len);
    s->id = cm_arena_strdup(b->a, ev->id);
    s->type = cm_arena_strdup(b->a, ev->type);
    s->time = cm_arena_strdup(b->a, ev->time);
    s->body = cm_arena_strndup(b->a, ev->payload, ev->len);
    s->source = cm_arena_strdup(b->a, *ev->source ? ev->source : "/commerce/commission");
    s->traceparent = *ev->traceparent ? cm_arena_strdup(b->a, ev->traceparent) : NULL;
    s->len = s->body ? strlen(s->body) : 0; /* as feed_events keeps it */
    if (!s->tenant || !s->channel || !s->id || !s->type || !s->time || !s->body || !s->source ||
        (*ev->traceparent && !s->traceparent))
        return CM_ENOMEM;
    b->n++;
    return 0;
}

int cms_feed_on_tx_end(cm_db *db, void *arg)
{
    cms_app *app = arg;
    cms_feed_batch *b = app->feed_batch;
    if (!b->n)
        return 0;
    enum { C_TENANT, C_CHANNEL, C_ID, C_TYPE, C_TIME, C_BODY, C_COUNT };
    cm_buf col[C_COUNT];
    const char *p[C_COUNT];
    cm_buf_columns_begin(col, C_COUNT);
    for (size_t i = 0; i < b->n; i++) {
        const staged *s = &b->ev[i];
        cm_buf_array_text(&col[C_TENANT], s->tenant);
        cm_buf_array_text(&col[C_CHANNEL], s->channel);
        cm_buf_array_text(&col[C_ID], s->id);
        cm_buf_array_text(&col[C_TYPE], s->type);
        cm_buf_array_text(&col[C_TIME], s->time);
        cm_buf_array_text(&col[C_BODY], s->body);
    }
    int rc = cm_buf_columns_end(col, C_COUNT, p);
    PGresult *r = NULL;
    if (rc == 0)
        rc = cm_db_exec_auto(db, "route partner events", ROUTE_SQL, C_COUNT, p, &r);
    cm_buf_columns_free(col, C_COUNT);
    if (rc)
        return rc;
    /* the partners' kafka records, in batch order, written together */
    int rows = PQntuples(r);
    cm_outbox_event *out = rows ? cm_arena_calloc(b->a, (size_t)rows, sizeof *out) : NULL;
    if (rows && !out)
        rc = CM_ENOMEM;
    size_t nout = 0;
    uint64_t routed = 0;
    for (int i = 0; i < rows && rc == 0; i++) {
        long long o = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        if (o < 1 || (size_t)o > b->n || PQgetvalue(r, i, 3)[0] != 't')
            continue;
        routed++;
        if (PQgetvalue(r, i, 2)[0] != 't')
            continue;
        const staged *s = &b->ev[o - 1];
        char topic[256];
        cms_feed_topic(s->tenant, PQgetvalue(r, i, 1), topic);
        char *id = cm_arena_alloc(b->a, CM_ID_SIZE);
        const char *t = cm_arena_strdup(b->a, topic);
        if (!id || !t) {
            rc = CM_ENOMEM;
            break;
        }
        /* a new outbox id: the outbox already holds the event's own id
         * (the internal topic's row); the record carries it in the body */
        rc = cm_id_uuid7(id);
        out[nout++] = (cm_outbox_event){
            .event_id = id,
            .tenant_id = s->tenant,
            .topic = t,
            .key = s->channel,
            .type = s->type,
            .source = s->source,
            .payload = s->body,
            .len = s->len,
            .content_type = CM_CLOUDEVENTS_JSON_CONTENT_TYPE,
            .traceparent = s->traceparent,
        };
    }
    PQclear(r);
    for (size_t k = 0; rc == 0 && k < nout; k += CMS_FEED_OUTBOX_BATCH)
        rc = cm_outbox_add_batch(
            db, out + k, nout - k < CMS_FEED_OUTBOX_BATCH ? nout - k : CMS_FEED_OUTBOX_BATCH);
    if (rc == 0 && routed && app->feed->routed)
        cm_counter_add(app->feed->routed, routed);
    return rc;
}

/* ---- webhook dispatch ---- */

typedef struct lease {
    char tenant[128], partner[CMS_PARTNER_ID_MAX + 1];
    char url[CMS_WEBHOOK_URL_MAX + 1];
    char secret[CMS_SECRETS_PLAIN_SIZE], previous[CMS_SECRETS_PLAIN_SIZE];
    const char *secret_problem; /* why the secrets did not open; NULL: they did */
    int failures;
    int64_t failing_since_ms; /* 0: not failing */
} lease;

typedef struct outcome {
    long long id;
    int attempt;
    int64_t at_ms;
    cms_webhook_result res;
} outcome;

static void copy(char *dst, size_t cap, const PGresult *r, int row, int col)
{
    snprintf(dst, cap, "%s", PQgetvalue(r, row, col));
}

/* leases one partner with deliveries due: 1, 0 when none, or < 0 */
static int claim(const cms_feed *f, cm_db *db, lease *l)
{
    PGresult *r = NULL;
    int rc = cm_db_exec_auto(
        db, "lease a partner's webhook",
        "UPDATE partners p SET lease_until = now() + interval '60 seconds' FROM (SELECT tenant_id, "
        "partner_id FROM partners q WHERE webhook_enabled AND webhook_state <> 3 AND "
        "next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now()) AND EXISTS "
        "(SELECT 1 FROM webhook_deliveries d WHERE d.tenant_id = q.tenant_id AND d.partner_id = "
        "q.partner_id AND d.delivered_at IS NULL) ORDER BY next_attempt_at LIMIT 1 FOR UPDATE "
        "SKIP LOCKED) c WHERE p.tenant_id = c.tenant_id AND p.partner_id = c.partner_id "
        "RETURNING p.tenant_id, p.partner_id, p.webhook_url, p.secret, CASE WHEN "
        "p.previous_until > now() THEN p.previous_secret ELSE '' END, p.failures, "
        "COALESCE((extract(epoch FROM p.failing_since) * 1000)::bigint, 0)",
        0, NULL, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    if (n == 1) {
        copy(l->tenant, sizeof l->tenant, r, 0, 0);
        copy(l->partner, sizeof l->partner, r, 0, 1);
        copy(l->url, sizeof l->url, r, 0, 2);
        int rc3 = cms_feed_secret_open(f, l->tenant, l->partner, PQgetvalue(r, 0, 3), l->secret);
        int rc4 = cms_feed_secret_open(f, l->tenant, l->partner, PQgetvalue(r, 0, 4), l->previous);
        if (rc3 || rc4) {
            /* no signature rather than a wrong one: the attempt fails, is
             * recorded and retried with backoff (a keyring fixed meanwhile) */
            l->secret[0] = l->previous[0] = '\0';
            l->secret_problem = (rc3 ? rc3 : rc4) == CM_ENOTFOUND
                                    ? "the signing secret's key is not in the keyring"
                                    : "the signing secret does not open with the keyring";
            cm_log_warn("could not open a partner's webhook secret", "tenant", l->tenant, "partner",
                        l->partner, "error", l->secret_problem, NULL);
        }
        l->failures = (int)strtol(PQgetvalue(r, 0, 5), NULL, 10);
        l->failing_since_ms = strtoll(PQgetvalue(r, 0, 6), NULL, 10);
    }
    PQclear(r);
    return n == 1;
}

/* PartnerWebhookDisabled on the commission topic, in the transaction that
 * disables the endpoint: the tenant's cue to tell the partner */
static int disabled_event(cm_db *db, const cms_feed *f, const lease *l, int64_t since_ms,
                          int64_t at_ms, const char *error)
{
    char id[CM_ID_SIZE];
    int rc = cm_id_uuid7(id);
    if (rc)
        return rc;
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT,
                                since = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = at_ms / 1000;
    at.nanos = (int32_t)(at_ms % 1000) * 1000000;
    since.seconds = since_ms / 1000;
    since.nanos = (int32_t)(since_ms % 1000) * 1000000;
    Commerce__Events__V1__PartnerWebhookDisabled e =
        COMMERCE__EVENTS__V1__PARTNER_WEBHOOK_DISABLED__INIT;
    e.event_id = id;
    e.tenant_id = (char *)l->tenant;
    e.occurred_at = &at;
    e.partner_id = (char *)l->partner;
    e.url = (char *)l->url;
    e.failing_since = &since;
    e.last_error = (char *)error;
    size_t n = protobuf_c_message_get_packed_size(&e.base);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return CM_ENOMEM;
    protobuf_c_message_pack(&e.base, buf);
    cm_outbox_event o = {.event_id = id,
                         .tenant_id = l->tenant,
                         .topic = f->topic,
                         .key = l->partner,
                         .type = "commerce.events.v1.PartnerWebhookDisabled",
                         .source = "/commerce/commission",
                         .payload = buf,
                         .len = n,
                         .occurred_at_ms = at_ms};
    rc = cm_outbox_add(db, &o);
    free(buf);
    return rc;
}

typedef struct flush_tx {
    cms_feed *f;
    const lease *l;
    outcome *o;
    int n;
    int failed;      /* the last outcome failed */
    int disable;     /* ... and the endpoint is disabled now */
    int64_t next_ms; /* when to try again (failed) */
} flush_tx;

static int flush(cm_db *db, void *arg)
{
    flush_tx *t = arg;
    const lease *l = t->l;
    int rc = 0;
    if (t->n) {
        cm_buf c[7];
        cm_buf_columns_begin(c, 7);
        for (int i = 0; i < t->n; i++) {
            const outcome *o = &t->o[i];
            cm_buf_array_int(&c[0], o->id);
            cm_buf_array_int(&c[1], o->attempt);
            cm_buf_array_int(&c[2], o->at_ms);
            cm_buf_array_int(&c[3], o->res.status);
            cm_buf_array_int(&c[4], o->res.latency_us);
            cm_buf_array_text(&c[5], o->res.error);
            cm_buf_array_int(&c[6], o->res.ok);
        }
        const char *p[7];
        rc = cm_buf_columns_end(c, 7, p);
        if (!rc)
            rc = cm_db_exec_auto(
                db, "record webhook attempts",
                "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::int[], "
                "$5::bigint[], $6::text[], $7::int[]) AS u(id, attempt, at, st, lat, err, ok)), "
                "a AS (INSERT INTO webhook_attempts (delivery_id, attempt, at, http_status, "
                "latency_us, error) SELECT id, attempt, to_timestamp(at / 1000.0), st, lat, err "
                "FROM u ON CONFLICT DO NOTHING RETURNING 1) "
                "UPDATE webhook_deliveries d SET attempts = u.attempt, last_attempt_at = "
                "to_timestamp(u.at / 1000.0), last_status = u.st, last_error = u.err, "
                "last_latency_us = u.lat, delivered_at = CASE WHEN u.ok = 1 THEN now() END FROM u "
                "WHERE d.delivery_id = u.id",
                7, p, NULL);
        cm_buf_columns_free(c, 7);
        if (rc)
            return rc;
    }
    if (!t->failed) {
        const char *p[] = {l->tenant, l->partner};
        return cm_db_exec_auto(db, "release a partner's webhook",
                               "UPDATE partners SET lease_until = NULL, failures = 0, "
                               "failing_since = NULL, webhook_state = 1, next_attempt_at = now() "
                               "WHERE tenant_id = $1 AND partner_id = $2",
                               2, p, NULL);
    }
    const outcome *last = &t->o[t->n - 1];
    int64_t since = l->failing_since_ms ? l->failing_since_ms : last->at_ms;
    t->disable = (last->at_ms - since) / 1000 >= t->f->disable_after_s;
    uint32_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
        rnd = (uint32_t)last->at_ms;
    t->next_ms = last->at_ms + cms_webhook_backoff_ms(l->failures + 1, t->f->backoff_max_ms, rnd);
    char s_since[24], s_next[24];
    snprintf(s_since, sizeof s_since, "%lld", (long long)since);
    snprintf(s_next, sizeof s_next, "%lld", (long long)t->next_ms);
    const char *p[] = {l->tenant, l->partner,      s_since,
                       s_next,    last->res.error, t->disable ? "3" : "2"};
    if (t->disable && t->f->events_on) {
        int rc2 = disabled_event(db, t->f, l, since, last->at_ms, last->res.error);
        if (rc2)
            return rc2;
    }
    return cm_db_exec_auto(
        db, "back off a partner's webhook",
        "UPDATE partners SET lease_until = NULL, failures = failures + 1, failing_since = "
        "to_timestamp($3::bigint / 1000.0), next_attempt_at = to_timestamp($4::bigint / 1000.0), "
        "last_error = $5, webhook_state = $6::smallint, disabled_at = CASE WHEN $6 = '3' THEN "
        "now() END WHERE tenant_id = $1 AND partner_id = $2",
        6, p, NULL);
}

/* sends the leased partner's pending deliveries in order, at most f->batch
 * and for at most 20 s, stopping at the first failure; records them */
static int deliver(cms_feed *f, cms_webhook_sender *s, cm_db *db, lease *l)
{
    char lim[16];
    snprintf(lim, sizeof lim, "%d", f->batch);
    const char *p[] = {l->tenant, l->partner, lim};
    PGresult *r = NULL;
    int rc = cm_db_exec_auto(db, "pending webhook deliveries",
                             "SELECT d.delivery_id, d.attempts, f.event_id, f.body FROM "
                             "webhook_deliveries d JOIN feed_events f ON f.seq = d.seq WHERE "
                             "d.tenant_id = $1 AND d.partner_id = $2 AND d.delivered_at IS NULL "
                             "ORDER BY d.delivery_id LIMIT $3::int",
                             3, p, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    outcome *o = calloc((size_t)(n ? n : 1), sizeof *o);
    if (!o) {
        PQclear(r);
        return CM_ENOMEM;
    }
    const char *secrets[2] = {l->secret, l->previous};
    int done = 0, failed = 0;
    int64_t start = mono_ms();
    for (int i = 0; i < n && !failed && mono_ms() - start < 20000; i++) {
        outcome *x = &o[done++];
        x->id = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        x->attempt = (int)strtol(PQgetvalue(r, i, 1), NULL, 10) + 1;
        x->at_ms = now_ms();
        const char *body = PQgetvalue(r, i, 3);
        size_t len = (size_t)PQgetlength(r, i, 3);
        char sig[CMS_WEBHOOK_SIG_SIZE];
        if (cms_webhook_sign(secrets, 2, x->at_ms / 1000, body, len, sig)) {
            snprintf(x->res.error, sizeof x->res.error, "%s",
                     l->secret_problem ? l->secret_problem : "the partner has no signing secret");
            failed = 1;
            break;
        }
        cms_webhook_post(s, l->url, PQgetvalue(r, i, 2), x->attempt, sig, body, len, &x->res);
        cm_histogram_observe(f->latency, (double)x->res.latency_us / 1e6);
        if (!x->res.ok)
            failed = 1;
    }
    PQclear(r);
    flush_tx t = {.f = f, .l = l, .o = o, .n = done, .failed = failed};
    rc = cm_db_tx(db, NULL, 3, flush, &t);
    if (rc == 0) {
        cm_counter_add(f->delivered, (uint64_t)(done - failed));
        if (failed) {
            cm_counter_add(f->failed, 1);
            char at[16];
            snprintf(at, sizeof at, "%d", l->failures + 1);
            if (t.disable) {
                cm_counter_add(f->disabled, 1);
                cm_log_warn("partner webhook disabled: failing for too long", "tenant", l->tenant,
                            "partner", l->partner, "error", o[done - 1].res.error, NULL);
            } else if (l->failures == 0 || (l->failures + 1) % 10 == 0) {
                cm_log_warn("partner webhook failing: retrying with backoff", "tenant", l->tenant,
                            "partner", l->partner, "failures", at, "error", o[done - 1].res.error,
                            NULL);
            }
        }
    }
    free(o);
    return rc ? rc : (failed ? 0 : done);
}

static void dispatch(cm_service *svc, cm_db *db, cms_app *app, int idx)
{
    (void)svc;
    cms_feed *f = app ? app->feed : NULL;
    if (!f || idx >= f->workers)
        return;
    if (!f->senders[idx] && !(f->senders[idx] = cms_webhook_sender_new(&f->policy, f->timeout_ms)))
        return;
    int64_t start = mono_ms();
    while (mono_ms() - start < 2000) {
        lease l = {0};
        int rc = claim(f, db, &l);
        if (rc <= 0) {
            if (rc < 0)
                cm_log_warn("webhook dispatcher could not lease a partner", "error",
                            cm_strerror(rc), NULL);
            return;
        }
        rc = deliver(f, f->senders[idx], db, &l);
        OPENSSL_cleanse(l.secret, sizeof l.secret);
        OPENSSL_cleanse(l.previous, sizeof l.previous);
        if (rc < 0) {
            cm_log_warn("webhook dispatcher could not record deliveries", "partner", l.partner,
                        "error", cm_strerror(rc), NULL);
            return; /* the lease expires; the deliveries are retried */
        }
    }
}

void cms_feed_webhook_1(cm_service *svc, cm_db *db, void *arg)
{
    dispatch(svc, db, arg, 0);
}
void cms_feed_webhook_2(cm_service *svc, cm_db *db, void *arg)
{
    dispatch(svc, db, arg, 1);
}
void cms_feed_webhook_3(cm_service *svc, cm_db *db, void *arg)
{
    dispatch(svc, db, arg, 2);
}
void cms_feed_webhook_4(cm_service *svc, cm_db *db, void *arg)
{
    dispatch(svc, db, arg, 3);
}

/* ---- retention ---- */

void cms_feed_prune(cm_service *svc, cm_db *db, void *arg)
{
    (void)svc;
    cms_app *app = arg;
    if (!app || !app->feed)
        return;
    char days[16];
    snprintf(days, sizeof days, "%d", app->feed->retention_days);
    const char *p[] = {days};
    PGresult *r = NULL;
    /* an event still to be delivered stays, however old */
    int rc = cm_db_exec(db, "prune the partner feed",
                        "WITH x AS (SELECT seq FROM feed_events f WHERE routed_at < now() - "
                        "make_interval(days => $1::int) AND NOT EXISTS (SELECT 1 FROM "
                        "webhook_deliveries d WHERE d.seq = f.seq AND d.delivered_at IS NULL) "
                        "ORDER BY seq LIMIT 10000) DELETE FROM feed_events f USING x WHERE f.seq "
                        "= x.seq",
                        1, p, &r);
    if (rc)
        cm_log_warn("could not prune the partner feed", "error", cm_strerror(rc), NULL);
    PQclear(r);
}
