#include "cm_err.h"
#include "cm_file.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[64];

static void write_file(const char *content, size_t n)
{
    snprintf(path, sizeof path, "/tmp/cm_file_test.%d", (int)getpid());
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(content, 1, n, f), n);
    fclose(f);
}

START_TEST(file_read_whole_and_nul_terminated)
{
    write_file("-----BEGIN\nabc\n", 15);
    char *buf;
    size_t len;
    ck_assert_int_eq(cm_file_read(path, 15, &buf, &len), 0); /* exactly the limit */
    ck_assert_uint_eq(len, 15);
    ck_assert_str_eq(buf, "-----BEGIN\nabc\n");
    free(buf);
    unlink(path);
}
END_TEST

START_TEST(file_larger_than_max_is_refused)
{
    write_file("0123456789", 10);
    char *buf = (char *)1;
    ck_assert_int_eq(cm_file_read(path, 9, &buf, NULL), CM_EIO);
    ck_assert_int_eq(errno, EFBIG);
    ck_assert_ptr_null(buf);
    unlink(path);
}
END_TEST

START_TEST(file_missing_is_eio)
{
    char *buf;
    ck_assert_int_eq(cm_file_read("/nonexistent/cm_file", 100, &buf, NULL), CM_EIO);
    ck_assert_int_eq(errno, ENOENT);
    ck_assert_ptr_null(buf);
}
END_TEST

START_TEST(file_empty_reads_as_empty_string)
{
    write_file("", 0);
    char *buf;
    size_t len = 99;
    ck_assert_int_eq(cm_file_read(path, 100, &buf, &len), 0);
    ck_assert_uint_eq(len, 0);
    ck_assert_str_eq(buf, "");
    free(buf);
    unlink(path);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("file");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, file_read_whole_and_nul_terminated);
    tcase_add_test(tc, file_larger_than_max_is_refused);
    tcase_add_test(tc, file_missing_is_eio);
    tcase_add_test(tc, file_empty_reads_as_empty_string);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
