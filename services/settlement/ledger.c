/* posting payments and refunds: see stl_ledger.h, README.md "Posting" */
#include "stl_ledger.h"

#include "cm_arena.h"
#include "cm_buf.h"
#include "cm_err.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "stl_events.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- a small string-keyed map (the two caches) ---- */

#define MAP_CAP 8192 /* slots; cleared when three quarters are used */

typedef struct map_slot {
    char *key;
    int64_t id;  /* an account id */
    void *value; /* a rule version (malloc'd, freed with the map) */
} map_slot;

typedef struct map {
    map_slot *s;
    size_t used;
} map;

static uint64_t fnv(const char *k)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *k; k++)
        h = (h ^ (unsigned char)*k) * 1099511628211ULL;
    return h;
}

static void map_clear(map *m)
{
    for (size_t i = 0; m->s && i < MAP_CAP; i++) {
        free(m->s[i].key);
        free(m->s[i].value);
        m->s[i] = (map_slot){0};
    }
    m->used = 0;
}

static map_slot *map_find(map *m, const char *key)
{
    if (!m->s)
        return NULL;
    for (size_t i = fnv(key) % MAP_CAP;; i = (i + 1) % MAP_CAP) {
        if (!m->s[i].key)
            return NULL;
        if (strcmp(m->s[i].key, key) == 0)
            return &m->s[i];
    }
}

/* a new slot for key (not in the map); NULL when out of memory */
static map_slot *map_add(map *m, const char *key)
{
    if (!m->s && !(m->s = calloc(MAP_CAP, sizeof *m->s)))
        return NULL;
    if (m->used >= MAP_CAP / 4 * 3)
        map_clear(m);
    char *k = strdup(key);
    if (!k)
        return NULL;
    size_t i = fnv(key) % MAP_CAP;
    while (m->s[i].key)
        i = (i + 1) % MAP_CAP;
    m->s[i].key = k;
    m->used++;
    return &m->s[i];
}

static void map_remove_all(map *m, const char *key)
{
    /* open addressing: removing one slot would break probe chains, so a
     * removal (rare: a rolled-back account) clears the whole cache */
    if (map_find(m, key))
        map_clear(m);
}

/* ---- the ledger ---- */

typedef struct pay {
    char tenant[STL_TENANT_MAX + 1], order_id[CM_ID_SIZE], merchant[STL_ID_MAX + 1];
    char currency[4], event_id[CM_ID_SIZE], traceparent[64];
    int64_t amount, paid_ms;
    /* resolved */
    int64_t version, cap_bps;
    char local_date[STL_DATE_LEN];
    const stl_rule_row *rule; /* NULL: no rule, all to the merchant */
    stl_split split;
    int64_t acct[STL_PARTS_MAX + 2]; /* parts..., clearing, fee */
    char due[STL_PARTS_MAX][STL_DATE_LEN];
    int delay[STL_PARTS_MAX];
    int held; /* settle on completion: every part held until OrderCompleted */
    int fresh;
    stl_entry *entry;
} pay;

#define TENTATIVE_MAX 256

struct stl_ledger {
    stl_settings def;
    int events_on;
    char topic[256];
    cm_histogram *lag;
    pay *pays;
    size_t npays, cap;
    map rules, accounts;
    char *tentative[TENTATIVE_MAX]; /* account keys created by the open transaction */
    size_t ntentative;
    int tentative_overflow;
    atomic_uint_fast64_t splits, reversals, duplicates, capped;
};

stl_ledger *stl_ledger_new(const stl_settings *defaults, int events_on, const char *topic,
                           cm_histogram *lag)
{
    stl_ledger *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->def = *defaults;
    l->events_on = events_on;
    snprintf(l->topic, sizeof l->topic, "%s", topic);
    l->lag = lag;
    return l;
}

static void free_staged(stl_ledger *l)
{
    for (size_t i = 0; i < l->npays; i++)
        free(l->pays[i].entry);
    l->npays = 0;
}

void stl_ledger_free(stl_ledger *l)
{
    if (!l)
        return;
    free_staged(l);
    free(l->pays);
    map_clear(&l->rules);
    map_clear(&l->accounts);
    free(l->rules.s);
    free(l->accounts.s);
    for (size_t i = 0; i < l->ntentative; i++)
        free(l->tentative[i]);
    free(l);
}

void stl_ledger_begin(stl_ledger *l)
{
    free_staged(l);
    /* accounts an aborted attempt created do not exist */
    if (l->tentative_overflow)
        map_clear(&l->accounts);
    for (size_t i = 0; i < l->ntentative; i++) {
        map_remove_all(&l->accounts, l->tentative[i]);
        free(l->tentative[i]);
    }
    l->ntentative = 0;
    l->tentative_overflow = 0;
}

void stl_ledger_committed(stl_ledger *l)
{
    for (size_t i = 0; i < l->ntentative; i++)
        free(l->tentative[i]);
    l->ntentative = 0;
    l->tentative_overflow = 0;
}

void stl_ledger_get_stats(const stl_ledger *l, stl_ledger_stats *out)
{
    out->splits = atomic_load(&l->splits);
    out->reversals = atomic_load(&l->reversals);
    out->duplicates = atomic_load(&l->duplicates);
    out->capped = atomic_load(&l->capped);
}

int stl_ledger_stage_pay(stl_ledger *l, const stl_pay_in *in)
{
    if (l->npays == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        pay *p = realloc(l->pays, cap * sizeof *p);
        if (!p)
            return CM_ENOMEM;
        l->pays = p;
        l->cap = cap;
    }
    pay *p = &l->pays[l->npays];
    memset(p, 0, sizeof *p);
    snprintf(p->tenant, sizeof p->tenant, "%s", in->tenant);
    snprintf(p->order_id, sizeof p->order_id, "%s", in->order_id);
    snprintf(p->merchant, sizeof p->merchant, "%s", in->merchant);
    snprintf(p->currency, sizeof p->currency, "%s", in->currency);
    snprintf(p->event_id, sizeof p->event_id, "%s", in->event_id);
    snprintf(p->traceparent, sizeof p->traceparent, "%s", in->traceparent ? in->traceparent : "");
    p->amount = in->amount;
    p->paid_ms = in->paid_ms;
    l->npays++;
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "YYYY-MM-DD" plus days, by days since the civil epoch (proleptic
 * gregorian, Howard Hinnant's algorithm) */
static void date_add(const char *ymd, int days, char out[STL_DATE_LEN])
{
    int y = 1970, m = 1, d = 1;
    sscanf(ymd, "%d-%d-%d", &y, &m, &d);
    y -= m <= 2;
    long era = (y >= 0 ? y : y - 399) / 400;
    long yoe = y - era * 400;
    long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    long z = era * 146097 + doe - 719468 + days;
    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long yy = yoe + era * 400;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long mp = (5 * doy + 2) / 153;
    long dd = doy - (153 * mp + 2) / 5 + 1;
    long mm = mp + (mp < 10 ? 3 : -9);
    yy += mm <= 2;
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%04ld-%02ld-%02ld", yy % 10000, mm, dd);
    memcpy(out, tmp, STL_DATE_LEN - 1);
    out[STL_DATE_LEN - 1] = '\0';
}

/* ---- flush: resolve ---- */

static const char *pay_tenant(const void *a, size_t i)
{
    return ((const pay *)a)[i].tenant;
}
static const char *pay_merchant(const void *a, size_t i)
{
    return ((const pay *)a)[i].merchant;
}
static const char *pay_currency(const void *a, size_t i)
{
    return ((const pay *)a)[i].currency;
}

/* every staged payment's rule version, tenant cap and local paid date,
 * in one statement */
static int resolve_rules(stl_ledger *l, cm_db *db, cm_arena *a)
{
    char cap[24];
    snprintf(cap, sizeof cap, "%lld", (long long)l->def.max_split_bps);
    const char *p[] = {cm_buf_text_array(a, l->npays, pay_tenant, l->pays),
                       cm_buf_text_array(a, l->npays, pay_merchant, l->pays),
                       cm_buf_text_array(a, l->npays, pay_currency, l->pays),
                       cm_buf_int_array(a, &l->pays[0].paid_ms, l->npays, sizeof(pay)),
                       l->def.tz,
                       cap};
    for (int i = 0; i < 4; i++)
        if (!p[i])
            return CM_ENOMEM;
    PGresult *r = NULL;
    int rc = cm_db_exec_prepared(
        db, "resolve split rules", "stl_rules_for",
        "SELECT coalesce(r.version, 0), coalesce(s.max_split_bps, $6::int), "
        "to_char((to_timestamp(u.ms / 1000.0) AT TIME ZONE coalesce(s.time_zone, $5))::date, "
        "'YYYY-MM-DD') FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) WITH "
        "ORDINALITY AS u(t, m, c, ms, i) LEFT JOIN tenant_settings s ON s.tenant_id = u.t LEFT "
        "JOIN LATERAL (SELECT version FROM split_rules r WHERE r.tenant_id = u.t AND "
        "r.merchant_id = u.m AND r.currency = u.c AND r.effective_from <= to_timestamp(u.ms / "
        "1000.0) ORDER BY r.version DESC LIMIT 1) r ON true ORDER BY u.i",
        6, p, NULL, NULL, &r);
    if (rc)
        return rc;
    if ((size_t)PQntuples(r) != l->npays) {
        PQclear(r);
        return CM_EIO;
    }
    for (size_t i = 0; i < l->npays; i++) {
        pay *y = &l->pays[i];
        y->version = strtoll(PQgetvalue(r, (int)i, 0), NULL, 10);
        y->cap_bps = strtoll(PQgetvalue(r, (int)i, 1), NULL, 10);
        snprintf(y->local_date, sizeof y->local_date, "%s", PQgetvalue(r, (int)i, 2));
    }
    PQclear(r);
    /* the versions not cached yet (each is immutable once stored) */
    for (size_t i = 0; i < l->npays && rc == 0; i++) {
        pay *y = &l->pays[i];
        if (!y->version)
            continue;
        char key[STL_TENANT_MAX + STL_ID_MAX + 40];
        snprintf(key, sizeof key, "%s\x1f%s\x1f%s\x1f%lld", y->tenant, y->merchant, y->currency,
                 (long long)y->version);
        map_slot *s = map_find(&l->rules, key);
        if (!s) {
            stl_rule_row *row = malloc(sizeof *row);
            if (!row)
                return CM_ENOMEM;
            rc = stl_store_get_rule(db, y->tenant, y->merchant, y->currency, y->version, row);
            if (rc == 0 && !(s = map_add(&l->rules, key)))
                rc = CM_ENOMEM;
            if (rc) {
                free(row);
                return rc;
            }
            s->value = row;
        }
        y->rule = s->value;
    }
    return rc;
}

/* the parties of a payment, in split order: merchant, receivers, then
 * the ledger's clearing and fee accounts */
static size_t parties(const pay *y, int *types, const char **owners)
{
    size_t n = 0;
    types[n] = STL_PARTY_MERCHANT;
    owners[n++] = y->merchant;
    for (size_t i = 0; y->rule && i < y->rule->rule.n; i++) {
        types[n] = y->rule->rule.r[i].type;
        owners[n++] = y->rule->rule.r[i].id;
    }
    types[n] = STL_PARTY_CLEARING;
    owners[n++] = "";
    types[n] = STL_PARTY_PROVIDER_FEE;
    owners[n++] = "";
    return n;
}

static void account_key(char *key, size_t cap, const char *tenant, int type, const char *owner,
                        const char *currency)
{
    snprintf(key, cap, "%s\x1f%d\x1f%s\x1f%s", tenant, type, owner, currency);
}

/* the account ids of a tenant's parties: from the cache, the missing ones
 * from the database (created when new) */
static int resolve_accounts(stl_ledger *l, cm_db *db, const char *tenant, const char *currency,
                            size_t n, const int *types, const char *const *owners, int64_t *ids)
{
    char key[STL_TENANT_MAX + STL_ID_MAX + 24];
    int miss = 0;
    for (size_t i = 0; i < n; i++) {
        account_key(key, sizeof key, tenant, types[i], owners[i], currency);
        map_slot *s = map_find(&l->accounts, key);
        if (s)
            ids[i] = s->id;
        else
            miss = 1;
    }
    if (!miss)
        return 0;
    int rc = stl_store_accounts(db, tenant, currency, n, types, owners, ids);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        account_key(key, sizeof key, tenant, types[i], owners[i], currency);
        if (map_find(&l->accounts, key))
            continue;
        map_slot *s = map_add(&l->accounts, key);
        if (!s)
            return CM_ENOMEM;
        s->id = ids[i];
        /* until the transaction commits, the account may vanish with it */
        if (l->ntentative < TENTATIVE_MAX && (l->tentative[l->ntentative] = strdup(key)))
            l->ntentative++;
        else
            l->tentative_overflow = 1;
    }
    return rc;
}

/* ---- flush: split rows ---- */

/* inserts the split rows; the ones inserted are the payments posted now
 * (fresh), the rest were split before (a redelivery under another event
 * id, or the same order twice in the batch) */
static int insert_splits(stl_ledger *l, cm_db *db)
{
    cm_buf c[16];
    const char *c_p[16];
    cm_buf_columns_begin(c, 16);
    for (size_t i = 0; i < l->npays; i++) {
        pay *y = &l->pays[i];
        size_t np = y->split.nparts;
        cm_buf_array_text(&c[14], y->held ? "t" : "f");
        cm_buf_array_text(&c[0], y->tenant);
        cm_buf_array_text(&c[1], y->order_id);
        cm_buf_array_text(&c[2], y->merchant);
        cm_buf_array_text(&c[3], y->currency);
        cm_buf_array_int(&c[4], y->paid_ms);
        cm_buf_array_int(&c[5], y->amount);
        cm_buf_array_int(&c[6], y->split.fee);
        cm_buf_array_int(&c[7], y->rule ? y->rule->rule.refund_policy : STL_REFUND_PRO_RATA);
        cm_buf_array_int(&c[8], y->version);
        cm_buf_array_int(&c[9], (long long)(c[13].items));
        cm_buf_array_int(&c[10], (long long)np);
        for (size_t k = 0; k < np; k++) {
            cm_buf_array_int(&c[11], y->acct[k]);
            cm_buf_array_int(&c[12], y->split.parts[k]);
            cm_buf_array_text_or_null(&c[13], y->due[k]);
            cm_buf_array_int(&c[15], y->delay[k]);
        }
    }
    int rc = cm_buf_columns_end(c, 16, c_p);
    PGresult *r = NULL;
    if (rc == 0) {
        const char *const *p = c_p;
        rc = cm_db_exec_prepared(
            db, "insert order splits", "stl_splits",
            "INSERT INTO order_splits (tenant_id, order_id, merchant_id, currency, paid_at, "
            "amount, fee, refund_policy, rule_version, account_ids, parts, due_dates, rev_parts, "
            "held, delays) SELECT u.t, u.o::uuid, u.m, u.c, to_timestamp(u.ms / 1000.0), u.a, "
            "u.f, u.rp, u.v, ($12::bigint[])[u.off + 1 : u.off + u.n], ($13::bigint[])[u.off + "
            "1 : u.off + u.n], ($14::date[])[u.off + 1 : u.off + "
            "u.n], array_fill(0::bigint, "
            "ARRAY[u.n]), u.h, ($16::int[])[u.off + 1 : u.off + u.n] FROM unnest($1::text[], "
            "$2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], "
            "$8::smallint[], $9::bigint[], $10::int[], $11::int[], $15::bool[]) WITH ORDINALITY "
            "AS u(t, o, m, c, ms, a, f, rp, v, off, n, h, i) ORDER BY u.i ON CONFLICT DO NOTHING "
            "RETURNING tenant_id, order_id::text",
            16, p, NULL, NULL, &r);
    }
    cm_buf_columns_free(c, 16);
    if (rc)
        return rc;
    /* the first staged payment of each returned order is the fresh one */
    map seen = {0};
    for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
        char key[STL_TENANT_MAX + CM_ID_SIZE + 2];
        snprintf(key, sizeof key, "%s\x1f%s", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
        if (!map_add(&seen, key))
            rc = CM_ENOMEM;
    }
    for (size_t i = 0; i < l->npays && rc == 0; i++) {
        pay *y = &l->pays[i];
        char key[STL_TENANT_MAX + CM_ID_SIZE + 2];
        snprintf(key, sizeof key, "%s\x1f%s", y->tenant, y->order_id);
        map_slot *s = map_find(&seen, key);
        if (s && !s->id) {
            y->fresh = 1;
            s->id = 1;
        }
    }
    map_clear(&seen);
    free(seen.s);
    PQclear(r);
    return rc;
}

/* ---- applying postings to accounts ---- */

/* applies the postings of entries[0..n) to their accounts (one update
 * per account, locked in id order), fills each posting's version, and
 * adds the pending postings to pending_due (with_pending). */
static int apply_postings(cm_db *db, const char *const *tenants, stl_entry *const *entries,
                          size_t n, int with_pending)
{
    cm_buf c[7];
    const char *c_p[7];
    cm_buf_columns_begin(c, 7);
    for (size_t e = 0; e < n; e++) {
        for (size_t k = 0; k < entries[e]->n; k++) {
            const stl_posting *q = &entries[e]->p[k];
            cm_buf_array_int(&c[0], q->account);
            cm_buf_array_int(&c[1], q->bucket == STL_PENDING ? q->amount : 0);
            cm_buf_array_int(&c[2], q->bucket == STL_AVAILABLE ? q->amount : 0);
            if (with_pending && q->bucket == STL_PENDING) {
                cm_buf_array_int(&c[3], q->account);
                cm_buf_array_text(&c[4], q->due);
                cm_buf_array_text(&c[5], tenants[e]);
                cm_buf_array_int(&c[6], q->amount);
            }
        }
    }
    int rc = cm_buf_columns_end(c, 7, c_p);
    PGresult *r = NULL;
    if (rc == 0) {
        const char *const *p = c_p;
        rc = cm_db_exec_prepared(
            db, "apply postings", "stl_apply",
            "WITH d AS (SELECT id, sum(p) AS p, sum(v) AS v, count(*) AS n FROM "
            "unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS x(id, p, v) GROUP BY id), "
            "l AS (SELECT a.account_id FROM accounts a WHERE a.account_id IN (SELECT id FROM d) "
            "ORDER BY a.account_id FOR UPDATE), "
            "u AS (UPDATE accounts a SET pending = a.pending + d.p, available = a.available + "
            "d.v, version = a.version + d.n, updated_at = now() FROM d, l WHERE a.account_id = "
            "d.id AND l.account_id = d.id RETURNING a.account_id, a.version - d.n AS base), "
            "pd AS (INSERT INTO pending_due (account_id, due_date, tenant_id, amount) SELECT id, "
            "due::date, t, sum(amt) FROM unnest($4::bigint[], $5::text[], $6::text[], "
            "$7::bigint[]) AS y(id, due, t, amt) GROUP BY 1, 2, 3 ORDER BY 1, 2 ON CONFLICT "
            "(account_id, due_date) DO UPDATE SET amount = pending_due.amount + excluded.amount "
            "RETURNING 1) SELECT account_id, base, (SELECT count(*) FROM pd) FROM u",
            7, p, NULL, NULL, &r);
    }
    cm_buf_columns_free(c, 7);
    if (rc)
        return rc;
    /* the versions: each account's postings numbered from its old version,
     * in entry order */
    int rows = PQntuples(r);
    int64_t *ids = malloc(((size_t)rows + 1) * 2 * sizeof *ids);
    if (!ids) {
        PQclear(r);
        return CM_ENOMEM;
    }
    for (int i = 0; i < rows; i++) {
        ids[2 * i] = cm_db_int(r, i, 0);
        ids[2 * i + 1] = cm_db_int(r, i, 1);
    }
    PQclear(r);
    for (size_t e = 0; e < n && rc == 0; e++) {
        for (size_t k = 0; k < entries[e]->n && rc == 0; k++) {
            stl_posting *q = &entries[e]->p[k];
            int found = 0;
            for (int i = 0; i < rows; i++) {
                if (ids[2 * i] == q->account) {
                    q->version = ++ids[2 * i + 1];
                    found = 1;
                    break;
                }
            }
            /* an account id the cache had but the database has not (its
             * creating transaction rolled back): run again, uncached */
            if (!found)
                rc = CM_ECONFLICT;
        }
    }
    free(ids);
    return rc;
}

/* ---- flush: entries and events ---- */

/* the entry of a fresh payment */
static stl_entry *split_entry(const pay *y, int64_t posted_ms)
{
    stl_entry *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->kind = STL_ENTRY_SPLIT;
    snprintf(e->order_id, sizeof e->order_id, "%s", y->order_id);
    snprintf(e->merchant, sizeof e->merchant, "%s", y->merchant);
    snprintf(e->currency, sizeof e->currency, "%s", y->currency);
    snprintf(e->event_id, sizeof e->event_id, "%s", y->event_id);
    e->amount = y->amount;
    e->fee = y->split.fee;
    e->rule_version = y->version;
    e->capped = y->split.capped;
    e->posted_ms = posted_ms;
    size_t np = y->split.nparts;
    /* the clearing account owes the whole amount, the provider kept the fee */
    e->p[e->n++] = (stl_posting){.account = y->acct[np],
                                 .bucket = STL_AVAILABLE,
                                 .amount = -y->amount,
                                 .type = STL_PARTY_CLEARING};
    if (y->split.fee)
        e->p[e->n++] = (stl_posting){.account = y->acct[np + 1],
                                     .bucket = STL_AVAILABLE,
                                     .amount = y->split.fee,
                                     .type = STL_PARTY_PROVIDER_FEE};
    int types[STL_PARTS_MAX + 2];
    const char *owners[STL_PARTS_MAX + 2];
    parties(y, types, owners);
    for (size_t k = 0; k < np; k++) {
        if (!y->split.parts[k])
            continue;
        stl_posting *q = &e->p[e->n++];
        q->account = y->acct[k];
        q->amount = y->split.parts[k];
        q->bucket = y->due[k][0] ? STL_PENDING : STL_AVAILABLE;
        memcpy(q->due, y->due[k], STL_DATE_LEN);
        q->type = types[k];
        snprintf(q->owner, sizeof q->owner, "%s", owners[k]);
    }
    /* a zero payment still records its order (every bucket unchanged) */
    if (e->n < 2)
        e->p[e->n++] = (stl_posting){
            .account = y->acct[0], .bucket = STL_AVAILABLE, .type = STL_PARTY_MERCHANT};
    return e;
}

static int next_entry_ids(cm_db *db, size_t n, int64_t *ids)
{
    char k[24];
    snprintf(k, sizeof k, "%zu", n);
    const char *p[] = {k};
    PGresult *r = NULL;
    int rc = cm_db_exec_prepared(db, "entry ids", "stl_entry_ids",
                                 "SELECT nextval(pg_get_serial_sequence('entries', 'entry_id')) "
                                 "FROM generate_series(1, $1::int)",
                                 1, p, NULL, NULL, &r);
    if (rc)
        return rc;
    for (size_t i = 0; i < n && i < (size_t)PQntuples(r); i++)
        ids[i] = strtoll(PQgetvalue(r, (int)i, 0), NULL, 10);
    PQclear(r);
    return 0;
}

/* inserts entries[0..n) (ids assigned) and, with events on, their events
 * through the outbox, in one statement */
static int insert_entries(stl_ledger *l, cm_db *db, const char *const *tenants,
                          const char *const *traceparents, stl_entry *const *entries, size_t n)
{
    cm_arena *a = cm_arena_new(64 * 1024);
    if (!a)
        return CM_ENOMEM;
    cm_buf c[16];
    const char *c_p[16];
    cm_buf_columns_begin(c, 16);
    cm_outbox_rows ob;
    cm_outbox_rows_init(&ob);
    int rc = 0;
    size_t off = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const stl_entry *e = entries[i];
        cm_buf_array_int(&c[0], e->id);
        cm_buf_array_text(&c[1], tenants[i]);
        cm_buf_array_int(&c[2], e->kind);
        cm_buf_array_text(&c[3], e->order_id);
        cm_buf_array_text(&c[4], e->merchant);
        cm_buf_array_text(&c[5], e->ref);
        cm_buf_array_text(&c[6], e->currency);
        cm_buf_array_int(&c[7], e->amount);
        cm_buf_array_int(&c[8], e->fee);
        cm_buf_array_int(&c[9], e->rule_version);
        cm_buf_array_int(&c[10], e->capped);
        cm_buf_array_text(&c[11], e->event_id);
        cm_buf_array_int(&c[12], e->posted_ms);
        cm_buf_array_int(&c[13], (long long)off);
        cm_buf_array_int(&c[14], (long long)e->n);
        off += e->n;
        if (l->events_on) {
            char id[CM_ID_SIZE];
            const uint8_t *payload;
            size_t len;
            rc = cm_id_uuid7(id);
            if (rc == 0)
                rc = stl_ev_pack_entry(a, tenants[i], id, e, &payload, &len);
            if (rc == 0) {
                /* a commission cost: keyed by the order's merchant, as its
                 * splits (the channel when the event named none) */
                int cost = e->kind == STL_ENTRY_COMMISSION;
                cm_outbox_event ev = {.event_id = id,
                                      .tenant_id = tenants[i],
                                      .key = cost && !e->merchant[0] ? e->p[1].owner : e->merchant,
                                      .type = e->kind == STL_ENTRY_SPLIT ? STL_TYPE_SPLIT_POSTED
                                              : cost                     ? STL_TYPE_COMMISSION_COST
                                                                         : STL_TYPE_SPLIT_REVERSED,
                                      .payload = payload,
                                      .len = len,
                                      .occurred_at_ms = e->posted_ms,
                                      .traceparent = traceparents[i]};
                cm_outbox_rows_add(&ob, &ev);
            }
        }
    }
    /* the postings, flattened */
    cm_buf pc[5];
    const char *pc_p[5];
    cm_buf_columns_begin(pc, 5);
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < entries[i]->n; k++) {
            const stl_posting *q = &entries[i]->p[k];
            cm_buf_array_int(&pc[0], q->account);
            cm_buf_array_int(&pc[1], q->bucket);
            cm_buf_array_int(&pc[2], q->amount);
            cm_buf_array_text_or_null(&pc[3], q->due);
            cm_buf_array_int(&pc[4], q->version);
        }
    }
    if (rc == 0)
        rc = cm_buf_columns_end(c, 16, c_p);
    if (rc == 0)
        rc = cm_buf_columns_end(pc, 5, pc_p);
    if (rc == 0)
        rc = cm_outbox_rows_close(&ob);
    if (rc == 0) {
        const char *p[20 + CM_OUTBOX_ROWS_NPARAMS + 2];
        int len[20 + CM_OUTBOX_ROWS_NPARAMS + 2] = {0};
        int fmt[20 + CM_OUTBOX_ROWS_NPARAMS + 2] = {0};
        for (int i = 0; i < 15; i++)
            p[i] = c[i].p;
        for (int i = 0; i < 5; i++)
            p[15 + i] = pc[i].p;
        cm_outbox_rows_params(&ob, p + 20);
        len[20 + CM_OUTBOX_ROWS_BLOB] = (int)ob.blob.len;
        fmt[20 + CM_OUTBOX_ROWS_BLOB] = 1;
        p[20 + CM_OUTBOX_ROWS_NPARAMS] = l->topic;
        p[20 + CM_OUTBOX_ROWS_NPARAMS + 1] = STL_SOURCE;
        PGresult *r = NULL;
        rc = cm_db_exec_prepared(
            db, "insert entries", "stl_entries",
            "WITH e AS (INSERT INTO entries (entry_id, tenant_id, kind, order_id, merchant_id, "
            "ref, currency, amount, fee, rule_version, capped, source_event_id, posted_at, "
            "account_ids, buckets, amounts, due_dates, versions) SELECT u.id, u.t, u.k, "
            "NULLIF(u.o, '')::uuid, u.m, u.ref, u.c, u.a, u.f, u.v, u.cap <> 0, NULLIF(u.ev, "
            "'')::uuid, "
            "to_timestamp(u.at / 1000.0), ($16::bigint[])[u.off + 1 : u.off + u.n], "
            "($17::smallint[])[u.off + 1 : u.off + u.n], ($18::bigint[])[u.off + 1 : u.off + "
            "u.n], ($19::date[])[u.off + 1 : u.off + u.n], ($20::bigint[])[u.off + 1 : u.off "
            "+ u.n] FROM unnest($1::bigint[], $2::text[], $3::smallint[], $4::text[], "
            "$5::text[], $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], "
            "$11::int[], $12::text[], $13::bigint[], $14::int[], $15::int[]) WITH ORDINALITY AS "
            "u(id, t, k, o, m, ref, c, a, f, v, cap, ev, at, off, n, i) ORDER BY u.i RETURNING "
            "1), o AS (" CM_OUTBOX_ROWS_INSERT("$21", "$22", "$23", "$24", "$25", "$26", "$27",
                                               "$28", "$29", "$30", "$31") ") SELECT (SELECT "
                                                                           "count(*) FROM e), "
                                                                           "(SELECT count(*) "
                                                                           "FROM o)",
            31, p, len, fmt, &r);
        if (rc == 0) {
            if (cm_db_int(r, 0, 0) != (long long)n)
                rc = CM_EIO;
            PQclear(r);
        }
        if (rc == 0 && ob.n)
            rc = cm_outbox_wake_on_commit(db);
    }
    cm_buf_columns_free(c, 16);
    cm_buf_columns_free(pc, 5);
    cm_outbox_rows_free(&ob);
    cm_arena_free(a);
    return rc;
}

/* ---- for the other posting modules ---- */

int stl_ledger_accounts(stl_ledger *l, cm_db *db, const char *tenant, const char *currency,
                        size_t n, const int *types, const char *const *owners, int64_t *ids)
{
    return resolve_accounts(l, db, tenant, currency, n, types, owners, ids);
}

int stl_ledger_post(stl_ledger *l, cm_db *db, const char *const *tenants,
                    const char *const *traceparents, stl_entry *const *entries, size_t n)
{
    if (!n)
        return 0;
    int64_t *ids = calloc(n, sizeof *ids);
    if (!ids)
        return CM_ENOMEM;
    int rc = apply_postings(db, tenants, entries, n, 1);
    if (rc == 0)
        rc = next_entry_ids(db, n, ids);
    for (size_t i = 0; i < n && rc == 0; i++)
        entries[i]->id = ids[i];
    if (rc == 0)
        rc = insert_entries(l, db, tenants, traceparents, entries, n);
    free(ids);
    return rc;
}

/* ---- flush ---- */

static int apply_parked(stl_ledger *l, cm_db *db);

static int post_fresh(stl_ledger *l, cm_db *db)
{
    size_t n = 0;
    for (size_t i = 0; i < l->npays; i++)
        n += l->pays[i].fresh;
    if (!n)
        return 0;
    stl_entry **entries = calloc(n, sizeof *entries);
    const char **tenants = calloc(n, sizeof *tenants);
    const char **tps = calloc(n, sizeof *tps);
    int rc = entries && tenants && tps ? 0 : CM_ENOMEM;
    int64_t posted = now_ms();
    size_t k = 0;
    for (size_t i = 0; i < l->npays && rc == 0; i++) {
        pay *y = &l->pays[i];
        if (!y->fresh)
            continue;
        if (!(y->entry = split_entry(y, posted)))
            rc = CM_ENOMEM;
        entries[k] = y->entry;
        tenants[k] = y->tenant;
        tps[k] = y->traceparent[0] ? y->traceparent : NULL;
        k++;
    }
    if (rc == 0)
        rc = stl_ledger_post(l, db, tenants, tps, entries, n);
    free(entries);
    free(tenants);
    free(tps);
    return rc;
}

int stl_ledger_flush(stl_ledger *l, cm_db *db)
{
    if (!l->npays)
        return 0;
    /* the batch's lookups plan against the tables as they are now */
    int rc = cm_db_custom_plans(db);
    if (rc)
        return rc;
    cm_arena *a = cm_arena_new(64 * 1024);
    if (!a)
        return CM_ENOMEM;
    rc = resolve_rules(l, db, a);
    cm_arena_free(a);
    for (size_t i = 0; i < l->npays && rc == 0; i++) {
        pay *y = &l->pays[i];
        /* without a rule the merchant gets everything and no fee is known */
        static const stl_rule none = {.fee_bearer = STL_FEE_PRO_RATA,
                                      .refund_policy = STL_REFUND_PRO_RATA};
        const stl_rule *rule = y->rule ? &y->rule->rule : &none;
        rc = stl_split_payment(rule, y->cap_bps, y->amount, &y->split);
        if (rc) {
            cm_log_error("split failed", "tenant", y->tenant, "order_id", y->order_id, "error",
                         cm_strerror(rc), NULL);
            break;
        }
        y->held = rule->on_completion;
        for (size_t k = 0; k < y->split.nparts; k++) {
            y->delay[k] = k == 0 ? rule->merchant_delay_days : rule->r[k - 1].delay_days;
            if (y->held)
                memcpy(y->due[k], STL_HELD_DATE, sizeof STL_HELD_DATE);
            else if (y->delay[k] > 0)
                date_add(y->local_date, y->delay[k], y->due[k]);
        }
        int types[STL_PARTS_MAX + 2];
        const char *owners[STL_PARTS_MAX + 2];
        size_t np = parties(y, types, owners);
        rc = resolve_accounts(l, db, y->tenant, y->currency, np, types, owners, y->acct);
    }
    if (rc == 0)
        rc = insert_splits(l, db);
    if (rc == 0)
        rc = post_fresh(l, db);
    if (rc == 0)
        rc = apply_parked(l, db);
    if (rc == 0) {
        for (size_t i = 0; i < l->npays; i++) {
            if (l->pays[i].fresh) {
                atomic_fetch_add(&l->splits, 1);
                if (l->lag && l->pays[i].entry)
                    cm_histogram_observe(
                        l->lag,
                        (double)(l->pays[i].entry->posted_ms - l->pays[i].paid_ms) / 1000.0);
                if (l->pays[i].split.capped)
                    atomic_fetch_add(&l->capped, 1);
            } else {
                atomic_fetch_add(&l->duplicates, 1);
            }
        }
        free_staged(l);
    }
    return rc;
}

/* ---- refunds ---- */

/* the reversal of one refund whose payment is posted (CM_ENOTFOUND when
 * it is not) */
static int reverse(stl_ledger *l, cm_db *db, const stl_refund_in *in)
{
    const char *p[] = {in->tenant, in->order_id, in->refund_id};
    PGresult *r = NULL;
    int rc = cm_db_exec_prepared(
        db, "read order split", "stl_split_for_refund",
        "SELECT s.merchant_id, s.currency, s.amount, s.fee, s.refund_policy, s.rule_version, "
        "s.account_ids::text, s.parts::text, s.due_dates::text, s.refunded, s.rev_fee, "
        "s.rev_parts::text, EXISTS (SELECT 1 FROM entries e WHERE e.tenant_id = $1 AND "
        "e.order_id = $2::uuid AND e.kind = 2 AND e.ref = $3), (SELECT array_agg(a.party_type "
        "ORDER BY x.i)::text FROM unnest(s.account_ids) WITH ORDINALITY x(id, i) JOIN accounts a "
        "ON a.account_id = x.id), (SELECT array_agg(a.owner_id ORDER BY x.i)::text FROM "
        "unnest(s.account_ids) WITH ORDINALITY x(id, i) JOIN accounts a ON a.account_id = x.id) "
        "FROM order_splits s WHERE s.tenant_id = $1 AND s.order_id = $2::uuid FOR UPDATE",
        3, p, NULL, NULL, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return CM_ENOTFOUND;
    }
    if (PQgetvalue(r, 0, 12)[0] == 't') {
        PQclear(r);
        atomic_fetch_add(&l->duplicates, 1);
        return 0; /* this refund was reversed already (under another event id) */
    }
    stl_entry *e = calloc(1, sizeof *e);
    if (!e) {
        PQclear(r);
        return CM_ENOMEM;
    }
    stl_split orig = {0};
    snprintf(e->merchant, sizeof e->merchant, "%s", PQgetvalue(r, 0, 0));
    snprintf(e->currency, sizeof e->currency, "%s", PQgetvalue(r, 0, 1));
    orig.amount = cm_db_int(r, 0, 2);
    orig.fee = cm_db_int(r, 0, 3);
    int policy = (int)cm_db_int(r, 0, 4);
    e->rule_version = cm_db_int(r, 0, 5);
    int64_t acct[STL_PARTS_MAX], rev[STL_PARTS_MAX] = {0}, types[STL_PARTS_MAX] = {0};
    char due[STL_PARTS_MAX][STL_DATE_LEN] = {{0}};
    char owners[STL_PARTS_MAX][STL_ID_MAX + 1] = {{0}};
    size_t np = 0;
    np = cm_db_parse_ints(PQgetvalue(r, 0, 6), acct, STL_PARTS_MAX);
    cm_db_parse_ints(PQgetvalue(r, 0, 7), orig.parts, STL_PARTS_MAX);
    cm_db_parse_words(PQgetvalue(r, 0, 8), &due[0][0], STL_DATE_LEN, STL_PARTS_MAX);
    cm_db_parse_ints(PQgetvalue(r, 0, 11), rev, STL_PARTS_MAX);
    cm_db_parse_ints(PQgetvalue(r, 0, 13), types, STL_PARTS_MAX);
    cm_db_parse_words(PQgetvalue(r, 0, 14), &owners[0][0], sizeof owners[0], STL_PARTS_MAX);
    orig.nparts = np;
    int64_t refunded = cm_db_int(r, 0, 9);
    int64_t rev_fee = cm_db_int(r, 0, 10);
    PQclear(r);
    int64_t out_fee = 0, out[STL_PARTS_MAX] = {0};
    if (strcmp(in->currency, e->currency) != 0 || in->amount <= 0 ||
        in->amount > orig.amount - refunded)
        rc = CM_EINVAL;
    if (rc == 0)
        rc = stl_reverse_refund(policy, &orig, rev_fee, rev, refunded, in->amount, &out_fee, out);
    if (rc) {
        cm_log_error("refund cannot be reversed", "tenant", in->tenant, "order_id", in->order_id,
                     "refund_id", in->refund_id, "error", cm_strerror(rc), NULL);
        free(e);
        return CM_EINVAL;
    }
    /* what of each part is still pending comes out of pending (the run
     * has not made it available), the rest out of available */
    cm_buf c[4];
    const char *c_p[4];
    cm_buf_columns_begin(c, 4);
    for (size_t k = 0; k < np; k++) {
        int64_t left = orig.parts[k] - rev[k];
        int64_t x = out[k] < left ? out[k] : left;
        if (due[k][0] && x > 0) {
            cm_buf_array_int(&c[0], acct[k]);
            cm_buf_array_text(&c[1], due[k]);
            cm_buf_array_int(&c[2], x);
            cm_buf_array_int(&c[3], (long long)k);
        }
    }
    rc = cm_buf_columns_end(c, 4, c_p);
    int from_pending[STL_PARTS_MAX] = {0};
    if (rc == 0) {
        const char *q[] = {c[0].p, c[1].p, c[2].p, c[3].p};
        rc = cm_db_exec_prepared(
            db, "take from pending", "stl_take_pending",
            "UPDATE pending_due p SET amount = p.amount - x.amt FROM unnest($1::bigint[], "
            "$2::date[], $3::bigint[], $4::int[]) AS x(id, due, amt, k) WHERE p.account_id = x.id "
            "AND p.due_date = x.due AND p.amount >= x.amt RETURNING x.k",
            4, q, NULL, NULL, &r);
        if (rc == 0) {
            for (int i = 0; i < PQntuples(r); i++)
                from_pending[strtol(PQgetvalue(r, i, 0), NULL, 10)] = 1;
            PQclear(r);
        }
    }
    cm_buf_columns_free(c, 4);
    if (rc) {
        free(e);
        return rc;
    }
    /* the entry: clearing gives back the refund, the fee and the parts
     * are debited */
    int64_t sys[2];
    int st[2] = {STL_PARTY_CLEARING, STL_PARTY_PROVIDER_FEE};
    const char *so[2] = {"", ""};
    rc = resolve_accounts(l, db, in->tenant, e->currency, 2, st, so, sys);
    if (rc) {
        free(e);
        return rc;
    }
    e->kind = STL_ENTRY_REVERSAL;
    snprintf(e->order_id, sizeof e->order_id, "%s", in->order_id);
    snprintf(e->ref, sizeof e->ref, "%s", in->refund_id);
    snprintf(e->event_id, sizeof e->event_id, "%s", in->event_id);
    e->amount = in->amount;
    e->fee = out_fee;
    e->posted_ms = now_ms();
    e->p[e->n++] = (stl_posting){.account = sys[0],
                                 .bucket = STL_AVAILABLE,
                                 .amount = in->amount,
                                 .type = STL_PARTY_CLEARING};
    if (out_fee)
        e->p[e->n++] = (stl_posting){.account = sys[1],
                                     .bucket = STL_AVAILABLE,
                                     .amount = -out_fee,
                                     .type = STL_PARTY_PROVIDER_FEE};
    for (size_t k = 0; k < np; k++) {
        if (!out[k])
            continue;
        int64_t left = orig.parts[k] - rev[k];
        int64_t x = from_pending[k] ? (out[k] < left ? out[k] : left) : 0;
        char owner[STL_ID_MAX + 1];
        memcpy(owner, owners[k], sizeof owners[k]);
        if (x) {
            stl_posting *q = &e->p[e->n++];
            *q = (stl_posting){
                .account = acct[k], .bucket = STL_PENDING, .amount = -x, .type = (int)types[k]};
            memcpy(q->due, due[k], STL_DATE_LEN);
            snprintf(q->owner, sizeof q->owner, "%s", owner);
        }
        if (out[k] - x) {
            stl_posting *q = &e->p[e->n++];
            *q = (stl_posting){.account = acct[k],
                               .bucket = STL_AVAILABLE,
                               .amount = -(out[k] - x),
                               .type = (int)types[k]};
            snprintf(q->owner, sizeof q->owner, "%s", owner);
        }
        rev[k] += out[k];
    }
    const char *tenants[] = {in->tenant};
    const char *tps[] = {in->traceparent && *in->traceparent ? in->traceparent : NULL};
    stl_entry *es[] = {e};
    rc = apply_postings(db, tenants, es, 1, 0);
    int64_t id = 0;
    if (rc == 0)
        rc = next_entry_ids(db, 1, &id);
    e->id = id;
    if (rc == 0)
        rc = insert_entries(l, db, tenants, tps, es, 1);
    if (rc == 0) {
        char rf[24], rfee[24];
        cm_buf rv = {0};
        cm_buf_array_begin(&rv);
        for (size_t k = 0; k < np; k++)
            cm_buf_array_int(&rv, rev[k]);
        cm_buf_array_end(&rv);
        snprintf(rf, sizeof rf, "%lld", (long long)(refunded + in->amount));
        snprintf(rfee, sizeof rfee, "%lld", (long long)(rev_fee + out_fee));
        const char *q[] = {in->tenant, in->order_id, rf, rfee, rv.p};
        rc = rv.oom ? CM_ENOMEM
                    : cm_db_exec_prepared(db, "update order split", "stl_split_refunded",
                                          "UPDATE order_splits SET refunded = $3, rev_fee = $4, "
                                          "rev_parts = $5::bigint[] WHERE tenant_id = $1 AND "
                                          "order_id = $2::uuid",
                                          5, q, NULL, NULL, NULL);
        cm_buf_free(&rv);
    }
    if (rc == 0)
        atomic_fetch_add(&l->reversals, 1);
    free(e);
    return rc;
}

int stl_ledger_refund(stl_ledger *l, cm_db *db, const stl_refund_in *in)
{
    int rc = stl_ledger_flush(l, db);
    return rc ? rc : reverse(l, db, in);
}

/* the parked refunds of the payments just posted, reversed now */
static int apply_parked(stl_ledger *l, cm_db *db)
{
    cm_buf t = {0}, o = {0};
    cm_buf_array_begin(&t);
    cm_buf_array_begin(&o);
    size_t n = 0;
    for (size_t i = 0; i < l->npays; i++) {
        if (!l->pays[i].fresh)
            continue;
        cm_buf_array_text(&t, l->pays[i].tenant);
        cm_buf_array_text(&o, l->pays[i].order_id);
        n++;
    }
    cm_buf_array_end(&t);
    cm_buf_array_end(&o);
    int rc = t.oom || o.oom ? CM_ENOMEM : 0;
    PGresult *r = NULL;
    if (rc == 0 && n) {
        const char *p[] = {t.p, o.p};
        rc = cm_db_exec_prepared(
            db, "take parked refunds", "stl_unpark",
            "DELETE FROM parked_refunds k USING unnest($1::text[], $2::uuid[]) AS u(t, o) WHERE "
            "k.tenant_id = u.t AND k.order_id = u.o RETURNING k.tenant_id, k.order_id::text, "
            "k.refund_id, k.currency, k.event_id::text, k.traceparent, k.amount, k.parked_at",
            2, p, NULL, NULL, &r);
    }
    cm_buf_free(&t);
    cm_buf_free(&o);
    if (rc || !n)
        return rc;
    /* in the order they were parked */
    int rows = PQntuples(r);
    int *ord = malloc(((size_t)rows + 1) * sizeof *ord);
    if (!ord) {
        PQclear(r);
        return CM_ENOMEM;
    }
    for (int i = 0; i < rows; i++)
        ord[i] = i;
    for (int i = 1; i < rows; i++)
        for (int j = i; j > 0 && strcmp(PQgetvalue(r, ord[j - 1], 7), PQgetvalue(r, ord[j], 7)) > 0;
             j--) {
            int x = ord[j];
            ord[j] = ord[j - 1];
            ord[j - 1] = x;
        }
    for (int k = 0; k < rows && rc == 0; k++) {
        int i = ord[k];
        stl_refund_in in = {.tenant = PQgetvalue(r, i, 0),
                            .order_id = PQgetvalue(r, i, 1),
                            .refund_id = PQgetvalue(r, i, 2),
                            .currency = PQgetvalue(r, i, 3),
                            .event_id = PQgetvalue(r, i, 4),
                            .traceparent = PQgetvalue(r, i, 5),
                            .amount = cm_db_int(r, i, 6)};
        rc = reverse(l, db, &in);
        if (rc == CM_EINVAL) {
            /* a refund that cannot apply to this payment: logged by
             * reverse, dropped (the order service never sends one) */
            rc = 0;
        }
    }
    free(ord);
    PQclear(r);
    return rc;
}

/* ---- completion (rules that settle on completion) ---- */

int stl_ledger_complete(stl_ledger *l, cm_db *db, const char *tenant, const char *order_id,
                        int64_t completed_ms)
{
    int rc = stl_ledger_flush(l, db);
    if (rc)
        return rc;
    char ms[24];
    snprintf(ms, sizeof ms, "%lld", (long long)completed_ms);
    const char *p[] = {tenant, order_id, ms, l->def.tz};
    PGresult *r = NULL;
    rc = cm_db_exec_prepared(
        db, "read held split", "stl_split_held",
        "SELECT s.currency, s.account_ids::text, s.parts::text, s.rev_parts::text, "
        "s.delays::text, to_char((to_timestamp($3 / 1000.0) AT TIME ZONE coalesce((SELECT "
        "time_zone FROM tenant_settings t WHERE t.tenant_id = $1), $4))::date, 'YYYY-MM-DD'), "
        "(SELECT array_agg(a.party_type ORDER BY x.i)::text FROM unnest(s.account_ids) WITH "
        "ORDINALITY x(id, i) JOIN accounts a ON a.account_id = x.id), (SELECT "
        "array_agg(a.owner_id ORDER BY x.i)::text FROM unnest(s.account_ids) WITH ORDINALITY "
        "x(id, i) JOIN accounts a ON a.account_id = x.id) FROM order_splits s WHERE s.tenant_id "
        "= $1 AND s.order_id = $2::uuid AND s.held FOR UPDATE",
        4, p, NULL, NULL, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return 0; /* nothing held: the rule settles from payment, or done already */
    }
    stl_entry *e = calloc(1, sizeof *e);
    if (!e) {
        PQclear(r);
        return CM_ENOMEM;
    }
    int64_t acct[STL_PARTS_MAX], parts[STL_PARTS_MAX], rev[STL_PARTS_MAX] = {0};
    int64_t delays[STL_PARTS_MAX] = {0}, types[STL_PARTS_MAX] = {0};
    char owners[STL_PARTS_MAX][STL_ID_MAX + 1] = {{0}}, day[STL_DATE_LEN];
    snprintf(e->currency, sizeof e->currency, "%s", PQgetvalue(r, 0, 0));
    size_t np = cm_db_parse_ints(PQgetvalue(r, 0, 1), acct, STL_PARTS_MAX);
    cm_db_parse_ints(PQgetvalue(r, 0, 2), parts, STL_PARTS_MAX);
    cm_db_parse_ints(PQgetvalue(r, 0, 3), rev, STL_PARTS_MAX);
    cm_db_parse_ints(PQgetvalue(r, 0, 4), delays, STL_PARTS_MAX);
    snprintf(day, sizeof day, "%s", PQgetvalue(r, 0, 5));
    cm_db_parse_ints(PQgetvalue(r, 0, 6), types, STL_PARTS_MAX);
    cm_db_parse_words(PQgetvalue(r, 0, 7), &owners[0][0], sizeof owners[0], STL_PARTS_MAX);
    PQclear(r);
    /* what is left of each part leaves the held row: due after its delay
     * from the completion date, or available now (T+0: one SETTLE entry) */
    cm_buf c[5];
    const char *c_p[5];
    cm_buf_columns_begin(c, 5);
    char dues[STL_PARTS_MAX][STL_DATE_LEN] = {{0}};
    for (size_t k = 0; k < np; k++) {
        int64_t left = parts[k] - rev[k];
        if (delays[k] > 0)
            date_add(day, (int)delays[k], dues[k]);
        cm_buf_array_text(&c[4], dues[k]);
        if (left <= 0)
            continue;
        cm_buf_array_int(&c[0], acct[k]);
        cm_buf_array_int(&c[1], left);
        cm_buf_array_text(&c[2], dues[k]);
        if (!dues[k][0]) {
            stl_posting *q = &e->p[e->n++];
            *q = (stl_posting){
                .account = acct[k], .bucket = STL_PENDING, .amount = -left, .type = (int)types[k]};
            memcpy(q->due, STL_HELD_DATE, sizeof STL_HELD_DATE);
            memcpy(q->owner, owners[k], sizeof owners[k]);
            q = &e->p[e->n++];
            *q = (stl_posting){
                .account = acct[k], .bucket = STL_AVAILABLE, .amount = left, .type = (int)types[k]};
            memcpy(q->owner, owners[k], sizeof owners[k]);
            e->amount += left;
        }
    }
    cm_buf_array_text(&c[3], tenant);
    rc = cm_buf_columns_end(c, 5, c_p);
    if (rc == 0) {
        const char *q[] = {c[0].p, c[1].p, c[2].p, tenant, order_id, c[4].p};
        rc = cm_db_exec_prepared(
            db, "release held parts", "stl_release_held",
            "WITH x AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS x(id, "
            "amt, due)), h AS (UPDATE pending_due p SET amount = p.amount - x.amt FROM x WHERE "
            "p.account_id = x.id AND p.due_date = '9999-12-31' RETURNING 1), d AS (INSERT INTO "
            "pending_due (account_id, due_date, tenant_id, amount) SELECT id, due::date, $4, amt "
            "FROM x WHERE due <> '' ORDER BY 1, 2 ON CONFLICT (account_id, due_date) DO UPDATE SET "
            "amount = pending_due.amount + excluded.amount RETURNING 1) UPDATE order_splits SET "
            "held = false, due_dates = ARRAY(SELECT NULLIF(d, '')::date FROM unnest($6::text[]) "
            "WITH ORDINALITY AS dd(d, k) ORDER BY k) WHERE tenant_id = $4 AND order_id = $5::uuid",
            6, q, NULL, NULL, NULL);
    }
    cm_buf_columns_free(c, 5);
    if (rc == 0 && e->n) {
        e->kind = STL_ENTRY_SETTLE;
        snprintf(e->ref, sizeof e->ref, "%s", order_id);
        e->posted_ms = now_ms();
        const char *tenants[] = {tenant};
        const char *tps[] = {NULL};
        stl_entry *es[] = {e};
        int64_t id = 0;
        rc = apply_postings(db, tenants, es, 1, 0);
        if (rc == 0)
            rc = next_entry_ids(db, 1, &id);
        e->id = id;
        if (rc == 0)
            rc = insert_entries(l, db, tenants, tps, es, 1);
    }
    free(e);
    return rc;
}
