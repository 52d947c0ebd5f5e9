/*
 * cm_group: group commit. callers that each need one small durable write
 * hand it to a group and block; their writes are committed together, many
 * per transaction, so the commit (its fsync) is paid per batch instead of
 * per caller. by default no thread of its own: a caller that finds fewer
 * than `leaders` batches in flight leads, takes every item queued so far
 * (up to max_batch, oldest first), commits them with its own connection (or
 * one the group was given) and wakes each of the others once; whoever is
 * still queued when a leader is done leads next. with opts.threads the
 * group's own `leaders` threads lead instead, back to back, and callers
 * only queue. see common/README.md, "group commit".
 */
#ifndef CM_GROUP_H
#define CM_GROUP_H

#include <stddef.h>

typedef struct cm_group cm_group;

/* commits items[0..n) (n >= 1) in one transaction on conn: the leading
 * caller's connection, or one of opts.conns. it writes each item's own
 * outcome into the item (the caller's struct) and returns 0, or a CM_E*
 * that every caller of this batch gets, and only they. runs on the
 * leader's thread, never with the group's lock held; several run at once
 * when leaders > 1. */
typedef int (*cm_group_commit_fn)(void *arg, void *conn, void *const *items, size_t n);

typedef struct cm_group_opts {
    cm_group_commit_fn commit; /* required */
    void *arg;                 /* commit's first argument */
    int max_batch;             /* most items per commit; 0: 256 */
    int leaders;               /* batches committing at once; 0: 1 */
    /* NULL: a batch commits on its leading caller's conn. else `leaders`
     * connections the caller owns (and keeps until cm_group_free), each used
     * by one batch at a time: for statements prepared on few connections */
    void *const *conns;
    /* 0: callers lead (no hand-off when idle: a lone item is committed on
     * its caller's thread). 1: `leaders` threads of the group's lead, each
     * on its conns[i] (NULL without conns): no hand-off between batches,
     * for a stream of batches on one hot row */
    int threads;
} cm_group_opts;

/* 0, CM_EINVAL (no commit function, a negative size) or CM_ENOMEM (also
 * when a thread could not start). */
int cm_group_new(cm_group **out, const cm_group_opts *o);

/* queues item and blocks until the batch holding it was committed (or
 * failed): the commit function's result for that batch, or CM_ECANCELLED
 * when the group is shutting down (item not queued), CM_ENOMEM. conn is
 * what the commit runs on should this caller lead (without opts.conns);
 * the caller must not use it elsewhere until the call returns.
 * thread-safe. */
int cm_group_submit(cm_group *g, void *conn, void *item);

/* queues items[0..n) together and blocks until each was committed:
 * rcs[i] is item i's batch's result (items may land in different batches).
 * for a caller that gathered a batch already (inventory's BatchReserve),
 * which then shares commits with the single callers. only for a group
 * with opts.threads (CM_EINVAL otherwise: a caller-led group would need
 * one of several items to lead); 0, or CM_ECANCELLED (shutting down,
 * nothing queued) / CM_ENOMEM. thread-safe. */
int cm_group_submit_many(cm_group *g, void *const *items, size_t n, int *rcs);

/* refuses new items (CM_ECANCELLED), then waits until every queued item
 * was committed and no batch is in flight (and the threads ended).
 * idempotent. */
void cm_group_shutdown(cm_group *g);

/* shuts down, then frees. no submit may start after it. NULL is a no-op. */
void cm_group_free(cm_group *g);

/* batches committed and items in them so far (failed batches included) */
void cm_group_stats(cm_group *g, unsigned long long *batches, unsigned long long *items);

#endif
