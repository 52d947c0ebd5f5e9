/*
 * cm_outbox: the transactional outbox and its relay.
 *
 * a service writes an event into its schema's outbox table in the same
 * transaction as the state change (cm_outbox_add), so a committed change
 * always gets its event and a rolled-back one never does. the relay, a
 * thread with its own database connection, publishes unsent rows to kafka
 * in id order, and marks them published only after the broker acknowledged
 * them. delivery is at least once: a crash between the ack and the mark
 * publishes a row again, and consumers deduplicate by event id (cm_consumer).
 *
 * one relay per schema is active at a time: relays of all replicas compete
 * for a session advisory lock, the holder publishes, the others wait and
 * take over when its session ends. see common/README.md, "outbox relay".
 */
#ifndef CM_OUTBOX_H
#define CM_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "cm_buf.h"
#include "cm_db.h"
#include "cm_kafka.h"
#include "cm_metrics.h"

typedef struct cm_outbox_event {
    const char *event_id;  /* UUID (cm_id_uuid7), equal to the payload's event_id */
    const char *tenant_id; /* tenant-id header */
    const char *topic;     /* "commerce.order.v1" */
    const char *key;       /* the aggregate id: per-key order is kept */
    const char *type;      /* ce_type, "commerce.events.v1.OrderPaid" */
    const char *source;    /* ce_source, "/commerce/order" */
    const void *payload;   /* the protobuf-encoded event */
    size_t len;            /* at most 64 MiB (the broker's limit is far lower) */
    /* NULL: "application/protobuf". CM_CLOUDEVENTS_JSON_CONTENT_TYPE
     * (cm_cloudevents.h): the payload is a whole structured-mode cloudevent
     * (cm_cloudevent_json), published with this content-type header and
     * the extra headers only, no ce_* or tenant-id headers; the fields above
     * are still required (the outbox keeps them) and must match the
     * envelope's */
    const char *content_type;
    const char *traceparent; /* NULL: none */
    int64_t occurred_at_ms;  /* ce_time in unix ms; 0: the transaction's now() */
    /* extra text headers (NULL-terminated "name", "value" pairs), or NULL.
     * names of the CloudEvents headers above are refused. */
    const char *const *headers;
    /* a structured-mode event only: publish the envelope as binary-mode
     * headers as well (ce_id, ce_type, ce_source, ce_time, tenant-id,
     * traceparent, from the fields above, which must then equal the
     * value's attributes), so consumers of an internal topic read the
     * envelope without parsing the value (cm_event_decode takes the
     * headers when ce_id is there). not for a topic outsiders read: a
     * reader that looks for ce_ headers before the content type would
     * take the whole event for its data */
    int envelope_headers;
} cm_outbox_event;

/* inserts ev into <schema>.outbox inside the caller's open transaction (the
 * cm_db_tx function's db) and arranges for the relay to be woken once the
 * transaction commits (cm_outbox_wake_on_commit).
 * per-key order is id order: insert a key's event after taking the lock
 * that orders that key's changes (the aggregate row's UPDATE or SELECT ...
 * FOR UPDATE), which is where a state change naturally writes it. returns
 * 0; CM_EINVAL (outside a transaction, missing field, bad uuid or topic);
 * CM_EEXIST (event_id already in the outbox); or the database error. */
int cm_outbox_add(cm_db *db, const cm_outbox_event *ev);

/* cm_outbox_add for n events (at most 1000) in one statement, in order:
 * for a batch of changes committed together. 0, CM_EINVAL (any event
 * invalid: none is written), CM_EEXIST or the database error. */
int cm_outbox_add_batch(cm_db *db, const cm_outbox_event *evs, size_t n);

/* cm_outbox_add_batch in steps, for a caller that sends the insert with
 * its other writes in one cm_db_pipeline: builds the rows of evs (n at
 * most 1000) into *rows and sets *st to their insert (its parameters point
 * into *rows). after the pipeline, cm_outbox_wake_on_commit as add_batch
 * does; cm_outbox_insert_free in any case. 0, CM_EINVAL (an event invalid),
 * CM_ENOMEM. */
typedef struct cm_outbox_insert cm_outbox_insert;
int cm_outbox_insert_stmt(cm_outbox_insert **rows, const cm_outbox_event *evs, size_t n,
                          cm_db_stmt *st);
void cm_outbox_insert_free(cm_outbox_insert *rows);

/* a batch of outbox rows as the columns of one insert whose text does not
 * change with the number of rows, so it can be prepared once and embedded
 * in a larger statement (a data-modifying WITH): text arrays, and the
 * payloads concatenated into one binary parameter that the insert cuts by
 * offset and length. every row of a batch shares one topic and source
 * (parameters of the statement); content_type, headers and
 * envelope_headers keep their defaults. rows get their ids in the order
 * they were added, so a key's events are published in that order.
 *
 *   cm_outbox_rows r;
 *   cm_outbox_rows_init(&r);
 *   cm_outbox_rows_add(&r, &ev) ...;          (copies ev's strings and payload)
 *   if (cm_outbox_rows_close(&r)) -> CM_ENOMEM
 *   const char *p[CM_OUTBOX_ROWS_NPARAMS]; cm_outbox_rows_params(&r, p);
 *   run CM_OUTBOX_ROWS_INSERT("$1", ..., "$9", topic, source) with p (p[8]
 *   binary, r.blob.len bytes) and the topic and source as the last two,
 *   inside the transaction; then cm_outbox_wake_on_commit.
 *   cm_outbox_rows_free(&r);
 */
typedef struct cm_outbox_rows {
    cm_buf id, tenant, key, type, at, off, len, tp;
    cm_buf blob;
    size_t n;
} cm_outbox_rows;

#define CM_OUTBOX_ROWS_NPARAMS 9 /* the arrays and the blob; topic and source come after */
#define CM_OUTBOX_ROWS_BLOB 8    /* the index of the binary parameter */

void cm_outbox_rows_init(cm_outbox_rows *r);
/* event_id, tenant_id, key, type, payload/len, occurred_at_ms (0: now) and
 * traceparent (NULL: none) of ev are used; its topic, source,
 * content_type, headers and envelope_headers are not (see above). */
void cm_outbox_rows_add(cm_outbox_rows *r, const cm_outbox_event *ev);
/* ends the arrays: 0, or CM_ENOMEM when a buffer could not grow. */
int cm_outbox_rows_close(cm_outbox_rows *r);
void cm_outbox_rows_params(const cm_outbox_rows *r, const char *p[CM_OUTBOX_ROWS_NPARAMS]);
void cm_outbox_rows_free(cm_outbox_rows *r);

/* the insert, its parameters named by the macro's arguments (placeholders
 * such as "$25"): ids, tenants, keys, types, ms, offsets, lengths,
 * traceparents ("" for none) as arrays, the payload blob (bytea), topic,
 * source. RETURNING 1 per row. */
#define CM_OUTBOX_ROWS_INSERT(id, t, k, ty, at, off, len, tp, blob, topic, source)                 \
    CM_OUTBOX_ROWS_INSERT_WHERE(id, t, k, ty, at, off, len, tp, blob, topic, source, "true")

/* the same, inserting only the rows for which `where` holds; it names a
 * row's tenant u.t and key u.k. for a change and its events in one
 * statement (a data-modifying WITH, atomic in autocommit) where some
 * changes may be skipped:
 *
 *   WITH o AS (INSERT INTO orders ... ON CONFLICT DO NOTHING RETURNING ...),
 *        e AS (CM_OUTBOX_ROWS_INSERT_WHERE(..., "EXISTS (SELECT 1 FROM o
 *              WHERE o.tenant_id = u.t AND o.id = u.k)"))
 *   SELECT ... FROM o
 *
 * then cm_outbox_wake once it succeeded (no cm_db_tx hook sees that commit). */
#define CM_OUTBOX_ROWS_INSERT_WHERE(id, t, k, ty, at, off, len, tp, blob, topic, source, where)    \
    "INSERT INTO outbox (event_id, tenant_id, topic, key, type, source, payload, occurred_at, "    \
    "traceparent) "                                                                                \
    "SELECT u.id::uuid, u.t, " topic "::text, u.k, u.ty, " source "::text, "                       \
    "substring(" blob "::bytea FROM u.off + 1 FOR u.len), "                                        \
    "CASE WHEN u.at > 0 THEN to_timestamp(u.at / 1000.0) ELSE now() END, NULLIF(u.tp, '') "        \
    "FROM unnest(" id "::text[], " t "::text[], " k "::text[], " ty "::text[], " at                \
    "::bigint[], " off "::int[], " len "::int[], " tp                                              \
    "::text[]) WITH ORDINALITY AS u(id, t, k, ty, at, off, len, tp, ord) "                         \
    "WHERE " where " ORDER BY u.ord RETURNING 1"

/* wakes the relay for rows just committed outside cm_db_tx (see
 * cm_outbox_wake_on_commit for how). */
void cm_outbox_wake(cm_db *db);

/* for code that writes outbox rows itself (a multi-row insert of a batch):
 * call inside the cm_db_tx transaction; after it commits, the schema's
 * relay is woken — directly when it runs in this process and leads, else
 * by a NOTIFY on "outbox.<schema>" sent after the commit, at most one per
 * 5 ms per process (a transaction that notifies holds a database-wide lock
 * through its commit, so notifying inside every transaction would
 * serialise all commits). a row whose wake-up was skipped is found by the
 * leader's next poll (poll_ms). in a transaction opened by hand rather
 * than by cm_db_tx no hook sees the commit: the NOTIFY is then sent inside
 * it (the serialising path). 0 or the database error. */
int cm_outbox_wake_on_commit(cm_db *db);

typedef struct cm_outbox_relay_opts {
    const char *dsn;
    const char *schema;
    cm_kafka_producer *producer; /* required; must outlive the relay */
    cm_metrics *metrics;         /* NULL: the default registry */
    int batch_size;              /* rows fetched, produced and marked together; 0: 1000 */
    int poll_ms;                 /* look for rows without a wake-up every; 0: 200 */
    int leader_retry_ms;         /* a standby tries the leader lock every; 0: 1000 */
    int backoff_max_ms;          /* after failures; 0: 10000 */
    /* 0: a row is deleted in the statement that records its ack (the
     * broker is the record of what was sent); > 0: it is kept, marked
     * published_at, and deleted that many seconds later, for inspection.
     * marking writes a new version of every row with its index entries:
     * over a quarter of a created order's write-ahead log (common/README.md,
     * "Recording the ack") */
    int retention_s;
    /* a fetch from the first row, past the lower bound that skips what
     * was published (outbox.c, fetch_sql's note), every; 0: 1000. only rows
     * whose ids were not taken by the table's default (written before the
     * outbox's migration 0002, or given by hand) can need it: they are late
     * by at most this (tests set it high to show the bound alone sends
     * every row) */
    int sweep_ms;
} cm_outbox_relay_opts;

typedef struct cm_outbox_relay cm_outbox_relay;

/* connects, then starts the relay thread (which competes for leadership,
 * reconnects after database outages and backs off on broker failures by
 * itself). returns 0, or CM_EINVAL/CM_EUNAVAIL/CM_ENOMEM with err. */
int cm_outbox_relay_start(cm_outbox_relay **out, const cm_outbox_relay_opts *o, char *err,
                          size_t errlen);

/* stops the relay: the batch in flight is finished — its reports awaited
 * for up to timeout_ms, then the producer is purged (a purged row stays
 * unpublished and goes out again later) — its acknowledged rows marked,
 * and the connection closed, releasing leadership. idempotent. */
void cm_outbox_relay_stop(cm_outbox_relay *r, int timeout_ms);

/* stops if needed (timeout 0), then frees. NULL is a no-op. */
void cm_outbox_relay_free(cm_outbox_relay *r);

/* 1 while this relay holds the leader lock. */
int cm_outbox_relay_is_leader(const cm_outbox_relay *r);

/* rows this relay has published so far. */
uint64_t cm_outbox_relay_published(const cm_outbox_relay *r);

/* the embedded outbox migrations (common/migrations/outbox), applied with
 * cm_db_migrate_component(db, schema, "outbox", ...). */
extern const cm_migration cm_outbox_migrations[];
extern const size_t cm_outbox_migrations_count;

#endif
