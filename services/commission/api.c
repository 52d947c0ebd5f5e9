/* the CommissionService handlers: see cms_api.h, README.md */
#include "cms_api.h"

#include "cm_buf.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_money.h"
#include "cm_page.h"
#include "cm_pb.h"
#include "cm_utf8.h"
#include "cms_close.h"
#include "cms_domain.h"
#include "cms_events.h"
#include "cms_feed.h"
#include "cms_invariants.h"
#include "cms_partners.h"
#include "cms_payout.h"
#include "cms_store.h"

#include <grpc/status.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commerce/commission/v1/commission_service.pb-c.h"

#define KEY_RULE "1-64 characters from [A-Za-z0-9._:-]"

static int valid_key(const char *s)
{
    return cm_id_key_valid(s, CMS_ID_MAX);
}

static const char *num(cm_arena *a, long long v)
{
    return cm_arena_printf(a, "%lld", v);
}

static int fail_field(cm_rpc_ctx *ctx, const char *field, const char *why)
{
    return cm_rpc_fail_field(ctx, field, why);
}

static const char *principal(cm_rpc_ctx *ctx)
{
    const char *p = cm_rpc_ctx_subject(ctx);
    return p ? p : "";
}

/* ---- protos ---- */

static Commerce__Commission__V1__Channel *pb_channel(cm_arena *a, const cms_channel *c)
{
    Commerce__Commission__V1__Channel *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__commission__v1__channel__init(m);
    m->channel_id = cm_arena_strdup(a, c->id);
    m->name = cm_arena_strdup(a, c->name);
    m->type = (Commerce__Commission__V1__ChannelType)c->type;
    m->state = (Commerce__Commission__V1__ChannelState)c->state;
    m->parent_channel_id = cm_arena_strdup(a, c->parent);
    m->parent_override_bps = (int32_t)c->override_bps;
    m->tier_schedule_id = cm_arena_strdup(a, c->schedule_id);
    m->partner_id = cm_arena_strdup(a, c->partner);
    m->revision = c->revision;
    m->created_at = cm_pb_timestamp(a, c->created_ms);
    m->updated_at = cm_pb_timestamp(a, c->updated_ms);
    return m->channel_id && m->name && m->parent_channel_id && m->tier_schedule_id && m->partner_id
               ? m
               : NULL;
}

static Commerce__Commission__V1__TierSchedule *pb_schedule(cm_arena *a, const cms_schedule_row *s)
{
    Commerce__Commission__V1__TierSchedule *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__commission__v1__tier_schedule__init(m);
    m->tier_schedule_id = cm_arena_strdup(a, s->id);
    m->name = cm_arena_strdup(a, s->name);
    m->currency = cm_arena_strdup(a, s->s.currency);
    m->period = (Commerce__Commission__V1__PeriodType)s->period;
    m->time_zone = cm_arena_strdup(a, s->tz);
    m->mode = (Commerce__Commission__V1__TierMode)s->s.mode;
    m->payer = (Commerce__Commission__V1__CommissionPayer)s->payer;
    m->min_payout_minor = s->min_payout;
    m->revision = s->revision;
    m->effective_from = cm_pb_timestamp(a, s->effective_ms);
    m->tiers = cm_arena_calloc(a, s->s.n ? s->s.n : 1, sizeof *m->tiers);
    m->channel_types = cm_arena_calloc(a, s->ntypes ? s->ntypes : 1, sizeof *m->channel_types);
    if (!m->tier_schedule_id || !m->name || !m->currency || !m->time_zone || !m->tiers ||
        !m->channel_types)
        return NULL;
    for (size_t i = 0; i < s->s.n; i++) {
        Commerce__Commission__V1__Tier *t = cm_arena_calloc(a, 1, sizeof *t);
        if (!t)
            return NULL;
        commerce__commission__v1__tier__init(t);
        t->from_sales = cm_pb_money(a, s->s.t[i].from_sales, s->s.currency);
        t->rate_bps = (int32_t)s->s.t[i].rate_bps;
        if (!t->from_sales)
            return NULL;
        m->tiers[i] = t;
    }
    m->n_tiers = s->s.n;
    for (size_t i = 0; i < s->ntypes; i++)
        m->channel_types[i] = (Commerce__Commission__V1__ChannelType)s->types[i];
    m->n_channel_types = s->ntypes;
    return m;
}

/* ---- channels ---- */

int cms_api_channel_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__PutChannelRequest *req)
{
    if (!valid_key(req->request_id))
        return fail_field(ctx, "request_id", "required: " KEY_RULE);
    if (req->expected_revision < 0)
        return fail_field(ctx, "expected_revision", "must be >= 0");
    const Commerce__Commission__V1__Channel *c = req->channel;
    if (!c)
        return fail_field(ctx, "channel", "required");
    if (!valid_key(c->channel_id))
        return fail_field(ctx, "channel.channel_id", "required: " KEY_RULE);
    if (!cm_utf8_text_valid(c->name, CMS_NAME_MAX, 1))
        return fail_field(ctx, "channel.name", "required: 1-128 characters, no control characters");
    if (c->type < 1 || c->type > CMS_TYPES_MAX)
        return fail_field(ctx, "channel.type", "required: a known channel type");
    if ((int)c->state != CMS_CHANNEL_ACTIVE && (int)c->state != CMS_CHANNEL_SUSPENDED)
        return fail_field(ctx, "channel.state", "required: ACTIVE or SUSPENDED");
    if (*c->parent_channel_id && !valid_key(c->parent_channel_id))
        return fail_field(ctx, "channel.parent_channel_id", KEY_RULE ", or empty for none");
    if (strcmp(c->parent_channel_id, c->channel_id) == 0)
        return fail_field(ctx, "channel.parent_channel_id", "a channel is not its own parent");
    if (c->parent_override_bps < 0 || c->parent_override_bps > CM_MONEY_BPS_ONE)
        return fail_field(ctx, "channel.parent_override_bps", "0-10000 basis points");
    if (!*c->parent_channel_id && c->parent_override_bps)
        return fail_field(ctx, "channel.parent_override_bps", "0 without a parent channel");
    if (*c->tier_schedule_id && !valid_key(c->tier_schedule_id))
        return fail_field(ctx, "channel.tier_schedule_id", KEY_RULE ", or empty for the type's");
    if (*c->partner_id && !valid_key(c->partner_id))
        return fail_field(ctx, "channel.partner_id", KEY_RULE ", or empty for none");
    return 0;
}

static int put_channel(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__PutChannelRequest *req = (const void *)in;
    Commerce__Commission__V1__PutChannelResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (cms_api_channel_in(ctx, req))
        return -1;
    const Commerce__Commission__V1__Channel *c = req->channel;
    cms_channel *want = cm_rpc_alloc(ctx, sizeof *want);
    cms_channel *now = cm_rpc_alloc(ctx, sizeof *now);
    if (!want || !now)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "channel");
    snprintf(want->id, sizeof want->id, "%s", c->channel_id);
    snprintf(want->name, sizeof want->name, "%s", c->name);
    want->type = (int)c->type;
    want->state = (int)c->state;
    snprintf(want->parent, sizeof want->parent, "%s", c->parent_channel_id);
    want->override_bps = c->parent_override_bps;
    snprintf(want->schedule_id, sizeof want->schedule_id, "%s", c->tier_schedule_id);
    snprintf(want->partner, sizeof want->partner, "%s", c->partner_id);
    /* the canonical body: what the caller asked for, output fields aside */
    const char *body = cm_arena_printf(
        a, "channel.v1|%s|%zu:%s|%d|%d|%s|%lld|%s|%s|%lld", want->id, strlen(want->name),
        want->name, want->type, want->state, want->parent, (long long)want->override_bps,
        want->schedule_id, want->partner, (long long)req->expected_revision);
    if (!body)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "channel");
    char hash[CM_SHA256_HEX];
    cm_sha256_hex(body, strlen(body), hash);
    int verdict = 0;
    const char *what = NULL;
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    long long quota = cm_rpc_ctx_quota(ctx, "channels", CMS_CHANNELS_QUOTA);
    int rc =
        cms_store_put_channel(cm_service_db(ctx), tenant, req->request_id, hash, want,
                              req->expected_revision, principal(ctx), quota, now, &verdict, &what);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not store the channel");
    if (verdict == CMS_QUOTA)
        return cm_rpc_fail_quota(ctx, "channels", quota,
                                 cm_arena_printf(a, "channel %s", want->id));
    if (verdict == CMS_KEY_REUSED)
        return cm_rpc_fail_key_reused(ctx, "request_id");
    if (verdict == CMS_VERSION)
        return cm_rpc_fail_version(ctx, "expected_revision", req->expected_revision, now->revision);
    if (verdict == CMS_NO_REF) {
        int f =
            cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "REFERENCE_NOT_FOUND",
                        cm_arena_printf(a, "%s: no such %s", what,
                                        strstr(what, "schedule") ? "tier schedule" : "channel"));
        cm_rpc_fail_meta(ctx, "field", what);
        return f;
    }
    if (verdict == CMS_LEVELS) {
        int f = cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
                            "two levels of distribution at most: the parent has a parent, or "
                            "this channel is a parent");
        cm_rpc_fail_meta(ctx, "field", what);
        return f;
    }
    if (verdict == CMS_OK)
        cm_log_info("channel stored", "tenant", tenant, "channel_id", now->id, "revision",
                    num(a, now->revision), "principal", principal(ctx), NULL);
    resp->channel = pb_channel(a, now);
    return resp->channel ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "channel");
}

/* 0 when a channel's token asks about another channel: that one is then
 * as unknown (NOT_FOUND with the same message), as another tenant's is */
static int channel_visible(cm_rpc_ctx *ctx, const char *channel_id)
{
    const char *only = cm_rpc_ctx_channel_scope(ctx);
    return !only || strcmp(only, channel_id) == 0;
}

static int get_channel(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__GetChannelRequest *req = (const void *)in;
    Commerce__Commission__V1__GetChannelResponse *resp = (void *)out;
    if (!valid_key(req->channel_id))
        return fail_field(ctx, "channel_id", "required: " KEY_RULE);
    if (!channel_visible(ctx, req->channel_id))
        return cm_rpc_fail_not_found(ctx, "channel");
    cms_channel *c = cm_rpc_alloc(ctx, sizeof *c);
    if (!c)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "channel");
    int rc = cms_store_get_channel(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->channel_id, c);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail_not_found(ctx, "channel");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the channel");
    resp->channel = pb_channel(cm_rpc_ctx_arena(ctx), c);
    return resp->channel ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "channel");
}

/* a listing's page: its size, the token's position (li->after) */
static int page_begin(cm_rpc_ctx *ctx, int32_t page_size, const char *token, char kind,
                      cms_list_in *li)
{
    return cm_page_begin(ctx, page_size, token, kind, li->filters, li->pos, &li->after, &li->limit);
}

int cms_api_channels_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__ListChannelsRequest *req,
                        cms_list_in *li)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(li, 0, sizeof *li);
    unsigned states = 0;
    for (size_t i = 0; i < req->n_states; i++) {
        if ((int)req->states[i] != CMS_CHANNEL_ACTIVE &&
            (int)req->states[i] != CMS_CHANNEL_SUSPENDED)
            return fail_field(ctx, cm_arena_printf(a, "states[%zu]", i), "ACTIVE or SUSPENDED");
        states |= 1u << req->states[i];
    }
    if (*req->tier_schedule_id && !valid_key(req->tier_schedule_id))
        return fail_field(ctx, "tier_schedule_id", KEY_RULE ", or empty for any");
    li->states = states;
    li->filters = cm_page_filters(cm_arena_printf(a, "%u|%s", states, req->tier_schedule_id));
    return page_begin(ctx, req->page_size, req->page_token, 'c', li);
}

static int list_channels(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__ListChannelsRequest *req = (const void *)in;
    Commerce__Commission__V1__ListChannelsResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    cms_list_in li;
    if (cms_api_channels_in(ctx, req, &li))
        return -1;
    uint64_t fh = li.filters;
    unsigned states = li.states;
    int limit = li.limit;
    const char *after = li.after;
    cms_channel *rows = cm_rpc_alloc(ctx, (size_t)(limit + 1) * sizeof *rows);
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "channels");
    int n = 0;
    int rc = cms_store_list_channels(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx),
                                     cm_rpc_ctx_channel_scope(ctx), states, req->tier_schedule_id,
                                     after ? after : "", limit + 1, rows, &n);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not list the channels");
    int more = n > limit;
    if (more)
        n = limit;
    resp->channels = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->channels);
    if (!resp->channels)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "channels");
    for (int i = 0; i < n; i++)
        if (!(resp->channels[i] = pb_channel(a, &rows[i])))
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "channels");
    resp->n_channels = (size_t)n;
    return cm_page_next(ctx, more, 'c', fh, n ? rows[n - 1].id : NULL, &resp->next_page_token);
}

/* ---- tier schedules ---- */

int cms_api_schedule_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__TierSchedule *in,
                        cms_schedule_row *s)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(s, 0, sizeof *s);
    if (!in)
        return fail_field(ctx, "schedule", "required");
    if (!valid_key(in->tier_schedule_id))
        return fail_field(ctx, "schedule.tier_schedule_id", "required: " KEY_RULE);
    if (!cm_utf8_text_valid(in->name, CMS_NAME_MAX, 1))
        return fail_field(ctx, "schedule.name",
                          "required: 1-128 characters, no control characters");
    snprintf(s->id, sizeof s->id, "%s", in->tier_schedule_id);
    snprintf(s->name, sizeof s->name, "%s", in->name);
    snprintf(s->s.currency, sizeof s->s.currency, "%s", in->currency);
    if (strlen(in->currency) != 3)
        s->s.currency[0] = '?'; /* refused by the check, naming the field */
    s->s.mode = (int)in->mode;
    if (in->n_tiers > CMS_TIERS_MAX)
        return fail_field(ctx, "schedule.tiers", cm_arena_printf(a, "1-%d tiers", CMS_TIERS_MAX));
    s->s.n = in->n_tiers;
    for (size_t i = 0; i < in->n_tiers; i++) {
        const Commerce__Commission__V1__Tier *t = in->tiers[i];
        if (!t->from_sales)
            return fail_field(ctx, cm_arena_printf(a, "schedule.tiers[%zu].from_sales", i),
                              "required");
        s->s.t[i].from_sales = t->from_sales->amount_minor;
        s->s.t[i].rate_bps = t->rate_bps;
    }
    cms_violation v;
    if (cms_schedule_check(&s->s, &v))
        return fail_field(ctx, v.field, v.why);
    for (size_t i = 0; i < in->n_tiers; i++) {
        if (strcmp(in->tiers[i]->from_sales->currency, s->s.currency) != 0) {
            const char *f = cm_arena_printf(a, "schedule.tiers[%zu].from_sales.currency", i);
            cm_rpc_fail(
                ctx, GRPC_STATUS_INVALID_ARGUMENT, "CURRENCY_MISMATCH",
                cm_arena_printf(a, "%s: must be the schedule's currency %s", f, s->s.currency));
            return fail_field(ctx, f, "must be the schedule's currency");
        }
    }
    if ((int)in->period < CMS_PERIOD_WEEK || (int)in->period > CMS_PERIOD_YEAR)
        return fail_field(ctx, "schedule.period", "required: WEEK, MONTH, QUARTER or YEAR");
    s->period = (int)in->period;
    if (!*in->time_zone || strlen(in->time_zone) > CMS_TZ_MAX)
        return fail_field(ctx, "schedule.time_zone",
                          "required: an IANA time zone name, e.g. \"Asia/Shanghai\"");
    snprintf(s->tz, sizeof s->tz, "%s", in->time_zone);
    if (in->n_channel_types > CMS_TYPES_MAX)
        return fail_field(ctx, "schedule.channel_types", "each channel type at most once");
    for (size_t i = 0; i < in->n_channel_types; i++) {
        int t = (int)in->channel_types[i];
        int dup = 0;
        for (size_t k = 0; k < i; k++)
            dup |= s->types[k] == t;
        if (t < 1 || t > CMS_TYPES_MAX || dup)
            return fail_field(ctx, cm_arena_printf(a, "schedule.channel_types[%zu]", i),
                              dup ? "listed twice" : "a known channel type");
        s->types[s->ntypes++] = t;
    }
    if ((int)in->payer != 0 && (int)in->payer != CMS_PAYER_MERCHANT &&
        (int)in->payer != CMS_PAYER_PLATFORM)
        return fail_field(ctx, "schedule.payer", "MERCHANT, PLATFORM, or unset for MERCHANT");
    s->payer = in->payer ? (int)in->payer : CMS_PAYER_MERCHANT;
    if (in->min_payout_minor < 0)
        return fail_field(ctx, "schedule.min_payout_minor", "must be >= 0");
    s->min_payout = in->min_payout_minor;
    return 0;
}

int cms_api_put_schedule_in(cm_rpc_ctx *ctx,
                            const Commerce__Commission__V1__PutTierScheduleRequest *req,
                            cms_schedule_row *s)
{
    if (!valid_key(req->request_id))
        return fail_field(ctx, "request_id", "required: " KEY_RULE);
    if (req->expected_revision < 0)
        return fail_field(ctx, "expected_revision", "must be >= 0");
    return cms_api_schedule_in(ctx, req->schedule, s);
}

static int put_tier_schedule(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__PutTierScheduleRequest *req = (const void *)in;
    Commerce__Commission__V1__PutTierScheduleResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    cms_schedule_row *want = cm_rpc_alloc(ctx, sizeof *want);
    cms_schedule_row *now = cm_rpc_alloc(ctx, sizeof *now);
    if (!want || !now)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "tier schedule");
    if (cms_api_put_schedule_in(ctx, req, want))
        return -1;
    cm_db *db = cm_service_db(ctx);
    int known = cms_store_zone_known(db, want->tz);
    if (known < 0)
        return cm_rpc_fail_err(ctx, known, "could not check the time zone");
    if (!known)
        return fail_field(ctx, "schedule.time_zone",
                          "required: an IANA time zone name, e.g. \"Asia/Shanghai\"");
    cm_buf body = {0};
    cm_buf_puts(&body, cm_arena_printf(a, "schedule.v1|%s|%zu:", want->id, strlen(want->name)));
    cm_buf_puts(&body, want->name);
    cm_buf_puts(&body,
                cm_arena_printf(a, "|%s|%d|%s|%d|%d|%lld|%lld", want->s.currency, want->period,
                                want->tz, want->s.mode, want->payer, (long long)want->min_payout,
                                (long long)req->expected_revision));
    for (size_t i = 0; i < want->s.n; i++)
        cm_buf_puts(&body, cm_arena_printf(a, "|%lld:%lld", (long long)want->s.t[i].from_sales,
                                           (long long)want->s.t[i].rate_bps));
    for (size_t i = 0; i < want->ntypes; i++)
        cm_buf_puts(&body, cm_arena_printf(a, "|t%d", want->types[i]));
    if (body.oom) {
        cm_buf_free(&body);
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "tier schedule");
    }
    char hash[CM_SHA256_HEX];
    cm_sha256_hex(body.p, body.len, hash);
    cm_buf_free(&body);
    int verdict = 0;
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    int rc = cms_store_put_schedule(db, tenant, req->request_id, hash, want, req->expected_revision,
                                    principal(ctx), now, &verdict);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not store the tier schedule");
    if (verdict == CMS_KEY_REUSED)
        return cm_rpc_fail_key_reused(ctx, "request_id");
    if (verdict == CMS_VERSION)
        return cm_rpc_fail_version(ctx, "expected_revision", req->expected_revision, now->revision);
    if (verdict == CMS_LEVELS)
        return cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
                           "the schedule is in use: its currency, period and time zone cannot "
                           "change (make a new schedule instead)");
    if (verdict == CMS_OK)
        cm_log_info("tier schedule stored", "tenant", tenant, "tier_schedule_id", now->id,
                    "revision", num(a, now->revision), "mode", cms_mode_name(now->s.mode),
                    "principal", principal(ctx), NULL);
    resp->schedule = pb_schedule(a, now);
    return resp->schedule ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "tier schedule");
}

static int get_tier_schedule(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__GetTierScheduleRequest *req = (const void *)in;
    Commerce__Commission__V1__GetTierScheduleResponse *resp = (void *)out;
    if (!valid_key(req->tier_schedule_id))
        return fail_field(ctx, "tier_schedule_id", "required: " KEY_RULE);
    cms_schedule_row *s = cm_rpc_alloc(ctx, sizeof *s);
    if (!s)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "tier schedule");
    int rc = cms_store_get_schedule(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx),
                                    req->tier_schedule_id, 0, s);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail_not_found(ctx, "tier schedule");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the tier schedule");
    resp->schedule = pb_schedule(cm_rpc_ctx_arena(ctx), s);
    return resp->schedule ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "tier schedule");
}

static int list_tier_schedules(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__ListTierSchedulesRequest *req = (const void *)in;
    Commerce__Commission__V1__ListTierSchedulesResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    uint64_t fh = cm_page_filters("schedules");
    char pos[CM_PAGE_POSITION_MAX + 1];
    const char *after;
    int limit;
    if (cm_page_begin(ctx, req->page_size, req->page_token, 's', fh, pos, &after, &limit))
        return -1;
    cms_schedule_row *rows = cm_rpc_alloc(ctx, (size_t)(limit + 1) * sizeof *rows);
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "tier schedules");
    int n = 0;
    int rc = cms_store_list_schedules(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx),
                                      after ? after : "", limit + 1, rows, &n);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not list the tier schedules");
    int more = n > limit;
    if (more)
        n = limit;
    resp->schedules = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->schedules);
    if (!resp->schedules)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "tier schedules");
    for (int i = 0; i < n; i++)
        if (!(resp->schedules[i] = pb_schedule(a, &rows[i])))
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "tier schedules");
    resp->n_schedules = (size_t)n;
    return cm_page_next(ctx, more, 's', fh, n ? rows[n - 1].id : NULL, &resp->next_page_token);
}

/* ---- commissions and adjustments ---- */

/* a position "<ms>.<uuid>"; 0 or the page-token failure */
static int ms_id_position(cm_rpc_ctx *ctx, const char *after, long long *ms, const char **id)
{
    *ms = 0;
    *id = "";
    if (!after)
        return 0;
    const char *dot = strchr(after, '.');
    *ms = strtoll(after, NULL, 10);
    if (!dot || *ms <= 0 || !cm_id_is_uuid(dot + 1))
        return cm_page_bad_token(ctx);
    *id = dot + 1;
    return 0;
}

int cms_api_commissions_in(cm_rpc_ctx *ctx,
                           const Commerce__Commission__V1__ListCommissionsRequest *req,
                           cms_list_in *li)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(li, 0, sizeof *li);
    if (*req->channel_id && !valid_key(req->channel_id))
        return fail_field(ctx, "channel_id", KEY_RULE ", or empty for any");
    if (*req->order_id && !cm_id_is_uuid(req->order_id))
        return fail_field(ctx, "order_id", "a UUID, or empty for any");
    unsigned states = 0;
    for (size_t i = 0; i < req->n_states; i++) {
        if ((int)req->states[i] < CMS_FROZEN || (int)req->states[i] > CMS_CLAWED_BACK)
            return fail_field(ctx, cm_arena_printf(a, "states[%zu]", i),
                              "FROZEN, PAYABLE, SETTLED or CLAWED_BACK");
        states |= 1u << req->states[i];
    }
    int64_t from = 0, to = 0;
    if (req->accrued) {
        if (req->accrued->start_at && cm_pb_timestamp_check(req->accrued->start_at, &from))
            return fail_field(ctx, "accrued.start_at", "not a valid timestamp");
        if (req->accrued->end_at && cm_pb_timestamp_check(req->accrued->end_at, &to))
            return fail_field(ctx, "accrued.end_at", "not a valid timestamp");
        if (from && to && to <= from)
            return fail_field(ctx, "accrued.end_at", "must be after accrued.start_at");
    }
    /* a channel's token lists its own: its id is the filter (another
     * channel's: an empty page) */
    const char *channel = cm_rpc_scope_filter(cm_rpc_ctx_channel_scope(ctx), req->channel_id);
    li->filters = cm_page_filters(cm_arena_printf(a, "%s|%u|%s|%lld|%lld",
                                                  channel ? channel : req->channel_id, states,
                                                  req->order_id, (long long)from, (long long)to));
    li->states = states;
    li->from_ms = from;
    li->to_ms = to;
    li->channel = channel;
    li->none = !channel;
    if (page_begin(ctx, req->page_size, req->page_token, 'm', li) ||
        ms_id_position(ctx, li->after, &li->before_ms, &li->before_id))
        return -1;
    return 0;
}

static int list_commissions(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__ListCommissionsRequest *req = (const void *)in;
    Commerce__Commission__V1__ListCommissionsResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    cms_list_in li;
    if (cms_api_commissions_in(ctx, req, &li))
        return -1;
    if (li.none)
        return 0;
    uint64_t fh = li.filters;
    unsigned states = li.states;
    int limit = li.limit;
    int64_t from = li.from_ms, to = li.to_ms;
    const char *channel = li.channel, *before_id = li.before_id;
    long long before_ms = li.before_ms;
    cms_commission *rows = malloc((size_t)(limit + 1) * sizeof *rows);
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "commissions");
    int n = 0;
    int rc = cms_store_list_commissions(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), channel, states,
                                        req->order_id, from, to, before_ms, before_id, limit + 1,
                                        rows, &n);
    if (rc) {
        free(rows);
        return cm_rpc_fail_err(ctx, rc, "could not list the commissions");
    }
    int more = n > limit;
    if (more)
        n = limit;
    resp->commissions = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->commissions);
    for (int i = 0; resp->commissions && i < n; i++)
        if (!(resp->commissions[i] = cms_pb_commission(a, &rows[i])))
            resp->commissions = NULL;
    const char *end =
        n ? cm_arena_printf(a, "%lld.%s", (long long)rows[n - 1].accrued_ms, rows[n - 1].id) : NULL;
    free(rows);
    if (!resp->commissions)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "commissions");
    resp->n_commissions = (size_t)n;
    return cm_page_next(ctx, more, 'm', fh, end, &resp->next_page_token);
}

int cms_api_adjustments_in(cm_rpc_ctx *ctx,
                           const Commerce__Commission__V1__ListAdjustmentsRequest *req,
                           cms_list_in *li)
{
    memset(li, 0, sizeof *li);
    if (!valid_key(req->channel_id))
        return fail_field(ctx, "channel_id", "required: " KEY_RULE);
    li->filters = cm_page_filters(req->channel_id);
    if (page_begin(ctx, req->page_size, req->page_token, 'j', li) ||
        ms_id_position(ctx, li->after, &li->before_ms, &li->before_id))
        return -1;
    li->channel = req->channel_id;
    /* another channel's adjustments: none to this caller */
    li->none = !channel_visible(ctx, req->channel_id);
    return 0;
}

static int list_adjustments(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__ListAdjustmentsRequest *req = (const void *)in;
    Commerce__Commission__V1__ListAdjustmentsResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    cms_list_in li;
    if (cms_api_adjustments_in(ctx, req, &li))
        return -1;
    if (li.none)
        return 0;
    uint64_t fh = li.filters;
    int limit = li.limit;
    const char *before_id = li.before_id;
    long long before_ms = li.before_ms;
    cms_adjustment *rows = cm_rpc_alloc(ctx, (size_t)(limit + 1) * sizeof *rows);
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "adjustments");
    int n = 0;
    int rc = cms_store_list_adjustments(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->channel_id,
                                        before_ms, before_id, limit + 1, rows, &n);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not list the adjustments");
    int more = n > limit;
    if (more)
        n = limit;
    resp->adjustments = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->adjustments);
    if (!resp->adjustments)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "adjustments");
    for (int i = 0; i < n; i++)
        if (!(resp->adjustments[i] = cms_pb_adjustment(a, &rows[i])))
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "adjustments");
    resp->n_adjustments = (size_t)n;
    const char *end =
        n ? cm_arena_printf(a, "%lld.%s", (long long)rows[n - 1].posted_ms, rows[n - 1].id) : NULL;
    return cm_page_next(ctx, more, 'j', fh, end, &resp->next_page_token);
}

/* ---- the summary ---- */

int cms_api_summary_in(cm_rpc_ctx *ctx,
                       const Commerce__Commission__V1__GetChannelSummaryRequest *req, int64_t *at)
{
    *at = 0;
    if (!valid_key(req->channel_id))
        return fail_field(ctx, "channel_id", "required: " KEY_RULE);
    if (req->at && cm_pb_timestamp_check(req->at, at))
        return fail_field(ctx, "at", "not a valid timestamp");
    return 0;
}

static int get_channel_summary(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__GetChannelSummaryRequest *req = (const void *)in;
    Commerce__Commission__V1__GetChannelSummaryResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    int64_t at;
    if (cms_api_summary_in(ctx, req, &at))
        return -1;
    if (!at) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        at = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    cm_db *db = cm_service_db(ctx);
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    cms_channel *ch = cm_rpc_alloc(ctx, sizeof *ch);
    cms_summary_row *s = cm_rpc_alloc(ctx, sizeof *s);
    if (!ch || !s)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "summary");
    int rc = channel_visible(ctx, req->channel_id)
                 ? cms_store_get_channel(db, tenant, req->channel_id, ch)
                 : CM_ENOTFOUND;
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail_not_found(ctx, "channel");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the channel");
    rc = cms_store_summary(db, tenant, ch, at, s);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "REFERENCE_NOT_FOUND",
                           "no tier schedule applies to the channel at that time");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the channel's summary");
    cms_progress pg;
    rc = cms_progress_of(&s->sched.s, s->net_sales, &pg);
    if (rc)
        return cm_rpc_fail_err(ctx, CM_EINTERNAL, "could not compute the channel's progress");
    const char *cur = s->sched.s.currency;
    Commerce__Commission__V1__ChannelSummary *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "summary");
    commerce__commission__v1__channel_summary__init(m);
    m->channel_id = cm_arena_strdup(a, ch->id);
    m->currency = cm_arena_strdup(a, cur);
    m->period_start = cm_pb_timestamp(a, s->period_start_ms);
    m->period_end = cm_pb_timestamp(a, s->period_end_ms);
    m->period_sales = cm_pb_money(a, s->net_sales, cur);
    m->period_orders = s->orders;
    m->period_commission = cm_pb_money(a, pg.commission, cur);
    m->current_tier = (int32_t)pg.tier;
    m->current_rate_bps = (int32_t)pg.rate_bps;
    if (pg.has_next) {
        m->next_tier_from_sales = cm_pb_money(a, pg.next_from_sales, cur);
        m->sales_to_next_tier = cm_pb_money(a, pg.sales_needed, cur);
        m->next_rate_bps = (int32_t)pg.next_rate_bps;
    }
    m->frozen = cm_pb_money(a, s->frozen, cur);
    m->payable = cm_pb_money(a, s->payable, cur);
    m->tier_schedule_id = cm_arena_strdup(a, s->sched.id);
    m->tier_schedule_revision = s->sched.revision;
    m->mode = (Commerce__Commission__V1__TierMode)s->sched.s.mode;
    if (!m->channel_id || !m->currency || !m->period_sales || !m->period_commission || !m->frozen ||
        !m->payable || !m->tier_schedule_id || (pg.has_next && !m->sales_to_next_tier))
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "summary");
    resp->summary = m;
    return 0;
}

/* ---- payouts ---- */

int cms_api_settle_in(cm_rpc_ctx *ctx,
                      const Commerce__Commission__V1__SettleCommissionsRequest *req,
                      int64_t *period)
{
    *period = 0;
    if (!valid_key(req->request_id))
        return fail_field(ctx, "request_id", "required: " KEY_RULE);
    if (!valid_key(req->channel_id))
        return fail_field(ctx, "channel_id", "required: " KEY_RULE);
    if (!cm_money_currency_valid(req->currency))
        return fail_field(ctx, "currency", "required: an ISO-4217 code");
    if (req->period_start && (cm_pb_timestamp_check(req->period_start, period) || *period <= 0))
        return fail_field(ctx, "period_start",
                          "a valid timestamp after 1970, or unset for every "
                          "period");
    return 0;
}

static int settle_commissions(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__SettleCommissionsRequest *req = (const void *)in;
    Commerce__Commission__V1__SettleCommissionsResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    int64_t period;
    if (cms_api_settle_in(ctx, req, &period))
        return -1;
    cms_payout *p = cm_rpc_alloc(ctx, sizeof *p);
    if (!p)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "payout");
    int64_t payable = 0;
    int verdict = 0;
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    int rc = cms_payout_settle(cm_service_db(ctx), cm_service_app(ctx), tenant, req->request_id,
                               req->channel_id, req->currency, period, p, &payable, &verdict);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not settle the channel");
    if (verdict == CMS_NO_REF)
        return cm_rpc_fail_not_found(ctx, "channel");
    if (verdict == CMS_KEY_REUSED)
        return cm_rpc_fail_key_reused(ctx, "request_id");
    if (verdict == CMS_BELOW_MINIMUM) {
        resp->below_minimum = 1;
        resp->payable = cm_pb_money(a, payable, req->currency);
        return resp->payable ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "payout");
    }
    if (verdict == CMS_OK)
        cm_log_info("payout made", "tenant", tenant, "channel_id", p->channel, "payout_id", p->id,
                    "amount", num(a, p->amount), NULL);
    resp->payout = cms_pb_payout(a, p);
    return resp->payout ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "payout");
}

static int get_payout(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__GetPayoutRequest *req = (const void *)in;
    Commerce__Commission__V1__GetPayoutResponse *resp = (void *)out;
    if (!cm_id_is_uuid(req->payout_id))
        return fail_field(ctx, "payout_id", "required: a UUID");
    cms_payout *p = cm_rpc_alloc(ctx, sizeof *p);
    if (!p)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "payout");
    /* a channel's token: a payout to another channel is as unknown */
    int rc = cms_payout_get(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->payout_id,
                            cm_rpc_ctx_channel_scope(ctx), p);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail_not_found(ctx, "payout");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the payout");
    resp->payout = cms_pb_payout(cm_rpc_ctx_arena(ctx), p);
    return resp->payout ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "payout");
}

int cms_api_report_in(cm_rpc_ctx *ctx,
                      const Commerce__Commission__V1__ReportPayoutResultRequest *req)
{
    if (!cm_id_is_uuid(req->payout_id))
        return fail_field(ctx, "payout_id", "required: a UUID");
    int result = (int)req->result;
    if (result != CMS_PAYOUT_PAID && result != CMS_PAYOUT_FAILED)
        return fail_field(ctx, "result", "required: PAID or FAILED");
    if (result == CMS_PAYOUT_PAID && !cm_utf8_text_valid(req->provider_reference, CMS_REF_MAX, 1))
        return fail_field(ctx, "provider_reference", "required with PAID: 1-128 characters");
    if (result == CMS_PAYOUT_FAILED && !cm_utf8_text_valid(req->failure_reason, CMS_REASON_MAX, 1))
        return fail_field(ctx, "failure_reason", "required with FAILED: 1-256 characters");
    return 0;
}

static int report_payout_result(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__ReportPayoutResultRequest *req = (const void *)in;
    Commerce__Commission__V1__ReportPayoutResultResponse *resp = (void *)out;
    if (cms_api_report_in(ctx, req))
        return -1;
    int result = (int)req->result;
    cms_payout *p = cm_rpc_alloc(ctx, sizeof *p);
    if (!p)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "payout");
    int verdict = 0;
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    int rc = cms_payout_report(cm_service_db(ctx), cm_service_app(ctx), tenant, req->payout_id,
                               result, req->provider_reference, req->failure_reason, p, &verdict);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail_not_found(ctx, "payout");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not record the payout result");
    if (verdict == CMS_ILLEGAL)
        return cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
                           "another result was reported for the payout already");
    if (verdict == CMS_OK)
        cm_log_info("payout result", "tenant", tenant, "payout_id", p->id, "state",
                    result == CMS_PAYOUT_PAID ? "paid" : "failed", NULL);
    resp->payout = cms_pb_payout(cm_rpc_ctx_arena(ctx), p);
    return resp->payout ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "payout");
}

int cms_api_payouts_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__ListPayoutsRequest *req,
                       cms_list_in *li)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(li, 0, sizeof *li);
    if (*req->channel_id && !valid_key(req->channel_id))
        return fail_field(ctx, "channel_id", KEY_RULE ", or empty for any");
    unsigned states = 0;
    for (size_t i = 0; i < req->n_states; i++) {
        if ((int)req->states[i] < CMS_PAYOUT_PENDING || (int)req->states[i] > CMS_PAYOUT_FAILED)
            return fail_field(ctx, cm_arena_printf(a, "states[%zu]", i), "PENDING, PAID or FAILED");
        states |= 1u << req->states[i];
    }
    const char *channel = cm_rpc_scope_filter(cm_rpc_ctx_channel_scope(ctx), req->channel_id);
    li->filters =
        cm_page_filters(cm_arena_printf(a, "%s|%u", channel ? channel : req->channel_id, states));
    li->states = states;
    li->channel = channel;
    if (page_begin(ctx, req->page_size, req->page_token, 'p', li))
        return -1;
    if (li->after && !cm_id_is_uuid(li->after))
        return cm_page_bad_token(ctx);
    li->none = !channel; /* another channel's payouts: none to this caller */
    return 0;
}

static int list_payouts(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__ListPayoutsRequest *req = (const void *)in;
    Commerce__Commission__V1__ListPayoutsResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    cms_list_in li;
    if (cms_api_payouts_in(ctx, req, &li))
        return -1;
    if (li.none)
        return 0;
    uint64_t fh = li.filters;
    unsigned states = li.states;
    int limit = li.limit;
    const char *channel = li.channel, *after = li.after;
    cms_payout *rows = malloc((size_t)(limit + 1) * sizeof *rows);
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "payouts");
    int n = 0;
    int rc = cms_payout_list(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), channel, states,
                             after ? after : "", limit + 1, rows, &n);
    if (rc) {
        free(rows);
        return cm_rpc_fail_err(ctx, rc, "could not list the payouts");
    }
    int more = n > limit;
    if (more)
        n = limit;
    resp->payouts = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->payouts);
    for (int i = 0; resp->payouts && i < n; i++)
        if (!(resp->payouts[i] = cms_pb_payout(a, &rows[i])))
            resp->payouts = NULL;
    const char *end = n ? cm_arena_strdup(a, rows[n - 1].id) : NULL;
    free(rows);
    if (!resp->payouts || (n && !end))
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "payouts");
    resp->n_payouts = (size_t)n;
    return cm_page_next(ctx, more, 'p', fh, end, &resp->next_page_token);
}

/* ---- closing periods ---- */

static Commerce__Commission__V1__PeriodClose *pb_close(cm_arena *a, const cms_close_row *c)
{
    Commerce__Commission__V1__PeriodClose *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__commission__v1__period_close__init(m);
    m->channel_id = cm_arena_strdup(a, c->channel);
    m->tier_schedule_id = cm_arena_strdup(a, c->schedule_id);
    m->tier_schedule_revision = c->revision;
    m->period_start = cm_pb_timestamp(a, c->start_ms);
    m->period_end = cm_pb_timestamp(a, c->end_ms);
    m->net_sales = cm_pb_money(a, c->net_sales, c->currency);
    m->commission = cm_pb_money(a, c->commission, c->currency);
    m->true_up = cm_pb_money(a, c->true_up, c->currency);
    m->adjustment_id = cm_arena_strdup(a, c->adjustment_id);
    m->closed_at = cm_pb_timestamp(a, c->closed_ms);
    m->parent_channel_id = cm_arena_strdup(a, c->parent);
    m->parent_share = cm_pb_money(a, c->parent_share, c->currency);
    m->parent_adjustment_id = cm_arena_strdup(a, c->parent_adjustment_id);
    return m->channel_id && m->tier_schedule_id && m->period_start && m->period_end &&
                   m->net_sales && m->commission && m->true_up && m->adjustment_id &&
                   m->closed_at && m->parent_channel_id && m->parent_share &&
                   m->parent_adjustment_id
               ? m
               : NULL;
}

int cms_api_close_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__ClosePeriodRequest *req,
                     int64_t *start)
{
    *start = 0;
    if (!valid_key(req->channel_id))
        return fail_field(ctx, "channel_id", "required: " KEY_RULE);
    if (!valid_key(req->tier_schedule_id))
        return fail_field(ctx, "tier_schedule_id", "required: " KEY_RULE);
    if (!req->period_start || cm_pb_timestamp_check(req->period_start, start) || *start <= 0)
        return fail_field(ctx, "period_start",
                          "required: the period's start (Commission."
                          "period_start), after 1970");
    return 0;
}

static int close_period(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__ClosePeriodRequest *req = (const void *)in;
    Commerce__Commission__V1__ClosePeriodResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    int64_t start;
    if (cms_api_close_in(ctx, req, &start))
        return -1;
    cms_close_row *c = cm_rpc_alloc(ctx, sizeof *c);
    if (!c)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "period close");
    int verdict = 0;
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    int rc = cms_close_period(cm_service_db(ctx), cm_service_app(ctx), tenant, req->channel_id,
                              req->tier_schedule_id, start, c, &verdict);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not close the period");
    if (verdict == CMS_NO_REF)
        return cm_rpc_fail_not_found(ctx, "period");
    if (verdict == CMS_CLOSE_EARLY || verdict == CMS_ILLEGAL) {
        int early = verdict == CMS_CLOSE_EARLY;
        int f = cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
                            early ? "the period has not ended: it closes after its end"
                                  : "the period's newest schedule revision is not whole volume: "
                                    "a marginal period needs no close");
        cm_rpc_fail_meta(ctx, "field", early ? "period_start" : "tier_schedule_id");
        return f;
    }
    if (verdict == CMS_OK)
        cm_log_info("period closed", "tenant", tenant, "channel_id", c->channel, "tier_schedule_id",
                    c->schedule_id, "true_up", num(a, c->true_up), "principal", principal(ctx),
                    NULL);
    resp->already_closed = verdict == CMS_SAME;
    resp->close = pb_close(a, c);
    return resp->close ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "period close");
}

/* ---- tenant settings ---- */

static Commerce__Commission__V1__TenantSettings *pb_settings(cm_arena *a, const cms_settings *s,
                                                             long long default_days)
{
    Commerce__Commission__V1__TenantSettings *m = cm_arena_calloc(a, 1, sizeof *m);
    Google__Protobuf__Duration *w = cm_arena_calloc(a, 1, sizeof *w);
    if (!m || !w)
        return NULL;
    commerce__commission__v1__tenant_settings__init(m);
    google__protobuf__duration__init(w);
    w->seconds = cms_window_of(s->has_window, s->window_s, default_days);
    m->after_sale_window = w;
    m->after_sale_window_default = !s->has_window;
    m->revision = s->revision;
    m->updated_at = s->updated_ms > 0 && s->revision ? cm_pb_timestamp(a, s->updated_ms) : NULL;
    m->updated_by = cm_arena_strdup(a, s->updated_by);
    return m->updated_by ? m : NULL;
}

static int get_tenant_settings(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    (void)in;
    Commerce__Commission__V1__GetTenantSettingsResponse *resp = (void *)out;
    cms_settings *s = cm_rpc_alloc(ctx, sizeof *s);
    if (!s)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "tenant settings");
    int rc = cms_store_get_settings(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), s);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the tenant settings");
    const cms_app *app = cm_service_app(ctx);
    resp->settings = pb_settings(cm_rpc_ctx_arena(ctx), s, app->after_sale_days);
    return resp->settings ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "tenant settings");
}

int cms_api_settings_in(cm_rpc_ctx *ctx,
                        const Commerce__Commission__V1__PutTenantSettingsRequest *req)
{
    if (!valid_key(req->request_id))
        return fail_field(ctx, "request_id", "required: " KEY_RULE);
    if (req->expected_revision < 0)
        return fail_field(ctx, "expected_revision", "must be >= 0");
    if (!req->settings)
        return fail_field(ctx, "settings", "required");
    const Google__Protobuf__Duration *w = req->settings->after_sale_window;
    cms_violation v;
    if (w && cms_window_check(w->seconds, w->nanos, &v))
        return fail_field(ctx, v.field, v.why);
    return 0;
}

static int put_tenant_settings(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__PutTenantSettingsRequest *req = (const void *)in;
    Commerce__Commission__V1__PutTenantSettingsResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (cms_api_settings_in(ctx, req))
        return -1;
    const Google__Protobuf__Duration *w = req->settings->after_sale_window;
    cms_settings *want = cm_rpc_alloc(ctx, sizeof *want);
    cms_settings *now = cm_rpc_alloc(ctx, sizeof *now);
    if (!want || !now)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "tenant settings");
    want->has_window = w != NULL;
    want->window_s = w ? w->seconds : 0;
    const char *body =
        cm_arena_printf(a, "settings.v1|%s|%lld|%lld", w ? "own" : "default",
                        (long long)want->window_s, (long long)req->expected_revision);
    if (!body)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "tenant settings");
    char hash[CM_SHA256_HEX];
    cm_sha256_hex(body, strlen(body), hash);
    int verdict = 0;
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    int rc = cms_store_put_settings(cm_service_db(ctx), tenant, req->request_id, hash, want,
                                    req->expected_revision, principal(ctx), now, &verdict);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not store the tenant settings");
    if (verdict == CMS_KEY_REUSED)
        return cm_rpc_fail_key_reused(ctx, "request_id");
    if (verdict == CMS_VERSION)
        return cm_rpc_fail_version(ctx, "expected_revision", req->expected_revision, now->revision);
    const cms_app *app = cm_service_app(ctx);
    if (verdict == CMS_OK)
        cm_log_info("tenant settings stored", "tenant", tenant, "after_sale_window_s",
                    want->has_window ? num(a, want->window_s) : "default", "revision",
                    num(a, now->revision), "principal", principal(ctx), NULL);
    resp->settings = pb_settings(a, now, app->after_sale_days);
    return resp->settings ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "tenant settings");
}

const cm_rpc_method cms_methods[] = {
    {"PutChannel", put_channel, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"GetChannel", get_channel, CM_RPC_READ, CM_RPC_ROLES_READ " channel"},
    {"ListChannels", list_channels, CM_RPC_READ, CM_RPC_ROLES_READ " channel"},
    {"PutTierSchedule", put_tier_schedule, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"GetTierSchedule", get_tier_schedule, CM_RPC_READ, CM_RPC_ROLES_READ},
    {"ListTierSchedules", list_tier_schedules, CM_RPC_READ, CM_RPC_ROLES_READ},
    {"ListCommissions", list_commissions, CM_RPC_READ, CM_RPC_ROLES_READ " channel"},
    {"GetChannelSummary", get_channel_summary, CM_RPC_READ, CM_RPC_ROLES_READ " channel"},
    {"ListAdjustments", list_adjustments, CM_RPC_READ, CM_RPC_ROLES_READ " channel"},
    {"SettleCommissions", settle_commissions, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"GetPayout", get_payout, CM_RPC_READ, CM_RPC_ROLES_READ " channel"},
    {"ReportPayoutResult", report_payout_result, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"ListPayouts", list_payouts, CM_RPC_READ, CM_RPC_ROLES_READ " channel"},
    {"ClosePeriod", close_period, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"GetTenantSettings", get_tenant_settings, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"PutTenantSettings", put_tenant_settings, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"PutPartner", cms_rpc_put_partner, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"GetPartner", cms_rpc_get_partner, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"ListPartners", cms_rpc_list_partners, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"RotateWebhookSecret", cms_rpc_rotate_webhook_secret, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"ListWebhookDeliveries", cms_rpc_list_webhook_deliveries, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"RedeliverWebhookEvent", cms_rpc_redeliver_webhook_event, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"ReplayPartnerEvents", cms_rpc_replay_partner_events, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"CheckInvariants", cms_rpc_check_invariants, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
};
const size_t cms_methods_count = sizeof cms_methods / sizeof cms_methods[0];

/* ---- app ---- */

int cms_app_init(cm_service *svc, void **out, char *err, size_t errlen)
{
    cms_app *app = calloc(1, sizeof *app);
    if (!app) {
        snprintf(err, errlen, "out of memory");
        return CM_ENOMEM;
    }
    app->events_on = (int)cm_service_int(svc, "COMMISSION_EVENTS");
    app->after_sale_days = cm_service_int(svc, "COMMISSION_AFTER_SALE_DAYS");
    snprintf(app->topic, sizeof app->topic, "%s", cm_service_text(svc, "COMMISSION_TOPIC"));
    cm_metrics *m = cm_service_metrics(svc);
    static const double lag_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60};
    app->lag = cm_metrics_histogram(m, "commission_accrual_lag_seconds",
                                    "from an order's paid_at to its commission's accrual", NULL,
                                    lag_bounds, sizeof lag_bounds / sizeof lag_bounds[0]);
    snprintf(app->partner_topic, sizeof app->partner_topic, "%s",
             cm_service_text(svc, "COMMISSION_PARTNER_TOPIC"));
    app->accrual = cms_accrual_new(app->events_on, app->topic, app->partner_topic, app->lag);
    app->accrued = cm_metrics_counter(m, "commission_accrued_total",
                                      "paid orders whose commission accrued", NULL);
    app->clawbacks =
        cm_metrics_counter(m, "commission_clawbacks_total", "refunds clawed back", NULL);
    app->duplicates = cm_metrics_counter(
        m, "commission_duplicates_total",
        "payments or refunds seen again under another event id (applied once)", NULL);
    app->skipped = cm_metrics_counter(
        m, "commission_uncommissioned_orders_total",
        "paid orders with a channel that earned nothing (unknown or suspended channel, no "
        "schedule in the order's currency)",
        NULL);
    app->parked = cm_metrics_counter(m, "commission_refunds_parked_total",
                                     "refunds that arrived before their payment accrued", NULL);
    app->adjustments = cm_metrics_counter(m, "commission_adjustments_total",
                                          "true-ups and parent shares posted", NULL);
    app->dead_lettered = cm_metrics_counter(
        m, "commission_refunds_dead_lettered_total",
        "parked refunds whose payment never accrued, sent to the dead-letter topic", NULL);
    app->feed_batch = cms_feed_batch_new();
    if (!app->accrual || !app->feed_batch) {
        snprintf(err, errlen, "out of memory");
        cms_accrual_free(app->accrual);
        cms_feed_batch_free(app->feed_batch);
        free(app);
        return CM_ENOMEM;
    }
    app->feed = cms_feed_new(svc, err, errlen);
    int rc = app->feed ? cms_feed_secrets_reseal(app->feed, cm_service_main_db(svc), err, errlen)
                       : CM_EINVAL;
    if (rc) {
        cms_feed_free(app->feed);
        cms_feed_batch_free(app->feed_batch);
        cms_accrual_free(app->accrual);
        free(app);
        return rc;
    }
    *out = app;
    return 0;
}

void cms_app_fini(cm_service *svc, void *p)
{
    (void)svc;
    cms_app *app = p;
    if (!app)
        return;
    cms_accrual_free(app->accrual);
    cms_feed_free(app->feed);
    cms_feed_batch_free(app->feed_batch);
    free(app);
}
