/*
 * cms_accrual: accruing and clawing back commission from the order events
 * (README.md, "Posting a batch").
 *
 * the consumer's handler stages paid and refunded orders; the batch is
 * written in the consumer's tx_end (cms_accrual_flush), in a few
 * statements for the whole batch: the orders' commissions and refunds
 * already applied (locked), every paid order's channel, schedule revision
 * and period, then the batch's period rows — the hot rows — and parent
 * pools locked once each, in key order (SELECT ... FOR UPDATE). the
 * postings are computed in C with the domain (cms_accrue, cms_clawback,
 * cms_parent_share), one event after another in arrival order against the
 * rows' running figures, and written back with one update per period row
 * and pool, the new commissions, adjustments and refunds in one insert
 * each, and their events through the outbox.
 *
 * an order accrues once (commissions are unique per order) and a refund is
 * clawed back once (per order and refund id), whatever event ids carry
 * them; a refund whose order has not accrued is parked until it does.
 *
 * an accrual belongs to one consumer thread.
 */
#ifndef CMS_ACCRUAL_H
#define CMS_ACCRUAL_H

#include <stddef.h>
#include <stdint.h>

#include "cm_db.h"
#include "cm_metrics.h"

typedef struct cms_accrual cms_accrual;

/* topic: where the events go (events_on), partner_topic: where their
 * cloudevents for partners go (cms_partner.h); lag (may be NULL):
 * observes, per accrual, the seconds from the order's paid_at to its
 * posting */
cms_accrual *cms_accrual_new(int events_on, const char *topic, const char *partner_topic,
                             cm_histogram *lag);
void cms_accrual_free(cms_accrual *a);

/* a transaction attempt starts: drop what an earlier attempt staged */
void cms_accrual_begin(cms_accrual *a);

typedef struct cms_pay_in {
    const char *tenant, *order_id, *channel, *merchant, *currency;
    const char *event_id, *traceparent;
    int64_t amount;  /* the paid amount, minor units, >= 0 */
    int64_t paid_ms; /* when it was paid: picks the schedule revision and period */
} cms_pay_in;

typedef struct cms_refund_in {
    const char *tenant, *order_id, *refund_id, *currency;
    const char *event_id, *traceparent;
    int64_t amount; /* this refund, minor units, > 0 */
    /* the record, kept with a parked refund for its dead letter */
    const char *topic;
    const void *payload;
    size_t len;
} cms_refund_in;

/* stage an event for the next flush (copied). 0 or CM_ENOMEM */
int cms_accrual_stage_pay(cms_accrual *a, const cms_pay_in *in);
int cms_accrual_stage_refund(cms_accrual *a, const cms_refund_in *in);

/* writes the staged batch, inside the consumer's transaction. 0 or a
 * CM_E* (the transaction must then roll back; the batch stays staged
 * until the next cms_accrual_begin) */
int cms_accrual_flush(cms_accrual *a, cm_db *db);

typedef struct cms_accrual_stats {
    uint64_t accrued, clawbacks, duplicates, skipped, parked, adjustments;
} cms_accrual_stats;
void cms_accrual_get_stats(const cms_accrual *a, cms_accrual_stats *out);

#endif
