/*
 * ord_api: the OrderService handlers and the process's app state (the
 * inventory client, the payment-timeout sweeper, settings).
 */
#ifndef ORD_API_H
#define ORD_API_H

#include "cm_rpc.h"
#include "cm_service.h"

#include <stddef.h>

extern const cm_rpc_method ord_methods[];
extern const size_t ord_methods_count;

int ord_app_init(cm_service *svc, void **app, char *err, size_t errlen);
void ord_app_fini(cm_service *svc, void *app);

/* the sweeper ticker: queued releases, then unpaid orders past their
 * deadline (on the runtime's connection db) */
void ord_sweep(cm_service *svc, cm_db *db, void *app);

#endif
