/*
 * cm_consumer: a kafka consumer-group member that applies each event exactly
 * once, through an inbox table in the service's schema.
 *
 * records are applied in batches, on the consumer's own thread and
 * database connection: what the poll has ready (up to batch_size) goes into
 * one transaction —
 *
 *   BEGIN
 *     INSERT INTO inbox (consumer_group, event_id, ...) SELECT ... unnest(..)
 *       ON CONFLICT DO NOTHING RETURNING event_id
 *     -- an id not returned: a redelivery, the effect already happened: skip
 *     fn(db, ev, arg)                     -- the effect, per first delivery
 *   COMMIT
 *   then each partition's offset (highest applied + 1) is committed to kafka
 *
 * so a crash between COMMIT and the offset commit redelivers the records and
 * the inbox absorbs them. offsets are committed in the background (every few
 * hundred ms, and synchronously when partitions are revoked or the consumer
 * stops), never before their effect is committed. one commit (one fsync)
 * per batch instead of per event is what lets a consumer go past the
 * database's commit rate.
 *
 * a handler that fails inside a batch aborts that transaction: the batch is
 * run again without that record and without the later records of its
 * partition (a key's events never overtake each other); the failed record
 * then gets its own transactions and retries, as below, and the deferred
 * ones go into the next batch.
 *
 * failures: the handler returns CM_ECONFLICT, CM_EUNAVAIL, CM_ETIMEDOUT or
 * CM_ELIMIT for transient trouble: retried with jittered backoff up to
 * max_attempts, then dead-lettered. while the database itself is down the
 * record waits (not counted as attempts: an outage is not the event's
 * fault). a record that can never be processed — no valid ce_id, handler
 * returns CM_EINVAL or another permanent error, retries exhausted — is
 * copied to "<topic>.dlq" with the reason in headers (dlq-reason, dlq-error,
 * dlq-topic, dlq-partition, dlq-offset, dlq-group, dlq-at) and its offset
 * committed, so it does not block the partition. dead-lettered events are
 * not recorded in the inbox: replaying them from the dlq after a fix must
 * take effect.
 *
 * metrics: consumer_processed_total{topic,group,result="applied"|"duplicate"|
 * "skipped"|"dead_lettered"}, consumer_lag{topic,group,partition},
 * consumer_handler_seconds{topic,group}, consumer_retries_total{topic,group}.
 */
#ifndef CM_CONSUMER_H
#define CM_CONSUMER_H

#include <stddef.h>
#include <stdint.h>

#include "cm_db.h"
#include "cm_kafka.h"
#include "cm_metrics.h"

/* one record as the handler sees it. strings are NUL-terminated, "" when
 * the header is absent; everything is valid only during the call. a
 * structured-mode record (content-type application/cloudevents+json, no
 * ce_id header: cm_cloudevents.h) has id, type, source, time, traceparent
 * and tenant_id taken from the attributes of its JSON value instead
 * ("tenantid" for tenant_id), so such a topic is consumed like any other. */
typedef struct cm_event {
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms; /* the record's kafka timestamp, -1 when unknown */
    const char *key;      /* aggregate id */
    size_t key_len;
    const void *payload;
    size_t len;
    const char *id;           /* ce_id: the event's UUID (always valid here) */
    const char *type;         /* ce_type */
    const char *source;       /* ce_source */
    const char *time;         /* ce_time */
    const char *content_type; /* content-type */
    const char *traceparent;  /* traceparent */
    const char *tenant_id;    /* tenant-id */
    const char *group;        /* the consumer group */
    int attempt;              /* 1 on the first try */
    const void *priv;         /* the record, for cm_event_header */
} cm_event;

/* what the consumer does with each record before the handler sees it,
 * without kafka (tests/fuzz): hval/hlen are the last value of each of the
 * headers ce_id, ce_type, ce_source, ce_time, content-type, traceparent,
 * tenant-id, in that order (NULL: absent). the event is filled as the
 * handler gets it — a structured-mode record's attributes read from its
 * JSON value, a header holding a NUL read as "" — with topic, partition,
 * group and priv unset and offset 0, timestamp -1. returns the one
 * allocation the strings live in (the caller frees it), NULL on out of
 * memory. */
#define CM_EVENT_HEADERS 7
char *cm_event_decode(const void *const hval[CM_EVENT_HEADERS], const size_t hlen[CM_EVENT_HEADERS],
                      const void *payload, size_t plen, const void *key, size_t key_len,
                      cm_event *ev);

/* any header of the record: 0 with *value and *len pointing into the record
 * (not NUL-terminated), or CM_ENOTFOUND. the last one wins on duplicates. */
int cm_event_header(const cm_event *ev, const char *name, const void **value, size_t *len);

/* the effect of one event, run inside the consumer's transaction (do not
 * call cm_db_tx). return 0 to commit; CM_ECONFLICT/CM_EUNAVAIL/CM_ETIMEDOUT/
 * CM_ELIMIT to retry; CM_EINVAL (or any other code) to dead-letter it. an
 * event the service does not care about is not an error: return 0. */
typedef int (*cm_consumer_fn)(cm_db *db, const cm_event *ev, void *arg);

typedef struct cm_consumer_opts {
    const char *brokers;
    const char *topic;  /* one topic per consumer */
    const char *group;  /* consumer group id */
    const char *dsn;    /* the consumer's own database connection */
    const char *schema; /* where the inbox table lives (cm_inbox migrations) */
    cm_consumer_fn fn;
    void *arg;
    /* dead letters go through this (the process's producer); required */
    cm_kafka_producer *producer;
    cm_metrics *metrics;    /* NULL: the default registry */
    const char *client_id;  /* NULL: "commerce-consumer" */
    int max_attempts;       /* per event before dead-lettering; 0: 5 */
    int backoff_min_ms;     /* first retry delay; 0: 50 */
    int backoff_max_ms;     /* 0: 5000 */
    int commit_interval_ms; /* background offset commits; 0: 500 */
    /* records applied in one transaction, at most; 0: 500 (1: one
     * transaction per event). a batch never waits to fill: it takes what
     * the poll has ready, so it grows with the load. */
    int batch_size;
    /* extra librdkafka settings, "key", "value" pairs, NULL-terminated
     * (session.timeout.ms, security); applied last */
    const char *const *conf;
    /* called on the consumer thread after an event's transaction committed
     * (applied or duplicate), before its offset is stored: for tests that
     * crash at the worst moment, or post-commit work. may be NULL. */
    void (*after_commit)(const cm_event *ev, int duplicate, void *arg);
    /* optional, for handlers that stage their effects and write a whole
     * batch's in a few statements: tx_begin(arg) runs at the start of every
     * transaction attempt (drop what an aborted attempt staged), tx_end(db,
     * arg) inside it after the last handler, before COMMIT. tx_end failing
     * aborts the transaction without blaming a record: the batch is tried
     * again, and after repeated failures record by record (each one's
     * transaction is tx_begin, fn, tx_end), which finds the culprit. */
    void (*tx_begin)(void *arg);
    int (*tx_end)(cm_db *db, void *arg);
    /* the ce_types the handler acts on, NULL-terminated; NULL: every type.
     * records of other types (another service's events on a shared topic)
     * are acknowledged without a transaction or an inbox row — there is no
     * effect to deduplicate — counted as result="skipped". */
    const char *const *types;
    /* 1: the handler's effect is idempotent by itself (a redelivered
     * event changes nothing, e.g. an insert keyed by the event id that
     * does nothing on conflict): no inbox row is written or read, and a
     * redelivery is handed to the handler again, counted as applied */
    int idempotent;
} cm_consumer_opts;

typedef struct cm_consumer cm_consumer;

/* connects to the database, subscribes and starts the consumer thread.
 * the strings in o are copied; producer and metrics must outlive the
 * consumer. returns 0, or CM_EINVAL/CM_EUNAVAIL/CM_ENOMEM with err. */
int cm_consumer_start(cm_consumer **out, const cm_consumer_opts *o, char *err, size_t errlen);

/* stops: the event being processed is finished (a retry wait is cut short
 * and that event left for redelivery), offsets of committed effects are
 * committed, the group is left and the thread joined. a dead-letter write
 * still waiting for an absent broker after timeout_ms is ended by purging
 * the producer (the event is then redelivered later). idempotent. */
void cm_consumer_stop(cm_consumer *c, int timeout_ms);

/* stops if needed (timeout 5 s), then frees. NULL is a no-op. */
void cm_consumer_free(cm_consumer *c);

/* events handled so far by outcome (for tests and health). */
typedef struct cm_consumer_stats {
    uint64_t applied;
    uint64_t duplicates;
    uint64_t dead_lettered;
    uint64_t retries;
} cm_consumer_stats;
void cm_consumer_get_stats(const cm_consumer *c, cm_consumer_stats *out);

/* the embedded inbox migrations (common/migrations/inbox), applied with
 * cm_db_migrate_component(db, schema, "inbox", ...). */
extern const cm_migration cm_inbox_migrations[];
extern const size_t cm_inbox_migrations_count;

#endif
