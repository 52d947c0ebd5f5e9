/*
 * pg_test: what the unit tests that need the private postgres share.
 */
#ifndef PG_TEST_H
#define PG_TEST_H

#include <check.h>
#include <libpq-fe.h>

/* PG_DSN, after pt_init */
extern const char *pt_dsn;

/* reads PG_DSN (when unset: says how to set it and returns -1, so the test
 * fails instead of skipping) and sets the log level from LOG_LEVEL (error
 * by default: the tests provoke failures that log). */
int pt_init(const char *name);

/* runs the suite; returns the process exit code */
int pt_run(Suite *s);

/* a libpq notice processor that drops notices ("drop cascades to ...") */
void pt_quiet(void *arg, const char *msg);

/* an admin connection to PG_DSN, notices dropped; fails the test if it
 * cannot connect */
PGconn *pt_admin(void);

/* runs q and fails the test unless it succeeded */
void pt_sql(PGconn *c, const char *q);

/* one number from a one-row query */
long pt_query_long(PGconn *c, const char *q);

#endif
