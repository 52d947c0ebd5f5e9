/* CommissionService requests: decoding for every method, then the checks of
 * every method of api.c that has any beyond decoding. left out: GetChannel,
 * GetTierSchedule, GetPayout (one id each: a key or cm_id_is_uuid),
 * ListTierSchedules (a page token only, cm_page fuzzed in `text`),
 * GetTenantSettings (no fields). the partner methods (partners.c) run on a
 * replica that can store webhook secrets, with the feed's default policy
 * (https only, no private addresses): NOT_CONFIGURED is not reached here,
 * and the URL check itself is the `webhook_url` harness's */
#include "cms_api.h"
#include "cms_feed.h"
#include "cms_webhook.h"
#include "fuzz_rpc.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_rpc_commission: %s\n", what);
    abort();
}

static int put_tier_schedule(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__PutTierScheduleRequest *req = (const void *)in;
    cms_schedule_row *s = cm_rpc_alloc(ctx, sizeof *s);
    return s ? cms_api_put_schedule_in(ctx, req, s) : 0;
}

static int put_channel(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__PutChannelRequest *req = (const void *)in;
    int rc = cms_api_channel_in(ctx, req);
    /* the handler reads the channel unchecked once the checks pass */
    if (rc == 0 && !req->channel)
        broken("PutChannel accepted without a channel");
    return rc;
}

static int settle_commissions(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__SettleCommissionsRequest *req = (const void *)in;
    int64_t period = -1;
    int rc = cms_api_settle_in(ctx, req, &period);
    if (rc == 0 && (period < 0 || (req->period_start != NULL) != (period > 0)))
        broken("SettleCommissions accepted a period before 1970, or lost it");
    return rc;
}

static int report_payout_result(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    return cms_api_report_in(ctx, (const void *)in);
}

static int close_period(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    int64_t start = 0;
    int rc = cms_api_close_in(ctx, (const void *)in, &start);
    if (rc == 0 && start <= 0)
        broken("ClosePeriod accepted without a period start after 1970");
    return rc;
}

static int put_tenant_settings(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__PutTenantSettingsRequest *req = (const void *)in;
    int rc = cms_api_settings_in(ctx, req);
    if (rc == 0 && !req->settings)
        broken("PutTenantSettings accepted without settings");
    return rc;
}

static int get_channel_summary(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    int64_t at = -1;
    return cms_api_summary_in(ctx, (const void *)in, &at);
}

/* what every accepted listing holds */
static void list_ok(const cms_list_in *li, const char *token)
{
    if (li->limit <= 0)
        broken("a listing accepted without a page size");
    if ((li->after != NULL) != (token[0] != 0))
        broken("a page token was accepted without a position, or a position made up");
    if (li->from_ms && li->to_ms && li->to_ms <= li->from_ms)
        broken("a listing accepted an empty time range");
    if (li->before_id && li->after && li->before_ms <= 0 && li->before_id[0])
        broken("a listing accepted a position without its time");
}

static int list_channels(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__ListChannelsRequest *req = (const void *)in;
    cms_list_in li;
    int rc = cms_api_channels_in(ctx, req, &li);
    if (rc == 0)
        list_ok(&li, req->page_token);
    return rc;
}

static int list_commissions(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__ListCommissionsRequest *req = (const void *)in;
    cms_list_in li;
    int rc = cms_api_commissions_in(ctx, req, &li);
    if (rc == 0) {
        list_ok(&li, req->page_token);
        if (!li.none && !li.channel)
            broken("ListCommissions accepted without its channel filter");
    }
    return rc;
}

static int list_adjustments(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__ListAdjustmentsRequest *req = (const void *)in;
    cms_list_in li;
    int rc = cms_api_adjustments_in(ctx, req, &li);
    if (rc == 0)
        list_ok(&li, req->page_token);
    return rc;
}

static int list_payouts(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__ListPayoutsRequest *req = (const void *)in;
    cms_list_in li;
    int rc = cms_api_payouts_in(ctx, req, &li);
    if (rc == 0)
        list_ok(&li, req->page_token);
    return rc;
}

/* a partner id as the handlers pass it to SQL and topic names */
static void partner_id_ok(const char *id, const char *method)
{
    size_t n = strlen(id);
    if (n < 1 || n > CMS_PARTNER_ID_MAX ||
        strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstu"
                   "vwxyz0123456789_-") != n) {
        fprintf(stderr, "fuzz_rpc_commission: %s: %s\n", method, id);
        broken("a partner id accepted that is none");
    }
}

/* as libcurl reads the url (which posts to it): https with a host. the
 * text may differ ("https:/host" is https://host to libcurl) */
static int https_with_host(const char *url)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL;
    int ok = u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
             strcmp(scheme, "https") == 0 && host[0];
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return ok;
}

static int put_partner(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__PutPartnerRequest *req = (const void *)in;
    static const cms_webhook_policy policy; /* https only, no private addresses */
    int rc = cms_api_partner_in(ctx, req, &policy, 1);
    if (rc)
        return rc;
    /* the handler reads the partner and its webhook unchecked from here */
    const Commerce__Commission__V1__Partner *p = req->partner;
    if (!p)
        broken("PutPartner accepted without a partner");
    partner_id_ok(p->partner_id, "PutPartner");
    if (!p->name[0] || p->n_channel_ids > 1000 || req->expected_revision < 0)
        broken("PutPartner accepted without a name, with too many channels or a revision < 0");
    for (size_t i = 0; i < p->n_channel_ids; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(p->channel_ids[i], p->channel_ids[j]) == 0)
                broken("PutPartner accepted a channel twice");
    const Commerce__Commission__V1__PartnerWebhook *w = p->webhook;
    if (w && (w->enabled || w->url[0]) && !https_with_host(w->url))
        broken("PutPartner accepted a webhook that is not https under an https-only policy");
    return 0;
}

static int get_partner(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__GetPartnerRequest *req = (const void *)in;
    int rc = cms_api_get_partner_in(ctx, req);
    if (rc == 0)
        partner_id_ok(req->partner_id, "GetPartner");
    return rc;
}

static int list_partners(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__ListPartnersRequest *req = (const void *)in;
    cms_list_in li;
    int rc = cms_api_partners_in(ctx, req, &li);
    if (rc == 0)
        list_ok(&li, req->page_token);
    return rc;
}

static int rotate_webhook_secret(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__RotateWebhookSecretRequest *req = (const void *)in;
    int64_t ttl = -1;
    int rc = cms_api_rotate_in(ctx, req, 1, &ttl);
    if (rc == 0) {
        partner_id_ok(req->partner_id, "RotateWebhookSecret");
        if (ttl < 0 || ttl > 7LL * 86400000 || ttl % 1000 != 0)
            broken("RotateWebhookSecret accepted a ttl that is not whole seconds up to 7 days");
    }
    return rc;
}

static int list_webhook_deliveries(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__ListWebhookDeliveriesRequest *req = (const void *)in;
    cms_list_in li;
    int rc = cms_api_deliveries_in(ctx, req, &li);
    if (rc == 0) {
        partner_id_ok(req->partner_id, "ListWebhookDeliveries");
        list_ok(&li, req->page_token);
        /* the position is cast to a bigint in SQL */
        if (li.after && (!li.after[0] || strspn(li.after, "0123456789") != strlen(li.after)))
            broken("ListWebhookDeliveries accepted a position that is no delivery id");
    }
    return rc;
}

static int redeliver_webhook_event(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__RedeliverWebhookEventRequest *req = (const void *)in;
    int rc = cms_api_redeliver_in(ctx, req);
    if (rc == 0) {
        partner_id_ok(req->partner_id, "RedeliverWebhookEvent");
        if (strlen(req->event_id) != 36)
            broken("RedeliverWebhookEvent accepted an event id that is no UUID");
    }
    return rc;
}

static int replay_partner_events(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__ReplayPartnerEventsRequest *req = (const void *)in;
    int64_t from = 0, to = 0;
    int rc = cms_api_replay_in(ctx, req, &from, &to);
    if (rc == 0) {
        partner_id_ok(req->partner_id, "ReplayPartnerEvents");
        if (to <= from || (req->target != 1 && req->target != 2))
            broken("ReplayPartnerEvents accepted an empty range or an unknown target");
    }
    return rc;
}

static const fuzz_rpc_method methods[] = {
    {"PutTierSchedule", put_tier_schedule},
    {"PutChannel", put_channel},
    {"SettleCommissions", settle_commissions},
    {"ReportPayoutResult", report_payout_result},
    {"ClosePeriod", close_period},
    {"PutTenantSettings", put_tenant_settings},
    {"GetChannelSummary", get_channel_summary},
    {"ListChannels", list_channels},
    {"ListCommissions", list_commissions},
    {"ListAdjustments", list_adjustments},
    {"ListPayouts", list_payouts},
    {"PutPartner", put_partner},
    {"GetPartner", get_partner},
    {"ListPartners", list_partners},
    {"RotateWebhookSecret", rotate_webhook_secret},
    {"ListWebhookDeliveries", list_webhook_deliveries},
    {"RedeliverWebhookEvent", redeliver_webhook_event},
    {"ReplayPartnerEvents", replay_partner_events},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_rpc_run(&commerce__commission__v1__commission_service__descriptor, methods,
                 sizeof methods / sizeof methods[0], data, size);
    return 0;
}
