/*
 * scripts/check_sql_params.py's own test (ctest check.sql_params): the
 * lines marked as expected unsafe must be flagged, nothing else. never
 * compiled; written as the services write their SQL.
 */
#include "cm_arena.h"
#include "cm_buf.h"
#include "cm_db.h"

#include <libpq-fe.h>
#include <stdio.h>

#define COLS "tenant_id, sku, qty"

static const char fixed_sql[] = "SELECT " COLS " FROM stock WHERE tenant_id = $1";

typedef struct req {
    const char *name, *filter;
    long long id;
} req;

/* ---- planted: values inside the statement's text ---- */

static void by_name(PGconn *conn, const req *q)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT * FROM t WHERE name = '%s'", q->name); /* expect: unsafe */
    PQclear(PQexec(conn, sql));
}

static int delete_one(cm_db *db, cm_arena *a, const req *q)
{
    return cm_db_exec(db, "delete",
                      cm_arena_printf(a, "DELETE FROM t WHERE id = %lld", /* expect: unsafe */
                                      q->id),
                      0, NULL, NULL);
}

static int wrapped(cm_db *db, const char *what, const char *sql)
{
    return cm_db_exec_auto(db, what, sql, 0, NULL, NULL);
}

static int update_many(cm_db *db, const req *q)
{
    char sql[512];
    snprintf(sql, sizeof sql, /* expect: unsafe */
             "UPDATE t SET qty = qty + 1 "
             "WHERE sku IN (%s)",
             q->filter);
    return wrapped(db, "update", sql);
}

static int from_the_request(cm_db *db, const req *q)
{
    return wrapped(db, "filter", q->filter); /* expect: unsafe */
}

static int appended(cm_db *db, const req *q)
{
    cm_buf b = {0};
    cm_buf_puts(&b, "SELECT 1 FROM t WHERE name = ");
    cm_buf_puts(&b, q->name);
    int rc = cm_db_exec(db, "appended", b.p, 0, NULL, NULL); /* expect: unsafe */
    cm_buf_free(&b);
    return rc;
}

static int pasted(cm_db *db, cm_arena *a, const req *q)
{
    const char *sql = cm_arena_printf(a, "%s%s", fixed_sql, q->filter);
    char more[256];
    snprintf(more, sizeof more, "%s AND %s", fixed_sql, q->filter);
    int rc = cm_db_exec(db, "pasted", sql, 0, NULL, NULL); /* expect: unsafe */
    if (rc == 0)
        rc = cm_db_exec(db, "pasted", more, 0, NULL, NULL); /* expect: unsafe */
    return rc;
}

/* a helper that sets a pipeline statement's text from its parameter: its
 * callers are checked */
static void stmt_of(cm_db_stmt *st, const char *what, const char *sql)
{
    *st = (cm_db_stmt){.what = what, .sql = sql};
}

static int piped(cm_db *db, const req *q)
{
    cm_db_stmt one;
    stmt_of(&one, "fixed", "SELECT 1");
    stmt_of(&one, "pasted", q->filter); /* expect: unsafe */
    cm_db_stmt *ptr = &one;
    ptr->sql = q->filter;                           /* expect: unsafe */
    cm_db_stmt pos[] = {{"what", NULL, q->filter}}; /* expect: unsafe */
    (void)pos;
    char sql[128];
    snprintf(sql, sizeof sql, "%s", q->filter);
    cm_db_stmt st[] = {{.what = "a", .sql = sql}}; /* expect: unsafe */
    return cm_db_pipeline(db, st, 1);
}

/* ---- safe: fixed texts, values as parameters ---- */

static int by_param(cm_db *db, const req *q, int lock)
{
    const char *p[] = {q->name};
    const char *sql = lock ? "SELECT " COLS " FROM stock WHERE sku = $1 FOR UPDATE"
                           : "SELECT " COLS " FROM stock WHERE sku = $1";
    int rc = cm_db_exec(db, "read", sql, 1, p, NULL);
    if (rc == 0)
        rc = cm_db_exec(db, "read", fixed_sql, 1, p, NULL);
    if (rc == 0)
        rc = wrapped(db, "ternary", lock ? "SELECT 1 WHERE $1::int > 0" : "SELECT 2", NULL);
    cm_db_stmt st[] = {
        {.what = "read", .name = "s_read", .sql = "SELECT " COLS " FROM stock", .nparams = 0},
        {.what = "plans", .sql = CM_DB_CUSTOM_PLANS_SQL}};
    if (rc == 0)
        rc = cm_db_pipeline(db, st, 2);
    char lim[16];
    snprintf(lim, sizeof lim, "%d", 10); /* a parameter's value, not SQL */
    return rc;
}

static int quoted(PGconn *conn, const char *schema)
{
    char *ident = PQescapeIdentifier(conn, schema, strlen(schema));
    char sql[256];
    /* sql-safe: identifier quoted by PQescapeIdentifier */
    snprintf(sql, sizeof sql, "SET search_path TO %s", ident);
    PQfreemem(ident);
    PQclear(PQexec(conn, sql));
    return 0;
}
