/*
 * stl_ledger: posting payments and refunds on the ledger, from the order
 * events (README.md, "Posting").
 *
 * payments are staged by the consumer's handler and written per batch
 * (stl_ledger_flush, from the consumer's tx_end): a few statements for the
 * whole batch — the rule version and tenant settings of every payment, the
 * split rows (whose primary key makes an order split once, whatever event
 * ids carry it), the accounts' balances (one update per account, locked in
 * id order), the pending rows by due date, the journal entries and their
 * events in the outbox. a refund is posted at once, after the staged
 * payments (its payment may be in the same batch).
 *
 * a ledger belongs to one consumer thread: it keeps the staged batch and
 * two caches, rule versions (immutable once stored) and account ids
 * (permanent once committed; ids created by a transaction that then rolls
 * back are dropped at the next stl_ledger_begin).
 */
#ifndef STL_LEDGER_H
#define STL_LEDGER_H

#include <stddef.h>
#include <stdint.h>

#include "cm_db.h"
#include "cm_metrics.h"
#include "stl_store.h"

typedef struct stl_ledger stl_ledger;

/* defaults: the settings of tenants without their own; topic: where
 * the entries' events go (events_on); lag (may be NULL): observes, per
 * payment posted, the seconds from its paid_at to its posting */
stl_ledger *stl_ledger_new(const stl_settings *defaults, int events_on, const char *topic,
                           cm_histogram *lag);
void stl_ledger_free(stl_ledger *l);

/* a transaction attempt starts: drop what an earlier attempt staged */
void stl_ledger_begin(stl_ledger *l);
/* the transaction committed: the account ids it created are permanent */
void stl_ledger_committed(stl_ledger *l);

typedef struct stl_pay_in {
    const char *tenant, *order_id, *merchant, *currency;
    const char *event_id, *traceparent;
    int64_t amount;  /* the paid amount, minor units */
    int64_t paid_ms; /* when it was paid */
} stl_pay_in;

/* stages a payment for the next flush. 0, or CM_ENOMEM */
int stl_ledger_stage_pay(stl_ledger *l, const stl_pay_in *in);

/* posts the staged payments, inside the caller's transaction. 0 or a
 * CM_E* (the transaction must then roll back) */
int stl_ledger_flush(stl_ledger *l, cm_db *db);

typedef struct stl_refund_in {
    const char *tenant, *order_id, *refund_id, *currency;
    const char *event_id, *traceparent;
    int64_t amount; /* this refund, minor units */
} stl_refund_in;

/* posts a refund's reversal, inside the caller's transaction, after the
 * staged payments. 0 (also for a refund already reversed); CM_ENOTFOUND
 * when the order's payment was not posted yet (the caller parks it);
 * CM_EINVAL for a refund that cannot apply (currency, more than remains). */
int stl_ledger_refund(stl_ledger *l, cm_db *db, const stl_refund_in *in);

/* an order completed: its parts held by a settle-on-completion rule become
 * due after their delays from the completion's local date (T+0: available
 * now, one SETTLE entry). inside the consumer's transaction, after the
 * staged payments. 0 also when nothing is held. */
int stl_ledger_complete(stl_ledger *l, cm_db *db, const char *tenant, const char *order_id,
                        int64_t completed_ms);

/* ---- for the other posting modules (the commission cost, cost.c) ---- */

/* the ids of n accounts of a tenant (types[i], owners[i]) in currency: from
 * the ledger's cache, the missing ones from the database (created when
 * new). inside the caller's transaction. */
int stl_ledger_accounts(stl_ledger *l, cm_db *db, const char *tenant, const char *currency,
                        size_t n, const int *types, const char *const *owners, int64_t *ids);

/* posts entries[0..n) inside the caller's transaction: applies their
 * postings to the accounts (locked in id order; pending postings also to
 * pending_due), assigns each entry its id and each posting its account's
 * version, and inserts them, with their events when events are on
 * (stl_ev_pack_entry).
 * traceparents[i] may be NULL. 0 or a CM_E* (roll back). */
int stl_ledger_post(stl_ledger *l, cm_db *db, const char *const *tenants,
                    const char *const *traceparents, stl_entry *const *entries, size_t n);

typedef struct stl_ledger_stats {
    uint64_t splits, reversals, duplicates, capped;
} stl_ledger_stats;
void stl_ledger_get_stats(const stl_ledger *l, stl_ledger_stats *out);

#endif
