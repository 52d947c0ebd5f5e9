/*
 * cms_api: the CommissionService handlers and the process's app state.
 */
#ifndef CMS_API_H
#define CMS_API_H

#include <stddef.h>

#include "cm_metrics.h"
#include "cm_rpc.h"
#include "cm_service.h"
#include "cms_accrual.h"
#include "cms_store.h"

#include "commerce/commission/v1/commission_service.pb-c.h"

typedef struct cms_app {
    int events_on;
    long long after_sale_days; /* COMMISSION_AFTER_SALE_DAYS: tenants without a window */
    char topic[256];           /* COMMISSION_TOPIC */
    char partner_topic[256];   /* COMMISSION_PARTNER_TOPIC */
    cms_accrual *accrual;      /* the order-event consumer's (one consumer thread) */
    struct cms_feed *feed;     /* the partner feed (cms_feed.h) */
    cm_counter *accrued, *clawbacks, *duplicates, *skipped, *parked, *adjustments;
    cm_counter *dead_lettered;
    cm_histogram *lag;
    cms_accrual_stats last; /* what was last added to the counters */
} cms_app;

extern const cm_rpc_method cms_methods[];
extern const size_t cms_methods_count;

/* the tier schedule of a request as the domain checks it (the handler's
 * checks before any i/o, also run by tests/fuzz): 0 with s filled, or the
 * failure recorded in ctx naming the field */
int cms_api_schedule_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__TierSchedule *in,
                        cms_schedule_row *s);

int cms_app_init(cm_service *svc, void **app, char *err, size_t errlen);
void cms_app_fini(cm_service *svc, void *app);

#endif
