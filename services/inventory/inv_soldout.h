/*
 * inv_soldout: the sold-out cache of the reservation hot path. a sku seen
 * at 0 available is answered SOLD_OUT from memory for a short while,
 * without touching the database; a restock clears its flag. the flag only
 * ever refuses early, never admits: admission is the database's (README.md,
 * "Reserve: the hot path").
 */
#ifndef INV_SOLDOUT_H
#define INV_SOLDOUT_H

typedef struct inv_soldout inv_soldout;

/* ttl_ms: how long a flag answers alone (> 0). 0 or CM_ENOMEM. */
int inv_soldout_new(inv_soldout **out, int ttl_ms);
/* NULL is a no-op */
void inv_soldout_free(inv_soldout *s);

/* 1 when the sku was seen at 0 available less than the ttl ago */
int inv_soldout_hit(inv_soldout *s, const char *tenant, const char *sku);
/* an inv_stock_cb: marks (restock = 0) or clears (1) a sku's flag; arg is
 * the inv_soldout (NULL: nothing) */
void inv_soldout_mark(void *s, const char *tenant, const char *sku, int restock);

#endif
