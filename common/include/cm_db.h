/*
 * cm_db: one libpq connection (one per gRPC worker, never shared between
 * threads), a transaction helper that retries conflicts, and the migration
 * runner.
 *
 * the connection's search_path is set to the service's schema, so SQL in a
 * service's store.c names its tables unqualified.
 */
#ifndef CM_DB_H
#define CM_DB_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cm_db cm_db;

/* connects with the libpq dsn and sets search_path to schema (which may not
 * exist yet: migrations create it). connect_timeout defaults to 5 s and
 * application_name to "commerce-<schema>" unless the dsn sets them. returns
 * 0, CM_EINVAL for a missing dsn or schema, or CM_EUNAVAIL with the libpq
 * reason in err (the dsn itself is never logged: it may hold a password). */
int cm_db_connect(cm_db **out, const char *dsn, const char *schema, char *err, size_t errlen);
void cm_db_free(cm_db *db);

/* the raw connection, for the service's store.c. */
PGconn *cm_db_conn(cm_db *db);

/* 0 when the server answers; otherwise tries one reconnect and returns 0 or
 * CM_EUNAVAIL. cheap enough for a health probe. */
int cm_db_ping(cm_db *db);

/* maps a failed result (or NULL result) to a CM_E* code by SQLSTATE:
 * 40001/40P01 -> CM_ECONFLICT, 23505 -> CM_EEXIST, 23xxx -> CM_EINVAL,
 * connection classes (08xxx), server shutdown (57P01..57P03) or a dead
 * connection -> CM_EUNAVAIL,
 * 57014 (statement timeout / cancel) -> CM_ETIMEDOUT, else CM_EIO.
 * logs the server's message (never returned to callers). */
int cm_db_error(cm_db *db, const PGresult *res, const char *what);

/* runs one parameterised statement (text parameters, text results) and maps
 * a failure with cm_db_error, logging the statement and `what` (never the
 * parameters, which may carry personal data). returns 0 on success: with out
 * non-NULL the caller owns *out and must PQclear it; on failure *out is
 * NULL. use PQcmdTuples(*out) for the affected row count. */
int cm_db_exec(cm_db *db, const char *what, const char *sql, int nparams, const char *const *params,
               PGresult **out);

/* cm_db_exec for a statement that only reads. outside a transaction, when
 * the server had ended the connection (a restart, a failover, an operator's
 * pg_terminate_backend), it reconnects and runs the statement once more,
 * which a read may always do: the caller does not see the UNAVAILABLE that
 * only told it the connection was gone. inside cm_db_tx it is cm_db_exec
 * (the transaction is lost with the connection; cm_db_tx runs it again). */
int cm_db_read(cm_db *db, const char *what, const char *sql, int nparams, const char *const *params,
               PGresult **out);

/* cm_db_read for a statement that must find a row: CM_ENOTFOUND (and *out
 * NULL) when it finds none. */
int cm_db_read_row(cm_db *db, const char *what, const char *sql, int nparams,
                   const char *const *params, PGresult **out);

/* a result's value as a number (strtoll of the text; NULL reads as 0), and
 * copied into dst (cap bytes, cut to fit) */
int64_t cm_db_int(const PGresult *r, int row, int col);
void cm_db_text(char *dst, size_t cap, const PGresult *r, int row, int col);

/* the elements of a one-dimensional array as postgres prints it ("{1,2}",
 * "{2024-01-02,NULL}", "{a,\"\"}") into out[i] (cap bytes each, cut to
 * fit), at most max of them; NULL becomes "", a quoted element loses its
 * quotes (elements with escapes inside are not supported: use them for
 * numbers, dates and keys). returns the count. cm_db_parse_ints: the same
 * for numbers. */
size_t cm_db_parse_words(const char *s, char *out, size_t cap, size_t max);
size_t cm_db_parse_ints(const char *s, int64_t *out, size_t max);

/* cm_db_exec for a statement run often: prepared once per session under
 * name (parse, analysis and planning are paid once), then executed with
 * the parameters; lengths and formats as for PQexecPrepared (NULL: all
 * text). the connection remembers what it prepared and forgets it when it
 * reconnects. the same name must always be given the same sql. when the
 * server lost the statement, it is prepared again — at once outside a
 * transaction; inside cm_db_tx the attempt fails with CM_ECONFLICT so the
 * transaction runs again. past CM_DB_PREPARED_MAX names per connection the
 * statement runs unprepared. */
#define CM_DB_PREPARED_MAX 128
#define CM_DB_PREPARED_NAME 48
int cm_db_exec_prepared(cm_db *db, const char *what, const char *name, const char *sql, int nparams,
                        const char *const *params, const int *lengths, const int *formats,
                        PGresult **out);

/* one statement of cm_db_pipeline: as cm_db_exec_prepared's arguments
 * (name NULL: run unprepared), and res, its result when the pipeline
 * succeeded (the caller PQclears it). */
typedef struct cm_db_stmt {
    const char *what, *name, *sql;
    int nparams;
    const char *const *params;
    const int *lengths, *formats;
    PGresult *res;
} cm_db_stmt;

/* n statements in one round trip (libpq's pipeline mode), inside a
 * cm_db_tx transaction only: all are sent, then the server runs them in
 * order while the results come back. for a batch's independent steps: each
 * statement between them had cost a round trip, ~0.4 ms on a busy 2-core
 * host (commission's accrual batch: 10 to 16 of them). a failing statement
 * fails the rest and the transaction (cm_db_tx rolls it back): the
 * result is then its code, logged as cm_db_exec_prepared logs it, and
 * every res NULL; a prepared statement the server lost is CM_ECONFLICT
 * (prepared again when the transaction runs again). a connection that
 * cannot leave pipeline mode afterwards is reconnected: CM_EUNAVAIL.
 * 0 < n <= CM_DB_PIPELINE_MAX. */
#define CM_DB_PIPELINE_MAX 32
int cm_db_pipeline(cm_db *db, cm_db_stmt *stmts, size_t n);

/* cm_db_exec_prepared named by the statement itself ("a_" and 128 bits of
 * the sha-256 of sql): for code whose statements are fixed texts, so each
 * is parsed and planned once per connection instead of on every call
 * (order's MarkPaid ran five unprepared statements: their parse and plan
 * were most of postgres' cpu at 1,000 payments/s). _read_auto, like
 * cm_db_read, reconnects and tries once more outside a transaction. */
int cm_db_exec_auto(cm_db *db, const char *what, const char *sql, int nparams,
                    const char *const *params, PGresult **out);
int cm_db_read_auto(cm_db *db, const char *what, const char *sql, int nparams,
                    const char *const *params, PGresult **out);

/* SET LOCAL plan_cache_mode = force_custom_plan: the rest of the current
 * transaction plans its prepared statements on every execution. for batch
 * statements (one per consumer batch) whose best plan depends on how big
 * the tables are: a generic plan made while a table was nearly empty (a
 * fresh schema) kept a sequential scan per key once it held 22,000 rows
 * (commission's batch read: 80 ms a batch instead of 1), until autovacuum
 * analysed it. planning once per batch costs a fraction of a µs per event.
 * 0 or a CM_E*. */
int cm_db_custom_plans(cm_db *db);
/* its statement, for a caller that sends it in a cm_db_pipeline */
#define CM_DB_CUSTOM_PLANS_SQL "SET LOCAL plan_cache_mode = force_custom_plan"

/* a statement with named parameters: writes sql to out with each "$name"
 * (a letter or '_', then letters, digits, '_') replaced by "$k", k the
 * name's place in names (1-based), so a long statement and the array of
 * its parameters agree by name rather than by counting. 0; CM_EINVAL for
 * a name not in names or when out (cap bytes) is too small. */
int cm_db_number_params(const char *sql, const char *const *names, size_t n, char *out, size_t cap);

/* runs fn inside BEGIN .. COMMIT. fn returns 0 to commit, a CM_E* to roll
 * back and return that code. a serialization failure or deadlock
 * (CM_ECONFLICT from fn or from COMMIT) rolls back and runs fn again, up to
 * max_attempts with jittered exponential backoff; then CM_ECONFLICT. a lost
 * connection is reconnected once and, since nothing was committed, retried;
 * but a connection lost during COMMIT returns CM_EUNAVAIL at once, since the
 * commit may have happened. fn returning 0 after a statement failed inside
 * the transaction is a bug: rolled back, CM_EINTERNAL. CM_EINVAL when called
 * from inside fn (no nesting) or for an unknown isolation.
 * isolation: "READ COMMITTED", "REPEATABLE READ" or "SERIALIZABLE" (NULL:
 * read committed). */
typedef int (*cm_db_tx_fn)(cm_db *db, void *arg);
int cm_db_tx(cm_db *db, const char *isolation, int max_attempts, cm_db_tx_fn fn, void *arg);

/* registers fn(db, arg) to run once, on this thread and connection, right
 * after the current cm_db_tx transaction has committed (never after a
 * rollback; an attempt retried after a conflict starts with no hooks). the
 * same fn and arg registered twice run once. for wake-ups that must only
 * happen once the change is visible (the outbox relay's). call only from
 * inside the transaction function: CM_EINVAL otherwise; CM_ENOMEM beyond
 * CM_DB_COMMIT_HOOKS hooks. */
#define CM_DB_COMMIT_HOOKS 4
typedef void (*cm_db_commit_fn)(cm_db *db, void *arg);
int cm_db_on_commit(cm_db *db, cm_db_commit_fn fn, void *arg);

/* the schema the connection's search_path names. */
const char *cm_db_schema(const cm_db *db);

/* sets statement_timeout for the session in milliseconds (0 = none). */
int cm_db_set_timeout_ms(cm_db *db, int ms);

/* one migration, usually embedded at build time from
 * services/<svc>/migrations/NNNN_name.sql by commerce_embed_migrations()
 * (cmake/migrations.cmake), which defines `const cm_migration <sym>[]` and
 * `const size_t <sym>_count`, sorted by version. */
typedef struct cm_migration {
    int version;      /* NNNN, > 0 */
    const char *name; /* the file name, "0002_add_orders.sql" */
    const char *sql;  /* one or more statements; no BEGIN/COMMIT, no CONCURRENTLY */
} cm_migration;

/* applies, in version order, every migration not yet recorded in
 * <schema>.schema_migrations, each in its own transaction with its row
 * (version, name, sha256 checksum, applied_at). holds a session advisory lock
 * keyed by the schema name for the whole run, so two replicas never migrate
 * at once (the second waits, then finds nothing to do). refuses with
 * CM_ECHECKSUM, naming the version, when an applied migration's text
 * changed; CM_EINVAL on duplicate or non-increasing versions, on a pending
 * migration older than the newest applied one, or on an applied migration
 * missing from list (applied versions above list's newest are tolerated with
 * a warning: an older replica during a rolling deploy). unqualified names in
 * the sql resolve to schema; statement_timeout does not apply to the
 * migrations themselves. err gets one line for the operator. must not be
 * called inside cm_db_tx. */
int cm_db_migrate(cm_db *db, const char *schema, const cm_migration *list, size_t n, char *err,
                  size_t errlen);

/* cm_db_migrate for a common module's tables in a service's schema (the
 * outbox, the inbox): the same rules, the same lock, but the history is kept
 * in <schema>.schema_migrations_<component>, so the module's versions never
 * collide with the service's own. component matches [a-z][a-z0-9_]{0,31}
 * (CM_EINVAL otherwise). */
int cm_db_migrate_component(cm_db *db, const char *schema, const char *component,
                            const cm_migration *list, size_t n, char *err, size_t errlen);

#endif
