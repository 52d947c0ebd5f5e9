/* cm_log writes one JSON object per line to stderr: capture stderr in a
 * pipe and parse what came out */
#include "cm_err.h"
#include "cm_log.h"

#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int saved_stderr = -1;
static int pipe_fd[2];

static void capture_start(void)
{
    ck_assert_int_eq(pipe(pipe_fd), 0);
    saved_stderr = dup(STDERR_FILENO);
    dup2(pipe_fd[1], STDERR_FILENO);
    close(pipe_fd[1]);
}

/* returns what was written since capture_start; caller frees */
static char *capture_end(void)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    static char buf[65536];
    size_t n = 0;
    ssize_t r;
    while ((r = read(pipe_fd[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    close(pipe_fd[0]);
    buf[n] = '\0';
    return strdup(buf);
}

START_TEST(log_line_is_json_with_fields_in_order)
{
    cm_log_init("order", CM_LOG_INFO);
    capture_start();
    cm_log_warn("could not reserve stock: sold out", "tenant", "t1", "order_id", "o-1", NULL);
    char *out = capture_end();
    size_t len = strlen(out);
    ck_assert_uint_gt(len, 0);
    ck_assert_int_eq(out[len - 1], '\n');
    ck_assert_ptr_eq(strchr(out, '\n'), out + len - 1); /* exactly one line */
    json_error_t e;
    json_t *o = json_loads(out, 0, &e);
    ck_assert_msg(o != NULL, "not json: %s", out);
    ck_assert_str_eq(json_string_value(json_object_get(o, "level")), "warn");
    ck_assert_str_eq(json_string_value(json_object_get(o, "svc")), "order");
    ck_assert_str_eq(json_string_value(json_object_get(o, "msg")),
                     "could not reserve stock: sold out");
    ck_assert_str_eq(json_string_value(json_object_get(o, "tenant")), "t1");
    ck_assert_str_eq(json_string_value(json_object_get(o, "order_id")), "o-1");
    const char *ts = json_string_value(json_object_get(o, "ts"));
    ck_assert_uint_eq(strlen(ts), strlen("2026-11-27T06:02:33.123Z"));
    ck_assert_int_eq(ts[strlen(ts) - 1], 'Z');
    /* the order of keys is the order of writing: ts, level, svc, msg first */
    ck_assert_ptr_eq(strstr(out, "{\"ts\":"), out);
    json_decref(o);
    free(out);
}
END_TEST

START_TEST(log_below_level_writes_nothing)
{
    cm_log_init("order", CM_LOG_WARN);
    ck_assert(!cm_log_enabled(CM_LOG_INFO));
    ck_assert(cm_log_enabled(CM_LOG_ERROR));
    capture_start();
    cm_log_info("not shown", NULL);
    cm_log_debug("not shown either", NULL);
    char *out = capture_end();
    ck_assert_str_eq(out, "");
    free(out);
}
END_TEST

START_TEST(log_escapes_and_survives_bad_values)
{
    cm_log_init("svc", CM_LOG_DEBUG);
    capture_start();
    cm_log_error("quote \" newline \n tab \t", "bad", "\xff\xfe", "null_value_skipped", NULL,
                 "after", "x", NULL);
    char *out = capture_end();
    json_t *o = json_loads(out, 0, NULL);
    ck_assert_msg(o != NULL, "not json: %s", out);
    ck_assert_str_eq(json_string_value(json_object_get(o, "msg")), "quote \" newline \n tab \t");
    ck_assert_str_eq(json_string_value(json_object_get(o, "bad")), "<invalid utf-8>");
    /* a NULL value skips its key and does not end the list */
    ck_assert_ptr_null(json_object_get(o, "null_value_skipped"));
    ck_assert_str_eq(json_string_value(json_object_get(o, "after")), "x");
    json_decref(o);
    free(out);
}
END_TEST

START_TEST(log_level_parse)
{
    cm_log_level l;
    ck_assert_int_eq(cm_log_level_parse("debug", &l), 0);
    ck_assert_int_eq(l, CM_LOG_DEBUG);
    ck_assert_int_eq(cm_log_level_parse("error", &l), 0);
    ck_assert_int_eq(l, CM_LOG_ERROR);
    ck_assert_int_eq(cm_log_level_parse("INFO", &l), CM_EINVAL);
    ck_assert_int_eq(cm_log_level_parse("", &l), CM_EINVAL);
    ck_assert_int_eq(cm_log_level_parse(NULL, &l), CM_EINVAL);
}
END_TEST

START_TEST(err_codes_map_to_grpc_status)
{
    /* the mapping is the suite's contract (DESIGN, errors) */
    ck_assert_int_eq(cm_err_grpc_code(CM_OK), 0);
    ck_assert_int_eq(cm_err_grpc_code(CM_EINVAL), 3);     /* INVALID_ARGUMENT */
    ck_assert_int_eq(cm_err_grpc_code(CM_EOVERFLOW), 3);  /* INVALID_ARGUMENT */
    ck_assert_int_eq(cm_err_grpc_code(CM_ENOTFOUND), 5);  /* NOT_FOUND */
    ck_assert_int_eq(cm_err_grpc_code(CM_EEXIST), 6);     /* ALREADY_EXISTS */
    ck_assert_int_eq(cm_err_grpc_code(CM_EPERM), 7);      /* PERMISSION_DENIED */
    ck_assert_int_eq(cm_err_grpc_code(CM_ELIMIT), 8);     /* RESOURCE_EXHAUSTED */
    ck_assert_int_eq(cm_err_grpc_code(CM_ESTATE), 9);     /* FAILED_PRECONDITION */
    ck_assert_int_eq(cm_err_grpc_code(CM_ECONFLICT), 10); /* ABORTED */
    ck_assert_int_eq(cm_err_grpc_code(CM_EIO), 13);       /* INTERNAL */
    ck_assert_int_eq(cm_err_grpc_code(CM_ECHECKSUM), 13); /* INTERNAL */
    ck_assert_int_eq(cm_err_grpc_code(CM_EUNAVAIL), 14);  /* UNAVAILABLE */
    ck_assert_int_eq(cm_err_grpc_code(CM_ETIMEDOUT), 4);  /* DEADLINE_EXCEEDED */
    ck_assert_int_eq(cm_err_grpc_code(CM_EAUTH), 16);     /* UNAUTHENTICATED */
    ck_assert_int_eq(cm_err_grpc_code(CM_ECANCELLED), 1); /* CANCELLED */
    ck_assert_int_eq(cm_err_grpc_code(-999), 13);         /* unknown: INTERNAL */
    for (int e = 0; e >= CM_ECANCELLED; e--)
        ck_assert_str_ne(cm_strerror(e), "unknown error");
    ck_assert_str_eq(cm_strerror(-999), "unknown error");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, log_line_is_json_with_fields_in_order);
    tcase_add_test(tc, log_below_level_writes_nothing);
    tcase_add_test(tc, log_escapes_and_survives_bad_values);
    tcase_add_test(tc, log_level_parse);
    tcase_add_test(tc, err_codes_map_to_grpc_status);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
