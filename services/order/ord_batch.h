/*
 * ord_batch: group commit for CreateOrder. concurrent creates are stored
 * together: the first caller to find no batch running becomes the leader,
 * takes every create queued so far (up to a maximum), stores them in one
 * transaction on its own connection (ord_store_create_many), and wakes each
 * of them once (its own semaphore), then hands the lead to the oldest
 * caller still waiting, who takes what queued meanwhile. each caller
 * returns only after the transaction holding its order committed. see
 * README.md, "group commit".
 */
#ifndef ORD_BATCH_H
#define ORD_BATCH_H

#include "cm_db.h"
#include "ord_store.h"

#include <stddef.h>

typedef struct ord_batcher ord_batcher;

#define ORD_BATCH_MAX 256

/* max_batch: most orders in one transaction (1..ORD_BATCH_MAX). */
int ord_batcher_new(ord_batcher **out, int max_batch);
void ord_batcher_free(ord_batcher *b);

/* stores item (see ord_new) in the next batch, using db when this caller
 * leads it. 0 with item->inserted set, or the batch's CM_E* (nothing of
 * the batch was stored). */
int ord_batcher_create(ord_batcher *b, cm_db *db, ord_new *item);

#endif
