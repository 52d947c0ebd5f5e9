/*
 * ord_events: order events (commerce.events.v1, topic commerce.order.v1 or
 * ORDER_TOPIC) written to the outbox inside the caller's transaction, key
 * = order id, each carrying the whole order after the change; and the
 * conversions from stored orders to protobuf messages that the api shares.
 */
#ifndef ORD_EVENTS_H
#define ORD_EVENTS_H

#include "cm_arena.h"
#include "cm_db.h"
#include "ord_domain.h"

#include "commerce/order/v1/order.pb-c.h"

#define ORD_TOPIC "commerce.order.v1"

enum {
    ORD_EV_CREATED = 1,
    ORD_EV_PAID,
    ORD_EV_CANCELLED,
    ORD_EV_SHIPPED,
    ORD_EV_COMPLETED,
    ORD_EV_REFUNDED
};

/* where an event goes and what it carries besides the order: the topic
 * (ORDER_TOPIC, from the app) and the traceparent of the call being
 * handled (NULL for the sweeper's). both strings must outlive the write. */
typedef struct ord_ev_ctx {
    const char *topic;
    const char *traceparent;
} ord_ev_ctx;

/* the event of kind as an outbox row, everything allocated in a (for
 * cm_outbox_add, or the batched cm_outbox_rows of a create). 0, CM_ENOMEM or
 * CM_EINVAL. */
struct cm_outbox_event;
int ord_ev_build(cm_arena *a, const ord_ev_ctx *ec, const char *tenant, int kind,
                 const ord_order *o, int prev_state, const ord_refund *r,
                 struct cm_outbox_event *ev);

/* conversions; everything is allocated in a. NULL on out of memory.
 * (timestamps and money: cm_pb.h) */
Commerce__Order__V1__Order *ord_pb_order(cm_arena *a, const ord_order *o);
Commerce__Order__V1__Refund *ord_pb_refund(cm_arena *a, const ord_refund *r, const char *currency);

#endif
