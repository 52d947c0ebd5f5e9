#include "harness.h"

#include <jwt.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "grpc/health/v1/health.pb-c.h"

/* ---- time ---- */

long long hs_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

long long hs_real_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int hs_poll(int (*done)(void *arg), void *arg, int timeout_ms, int interval_ms)
{
    long long until = hs_now_ms() + timeout_ms;
    for (;;) {
        if (done(arg))
            return 0;
        if (hs_now_ms() >= until)
            return -1;
        usleep((useconds_t)interval_ms * 1000);
    }
}

/* ---- processes ---- */

/* the pids hs_spawn started and nothing has reaped yet, for hs_teardown.
 * pids, not hs_procs: a test's hs_proc may be on the stack of a test that
 * an assertion ended */
enum { MAX_LIVE = 64 };
static pid_t live[MAX_LIVE];
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;

static void live_add(pid_t pid)
{
    pthread_mutex_lock(&live_mu);
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i] == 0) {
            live[i] = pid;
            break;
        }
    pthread_mutex_unlock(&live_mu);
}

static void live_remove(pid_t pid)
{
    pthread_mutex_lock(&live_mu);
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i] == pid)
            live[i] = 0;
    pthread_mutex_unlock(&live_mu);
}

/* waitpid that forgets a pid once it is reaped */
static pid_t reap(pid_t pid, int *st, int flags)
{
    pid_t r = waitpid(pid, st, flags);
    if (r == pid || (r < 0 && errno == ECHILD))
        live_remove(pid);
    return r;
}

void hs_teardown(void)
{
    int killed = 0;
    for (int i = 0; i < MAX_LIVE; i++) {
        pthread_mutex_lock(&live_mu);
        pid_t pid = live[i];
        pthread_mutex_unlock(&live_mu);
        if (pid <= 0)
            continue;
        int st;
        /* only a child of ours that still runs: a pid reaped elsewhere may
         * have been given to another process since */
        if (reap(pid, &st, WNOHANG) == 0) {
            kill(pid, SIGCONT);
            kill(pid, SIGKILL);
            reap(pid, &st, 0);
            killed++;
        }
        live_remove(pid);
    }
    if (killed)
        fprintf(stderr, "teardown: killed %d process(es) the test left running\n", killed);
}

static int status_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

/* a port nothing has bound right now */
static int port_is_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Ports come from 20000-31999, below the kernel's ephemeral range
 * (32768-60999), not from bind(0): between this probe and the service's
 * own bind, any outgoing connection on the machine (a client's, the
 * broker's, postgres's) may be given an ephemeral port as its local port,
 * and a port from that range could be taken that way. Each pick is random
 * (seeded by pid and time), as the kernel's are, so that tests running
 * side by side rarely probe the same port: a port probed free by two of
 * them at once would be bound by both services (gRPC sets SO_REUSEPORT). */
int hs_free_port(void)
{
    enum { LO = 20000, HI = 32000, RECENT = 256 };
    /* the ports handed out lately: a service binds its port some time
     * after this returns, so the probe alone would hand the same port to
     * two callers in a row (a service's gRPC and admin ports, once) */
    static int recent[RECENT];
    static size_t nrecent;
    static uint64_t x;
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    if (x == 0) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        x = ((uint64_t)getpid() << 32) ^ (uint64_t)t.tv_nsec ^ (uint64_t)t.tv_sec;
        x |= 1;
    }
    int port = -1;
    for (int tries = 0; tries < 1000 && port < 0; tries++) {
        x ^= x << 13; /* xorshift64 */
        x ^= x >> 7;
        x ^= x << 17;
        int p = LO + (int)(x % (uint64_t)(HI - LO));
        int seen = 0;
        for (size_t i = 0; i < RECENT && i < nrecent && !seen; i++)
            seen = recent[i] == p;
        if (!seen && port_is_free(p))
            port = p;
    }
    if (port > 0)
        recent[nrecent++ % RECENT] = port;
    pthread_mutex_unlock(&mu);
    return port;
}

/* "K=V" entries, later ones overriding earlier ones with the same K */
static int env_add(char **envp, int n, int max, const char *kv)
{
    const char *eq = strchr(kv, '=');
    if (!eq)
        return n;
    size_t kl = (size_t)(eq - kv) + 1; /* the key and its '=' */
    for (int i = 0; i < n; i++) {
        if (strncmp(envp[i], kv, kl) == 0) {
            free(envp[i]);
            envp[i] = strdup(kv);
            return n;
        }
    }
    if (n < max)
        envp[n++] = strdup(kv);
    return n;
}

const char *const *hs_env_join(const char **out, size_t cap, const char *const *a,
                               const char *const *b)
{
    size_t n = 0;
    const char *const *lists[] = {a, b};
    for (size_t k = 0; k < 2; k++)
        for (size_t i = 0; lists[k] && lists[k][i] && n + 1 < cap; i++)
            out[n++] = lists[k][i];
    out[n] = NULL;
    return out;
}

int hs_spawn(hs_proc *p, const char *bin, const char *const *env)
{
    extern char **environ;
    memset(p, 0, sizeof *p);
    p->grpc_port = hs_free_port();
    p->admin_port = hs_free_port();
    snprintf(p->target, sizeof p->target, "127.0.0.1:%d", p->grpc_port);
    const char *base = strrchr(bin, '/');
    snprintf(p->log_path, sizeof p->log_path, "/tmp/%s.%d.%d.log", base ? base + 1 : bin,
             (int)getpid(), p->grpc_port);

    /* the environment is built before fork: the child of a threaded
     * process may only call async-signal-safe functions until exec */
    enum { MAX_ENV = 512 };
    char **envp = calloc(MAX_ENV + 1, sizeof *envp);
    int n = 0;
    for (char **e = environ; *e && n < MAX_ENV - 64; e++)
        n = env_add(envp, n, MAX_ENV, *e);
    char v[1200];
    snprintf(v, sizeof v, "GRPC_LISTEN=127.0.0.1:%d", p->grpc_port);
    n = env_add(envp, n, MAX_ENV, v);
    snprintf(v, sizeof v, "ADMIN_LISTEN=127.0.0.1:%d", p->admin_port);
    n = env_add(envp, n, MAX_ENV, v);
    snprintf(v, sizeof v, "PG_DSN=%s", hs_pg_dsn());
    n = env_add(envp, n, MAX_ENV, v);
    n = env_add(envp, n, MAX_ENV, "LOG_LEVEL=warn");
    n = env_add(envp, n, MAX_ENV, "WORKERS=2");
    /* services that call another one default to calling themselves */
    snprintf(v, sizeof v, "INVENTORY_TARGET=127.0.0.1:%d", p->grpc_port);
    n = env_add(envp, n, MAX_ENV, v);
    for (size_t i = 0; env && env[i]; i++)
        n = env_add(envp, n, MAX_ENV, env[i]);
    envp[n] = NULL;

    int fd = open(p->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* a test that fails skips its own cleanup: the service must not
         * outlive the test process, nor hold ctest's output pipe open (ctest
         * would wait for its timeout) */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(127);
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO); /* dup2 clears close-on-exec on the copy */
            dup2(fd, STDOUT_FILENO);
        }
        char *const argv[] = {(char *)bin, NULL};
        execve(bin, argv, envp);
        _exit(127);
    }
    if (fd >= 0)
        close(fd);
    for (int i = 0; i < n; i++)
        free(envp[i]);
    free(envp);
    if (pid < 0)
        return -1;
    p->pid = pid;
    live_add(pid);
    return 0;
}

void hs_start(hs_proc *p, const char *bin, const char *const *env)
{
    const char *base = strrchr(bin, '/');
    base = base ? base + 1 : bin;
    ck_assert_msg(hs_spawn(p, bin, env) == 0, "could not start %s", base);
    ck_assert_msg(hs_wait_serving(p, 30000) == 0, "%s did not become serving (log %s)", base,
                  p->log_path);
}

int hs_health(const hs_proc *p)
{
    cm_rpc_client *c;
    char err[256];
    cm_rpc_client_opts o = {.target = p->target, .max_attempts = 1};
    if (cm_rpc_client_new(&c, &o, err, sizeof err))
        return -1;
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    cm_rpc_status st;
    int rc = cm_rpc_call(c, "/grpc.health.v1.Health/Check", &req.base,
                         &grpc__health__v1__health_check_response__descriptor, NULL, &resp, NULL, 0,
                         1000, 0, &st);
    int status = -1;
    if (rc == 0) {
        status = ((Grpc__Health__V1__HealthCheckResponse *)resp)->status;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    cm_rpc_client_free(c);
    return status;
}

/* 1 when the process died (it is reaped) */
static int died(hs_proc *p)
{
    int st;
    if (p->pid > 0 && reap(p->pid, &st, WNOHANG) == p->pid) {
        p->pid = 0;
        return 1;
    }
    return p->pid <= 0;
}

typedef struct health_wait {
    hs_proc *p;
    int want;
    int check_death;
    int dead;
} health_wait;

static int health_is(void *arg)
{
    health_wait *w = arg;
    if (w->check_death && died(w->p))
        return w->dead = 1;
    return hs_health(w->p) == w->want;
}

int hs_wait_serving(hs_proc *p, int timeout_ms)
{
    health_wait w = {p, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING, 1, 0};
    return hs_poll(health_is, &w, timeout_ms, 50) == 0 && !w.dead ? 0 : -1;
}

int hs_wait_health(const hs_proc *p, int want, int timeout_ms)
{
    health_wait w = {(hs_proc *)p, want, 0, 0};
    return hs_poll(health_is, &w, timeout_ms, 100);
}

static int readyz(void *arg)
{
    health_wait *w = arg;
    char body[256];
    if (died(w->p))
        return w->dead = 1;
    return hs_http_get(w->p->admin_port, "/readyz", body, sizeof body) == 200;
}

int hs_wait_ready(hs_proc *p, int timeout_ms)
{
    health_wait w = {p, 0, 1, 0};
    return hs_poll(readyz, &w, timeout_ms, 50) == 0 && !w.dead ? 0 : -1;
}

int hs_alive(hs_proc *p)
{
    return !died(p);
}

/* waits up to timeout_ms for p to exit: its exit code or 128+signal (it
 * is reaped: p->pid is 0), -2 when it still runs, -1 when it is not a
 * child to wait for */
static int exited(hs_proc *p, int timeout_ms)
{
    if (p->pid <= 0)
        return -1;
    long long until = hs_now_ms() + timeout_ms;
    int st = 0;
    for (;;) {
        pid_t r = reap(p->pid, &st, WNOHANG);
        if (r == p->pid || r < 0) {
            p->pid = 0;
            return r < 0 ? -1 : status_code(st);
        }
        if (hs_now_ms() > until)
            return -2;
        usleep(10 * 1000);
    }
}

int hs_stop(hs_proc *p, int sig, int timeout_ms)
{
    if (p->pid > 0 && sig)
        kill(p->pid, sig);
    int code = exited(p, timeout_ms);
    if (code == -2) {
        kill(p->pid, SIGKILL);
        code = exited(p, 60000);
    }
    return code;
}

int hs_wait_exit(hs_proc *p, int timeout_ms)
{
    int code = exited(p, timeout_ms);
    return code == -2 ? -1 : code;
}

/* ---- http and /metrics ---- */

int hs_http_get(int port, const char *path, char *body, size_t bodylen)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char req[256];
    int n =
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    static char buf[1 << 20];
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, buf + got, sizeof buf - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    int status = -1;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        return -1;
    const char *b = strstr(buf, "\r\n\r\n");
    if (body && bodylen) {
        snprintf(body, bodylen, "%s", b ? b + 4 : "");
    }
    return status;
}

double hs_metric_in(const char *body, const char *series)
{
    size_t n = strlen(series);
    for (const char *at = body; at && *at; at = strchr(at, '\n')) {
        if (*at == '\n')
            at++;
        if (strncmp(at, series, n) == 0 && at[n] == ' ')
            return strtod(at + n + 1, NULL);
    }
    return -1;
}

double hs_metric(const hs_proc *p, const char *series)
{
    static char body[1 << 18];
    if (hs_http_get(p->admin_port, "/metrics", body, sizeof body) != 200)
        return -1;
    return hs_metric_in(body, series);
}

/* ---- gRPC ---- */

cm_rpc_client *hs_client(const hs_proc *p, const char *certs_dir)
{
    char ca[192], cert[192], key[192];
    cm_rpc_client_opts o = {.target = p->target};
    if (certs_dir) {
        snprintf(ca, sizeof ca, "%s/ca.pem", certs_dir);
        snprintf(cert, sizeof cert, "%s/client.pem", certs_dir);
        snprintf(key, sizeof key, "%s/client.key", certs_dir);
        o.tls_ca_file = ca;
        o.tls_cert_file = cert;
        o.tls_key_file = key;
    }
    cm_rpc_client *c = NULL;
    char err[256];
    ck_assert_msg(cm_rpc_client_new(&c, &o, err, sizeof err) == 0, "client of %s: %s", p->target,
                  err);
    return c;
}

int hs_call(cm_rpc_client *c, const char *method, const ProtobufCMessage *req,
            const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, cm_rpc_status *st,
            const cm_rpc_md *md, size_t nmd)
{
    cm_rpc_status local;
    if (!st)
        st = &local;
    ProtobufCMessage *r = NULL;
    cm_rpc_call(c, method, req, resp_desc, NULL, &r, md, nmd, 15000, 0, st);
    if (resp)
        *resp = r;
    else if (r)
        protobuf_c_message_free_unpacked(r, NULL);
    return st->code;
}

void hs_make_certs(char *dir, size_t dirlen, const char *tag)
{
    snprintf(dir, dirlen, "/tmp/commerce-%s-certs-%d", tag, (int)getpid());
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s %s", CERTS_SCRIPT, dir);
    ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
}

void hs_rm_rf(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", path);
    ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
}

/* ---- postgres ---- */

const char *hs_pg_dsn(void)
{
    const char *dsn = getenv("PG_DSN");
    if (!dsn || !*dsn)
        ck_abort_msg("PG_DSN is not set: run the tests through scripts/test.sh");
    return dsn;
}

static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

PGconn *hs_pg_connect(const char *dsn)
{
    PGconn *pg = PQconnectdb(dsn ? dsn : hs_pg_dsn());
    ck_assert_msg(PQstatus(pg) == CONNECTION_OK, "postgres: %s", PQerrorMessage(pg));
    PQsetNoticeProcessor(pg, quiet, NULL);
    return pg;
}

long long hs_pg_scalar(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0, "%s: %s", sql,
                  PQerrorMessage(pg));
    long long v = PQgetisnull(r, 0, 0) ? 0 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

void hs_pg_exec(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
                  "%s: %s", sql, PQerrorMessage(pg));
    PQclear(r);
}

void hs_pg_exec_retry(PGconn *pg, const char *sql)
{
    /* A statement that takes several locks (TRUNCATE of many tables) can
     * deadlock with a service's own transaction; Postgres then aborts one
     * of the two. Ours is the one to repeat: the service's work is not the
     * test's to undo. */
    for (int attempt = 1;; attempt++) {
        PGresult *r = PQexec(pg, sql);
        ExecStatusType st = PQresultStatus(r);
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        int retry =
            st == PGRES_FATAL_ERROR && state &&
            (!strcmp(state, "40P01") || !strcmp(state, "40001") || !strcmp(state, "55P03")) &&
            attempt < 20;
        if (!retry) {
            ck_assert_msg(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql,
                          PQerrorMessage(pg));
            PQclear(r);
            return;
        }
        PQclear(r);
        usleep((useconds_t)(20000 * attempt));
    }
}

/* a connection to PG_DSN with search_path set to schema (NULL: as is) */
static PGconn *connect_in(const char *schema)
{
    PGconn *pg = hs_pg_connect(NULL);
    if (schema) {
        char sql[160];
        snprintf(sql, sizeof sql, "SET search_path = %s", schema);
        hs_pg_exec(pg, sql);
    }
    return pg;
}

long long hs_sql_long(const char *schema, const char *sql)
{
    PGconn *pg = connect_in(schema);
    long long v = hs_pg_scalar(pg, sql);
    PQfinish(pg);
    return v;
}

int hs_sql_try_long(const char *schema, const char *sql, long long *out)
{
    PGconn *pg = connect_in(schema);
    PGresult *r = PQexec(pg, sql);
    int rc = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        *out = PQgetisnull(r, 0, 0) ? 0 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        rc = 0;
    }
    PQclear(r);
    PQfinish(pg);
    return rc;
}

void hs_sql_exec(const char *schema, const char *sql)
{
    PGconn *pg = connect_in(schema);
    hs_pg_exec(pg, sql);
    PQfinish(pg);
}

void hs_drop_schema(const char *dsn, const char *schema)
{
    PGconn *pg = hs_pg_connect(dsn);
    char sql[160];
    snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    hs_pg_exec(pg, sql);
    PQfinish(pg);
}

int hs_pg_port(void)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(hs_pg_dsn(), &errmsg);
    int port = 5432;
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (strcmp(o->keyword, "port") == 0 && o->val)
            port = (int)strtol(o->val, NULL, 10);
    }
    PQconninfoFree(opts);
    PQfreemem(errmsg);
    return port;
}

/* ---- kafka ---- */

const char *hs_kafka_brokers(void)
{
    const char *b = getenv("KAFKA_BROKERS");
    if (!b || !*b)
        ck_abort_msg("KAFKA_BROKERS is not set: run the tests through scripts/test.sh");
    return b;
}

/* a quiet handle for admin calls */
static rd_kafka_t *admin_handle(const char *brokers)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    ck_assert_msg(rk != NULL, "kafka: %s", err);
    return rk;
}

void hs_kafka_create_topic(const char *brokers, const char *topic, int partitions)
{
    char err[256];
    rd_kafka_t *rk = admin_handle(brokers);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, partitions, 1, err, sizeof err);
    ck_assert_msg(nt != NULL, "topic %s: %s", topic, err);
    rd_kafka_CreateTopics(rk, &nt, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
    ck_assert_msg(ev != NULL, "no answer to creating topic %s", topic);
    size_t n = 0;
    const rd_kafka_topic_result_t **res =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
    ck_assert_uint_eq(n, 1);
    rd_kafka_resp_err_t e = rd_kafka_topic_result_error(res[0]);
    ck_assert_msg(e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS,
                  "could not create topic %s: %s", topic, rd_kafka_err2str(e));
    rd_kafka_event_destroy(ev);
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
}

void hs_kafka_delete_topic(const char *brokers, const char *topic)
{
    rd_kafka_t *rk = admin_handle(brokers);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_DeleteTopic_t *dt = rd_kafka_DeleteTopic_new(topic);
    rd_kafka_DeleteTopics(rk, &dt, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
    rd_kafka_DeleteTopic_destroy(dt);
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
}

struct hs_producer {
    rd_kafka_t *rk;
};

static void delivered(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    *(int *)m->_private = m->err == RD_KAFKA_RESP_ERR_NO_ERROR ? 1 : -1;
}

hs_producer *hs_producer_new(const char *brokers)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
    rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err);
    rd_kafka_conf_set(conf, "linger.ms", "0", err, sizeof err);
    rd_kafka_conf_set_dr_msg_cb(conf, delivered);
    hs_producer *p = calloc(1, sizeof *p);
    ck_assert(p != NULL);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    ck_assert_msg(p->rk != NULL, "kafka producer: %s", err);
    return p;
}

void hs_produce(hs_producer *p, const char *topic, const char *key, const char *const *headers,
                const void *payload, size_t len)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(8);
    for (size_t i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        rd_kafka_header_add(h, headers[i], -1, headers[i + 1], -1);
    int done = 0;
    rd_kafka_resp_err_t e = rd_kafka_producev(
        p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
        RD_KAFKA_V_VALUE((void *)payload, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(&done), RD_KAFKA_V_END);
    if (e)
        rd_kafka_headers_destroy(h);
    ck_assert_msg(e == RD_KAFKA_RESP_ERR_NO_ERROR, "produce to %s: %s", topic, rd_kafka_err2str(e));
    long long until = hs_now_ms() + 30000;
    while (!done && hs_now_ms() < until)
        rd_kafka_poll(p->rk, 50);
    ck_assert_msg(done == 1, "record to %s not acknowledged", topic);
}

void hs_produce_event(hs_producer *p, const char *topic, const char *key, const char *type,
                      const char *source, const char *event_id, const char *tenant,
                      const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    ck_assert_ptr_nonnull(buf);
    protobuf_c_message_pack(m, buf);
    const char *h[] = {"ce_id",
                       event_id,
                       "ce_type",
                       type,
                       "ce_source",
                       source,
                       "content-type",
                       "application/protobuf",
                       "tenant-id",
                       tenant,
                       NULL};
    hs_produce(p, topic, key, h, buf, len);
    free(buf);
}

void hs_producer_free(hs_producer *p)
{
    if (!p)
        return;
    rd_kafka_flush(p->rk, 10000);
    rd_kafka_destroy(p->rk);
    free(p);
}

struct hs_topic {
    rd_kafka_t *rk;
    char name[256];
    int parts;
    int64_t *next; /* per partition: the offset after the last record read */
    hs_record **v; /* each record allocated on its own: pointers stay valid */
    size_t n, cap;
};

/* the partitions of topic, waiting a little for a topic created a moment
 * ago to show in the metadata */
static int partitions_of(rd_kafka_t *rk, const char *topic)
{
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    int parts = 0;
    long long until = hs_now_ms() + 10000;
    while (parts <= 0 && hs_now_ms() < until) {
        const struct rd_kafka_metadata *md = NULL;
        if (rd_kafka_metadata(rk, 0, t, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
                parts = md->topics[0].partition_cnt;
            rd_kafka_metadata_destroy(md);
        }
        if (parts <= 0)
            usleep(100 * 1000);
    }
    rd_kafka_topic_destroy(t);
    return parts;
}

hs_topic *hs_topic_open(const char *brokers, const char *topic, int at_end)
{
    hs_topic *t = calloc(1, sizeof *t);
    ck_assert_ptr_nonnull(t);
    snprintf(t->name, sizeof t->name, "%s", topic);
    char err[256], group[320];
    snprintf(group, sizeof group, "hs-reader-%d-%s", (int)getpid(), topic);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", group, err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
    t->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    ck_assert_msg(t->rk != NULL, "consumer: %s", err);
    rd_kafka_poll_set_consumer(t->rk);
    t->parts = partitions_of(t->rk, topic);
    ck_assert_msg(t->parts > 0, "topic %s: no partitions in the metadata", topic);
    t->next = calloc((size_t)t->parts, sizeof *t->next);
    ck_assert_ptr_nonnull(t->next);
    /* assigned, not subscribed: no group join, every partition */
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(t->parts);
    for (int p = 0; p < t->parts; p++) {
        int64_t lo = 0, hi = 0;
        if (at_end)
            ck_assert_int_eq(rd_kafka_query_watermark_offsets(t->rk, topic, p, &lo, &hi, 10000),
                             RD_KAFKA_RESP_ERR_NO_ERROR);
        rd_kafka_topic_partition_list_add(l, topic, p)->offset =
            at_end ? hi : RD_KAFKA_OFFSET_BEGINNING;
        t->next[p] = at_end ? hi : 0;
    }
    ck_assert_int_eq(rd_kafka_assign(t->rk, l), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(l);
    return t;
}

void hs_topic_close(hs_topic *t)
{
    if (!t)
        return;
    rd_kafka_consumer_close(t->rk);
    rd_kafka_destroy(t->rk);
    for (size_t i = 0; i < t->n; i++) {
        if (t->v[i]->headers)
            rd_kafka_headers_destroy(t->v[i]->headers);
        free(t->v[i]->payload);
        free(t->v[i]);
    }
    free(t->v);
    free(t->next);
    free(t);
}

const char *hs_record_header(const hs_record *r, const char *name)
{
    const void *val = NULL;
    size_t sz = 0;
    if (!r->headers ||
        rd_kafka_header_get_last(r->headers, name, &val, &sz) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    /* librdkafka keeps a NUL after every header value */
    return val ? (const char *)val : "";
}

static void copy_header(const hs_record *r, const char *name, char *out, size_t cap)
{
    const void *val = NULL;
    size_t sz = 0;
    out[0] = '\0';
    if (r->headers &&
        rd_kafka_header_get_last(r->headers, name, &val, &sz) == RD_KAFKA_RESP_ERR_NO_ERROR && val)
        snprintf(out, cap, "%.*s", (int)sz, (const char *)val);
}

/* keeps m as the reader's next record */
static const hs_record *keep(hs_topic *t, rd_kafka_message_t *m)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 256;
        t->v = realloc(t->v, t->cap * sizeof *t->v);
        ck_assert_ptr_nonnull(t->v);
    }
    hs_record *r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    r->partition = m->partition;
    r->offset = m->offset;
    snprintf(r->key, sizeof r->key, "%.*s", (int)m->key_len, m->key ? (const char *)m->key : "");
    r->len = m->len;
    r->payload = malloc(m->len + 1);
    ck_assert_ptr_nonnull(r->payload);
    if (m->len)
        memcpy(r->payload, m->payload, m->len);
    r->payload[m->len] = '\0';
    if (rd_kafka_message_detach_headers(m, &r->headers) != RD_KAFKA_RESP_ERR_NO_ERROR)
        r->headers = NULL;
    copy_header(r, "ce_type", r->type, sizeof r->type);
    copy_header(r, "ce_id", r->id, sizeof r->id);
    copy_header(r, "ce_source", r->source, sizeof r->source);
    copy_header(r, "tenant-id", r->tenant, sizeof r->tenant);
    copy_header(r, "content-type", r->content_type, sizeof r->content_type);
    if (m->partition >= 0 && m->partition < t->parts)
        t->next[m->partition] = m->offset + 1;
    t->v[t->n++] = r;
    return r;
}

const hs_record *hs_topic_next(hs_topic *t, int timeout_ms)
{
    long long until = hs_now_ms() + timeout_ms;
    do {
        long long left = until - hs_now_ms();
        rd_kafka_message_t *m = rd_kafka_consumer_poll(t->rk, left < 50 ? 50 : 100);
        if (!m)
            continue;
        const hs_record *r = m->err ? NULL : keep(t, m);
        rd_kafka_message_destroy(m);
        if (r)
            return r;
    } while (hs_now_ms() < until);
    return NULL;
}

size_t hs_topic_read(hs_topic *t, size_t want, int timeout_ms)
{
    long long until = hs_now_ms() + timeout_ms;
    while (t->n < want && hs_now_ms() < until)
        hs_topic_next(t, 100);
    return t->n;
}

int hs_topic_catch_up(hs_topic *t, int timeout_ms)
{
    int64_t *hi = calloc((size_t)t->parts, sizeof *hi);
    ck_assert_ptr_nonnull(hi);
    int rc = 0;
    for (int p = 0; p < t->parts && rc == 0; p++) {
        int64_t lo;
        if (rd_kafka_query_watermark_offsets(t->rk, t->name, p, &lo, &hi[p], 5000))
            rc = -1;
    }
    long long until = hs_now_ms() + timeout_ms;
    while (rc == 0) {
        int behind = 0;
        for (int p = 0; p < t->parts; p++)
            behind |= t->next[p] < hi[p];
        if (!behind)
            break;
        if (hs_now_ms() > until)
            rc = -1;
        else
            hs_topic_next(t, 100);
    }
    free(hi);
    return rc;
}

size_t hs_topic_count(const hs_topic *t)
{
    return t->n;
}

const hs_record *hs_topic_at(const hs_topic *t, size_t i)
{
    return i < t->n ? t->v[i] : NULL;
}

/* ---- fault-injection proxy ---- */

#define PROXY_MAX_CONNS 64

struct hs_proxy {
    int target_port;
    int port;
    int listen_fd;
    int pipe_fd[2]; /* wakes the thread for cut/restore/free */
    pthread_t thread;
    pthread_mutex_t mu;
    int cmd; /* 0 none, 1 cut, 2 restore, 3 quit, 4 hold replies, 5 pass them */
    int cut;
    int hold;                      /* replies (target -> client) stay unread in the kernel */
    int pairs[PROXY_MAX_CONNS][2]; /* client fd, server fd */
    int npairs;
};

/* every proxy fd is close-on-exec: a service spawned later must not inherit
 * the listener and keep it accepting after a cut */
static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void close_pairs(hs_proxy *p)
{
    for (int i = 0; i < p->npairs; i++) {
        close(p->pairs[i][0]);
        close(p->pairs[i][1]);
    }
    p->npairs = 0;
}

static void drop_pair(hs_proxy *p, int i)
{
    close(p->pairs[i][0]);
    close(p->pairs[i][1]);
    p->pairs[i][0] = p->pairs[p->npairs - 1][0];
    p->pairs[i][1] = p->pairs[p->npairs - 1][1];
    p->npairs--;
}

static void *proxy_main(void *arg)
{
    hs_proxy *p = arg;
    char buf[65536];
    for (;;) {
        struct pollfd fds[2 + 2 * PROXY_MAX_CONNS];
        int n = 0;
        fds[n++] = (struct pollfd){.fd = p->pipe_fd[0], .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = p->listen_fd, .events = POLLIN};
        for (int i = 0; i < p->npairs; i++) {
            fds[n++] = (struct pollfd){.fd = p->pairs[i][0], .events = POLLIN};
            fds[n++] = (struct pollfd){.fd = p->pairs[i][1], .events = p->hold ? 0 : POLLIN};
        }
        if (poll(fds, (nfds_t)n, -1) < 0)
            continue;
        if (fds[0].revents) {
            char c;
            if (read(p->pipe_fd[0], &c, 1) != 1)
                continue;
            pthread_mutex_lock(&p->mu);
            int cmd = p->cmd;
            p->cmd = 0;
            pthread_mutex_unlock(&p->mu);
            if (cmd == 1) {
                /* the listener first, so a client reconnecting at once is refused */
                close(p->listen_fd);
                p->listen_fd = -1;
                close_pairs(p);
            } else if (cmd == 2 && p->listen_fd < 0) {
                p->listen_fd = listen_on(p->port);
            } else if (cmd == 4 || cmd == 5) {
                p->hold = cmd == 4;
            } else if (cmd == 3) {
                close_pairs(p);
                if (p->listen_fd >= 0)
                    close(p->listen_fd);
                return NULL;
            }
            continue; /* the fd set changed */
        }
        if (p->listen_fd >= 0 && (fds[1].revents & POLLIN)) {
            int c = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) {
                int s = connect_to(p->target_port);
                if (s < 0 || p->npairs == PROXY_MAX_CONNS) {
                    close(c);
                    if (s >= 0)
                        close(s);
                } else {
                    p->pairs[p->npairs][0] = c;
                    p->pairs[p->npairs][1] = s;
                    p->npairs++;
                }
            }
            continue;
        }
        for (int i = 0, f = 2; i < p->npairs; i++, f += 2) {
            int dead = 0;
            for (int side = 0; side < 2 && !dead; side++) {
                if (!fds[f + side].revents || (side == 1 && p->hold))
                    continue;
                ssize_t r = read(p->pairs[i][side], buf, sizeof buf);
                if (r <= 0 || write(p->pairs[i][1 - side], buf, (size_t)r) != r)
                    dead = 1;
            }
            if (dead) {
                drop_pair(p, i);
                break; /* indices moved; poll again */
            }
        }
    }
}

static void proxy_cmd(hs_proxy *p, int cmd)
{
    pthread_mutex_lock(&p->mu);
    p->cmd = cmd;
    pthread_mutex_unlock(&p->mu);
    char c = 'x';
    if (write(p->pipe_fd[1], &c, 1) != 1)
        return;
    usleep(50 * 1000); /* let the thread act before the caller goes on */
}

hs_proxy *hs_proxy_start(int target_port)
{
    hs_proxy *p = calloc(1, sizeof *p);
    p->target_port = target_port;
    p->port = hs_free_port();
    p->listen_fd = listen_on(p->port);
    if (p->listen_fd < 0 || pipe2(p->pipe_fd, O_CLOEXEC) != 0) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_create(&p->thread, NULL, proxy_main, p);
    return p;
}

int hs_proxy_port(const hs_proxy *p)
{
    return p->port;
}

void hs_proxy_hold_replies(hs_proxy *p, int hold)
{
    proxy_cmd(p, hold ? 4 : 5);
}

void hs_proxy_cut(hs_proxy *p)
{
    proxy_cmd(p, 1);
}

void hs_proxy_restore(hs_proxy *p)
{
    proxy_cmd(p, 2);
}

void hs_proxy_free(hs_proxy *p)
{
    if (!p)
        return;
    proxy_cmd(p, 3);
    pthread_join(p->thread, NULL);
    close(p->pipe_fd[0]);
    close(p->pipe_fd[1]);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* ---- the runner ---- */

int hs_run(Suite *s, int nofork)
{
    SRunner *sr = srunner_create(s);
    if (nofork)
        srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

char *hs_bearer(const char *secret, const char *tid, const char *sub, const char *roles,
                long exp_offset)
{
    return hs_bearer_scoped(secret, tid, sub, roles, NULL, NULL, exp_offset);
}

char *hs_bearer_scoped(const char *secret, const char *tid, const char *sub, const char *roles,
                       const char *merchant_id, const char *channel_id, long exp_offset)
{
    jwt_t *j = NULL;
    ck_assert_int_eq(jwt_new(&j), 0);
    jwt_add_grant(j, "tid", tid);
    jwt_add_grant(j, "sub", sub);
    if (roles)
        jwt_add_grant(j, "roles", roles);
    if (merchant_id)
        jwt_add_grant(j, "merchant_id", merchant_id);
    if (channel_id)
        jwt_add_grant(j, "channel_id", channel_id);
    jwt_add_grant_int(j, "exp", (long)time(NULL) + exp_offset);
    jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret));
    char *tok = jwt_encode_str(j);
    jwt_free(j);
    ck_assert_ptr_nonnull(tok);
    size_t n = strlen(tok) + 8;
    char *bearer = malloc(n);
    ck_assert_ptr_nonnull(bearer);
    snprintf(bearer, n, "Bearer %s", tok);
    free(tok);
    return bearer;
}

typedef struct sql_wait {
    const char *schema, *q;
    long long want;
} sql_wait;

static int sql_reads(void *arg)
{
    sql_wait *w = arg;
    long long v = -1;
    return hs_sql_try_long(w->schema, w->q, &v) == 0 && v == w->want;
}

int hs_poll_sql(const char *schema, const char *q, long long want, int timeout_ms, int interval_ms)
{
    sql_wait w = {schema, q, want};
    return hs_poll(sql_reads, &w, timeout_ms, interval_ms);
}

void hs_wait_sql(const char *schema, const char *q, long long want, const char *log)
{
    int rc = hs_poll_sql(schema, q, want, 30000, 50);
    long long v = -1;
    hs_sql_try_long(schema, q, &v);
    ck_assert_msg(rc == 0, "waited for %s = %lld, have %lld (log %s)", q, want, v, log ? log : "-");
}

int hs_log_contains(const hs_proc *p, const char *what)
{
    FILE *f = fopen(p->log_path, "r");
    if (!f)
        return 0;
    /* chunks overlapping by the needle's length: a match across a chunk
     * boundary is found */
    size_t w = strlen(what), keep = 0;
    static char buf[65536 + 1];
    int found = 0;
    if (w == 0 || w >= sizeof buf / 2) {
        fclose(f);
        return w == 0;
    }
    for (;;) {
        size_t n = fread(buf + keep, 1, sizeof buf - 1 - keep, f);
        buf[keep + n] = '\0';
        if (strstr(buf, what)) {
            found = 1;
            break;
        }
        if (n == 0)
            break;
        keep = keep + n < w - 1 ? keep + n : w - 1;
        memmove(buf, buf + strlen(buf) - keep, keep);
    }
    fclose(f);
    return found;
}
