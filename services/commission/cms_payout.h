/*
 * cms_payout: payouts (README.md, "Payouts"). SettleCommissions nets a
 * channel's PAYABLE commissions and adjustments that are in no payout
 * into one PENDING payout; ReportPayoutResult settles them (PAID, with
 * CommissionSettled and the partners' settled events) or frees them for
 * the next payout (FAILED). each call is one transaction, serialized per
 * channel by an advisory lock.
 */
#ifndef CMS_PAYOUT_H
#define CMS_PAYOUT_H

#include <stdint.h>

#include "cm_db.h"
#include "cms_api.h"
#include "cms_store.h"

#define CMS_REF_MAX 128    /* provider_reference: characters */
#define CMS_REASON_MAX 256 /* failure_reason: characters */

typedef struct cms_payout {
    char id[CM_ID_SIZE];
    char channel[CMS_ID_MAX + 1];
    char currency[4];
    char request_id[CMS_ID_MAX + 1];
    int state; /* CMS_PAYOUT_* */
    int64_t amount, commissions, adjustments, created_ms, reported_ms;
    int64_t period_start_ms; /* 0: every period */
    char reference[CMS_REF_MAX * 4 + 1];
    char reason[CMS_REASON_MAX * 4 + 1];
} cms_payout;

/* SettleCommissions: the items of the period starting at period_ms (0:
 * of every period). *verdict: CMS_OK (out made, CommissionPayoutCreated
 * written), CMS_SAME (out: the payout request_id made before),
 * CMS_KEY_REUSED (another channel, currency or period), CMS_NO_REF (no
 * such channel) or CMS_BELOW_MINIMUM (*payable: the net that waits). 0 or
 * a CM_E* */
int cms_payout_settle(cm_db *db, const cms_app *app, const char *tenant, const char *request_id,
                      const char *channel, const char *currency, int64_t period_ms, cms_payout *out,
                      int64_t *payable, int *verdict);

/* ListPayouts: the tenant's payouts, newest first (payout_id is a
 * UUIDv7), of channel ("" any) in the states of the mask (bit 1 << state;
 * 0 any), after after_id ("" from the newest), at most limit into out.
 * 0 or a CM_E* */
int cms_payout_list(cm_db *db, const char *tenant, const char *channel, unsigned states,
                    const char *after_id, int limit, cms_payout *out, int *n);

/* GetPayout: 0, CM_ENOTFOUND or a CM_E*; with channel (not NULL) a payout
 * to another channel is CM_ENOTFOUND, as an unknown id */
int cms_payout_get(cm_db *db, const char *tenant, const char *id, const char *channel,
                   cms_payout *out);

/* ReportPayoutResult (result CMS_PAYOUT_PAID or _FAILED; reference or
 * reason with it), writing CommissionPayoutPaid or _Failed. *verdict: CMS_OK, CMS_SAME (that result
 * was reported before) or CMS_ILLEGAL (another one was). 0, CM_ENOTFOUND or a CM_E* */
int cms_payout_report(cm_db *db, const cms_app *app, const char *tenant, const char *id, int result,
                      const char *reference, const char *reason, cms_payout *out, int *verdict);

#endif
