/*
 * the partner RPCs (PutPartner, GetPartner, ListPartners,
 * RotateWebhookSecret, ListWebhookDeliveries, RedeliverWebhookEvent,
 * ReplayPartnerEvents) and their SQL: the partner feed's configuration and
 * its delivery log. Routing and delivery are feed.c's (cms_feed.h).
 */
#include "cms_partners.h"

#include "cm_buf.h"
#include "cm_cloudevents.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "cm_page.h"
#include "cm_pb.h"
#include "cm_utf8.h"
#include "cms_api.h"
#include "cms_domain.h"
#include "cms_feed.h"
#include "cms_store.h"
#include "cms_webhook.h"

#include <grpc/status.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commerce/commission/v1/commission_service.pb-c.h"

#define KEY_RULE "1-64 characters from [A-Za-z0-9._:-]"
#define PARTNER_RULE "1-64 characters from [A-Za-z0-9_-]"
#define CHANNELS_MAX 1000
#define REPLAY_MAX 1000000

typedef Commerce__Commission__V1__Partner pb_partner_t;

/* ---- helpers ---- */

static int valid_partner_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > CMS_PARTNER_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* a webhook needs a signing secret, which this replica may not store */
static int fail_not_configured(cm_rpc_ctx *ctx)
{
    return cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "NOT_CONFIGURED",
                       "partner webhooks are not configured on this server: their signing "
                       "secrets need COMMISSION_SECRETS_KEY_FILE");
}

static const char *principal(cm_rpc_ctx *ctx)
{
    const char *p = cm_rpc_ctx_subject(ctx);
    return p ? p : "";
}

static int64_t col_i64(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static char *col_str(cm_arena *a, const PGresult *r, int row, int col)
{
    return cm_arena_strdup(a, PQgetvalue(r, row, col));
}

/* FAILED_PRECONDITION naming the field (ErrorInfo metadata "field"):
 * REFERENCE_NOT_FOUND, or ILLEGAL_STATE_TRANSITION when illegal */
static int fail_ref(cm_rpc_ctx *ctx, int illegal, const char *field, const char *msg)
{
    int f = illegal
                ? cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION", msg)
                : cm_rpc_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "REFERENCE_NOT_FOUND", msg);
    cm_rpc_fail_meta(ctx, "field", field);
    return f;
}

/* the start every partner RPC but PutPartner shares: role admin, the
 * request_id (unless NULL: a read), the partner_id; -1 after a failure */
static int partner_call(cm_rpc_ctx *ctx, const char *request_id, const char *partner_id)
{
    if (request_id && !cm_id_key_valid(request_id, CMS_ID_MAX))
        return cm_rpc_fail_field(ctx, "request_id", "required: " KEY_RULE);
    if (!valid_partner_id(partner_id))
        return cm_rpc_fail_field(ctx, "partner_id", "required: " PARTNER_RULE);
    return 0;
}

/* ---- reading partners ---- */

#define PARTNER_COLS                                                                               \
    "p.partner_id, p.name, p.kafka_enabled, p.webhook_enabled, p.webhook_url, p.webhook_state, "   \
    "COALESCE((extract(epoch FROM p.failing_since) * 1000)::bigint, 0), "                          \
    "COALESCE((extract(epoch FROM p.disabled_at) * 1000)::bigint, 0), p.last_error, "              \
    "COALESCE((extract(epoch FROM p.secret_at) * 1000)::bigint, 0), "                              \
    "CASE WHEN p.previous_until > now() THEN (extract(epoch FROM p.previous_until) * "             \
    "1000)::bigint ELSE 0 END, (extract(epoch FROM p.next_attempt_at) * 1000)::bigint, "           \
    "p.revision, (extract(epoch FROM p.created_at) * 1000)::bigint, (extract(epoch FROM "          \
    "p.updated_at) * 1000)::bigint, ARRAY(SELECT c.channel_id FROM channels c WHERE c.tenant_id "  \
    "= p.tenant_id AND c.partner_id = p.partner_id ORDER BY c.channel_id), (SELECT count(*) FROM " \
    "webhook_deliveries d WHERE d.tenant_id = p.tenant_id AND d.partner_id = p.partner_id AND "    \
    "d.delivered_at IS NULL)"

static void text_array(cm_arena *a, const char *lit, char ***out, size_t *n)
{
    /* channel ids are [A-Za-z0-9._:-]: postgres prints them unquoted */
    *out = NULL;
    *n = 0;
    size_t len = strlen(lit);
    if (len < 2)
        return;
    size_t cap = 1;
    for (size_t i = 0; i < len; i++)
        cap += lit[i] == ',';
    char **v = cm_arena_calloc(a, cap, sizeof *v);
    char *s = cm_arena_strdup(a, lit + 1);
    if (!v || !s)
        return;
    s[strlen(s) - 1] = '\0';
    size_t k = 0;
    for (char *save = NULL, *t = strtok_r(s, ",", &save); t && k < cap;
         t = strtok_r(NULL, ",", &save))
        v[k++] = t;
    *out = v;
    *n = k;
}

static pb_partner_t *parse_partner(cm_arena *a, const char *tenant, const PGresult *r, int row)
{
    pb_partner_t *m = cm_arena_calloc(a, 1, sizeof *m);
    Commerce__Commission__V1__PartnerKafka *k = cm_arena_calloc(a, 1, sizeof *k);
    Commerce__Commission__V1__PartnerWebhook *w = cm_arena_calloc(a, 1, sizeof *w);
    if (!m || !k || !w)
        return NULL;
    commerce__commission__v1__partner__init(m);
    commerce__commission__v1__partner_kafka__init(k);
    commerce__commission__v1__partner_webhook__init(w);
    m->partner_id = col_str(a, r, row, 0);
    m->name = col_str(a, r, row, 1);
    k->enabled = PQgetvalue(r, row, 2)[0] == 't';
    char topic[256];
    cms_feed_topic(tenant, m->partner_id ? m->partner_id : "", topic);
    k->topic = cm_arena_strdup(a, topic);
    k->consumer_group_prefix = cm_arena_printf(a, "%s.", topic);
    k->username = cm_arena_printf(a, "%s.%s", tenant, m->partner_id ? m->partner_id : "");
    w->enabled = PQgetvalue(r, row, 3)[0] == 't';
    w->url = col_str(a, r, row, 4);
    w->state = (Commerce__Commission__V1__WebhookState)col_i64(r, row, 5);
    w->failing_since = cm_pb_timestamp(a, col_i64(r, row, 6));
    w->disabled_at = cm_pb_timestamp(a, col_i64(r, row, 7));
    w->last_error = col_str(a, r, row, 8);
    w->secret_created_at = cm_pb_timestamp(a, col_i64(r, row, 9));
    w->previous_secret_expires_at = cm_pb_timestamp(a, col_i64(r, row, 10));
    if (w->state == COMMERCE__COMMISSION__V1__WEBHOOK_STATE__WEBHOOK_STATE_FAILING)
        w->next_attempt_at = cm_pb_timestamp(a, col_i64(r, row, 11));
    m->revision = col_i64(r, row, 12);
    m->created_at = cm_pb_timestamp(a, col_i64(r, row, 13));
    m->updated_at = cm_pb_timestamp(a, col_i64(r, row, 14));
    text_array(a, PQgetvalue(r, row, 15), &m->channel_ids, &m->n_channel_ids);
    w->pending = col_i64(r, row, 16);
    m->kafka = k;
    m->webhook = w;
    if (!m->partner_id || !m->name || !k->topic || !k->consumer_group_prefix || !k->username ||
        !w->url || !w->last_error)
        return NULL;
    return m;
}

/* the partner (tenant, id) into *out: 0, CM_ENOTFOUND, < 0 */
static int load_partner(cm_db *db, cm_arena *a, const char *tenant, const char *id,
                        pb_partner_t **out)
{
    const char *p[] = {tenant, id};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "read partner",
                        "SELECT " PARTNER_COLS " FROM partners p WHERE p.tenant_id = $1 AND "
                        "p.partner_id = $2",
                        2, p, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return CM_ENOTFOUND;
    }
    *out = parse_partner(a, tenant, r, 0);
    PQclear(r);
    return *out ? 0 : CM_ENOMEM;
}

/* ---- PutPartner ---- */

enum { PUT_OK, PUT_SAME, PUT_REUSED, PUT_VERSION, PUT_NO_CHANNEL, PUT_OWNED };

typedef struct put_tx {
    const char *tenant, *request_id, *hash, *principal;
    const pb_partner_t *in;
    const char *channels; /* text[] literal */
    const cms_feed *feed;
    int64_t expected;
    char secret[CMS_WEBHOOK_SECRET_SIZE]; /* a new one, when the put makes the first */
    char stored[CMS_SECRETS_SEALED_SIZE]; /* what the row keeps of it */
    int verdict;
    int bad; /* the channel_ids index of PUT_NO_CHANNEL / PUT_OWNED */
    int64_t current;
    int made_secret;
} put_tx;

static int put_in_tx(cm_db *db, void *arg)
{
    put_tx *t = arg;
    const pb_partner_t *in = t->in;
    int same = 0;
    int64_t rev = 0;
    char key[128];
    t->verdict = PUT_OK;
    t->made_secret = 0;
    int seen = cms_store_locked_request(db, "lock partners", "commission.partners", t->tenant, "p",
                                        t->request_id, t->hash, &same, key, sizeof key, &rev);
    if (seen < 0)
        return seen;
    if (seen) {
        t->verdict = same ? PUT_SAME : PUT_REUSED;
        return 0;
    }
    const char *p0[] = {t->tenant, in->partner_id};
    PGresult *r = NULL;
    int rc = cm_db_exec(db, "read partner revision",
                        "SELECT revision, secret <> '' FROM partners WHERE tenant_id = $1 AND "
                        "partner_id = $2 FOR UPDATE",
                        2, p0, &r);
    if (rc)
        return rc;
    t->current = PQntuples(r) ? col_i64(r, 0, 0) : 0;
    int has_secret = PQntuples(r) && PQgetvalue(r, 0, 1)[0] == 't';
    PQclear(r);
    if (t->expected > 0 && t->expected != t->current) {
        t->verdict = PUT_VERSION;
        return 0;
    }
    /* the channels: known, and nobody else's */
    const char *p1[] = {t->tenant, t->channels, in->partner_id};
    rc = cm_db_exec(db, "check partner channels",
                    "SELECT u.i, c.channel_id IS NULL, COALESCE(c.partner_id NOT IN ('', $3), "
                    "false) FROM unnest($2::text[]) WITH ORDINALITY AS u(id, i) LEFT JOIN channels "
                    "c ON c.tenant_id = $1 AND c.channel_id = u.id WHERE c.channel_id IS NULL OR "
                    "c.partner_id NOT IN ('', $3) ORDER BY u.i LIMIT 1",
                    3, p1, &r);
    if (rc)
        return rc;
    if (PQntuples(r)) {
        t->bad = (int)col_i64(r, 0, 0) - 1;
        t->verdict = PQgetvalue(r, 0, 1)[0] == 't' ? PUT_NO_CHANNEL : PUT_OWNED;
        PQclear(r);
        return 0;
    }
    PQclear(r);
    int want_secret = in->webhook && in->webhook->url[0] && !has_secret;
    if (want_secret) {
        rc = cms_webhook_secret_new(t->secret);
        if (rc == 0)
            rc = cms_feed_secret_store(t->feed, t->tenant, in->partner_id, t->secret, t->stored);
        if (rc)
            return rc;
        t->made_secret = 1;
    }
    const Commerce__Commission__V1__PartnerWebhook *w = in->webhook;
    const char *p2[] = {t->tenant,
                        in->partner_id,
                        in->name,
                        in->kafka && in->kafka->enabled ? "t" : "f",
                        w ? w->url : "",
                        w && w->enabled ? "t" : "f",
                        want_secret ? t->stored : "",
                        t->request_id};
    rc = cm_db_exec(
        db, "store partner",
        "INSERT INTO partners AS p (tenant_id, partner_id, name, kafka_enabled, webhook_url, "
        "webhook_enabled, secret, secret_at, secret_request, revision) VALUES ($1, $2, $3, "
        "$4::boolean, $5, $6::boolean, $7, CASE WHEN $7 <> '' THEN now() END, CASE WHEN $7 <> '' "
        "THEN $8 ELSE '' END, 1) ON CONFLICT (tenant_id, partner_id) DO UPDATE SET name = "
        "excluded.name, kafka_enabled = excluded.kafka_enabled, webhook_url = "
        "excluded.webhook_url, webhook_enabled = excluded.webhook_enabled, secret = CASE WHEN "
        "$7 <> '' THEN $7 ELSE p.secret END, secret_at = CASE WHEN $7 <> '' THEN now() ELSE "
        "p.secret_at END, secret_request = CASE WHEN $7 <> '' THEN $8 ELSE p.secret_request END, "
        /* enabling a disabled endpoint (or changing its url) starts afresh */
        "webhook_state = CASE WHEN excluded.webhook_enabled AND (p.webhook_state = 3 OR "
        "p.webhook_url <> excluded.webhook_url) THEN 1 ELSE p.webhook_state END, failures = CASE "
        "WHEN excluded.webhook_enabled AND (p.webhook_state = 3 OR p.webhook_url <> "
        "excluded.webhook_url) THEN 0 ELSE p.failures END, failing_since = CASE WHEN "
        "excluded.webhook_enabled AND (p.webhook_state = 3 OR p.webhook_url <> "
        "excluded.webhook_url) THEN NULL ELSE p.failing_since END, disabled_at = CASE WHEN "
        "excluded.webhook_enabled AND (p.webhook_state = 3 OR p.webhook_url <> "
        "excluded.webhook_url) THEN NULL ELSE p.disabled_at END, next_attempt_at = CASE WHEN "
        "excluded.webhook_enabled AND (p.webhook_state = 3 OR p.webhook_url <> "
        "excluded.webhook_url) THEN now() ELSE p.next_attempt_at END, revision = p.revision + 1, "
        "updated_at = now() RETURNING revision",
        8, p2, &r);
    if (rc)
        return rc;
    int64_t revision = col_i64(r, 0, 0);
    PQclear(r);
    const char *p3[] = {t->tenant, in->partner_id, t->channels};
    rc = cm_db_exec(db, "assign partner channels",
                    "UPDATE channels SET partner_id = CASE WHEN channel_id = ANY($3::text[]) THEN "
                    "$2 ELSE '' END, revision = revision + 1, updated_at = now() WHERE tenant_id = "
                    "$1 AND ((channel_id = ANY($3::text[]) AND partner_id <> $2) OR (partner_id = "
                    "$2 AND NOT channel_id = ANY($3::text[])))",
                    3, p3, NULL);
    if (rc)
        return rc;
    return cms_store_record_request(db, t->tenant, "p", t->request_id, t->hash, in->partner_id,
                                    revision, t->principal);
}

int cms_api_partner_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__PutPartnerRequest *req,
                       const struct cms_webhook_policy *policy, int secrets)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (!cm_id_key_valid(req->request_id, CMS_ID_MAX))
        return cm_rpc_fail_field(ctx, "request_id", "required: " KEY_RULE);
    if (req->expected_revision < 0)
        return cm_rpc_fail_field(ctx, "expected_revision", "must be >= 0");
    const pb_partner_t *p = req->partner;
    if (!p)
        return cm_rpc_fail_field(ctx, "partner", "required");
    if (!valid_partner_id(p->partner_id))
        return cm_rpc_fail_field(ctx, "partner.partner_id", "required: " PARTNER_RULE);
    if (!cm_utf8_text_valid(p->name, CMS_NAME_MAX, 1))
        return cm_rpc_fail_field(ctx, "partner.name",
                                 "required: 1-128 characters, no control characters");
    if (p->n_channel_ids > CHANNELS_MAX)
        return cm_rpc_fail_field(ctx, "partner.channel_ids", "at most 1000 channels");
    for (size_t i = 0; i < p->n_channel_ids; i++) {
        const char *c = p->channel_ids[i];
        const char *bad = NULL;
        if (!cm_id_key_valid(c, CMS_ID_MAX))
            bad = "a channel id: " KEY_RULE;
        for (size_t j = 0; !bad && j < i; j++)
            if (strcmp(p->channel_ids[j], c) == 0)
                bad = cm_arena_printf(a, "repeats channel_ids[%zu]", j);
        if (bad)
            return cm_rpc_fail_field(ctx, cm_arena_printf(a, "partner.channel_ids[%zu]", i), bad);
    }
    const Commerce__Commission__V1__PartnerWebhook *w = p->webhook;
    if (w && w->url[0] && !secrets)
        return fail_not_configured(ctx);
    if (w && (w->enabled || w->url[0])) {
        char why[256];
        if (cms_webhook_url_check(policy, w->url, why, sizeof why))
            return cm_rpc_fail_field(ctx, "partner.webhook.url", why);
    }
    return 0;
}

int cms_rpc_put_partner(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__PutPartnerRequest *req = (const void *)in;
    Commerce__Commission__V1__PutPartnerResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    const cms_app *app = cm_service_app(ctx);
    if (cms_api_partner_in(ctx, req, cms_feed_policy(app->feed),
                           cms_feed_secrets_writable(app->feed)))
        return -1;
    const pb_partner_t *p = req->partner;
    const Commerce__Commission__V1__PartnerWebhook *w = p->webhook;
    cm_buf ch = {0}, canon = {0};
    cm_buf_array_begin(&ch);
    for (size_t i = 0; i < p->n_channel_ids; i++)
        cm_buf_array_text(&ch, p->channel_ids[i]);
    cm_buf_array_end(&ch);
    int kafka = p->kafka && p->kafka->enabled;
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    /* the canonical body: what makes a retry the same request */
    cm_buf_puts(&canon, cm_arena_printf(a, "partner.v1|%s|%s|%d|%d|%s|%lld|", p->partner_id,
                                        p->name, kafka, w && w->enabled, w ? w->url : "",
                                        (long long)req->expected_revision));
    cm_buf_puts(&canon, ch.p);
    if (ch.oom || canon.oom) {
        cm_buf_free(&ch);
        cm_buf_free(&canon);
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "partner");
    }
    char hash[CM_SHA256_HEX];
    cm_sha256_hex(canon.p, canon.len, hash);
    cm_buf_free(&canon);
    if (kafka) {
        /* before anything is stored: a partner with kafka on has its topic */
        char err[256];
        int rc = cms_feed_ensure_topic(app->feed, tenant, p->partner_id, err, sizeof err);
        if (rc) {
            cm_buf_free(&ch);
            cm_log_warn("could not create a partner topic", "tenant", tenant, "partner",
                        p->partner_id, "error", err, NULL);
            return cm_rpc_fail(
                ctx, GRPC_STATUS_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                cm_arena_printf(a, "the partner's topic could not be created: %s", err));
        }
    }
    put_tx t = {.tenant = tenant,
                .request_id = req->request_id,
                .hash = hash,
                .principal = principal(ctx),
                .in = p,
                .channels = ch.p,
                .feed = app->feed,
                .expected = req->expected_revision};
    int rc = cm_db_tx(cm_service_db(ctx), NULL, 3, put_in_tx, &t);
    cm_buf_free(&ch);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not store the partner");
    switch (t.verdict) {
    case PUT_REUSED:
        return cm_rpc_fail_key_reused(ctx, "request_id");
    case PUT_VERSION:
        return cm_rpc_fail_version(ctx, "expected_revision", req->expected_revision, t.current);
    case PUT_NO_CHANNEL:
        return fail_ref(ctx, 0, cm_arena_printf(a, "partner.channel_ids[%d]", t.bad),
                        cm_arena_printf(a, "partner.channel_ids[%d]: no such channel", t.bad));
    case PUT_OWNED:
        return fail_ref(ctx, 1, cm_arena_printf(a, "partner.channel_ids[%d]", t.bad),
                        cm_arena_printf(a,
                                        "partner.channel_ids[%d]: the channel belongs to another "
                                        "partner (a channel has one partner at most)",
                                        t.bad));
    default:
        break;
    }
    rc = load_partner(cm_service_db(ctx), a, tenant, p->partner_id, &resp->partner);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the partner back");
    if (t.made_secret) {
        resp->webhook_secret = cm_arena_strdup(a, t.secret);
    } else if (t.verdict == PUT_SAME) {
        /* a retry of the put that made the secret gets it again */
        const char *q[] = {tenant, p->partner_id, req->request_id};
        PGresult *r = NULL;
        if (cm_db_read(cm_service_db(ctx), "read partner secret",
                       "SELECT secret FROM partners WHERE tenant_id = $1 AND partner_id = $2 AND "
                       "secret_request = $3",
                       3, q, &r) == 0 &&
            PQntuples(r)) {
            char plain[CMS_SECRETS_PLAIN_SIZE];
            if (cms_feed_secret_open(app->feed, tenant, p->partner_id, PQgetvalue(r, 0, 0),
                                     plain) == 0)
                resp->webhook_secret = cm_arena_strdup(a, plain);
            OPENSSL_cleanse(plain, sizeof plain);
        }
        PQclear(r);
    }
    if (t.verdict == PUT_OK)
        cm_log_info("partner stored", "tenant", tenant, "partner_id", p->partner_id, "kafka",
                    kafka ? "on" : "off", "webhook", w && w->enabled ? "on" : "off", "principal",
                    principal(ctx), NULL);
    return 0;
}

/* ---- GetPartner, ListPartners ---- */

int cms_api_get_partner_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__GetPartnerRequest *req)
{
    return partner_call(ctx, NULL, req->partner_id);
}

int cms_rpc_get_partner(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__GetPartnerRequest *req = (const void *)in;
    Commerce__Commission__V1__GetPartnerResponse *resp = (void *)out;
    if (cms_api_get_partner_in(ctx, req))
        return -1;
    int rc = load_partner(cm_service_db(ctx), cm_rpc_ctx_arena(ctx), cm_rpc_ctx_tenant(ctx),
                          req->partner_id, &resp->partner);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail_not_found(ctx, "partner");
    return rc ? cm_rpc_fail_err(ctx, rc, "could not read the partner") : 0;
}

int cms_api_partners_in(cm_rpc_ctx *ctx, const Commerce__Commission__V1__ListPartnersRequest *req,
                        cms_list_in *li)
{
    memset(li, 0, sizeof *li);
    li->filters = cm_page_filters("partners");
    return cm_page_begin(ctx, req->page_size, req->page_token, 'p', li->filters, li->pos,
                         &li->after, &li->limit);
}

int cms_rpc_list_partners(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__ListPartnersRequest *req = (const void *)in;
    Commerce__Commission__V1__ListPartnersResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    cms_list_in li;
    if (cms_api_partners_in(ctx, req, &li))
        return -1;
    uint64_t fh = li.filters;
    const char *after = li.after;
    int limit = li.limit;
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit + 1);
    const char *p[] = {tenant, after ? after : "", lim};
    PGresult *r = NULL;
    int rc = cm_db_read(cm_service_db(ctx), "list partners",
                        "SELECT " PARTNER_COLS " FROM partners p WHERE p.tenant_id = $1 AND "
                        "p.partner_id > $2 ORDER BY p.partner_id LIMIT $3::int",
                        3, p, &r);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not list the partners");
    int n = PQntuples(r);
    int more = n > limit;
    if (more)
        n = limit;
    resp->partners = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->partners);
    for (int i = 0; resp->partners && i < n; i++)
        if (!(resp->partners[i] = parse_partner(a, tenant, r, i))) {
            PQclear(r);
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "partners");
        }
    PQclear(r);
    if (!resp->partners)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "partners");
    resp->n_partners = (size_t)n;
    return cm_page_next(ctx, more, 'p', fh, n ? resp->partners[n - 1]->partner_id : NULL,
                        &resp->next_page_token);
}

/* ---- RotateWebhookSecret ---- */

typedef struct rotate_tx {
    const char *tenant, *partner, *request_id, *hash, *principal;
    const cms_feed *feed;
    int64_t ttl_ms;
    char secret[CMS_SECRETS_PLAIN_SIZE];
    char stored[CMS_SECRETS_SEALED_SIZE];
    int found, same, reused;
    int64_t previous_until_ms;
} rotate_tx;

static int rotate_in_tx(cm_db *db, void *arg)
{
    rotate_tx *t = arg;
    int same = 0;
    int64_t rev = 0;
    char key[128];
    t->found = t->same = t->reused = 0;
    t->secret[0] = '\0';
    int seen = cms_store_locked_request(db, "lock partners", "commission.partners", t->tenant, "r",
                                        t->request_id, t->hash, &same, key, sizeof key, &rev);
    if (seen < 0)
        return seen;
    const char *p0[] = {t->tenant, t->partner, t->request_id};
    PGresult *r = NULL;
    if (seen) {
        t->reused = !same;
        t->same = same;
        t->found = 1;
        int rc = cm_db_exec(db, "read partner secret",
                            "SELECT secret, COALESCE((extract(epoch FROM previous_until) * "
                            "1000)::bigint, 0) FROM partners WHERE tenant_id = $1 AND partner_id = "
                            "$2 AND secret_request = $3",
                            3, p0, &r);
        if (rc)
            return rc;
        if (PQntuples(r)) {
            rc = cms_feed_secret_open(t->feed, t->tenant, t->partner, PQgetvalue(r, 0, 0),
                                      t->secret);
            t->previous_until_ms = col_i64(r, 0, 1);
        }
        PQclear(r);
        return rc;
    }
    int rc = cms_webhook_secret_new(t->secret);
    if (rc == 0)
        rc = cms_feed_secret_store(t->feed, t->tenant, t->partner, t->secret, t->stored);
    if (rc)
        return rc;
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%lld", (long long)t->ttl_ms);
    const char *p1[] = {t->tenant, t->partner, t->stored, ttl, t->request_id};
    rc = cm_db_exec(db, "rotate partner secret",
                    "UPDATE partners SET previous_secret = CASE WHEN $4::bigint > 0 THEN secret "
                    "ELSE '' END, previous_until = CASE WHEN $4::bigint > 0 AND secret <> '' THEN "
                    "now() + make_interval(secs => $4::bigint / 1000.0) END, secret = $3, "
                    "secret_at = now(), secret_request = $5, revision = revision + 1, updated_at "
                    "= now() WHERE tenant_id = $1 AND partner_id = $2 RETURNING revision, "
                    "COALESCE((extract(epoch FROM previous_until) * 1000)::bigint, 0)",
                    5, p1, &r);
    if (rc)
        return rc;
    t->found = PQntuples(r) > 0;
    if (t->found) {
        rev = col_i64(r, 0, 0);
        t->previous_until_ms = col_i64(r, 0, 1);
    }
    PQclear(r);
    if (!t->found)
        return 0;
    return cms_store_record_request(db, t->tenant, "r", t->request_id, t->hash, t->partner, rev,
                                    t->principal);
}

int cms_api_rotate_in(cm_rpc_ctx *ctx,
                      const Commerce__Commission__V1__RotateWebhookSecretRequest *req, int secrets,
                      int64_t *ttl_ms)
{
    if (partner_call(ctx, req->request_id, req->partner_id))
        return -1;
    if (!secrets)
        return fail_not_configured(ctx);
    *ttl_ms = 86400000;
    if (req->previous_secret_ttl) {
        if (cm_pb_duration_check(req->previous_secret_ttl, ttl_ms) || *ttl_ms < 0 ||
            req->previous_secret_ttl->nanos != 0 || *ttl_ms > 7LL * 86400000)
            return cm_rpc_fail_field(ctx, "previous_secret_ttl", "whole seconds from 0 to 7 days");
    }
    return 0;
}

int cms_rpc_rotate_webhook_secret(cm_rpc_ctx *ctx, const ProtobufCMessage *in,
                                  ProtobufCMessage *out)
{
    const Commerce__Commission__V1__RotateWebhookSecretRequest *req = (const void *)in;
    Commerce__Commission__V1__RotateWebhookSecretResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    const cms_app *app = cm_service_app(ctx);
    int64_t ttl_ms;
    if (cms_api_rotate_in(ctx, req, cms_feed_secrets_writable(app->feed), &ttl_ms))
        return -1;
    char body[160], hash[CM_SHA256_HEX];
    snprintf(body, sizeof body, "rotate.v1|%s|%lld", req->partner_id, (long long)ttl_ms);
    cm_sha256_hex(body, strlen(body), hash);
    rotate_tx t = {.tenant = cm_rpc_ctx_tenant(ctx),
                   .partner = req->partner_id,
                   .request_id = req->request_id,
                   .hash = hash,
                   .principal = principal(ctx),
                   .feed = app->feed,
                   .ttl_ms = ttl_ms};
    int rc = cm_db_tx(cm_service_db(ctx), NULL, 3, rotate_in_tx, &t);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not rotate the secret");
    if (t.reused)
        return cm_rpc_fail_key_reused(ctx, "request_id");
    if (!t.found)
        return cm_rpc_fail_not_found(ctx, "partner");
    resp->secret = cm_arena_strdup(a, t.secret);
    OPENSSL_cleanse(t.secret, sizeof t.secret);
    resp->previous_secret_expires_at = cm_pb_timestamp(a, t.previous_until_ms);
    if (!t.same)
        cm_log_info("partner webhook secret rotated", "tenant", t.tenant, "partner_id",
                    req->partner_id, "principal", principal(ctx), NULL);
    return resp->secret ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "secret");
}

/* ---- deliveries ---- */

#define DELIVERY_COLS                                                                              \
    "d.delivery_id, f.event_id, f.type, f.channel_id, (extract(epoch FROM f.event_time) * "        \
    "1000)::bigint, d.reason, d.delivered_at IS NOT NULL, (extract(epoch FROM d.created_at) * "    \
    "1000)::bigint, COALESCE((extract(epoch FROM d.delivered_at) * 1000)::bigint, 0), d.attempts"

static Commerce__Commission__V1__WebhookDelivery *parse_delivery(cm_arena *a, const PGresult *r,
                                                                 int row)
{
    Commerce__Commission__V1__WebhookDelivery *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__commission__v1__webhook_delivery__init(m);
    m->delivery_id = col_str(a, r, row, 0);
    m->event_id = col_str(a, r, row, 1);
    m->event_type = col_str(a, r, row, 2);
    m->channel_id = col_str(a, r, row, 3);
    m->event_time = cm_pb_timestamp(a, col_i64(r, row, 4));
    m->reason = (Commerce__Commission__V1__DeliveryReason)col_i64(r, row, 5);
    m->delivered = PQgetvalue(r, row, 6)[0] == 't';
    m->created_at = cm_pb_timestamp(a, col_i64(r, row, 7));
    m->delivered_at = cm_pb_timestamp(a, col_i64(r, row, 8));
    m->attempts = (int32_t)col_i64(r, row, 9);
    return m->delivery_id && m->event_id && m->event_type && m->channel_id ? m : NULL;
}

/* the last 10 attempts of each delivery in d[0..n) */
static int add_attempts(cm_db *db, cm_arena *a, Commerce__Commission__V1__WebhookDelivery **d,
                        size_t n)
{
    if (!n)
        return 0;
    cm_buf ids = {0};
    cm_buf_array_begin(&ids);
    for (size_t i = 0; i < n; i++)
        cm_buf_array_text(&ids, d[i]->delivery_id);
    cm_buf_array_end(&ids);
    if (ids.oom) {
        cm_buf_free(&ids);
        return CM_ENOMEM;
    }
    const char *p[] = {ids.p};
    PGresult *r = NULL;
    int rc =
        cm_db_read(db, "read webhook attempts",
                   "SELECT x.delivery_id, x.attempt, (extract(epoch FROM x.at) * "
                   "1000)::bigint, x.http_status, x.latency_us, x.error FROM unnest($1::bigint[]) "
                   "AS u(id), LATERAL (SELECT * FROM webhook_attempts w WHERE w.delivery_id = "
                   "u.id ORDER BY w.attempt DESC LIMIT 10) x ORDER BY x.delivery_id, x.attempt "
                   "DESC",
                   1, p, &r);
    cm_buf_free(&ids);
    if (rc)
        return rc;
    int rows = PQntuples(r);
    for (size_t i = 0; i < n; i++) {
        size_t k = 0;
        for (int j = 0; j < rows; j++)
            k += strcmp(PQgetvalue(r, j, 0), d[i]->delivery_id) == 0;
        if (!k)
            continue;
        d[i]->recent_attempts = cm_arena_calloc(a, k, sizeof *d[i]->recent_attempts);
        if (!d[i]->recent_attempts)
            break;
        for (int j = 0; j < rows; j++) {
            if (strcmp(PQgetvalue(r, j, 0), d[i]->delivery_id) != 0)
                continue;
            Commerce__Commission__V1__DeliveryAttempt *x = cm_arena_calloc(a, 1, sizeof *x);
            Google__Protobuf__Duration *lat = cm_arena_calloc(a, 1, sizeof *lat);
            if (!x || !lat)
                break;
            commerce__commission__v1__delivery_attempt__init(x);
            google__protobuf__duration__init(lat);
            int64_t us = col_i64(r, j, 4);
            lat->seconds = us / 1000000;
            lat->nanos = (int32_t)(us % 1000000) * 1000;
            x->attempt = (int32_t)col_i64(r, j, 1);
            x->at = cm_pb_timestamp(a, col_i64(r, j, 2));
            x->http_status = (int32_t)col_i64(r, j, 3);
            x->latency = lat;
            x->error = col_str(a, r, j, 5);
            d[i]->recent_attempts[d[i]->n_recent_attempts++] = x;
        }
    }
    PQclear(r);
    return 0;
}

static int partner_exists(cm_db *db, const char *tenant, const char *partner, int *hook, int *kafka)
{
    const char *p[] = {tenant, partner};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "read partner delivery",
                        "SELECT webhook_url <> '' AND webhook_enabled, kafka_enabled FROM partners "
                        "WHERE tenant_id = $1 AND partner_id = $2",
                        2, p, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    if (n) {
        if (hook)
            *hook = PQgetvalue(r, 0, 0)[0] == 't';
        if (kafka)
            *kafka = PQgetvalue(r, 0, 1)[0] == 't';
    }
    PQclear(r);
    return n ? 0 : CM_ENOTFOUND;
}

int cms_api_deliveries_in(cm_rpc_ctx *ctx,
                          const Commerce__Commission__V1__ListWebhookDeliveriesRequest *req,
                          cms_list_in *li)
{
    memset(li, 0, sizeof *li);
    if (partner_call(ctx, NULL, req->partner_id))
        return -1;
    char f[CMS_PARTNER_ID_MAX + 16];
    snprintf(f, sizeof f, "%s|%d", req->partner_id, (int)req->pending_only);
    li->filters = cm_page_filters(f);
    if (cm_page_begin(ctx, req->page_size, req->page_token, 'w', li->filters, li->pos, &li->after,
                      &li->limit))
        return -1;
    if (li->after && strspn(li->after, "0123456789") != strlen(li->after))
        return cm_page_bad_token(ctx);
    return 0;
}

int cms_rpc_list_webhook_deliveries(cm_rpc_ctx *ctx, const ProtobufCMessage *in,
                                    ProtobufCMessage *out)
{
    const Commerce__Commission__V1__ListWebhookDeliveriesRequest *req = (const void *)in;
    Commerce__Commission__V1__ListWebhookDeliveriesResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    cms_list_in li;
    if (cms_api_deliveries_in(ctx, req, &li))
        return -1;
    uint64_t fh = li.filters;
    const char *after = li.after;
    int limit = li.limit;
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    cm_db *db = cm_service_db(ctx);
    int rc = partner_exists(db, tenant, req->partner_id, NULL, NULL);
    if (rc == CM_ENOTFOUND)
        return cm_rpc_fail_not_found(ctx, "partner");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the partner");
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit + 1);
    const char *p[] = {tenant, req->partner_id, after ? after : "", req->pending_only ? "t" : "f",
                       lim};
    PGresult *r = NULL;
    rc = cm_db_read(db, "list webhook deliveries",
                    "SELECT " DELIVERY_COLS " FROM webhook_deliveries d JOIN feed_events f ON "
                    "f.seq = d.seq WHERE d.tenant_id = $1 AND d.partner_id = $2 AND ($3 = '' OR "
                    "d.delivery_id < $3::bigint) AND (NOT $4::boolean OR d.delivered_at IS NULL) "
                    "ORDER BY d.delivery_id DESC LIMIT $5::int",
                    5, p, &r);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not list the deliveries");
    int n = PQntuples(r);
    int more = n > limit;
    if (more)
        n = limit;
    resp->deliveries = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->deliveries);
    for (int i = 0; resp->deliveries && i < n; i++)
        if (!(resp->deliveries[i] = parse_delivery(a, r, i))) {
            PQclear(r);
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "deliveries");
        }
    PQclear(r);
    if (!resp->deliveries)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "deliveries");
    resp->n_deliveries = (size_t)n;
    rc = add_attempts(db, a, resp->deliveries, resp->n_deliveries);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the attempts");
    return cm_page_next(ctx, more, 'w', fh, n ? resp->deliveries[n - 1]->delivery_id : NULL,
                        &resp->next_page_token);
}

/* ---- RedeliverWebhookEvent, ReplayPartnerEvents ---- */

enum { Q_OK, Q_SAME, Q_REUSED, Q_NO_PARTNER, Q_NO_TARGET, Q_NO_EVENT, Q_NO_CHANNEL, Q_TOO_MANY };

typedef struct queue_tx {
    const char *tenant, *partner, *request_id, *hash, *principal;
    /* redeliver: event_id; replay: the rest */
    const char *event_id;
    const char *channel, *from, *to; /* ms */
    int target;                      /* 1 kafka, 2 webhook */
    int verdict;
    char key[128]; /* delivery id (redeliver) or count (replay) */
} queue_tx;

static int queue_start(cm_db *db, queue_tx *t, const char *kind, int *hook, int *kafka)
{
    int same = 0;
    int64_t rev = 0;
    t->verdict = Q_OK;
    int seen =
        cms_store_locked_request(db, "lock partner queue", "commission.partner-queue", t->tenant,
                                 kind, t->request_id, t->hash, &same, t->key, sizeof t->key, &rev);
    if (seen < 0)
        return seen;
    if (seen) {
        t->verdict = same ? Q_SAME : Q_REUSED;
        return 1;
    }
    int rc = partner_exists(db, t->tenant, t->partner, hook, kafka);
    if (rc == CM_ENOTFOUND) {
        t->verdict = Q_NO_PARTNER;
        return 1;
    }
    return rc;
}

static int redeliver_in_tx(cm_db *db, void *arg)
{
    queue_tx *t = arg;
    int hook = 0;
    int rc = queue_start(db, t, "w", &hook, NULL);
    if (rc)
        return rc < 0 ? rc : 0;
    if (!hook) {
        t->verdict = Q_NO_TARGET;
        return 0;
    }
    const char *p[] = {t->tenant, t->partner, t->event_id};
    PGresult *r = NULL;
    rc = cm_db_exec(db, "redeliver a partner event",
                    "INSERT INTO webhook_deliveries (tenant_id, partner_id, seq, reason) SELECT "
                    "tenant_id, partner_id, seq, 3 FROM feed_events WHERE tenant_id = $1 AND "
                    "partner_id = $2 AND event_id = $3::uuid RETURNING delivery_id",
                    3, p, &r);
    if (rc)
        return rc;
    if (!PQntuples(r)) {
        PQclear(r);
        t->verdict = Q_NO_EVENT;
        return 0;
    }
    snprintf(t->key, sizeof t->key, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return cms_store_record_request(db, t->tenant, "w", t->request_id, t->hash, t->key, 1,
                                    t->principal);
}

static int queue_fail(cm_rpc_ctx *ctx, const queue_tx *t)
{
    switch (t->verdict) {
    case Q_REUSED:
        return cm_rpc_fail_key_reused(ctx, "request_id");
    case Q_NO_PARTNER:
        return cm_rpc_fail_not_found(ctx, "partner");
    case Q_NO_EVENT:
        return cm_rpc_fail_not_found(ctx, "event of this partner");
    case Q_NO_TARGET:
        return fail_ref(ctx, 1, t->target == 1 ? "target" : "partner_id",
                        t->target == 1 ? "the partner does not receive by Kafka"
                                       : "the partner has no enabled webhook");
    case Q_NO_CHANNEL:
        return fail_ref(ctx, 0, "channel_id", "channel_id: not one of the partner's channels");
    case Q_TOO_MANY:
        return cm_rpc_fail_field(ctx, "range",
                                 "more than 1,000,000 events: replay a shorter range");
    default:
        return 0;
    }
}

int cms_api_redeliver_in(cm_rpc_ctx *ctx,
                         const Commerce__Commission__V1__RedeliverWebhookEventRequest *req)
{
    if (partner_call(ctx, req->request_id, req->partner_id))
        return -1;
    if (!cm_id_is_uuid(req->event_id))
        return cm_rpc_fail_field(ctx, "event_id", "required: a UUID");
    return 0;
}

int cms_rpc_redeliver_webhook_event(cm_rpc_ctx *ctx, const ProtobufCMessage *in,
                                    ProtobufCMessage *out)
{
    const Commerce__Commission__V1__RedeliverWebhookEventRequest *req = (const void *)in;
    Commerce__Commission__V1__RedeliverWebhookEventResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    if (cms_api_redeliver_in(ctx, req))
        return -1;
    char body[200], hash[CM_SHA256_HEX];
    snprintf(body, sizeof body, "redeliver.v1|%s|%s", req->partner_id, req->event_id);
    cm_sha256_hex(body, strlen(body), hash);
    queue_tx t = {.tenant = cm_rpc_ctx_tenant(ctx),
                  .partner = req->partner_id,
                  .request_id = req->request_id,
                  .hash = hash,
                  .principal = principal(ctx),
                  .event_id = req->event_id,
                  .target = 2};
    cm_db *db = cm_service_db(ctx);
    int rc = cm_db_tx(db, NULL, 3, redeliver_in_tx, &t);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not queue the delivery");
    if (t.verdict != Q_OK && t.verdict != Q_SAME)
        return queue_fail(ctx, &t);
    const char *p[] = {t.tenant, t.key};
    PGresult *r = NULL;
    rc = cm_db_read(db, "read webhook delivery",
                    "SELECT " DELIVERY_COLS " FROM webhook_deliveries d JOIN feed_events f ON "
                    "f.seq = d.seq WHERE d.tenant_id = $1 AND d.delivery_id = $2::bigint",
                    2, p, &r);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the delivery");
    resp->delivery = PQntuples(r) ? parse_delivery(a, r, 0) : NULL;
    PQclear(r);
    if (!resp->delivery)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "delivery");
    rc = add_attempts(db, a, &resp->delivery, 1);
    return rc ? cm_rpc_fail_err(ctx, rc, "could not read the attempts") : 0;
}

#define REPLAY_WHERE                                                                               \
    "tenant_id = $1 AND partner_id = $2 AND ($3 = '' OR channel_id = $3) AND event_time >= "       \
    "to_timestamp($4::bigint / 1000.0) AND event_time < to_timestamp($5::bigint / 1000.0)"

static int replay_in_tx(cm_db *db, void *arg)
{
    queue_tx *t = arg;
    int hook = 0, kafka = 0;
    int rc = queue_start(db, t, "y", &hook, &kafka);
    if (rc)
        return rc < 0 ? rc : 0;
    if ((t->target == 1 && !kafka) || (t->target == 2 && !hook)) {
        t->verdict = Q_NO_TARGET;
        return 0;
    }
    PGresult *r = NULL;
    if (*t->channel) {
        const char *p[] = {t->tenant, t->partner, t->channel};
        rc = cm_db_exec(db, "check replay channel",
                        "SELECT EXISTS (SELECT 1 FROM channels WHERE tenant_id = $1 AND channel_id "
                        "= $3 AND partner_id = $2) OR EXISTS (SELECT 1 FROM feed_events WHERE "
                        "tenant_id = $1 AND partner_id = $2 AND channel_id = $3)",
                        3, p, &r);
        if (rc)
            return rc;
        int ok = PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (!ok) {
            t->verdict = Q_NO_CHANNEL;
            return 0;
        }
    }
    const char *p[] = {t->tenant, t->partner, t->channel, t->from, t->to};
    rc = cm_db_exec(db, "count replay",
                    "SELECT count(*) FROM (SELECT 1 FROM feed_events WHERE " REPLAY_WHERE
                    " LIMIT 1000001) x",
                    5, p, &r);
    if (rc)
        return rc;
    int64_t n = col_i64(r, 0, 0);
    PQclear(r);
    if (n > REPLAY_MAX) {
        t->verdict = Q_TOO_MANY;
        return 0;
    }
    if (t->target == 2)
        rc = cm_db_exec(
            db, "replay to the webhook",
            "INSERT INTO webhook_deliveries (tenant_id, partner_id, seq, reason) SELECT "
            "tenant_id, partner_id, seq, 2 FROM feed_events WHERE " REPLAY_WHERE " ORDER BY seq",
            5, p, NULL);
    else {
        char topic[256];
        cms_feed_topic(t->tenant, t->partner, topic);
        const char *q[] = {t->tenant, t->partner, t->channel, t->from, t->to, topic};
        /* the same bodies (ids) again, in their order, through the outbox:
         * new outbox ids, the cloudevent ids unchanged */
        rc = cm_db_exec(db, "replay to kafka",
                        "INSERT INTO outbox (event_id, tenant_id, topic, key, type, source, "
                        "content_type, payload, occurred_at) SELECT gen_random_uuid(), tenant_id, "
                        "$6, channel_id, type, '/commerce/commission', "
                        "'" CM_CLOUDEVENTS_JSON_CONTENT_TYPE "', convert_to(body, 'UTF8'), "
                        "event_time FROM feed_events WHERE " REPLAY_WHERE " ORDER BY seq",
                        6, q, NULL);
        if (!rc)
            rc = cm_outbox_wake_on_commit(db);
    }
    if (rc)
        return rc;
    snprintf(t->key, sizeof t->key, "%lld", (long long)n);
    return cms_store_record_request(db, t->tenant, "y", t->request_id, t->hash, t->key, 1,
                                    t->principal);
}

int cms_api_replay_in(cm_rpc_ctx *ctx,
                      const Commerce__Commission__V1__ReplayPartnerEventsRequest *req,
                      int64_t *from, int64_t *to)
{
    if (partner_call(ctx, req->request_id, req->partner_id))
        return -1;
    if (*req->channel_id && !cm_id_key_valid(req->channel_id, CMS_ID_MAX))
        return cm_rpc_fail_field(ctx, "channel_id", KEY_RULE ", or empty for all");
    int target = (int)req->target;
    if (target != 1 && target != 2)
        return cm_rpc_fail_field(ctx, "target", "required: KAFKA or WEBHOOK");
    if (!req->range || !req->range->start_at || !req->range->end_at)
        return cm_rpc_fail_field(ctx, "range", "required: start_at and end_at");
    if (cm_pb_timestamp_check(req->range->start_at, from))
        return cm_rpc_fail_field(ctx, "range.start_at", "not a valid timestamp");
    if (cm_pb_timestamp_check(req->range->end_at, to))
        return cm_rpc_fail_field(ctx, "range.end_at", "not a valid timestamp");
    if (*to <= *from)
        return cm_rpc_fail_field(ctx, "range.end_at", "must be after start_at");
    return 0;
}

int cms_rpc_replay_partner_events(cm_rpc_ctx *ctx, const ProtobufCMessage *in,
                                  ProtobufCMessage *out)
{
    const Commerce__Commission__V1__ReplayPartnerEventsRequest *req = (const void *)in;
    Commerce__Commission__V1__ReplayPartnerEventsResponse *resp = (void *)out;
    int64_t from = 0, to = 0;
    if (cms_api_replay_in(ctx, req, &from, &to))
        return -1;
    int target = (int)req->target;
    char s_from[24], s_to[24], body[256], hash[CM_SHA256_HEX];
    snprintf(s_from, sizeof s_from, "%lld", (long long)from);
    snprintf(s_to, sizeof s_to, "%lld", (long long)to);
    snprintf(body, sizeof body, "replay.v1|%s|%s|%s|%s|%d", req->partner_id, req->channel_id,
             s_from, s_to, target);
    cm_sha256_hex(body, strlen(body), hash);
    queue_tx t = {.tenant = cm_rpc_ctx_tenant(ctx),
                  .partner = req->partner_id,
                  .request_id = req->request_id,
                  .hash = hash,
                  .principal = principal(ctx),
                  .channel = req->channel_id,
                  .from = s_from,
                  .to = s_to,
                  .target = target};
    int rc = cm_db_tx(cm_service_db(ctx), NULL, 3, replay_in_tx, &t);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not queue the replay");
    if (t.verdict != Q_OK && t.verdict != Q_SAME)
        return queue_fail(ctx, &t);
    resp->events = strtoll(t.key, NULL, 10);
    if (t.verdict == Q_OK)
        cm_log_info("partner events replayed", "tenant", t.tenant, "partner_id", req->partner_id,
                    "channel_id", req->channel_id, "target", target == 1 ? "kafka" : "webhook",
                    "events", t.key, "principal", principal(ctx), NULL);
    return 0;
}
