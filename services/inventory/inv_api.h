/*
 * inv_api: the InventoryService handlers and the process's app state
 * (hot path, sweeper, invariant metric).
 */
#ifndef INV_API_H
#define INV_API_H

#include "cm_rpc.h"
#include "cm_service.h"
#include "inv_domain.h"

#include "commerce/inventory/v1/inventory_service.pb-c.h"

#include <stddef.h>

/* INVENTORY_BATCHERS' ceiling: the hot path's own connections */
#define INV_BATCHERS_MAX 16

/* quota "skus": how many skus a tenant may have when RATE_LIMITS_FILE
 * sets no other number (README: quotas) */
#define INV_SKUS_QUOTA 1000000LL
/* quota "flash_sales": sales not yet ended a tenant may have */
#define INV_FLASH_SALES_QUOTA 10000LL

extern const cm_rpc_method inv_methods[];
extern const size_t inv_methods_count;

/* the lines and ttl of a Reserve request as the domain checks them (the
 * handler's checks before any i/o, also run by tests/fuzz): 0 with *lines
 * (in ctx's arena) and *ttl_ms set, or the failure recorded in ctx naming
 * the field */
int inv_api_reserve_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__ReserveRequest *req,
                       inv_line **lines, int64_t *ttl_ms);

int inv_app_init(cm_service *svc, void **app, char *err, size_t errlen);
void inv_app_fini(cm_service *svc, void *app);

/* the order-event consumer (OrderPaid -> confirm, OrderCancelled -> release) */
/* the sweeper ticker: expired reservations, and the invariant metric every
 * INVENTORY_INVARIANT_CHECK_S (on the runtime's connection db) */
void inv_sweep(cm_service *svc, cm_db *db, void *app);

int inv_on_order_event(cm_db *db, const cm_event *ev, void *arg);

#endif
