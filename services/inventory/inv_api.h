/*
 * inv_api: the InventoryService handlers and the process's app state
 * (hot path, sweeper, invariant metric).
 */
#ifndef INV_API_H
#define INV_API_H

#include "cm_rpc.h"
#include "cm_service.h"
#include "cm_consumer.h"
#include "cm_page.h"
#include "inv_domain.h"
#include "inv_store.h"

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

/* the checks before any i/o of the other handlers, each also run by
 * tests/fuzz: 0, or the failure recorded in ctx naming the field.
 * inv_api_admin_in: SetStock's (kind INV_KIND_SET, value = available) and
 * AdjustStock's (INV_KIND_ADJUST, value = delta); inv_api_resolve_in:
 * Confirm's and Release's order_id */
int inv_api_admin_in(cm_rpc_ctx *ctx, int kind, const char *request_id, const char *sku,
                     int64_t value, const char *reason, const char *actor, int64_t expected);
int inv_api_cost_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__SetCostRequest *req);
int inv_api_resolve_in(cm_rpc_ctx *ctx, const char *order_id);
int inv_api_batch_get_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__BatchGetStockRequest *req);
int inv_api_check_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__CheckInvariantsRequest *req);

/* ConfigureFlashSale's checks against the clock now_ms (ends_at must be
 * after it): 0 with the window in ms set */
int inv_api_sale_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__ConfigureFlashSaleRequest *req,
                    int64_t now_ms, int64_t *starts_ms, int64_t *ends_ms);

/* ListStockChanges as the store's query: q (tenant is ctx's; kinds in
 * ctx's arena; after_id into after, NULL on the first page), the filters'
 * hash its page tokens carry, the page size */
typedef struct inv_changes_in {
    inv_change_query q;
    char after[CM_PAGE_POSITION_MAX + 1];
    uint64_t filters;
    int size;
} inv_changes_in;
int inv_api_changes_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__ListStockChangesRequest *req,
                       inv_changes_in *li);

/* ListFlashSales' filters: states (FlashSaleState values, in ctx's arena),
 * the position after the page token (NULL on the first page), the filters'
 * hash and the page size */
typedef struct inv_sales_in {
    const int *states;
    size_t nstates;
    char after[CM_PAGE_POSITION_MAX + 1];
    const char *after_id;
    uint64_t filters;
    int size;
} inv_sales_in;
int inv_api_sales_in(cm_rpc_ctx *ctx, const Commerce__Inventory__V1__ListFlashSalesRequest *req,
                     inv_sales_in *li);

/* what an order event asks of a reservation */
typedef struct inv_order_in {
    const char *tenant;   /* the payload's, else the record's ce_tenantid */
    const char *order_id; /* a valid key */
    int to;               /* INV_CONFIRMED (OrderPaid) or INV_RELEASED (OrderCancelled) */
} inv_order_in;

/* an order record decoded and checked as the consumer acts on it (its
 * decode step, also run by tests/fuzz): 0 with *msg (free with
 * protobuf_c_message_free_unpacked) and *in pointing into it and into ev;
 * 1 for a type inventory does not act on; CM_EINVAL (not an encoding of
 * its type, no tenant, a bad order_id) with *msg NULL */
int inv_ev_order_in(const cm_event *ev, ProtobufCMessage **msg, inv_order_in *in);

int inv_app_init(cm_service *svc, void **app, char *err, size_t errlen);
void inv_app_fini(cm_service *svc, void *app);

/* the order-event consumer (OrderPaid -> confirm, OrderCancelled -> release) */
/* the sweeper ticker: expired reservations, and the invariant metric every
 * INVENTORY_INVARIANT_CHECK_S (on the runtime's connection db) */
void inv_sweep(cm_service *svc, cm_db *db, void *app);

int inv_on_order_event(cm_db *db, const cm_event *ev, void *arg);
/* its batch hooks: the events of a batch's confirms and releases are
 * staged by the handler and written with one insert at the end (arg: the
 * app) */
void inv_on_order_tx_begin(void *arg);
int inv_on_order_tx_end(cm_db *db, void *arg);

#endif
