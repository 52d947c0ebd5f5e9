/*
 * ord_api: the OrderService handlers and the process's app state (the
 * inventory client, the payment-timeout sweeper, settings).
 */
#ifndef ORD_API_H
#define ORD_API_H

#include "cm_rpc.h"
#include "cm_service.h"
#include "ord_domain.h"
#include "ord_store.h"

#include "commerce/order/v1/order_service.pb-c.h"

#include <stddef.h>

extern const cm_rpc_method ord_methods[];
extern const size_t ord_methods_count;

/* a CreateOrder request as the domain checks it, o filled from it (the
 * handler's checks before any i/o, also run by tests/fuzz): 0, or the
 * failure recorded in ctx naming the field */
int ord_api_create_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__CreateOrderRequest *req,
                      ord_create_in *ci, ord_order *o);

/* a RefundOrder request as the domain checks it (the handler's checks
 * before any i/o, also run by tests/fuzz): 0 with *ri and *body (the
 * canonical text its idempotency hash is taken of, in ctx's arena) set, or
 * the failure recorded in ctx naming the field */
int ord_api_refund_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__RefundOrderRequest *req,
                      ord_refund_in *ri, char **body);

/* the checks before any i/o of the other handlers, each also run by
 * tests/fuzz: 0 with the parsed values set, or the failure recorded in
 * ctx naming the field. now is the handler's clock (a time field may not
 * be more than ORD_PAID_AT_SKEW_MS after it); *paid_at, *at: the time
 * given, or now when unset */
int ord_api_pay_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__MarkPaidRequest *req, int64_t now,
                   int64_t *paid_at);
int ord_api_cancel_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__CancelOrderRequest *req);
int ord_api_ship_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__ShipOrderRequest *req, int64_t now,
                    int64_t *at);
int ord_api_complete_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__CompleteOrderRequest *req,
                        int64_t now, int64_t *at);
int ord_api_settings_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__PutTenantSettingsRequest *req,
                        ord_settings_in *si);
/* *from, *to: QueryMargin's paid range in ms, 0 where open */
int ord_api_margin_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__QueryMarginRequest *req,
                      int64_t *from, int64_t *to);

/* a ListOrders request as the store's query: filters, states (sorted),
 * time ranges, page size and the position after the page token */
typedef struct ord_list_in {
    ord_list_q q; /* its states and after_id point into this struct */
    int states[8];
    char after[40];
    uint64_t filters; /* the filters' hash the page tokens carry */
    int none;         /* a merchant's token asking for another merchant's */
} ord_list_in;

/* 0 with *li filled (q.tenant is ctx's), or the failure recorded in ctx
 * naming the field (a page token made for other filters included) */
int ord_api_list_in(cm_rpc_ctx *ctx, const Commerce__Order__V1__ListOrdersRequest *req,
                    ord_list_in *li);

int ord_app_init(cm_service *svc, void **app, char *err, size_t errlen);
void ord_app_fini(cm_service *svc, void *app);

/* the sweeper ticker: queued releases, then unpaid orders past their
 * deadline (on the runtime's connection db) */
void ord_sweep(cm_service *svc, cm_db *db, void *app);

#endif
