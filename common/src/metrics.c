#include "cm_metrics.h"
#include "cm_err.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * layout: a registry holds families (one per metric name, in order of first
 * registration) and each family holds its series (one per label set, in order
 * of registration). a hash over (name, labels) makes get-or-create cheap for
 * callers that look series up on every request. the mutex guards the lists
 * and the hash only; values are plain atomics that updates touch without it.
 */

enum metric_kind { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };

static const char *const kind_names[] = {"counter", "gauge", "histogram"};

struct cm_counter {
    atomic_uint_fast64_t value;
};

/* doubles live as their ieee-754 bits so that plain integer atomics work. */
struct cm_gauge {
    atomic_uint_fast64_t bits;
};

struct cm_histogram {
    size_t nbounds;
    double *bounds;                /* ascending, +Inf implied */
    atomic_uint_fast64_t *buckets; /* nbounds + 1, not cumulative */
    atomic_uint_fast64_t sum_bits;
};

struct family;

struct series {
    struct family *family;
    char *labels;             /* "" when none */
    struct series *next;      /* within the family */
    struct series *hash_next; /* within a hash bucket */
    uint64_t hash;
    union {
        struct cm_counter counter;
        struct cm_gauge gauge;
        struct cm_histogram histogram;
    } u;
};

struct family {
    char *name;
    char *help;
    enum metric_kind kind;
    struct series *first, *last;
    struct family *next;
};

struct cm_metrics {
    pthread_mutex_t lock;
    struct family *first, *last;
    struct series **table;
    size_t table_size; /* power of two */
    size_t nseries;
};

const double cm_metrics_latency_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                             1,      2.5,     5,      10};
const size_t cm_metrics_latency_nbuckets =
    sizeof cm_metrics_latency_buckets / sizeof cm_metrics_latency_buckets[0];

static uint64_t double_bits(double v)
{
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

static double bits_double(uint64_t b)
{
    double v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* adds to a double stored as bits; lock-free, retries only under contention. */
static void atomic_double_add(atomic_uint_fast64_t *bits, double delta)
{
    uint_fast64_t old = atomic_load_explicit(bits, memory_order_relaxed);
    for (;;) {
        uint_fast64_t want = double_bits(bits_double(old) + delta);
        if (atomic_compare_exchange_weak_explicit(bits, &old, want, memory_order_relaxed,
                                                  memory_order_relaxed))
            return;
    }
}

/* ---- registry ---------------------------------------------------------- */

cm_metrics *cm_metrics_new(void)
{
    cm_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->table_size = 64;
    m->table = calloc(m->table_size, sizeof *m->table);
    if (!m->table || pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m->table);
        free(m);
        return NULL;
    }
    return m;
}

static void series_free(struct series *s)
{
    if (s->family->kind == KIND_HISTOGRAM) {
        free(s->u.histogram.bounds);
        free((void *)s->u.histogram.buckets);
    }
    free(s->labels);
    free(s);
}

void cm_metrics_free(cm_metrics *m)
{
    if (!m)
        return;
    struct family *f = m->first;
    while (f) {
        struct family *fnext = f->next;
        struct series *s = f->first;
        while (s) {
            struct series *snext = s->next;
            series_free(s);
            s = snext;
        }
        free(f->name);
        free(f->help);
        free(f);
        f = fnext;
    }
    free(m->table);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* unlinks and frees the series whose value is at u (counters and gauges:
 * the union's first member) */
static void series_remove(cm_metrics *m, void *u)
{
    if (!m || !u)
        return;
    struct series *s = (struct series *)(void *)((char *)u - offsetof(struct series, u));
    pthread_mutex_lock(&m->lock);
    struct series **p = &m->table[s->hash & (m->table_size - 1)];
    while (*p && *p != s)
        p = &(*p)->hash_next;
    if (*p) {
        *p = s->hash_next;
        struct family *f = s->family;
        struct series *prev = NULL;
        for (struct series *q = f->first; q && q != s; q = q->next)
            prev = q;
        if (prev)
            prev->next = s->next;
        else
            f->first = s->next;
        if (f->last == s)
            f->last = prev;
        m->nseries--;
        series_free(s);
    }
    pthread_mutex_unlock(&m->lock);
}

void cm_metrics_counter_remove(cm_metrics *m, cm_counter *c)
{
    series_remove(m, c);
}

void cm_metrics_gauge_remove(cm_metrics *m, cm_gauge *g)
{
    series_remove(m, g);
}

static cm_metrics *default_registry;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void default_free(void)
{
    cm_metrics_free(default_registry);
    default_registry = NULL;
}

static void default_init(void)
{
    default_registry = cm_metrics_new();
    /* freed at exit so leak checkers see a clean process; should atexit
     * fail, the registry simply lives until the process ends */
    if (default_registry)
        (void)atexit(default_free);
}

cm_metrics *cm_metrics_default(void)
{
    pthread_once(&default_once, default_init);
    return default_registry;
}

/* prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]* */
static int name_valid(const char *name)
{
    if (!name || !*name)
        return 0;
    for (const char *p = name; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(p != name && c >= '0' && c <= '9'))
            return 0;
    }
    return 1;
}

/* a label string is spliced into the output as is: a newline or a brace in it
 * would corrupt every line after it, so refuse those outright. */
static int labels_valid(const char *labels)
{
    return strpbrk(labels, "\n{}") == NULL;
}

static uint64_t hash_key(const char *name, const char *labels)
{
    uint64_t h = 1469598103934665603ULL; /* fnv-1a */
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL; /* separator that no name contains */
    for (const char *p = labels; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static struct family *family_find(cm_metrics *m, const char *name)
{
    for (struct family *f = m->first; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

static void table_grow(cm_metrics *m)
{
    size_t size = m->table_size * 2;
    struct series **t = calloc(size, sizeof *t);
    if (!t)
        return; /* a fuller table is slower, not wrong */
    for (size_t i = 0; i < m->table_size; i++) {
        struct series *s = m->table[i];
        while (s) {
            struct series *next = s->hash_next;
            size_t slot = (size_t)(s->hash & (size - 1));
            s->hash_next = t[slot];
            t[slot] = s;
            s = next;
        }
    }
    free(m->table);
    m->table = t;
    m->table_size = size;
}

static int histogram_init(struct cm_histogram *h, const double *bounds, size_t nbounds)
{
    for (size_t i = 0; i < nbounds; i++) {
        if (isnan(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
            return CM_EINVAL;
    }
    /* a trailing +Inf bound is the implied one: drop it */
    if (nbounds > 0 && isinf(bounds[nbounds - 1]) && bounds[nbounds - 1] > 0)
        nbounds--;
    h->nbounds = nbounds;
    h->bounds = malloc((nbounds ? nbounds : 1) * sizeof *h->bounds);
    h->buckets = malloc((nbounds + 1) * sizeof *h->buckets);
    if (!h->bounds || !h->buckets) {
        free(h->bounds);
        free((void *)h->buckets);
        return CM_ENOMEM;
    }
    if (nbounds)
        memcpy(h->bounds, bounds, nbounds * sizeof *h->bounds);
    for (size_t i = 0; i <= nbounds; i++)
        atomic_init(&h->buckets[i], 0);
    atomic_init(&h->sum_bits, double_bits(0.0));
    return 0;
}

/* the get-or-create behind the three typed entry points. */
static struct series *series_get(cm_metrics *m, enum metric_kind kind, const char *name,
                                 const char *help, const char *labels, const double *bounds,
                                 size_t nbounds)
{
    if (!m || !name_valid(name) || (nbounds && !bounds))
        return NULL;
    if (!labels)
        labels = "";
    if (!labels_valid(labels))
        return NULL;
    if (!help)
        help = "";

    uint64_t h = hash_key(name, labels);
    struct series *found = NULL;

    pthread_mutex_lock(&m->lock);
    for (struct series *s = m->table[h & (m->table_size - 1)]; s; s = s->hash_next) {
        if (s->hash == h && strcmp(s->family->name, name) == 0 && strcmp(s->labels, labels) == 0) {
            found = s;
            break;
        }
    }
    if (found) {
        if (found->family->kind != kind)
            found = NULL;
        pthread_mutex_unlock(&m->lock);
        return found;
    }

    struct family *f = family_find(m, name);
    if (f && f->kind != kind) {
        pthread_mutex_unlock(&m->lock);
        return NULL;
    }
    int new_family = f == NULL;
    if (new_family) {
        f = calloc(1, sizeof *f);
        if (!f)
            goto fail;
        f->kind = kind;
        f->name = dup_str(name);
        f->help = dup_str(help);
        if (!f->name || !f->help)
            goto fail;
    }

    struct series *s = calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->family = f;
    s->hash = h;
    s->labels = dup_str(labels);
    if (!s->labels) {
        free(s);
        goto fail;
    }
    switch (kind) {
    case KIND_COUNTER:
        atomic_init(&s->u.counter.value, 0);
        break;
    case KIND_GAUGE:
        atomic_init(&s->u.gauge.bits, double_bits(0.0));
        break;
    case KIND_HISTOGRAM:
        if (histogram_init(&s->u.histogram, bounds, nbounds) != 0) {
            free(s->labels);
            free(s);
            goto fail;
        }
        break;
    }

    if (new_family) {
        if (m->last)
            m->last->next = f;
        else
            m->first = f;
        m->last = f;
    }
    if (f->last)
        f->last->next = s;
    else
        f->first = s;
    f->last = s;
    size_t slot = (size_t)(h & (m->table_size - 1));
    s->hash_next = m->table[slot];
    m->table[slot] = s;
    if (++m->nseries > m->table_size)
        table_grow(m);
    pthread_mutex_unlock(&m->lock);
    return s;

fail:
    if (new_family && f) {
        free(f->name);
        free(f->help);
        free(f);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

cm_counter *cm_metrics_counter(cm_metrics *m, const char *name, const char *help,
                               const char *labels)
{
    struct series *s = series_get(m, KIND_COUNTER, name, help, labels, NULL, 0);
    return s ? &s->u.counter : NULL;
}

cm_gauge *cm_metrics_gauge(cm_metrics *m, const char *name, const char *help, const char *labels)
{
    struct series *s = series_get(m, KIND_GAUGE, name, help, labels, NULL, 0);
    return s ? &s->u.gauge : NULL;
}

cm_histogram *cm_metrics_histogram(cm_metrics *m, const char *name, const char *help,
                                   const char *labels, const double *bounds, size_t nbounds)
{
    struct series *s = series_get(m, KIND_HISTOGRAM, name, help, labels, bounds, nbounds);
    return s ? &s->u.histogram : NULL;
}

/* ---- updates (hot path: no locks) --------------------------------------- */

void cm_counter_add(cm_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}

uint64_t cm_counter_value(const cm_counter *c)
{
    return atomic_load_explicit((atomic_uint_fast64_t *)&c->value, memory_order_relaxed);
}

void cm_gauge_set(cm_gauge *g, double v)
{
    atomic_store_explicit(&g->bits, double_bits(v), memory_order_relaxed);
}

void cm_gauge_add(cm_gauge *g, double delta)
{
    atomic_double_add(&g->bits, delta);
}

double cm_gauge_value(const cm_gauge *g)
{
    return bits_double(
        atomic_load_explicit((atomic_uint_fast64_t *)&g->bits, memory_order_relaxed));
}

void cm_histogram_observe(cm_histogram *h, double v)
{
    /* first bound >= v; nan and values above every bound land in +Inf */
    size_t lo = 0, hi = h->nbounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= h->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    if (isnan(v))
        lo = h->nbounds;
    atomic_fetch_add_explicit(&h->buckets[lo], 1, memory_order_relaxed);
    atomic_double_add(&h->sum_bits, v);
}

uint64_t cm_histogram_count(const cm_histogram *h)
{
    /* the count is the sum of the buckets, so it never disagrees with +Inf */
    uint64_t n = 0;
    for (size_t i = 0; i <= h->nbounds; i++)
        n += atomic_load_explicit((atomic_uint_fast64_t *)&h->buckets[i], memory_order_relaxed);
    return n;
}

/* ---- rendering ----------------------------------------------------------- */

struct buf {
    char *data;
    size_t len, cap;
    int failed;
};

static void buf_reserve(struct buf *b, size_t extra)
{
    if (b->failed || b->len + extra < b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap <= b->len + extra)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) {
        b->failed = 1;
        return;
    }
    b->data = d;
    b->cap = cap;
}

static void buf_put(struct buf *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    if (b->failed)
        return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if ((size_t)n < sizeof small) {
        buf_put(b, small, (size_t)n);
        return;
    }
    buf_reserve(b, (size_t)n + 1);
    if (b->failed)
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* shortest text that reads back as the same double, in the spellings the
 * exposition format uses for the special values. */
static void format_double(char *out, size_t outlen, double v)
{
    if (isnan(v)) {
        snprintf(out, outlen, "NaN");
    } else if (isinf(v)) {
        snprintf(out, outlen, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, outlen, "%.15g", v);
        if (strtod(out, NULL) != v)
            snprintf(out, outlen, "%.17g", v);
    }
}

static void put_help(struct buf *b, const char *help)
{
    /* help text escapes only backslash and newline */
    const char *run = help;
    for (const char *p = help; *p; p++) {
        if (*p != '\\' && *p != '\n')
            continue;
        buf_put(b, run, (size_t)(p - run));
        buf_puts(b, *p == '\\' ? "\\\\" : "\\n");
        run = p + 1;
    }
    buf_puts(b, run);
}

static void put_histogram(struct buf *b, const char *name, const char *labels,
                          const struct cm_histogram *h)
{
    const char *sep = *labels ? "," : "";
    char num[64];
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= h->nbounds; i++) {
        cumulative +=
            atomic_load_explicit((atomic_uint_fast64_t *)&h->buckets[i], memory_order_relaxed);
        if (i < h->nbounds)
            format_double(num, sizeof num, h->bounds[i]);
        else
            snprintf(num, sizeof num, "+Inf");
        buf_printf(b, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", name, labels, sep, num, cumulative);
    }
    format_double(num, sizeof num,
                  bits_double(atomic_load_explicit((atomic_uint_fast64_t *)&h->sum_bits,
                                                   memory_order_relaxed)));
    if (*labels) {
        buf_printf(b, "%s_sum{%s} %s\n", name, labels, num);
        buf_printf(b, "%s_count{%s} %" PRIu64 "\n", name, labels, cumulative);
    } else {
        buf_printf(b, "%s_sum %s\n", name, num);
        buf_printf(b, "%s_count %" PRIu64 "\n", name, cumulative);
    }
}

static void put_series(struct buf *b, const struct family *f, const struct series *s)
{
    char num[64];
    const char *open = *s->labels ? "{" : "";
    const char *close = *s->labels ? "}" : "";
    switch (f->kind) {
    case KIND_COUNTER:
        buf_printf(b, "%s%s%s%s %" PRIu64 "\n", f->name, open, s->labels, close,
                   cm_counter_value(&s->u.counter));
        break;
    case KIND_GAUGE:
        format_double(num, sizeof num, cm_gauge_value(&s->u.gauge));
        buf_printf(b, "%s%s%s%s %s\n", f->name, open, s->labels, close, num);
        break;
    case KIND_HISTOGRAM:
        put_histogram(b, f->name, s->labels, &s->u.histogram);
        break;
    }
}

int cm_metrics_render(cm_metrics *m, char **out, size_t *len)
{
    if (!m || !out)
        return CM_EINVAL;
    struct buf b = {0};
    buf_reserve(&b, 1);
    if (!b.failed)
        b.data[0] = '\0';

    /* registration may run concurrently: the lists are walked under the lock,
     * values are read with the same relaxed loads the updaters use */
    pthread_mutex_lock(&m->lock);
    for (const struct family *f = m->first; f && !b.failed; f = f->next) {
        buf_printf(&b, "# HELP %s ", f->name);
        put_help(&b, f->help);
        buf_printf(&b, "\n# TYPE %s %s\n", f->name, kind_names[f->kind]);
        for (const struct series *s = f->first; s; s = s->next)
            put_series(&b, f, s);
    }
    pthread_mutex_unlock(&m->lock);

    if (b.failed) {
        free(b.data);
        return CM_ENOMEM;
    }
    *out = b.data;
    if (len)
        *len = b.len;
    return 0;
}
