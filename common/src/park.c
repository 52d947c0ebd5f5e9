/* parked refunds: see cm_park.h */
#include "cm_park.h"

#include "cm_outbox.h"

#include <stdio.h>

int cm_park_add(cm_db *db, const cm_park_refund *r)
{
    char amt[24];
    snprintf(amt, sizeof amt, "%lld", (long long)r->amount);
    const char *p[] = {r->tenant,
                       r->order_id,
                       r->refund_id,
                       r->event_id,
                       r->currency,
                       amt,
                       r->traceparent ? r->traceparent : "",
                       r->topic,
                       r->payload};
    int lens[9] = {0, 0, 0, 0, 0, 0, 0, 0, (int)r->len};
    int fmts[9] = {0, 0, 0, 0, 0, 0, 0, 0, 1};
    return cm_db_exec_prepared(db, "park refund", "cm_park_add",
                               "INSERT INTO parked_refunds (tenant_id, order_id, refund_id, "
                               "event_id, currency, amount, traceparent, topic, payload) VALUES "
                               "($1, $2::uuid, $3, $4::uuid, $5, $6, $7, $8, $9) ON CONFLICT DO "
                               "NOTHING",
                               9, p, lens, fmts, NULL);
}

int cm_park_expire(cm_db *db, const char *reason, int older_than_s, int *expired)
{
    char age[24];
    snprintf(age, sizeof age, "%d", older_than_s);
    const char *p[] = {age, reason};
    PGresult *r = NULL;
    /* parked rows out, dead letters in, in one statement */
    int rc = cm_db_exec(
        db, "expire parked refunds",
        "WITH x AS (DELETE FROM parked_refunds WHERE ctid IN (SELECT ctid FROM parked_refunds "
        "WHERE parked_at < now() - make_interval(secs => $1::int) ORDER BY parked_at LIMIT 500 "
        "FOR UPDATE SKIP LOCKED) RETURNING *), o AS (INSERT INTO outbox (event_id, tenant_id, "
        "topic, key, type, source, payload, occurred_at, traceparent, headers) SELECT "
        "gen_random_uuid(), x.tenant_id, x.topic || '.dlq', x.order_id::text, "
        "'commerce.events.v1.OrderRefunded', '/commerce/order', x.payload, x.parked_at, "
        "NULLIF(x.traceparent, ''), jsonb_build_object('dlq-reason', $2::text, 'dlq-topic', "
        "x.topic, 'dlq-event-id', x.event_id::text, 'dlq-at', now()::text) FROM x RETURNING 1) "
        "SELECT count(*) FROM o",
        2, p, &r);
    if (rc)
        return rc;
    *expired = (int)cm_db_int(r, 0, 0);
    PQclear(r);
    if (*expired)
        cm_outbox_wake(db);
    return 0;
}
