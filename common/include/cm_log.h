/*
 * cm_log: structured logs, one JSON object per line on stderr.
 *
 *   cm_log_warn("could not reserve stock: sold out",
 *               "tenant", tenant, "order_id", id, NULL);
 *
 * after the message come key/value string pairs, terminated by NULL; a NULL
 * value skips its key. every line carries "ts" (RFC 3339, UTC, ms), "level",
 * "svc" (set once by cm_log_init) and "msg". thread-safe: each line is
 * written with one write(2).
 */
#ifndef CM_LOG_H
#define CM_LOG_H

typedef enum { CM_LOG_DEBUG = 0, CM_LOG_INFO, CM_LOG_WARN, CM_LOG_ERROR } cm_log_level;

/* sets the service name and the minimum level; may be called again. */
void cm_log_init(const char *service, cm_log_level min_level);

/* parses "debug" "info" "warn" "error"; returns 0 or CM_EINVAL. */
int cm_log_level_parse(const char *s, cm_log_level *out);

/* 1 when lines at this level are written (to skip building costly fields). */
int cm_log_enabled(cm_log_level lvl);

void cm_log(cm_log_level lvl, const char *msg, ...) __attribute__((sentinel));

#define cm_log_debug(...) cm_log(CM_LOG_DEBUG, __VA_ARGS__)
#define cm_log_info(...) cm_log(CM_LOG_INFO, __VA_ARGS__)
#define cm_log_warn(...) cm_log(CM_LOG_WARN, __VA_ARGS__)
#define cm_log_error(...) cm_log(CM_LOG_ERROR, __VA_ARGS__)

#endif
