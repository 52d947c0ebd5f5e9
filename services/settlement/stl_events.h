/*
 * stl_events: settlement's side of kafka. consumes the order events
 * (OrderPaid, OrderRefunded) into the ledger, and packs the events it
 * publishes (SplitPosted, SplitReversed) for the outbox.
 */
#ifndef STL_EVENTS_H
#define STL_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "cm_arena.h"
#include "cm_consumer.h"
#include "stl_cost.h"
#include "stl_ledger.h"
#include "stl_run.h"
#include "stl_store.h"

#include "commerce/events/v1/order_events.pb-c.h"
#include "commerce/settlement/v1/settlement.pb-c.h"

#define STL_SOURCE "/commerce/settlement"
#define STL_TYPE_SPLIT_POSTED "commerce.events.v1.SplitPosted"
#define STL_TYPE_SPLIT_REVERSED "commerce.events.v1.SplitReversed"
#define STL_TYPE_COMMISSION_COST "commerce.events.v1.CommissionCostPosted"
#define STL_TYPE_PAYOUT_CREATED "commerce.events.v1.PayoutCreated"
#define STL_TYPE_PAYOUT_PAID "commerce.events.v1.PayoutPaid"
#define STL_TYPE_PAYOUT_FAILED "commerce.events.v1.PayoutFailed"
#define STL_TYPE_RUN_COMPLETED "commerce.events.v1.SettlementRunCompleted"

/* the protos of a party and an entry (in a); NULL when out of memory */
Commerce__Settlement__V1__Party *stl_pb_party(cm_arena *a, int type, const char *id);
Commerce__Settlement__V1__JournalEntry *stl_pb_entry(cm_arena *a, const stl_entry *e);

/* packs the event of a posted entry (SplitPosted for a SPLIT,
 * CommissionCostPosted for a COMMISSION, else SplitReversed) into a. 0 or
 * CM_ENOMEM. */
int stl_ev_pack_entry(cm_arena *a, const char *tenant, const char *event_id, const stl_entry *e,
                      const uint8_t **out, size_t *len);

/* the protos of a payout and a run (in a); NULL when out of memory */
Commerce__Settlement__V1__Payout *stl_pb_payout(cm_arena *a, const stl_payout *p);
Commerce__Settlement__V1__SettlementRun *stl_pb_run(cm_arena *a, const stl_run *r);

/* packs PayoutCreated/PayoutPaid/PayoutFailed (by type) or
 * SettlementRunCompleted into a. 0 or CM_ENOMEM. */
int stl_ev_pack_payout(cm_arena *a, const char *tenant, const char *event_id, const char *type,
                       const stl_payout *p, const uint8_t **out, size_t *len);
int stl_ev_pack_run(cm_arena *a, const char *tenant, const char *event_id, const stl_run *r,
                    const uint8_t **out, size_t *len);

/* the consumer's handler and transaction hooks (arg: the stl_app) */
int stl_on_order_event(cm_db *db, const cm_event *ev, void *arg);
void stl_on_tx_begin(void *arg);
/* the parker ticker: refunds parked longer than SETTLEMENT_PARK_TIMEOUT_S
 * go to the dead-letter topic */
struct cm_service;
void stl_parker(struct cm_service *svc, cm_db *db, void *arg);
/* the settler ticker (scheduled runs, running runs, then payouts) and the
 * payer ticker (payouts of what is available) */
void stl_settler(struct cm_service *svc, cm_db *db, void *arg);
void stl_payer(struct cm_service *svc, cm_db *db, void *arg);
/* the payer's replica stopped leading: settlement_payouts_pending leaves
 * its scrape (the next leader's payer reports it) */
void stl_payer_resign(struct cm_service *svc, void *arg);
int stl_on_tx_end(cm_db *db, void *arg);
void stl_on_committed(const cm_event *ev, int duplicate, void *arg);

/* the commission-event consumer's handler (CommissionAccrued,
 * CommissionClawedBack, CommissionAdjusted: the commission cost, cost.c)
 * and its transaction hooks (arg: the stl_app) */
int stl_on_commission_event(cm_db *db, const cm_event *ev, void *arg);
void stl_on_cost_tx_begin(void *arg);
int stl_on_cost_tx_end(cm_db *db, void *arg);
void stl_on_cost_committed(const cm_event *ev, int duplicate, void *arg);

/* an OrderPaid record decoded and checked as the ledger stages it (the
 * consumer's decode step, also run by tests/fuzz): 0 with *msg (free with
 * protobuf_c_message_free_unpacked) and *in pointing into it and into ev,
 * or CM_EINVAL (not an OrderPaid encoding, or missing and invalid fields,
 * logged) with *msg NULL */
int stl_ev_paid_in(const cm_event *ev, Commerce__Events__V1__OrderPaid **msg, stl_pay_in *in);

/* the same for an OrderRefunded (the reversal's refund: a tenant, a UUID
 * order, a valid refund key, an amount; its currency and size are checked
 * against the payment by the ledger) and an OrderCompleted (completed_ms:
 * the order's completed_at, else the event's occurred_at, 0 for neither) */
int stl_ev_refund_in(const cm_event *ev, Commerce__Events__V1__OrderRefunded **msg,
                     stl_refund_in *in);
typedef struct stl_completed_in {
    const char *tenant, *order_id;
    int64_t completed_ms;
} stl_completed_in;
int stl_ev_completed_in(const cm_event *ev, Commerce__Events__V1__OrderCompleted **msg,
                        stl_completed_in *in);

/* a commission record (CommissionAccrued, CommissionClawedBack,
 * CommissionAdjusted) decoded and checked as the cost consumer stages it:
 * 0 with *msg (free with protobuf_c_message_free_unpacked) and *c pointing
 * into it and into ev; 1 for another type; CM_EINVAL (not an encoding of
 * its type, missing or invalid fields) with *msg NULL */
int stl_ev_cost_in(const cm_event *ev, ProtobufCMessage **msg, stl_cost_event *c);

#endif
