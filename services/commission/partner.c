/* commission's partner events: see cms_partner.h */
#include "cms_partner.h"

#include "cm_cloudevents.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_kafka.h"
#include "cms_events.h"
#include "cms_payout.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *state_name(int state)
{
    switch (state) {
    case CMS_FROZEN:
        return "COMMISSION_STATE_FROZEN";
    case CMS_PAYABLE:
        return "COMMISSION_STATE_PAYABLE";
    case CMS_SETTLED:
        return "COMMISSION_STATE_SETTLED";
    case CMS_CLAWED_BACK:
        return "COMMISSION_STATE_CLAWED_BACK";
    default:
        return "COMMISSION_STATE_UNSPECIFIED";
    }
}

/* int64 as the proto3 json mapping writes it: a decimal string */
static json_t *i64(int64_t v)
{
    char s[24];
    snprintf(s, sizeof s, "%lld", (long long)v);
    return json_string(s);
}

static json_t *money(int64_t v, const char *currency)
{
    return json_pack("{s:o, s:s}", "amount_minor", i64(v), "currency", currency);
}

static json_t *ts(int64_t ms)
{
    char s[CM_KAFKA_TIME_SIZE];
    cm_kafka_time_rfc3339(ms, s);
    return json_string(s);
}

static json_t *commission(const cms_commission *c)
{
    json_t *b = json_array();
    for (size_t k = 0; b && k < c->nb; k++)
        if (json_array_append_new(b, json_pack("{s:o, s:I, s:o, s:o}", "from_sales",
                                               money(c->b_from[k], c->currency), "rate_bps",
                                               (json_int_t)c->b_bps[k], "sales",
                                               money(c->b_sales[k], c->currency), "commission",
                                               money(c->b_amount[k], c->currency))) != 0) {
            json_decref(b);
            return NULL;
        }
    json_t *o = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:s, s:o, s:o, s:o, s:o, s:o}",
        "commission_id", c->id, "channel_id", c->channel, "order_id", c->order_id, "merchant_id",
        c->merchant, "state", state_name(c->state), "order_amount",
        money(c->order_amount, c->currency), "period_sales_before",
        money(c->sales_before, c->currency), "amount", money(c->amount, c->currency),
        "clawed_back_amount", money(c->clawed_back, c->currency), "net_amount",
        money(c->amount - c->clawed_back, c->currency), "brackets", b, "tier_schedule_id",
        c->schedule_id, "tier_schedule_revision", i64(c->schedule_revision), "period_start",
        ts(c->period_start_ms), "period_end", ts(c->period_end_ms), "paid_at", ts(c->paid_ms),
        "accrued_at", ts(c->accrued_ms));
    if (o && c->payable_ms && json_object_set_new(o, "payable_at", ts(c->payable_ms)) != 0)
        goto fail;
    if (o && c->settled_ms && json_object_set_new(o, "settled_at", ts(c->settled_ms)) != 0)
        goto fail;
    /* the contract has payout_id once settled, not while a payout is pending */
    if (o && c->settled_ms && c->payout_id[0] &&
        json_object_set_new(o, "payout_id", json_string(c->payout_id)) != 0)
        goto fail;
    if (o && c->clawed_ms && json_object_set_new(o, "clawed_back_at", ts(c->clawed_ms)) != 0)
        goto fail;
    return o;
fail:
    json_decref(o);
    return NULL;
}

/* the contract's traceparent: version-trace-parent-flags in lower hex */
static int traceparent_ok(const char *s)
{
    if (!s || strlen(s) != 55)
        return 0;
    for (size_t i = 0; i < 55; i++) {
        int dash = i == 2 || i == 35 || i == 52;
        if (dash ? s[i] != '-' : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    }
    return 1;
}

/* the structured cloudevent of data (taken) about subject, keyed by key,
 * as an outbox event on topic with a new event id, built in a */
static int envelope(cm_arena *a, const char *topic, const char *type, const char *tenant,
                    const char *subject, const char *key, json_t *data, int64_t at_ms,
                    const char *traceparent, cm_outbox_event *out)
{
    /* data goes into the envelope as an object: no text to parse back */
    if (!data)
        return CM_ENOMEM;
    char *id = cm_arena_alloc(a, CM_ID_SIZE);
    int rc = id ? cm_id_uuid7(id) : CM_ENOMEM;
    char *text = NULL;
    size_t len = 0;
    if (rc != 0) {
        json_decref(data);
    } else {
        cm_cloudevent ce = {.id = id,
                            .source = CMS_SOURCE,
                            .type = type,
                            .time_ms = at_ms,
                            .subject = subject,
                            .tenant_id = tenant,
                            .partition_key = key,
                            .traceparent = traceparent_ok(traceparent) ? traceparent : NULL};
        rc = cm_cloudevent_json_object(&ce, data, &text, &len);
    }
    if (rc)
        return rc;
    char *payload = cm_arena_alloc(a, len + 1);
    if (payload)
        memcpy(payload, text, len + 1);
    free(text);
    *out = (cm_outbox_event){
        .event_id = id,
        .tenant_id = cm_arena_strdup(a, tenant),
        .topic = topic,
        .key = cm_arena_strdup(a, key),
        .type = type,
        .source = CMS_SOURCE,
        .payload = payload,
        .len = len,
        .content_type = CM_CLOUDEVENTS_JSON_CONTENT_TYPE,
        /* the internal topic's consumer (the partner feed) routes by the
         * envelope: in headers too, it does not parse every value (~17 µs
         * per event with jansson). the partners' own topics do not get
         * them (feed.c) */
        .envelope_headers = 1,
        .occurred_at_ms = at_ms,
        .traceparent = traceparent_ok(traceparent) ? cm_arena_strdup(a, traceparent) : NULL};
    return payload && out->tenant_id && out->key ? 0 : CM_ENOMEM;
}

int cms_partner_event(cm_arena *a, const char *topic, const char *type, const char *tenant,
                      const cms_commission *c, const char *refund_id, int64_t clawback,
                      int64_t at_ms, const char *traceparent, cm_outbox_event *out)
{
    int clawed = strcmp(type, CMS_PARTNER_CLAWED_BACK) == 0;
    int settled = strcmp(type, CMS_PARTNER_SETTLED) == 0;
    if (!c->nb || (clawed && clawback <= 0) || (settled && !c->payout_id[0]))
        return CM_EINVAL;
    json_t *data = json_pack("{s:s, s:o}", "channel_id", c->channel, "commission", commission(c));
    if (data && clawed &&
        (json_object_set_new(data, "refund_id", json_string(refund_id)) != 0 ||
         json_object_set_new(data, "clawback_amount", money(clawback, c->currency)) != 0 ||
         json_object_set_new(data, "after_settlement",
                             c->state == CMS_SETTLED ? json_true() : json_false()) != 0)) {
        json_decref(data);
        data = NULL;
    }
    if (data && settled && json_object_set_new(data, "payout_id", json_string(c->payout_id)) != 0) {
        json_decref(data);
        data = NULL;
    }
    return envelope(a, topic, type, tenant, c->id, c->channel, data, at_ms, traceparent, out);
}

static const char *adjustment_kind_name(int kind)
{
    switch (kind) {
    case CMS_ADJ_TRUE_UP:
        return "ADJUSTMENT_KIND_TRUE_UP";
    case CMS_ADJ_PARENT_SHARE:
        return "ADJUSTMENT_KIND_PARENT_SHARE";
    case CMS_ADJ_CLAWBACK:
        return "ADJUSTMENT_KIND_CLAWBACK";
    case CMS_ADJ_PERIOD_CLOSE:
        return "ADJUSTMENT_KIND_PERIOD_CLOSE";
    default:
        return "ADJUSTMENT_KIND_UNSPECIFIED";
    }
}

int cms_partner_adjustment_event(cm_arena *a, const char *topic, const char *type,
                                 const char *tenant, const cms_adjustment *x, int64_t at_ms,
                                 const char *traceparent, cm_outbox_event *out)
{
    int payable = strcmp(type, CMS_PARTNER_ADJUSTMENT_PAYABLE) == 0;
    if (!x->amount || (payable && (x->state != CMS_PAYABLE || !x->payable_ms)))
        return CM_EINVAL;
    json_t *j = json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:s}", "adjustment_id", x->id,
                          "channel_id", x->channel, "kind", adjustment_kind_name(x->kind), "amount",
                          money(x->amount, x->currency), "period_start", ts(x->period_start_ms),
                          "posted_at", ts(x->posted_ms), "state", state_name(x->state));
    /* every kind has its order but a period's close */
    if (j && x->order_id[0] && json_object_set_new(j, "order_id", json_string(x->order_id)))
        goto fail;
    if (j && x->child[0] && json_object_set_new(j, "child_channel_id", json_string(x->child)))
        goto fail;
    if (j && x->refund_id[0] && json_object_set_new(j, "refund_id", json_string(x->refund_id)))
        goto fail;
    if (j && x->payable_ms && json_object_set_new(j, "payable_at", ts(x->payable_ms)))
        goto fail;
    json_t *data = j ? json_pack("{s:s, s:o}", "channel_id", x->channel, "adjustment", j) : NULL;
    return envelope(a, topic, type, tenant, x->id, x->channel, data, at_ms, traceparent, out);
fail:
    json_decref(j);
    return CM_ENOMEM;
}

static const char *payout_state_name(int state)
{
    switch (state) {
    case CMS_PAYOUT_PENDING:
        return "PAYOUT_STATE_PENDING";
    case CMS_PAYOUT_PAID:
        return "PAYOUT_STATE_PAID";
    case CMS_PAYOUT_FAILED:
        return "PAYOUT_STATE_FAILED";
    default:
        return "PAYOUT_STATE_UNSPECIFIED";
    }
}

int cms_partner_payout_event(cm_arena *a, const char *topic, const char *type, const char *tenant,
                             const cms_payout *x, int64_t at_ms, cm_outbox_event *out)
{
    if (x->amount <= 0)
        return CM_EINVAL;
    json_t *p = json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:o}", "payout_id", x->id, "channel_id",
                          x->channel, "state", payout_state_name(x->state), "amount",
                          money(x->amount, x->currency), "commissions", i64(x->commissions),
                          "adjustments", i64(x->adjustments), "created_at", ts(x->created_ms));
    if (p && x->reported_ms && json_object_set_new(p, "reported_at", ts(x->reported_ms)))
        goto fail;
    if (p && x->period_start_ms && json_object_set_new(p, "period_start", ts(x->period_start_ms)))
        goto fail;
    if (p && x->reference[0] &&
        json_object_set_new(p, "provider_reference", json_string(x->reference)))
        goto fail;
    if (p && x->reason[0] && json_object_set_new(p, "failure_reason", json_string(x->reason)))
        goto fail;
    json_t *data = p ? json_pack("{s:s, s:o}", "channel_id", x->channel, "payout", p) : NULL;
    return envelope(a, topic, type, tenant, x->id, x->channel, data, at_ms, NULL, out);
fail:
    json_decref(p);
    return CM_ENOMEM;
}
