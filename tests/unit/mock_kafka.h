/*
 * test helpers around librdkafka's in-process mock cluster: start one, read
 * every record of a topic back with its headers. header-only (static
 * inline), shared by test_kafka_mock.c and test_outbox.c.
 */
#ifndef MOCK_KAFKA_H
#define MOCK_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct mk_cluster {
    rd_kafka_t *rk; /* the handle the mock cluster hangs off */
    rd_kafka_mock_cluster_t *mc;
    char brokers[128];
} mk_cluster;

#define MK_MAX_HEADERS 24

typedef struct mk_record {
    int32_t partition;
    int64_t offset;
    char key[256];
    char *payload; /* NUL-terminated copy */
    size_t len;
    size_t nheaders;
    char hname[MK_MAX_HEADERS][64];
    char hval[MK_MAX_HEADERS][256];
} mk_record;

static inline long long mk_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static inline void mk_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline int mk_start(mk_cluster *m, int brokers)
{
    memset(m, 0, sizeof *m);
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
    m->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!m->rk)
        return -1;
    m->mc = rd_kafka_mock_cluster_new(m->rk, brokers);
    if (!m->mc)
        return -1;
    snprintf(m->brokers, sizeof m->brokers, "%s", rd_kafka_mock_cluster_bootstraps(m->mc));
    return 0;
}

static inline void mk_stop(mk_cluster *m)
{
    if (m->mc)
        rd_kafka_mock_cluster_destroy(m->mc);
    if (m->rk)
        rd_kafka_destroy(m->rk);
    memset(m, 0, sizeof *m);
}

static inline const char *mk_header(const mk_record *r, const char *name)
{
    for (size_t i = r->nheaders; i > 0; i--)
        if (strcmp(r->hname[i - 1], name) == 0)
            return r->hval[i - 1];
    return NULL;
}

static inline void mk_records_free(mk_record *r, size_t n)
{
    for (size_t i = 0; r && i < n; i++)
        free(r[i].payload);
    free(r);
}

/* reads topic from the beginning of every partition (nparts of them) until
 * want records arrived or timeout_ms passed; returns how many were read
 * into *out (caller frees with mk_records_free). records come in partition
 * order per partition, interleaved across partitions. */
static inline size_t mk_read_topic(const char *brokers, const char *topic, int nparts, size_t want,
                                   int timeout_ms, mk_record **out)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", "mk-reader", err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    *out = NULL;
    if (!rk)
        return 0;
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(nparts);
    for (int p = 0; p < nparts; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    size_t cap = want > 0 ? want : 16, n = 0;
    mk_record *recs = calloc(cap, sizeof *recs);
    long long until = mk_now_ms() + timeout_ms;
    while (recs && n < want && mk_now_ms() < until) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m)
            continue;
        if (m->err) {
            rd_kafka_message_destroy(m);
            continue;
        }
        mk_record *r = &recs[n++];
        r->partition = m->partition;
        r->offset = m->offset;
        snprintf(r->key, sizeof r->key, "%.*s", (int)m->key_len, m->key ? (char *)m->key : "");
        r->payload = malloc(m->len + 1);
        if (r->payload) {
            if (m->len)
                memcpy(r->payload, m->payload, m->len);
            r->payload[m->len] = '\0';
        }
        r->len = m->len;
        rd_kafka_headers_t *h = NULL;
        if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            const char *name;
            const void *val;
            size_t len;
            for (size_t i = 0;
                 r->nheaders < MK_MAX_HEADERS &&
                 rd_kafka_header_get_all(h, i, &name, &val, &len) == RD_KAFKA_RESP_ERR_NO_ERROR;
                 i++) {
                snprintf(r->hname[r->nheaders], sizeof r->hname[0], "%s", name);
                snprintf(r->hval[r->nheaders], sizeof r->hval[0], "%.*s", (int)len,
                         val ? (const char *)val : "");
                r->nheaders++;
            }
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    *out = recs;
    return n;
}

#endif
