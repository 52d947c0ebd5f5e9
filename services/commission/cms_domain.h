/*
 * cms_domain: commission's pure rules (no i/o): tier schedules and their
 * validation, the period formula, what each paid or refunded order posts,
 * the parent channel's override share and a channel's tier progress. all
 * amounts are int64 minor units of the schedule's currency; every function
 * is deterministic and exact (128-bit intermediates through cm_money, never
 * floats), and a result that would not fit in int64 is CM_EOVERFLOW, never
 * a wrapped value. unit-tested without a database
 * (tests/unit/test_commission_domain.c); the design note is
 * services/commission/README.md, "Tiers and rounding".
 *
 * a schedule has 1..CMS_TIERS_MAX tiers (brackets); tier i covers period net
 * sales from t[i].from_sales (inclusive) up to t[i+1].from_sales (exclusive,
 * the last one has no end) and carries rate_bps (0..10000, 1 bps = 0.01 %).
 * t[0].from_sales is 0 and the bounds strictly increase; rates need not
 * increase. the tier of sales S is the last i with t[i].from_sales <= S.
 *
 * the period formula C(S): the commission of a channel's period whose net
 * sales (paid minus refunded, >= 0) are S:
 *   CMS_MODE_MARGINAL (超额累进): each slice of S earns its tier's rate,
 *     C(S) = floor( sum_i rate_i * len_i(S) / 10000 ),
 *     len_i(S) = max(0, min(S, t[i+1].from_sales) - t[i].from_sales);
 *   CMS_MODE_WHOLE_VOLUME (全额累进): the rate of the tier S reached applies
 *     to all of S, C(S) = floor( S * rate_k / 10000 ), k the tier of S.
 * floor of the exact rational, once for the whole period (not per slice).
 * C(0) = 0 and 0 <= C(S) <= S, so C itself never overflows. in MARGINAL C is
 * non-decreasing; in WHOLE_VOLUME it jumps at each bound (down as well as
 * up when a rate is below the one before).
 *
 * postings: every event of a period posts total = C(after) - C(before),
 * where before/after are the period's net sales around the event. whatever
 * the events and their order, the totals telescope: after any sequence the
 * period's posted sum is C(net sales) exactly, and closing the period posts
 * nothing more (cms_true_up gives 0). a posting's total is split into
 *   order_amount  what the event's own order gains (paid, >= 0) or gives
 *                 back (refunded, <= 0): the order's commission row;
 *   true_up       the rest, an adjustment of the period's other sales
 *                 (a row of its own, not attributed to an order);
 * as described at cms_accrue and cms_clawback.
 *
 * the caller's part: each event is applied once (its idempotency), events
 * of one channel period are applied one at a time against the period's
 * current net sales (the period row, locked), and a refund is applied only
 * after its order's payment: a refund whose order is not known yet waits
 * with the caller. a refund counts in the period its order was paid in.
 */
#ifndef CMS_DOMAIN_H
#define CMS_DOMAIN_H

#include <stddef.h>
#include <stdint.h>

#define CMS_TIERS_MAX 20

/* as stored, and the values proposed for the proto enum TierMode
 * (TIER_MODE_MARGINAL = 1, TIER_MODE_WHOLE_VOLUME = 2) */
enum { CMS_MODE_MARGINAL = 1, CMS_MODE_WHOLE_VOLUME = 2 };

typedef struct cms_tier {
    int64_t from_sales; /* the bracket's lower bound: period net sales, minor units */
    int64_t rate_bps;   /* 0..10000 */
} cms_tier;

typedef struct cms_schedule {
    char currency[4]; /* ISO-4217 code of the bounds and of every amount */
    int mode;         /* CMS_MODE_* */
    size_t n;         /* tiers, 1..CMS_TIERS_MAX */
    cms_tier t[CMS_TIERS_MAX];
} cms_schedule;

/* a field violation: the field path ("schedule.tiers[2].rate_bps") and why */
typedef struct cms_violation {
    char field[64];
    char why[160];
} cms_violation;

/* checks a schedule: known currency (cm_money_currency_valid), known mode,
 * 1..CMS_TIERS_MAX tiers, the first from 0, bounds strictly increasing,
 * rates 0..10000. returns 0 or CM_EINVAL with v (may be NULL) naming the
 * first offending field as PutTierScheduleRequest spells it:
 *   "schedule.currency", "schedule.mode", "schedule.tiers" (count),
 *   "schedule.tiers[i].from_sales.amount_minor", "schedule.tiers[i].rate_bps".
 * every other function refuses an unchecked schedule whose mode, count,
 * bounds or rates are wrong with CM_EINVAL (the currency is not looked at). */
int cms_schedule_check(const cms_schedule *s, cms_violation *v);

/* *tier = the index of the tier that period net sales `sales` (>= 0) fall
 * in. returns 0 or CM_EINVAL (bad schedule, sales < 0). */
int cms_tier_of(const cms_schedule *s, int64_t sales, size_t *tier);

/* *out = C(sales), the period formula above, for sales >= 0. returns 0 or
 * CM_EINVAL (bad schedule, sales < 0); it cannot overflow. */
int cms_period_commission(const cms_schedule *s, int64_t sales, int64_t *out);

/* what one event posts; total = order_amount + true_up = C(sales_after) -
 * C(sales_before) */
typedef struct cms_posting {
    int64_t sales_before; /* the period's net sales before the event */
    int64_t sales_after;  /* and after it */
    size_t tier_before;   /* cms_tier_of(sales_before) */
    size_t tier_after;    /* cms_tier_of(sales_after) */
    int64_t order_amount; /* the order's own change: >= 0 paid, <= 0 refunded */
    int64_t true_up;      /* the adjustment of the period's other sales */
    int64_t total;        /* what the period's posted sum moves by */
} cms_posting;

/* an order paid for `amount` (>= 0) while the period's net sales stood at
 * sales_before (>= 0): sales_after = sales_before + amount.
 *   MARGINAL:      order_amount = C(after) - C(before), true_up = 0;
 *   WHOLE_VOLUME:  order_amount = floor(after * r' / 10000) -
 *                  floor(before * r' / 10000), the order at the rate r' of
 *                  the tier reached; true_up = floor(before * r' / 10000) -
 *                  floor(before * r / 10000), the period's earlier sales
 *                  repriced from the rate r they stood at (0 unless the
 *                  order crosses a bound: positive up, negative when r' < r).
 * in both modes 0 <= order_amount <= amount: it is the order's commission
 * (Commission.amount), which cms_clawback later takes back pro rata.
 * returns 0, CM_EINVAL (bad schedule, a negative input) or CM_EOVERFLOW
 * (sales_before + amount past int64); out is untouched on error. */
int cms_accrue(const cms_schedule *s, int64_t sales_before, int64_t amount, cms_posting *out);

/* one paid order as the caller stores it */
typedef struct cms_order {
    int64_t amount;     /* its paid amount: the sales it added, > 0 */
    int64_t commission; /* its order_amount from cms_accrue, 0..amount */
    int64_t refunded;   /* refunded by earlier refunds, 0..amount */
} cms_order;

/* a refund of `refund` (> 0) of order o while the period's net sales stand
 * at sales_before: sales_after = sales_before - refund.
 *   order_amount = -(f(o->refunded + refund) - f(o->refunded)), with
 *                  f(x) = floor(o->commission * x / o->amount): the order's
 *                  commission clawed back pro rata to the share of its
 *                  amount refunded, cumulatively, so refunds summing to the
 *                  amount take back exactly o->commission (never more);
 *   true_up      = total - order_amount: the period's other sales repriced
 *                  for the lower volume (either sign; in MARGINAL too,
 *                  since the remaining sales drop back into lower slices).
 * the state is checked, since it comes from the store: o->amount > 0,
 * 0 <= o->commission <= o->amount, 0 <= o->refunded, o->refunded + refund
 * <= o->amount, and o->amount - o->refunded <= sales_before (the period
 * still holds what is left of the order).
 * returns 0, CM_EINVAL (bad schedule, refund or state) or CM_EOVERFLOW (a
 * true_up past int64: only with sales near INT64_MAX); out is untouched on
 * error. */
int cms_clawback(const cms_schedule *s, int64_t sales_before, const cms_order *o, int64_t refund,
                 cms_posting *out);

/* the adjustment that brings a period's posted sum to the formula: *adj =
 * C(net_sales) - posted. 0 when every event went through cms_accrue and
 * cms_clawback with this schedule; closing a period posts it (a schedule
 * changed within the period, or postings made otherwise, leave a
 * difference). returns 0, CM_EINVAL (bad schedule, net_sales < 0) or
 * CM_EOVERFLOW. */
int cms_true_up(const cms_schedule *s, int64_t net_sales, int64_t posted, int64_t *adj);

/* the parent (two-level) share. a parent channel earns override_bps
 * (0..10000) of its children's net commission on top of it (the children's
 * commission is not reduced). its base is the running sum of every posting
 * total of its children (accruals, clawbacks and true-ups) in one pool the
 * caller keys (parent, currency, period); P(x) = floor(x * override_bps /
 * 10000). for a child posting of `delta` with the pool's base at
 * base_before, *share = P(base_before + delta) - P(base_before), so the
 * parent's posted shares sum to P(sum of the children's postings) = floor
 * of its rate times its children's net commission, exactly, in any order.
 * *share has delta's sign (or is 0). returns 0, CM_EINVAL (override_bps
 * out of range) or CM_EOVERFLOW (base_before + delta past int64). */
int cms_parent_share(int64_t override_bps, int64_t base_before, int64_t delta, int64_t *share);

/* where a channel stands in its period, for its dashboard */
typedef struct cms_progress {
    size_t tier;             /* the tier the period's net sales are in */
    int64_t rate_bps;        /* its rate (MARGINAL: of the next unit of
                                sales; WHOLE_VOLUME: of all the sales) */
    int64_t commission;      /* C(sales) */
    int has_next;            /* 0 in the top tier: the fields below are 0 */
    int64_t next_from_sales; /* where the next tier starts */
    int64_t sales_needed;    /* next_from_sales - sales, > 0 */
    int64_t next_rate_bps;   /* the next tier's rate */
    int64_t next_commission; /* C(next_from_sales): the period's commission
                                once the sales reach it */
} cms_progress;

/* fills out for period net sales `sales` (>= 0). returns 0 or CM_EINVAL
 * (bad schedule, sales < 0). */
int cms_progress_of(const cms_schedule *s, int64_t sales, cms_progress *out);

/* how a paid order's amount fell into tiers (the proto's BracketPortion) */
typedef struct cms_portion {
    size_t tier;        /* index into the schedule */
    int64_t sales;      /* the part of the order's amount in it, > 0 */
    int64_t commission; /* the commission of that part */
} cms_portion;

/* the portions of an order paid for `amount` at sales_before, in tier
 * order, into out[0..*n) (CMS_TIERS_MAX entries suffice; none for a zero
 * amount). the parts' sales sum to amount and their commissions to
 * cms_accrue's order_amount, exactly:
 *   MARGINAL:     one portion per tier the slice [before, after) crosses,
 *                 commission C(hi) - C(lo) over its own piece [lo, hi);
 *   WHOLE_VOLUME: one portion, the tier reached, with the whole amount and
 *                 order_amount (the repricing of earlier sales is not the
 *                 order's: it is the posting's true_up).
 * returns 0, CM_EINVAL or CM_EOVERFLOW as cms_accrue; out and *n are
 * untouched on error. */
int cms_portions(const cms_schedule *s, int64_t sales_before, int64_t amount, cms_portion *out,
                 size_t *n);

/* "marginal", "whole_volume" (logs, the partner events); NULL for an
 * unknown mode */
const char *cms_mode_name(int mode);

/* the after-sale window of a tenant (TenantSettings.after_sale_window):
 * whole seconds, 0 .. CMS_WINDOW_MAX_S (90 days). */
#define CMS_WINDOW_MAX_S (90LL * 86400)

/* checks a window given as a Duration's seconds and nanos. returns 0 or
 * CM_EINVAL with v (may be NULL) naming "settings.after_sale_window":
 * negative, a fraction of a second, or longer than 90 days. */
int cms_window_check(int64_t seconds, int32_t nanos, cms_violation *v);

/* the window that applies to a tenant: its own (has_own, own_s) or the
 * service's default in days. */
int64_t cms_window_of(int has_own, int64_t own_s, int64_t default_days);

/* closing a period (README.md, "Closing a period"). the rows of one
 * channel period under one schedule (one per revision its events used)
 * are repriced together under the newest revision s: *net = the sum of
 * net[0..n), *commission = C(*net) under s, *adj = *commission - the sum
 * of posted[0..n) (cms_true_up). returns 0, CM_EINVAL (bad schedule, n 0,
 * a net < 0) or CM_EOVERFLOW. */
int cms_close(const cms_schedule *s, const int64_t *net, const int64_t *posted, size_t n,
              int64_t *net_total, int64_t *commission, int64_t *adj);

/* a close true-up's split over the period's merchants (README.md,
 * "Closing a period"): amount into parts[0..n) pro rata to each
 * merchant's net sales net[i] in the period (order amounts less refunds),
 * by cm_money_split's largest remainder: the parts sum to amount exactly,
 * each has amount's sign (or is 0), ties go to the lower index (so order
 * the merchants by id for a deterministic split). when no merchant has
 * net sales (all refunded), the whole amount goes to parts[fallback] (the
 * merchant of the period's latest commission). returns 0 or CM_EINVAL (n
 * 0, a net < 0, fallback >= n) or CM_ENOMEM; parts is untouched on error. */
int cms_close_split(int64_t amount, const int64_t *net, size_t n, size_t fallback, int64_t *parts);

/* a posting of an event of a closed period: the period is not repriced
 * any more, so the true-up of its other sales is dropped and the posting
 * moves the period by the order's own change only. */
void cms_posting_closed(cms_posting *p);

#endif
