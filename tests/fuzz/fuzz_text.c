/*
 * the small parsers every request's text goes through, each against an
 * independent oracle. the first byte picks one:
 *   0 cm_utf8: clip gives valid, printable UTF-8 of at most max + 3 bytes
 *     and leaves acceptable text alone; text_valid implies valid
 *   1 cm_id: a parsed UUID formats back to the input in lower case
 *   2 cm_page: a parsed token is the one cm_page_token makes again
 *   3 cm_money: add/sub/mul/muldiv/apply_bps against 128-bit arithmetic,
 *     split sums to the total with every part within 1 of its share,
 *     format reads back to the amount
 */
#include "cm_arena.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_money.h"
#include "cm_page.h"
#include "cm_utf8.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_text: %s\n", what);
    abort();
}

static int printable(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

static void utf8(const char *s, size_t n, size_t max)
{
    cm_arena *a = cm_arena_new(0);
    if (!a)
        return;
    char *c = cm_utf8_clip(a, s, max);
    if (c) {
        size_t cl = strlen(c);
        if (!cm_utf8_valid(c, cl) || !printable(c) || cl > max + 3)
            broken("clip gave invalid, unprintable or long text");
        if (cm_utf8_valid(s, n) && printable(s) && n <= max && strcmp(c, s) != 0)
            broken("clip changed acceptable text");
    }
    if (cm_utf8_text_valid(s, max, 0) && (!cm_utf8_valid(s, n) || !printable(s)))
        broken("text_valid accepted invalid text");
    cm_arena_free(a);
}

static void uuid(const char *s)
{
    uint8_t b[16];
    if (cm_id_parse(s, b) != 0)
        return;
    if (!cm_id_is_uuid(s))
        broken("parsed an id is_uuid refuses");
    char out[CM_ID_SIZE];
    cm_id_format(b, out);
    for (size_t i = 0; s[i] || out[i]; i++)
        if (tolower((unsigned char)s[i]) != out[i])
            broken("a parsed id does not format back");
}

static void page(const char *s, char kind, uint64_t filters)
{
    char pos[CM_PAGE_POSITION_MAX + 1];
    if (cm_page_token_parse(s, kind, filters, pos, sizeof pos) != 0)
        return;
    char again[CM_PAGE_TOKEN_MAX];
    if (!cm_id_key_valid(pos, CM_PAGE_POSITION_MAX) ||
        cm_page_token(again, sizeof again, kind, filters, pos) != 0 || strcmp(again, s) != 0)
        broken("a parsed page token is not the one its position makes");
}

static int64_t i64(const uint8_t *d)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | d[i];
    return (int64_t)v;
}

static int fits(__int128 v)
{
    return v >= INT64_MIN && v <= INT64_MAX;
}

static void money(const uint8_t *d, size_t n)
{
    if (n < 25)
        return;
    int64_t a = i64(d), b = i64(d + 8), c = i64(d + 16), out = 0;
    int mode = d[24] % 5;
    int rc = cm_money_add(a, b, &out);
    if ((rc == 0) != fits((__int128)a + b) || (rc == 0 && out != a + b))
        broken("add");
    rc = cm_money_sub(a, b, &out);
    if ((rc == 0) != fits((__int128)a - b) || (rc == 0 && out != (__int128)a - b))
        broken("sub");
    rc = cm_money_mul(a, b, &out);
    if ((rc == 0) != fits((__int128)a * b) || (rc == 0 && out != (__int128)a * b))
        broken("mul");
    if (c > 0 && cm_money_muldiv(a, b, c, (cm_money_round)mode, &out) == 0) {
        __int128 p = (__int128)a * b, q = p / c, r = p % c;
        /* the result is the truncated quotient or one away from it */
        if (out != q && out != q + (r > 0 ? 1 : -1))
            broken("muldiv is not floor or ceil of the exact quotient");
        if (mode == CM_ROUND_DOWN && out != q)
            broken("muldiv DOWN does not truncate");
    }
    char text[32];
    static const char *const cur[] = {"CNY", "JPY", "KWD", "USD"};
    const char *cc = cur[d[24] % 4];
    if (cm_money_format(a, cc, text, sizeof text) == 0) {
        char digits[32];
        size_t k = 0;
        for (const char *p = text; *p; p++)
            if (*p != '.')
                digits[k++] = *p;
        digits[k] = '\0';
        if (strtoll(digits, NULL, 10) != a)
            broken("format does not read back to the amount");
    }
    /* split over up to 8 weights from the rest */
    size_t nw = (n - 25) / 8;
    if (nw > 8)
        nw = 8;
    if (nw) {
        int64_t w[8], parts[8];
        __int128 sum = 0;
        for (size_t i = 0; i < nw; i++) {
            w[i] = i64(d + 25 + 8 * i) & 0xffffffffLL; /* >= 0, bps-sized and up */
            sum += w[i];
        }
        if (cm_money_split(a, w, nw, parts) == 0) {
            __int128 total = 0;
            for (size_t i = 0; i < nw; i++) {
                total += parts[i];
                __int128 exact_num = (__int128)a * w[i];
                __int128 lo = exact_num / sum - 1, hi = exact_num / sum + 1;
                if (parts[i] < lo || parts[i] > hi)
                    broken("a split part is more than 1 from its share");
                if (w[i] == 0 && parts[i] != 0)
                    broken("a zero weight got a part");
            }
            if (total != a)
                broken("split parts do not sum to the total");
        } else if (sum > 0) {
            broken("split refused valid weights");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int which = data[0] % 4;
    const uint8_t *d = data + 2;
    size_t n = size - 2;
    char *s = malloc(n + 1);
    if (!s)
        return 0;
    memcpy(s, d, n);
    s[n] = '\0';
    switch (which) {
    case 0:
        utf8(s, strlen(s), data[1]);
        break;
    case 1:
        uuid(s);
        break;
    case 2:
        page(s, (char)('a' + data[1] % 4), (uint64_t)data[1] * 0x9e3779b97f4a7c15ULL);
        break;
    default:
        money(d, n);
        break;
    }
    free(s);
    return 0;
}
