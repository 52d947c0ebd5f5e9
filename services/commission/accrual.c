/* accruing and clawing back commission: see cms_accrual.h, README.md "Posting a batch" */
#include "cms_accrual.h"

#include "cm_arena.h"
#include "cm_buf.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "cms_partner.h"
#include "cm_park.h"
#include "cms_domain.h"
#include "cms_events.h"
#include "cms_store.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { PAY = 1, REFUND = 2 };

/* one staged event, in arrival order */
typedef struct item {
    int kind;
    char tenant[CMS_TENANT_MAX + 1], order_id[CM_ID_SIZE], channel[CMS_ID_MAX + 1];
    char merchant[CMS_ID_MAX + 1], currency[4], refund_id[CMS_ID_MAX + 1];
    char event_id[CM_ID_SIZE], traceparent[64];
    int64_t amount, paid_ms;
    char *topic; /* refunds: the record, for parking */
    uint8_t *payload;
    size_t len;
    /* resolved (pays) */
    int channel_found, state;
    char parent[CMS_ID_MAX + 1];
    int64_t parent_bps;
    int has_schedule;
    cms_schedule_row sched;
    int64_t pstart_ms, pend_ms;
    int from_park; /* a parked refund taken back for its payment */
    int done;      /* applied, skipped or parked */
} item;

/* a period row, locked */
typedef struct period {
    const char *tenant, *channel, *schedule_id, *currency;
    int64_t revision, start_ms, end_ms;
    int64_t net_sales, posted, orders;
    cms_schedule_row sched;
    int closed; /* the period is closed: no true-ups any more */
    int dirty;
} period;

/* a parent pool, locked */
typedef struct pool {
    const char *tenant, *parent, *currency;
    int64_t start_ms, bps;
    int64_t base, posted;
    int dirty;
} pool;

/* a commission of the batch: read (locked) or made now */
typedef struct comm {
    char tenant[CMS_TENANT_MAX + 1];
    cms_commission c;
    char event_id[CM_ID_SIZE]; /* made now: the payment's event id */
    int fresh, dirty;
} comm;

typedef struct applied {
    const char *tenant, *order_id, *refund_id;
    int64_t amount, clawback;
    const char *event_id;
    int fresh;
} applied;

typedef struct skipped {
    const char *tenant, *order_id, *channel, *reason;
    int fresh;
} skipped;

#define GROW(arr, n, cap) ((n) < (cap) ? 0 : grow((void **)&(arr), &(cap), sizeof *(arr)))

static int grow(void **p, size_t *cap, size_t size)
{
    size_t c = *cap ? *cap * 2 : 64;
    void *q = realloc(*p, c * size);
    if (!q)
        return CM_ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

struct cms_accrual {
    int events_on;
    char topic[256], partner_topic[256];
    cm_histogram *lag;
    item *items;
    size_t nitems, citems;
    /* per flush */
    period *periods;
    size_t nperiods, cperiods;
    pool *pools;
    size_t npools, cpools;
    comm *comms;
    size_t ncomms, ccomms;
    applied *applied;
    size_t napplied, capplied;
    skipped *skipped;
    size_t nskipped, cskipped;
    cms_adjustment *adjs;
    const char **adj_tenants;
    size_t nadjs, cadjs, cadj_tenants;
    cm_outbox_event *evs;
    size_t nevs, cevs;
    cm_arena *arena;
    atomic_uint_fast64_t accrued, clawbacks, duplicates, skipped_n, parked, adjustments;
};

cms_accrual *cms_accrual_new(int events_on, const char *topic, const char *partner_topic,
                             cm_histogram *lag)
{
    cms_accrual *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->events_on = events_on;
    snprintf(a->topic, sizeof a->topic, "%s", topic);
    snprintf(a->partner_topic, sizeof a->partner_topic, "%s", partner_topic);
    a->lag = lag;
    return a;
}

static void free_items(cms_accrual *a)
{
    for (size_t i = 0; i < a->nitems; i++) {
        free(a->items[i].payload);
        free(a->items[i].topic);
    }
    a->nitems = 0;
}

static void reset_flush(cms_accrual *a)
{
    a->nperiods = a->npools = a->ncomms = a->napplied = a->nskipped = a->nadjs = a->nevs = 0;
    if (a->arena)
        cm_arena_reset(a->arena);
}

void cms_accrual_free(cms_accrual *a)
{
    if (!a)
        return;
    free_items(a);
    free(a->items);
    free(a->periods);
    free(a->pools);
    free(a->comms);
    free(a->applied);
    free(a->skipped);
    free(a->adjs);
    free(a->adj_tenants);
    free(a->evs);
    cm_arena_free(a->arena);
    free(a);
}

void cms_accrual_begin(cms_accrual *a)
{
    free_items(a);
    reset_flush(a);
}

void cms_accrual_get_stats(const cms_accrual *a, cms_accrual_stats *out)
{
    out->accrued = atomic_load(&a->accrued);
    out->clawbacks = atomic_load(&a->clawbacks);
    out->duplicates = atomic_load(&a->duplicates);
    out->skipped = atomic_load(&a->skipped_n);
    out->parked = atomic_load(&a->parked);
    out->adjustments = atomic_load(&a->adjustments);
}

static item *new_item(cms_accrual *a)
{
    if (GROW(a->items, a->nitems, a->citems))
        return NULL;
    item *it = &a->items[a->nitems++];
    memset(it, 0, sizeof *it);
    return it;
}

#define COPY(dst, src) snprintf(dst, sizeof dst, "%s", (src) ? (src) : "")

int cms_accrual_stage_pay(cms_accrual *a, const cms_pay_in *in)
{
    item *it = new_item(a);
    if (!it)
        return CM_ENOMEM;
    it->kind = PAY;
    COPY(it->tenant, in->tenant);
    COPY(it->order_id, in->order_id);
    COPY(it->channel, in->channel);
    COPY(it->merchant, in->merchant);
    COPY(it->currency, in->currency);
    COPY(it->event_id, in->event_id);
    COPY(it->traceparent, in->traceparent);
    it->amount = in->amount;
    it->paid_ms = in->paid_ms;
    return 0;
}

static int stage_refund(cms_accrual *a, const cms_refund_in *in, int from_park)
{
    item *it = new_item(a);
    if (!it)
        return CM_ENOMEM;
    it->kind = REFUND;
    it->from_park = from_park;
    it->done = from_park ? 2 : 0; /* waits for its payment in the batch */
    COPY(it->tenant, in->tenant);
    COPY(it->order_id, in->order_id);
    COPY(it->refund_id, in->refund_id);
    COPY(it->currency, in->currency);
    COPY(it->event_id, in->event_id);
    COPY(it->traceparent, in->traceparent);
    it->amount = in->amount;
    if (!from_park) {
        it->topic = strdup(in->topic ? in->topic : "");
        it->payload = malloc(in->len ? in->len : 1);
        if (!it->topic || !it->payload) {
            free(it->topic);
            free(it->payload);
            a->nitems--;
            return CM_ENOMEM;
        }
        memcpy(it->payload, in->payload, in->len);
        it->len = in->len;
    }
    return 0;
}

int cms_accrual_stage_refund(cms_accrual *a, const cms_refund_in *in)
{
    return stage_refund(a, in, 0);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t i64(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* ---- the batch's rows, found by key ---- */

static comm *find_comm(cms_accrual *a, const char *tenant, const char *order_id)
{
    for (size_t i = 0; i < a->ncomms; i++)
        if (strcmp(a->comms[i].c.order_id, order_id) == 0 &&
            strcmp(a->comms[i].tenant, tenant) == 0)
            return &a->comms[i];
    return NULL;
}

static skipped *find_skipped(cms_accrual *a, const char *tenant, const char *order_id)
{
    for (size_t i = 0; i < a->nskipped; i++)
        if (strcmp(a->skipped[i].order_id, order_id) == 0 &&
            strcmp(a->skipped[i].tenant, tenant) == 0)
            return &a->skipped[i];
    return NULL;
}

static applied *find_applied(cms_accrual *a, const char *tenant, const char *order_id,
                             const char *refund_id)
{
    for (size_t i = 0; i < a->napplied; i++)
        if (strcmp(a->applied[i].order_id, order_id) == 0 &&
            strcmp(a->applied[i].refund_id, refund_id) == 0 &&
            strcmp(a->applied[i].tenant, tenant) == 0)
            return &a->applied[i];
    return NULL;
}

/* the reads' statements (read_batch, read_applied) */
#define SQL_UNPARK                                                                                 \
    "WITH d AS (DELETE FROM parked_refunds WHERE (tenant_id, order_id) IN (SELECT * FROM "         \
    "unnest($1::text[] COLLATE \"C\", $2::uuid[])) RETURNING *) SELECT tenant_id, "                \
    "order_id::text, refund_id, currency, event_id::text, traceparent, amount FROM d ORDER BY "    \
    "parked_at, refund_id"
/* a unique-index lookup per order, in key order (an IN over the unnest let
 * a generic plan scan the whole table) */
#define SQL_COMMS                                                                                  \
    "SELECT " CMS_COMMISSION_COLS                                                                  \
    ", tenant_id FROM (SELECT DISTINCT * FROM unnest($1::text[] COLLATE \"C\", "                   \
    "$2::uuid[]) AS u(t, o) ORDER BY 1, 2) u CROSS JOIN LATERAL (SELECT * FROM "                   \
    "commissions k WHERE k.tenant_id = u.t AND k.order_id = u.o FOR UPDATE) c"
#define SQL_SKIPPED                                                                                \
    "SELECT k.tenant_id, k.order_id::text FROM (SELECT DISTINCT * "                                \
    "FROM unnest($1::text[] COLLATE \"C\", $2::uuid[]) AS u(t, "                                   \
    "o)) u CROSS JOIN LATERAL (SELECT * FROM uncommissioned_orders "                               \
    "x WHERE x.tenant_id = u.t AND x.order_id = u.o) k"
#define SQL_APPLIED                                                                                \
    "SELECT k.tenant_id, k.order_id::text, k.refund_id FROM (SELECT "                              \
    "DISTINCT * FROM unnest($1::text[] COLLATE \"C\", $2::uuid[], "                                \
    "$3::text[] COLLATE \"C\") AS u(t, o, r)) u CROSS JOIN LATERAL "                               \
    "(SELECT * FROM refunds_applied x WHERE x.tenant_id = u.t AND "                                \
    "x.order_id = u.o AND x.refund_id = u.r) k"
#define SQL_RESOLVE                                                                                \
    "SELECT c.channel_id IS NOT NULL, coalesce(c.state, 0), coalesce(c.parent_id, ''), "           \
    "coalesce(c.override_bps, 0), s.schedule_id IS NOT NULL, " CMS_SCHEDULE_COLS                   \
    ", (extract(epoch FROM (l.ls AT TIME ZONE s.time_zone)) * 1000)::bigint, (extract(epoch FROM " \
    "((l.ls + CASE s.period WHEN 1 THEN interval '1 week' WHEN 2 THEN interval '1 month' WHEN 3 "  \
    "THEN interval '3 months' ELSE interval '1 year' END) AT TIME ZONE s.time_zone)) * "           \
    "1000)::bigint FROM unnest($1::text[] COLLATE \"C\", $2::text[] COLLATE \"C\", $3::text[] "    \
    "COLLATE \"C\", $4::bigint[]) WITH ORDINALITY AS u(t, ch, cur, ms, i) LEFT JOIN channels c "   \
    "ON c.tenant_id = u.t AND c.channel_id = u.ch LEFT JOIN LATERAL (SELECT s.* FROM "             \
    "tier_schedules s WHERE s.tenant_id = u.t AND s.effective_from <= to_timestamp(u.ms::float8 "  \
    "/ 1000) AND (CASE WHEN c.schedule_id <> '' THEN s.schedule_id = c.schedule_id ELSE c.type = " \
    "ANY (s.channel_types) AND s.currency = u.cur END) AND s.revision = (SELECT max(x.revision) "  \
    "FROM tier_schedules x WHERE x.tenant_id = s.tenant_id AND x.schedule_id = s.schedule_id AND " \
    "x.effective_from <= to_timestamp(u.ms::float8 / 1000)) ORDER BY s.effective_from DESC, "      \
    "s.schedule_id LIMIT 1) s ON c.channel_id IS NOT NULL LEFT JOIN LATERAL (SELECT "              \
    "date_trunc(CASE s.period WHEN 1 THEN 'week' WHEN 2 THEN 'month' WHEN 3 THEN 'quarter' ELSE "  \
    "'year' END, to_timestamp(u.ms::float8 / 1000) AT TIME ZONE s.time_zone) AS ls) l ON true "    \
    "ORDER BY u.i"

/* ---- flush: reads ---- */

/* (tenant, order) of every paid order of the batch, of every item, and
 * the paid orders' channel, currency and paid_at: the reads' parameters */
enum { K_PAY_T, K_PAY_O, K_T, K_O, K_CH, K_CUR, K_MS, K_COUNT };

/* the refunds parked for the batch's paid orders, taken out (in the order
 * they were parked) and staged after the batch: they are applied when
 * their payment is */
static int took_parked(cms_accrual *a, const PGresult *r)
{
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        cms_refund_in in = {.tenant = PQgetvalue(r, i, 0),
                            .order_id = PQgetvalue(r, i, 1),
                            .refund_id = PQgetvalue(r, i, 2),
                            .currency = PQgetvalue(r, i, 3),
                            .event_id = PQgetvalue(r, i, 4),
                            .traceparent = PQgetvalue(r, i, 5),
                            .amount = i64(r, i, 6)};
        rc = stage_refund(a, &in, 1);
    }
    return rc;
}

/* the commissions of the batch's orders (locked) */
static int read_comms(cms_accrual *a, const PGresult *r)
{
    for (int i = 0; i < PQntuples(r); i++) {
        int rc = GROW(a->comms, a->ncomms, a->ccomms);
        if (rc)
            return rc;
        comm *c = &a->comms[a->ncomms++];
        memset(c, 0, sizeof *c);
        cms_store_parse_commission(r, i, &c->c);
        snprintf(c->tenant, sizeof c->tenant, "%s", PQgetvalue(r, i, CMS_COMMISSION_NCOLS));
    }
    return 0;
}

/* the batch's orders that earned nothing */
static int read_skipped(cms_accrual *a, const PGresult *r)
{
    for (int i = 0; i < PQntuples(r); i++) {
        int rc = GROW(a->skipped, a->nskipped, a->cskipped);
        if (rc)
            return rc;
        a->skipped[a->nskipped++] =
            (skipped){.tenant = cm_arena_strdup(a->arena, PQgetvalue(r, i, 0)),
                      .order_id = cm_arena_strdup(a->arena, PQgetvalue(r, i, 1))};
    }
    return 0;
}

/* every paid order's channel, schedule revision (the channel's own, else
 * the newest assigned to its type in the order's currency, as effective
 * at paid_at) and period there, a row per paid item in order */
static int resolved(cms_accrual *a, const PGresult *r, size_t npays)
{
    if ((size_t)PQntuples(r) != npays)
        return CM_EIO;
    for (size_t i = 0, k = 0; i < a->nitems; i++) {
        item *it = &a->items[i];
        if (it->kind != PAY)
            continue;
        int row = (int)k++;
        it->channel_found = PQgetvalue(r, row, 0)[0] == 't';
        it->state = (int)i64(r, row, 1);
        snprintf(it->parent, sizeof it->parent, "%s", PQgetvalue(r, row, 2));
        it->parent_bps = i64(r, row, 3);
        it->has_schedule = PQgetvalue(r, row, 4)[0] == 't';
        if (it->has_schedule) {
            cms_store_parse_schedule(r, row, 5, &it->sched);
            it->pstart_ms = i64(r, row, 5 + CMS_SCHEDULE_NCOLS);
            it->pend_ms = i64(r, row, 6 + CMS_SCHEDULE_NCOLS);
        }
    }
    return 0;
}

/* the refunds of the batch (the parked ones taken included) already
 * applied: a statement of its own, run only when the batch has refunds */
static int read_applied(cms_accrual *a, cm_db *db)
{
    cm_buf rt = {0}, ro = {0}, rr = {0};
    cm_buf_array_begin(&rt);
    cm_buf_array_begin(&ro);
    cm_buf_array_begin(&rr);
    for (size_t i = 0; i < a->nitems; i++) {
        if (a->items[i].kind != REFUND)
            continue;
        cm_buf_array_text(&rt, a->items[i].tenant);
        cm_buf_array_text(&ro, a->items[i].order_id);
        cm_buf_array_text(&rr, a->items[i].refund_id);
    }
    cm_buf_array_end(&rt);
    cm_buf_array_end(&ro);
    cm_buf_array_end(&rr);
    int rc = rt.oom || ro.oom || rr.oom ? CM_ENOMEM : 0;
    PGresult *r = NULL;
    if (rc == 0 && rt.items) {
        const char *p[] = {rt.p, ro.p, rr.p};
        rc = cm_db_exec_prepared(db, "read applied refunds", "cms_read_applied", SQL_APPLIED, 3, p,
                                 NULL, NULL, &r);
        for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
            if ((rc = GROW(a->applied, a->napplied, a->capplied)))
                break;
            a->applied[a->napplied++] =
                (applied){.tenant = cm_arena_strdup(a->arena, PQgetvalue(r, i, 0)),
                          .order_id = cm_arena_strdup(a->arena, PQgetvalue(r, i, 1)),
                          .refund_id = cm_arena_strdup(a->arena, PQgetvalue(r, i, 2))};
        }
        PQclear(r);
    }
    cm_buf_free(&rt);
    cm_buf_free(&ro);
    cm_buf_free(&rr);
    return rc;
}

/* the batch's reads in one round trip (cm_db_pipeline): custom plans for
 * the rest of the transaction, the parked refunds of its paid orders taken
 * out, the known commissions (locked) and uncommissioned orders of its
 * orders, its paid orders resolved. the parked refunds are refunds of the
 * batch's paid orders, so the keys read before they are staged are the
 * keys after; the applied refunds, which they can add to, are read after
 * (read_applied) */
static int read_batch(cms_accrual *a, cm_db *db)
{
    cm_buf k[K_COUNT];
    cm_buf_columns_begin(k, K_COUNT);
    size_t npays = 0;
    for (size_t i = 0; i < a->nitems; i++) {
        const item *it = &a->items[i];
        cm_buf_array_text(&k[K_T], it->tenant);
        cm_buf_array_text(&k[K_O], it->order_id);
        if (it->kind != PAY)
            continue;
        cm_buf_array_text(&k[K_PAY_T], it->tenant);
        cm_buf_array_text(&k[K_PAY_O], it->order_id);
        cm_buf_array_text(&k[K_CH], it->channel);
        cm_buf_array_text(&k[K_CUR], it->currency);
        cm_buf_array_int(&k[K_MS], it->paid_ms);
        npays++;
    }
    const char *p[K_COUNT];
    int rc = cm_buf_columns_end(k, K_COUNT, p);
    const char *pays[] = {p[K_PAY_T], p[K_PAY_O]}, *keys[] = {p[K_T], p[K_O]};
    const char *res[] = {p[K_PAY_T], p[K_CH], p[K_CUR], p[K_MS]};
    /* without payments, no parked refunds to take and no pays to resolve */
    cm_db_stmt st[5];
    size_t n = 0, s_unpark = 0, s_resolve = 0;
    /* the batch's lookups plan against the tables as they are now */
    st[n++] = (cm_db_stmt){.what = "plan per execution", .sql = CM_DB_CUSTOM_PLANS_SQL};
    if (npays)
        s_unpark = n, st[n++] = (cm_db_stmt){.what = "take parked refunds",
                                             .name = "cms_unpark",
                                             .sql = SQL_UNPARK,
                                             .nparams = 2,
                                             .params = pays};
    size_t s_comms = n;
    st[n++] = (cm_db_stmt){.what = "read commissions",
                           .name = "cms_read_comms",
                           .sql = SQL_COMMS,
                           .nparams = 2,
                           .params = keys};
    size_t s_skipped = n;
    st[n++] = (cm_db_stmt){.what = "read uncommissioned orders",
                           .name = "cms_read_skipped",
                           .sql = SQL_SKIPPED,
                           .nparams = 2,
                           .params = keys};
    if (npays)
        s_resolve = n, st[n++] = (cm_db_stmt){.what = "resolve channels and schedules",
                                              .name = "cms_resolve",
                                              .sql = SQL_RESOLVE,
                                              .nparams = 4,
                                              .params = res};
    if (rc == 0)
        rc = cm_db_pipeline(db, st, n);
    cm_buf_columns_free(k, K_COUNT);
    if (rc)
        return rc;
    if (npays)
        rc = took_parked(a, st[s_unpark].res);
    if (rc == 0)
        rc = read_comms(a, st[s_comms].res);
    if (rc == 0)
        rc = read_skipped(a, st[s_skipped].res);
    if (rc == 0 && npays)
        rc = resolved(a, st[s_resolve].res, npays);
    for (size_t i = 0; i < n; i++)
        PQclear(st[i].res);
    if (rc == 0)
        rc = read_applied(a, db);
    return rc;
}

/* ---- flush: the locked rows ---- */

static period *find_period(cms_accrual *a, const char *tenant, const char *channel,
                           const char *schedule_id, int64_t revision, int64_t start_ms)
{
    for (size_t i = 0; i < a->nperiods; i++) {
        period *p = &a->periods[i];
        if (p->revision == revision && p->start_ms == start_ms &&
            strcmp(p->channel, channel) == 0 && strcmp(p->schedule_id, schedule_id) == 0 &&
            strcmp(p->tenant, tenant) == 0)
            return p;
    }
    return NULL;
}

static int want_period(cms_accrual *a, const char *tenant, const char *channel,
                       const char *schedule_id, int64_t revision, int64_t start_ms, int64_t end_ms,
                       const char *currency)
{
    if (find_period(a, tenant, channel, schedule_id, revision, start_ms))
        return 0;
    if (GROW(a->periods, a->nperiods, a->cperiods))
        return CM_ENOMEM;
    period *p = &a->periods[a->nperiods++];
    memset(p, 0, sizeof *p);
    p->tenant = tenant;
    p->channel = channel;
    p->schedule_id = schedule_id;
    p->currency = currency;
    p->revision = revision;
    p->start_ms = start_ms;
    p->end_ms = end_ms;
    return 0;
}

static pool *find_pool(cms_accrual *a, const char *tenant, const char *parent, const char *currency,
                       int64_t start_ms, int64_t bps)
{
    for (size_t i = 0; i < a->npools; i++) {
        pool *p = &a->pools[i];
        if (p->start_ms == start_ms && p->bps == bps && strcmp(p->parent, parent) == 0 &&
            strcmp(p->currency, currency) == 0 && strcmp(p->tenant, tenant) == 0)
            return p;
    }
    return NULL;
}

static int want_pool(cms_accrual *a, const char *tenant, const char *parent, const char *currency,
                     int64_t start_ms, int64_t bps)
{
    if (!*parent || find_pool(a, tenant, parent, currency, start_ms, bps))
        return 0;
    if (GROW(a->pools, a->npools, a->cpools))
        return CM_ENOMEM;
    pool *p = &a->pools[a->npools++];
    memset(p, 0, sizeof *p);
    p->tenant = tenant;
    p->parent = parent;
    p->currency = currency;
    p->start_ms = start_ms;
    p->bps = bps;
    return 0;
}

/* the period rows and pools the batch may touch: created when new, then
 * locked once each in key order, their figures and schedules read */
/* lock_rows' statements */
#define SQL_NEW_PERIODS                                                                            \
    "INSERT INTO channel_periods (tenant_id, channel_id, schedule_id, schedule_revision, "         \
    "period_start, period_end, currency) SELECT u.t, u.c, u.s, u.r, to_timestamp(u.ps::float8 / "  \
    "1000), to_timestamp(u.pe::float8 / 1000), u.cur FROM unnest($1::text[] COLLATE \"C\", "       \
    "$2::text[] COLLATE \"C\", $3::text[] COLLATE \"C\", $4::bigint[], $5::bigint[], "             \
    "$6::bigint[], $7::text[] COLLATE \"C\") AS u(t, c, s, r, ps, pe, cur) ORDER BY 1, 2, 3, 4, "  \
    "5 ON CONFLICT DO NOTHING"
/* one primary-key lookup per row, in key order, whatever the
 * statistics say: an IN (unnest) let a generic plan with
 * empty-table estimates walk every period row of the tenant
 * per batch row */
#define SQL_LOCK_PERIODS                                                                           \
    "SELECT p.tenant_id, p.channel_id, p.schedule_id, p.schedule_revision, (extract(epoch FROM "   \
    "p.period_start) * 1000)::bigint, p.net_sales, p.posted, p.orders, " CMS_SCHEDULE_COLS         \
    ", EXISTS (SELECT 1 FROM channel_periods q WHERE q.tenant_id = p.tenant_id AND q.channel_id "  \
    "= p.channel_id AND q.schedule_id = p.schedule_id AND q.period_start = p.period_start AND "    \
    "q.closed_at IS NOT NULL) FROM (SELECT * FROM unnest($1::text[] COLLATE \"C\", $2::text[] "    \
    "COLLATE \"C\", $3::text[] COLLATE \"C\", $4::bigint[], $5::bigint[]) AS u(t, c, s, r, ps) "   \
    "ORDER BY 1, 2, 3, 4, 5) u CROSS JOIN LATERAL (SELECT * FROM channel_periods k WHERE "         \
    "k.tenant_id = u.t AND k.channel_id = u.c AND k.schedule_id = u.s AND k.schedule_revision = "  \
    "u.r AND k.period_start = to_timestamp(u.ps::float8 / 1000) FOR UPDATE) p JOIN "               \
    "tier_schedules s ON s.tenant_id = p.tenant_id AND s.schedule_id = p.schedule_id AND "         \
    "s.revision = p.schedule_revision"
#define SQL_NEW_POOLS                                                                              \
    "INSERT INTO parent_pools (tenant_id, parent_id, currency, period_start, override_bps) "       \
    "SELECT u.t, u.p, u.c, to_timestamp(u.ps::float8 / 1000), u.b FROM unnest($1::text[] COLLATE " \
    "\"C\", $2::text[] COLLATE \"C\", $3::text[] COLLATE \"C\", $4::bigint[], $5::int[]) AS u(t, " \
    "p, c, ps, b) ORDER BY 1, 2, 3, 4, 5 ON CONFLICT DO NOTHING"
#define SQL_LOCK_POOLS                                                                             \
    "SELECT q.tenant_id, q.parent_id, q.currency, (extract(epoch FROM q.period_start) * "          \
    "1000)::bigint, q.override_bps, q.base, q.posted FROM (SELECT * FROM unnest($1::text[] "       \
    "COLLATE \"C\", $2::text[] COLLATE \"C\", $3::text[] COLLATE \"C\", $4::bigint[], $5::int[]) " \
    "AS u(t, p, c, ps, b) ORDER BY 1, 2, 3, 4, 5) u CROSS JOIN LATERAL (SELECT * FROM "            \
    "parent_pools k WHERE k.tenant_id = u.t AND k.parent_id = u.p AND k.currency = u.c AND "       \
    "k.period_start = to_timestamp(u.ps::float8 / 1000) AND k.override_bps = u.b FOR UPDATE) q"

static int lock_rows(cms_accrual *a, cm_db *db)
{
    int rc = 0;
    for (size_t i = 0; i < a->nitems && rc == 0; i++) {
        item *it = &a->items[i];
        if (it->kind == PAY && it->has_schedule && it->state == CMS_CHANNEL_ACTIVE &&
            strcmp(it->sched.s.currency, it->currency) == 0) {
            rc = want_period(a, it->tenant, it->channel, it->sched.id, it->sched.revision,
                             it->pstart_ms, it->pend_ms, it->sched.s.currency);
            if (rc == 0 && it->parent_bps > 0)
                rc = want_pool(a, it->tenant, it->parent, it->sched.s.currency, it->pstart_ms,
                               it->parent_bps);
        }
    }
    for (size_t i = 0; i < a->ncomms && rc == 0; i++) {
        const cms_commission *c = &a->comms[i].c;
        rc = want_period(a, a->comms[i].tenant, c->channel, c->schedule_id, c->schedule_revision,
                         c->period_start_ms, c->period_end_ms, c->currency);
        if (rc == 0 && c->parent_bps > 0)
            rc = want_pool(a, a->comms[i].tenant, c->parent, c->currency, c->period_start_ms,
                           c->parent_bps);
    }
    if (rc || !a->nperiods)
        return rc;
    cm_buf c[7], d[5];
    cm_buf_columns_begin(c, 7);
    cm_buf_columns_begin(d, 5);
    for (size_t i = 0; i < a->nperiods; i++) {
        period *p = &a->periods[i];
        cm_buf_array_text(&c[0], p->tenant);
        cm_buf_array_text(&c[1], p->channel);
        cm_buf_array_text(&c[2], p->schedule_id);
        cm_buf_array_int(&c[3], p->revision);
        cm_buf_array_int(&c[4], p->start_ms);
        cm_buf_array_int(&c[5], p->end_ms);
        cm_buf_array_text(&c[6], p->currency);
    }
    for (size_t i = 0; i < a->npools; i++) {
        pool *q = &a->pools[i];
        cm_buf_array_text(&d[0], q->tenant);
        cm_buf_array_text(&d[1], q->parent);
        cm_buf_array_text(&d[2], q->currency);
        cm_buf_array_int(&d[3], q->start_ms);
        cm_buf_array_int(&d[4], q->bps);
    }
    const char *c_p[7], *d_p[5];
    if (cm_buf_columns_end(c, 7, c_p) || cm_buf_columns_end(d, 5, d_p))
        rc = CM_ENOMEM;
    /* the rows made when missing, then locked once for the whole batch in
     * key order: the periods (the hot rows), then the parents' pools (a
     * parent's pool only with its child's period), in one round trip */
    cm_db_stmt st[] = {
        {.what = "create period rows",
         .name = "cms_new_periods",
         .sql = SQL_NEW_PERIODS,
         .nparams = 7,
         .params = c_p},
        {.what = "lock period rows",
         .name = "cms_lock_periods",
         .sql = SQL_LOCK_PERIODS,
         .nparams = 5,
         .params = c_p},
        {.what = "create parent pools",
         .name = "cms_new_pools",
         .sql = SQL_NEW_POOLS,
         .nparams = 5,
         .params = d_p},
        {.what = "lock parent pools",
         .name = "cms_lock_pools",
         .sql = SQL_LOCK_POOLS,
         .nparams = 5,
         .params = d_p},
    };
    if (rc == 0)
        rc = cm_db_pipeline(db, st, a->npools ? 4 : 2);
    cm_buf_columns_free(c, 7);
    cm_buf_columns_free(d, 5);
    if (rc)
        return rc;
    PGresult *r = st[1].res;
    if ((size_t)PQntuples(r) != a->nperiods)
        rc = CM_EIO;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        period *q = find_period(a, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                                i64(r, i, 3), i64(r, i, 4));
        if (!q) {
            rc = CM_EIO;
            break;
        }
        q->net_sales = i64(r, i, 5);
        q->posted = i64(r, i, 6);
        q->orders = i64(r, i, 7);
        cms_store_parse_schedule(r, i, 8, &q->sched);
        q->closed = PQgetvalue(r, i, 8 + CMS_SCHEDULE_NCOLS)[0] == 't';
    }
    r = st[3].res;
    if (rc == 0 && a->npools && (size_t)PQntuples(r) != a->npools)
        rc = CM_EIO;
    for (int i = 0; rc == 0 && a->npools && i < PQntuples(r); i++) {
        pool *q = find_pool(a, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                            i64(r, i, 3), i64(r, i, 4));
        if (!q) {
            rc = CM_EIO;
            break;
        }
        q->base = i64(r, i, 5);
        q->posted = i64(r, i, 6);
    }
    for (size_t i = 0; i < sizeof st / sizeof *st; i++)
        PQclear(st[i].res);
    return rc;
}

/* ---- flush: computing ---- */

static int add_event(cms_accrual *a, const char *tenant, const char *key, const char *type,
                     const char *event_id, const uint8_t *payload, size_t len, int64_t at_ms,
                     const char *traceparent)
{
    if (!a->events_on)
        return 0;
    if (GROW(a->evs, a->nevs, a->cevs))
        return CM_ENOMEM;
    a->evs[a->nevs++] = (cm_outbox_event){
        .event_id = cm_arena_strdup(a->arena, event_id),
        .tenant_id = cm_arena_strdup(a->arena, tenant),
        .topic = a->topic,
        .key = cm_arena_strdup(a->arena, key),
        .type = type,
        .source = CMS_SOURCE,
        .payload = payload,
        .len = len,
        .occurred_at_ms = at_ms,
        .traceparent = traceparent && *traceparent ? cm_arena_strdup(a->arena, traceparent) : NULL};
    const cm_outbox_event *e = &a->evs[a->nevs - 1];
    return e->event_id && e->tenant_id && e->key ? 0 : CM_ENOMEM;
}

/* the partner event of a commission; one the contract cannot carry (no
 * brackets, a clawback of 0) is left out */
static int add_partner(cms_accrual *a, const char *tenant, const char *type,
                       const cms_commission *c, const char *refund_id, int64_t clawback,
                       int64_t at_ms, const char *traceparent)
{
    if (!a->events_on)
        return 0;
    if (GROW(a->evs, a->nevs, a->cevs))
        return CM_ENOMEM;
    int rc = cms_partner_event(a->arena, a->partner_topic, type, tenant, c, refund_id, clawback,
                               at_ms, traceparent, &a->evs[a->nevs]);
    if (rc == 0)
        a->nevs++;
    return rc == CM_EINVAL ? 0 : rc;
}

/* an adjustment and its event. state: its order's commission's, FROZEN
 * or PAYABLE (an adjustment is payable with the order that caused it) */
/* of: the commission of the order that caused it (its order, merchant and
 * payer) */
static int adjust(cms_accrual *a, const char *tenant, const char *channel, int kind, int state,
                  const char *currency, int64_t amount, const cms_commission *of,
                  const char *refund_id, const char *child, int64_t start_ms, int64_t at_ms,
                  const char *traceparent)
{
    if (!amount)
        return 0;
    if (GROW(a->adjs, a->nadjs, a->cadjs))
        return CM_ENOMEM;
    if (a->cadj_tenants < a->cadjs) {
        const char **t = realloc(a->adj_tenants, a->cadjs * sizeof *t);
        if (!t)
            return CM_ENOMEM;
        a->adj_tenants = t;
        a->cadj_tenants = a->cadjs;
    }
    cms_adjustment *x = &a->adjs[a->nadjs];
    memset(x, 0, sizeof *x);
    int rc = cm_id_uuid7(x->id);
    if (rc)
        return rc;
    snprintf(x->channel, sizeof x->channel, "%s", channel);
    x->kind = kind;
    snprintf(x->currency, sizeof x->currency, "%s", currency);
    x->amount = amount;
    snprintf(x->order_id, sizeof x->order_id, "%s", of->order_id);
    snprintf(x->merchant, sizeof x->merchant, "%s", of->merchant);
    x->payer = of->payer;
    snprintf(x->refund_id, sizeof x->refund_id, "%s", refund_id ? refund_id : "");
    snprintf(x->child, sizeof x->child, "%s", child ? child : "");
    x->period_start_ms = start_ms;
    x->posted_ms = at_ms;
    x->state = state == CMS_PAYABLE ? CMS_PAYABLE : CMS_FROZEN;
    x->payable_ms = x->state == CMS_PAYABLE ? at_ms : 0;
    a->adj_tenants[a->nadjs] = tenant;
    a->nadjs++;
    if (!a->events_on)
        return 0;
    char id[CM_ID_SIZE];
    const uint8_t *payload;
    size_t len;
    rc = cm_id_uuid7(id);
    if (rc == 0)
        rc = cms_ev_pack_adjusted(a->arena, tenant, id, x, &payload, &len);
    if (rc == 0)
        rc = add_event(a, tenant, channel, CMS_TYPE_ADJUSTED, id, payload, len, at_ms, traceparent);
    /* and for partners */
    if (rc == 0 && !GROW(a->evs, a->nevs, a->cevs)) {
        rc = cms_partner_adjustment_event(a->arena, a->partner_topic, CMS_PARTNER_ADJUSTED, tenant,
                                          x, at_ms, traceparent, &a->evs[a->nevs]);
        if (rc == 0)
            a->nevs++;
    } else if (rc == 0) {
        rc = CM_ENOMEM;
    }
    return rc;
}

/* the parent's share of a child's posting of delta */
static int parent_share(cms_accrual *a, const char *tenant, const cms_commission *c, int state,
                        int64_t delta, const char *refund_id, int64_t at_ms,
                        const char *traceparent)
{
    if (!c->parent[0] || c->parent_bps <= 0 || !delta)
        return 0;
    pool *q = find_pool(a, tenant, c->parent, c->currency, c->period_start_ms, c->parent_bps);
    if (!q)
        return CM_EINTERNAL;
    int64_t share = 0;
    int rc = cms_parent_share(c->parent_bps, q->base, delta, &share);
    if (rc)
        return rc;
    q->base += delta;
    q->posted += share;
    q->dirty = 1;
    return adjust(a, tenant, c->parent, CMS_ADJ_PARENT_SHARE, state, c->currency, share, c,
                  refund_id, c->channel, c->period_start_ms, at_ms, traceparent);
}

static int skip(cms_accrual *a, item *it, const char *reason)
{
    if (GROW(a->skipped, a->nskipped, a->cskipped))
        return CM_ENOMEM;
    a->skipped[a->nskipped++] = (skipped){.tenant = it->tenant,
                                          .order_id = it->order_id,
                                          .channel = it->channel,
                                          .reason = reason,
                                          .fresh = 1};
    atomic_fetch_add(&a->skipped_n, 1);
    cm_log_info("order earns no commission", "tenant", it->tenant, "order_id", it->order_id,
                "channel_id", it->channel, "reason", reason, NULL);
    return 0;
}

static int apply_refund(cms_accrual *a, item *it, int64_t at_ms);

static int accrue(cms_accrual *a, item *it, int64_t at_ms)
{
    if (find_comm(a, it->tenant, it->order_id) || find_skipped(a, it->tenant, it->order_id)) {
        atomic_fetch_add(&a->duplicates, 1);
        return 0; /* accrued (or refused) before, under another event id */
    }
    if (!it->channel_found)
        return skip(a, it, "unknown channel");
    if (it->state != CMS_CHANNEL_ACTIVE)
        return skip(a, it, "channel suspended");
    if (!it->has_schedule)
        return skip(a, it, "no tier schedule for the channel at paid_at");
    if (strcmp(it->sched.s.currency, it->currency) != 0)
        return skip(a, it, "the order's currency is not the schedule's");
    period *p =
        find_period(a, it->tenant, it->channel, it->sched.id, it->sched.revision, it->pstart_ms);
    if (!p)
        return CM_EINTERNAL;
    cms_posting post;
    cms_portion por[CMS_TIERS_MAX];
    size_t npor = 0;
    int rc = cms_accrue(&p->sched.s, p->net_sales, it->amount, &post);
    if (rc == 0)
        rc = cms_portions(&p->sched.s, p->net_sales, it->amount, por, &npor);
    if (rc == 0 && p->closed)
        cms_posting_closed(&post); /* a late payment reprices no one */
    if (rc) {
        cm_log_error("commission cannot accrue", "tenant", it->tenant, "order_id", it->order_id,
                     "error", cm_strerror(rc), NULL);
        return skip(a, it, "accrual overflow");
    }
    if ((rc = GROW(a->comms, a->ncomms, a->ccomms)))
        return rc;
    comm *m = &a->comms[a->ncomms++];
    memset(m, 0, sizeof *m);
    m->fresh = 1;
    snprintf(m->tenant, sizeof m->tenant, "%s", it->tenant);
    memcpy(m->event_id, it->event_id, CM_ID_SIZE);
    cms_commission *c = &m->c;
    if ((rc = cm_id_uuid7(c->id)))
        return rc;
    snprintf(c->channel, sizeof c->channel, "%s", it->channel);
    snprintf(c->order_id, sizeof c->order_id, "%s", it->order_id);
    snprintf(c->merchant, sizeof c->merchant, "%s", it->merchant);
    snprintf(c->currency, sizeof c->currency, "%s", it->currency);
    c->state = CMS_FROZEN;
    c->order_amount = it->amount;
    c->sales_before = p->net_sales;
    c->amount = post.order_amount;
    snprintf(c->schedule_id, sizeof c->schedule_id, "%s", p->schedule_id);
    c->schedule_revision = p->revision;
    c->payer = p->sched.payer;
    c->period_start_ms = p->start_ms;
    c->period_end_ms = p->end_ms;
    c->paid_ms = it->paid_ms;
    c->accrued_ms = at_ms;
    c->nb = npor;
    for (size_t k = 0; k < npor; k++) {
        c->b_from[k] = p->sched.s.t[por[k].tier].from_sales;
        c->b_bps[k] = p->sched.s.t[por[k].tier].rate_bps;
        c->b_sales[k] = por[k].sales;
        c->b_amount[k] = por[k].commission;
    }
    if (it->parent_bps > 0) {
        snprintf(c->parent, sizeof c->parent, "%s", it->parent);
        c->parent_bps = it->parent_bps;
    }
    p->net_sales = post.sales_after;
    p->posted += post.total;
    p->orders++;
    p->dirty = 1;
    atomic_fetch_add(&a->accrued, 1);
    if (a->lag)
        cm_histogram_observe(a->lag, (double)(at_ms - it->paid_ms) / 1000.0);
    if (a->events_on) {
        char id[CM_ID_SIZE];
        const uint8_t *payload;
        size_t len;
        rc = cm_id_uuid7(id);
        if (rc == 0)
            rc = cms_ev_pack_accrued(a->arena, it->tenant, id, c, &payload, &len);
        if (rc == 0)
            rc = add_event(a, it->tenant, c->channel, CMS_TYPE_ACCRUED, id, payload, len, at_ms,
                           it->traceparent);
        if (rc == 0)
            rc =
                add_partner(a, it->tenant, CMS_PARTNER_ACCRUED, c, NULL, 0, at_ms, it->traceparent);
        if (rc)
            return rc;
    }
    rc = adjust(a, it->tenant, c->channel, CMS_ADJ_TRUE_UP, CMS_FROZEN, c->currency, post.true_up,
                c, NULL, NULL, c->period_start_ms, at_ms, it->traceparent);
    if (rc == 0)
        rc = parent_share(a, it->tenant, c, CMS_FROZEN, post.total, NULL, at_ms, it->traceparent);
    /* the refunds that waited for this payment (parked earlier, or earlier
     * in this batch), in the order they came */
    for (size_t i = 0; rc == 0 && i < a->nitems; i++) {
        item *r = &a->items[i];
        if (r->kind == REFUND && r->done == 2 && strcmp(r->order_id, it->order_id) == 0 &&
            strcmp(r->tenant, it->tenant) == 0) {
            r->done = 0;
            rc = apply_refund(a, r, at_ms);
        }
    }
    return rc;
}

/* done: 1 applied or dropped, 2 waiting for its payment (parked) */
static int apply_refund(cms_accrual *a, item *it, int64_t at_ms)
{
    it->done = 1;
    if (find_applied(a, it->tenant, it->order_id, it->refund_id)) {
        atomic_fetch_add(&a->duplicates, 1);
        return 0;
    }
    comm *m = find_comm(a, it->tenant, it->order_id);
    if (!m) {
        if (!find_skipped(a, it->tenant, it->order_id))
            it->done = 2; /* parked, unless its payment comes later in the batch */
        return 0;
    }
    cms_commission *c = &m->c;
    period *p = find_period(a, it->tenant, c->channel, c->schedule_id, c->schedule_revision,
                            c->period_start_ms);
    if (!p)
        return CM_EINTERNAL;
    cms_order o = {.amount = c->order_amount, .commission = c->amount, .refunded = c->refunded};
    cms_posting post;
    int rc = strcmp(it->currency, c->currency) != 0
                 ? CM_EINVAL
                 : cms_clawback(&p->sched.s, p->net_sales, &o, it->amount, &post);
    if (rc) {
        /* a refund that cannot apply to this order (the order service
         * never sends one): logged and dropped */
        cm_log_error("refund cannot be clawed back", "tenant", it->tenant, "order_id", it->order_id,
                     "refund_id", it->refund_id, "error", cm_strerror(rc), NULL);
        return 0;
    }
    if (p->closed)
        cms_posting_closed(&post); /* the order's own clawback, no repricing */
    if ((rc = GROW(a->applied, a->napplied, a->capplied)))
        return rc;
    a->applied[a->napplied++] = (applied){.tenant = it->tenant,
                                          .order_id = it->order_id,
                                          .refund_id = it->refund_id,
                                          .amount = it->amount,
                                          .clawback = -post.order_amount,
                                          .event_id = it->event_id,
                                          .fresh = 1};
    /* after PAYABLE (or SETTLED) the commission keeps its state and
     * payable figure; what the refund takes back is a negative CLAWBACK
     * item, payable at once, netted from the channel's next payout */
    int was = c->state == CMS_PAYABLE || c->state == CMS_SETTLED ? CMS_PAYABLE : CMS_FROZEN;
    c->refunded += it->amount;
    c->clawed_back -= post.order_amount;
    c->clawed_ms = at_ms;
    if (c->refunded == c->order_amount && was == CMS_FROZEN)
        c->state = CMS_CLAWED_BACK;
    m->dirty = 1;
    p->net_sales = post.sales_after;
    p->posted += post.total;
    p->dirty = 1;
    atomic_fetch_add(&a->clawbacks, 1);
    if (a->events_on) {
        char id[CM_ID_SIZE];
        const uint8_t *payload;
        size_t len;
        rc = cm_id_uuid7(id);
        if (rc == 0)
            rc = cms_ev_pack_clawed_back(a->arena, it->tenant, id, c, it->refund_id,
                                         -post.order_amount, &payload, &len);
        if (rc == 0)
            rc = add_event(a, it->tenant, c->channel, CMS_TYPE_CLAWED_BACK, id, payload, len, at_ms,
                           it->traceparent);
        if (rc == 0)
            rc = add_partner(a, it->tenant, CMS_PARTNER_CLAWED_BACK, c, it->refund_id,
                             -post.order_amount, at_ms, it->traceparent);
        if (rc)
            return rc;
    }
    if (was == CMS_PAYABLE)
        rc =
            adjust(a, it->tenant, c->channel, CMS_ADJ_CLAWBACK, was, c->currency, post.order_amount,
                   c, it->refund_id, NULL, c->period_start_ms, at_ms, it->traceparent);
    if (rc == 0)
        rc = adjust(a, it->tenant, c->channel, CMS_ADJ_TRUE_UP, was, c->currency, post.true_up, c,
                    it->refund_id, NULL, c->period_start_ms, at_ms, it->traceparent);
    if (rc == 0)
        rc = parent_share(a, it->tenant, c, was, post.total, it->refund_id, at_ms, it->traceparent);
    return rc;
}

/* ---- flush: writes ---- */

/* the statements of a batch turn unix ms into timestamptz as
 * to_timestamp(ms::float8 / 1000), not ms / 1000.0: numeric division
 * cost ~0.35 µs a value (five per commission), and the float8 path gives
 * the same instant for every ms up to year 9999 (checked on 6 million
 * random values) */
/* the writes' statements (write_commissions, write_rows) */
#define SQL_INSERT_COMMS                                                                           \
    "INSERT INTO commissions (commission_id, tenant_id, channel_id, order_id, merchant_id, "       \
    "currency, state, order_amount, sales_before, amount, refunded, clawed_back, schedule_id, "    \
    "schedule_revision, period_start, period_end, paid_at, bracket_from, bracket_bps, "            \
    "bracket_sales, bracket_amount, parent_id, parent_bps, accrued_at, clawed_back_at, payer, "    \
    "source_event_id) SELECT u.id::uuid, u.t, u.ch, u.o::uuid, u.m, u.cur, u.st, u.oa, u.sb, "     \
    "u.a, u.rf, u.cb, u.s, u.r, to_timestamp(u.ps::float8 / 1000), to_timestamp(u.pe::float8 / "   \
    "1000), to_timestamp(u.pa::float8 / 1000), u.bf::bigint[], u.bb::int[], u.bs::bigint[], "      \
    "u.ba::bigint[], u.par, u.pb, to_timestamp(u.at::float8 / 1000), CASE WHEN u.rf > 0 THEN "     \
    "to_timestamp(u.at::float8 / 1000) END, u.py, u.ev::uuid FROM unnest($1::text[] COLLATE "      \
    "\"C\", $2::text[] COLLATE \"C\", $3::text[] COLLATE \"C\", $4::text[] COLLATE \"C\", "        \
    "$5::text[] COLLATE \"C\", $6::text[] COLLATE \"C\", $7::int[], $8::bigint[], $9::bigint[], "  \
    "$10::bigint[], $11::bigint[], $12::bigint[], $13::text[] COLLATE \"C\", $14::bigint[], "      \
    "$15::bigint[], $16::bigint[], $17::bigint[], $18::text[] COLLATE \"C\", $19::text[] COLLATE " \
    "\"C\", $20::text[] COLLATE \"C\", $21::text[] COLLATE \"C\", $22::text[] COLLATE \"C\", "     \
    "$23::int[], $24::bigint[], $25::smallint[], $26::text[] COLLATE \"C\") AS u(id, t, ch, o, "   \
    "m, cur, st, oa, sb, a, rf, cb, s, r, ps, pe, pa, bf, bb, bs, ba, par, pb, at, py, ev)"
#define SQL_UPDATE_COMMS                                                                           \
    "UPDATE commissions c SET refunded = u.rf, clawed_back = u.cb, state = u.st, clawed_back_at "  \
    "= to_timestamp(u.at::float8 / 1000) FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], "     \
    "$4::int[], $5::bigint[]) AS u(id, rf, cb, st, at) WHERE c.commission_id = u.id"
#define SQL_UPDATE_PERIODS                                                                         \
    "UPDATE channel_periods p SET net_sales = u.ns, posted = u.po, orders = u.n, updated_at = "    \
    "now() FROM unnest($1::text[] COLLATE \"C\", $2::text[] COLLATE \"C\", $3::text[] COLLATE "    \
    "\"C\", $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[]) AS u(t, c, s, "  \
    "r, ps, ns, po, n) WHERE p.tenant_id = u.t AND p.channel_id = u.c AND p.schedule_id = u.s "    \
    "AND p.schedule_revision = u.r AND p.period_start = to_timestamp(u.ps::float8 / 1000)"
#define SQL_UPDATE_POOLS                                                                           \
    "UPDATE parent_pools q SET base = u.b, posted = u.po FROM unnest($1::text[] COLLATE \"C\", "   \
    "$2::text[] COLLATE \"C\", $3::text[] COLLATE \"C\", $4::bigint[], $5::int[], $6::bigint[], "  \
    "$7::bigint[]) AS u(t, p, c, ps, bps, b, po) WHERE q.tenant_id = u.t AND q.parent_id = u.p "   \
    "AND q.currency = u.c AND q.period_start = to_timestamp(u.ps::float8 / 1000) AND "             \
    "q.override_bps = u.bps"
#define SQL_INSERT_ADJS                                                                            \
    "INSERT INTO adjustments (adjustment_id, tenant_id, channel_id, kind, currency, amount, "      \
    "order_id, refund_id, child_id, period_start, posted_at, state, payable_at, payer, "           \
    "merchant_id) SELECT u.id::uuid, u.t, u.c, u.k, u.cur, u.a, u.o::uuid, u.rf, u.ch, "           \
    "to_timestamp(u.ps::float8 / 1000), to_timestamp(u.at::float8 / 1000), u.st, CASE WHEN u.st "  \
    "= 2 THEN to_timestamp(u.at::float8 / 1000) END, u.py, u.m FROM unnest($1::text[] COLLATE "    \
    "\"C\", $2::text[] COLLATE \"C\", $3::text[] COLLATE \"C\", $4::int[], $5::text[] COLLATE "    \
    "\"C\", $6::bigint[], $7::text[] COLLATE \"C\", $8::text[] COLLATE \"C\", $9::text[] COLLATE " \
    "\"C\", $10::bigint[], $11::bigint[], $12::int[], $13::smallint[], $14::text[] COLLATE "       \
    "\"C\") AS u(id, t, c, k, cur, a, o, rf, ch, ps, at, st, py, m)"
#define SQL_INSERT_APPLIED                                                                         \
    "INSERT INTO refunds_applied (tenant_id, order_id, refund_id, amount, clawback, event_id) "    \
    "SELECT u.t, u.o::uuid, u.r, u.a, u.c, u.e::uuid FROM unnest($1::text[] COLLATE \"C\", "       \
    "$2::text[] COLLATE \"C\", $3::text[] COLLATE \"C\", $4::bigint[], $5::bigint[], $6::text[] "  \
    "COLLATE \"C\") AS u(t, o, r, a, c, e)"
#define SQL_INSERT_SKIPPED                                                                         \
    "INSERT INTO uncommissioned_orders (tenant_id, order_id, channel_id, reason) SELECT u.t, "     \
    "u.o::uuid, u.c, u.r FROM unnest($1::text[] COLLATE \"C\", $2::text[] COLLATE \"C\", "         \
    "$3::text[] COLLATE \"C\", $4::text[] COLLATE \"C\") AS u(t, o, c, r) ON CONFLICT DO NOTHING"

/* the batch's writes: their statements, built one after the other while
 * nothing is sent, then sent in one round trip (cm_db_pipeline) with the
 * outbox rows; the column buffers their parameters point into live here
 * until then */
#define WRITE_COLUMNS 80
#define WRITE_OUTBOX 8 /* outbox inserts of up to 1,000 rows per pipeline */
typedef struct writes {
    cm_db_stmt st[CM_DB_PIPELINE_MAX];
    size_t n;
    cm_buf col[WRITE_COLUMNS];
    const char *param[WRITE_COLUMNS];
    size_t ncol;
    cm_outbox_insert *outbox[WRITE_OUTBOX];
    size_t nout;
} writes;

/* n columns of w, begun (write_commissions and write_rows take 70) */
static cm_buf *write_columns(writes *w, size_t n)
{
    cm_buf *c = &w->col[w->ncol];
    cm_buf_columns_begin(c, n);
    w->ncol += n;
    return c;
}

/* the statement over the n columns at c, when it has rows */
static int write_stmt(writes *w, cm_buf *c, size_t n, size_t rows, const char *what,
                      const char *name, const char *sql)
{
    const char **p = &w->param[c - w->col];
    if (cm_buf_columns_end(c, n, p))
        return CM_ENOMEM;
    if (rows)
        w->st[w->n++] =
            (cm_db_stmt){.what = what, .name = name, .sql = sql, .nparams = (int)n, .params = p};
    return 0;
}

/* sends what w holds, then lets go of the outbox rows sent */
static int send_writes(writes *w, cm_db *db)
{
    int rc = w->n ? cm_db_pipeline(db, w->st, w->n) : 0;
    for (size_t i = 0; i < w->n; i++)
        PQclear(w->st[i].res);
    /* a batch's fresh rows never collide (new ids, keys read under lock):
     * a duplicate (an outbox event id used before?) is worth a warning;
     * cm_db logged the statement and its constraint at info */
    if (rc == CM_EEXIST)
        cm_log_warn("a write of the accrual batch hit a unique key", NULL);
    if (rc == 0 && w->nout)
        rc = cm_outbox_wake_on_commit(db);
    w->n = 0;
    for (size_t i = 0; i < w->nout; i++)
        cm_outbox_insert_free(w->outbox[i]);
    w->nout = 0;
    return rc;
}

static void writes_free(writes *w)
{
    cm_buf_columns_free(w->col, w->ncol);
    for (size_t i = 0; i < w->nout; i++)
        cm_outbox_insert_free(w->outbox[i]);
    free(w);
}

/* the batch's events into the outbox, up to 1,000 rows per insert,
 * in order */
static int write_outbox(cms_accrual *a, writes *w, cm_db *db)
{
    int rc = 0;
    for (size_t off = 0; rc == 0 && off < a->nevs; off += 1000) {
        size_t k = a->nevs - off < 1000 ? a->nevs - off : 1000;
        if (w->nout == WRITE_OUTBOX || w->n == CM_DB_PIPELINE_MAX)
            rc = send_writes(w, db);
        if (rc == 0)
            rc = cm_outbox_insert_stmt(&w->outbox[w->nout], a->evs + off, k, &w->st[w->n]);
        if (rc == 0) {
            w->nout++;
            w->n++;
        }
    }
    return rc;
}

static int write_commissions(cms_accrual *a, writes *w)
{
    /* 25 columns and the payments' event ids */
    cm_buf *c = write_columns(w, 26);
    size_t nf = 0, nu = 0;
    for (size_t i = 0; i < a->ncomms; i++) {
        comm *m = &a->comms[i];
        const cms_commission *x = &m->c;
        if (m->fresh) {
            cm_buf b[4];
            cm_buf_columns_begin(b, 4);
            for (size_t k = 0; k < x->nb; k++) {
                cm_buf_array_int(&b[0], x->b_from[k]);
                cm_buf_array_int(&b[1], x->b_bps[k]);
                cm_buf_array_int(&b[2], x->b_sales[k]);
                cm_buf_array_int(&b[3], x->b_amount[k]);
            }
            for (int k = 0; k < 4; k++) {
                cm_buf_array_end(&b[k]);
                cm_buf_array_text(&c[17 + k], b[k].p ? b[k].p : "{}");
                if (b[k].oom)
                    c[0].oom = 1;
                cm_buf_free(&b[k]);
            }
            cm_buf_array_text(&c[0], x->id);
            cm_buf_array_text(&c[1], m->tenant);
            cm_buf_array_text(&c[2], x->channel);
            cm_buf_array_text(&c[3], x->order_id);
            cm_buf_array_text(&c[4], x->merchant);
            cm_buf_array_text(&c[5], x->currency);
            cm_buf_array_int(&c[6], x->state);
            cm_buf_array_int(&c[7], x->order_amount);
            cm_buf_array_int(&c[8], x->sales_before);
            cm_buf_array_int(&c[9], x->amount);
            cm_buf_array_int(&c[10], x->refunded);
            cm_buf_array_int(&c[11], x->clawed_back);
            cm_buf_array_text(&c[12], x->schedule_id);
            cm_buf_array_int(&c[13], x->schedule_revision);
            cm_buf_array_int(&c[14], x->period_start_ms);
            cm_buf_array_int(&c[15], x->period_end_ms);
            cm_buf_array_int(&c[16], x->paid_ms);
            cm_buf_array_text(&c[21], x->parent);
            cm_buf_array_int(&c[22], x->parent_bps);
            cm_buf_array_int(&c[23], x->accrued_ms);
            cm_buf_array_int(&c[24], x->payer);
            nf++;
        }
    }
    /* the event id of each fresh commission's payment */
    for (size_t i = 0; i < a->ncomms; i++)
        if (a->comms[i].fresh)
            cm_buf_array_text(&c[25], a->comms[i].event_id);
    int rc = write_stmt(w, c, 26, nf, "insert commissions", "cms_insert_comms", SQL_INSERT_COMMS);

    /* the clawbacks of commissions accrued before: their final figures */
    cm_buf *u = write_columns(w, 5);
    for (size_t i = 0; i < a->ncomms; i++) {
        comm *m = &a->comms[i];
        if (m->fresh || !m->dirty)
            continue;
        cm_buf_array_text(&u[0], m->c.id);
        cm_buf_array_int(&u[1], m->c.refunded);
        cm_buf_array_int(&u[2], m->c.clawed_back);
        cm_buf_array_int(&u[3], m->c.state);
        cm_buf_array_int(&u[4], m->c.clawed_ms);
        nu++;
    }
    if (rc == 0)
        rc = write_stmt(w, u, 5, nu, "update commissions", "cms_update_comms", SQL_UPDATE_COMMS);
    return rc;
}

static int write_rows(cms_accrual *a, writes *w)
{
    /* one update per period row */
    cm_buf *c = write_columns(w, 8);
    size_t n = 0;
    for (size_t i = 0; i < a->nperiods; i++) {
        period *p = &a->periods[i];
        if (!p->dirty)
            continue;
        cm_buf_array_text(&c[0], p->tenant);
        cm_buf_array_text(&c[1], p->channel);
        cm_buf_array_text(&c[2], p->schedule_id);
        cm_buf_array_int(&c[3], p->revision);
        cm_buf_array_int(&c[4], p->start_ms);
        cm_buf_array_int(&c[5], p->net_sales);
        cm_buf_array_int(&c[6], p->posted);
        cm_buf_array_int(&c[7], p->orders);
        n++;
    }
    int rc = write_stmt(w, c, 8, n, "update period rows", "cms_update_periods", SQL_UPDATE_PERIODS);
    /* one update per pool */
    cm_buf *d = write_columns(w, 7);
    n = 0;
    for (size_t i = 0; i < a->npools; i++) {
        pool *q = &a->pools[i];
        if (!q->dirty)
            continue;
        cm_buf_array_text(&d[0], q->tenant);
        cm_buf_array_text(&d[1], q->parent);
        cm_buf_array_text(&d[2], q->currency);
        cm_buf_array_int(&d[3], q->start_ms);
        cm_buf_array_int(&d[4], q->bps);
        cm_buf_array_int(&d[5], q->base);
        cm_buf_array_int(&d[6], q->posted);
        n++;
    }
    if (rc == 0)
        rc = write_stmt(w, d, 7, n, "update parent pools", "cms_update_pools", SQL_UPDATE_POOLS);
    /* adjustments */
    cm_buf *e = write_columns(w, 14);
    for (size_t i = 0; i < a->nadjs; i++) {
        const cms_adjustment *x = &a->adjs[i];
        cm_buf_array_text(&e[0], x->id);
        cm_buf_array_text(&e[1], a->adj_tenants[i]);
        cm_buf_array_text(&e[2], x->channel);
        cm_buf_array_int(&e[3], x->kind);
        cm_buf_array_text(&e[4], x->currency);
        cm_buf_array_int(&e[5], x->amount);
        cm_buf_array_text(&e[6], x->order_id);
        cm_buf_array_text(&e[7], x->refund_id);
        cm_buf_array_text(&e[8], x->child);
        cm_buf_array_int(&e[9], x->period_start_ms);
        cm_buf_array_int(&e[10], x->posted_ms);
        cm_buf_array_int(&e[11], x->state);
        cm_buf_array_int(&e[12], x->payer);
        cm_buf_array_text(&e[13], x->merchant);
    }
    if (rc == 0)
        rc = write_stmt(w, e, 14, a->nadjs, "insert adjustments", "cms_insert_adjs",
                        SQL_INSERT_ADJS);
    /* refunds applied and orders that earned nothing */
    cm_buf *f = write_columns(w, 6);
    n = 0;
    for (size_t i = 0; i < a->napplied; i++) {
        const applied *x = &a->applied[i];
        if (!x->fresh)
            continue;
        cm_buf_array_text(&f[0], x->tenant);
        cm_buf_array_text(&f[1], x->order_id);
        cm_buf_array_text(&f[2], x->refund_id);
        cm_buf_array_int(&f[3], x->amount);
        cm_buf_array_int(&f[4], x->clawback);
        cm_buf_array_text(&f[5], x->event_id);
        n++;
    }
    if (rc == 0)
        rc = write_stmt(w, f, 6, n, "insert applied refunds", "cms_insert_applied",
                        SQL_INSERT_APPLIED);
    cm_buf *g = write_columns(w, 4);
    n = 0;
    for (size_t i = 0; i < a->nskipped; i++) {
        const skipped *x = &a->skipped[i];
        if (!x->fresh)
            continue;
        cm_buf_array_text(&g[0], x->tenant);
        cm_buf_array_text(&g[1], x->order_id);
        cm_buf_array_text(&g[2], x->channel);
        cm_buf_array_text(&g[3], x->reason);
        n++;
    }
    if (rc == 0)
        rc = write_stmt(w, g, 4, n, "insert uncommissioned orders", "cms_insert_skipped",
                        SQL_INSERT_SKIPPED);
    return rc;
}

/* refunds still waiting for their payment: parked (rare: one statement
 * each) */
static int park(cms_accrual *a, cm_db *db)
{
    int rc = 0;
    for (size_t i = 0; i < a->nitems && rc == 0; i++) {
        item *it = &a->items[i];
        if (it->kind != REFUND || it->done != 2)
            continue;
        if (it->from_park) {
            /* taken out for a payment that did not accrue after all */
            continue;
        }
        cm_park_refund pk = {.tenant = it->tenant,
                             .order_id = it->order_id,
                             .refund_id = it->refund_id,
                             .event_id = it->event_id,
                             .currency = it->currency,
                             .amount = it->amount,
                             .traceparent = it->traceparent,
                             .topic = it->topic,
                             .payload = it->payload,
                             .len = it->len};
        rc = cm_park_add(db, &pk);
        if (rc == 0) {
            atomic_fetch_add(&a->parked, 1);
            cm_log_warn("refund before its payment: parked", "tenant", it->tenant, "order_id",
                        it->order_id, "refund_id", it->refund_id, NULL);
        }
    }
    return rc;
}

int cms_accrual_flush(cms_accrual *a, cm_db *db)
{
    if (!a->nitems)
        return 0;
    reset_flush(a);
    if (!a->arena && !(a->arena = cm_arena_new(64 * 1024)))
        return CM_ENOMEM;
    size_t staged = a->nitems;
    int rc = read_batch(a, db);
    if (rc == 0)
        rc = lock_rows(a, db);
    int64_t at = now_ms();
    /* in arrival order; the parked refunds (staged after the batch) only
     * through their payment */
    for (size_t i = 0; i < staged && rc == 0; i++) {
        item *it = &a->items[i];
        if (it->kind == PAY)
            rc = accrue(a, it, at);
        else
            rc = apply_refund(a, it, at);
    }
    /* every write in one round trip, then the refunds still waiting for
     * their payment (rare: one statement each; counted and logged once
     * the rest is written) */
    writes *w = rc == 0 ? calloc(1, sizeof *w) : NULL;
    if (rc == 0 && !w)
        rc = CM_ENOMEM;
    if (rc == 0)
        rc = write_commissions(a, w);
    if (rc == 0)
        rc = write_rows(a, w);
    if (rc == 0)
        rc = write_outbox(a, w, db);
    if (rc == 0)
        rc = send_writes(w, db);
    if (rc == 0 && a->nadjs)
        atomic_fetch_add(&a->adjustments, a->nadjs);
    if (w)
        writes_free(w);
    if (rc == 0)
        rc = park(a, db);
    if (rc == 0) {
        free_items(a);
        reset_flush(a);
    }
    return rc;
}
