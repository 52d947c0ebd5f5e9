/*
 * cm_admin: the admin HTTP server on the service's libuv loop.
 *
 *   GET /metrics  Prometheus text of the registry plus process_* series
 *   GET /healthz  200 "ok" while the process runs (liveness)
 *   GET /readyz   200 when ready() returns 1, else 503 (readiness)
 *
 * HEAD is answered like GET without the body. an unknown path: 404; a known
 * path with another method: 405; malformed requests: 400, oversized request
 * heads: 431; both close the connection after the answer. requests are parsed
 * with http-parser; connections are keep-alive capable and pipelined requests
 * are answered in order; a connection gets 30 s (see
 * cm_admin_set_idle_timeout) for each request, then it is closed.
 * every function must be called on the loop's thread.
 */
#ifndef CM_ADMIN_H
#define CM_ADMIN_H

#include <stddef.h>
#include <uv.h>

#include "cm_metrics.h"

typedef struct cm_admin cm_admin;

/* returns 1 when the service can take traffic. called on the loop thread. */
typedef int (*cm_admin_ready_fn)(void *arg);

/* listen is "host:port", "[ipv6]:port", ":port" (all ipv4 interfaces) or
 * "host:0" (ephemeral port). m is the registry to serve (NULL: the default
 * registry); it must outlive the server. ready may be NULL (always ready).
 * the socket is bound and listening when this returns 0. returns CM_EINVAL
 * (bad address), CM_EIO (bind/listen failed) or CM_ENOMEM with a reason in
 * err; on failure nothing is left on the loop, except after an unexpected
 * libuv failure where the handle is released by the loop's close callbacks. */
int cm_admin_start(cm_admin **out, uv_loop_t *loop, const char *listen, cm_metrics *m,
                   cm_admin_ready_fn ready, void *ready_arg, char *err, size_t errlen);

/* the port actually bound (useful with port 0). */
int cm_admin_port(const cm_admin *a);

/* time allowed for each request, counted from accept or from the end of the
 * previous request; idle keep-alive connections are closed after it. applies
 * from the next request on. default 30000 ms; 0 is ignored. */
void cm_admin_set_idle_timeout(cm_admin *a, unsigned int ms);

/* stops listening, closes every connection; memory is released once the
 * loop has run the close callbacks (run the loop until it returns). */
void cm_admin_close(cm_admin *a);

#endif
