/* cm_buf: growable text and postgres array literals */
#include "cm_arena.h"
#include "cm_buf.h"
#include "cm_err.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

START_TEST(array_literals_quote_and_separate)
{
    cm_buf b = {0};
    cm_buf_array_begin(&b);
    cm_buf_array_end(&b);
    ck_assert_str_eq(b.p, "{}");
    cm_buf_free(&b);

    cm_buf_array_begin(&b);
    cm_buf_array_int(&b, 1);
    cm_buf_array_int(&b, -9223372036854775807LL - 1);
    cm_buf_array_end(&b);
    ck_assert_str_eq(b.p, "{1,-9223372036854775808}");
    cm_buf_free(&b);

    cm_buf_array_begin(&b);
    cm_buf_array_text(&b, "SKU-1");
    cm_buf_array_text(&b, "");
    cm_buf_array_text(&b, "a\"b\\c,{d}");
    cm_buf_array_text(&b, "\xe5\x95\x86");
    cm_buf_array_end(&b);
    ck_assert_str_eq(b.p, "{\"SKU-1\",\"\",\"a\\\"b\\\\c,{d}\",\"\xe5\x95\x86\"}");
    ck_assert_int_eq(b.oom, 0);
    cm_buf_free(&b);
    ck_assert_ptr_null(b.p);
}
END_TEST

START_TEST(array_null_elements)
{
    cm_buf b = {0};
    cm_buf_array_begin(&b);
    cm_buf_array_null(&b);
    cm_buf_array_text_or_null(&b, "2026-12-08");
    cm_buf_array_text_or_null(&b, "");
    cm_buf_array_text_or_null(&b, NULL);
    cm_buf_array_end(&b);
    ck_assert(!b.oom);
    ck_assert_str_eq(b.p, "{NULL,\"2026-12-08\",NULL,NULL}");
    cm_buf_free(&b);
}
END_TEST

START_TEST(columns_side_by_side)
{
    cm_buf cols[2];
    const char *p[2] = {NULL, NULL};
    cm_buf_columns_begin(cols, 2);
    cm_buf_array_int(&cols[0], 7);
    cm_buf_array_text(&cols[1], "a");
    cm_buf_array_int(&cols[0], -1);
    cm_buf_array_text(&cols[1], "b");
    ck_assert_int_eq(cm_buf_columns_end(cols, 2, p), 0);
    ck_assert_str_eq(p[0], "{7,-1}");
    ck_assert_str_eq(p[1], "{\"a\",\"b\"}");
    cm_buf_columns_free(cols, 2);
    cm_buf_columns_begin(cols, 2);
    cols[1].oom = 1; /* a column that could not grow */
    ck_assert_int_eq(cm_buf_columns_end(cols, 2, p), CM_ENOMEM);
    cm_buf_columns_free(cols, 2);
}
END_TEST

START_TEST(buffers_grow_past_their_first_size)
{
    cm_buf b = {0};
    for (int i = 0; i < 10000; i++)
        cm_buf_puts(&b, "0123456789");
    ck_assert_uint_eq(b.len, 100000);
    ck_assert_uint_eq(strlen(b.p), 100000);
    cm_buf_put(&b, "x\0y", 3); /* bytes, not text: the blob of a batch */
    ck_assert_uint_eq(b.len, 100003);
    ck_assert_int_eq(b.p[100001], 0);
    cm_buf_free(&b);
}
END_TEST

typedef struct line {
    char sku[8];
    int64_t qty;
    int64_t price;
} line;

static const char *line_sku(const void *arg, size_t i)
{
    return ((const line *)arg)[i].sku;
}

START_TEST(arena_arrays_of_struct_fields)
{
    cm_arena *a = cm_arena_new(0);
    line l[3] = {{"A", 1, 100}, {"B", 2, 200}, {"C\"", 3, 300}};
    ck_assert_str_eq(cm_buf_int_array(a, &l[0].qty, 3, sizeof l[0]), "{1,2,3}");
    ck_assert_str_eq(cm_buf_int_array(a, &l[0].price, 3, sizeof l[0]), "{100,200,300}");
    ck_assert_str_eq(cm_buf_int_array(a, &l[0].price, 0, sizeof l[0]), "{}");
    ck_assert_str_eq(cm_buf_text_array(a, 3, line_sku, l), "{\"A\",\"B\",\"C\\\"\"}");
    cm_arena_free(a);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("buf");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, array_literals_quote_and_separate);
    tcase_add_test(tc, array_null_elements);
    tcase_add_test(tc, columns_side_by_side);
    tcase_add_test(tc, buffers_grow_past_their_first_size);
    tcase_add_test(tc, arena_arrays_of_struct_fields);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
