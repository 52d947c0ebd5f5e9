/* cm_group: batches form, each caller gets its own outcome, an error
 * reaches exactly its batch, the leader's connection is used, shutdown
 * drains */
#include "cm_err.h"
#include "cm_group.h"

#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREADS 16
#define PER_THREAD 150
#define MAX_BATCHES (THREADS * PER_THREAD)

typedef struct item {
    int value, result;
    int poison; /* the commit fails the batch holding it */
    void *conn; /* the submitting thread's connection */
    int batch;  /* which commit held it */
    int committed;
} item;

/* what the commit function saw */
static struct {
    pthread_mutex_t mu;
    int nbatches;
    int size[MAX_BATCHES];
    int failed[MAX_BATCHES];
    int in_flight, max_in_flight;
    int foreign_conn; /* batches whose conn was no item's in them */
} seen = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void reset_seen(void)
{
    pthread_mutex_lock(&seen.mu);
    seen.nbatches = seen.in_flight = seen.max_in_flight = seen.foreign_conn = 0;
    memset(seen.size, 0, sizeof seen.size);
    memset(seen.failed, 0, sizeof seen.failed);
    pthread_mutex_unlock(&seen.mu);
}

/* like a transaction: ~1 ms (the fsync), each item's own outcome written
 * into it, the batch failed as a whole when it holds a poisoned item */
static int commit(void *arg, void *conn, void *const *items, size_t n)
{
    (void)arg;
    pthread_mutex_lock(&seen.mu);
    int b = seen.nbatches++;
    seen.in_flight++;
    if (seen.in_flight > seen.max_in_flight)
        seen.max_in_flight = seen.in_flight;
    pthread_mutex_unlock(&seen.mu);
    usleep(1000);
    int poisoned = 0, own = 0;
    for (size_t i = 0; i < n; i++) {
        item *it = items[i];
        poisoned |= it->poison;
        own |= it->conn == conn;
    }
    for (size_t i = 0; i < n; i++) {
        item *it = items[i];
        it->batch = b;
        it->result = poisoned ? 0 : it->value * 2;
        it->committed = !poisoned;
    }
    pthread_mutex_lock(&seen.mu);
    seen.size[b] = (int)n;
    seen.failed[b] = poisoned;
    seen.foreign_conn += !own;
    seen.in_flight--;
    pthread_mutex_unlock(&seen.mu);
    return poisoned ? CM_EINTERNAL : 0;
}

typedef struct worker {
    cm_group *g;
    int index;
    int conn; /* its address is the thread's "connection" */
    item items[PER_THREAD];
    int rc[PER_THREAD];
    int poison_every; /* 0: none */
    int until_cancelled;
    int submitted; /* until_cancelled: calls made, the last cancelled */
} worker;

static void *run(void *p)
{
    worker *w = p;
    for (int k = 0;; k++) {
        if (!w->until_cancelled && k == PER_THREAD)
            break;
        item *it = &w->items[k % PER_THREAD];
        memset(it, 0, sizeof *it);
        it->value = w->index * 100000 + k;
        it->poison = w->poison_every && k % w->poison_every == w->poison_every - 1;
        it->conn = &w->conn;
        int rc = cm_group_submit(w->g, &w->conn, it);
        w->rc[k % PER_THREAD] = rc;
        w->submitted = k + 1;
        if (rc == CM_ECANCELLED)
            break;
        if (w->until_cancelled) {
            /* accepted calls were committed, with their own result */
            ck_assert_int_eq(rc, 0);
            ck_assert_int_eq(it->committed, 1);
            ck_assert_int_eq(it->result, it->value * 2);
        }
    }
    return NULL;
}

static void run_all(worker *ws, cm_group *g, int poison_every)
{
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&ws[i], 0, sizeof ws[i]);
        ws[i].g = g;
        ws[i].index = i;
        ws[i].poison_every = poison_every;
        ck_assert_int_eq(pthread_create(&th[i], NULL, run, &ws[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
}

START_TEST(group_each_caller_gets_its_own_result)
{
    reset_seen();
    cm_group *g = NULL;
    cm_group_opts o = {.commit = commit, .max_batch = 8};
    ck_assert_int_eq(cm_group_new(&g, &o), 0);
    static worker ws[THREADS];
    run_all(ws, g, 0);
    for (int i = 0; i < THREADS; i++)
        for (int k = 0; k < PER_THREAD; k++) {
            ck_assert_int_eq(ws[i].rc[k], 0);
            ck_assert_int_eq(ws[i].items[k].committed, 1);
            ck_assert_int_eq(ws[i].items[k].result, ws[i].items[k].value * 2);
        }
    unsigned long long batches, items;
    cm_group_stats(g, &batches, &items);
    ck_assert_uint_eq(items, THREADS * PER_THREAD);
    ck_assert_uint_eq(batches, (unsigned long long)seen.nbatches);
    /* batches formed: 16 callers against a 1 ms commit share commits */
    int largest = 0;
    for (int b = 0; b < seen.nbatches; b++) {
        ck_assert_int_le(seen.size[b], 8);
        largest = seen.size[b] > largest ? seen.size[b] : largest;
    }
    ck_assert_int_eq(largest, 8);
    ck_assert_msg(batches * 2 < items, "%llu batches for %llu items", batches, items);
    /* one leader: one commit at a time, on a connection of its batch */
    ck_assert_int_eq(seen.max_in_flight, 1);
    ck_assert_int_eq(seen.foreign_conn, 0);
    cm_group_free(g);
}
END_TEST

START_TEST(group_error_reaches_exactly_its_batch)
{
    reset_seen();
    cm_group *g = NULL;
    cm_group_opts o = {.commit = commit, .max_batch = 4};
    ck_assert_int_eq(cm_group_new(&g, &o), 0);
    static worker ws[THREADS];
    run_all(ws, g, 37);
    int failed_calls = 0, ok_calls = 0;
    for (int i = 0; i < THREADS; i++)
        for (int k = 0; k < PER_THREAD; k++) {
            const item *it = &ws[i].items[k];
            int want = seen.failed[it->batch] ? CM_EINTERNAL : 0;
            ck_assert_int_eq(ws[i].rc[k], want);
            if (it->poison)
                ck_assert_int_eq(ws[i].rc[k], CM_EINTERNAL);
            failed_calls += want != 0;
            ok_calls += want == 0;
        }
    /* the failures stayed in their batches: most calls succeeded */
    int poisoned = THREADS * (PER_THREAD / 37);
    ck_assert_int_ge(failed_calls, poisoned);
    ck_assert_int_le(failed_calls, poisoned * 4);
    ck_assert_int_gt(ok_calls, 0);
    cm_group_free(g);
}
END_TEST

START_TEST(group_runs_at_most_leaders_batches_at_once)
{
    reset_seen();
    cm_group *g = NULL;
    cm_group_opts o = {.commit = commit, .max_batch = 4, .leaders = 3};
    ck_assert_int_eq(cm_group_new(&g, &o), 0);
    static worker ws[THREADS];
    run_all(ws, g, 0);
    for (int i = 0; i < THREADS; i++)
        for (int k = 0; k < PER_THREAD; k++) {
            ck_assert_int_eq(ws[i].rc[k], 0);
            ck_assert_int_eq(ws[i].items[k].result, ws[i].items[k].value * 2);
        }
    ck_assert_int_le(seen.max_in_flight, 3);
    ck_assert_int_ge(seen.max_in_flight, 2);
    cm_group_free(g);
}
END_TEST

/* the group's own connections: each used by one batch at a time */
static int conn_busy[2];
static int conn_misuse;
static int commit_on_own(void *arg, void *conn, void *const *items, size_t n)
{
    int *conns = arg;
    int k = conn == &conns[0] ? 0 : conn == &conns[1] ? 1 : -1;
    pthread_mutex_lock(&seen.mu);
    if (k < 0 || conn_busy[k]++)
        conn_misuse++;
    pthread_mutex_unlock(&seen.mu);
    int rc = commit(NULL, conn, items, n);
    pthread_mutex_lock(&seen.mu);
    if (k >= 0)
        conn_busy[k]--;
    pthread_mutex_unlock(&seen.mu);
    return rc;
}

/* callers leading (_i == 0) or the group's threads (1) */
START_TEST(group_commits_on_its_own_connections)
{
    reset_seen();
    static int conns[2];
    void *const own[] = {&conns[0], &conns[1]};
    cm_group *g = NULL;
    cm_group_opts o = {.commit = commit_on_own,
                       .arg = conns,
                       .max_batch = 4,
                       .leaders = 2,
                       .conns = own,
                       .threads = _i};
    ck_assert_int_eq(cm_group_new(&g, &o), 0);
    static worker ws[THREADS];
    run_all(ws, g, 0);
    for (int i = 0; i < THREADS; i++)
        for (int k = 0; k < PER_THREAD; k++)
            ck_assert_int_eq(ws[i].rc[k], 0);
    ck_assert_int_eq(conn_misuse, 0);
    /* no batch ran on a caller's connection; batches formed */
    ck_assert_int_eq(seen.foreign_conn, seen.nbatches);
    ck_assert_int_lt(seen.nbatches * 2, THREADS * PER_THREAD);
    ck_assert_int_le(seen.max_in_flight, 2);
    cm_group_free(g);
}
END_TEST

START_TEST(group_shutdown_drains)
{
    reset_seen();
    cm_group *g = NULL;
    cm_group_opts o = {.commit = commit, .max_batch = 4, .leaders = 2, .threads = _i};
    ck_assert_int_eq(cm_group_new(&g, &o), 0);
    static worker ws[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&ws[i], 0, sizeof ws[i]);
        ws[i].g = g;
        ws[i].index = i;
        ws[i].until_cancelled = 1;
        ck_assert_int_eq(pthread_create(&th[i], NULL, run, &ws[i]), 0);
    }
    usleep(100000);
    cm_group_shutdown(g);
    /* nothing in flight, nothing queued, and nothing more will commit */
    pthread_mutex_lock(&seen.mu);
    ck_assert_int_eq(seen.in_flight, 0);
    int after = seen.nbatches;
    pthread_mutex_unlock(&seen.mu);
    ck_assert_int_gt(after, 0);
    ck_assert_int_eq(cm_group_submit(g, NULL, &(item){0}), CM_ECANCELLED);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    ck_assert_int_eq(seen.nbatches, after);
    unsigned long long batches, items, accepted = 0;
    cm_group_stats(g, &batches, &items);
    for (int i = 0; i < THREADS; i++) {
        /* each thread's last call was refused, every earlier one committed */
        ck_assert_int_eq(ws[i].rc[(ws[i].submitted - 1) % PER_THREAD], CM_ECANCELLED);
        accepted += (unsigned long long)ws[i].submitted - 1;
    }
    ck_assert_uint_eq(items, accepted);
    cm_group_shutdown(g); /* idempotent */
    cm_group_free(g);
}
END_TEST

/* a caller with a batch of its own queues it whole: each item committed
 * once with its own result, beside single callers, a poisoned item failing
 * only its batch; a group led by callers refuses it */
START_TEST(group_submit_many_shares_the_threads_batches)
{
    reset_seen();
    cm_group *g = NULL;
    cm_group_opts o = {.commit = commit, .max_batch = 8, .leaders = 2, .threads = 1};
    ck_assert_int_eq(cm_group_new(&g, &o), 0);
    static worker ws[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&ws[i], 0, sizeof ws[i]);
        ws[i].g = g;
        ws[i].index = i;
        ck_assert_int_eq(pthread_create(&th[i], NULL, run, &ws[i]), 0);
    }
    enum { N = 20 };
    item many[N];
    void *ptrs[N];
    int rcs[N];
    int poisoned_batch = -1;
    for (int round = 0; round < 10; round++) {
        memset(many, 0, sizeof many);
        for (int k = 0; k < N; k++) {
            many[k].value = 9000000 + round * 100 + k;
            many[k].poison = round == 3 && k == 5;
            rcs[k] = -1;
            ptrs[k] = &many[k];
        }
        ck_assert_int_eq(cm_group_submit_many(g, ptrs, N, rcs), 0);
        if (round == 3)
            poisoned_batch = many[5].batch;
        for (int k = 0; k < N; k++) {
            if (round == 3 && many[k].batch == poisoned_batch) {
                ck_assert_int_eq(rcs[k], CM_EINTERNAL);
                ck_assert_int_eq(many[k].committed, 0);
            } else {
                ck_assert_int_eq(rcs[k], 0);
                ck_assert_int_eq(many[k].committed, 1);
                ck_assert_int_eq(many[k].result, many[k].value * 2);
            }
        }
        if (round == 3) /* max_batch 8: the other items were in other batches */
            ck_assert_int_lt(seen.size[poisoned_batch], N);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    /* a single caller's item failed only when it shared the poisoned batch */
    for (int i = 0; i < THREADS; i++)
        for (int k = 0; k < PER_THREAD; k++) {
            if (ws[i].items[k].batch == poisoned_batch) {
                ck_assert_int_eq(ws[i].rc[k], CM_EINTERNAL);
            } else {
                ck_assert_int_eq(ws[i].rc[k], 0);
                ck_assert_int_eq(ws[i].items[k].result, ws[i].items[k].value * 2);
            }
        }
    unsigned long long batches, items;
    cm_group_stats(g, &batches, &items);
    ck_assert_uint_eq(items, (unsigned long long)(THREADS * PER_THREAD + 10 * N));
    ck_assert_int_eq(cm_group_submit_many(g, ptrs, 0, rcs), 0);
    cm_group_shutdown(g);
    ck_assert_int_eq(cm_group_submit_many(g, ptrs, N, rcs), CM_ECANCELLED);
    cm_group_free(g);
    ck_assert_int_eq(cm_group_new(&g, &(cm_group_opts){.commit = commit}), 0);
    ck_assert_int_eq(cm_group_submit_many(g, ptrs, N, rcs), CM_EINVAL);
    cm_group_free(g);
}
END_TEST

START_TEST(group_refuses_bad_options)
{
    cm_group *g = NULL;
    ck_assert_int_eq(cm_group_new(&g, NULL), CM_EINVAL);
    ck_assert_int_eq(cm_group_new(&g, &(cm_group_opts){0}), CM_EINVAL);
    ck_assert_int_eq(cm_group_new(&g, &(cm_group_opts){.commit = commit, .max_batch = -1}),
                     CM_EINVAL);
    ck_assert_int_eq(cm_group_new(&g, &(cm_group_opts){.commit = commit, .leaders = -1}),
                     CM_EINVAL);
    cm_group_free(NULL);
    /* a lone caller is its own batch */
    reset_seen();
    ck_assert_int_eq(cm_group_new(&g, &(cm_group_opts){.commit = commit}), 0);
    item it = {.value = 21};
    ck_assert_int_eq(cm_group_submit(g, &it, &it), 0);
    ck_assert_int_eq(it.result, 42);
    ck_assert_int_eq(seen.nbatches, 1);
    ck_assert_int_eq(seen.size[0], 1);
    cm_group_free(g);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group");
    TCase *tc = tcase_create("group");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, group_each_caller_gets_its_own_result);
    tcase_add_test(tc, group_error_reaches_exactly_its_batch);
    tcase_add_test(tc, group_runs_at_most_leaders_batches_at_once);
    tcase_add_loop_test(tc, group_commits_on_its_own_connections, 0, 2);
    tcase_add_loop_test(tc, group_shutdown_drains, 0, 2);
    tcase_add_test(tc, group_submit_many_shares_the_threads_batches);
    tcase_add_test(tc, group_refuses_bad_options);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
