/*
 * the idempotent producer: one librdkafka handle, a poll thread serving
 * delivery reports, and a replacement of the handle after a fatal error
 * (an idempotent producer that lost its sequence state cannot go on).
 */
#include "cm_err.h"
#include "cm_kafka.h"
#include "cm_log.h"
#include "kafka_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POLL_MS 100
#define QUEUE_FULL_WAIT_S 10.0
#define PURGE_WAIT_MS 10000
#define ERROR_LOG_EVERY_S 30.0
#define MAX_TOPIC_STATS 256

typedef struct kmsg kmsg;

typedef struct topic_stats {
    char topic[256];
    cm_counter *ok;
    cm_counter *failed;
    cm_histogram *latency;
} topic_stats;

struct cm_kafka_producer {
    pthread_rwlock_t lock; /* read: produce; write: replacing rk */
    rd_kafka_t *rk;
    uint64_t generation; /* bumped when rk is replaced */
    char *brokers;
    char *client_id;
    char **conf; /* copied overrides, NULL-terminated pairs */
    int linger_ms;
    int message_timeout_ms;
    cm_metrics *metrics;
    pthread_t thread;
    int thread_started;
    atomic_int stop;
    atomic_int fatal;
    pthread_mutex_t stats_mu;
    topic_stats *stats[MAX_TOPIC_STATS];
    size_t nstats;
    double last_error_log; /* rate limit for repeated broker errors */
    int last_error_code;
};

/* where a delivery report goes: a callback, or a batch slot */
struct kmsg {
    cm_kafka_delivery_fn cb;
    void *arg;
    cm_kafka_batch *batch;
    size_t index;
    double t0;
    int owned; /* malloc'd by cm_kafka_produce: freed after the report */
};

struct cm_kafka_batch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t cap;
    size_t n;
    size_t waiting; /* added, report not yet in */
    uint64_t generation;
    int has_generation;
    kmsg *msgs;
    cm_kafka_report *reports;
};

/* ---- shared helpers (kafka_internal.h) ---- */

double cm_kafka_mono_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int cm_kafka_topic_valid(const char *topic)
{
    if (!topic)
        return 0;
    size_t n = strlen(topic);
    if (n == 0 || n > 249)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = topic[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

void cm_kafka_label_escape(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    for (; in && *in && o + 3 < outlen; in++) {
        if (*in == '\n' || *in == '\r' || *in == '{' || *in == '}')
            continue;
        if (*in == '\\' || *in == '"')
            out[o++] = '\\';
        out[o++] = *in;
    }
    if (outlen)
        out[o < outlen ? o : outlen - 1] = '\0';
}

void cm_kafka_time_rfc3339(int64_t unix_ms, char out[CM_KAFKA_TIME_SIZE])
{
    time_t s = (time_t)(unix_ms / 1000);
    int ms = (int)(unix_ms % 1000);
    if (ms < 0) {
        ms += 1000;
        s -= 1;
    }
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, CM_KAFKA_TIME_SIZE - 6, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, CM_KAFKA_TIME_SIZE - n, ".%03dZ", ms % 1000);
}

int cm_kafka_map_err(rd_kafka_resp_err_t e, int *permanent)
{
    int perm = 0;
    int rc;
    switch (e) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        rc = 0;
        break;
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
        rc = CM_ETIMEDOUT;
        break;
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
    case RD_KAFKA_RESP_ERR__DESTROY:
        rc = CM_ECANCELLED;
        break;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR__BAD_MSG:
        rc = CM_EINVAL;
        perm = 1;
        break;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
        /* a configuration problem: blocking and alerting beats dropping */
        rc = CM_EPERM;
        break;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
    case RD_KAFKA_RESP_ERR__FATAL:
    default:
        rc = CM_EUNAVAIL;
        break;
    }
    if (permanent)
        *permanent = perm;
    return rc;
}

int cm_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *val, char *err,
                      size_t errlen)
{
    char why[512];
    if (rd_kafka_conf_set(conf, key, val, why, sizeof why) != RD_KAFKA_CONF_OK) {
        cm_err_set(err, errlen, "kafka setting %s: %s", key, why);
        return CM_EINVAL;
    }
    return 0;
}

/* librdkafka's internal threads call this: no librdkafka calls, nothing
 * slow (cm_log is one write(2)) */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    /* syslog levels; connection errors (3) repeat through an outage, and
     * the error callback already reports them */
    cm_log_level l = level <= 4 ? CM_LOG_WARN : level == 5 ? CM_LOG_INFO : CM_LOG_DEBUG;
    if (cm_log_enabled(l))
        cm_log(l, "kafka client log", "facility", fac, "detail", buf, NULL);
}

rd_kafka_conf_t *cm_kafka_conf_base(const char *brokers, const char *client_id,
                                    const char *const *overrides, char *err, size_t errlen)
{
    if (!brokers || !*brokers) {
        cm_err_set(err, errlen, "kafka bootstrap servers are required");
        return NULL;
    }
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (!conf) {
        cm_err_set(err, errlen, "out of memory");
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, on_log);
    int rc = cm_kafka_conf_set(conf, "bootstrap.servers", brokers, err, errlen);
    if (rc == 0 && client_id && *client_id)
        rc = cm_kafka_conf_set(conf, "client.id", client_id, err, errlen);
    /* brokers close idle connections; that is not worth a log line */
    if (rc == 0)
        rc = cm_kafka_conf_set(conf, "log.connection.close", "false", err, errlen);
    if (rc == 0)
        rc = cm_kafka_conf_set(conf, "socket.keepalive.enable", "true", err, errlen);
    for (size_t i = 0; rc == 0 && overrides && overrides[i]; i += 2) {
        if (!overrides[i + 1]) {
            cm_err_set(err, errlen, "kafka setting %s has no value", overrides[i]);
            rc = CM_EINVAL;
            break;
        }
        rc = cm_kafka_conf_set(conf, overrides[i], overrides[i + 1], err, errlen);
    }
    if (rc) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return conf;
}

/* ---- metrics ---- */

static topic_stats *stats_for(cm_kafka_producer *p, const char *topic)
{
    pthread_mutex_lock(&p->stats_mu);
    topic_stats *s = NULL;
    for (size_t i = 0; i < p->nstats; i++) {
        if (strcmp(p->stats[i]->topic, topic) == 0) {
            s = p->stats[i];
            break;
        }
    }
    if (!s && p->nstats < MAX_TOPIC_STATS && cm_kafka_topic_valid(topic) &&
        (s = calloc(1, sizeof *s)) != NULL) {
        snprintf(s->topic, sizeof s->topic, "%s", topic);
        char labels[320];
        snprintf(labels, sizeof labels, "topic=\"%s\",result=\"ok\"", topic);
        s->ok = cm_metrics_counter(p->metrics, "kafka_produced_total",
                                   "kafka messages by delivery outcome", labels);
        snprintf(labels, sizeof labels, "topic=\"%s\",result=\"error\"", topic);
        s->failed = cm_metrics_counter(p->metrics, "kafka_produced_total",
                                       "kafka messages by delivery outcome", labels);
        snprintf(labels, sizeof labels, "topic=\"%s\"", topic);
        s->latency = cm_metrics_histogram(p->metrics, "kafka_delivery_latency_seconds",
                                          "from produce to the broker's acknowledgement", labels,
                                          cm_metrics_latency_buckets, cm_metrics_latency_nbuckets);
        p->stats[p->nstats++] = s;
    }
    pthread_mutex_unlock(&p->stats_mu);
    return s;
}

static void stats_record(cm_kafka_producer *p, const char *topic, int ok, double latency)
{
    topic_stats *s = stats_for(p, topic);
    if (!s)
        return;
    if (ok) {
        if (s->ok)
            cm_counter_add(s->ok, 1);
        if (s->latency)
            cm_histogram_observe(s->latency, latency);
    } else if (s->failed) {
        cm_counter_add(s->failed, 1);
    }
}

/* ---- delivery ---- */

static void batch_complete(cm_kafka_batch *b, size_t index, const cm_kafka_report *r)
{
    pthread_mutex_lock(&b->mu);
    b->reports[index] = *r;
    if (b->waiting > 0 && --b->waiting == 0)
        pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    cm_kafka_producer *p = opaque;
    kmsg *k = m->_private;
    cm_kafka_report r = {.partition = m->partition, .offset = m->offset, .error = ""};
    r.rc = cm_kafka_map_err(m->err, &r.permanent);
    if (m->err)
        r.error = rd_kafka_err2str(m->err);
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR && m->offset < 0)
        r.offset = -1;
    const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
    stats_record(p, topic, r.rc == 0, k ? cm_kafka_mono_s() - k->t0 : 0);
    if (r.rc != 0 && cm_log_enabled(CM_LOG_DEBUG))
        cm_log_debug("kafka message not delivered", "topic", topic, "error", r.error, NULL);
    if (!k)
        return;
    if (k->batch) {
        batch_complete(k->batch, k->index, &r);
    } else {
        if (k->cb)
            k->cb(&r, k->arg);
        if (k->owned)
            free(k);
    }
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    cm_kafka_producer *p = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof why);
        cm_log_error("kafka producer fatal error: replacing the producer", "error",
                     rd_kafka_err2name(orig), "detail", why, NULL);
        atomic_store(&p->fatal, 1);
        return;
    }
    /* outages repeat the same error on every reconnect: once per 30 s */
    double now = cm_kafka_mono_s();
    cm_log_level lvl = CM_LOG_DEBUG;
    if (err != p->last_error_code || now - p->last_error_log > ERROR_LOG_EVERY_S) {
        lvl = CM_LOG_WARN;
        p->last_error_code = err;
        p->last_error_log = now;
    }
    if (cm_log_enabled(lvl))
        cm_log(lvl, "kafka producer error", "error", rd_kafka_err2name((rd_kafka_resp_err_t)err),
               "detail", reason, NULL);
}

/* ---- handle ---- */

static rd_kafka_t *create_rk(cm_kafka_producer *p, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = cm_kafka_conf_base(p->brokers, p->client_id, NULL, err, errlen);
    if (!conf)
        return NULL;
    char linger[16], timeout[16];
    snprintf(linger, sizeof linger, "%d", p->linger_ms);
    snprintf(timeout, sizeof timeout, "%d", p->message_timeout_ms);
    /* idempotence: retries never duplicate or reorder within a partition */
    int rc = cm_kafka_conf_set(conf, "enable.idempotence", "true", err, errlen);
    if (rc == 0)
        rc = cm_kafka_conf_set(conf, "acks", "all", err, errlen);
    if (rc == 0)
        rc = cm_kafka_conf_set(conf, "linger.ms", linger, err, errlen);
    if (rc == 0)
        rc = cm_kafka_conf_set(conf, "message.timeout.ms", timeout, err, errlen);
    /* the java client's hashing (kafka/README.md): a jvm producer or a
     * replay tool puts a key where we do */
    if (rc == 0)
        rc = cm_kafka_conf_set(conf, "partitioner", "murmur2_random", err, errlen);
    /* lz4 is bundled with librdkafka and cheap on cpu; without it, plain */
    if (rc == 0 && cm_kafka_conf_set(conf, "compression.codec", "lz4", NULL, 0) != 0)
        cm_log_info("kafka lz4 compression unavailable, sending uncompressed", NULL);
    for (size_t i = 0; rc == 0 && p->conf && p->conf[i]; i += 2)
        rc = cm_kafka_conf_set(conf, p->conf[i], p->conf[i + 1], err, errlen);
    if (rc) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, p);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    char why[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
    if (!rk) {
        cm_err_set(err, errlen, "could not create the kafka producer: %s", why);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return rk;
}

/* serves reports of rk until its queue is empty or timeout_ms passed */
static void drain_rk(rd_kafka_t *rk, int timeout_ms)
{
    double until = cm_kafka_mono_s() + timeout_ms / 1000.0;
    while (rd_kafka_outq_len(rk) > 0 && cm_kafka_mono_s() < until)
        rd_kafka_poll(rk, 50);
    rd_kafka_poll(rk, 0);
}

/* after a fatal error: a new handle for new messages; the old one's
 * messages fail (purged), so their senders retry them on the new one */
static void replace_rk(cm_kafka_producer *p)
{
    char err[512];
    pthread_rwlock_wrlock(&p->lock);
    rd_kafka_t *old = p->rk;
    rd_kafka_t *nrk = create_rk(p, err, sizeof err);
    if (nrk) {
        p->rk = nrk;
        p->generation++;
        atomic_store(&p->fatal, 0);
    }
    pthread_rwlock_unlock(&p->lock);
    if (!nrk) {
        cm_log_error("could not replace the kafka producer", "detail", err, NULL);
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
        return;
    }
    rd_kafka_purge(old, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    drain_rk(old, PURGE_WAIT_MS);
    rd_kafka_destroy(old);
    cm_log_info("kafka producer replaced", NULL);
}

static void *poll_main(void *arg)
{
    cm_kafka_producer *p = arg;
    while (!atomic_load(&p->stop)) {
        rd_kafka_poll(p->rk, POLL_MS);
        if (atomic_load(&p->fatal))
            replace_rk(p);
    }
    return NULL;
}

static void free_conf_copy(char **conf)
{
    for (size_t i = 0; conf && conf[i]; i++)
        free(conf[i]);
    free(conf);
}

static char **copy_conf(const char *const *conf)
{
    size_t n = 0;
    while (conf && conf[n])
        n++;
    char **c = calloc(n + 1, sizeof *c);
    if (!c)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (!(c[i] = strdup(conf[i]))) {
            free_conf_copy(c);
            return NULL;
        }
    }
    return c;
}

int cm_kafka_producer_new_opts(cm_kafka_producer **out, const cm_kafka_producer_opts *o, char *err,
                               size_t errlen)
{
    cm_err_set(err, errlen, "%s", "");
    if (!out || !o)
        return CM_EINVAL;
    *out = NULL;
    if (!o->brokers || !*o->brokers) {
        cm_err_set(err, errlen, "kafka bootstrap servers are required");
        return CM_EINVAL;
    }
    size_t nconf = 0;
    while (o->conf && o->conf[nconf])
        nconf++;
    if (nconf % 2) {
        cm_err_set(err, errlen, "kafka setting %s has no value", o->conf[nconf - 1]);
        return CM_EINVAL;
    }
    cm_kafka_producer *p = calloc(1, sizeof *p);
    if (!p) {
        cm_err_set(err, errlen, "out of memory");
        return CM_ENOMEM;
    }
    pthread_rwlock_init(&p->lock, NULL);
    pthread_mutex_init(&p->stats_mu, NULL);
    p->linger_ms = o->linger_ms > 0 ? o->linger_ms : CM_KAFKA_LINGER_MS;
    p->message_timeout_ms = o->message_timeout_ms > 0 ? o->message_timeout_ms : 0;
    p->metrics = o->metrics ? o->metrics : cm_metrics_default();
    p->brokers = strdup(o->brokers);
    p->client_id = strdup(o->client_id ? o->client_id : "commerce");
    p->conf = copy_conf(o->conf);
    int rc = 0;
    if (!p->brokers || !p->client_id || !p->conf) {
        cm_err_set(err, errlen, "out of memory");
        rc = CM_ENOMEM;
    } else if (!(p->rk = create_rk(p, err, errlen))) {
        rc = CM_EINVAL;
    } else if (pthread_create(&p->thread, NULL, poll_main, p) != 0) {
        cm_err_set(err, errlen, "could not start the kafka poll thread");
        rc = CM_ENOMEM;
    } else {
        p->thread_started = 1;
    }
    if (rc) {
        cm_kafka_producer_free(p, 0);
        return rc;
    }
    *out = p;
    return 0;
}

int cm_kafka_producer_new(cm_kafka_producer **out, const char *brokers, const char *client_id,
                          cm_metrics *metrics, char *err, size_t errlen)
{
    cm_kafka_producer_opts o = {.brokers = brokers, .client_id = client_id, .metrics = metrics};
    return cm_kafka_producer_new_opts(out, &o, err, errlen);
}

int cm_kafka_producer_outq(cm_kafka_producer *p)
{
    if (!p)
        return 0;
    pthread_rwlock_rdlock(&p->lock);
    int n = p->rk ? rd_kafka_outq_len(p->rk) : 0;
    pthread_rwlock_unlock(&p->lock);
    return n;
}

int cm_kafka_create_topic(cm_kafka_producer *p, const char *topic, int partitions, int replication,
                          const char *const *configs, int timeout_ms, char *err, size_t errlen)
{
    if (!p || !cm_kafka_topic_valid(topic) || partitions < 1) {
        snprintf(err, errlen, "bad topic or partition count");
        return CM_EINVAL;
    }
    char why[256] = "";
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(
        topic, partitions, replication > 0 ? replication : -1, why, sizeof why);
    if (!nt) {
        snprintf(err, errlen, "%s", why);
        return CM_EINVAL;
    }
    for (size_t i = 0; configs && configs[i] && configs[i + 1]; i += 2)
        rd_kafka_NewTopic_set_config(nt, configs[i], configs[i + 1]);
    int rc = CM_EUNAVAIL;
    pthread_rwlock_rdlock(&p->lock);
    rd_kafka_queue_t *q = p->rk ? rd_kafka_queue_new(p->rk) : NULL;
    rd_kafka_AdminOptions_t *o =
        p->rk ? rd_kafka_AdminOptions_new(p->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS) : NULL;
    if (q && o) {
        rd_kafka_AdminOptions_set_request_timeout(o, timeout_ms, NULL, 0);
        rd_kafka_AdminOptions_set_operation_timeout(o, timeout_ms, NULL, 0);
        rd_kafka_CreateTopics(p->rk, &nt, 1, o, q);
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms + 2000);
        const rd_kafka_CreateTopics_result_t *res =
            ev ? rd_kafka_event_CreateTopics_result(ev) : NULL;
        if (!ev) {
            snprintf(err, errlen, "no answer from the brokers in time");
        } else if (rd_kafka_event_error(ev)) {
            snprintf(err, errlen, "%s", rd_kafka_event_error_string(ev));
        } else if (res) {
            size_t n = 0;
            const rd_kafka_topic_result_t **t = rd_kafka_CreateTopics_result_topics(res, &n);
            rd_kafka_resp_err_t e =
                n ? rd_kafka_topic_result_error(t[0]) : RD_KAFKA_RESP_ERR_UNKNOWN;
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                rc = 0;
            } else {
                const char *m = n ? rd_kafka_topic_result_error_string(t[0]) : NULL;
                snprintf(err, errlen, "%s", m ? m : rd_kafka_err2str(e));
                if (e == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
                    e == RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED ||
                    e == RD_KAFKA_RESP_ERR_INVALID_REPLICATION_FACTOR ||
                    e == RD_KAFKA_RESP_ERR_INVALID_CONFIG)
                    rc = CM_EINVAL;
            }
        }
        if (ev)
            rd_kafka_event_destroy(ev);
    } else {
        snprintf(err, errlen, "no kafka client");
    }
    if (o)
        rd_kafka_AdminOptions_destroy(o);
    if (q)
        rd_kafka_queue_destroy(q);
    pthread_rwlock_unlock(&p->lock);
    rd_kafka_NewTopic_destroy(nt);
    return rc;
}

int cm_kafka_producer_flush(cm_kafka_producer *p, int timeout_ms)
{
    if (!p)
        return CM_EINVAL;
    double until = cm_kafka_mono_s() + timeout_ms / 1000.0;
    while (cm_kafka_producer_outq(p) > 0) {
        if (cm_kafka_mono_s() >= until)
            return CM_ETIMEDOUT;
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

void cm_kafka_producer_purge(cm_kafka_producer *p)
{
    if (!p)
        return;
    pthread_rwlock_rdlock(&p->lock);
    if (p->rk)
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    pthread_rwlock_unlock(&p->lock);
}

void cm_kafka_producer_free(cm_kafka_producer *p, int timeout_ms)
{
    if (!p)
        return;
    if (p->rk && p->thread_started) {
        if (cm_kafka_producer_flush(p, timeout_ms > 0 ? timeout_ms : 0) != 0) {
            char n[16];
            snprintf(n, sizeof n, "%d", cm_kafka_producer_outq(p));
            cm_log_warn("kafka producer closing with undelivered messages: purging", "messages", n,
                        NULL);
            cm_kafka_producer_purge(p);
            (void)cm_kafka_producer_flush(p, PURGE_WAIT_MS);
        }
    }
    if (p->thread_started) {
        atomic_store(&p->stop, 1);
        pthread_join(p->thread, NULL);
    }
    if (p->rk) {
        /* whatever is left gets its report now, so every callback runs */
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        drain_rk(p->rk, PURGE_WAIT_MS);
        rd_kafka_destroy(p->rk);
    }
    for (size_t i = 0; i < p->nstats; i++)
        free(p->stats[i]);
    free_conf_copy(p->conf);
    free(p->brokers);
    free(p->client_id);
    pthread_mutex_destroy(&p->stats_mu);
    pthread_rwlock_destroy(&p->lock);
    free(p);
}

/* ---- produce ---- */

static int add_header(rd_kafka_headers_t *h, const char *name, const char *value)
{
    if (!value)
        return 0;
    return rd_kafka_header_add(h, name, -1, value, -1) == RD_KAFKA_RESP_ERR_NO_ERROR ? 0
                                                                                     : CM_ENOMEM;
}

static rd_kafka_headers_t *build_headers(const cm_kafka_msg *m)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(8 + m->nheaders);
    if (!h)
        return NULL;
    int rc = add_header(h, "ce_id", m->id);
    if (rc == 0 && m->id)
        rc = add_header(h, "ce_specversion", "1.0");
    if (rc == 0)
        rc = add_header(h, "ce_type", m->type);
    if (rc == 0)
        rc = add_header(h, "ce_source", m->source);
    if (rc == 0)
        rc = add_header(h, "ce_time", m->time);
    if (rc == 0)
        rc = add_header(h, "content-type", m->content_type);
    if (rc == 0)
        rc = add_header(h, "traceparent", m->traceparent);
    if (rc == 0)
        rc = add_header(h, "tenant-id", m->tenant_id);
    for (size_t i = 0; rc == 0 && i < m->nheaders; i++) {
        const cm_kafka_header *x = &m->headers[i];
        if (!x->name || (!x->value && x->len > 0)) {
            rc = CM_EINVAL;
            break;
        }
        if (rd_kafka_header_add(h, x->name, -1, x->value, (ssize_t)x->len) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
            rc = CM_ENOMEM;
    }
    if (rc) {
        rd_kafka_headers_destroy(h);
        return NULL;
    }
    return h;
}

/* gen: when non-NULL and *has_gen, the message must go to that generation's
 * handle (a batch never straddles two); otherwise it is recorded */
static int produce(cm_kafka_producer *p, const cm_kafka_msg *m, kmsg *k, uint64_t *gen,
                   int *has_gen)
{
    if (!p || !m || !cm_kafka_topic_valid(m->topic) || (!m->payload && m->len > 0) ||
        (!m->key && m->key_len > 0) || (m->nheaders > 0 && !m->headers)) {
        cm_log_error("invalid kafka message", "topic", m ? m->topic : NULL, NULL);
        return CM_EINVAL;
    }
    rd_kafka_headers_t *h = build_headers(m);
    if (!h)
        return CM_EINVAL;
    k->t0 = cm_kafka_mono_s();
    double until = k->t0 + QUEUE_FULL_WAIT_S;
    rd_kafka_resp_err_t e;
    for (;;) {
        pthread_rwlock_rdlock(&p->lock);
        if (gen && *has_gen && *gen != p->generation) {
            pthread_rwlock_unlock(&p->lock);
            rd_kafka_headers_destroy(h);
            return CM_EUNAVAIL;
        }
        e = rd_kafka_producev(
            p->rk, RD_KAFKA_V_TOPIC(m->topic), RD_KAFKA_V_KEY((void *)m->key, m->key_len),
            RD_KAFKA_V_VALUE((void *)m->payload, m->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(k), RD_KAFKA_V_END);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR && gen && !*has_gen) {
            *gen = p->generation;
            *has_gen = 1;
        }
        pthread_rwlock_unlock(&p->lock);
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL || cm_kafka_mono_s() >= until ||
            atomic_load(&p->stop))
            break;
        /* the poll thread frees room as reports come in */
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0; /* librdkafka owns h now */
    rd_kafka_headers_destroy(h);
    stats_record(p, m->topic, 0, 0);
    int rc = cm_kafka_map_err(e, NULL);
    cm_log(rc == CM_EINVAL ? CM_LOG_ERROR : CM_LOG_WARN, "could not produce kafka message", "topic",
           m->topic, "ce_id", m->id, "error", rd_kafka_err2str(e), NULL);
    return rc;
}

int cm_kafka_produce(cm_kafka_producer *p, const cm_kafka_msg *m, cm_kafka_delivery_fn cb,
                     void *arg)
{
    kmsg *k = calloc(1, sizeof *k);
    if (!k)
        return CM_ENOMEM;
    k->cb = cb;
    k->arg = arg;
    k->owned = 1;
    int rc = produce(p, m, k, NULL, NULL);
    if (rc)
        free(k);
    return rc;
}

typedef struct sync_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    cm_kafka_report r;
} sync_wait;

static void on_sync_delivery(const cm_kafka_report *r, void *arg)
{
    sync_wait *w = arg;
    pthread_mutex_lock(&w->mu);
    w->r = *r;
    w->done = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int cm_kafka_produce_sync(cm_kafka_producer *p, const cm_kafka_msg *m, cm_kafka_report *out)
{
    sync_wait w = {.done = 0};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    int rc = cm_kafka_produce(p, m, on_sync_delivery, &w);
    if (rc == 0) {
        pthread_mutex_lock(&w.mu);
        while (!w.done)
            pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        rc = w.r.rc;
        if (out)
            *out = w.r;
    } else if (out) {
        *out = (cm_kafka_report){.rc = rc, .error = "not enqueued", .partition = -1, .offset = -1};
    }
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return rc;
}

/* ---- batches ---- */

int cm_kafka_batch_new(cm_kafka_batch **out, size_t capacity)
{
    if (!out || capacity == 0)
        return CM_EINVAL;
    cm_kafka_batch *b = calloc(1, sizeof *b);
    if (!b)
        return CM_ENOMEM;
    b->msgs = calloc(capacity, sizeof *b->msgs);
    b->reports = calloc(capacity, sizeof *b->reports);
    if (!b->msgs || !b->reports) {
        free(b->msgs);
        free(b->reports);
        free(b);
        return CM_ENOMEM;
    }
    b->cap = capacity;
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    *out = b;
    return 0;
}

void cm_kafka_batch_free(cm_kafka_batch *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    size_t waiting = b->waiting;
    pthread_mutex_unlock(&b->mu);
    if (waiting) {
        /* a report would write into freed memory: better to leak */
        cm_log_error("kafka batch freed with reports outstanding: leaking it", NULL);
        return;
    }
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b->msgs);
    free(b->reports);
    free(b);
}

int cm_kafka_batch_reset(cm_kafka_batch *b)
{
    if (!b)
        return CM_EINVAL;
    pthread_mutex_lock(&b->mu);
    int rc = b->waiting ? CM_EINVAL : 0;
    if (rc == 0) {
        b->n = 0;
        b->has_generation = 0;
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

int cm_kafka_batch_add(cm_kafka_producer *p, cm_kafka_batch *b, const cm_kafka_msg *m)
{
    if (!p || !b || !m)
        return CM_EINVAL;
    if (b->n == b->cap)
        return CM_ELIMIT;
    size_t i = b->n;
    kmsg *k = &b->msgs[i];
    *k = (kmsg){.batch = b, .index = i};
    b->reports[i] =
        (cm_kafka_report){.rc = CM_EINTERNAL, .error = "no report", .partition = -1, .offset = -1};
    /* counted before producing: the report may arrive before producev
     * returns */
    pthread_mutex_lock(&b->mu);
    b->waiting++;
    pthread_mutex_unlock(&b->mu);
    int rc = produce(p, m, k, &b->generation, &b->has_generation);
    if (rc) {
        pthread_mutex_lock(&b->mu);
        b->waiting--;
        pthread_mutex_unlock(&b->mu);
        return rc;
    }
    b->n++;
    return 0;
}

int cm_kafka_batch_wait(cm_kafka_batch *b, int timeout_ms)
{
    if (!b)
        return CM_EINVAL;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms >= 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    int rc = 0;
    pthread_mutex_lock(&b->mu);
    while (b->waiting > 0) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&b->cv, &b->mu);
        } else if (pthread_cond_timedwait(&b->cv, &b->mu, &until) == ETIMEDOUT) {
            rc = b->waiting > 0 ? CM_ETIMEDOUT : 0;
            break;
        }
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

size_t cm_kafka_batch_size(const cm_kafka_batch *b)
{
    return b ? b->n : 0;
}

const cm_kafka_report *cm_kafka_batch_report(const cm_kafka_batch *b, size_t i)
{
    if (!b || i >= b->n)
        return NULL;
    return &b->reports[i];
}
