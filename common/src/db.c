#include "cm_db.h"
#include "cm_id.h"
#include "cm_err.h"
#include "cm_log.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_S "5"
#define BACKOFF_MIN_US 2000L
#define BACKOFF_MAX_US 200000L
#define SHA256_HEX_LEN 64

struct cm_db {
    PGconn *conn;
    char *schema;   /* the session's search_path */
    int timeout_ms; /* statement_timeout, re-applied after a reconnect */
    int in_tx;      /* inside cm_db_tx: no nesting, no migrations */
    int down;       /* the last reconnect failed: log the outage once */
    uint64_t rng;   /* backoff jitter; per connection, so no locking */
    /* run once after the current cm_db_tx transaction commits */
    struct {
        cm_db_commit_fn fn;
        void *arg;
    } on_commit[CM_DB_COMMIT_HOOKS];
    int n_on_commit;
    /* statements prepared on the current session (cm_db_exec_prepared);
     * forgotten when the connection is reset */
    char (*prepared)[CM_DB_PREPARED_NAME];
    int n_prepared;
};

/* ---- small helpers ---- */

/* libpq messages span lines ("...failed: refused\n\tIs the server
 * running..."); err and log fields are one line */
static const char *one_line(char *buf, size_t len, const char *s)
{
    size_t o = 0;
    int space = 0;
    for (; s && *s && o + 1 < len; s++) {
        if (*s == '\n' || *s == '\r' || *s == '\t') {
            space = o > 0;
            continue;
        }
        if (space && o + 2 < len)
            buf[o++] = ' ';
        space = 0;
        buf[o++] = *s;
    }
    /* cut short: drop a split utf-8 sequence, which the json log would refuse */
    if (s && *s) {
        while (o > 0 && ((unsigned char)buf[o - 1] & 0xC0) == 0x80)
            o--;
        if (o > 0 && ((unsigned char)buf[o - 1] & 0xC0) == 0xC0)
            o--;
    }
    buf[o] = '\0';
    return buf;
}

static uint64_t next_rand(cm_db *db)
{
    /* xorshift64*: jitter only needs to decorrelate competing workers */
    uint64_t x = db->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    db->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void seed_rand(cm_db *db)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    db->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)db ^
              ((uint64_t)getpid() << 40);
    if (db->rng == 0)
        db->rng = 0x9E3779B97F4A7C15ULL;
}

/* full exponential backoff with jitter in [d/2, d], d = 2ms * 2^(n-1),
 * capped at 200ms: conflicting workers spread out instead of colliding
 * again in lock step */
static void backoff(cm_db *db, int attempt)
{
    long d = BACKOFF_MAX_US;
    if (attempt < 8)
        d = BACKOFF_MIN_US << (attempt - 1);
    if (d > BACKOFF_MAX_US)
        d = BACKOFF_MAX_US;
    long us = d / 2 + (long)(next_rand(db) % (uint64_t)(d / 2 + 1));
    struct timespec ts = {us / 1000000L, (us % 1000000L) * 1000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static int sha256_hex(const char *s, char out[SHA256_HEX_LEN + 1])
{
    cm_sha256_hex(s, strlen(s), out);
    return strcmp(out, "unhashable") == 0 ? CM_EINTERNAL : 0;
}

/* ---- error mapping ---- */

static int map_sqlstate(const char *st)
{
    if (!st || strlen(st) != 5)
        return CM_EIO;
    if (strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0)
        return CM_ECONFLICT;
    if (strcmp(st, "23505") == 0)
        return CM_EEXIST;
    if (strncmp(st, "23", 2) == 0)
        return CM_EINVAL;
    if (strncmp(st, "08", 2) == 0)
        return CM_EUNAVAIL;
    /* admin/crash shutdown, server starting up: the connection is gone */
    if (strcmp(st, "57P01") == 0 || strcmp(st, "57P02") == 0 || strcmp(st, "57P03") == 0)
        return CM_EUNAVAIL;
    if (strcmp(st, "57014") == 0)
        return CM_ETIMEDOUT;
    return CM_EIO;
}

static cm_log_level level_for(int rc)
{
    switch (rc) {
    case CM_ECONFLICT:
        return CM_LOG_DEBUG; /* retried by cm_db_tx */
    case CM_EEXIST:
    case CM_EINVAL:
        return CM_LOG_INFO; /* usually the caller's input */
    case CM_ETIMEDOUT:
    case CM_EUNAVAIL:
        return CM_LOG_WARN;
    default:
        return CM_LOG_ERROR;
    }
}

/* cm_db_error plus the statement text when known; the server's words go to
 * the log only */
static int db_error(cm_db *db, const PGresult *res, const char *what, const char *sql)
{
    PGconn *conn = db ? db->conn : NULL;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        cm_log_error("cm_db_error called on a successful result", "what", what, NULL);
        return CM_EINTERNAL;
    }
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    int rc = map_sqlstate(state);
    if (!conn || PQstatus(conn) == CONNECTION_BAD)
        rc = CM_EUNAVAIL;

    cm_log_level lvl = level_for(rc);
    if (cm_log_enabled(lvl)) {
        char msg[1024];
        const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        if (!primary)
            primary = conn ? PQerrorMessage(conn) : "no connection";
        if (!primary || !*primary)
            primary = PQresStatus(st);
        one_line(msg, sizeof msg, primary);
        const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
        const char *constraint = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
        const char *table = res ? PQresultErrorField(res, PG_DIAG_TABLE_NAME) : NULL;
        cm_log(lvl, "database statement failed", "what", what, "sqlstate", state, "error", msg,
               "detail", detail, "constraint", constraint, "table", table, "code", cm_strerror(rc),
               "sql", sql, "schema", db ? db->schema : NULL, NULL);
    }
    return rc;
}

/* a statement's result: on success handed to *out (or cleared), 1; else 0
 * and res is the caller's to look at */
static int hand_out(PGresult *res, PGresult **out)
{
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        return 0;
    if (out)
        *out = res;
    else
        PQclear(res);
    return 1;
}

/* hand_out, or the error (logged with the statement) and res cleared */
static int finish(cm_db *db, PGresult *res, const char *what, const char *sql, PGresult **out)
{
    if (hand_out(res, out))
        return 0;
    int rc = db_error(db, res, what, sql);
    PQclear(res);
    return rc;
}

int cm_db_error(cm_db *db, const PGresult *res, const char *what)
{
    return db_error(db, res, what, NULL);
}

int cm_db_exec(cm_db *db, const char *what, const char *sql, int nparams, const char *const *params,
               PGresult **out)
{
    if (out)
        *out = NULL;
    if (!db || !sql || nparams < 0 || (nparams > 0 && !params))
        return CM_EINVAL;
    return finish(db, PQexecParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0), what, sql,
                  out);
}

static int db_reconnect(cm_db *db);

int cm_db_read(cm_db *db, const char *what, const char *sql, int nparams, const char *const *params,
               PGresult **out)
{
    int rc = cm_db_exec(db, what, sql, nparams, params, out);
    if (rc == CM_EUNAVAIL && db && !db->in_tx && PQstatus(db->conn) == CONNECTION_BAD &&
        db_reconnect(db) == 0)
        rc = cm_db_exec(db, what, sql, nparams, params, out);
    return rc;
}

int cm_db_read_row(cm_db *db, const char *what, const char *sql, int nparams,
                   const char *const *params, PGresult **out)
{
    int rc = cm_db_read(db, what, sql, nparams, params, out);
    if (rc == 0 && PQntuples(*out) == 0) {
        PQclear(*out);
        *out = NULL;
        return CM_ENOTFOUND;
    }
    return rc;
}

int64_t cm_db_int(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

void cm_db_text(char *dst, size_t cap, const PGresult *r, int row, int col)
{
    snprintf(dst, cap, "%s", PQgetvalue(r, row, col));
}

static int sqlstate_is(const PGresult *r, const char *code)
{
    const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s && strcmp(s, code) == 0;
}

static int is_prepared(const cm_db *db, const char *name)
{
    for (int i = 0; i < db->n_prepared; i++)
        if (strcmp(db->prepared[i], name) == 0)
            return 1;
    return 0;
}

static void forget_prepared(cm_db *db, const char *name)
{
    for (int i = 0; i < db->n_prepared; i++) {
        if (strcmp(db->prepared[i], name) == 0) {
            memcpy(db->prepared[i], db->prepared[db->n_prepared - 1], CM_DB_PREPARED_NAME);
            db->n_prepared--;
            return;
        }
    }
}

int cm_db_exec_prepared(cm_db *db, const char *what, const char *name, const char *sql, int nparams,
                        const char *const *params, const int *lengths, const int *formats,
                        PGresult **out)
{
    if (out)
        *out = NULL;
    if (!db || !name || !sql || strlen(name) >= CM_DB_PREPARED_NAME || nparams < 0 ||
        (nparams > 0 && !params))
        return CM_EINVAL;
    for (int attempt = 0;; attempt++) {
        if (!is_prepared(db, name)) {
            if (!db->prepared) {
                db->prepared = calloc(CM_DB_PREPARED_MAX, CM_DB_PREPARED_NAME);
                if (!db->prepared)
                    return CM_ENOMEM;
            }
            if (db->n_prepared >= CM_DB_PREPARED_MAX) {
                /* full: run it unprepared rather than grow without bound */
                return finish(
                    db, PQexecParams(db->conn, sql, nparams, NULL, params, lengths, formats, 0),
                    what, sql, out);
            }
            PGresult *res = PQprepare(db->conn, name, sql, nparams, NULL);
            if (sqlstate_is(res, "42P05")) {
                /* the session has it already (not through us): use it; the
                 * failed PREPARE aborted an open transaction, though */
                PQclear(res);
                snprintf(db->prepared[db->n_prepared++], CM_DB_PREPARED_NAME, "%s", name);
                if (db->in_tx)
                    return CM_ECONFLICT;
                continue;
            }
            int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
            if (!ok) {
                int rc = db_error(db, res, what, sql);
                PQclear(res);
                return rc;
            }
            PQclear(res);
            snprintf(db->prepared[db->n_prepared++], CM_DB_PREPARED_NAME, "%s", name);
        }
        PGresult *res = PQexecPrepared(db->conn, name, nparams, params, lengths, formats, 0);
        if (hand_out(res, out))
            return 0;
        if (sqlstate_is(res, "26000")) {
            /* the session lost it (a server-side DISCARD): prepare again,
             * unless that aborted our transaction: then the caller's
             * cm_db_tx runs again */
            PQclear(res);
            forget_prepared(db, name);
            if (db->in_tx || attempt > 0)
                return CM_ECONFLICT;
            continue;
        }
        int rc = db_error(db, res, what, sql);
        PQclear(res);
        return rc;
    }
}

int cm_db_pipeline(cm_db *db, cm_db_stmt *s, size_t n)
{
    if (!db || !s || n == 0 || n > CM_DB_PIPELINE_MAX)
        return CM_EINVAL;
    for (size_t i = 0; i < n; i++) {
        s[i].res = NULL;
        if (!s[i].sql || (s[i].name && strlen(s[i].name) >= CM_DB_PREPARED_NAME) ||
            s[i].nparams < 0 || (s[i].nparams > 0 && !s[i].params))
            return CM_EINVAL;
    }
    if (!db->in_tx) {
        /* outside a transaction each statement would commit on its own */
        cm_log_error("cm_db_pipeline called outside a transaction", "what", s[0].what, NULL);
        return CM_EINVAL;
    }
    if (!db->prepared && !(db->prepared = calloc(CM_DB_PREPARED_MAX, CM_DB_PREPARED_NAME)))
        return CM_ENOMEM;
    PGconn *conn = db->conn;
    if (!PQenterPipelineMode(conn))
        return db_error(db, NULL, "enter pipeline mode", NULL);
    /* how each went out: 0 unprepared, 1 prepared before, 2 prepared now
     * (its PREPARE's result comes first), 3 its PREPARE only (the
     * statement itself could not be sent) */
    unsigned char how[CM_DB_PIPELINE_MAX] = {0};
    size_t sent = 0;
    int rc = 0;
    for (; sent < n; sent++) {
        const cm_db_stmt *t = &s[sent];
        int ok = 1;
        if (t->name && is_prepared(db, t->name)) {
            how[sent] = 1;
        } else if (t->name && db->n_prepared + (int)sent < CM_DB_PREPARED_MAX) {
            /* a name twice in one pipeline: prepared by the first */
            how[sent] = 2;
            for (size_t k = 0; k < sent; k++)
                if (how[k] == 2 && strcmp(s[k].name, t->name) == 0)
                    how[sent] = 1;
            /* sql-safe: a cm_db_stmt's text, checked where it is set (.sql =) */
            if (how[sent] == 2)
                ok = PQsendPrepare(conn, t->name, t->sql, t->nparams, NULL);
        }
        if (ok && how[sent])
            ok = PQsendQueryPrepared(conn, t->name, t->nparams, t->params, t->lengths, t->formats,
                                     0);
        else if (ok)
            /* sql-safe: a cm_db_stmt's text, checked where it is set (.sql =) */
            ok = PQsendQueryParams(conn, t->sql, t->nparams, NULL, t->params, t->lengths,
                                   t->formats, 0);
        if (!ok) {
            rc = db_error(db, NULL, t->what, t->sql);
            if (how[sent] == 2) {
                how[sent++] = 3; /* its PREPARE went: its result is read */
            }
            break;
        }
    }
    /* what went out is read back whatever happened */
    int synced = PQpipelineSync(conn);
    if (!synced && rc == 0)
        rc = db_error(db, NULL, "pipeline sync", NULL);
    /* each statement's results (its PREPARE's first), each set ended by
     * NULL; after a failure the rest come back PGRES_PIPELINE_ABORTED */
    for (size_t i = 0; synced && i < sent; i++) {
        int lost = 0;
        for (int part = how[i] >= 2 ? 0 : 1; part < (how[i] == 3 ? 1 : 2) && !lost; part++) {
            PGresult *r = PQgetResult(conn);
            if (!r) {
                /* out of step (a lost connection): the drain below ends it */
                if (rc == 0)
                    rc = db_error(db, NULL, s[i].what, s[i].sql);
                lost = 1;
                break;
            }
            ExecStatusType st = PQresultStatus(r);
            int good = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
            if (part == 0 && good) {
                snprintf(db->prepared[db->n_prepared++], CM_DB_PREPARED_NAME, "%s", s[i].name);
            } else if (part == 1 && good && rc == 0) {
                s[i].res = r;
                r = NULL;
            } else if (st != PGRES_PIPELINE_ABORTED && !good && rc == 0) {
                if (sqlstate_is(r, "26000") || sqlstate_is(r, "42P05")) {
                    /* the session lost it, or had it without us: prepared
                     * anew (or adopted) when the transaction runs again */
                    if (sqlstate_is(r, "42P05"))
                        snprintf(db->prepared[db->n_prepared++], CM_DB_PREPARED_NAME, "%s",
                                 s[i].name);
                    else
                        forget_prepared(db, s[i].name);
                    rc = CM_ECONFLICT;
                } else {
                    rc = db_error(db, r, s[i].what, s[i].sql);
                }
            }
            PQclear(r);
            /* the end of this set */
            while ((r = PQgetResult(conn)))
                PQclear(r);
        }
        if (lost)
            break;
    }
    /* on to the sync point: NULLs between sets are skipped, two in a row
     * mean nothing more is coming */
    for (int nulls = 0; synced && nulls < 2 && PQstatus(conn) != CONNECTION_BAD;) {
        PGresult *r = PQgetResult(conn);
        if (!r) {
            nulls++;
            continue;
        }
        nulls = 0;
        ExecStatusType st = PQresultStatus(r);
        PQclear(r);
        if (st == PGRES_PIPELINE_SYNC)
            break;
    }
    if (!PQexitPipelineMode(conn)) {
        /* still busy: a connection that cannot leave pipeline mode would
         * refuse every later statement, so it is replaced (the
         * transaction is lost with it, as with a dropped connection) */
        if (rc == 0)
            rc = db_error(db, NULL, "exit pipeline mode", NULL);
        db_reconnect(db);
        rc = CM_EUNAVAIL;
    }
    if (PQstatus(conn) == CONNECTION_BAD)
        rc = CM_EUNAVAIL;
    if (rc)
        for (size_t i = 0; i < n; i++) {
            PQclear(s[i].res);
            s[i].res = NULL;
        }
    return rc;
}

/* for statements built here from quoted identifiers and integers only */
static int exec_simple(cm_db *db, const char *what, const char *sql)
{
    return cm_db_exec(db, what, sql, 0, NULL, NULL);
}

/* ---- connection ---- */

static int apply_session(cm_db *db)
{
    char *ident = PQescapeIdentifier(db->conn, db->schema, strlen(db->schema));
    if (!ident)
        return PQstatus(db->conn) == CONNECTION_BAD ? CM_EUNAVAIL : CM_EINVAL;
    size_t len = strlen(ident) + 64;
    char *sql = malloc(len);
    if (!sql) {
        PQfreemem(ident);
        return CM_ENOMEM;
    }
    /* sql-safe: identifier quoted by PQescapeIdentifier */
    snprintf(sql, len, "SET search_path TO %s", ident);
    PQfreemem(ident);
    int rc = exec_simple(db, "set search_path", sql);
    free(sql);
    if (rc == 0 && db->timeout_ms > 0) {
        char t[64];
        /* sql-safe: an int the runtime formats */
        snprintf(t, sizeof t, "SET statement_timeout = %d", db->timeout_ms);
        rc = exec_simple(db, "set statement_timeout", t);
    }
    return rc;
}

/* server notices (CREATE ... IF NOT EXISTS "skipping", RAISE WARNING) would
 * reach stderr as bare text through libpq's default; make them log lines */
static void on_notice(void *arg, const PGresult *res)
{
    cm_db *db = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    cm_log_level lvl = sev && strcmp(sev, "WARNING") == 0 ? CM_LOG_WARN : CM_LOG_DEBUG;
    if (cm_log_enabled(lvl))
        cm_log(lvl, "database notice", "severity", sev, "sqlstate",
               PQresultErrorField(res, PG_DIAG_SQLSTATE), "error", msg, "schema", db->schema, NULL);
}

/* PQreset reuses the original parameters; the session settings are ours to
 * restore */
static int db_reconnect(cm_db *db)
{
    /* a health probe retries every second during an outage: say it once */
    cm_log_level lvl = db->down ? CM_LOG_DEBUG : CM_LOG_WARN;
    cm_log(lvl, "database connection lost, reconnecting", "schema", db->schema, NULL);
    PQreset(db->conn);
    db->n_prepared = 0; /* a new session has none */
    if (PQstatus(db->conn) != CONNECTION_OK) {
        char msg[512];
        cm_log(db->down ? CM_LOG_DEBUG : CM_LOG_ERROR, "could not reconnect to database", "schema",
               db->schema, "error", one_line(msg, sizeof msg, PQerrorMessage(db->conn)), NULL);
        db->down = 1;
        return CM_EUNAVAIL;
    }
    int rc = apply_session(db);
    if (rc) {
        db->down = 1;
        return rc == CM_ENOMEM ? rc : CM_EUNAVAIL;
    }
    db->down = 0;
    cm_log_info("reconnected to database", "schema", db->schema, NULL);
    return 0;
}

int cm_db_connect(cm_db **out, const char *dsn, const char *schema, char *err, size_t errlen)
{
    cm_err_set(err, errlen, "%s", "");
    if (!out)
        return CM_EINVAL;
    *out = NULL;
    if (!dsn || !schema || !*schema) {
        cm_err_set(err, errlen, "a database dsn and a schema are required");
        return CM_EINVAL;
    }
    cm_db *db = calloc(1, sizeof *db);
    if (!db || !(db->schema = strdup(schema))) {
        free(db);
        cm_err_set(err, errlen, "out of memory");
        return CM_ENOMEM;
    }
    seed_rand(db);

    char app[64];
    snprintf(app, sizeof app, "commerce-%s", schema);
    /* later keywords win, and the expanded dsn comes last: our values are
     * only defaults */
    const char *const keys[] = {"connect_timeout", "application_name", "dbname", NULL};
    const char *const vals[] = {CONNECT_TIMEOUT_S, app, dsn, NULL};
    db->conn = PQconnectdbParams(keys, vals, 1);
    if (!db->conn) {
        cm_db_free(db);
        cm_err_set(err, errlen, "out of memory");
        return CM_ENOMEM;
    }
    PQsetNoticeReceiver(db->conn, on_notice, db);
    if (PQstatus(db->conn) != CONNECTION_OK) {
        char msg[512];
        cm_err_set(err, errlen, "could not connect to database: %s",
                   one_line(msg, sizeof msg, PQerrorMessage(db->conn)));
        cm_db_free(db);
        return CM_EUNAVAIL;
    }
    int rc = apply_session(db);
    if (rc) {
        cm_err_set(err, errlen, "could not set search_path to schema \"%s\": %s", schema,
                   cm_strerror(rc));
        cm_db_free(db);
        return rc == CM_ENOMEM ? rc : CM_EUNAVAIL;
    }
    *out = db;
    return 0;
}

void cm_db_free(cm_db *db)
{
    if (!db)
        return;
    if (db->conn)
        PQfinish(db->conn);
    free(db->prepared);
    free(db->schema);
    free(db);
}

PGconn *cm_db_conn(cm_db *db)
{
    return db ? db->conn : NULL;
}

int cm_db_ping(cm_db *db)
{
    if (!db)
        return CM_EINVAL;
    if (PQstatus(db->conn) == CONNECTION_OK) {
        PGresult *res = PQexec(db->conn, "SELECT 1");
        int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
        PQclear(res);
        if (ok)
            return 0;
        if (PQstatus(db->conn) == CONNECTION_OK)
            return CM_EUNAVAIL; /* alive but refusing work, e.g. inside a failed tx */
    }
    return db_reconnect(db) == 0 ? 0 : CM_EUNAVAIL;
}

int cm_db_set_timeout_ms(cm_db *db, int ms)
{
    if (!db || ms < 0)
        return CM_EINVAL;
    char sql[64];
    /* sql-safe: an int the runtime formats */
    snprintf(sql, sizeof sql, "SET statement_timeout = %d", ms);
    int rc = exec_simple(db, "set statement_timeout", sql);
    if (rc == 0)
        db->timeout_ms = ms;
    return rc;
}

/* ---- transactions ---- */

static const char *isolation_level(const char *iso)
{
    static const char *const levels[] = {"READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"};
    if (!iso)
        return levels[0];
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (strcasecmp(iso, levels[i]) == 0)
            return levels[i];
    return NULL;
}

static void rollback(cm_db *db)
{
    PGTransactionStatusType ts = PQtransactionStatus(db->conn);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        (void)exec_simple(db, "rollback", "ROLLBACK");
}

int cm_db_on_commit(cm_db *db, cm_db_commit_fn fn, void *arg)
{
    if (!db || !fn || !db->in_tx)
        return CM_EINVAL;
    for (int i = 0; i < db->n_on_commit; i++)
        if (db->on_commit[i].fn == fn && db->on_commit[i].arg == arg)
            return 0;
    if (db->n_on_commit >= CM_DB_COMMIT_HOOKS)
        return CM_ENOMEM;
    db->on_commit[db->n_on_commit].fn = fn;
    db->on_commit[db->n_on_commit].arg = arg;
    db->n_on_commit++;
    return 0;
}

/* after COMMIT: the hooks run on the now idle connection, in order */
static void run_commit_hooks(cm_db *db)
{
    int n = db->n_on_commit;
    db->n_on_commit = 0;
    for (int i = 0; i < n; i++)
        db->on_commit[i].fn(db, db->on_commit[i].arg);
}

const char *cm_db_schema(const cm_db *db)
{
    return db ? db->schema : NULL;
}

int cm_db_tx(cm_db *db, const char *isolation, int max_attempts, cm_db_tx_fn fn, void *arg)
{
    if (!db || !fn)
        return CM_EINVAL;
    const char *level = isolation_level(isolation);
    if (!level) {
        cm_log_error("unknown transaction isolation level", "isolation", isolation, NULL);
        return CM_EINVAL;
    }
    if (db->in_tx) {
        cm_log_error("cm_db_tx called inside a transaction", "schema", db->schema, NULL);
        return CM_EINVAL;
    }
    if (max_attempts < 1)
        max_attempts = 1;
    char begin[64];
    /* sql-safe: level is a literal of isolation_level's table */
    snprintf(begin, sizeof begin, "BEGIN ISOLATION LEVEL %s", level);

    int reconnected = 0;
    int attempt = 0;
    while (attempt < max_attempts) {
        if (PQstatus(db->conn) == CONNECTION_BAD) {
            if (reconnected || db_reconnect(db) != 0)
                return CM_EUNAVAIL;
            reconnected = 1;
        }
        attempt++;
        db->n_on_commit = 0; /* a rolled-back attempt's hooks are void */
        int rc = exec_simple(db, "begin", begin);
        if (rc == 0) {
            db->in_tx = 1;
            rc = fn(db, arg);
            db->in_tx = 0;
            if (rc == 0) {
                PGTransactionStatusType ts = PQtransactionStatus(db->conn);
                if (ts == PQTRANS_INTRANS) {
                    rc = exec_simple(db, "commit", "COMMIT");
                    if (rc == 0) {
                        run_commit_hooks(db);
                        return 0;
                    }
                    if (rc == CM_EUNAVAIL) {
                        /* the commit may or may not have happened: running
                         * fn again could apply it twice */
                        cm_log_error("connection lost during commit: outcome unknown", "schema",
                                     db->schema, NULL);
                        return CM_EUNAVAIL;
                    }
                } else if (ts == PQTRANS_INERROR) {
                    /* COMMIT would silently roll back and report success */
                    cm_log_error("transaction function returned success after a failed statement",
                                 "schema", db->schema, NULL);
                    rollback(db);
                    return CM_EINTERNAL;
                } else if (ts == PQTRANS_IDLE) {
                    cm_log_error("transaction function ended the transaction itself", "schema",
                                 db->schema, NULL);
                    return CM_EINTERNAL;
                } else {
                    rc = CM_EUNAVAIL;
                }
            }
        }
        rollback(db);

        if (rc == CM_EUNAVAIL && PQstatus(db->conn) == CONNECTION_BAD && !reconnected) {
            /* nothing was committed: reconnect and run again */
            if (db_reconnect(db) != 0)
                return CM_EUNAVAIL;
            reconnected = 1;
            attempt--;
            continue;
        }
        if (rc != CM_ECONFLICT)
            return rc;
        if (attempt < max_attempts) {
            if (cm_log_enabled(CM_LOG_DEBUG)) {
                char n[16];
                snprintf(n, sizeof n, "%d", attempt);
                cm_log_debug("retrying transaction after a serialization failure", "attempt", n,
                             "schema", db->schema, NULL);
            }
            backoff(db, attempt);
        }
    }
    char n[16];
    snprintf(n, sizeof n, "%d", max_attempts);
    cm_log_warn("transaction gave up after repeated serialization failures", "attempts", n,
                "schema", db->schema, NULL);
    return CM_ECONFLICT;
}

/* ---- migrations ---- */

typedef struct {
    int version;
    char name[256];
    char checksum[SHA256_HEX_LEN + 1];
} applied_row;

static int check_list(const cm_migration *list, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        const cm_migration *m = &list[i];
        if (m->version <= 0 || !m->name || !m->sql) {
            cm_err_set(err, errlen, "migration #%zu (%s) needs a positive version, a name and sql",
                       i, m->name ? m->name : "unnamed");
            return CM_EINVAL;
        }
        if (i > 0 && m->version <= list[i - 1].version) {
            cm_err_set(err, errlen, "migration versions must increase: %d (%s) follows %d (%s)%s",
                       m->version, m->name, list[i - 1].version, list[i - 1].name,
                       m->version == list[i - 1].version ? ", a duplicate version" : "");
            return CM_EINVAL;
        }
    }
    return 0;
}

/* a COPY leaves the connection in copy mode; end it so the session stays
 * usable for the rollback and the unlock */
static void end_copy(PGconn *conn, ExecStatusType st)
{
    if (st == PGRES_COPY_IN) {
        (void)PQputCopyEnd(conn, "COPY FROM STDIN is not supported in migrations");
    } else if (st == PGRES_COPY_OUT) {
        char *buf = NULL;
        while (PQgetCopyData(conn, &buf, 0) > 0)
            PQfreemem(buf);
    }
    PGresult *r;
    while ((r = PQgetResult(conn)) != NULL)
        PQclear(r);
}

/* a statement run by the migrator: on failure err gets what failed and the
 * server's reason, for the operator running the migration. log_sql is 0 for
 * a migration's own text: long, and already named by version and file */
static int mig_exec(cm_db *db, const char *what, const char *sql, int log_sql, int nparams,
                    const char *const *params, PGresult **out, char *err, size_t errlen)
{
    if (out)
        *out = NULL;
    PGresult *res = nparams ? PQexecParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0)
                            : PQexec(db->conn, sql);
    if (hand_out(res, out))
        return 0;
    ExecStatusType st = PQresultStatus(res);
    int copy = st == PGRES_COPY_IN || st == PGRES_COPY_OUT;
    char msg[512];
    if (copy) {
        PQclear(res);
        end_copy(db->conn, st);
        cm_err_set(err, errlen, "could not %s: COPY is not supported in migrations", what);
        cm_log_error("database statement failed", "what", what, "error",
                     "COPY is not supported in migrations", NULL);
        return CM_EINVAL;
    }
    int rc = db_error(db, res, what, log_sql ? sql : NULL);
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!primary)
        primary = PQerrorMessage(db->conn);
    cm_err_set(err, errlen, "could not %s: %s", what, one_line(msg, sizeof msg, primary));
    PQclear(res);
    return rc;
}

static int load_applied(cm_db *db, const char *ident, const char *table, applied_row **rows,
                        size_t *nrows, char *err, size_t errlen)
{
    *rows = NULL;
    *nrows = 0;
    size_t len = strlen(ident) + strlen(table) + 128;
    char *sql = malloc(len);
    if (!sql)
        return CM_ENOMEM;
    /* sql-safe: identifier quoted by PQescapeIdentifier, table a literal */
    snprintf(sql, len, "SELECT version, name, checksum FROM %s.%s ORDER BY version", ident, table);
    PGresult *res;
    int rc = mig_exec(db, "read schema_migrations", sql, 1, 0, NULL, &res, err, errlen);
    free(sql);
    if (rc)
        return rc;
    int n = PQntuples(res);
    applied_row *r = calloc((size_t)n + 1, sizeof *r);
    if (!r) {
        PQclear(res);
        return CM_ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        r[i].version = (int)strtol(PQgetvalue(res, i, 0), NULL, 10);
        snprintf(r[i].name, sizeof r[i].name, "%s", PQgetvalue(res, i, 1));
        snprintf(r[i].checksum, sizeof r[i].checksum, "%s", PQgetvalue(res, i, 2));
    }
    PQclear(res);
    *rows = r;
    *nrows = (size_t)n;
    return 0;
}

/* compares what the database has applied with what this build carries;
 * sets *first_pending to the index of the first migration to apply */
static int verify_applied(const char *schema, const cm_migration *list, size_t n,
                          const applied_row *rows, size_t nrows, size_t *first_pending, char *err,
                          size_t errlen)
{
    int newest_known = n ? list[n - 1].version : 0;
    int newest_applied = nrows ? rows[nrows - 1].version : 0;
    size_t j = 0;
    for (size_t i = 0; i < nrows; i++) {
        const applied_row *a = &rows[i];
        while (j < n && list[j].version < a->version)
            j++;
        if (j == n || list[j].version != a->version) {
            if (a->version > newest_known) {
                char v[16];
                snprintf(v, sizeof v, "%d", a->version);
                cm_log_warn("database has a migration this build does not know", "schema", schema,
                            "version", v, "name", a->name, NULL);
                continue;
            }
            cm_err_set(err, errlen, "applied migration %d (%s) is missing from this build",
                       a->version, a->name);
            return CM_EINVAL;
        }
        char sum[SHA256_HEX_LEN + 1];
        if (sha256_hex(list[j].sql, sum))
            return CM_EINTERNAL;
        if (strcmp(sum, a->checksum) != 0) {
            cm_err_set(err, errlen,
                       "migration %d (%s) was edited after it was applied (checksum %.12s, "
                       "applied %.12s): add a new migration instead",
                       list[j].version, list[j].name, sum, a->checksum);
            return CM_ECHECKSUM;
        }
    }
    /* pending: every migration not applied; all must be newer than the newest
     * applied, or the schema would not match any ordered history */
    size_t k = 0;
    *first_pending = n;
    for (size_t i = 0; i < n; i++) {
        while (k < nrows && rows[k].version < list[i].version)
            k++;
        if (k < nrows && rows[k].version == list[i].version)
            continue;
        if (list[i].version < newest_applied) {
            cm_err_set(err, errlen,
                       "migration %d (%s) is older than the newest applied migration %d: "
                       "renumber it after %d",
                       list[i].version, list[i].name, newest_applied, newest_applied);
            return CM_EINVAL;
        }
        if (*first_pending == n)
            *first_pending = i;
    }
    return 0;
}

static int apply_one(cm_db *db, const char *schema, const char *ident, const char *table,
                     const char *component, const cm_migration *m, char *err, size_t errlen)
{
    char sum[SHA256_HEX_LEN + 1];
    if (sha256_hex(m->sql, sum))
        return CM_EINTERNAL;
    char what[300];
    snprintf(what, sizeof what, "apply migration %d (%s)", m->version, m->name);

    size_t len = strlen(ident) + strlen(table) + 160;
    char *set = malloc(len);
    char *ins = malloc(len);
    if (!set || !ins) {
        free(set);
        free(ins);
        return CM_ENOMEM;
    }
    /* unqualified names land in the target schema; a long migration is not
     * cut short by the session's statement_timeout */
    /* sql-safe: identifiers quoted by PQescapeIdentifier, table a literal */
    snprintf(set, len, "SET LOCAL search_path TO %s; SET LOCAL statement_timeout = 0", ident);
    snprintf(ins, len,
             "INSERT INTO %s.%s (version, name, checksum, applied_at) "
             "VALUES ($1::int, $2, $3, now())",
             ident, table);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char v[16];
    snprintf(v, sizeof v, "%d", m->version);
    const char *params[] = {v, m->name, sum};

    int rc = mig_exec(db, "begin migration", "BEGIN", 1, 0, NULL, NULL, err, errlen);
    if (rc == 0)
        rc = mig_exec(db, "begin migration", set, 1, 0, NULL, NULL, err, errlen);
    if (rc == 0)
        /* sql-safe: a migration's text, embedded at build time */
        rc = mig_exec(db, what, m->sql, 0, 0, NULL, NULL, err, errlen);
    if (rc == 0 && PQtransactionStatus(db->conn) != PQTRANS_INTRANS) {
        cm_err_set(err, errlen, "migration %d (%s) must not end the transaction (COMMIT/ROLLBACK)",
                   m->version, m->name);
        rc = CM_EINVAL;
    }
    if (rc == 0)
        rc = mig_exec(db, "record migration", ins, 1, 3, params, NULL, err, errlen);
    if (rc == 0)
        rc = mig_exec(db, "commit migration", "COMMIT", 1, 0, NULL, NULL, err, errlen);
    if (rc)
        rollback(db);
    free(set);
    free(ins);
    if (rc)
        return rc;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    char ms[32];
    snprintf(ms, sizeof ms, "%ld",
             (long)(t1.tv_sec - t0.tv_sec) * 1000L + (t1.tv_nsec - t0.tv_nsec) / 1000000L);
    cm_log_info("applied migration", "schema", schema, "component", component, "version", v, "name",
                m->name, "ms", ms, NULL);
    return 0;
}

static int migrate_locked(cm_db *db, const char *schema, const char *ident, const char *table,
                          const char *component, const cm_migration *list, size_t n,
                          size_t *applied, char *err, size_t errlen)
{
    size_t len = strlen(ident) + strlen(table) + 256;
    char *sql = malloc(len);
    if (!sql)
        return CM_ENOMEM;
    /* sql-safe: identifier quoted by PQescapeIdentifier */
    snprintf(sql, len, "CREATE SCHEMA IF NOT EXISTS %s", ident);
    int rc = mig_exec(db, "create schema", sql, 1, 0, NULL, NULL, err, errlen);
    if (rc == 0) {
        /* sql-safe: identifier quoted by PQescapeIdentifier, table a literal */
        snprintf(sql, len,
                 "CREATE TABLE IF NOT EXISTS %s.%s ("
                 "version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, "
                 "applied_at timestamptz NOT NULL DEFAULT now())",
                 ident, table);
        rc = mig_exec(db, "create schema_migrations", sql, 1, 0, NULL, NULL, err, errlen);
    }
    free(sql);
    if (rc)
        return rc;

    applied_row *rows = NULL;
    size_t nrows = 0;
    rc = load_applied(db, ident, table, &rows, &nrows, err, errlen);
    if (rc)
        return rc;
    size_t first = n;
    rc = verify_applied(schema, list, n, rows, nrows, &first, err, errlen);
    free(rows);
    for (size_t i = first; rc == 0 && i < n; i++) {
        rc = apply_one(db, schema, ident, table, component, &list[i], err, errlen);
        if (rc == 0)
            (*applied)++;
    }
    return rc;
}

/* component NULL: the service's own history in schema_migrations; else
 * schema_migrations_<component>, so common modules (outbox, inbox) keep
 * their own version numbers beside the service's */
static int migrate_table(cm_db *db, const char *schema, const char *component,
                         const cm_migration *list, size_t n, char *err, size_t errlen)
{
    cm_err_set(err, errlen, "%s", "");
    if (!db || !schema || !*schema || (n > 0 && !list)) {
        cm_err_set(err, errlen, "a connection and a schema are required");
        return CM_EINVAL;
    }
    if (db->in_tx) {
        cm_err_set(err, errlen, "cannot migrate inside a transaction");
        return CM_EINVAL;
    }
    int rc = check_list(list, n, err, errlen);
    if (rc)
        return rc;
    if (PQstatus(db->conn) == CONNECTION_BAD && db_reconnect(db) != 0) {
        cm_err_set(err, errlen, "could not reconnect to database");
        return CM_EUNAVAIL;
    }
    char *ident = PQescapeIdentifier(db->conn, schema, strlen(schema));
    if (!ident) {
        cm_err_set(err, errlen, "invalid schema name");
        return CM_EINVAL;
    }

    /* session-level, so it spans the per-migration transactions; a second
     * replica waits here and then finds nothing left to do */
    const char *lock_params[] = {schema};
    rc = mig_exec(db, "take the migration lock",
                  "SELECT pg_advisory_lock(hashtext('commerce.migrate.' || $1::text))", 1, 1,
                  lock_params, NULL, err, errlen);
    size_t applied = 0;
    char table[64];
    snprintf(table, sizeof table, "schema_migrations%s%s", component ? "_" : "",
             component ? component : "");
    if (rc == 0) {
        rc = migrate_locked(db, schema, ident, table, component, list, n, &applied, err, errlen);
        if (PQstatus(db->conn) == CONNECTION_OK) {
            char e2[256];
            if (mig_exec(db, "release the migration lock",
                         "SELECT pg_advisory_unlock(hashtext('commerce.migrate.' || $1::text))", 1,
                         1, lock_params, NULL, e2, sizeof e2) != 0)
                cm_log_warn("could not release the migration lock", "schema", schema, "error", e2,
                            NULL);
        }
    }
    PQfreemem(ident);

    /* a migration may have changed the session's search_path for good */
    if (PQstatus(db->conn) == CONNECTION_OK && apply_session(db) != 0 && rc == 0) {
        cm_err_set(err, errlen, "could not restore search_path after migrating");
        rc = CM_EUNAVAIL;
    }
    if (rc) {
        cm_log_error("could not migrate schema", "schema", schema, "component", component, "error",
                     err, "code", cm_strerror(rc), NULL);
        return rc;
    }
    char na[32], latest[16];
    snprintf(na, sizeof na, "%zu", applied);
    snprintf(latest, sizeof latest, "%d", n ? list[n - 1].version : 0);
    cm_log_info("schema is up to date", "schema", schema, "component", component, "applied", na,
                "version", latest, NULL);
    return 0;
}

int cm_db_migrate(cm_db *db, const char *schema, const cm_migration *list, size_t n, char *err,
                  size_t errlen)
{
    return migrate_table(db, schema, NULL, list, n, err, errlen);
}

int cm_db_migrate_component(cm_db *db, const char *schema, const char *component,
                            const cm_migration *list, size_t n, char *err, size_t errlen)
{
    size_t len = component ? strlen(component) : 0;
    int ok = len > 0 && len <= 32 && component[0] >= 'a' && component[0] <= 'z';
    for (size_t i = 0; ok && i < len; i++) {
        char c = component[i];
        ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    }
    if (!ok) {
        cm_err_set(err, errlen, "migration component must match [a-z][a-z0-9_]{0,31}");
        return CM_EINVAL;
    }
    return migrate_table(db, schema, component, list, n, err, errlen);
}

size_t cm_db_parse_words(const char *s, char *out, size_t cap, size_t max)
{
    size_t n = 0;
    if (*s == '{')
        s++;
    while (*s && *s != '}' && n < max) {
        size_t k = strcspn(s, ",}");
        char *dst = out + n * cap;
        if (k == 4 && strncmp(s, "NULL", 4) == 0)
            *dst = '\0';
        else if (k >= 2 && s[0] == '"' && s[k - 1] == '"')
            snprintf(dst, cap, "%.*s", (int)(k - 2), s + 1);
        else
            snprintf(dst, cap, "%.*s", (int)k, s);
        n++;
        s += k;
        if (*s == ',')
            s++;
    }
    return n;
}

size_t cm_db_parse_ints(const char *s, int64_t *out, size_t max)
{
    size_t n = 0;
    if (*s == '{')
        s++;
    while (*s && *s != '}' && n < max) {
        char *end;
        out[n++] = strtoll(s, &end, 10);
        s = end + strcspn(end, ",}");
        if (*s == ',')
            s++;
    }
    return n;
}

int cm_db_number_params(const char *sql, const char *const *names, size_t n, char *out, size_t cap)
{
    size_t len = 0;
    for (const char *c = sql; *c;) {
        size_t w = 1;
        char num[24];
        const char *put = c;
        if (c[0] == '$' &&
            (c[1] == '_' || (c[1] >= 'a' && c[1] <= 'z') || (c[1] >= 'A' && c[1] <= 'Z'))) {
            while (c[w] == '_' || (c[w] >= 'a' && c[w] <= 'z') || (c[w] >= 'A' && c[w] <= 'Z') ||
                   (c[w] >= '0' && c[w] <= '9'))
                w++;
            size_t k = 0;
            while (k < n && (strlen(names[k]) != w - 1 || strncmp(names[k], c + 1, w - 1) != 0))
                k++;
            if (k == n)
                return CM_EINVAL;
            /* sql-safe: a parameter number */
            snprintf(num, sizeof num, "$%zu", k + 1);
            put = num;
        }
        size_t plen = put == c ? w : strlen(put);
        if (len + plen >= cap)
            return CM_EINVAL;
        memcpy(out + len, put, plen);
        len += plen;
        c += w;
    }
    out[len] = '\0';
    return 0;
}

int cm_db_exec_auto(cm_db *db, const char *what, const char *sql, int nparams,
                    const char *const *params, PGresult **out)
{
    if (out)
        *out = NULL;
    if (!db || !sql)
        return CM_EINVAL;
    char hex[CM_SHA256_HEX], name[CM_DB_PREPARED_NAME];
    cm_sha256_hex(sql, strlen(sql), hex);
    snprintf(name, sizeof name, "a_%.32s", hex);
    return cm_db_exec_prepared(db, what, name, sql, nparams, params, NULL, NULL, out);
}

int cm_db_read_auto(cm_db *db, const char *what, const char *sql, int nparams,
                    const char *const *params, PGresult **out)
{
    int rc = cm_db_exec_auto(db, what, sql, nparams, params, out);
    if (rc == CM_EUNAVAIL && db && !db->in_tx && PQstatus(db->conn) == CONNECTION_BAD &&
        db_reconnect(db) == 0)
        rc = cm_db_exec_auto(db, what, sql, nparams, params, out);
    return rc;
}

int cm_db_custom_plans(cm_db *db)
{
    return cm_db_exec(db, "plan per execution", CM_DB_CUSTOM_PLANS_SQL, 0, NULL, NULL);
}
