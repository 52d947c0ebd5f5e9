/* order events through the outbox: see ord_events.h */
#include "ord_events.h"

#include "cm_err.h"
#include "cm_id.h"
#include "cm_outbox.h"
#include "cm_pb.h"

#include <string.h>

#include "commerce/events/v1/order_events.pb-c.h"

Commerce__Order__V1__Refund *ord_pb_refund(cm_arena *a, const ord_refund *r, const char *currency)
{
    Commerce__Order__V1__Refund *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__order__v1__refund__init(m);
    m->refund_id = cm_arena_strdup(a, r->refund_id);
    m->scope = (Commerce__Order__V1__RefundScope)r->scope;
    m->amount = cm_pb_money(a, r->amount, currency);
    m->reason = cm_arena_strdup(a, r->reason);
    m->created_at = cm_pb_timestamp(a, r->created_ms);
    m->cost_reversed = cm_pb_money(a, r->cost_reversed, currency);
    if (r->nlines) {
        m->lines = cm_arena_calloc(a, r->nlines, sizeof *m->lines);
        if (!m->lines)
            return NULL;
        for (size_t i = 0; i < r->nlines; i++) {
            Commerce__Order__V1__RefundLine *l = cm_arena_calloc(a, 1, sizeof *l);
            if (!l)
                return NULL;
            commerce__order__v1__refund_line__init(l);
            l->sku = cm_arena_strdup(a, r->lines[i].sku);
            l->quantity = r->lines[i].qty;
            l->amount = cm_pb_money(a, r->lines[i].amount, currency);
            l->cost_reversed = cm_pb_money(a, r->lines[i].cost, currency);
            m->lines[i] = l;
        }
        m->n_lines = r->nlines;
    }
    return m;
}

Commerce__Order__V1__Order *ord_pb_order(cm_arena *a, const ord_order *o)
{
    Commerce__Order__V1__Order *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__order__v1__order__init(m);
    m->order_id = cm_arena_strdup(a, o->order_id);
    m->request_id = cm_arena_strdup(a, o->request_id);
    m->state = (Commerce__Order__V1__OrderState)o->state;
    m->buyer_id = cm_arena_strdup(a, o->buyer_id);
    m->merchant_id = cm_arena_strdup(a, o->merchant_id);
    m->channel_id = cm_arena_strdup(a, o->channel_id);
    m->currency = cm_arena_strdup(a, o->currency);
    m->lines = cm_arena_calloc(a, o->nlines ? o->nlines : 1, sizeof *m->lines);
    if (!m->lines)
        return NULL;
    for (size_t i = 0; i < o->nlines; i++) {
        const ord_line *ol = &o->lines[i];
        Commerce__Order__V1__OrderLine *l = cm_arena_calloc(a, 1, sizeof *l);
        if (!l)
            return NULL;
        commerce__order__v1__order_line__init(l);
        l->sku = cm_arena_strdup(a, ol->sku);
        l->quantity = ol->qty;
        l->unit_price = cm_pb_money(a, ol->unit_price, o->currency);
        l->line_total = cm_pb_money(a, ol->line_total, o->currency);
        l->refunded_quantity = ol->refunded_qty;
        l->refunded_amount = cm_pb_money(a, ol->refunded_amount, o->currency);
        l->flash_sale_id = cm_arena_strdup(a, ol->flash_sale_id);
        if (ol->unit_cost >= 0)
            l->unit_cost = cm_pb_money(a, ol->unit_cost, o->currency);
        l->cost_reversed = cm_pb_money(a, ol->cost_reversed, o->currency);
        m->lines[i] = l;
    }
    m->n_lines = o->nlines;
    m->total_amount = cm_pb_money(a, o->total, o->currency);
    m->refunded_amount = cm_pb_money(a, o->refunded, o->currency);
    if (o->payment_id[0]) {
        Commerce__Order__V1__Payment *p = cm_arena_calloc(a, 1, sizeof *p);
        if (!p)
            return NULL;
        commerce__order__v1__payment__init(p);
        p->payment_id = cm_arena_strdup(a, o->payment_id);
        p->amount = cm_pb_money(a, o->pay_amount, o->currency);
        p->provider = cm_arena_strdup(a, o->provider);
        p->provider_reference = cm_arena_strdup(a, o->provider_ref);
        p->paid_at = cm_pb_timestamp(a, o->paid_ms);
        p->recorded_at = cm_pb_timestamp(a, o->pay_recorded_ms);
        m->payment = p;
    }
    if (o->nrefunds) {
        m->refunds = cm_arena_calloc(a, o->nrefunds, sizeof *m->refunds);
        if (!m->refunds)
            return NULL;
        for (size_t i = 0; i < o->nrefunds; i++) {
            m->refunds[i] = ord_pb_refund(a, &o->refunds[i], o->currency);
            if (!m->refunds[i])
                return NULL;
        }
        m->n_refunds = o->nrefunds;
    }
    if (o->shipped_ms) {
        Commerce__Order__V1__Shipment *s = cm_arena_calloc(a, 1, sizeof *s);
        if (!s)
            return NULL;
        commerce__order__v1__shipment__init(s);
        s->carrier = cm_arena_strdup(a, o->carrier);
        s->tracking_number = cm_arena_strdup(a, o->tracking);
        s->shipped_at = cm_pb_timestamp(a, o->shipped_ms);
        m->shipment = s;
    }
    m->cancel_reason = (Commerce__Order__V1__CancelReason)o->cancel_reason;
    m->cancel_note = cm_arena_strdup(a, o->cancel_note);
    m->flash_sale = o->flash;
    m->external_ref = cm_arena_strdup(a, o->external_ref);
    m->created_at = cm_pb_timestamp(a, o->created_ms);
    m->updated_at = cm_pb_timestamp(a, o->updated_ms);
    m->payment_deadline = cm_pb_timestamp(a, o->deadline_ms);
    m->cancelled_at = cm_pb_timestamp(a, o->cancelled_ms);
    m->completed_at = cm_pb_timestamp(a, o->completed_ms);
    m->completed_by = cm_arena_strdup(a, o->completed_by);
    ord_margin mg = ord_order_margin(o);
    m->cost_amount = cm_pb_money(a, mg.cost, o->currency);
    m->cost_reversed = cm_pb_money(a, mg.reversed, o->currency);
    m->gross_margin = cm_pb_money(a, mg.margin, o->currency);
    m->cost_complete = mg.complete;
    return m;
}

/* the event messages share their first fields; one struct of each kind is
 * filled and packed */
int ord_ev_build(cm_arena *a, const ord_ev_ctx *ec, const char *tenant, int kind,
                 const ord_order *o, int prev_state, const ord_refund *r, cm_outbox_event *ev)
{
    char *id = cm_arena_alloc(a, CM_ID_SIZE);
    if (!id)
        return CM_ENOMEM;
    int rc = cm_id_uuid7(id);
    if (rc)
        return rc;
    Commerce__Order__V1__Order *order = ord_pb_order(a, o);
    /* when it happened: the change's own time */
    Google__Protobuf__Timestamp *at = cm_pb_timestamp(a, o->updated_ms);
    if (!order || !at)
        return CM_ENOMEM;
    const char *type = NULL;
    ProtobufCMessage *msg = NULL;
    Commerce__Order__V1__OrderState prev = (Commerce__Order__V1__OrderState)prev_state;
    Commerce__Events__V1__OrderCreated cr = COMMERCE__EVENTS__V1__ORDER_CREATED__INIT;
    Commerce__Events__V1__OrderPaid pd = COMMERCE__EVENTS__V1__ORDER_PAID__INIT;
    Commerce__Events__V1__OrderCancelled cn = COMMERCE__EVENTS__V1__ORDER_CANCELLED__INIT;
    Commerce__Events__V1__OrderShipped sh = COMMERCE__EVENTS__V1__ORDER_SHIPPED__INIT;
    Commerce__Events__V1__OrderCompleted cp = COMMERCE__EVENTS__V1__ORDER_COMPLETED__INIT;
    Commerce__Events__V1__OrderRefunded rf = COMMERCE__EVENTS__V1__ORDER_REFUNDED__INIT;
#define FILL(m)                                                                                    \
    do {                                                                                           \
        (m).event_id = id;                                                                         \
        (m).tenant_id = (char *)tenant;                                                            \
        (m).occurred_at = at;                                                                      \
        (m).order_id = order->order_id;                                                            \
        (m).order = order;                                                                         \
        msg = &(m).base;                                                                           \
    } while (0)
    switch (kind) {
    case ORD_EV_CREATED:
        FILL(cr);
        type = "commerce.events.v1.OrderCreated";
        break;
    case ORD_EV_PAID:
        FILL(pd);
        pd.previous_state = prev;
        type = "commerce.events.v1.OrderPaid";
        break;
    case ORD_EV_CANCELLED:
        FILL(cn);
        cn.previous_state = prev;
        type = "commerce.events.v1.OrderCancelled";
        break;
    case ORD_EV_SHIPPED:
        FILL(sh);
        sh.previous_state = prev;
        type = "commerce.events.v1.OrderShipped";
        break;
    case ORD_EV_COMPLETED:
        FILL(cp);
        cp.previous_state = prev;
        type = "commerce.events.v1.OrderCompleted";
        break;
    case ORD_EV_REFUNDED:
        FILL(rf);
        rf.previous_state = prev;
        rf.refund = r ? ord_pb_refund(a, r, o->currency) : NULL;
        if (!rf.refund)
            return CM_EINVAL;
        type = "commerce.events.v1.OrderRefunded";
        break;
    default:
        return CM_EINVAL;
    }
#undef FILL
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *p = cm_arena_alloc(a, len ? len : 1);
    if (!p)
        return CM_ENOMEM;
    protobuf_c_message_pack(msg, p);
    *ev = (cm_outbox_event){
        .event_id = id,
        .tenant_id = tenant,
        .topic = ec->topic && *ec->topic ? ec->topic : ORD_TOPIC,
        .key = order->order_id,
        .type = type,
        .source = "/commerce/order",
        .payload = p,
        .len = len,
        .occurred_at_ms = o->updated_ms,
        .traceparent = ec->traceparent,
    };
    return 0;
}
