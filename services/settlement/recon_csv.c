/* the statement's csv (pure: no i/o): see stl_recon.h, RECONCILIATION.md */
#include "stl_recon.h"

#include "cm_err.h"
#include "cm_id.h"
#include "cm_money.h"
#include "cm_utf8.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the csv ---- */

#define CSV_COLS_MAX 64
#define CSV_FIELD_MAX 256

enum {
    COL_TIME,
    COL_TXN,
    COL_ORDER,
    COL_KIND,
    COL_CURRENCY,
    COL_AMOUNT,
    COL_FEE,
    COL_REFUND,
    NCOLS
};

static const char *const col_names[NCOLS] = {
    "transaction_time", "provider_transaction_id", "order_id", "kind", "currency", "amount", "fee",
    "refund_id"};

typedef struct csv_row {
    int n;
    char f[CSV_COLS_MAX][CSV_FIELD_MAX + 1];
} csv_row;

/* why = "line N: " and the message; CM_EINVAL */
__attribute__((format(printf, 5, 6))) static int fail_line(char *why, size_t whylen, int *at,
                                                           int line, const char *fmt, ...)
{
    char msg[192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(why, whylen, "line %d: %s", line, msg);
    *at = line;
    return CM_EINVAL;
}

/* the fields of one line (s[0..n), no line end): quoted fields ("a,b",
 * "" for a quote), a leading backtick dropped (WeChat Pay's), surrounding
 * blanks trimmed. 0, or CM_EINVAL with why. */
static int csv_split(const char *s, size_t n, csv_row *row, const char **why)
{
    size_t i = 0;
    row->n = 0;
    for (;;) {
        if (row->n == CSV_COLS_MAX) {
            *why = "more than 64 fields";
            return CM_EINVAL;
        }
        char *out = row->f[row->n++];
        size_t k = 0;
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
        if (i < n && s[i] == '"') {
            i++;
            for (;;) {
                if (i == n) {
                    *why = "a quoted field does not end";
                    return CM_EINVAL;
                }
                if (s[i] == '"') {
                    if (i + 1 < n && s[i + 1] == '"') {
                        i++;
                    } else {
                        i++;
                        break;
                    }
                }
                if (k == CSV_FIELD_MAX) {
                    *why = "a field longer than 256 bytes";
                    return CM_EINVAL;
                }
                out[k++] = s[i++];
            }
            while (i < n && (s[i] == ' ' || s[i] == '\t'))
                i++;
            if (i < n && s[i] != ',') {
                *why = "text after a quoted field";
                return CM_EINVAL;
            }
        } else {
            while (i < n && s[i] != ',') {
                if (s[i] == '"') {
                    *why = "a quote inside an unquoted field";
                    return CM_EINVAL;
                }
                if (k == CSV_FIELD_MAX) {
                    *why = "a field longer than 256 bytes";
                    return CM_EINVAL;
                }
                out[k++] = s[i++];
            }
            while (k && (out[k - 1] == ' ' || out[k - 1] == '\t'))
                k--;
        }
        out[k] = '\0';
        if (out[0] == '`')
            memmove(out, out + 1, k);
        if (i == n)
            return 0;
        i++; /* the comma */
    }
}

static int is_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

static int num2(const char *s)
{
    return (s[0] - '0') * 10 + (s[1] - '0');
}

int stl_recon_time_valid(const char *s)
{
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (strlen(s) != 19 || s[4] != '-' || s[7] != '-' || s[10] != ' ' || s[13] != ':' ||
        s[16] != ':')
        return 0;
    if (!is_digits(s, 4) || !is_digits(s + 5, 2) || !is_digits(s + 8, 2) || !is_digits(s + 11, 2) ||
        !is_digits(s + 14, 2) || !is_digits(s + 17, 2))
        return 0;
    int y = num2(s) * 100 + num2(s + 2), mo = num2(s + 5), d = num2(s + 8);
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1])
        return 0;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo == 2 && d == 29 && !leap)
        return 0;
    return num2(s + 11) <= 23 && num2(s + 14) <= 59 && num2(s + 17) <= 59;
}

/* a decimal in major units with at most exp decimals ("12.34") into minor
 * units; no sign, at most 18 digits, and the minor units within int64.
 * 0 or CM_EINVAL. */
static int parse_amount(const char *s, int exp, int64_t *out)
{
    int64_t v = 0;
    int digits = 0, decimals = -1;
    for (; *s; s++) {
        if (*s == '.') {
            if (decimals >= 0 || digits == 0)
                return CM_EINVAL;
            decimals = 0;
            continue;
        }
        if (*s < '0' || *s > '9' || ++digits > 18)
            return CM_EINVAL;
        if (decimals >= 0 && ++decimals > exp)
            return CM_EINVAL;
        v = v * 10 + (*s - '0');
    }
    if (digits == 0 || decimals == 0)
        return CM_EINVAL;
    /* 18 digits fit, scaled to minor units they may not */
    for (int i = decimals < 0 ? 0 : decimals; i < exp; i++)
        if (cm_money_mul(v, 10, &v) != 0)
            return CM_EINVAL;
    *out = v;
    return 0;
}

static int row_blank(const csv_row *r)
{
    return r->n == 1 && r->f[0][0] == '\0';
}

/* one data line into l; 0 or CM_EINVAL with why */
static int data_line(const csv_row *r, const int *col, stl_stmt_line *l, char *why, size_t whylen,
                     int *at)
{
    const char *v[NCOLS];
    for (int c = 0; c < NCOLS; c++)
        v[c] = r->f[col[c]];
    int ln = l->line;
    if (!stl_recon_time_valid(v[COL_TIME]))
        return fail_line(why, whylen, at, ln, "%s: not a time \"YYYY-MM-DD HH:MM:SS\"",
                         "transaction_time");
    snprintf(l->time, sizeof l->time, "%s", v[COL_TIME]);
    if (!cm_id_key_valid(v[COL_TXN], STL_ID_MAX))
        return fail_line(why, whylen, at, ln, "%s: required, 1-64 characters from [A-Za-z0-9._:-]",
                         "provider_transaction_id");
    snprintf(l->txn, sizeof l->txn, "%s", v[COL_TXN]);
    if (!cm_id_is_uuid(v[COL_ORDER]))
        return fail_line(why, whylen, at, ln, "%s: not an order id (a UUID)", "order_id");
    snprintf(l->order_id, sizeof l->order_id, "%s", v[COL_ORDER]);
    if (strcmp(v[COL_KIND], "payment") == 0 || strcmp(v[COL_KIND], "SUCCESS") == 0)
        l->kind = STL_LINE_PAYMENT;
    else if (strcmp(v[COL_KIND], "refund") == 0 || strcmp(v[COL_KIND], "REFUND") == 0)
        l->kind = STL_LINE_REFUND;
    else
        return fail_line(why, whylen, at, ln, "%s: \"payment\" or \"refund\"", "kind");
    int exp = cm_money_currency_exponent(v[COL_CURRENCY]);
    if (exp < 0)
        return fail_line(why, whylen, at, ln, "%s: not a known ISO-4217 code", "currency");
    snprintf(l->currency, sizeof l->currency, "%s", v[COL_CURRENCY]);
    if (parse_amount(v[COL_AMOUNT], exp, &l->amount))
        return fail_line(why, whylen, at, ln,
                         "%s: not an amount >= 0 in major units with the currency's decimals",
                         "amount");
    if (parse_amount(v[COL_FEE], exp, &l->fee))
        return fail_line(why, whylen, at, ln,
                         "%s: not an amount >= 0 in major units with the currency's decimals",
                         "fee");
    if (l->kind == STL_LINE_PAYMENT) {
        if (*v[COL_REFUND])
            return fail_line(why, whylen, at, ln, "%s: must be empty for a payment", "refund_id");
        l->refund_id[0] = '\0';
    } else {
        if (!cm_id_key_valid(v[COL_REFUND], STL_ID_MAX))
            return fail_line(why, whylen, at, ln,
                             "%s: required for a refund, 1-64 characters from [A-Za-z0-9._:-]",
                             "refund_id");
        snprintf(l->refund_id, sizeof l->refund_id, "%s", v[COL_REFUND]);
    }
    return 0;
}

int stl_recon_parse(const char *csv, size_t len, int (*fn)(void *arg, const stl_stmt_line *l),
                    void *arg, char *why, size_t whylen, int *at)
{
    *at = 0;
    if (len >= 3 && memcmp(csv, "\xEF\xBB\xBF", 3) == 0) {
        csv += 3;
        len -= 3;
    }
    csv_row *row = malloc(sizeof *row);
    if (!row)
        return CM_ENOMEM;
    int col[NCOLS], header = 0, line = 0, rows = 0, rc = 0, ncols = 0;
    const char *err = NULL;
    size_t i = 0;
    while (rc == 0 && i < len) {
        const char *nl = memchr(csv + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - csv) : len;
        size_t n = end - i;
        const char *s = csv + i;
        i = end + 1;
        line++;
        if (n && s[n - 1] == '\r')
            n--;
        if (memchr(s, '\0', n) || !cm_utf8_valid(s, n)) {
            rc = fail_line(why, whylen, at, line, "%s", "not UTF-8 text");
            break;
        }
        if (csv_split(s, n, row, &err)) {
            rc = fail_line(why, whylen, at, line, "%s", err);
            break;
        }
        if (!header) {
            if (line != 1 || row_blank(row)) {
                rc = fail_line(why, whylen, at, line, "%s", "the header must be line 1");
                break;
            }
            for (int c = 0; c < NCOLS; c++)
                col[c] = -1;
            for (int k = 0; k < row->n; k++) {
                for (int c = 0; c < NCOLS; c++) {
                    if (strcmp(row->f[k], col_names[c]) != 0)
                        continue;
                    if (col[c] >= 0) {
                        rc = fail_line(why, whylen, at, line, "header: column %s twice",
                                       col_names[c]);
                        break;
                    }
                    col[c] = k;
                }
            }
            for (int c = 0; rc == 0 && c < NCOLS; c++)
                if (col[c] < 0)
                    rc = fail_line(why, whylen, at, line, "header: no column %s", col_names[c]);
            ncols = row->n;
            header = 1;
            continue;
        }
        if (row_blank(row))
            continue;
        if (row->n != ncols) {
            char m[64];
            snprintf(m, sizeof m, "%d fields, the header has %d", row->n, ncols);
            rc = fail_line(why, whylen, at, line, "%s", m);
            break;
        }
        if (++rows > STL_CSV_MAX_LINES) {
            rc = fail_line(why, whylen, at, line, "%s", "more than 100000 data lines");
            break;
        }
        stl_stmt_line l = {.line = line};
        rc = data_line(row, col, &l, why, whylen, at);
        if (rc == 0) {
            rc = fn(arg, &l);
            if (rc)
                *at = line;
        }
    }
    if (rc == 0 && !header)
        rc = fail_line(why, whylen, at, 1, "%s", "no header");
    free(row);
    return rc;
}
