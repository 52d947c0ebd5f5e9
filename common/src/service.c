/*
 * the service runtime: wiring of config, log, db, rpc, admin and signals.
 * threads: the main thread runs a libuv loop (signals, db probe timer,
 * admin http); the gRPC workers run handlers; the drain runs on libuv's
 * thread pool so the loop keeps answering /readyz (503) while calls finish.
 */
#include "cm_service.h"
#include "cm_admin.h"
#include "cm_auth.h"
#include "cm_err.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "cm_ratelimit.h"

#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DB_PROBE_MS 1000

struct cm_service {
    const cm_service_def *def;
    cm_config cfg;
    uv_loop_t loop;
    cm_metrics *metrics;
    cm_db *db; /* main thread's: migrations and the health probe */
    cm_auth *auth;
    cm_ratelimit *ratelimit;
    cm_rpc_server *rpc;
    cm_admin *admin;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t probe;
    uv_timer_t creds; /* re-reads the JWKS, the peers' token files, RATE_LIMITS_FILE */
    cm_counter *c_reload[2], *c_reload_failed[2]; /* [0] the JWKS, [1] peer tokens */
    cm_gauge *g_jwks_keys;
    uv_work_t probe_req;
    int probing;      /* a probe is on the thread pool (loop thread only) */
    int probe_result; /* written by the pool thread, read in probe_done */
    uv_work_t drain;
    atomic_int draining;
    atomic_int db_up;
    int drain_cancelled;
    void *app;
    char domain[80];
    cm_gauge *up_gauge;
    /* events: NULL/0 unless the service uses the outbox or consumers */
    cm_kafka_producer *producer;
    cm_outbox_relay *relay;
    cm_consumer **consumers;
    size_t nconsumers;
    cm_rpc_client *peers[CM_CONFIG_PEERS_MAX];
    struct svc_ticker *tickers;
    size_t ntickers;
    struct db_pool *pool; /* the workers' connections */
};

/* the connections the gRPC workers share (DB_POOL of them, opened at the
 * start): a call takes one on its first cm_service_db and gives it back
 * when its handler returns (call_end). a call waits only when every
 * connection is lent; a worker holds at most one, so no call can wait on
 * another waiting call. common/README.md, "service: workers and
 * connections" */
typedef struct db_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    cm_db **idle; /* a stack: the most recently used first, its cache warm */
    size_t nidle, n;
    cm_gauge *in_use;
    cm_counter *waits;
} db_pool;

/* a descriptor's ticker, running */
typedef struct svc_ticker {
    cm_service *svc;
    const cm_service_ticker *def;
    cm_ticker *t;
    cm_db *db;  /* the ticker thread's own */
    int leader; /* singleton: this replica holds the lock */
    char lock[160];
} svc_ticker;

typedef struct svc_worker {
    cm_db *db;
    cm_service *svc;
} svc_worker;

const cm_config *cm_service_config(const cm_service *svc)
{
    return &svc->cfg;
}

uv_loop_t *cm_service_loop(cm_service *svc)
{
    return &svc->loop;
}

cm_metrics *cm_service_metrics(cm_service *svc)
{
    return svc->metrics;
}

cm_db *cm_service_main_db(cm_service *svc)
{
    return svc->db;
}

cm_kafka_producer *cm_service_producer(cm_service *svc)
{
    return svc->producer;
}

long long cm_service_int(const cm_service *svc, const char *knob)
{
    return cm_config_int(&svc->cfg, knob);
}

const char *cm_service_text(const cm_service *svc, const char *knob)
{
    return cm_config_text(&svc->cfg, knob);
}

const char *cm_service_schema(const cm_service *svc)
{
    return svc->cfg.schema;
}

cm_rpc_client *cm_service_peer(cm_service *svc, const char *name)
{
    for (size_t i = 0; i < svc->def->npeers; i++)
        if (strcmp(svc->def->peers[i].name, name) == 0)
            return svc->peers[i];
    fprintf(stderr, "bug: %s is not a declared peer\n", name);
    abort();
}

static void pool_free(db_pool *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nidle; i++)
        cm_db_free(p->idle[i]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->idle);
    free(p);
}

static int pool_new(cm_service *svc, char *err, size_t errlen)
{
    db_pool *p = calloc(1, sizeof *p);
    size_t n = (size_t)(svc->cfg.db_pool < svc->cfg.workers ? svc->cfg.db_pool : svc->cfg.workers);
    if (!p || !(p->idle = calloc(n, sizeof *p->idle))) {
        free(p);
        return CM_ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    svc->pool = p;
    for (; p->nidle < n; p->nidle++) {
        int rc = cm_db_connect(&p->idle[p->nidle], svc->cfg.pg_dsn, svc->cfg.schema, err, errlen);
        if (rc)
            return rc;
    }
    p->n = n;
    p->in_use = cm_metrics_gauge(svc->metrics, "db_pool_in_use",
                                 "worker database connections lent to calls (of DB_POOL)", NULL);
    p->waits = cm_metrics_counter(svc->metrics, "db_pool_waits_total",
                                  "calls that waited for a worker database connection "
                                  "(all DB_POOL lent)",
                                  NULL);
    return 0;
}

static cm_db *pool_take(db_pool *p)
{
    pthread_mutex_lock(&p->mu);
    if (p->nidle == 0) {
        cm_counter_add(p->waits, 1);
        while (p->nidle == 0)
            pthread_cond_wait(&p->cv, &p->mu);
    }
    cm_db *db = p->idle[--p->nidle];
    cm_gauge_set(p->in_use, (double)(p->n - p->nidle));
    pthread_mutex_unlock(&p->mu);
    return db;
}

static void pool_give(db_pool *p, cm_db *db)
{
    pthread_mutex_lock(&p->mu);
    p->idle[p->nidle++] = db;
    cm_gauge_set(p->in_use, (double)(p->n - p->nidle));
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

cm_db *cm_service_db(const cm_rpc_ctx *ctx)
{
    svc_worker *w = cm_rpc_ctx_worker(ctx);
    if (!w)
        return NULL;
    if (!w->db)
        w->db = pool_take(w->svc->pool);
    /* a connection libpq already knows is dead is re-established before the
     * handler uses it (cm_db_ping reconnects), so one outage does not leave
     * this worker failing every call */
    if (PQstatus(cm_db_conn(w->db)) == CONNECTION_BAD)
        cm_db_ping(w->db);
    return w->db;
}

void cm_service_db_done(const cm_rpc_ctx *ctx)
{
    svc_worker *w = cm_rpc_ctx_worker(ctx);
    if (w && w->db) {
        pool_give(w->svc->pool, w->db);
        w->db = NULL;
    }
}

void *cm_service_app(const cm_rpc_ctx *ctx)
{
    svc_worker *w = cm_rpc_ctx_worker(ctx);
    return w ? w->svc->app : NULL;
}

/* def's methods without those RPC_DISABLE names (README, "Settings"): a
 * disabled method is not registered, so core answers UNIMPLEMENTED as a
 * version without it would (a rolling upgrade's mixed replicas, tested
 * that way; an operator's switch for a misbehaving RPC). a name the
 * service does not have is an error: a typo must not pass for done */
static int served_methods(const cm_service_def *def, const char *disable, cm_rpc_method *out,
                          size_t *n, char *err, size_t errlen)
{
    *n = 0;
    for (size_t i = 0; i < def->nmethods; i++) {
        const char *name = def->methods[i].name;
        size_t len = strlen(name);
        int off = 0;
        for (const char *p = disable; *p && !off;) {
            const char *end = strchr(p, ',');
            size_t l = end ? (size_t)(end - p) : strlen(p);
            off = l == len && strncmp(p, name, len) == 0;
            p += l + (end ? 1 : 0);
        }
        if (off)
            cm_log_warn("method disabled by RPC_DISABLE: callers get UNIMPLEMENTED", "method", name,
                        NULL);
        else
            out[(*n)++] = def->methods[i];
    }
    for (const char *p = disable; *p;) {
        const char *end = strchr(p, ',');
        size_t l = end ? (size_t)(end - p) : strlen(p);
        int known = l == 0;
        for (size_t i = 0; i < def->nmethods && !known; i++)
            known = strlen(def->methods[i].name) == l && strncmp(def->methods[i].name, p, l) == 0;
        if (!known) {
            snprintf(err, errlen, "RPC_DISABLE: %.*s is not a method of this service", (int)l, p);
            return CM_EINVAL;
        }
        p += l + (end ? 1 : 0);
    }
    return 0;
}

static void *worker_init(int index, void *arg)
{
    cm_service *svc = arg;
    svc_worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->svc = svc;
    (void)index;
    return w;
}

/* the call's connection, if it took one, goes back to the pool */
static void call_end(void *state, void *arg)
{
    (void)arg;
    svc_worker *w = state;
    if (w->db) {
        pool_give(w->svc->pool, w->db);
        w->db = NULL;
    }
}

static void worker_fini(void *state, void *arg)
{
    call_end(state, arg);
    free(state);
}

static int ready(void *arg)
{
    cm_service *svc = arg;
    return !atomic_load(&svc->draining) && atomic_load(&svc->db_up);
}

/* the probe may block for a whole connect_timeout while the database is
 * unreachable, so it runs on libuv's thread pool: the loop keeps serving
 * /metrics and /readyz and reacting to signals meanwhile */
static void probe_work(uv_work_t *req)
{
    cm_service *svc = req->data;
    svc->probe_result = cm_db_ping(svc->db) == 0;
}

static void probe_done(uv_work_t *req, int status)
{
    cm_service *svc = req->data;
    svc->probing = 0;
    if (status != 0 || atomic_load(&svc->draining))
        return;
    int up = svc->probe_result;
    if (up != atomic_load(&svc->db_up)) {
        if (up)
            cm_log_info("database reachable again", NULL);
        else
            cm_log_error("database unreachable: reporting NOT_SERVING", NULL);
    }
    atomic_store(&svc->db_up, up);
    cm_gauge_set(svc->up_gauge, up);
    cm_rpc_server_set_serving(svc->rpc, up);
}

static void on_probe(uv_timer_t *t)
{
    cm_service *svc = t->data;
    if (svc->probing)
        return; /* the previous probe is still waiting for the database */
    svc->probing = 1;
    svc->probe_req.data = svc;
    uv_queue_work(&svc->loop, &svc->probe_req, probe_work, probe_done);
}

/* after the gRPC drain (handlers may still have written outbox rows):
 * consumers first, so their dead letters go out through the producer, then
 * the relay's last batch, then whatever the producer still holds */
static void stop_events(cm_service *svc)
{
    int grace = svc->cfg.drain_grace_ms;
    for (size_t i = 0; i < svc->nconsumers; i++)
        cm_consumer_stop(svc->consumers[i], grace);
    cm_outbox_relay_stop(svc->relay, grace);
    if (svc->producer && cm_kafka_producer_flush(svc->producer, grace) != 0)
        cm_log_warn("kafka producer not flushed within the drain grace", NULL);
}

static void drain_work(uv_work_t *req)
{
    cm_service *svc = req->data;
    svc->drain_cancelled = cm_rpc_server_shutdown(svc->rpc, svc->cfg.drain_grace_ms);
    stop_events(svc);
}

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

/* the files a service re-reads while it runs — the JWKS, the peers' token
 * files, RATE_LIMITS_FILE — when they changed (force: SIGHUP). one stat(2)
 * each a second, on the loop, never on a call; a failure is logged once per
 * change of the file, never with key or token material */
static void reload_files(cm_service *svc, int force)
{
    char err[512];
    int rc = cm_ratelimit_reload(svc->ratelimit, force, err, sizeof err);
    if (rc == 1)
        cm_log_info("rate limits reloaded", "file", svc->cfg.rate_limits_file, NULL);
    else if (rc < 0)
        cm_log_error("could not reload the rate limits: keeping the ones in force", "file",
                     svc->cfg.rate_limits_file, "detail", err, NULL);
    rc = cm_auth_reload(svc->auth, force, err, sizeof err);
    if (rc == 1) {
        cm_auth_jwks_stats st;
        cm_auth_jwks_stats_get(svc->auth, &st);
        char keys[16];
        snprintf(keys, sizeof keys, "%d", st.keys);
        cm_counter_add(svc->c_reload[0], 1);
        cm_gauge_set(svc->g_jwks_keys, st.keys);
        cm_log_info("jwks reloaded", "keys", keys, NULL);
    } else if (rc < 0) {
        cm_counter_add(svc->c_reload_failed[0], 1);
        cm_log_error("could not reload the jwks", "detail", err, NULL);
    }
    for (size_t i = 0; i < svc->def->npeers; i++) {
        rc = cm_rpc_client_reload_token(svc->peers[i], force, err, sizeof err);
        if (rc == 1) {
            cm_counter_add(svc->c_reload[1], 1);
            cm_log_info("peer token reloaded", "peer", svc->def->peers[i].name, NULL);
        } else if (rc < 0) {
            cm_counter_add(svc->c_reload_failed[1], 1);
            cm_log_error("could not reload a peer token", "peer", svc->def->peers[i].name, "detail",
                         err, NULL);
        }
    }
}

static void on_creds_timer(uv_timer_t *t)
{
    reload_files(t->data, 0);
}

static void on_sighup(uv_signal_t *sig, int signum)
{
    (void)signum;
    reload_files(sig->data, 1);
}

static void start_creds(cm_service *svc)
{
    static const char *const help[] = {
        "key sets or tokens read after their file changed",
        "changed key or token files that were refused (the old ones stay)"};
    static const char *const labels[] = {"file=\"jwks\"", "file=\"peer_token\""};
    for (int i = 0; i < 2; i++) {
        svc->c_reload[i] =
            cm_metrics_counter(svc->metrics, "auth_credential_reloads_total", help[0], labels[i]);
        svc->c_reload_failed[i] = cm_metrics_counter(
            svc->metrics, "auth_credential_reload_failures_total", help[1], labels[i]);
    }
    svc->g_jwks_keys =
        cm_metrics_gauge(svc->metrics, "auth_jwks_keys", "signing keys in the JWKS in use", NULL);
    cm_auth_jwks_stats st;
    cm_auth_jwks_stats_get(svc->auth, &st);
    cm_gauge_set(svc->g_jwks_keys, st.keys);
    uv_timer_init(&svc->loop, &svc->creds);
    svc->creds.data = svc;
    uv_timer_start(&svc->creds, on_creds_timer, 1000, 1000);
    uv_signal_init(&svc->loop, &svc->sighup);
    svc->sighup.data = svc;
    uv_signal_start(&svc->sighup, on_sighup, SIGHUP);
}

static void drain_done(uv_work_t *req, int status)
{
    cm_service *svc = req->data;
    (void)status;
    char n[16];
    snprintf(n, sizeof n, "%d", svc->drain_cancelled);
    cm_log_info("drained", "cancelled_calls", n, NULL);
    cm_admin_close(svc->admin);
    svc->admin = NULL;
    uv_close((uv_handle_t *)&svc->sigterm, on_closed);
    uv_close((uv_handle_t *)&svc->sigint, on_closed);
    uv_close((uv_handle_t *)&svc->sighup, on_closed);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    cm_service *svc = sig->data;
    if (atomic_exchange(&svc->draining, 1))
        return; /* a second signal while draining changes nothing */
    cm_log_info("draining", "signal", signum == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
    cm_rpc_server_set_serving(svc->rpc, 0);
    uv_timer_stop(&svc->probe);
    uv_close((uv_handle_t *)&svc->probe, on_closed);
    uv_timer_stop(&svc->creds);
    uv_close((uv_handle_t *)&svc->creds, on_closed);
    svc->drain.data = svc;
    uv_queue_work(&svc->loop, &svc->drain, drain_work, drain_done);
}

static int migrate(cm_service *svc)
{
    char err[512];
    const cm_service_def *def = svc->def;
    int rc = 0;
    /* the common tables first: the service's own migrations may refer to
     * them */
    if (def->uses_outbox)
        rc = cm_db_migrate_component(svc->db, svc->cfg.schema, "outbox", cm_outbox_migrations,
                                     cm_outbox_migrations_count, err, sizeof err);
    if (rc == 0 && def->nconsumers > 0)
        rc = cm_db_migrate_component(svc->db, svc->cfg.schema, "inbox", cm_inbox_migrations,
                                     cm_inbox_migrations_count, err, sizeof err);
    if (rc == 0)
        rc = cm_db_migrate(svc->db, svc->cfg.schema, def->migrations, def->nmigrations, err,
                           sizeof err);
    if (rc)
        cm_log_error("could not migrate", "schema", svc->cfg.schema, "detail", err, NULL);
    return rc;
}

static int start_events(cm_service *svc, char *err, size_t errlen)
{
    const cm_service_def *def = svc->def;
    if (!def->uses_outbox && def->nconsumers == 0)
        return 0;
    char client[96], group[96];
    snprintf(client, sizeof client, "commerce-%s", def->name);
    snprintf(group, sizeof group, "commerce.%s", def->name);
    cm_kafka_producer_opts po = {
        .brokers = svc->cfg.kafka_brokers,
        .client_id = client,
        .metrics = svc->metrics,
        .linger_ms = svc->cfg.kafka_linger_ms,
        .conf = def->kafka_conf,
    };
    int rc = cm_kafka_producer_new_opts(&svc->producer, &po, err, errlen);
    if (rc)
        return rc;
    if (def->uses_outbox) {
        cm_outbox_relay_opts ro = {
            .dsn = svc->cfg.pg_dsn,
            .schema = svc->cfg.schema,
            .producer = svc->producer,
            .metrics = svc->metrics,
            .retention_s = svc->cfg.outbox_retention_s,
        };
        rc = cm_outbox_relay_start(&svc->relay, &ro, err, errlen);
        if (rc)
            return rc;
    }
    if (def->nconsumers > 0) {
        svc->consumers = calloc(def->nconsumers, sizeof *svc->consumers);
        if (!svc->consumers)
            return CM_ENOMEM;
    }
    /* the consumers' settings: the shared ones, then their own */
    size_t nk = 0, nc = 0;
    while (def->kafka_conf && def->kafka_conf[nk])
        nk++;
    while (def->kafka_consumer_conf && def->kafka_consumer_conf[nc])
        nc++;
    const char **cconf = NULL;
    if (def->nconsumers > 0 && nk + nc > 0) {
        cconf = calloc(nk + nc + 1, sizeof *cconf);
        if (!cconf)
            return CM_ENOMEM;
        for (size_t i = 0; i < nk; i++)
            cconf[i] = def->kafka_conf[i];
        for (size_t i = 0; i < nc; i++)
            cconf[nk + i] = def->kafka_consumer_conf[i];
    }
    for (size_t i = 0; rc == 0 && i < def->nconsumers; i++) {
        const cm_service_consumer *sc = &def->consumers[i];
        if (sc->enabled_knob && !cm_config_int(&svc->cfg, sc->enabled_knob)) {
            cm_log_info("consumer off", "topic", sc->topic, "knob", sc->enabled_knob, NULL);
            continue;
        }
        const char *topic = sc->topic, *grp = sc->group ? sc->group : group;
        if (sc->topic_knob && *cm_config_text(&svc->cfg, sc->topic_knob))
            topic = cm_config_text(&svc->cfg, sc->topic_knob);
        if (sc->group_knob && *cm_config_text(&svc->cfg, sc->group_knob))
            grp = cm_config_text(&svc->cfg, sc->group_knob);
        int batch = sc->batch_size;
        if (sc->batch_knob && cm_config_int(&svc->cfg, sc->batch_knob) > 0)
            batch = (int)cm_config_int(&svc->cfg, sc->batch_knob);
        cm_consumer_opts co = {
            .brokers = svc->cfg.kafka_brokers,
            .topic = topic,
            .group = grp,
            .dsn = svc->cfg.pg_dsn,
            .schema = svc->cfg.schema,
            .fn = sc->handler,
            .arg = svc->app,
            .producer = svc->producer,
            .metrics = svc->metrics,
            .client_id = client,
            .conf = cconf,
            .after_commit = sc->after_commit,
            .tx_begin = sc->tx_begin,
            .tx_end = sc->tx_end,
            .idempotent = sc->idempotent,
            .batch_size = batch,
            .types = sc->types,
        };
        rc = cm_consumer_start(&svc->consumers[svc->nconsumers], &co, err, errlen);
        if (rc == 0)
            svc->nconsumers++;
    }
    free(cconf); /* the consumer copied what it needs */
    return rc;
}

/* consumers and relay are stopped (by the drain, or here with no grace
 * after a failed start) before the producer they use goes */
static void free_events(cm_service *svc)
{
    for (size_t i = 0; i < svc->nconsumers; i++)
        cm_consumer_free(svc->consumers[i]);
    free(svc->consumers);
    svc->consumers = NULL;
    svc->nconsumers = 0;
    cm_outbox_relay_free(svc->relay);
    svc->relay = NULL;
    cm_kafka_producer_free(svc->producer, svc->cfg.drain_grace_ms);
    svc->producer = NULL;
}

/* one tick: the connection made (again) if need be, the lock won if the
 * ticker is a singleton, then the service's function */
static void tick(void *arg)
{
    svc_ticker *st = arg;
    cm_service *svc = st->svc;
    char err[512];
    if (!st->db) {
        st->leader = 0;
        if (cm_db_connect(&st->db, svc->cfg.pg_dsn, svc->cfg.schema, err, sizeof err)) {
            cm_log_warn("ticker could not connect", "ticker", st->def->name, "detail", err, NULL);
            st->db = NULL;
            return;
        }
    }
    if (st->def->singleton && !st->leader) {
        const char *p[] = {st->lock};
        PGresult *r =
            PQexecParams(cm_db_conn(st->db), "SELECT pg_try_advisory_lock(hashtext($1::text))", 1,
                         NULL, p, NULL, NULL, 0);
        st->leader = PQresultStatus(r) == PGRES_TUPLES_OK && PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (st->leader)
            cm_log_info("ticker leads", "ticker", st->def->name, NULL);
    }
    if (!st->def->singleton || st->leader)
        st->def->fn(svc, st->db, svc->app);
    /* a session the server ended took the lock with it: start over */
    if (PQstatus(cm_db_conn(st->db)) == CONNECTION_BAD) {
        if (st->leader) {
            cm_log_warn("ticker lost its connection and its lead", "ticker", st->def->name, NULL);
            if (st->def->resign)
                st->def->resign(svc, svc->app);
        }
        cm_db_free(st->db);
        st->db = NULL;
        st->leader = 0;
    }
}

static int start_tickers(cm_service *svc, char *err, size_t errlen)
{
    const cm_service_def *def = svc->def;
    if (!def->ntickers)
        return 0;
    svc->tickers = calloc(def->ntickers, sizeof *svc->tickers);
    if (!svc->tickers)
        return CM_ENOMEM;
    for (size_t i = 0; i < def->ntickers; i++) {
        svc_ticker *st = &svc->tickers[i];
        st->svc = svc;
        st->def = &def->tickers[i];
        snprintf(st->lock, sizeof st->lock, "commerce.ticker.%s.%s", svc->cfg.schema,
                 st->def->name);
        long long period = cm_config_int(&svc->cfg, st->def->period_knob);
        if (period < 1 || period > 86400000LL || cm_ticker_start(&st->t, (int)period, tick, st)) {
            snprintf(err, errlen, "could not start ticker %s", st->def->name);
            return CM_EINVAL;
        }
        svc->ntickers = i + 1;
    }
    return 0;
}

/* before app_fini: a ticker may use the app state */
static void stop_tickers(cm_service *svc)
{
    for (size_t i = 0; i < svc->ntickers; i++) {
        cm_ticker_free(svc->tickers[i].t);
        cm_db_free(svc->tickers[i].db); /* a singleton's lock goes with its session */
    }
    free(svc->tickers);
    svc->tickers = NULL;
    svc->ntickers = 0;
}

static int start_peers(cm_service *svc, char *err, size_t errlen)
{
    for (size_t i = 0; i < svc->def->npeers; i++) {
        const cm_config_peer *p = &svc->cfg.peers[i];
        cm_rpc_client_opts o = {
            .target = p->target,
            .tls_ca_file = p->tls_ca_file[0] ? p->tls_ca_file : NULL,
            .tls_cert_file = p->tls_cert_file[0] ? p->tls_cert_file : NULL,
            .tls_key_file = p->tls_key_file[0] ? p->tls_key_file : NULL,
            .token_file = p->token_file[0] ? p->token_file : NULL,
            .max_message_bytes = (size_t)svc->cfg.max_message_bytes,
        };
        int rc = cm_rpc_client_new(&svc->peers[i], &o, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

static int build_auth(cm_service *svc, char *err, size_t errlen)
{
    /* mode off: the rpc runtime reads x-tenant-id itself */
    if (svc->cfg.auth_mode == CM_AUTH_OFF)
        return 0;
    cm_auth_settings as;
    cm_config_auth_settings(&svc->cfg, &as);
    return cm_auth_new(&as, &svc->auth, err, errlen);
}

static int build_ratelimit(cm_service *svc, char *err, size_t errlen)
{
    cm_ratelimit_opts o = {
        .file = svc->cfg.rate_limits_file,
        .metrics = svc->metrics,
    };
    for (int i = 0; i < CM_RATELIMIT_NCLASSES; i++)
        o.defaults[i] = (cm_ratelimit_limit){svc->cfg.rate_limit[i], 0};
    return cm_ratelimit_new(&svc->ratelimit, &o, err, errlen);
}

static int serve(cm_service *svc)
{
    char err[512];
    const cm_service_def *def = svc->def;
    snprintf(svc->domain, sizeof svc->domain, "%s.commerce", def->name);
    if (build_auth(svc, err, sizeof err)) {
        cm_log_error("could not set up authentication", "detail", err, NULL);
        return 2;
    }
    if (build_ratelimit(svc, err, sizeof err)) {
        cm_log_error("could not load the rate limits", "detail", err, NULL);
        return 2;
    }
    if (start_peers(svc, err, sizeof err)) {
        cm_log_error("could not set up a client of a peer service", "detail", err, NULL);
        return 1;
    }
    if (def->app_init && def->app_init(svc, &svc->app, err, sizeof err)) {
        cm_log_error("could not initialise the service", "detail", err, NULL);
        return 1;
    }
    if (start_tickers(svc, err, sizeof err)) {
        cm_log_error("could not start the tickers", "detail", err, NULL);
        return 1;
    }
    if (start_events(svc, err, sizeof err)) {
        cm_log_error("could not start the event relay and consumers", "detail", err, NULL);
        return 1;
    }
    if (pool_new(svc, err, sizeof err)) {
        cm_log_error("could not connect the workers' database pool", "detail", err, NULL);
        return 1;
    }
    cm_rpc_server_opts o = {
        .listen = svc->cfg.grpc_listen,
        .workers = svc->cfg.workers,
        .max_message_bytes = (size_t)svc->cfg.max_message_bytes,
        .metrics = svc->metrics,
        .worker_init = worker_init,
        .worker_fini = worker_fini,
        .call_end = call_end,
        .app = svc,
        .auth = svc->auth,
        .tls_cert_file = svc->cfg.tls_cert_file[0] ? svc->cfg.tls_cert_file : NULL,
        .tls_key_file = svc->cfg.tls_key_file[0] ? svc->cfg.tls_key_file : NULL,
        .tls_client_ca_file = svc->cfg.tls_client_ca_file[0] ? svc->cfg.tls_client_ca_file : NULL,
        .error_domain = svc->domain,
        .reflection = svc->cfg.reflection,
        .ratelimit = svc->ratelimit,
    };
    cm_rpc_method *served = calloc(def->nmethods ? def->nmethods : 1, sizeof *served);
    size_t nserved = 0;
    if (!served || served_methods(def, svc->cfg.rpc_disable, served, &nserved, err, sizeof err) ||
        cm_rpc_server_new(&svc->rpc, &o, err, sizeof err) ||
        cm_rpc_server_add_service(svc->rpc, def->api, served, nserved, err, sizeof err) ||
        cm_rpc_server_start(svc->rpc, err, sizeof err)) {
        cm_log_error("could not start the gRPC server", "detail", served ? err : "out of memory",
                     NULL);
        free(served);
        return 1;
    }
    free(served); /* the server copied what it needs */
    if (cm_admin_start(&svc->admin, &svc->loop, svc->cfg.admin_listen, svc->metrics, ready, svc,
                       err, sizeof err)) {
        cm_log_error("could not start the admin server", "detail", err, NULL);
        cm_rpc_server_shutdown(svc->rpc, 0);
        return 1;
    }
    svc->up_gauge = cm_metrics_gauge(svc->metrics, "db_up", "1 while the database answers", NULL);
    cm_gauge_set(svc->up_gauge, 1);
    atomic_store(&svc->db_up, 1);
    uv_timer_init(&svc->loop, &svc->probe);
    svc->probe.data = svc;
    uv_timer_start(&svc->probe, on_probe, DB_PROBE_MS, DB_PROBE_MS);
    uv_signal_init(&svc->loop, &svc->sigterm);
    uv_signal_init(&svc->loop, &svc->sigint);
    svc->sigterm.data = svc->sigint.data = svc;
    uv_signal_start(&svc->sigterm, on_signal, SIGTERM);
    uv_signal_start(&svc->sigint, on_signal, SIGINT);
    start_creds(svc);

    char port[16], admin_port[16];
    snprintf(port, sizeof port, "%d", cm_rpc_server_port(svc->rpc));
    snprintf(admin_port, sizeof admin_port, "%d", cm_admin_port(svc->admin));
    cm_log_info("serving", "grpc_port", port, "admin_port", admin_port, "version", COMMERCE_VERSION,
                NULL);
    uv_run(&svc->loop, UV_RUN_DEFAULT);
    return 0;
}

/* the README's table of roles per RPC, from the descriptor's method table */
static void rpc_markdown(const cm_service_def *def)
{
    printf("| RPC | class | roles |\n|---|---|---|\n");
    for (size_t i = 0; i < def->nmethods; i++) {
        const cm_rpc_method *m = &def->methods[i];
        const char *cls = cm_rpc_method_class(m->flags);
        printf("| `%s.%s` | %s | %s |\n", def->api->name, m->name, cls ? cls : "-",
               m->roles ? m->roles : "(none)");
    }
    fflush(stdout);
}

int cm_service_main(int argc, char **argv, const cm_service_def *def)
{
    if (argc == 2 && strcmp(argv[1], "--rpc-markdown") == 0) {
        rpc_markdown(def);
        return 0;
    }
    cm_config_defaults d = {
        .service = def->name,
        .grpc_port = def->grpc_port,
        .admin_port = def->admin_port,
        .schema = def->schema,
        .workers = def->workers,
        .knobs = def->knobs,
        .nknobs = def->nknobs,
        .peers = def->peers,
        .npeers = def->npeers,
    };
    int migrate_only = 0;
    int a = cm_config_main_args(argc, argv, &d, &migrate_only);
    if (a > 0)
        return 0;
    if (a < 0)
        return 2;

    /* blocks of 128 KB and more (Kafka fetch responses, big query
     * results, relay batches) get their own mappings, given back when
     * freed. glibc's default threshold rises to the largest such block
     * freed (up to 32 MB), after which they come from the threads' heaps
     * and stay there: commission's peak RSS draining a backlog was
     * 69-72 MB so, ~50 MB with the threshold fixed (common/README.md,
     * "service: memory") */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    cm_service *svc = calloc(1, sizeof *svc);
    if (!svc)
        return 1;
    svc->def = def;
    char err[512];
    if (cm_config_load(&svc->cfg, &d, err, sizeof err)) {
        fprintf(stderr, "commerce-%s: %s\n", def->name, err);
        free(svc);
        return 2;
    }
    cm_log_init(def->name, svc->cfg.log_level);
    if (svc->cfg.auth_mode == CM_AUTH_OFF)
        cm_log_warn("authentication is off: any caller picks its tenant with x-tenant-id",
                    "auth_mode", "off", "grpc_listen", svc->cfg.grpc_listen, "allow_insecure",
                    svc->cfg.allow_insecure ? "1" : "0", NULL);
    svc->metrics = cm_metrics_default();
    uv_loop_init(&svc->loop);

    int code = 1;
    if (cm_db_connect(&svc->db, svc->cfg.pg_dsn, svc->cfg.schema, err, sizeof err)) {
        cm_log_error("could not connect to database", "detail", err, NULL);
    } else if (migrate(svc) == 0) {
        code = migrate_only ? 0 : serve(svc);
    }

    if (svc->admin)
        cm_admin_close(svc->admin);
    /* close whatever is still open, then let the callbacks run */
    if (uv_loop_alive(&svc->loop)) {
        uv_run(&svc->loop, UV_RUN_NOWAIT);
    }
    cm_rpc_server_free(svc->rpc);
    pool_free(svc->pool);
    free_events(svc);
    stop_tickers(svc);
    if (def->app_fini && svc->app)
        def->app_fini(svc, svc->app);
    for (size_t i = 0; i < CM_CONFIG_PEERS_MAX; i++)
        cm_rpc_client_free(svc->peers[i]);
    cm_auth_free(svc->auth);
    cm_ratelimit_free(svc->ratelimit);
    cm_db_free(svc->db);
    if (uv_loop_close(&svc->loop) != 0)
        cm_log_warn("event loop closed with live handles", NULL);
    free(svc);
    if (code == 0)
        cm_log_info("stopped", NULL);
    return code;
}
