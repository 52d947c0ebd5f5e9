/* settlement's sql: see stl_store.h; the design in README.md */
#include "stl_store.h"

#include "cm_buf.h"
#include "cm_err.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *num(char *buf, size_t cap, long long v)
{
    snprintf(buf, cap, "%lld", v);
    return buf;
}

/* a read that must find one row: CM_ENOTFOUND when it finds none */
/* ---- settings ---- */

#define SETTINGS_COLS                                                                              \
    "time_zone, max_split_bps, to_char(run_at, 'HH24:MI'), revision, "                             \
    "(extract(epoch FROM updated_at) * 1000)::bigint, updated_by"

static void parse_settings(const PGresult *r, int row, stl_settings *s)
{
    cm_db_text(s->tz, sizeof s->tz, r, row, 0);
    s->max_split_bps = cm_db_int(r, row, 1);
    cm_db_text(s->run_at, sizeof s->run_at, r, row, 2);
    s->revision = cm_db_int(r, row, 3);
    s->updated_ms = cm_db_int(r, row, 4);
    cm_db_text(s->updated_by, sizeof s->updated_by, r, row, 5);
}

int stl_store_get_settings(cm_db *db, const char *tenant, const stl_settings *def,
                           stl_settings *out)
{
    const char *p[] = {tenant};
    PGresult *r = NULL;
    int rc = cm_db_read_row(db, "get tenant settings",
                            "SELECT " SETTINGS_COLS " FROM tenant_settings WHERE tenant_id = $1", 1,
                            p, &r);
    if (rc == CM_ENOTFOUND) {
        *out = *def;
        out->revision = 0;
        return 0;
    }
    if (rc)
        return rc;
    parse_settings(r, 0, out);
    PQclear(r);
    return 0;
}

int stl_store_zone_known(cm_db *db, const char *tz)
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

typedef struct settings_tx {
    const char *tenant, *request_id, *hash, *principal;
    const stl_settings *in, *def;
    int64_t expected;
    stl_settings *out;
    int verdict;
} settings_tx;

static int put_settings_fn(cm_db *db, void *arg)
{
    settings_tx *t = arg;
    char bps[24];
    const char *k[] = {t->tenant, t->request_id};
    PGresult *r = NULL;
    /* serialises changes of one tenant, and with them the idempotency check */
    int rc = cm_db_exec(db, "lock tenant settings",
                        "SELECT pg_advisory_xact_lock(hashtext('settlement.settings:' || $1)), "
                        "(SELECT body_hash FROM tenant_settings_changes WHERE tenant_id = $1 AND "
                        "request_id = $2)",
                        2, k, &r);
    if (rc)
        return rc;
    int seen = !PQgetisnull(r, 0, 1);
    int same = seen && strcmp(PQgetvalue(r, 0, 1), t->hash) == 0;
    PQclear(r);
    if (seen) {
        t->verdict = same ? STL_SAME : STL_KEY_REUSED;
        return stl_store_get_settings(db, t->tenant, t->def, t->out);
    }
    rc = stl_store_get_settings(db, t->tenant, t->def, t->out);
    if (rc)
        return rc;
    if (t->expected > 0 && t->expected != t->out->revision) {
        t->verdict = STL_VERSION;
        return 0;
    }
    const char *p[] = {t->tenant,     t->in->tz,    num(bps, sizeof bps, t->in->max_split_bps),
                       t->in->run_at, t->principal, t->request_id,
                       t->hash};
    rc = cm_db_exec(db, "put tenant settings",
                    "WITH s AS (INSERT INTO tenant_settings (tenant_id, time_zone, max_split_bps, "
                    "run_at, revision, updated_at, updated_by) VALUES ($1, $2, $3, $4::time, 1, "
                    "now(), $5) ON CONFLICT (tenant_id) DO UPDATE SET time_zone = $2, "
                    "max_split_bps = $3, run_at = $4::time, revision = tenant_settings.revision + "
                    "1, updated_at = now(), updated_by = $5 RETURNING " SETTINGS_COLS
                    "), c AS (INSERT INTO tenant_settings_changes (tenant_id, request_id, "
                    "body_hash, revision, principal) SELECT $1, $6, $7, revision, $5 FROM s) "
                    "SELECT * FROM s",
                    7, p, &r);
    if (rc)
        return rc;
    parse_settings(r, 0, t->out);
    PQclear(r);
    t->verdict = STL_OK;
    return 0;
}

int stl_store_put_settings(cm_db *db, const char *tenant, const char *request_id, const char *hash,
                           const stl_settings *in, int64_t expected_revision, const char *principal,
                           const stl_settings *def, stl_settings *out, int *verdict)
{
    settings_tx t = {.tenant = tenant,
                     .request_id = request_id,
                     .hash = hash,
                     .principal = principal,
                     .in = in,
                     .def = def,
                     .expected = expected_revision,
                     .out = out};
    int rc = cm_db_tx(db, NULL, 3, put_settings_fn, &t);
    *verdict = t.verdict;
    return rc;
}

/* ---- rules ---- */

#define RULE_COLS                                                                                  \
    "merchant_id, currency, version, (extract(epoch FROM effective_from) * 1000)::bigint, "        \
    "fee_bps, fee_fixed, fee_min, fee_max, fee_bearer, refund_policy, merchant_delay_days, "       \
    "receivers::text, created_by, on_completion"

static int parse_rule(const PGresult *r, int row, stl_rule_row *o)
{
    memset(o, 0, sizeof *o);
    cm_db_text(o->merchant, sizeof o->merchant, r, row, 0);
    cm_db_text(o->rule.currency, sizeof o->rule.currency, r, row, 1);
    o->version = cm_db_int(r, row, 2);
    o->effective_ms = cm_db_int(r, row, 3);
    o->rule.fee_bps = cm_db_int(r, row, 4);
    o->rule.fee_fixed = cm_db_int(r, row, 5);
    o->rule.fee_min = cm_db_int(r, row, 6);
    o->rule.fee_max = cm_db_int(r, row, 7);
    o->rule.fee_bearer = (int)cm_db_int(r, row, 8);
    o->rule.refund_policy = (int)cm_db_int(r, row, 9);
    o->rule.merchant_delay_days = (int)cm_db_int(r, row, 10);
    cm_db_text(o->created_by, sizeof o->created_by, r, row, 12);
    o->rule.on_completion = PQgetvalue(r, row, 13)[0] == 't';
    json_error_t je;
    json_t *arr = json_loads(PQgetvalue(r, row, 11), 0, &je);
    if (!json_is_array(arr) || json_array_size(arr) > STL_RECEIVERS_MAX) {
        json_decref(arr);
        return CM_EIO;
    }
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        stl_receiver *rc = &o->rule.r[i];
        rc->type = (int)json_integer_value(json_object_get(v, "type"));
        snprintf(rc->id, sizeof rc->id, "%s", json_string_value(json_object_get(v, "id")) ?: "");
        rc->share_bps = json_integer_value(json_object_get(v, "bps"));
        rc->fixed = json_integer_value(json_object_get(v, "fixed"));
        rc->delay_days = (int)json_integer_value(json_object_get(v, "delay"));
        snprintf(o->desc[i], sizeof o->desc[i], "%s",
                 json_string_value(json_object_get(v, "desc")) ?: "");
    }
    o->rule.n = json_array_size(arr);
    json_decref(arr);
    return 0;
}

/* the receivers as stored (a json array), malloc'd; NULL when out of
 * memory */
static char *receivers_json(const stl_rule *rule, const char (*desc)[STL_DESC_MAX + 1])
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < rule->n; i++) {
        const stl_receiver *r = &rule->r[i];
        json_t *o = json_pack("{s:i, s:s, s:I, s:I, s:i, s:s}", "type", r->type, "id", r->id, "bps",
                              (json_int_t)r->share_bps, "fixed", (json_int_t)r->fixed, "delay",
                              r->delay_days, "desc", desc ? desc[i] : "");
        if (!o || json_array_append_new(arr, o)) {
            json_decref(arr);
            return NULL;
        }
    }
    char *s = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    return s;
}

typedef struct rule_tx {
    const char *tenant, *request_id, *hash, *merchant, *principal, *receivers;
    const stl_rule *rule;
    int64_t expected;
    stl_rule_row *out;
    int verdict;
} rule_tx;

static int put_rule_fn(cm_db *db, void *arg)
{
    rule_tx *t = arg;
    const stl_rule *ru = t->rule;
    const char *k[] = {t->tenant, t->request_id, t->merchant, ru->currency};
    PGresult *r = NULL;
    /* one writer per merchant and currency at a time: versions stay dense */
    int rc = cm_db_exec(
        db, "lock split rule",
        "SELECT pg_advisory_xact_lock(hashtext('settlement.rule:' || $1 || '/' || $3 || '/' || "
        "$4)), "
        "(SELECT body_hash || ' ' || merchant_id || ' ' || currency || ' ' || version FROM "
        "split_rules WHERE tenant_id = $1 AND request_id = $2), (SELECT coalesce(max(version), 0) "
        "FROM split_rules WHERE tenant_id = $1 AND merchant_id = $3 AND currency = $4)",
        4, k, &r);
    if (rc)
        return rc;
    int64_t current = cm_db_int(r, 0, 2);
    if (!PQgetisnull(r, 0, 1)) {
        char hash[80] = "", m[STL_ID_MAX + 1] = "", cur[4] = "";
        long long ver = 0;
        sscanf(PQgetvalue(r, 0, 1), "%79s %64s %3s %lld", hash, m, cur, &ver);
        PQclear(r);
        t->verdict = strcmp(hash, t->hash) == 0 ? STL_SAME : STL_KEY_REUSED;
        return t->verdict == STL_SAME ? stl_store_get_rule(db, t->tenant, m, cur, ver, t->out) : 0;
    }
    PQclear(r);
    if (t->expected > 0 && t->expected != current) {
        t->verdict = STL_VERSION;
        if (current == 0) {
            memset(t->out, 0, sizeof *t->out);
            return 0;
        }
        return stl_store_get_rule(db, t->tenant, t->merchant, ru->currency, 0, t->out);
    }
    char ver[24], bps[24], fix[24], mn[24], mx[24], fb[24], rp[24], md[24];
    const char *p[] = {t->tenant,
                       t->merchant,
                       ru->currency,
                       num(ver, sizeof ver, current + 1),
                       num(bps, sizeof bps, ru->fee_bps),
                       num(fix, sizeof fix, ru->fee_fixed),
                       num(mn, sizeof mn, ru->fee_min),
                       num(mx, sizeof mx, ru->fee_max),
                       num(fb, sizeof fb, ru->fee_bearer),
                       num(rp, sizeof rp, ru->refund_policy),
                       num(md, sizeof md, ru->merchant_delay_days),
                       t->receivers,
                       t->request_id,
                       t->hash,
                       t->principal,
                       ru->on_completion ? "true" : "false"};
    rc = cm_db_exec(db, "put split rule",
                    "INSERT INTO split_rules (tenant_id, merchant_id, currency, version, "
                    "effective_from, fee_bps, fee_fixed, fee_min, fee_max, fee_bearer, "
                    "refund_policy, merchant_delay_days, receivers, request_id, body_hash, "
                    "created_by, on_completion) VALUES ($1, $2, $3, $4, clock_timestamp(), $5, $6, "
                    "$7, $8, $9, $10, $11, $12::jsonb, $13, $14, $15, $16) RETURNING " RULE_COLS,
                    16, p, &r);
    if (rc)
        return rc;
    rc = parse_rule(r, 0, t->out);
    PQclear(r);
    t->verdict = STL_OK;
    return rc;
}

int stl_store_put_rule(cm_db *db, const char *tenant, const char *request_id, const char *hash,
                       const char *merchant, const stl_rule *rule,
                       const char (*desc)[STL_DESC_MAX + 1], int64_t expected_version,
                       const char *principal, stl_rule_row *out, int *verdict)
{
    char *recv = receivers_json(rule, desc);
    if (!recv)
        return CM_ENOMEM;
    rule_tx t = {.tenant = tenant,
                 .request_id = request_id,
                 .hash = hash,
                 .merchant = merchant,
                 .principal = principal,
                 .receivers = recv,
                 .rule = rule,
                 .expected = expected_version,
                 .out = out};
    int rc = cm_db_tx(db, NULL, 3, put_rule_fn, &t);
    *verdict = t.verdict;
    free(recv);
    return rc;
}

int stl_store_get_rule(cm_db *db, const char *tenant, const char *merchant, const char *currency,
                       int64_t version, stl_rule_row *out)
{
    char ver[24];
    const char *p[] = {tenant, merchant, currency, num(ver, sizeof ver, version)};
    PGresult *r = NULL;
    int rc =
        cm_db_read_row(db, "get split rule",
                       "SELECT " RULE_COLS " FROM split_rules WHERE tenant_id = $1 AND "
                       "merchant_id = $2 AND currency = $3 AND ($4 = 0 OR version = $4) ORDER BY "
                       "version DESC LIMIT 1",
                       4, p, &r);
    if (rc)
        return rc;
    rc = parse_rule(r, 0, out);
    PQclear(r);
    return rc;
}

int stl_store_list_rules(cm_db *db, const char *tenant, const char *merchant, const char *currency,
                         int64_t before, int limit, stl_rule_row *out, int *n)
{
    char b[24], l[24];
    const char *p[] = {tenant, merchant, currency, num(b, sizeof b, before),
                       num(l, sizeof l, limit)};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "list split rules",
                        "SELECT " RULE_COLS " FROM split_rules WHERE tenant_id = $1 AND "
                        "merchant_id = $2 AND currency = $3 AND ($4 = 0 OR version < $4) ORDER "
                        "BY version DESC LIMIT $5",
                        5, p, &r);
    if (rc)
        return rc;
    *n = PQntuples(r);
    for (int i = 0; rc == 0 && i < *n; i++)
        rc = parse_rule(r, i, &out[i]);
    PQclear(r);
    return rc;
}

/* ---- accounts ---- */

int stl_store_accounts(cm_db *db, const char *tenant, const char *currency, size_t n,
                       const int *types, const char *const *owners, int64_t *ids)
{
    cm_buf ty = {0}, ow = {0};
    cm_buf_array_begin(&ty);
    cm_buf_array_begin(&ow);
    for (size_t i = 0; i < n; i++) {
        cm_buf_array_int(&ty, types[i]);
        cm_buf_array_text(&ow, owners[i]);
    }
    cm_buf_array_end(&ty);
    cm_buf_array_end(&ow);
    int rc = CM_ENOMEM;
    if (!ty.oom && !ow.oom) {
        const char *p[] = {tenant, currency, ty.p, ow.p};
        PGresult *r = NULL;
        /* sorted, so that two transactions creating the same accounts take
         * their locks in one order */
        rc = cm_db_exec_prepared(
            db, "resolve accounts", "stl_accounts",
            "WITH k AS (SELECT t, o, i FROM unnest($3::smallint[], $4::text[]) WITH ORDINALITY "
            "AS k(t, o, i)), n AS (INSERT INTO accounts (tenant_id, party_type, owner_id, "
            "currency) SELECT DISTINCT $1, t, o, $2 FROM k ORDER BY 2, 3 ON CONFLICT DO "
            "NOTHING RETURNING account_id, party_type, owner_id) SELECT k.i, "
            "coalesce(n.account_id, "
            "a.account_id) FROM k LEFT JOIN n ON n.party_type = k.t AND n.owner_id = k.o LEFT "
            "JOIN accounts a ON a.tenant_id = $1 AND a.party_type = k.t AND a.owner_id = k.o AND "
            "a.currency = $2 ORDER BY k.i",
            4, p, NULL, NULL, &r);
        if (rc == 0) {
            if ((size_t)PQntuples(r) != n) {
                rc = CM_EIO;
            } else {
                for (size_t i = 0; i < n; i++) {
                    if (PQgetisnull(r, (int)i, 1))
                        rc = CM_ECONFLICT; /* created by a transaction still open */
                    else
                        ids[i] = cm_db_int(r, (int)i, 1);
                }
            }
            PQclear(r);
        }
    }
    cm_buf_free(&ty);
    cm_buf_free(&ow);
    return rc;
}

#define ACCOUNT_COLS                                                                               \
    "account_id, party_type, owner_id, currency, pending, available, paying, paid_out, version, "  \
    "(extract(epoch FROM updated_at) * 1000)::bigint"

static void parse_account(const PGresult *r, int row, stl_account *a)
{
    a->id = cm_db_int(r, row, 0);
    a->type = (int)cm_db_int(r, row, 1);
    cm_db_text(a->owner, sizeof a->owner, r, row, 2);
    cm_db_text(a->currency, sizeof a->currency, r, row, 3);
    a->pending = cm_db_int(r, row, 4);
    a->available = cm_db_int(r, row, 5);
    a->paying = cm_db_int(r, row, 6);
    a->paid_out = cm_db_int(r, row, 7);
    a->version = cm_db_int(r, row, 8);
    a->updated_ms = cm_db_int(r, row, 9);
}

int stl_store_list_accounts(cm_db *db, const char *tenant, int type, const char *owner,
                            const char *currency, int64_t after_id, int limit, stl_account *out,
                            int *n)
{
    char t[24], a[24], l[24];
    const char *p[] = {tenant,   num(t, sizeof t, type),     owner,
                       currency, num(a, sizeof a, after_id), num(l, sizeof l, limit)};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "list accounts",
                        "SELECT " ACCOUNT_COLS " FROM accounts WHERE tenant_id = $1 AND ($2 = 0 OR "
                        "party_type = $2) AND ($3::text IS NULL OR owner_id = $3) AND ($4 = '' OR "
                        "currency = $4) AND account_id > $5 ORDER BY account_id LIMIT $6",
                        6, p, &r);
    if (rc)
        return rc;
    *n = PQntuples(r);
    for (int i = 0; i < *n; i++)
        parse_account(r, i, &out[i]);
    PQclear(r);
    return 0;
}

/* ---- the journal ---- */

#define ENTRY_COLS                                                                                 \
    "e.entry_id, e.kind, e.order_id::text, e.merchant_id, e.ref, e.currency, e.amount, e.fee, "    \
    "e.rule_version, e.capped, coalesce(e.source_event_id::text, ''), "                            \
    "(extract(epoch FROM e.posted_at) * 1000)::bigint, e.account_ids::text, e.buckets::text, "     \
    "e.amounts::text, e.due_dates::text, e.versions::text, "                                       \
    "(SELECT array_agg(a.party_type ORDER BY x.i)::text FROM unnest(e.account_ids) WITH "          \
    "ORDINALITY x(id, i) JOIN accounts a ON a.account_id = x.id), "                                \
    "(SELECT array_agg(a.owner_id ORDER BY x.i) FROM unnest(e.account_ids) WITH ORDINALITY x(id, " \
    "i) JOIN accounts a ON a.account_id = x.id)"

static void parse_entry(const PGresult *r, int row, stl_entry *e)
{
    memset(e, 0, sizeof *e);
    e->id = cm_db_int(r, row, 0);
    e->kind = (int)cm_db_int(r, row, 1);
    cm_db_text(e->order_id, sizeof e->order_id, r, row, 2);
    cm_db_text(e->merchant, sizeof e->merchant, r, row, 3);
    cm_db_text(e->ref, sizeof e->ref, r, row, 4);
    cm_db_text(e->currency, sizeof e->currency, r, row, 5);
    e->amount = cm_db_int(r, row, 6);
    e->fee = cm_db_int(r, row, 7);
    e->rule_version = cm_db_int(r, row, 8);
    e->capped = PQgetvalue(r, row, 9)[0] == 't';
    cm_db_text(e->event_id, sizeof e->event_id, r, row, 10);
    e->posted_ms = cm_db_int(r, row, 11);
    int64_t v[STL_POSTINGS_MAX];
    e->n = cm_db_parse_ints(PQgetvalue(r, row, 12), v, STL_POSTINGS_MAX);
    for (size_t i = 0; i < e->n; i++)
        e->p[i].account = v[i];
    cm_db_parse_ints(PQgetvalue(r, row, 13), v, e->n);
    for (size_t i = 0; i < e->n; i++)
        e->p[i].bucket = (int)v[i];
    cm_db_parse_ints(PQgetvalue(r, row, 14), v, e->n);
    for (size_t i = 0; i < e->n; i++)
        e->p[i].amount = v[i];
    char d[STL_POSTINGS_MAX][STL_DATE_LEN];
    cm_db_parse_words(PQgetvalue(r, row, 15), &d[0][0], STL_DATE_LEN, e->n);
    for (size_t i = 0; i < e->n; i++)
        memcpy(e->p[i].due, d[i], STL_DATE_LEN);
    cm_db_parse_ints(PQgetvalue(r, row, 16), v, e->n);
    for (size_t i = 0; i < e->n; i++)
        e->p[i].version = v[i];
    cm_db_parse_ints(PQgetvalue(r, row, 17), v, e->n);
    for (size_t i = 0; i < e->n; i++)
        e->p[i].type = (int)v[i];
    /* owners are text: quoted when they hold a comma or a quote, which
     * ids ([A-Za-z0-9._:-]) never do */
    char o[STL_POSTINGS_MAX][STL_ID_MAX + 1];
    cm_db_parse_words(PQgetvalue(r, row, 18), &o[0][0], sizeof o[0], e->n);
    for (size_t i = 0; i < e->n; i++)
        memcpy(e->p[i].owner, o[i], sizeof o[i]);
}

int stl_store_list_entries(cm_db *db, const char *tenant, const char *order_id, int64_t account,
                           int64_t from_ms, int64_t to_ms, int64_t before_id, int limit,
                           stl_entry *out, int *n)
{
    char ac[24], f[24], t[24], b[24], l[24];
    const char *p[] = {tenant,
                       order_id,
                       num(ac, sizeof ac, account),
                       num(f, sizeof f, from_ms),
                       num(t, sizeof t, to_ms),
                       num(b, sizeof b, before_id),
                       num(l, sizeof l, limit)};
    PGresult *r = NULL;
    int rc = cm_db_read(
        db, "list entries",
        "SELECT " ENTRY_COLS " FROM entries e WHERE e.tenant_id = $1 AND ($2::uuid IS NULL OR "
        "e.order_id = $2::uuid) AND ($3::bigint = 0 OR e.account_ids @> ARRAY[$3::bigint]) AND "
        "($4::bigint = 0 OR e.posted_at >= to_timestamp($4::bigint / 1000.0)) AND ($5::bigint = 0 "
        "OR e.posted_at < to_timestamp($5::bigint / 1000.0)) AND ($6::bigint = 0 OR e.entry_id < "
        "$6::bigint) ORDER BY e.entry_id DESC LIMIT $7",
        7, p, &r);
    if (rc)
        return rc;
    *n = PQntuples(r);
    for (int i = 0; i < *n; i++)
        parse_entry(r, i, &out[i]);
    PQclear(r);
    return 0;
}

/* ---- statements ---- */

int stl_store_statement(cm_db *db, const char *tenant, int64_t account, const char *merchant,
                        int64_t from_ms, int64_t to_ms, int64_t after_id, int after_k, int limit,
                        stl_account *acct, stl_buckets *opening, stl_buckets *closing,
                        stl_line *lines, int *ks, int *n)
{
    char ac[24], f[24], t[24], a[24], k[24], l[24];
    const char *p[] = {tenant,
                       num(ac, sizeof ac, account),
                       num(f, sizeof f, from_ms),
                       num(t, sizeof t, to_ms),
                       num(a, sizeof a, after_id),
                       num(k, sizeof k, after_k),
                       num(l, sizeof l, limit)};
    const char *pa[] = {tenant, p[1], merchant};
    PGresult *r = NULL;
    int rc = cm_db_read_row(db, "get account",
                            "SELECT " ACCOUNT_COLS " FROM accounts WHERE tenant_id = $1 AND "
                            "account_id = $2 AND ($3::text IS NULL OR (party_type = 1 AND owner_id "
                            "= $3))",
                            3, pa, &r);
    if (rc)
        return rc;
    parse_account(r, 0, acct);
    PQclear(r);
    /* every posting of the account, as (entry, index, bucket, amount) */
    rc = cm_db_read(
        db, "account statement",
        "WITH x AS (SELECT e.entry_id, x.k, e.kind, e.posted_at, coalesce(e.order_id::text, '') "
        "AS oid, e.ref, x.b, x.amt FROM entries e, unnest(e.account_ids, e.buckets, e.amounts) "
        "WITH "
        "ORDINALITY AS x(id, b, amt, k) WHERE e.tenant_id = $1 AND e.account_ids @> "
        "ARRAY[$2::bigint] AND x.id = $2 AND e.posted_at < to_timestamp($4 / 1000.0)), s AS "
        "(SELECT coalesce(sum(amt) FILTER (WHERE b = 1 AND posted_at < to_timestamp($3 / "
        "1000.0)), 0) AS p0, coalesce(sum(amt) FILTER (WHERE b = 2 AND posted_at < "
        "to_timestamp($3 / 1000.0)), 0) AS a0, coalesce(sum(amt) FILTER (WHERE b = 3 AND "
        "posted_at < to_timestamp($3 / 1000.0)), 0) AS y0, coalesce(sum(amt) FILTER (WHERE b = 4 "
        "AND posted_at < to_timestamp($3 / 1000.0)), 0) AS o0, coalesce(sum(amt) FILTER (WHERE "
        "b = 1), 0) AS p1, coalesce(sum(amt) FILTER (WHERE b = 2), 0) AS a1, coalesce(sum(amt) "
        "FILTER (WHERE b = 3), 0) AS y1, coalesce(sum(amt) FILTER (WHERE b = 4), 0) AS o1 FROM "
        "x) SELECT s.*, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM s UNION ALL (SELECT "
        "0, 0, 0, 0, 0, 0, 0, 0, x.entry_id, x.k, x.kind, (extract(epoch FROM x.posted_at) * "
        "1000)::bigint, x.oid, x.ref, x.b, x.amt FROM x WHERE x.posted_at >= "
        "to_timestamp($3 / 1000.0) AND (x.entry_id, x.k) > ($5::bigint, $6::bigint) ORDER BY "
        "x.entry_id, x.k LIMIT $7)",
        7, p, &r);
    if (rc)
        return rc;
    *opening = (stl_buckets){cm_db_int(r, 0, 0), cm_db_int(r, 0, 1), cm_db_int(r, 0, 2),
                             cm_db_int(r, 0, 3)};
    *closing = (stl_buckets){cm_db_int(r, 0, 4), cm_db_int(r, 0, 5), cm_db_int(r, 0, 6),
                             cm_db_int(r, 0, 7)};
    *n = PQntuples(r) - 1;
    for (int i = 0; i < *n; i++) {
        stl_line *x = &lines[i];
        memset(x, 0, sizeof *x);
        x->entry_id = cm_db_int(r, i + 1, 8);
        ks[i] = (int)cm_db_int(r, i + 1, 9);
        x->kind = (int)cm_db_int(r, i + 1, 10);
        x->posted_ms = cm_db_int(r, i + 1, 11);
        cm_db_text(x->order_id, sizeof x->order_id, r, i + 1, 12);
        cm_db_text(x->ref, sizeof x->ref, r, i + 1, 13);
        x->bucket = (int)cm_db_int(r, i + 1, 14);
        x->amount = cm_db_int(r, i + 1, 15);
    }
    PQclear(r);
    return 0;
}
