/* the order service's pure decisions (services/order/domain.c) */
#include "cm_err.h"
#include "cm_id.h"
#include "ord_domain.h"
#include "ord_metrics.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* scratch space: an ord_order is ~16 KiB, an ord_refund ~8 KiB; each test
 * runs in its own forked process, so statics do not leak between tests */
static ord_order g_o, g_o2;
static ord_refund g_r;
static ord_violation g_v;

/* n copies of c, NUL-terminated (n < cap) */
static const char *repeat(char *buf, size_t cap, char c, size_t n)
{
    ck_assert_uint_lt(n, cap);
    memset(buf, c, n);
    buf[n] = 0;
    return buf;
}

/* the violation names field, or a path inside it ("amount" covers
 * "amount.amount_minor") */
#define ck_assert_field_within(got, field)                                                         \
    do {                                                                                           \
        const char *g_ = (got), *f_ = (field);                                                     \
        size_t n_ = strlen(f_);                                                                    \
        ck_assert_msg(strncmp(g_, f_, n_) == 0 && (g_[n_] == 0 || g_[n_] == '.'),                  \
                      "field \"%s\" is not within \"%s\"", g_, f_);                                \
    } while (0)

/* ---- create ---- */

static ord_line_in line_in(const char *sku, int64_t qty, int64_t price)
{
    return (ord_line_in){
        .sku = sku, .qty = qty, .has_price = 1, .unit_price = price, .price_currency = "CNY"};
}

static ord_create_in create_in(const ord_line_in *lines, size_t n)
{
    return (ord_create_in){.request_id = "req-1",
                           .buyer_id = "buyer-1",
                           .merchant_id = "merchant-1",
                           .channel_id = "",
                           .currency = "CNY",
                           .external_ref = "",
                           .lines = lines,
                           .nlines = n,
                           .timeout_ms = -1};
}

/* ord_check_create(in) is CM_EINVAL naming exactly field */
#define ck_assert_create_rejects(in, fld)                                                          \
    do {                                                                                           \
        memset(&g_v, 0, sizeof g_v);                                                               \
        ck_assert_int_eq(ord_check_create((in), &g_o, &g_v), CM_EINVAL);                           \
        ck_assert_str_eq(g_v.field, (fld));                                                        \
        ck_assert_str_ne(g_v.why, "");                                                             \
    } while (0)

#define ck_assert_create_accepts(in)                                                               \
    do {                                                                                           \
        memset(&g_v, 0, sizeof g_v);                                                               \
        ck_assert_msg(ord_check_create((in), &g_o, &g_v) == 0, "rejected: %s: %s", g_v.field,      \
                      g_v.why);                                                                    \
    } while (0)

START_TEST(create_rejects_bad_header_fields_naming_the_field)
{
    ord_line_in ls[] = {line_in("sku-a", 1, 100)};
    char k64[80], k65[80], t128[160], t129[160];
    repeat(k64, sizeof k64, 'k', 64);
    repeat(k65, sizeof k65, 'k', 65);
    repeat(t128, sizeof t128, 'r', 128);
    repeat(t129, sizeof t129, 'r', 129);

    ord_create_in in = create_in(ls, 1);
    ck_assert_create_accepts(&in);

    const char *bad_keys[] = {NULL, "", "req 1", "req/1", "req\n1", k65};
    for (size_t i = 0; i < sizeof bad_keys / sizeof *bad_keys; i++) {
        in = create_in(ls, 1);
        in.request_id = bad_keys[i];
        ck_assert_create_rejects(&in, "request_id");
    }
    in = create_in(ls, 1);
    in.request_id = k64;
    ck_assert_create_accepts(&in);
    in.request_id = "Az09._:-";
    ck_assert_create_accepts(&in);

    const char *bad_parties[] = {NULL, "", "a\tb", "a\x7f", k65};
    for (size_t i = 0; i < sizeof bad_parties / sizeof *bad_parties; i++) {
        in = create_in(ls, 1);
        in.buyer_id = bad_parties[i];
        ck_assert_create_rejects(&in, "buyer_id");
        in = create_in(ls, 1);
        in.merchant_id = bad_parties[i];
        ck_assert_create_rejects(&in, "merchant_id");
    }
    in = create_in(ls, 1);
    in.buyer_id = k64;
    in.merchant_id = k64;
    in.channel_id = k64;
    ck_assert_create_accepts(&in);
    in.buyer_id = "buyer with spaces";
    ck_assert_create_accepts(&in);

    /* channel_id is optional but bounded */
    in = create_in(ls, 1);
    in.channel_id = NULL;
    ck_assert_create_accepts(&in);
    in.channel_id = k65;
    ck_assert_create_rejects(&in, "channel_id");
    in.channel_id = "ch\r";
    ck_assert_create_rejects(&in, "channel_id");

    in = create_in(ls, 1);
    in.currency = "";
    ck_assert_create_rejects(&in, "currency");
    in.currency = NULL;
    ck_assert_create_rejects(&in, "currency");
    const char *unknown[] = {"ZZZ", "cny", "CN", "CNYY"};
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
        in.currency = unknown[i];
        ck_assert_create_rejects(&in, "currency");
    }

    in = create_in(ls, 1);
    in.external_ref = NULL;
    ck_assert_create_accepts(&in);
    in.external_ref = t128;
    ck_assert_create_accepts(&in);
    in.external_ref = t129;
    ck_assert_create_rejects(&in, "external_ref");

    /* payment_timeout: 1 minute to 72 hours, -1 unset */
    in = create_in(ls, 1);
    in.timeout_ms = ORD_TIMEOUT_MIN_MS - 1;
    ck_assert_create_rejects(&in, "payment_timeout");
    in.timeout_ms = 0;
    ck_assert_create_rejects(&in, "payment_timeout");
    in.timeout_ms = ORD_TIMEOUT_MAX_MS + 1;
    ck_assert_create_rejects(&in, "payment_timeout");
    in.timeout_ms = ORD_TIMEOUT_MIN_MS;
    ck_assert_create_accepts(&in);
    in.timeout_ms = ORD_TIMEOUT_MAX_MS;
    ck_assert_create_accepts(&in);
    in.timeout_ms = -1;
    ck_assert_create_accepts(&in);

    /* plain violations carry no ErrorInfo reason */
    in = create_in(ls, 1);
    in.buyer_id = "";
    ck_assert_create_rejects(&in, "buyer_id");
    ck_assert_str_eq(g_v.reason, "");
}
END_TEST

START_TEST(create_rejects_line_counts_outside_1_to_100)
{
    static ord_line_in ls[ORD_LINES_MAX + 1];
    static char skus[ORD_LINES_MAX + 1][32];
    for (size_t i = 0; i <= ORD_LINES_MAX; i++) {
        snprintf(skus[i], sizeof skus[i], "sku-%zu", i);
        ls[i] = line_in(skus[i], 1, 1);
    }
    ord_create_in in = create_in(ls, 0);
    ck_assert_create_rejects(&in, "lines");
    in.nlines = ORD_LINES_MAX + 1;
    ck_assert_create_rejects(&in, "lines");
    in.nlines = ORD_LINES_MAX;
    ck_assert_create_accepts(&in);
    ck_assert_uint_eq(g_o.nlines, ORD_LINES_MAX);
    ck_assert_int_eq(g_o.total, ORD_LINES_MAX);
}
END_TEST

START_TEST(create_rejects_bad_lines_naming_the_line)
{
    char k64[80], k65[80];
    repeat(k64, sizeof k64, 's', 64);
    repeat(k65, sizeof k65, 's', 65);
    ord_line_in ls[3] = {line_in("sku-a", 1, 100), line_in("sku-b", 2, 50), line_in("sku-c", 3, 0)};
    ord_create_in in = create_in(ls, 3);
    ck_assert_create_accepts(&in); /* a zero price is allowed */

    const char *bad_skus[] = {NULL, "", "sku b", "sku/b", "sku\xc3\xa9", k65};
    for (size_t i = 0; i < sizeof bad_skus / sizeof *bad_skus; i++) {
        ls[1].sku = bad_skus[i];
        ck_assert_create_rejects(&in, "lines[1].sku");
    }
    ls[1].sku = k64;
    ck_assert_create_accepts(&in);

    ls[1].sku = "sku-b";
    ls[2].sku = "sku-a";
    ck_assert_create_rejects(&in, "lines[2].sku");
    ls[2].sku = "sku-b";
    ck_assert_create_rejects(&in, "lines[2].sku");
    ls[2].sku = "SKU-B"; /* skus are case-sensitive keys */
    ck_assert_create_accepts(&in);
    ls[2].sku = "sku-c";

    const int64_t bad_qtys[] = {0, -1, INT64_MIN, ORD_QTY_MAX + 1, INT64_MAX};
    for (size_t i = 0; i < sizeof bad_qtys / sizeof *bad_qtys; i++) {
        ls[1].qty = bad_qtys[i];
        ck_assert_create_rejects(&in, "lines[1].quantity");
    }
    ls[1].qty = ORD_QTY_MAX;
    ck_assert_create_accepts(&in);
    ls[1].qty = 2;

    ls[1].has_price = 0;
    ck_assert_create_rejects(&in, "lines[1].unit_price");
    ls[1].has_price = 1;
    const int64_t bad_prices[] = {-1, INT64_MIN};
    for (size_t i = 0; i < sizeof bad_prices / sizeof *bad_prices; i++) {
        ls[1].unit_price = bad_prices[i];
        memset(&g_v, 0, sizeof g_v);
        ck_assert_int_eq(ord_check_create(&in, &g_o, &g_v), CM_EINVAL);
        ck_assert_field_within(g_v.field, "lines[1].unit_price");
        ck_assert_str_eq(g_v.reason, "");
    }
    ls[1].unit_price = 50;
    ck_assert_create_accepts(&in);
}
END_TEST

START_TEST(create_rejects_a_price_in_another_currency_as_currency_mismatch)
{
    ord_line_in ls[2] = {line_in("sku-a", 1, 100), line_in("sku-b", 2, 50)};
    ord_create_in in = create_in(ls, 2);
    const char *others[] = {"USD", "cny", "", NULL};
    for (size_t i = 0; i < sizeof others / sizeof *others; i++) {
        ls[1].price_currency = others[i];
        memset(&g_v, 0, sizeof g_v);
        ck_assert_int_eq(ord_check_create(&in, &g_o, &g_v), CM_EINVAL);
        ck_assert_field_within(g_v.field, "lines[1].unit_price");
        ck_assert_str_eq(g_v.reason, "CURRENCY_MISMATCH");
    }
    /* the order in USD with USD prices is fine */
    ls[0].price_currency = "USD";
    ls[1].price_currency = "USD";
    in.currency = "USD";
    ck_assert_create_accepts(&in);
    ck_assert_str_eq(g_o.currency, "USD");
}
END_TEST

START_TEST(create_rejects_amounts_that_overflow_int64)
{
    /* quantity times price past INT64_MAX: on the line */
    ord_line_in ls[2] = {line_in("sku-a", 1, 1), line_in("sku-b", ORD_QTY_MAX, 0)};
    ord_create_in in = create_in(ls, 2);
    ls[1].unit_price = INT64_MAX / ORD_QTY_MAX + 1;
    memset(&g_v, 0, sizeof g_v);
    ck_assert_int_eq(ord_check_create(&in, &g_o, &g_v), CM_EINVAL);
    ck_assert_field_within(g_v.field, "lines[1]");
    ls[1].unit_price = INT64_MAX / ORD_QTY_MAX; /* just fits */
    ls[0].unit_price = 0;
    ck_assert_create_accepts(&in);
    ck_assert_int_eq(g_o.total, (INT64_MAX / ORD_QTY_MAX) * ORD_QTY_MAX);

    /* each line fits, the sum does not: on "lines" */
    ord_line_in big[2] = {line_in("sku-a", 1, INT64_MAX), line_in("sku-b", 1, 1)};
    in = create_in(big, 2);
    ck_assert_create_rejects(&in, "lines");
    big[1].unit_price = 0;
    ck_assert_create_accepts(&in);
    ck_assert_int_eq(g_o.total, INT64_MAX);
    ord_line_in halves[3] = {line_in("a", 1, INT64_MAX / 2), line_in("b", 1, INT64_MAX / 2),
                             line_in("c", 2, 1)};
    in = create_in(halves, 3);
    ck_assert_create_rejects(&in, "lines");
}
END_TEST

START_TEST(create_computes_line_totals_and_the_total)
{
    ord_line_in ls[3] = {line_in("sku-a", 2, 1999), line_in("sku-b", 3, 250),
                         line_in("sku-c", 1, 0)};
    ord_create_in in = create_in(ls, 3);
    in.channel_id = NULL;
    in.external_ref = "po-77";
    in.timeout_ms = 600000;
    /* o is zeroed first: nothing left over from a previous use */
    memset(&g_o, 0x5a, sizeof g_o);
    g_o.refunds = NULL;
    ck_assert_create_accepts(&in);
    ck_assert_int_eq(g_o.state, ORD_PENDING);
    ck_assert_uint_eq(g_o.nlines, 3);
    ck_assert_str_eq(g_o.lines[0].sku, "sku-a");
    ck_assert_int_eq(g_o.lines[0].qty, 2);
    ck_assert_int_eq(g_o.lines[0].unit_price, 1999);
    ck_assert_int_eq(g_o.lines[0].line_total, 3998);
    ck_assert_str_eq(g_o.lines[1].sku, "sku-b");
    ck_assert_int_eq(g_o.lines[1].line_total, 750);
    ck_assert_str_eq(g_o.lines[2].sku, "sku-c");
    ck_assert_int_eq(g_o.lines[2].line_total, 0);
    ck_assert_int_eq(g_o.total, 3998 + 750);
    ck_assert_int_eq(g_o.refunded, 0);
    for (size_t i = 0; i < 3; i++) {
        ck_assert_int_eq(g_o.lines[i].refunded_qty, 0);
        ck_assert_int_eq(g_o.lines[i].refunded_amount, 0);
        ck_assert_str_eq(g_o.lines[i].flash_sale_id, "");
    }
    ck_assert_str_eq(g_o.request_id, "req-1");
    ck_assert_str_eq(g_o.buyer_id, "buyer-1");
    ck_assert_str_eq(g_o.merchant_id, "merchant-1");
    ck_assert_str_eq(g_o.channel_id, "");
    ck_assert_str_eq(g_o.currency, "CNY");
    ck_assert_str_eq(g_o.external_ref, "po-77");
    ck_assert_str_eq(g_o.payment_id, "");
    ck_assert_int_eq(g_o.shipped_ms, 0);
    ck_assert_int_eq(g_o.version, 0);
    ck_assert_uint_eq(g_o.nrefunds, 0);
    ck_assert_ptr_null(g_o.refunds);
}
END_TEST

START_TEST(valid_key_accepts_1_to_max_characters_of_the_key_alphabet)
{
    ck_assert(ord_valid_key("a", 1));
    ck_assert(!ord_valid_key("ab", 1));
    ck_assert(ord_valid_key("AZaz09._:-", ORD_KEY_MAX));
    ck_assert(!ord_valid_key("", ORD_KEY_MAX));
    ck_assert(!ord_valid_key(NULL, ORD_KEY_MAX));
    const char *bad[] = {"a b", "a/b", "a+b", "a@b", "a\"b", "a\\b", "\xe4\xb8\xad"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(!ord_valid_key(bad[i], ORD_KEY_MAX), "accepted \"%s\"", bad[i]);
}
END_TEST

/* ---- idempotency hashes and the order id ---- */

static void create_hash(const ord_create_in *in, char out[ORD_HASH_HEX + 1])
{
    memset(out, 'X', ORD_HASH_HEX + 1);
    ord_create_hash(in, out);
    ck_assert_uint_eq(strlen(out), ORD_HASH_HEX);
    ck_assert_uint_eq(strspn(out, "0123456789abcdef"), ORD_HASH_HEX);
}

START_TEST(create_hash_is_equal_for_equal_requests_and_differs_by_any_field)
{
    /* the same request in other buffers hashes the same */
    char sa[2][8] = {"sku-a", "sku-a"}, sb[2][8] = {"sku-b", "sku-b"};
    char buyer[2][8] = {"u1", "u1"};
    ord_line_in la[2] = {line_in(sa[0], 2, 100), line_in(sb[0], 1, 50)};
    ord_line_in lb[2] = {line_in(sa[1], 2, 100), line_in(sb[1], 1, 50)};
    ord_create_in a = create_in(la, 2), b = create_in(lb, 2);
    a.buyer_id = buyer[0];
    b.buyer_id = buyer[1];
    char ha[ORD_HASH_HEX + 1], hb[ORD_HASH_HEX + 1];
    create_hash(&a, ha);
    create_hash(&b, hb);
    ck_assert_str_eq(ha, hb);

    /* every field that the caller sends changes it */
    ord_create_in c;
    ord_line_in lc[2];
#define DIFFERS(change)                                                                            \
    do {                                                                                           \
        c = a;                                                                                     \
        memcpy(lc, la, sizeof lc);                                                                 \
        c.lines = lc;                                                                              \
        change;                                                                                    \
        create_hash(&c, hb);                                                                       \
        ck_assert_msg(strcmp(ha, hb) != 0, "same hash after: %s", #change);                        \
    } while (0)
    DIFFERS(c.buyer_id = "u2");
    DIFFERS(c.merchant_id = "merchant-2");
    DIFFERS(c.channel_id = "ch-1");
    DIFFERS(c.currency = "USD");
    DIFFERS(c.external_ref = "po-1");
    DIFFERS(c.timeout_ms = ORD_TIMEOUT_MIN_MS);
    DIFFERS(c.nlines = 1);
    DIFFERS(lc[0] = la[1]; lc[1] = la[0]); /* the same lines in another order */
    DIFFERS(lc[1].sku = "sku-c");
    DIFFERS(lc[1].qty = 2);
    DIFFERS(lc[1].unit_price = 51);
    DIFFERS(lc[1].has_price = 0);
    DIFFERS(lc[1].price_currency = "USD");
    /* a character moved across the boundary of two adjacent fields: the
     * plain concatenations are equal, the requests are not */
    DIFFERS(c.buyer_id = "u"; c.merchant_id = "1merchant-1");
    DIFFERS(c.merchant_id = "merchant-"; c.channel_id = "1");
    DIFFERS(c.channel_id = "C"; c.currency = "NY");
    DIFFERS(c.currency = "CN"; c.external_ref = "Y");
    DIFFERS(c.external_ref = "-"; c.timeout_ms = 1); /* "" "-1" vs "-" "1" */
    DIFFERS(lc[0].qty = 210; lc[0].unit_price = 0);  /* "2" "100" vs "210" "0" */
    DIFFERS(lc[0].unit_price = 10; lc[0].price_currency = "0CNY");
    DIFFERS(lc[0].price_currency = "CNYs"; lc[1].sku = "ku-b");
#undef DIFFERS

    /* buyer "ab" with merchant "c" is not buyer "a" with merchant "bc" */
    ord_create_in x = create_in(la, 2), y = create_in(la, 2);
    x.buyer_id = "ab";
    x.merchant_id = "c";
    y.buyer_id = "a";
    y.merchant_id = "bc";
    create_hash(&x, ha);
    create_hash(&y, hb);
    ck_assert_str_ne(ha, hb);
}
END_TEST

START_TEST(hash_is_sha256_hex)
{
    char h[ORD_HASH_HEX + 1];
    ord_hash("abc", 3, h);
    ck_assert_str_eq(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ord_hash("", 0, h);
    ck_assert_str_eq(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* the length counts, not the NUL */
    char h2[ORD_HASH_HEX + 1];
    ord_hash("abc\0d", 5, h2);
    ord_hash("abc", 3, h);
    ck_assert_str_ne(h, h2);
}
END_TEST

static void order_id(const char *tenant, const char *req, unsigned gen, char out[40])
{
    memset(out, 'X', 40);
    ord_order_id(tenant, req, gen, out);
    uint8_t b[16];
    ck_assert_msg(cm_id_parse(out, b) == 0, "not a uuid: %s", out);
    ck_assert_uint_eq(strlen(out), CM_ID_LEN);
    ck_assert_uint_eq(b[6] >> 4, 8);      /* version 8 */
    ck_assert_uint_eq(b[8] & 0xc0, 0x80); /* variant 10 */
    for (const char *p = out; *p; p++)    /* canonical: lower-case */
        ck_assert_msg(!(*p >= 'A' && *p <= 'F'), "upper-case in %s", out);
}

START_TEST(order_id_is_a_deterministic_uuid_v8_per_tenant_request_and_generation)
{
    char a[40], b[40];
    order_id("tenant-1", "req-1", 0, a);
    order_id("tenant-1", "req-1", 0, b);
    ck_assert_str_eq(a, b);
    /* pinned: an id that changed across releases would make a retried
     * create reserve a second time (computed independently with python's
     * hashlib from "commerce.order.id.v1\0tenant-1\0req-1[#gen]") */
    ck_assert_str_eq(a, "859c782c-a4b2-8033-a424-04724a6fdedd");
    order_id("tenant-1", "req-1", 1, b);
    ck_assert_str_eq(b, "444d6023-5bd1-871f-bb1f-566c622672bb");
    order_id("tenant-1", "req-1", 3, b);
    ck_assert_str_eq(b, "854dcbfc-b5e8-836f-8778-f334b22aac4f");
    order_id("tenant-2", "req-1", 0, b);
    ck_assert_str_ne(a, b);
    order_id("tenant-1", "req-2", 0, b);
    ck_assert_str_ne(a, b);
    /* the boundary between tenant and request id matters */
    order_id("t1", "2x", 0, a);
    order_id("t12", "x", 0, b);
    ck_assert_str_ne(a, b);
    order_id("", "t1req", 0, a);
    order_id("t1", "req", 0, b);
    ck_assert_str_ne(a, b);
    /* many request ids and every generation: all distinct, all well-formed */
    static char seen[100 * ORD_ID_GENERATIONS][40];
    size_t n = 0;
    for (int i = 0; i < 100; i++) {
        char req[16];
        snprintf(req, sizeof req, "r-%d", i);
        for (unsigned g = 0; g < ORD_ID_GENERATIONS; g++) {
            order_id("tenant-1", req, g, seen[n]);
            for (size_t j = 0; j < n; j++)
                ck_assert_str_ne(seen[n], seen[j]);
            n++;
        }
    }
}
END_TEST

static ord_settings_in good_settings(void)
{
    return (ord_settings_in){.request_id = "set-1",
                             .actor = "ops:alice",
                             .reason = "longer checkout for pre-orders",
                             .has_settings = 1,
                             .has_timeout = 1,
                             .has_flash = 1,
                             .timeout_s = 3600,
                             .flash_s = 600};
}

START_TEST(settings_check_names_the_bad_field)
{
    ord_violation v;
    ord_settings_in in = good_settings();
    ck_assert_int_eq(ord_check_settings(&in, &v), 0);
    /* the bounds themselves are allowed: 1 minute and 72 hours */
    in.timeout_s = 60;
    in.flash_s = 72 * 3600;
    ck_assert_int_eq(ord_check_settings(&in, &v), 0);
    /* auto_complete_after: unset, or 1 second (tests) to 90 days */
    in.has_auto = 1;
    in.auto_s = 1;
    ck_assert_int_eq(ord_check_settings(&in, &v), 0);
    in.auto_s = 90LL * 86400;
    ck_assert_int_eq(ord_check_settings(&in, &v), 0);

    struct {
        const char *field;
        ord_settings_in in;
    } bad[24];
    size_t n = 0;
#define BAD(f, stmt)                                                                               \
    do {                                                                                           \
        ord_settings_in x = good_settings();                                                       \
        stmt;                                                                                      \
        bad[n].field = f;                                                                          \
        bad[n++].in = x;                                                                           \
    } while (0)
    BAD("request_id", x.request_id = "");
    BAD("request_id", x.request_id = "has space");
    BAD("settings", x.has_settings = 0);
    BAD("settings.payment_timeout", x.has_timeout = 0);
    BAD("settings.payment_timeout", x.timeout_s = 59);
    BAD("settings.payment_timeout", x.timeout_s = 72 * 3600 + 1);
    BAD("settings.payment_timeout", x.timeout_s = INT64_MIN);
    BAD("settings.payment_timeout", x.timeout_nanos = 500);
    BAD("settings.flash_payment_timeout", x.has_flash = 0);
    BAD("settings.flash_payment_timeout", x.flash_s = 0);
    BAD("settings.flash_payment_timeout", x.flash_nanos = -1);
    BAD("expected_revision", x.expected_revision = -1);
    BAD("actor", x.actor = "");
    BAD("actor", x.actor = "tab\there");
    BAD("reason", x.reason = "");
    BAD("settings.auto_complete_after", (x.has_auto = 1, x.auto_s = 0));
    BAD("settings.auto_complete_after", (x.has_auto = 1, x.auto_s = 90LL * 86400 + 1));
    BAD("settings.auto_complete_after", (x.has_auto = 1, x.auto_s = INT64_MIN));
    BAD("settings.auto_complete_after", (x.has_auto = 1, x.auto_s = 60, x.auto_nanos = 1));
#undef BAD
    for (size_t i = 0; i < n; i++) {
        memset(&v, 0, sizeof v);
        ck_assert_int_eq(ord_check_settings(&bad[i].in, &v), CM_EINVAL);
        ck_assert_str_eq(v.field, bad[i].field);
        ck_assert_str_eq(v.reason, ""); /* plain INVALID_ARGUMENT */
    }
    char longer[130];
    memset(longer, 'a', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    in = good_settings();
    in.actor = longer; /* 129 characters */
    ck_assert_int_eq(ord_check_settings(&in, &v), CM_EINVAL);
    ck_assert_str_eq(v.field, "actor");
    longer[128] = '\0';
    ck_assert_int_eq(ord_check_settings(&in, &v), 0);
}
END_TEST

START_TEST(deadline_clamps_to_the_reservation_expiry_minus_the_margin)
{
    const int64_t created = 1700000000000LL, min = 60000;
    /* reservation unknown (0): created + timeout */
    ck_assert_int_eq(ord_deadline(created, 30 * min, 0, 10000), created + 30 * min);
    /* the reservation outlives the deadline by more than the margin */
    ck_assert_int_eq(ord_deadline(created, 30 * min, created + 31 * min, 10000),
                     created + 30 * min);
    /* exactly margin before the expiry */
    ck_assert_int_eq(ord_deadline(created, 30 * min, created + 30 * min + 10000, 10000),
                     created + 30 * min);
    /* a reservation made long before (a retried create): clamped */
    ck_assert_int_eq(ord_deadline(created, 30 * min, created + 30 * min, 10000),
                     created + 30 * min - 10000);
    ck_assert_int_eq(ord_deadline(created, 30 * min, created + 5 * min, 10000),
                     created + 5 * min - 10000);
    ck_assert_int_eq(ord_deadline(created, 30 * min, created + 5 * min, 0), created + 5 * min);
    /* never before the order exists */
    ck_assert_int_eq(ord_deadline(created, 30 * min, created + 5000, 10000), created);
}
END_TEST

/* ---- state machine ---- */

static const int all_states[] = {ORD_PENDING,   ORD_PAID,          ORD_SHIPPED, ORD_COMPLETED,
                                 ORD_CANCELLED, ORD_PART_REFUNDED, ORD_REFUNDED};
static const int unknown_states[] = {0, 8, -1};
#define NSTATES (sizeof all_states / sizeof *all_states)
#define NUNKNOWN (sizeof unknown_states / sizeof *unknown_states)

/* a pending order of 3 x 100 CNY due at deadline */
static void pending_order(ord_order *o, int64_t deadline)
{
    ord_line_in ls[1] = {line_in("sku-a", 3, 100)};
    ord_create_in in = create_in(ls, 1);
    ck_assert_int_eq(ord_check_create(&in, o, &g_v), 0);
    o->created_ms = deadline - 1800000;
    o->deadline_ms = deadline;
}

START_TEST(pay_accepts_a_pending_order_until_deadline_plus_grace)
{
    const int64_t dl = 1700000000000LL, grace = 5000;
    pending_order(&g_o, dl);
    ck_assert_int_eq(g_o.total, 300);
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, "CNY", dl - 1000, grace), ORD_OK);
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, "CNY", dl, grace), ORD_OK);
    /* just after the deadline, not yet cancelled: still accepted */
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, "CNY", dl + 1, grace), ORD_OK);
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, "CNY", dl + grace, grace), ORD_OK);
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, "CNY", dl + grace + 1, grace), ORD_LATE);
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, "CNY", dl + 1, 0), ORD_LATE);

    ck_assert_int_eq(ord_plan_pay(&g_o, 299, "CNY", dl, grace), ORD_AMOUNT);
    ck_assert_int_eq(ord_plan_pay(&g_o, 301, "CNY", dl, grace), ORD_AMOUNT);
    ck_assert_int_eq(ord_plan_pay(&g_o, 0, "CNY", dl, grace), ORD_AMOUNT);
    ck_assert_int_eq(ord_plan_pay(&g_o, -300, "CNY", dl, grace), ORD_AMOUNT);
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, "USD", dl, grace), ORD_CURRENCY);
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, "cny", dl, grace), ORD_CURRENCY);
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, "", dl, grace), ORD_CURRENCY);
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, NULL, dl, grace), ORD_CURRENCY);
}
END_TEST

START_TEST(pay_is_late_for_a_cancelled_order_and_double_for_a_paid_one)
{
    const int64_t dl = 1700000000000LL;
    pending_order(&g_o, dl);
    g_o.state = ORD_CANCELLED;
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, "CNY", dl - 60000, 5000), ORD_LATE);
    ck_assert_int_eq(ord_plan_pay(&g_o, 300, "CNY", dl + 60000, 5000), ORD_LATE);
    const int paid[] = {ORD_PAID, ORD_SHIPPED, ORD_COMPLETED, ORD_PART_REFUNDED, ORD_REFUNDED};
    for (size_t i = 0; i < sizeof paid / sizeof *paid; i++) {
        g_o.state = paid[i];
        snprintf(g_o.payment_id, sizeof g_o.payment_id, "%s", "pay-1");
        ck_assert_msg(ord_plan_pay(&g_o, 300, "CNY", dl - 60000, 5000) == ORD_DOUBLE_PAY,
                      "state %d", paid[i]);
        /* also when late or mismatched: the order is paid already */
        ck_assert_int_eq(ord_plan_pay(&g_o, 300, "CNY", dl + 60000, 5000), ORD_DOUBLE_PAY);
    }
    /* an unknown state is not touched */
    for (size_t i = 0; i < NUNKNOWN; i++) {
        g_o.state = unknown_states[i];
        ck_assert_int_ne(ord_plan_pay(&g_o, 300, "CNY", dl - 60000, 5000), ORD_OK);
    }
}
END_TEST

START_TEST(cancel_is_ok_only_while_pending_and_a_noop_once_cancelled)
{
    memset(&g_o, 0, sizeof g_o);
    for (size_t i = 0; i < NSTATES; i++) {
        g_o.state = all_states[i];
        ord_verdict want = all_states[i] == ORD_PENDING     ? ORD_OK
                           : all_states[i] == ORD_CANCELLED ? ORD_NOOP
                                                            : ORD_ILLEGAL;
        ck_assert_msg(ord_plan_cancel(&g_o) == want, "state %d: got %d want %d", all_states[i],
                      ord_plan_cancel(&g_o), want);
    }
    for (size_t i = 0; i < NUNKNOWN; i++) {
        g_o.state = unknown_states[i];
        ck_assert_int_eq(ord_plan_cancel(&g_o), ORD_ILLEGAL);
    }
}
END_TEST

START_TEST(ship_is_ok_when_paid_or_partially_refunded_and_not_yet_shipped)
{
    memset(&g_o, 0, sizeof g_o);
    int to;
    for (size_t i = 0; i < NSTATES; i++) {
        for (int shipped = 0; shipped <= 1; shipped++) {
            g_o.state = all_states[i];
            g_o.shipped_ms = shipped ? 1700000000000LL : 0;
            to = -7;
            ord_verdict got = ord_plan_ship(&g_o, &to);
            if (all_states[i] == ORD_PAID && !shipped) {
                ck_assert_int_eq(got, ORD_OK);
                ck_assert_int_eq(to, ORD_SHIPPED);
            } else if (all_states[i] == ORD_PART_REFUNDED && !shipped) {
                ck_assert_int_eq(got, ORD_OK);
                ck_assert_int_eq(to, ORD_PART_REFUNDED); /* kept */
            } else if (all_states[i] == ORD_PAID) {
                continue; /* PAID with a shipment cannot occur */
            } else {
                ck_assert_msg(got == ORD_ILLEGAL, "state %d shipped %d: got %d", all_states[i],
                              shipped, got);
            }
        }
    }
    for (size_t i = 0; i < NUNKNOWN; i++) {
        g_o.state = unknown_states[i];
        g_o.shipped_ms = 0;
        ck_assert_int_eq(ord_plan_ship(&g_o, &to), ORD_ILLEGAL);
    }
}
END_TEST

START_TEST(complete_is_ok_when_shipped_and_not_yet_completed)
{
    memset(&g_o, 0, sizeof g_o);
    int to;
    for (size_t i = 0; i < NSTATES; i++) {
        for (int shipped = 0; shipped <= 1; shipped++) {
            for (int completed = 0; completed <= shipped; completed++) {
                int s = all_states[i];
                g_o.state = s;
                g_o.shipped_ms = shipped ? 1700000000000LL : 0;
                g_o.completed_ms = completed ? 1700000100000LL : 0;
                to = -7;
                ord_verdict got = ord_plan_complete(&g_o, &to);
                if (s == ORD_SHIPPED && shipped && !completed) {
                    ck_assert_int_eq(got, ORD_OK);
                    ck_assert_int_eq(to, ORD_COMPLETED);
                } else if (s == ORD_PART_REFUNDED && shipped && !completed) {
                    ck_assert_int_eq(got, ORD_OK);
                    ck_assert_int_eq(to, ORD_PART_REFUNDED); /* kept */
                } else if (s == ORD_SHIPPED) {
                    continue; /* SHIPPED without a shipment or completed cannot occur */
                } else {
                    ck_assert_msg(got == ORD_ILLEGAL, "state %d shipped %d completed %d: got %d", s,
                                  shipped, completed, got);
                }
            }
        }
    }
    for (size_t i = 0; i < NUNKNOWN; i++) {
        g_o.state = unknown_states[i];
        g_o.shipped_ms = 1700000000000LL;
        g_o.completed_ms = 0;
        ck_assert_int_eq(ord_plan_complete(&g_o, &to), ORD_ILLEGAL);
    }
}
END_TEST

/* ---- refunds ---- */

/* a paid CNY order of n lines "sku-<i>" with the given quantities and unit
 * prices */
static void paid_order(ord_order *o, const int64_t *qty, const int64_t *price, size_t n)
{
    static char skus[ORD_LINES_MAX][32];
    ord_line_in ls[ORD_LINES_MAX];
    for (size_t i = 0; i < n; i++) {
        snprintf(skus[i], sizeof skus[i], "sku-%zu", i);
        ls[i] = line_in(skus[i], qty[i], price[i]);
    }
    ord_create_in in = create_in(ls, n);
    memset(&g_v, 0, sizeof g_v);
    ck_assert_msg(ord_check_create(&in, o, &g_v) == 0, "%s: %s", g_v.field, g_v.why);
    o->state = ORD_PAID;
    snprintf(o->payment_id, sizeof o->payment_id, "%s", "pay-1");
    o->pay_amount = o->total;
}

static ord_refund_in full_in(void)
{
    return (ord_refund_in){.scope = ORD_SCOPE_FULL};
}

static ord_refund_in amount_in(int64_t amount)
{
    return (ord_refund_in){
        .scope = ORD_SCOPE_AMOUNT, .has_amount = 1, .amount = amount, .amount_currency = "CNY"};
}

static ord_refund_in lines_in(const char *const *skus, const int64_t *qtys, size_t n)
{
    return (ord_refund_in){.scope = ORD_SCOPE_LINES, .skus = skus, .qtys = qtys, .nlines = n};
}

static int64_t lines_sum(const ord_refund *r)
{
    int64_t s = 0;
    for (size_t i = 0; i < r->nlines; i++)
        s += r->lines[i].amount;
    return s;
}

#define ck_assert_refund_line(rl, s, q, a)                                                         \
    do {                                                                                           \
        ck_assert_str_eq((rl).sku, (s));                                                           \
        ck_assert_int_eq((rl).qty, (q));                                                           \
        ck_assert_int_eq((rl).amount, (a));                                                        \
    } while (0)

/* ord_check_refund(in) is CM_EINVAL naming a path within field */
#define ck_assert_refund_shape_rejects(in, fld)                                                    \
    do {                                                                                           \
        memset(&g_v, 0, sizeof g_v);                                                               \
        ck_assert_int_eq(ord_check_refund((in), &g_v), CM_EINVAL);                                 \
        ck_assert_field_within(g_v.field, (fld));                                                  \
    } while (0)

START_TEST(check_refund_rejects_bad_shapes_naming_the_field)
{
    const char *skus[] = {"sku-0", "sku-1", "sku-2"};
    int64_t qtys[] = {1, 2, 3};
    ord_refund_in in = {.scope = 0};
    ck_assert_refund_shape_rejects(&in, "scope");
    in.scope = 4;
    ck_assert_refund_shape_rejects(&in, "scope");
    in.scope = -1;
    ck_assert_refund_shape_rejects(&in, "scope");

    /* FULL: neither lines nor amount */
    in = full_in();
    ck_assert_int_eq(ord_check_refund(&in, &g_v), 0);
    in = full_in();
    in.skus = skus, in.qtys = qtys, in.nlines = 1;
    ck_assert_refund_shape_rejects(&in, "lines");
    in = full_in();
    in.has_amount = 1, in.amount = 10, in.amount_currency = "CNY";
    ck_assert_refund_shape_rejects(&in, "amount");

    /* LINES: 1-100 valid distinct skus with quantity >= 1, no amount */
    in = lines_in(skus, qtys, 3);
    ck_assert_int_eq(ord_check_refund(&in, &g_v), 0);
    in.has_amount = 1, in.amount = 10, in.amount_currency = "CNY";
    ck_assert_refund_shape_rejects(&in, "amount");
    in = lines_in(skus, qtys, 0);
    ck_assert_refund_shape_rejects(&in, "lines");
    static const char *many[ORD_LINES_MAX + 1];
    static char many_s[ORD_LINES_MAX + 1][32];
    static int64_t many_q[ORD_LINES_MAX + 1];
    for (size_t i = 0; i <= ORD_LINES_MAX; i++) {
        snprintf(many_s[i], sizeof many_s[i], "sku-%zu", i);
        many[i] = many_s[i];
        many_q[i] = 1;
    }
    in = lines_in(many, many_q, ORD_LINES_MAX + 1);
    ck_assert_refund_shape_rejects(&in, "lines");
    in.nlines = ORD_LINES_MAX;
    ck_assert_int_eq(ord_check_refund(&in, &g_v), 0);

    const char *bad_sku[][3] = {
        {"sku-0", "", "sku-2"}, {"sku-0", "sku 1", "sku-2"}, {"sku-0", NULL, "sku-2"}};
    for (size_t i = 0; i < 3; i++) {
        in = lines_in(bad_sku[i], qtys, 3);
        ck_assert_refund_shape_rejects(&in, "lines[1].sku");
    }
    const char *dup[] = {"sku-0", "sku-1", "sku-0"};
    in = lines_in(dup, qtys, 3);
    ck_assert_refund_shape_rejects(&in, "lines[2].sku");
    const int64_t bad_q[] = {0, -1, INT64_MIN};
    for (size_t i = 0; i < 3; i++) {
        int64_t q[] = {1, bad_q[i], 1};
        in = lines_in(skus, q, 3);
        ck_assert_refund_shape_rejects(&in, "lines[1].quantity");
    }

    /* AMOUNT: a positive amount, no lines */
    in = amount_in(1);
    ck_assert_int_eq(ord_check_refund(&in, &g_v), 0);
    in.skus = skus, in.qtys = qtys, in.nlines = 1;
    ck_assert_refund_shape_rejects(&in, "lines");
    in = amount_in(1);
    in.has_amount = 0;
    ck_assert_refund_shape_rejects(&in, "amount");
    const int64_t bad_a[] = {0, -1, INT64_MIN};
    for (size_t i = 0; i < 3; i++) {
        in = amount_in(bad_a[i]);
        ck_assert_refund_shape_rejects(&in, "amount");
    }
}
END_TEST

START_TEST(refund_is_illegal_unless_paid_and_not_yet_refunded)
{
    const int64_t q[] = {2, 3}, p[] = {150, 100};
    const char *skus[] = {"sku-0"};
    const int64_t one[] = {1};
    ord_refund_in ins[3] = {full_in(), lines_in(skus, one, 1), amount_in(10)};
    for (size_t i = 0; i < NSTATES; i++) {
        paid_order(&g_o, q, p, 2);
        g_o.state = all_states[i];
        int paid = all_states[i] != ORD_PENDING && all_states[i] != ORD_CANCELLED &&
                   all_states[i] != ORD_REFUNDED;
        for (size_t k = 0; k < 3; k++) {
            ord_verdict got = ord_plan_refund(&g_o, &ins[k], &g_r, &g_v);
            ck_assert_msg(got == (paid ? ORD_OK : ORD_ILLEGAL), "state %d scope %d: got %d",
                          all_states[i], ins[k].scope, got);
        }
    }
    for (size_t i = 0; i < NUNKNOWN; i++) {
        paid_order(&g_o, q, p, 2);
        g_o.state = unknown_states[i];
        for (size_t k = 0; k < 3; k++)
            ck_assert_int_ne(ord_plan_refund(&g_o, &ins[k], &g_r, &g_v), ORD_OK);
    }
}
END_TEST

START_TEST(refund_full_refunds_everything_left)
{
    const int64_t q[] = {2, 3}, p[] = {150, 100};
    paid_order(&g_o, q, p, 2);
    g_o.state = ORD_SHIPPED;
    g_o.shipped_ms = 1700000000000LL;
    ord_refund_in in = full_in();
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.scope, ORD_SCOPE_FULL);
    ck_assert_int_eq(g_r.amount, 600);
    ck_assert_uint_eq(g_r.nlines, 2);
    ck_assert_refund_line(g_r.lines[0], "sku-0", 2, 300);
    ck_assert_refund_line(g_r.lines[1], "sku-1", 3, 300);
    ord_apply_refund(&g_o, &g_r);
    ck_assert_int_eq(g_o.state, ORD_REFUNDED);
    ck_assert_int_eq(g_o.refunded, 600);
    ck_assert_int_eq(g_o.lines[0].refunded_qty, 2);
    ck_assert_int_eq(g_o.lines[0].refunded_amount, 300);
    ck_assert_int_eq(g_o.lines[1].refunded_qty, 3);
    ck_assert_int_eq(g_o.lines[1].refunded_amount, 300);
    ck_assert_int_eq(g_o.shipped_ms, 1700000000000LL); /* the shipment stays recorded */
    /* REFUNDED is final */
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_ILLEGAL);
    ord_refund_in a = amount_in(1);
    ck_assert_int_eq(ord_plan_refund(&g_o, &a, &g_r, &g_v), ORD_ILLEGAL);

    /* after a partial refund: only what is left, fully refunded lines omitted */
    paid_order(&g_o, q, p, 2);
    const char *s0[] = {"sku-0"};
    const int64_t two[] = {2};
    ord_refund_in l = lines_in(s0, two, 1);
    ck_assert_int_eq(ord_plan_refund(&g_o, &l, &g_r, &g_v), ORD_OK);
    ord_apply_refund(&g_o, &g_r);
    a = amount_in(100);
    ck_assert_int_eq(ord_plan_refund(&g_o, &a, &g_r, &g_v), ORD_OK);
    ord_apply_refund(&g_o, &g_r);
    ck_assert_int_eq(g_o.state, ORD_PART_REFUNDED);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.amount, 200);
    ck_assert_uint_eq(g_r.nlines, 1);
    ck_assert_refund_line(g_r.lines[0], "sku-1", 3, 200);
    ord_apply_refund(&g_o, &g_r);
    ck_assert_int_eq(g_o.state, ORD_REFUNDED);
    ck_assert_int_eq(g_o.refunded, g_o.total);
}
END_TEST

START_TEST(refund_lines_refunds_units_at_their_unit_price)
{
    const int64_t q[] = {2, 3, 1}, p[] = {150, 100, 999};
    paid_order(&g_o, q, p, 3);
    g_o.state = ORD_COMPLETED;
    /* asked in another order: the breakdown follows the order's lines */
    const char *skus[] = {"sku-1", "sku-0"};
    const int64_t qtys[] = {2, 1};
    ord_refund_in in = lines_in(skus, qtys, 2);
    ck_assert_int_eq(ord_check_refund(&in, &g_v), 0);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.scope, ORD_SCOPE_LINES);
    ck_assert_int_eq(g_r.amount, 350);
    ck_assert_uint_eq(g_r.nlines, 2); /* sku-2 untouched: omitted */
    ck_assert_refund_line(g_r.lines[0], "sku-0", 1, 150);
    ck_assert_refund_line(g_r.lines[1], "sku-1", 2, 200);
    ord_apply_refund(&g_o, &g_r);
    ck_assert_int_eq(g_o.state, ORD_PART_REFUNDED);
    ck_assert_int_eq(g_o.refunded, 350);
    ck_assert_int_eq(g_o.lines[0].refunded_qty, 1);
    ck_assert_int_eq(g_o.lines[0].refunded_amount, 150);
    ck_assert_int_eq(g_o.lines[1].refunded_qty, 2);
    ck_assert_int_eq(g_o.lines[1].refunded_amount, 200);
    ck_assert_int_eq(g_o.lines[2].refunded_qty, 0);
    ck_assert_int_eq(g_o.lines[2].refunded_amount, 0);

    /* more units than are left on a line: exceeds, naming the request line */
    const char *s2[] = {"sku-2", "sku-1"};
    const int64_t over[] = {1, 2};
    in = lines_in(s2, over, 2);
    memset(&g_v, 0, sizeof g_v);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_EXCEEDS);
    ck_assert_field_within(g_v.field, "lines[1]");
    ck_assert_str_eq(g_v.reason, "REFUND_EXCEEDS_REFUNDABLE");
    const int64_t huge[] = {1, INT64_MAX};
    in = lines_in(s2, huge, 2);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_EXCEEDS);
    ck_assert_field_within(g_v.field, "lines[1]");
    /* nothing was applied by the refused plans */
    ck_assert_int_eq(g_o.refunded, 350);

    /* a sku the order does not have */
    const char *unk[] = {"sku-2", "sku-9"};
    const int64_t ones[] = {1, 1};
    in = lines_in(unk, ones, 2);
    memset(&g_v, 0, sizeof g_v);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_BAD_INPUT);
    ck_assert_str_eq(g_v.field, "lines[1].sku");
    const char *unk0[] = {"SKU-0"};
    in = lines_in(unk0, ones, 1);
    memset(&g_v, 0, sizeof g_v);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_BAD_INPUT);
    ck_assert_str_eq(g_v.field, "lines[0].sku");

    /* the rest by lines: exactly what is left, then REFUNDED */
    const char *rest[] = {"sku-0", "sku-1", "sku-2"};
    const int64_t rq[] = {1, 1, 1};
    in = lines_in(rest, rq, 3);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.amount, 150 + 100 + 999);
    ck_assert_int_eq(lines_sum(&g_r), g_r.amount);
    ord_apply_refund(&g_o, &g_r);
    ck_assert_int_eq(g_o.state, ORD_REFUNDED);
    ck_assert_int_eq(g_o.refunded, g_o.total);
}
END_TEST

START_TEST(refund_lines_cannot_take_more_than_a_line_has_left_after_an_amount_refund)
{
    const int64_t q[] = {2, 2}, p[] = {100, 100};
    paid_order(&g_o, q, p, 2);
    ord_refund_in a = amount_in(100); /* 50 from each line */
    ck_assert_int_eq(ord_plan_refund(&g_o, &a, &g_r, &g_v), ORD_OK);
    ord_apply_refund(&g_o, &g_r);
    ck_assert_int_eq(g_o.lines[0].refunded_amount, 50);
    ck_assert_int_eq(g_o.lines[0].refunded_qty, 0); /* amount refunds leave units */
    /* both units of sku-0 would be 200, but only 150 is left on it */
    const char *s0[] = {"sku-0"};
    const int64_t two[] = {2}, one[] = {1};
    ord_refund_in in = lines_in(s0, two, 1);
    memset(&g_v, 0, sizeof g_v);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_EXCEEDS);
    ck_assert_str_eq(g_v.reason, "REFUND_EXCEEDS_REFUNDABLE");
    ck_assert_field_within(g_v.field, "lines[0]");
    in = lines_in(s0, one, 1);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.amount, 100);
}
END_TEST

START_TEST(refund_lines_of_only_zero_priced_units_is_refused)
{
    /* a Refund's amount is > 0: nothing to pay back is not a refund */
    const int64_t q[] = {1, 1}, p[] = {100, 0};
    paid_order(&g_o, q, p, 2);
    const char *s1[] = {"sku-1"};
    const int64_t one[] = {1};
    ord_refund_in in = lines_in(s1, one, 1);
    ck_assert_int_ne(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
}
END_TEST

START_TEST(refund_amount_spreads_pro_rata_and_sums_exactly)
{
    /* exact shares 3.5, 2.1, 1.4: floors 3, 2, 1, the unit left over goes to
     * the largest remainder */
    const int64_t q3[] = {1, 1, 1}, p3[] = {50, 30, 20};
    paid_order(&g_o, q3, p3, 3);
    ord_refund_in in = amount_in(7);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.scope, ORD_SCOPE_AMOUNT);
    ck_assert_int_eq(g_r.amount, 7);
    ck_assert_uint_eq(g_r.nlines, 3);
    ck_assert_refund_line(g_r.lines[0], "sku-0", 0, 4);
    ck_assert_refund_line(g_r.lines[1], "sku-1", 0, 2);
    ck_assert_refund_line(g_r.lines[2], "sku-2", 0, 1);

    /* shares 0.9, 1.8, 6.3: floors 0, 1, 6, two units to .9 and .8 */
    const int64_t pb[] = {10, 20, 70};
    paid_order(&g_o, q3, pb, 3);
    in = amount_in(9);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_uint_eq(g_r.nlines, 3);
    ck_assert_refund_line(g_r.lines[0], "sku-0", 0, 1);
    ck_assert_refund_line(g_r.lines[1], "sku-1", 0, 2);
    ck_assert_refund_line(g_r.lines[2], "sku-2", 0, 6);

    /* equal remainders: ties go to the lower index */
    const int64_t pc[] = {100, 100, 100};
    paid_order(&g_o, q3, pc, 3);
    in = amount_in(100);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.lines[0].amount, 34);
    ck_assert_int_eq(g_r.lines[1].amount, 33);
    ck_assert_int_eq(g_r.lines[2].amount, 33);
    ck_assert_int_eq(lines_sum(&g_r), 100);

    /* a small amount: lines whose part rounds to zero are omitted */
    in = amount_in(1);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_uint_eq(g_r.nlines, 1);
    ck_assert_refund_line(g_r.lines[0], "sku-0", 0, 1);

    /* pro rata to what each line has LEFT, not to its total */
    const int64_t q2[] = {2, 2}, p2[] = {50, 50};
    paid_order(&g_o, q2, p2, 2);
    const char *s0[] = {"sku-0"};
    const int64_t one[] = {1}, two[] = {2};
    ord_refund_in l = lines_in(s0, one, 1);
    ck_assert_int_eq(ord_plan_refund(&g_o, &l, &g_r, &g_v), ORD_OK);
    ord_apply_refund(&g_o, &g_r); /* left: 50 and 100 */
    in = amount_in(30);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_uint_eq(g_r.nlines, 2);
    ck_assert_refund_line(g_r.lines[0], "sku-0", 0, 10);
    ck_assert_refund_line(g_r.lines[1], "sku-1", 0, 20);
    paid_order(&g_o, q2, p2, 2);
    l = lines_in(s0, two, 1);
    ck_assert_int_eq(ord_plan_refund(&g_o, &l, &g_r, &g_v), ORD_OK);
    ord_apply_refund(&g_o, &g_r); /* left: 0 and 100 */
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_uint_eq(g_r.nlines, 1);
    ck_assert_refund_line(g_r.lines[0], "sku-1", 0, 30);
    /* more than is left on the order */
    in = amount_in(101);
    memset(&g_v, 0, sizeof g_v);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_EXCEEDS);
    ck_assert_str_eq(g_v.reason, "REFUND_EXCEEDS_REFUNDABLE");
    ck_assert_field_within(g_v.field, "amount");
    ck_assert_int_eq(g_o.refunded, 100);
    /* exactly what is left: REFUNDED */
    in = amount_in(100);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ord_apply_refund(&g_o, &g_r);
    ck_assert_int_eq(g_o.state, ORD_REFUNDED);
    ck_assert_int_eq(g_o.refunded, 200);
    ck_assert_int_eq(g_o.lines[1].refunded_amount, 100);
}
END_TEST

START_TEST(refund_amount_in_another_currency_is_a_currency_mismatch)
{
    const int64_t q[] = {1}, p[] = {100};
    paid_order(&g_o, q, p, 1);
    const char *others[] = {"USD", "cny", "", NULL};
    for (size_t i = 0; i < 4; i++) {
        ord_refund_in in = amount_in(10);
        in.amount_currency = others[i];
        memset(&g_v, 0, sizeof g_v);
        ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_CURRENCY);
        ck_assert_str_eq(g_v.reason, "CURRENCY_MISMATCH");
        ck_assert_field_within(g_v.field, "amount");
    }
}
END_TEST

START_TEST(refund_amount_spreads_over_a_hundred_lines)
{
    int64_t q[ORD_LINES_MAX], p[ORD_LINES_MAX];
    for (size_t i = 0; i < ORD_LINES_MAX; i++)
        q[i] = 1 + (int64_t)(i % 3), p[i] = 7 + 13 * (int64_t)i;
    paid_order(&g_o, q, p, ORD_LINES_MAX);
    ord_refund_in in = amount_in(g_o.total - 1);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(lines_sum(&g_r), g_o.total - 1);
    for (size_t k = 0; k < g_r.nlines; k++) {
        size_t i = 0;
        while (i < g_o.nlines && strcmp(g_o.lines[i].sku, g_r.lines[k].sku) != 0)
            i++;
        ck_assert_uint_lt(i, g_o.nlines);
        ck_assert_int_le(g_r.lines[k].amount, g_o.lines[i].line_total);
        ck_assert_int_gt(g_r.lines[k].amount, 0);
    }
    ord_apply_refund(&g_o, &g_r);
    ck_assert_int_eq(g_o.state, ORD_PART_REFUNDED);
    ord_refund_in f = full_in();
    ck_assert_int_eq(ord_plan_refund(&g_o, &f, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.amount, 1);
    ord_apply_refund(&g_o, &g_r);
    ck_assert_int_eq(g_o.state, ORD_REFUNDED);
}
END_TEST

START_TEST(apply_refund_moves_to_partially_then_fully_refunded)
{
    const int64_t q[] = {1, 1}, p[] = {100, 200};
    const int from[] = {ORD_PAID, ORD_SHIPPED, ORD_COMPLETED};
    for (size_t i = 0; i < 3; i++) {
        paid_order(&g_o, q, p, 2);
        g_o.state = from[i];
        ord_refund_in in = amount_in(299);
        ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
        ord_apply_refund(&g_o, &g_r);
        ck_assert_int_eq(g_o.state, ORD_PART_REFUNDED);
        ck_assert_int_eq(g_o.refunded, 299);
        in = amount_in(1);
        ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
        ord_apply_refund(&g_o, &g_r);
        ck_assert_int_eq(g_o.state, ORD_REFUNDED);
        ck_assert_int_eq(g_o.refunded, 300);
        /* straight to REFUNDED in one go */
        paid_order(&g_o, q, p, 2);
        g_o.state = from[i];
        in = full_in();
        ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
        ord_apply_refund(&g_o, &g_r);
        ck_assert_int_eq(g_o.state, ORD_REFUNDED);
    }
}
END_TEST

/* ---- property: random refund sequences ---- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* splitmix64: deterministic across platforms */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* uniform-enough in [lo, hi] */
static int64_t rnd_in(int64_t lo, int64_t hi)
{
    return lo + (int64_t)(rnd() % (uint64_t)(hi - lo + 1));
}

/* the invariants of an order after any refunds */
static void check_order_invariants(const ord_order *o, int iter)
{
    int64_t sum = 0;
    for (size_t i = 0; i < o->nlines; i++) {
        const ord_line *l = &o->lines[i];
        ck_assert_msg(l->refunded_amount >= 0 && l->refunded_amount <= l->line_total,
                      "iter %d line %zu: refunded %lld of %lld", iter, i,
                      (long long)l->refunded_amount, (long long)l->line_total);
        ck_assert_msg(l->refunded_qty >= 0 && l->refunded_qty <= l->qty,
                      "iter %d line %zu: refunded %lld of %lld units", iter, i,
                      (long long)l->refunded_qty, (long long)l->qty);
        sum += l->refunded_amount;
    }
    ck_assert_msg(o->refunded >= 0 && o->refunded <= o->total, "iter %d: refunded %lld of %lld",
                  iter, (long long)o->refunded, (long long)o->total);
    ck_assert_msg(sum == o->refunded, "iter %d: lines %lld, order %lld", iter, (long long)sum,
                  (long long)o->refunded);
    ck_assert_int_eq(o->state, o->refunded == o->total ? ORD_REFUNDED : ORD_PART_REFUNDED);
}

/* a planned refund against the order before it is applied */
static void check_plan(const ord_order *o, const ord_refund_in *in, const ord_refund *r, int iter)
{
    ck_assert_int_eq(r->scope, in->scope);
    ck_assert_msg(r->amount > 0, "iter %d: refund of %lld", iter, (long long)r->amount);
    ck_assert_msg(lines_sum(r) == r->amount, "iter %d scope %d: lines %lld, amount %lld", iter,
                  in->scope, (long long)lines_sum(r), (long long)r->amount);
    ck_assert_int_le(r->amount, o->total - o->refunded);
    if (in->scope == ORD_SCOPE_AMOUNT)
        ck_assert_int_eq(r->amount, in->amount);
    size_t prev = 0;
    for (size_t k = 0; k < r->nlines; k++) {
        const ord_refund_line *rl = &r->lines[k];
        size_t i = 0;
        while (i < o->nlines && strcmp(o->lines[i].sku, rl->sku) != 0)
            i++;
        ck_assert_msg(i < o->nlines, "iter %d: refund line of unknown sku %s", iter, rl->sku);
        ck_assert_msg(k == 0 || i > prev, "iter %d: breakdown not in line order", iter);
        prev = i;
        const ord_line *l = &o->lines[i];
        ck_assert_int_ge(rl->amount, 0);
        ck_assert_int_le(rl->amount, l->line_total - l->refunded_amount);
        ck_assert_int_le(rl->qty, l->qty - l->refunded_qty);
        if (in->scope == ORD_SCOPE_AMOUNT) {
            ck_assert_int_eq(rl->qty, 0);
            ck_assert_int_gt(rl->amount, 0);
            /* floor or ceil of its exact share of what is left */
            __int128 num = (__int128)in->amount * (l->line_total - l->refunded_amount);
            __int128 den = o->total - o->refunded;
            __int128 lo = num / den, hi = lo + (num % den != 0);
            ck_assert_msg(rl->amount >= lo && rl->amount <= hi,
                          "iter %d line %zu: part %lld outside [%lld, %lld]", iter, i,
                          (long long)rl->amount, (long long)lo, (long long)hi);
        } else if (in->scope == ORD_SCOPE_LINES) {
            ck_assert_int_eq(rl->amount, rl->qty * l->unit_price);
        }
    }
}

START_TEST(refund_sequences_never_refund_more_than_was_paid)
{
    const uint64_t seed = 0x0d5eed0fc0ffeeULL;
    rng_state = seed;
    int64_t qty[5], price[5];
    const char *skus[5];
    int64_t qtys[5];
    int scopes_seen[4] = {0}, exceeded = 0;
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = (size_t)rnd_in(1, 5);
        for (size_t i = 0; i < n; i++) {
            qty[i] = rnd() % 4 ? rnd_in(1, 5) : rnd_in(1, 1000);
            /* some free lines, some cheap, some dear; the first never free */
            int64_t kind = rnd_in(0, 9);
            price[i] = kind == 0 && i > 0 ? 0 : kind < 5 ? rnd_in(1, 99) : rnd_in(100, 10000000);
        }
        paid_order(&g_o, qty, price, n);
        g_o.state = rnd() % 2 ? ORD_PAID : ORD_SHIPPED;
        int steps = 0;
        /* bounded: at most 30 random refunds, then a FULL one */
        while (g_o.state != ORD_REFUNDED && steps++ < 30) {
            int64_t left = g_o.total - g_o.refunded;
            int scope = (int)rnd_in(1, 12);
            scope = scope == 1 ? ORD_SCOPE_FULL : scope <= 7 ? ORD_SCOPE_AMOUNT : ORD_SCOPE_LINES;
            ord_refund_in in;
            if (scope == ORD_SCOPE_FULL) {
                in = full_in();
            } else if (scope == ORD_SCOPE_AMOUNT) {
                /* mostly small amounts so sequences run long */
                in = amount_in(rnd() % 3 ? rnd_in(1, left / 4 + 1) : rnd_in(1, left));
                if (in.amount > left)
                    in.amount = left;
            } else {
                size_t m = 0;
                for (size_t i = 0; i < n; i++) {
                    int64_t units = g_o.lines[i].qty - g_o.lines[i].refunded_qty;
                    if (units > 0 && rnd() % 2) {
                        skus[m] = g_o.lines[i].sku;
                        qtys[m++] = rnd_in(1, units);
                    }
                }
                if (m == 0)
                    continue;
                /* the request in reverse line order */
                for (size_t a = 0, b = m - 1; a < b; a++, b--) {
                    const char *ts = skus[a];
                    int64_t tq = qtys[a];
                    skus[a] = skus[b], qtys[a] = qtys[b];
                    skus[b] = ts, qtys[b] = tq;
                }
                in = lines_in(skus, qtys, m);
            }
            ck_assert_int_eq(ord_check_refund(&in, &g_v), 0);
            memcpy(&g_o2, &g_o, sizeof g_o);
            ord_verdict got = ord_plan_refund(&g_o, &in, &g_r, &g_v);
            ck_assert_msg(memcmp(&g_o2, &g_o, sizeof g_o) == 0, "iter %d: plan changed the order",
                          iter);
            if (got == ORD_EXCEEDS && scope == ORD_SCOPE_LINES) {
                /* legitimate only if some line's units cost more than it has
                 * left (after amount refunds), or they are all free */
                int over = 0;
                int64_t amt = 0;
                for (size_t k = 0; k < in.nlines; k++) {
                    for (size_t i = 0; i < n; i++) {
                        const ord_line *l = &g_o.lines[i];
                        if (strcmp(l->sku, skus[k]) == 0) {
                            over |= qtys[k] * l->unit_price > l->line_total - l->refunded_amount;
                            amt += qtys[k] * l->unit_price;
                        }
                    }
                }
                ck_assert_msg(over || amt == 0, "iter %d: lines refund refused for no reason",
                              iter);
                exceeded++;
                continue;
            }
            ck_assert_msg(got == ORD_OK, "iter %d step %d scope %d: verdict %d (%s: %s)", iter,
                          steps, scope, got, g_v.field, g_v.why);
            check_plan(&g_o, &in, &g_r, iter);
            scopes_seen[scope]++;
            ord_apply_refund(&g_o, &g_r);
            check_order_invariants(&g_o, iter);
        }
        if (g_o.state != ORD_REFUNDED) {
            ord_refund_in in = full_in();
            int64_t left = g_o.total - g_o.refunded;
            ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
            check_plan(&g_o, &in, &g_r, iter);
            ck_assert_int_eq(g_r.amount, left);
            ord_apply_refund(&g_o, &g_r);
            /* everything: the units too, free ones and those of lines whose
             * amount went back by AMOUNT refunds */
            for (size_t i = 0; i < n; i++)
                ck_assert_int_eq(g_o.lines[i].refunded_qty, g_o.lines[i].qty);
        }
        check_order_invariants(&g_o, iter);
        ck_assert_int_eq(g_o.state, ORD_REFUNDED);
        ck_assert_int_eq(g_o.refunded, g_o.total);
        for (size_t i = 0; i < n; i++)
            ck_assert_int_eq(g_o.lines[i].refunded_amount, g_o.lines[i].line_total);
        /* and nothing more after that */
        ord_refund_in f = full_in(), a = amount_in(1);
        ck_assert_int_eq(ord_plan_refund(&g_o, &f, &g_r, &g_v), ORD_ILLEGAL);
        ck_assert_int_eq(ord_plan_refund(&g_o, &a, &g_r, &g_v), ORD_ILLEGAL);
    }
    /* the walk exercised every scope, not just the final FULL */
    ck_assert_int_gt(scopes_seen[ORD_SCOPE_AMOUNT], 1000);
    ck_assert_int_gt(scopes_seen[ORD_SCOPE_LINES], 1000);
    ck_assert_int_gt(scopes_seen[ORD_SCOPE_FULL], 100);
    ck_assert_int_gt(exceeded, 0);
}
END_TEST

/* ---- pagination ---- */

START_TEST(text_counts_utf8_characters_and_refuses_bad_encoding)
{
    char buf[512];
    /* 64 three-byte characters (192 bytes) fit a 64-character field */
    size_t len = 0;
    for (int i = 0; i < 65; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%s", "\xe5\x95\x86");
    ck_assert_int_eq(ord_valid_text(buf, 64, 1), 0); /* the 65th is one too many */
    buf[64 * 3] = 0;
    ck_assert_int_eq(ord_valid_text(buf, 64, 1), 1);
    ck_assert_int_eq(ord_valid_text("", 64, 1), 0);
    ck_assert_int_eq(ord_valid_text("", 64, 0), 1);
    ck_assert_int_eq(ord_valid_text("caf\xc3\xa9 \xf0\x9f\x9b\x92", 64, 1), 1);
    ck_assert_int_eq(ord_valid_text("a\xff", 64, 1), 0);            /* not utf-8 */
    ck_assert_int_eq(ord_valid_text("\xc0\x80", 64, 1), 0);         /* overlong NUL */
    ck_assert_int_eq(ord_valid_text("\xed\xa0\x80", 64, 1), 0);     /* a surrogate */
    ck_assert_int_eq(ord_valid_text("\xf4\x90\x80\x80", 64, 1), 0); /* past U+10FFFF */
    ck_assert_int_eq(ord_valid_text("\xe5\x95", 64, 1), 0);         /* cut short */
    ck_assert_int_eq(ord_valid_text("line\nbreak", 64, 1), 0);      /* control */
    ck_assert_int_eq(ord_valid_text("del\x7f", 64, 1), 0);
}
END_TEST

/* ---- gross margin ---- */

/* paid_order with every line's unit cost set (CNY) */
static void costed_order(ord_order *o, const int64_t *qty, const int64_t *price,
                         const int64_t *cost, size_t n)
{
    paid_order(o, qty, price, n);
    const char *ccys[ORD_LINES_MAX];
    for (size_t i = 0; i < n; i++)
        ccys[i] = "CNY";
    ord_set_costs(o, cost, ccys);
}

START_TEST(margin_is_revenue_minus_cost_and_negative_under_cost)
{
    const int64_t q[] = {3, 2}, p[] = {1000, 500}, c[] = {600, 700};
    costed_order(&g_o, q, p, c, 2);
    ord_margin m = ord_order_margin(&g_o);
    ck_assert_int_eq(m.cost, 3 * 600 + 2 * 700);
    ck_assert_int_eq(m.reversed, 0);
    ck_assert_int_eq(m.margin, 4000 - 3200);
    ck_assert_int_eq(m.complete, 1);
    /* a flash sale priced under cost */
    const int64_t q2[] = {1}, p2[] = {99}, c2[] = {150};
    costed_order(&g_o2, q2, p2, c2, 1);
    ck_assert_int_eq(ord_order_margin(&g_o2).margin, -51);
}
END_TEST

START_TEST(margin_leaves_out_lines_without_a_cost_in_the_order_currency)
{
    const int64_t q[] = {1, 1, 1}, p[] = {100, 100, 100}, c[] = {40, 40, 40};
    paid_order(&g_o, q, p, 3);
    /* before the reservation says, no line has a cost */
    ck_assert_int_eq(ord_order_margin(&g_o).complete, 0);
    ck_assert_int_eq(ord_order_margin(&g_o).cost, 0);
    const char *ccys[] = {"CNY", "USD", NULL};
    ord_set_costs(&g_o, c, ccys);
    ck_assert_int_eq(g_o.lines[0].unit_cost, 40);
    ck_assert_int_eq(g_o.lines[1].unit_cost, -1);
    ck_assert_int_eq(g_o.lines[2].unit_cost, -1);
    ord_margin m = ord_order_margin(&g_o);
    ck_assert_int_eq(m.cost, 40);
    ck_assert_int_eq(m.margin, 300 - 40);
    ck_assert_int_eq(m.complete, 0);
}
END_TEST

START_TEST(cost_share_floors_and_is_exact_when_whole)
{
    ck_assert_int_eq(ord_cost_share(100, 1, 3), 33);
    ck_assert_int_eq(ord_cost_share(100, 2, 3), 66);
    ck_assert_int_eq(ord_cost_share(100, 3, 3), 100);
    ck_assert_int_eq(ord_cost_share(100, 4, 3), 100);
    ck_assert_int_eq(ord_cost_share(100, 0, 3), 0);
    ck_assert_int_eq(ord_cost_share(100, 1, 0), 0);
    /* no overflow in the product: 128-bit */
    ck_assert_int_eq(ord_cost_share(INT64_MAX / 2, INT64_MAX / 4, INT64_MAX / 2),
                     (int64_t)(((__int128)(INT64_MAX / 2) * (INT64_MAX / 4)) / (INT64_MAX / 2)));
}
END_TEST

START_TEST(refunds_reverse_cost_pro_rata_and_exactly_in_full)
{
    /* one line: 3 units at 100, cost 33 each (99); three amount refunds of
     * 100 each reverse floor(99*100/300)=33, then 66-33=33, then the rest */
    const int64_t q[] = {3}, p[] = {100}, c[] = {33};
    costed_order(&g_o, q, p, c, 1);
    int64_t reversed = 0;
    const int64_t want[] = {33, 33, 33};
    for (int k = 0; k < 3; k++) {
        ord_refund_in in = amount_in(100);
        ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
        ck_assert_int_eq(g_r.cost_reversed, want[k]);
        ord_apply_refund(&g_o, &g_r);
        reversed += g_r.cost_reversed;
    }
    ck_assert_int_eq(reversed, 99);
    ord_margin m = ord_order_margin(&g_o);
    ck_assert_int_eq(m.reversed, 99);
    ck_assert_int_eq(m.margin, 0);
    ck_assert_int_eq(g_o.state, ORD_REFUNDED);
}
END_TEST

START_TEST(refund_remainder_of_cost_goes_to_the_last_refund)
{
    /* 7 units at 10, cost 3 each (21); refunds of 1 unit (floor(21/7)=3
     * each) and of an awkward amount: the total reversed is always 21 */
    const int64_t q[] = {7}, p[] = {10}, c[] = {3};
    costed_order(&g_o, q, p, c, 1);
    ord_refund_in a = amount_in(11); /* floor(21 * 11 / 70) = 3 */
    ck_assert_int_eq(ord_plan_refund(&g_o, &a, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.cost_reversed, 3);
    ord_apply_refund(&g_o, &g_r);
    ord_refund_in b = amount_in(23); /* floor(21 * 34 / 70) = 10: 7 more */
    ck_assert_int_eq(ord_plan_refund(&g_o, &b, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.cost_reversed, 7);
    ord_apply_refund(&g_o, &g_r);
    ord_refund_in f = full_in(); /* the rest: 21 - 10 */
    ck_assert_int_eq(ord_plan_refund(&g_o, &f, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.cost_reversed, 11);
    ord_apply_refund(&g_o, &g_r);
    ck_assert_int_eq(ord_order_margin(&g_o).reversed, 21);
    ck_assert_int_eq(ord_order_margin(&g_o).margin, 0);
}
END_TEST

START_TEST(line_refund_reverses_its_own_line_cost_only)
{
    const int64_t q[] = {2, 5}, p[] = {100, 0}, c[] = {70, 9};
    costed_order(&g_o, q, p, c, 2);
    const char *skus[] = {"sku-0"};
    const int64_t qs[] = {1};
    ord_refund_in in = lines_in(skus, qs, 1);
    ck_assert_int_eq(ord_plan_refund(&g_o, &in, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.nlines, 1);
    ck_assert_int_eq(g_r.lines[0].cost, 70);
    ck_assert_int_eq(g_r.cost_reversed, 70);
    ord_apply_refund(&g_o, &g_r);
    ck_assert_int_eq(g_o.lines[0].cost_reversed, 70);
    ck_assert_int_eq(g_o.lines[1].cost_reversed, 0);
    /* the zero-priced line reverses by units when the full refund returns them */
    ord_refund_in f = full_in();
    ck_assert_int_eq(ord_plan_refund(&g_o, &f, &g_r, &g_v), ORD_OK);
    ck_assert_int_eq(g_r.cost_reversed, 70 + 45);
    ord_apply_refund(&g_o, &g_r);
    ord_margin m = ord_order_margin(&g_o);
    ck_assert_int_eq(m.cost, 140 + 45);
    ck_assert_int_eq(m.reversed, 140 + 45);
    ck_assert_int_eq(m.margin, 0);
}
END_TEST

/* the value of the series whose labels contain all of want, summed; -1
 * when none matches */
static long long scraped(const char *text, const char *name, const char *want)
{
    long long sum = -1;
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, name, n) != 0 || p[n] != '{')
            continue;
        const char *end = strchr(p, '}');
        char labels[256];
        snprintf(labels, sizeof labels, "%.*s", (int)(end - p), p);
        if (strstr(labels, want))
            sum = (sum < 0 ? 0 : sum) + strtoll(end + 1, NULL, 10);
    }
    return sum;
}

/* per flash sale: the most recent sales keep their series, older ones move
 * to _other, nothing is lost from the sums */
START_TEST(flash_sale_series_are_bounded_and_keep_the_totals)
{
    cm_metrics *m = cm_metrics_new();
    ord_metrics *om = ord_metrics_new(m);
    ck_assert_ptr_nonnull(om);
    ord_order o;
    memset(&o, 0, sizeof o);
    snprintf(o.currency, sizeof o.currency, "CNY");
    o.nlines = 2;
    o.flash = 1;
    snprintf(o.lines[0].sku, sizeof o.lines[0].sku, "sku-a");
    o.lines[0].qty = 2;
    o.lines[0].line_total = 100; /* a flash line sold at 50 under a cost of 60 */
    o.lines[0].unit_cost = 60;
    snprintf(o.lines[1].sku, sizeof o.lines[1].sku, "sku-b");
    o.lines[1].qty = 1;
    o.lines[1].line_total = 30; /* a regular line: no flash sale series */
    o.lines[1].unit_cost = 10;
    o.total = 130;
    int sales = ORD_METRICS_FLASH_SALES_MAX + 6;
    for (int i = 0; i < sales; i++) {
        snprintf(o.lines[0].flash_sale_id, sizeof o.lines[0].flash_sale_id, "fs-%d", i);
        ord_metrics_paid(om, "t1", &o);
    }
    /* the first sale sold again: it comes back as a new series */
    snprintf(o.lines[0].flash_sale_id, sizeof o.lines[0].flash_sale_id, "fs-0");
    ord_metrics_paid(om, "t1", &o);
    ord_refund r;
    memset(&r, 0, sizeof r);
    r.amount = 50;
    r.cost_reversed = 60;
    r.nlines = 1;
    snprintf(r.lines[0].sku, sizeof r.lines[0].sku, "sku-a");
    r.lines[0].amount = 50;
    r.lines[0].cost = 60;
    ord_metrics_refunded(om, "t1", &o, &r);

    char *text = NULL;
    ck_assert_int_eq(cm_metrics_render(m, &text, NULL), 0);
    const char *rev = "order_flash_sale_revenue_minor_total";
    /* every sale's revenue is somewhere: its own series or _other */
    ck_assert_int_eq(scraped(text, rev, "currency=\"CNY\""), 100LL * (sales + 1));
    ck_assert_int_eq(scraped(text, "order_flash_sale_cost_minor_total", "currency=\"CNY\""),
                     120LL * (sales + 1));
    ck_assert_int_eq(scraped(text, rev, "flash_sale=\"fs-0\""), 100); /* since it came back */
    ck_assert_int_eq(scraped(text, rev, "flash_sale=\"fs-1\""), -1);  /* evicted */
    ck_assert_int_eq(scraped(text, rev, "flash_sale=\"fs-69\""), 100);
    ck_assert_int_eq(scraped(text, rev, "tenant=\"_other\",currency=\"CNY\""), 100LL * 7);
    ck_assert_int_eq(scraped(text, "order_flash_sale_refunded_minor_total", "flash_sale=\"fs-0\""),
                     50);
    ck_assert_int_eq(
        scraped(text, "order_flash_sale_cost_reversed_minor_total", "flash_sale=\"fs-0\""), 60);
    /* bounded: the sales kept, one _other per currency, the zero series */
    int series = 0;
    for (const char *p = text; (p = strstr(p, "\norder_flash_sale_revenue_minor_total{")); p++)
        series++;
    ck_assert_int_eq(series, ORD_METRICS_FLASH_SALES_MAX + 2);
    free(text);
    ord_metrics_free(om);
    cm_metrics_free(m);
}
END_TEST

START_TEST(refund_sequences_reverse_exactly_the_recorded_cost)
{
    /* random refund sequences to the end: the reversals sum to the cost */
    srand(19);
    for (int iter = 0; iter < 500; iter++) {
        size_t n = 1 + (size_t)(rand() % 5);
        int64_t q[5], p[5], c[5];
        for (size_t i = 0; i < n; i++) {
            q[i] = 1 + rand() % 9;
            p[i] = rand() % 1000;
            c[i] = rand() % 1200;
        }
        costed_order(&g_o, q, p, c, n);
        ord_margin start = ord_order_margin(&g_o);
        int64_t reversed = 0;
        for (int step = 0; step < 20 && g_o.state != ORD_REFUNDED; step++) {
            int64_t left = g_o.total - g_o.refunded;
            ord_refund_in in =
                left > 1 && rand() % 2 ? amount_in(1 + rand() % (left - 1)) : full_in();
            if (ord_plan_refund(&g_o, &in, &g_r, &g_v) != ORD_OK)
                break;
            ck_assert_int_ge(g_r.cost_reversed, 0);
            ord_apply_refund(&g_o, &g_r);
            reversed += g_r.cost_reversed;
            ck_assert_int_le(reversed, start.cost);
        }
        ord_refund_in f = full_in();
        if (g_o.state != ORD_REFUNDED && ord_plan_refund(&g_o, &f, &g_r, &g_v) == ORD_OK) {
            ord_apply_refund(&g_o, &g_r);
            reversed += g_r.cost_reversed;
        }
        /* every priced line is refunded in full by now and reverses its
         * whole cost; a line priced 0 reverses by units, which only a
         * FULL or LINES refund returns */
        int64_t want = 0;
        for (size_t i = 0; i < n; i++)
            want +=
                g_o.lines[i].line_total > 0 || g_o.lines[i].refunded_qty == q[i] ? q[i] * c[i] : 0;
        if (g_o.total == 0)
            want = 0;
        ck_assert_msg(reversed == want, "iter %d: reversed %lld of %lld (cost %lld)", iter,
                      (long long)reversed, (long long)want, (long long)start.cost);
        ck_assert_int_eq(ord_order_margin(&g_o).reversed, reversed);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("order_domain");
    TCase *c = tcase_create("create");
    tcase_add_test(c, create_rejects_bad_header_fields_naming_the_field);
    tcase_add_test(c, create_rejects_line_counts_outside_1_to_100);
    tcase_add_test(c, create_rejects_bad_lines_naming_the_line);
    tcase_add_test(c, create_rejects_a_price_in_another_currency_as_currency_mismatch);
    tcase_add_test(c, create_rejects_amounts_that_overflow_int64);
    tcase_add_test(c, create_computes_line_totals_and_the_total);
    tcase_add_test(c, valid_key_accepts_1_to_max_characters_of_the_key_alphabet);
    tcase_add_test(c, create_hash_is_equal_for_equal_requests_and_differs_by_any_field);
    tcase_add_test(c, hash_is_sha256_hex);
    tcase_add_test(c, order_id_is_a_deterministic_uuid_v8_per_tenant_request_and_generation);
    tcase_add_test(c, deadline_clamps_to_the_reservation_expiry_minus_the_margin);
    tcase_add_test(c, settings_check_names_the_bad_field);
    suite_add_tcase(s, c);

    TCase *m = tcase_create("state");
    tcase_add_test(m, pay_accepts_a_pending_order_until_deadline_plus_grace);
    tcase_add_test(m, pay_is_late_for_a_cancelled_order_and_double_for_a_paid_one);
    tcase_add_test(m, cancel_is_ok_only_while_pending_and_a_noop_once_cancelled);
    tcase_add_test(m, ship_is_ok_when_paid_or_partially_refunded_and_not_yet_shipped);
    tcase_add_test(m, complete_is_ok_when_shipped_and_not_yet_completed);
    suite_add_tcase(s, m);

    TCase *r = tcase_create("refund");
    tcase_set_timeout(r, 60);
    tcase_add_test(r, check_refund_rejects_bad_shapes_naming_the_field);
    tcase_add_test(r, refund_is_illegal_unless_paid_and_not_yet_refunded);
    tcase_add_test(r, refund_full_refunds_everything_left);
    tcase_add_test(r, refund_lines_refunds_units_at_their_unit_price);
    tcase_add_test(r, refund_lines_cannot_take_more_than_a_line_has_left_after_an_amount_refund);
    tcase_add_test(r, refund_lines_of_only_zero_priced_units_is_refused);
    tcase_add_test(r, refund_amount_spreads_pro_rata_and_sums_exactly);
    tcase_add_test(r, refund_amount_in_another_currency_is_a_currency_mismatch);
    tcase_add_test(r, refund_amount_spreads_over_a_hundred_lines);
    tcase_add_test(r, apply_refund_moves_to_partially_then_fully_refunded);
    tcase_add_test(r, refund_sequences_never_refund_more_than_was_paid);
    suite_add_tcase(s, r);

    TCase *g = tcase_create("margin");
    tcase_add_test(g, margin_is_revenue_minus_cost_and_negative_under_cost);
    tcase_add_test(g, margin_leaves_out_lines_without_a_cost_in_the_order_currency);
    tcase_add_test(g, cost_share_floors_and_is_exact_when_whole);
    tcase_add_test(g, refunds_reverse_cost_pro_rata_and_exactly_in_full);
    tcase_add_test(g, refund_remainder_of_cost_goes_to_the_last_refund);
    tcase_add_test(g, line_refund_reverses_its_own_line_cost_only);
    tcase_add_test(g, refund_sequences_reverse_exactly_the_recorded_cost);
    tcase_add_test(g, flash_sale_series_are_bounded_and_keep_the_totals);
    suite_add_tcase(s, g);

    TCase *p = tcase_create("text");
    tcase_add_test(p, text_counts_utf8_characters_and_refuses_bad_encoding);
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
