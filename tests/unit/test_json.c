/* cm_json: the bytes jansson's json_dumps(JSON_COMPACT) writes, for random
 * strings, numbers and nestings; its errors */
#include "cm_buf.h"
#include "cm_err.h"
#include "cm_json.h"
#include "cm_utf8.h"

#include <check.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* a random string of up to max bytes: ascii, every C0 control, '"', '\\',
 * '/', DEL, 2-4 byte characters, and (when bad) stray bytes that may not
 * be UTF-8 */
static void random_text(char *s, size_t max, int bad)
{
    static const char *pieces[] = {"a",
                                   "Z",
                                   "0",
                                   " ",
                                   "\"",
                                   "\\",
                                   "/",
                                   "\x7f",
                                   "\xc3\xa9",
                                   "\xe5\x95\x86",
                                   "\xf0\x9f\x9b\x92",
                                   "\xe2\x80\xa8",
                                   "{",
                                   "}"};
    size_t n = 0, want = next() % max;
    while (n < want) {
        char piece[8];
        uint64_t r = next() % 10;
        if (r < 3) { /* a control character, NUL aside */
            piece[0] = (char)(1 + next() % 31);
            piece[1] = '\0';
        } else if (r == 3 && bad) {
            piece[0] = (char)(0x80 + next() % 128);
            piece[1] = '\0';
        } else {
            snprintf(piece, sizeof piece, "%s", pieces[next() % (sizeof pieces / sizeof *pieces)]);
        }
        size_t k = strlen(piece);
        if (n + k >= max)
            break;
        memcpy(s + n, piece, k);
        n += k;
    }
    s[n] = '\0';
}

START_TEST(strings_are_escaped_as_jansson_escapes_them)
{
    for (int i = 0; i < 20000; i++) {
        char s[64];
        random_text(s, sizeof s, i % 2);
        int valid = cm_utf8_valid(s, strlen(s));
        cm_buf b = {0};
        cm_json j;
        cm_json_init(&j, &b);
        cm_json_str(&j, NULL, s);
        json_t *js = json_string(s);
        ck_assert_int_eq(js != NULL, valid);
        if (!valid) {
            ck_assert_int_eq(cm_json_done(&j), CM_EINVAL);
            cm_buf_free(&b);
            continue;
        }
        char *want = json_dumps(js, JSON_COMPACT | JSON_ENCODE_ANY);
        ck_assert_int_eq(cm_json_done(&j), 0);
        ck_assert_msg(strcmp(b.p, want) == 0, "case %d: %s against %s", i, b.p, want);
        ck_assert_uint_eq(b.len, strlen(want));
        free(want);
        json_decref(js);
        cm_buf_free(&b);
    }
}
END_TEST

/* a random value, written both ways side by side; its depth at most d */
static json_t *random_value(cm_json *j, const char *key, int d)
{
    uint64_t r = next() % (d > 0 ? 6 : 3);
    char s[24];
    switch (r) {
    case 0: {
        random_text(s, sizeof s, 0);
        cm_json_str(j, key, s);
        return json_string(s);
    }
    case 1: {
        int64_t v = (int64_t)next();
        if (next() % 4 == 0)
            v = next() % 2 ? INT64_MIN : INT64_MAX;
        else if (next() % 2)
            v %= 100000;
        cm_json_int(j, key, v);
        return json_integer(v);
    }
    case 2: {
        int v = (int)(next() % 2);
        cm_json_bool(j, key, v);
        return json_boolean(v);
    }
    case 3:
    case 4: {
        json_t *o = json_object();
        cm_json_object(j, key);
        for (int n = (int)(next() % 5); n > 0; n--) {
            char k[16];
            do
                random_text(k, sizeof k, 0);
            while (json_object_get(o, k)); /* a name once per object */
            json_object_set_new(o, k, random_value(j, k, d - 1));
        }
        cm_json_end(j);
        return o;
    }
    default: {
        json_t *a = json_array();
        cm_json_array(j, key);
        for (int n = (int)(next() % 5); n > 0; n--)
            json_array_append_new(a, random_value(j, NULL, d - 1));
        cm_json_end(j);
        return a;
    }
    }
}

START_TEST(documents_are_the_bytes_jansson_dumps)
{
    for (int i = 0; i < 5000; i++) {
        cm_buf b = {0};
        cm_json j;
        cm_json_init(&j, &b);
        json_t *want_doc = random_value(&j, NULL, 4);
        ck_assert_ptr_nonnull(want_doc);
        char *want = json_dumps(want_doc, JSON_COMPACT | JSON_ENCODE_ANY);
        ck_assert_int_eq(cm_json_done(&j), 0);
        ck_assert_msg(strcmp(b.p, want) == 0, "case %d:\n%s\nagainst\n%s", i, b.p, want);
        /* and it parses back to the same document */
        json_error_t err;
        json_t *back = json_loads(b.p, JSON_DECODE_ANY, &err);
        ck_assert_msg(back != NULL, "case %d: %s", i, err.text);
        ck_assert(json_equal(back, want_doc));
        json_decref(back);
        json_decref(want_doc);
        free(want);
        cm_buf_free(&b);
    }
}
END_TEST

START_TEST(raw_values_are_written_as_they_are)
{
    cm_buf b = {0};
    cm_json j;
    cm_json_init(&j, &b);
    cm_json_object(&j, NULL);
    cm_json_raw(&j, "data", "{\"a\":[1,2]}", 11);
    cm_json_array(&j, "list");
    cm_json_raw(&j, NULL, "null", 4);
    cm_json_end(&j);
    cm_json_end(&j);
    ck_assert_int_eq(cm_json_done(&j), 0);
    ck_assert_str_eq(b.p, "{\"data\":{\"a\":[1,2]},\"list\":[null]}");
    cm_buf_free(&b);
}
END_TEST

START_TEST(misuse_is_an_error_and_stops_the_writer)
{
    cm_buf b = {0};
    cm_json j;
    /* nothing written */
    cm_json_init(&j, &b);
    ck_assert_int_eq(cm_json_done(&j), CM_EINVAL);
    /* left open */
    cm_json_init(&j, &b);
    cm_json_object(&j, NULL);
    ck_assert_int_eq(cm_json_done(&j), CM_EINVAL);
    cm_buf_free(&b);
    /* a member without a name, an element with one, a key at the top */
    cm_json_init(&j, &b);
    cm_json_object(&j, NULL);
    cm_json_int(&j, NULL, 1);
    ck_assert_int_eq(cm_json_done(&j), CM_EINVAL);
    size_t at = b.len;
    cm_json_end(&j); /* no-op after the error */
    ck_assert_uint_eq(b.len, at);
    cm_buf_free(&b);
    cm_json_init(&j, &b);
    cm_json_array(&j, NULL);
    cm_json_int(&j, "n", 1);
    ck_assert_int_eq(cm_json_done(&j), CM_EINVAL);
    cm_buf_free(&b);
    cm_json_init(&j, &b);
    cm_json_int(&j, "n", 1);
    ck_assert_int_eq(cm_json_done(&j), CM_EINVAL);
    cm_buf_free(&b);
    /* two top-level values; a close too many; a NULL string; a bad key */
    cm_json_init(&j, &b);
    cm_json_int(&j, NULL, 1);
    cm_json_int(&j, NULL, 2);
    ck_assert_int_eq(cm_json_done(&j), CM_EINVAL);
    cm_buf_free(&b);
    cm_json_init(&j, &b);
    cm_json_array(&j, NULL);
    cm_json_end(&j);
    cm_json_end(&j);
    ck_assert_int_eq(cm_json_done(&j), CM_EINVAL);
    cm_buf_free(&b);
    cm_json_init(&j, &b);
    cm_json_object(&j, NULL);
    cm_json_str(&j, "s", NULL);
    ck_assert_int_eq(cm_json_done(&j), CM_EINVAL);
    cm_buf_free(&b);
    cm_json_init(&j, &b);
    cm_json_object(&j, NULL);
    cm_json_bool(&j, "\xff", 1);
    ck_assert_int_eq(cm_json_done(&j), CM_EINVAL);
    cm_buf_free(&b);
    /* too deep */
    cm_json_init(&j, &b);
    for (int i = 0; i <= CM_JSON_DEPTH; i++)
        cm_json_array(&j, NULL);
    ck_assert_int_eq(cm_json_done(&j), CM_EINVAL);
    cm_buf_free(&b);
    /* exactly as deep as allowed */
    cm_json_init(&j, &b);
    for (int i = 0; i < CM_JSON_DEPTH; i++)
        cm_json_array(&j, NULL);
    for (int i = 0; i < CM_JSON_DEPTH; i++)
        cm_json_end(&j);
    ck_assert_int_eq(cm_json_done(&j), 0);
    cm_buf_free(&b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("json");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, strings_are_escaped_as_jansson_escapes_them);
    tcase_add_test(tc, documents_are_the_bytes_jansson_dumps);
    tcase_add_test(tc, raw_values_are_written_as_they_are);
    tcase_add_test(tc, misuse_is_an_error_and_stops_the_writer);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
