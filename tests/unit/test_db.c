/*
 * cm_db against a real postgres: PG_DSN must name it (scripts/test.sh
 * starts the private one with scripts/pg.sh and exports PG_DSN). every test
 * works in its own schema, test_db_<pid>_<test>, dropped at the end; the
 * tcase teardown drops whatever a failed test left behind.
 */
#include "cm_db.h"
#include "cm_err.h"
#include "cm_log.h"

#include <check.h>

#include "pg_test.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* generated from tests/unit/fixtures/migrations by commerce_embed_migrations */
extern const cm_migration test_fixture_migrations[];
extern const size_t test_fixture_migrations_count;

static const char *dsn;
static char run_prefix[64];

/* ---- helpers (the admin connection is plain libpq, independent of cm_db) ---- */

static void schema_name(char *buf, size_t len, const char *tag)
{
    int n = snprintf(buf, len, "%s%s", run_prefix, tag);
    ck_assert_msg(n > 0 && (size_t)n < len, "schema name too long: %s%s", run_prefix, tag);
}

/* a double-quoted identifier, for schema names with odd characters */
static const char *qi(char *buf, size_t len, const char *name)
{
    size_t o = 0;
    buf[o++] = '"';
    for (; *name && o + 3 < len; name++) {
        if (*name == '"')
            buf[o++] = '"';
        buf[o++] = *name;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* the first column of the first row; the caller frees */
static char *sql_text(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "%s: %s", sql,
                  PQresultErrorMessage(r));
    char *v = PQgetisnull(r, 0, 0) ? NULL : strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static long sql_long(PGconn *c, const char *sql)
{
    char *v = sql_text(c, sql);
    ck_assert_ptr_nonnull(v);
    long n = strtol(v, NULL, 10);
    free(v);
    return n;
}

static long count_in(const char *schema, const char *table)
{
    char sql[256], q[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.%s", qi(q, sizeof q, schema), table);
    PGconn *c = pt_admin();
    long n = sql_long(c, sql);
    PQfinish(c);
    return n;
}

static int relation_exists(const char *schema, const char *rel)
{
    char sql[256], q[128];
    snprintf(sql, sizeof sql, "SELECT to_regclass('%s.%s') IS NOT NULL", qi(q, sizeof q, schema),
             rel);
    PGconn *c = pt_admin();
    char *v = sql_text(c, sql);
    PQfinish(c);
    int yes = strcmp(v, "t") == 0;
    free(v);
    return yes;
}

static void drop_schema(const char *schema)
{
    char sql[256], q[128];
    snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", qi(q, sizeof q, schema));
    PGconn *c = pt_admin();
    pt_sql(c, sql);
    PQfinish(c);
}

static cm_db *connect_to(const char *schema)
{
    cm_db *db = NULL;
    char err[256];
    int rc = cm_db_connect(&db, dsn, schema, err, sizeof err);
    ck_assert_msg(rc == 0, "cm_db_connect: %s (%s)", cm_strerror(rc), err);
    return db;
}

/* a fresh schema with a table, and a cm_db whose search_path points at it */
static cm_db *fresh(const char *schema, const char *ddl)
{
    drop_schema(schema);
    PGconn *c = pt_admin();
    char sql[1024], q[128];
    qi(q, sizeof q, schema);
    snprintf(sql, sizeof sql, "CREATE SCHEMA %s; SET search_path TO %s; %s", q, q, ddl);
    pt_sql(c, sql);
    PQfinish(c);
    return connect_to(schema);
}

static PGconn *admin_in(const char *schema)
{
    PGconn *c = pt_admin();
    char sql[256], q[128];
    snprintf(sql, sizeof sql, "SET search_path TO %s", qi(q, sizeof q, schema));
    pt_sql(c, sql);
    return c;
}

static void kill_backend(cm_db *db)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d, 5000)",
             PQbackendPID(cm_db_conn(db)));
    PGconn *c = pt_admin();
    char *v = sql_text(c, sql);
    ck_assert_str_eq(v, "t");
    free(v);
    PQfinish(c);
}

/* drops every schema this run created, including a failed test's */
static void drop_run_schemas(void)
{
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return;
    }
    PQsetNoticeProcessor(c, pt_quiet, NULL);
    const char *params[] = {run_prefix};
    PGresult *r = PQexecParams(c,
                               "SELECT quote_ident(nspname) FROM pg_namespace "
                               "WHERE left(nspname, length($1)) = $1",
                               1, NULL, params, NULL, NULL, 0);
    for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++) {
        char sql[256];
        snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", PQgetvalue(r, i, 0));
        PQclear(PQexec(c, sql));
    }
    PQclear(r);
    PQfinish(c);
}

/* ---- connection ---- */

START_TEST(array_texts_parse)
{
    int64_t v[4] = {0};
    ck_assert_uint_eq(cm_db_parse_ints("{1,-22,9223372036854775807}", v, 4), 3);
    ck_assert_int_eq(v[1], -22);
    ck_assert_int_eq(v[2], INT64_MAX);
    ck_assert_uint_eq(cm_db_parse_ints("{}", v, 4), 0);
    ck_assert_uint_eq(cm_db_parse_ints("{5,6,7}", v, 2), 2);
    char w[4][16];
    ck_assert_uint_eq(cm_db_parse_words("{2026-12-08,NULL,\"\",sp-1}", &w[0][0], 16, 4), 4);
    ck_assert_str_eq(w[0], "2026-12-08");
    ck_assert_str_eq(w[1], "");
    ck_assert_str_eq(w[2], "");
    ck_assert_str_eq(w[3], "sp-1");
    ck_assert_uint_eq(cm_db_parse_words("{abcdefghijklmnopqrstuvwxyz}", &w[0][0], 16, 4), 1);
    ck_assert_str_eq(w[0], "abcdefghijklmno"); /* cut to fit */
}
END_TEST

START_TEST(number_params_by_name)
{
    const char *names[] = {"ids", "t", "t2"};
    char out[128];
    ck_assert_int_eq(cm_db_number_params("SELECT $t2::text, $ids::int[], $t, $t, $1, '$'", names, 3,
                                         out, sizeof out),
                     0);
    ck_assert_str_eq(out, "SELECT $3::text, $1::int[], $2, $2, $1, '$'");
    ck_assert_int_eq(cm_db_number_params("SELECT $nope", names, 3, out, sizeof out), CM_EINVAL);
    ck_assert_int_eq(cm_db_number_params("SELECT $ids", names, 3, out, 9), CM_EINVAL);
}
END_TEST

START_TEST(connect_sets_search_path_to_schema)
{
    char s[64];
    schema_name(s, sizeof s, "path");
    cm_db *db = fresh(s, "SELECT 1");
    PGconn *c = cm_db_conn(db);
    char *sp = sql_text(c, "SHOW search_path");
    ck_assert_str_eq(sp, s);
    free(sp);
    ck_assert_int_eq(cm_db_exec(db, "create", "CREATE TABLE t (id int)", 0, NULL, NULL), 0);
    ck_assert(relation_exists(s, "t"));
    ck_assert_int_eq(cm_db_ping(db), 0);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

START_TEST(connect_quotes_the_schema_identifier)
{
    char s[64];
    schema_name(s, sizeof s, "Mixed Case-\"q\"");
    cm_db *db = fresh(s, "SELECT 1");
    ck_assert_int_eq(cm_db_exec(db, "create", "CREATE TABLE t (id int)", 0, NULL, NULL), 0);
    PGconn *c = pt_admin();
    const char *params[] = {s};
    PGresult *r = PQexecParams(c,
                               "SELECT count(*) FROM pg_tables WHERE schemaname = $1 "
                               "AND tablename = 't'",
                               1, NULL, params, NULL, NULL, 0);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    PQfinish(c);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

START_TEST(connect_to_dead_server_is_unavailable)
{
    cm_db *db = (cm_db *)&db; /* must be reset to NULL */
    char err[256];
    int rc = cm_db_connect(&db, "host=127.0.0.1 port=1 dbname=nothing connect_timeout=2", "x", err,
                           sizeof err);
    ck_assert_int_eq(rc, CM_EUNAVAIL);
    ck_assert_ptr_null(db);
    ck_assert_msg(strstr(err, "could not connect") != NULL, "err: %s", err);
    ck_assert_ptr_null(strchr(err, '\n'));
    ck_assert_int_eq(cm_db_connect(&db, NULL, "x", err, sizeof err), CM_EINVAL);
    ck_assert_int_eq(cm_db_connect(&db, dsn, "", err, sizeof err), CM_EINVAL);
}
END_TEST

START_TEST(ping_reconnects_a_killed_connection_and_restores_session)
{
    char s[64];
    schema_name(s, sizeof s, "ping");
    cm_db *db = fresh(s, "SELECT 1");
    ck_assert_int_eq(cm_db_set_timeout_ms(db, 1234), 0);
    int before = PQbackendPID(cm_db_conn(db));
    kill_backend(db);
    ck_assert_int_eq(cm_db_ping(db), 0);
    ck_assert_int_ne(PQbackendPID(cm_db_conn(db)), before);
    char *sp = sql_text(cm_db_conn(db), "SHOW search_path");
    ck_assert_str_eq(sp, s);
    free(sp);
    char *to = sql_text(cm_db_conn(db), "SHOW statement_timeout");
    ck_assert_str_eq(to, "1234ms");
    free(to);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

/* ---- error mapping ---- */

static int exec_rc(cm_db *db, const char *sql)
{
    return cm_db_exec(db, "test statement", sql, 0, NULL, NULL);
}

START_TEST(error_maps_sqlstates_to_codes)
{
    char s[64];
    schema_name(s, sizeof s, "errors");
    cm_db *db = fresh(s, "CREATE TABLE p (id int PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0));"
                         "CREATE TABLE c (p int REFERENCES p (id));"
                         "INSERT INTO p VALUES (1, 1);");
    /* real violations */
    ck_assert_int_eq(exec_rc(db, "INSERT INTO p VALUES (1, 5)"), CM_EEXIST);
    ck_assert_int_eq(exec_rc(db, "INSERT INTO p VALUES (2, NULL)"), CM_EINVAL);
    ck_assert_int_eq(exec_rc(db, "UPDATE p SET qty = qty - 2 WHERE id = 1"), CM_EINVAL);
    ck_assert_int_eq(exec_rc(db, "INSERT INTO c VALUES (42)"), CM_EINVAL);
    ck_assert_int_eq(exec_rc(db, "SELEC 1"), CM_EIO);
    ck_assert_int_eq(exec_rc(db, "SELECT * FROM no_such_table"), CM_EIO);
    ck_assert_int_eq(cm_db_set_timeout_ms(db, 50), 0);
    ck_assert_int_eq(exec_rc(db, "SELECT pg_sleep(2)"), CM_ETIMEDOUT);
    ck_assert_int_eq(cm_db_set_timeout_ms(db, 0), 0);
    ck_assert_int_eq(cm_db_set_timeout_ms(db, -1), CM_EINVAL);

    /* the rest of the table: the server raises the exact sqlstate */
    static const struct {
        const char *state;
        int rc;
    } cases[] = {
        {"40001", CM_ECONFLICT}, {"40P01", CM_ECONFLICT}, {"23505", CM_EEXIST},
        {"23514", CM_EINVAL},    {"08006", CM_EUNAVAIL},  {"57014", CM_ETIMEDOUT},
        {"22012", CM_EIO},       {"P0001", CM_EIO},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '%s'; END $$",
                 cases[i].state);
        ck_assert_msg(exec_rc(db, sql) == cases[i].rc, "sqlstate %s", cases[i].state);
    }

    /* cm_db_error itself: a NULL result on a live connection, then a dead one */
    ck_assert_int_eq(cm_db_error(db, NULL, "nothing"), CM_EIO);
    kill_backend(db);
    ck_assert_int_eq(exec_rc(db, "SELECT 1"), CM_EUNAVAIL);
    ck_assert_int_eq(cm_db_error(db, NULL, "nothing"), CM_EUNAVAIL);

    PGresult *out = (PGresult *)&out;
    ck_assert_int_eq(cm_db_exec(db, "x", "SELECT 1", 0, NULL, &out), CM_EUNAVAIL);
    ck_assert_ptr_null(out);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

START_TEST(exec_returns_rows_with_parameters)
{
    char s[64];
    schema_name(s, sizeof s, "exec");
    cm_db *db = fresh(s, "CREATE TABLE kv (k text PRIMARY KEY, v text)");
    const char *p[] = {"a'; DROP TABLE kv; --", "v1"};
    ck_assert_int_eq(cm_db_exec(db, "insert", "INSERT INTO kv VALUES ($1, $2)", 2, p, NULL), 0);
    PGresult *r = NULL;
    ck_assert_int_eq(cm_db_exec(db, "select", "SELECT v FROM kv WHERE k = $1", 1, p, &r), 0);
    ck_assert_int_eq(PQntuples(r), 1);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "v1");
    PQclear(r);
    ck_assert_int_eq(cm_db_exec(db, "update", "UPDATE kv SET v = 'v2'", 0, NULL, &r), 0);
    ck_assert_str_eq(PQcmdTuples(r), "1");
    PQclear(r);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

/* ---- transactions ---- */

typedef struct {
    int calls;
    int fail_with; /* returned after the insert */
    int ignore_error;
} insert_arg;

static int insert_row(cm_db *db, void *arg)
{
    insert_arg *a = arg;
    a->calls++;
    int rc = cm_db_exec(db, "insert row", "INSERT INTO t VALUES (1)", 0, NULL, NULL);
    if (rc)
        return rc;
    if (a->ignore_error) /* a buggy fn: swallows a failed statement */
        (void)cm_db_exec(db, "bad", "SELECT * FROM no_such_table", 0, NULL, NULL);
    return a->fail_with;
}

START_TEST(tx_commits_when_fn_succeeds)
{
    char s[64];
    schema_name(s, sizeof s, "commit");
    cm_db *db = fresh(s, "CREATE TABLE t (id int)");
    insert_arg a = {0, 0, 0};
    ck_assert_int_eq(cm_db_tx(db, NULL, 3, insert_row, &a), 0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(count_in(s, "t"), 1);
    ck_assert_int_eq(PQtransactionStatus(cm_db_conn(db)), PQTRANS_IDLE);
    ck_assert_int_eq(cm_db_tx(db, "repeatable read", 3, insert_row, &a), 0);
    ck_assert_int_eq(count_in(s, "t"), 2);
    ck_assert_int_eq(cm_db_tx(db, "CHAOS", 3, insert_row, &a), CM_EINVAL);
    ck_assert_int_eq(a.calls, 2);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

START_TEST(tx_rolls_back_when_fn_fails)
{
    char s[64];
    schema_name(s, sizeof s, "rollback");
    cm_db *db = fresh(s, "CREATE TABLE t (id int)");
    insert_arg a = {0, CM_ESTATE, 0};
    ck_assert_int_eq(cm_db_tx(db, "SERIALIZABLE", 3, insert_row, &a), CM_ESTATE);
    ck_assert_int_eq(a.calls, 1); /* not a conflict: not retried */
    ck_assert_int_eq(count_in(s, "t"), 0);
    ck_assert_int_eq(PQtransactionStatus(cm_db_conn(db)), PQTRANS_IDLE);

    /* success returned over a failed statement is a bug, not a commit */
    insert_arg b = {0, 0, 1};
    ck_assert_int_eq(cm_db_tx(db, NULL, 3, insert_row, &b), CM_EINTERNAL);
    ck_assert_int_eq(count_in(s, "t"), 0);
    ck_assert_int_eq(PQtransactionStatus(cm_db_conn(db)), PQTRANS_IDLE);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

static int nested(cm_db *db, void *arg)
{
    int *rc = arg;
    insert_arg a = {0, 0, 0};
    *rc = cm_db_tx(db, NULL, 1, insert_row, &a);
    char err[128];
    int mrc = cm_db_migrate(db, "x", NULL, 0, err, sizeof err);
    return mrc == CM_EINVAL ? 0 : CM_EINTERNAL;
}

START_TEST(tx_refuses_nesting)
{
    char s[64];
    schema_name(s, sizeof s, "nested");
    cm_db *db = fresh(s, "CREATE TABLE t (id int)");
    int inner = 0;
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, nested, &inner), 0);
    ck_assert_int_eq(inner, CM_EINVAL);
    ck_assert_int_eq(count_in(s, "t"), 0);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

typedef struct {
    PGconn *other; /* a second session that commits in the middle of fn */
    int calls;
    int conflict_until; /* the other session interferes on calls <= this */
} conflict_arg;

/* read the counter (taking the snapshot), let the other session update and
 * commit the same row, then update it: a real 40001 under SERIALIZABLE */
static int bump_counter(cm_db *db, void *arg)
{
    conflict_arg *a = arg;
    a->calls++;
    PGresult *r = NULL;
    int rc = cm_db_exec(db, "read counter", "SELECT n FROM counter WHERE id = 1", 0, NULL, &r);
    if (rc)
        return rc;
    PQclear(r);
    if (a->calls <= a->conflict_until)
        pt_sql(a->other, "UPDATE counter SET n = n + 100 WHERE id = 1");
    return cm_db_exec(db, "bump counter", "UPDATE counter SET n = n + 1 WHERE id = 1", 0, NULL,
                      NULL);
}

typedef struct {
    int ran;  /* how many times the hook ran */
    int rows; /* rows of t the hook saw committed (from another session) */
    int fail; /* the transaction function fails with this */
    char schema[64];
} hook_arg;

static void count_after_commit(cm_db *db, void *arg)
{
    (void)db;
    hook_arg *h = arg;
    h->ran++;
    h->rows = count_in(h->schema, "t"); /* another session: visible only if committed */
}

static int insert_with_hook(cm_db *db, void *arg)
{
    hook_arg *h = arg;
    int rc = cm_db_exec(db, "insert", "INSERT INTO t VALUES (1)", 0, NULL, NULL);
    ck_assert_int_eq(cm_db_on_commit(db, count_after_commit, h), 0);
    ck_assert_int_eq(cm_db_on_commit(db, count_after_commit, h), 0); /* once */
    return rc ? rc : h->fail;
}

START_TEST(tx_runs_commit_hooks_after_commit_only)
{
    hook_arg h = {0};
    schema_name(h.schema, sizeof h.schema, "hook");
    cm_db *db = fresh(h.schema, "CREATE TABLE t (id int)");
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, insert_with_hook, &h), 0);
    ck_assert_int_eq(h.ran, 1);
    ck_assert_int_eq(h.rows, 1); /* the row was visible to others when the hook ran */
    h.fail = CM_ESTATE;
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, insert_with_hook, &h), CM_ESTATE);
    ck_assert_int_eq(h.ran, 1); /* rolled back: not run */
    h.fail = 0;
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, insert_with_hook, &h), 0);
    ck_assert_int_eq(h.ran, 2);
    ck_assert_int_eq(h.rows, 2);
    /* outside cm_db_tx there is no commit to wait for */
    ck_assert_int_eq(cm_db_on_commit(db, count_after_commit, &h), CM_EINVAL);
    ck_assert_str_eq(cm_db_schema(db), h.schema);
    cm_db_free(db);
    drop_schema(h.schema);
}
END_TEST

START_TEST(exec_prepared_prepares_once_and_survives_a_lost_session)
{
    char s[64];
    schema_name(s, sizeof s, "prep");
    cm_db *db = fresh(s, "CREATE TABLE t (id int, v text)");
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        const char *p[] = {id, "x"};
        ck_assert_int_eq(cm_db_exec_prepared(db, "insert", "t_ins", "INSERT INTO t VALUES ($1, $2)",
                                             2, p, NULL, NULL, NULL),
                         0);
    }
    ck_assert_int_eq(count_in(s, "t"), 5);
    PGresult *r = NULL;
    ck_assert_int_eq(cm_db_exec(db, "count prepared",
                                "SELECT count(*) FROM pg_prepared_statements WHERE name = 't_ins'",
                                0, NULL, &r),
                     0);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    /* the server forgets it: prepared again at once outside a transaction */
    ck_assert_int_eq(cm_db_exec(db, "deallocate", "DEALLOCATE t_ins", 0, NULL, NULL), 0);
    const char *p[] = {"9", "y"};
    ck_assert_int_eq(cm_db_exec_prepared(db, "insert", "t_ins", "INSERT INTO t VALUES ($1, $2)", 2,
                                         p, NULL, NULL, &r),
                     0);
    PQclear(r);
    ck_assert_int_eq(count_in(s, "t"), 6);
    /* a killed session: the reconnect starts with nothing prepared */
    PGconn *c = pt_admin();
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", PQbackendPID(cm_db_conn(db)));
    pt_sql(c, sql);
    PQfinish(c);
    ck_assert_int_eq(cm_db_ping(db), 0);
    ck_assert_int_eq(cm_db_exec_prepared(db, "insert", "t_ins", "INSERT INTO t VALUES ($1, $2)", 2,
                                         p, NULL, NULL, NULL),
                     0);
    ck_assert_int_eq(count_in(s, "t"), 7);
    /* a read outlives a killed session (run again on a new one); a
     * statement that may write reports it, UNAVAILABLE */
    for (int k = 0; k < 2; k++) {
        c = pt_admin();
        snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d, 5000)",
                 PQbackendPID(cm_db_conn(db)));
        pt_sql(c, sql);
        PQfinish(c);
        if (k == 0) {
            ck_assert_int_eq(cm_db_read(db, "count", "SELECT count(*) FROM t", 0, NULL, &r), 0);
            ck_assert_str_eq(PQgetvalue(r, 0, 0), "7");
            PQclear(r);
        } else {
            ck_assert_int_eq(cm_db_exec(db, "count", "SELECT count(*) FROM t", 0, NULL, NULL),
                             CM_EUNAVAIL);
        }
    }
    ck_assert_int_eq(cm_db_ping(db), 0);
    /* names too long are refused */
    ck_assert_int_eq(cm_db_exec_prepared(db, "x",
                                         "a_name_far_too_long_for_the_connection_registry_to_keep",
                                         "SELECT 1", 0, NULL, NULL, NULL, NULL),
                     CM_EINVAL);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

/* cm_db_pipeline's transaction functions: three statements (one prepared
 * before, one prepared by the pipeline, one unprepared) */
typedef struct pipe_case {
    int fail; /* the second statement breaks a constraint */
    int rc;   /* cm_db_pipeline's */
    char v[3][32];
} pipe_case;

static int pipe_fn(cm_db *db, void *arg)
{
    pipe_case *pc = arg;
    const char *ins[] = {pc->fail ? "1" : "2", "b"};
    const char *get[] = {"1"};
    cm_db_stmt st[] = {
        {.what = "get",
         .name = "t_get",
         .sql = "SELECT v FROM t WHERE id = $1::int",
         .nparams = 1,
         .params = get},
        {.what = "insert",
         .name = "t_pins",
         .sql = "INSERT INTO t VALUES ($1::int, $2)",
         .nparams = 2,
         .params = ins},
        {.what = "count", .sql = "SELECT count(*)::text FROM t"},
    };
    pc->rc = cm_db_pipeline(db, st, 3);
    for (int i = 0; i < 3; i++) {
        if (pc->rc == 0) {
            ck_assert_ptr_nonnull(st[i].res);
            snprintf(pc->v[i], sizeof pc->v[i], "%s",
                     PQntuples(st[i].res) ? PQgetvalue(st[i].res, 0, 0) : PQcmdStatus(st[i].res));
        } else {
            ck_assert_ptr_null(st[i].res);
        }
        PQclear(st[i].res);
    }
    return pc->rc;
}

static int pipe_unsendable(cm_db *db, void *arg)
{
    (void)arg;
    const char *p[] = {"x"};
    const int formats[] = {1};
    cm_db_stmt st[] = {{.what = "unsendable",
                        .name = "t_unsendable",
                        .sql = "SELECT $1::bytea",
                        .nparams = 1,
                        .params = p,
                        .formats = formats}};
    return cm_db_pipeline(db, st, 1);
}

START_TEST(pipeline_runs_statements_in_order_in_one_round_trip)
{
    char s[64];
    schema_name(s, sizeof s, "pipe");
    cm_db *db = fresh(s, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    const char *one[] = {"1", "a"};
    ck_assert_int_eq(cm_db_exec(db, "seed", "INSERT INTO t VALUES ($1::int, $2)", 2, one, NULL), 0);
    const char *get[] = {"1"};
    PGresult *r = NULL;
    ck_assert_int_eq(cm_db_exec_prepared(db, "get", "t_get", "SELECT v FROM t WHERE id = $1::int",
                                         1, get, NULL, NULL, &r),
                     0);
    PQclear(r);
    /* outside a transaction: refused */
    cm_db_stmt lone = {.what = "count", .sql = "SELECT 1"};
    ck_assert_int_eq(cm_db_pipeline(db, &lone, 1), CM_EINVAL);
    ck_assert_int_eq(cm_db_pipeline(db, &lone, 0), CM_EINVAL);
    /* results in order, the insert seen by the count after it */
    pipe_case ok = {0};
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, pipe_fn, &ok), 0);
    ck_assert_int_eq(ok.rc, 0);
    ck_assert_str_eq(ok.v[0], "a");
    ck_assert_str_eq(ok.v[1], "INSERT 0 1");
    ck_assert_str_eq(ok.v[2], "2");
    ck_assert_int_eq(count_in(s, "t"), 2);
    /* the pipeline's prepared statement is the connection's like any other */
    ck_assert_int_eq(cm_db_exec(db, "count prepared",
                                "SELECT count(*) FROM pg_prepared_statements WHERE name IN "
                                "('t_get', 't_pins')",
                                0, NULL, &r),
                     0);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "2");
    PQclear(r);
    /* a failing statement fails the pipeline and rolls the transaction
     * back; the connection is usable after */
    pipe_case bad = {.fail = 1};
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, pipe_fn, &bad), CM_EEXIST);
    ck_assert_int_eq(bad.rc, CM_EEXIST);
    ck_assert_int_eq(count_in(s, "t"), 2);
    ck_assert_int_eq(cm_db_exec(db, "count", "SELECT count(*) FROM t", 0, NULL, &r), 0);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "2");
    PQclear(r);
    /* the server forgot a statement: the attempt conflicts and cm_db_tx
     * runs it again, prepared anew */
    ck_assert_int_eq(cm_db_exec(db, "deallocate", "DEALLOCATE t_get", 0, NULL, NULL), 0);
    ck_assert_int_eq(cm_db_exec(db, "clean", "DELETE FROM t WHERE id = 2", 0, NULL, NULL), 0);
    pipe_case again = {0};
    ck_assert_int_eq(cm_db_tx(db, NULL, 2, pipe_fn, &again), 0);
    ck_assert_int_eq(again.rc, 0);
    ck_assert_str_eq(again.v[0], "a");
    ck_assert_str_eq(again.v[2], "2");
    /* a statement libpq cannot send (a binary parameter without its
     * length) after its PREPARE went: an error, and the connection is left
     * out of pipeline mode, usable */
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, pipe_unsendable, NULL), CM_EIO);
    ck_assert_int_eq(PQpipelineStatus(cm_db_conn(db)), PQ_PIPELINE_OFF);
    ck_assert_int_eq(cm_db_exec(db, "count", "SELECT count(*) FROM t", 0, NULL, &r), 0);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "2");
    PQclear(r);
    pipe_case after = {0};
    ck_assert_int_eq(cm_db_exec(db, "clean", "DELETE FROM t WHERE id = 2", 0, NULL, NULL), 0);
    ck_assert_int_eq(cm_db_tx(db, NULL, 2, pipe_fn, &after), 0);
    ck_assert_str_eq(after.v[2], "2");
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

START_TEST(exec_auto_prepares_each_text_once)
{
    char s[64];
    schema_name(s, sizeof s, "auto");
    cm_db *db = fresh(s, "CREATE TABLE t (id int, v text)");
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        const char *p[] = {id, "x"};
        ck_assert_int_eq(cm_db_exec_auto(db, "insert", "INSERT INTO t VALUES ($1, $2)", 2, p, NULL),
                         0);
    }
    const char *one[] = {"1"};
    PGresult *r = NULL;
    ck_assert_int_eq(cm_db_read_auto(db, "get", "SELECT v FROM t WHERE id = $1::int", 1, one, &r),
                     0);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "x");
    PQclear(r);
    /* two texts, two statements, each prepared once, named by its text */
    ck_assert_int_eq(cm_db_exec(db, "count prepared",
                                "SELECT count(*), count(DISTINCT statement) FROM "
                                "pg_prepared_statements WHERE name LIKE 'a\\_%'",
                                0, NULL, &r),
                     0);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "2");
    ck_assert_str_eq(PQgetvalue(r, 0, 1), "2");
    PQclear(r);
    ck_assert_int_eq(count_in(s, "t"), 3);
    /* a read after a killed session runs again on a new one */
    PGconn *c = pt_admin();
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d, 5000)",
             PQbackendPID(cm_db_conn(db)));
    pt_sql(c, sql);
    PQfinish(c);
    ck_assert_int_eq(cm_db_read_auto(db, "get", "SELECT v FROM t WHERE id = $1::int", 1, one, &r),
                     0);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "x");
    PQclear(r);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

START_TEST(tx_retries_a_serialization_failure)
{
    char s[64];
    schema_name(s, sizeof s, "retry");
    cm_db *db = fresh(s, "CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL);"
                         "INSERT INTO counter VALUES (1, 0)");
    conflict_arg a = {admin_in(s), 0, 1};
    ck_assert_int_eq(cm_db_tx(db, "SERIALIZABLE", 5, bump_counter, &a), 0);
    ck_assert_int_eq(a.calls, 2);
    /* both updates survive: the retry saw the other session's commit */
    ck_assert_int_eq(sql_long(a.other, "SELECT n FROM counter WHERE id = 1"), 101);
    PQfinish(a.other);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

START_TEST(tx_gives_up_after_max_attempts)
{
    char s[64];
    schema_name(s, sizeof s, "giveup");
    cm_db *db = fresh(s, "CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL);"
                         "INSERT INTO counter VALUES (1, 0)");
    conflict_arg a = {admin_in(s), 0, 100};
    ck_assert_int_eq(cm_db_tx(db, "REPEATABLE READ", 3, bump_counter, &a), CM_ECONFLICT);
    ck_assert_int_eq(a.calls, 3);
    ck_assert_int_eq(sql_long(a.other, "SELECT n FROM counter WHERE id = 1"), 300);
    ck_assert_int_eq(PQtransactionStatus(cm_db_conn(db)), PQTRANS_IDLE);
    PQfinish(a.other);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

/* write skew: each session reads what the other writes. postgres lets the
 * first committer win and fails the other: at its write when the other
 * already committed, at its COMMIT when both wrote while both were open */
typedef struct {
    conflict_arg c;
    int at_commit;
} skew_arg;

static int skew(cm_db *db, void *arg)
{
    skew_arg *a = arg;
    a->c.calls++;
    int interfere = a->c.calls <= a->c.conflict_until;
    PGresult *r = NULL;
    int rc = cm_db_exec(db, "read b", "SELECT count(*) FROM shifts WHERE kind = 'b'", 0, NULL, &r);
    if (rc)
        return rc;
    PQclear(r);
    if (interfere) {
        pt_sql(a->c.other, "BEGIN ISOLATION LEVEL SERIALIZABLE");
        pt_sql(a->c.other, "SELECT count(*) FROM shifts WHERE kind = 'a'");
    }
    if (a->at_commit) {
        rc = cm_db_exec(db, "write a", "INSERT INTO shifts VALUES ('a')", 0, NULL, NULL);
        if (interfere) {
            pt_sql(a->c.other, "INSERT INTO shifts VALUES ('b')");
            pt_sql(a->c.other, "COMMIT");
        }
        return rc;
    }
    if (interfere) {
        pt_sql(a->c.other, "INSERT INTO shifts VALUES ('b')");
        pt_sql(a->c.other, "COMMIT");
    }
    return cm_db_exec(db, "write a", "INSERT INTO shifts VALUES ('a')", 0, NULL, NULL);
}

static void check_skew_retried(int at_commit)
{
    char s[64];
    schema_name(s, sizeof s, at_commit ? "skew_commit" : "skew_write");
    cm_db *db = fresh(s, "CREATE TABLE shifts (kind text NOT NULL)");
    skew_arg a = {{admin_in(s), 0, 1}, at_commit};
    ck_assert_int_eq(cm_db_tx(db, "SERIALIZABLE", 5, skew, &a), 0);
    ck_assert_int_eq(a.c.calls, 2);
    ck_assert_int_eq(sql_long(a.c.other, "SELECT count(*) FROM shifts WHERE kind = 'a'"), 1);
    ck_assert_int_eq(sql_long(a.c.other, "SELECT count(*) FROM shifts WHERE kind = 'b'"), 1);
    PQfinish(a.c.other);
    cm_db_free(db);
    drop_schema(s);
}

START_TEST(tx_retries_write_skew_failing_a_write)
{
    check_skew_retried(0);
}
END_TEST

START_TEST(tx_retries_write_skew_failing_the_commit)
{
    check_skew_retried(1);
}
END_TEST

START_TEST(tx_reconnects_a_dead_connection_once)
{
    char s[64];
    schema_name(s, sizeof s, "reconnect");
    cm_db *db = fresh(s, "CREATE TABLE t (id int)");
    kill_backend(db);
    insert_arg a = {0, 0, 0};
    ck_assert_int_eq(cm_db_tx(db, NULL, 1, insert_row, &a), 0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(count_in(s, "t"), 1);
    /* the session came back in the right schema */
    char *sp = sql_text(cm_db_conn(db), "SHOW search_path");
    ck_assert_str_eq(sp, s);
    free(sp);
    cm_db_free(db);
    drop_schema(s);
}
END_TEST

/* ---- migrations ---- */

static const cm_migration base[] = {
    {1, "0001_items.sql", "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);"},
    {2, "0002_price.sql",
     "ALTER TABLE items ADD COLUMN price bigint NOT NULL DEFAULT 0;\n"
     "CREATE INDEX items_name ON items (name);\n"},
    {3, "0003_more.sql", "CREATE TABLE more (id int);"},
};

static int migrate(const char *schema, const cm_migration *list, size_t n, char *err, size_t errlen)
{
    cm_db *db = connect_to(schema);
    int rc = cm_db_migrate(db, schema, list, n, err, errlen);
    cm_db_free(db);
    return rc;
}

START_TEST(migrate_applies_in_order_and_rerun_is_a_noop)
{
    char s[64], err[256], sql[512];
    schema_name(s, sizeof s, "mig_apply");
    drop_schema(s);
    ck_assert_int_eq(migrate(s, base, 2, err, sizeof err), 0);
    ck_assert_int_eq(count_in(s, "schema_migrations"), 2);
    ck_assert(relation_exists(s, "items"));
    ck_assert(relation_exists(s, "items_name"));

    /* the recorded checksum is the sha-256 of the exact text */
    PGconn *c = pt_admin();
    for (int i = 0; i < 2; i++) {
        char v[8];
        snprintf(v, sizeof v, "%d", base[i].version);
        const char *p[] = {v, base[i].sql, base[i].name};
        snprintf(sql, sizeof sql,
                 "SELECT checksum = encode(sha256(convert_to($2, 'UTF8')), 'hex') AND name = $3 "
                 "AND applied_at <= now() FROM \"%s\".schema_migrations WHERE version = $1::int",
                 s);
        PGresult *r = PQexecParams(c, sql, 3, NULL, p, NULL, NULL, 0);
        ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "%s",
                      PQresultErrorMessage(r));
        ck_assert_str_eq(PQgetvalue(r, 0, 0), "t");
        PQclear(r);
    }
    snprintf(sql, sizeof sql,
             "SELECT string_agg(applied_at::text, ',' ORDER BY version) FROM "
             "\"%s\".schema_migrations",
             s);
    char *first = sql_text(c, sql);

    ck_assert_int_eq(migrate(s, base, 2, err, sizeof err), 0);
    char *again = sql_text(c, sql);
    ck_assert_str_eq(first, again);
    ck_assert_int_eq(count_in(s, "schema_migrations"), 2);
    free(first);
    free(again);
    PQfinish(c);
    drop_schema(s);
}
END_TEST

START_TEST(migrate_refuses_an_edited_applied_migration)
{
    char s[64], err[256];
    schema_name(s, sizeof s, "mig_edit");
    drop_schema(s);
    ck_assert_int_eq(migrate(s, base, 2, err, sizeof err), 0);
    cm_migration edited[2] = {base[0], base[1]};
    edited[1].sql = "ALTER TABLE items ADD COLUMN price bigint NOT NULL DEFAULT 1;\n"
                    "CREATE INDEX items_name ON items (name);\n";
    ck_assert_int_eq(migrate(s, edited, 2, err, sizeof err), CM_ECHECKSUM);
    ck_assert_msg(strstr(err, "migration 2 ") && strstr(err, "0002_price.sql"), "err: %s", err);
    /* refused before anything else happened, and an appended one is not applied either */
    cm_migration more[3] = {base[0], edited[1], base[2]};
    ck_assert_int_eq(migrate(s, more, 3, err, sizeof err), CM_ECHECKSUM);
    ck_assert(!relation_exists(s, "more"));
    ck_assert_int_eq(count_in(s, "schema_migrations"), 2);
    drop_schema(s);
}
END_TEST

START_TEST(migrate_applies_an_appended_migration)
{
    char s[64], err[256];
    schema_name(s, sizeof s, "mig_append");
    drop_schema(s);
    ck_assert_int_eq(migrate(s, base, 2, err, sizeof err), 0);
    ck_assert(!relation_exists(s, "more"));
    ck_assert_int_eq(migrate(s, base, 3, err, sizeof err), 0);
    ck_assert(relation_exists(s, "more"));
    ck_assert_int_eq(count_in(s, "schema_migrations"), 3);
    drop_schema(s);
}
END_TEST

START_TEST(migrate_refuses_duplicate_or_unordered_versions)
{
    char s[64], err[256];
    schema_name(s, sizeof s, "mig_order");
    drop_schema(s);
    cm_migration unordered[3] = {base[0], base[2], base[1]};
    ck_assert_int_eq(migrate(s, unordered, 3, err, sizeof err), CM_EINVAL);
    ck_assert_msg(strstr(err, "0002_price.sql") != NULL, "err: %s", err);
    cm_migration dup[2] = {base[0], base[1]};
    dup[1].version = 1;
    ck_assert_int_eq(migrate(s, dup, 2, err, sizeof err), CM_EINVAL);
    ck_assert_msg(strstr(err, "duplicate") != NULL, "err: %s", err);
    cm_migration zero[1] = {{0, "0000_zero.sql", "SELECT 1"}};
    ck_assert_int_eq(migrate(s, zero, 1, err, sizeof err), CM_EINVAL);
    cm_migration nosql[1] = {{1, "0001_x.sql", NULL}};
    ck_assert_int_eq(migrate(s, nosql, 1, err, sizeof err), CM_EINVAL);
    /* refused before touching the database */
    PGconn *c = pt_admin();
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT to_regnamespace('\"%s\"') IS NULL", s);
    char *v = sql_text(c, sql);
    ck_assert_str_eq(v, "t");
    free(v);
    PQfinish(c);
}
END_TEST

START_TEST(migrate_refuses_gaps_against_applied_history)
{
    char s[64], err[256];
    schema_name(s, sizeof s, "mig_gaps");
    drop_schema(s);
    cm_migration skip2[2] = {base[0], base[2]};
    ck_assert_int_eq(migrate(s, skip2, 2, err, sizeof err), 0);
    /* 2 arrives after 3 was applied: refused, not slipped in */
    ck_assert_int_eq(migrate(s, base, 3, err, sizeof err), CM_EINVAL);
    ck_assert_msg(strstr(err, "0002_price.sql") != NULL, "err: %s", err);
    ck_assert_int_eq(count_in(s, "schema_migrations"), 2);
    /* an applied migration deleted from the build */
    cm_migration only3[1] = {base[2]};
    ck_assert_int_eq(migrate(s, only3, 1, err, sizeof err), CM_EINVAL);
    ck_assert_msg(strstr(err, "missing") != NULL, "err: %s", err);
    /* a newer database than this build (rolling deploy): fine */
    ck_assert_int_eq(migrate(s, base, 1, err, sizeof err), 0);
    drop_schema(s);
}
END_TEST

START_TEST(migrate_rolls_back_a_failing_migration)
{
    char s[64], err[256];
    schema_name(s, sizeof s, "mig_fail");
    drop_schema(s);
    cm_migration bad[2] = {
        base[0], {2, "0002_broken.sql", "CREATE TABLE half (id int);\nSELECT no_such_function();"}};
    int rc = migrate(s, bad, 2, err, sizeof err);
    ck_assert_int_eq(rc, CM_EIO);
    ck_assert_msg(strstr(err, "0002_broken.sql") && strstr(err, "no_such_function"), "err: %s",
                  err);
    ck_assert(relation_exists(s, "items")); /* 1 stays applied */
    ck_assert(!relation_exists(s, "half"));
    ck_assert_int_eq(count_in(s, "schema_migrations"), 1);
    ck_assert_int_eq(migrate(s, base, 2, err, sizeof err), 0);
    ck_assert_int_eq(count_in(s, "schema_migrations"), 2);

    /* transaction control inside a migration is refused */
    cm_migration tc[3] = {base[0], base[1], {3, "0003_commit.sql", "COMMIT; CREATE TABLE z ()"}};
    ck_assert_int_eq(migrate(s, tc, 3, err, sizeof err), CM_EINVAL);
    ck_assert_int_eq(count_in(s, "schema_migrations"), 2);
    drop_schema(s);
}
END_TEST

START_TEST(migrate_targets_its_schema_and_keeps_the_session)
{
    char home[64], other[64], err[256];
    schema_name(home, sizeof home, "mig_home");
    schema_name(other, sizeof other, "mig_other");
    drop_schema(other);
    cm_db *db = fresh(home, "SELECT 1");
    cm_migration m[2] = {
        base[0], {2, "0002_path.sql", "SELECT set_config('search_path', 'pg_catalog', false)"}};
    ck_assert_int_eq(cm_db_migrate(db, other, m, 2, err, sizeof err), 0);
    ck_assert(relation_exists(other, "items"));
    ck_assert(!relation_exists(home, "items"));
    char *sp = sql_text(cm_db_conn(db), "SHOW search_path");
    ck_assert_str_eq(sp, home);
    free(sp);
    cm_db_free(db);
    drop_schema(home);
    drop_schema(other);
}
END_TEST

typedef struct {
    const char *schema;
    pthread_barrier_t *start;
    int rc;
    char err[256];
} migrate_job;

static const cm_migration slow[] = {
    {1, "0001_slow.sql", "SELECT pg_sleep(0.3); CREATE TABLE runs (n int);"},
    {2, "0002_once.sql", "INSERT INTO runs VALUES (2);"},
};

static void *migrate_thread(void *arg)
{
    migrate_job *j = arg;
    cm_db *db = NULL;
    j->rc = cm_db_connect(&db, dsn, j->schema, j->err, sizeof j->err);
    pthread_barrier_wait(j->start);
    if (j->rc == 0)
        j->rc = cm_db_migrate(db, j->schema, slow, 2, j->err, sizeof j->err);
    cm_db_free(db);
    return NULL;
}

START_TEST(migrate_concurrently_applies_each_migration_once)
{
    char s[64];
    schema_name(s, sizeof s, "mig_race");
    drop_schema(s);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 2);
    migrate_job jobs[2] = {{s, &start, -1, ""}, {s, &start, -1, ""}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, migrate_thread, &jobs[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < 2; i++)
        ck_assert_msg(jobs[i].rc == 0, "thread %d: %s (%s)", i, cm_strerror(jobs[i].rc),
                      jobs[i].err);
    ck_assert_int_eq(count_in(s, "schema_migrations"), 2);
    ck_assert_int_eq(count_in(s, "runs"), 1);
    drop_schema(s);
}
END_TEST

START_TEST(embedded_fixtures_keep_their_exact_text)
{
    ck_assert_uint_eq(test_fixture_migrations_count, 2);
    const cm_migration *a = &test_fixture_migrations[0], *b = &test_fixture_migrations[1];
    ck_assert_int_eq(a->version, 1);
    ck_assert_str_eq(a->name, "0001_a.sql");
    ck_assert_int_eq(b->version, 2);
    ck_assert_str_eq(b->name, "0002_b.sql");
    ck_assert_ptr_nonnull(strstr(a->sql, "'it''s a \"quoted\" \\ backslash'"));
    ck_assert_ptr_nonnull(strstr(a->sql, "E'tab:\\there, newline:\\nend, backslash:\\\\'"));
    ck_assert_ptr_nonnull(strstr(b->sql, "LANGUAGE plpgsql AS $$\nBEGIN\n"));
    /* the last line has no newline, and no trigraph was expanded */
    const char *tail = "?\?= would be a trigraph in a C string";
    size_t n = strlen(b->sql), t = strlen(tail);
    ck_assert_uint_gt(n, t);
    ck_assert_str_eq(b->sql + n - t, tail);

    char s[64], err[256];
    schema_name(s, sizeof s, "mig_fixture");
    drop_schema(s);
    ck_assert_int_eq(
        migrate(s, test_fixture_migrations, test_fixture_migrations_count, err, sizeof err), 0);
    PGconn *c = admin_in(s);
    char *v = sql_text(c, "SELECT body FROM note WHERE id = 1");
    ck_assert_str_eq(v, "it's a \"quoted\" \\ backslash");
    free(v);
    v = sql_text(c, "SELECT body FROM note WHERE id = 2");
    ck_assert_str_eq(v, "tab:\there, newline:\nend, backslash:\\");
    free(v);
    v = sql_text(c, "SELECT body FROM note WHERE id = 3");
    ck_assert_str_eq(v, "\xe5\x88\x86\xe8\xb4\xa6 \xe2\x9c\x93"); /* utf-8 bytes survive */
    free(v);
    v = sql_text(c, "SELECT greet('you')");
    ck_assert_str_eq(v, "hello, you! it's \\n \"50%\"");
    free(v);
    PQfinish(c);
    ck_assert_int_eq(
        migrate(s, test_fixture_migrations, test_fixture_migrations_count, err, sizeof err), 0);
    drop_schema(s);
}
END_TEST

static Suite *db_suite(void)
{
    Suite *s = suite_create("db");
    TCase *conn = tcase_create("connection");
    tcase_add_unchecked_fixture(conn, NULL, drop_run_schemas);
    tcase_set_timeout(conn, 30);
    tcase_add_test(conn, array_texts_parse);
    tcase_add_test(conn, number_params_by_name);
    tcase_add_test(conn, connect_sets_search_path_to_schema);
    tcase_add_test(conn, connect_quotes_the_schema_identifier);
    tcase_add_test(conn, connect_to_dead_server_is_unavailable);
    tcase_add_test(conn, ping_reconnects_a_killed_connection_and_restores_session);
    tcase_add_test(conn, error_maps_sqlstates_to_codes);
    tcase_add_test(conn, exec_returns_rows_with_parameters);
    suite_add_tcase(s, conn);

    TCase *tx = tcase_create("tx");
    tcase_add_unchecked_fixture(tx, NULL, drop_run_schemas);
    tcase_set_timeout(tx, 30);
    tcase_add_test(tx, tx_commits_when_fn_succeeds);
    tcase_add_test(tx, tx_rolls_back_when_fn_fails);
    tcase_add_test(tx, tx_refuses_nesting);
    tcase_add_test(tx, tx_runs_commit_hooks_after_commit_only);
    tcase_add_test(tx, exec_prepared_prepares_once_and_survives_a_lost_session);
    tcase_add_test(tx, pipeline_runs_statements_in_order_in_one_round_trip);
    tcase_add_test(tx, exec_auto_prepares_each_text_once);
    tcase_add_test(tx, tx_retries_a_serialization_failure);
    tcase_add_test(tx, tx_gives_up_after_max_attempts);
    tcase_add_test(tx, tx_retries_write_skew_failing_a_write);
    tcase_add_test(tx, tx_retries_write_skew_failing_the_commit);
    tcase_add_test(tx, tx_reconnects_a_dead_connection_once);
    suite_add_tcase(s, tx);

    TCase *mig = tcase_create("migrate");
    tcase_add_unchecked_fixture(mig, NULL, drop_run_schemas);
    tcase_set_timeout(mig, 60);
    tcase_add_test(mig, migrate_applies_in_order_and_rerun_is_a_noop);
    tcase_add_test(mig, migrate_refuses_an_edited_applied_migration);
    tcase_add_test(mig, migrate_applies_an_appended_migration);
    tcase_add_test(mig, migrate_refuses_duplicate_or_unordered_versions);
    tcase_add_test(mig, migrate_refuses_gaps_against_applied_history);
    tcase_add_test(mig, migrate_rolls_back_a_failing_migration);
    tcase_add_test(mig, migrate_targets_its_schema_and_keeps_the_session);
    tcase_add_test(mig, migrate_concurrently_applies_each_migration_once);
    tcase_add_test(mig, embedded_fixtures_keep_their_exact_text);
    suite_add_tcase(s, mig);
    return s;
}

int main(void)
{
    /* the expected failures below log at error level; LOG_LEVEL=debug shows all */
    if (pt_init("test_db"))
        return EXIT_FAILURE;
    dsn = pt_dsn;
    snprintf(run_prefix, sizeof run_prefix, "test_db_%ld_", (long)getpid());
    int rc = pt_run(db_suite());
    drop_run_schemas();
    return rc;
}
