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
    cm_group *g;
    void **items;
    slot **slots;
    void *conn; /* opts.conns[i], or NULL: the leading caller's */
    int busy;
    pthread_t thread; /* opts.threads: the leader that owns it */
} batch;

struct cm_group {
    pthread_mutex_t mu;
    pthread_cond_t idle; /* shutdown waits for active == 0 */
    pthread_cond_t more; /* opts.threads: an item queued */
    slot *head, *tail;   /* queued, not yet taken by a leader */
    int active;          /* leading (at most leaders; all of them with threads) */
    int leaders, max_batch, closing;
    int threads, nstarted;
    batch *bufs; /* one per possible leader */
    cm_group_commit_fn commit;
    void *arg;
    unsigned long long batches, items;
};

static void lead_one(cm_group *g, batch *b, void *conn);

/* opts.threads: a leader for good, on its own batch */
static void *leader_main(void *p)
{
    batch *b = p;
    cm_group *g = b->g;
    pthread_mutex_lock(&g->mu);
    for (;;) {
        while (!g->head && !g->closing)
            pthread_cond_wait(&g->more, &g->mu);
        if (!g->head)
            break; /* closing, and everything queued was committed */
        lead_one(g, b, NULL);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

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
    pthread_cond_init(&g->more, NULL);
    g->bufs = calloc((size_t)g->leaders, sizeof *g->bufs);
    for (int i = 0; g->bufs && i < g->leaders; i++) {
        g->bufs[i].g = g;
        g->bufs[i].items = malloc((size_t)g->max_batch * sizeof(void *));
        g->bufs[i].slots = malloc((size_t)g->max_batch * sizeof(slot *));
        g->bufs[i].conn = o->conns ? o->conns[i] : NULL;
        if (!g->bufs[i].items || !g->bufs[i].slots) {
            cm_group_free(g);
            return CM_ENOMEM;
        }
    }
    if (!g->bufs) {
        cm_group_free(g);
        return CM_ENOMEM;
    }
    if (o->threads) {
        /* every lead is taken for good: callers only queue */
        g->threads = 1;
        g->active = g->leaders;
        for (; g->nstarted < g->leaders; g->nstarted++) {
            batch *b = &g->bufs[g->nstarted];
            b->busy = 1;
            if (pthread_create(&b->thread, NULL, leader_main, b) != 0) {
                cm_group_free(g);
                return CM_ENOMEM;
            }
        }
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
 * max_batch items with b, marks them done and posts their sleeping
 * callers. returns locked. */
static void lead_one(cm_group *g, batch *b, void *conn)
{
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
    int rc = g->commit(g->arg, b->conn ? b->conn : conn, b->items, n);
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
}

/* a caller's lead: on a free batch (at most `leaders` callers lead) */
static void lead_caller(cm_group *g, void *conn)
{
    batch *b = g->bufs;
    while (b->busy)
        b++;
    b->busy = 1;
    lead_one(g, b, conn);
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
    if (g->threads)
        pthread_cond_signal(&g->more);
    if (g->active < g->leaders) {
        g->active++;
        me.lead = 1;
    } else {
        pthread_mutex_unlock(&g->mu);
        sleep_on(&me);
        /* posted done (rc final) or handed the lead, each written before
         * the post and by nobody after it: a done caller leaves without
         * the lock, not fighting the leader for it */
        if (!me.lead) {
            sem_destroy(&me.wake);
            return me.rc;
        }
        pthread_mutex_lock(&g->mu);
    }
    /* lead while this caller's item is not committed and items queue (its
     * own is among the oldest max_batch unless another leader took it) */
    while (!me.done && g->head)
        lead_caller(g, conn);
    /* hand the lead to the oldest waiter, if any: skip the items of
     * callers that lead already (at most leaders - 1 of them) */
    me.lead = 0;
    slot *next = g->head;
    while (next && next->lead)
        next = next->next;
    if (next)
        next->lead = 1;
    else if (--g->active == 0 && g->closing)
        pthread_cond_broadcast(&g->idle);
    /* not done: another leader's batch holds this item, and posts */
    int wait = !me.done;
    pthread_mutex_unlock(&g->mu);
    if (next)
        sem_post(&next->wake);
    if (wait)
        sleep_on(&me);
    sem_destroy(&me.wake);
    return me.rc;
}

int cm_group_submit_many(cm_group *g, void *const *items, size_t n, int *rcs)
{
    if (!g->threads)
        return CM_EINVAL;
    if (n == 0)
        return 0;
    slot *slots = calloc(n, sizeof *slots);
    if (!slots)
        return CM_ENOMEM;
    size_t ready = 0;
    for (; ready < n; ready++) {
        slots[ready].item = items[ready];
        if (sem_init(&slots[ready].wake, 0, 0) != 0)
            break;
    }
    int rc = ready < n ? CM_ENOMEM : 0;
    pthread_mutex_lock(&g->mu);
    if (rc == 0 && g->closing)
        rc = CM_ECANCELLED;
    if (rc == 0) {
        /* queued back to back, oldest first: one leader's batch takes
         * them together unless max_batch cuts them */
        for (size_t i = 0; i < n; i++) {
            if (g->tail)
                g->tail->next = &slots[i];
            else
                g->head = &slots[i];
            g->tail = &slots[i];
        }
        pthread_cond_broadcast(&g->more);
    }
    pthread_mutex_unlock(&g->mu);
    for (size_t i = 0; i < ready; i++) {
        if (rc == 0) {
            sleep_on(&slots[i]); /* leaders never lead a caller's slot here */
            rcs[i] = slots[i].rc;
        }
        sem_destroy(&slots[i].wake);
    }
    free(slots);
    return rc;
}

void cm_group_shutdown(cm_group *g)
{
    if (!g)
        return;
    pthread_mutex_lock(&g->mu);
    g->closing = 1;
    pthread_cond_broadcast(&g->more);
    int join = g->nstarted;
    g->nstarted = 0;
    pthread_mutex_unlock(&g->mu);
    /* threads lead until the queue is empty, then end */
    for (int i = 0; i < join; i++)
        pthread_join(g->bufs[i].thread, NULL);
    pthread_mutex_lock(&g->mu);
    if (g->threads)
        g->active = 0;
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
    pthread_cond_destroy(&g->more);
    free(g);
}
