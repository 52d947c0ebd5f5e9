/* settlement's sql: see stl_store.h; the design in README.md */
#include "stl_store.h"

#include "cm_buf.h"
#include "cm_err.h"

#include <jansson.h>
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

static const char *num(char *buf, size_t cap, long long v)
{
    snprintf(buf, cap, "%lld", v);
    return buf;
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

/* ---- settings ---- */

#define SETTINGS_COLS                                                                              \
    "time_zone, max_split_bps, to_char(run_at, 'HH24:MI'), revision, "                             \
    "(extract(epoch FROM updated_at) * 1000)::bigint, updated_by"

static void parse_settings(const PGresult *r, int row, stl_settings *s)
{
    copy(s->tz, sizeof s->tz, r, row, 0);
    s->max_split_bps = i64(r, row, 1);
    copy(s->run_at, sizeof s->run_at, r, row, 2);
    s->revision = i64(r, row, 3);
    s->updated_ms = i64(r, row, 4);
    copy(s->updated_by, sizeof s->updated_by, r, row, 5);
}

int stl_store_get_settings(cm_db *db, const char *tenant, const stl_settings *def,
                           stl_settings *out)
{
    const char *p[] = {tenant};
    PGresult *r = NULL;
    int rc =
        read_one(db, "get tenant settings",
                 "SELECT " SETTINGS_COLS " FROM tenant_settings WHERE tenant_id = $1", 1, p, &r);
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
    "receivers::text, created_by"

static int parse_rule(const PGresult *r, int row, stl_rule_row *o)
{
    memset(o, 0, sizeof *o);
    copy(o->merchant, sizeof o->merchant, r, row, 0);
    copy(o->rule.currency, sizeof o->rule.currency, r, row, 1);
    o->version = i64(r, row, 2);
    o->effective_ms = i64(r, row, 3);
    o->rule.fee_bps = i64(r, row, 4);
    o->rule.fee_fixed = i64(r, row, 5);
    o->rule.fee_min = i64(r, row, 6);
    o->rule.fee_max = i64(r, row, 7);
    o->rule.fee_bearer = (int)i64(r, row, 8);
    o->rule.refund_policy = (int)i64(r, row, 9);
    o->rule.merchant_delay_days = (int)i64(r, row, 10);
    copy(o->created_by, sizeof o->created_by, r, row, 12);
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
    int64_t current = i64(r, 0, 2);
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
                       t->principal};
    rc = cm_db_exec(db, "put split rule",
                    "INSERT INTO split_rules (tenant_id, merchant_id, currency, version, "
                    "effective_from, fee_bps, fee_fixed, fee_min, fee_max, fee_bearer, "
                    "refund_policy, merchant_delay_days, receivers, request_id, body_hash, "
                    "created_by) VALUES ($1, $2, $3, $4, clock_timestamp(), $5, $6, $7, $8, $9, "
                    "$10, $11, $12::jsonb, $13, $14, $15) RETURNING " RULE_COLS,
                    15, p, &r);
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
    int rc = read_one(db, "get split rule",
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
                        ids[i] = i64(r, (int)i, 1);
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
    a->id = i64(r, row, 0);
    a->type = (int)i64(r, row, 1);
    copy(a->owner, sizeof a->owner, r, row, 2);
    copy(a->currency, sizeof a->currency, r, row, 3);
    a->pending = i64(r, row, 4);
    a->available = i64(r, row, 5);
    a->paying = i64(r, row, 6);
    a->paid_out = i64(r, row, 7);
    a->version = i64(r, row, 8);
    a->updated_ms = i64(r, row, 9);
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

size_t stl_store_parse_words(const char *s, char *out, size_t cap, size_t max)
{
    size_t n = 0;
    if (*s == '{')
        s++;
    while (*s && *s != '}' && n < max) {
        size_t k = strcspn(s, ",}");
        char *dst = out + n * cap;
        if (k == 4 && strncmp(s, "NULL", 4) == 0)
            *dst = '\0';
        else
            snprintf(dst, cap, "%.*s", (int)k, s);
        n++;
        s += k;
        if (*s == ',')
            s++;
    }
    return n;
}

void stl_store_unquote(char *dst, size_t cap, const char *w)
{
    size_t k = strlen(w);
    if (k >= 2 && w[0] == '"')
        snprintf(dst, cap, "%.*s", (int)(k - 2), w + 1);
    else
        snprintf(dst, cap, "%.*s", (int)(cap - 1), w);
}

size_t stl_store_parse_i64s(const char *s, int64_t *out, size_t max)
{
    char w[STL_POSTINGS_MAX][24];
    size_t n = stl_store_parse_words(s, &w[0][0], sizeof w[0],
                                     max < STL_POSTINGS_MAX ? max : STL_POSTINGS_MAX);
    for (size_t i = 0; i < n; i++)
        out[i] = strtoll(w[i], NULL, 10);
    return n;
}

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
    e->id = i64(r, row, 0);
    e->kind = (int)i64(r, row, 1);
    copy(e->order_id, sizeof e->order_id, r, row, 2);
    copy(e->merchant, sizeof e->merchant, r, row, 3);
    copy(e->ref, sizeof e->ref, r, row, 4);
    copy(e->currency, sizeof e->currency, r, row, 5);
    e->amount = i64(r, row, 6);
    e->fee = i64(r, row, 7);
    e->rule_version = i64(r, row, 8);
    e->capped = PQgetvalue(r, row, 9)[0] == 't';
    copy(e->event_id, sizeof e->event_id, r, row, 10);
    e->posted_ms = i64(r, row, 11);
    int64_t v[STL_POSTINGS_MAX];
    e->n = stl_store_parse_i64s(PQgetvalue(r, row, 12), v, STL_POSTINGS_MAX);
    for (size_t i = 0; i < e->n; i++)
        e->p[i].account = v[i];
    stl_store_parse_i64s(PQgetvalue(r, row, 13), v, e->n);
    for (size_t i = 0; i < e->n; i++)
        e->p[i].bucket = (int)v[i];
    stl_store_parse_i64s(PQgetvalue(r, row, 14), v, e->n);
    for (size_t i = 0; i < e->n; i++)
        e->p[i].amount = v[i];
    char d[STL_POSTINGS_MAX][STL_DATE_LEN];
    stl_store_parse_words(PQgetvalue(r, row, 15), &d[0][0], STL_DATE_LEN, e->n);
    for (size_t i = 0; i < e->n; i++)
        memcpy(e->p[i].due, d[i], STL_DATE_LEN);
    stl_store_parse_i64s(PQgetvalue(r, row, 16), v, e->n);
    for (size_t i = 0; i < e->n; i++)
        e->p[i].version = v[i];
    stl_store_parse_i64s(PQgetvalue(r, row, 17), v, e->n);
    for (size_t i = 0; i < e->n; i++)
        e->p[i].type = (int)v[i];
    /* owners are text: quoted when they hold a comma or a quote, which
     * ids ([A-Za-z0-9._:-]) never do */
    char o[STL_POSTINGS_MAX][STL_ID_MAX + 3];
    stl_store_parse_words(PQgetvalue(r, row, 18), &o[0][0], sizeof o[0], e->n);
    for (size_t i = 0; i < e->n; i++)
        stl_store_unquote(e->p[i].owner, sizeof e->p[i].owner, o[i]);
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
        "e.order_id = $2::uuid) AND ($3 = 0 OR e.account_ids @> ARRAY[$3::bigint]) AND ($4 = 0 OR "
        "e.posted_at >= to_timestamp($4 / 1000.0)) AND ($5 = 0 OR e.posted_at < to_timestamp($5 "
        "/ 1000.0)) AND ($6 = 0 OR e.entry_id < $6) ORDER BY e.entry_id DESC LIMIT $7",
        7, p, &r);
    if (rc)
        return rc;
    *n = PQntuples(r);
    for (int i = 0; i < *n; i++)
        parse_entry(r, i, &out[i]);
    PQclear(r);
    return 0;
}
