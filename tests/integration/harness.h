/*
 * harness: what every integration test shares. processes (spawn a service
 * binary with an environment on fresh loopback ports, wait until it
 * serves, stop it, kill whatever a failed test left running), the private
 * postgres, the kafka broker (topics, a plain reader of one), gRPC clients
 * and calls, /metrics, a fault-injection tcp proxy and the Check runner.
 * fixture.h builds the order+inventory pair on top of it.
 *
 * a function that asserts (ck_assert) may only be called from the test's
 * own thread: a failed assertion ends the test with a longjmp (CK_NOFORK)
 * or an exit (CK_FORK), neither of which a worker thread may do.
 */
#ifndef HARNESS_H
#define HARNESS_H

#include <check.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cm_rpc_client.h"

/* ---- time ---- */

/* milliseconds on a monotonic clock */
long long hs_now_ms(void);

/* milliseconds since the epoch (CLOCK_REALTIME): what a service stamps */
long long hs_real_ms(void);

/* calls done(arg) every interval_ms until it returns non-zero or
 * timeout_ms passed; done runs at least once. 0 when done said so, -1 on
 * timeout. asserts nothing: the caller says what it waited for. */
int hs_poll(int (*done)(void *arg), void *arg, int timeout_ms, int interval_ms);

/* ---- processes ---- */

typedef struct hs_proc {
    pid_t pid; /* 0 once stopped and reaped */
    int grpc_port;
    int admin_port;
    char target[64];
    char log_path[256];
} hs_proc;

/* a port on 127.0.0.1 that was free a moment ago, from 20000-31999 (below
 * the kernel's ephemeral range); never the same port twice in a row */
int hs_free_port(void);

/* the entries of a, then those of b (either may be NULL), into out
 * (NULL-terminated, at most cap - 1 entries; the rest are dropped). returns
 * out. for hs_spawn, whose later entries override earlier ones with the
 * same key: a list of defaults, then a test's own settings. */
const char *const *hs_env_join(const char **out, size_t cap, const char *const *a,
                               const char *const *b);

/* starts bin with GRPC_LISTEN/ADMIN_LISTEN on fresh loopback ports, PG_DSN,
 * LOG_LEVEL=warn, WORKERS=2, INVENTORY_TARGET=itself and the "K=V" entries
 * of env (NULL-terminated, may be NULL; they override); stdout and stderr
 * go to p->log_path under /tmp. 0 or -1 (fork failed). the child dies with
 * the test process, and hs_teardown kills it if the test ends first. */
int hs_spawn(hs_proc *p, const char *bin, const char *const *env);

/* hs_spawn, then waits up to 30 s for Health/Check to say SERVING;
 * asserts both, naming the binary and its log. */
void hs_start(hs_proc *p, const char *bin, const char *const *env);

/* polls Health/Check until SERVING; 0, or -1 on timeout or when the
 * process died (it is then reaped: p->pid is 0). */
int hs_wait_serving(hs_proc *p, int timeout_ms);

/* polls the admin port's /readyz (plain HTTP, whatever the gRPC port
 * speaks: a TLS-only service) until 200; 0, or -1 on timeout or death. */
int hs_wait_ready(hs_proc *p, int timeout_ms);

/* the health status (1 SERVING, 2 NOT_SERVING) or -1 when unreachable. */
int hs_health(const hs_proc *p);

/* polls hs_health until it is want; 0, or -1 on timeout. */
int hs_wait_health(const hs_proc *p, int want, int timeout_ms);

/* 1 while the process runs; 0 once it exited (it is then reaped). */
int hs_alive(hs_proc *p);

/* sends sig (0: none, only waits); waits up to timeout_ms for the exit,
 * then SIGKILL. returns the exit code, 128+signal when killed by a signal,
 * or -1 (nothing running). */
int hs_stop(hs_proc *p, int sig, int timeout_ms);

/* waits for a process that ends by itself: its exit code, 128+signal, or
 * -1 when it still runs after timeout_ms (it is left running). */
int hs_wait_exit(hs_proc *p, int timeout_ms);

/* a checked-fixture teardown: SIGKILLs (after SIGCONT, in case a test
 * stopped it) every process hs_spawn started that is still running, and
 * reaps it. a test that fails under CK_NOFORK skips its own cleanup; this
 * keeps its processes from running on under the next test. nothing to do
 * after a test that stopped what it started. */
void hs_teardown(void);

/* ---- http and /metrics ---- */

/* GET path from 127.0.0.1:port; returns the http status (-1 when there was
 * no answer) and copies the body into body (may be NULL). not thread-safe:
 * the response is read into a static buffer. */
int hs_http_get(int port, const char *path, char *body, size_t bodylen);

/* 1 when p's log (its stdout and stderr, p->log_path) holds what */
int hs_log_contains(const hs_proc *p, const char *what);

/* the value of a sample in a Prometheus text body: series is the name with
 * its labels as written ("x_total" or "x{a=\"b\"}"), matched at the start
 * of a line, so "# HELP x ..." does not count. -1 when absent. */
double hs_metric_in(const char *body, const char *series);

/* hs_metric_in over the process's GET /metrics; -1 when absent or when
 * /metrics did not answer 200. */
double hs_metric(const hs_proc *p, const char *series);

/* ---- gRPC ---- */

/* a client of p's gRPC port (the client's default retry policy, which only
 * retries calls flagged idempotent). certs_dir (may be NULL): TLS with
 * make_certs.sh's ca.pem, presenting client.pem/client.key (mTLS). asserts
 * it was created; free it with cm_rpc_client_free. */
cm_rpc_client *hs_client(const hs_proc *p, const char *certs_dir);

/* a unary call with a 15 s deadline. resp (may be NULL: the response is
 * freed) gets the response on OK; st (may be NULL) gets the status. returns
 * the gRPC status code (0 OK). asserts nothing: callable from any thread. */
int hs_call(cm_rpc_client *c, const char *method, const ProtobufCMessage *req,
            const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, cm_rpc_status *st,
            const cm_rpc_md *md, size_t nmd);

/* a CA, a server certificate for 127.0.0.1 and a client certificate, made
 * by make_certs.sh in a fresh /tmp/commerce-<tag>-certs-<pid>, whose path
 * is written to dir. asserts the script succeeded; remove the directory
 * with hs_rm_rf. */
void hs_make_certs(char *dir, size_t dirlen, const char *tag);

/* rm -rf path; asserts it succeeded */
void hs_rm_rf(const char *path);

/* ---- postgres ---- */

/* the private postgres dsn; aborts the test with a clear message if
 * PG_DSN is not set (scripts/test.sh sets it). */
const char *hs_pg_dsn(void);

/* the port of the private postgres from PG_DSN (libpq conninfo) */
int hs_pg_port(void);

/* a connection to dsn (NULL: hs_pg_dsn()) with notices silenced; asserts
 * it is up. close it with PQfinish. */
PGconn *hs_pg_connect(const char *dsn);

/* the first column of the first row as a number (NULL reads as 0);
 * asserts the query returned rows. */
long long hs_pg_scalar(PGconn *pg, const char *sql);

/* runs a statement; asserts it succeeded. */
void hs_pg_exec(PGconn *pg, const char *sql);
/* hs_pg_exec, repeated (a few times, with a growing pause) when Postgres
 * aborts it for a deadlock, a serialization failure or a lock timeout:
 * for statements that race the services' own transactions */
void hs_pg_exec_retry(PGconn *pg, const char *sql);

/* hs_pg_scalar on a connection of its own to PG_DSN with search_path set
 * to schema (may be NULL: the default). */
long long hs_sql_long(const char *schema, const char *sql);

/* polls the one-row query q in schema every interval_ms until it reads
 * want, for up to timeout_ms; 0, or -1 on timeout. hs_wait_sql asserts
 * it came within 30 s, naming the query, what it read last and log (a
 * service's log path, may be NULL) */
int hs_poll_sql(const char *schema, const char *q, long long want, int timeout_ms, int interval_ms);
void hs_wait_sql(const char *schema, const char *q, long long want, const char *log);
/* hs_sql_long that does not assert: 0 and *out set when the query returned
 * exactly one row, -1 otherwise (a table that is not there yet). */
int hs_sql_try_long(const char *schema, const char *sql, long long *out);

/* hs_pg_exec on a connection of its own to PG_DSN (search_path as above) */
void hs_sql_exec(const char *schema, const char *sql);

/* "Bearer <HS256 JWT>" signed with secret, with claims tid, sub, roles
 * (NULL: none) and exp now + exp_offset seconds (negative: expired).
 * malloc'd: free it. */
char *hs_bearer(const char *secret, const char *tid, const char *sub, const char *roles,
                long exp_offset);
/* the same with the claims of the scoped roles (NULL: absent) */
char *hs_bearer_scoped(const char *secret, const char *tid, const char *sub, const char *roles,
                       const char *merchant_id, const char *channel_id, long exp_offset);

/* DROP SCHEMA IF EXISTS schema CASCADE on dsn (NULL: PG_DSN) */
void hs_drop_schema(const char *dsn, const char *schema);

/* ---- kafka ---- */

/* the broker the tests use (KAFKA_BROKERS); aborts the test with a clear
 * message when it is not set (scripts/test.sh sets it). */
const char *hs_kafka_brokers(void);

/* creates topic (replication 1) through the admin API; one that exists
 * already is fine. asserts the broker answered within 30 s. */
void hs_kafka_create_topic(const char *brokers, const char *topic, int partitions);

/* deletes topic; best effort (waits up to 30 s for the answer, which it
 * does not check): a leftover test topic harms nothing. */
void hs_kafka_delete_topic(const char *brokers, const char *topic);

/* a producer for tests that play another service: hs_produce sends one
 * record (headers: NULL-terminated "name", "value" pairs) and waits until
 * the broker acknowledged it; asserts it was. */
typedef struct hs_producer hs_producer;
hs_producer *hs_producer_new(const char *brokers);
void hs_produce(hs_producer *p, const char *topic, const char *key, const char *const *headers,
                const void *payload, size_t len);
void hs_producer_free(hs_producer *p);
/* an event as a service's outbox relay publishes it: m packed as the
 * value, key, and the headers ce_id (event_id), ce_type (type), ce_source
 * (source), content-type application/protobuf and tenant-id; acknowledged
 * before it returns */
void hs_produce_event(hs_producer *p, const char *topic, const char *key, const char *type,
                      const char *source, const char *event_id, const char *tenant,
                      const ProtobufCMessage *m);

/* one record as read from a topic */
typedef struct hs_record {
    int32_t partition;
    int64_t offset;
    char key[256];
    /* the headers the contract names, "" when absent */
    char type[64];         /* ce_type */
    char id[64];           /* ce_id */
    char source[64];       /* ce_source */
    char tenant[64];       /* tenant-id */
    char content_type[64]; /* content-type */
    uint8_t *payload;      /* len bytes, then a NUL */
    size_t len;
    rd_kafka_headers_t *headers; /* every header, see hs_record_header */
} hs_record;

/* the last value of header name as a string, or NULL when absent. the
 * string lives until the record's reader is closed. */
const char *hs_record_header(const hs_record *r, const char *name);

/* a plain reader of one topic: every partition assigned (no group join, no
 * commits), read from the beginning or (at_end) from what is the end now.
 * every record read is kept, in the order read (each partition's in its
 * order). asserts the topic exists with at least one partition. */
typedef struct hs_topic hs_topic;
hs_topic *hs_topic_open(const char *brokers, const char *topic, int at_end);
void hs_topic_close(hs_topic *t);

/* the next record, waiting up to timeout_ms; NULL when none came. the
 * record is kept: hs_topic_at(t, hs_topic_count(t) - 1) is the same. */
const hs_record *hs_topic_next(hs_topic *t, int timeout_ms);

/* reads until want records are kept, or timeout_ms passed; returns how
 * many are kept */
size_t hs_topic_read(hs_topic *t, size_t want, int timeout_ms);

/* reads until every partition's end as it is now; 0, or -1 after
 * timeout_ms or when the ends could not be queried. */
int hs_topic_catch_up(hs_topic *t, int timeout_ms);

/* the records read so far, in the order read; valid until hs_topic_close */
size_t hs_topic_count(const hs_topic *t);
const hs_record *hs_topic_at(const hs_topic *t, size_t i);

/* ---- fault injection ---- */

/* a tcp proxy on 127.0.0.1 for fault injection: forwards to target_port
 * until cut (every connection closed, new ones refused), then restored. */
typedef struct hs_proxy hs_proxy;
hs_proxy *hs_proxy_start(int target_port);
int hs_proxy_port(const hs_proxy *p);
/* hold: the target's bytes to the client stay unforwarded (a reply that
 * is late), requests still pass; 0 forwards them again */
void hs_proxy_hold_replies(hs_proxy *p, int hold);
void hs_proxy_cut(hs_proxy *p);
void hs_proxy_restore(hs_proxy *p);
void hs_proxy_free(hs_proxy *p);

/* ---- the runner ---- */

/* runs every test of s (takes ownership of s) and returns the process's
 * exit status: EXIT_SUCCESS when all passed. nofork: every test in this
 * process (gRPC does not survive a fork); 0: Check's default (CK_FORK
 * unless the environment says otherwise). */
int hs_run(Suite *s, int nofork);

#endif
