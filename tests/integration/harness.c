#include "harness.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int hs_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

const char *hs_pg_dsn(void)
{
    const char *dsn = getenv("PG_DSN");
    if (!dsn || !*dsn)
        ck_abort_msg("PG_DSN is not set: run the tests through scripts/test.sh");
    return dsn;
}

int hs_spawn(hs_proc *p, const char *bin, const char *const *env)
{
    memset(p, 0, sizeof *p);
    p->grpc_port = hs_free_port();
    p->admin_port = hs_free_port();
    snprintf(p->target, sizeof p->target, "127.0.0.1:%d", p->grpc_port);
    const char *base = strrchr(bin, '/');
    snprintf(p->log_path, sizeof p->log_path, "/tmp/%s.%d.%d.log", base ? base + 1 : bin,
             (int)getpid(), p->grpc_port);
    const char *dsn = hs_pg_dsn();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        char v[512];
        snprintf(v, sizeof v, "127.0.0.1:%d", p->grpc_port);
        setenv("GRPC_LISTEN", v, 1);
        snprintf(v, sizeof v, "127.0.0.1:%d", p->admin_port);
        setenv("ADMIN_LISTEN", v, 1);
        setenv("PG_DSN", dsn, 1);
        setenv("LOG_LEVEL", "warn", 1);
        setenv("WORKERS", "2", 1);
        for (size_t i = 0; env && env[i]; i++) {
            const char *eq = strchr(env[i], '=');
            if (!eq)
                continue;
            char k[128];
            size_t kl = (size_t)(eq - env[i]) < sizeof k - 1 ? (size_t)(eq - env[i]) : sizeof k - 1;
            memcpy(k, env[i], kl);
            k[kl] = '\0';
            setenv(k, eq + 1, 1);
        }
        int fd = open(p->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        execl(bin, bin, (char *)NULL);
        _exit(127);
    }
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
