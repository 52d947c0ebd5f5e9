/*
 * cm_park: refunds that arrived before the payment they refund.
 *
 * a consumer must not wait in a retry loop for an event that may come
 * much later (a replay, a dead letter re-driven): that would hold every
 * other event of its partitions. instead it parks the refund in its
 * schema's parked_refunds table inside the consumer's transaction and goes
 * on; posting the payment later takes the parked rows out and applies them
 * (the service's own code: what "apply" means is its business). a refund
 * parked longer than a bound is dead-lettered by cm_park_expire through the
 * outbox to "<its topic>.dlq", with the record as received and dlq-*
 * headers like the consumer's own dead letters, so replaying it from there
 * after a fix takes effect.
 *
 * the table, in every service that parks (its own migration creates it):
 *
 *   CREATE TABLE parked_refunds (
 *     tenant_id text COLLATE "C" NOT NULL, order_id uuid NOT NULL,
 *     refund_id text COLLATE "C" NOT NULL, event_id uuid NOT NULL,
 *     currency text COLLATE "C" NOT NULL, amount bigint NOT NULL,
 *     traceparent text NOT NULL DEFAULT '', topic text NOT NULL,
 *     payload bytea NOT NULL, parked_at timestamptz NOT NULL DEFAULT now(),
 *     PRIMARY KEY (tenant_id, order_id, refund_id));
 *   CREATE INDEX parked_refunds_by_age ON parked_refunds (parked_at);
 */
#ifndef CM_PARK_H
#define CM_PARK_H

#include <stddef.h>
#include <stdint.h>

#include "cm_db.h"

typedef struct cm_park_refund {
    const char *tenant, *order_id, *refund_id, *event_id, *currency;
    int64_t amount;
    const char *traceparent; /* NULL: none */
    const char *topic;       /* the topic it came from */
    const void *payload;     /* the record's value, for its dead letter */
    size_t len;
} cm_park_refund;

/* parks a refund, inside the caller's transaction; parked twice (the same
 * tenant, order and refund id) it is kept once. 0 or the database error. */
int cm_park_add(cm_db *db, const cm_park_refund *r);

/* dead-letters, through the outbox, up to 500 refunds parked longer than
 * older_than_s (header dlq-reason: reason); *expired: how many. the relay
 * is woken when any was. 0 or the database error. */
int cm_park_expire(cm_db *db, const char *reason, int older_than_s, int *expired);

#endif
