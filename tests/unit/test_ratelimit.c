/* cm_ratelimit: buckets on an injected clock, the file and its reload,
 * bounded memory, many threads at once */
#include "cm_err.h"
#include "cm_metrics.h"
#include "cm_ratelimit.h"

#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MS 1000000LL
#define SEC 1000000000LL

static _Atomic int64_t clock_now;

static int64_t fake_now(void *arg)
{
    (void)arg;
    return atomic_load(&clock_now);
}

static cm_ratelimit *limiter(double rate, double burst, const char *file, size_t max_buckets,
                             cm_metrics *m)
{
    atomic_store(&clock_now, 1000 * SEC);
    cm_ratelimit_opts o = {
        .file = file,
        .max_buckets = max_buckets,
        .now_ns = fake_now,
        .metrics = m,
    };
    for (int i = 0; i < CM_RATELIMIT_NCLASSES; i++)
        o.defaults[i] = (cm_ratelimit_limit){rate, burst};
    cm_ratelimit *rl = NULL;
    char err[256] = "";
    ck_assert_msg(cm_ratelimit_new(&rl, &o, err, sizeof err) == 0, "new: %s", err);
    return rl;
}

/* how many of n takes at the current instant pass */
static int takes(cm_ratelimit *rl, const char *tenant, cm_ratelimit_class cls, int n)
{
    int ok = 0;
    for (int i = 0; i < n; i++)
        ok += cm_ratelimit_take(rl, tenant, cls, NULL) == 0;
    return ok;
}

static void write_file(const char *path, const char *text)
{
    /* a fresh file each time: a new inode, whatever the mtime resolution */
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(rename(tmp, path), 0);
}

START_TEST(burst_passes_then_refusal_says_when_a_token_is_there)
{
    cm_ratelimit *rl = limiter(10, 5, NULL, 0, NULL);
    ck_assert_int_eq(takes(rl, "acme", CM_RATELIMIT_WRITE, 5), 5);
    cm_ratelimit_refusal why;
    ck_assert_int_eq(cm_ratelimit_take(rl, "acme", CM_RATELIMIT_WRITE, &why), CM_ELIMIT);
    ck_assert_int_eq(why.retry_ns, 100 * MS); /* 10/s: one token every 100 ms */
    ck_assert(why.limit.rate == 10 && why.limit.burst == 5);
    /* a moment too early is still refused, with the rest of the wait */
    atomic_fetch_add(&clock_now, 99 * MS);
    ck_assert_int_eq(cm_ratelimit_take(rl, "acme", CM_RATELIMIT_WRITE, &why), CM_ELIMIT);
    ck_assert_int_eq(why.retry_ns, 1 * MS);
    atomic_fetch_add(&clock_now, 1 * MS);
    ck_assert_int_eq(takes(rl, "acme", CM_RATELIMIT_WRITE, 3), 1);
    cm_ratelimit_free(rl);
}
END_TEST

START_TEST(refill_is_at_the_rate_and_never_beyond_the_burst)
{
    cm_ratelimit *rl = limiter(4, 2, NULL, 0, NULL);
    ck_assert_int_eq(takes(rl, "t", CM_RATELIMIT_READ, 10), 2);
    /* one second: 4 tokens come, but the bucket holds 2 */
    atomic_fetch_add(&clock_now, SEC);
    ck_assert_int_eq(takes(rl, "t", CM_RATELIMIT_READ, 10), 2);
    /* a long quiet spell: still 2 */
    atomic_fetch_add(&clock_now, 3600 * SEC);
    ck_assert_int_eq(takes(rl, "t", CM_RATELIMIT_READ, 10), 2);
    /* steady calls at the rate all pass: 10 s at 4/s, one every 250 ms */
    int ok = 0;
    for (int i = 0; i < 40; i++) {
        atomic_fetch_add(&clock_now, 250 * MS);
        ok += cm_ratelimit_take(rl, "t", CM_RATELIMIT_READ, NULL) == 0;
    }
    ck_assert_int_eq(ok, 40);
    /* fractional rates: 0.5/s, burst 1 */
    cm_ratelimit_free(rl);
    rl = limiter(0.5, 1, NULL, 0, NULL);
    ck_assert_int_eq(takes(rl, "t", CM_RATELIMIT_READ, 3), 1);
    cm_ratelimit_refusal why;
    ck_assert_int_eq(cm_ratelimit_take(rl, "t", CM_RATELIMIT_READ, &why), CM_ELIMIT);
    ck_assert_int_eq(why.retry_ns, 2 * SEC);
    cm_ratelimit_free(rl);
}
END_TEST

/* a batch call passes on one token and is charged for its other items:
 * the debt is waited out by the next calls, so the rate holds on average */
START_TEST(a_charge_goes_into_debt_that_later_takes_wait_out)
{
    cm_ratelimit *rl = limiter(10, 5, NULL, 0, NULL);
    ck_assert_int_eq(takes(rl, "acme", CM_RATELIMIT_WRITE, 1), 1);
    cm_ratelimit_charge(rl, "acme", CM_RATELIMIT_WRITE, 19); /* a batch of 20 */
    cm_ratelimit_refusal why;
    ck_assert_int_eq(cm_ratelimit_take(rl, "acme", CM_RATELIMIT_WRITE, &why), CM_ELIMIT);
    /* 20 tokens at 10/s from a full bucket of 5: 15 owed, and the next
     * call's own: 1.6 s */
    ck_assert_int_eq(why.retry_ns, 1600 * MS);
    atomic_fetch_add(&clock_now, 1599 * MS);
    ck_assert_int_eq(takes(rl, "acme", CM_RATELIMIT_WRITE, 1), 0);
    atomic_fetch_add(&clock_now, 1 * MS);
    ck_assert_int_eq(takes(rl, "acme", CM_RATELIMIT_WRITE, 3), 1);
    /* other tenants and classes owe nothing; a charge of 0 is nothing */
    ck_assert_int_eq(takes(rl, "other", CM_RATELIMIT_WRITE, 5), 5);
    ck_assert_int_eq(takes(rl, "acme", CM_RATELIMIT_READ, 5), 5);
    cm_ratelimit_charge(rl, "acme2", CM_RATELIMIT_WRITE, 0);
    ck_assert_int_eq(takes(rl, "acme2", CM_RATELIMIT_WRITE, 6), 5);
    cm_ratelimit_free(rl);
}
END_TEST

START_TEST(tenants_and_classes_have_their_own_buckets)
{
    cm_ratelimit *rl = limiter(1, 3, NULL, 0, NULL);
    ck_assert_int_eq(takes(rl, "a", CM_RATELIMIT_WRITE, 10), 3);
    ck_assert_int_eq(takes(rl, "a", CM_RATELIMIT_READ, 10), 3);
    ck_assert_int_eq(takes(rl, "a", CM_RATELIMIT_ADMIN, 10), 3);
    ck_assert_int_eq(takes(rl, "b", CM_RATELIMIT_WRITE, 10), 3);
    ck_assert_int_eq(takes(rl, "a", CM_RATELIMIT_WRITE, 1), 0);
    ck_assert_uint_eq(cm_ratelimit_buckets(rl), 4);
    cm_ratelimit_free(rl);
}
END_TEST

START_TEST(no_limit_configured_passes_everything_and_keeps_nothing)
{
    cm_ratelimit *rl = limiter(0, 0, NULL, 0, NULL);
    ck_assert(cm_ratelimit_off(rl));
    ck_assert_int_eq(takes(rl, "a", CM_RATELIMIT_WRITE, 10000), 10000);
    ck_assert_uint_eq(cm_ratelimit_buckets(rl), 0);
    cm_ratelimit_free(rl);
}
END_TEST

START_TEST(made_up_tenants_cannot_grow_memory)
{
    cm_ratelimit *rl = limiter(1, 1, NULL, 1024, NULL);
    char t[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(t, sizeof t, "flood-%d", i);
        ck_assert_int_eq(cm_ratelimit_take(rl, t, CM_RATELIMIT_READ, NULL), 0);
    }
    ck_assert_uint_le(cm_ratelimit_buckets(rl), 1024);
    ck_assert_uint_ge(cm_ratelimit_buckets(rl), 1000);
    /* a tenant in steady use keeps its bucket through a flood: it is never
     * the least recently used of its shard */
    ck_assert_int_eq(takes(rl, "steady", CM_RATELIMIT_READ, 2), 1);
    for (int i = 0; i < 20000; i++) {
        snprintf(t, sizeof t, "again-%d", i);
        cm_ratelimit_take(rl, t, CM_RATELIMIT_READ, NULL);
        if (i % 8 == 0)
            ck_assert_int_eq(cm_ratelimit_take(rl, "steady", CM_RATELIMIT_READ, NULL), CM_ELIMIT);
    }
    cm_ratelimit_free(rl);
}
END_TEST

typedef struct taker {
    cm_ratelimit *rl;
    const char *tenant;
    int n;
    int ok;
    int advance; /* this thread moves the clock */
} taker;

static void *take_many(void *arg)
{
    taker *t = arg;
    for (int i = 0; i < t->n; i++) {
        if (t->advance)
            atomic_fetch_add(&clock_now, 1 * MS);
        t->ok += cm_ratelimit_take(t->rl, t->tenant, CM_RATELIMIT_WRITE, NULL) == 0;
    }
    return NULL;
}

START_TEST(many_threads_never_take_more_than_the_rate_allows)
{
    /* a frozen clock: exactly the burst passes, however many threads race */
    cm_ratelimit *rl = limiter(100, 50, NULL, 0, NULL);
    enum { N = 8 };
    pthread_t th[N];
    taker tk[N];
    for (int i = 0; i < N; i++) {
        tk[i] = (taker){rl, "hot", 20000, 0, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, take_many, &tk[i]), 0);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += tk[i].ok;
    }
    ck_assert_int_eq(ok, 50);
    cm_ratelimit_free(rl);

    /* a moving clock: at most burst + rate * elapsed */
    rl = limiter(100, 50, NULL, 0, NULL);
    int64_t t0 = atomic_load(&clock_now);
    for (int i = 0; i < N; i++) {
        tk[i] = (taker){rl, "hot", 5000, 0, i == 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, take_many, &tk[i]), 0);
    }
    ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += tk[i].ok;
    }
    double elapsed_s = (double)(atomic_load(&clock_now) - t0) / SEC; /* 5 s */
    ck_assert_int_le(ok, 50 + (int)(100 * elapsed_s) + 1);
    ck_assert_int_ge(ok, (int)(100 * elapsed_s) / 2); /* and the limit is not starved */
    cm_ratelimit_free(rl);
}
END_TEST

START_TEST(file_sets_limits_per_tenant_and_reloads_when_it_changes)
{
    char path[] = "/tmp/commerce-ratelimit-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    write_file(path, "{\"default\": {\"write\": {\"rate\": 100, \"burst\": 100}},"
                     " \"tenants\": {\"tiny\": {\"write\": {\"rate\": 1, \"burst\": 2}},"
                     "               \"free\": {\"write\": {\"rate\": 0}}}}");
    cm_metrics *m = cm_metrics_new();
    cm_ratelimit *rl = limiter(0, 0, path, 0, m);
    ck_assert(!cm_ratelimit_off(rl));
    ck_assert_int_eq(takes(rl, "tiny", CM_RATELIMIT_WRITE, 10), 2);
    ck_assert_int_eq(takes(rl, "other", CM_RATELIMIT_WRITE, 150), 100);
    ck_assert_int_eq(takes(rl, "free", CM_RATELIMIT_WRITE, 1000), 1000);
    /* reads were left out: the creation default, unlimited */
    ck_assert_int_eq(takes(rl, "tiny", CM_RATELIMIT_READ, 1000), 1000);
    char *text = NULL;
    ck_assert_int_eq(cm_metrics_render(m, &text, NULL), 0);
    ck_assert_ptr_nonnull(
        strstr(text, "rpc_server_rate_limited_total{tenant=\"tiny\",class=\"write\"} 8"));
    ck_assert_ptr_nonnull(
        strstr(text, "rpc_server_rate_limited_total{tenant=\"other\",class=\"write\"} 50"));
    free(text);

    /* a change is read by the next reload (the runtime's once a second),
     * without a restart; takes never look at the file */
    char err[256];
    ck_assert_int_eq(cm_ratelimit_reload(rl, 0, err, sizeof err), 0); /* unchanged */
    write_file(path, "{\"tenants\": {\"tiny\": {\"write\": {\"rate\": 1000, \"burst\": 1000}}}}");
    atomic_fetch_add(&clock_now, SEC);
    ck_assert_int_eq(takes(rl, "tiny", CM_RATELIMIT_WRITE, 5), 1); /* the old limit still */
    ck_assert_int_eq(cm_ratelimit_reload(rl, 0, err, sizeof err), 1);
    ck_assert_int_eq(takes(rl, "tiny", CM_RATELIMIT_WRITE, 500), 500);
    ck_assert(cm_ratelimit_limit_of(rl, "other", CM_RATELIMIT_WRITE).rate == 0);

    /* a bad file keeps the limits in force */
    write_file(path, "{\"tenants\": {\"tiny\": {\"write\": {\"rate\": -1}}}}");
    ck_assert_int_eq(cm_ratelimit_reload(rl, 0, err, sizeof err), CM_EINVAL);
    ck_assert_int_eq(cm_ratelimit_reload(rl, 0, err, sizeof err), 0); /* reported once */
    ck_assert_ptr_nonnull(strstr(err, "tenants.tiny.write.rate"));
    ck_assert(cm_ratelimit_limit_of(rl, "tiny", CM_RATELIMIT_WRITE).rate == 1000);
    atomic_fetch_add(&clock_now, 2 * SEC);
    ck_assert_int_eq(takes(rl, "tiny", CM_RATELIMIT_WRITE, 10), 10);
    cm_ratelimit_free(rl);
    cm_metrics_free(m);
    unlink(path);
}
END_TEST

START_TEST(bad_files_are_refused_at_start_naming_the_problem)
{
    char path[] = "/tmp/commerce-ratelimit-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"{", "not JSON"},
        {"[]", "must be an object"},
        {"{\"defaults\": {}}", "unknown key \"defaults\""},
        {"{\"default\": {\"writes\": {\"rate\": 1}}}", "default.writes: unknown class"},
        {"{\"default\": {\"write\": {\"burst\": 5}}}", "default.write: rate is required"},
        {"{\"default\": {\"write\": {\"rate\": 1, \"burst\": 0}}}", "default.write.burst"},
        {"{\"default\": {\"write\": {\"rate\": \"5\"}}}", "default.write.rate"},
        {"{\"tenants\": {\"a b\": {}}}", "not a tenant id"},
        {"{\"tenants\": {\"a\": {\"read\": {\"rate\": 1, \"every\": 2}}}}", "unknown setting"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file(path, cases[i].text);
        cm_ratelimit_opts o = {.file = path};
        cm_ratelimit *rl = NULL;
        char err[256] = "";
        ck_assert_int_eq(cm_ratelimit_new(&rl, &o, err, sizeof err), CM_EINVAL);
        ck_assert_ptr_null(rl);
        ck_assert_msg(strstr(err, cases[i].want), "%s: got \"%s\"", cases[i].text, err);
    }
    unlink(path);
    cm_ratelimit_opts o = {.file = path};
    cm_ratelimit *rl = NULL;
    char err[256] = "";
    ck_assert_int_eq(cm_ratelimit_new(&rl, &o, err, sizeof err), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "could not read"));
}
END_TEST

START_TEST(quotas_come_from_the_tenant_then_the_default_then_the_service)
{
    char path[] = "/tmp/commerce-ratelimit-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    write_file(path, "{\"default\": {\"quotas\": {\"skus\": 100, \"channels\": 7}},"
                     " \"tenants\": {\"small\": {\"quotas\": {\"skus\": 3}},"
                     "               \"plain\": {\"read\": {\"rate\": 5}}}}");
    cm_ratelimit *rl = limiter(0, 0, path, 0, NULL);
    ck_assert_int_eq(cm_ratelimit_quota(rl, "small", "skus", 1000000), 3);
    ck_assert_int_eq(cm_ratelimit_quota(rl, "small", "channels", 1000000), 7);
    ck_assert_int_eq(cm_ratelimit_quota(rl, "plain", "skus", 1000000), 100);
    ck_assert_int_eq(cm_ratelimit_quota(rl, "other", "skus", 1000000), 100);
    ck_assert_int_eq(cm_ratelimit_quota(rl, "other", "flash_sales", 42), 42);
    ck_assert_int_eq(cm_ratelimit_quota(NULL, "other", "skus", 9), 9);
    cm_ratelimit_free(rl);
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"{\"default\": {\"quotas\": {\"skus\": -1}}}", "default.quotas.skus"},
        {"{\"default\": {\"quotas\": {\"skus\": 1.5}}}", "default.quotas.skus"},
        {"{\"default\": {\"quotas\": {\"SKUs\": 1}}}", "not a quota name"},
        {"{\"tenants\": {\"a\": {\"quotas\": []}}}", "tenants.a.quotas"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(path, bad[i].text);
        cm_ratelimit_opts o = {.file = path};
        char err[256] = "";
        ck_assert_int_eq(cm_ratelimit_new(&rl, &o, err, sizeof err), CM_EINVAL);
        ck_assert_msg(strstr(err, bad[i].want), "%s: got \"%s\"", bad[i].text, err);
    }
    unlink(path);
}
END_TEST

START_TEST(take_costs_little)
{
    /* not a benchmark gate: prints the cost for the README, fails only
     * when something is badly wrong (a lock convoy, IO per call) */
    cm_ratelimit_opts o = {0};
    for (int i = 0; i < CM_RATELIMIT_NCLASSES; i++)
        o.defaults[i] = (cm_ratelimit_limit){1e6, 1e6};
    cm_ratelimit *rl = NULL;
    ck_assert_int_eq(cm_ratelimit_new(&rl, &o, NULL, 0), 0);
    char t[64][16];
    for (int i = 0; i < 64; i++)
        snprintf(t[i], sizeof t[i], "tenant-%d", i);
    enum { N = 2000000 };
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < N; i++)
        cm_ratelimit_take(rl, t[i & 63], CM_RATELIMIT_WRITE, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / N;
    printf("ratelimit: %.0f ns per take (64 tenants, one thread)\n", ns);
    ck_assert(ns < 20000);
    /* the worst case: every thread on one tenant's bucket */
    enum { T = 4, PER = 500000 };
    pthread_t th[T];
    taker tk[T];
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < T; i++) {
        tk[i] = (taker){rl, "one", PER, 0, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, take_many, &tk[i]), 0);
    }
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (T * PER);
    printf("ratelimit: %.0f ns per take (one tenant, %d threads at once)\n", ns, T);
    ck_assert(ns < 20000);
    cm_ratelimit_free(rl);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ratelimit");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, burst_passes_then_refusal_says_when_a_token_is_there);
    tcase_add_test(tc, refill_is_at_the_rate_and_never_beyond_the_burst);
    tcase_add_test(tc, a_charge_goes_into_debt_that_later_takes_wait_out);
    tcase_add_test(tc, tenants_and_classes_have_their_own_buckets);
    tcase_add_test(tc, no_limit_configured_passes_everything_and_keeps_nothing);
    tcase_add_test(tc, made_up_tenants_cannot_grow_memory);
    tcase_add_test(tc, many_threads_never_take_more_than_the_rate_allows);
    tcase_add_test(tc, file_sets_limits_per_tenant_and_reloads_when_it_changes);
    tcase_add_test(tc, bad_files_are_refused_at_start_naming_the_problem);
    tcase_add_test(tc, quotas_come_from_the_tenant_then_the_default_then_the_service);
    tcase_add_test(tc, take_costs_little);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
