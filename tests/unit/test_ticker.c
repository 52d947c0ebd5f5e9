/* cm_ticker: periodic runs, wake-ups, stop */
#include "cm_err.h"
#include "cm_ticker.h"

#include <check.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static atomic_int runs;

static void count(void *arg)
{
    (void)arg;
    atomic_fetch_add(&runs, 1);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

START_TEST(ticker_runs_every_period)
{
    atomic_store(&runs, 0);
    cm_ticker *t = NULL;
    ck_assert_int_eq(cm_ticker_start(&t, 20, count, NULL), 0);
    usleep(300000);
    cm_ticker_free(t);
    int n = atomic_load(&runs);
    /* about 15 in 300 ms; a loaded machine runs fewer, never many more */
    ck_assert_msg(n >= 3 && n <= 16, "%d runs in 300 ms at 20 ms", n);
    usleep(100000);
    ck_assert_int_eq(atomic_load(&runs), n); /* stopped: no more */
}
END_TEST

START_TEST(ticker_wake_runs_at_once)
{
    atomic_store(&runs, 0);
    cm_ticker *t = NULL;
    ck_assert_int_eq(cm_ticker_start(&t, 60000, count, NULL), 0);
    usleep(50000);
    ck_assert_int_eq(atomic_load(&runs), 0);
    long long t0 = now_ms();
    cm_ticker_wake(t);
    while (atomic_load(&runs) == 0 && now_ms() - t0 < 5000)
        usleep(1000);
    ck_assert_int_eq(atomic_load(&runs), 1);
    cm_ticker_free(t); /* does not wait for the next period */
    ck_assert_int_lt(now_ms() - t0, 5000);
}
END_TEST

START_TEST(ticker_refuses_bad_arguments)
{
    cm_ticker *t = NULL;
    ck_assert_int_eq(cm_ticker_start(&t, 0, count, NULL), CM_EINVAL);
    ck_assert_int_eq(cm_ticker_start(&t, 10, NULL, NULL), CM_EINVAL);
    cm_ticker_free(NULL);
    cm_ticker_wake(NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ticker");
    TCase *tc = tcase_create("ticker");
    tcase_add_test(tc, ticker_runs_every_period);
    tcase_add_test(tc, ticker_wake_runs_at_once);
    tcase_add_test(tc, ticker_refuses_bad_arguments);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
