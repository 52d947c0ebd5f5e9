/*
 * commerce-eventsvc: a service on the common runtime that exercises the
 * kafka backbone end to end, for tests/integration/test_events.c.
 *
 * producer role (uses_outbox): a writer thread writes events through the
 * outbox until the schema holds EVENTSVC_WRITE_TOTAL of them, EVENTSVC_BATCH
 * per transaction, over EVENTSVC_KEYS keys; each event's payload is its
 * key's next sequence number, taken from the key's gen row (locked: the
 * aggregate). resumable: a restarted writer continues where the database
 * says it stopped. Put(key, value) writes one event with that payload (a
 * "poison" value is rejected by the consumer).
 *
 * consumer role: applies each event to counters(key): n+1, last_seq, and
 * counts an arrival out of sequence. EVENTSVC_CRASH_AFTER=N kills the
 * process (SIGKILL) right after the N-th effect committed, before its offset
 * is stored: the worst moment.
 *
 * for scripts/bench.sh events: EVENTSVC_RATE=R paces the writer at R events/s
 * (0: as fast as it goes); every payload carries the wall-clock time (unix
 * µs, CLOCK_REALTIME) taken just before its transaction's COMMIT, "seq ts".
 * EVENTSVC_LATENCY_FILE makes the consumer record, after each effect's
 * commit, now - ts, and write at exit one json line: events, the first
 * event's commit time, the last effect's, and latency percentiles.
 * EVENTSVC_CONSUMER_BATCH sets the consumer's batch size.
 * EVENTSVC_WRITERS=N runs N writer threads, writer w owning the keys whose
 * number is w modulo N (so each key still has one writer and one order) and
 * its share of the events and of the rate. EVENTSVC_WARMUP=1 makes the
 * writers wait until one event on key "warmup" (payload "0", no time) went
 * through the relay and kafka's ack: the writer starts before the relay and
 * its producer exist, and the first produce to a new topic waits for its
 * metadata, which a latency measurement must not count.
 * EVENTSVC_WRITER_FILE makes the producer write at exit one json line with
 * the writers' commit times (from the time in the payload to COMMIT's
 * return): the producer-side share of the latency.
 *
 * environment: EVENTSVC_SCHEMA, EVENTSVC_TOPIC, EVENTSVC_ROLE
 * (producer|consumer|both), EVENTSVC_WRITE_TOTAL, EVENTSVC_KEYS,
 * EVENTSVC_BATCH, EVENTSVC_PAUSE_MS (between writer transactions),
 * EVENTSVC_CRASH_AFTER, EVENTSVC_SESSION_TIMEOUT_MS, EVENTSVC_RATE,
 * EVENTSVC_LATENCY_FILE, EVENTSVC_CONSUMER_BATCH, plus the runtime's.
 */
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "cm_rpc.h"
#include "cm_service.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commerce/test/v1/test.pb-c.h"

extern const cm_migration eventsvc_migrations[];
extern const size_t eventsvc_migrations_count;

typedef struct evs_settings {
    char schema[64];
    char topic[250];
    int producer;
    int consumer;
    long write_total;
    int keys;
    int batch;
    int pause_ms;
    long crash_after;
    char session_timeout[24];
    long rate;
    int consumer_batch;
    char latency_file[512];
    int writers;
    int warmup;
    char writer_file[512];
} evs_settings;

static evs_settings cfg;

#define MAX_WRITERS 64

typedef struct evs_app evs_app;

typedef struct evs_writer {
    evs_app *app;
    int index;
    pthread_t thread;
    int started;
} evs_writer;

struct evs_app {
    cm_service *svc;
    evs_writer writers[MAX_WRITERS];
    atomic_int warm; /* 1 once the warm-up event was acknowledged */
    atomic_int stop;
    /* writer commit times in µs (payload time to COMMIT's return), one per
     * transaction, from every writer thread */
    pthread_mutex_t commit_mu;
    uint32_t *commit;
    size_t ncommit, capcommit;
    atomic_long applied; /* effects committed by this process */
    /* commit-to-effect latencies in µs, recorded on the consumer thread and
     * read after it stopped */
    uint32_t *lat;
    uint32_t *lat_relay; /* to the record's kafka timestamp: the relay's share */
    size_t nlat, caplat;
    int64_t first_commit_us, last_effect_us;
    int64_t first_produce_us; /* earliest kafka timestamp: the relay's start */
};

/* ---- settings ---- */

static long env_long(const char *name, long def, long lo, long hi)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end = NULL;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < lo || n > hi) {
        fprintf(stderr,
                "commerce-eventsvc: %s: must be an integer between %ld and %ld, got \"%s\"\n", name,
                lo, hi, v);
        exit(2);
    }
    return n;
}

static void load_settings(void)
{
    const char *s = getenv("EVENTSVC_SCHEMA");
    snprintf(cfg.schema, sizeof cfg.schema, "%s", s && *s ? s : "eventsvc");
    const char *t = getenv("EVENTSVC_TOPIC");
    snprintf(cfg.topic, sizeof cfg.topic, "%s", t && *t ? t : "commerce.eventsvc.v1");
    const char *role = getenv("EVENTSVC_ROLE");
    if (!role || !*role || strcmp(role, "both") == 0) {
        cfg.producer = cfg.consumer = 1;
    } else if (strcmp(role, "producer") == 0) {
        cfg.producer = 1;
    } else if (strcmp(role, "consumer") == 0) {
        cfg.consumer = 1;
    } else {
        fprintf(stderr,
                "commerce-eventsvc: EVENTSVC_ROLE: producer, consumer or both, got \"%s\"\n", role);
        exit(2);
    }
    cfg.write_total = env_long("EVENTSVC_WRITE_TOTAL", 0, 0, 100000000);
    cfg.keys = (int)env_long("EVENTSVC_KEYS", 8, 1, 100000);
    cfg.batch = (int)env_long("EVENTSVC_BATCH", 10, 1, 10000);
    cfg.pause_ms = (int)env_long("EVENTSVC_PAUSE_MS", 0, 0, 60000);
    cfg.crash_after = env_long("EVENTSVC_CRASH_AFTER", 0, 0, 100000000);
    long st = env_long("EVENTSVC_SESSION_TIMEOUT_MS", 0, 0, 3600000);
    if (st > 0)
        snprintf(cfg.session_timeout, sizeof cfg.session_timeout, "%ld", st);
    cfg.rate = env_long("EVENTSVC_RATE", 0, 0, 10000000);
    cfg.consumer_batch = (int)env_long("EVENTSVC_CONSUMER_BATCH", 0, 0, 10000);
    const char *lf = getenv("EVENTSVC_LATENCY_FILE");
    snprintf(cfg.latency_file, sizeof cfg.latency_file, "%s", lf ? lf : "");
    cfg.writers = (int)env_long("EVENTSVC_WRITERS", 1, 1, MAX_WRITERS);
    if (cfg.writers > cfg.keys) {
        fprintf(stderr, "commerce-eventsvc: EVENTSVC_WRITERS must not exceed EVENTSVC_KEYS\n");
        exit(2);
    }
    cfg.warmup = (int)env_long("EVENTSVC_WARMUP", 0, 0, 1);
    const char *wf = getenv("EVENTSVC_WRITER_FILE");
    snprintf(cfg.writer_file, sizeof cfg.writer_file, "%s", wf ? wf : "");
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- producer side ---- */

static int add_event(cm_db *db, const char *key, const char *payload)
{
    char id[CM_ID_SIZE];
    int rc = cm_id_uuid7(id);
    if (rc)
        return rc;
    const char *const extra[] = {"x-eventsvc", "1", NULL};
    cm_outbox_event ev = {
        .event_id = id,
        .tenant_id = "tenant-events",
        .topic = cfg.topic,
        .key = key,
        .type = "commerce.test.v1.Counted",
        .source = "/commerce/eventsvc",
        .payload = payload,
        .len = strlen(payload),
        .content_type = "text/plain",
        .traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        .headers = extra,
    };
    return cm_outbox_add(db, &ev);
}

typedef struct write_tx {
    long next; /* the writer's running event number: picks the key */
    int n;
    int index;       /* the writer's number */
    int nkeys;       /* how many keys it owns */
    int64_t last_ts; /* the time put in the transaction's last payload */
} write_tx;

/* keys a writer owns: index, index + writers, index + 2 * writers, ... */
static int keys_of(int index)
{
    return cfg.keys / cfg.writers + (index < cfg.keys % cfg.writers ? 1 : 0);
}

static int write_batch(cm_db *db, void *arg)
{
    write_tx *t = arg;
    for (int i = 0; i < t->n; i++) {
        char key[32];
        snprintf(key, sizeof key, "k%ld",
                 t->index + (long)cfg.writers * ((t->next + i) % t->nkeys));
        const char *p[] = {key};
        PGresult *r = NULL;
        /* the key's row lock orders its events: the id is drawn after it */
        int rc = cm_db_exec(db, "next seq",
                            "INSERT INTO gen (key, next_seq) VALUES ($1, 1) ON CONFLICT (key) DO "
                            "UPDATE SET next_seq = gen.next_seq + 1 RETURNING next_seq - 1",
                            1, p, &r);
        if (rc)
            return rc;
        char payload[48];
        /* the insert is the transaction's last statement before COMMIT for
         * a one-event transaction, which is how the paced writer runs */
        t->last_ts = now_us();
        snprintf(payload, sizeof payload, "%s %lld", PQgetvalue(r, 0, 0), (long long)t->last_ts);
        PQclear(r);
        rc = add_event(db, key, payload);
        if (rc)
            return rc;
    }
    return 0;
}

/* the events writer index has committed: its keys' sequence rows */
static long written(cm_db *db, int index)
{
    char w[16], nw[16];
    snprintf(w, sizeof w, "%d", index);
    snprintf(nw, sizeof nw, "%d", cfg.writers);
    const char *p[] = {w, nw};
    PGresult *r = NULL;
    if (cm_db_exec(db, "count written",
                   "SELECT coalesce(sum(next_seq), 0) FROM gen WHERE key LIKE 'k%' AND "
                   "substr(key, 2)::int % $2::int = $1::int",
                   2, p, &r) != 0)
        return -1;
    long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void record_commit(evs_app *app, int64_t us)
{
    pthread_mutex_lock(&app->commit_mu);
    if (app->ncommit == app->capcommit) {
        size_t cap = app->capcommit ? app->capcommit * 2 : 65536;
        uint32_t *p = realloc(app->commit, cap * sizeof *p);
        if (!p) {
            pthread_mutex_unlock(&app->commit_mu);
            return;
        }
        app->commit = p;
        app->capcommit = cap;
    }
    app->commit[app->ncommit++] = us < 0 ? 0 : (us > UINT32_MAX ? UINT32_MAX : (uint32_t)us);
    pthread_mutex_unlock(&app->commit_mu);
}

static int warmup_tx(cm_db *db, void *arg)
{
    return add_event(db, "warmup", arg);
}

/* writes the warm-up event and waits until the relay published it (no longer
 * unsent: deleted, or marked with a retention) */
static int warm_up(evs_app *app, cm_db *db)
{
    if (cm_db_tx(db, NULL, 5, warmup_tx, "0") != 0)
        return -1;
    while (!atomic_load(&app->stop)) {
        PGresult *r = NULL;
        if (cm_db_exec(db, "warm-up published",
                       "SELECT count(*) = 0 FROM outbox WHERE key = 'warmup' AND published_at IS "
                       "NULL",
                       0, NULL, &r) != 0)
            return -1;
        int done = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (done) {
            cm_log_info("warm-up event published: writing", NULL);
            return 0;
        }
        nap_ms(10);
    }
    return -1;
}

static void *writer_main(void *arg)
{
    evs_writer *wr = arg;
    evs_app *app = wr->app;
    cm_db *db = NULL;
    char err[512];
    const cm_config *c = cm_service_config(app->svc);
    if (cm_db_connect(&db, c->pg_dsn, cfg.schema, err, sizeof err) != 0) {
        cm_log_error("writer could not connect", "detail", err, NULL);
        return NULL;
    }
    if (cfg.warmup) {
        /* writer 0 warms the path up; the others wait for it */
        if (wr->index == 0) {
            if (warm_up(app, db) == 0)
                atomic_store(&app->warm, 1);
        }
        while (!atomic_load(&app->warm) && !atomic_load(&app->stop))
            nap_ms(5);
    }
    /* this writer's share of the events and of the rate */
    long total = cfg.write_total / cfg.writers + (wr->index < cfg.write_total % cfg.writers);
    double rate = (double)cfg.rate / cfg.writers;
    int nkeys = keys_of(wr->index);
    long done = written(db, wr->index);
    long base = done;
    int64_t t0 = now_us();
    while (done >= 0 && done < total && !atomic_load(&app->stop)) {
        if (cfg.rate > 0) {
            /* open loop: event i is due at t0 + i / rate, late or not */
            int64_t due = t0 + (int64_t)((double)(done - base) * 1e6 / rate);
            int64_t wait = due - now_us();
            if (wait > 0) {
                struct timespec ts = {(time_t)(wait / 1000000), (long)(wait % 1000000) * 1000L};
                nanosleep(&ts, NULL);
            }
        }
        long left = total - done;
        write_tx t = {.next = done,
                      .n = left < cfg.batch ? (int)left : cfg.batch,
                      .index = wr->index,
                      .nkeys = nkeys};
        int rc = cm_db_tx(db, NULL, 5, write_batch, &t);
        if (rc == 0) {
            /* the part of the latency spent before the event is committed */
            if (cfg.writer_file[0])
                record_commit(app, now_us() - t.last_ts);
            done += t.n;
        } else {
            cm_log_warn("writer transaction failed, retrying", "error", cm_strerror(rc), NULL);
            nap_ms(100);
            done = written(db, wr->index);
        }
        if (cfg.pause_ms)
            nap_ms(cfg.pause_ms);
    }
    if (done >= total && total > 0)
        cm_log_info("writer done", NULL);
    cm_db_free(db);
    return NULL;
}

static int put_in_tx(cm_db *db, void *arg)
{
    const Commerce__Test__V1__PutRequest *req = arg;
    return add_event(db, req->key, req->value);
}

static int put(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Test__V1__PutRequest *req = (const void *)in;
    Commerce__Test__V1__PutResponse *resp = (void *)out;
    if (!cfg.producer)
        return cm_rpc_fail_err(ctx, CM_ESTATE, "not a producer");
    if (!req->key[0] || strlen(req->key) > 128)
        return cm_rpc_fail_field(ctx, "key", "must be 1 to 128 characters");
    int rc = cm_db_tx(cm_service_db(ctx), NULL, 5, put_in_tx, (void *)req);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not write the event");
    resp->created = 1;
    return 0;
}

static int noop(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    (void)ctx;
    (void)in;
    (void)out;
    return 0;
}

/* ---- consumer side ---- */

static int apply(cm_db *db, const cm_event *ev, void *arg)
{
    (void)arg;
    char text[48];
    if (ev->len == 0 || ev->len >= sizeof text)
        return CM_EINVAL;
    memcpy(text, ev->payload, ev->len);
    text[ev->len] = '\0';
    char *end = NULL;
    errno = 0;
    long seq = strtol(text, &end, 10);
    if (errno || (*end && *end != ' ') || seq < 0 || end == text)
        return CM_EINVAL; /* "poison" */
    *end = '\0';          /* the commit time after it is for after_commit */
    const char *p[] = {ev->key, text};
    return cm_db_exec(db, "apply event",
                      "INSERT INTO counters (key, n, last_seq, out_of_order) VALUES ($1, 1, "
                      "$2::int, ($2::int <> 0)::int) ON CONFLICT (key) DO UPDATE SET n = "
                      "counters.n + 1, last_seq = $2::int, out_of_order = counters.out_of_order "
                      "+ ($2::int <> counters.last_seq + 1)::int",
                      2, p, NULL);
}

/* the commit time in a "seq ts" payload, or -1 */
static int64_t payload_ts(const cm_event *ev)
{
    char text[48];
    if (ev->len == 0 || ev->len >= sizeof text)
        return -1;
    memcpy(text, ev->payload, ev->len);
    text[ev->len] = '\0';
    const char *sp = strchr(text, ' ');
    if (!sp)
        return -1;
    char *end = NULL;
    long long ts = strtoll(sp + 1, &end, 10);
    return *end || ts <= 0 ? -1 : (int64_t)ts;
}

static void record_latency(evs_app *app, const cm_event *ev)
{
    int64_t ts = payload_ts(ev);
    if (ts < 0)
        return;
    int64_t now = now_us();
    if (app->nlat == app->caplat) {
        size_t cap = app->caplat ? app->caplat * 2 : 65536;
        uint32_t *p = realloc(app->lat, cap * sizeof *p);
        if (!p)
            return;
        app->lat = p;
        p = realloc(app->lat_relay, cap * sizeof *p);
        if (!p)
            return;
        app->lat_relay = p;
        app->caplat = cap;
    }
    int64_t d = now - ts;
    int64_t dr = ev->timestamp_ms > 0 ? ev->timestamp_ms * 1000 - ts : 0;
    if (ev->timestamp_ms > 0 &&
        (app->first_produce_us == 0 || ev->timestamp_ms * 1000 < app->first_produce_us))
        app->first_produce_us = ev->timestamp_ms * 1000;
    app->lat_relay[app->nlat] = dr < 0 ? 0 : (dr > UINT32_MAX ? UINT32_MAX : (uint32_t)dr);
    app->lat[app->nlat++] = d < 0 ? 0 : (d > UINT32_MAX ? UINT32_MAX : (uint32_t)d);
    if (app->first_commit_us == 0 || ts < app->first_commit_us)
        app->first_commit_us = ts;
    if (now > app->last_effect_us)
        app->last_effect_us = now;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(const uint32_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i] / 1000.0;
}

static void write_latency(evs_app *app)
{
    FILE *f = fopen(cfg.latency_file, "w");
    if (!f) {
        cm_log_error("could not write the latency file", "path", cfg.latency_file, NULL);
        return;
    }
    qsort(app->lat, app->nlat, sizeof *app->lat, cmp_u32);
    qsort(app->lat_relay, app->nlat, sizeof *app->lat_relay, cmp_u32);
    fprintf(f,
            "{\"events\":%zu,\"first_commit_us\":%lld,\"last_effect_us\":%lld,"
            "\"first_produce_us\":%lld,\"relay_p50_ms\":%.3f,\"relay_p99_ms\":%.3f,"
            "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,"
            "\"max_ms\":%.3f}\n",
            app->nlat, (long long)app->first_commit_us, (long long)app->last_effect_us,
            (long long)app->first_produce_us, pct_ms(app->lat_relay, app->nlat, 0.50),
            pct_ms(app->lat_relay, app->nlat, 0.99), pct_ms(app->lat, app->nlat, 0.50),
            pct_ms(app->lat, app->nlat, 0.90), pct_ms(app->lat, app->nlat, 0.99),
            pct_ms(app->lat, app->nlat, 0.999), pct_ms(app->lat, app->nlat, 1.0));
    fclose(f);
}

static void write_commits(evs_app *app)
{
    FILE *f = fopen(cfg.writer_file, "w");
    if (!f) {
        cm_log_error("could not write the writer file", "path", cfg.writer_file, NULL);
        return;
    }
    qsort(app->commit, app->ncommit, sizeof *app->commit, cmp_u32);
    fprintf(f,
            "{\"transactions\":%zu,\"commit_p50_ms\":%.3f,\"commit_p99_ms\":%.3f,"
            "\"commit_p999_ms\":%.3f,\"commit_max_ms\":%.3f}\n",
            app->ncommit, pct_ms(app->commit, app->ncommit, 0.50),
            pct_ms(app->commit, app->ncommit, 0.99), pct_ms(app->commit, app->ncommit, 0.999),
            pct_ms(app->commit, app->ncommit, 1.0));
    fclose(f);
}

static void after_commit(const cm_event *ev, int duplicate, void *arg)
{
    evs_app *app = arg;
    if (duplicate)
        return;
    if (cfg.latency_file[0])
        record_latency(app, ev);
    long n = atomic_fetch_add(&app->applied, 1) + 1;
    if (cfg.crash_after > 0 && n == cfg.crash_after) {
        cm_log_warn("crashing after the effect, before the offset commit", NULL);
        raise(SIGKILL);
    }
}

/* ---- wiring ---- */

static void app_fini(cm_service *svc, void *arg);

static int app_init(cm_service *svc, void **out, char *err, size_t errlen)
{
    evs_app *app = calloc(1, sizeof *app);
    if (!app) {
        snprintf(err, errlen, "out of memory");
        return CM_ENOMEM;
    }
    app->svc = svc;
    pthread_mutex_init(&app->commit_mu, NULL);
    *out = app;
    if (cfg.producer && cfg.write_total > 0) {
        for (int i = 0; i < cfg.writers; i++) {
            evs_writer *w = &app->writers[i];
            w->app = app;
            w->index = i;
            if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
                snprintf(err, errlen, "could not start the writers");
                app_fini(svc, app);
                *out = NULL;
                return CM_ENOMEM;
            }
            w->started = 1;
        }
    }
    return 0;
}

static void app_fini(cm_service *svc, void *arg)
{
    (void)svc;
    evs_app *app = arg;
    atomic_store(&app->stop, 1);
    for (int i = 0; i < MAX_WRITERS; i++)
        if (app->writers[i].started)
            pthread_join(app->writers[i].thread, NULL);
    if (cfg.producer && cfg.writer_file[0])
        write_commits(app);
    /* the consumers have stopped: the latencies are complete */
    if (cfg.consumer && cfg.latency_file[0])
        write_latency(app);
    free(app->lat);
    free(app->lat_relay);
    free(app->commit);
    pthread_mutex_destroy(&app->commit_mu);
    free(app);
}

static const cm_rpc_method methods[] = {
    {"Put", put, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"Noop", noop, CM_RPC_NO_TENANT, NULL},
};

int main(int argc, char **argv)
{
    load_settings();
    static cm_service_consumer consumers[1];
    consumers[0] = (cm_service_consumer){
        .topic = cfg.topic,
        .group = "commerce.eventsvc",
        .handler = apply,
        .after_commit = after_commit,
        .batch_size = cfg.consumer_batch,
    };
    /* a restarted consumer gets its partitions once the dead member's
     * session expires: tests shorten it */
    const char *const kconf[] = {"session.timeout.ms", cfg.session_timeout, "heartbeat.interval.ms",
                                 "1000", NULL};
    const cm_service_def def = {
        .name = "eventsvc",
        .schema = cfg.schema,
        .grpc_port = 50058,
        .admin_port = 9098,
        .migrations = eventsvc_migrations,
        .nmigrations = eventsvc_migrations_count,
        .api = &commerce__test__v1__test_service__descriptor,
        .methods = methods,
        .nmethods = sizeof methods / sizeof methods[0],
        .app_init = app_init,
        .app_fini = app_fini,
        .uses_outbox = cfg.producer,
        .consumers = cfg.consumer ? consumers : NULL,
        .nconsumers = cfg.consumer ? 1 : 0,
        .kafka_consumer_conf = cfg.session_timeout[0] ? kconf : NULL,
    };
    return cm_service_main(argc, argv, &def);
}
