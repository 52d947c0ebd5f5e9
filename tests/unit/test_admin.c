#include "cm_admin.h"
#include "cm_err.h"
#include "cm_metrics.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/*
 * the server runs on its own loop in a background thread; the test thread is
 * a plain blocking-socket http client. everything the admin api needs on the
 * loop thread (start, close) happens before the thread starts or through an
 * async handle.
 */

struct server {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
    cm_admin *admin;
    cm_metrics *metrics;
    atomic_int ready;
    int port;
    int running;
};

static struct server srv;

static int ready_cb(void *arg)
{
    struct server *s = arg;
    return atomic_load(&s->ready);
}

static void on_stop(uv_async_t *a)
{
    cm_admin_close(srv.admin);
    uv_close((uv_handle_t *)a, NULL);
}

static void *loop_main(void *arg)
{
    (void)arg;
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    return NULL;
}

static void server_start(unsigned int idle_ms)
{
    memset(&srv, 0, sizeof srv);
    ck_assert_int_eq(uv_loop_init(&srv.loop), 0);
    srv.metrics = cm_metrics_new();
    ck_assert_ptr_nonnull(srv.metrics);
    char err[256];
    int rc = cm_admin_start(&srv.admin, &srv.loop, "127.0.0.1:0", srv.metrics, ready_cb, &srv, err,
                            sizeof err);
    ck_assert_msg(rc == 0, "start failed: %s", err);
    if (idle_ms)
        cm_admin_set_idle_timeout(srv.admin, idle_ms);
    srv.port = cm_admin_port(srv.admin);
    ck_assert_int_gt(srv.port, 0);
    ck_assert_int_eq(uv_async_init(&srv.loop, &srv.stop, on_stop), 0);
    ck_assert_int_eq(pthread_create(&srv.thread, NULL, loop_main, NULL), 0);
    srv.running = 1;
}

/* closes the server and proves the loop ran dry: no handle left behind. */
static void server_stop(void)
{
    if (!srv.running)
        return;
    srv.running = 0;
    ck_assert_int_eq(uv_async_send(&srv.stop), 0);
    pthread_join(srv.thread, NULL);
    ck_assert_int_eq(uv_loop_alive(&srv.loop), 0);
    ck_assert_int_eq(uv_loop_close(&srv.loop), 0);
    cm_metrics_free(srv.metrics);
}

/* ---- a minimal http client -------------------------------------------------- */

struct client {
    int fd;
    char *buf;
    size_t len, cap;
};

struct response {
    int status;
    char head[4096];
    char *body;
    size_t body_len;
};

static void client_open(struct client *c)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(c->fd, 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)srv.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(c->fd, (struct sockaddr *)&sa, sizeof sa), 0);
}

static void client_close(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
}

static void client_send(struct client *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        ck_assert_int_gt(n, 0);
        data += n;
        len -= (size_t)n;
    }
}

static void client_sends(struct client *c, const char *text)
{
    client_send(c, text, strlen(text));
}

/* reads more input; returns bytes read, 0 on eof or reset, -1 on timeout. */
static ssize_t client_fill(struct client *c)
{
    if (c->cap - c->len < 65536) {
        c->cap = c->cap ? c->cap * 2 : 131072;
        c->buf = realloc(c->buf, c->cap);
        ck_assert_ptr_nonnull(c->buf);
    }
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return -1;
    if (n <= 0)
        return 0;
    c->len += (size_t)n;
    c->buf[c->len] = '\0';
    return n;
}

/* reads one response; head_request: the response has no body. returns 0, or
 * -1 when the connection ended first. */
static int client_read(struct client *c, struct response *r, int head_request)
{
    memset(r, 0, sizeof *r);
    char *end;
    while (!c->buf || !(end = memmem(c->buf, c->len, "\r\n\r\n", 4)))
        if (client_fill(c) <= 0)
            return -1;
    size_t head_len = (size_t)(end - c->buf) + 4;
    ck_assert_uint_lt(head_len, sizeof r->head);
    memcpy(r->head, c->buf, head_len);
    r->head[head_len] = '\0';
    ck_assert_int_eq(sscanf(r->head, "HTTP/1.1 %d ", &r->status), 1);
    const char *cl = strcasestr(r->head, "\r\ncontent-length:");
    ck_assert_ptr_nonnull(cl);
    size_t body_len = head_request ? 0 : strtoul(cl + 17, NULL, 10);
    while (c->len < head_len + body_len)
        if (client_fill(c) <= 0)
            return -1;
    r->body = malloc(body_len + 1);
    memcpy(r->body, c->buf + head_len, body_len);
    r->body[body_len] = '\0';
    r->body_len = body_len;
    memmove(c->buf, c->buf + head_len + body_len, c->len - head_len - body_len);
    c->len -= head_len + body_len;
    return 0;
}

/* 1 when the server closed the connection, 0 when it stayed open. */
static int client_sees_close(struct client *c)
{
    for (;;) {
        ssize_t n = client_fill(c);
        if (n == 0)
            return 1;
        if (n < 0)
            return 0;
    }
}

static void expect(struct client *c, int head_request, int status, const char *body)
{
    struct response r;
    ck_assert_int_eq(client_read(c, &r, head_request), 0);
    ck_assert_int_eq(r.status, status);
    if (body)
        ck_assert_str_eq(r.body, body);
    free(r.body);
}

/* ---- tests ---------------------------------------------------------------------- */

START_TEST(metrics_serves_registry_and_process_series)
{
    server_start(0);
    cm_counter_add(cm_metrics_counter(srv.metrics, "orders_created_total", "orders", NULL), 7);

    struct client c;
    client_open(&c);
    client_sends(&c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    struct response r;
    ck_assert_int_eq(client_read(&c, &r, 0), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(
        strstr(r.head, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "# TYPE orders_created_total counter\n"
                                         "orders_created_total 7\n"));
    const char *rss = strstr(r.body, "\nprocess_resident_memory_bytes ");
    ck_assert_ptr_nonnull(rss);
    ck_assert_uint_gt(strtoull(rss + 31, NULL, 10), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "# TYPE process_resident_memory_bytes gauge\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "\nprocess_virtual_memory_bytes "));
    ck_assert_ptr_nonnull(strstr(r.body, "\nprocess_open_fds "));
    ck_assert_ptr_nonnull(strstr(r.body, "\nprocess_cpu_seconds_total "));
    ck_assert_ptr_nonnull(strstr(r.body, "# TYPE process_cpu_seconds_total counter\n"));
    const char *threads = strstr(r.body, "\nprocess_threads ");
    ck_assert_ptr_nonnull(threads);
    ck_assert_uint_ge(strtoull(threads + 17, NULL, 10), 2); /* this thread + the loop's */
    const char *start = strstr(r.body, "\nprocess_start_time_seconds ");
    ck_assert_ptr_nonnull(start);
    double started = strtod(start + 28, NULL);
    ck_assert(started > (double)time(NULL) - 3600 && started <= (double)time(NULL) + 1);
    free(r.body);

    /* the same connection serves the next scrape, with the counter moved on */
    cm_counter_add(cm_metrics_counter(srv.metrics, "orders_created_total", "orders", NULL), 1);
    client_sends(&c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    ck_assert_int_eq(client_read(&c, &r, 0), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "\norders_created_total 8\n"));
    free(r.body);
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(healthz_answers_ok)
{
    server_start(0);
    struct client c;
    client_open(&c);
    client_sends(&c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(&c, 0, 200, "ok");
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(readyz_follows_the_ready_callback)
{
    server_start(0);
    struct client c;
    client_open(&c);
    client_sends(&c, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(&c, 0, 503, "not ready");
    atomic_store(&srv.ready, 1);
    client_sends(&c, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(&c, 0, 200, "ready");
    atomic_store(&srv.ready, 0);
    client_sends(&c, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(&c, 0, 503, "not ready");
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(unknown_path_is_404_and_keeps_the_connection)
{
    server_start(0);
    struct client c;
    client_open(&c);
    client_sends(&c, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(&c, 0, 404, NULL);
    client_sends(&c, "GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(&c, 0, 200, "ok");
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(other_methods_are_405)
{
    server_start(0);
    struct client c;
    client_open(&c);
    client_sends(&c, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    struct response r;
    ck_assert_int_eq(client_read(&c, &r, 0), 0);
    ck_assert_int_eq(r.status, 405);
    ck_assert_ptr_nonnull(strstr(r.head, "\r\nAllow: GET, HEAD\r\n"));
    free(r.body);
    /* the body was consumed: the connection is still in step */
    client_sends(&c, "DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(&c, 0, 405, NULL);
    client_sends(&c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(&c, 0, 200, "ok");
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(garbage_is_400_then_closed)
{
    server_start(0);
    struct client c;
    client_open(&c);
    client_sends(&c, "THIS IS NOT HTTP\r\n\r\n");
    struct response r;
    ck_assert_int_eq(client_read(&c, &r, 0), 0);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.head, "\r\nConnection: close\r\n"));
    free(r.body);
    ck_assert_int_eq(client_sees_close(&c), 1);
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(pipelined_requests_are_answered_in_order)
{
    server_start(0);
    atomic_store(&srv.ready, 1);
    struct client c;
    client_open(&c);
    client_sends(&c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
                     "GET /missing HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(&c, 0, 200, "ok");
    expect(&c, 0, 200, "ready");
    expect(&c, 0, 404, NULL);
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(head_sends_headers_without_body)
{
    server_start(0);
    struct client c;
    client_open(&c);
    client_sends(&c, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    struct response r;
    ck_assert_int_eq(client_read(&c, &r, 1), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.head, "\r\nContent-Length: 2\r\n"));
    free(r.body);
    /* had HEAD sent "ok", this response would start with it */
    expect(&c, 0, 200, "ok");
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(connection_close_and_http10_are_honoured)
{
    server_start(0);
    struct client c;
    client_open(&c);
    client_sends(&c, "GET /healthz HTTP/1.0\r\n\r\n");
    expect(&c, 0, 200, "ok");
    ck_assert_int_eq(client_sees_close(&c), 1);
    client_close(&c);

    client_open(&c);
    client_sends(&c, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
                     "GET /healthz HTTP/1.1\r\n\r\n");
    expect(&c, 0, 200, "ok");
    ck_assert_int_eq(client_sees_close(&c), 1);
    ck_assert_uint_eq(c.len, 0); /* the request after close got no answer */
    client_close(&c);

    client_open(&c);
    client_sends(&c, "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    struct response r;
    ck_assert_int_eq(client_read(&c, &r, 0), 0);
    ck_assert_ptr_nonnull(strstr(r.head, "\r\nConnection: keep-alive\r\n"));
    free(r.body);
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(oversized_request_head_is_refused)
{
    server_start(0);
    struct client c;
    client_open(&c);
    size_t big = 20 * 1024;
    char *req = malloc(big + 128);
    int n = snprintf(req, big + 128, "GET /healthz HTTP/1.1\r\nX-Big: ");
    memset(req + n, 'a', big);
    memcpy(req + n + big, "\r\n\r\n", 5);
    client_sends(&c, req);
    free(req);
    expect(&c, 0, 431, NULL);
    ck_assert_int_eq(client_sees_close(&c), 1);
    client_close(&c);

    /* a very long url gets its own status */
    client_open(&c);
    req = malloc(8192);
    n = snprintf(req, 8192, "GET /");
    memset(req + n, 'u', 6000);
    snprintf(req + n + 6000, 8192 - (size_t)n - 6000, " HTTP/1.1\r\n\r\n");
    client_sends(&c, req);
    free(req);
    expect(&c, 0, 414, NULL);
    ck_assert_int_eq(client_sees_close(&c), 1);
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(idle_connections_are_closed)
{
    server_start(200);
    struct client c;
    client_open(&c);
    client_sends(&c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(&c, 0, 200, "ok");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_eq(client_sees_close(&c), 1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    ck_assert(waited >= 0.1 && waited < 5);
    client_close(&c);

    /* a request trickled in too slowly is cut off as well */
    client_open(&c);
    client_sends(&c, "GET /healthz HTTP/1.1\r\n");
    ck_assert_int_eq(client_sees_close(&c), 1);
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(slow_reader_gets_every_pipelined_response)
{
    server_start(0);
    /* about 100 KiB per scrape, so 64 scrapes overflow the socket buffers and
     * the server has to pause parsing until this client reads */
    char labels[64];
    for (int i = 0; i < 2000; i++) {
        snprintf(labels, sizeof labels, "series=\"%04d\"", i);
        cm_counter_add(cm_metrics_counter(srv.metrics, "padding_total", "padding", labels),
                       (uint64_t)i);
    }
    struct client c;
    client_open(&c);
    const char *one = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t one_len = strlen(one);
    char *all = malloc(one_len * 64 + 1);
    for (int i = 0; i < 64; i++)
        memcpy(all + (size_t)i * one_len, one, one_len);
    client_send(&c, all, one_len * 64);
    free(all);
    usleep(300 * 1000);
    for (int i = 0; i < 64; i++) {
        struct response r;
        ck_assert_int_eq(client_read(&c, &r, 0), 0);
        ck_assert_int_eq(r.status, 200);
        ck_assert_ptr_nonnull(strstr(r.body, "padding_total{series=\"1999\"} 1999\n"));
        free(r.body);
    }
    client_sends(&c, "GET /healthz HTTP/1.1\r\n\r\n");
    expect(&c, 0, 200, "ok");
    client_close(&c);
    server_stop();
}
END_TEST

START_TEST(close_with_open_connections_leaves_no_handles)
{
    server_start(0);
    struct client idle, partial, busy;
    client_open(&idle);
    client_open(&partial);
    client_open(&busy);
    client_sends(&partial, "GET /heal");
    client_sends(&busy, "GET /healthz HTTP/1.1\r\n\r\n");
    expect(&busy, 0, 200, "ok");
    /* server_stop asserts that the loop ran dry and closed */
    server_stop();
    ck_assert_int_eq(client_sees_close(&idle), 1);
    ck_assert_int_eq(client_sees_close(&partial), 1);
    ck_assert_int_eq(client_sees_close(&busy), 1);
    client_close(&idle);
    client_close(&partial);
    client_close(&busy);
}
END_TEST

START_TEST(start_rejects_bad_addresses)
{
    static const char *const bad[] = {
        "",    "nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:70000",
        ":-1", ":abc",     "::1:80",    "[::1:80",    "[nothere]:80",
    };
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cm_admin *a = (cm_admin *)&loop; /* must be reset on failure */
        char err[256] = "";
        int rc = cm_admin_start(&a, &loop, bad[i], NULL, NULL, NULL, err, sizeof err);
        ck_assert_msg(rc == CM_EINVAL, "\"%s\" gave %d", bad[i], rc);
        ck_assert_ptr_null(a);
        ck_assert_msg(err[0] != '\0', "no reason for \"%s\"", bad[i]);
    }
    /* nothing was left on the loop */
    ck_assert_int_eq(uv_loop_alive(&loop), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

START_TEST(start_reports_a_port_in_use)
{
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    cm_admin *first = NULL, *second = NULL;
    char err[256];
    ck_assert_int_eq(
        cm_admin_start(&first, &loop, "127.0.0.1:0", NULL, NULL, NULL, err, sizeof err), 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", cm_admin_port(first));
    ck_assert_int_eq(cm_admin_start(&second, &loop, addr, NULL, NULL, NULL, err, sizeof err),
                     CM_EIO);
    ck_assert_ptr_null(second);
    ck_assert_ptr_nonnull(strstr(err, "address already in use"));

    /* the other spellings of an address work */
    ck_assert_int_eq(
        cm_admin_start(&second, &loop, "localhost:0", NULL, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_gt(cm_admin_port(second), 0);
    cm_admin_close(second);
    ck_assert_int_eq(cm_admin_start(&second, &loop, ":0", NULL, NULL, NULL, err, sizeof err), 0);
    cm_admin_close(second);
    cm_admin_close(first);
    ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

static Suite *admin_suite(void)
{
    Suite *s = suite_create("admin");
    TCase *tc = tcase_create("http");
    tcase_add_test(tc, metrics_serves_registry_and_process_series);
    tcase_add_test(tc, healthz_answers_ok);
    tcase_add_test(tc, readyz_follows_the_ready_callback);
    tcase_add_test(tc, unknown_path_is_404_and_keeps_the_connection);
    tcase_add_test(tc, other_methods_are_405);
    tcase_add_test(tc, garbage_is_400_then_closed);
    tcase_add_test(tc, pipelined_requests_are_answered_in_order);
    tcase_add_test(tc, head_sends_headers_without_body);
    tcase_add_test(tc, connection_close_and_http10_are_honoured);
    tcase_add_test(tc, oversized_request_head_is_refused);
    tcase_add_test(tc, idle_connections_are_closed);
    tcase_add_test(tc, slow_reader_gets_every_pipelined_response);
    tcase_add_test(tc, close_with_open_connections_leaves_no_handles);
    tcase_add_test(tc, start_rejects_bad_addresses);
    tcase_add_test(tc, start_reports_a_port_in_use);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(admin_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
