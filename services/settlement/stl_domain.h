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
 * amount.
 *
 * who bears the fee (fee_bearer):
 *   STL_FEE_PRO_RATA  shares apply to the net (amount - fee): every party
 *                     bears the fee in proportion to its share.
 *   STL_FEE_MERCHANT  shares apply to the gross amount; the merchant's
 *                     remainder absorbs the whole fee.
 * the receivers' parts: the share base (net or gross, above) minus the sum
 * of fixed amounts is split among (merchant, receivers...) by
 * cm_money_split with weights (10000 - sum(share_bps), share_bps...), then
 * each receiver's fixed_amount is added; fixed amounts that do not fit are
 * reduced in receiver order (a part is never negative). the merchant gets
 * what is left.
 *
 * the cap: the total to others (every receiver) may not exceed cap_bps of
 * the net amount (amount - fee: what WeChat Pay checks its 30 % against),
 * checked on the rounded parts. when the parts exceed it, the cap amount
 * (floor of net * cap_bps / 10000) is split among the receivers in
 * proportion to their uncapped parts (cm_money_split) and the rest goes to
 * the merchant; the split says capped = 1.
 *
 * refunds (refund_policy), with `refunded` the cumulative reversal so far:
 *   STL_REFUND_PRO_RATA      (default) the refund is reversed over the fee
 *                            and every part in proportion to what of each
 *                            is not yet reversed (cm_money_split_refund):
 *                            refunds summing to the amount return every
 *                            part and the fee to zero exactly.
 *   STL_REFUND_MERCHANT_FIRST the fee is reversed pro rata as above; the
 *                            parties' share of the refund is taken from the
 *                            merchant's remaining part first, the rest pro
 *                            rata from the receivers' remaining parts.
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
    int type;            /* STL_PARTY_*, not MERCHANT */
    char id[STL_ID_MAX + 1];
    int64_t share_bps;   /* 0..10000 */
    int64_t fixed;       /* minor units, >= 0 */
    int delay_days;      /* 0: T+0 real time; N: T+N calendar days */
} stl_receiver;

typedef struct stl_rule {
    char currency[4];
    int64_t fee_bps;     /* 0..10000 */
    int64_t fee_fixed;   /* >= 0 */
    int64_t fee_min;     /* >= 0; 0: none */
    int64_t fee_max;     /* >= 0; 0: none; >= fee_min when both set */
    int fee_bearer;      /* STL_FEE_* */
    int refund_policy;   /* STL_REFUND_* */
    int merchant_delay_days;
    size_t n;            /* receivers, 0..STL_RECEIVERS_MAX */
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
 * non-negative and their sums free of overflow. returns 0 or CM_EINVAL with
 * v naming the first offending field (paths under "rule."). */
int stl_rule_check(const stl_rule *rule, int64_t cap_bps, stl_violation *v);

typedef struct stl_split {
    int64_t amount;              /* the paid amount */
    int64_t fee;                 /* the provider's fee */
    size_t nparts;               /* 1 + rule->n */
    int64_t parts[STL_PARTS_MAX]; /* [0] merchant, [i] receiver i-1 */
    int capped;                  /* the cap reduced the receivers' parts */
} stl_split;

/* the fee alone (as described above); 0, CM_EINVAL (amount < 0) or
 * CM_EOVERFLOW. */
int stl_fee(const stl_rule *rule, int64_t amount, int64_t *fee);

/* splits a payment of amount (>= 0) by a checked rule under the tenant's
 * cap. returns 0, CM_EINVAL (amount < 0) or CM_EOVERFLOW. */
int stl_split_payment(const stl_rule *rule, int64_t cap_bps, int64_t amount, stl_split *out);

/* the reversal of one refund. orig is the payment's split; rev_fee and
 * rev_parts[0..orig->nparts) are what earlier refunds reversed (all >= 0,
 * cumulative); refunded is their total (earlier refunds), refund this
 * one's amount (> 0, refunded + refund <= orig->amount). out_fee and
 * out_parts[0..nparts) receive this refund's reversal (>= 0 each) with
 * out_fee + sum(out_parts) == refund. returns 0 or CM_EINVAL. */
int stl_reverse_refund(int policy, const stl_split *orig, int64_t rev_fee, const int64_t *rev_parts,
                       int64_t refunded, int64_t refund, int64_t *out_fee, int64_t *out_parts);

/* names for logs and the proto's enum values: "platform", ... ; NULL for an
 * unknown value */
const char *stl_party_name(int type);

#endif
