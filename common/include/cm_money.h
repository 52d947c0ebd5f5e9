/*
 * cm_money: amounts as int64 minor units, never floats.
 *
 * an amount is an int64 count of the currency's minor unit (fen, cent, yen)
 * next to an ISO-4217 code; the code's exponent says how many minor units
 * make a major one. arithmetic is checked: a result that would not fit in
 * int64 is CM_EOVERFLOW, never a wrapped value. rates are basis points
 * (1 bps = 0.01 %), applied with an explicit rounding mode.
 *
 * splitting an amount into parts uses the largest-remainder (hamilton)
 * method so the parts always sum exactly to the whole:
 *
 *   int64_t w[3] = {7000, 2000, 1000}, parts[3];
 *   cm_money_split(1001, w, 3, parts);    -> 701, 200, 100
 *
 * all functions are pure and thread-safe.
 */
#ifndef CM_MONEY_H
#define CM_MONEY_H

#include <stddef.h>
#include <stdint.h>

/* 100 % in basis points. */
#define CM_MONEY_BPS_ONE 10000

/* a currency code is three upper-case letters; 3 chars plus the NUL. */
#define CM_MONEY_CURRENCY_LEN 4

typedef enum {
    CM_ROUND_HALF_EVEN = 0, /* to nearest, ties to even (banker's) */
    CM_ROUND_HALF_UP,       /* to nearest, ties away from zero */
    CM_ROUND_FLOOR,         /* toward negative infinity */
    CM_ROUND_CEIL,          /* toward positive infinity */
    CM_ROUND_DOWN,          /* toward zero (truncate) */
} cm_money_round;

/* *out = a + b. returns 0, or CM_EOVERFLOW leaving *out untouched. */
int cm_money_add(int64_t a, int64_t b, int64_t *out);

/* *out = a - b. returns 0, or CM_EOVERFLOW leaving *out untouched. */
int cm_money_sub(int64_t a, int64_t b, int64_t *out);

/* *out = a * b (e.g. unit price times quantity). returns 0, or CM_EOVERFLOW
 * leaving *out untouched. */
int cm_money_mul(int64_t a, int64_t b, int64_t *out);

/* *out = a * num / den rounded by mode, computed exactly in 128 bits so the
 * intermediate product cannot overflow. den must be > 0 (CM_EINVAL
 * otherwise); a quotient outside int64 is CM_EOVERFLOW. *out is untouched on
 * error. */
int cm_money_muldiv(int64_t a, int64_t num, int64_t den, cm_money_round mode, int64_t *out);

/* *out = amount * bps / 10000 rounded by mode: a fee or a share of an amount.
 * bps may be negative or above 10000. returns 0, CM_EINVAL (unknown mode) or
 * CM_EOVERFLOW. */
int cm_money_apply_bps(int64_t amount, int64_t bps, cm_money_round mode, int64_t *out);

/* the minor-unit exponent (0..3) of an ISO-4217 code from the built-in table:
 * 2 for CNY and USD, 0 for JPY and KRW, 3 for KWD and BHD. the code must be
 * exactly three upper-case letters. returns the exponent, or CM_EINVAL for a
 * malformed or unknown code (including NULL). */
int cm_money_currency_exponent(const char *code);

/* 1 when code is a currency in the built-in table, else 0. */
int cm_money_currency_valid(const char *code);

/* formats amount in currency as a plain decimal string with the currency's
 * exponent: 12345 CNY -> "123.45", -5 USD -> "-0.05", 100 JPY -> "100".
 * returns 0, CM_EINVAL for an unknown currency or CM_EOVERFLOW when out is
 * too small (24 bytes always suffice). */
int cm_money_format(int64_t amount, const char *currency, char *out, size_t outlen);

/* splits total into n parts proportional to weights[0..n) (e.g. bps shares)
 * by the largest-remainder method. guarantees: the parts sum exactly to
 * total; every part is floor or ceil of its exact share total*w/sum(w), so it
 * is within 1 of it; a zero weight gets a zero part; for total >= 0 no part
 * is negative; split(-t) is exactly -split(t); leftover units go to the
 * largest remainders, ties to the lower index, so the result is a pure
 * function of the input. weights must be >= 0 and not all zero, n >= 1
 * (CM_EINVAL otherwise; parts is untouched on error). returns 0, CM_EINVAL
 * or CM_ENOMEM (only for n > 64). */
int cm_money_split(int64_t total, const int64_t *weights, size_t n, int64_t *parts);

/* pro-rata reversal: splits refund over previously split parts[0..n), in
 * proportion to what of each part is not yet refunded (parts[i] -
 * refunded[i]; refunded may be NULL for "nothing yet"), with the same
 * largest-remainder rule as cm_money_split. because it works on the
 * remainder, repeated partial refunds never take more than a part held, and
 * refunding everything that is left returns exactly the remainders.
 * parts must all be >= 0 or all <= 0; refunded[i] must have the sign of
 * parts[i] and not exceed it in magnitude; refund must have the sign of the
 * parts and not exceed the remaining total in magnitude. a zero refund gives
 * zero parts. returns 0, CM_EINVAL or CM_ENOMEM; out is untouched on error. */
int cm_money_split_refund(int64_t refund, const int64_t *parts, const int64_t *refunded, size_t n,
                          int64_t *out);

#endif
