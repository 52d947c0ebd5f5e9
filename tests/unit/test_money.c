#include "cm_err.h"
#include "cm_money.h"

#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef __int128 i128;

/* property tests draw from a seeded generator so a failure can be replayed:
 * the seed is printed and MONEY_SEED=<n> reruns it */
static uint64_t prop_seed(void)
{
    static uint64_t seed;
    if (seed == 0) {
        const char *s = getenv("MONEY_SEED");
        char *end = NULL;
        seed = 0x5eed0f5011c0ffeeULL;
        if (s && *s) {
            unsigned long long v = strtoull(s, &end, 0);
            if (end && *end == '\0' && v != 0)
                seed = v;
        }
        fprintf(stderr, "test_money: property seed %" PRIu64 " (set MONEY_SEED to replay)\n", seed);
    }
    return seed;
}

/* splitmix64: small, good enough and identical on every platform */
static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int64_t rnd_range(uint64_t *s, int64_t lo, int64_t hi)
{
    uint64_t span = (uint64_t)hi - (uint64_t)lo + 1;
    if (span == 0)
        return (int64_t)rnd(s);
    return (int64_t)((uint64_t)lo + rnd(s) % span);
}

/* totals spread over every magnitude, extremes included */
static int64_t rnd_total(uint64_t *s)
{
    switch (rnd(s) % 6) {
    case 0:
        return rnd_range(s, -100, 100);
    case 1:
        return rnd_range(s, 0, 1000000);
    case 2:
        return rnd_range(s, -1000000000000LL, 1000000000000LL);
    case 3:
        return (int64_t)rnd(s);
    case 4:
        return INT64_MAX - rnd_range(s, 0, 3);
    default:
        return INT64_MIN + rnd_range(s, 0, 3);
    }
}

static int64_t rnd_weight(uint64_t *s)
{
    switch (rnd(s) % 5) {
    case 0:
        return 0;
    case 1:
        return rnd_range(s, 1, 3);
    case 2:
        return rnd_range(s, 0, 10000); /* bps shares */
    case 3:
        return rnd_range(s, 0, INT64_MAX);
    default:
        return INT64_MAX - rnd_range(s, 0, 1);
    }
}

/* python-style floor division, independent of the library's code path */
static i128 floor_div(i128 a, i128 b)
{
    i128 q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q -= 1;
    return q;
}

static i128 floor_mod(i128 a, i128 b)
{
    return a - floor_div(a, b) * b;
}

/* asserts every promise of cm_money_split for one input and its result */
static void check_split_properties(int64_t total, const int64_t *w, size_t n, const int64_t *parts)
{
    i128 wsum = 0, psum = 0;
    for (size_t i = 0; i < n; i++) {
        wsum += w[i];
        psum += parts[i];
    }
    ck_assert_msg(psum == (i128)total, "parts do not sum to total %" PRId64, total);

    /* for a negative total the rule runs on the magnitude and is mirrored */
    int neg = total < 0;
    i128 mag = neg ? -(i128)total : (i128)total;
    for (size_t i = 0; i < n; i++) {
        i128 p = neg ? -(i128)parts[i] : (i128)parts[i];
        i128 fl = floor_div(mag * w[i], wsum);
        i128 rem = floor_mod(mag * w[i], wsum);
        ck_assert_msg(p >= 0, "negative part %zu for total %" PRId64, i, total);
        ck_assert_msg(p == fl || (p == fl + 1 && rem != 0),
                      "part %zu of total %" PRId64 " is not within 1 of its share", i, total);
        if (w[i] == 0)
            ck_assert_int_eq(parts[i], 0);
    }

    /* largest remainder: every part that got an extra unit had a larger
     * remainder than every part that did not, ties to the lower index */
    for (size_t i = 0; i < n; i++) {
        i128 pi = neg ? -(i128)parts[i] : (i128)parts[i];
        i128 ri = floor_mod(mag * w[i], wsum);
        if (pi == floor_div(mag * w[i], wsum))
            continue;
        for (size_t j = 0; j < n; j++) {
            i128 pj = neg ? -(i128)parts[j] : (i128)parts[j];
            i128 rj = floor_mod(mag * w[j], wsum);
            if (pj != floor_div(mag * w[j], wsum))
                continue;
            ck_assert_msg(ri > rj || (ri == rj && i < j),
                          "part %zu got a unit before part %zu with a better claim", i, j);
        }
    }
}

START_TEST(add_overflow_is_reported_not_wrapped)
{
    int64_t r = 42;
    ck_assert_int_eq(cm_money_add(INT64_MAX, 1, &r), CM_EOVERFLOW);
    ck_assert_int_eq(r, 42);
    ck_assert_int_eq(cm_money_add(INT64_MIN, -1, &r), CM_EOVERFLOW);
    ck_assert_int_eq(cm_money_add(INT64_MAX - 1, 1, &r), 0);
    ck_assert_int_eq(r, INT64_MAX);
    ck_assert_int_eq(cm_money_add(-5, 3, &r), 0);
    ck_assert_int_eq(r, -2);
}
END_TEST

START_TEST(sub_overflow_is_reported_not_wrapped)
{
    int64_t r = 42;
    ck_assert_int_eq(cm_money_sub(INT64_MIN, 1, &r), CM_EOVERFLOW);
    ck_assert_int_eq(cm_money_sub(0, INT64_MIN, &r), CM_EOVERFLOW);
    ck_assert_int_eq(r, 42);
    ck_assert_int_eq(cm_money_sub(-1, INT64_MAX, &r), 0);
    ck_assert_int_eq(r, INT64_MIN);
}
END_TEST

START_TEST(mul_overflow_is_reported_not_wrapped)
{
    int64_t r = 42;
    ck_assert_int_eq(cm_money_mul(INT64_MIN, -1, &r), CM_EOVERFLOW);
    ck_assert_int_eq(cm_money_mul(INT64_MAX / 2 + 1, 2, &r), CM_EOVERFLOW);
    ck_assert_int_eq(cm_money_mul(3037000500LL, 3037000500LL, &r), CM_EOVERFLOW);
    ck_assert_int_eq(r, 42);
    ck_assert_int_eq(cm_money_mul(1999, 3, &r), 0);
    ck_assert_int_eq(r, 5997);
    ck_assert_int_eq(cm_money_mul(INT64_MAX, -1, &r), 0);
    ck_assert_int_eq(r, -INT64_MAX);
}
END_TEST

START_TEST(apply_bps_rounds_half_even)
{
    int64_t r;
    /* 12.5 -> 12, 17.5 -> 18: ties go to the even neighbour */
    ck_assert_int_eq(cm_money_apply_bps(25, 5000, CM_ROUND_HALF_EVEN, &r), 0);
    ck_assert_int_eq(r, 12);
    ck_assert_int_eq(cm_money_apply_bps(35, 5000, CM_ROUND_HALF_EVEN, &r), 0);
    ck_assert_int_eq(r, 18);
    /* 12.505 is above the tie: up; 125.1: down */
    ck_assert_int_eq(cm_money_apply_bps(2501, 50, CM_ROUND_HALF_EVEN, &r), 0);
    ck_assert_int_eq(r, 13);
    ck_assert_int_eq(cm_money_apply_bps(1251, 1000, CM_ROUND_HALF_EVEN, &r), 0);
    ck_assert_int_eq(r, 125);
    ck_assert_int_eq(cm_money_apply_bps(-25, 5000, CM_ROUND_HALF_EVEN, &r), 0);
    ck_assert_int_eq(r, -12);
    ck_assert_int_eq(cm_money_apply_bps(-35, 5000, CM_ROUND_HALF_EVEN, &r), 0);
    ck_assert_int_eq(r, -18);
    /* 0.6 -> 1, 0.4 -> 0 */
    ck_assert_int_eq(cm_money_apply_bps(6, 1000, CM_ROUND_HALF_EVEN, &r), 0);
    ck_assert_int_eq(r, 1);
    ck_assert_int_eq(cm_money_apply_bps(4, 1000, CM_ROUND_HALF_EVEN, &r), 0);
    ck_assert_int_eq(r, 0);
}
END_TEST

START_TEST(apply_bps_rounds_floor_ceil_down_half_up)
{
    int64_t r;
    ck_assert_int_eq(cm_money_apply_bps(25, 5000, CM_ROUND_FLOOR, &r), 0);
    ck_assert_int_eq(r, 12);
    ck_assert_int_eq(cm_money_apply_bps(-25, 5000, CM_ROUND_FLOOR, &r), 0);
    ck_assert_int_eq(r, -13);
    ck_assert_int_eq(cm_money_apply_bps(1, 1, CM_ROUND_FLOOR, &r), 0);
    ck_assert_int_eq(r, 0);
    ck_assert_int_eq(cm_money_apply_bps(1, 1, CM_ROUND_CEIL, &r), 0);
    ck_assert_int_eq(r, 1);
    ck_assert_int_eq(cm_money_apply_bps(-1, 1, CM_ROUND_CEIL, &r), 0);
    ck_assert_int_eq(r, 0);
    ck_assert_int_eq(cm_money_apply_bps(-19999, 5000, CM_ROUND_DOWN, &r), 0);
    ck_assert_int_eq(r, -9999);
    ck_assert_int_eq(cm_money_apply_bps(25, 5000, CM_ROUND_HALF_UP, &r), 0);
    ck_assert_int_eq(r, 13);
    ck_assert_int_eq(cm_money_apply_bps(-25, 5000, CM_ROUND_HALF_UP, &r), 0);
    ck_assert_int_eq(r, -13);
    /* exact results are the same in every mode */
    for (int m = CM_ROUND_HALF_EVEN; m <= CM_ROUND_DOWN; m++) {
        ck_assert_int_eq(cm_money_apply_bps(10000, 625, (cm_money_round)m, &r), 0);
        ck_assert_int_eq(r, 625);
    }
}
END_TEST

START_TEST(apply_bps_uses_wide_intermediate_and_checks_overflow)
{
    int64_t r = 7;
    /* INT64_MAX * 10000 overflows 64 bits, the quotient does not */
    ck_assert_int_eq(cm_money_apply_bps(INT64_MAX, 10000, CM_ROUND_FLOOR, &r), 0);
    ck_assert_int_eq(r, INT64_MAX);
    ck_assert_int_eq(cm_money_apply_bps(INT64_MIN, 10000, CM_ROUND_FLOOR, &r), 0);
    ck_assert_int_eq(r, INT64_MIN);
    ck_assert_int_eq(cm_money_apply_bps(INT64_MAX, 5000, CM_ROUND_HALF_EVEN, &r), 0);
    ck_assert_int_eq(r, INT64_MAX / 2 + 1); /* 4611686018427387903.5 -> even */
    r = 7;
    ck_assert_int_eq(cm_money_apply_bps(INT64_MAX, 10001, CM_ROUND_FLOOR, &r), CM_EOVERFLOW);
    ck_assert_int_eq(cm_money_apply_bps(INT64_MIN, -10000, CM_ROUND_FLOOR, &r), CM_EOVERFLOW);
    ck_assert_int_eq(r, 7);
    ck_assert_int_eq(cm_money_apply_bps(100, 5000, (cm_money_round)99, &r), CM_EINVAL);
    ck_assert_int_eq(cm_money_muldiv(100, 1, 0, CM_ROUND_FLOOR, &r), CM_EINVAL);
    ck_assert_int_eq(cm_money_muldiv(100, 1, -3, CM_ROUND_FLOOR, &r), CM_EINVAL);
    ck_assert_int_eq(r, 7);
    ck_assert_int_eq(cm_money_muldiv(100, 1, 3, CM_ROUND_CEIL, &r), 0);
    ck_assert_int_eq(r, 34);
}
END_TEST

START_TEST(currency_exponent_follows_iso4217)
{
    static const char *two[] = {"CNY", "USD", "EUR", "GBP", "HKD", "TWD", "SGD", "AUD", "CAD",
                                "CHF", "INR", "BRL", "MXN", "RUB", "THB", "IDR", "MYR", "PHP"};
    for (size_t i = 0; i < sizeof two / sizeof two[0]; i++) {
        ck_assert_msg(cm_money_currency_exponent(two[i]) == 2, "%s", two[i]);
        ck_assert_int_eq(cm_money_currency_valid(two[i]), 1);
    }
    ck_assert_int_eq(cm_money_currency_exponent("JPY"), 0);
    ck_assert_int_eq(cm_money_currency_exponent("KRW"), 0);
    ck_assert_int_eq(cm_money_currency_exponent("VND"), 0);
    ck_assert_int_eq(cm_money_currency_exponent("KWD"), 3);
    ck_assert_int_eq(cm_money_currency_exponent("BHD"), 3);
}
END_TEST

START_TEST(currency_malformed_or_unknown_is_rejected)
{
    static const char *bad[] = {"usd", "Usd", "US", "USDX", "", "XXX", "ABC", "US ", "U$D"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(cm_money_currency_exponent(bad[i]) == CM_EINVAL, "\"%s\"", bad[i]);
        ck_assert_int_eq(cm_money_currency_valid(bad[i]), 0);
    }
    ck_assert_int_eq(cm_money_currency_exponent(NULL), CM_EINVAL);
    ck_assert_int_eq(cm_money_currency_valid(NULL), 0);
}
END_TEST

START_TEST(format_uses_currency_exponent)
{
    char buf[32];
    ck_assert_int_eq(cm_money_format(12345, "CNY", buf, sizeof buf), 0);
    ck_assert_str_eq(buf, "123.45");
    ck_assert_int_eq(cm_money_format(-5, "USD", buf, sizeof buf), 0);
    ck_assert_str_eq(buf, "-0.05");
    ck_assert_int_eq(cm_money_format(100, "JPY", buf, sizeof buf), 0);
    ck_assert_str_eq(buf, "100");
    ck_assert_int_eq(cm_money_format(1234, "KWD", buf, sizeof buf), 0);
    ck_assert_str_eq(buf, "1.234");
    ck_assert_int_eq(cm_money_format(INT64_MIN, "USD", buf, sizeof buf), 0);
    ck_assert_str_eq(buf, "-92233720368547758.08");
    ck_assert_int_eq(cm_money_format(INT64_MIN, "JPY", buf, 24), 0);
    ck_assert_int_eq(cm_money_format(12345, "CNY", buf, 6), CM_EOVERFLOW);
    ck_assert_int_eq(cm_money_format(1, "XYZ", buf, sizeof buf), CM_EINVAL);
}
END_TEST

START_TEST(split_gives_leftover_to_largest_remainder)
{
    int64_t w[3] = {7000, 2000, 1000}, p[3];
    ck_assert_int_eq(cm_money_split(1001, w, 3, p), 0);
    ck_assert_int_eq(p[0], 701);
    ck_assert_int_eq(p[1], 200);
    ck_assert_int_eq(p[2], 100);

    int64_t w2[2] = {1, 2}, p2[2];
    ck_assert_int_eq(cm_money_split(10, w2, 2, p2), 0); /* 3.33, 6.67 */
    ck_assert_int_eq(p2[0], 3);
    ck_assert_int_eq(p2[1], 7);
}
END_TEST

START_TEST(split_breaks_ties_to_lower_index)
{
    int64_t w[3] = {1, 1, 1}, p[3];
    ck_assert_int_eq(cm_money_split(1, w, 3, p), 0);
    ck_assert_int_eq(p[0], 1);
    ck_assert_int_eq(p[1], 0);
    ck_assert_int_eq(p[2], 0);
    ck_assert_int_eq(cm_money_split(2, w, 3, p), 0);
    ck_assert_int_eq(p[0], 1);
    ck_assert_int_eq(p[1], 1);
    ck_assert_int_eq(p[2], 0);
    ck_assert_int_eq(cm_money_split(-2, w, 3, p), 0);
    ck_assert_int_eq(p[0], -1);
    ck_assert_int_eq(p[1], -1);
    ck_assert_int_eq(p[2], 0);
}
END_TEST

START_TEST(split_negative_total_mirrors_positive)
{
    int64_t w[2] = {1, 2}, p[2];
    ck_assert_int_eq(cm_money_split(-10, w, 2, p), 0);
    ck_assert_int_eq(p[0], -3);
    ck_assert_int_eq(p[1], -7);
}
END_TEST

START_TEST(split_handles_int64_extremes)
{
    int64_t w[2] = {1, 1}, p[2];
    ck_assert_int_eq(cm_money_split(INT64_MAX, w, 2, p), 0);
    ck_assert_int_eq(p[0], INT64_MAX / 2 + 1);
    ck_assert_int_eq(p[1], INT64_MAX / 2);
    ck_assert_int_eq(cm_money_split(INT64_MIN, w, 2, p), 0);
    ck_assert_int_eq(p[0], INT64_MIN / 2);
    ck_assert_int_eq(p[1], INT64_MIN / 2);

    int64_t wmax[3] = {INT64_MAX, INT64_MAX, 1}, p3[3];
    ck_assert_int_eq(cm_money_split(INT64_MAX, wmax, 3, p3), 0);
    check_split_properties(INT64_MAX, wmax, 3, p3);
    ck_assert_int_eq(cm_money_split(INT64_MIN, wmax, 3, p3), 0);
    check_split_properties(INT64_MIN, wmax, 3, p3);

    int64_t one = INT64_MAX, p1;
    ck_assert_int_eq(cm_money_split(INT64_MIN, &one, 1, &p1), 0);
    ck_assert_int_eq(p1, INT64_MIN);
}
END_TEST

START_TEST(split_one_part_takes_total)
{
    int64_t w = 3, p = 0;
    ck_assert_int_eq(cm_money_split(12345, &w, 1, &p), 0);
    ck_assert_int_eq(p, 12345);
    ck_assert_int_eq(cm_money_split(-7, &w, 1, &p), 0);
    ck_assert_int_eq(p, -7);
}
END_TEST

START_TEST(split_zero_weight_gets_nothing)
{
    int64_t w[4] = {0, 5000, 0, 5000}, p[4];
    ck_assert_int_eq(cm_money_split(3, w, 4, p), 0);
    ck_assert_int_eq(p[0], 0);
    ck_assert_int_eq(p[1], 2);
    ck_assert_int_eq(p[2], 0);
    ck_assert_int_eq(p[3], 1);
    ck_assert_int_eq(cm_money_split(0, w, 4, p), 0);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(p[i], 0);
}
END_TEST

START_TEST(split_invalid_weights_are_rejected)
{
    int64_t zero[3] = {0, 0, 0}, negw[2] = {5, -1}, p[3] = {9, 9, 9};
    ck_assert_int_eq(cm_money_split(100, zero, 3, p), CM_EINVAL);
    ck_assert_int_eq(cm_money_split(100, negw, 2, p), CM_EINVAL);
    ck_assert_int_eq(cm_money_split(100, zero, 0, p), CM_EINVAL);
    ck_assert_int_eq(cm_money_split(100, NULL, 1, p), CM_EINVAL);
    /* parts untouched on error */
    ck_assert_int_eq(p[0], 9);
    ck_assert_int_eq(p[1], 9);
    ck_assert_int_eq(p[2], 9);
}
END_TEST

START_TEST(split_many_parts_uses_heap_and_stays_exact)
{
    enum { N = 1000 };
    int64_t *w = malloc(N * sizeof *w), *p = malloc(N * sizeof *p);
    ck_assert_ptr_nonnull(w);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < N; i++)
        w[i] = (int64_t)(i % 7);
    ck_assert_int_eq(cm_money_split(999999937, w, N, p), 0);
    check_split_properties(999999937, w, N, p);
    free(w);
    free(p);
}
END_TEST

START_TEST(split_property_random_inputs)
{
    uint64_t s = prop_seed();
    int64_t w[16], p[16], again[16], mirror[16];
    for (int iter = 0; iter < 20000; iter++) {
        size_t n = (size_t)rnd_range(&s, 1, 16);
        int64_t total = rnd_total(&s);
        int nonzero = 0;
        for (size_t i = 0; i < n; i++) {
            w[i] = rnd_weight(&s);
            nonzero |= w[i] != 0;
        }
        if (!nonzero)
            w[rnd(&s) % n] = 1;

        ck_assert_int_eq(cm_money_split(total, w, n, p), 0);
        check_split_properties(total, w, n, p);

        ck_assert_int_eq(cm_money_split(total, w, n, again), 0);
        ck_assert_int_eq(memcmp(p, again, n * sizeof *p), 0);

        if (total != INT64_MIN) {
            ck_assert_int_eq(cm_money_split(-total, w, n, mirror), 0);
            for (size_t i = 0; i < n; i++)
                ck_assert_int_eq(mirror[i], -p[i]);
        }
    }
}
END_TEST

START_TEST(split_refund_reverses_pro_rata)
{
    int64_t parts[3] = {701, 200, 100}, out[3];
    ck_assert_int_eq(cm_money_split_refund(1001, parts, NULL, 3, out), 0);
    ck_assert_int_eq(out[0], 701);
    ck_assert_int_eq(out[1], 200);
    ck_assert_int_eq(out[2], 100);
    ck_assert_int_eq(cm_money_split_refund(100, parts, NULL, 3, out), 0);
    ck_assert_int_eq(out[0] + out[1] + out[2], 100);
    ck_assert_int_eq(out[0], 70);
    ck_assert_int_eq(out[1], 20);
    ck_assert_int_eq(out[2], 10);
}
END_TEST

START_TEST(split_refund_never_takes_more_than_left)
{
    /* three 1-unit refunds of 3 equal parts: proportional to the original
     * parts each would hit part 0; on the remainder they spread out */
    int64_t parts[3] = {1, 1, 1}, refunded[3] = {0, 0, 0}, out[3];
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(cm_money_split_refund(1, parts, refunded, 3, out), 0);
        for (int i = 0; i < 3; i++)
            refunded[i] += out[i];
    }
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(refunded[i], 1);
    ck_assert_int_eq(cm_money_split_refund(1, parts, refunded, 3, out), CM_EINVAL);
}
END_TEST

START_TEST(split_refund_invalid_input_is_rejected)
{
    int64_t parts[2] = {60, 40}, mixed[2] = {60, -40}, out[2] = {5, 5};
    int64_t over[2] = {61, 0}, wrongsign[2] = {-1, 0}, half[2] = {30, 20};
    ck_assert_int_eq(cm_money_split_refund(101, parts, NULL, 2, out), CM_EINVAL);
    ck_assert_int_eq(cm_money_split_refund(-1, parts, NULL, 2, out), CM_EINVAL);
    ck_assert_int_eq(cm_money_split_refund(10, mixed, NULL, 2, out), CM_EINVAL);
    ck_assert_int_eq(cm_money_split_refund(10, parts, over, 2, out), CM_EINVAL);
    ck_assert_int_eq(cm_money_split_refund(10, parts, wrongsign, 2, out), CM_EINVAL);
    ck_assert_int_eq(cm_money_split_refund(51, parts, half, 2, out), CM_EINVAL);
    ck_assert_int_eq(cm_money_split_refund(1, parts, NULL, 0, out), CM_EINVAL);
    ck_assert_int_eq(out[0], 5);
    ck_assert_int_eq(out[1], 5);
    ck_assert_int_eq(cm_money_split_refund(50, parts, half, 2, out), 0);
    ck_assert_int_eq(out[0], 30);
    ck_assert_int_eq(out[1], 20);
    ck_assert_int_eq(cm_money_split_refund(0, parts, NULL, 2, out), 0);
    ck_assert_int_eq(out[0], 0);
    ck_assert_int_eq(out[1], 0);
}
END_TEST

START_TEST(split_refund_negative_parts_mirror)
{
    int64_t parts[2] = {-60, -40}, out[2];
    ck_assert_int_eq(cm_money_split_refund(-5, parts, NULL, 2, out), 0);
    ck_assert_int_eq(out[0], -3);
    ck_assert_int_eq(out[1], -2);
    ck_assert_int_eq(cm_money_split_refund(5, parts, NULL, 2, out), CM_EINVAL);
    int64_t minp[2] = {INT64_MIN, 0};
    ck_assert_int_eq(cm_money_split_refund(INT64_MIN, minp, NULL, 2, out), 0);
    ck_assert_int_eq(out[0], INT64_MIN);
    ck_assert_int_eq(out[1], 0);
}
END_TEST

START_TEST(split_refund_property_partial_refunds_add_up)
{
    uint64_t s = prop_seed() ^ 0xa5a5a5a5a5a5a5a5ULL;
    int64_t w[12], parts[12], refunded[12], out[12];
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = (size_t)rnd_range(&s, 1, 12);
        int64_t total =
            rnd_range(&s, 0, 1) ? rnd_range(&s, 0, 100000) : rnd_range(&s, 0, INT64_MAX);
        for (size_t i = 0; i < n; i++)
            w[i] = rnd_range(&s, 0, 10000);
        w[0] += 1;
        ck_assert_int_eq(cm_money_split(total, w, n, parts), 0);
        memset(refunded, 0, sizeof refunded);

        int64_t left = total;
        for (int step = 0; left > 0; step++) {
            /* a few partial refunds, then the rest */
            int64_t r = step < 4 ? rnd_range(&s, 0, left) : left;
            ck_assert_int_eq(cm_money_split_refund(r, parts, refunded, n, out), 0);
            i128 sum = 0;
            for (size_t i = 0; i < n; i++) {
                ck_assert(out[i] >= 0);
                ck_assert(out[i] <= parts[i] - refunded[i]);
                refunded[i] += out[i];
                sum += out[i];
            }
            ck_assert(sum == r);
            left -= r;
        }
        for (size_t i = 0; i < n; i++)
            ck_assert_int_eq(refunded[i], parts[i]);
    }
}
END_TEST

static Suite *money_suite(void)
{
    Suite *s = suite_create("money");
    TCase *arith = tcase_create("arith");
    tcase_add_test(arith, add_overflow_is_reported_not_wrapped);
    tcase_add_test(arith, sub_overflow_is_reported_not_wrapped);
    tcase_add_test(arith, mul_overflow_is_reported_not_wrapped);
    tcase_add_test(arith, apply_bps_rounds_half_even);
    tcase_add_test(arith, apply_bps_rounds_floor_ceil_down_half_up);
    tcase_add_test(arith, apply_bps_uses_wide_intermediate_and_checks_overflow);
    suite_add_tcase(s, arith);

    TCase *cur = tcase_create("currency");
    tcase_add_test(cur, currency_exponent_follows_iso4217);
    tcase_add_test(cur, currency_malformed_or_unknown_is_rejected);
    tcase_add_test(cur, format_uses_currency_exponent);
    suite_add_tcase(s, cur);

    TCase *split = tcase_create("split");
    tcase_set_timeout(split, 60);
    tcase_add_test(split, split_gives_leftover_to_largest_remainder);
    tcase_add_test(split, split_breaks_ties_to_lower_index);
    tcase_add_test(split, split_negative_total_mirrors_positive);
    tcase_add_test(split, split_handles_int64_extremes);
    tcase_add_test(split, split_one_part_takes_total);
    tcase_add_test(split, split_zero_weight_gets_nothing);
    tcase_add_test(split, split_invalid_weights_are_rejected);
    tcase_add_test(split, split_many_parts_uses_heap_and_stays_exact);
    tcase_add_test(split, split_property_random_inputs);
    tcase_add_test(split, split_refund_reverses_pro_rata);
    tcase_add_test(split, split_refund_never_takes_more_than_left);
    tcase_add_test(split, split_refund_invalid_input_is_rejected);
    tcase_add_test(split, split_refund_negative_parts_mirror);
    tcase_add_test(split, split_refund_property_partial_refunds_add_up);
    suite_add_tcase(s, split);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(money_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
