#include "cm_err.h"
#include "cm_metrics.h"

#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *render(cm_metrics *m)
{
    char *out = NULL;
    size_t len = 0;
    ck_assert_int_eq(cm_metrics_render(m, &out, &len), 0);
    ck_assert_ptr_nonnull(out);
    ck_assert_uint_eq(len, strlen(out));
    return out;
}

static void assert_renders(cm_metrics *m, const char *expected)
{
    char *out = render(m);
    ck_assert_str_eq(out, expected);
    free(out);
}

START_TEST(empty_registry_renders_nothing)
{
    cm_metrics *m = cm_metrics_new();
    assert_renders(m, "");
    cm_metrics_free(m);
}
END_TEST

START_TEST(counter_renders_with_and_without_labels)
{
    cm_metrics *m = cm_metrics_new();
    cm_counter *jobs = cm_metrics_counter(m, "jobs_total", "jobs done", NULL);
    cm_counter *ok = cm_metrics_counter(m, "rpc_requests_total", "calls served",
                                        "method=\"/svc/Get\",code=\"OK\"");
    cm_counter *bad = cm_metrics_counter(m, "rpc_requests_total", "calls served",
                                         "method=\"/svc/Get\",code=\"NOT_FOUND\"");
    ck_assert_ptr_nonnull(jobs);
    cm_counter_add(jobs, 3);
    cm_counter_add(ok, 40);
    cm_counter_add(ok, 2);
    ck_assert_uint_eq(cm_counter_value(ok), 42);
    ck_assert_uint_eq(cm_counter_value(bad), 0);
    assert_renders(m, "# HELP jobs_total jobs done\n"
                      "# TYPE jobs_total counter\n"
                      "jobs_total 3\n"
                      "# HELP rpc_requests_total calls served\n"
                      "# TYPE rpc_requests_total counter\n"
                      "rpc_requests_total{method=\"/svc/Get\",code=\"OK\"} 42\n"
                      "rpc_requests_total{method=\"/svc/Get\",code=\"NOT_FOUND\"} 0\n");
    cm_metrics_free(m);
}
END_TEST

START_TEST(removed_counter_leaves_the_scrape)
{
    cm_metrics *m = cm_metrics_new();
    cm_counter *a = cm_metrics_counter(m, "sale_total", "per sale", "sale=\"a\"");
    cm_counter *b = cm_metrics_counter(m, "sale_total", "per sale", "sale=\"b\"");
    cm_counter *c = cm_metrics_counter(m, "sale_total", "per sale", "sale=\"c\"");
    cm_counter_add(a, 1);
    cm_counter_add(b, 2);
    cm_counter_add(c, 3);
    cm_metrics_counter_remove(m, b); /* the middle of the family */
    cm_metrics_counter_remove(m, c); /* its last: appending must still work */
    cm_counter *d = cm_metrics_counter(m, "sale_total", "per sale", "sale=\"d\"");
    cm_counter_add(d, 4);
    assert_renders(m, "# HELP sale_total per sale\n"
                      "# TYPE sale_total counter\n"
                      "sale_total{sale=\"a\"} 1\n"
                      "sale_total{sale=\"d\"} 4\n");
    /* registered again: a new series from 0 (a counter reset to Prometheus) */
    cm_counter *b2 = cm_metrics_counter(m, "sale_total", "per sale", "sale=\"b\"");
    ck_assert_uint_eq(cm_counter_value(b2), 0);
    cm_metrics_counter_remove(m, a); /* the first */
    cm_metrics_counter_remove(m, NULL);
    assert_renders(m, "# HELP sale_total per sale\n"
                      "# TYPE sale_total counter\n"
                      "sale_total{sale=\"d\"} 4\n"
                      "sale_total{sale=\"b\"} 0\n");
    cm_metrics_free(m);
}
END_TEST

START_TEST(gauge_renders_shortest_round_trip_values)
{
    cm_metrics *m = cm_metrics_new();
    cm_gauge *a = cm_metrics_gauge(m, "temp", "a gauge", "");
    cm_gauge *b = cm_metrics_gauge(m, "temp", "a gauge", "room=\"b\"");
    cm_gauge *c = cm_metrics_gauge(m, "temp", "a gauge", "room=\"c\"");
    cm_gauge *d = cm_metrics_gauge(m, "temp", "a gauge", "room=\"d\"");
    cm_gauge *e = cm_metrics_gauge(m, "temp", "a gauge", "room=\"e\"");
    cm_gauge_set(a, 1.5);
    cm_gauge_add(a, -0.25);
    ck_assert(cm_gauge_value(a) == 1.25);
    cm_gauge_set(b, 0.1);
    cm_gauge_set(c, 1e-7);
    cm_gauge_set(d, INFINITY);
    cm_gauge_set(e, NAN);
    assert_renders(m, "# HELP temp a gauge\n"
                      "# TYPE temp gauge\n"
                      "temp 1.25\n"
                      "temp{room=\"b\"} 0.1\n"
                      "temp{room=\"c\"} 1e-07\n"
                      "temp{room=\"d\"} +Inf\n"
                      "temp{room=\"e\"} NaN\n");
    cm_metrics_free(m);
}
END_TEST

START_TEST(histogram_renders_cumulative_buckets)
{
    static const double bounds[] = {0.5, 1, 10};
    cm_metrics *m = cm_metrics_new();
    cm_histogram *h = cm_metrics_histogram(m, "size", "sizes seen", NULL, bounds, 3);
    ck_assert_ptr_nonnull(h);
    /* 0.5 and 1 sit exactly on bounds: le is inclusive */
    cm_histogram_observe(h, 0.25);
    cm_histogram_observe(h, 0.5);
    cm_histogram_observe(h, 1);
    cm_histogram_observe(h, 2);
    cm_histogram_observe(h, 64);
    ck_assert_uint_eq(cm_histogram_count(h), 5);
    assert_renders(m, "# HELP size sizes seen\n"
                      "# TYPE size histogram\n"
                      "size_bucket{le=\"0.5\"} 2\n"
                      "size_bucket{le=\"1\"} 3\n"
                      "size_bucket{le=\"10\"} 4\n"
                      "size_bucket{le=\"+Inf\"} 5\n"
                      "size_sum 67.75\n"
                      "size_count 5\n");
    cm_metrics_free(m);
}
END_TEST

START_TEST(histogram_merges_series_labels_with_le)
{
    static const double bounds[] = {0.25, 2.5};
    cm_metrics *m = cm_metrics_new();
    cm_histogram *h =
        cm_metrics_histogram(m, "rpc_seconds", "latency", "method=\"Get\"", bounds, 2);
    cm_histogram_observe(h, 0.125);
    cm_histogram_observe(h, 3);
    assert_renders(m, "# HELP rpc_seconds latency\n"
                      "# TYPE rpc_seconds histogram\n"
                      "rpc_seconds_bucket{method=\"Get\",le=\"0.25\"} 1\n"
                      "rpc_seconds_bucket{method=\"Get\",le=\"2.5\"} 1\n"
                      "rpc_seconds_bucket{method=\"Get\",le=\"+Inf\"} 2\n"
                      "rpc_seconds_sum{method=\"Get\"} 3.125\n"
                      "rpc_seconds_count{method=\"Get\"} 2\n");
    cm_metrics_free(m);
}
END_TEST

START_TEST(latency_buckets_span_100us_to_10s)
{
    ck_assert_uint_eq(cm_metrics_latency_nbuckets, 16);
    ck_assert(cm_metrics_latency_buckets[0] == 0.0001);
    ck_assert(cm_metrics_latency_buckets[15] == 10);
    for (size_t i = 1; i < cm_metrics_latency_nbuckets; i++)
        ck_assert(cm_metrics_latency_buckets[i] > cm_metrics_latency_buckets[i - 1]);

    cm_metrics *m = cm_metrics_new();
    cm_histogram *h = cm_metrics_histogram(m, "op_seconds", "op", NULL, cm_metrics_latency_buckets,
                                           cm_metrics_latency_nbuckets);
    cm_histogram_observe(h, 0.0003);
    char *out = render(m);
    ck_assert_ptr_nonnull(strstr(out, "op_seconds_bucket{le=\"0.0001\"} 0\n"));
    ck_assert_ptr_nonnull(strstr(out, "op_seconds_bucket{le=\"0.00025\"} 0\n"));
    ck_assert_ptr_nonnull(strstr(out, "op_seconds_bucket{le=\"0.0005\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(out, "op_seconds_bucket{le=\"10\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(out, "op_seconds_bucket{le=\"+Inf\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(out, "op_seconds_sum 0.0003\n"));
    free(out);
    cm_metrics_free(m);
}
END_TEST

START_TEST(families_are_grouped_when_registered_interleaved)
{
    cm_metrics *m = cm_metrics_new();
    cm_counter_add(cm_metrics_counter(m, "a_total", "a", "x=\"1\""), 1);
    cm_gauge_set(cm_metrics_gauge(m, "b", "b", NULL), 2);
    cm_counter_add(cm_metrics_counter(m, "a_total", "a", "x=\"2\""), 3);
    assert_renders(m, "# HELP a_total a\n"
                      "# TYPE a_total counter\n"
                      "a_total{x=\"1\"} 1\n"
                      "a_total{x=\"2\"} 3\n"
                      "# HELP b b\n"
                      "# TYPE b gauge\n"
                      "b 2\n");
    cm_metrics_free(m);
}
END_TEST

START_TEST(help_text_is_escaped)
{
    cm_metrics *m = cm_metrics_new();
    cm_metrics_counter(m, "odd_total", "first line\nback\\slash \"quoted\"", NULL);
    assert_renders(m, "# HELP odd_total first line\\nback\\\\slash \"quoted\"\n"
                      "# TYPE odd_total counter\n"
                      "odd_total 0\n");
    cm_metrics_free(m);
}
END_TEST

START_TEST(get_or_create_returns_the_same_series)
{
    cm_metrics *m = cm_metrics_new();
    cm_counter *a = cm_metrics_counter(m, "hits_total", "hits", "k=\"v\"");
    ck_assert_ptr_eq(cm_metrics_counter(m, "hits_total", "other help", "k=\"v\""), a);
    ck_assert_ptr_ne(cm_metrics_counter(m, "hits_total", "hits", "k=\"w\""), a);
    /* NULL and "" both mean no labels */
    cm_gauge *g = cm_metrics_gauge(m, "level", "level", NULL);
    ck_assert_ptr_eq(cm_metrics_gauge(m, "level", "level", ""), g);
    cm_histogram *h = cm_metrics_histogram(m, "lat", "lat", NULL, cm_metrics_latency_buckets,
                                           cm_metrics_latency_nbuckets);
    ck_assert_ptr_eq(cm_metrics_histogram(m, "lat", "lat", NULL, cm_metrics_latency_buckets,
                                          cm_metrics_latency_nbuckets),
                     h);

    /* many series force the lookup table to grow; every one stays findable */
    cm_counter *many[300];
    char labels[32];
    for (int i = 0; i < 300; i++) {
        snprintf(labels, sizeof labels, "i=\"%d\"", i);
        many[i] = cm_metrics_counter(m, "many_total", "many", labels);
        ck_assert_ptr_nonnull(many[i]);
    }
    for (int i = 0; i < 300; i++) {
        snprintf(labels, sizeof labels, "i=\"%d\"", i);
        ck_assert_ptr_eq(cm_metrics_counter(m, "many_total", "many", labels), many[i]);
    }
    ck_assert_ptr_eq(cm_metrics_counter(m, "hits_total", "hits", "k=\"v\""), a);
    cm_metrics_free(m);
}
END_TEST

START_TEST(type_clash_returns_null)
{
    cm_metrics *m = cm_metrics_new();
    ck_assert_ptr_nonnull(cm_metrics_counter(m, "thing", "t", NULL));
    ck_assert_ptr_null(cm_metrics_gauge(m, "thing", "t", NULL));
    ck_assert_ptr_null(cm_metrics_gauge(m, "thing", "t", "other=\"labels\""));
    ck_assert_ptr_null(cm_metrics_histogram(m, "thing", "t", NULL, cm_metrics_latency_buckets,
                                            cm_metrics_latency_nbuckets));
    /* the failed registrations left nothing behind */
    assert_renders(m, "# HELP thing t\n# TYPE thing counter\nthing 0\n");
    cm_metrics_free(m);
}
END_TEST

START_TEST(invalid_names_and_bounds_are_refused)
{
    static const double unsorted[] = {1, 0.5};
    cm_metrics *m = cm_metrics_new();
    ck_assert_ptr_null(cm_metrics_counter(m, "", "x", NULL));
    ck_assert_ptr_null(cm_metrics_counter(m, NULL, "x", NULL));
    ck_assert_ptr_null(cm_metrics_counter(m, "9lives", "x", NULL));
    ck_assert_ptr_null(cm_metrics_counter(m, "has space", "x", NULL));
    ck_assert_ptr_null(cm_metrics_counter(m, "ok_name", "x", "a=\"1\"\nevil 1"));
    ck_assert_ptr_null(cm_metrics_histogram(m, "h", "x", NULL, unsorted, 2));
    ck_assert_ptr_nonnull(cm_metrics_counter(m, "ns:sub_total", "x", NULL));
    cm_metrics_free(m);
}
END_TEST

#define THREADS 4
#define PER_THREAD 100000

struct hammer {
    cm_counter *c;
    cm_gauge *g;
    cm_histogram *h;
};

static void *hammer_main(void *arg)
{
    struct hammer *w = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        cm_counter_add(w->c, 1);
        cm_gauge_add(w->g, 1.0);
        cm_histogram_observe(w->h, (i & 1) ? 0.001 : 1.0);
    }
    return NULL;
}

START_TEST(concurrent_updates_sum_exactly)
{
    static const double bounds[] = {0.01};
    cm_metrics *m = cm_metrics_new();
    struct hammer w = {
        .c = cm_metrics_counter(m, "n_total", "n", NULL),
        .g = cm_metrics_gauge(m, "g", "g", NULL),
        .h = cm_metrics_histogram(m, "h", "h", NULL, bounds, 1),
    };
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, hammer_main, &w), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    ck_assert_uint_eq(cm_counter_value(w.c), (uint64_t)THREADS * PER_THREAD);
    ck_assert(cm_gauge_value(w.g) == (double)THREADS * PER_THREAD);
    ck_assert_uint_eq(cm_histogram_count(w.h), (uint64_t)THREADS * PER_THREAD);
    char *out = render(m);
    ck_assert_ptr_nonnull(strstr(out, "n_total 400000\n"));
    ck_assert_ptr_nonnull(strstr(out, "g 400000\n"));
    ck_assert_ptr_nonnull(strstr(out, "h_bucket{le=\"0.01\"} 200000\n"));
    ck_assert_ptr_nonnull(strstr(out, "h_bucket{le=\"+Inf\"} 400000\n"));
    free(out);
    cm_metrics_free(m);
}
END_TEST

struct registrar {
    cm_metrics *m;
    cm_counter *got[THREADS];
};

static void *register_main(void *arg)
{
    struct registrar *r = arg;
    for (int i = 0; i < THREADS; i++)
        r->got[i] = cm_metrics_counter(r->m, "shared_total", "s", "k=\"v\"");
    return NULL;
}

START_TEST(concurrent_registration_yields_one_series)
{
    struct registrar r[THREADS];
    cm_metrics *m = cm_metrics_new();
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        r[i].m = m;
        ck_assert_int_eq(pthread_create(&t[i], NULL, register_main, &r[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS; i++)
        for (int j = 0; j < THREADS; j++)
            ck_assert_ptr_eq(r[i].got[j], r[0].got[0]);
    cm_metrics_free(m);
}
END_TEST

START_TEST(default_registry_is_shared_and_freed_at_exit)
{
    cm_metrics *m = cm_metrics_default();
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_eq(cm_metrics_default(), m);
    cm_counter_add(cm_metrics_counter(m, "boot_total", "boots", NULL), 1);
    char *out = render(m);
    ck_assert_ptr_nonnull(strstr(out, "boot_total 1\n"));
    free(out);
    /* no free here: the atexit handler does it, and leak checking confirms */
}
END_TEST

static Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, empty_registry_renders_nothing);
    tcase_add_test(tc, counter_renders_with_and_without_labels);
    tcase_add_test(tc, gauge_renders_shortest_round_trip_values);
    tcase_add_test(tc, histogram_renders_cumulative_buckets);
    tcase_add_test(tc, histogram_merges_series_labels_with_le);
    tcase_add_test(tc, latency_buckets_span_100us_to_10s);
    tcase_add_test(tc, families_are_grouped_when_registered_interleaved);
    tcase_add_test(tc, help_text_is_escaped);
    tcase_add_test(tc, get_or_create_returns_the_same_series);
    tcase_add_test(tc, type_clash_returns_null);
    tcase_add_test(tc, invalid_names_and_bounds_are_refused);
    tcase_add_test(tc, concurrent_updates_sum_exactly);
    tcase_add_test(tc, concurrent_registration_yields_one_series);
    tcase_add_test(tc, default_registry_is_shared_and_freed_at_exit);
    tcase_add_test(tc, removed_counter_leaves_the_scrape);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(metrics_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
