/* CommissionService requests: decoding for every method, then the checks of
 * every method of api.c that has any beyond decoding. left out: GetChannel,
 * GetTierSchedule, GetPayout (one id each: a key or cm_id_is_uuid),
 * ListTierSchedules (a page token only, cm_page fuzzed in `text`),
 * GetTenantSettings (no fields), and the partner and webhook methods of
 * partner.c (their URL policy is the `webhook_url` harness) */
#include "cms_api.h"
#include "fuzz_rpc.h"

#include <stdio.h>
#include <stdlib.h>

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
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_rpc_run(&commerce__commission__v1__commission_service__descriptor, methods,
                 sizeof methods / sizeof methods[0], data, size);
    return 0;
}
