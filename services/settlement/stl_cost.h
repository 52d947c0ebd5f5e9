/*
 * stl_cost: the commission cost on the ledger, booked from the commission
 * service's events (README.md, "Commission cost"; the rule is
 * stl_cost_of in stl_domain.h).
 *
 * the consumer's handler stages each event's entry (stl_costs_stage); its
 * tx_end writes the batch (stl_costs_flush) in a few statements: the
 * natural keys already booked (one query: a replay, or the same change
 * under another event id, posts nothing), the accounts (cached), then the
 * entries (stl_ledger_post: one update per account, locked in id order).
 *
 * a stl_costs belongs to one consumer thread; it has a ledger of its own
 * (its account cache), apart from the order consumer's.
 */
#ifndef STL_COST_H
#define STL_COST_H

#include <stddef.h>
#include <stdint.h>

#include "cm_db.h"
#include "cm_metrics.h"
#include "stl_store.h"

typedef struct stl_costs stl_costs;

/* platform: the owner id of the platform's account (SETTLEMENT_PLATFORM_ID);
 * topic: where the entries' CommissionCostPosted go (events_on); lag (may
 * be NULL): observes, per entry posted, the seconds from the commission
 * event's occurred_at to the posting. NULL when out of memory. */
stl_costs *stl_costs_new(const stl_settings *defaults, const char *platform, int events_on,
                         const char *topic, cm_histogram *lag);
void stl_costs_free(stl_costs *c);

/* a transaction attempt starts: drop what an earlier attempt staged */
void stl_costs_begin(stl_costs *c);
/* the transaction committed */
void stl_costs_committed(stl_costs *c);

/* one commission event, as the handler read it */
typedef struct stl_cost_event {
    const char *tenant, *event_id, *traceparent;
    int kind;     /* STL_COST_* */
    int adj_kind; /* STL_COST_ADJUSTED: STL_ADJ_* */
    int payer;    /* STL_PAYER_* */
    const char *commission_id, *refund_id, *adjustment_id;
    const char *channel, *order_id, *merchant, *currency;
    int64_t amount; /* as stl_cost_in.amount */
    int64_t occurred_ms;
} stl_cost_event;

/* stages the entry of one event for the next flush. 0 (also for an event
 * that books nothing), CM_EINVAL for one that cannot be booked (the
 * consumer dead-letters it), CM_ENOMEM. */
int stl_costs_stage(stl_costs *c, const stl_cost_event *ev);

/* posts the staged entries inside the caller's transaction. 0 or a CM_E*
 * (the transaction must then roll back). */
int stl_costs_flush(stl_costs *c, cm_db *db);

typedef struct stl_costs_stats {
    uint64_t posted;     /* entries booked */
    uint64_t duplicates; /* changes booked before (a replay, another event id) */
    uint64_t nothing;    /* events that book nothing (zero, CLAWBACK adjustments) */
} stl_costs_stats;
void stl_costs_get_stats(const stl_costs *c, stl_costs_stats *out);

#endif
