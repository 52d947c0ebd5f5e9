/*
 * the inbox's decoding of a kafka record, then the decode step of every
 * consumer that acts on its type, without kafka or a database: inventory's
 * order events (OrderPaid, OrderCancelled), settlement's (OrderPaid,
 * OrderRefunded, OrderCompleted) and its commission-cost events
 * (CommissionAccrued, CommissionClawedBack, CommissionAdjusted),
 * commission's (OrderPaid, OrderRefunded, OrderCompleted).
 *
 * input: a flags byte, then for each of the 7 headers cm_event_decode
 * takes a length byte (255: absent) and that many bytes, then the key the
 * same way, then the payload (the rest). flags bit 0 sets content-type to
 * structured mode when it is absent, so the JSON attributes get fuzzed
 * without having to find the header first; bits 1-3, when ce_type is
 * absent, set it to one of the types above (1 OrderPaid, 2 OrderRefunded,
 * 3 OrderCompleted, 4 OrderCancelled, 5 CommissionAccrued,
 * 6 CommissionClawedBack, 7 CommissionAdjusted; 0 none).
 *
 * invariants: every string of the event is NUL-terminated and no longer
 * than what it came from; a structured-mode record gets its attributes
 * only when it has no ce_id; a decode step keeps its message exactly when
 * it accepts; an accepted event names a tenant and a UUID order (a valid
 * key for inventory), and what it moves has a known currency and an
 * amount of the right sign (>= 0 paid, > 0 refunded at commission); a
 * refund has a valid refund id; a commission cost has a valid channel, a
 * UUID commission or adjustment; a completion has a time when the event
 * had one.
 */
#include "cm_consumer.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_money.h"
#include "cm_pb.h"
#include "cms_events.h"
#include "inv_api.h"
#include "stl_events.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_events: %s\n", what);
    abort();
}

/* takes a length-prefixed field off the input; 0 when absent */
static int take(const uint8_t **p, size_t *left, const void **val, size_t *len)
{
    *val = NULL;
    *len = 0;
    if (*left == 0)
        return 0;
    size_t n = **p;
    (*p)++;
    (*left)--;
    if (n == 255)
        return 0;
    if (n > *left)
        n = *left;
    *val = *p;
    *len = n;
    *p += n;
    *left -= n;
    return 1;
}

static void check_paid(const cm_event *ev)
{
    Commerce__Events__V1__OrderPaid *msg;
    stl_pay_in s;
    if (stl_ev_paid_in(ev, &msg, &s) == 0) {
        if (!msg || !s.tenant || !*s.tenant || !cm_id_is_uuid(s.order_id) ||
            !cm_id_key_valid(s.merchant, 64) || !cm_money_currency_valid(s.currency) ||
            s.amount < 0)
            broken("settlement accepted an OrderPaid with invalid fields");
        protobuf_c_message_free_unpacked(&msg->base, NULL);
    } else if (msg) {
        broken("settlement refused an OrderPaid but kept the message");
    }
    cms_pay_in c;
    if (cms_ev_paid_in(ev, &msg, &c) == 0) {
        if (!msg)
            broken("commission accepted an OrderPaid without its message");
        if (c.tenant && (!*c.tenant || !cm_id_is_uuid(c.order_id) ||
                         !cm_id_key_valid(c.channel, 64) || !cm_id_key_valid(c.merchant, 64) ||
                         !cm_money_currency_valid(c.currency) || c.amount < 0))
            broken("commission accepted an OrderPaid with invalid fields");
        protobuf_c_message_free_unpacked(&msg->base, NULL);
    } else if (msg) {
        broken("commission refused an OrderPaid but kept the message");
    }
}

static void check_refunded(const cm_event *ev)
{
    Commerce__Events__V1__OrderRefunded *msg;
    stl_refund_in s;
    if (stl_ev_refund_in(ev, &msg, &s) == 0) {
        if (!msg || !s.tenant || !*s.tenant || !cm_id_is_uuid(s.order_id) ||
            !cm_id_key_valid(s.refund_id, 64) || !s.currency)
            broken("settlement accepted an OrderRefunded with invalid fields");
        protobuf_c_message_free_unpacked(&msg->base, NULL);
    } else if (msg) {
        broken("settlement refused an OrderRefunded but kept the message");
    }
    cms_refund_in c;
    if (cms_ev_refund_in(ev, &msg, &c) == 0) {
        if (!msg)
            broken("commission accepted an OrderRefunded without its message");
        if (c.tenant &&
            (!*c.tenant || !cm_id_is_uuid(c.order_id) || !cm_id_key_valid(c.refund_id, 64) ||
             !cm_money_currency_valid(c.currency) || c.amount <= 0 || c.payload != ev->payload ||
             c.len != ev->len))
            broken("commission accepted an OrderRefunded with invalid fields");
        protobuf_c_message_free_unpacked(&msg->base, NULL);
    } else if (msg) {
        broken("commission refused an OrderRefunded but kept the message");
    }
}

static void check_completed(const cm_event *ev)
{
    Commerce__Events__V1__OrderCompleted *msg;
    stl_completed_in s;
    if (stl_ev_completed_in(ev, &msg, &s) == 0) {
        if (!msg || !s.tenant || !*s.tenant || !cm_id_is_uuid(s.order_id) ||
            (msg->occurred_at && !s.completed_ms && cm_pb_timestamp_ms(msg->occurred_at)))
            broken("settlement accepted an OrderCompleted with invalid fields");
        protobuf_c_message_free_unpacked(&msg->base, NULL);
    } else if (msg) {
        broken("settlement refused an OrderCompleted but kept the message");
    }
    cms_completed_in c;
    if (cms_ev_completed_in(ev, &msg, &c) == 0) {
        if (!msg)
            broken("commission accepted an OrderCompleted without its message");
        if (c.tenant && (!*c.tenant || !cm_id_is_uuid(c.order_id) || !msg->occurred_at))
            broken("commission accepted an OrderCompleted with invalid fields");
        protobuf_c_message_free_unpacked(&msg->base, NULL);
    } else if (msg) {
        broken("commission refused an OrderCompleted but kept the message");
    }
}

/* inventory: OrderPaid confirms, OrderCancelled releases */
static void check_inventory(const cm_event *ev)
{
    ProtobufCMessage *msg;
    inv_order_in in;
    int rc = inv_ev_order_in(ev, &msg, &in);
    if ((rc == 0) != (msg != NULL))
        broken("inventory kept the message of a refused event, or lost an accepted one's");
    if (rc == 0) {
        int paid = strcmp(ev->type, "commerce.events.v1.OrderPaid") == 0;
        if (!in.tenant || !*in.tenant || !inv_valid_key(in.order_id, INV_KEY_MAX) ||
            in.to != (paid ? INV_CONFIRMED : INV_RELEASED))
            broken("inventory accepted an order event with invalid fields");
        protobuf_c_message_free_unpacked(msg, NULL);
    } else if (rc != CM_EINVAL) {
        broken("inventory skipped an event type it acts on");
    }
}

/* settlement: the commission cost */
static void check_cost(const cm_event *ev)
{
    ProtobufCMessage *msg;
    stl_cost_event c;
    int rc = stl_ev_cost_in(ev, &msg, &c);
    if ((rc == 0) != (msg != NULL))
        broken("settlement kept the message of a refused commission event, or lost one");
    if (rc == 0) {
        if (!c.tenant || !*c.tenant || !cm_id_key_valid(c.channel, 64) ||
            !cm_money_currency_valid(c.currency) ||
            !cm_id_is_uuid(c.kind == STL_COST_ADJUSTED ? c.adjustment_id : c.commission_id) ||
            (c.kind == STL_COST_CLAWED_BACK && !cm_id_key_valid(c.refund_id, 64)))
            broken("settlement accepted a commission event with invalid fields");
        protobuf_c_message_free_unpacked(msg, NULL);
    } else if (rc != CM_EINVAL) {
        broken("settlement skipped a commission event type it acts on");
    }
}

static const char *const types[8] = {
    NULL,
    "commerce.events.v1.OrderPaid",
    "commerce.events.v1.OrderRefunded",
    "commerce.events.v1.OrderCompleted",
    "commerce.events.v1.OrderCancelled",
    "commerce.events.v1.CommissionAccrued",
    "commerce.events.v1.CommissionClawedBack",
    "commerce.events.v1.CommissionAdjusted",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        cm_log_init("fuzz", CM_LOG_ERROR); /* the refusals are logged as warnings */
        once = 1;
    }
    if (size < 1)
        return 0;
    int flags = data[0];
    const uint8_t *p = data + 1;
    size_t left = size - 1;
    const void *val[CM_EVENT_HEADERS];
    size_t len[CM_EVENT_HEADERS];
    for (int i = 0; i < CM_EVENT_HEADERS; i++)
        take(&p, &left, &val[i], &len[i]);
    if ((flags & 1) && !val[4]) {
        val[4] = "application/cloudevents+json; charset=UTF-8";
        len[4] = strlen(val[4]);
    }
    if (types[(flags >> 1) & 7] && !val[1]) {
        val[1] = types[(flags >> 1) & 7];
        len[1] = strlen(val[1]);
    }
    const void *key;
    size_t key_len;
    take(&p, &left, &key, &key_len);
    /* the payload in its own allocation, so reading past it is caught */
    uint8_t *payload = malloc(left ? left : 1);
    if (!payload)
        return 0;
    memcpy(payload, p, left);

    cm_event ev;
    char *buf = cm_event_decode(val, len, left ? payload : NULL, left, key, key_len, &ev);
    if (buf) {
        const char *s[] = {ev.id,           ev.type,        ev.source,   ev.time,
                           ev.content_type, ev.traceparent, ev.tenant_id};
        for (int i = 0; i < CM_EVENT_HEADERS; i++) {
            if (!s[i])
                broken("an attribute is NULL");
            /* a header's value is its bytes; structured attributes come
             * from the JSON text, which is never longer once decoded */
            if (val[i] && val[0] && strlen(s[i]) > len[i])
                broken("an attribute is longer than its header");
        }
        if (val[0] && strlen(ev.id) > len[0])
            broken("the id is longer than ce_id");
        if (strlen(ev.key) > ev.key_len || ev.len != left)
            broken("key or payload changed on the way");
        int t = 0;
        for (int i = 1; i < 8; i++)
            if (strcmp(ev.type, types[i]) == 0)
                t = i;
        if (t == 1)
            check_paid(&ev);
        else if (t == 2)
            check_refunded(&ev);
        else if (t == 3)
            check_completed(&ev);
        if (t == 1 || t == 4)
            check_inventory(&ev);
        if (t >= 5)
            check_cost(&ev);
        free(buf);
    }
    free(payload);
    return 0;
}
