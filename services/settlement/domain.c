/* settlement's pure rules: see stl_domain.h */
#include "stl_domain.h"

#include "cm_err.h"
#include "cm_money.h"

#include <stdio.h>
#include <string.h>

static int viol(stl_violation *v, const char *field, const char *why)
{
    if (v) {
        snprintf(v->field, sizeof v->field, "%s", field);
        snprintf(v->why, sizeof v->why, "%s", why);
    }
    return CM_EINVAL;
}

static int rviol(stl_violation *v, size_t i, const char *leaf, const char *why)
{
    char f[64];
    snprintf(f, sizeof f, "rule.receivers[%zu].%s", i, leaf);
    return viol(v, f, why);
}

/* a NUL within the array: strlen on it stays inside */
static int terminated(const char *s, size_t size)
{
    return memchr(s, '\0', size) != NULL;
}

int stl_rule_check(const stl_rule *rule, int64_t cap_bps, stl_violation *v)
{
    if (cap_bps < 0 || cap_bps > CM_MONEY_BPS_ONE)
        return viol(v, "cap_bps", "must be between 0 and 10000");
    if (!terminated(rule->currency, sizeof rule->currency) ||
        !cm_money_currency_valid(rule->currency))
        return viol(v, "rule.currency", "must be a known ISO-4217 code");
    if (rule->fee_bps < 0 || rule->fee_bps > CM_MONEY_BPS_ONE)
        return viol(v, "rule.fee.bps", "must be between 0 and 10000");
    if (rule->fee_fixed < 0)
        return viol(v, "rule.fee.fixed_minor", "must not be negative");
    if (rule->fee_min < 0)
        return viol(v, "rule.fee.min_minor", "must not be negative");
    if (rule->fee_max < 0)
        return viol(v, "rule.fee.max_minor", "must not be negative");
    if (rule->fee_max > 0 && rule->fee_max < rule->fee_min)
        return viol(v, "rule.fee.max_minor", "must not be below fee_min");
    if (rule->fee_bearer != STL_FEE_PRO_RATA && rule->fee_bearer != STL_FEE_MERCHANT)
        return viol(v, "rule.fee.bearer", "must be PRO_RATA or MERCHANT");
    if (rule->refund_policy != STL_REFUND_PRO_RATA &&
        rule->refund_policy != STL_REFUND_MERCHANT_FIRST &&
        rule->refund_policy != STL_REFUND_FEE_RETAINED)
        return viol(v, "rule.refund_policy", "must be PRO_RATA, MERCHANT_FIRST or FEE_RETAINED");
    if (rule->merchant_delay_days < 0 || rule->merchant_delay_days > STL_DELAY_DAYS_MAX)
        return viol(v, "rule.merchant_settle_delay_days", "must be between 0 and 365");
    if (rule->n > STL_RECEIVERS_MAX)
        return viol(v, "rule.receivers", "must hold at most 50 receivers");

    int64_t shares = 0, fixed = 0;
    for (size_t i = 0; i < rule->n; i++) {
        const stl_receiver *r = &rule->r[i];
        if (r->type == STL_PARTY_MERCHANT || !stl_party_name(r->type))
            return rviol(v, i, "type",
                         "must be platform, service provider, sub-merchant or "
                         "channel");
        if (!terminated(r->id, sizeof r->id))
            return rviol(v, i, "receiver_id", "must be at most 64 bytes");
        if (r->id[0] == '\0')
            return rviol(v, i, "receiver_id", "must not be empty");
        for (size_t j = 0; j < i; j++)
            if (rule->r[j].type == r->type && strcmp(rule->r[j].id, r->id) == 0)
                return rviol(v, i, "receiver_id",
                             "duplicates an earlier receiver (same type and id)");
        if (r->share_bps < 0 || r->share_bps > CM_MONEY_BPS_ONE)
            return rviol(v, i, "share_bps", "must be between 0 and 10000");
        /* both below 10000 * 51: no overflow */
        shares += r->share_bps;
        if (shares > CM_MONEY_BPS_ONE)
            return rviol(v, i, "share_bps", "brings the shares above 100 %");
        if (shares > cap_bps)
            return rviol(v, i, "share_bps", "brings the shares above the tenant's cap");
        if (r->fixed < 0)
            return rviol(v, i, "fixed_amount_minor", "must not be negative");
        if (cm_money_add(fixed, r->fixed, &fixed) != 0)
            return rviol(v, i, "fixed_amount_minor", "brings the fixed amounts' sum past int64");
        if (r->delay_days < 0 || r->delay_days > STL_DELAY_DAYS_MAX)
            return rviol(v, i, "settle_delay_days", "must be between 0 and 365");
    }
    return 0;
}

/* the arithmetic's preconditions, for a rule that skipped stl_rule_check:
 * a bad value is CM_EINVAL, a fixed sum past int64 CM_EOVERFLOW */
static int rule_sane(const stl_rule *rule, int64_t *shares, int64_t *fixed)
{
    if (rule->fee_bps < 0 || rule->fee_bps > CM_MONEY_BPS_ONE || rule->fee_fixed < 0 ||
        rule->fee_min < 0 || rule->fee_max < 0 || rule->n > STL_RECEIVERS_MAX)
        return CM_EINVAL;
    if (rule->fee_bearer != STL_FEE_PRO_RATA && rule->fee_bearer != STL_FEE_MERCHANT)
        return CM_EINVAL;
    *shares = 0;
    *fixed = 0;
    for (size_t i = 0; i < rule->n; i++) {
        if (rule->r[i].share_bps < 0 || rule->r[i].share_bps > CM_MONEY_BPS_ONE ||
            rule->r[i].fixed < 0)
            return CM_EINVAL;
        *shares += rule->r[i].share_bps;
        if (cm_money_add(*fixed, rule->r[i].fixed, fixed) != 0)
            return CM_EOVERFLOW;
    }
    return *shares > CM_MONEY_BPS_ONE ? CM_EINVAL : 0;
}

/* the fee for a rule whose fee fields are sane */
static int64_t fee_of(const stl_rule *rule, int64_t amount)
{
    int64_t pct, fee;
    /* amount * fee_bps / 10000 <= amount: cannot fail */
    cm_money_apply_bps(amount, rule->fee_bps, CM_ROUND_HALF_UP, &pct);
    /* past int64 the true sum is above the amount, which bounds the result
     * anyway: saturating keeps the fee exact */
    if (cm_money_add(pct, rule->fee_fixed, &fee) != 0)
        fee = INT64_MAX;
    if (fee < rule->fee_min)
        fee = rule->fee_min;
    if (rule->fee_max > 0 && fee > rule->fee_max)
        fee = rule->fee_max;
    return fee < amount ? fee : amount;
}

int stl_fee(const stl_rule *rule, int64_t amount, int64_t *fee)
{
    if (amount < 0 || rule->fee_bps < 0 || rule->fee_bps > CM_MONEY_BPS_ONE ||
        rule->fee_fixed < 0 || rule->fee_min < 0 || rule->fee_max < 0)
        return CM_EINVAL;
    *fee = fee_of(rule, amount);
    return 0;
}

int stl_split_payment(const stl_rule *rule, int64_t cap_bps, int64_t amount, stl_split *out)
{
    int64_t shares, fixed;
    if (amount < 0 || cap_bps < 0 || cap_bps > CM_MONEY_BPS_ONE)
        return CM_EINVAL;
    int rc = rule_sane(rule, &shares, &fixed);
    if (rc != 0)
        return rc;

    size_t n = rule->n;
    int64_t fee = fee_of(rule, amount);
    int64_t net = amount - fee; /* 0 <= fee <= amount */
    int64_t base = rule->fee_bearer == STL_FEE_PRO_RATA ? net : amount;

    /* the proportional split of what the fixed amounts leave; when they do
     * not fit there is nothing to split and they are granted in order */
    int64_t w[STL_PARTS_MAX], p[STL_PARTS_MAX];
    w[0] = CM_MONEY_BPS_ONE - shares;
    for (size_t i = 0; i < n; i++)
        w[i + 1] = rule->r[i].share_bps;
    int64_t pool = fixed <= base ? base - fixed : 0;
    rc = cm_money_split(pool, w, n + 1, p);
    if (rc != 0)
        return rc;
    int64_t room = base - pool; /* what the fixed amounts may take */
    int64_t others = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t f = rule->r[i].fixed < room ? rule->r[i].fixed : room;
        room -= f;
        p[i + 1] += f;
        others += p[i + 1]; /* the receivers' parts sum to at most base */
    }

    /* the cap, on the rounded parts */
    int64_t cap;
    cm_money_muldiv(net, cap_bps, CM_MONEY_BPS_ONE, CM_ROUND_FLOOR, &cap);
    int capped = others > cap;
    if (capped) {
        /* others > cap >= 0: some receiver's weight is positive */
        int64_t c[STL_RECEIVERS_MAX];
        rc = cm_money_split(cap, p + 1, n, c);
        if (rc != 0)
            return rc;
        memcpy(p + 1, c, n * sizeof *c);
        others = cap;
    }

    out->amount = amount;
    out->fee = fee;
    out->nparts = n + 1;
    /* others <= base only under PRO_RATA; the cap (<= 100 % of the net)
     * keeps the merchant's part non-negative under MERCHANT */
    out->parts[0] = net - others;
    for (size_t i = 1; i <= n; i++)
        out->parts[i] = p[i];
    for (size_t i = n + 1; i < STL_PARTS_MAX; i++)
        out->parts[i] = 0;
    out->capped = capped;
    return 0;
}

/* the orig split and the earlier reversals are a state this policy can
 * reach: parts and reversals in range, reversals summing to refunded */
static int refund_state_ok(int policy, const stl_split *orig, int64_t rev_fee,
                           const int64_t *rev_parts, int64_t refunded)
{
    size_t n = orig->nparts;
    if (n < 1 || n > STL_PARTS_MAX || orig->amount < 0 || orig->fee < 0 || orig->fee > orig->amount)
        return 0;
    if (rev_fee < 0 || rev_fee > orig->fee || (policy == STL_REFUND_FEE_RETAINED && rev_fee != 0))
        return 0;
    int64_t total = orig->fee, rev = rev_fee;
    for (size_t i = 0; i < n; i++) {
        int64_t limit = orig->parts[i];
        if (limit < 0 || rev_parts[i] < 0)
            return 0;
        /* under FEE_RETAINED the merchant is charged the retained fee too */
        if (i == 0 && policy == STL_REFUND_FEE_RETAINED &&
            cm_money_add(limit, orig->fee, &limit) != 0)
            return 0;
        if (rev_parts[i] > limit)
            return 0;
        if (cm_money_add(total, orig->parts[i], &total) != 0 ||
            cm_money_add(rev, rev_parts[i], &rev) != 0)
            return 0;
    }
    return total == orig->amount && rev == refunded;
}

int stl_reverse_refund(int policy, const stl_split *orig, int64_t rev_fee, const int64_t *rev_parts,
                       int64_t refunded, int64_t refund, int64_t *out_fee, int64_t *out_parts)
{
    if (policy != STL_REFUND_PRO_RATA && policy != STL_REFUND_MERCHANT_FIRST &&
        policy != STL_REFUND_FEE_RETAINED)
        return CM_EINVAL;
    if (refund <= 0 || refunded < 0 || !refund_state_ok(policy, orig, rev_fee, rev_parts, refunded))
        return CM_EINVAL;
    /* refunded <= amount here, so the difference cannot overflow */
    if (refund > orig->amount - refunded)
        return CM_EINVAL;

    size_t n = orig->nparts;
    int64_t whole[STL_PARTS_MAX + 1], done[STL_PARTS_MAX + 1], out[STL_PARTS_MAX + 1];
    int rc;

    switch (policy) {
    case STL_REFUND_PRO_RATA:
        /* one split over the fee and every part */
        whole[0] = orig->fee;
        done[0] = rev_fee;
        memcpy(whole + 1, orig->parts, n * sizeof *whole);
        memcpy(done + 1, rev_parts, n * sizeof *done);
        rc = cm_money_split_refund(refund, whole, done, n + 1, out);
        if (rc != 0)
            return rc;
        *out_fee = out[0];
        memcpy(out_parts, out + 1, n * sizeof *out);
        return 0;

    case STL_REFUND_MERCHANT_FIRST: {
        /* the fee against the parties together, then the parties' share
         * from the merchant first */
        whole[0] = orig->fee;
        whole[1] = orig->amount - orig->fee;
        done[0] = rev_fee;
        done[1] = refunded - rev_fee;
        rc = cm_money_split_refund(refund, whole, done, 2, out);
        if (rc != 0)
            return rc;
        int64_t parties = out[1];
        int64_t mleft = orig->parts[0] - rev_parts[0];
        int64_t m = parties < mleft ? parties : mleft;
        int64_t rest = parties - m;
        if (n > 1) {
            rc = cm_money_split_refund(rest, orig->parts + 1, rev_parts + 1, n - 1, out + 2);
            if (rc != 0)
                return rc;
        } else if (rest != 0) {
            return CM_EINTERNAL; /* unreachable: the merchant holds all */
        }
        *out_fee = out[0];
        out_parts[0] = m;
        memcpy(out_parts + 1, out + 2, (n - 1) * sizeof *out);
        return 0;
    }

    default: { /* STL_REFUND_FEE_RETAINED */
        /* pro rata over what the parts still hold; the merchant's
         * reversal beyond its part counts as holding nothing */
        int64_t held = 0;
        memcpy(whole, orig->parts, n * sizeof *whole);
        memcpy(done, rev_parts, n * sizeof *done);
        if (done[0] > whole[0])
            done[0] = whole[0];
        for (size_t i = 0; i < n; i++)
            held += whole[i] - done[i]; /* <= amount */
        int64_t k = refund < held ? refund : held;
        rc = cm_money_split_refund(k, whole, done, n, out);
        if (rc != 0)
            return rc;
        /* what the parts no longer hold: the retained fee, on the merchant */
        out[0] += refund - k;
        *out_fee = 0;
        memcpy(out_parts, out, n * sizeof *out);
        return 0;
    }
    }
}

const char *stl_party_name(int type)
{
    switch (type) {
    case STL_PARTY_MERCHANT:
        return "merchant";
    case STL_PARTY_PLATFORM:
        return "platform";
    case STL_PARTY_SERVICE_PROVIDER:
        return "service_provider";
    case STL_PARTY_SUB_MERCHANT:
        return "sub_merchant";
    case STL_PARTY_CHANNEL:
        return "channel";
    }
    return NULL;
}

/* ---- the commission cost ---- */

int stl_cost_of(const stl_cost_in *in, stl_cost *out)
{
    int64_t delta;
    switch (in->kind) {
    case STL_COST_ACCRUED:
        if (in->amount < 0)
            return CM_EINVAL;
        delta = in->amount;
        break;
    case STL_COST_CLAWED_BACK:
        if (in->amount < 0)
            return CM_EINVAL;
        delta = -in->amount;
        break;
    case STL_COST_ADJUSTED:
        if (in->adj_kind != STL_ADJ_TRUE_UP && in->adj_kind != STL_ADJ_PARENT_SHARE &&
            in->adj_kind != STL_ADJ_CLAWBACK && in->adj_kind != STL_ADJ_PERIOD_CLOSE)
            return CM_EINVAL;
        /* the entry's amount is |delta|: INT64_MIN has none */
        if (in->amount == INT64_MIN)
            return CM_EINVAL;
        if (in->adj_kind == STL_ADJ_CLAWBACK)
            return STL_COST_NOTHING; /* booked by the refund's CommissionClawedBack */
        delta = in->amount;
        break;
    default:
        return CM_EINVAL;
    }
    int type;
    const char *owner;
    switch (in->payer) {
    case STL_PAYER_UNSPECIFIED:
    case STL_PAYER_MERCHANT:
        type = STL_PARTY_MERCHANT;
        owner = in->merchant;
        break;
    case STL_PAYER_PLATFORM:
        type = STL_PARTY_PLATFORM;
        owner = in->platform;
        break;
    default:
        return CM_EINVAL;
    }
    if (!owner || !*owner)
        return CM_EINVAL;
    if (!delta)
        return STL_COST_NOTHING;
    out->payer_type = type;
    out->payer_owner = owner;
    out->delta = delta;
    return 0;
}

int stl_cost_key(int kind, const char *commission_id, const char *refund_id,
                 const char *adjustment_id, char *out, size_t cap)
{
    int n;
    switch (kind) {
    case STL_COST_ACCRUED:
        if (!commission_id || !*commission_id)
            return CM_EINVAL;
        n = snprintf(out, cap, "accrued/%s", commission_id);
        break;
    case STL_COST_CLAWED_BACK:
        if (!commission_id || !*commission_id || !refund_id || !*refund_id)
            return CM_EINVAL;
        n = snprintf(out, cap, "clawback/%s/%s", commission_id, refund_id);
        break;
    case STL_COST_ADJUSTED:
        if (!adjustment_id || !*adjustment_id)
            return CM_EINVAL;
        n = snprintf(out, cap, "adjustment/%s", adjustment_id);
        break;
    default:
        return CM_EINVAL;
    }
    return n < 0 || (size_t)n >= cap ? CM_EINVAL : 0;
}
