/* commission's pure rules: see cms_domain.h */
#include "cms_domain.h"

#include "cm_err.h"
#include "cm_money.h"

#include <stdio.h>
#include <string.h>

static int viol(cms_violation *v, const char *field, const char *why)
{
    if (v) {
        snprintf(v->field, sizeof v->field, "%s", field);
        snprintf(v->why, sizeof v->why, "%s", why);
    }
    return CM_EINVAL;
}

static int tviol(cms_violation *v, size_t i, const char *leaf, const char *why)
{
    char f[64];
    snprintf(f, sizeof f, "schedule.tiers[%zu].%s", i, leaf);
    return viol(v, f, why);
}

/* everything but the currency: what the arithmetic relies on */
static int shape_check(const cms_schedule *s, cms_violation *v)
{
    if (s->mode != CMS_MODE_MARGINAL && s->mode != CMS_MODE_WHOLE_VOLUME)
        return viol(v, "schedule.mode", "must be MARGINAL or WHOLE_VOLUME");
    if (s->n < 1 || s->n > CMS_TIERS_MAX)
        return viol(v, "schedule.tiers", "must hold 1 to 20 tiers");
    for (size_t i = 0; i < s->n; i++) {
        if (i == 0 && s->t[0].from_sales != 0)
            return tviol(v, 0, "from_sales.amount_minor", "must be 0 for the first tier");
        if (i > 0 && s->t[i].from_sales <= s->t[i - 1].from_sales)
            return tviol(v, i, "from_sales.amount_minor",
                         "must be above the previous tier's from_sales");
        if (s->t[i].rate_bps < 0 || s->t[i].rate_bps > CM_MONEY_BPS_ONE)
            return tviol(v, i, "rate_bps", "must be between 0 and 10000");
    }
    return 0;
}

int cms_schedule_check(const cms_schedule *s, cms_violation *v)
{
    if (memchr(s->currency, '\0', sizeof s->currency) == NULL ||
        !cm_money_currency_valid(s->currency))
        return viol(v, "schedule.currency", "must be a known ISO-4217 code");
    return shape_check(s, v);
}

/* the tier of sales >= 0 in a sane schedule: t[0] is 0, so one exists */
static size_t tier_of(const cms_schedule *s, int64_t sales)
{
    size_t k = 0;
    while (k + 1 < s->n && s->t[k + 1].from_sales <= sales)
        k++;
    return k;
}

/* floor(x * bps / 10000) for 0 <= bps <= 10000: |result| <= |x|, cannot fail */
static int64_t bps_floor(int64_t x, int64_t bps)
{
    int64_t r = 0;
    cm_money_apply_bps(x, bps, CM_ROUND_FLOOR, &r);
    return r;
}

/* C(sales) for a sane schedule and sales >= 0. marginal: the floor of the
 * whole sum, not a sum of floors, so each slice's product rate * len is
 * kept as quotient (cm_money_muldiv) and remainder mod 10000; the
 * remainders (at most 20 * 9999) are floored once at the end. sum of the
 * quotients <= sales: no overflow. */
static int64_t formula(const cms_schedule *s, int64_t sales)
{
    size_t k = tier_of(s, sales);
    if (s->mode == CMS_MODE_WHOLE_VOLUME)
        return bps_floor(sales, s->t[k].rate_bps);
    int64_t quot = 0, rem = 0;
    for (size_t i = 0; i <= k; i++) {
        int64_t hi = i < k ? s->t[i + 1].from_sales : sales;
        int64_t len = hi - s->t[i].from_sales; /* both in 0..sales */
        int64_t rate = s->t[i].rate_bps;
        quot += bps_floor(len, rate);
        rem += rate * (len % CM_MONEY_BPS_ONE) % CM_MONEY_BPS_ONE;
    }
    return quot + rem / CM_MONEY_BPS_ONE;
}

int cms_tier_of(const cms_schedule *s, int64_t sales, size_t *tier)
{
    if (sales < 0 || shape_check(s, NULL) != 0)
        return CM_EINVAL;
    *tier = tier_of(s, sales);
    return 0;
}

int cms_period_commission(const cms_schedule *s, int64_t sales, int64_t *out)
{
    if (sales < 0 || shape_check(s, NULL) != 0)
        return CM_EINVAL;
    *out = formula(s, sales);
    return 0;
}

/* the posting of a move from before to after (both >= 0) with the order's
 * part already known: total and true_up follow */
static int finish(const cms_schedule *s, int64_t before, int64_t after, int64_t order_amount,
                  cms_posting *out)
{
    cms_posting p;
    p.sales_before = before;
    p.sales_after = after;
    p.tier_before = tier_of(s, before);
    p.tier_after = tier_of(s, after);
    /* both values of C are in 0..INT64_MAX: the difference fits */
    p.total = formula(s, after) - formula(s, before);
    p.order_amount = order_amount;
    if (cm_money_sub(p.total, order_amount, &p.true_up) != 0)
        return CM_EOVERFLOW;
    *out = p;
    return 0;
}

/* the order's part of an accrual; after = before + amount, both sane */
static int64_t accrual_own(const cms_schedule *s, int64_t before, int64_t after)
{
    if (s->mode == CMS_MODE_MARGINAL)
        return formula(s, after) - formula(s, before);
    int64_t rate = s->t[tier_of(s, after)].rate_bps;
    return bps_floor(after, rate) - bps_floor(before, rate);
}

int cms_accrue(const cms_schedule *s, int64_t sales_before, int64_t amount, cms_posting *out)
{
    int64_t after;
    if (sales_before < 0 || amount < 0 || shape_check(s, NULL) != 0)
        return CM_EINVAL;
    if (cm_money_add(sales_before, amount, &after) != 0)
        return CM_EOVERFLOW;
    return finish(s, sales_before, after, accrual_own(s, sales_before, after), out);
}

int cms_clawback(const cms_schedule *s, int64_t sales_before, const cms_order *o, int64_t refund,
                 cms_posting *out)
{
    if (shape_check(s, NULL) != 0 || refund <= 0 || sales_before < 0)
        return CM_EINVAL;
    if (o->amount <= 0 || o->commission < 0 || o->commission > o->amount || o->refunded < 0 ||
        o->refunded > o->amount || refund > o->amount - o->refunded ||
        o->amount - o->refunded > sales_before)
        return CM_EINVAL;
    /* f(x) = floor(commission * x / amount) with x <= amount: in
     * 0..commission, cannot fail */
    int64_t f0 = 0, f1 = 0;
    cm_money_muldiv(o->commission, o->refunded, o->amount, CM_ROUND_FLOOR, &f0);
    cm_money_muldiv(o->commission, o->refunded + refund, o->amount, CM_ROUND_FLOOR, &f1);
    return finish(s, sales_before, sales_before - refund, f0 - f1, out);
}

int cms_true_up(const cms_schedule *s, int64_t net_sales, int64_t posted, int64_t *adj)
{
    if (net_sales < 0 || shape_check(s, NULL) != 0)
        return CM_EINVAL;
    return cm_money_sub(formula(s, net_sales), posted, adj);
}

int cms_parent_share(int64_t override_bps, int64_t base_before, int64_t delta, int64_t *share)
{
    int64_t after;
    if (override_bps < 0 || override_bps > CM_MONEY_BPS_ONE)
        return CM_EINVAL;
    if (cm_money_add(base_before, delta, &after) != 0)
        return CM_EOVERFLOW;
    /* |P(after) - P(before)| <= |delta|: fits, but checked all the same */
    return cm_money_sub(bps_floor(after, override_bps), bps_floor(base_before, override_bps),
                        share);
}

int cms_progress_of(const cms_schedule *s, int64_t sales, cms_progress *out)
{
    if (sales < 0 || shape_check(s, NULL) != 0)
        return CM_EINVAL;
    cms_progress p;
    memset(&p, 0, sizeof p);
    p.tier = tier_of(s, sales);
    p.rate_bps = s->t[p.tier].rate_bps;
    p.commission = formula(s, sales);
    if (p.tier + 1 < s->n) {
        const cms_tier *next = &s->t[p.tier + 1];
        p.has_next = 1;
        p.next_from_sales = next->from_sales;
        p.sales_needed = next->from_sales - sales;
        p.next_rate_bps = next->rate_bps;
        p.next_commission = formula(s, next->from_sales);
    }
    *out = p;
    return 0;
}

int cms_portions(const cms_schedule *s, int64_t sales_before, int64_t amount, cms_portion *out,
                 size_t *n)
{
    int64_t after;
    if (sales_before < 0 || amount < 0 || shape_check(s, NULL) != 0)
        return CM_EINVAL;
    if (cm_money_add(sales_before, amount, &after) != 0)
        return CM_EOVERFLOW;
    size_t m = 0;
    if (amount > 0 && s->mode == CMS_MODE_WHOLE_VOLUME) {
        out[0].tier = tier_of(s, after);
        out[0].sales = amount;
        out[0].commission = accrual_own(s, sales_before, after);
        m = 1;
    } else if (amount > 0) {
        /* the slice [before, after) cut at each bound it crosses; the
         * pieces' C differences telescope to the order's accrual */
        int64_t lo = sales_before;
        for (size_t k = tier_of(s, sales_before); lo < after; k++) {
            int64_t hi =
                k + 1 < s->n && s->t[k + 1].from_sales < after ? s->t[k + 1].from_sales : after;
            out[m].tier = k;
            out[m].sales = hi - lo;
            out[m].commission = formula(s, hi) - formula(s, lo);
            m++;
            lo = hi;
        }
    }
    *n = m;
    return 0;
}

const char *cms_mode_name(int mode)
{
    switch (mode) {
    case CMS_MODE_MARGINAL:
        return "marginal";
    case CMS_MODE_WHOLE_VOLUME:
        return "whole_volume";
    default:
        return NULL;
    }
}

int cms_window_check(int64_t seconds, int32_t nanos, cms_violation *v)
{
    const char *why = NULL;
    if (seconds < 0 || nanos < 0)
        why = "must not be negative";
    else if (nanos != 0)
        why = "must be a whole number of seconds";
    else if (seconds > CMS_WINDOW_MAX_S)
        why = "at most 90 days (7776000 s)";
    if (!why)
        return 0;
    if (v) {
        snprintf(v->field, sizeof v->field, "%s", "settings.after_sale_window");
        snprintf(v->why, sizeof v->why, "%s", why);
    }
    return CM_EINVAL;
}

int64_t cms_window_of(int has_own, int64_t own_s, int64_t default_days)
{
    return has_own ? own_s : default_days * 86400;
}

int cms_close(const cms_schedule *s, const int64_t *net, const int64_t *posted, size_t n,
              int64_t *net_total, int64_t *commission, int64_t *adj)
{
    if (!n || shape_check(s, NULL) != 0)
        return CM_EINVAL;
    int64_t ns = 0, ps = 0;
    for (size_t i = 0; i < n; i++) {
        if (net[i] < 0)
            return CM_EINVAL;
        if (cm_money_add(ns, net[i], &ns) != 0 || cm_money_add(ps, posted[i], &ps) != 0)
            return CM_EOVERFLOW;
    }
    int64_t a;
    int rc = cms_true_up(s, ns, ps, &a);
    if (rc)
        return rc;
    *net_total = ns;
    *commission = formula(s, ns);
    *adj = a;
    return 0;
}

int cms_close_split(int64_t amount, const int64_t *net, size_t n, size_t fallback, int64_t *parts)
{
    if (!n || fallback >= n)
        return CM_EINVAL;
    int any = 0;
    for (size_t i = 0; i < n; i++) {
        if (net[i] < 0)
            return CM_EINVAL;
        any |= net[i] > 0;
    }
    if (any)
        return cm_money_split(amount, net, n, parts);
    for (size_t i = 0; i < n; i++)
        parts[i] = i == fallback ? amount : 0;
    return 0;
}

void cms_posting_closed(cms_posting *p)
{
    p->true_up = 0;
    p->total = p->order_amount;
}
