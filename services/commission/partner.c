/* commission's partner events: see cms_partner.h */
#include "cms_partner.h"

#include "cm_cloudevents.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_json.h"
#include "cm_kafka.h"
#include "cm_log.h"
#include "cms_events.h"
#include "cms_payout.h"

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
static void i64(cm_json *j, const char *key, int64_t v)
{
    char s[24];
    snprintf(s, sizeof s, "%lld", (long long)v);
    cm_json_str(j, key, s);
}

static void money(cm_json *j, const char *key, int64_t v, const char *currency)
{
    cm_json_object(j, key);
    i64(j, "amount_minor", v);
    cm_json_str(j, "currency", currency);
    cm_json_end(j);
}

static void ts(cm_json *j, const char *key, int64_t ms)
{
    char s[CM_KAFKA_TIME_SIZE];
    cm_kafka_time_rfc3339(ms, s);
    cm_json_str(j, key, s);
}

static void commission(cm_json *j, const cms_commission *c)
{
    cm_json_object(j, "commission");
    cm_json_str(j, "commission_id", c->id);
    cm_json_str(j, "channel_id", c->channel);
    cm_json_str(j, "order_id", c->order_id);
    cm_json_str(j, "merchant_id", c->merchant);
    cm_json_str(j, "state", state_name(c->state));
    money(j, "order_amount", c->order_amount, c->currency);
    money(j, "period_sales_before", c->sales_before, c->currency);
    money(j, "amount", c->amount, c->currency);
    money(j, "clawed_back_amount", c->clawed_back, c->currency);
    money(j, "net_amount", c->amount - c->clawed_back, c->currency);
    cm_json_array(j, "brackets");
    for (size_t k = 0; k < c->nb; k++) {
        cm_json_object(j, NULL);
        money(j, "from_sales", c->b_from[k], c->currency);
        cm_json_int(j, "rate_bps", c->b_bps[k]);
        money(j, "sales", c->b_sales[k], c->currency);
        money(j, "commission", c->b_amount[k], c->currency);
        cm_json_end(j);
    }
    cm_json_end(j);
    cm_json_str(j, "tier_schedule_id", c->schedule_id);
    i64(j, "tier_schedule_revision", c->schedule_revision);
    ts(j, "period_start", c->period_start_ms);
    ts(j, "period_end", c->period_end_ms);
    ts(j, "paid_at", c->paid_ms);
    ts(j, "accrued_at", c->accrued_ms);
    if (c->payable_ms)
        ts(j, "payable_at", c->payable_ms);
    if (c->settled_ms)
        ts(j, "settled_at", c->settled_ms);
    /* the contract has payout_id once settled, not while a payout is pending */
    if (c->settled_ms && c->payout_id[0])
        cm_json_str(j, "payout_id", c->payout_id);
    if (c->clawed_ms)
        ts(j, "clawed_back_at", c->clawed_ms);
    cm_json_end(j);
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

/* writes an event's data object (its members after channel_id) */
typedef void (*data_fn)(cm_json *j, const void *arg);

/* the structured cloudevent about subject whose data (channel_id = key,
 * then what fn writes) as an outbox event on topic with a new event id,
 * built in a */
static int envelope(cm_arena *a, const char *topic, const char *type, const char *tenant,
                    const char *subject, const char *key, data_fn fn, const void *arg,
                    int64_t at_ms, const char *traceparent, cm_outbox_event *out)
{
    char *id = cm_arena_alloc(a, CM_ID_SIZE);
    int rc = id ? cm_id_uuid7(id) : CM_ENOMEM;
    if (rc)
        return rc;
    cm_cloudevent ce = {.id = id,
                        .source = CMS_SOURCE,
                        .type = type,
                        .time_ms = at_ms,
                        .subject = subject,
                        .tenant_id = tenant,
                        .partition_key = key,
                        .traceparent = traceparent_ok(traceparent) ? traceparent : NULL};
    cm_buf b = {0};
    cm_json j;
    cm_json_init(&j, &b);
    rc = cm_cloudevent_begin(&j, &ce);
    if (rc == 0) {
        cm_json_object(&j, "data");
        cm_json_str(&j, "channel_id", key);
        fn(&j, arg);
        cm_json_end(&j);
        cm_json_end(&j);
        rc = cm_json_done(&j);
    }
    if (rc == CM_EINVAL) {
        /* ids and names are checked as UTF-8 where they come in: one that
         * is not is a bug, not an event the contract cannot carry (the
         * CM_EINVAL callers skip) */
        cm_log_error("partner event with text that is not UTF-8", "type", type, NULL);
        rc = CM_EINTERNAL;
    }
    char *payload = rc == 0 ? cm_arena_alloc(a, b.len + 1) : NULL;
    if (payload)
        memcpy(payload, b.p, b.len + 1);
    size_t len = b.len;
    cm_buf_free(&b);
    if (rc)
        return rc;
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

/* a commission event's data */
typedef struct commission_data {
    const cms_commission *c;
    const char *refund_id;
    int64_t clawback;
    int clawed, settled;
} commission_data;

static void commission_members(cm_json *j, const void *arg)
{
    const commission_data *d = arg;
    commission(j, d->c);
    if (d->clawed) {
        cm_json_str(j, "refund_id", d->refund_id);
        money(j, "clawback_amount", d->clawback, d->c->currency);
        cm_json_bool(j, "after_settlement", d->c->state == CMS_SETTLED);
    }
    if (d->settled)
        cm_json_str(j, "payout_id", d->c->payout_id);
}

int cms_partner_event(cm_arena *a, const char *topic, const char *type, const char *tenant,
                      const cms_commission *c, const char *refund_id, int64_t clawback,
                      int64_t at_ms, const char *traceparent, cm_outbox_event *out)
{
    int clawed = strcmp(type, CMS_PARTNER_CLAWED_BACK) == 0;
    int settled = strcmp(type, CMS_PARTNER_SETTLED) == 0;
    if (!c->nb || (clawed && clawback <= 0) || (settled && !c->payout_id[0]))
        return CM_EINVAL;
    commission_data d = {
        .c = c, .refund_id = refund_id, .clawback = clawback, .clawed = clawed, .settled = settled};
    return envelope(a, topic, type, tenant, c->id, c->channel, commission_members, &d, at_ms,
                    traceparent, out);
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

static void adjustment_members(cm_json *j, const void *arg)
{
    const cms_adjustment *x = arg;
    cm_json_object(j, "adjustment");
    cm_json_str(j, "adjustment_id", x->id);
    cm_json_str(j, "channel_id", x->channel);
    cm_json_str(j, "kind", adjustment_kind_name(x->kind));
    money(j, "amount", x->amount, x->currency);
    ts(j, "period_start", x->period_start_ms);
    ts(j, "posted_at", x->posted_ms);
    cm_json_str(j, "state", state_name(x->state));
    /* every kind has its order but a period's close */
    if (x->order_id[0])
        cm_json_str(j, "order_id", x->order_id);
    if (x->child[0])
        cm_json_str(j, "child_channel_id", x->child);
    if (x->refund_id[0])
        cm_json_str(j, "refund_id", x->refund_id);
    if (x->payable_ms)
        ts(j, "payable_at", x->payable_ms);
    cm_json_end(j);
}

int cms_partner_adjustment_event(cm_arena *a, const char *topic, const char *type,
                                 const char *tenant, const cms_adjustment *x, int64_t at_ms,
                                 const char *traceparent, cm_outbox_event *out)
{
    int payable = strcmp(type, CMS_PARTNER_ADJUSTMENT_PAYABLE) == 0;
    if (!x->amount || (payable && (x->state != CMS_PAYABLE || !x->payable_ms)))
        return CM_EINVAL;
    return envelope(a, topic, type, tenant, x->id, x->channel, adjustment_members, x, at_ms,
                    traceparent, out);
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

static void payout_members(cm_json *j, const void *arg)
{
    const cms_payout *x = arg;
    cm_json_object(j, "payout");
    cm_json_str(j, "payout_id", x->id);
    cm_json_str(j, "channel_id", x->channel);
    cm_json_str(j, "state", payout_state_name(x->state));
    money(j, "amount", x->amount, x->currency);
    i64(j, "commissions", x->commissions);
    i64(j, "adjustments", x->adjustments);
    ts(j, "created_at", x->created_ms);
    if (x->reported_ms)
        ts(j, "reported_at", x->reported_ms);
    if (x->period_start_ms)
        ts(j, "period_start", x->period_start_ms);
    if (x->reference[0])
        cm_json_str(j, "provider_reference", x->reference);
    if (x->reason[0])
        cm_json_str(j, "failure_reason", x->reason);
    cm_json_end(j);
}

int cms_partner_payout_event(cm_arena *a, const char *topic, const char *type, const char *tenant,
                             const cms_payout *x, int64_t at_ms, cm_outbox_event *out)
{
    if (x->amount <= 0)
        return CM_EINVAL;
    return envelope(a, topic, type, tenant, x->id, x->channel, payout_members, x, at_ms, NULL, out);
}
