/* settlement's pure rules (services/settlement/domain.c) */
#include "cm_err.h"
#include "cm_money.h"
#include "stl_domain.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef __int128 i128;

/* xorshift64*: fixed seeds, the same sequence on every platform, so a
 * failure's iteration number replays it */
static uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* lo..hi inclusive, lo >= 0 */
static int64_t rnd_range(uint64_t *s, int64_t lo, int64_t hi)
{
    uint64_t span = (uint64_t)hi - (uint64_t)lo + 1;
    return (int64_t)((uint64_t)lo + rnd(s) % span);
}

static void add_receiver(stl_rule *r, int type, const char *id, int64_t share_bps, int64_t fixed,
                         int delay_days)
{
    stl_receiver *x = &r->r[r->n++];
    memset(x, 0, sizeof *x);
    x->type = type;
    snprintf(x->id, sizeof x->id, "%.*s", STL_ID_MAX, id);
    x->share_bps = share_bps;
    x->fixed = fixed;
    x->delay_days = delay_days;
}

/* the seed tenant: "0.3 % + 0.10" in CNY, the fee shared, platform 50 %
 * (T+0), service provider 30 % (T+1), sub-merchant 20 % (T+0) */
static void seed_rule(stl_rule *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->currency, sizeof r->currency, "CNY");
    r->fee_bps = 30;
    r->fee_fixed = 10;
    r->fee_bearer = STL_FEE_PRO_RATA;
    r->refund_policy = STL_REFUND_PRO_RATA;
    add_receiver(r, STL_PARTY_PLATFORM, "plat-1", 5000, 0, 0);
    add_receiver(r, STL_PARTY_SERVICE_PROVIDER, "sp-1", 3000, 0, 1);
    add_receiver(r, STL_PARTY_SUB_MERCHANT, "sub-1", 2000, 0, 0);
}

static void plain_rule(stl_rule *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->currency, sizeof r->currency, "CNY");
    r->fee_bearer = STL_FEE_PRO_RATA;
    r->refund_policy = STL_REFUND_PRO_RATA;
}

static void assert_parts(const stl_split *s, int64_t fee, const int64_t *want, size_t n)
{
    ck_assert_int_eq(s->fee, fee);
    ck_assert_uint_eq(s->nparts, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(s->parts[i] == want[i], "parts[%zu] = %lld, want %lld", i,
                      (long long)s->parts[i], (long long)want[i]);
}

START_TEST(seed_example_splits_to_the_minor_unit)
{
    stl_rule r;
    stl_split s;
    stl_violation v;
    seed_rule(&r);
    ck_assert_int_eq(stl_rule_check(&r, 10000, &v), 0);

    /* 10000: fee 10000 * 0.3 % = 30, + 10 = 40; net 9960 split 0 : 50 : 30
     * : 20 -> 4980, 2988, 1992 exactly; the merchant keeps nothing */
    ck_assert_int_eq(stl_split_payment(&r, 10000, 10000, &s), 0);
    assert_parts(&s, 40, (int64_t[]){0, 4980, 2988, 1992}, 4);
    ck_assert_int_eq(s.amount, 10000);
    ck_assert_int_eq(s.capped, 0);

    /* 12345: 12345 * 30 / 10000 = 37.035 -> 37, + 10 = 47; net 12298:
     * platform 12298 * 0.5 = 6149, sp 12298 * 0.3 = 3689.4, sub 12298 * 0.2
     * = 2459.6; the floors give 12297, the one fen left goes to the
     * largest remainder (sub's .6): 6149, 3689, 2460 */
    ck_assert_int_eq(stl_split_payment(&r, 10000, 12345, &s), 0);
    assert_parts(&s, 47, (int64_t[]){0, 6149, 3689, 2460}, 4);

    /* 1 fen: the fee (0 + 10) is bounded by the amount; nothing to share */
    ck_assert_int_eq(stl_split_payment(&r, 10000, 1, &s), 0);
    assert_parts(&s, 1, (int64_t[]){0, 0, 0, 0}, 4);
    ck_assert_int_eq(stl_split_payment(&r, 10000, 0, &s), 0);
    assert_parts(&s, 0, (int64_t[]){0, 0, 0, 0}, 4);

    /* 167: 0.501 -> 1, + 10 = 11; net 156: 78, 46.8, 31.2 -> 78, 47, 31 */
    ck_assert_int_eq(stl_split_payment(&r, 10000, 167, &s), 0);
    assert_parts(&s, 11, (int64_t[]){0, 78, 47, 31}, 4);
}
END_TEST

START_TEST(seed_rule_is_refused_under_the_default_cap)
{
    stl_rule r;
    stl_split s;
    stl_violation v;
    seed_rule(&r);
    ck_assert_int_eq(stl_rule_check(&r, STL_DEFAULT_CAP_BPS, &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "rule.receivers[0].share_bps");
    ck_assert_ptr_nonnull(strstr(v.why, "cap"));

    /* a rule checked under a higher cap, split after the tenant's cap fell
     * to 30 %: the cap is floor(9960 * 0.3) = 2988, shared by the uncapped
     * parts 4980 : 2988 : 1992 -> 1494, 896.4, 597.6 -> 1494, 896, 598;
     * the merchant gets 9960 - 2988 */
    ck_assert_int_eq(stl_split_payment(&r, STL_DEFAULT_CAP_BPS, 10000, &s), 0);
    assert_parts(&s, 40, (int64_t[]){6972, 1494, 896, 598}, 4);
    ck_assert_int_eq(s.capped, 1);
}
END_TEST

START_TEST(fee_is_bounded_by_min_max_and_the_amount)
{
    stl_rule r;
    int64_t fee;
    plain_rule(&r);
    r.fee_bps = 60;
    r.fee_fixed = 0;
    r.fee_min = 50;
    r.fee_max = 500;
    ck_assert_int_eq(stl_fee(&r, 1000, &fee), 0); /* 6 -> min 50 */
    ck_assert_int_eq(fee, 50);
    ck_assert_int_eq(stl_fee(&r, 20, &fee), 0); /* min 50 -> the amount */
    ck_assert_int_eq(fee, 20);
    ck_assert_int_eq(stl_fee(&r, 50000, &fee), 0); /* 300 */
    ck_assert_int_eq(fee, 300);
    ck_assert_int_eq(stl_fee(&r, 10000000, &fee), 0); /* 60000 -> max 500 */
    ck_assert_int_eq(fee, 500);
    /* half up: 25 * 60 / 10000 = 0.15 -> 0; 1250 * 60 / 10000 = 7.5 -> 8 */
    r.fee_min = 0;
    r.fee_max = 0;
    ck_assert_int_eq(stl_fee(&r, 25, &fee), 0);
    ck_assert_int_eq(fee, 0);
    ck_assert_int_eq(stl_fee(&r, 1250, &fee), 0);
    ck_assert_int_eq(fee, 8);
    ck_assert_int_eq(stl_fee(&r, -1, &fee), CM_EINVAL);

    /* near INT64_MAX the fee stays exact: the percentage plus a fixed fee
     * past int64 is above the amount, so the fee is the amount (or fee_max) */
    r.fee_bps = 10000;
    r.fee_fixed = INT64_MAX;
    ck_assert_int_eq(stl_fee(&r, INT64_MAX, &fee), 0);
    ck_assert_int_eq(fee, INT64_MAX);
    r.fee_max = 123;
    ck_assert_int_eq(stl_fee(&r, INT64_MAX, &fee), 0);
    ck_assert_int_eq(fee, 123);
    r.fee_bps = 30;
    r.fee_fixed = 10;
    r.fee_max = 0;
    /* (2^63 - 1) * 30 / 10000 = 27670116110564327.421... -> ...327, + 10 */
    ck_assert_int_eq(stl_fee(&r, INT64_MAX, &fee), 0);
    ck_assert_int_eq(fee, 27670116110564337LL);
}
END_TEST

START_TEST(merchant_bearer_shares_the_gross)
{
    stl_rule r;
    stl_split s;
    seed_rule(&r);
    r.fee_bearer = STL_FEE_MERCHANT;
    r.n = 0;
    add_receiver(&r, STL_PARTY_PLATFORM, "plat-1", 3000, 0, 0);
    /* fee 40; platform 30 % of the gross 10000 = 3000; the merchant
     * absorbs the fee: 10000 - 40 - 3000 */
    ck_assert_int_eq(stl_split_payment(&r, 10000, 10000, &s), 0);
    assert_parts(&s, 40, (int64_t[]){6960, 3000}, 2);
    ck_assert_int_eq(s.capped, 0);
    /* 3000 is above 30 % of the net (2988): capped */
    ck_assert_int_eq(stl_split_payment(&r, 3000, 10000, &s), 0);
    assert_parts(&s, 40, (int64_t[]){6972, 2988}, 2);
    ck_assert_int_eq(s.capped, 1);
    /* 100 % of the gross to others would leave the merchant at -fee: the
     * cap (at most 100 % of the net) keeps it at zero */
    r.r[0].share_bps = 10000;
    ck_assert_int_eq(stl_split_payment(&r, 10000, 10000, &s), 0);
    assert_parts(&s, 40, (int64_t[]){0, 9960}, 2);
    ck_assert_int_eq(s.capped, 1);
}
END_TEST

START_TEST(fixed_amounts_come_off_the_base_and_are_granted_in_order)
{
    stl_rule r;
    stl_split s;
    plain_rule(&r);
    add_receiver(&r, STL_PARTY_PLATFORM, "p", 1000, 100, 0);
    add_receiver(&r, STL_PARTY_CHANNEL, "c", 0, 50, 0);
    /* 1000 - 150 = 850 split 9000 : 1000 : 0 -> 765, 85, 0; + fixed */
    ck_assert_int_eq(stl_split_payment(&r, 10000, 1000, &s), 0);
    assert_parts(&s, 0, (int64_t[]){765, 185, 50}, 3);
    /* 120 cannot hold 150: platform's 100 first, channel the 20 left */
    ck_assert_int_eq(stl_split_payment(&r, 10000, 120, &s), 0);
    assert_parts(&s, 0, (int64_t[]){0, 100, 20}, 3);
    /* the cap still holds on the parts with fixed amounts: 20 % of 1000 =
     * 200 shared 185 : 50 -> 157.4, 42.5 -> 157, 43 */
    ck_assert_int_eq(stl_split_payment(&r, 2000, 1000, &s), 0);
    assert_parts(&s, 0, (int64_t[]){800, 157, 43}, 3);
    ck_assert_int_eq(s.capped, 1);
}
END_TEST

START_TEST(overflow_is_an_error_not_a_wrong_split)
{
    stl_rule r;
    stl_split s;
    stl_violation v;
    plain_rule(&r);
    add_receiver(&r, STL_PARTY_PLATFORM, "a", 0, INT64_MAX, 0);
    add_receiver(&r, STL_PARTY_PLATFORM, "b", 0, 1, 0);
    ck_assert_int_eq(stl_rule_check(&r, 10000, &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "rule.receivers[1].fixed_amount_minor");
    /* unchecked, the split refuses rather than wrap, and writes nothing */
    stl_split before;
    memset(&s, 0x5a, sizeof s);
    before = s;
    ck_assert_int_eq(stl_split_payment(&r, 10000, INT64_MAX, &s), CM_EOVERFLOW);
    ck_assert_int_eq(memcmp(&s, &before, sizeof s), 0);
    /* one INT64_MAX fixed amount on its own is fine: the receiver takes
     * the whole net */
    r.n = 1;
    ck_assert_int_eq(stl_split_payment(&r, 10000, INT64_MAX, &s), 0);
    assert_parts(&s, 0, (int64_t[]){0, INT64_MAX}, 2);
    /* out-of-range values in an unchecked rule or cap */
    ck_assert_int_eq(stl_split_payment(&r, 10001, 1, &s), CM_EINVAL);
    ck_assert_int_eq(stl_split_payment(&r, -1, 1, &s), CM_EINVAL);
    ck_assert_int_eq(stl_split_payment(&r, 10000, -1, &s), CM_EINVAL);
    r.r[0].share_bps = 10001;
    ck_assert_int_eq(stl_split_payment(&r, 10000, 1, &s), CM_EINVAL);
}
END_TEST

/* each bad field, named */
START_TEST(rule_check_names_each_bad_field)
{
    stl_rule r;
    stl_violation v;
    char id[80];

#define EXPECT_FIELD(cap, want)                                                                    \
    do {                                                                                           \
        memset(&v, 0, sizeof v);                                                                   \
        ck_assert_int_eq(stl_rule_check(&r, (cap), &v), CM_EINVAL);                                \
        ck_assert_str_eq(v.field, (want));                                                         \
        ck_assert_msg(v.why[0] != '\0', "no reason for %s", (want));                               \
    } while (0)

    seed_rule(&r);
    r.r[2].share_bps = 2001; /* 100.01 % */
    EXPECT_FIELD(10000, "rule.receivers[2].share_bps");
    ck_assert_ptr_nonnull(strstr(v.why, "100 %"));

    seed_rule(&r);
    EXPECT_FIELD(9999, "rule.receivers[2].share_bps"); /* the cap */
    ck_assert_ptr_nonnull(strstr(v.why, "cap"));
    EXPECT_FIELD(10001, "cap_bps");

    seed_rule(&r);
    r.r[1].share_bps = -1;
    EXPECT_FIELD(10000, "rule.receivers[1].share_bps");

    seed_rule(&r);
    snprintf(r.currency, sizeof r.currency, "XXX");
    EXPECT_FIELD(10000, "rule.currency");
    snprintf(r.currency, sizeof r.currency, "cny");
    EXPECT_FIELD(10000, "rule.currency");
    memcpy(r.currency, "CNYX", 4); /* no NUL */
    EXPECT_FIELD(10000, "rule.currency");

    seed_rule(&r);
    r.fee_fixed = -1;
    EXPECT_FIELD(10000, "rule.fee.fixed_minor");
    seed_rule(&r);
    r.fee_bps = 10001;
    EXPECT_FIELD(10000, "rule.fee.bps");
    seed_rule(&r);
    r.fee_min = -5;
    EXPECT_FIELD(10000, "rule.fee.min_minor");
    seed_rule(&r);
    r.fee_max = -5;
    EXPECT_FIELD(10000, "rule.fee.max_minor");
    seed_rule(&r);
    r.fee_min = 100;
    r.fee_max = 99;
    EXPECT_FIELD(10000, "rule.fee.max_minor");
    r.fee_max = 0; /* no upper bound */
    ck_assert_int_eq(stl_rule_check(&r, 10000, &v), 0);
    r.fee_max = 100;
    ck_assert_int_eq(stl_rule_check(&r, 10000, &v), 0);

    seed_rule(&r);
    r.fee_bearer = 0;
    EXPECT_FIELD(10000, "rule.fee.bearer");
    seed_rule(&r);
    r.refund_policy = 4;
    EXPECT_FIELD(10000, "rule.refund_policy");
    seed_rule(&r);
    r.merchant_delay_days = STL_DELAY_DAYS_MAX + 1;
    EXPECT_FIELD(10000, "rule.merchant_settle_delay_days");

    seed_rule(&r);
    r.r[1].fixed = -1;
    EXPECT_FIELD(10000, "rule.receivers[1].fixed_amount_minor");
    seed_rule(&r);
    r.r[0].fixed = INT64_MAX - 5;
    r.r[2].fixed = 6;
    EXPECT_FIELD(10000, "rule.receivers[2].fixed_amount_minor"); /* the sum overflows */
    r.r[2].fixed = 5;
    ck_assert_int_eq(stl_rule_check(&r, 10000, &v), 0);

    seed_rule(&r);
    r.r[2].type = STL_PARTY_SERVICE_PROVIDER;
    snprintf(r.r[2].id, sizeof r.r[2].id, "sp-1");
    EXPECT_FIELD(10000, "rule.receivers[2].receiver_id"); /* duplicate */
    ck_assert_ptr_nonnull(strstr(v.why, "duplicates"));
    r.r[2].type = STL_PARTY_PLATFORM; /* same id, other type: fine */
    ck_assert_int_eq(stl_rule_check(&r, 10000, &v), 0);

    seed_rule(&r);
    r.r[1].id[0] = '\0';
    EXPECT_FIELD(10000, "rule.receivers[1].receiver_id");
    seed_rule(&r);
    memset(r.r[1].id, 'x', sizeof r.r[1].id); /* 65 bytes, no NUL */
    EXPECT_FIELD(10000, "rule.receivers[1].receiver_id");
    memset(r.r[1].id, 'x', STL_ID_MAX); /* 64 bytes: the most */
    r.r[1].id[STL_ID_MAX] = '\0';
    ck_assert_int_eq(stl_rule_check(&r, 10000, &v), 0);

    seed_rule(&r);
    r.r[0].type = STL_PARTY_MERCHANT;
    EXPECT_FIELD(10000, "rule.receivers[0].type");
    r.r[0].type = 6;
    EXPECT_FIELD(10000, "rule.receivers[0].type");
    seed_rule(&r);
    r.r[2].delay_days = -1;
    EXPECT_FIELD(10000, "rule.receivers[2].settle_delay_days");

    /* 50 receivers are fine, 51 are not */
    plain_rule(&r);
    for (int i = 0; i < STL_RECEIVERS_MAX; i++) {
        snprintf(id, sizeof id, "r%d", i);
        add_receiver(&r, STL_PARTY_SUB_MERCHANT, id, 10, 1, 0);
    }
    ck_assert_int_eq(stl_rule_check(&r, 10000, &v), 0);
    r.n = STL_RECEIVERS_MAX + 1;
    EXPECT_FIELD(10000, "rule.receivers");
#undef EXPECT_FIELD
}
END_TEST

/* --- properties over random rules and amounts --- */

/* check's ck_assert records its location on every call (a write to its
 * pipe): in loops of 20000 that is most of the run, so assert only on
 * failure */
#define PROP(cond, ...)                                                                            \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg(__VA_ARGS__);                                                             \
    } while (0)

static int64_t rnd_amount(uint64_t *s)
{
    switch (rnd(s) % 6) {
    case 0:
        return rnd_range(s, 0, 100);
    case 1:
        return rnd_range(s, 0, 100000);
    case 2:
        return rnd_range(s, 0, 1000000000000LL);
    case 3:
        return INT64_MAX - rnd_range(s, 0, 1000);
    case 4:
        return INT64_MAX;
    default:
        return (int64_t)(rnd(s) >> 1);
    }
}

/* a random rule that passes stl_rule_check under *cap */
static void rnd_rule(uint64_t *s, stl_rule *r, int64_t *cap)
{
    memset(r, 0, sizeof *r);
    snprintf(r->currency, sizeof r->currency, "%s",
             (const char *[]){"CNY", "USD", "JPY"}[rnd(s) % 3]);
    switch (rnd(s) % 3) {
    case 0:
        r->fee_bps = 0;
        break;
    case 1:
        r->fee_bps = rnd_range(s, 0, 100);
        break;
    default:
        r->fee_bps = rnd_range(s, 0, 10000);
    }
    switch (rnd(s) % 3) {
    case 0:
        r->fee_fixed = 0;
        break;
    case 1:
        r->fee_fixed = rnd_range(s, 0, 1000);
        break;
    default:
        r->fee_fixed = (int64_t)(rnd(s) >> 1);
    }
    r->fee_min = rnd(s) % 2 ? 0 : rnd_range(s, 0, 1000);
    r->fee_max = rnd(s) % 2 ? 0 : r->fee_min + rnd_range(s, 0, 100000);
    r->fee_bearer = rnd(s) % 2 ? STL_FEE_PRO_RATA : STL_FEE_MERCHANT;
    r->refund_policy = (int)rnd_range(s, 1, 3);
    r->merchant_delay_days = (int)rnd_range(s, 0, STL_DELAY_DAYS_MAX);
    switch (rnd(s) % 3) {
    case 0:
        *cap = STL_DEFAULT_CAP_BPS;
        break;
    case 1:
        *cap = 10000;
        break;
    default:
        *cap = rnd_range(s, 0, 10000);
    }
    r->n = (size_t)rnd_range(s, 0, STL_RECEIVERS_MAX);
    int64_t left = *cap;
    int fill = rnd(s) % 4 == 0; /* the shares reach the cap exactly */
    for (size_t i = 0; i < r->n; i++) {
        stl_receiver *x = &r->r[i];
        x->type = (int)rnd_range(s, STL_PARTY_PLATFORM, STL_PARTY_CHANNEL);
        snprintf(x->id, sizeof x->id, "recv-%zu", i);
        int64_t hi = left / (int64_t)(r->n - i) * 2;
        x->share_bps = rnd_range(s, 0, hi < left ? hi : left);
        if (fill && i + 1 == r->n)
            x->share_bps = left;
        left -= x->share_bps;
        switch (rnd(s) % 4) {
        case 0:
            x->fixed = rnd_range(s, 0, 1000);
            break;
        case 1:
            x->fixed = rnd_range(s, 0, INT64_MAX / (STL_RECEIVERS_MAX + 1));
            break;
        default:
            x->fixed = 0;
        }
        x->delay_days = (int)rnd_range(s, 0, STL_DELAY_DAYS_MAX);
    }
}

/* the fee as the header states it, in 128 bits */
static int64_t fee_oracle(const stl_rule *r, int64_t amount)
{
    i128 f = ((i128)amount * r->fee_bps + 5000) / 10000 + r->fee_fixed;
    if (f < r->fee_min)
        f = r->fee_min;
    if (r->fee_max > 0 && f > r->fee_max)
        f = r->fee_max;
    return (int64_t)(f < amount ? f : amount);
}

/* q is floor or ceil of num / den (num >= 0, den > 0) */
static int near(i128 q, i128 num, i128 den)
{
    return q * den <= num + den - 1 && q * den >= num - den + 1;
}

START_TEST(split_properties_hold_for_random_rules)
{
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    int ncapped = 0, nbig = 0;
    for (int it = 0; it < 20000; it++) {
        stl_rule r;
        stl_violation v;
        int64_t cap_rule, fee;
        rnd_rule(&seed, &r, &cap_rule);
        PROP(stl_rule_check(&r, cap_rule, &v) == 0, "it %d: %s: %s", it, v.field, v.why);
        /* half the time the tenant's cap has moved since the check */
        int64_t cap = rnd(&seed) % 2 ? cap_rule : rnd_range(&seed, 0, 10000);
        int64_t amount = rnd_amount(&seed);
        nbig += amount > INT64_MAX / 2;

        stl_split a, b;
        PROP(stl_split_payment(&r, cap, amount, &a) == 0, "it %d", it);
        PROP(stl_fee(&r, amount, &fee) == 0, "it %d: stl_fee", it);
        PROP(a.fee == fee && fee == fee_oracle(&r, amount), "it %d: fee %lld", it,
             (long long)a.fee);
        PROP(a.amount == amount && a.nparts == r.n + 1, "it %d: amount or nparts", it);

        i128 sum = a.fee, others = 0;
        for (size_t i = 0; i < a.nparts; i++) {
            PROP(a.parts[i] >= 0, "it %d: parts[%zu] < 0", it, i);
            sum += a.parts[i];
            if (i > 0)
                others += a.parts[i];
        }
        PROP(sum == amount, "it %d: the split does not add up", it);
        i128 net = (i128)amount - a.fee;
        i128 cap_amt = net * cap / 10000;
        PROP(others <= cap_amt, "it %d: above the cap", it);

        /* deterministic: the same input, the same bytes */
        memset(&b, 0x5a, sizeof b);
        PROP(stl_split_payment(&r, cap, amount, &b) == 0, "it %d: second split", it);
        PROP(memcmp(a.parts, b.parts, sizeof a.parts) == 0 && a.fee == b.fee &&
                 a.capped == b.capped && a.nparts == b.nparts,
             "it %d: not deterministic", it);

        /* the uncapped parts: each receiver's proportional part of what the
         * fixed amounts leave (floor or ceil of its exact share), plus the
         * fixed amount granted to it in receiver order */
        i128 base = r.fee_bearer == STL_FEE_PRO_RATA ? net : (i128)amount, fixed = 0;
        for (size_t i = 0; i < r.n; i++)
            fixed += r.r[i].fixed;
        i128 pool = fixed <= base ? base - fixed : 0, room = base - pool;
        i128 granted[STL_RECEIVERS_MAX], hi_sum = 0;
        for (size_t i = 0; i < r.n; i++) {
            granted[i] = r.r[i].fixed < room ? r.r[i].fixed : room;
            room -= granted[i];
            hi_sum += (pool * r.r[i].share_bps + 9999) / 10000 + granted[i];
        }
        if (!a.capped) {
            for (size_t i = 0; i < r.n; i++)
                PROP(near(a.parts[i + 1] - granted[i], pool * r.r[i].share_bps, 10000),
                     "it %d: receiver %zu is not its share", it, i);
        } else {
            ncapped++;
            PROP(others == cap_amt, "it %d: capped below the cap", it);
            PROP(hi_sum > cap_amt, "it %d: capped without need", it);
            /* the capped parts share the cap in proportion to the uncapped */
            stl_rule pr = r;
            pr.fee_bearer = STL_FEE_PRO_RATA;
            stl_split u;
            if (r.fee_bearer == STL_FEE_PRO_RATA) {
                PROP(stl_split_payment(&pr, 10000, amount, &u) == 0 && !u.capped,
                     "it %d: uncapped reference", it);
                i128 utot = 0;
                for (size_t i = 1; i < u.nparts; i++)
                    utot += u.parts[i];
                for (size_t i = 1; i < u.nparts; i++)
                    PROP(a.parts[i] <= u.parts[i] && near(a.parts[i], cap_amt * u.parts[i], utot),
                         "it %d: capped part %zu not proportional", it, i);
            }
        }
    }
    /* the generator reached the cases that matter */
    ck_assert_int_gt(ncapped, 1000);
    ck_assert_int_gt(nbig, 3000);
}
END_TEST

/* --- refunds --- */

typedef struct {
    stl_split s;
    int64_t rev_fee, rev[STL_PARTS_MAX], refunded;
} refund_state;

/* one refund: checks the step and folds it into st */
static void refund_step(int it, int policy, refund_state *st, int64_t refund)
{
    int64_t of = -1, op[STL_PARTS_MAX];
    for (size_t i = 0; i < STL_PARTS_MAX; i++)
        op[i] = -1;
    int rc =
        stl_reverse_refund(policy, &st->s, st->rev_fee, st->rev, st->refunded, refund, &of, op);
    PROP(rc == 0, "it %d: reverse_refund %d", it, rc);

    /* deterministic */
    int64_t of2, op2[STL_PARTS_MAX];
    rc = stl_reverse_refund(policy, &st->s, st->rev_fee, st->rev, st->refunded, refund, &of2, op2);
    PROP(rc == 0 && of == of2 && memcmp(op, op2, st->s.nparts * sizeof *op) == 0,
         "it %d: not deterministic", it);

    i128 sum = of;
    PROP(of >= 0, "it %d: fee reversal < 0", it);
    for (size_t i = 0; i < st->s.nparts; i++) {
        PROP(op[i] >= 0, "it %d: part %zu reversal < 0", it, i);
        sum += op[i];
    }
    PROP(sum == refund, "it %d: reversal does not add up to the refund", it);

    if (policy == STL_REFUND_PRO_RATA) {
        /* each within a unit of its exact share of what is left */
        i128 left = (i128)st->s.amount - st->refunded;
        PROP(near(of, (i128)refund * (st->s.fee - st->rev_fee), left), "it %d: fee share", it);
        for (size_t i = 0; i < st->s.nparts; i++)
            PROP(near(op[i], (i128)refund * (st->s.parts[i] - st->rev[i]), left),
                 "it %d: part %zu share", it, i);
    }
    st->rev_fee += of;
    for (size_t i = 0; i < st->s.nparts; i++)
        st->rev[i] += op[i];
    st->refunded += refund;

    if (policy == STL_REFUND_MERCHANT_FIRST) {
        /* a receiver is reversed only once the merchant is */
        for (size_t i = 1; i < st->s.nparts; i++)
            if (op[i] > 0)
                PROP(st->rev[0] == st->s.parts[0], "it %d: receiver before merchant", it);
    }
    if (policy == STL_REFUND_FEE_RETAINED) {
        PROP(of == 0, "it %d: the retained fee was reversed", it);
        PROP((i128)st->rev[0] <= (i128)st->s.parts[0] + st->s.fee,
             "it %d: merchant over-reversed by more than the fee", it);
        for (size_t i = 1; i < st->s.nparts; i++)
            PROP(st->rev[i] <= st->s.parts[i], "it %d: part %zu over-reversed", it, i);
    } else {
        PROP(st->rev_fee <= st->s.fee, "it %d: fee over-reversed", it);
        for (size_t i = 0; i < st->s.nparts; i++)
            PROP(st->rev[i] <= st->s.parts[i], "it %d: part %zu over-reversed", it, i);
    }
}

START_TEST(refund_sequences_reverse_exactly)
{
    int policy = _i + 1; /* the loop test's index: one policy each */
    uint64_t seed = 0xd1b54a32d192ed03ULL + (uint64_t)policy;
    int nfull = 0;
    for (int it = 0; it < 20000; it++) {
        stl_rule r;
        int64_t cap;
        rnd_rule(&seed, &r, &cap);
        refund_state st;
        memset(&st, 0, sizeof st);
        int64_t amount = rnd_amount(&seed);
        if (amount == 0)
            amount = 1;
        PROP(stl_split_payment(&r, cap, amount, &st.s) == 0, "it %d: split", it);

        int full = rnd(&seed) % 4 != 0;
        int steps = (int)rnd_range(&seed, 1, 8);
        for (int k = 0; k < steps && st.refunded < amount; k++) {
            int64_t left = amount - st.refunded;
            int64_t refund;
            if (full && k + 1 == steps)
                refund = left;
            else if (rnd(&seed) % 3 == 0)
                refund = rnd_range(&seed, 1, left < 10 ? left : 10);
            else
                refund = rnd_range(&seed, 1, left);
            refund_step(it, policy, &st, refund);
        }
        if (st.refunded != amount)
            continue;
        nfull++;
        /* a full refund returns everything it should, exactly */
        if (policy == STL_REFUND_FEE_RETAINED) {
            PROP(st.rev_fee == 0, "it %d: fee reversed", it);
            PROP(st.rev[0] == st.s.parts[0] + st.s.fee, "it %d: merchant ends off -fee", it);
        } else {
            PROP(st.rev_fee == st.s.fee, "it %d: fee not reversed exactly", it);
            PROP(st.rev[0] == st.s.parts[0], "it %d: merchant not reversed exactly", it);
        }
        for (size_t i = 1; i < st.s.nparts; i++)
            PROP(st.rev[i] == st.s.parts[i], "it %d: part %zu not reversed exactly", it, i);
    }
    ck_assert_int_gt(nfull, 10000);
}
END_TEST

START_TEST(refund_policies_on_the_seed_example)
{
    stl_rule r;
    refund_state st;
    seed_rule(&r);
    int64_t of, op[STL_PARTS_MAX];

    /* pro rata: 5000 of 10000 over fee 40 and 0, 4980, 2988, 1992 */
    memset(&st, 0, sizeof st);
    ck_assert_int_eq(stl_split_payment(&r, 10000, 10000, &st.s), 0);
    ck_assert_int_eq(stl_reverse_refund(STL_REFUND_PRO_RATA, &st.s, 0, st.rev, 0, 5000, &of, op),
                     0);
    ck_assert_int_eq(of, 20);
    ck_assert(op[0] == 0 && op[1] == 2490 && op[2] == 1494 && op[3] == 996);

    /* merchant first, with a merchant part: platform only at 30 % */
    r.n = 1;
    r.r[0].share_bps = 3000;
    memset(&st, 0, sizeof st);
    ck_assert_int_eq(stl_split_payment(&r, 10000, 10000, &st.s), 0);
    /* net 9960: merchant 6972, platform 2988; refund 8000: fee 8000 * 40 /
     * 10000 = 32, the parties' 7968 all from the merchant's 6972 first,
     * then 996 from the platform */
    ck_assert_int_eq(st.s.parts[0], 6972);
    ck_assert_int_eq(
        stl_reverse_refund(STL_REFUND_MERCHANT_FIRST, &st.s, 0, st.rev, 0, 8000, &of, op), 0);
    ck_assert_int_eq(of, 32);
    ck_assert_int_eq(op[0], 6972);
    ck_assert_int_eq(op[1], 996);

    /* fee retained: the fee stays; a full refund charges the merchant its
     * part plus the fee */
    ck_assert_int_eq(
        stl_reverse_refund(STL_REFUND_FEE_RETAINED, &st.s, 0, st.rev, 0, 10000, &of, op), 0);
    ck_assert_int_eq(of, 0);
    ck_assert_int_eq(op[0], 6972 + 40);
    ck_assert_int_eq(op[1], 2988);
    /* half: pro rata over the parts, nothing beyond them yet: 5000 over
     * 6972 : 2988 (70 : 30 of 9960) -> 3500, 1500 */
    ck_assert_int_eq(
        stl_reverse_refund(STL_REFUND_FEE_RETAINED, &st.s, 0, st.rev, 0, 5000, &of, op), 0);
    ck_assert_int_eq(of, 0);
    ck_assert_int_eq(op[0] + op[1], 5000);
    ck_assert_int_eq(op[0], 3500);
}
END_TEST

START_TEST(refund_validation_refuses_bad_input)
{
    stl_rule r;
    stl_split s;
    seed_rule(&r);
    ck_assert_int_eq(stl_split_payment(&r, 10000, 10000, &s), 0);
    int64_t rev[STL_PARTS_MAX] = {0}, of, op[STL_PARTS_MAX];
    for (int p = STL_REFUND_PRO_RATA; p <= STL_REFUND_FEE_RETAINED; p++) {
        ck_assert_int_eq(stl_reverse_refund(p, &s, 0, rev, 0, 0, &of, op), CM_EINVAL);
        ck_assert_int_eq(stl_reverse_refund(p, &s, 0, rev, 0, -1, &of, op), CM_EINVAL);
        ck_assert_int_eq(stl_reverse_refund(p, &s, 0, rev, 0, 10001, &of, op), CM_EINVAL);
        ck_assert_int_eq(stl_reverse_refund(p, &s, 0, rev, 0, INT64_MAX, &of, op), CM_EINVAL);
        ck_assert_int_eq(stl_reverse_refund(p, &s, 0, rev, 0, 10000, &of, op), 0);
        /* refunded must be what the reversals add up to */
        ck_assert_int_eq(stl_reverse_refund(p, &s, 0, rev, 100, 1, &of, op), CM_EINVAL);
        ck_assert_int_eq(stl_reverse_refund(p, &s, 0, rev, -1, 1, &of, op), CM_EINVAL);
    }
    /* 9000 refunded: 1000 left */
    int64_t done[STL_PARTS_MAX] = {0, 4482, 2689, 1793};
    ck_assert_int_eq(stl_reverse_refund(STL_REFUND_PRO_RATA, &s, 36, done, 9000, 1000, &of, op), 0);
    ck_assert_int_eq(of, 4);
    ck_assert_int_eq(stl_reverse_refund(STL_REFUND_PRO_RATA, &s, 36, done, 9000, 1001, &of, op),
                     CM_EINVAL);
    /* INT64_MAX on top of 9000 would overflow: refused, not wrapped */
    ck_assert_int_eq(
        stl_reverse_refund(STL_REFUND_PRO_RATA, &s, 36, done, 9000, INT64_MAX, &of, op), CM_EINVAL);
    /* a reversal beyond its part */
    done[1] = 4981;
    ck_assert_int_eq(stl_reverse_refund(STL_REFUND_PRO_RATA, &s, 36, done, 9001, 1, &of, op),
                     CM_EINVAL);
    /* nothing is written on error */
    of = -7;
    op[0] = -7;
    ck_assert_int_eq(stl_reverse_refund(STL_REFUND_MERCHANT_FIRST, &s, 36, done, 9001, 1, &of, op),
                     CM_EINVAL);
    ck_assert(of == -7 && op[0] == -7);
    /* FEE_RETAINED never reversed a fee */
    int64_t none[STL_PARTS_MAX] = {0};
    ck_assert_int_eq(stl_reverse_refund(STL_REFUND_FEE_RETAINED, &s, 1, none, 1, 1, &of, op),
                     CM_EINVAL);
    ck_assert_int_eq(stl_reverse_refund(0, &s, 0, none, 0, 1, &of, op), CM_EINVAL);
    ck_assert_int_eq(stl_reverse_refund(4, &s, 0, none, 0, 1, &of, op), CM_EINVAL);
    /* a split whose parts do not add up to its amount */
    s.parts[0] = 1;
    ck_assert_int_eq(stl_reverse_refund(STL_REFUND_PRO_RATA, &s, 0, none, 0, 1, &of, op),
                     CM_EINVAL);
}
END_TEST

START_TEST(party_names_follow_the_proto)
{
    ck_assert_str_eq(stl_party_name(STL_PARTY_MERCHANT), "merchant");
    ck_assert_str_eq(stl_party_name(STL_PARTY_PLATFORM), "platform");
    ck_assert_str_eq(stl_party_name(STL_PARTY_SERVICE_PROVIDER), "service_provider");
    ck_assert_str_eq(stl_party_name(STL_PARTY_SUB_MERCHANT), "sub_merchant");
    ck_assert_str_eq(stl_party_name(STL_PARTY_CHANNEL), "channel");
    ck_assert_ptr_null(stl_party_name(0));
    ck_assert_ptr_null(stl_party_name(6));
}
END_TEST

/* ---- the commission cost ---- */

static int cost(int kind, int adj, int payer, int64_t amount, const char *merchant, stl_cost *out)
{
    stl_cost_in in = {.kind = kind,
                      .adj_kind = adj,
                      .payer = payer,
                      .amount = amount,
                      .merchant = merchant,
                      .platform = "plat"};
    memset(out, 0, sizeof *out);
    return stl_cost_of(&in, out);
}

START_TEST(commission_cost_debits_the_payer_by_the_signed_change)
{
    stl_cost c;
    /* accrued: the merchant pays (also when the payer is unset) */
    ck_assert_int_eq(cost(STL_COST_ACCRUED, 0, STL_PAYER_MERCHANT, 50000, "m-1", &c), 0);
    ck_assert_int_eq(c.payer_type, STL_PARTY_MERCHANT);
    ck_assert_str_eq(c.payer_owner, "m-1");
    ck_assert_int_eq(c.delta, 50000);
    ck_assert_int_eq(cost(STL_COST_ACCRUED, 0, STL_PAYER_UNSPECIFIED, 7, "m-1", &c), 0);
    ck_assert_int_eq(c.payer_type, STL_PARTY_MERCHANT);
    /* the platform pays: its account, whatever the merchant */
    ck_assert_int_eq(cost(STL_COST_ACCRUED, 0, STL_PAYER_PLATFORM, 15000, "", &c), 0);
    ck_assert_int_eq(c.payer_type, STL_PARTY_PLATFORM);
    ck_assert_str_eq(c.payer_owner, "plat");
    ck_assert_int_eq(c.delta, 15000);
    /* a clawback gives back: the reverse direction, exactly */
    ck_assert_int_eq(cost(STL_COST_CLAWED_BACK, 0, STL_PAYER_PLATFORM, 15000, "m-1", &c), 0);
    ck_assert_int_eq(c.delta, -15000);
    /* true-ups and parent shares of either sign, to int64's limits */
    ck_assert_int_eq(cost(STL_COST_ADJUSTED, STL_ADJ_TRUE_UP, 1, -6000, "m-1", &c), 0);
    ck_assert_int_eq(c.delta, -6000);
    ck_assert_int_eq(cost(STL_COST_ADJUSTED, STL_ADJ_PARENT_SHARE, 1, INT64_MAX, "m-1", &c), 0);
    ck_assert_int_eq(c.delta, INT64_MAX);
    ck_assert_int_eq(cost(STL_COST_ADJUSTED, STL_ADJ_TRUE_UP, 1, INT64_MIN + 1, "m-1", &c), 0);
    ck_assert_int_eq(c.delta, INT64_MIN + 1);
}
END_TEST

START_TEST(commission_cost_books_a_period_close_like_a_true_up)
{
    stl_cost c;
    /* a PERIOD_CLOSE part: the merchant it was split to pays */
    ck_assert_int_eq(
        cost(STL_COST_ADJUSTED, STL_ADJ_PERIOD_CLOSE, STL_PAYER_MERCHANT, 240, "m-2", &c), 0);
    ck_assert_int_eq(c.payer_type, STL_PARTY_MERCHANT);
    ck_assert_str_eq(c.payer_owner, "m-2");
    ck_assert_int_eq(c.delta, 240);
    /* negative, on the platform */
    ck_assert_int_eq(
        cost(STL_COST_ADJUSTED, STL_ADJ_PERIOD_CLOSE, STL_PAYER_PLATFORM, -61, "m-2", &c), 0);
    ck_assert_int_eq(c.payer_type, STL_PARTY_PLATFORM);
    ck_assert_str_eq(c.payer_owner, "plat");
    ck_assert_int_eq(c.delta, -61);
    ck_assert_int_eq(cost(STL_COST_ADJUSTED, STL_ADJ_PERIOD_CLOSE, 1, 0, "m-2", &c),
                     STL_COST_NOTHING);
    ck_assert_int_eq(cost(STL_COST_ADJUSTED, STL_ADJ_PERIOD_CLOSE, 1, INT64_MIN, "m-2", &c),
                     CM_EINVAL);
    ck_assert_int_eq(cost(STL_COST_ADJUSTED, STL_ADJ_PERIOD_CLOSE, 1, 5, "", &c), CM_EINVAL);
}
END_TEST

START_TEST(commission_cost_books_nothing_twice_and_refuses_bad_events)
{
    stl_cost c;
    /* a CLAWBACK adjustment is booked by its CommissionClawedBack */
    ck_assert_int_eq(cost(STL_COST_ADJUSTED, STL_ADJ_CLAWBACK, 1, -20000, "m-1", &c),
                     STL_COST_NOTHING);
    ck_assert_int_eq(cost(STL_COST_ACCRUED, 0, 1, 0, "m-1", &c), STL_COST_NOTHING);
    ck_assert_int_eq(cost(STL_COST_CLAWED_BACK, 0, 2, 0, "m-1", &c), STL_COST_NOTHING);
    ck_assert_int_eq(cost(STL_COST_ACCRUED, 0, 1, -1, "m-1", &c), CM_EINVAL);
    ck_assert_int_eq(cost(STL_COST_CLAWED_BACK, 0, 1, -1, "m-1", &c), CM_EINVAL);
    ck_assert_int_eq(cost(STL_COST_ADJUSTED, STL_ADJ_TRUE_UP, 1, INT64_MIN, "m-1", &c), CM_EINVAL);
    ck_assert_int_eq(cost(STL_COST_ADJUSTED, 0, 1, 5, "m-1", &c), CM_EINVAL);
    ck_assert_int_eq(cost(STL_COST_ADJUSTED, 5, 1, 5, "m-1", &c), CM_EINVAL);
    ck_assert_int_eq(cost(0, 0, 1, 5, "m-1", &c), CM_EINVAL);
    ck_assert_int_eq(cost(STL_COST_ACCRUED, 0, 3, 5, "m-1", &c), CM_EINVAL);
    ck_assert_int_eq(cost(STL_COST_ACCRUED, 0, 1, 5, "", &c), CM_EINVAL);
    ck_assert_int_eq(cost(STL_COST_ACCRUED, 0, 1, 5, NULL, &c), CM_EINVAL);
    /* the natural keys: one per change, whatever event carries it */
    char k[STL_COST_KEY_MAX + 1];
    const char *id = "0190f0e4-7c1a-7d2e-9b3f-0123456789ab";
    ck_assert_int_eq(stl_cost_key(STL_COST_ACCRUED, id, NULL, NULL, k, sizeof k), 0);
    ck_assert_str_eq(k, "accrued/0190f0e4-7c1a-7d2e-9b3f-0123456789ab");
    ck_assert_int_eq(stl_cost_key(STL_COST_CLAWED_BACK, id, "rf-1", NULL, k, sizeof k), 0);
    ck_assert_str_eq(k, "clawback/0190f0e4-7c1a-7d2e-9b3f-0123456789ab/rf-1");
    ck_assert_int_eq(stl_cost_key(STL_COST_ADJUSTED, NULL, NULL, id, k, sizeof k), 0);
    ck_assert_str_eq(k, "adjustment/0190f0e4-7c1a-7d2e-9b3f-0123456789ab");
    /* the longest refund id fits */
    char rf[STL_ID_MAX + 1];
    memset(rf, 'r', STL_ID_MAX);
    rf[STL_ID_MAX] = '\0';
    ck_assert_int_eq(stl_cost_key(STL_COST_CLAWED_BACK, id, rf, NULL, k, sizeof k), 0);
    ck_assert_uint_eq(strlen(k), STL_COST_KEY_MAX);
    ck_assert_int_eq(stl_cost_key(STL_COST_CLAWED_BACK, id, rf, NULL, k, sizeof k - 1), CM_EINVAL);
    ck_assert_int_eq(stl_cost_key(STL_COST_CLAWED_BACK, id, "", NULL, k, sizeof k), CM_EINVAL);
    ck_assert_int_eq(stl_cost_key(STL_COST_ACCRUED, "", NULL, NULL, k, sizeof k), CM_EINVAL);
    ck_assert_int_eq(stl_cost_key(STL_COST_ADJUSTED, id, NULL, NULL, k, sizeof k), CM_EINVAL);
    ck_assert_int_eq(stl_cost_key(9, id, "rf", id, k, sizeof k), CM_EINVAL);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("settlement_domain");
    TCase *t = tcase_create("domain");
    tcase_add_test(t, seed_example_splits_to_the_minor_unit);
    tcase_add_test(t, seed_rule_is_refused_under_the_default_cap);
    tcase_add_test(t, fee_is_bounded_by_min_max_and_the_amount);
    tcase_add_test(t, merchant_bearer_shares_the_gross);
    tcase_add_test(t, fixed_amounts_come_off_the_base_and_are_granted_in_order);
    tcase_add_test(t, overflow_is_an_error_not_a_wrong_split);
    tcase_add_test(t, rule_check_names_each_bad_field);
    tcase_add_test(t, refund_policies_on_the_seed_example);
    tcase_add_test(t, refund_validation_refuses_bad_input);
    tcase_add_test(t, party_names_follow_the_proto);
    tcase_add_test(t, commission_cost_debits_the_payer_by_the_signed_change);
    tcase_add_test(t, commission_cost_books_a_period_close_like_a_true_up);
    tcase_add_test(t, commission_cost_books_nothing_twice_and_refuses_bad_events);
    suite_add_tcase(s, t);
    TCase *p = tcase_create("properties");
    tcase_set_timeout(p, 60);
    tcase_add_test(p, split_properties_hold_for_random_rules);
    tcase_add_loop_test(p, refund_sequences_reverse_exactly, 0, 3);
    suite_add_tcase(s, p);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
