/*
 * token buckets per tenant and class. design note: common/README.md, "rate
 * limits and quotas".
 *
 * a bucket is kept as GCRA's theoretical arrival time (tat): a call at now
 * is allowed when max(tat, now) + interval - now <= tolerance, where
 * interval = 1/rate and tolerance = burst/rate, and then tat moves on by
 * one interval. that is a token bucket of `burst` tokens refilled at
 * `rate`, held in one integer, and the refusal's retry delay falls out of
 * the same subtraction.
 */
#include "cm_ratelimit.h"

#include "cm_auth.h"
#include "cm_err.h"
#include "cm_file.h"
#include "cm_log.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SHARDS 64
#define TENANT_MAX CM_AUTH_TENANT_MAX
#define DEF_MAX_BUCKETS 65536
#define FILE_MAX (4u << 20)
#define FILE_TENANTS_MAX 100000
#define RATE_MAX 1e7
#define BURST_MAX 1e9
#define METRIC_TENANTS 32 /* tenants with their own series; the rest are "_other" */
#define QUOTAS_MAX 8
#define QUOTA_NAME_MAX 32
#define QUOTA_MAX 1000000000000LL

typedef struct bucket {
    struct bucket *hnext;       /* hash chain */
    struct bucket *prev, *next; /* recency, most recent first */
    uint64_t hash;
    unsigned gen; /* the configuration its limit came from */
    int cls;
    int64_t interval; /* ns per call */
    int64_t tolerance;
    int64_t tat;
    cm_ratelimit_limit limit;
    char tenant[TENANT_MAX + 1];
} bucket;

typedef struct shard {
    pthread_mutex_t mu;
    bucket **slots;
    size_t nslots; /* a power of two */
    bucket *head, *tail;
    size_t n, cap;
} shard;

/* the quotas an entry sets: what a tenant may create, by name */
typedef struct quotas {
    struct {
        char name[QUOTA_NAME_MAX + 1];
        long long value;
    } q[QUOTAS_MAX];
    int n;
} quotas;

typedef struct tenant_conf {
    char name[TENANT_MAX + 1];
    cm_ratelimit_limit lim[CM_RATELIMIT_NCLASSES];
    quotas quotas;
} tenant_conf;

/* one configuration: immutable once built, replaced whole on reload */
typedef struct conf {
    cm_ratelimit_limit def[CM_RATELIMIT_NCLASSES];
    quotas def_quotas;
    tenant_conf *tenants; /* sorted by name */
    size_t ntenants;
    int any; /* some limit is set */
} conf;

typedef struct metric_tenant {
    char name[TENANT_MAX + 1];
    cm_counter *c[CM_RATELIMIT_NCLASSES];
} metric_tenant;

struct cm_ratelimit {
    shard shards[SHARDS];
    cm_ratelimit_limit base[CM_RATELIMIT_NCLASSES];
    int64_t (*now_ns)(void *);
    void *clock_arg;
    /* the configuration: read-locked only when a bucket is made or its
     * configuration changed, not on every take */
    pthread_rwlock_t conf_mu;
    conf *conf;
    atomic_uint gen;
    atomic_int off;
    /* the file */
    char *file;
    pthread_mutex_t reload_mu;
    cm_file_id seen; /* the file as last read, good or bad; all 0: gone */
    int seen_valid;
    /* metrics */
    cm_metrics *metrics;
    pthread_mutex_t metrics_mu;
    metric_tenant mt[METRIC_TENANTS];
    size_t nmt;
    cm_counter *other[CM_RATELIMIT_NCLASSES];
};

static const char *const class_names[CM_RATELIMIT_NCLASSES] = {"read", "write", "admin"};

const char *cm_ratelimit_class_name(cm_ratelimit_class cls)
{
    return (unsigned)cls < CM_RATELIMIT_NCLASSES ? class_names[cls] : "?";
}

static int64_t mono_ns(void *arg)
{
    (void)arg;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t hash_of(const char *tenant, int cls)
{
    uint64_t h = 1469598103934665603ULL; /* fnv-1a */
    for (const unsigned char *p = (const unsigned char *)tenant; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    h = (h ^ (unsigned)cls) * 1099511628211ULL;
    return h ^ (h >> 29);
}

/* ---- configuration ---- */

static cm_ratelimit_limit normalised(cm_ratelimit_limit l)
{
    if (!(l.rate > 0)) /* NaN too */
        return (cm_ratelimit_limit){0, 0};
    if (!(l.burst >= 1))
        l.burst = l.rate >= 1 ? l.rate : 1;
    return l;
}

static void conf_free(conf *c)
{
    if (!c)
        return;
    free(c->tenants);
    free(c);
}

static int tenant_cmp(const void *a, const void *b)
{
    return strcmp(((const tenant_conf *)a)->name, ((const tenant_conf *)b)->name);
}

static const tenant_conf *conf_tenant(const conf *c, const char *tenant)
{
    if (!c->ntenants)
        return NULL;
    tenant_conf key;
    snprintf(key.name, sizeof key.name, "%s", tenant);
    return bsearch(&key, c->tenants, c->ntenants, sizeof *c->tenants, tenant_cmp);
}

static cm_ratelimit_limit conf_limit(const conf *c, const char *tenant, int cls)
{
    const tenant_conf *t = conf_tenant(c, tenant);
    return t ? t->lim[cls] : c->def[cls];
}

/* {"read": {"rate": r, "burst": b}, ...} over lim (what it leaves out
 * stays); path names the object in errors */
static int quota_name_ok(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > QUOTA_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((n[i] >= 'a' && n[i] <= 'z') || n[i] == '_'))
            return 0;
    return 1;
}

/* {"skus": 100000, ...} over q (what it leaves out stays) */
static int parse_quotas(json_t *obj, quotas *q, const char *path, char *err, size_t errlen)
{
    if (!json_is_object(obj)) {
        set_err(err, errlen, "%s.quotas: must be an object of name: count", path);
        return CM_EINVAL;
    }
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        if (!quota_name_ok(key)) {
            set_err(err, errlen, "%s.quotas: \"%.64s\" is not a quota name ([a-z_], 1-%d)", path,
                    key, QUOTA_NAME_MAX);
            return CM_EINVAL;
        }
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > QUOTA_MAX) {
            set_err(err, errlen, "%s.quotas.%s: must be a whole number 0..%lld", path, key,
                    QUOTA_MAX);
            return CM_EINVAL;
        }
        int i = 0;
        while (i < q->n && strcmp(q->q[i].name, key) != 0)
            i++;
        if (i == QUOTAS_MAX) {
            set_err(err, errlen, "%s.quotas: at most %d quotas", path, QUOTAS_MAX);
            return CM_EINVAL;
        }
        if (i == q->n) {
            snprintf(q->q[i].name, sizeof q->q[i].name, "%s", key);
            q->n++;
        }
        q->q[i].value = (long long)json_integer_value(v);
    }
    return 0;
}

static int parse_classes(json_t *obj, cm_ratelimit_limit *lim, quotas *q, const char *path,
                         char *err, size_t errlen)
{
    if (!json_is_object(obj)) {
        set_err(err, errlen, "%s: must be an object of read, write, admin, quotas", path);
        return CM_EINVAL;
    }
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        if (strcmp(key, "quotas") == 0) {
            if (parse_quotas(v, q, path, err, errlen))
                return CM_EINVAL;
            continue;
        }
        int cls = -1;
        for (int i = 0; i < CM_RATELIMIT_NCLASSES; i++)
            if (strcmp(key, class_names[i]) == 0)
                cls = i;
        if (cls < 0) {
            set_err(err, errlen, "%s.%s: unknown class (read, write, admin) or quotas", path, key);
            return CM_EINVAL;
        }
        if (!json_is_object(v)) {
            set_err(err, errlen, "%s.%s: must be an object {\"rate\": .., \"burst\": ..}", path,
                    key);
            return CM_EINVAL;
        }
        cm_ratelimit_limit l = {0, 0};
        const char *k2;
        json_t *n;
        json_object_foreach(v, k2, n)
        {
            int is_rate = strcmp(k2, "rate") == 0, is_burst = strcmp(k2, "burst") == 0;
            if (!is_rate && !is_burst) {
                set_err(err, errlen, "%s.%s.%s: unknown setting (rate or burst)", path, key, k2);
                return CM_EINVAL;
            }
            double x = json_is_number(n) ? json_number_value(n) : -1;
            if (is_rate && !(x >= 0 && x <= RATE_MAX)) {
                set_err(err, errlen, "%s.%s.rate: must be a number of calls per second, 0..%g",
                        path, key, RATE_MAX);
                return CM_EINVAL;
            }
            if (is_burst && !(x >= 1 && x <= BURST_MAX)) {
                set_err(err, errlen, "%s.%s.burst: must be a number of calls, 1..%g", path, key,
                        BURST_MAX);
                return CM_EINVAL;
            }
            if (is_rate)
                l.rate = x;
            else
                l.burst = x;
        }
        if (!json_object_get(v, "rate")) {
            set_err(err, errlen, "%s.%s: rate is required (0: unlimited)", path, key);
            return CM_EINVAL;
        }
        lim[cls] = normalised(l);
    }
    return 0;
}

static void conf_note_any(conf *c)
{
    c->any = 0;
    for (int i = 0; i < CM_RATELIMIT_NCLASSES; i++)
        c->any |= c->def[i].rate > 0;
    for (size_t t = 0; t < c->ntenants; t++)
        for (int i = 0; i < CM_RATELIMIT_NCLASSES; i++)
            c->any |= c->tenants[t].lim[i].rate > 0;
}

/* the configuration: base, overridden by the file when there is one */
static int conf_build(const cm_ratelimit_limit *base, const char *file, conf **out, char *err,
                      size_t errlen)
{
    conf *c = calloc(1, sizeof *c);
    if (!c)
        return CM_ENOMEM;
    for (int i = 0; i < CM_RATELIMIT_NCLASSES; i++)
        c->def[i] = normalised(base[i]);
    if (!file) {
        conf_note_any(c);
        *out = c;
        return 0;
    }
    char *text = NULL;
    size_t len = 0;
    int rc = cm_file_read(file, FILE_MAX, &text, &len);
    if (rc) {
        set_err(err, errlen, "%s: could not read: %s", file, cm_strerror(rc));
        conf_free(c);
        return CM_EINVAL;
    }
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    rc = CM_EINVAL;
    if (!root) {
        set_err(err, errlen, "%s: not JSON: line %d: %s", file, je.line, je.text);
        goto out;
    }
    if (!json_is_object(root)) {
        set_err(err, errlen, "%s: must be an object with \"default\" and \"tenants\"", file);
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "default") != 0 && strcmp(key, "tenants") != 0) {
            set_err(err, errlen, "%s: unknown key \"%.64s\" (default, tenants)", file, key);
            goto out;
        }
    }
    json_t *def = json_object_get(root, "default");
    if (def && parse_classes(def, c->def, &c->def_quotas, "default", err, errlen))
        goto out;
    json_t *tenants = json_object_get(root, "tenants");
    if (tenants) {
        if (!json_is_object(tenants) || json_object_size(tenants) > FILE_TENANTS_MAX) {
            set_err(err, errlen, "tenants: must be an object of at most %d tenants",
                    FILE_TENANTS_MAX);
            goto out;
        }
        size_t n = json_object_size(tenants);
        c->tenants = calloc(n ? n : 1, sizeof *c->tenants);
        if (!c->tenants) {
            rc = CM_ENOMEM;
            goto out;
        }
        json_object_foreach(tenants, key, v)
        {
            if (!cm_auth_tenant_valid(key)) {
                set_err(err, errlen,
                        "tenants: \"%.64s\" is not a tenant id (1-64 of [A-Za-z0-9._-])", key);
                goto out;
            }
            tenant_conf *t = &c->tenants[c->ntenants++];
            snprintf(t->name, sizeof t->name, "%s", key);
            memcpy(t->lim, c->def, sizeof t->lim);
            t->quotas = c->def_quotas;
            char path[96];
            snprintf(path, sizeof path, "tenants.%s", key);
            if (parse_classes(v, t->lim, &t->quotas, path, err, errlen))
                goto out;
        }
        qsort(c->tenants, c->ntenants, sizeof *c->tenants, tenant_cmp);
    }
    conf_note_any(c);
    *out = c;
    c = NULL;
    rc = 0;
out:
    json_decref(root);
    conf_free(c);
    return rc;
}

/* ---- the file ---- */

/* 1 when the file looks different from the one last read (a file that
 * is gone counts as the all-zero id, so its absence is reported once) */
static int file_changed(cm_ratelimit *rl, cm_file_id *id)
{
    if (cm_file_stat(rl->file, id) != 0)
        memset(id, 0, sizeof *id);
    return !rl->seen_valid || !cm_file_id_eq(id, &rl->seen);
}

static void install(cm_ratelimit *rl, conf *c)
{
    pthread_rwlock_wrlock(&rl->conf_mu);
    conf *old = rl->conf;
    rl->conf = c;
    atomic_store(&rl->off, !c->any);
    atomic_fetch_add(&rl->gen, 1);
    pthread_rwlock_unlock(&rl->conf_mu);
    conf_free(old);
}

/* re-reads the file when it changed; force: even when it looks the same.
 * 1 when a new configuration is in force, 0 when nothing changed */
static int reload_locked(cm_ratelimit *rl, int force, char *err, size_t errlen)
{
    cm_file_id id;
    if (!file_changed(rl, &id) && !force)
        return 0;
    /* remembered good or bad: only the file's next change is read (and a
     * bad one reported) again */
    rl->seen = id;
    rl->seen_valid = 1;
    conf *c = NULL;
    int rc = conf_build(rl->base, rl->file, &c, err, errlen);
    if (rc)
        return rc;
    install(rl, c);
    return 1;
}

int cm_ratelimit_reload(cm_ratelimit *rl, int force, char *err, size_t errlen)
{
    if (!rl || !rl->file)
        return 0;
    pthread_mutex_lock(&rl->reload_mu);
    int rc = reload_locked(rl, force, err, errlen);
    pthread_mutex_unlock(&rl->reload_mu);
    return rc;
}

/* ---- buckets ---- */

static void bucket_set_limit(bucket *b, cm_ratelimit_limit l, int64_t now)
{
    /* another limit: start full under it (its debt was counted in the old
     * one's units) */
    if (l.rate != b->limit.rate || l.burst != b->limit.burst)
        b->tat = now;
    b->limit = l;
    if (l.rate > 0) {
        b->interval = (int64_t)llround(1e9 / l.rate);
        if (b->interval < 1)
            b->interval = 1;
        b->tolerance = (int64_t)llround(l.burst * 1e9 / l.rate);
    } else {
        b->interval = 0;
        b->tolerance = 0;
    }
}

static void lru_unlink(shard *s, bucket *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        s->head = b->next;
    if (b->next)
        b->next->prev = b->prev;
    else
        s->tail = b->prev;
    b->prev = b->next = NULL;
}

static void lru_front(shard *s, bucket *b)
{
    b->next = s->head;
    b->prev = NULL;
    if (s->head)
        s->head->prev = b;
    s->head = b;
    if (!s->tail)
        s->tail = b;
}

static void hash_remove(shard *s, bucket *b)
{
    bucket **pp = &s->slots[(b->hash >> 6) & (s->nslots - 1)];
    while (*pp && *pp != b)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = b->hnext;
    b->hnext = NULL;
}

/* a new bucket for tenant/cls, reusing the least recently used one when
 * the shard is full (so a flood of made-up tenants is bounded) */
static bucket *bucket_make(shard *s, uint64_t h, const char *tenant, int cls)
{
    bucket *b;
    if (s->n < s->cap) {
        b = calloc(1, sizeof *b);
        if (!b)
            return NULL;
        s->n++;
    } else {
        b = s->tail;
        lru_unlink(s, b);
        hash_remove(s, b);
    }
    memset(b, 0, sizeof *b);
    b->hash = h;
    b->cls = cls;
    snprintf(b->tenant, sizeof b->tenant, "%s", tenant);
    size_t i = (h >> 6) & (s->nslots - 1);
    b->hnext = s->slots[i];
    s->slots[i] = b;
    lru_front(s, b);
    return b;
}

static cm_counter *refusal_counter(cm_ratelimit *rl, const char *tenant, int cls)
{
    if (!rl->metrics)
        return NULL;
    pthread_mutex_lock(&rl->metrics_mu);
    cm_counter *c = NULL;
    metric_tenant *m = NULL;
    for (size_t i = 0; i < rl->nmt && !m; i++)
        if (strcmp(rl->mt[i].name, tenant) == 0)
            m = &rl->mt[i];
    if (!m && rl->nmt < METRIC_TENANTS && cm_auth_tenant_valid(tenant)) {
        m = &rl->mt[rl->nmt++];
        snprintf(m->name, sizeof m->name, "%s", tenant);
    }
    cm_counter **slot = m ? &m->c[cls] : &rl->other[cls];
    if (!*slot) {
        char labels[160];
        snprintf(labels, sizeof labels, "tenant=\"%s\",class=\"%s\"", m ? m->name : "_other",
                 class_names[cls]);
        *slot = cm_metrics_counter(rl->metrics, "rpc_server_rate_limited_total",
                                   "calls refused by a tenant's rate limit, by tenant (the first "
                                   "32 refused; the rest _other) and class",
                                   labels);
    }
    c = *slot;
    pthread_mutex_unlock(&rl->metrics_mu);
    return c;
}

/* n tokens: with charge, taken whatever the bucket holds (it may go into
 * debt, which later takes wait out); else one, or a refusal */
static int take(cm_ratelimit *rl, const char *tenant, cm_ratelimit_class cls, unsigned n,
                int charge, cm_ratelimit_refusal *why)
{
    if (!rl || !tenant || (unsigned)cls >= CM_RATELIMIT_NCLASSES)
        return 0;
    if (atomic_load_explicit(&rl->off, memory_order_relaxed))
        return 0; /* no limit configured: no clock read either */
    int64_t now = rl->now_ns(rl->clock_arg);
    if (strlen(tenant) > TENANT_MAX)
        return 0; /* the runtime never lets such a tenant through */
    uint64_t h = hash_of(tenant, cls);
    shard *s = &rl->shards[h % SHARDS];
    unsigned gen = atomic_load_explicit(&rl->gen, memory_order_acquire);
    pthread_mutex_lock(&s->mu);
    bucket *b = s->slots[(h >> 6) & (s->nslots - 1)];
    while (b && !(b->hash == h && b->cls == (int)cls && strcmp(b->tenant, tenant) == 0))
        b = b->hnext;
    if (!b || b->gen != gen) {
        pthread_rwlock_rdlock(&rl->conf_mu);
        cm_ratelimit_limit l = conf_limit(rl->conf, tenant, cls);
        gen = atomic_load(&rl->gen);
        pthread_rwlock_unlock(&rl->conf_mu);
        if (!b && !(l.rate > 0)) {
            /* unlimited: no bucket to keep */
            pthread_mutex_unlock(&s->mu);
            return 0;
        }
        if (!b) {
            b = bucket_make(s, h, tenant, cls);
            if (!b) {
                pthread_mutex_unlock(&s->mu);
                return 0; /* out of memory: let the call through rather than fail it */
            }
            b->tat = now; /* a new bucket is full */
        }
        b->gen = gen;
        bucket_set_limit(b, l, now);
    } else if (b != s->head) {
        lru_unlink(s, b);
        lru_front(s, b);
    }
    int rc = 0;
    if (b->interval) {
        int64_t tat = b->tat > now ? b->tat : now;
        int64_t next = tat + b->interval * (int64_t)n;
        if (charge) {
            b->tat = next;
        } else if (next - now > b->tolerance) {
            rc = CM_ELIMIT;
            if (why) {
                why->retry_ns = next - now - b->tolerance;
                why->limit = b->limit;
            }
        } else {
            b->tat = next;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        cm_counter *c = refusal_counter(rl, tenant, cls);
        if (c)
            cm_counter_add(c, 1);
    }
    return rc;
}

int cm_ratelimit_take(cm_ratelimit *rl, const char *tenant, cm_ratelimit_class cls,
                      cm_ratelimit_refusal *why)
{
    return take(rl, tenant, cls, 1, 0, why);
}

void cm_ratelimit_charge(cm_ratelimit *rl, const char *tenant, cm_ratelimit_class cls, unsigned n)
{
    if (n)
        take(rl, tenant, cls, n, 1, NULL);
}

cm_ratelimit_limit cm_ratelimit_limit_of(cm_ratelimit *rl, const char *tenant,
                                         cm_ratelimit_class cls)
{
    pthread_rwlock_rdlock(&rl->conf_mu);
    cm_ratelimit_limit l = conf_limit(rl->conf, tenant, cls);
    pthread_rwlock_unlock(&rl->conf_mu);
    return l;
}

long long cm_ratelimit_quota(cm_ratelimit *rl, const char *tenant, const char *name, long long def)
{
    if (!rl || !tenant)
        return def;
    pthread_rwlock_rdlock(&rl->conf_mu);
    const tenant_conf *t = conf_tenant(rl->conf, tenant);
    const quotas *q = t ? &t->quotas : &rl->conf->def_quotas;
    for (int i = 0; i < q->n; i++)
        if (strcmp(q->q[i].name, name) == 0)
            def = q->q[i].value;
    pthread_rwlock_unlock(&rl->conf_mu);
    return def;
}

int cm_ratelimit_off(const cm_ratelimit *rl)
{
    return !rl || atomic_load_explicit(&rl->off, memory_order_relaxed);
}

size_t cm_ratelimit_buckets(cm_ratelimit *rl)
{
    size_t n = 0;
    for (int i = 0; i < SHARDS; i++) {
        pthread_mutex_lock(&rl->shards[i].mu);
        n += rl->shards[i].n;
        pthread_mutex_unlock(&rl->shards[i].mu);
    }
    return n;
}

/* ---- life ---- */

int cm_ratelimit_new(cm_ratelimit **out, const cm_ratelimit_opts *o, char *err, size_t errlen)
{
    *out = NULL;
    cm_ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl)
        return CM_ENOMEM;
    rl->now_ns = o->now_ns ? o->now_ns : mono_ns;
    rl->clock_arg = o->clock_arg;
    rl->metrics = o->metrics;
    memcpy(rl->base, o->defaults, sizeof rl->base);
    pthread_rwlock_init(&rl->conf_mu, NULL);
    pthread_mutex_init(&rl->reload_mu, NULL);
    pthread_mutex_init(&rl->metrics_mu, NULL);
    size_t max = o->max_buckets ? o->max_buckets : DEF_MAX_BUCKETS;
    size_t cap = max / SHARDS ? max / SHARDS : 1;
    size_t nslots = 1;
    while (nslots < cap)
        nslots <<= 1;
    for (int i = 0; i < SHARDS; i++) {
        shard *s = &rl->shards[i];
        pthread_mutex_init(&s->mu, NULL);
        s->cap = cap;
        s->nslots = nslots;
        s->slots = calloc(nslots, sizeof *s->slots);
        if (!s->slots) {
            cm_ratelimit_free(rl);
            return CM_ENOMEM;
        }
    }
    int rc = 0;
    if (o->file && o->file[0] && !(rl->file = strdup(o->file)))
        rc = CM_ENOMEM;
    if (rc == 0) {
        pthread_mutex_lock(&rl->reload_mu);
        if (rl->file) {
            rc = reload_locked(rl, 1, err, errlen);
            if (rc > 0)
                rc = 0; /* read and in force */
        } else {
            conf *c = NULL;
            rc = conf_build(rl->base, NULL, &c, err, errlen);
            if (rc == 0)
                install(rl, c);
        }
        pthread_mutex_unlock(&rl->reload_mu);
    }
    if (rc) {
        cm_ratelimit_free(rl);
        return rc;
    }
    *out = rl;
    return 0;
}

void cm_ratelimit_free(cm_ratelimit *rl)
{
    if (!rl)
        return;
    for (int i = 0; i < SHARDS; i++) {
        shard *s = &rl->shards[i];
        for (bucket *b = s->head; b;) {
            bucket *next = b->next;
            free(b);
            b = next;
        }
        free(s->slots);
        pthread_mutex_destroy(&s->mu);
    }
    conf_free(rl->conf);
    free(rl->file);
    pthread_rwlock_destroy(&rl->conf_mu);
    pthread_mutex_destroy(&rl->reload_mu);
    pthread_mutex_destroy(&rl->metrics_mu);
    free(rl);
}
