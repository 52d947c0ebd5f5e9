#include "cm_admin.h"
#include "admin_internal.h"
#include "cm_err.h"
#include "cm_log.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <http_parser.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * one connection = one uv_tcp_t + one uv_timer_t, freed when both close
 * callbacks have run. requests are parsed in place by http-parser; each
 * complete request queues its whole response with one uv_write, so pipelined
 * requests are answered in order for free. when the client stops reading,
 * responses pile up in the write queue: parsing then pauses, the unparsed
 * rest is kept aside and reading stops until the queue drains.
 *
 * a connection that is done (close requested, error, idle) first flushes its
 * queued responses, then shuts down its write side and keeps reading and
 * discarding for a short while: closing a socket with unread input makes the
 * kernel send a reset, which can destroy a 400 the client has not read yet.
 */

#define ADMIN_MAX_HEAD CM_ADMIN_MAX_HEAD
#define ADMIN_MAX_BODY CM_ADMIN_MAX_BODY
#define ADMIN_IDLE_MS 30000  /* time allowed for each request */
#define ADMIN_LINGER_MS 2000 /* discard input this long after a final response */
#define ADMIN_MAX_CONNS 256
#define ADMIN_WRITE_HIGH (256 * 1024) /* pause parsing above this much queued output */
#define ADMIN_READ_BUF 8192

struct admin_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    http_parser parser;
    cm_admin *admin;
    struct admin_conn *prev, *next;
    int open_handles;
    int closing;      /* uv_close called, waiting for the callbacks */
    int finishing;    /* no further requests: flush, shut down, linger */
    int shut_started; /* uv_shutdown issued */
    int shut_done;    /* our side is closed */
    int eof;          /* the client closed its side */
    int reading;
    int paused; /* parser paused because the client is not reading */
    size_t pending_writes;

    cm_admin_req req; /* the request being parsed; the parser's data */

    /* input held back while parsing is paused */
    char *stash;
    size_t stash_len;

    char rbuf[ADMIN_READ_BUF];
};

struct cm_admin {
    uv_loop_t *loop;
    uv_tcp_t listener;
    cm_metrics *metrics;
    cm_admin_ready_fn ready;
    void *ready_arg;
    http_parser_settings settings;
    struct admin_conn *conns;
    size_t nconns;
    int port;
    int closing;
    int listener_open;
    uint64_t idle_ms;
    double start_time; /* unix seconds, < 0 when unknown */
};

struct admin_write {
    uv_write_t req;
    struct admin_conn *conn;
    char data[];
};

static void conn_close(struct admin_conn *c);
static void conn_feed(struct admin_conn *c, const char *data, size_t len);

/* ---- lifetime ------------------------------------------------------------ */

static void admin_maybe_free(cm_admin *a)
{
    if (a->closing && !a->listener_open && !a->conns)
        free(a);
}

static void on_listener_closed(uv_handle_t *h)
{
    cm_admin *a = h->data;
    a->listener_open = 0;
    admin_maybe_free(a);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct admin_conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    cm_admin *a = c->admin;
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->nconns--;
    free(c->stash);
    free(c);
    admin_maybe_free(a);
}

static void conn_close(struct admin_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    free(c->stash);
    c->stash = NULL;
    c->stash_len = 0;
    /* pending writes and the shutdown get UV_ECANCELED before these run */
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void conn_arm_timer(struct admin_conn *c, uint64_t ms)
{
    if (!c->closing)
        uv_timer_start(&c->timer, on_timeout, ms, 0);
}

/* ---- reading --------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct admin_conn *c = h->data;
    /* libuv consumes one buffer per read callback, so one per connection is enough */
    *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct admin_conn *c = req->data;
    if (c->closing)
        return;
    c->shut_done = 1;
    if (status < 0 || c->eof)
        conn_close(c);
    /* otherwise linger: read and discard until eof or the timer */
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_read_start(struct admin_conn *c)
{
    if (c->reading || c->closing || c->eof)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = 1;
    else
        conn_close(c);
}

static void conn_read_stop(struct admin_conn *c)
{
    if (!c->reading)
        return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
}

/* once the last response is written: half-close and linger. */
static void conn_finish(struct admin_conn *c)
{
    if (c->closing || c->shut_started || c->pending_writes > 0)
        return;
    free(c->stash);
    c->stash = NULL;
    c->stash_len = 0;
    c->shut_started = 1;
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        conn_close(c);
        return;
    }
    conn_arm_timer(c, ADMIN_LINGER_MS);
    conn_read_start(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct admin_conn *c = s->data;
    if (c->closing)
        return;
    if (nread == UV_EOF) {
        c->eof = 1;
        conn_read_stop(c);
        if (c->shut_done) {
            conn_close(c);
            return;
        }
        /* a half-closed client still gets the answers it asked for */
        c->finishing = 1;
        conn_finish(c);
        return;
    }
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0 || c->finishing)
        return; /* lingering: input is discarded */
    conn_feed(c, buf->base, (size_t)nread);
}

/* ---- writing ----------------------------------------------------------------- */

static void conn_resume(struct admin_conn *c);

static void on_write(uv_write_t *req, int status)
{
    struct admin_write *w = (struct admin_write *)req;
    struct admin_conn *c = w->conn;
    free(w);
    c->pending_writes--;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->finishing)
        conn_finish(c);
    else
        conn_resume(c);
}

static void conn_send(struct admin_conn *c, int status, const char *extra_headers,
                      const char *ctype, const char *body, size_t body_len, int head_only,
                      int keep_alive)
{
    if (c->closing)
        return;
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\n"
                      "Content-Type: %s\r\n"
                      "Content-Length: %zu\r\n"
                      "Cache-Control: no-store\r\n"
                      "%s"
                      "Connection: %s\r\n"
                      "\r\n",
                      status, http_status_str((enum http_status)status), ctype, body_len,
                      extra_headers ? extra_headers : "", keep_alive ? "keep-alive" : "close");
    if (hn < 0 || (size_t)hn >= sizeof head) {
        conn_close(c);
        return;
    }
    size_t blen = head_only ? 0 : body_len;
    struct admin_write *w = malloc(sizeof *w + (size_t)hn + blen);
    if (!w) {
        conn_close(c);
        return;
    }
    w->conn = c;
    memcpy(w->data, head, (size_t)hn);
    if (blen)
        memcpy(w->data + hn, body, blen);
    uv_buf_t b = uv_buf_init(w->data, (unsigned int)((size_t)hn + blen));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        free(w);
        conn_close(c);
        return;
    }
    c->pending_writes++;
}

static void conn_send_text(struct admin_conn *c, int status, const char *text, int head_only,
                           int keep_alive)
{
    conn_send(c, status, NULL, "text/plain; charset=utf-8", text, strlen(text), head_only,
              keep_alive);
}

/* ---- process metrics ----------------------------------------------------------- */

/* reads a small /proc file whole; returns its length or -1. */
static ssize_t read_small_file(const char *path, char *out, size_t outlen)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(out, 1, outlen - 1, f);
    fclose(f);
    out[n] = '\0';
    return (ssize_t)n;
}

struct proc_stat {
    uint64_t threads;
    uint64_t start_ticks;
    uint64_t vsize;
    uint64_t rss_pages;
};

/* /proc/self/stat: the command name may hold spaces and parentheses, so the
 * numeric fields are counted from the last ')'. */
static int read_proc_stat(struct proc_stat *ps)
{
    char text[2048];
    if (read_small_file("/proc/self/stat", text, sizeof text) <= 0)
        return -1;
    const char *p = strrchr(text, ')');
    if (!p)
        return -1;
    p++;
    /* after ')' comes field 3 (state); we need 20, 22, 23 and 24 */
    uint64_t fields[25] = {0};
    for (int field = 3; field <= 24; field++) {
        while (*p == ' ')
            p++;
        if (!*p)
            return -1;
        if (field == 3) {
            while (*p && *p != ' ')
                p++;
            continue;
        }
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno)
            return -1;
        fields[field] = v < 0 ? 0 : (uint64_t)v;
        p = end;
    }
    ps->threads = fields[20];
    ps->start_ticks = fields[22];
    ps->vsize = fields[23];
    ps->rss_pages = fields[24];
    return 0;
}

static double process_start_time(void)
{
    struct proc_stat ps;
    long ticks = sysconf(_SC_CLK_TCK);
    if (ticks <= 0 || read_proc_stat(&ps) != 0)
        return -1;
    FILE *f = fopen("/proc/stat", "re");
    if (!f)
        return -1;
    char line[256];
    double start = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "btime ", 6) != 0)
            continue;
        char *end;
        errno = 0;
        unsigned long long btime = strtoull(line + 6, &end, 10);
        if (end != line + 6 && !errno)
            start = (double)btime + (double)ps.start_ticks / (double)ticks;
        break;
    }
    fclose(f);
    return start;
}

static long count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n > 0 ? n - 1 : 0; /* the directory's own descriptor */
}

/* appends the process_* families to out; series that cannot be read are left
 * out rather than reported as zero. */
static size_t render_process(const cm_admin *a, char *out, size_t outlen)
{
    size_t n = 0;
    int w;
#define EMIT(...)                                                                                  \
    do {                                                                                           \
        w = snprintf(out + n, outlen - n, __VA_ARGS__);                                            \
        if (w > 0 && (size_t)w < outlen - n)                                                       \
            n += (size_t)w;                                                                        \
    } while (0)

    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
        EMIT("# HELP process_cpu_seconds_total Total user and system CPU time spent in "
             "seconds.\n# TYPE process_cpu_seconds_total counter\n"
             "process_cpu_seconds_total %.6f\n",
             cpu);
    }
    long fds = count_open_fds();
    if (fds >= 0)
        EMIT("# HELP process_open_fds Number of open file descriptors.\n"
             "# TYPE process_open_fds gauge\nprocess_open_fds %ld\n",
             fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        EMIT("# HELP process_max_fds Maximum number of open file descriptors.\n"
             "# TYPE process_max_fds gauge\nprocess_max_fds %" PRIu64 "\n",
             (uint64_t)rl.rlim_cur);
    struct proc_stat ps;
    long page = sysconf(_SC_PAGESIZE);
    if (read_proc_stat(&ps) == 0) {
        EMIT("# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
             "# TYPE process_virtual_memory_bytes gauge\n"
             "process_virtual_memory_bytes %" PRIu64 "\n",
             ps.vsize);
        if (page > 0)
            EMIT("# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                 "# TYPE process_resident_memory_bytes gauge\n"
                 "process_resident_memory_bytes %" PRIu64 "\n",
                 ps.rss_pages * (uint64_t)page);
        EMIT("# HELP process_threads Number of OS threads in the process.\n"
             "# TYPE process_threads gauge\nprocess_threads %" PRIu64 "\n",
             ps.threads);
    }
    if (a->start_time >= 0)
        EMIT("# HELP process_start_time_seconds Start time of the process since unix epoch in "
             "seconds.\n# TYPE process_start_time_seconds gauge\n"
             "process_start_time_seconds %.2f\n",
             a->start_time);
#undef EMIT
    return n;
}

/* ---- requests ---------------------------------------------------------------- */

static int on_message_begin(http_parser *p)
{
    cm_admin_req *c = p->data;
    c->url_len = 0;
    c->head_bytes = 0;
    c->body_bytes = 0;
    c->last_cb = 0;
    c->reject_status = 0;
    return 0;
}

static int head_add(cm_admin_req *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes > ADMIN_MAX_HEAD) {
        c->reject_status = HTTP_STATUS_REQUEST_HEADER_FIELDS_TOO_LARGE;
        return -1;
    }
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    cm_admin_req *c = p->data;
    if (len >= sizeof c->url - c->url_len) {
        c->reject_status = HTTP_STATUS_URI_TOO_LONG;
        return -1;
    }
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    return head_add(c, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    (void)at;
    cm_admin_req *c = p->data;
    /* a new header line also costs its ": " and CRLF; counting them stops a
     * flood of empty headers */
    size_t overhead = c->last_cb != 1 ? 4 : 0;
    c->last_cb = 1;
    return head_add(c, len + overhead);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    (void)at;
    cm_admin_req *c = p->data;
    c->last_cb = 2;
    return head_add(c, len);
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    (void)at;
    cm_admin_req *c = p->data;
    c->body_bytes += len;
    if (c->body_bytes > ADMIN_MAX_BODY) {
        c->reject_status = HTTP_STATUS_PAYLOAD_TOO_LARGE;
        return -1;
    }
    return 0;
}

static void serve_metrics(struct admin_conn *c, int head_only, int keep_alive)
{
    cm_admin *a = c->admin;
    char *text = NULL;
    size_t len = 0;
    if (cm_metrics_render(a->metrics, &text, &len) != 0) {
        conn_send_text(c, 500, "could not render metrics", head_only, keep_alive);
        return;
    }
    char proc[4096];
    size_t plen = render_process(a, proc, sizeof proc);
    char *body = realloc(text, len + plen + 1);
    if (!body) {
        free(text);
        conn_send_text(c, 500, "could not render metrics", head_only, keep_alive);
        return;
    }
    memcpy(body + len, proc, plen);
    body[len + plen] = '\0';
    conn_send(c, 200, NULL, "text/plain; version=0.0.4; charset=utf-8", body, len + plen, head_only,
              keep_alive);
    free(body);
}

void cm_admin_req_settings(http_parser_settings *s)
{
    memset(s, 0, sizeof *s);
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_header_field = on_header_field;
    s->on_header_value = on_header_value;
    s->on_body = on_body;
}

cm_admin_route_t cm_admin_route(const cm_admin_req *r, enum http_method method)
{
    struct http_parser_url u;
    http_parser_url_init(&u);
    const char *path = NULL;
    size_t path_len = 0;
    if (http_parser_parse_url(r->url, r->url_len, method == HTTP_CONNECT, &u) == 0 &&
        (u.field_set & (1 << UF_PATH))) {
        path = r->url + u.field_data[UF_PATH].off;
        path_len = u.field_data[UF_PATH].len;
    }
#define PATH_IS(lit) (path_len == sizeof(lit) - 1 && memcmp(path, lit, path_len) == 0)
    if (!path)
        return CM_ADMIN_BAD_REQUEST;
    if (!PATH_IS("/metrics") && !PATH_IS("/healthz") && !PATH_IS("/readyz"))
        return CM_ADMIN_NOT_FOUND;
    if (method != HTTP_GET && method != HTTP_HEAD)
        return CM_ADMIN_NOT_ALLOWED;
    return PATH_IS("/metrics")   ? CM_ADMIN_METRICS
           : PATH_IS("/healthz") ? CM_ADMIN_HEALTHZ
                                 : CM_ADMIN_READYZ;
#undef PATH_IS
}

static int on_message_complete(http_parser *p)
{
    struct admin_conn *c =
        (struct admin_conn *)((char *)p->data - offsetof(struct admin_conn, req));
    cm_admin *a = c->admin;
    /* an upgrade would switch protocols on this socket: answer, then close */
    int keep_alive = http_should_keep_alive(p) && !p->upgrade && !a->closing;
    int head_only = p->method == HTTP_HEAD;

    switch (cm_admin_route(&c->req, (enum http_method)p->method)) {
    case CM_ADMIN_BAD_REQUEST:
        conn_send_text(c, 400, "bad request", head_only, 0);
        keep_alive = 0;
        break;
    case CM_ADMIN_NOT_FOUND:
        conn_send_text(c, 404, "not found", head_only, keep_alive);
        break;
    case CM_ADMIN_NOT_ALLOWED:
        conn_send(c, 405, "Allow: GET, HEAD\r\n", "text/plain; charset=utf-8", "method not allowed",
                  strlen("method not allowed"), head_only, keep_alive);
        break;
    case CM_ADMIN_METRICS:
        serve_metrics(c, head_only, keep_alive);
        break;
    case CM_ADMIN_HEALTHZ:
        conn_send_text(c, 200, "ok", head_only, keep_alive);
        break;
    case CM_ADMIN_READYZ:
        if (!a->ready || a->ready(a->ready_arg) == 1)
            conn_send_text(c, 200, "ready", head_only, keep_alive);
        else
            conn_send_text(c, 503, "not ready", head_only, keep_alive);
        break;
    }

    /* each request gets the full idle period from the end of the previous one */
    conn_arm_timer(c, a->idle_ms);
    if (!keep_alive) {
        c->finishing = 1;
        http_parser_pause(p, 1);
    } else if (c->tcp.write_queue_size > ADMIN_WRITE_HIGH) {
        c->paused = 1;
        http_parser_pause(p, 1);
    }
    return 0;
}

static void conn_feed(struct admin_conn *c, const char *data, size_t len)
{
    if (len == 0 || c->closing || c->finishing)
        return;
    size_t n = http_parser_execute(&c->parser, &c->admin->settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (c->closing)
        return;
    if (c->finishing) {
        conn_finish(c);
        return;
    }
    if (e == HPE_PAUSED) {
        /* the client is not reading: keep the rest until the queue drains */
        conn_read_stop(c);
        if (n < len) {
            c->stash = malloc(len - n);
            if (!c->stash) {
                conn_close(c);
                return;
            }
            memcpy(c->stash, data + n, len - n);
            c->stash_len = len - n;
        }
        return;
    }
    if (e != HPE_OK || n != len) {
        int status = c->req.reject_status ? c->req.reject_status : HTTP_STATUS_BAD_REQUEST;
        const char *text = http_status_str((enum http_status)status);
        conn_send_text(c, status, text, 0, 0);
        c->finishing = 1;
        conn_finish(c);
    }
}

static void conn_resume(struct admin_conn *c)
{
    if (!c->paused || c->tcp.write_queue_size > ADMIN_WRITE_HIGH / 2)
        return;
    c->paused = 0;
    http_parser_pause(&c->parser, 0);
    char *stash = c->stash;
    size_t stash_len = c->stash_len;
    c->stash = NULL;
    c->stash_len = 0;
    if (stash) {
        conn_feed(c, stash, stash_len);
        free(stash);
    }
    if (!c->paused && !c->finishing)
        conn_read_start(c);
}

/* ---- listening --------------------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status)
{
    cm_admin *a = server->data;
    if (status < 0) {
        cm_log_warn("admin http: accept failed", "error", uv_strerror(status), NULL);
        return;
    }
    struct admin_conn *c = calloc(1, sizeof *c);
    if (!c || uv_tcp_init(a->loop, &c->tcp) != 0) {
        free(c);
        cm_log_error("admin http: could not accept connection: out of memory", NULL);
        return;
    }
    uv_timer_init(a->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->admin = a;
    c->next = a->conns;
    if (a->conns)
        a->conns->prev = c;
    a->conns = c;
    a->nconns++;

    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 || a->nconns > ADMIN_MAX_CONNS) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = &c->req;
    conn_arm_timer(c, a->idle_ms);
    conn_read_start(c);
}

/* "host:port", "[v6]:port" or ":port". */
static int parse_listen(const char *addr, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    if (!addr || !*addr) {
        snprintf(err, errlen, "admin listen address is empty");
        return CM_EINVAL;
    }
    const char *colon = strrchr(addr, ':');
    if (!colon) {
        snprintf(err, errlen, "admin listen address \"%s\" has no port (want host:port)", addr);
        return CM_EINVAL;
    }
    const char *port_text = colon + 1;
    char *end;
    errno = 0;
    long port = strtol(port_text, &end, 10);
    if (!*port_text || *end || errno || port < 0 || port > 65535 || *port_text == '-' ||
        *port_text == '+' || *port_text == ' ') {
        snprintf(err, errlen, "admin listen address \"%s\": bad port", addr);
        return CM_EINVAL;
    }

    char host[256];
    const char *hs = addr;
    size_t hlen = (size_t)(colon - addr);
    int bracketed = hlen >= 2 && hs[0] == '[' && hs[hlen - 1] == ']';
    if (bracketed) {
        hs++;
        hlen -= 2;
    }
    if (hlen >= sizeof host || (!bracketed && memchr(hs, ':', hlen))) {
        snprintf(err, errlen, "admin listen address \"%s\": bad host (ipv6 needs [addr]:port)",
                 addr);
        return CM_EINVAL;
    }
    memcpy(host, hs, hlen);
    host[hlen] = '\0';

    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (hlen == 0) {
        in4->sin_family = AF_INET;
        in4->sin_addr.s_addr = htonl(INADDR_ANY);
        in4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (!bracketed && inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (bracketed) {
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1) {
            snprintf(err, errlen, "admin listen address \"%s\": bad ipv6 address", addr);
            return CM_EINVAL;
        }
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        return 0;
    }
    /* a name such as localhost: resolved once, at start */
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "admin listen address \"%s\": could not resolve host: %s", addr,
                 gai_strerror(rc));
        return CM_EINVAL;
    }
    /* prefer ipv4, as ":port" does, when a name has both kinds */
    const struct addrinfo *pick = res;
    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET) {
            pick = ai;
            break;
        }
    }
    if (pick->ai_family != AF_INET && pick->ai_family != AF_INET6) {
        freeaddrinfo(res);
        snprintf(err, errlen, "admin listen address \"%s\": no usable address", addr);
        return CM_EINVAL;
    }
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    freeaddrinfo(res);
    if (ss->ss_family == AF_INET)
        in4->sin_port = htons((uint16_t)port);
    else
        in6->sin6_port = htons((uint16_t)port);
    return 0;
}

int cm_admin_start(cm_admin **out, uv_loop_t *loop, const char *addr, cm_metrics *m,
                   cm_admin_ready_fn ready, void *ready_arg, char *err, size_t errlen)
{
    char scratch[1];
    if (!err || errlen == 0) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    if (!out || !loop) {
        snprintf(err, errlen, "admin: no loop or result pointer");
        return CM_EINVAL;
    }
    *out = NULL;
    if (!m)
        m = cm_metrics_default();
    if (!m) {
        snprintf(err, errlen, "admin: could not create the metrics registry");
        return CM_ENOMEM;
    }

    struct sockaddr_storage ss;
    int rc = parse_listen(addr, &ss, err, errlen);
    if (rc != 0)
        return rc;

    /* bind and listen synchronously so every failure is reported here and
     * leaves no handle behind on the loop */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "admin listen %s: could not create socket: %s", addr,
                 uv_strerror(uv_translate_sys_error(errno)));
        return CM_EIO;
    }
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t slen =
        ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (bind(fd, (struct sockaddr *)&ss, slen) != 0 || listen(fd, 128) != 0) {
        snprintf(err, errlen, "admin listen %s: %s", addr,
                 uv_strerror(uv_translate_sys_error(errno)));
        close(fd);
        return CM_EIO;
    }

    cm_admin *a = calloc(1, sizeof *a);
    if (!a) {
        close(fd);
        snprintf(err, errlen, "admin: out of memory");
        return CM_ENOMEM;
    }
    a->loop = loop;
    a->metrics = m;
    a->ready = ready;
    a->ready_arg = ready_arg;
    a->idle_ms = ADMIN_IDLE_MS;
    a->start_time = process_start_time();
    cm_admin_req_settings(&a->settings);
    a->settings.on_message_complete = on_message_complete;

    rc = uv_tcp_init(loop, &a->listener);
    if (rc != 0) {
        close(fd);
        free(a);
        snprintf(err, errlen, "admin listen %s: %s", addr, uv_strerror(rc));
        return CM_EIO;
    }
    a->listener.data = a;
    a->listener_open = 1;
    rc = uv_tcp_open(&a->listener, fd);
    if (rc != 0)
        close(fd);
    else
        rc = uv_listen((uv_stream_t *)&a->listener, 128, on_connection);
    if (rc != 0) {
        /* the handle exists now: it is released by the loop's close callback */
        snprintf(err, errlen, "admin listen %s: %s", addr, uv_strerror(rc));
        a->closing = 1;
        uv_close((uv_handle_t *)&a->listener, on_listener_closed);
        return CM_EIO;
    }

    struct sockaddr_storage bound;
    int blen = sizeof bound;
    if (uv_tcp_getsockname(&a->listener, (struct sockaddr *)&bound, &blen) == 0)
        a->port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                                   : ((struct sockaddr_in6 *)&bound)->sin6_port);
    char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", a->port);
    cm_log_info("admin http listening", "listen", addr, "port", port_text, NULL);
    *out = a;
    return 0;
}

int cm_admin_port(const cm_admin *a)
{
    return a ? a->port : -1;
}

void cm_admin_set_idle_timeout(cm_admin *a, unsigned int ms)
{
    if (a && ms > 0)
        a->idle_ms = ms;
}

void cm_admin_close(cm_admin *a)
{
    if (!a || a->closing)
        return;
    a->closing = 1;
    for (struct admin_conn *c = a->conns; c; c = c->next)
        conn_close(c);
    if (a->listener_open)
        uv_close((uv_handle_t *)&a->listener, on_listener_closed);
    else
        admin_maybe_free(a);
}
