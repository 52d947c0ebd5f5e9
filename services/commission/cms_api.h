/*
 * cms_api: the CommissionService handlers and the process's app state.
 */
#ifndef CMS_API_H
#define CMS_API_H

#include <stddef.h>

#include "cm_metrics.h"
#include "cm_page.h"
#include "cm_rpc.h"
#include "cm_service.h"
#include "cms_accrual.h"
#include "cms_store.h"

#include "commerce/commission/v1/commission_service.pb-c.h"

typedef struct cms_app {
    int events_on;
    long long after_sale_days;         /* COMMISSION_AFTER_SALE_DAYS: tenants without a window */
    char topic[256];                   /* COMMISSION_TOPIC */
    char partner_topic[256];           /* COMMISSION_PARTNER_TOPIC */
    cms_accrual *accrual;              /* the order-event consumer's (one consumer thread) */
    struct cms_feed *feed;             /* the partner feed (cms_feed.h) */
    struct cms_feed_batch *feed_batch; /* its consumer's staged batch */
    cm_counter *accrued, *clawbacks, *duplicates, *skipped, *parked, *adjustments;
    cm_counter *dead_lettered;
    cm_histogram *lag;
    cms_accrual_stats last; /* what was last added to the counters */
} cms_app;

extern const cm_rpc_method cms_methods[];
extern const size_t cms_methods_count;

/* the tier schedule of a request as the domain checks it (the handler's
 * checks before any i/o, also run by tests/fuzz): 0 with s filled, or the
 * failure recorded in ctx naming the field */
int cms_api_schedule_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__TierSchedule *in,
                        cms_schedule_row *s);
/* PutTierSchedule's checks before any i/o: its request_id and
 * expected_revision, then cms_api_schedule_in (the time zone is checked
 * after, against the database's list of zones) */
int cms_api_put_schedule_in(cm_rpc_ctx *ctx,
                            const Commerce__Commission__V1__PutTierScheduleRequest *req,
                            cms_schedule_row *s);

/* the checks before any i/o of the other handlers, each also run by
 * tests/fuzz: 0, or the failure recorded in ctx naming the field.
 * SettleCommissions: *period the period_start in ms, 0 for every period;
 * ClosePeriod: *start its period_start in ms; GetChannelSummary: *at in
 * ms, 0 for now. a channel's token asking for another channel is answered
 * after these (NOT_FOUND or an empty page) */
int cms_api_channel_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__PutChannelRequest *req);
int cms_api_settle_in(cm_rpc_ctx *ctx,
                      const Commerce__Commission__V1__SettleCommissionsRequest *req,
                      int64_t *period);
int cms_api_report_in(cm_rpc_ctx *ctx,
                      const Commerce__Commission__V1__ReportPayoutResultRequest *req);
int cms_api_close_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__ClosePeriodRequest *req,
                     int64_t *start);
int cms_api_settings_in(cm_rpc_ctx *ctx,
                        const Commerce__Commission__V1__PutTenantSettingsRequest *req);
int cms_api_summary_in(cm_rpc_ctx *ctx,
                       const Commerce__Commission__V1__GetChannelSummaryRequest *req, int64_t *at);

/* a listing's checked filters and page, as its handler reads them */
typedef struct cms_list_in {
    uint64_t filters; /* the hash its page tokens carry */
    int limit;        /* the page size */
    char pos[CM_PAGE_POSITION_MAX + 1];
    const char *after;      /* the token's position (into pos); NULL on the first page */
    long long before_ms;    /* "<ms>.<uuid>" positions (commissions, adjustments): the ms */
    const char *before_id;  /* and the id ("" on the first page) */
    unsigned states;        /* the state filter, a bit per state; 0: all */
    int64_t from_ms, to_ms; /* the time range, 0 where open */
    const char *channel;    /* the channel filter (a channel token's own channel) */
    int none;               /* a channel's token asking for another's: an empty page */
} cms_list_in;

int cms_api_channels_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__ListChannelsRequest *req,
                        cms_list_in *li);
int cms_api_commissions_in(cm_rpc_ctx *ctx,
                           const Commerce__Commission__V1__ListCommissionsRequest *req,
                           cms_list_in *li);
int cms_api_adjustments_in(cm_rpc_ctx *ctx,
                           const Commerce__Commission__V1__ListAdjustmentsRequest *req,
                           cms_list_in *li);
int cms_api_payouts_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__ListPayoutsRequest *req,
                       cms_list_in *li);

/* the partner methods' checks before any i/o (partners.c), each also run
 * by tests/fuzz: 0, or the failure recorded in ctx naming the field.
 * PutPartner: request_id, expected_revision, the partner's id, name and
 * channel ids (at most 1000, none twice), and a webhook that is on or has a
 * url: NOT_CONFIGURED with a url when the replica cannot store secrets
 * (secrets 0), its url checked against policy (the feed's,
 * cms_webhook_url_check). RotateWebhookSecret: NOT_CONFIGURED when secrets
 * is 0; *ttl_ms the previous secret's time to live (a day by default).
 * ReplayPartnerEvents: *from and *to the range in ms, to > from. whether
 * the partner, its channels or the event exist is read after these */
struct cms_webhook_policy;
int cms_api_partner_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__PutPartnerRequest *req,
                       const struct cms_webhook_policy *policy, int secrets);
int cms_api_get_partner_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__GetPartnerRequest *req);
int cms_api_partners_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__ListPartnersRequest *req,
                        cms_list_in *li);
int cms_api_rotate_in(cm_rpc_ctx *ctx,
                      const Commerce__Commission__V1__RotateWebhookSecretRequest *req, int secrets,
                      int64_t *ttl_ms);
int cms_api_deliveries_in(cm_rpc_ctx *ctx,
                          const Commerce__Commission__V1__ListWebhookDeliveriesRequest *req,
                          cms_list_in *li);
int cms_api_redeliver_in(cm_rpc_ctx *ctx,
                         const Commerce__Commission__V1__RedeliverWebhookEventRequest *req);
int cms_api_replay_in(cm_rpc_ctx *ctx,
                      const Commerce__Commission__V1__ReplayPartnerEventsRequest *req,
                      int64_t *from, int64_t *to);

int cms_app_init(cm_service *svc, void **app, char *err, size_t errlen);
void cms_app_fini(cm_service *svc, void *app);

#endif
