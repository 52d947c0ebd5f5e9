/*
 * inv_hot: the reservation hot path. callers (gRPC workers) hand their
 * reservation to a batcher thread and block; the batcher commits every
 * waiting reservation in one transaction (one round trip, one fsync) and
 * then wakes each caller with its own outcome. a sold-out cache answers
 * requests for skus known to be at 0 without touching the database. the
 * design and why it is correct with several replicas: README.md.
 */
#ifndef INV_HOT_H
#define INV_HOT_H

#include "inv_store.h"

#include <stddef.h>

typedef struct inv_hot inv_hot;

typedef struct inv_hot_opts {
    const char *dsn, *schema;
    int batchers;        /* threads, each with its own connection; 0: 1 */
    int max_batch;       /* reservations per transaction; 0: 256 */
    int sold_out_ttl_ms; /* how long a sold-out flag answers alone; 0: 200 */
} inv_hot_opts;

int inv_hot_new(inv_hot **out, const inv_hot_opts *o, char *err, size_t errlen);
/* stops the batchers after the batches in flight; NULL is a no-op */
void inv_hot_free(inv_hot *h);

/* reserves it in the next batch; blocks until that batch committed (or
 * failed). returns 0 with it->outcome set, or the transaction's CM_E*. */
int inv_hot_reserve(inv_hot *h, inv_reserve_item *it);

/* 1 when the sku was seen at 0 available less than the ttl ago */
int inv_hot_sold_out(inv_hot *h, const char *tenant, const char *sku);
/* an inv_stock_cb: marks (restock = 0) or clears (1) a sku's flag; arg is
 * the inv_hot (NULL: nothing) */
void inv_hot_mark(void *h, const char *tenant, const char *sku, int restock);

/* batches and reservations committed so far, for metrics */
void inv_hot_stats(inv_hot *h, unsigned long long *batches, unsigned long long *items);

#endif
