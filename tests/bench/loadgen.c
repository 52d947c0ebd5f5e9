/*
 * commerce-loadgen: a closed-loop load generator for unary gRPC calls, on
 * gRPC core's async C API.
 *
 *   commerce-loadgen --target 127.0.0.1:PORT --method /pkg.Svc/M
 *       [--concurrency 64] [--duration 10] [--warmup 2] [--channels N]
 *       [--threads T] [--payload-hex HEX] [--metadata k=v ...]
 *       [--deadline-ms N] [--connect-timeout S] [--json]
 *       [--reserve-gen PREFIX:NSKUS:MAXLINES:QTY] [--accept-code N ...]
 *       [--order-gen PREFIX:NSKUS:LINES:QTY] [--order-channels N] [--rate R]
 *       [--pay-gen FILE]
 *
 * --reserve-gen replaces the fixed payload with a fresh
 * commerce.inventory.v1.ReserveRequest per call: a unique order_id, 1 to
 * MAXLINES lines of distinct random skus PREFIX0 .. PREFIX<NSKUS-1>, each
 * of QTY units (for the inventory benchmark). --accept-code counts calls
 * ending with that status code as completed calls rather than errors (e.g.
 * 9, FAILED_PRECONDITION, to measure sold-out answers).
 *
 * --order-gen replaces it with a fresh commerce.order.v1.CreateOrderRequest
 * per call (for the order benchmark): a unique request_id, a random buyer
 * and merchant, currency CNY, exactly LINES lines of distinct random skus
 * PREFIX0 .. PREFIX<NSKUS-1>, QTY units each at a random unit price.
 * --order-channels N gives each order a distribution channel, skewed: half
 * of the orders go to ch-0 (the hot channel), the rest evenly to ch-1 ..
 * ch-<N-1> (for the commission benchmark).
 *
 * --pay-gen FILE replaces it with a commerce.order.v1.MarkPaidRequest per
 * call, paying the orders FILE lists one per line ("order_id amount_minor
 * currency", e.g. from psql's COPY ... TO with a space delimiter), in file
 * order, each once: payment_id "pay-<order_id>", provider "bench", paid_at
 * unset (the service's clock). a run that needs more calls than FILE has
 * lines is refused before it starts (--rate: rate x (warmup + duration)).
 *
 * --rate R makes the load open-loop: calls start on a fixed schedule of R
 * calls/s in total (spread over the threads), whatever the replies do, with
 * at most --concurrency in flight. a call that finds every slot busy starts
 * as soon as one frees, and its latency still counts from its scheduled
 * start, so a server that falls behind shows in the percentiles instead of
 * slowing the load down (no coordinated omission).
 *
 * T threads, each with its own completion queue, keep `concurrency` calls in
 * flight in total, spread over N channels (each its own tcp connection:
 * one http/2 connection is read and written by one thread at a time on
 * either side, so a single channel measures that serialisation rather than
 * the server). every call is one batch: send initial metadata, send
 * message, close, receive initial metadata, message and status. a call
 * that completes is replaced at once by the next (closed loop).
 *
 * latencies of calls completing inside the measured window (after warmup)
 * go into a log-linear histogram (128 sub-buckets per power of two, so a
 * reported percentile is within 0.4 % of the true value). non-OK statuses
 * are counted apart and make the run fail: a benchmark of errors is not a
 * benchmark. the run stops by itself after warmup + duration, waiting at
 * most one call deadline for the calls still in flight.
 *
 * exit: 0 ok, 1 the run saw errors, 2 usage or setup failure.
 */
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define NCODES 17 /* grpc status codes 0..16 */
#define MAX_METADATA 16

/* ---- log-linear histogram of nanoseconds ---- */

#define SUB_BITS 7
#define SUB_COUNT (1u << SUB_BITS) /* 128 sub-buckets per power of two */
#define MAX_EXP 42                 /* 2^42 ns is over an hour */
#define NBUCKETS (SUB_COUNT + (MAX_EXP - SUB_BITS + 1) * SUB_COUNT)

typedef struct histogram {
    uint64_t counts[NBUCKETS];
    uint64_t total;
    uint64_t max;
    uint64_t sum;
} histogram;

static size_t bucket_of(uint64_t v)
{
    if (v < SUB_COUNT)
        return (size_t)v;
    int e = 63 - __builtin_clzll(v);
    if (e > MAX_EXP)
        return NBUCKETS - 1;
    int shift = e - SUB_BITS;
    size_t sub = (size_t)(v >> shift) - SUB_COUNT;
    return SUB_COUNT + (size_t)shift * SUB_COUNT + sub;
}

/* the midpoint of the bucket: at most half a bucket (0.4 %) off */
static uint64_t bucket_value(size_t i)
{
    if (i < SUB_COUNT)
        return i;
    size_t shift = (i - SUB_COUNT) / SUB_COUNT;
    uint64_t sub = (i - SUB_COUNT) % SUB_COUNT;
    uint64_t lo = (SUB_COUNT + sub) << shift;
    return lo + ((1ull << shift) >> 1);
}

static void hist_record(histogram *h, uint64_t ns)
{
    h->counts[bucket_of(ns)]++;
    h->total++;
    h->sum += ns;
    if (ns > h->max)
        h->max = ns;
}

static void hist_merge(histogram *into, const histogram *from)
{
    for (size_t i = 0; i < NBUCKETS; i++)
        into->counts[i] += from->counts[i];
    into->total += from->total;
    into->sum += from->sum;
    if (from->max > into->max)
        into->max = from->max;
}

/* the smallest recorded value v such that a fraction q of samples is <= v */
static uint64_t hist_quantile(const histogram *h, double q)
{
    if (h->total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->total + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < NBUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = bucket_value(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

/* ---- configuration ---- */

typedef struct config {
    const char *target;
    const char *method;
    int concurrency;
    int duration_s;
    int warmup_s;
    int channels;
    int threads;
    int deadline_ms;
    int connect_timeout_s;
    int json;
    uint8_t *payload;
    size_t payload_len;
    const char *md_keys[MAX_METADATA];
    const char *md_values[MAX_METADATA];
    int nmd;
    /* --reserve-gen */
    char gen_prefix[64];
    int gen_skus, gen_lines, gen_qty;
    /* --accept-code, as a bit per status code */
    unsigned accept;
    /* --order-gen */
    char order_prefix[64];
    int order_skus, order_lines, order_qty;
    int order_channels; /* --order-channels, 0: none */
    /* --pay-gen: the orders to pay, "order_id amount currency" each */
    char **pay_lines;
    long pay_n;
    /* --rate: calls/s offered in total, 0: closed loop */
    int rate;
    /* --timeline: where the per-100 ms buckets go, NULL: none */
    const char *timeline;
} config;

static void usage(FILE *f)
{
    fprintf(f, "usage: commerce-loadgen --target HOST:PORT --method /pkg.Service/Method\n"
               "         [--concurrency 64] [--duration 10] [--warmup 2] [--channels N]\n"
               "         [--threads T] [--payload-hex HEX] [--metadata k=v ...]\n"
               "         [--deadline-ms 5000] [--connect-timeout 10] [--json]\n"
               "         [--reserve-gen PREFIX:NSKUS:MAXLINES:QTY] [--accept-code N ...]\n"
               "         [--order-gen PREFIX:NSKUS:LINES:QTY] [--order-channels N] [--rate R]\n"
               "         [--pay-gen FILE] [--timeline FILE]\n"
               "\n"
               "closed-loop unary load: keeps --concurrency calls in flight over --channels\n"
               "connections from --threads threads (each with its own completion queue) for\n"
               "--warmup + --duration seconds; latencies are measured after the warmup.\n"
               "--rate R: open loop, R calls/s on a fixed schedule (latency from the\n"
               "scheduled start), at most --concurrency in flight.\n"
               "--timeline FILE: the measured window in 100 ms buckets by start time, one\n"
               "line each: seconds into the window, calls, max and mean latency (ms) and\n"
               "calls over 25 ms: where the slow calls of a run cluster (stalls).\n"
               "defaults: --channels = --threads = number of cpus (at most --concurrency).\n"
               "exit 0 ok, 1 the run saw non-OK statuses, 2 usage or setup error.\n");
}

/* --pay-gen: every non-empty line of the file, checked for three fields */
static int load_pay_lines(config *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "commerce-loadgen: --pay-gen %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[256];
    long cap = 0;
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0])
            continue;
        char id[80], cur[8];
        long long amount;
        if (sscanf(line, "%79s %lld %7s", id, &amount, cur) != 3 || amount < 0) {
            fprintf(stderr, "commerce-loadgen: --pay-gen %s: bad line \"%s\"\n", path, line);
            rc = -1;
            break;
        }
        if (c->pay_n == cap) {
            cap = cap ? 2 * cap : 4096;
            char **v = realloc(c->pay_lines, (size_t)cap * sizeof *v);
            if (!v) {
                rc = -1;
                break;
            }
            c->pay_lines = v;
        }
        if (!(c->pay_lines[c->pay_n++] = strdup(line)))
            rc = -1;
    }
    fclose(f);
    if (rc == 0 && c->pay_n == 0) {
        fprintf(stderr, "commerce-loadgen: --pay-gen %s lists no orders\n", path);
        rc = -1;
    }
    return rc;
}

static int parse_int(const char *name, const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "commerce-loadgen: %s must be an integer in [%ld, %ld], got \"%s\"\n", name,
                lo, hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int parse_hex(const char *s, uint8_t **out, size_t *len)
{
    size_t n = strlen(s);
    if (n % 2) {
        fprintf(stderr, "commerce-loadgen: --payload-hex needs an even number of digits\n");
        return -1;
    }
    uint8_t *buf = malloc(n / 2 ? n / 2 : 1);
    if (!buf)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_digit(s[2 * i]), lo = hex_digit(s[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "commerce-loadgen: --payload-hex: not a hex digit in \"%s\"\n", s);
            free(buf);
            return -1;
        }
        buf[i] = (uint8_t)(hi << 4 | lo);
    }
    *out = buf;
    *len = n / 2;
    return 0;
}

static int parse_args(int argc, char **argv, config *c)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int deflt = ncpu > 0 ? (int)ncpu : 1;
    memset(c, 0, sizeof *c);
    c->concurrency = 64;
    c->duration_s = 10;
    c->warmup_s = 2;
    c->deadline_ms = 5000;
    c->connect_timeout_s = 10;
    c->channels = -1;
    c->threads = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "--json") == 0) {
            c->json = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "commerce-loadgen: %s needs a value (or is unknown)\n", a);
            return -1;
        }
        const char *v = argv[++i];
        int rc = 0;
        if (strcmp(a, "--target") == 0)
            c->target = v;
        else if (strcmp(a, "--method") == 0)
            c->method = v;
        else if (strcmp(a, "--concurrency") == 0)
            rc = parse_int(a, v, 1, 100000, &c->concurrency);
        else if (strcmp(a, "--duration") == 0)
            rc = parse_int(a, v, 1, 86400, &c->duration_s);
        else if (strcmp(a, "--warmup") == 0)
            rc = parse_int(a, v, 0, 3600, &c->warmup_s);
        else if (strcmp(a, "--channels") == 0)
            rc = parse_int(a, v, 1, 1024, &c->channels);
        else if (strcmp(a, "--threads") == 0)
            rc = parse_int(a, v, 1, 256, &c->threads);
        else if (strcmp(a, "--deadline-ms") == 0)
            rc = parse_int(a, v, 1, 3600000, &c->deadline_ms);
        else if (strcmp(a, "--connect-timeout") == 0)
            rc = parse_int(a, v, 1, 3600, &c->connect_timeout_s);
        else if (strcmp(a, "--payload-hex") == 0) {
            free(c->payload);
            c->payload = NULL;
            rc = parse_hex(v, &c->payload, &c->payload_len);
        } else if (strcmp(a, "--reserve-gen") == 0) {
            char pre[64];
            int ns, nl, q;
            if (sscanf(v, "%63[^:]:%d:%d:%d", pre, &ns, &nl, &q) != 4 || ns < 1 || nl < 1 ||
                nl > 100 || nl > ns || q < 1) {
                fprintf(stderr,
                        "commerce-loadgen: --reserve-gen wants PREFIX:NSKUS:MAXLINES:QTY\n");
                return -1;
            }
            memcpy(c->gen_prefix, pre, sizeof pre);
            c->gen_skus = ns;
            c->gen_lines = nl;
            c->gen_qty = q;
        } else if (strcmp(a, "--order-gen") == 0) {
            char pre[64];
            int ns, nl, q;
            if (sscanf(v, "%63[^:]:%d:%d:%d", pre, &ns, &nl, &q) != 4 || ns < 1 || nl < 1 ||
                nl > 100 || nl > ns || q < 1) {
                fprintf(stderr, "commerce-loadgen: --order-gen wants PREFIX:NSKUS:LINES:QTY\n");
                return -1;
            }
            memcpy(c->order_prefix, pre, sizeof pre);
            c->order_skus = ns;
            c->order_lines = nl;
            c->order_qty = q;
        } else if (strcmp(a, "--order-channels") == 0) {
            rc = parse_int(a, v, 1, 1000000, &c->order_channels);
        } else if (strcmp(a, "--pay-gen") == 0) {
            rc = load_pay_lines(c, v);
        } else if (strcmp(a, "--timeline") == 0) {
            c->timeline = v;
        } else if (strcmp(a, "--rate") == 0) {
            rc = parse_int(a, v, 1, 10000000, &c->rate);
        } else if (strcmp(a, "--accept-code") == 0) {
            int code;
            rc = parse_int(a, v, 1, 16, &code);
            if (rc == 0)
                c->accept |= 1u << code;
        } else if (strcmp(a, "--metadata") == 0) {
            const char *eq = strchr(v, '=');
            if (!eq || eq == v || c->nmd >= MAX_METADATA) {
                fprintf(stderr, "commerce-loadgen: --metadata wants key=value (at most %d)\n",
                        MAX_METADATA);
                return -1;
            }
            char *key = strndup(v, (size_t)(eq - v));
            if (!key)
                return -1;
            for (char *p = key; *p; p++)
                if (*p >= 'A' && *p <= 'Z')
                    *p = (char)(*p - 'A' + 'a'); /* http/2 header names are lower-case */
            c->md_keys[c->nmd] = key;
            c->md_values[c->nmd] = eq + 1;
            c->nmd++;
        } else {
            fprintf(stderr, "commerce-loadgen: unknown option %s\n", a);
            return -1;
        }
        if (rc)
            return -1;
    }
    if (!!c->gen_skus + !!c->order_skus + !!c->pay_n > 1) {
        fprintf(stderr,
                "commerce-loadgen: --reserve-gen, --order-gen and --pay-gen exclude each other\n");
        return -1;
    }
    if (c->pay_n && c->rate &&
        (long long)c->rate * (c->warmup_s + c->duration_s) > (long long)c->pay_n) {
        fprintf(stderr, "commerce-loadgen: --pay-gen lists %ld orders, the run pays %lld\n",
                c->pay_n, (long long)c->rate * (c->warmup_s + c->duration_s));
        return -1;
    }
    if (!c->target || !c->method || c->method[0] != '/') {
        fprintf(stderr,
                "commerce-loadgen: --target and --method (/pkg.Service/Method) are required\n");
        return -1;
    }
    if (c->threads < 0)
        c->threads = deflt;
    if (c->channels < 0)
        c->channels = deflt;
    /* a thread or a channel without a call in flight would only add noise */
    if (c->threads > c->concurrency)
        c->threads = c->concurrency;
    if (c->channels > c->concurrency)
        c->channels = c->concurrency;
    return 0;
}

/* ---- the run ---- */

typedef struct run run;
typedef struct loader loader;

/* --timeline: the calls that started in one 100 ms of the window */
#define TL_BUCKET_NS 100000000LL
#define TL_SLOW_NS 25000000LL
typedef struct tl_bucket {
    uint64_t calls, slow;
    uint64_t sum_ns, max_ns;
} tl_bucket;

/* one call in flight; reused for the next call when it completes */
typedef struct call_slot {
    loader *l;
    int channel;
    grpc_call *call;
    struct timespec t0;
    grpc_byte_buffer *send;
    grpc_metadata_array initial_md;
    grpc_metadata_array trailing_md;
    grpc_byte_buffer *recv;
    grpc_status_code status;
    grpc_slice details;
} call_slot;

struct loader {
    run *r;
    int index;
    pthread_t thread;
    grpc_completion_queue *cq;
    call_slot *slots;
    int nslots;
    grpc_metadata md[MAX_METADATA];
    histogram hist;
    uint64_t calls_total; /* every OK completion, warmup included */
    uint64_t gen_seq;     /* --reserve-gen: this loader's next order number */
    uint64_t rng;
    uint64_t errors[NCODES];
    uint64_t errors_total;
    uint64_t errors_in_window;
    uint64_t start_failures;
    char first_error[256];
    tl_bucket *tl; /* --timeline: this thread's buckets, NULL: none */
};

struct run {
    config cfg;
    grpc_channel **channels;
    void **registered; /* per channel: the method's registered-call handle */
    grpc_slice payload;
    int64_t t_start, t_measure, t_end; /* CLOCK_MONOTONIC ns */
    loader *loaders;
};

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int64_t ts_ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

/* ---- --reserve-gen: a ReserveRequest per call, encoded by hand ---- */

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static size_t put_str(uint8_t *p, int field, const char *s, size_t len)
{
    size_t n = put_varint(p, (uint64_t)field << 3 | 2);
    n += put_varint(p + n, len);
    memcpy(p + n, s, len);
    return n + len;
}

static uint64_t next_rand(uint64_t *x)
{
    /* xorshift64 */
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static size_t gen_reserve(loader *l, uint8_t *out)
{
    const config *c = &l->r->cfg;
    char id[96];
    int idn = snprintf(id, sizeof id, "lg-%ld-%lld-%d-%llu", (long)getpid(),
                       (long long)l->r->t_start, l->index, (unsigned long long)l->gen_seq++);
    size_t n = put_str(out, 1, id, (size_t)idn);
    int lines = c->gen_lines > 1 ? 1 + (int)(next_rand(&l->rng) % (uint64_t)c->gen_lines) : 1;
    int picked[100];
    for (int i = 0; i < lines; i++) {
        int k;
        int dup;
        do {
            k = c->gen_skus > 1 ? (int)(next_rand(&l->rng) % (uint64_t)c->gen_skus) : 0;
            dup = 0;
            for (int j = 0; j < i; j++)
                dup |= picked[j] == k;
        } while (dup);
        picked[i] = k;
        char sku[96];
        int sn = snprintf(sku, sizeof sku, "%s%d", c->gen_prefix, k);
        uint8_t line[128];
        size_t ln = put_str(line, 1, sku, (size_t)sn);
        line[ln++] = 2 << 3; /* quantity, varint */
        ln += put_varint(line + ln, (uint64_t)c->gen_qty);
        n += put_varint(out + n, 3 << 3 | 2);
        n += put_varint(out + n, ln);
        memcpy(out + n, line, ln);
        n += ln;
    }
    return n;
}

/* ---- --order-gen: a CreateOrderRequest per call, encoded by hand ---- */

/* a commerce.common.v1.Money as field `field` */
static size_t put_money(uint8_t *p, int field, int64_t minor, const char *cur)
{
    uint8_t m[64];
    size_t n = 0;
    m[n++] = 1 << 3; /* amount_minor, varint */
    n += put_varint(m + n, (uint64_t)minor);
    n += put_str(m + n, 2, cur, strlen(cur));
    size_t k = put_varint(p, (uint64_t)field << 3 | 2);
    k += put_varint(p + k, n);
    memcpy(p + k, m, n);
    return k + n;
}

static size_t gen_order(loader *l, uint8_t *out)
{
    const config *c = &l->r->cfg;
    char s[96];
    int sn = snprintf(s, sizeof s, "lg-%ld-%lld-%d-%llu", (long)getpid(), (long long)l->r->t_start,
                      l->index, (unsigned long long)l->gen_seq++);
    size_t n = put_str(out, 1, s, (size_t)sn); /* request_id */
    sn = snprintf(s, sizeof s, "buyer-%d", (int)(next_rand(&l->rng) % 100000));
    n += put_str(out + n, 2, s, (size_t)sn); /* buyer_id */
    sn = snprintf(s, sizeof s, "merchant-%d", (int)(next_rand(&l->rng) % 100));
    n += put_str(out + n, 3, s, (size_t)sn); /* merchant_id */
    if (c->order_channels) {
        /* half to the hot channel ch-0, the rest evenly over the others */
        uint64_t x = next_rand(&l->rng);
        int ch = (x & 1) || c->order_channels == 1
                     ? 0
                     : 1 + (int)((x >> 1) % (uint64_t)(c->order_channels - 1));
        sn = snprintf(s, sizeof s, "ch-%d", ch);
        n += put_str(out + n, 4, s, (size_t)sn); /* channel_id */
    }
    n += put_str(out + n, 5, "CNY", 3); /* currency */
    int picked[100];
    for (int i = 0; i < c->order_lines; i++) {
        int k, dup;
        do {
            k = c->order_skus > 1 ? (int)(next_rand(&l->rng) % (uint64_t)c->order_skus) : 0;
            dup = 0;
            for (int j = 0; j < i; j++)
                dup |= picked[j] == k;
        } while (dup);
        picked[i] = k;
        char sku[96];
        int kn = snprintf(sku, sizeof sku, "%s%d", c->order_prefix, k);
        uint8_t line[160];
        size_t ln = put_str(line, 1, sku, (size_t)kn);
        line[ln++] = 2 << 3; /* quantity, varint */
        ln += put_varint(line + ln, (uint64_t)c->order_qty);
        ln += put_money(line + ln, 3, 100 + (int64_t)(next_rand(&l->rng) % 10000), "CNY");
        n += put_varint(out + n, 6 << 3 | 2); /* lines */
        n += put_varint(out + n, ln);
        memcpy(out + n, line, ln);
        n += ln;
    }
    return n;
}

/* ---- --pay-gen: a MarkPaidRequest per call, the file's next order ---- */

static long pay_next; /* the next line of --pay-gen, shared by the threads */

static size_t gen_pay(loader *l, uint8_t *out)
{
    const config *c = &l->r->cfg;
    long i = __atomic_fetch_add(&pay_next, 1, __ATOMIC_RELAXED);
    if (i >= c->pay_n)
        return 0; /* an empty request: INVALID_ARGUMENT, counted as an error */
    char id[80], cur[8], pay[96];
    long long amount;
    if (sscanf(c->pay_lines[i], "%79s %lld %7s", id, &amount, cur) != 3)
        return 0;
    int pn = snprintf(pay, sizeof pay, "pay-%s", id);
    size_t n = put_str(out, 1, pay, (size_t)pn); /* payment_id */
    n += put_str(out + n, 2, id, strlen(id));    /* order_id */
    n += put_money(out + n, 3, amount, cur);     /* amount */
    n += put_str(out + n, 5, "bench", 5);        /* provider */
    return n;
}

static int start_call(call_slot *s)
{
    loader *l = s->l;
    run *r = l->r;
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(r->cfg.deadline_ms, GPR_TIMESPAN));
    s->call =
        grpc_channel_create_registered_call(r->channels[s->channel], NULL, GRPC_PROPAGATE_DEFAULTS,
                                            l->cq, r->registered[s->channel], deadline, NULL);
    if (!s->call)
        return -1;
    /* a fresh buffer per call: core may take the slices out of the one it
     * is given */
    if (r->cfg.gen_skus || r->cfg.order_skus || r->cfg.pay_n) {
        uint8_t buf[16384];
        size_t n = r->cfg.gen_skus     ? gen_reserve(l, buf)
                   : r->cfg.order_skus ? gen_order(l, buf)
                                       : gen_pay(l, buf);
        grpc_slice one = grpc_slice_from_copied_buffer((const char *)buf, n);
        s->send = grpc_raw_byte_buffer_create(&one, 1);
        grpc_slice_unref(one);
    } else {
        s->send = grpc_raw_byte_buffer_create(&r->payload, 1);
    }
    grpc_metadata_array_init(&s->initial_md);
    grpc_metadata_array_init(&s->trailing_md);
    s->recv = NULL;
    s->details = grpc_empty_slice();

    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = (size_t)r->cfg.nmd;
    ops[0].data.send_initial_metadata.metadata = r->cfg.nmd ? l->md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = s->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &s->recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &s->trailing_md;
    ops[5].data.recv_status_on_client.status = &s->status;
    ops[5].data.recv_status_on_client.status_details = &s->details;
    clock_gettime(CLOCK_MONOTONIC, &s->t0);
    grpc_call_error e = grpc_call_start_batch(s->call, ops, 6, s, NULL);
    if (e != GRPC_CALL_OK) {
        grpc_call_unref(s->call);
        s->call = NULL;
        grpc_byte_buffer_destroy(s->send);
        grpc_metadata_array_destroy(&s->initial_md);
        grpc_metadata_array_destroy(&s->trailing_md);
        return -1;
    }
    return 0;
}

/* --timeline: buckets of a window of duration_s seconds */
static size_t timeline_buckets(const config *c)
{
    return (size_t)((c->duration_s * 1000000000LL + TL_BUCKET_NS - 1) / TL_BUCKET_NS);
}

/* --timeline: a call of the window, by its start (scheduled or sent) */
static void timeline_record(loader *l, int64_t t0, uint64_t ns)
{
    run *r = l->r;
    if (!l->tl || t0 < r->t_measure || t0 >= r->t_end)
        return;
    tl_bucket *b = &l->tl[(t0 - r->t_measure) / TL_BUCKET_NS];
    b->calls++;
    b->sum_ns += ns;
    if (ns > b->max_ns)
        b->max_ns = ns;
    if ((int64_t)ns > TL_SLOW_NS)
        b->slow++;
}

/* --timeline: every thread's buckets merged, one line each */
static int timeline_write(const run *r)
{
    const config *c = &r->cfg;
    FILE *f = fopen(c->timeline, "w");
    if (!f) {
        fprintf(stderr, "commerce-loadgen: --timeline %s: %s\n", c->timeline, strerror(errno));
        return -1;
    }
    fprintf(f, "t_s calls max_ms mean_ms over_25ms\n");
    for (size_t i = 0; i < timeline_buckets(c); i++) {
        tl_bucket m = {0};
        for (int t = 0; t < c->threads; t++) {
            const tl_bucket *b = &r->loaders[t].tl[i];
            m.calls += b->calls;
            m.slow += b->slow;
            m.sum_ns += b->sum_ns;
            if (b->max_ns > m.max_ns)
                m.max_ns = b->max_ns;
        }
        fprintf(f, "%.1f %llu %.1f %.1f %llu\n", (double)i * TL_BUCKET_NS / 1e9,
                (unsigned long long)m.calls, (double)m.max_ns / 1e6,
                m.calls ? (double)m.sum_ns / (double)m.calls / 1e6 : 0.0,
                (unsigned long long)m.slow);
    }
    return fclose(f) == 0 ? 0 : -1;
}

/* accounts a completed call and releases what it held; returns 1 when the
 * slot should start the next call */
static int finish_call(call_slot *s, int ok)
{
    loader *l = s->l;
    run *r = l->r;
    int64_t t1 = now_ns();
    int in_window = t1 >= r->t_measure && t1 < r->t_end;
    grpc_status_code code = ok ? s->status : GRPC_STATUS_UNKNOWN;
    if (code == GRPC_STATUS_OK || (code > 0 && code < 32 && (r->cfg.accept >> code & 1))) {
        l->calls_total++;
        if (in_window) {
            uint64_t ns = (uint64_t)(t1 - ts_ns(&s->t0));
            hist_record(&l->hist, ns);
            timeline_record(l, ts_ns(&s->t0), ns);
        }
    } else {
        int c = code >= 0 && code < NCODES ? (int)code : GRPC_STATUS_UNKNOWN;
        l->errors[c]++;
        l->errors_total++;
        if (in_window)
            l->errors_in_window++;
        if (!l->first_error[0]) {
            int len = (int)GRPC_SLICE_LENGTH(s->details);
            snprintf(l->first_error, sizeof l->first_error, "status %d: %.*s", (int)code,
                     len > 200 ? 200 : len, (const char *)GRPC_SLICE_START_PTR(s->details));
        }
    }
    grpc_call_unref(s->call);
    s->call = NULL;
    grpc_byte_buffer_destroy(s->send);
    if (s->recv)
        grpc_byte_buffer_destroy(s->recv);
    grpc_metadata_array_destroy(&s->initial_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    grpc_slice_unref(s->details);
    return t1 < r->t_end;
}

/* --rate: starts calls on this thread's share of the schedule */
static void *loader_paced(loader *l)
{
    run *r = l->r;
    const config *c = &r->cfg;
    int *free_slots = malloc((size_t)l->nslots * sizeof *free_slots);
    int nfree = 0, inflight = 0;
    if (!free_slots) {
        l->start_failures++;
        return NULL;
    }
    for (int i = l->nslots - 1; i >= 0; i--)
        free_slots[nfree++] = i;
    /* the threads' schedules interleave: thread t starts t/threads of an
     * interval late */
    int64_t interval = (int64_t)(1e9 * c->threads / c->rate);
    if (interval < 1)
        interval = 1;
    int64_t next = r->t_start + interval * l->index / c->threads;
    int64_t hard_stop = r->t_end + (int64_t)c->deadline_ms * 1000000 + 1000000000;
    for (;;) {
        int64_t now = now_ns();
        /* every call that is due and has a slot starts now */
        while (next < r->t_end && next <= now && nfree > 0) {
            int k = free_slots[--nfree];
            call_slot *s = &l->slots[k];
            if (start_call(s) == 0) {
                /* latency counts from the schedule (the completion is
                 * handled on this thread, after this) */
                s->t0.tv_sec = (time_t)(next / 1000000000);
                s->t0.tv_nsec = (long)(next % 1000000000);
                inflight++;
            } else {
                l->start_failures++;
                free_slots[nfree++] = k;
            }
            next += interval;
        }
        if ((next >= r->t_end && inflight == 0) || now > hard_stop)
            break;
        int64_t wait = 200000000;
        if (next < r->t_end && nfree > 0)
            wait = next > now ? next - now : 0;
        grpc_event ev = grpc_completion_queue_next(
            l->cq,
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_nanos(wait, GPR_TIMESPAN)),
            NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        call_slot *s = ev.tag;
        inflight--;
        finish_call(s, ev.success);
        free_slots[nfree++] = (int)(s - l->slots);
    }
    free(free_slots);
    if (inflight > 0) {
        fprintf(stderr, "commerce-loadgen: thread %d: %d calls still in flight at the hard stop\n",
                l->index, inflight);
        for (int i = 0; i < l->nslots; i++)
            if (l->slots[i].call)
                grpc_call_cancel(l->slots[i].call, NULL);
    }
    grpc_completion_queue_shutdown(l->cq);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(l->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            finish_call(ev.tag, ev.success);
    }
    return NULL;
}

static void *loader_main(void *arg)
{
    loader *l = arg;
    run *r = l->r;
    int inflight = 0;
    if (r->cfg.rate > 0)
        return loader_paced(l);
    for (int i = 0; i < l->nslots; i++) {
        if (start_call(&l->slots[i]) == 0)
            inflight++;
        else
            l->start_failures++;
    }
    /* after the end, wait for the calls in flight: each has a deadline, so
     * this is bounded; the extra second covers a server that never answers */
    int64_t hard_stop = r->t_end + (int64_t)r->cfg.deadline_ms * 1000000 + 1000000000;
    while (inflight > 0 && now_ns() < hard_stop) {
        gpr_timespec wait =
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(200, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(l->cq, wait, NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        call_slot *s = ev.tag;
        inflight--;
        if (finish_call(s, ev.success)) {
            if (start_call(s) == 0)
                inflight++;
            else
                l->start_failures++;
        }
    }
    if (inflight > 0) {
        fprintf(stderr, "commerce-loadgen: thread %d: %d calls still in flight at the hard stop\n",
                l->index, inflight);
        for (int i = 0; i < l->nslots; i++)
            if (l->slots[i].call)
                grpc_call_cancel(l->slots[i].call, NULL);
    }
    /* documented order: shut the queue down, drain it, then destroy */
    grpc_completion_queue_shutdown(l->cq);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(l->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            finish_call(ev.tag, ev.success);
    }
    return NULL;
}

/* waits until every channel has a connection, so the warmup measures the
 * server rather than connection setup (and a wrong address fails fast) */
static int connect_channels(run *r)
{
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                     gpr_time_from_seconds(r->cfg.connect_timeout_s, GPR_TIMESPAN));
    int rc = 0;
    for (int i = 0; i < r->cfg.channels && rc == 0; i++) {
        grpc_connectivity_state st = grpc_channel_check_connectivity_state(r->channels[i], 1);
        while (st != GRPC_CHANNEL_READY) {
            grpc_channel_watch_connectivity_state(r->channels[i], st, deadline, cq, NULL);
            grpc_event ev =
                grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
            st = grpc_channel_check_connectivity_state(r->channels[i], 1);
            if (ev.type == GRPC_OP_COMPLETE && !ev.success && st != GRPC_CHANNEL_READY) {
                rc = -1; /* the deadline passed */
                break;
            }
        }
    }
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    return rc;
}

static const char *const code_names[NCODES] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

/* json string body: the target and method come from the command line */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static double us(uint64_t ns)
{
    return (double)ns / 1000.0;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru))
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void report(const run *r, const histogram *h, const loader *sum, double cpu_s)
{
    const config *c = &r->cfg;
    double window_s = (double)(r->t_end - r->t_measure) / 1e9;
    double rate = (double)h->total / window_s;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    double total_s = (double)(r->t_end - r->t_start) / 1e9;
    uint64_t p50 = hist_quantile(h, 0.50), p90 = hist_quantile(h, 0.90);
    uint64_t p99 = hist_quantile(h, 0.99), p999 = hist_quantile(h, 0.999);
    double mean = h->total ? (double)h->sum / (double)h->total : 0;

    printf("target       %s\n", c->target);
    printf("method       %s\n", c->method);
    printf("concurrency  %d calls in flight over %d channels, %d threads\n", c->concurrency,
           c->channels, c->threads);
    if (c->rate > 0)
        printf("offered      %d calls/s on a fixed schedule (open loop; at most %d in flight; "
               "latency from the scheduled start)\n",
               c->rate, c->concurrency);
    printf("payload      %zu bytes, %d metadata entries, deadline %d ms\n", c->payload_len, c->nmd,
           c->deadline_ms);
    printf("duration     %d s measured after %d s warmup\n", c->duration_s, c->warmup_s);
    printf("host         %ld cpus; the load generator uses %.2f of them on average "
           "(it shares them with the server when both run here)\n",
           ncpu, total_s > 0 ? cpu_s / total_s : 0);
    printf("calls        %" PRIu64 " ok in the window (%" PRIu64 " including warmup)\n", h->total,
           sum->calls_total);
    printf("errors       %" PRIu64 " in the window, %" PRIu64 " in the whole run\n",
           sum->errors_in_window, sum->errors_total + sum->start_failures);
    printf("throughput   %.0f calls/s\n", rate);
    printf("latency us   p50 %.1f  p90 %.1f  p99 %.1f  p999 %.1f  max %.1f  mean %.1f\n", us(p50),
           us(p90), us(p99), us(p999), us(h->max), mean / 1000.0);
    if (sum->errors_total || sum->start_failures) {
        fflush(stdout); /* keep the report's order when both go to one file */
        fprintf(stderr, "\n*** ERRORS: %" PRIu64 " calls did not return OK ***\n",
                sum->errors_total + sum->start_failures);
        for (int i = 0; i < NCODES; i++)
            if (sum->errors[i])
                fprintf(stderr, "***   %-20s %" PRIu64 "\n", code_names[i], sum->errors[i]);
        if (sum->start_failures)
            fprintf(stderr, "***   could not start      %" PRIu64 "\n", sum->start_failures);
        if (sum->first_error[0])
            fprintf(stderr, "***   first: %s\n", sum->first_error);
        fprintf(stderr, "*** the numbers above are not a valid measurement ***\n");
    }
    if (c->json) {
        printf("{\"target\":");
        json_str(stdout, c->target);
        printf(",\"method\":");
        json_str(stdout, c->method);
        printf(",\"concurrency\":%d,\"channels\":%d,\"threads\":%d,\"duration_s\":%d,"
               "\"warmup_s\":%d,\"payload_bytes\":%zu,\"calls\":%" PRIu64
               ",\"calls_total\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"calls_per_s\":%.1f,"
               "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
               "\"max_us\":%.1f,\"mean_us\":%.1f,\"loadgen_cpu_s\":%.3f,\"ncpu\":%ld,"
               "\"offered_per_s\":%d}\n",
               c->concurrency, c->channels, c->threads, c->duration_s, c->warmup_s, c->payload_len,
               h->total, sum->calls_total, sum->errors_total + sum->start_failures, rate, us(p50),
               us(p90), us(p99), us(p999), us(h->max), mean / 1000.0, cpu_s, ncpu, c->rate);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    run r;
    memset(&r, 0, sizeof r);
    if (parse_args(argc, argv, &r.cfg)) {
        usage(stderr);
        return 2;
    }
    config *c = &r.cfg;
    grpc_init();

    /* retries off: the retry filter buffers every message and costs client
     * cpu that the server would otherwise have on this shared machine */
    grpc_arg args[] = {
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, .value.integer = 1},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ENABLE_RETRIES, .value.integer = 0},
        {.type = GRPC_ARG_INTEGER, .key = "commerce.loadgen.channel", .value.integer = 0},
    };
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    r.channels = calloc((size_t)c->channels, sizeof *r.channels);
    r.registered = calloc((size_t)c->channels, sizeof *r.registered);
    r.loaders = calloc((size_t)c->threads, sizeof *r.loaders);
    if (!r.channels || !r.registered || !r.loaders) {
        fprintf(stderr, "commerce-loadgen: out of memory\n");
        return 2;
    }
    for (int i = 0; i < c->channels; i++) {
        /* a local subchannel pool and a distinct arg per channel: channels
         * with equal args would otherwise share one connection */
        args[2].value.integer = i;
        grpc_channel_args cargs = {.num_args = 3, .args = args};
        r.channels[i] = grpc_channel_create(c->target, creds, &cargs);
        r.registered[i] = grpc_channel_register_call(r.channels[i], c->method, NULL, NULL);
    }
    grpc_channel_credentials_release(creds);
    if (connect_channels(&r)) {
        fprintf(stderr, "commerce-loadgen: could not connect to %s within %d s\n", c->target,
                c->connect_timeout_s);
        for (int i = 0; i < c->channels; i++)
            grpc_channel_destroy(r.channels[i]);
        grpc_shutdown();
        return 2;
    }
    r.payload = c->payload_len
                    ? grpc_slice_from_copied_buffer((const char *)c->payload, c->payload_len)
                    : grpc_empty_slice();

    /* spread the calls: thread t gets every threads-th slot, and slot k
     * uses channel k % channels, so every channel carries calls from
     * several threads when there are more channels than threads and the
     * reverse */
    int next_slot = 0;
    for (int t = 0; t < c->threads; t++) {
        loader *l = &r.loaders[t];
        l->r = &r;
        l->index = t;
        l->rng =
            0x9e3779b97f4a7c15ULL ^ ((uint64_t)(t + 1) * 0x100000001b3ULL) ^ (uint64_t)getpid();
        l->nslots = c->concurrency / c->threads + (t < c->concurrency % c->threads ? 1 : 0);
        l->slots = calloc((size_t)l->nslots, sizeof *l->slots);
        l->cq = grpc_completion_queue_create_for_next(NULL);
        if (!l->slots || !l->cq) {
            fprintf(stderr, "commerce-loadgen: out of memory\n");
            return 2;
        }
        if (c->timeline && !(l->tl = calloc(timeline_buckets(c), sizeof *l->tl))) {
            fprintf(stderr, "commerce-loadgen: out of memory\n");
            return 2;
        }
        for (int k = 0; k < l->nslots; k++) {
            l->slots[k].l = l;
            l->slots[k].channel = next_slot++ % c->channels;
        }
        for (int k = 0; k < c->nmd; k++) {
            l->md[k].key = grpc_slice_from_copied_string(c->md_keys[k]);
            l->md[k].value = grpc_slice_from_copied_string(c->md_values[k]);
        }
    }

    double cpu0 = cpu_seconds();
    r.t_start = now_ns();
    r.t_measure = r.t_start + (int64_t)c->warmup_s * 1000000000;
    r.t_end = r.t_measure + (int64_t)c->duration_s * 1000000000;
    int started = 0;
    for (int t = 0; t < c->threads; t++) {
        if (pthread_create(&r.loaders[t].thread, NULL, loader_main, &r.loaders[t]) != 0) {
            fprintf(stderr, "commerce-loadgen: could not start thread %d\n", t);
            r.t_end = now_ns(); /* the started ones stop at once */
            break;
        }
        started++;
    }
    for (int t = 0; t < started; t++)
        pthread_join(r.loaders[t].thread, NULL);
    double cpu_s = cpu_seconds() - cpu0;
    if (c->timeline && started == c->threads && timeline_write(&r) != 0)
        return 2;

    static histogram h; /* large: keep it off the stack */
    loader sum;
    memset(&sum, 0, sizeof sum);
    for (int t = 0; t < c->threads; t++) {
        loader *l = &r.loaders[t];
        hist_merge(&h, &l->hist);
        sum.calls_total += l->calls_total;
        for (int k = 0; k < NCODES; k++)
            sum.errors[k] += l->errors[k];
        sum.errors_total += l->errors_total;
        sum.errors_in_window += l->errors_in_window;
        sum.start_failures += l->start_failures;
        if (!sum.first_error[0] && l->first_error[0])
            memcpy(sum.first_error, l->first_error, sizeof sum.first_error);
    }
    int failed = started < c->threads;
    if (!failed)
        report(&r, &h, &sum, cpu_s);

    for (int t = 0; t < c->threads; t++) {
        loader *l = &r.loaders[t];
        if (l->cq && t >= started) {
            grpc_completion_queue_shutdown(l->cq);
            while (
                grpc_completion_queue_next(l->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
                GRPC_QUEUE_SHUTDOWN)
                ;
        }
        if (l->cq)
            grpc_completion_queue_destroy(l->cq);
        for (int k = 0; k < c->nmd; k++) {
            grpc_slice_unref(l->md[k].key);
            grpc_slice_unref(l->md[k].value);
        }
        free(l->slots);
    }
    for (int i = 0; i < c->channels; i++)
        grpc_channel_destroy(r.channels[i]);
    grpc_slice_unref(r.payload);
    grpc_shutdown();
    for (int k = 0; k < c->nmd; k++)
        free((char *)c->md_keys[k]);
    free(c->payload);
    for (long k = 0; k < c->pay_n; k++)
        free(c->pay_lines[k]);
    free(c->pay_lines);
    free(r.channels);
    free(r.registered);
    free(r.loaders);
    if (failed)
        return 2;
    return sum.errors_total || sum.start_failures ? 1 : 0;
}
