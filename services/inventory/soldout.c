/* the sold-out cache: see inv_soldout.h */
#include "inv_soldout.h"

#include "cm_err.h"
#include "inv_store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SOLD_SLOTS 4096

typedef struct sold_slot {
    char key[INV_SKU_MAX + 80];
    long long until_ms;
} sold_slot;

struct inv_soldout {
    pthread_mutex_t mu;
    int ttl_ms;
    sold_slot slots[SOLD_SLOTS];
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

int inv_soldout_hit(inv_soldout *h, const char *tenant, const char *sku)
{
    char k[sizeof((sold_slot *)0)->key];
    make_key(k, sizeof k, tenant, sku);
    size_t s = slot_of(k);
    pthread_mutex_lock(&h->mu);
    int hit = strcmp(h->slots[s].key, k) == 0 && h->slots[s].until_ms > mono_ms();
    pthread_mutex_unlock(&h->mu);
    return hit;
}

void inv_soldout_mark(void *arg, const char *tenant, const char *sku, int restock)
{
    inv_soldout *h = arg;
    if (!h)
        return;
    char k[sizeof((sold_slot *)0)->key];
    make_key(k, sizeof k, tenant, sku);
    size_t s = slot_of(k);
    pthread_mutex_lock(&h->mu);
    if (restock) {
        if (strcmp(h->slots[s].key, k) == 0)
            h->slots[s].until_ms = 0;
    } else {
        /* a colliding sku loses its flag: it only costs a database check */
        memcpy(h->slots[s].key, k, sizeof k);
        h->slots[s].until_ms = mono_ms() + h->ttl_ms;
    }
    pthread_mutex_unlock(&h->mu);
}

int inv_soldout_new(inv_soldout **out, int ttl_ms)
{
    inv_soldout *s = calloc(1, sizeof *s);
    if (!s)
        return CM_ENOMEM;
    s->ttl_ms = ttl_ms > 0 ? ttl_ms : 200;
    pthread_mutex_init(&s->mu, NULL);
    *out = s;
    return 0;
}

void inv_soldout_free(inv_soldout *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->mu);
    free(s);
}
