/*
 * cms_events: commission's side of kafka. consumes the order events
 * (OrderPaid, OrderRefunded) into the accrual and records OrderCompleted,
 * and packs the events it publishes (CommissionAccrued, CommissionPayable,
 * CommissionClawedBack, CommissionAdjusted) for the outbox.
 */
#ifndef CMS_EVENTS_H
#define CMS_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "cm_arena.h"
#include "cm_consumer.h"
#include "cms_accrual.h"
#include "cms_store.h"

#include "commerce/commission/v1/commission.pb-c.h"
#include "commerce/events/v1/order_events.pb-c.h"

#define CMS_SOURCE "/commerce/commission"
#define CMS_TYPE_ACCRUED "commerce.events.v1.CommissionAccrued"
#define CMS_TYPE_CLAWED_BACK "commerce.events.v1.CommissionClawedBack"
#define CMS_TYPE_ADJUSTED "commerce.events.v1.CommissionAdjusted"
#define CMS_TYPE_PAYABLE "commerce.events.v1.CommissionPayable"
#define CMS_TYPE_SETTLED "commerce.events.v1.CommissionSettled"
#define CMS_TYPE_ADJUSTMENT_PAYABLE "commerce.events.v1.CommissionAdjustmentPayable"
#define CMS_TYPE_PAYOUT_CREATED "commerce.events.v1.CommissionPayoutCreated"
#define CMS_TYPE_PAYOUT_PAID "commerce.events.v1.CommissionPayoutPaid"
#define CMS_TYPE_PAYOUT_FAILED "commerce.events.v1.CommissionPayoutFailed"

/* which payout event (cms_ev_pack_payout) */
enum { CMS_PAYOUT_EV_CREATED = 1, CMS_PAYOUT_EV_PAID, CMS_PAYOUT_EV_FAILED };

typedef struct cms_payout cms_payout; /* cms_payout.h */

/* the protos of a commission, an adjustment and a schedule (in a); NULL
 * when out of memory */
Commerce__Commission__V1__Commission *cms_pb_commission(cm_arena *a, const cms_commission *c);
Commerce__Commission__V1__Adjustment *cms_pb_adjustment(cm_arena *a, const cms_adjustment *x);

/* the proto of a payout (in a); NULL when out of memory */
Commerce__Commission__V1__Payout *cms_pb_payout(cm_arena *a, const cms_payout *p);

/* pack the events into a. 0 or CM_ENOMEM. */
int cms_ev_pack_accrued(cm_arena *a, const char *tenant, const char *event_id,
                        const cms_commission *c, const uint8_t **out, size_t *len);
int cms_ev_pack_payable(cm_arena *a, const char *tenant, const char *event_id,
                        const cms_commission *c, const uint8_t **out, size_t *len);
int cms_ev_pack_settled(cm_arena *a, const char *tenant, const char *event_id,
                        const cms_commission *c, const uint8_t **out, size_t *len);
int cms_ev_pack_clawed_back(cm_arena *a, const char *tenant, const char *event_id,
                            const cms_commission *c, const char *refund_id, int64_t clawback,
                            const uint8_t **out, size_t *len);
int cms_ev_pack_adjusted(cm_arena *a, const char *tenant, const char *event_id,
                         const cms_adjustment *x, const uint8_t **out, size_t *len);
int cms_ev_pack_adjustment_payable(cm_arena *a, const char *tenant, const char *event_id,
                                   const cms_adjustment *x, const uint8_t **out, size_t *len);

/* a payout event of kind CMS_PAYOUT_EV_*: *type its ce_type, *occurred_ms
 * its time (created_at for CREATED, reported_at otherwise). 0, CM_ENOMEM
 * or CM_EINVAL (an unknown kind). */
int cms_ev_pack_payout(cm_arena *a, const char *tenant, const char *event_id, int kind,
                       const cms_payout *p, const char **type, int64_t *occurred_ms,
                       const uint8_t **out, size_t *len);

/* the consumer's handler and transaction hooks (arg: the cms_app) */
int cms_on_order_event(cm_db *db, const cm_event *ev, void *arg);
void cms_on_tx_begin(void *arg);
int cms_on_tx_end(cm_db *db, void *arg);
void cms_on_committed(const cm_event *ev, int duplicate, void *arg);

/* the parker ticker: refunds parked longer than COMMISSION_PARK_TIMEOUT_S
 * go to the dead-letter topic */
struct cm_service;
void cms_parker(struct cm_service *svc, cm_db *db, void *arg);

/* an OrderPaid record decoded and checked as the accrual stages it (the
 * consumer's decode step, also run by tests/fuzz): 0 with *msg (free with
 * protobuf_c_message_free_unpacked) and *in pointing into it and into ev —
 * in->tenant NULL when the order has no channel (no commission) — or
 * CM_EINVAL (not an OrderPaid encoding, or missing and invalid fields,
 * logged) with *msg NULL */
int cms_ev_paid_in(const cm_event *ev, Commerce__Events__V1__OrderPaid **msg, cms_pay_in *in);

/* the same for an OrderRefunded (the clawback's refund: a tenant, a UUID
 * order, a valid refund key, a known currency, an amount > 0) and an
 * OrderCompleted (a tenant, a UUID order, occurred_at set; completed_ms the
 * order's completed_at, else occurred_at); in->tenant NULL when the order
 * has no channel */
int cms_ev_refund_in(const cm_event *ev, Commerce__Events__V1__OrderRefunded **msg,
                     cms_refund_in *in);
typedef struct cms_completed_in {
    const char *tenant, *order_id;
    int64_t completed_ms;
} cms_completed_in;
int cms_ev_completed_in(const cm_event *ev, Commerce__Events__V1__OrderCompleted **msg,
                        cms_completed_in *in);

#endif
