/* commission's pure rules (services/commission/domain.c) */
#include "cm_err.h"
#include "cm_money.h"
#include "cms_domain.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef __int128 i128;

/* check's ck_assert marks a point through a pipe on every success: the
 * property loops check millions of times, so they only call it on failure */
#define EQ(a, b)                                                                                   \
    do {                                                                                           \
        long long x_ = (long long)(a), y_ = (long long)(b);                                        \
        if (x_ != y_)                                                                              \
            ck_abort_msg("%s:%d: %s == %s: %lld != %lld", __FILE__, __LINE__, #a, #b, x_, y_);     \
    } while (0)
#define TRUE(c)                                                                                    \
    do {                                                                                           \
        if (!(c))                                                                                  \
            ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #c);                                     \
    } while (0)

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

static i128 floor_div(i128 a, i128 b)
{
    i128 q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* the period formula written the obvious way, as the header states it */
static int64_t ref_formula(const cms_schedule *s, int64_t sales)
{
    size_t k = 0;
    while (k + 1 < s->n && s->t[k + 1].from_sales <= sales)
        k++;
    if (s->mode == CMS_MODE_WHOLE_VOLUME)
        return (int64_t)floor_div((i128)sales * s->t[k].rate_bps, 10000);
    i128 num = 0;
    for (size_t i = 0; i < s->n; i++) {
        i128 lo = s->t[i].from_sales;
        i128 hi = i + 1 < s->n ? s->t[i + 1].from_sales : (i128)INT64_MAX + 1;
        i128 top = sales < hi ? sales : hi;
        if (top > lo)
            num += (top - lo) * s->t[i].rate_bps;
    }
    return (int64_t)floor_div(num, 10000);
}

static int64_t C(const cms_schedule *s, int64_t sales)
{
    int64_t c = -1;
    EQ(cms_period_commission(s, sales, &c), 0);
    return c;
}

/* the seed's table: 0-9,999.99 -> 5 %, 10,000-49,999.99 -> 8 %, >= 50,000
 * -> 12 %, in CNY fen */
static void seed_schedule(cms_schedule *s, int mode)
{
    memset(s, 0, sizeof *s);
    snprintf(s->currency, sizeof s->currency, "CNY");
    s->mode = mode;
    s->n = 3;
    s->t[0] = (cms_tier){0, 500};
    s->t[1] = (cms_tier){1000000, 800};
    s->t[2] = (cms_tier){5000000, 1200};
}

static void assert_posting(const cms_posting *p, int64_t before, int64_t after, int64_t own,
                           int64_t true_up)
{
    ck_assert_int_eq(p->sales_before, before);
    ck_assert_int_eq(p->sales_after, after);
    ck_assert_msg(p->order_amount == own, "order_amount %lld, want %lld",
                  (long long)p->order_amount, (long long)own);
    ck_assert_msg(p->true_up == true_up, "true_up %lld, want %lld", (long long)p->true_up,
                  (long long)true_up);
    ck_assert_int_eq(p->total, own + true_up);
}

START_TEST(seed_table_to_the_fen_in_both_modes)
{
    cms_schedule m, w;
    cms_violation v;
    seed_schedule(&m, CMS_MODE_MARGINAL);
    seed_schedule(&w, CMS_MODE_WHOLE_VOLUME);
    ck_assert_int_eq(cms_schedule_check(&m, &v), 0);
    ck_assert_int_eq(cms_schedule_check(&w, &v), 0);

    /* 60,000.00 in the month: marginal 10,000 x 5 % + 40,000 x 8 % + 10,000
     * x 12 % = 500 + 3,200 + 1,200 = 4,900.00; whole volume 60,000 x 12 %
     * = 7,200.00 */
    ck_assert_int_eq(C(&m, 6000000), 490000);
    ck_assert_int_eq(C(&w, 6000000), 720000);

    /* the bounds: 9,999.99 is still 5 % (499.9995 -> 499.99), 10,000.00
     * already 8 % on everything in whole volume */
    ck_assert_int_eq(C(&m, 999999), 49999);
    ck_assert_int_eq(C(&w, 999999), 49999);
    ck_assert_int_eq(C(&m, 1000000), 50000);
    ck_assert_int_eq(C(&w, 1000000), 80000);
    ck_assert_int_eq(C(&m, 5000000), 370000);
    ck_assert_int_eq(C(&w, 4999999), 399999);
    ck_assert_int_eq(C(&w, 5000000), 600000);
    ck_assert_int_eq(C(&m, 0), 0);
    ck_assert_int_eq(C(&w, 0), 0);

    /* the month as six orders of 10,000.00 */
    cms_posting p;
    int64_t sales = 0, sum_m = 0, sum_w = 0;
    const int64_t own_m[6] = {50000, 80000, 80000, 80000, 80000, 120000};
    const int64_t own_w[6] = {80000, 80000, 80000, 80000, 120000, 120000};
    const int64_t up_w[6] = {0, 0, 0, 0, 160000, 0};
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(cms_accrue(&m, sales, 1000000, &p), 0);
        assert_posting(&p, sales, sales + 1000000, own_m[i], 0);
        sum_m += p.total;
        ck_assert_int_eq(cms_accrue(&w, sales, 1000000, &p), 0);
        /* the fifth order reaches 50,000.00: the first 40,000.00 are
         * repriced from 8 % to 12 %, a true-up of 1,600.00 */
        assert_posting(&p, sales, sales + 1000000, own_w[i], up_w[i]);
        sum_w += p.total;
        sales += 1000000;
    }
    ck_assert_int_eq(sum_m, 490000);
    ck_assert_int_eq(sum_w, 720000);
    int64_t adj = -1;
    ck_assert_int_eq(cms_true_up(&m, sales, sum_m, &adj), 0);
    ck_assert_int_eq(adj, 0);
    ck_assert_int_eq(cms_true_up(&w, sales, sum_w, &adj), 0);
    ck_assert_int_eq(adj, 0);
    ck_assert_int_eq(cms_true_up(&w, sales, 700000, &adj), 0);
    ck_assert_int_eq(adj, 20000);

    /* marginal: refunding the first order (it earned 500.00) takes back its
     * 500.00 and 700.00 more: the rest of the month slides down a slice */
    cms_order o = {.amount = 1000000, .commission = 50000, .refunded = 0};
    ck_assert_int_eq(cms_clawback(&m, 6000000, &o, 1000000, &p), 0);
    assert_posting(&p, 6000000, 5000000, -50000, -70000);
    ck_assert_int_eq(sum_m + p.total, C(&m, 5000000));
}
END_TEST

START_TEST(whole_volume_crossing_up_and_back_down_posts_true_ups)
{
    cms_schedule w;
    cms_posting p;
    seed_schedule(&w, CMS_MODE_WHOLE_VOLUME);
    int64_t posted = 0;

    /* A pays 9,000.00 at 5 % */
    ck_assert_int_eq(cms_accrue(&w, 0, 900000, &p), 0);
    assert_posting(&p, 0, 900000, 45000, 0);
    ck_assert_uint_eq(p.tier_after, 0);
    posted += p.total;
    cms_order a = {.amount = 900000, .commission = p.order_amount};

    /* B pays 2,000.00: 11,000.00 crosses 10,000.00, everything at 8 %. B
     * earns 160.00, A's 9,000.00 are repriced 450.00 -> 720.00 */
    ck_assert_int_eq(cms_accrue(&w, 900000, 200000, &p), 0);
    assert_posting(&p, 900000, 1100000, 16000, 27000);
    ck_assert_uint_eq(p.tier_before, 0);
    ck_assert_uint_eq(p.tier_after, 1);
    posted += p.total;
    ck_assert_int_eq(posted, 88000);
    cms_order b = {.amount = 200000, .commission = p.order_amount};

    /* B refunds 1,500.00: back to 9,500.00, below the bound. B gives back
     * 3/4 of its 160.00; the rest of the period falls back to 5 % */
    ck_assert_int_eq(cms_clawback(&w, 1100000, &b, 150000, &p), 0);
    assert_posting(&p, 1100000, 950000, -12000, -28500);
    ck_assert_uint_eq(p.tier_after, 0);
    posted += p.total;
    ck_assert_int_eq(posted, 47500);
    b.refunded += 150000;

    /* C pays 1,000.00: up again to 10,500.00 */
    ck_assert_int_eq(cms_accrue(&w, 950000, 100000, &p), 0);
    assert_posting(&p, 950000, 1050000, 8000, 28500);
    posted += p.total;
    ck_assert_int_eq(posted, 84000);

    /* B refunds the rest: 10,000.00 is still in the 8 % tier; B's
     * clawbacks sum to its commission exactly */
    ck_assert_int_eq(cms_clawback(&w, 1050000, &b, 50000, &p), 0);
    assert_posting(&p, 1050000, 1000000, -4000, 0);
    posted += p.total;
    ck_assert_int_eq(posted, 80000);

    /* A refunds one fen: 9,999.99 drops the whole period to 5 % */
    ck_assert_int_eq(cms_clawback(&w, 1000000, &a, 1, &p), 0);
    assert_posting(&p, 1000000, 999999, 0, -30001);
    posted += p.total;
    ck_assert_int_eq(posted, 49999);
    ck_assert_int_eq(posted, C(&w, 999999));

    int64_t adj = -1;
    ck_assert_int_eq(cms_true_up(&w, 999999, posted, &adj), 0);
    ck_assert_int_eq(adj, 0);
}
END_TEST

START_TEST(whole_volume_with_a_falling_rate_prices_down)
{
    /* rates may fall: reaching 1,000 drops everything from 10 % to 2 % */
    cms_schedule w;
    cms_posting p;
    memset(&w, 0, sizeof w);
    snprintf(w.currency, sizeof w.currency, "USD");
    w.mode = CMS_MODE_WHOLE_VOLUME;
    w.n = 2;
    w.t[0] = (cms_tier){0, 1000};
    w.t[1] = (cms_tier){1000, 200};
    ck_assert_int_eq(cms_accrue(&w, 900, 200, &p), 0);
    /* own: floor(1100 * 2 %) - floor(900 * 2 %) = 22 - 18 = 4; earlier: 18 - 90 */
    assert_posting(&p, 900, 1100, 4, -72);
    cms_order o = {.amount = 200, .commission = 4, .refunded = 0};
    ck_assert_int_eq(cms_clawback(&w, 1100, &o, 150, &p), 0);
    /* a refund raises the period's commission: 95 - 22 */
    assert_posting(&p, 1100, 950, -3, 76);
}
END_TEST

START_TEST(portions_split_an_order_by_tier)
{
    cms_schedule m, w;
    cms_portion pt[CMS_TIERS_MAX];
    size_t n = 99;
    seed_schedule(&m, CMS_MODE_MARGINAL);
    seed_schedule(&w, CMS_MODE_WHOLE_VOLUME);

    /* 20,000.00 at 40,000.00: 10,000.00 at 8 %, 10,000.00 at 12 % */
    ck_assert_int_eq(cms_portions(&m, 4000000, 2000000, pt, &n), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(pt[0].tier, 1);
    ck_assert_int_eq(pt[0].sales, 1000000);
    ck_assert_int_eq(pt[0].commission, 80000);
    ck_assert_uint_eq(pt[1].tier, 2);
    ck_assert_int_eq(pt[1].sales, 1000000);
    ck_assert_int_eq(pt[1].commission, 120000);

    /* 60,000.00 at once: every tier */
    ck_assert_int_eq(cms_portions(&m, 0, 6000000, pt, &n), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(pt[0].commission + pt[1].commission + pt[2].commission, 490000);

    /* whole volume: one portion in the tier reached */
    ck_assert_int_eq(cms_portions(&w, 4000000, 2000000, pt, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(pt[0].tier, 2);
    ck_assert_int_eq(pt[0].sales, 2000000);
    ck_assert_int_eq(pt[0].commission, 240000);

    ck_assert_int_eq(cms_portions(&m, 4000000, 0, pt, &n), 0);
    ck_assert_uint_eq(n, 0);
}
END_TEST

START_TEST(progress_names_the_next_threshold)
{
    cms_schedule m, w;
    cms_progress g;
    seed_schedule(&m, CMS_MODE_MARGINAL);
    seed_schedule(&w, CMS_MODE_WHOLE_VOLUME);

    /* 30,000.00: 8 %, 20,000.00 short of 12 % */
    ck_assert_int_eq(cms_progress_of(&m, 3000000, &g), 0);
    ck_assert_uint_eq(g.tier, 1);
    ck_assert_int_eq(g.rate_bps, 800);
    ck_assert_int_eq(g.commission, 210000);
    ck_assert_int_eq(g.has_next, 1);
    ck_assert_int_eq(g.next_from_sales, 5000000);
    ck_assert_int_eq(g.sales_needed, 2000000);
    ck_assert_int_eq(g.next_rate_bps, 1200);
    ck_assert_int_eq(g.next_commission, 370000);
    ck_assert_int_eq(cms_progress_of(&w, 3000000, &g), 0);
    ck_assert_int_eq(g.commission, 240000);
    ck_assert_int_eq(g.next_commission, 600000);

    /* exactly on a bound: in the upper tier */
    ck_assert_int_eq(cms_progress_of(&m, 1000000, &g), 0);
    ck_assert_uint_eq(g.tier, 1);
    ck_assert_int_eq(g.sales_needed, 4000000);
    ck_assert_int_eq(cms_progress_of(&m, 0, &g), 0);
    ck_assert_uint_eq(g.tier, 0);
    ck_assert_int_eq(g.sales_needed, 1000000);

    /* the top tier has no next */
    ck_assert_int_eq(cms_progress_of(&w, 6000000, &g), 0);
    ck_assert_uint_eq(g.tier, 2);
    ck_assert_int_eq(g.rate_bps, 1200);
    ck_assert_int_eq(g.has_next, 0);
    ck_assert_int_eq(g.next_from_sales, 0);
    ck_assert_int_eq(g.sales_needed, 0);
    ck_assert_int_eq(g.next_commission, 0);

    size_t k = 99;
    ck_assert_int_eq(cms_tier_of(&m, 4999999, &k), 0);
    ck_assert_uint_eq(k, 1);
    ck_assert_int_eq(cms_progress_of(&m, -1, &g), CM_EINVAL);
    ck_assert_int_eq(cms_tier_of(&m, -1, &k), CM_EINVAL);
}
END_TEST

START_TEST(parent_share_is_floor_of_the_pooled_base)
{
    int64_t sh = -1;
    /* 10 % of two children's month: 4,900.00 + 7,200.00 -> 1,210.00 */
    ck_assert_int_eq(cms_parent_share(1000, 0, 490000, &sh), 0);
    ck_assert_int_eq(sh, 49000);
    ck_assert_int_eq(cms_parent_share(1000, 490000, 720000, &sh), 0);
    ck_assert_int_eq(sh, 72000);

    /* small postings: pooled, not floored one by one. 5 + 5 at 10 % -> 0,
     * then 1; back down by 5 -> -1 */
    ck_assert_int_eq(cms_parent_share(1000, 0, 5, &sh), 0);
    ck_assert_int_eq(sh, 0);
    ck_assert_int_eq(cms_parent_share(1000, 5, 5, &sh), 0);
    ck_assert_int_eq(sh, 1);
    ck_assert_int_eq(cms_parent_share(1000, 10, -5, &sh), 0);
    ck_assert_int_eq(sh, -1);

    ck_assert_int_eq(cms_parent_share(0, 100, 100, &sh), 0);
    ck_assert_int_eq(sh, 0);
    ck_assert_int_eq(cms_parent_share(10000, 100, 100, &sh), 0);
    ck_assert_int_eq(sh, 100);

    sh = -7;
    ck_assert_int_eq(cms_parent_share(-1, 0, 1, &sh), CM_EINVAL);
    ck_assert_int_eq(cms_parent_share(10001, 0, 1, &sh), CM_EINVAL);
    ck_assert_int_eq(cms_parent_share(1000, INT64_MAX, 1, &sh), CM_EOVERFLOW);
    ck_assert_int_eq(cms_parent_share(1000, INT64_MIN, -1, &sh), CM_EOVERFLOW);
    ck_assert_int_eq(sh, -7);
    /* the extremes themselves are fine */
    ck_assert_int_eq(cms_parent_share(10000, -1, INT64_MAX, &sh), 0);
    ck_assert_int_eq(sh, INT64_MAX);
    ck_assert_int_eq(cms_parent_share(10000, INT64_MIN, INT64_MAX, &sh), 0);
    ck_assert_int_eq(sh, INT64_MAX);
}
END_TEST

START_TEST(schedule_check_names_each_bad_field)
{
    cms_schedule s;
    cms_violation v;
#define BAD(mutate, path)                                                                          \
    do {                                                                                           \
        seed_schedule(&s, CMS_MODE_MARGINAL);                                                      \
        mutate;                                                                                    \
        memset(&v, 0, sizeof v);                                                                   \
        ck_assert_int_eq(cms_schedule_check(&s, &v), CM_EINVAL);                                   \
        ck_assert_str_eq(v.field, path);                                                           \
        ck_assert(v.why[0] != '\0');                                                               \
    } while (0)

    BAD(snprintf(s.currency, sizeof s.currency, "XXX"), "schedule.currency");
    BAD(snprintf(s.currency, sizeof s.currency, "cny"), "schedule.currency");
    BAD(memset(s.currency, 'C', sizeof s.currency), "schedule.currency");
    BAD(s.mode = 0, "schedule.mode");
    BAD(s.mode = 3, "schedule.mode");
    BAD(s.n = 0, "schedule.tiers");
    BAD(s.n = CMS_TIERS_MAX + 1, "schedule.tiers");
    BAD(s.t[0].from_sales = 1, "schedule.tiers[0].from_sales.amount_minor");
    BAD(s.t[0].from_sales = -1, "schedule.tiers[0].from_sales.amount_minor");
    BAD(s.t[2].from_sales = s.t[1].from_sales, "schedule.tiers[2].from_sales.amount_minor");
    BAD(s.t[1].from_sales = 6000000, "schedule.tiers[2].from_sales.amount_minor");
    BAD(s.t[1].rate_bps = -1, "schedule.tiers[1].rate_bps");
    BAD(s.t[2].rate_bps = 10001, "schedule.tiers[2].rate_bps");
#undef BAD

    /* the limits themselves pass: 20 tiers, rates 0 and 100 %, bounds up
     * to INT64_MAX; NULL v is allowed */
    seed_schedule(&s, CMS_MODE_WHOLE_VOLUME);
    s.n = CMS_TIERS_MAX;
    for (size_t i = 0; i < s.n; i++)
        s.t[i] = (cms_tier){(int64_t)i * 1000, i % 2 ? 0 : 10000};
    s.t[s.n - 1].from_sales = INT64_MAX;
    ck_assert_int_eq(cms_schedule_check(&s, NULL), 0);
    s.t[1].rate_bps = 10001;
    ck_assert_int_eq(cms_schedule_check(&s, NULL), CM_EINVAL);
}
END_TEST

START_TEST(unchecked_schedules_and_bad_input_are_refused)
{
    cms_schedule s;
    cms_posting p;
    memset(&p, 0x5a, sizeof p);
    cms_posting before = p;
    int64_t x = -7;
    size_t k = 99;
    cms_progress g;
    cms_portion pt[CMS_TIERS_MAX];
    size_t n = 99;

    /* every entry point refuses a schedule the arithmetic cannot trust */
    seed_schedule(&s, CMS_MODE_MARGINAL);
    s.t[1].from_sales = 0;
    ck_assert_int_eq(cms_period_commission(&s, 5, &x), CM_EINVAL);
    ck_assert_int_eq(cms_tier_of(&s, 5, &k), CM_EINVAL);
    ck_assert_int_eq(cms_accrue(&s, 0, 5, &p), CM_EINVAL);
    ck_assert_int_eq(cms_true_up(&s, 0, 0, &x), CM_EINVAL);
    ck_assert_int_eq(cms_progress_of(&s, 0, &g), CM_EINVAL);
    ck_assert_int_eq(cms_portions(&s, 0, 5, pt, &n), CM_EINVAL);
    cms_order o = {.amount = 10, .commission = 1, .refunded = 0};
    ck_assert_int_eq(cms_clawback(&s, 10, &o, 5, &p), CM_EINVAL);
    seed_schedule(&s, 0);
    ck_assert_int_eq(cms_period_commission(&s, 5, &x), CM_EINVAL);
    seed_schedule(&s, CMS_MODE_MARGINAL);
    s.t[2].rate_bps = 20000;
    ck_assert_int_eq(cms_accrue(&s, 0, 5, &p), CM_EINVAL);
    ck_assert_int_eq(x, -7);
    ck_assert_uint_eq(k, 99);
    ck_assert_uint_eq(n, 99);

    /* the currency is not the arithmetic's business */
    seed_schedule(&s, CMS_MODE_MARGINAL);
    snprintf(s.currency, sizeof s.currency, "XXX");
    ck_assert_int_eq(cms_period_commission(&s, 100, &x), 0);
    ck_assert_int_eq(x, 5);

    seed_schedule(&s, CMS_MODE_WHOLE_VOLUME);
    ck_assert_int_eq(cms_period_commission(&s, -1, &x), CM_EINVAL);
    ck_assert_int_eq(cms_accrue(&s, -1, 5, &p), CM_EINVAL);
    ck_assert_int_eq(cms_accrue(&s, 0, -5, &p), CM_EINVAL);
    ck_assert_int_eq(cms_true_up(&s, -1, 0, &x), CM_EINVAL);
    ck_assert_int_eq(cms_portions(&s, 0, -1, pt, &n), CM_EINVAL);

    /* the refunded order's state, as read from the store */
    const struct {
        cms_order o;
        int64_t sales, refund;
    } bad[] = {
        {{10, 1, 0}, 10, 0},  /* nothing refunded */
        {{10, 1, 0}, 10, -1}, /* negative */
        {{10, 1, 0}, 10, 11}, /* more than the order */
        {{10, 1, 6}, 10, 5},  /* more than is left of it */
        {{0, 0, 0}, 10, 1},   /* an order of nothing */
        {{10, -1, 0}, 10, 1}, /* negative commission */
        {{10, 11, 0}, 10, 1}, /* commission above the amount */
        {{10, 1, -1}, 10, 1}, /* negative refunded */
        {{10, 1, 11}, 10, 1}, /* refunded above the amount */
        {{10, 1, 0}, 9, 1},   /* the period no longer holds the order */
        {{10, 1, 0}, -1, 1},  /* negative sales */
        {{10, 1, 4}, 5, 1},   /* 6 left, the period holds 5 */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(cms_clawback(&s, bad[i].sales, &bad[i].o, bad[i].refund, &p) == CM_EINVAL,
                      "case %zu", i);
    ck_assert(memcmp(&p, &before, sizeof p) == 0);
    /* the edge of each check is accepted */
    cms_order ok = {10, 10, 4};
    ck_assert_int_eq(cms_clawback(&s, 6, &ok, 6, &p), 0);
    ck_assert_int_eq(p.order_amount, -6);

    ck_assert_str_eq(cms_mode_name(CMS_MODE_MARGINAL), "marginal");
    ck_assert_str_eq(cms_mode_name(CMS_MODE_WHOLE_VOLUME), "whole_volume");
    ck_assert_ptr_null(cms_mode_name(0));
    ck_assert_ptr_null(cms_mode_name(3));
}
END_TEST

START_TEST(overflow_is_an_error_not_a_wrapped_amount)
{
    cms_schedule s;
    cms_posting p;
    memset(&p, 0x5a, sizeof p);
    cms_posting before = p;
    cms_portion pt[CMS_TIERS_MAX];
    size_t n = 99;
    int64_t x = -7;

    /* 100 % everywhere: C(S) = S up to INT64_MAX, in both modes */
    for (int mode = CMS_MODE_MARGINAL; mode <= CMS_MODE_WHOLE_VOLUME; mode++) {
        memset(&s, 0, sizeof s);
        snprintf(s.currency, sizeof s.currency, "JPY");
        s.mode = mode;
        s.n = 2;
        s.t[0] = (cms_tier){0, 10000};
        s.t[1] = (cms_tier){INT64_MAX - 1, 10000};
        ck_assert_int_eq(C(&s, INT64_MAX), INT64_MAX);
        ck_assert_int_eq(C(&s, INT64_MAX - 2), INT64_MAX - 2);
        ck_assert_int_eq(cms_accrue(&s, INT64_MAX - 5, 5, &p), 0);
        ck_assert_int_eq(p.total, 5);
        ck_assert_int_eq(p.order_amount, 5);
        ck_assert_uint_eq(p.tier_after, 1);

        p = before;
        ck_assert_int_eq(cms_accrue(&s, INT64_MAX - 5, 6, &p), CM_EOVERFLOW);
        ck_assert_int_eq(cms_accrue(&s, INT64_MAX, INT64_MAX, &p), CM_EOVERFLOW);
        ck_assert(memcmp(&p, &before, sizeof p) == 0);
        ck_assert_int_eq(cms_portions(&s, 1, INT64_MAX, pt, &n), CM_EOVERFLOW);
        ck_assert_uint_eq(n, 99);
        ck_assert_int_eq(cms_true_up(&s, INT64_MAX, -1, &x), CM_EOVERFLOW);
        ck_assert_int_eq(x, -7);
        ck_assert_int_eq(cms_true_up(&s, INT64_MAX, INT64_MIN + 1, &x), CM_EOVERFLOW);
        ck_assert_int_eq(cms_true_up(&s, 0, INT64_MIN, &x), CM_EOVERFLOW);
    }

    /* marginal with a 0 % tier under a 100 % one: the remainders of huge
     * slices still floor exactly (reference in 128 bits) */
    memset(&s, 0, sizeof s);
    snprintf(s.currency, sizeof s.currency, "USD");
    s.mode = CMS_MODE_MARGINAL;
    s.n = 3;
    s.t[0] = (cms_tier){0, 9999};
    s.t[1] = (cms_tier){INT64_MAX / 3, 1};
    s.t[2] = (cms_tier){INT64_MAX / 3 * 2, 9999};
    ck_assert_int_eq(C(&s, INT64_MAX), ref_formula(&s, INT64_MAX));
    ck_assert_int_eq(C(&s, INT64_MAX - 1), ref_formula(&s, INT64_MAX - 1));
}
END_TEST

/* ---- properties ---- */

/* a random checked schedule: bounds at a random scale (fen-sized or near
 * int64), rates anywhere in 0..10000 (falling ones too) or rising */
static void rnd_schedule(uint64_t *seed, cms_schedule *s, int mode, int64_t *scale)
{
    memset(s, 0, sizeof *s);
    snprintf(s->currency, sizeof s->currency, "CNY");
    s->mode = mode;
    s->n = (size_t)rnd_range(seed, 1, CMS_TIERS_MAX);
    static const int64_t scales[] = {
        100, 10000, 1000000, 100000000, (int64_t)1 << 40, (int64_t)1 << 58};
    *scale = scales[rnd(seed) % (sizeof scales / sizeof scales[0])];
    int rising = rnd(seed) % 2;
    int64_t lo = 0, rate = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (i > 0)
            lo += rnd_range(seed, 1, *scale);
        if (rising)
            rate = rnd_range(seed, rate, rate + (10000 - rate) / 3);
        else
            rate = rnd(seed) % 5 == 0 ? rnd_range(seed, 0, 1) * 10000 : rnd_range(seed, 0, 10000);
        s->t[i] = (cms_tier){lo, rate};
    }
    cms_violation v;
    EQ(cms_schedule_check(s, &v), 0);
}

/* sales around the schedule's bounds, or anywhere below its scale */
static int64_t rnd_sales(uint64_t *seed, const cms_schedule *s, int64_t scale)
{
    int64_t top = s->t[s->n - 1].from_sales;
    int64_t base, x;
    switch (rnd(seed) % 4) {
    case 0: /* a bound, or one off it */
        base = s->t[rnd(seed) % s->n].from_sales;
        x = base + rnd_range(seed, 0, 2) - 1;
        return x < 0 ? 0 : x;
    case 1:
        return rnd_range(seed, 0, 3);
    default:
        return rnd_range(seed, 0, top + 2 * scale);
    }
}

START_TEST(formula_matches_its_definition)
{
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    for (int it = 0; it < 20000; it++) {
        cms_schedule s;
        int64_t scale;
        int mode = it % 2 ? CMS_MODE_WHOLE_VOLUME : CMS_MODE_MARGINAL;
        rnd_schedule(&seed, &s, mode, &scale);
        int64_t S = rnd_sales(&seed, &s, scale);
        int64_t c = C(&s, S);
        if (!(c == ref_formula(&s, S)))
            ck_abort_msg("it %d: C(%lld) = %lld, want %lld", it, (long long)S, (long long)c,
                         (long long)ref_formula(&s, S));
        TRUE(c >= 0 && c <= S);

        /* progress agrees with the tier and the formula */
        cms_progress g;
        EQ(cms_progress_of(&s, S, &g), 0);
        TRUE(s.t[g.tier].from_sales <= S);
        EQ(g.rate_bps, s.t[g.tier].rate_bps);
        EQ(g.commission, c);
        if (g.tier + 1 < s.n) {
            EQ(g.has_next, 1);
            TRUE(g.sales_needed > 0);
            EQ(S + g.sales_needed, s.t[g.tier + 1].from_sales);
            EQ(g.next_commission, ref_formula(&s, g.next_from_sales));
        } else {
            EQ(g.has_next, 0);
        }

        /* an order on top: the posting and its portions */
        int64_t a = rnd_range(&seed, 0, rnd(&seed) % 2 ? 3 : 2 * scale);
        cms_posting p;
        cms_portion pt[CMS_TIERS_MAX];
        size_t n;
        EQ(cms_accrue(&s, S, a, &p), 0);
        EQ(p.total, ref_formula(&s, S + a) - c);
        EQ(p.total, p.order_amount + p.true_up);
        TRUE(p.order_amount >= 0 && p.order_amount <= a);
        if (mode == CMS_MODE_MARGINAL) {
            EQ(p.true_up, 0);
            TRUE(p.total >= 0);
        } else if (p.tier_before == p.tier_after) {
            EQ(p.true_up, 0);
        } else {
            /* the earlier sales repriced */
            int64_t r0 = s.t[p.tier_before].rate_bps, r1 = s.t[p.tier_after].rate_bps;
            EQ(p.true_up,
               (int64_t)(floor_div((i128)S * r1, 10000) - floor_div((i128)S * r0, 10000)));
        }
        EQ(cms_portions(&s, S, a, pt, &n), 0);
        int64_t ps = 0, pc = 0;
        for (size_t i = 0; i < n; i++) {
            TRUE(pt[i].sales > 0);
            TRUE(i == 0 || pt[i].tier == pt[i - 1].tier + 1);
            ps += pt[i].sales;
            pc += pt[i].commission;
        }
        EQ(ps, a);
        EQ(pc, p.order_amount);
        TRUE(a > 0 || n == 0);
    }
}
END_TEST

/* ---- event sequences ---- */

#define ORDERS_MAX 12
#define REFUNDS_MAX 3
#define CHILDREN 2
#define EVENTS_MAX (CHILDREN * ORDERS_MAX * (1 + REFUNDS_MAX))

typedef struct ev {
    int child, order;
    int64_t refund; /* 0: the payment */
} ev;

typedef struct child {
    cms_schedule s;
    int norders;
    int64_t amount[ORDERS_MAX];
    /* state the caller would keep */
    int paid[ORDERS_MAX];
    cms_order o[ORDERS_MAX];
    int64_t own[ORDERS_MAX]; /* the order's commission row: accrued - clawed back */
    int64_t sales;           /* the period's net sales */
    i128 posted;             /* sum of its postings */
} child;

typedef struct world {
    child c[CHILDREN];
    int64_t override_bps;
    i128 parent_base, parent_posted;
} world;

static void apply(world *w, const ev *e, int it)
{
    child *c = &w->c[e->child];
    cms_posting p;
    if (e->refund == 0) {
        int64_t a = c->amount[e->order];
        EQ(cms_accrue(&c->s, c->sales, a, &p), 0);
        TRUE(p.order_amount >= 0 && p.order_amount <= a);
        c->paid[e->order] = 1;
        c->o[e->order] = (cms_order){.amount = a, .commission = p.order_amount, .refunded = 0};
        c->own[e->order] = p.order_amount;
    } else {
        cms_order *o = &c->o[e->order];
        EQ(cms_clawback(&c->s, c->sales, o, e->refund, &p), 0);
        TRUE(p.order_amount <= 0);
        o->refunded += e->refund;
        c->own[e->order] += p.order_amount;
        /* pro rata, never below zero, all of it back on a full refund */
        TRUE(c->own[e->order] >= 0);
        if (o->refunded == o->amount)
            EQ(c->own[e->order], 0);
    }
    EQ(p.total, p.order_amount + p.true_up);
    c->sales = p.sales_after;
    c->posted += p.total;
    /* after every event, not only at the end */
    if (!(c->posted == ref_formula(&c->s, c->sales)))
        ck_abort_msg("it %d: posted %lld, C(%lld) = %lld", it, (long long)c->posted,
                     (long long)c->sales, (long long)ref_formula(&c->s, c->sales));

    int64_t share;
    EQ(cms_parent_share(w->override_bps, (int64_t)w->parent_base, p.total, &share), 0);
    w->parent_base += p.total;
    w->parent_posted += share;
    TRUE(w->parent_posted == floor_div(w->parent_base * w->override_bps, 10000));
}

/* delivers the arrival stream the way the service would: duplicates
 * dropped by event id (its idempotency), a refund of an order not paid yet
 * held until the payment is applied */
static void deliver(world *w, const ev *evs, const int *arrival, int narrival, int nev, int it)
{
    int seen[EVENTS_MAX] = {0}, held[EVENTS_MAX];
    int nheld = 0;
    for (int i = 0; i < narrival; i++) {
        int id = arrival[i];
        if (seen[id])
            continue;
        seen[id] = 1;
        const ev *e = &evs[id];
        if (e->refund > 0 && !w->c[e->child].paid[e->order]) {
            held[nheld++] = id;
            continue;
        }
        apply(w, e, it);
        if (e->refund == 0) {
            /* its held refunds, in the order they arrived */
            int keep = 0;
            for (int j = 0; j < nheld; j++) {
                const ev *h = &evs[held[j]];
                if (h->child == e->child && h->order == e->order)
                    apply(w, h, it);
                else
                    held[keep++] = held[j];
            }
            nheld = keep;
        }
    }
    EQ(nheld, 0);
    for (int id = 0; id < nev; id++)
        TRUE(seen[id]);
}

static void shuffle(uint64_t *seed, int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rnd(seed) % (uint64_t)(i + 1));
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

START_TEST(any_arrival_order_posts_the_formula)
{
    int mode = _i ? CMS_MODE_WHOLE_VOLUME : CMS_MODE_MARGINAL;
    uint64_t seed = 0xd1b54a32d192ed03ULL + (uint64_t)_i;
    for (int it = 0; it < 10000; it++) {
        world w;
        memset(&w, 0, sizeof w);
        w.override_bps =
            rnd(&seed) % 3 == 0 ? rnd_range(&seed, 0, 10000) : rnd_range(&seed, 1, 3000);
        ev evs[EVENTS_MAX];
        int nev = 0;
        int64_t net[CHILDREN];
        for (int ci = 0; ci < CHILDREN; ci++) {
            child *c = &w.c[ci];
            int64_t scale;
            /* the second child mixes the modes */
            rnd_schedule(&seed, &c->s, ci == 0 ? mode : (int)rnd_range(&seed, 1, 2), &scale);
            /* amounts around the bounds: up to 2^59 each, 12 of them stay
             * within int64 */
            int64_t amax = scale > ((int64_t)1 << 59) ? ((int64_t)1 << 59) : scale;
            c->norders = (int)rnd_range(&seed, 1, ORDERS_MAX);
            net[ci] = 0;
            for (int oi = 0; oi < c->norders; oi++) {
                int64_t a = rnd_range(&seed, 1, rnd(&seed) % 4 == 0 ? 5 : amax);
                c->amount[oi] = a;
                evs[nev++] = (ev){ci, oi, 0};
                /* refunds: none, some, or all of it in pieces */
                int nr = (int)rnd_range(&seed, 0, REFUNDS_MAX);
                int full = rnd(&seed) % 2;
                int64_t left = a;
                for (int r = 0; r < nr && left > 0; r++) {
                    int64_t x = (full && r == nr - 1) ? left : rnd_range(&seed, 1, left);
                    evs[nev++] = (ev){ci, oi, x};
                    left -= x;
                }
                net[ci] += left;
            }
        }

        /* arrival: every event in a random order, some twice or three times */
        int arrival[3 * EVENTS_MAX], narr = 0;
        for (int id = 0; id < nev; id++) {
            arrival[narr++] = id;
            if (rnd(&seed) % 4 == 0)
                arrival[narr++] = id;
            if (rnd(&seed) % 16 == 0)
                arrival[narr++] = id;
        }
        shuffle(&seed, arrival, narr);
        deliver(&w, evs, arrival, narr, nev, it);

        i128 parent_total = w.parent_posted;
        for (int ci = 0; ci < CHILDREN; ci++) {
            child *c = &w.c[ci];
            EQ(c->sales, net[ci]);
            TRUE(c->posted == ref_formula(&c->s, net[ci]));
            int64_t adj = -1;
            EQ(cms_true_up(&c->s, c->sales, (int64_t)c->posted, &adj), 0);
            EQ(adj, 0);
        }
        /* the parent: floor of its rate on the children's net commission */
        i128 kids = (i128)ref_formula(&w.c[0].s, net[0]) + ref_formula(&w.c[1].s, net[1]);
        TRUE(parent_total == floor_div(kids * w.override_bps, 10000));

        /* the same events in another order: the same totals */
        world w2;
        memset(&w2, 0, sizeof w2);
        w2.override_bps = w.override_bps;
        for (int ci = 0; ci < CHILDREN; ci++) {
            w2.c[ci].s = w.c[ci].s;
            w2.c[ci].norders = w.c[ci].norders;
            memcpy(w2.c[ci].amount, w.c[ci].amount, sizeof w2.c[ci].amount);
        }
        shuffle(&seed, arrival, narr);
        deliver(&w2, evs, arrival, narr, nev, it);
        for (int ci = 0; ci < CHILDREN; ci++)
            TRUE(w2.c[ci].posted == w.c[ci].posted);
        TRUE(w2.parent_posted == parent_total);
    }
}
END_TEST

START_TEST(accrual_overflows_exactly_past_int64)
{
    uint64_t seed = 0x2545f4914f6cdd1dULL;
    for (int it = 0; it < 20000; it++) {
        cms_schedule s;
        int64_t scale;
        rnd_schedule(&seed, &s, it % 2 ? CMS_MODE_WHOLE_VOLUME : CMS_MODE_MARGINAL, &scale);
        int64_t S = INT64_MAX - rnd_range(&seed, 0, (int64_t)1 << 40);
        int64_t a = rnd_range(&seed, 0, (int64_t)1 << 41);
        cms_posting p;
        int rc = cms_accrue(&s, S, a, &p);
        if ((i128)S + a > INT64_MAX) {
            EQ(rc, CM_EOVERFLOW);
            continue;
        }
        EQ(rc, 0);
        EQ(p.total, ref_formula(&s, S + a) - ref_formula(&s, S));
        /* and all the way back down */
        cms_order o = {.amount = a, .commission = p.order_amount, .refunded = 0};
        if (a > 0) {
            rc = cms_clawback(&s, S + a, &o, a, &p);
            /* a true-up past int64 is reported, never wrapped */
            if (rc == 0)
                EQ(p.total, ref_formula(&s, S) - ref_formula(&s, S + a));
            else
                EQ(rc, CM_EOVERFLOW);
        }
    }
}
END_TEST

START_TEST(window_check_names_the_field_and_bounds)
{
    cms_violation v;
    EQ(cms_window_check(0, 0, &v), 0);
    EQ(cms_window_check(7 * 86400, 0, &v), 0);
    EQ(cms_window_check(CMS_WINDOW_MAX_S, 0, &v), 0);
    EQ(cms_window_check(CMS_WINDOW_MAX_S + 1, 0, &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "settings.after_sale_window");
    ck_assert_str_eq(v.why, "at most 90 days (7776000 s)");
    EQ(cms_window_check(-1, 0, &v), CM_EINVAL);
    ck_assert_str_eq(v.why, "must not be negative");
    EQ(cms_window_check(0, -5, &v), CM_EINVAL);
    ck_assert_str_eq(v.why, "must not be negative");
    EQ(cms_window_check(60, 1, &v), CM_EINVAL);
    ck_assert_str_eq(v.why, "must be a whole number of seconds");
    EQ(cms_window_check(INT64_MAX, 0, NULL), CM_EINVAL);
    /* the tenant's own window wins, even 0; else the default's days */
    EQ(cms_window_of(1, 0, 7), 0);
    EQ(cms_window_of(1, 3600, 7), 3600);
    EQ(cms_window_of(0, 3600, 7), 7 * 86400);
}
END_TEST

START_TEST(close_reprices_every_revision_together)
{
    cms_schedule w;
    seed_schedule(&w, CMS_MODE_WHOLE_VOLUME);
    /* one revision, postings telescoped: the close posts nothing */
    int64_t net1[1] = {6000000}, posted1[1] = {720000};
    int64_t ns = 0, c = 0, adj = 1;
    EQ(cms_close(&w, net1, posted1, 1, &ns, &c, &adj), 0);
    EQ(ns, 6000000);
    EQ(c, 720000);
    EQ(adj, 0);
    /* a schedule change mid-period: 9,000.00 under revision 1 (450.00 at
     * 5 %), 2,000.00 under revision 2 (100.00): together 11,000.00 reach
     * 8 %, 880.00, so the close posts 330.00 */
    int64_t net2[2] = {900000, 200000}, posted2[2] = {45000, 10000};
    EQ(cms_close(&w, net2, posted2, 2, &ns, &c, &adj), 0);
    EQ(ns, 1100000);
    EQ(c, 88000);
    EQ(adj, 33000);
    /* down as well: refunds in one revision take both below a bound */
    int64_t net3[2] = {600000, 300000}, posted3[2] = {48000, 24000};
    EQ(cms_close(&w, net3, posted3, 2, &ns, &c, &adj), 0);
    EQ(c, 45000);
    EQ(adj, 45000 - 72000);
    /* bad input */
    EQ(cms_close(&w, net2, posted2, 0, &ns, &c, &adj), CM_EINVAL);
    int64_t neg[1] = {-1};
    EQ(cms_close(&w, neg, posted1, 1, &ns, &c, &adj), CM_EINVAL);
    int64_t big[2] = {INT64_MAX, 1};
    EQ(cms_close(&w, big, posted2, 2, &ns, &c, &adj), CM_EOVERFLOW);
}
END_TEST

START_TEST(close_split_follows_each_merchants_net_sales)
{
    /* 330.00 over net sales 6,000.00 / 3,000.00 / 2,000.00 (11,000.00):
     * 180.00, 90.00, 60.00 exactly */
    int64_t net[3] = {600000, 300000, 200000}, parts[3] = {0};
    EQ(cms_close_split(33000, net, 3, 0, parts), 0);
    EQ(parts[0], 18000);
    EQ(parts[1], 9000);
    EQ(parts[2], 6000);
    /* 100 over thirds: 34, 33, 33 (the tie to the lower index), and the
     * negative mirrors it */
    int64_t eq[3] = {1, 1, 1};
    EQ(cms_close_split(100, eq, 3, 2, parts), 0);
    EQ(parts[0], 34);
    EQ(parts[1], 33);
    EQ(parts[2], 33);
    EQ(cms_close_split(-100, eq, 3, 2, parts), 0);
    EQ(parts[0], -34);
    EQ(parts[1], -33);
    EQ(parts[2], -33);
    /* a merchant whose orders were all refunded gets nothing */
    int64_t some[3] = {0, 700, 300};
    EQ(cms_close_split(-27001, some, 3, 0, parts), 0);
    EQ(parts[0], 0);
    EQ(parts[1], -18901);
    EQ(parts[2], -8100);
    EQ(parts[0] + parts[1] + parts[2], -27001);
    /* nobody has net sales: all of it to the fallback merchant */
    int64_t none[3] = {0, 0, 0};
    EQ(cms_close_split(-4500, none, 3, 1, parts), 0);
    EQ(parts[0], 0);
    EQ(parts[1], -4500);
    EQ(parts[2], 0);
    /* random splits sum to the amount, each part with its sign */
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int k = 0; k < 1000; k++) {
        int64_t w[5], p[5], sum = 0;
        size_t n = 1 + (size_t)(rnd(&seed) % 5);
        for (size_t i = 0; i < n; i++)
            w[i] = rnd(&seed) % 3 ? (int64_t)(rnd(&seed) % 1000000) : 0;
        int64_t amount = (int64_t)(rnd(&seed) % 2000001) - 1000000;
        EQ(cms_close_split(amount, w, n, n - 1, p), 0);
        for (size_t i = 0; i < n; i++) {
            sum += p[i];
            ck_assert(amount >= 0 ? p[i] >= 0 : p[i] <= 0);
        }
        EQ(sum, amount);
    }
    /* bad input, parts untouched */
    parts[0] = 7;
    EQ(cms_close_split(1, net, 0, 0, parts), CM_EINVAL);
    EQ(cms_close_split(1, net, 3, 3, parts), CM_EINVAL);
    int64_t neg[2] = {5, -1};
    EQ(cms_close_split(1, neg, 2, 0, parts), CM_EINVAL);
    EQ(parts[0], 7);
}
END_TEST

START_TEST(closed_period_posts_the_order_only)
{
    cms_schedule w;
    seed_schedule(&w, CMS_MODE_WHOLE_VOLUME);
    /* 40,000.00 then a late 10,000.00 order: open, it would reprice the
     * first 40,000.00 from 8 % to 12 %; closed, it earns its own 1,200.00
     * and nobody else moves */
    cms_posting p;
    EQ(cms_accrue(&w, 4000000, 1000000, &p), 0);
    EQ(p.order_amount, 120000);
    EQ(p.true_up, 160000);
    cms_posting_closed(&p);
    EQ(p.true_up, 0);
    EQ(p.total, 120000);
    EQ(p.order_amount, 120000);
    /* a late refund: its own clawback, no true-up of the others */
    cms_order o = {.amount = 1000000, .commission = 120000, .refunded = 0};
    EQ(cms_clawback(&w, 5000000, &o, 500000, &p), 0);
    EQ(p.order_amount, -60000);
    cms_posting_closed(&p);
    EQ(p.true_up, 0);
    EQ(p.total, -60000);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("commission_domain");
    TCase *t = tcase_create("domain");
    tcase_add_test(t, seed_table_to_the_fen_in_both_modes);
    tcase_add_test(t, whole_volume_crossing_up_and_back_down_posts_true_ups);
    tcase_add_test(t, whole_volume_with_a_falling_rate_prices_down);
    tcase_add_test(t, portions_split_an_order_by_tier);
    tcase_add_test(t, progress_names_the_next_threshold);
    tcase_add_test(t, parent_share_is_floor_of_the_pooled_base);
    tcase_add_test(t, schedule_check_names_each_bad_field);
    tcase_add_test(t, unchecked_schedules_and_bad_input_are_refused);
    tcase_add_test(t, overflow_is_an_error_not_a_wrapped_amount);
    tcase_add_test(t, window_check_names_the_field_and_bounds);
    tcase_add_test(t, close_reprices_every_revision_together);
    tcase_add_test(t, close_split_follows_each_merchants_net_sales);
    tcase_add_test(t, closed_period_posts_the_order_only);
    suite_add_tcase(s, t);
    TCase *p = tcase_create("properties");
    tcase_set_timeout(p, 60);
    tcase_add_test(p, formula_matches_its_definition);
    tcase_add_loop_test(p, any_arrival_order_posts_the_formula, 0, 2);
    tcase_add_test(p, accrual_overflows_exactly_past_int64);
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
