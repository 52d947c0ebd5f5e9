/*
 * commerce-webhook-sink: the partner benchmark's receiver (scripts/bench.sh
 * partner, tests/bench/README.md). A small HTTP/1.1 server (http_parser,
 * a thread per connection, keep-alive) that does what a partner's receiver
 * must and nothing more: checks each request's Commerce-Signature
 * (HMAC-SHA256 over "<t>.<body>" with the secret of the partner named by
 * the path /p/<partner_id>, any of its v1 values, |now - t| <= 300 s),
 * deduplicates by the cloudevent id and answers 204 (401 for a bad
 * signature, 400 for a body without id or time).
 *
 *   commerce-webhook-sink --listen HOST:PORT --secrets FILE --status FILE
 *       [--from-ms T]
 *
 * FILE holds "<partner_id> <secret>" lines. Every 100 ms, and at SIGTERM,
 * it rewrites the status file with one json line: requests, unique ids,
 * duplicates, bad signatures, the first and last arrival (epoch ms) of a
 * new id, and the latency (arrival - the event's `time`, the commit of
 * the commission change) percentiles of the new ids whose time is at or
 * after T. Exits 0 on SIGTERM.
 */
#include <arpa/inet.h>
#include <http_parser.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PARTNERS 64
#define ID_SLOTS (1u << 21) /* 2 M ids */

static struct {
    char id[72];
    char secret[128];
} partners[MAX_PARTNERS];
static int npartners;
static int64_t from_ms;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char (*ids)[37];
static long requests, unique_ids, dupes, bad_sig, bad_body;
static int64_t first_ms, last_ms;
static double *lat;
static long nlat, caplat;
static volatile sig_atomic_t stop;

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static double now_ms_f(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec * 1000.0 + (double)t.tv_nsec / 1e6;
}

/* RFC 3339 UTC "2026-12-07T05:22:49.123Z" (0-9 fraction digits) in ms */
static double rfc3339_ms(const char *s)
{
    struct tm tm = {0};
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p)
        return -1;
    double frac = 0, scale = 100;
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
            frac += (*p - '0') * scale;
    return (double)timegm(&tm) * 1000.0 + frac;
}

/* 1 when the id is new (and remembers it) */
static int remember(const char *id)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *c = id; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ULL;
    for (uint32_t i = (uint32_t)h & (ID_SLOTS - 1);; i = (i + 1) & (ID_SLOTS - 1)) {
        if (!ids[i][0]) {
            snprintf(ids[i], sizeof ids[i], "%s", id);
            return 1;
        }
        if (strcmp(ids[i], id) == 0)
            return 0;
    }
}

static int verify(const char *partner, const char *sig, const char *body, size_t len)
{
    const char *secret = NULL;
    for (int i = 0; i < npartners; i++)
        if (strcmp(partners[i].id, partner) == 0)
            secret = partners[i].secret;
    if (!secret || strncmp(sig, "t=", 2) != 0)
        return 0;
    long long t = strtoll(sig + 2, NULL, 10);
    if (llabs(t - now_ms() / 1000) > 300)
        return 0;
    const char *comma = strchr(sig, ',');
    if (!comma)
        return 0;
    size_t tl = (size_t)(comma - sig - 2);
    unsigned char *msg = malloc(tl + 1 + len);
    if (!msg)
        return 0;
    memcpy(msg, sig + 2, tl);
    msg[tl] = '.';
    memcpy(msg + tl + 1, body, len);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, tl + 1 + len, mac, &maclen);
    free(msg);
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    for (unsigned int i = 0; i < maclen; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    for (const char *v = strstr(sig, ",v1="); v; v = strstr(v + 1, ",v1="))
        if (strncmp(v + 4, hex, 2 * maclen) == 0)
            return 1;
    return 0;
}

/* ---- one connection ---- */

typedef struct conn {
    int fd;
    http_parser p;
    char url[256];
    char field[64];
    int in_sig; /* the header being read is Commerce-Signature */
    char sig[512];
    char *body;
    size_t blen, bcap;
    int done;
} conn;

static int on_url(http_parser *p, const char *at, size_t n)
{
    conn *c = p->data;
    size_t l = strlen(c->url);
    if (l + n < sizeof c->url) {
        memcpy(c->url + l, at, n);
        c->url[l + n] = '\0';
    }
    return 0;
}

static int on_field(http_parser *p, const char *at, size_t n)
{
    conn *c = p->data;
    snprintf(c->field, sizeof c->field, "%.*s", (int)n, at);
    c->in_sig = strcasecmp(c->field, "Commerce-Signature") == 0;
    return 0;
}

static int on_value(http_parser *p, const char *at, size_t n)
{
    conn *c = p->data;
    if (c->in_sig) {
        size_t l = strlen(c->sig);
        if (l + n < sizeof c->sig) {
            memcpy(c->sig + l, at, n);
            c->sig[l + n] = '\0';
        }
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    conn *c = p->data;
    if (c->blen + n + 1 > c->bcap) {
        size_t cap = (c->blen + n + 1) * 2;
        char *b = realloc(c->body, cap);
        if (!b)
            return 1;
        c->body = b;
        c->bcap = cap;
    }
    memcpy(c->body + c->blen, at, n);
    c->blen += n;
    c->body[c->blen] = '\0';
    return 0;
}

static int on_complete(http_parser *p)
{
    ((conn *)p->data)->done = 1;
    return 0;
}

static int handle(conn *c)
{
    double arrived = now_ms_f();
    const char *partner = strncmp(c->url, "/p/", 3) == 0 ? c->url + 3 : "";
    int status = 204;
    if (!c->body || !verify(partner, c->sig, c->body, c->blen)) {
        status = 401;
    } else {
        json_t *j = json_loadb(c->body, c->blen, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "id"));
        const char *t = json_string_value(json_object_get(j, "time"));
        if (!id || !t || strlen(id) != 36) {
            status = 400;
        } else {
            double tms = rfc3339_ms(t);
            pthread_mutex_lock(&mu);
            if (remember(id)) {
                unique_ids++;
                if (!first_ms)
                    first_ms = (int64_t)arrived;
                last_ms = (int64_t)arrived;
                if (tms >= (double)from_ms) {
                    if (nlat == caplat) {
                        long cap = caplat ? caplat * 2 : 65536;
                        double *v = realloc(lat, (size_t)cap * sizeof *v);
                        if (v) {
                            lat = v;
                            caplat = cap;
                        }
                    }
                    if (nlat < caplat)
                        lat[nlat++] = arrived - tms;
                }
            } else {
                dupes++;
            }
            pthread_mutex_unlock(&mu);
        }
        json_decref(j);
    }
    pthread_mutex_lock(&mu);
    requests++;
    if (status == 401)
        bad_sig++;
    else if (status == 400)
        bad_body++;
    pthread_mutex_unlock(&mu);
    char resp[128];
    int n = snprintf(resp, sizeof resp, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n", status,
                     status == 204   ? "No Content"
                     : status == 401 ? "Unauthorized"
                                     : "Bad Request");
    return write(c->fd, resp, (size_t)n) == n ? 0 : -1;
}

static void *serve(void *arg)
{
    conn *c = arg;
    http_parser_settings s = {.on_url = on_url,
                              .on_header_field = on_field,
                              .on_header_value = on_value,
                              .on_body = on_body,
                              .on_message_complete = on_complete};
    http_parser_init(&c->p, HTTP_REQUEST);
    c->p.data = c;
    char buf[65536];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n <= 0)
            break;
        size_t off = 0;
        while (off < (size_t)n) {
            size_t k = http_parser_execute(&c->p, &s, buf + off, (size_t)n - off);
            if (c->p.http_errno != HPE_OK && c->p.http_errno != HPE_PAUSED)
                goto out;
            off += k;
            if (c->done) {
                if (handle(c))
                    goto out;
                c->done = 0;
                c->url[0] = c->sig[0] = '\0';
                c->blen = 0;
                http_parser_init(&c->p, HTTP_REQUEST);
                c->p.data = c;
            } else if (k == 0) {
                goto out;
            }
        }
    }
out:
    close(c->fd);
    free(c->body);
    free(c);
    return NULL;
}

/* ---- status ---- */

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void write_status(const char *path)
{
    pthread_mutex_lock(&mu);
    double *v = malloc((size_t)(nlat ? nlat : 1) * sizeof *v);
    long n = nlat;
    if (v && n)
        memcpy(v, lat, (size_t)n * sizeof *v);
    long rq = requests, u = unique_ids, d = dupes, bs = bad_sig, bb = bad_body;
    int64_t f = first_ms, l = last_ms;
    pthread_mutex_unlock(&mu);
    if (!v)
        return;
    qsort(v, (size_t)n, sizeof *v, cmp);
#define P(q)                                                                                       \
    (n ? v[(long)((q) / 100.0 * (double)n) < n ? (long)((q) / 100.0 * (double)n) : n - 1] : 0)
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *o = fopen(tmp, "w");
    if (o) {
        fprintf(o,
                "{\"requests\":%ld,\"unique\":%ld,\"duplicates\":%ld,\"bad_signature\":%ld,"
                "\"bad_body\":%ld,\"first_ms\":%lld,\"last_ms\":%lld,\"measured\":%ld,"
                "\"p50_ms\":%.1f,\"p90_ms\":%.1f,\"p99_ms\":%.1f,\"p999_ms\":%.1f,"
                "\"max_ms\":%.1f}\n",
                rq, u, d, bs, bb, (long long)f, (long long)l, n, P(50), P(90), P(99), P(99.9),
                n ? v[n - 1] : 0);
        fclose(o);
        rename(tmp, path);
    }
#undef P
    free(v);
}

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    const char *listen_at = NULL, *secrets = NULL, *status = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--listen") == 0)
            listen_at = argv[i + 1];
        else if (strcmp(argv[i], "--secrets") == 0)
            secrets = argv[i + 1];
        else if (strcmp(argv[i], "--status") == 0)
            status = argv[i + 1];
        else if (strcmp(argv[i], "--from-ms") == 0)
            from_ms = strtoll(argv[i + 1], NULL, 10);
    }
    if (!listen_at || !secrets || !status) {
        fprintf(stderr, "usage: commerce-webhook-sink --listen HOST:PORT --secrets FILE "
                        "--status FILE [--from-ms T]\n");
        return 2;
    }
    FILE *f = fopen(secrets, "r");
    if (!f) {
        perror(secrets);
        return 1;
    }
    while (npartners < MAX_PARTNERS &&
           fscanf(f, "%71s %127s", partners[npartners].id, partners[npartners].secret) == 2)
        npartners++;
    fclose(f);
    ids = calloc(ID_SLOTS, sizeof *ids);
    if (!ids)
        return 1;
    char host[64];
    int port = 0;
    if (sscanf(listen_at, "%63[^:]:%d", host, &port) != 2)
        return 2;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 64)) {
        perror("listen");
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int64_t next = 0;
    while (!stop) {
        fd_set rf;
        FD_ZERO(&rf);
        FD_SET(ls, &rf);
        struct timeval tv = {0, 100000};
        if (select(ls + 1, &rf, NULL, NULL, &tv) > 0) {
            int fd = accept(ls, NULL, NULL);
            if (fd >= 0) {
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                conn *c = calloc(1, sizeof *c);
                pthread_t th;
                if (c) {
                    c->fd = fd;
                    if (pthread_create(&th, NULL, serve, c) == 0)
                        pthread_detach(th);
                    else {
                        close(fd);
                        free(c);
                    }
                } else {
                    close(fd);
                }
            }
        }
        if (now_ms() >= next) {
            write_status(status);
            next = now_ms() + 100;
        }
    }
    write_status(status);
    return 0;
}
