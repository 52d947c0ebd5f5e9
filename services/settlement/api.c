/* the SettlementService handlers: see stl_api.h, README.md */
#include "stl_api.h"

#include "cm_buf.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_money.h"
#include "cm_page.h"
#include "cm_pb.h"
#include "cm_utf8.h"
#include "stl_events.h"
#include "stl_recon.h"
#include "stl_run.h"

#include <grpc/status.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commerce/settlement/v1/settlement_service.pb-c.h"

static int valid_key(const char *s)
{
    return cm_id_key_valid(s, STL_ID_MAX);
}

static const char *num(cm_arena *a, long long v)
{
    return cm_arena_printf(a, "%lld", v);
}

static int fail_field(cm_rpc_ctx *ctx, const char *field, const char *why)
{
    return cm_rpc_fail_field(ctx, field, why);
}

static int request_id_ok(cm_rpc_ctx *ctx, const char *id)
{
    if (!valid_key(id))
        return fail_field(ctx, "request_id", "required: 1-64 characters from [A-Za-z0-9._:-]");
    return 0;
}

static const char *principal(cm_rpc_ctx *ctx)
{
    const char *p = cm_rpc_ctx_subject(ctx);
    return p ? p : "";
}

/* ---- protos ---- */

static Commerce__Settlement__V1__SplitRule *pb_rule(cm_arena *a, const stl_rule_row *row)
{
    Commerce__Settlement__V1__SplitRule *m = cm_arena_calloc(a, 1, sizeof *m);
    Commerce__Settlement__V1__FeeModel *fee = cm_arena_calloc(a, 1, sizeof *fee);
    if (!m || !fee)
        return NULL;
    commerce__settlement__v1__split_rule__init(m);
    commerce__settlement__v1__fee_model__init(fee);
    const stl_rule *r = &row->rule;
    m->merchant_id = cm_arena_strdup(a, row->merchant);
    m->currency = cm_arena_strdup(a, r->currency);
    fee->bps = (int32_t)r->fee_bps;
    fee->fixed_minor = r->fee_fixed;
    fee->min_minor = r->fee_min;
    fee->max_minor = r->fee_max;
    fee->bearer = (Commerce__Settlement__V1__FeeBearer)r->fee_bearer;
    m->fee = fee;
    m->merchant_settle_delay_days = (uint32_t)r->merchant_delay_days;
    m->refund_policy = (Commerce__Settlement__V1__RefundPolicy)r->refund_policy;
    m->version = row->version;
    m->effective_from = cm_pb_timestamp(a, row->effective_ms);
    m->created_by = cm_arena_strdup(a, row->created_by);
    m->settle_on_completion = r->on_completion;
    m->receivers = cm_arena_calloc(a, r->n ? r->n : 1, sizeof *m->receivers);
    if (!m->merchant_id || !m->currency || !m->created_by || !m->receivers)
        return NULL;
    for (size_t i = 0; i < r->n; i++) {
        Commerce__Settlement__V1__SplitReceiver *x = cm_arena_calloc(a, 1, sizeof *x);
        if (!x)
            return NULL;
        commerce__settlement__v1__split_receiver__init(x);
        x->type = (Commerce__Settlement__V1__PartyType)r->r[i].type;
        x->receiver_id = cm_arena_strdup(a, r->r[i].id);
        x->share_bps = (int32_t)r->r[i].share_bps;
        x->fixed_amount_minor = r->r[i].fixed;
        x->settle_delay_days = (uint32_t)r->r[i].delay_days;
        x->description = cm_arena_strdup(a, row->desc[i]);
        if (!x->receiver_id || !x->description)
            return NULL;
        m->receivers[i] = x;
    }
    m->n_receivers = r->n;
    return m;
}

static Commerce__Settlement__V1__TenantSettings *pb_settings(cm_arena *a, const stl_settings *s)
{
    Commerce__Settlement__V1__TenantSettings *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__settlement__v1__tenant_settings__init(m);
    m->time_zone = cm_arena_strdup(a, s->tz);
    m->max_split_bps = (int32_t)s->max_split_bps;
    m->run_at = cm_arena_strdup(a, s->run_at);
    m->revision = s->revision;
    m->updated_at = s->revision ? cm_pb_timestamp(a, s->updated_ms) : NULL;
    m->updated_by = cm_arena_strdup(a, s->updated_by);
    return m->time_zone && m->run_at && m->updated_by ? m : NULL;
}

static Commerce__Settlement__V1__Account *pb_account(cm_arena *a, const stl_account *x)
{
    Commerce__Settlement__V1__Account *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__settlement__v1__account__init(m);
    m->account_id = x->id;
    m->party = stl_pb_party(a, x->type, x->owner);
    m->currency = cm_arena_strdup(a, x->currency);
    m->pending_minor = x->pending;
    m->available_minor = x->available;
    m->paying_minor = x->paying;
    m->paid_out_minor = x->paid_out;
    m->debt_minor = x->available < 0 ? -x->available : 0;
    m->version = x->version;
    m->updated_at = cm_pb_timestamp(a, x->updated_ms);
    return m->party && m->currency ? m : NULL;
}

/* ---- split rules ---- */

int stl_api_rule_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__SplitRule *in, stl_rule *r,
                    char (*desc)[STL_DESC_MAX + 1])
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(r, 0, sizeof *r);
    if (!in)
        return fail_field(ctx, "rule", "required");
    if (!valid_key(in->merchant_id))
        return fail_field(ctx, "rule.merchant_id",
                          "required: 1-64 characters from [A-Za-z0-9._:-]");
    if (in->n_receivers > STL_RECEIVERS_MAX)
        return fail_field(ctx, "rule.receivers",
                          cm_arena_printf(a, "at most %d receivers", STL_RECEIVERS_MAX));
    snprintf(r->currency, sizeof r->currency, "%s", in->currency);
    if (strlen(in->currency) != 3)
        r->currency[0] = '?'; /* refused by the check, naming the field */
    const Commerce__Settlement__V1__FeeModel *f = in->fee;
    r->fee_bps = f ? f->bps : 0;
    r->fee_fixed = f ? f->fixed_minor : 0;
    r->fee_min = f ? f->min_minor : 0;
    r->fee_max = f ? f->max_minor : 0;
    r->fee_bearer = f && f->bearer ? (int)f->bearer : STL_FEE_PRO_RATA;
    r->refund_policy = in->refund_policy ? (int)in->refund_policy : STL_REFUND_PRO_RATA;
    r->on_completion = in->settle_on_completion;
    r->merchant_delay_days = in->merchant_settle_delay_days > STL_DELAY_DAYS_MAX
                                 ? STL_DELAY_DAYS_MAX + 1
                                 : (int)in->merchant_settle_delay_days;
    if (in->merchant_settle_delay_days > STL_DELAY_DAYS_MAX)
        return fail_field(ctx, "rule.merchant_settle_delay_days",
                          cm_arena_printf(a, "0-%d days", STL_DELAY_DAYS_MAX));
    r->n = in->n_receivers;
    for (size_t i = 0; i < in->n_receivers; i++) {
        const Commerce__Settlement__V1__SplitReceiver *x = in->receivers[i];
        if (!valid_key(x->receiver_id))
            return fail_field(ctx, cm_arena_printf(a, "rule.receivers[%zu].receiver_id", i),
                              "required: 1-64 characters from [A-Za-z0-9._:-]");
        if (x->settle_delay_days > STL_DELAY_DAYS_MAX)
            return fail_field(ctx, cm_arena_printf(a, "rule.receivers[%zu].settle_delay_days", i),
                              cm_arena_printf(a, "0-%d days", STL_DELAY_DAYS_MAX));
        if (!cm_utf8_text_valid(x->description, STL_DESC_MAX, 0))
            return fail_field(ctx, cm_arena_printf(a, "rule.receivers[%zu].description", i),
                              "at most 256 characters, no control characters");
        r->r[i].type = (int)x->type;
        snprintf(r->r[i].id, sizeof r->r[i].id, "%s", x->receiver_id);
        r->r[i].share_bps = x->share_bps;
        r->r[i].fixed = x->fixed_amount_minor;
        r->r[i].delay_days = (int)x->settle_delay_days;
        snprintf(desc[i], STL_DESC_MAX + 1, "%s", x->description);
    }
    return 0;
}

int stl_api_put_rule_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__PutSplitRuleRequest *req,
                        stl_rule *rule, char (*desc)[STL_DESC_MAX + 1])
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (request_id_ok(ctx, req->request_id))
        return -1;
    if (req->expected_version < 0)
        return fail_field(ctx, "expected_version", "must be >= 0");
    /* the tenant's quota of receivers per rule: at most the hard limit */
    long long max_receivers = cm_rpc_ctx_quota(ctx, "split_receivers", STL_RECEIVERS_MAX);
    if (req->rule && max_receivers < STL_RECEIVERS_MAX &&
        (long long)req->rule->n_receivers > max_receivers) {
        int f = cm_rpc_fail_quota(
            ctx, "split_receivers", max_receivers,
            cm_arena_printf(a, "a split rule with %zu receivers", req->rule->n_receivers));
        cm_rpc_fail_field(
            ctx, "rule.receivers",
            cm_arena_printf(a, "at most %lld receivers (the tenant's quota)", max_receivers));
        return f;
    }
    return stl_api_rule_in(ctx, req->rule, rule, desc);
}

static int put_split_rule(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__PutSplitRuleRequest *req = (const void *)in;
    Commerce__Settlement__V1__PutSplitRuleResponse *resp = (void *)out;
    stl_app *app = cm_service_app(ctx);
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    stl_rule *rule = cm_rpc_alloc(ctx, sizeof *rule);
    char(*desc)[STL_DESC_MAX + 1] = cm_rpc_alloc(ctx, STL_RECEIVERS_MAX * (STL_DESC_MAX + 1));
    stl_rule_row *row = cm_rpc_alloc(ctx, sizeof *row);
    stl_settings *set = cm_rpc_alloc(ctx, sizeof *set);
    if (!rule || !desc || !row || !set)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "split rule");
    if (stl_api_put_rule_in(ctx, req, rule, desc))
        return -1;
    cm_db *db = cm_service_db(ctx);
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    int rc = stl_store_get_settings(db, tenant, &app->defaults, set);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the tenant's settings");
    stl_violation v;
    if (stl_rule_check(rule, set->max_split_bps, &v)) {
        /* over the tenant's cap: a reason of its own, with the cap */
        if (strstr(v.why, "cap")) {
            cm_rpc_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "SPLIT_RATIO_EXCEEDED",
                        cm_arena_printf(a, "%s: %s (the tenant's cap is %lld bps)", v.field, v.why,
                                        (long long)set->max_split_bps));
            cm_rpc_fail_meta(ctx, "max_split_bps", num(a, set->max_split_bps));
        }
        return fail_field(ctx, v.field, v.why);
    }
    /* the canonical body: what the caller asked for, output fields aside */
    cm_buf body = {0};
    cm_buf_puts(&body,
                cm_arena_printf(a, "rule.v1|%s|%s|%lld|%lld|%lld|%lld|%d|%d|%d|%d|%lld",
                                req->rule->merchant_id, rule->currency, (long long)rule->fee_bps,
                                (long long)rule->fee_fixed, (long long)rule->fee_min,
                                (long long)rule->fee_max, rule->fee_bearer, rule->refund_policy,
                                rule->merchant_delay_days, rule->on_completion,
                                (long long)req->expected_version));
    for (size_t i = 0; i < rule->n; i++) {
        const stl_receiver *x = &rule->r[i];
        cm_buf_puts(&body, cm_arena_printf(a, "|%d|%s|%lld|%lld|%d|%zu:", x->type, x->id,
                                           (long long)x->share_bps, (long long)x->fixed,
                                           x->delay_days, strlen(desc[i])));
        cm_buf_puts(&body, desc[i]);
    }
    if (body.oom) {
        cm_buf_free(&body);
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "split rule");
    }
    char hash[CM_SHA256_HEX];
    cm_sha256_hex(body.p, body.len, hash);
    cm_buf_free(&body);
    int verdict = 0;
    rc = stl_store_put_rule(db, tenant, req->request_id, hash, req->rule->merchant_id, rule,
                            (const char(*)[STL_DESC_MAX + 1]) desc, req->expected_version,
                            principal(ctx), row, &verdict);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not store the split rule");
    if (verdict == STL_KEY_REUSED)
        return cm_rpc_fail_key_reused(ctx, "request_id");
    if (verdict == STL_VERSION)
        return cm_rpc_fail_version(ctx, "expected_version", req->expected_version, row->version);
    if (verdict == STL_OK)
        cm_log_info("split rule stored", "tenant", tenant, "merchant_id", row->merchant, "currency",
                    row->rule.currency, "version", num(a, row->version), "principal",
                    principal(ctx), NULL);
    resp->rule = pb_rule(a, row);
    return resp->rule ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "split rule");
}

static int merchant_currency_ok(cm_rpc_ctx *ctx, const char *merchant, const char *currency)
{
    if (!valid_key(merchant))
        return fail_field(ctx, "merchant_id", "required: 1-64 characters from [A-Za-z0-9._:-]");
    if (!cm_money_currency_valid(currency))
        return fail_field(ctx, "currency", "required: a known ISO-4217 code");
    return 0;
}

int stl_api_get_rule_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__GetSplitRuleRequest *req)
{
    if (merchant_currency_ok(ctx, req->merchant_id, req->currency))
        return -1;
    if (req->version < 0)
        return fail_field(ctx, "version", "must be >= 0");
    return 0;
}

static int get_split_rule(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__GetSplitRuleRequest *req = (const void *)in;
    Commerce__Settlement__V1__GetSplitRuleResponse *resp = (void *)out;
    if (stl_api_get_rule_in(ctx, req))
        return -1;
    stl_rule_row *row = cm_rpc_alloc(ctx, sizeof *row);
    if (!row)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "split rule");
    int rc = stl_store_get_rule(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->merchant_id,
                                req->currency, req->version, row);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND",
                           "no split rule for this merchant, currency and version");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the split rule");
    resp->rule = pb_rule(cm_rpc_ctx_arena(ctx), row);
    return resp->rule ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "split rule");
}

/* a listing's page: its size, the token's position (li->at) */
static int page_begin(cm_rpc_ctx *ctx, int32_t page_size, const char *token, char kind,
                      stl_list_in *li)
{
    return cm_page_begin(ctx, page_size, token, kind, li->filters, li->pos, &li->after, &li->limit);
}

int stl_api_rules_in(cm_rpc_ctx *ctx,
                     const Commerce__Settlement__V1__ListSplitRuleVersionsRequest *req,
                     stl_list_in *li)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(li, 0, sizeof *li);
    if (merchant_currency_ok(ctx, req->merchant_id, req->currency))
        return -1;
    li->filters = cm_page_filters(cm_arena_printf(a, "%s|%s", req->merchant_id, req->currency));
    if (page_begin(ctx, req->page_size, req->page_token, 'r', li))
        return -1;
    li->at = li->after ? strtoll(li->after, NULL, 10) : 0; /* the version to list before */
    if (li->after && li->at <= 0)
        return cm_page_bad_token(ctx);
    return 0;
}

static int list_split_rule_versions(cm_rpc_ctx *ctx, const ProtobufCMessage *in,
                                    ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__ListSplitRuleVersionsRequest *req = (const void *)in;
    Commerce__Settlement__V1__ListSplitRuleVersionsResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    stl_list_in li;
    if (stl_api_rules_in(ctx, req, &li))
        return -1;
    uint64_t fh = li.filters;
    int limit = li.limit;
    int64_t before = li.at;
    stl_rule_row *rows = cm_rpc_alloc(ctx, (size_t)(limit + 1) * sizeof *rows);
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "split rules");
    int n = 0;
    int rc = stl_store_list_rules(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->merchant_id,
                                  req->currency, before, limit + 1, rows, &n);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not list the split rules");
    int more = n > limit;
    if (more)
        n = limit;
    resp->rules = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->rules);
    if (!resp->rules)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "split rules");
    for (int i = 0; i < n; i++)
        if (!(resp->rules[i] = pb_rule(a, &rows[i])))
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "split rules");
    resp->n_rules = (size_t)n;
    return cm_page_next(ctx, more, 'r', fh, n ? num(a, rows[n - 1].version) : NULL,
                        &resp->next_page_token);
}

/* ---- tenant settings ---- */

static int get_tenant_settings(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    (void)in;
    Commerce__Settlement__V1__GetTenantSettingsResponse *resp = (void *)out;
    stl_app *app = cm_service_app(ctx);
    stl_settings s;
    int rc = stl_store_get_settings(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), &app->defaults, &s);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the tenant's settings");
    resp->settings = pb_settings(cm_rpc_ctx_arena(ctx), &s);
    return resp->settings ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "tenant settings");
}

/* "HH:MM", 00:00 to 23:59 */
static int valid_hhmm(const char *s)
{
    return strlen(s) == 5 && s[2] == ':' && s[0] >= '0' && s[0] <= '2' && s[1] >= '0' &&
           s[1] <= '9' && (s[0] < '2' || s[1] <= '3') && s[3] >= '0' && s[3] <= '5' &&
           s[4] >= '0' && s[4] <= '9';
}

int stl_api_settings_in(cm_rpc_ctx *ctx,
                        const Commerce__Settlement__V1__PutTenantSettingsRequest *req)
{
    if (request_id_ok(ctx, req->request_id))
        return -1;
    const Commerce__Settlement__V1__TenantSettings *s = req->settings;
    if (!s)
        return fail_field(ctx, "settings", "required");
    if (req->expected_revision < 0)
        return fail_field(ctx, "expected_revision", "must be >= 0");
    if (s->max_split_bps < 0 || s->max_split_bps > CM_MONEY_BPS_ONE)
        return fail_field(ctx, "settings.max_split_bps", "0-10000 basis points");
    if (!valid_hhmm(s->run_at))
        return fail_field(ctx, "settings.run_at", "required: a local time \"HH:MM\" (24 h)");
    return 0;
}

static int put_tenant_settings(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__PutTenantSettingsRequest *req = (const void *)in;
    Commerce__Settlement__V1__PutTenantSettingsResponse *resp = (void *)out;
    stl_app *app = cm_service_app(ctx);
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (stl_api_settings_in(ctx, req))
        return -1;
    const Commerce__Settlement__V1__TenantSettings *s = req->settings;
    /* the time zone is checked against postgres's list: i/o, after these */
    cm_db *db = cm_service_db(ctx);
    int known = strlen(s->time_zone) <= STL_TZ_MAX && *s->time_zone
                    ? stl_store_zone_known(db, s->time_zone)
                    : 0;
    if (known < 0)
        return cm_rpc_fail_err(ctx, known, "could not check the time zone");
    if (!known)
        return fail_field(ctx, "settings.time_zone",
                          "required: an IANA time zone name, e.g. \"Asia/Shanghai\"");
    stl_settings want = {.max_split_bps = s->max_split_bps};
    snprintf(want.tz, sizeof want.tz, "%s", s->time_zone);
    snprintf(want.run_at, sizeof want.run_at, "%s", s->run_at);
    const char *body =
        cm_arena_printf(a, "settings.v1|%s|%d|%s|%lld", s->time_zone, s->max_split_bps, s->run_at,
                        (long long)req->expected_revision);
    if (!body)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "tenant settings");
    char hash[CM_SHA256_HEX];
    cm_sha256_hex(body, strlen(body), hash);
    stl_settings now;
    int verdict = 0;
    int rc = stl_store_put_settings(db, cm_rpc_ctx_tenant(ctx), req->request_id, hash, &want,
                                    req->expected_revision, principal(ctx), &app->defaults, &now,
                                    &verdict);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not change the tenant's settings");
    if (verdict == STL_KEY_REUSED)
        return cm_rpc_fail_key_reused(ctx, "request_id");
    if (verdict == STL_VERSION)
        return cm_rpc_fail_version(ctx, "expected_revision", req->expected_revision, now.revision);
    if (verdict == STL_OK)
        cm_log_info("settlement settings changed", "tenant", cm_rpc_ctx_tenant(ctx), "revision",
                    num(a, now.revision), "principal", principal(ctx), NULL);
    resp->settings = pb_settings(a, &now);
    return resp->settings ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "tenant settings");
}

/* ---- accounts and the journal ---- */

int stl_api_accounts_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__ListAccountsRequest *req,
                        stl_list_in *li)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(li, 0, sizeof *li);
    int type = 0;
    const char *owner = NULL;
    if (req->party) {
        type = (int)req->party->type;
        owner = req->party->id;
        if (!stl_party_name(type) && type != STL_PARTY_CLEARING && type != STL_PARTY_PROVIDER_FEE &&
            type != STL_PARTY_COMMISSION)
            return fail_field(ctx, "party.type", "a known party type");
        int ledger = type == STL_PARTY_CLEARING || type == STL_PARTY_PROVIDER_FEE;
        if (ledger ? *owner != '\0' : !valid_key(owner))
            return fail_field(ctx, "party.id",
                              ledger ? "empty for the ledger's own accounts"
                                     : "required: 1-64 characters from [A-Za-z0-9._:-]");
    }
    if (*req->currency && !cm_money_currency_valid(req->currency))
        return fail_field(ctx, "currency", "a known ISO-4217 code, or empty for all");
    /* a merchant's token sees its own accounts (party MERCHANT, its id):
     * without a party filter that is the filter; a filter on another party
     * is an empty page */
    const char *merchant = cm_rpc_ctx_merchant_scope(ctx);
    int others = 0;
    if (merchant && !req->party) {
        type = STL_PARTY_MERCHANT;
        owner = merchant;
    } else if (merchant) {
        others = type != STL_PARTY_MERCHANT || strcmp(owner, merchant) != 0;
    }
    li->filters = cm_page_filters(
        cm_arena_printf(a, "%d|%s|%s", type, owner ? owner : "\x01", req->currency));
    li->party_type = type;
    li->party_id = owner;
    if (page_begin(ctx, req->page_size, req->page_token, 'a', li))
        return -1;
    if (others) {
        li->none = 1;
        return 0;
    }
    li->at = li->after ? strtoll(li->after, NULL, 10) : 0; /* the account id to list after */
    if (li->after && li->at <= 0)
        return cm_page_bad_token(ctx);
    return 0;
}

static int list_accounts(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__ListAccountsRequest *req = (const void *)in;
    Commerce__Settlement__V1__ListAccountsResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    stl_list_in li;
    if (stl_api_accounts_in(ctx, req, &li))
        return -1;
    if (li.none)
        return 0;
    uint64_t fh = li.filters;
    int limit = li.limit, type = li.party_type;
    const char *owner = li.party_id;
    int64_t after_id = li.at;
    stl_account *rows = cm_rpc_alloc(ctx, (size_t)(limit + 1) * sizeof *rows);
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "accounts");
    int n = 0;
    int rc = stl_store_list_accounts(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), type, owner,
                                     req->currency, after_id, limit + 1, rows, &n);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not list the accounts");
    int more = n > limit;
    if (more)
        n = limit;
    resp->accounts = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->accounts);
    if (!resp->accounts)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "accounts");
    for (int i = 0; i < n; i++)
        if (!(resp->accounts[i] = pb_account(a, &rows[i])))
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "accounts");
    resp->n_accounts = (size_t)n;
    return cm_page_next(ctx, more, 'a', fh, n ? num(a, rows[n - 1].id) : NULL,
                        &resp->next_page_token);
}

int stl_api_journal_in(cm_rpc_ctx *ctx,
                       const Commerce__Settlement__V1__ListJournalEntriesRequest *req,
                       stl_list_in *li)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(li, 0, sizeof *li);
    if (*req->order_id && !cm_id_is_uuid(req->order_id))
        return fail_field(ctx, "order_id", "a UUID, or empty for all");
    if (req->account_id < 0)
        return fail_field(ctx, "account_id", "must be >= 0");
    int64_t from = 0, to = 0;
    if (req->posted) {
        if (req->posted->start_at && cm_pb_timestamp_check(req->posted->start_at, &from))
            return fail_field(ctx, "posted.start_at", "not a valid timestamp");
        if (req->posted->end_at && cm_pb_timestamp_check(req->posted->end_at, &to))
            return fail_field(ctx, "posted.end_at", "not a valid timestamp");
        if (from && to && to <= from)
            return fail_field(ctx, "posted.end_at", "must be after posted.start_at");
    }
    li->filters = cm_page_filters(cm_arena_printf(a, "%s|%lld|%lld|%lld", req->order_id,
                                                  (long long)req->account_id, (long long)from,
                                                  (long long)to));
    li->from_ms = from;
    li->to_ms = to;
    if (page_begin(ctx, req->page_size, req->page_token, 'e', li))
        return -1;
    li->at = li->after ? strtoll(li->after, NULL, 10) : 0; /* the entry id to list before */
    if (li->after && li->at <= 0)
        return cm_page_bad_token(ctx);
    return 0;
}

static int list_journal_entries(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__ListJournalEntriesRequest *req = (const void *)in;
    Commerce__Settlement__V1__ListJournalEntriesResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    stl_list_in li;
    if (stl_api_journal_in(ctx, req, &li))
        return -1;
    uint64_t fh = li.filters;
    int limit = li.limit;
    int64_t from = li.from_ms, to = li.to_ms, before = li.at;
    /* entries are large (up to 106 postings): a page is read in slices */
    stl_entry *rows = malloc((size_t)(limit + 1) * sizeof *rows);
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "entries");
    int n = 0;
    int rc = stl_store_list_entries(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx),
                                    *req->order_id ? req->order_id : NULL, req->account_id, from,
                                    to, before, limit + 1, rows, &n);
    if (rc) {
        free(rows);
        return cm_rpc_fail_err(ctx, rc, "could not list the journal");
    }
    int more = n > limit;
    if (more)
        n = limit;
    resp->entries = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->entries);
    for (int i = 0; resp->entries && i < n; i++) {
        if (!(resp->entries[i] = stl_pb_entry(a, &rows[i]))) {
            resp->entries = NULL;
            break;
        }
    }
    int64_t last = n ? rows[n - 1].id : 0;
    free(rows);
    if (!resp->entries)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "entries");
    resp->n_entries = (size_t)n;
    return cm_page_next(ctx, more, 'e', fh, n ? num(a, last) : NULL, &resp->next_page_token);
}

/* ---- settlement runs and payouts ---- */

int stl_api_run_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__RunSettlementRequest *req,
                   const char **date_out)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    const char *date = NULL;
    if (req->business_date) {
        const Commerce__Common__V1__Date *d = req->business_date;
        static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        int leap = d->year % 4 == 0 && (d->year % 100 != 0 || d->year % 400 == 0);
        if (d->year < 2000 || d->year > 9999 || d->month < 1 || d->month > 12 || d->day < 1 ||
            d->day > mdays[d->month - 1] || (d->month == 2 && d->day == 29 && !leap))
            return fail_field(ctx, "business_date", "not a valid date");
        date = cm_arena_printf(a, "%04d-%02d-%02d", d->year, d->month, d->day);
        if (!date)
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "settlement run");
    }
    *date_out = date;
    return 0;
}

static int run_settlement(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__RunSettlementRequest *req = (const void *)in;
    Commerce__Settlement__V1__RunSettlementResponse *resp = (void *)out;
    stl_app *app = cm_service_app(ctx);
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    const char *date;
    if (stl_api_run_in(ctx, req, &date))
        return -1;
    stl_run run;
    cm_db *db = cm_service_db(ctx);
    int rc = stl_run_request(db, cm_rpc_ctx_tenant(ctx), date, STL_TRIGGER_MANUAL, principal(ctx),
                             &app->defaults, &run);
    if (rc == CM_EINVAL)
        return fail_field(ctx, "business_date", "after the tenant's local today");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not ask for the settlement run");
    resp->run = stl_pb_run(a, &run);
    return resp->run ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "settlement run");
}

static int get_settlement_run(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__GetSettlementRunRequest *req = (const void *)in;
    Commerce__Settlement__V1__GetSettlementRunResponse *resp = (void *)out;
    if (!cm_id_is_uuid(req->run_id))
        return fail_field(ctx, "run_id", "required: a UUID");
    stl_run run;
    int rc = stl_run_get(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->run_id, &run);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail_not_found(ctx, "settlement run");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the settlement run");
    resp->run = stl_pb_run(cm_rpc_ctx_arena(ctx), &run);
    return resp->run ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "settlement run");
}

int stl_api_runs_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__ListSettlementRunsRequest *req,
                    stl_list_in *li)
{
    memset(li, 0, sizeof *li);
    li->filters = cm_page_filters("runs");
    if (page_begin(ctx, req->page_size, req->page_token, 'u', li))
        return -1;
    if (li->after && strlen(li->after) != 10) /* the business date to list before */
        return cm_page_bad_token(ctx);
    return 0;
}

static int list_settlement_runs(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__ListSettlementRunsRequest *req = (const void *)in;
    Commerce__Settlement__V1__ListSettlementRunsResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    stl_list_in li;
    if (stl_api_runs_in(ctx, req, &li))
        return -1;
    uint64_t fh = li.filters;
    int limit = li.limit;
    const char *after = li.after;
    stl_run *rows = cm_rpc_alloc(ctx, (size_t)(limit + 1) * sizeof *rows);
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "settlement runs");
    int n = 0;
    int rc = stl_run_list(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), after ? after : "", limit + 1,
                          rows, &n);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not list the settlement runs");
    int more = n > limit;
    if (more)
        n = limit;
    resp->runs = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->runs);
    if (!resp->runs)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "settlement runs");
    for (int i = 0; i < n; i++)
        if (!(resp->runs[i] = stl_pb_run(a, &rows[i])))
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "settlement runs");
    resp->n_runs = (size_t)n;
    return cm_page_next(ctx, more, 'u', fh, n ? rows[n - 1].date : NULL, &resp->next_page_token);
}

static int get_payout(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__GetPayoutRequest *req = (const void *)in;
    Commerce__Settlement__V1__GetPayoutResponse *resp = (void *)out;
    if (!cm_id_is_uuid(req->payout_id))
        return fail_field(ctx, "payout_id", "required: a UUID");
    stl_payout *p = cm_rpc_alloc(ctx, sizeof *p);
    if (!p)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "payout");
    /* a merchant's token: a payout to another party is as unknown */
    int rc = stl_payout_get(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->payout_id,
                            cm_rpc_ctx_merchant_scope(ctx), p);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail_not_found(ctx, "payout");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the payout");
    resp->payout = stl_pb_payout(cm_rpc_ctx_arena(ctx), p);
    return resp->payout ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "payout");
}

int stl_api_payouts_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__ListPayoutsRequest *req,
                       stl_list_in *li)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(li, 0, sizeof *li);
    int state = (int)req->state;
    if (state < 0 || state > STL_PAYOUT_FAILED)
        return fail_field(ctx, "state", "a payout state, or unset for all");
    if (req->account_id < 0)
        return fail_field(ctx, "account_id", "must be >= 0");
    li->filters = cm_page_filters(cm_arena_printf(a, "%d|%lld", state, (long long)req->account_id));
    if (page_begin(ctx, req->page_size, req->page_token, 'p', li))
        return -1;
    /* the position: "<created ms>.<payout id>" */
    li->at_id = "";
    if (li->after) {
        const char *dot = strchr(li->after, '.');
        li->at = strtoll(li->after, NULL, 10);
        if (!dot || li->at <= 0 || !cm_id_is_uuid(dot + 1))
            return cm_page_bad_token(ctx);
        li->at_id = dot + 1;
    }
    return 0;
}

static int list_payouts(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__ListPayoutsRequest *req = (const void *)in;
    Commerce__Settlement__V1__ListPayoutsResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    stl_list_in li;
    if (stl_api_payouts_in(ctx, req, &li))
        return -1;
    int state = (int)req->state, limit = li.limit;
    uint64_t fh = li.filters;
    long long before_ms = li.at;
    const char *before_id = li.at_id;
    stl_payout *rows = cm_rpc_alloc(ctx, (size_t)(limit + 1) * sizeof *rows);
    if (!rows)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "payouts");
    int n = 0;
    int rc =
        stl_payout_list(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), cm_rpc_ctx_merchant_scope(ctx),
                        state, req->account_id, before_ms, before_id, limit + 1, rows, &n);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not list the payouts");
    int more = n > limit;
    if (more)
        n = limit;
    resp->payouts = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->payouts);
    if (!resp->payouts)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "payouts");
    for (int i = 0; i < n; i++)
        if (!(resp->payouts[i] = stl_pb_payout(a, &rows[i])))
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "payouts");
    resp->n_payouts = (size_t)n;
    const char *end =
        n ? cm_arena_printf(a, "%lld.%s", (long long)rows[n - 1].created_ms, rows[n - 1].id) : NULL;
    return cm_page_next(ctx, more, 'p', fh, end, &resp->next_page_token);
}

int stl_api_report_in(cm_rpc_ctx *ctx,
                      const Commerce__Settlement__V1__ReportPayoutResultRequest *req,
                      const char **ref_out, const char **why_out)
{
    if (!cm_id_is_uuid(req->payout_id))
        return fail_field(ctx, "payout_id", "required: a UUID");
    int result = (int)req->result;
    if (result != STL_PAYOUT_PAID && result != STL_PAYOUT_FAILED)
        return fail_field(ctx, "result", "required: PAYOUT_STATE_PAID or PAYOUT_STATE_FAILED");
    const char *ref = result == STL_PAYOUT_PAID ? req->provider_reference : "";
    const char *why = result == STL_PAYOUT_FAILED ? req->failure_reason : "";
    if (result == STL_PAYOUT_PAID && !cm_utf8_text_valid(ref, STL_REF_MAX, 1))
        return fail_field(ctx, "provider_reference",
                          "required for PAID: 1-128 characters, no control characters");
    if (result == STL_PAYOUT_FAILED && !cm_utf8_text_valid(why, STL_REASON_MAX, 1))
        return fail_field(ctx, "failure_reason",
                          "required for FAILED: 1-256 characters, no control characters");
    *ref_out = ref;
    *why_out = why;
    return 0;
}

static int report_payout_result(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__ReportPayoutResultRequest *req = (const void *)in;
    Commerce__Settlement__V1__ReportPayoutResultResponse *resp = (void *)out;
    stl_app *app = cm_service_app(ctx);
    const char *ref, *why;
    if (stl_api_report_in(ctx, req, &ref, &why))
        return -1;
    int result = (int)req->result;
    stl_payout *p = cm_rpc_alloc(ctx, sizeof *p);
    if (!p)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "payout");
    int verdict = 0;
    int rc = stl_payout_report(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->payout_id, result,
                               ref, why, app->events_on, app->topic, p, &verdict);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail_not_found(ctx, "payout");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not record the payout's result");
    if (verdict == STL_VERSION)
        return cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION",
                           "the payout was already reported with the other result");
    if (verdict == STL_OK)
        cm_counter_add(result == STL_PAYOUT_PAID ? app->payouts_paid : app->payouts_failed, 1);
    resp->payout = stl_pb_payout(cm_rpc_ctx_arena(ctx), p);
    return resp->payout ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "payout");
}

static Commerce__Settlement__V1__BucketBalances *pb_buckets(cm_arena *a, const stl_buckets *b)
{
    Commerce__Settlement__V1__BucketBalances *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__settlement__v1__bucket_balances__init(m);
    m->pending_minor = b->pending;
    m->available_minor = b->available;
    m->paying_minor = b->paying;
    m->paid_out_minor = b->paid_out;
    return m;
}

int stl_api_statement_in(cm_rpc_ctx *ctx,
                         const Commerce__Settlement__V1__GetAccountStatementRequest *req,
                         stl_list_in *li)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    memset(li, 0, sizeof *li);
    if (req->account_id <= 0)
        return fail_field(ctx, "account_id", "required: an account id from ListAccounts");
    int64_t from = 0, to = 0;
    if (!req->period || !req->period->start_at ||
        cm_pb_timestamp_check(req->period->start_at, &from))
        return fail_field(ctx, "period.start_at", "required: a valid timestamp");
    if (!req->period->end_at || cm_pb_timestamp_check(req->period->end_at, &to))
        return fail_field(ctx, "period.end_at", "required: a valid timestamp");
    if (to <= from)
        return fail_field(ctx, "period.end_at", "must be after period.start_at");
    li->filters = cm_page_filters(cm_arena_printf(a, "%lld|%lld|%lld", (long long)req->account_id,
                                                  (long long)from, (long long)to));
    li->from_ms = from;
    li->to_ms = to;
    if (page_begin(ctx, req->page_size, req->page_token, 's', li))
        return -1;
    /* the position: "<entry id>.<posting index>" */
    if (li->after && (sscanf(li->after, "%lld.%lld", &li->at, &li->at_k) != 2 || li->at <= 0))
        return cm_page_bad_token(ctx);
    return 0;
}

static int get_account_statement(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__GetAccountStatementRequest *req = (const void *)in;
    Commerce__Settlement__V1__GetAccountStatementResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    stl_list_in li;
    if (stl_api_statement_in(ctx, req, &li))
        return -1;
    uint64_t fh = li.filters;
    int limit = li.limit;
    int64_t from = li.from_ms, to = li.to_ms;
    long long after_id = li.at, after_k = li.at_k;
    stl_account acct;
    stl_buckets open, close;
    stl_line *lines = cm_rpc_alloc(ctx, (size_t)(limit + 1) * sizeof *lines);
    int *ks = cm_rpc_alloc(ctx, (size_t)(limit + 1) * sizeof *ks);
    if (!lines || !ks)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "statement");
    int n = 0;
    int rc = stl_store_statement(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), req->account_id,
                                 cm_rpc_ctx_merchant_scope(ctx), from, to, after_id, (int)after_k,
                                 limit + 1, &acct, &open, &close, lines, ks, &n);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail_not_found(ctx, "account");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the statement");
    int more = n > limit;
    if (more)
        n = limit;
    resp->account = pb_account(a, &acct);
    resp->opening = pb_buckets(a, &open);
    resp->closing = pb_buckets(a, &close);
    resp->lines = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->lines);
    if (!resp->account || !resp->opening || !resp->closing || !resp->lines)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "statement");
    for (int i = 0; i < n; i++) {
        Commerce__Settlement__V1__StatementLine *l = cm_arena_calloc(a, 1, sizeof *l);
        if (!l)
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "statement");
        commerce__settlement__v1__statement_line__init(l);
        l->entry_id = lines[i].entry_id;
        l->kind = (Commerce__Settlement__V1__EntryKind)lines[i].kind;
        l->posted_at = cm_pb_timestamp(a, lines[i].posted_ms);
        l->order_id = cm_arena_strdup(a, lines[i].order_id);
        l->reference = cm_arena_strdup(a, lines[i].ref);
        l->bucket = (Commerce__Settlement__V1__Bucket)lines[i].bucket;
        l->amount_minor = lines[i].amount;
        if (!l->order_id || !l->reference)
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "statement");
        resp->lines[i] = l;
    }
    resp->n_lines = (size_t)n;
    const char *end =
        n ? cm_arena_printf(a, "%lld.%d", (long long)lines[n - 1].entry_id, ks[n - 1]) : NULL;
    return cm_page_next(ctx, more, 's', fh, end, &resp->next_page_token);
}

/* the ledger is the tenant's finance: every party's money, the platform's
 * take, the provider's fees. its readers are finance's (admin, reader) and
 * each merchant for its own accounts; no backend on the hot path reads it
 * (settlement is fed by order events), so "service" is not among them */
#define STL_ROLES_READ "admin reader"
#define STL_ROLES_MERCHANT STL_ROLES_READ " merchant"

const cm_rpc_method stl_methods[] = {
    {"PutSplitRule", put_split_rule, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"GetSplitRule", get_split_rule, CM_RPC_READ, STL_ROLES_READ},
    {"ListSplitRuleVersions", list_split_rule_versions, CM_RPC_READ, STL_ROLES_READ},
    {"GetTenantSettings", get_tenant_settings, CM_RPC_READ, STL_ROLES_READ},
    {"PutTenantSettings", put_tenant_settings, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"ListAccounts", list_accounts, CM_RPC_READ, STL_ROLES_MERCHANT},
    {"ListJournalEntries", list_journal_entries, CM_RPC_READ, STL_ROLES_READ},
    {"RunSettlement", run_settlement, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"GetSettlementRun", get_settlement_run, CM_RPC_READ, STL_ROLES_READ},
    {"ListSettlementRuns", list_settlement_runs, CM_RPC_READ, STL_ROLES_READ},
    {"GetPayout", get_payout, CM_RPC_READ, STL_ROLES_MERCHANT},
    {"ListPayouts", list_payouts, CM_RPC_READ, STL_ROLES_MERCHANT},
    {"ReportPayoutResult", report_payout_result, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"GetAccountStatement", get_account_statement, CM_RPC_READ, STL_ROLES_MERCHANT},
    {"ImportStatement", stl_import_statement, CM_RPC_ADMIN, CM_RPC_ROLES_ADMIN},
    {"GetReconciliation", stl_get_reconciliation, CM_RPC_READ, STL_ROLES_READ},
    {"ListReconciliationDifferences", stl_list_reconciliation_differences, CM_RPC_READ,
     STL_ROLES_READ},
};
const size_t stl_methods_count = sizeof stl_methods / sizeof stl_methods[0];

/* ---- app ---- */

int stl_app_init(cm_service *svc, void **out, char *err, size_t errlen)
{
    stl_app *app = calloc(1, sizeof *app);
    if (!app) {
        snprintf(err, errlen, "out of memory");
        return CM_ENOMEM;
    }
    snprintf(app->defaults.tz, sizeof app->defaults.tz, "%s",
             cm_service_text(svc, "SETTLEMENT_DEFAULT_TIME_ZONE"));
    app->defaults.max_split_bps = cm_service_int(svc, "SETTLEMENT_DEFAULT_MAX_SPLIT_BPS");
    snprintf(app->defaults.run_at, sizeof app->defaults.run_at, "%s",
             cm_service_text(svc, "SETTLEMENT_DEFAULT_RUN_AT"));
    if (!valid_hhmm(app->defaults.run_at)) {
        snprintf(err, errlen, "SETTLEMENT_DEFAULT_RUN_AT: not a local time \"HH:MM\"");
        free(app);
        return CM_EINVAL;
    }
    if (!valid_key(cm_service_text(svc, "SETTLEMENT_PLATFORM_ID"))) {
        snprintf(err, errlen, "SETTLEMENT_PLATFORM_ID: 1-64 characters from [A-Za-z0-9._:-]");
        free(app);
        return CM_EINVAL;
    }
    int known = stl_store_zone_known(cm_service_main_db(svc), app->defaults.tz);
    if (known <= 0) {
        snprintf(err, errlen, "SETTLEMENT_DEFAULT_TIME_ZONE: %s",
                 known < 0 ? "could not be checked" : "not a time zone the database knows");
        free(app);
        return known < 0 ? known : CM_EINVAL;
    }
    app->events_on = (int)cm_service_int(svc, "SETTLEMENT_EVENTS");
    snprintf(app->topic, sizeof app->topic, "%s", cm_service_text(svc, "SETTLEMENT_TOPIC"));
    cm_metrics *m = cm_service_metrics(svc);
    static const double lag_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60};
    app->lag = cm_metrics_histogram(m, "settlement_posting_lag_seconds",
                                    "from a payment's paid_at to its posting on the ledger", NULL,
                                    lag_bounds, sizeof lag_bounds / sizeof lag_bounds[0]);
    app->ledger = stl_ledger_new(&app->defaults, app->events_on, app->topic, app->lag);
    app->posted = cm_metrics_counter(m, "settlement_splits_posted_total",
                                     "paid orders split and posted on the ledger", NULL);
    app->reversed = cm_metrics_counter(m, "settlement_refunds_reversed_total",
                                       "refunds reversed on the ledger", NULL);
    app->duplicates = cm_metrics_counter(
        m, "settlement_duplicate_postings_total",
        "payments or refunds seen again under another event id (posted once)", NULL);
    app->capped = cm_metrics_counter(m, "settlement_capped_splits_total",
                                     "splits scaled down to the tenant's cap", NULL);
    app->parked = cm_metrics_counter(m, "settlement_refunds_parked_total",
                                     "refunds that arrived before their payment was posted", NULL);
    app->dead_lettered = cm_metrics_counter(
        m, "settlement_refunds_dead_lettered_total",
        "parked refunds whose payment never came, sent to the dead-letter topic", NULL);
    app->runs = cm_metrics_counter(m, "settlement_runs_completed_total",
                                   "settlement runs carried out to the end", NULL);
    app->payouts = cm_metrics_counter(m, "settlement_payouts_total", "payouts by state reached",
                                      "state=\"created\"");
    app->payouts_paid = cm_metrics_counter(m, "settlement_payouts_total",
                                           "payouts by state reached", "state=\"paid\"");
    app->payouts_failed = cm_metrics_counter(m, "settlement_payouts_total",
                                             "payouts by state reached", "state=\"failed\"");
    app->costs_lag = cm_metrics_histogram(
        m, "settlement_commission_cost_lag_seconds",
        "from a commission event's occurred_at to its cost entry on the ledger", NULL, lag_bounds,
        sizeof lag_bounds / sizeof lag_bounds[0]);
    app->costs = stl_costs_new(&app->defaults, cm_service_text(svc, "SETTLEMENT_PLATFORM_ID"),
                               app->events_on, app->topic, app->costs_lag);
    app->costs_posted =
        cm_metrics_counter(m, "settlement_commission_costs_posted_total",
                           "commission changes (accrued, clawed back, adjusted) booked as cost "
                           "entries on the ledger",
                           NULL);
    app->costs_duplicates = cm_metrics_counter(
        m, "settlement_commission_costs_duplicate_total",
        "commission changes seen again under another event id (booked once)", NULL);
    if (!app->ledger || !app->costs) {
        stl_ledger_free(app->ledger);
        stl_costs_free(app->costs);
        snprintf(err, errlen, "out of memory");
        free(app);
        return CM_ENOMEM;
    }
    *out = app;
    return 0;
}

void stl_app_fini(cm_service *svc, void *p)
{
    (void)svc;
    stl_app *app = p;
    if (!app)
        return;
    stl_ledger_free(app->ledger);
    stl_costs_free(app->costs);
    free(app);
}
