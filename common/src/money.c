#include "cm_money.h"
#include "cm_err.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef __int128 i128;

/* active ISO-4217 codes with their minor-unit exponent. funds and metals
 * (XAU, CLF, ...) are left out: nobody sells goods in them. */
static const struct {
    char code[4];
    unsigned char exp;
} currencies[] = {
    {"AED", 2}, {"AFN", 2}, {"ALL", 2}, {"AMD", 2}, {"ANG", 2}, {"AOA", 2}, {"ARS", 2}, {"AUD", 2},
    {"AWG", 2}, {"AZN", 2}, {"BAM", 2}, {"BBD", 2}, {"BDT", 2}, {"BGN", 2}, {"BHD", 3}, {"BIF", 0},
    {"BMD", 2}, {"BND", 2}, {"BOB", 2}, {"BRL", 2}, {"BSD", 2}, {"BTN", 2}, {"BWP", 2}, {"BYN", 2},
    {"BZD", 2}, {"CAD", 2}, {"CDF", 2}, {"CHF", 2}, {"CLP", 0}, {"CNY", 2}, {"COP", 2}, {"CRC", 2},
    {"CUP", 2}, {"CVE", 2}, {"CZK", 2}, {"DJF", 0}, {"DKK", 2}, {"DOP", 2}, {"DZD", 2}, {"EGP", 2},
    {"ERN", 2}, {"ETB", 2}, {"EUR", 2}, {"FJD", 2}, {"FKP", 2}, {"GBP", 2}, {"GEL", 2}, {"GHS", 2},
    {"GIP", 2}, {"GMD", 2}, {"GNF", 0}, {"GTQ", 2}, {"GYD", 2}, {"HKD", 2}, {"HNL", 2}, {"HTG", 2},
    {"HUF", 2}, {"IDR", 2}, {"ILS", 2}, {"INR", 2}, {"IQD", 3}, {"IRR", 2}, {"ISK", 0}, {"JMD", 2},
    {"JOD", 3}, {"JPY", 0}, {"KES", 2}, {"KGS", 2}, {"KHR", 2}, {"KMF", 0}, {"KPW", 2}, {"KRW", 0},
    {"KWD", 3}, {"KYD", 2}, {"KZT", 2}, {"LAK", 2}, {"LBP", 2}, {"LKR", 2}, {"LRD", 2}, {"LSL", 2},
    {"LYD", 3}, {"MAD", 2}, {"MDL", 2}, {"MGA", 2}, {"MKD", 2}, {"MMK", 2}, {"MNT", 2}, {"MOP", 2},
    {"MRU", 2}, {"MUR", 2}, {"MVR", 2}, {"MWK", 2}, {"MXN", 2}, {"MYR", 2}, {"MZN", 2}, {"NAD", 2},
    {"NGN", 2}, {"NIO", 2}, {"NOK", 2}, {"NPR", 2}, {"NZD", 2}, {"OMR", 3}, {"PAB", 2}, {"PEN", 2},
    {"PGK", 2}, {"PHP", 2}, {"PKR", 2}, {"PLN", 2}, {"PYG", 0}, {"QAR", 2}, {"RON", 2}, {"RSD", 2},
    {"RUB", 2}, {"RWF", 0}, {"SAR", 2}, {"SBD", 2}, {"SCR", 2}, {"SDG", 2}, {"SEK", 2}, {"SGD", 2},
    {"SHP", 2}, {"SLE", 2}, {"SOS", 2}, {"SRD", 2}, {"SSP", 2}, {"STN", 2}, {"SVC", 2}, {"SYP", 2},
    {"SZL", 2}, {"THB", 2}, {"TJS", 2}, {"TMT", 2}, {"TND", 3}, {"TOP", 2}, {"TRY", 2}, {"TTD", 2},
    {"TWD", 2}, {"TZS", 2}, {"UAH", 2}, {"UGX", 0}, {"USD", 2}, {"UYU", 2}, {"UZS", 2}, {"VES", 2},
    {"VND", 0}, {"VUV", 0}, {"WST", 2}, {"XAF", 0}, {"XCD", 2}, {"XCG", 2}, {"XOF", 0}, {"XPF", 0},
    {"YER", 2}, {"ZAR", 2}, {"ZMW", 2}, {"ZWG", 2},
};

int cm_money_add(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return CM_EOVERFLOW;
    *out = r;
    return 0;
}

int cm_money_sub(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (__builtin_sub_overflow(a, b, &r))
        return CM_EOVERFLOW;
    *out = r;
    return 0;
}

int cm_money_mul(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return CM_EOVERFLOW;
    *out = r;
    return 0;
}

/* n / d rounded by mode; d > 0. the remainder is below d <= 2^63, so 2 * |r|
 * cannot overflow 128 bits. */
static i128 div_round(i128 n, i128 d, cm_money_round mode)
{
    i128 q = n / d, r = n % d;
    if (r == 0)
        return q;
    i128 away = n < 0 ? -1 : 1;
    i128 twice = 2 * (r < 0 ? -r : r);
    switch (mode) {
    case CM_ROUND_FLOOR:
        return r < 0 ? q - 1 : q;
    case CM_ROUND_CEIL:
        return r > 0 ? q + 1 : q;
    case CM_ROUND_DOWN:
        return q;
    case CM_ROUND_HALF_UP:
        return twice >= d ? q + away : q;
    case CM_ROUND_HALF_EVEN:
        if (twice > d || (twice == d && (q & 1) != 0))
            return q + away;
        return q;
    }
    return q;
}

int cm_money_muldiv(int64_t a, int64_t num, int64_t den, cm_money_round mode, int64_t *out)
{
    if (den <= 0)
        return CM_EINVAL;
    switch (mode) {
    case CM_ROUND_HALF_EVEN:
    case CM_ROUND_HALF_UP:
    case CM_ROUND_FLOOR:
    case CM_ROUND_CEIL:
    case CM_ROUND_DOWN:
        break;
    default:
        return CM_EINVAL;
    }
    /* |a * num| <= 2^126: exact in signed 128 bits */
    i128 q = div_round((i128)a * num, den, mode);
    if (q > INT64_MAX || q < INT64_MIN)
        return CM_EOVERFLOW;
    *out = (int64_t)q;
    return 0;
}

int cm_money_apply_bps(int64_t amount, int64_t bps, cm_money_round mode, int64_t *out)
{
    return cm_money_muldiv(amount, bps, CM_MONEY_BPS_ONE, mode, out);
}

int cm_money_currency_exponent(const char *code)
{
    if (!code || strlen(code) != 3)
        return CM_EINVAL;
    for (size_t i = 0; i < sizeof currencies / sizeof currencies[0]; i++)
        if (memcmp(currencies[i].code, code, 3) == 0)
            return currencies[i].exp;
    return CM_EINVAL;
}

int cm_money_currency_valid(const char *code)
{
    return cm_money_currency_exponent(code) >= 0;
}

int cm_money_format(int64_t amount, const char *currency, char *out, size_t outlen)
{
    int exp = cm_money_currency_exponent(currency);
    if (exp < 0)
        return CM_EINVAL;
    /* unsigned magnitude so INT64_MIN formats too */
    uint64_t mag = amount < 0 ? (uint64_t)0 - (uint64_t)amount : (uint64_t)amount;
    const char *sign = amount < 0 ? "-" : "";
    int n;
    if (exp == 0) {
        n = snprintf(out, outlen, "%s%" PRIu64, sign, mag);
    } else {
        uint64_t scale = 1;
        for (int i = 0; i < exp; i++)
            scale *= 10;
        n = snprintf(out, outlen, "%s%" PRIu64 ".%0*" PRIu64, sign, mag / scale, exp, mag % scale);
    }
    if (n < 0 || (size_t)n >= outlen)
        return CM_EOVERFLOW;
    return 0;
}

typedef struct {
    i128 rem;
    size_t idx;
} split_rem;

/* largest remainder first, then lower index: a total order, so qsort's
 * instability cannot make the result depend on anything but the input. */
static int split_rem_cmp(const void *pa, const void *pb)
{
    const split_rem *a = pa, *b = pb;
    if (a->rem != b->rem)
        return a->rem > b->rem ? -1 : 1;
    return a->idx < b->idx ? -1 : (a->idx > b->idx);
}

/* weight i is |a[i] - b[i]| (b may be NULL), computed in 128 bits so that
 * INT64_MIN parts work. the caller has validated the weights and that their
 * sum is positive. out may alias a or b: weight i is read before out[i] is
 * written and never again. */
static int split_core(int64_t total, size_t n, const int64_t *a, const int64_t *b, i128 wsum,
                      int64_t *out)
{
    split_rem stack_rems[64];
    split_rem *rems = stack_rems;
    if (n > sizeof stack_rems / sizeof stack_rems[0]) {
        rems = malloc(n * sizeof *rems);
        if (!rems)
            return CM_ENOMEM;
    }

    /* work on the magnitude so a negative total splits as the mirror image
     * of the positive one */
    int neg = total < 0;
    i128 mag = neg ? -(i128)total : (i128)total;
    i128 given = 0;
    for (size_t i = 0; i < n; i++) {
        i128 w = (i128)a[i] - (b ? (i128)b[i] : 0);
        if (w < 0)
            w = -w;
        /* mag <= 2^63 and w < 2^64: the product fits below 2^127 */
        i128 p = mag * w;
        i128 q = p / wsum;
        rems[i].rem = p % wsum;
        rems[i].idx = i;
        given += q;
        out[i] = (int64_t)(neg ? -q : q);
    }

    /* the floors fall short by fewer than n units, because each remainder is
     * below wsum and the remainders sum to (mag - given) * wsum */
    size_t left = (size_t)(mag - given);
    if (left > 0) {
        qsort(rems, n, sizeof *rems, split_rem_cmp);
        for (size_t j = 0; j < left; j++)
            out[rems[j].idx] += neg ? -1 : 1;
    }

    if (rems != stack_rems)
        free(rems);
    return 0;
}

int cm_money_split(int64_t total, const int64_t *weights, size_t n, int64_t *parts)
{
    if (n == 0 || !weights || !parts)
        return CM_EINVAL;
    i128 wsum = 0;
    for (size_t i = 0; i < n; i++) {
        if (weights[i] < 0)
            return CM_EINVAL;
        wsum += weights[i];
    }
    if (wsum == 0)
        return CM_EINVAL;
    return split_core(total, n, weights, NULL, wsum, parts);
}

int cm_money_split_refund(int64_t refund, const int64_t *parts, const int64_t *refunded, size_t n,
                          int64_t *out)
{
    if (n == 0 || !parts || !out)
        return CM_EINVAL;
    int pos = 0, neg = 0;
    i128 left = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t p = parts[i], r = refunded ? refunded[i] : 0;
        pos |= p > 0;
        neg |= p < 0;
        /* what was refunded lies between zero and the part itself */
        if (p >= 0 ? (r < 0 || r > p) : (r > 0 || r < p))
            return CM_EINVAL;
        i128 w = (i128)p - r;
        left += w < 0 ? -w : w;
    }
    if (pos && neg)
        return CM_EINVAL;
    if ((refund > 0 && neg) || (refund < 0 && pos))
        return CM_EINVAL;
    i128 mag = refund < 0 ? -(i128)refund : (i128)refund;
    if (mag > left)
        return CM_EINVAL;
    if (refund == 0) {
        for (size_t i = 0; i < n; i++)
            out[i] = 0;
        return 0;
    }
    return split_core(refund, n, parts, refunded, left, out);
}
