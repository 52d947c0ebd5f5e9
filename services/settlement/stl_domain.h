/*
 * stl_domain: settlement's pure rules (no i/o): split rules and their
 * validation, the split of one payment, the reversal of a refund. all
 * amounts are int64 minor units; every function is deterministic (the same
 * input always gives the same output) and exact (parts sum to the whole).
 * unit-tested without a database (tests/unit/test_settlement_domain.c).
 *
 * a payment of `amount` is split into:
 *   fee       what the payment provider keeps (its statement's fee column)
 *   parts[0]  the merchant (the remainder)
 *   parts[i]  receiver i-1 of the rule (platform, service provider, ...)
 * with fee + sum(parts) == amount, and every part >= 0.
 *
 * the fee: fee_bps of the amount (rounded half up) plus fee_fixed, then
 * raised to fee_min and lowered to fee_max (0: no bound), never above the
 * amount. it is exact for every amount: a sum past INT64_MAX is above the
 * amount and fee_max anyway, so it cannot overflow.
 *
 * who bears the fee (fee_bearer):
 *   STL_FEE_PRO_RATA  shares apply to the net (amount - fee): every party
 *                     bears the fee in proportion to its share.
 *   STL_FEE_MERCHANT  shares apply to the gross amount; the merchant's
 *                     remainder absorbs the whole fee.
 * the receivers' parts: the share base (net or gross, above) minus the sum
 * of fixed amounts is split among (merchant, receivers...) by
 * cm_money_split with weights (10000 - sum(share_bps), share_bps...), then
 * each receiver's fixed_amount is added. when the fixed amounts do not fit
 * in the base, nothing is split and they are granted in receiver order:
 * earlier receivers get theirs in full, the first that does not fit gets
 * what is left of the base, later ones nothing (a part is never negative).
 * the merchant gets what is left of the net.
 *
 * the cap: the total to others (every receiver) may not exceed cap_bps of
 * the net amount (amount - fee: what WeChat Pay checks its 30 % against),
 * checked on the rounded parts. when the parts exceed it, the cap amount
 * (floor of net * cap_bps / 10000) is split among the receivers in
 * proportion to their uncapped parts (cm_money_split) and the rest goes to
 * the merchant; the split says capped = 1. the cap is the one passed to the
 * split, which may be below the one the rule was checked under (a tenant's
 * cap lowered later). because it is at most 100 % of the net, it also keeps
 * the merchant's part >= 0 under STL_FEE_MERCHANT when the receivers' gross
 * shares and fixed amounts would take more than the net.
 *
 * refunds (refund_policy), with `refunded` the cumulative reversal so far:
 *   STL_REFUND_PRO_RATA      (default) the refund is reversed over the fee
 *                            and every part in proportion to what of each
 *                            is not yet reversed (cm_money_split_refund):
 *                            refunds summing to the amount return every
 *                            part and the fee to zero exactly.
 *   STL_REFUND_MERCHANT_FIRST the fee's share is the fee's pro-rata part of
 *                            the refund against the parties together
 *                            (cm_money_split_refund over the fee and the sum
 *                            of the parts, with what of each is not yet
 *                            reversed); the parties' share is taken from the
 *                            merchant's remaining part first, the rest pro
 *                            rata from the receivers' remaining parts. a
 *                            full refund returns every part and the fee to
 *                            zero exactly, as under PRO_RATA.
 *   STL_REFUND_FEE_RETAINED  the provider keeps its fee: nothing of the fee
 *                            is reversed; the refund is reversed pro rata
 *                            over the parts' remainders, and what exceeds
 *                            them (at most the fee) is charged to the
 *                            merchant beyond its part (its reversal exceeds
 *                            its part: the merchant ends at -fee after a
 *                            full refund, which the ledger records as debt).
 */
#ifndef STL_DOMAIN_H
#define STL_DOMAIN_H

#include <stddef.h>
#include <stdint.h>

#define STL_RECEIVERS_MAX 50
#define STL_PARTS_MAX (STL_RECEIVERS_MAX + 1)
#define STL_ID_MAX 64          /* merchant and receiver ids: bytes */
#define STL_DESC_MAX 256       /* a receiver's description: bytes */
#define STL_DELAY_DAYS_MAX 365 /* T+N: N at most */
#define STL_DEFAULT_CAP_BPS 3000

/* party types, as stored and as in the proto enum PartyType */
enum {
    STL_PARTY_MERCHANT = 1,
    STL_PARTY_PLATFORM = 2,
    STL_PARTY_SERVICE_PROVIDER = 3,
    STL_PARTY_SUB_MERCHANT = 4,
    STL_PARTY_CHANNEL = 5,
};

/* as stored and as in the proto enums */
enum { STL_FEE_PRO_RATA = 1, STL_FEE_MERCHANT = 2 };
enum { STL_REFUND_PRO_RATA = 1, STL_REFUND_MERCHANT_FIRST = 2, STL_REFUND_FEE_RETAINED = 3 };

typedef struct stl_receiver {
    int type; /* STL_PARTY_*, not MERCHANT */
    char id[STL_ID_MAX + 1];
    int64_t share_bps; /* 0..10000 */
    int64_t fixed;     /* minor units, >= 0 */
    int delay_days;    /* 0: T+0 real time; N: T+N calendar days */
} stl_receiver;

typedef struct stl_rule {
    char currency[4];
    int64_t fee_bps;   /* 0..10000 */
    int64_t fee_fixed; /* >= 0 */
    int64_t fee_min;   /* >= 0; 0: none */
    int64_t fee_max;   /* >= 0; 0: none; >= fee_min when both set */
    int fee_bearer;    /* STL_FEE_* */
    int refund_policy; /* STL_REFUND_* */
    int merchant_delay_days;
    int on_completion; /* held until the order completes (the store's, not the split's) */
    size_t n;          /* receivers, 0..STL_RECEIVERS_MAX */
    stl_receiver r[STL_RECEIVERS_MAX];
} stl_rule;

/* a field violation: the field path ("rule.receivers[2].share_bps") and why */
typedef struct stl_violation {
    char field[64];
    char why[160];
} stl_violation;

/* checks a rule against the tenant's cap (cap_bps, 0..10000): known
 * currency (cm_money_currency_valid), types, ranges, ids non-empty and at
 * most STL_ID_MAX bytes, no receiver twice (same type and id), the sum of
 * share_bps <= 10000 and <= cap_bps, fixed amounts and fee bounds
 * non-negative and the fixed amounts' sum free of overflow, fee_max >=
 * fee_min when both are set, known fee_bearer and refund_policy, delay days
 * 0..STL_DELAY_DAYS_MAX. returns 0 or CM_EINVAL with v (may be NULL) naming
 * the first offending field: paths under "rule." ("rule.receivers[2].id"),
 * or "cap_bps" for a cap outside 0..10000 (a caller's bug, not the user's). */
int stl_rule_check(const stl_rule *rule, int64_t cap_bps, stl_violation *v);

typedef struct stl_split {
    int64_t amount;               /* the paid amount */
    int64_t fee;                  /* the provider's fee */
    size_t nparts;                /* 1 + rule->n */
    int64_t parts[STL_PARTS_MAX]; /* [0] merchant, [i] receiver i-1 */
    int capped;                   /* the cap reduced the receivers' parts */
} stl_split;

/* the fee alone (as described above). returns 0, or CM_EINVAL (amount < 0,
 * or the rule's fee fields out of their ranges). */
int stl_fee(const stl_rule *rule, int64_t amount, int64_t *fee);

/* splits a payment of amount (>= 0) by a checked rule under the tenant's
 * cap (0..10000). with a checked rule it cannot overflow, whatever the
 * amount. returns 0, CM_EINVAL (amount < 0, cap out of range, or a rule
 * whose fee fields, shares or fixed amounts are out of their ranges) or
 * CM_EOVERFLOW (an unchecked rule whose fixed amounts sum past int64); out
 * is untouched on error. parts[nparts..] are zeroed. */
int stl_split_payment(const stl_rule *rule, int64_t cap_bps, int64_t amount, stl_split *out);

/* the reversal of one refund. orig is the payment's split; rev_fee and
 * rev_parts[0..orig->nparts) are what earlier refunds reversed (all >= 0,
 * cumulative); refunded is their total (earlier refunds), refund this
 * one's amount (> 0, refunded + refund <= orig->amount). out_fee and
 * out_parts[0..nparts) receive this refund's reversal (>= 0 each) with
 * out_fee + sum(out_parts) == refund. the state is checked, since it comes
 * from the ledger: orig's fee and parts are >= 0 and sum to its amount,
 * rev_fee + sum(rev_parts) == refunded, no reversal exceeds what it
 * reverses (the merchant's may reach parts[0] + fee under FEE_RETAINED,
 * whose rev_fee must be 0). returns 0 or CM_EINVAL (bad policy, refund or
 * state); the outputs are untouched on error. */
int stl_reverse_refund(int policy, const stl_split *orig, int64_t rev_fee, const int64_t *rev_parts,
                       int64_t refunded, int64_t refund, int64_t *out_fee, int64_t *out_parts);

/* names for logs and the proto's enum values: "platform", ... ; NULL for an
 * unknown value */
const char *stl_party_name(int type);

/* ---- the commission cost (README.md, "Commission cost") ----
 *
 * every change of a channel's commission that the commission service
 * publishes is booked as one entry: the payer (the order's merchant, or
 * the platform) debited, the channel's commission account credited, by
 * the signed delta of the channel's commission:
 *   STL_COST_ACCRUED      CommissionAccrued: +amount (>= 0)
 *   STL_COST_CLAWED_BACK  CommissionClawedBack: -clawback_amount (>= 0)
 *   STL_COST_ADJUSTED     CommissionAdjusted: +amount (either sign) for a
 *                         TRUE_UP, a PARENT_SHARE or a PERIOD_CLOSE (a
 *                         whole-volume period's final true-up, one
 *                         adjustment per merchant, no order); nothing for a
 *                         CLAWBACK adjustment, which is the payout-side
 *                         record of a clawback the CommissionClawedBack of
 *                         the same refund books already (booking both
 *                         would take the clawback twice).
 * so the entries of a channel sum to its net commission: its commissions
 * net of clawbacks, plus its true-ups, period closes and parent shares. */
enum { STL_COST_ACCRUED = 1, STL_COST_CLAWED_BACK = 2, STL_COST_ADJUSTED = 3 };
/* CommissionPayer and AdjustmentKind of the commission proto */
enum { STL_PAYER_UNSPECIFIED = 0, STL_PAYER_MERCHANT = 1, STL_PAYER_PLATFORM = 2 };
enum {
    STL_ADJ_TRUE_UP = 1,
    STL_ADJ_PARENT_SHARE = 2,
    STL_ADJ_CLAWBACK = 3,
    STL_ADJ_PERIOD_CLOSE = 4
};
/* the longest natural key: "clawback/" uuid "/" refund id */
#define STL_COST_KEY_MAX (9 + 36 + 1 + STL_ID_MAX)

typedef struct stl_cost_in {
    int kind;             /* STL_COST_* */
    int adj_kind;         /* STL_COST_ADJUSTED: STL_ADJ_* */
    int payer;            /* STL_PAYER_*; unspecified is the merchant (as the proto says) */
    int64_t amount;       /* as above */
    const char *merchant; /* the order's merchant */
    const char *platform; /* the platform's account owner (SETTLEMENT_PLATFORM_ID) */
} stl_cost_in;

typedef struct stl_cost {
    int payer_type;          /* STL_PARTY_MERCHANT or STL_PARTY_PLATFORM */
    const char *payer_owner; /* in->merchant or in->platform */
    int64_t delta;           /* the channel's commission changes by it: payer -delta */
} stl_cost;

#define STL_COST_NOTHING 1

/* decides the entry of one commission event. 0 with out filled;
 * STL_COST_NOTHING when it books nothing (a zero amount, a CLAWBACK
 * adjustment); CM_EINVAL for an event that cannot be booked (unknown kind,
 * adjustment kind or payer, a negative accrual or clawback, an amount of
 * INT64_MIN, no merchant for a merchant payer, no platform id). */
int stl_cost_of(const stl_cost_in *in, stl_cost *out);

/* the natural key of an event's entry (ref of the entry, unique per
 * tenant): "accrued/<commission id>", "clawback/<commission id>/<refund
 * id>", "adjustment/<adjustment id>". 0, or CM_EINVAL (unknown kind, an
 * empty id, or out of room: cap must exceed the key's length). */
int stl_cost_key(int kind, const char *commission_id, const char *refund_id,
                 const char *adjustment_id, char *out, size_t cap);

#endif
