#include "pg_test.h"

#include "cm_log.h"

#include <stdio.h>
#include <stdlib.h>

const char *pt_dsn;

int pt_init(const char *name)
{
    pt_dsn = getenv("PG_DSN");
    if (!pt_dsn || !*pt_dsn) {
        fprintf(stderr,
                "%s: FAIL: PG_DSN is not set. these tests need a real postgres: run "
                "scripts/test.sh, or scripts/pg.sh start and then "
                "PG_DSN=\"$(scripts/pg.sh dsn)\" build-asan/bin/%s\n",
                name, name);
        return -1;
    }
    cm_log_level lvl = CM_LOG_ERROR;
    const char *env = getenv("LOG_LEVEL");
    if (env && cm_log_level_parse(env, &lvl) != 0)
        lvl = CM_LOG_ERROR;
    cm_log_init(name, lvl);
    return 0;
}

int pt_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

void pt_quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

PGconn *pt_admin(void)
{
    PGconn *c = PQconnectdb(pt_dsn);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "admin connection: %s", PQerrorMessage(c));
    PQsetNoticeProcessor(c, pt_quiet, NULL);
    return c;
}

void pt_sql(PGconn *c, const char *q)
{
    PGresult *r = PQexec(c, q);
    ExecStatusType st = PQresultStatus(r);
    ck_assert_msg(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", q,
                  PQresultErrorMessage(r));
    PQclear(r);
}

long pt_query_long(PGconn *c, const char *q)
{
    PGresult *r = PQexec(c, q);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "%s: %s", q,
                  PQerrorMessage(c));
    long v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}
