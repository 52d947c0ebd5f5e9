/*
 * the inbox's decoding of a kafka record, then the OrderPaid decode steps
 * of the two services that move money on it (settlement's ledger,
 * commission's accrual), without kafka or a database.
 *
 * input: a flags byte, then for each of the 7 headers cm_event_decode
 * takes a length byte (255: absent) and that many bytes, then the key the
 * same way, then the payload (the rest). flags bit 0 sets content-type to
 * structured mode when it is absent, so the JSON attributes get fuzzed
 * without having to find the header first; bit 1 sets ce_type OrderPaid.
 *
 * invariants: every string of the event is NUL-terminated and no longer
 * than what it came from; a structured-mode record gets its attributes
 * only when it has no ce_id; an accepted OrderPaid names a UUID order, a
 * tenant, a valid currency and a non-negative amount.
 */
#include "cm_consumer.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_money.h"
#include "cms_events.h"
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
    if ((flags & 2) && !val[1]) {
        val[1] = "commerce.events.v1.OrderPaid";
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
        if (strcmp(ev.type, "commerce.events.v1.OrderPaid") == 0)
            check_paid(&ev);
        free(buf);
    }
    free(payload);
    return 0;
}
