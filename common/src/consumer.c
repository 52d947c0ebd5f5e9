/*
 * the consumer thread: poll a record, apply it in one transaction with its
 * inbox row, then store its offset; offsets are committed in the background
 * and synchronously on revoke and stop. common/README.md, "consumer and
 * inbox", explains the order of things.
 */
#include "cm_consumer.h"
#include "cm_cloudevents.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "kafka_internal.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POLL_MS 100
#define LAG_EVERY_S 1.0
#define CLEANUP_EVERY_S 600.0
#define MAX_LAG_PARTITIONS 1024
#define INBOX_RETENTION_S (7 * 24 * 3600)
#define ERROR_LOG_EVERY_S 30.0

enum outcome { APPLIED, DUPLICATE, DEAD_LETTERED, ABANDONED };

struct cm_consumer {
    char *brokers;
    char *topic;
    char *dlq_topic;
    char *group;
    char *dsn;
    char *schema;
    char *client_id;
    char **conf;
    cm_consumer_fn fn;
    void *arg;
    cm_kafka_producer *producer;
    cm_metrics *metrics;
    int max_attempts;
    int backoff_min_ms;
    int backoff_max_ms;
    int commit_interval_ms;
    int batch_size;
    void (*after_commit)(const cm_event *ev, int duplicate, void *arg);
    void (*tx_begin)(void *arg);
    int (*tx_end)(cm_db *db, void *arg);

    rd_kafka_t *rk;
    cm_db *db;
    pthread_t thread;
    int started;
    atomic_int stop;
    unsigned seed;

    /* offsets of committed effects (next offset to read), not yet
     * committed to kafka */
    rd_kafka_topic_partition_list_t *pending;
    int dirty;
    double last_commit;
    double last_error_log;
    /* bumped by every revoke: a batch gathered across one drops the records
     * of partitions that are no longer ours */
    unsigned revokes;

    /* the batch: records polled, in poll order, not yet done */
    rd_kafka_message_t **msgs;
    size_t nmsgs;

    atomic_uint_fast64_t n_applied, n_duplicates, n_dead, n_retries;
    cm_counter *c_applied;
    cm_counter *c_duplicate;
    cm_counter *c_skipped;
    int idempotent; /* no inbox (cm_consumer_opts.idempotent) */
    char **types;   /* ce_types the handler acts on (NULL: all) */
    size_t ntypes;
    cm_counter *c_dead;
    cm_counter *c_retries;
    cm_histogram *h_handler;
    cm_gauge *lag[MAX_LAG_PARTITIONS];
    char labels[512]; /* topic="..",group=".." */
};

static int stopping(const cm_consumer *c)
{
    return atomic_load(&c->stop);
}

/* sleeps ms in short slices so stop() is not held up */
static void nap(const cm_consumer *c, int ms)
{
    while (ms > 0 && !stopping(c)) {
        int step = ms < 50 ? ms : 50;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

static int backoff_ms(cm_consumer *c, int attempt)
{
    long d = (long)c->backoff_min_ms << (attempt < 16 ? attempt - 1 : 15);
    if (d > c->backoff_max_ms)
        d = c->backoff_max_ms;
    return (int)(d / 2 + rand_r(&c->seed) % (unsigned)(d / 2 + 1));
}

/* ---- offsets ---- */

static void commit_pending(cm_consumer *c, int sync)
{
    if (!c->dirty || !c->pending || c->pending->cnt == 0)
        return;
    rd_kafka_resp_err_t e = rd_kafka_commit(c->rk, c->pending, sync ? 0 : 1);
    c->last_commit = cm_kafka_mono_s();
    c->dirty = 0;
    /* a failure means redelivery, which the inbox absorbs: worth a line */
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR__NO_OFFSET)
        cm_log_warn("could not commit consumer offsets", "topic", c->topic, "group", c->group,
                    "error", rd_kafka_err2str(e), NULL);
}

static void store_offset(cm_consumer *c, int32_t partition, int64_t next)
{
    rd_kafka_topic_partition_t *tp =
        rd_kafka_topic_partition_list_find(c->pending, c->topic, partition);
    if (!tp)
        tp = rd_kafka_topic_partition_list_add(c->pending, c->topic, partition);
    if (tp && next > tp->offset)
        tp->offset = next;
    c->dirty = 1;
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    cm_consumer *c = opaque;
    int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        char n[16];
        snprintf(n, sizeof n, "%d", parts->cnt);
        cm_log_info("consumer partitions assigned", "topic", c->topic, "group", c->group,
                    "partitions", n, NULL);
        if (coop) {
            rd_kafka_error_t *e = rd_kafka_incremental_assign(rk, parts);
            if (e)
                rd_kafka_error_destroy(e);
        } else {
            rd_kafka_assign(rk, parts);
        }
        return;
    }
    /* revoked (or lost): commit what is done while the partitions are still
     * ours, and forget them: a later commit of an old offset could rewind
     * the next owner */
    commit_pending(c, 1);
    rd_kafka_topic_partition_list_destroy(c->pending);
    c->pending = rd_kafka_topic_partition_list_new(8);
    c->revokes++;
    for (int i = 0; i < parts->cnt; i++) {
        int32_t p = parts->elems[i].partition;
        if (p >= 0 && p < MAX_LAG_PARTITIONS && c->lag[p])
            cm_gauge_set(c->lag[p], 0);
    }
    if (coop) {
        rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
        if (e)
            rd_kafka_error_destroy(e);
    } else {
        rd_kafka_assign(rk, NULL);
    }
}

static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk;
    (void)offsets;
    cm_consumer *c = opaque;
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        cm_log_warn("consumer offset commit failed: the inbox will absorb redeliveries", "topic",
                    c->topic, "group", c->group, "error", rd_kafka_err2str(err), NULL);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    cm_consumer *c = opaque;
    double now = cm_kafka_mono_s();
    cm_log_level lvl = CM_LOG_DEBUG;
    if (now - c->last_error_log > ERROR_LOG_EVERY_S) {
        lvl = CM_LOG_WARN;
        c->last_error_log = now;
    }
    if (cm_log_enabled(lvl))
        cm_log(lvl, "kafka consumer error", "topic", c->topic, "group", c->group, "error",
               rd_kafka_err2name((rd_kafka_resp_err_t)err), "detail", reason, NULL);
}

/* ---- metrics ---- */

static void update_lag(cm_consumer *c)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (rd_kafka_assignment(c->rk, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR || !parts)
        return;
    rd_kafka_position(c->rk, parts);
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &parts->elems[i];
        if (tp->partition < 0 || tp->partition >= MAX_LAG_PARTITIONS)
            continue;
        int64_t lo = -1, hi = -1;
        if (rd_kafka_get_watermark_offsets(c->rk, tp->topic, tp->partition, &lo, &hi) !=
                RD_KAFKA_RESP_ERR_NO_ERROR ||
            hi < 0)
            continue;
        int64_t pos = tp->offset >= 0 ? tp->offset : lo;
        if (pos < 0)
            continue;
        if (!c->lag[tp->partition]) {
            char labels[600];
            snprintf(labels, sizeof labels, "%s,partition=\"%d\"", c->labels, (int)tp->partition);
            c->lag[tp->partition] = cm_metrics_gauge(c->metrics, "consumer_lag",
                                                     "records behind the partition's end", labels);
        }
        cm_gauge_set(c->lag[tp->partition], (double)(hi > pos ? hi - pos : 0));
    }
    rd_kafka_topic_partition_list_destroy(parts);
}

static void cleanup_inbox(cm_consumer *c)
{
    char secs[32];
    snprintf(secs, sizeof secs, "%d", INBOX_RETENTION_S);
    const char *p[] = {c->group, secs};
    for (int i = 0; i < 10 && !stopping(c); i++) {
        PGresult *res = NULL;
        if (cm_db_exec(c->db, "delete old inbox rows",
                       "DELETE FROM inbox WHERE ctid IN (SELECT ctid FROM inbox WHERE "
                       "consumer_group = $1 AND processed_at < now() - make_interval(secs => "
                       "$2::int) LIMIT 10000)",
                       2, p, &res) != 0)
            return;
        long n = strtol(PQcmdTuples(res), NULL, 10);
        PQclear(res);
        if (n < 10000)
            return;
    }
}

/* ---- one event ---- */

int cm_event_header(const cm_event *ev, const char *name, const void **value, size_t *len)
{
    if (!ev || !ev->priv || !name || !value || !len)
        return CM_EINVAL;
    rd_kafka_headers_t *h = NULL;
    if (rd_kafka_message_headers((const rd_kafka_message_t *)ev->priv, &h) !=
        RD_KAFKA_RESP_ERR_NO_ERROR)
        return CM_ENOTFOUND;
    return rd_kafka_header_get_last(h, name, value, len) == RD_KAFKA_RESP_ERR_NO_ERROR
               ? 0
               : CM_ENOTFOUND;
}

/* copies of the cloudevents headers and the key, NUL-terminated, in one
 * allocation the caller frees */
static char *fill_event(cm_consumer *c, const rd_kafka_message_t *m, cm_event *ev)
{
    static const char *const names[] = {"ce_id",        "ce_type",     "ce_source", "ce_time",
                                        "content-type", "traceparent", "tenant-id"};
    enum { N = sizeof names / sizeof names[0] };
    _Static_assert(N == CM_EVENT_HEADERS, "the headers cm_event_decode takes");
    const void *val[N] = {0};
    size_t len[N] = {0};
    rd_kafka_headers_t *h = NULL;
    int have = rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR;
    for (size_t i = 0; i < N; i++)
        if (have &&
            rd_kafka_header_get_last(h, names[i], &val[i], &len[i]) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            val[i] = NULL;
            len[i] = 0;
        }
    char *buf = cm_event_decode(val, len, m->payload, m->len, m->key, m->key_len, ev);
    if (!buf)
        return NULL;
    rd_kafka_timestamp_type_t tstype;
    ev->topic = c->topic;
    ev->partition = m->partition;
    ev->offset = m->offset;
    ev->timestamp_ms = rd_kafka_message_timestamp(m, &tstype);
    ev->group = c->group;
    ev->priv = m;
    return buf;
}

char *cm_event_decode(const void *const hval[CM_EVENT_HEADERS], const size_t hlen[CM_EVENT_HEADERS],
                      const void *payload, size_t plen, const void *key, size_t key_len,
                      cm_event *ev)
{
    enum { N = CM_EVENT_HEADERS };
    const void *val[N];
    size_t len[N];
    for (size_t i = 0; i < N; i++) {
        val[i] = hval[i];
        len[i] = hval[i] ? hlen[i] : 0;
    }
    /* structured mode (cm_cloudevents.h): no ce_* headers, the attributes
     * are members of the JSON value; read them from there */
    json_t *doc = NULL;
    if (!val[0] && len[4] && len[4] < 128) {
        char ct[128];
        memcpy(ct, val[4], len[4]);
        ct[len[4]] = '\0';
        if (cm_cloudevent_is_structured(ct) && payload && plen)
            doc = json_loadb(payload, plen, JSON_REJECT_DUPLICATES, NULL);
        static const char *const attrs[] = {"id", "type",        "source",  "time",
                                            NULL, "traceparent", "tenantid"};
        for (size_t i = 0; json_is_object(doc) && i < N; i++) {
            json_t *v = attrs[i] ? json_object_get(doc, attrs[i]) : NULL;
            if (json_is_string(v)) {
                val[i] = json_string_value(v);
                len[i] = json_string_length(v);
            }
        }
    }
    size_t total = key_len + 1;
    for (size_t i = 0; i < N; i++)
        total += len[i] + 1;
    char *buf = malloc(total);
    if (!buf) {
        json_decref(doc);
        return NULL;
    }
    const char *out[N];
    size_t o = 0;
    for (size_t i = 0; i < N; i++) {
        if (len[i])
            memcpy(buf + o, val[i], len[i]);
        buf[o + len[i]] = '\0';
        /* a NUL inside a header would cut it short: make it unmatchable */
        out[i] = memchr(buf + o, '\0', len[i]) ? "" : buf + o;
        o += len[i] + 1;
    }
    json_decref(doc);
    char *k = buf + o;
    if (key_len)
        memcpy(k, key, key_len);
    k[key_len] = '\0';

    *ev = (cm_event){
        .timestamp_ms = -1,
        .key = k,
        .key_len = key_len,
        .payload = payload ? payload : "",
        .len = payload ? plen : 0,
        .id = out[0],
        .type = out[1],
        .source = out[2],
        .time = out[3],
        .content_type = out[4],
        .traceparent = out[5],
        .tenant_id = out[6],
    };
    return buf;
}

typedef struct apply_tx {
    cm_consumer *c;
    const cm_event *ev;
    int duplicate;
} apply_tx;

static int apply_in_tx(cm_db *db, void *arg)
{
    apply_tx *t = arg;
    t->duplicate = 0;
    const cm_event *ev = t->ev;
    if (t->c->tx_begin)
        t->c->tx_begin(t->c->arg);
    const char *p[] = {t->c->group, ev->id, ev->tenant_id, ev->topic};
    /* first, so a concurrent redelivery (a rebalance handing the partition
     * over mid-event) waits on this row and then sees it */
    PGresult *res = NULL;
    int rc = 0;
    if (!t->c->idempotent) {
        rc = cm_db_exec(db, "insert inbox row",
                        "INSERT INTO inbox (consumer_group, event_id, tenant_id, topic) VALUES "
                        "($1, $2::uuid, $3, $4) ON CONFLICT DO NOTHING",
                        4, p, &res);
        if (rc)
            return rc;
        int inserted = strcmp(PQcmdTuples(res), "1") == 0;
        PQclear(res);
        if (!inserted) {
            t->duplicate = 1;
            return 0;
        }
    }
    double t0 = cm_kafka_mono_s();
    rc = t->c->fn(db, ev, t->c->arg);
    if (rc == 0 && t->c->tx_end)
        rc = t->c->tx_end(db, t->c->arg);
    cm_histogram_observe(t->c->h_handler, cm_kafka_mono_s() - t0);
    return rc;
}

static int transient(int rc)
{
    return rc == CM_ECONFLICT || rc == CM_EUNAVAIL || rc == CM_ETIMEDOUT || rc == CM_ELIMIT;
}

/* copies the record to <topic>.dlq with the reason; waits for the ack,
 * retrying until it lands or the consumer stops (the offset must not be
 * committed before the copy exists) */
static enum outcome dead_letter(cm_consumer *c, const rd_kafka_message_t *m, const char *reason,
                                const char *error)
{
    rd_kafka_headers_t *h = NULL;
    size_t n = 0;
    if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR)
        n = rd_kafka_header_cnt(h);
    cm_kafka_header *hs = calloc(n + 8, sizeof *hs);
    if (!hs)
        return ABANDONED;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name;
        const void *val;
        size_t len;
        if (rd_kafka_header_get_all(h, i, &name, &val, &len) != RD_KAFKA_RESP_ERR_NO_ERROR)
            break;
        if (strncmp(name, "dlq-", 4) == 0)
            continue; /* a re-dead-lettered record keeps only the latest reason */
        hs[k++] = (cm_kafka_header){name, val, len};
    }
    char part[16], off[32], ts[CM_KAFKA_TIME_SIZE];
    snprintf(part, sizeof part, "%d", (int)m->partition);
    snprintf(off, sizeof off, "%lld", (long long)m->offset);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    cm_kafka_time_rfc3339((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000, ts);
    const char *extra[][2] = {{"dlq-reason", reason},  {"dlq-error", error},
                              {"dlq-topic", c->topic}, {"dlq-partition", part},
                              {"dlq-offset", off},     {"dlq-group", c->group},
                              {"dlq-at", ts}};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
        hs[k++] = (cm_kafka_header){extra[i][0], extra[i][1], strlen(extra[i][1])};
    cm_kafka_msg msg = {
        .topic = c->dlq_topic,
        .key = m->key,
        .key_len = m->key_len,
        .payload = m->payload,
        .len = m->len,
        .headers = hs,
        .nheaders = k,
    };
    enum outcome out = ABANDONED;
    for (int attempt = 1; !stopping(c); attempt++) {
        cm_kafka_report rep;
        int rc = cm_kafka_produce_sync(c->producer, &msg, &rep);
        if (rc == 0) {
            out = DEAD_LETTERED;
            break;
        }
        if (rc == CM_ECANCELLED && stopping(c))
            break;
        cm_log_error("could not write to the dead-letter topic: retrying", "topic", c->dlq_topic,
                     "offset", off, "error", rep.error, NULL);
        nap(c, backoff_ms(c, attempt < 8 ? attempt : 8));
    }
    free(hs);
    if (out == DEAD_LETTERED) {
        cm_log_warn("event dead-lettered", "topic", c->topic, "group", c->group, "partition", part,
                    "offset", off, "reason", reason, "error", error, NULL);
        cm_counter_add(c->c_dead, 1);
        atomic_fetch_add(&c->n_dead, 1);
    }
    return out;
}

/* one record on its own: its own transaction, retries with backoff, the
 * dead-letter topic. first_rc != 0 is the outcome of a first attempt made
 * inside a batch (rolled back), so the count of attempts goes on from it. */
static enum outcome process(cm_consumer *c, const rd_kafka_message_t *m, int first_rc)
{
    cm_event ev;
    char *buf = fill_event(c, m, &ev);
    if (!buf)
        return ABANDONED;
    enum outcome out;
    if (!cm_id_is_uuid(ev.id)) {
        /* without an event id there is nothing to deduplicate by */
        out = dead_letter(c, m, "malformed", "missing or invalid ce_id header");
        free(buf);
        return out;
    }
    int db_waits = 0;
    int rc = first_rc;
    int have_rc = first_rc != 0;
    for (int attempt = 1;;) {
        int duplicate = 0;
        if (!have_rc) {
            ev.attempt = attempt;
            apply_tx t = {.c = c, .ev = &ev};
            rc = cm_db_tx(c->db, NULL, 3, apply_in_tx, &t);
            duplicate = t.duplicate;
        }
        have_rc = 0;
        if (rc == 0) {
            if (c->after_commit)
                c->after_commit(&ev, duplicate, c->arg);
            if (duplicate) {
                cm_counter_add(c->c_duplicate, 1);
                atomic_fetch_add(&c->n_duplicates, 1);
                out = DUPLICATE;
            } else {
                cm_counter_add(c->c_applied, 1);
                atomic_fetch_add(&c->n_applied, 1);
                out = APPLIED;
            }
            break;
        }
        if (stopping(c)) {
            out = ABANDONED; /* not committed: redelivered after restart */
            break;
        }
        if (rc == CM_EUNAVAIL && cm_db_ping(c->db) != 0) {
            /* the database is down: not the event's fault, wait for it */
            if (db_waits++ % 20 == 0)
                cm_log_warn("consumer waiting for the database", "topic", c->topic, "group",
                            c->group, NULL);
            nap(c, backoff_ms(c, db_waits < 8 ? db_waits : 8));
            continue;
        }
        if (transient(rc) && attempt < c->max_attempts) {
            cm_counter_add(c->c_retries, 1);
            atomic_fetch_add(&c->n_retries, 1);
            nap(c, backoff_ms(c, attempt));
            attempt++;
            continue;
        }
        const char *reason = transient(rc)     ? "retries_exhausted"
                             : rc == CM_EINVAL ? "rejected"
                                               : "handler_error";
        char why[160];
        snprintf(why, sizeof why, "%s after %d attempt%s", cm_strerror(rc), attempt,
                 attempt == 1 ? "" : "s");
        out = dead_letter(c, m, reason, why);
        break;
    }
    free(buf);
    return out;
}

/* ---- a batch ---- */

/* a record's place in the batch. ACTIVE records are applied together in one
 * transaction; a FAILED one (its handler failed there, or it cannot be
 * applied at all) goes through process() after that commit; the records
 * after it in its partition are DEFERRED to the next batch, so a key's
 * events never overtake each other. */
enum item_state { ACTIVE, FAILED, DEFERRED, DROPPED, SKIPPED };

typedef struct batch_item {
    rd_kafka_message_t *m;
    cm_event ev;
    char *buf;
    enum item_state state;
    int rc;        /* FAILED: the first attempt's code (0: not attempted) */
    int duplicate; /* ACTIVE: its inbox row existed (set by the transaction) */
} batch_item;

typedef struct batch_tx {
    cm_consumer *c;
    batch_item *items;
    size_t n;
    long blamed; /* the record whose handler failed, -1: none */
    int blamed_rc;
    char *ids;     /* uuid[] literal of the active records */
    char *tenants; /* text[] literal */
} batch_tx;

typedef struct inserted_id {
    const char *id;
    int used;
} inserted_id;

static int cmp_inserted(const void *a, const void *b)
{
    return strcmp(((const inserted_id *)a)->id, ((const inserted_id *)b)->id);
}

/* appends s as an element of a postgres array literal; *at is the write
 * position, cap the buffer's size (sized by the caller for the worst case) */
static void array_elem(char *buf, size_t *at, const char *s)
{
    size_t o = *at;
    if (buf[o - 1] != '{')
        buf[o++] = ',';
    buf[o++] = '"';
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            buf[o++] = '\\';
        buf[o++] = *s;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    *at = o;
}

static void defer_partition_after(batch_item *items, size_t n, size_t i)
{
    /* a later record already failed is deferred too: it is tried again, in
     * its turn, in the next batch */
    for (size_t j = i + 1; j < n; j++) {
        if (items[j].m->partition == items[i].m->partition) {
            items[j].state = DEFERRED;
            items[j].rc = 0;
        }
    }
}

/* inside the batch's transaction: every active record's inbox row in one
 * statement (the ids it returns are first deliveries), then the handler of
 * each first delivery, in poll order. a failing handler aborts the whole
 * transaction: the caller sets that record aside and runs the batch again
 * without it. a savepoint per record would spare that re-run, but costs two
 * round trips per record on the path every record takes, and more than 64
 * subtransactions overflow every snapshot's subxid cache; a failure is the
 * rare case, so it pays instead. */
static int batch_in_tx(cm_db *db, void *arg)
{
    batch_tx *t = arg;
    cm_consumer *c = t->c;
    t->blamed = -1;
    if (c->tx_begin)
        c->tx_begin(c->arg);
    size_t ai = 1, at = 1, nactive = 0;
    t->ids[0] = '{';
    t->ids[1] = '\0';
    t->tenants[0] = '{';
    t->tenants[1] = '\0';
    for (size_t i = 0; i < t->n; i++) {
        if (t->items[i].state != ACTIVE)
            continue;
        t->items[i].duplicate = 1;
        array_elem(t->ids, &ai, t->items[i].ev.id);
        array_elem(t->tenants, &at, t->items[i].ev.tenant_id);
        nactive++;
    }
    if (nactive == 0)
        return 0;
    memcpy(t->ids + ai, "}", 2);
    memcpy(t->tenants + at, "}", 2);
    const char *p[] = {c->group, t->ids, t->tenants, c->topic};
    PGresult *res = NULL;
    int rc = 0, nnew = (int)nactive;
    /* first, so a concurrent redelivery (a rebalance handing a partition
     * over mid-batch) waits on these rows and then sees them; without an
     * inbox every record is a first delivery */
    if (!c->idempotent) {
        rc = cm_db_exec(db, "insert inbox rows",
                        "INSERT INTO inbox (consumer_group, event_id, tenant_id, topic) SELECT $1, "
                        "e, t, $4 FROM unnest($2::uuid[], $3::text[]) AS u(e, t) ON CONFLICT DO "
                        "NOTHING RETURNING event_id::text",
                        4, p, &res);
        if (rc)
            return rc;
        nnew = PQntuples(res);
    }
    inserted_id *fresh = calloc((size_t)nnew + 1, sizeof *fresh);
    if (!fresh) {
        PQclear(res);
        return CM_ENOMEM;
    }
    if (res)
        for (int i = 0; i < nnew; i++)
            fresh[i].id = PQgetvalue(res, i, 0);
    else
        for (size_t i = 0, k = 0; i < t->n; i++)
            if (t->items[i].state == ACTIVE)
                fresh[k++].id = t->items[i].ev.id;
    qsort(fresh, (size_t)nnew, sizeof *fresh, cmp_inserted);
    /* one entry per id (without an inbox the batch's own ids are listed,
     * repeats included): the first record with an id is its delivery */
    int nuniq = 0;
    for (int i = 0; i < nnew; i++)
        if (nuniq == 0 || strcmp(fresh[nuniq - 1].id, fresh[i].id) != 0)
            fresh[nuniq++] = fresh[i];
    nnew = nuniq;
    for (size_t i = 0; rc == 0 && i < t->n; i++) {
        batch_item *it = &t->items[i];
        if (it->state != ACTIVE)
            continue;
        inserted_id key = {.id = it->ev.id};
        inserted_id *f = bsearch(&key, fresh, (size_t)nnew, sizeof *fresh, cmp_inserted);
        /* the same id twice in a batch: the first is the delivery */
        if (!f || f->used)
            continue;
        f->used = 1;
        it->duplicate = 0;
        it->ev.attempt = 1;
        double t0 = cm_kafka_mono_s();
        rc = c->fn(db, &it->ev, c->arg);
        cm_histogram_observe(c->h_handler, cm_kafka_mono_s() - t0);
        if (rc == 0 && PQtransactionStatus(cm_db_conn(db)) == PQTRANS_INERROR) {
            cm_log_error("event handler returned success after a failed statement", "topic",
                         c->topic, "group", c->group, NULL);
            rc = CM_EINTERNAL;
        }
        /* a lost connection is the database's trouble, not the event's */
        if (rc && PQstatus(cm_db_conn(db)) != CONNECTION_BAD) {
            t->blamed = (long)i;
            t->blamed_rc = rc;
        }
    }
    free(fresh);
    PQclear(res);
    /* what the handlers staged, written for the whole batch; a failure
     * here blames no record: the batch is tried again, then record by
     * record */
    if (rc == 0 && c->tx_end)
        rc = c->tx_end(db, c->arg);
    return rc;
}

static void destroy_item(batch_item *it)
{
    free(it->buf);
    it->buf = NULL;
    if (it->m)
        rd_kafka_message_destroy(it->m);
    it->m = NULL;
}

/* a record was left unfinished while the consumer goes on (out of memory):
 * rewind its partition to it, or the next record's offset would skip it */
static void rewind_partition(cm_consumer *c, const rd_kafka_message_t *m)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    if (!l)
        return;
    rd_kafka_topic_partition_list_add(l, c->topic, m->partition)->offset = m->offset;
    rd_kafka_error_t *e = rd_kafka_seek_partitions(c->rk, l, 1000);
    if (e)
        rd_kafka_error_destroy(e);
    rd_kafka_topic_partition_list_destroy(l);
}

/* 1 when the handler acts on events of this type (every type without a
 * list) */
static int wanted(const cm_consumer *c, const char *type)
{
    if (!c->ntypes)
        return 1;
    for (size_t i = 0; i < c->ntypes; i++)
        if (strcmp(c->types[i], type) == 0)
            return 1;
    return 0;
}

/* applies c->msgs; what is deferred stays in c->msgs for the next batch */
static void run_batch(cm_consumer *c, batch_item *items)
{
    size_t n = c->nmsgs;
    for (size_t i = 0; i < n; i++) {
        items[i] = (batch_item){.m = c->msgs[i], .state = ACTIVE};
        items[i].buf = fill_event(c, items[i].m, &items[i].ev);
    }
    for (size_t i = 0; i < n; i++) {
        /* out of memory, or no event id: process() deals with it alone */
        if (items[i].state == ACTIVE && (!items[i].buf || !cm_id_is_uuid(items[i].ev.id))) {
            items[i].state = FAILED;
            defer_partition_after(items, n, i);
        } else if (items[i].state == ACTIVE && !wanted(c, items[i].ev.type)) {
            /* no effect to apply, so nothing to deduplicate: no inbox row */
            items[i].state = SKIPPED;
        }
    }
    /* worst case of an array literal: every character escaped, quotes, comma */
    size_t ids_cap = n * (CM_ID_SIZE * 2 + 3) + 3, ten_cap = 3;
    for (size_t i = 0; i < n; i++)
        if (items[i].buf)
            ten_cap += strlen(items[i].ev.tenant_id) * 2 + 3;
    batch_tx t = {
        .c = c, .items = items, .n = n, .ids = malloc(ids_cap), .tenants = malloc(ten_cap)};
    int committed = 0, per_record = !t.ids || !t.tenants;
    int db_waits = 0, failures = 0;
    size_t nactive = 0;
    for (size_t i = 0; i < n; i++)
        nactive += items[i].state == ACTIVE;
    if (nactive == 0 && !per_record)
        committed = 1; /* only skipped records (or none): no transaction */
    while (!committed && !per_record) {
        int rc = cm_db_tx(c->db, NULL, 1, batch_in_tx, &t);
        if (rc == 0) {
            committed = 1;
        } else if (t.blamed >= 0 && !(rc == CM_EUNAVAIL && cm_db_ping(c->db) != 0)) {
            /* run the batch again without it and its partition's later records */
            items[t.blamed].state = FAILED;
            items[t.blamed].rc = t.blamed_rc;
            defer_partition_after(items, n, (size_t)t.blamed);
        } else if (stopping(c)) {
            break; /* nothing committed: all of it is redelivered */
        } else if (rc == CM_EUNAVAIL && cm_db_ping(c->db) != 0) {
            if (db_waits++ % 20 == 0)
                cm_log_warn("consumer waiting for the database", "topic", c->topic, "group",
                            c->group, NULL);
            nap(c, backoff_ms(c, db_waits < 8 ? db_waits : 8));
        } else if (++failures >= 3) {
            /* the batch itself keeps failing (the inbox statement): record
             * by record, each with its own retries and dead letter */
            per_record = 1;
        } else {
            nap(c, backoff_ms(c, failures));
        }
    }
    if (committed) {
        for (size_t i = 0; i < n; i++) {
            batch_item *it = &items[i];
            if (it->state != ACTIVE)
                continue;
            if (c->after_commit)
                c->after_commit(&it->ev, it->duplicate, c->arg);
            if (it->duplicate) {
                cm_counter_add(c->c_duplicate, 1);
                atomic_fetch_add(&c->n_duplicates, 1);
            } else {
                cm_counter_add(c->c_applied, 1);
                atomic_fetch_add(&c->n_applied, 1);
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (items[i].state == SKIPPED)
                cm_counter_add(c->c_skipped, 1);
            if (items[i].state == ACTIVE || items[i].state == SKIPPED)
                store_offset(c, items[i].m->partition, items[i].m->offset + 1);
        }
    } else if (per_record) {
        for (size_t i = 0; i < n; i++)
            if (items[i].state == ACTIVE)
                items[i].state = FAILED;
    }
    /* the failed records one at a time, in order. after an abandoned one
     * its partition's later records are dropped (and the partition rewound
     * to it), or their offsets would skip it */
    size_t keep = 0;
    for (size_t i = 0; i < n; i++) {
        batch_item *it = &items[i];
        if (it->state == FAILED && (committed || per_record)) {
            enum outcome o = stopping(c) ? ABANDONED : process(c, it->m, it->rc);
            if (o != ABANDONED) {
                store_offset(c, it->m->partition, it->m->offset + 1);
            } else {
                if (!stopping(c))
                    rewind_partition(c, it->m);
                for (size_t j = i + 1; j < n; j++)
                    if (items[j].m->partition == it->m->partition)
                        items[j].state = DROPPED;
            }
        } else if (it->state == DEFERRED && committed) {
            free(it->buf);
            it->buf = NULL;
            c->msgs[keep++] = it->m; /* the next batch owns it now */
            it->m = NULL;
            continue;
        }
        destroy_item(it);
    }
    c->nmsgs = keep;
    free(t.ids);
    free(t.tenants);
}
static void handle_error_message(cm_consumer *c, const rd_kafka_message_t *m)
{
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
        return;
    double now = cm_kafka_mono_s();
    if (now - c->last_error_log <= ERROR_LOG_EVERY_S)
        return;
    c->last_error_log = now;
    cm_log_warn("kafka consumer error", "topic", c->topic, "group", c->group, "error",
                rd_kafka_err2name(m->err), "detail", rd_kafka_message_errstr(m), NULL);
}

/* 1 when partition is in the consumer's current assignment */
static int assigned(const rd_kafka_topic_partition_list_t *parts, const char *topic,
                    int32_t partition)
{
    for (int i = 0; parts && i < parts->cnt; i++)
        if (parts->elems[i].partition == partition && strcmp(parts->elems[i].topic, topic) == 0)
            return 1;
    return 0;
}

/* adds to c->msgs what the poll brings: waits up to POLL_MS for the first
 * record, then takes only what has already arrived, up to batch_size. no
 * lingering for more: while a batch commits the next one piles up, so
 * batches grow with the load and a lone event is not held back. */
static void gather(cm_consumer *c)
{
    unsigned revokes = c->revokes;
    while (c->nmsgs < (size_t)c->batch_size) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, c->nmsgs ? 0 : POLL_MS);
        if (!m)
            break;
        if (m->err) {
            handle_error_message(c, m);
            rd_kafka_message_destroy(m);
            if (c->nmsgs == 0)
                break; /* let the loop's chores run */
            continue;
        }
        c->msgs[c->nmsgs++] = m;
    }
    if (revokes == c->revokes)
        return;
    /* a revoke ran inside the poll: the records of partitions that are no
     * longer ours belong to their next owner */
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (rd_kafka_assignment(c->rk, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR)
        parts = NULL;
    size_t keep = 0;
    for (size_t i = 0; i < c->nmsgs; i++) {
        if (assigned(parts, c->topic, c->msgs[i]->partition))
            c->msgs[keep++] = c->msgs[i];
        else
            rd_kafka_message_destroy(c->msgs[i]);
    }
    c->nmsgs = keep;
    if (parts)
        rd_kafka_topic_partition_list_destroy(parts);
}

static void *consumer_main(void *arg)
{
    cm_consumer *c = arg;
    double next_lag = 0, next_cleanup = cm_kafka_mono_s() + 60;
    batch_item *items = calloc((size_t)c->batch_size, sizeof *items);
    while (items && !stopping(c)) {
        gather(c);
        if (c->nmsgs)
            run_batch(c, items);
        double now = cm_kafka_mono_s();
        if (c->dirty && (now - c->last_commit) * 1000 >= c->commit_interval_ms)
            commit_pending(c, 0);
        if (now >= next_lag) {
            update_lag(c);
            next_lag = now + LAG_EVERY_S;
        }
        if (now >= next_cleanup) {
            cleanup_inbox(c);
            next_cleanup = now + CLEANUP_EVERY_S;
        }
    }
    if (!items)
        cm_log_error("consumer out of memory: stopped", "topic", c->topic, "group", c->group, NULL);
    free(items);
    /* deferred records nobody will process now: redelivered after restart */
    for (size_t i = 0; i < c->nmsgs; i++)
        rd_kafka_message_destroy(c->msgs[i]);
    c->nmsgs = 0;
    commit_pending(c, 1);
    /* leaves the group: the revoke callback commits anything left */
    rd_kafka_consumer_close(c->rk);
    return NULL;
}

/* ---- lifecycle ---- */

static char **copy_pairs(const char *const *conf, int *bad)
{
    size_t n = 0;
    while (conf && conf[n])
        n++;
    *bad = n % 2 != 0;
    char **out = calloc(n + 1, sizeof *out);
    for (size_t i = 0; out && i < n; i++) {
        if (!(out[i] = strdup(conf[i]))) {
            for (size_t j = 0; j < i; j++)
                free(out[j]);
            free(out);
            return NULL;
        }
    }
    return out;
}

static int make_rk(cm_consumer *c, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = cm_kafka_conf_base(c->brokers, c->client_id, NULL, err, errlen);
    if (!conf)
        return CM_EINVAL;
    /* offsets move only after the effect is committed (auto-commit would
     * commit what was merely fetched); a new group starts at the beginning,
     * so nothing published before the first deploy is skipped. the
     * prefetch is bounded at 2 MB: librdkafka's default (64 MB) is what a
     * backlog fills, and settlement's peak RSS draining a preloaded topic
     * was 128 MB with it, 76 MB at 8 MB, 49 MB at 2 MB, at the same
     * rate: a batch of 500 order events is ~0.2 MB, so 2 MB (plus the
     * fetch in flight) still keeps several batches ready. the fetch
     * sizes stay librdkafka's: with smaller responses (256 KB a
     * partition, 1 MB in all) the queue held less than the 1 s this
     * librdkafka (2.0) backs off once it is full, and settlement's drain
     * fell from ~13,900 to ~11,000 orders/s (common/README.md) */
    const char *const settings[] = {"queued.max.messages.kbytes",
                                    "2048",
                                    "group.id",
                                    c->group,
                                    "enable.auto.commit",
                                    "false",
                                    "enable.auto.offset.store",
                                    "false",
                                    "auto.offset.reset",
                                    "earliest",
                                    "enable.partition.eof",
                                    "false",
                                    "isolation.level",
                                    "read_committed",
                                    NULL};
    int rc = 0;
    for (size_t i = 0; rc == 0 && settings[i]; i += 2)
        rc = cm_kafka_conf_set(conf, settings[i], settings[i + 1], err, errlen);
    for (size_t i = 0; rc == 0 && c->conf && c->conf[i]; i += 2)
        rc = cm_kafka_conf_set(conf, c->conf[i], c->conf[i + 1], err, errlen);
    if (rc) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    rd_kafka_conf_set_opaque(conf, c);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_offset_commit_cb(conf, on_commit);
    rd_kafka_conf_set_error_cb(conf, on_error);
    char why[512];
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
    if (!c->rk) {
        rd_kafka_conf_destroy(conf);
        if (err && errlen)
            snprintf(err, errlen, "could not create the kafka consumer: %s", why);
        return CM_EINVAL;
    }
    rd_kafka_poll_set_consumer(c->rk);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, c->topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(c->rk, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (err && errlen)
            snprintf(err, errlen, "could not subscribe to %s: %s", c->topic, rd_kafka_err2str(e));
        return CM_EINVAL;
    }
    return 0;
}

int cm_consumer_start(cm_consumer **out, const cm_consumer_opts *o, char *err, size_t errlen)
{
    cm_err_set(err, errlen, "%s", "");
    if (!out || !o)
        return CM_EINVAL;
    *out = NULL;
    if (!o->brokers || !*o->brokers || !o->group || !*o->group || !o->dsn || !o->schema || !o->fn ||
        !o->producer) {
        cm_err_set(err, errlen, "%s",
                   "a consumer needs brokers, a group, a dsn, a schema, a handler "
                   "and a producer");
        return CM_EINVAL;
    }
    if (!cm_kafka_topic_valid(o->topic) || strlen(o->topic) > 245) {
        cm_err_set(err, errlen, "%s",
                   "a consumer needs a valid topic name (at most 245 characters)");
        return CM_EINVAL;
    }
    cm_consumer *c = calloc(1, sizeof *c);
    if (!c) {
        cm_err_set(err, errlen, "%s", "out of memory");
        return CM_ENOMEM;
    }
    c->fn = o->fn;
    c->arg = o->arg;
    c->producer = o->producer;
    c->metrics = o->metrics ? o->metrics : cm_metrics_default();
    c->max_attempts = o->max_attempts > 0 ? o->max_attempts : 5;
    c->backoff_min_ms = o->backoff_min_ms > 0 ? o->backoff_min_ms : 50;
    c->backoff_max_ms = o->backoff_max_ms > 0 ? o->backoff_max_ms : 5000;
    if (c->backoff_max_ms < c->backoff_min_ms)
        c->backoff_max_ms = c->backoff_min_ms;
    c->commit_interval_ms = o->commit_interval_ms > 0 ? o->commit_interval_ms : 500;
    c->batch_size = o->batch_size > 0 ? (o->batch_size < 10000 ? o->batch_size : 10000) : 500;
    c->after_commit = o->after_commit;
    c->tx_begin = o->tx_begin;
    c->tx_end = o->tx_end;
    c->idempotent = o->idempotent;
    size_t ntypes = 0;
    for (size_t i = 0; o->types && o->types[i]; i++)
        ntypes++;
    int types_ok = 1;
    if (ntypes) {
        c->types = calloc(ntypes, sizeof *c->types);
        types_ok = c->types != NULL;
        for (size_t i = 0; types_ok && i < ntypes; i++, c->ntypes++)
            types_ok = (c->types[i] = strdup(o->types[i])) != NULL;
    }
    c->seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)c;
    c->last_error_log = -1e9;
    int bad = 0;
    c->brokers = strdup(o->brokers);
    c->topic = strdup(o->topic);
    c->group = strdup(o->group);
    c->dsn = strdup(o->dsn);
    c->schema = strdup(o->schema);
    c->client_id = strdup(o->client_id ? o->client_id : "commerce-consumer");
    c->conf = copy_pairs(o->conf, &bad);
    size_t dl = strlen(o->topic) + 5;
    c->dlq_topic = malloc(dl);
    c->pending = rd_kafka_topic_partition_list_new(8);
    c->msgs = calloc((size_t)c->batch_size, sizeof *c->msgs);
    int rc = 0;
    if (!c->brokers || !c->topic || !c->group || !c->dsn || !c->schema || !c->client_id ||
        !c->conf || !c->dlq_topic || !c->pending || !c->msgs || !types_ok) {
        cm_err_set(err, errlen, "%s", "out of memory");
        rc = CM_ENOMEM;
    } else if (bad) {
        cm_err_set(err, errlen, "%s", "kafka consumer settings must come in key, value pairs");
        rc = CM_EINVAL;
    }
    if (rc == 0) {
        snprintf(c->dlq_topic, dl, "%s.dlq", o->topic);
        char group[256];
        cm_kafka_label_escape(c->group, group, sizeof group);
        snprintf(c->labels, sizeof c->labels, "topic=\"%s\",group=\"%s\"", c->topic, group);
        char l[600];
        const char *help = "events handled by outcome";
        snprintf(l, sizeof l, "%s,result=\"applied\"", c->labels);
        c->c_applied = cm_metrics_counter(c->metrics, "consumer_processed_total", help, l);
        snprintf(l, sizeof l, "%s,result=\"duplicate\"", c->labels);
        c->c_duplicate = cm_metrics_counter(c->metrics, "consumer_processed_total", help, l);
        snprintf(l, sizeof l, "%s,result=\"skipped\"", c->labels);
        c->c_skipped = cm_metrics_counter(c->metrics, "consumer_processed_total", help, l);
        snprintf(l, sizeof l, "%s,result=\"dead_lettered\"", c->labels);
        c->c_dead = cm_metrics_counter(c->metrics, "consumer_processed_total", help, l);
        c->c_retries =
            cm_metrics_counter(c->metrics, "consumer_retries_total",
                               "event handler retries after transient errors", c->labels);
        c->h_handler = cm_metrics_histogram(
            c->metrics, "consumer_handler_seconds", "time in the event handler", c->labels,
            cm_metrics_latency_buckets, cm_metrics_latency_nbuckets);
        rc = cm_db_connect(&c->db, c->dsn, c->schema, err, errlen);
    }
    if (rc == 0)
        rc = make_rk(c, err, errlen);
    if (rc == 0 && pthread_create(&c->thread, NULL, consumer_main, c) != 0) {
        cm_err_set(err, errlen, "%s", "could not start the consumer thread");
        rc = CM_ENOMEM;
    }
    if (rc) {
        cm_consumer_free(c);
        return rc;
    }
    c->started = 1;
    cm_log_info("consumer started", "topic", c->topic, "group", c->group, NULL);
    *out = c;
    return 0;
}

void cm_consumer_stop(cm_consumer *c, int timeout_ms)
{
    if (!c || !c->started)
        return;
    atomic_store(&c->stop, 1);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    if (timeout_ms < 0)
        timeout_ms = 0;
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    if (pthread_timedjoin_np(c->thread, NULL, &until) != 0) {
        /* most likely a dead-letter write waiting for the broker */
        cm_log_warn("consumer still busy at the stop deadline: purging the producer", "topic",
                    c->topic, "group", c->group, NULL);
        cm_kafka_producer_purge(c->producer);
        pthread_join(c->thread, NULL);
    }
    c->started = 0;
    char a[32], d[32], x[32];
    snprintf(a, sizeof a, "%llu", (unsigned long long)atomic_load(&c->n_applied));
    snprintf(d, sizeof d, "%llu", (unsigned long long)atomic_load(&c->n_duplicates));
    snprintf(x, sizeof x, "%llu", (unsigned long long)atomic_load(&c->n_dead));
    cm_log_info("consumer stopped", "topic", c->topic, "group", c->group, "applied", a,
                "duplicates", d, "dead_lettered", x, NULL);
}

void cm_consumer_free(cm_consumer *c)
{
    if (!c)
        return;
    cm_consumer_stop(c, 5000);
    if (c->rk)
        rd_kafka_destroy(c->rk);
    if (c->pending)
        rd_kafka_topic_partition_list_destroy(c->pending);
    cm_db_free(c->db);
    for (size_t i = 0; c->conf && c->conf[i]; i++)
        free(c->conf[i]);
    free(c->conf);
    free(c->brokers);
    free(c->topic);
    free(c->dlq_topic);
    free(c->group);
    free(c->dsn);
    free(c->schema);
    free(c->client_id);
    free(c->msgs);
    for (size_t i = 0; i < c->ntypes; i++)
        free(c->types[i]);
    free(c->types);
    free(c);
}

void cm_consumer_get_stats(const cm_consumer *c, cm_consumer_stats *out)
{
    if (!out)
        return;
    *out = (cm_consumer_stats){0};
    if (!c)
        return;
    out->applied = atomic_load(&c->n_applied);
    out->duplicates = atomic_load(&c->n_duplicates);
    out->dead_lettered = atomic_load(&c->n_dead);
    out->retries = atomic_load(&c->n_retries);
}
