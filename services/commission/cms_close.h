/*
 * cms_close: closing a channel's finished whole-volume period (README.md,
 * "Closing a period"): ClosePeriod and the close ticker. every revision's
 * row of the period is locked (in the consumer's key order), repriced
 * together under the newest revision (cms_close), the difference posted as
 * PERIOD_CLOSE adjustments, one per merchant of the period pro rata to its
 * net sales there (cms_close_split), on the newest revision's payer
 * (PAYABLE at once, CommissionAdjusted and the partners' adjusted through
 * the outbox), the parent's share of it split the same way as
 * PERIOD_CLOSE adjustments of the parent, and the rows marked closed, in
 * one transaction. a closed period answers the close it had.
 */
#ifndef CMS_CLOSE_H
#define CMS_CLOSE_H

#include <stdint.h>

#include "cm_db.h"
#include "cms_api.h"
#include "cms_store.h"

typedef struct cms_close_row {
    char channel[CMS_ID_MAX + 1];
    char schedule_id[CMS_ID_MAX + 1];
    char currency[4];
    int64_t revision; /* the newest revision: what the close prices under */
    int64_t start_ms, end_ms;
    int64_t net_sales, commission, true_up, closed_ms;
    char adjustment_id[CM_ID_SIZE]; /* the first merchant's part; "" when true_up is 0 */
    /* the parent's share of true_up (the channel's latest parent in the
     * period, its pool's P(base + true_up) - P(base)) */
    char parent[CMS_ID_MAX + 1];           /* "" when none */
    int64_t parent_share;                  /* the sum of its parts */
    char parent_adjustment_id[CM_ID_SIZE]; /* the first part; "" when the share is 0 */
} cms_close_row;

/* CMS_CLOSE_EARLY: the period has not ended (a verdict of cms_close_period) */
#define CMS_CLOSE_EARLY 100

/* ClosePeriod of tenant's channel period under schedule_id starting at
 * start_ms. *verdict: CMS_OK (closed now, out), CMS_SAME (closed before,
 * out as it was), CMS_NO_REF (no such period), CMS_CLOSE_EARLY (not ended)
 * or CMS_ILLEGAL (its newest revision is not WHOLE_VOLUME). 0 or a CM_E* */
int cms_close_period(cm_db *db, const cms_app *app, const char *tenant, const char *channel,
                     const char *schedule_id, int64_t start_ms, cms_close_row *out, int *verdict);

/* the close ticker (arg: the cms_app): closes, one transaction each, the
 * whole-volume periods that ended COMMISSION_CLOSE_AFTER_S ago or more and
 * are not closed; a failure is logged and tried next tick */
struct cm_service;
void cms_close_tick(struct cm_service *svc, cm_db *db, void *arg);

#endif
