/* group commit: see cm_group.h and common/README.md, "group commit" */
#include "cm_group.h"

#include "cm_err.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>

#define DEFAULT_MAX_BATCH 256

/* a caller's item, queued. a caller that does not lead sleeps on its own
 * semaphore and is posted exactly once: when its batch committed, or to
 * lead. one wake-up per caller, posted outside the lock, instead of a
 * broadcast that wakes every waiter to find most of them not done. lead,
 * done and rc change under the group's lock only; a slot that leads is
 * never posted "done" (it looks for itself) */
typedef struct slot {
    void *item;
    struct slot *next;
    sem_t wake;
    int lead, done, rc;
} slot;

/* a leader's scratch: the items it commits and their slots */
typedef struct batch {
    void **items;
    slot **slots;
    int busy;
} batch;

struct cm_group {
    pthread_mutex_t mu;
    pthread_cond_t idle; /* shutdown waits for active == 0 */
    slot *head, *tail;   /* queued, not yet taken by a leader */
    int active;          /* callers leading (at most leaders) */
    int leaders, max_batch, closing;
    batch *bufs; /* one per possible leader */
    cm_group_commit_fn commit;
    void *arg;
    unsigned long long batches, items;
};

int cm_group_new(cm_group **out, const cm_group_opts *o)
{
    if (!o || !o->commit || o->max_batch < 0 || o->leaders < 0)
        return CM_EINVAL;
    cm_group *g = calloc(1, sizeof *g);
    if (!g)
        return CM_ENOMEM;
    g->commit = o->commit;
    g->arg = o->arg;
    g->max_batch = o->max_batch ? o->max_batch : DEFAULT_MAX_BATCH;
    g->leaders = o->leaders ? o->leaders : 1;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->idle, NULL);
    g->bufs = calloc((size_t)g->leaders, sizeof *g->bufs);
    for (int i = 0; g->bufs && i < g->leaders; i++) {
        g->bufs[i].items = malloc((size_t)g->max_batch * sizeof(void *));
        g->bufs[i].slots = malloc((size_t)g->max_batch * sizeof(slot *));
        if (!g->bufs[i].items || !g->bufs[i].slots) {
            cm_group_free(g);
            return CM_ENOMEM;
        }
    }
    if (!g->bufs) {
        cm_group_free(g);
        return CM_ENOMEM;
    }
    *out = g;
    return 0;
}

static void sleep_on(slot *s)
{
    while (sem_wait(&s->wake) != 0)
        ; /* EINTR: wait on */
}

/* called locked by a leader with a non-empty queue: commits the oldest
 * max_batch items, marks them done and posts their sleeping callers.
 * returns locked. */
static void lead_one(cm_group *g, void *conn)
{
    batch *b = g->bufs;
    while (b->busy) /* one is free: at most `leaders` callers get here */
        b++;
    b->busy = 1;
    size_t n = 0;
    while (g->head && n < (size_t)g->max_batch) {
        slot *s = g->head;
        g->head = s->next;
        b->slots[n] = s;
        b->items[n++] = s->item;
    }
    if (!g->head)
        g->tail = NULL;
    pthread_mutex_unlock(&g->mu);
    int rc = g->commit(g->arg, conn, b->items, n);
    pthread_mutex_lock(&g->mu);
    size_t npost = 0;
    for (size_t i = 0; i < n; i++) {
        slot *s = b->slots[i];
        s->rc = rc;
        s->done = 1;
        if (!s->lead)
            b->slots[npost++] = s; /* asleep, or about to be */
    }
    g->batches++;
    g->items += n;
    pthread_mutex_unlock(&g->mu);
    for (size_t i = 0; i < npost; i++)
        sem_post(&b->slots[i]->wake); /* the slot may be gone right after */
    pthread_mutex_lock(&g->mu);
    b->busy = 0;
}

int cm_group_submit(cm_group *g, void *conn, void *item)
{
    slot me = {.item = item};
    if (sem_init(&me.wake, 0, 0) != 0)
        return CM_ENOMEM;
    pthread_mutex_lock(&g->mu);
    if (g->closing) {
        pthread_mutex_unlock(&g->mu);
        sem_destroy(&me.wake);
        return CM_ECANCELLED;
    }
    if (g->tail)
        g->tail->next = &me;
    else
        g->head = &me;
    g->tail = &me;
    if (g->active < g->leaders) {
        g->active++;
        me.lead = 1;
    } else {
        pthread_mutex_unlock(&g->mu);
        sleep_on(&me); /* done, or handed the lead */
        pthread_mutex_lock(&g->mu);
    }
    /* lead while this caller's item is not committed and items queue (its
     * own is among the oldest max_batch unless another leader took it) */
    while (me.lead && !me.done && g->head)
        lead_one(g, conn);
    slot *next = NULL;
    if (me.lead) {
        /* hand the lead to the oldest waiter, if any: skip the items of
         * callers that lead already (at most leaders - 1 of them) */
        me.lead = 0;
        next = g->head;
        while (next && next->lead)
            next = next->next;
        if (next)
            next->lead = 1;
        else if (--g->active == 0 && g->closing)
            pthread_cond_broadcast(&g->idle);
    }
    if (!me.done) {
        /* another leader's batch holds this item: it posts when done */
        pthread_mutex_unlock(&g->mu);
        if (next)
            sem_post(&next->wake);
        next = NULL;
        sleep_on(&me);
        pthread_mutex_lock(&g->mu);
    }
    int rc = me.rc;
    pthread_mutex_unlock(&g->mu);
    if (next)
        sem_post(&next->wake);
    sem_destroy(&me.wake);
    return rc;
}

void cm_group_shutdown(cm_group *g)
{
    if (!g)
        return;
    pthread_mutex_lock(&g->mu);
    g->closing = 1;
    while (g->active > 0 || g->head)
        pthread_cond_wait(&g->idle, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

void cm_group_stats(cm_group *g, unsigned long long *batches, unsigned long long *items)
{
    pthread_mutex_lock(&g->mu);
    *batches = g->batches;
    *items = g->items;
    pthread_mutex_unlock(&g->mu);
}

void cm_group_free(cm_group *g)
{
    if (!g)
        return;
    cm_group_shutdown(g);
    for (int i = 0; g->bufs && i < g->leaders; i++) {
        free(g->bufs[i].items);
        free(g->bufs[i].slots);
    }
    free(g->bufs);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->idle);
    free(g);
}
