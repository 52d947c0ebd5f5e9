/* group commit of CreateOrder: see ord_batch.h */
#include "ord_batch.h"

#include "cm_err.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>

/* a caller's create, queued. a waiting caller sleeps on its own semaphore
 * and is woken once: when its batch committed (done), or to lead the next
 * batch (lead). one wake-up per caller, posted outside the lock, instead of
 * a broadcast that wakes every waiter to find most of them not done */
typedef struct slot {
    ord_new *item;
    int done;
    int lead;
    int rc;
    sem_t wake;
    struct slot *next;
} slot;

struct ord_batcher {
    pthread_mutex_t mu;
    slot *head, *tail; /* queued, not yet taken by a leader */
    int leading;       /* a caller leads: it stores a batch or is about to */
    int max_batch;
};

int ord_batcher_new(ord_batcher **out, int max_batch)
{
    ord_batcher *b = calloc(1, sizeof *b);
    if (!b)
        return CM_ENOMEM;
    pthread_mutex_init(&b->mu, NULL);
    b->max_batch = max_batch < 1 ? 1 : max_batch > ORD_BATCH_MAX ? ORD_BATCH_MAX : max_batch;
    *out = b;
    return 0;
}

void ord_batcher_free(ord_batcher *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->mu);
    free(b);
}

static void sleep_on(slot *s)
{
    while (sem_wait(&s->wake) != 0)
        ; /* EINTR: wait on */
}

int ord_batcher_create(ord_batcher *b, cm_db *db, ord_new *item)
{
    slot me = {.item = item};
    ord_new items[ORD_BATCH_MAX];
    slot *taken[ORD_BATCH_MAX];
    if (sem_init(&me.wake, 0, 0) != 0)
        return CM_ENOMEM;
    pthread_mutex_lock(&b->mu);
    if (b->tail)
        b->tail->next = &me;
    else
        b->head = &me;
    b->tail = &me;
    if (b->leading) {
        pthread_mutex_unlock(&b->mu);
        sleep_on(&me); /* done, or handed the lead */
        pthread_mutex_lock(&b->mu);
    } else {
        b->leading = 1;
        me.lead = 1;
    }
    while (!me.done) {
        /* lead: take what is queued, oldest first (this caller's slot is
         * among it unless more than a batch is waiting) */
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
        for (size_t i = 0; i < n; i++) {
            slot *s = taken[i];
            s->item->inserted = rc == 0 ? items[i].inserted : 0;
            s->rc = rc;
            s->done = 1;
            if (s != &me)
                sem_post(&s->wake); /* s may be gone right after this */
        }
        pthread_mutex_lock(&b->mu);
    }
    /* hand the lead to the oldest waiter, if any */
    slot *next = NULL;
    if (me.lead) {
        next = b->head;
        if (next)
            next->lead = 1;
        else
            b->leading = 0;
    }
    pthread_mutex_unlock(&b->mu);
    if (next)
        sem_post(&next->wake);
    sem_destroy(&me.wake);
    return me.rc;
}
