/*
 * stl_api: the SettlementService handlers and the process's app state.
 */
#ifndef STL_API_H
#define STL_API_H

#include "cm_metrics.h"
#include "cm_rpc.h"
#include "cm_service.h"
#include "stl_cost.h"
#include "stl_ledger.h"
#include "stl_store.h"

#include <stddef.h>

typedef struct stl_app {
    stl_settings defaults; /* SETTLEMENT_DEFAULT_* */
    int events_on;
    char topic[256];    /* SETTLEMENT_TOPIC */
    stl_ledger *ledger; /* the order-event consumer's (one consumer thread) */
    cm_counter *posted, *reversed, *duplicates, *capped, *parked, *dead_lettered, *runs, *payouts;
    cm_counter *payouts_paid, *payouts_failed;
    cm_gauge *payouts_pending; /* the payer's, while it leads (stl_payer) */
    cm_histogram *lag;
    stl_ledger_stats last; /* what was last added to the counters */
    /* the commission consumer's (one consumer thread) and its metrics */
    stl_costs *costs;
    cm_counter *costs_posted, *costs_duplicates;
    cm_histogram *costs_lag;
    stl_costs_stats costs_last;
} stl_app;

extern const cm_rpc_method stl_methods[];
extern const size_t stl_methods_count;

int stl_app_init(cm_service *svc, void **app, char *err, size_t errlen);
void stl_app_fini(cm_service *svc, void *app);

#endif
