/*
 * cms_partner: commission's events for partners (kafka/partner/README.md):
 * CloudEvents 1.0 in structured JSON mode, valid against
 * kafka/partner/schema/commission-event.v1.schema.json, written through
 * the outbox beside the protobuf events, keyed by channel id.
 */
#ifndef CMS_PARTNER_H
#define CMS_PARTNER_H

#include <stddef.h>
#include <stdint.h>

#include "cm_arena.h"
#include "cm_outbox.h"
#include "cms_store.h"

#define CMS_PARTNER_ACCRUED "com.commerce.commission.v1.accrued"
#define CMS_PARTNER_PAYABLE "com.commerce.commission.v1.payable"
#define CMS_PARTNER_CLAWED_BACK "com.commerce.commission.v1.clawed_back"
#define CMS_PARTNER_SETTLED "com.commerce.commission.v1.settled"
#define CMS_PARTNER_ADJUSTED "com.commerce.commission.v1.adjusted"
#define CMS_PARTNER_ADJUSTMENT_PAYABLE "com.commerce.commission.v1.adjustment_payable"
#define CMS_PARTNER_PAYOUT_CREATED "com.commerce.commission.v1.payout_created"
#define CMS_PARTNER_PAYOUT_PAID "com.commerce.commission.v1.payout_paid"
#define CMS_PARTNER_PAYOUT_FAILED "com.commerce.commission.v1.payout_failed"

/* the partner event of type (one of the above) about commission c of
 * tenant, as an outbox event on topic with a new event id, built in a:
 * the cloudevent's data is the commission as the proto3 json mapping
 * writes it, with refund_id, clawback and after_settlement (the commission
 * is SETTLED) for clawed_back, payout_id for settled. 0; CM_ENOMEM; or CM_EINVAL for an
 * event the contract cannot carry (a commission without brackets — an
 * order of amount 0 — or a clawback of 0), which the caller skips. */
int cms_partner_event(cm_arena *a, const char *topic, const char *type, const char *tenant,
                      const cms_commission *c, const char *refund_id, int64_t clawback,
                      int64_t at_ms, const char *traceparent, cm_outbox_event *out);

/* the partner event of type CMS_PARTNER_ADJUSTED or _ADJUSTMENT_PAYABLE
 * about adjustment x (subject: its id; key: its channel), its data the
 * adjustment in the proto3 json mapping (amount of either sign). 0;
 * CM_ENOMEM; CM_EINVAL (an amount of 0, or adjustment_payable of an
 * adjustment that is not PAYABLE), which the caller skips. */
int cms_partner_adjustment_event(cm_arena *a, const char *topic, const char *type,
                                 const char *tenant, const cms_adjustment *x, int64_t at_ms,
                                 const char *traceparent, cm_outbox_event *out);

/* the partner event of type CMS_PARTNER_PAYOUT_* about payout x
 * (subject: its id; key: its channel), its data the payout in the proto3
 * json mapping without the fields still unset (reported_at, period_start,
 * provider_reference, failure_reason). 0, CM_ENOMEM or CM_EINVAL (an
 * amount <= 0). */
typedef struct cms_payout cms_payout; /* cms_payout.h */
int cms_partner_payout_event(cm_arena *a, const char *topic, const char *type, const char *tenant,
                             const cms_payout *x, int64_t at_ms, cm_outbox_event *out);

#endif
