/*
 * the transactional outbox: cm_outbox_add writes a row in the caller's
 * transaction; the relay thread publishes rows in id order while it holds
 * the schema's leader lock. common/README.md, "outbox relay", explains why
 * this keeps per-key order and never loses a row.
 */
#include "cm_buf.h"
#include "cm_db.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "cm_cloudevents.h"
#include "kafka_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_EXTRA_HEADERS 32
#define MAX_PAYLOAD (64u << 20) /* far above any broker's limit; fits an int */
#define METRICS_EVERY_S 1.0
#define CLEANUP_EVERY_S 10.0
#define CLEANUP_CHUNK "10000"
#define WAIT_LOG_EVERY_S 30.0
#define STATEMENT_TIMEOUT_MS 30000

/* ---- cm_outbox_add ---- */

static const char *const reserved_headers[] = {
    "ce_id",       "ce_type",   "ce_source", "ce_specversion", "ce_time", "content-type",
    "traceparent", "tenant-id", NULL,
};

static int is_reserved(const char *name)
{
    for (size_t i = 0; reserved_headers[i]; i++)
        if (strcmp(name, reserved_headers[i]) == 0)
            return 1;
    return 0;
}

/* extra headers as a json object; *out NULL when there are none */
static int headers_json(const char *const *h, char **out)
{
    *out = NULL;
    if (!h || !h[0])
        return 0;
    json_t *o = json_object();
    if (!o)
        return CM_ENOMEM;
    int rc = 0;
    for (size_t i = 0; h[i]; i += 2) {
        if (!h[i + 1] || !*h[i] || is_reserved(h[i]) || i / 2 >= MAX_EXTRA_HEADERS) {
            rc = CM_EINVAL;
            break;
        }
        json_t *v = json_string(h[i + 1]); /* NULL unless valid utf-8 */
        if (!v || json_object_set_new(o, h[i], v) != 0) {
            rc = CM_EINVAL;
            break;
        }
    }
    if (rc == 0 && !(*out = json_dumps(o, JSON_COMPACT)))
        rc = CM_ENOMEM;
    json_decref(o);
    return rc;
}

static int nonempty(const char *s)
{
    return s && *s;
}

/* ---- waking the relay after a commit ---- */

/* the relays running in this process, by schema: a commit wakes its
 * schema's relay directly when that relay leads */
static pthread_mutex_t relays_mu = PTHREAD_MUTEX_INITIALIZER;
static cm_outbox_relay *relays_head;

/* NOTIFY for a leader in another process, at most once per this many ms
 * per process (each notifying transaction holds a database-wide lock
 * through its commit); a row whose wake-up was skipped is found by the
 * leader's next poll (poll_ms) at the latest */
#define NOTIFY_GAP_MS 5
static _Atomic int64_t last_notify_ms;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void kick(cm_outbox_relay *r);
static int relay_leads_schema(const char *schema, int do_kick);

static void outbox_committed(cm_db *db, void *arg)
{
    (void)arg;
    const char *schema = cm_db_schema(db);
    if (schema && relay_leads_schema(schema, 1))
        return;
    int64_t now = mono_ms(), last = atomic_load(&last_notify_ms);
    if (now - last < NOTIFY_GAP_MS || !atomic_compare_exchange_strong(&last_notify_ms, &last, now))
        return;
    /* its own tiny transaction, after ours committed: the row is visible */
    PGresult *res = PQexec(cm_db_conn(db), "SELECT pg_notify(left('outbox.' || "
                                           "current_schema(), 63), '')");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        cm_log_debug("could not notify the outbox relay; it will poll", NULL);
    PQclear(res);
}

void cm_outbox_wake(cm_db *db)
{
    outbox_committed(db, NULL);
}

int cm_outbox_wake_on_commit(cm_db *db)
{
    int rc = cm_db_on_commit(db, outbox_committed, NULL);
    if (rc != CM_EINVAL)
        return rc;
    /* a transaction opened by hand, not by cm_db_tx: no hook can see its
     * commit, so notify inside it (delivered at commit; the serialising
     * path, kept for such callers) */
    PGresult *res = PQexec(cm_db_conn(db), "SELECT pg_notify(left('outbox.' || "
                                           "current_schema(), 63), '')");
    rc = PQresultStatus(res) == PGRES_TUPLES_OK ? 0 : cm_db_error(db, res, "notify the relay");
    PQclear(res);
    return rc;
}

#define ADD_BATCH_MAX 1000

#define OUTBOX_COLUMNS                                                                             \
    "event_id, tenant_id, topic, key, type, source, content_type, payload, traceparent, headers, " \
    "occurred_at, envelope_headers"

/* cm_outbox_add_batch's rows as the columns one prepared statement
 * unnests: eleven text[] literals and the payloads as one bytea[] in the
 * binary array format (raw bytes, no escaping). one statement text for any
 * batch size: a VALUES list of 11 parameters per row was parsed and
 * planned anew for every batch, which cost postgres more than inserting
 * the rows (commission's 1,000-event batches: 11,000 parameters) */
#define TEXT_COLS 11
#define BYTEA_OID 17

typedef struct outbox_columns {
    cm_buf text[TEXT_COLS];
    cm_buf payloads; /* bytea[], binary */
    char **owned;    /* headers json per row */
    size_t nowned;
} outbox_columns;

static void columns_free(outbox_columns *c)
{
    cm_buf_columns_free(c->text, TEXT_COLS);
    cm_buf_free(&c->payloads);
    for (size_t i = 0; c->owned && i < c->nowned; i++)
        free(c->owned[i]);
    free(c->owned);
    memset(c, 0, sizeof *c);
}

static void put_be32(cm_buf *b, uint32_t v)
{
    unsigned char x[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    cm_buf_put(b, x, 4);
}

static void text_or_null(cm_buf *b, const char *s)
{
    if (s)
        cm_buf_array_text(b, s);
    else
        cm_buf_array_null(b);
}

static int columns_build(outbox_columns *c, const cm_outbox_event *evs, size_t n)
{
    memset(c, 0, sizeof *c);
    if ((!evs && n) || n == 0 || n > ADD_BATCH_MAX)
        return CM_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const cm_outbox_event *ev = &evs[i];
        if (!cm_id_is_uuid(ev->event_id) || !nonempty(ev->tenant_id) ||
            !cm_kafka_topic_valid(ev->topic) || !nonempty(ev->key) || !nonempty(ev->type) ||
            !nonempty(ev->source) || (!ev->payload && ev->len > 0) || ev->len > MAX_PAYLOAD) {
            cm_log_error("invalid outbox event", "event_id", ev->event_id, "topic", ev->topic,
                         "type", ev->type, NULL);
            return CM_EINVAL;
        }
    }
    c->owned = calloc(n, sizeof *c->owned);
    if (!c->owned)
        return CM_ENOMEM;
    cm_buf_columns_begin(c->text, TEXT_COLS);
    /* array_recv's header: 1 dimension, no null flag, element type, then
     * the dimension's length and lower bound */
    put_be32(&c->payloads, 1);
    put_be32(&c->payloads, 0);
    put_be32(&c->payloads, BYTEA_OID);
    put_be32(&c->payloads, (uint32_t)n);
    put_be32(&c->payloads, 1);
    for (size_t i = 0; i < n; i++) {
        const cm_outbox_event *ev = &evs[i];
        char *hjson = NULL;
        int rc = headers_json(ev->headers, &hjson);
        if (rc) {
            cm_log_error("invalid outbox event headers", "event_id", ev->event_id, NULL);
            columns_free(c);
            return rc;
        }
        if (hjson)
            c->owned[c->nowned++] = hjson;
        cm_buf_array_text(&c->text[0], ev->event_id);
        cm_buf_array_text(&c->text[1], ev->tenant_id);
        cm_buf_array_text(&c->text[2], ev->topic);
        cm_buf_array_text(&c->text[3], ev->key);
        cm_buf_array_text(&c->text[4], ev->type);
        cm_buf_array_text(&c->text[5], ev->source);
        cm_buf_array_text(&c->text[6],
                          ev->content_type ? ev->content_type : "application/protobuf");
        text_or_null(&c->text[7], ev->traceparent);
        text_or_null(&c->text[8], hjson);
        if (ev->occurred_at_ms > 0)
            cm_buf_array_int(&c->text[9], (long long)ev->occurred_at_ms);
        else
            cm_buf_array_null(&c->text[9]);
        cm_buf_array_text(&c->text[10], ev->envelope_headers ? "t" : "f");
        put_be32(&c->payloads, (uint32_t)ev->len);
        if (ev->len)
            cm_buf_put(&c->payloads, ev->payload, ev->len);
    }
    if (c->payloads.oom || c->payloads.len > INT32_MAX) {
        columns_free(c);
        return CM_ENOMEM;
    }
    return 0;
}

int cm_outbox_add(cm_db *db, const cm_outbox_event *ev)
{
    return cm_outbox_add_batch(db, ev, 1);
}

/* no NOTIFY in the statement: a transaction that notifies holds a
 * database-wide lock from its commit until it ends, serialising every such
 * commit. the relay is woken after the commit instead
 * (cm_outbox_wake_on_commit). rows go in in unnest's order, so ids (the
 * relay's order) follow the batch */
#define OUTBOX_INSERT_SQL                                                                          \
    "INSERT INTO outbox (" OUTBOX_COLUMNS ") SELECT u.e::uuid, u.t, u.tp, u.k, u.ty, u.s, u.ct, "  \
    "u.p, u.tr, u.h::jsonb, coalesce(to_timestamp(u.ms::float8 / 1000), now()), u.eh FROM "        \
    "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "  \
    "$8::text[], $9::text[], $10::bigint[], $11::boolean[], $12::bytea[]) WITH ORDINALITY AS "     \
    "u(e, t, tp, k, ty, s, ct, tr, h, ms, eh, p, i) ORDER BY u.i"

struct cm_outbox_insert {
    outbox_columns c;
    const char *params[TEXT_COLS + 1];
    int lengths[TEXT_COLS + 1], formats[TEXT_COLS + 1];
};

int cm_outbox_insert_stmt(cm_outbox_insert **out, const cm_outbox_event *evs, size_t n,
                          cm_db_stmt *st)
{
    *out = NULL;
    cm_outbox_insert *r = calloc(1, sizeof *r);
    if (!r)
        return CM_ENOMEM;
    int rc = columns_build(&r->c, evs, n);
    if (rc) {
        free(r);
        return rc;
    }
    if (cm_buf_columns_end(r->c.text, TEXT_COLS, r->params)) {
        cm_outbox_insert_free(r);
        return CM_ENOMEM;
    }
    r->params[TEXT_COLS] = r->c.payloads.p;
    r->lengths[TEXT_COLS] = (int)r->c.payloads.len;
    r->formats[TEXT_COLS] = 1; /* the payloads travel as raw bytes */
    *st = (cm_db_stmt){.what = "insert outbox events",
                       .name = "cm_outbox_add",
                       .sql = OUTBOX_INSERT_SQL,
                       .nparams = TEXT_COLS + 1,
                       .params = r->params,
                       .lengths = r->lengths,
                       .formats = r->formats};
    *out = r;
    return 0;
}

void cm_outbox_insert_free(cm_outbox_insert *r)
{
    if (!r)
        return;
    columns_free(&r->c);
    free(r);
}

int cm_outbox_add_batch(cm_db *db, const cm_outbox_event *evs, size_t n)
{
    if (!db || (!evs && n) || n > ADD_BATCH_MAX)
        return CM_EINVAL;
    if (n == 0)
        return 0;
    PGconn *conn = cm_db_conn(db);
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    if (ts != PQTRANS_INTRANS) {
        /* outside a transaction the row could commit without its change */
        cm_log_error(ts == PQTRANS_INERROR ? "cm_outbox_add called in a failed transaction"
                                           : "cm_outbox_add called outside a transaction",
                     "topic", evs[0].topic, NULL);
        return CM_EINVAL;
    }
    cm_outbox_insert *r = NULL;
    cm_db_stmt st;
    int rc = cm_outbox_insert_stmt(&r, evs, n, &st);
    /* sql-safe: OUTBOX_INSERT_SQL, set by cm_outbox_insert_stmt */
    if (rc == 0)
        rc = cm_db_exec_prepared(db, st.what, st.name, st.sql, st.nparams, st.params, st.lengths,
                                 st.formats, NULL);
    if (rc == 0)
        rc = cm_outbox_wake_on_commit(db);
    else if (rc == CM_EEXIST)
        cm_log_warn("outbox event id already used", "event_id", evs[0].event_id, NULL);
    cm_outbox_insert_free(r);
    return rc;
}

/* ---- relay ---- */

struct cm_outbox_relay {
    char *dsn;
    char *schema;
    cm_kafka_producer *producer;
    cm_metrics *metrics;
    int batch_size;
    int poll_ms;
    int leader_retry_ms;
    int backoff_max_ms;
    int retention_s;
    int sweep_ms;

    cm_db *db; /* NULL while disconnected */
    int leader;
    cm_kafka_batch *batch;
    int64_t *ids; /* the batch's row ids */
    char *idbuf;  /* "{1,2,3}" for the mark statement */
    size_t idbuf_len;
    char id_lo[24], id_hi[24]; /* the smallest and largest id of idbuf */

    /* the fetch's lower bound (fetch_sql's note): every committed row
     * with id <= bound is published; settled: every id <= settled belongs
     * to a transaction that ended; probe_seq and probe_xid: a sequence
     * value and an xid taken after it, which settle probe_seq once a
     * snapshot's xmin is past probe_xid */
    int64_t bound, settled, probe_seq;
    int64_t probe_xid; /* 0: no probe out */
    double next_sweep, next_probe;

    pthread_t thread;
    int started;
    int wake[2];                 /* stop() and commits in this process write here */
    atomic_int kicked;           /* a wake-up byte is in the pipe */
    cm_outbox_relay *next_relay; /* relays_head's list */
    atomic_int stop;
    _Atomic double stop_deadline;
    atomic_int is_leader;
    atomic_uint_fast64_t published;
    unsigned seed; /* backoff jitter, relay thread only */

    cm_gauge *g_backlog;
    cm_gauge *g_oldest;
    cm_gauge *g_leader;
    cm_counter *c_published;
    cm_counter *c_failed;
    cm_histogram *h_latency;
};

static const double publish_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                         1,     2.5,  5,     10,   30,  60,   300};

static double now_s(void)
{
    return cm_kafka_mono_s();
}

static int stopping(const cm_outbox_relay *r)
{
    return atomic_load(&r->stop);
}

static void kick(cm_outbox_relay *r)
{
    if (atomic_exchange(&r->kicked, 1) == 0) {
        ssize_t w = write(r->wake[1], "k", 1);
        (void)w;
    }
}

/* 1 when a relay of this process leads schema (and, with do_kick, wakes
 * it) */
static int relay_leads_schema(const char *schema, int do_kick)
{
    int found = 0;
    pthread_mutex_lock(&relays_mu);
    for (cm_outbox_relay *r = relays_head; r; r = r->next_relay) {
        if (atomic_load(&r->is_leader) && strcmp(r->schema, schema) == 0) {
            if (do_kick)
                kick(r);
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&relays_mu);
    return found;
}

static void set_leader(cm_outbox_relay *r, int on)
{
    if (r->leader == on)
        return;
    r->leader = on;
    atomic_store(&r->is_leader, on);
    cm_gauge_set(r->g_leader, on);
    if (!on) {
        cm_gauge_set(r->g_backlog, 0);
        cm_gauge_set(r->g_oldest, 0);
    }
    /* giving leadership up on stop is routine; losing it is not */
    if (on)
        cm_log_info("outbox relay is the leader", "schema", r->schema, NULL);
    else if (stopping(r))
        cm_log_info("outbox relay released leadership", "schema", r->schema, NULL);
    else
        cm_log_warn("outbox relay lost leadership", "schema", r->schema, NULL);
}

static void forget_bound(cm_outbox_relay *r)
{
    r->bound = r->settled = r->probe_seq = r->probe_xid = 0;
    r->next_sweep = r->next_probe = 0;
}

static void disconnect(cm_outbox_relay *r)
{
    cm_db_free(r->db); /* the session ends: the leader lock is released */
    r->db = NULL;
    set_leader(r, 0);
    forget_bound(r);
}

/* a failed statement: a dead connection is dropped, to be made anew (with
 * a new session, so leadership must be won again) */
static int relay_error(cm_outbox_relay *r, PGresult *res, const char *what)
{
    int rc = cm_db_error(r->db, res, what);
    if (rc == CM_EUNAVAIL || PQstatus(cm_db_conn(r->db)) == CONNECTION_BAD) {
        cm_log_warn("outbox relay lost its database connection", "schema", r->schema, NULL);
        disconnect(r);
        return CM_EUNAVAIL;
    }
    return rc;
}

static int simple(cm_outbox_relay *r, const char *what, const char *sql, int n,
                  const char *const *params, PGresult **out)
{
    if (out)
        *out = NULL;
    PGresult *res = PQexecParams(cm_db_conn(r->db), sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        if (out)
            *out = res;
        else
            PQclear(res);
        return 0;
    }
    int rc = relay_error(r, res, what);
    PQclear(res);
    return rc;
}

static int connect_db(cm_outbox_relay *r)
{
    char err[512];
    cm_db *db = NULL;
    int rc = cm_db_connect(&db, r->dsn, r->schema, err, sizeof err);
    if (rc) {
        cm_log_warn("outbox relay could not connect to database", "schema", r->schema, "detail",
                    err, NULL);
        return rc;
    }
    r->db = db;
    /* the server must notice a vanished relay host within seconds, not the
     * kernel's two hours, or its leader lock would outlive it */
    rc = simple(r, "set relay session",
                "SELECT set_config('tcp_keepalives_idle', '10', false), "
                "set_config('tcp_keepalives_interval', '5', false), "
                "set_config('tcp_keepalives_count', '3', false)",
                0, NULL, NULL);
    if (rc == 0 && r->db)
        rc = cm_db_set_timeout_ms(r->db, STATEMENT_TIMEOUT_MS);
    if (rc && r->db)
        disconnect(r);
    return rc ? CM_EUNAVAIL : 0;
}

static int listen_channel(cm_outbox_relay *r)
{
    PGresult *res = NULL;
    const char *p[] = {r->schema};
    int rc = simple(r, "outbox channel", "SELECT left('outbox.' || $1::text, 63)", 1, p, &res);
    if (rc)
        return rc;
    PGconn *conn = cm_db_conn(r->db);
    const char *ch = PQgetvalue(res, 0, 0);
    char *ident = PQescapeIdentifier(conn, ch, strlen(ch));
    PQclear(res);
    if (!ident)
        return CM_ENOMEM;
    size_t len = strlen(ident) + 16;
    char *sql = malloc(len);
    if (!sql) {
        PQfreemem(ident);
        return CM_ENOMEM;
    }
    /* sql-safe: identifier quoted by PQescapeIdentifier */
    snprintf(sql, len, "LISTEN %s", ident);
    PQfreemem(ident);
    rc = simple(r, "listen for outbox rows", sql, 0, NULL, NULL);
    free(sql);
    return rc;
}

static void try_lead(cm_outbox_relay *r)
{
    PGresult *res = NULL;
    const char *p[] = {r->schema};
    /* the two-key form lives apart from the one-key migration locks */
    if (simple(r, "take the outbox leader lock",
               "SELECT pg_try_advisory_lock(hashtext('commerce.outbox'), hashtext($1::text))", 1, p,
               &res) != 0)
        return;
    int got = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!got)
        return;
    /* rows committed before LISTEN are found by the first fetch */
    if (listen_channel(r) != 0) {
        if (r->db)
            disconnect(r);
        return;
    }
    set_leader(r, 1);
}

static void drain_notifies(cm_outbox_relay *r)
{
    if (!r->db)
        return;
    PGconn *conn = cm_db_conn(r->db);
    if (!PQconsumeInput(conn)) {
        cm_log_warn("outbox relay lost its database connection", "schema", r->schema, NULL);
        disconnect(r);
        return;
    }
    PGnotify *n;
    while ((n = PQnotifies(conn)) != NULL)
        PQfreemem(n);
}

/* sleeps up to ms; a NOTIFY (when leading), stop() or a dead connection end
 * it early. returns 1 when woken by a notification */
static int wait_for(cm_outbox_relay *r, int ms)
{
    if (stopping(r) || ms <= 0)
        return 0;
    struct pollfd fds[2] = {{.fd = r->wake[0], .events = POLLIN}, {.fd = -1}};
    nfds_t n = 1;
    if (r->db && r->leader) {
        PGconn *conn = cm_db_conn(r->db);
        PGnotify *pending = PQnotifies(conn);
        if (pending) {
            PQfreemem(pending);
            return 1;
        }
        fds[1] = (struct pollfd){.fd = PQsocket(conn), .events = POLLIN};
        n = fds[1].fd >= 0 ? 2 : 1;
    }
    int rc = poll(fds, n, ms);
    if (rc <= 0)
        return 0;
    if (fds[0].revents) {
        char buf[16];
        /* drain first, then clear the flag: cleared first, a kick landing
         * between the two saw it clear, wrote its byte and set it, and the
         * drain ate that byte, leaving the flag set over an empty pipe: no
         * kick ever wrote again and every commit waited for the poll
         * (poll_ms, 200 ms) for the rest of the process's life. A kick
         * landing between the drain and the clear finds the flag set and
         * writes nothing; its commit came before this return, so the fetch
         * that follows sees its rows. */
        while (read(r->wake[0], buf, sizeof buf) > 0) {
        }
        atomic_store(&r->kicked, 0);
        if (!stopping(r))
            return 1; /* a commit in this process */
    }
    if (n == 2 && fds[1].revents) {
        drain_notifies(r);
        return r->db != NULL;
    }
    return 0;
}

static void update_metrics(cm_outbox_relay *r)
{
    PGresult *res = NULL;
    if (simple(r, "outbox backlog",
               "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - "
               "min(created_at)), 0) FROM outbox WHERE published_at IS NULL AND failed_at IS NULL",
               0, NULL, &res) != 0)
        return;
    cm_gauge_set(r->g_backlog, strtod(PQgetvalue(res, 0, 0), NULL));
    cm_gauge_set(r->g_oldest, strtod(PQgetvalue(res, 0, 1), NULL));
    PQclear(res);
}

/* with a retention, published rows are kept retention_s for inspection,
 * then deleted in chunks from the low ids (the oldest); without, the rows
 * left marked by an earlier setting are deleted */
static void cleanup(cm_outbox_relay *r)
{
    char secs[32];
    snprintf(secs, sizeof secs, "%d", r->retention_s);
    const char *p[] = {secs};
    /* with a retention at most 10 chunks per call (it runs every few
     * seconds); without, it runs once, to the end */
    for (int i = 0; (i < 10 || r->retention_s == 0) && r->db && !stopping(r); i++) {
        PGresult *res = NULL;
        if (simple(r, "delete published outbox rows",
                   "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at < "
                   "now() - make_interval(secs => $1::int) ORDER BY id LIMIT " CLEANUP_CHUNK ")",
                   1, p, &res) != 0)
            return;
        long n = strtol(PQcmdTuples(res), NULL, 10);
        PQclear(res);
        if (n < strtol(CLEANUP_CHUNK, NULL, 10))
            return;
    }
}

static int park_row(cm_outbox_relay *r, int64_t id, const char *event_id, const char *why)
{
    char sid[32];
    snprintf(sid, sizeof sid, "%lld", (long long)id);
    const char *p[] = {sid, why};
    cm_log_error("outbox row refused by kafka for good: parked, fix and clear failed_at to retry",
                 "schema", r->schema, "event_id", event_id, "error", why, NULL);
    cm_counter_add(r->c_failed, 1);
    return simple(r, "park outbox row",
                  "UPDATE outbox SET failed_at = now(), last_error = $2 WHERE id = $1::bigint", 2,
                  p, NULL);
}

/* records the broker's ack of the batch: the rows are deleted, or with a
 * retention marked published. deleting writes a small tombstone per row;
 * marking writes a whole new row version and its index entries (the
 * partial index on unsent rows names published_at, so the update is never
 * HOT) */
static int record_ack(cm_outbox_relay *r, size_t nacked)
{
    /* the batch's id range besides its list: a range of the primary key a
     * batch long is an index scan under any cost model. with the list
     * alone, random_page_cost = 4 (PostgreSQL's default) priced a thousand
     * index probes above a sequential scan of a preloaded outbox, once per
     * batch (the events benchmark, issue 15) */
    const char *p[] = {r->idbuf, r->id_lo, r->id_hi};
    PGresult *res = NULL;
    int rc = simple(r, "record outbox rows acknowledged",
                    r->retention_s > 0
                        ? "UPDATE outbox SET published_at = now() WHERE id BETWEEN $2::bigint AND "
                          "$3::bigint AND id = ANY($1::bigint[]) "
                          "RETURNING extract(epoch FROM clock_timestamp() - created_at)"
                        : "DELETE FROM outbox WHERE id BETWEEN $2::bigint AND $3::bigint AND "
                          "id = ANY($1::bigint[]) "
                          "RETURNING extract(epoch FROM clock_timestamp() - created_at)",
                    3, p, &res);
    if (rc)
        return rc;
    int n = PQntuples(res);
    for (int i = 0; i < n; i++)
        cm_histogram_observe(r->h_latency, strtod(PQgetvalue(res, i, 0), NULL));
    PQclear(res);
    if ((size_t)n != nacked)
        cm_log_warn("outbox rows changed while being published", "schema", r->schema, NULL);
    cm_counter_add(r->c_published, (uint64_t)n);
    atomic_fetch_add(&r->published, (uint_fast64_t)n);
    return 0;
}

/* waits for every report of the batch; when stopping, past the deadline
 * the producer is purged so the wait ends (purged rows stay unsent) */
static void await_batch(cm_outbox_relay *r)
{
    double started = now_s(), last_log = started, last_metrics = started;
    int purged = 0;
    while (cm_kafka_batch_wait(r->batch, 200) == CM_ETIMEDOUT) {
        double now = now_s();
        if (stopping(r) && !purged && now >= atomic_load(&r->stop_deadline)) {
            cm_log_warn("outbox relay stopping with a batch unacknowledged: purging", "schema",
                        r->schema, NULL);
            cm_kafka_producer_purge(r->producer);
            purged = 1;
        }
        if (now - last_log >= WAIT_LOG_EVERY_S) {
            char s[32];
            snprintf(s, sizeof s, "%.0f", now - started);
            cm_log_warn("outbox relay waiting for kafka to acknowledge a batch", "schema",
                        r->schema, "seconds", s, NULL);
            last_log = now;
        }
        /* the gauges must move during an outage: that is when they matter */
        if (r->db && now - last_metrics >= METRICS_EVERY_S) {
            update_metrics(r);
            last_metrics = now;
        }
    }
}

/*
 * The fetch starts after a lower bound. Published rows are deleted, and
 * until vacuum removes them (autovacuum wakes once a minute) the unsent
 * index keeps their entries: a fetch from the start walked over every one
 * of them, ~20 ms per fetch with 150,000 behind it (commission at 10,000
 * accruals/s writes two rows per accrual), most of the relay's cost.
 *
 * A bound is only safe below ids that can no longer appear: an id is taken
 * when its row is inserted, but the row shows when its transaction
 * commits, so a row with a smaller id can commit after a larger one was
 * published. So the relay probes the horizon: it reads the sequence's last
 * value S, then takes an xid X of its own (pg_current_xact_id, in a
 * transaction that commits at once). An id is taken only once its
 * transaction has an xid (the id's default, outbox_next_id, migration
 * 0002), so every transaction holding an id <= S had its xid before S was
 * read, hence before X: once a later snapshot's xmin is past X, every one
 * of them has ended, and ids <= S are settled. (A snapshot's xmax is not
 * "the next xid": it is the latest completed xid + 1, and a running
 * transaction with a higher xid lowers no xmin — so the probe takes an xid
 * rather than reading xmax; the first version did, and let running
 * transactions' ids fall below the bound.) A probe is taken at most every
 * PROBE_EVERY_S, one xid each.
 *
 * After a fetch whose rows were all acknowledged, bound = min(settled, the
 * largest id fetched) (or settled when nothing was left): every committed
 * row up to it is out. A failure drops the bound; a new leader starts from
 * 0. Rows a database wrote before migration 0002 took their ids the old
 * way, and callers could insert ids by hand: a fetch from the first row
 * every sweep_ms (1 s) is the safety net, never needed by the services.
 */
#define PROBE_EVERY_S 0.1

static const char fetch_sql[] =
    /* aliases matter: ORDER BY id would sort by an output column named id,
     * the text cast, before the table's bigint */
    "SELECT id::text AS row_id, event_id::text AS ev_id, tenant_id, topic, key, type, source, "
    "content_type, "
    "payload, traceparent, headers::text, "
    "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
    "envelope_headers "
    "FROM outbox WHERE published_at IS NULL AND failed_at IS NULL AND id > $2::bigint ORDER BY "
    "outbox.id LIMIT $1::int";

static const char probe_read_sql[] =
    "SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('outbox', 'id')::regclass), "
    "0), pg_snapshot_xmin(pg_current_snapshot())::text";
static const char probe_xid_sql[] = "SELECT pg_current_xact_id()::text";

/* the values of a one-row statement as numbers (b: a second column, or
 * NULL); 0 or a CM_E* */
static int probe_value(cm_outbox_relay *r, const char *sql, int64_t *a, int64_t *b)
{
    PGresult *res = PQexecParams(cm_db_conn(r->db), sql, 0, NULL, NULL, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        int rc = relay_error(r, res, "probe the outbox horizon");
        PQclear(res);
        return rc;
    }
    *a = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (b)
        *b = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    return 0;
}

/* advances r->settled from the probe out and puts out a new one (fetch_sql's
 * note), at most every PROBE_EVERY_S; 0 or a CM_E* */
static int probe_horizon(cm_outbox_relay *r)
{
    double now = now_s();
    if (now < r->next_probe)
        return 0;
    r->next_probe = now + PROBE_EVERY_S;
    int64_t seq = 0, xmin = 0;
    int rc = probe_value(r, probe_read_sql, &seq, &xmin);
    if (rc)
        return rc;
    if (r->probe_xid > 0 && xmin > r->probe_xid) {
        if (r->probe_seq > r->settled)
            r->settled = r->probe_seq;
        r->probe_xid = 0;
    }
    if (r->probe_xid == 0) {
        /* an xid taken after the sequence was read: every id <= seq
         * belongs to a transaction whose xid is smaller */
        int64_t xid = 0;
        if ((rc = probe_value(r, probe_xid_sql, &xid, NULL)))
            return rc;
        r->probe_seq = seq;
        r->probe_xid = xid;
    }
    return 0;
}

enum {
    F_ID,
    F_EVENT_ID,
    F_TENANT,
    F_TOPIC,
    F_KEY,
    F_TYPE,
    F_SOURCE,
    F_CTYPE,
    F_PAYLOAD,
    F_TRACE,
    F_HEADERS,
    F_TIME,
    F_ENVELOPE
};

static const char *col(const PGresult *res, int row, int c)
{
    return PQgetisnull(res, row, c) ? NULL : PQgetvalue(res, row, c);
}

/* builds row i's message and adds it to the batch. json holds the parsed
 * headers until the caller drops it (the producer copies them) */
static int add_row(cm_outbox_relay *r, const PGresult *res, int i, cm_kafka_header *hdrs,
                   json_t **json)
{
    cm_kafka_msg m = {
        .topic = col(res, i, F_TOPIC),
        .key = col(res, i, F_KEY),
        .key_len = (size_t)PQgetlength(res, i, F_KEY),
        .payload = PQgetvalue(res, i, F_PAYLOAD),
        .len = (size_t)PQgetlength(res, i, F_PAYLOAD),
        .id = col(res, i, F_EVENT_ID),
        .type = col(res, i, F_TYPE),
        .source = col(res, i, F_SOURCE),
        .time = col(res, i, F_TIME),
        .content_type = col(res, i, F_CTYPE),
        .traceparent = col(res, i, F_TRACE),
        .tenant_id = col(res, i, F_TENANT),
        .headers = hdrs,
    };
    /* structured mode: the value is the whole event, attributes and all;
     * binary-mode headers beside it would say it twice, unless the writer
     * asked for them (envelope_headers: an internal topic whose consumers
     * route by the envelope without parsing the value). the binary result
     * format sends a boolean as one byte, 0 or 1 */
    int envelope = PQgetlength(res, i, F_ENVELOPE) == 1 && PQgetvalue(res, i, F_ENVELOPE)[0] == 1;
    if (cm_cloudevent_is_structured(m.content_type) && !envelope)
        m.id = m.type = m.source = m.time = m.traceparent = m.tenant_id = NULL;
    *json = NULL;
    const char *h = col(res, i, F_HEADERS);
    if (h) {
        json_error_t jerr;
        *json = json_loadb(h, (size_t)PQgetlength(res, i, F_HEADERS), 0, &jerr);
        const char *name;
        json_t *v;
        if (*json && json_is_object(*json)) {
            json_object_foreach(*json, name, v)
            {
                if (json_is_string(v) && m.nheaders < MAX_EXTRA_HEADERS)
                    hdrs[m.nheaders++] =
                        (cm_kafka_header){name, json_string_value(v), json_string_length(v)};
            }
        }
    }
    return cm_kafka_batch_add(r->producer, r->batch, &m);
}

static int ids_to_array(cm_outbox_relay *r, size_t n)
{
    size_t need = 2 + n * 21;
    if (need > r->idbuf_len) {
        char *b = realloc(r->idbuf, need);
        if (!b)
            return CM_ENOMEM;
        r->idbuf = b;
        r->idbuf_len = need;
    }
    size_t o = 0;
    long long lo = n ? r->ids[0] : 0, hi = lo;
    r->idbuf[o++] = '{';
    for (size_t i = 0; i < n; i++) {
        o += (size_t)snprintf(r->idbuf + o, r->idbuf_len - o, "%s%lld", i ? "," : "",
                              (long long)r->ids[i]);
        lo = r->ids[i] < lo ? r->ids[i] : lo;
        hi = r->ids[i] > hi ? r->ids[i] : hi;
    }
    r->idbuf[o++] = '}';
    r->idbuf[o] = '\0';
    snprintf(r->id_lo, sizeof r->id_lo, "%lld", lo);
    snprintf(r->id_hi, sizeof r->id_hi, "%lld", hi);
    return 0;
}

/* one round: fetch up to batch_size unsent rows in id order, produce them
 * all, wait for every report, mark the acknowledged ones in one UPDATE.
 * returns the number of rows fetched, or a CM_E* when something failed
 * (the caller backs off; unacknowledged rows go out again next round) */
static int publish_batch(cm_outbox_relay *r)
{
    int prc = probe_horizon(r);
    if (prc)
        return prc;
    int64_t from = r->bound;
    double now = now_s();
    if (now >= r->next_sweep) {
        from = 0;
        r->next_sweep = now + r->sweep_ms / 1000.0;
    }
    char lim[16], after[24];
    snprintf(lim, sizeof lim, "%d", r->batch_size);
    snprintf(after, sizeof after, "%lld", (long long)from);
    const char *p[] = {lim, after};
    PGresult *res = PQexecParams(cm_db_conn(r->db), fetch_sql, 2, NULL, p, NULL, NULL, 1);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int rc = relay_error(r, res, "fetch outbox rows");
        PQclear(res);
        return rc;
    }
    int n = PQntuples(res);
    if (n == 0) {
        PQclear(res);
        /* nothing committed and unsent above from (<= bound): every
         * committed row up to settled is out */
        if (r->settled > r->bound)
            r->bound = r->settled;
        return 0;
    }
    cm_kafka_batch_reset(r->batch);
    cm_kafka_header hdrs[MAX_EXTRA_HEADERS];
    int added = 0, add_rc = 0, park_index = -1;
    const char *park_why = NULL;
    for (int i = 0; i < n; i++) {
        r->ids[i] = strtoll(PQgetvalue(res, i, F_ID), NULL, 10);
        json_t *json = NULL;
        add_rc = add_row(r, res, i, hdrs, &json);
        json_decref(json);
        if (add_rc) {
            /* the rest must wait: producing past a gap would reorder a key */
            if (add_rc == CM_EINVAL) {
                park_index = i;
                park_why = "refused by the producer (invalid or too large)";
            }
            break;
        }
        added++;
    }
    await_batch(r);

    size_t nacked = 0;
    int failed = 0;
    const char *first_error = NULL;
    for (int i = 0; i < added; i++) {
        const cm_kafka_report *rep = cm_kafka_batch_report(r->batch, (size_t)i);
        if (rep && rep->rc == 0) {
            r->ids[nacked++] = r->ids[i];
        } else if (rep && rep->permanent && park_index < 0) {
            park_index = i;
            park_why = rep->error;
        } else {
            failed++;
            if (!first_error)
                first_error = rep ? rep->error : "no report";
        }
    }
    /* ids[] is being compacted in place: the parked row's id and event id
     * are read from the result */
    int64_t park_id = park_index >= 0 ? strtoll(PQgetvalue(res, park_index, F_ID), NULL, 10) : 0;
    /* the last row out: a row refused while producing stops the batch
     * there (the rows after it were not produced) */
    int64_t last_id =
        strtoll(PQgetvalue(res, add_rc && park_index >= 0 ? park_index : n - 1, F_ID), NULL, 10);
    char park_event[CM_ID_SIZE] = "";
    if (park_index >= 0)
        snprintf(park_event, sizeof park_event, "%s", PQgetvalue(res, park_index, F_EVENT_ID));
    PQclear(res);

    int rc = 0;
    if (nacked > 0 && r->db) {
        rc = ids_to_array(r, nacked);
        if (rc == 0)
            rc = record_ack(r, nacked);
    }
    if (rc == 0 && park_index >= 0 && r->db)
        rc = park_row(r, park_id, park_event, park_why);
    if (rc) {
        forget_bound(r);
        return rc;
    }
    if (failed > 0 || (add_rc && park_index < 0)) {
        char nf[16];
        snprintf(nf, sizeof nf, "%d", failed + (add_rc && park_index < 0 ? 1 : 0));
        cm_log_warn("outbox rows not acknowledged by kafka: retrying", "schema", r->schema, "rows",
                    nf, "error", first_error ? first_error : cm_strerror(add_rc), NULL);
        forget_bound(r);
        return CM_EUNAVAIL;
    }
    /* every row fetched is out (acknowledged or parked), and with them
     * every committed row between from and last_id */
    int64_t up_to = last_id < r->settled ? last_id : r->settled;
    if (up_to > r->bound)
        r->bound = up_to;
    return n;
}

static int backoff_ms(cm_outbox_relay *r, int failures)
{
    long d = 100L << (failures < 10 ? failures - 1 : 9);
    if (d > r->backoff_max_ms)
        d = r->backoff_max_ms;
    /* jitter in [d/2, d]: replicas and restarts spread out */
    return (int)(d / 2 + rand_r(&r->seed) % (unsigned)(d / 2 + 1));
}

static void *relay_main(void *arg)
{
    cm_outbox_relay *r = arg;
    int failures = 0;
    double next_lock = 0, next_metrics = 0, next_cleanup = 0;
    while (!stopping(r)) {
        if (!r->db) {
            if (connect_db(r) != 0) {
                failures++;
                wait_for(r, backoff_ms(r, failures));
                continue;
            }
            next_lock = 0;
        }
        if (!r->leader) {
            double now = now_s();
            if (now >= next_lock) {
                try_lead(r);
                next_lock = now + r->leader_retry_ms / 1000.0;
            }
            if (!r->leader) {
                wait_for(r, r->leader_retry_ms);
                continue;
            }
            next_metrics = next_cleanup = 0;
        }
        double now = now_s();
        if (now >= next_metrics) {
            update_metrics(r);
            next_metrics = now + METRICS_EVERY_S;
        }
        if (r->db && now >= next_cleanup) {
            /* without a retention, once on taking the lead: rows a relay
             * with a retention (an earlier setting or version) left marked */
            cleanup(r);
            next_cleanup =
                r->retention_s == 0
                    ? INFINITY
                    : now + (r->retention_s < CLEANUP_EVERY_S ? r->retention_s : CLEANUP_EVERY_S);
        }
        if (!r->db)
            continue;
        drain_notifies(r);
        if (!r->db)
            continue;
        int n = publish_batch(r);
        if (n < 0) {
            failures++;
            wait_for(r, backoff_ms(r, failures));
            continue;
        }
        failures = 0;
        if (n >= r->batch_size)
            continue; /* more are waiting */
        wait_for(r, r->poll_ms);
    }
    if (r->db)
        disconnect(r);
    return NULL;
}

int cm_outbox_relay_start(cm_outbox_relay **out, const cm_outbox_relay_opts *o, char *err,
                          size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!out || !o || !o->dsn || !o->schema || !*o->schema || !o->producer) {
        if (err && errlen)
            snprintf(err, errlen, "the outbox relay needs a dsn, a schema and a producer");
        return CM_EINVAL;
    }
    *out = NULL;
    cm_outbox_relay *r = calloc(1, sizeof *r);
    if (!r)
        return CM_ENOMEM;
    r->wake[0] = r->wake[1] = -1;
    r->seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)r;
    r->producer = o->producer;
    r->metrics = o->metrics ? o->metrics : cm_metrics_default();
    r->batch_size = o->batch_size > 0 ? o->batch_size : 1000;
    r->poll_ms = o->poll_ms > 0 ? o->poll_ms : 200;
    r->leader_retry_ms = o->leader_retry_ms > 0 ? o->leader_retry_ms : 1000;
    r->backoff_max_ms = o->backoff_max_ms > 0 ? o->backoff_max_ms : 10000;
    r->retention_s = o->retention_s > 0 ? o->retention_s : 0;
    r->sweep_ms = o->sweep_ms > 0 ? o->sweep_ms : 1000;
    r->dsn = strdup(o->dsn);
    r->schema = strdup(o->schema);
    r->ids = calloc((size_t)r->batch_size, sizeof *r->ids);
    int rc = 0;
    if (!r->dsn || !r->schema || !r->ids || cm_kafka_batch_new(&r->batch, (size_t)r->batch_size))
        rc = CM_ENOMEM;
    if (rc == 0 && pipe2(r->wake, O_NONBLOCK | O_CLOEXEC) != 0)
        rc = CM_ENOMEM;
    if (rc == 0) {
        cm_metrics *m = r->metrics;
        r->g_backlog = cm_metrics_gauge(m, "outbox_backlog", "outbox rows not yet published", NULL);
        r->g_oldest = cm_metrics_gauge(m, "outbox_oldest_unsent_age_seconds",
                                       "age of the oldest unpublished outbox row", NULL);
        r->g_leader =
            cm_metrics_gauge(m, "outbox_relay_leader", "1 while this relay publishes", NULL);
        r->c_published = cm_metrics_counter(m, "outbox_published_total",
                                            "outbox rows published and acknowledged", NULL);
        r->c_failed = cm_metrics_counter(m, "outbox_failed_total",
                                         "outbox rows kafka refused for good (parked)", NULL);
        r->h_latency = cm_metrics_histogram(
            m, "outbox_publish_latency_seconds", "from the outbox insert to the broker's ack", NULL,
            publish_buckets, sizeof publish_buckets / sizeof publish_buckets[0]);
    }
    if (rc) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        cm_outbox_relay_free(r);
        return rc;
    }
    /* the first connection is made here so a wrong dsn fails the start */
    if (connect_db(r) != 0) {
        if (err && errlen)
            snprintf(err, errlen, "the outbox relay could not connect to the database");
        cm_outbox_relay_free(r);
        return CM_EUNAVAIL;
    }
    if (pthread_create(&r->thread, NULL, relay_main, r) != 0) {
        if (err && errlen)
            snprintf(err, errlen, "could not start the outbox relay thread");
        cm_outbox_relay_free(r);
        return CM_ENOMEM;
    }
    r->started = 1;
    pthread_mutex_lock(&relays_mu);
    r->next_relay = relays_head;
    relays_head = r;
    pthread_mutex_unlock(&relays_mu);
    cm_log_info("outbox relay started", "schema", r->schema, NULL);
    *out = r;
    return 0;
}

void cm_outbox_relay_stop(cm_outbox_relay *r, int timeout_ms)
{
    if (!r || !r->started)
        return;
    atomic_store(&r->stop_deadline, now_s() + (timeout_ms > 0 ? timeout_ms : 0) / 1000.0);
    atomic_store(&r->stop, 1);
    ssize_t w = write(r->wake[1], "x", 1);
    (void)w;
    pthread_join(r->thread, NULL);
    r->started = 0;
    char n[32];
    snprintf(n, sizeof n, "%llu", (unsigned long long)atomic_load(&r->published));
    cm_log_info("outbox relay stopped", "schema", r->schema, "published", n, NULL);
}

void cm_outbox_relay_free(cm_outbox_relay *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&relays_mu);
    for (cm_outbox_relay **p = &relays_head; *p; p = &(*p)->next_relay) {
        if (*p == r) {
            *p = r->next_relay;
            break;
        }
    }
    pthread_mutex_unlock(&relays_mu);
    cm_outbox_relay_stop(r, 0);
    if (r->db)
        cm_db_free(r->db);
    cm_kafka_batch_free(r->batch);
    if (r->wake[0] >= 0)
        close(r->wake[0]);
    if (r->wake[1] >= 0)
        close(r->wake[1]);
    free(r->ids);
    free(r->idbuf);
    free(r->dsn);
    free(r->schema);
    free(r);
}

int cm_outbox_relay_is_leader(const cm_outbox_relay *r)
{
    return r ? atomic_load(&r->is_leader) : 0;
}

uint64_t cm_outbox_relay_published(const cm_outbox_relay *r)
{
    return r ? (uint64_t)atomic_load(&r->published) : 0;
}

/* ---- a batch of rows for one fixed-text insert (cm_outbox_rows) ---- */

void cm_outbox_rows_init(cm_outbox_rows *r)
{
    memset(r, 0, sizeof *r);
    cm_buf *cols[] = {&r->id, &r->tenant, &r->key, &r->type, &r->at, &r->off, &r->len, &r->tp};
    for (size_t k = 0; k < sizeof cols / sizeof cols[0]; k++)
        cm_buf_array_begin(cols[k]);
}

void cm_outbox_rows_add(cm_outbox_rows *r, const cm_outbox_event *ev)
{
    cm_buf_array_text(&r->id, ev->event_id);
    cm_buf_array_text(&r->tenant, ev->tenant_id);
    cm_buf_array_text(&r->key, ev->key);
    cm_buf_array_text(&r->type, ev->type);
    cm_buf_array_int(&r->at, ev->occurred_at_ms);
    cm_buf_array_int(&r->off, (long long)r->blob.len);
    cm_buf_array_int(&r->len, (long long)ev->len);
    cm_buf_array_text(&r->tp, ev->traceparent ? ev->traceparent : "");
    cm_buf_put(&r->blob, ev->payload, ev->len);
    r->n++;
}

int cm_outbox_rows_close(cm_outbox_rows *r)
{
    cm_buf *cols[] = {&r->id, &r->tenant, &r->key, &r->type, &r->at, &r->off, &r->len, &r->tp};
    int oom = r->blob.oom;
    for (size_t k = 0; k < sizeof cols / sizeof cols[0]; k++) {
        cm_buf_array_end(cols[k]);
        oom |= cols[k]->oom;
    }
    return oom ? CM_ENOMEM : 0;
}

void cm_outbox_rows_params(const cm_outbox_rows *r, const char *p[CM_OUTBOX_ROWS_NPARAMS])
{
    const char *all[CM_OUTBOX_ROWS_NPARAMS] = {r->id.p,   r->tenant.p, r->key.p,
                                               r->type.p, r->at.p,     r->off.p,
                                               r->len.p,  r->tp.p,     r->blob.p ? r->blob.p : ""};
    memcpy(p, all, sizeof all);
}

void cm_outbox_rows_free(cm_outbox_rows *r)
{
    cm_buf *all[] = {&r->id,  &r->tenant, &r->key, &r->type, &r->at,
                     &r->off, &r->len,    &r->tp,  &r->blob};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        cm_buf_free(all[k]);
    r->n = 0;
}
