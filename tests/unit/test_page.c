/* cm_page: sizes, the filter hash, tokens that only continue their own list */
#include "cm_err.h"
#include "cm_page.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

START_TEST(page_size_defaults_caps_and_rejects_negative)
{
    ck_assert_int_eq(cm_page_size(0), CM_PAGE_DEFAULT);
    ck_assert_int_eq(CM_PAGE_DEFAULT, 50);
    ck_assert_int_eq(cm_page_size(1), 1);
    ck_assert_int_eq(cm_page_size(499), 499);
    ck_assert_int_eq(cm_page_size(500), 500);
    ck_assert_int_eq(cm_page_size(501), 500);
    ck_assert_int_eq(cm_page_size(INT32_MAX), 500);
    ck_assert_int_eq(cm_page_size(-1), -1);
    ck_assert_int_eq(cm_page_size(INT32_MIN), -1);
}
END_TEST

START_TEST(filter_hash_is_fnv1a_64)
{
    /* reference values of 64-bit FNV-1a (offset basis 0xcbf29ce484222325,
     * prime 0x100000001b3) */
    ck_assert_uint_eq(cm_page_filters(""), 0xcbf29ce484222325ULL);
    ck_assert_uint_eq(cm_page_filters("a"), 0xaf63dc4c8601ec8cULL);
    ck_assert_uint_eq(cm_page_filters("foobar"), 0x85944171f73967e8ULL);
}
END_TEST

START_TEST(token_round_trips_only_with_its_list_and_filters)
{
    uint64_t f = cm_page_filters("b=u1;m=;c="), g = cm_page_filters("b=u2;m=;c=");
    ck_assert(f != g);
    const char *positions[] = {"0190c2a4-7b1e-7f00-8000-0123456789ab",
                               "1700000000123.0190c2a4-7b1e-7f00-8000-0123456789ab", "-5.x", "a",
                               "SKU_1:2"};
    for (size_t i = 0; i < sizeof positions / sizeof *positions; i++) {
        char tok[CM_PAGE_TOKEN_MAX], out[CM_PAGE_POSITION_MAX + 1];
        ck_assert_int_eq(cm_page_token(tok, sizeof tok, 'o', f, positions[i]), 0);
        ck_assert_uint_eq(strspn(tok, "0123456789abcdef"), strlen(tok)); /* opaque hex */
        ck_assert_int_eq(cm_page_token_parse(tok, 'o', f, out, sizeof out), 0);
        ck_assert_str_eq(out, positions[i]);
        /* another list, or other filters, cannot continue this listing */
        ck_assert_int_eq(cm_page_token_parse(tok, 'o', g, out, sizeof out), CM_EINVAL);
        ck_assert_int_eq(cm_page_token_parse(tok, 'c', f, out, sizeof out), CM_EINVAL);
    }
    /* the writer refuses what it could not read back, and small buffers */
    char tok[CM_PAGE_TOKEN_MAX], small[20];
    ck_assert_int_eq(cm_page_token(tok, sizeof tok, 'o', f, ""), CM_EINVAL);
    ck_assert_int_eq(cm_page_token(tok, sizeof tok, 'o', f, "a b"), CM_EINVAL);
    ck_assert_int_eq(cm_page_token(tok, sizeof tok, 'o', f, NULL), CM_EINVAL);
    ck_assert_int_eq(cm_page_token(small, sizeof small, 'o', f, "abc"), CM_EINVAL);
    char lng[CM_PAGE_POSITION_MAX + 2];
    memset(lng, 'p', sizeof lng - 1);
    lng[sizeof lng - 1] = '\0';
    ck_assert_int_eq(cm_page_token(tok, sizeof tok, 'o', f, lng), CM_EINVAL);
}
END_TEST

/* hex of plain text, as the token format */
static void hex_of(const char *plain, char *out, size_t cap)
{
    size_t n = strlen(plain);
    ck_assert_uint_lt(2 * n, cap);
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", (unsigned char)plain[i]);
    out[2 * n] = 0;
}

START_TEST(token_parse_rejects_garbage)
{
    uint64_t f = cm_page_filters("b=u1");
    char tok[CM_PAGE_TOKEN_MAX], out[CM_PAGE_POSITION_MAX + 1], t[600], plain[300];
    ck_assert_int_eq(cm_page_token(tok, sizeof tok, 'o', f, "12.abc"), 0);
    const char *bad[] = {NULL, "", "a", "abc", "zz", "00", "0g", "--", "2e2e", "AB"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(cm_page_token_parse(bad[i], 'o', f, out, sizeof out) == CM_EINVAL,
                      "accepted \"%s\"", bad[i] ? bad[i] : "(null)");
    /* a damaged character, a truncated token, a token with a NUL or more */
    snprintf(t, sizeof t, "%s", tok);
    t[10] = 'x';
    ck_assert_int_eq(cm_page_token_parse(t, 'o', f, out, sizeof out), CM_EINVAL);
    snprintf(t, sizeof t, "%s", tok);
    t[6] = '\0'; /* ends inside the filter hash */
    ck_assert_int_eq(cm_page_token_parse(t, 'o', f, out, sizeof out), CM_EINVAL);
    snprintf(t, sizeof t, "%s00", tok);
    ck_assert_int_eq(cm_page_token_parse(t, 'o', f, out, sizeof out), CM_EINVAL);
    snprintf(t, sizeof t, "%s20", tok); /* a space */
    ck_assert_int_eq(cm_page_token_parse(t, 'o', f, out, sizeof out), CM_EINVAL);
    /* well-formed hex of the wrong contents */
    snprintf(plain, sizeof plain, "o.%016llx.", (unsigned long long)f);
    hex_of(plain, t, sizeof t);
    ck_assert_int_eq(cm_page_token_parse(t, 'o', f, out, sizeof out), CM_EINVAL);
    snprintf(plain, sizeof plain, "o-%016llx-12", (unsigned long long)f);
    hex_of(plain, t, sizeof t);
    ck_assert_int_eq(cm_page_token_parse(t, 'o', f, out, sizeof out), CM_EINVAL);
    snprintf(plain, sizeof plain, "o.%016llx.a\nb", (unsigned long long)f);
    hex_of(plain, t, sizeof t);
    ck_assert_int_eq(cm_page_token_parse(t, 'o', f, out, sizeof out), CM_EINVAL);
    /* a position longer than the caller's buffer, and far too long */
    ck_assert_int_eq(cm_page_token_parse(tok, 'o', f, out, 4), CM_EINVAL);
    char lng[1001];
    memset(lng, 'a', 1000);
    lng[1000] = '\0';
    ck_assert_int_eq(cm_page_token_parse(lng, 'o', f, out, sizeof out), CM_EINVAL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("page");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, page_size_defaults_caps_and_rejects_negative);
    tcase_add_test(tc, filter_hash_is_fnv1a_64);
    tcase_add_test(tc, token_round_trips_only_with_its_list_and_filters);
    tcase_add_test(tc, token_parse_rejects_garbage);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
