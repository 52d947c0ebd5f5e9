/*
 * harness: what integration tests share. spawn a service binary with an
 * environment, find free loopback ports, wait until it reports SERVING over
 * grpc.health.v1, stop it with a signal and collect its exit status.
 */
#ifndef HARNESS_H
#define HARNESS_H

#include <sys/types.h>

#include "cm_rpc_client.h"

typedef struct hs_proc {
    pid_t pid;
    int grpc_port;
    int admin_port;
    char target[64];
    char log_path[256];
} hs_proc;

/* a port on 127.0.0.1 that was free a moment ago */
int hs_free_port(void);

/* the private postgres dsn; aborts the test with a clear message if
 * PG_DSN is not set (scripts/test.sh sets it). */
const char *hs_pg_dsn(void);

/* starts bin with GRPC_LISTEN/ADMIN_LISTEN on fresh loopback ports, PG_DSN,
 * LOG_LEVEL=warn, WORKERS=2 and the extra "K=V" entries in env (NULL
 * terminated; they override); stderr goes to a log file under /tmp. */
int hs_spawn(hs_proc *p, const char *bin, const char *const *env);

/* polls Health/Check until SERVING or timeout; 0 when serving. */
int hs_wait_serving(const hs_proc *p, int timeout_ms);

/* the health status (1 SERVING, 2 NOT_SERVING) or -1 when unreachable. */
int hs_health(const hs_proc *p);

/* sends sig; waits up to timeout_ms for exit (then SIGKILL). returns the
 * exit code, 128+signal when killed by a signal, or -1. */
int hs_stop(hs_proc *p, int sig, int timeout_ms);

/* GET path from the admin port; returns the http status, body copied. */
int hs_http_get(int port, const char *path, char *body, size_t bodylen);

/* milliseconds on a monotonic clock */
long long hs_now_ms(void);

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

/* the port of the private postgres from PG_DSN (libpq conninfo) */
int hs_pg_port(void);
#endif
