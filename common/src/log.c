#include "cm_log.h"
#include "cm_err.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char log_service[64] = "commerce";
static atomic_int log_min = CM_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void cm_log_init(const char *service, cm_log_level min_level)
{
    if (service)
        snprintf(log_service, sizeof log_service, "%s", service);
    atomic_store(&log_min, (int)min_level);
}

int cm_log_level_parse(const char *s, cm_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (s && strcmp(s, level_names[i]) == 0) {
            *out = (cm_log_level)i;
            return 0;
        }
    }
    return CM_EINVAL;
}

int cm_log_enabled(cm_log_level lvl)
{
    return (int)lvl >= atomic_load(&log_min);
}

void cm_log(cm_log_level lvl, const char *msg, ...)
{
    if (!cm_log_enabled(lvl))
        return;

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof when - n, ".%03ldZ", ts.tv_nsec / 1000000);

    json_t *o = json_object();
    if (!o)
        return;
    json_object_set_new(o, "ts", json_string(when));
    json_object_set_new(o, "level", json_string(level_names[lvl & 3]));
    json_object_set_new(o, "svc", json_string(log_service));
    json_object_set_new(o, "msg", json_string(msg ? msg : ""));

    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        /* json_string refuses invalid utf-8: keep the line, mark the value */
        if (v) {
            json_t *s = json_string(v);
            json_object_set_new(o, k, s ? s : json_string("<invalid utf-8>"));
        }
    }
    va_end(ap);

    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!line)
        return;
    size_t len = strlen(line);
    line[len] = '\n'; /* json_dumps allocates len + 1; the NUL becomes the newline */
    ssize_t w = write(STDERR_FILENO, line, len + 1);
    (void)w;
    free(line);
}
