#include "harness.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "grpc/health/v1/health.pb-c.h"

long long hs_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
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

const char *hs_pg_dsn(void)
{
    const char *dsn = getenv("PG_DSN");
    if (!dsn || !*dsn)
        ck_abort_msg("PG_DSN is not set: run the tests through scripts/test.sh");
    return dsn;
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
    return 0;
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

int hs_wait_serving(const hs_proc *p, int timeout_ms)
{
    long long until = hs_now_ms() + timeout_ms;
    while (hs_now_ms() < until) {
        int st;
        if (waitpid(p->pid, &st, WNOHANG) == p->pid)
            return -1; /* it died */
        if (hs_health(p) == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING)
            return 0;
        usleep(50 * 1000);
    }
    return -1;
}

int hs_stop(hs_proc *p, int sig, int timeout_ms)
{
    if (p->pid <= 0)
        return -1;
    kill(p->pid, sig);
    long long until = hs_now_ms() + timeout_ms;
    int st = 0;
    for (;;) {
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid)
            break;
        if (hs_now_ms() > until) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &st, 0);
            break;
        }
        usleep(10 * 1000);
    }
    p->pid = 0;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

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

/* ---- fault-injection proxy ---- */

#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

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
