/*
 * cms_payable: FROZEN -> PAYABLE (README.md, "Payable"). a singleton
 * ticker moves, in batches, the FROZEN commissions whose order completed
 * more than the tenant's after-sale window ago (its own, else
 * COMMISSION_AFTER_SALE_DAYS), with the FROZEN adjustments their orders
 * caused, and writes a CommissionPayable per commission and a
 * CommissionAdjustmentPayable per adjustment (and the partners' payable
 * and adjustment_payable) through the outbox in the same transaction.
 */
#ifndef CMS_PAYABLE_H
#define CMS_PAYABLE_H

#include "cm_db.h"

struct cm_service;

/* the ticker (arg: the cms_app). runs until no commission is due, one
 * transaction per batch; a failed batch is logged and tried next tick */
void cms_payable_tick(struct cm_service *svc, cm_db *db, void *arg);

#endif
