/*
 * ord_api: the OrderService handlers and the process's app state (the
 * inventory client, the payment-timeout sweeper, settings).
 */
#ifndef ORD_API_H
#define ORD_API_H

#include "cm_rpc.h"
#include "cm_service.h"
#include "ord_domain.h"

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

int ord_app_init(cm_service *svc, void **app, char *err, size_t errlen);
void ord_app_fini(cm_service *svc, void *app);

/* the sweeper ticker: queued releases, then unpaid orders past their
 * deadline (on the runtime's connection db) */
void ord_sweep(cm_service *svc, cm_db *db, void *app);

#endif
