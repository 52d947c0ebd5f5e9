/* group commit of CreateOrder: see ord_batch.h */
#include "ord_batch.h"

#include "cm_err.h"

#include <pthread.h>
#include <stdlib.h>

typedef struct slot {
    ord_new *item;
    int done;
    int rc;
    struct slot *next;
} slot;

struct ord_batcher {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    slot *head, *tail; /* queued, not yet taken by a leader */
    int leading;       /* a leader is storing a batch */
    int max_batch;
};

int ord_batcher_new(ord_batcher **out, int max_batch)
{
    ord_batcher *b = calloc(1, sizeof *b);
    if (!b)
        return CM_ENOMEM;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    b->max_batch = max_batch < 1 ? 1 : max_batch > ORD_BATCH_MAX ? ORD_BATCH_MAX : max_batch;
    *out = b;
    return 0;
}

void ord_batcher_free(ord_batcher *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b);
}

int ord_batcher_create(ord_batcher *b, cm_db *db, ord_new *item)
{
    slot me = {.item = item};
    ord_new items[ORD_BATCH_MAX];
    slot *taken[ORD_BATCH_MAX];
    pthread_mutex_lock(&b->mu);
    if (b->tail)
        b->tail->next = &me;
    else
        b->head = &me;
    b->tail = &me;
    while (!me.done) {
        if (b->leading) {
            pthread_cond_wait(&b->cv, &b->mu);
            continue;
        }
        /* lead: take what is queued, oldest first (this caller's slot is
         * among it unless more than a batch is waiting) */
        b->leading = 1;
        size_t n = 0;
        while (b->head && n < (size_t)b->max_batch) {
            slot *s = b->head;
            b->head = s->next;
            if (!b->head)
                b->tail = NULL;
            taken[n] = s;
            items[n] = *s->item;
            n++;
        }
        pthread_mutex_unlock(&b->mu);
        int rc = ord_store_create_many(db, items, n);
        pthread_mutex_lock(&b->mu);
        for (size_t i = 0; i < n; i++) {
            taken[i]->item->inserted = rc == 0 ? items[i].inserted : 0;
            taken[i]->rc = rc;
            taken[i]->done = 1;
        }
        b->leading = 0;
        pthread_cond_broadcast(&b->cv);
    }
    pthread_mutex_unlock(&b->mu);
    return me.rc;
}
