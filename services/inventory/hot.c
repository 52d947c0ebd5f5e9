/* the reservation hot path: group commit of reservations, see inv_hot.h */
#include "inv_hot.h"

#include "cm_err.h"
#include "cm_log.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SOLD_SLOTS 4096

/* a caller waiting for its batch. woken through its own semaphore, posted
 * after the batcher let go of the queue lock, so the woken callers do not
 * all fight the batcher (and each other) for that lock */
typedef struct waiter {
    inv_reserve_item *it;
    struct waiter *next;
    sem_t done;
    int rc;
} waiter;

typedef struct sold_slot {
    char key[INV_SKU_MAX + 80];
    long long until_ms;
} sold_slot;

struct inv_hot {
    pthread_mutex_t mu;
    pthread_cond_t more;
    waiter *head, *tail;
    int stop;
    int nthreads;
    pthread_t *threads;
    cm_db **dbs;
    int max_batch;
    int ttl_ms;
    unsigned long long batches, items;
    pthread_mutex_t sold_mu;
    sold_slot *sold;
};

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t slot_of(const char *key)
{
    /* fnv-1a */
    unsigned long long h = 1469598103934665603ULL;
    for (const char *c = key; *c; c++) {
        h ^= (unsigned char)*c;
        h *= 1099511628211ULL;
    }
    return (size_t)(h % SOLD_SLOTS);
}

static void make_key(char *k, size_t cap, const char *tenant, const char *sku)
{
    snprintf(k, cap, "%s/%s", tenant, sku);
}

int inv_hot_sold_out(inv_hot *h, const char *tenant, const char *sku)
{
    char k[sizeof((sold_slot *)0)->key];
    make_key(k, sizeof k, tenant, sku);
    size_t s = slot_of(k);
    pthread_mutex_lock(&h->sold_mu);
    int hit = strcmp(h->sold[s].key, k) == 0 && h->sold[s].until_ms > mono_ms();
    pthread_mutex_unlock(&h->sold_mu);
    return hit;
}

void inv_hot_mark(void *arg, const char *tenant, const char *sku, int restock)
{
    inv_hot *h = arg;
    if (!h)
        return;
    char k[sizeof((sold_slot *)0)->key];
    make_key(k, sizeof k, tenant, sku);
    size_t s = slot_of(k);
    pthread_mutex_lock(&h->sold_mu);
    if (restock) {
        if (strcmp(h->sold[s].key, k) == 0)
            h->sold[s].until_ms = 0;
    } else {
        /* a colliding sku loses its flag: it only costs a database check */
        memcpy(h->sold[s].key, k, sizeof k);
        h->sold[s].until_ms = mono_ms() + h->ttl_ms;
    }
    pthread_mutex_unlock(&h->sold_mu);
}

typedef struct batcher_arg {
    inv_hot *h;
    int index;
} batcher_arg;

static void *batcher_main(void *p)
{
    batcher_arg *ba = p;
    inv_hot *h = ba->h;
    cm_db *db = h->dbs[ba->index];
    free(ba);
    inv_reserve_item **items = malloc(sizeof *items * (size_t)h->max_batch);
    waiter **ws = malloc(sizeof *ws * (size_t)h->max_batch);
    if (!items || !ws) {
        free(items);
        free(ws);
        return NULL;
    }
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (!h->head && !h->stop)
            pthread_cond_wait(&h->more, &h->mu);
        if (!h->head && h->stop)
            break;
        /* everything that queued while the previous batch committed */
        size_t n = 0;
        while (h->head && n < (size_t)h->max_batch) {
            waiter *w = h->head;
            h->head = w->next;
            ws[n] = w;
            items[n++] = w->it;
        }
        if (!h->head)
            h->tail = NULL;
        pthread_mutex_unlock(&h->mu);
        int rc = inv_store_reserve_batch(db, items, n, inv_hot_mark, h);
        if (rc)
            cm_log_warn("reservation batch failed", "error", cm_strerror(rc), NULL);
        for (size_t i = 0; i < n; i++) {
            ws[i]->rc = rc;
            sem_post(&ws[i]->done);
        }
        pthread_mutex_lock(&h->mu);
        h->batches++;
        h->items += n;
    }
    pthread_mutex_unlock(&h->mu);
    free(items);
    free(ws);
    return NULL;
}

int inv_hot_reserve(inv_hot *h, inv_reserve_item *it)
{
    waiter w = {.it = it};
    if (sem_init(&w.done, 0, 0) != 0)
        return CM_ENOMEM;
    pthread_mutex_lock(&h->mu);
    if (h->stop) {
        pthread_mutex_unlock(&h->mu);
        sem_destroy(&w.done);
        return CM_ECANCELLED;
    }
    if (h->tail)
        h->tail->next = &w;
    else
        h->head = &w;
    h->tail = &w;
    pthread_cond_signal(&h->more);
    pthread_mutex_unlock(&h->mu);
    while (sem_wait(&w.done) != 0)
        ; /* EINTR: wait on */
    sem_destroy(&w.done);
    return w.rc;
}

void inv_hot_stats(inv_hot *h, unsigned long long *batches, unsigned long long *items)
{
    pthread_mutex_lock(&h->mu);
    *batches = h->batches;
    *items = h->items;
    pthread_mutex_unlock(&h->mu);
}

int inv_hot_new(inv_hot **out, const inv_hot_opts *o, char *err, size_t errlen)
{
    inv_hot *h = calloc(1, sizeof *h);
    if (!h)
        return CM_ENOMEM;
    h->nthreads = o->batchers > 0 ? o->batchers : 1;
    h->max_batch = o->max_batch > 0 ? o->max_batch : 256;
    h->ttl_ms = o->sold_out_ttl_ms > 0 ? o->sold_out_ttl_ms : 200;
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->sold_mu, NULL);
    pthread_cond_init(&h->more, NULL);
    h->sold = calloc(SOLD_SLOTS, sizeof *h->sold);
    h->threads = calloc((size_t)h->nthreads, sizeof *h->threads);
    h->dbs = calloc((size_t)h->nthreads, sizeof *h->dbs);
    if (!h->sold || !h->threads || !h->dbs) {
        inv_hot_free(h);
        return CM_ENOMEM;
    }
    for (int i = 0; i < h->nthreads; i++) {
        int rc = cm_db_connect(&h->dbs[i], o->dsn, o->schema, err, errlen);
        if (rc) {
            inv_hot_free(h);
            return rc;
        }
    }
    for (int i = 0; i < h->nthreads; i++) {
        batcher_arg *ba = malloc(sizeof *ba);
        if (ba) {
            ba->h = h;
            ba->index = i;
        }
        if (!ba || pthread_create(&h->threads[i], NULL, batcher_main, ba) != 0) {
            free(ba);
            snprintf(err, errlen, "could not start the reservation batcher");
            inv_hot_free(h);
            return CM_ENOMEM;
        }
    }
    *out = h;
    return 0;
}

void inv_hot_free(inv_hot *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    h->stop = 1;
    pthread_cond_broadcast(&h->more);
    pthread_mutex_unlock(&h->mu);
    for (int i = 0; h->threads && i < h->nthreads; i++)
        if (h->threads[i])
            pthread_join(h->threads[i], NULL);
    for (int i = 0; h->dbs && i < h->nthreads; i++)
        cm_db_free(h->dbs[i]);
    free(h->threads);
    free(h->dbs);
    free(h->sold);
    pthread_mutex_destroy(&h->mu);
    pthread_mutex_destroy(&h->sold_mu);
    pthread_cond_destroy(&h->more);
    free(h);
}
