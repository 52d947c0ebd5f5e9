/*
 * cm_kafka: the process's one idempotent kafka producer.
 *
 * every message travels as a CloudEvents 1.0 binary-mode record
 * (proto/commerce/events/v1/envelope.proto): key = aggregate id, value =
 * the protobuf payload, headers ce_id, ce_type, ce_source, ce_specversion,
 * ce_time, content-type, traceparent and tenant-id.
 *
 * keys are hashed like the java client (partitioner=murmur2_random, see
 * kafka/README.md). the producer is idempotent with acks=all, so a retried
 * request never writes a message twice or out of order within a partition.
 * by default a message never times out in the client (message.timeout.ms=0):
 * during a broker outage messages wait, in order, and are delivered when the
 * broker returns; a local timeout could leave a gap that a later retry would
 * fill out of order. cm_kafka_producer_purge ends the wait when the process
 * must stop.
 *
 * delivery reports are served by a poll thread the producer owns: callbacks
 * run on that thread and must be short (no blocking i/o). librdkafka's log
 * and error callbacks become cm_log json lines. metrics:
 *   kafka_produced_total{topic,result="ok"|"error"}
 *   kafka_delivery_latency_seconds{topic}  (enqueue -> broker ack)
 *
 * all functions are thread-safe.
 */
#ifndef CM_KAFKA_H
#define CM_KAFKA_H

#include <stddef.h>
#include <stdint.h>

#include "cm_metrics.h"

typedef struct cm_kafka_producer cm_kafka_producer;

/* the producer's linger when none is given, and KAFKA_LINGER_MS's default:
 * common/README.md, "kafka producer" (5 ms cost the broker and the relays
 * twice as many rounds as 20 at the same load) */
#define CM_KAFKA_LINGER_MS 20

typedef struct cm_kafka_producer_opts {
    const char *brokers;   /* bootstrap servers, host:port[,host:port] */
    const char *client_id; /* "commerce-order" */
    cm_metrics *metrics;   /* NULL: the default registry */
    int linger_ms;         /* batching delay; 0: CM_KAFKA_LINGER_MS */
    /* per-message delivery timeout; 0: none (the default, see above) */
    int message_timeout_ms;
    /* extra librdkafka settings, "key", "value" pairs, NULL-terminated
     * (security.protocol, sasl.*; tests shorten timeouts); applied last */
    const char *const *conf;
} cm_kafka_producer_opts;

/* creates the producer and starts its poll thread. bootstrap does not
 * connect yet: an unreachable broker is not an error here. returns 0,
 * CM_EINVAL with the offending setting in err, or CM_ENOMEM. */
int cm_kafka_producer_new(cm_kafka_producer **out, const char *brokers, const char *client_id,
                          cm_metrics *metrics, char *err, size_t errlen);
int cm_kafka_producer_new_opts(cm_kafka_producer **out, const cm_kafka_producer_opts *o, char *err,
                               size_t errlen);

/* flushes for up to timeout_ms, then purges what is left (those messages
 * get their delivery report with CM_ECANCELLED, so every callback runs
 * exactly once), stops the poll thread and frees everything. NULL is a
 * no-op. batches still waited on by other threads must be done first. */
void cm_kafka_producer_free(cm_kafka_producer *p, int timeout_ms);

/* waits until every queued message has its delivery report; 0 or
 * CM_ETIMEDOUT. */
int cm_kafka_producer_flush(cm_kafka_producer *p, int timeout_ms);

/* fails every message still queued or in flight with CM_ECANCELLED (their
 * reports arrive shortly on the poll thread). for shutdown: a purged message
 * may or may not have been written, so whoever retries it may duplicate it. */
void cm_kafka_producer_purge(cm_kafka_producer *p);

/* messages queued or in flight (not yet reported). */
int cm_kafka_producer_outq(cm_kafka_producer *p);

/* a record header, copied at produce time. */
typedef struct cm_kafka_header {
    const char *name;
    const void *value;
    size_t len;
} cm_kafka_header;

/* one message. strings are NUL-terminated and copied at produce time. each
 * CloudEvents header is added when its field is non-NULL; ce_specversion
 * "1.0" goes with ce_id. headers[] are appended after them verbatim. */
typedef struct cm_kafka_msg {
    const char *topic; /* [A-Za-z0-9._-]{1,249} */
    const void *key;   /* NULL: no key (round-robin partition) */
    size_t key_len;
    const void *payload;
    size_t len;
    const char *id;           /* ce_id: the event's UUID */
    const char *type;         /* ce_type: "commerce.events.v1.OrderPaid" */
    const char *source;       /* ce_source: "/commerce/order" */
    const char *time;         /* ce_time: RFC 3339 */
    const char *content_type; /* content-type: "application/protobuf" */
    const char *traceparent;  /* W3C trace context */
    const char *tenant_id;    /* tenant-id */
    const cm_kafka_header *headers;
    size_t nheaders;
} cm_kafka_msg;

/* the outcome of one message. */
typedef struct cm_kafka_report {
    int rc;            /* 0: acknowledged by all in-sync replicas; else CM_E* */
    int permanent;     /* rc != 0 and sending it again cannot succeed (too large, invalid) */
    const char *error; /* librdkafka's reason (static text); "" when rc == 0 */
    int32_t partition; /* -1 when unknown */
    int64_t offset;    /* -1 when unknown */
} cm_kafka_report;

typedef void (*cm_kafka_delivery_fn)(const cm_kafka_report *r, void *arg);

/* enqueues m. on 0 the delivery callback (if any) runs exactly once, later,
 * on the poll thread; on failure it never runs. a full local queue is waited
 * out for up to 10 s. returns 0, CM_EINVAL (bad topic, message too large),
 * CM_EUNAVAIL (queue still full, producer being replaced after a fatal
 * error) or CM_ENOMEM. */
int cm_kafka_produce(cm_kafka_producer *p, const cm_kafka_msg *m, cm_kafka_delivery_fn cb,
                     void *arg);

/* produces m and waits for its delivery report (which, with no message
 * timeout, can take as long as a broker outage lasts: purge ends it).
 * returns the report's rc, or produce's error; *out (may be NULL) gets the
 * report. */
int cm_kafka_produce_sync(cm_kafka_producer *p, const cm_kafka_msg *m, cm_kafka_report *out);

/*
 * a batch: messages produced together whose reports the caller waits for,
 * as the outbox relay does. one thread adds and waits; reports come from
 * the poll thread. all messages of a batch go through the same librdkafka
 * instance: after a fatal error replaced it, adding more fails, so a batch
 * never straddles two producer sessions (whose orders are unrelated).
 */
typedef struct cm_kafka_batch cm_kafka_batch;

int cm_kafka_batch_new(cm_kafka_batch **out, size_t capacity);
/* must not have messages still waiting for reports (wait first). */
void cm_kafka_batch_free(cm_kafka_batch *b);
/* empties a batch whose reports have all arrived; CM_EINVAL otherwise. */
int cm_kafka_batch_reset(cm_kafka_batch *b);
/* produces m as message number cm_kafka_batch_size(b) (before the call).
 * returns 0, CM_ELIMIT when the batch is full, or cm_kafka_produce's errors
 * (the message is then not part of the batch). */
int cm_kafka_batch_add(cm_kafka_producer *p, cm_kafka_batch *b, const cm_kafka_msg *m);
/* waits until every added message has its report: 0, or CM_ETIMEDOUT after
 * timeout_ms (< 0: no limit). */
int cm_kafka_batch_wait(cm_kafka_batch *b, int timeout_ms);
size_t cm_kafka_batch_size(const cm_kafka_batch *b);
/* the report of message i; valid after cm_kafka_batch_wait returned 0. */
const cm_kafka_report *cm_kafka_batch_report(const cm_kafka_batch *b, size_t i);

/* creates topic (partitions; replication <= 0: the brokers' default;
 * configs: NULL-terminated "name", "value" pairs or NULL) through p's
 * connection, waiting at most timeout_ms: 0 when it exists afterwards
 * (created, or there already); CM_EINVAL when the brokers refuse it for
 * good (not authorized, bad settings); CM_EUNAVAIL otherwise (retry). err
 * says why. */
int cm_kafka_create_topic(cm_kafka_producer *p, const char *topic, int partitions, int replication,
                          const char *const *configs, int timeout_ms, char *err, size_t errlen);

/* writes unix_ms as RFC 3339 UTC with milliseconds,
 * "2026-11-03T08:15:00.123Z". out needs CM_KAFKA_TIME_SIZE bytes. */
#define CM_KAFKA_TIME_SIZE 32
void cm_kafka_time_rfc3339(int64_t unix_ms, char out[CM_KAFKA_TIME_SIZE]);

/* 1 when topic is a legal kafka topic name ([A-Za-z0-9._-]{1,249}). */
int cm_kafka_topic_valid(const char *topic);

#endif
