/* commission's sql for the api: see cms_store.h; the design in README.md */
#include "cms_store.h"

#include "cm_buf.h"
#include "cm_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int64_t i64(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static void copy(char *dst, size_t cap, const PGresult *r, int row, int col)
{
    snprintf(dst, cap, "%s", PQgetvalue(r, row, col));
}

/* buffers for num() hold any long long (20 digits, a sign, the NUL): gcc
 * -O2 checks the width of the value, not the enum it came from */
static const char *num(char *buf, size_t cap, long long v)
{
    snprintf(buf, cap, "%lld", v);
    return buf;
}

int cms_store_zone_known(cm_db *db, const char *tz)
{
    const char *p[] = {tz};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "check time zone", "SELECT 1 FROM pg_timezone_names WHERE name = $1", 1,
                        p, &r);
    if (rc)
        return rc;
    int known = PQntuples(r) > 0;
    PQclear(r);
    return known;
}

/* a read that must find one row: CM_ENOTFOUND when it finds none */
static int read_one(cm_db *db, const char *what, const char *sql, int n, const char *const *p,
                    PGresult **r)
{
    int rc = cm_db_read(db, what, sql, n, p, r);
    if (rc == 0 && PQntuples(*r) == 0) {
        PQclear(*r);
        *r = NULL;
        return CM_ENOTFOUND;
    }
    return rc;
}

/* the idempotency record of a put: 1 seen (same or not in *same), 0 not */
static int seen_request(cm_db *db, const char *tenant, const char *kind, const char *request_id,
                        const char *hash, int *same, char *key, size_t keycap, int64_t *revision)
{
    const char *p[] = {tenant, kind, request_id};
    PGresult *r = NULL;
    int rc = cm_db_exec(db, "read put request",
                        "SELECT body_hash, key, revision FROM put_requests WHERE tenant_id = $1 "
                        "AND kind = $2::\"char\" AND request_id = $3",
                        3, p, &r);
    if (rc)
        return rc;
    int seen = PQntuples(r) > 0;
    if (seen) {
        *same = strcmp(PQgetvalue(r, 0, 0), hash) == 0;
        copy(key, keycap, r, 0, 1);
        *revision = i64(r, 0, 2);
    }
    PQclear(r);
    return seen;
}

/* a put's start: takes the transaction lock of the tenant's scope (one
 * writer at a time, so the checks and the idempotency record hold under
 * it; the key is hashtext('<scope>:<tenant>')), then seen_request */
int cms_store_locked_request(cm_db *db, const char *what, const char *scope, const char *tenant,
                             const char *kind, const char *request_id, const char *hash, int *same,
                             char *key, size_t keycap, int64_t *revision)
{
    const char *k[] = {scope, tenant};
    int rc =
        cm_db_exec(db, what, "SELECT pg_advisory_xact_lock(hashtext($1 || ':' || $2))", 2, k, NULL);
    if (rc)
        return rc;
    return seen_request(db, tenant, kind, request_id, hash, same, key, keycap, revision);
}

int cms_store_record_request(cm_db *db, const char *tenant, const char *kind,
                             const char *request_id, const char *hash, const char *key,
                             int64_t revision, const char *principal)
{
    char rev[24];
    const char *p[] = {tenant,   kind, request_id, hash, key, num(rev, sizeof rev, revision),
                       principal};
    return cm_db_exec(db, "record put request",
                      "INSERT INTO put_requests (tenant_id, kind, request_id, body_hash, key, "
                      "revision, principal) VALUES ($1, $2::\"char\", $3, $4, $5, $6, $7)",
                      7, p, NULL);
}

/* ---- channels ---- */

#define CHANNEL_COLS                                                                               \
    "channel_id, name, type, state, parent_id, override_bps, schedule_id, partner_id, revision, "  \
    "(extract(epoch FROM created_at) * 1000)::bigint, (extract(epoch FROM updated_at) * "          \
    "1000)::bigint"

static void parse_channel(const PGresult *r, int row, cms_channel *c)
{
    memset(c, 0, sizeof *c);
    copy(c->id, sizeof c->id, r, row, 0);
    copy(c->name, sizeof c->name, r, row, 1);
    c->type = (int)i64(r, row, 2);
    c->state = (int)i64(r, row, 3);
    copy(c->parent, sizeof c->parent, r, row, 4);
    c->override_bps = i64(r, row, 5);
    copy(c->schedule_id, sizeof c->schedule_id, r, row, 6);
    copy(c->partner, sizeof c->partner, r, row, 7);
    c->revision = i64(r, row, 8);
    c->created_ms = i64(r, row, 9);
    c->updated_ms = i64(r, row, 10);
}

int cms_store_get_channel(cm_db *db, const char *tenant, const char *id, cms_channel *out)
{
    const char *p[] = {tenant, id};
    PGresult *r = NULL;
    int rc = read_one(
        db, "get channel",
        "SELECT " CHANNEL_COLS " FROM channels WHERE tenant_id = $1 AND channel_id = $2", 2, p, &r);
    if (rc)
        return rc;
    parse_channel(r, 0, out);
    PQclear(r);
    return 0;
}

typedef struct channel_tx {
    const char *tenant, *request_id, *hash, *principal;
    const cms_channel *in;
    int64_t expected;
    long long quota;
    cms_channel *out;
    int verdict;
    const char *what;
} channel_tx;

static int put_channel_fn(cm_db *db, void *arg)
{
    channel_tx *t = arg;
    const cms_channel *c = t->in;
    /* one writer of a tenant's channel tree at a time: the two-level rule
     * and the idempotency check hold under it */
    int rc = 0;
    char key[CMS_ID_MAX + 1];
    int64_t rev = 0;
    int same = 0;
    int seen = cms_store_locked_request(db, "lock channels", "commission.channels", t->tenant, "c",
                                        t->request_id, t->hash, &same, key, sizeof key, &rev);
    if (seen < 0)
        return seen;
    if (seen) {
        t->verdict = same ? CMS_SAME : CMS_KEY_REUSED;
        return same ? cms_store_get_channel(db, t->tenant, key, t->out) : 0;
    }
    rc = cms_store_get_channel(db, t->tenant, c->id, t->out);
    if (rc && rc != CM_ENOTFOUND)
        return rc;
    int64_t current = rc == 0 ? t->out->revision : 0;
    if (t->expected > 0 && t->expected != current) {
        if (current == 0)
            memset(t->out, 0, sizeof *t->out);
        t->verdict = CMS_VERSION;
        return 0;
    }
    if (current == 0) {
        /* a new channel: the tenant's row of quota_usage, which the
         * insert's trigger adds it to (README: quota channels) */
        const char *pt[] = {t->tenant};
        PGresult *cr = NULL;
        rc = cm_db_exec(db, "lock channel quota",
                        "INSERT INTO quota_usage AS u (tenant_id, quota, used) VALUES ($1, "
                        "'channels', 0) ON CONFLICT (tenant_id, quota) DO UPDATE SET used = u.used "
                        "RETURNING used",
                        1, pt, &cr);
        if (rc)
            return rc;
        long long have = i64(cr, 0, 0);
        PQclear(cr);
        if (have >= t->quota) {
            memset(t->out, 0, sizeof *t->out);
            t->verdict = CMS_QUOTA;
            return 0;
        }
    }
    /* the references: the schedule exists; the parent exists and has no
     * parent; a channel that is a parent gets none */
    const char *q[] = {t->tenant, c->schedule_id, c->parent, c->id};
    PGresult *r = NULL;
    rc = cm_db_exec(
        db, "check channel references",
        "SELECT $2 = '' OR EXISTS (SELECT 1 FROM tier_schedules WHERE tenant_id = $1 AND "
        "schedule_id = $2), (SELECT parent_id FROM channels WHERE tenant_id = $1 AND channel_id = "
        "$3), EXISTS (SELECT 1 FROM channels WHERE tenant_id = $1 AND parent_id = $4)",
        4, q, &r);
    if (rc)
        return rc;
    int sched_ok = PQgetvalue(r, 0, 0)[0] == 't';
    int parent_missing = PQgetisnull(r, 0, 1);
    int parent_has_parent = !parent_missing && PQgetvalue(r, 0, 1)[0] != '\0';
    int is_parent = PQgetvalue(r, 0, 2)[0] == 't';
    PQclear(r);
    if (!sched_ok) {
        t->verdict = CMS_NO_REF;
        t->what = "channel.tier_schedule_id";
        return 0;
    }
    if (c->parent[0] && parent_missing) {
        t->verdict = CMS_NO_REF;
        t->what = "channel.parent_channel_id";
        return 0;
    }
    if (c->parent[0] && (parent_has_parent || is_parent)) {
        t->verdict = CMS_LEVELS;
        t->what = "channel.parent_channel_id";
        return 0;
    }
    char ty[24], st[24], bps[24];
    const char *p[] = {t->tenant,
                       c->id,
                       c->name,
                       num(ty, sizeof ty, c->type),
                       num(st, sizeof st, c->state),
                       c->parent,
                       num(bps, sizeof bps, c->override_bps),
                       c->schedule_id,
                       c->partner};
    rc = cm_db_exec(db, "put channel",
                    "INSERT INTO channels (tenant_id, channel_id, name, type, state, parent_id, "
                    "override_bps, schedule_id, partner_id, revision) VALUES ($1, $2, $3, $4, $5, "
                    "$6, $7, $8, $9, 1) ON CONFLICT (tenant_id, channel_id) DO UPDATE SET name = "
                    "$3, type = $4, state = $5, parent_id = $6, override_bps = $7, schedule_id = "
                    "$8, partner_id = $9, revision = channels.revision + 1, updated_at = now() "
                    "RETURNING " CHANNEL_COLS,
                    9, p, &r);
    if (rc)
        return rc;
    parse_channel(r, 0, t->out);
    PQclear(r);
    t->verdict = CMS_OK;
    return cms_store_record_request(db, t->tenant, "c", t->request_id, t->hash, c->id,
                                    t->out->revision, t->principal);
}

int cms_store_put_channel(cm_db *db, const char *tenant, const char *request_id, const char *hash,
                          const cms_channel *in, int64_t expected_revision, const char *principal,
                          long long quota, cms_channel *out, int *verdict, const char **what)
{
    channel_tx t = {.tenant = tenant,
                    .request_id = request_id,
                    .hash = hash,
                    .principal = principal,
                    .in = in,
                    .expected = expected_revision,
                    .quota = quota,
                    .out = out};
    int rc = cm_db_tx(db, NULL, 3, put_channel_fn, &t);
    *verdict = t.verdict;
    *what = t.what;
    return rc;
}

int cms_store_list_channels(cm_db *db, const char *tenant, const char *only, unsigned states,
                            const char *schedule, const char *after_id, int limit, cms_channel *out,
                            int *n)
{
    char mask[16], lim[16];
    const char *p[] = {tenant,   num(mask, sizeof mask, states), schedule,
                       after_id, num(lim, sizeof lim, limit),    only};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "list channels",
                        "SELECT " CHANNEL_COLS " FROM channels WHERE tenant_id = $1 AND ($2::int = "
                        "0 OR ($2::int >> state) & 1 = 1) AND ($3 = '' OR schedule_id = $3) AND "
                        "($6::text IS NULL OR channel_id = $6) AND channel_id > $4 ORDER BY "
                        "channel_id LIMIT $5",
                        6, p, &r);
    if (rc)
        return rc;
    *n = PQntuples(r);
    for (int i = 0; i < *n; i++)
        parse_channel(r, i, &out[i]);
    PQclear(r);
    return 0;
}

/* ---- schedules ---- */

void cms_store_parse_schedule(const PGresult *r, int row, int col, cms_schedule_row *o)
{
    memset(o, 0, sizeof *o);
    copy(o->id, sizeof o->id, r, row, col + 0);
    copy(o->name, sizeof o->name, r, row, col + 1);
    o->period = (int)i64(r, row, col + 2);
    copy(o->tz, sizeof o->tz, r, row, col + 3);
    copy(o->s.currency, sizeof o->s.currency, r, row, col + 4);
    o->s.mode = (int)i64(r, row, col + 5);
    int64_t from[CMS_TIERS_MAX], bps[CMS_TIERS_MAX], types[CMS_TYPES_MAX];
    o->s.n = cm_db_parse_ints(PQgetvalue(r, row, col + 6), from, CMS_TIERS_MAX);
    cm_db_parse_ints(PQgetvalue(r, row, col + 7), bps, CMS_TIERS_MAX);
    for (size_t i = 0; i < o->s.n; i++)
        o->s.t[i] = (cms_tier){.from_sales = from[i], .rate_bps = bps[i]};
    o->ntypes = cm_db_parse_ints(PQgetvalue(r, row, col + 8), types, CMS_TYPES_MAX);
    for (size_t i = 0; i < o->ntypes; i++)
        o->types[i] = (int)types[i];
    o->payer = (int)i64(r, row, col + 9);
    o->min_payout = i64(r, row, col + 10);
    o->revision = i64(r, row, col + 11);
    o->effective_ms = i64(r, row, col + 12);
}

int cms_store_get_schedule(cm_db *db, const char *tenant, const char *id, int64_t revision,
                           cms_schedule_row *out)
{
    char rev[24];
    const char *p[] = {tenant, id, num(rev, sizeof rev, revision)};
    PGresult *r = NULL;
    int rc = read_one(db, "get tier schedule",
                      "SELECT " CMS_SCHEDULE_COLS " FROM tier_schedules s WHERE s.tenant_id = $1 "
                      "AND s.schedule_id = $2 AND ($3::bigint = 0 OR s.revision = $3::bigint) "
                      "ORDER BY s.revision DESC LIMIT 1",
                      3, p, &r);
    if (rc)
        return rc;
    cms_store_parse_schedule(r, 0, 0, out);
    PQclear(r);
    return 0;
}

int cms_store_list_schedules(cm_db *db, const char *tenant, const char *after_id, int limit,
                             cms_schedule_row *out, int *n)
{
    char lim[16];
    const char *p[] = {tenant, after_id, num(lim, sizeof lim, limit)};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "list tier schedules",
                        "SELECT DISTINCT ON (s.schedule_id) " CMS_SCHEDULE_COLS
                        " FROM tier_schedules s WHERE s.tenant_id = $1 AND s.schedule_id > $2 "
                        "ORDER BY s.schedule_id, s.revision DESC LIMIT $3",
                        3, p, &r);
    if (rc)
        return rc;
    *n = PQntuples(r);
    for (int i = 0; i < *n; i++)
        cms_store_parse_schedule(r, i, 0, &out[i]);
    PQclear(r);
    return 0;
}

typedef struct schedule_tx {
    const char *tenant, *request_id, *hash, *principal;
    const cms_schedule_row *in;
    int64_t expected;
    cms_schedule_row *out;
    int verdict;
} schedule_tx;

static int put_schedule_fn(cm_db *db, void *arg)
{
    schedule_tx *t = arg;
    const cms_schedule_row *s = t->in;
    int rc = 0;
    char key[CMS_ID_MAX + 1];
    int64_t rev = 0;
    int same = 0;
    int seen =
        cms_store_locked_request(db, "lock tier schedules", "commission.schedules", t->tenant, "s",
                                 t->request_id, t->hash, &same, key, sizeof key, &rev);
    if (seen < 0)
        return seen;
    if (seen) {
        t->verdict = same ? CMS_SAME : CMS_KEY_REUSED;
        return same ? cms_store_get_schedule(db, t->tenant, key, rev, t->out) : 0;
    }
    rc = cms_store_get_schedule(db, t->tenant, s->id, 0, t->out);
    if (rc && rc != CM_ENOTFOUND)
        return rc;
    int64_t current = rc == 0 ? t->out->revision : 0;
    if (t->expected > 0 && t->expected != current) {
        if (current == 0)
            memset(t->out, 0, sizeof *t->out);
        t->verdict = CMS_VERSION;
        return 0;
    }
    if (current && (strcmp(t->out->s.currency, s->s.currency) != 0 || t->out->period != s->period ||
                    strcmp(t->out->tz, s->tz) != 0)) {
        /* what periods and amounts mean may not change under their users */
        const char *q[] = {t->tenant, s->id};
        PGresult *r = NULL;
        rc = cm_db_exec(db, "schedule in use",
                        "SELECT EXISTS (SELECT 1 FROM channels WHERE tenant_id = $1 AND "
                        "schedule_id = $2) OR EXISTS (SELECT 1 FROM channel_periods WHERE "
                        "tenant_id = $1 AND schedule_id = $2)",
                        2, q, &r);
        if (rc)
            return rc;
        int used = PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (used) {
            t->verdict = CMS_LEVELS;
            return 0;
        }
    }
    cm_buf from = {0}, bps = {0}, types = {0};
    cm_buf_array_begin(&from);
    cm_buf_array_begin(&bps);
    cm_buf_array_begin(&types);
    for (size_t i = 0; i < s->s.n; i++) {
        cm_buf_array_int(&from, s->s.t[i].from_sales);
        cm_buf_array_int(&bps, s->s.t[i].rate_bps);
    }
    for (size_t i = 0; i < s->ntypes; i++)
        cm_buf_array_int(&types, s->types[i]);
    cm_buf_array_end(&from);
    cm_buf_array_end(&bps);
    cm_buf_array_end(&types);
    char rv[24], per[24], mode[24], payer[24], minp[24];
    const char *p[] = {t->tenant,
                       s->id,
                       num(rv, sizeof rv, current + 1),
                       s->name,
                       s->s.currency,
                       num(per, sizeof per, s->period),
                       s->tz,
                       num(mode, sizeof mode, s->s.mode),
                       from.p,
                       bps.p,
                       types.p,
                       num(payer, sizeof payer, s->payer),
                       num(minp, sizeof minp, s->min_payout),
                       t->principal};
    PGresult *r = NULL;
    rc = from.oom || bps.oom || types.oom
             ? CM_ENOMEM
             : cm_db_exec(db, "put tier schedule",
                          "INSERT INTO tier_schedules AS s (tenant_id, schedule_id, revision, "
                          "effective_from, name, currency, period, time_zone, mode, tier_from, "
                          "tier_bps, channel_types, payer, min_payout, created_by) VALUES ($1, $2, "
                          "$3, clock_timestamp(), $4, $5, $6, $7, $8, $9::bigint[], $10::int[], "
                          "$11::smallint[], $12, $13, $14) RETURNING " CMS_SCHEDULE_COLS,
                          14, p, &r);
    cm_buf_free(&from);
    cm_buf_free(&bps);
    cm_buf_free(&types);
    if (rc)
        return rc;
    cms_store_parse_schedule(r, 0, 0, t->out);
    PQclear(r);
    t->verdict = CMS_OK;
    return cms_store_record_request(db, t->tenant, "s", t->request_id, t->hash, s->id,
                                    t->out->revision, t->principal);
}

int cms_store_put_schedule(cm_db *db, const char *tenant, const char *request_id, const char *hash,
                           const cms_schedule_row *in, int64_t expected_revision,
                           const char *principal, cms_schedule_row *out, int *verdict)
{
    schedule_tx t = {.tenant = tenant,
                     .request_id = request_id,
                     .hash = hash,
                     .principal = principal,
                     .in = in,
                     .expected = expected_revision,
                     .out = out};
    int rc = cm_db_tx(db, NULL, 3, put_schedule_fn, &t);
    *verdict = t.verdict;
    return rc;
}

/* ---- commissions and adjustments ---- */

void cms_store_parse_commission(const PGresult *r, int row, cms_commission *c)
{
    memset(c, 0, sizeof *c);
    copy(c->id, sizeof c->id, r, row, 0);
    copy(c->channel, sizeof c->channel, r, row, 1);
    copy(c->order_id, sizeof c->order_id, r, row, 2);
    copy(c->merchant, sizeof c->merchant, r, row, 3);
    copy(c->currency, sizeof c->currency, r, row, 4);
    c->state = (int)i64(r, row, 5);
    c->order_amount = i64(r, row, 6);
    c->sales_before = i64(r, row, 7);
    c->amount = i64(r, row, 8);
    c->refunded = i64(r, row, 9);
    c->clawed_back = i64(r, row, 10);
    copy(c->schedule_id, sizeof c->schedule_id, r, row, 11);
    c->schedule_revision = i64(r, row, 12);
    c->period_start_ms = i64(r, row, 13);
    c->period_end_ms = i64(r, row, 14);
    c->paid_ms = i64(r, row, 15);
    c->accrued_ms = i64(r, row, 16);
    c->clawed_ms = i64(r, row, 17);
    c->nb = cm_db_parse_ints(PQgetvalue(r, row, 18), c->b_from, CMS_TIERS_MAX);
    cm_db_parse_ints(PQgetvalue(r, row, 19), c->b_bps, CMS_TIERS_MAX);
    cm_db_parse_ints(PQgetvalue(r, row, 20), c->b_sales, CMS_TIERS_MAX);
    cm_db_parse_ints(PQgetvalue(r, row, 21), c->b_amount, CMS_TIERS_MAX);
    copy(c->parent, sizeof c->parent, r, row, 22);
    c->parent_bps = i64(r, row, 23);
    c->payable_ms = i64(r, row, 24);
    c->payable_amount = i64(r, row, 25);
    c->settled_ms = i64(r, row, 26);
    copy(c->payout_id, sizeof c->payout_id, r, row, 27);
    c->payer = (int)i64(r, row, 28);
}

int cms_store_list_commissions(cm_db *db, const char *tenant, const char *channel, unsigned states,
                               const char *order_id, int64_t from_ms, int64_t to_ms,
                               int64_t before_ms, const char *before_id, int limit,
                               cms_commission *out, int *n)
{
    char mask[16], f[24], t[24], b[24], lim[16];
    const char *p[] = {tenant,
                       channel,
                       num(mask, sizeof mask, states),
                       order_id,
                       num(f, sizeof f, from_ms),
                       num(t, sizeof t, to_ms),
                       num(b, sizeof b, before_ms),
                       before_id,
                       num(lim, sizeof lim, limit)};
    PGresult *r = NULL;
    int rc = cm_db_read(
        db, "list commissions",
        "SELECT " CMS_COMMISSION_COLS " FROM commissions WHERE tenant_id = $1 AND ($2 = '' OR "
        "channel_id = $2) AND ($3::int = 0 OR ($3::int >> state) & 1 = 1) AND ($4 = '' OR "
        "order_id = NULLIF($4, '')::uuid) AND ($5::bigint = 0 OR accrued_at >= to_timestamp($5 / "
        "1000.0)) AND ($6::bigint = 0 OR accrued_at < to_timestamp($6 / 1000.0)) AND ($7::bigint "
        "= 0 OR (accrued_at, commission_id) < (to_timestamp($7 / 1000.0), NULLIF($8, '')::uuid)) "
        "ORDER BY accrued_at DESC, commission_id DESC LIMIT $9",
        9, p, &r);
    if (rc)
        return rc;
    *n = PQntuples(r);
    for (int i = 0; i < *n; i++)
        cms_store_parse_commission(r, i, &out[i]);
    PQclear(r);
    return 0;
}

int cms_store_list_adjustments(cm_db *db, const char *tenant, const char *channel,
                               int64_t before_ms, const char *before_id, int limit,
                               cms_adjustment *out, int *n)
{
    char b[24], lim[16];
    const char *p[] = {tenant, channel, num(b, sizeof b, before_ms), before_id,
                       num(lim, sizeof lim, limit)};
    PGresult *r = NULL;
    int rc = cm_db_read(
        db, "list adjustments",
        "SELECT " CMS_ADJUSTMENT_COLS " FROM adjustments WHERE tenant_id = $1 AND channel_id = "
        "$2 AND ($3::bigint = 0 OR (posted_at, adjustment_id) < (to_timestamp($3 / 1000.0), "
        "NULLIF($4, '')::uuid)) ORDER BY posted_at DESC, adjustment_id DESC LIMIT $5",
        5, p, &r);
    if (rc)
        return rc;
    *n = PQntuples(r);
    for (int i = 0; i < *n; i++)
        cms_store_parse_adjustment(r, i, &out[i]);
    PQclear(r);
    return 0;
}

/* ---- the summary ---- */

int cms_store_summary(cm_db *db, const char *tenant, const cms_channel *ch, int64_t at_ms,
                      cms_summary_row *out)
{
    char at[24], ty[24];
    const char *p[] = {tenant, ch->id, ch->schedule_id, num(ty, sizeof ty, ch->type),
                       num(at, sizeof at, at_ms)};
    PGresult *r = NULL;
    /* the schedule as an order paid at `at` would find it (accrual.c's
     * rule, without the order's currency: the channel's own schedule,
     * else the newest assigned to its type), its period there, the
     * period's figures over every revision, and the frozen balance */
    int rc = read_one(
        db, "channel summary",
        "WITH s AS (SELECT s.* FROM tier_schedules s WHERE s.tenant_id = $1 AND "
        "s.effective_from <= to_timestamp($5 / 1000.0) AND (CASE WHEN $3 <> '' THEN s.schedule_id "
        "= $3 ELSE $4::smallint = ANY (s.channel_types) END) AND s.revision = (SELECT "
        "max(x.revision) FROM tier_schedules x WHERE x.tenant_id = s.tenant_id AND x.schedule_id "
        "= s.schedule_id AND x.effective_from <= to_timestamp($5 / 1000.0)) ORDER BY "
        "s.effective_from DESC LIMIT 1), p AS (SELECT s.*, (date_trunc(CASE s.period WHEN 1 THEN "
        "'week' WHEN 2 THEN 'month' WHEN 3 THEN 'quarter' ELSE 'year' END, "
        "to_timestamp($5 / 1000.0) AT TIME ZONE s.time_zone)) AS ls FROM s) "
        "SELECT " CMS_SCHEDULE_COLS
        ", (extract(epoch FROM (s.ls AT TIME ZONE s.time_zone)) * 1000)::bigint, (extract(epoch "
        "FROM ((s.ls + CASE s.period WHEN 1 THEN interval '1 week' WHEN 2 THEN interval '1 month' "
        "WHEN 3 THEN interval '3 months' ELSE interval '1 year' END) AT TIME ZONE s.time_zone)) "
        "* 1000)::bigint, (SELECT coalesce(sum(net_sales), 0) FROM channel_periods c WHERE "
        "c.tenant_id = $1 AND c.channel_id = $2 AND c.schedule_id = s.schedule_id AND "
        "c.period_start = s.ls AT TIME ZONE s.time_zone), (SELECT coalesce(sum(orders), 0) FROM "
        "channel_periods c WHERE c.tenant_id = $1 AND c.channel_id = $2 AND c.schedule_id = "
        "s.schedule_id AND c.period_start = s.ls AT TIME ZONE s.time_zone), (SELECT "
        "coalesce(sum(amount - clawed_back), 0) FROM commissions c WHERE c.tenant_id = $1 AND "
        "c.channel_id = $2 AND c.currency = s.currency AND c.state IN (1, 4)) + (SELECT "
        "coalesce(sum(amount), 0) FROM adjustments a WHERE a.tenant_id = $1 AND a.channel_id = $2 "
        "AND a.currency = s.currency AND a.state = 1), (SELECT coalesce(sum(payable_amount), 0) "
        "FROM commissions c WHERE c.tenant_id = $1 AND c.channel_id = $2 AND c.currency = "
        "s.currency AND c.state = 2 AND c.payout_id IS NULL) + (SELECT coalesce(sum(amount), 0) "
        "FROM adjustments a WHERE a.tenant_id = $1 AND a.channel_id = $2 AND a.currency = "
        "s.currency AND a.state = 2 AND a.payout_id IS NULL) "
        "FROM p s",
        5, p, &r);
    if (rc)
        return rc;
    cms_store_parse_schedule(r, 0, 0, &out->sched);
    int k = CMS_SCHEDULE_NCOLS;
    out->period_start_ms = i64(r, 0, k);
    out->period_end_ms = i64(r, 0, k + 1);
    out->net_sales = i64(r, 0, k + 2);
    out->orders = i64(r, 0, k + 3);
    out->frozen = i64(r, 0, k + 4);
    out->payable = i64(r, 0, k + 5);
    PQclear(r);
    return 0;
}

/* ---- tenant settings ---- */

#define SETTINGS_COLS                                                                              \
    "after_sale_s IS NOT NULL, coalesce(after_sale_s, 0), revision, (extract(epoch FROM "          \
    "updated_at) * 1000)::bigint, updated_by"

static int read_settings(cm_db *db, const char *tenant, cms_settings *out)
{
    const char *p[] = {tenant};
    PGresult *r = NULL;
    memset(out, 0, sizeof *out);
    int rc =
        cm_db_read(db, "get tenant settings",
                   "SELECT " SETTINGS_COLS " FROM tenant_settings WHERE tenant_id = $1", 1, p, &r);
    if (rc)
        return rc;
    if (PQntuples(r)) {
        out->has_window = PQgetvalue(r, 0, 0)[0] == 't';
        out->window_s = i64(r, 0, 1);
        out->revision = i64(r, 0, 2);
        out->updated_ms = i64(r, 0, 3);
        copy(out->updated_by, sizeof out->updated_by, r, 0, 4);
    }
    PQclear(r);
    return 0;
}

int cms_store_get_settings(cm_db *db, const char *tenant, cms_settings *out)
{
    return read_settings(db, tenant, out);
}

typedef struct settings_tx {
    const char *tenant, *request_id, *hash, *principal;
    const cms_settings *in;
    int64_t expected;
    cms_settings *out;
    int verdict;
} settings_tx;

static int put_settings_fn(cm_db *db, void *arg)
{
    settings_tx *t = arg;
    /* one writer of a tenant's settings at a time: the revision check and
     * the idempotency record hold under it */
    int rc = 0;
    char key[CMS_ID_MAX + 1];
    int64_t rev = 0;
    int same = 0;
    int seen =
        cms_store_locked_request(db, "lock tenant settings", "commission.settings", t->tenant, "t",
                                 t->request_id, t->hash, &same, key, sizeof key, &rev);
    if (seen < 0)
        return seen;
    if (seen) {
        t->verdict = same ? CMS_SAME : CMS_KEY_REUSED;
        return same ? read_settings(db, t->tenant, t->out) : 0;
    }
    if ((rc = read_settings(db, t->tenant, t->out)))
        return rc;
    if (t->expected > 0 && t->expected != t->out->revision) {
        t->verdict = CMS_VERSION;
        return 0;
    }
    char w[24];
    const char *p[] = {t->tenant, t->in->has_window ? num(w, sizeof w, t->in->window_s) : NULL,
                       t->principal};
    PGresult *r = NULL;
    rc = cm_db_exec(db, "put tenant settings",
                    "INSERT INTO tenant_settings (tenant_id, after_sale_s, revision, updated_by) "
                    "VALUES ($1, $2::int, 1, $3) ON CONFLICT (tenant_id) DO UPDATE SET "
                    "after_sale_s = $2::int, revision = tenant_settings.revision + 1, updated_at "
                    "= now(), updated_by = $3 RETURNING " SETTINGS_COLS,
                    3, p, &r);
    if (rc)
        return rc;
    cms_settings *o = t->out;
    memset(o, 0, sizeof *o);
    o->has_window = PQgetvalue(r, 0, 0)[0] == 't';
    o->window_s = i64(r, 0, 1);
    o->revision = i64(r, 0, 2);
    o->updated_ms = i64(r, 0, 3);
    copy(o->updated_by, sizeof o->updated_by, r, 0, 4);
    PQclear(r);
    t->verdict = CMS_OK;
    return cms_store_record_request(db, t->tenant, "t", t->request_id, t->hash, "settings",
                                    o->revision, t->principal);
}

int cms_store_put_settings(cm_db *db, const char *tenant, const char *request_id, const char *hash,
                           const cms_settings *in, int64_t expected_revision, const char *principal,
                           cms_settings *out, int *verdict)
{
    settings_tx t = {.tenant = tenant,
                     .request_id = request_id,
                     .hash = hash,
                     .principal = principal,
                     .in = in,
                     .expected = expected_revision,
                     .out = out};
    int rc = cm_db_tx(db, NULL, 3, put_settings_fn, &t);
    *verdict = t.verdict;
    return rc;
}

void cms_store_parse_adjustment(const PGresult *r, int i, cms_adjustment *a)
{
    memset(a, 0, sizeof *a);
    copy(a->id, sizeof a->id, r, i, 0);
    copy(a->channel, sizeof a->channel, r, i, 1);
    a->kind = (int)i64(r, i, 2);
    copy(a->currency, sizeof a->currency, r, i, 3);
    a->amount = i64(r, i, 4);
    copy(a->order_id, sizeof a->order_id, r, i, 5);
    copy(a->refund_id, sizeof a->refund_id, r, i, 6);
    copy(a->child, sizeof a->child, r, i, 7);
    a->period_start_ms = i64(r, i, 8);
    a->posted_ms = i64(r, i, 9);
    a->state = (int)i64(r, i, 10);
    a->payable_ms = i64(r, i, 11);
    copy(a->payout_id, sizeof a->payout_id, r, i, 12);
    a->payer = (int)i64(r, i, 13);
    copy(a->merchant, sizeof a->merchant, r, i, 14);
}
