/* commission's events: see cms_events.h */
#include "cms_events.h"

#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_park.h"
#include "cm_money.h"
#include "cm_pb.h"
#include "cms_accrual.h"
#include "cms_api.h"
#include "cms_payout.h"

#include <stdio.h>
#include <string.h>

#include "commerce/events/v1/commission_events.pb-c.h"
#include "commerce/events/v1/order_events.pb-c.h"

Commerce__Commission__V1__Commission *cms_pb_commission(cm_arena *a, const cms_commission *c)
{
    Commerce__Commission__V1__Commission *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__commission__v1__commission__init(m);
    m->commission_id = cm_arena_strdup(a, c->id);
    m->channel_id = cm_arena_strdup(a, c->channel);
    m->order_id = cm_arena_strdup(a, c->order_id);
    m->merchant_id = cm_arena_strdup(a, c->merchant);
    m->state = (Commerce__Commission__V1__CommissionState)c->state;
    m->order_amount = cm_pb_money(a, c->order_amount, c->currency);
    m->period_sales_before = cm_pb_money(a, c->sales_before, c->currency);
    m->amount = cm_pb_money(a, c->amount, c->currency);
    m->clawed_back_amount = cm_pb_money(a, c->clawed_back, c->currency);
    m->net_amount = cm_pb_money(a, c->amount - c->clawed_back, c->currency);
    m->tier_schedule_id = cm_arena_strdup(a, c->schedule_id);
    m->tier_schedule_revision = c->schedule_revision;
    m->period_start = cm_pb_timestamp(a, c->period_start_ms);
    m->period_end = cm_pb_timestamp(a, c->period_end_ms);
    m->paid_at = cm_pb_timestamp(a, c->paid_ms);
    m->accrued_at = cm_pb_timestamp(a, c->accrued_ms);
    m->clawed_back_at = c->clawed_ms ? cm_pb_timestamp(a, c->clawed_ms) : NULL;
    m->payable_at = c->payable_ms ? cm_pb_timestamp(a, c->payable_ms) : NULL;
    m->settled_at = c->settled_ms ? cm_pb_timestamp(a, c->settled_ms) : NULL;
    m->payout_id = cm_arena_strdup(a, c->payout_id);
    m->parent_channel_id = cm_arena_strdup(a, c->parent);
    m->parent_override_bps = (int32_t)c->parent_bps;
    m->payer = (Commerce__Commission__V1__CommissionPayer)c->payer;
    m->brackets = cm_arena_calloc(a, c->nb ? c->nb : 1, sizeof *m->brackets);
    if (!m->commission_id || !m->channel_id || !m->order_id || !m->merchant_id ||
        !m->order_amount || !m->period_sales_before || !m->amount || !m->clawed_back_amount ||
        !m->net_amount || !m->tier_schedule_id || !m->parent_channel_id || !m->brackets ||
        !m->payout_id)
        return NULL;
    for (size_t k = 0; k < c->nb; k++) {
        Commerce__Commission__V1__BracketPortion *b = cm_arena_calloc(a, 1, sizeof *b);
        if (!b)
            return NULL;
        commerce__commission__v1__bracket_portion__init(b);
        b->from_sales = cm_pb_money(a, c->b_from[k], c->currency);
        b->rate_bps = (int32_t)c->b_bps[k];
        b->sales = cm_pb_money(a, c->b_sales[k], c->currency);
        b->commission = cm_pb_money(a, c->b_amount[k], c->currency);
        if (!b->from_sales || !b->sales || !b->commission)
            return NULL;
        m->brackets[k] = b;
    }
    m->n_brackets = c->nb;
    return m;
}

Commerce__Commission__V1__Adjustment *cms_pb_adjustment(cm_arena *a, const cms_adjustment *x)
{
    Commerce__Commission__V1__Adjustment *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__commission__v1__adjustment__init(m);
    m->adjustment_id = cm_arena_strdup(a, x->id);
    m->channel_id = cm_arena_strdup(a, x->channel);
    m->kind = (Commerce__Commission__V1__AdjustmentKind)x->kind;
    m->amount = cm_pb_money(a, x->amount, x->currency);
    m->order_id = cm_arena_strdup(a, x->order_id);
    m->child_channel_id = cm_arena_strdup(a, x->child);
    m->refund_id = cm_arena_strdup(a, x->refund_id);
    m->period_start = cm_pb_timestamp(a, x->period_start_ms);
    m->posted_at = cm_pb_timestamp(a, x->posted_ms);
    m->state = (Commerce__Commission__V1__CommissionState)x->state;
    m->payable_at = x->payable_ms ? cm_pb_timestamp(a, x->payable_ms) : NULL;
    m->payout_id = cm_arena_strdup(a, x->payout_id);
    m->payer = (Commerce__Commission__V1__CommissionPayer)x->payer;
    m->merchant_id = cm_arena_strdup(a, x->merchant);
    return m->merchant_id && m->adjustment_id && m->channel_id && m->amount && m->order_id &&
                   m->child_channel_id && m->refund_id && m->payout_id
               ? m
               : NULL;
}

static int pack(cm_arena *a, const ProtobufCMessage *msg, const uint8_t **out, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *p = cm_arena_alloc(a, n ? n : 1);
    if (!p)
        return CM_ENOMEM;
    protobuf_c_message_pack(msg, p);
    *out = p;
    *len = n;
    return 0;
}

int cms_ev_pack_accrued(cm_arena *a, const char *tenant, const char *event_id,
                        const cms_commission *c, const uint8_t **out, size_t *len)
{
    Commerce__Events__V1__CommissionAccrued e = COMMERCE__EVENTS__V1__COMMISSION_ACCRUED__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = (char *)tenant;
    e.commission = cms_pb_commission(a, c);
    if (!e.commission)
        return CM_ENOMEM;
    e.occurred_at = e.commission->accrued_at;
    e.channel_id = e.commission->channel_id;
    return pack(a, &e.base, out, len);
}

int cms_ev_pack_payable(cm_arena *a, const char *tenant, const char *event_id,
                        const cms_commission *c, const uint8_t **out, size_t *len)
{
    Commerce__Events__V1__CommissionPayable e = COMMERCE__EVENTS__V1__COMMISSION_PAYABLE__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = (char *)tenant;
    e.commission = cms_pb_commission(a, c);
    if (!e.commission || !e.commission->payable_at)
        return CM_ENOMEM;
    e.occurred_at = e.commission->payable_at;
    e.channel_id = e.commission->channel_id;
    return pack(a, &e.base, out, len);
}

int cms_ev_pack_settled(cm_arena *a, const char *tenant, const char *event_id,
                        const cms_commission *c, const uint8_t **out, size_t *len)
{
    Commerce__Events__V1__CommissionSettled e = COMMERCE__EVENTS__V1__COMMISSION_SETTLED__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = (char *)tenant;
    e.commission = cms_pb_commission(a, c);
    if (!e.commission || !e.commission->settled_at)
        return CM_ENOMEM;
    e.occurred_at = e.commission->settled_at;
    e.channel_id = e.commission->channel_id;
    e.payout_id = e.commission->payout_id;
    return pack(a, &e.base, out, len);
}

Commerce__Commission__V1__Payout *cms_pb_payout(cm_arena *a, const cms_payout *p)
{
    Commerce__Commission__V1__Payout *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__commission__v1__payout__init(m);
    m->payout_id = cm_arena_strdup(a, p->id);
    m->channel_id = cm_arena_strdup(a, p->channel);
    m->state = (Commerce__Commission__V1__PayoutState)p->state;
    m->amount = cm_pb_money(a, p->amount, p->currency);
    m->commissions = p->commissions;
    m->adjustments = p->adjustments;
    m->request_id = cm_arena_strdup(a, p->request_id);
    m->created_at = cm_pb_timestamp(a, p->created_ms);
    m->reported_at = p->reported_ms ? cm_pb_timestamp(a, p->reported_ms) : NULL;
    m->provider_reference = cm_arena_strdup(a, p->reference);
    m->failure_reason = cm_arena_strdup(a, p->reason);
    m->period_start = p->period_start_ms ? cm_pb_timestamp(a, p->period_start_ms) : NULL;
    return m->payout_id && m->channel_id && m->amount && m->request_id && m->created_at &&
                   m->provider_reference && m->failure_reason
               ? m
               : NULL;
}

/* the three payout events share one shape */
int cms_ev_pack_payout(cm_arena *a, const char *tenant, const char *event_id, int kind,
                       const cms_payout *p, const char **type, int64_t *occurred_ms,
                       const uint8_t **out, size_t *len)
{
    Commerce__Commission__V1__Payout *m = cms_pb_payout(a, p);
    if (!m)
        return CM_ENOMEM;
    *occurred_ms = kind == CMS_PAYOUT_EV_CREATED ? p->created_ms : p->reported_ms;
    Google__Protobuf__Timestamp *at = cm_pb_timestamp(a, *occurred_ms);
    if (!at)
        return CM_ENOMEM;
    switch (kind) {
    case CMS_PAYOUT_EV_CREATED: {
        Commerce__Events__V1__CommissionPayoutCreated e =
            COMMERCE__EVENTS__V1__COMMISSION_PAYOUT_CREATED__INIT;
        e.event_id = (char *)event_id;
        e.tenant_id = (char *)tenant;
        e.occurred_at = at;
        e.channel_id = m->channel_id;
        e.payout = m;
        *type = CMS_TYPE_PAYOUT_CREATED;
        return pack(a, &e.base, out, len);
    }
    case CMS_PAYOUT_EV_PAID: {
        Commerce__Events__V1__CommissionPayoutPaid e =
            COMMERCE__EVENTS__V1__COMMISSION_PAYOUT_PAID__INIT;
        e.event_id = (char *)event_id;
        e.tenant_id = (char *)tenant;
        e.occurred_at = at;
        e.channel_id = m->channel_id;
        e.payout = m;
        *type = CMS_TYPE_PAYOUT_PAID;
        return pack(a, &e.base, out, len);
    }
    case CMS_PAYOUT_EV_FAILED: {
        Commerce__Events__V1__CommissionPayoutFailed e =
            COMMERCE__EVENTS__V1__COMMISSION_PAYOUT_FAILED__INIT;
        e.event_id = (char *)event_id;
        e.tenant_id = (char *)tenant;
        e.occurred_at = at;
        e.channel_id = m->channel_id;
        e.payout = m;
        *type = CMS_TYPE_PAYOUT_FAILED;
        return pack(a, &e.base, out, len);
    }
    default:
        return CM_EINVAL;
    }
}

int cms_ev_pack_clawed_back(cm_arena *a, const char *tenant, const char *event_id,
                            const cms_commission *c, const char *refund_id, int64_t clawback,
                            const uint8_t **out, size_t *len)
{
    Commerce__Events__V1__CommissionClawedBack e =
        COMMERCE__EVENTS__V1__COMMISSION_CLAWED_BACK__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = (char *)tenant;
    e.commission = cms_pb_commission(a, c);
    e.refund_id = cm_arena_strdup(a, refund_id);
    e.clawback_amount = cm_pb_money(a, clawback, c->currency);
    e.after_settlement = c->state == CMS_SETTLED;
    if (!e.commission || !e.refund_id || !e.clawback_amount)
        return CM_ENOMEM;
    e.occurred_at = e.commission->clawed_back_at;
    e.channel_id = e.commission->channel_id;
    return pack(a, &e.base, out, len);
}

int cms_ev_pack_adjusted(cm_arena *a, const char *tenant, const char *event_id,
                         const cms_adjustment *x, const uint8_t **out, size_t *len)
{
    Commerce__Events__V1__CommissionAdjusted e = COMMERCE__EVENTS__V1__COMMISSION_ADJUSTED__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = (char *)tenant;
    e.adjustment = cms_pb_adjustment(a, x);
    if (!e.adjustment)
        return CM_ENOMEM;
    e.occurred_at = e.adjustment->posted_at;
    e.channel_id = e.adjustment->channel_id;
    return pack(a, &e.base, out, len);
}

int cms_ev_pack_adjustment_payable(cm_arena *a, const char *tenant, const char *event_id,
                                   const cms_adjustment *x, const uint8_t **out, size_t *len)
{
    Commerce__Events__V1__CommissionAdjustmentPayable e =
        COMMERCE__EVENTS__V1__COMMISSION_ADJUSTMENT_PAYABLE__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = (char *)tenant;
    e.adjustment = cms_pb_adjustment(a, x);
    if (!e.adjustment || !e.adjustment->payable_at)
        return CM_ENOMEM;
    e.occurred_at = e.adjustment->payable_at;
    e.channel_id = e.adjustment->channel_id;
    return pack(a, &e.base, out, len);
}

/* ---- the order events ---- */

static int64_t ts_ms(const Google__Protobuf__Timestamp *t)
{
    return t ? cm_pb_timestamp_ms(t) : 0;
}

static int valid_key(const char *s)
{
    return cm_id_key_valid(s, CMS_ID_MAX);
}

int cms_ev_paid_in(const cm_event *ev, Commerce__Events__V1__OrderPaid **msg, cms_pay_in *in)
{
    *msg = NULL;
    memset(in, 0, sizeof *in);
    Commerce__Events__V1__OrderPaid *p =
        commerce__events__v1__order_paid__unpack(NULL, ev->len, ev->payload);
    if (!p)
        return CM_EINVAL;
    const Commerce__Order__V1__Order *o = p->order;
    const char *tenant = *p->tenant_id ? p->tenant_id : ev->tenant_id;
    int rc = 0;
    if (o && !*o->channel_id) {
        /* no channel: no commission */
    } else if (o && *tenant && cm_id_is_uuid(p->order_id) && valid_key(o->channel_id) &&
               valid_key(o->merchant_id)) {
        const Commerce__Common__V1__Money *amt =
            o->payment && o->payment->amount ? o->payment->amount : o->total_amount;
        if (amt && cm_money_currency_valid(amt->currency) && amt->amount_minor >= 0) {
            int64_t paid = ts_ms(o->payment ? o->payment->paid_at : NULL);
            if (!paid)
                paid = ts_ms(o->payment ? o->payment->recorded_at : NULL);
            if (!paid)
                paid = ts_ms(p->occurred_at);
            *in = (cms_pay_in){.tenant = tenant,
                               .order_id = p->order_id,
                               .channel = o->channel_id,
                               .merchant = o->merchant_id,
                               .currency = amt->currency,
                               .event_id = ev->id,
                               .traceparent = ev->traceparent,
                               .amount = amt->amount_minor,
                               .paid_ms = paid};
        } else {
            rc = CM_EINVAL;
        }
    } else {
        rc = CM_EINVAL;
    }
    if (rc == CM_EINVAL) {
        cm_log_warn("OrderPaid event refused: missing or invalid fields", "event_id", ev->id, NULL);
        protobuf_c_message_free_unpacked(&p->base, NULL);
        return rc;
    }
    *msg = p;
    return 0;
}

static int on_paid(cms_app *app, const cm_event *ev)
{
    Commerce__Events__V1__OrderPaid *p;
    cms_pay_in in;
    int rc = cms_ev_paid_in(ev, &p, &in);
    if (rc)
        return rc;
    /* no channel (in.tenant unset): no commission */
    if (in.tenant)
        rc = cms_accrual_stage_pay(app->accrual, &in);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    return rc;
}

int cms_ev_refund_in(const cm_event *ev, Commerce__Events__V1__OrderRefunded **msg,
                     cms_refund_in *in)
{
    *msg = NULL;
    Commerce__Events__V1__OrderRefunded *p =
        commerce__events__v1__order_refunded__unpack(NULL, ev->len, ev->payload);
    if (!p)
        return CM_EINVAL;
    const char *tenant = *p->tenant_id ? p->tenant_id : ev->tenant_id;
    const Commerce__Order__V1__Refund *rf = p->refund;
    if (p->order && !*p->order->channel_id) {
        /* no channel: nothing was accrued */
        *in = (cms_refund_in){.tenant = NULL};
    } else if (rf && rf->amount && *tenant && cm_id_is_uuid(p->order_id) &&
               valid_key(rf->refund_id) && cm_money_currency_valid(rf->amount->currency) &&
               rf->amount->amount_minor > 0) {
        *in = (cms_refund_in){.tenant = tenant,
                              .order_id = p->order_id,
                              .refund_id = rf->refund_id,
                              .currency = rf->amount->currency,
                              .event_id = ev->id,
                              .traceparent = ev->traceparent,
                              .amount = rf->amount->amount_minor,
                              .topic = ev->topic,
                              .payload = ev->payload,
                              .len = ev->len};
    } else {
        cm_log_warn("OrderRefunded event refused: missing or invalid fields", "event_id", ev->id,
                    NULL);
        protobuf_c_message_free_unpacked(&p->base, NULL);
        return CM_EINVAL;
    }
    *msg = p;
    return 0;
}

static int on_refunded(cms_app *app, const cm_event *ev)
{
    Commerce__Events__V1__OrderRefunded *p;
    cms_refund_in in;
    int rc = cms_ev_refund_in(ev, &p, &in);
    if (rc)
        return rc;
    if (in.tenant)
        rc = cms_accrual_stage_refund(app->accrual, &in);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    return rc;
}

int cms_ev_completed_in(const cm_event *ev, Commerce__Events__V1__OrderCompleted **msg,
                        cms_completed_in *in)
{
    *msg = NULL;
    Commerce__Events__V1__OrderCompleted *p =
        commerce__events__v1__order_completed__unpack(NULL, ev->len, ev->payload);
    if (!p)
        return CM_EINVAL;
    const char *tenant = *p->tenant_id ? p->tenant_id : ev->tenant_id;
    if (p->order && !*p->order->channel_id) {
        /* no channel: no commission */
        *in = (cms_completed_in){.tenant = NULL};
    } else if (*tenant && cm_id_is_uuid(p->order_id) && p->occurred_at) {
        /* the buyer's receipt as the order records it, else when the
         * completion was recorded */
        int64_t done = ts_ms(p->order ? p->order->completed_at : NULL);
        *in = (cms_completed_in){.tenant = tenant,
                                 .order_id = p->order_id,
                                 .completed_ms = done ? done : ts_ms(p->occurred_at)};
    } else {
        cm_log_warn("OrderCompleted event refused: missing or invalid fields", "event_id", ev->id,
                    NULL);
        protobuf_c_message_free_unpacked(&p->base, NULL);
        return CM_EINVAL;
    }
    *msg = p;
    return 0;
}

/* the completion is recorded by order, not on the commission: the payable
 * ticker joins the two, so a completion that comes before its payment's
 * accrual (a later partition, or earlier in the same batch) still counts */
static int on_completed(cm_db *db, const cm_event *ev)
{
    Commerce__Events__V1__OrderCompleted *p;
    cms_completed_in in;
    int rc = cms_ev_completed_in(ev, &p, &in);
    if (rc)
        return rc;
    if (in.tenant) {
        char at[24];
        snprintf(at, sizeof at, "%lld", (long long)in.completed_ms);
        const char *prm[] = {in.tenant, in.order_id, at, ev->id};
        rc = cm_db_exec_prepared(db, "record completion", "cms_completed",
                                 "INSERT INTO completed_orders (tenant_id, order_id, completed_at, "
                                 "event_id) VALUES ($1, $2::uuid, to_timestamp($3::bigint / "
                                 "1000.0), $4::uuid) ON CONFLICT DO NOTHING",
                                 4, prm, NULL, NULL, NULL);
    }
    protobuf_c_message_free_unpacked(&p->base, NULL);
    return rc;
}

int cms_on_order_event(cm_db *db, const cm_event *ev, void *arg)
{
    cms_app *app = arg;
    if (strcmp(ev->type, "commerce.events.v1.OrderCompleted") == 0)
        return on_completed(db, ev);
    if (strcmp(ev->type, "commerce.events.v1.OrderPaid") == 0)
        return on_paid(app, ev);
    if (strcmp(ev->type, "commerce.events.v1.OrderRefunded") == 0)
        return on_refunded(app, ev);
    return 0;
}

void cms_on_tx_begin(void *arg)
{
    cms_app *app = arg;
    cms_accrual_begin(app->accrual);
}

int cms_on_tx_end(cm_db *db, void *arg)
{
    cms_app *app = arg;
    return cms_accrual_flush(app->accrual, db);
}

void cms_on_committed(const cm_event *ev, int duplicate, void *arg)
{
    (void)ev;
    (void)duplicate;
    cms_app *app = arg;
    cms_accrual_stats s;
    cms_accrual_get_stats(app->accrual, &s);
    cm_counter_add(app->accrued, s.accrued - app->last.accrued);
    cm_counter_add(app->clawbacks, s.clawbacks - app->last.clawbacks);
    cm_counter_add(app->duplicates, s.duplicates - app->last.duplicates);
    cm_counter_add(app->skipped, s.skipped - app->last.skipped);
    cm_counter_add(app->parked, s.parked - app->last.parked);
    cm_counter_add(app->adjustments, s.adjustments - app->last.adjustments);
    app->last = s;
}

void cms_parker(cm_service *svc, cm_db *db, void *arg)
{
    cms_app *app = arg;
    int n = 0, rc;
    do {
        rc = cm_park_expire(db, "payment not accrued in time",
                            (int)cm_service_int(svc, "COMMISSION_PARK_TIMEOUT_S"), &n);
        if (rc == 0 && n) {
            cm_counter_add(app->dead_lettered, (uint64_t)n);
            cm_log_warn("parked refunds dead-lettered: their payment never accrued", "count",
                        n > 1 ? "several" : "one", NULL);
        }
    } while (rc == 0 && n == 500);
    if (rc)
        cm_log_warn("parker could not expire refunds", "error", cm_strerror(rc), NULL);
}
