/*
 * CommissionService.CheckInvariants: the commission books checked the way
 * the tests and the benchmark check them, as an operator can in
 * production (read only). A period row that is open holds what its
 * schedule revision's formula gives on its net sales (every accrual,
 * clawback and true-up keeps that, README "Posting a batch"). A closed
 * period is final (README "Closing a period": late events post their own
 * amounts), so its rows are counted, not checked.
 */
#include "cms_invariants.h"

#include "cm_err.h"
#include "cm_id.h"
#include "cm_pb.h"
#include "cm_service.h"
#include "cms_domain.h"
#include "cms_store.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commerce/commission/v1/commission_service.pb-c.h"

#define KEY_RULE "1-64 characters from [A-Za-z0-9._:-]"
#define ROWS_MAX 100000
#define VIOLATIONS_MAX 1000

typedef struct prow {
    char channel[CMS_ID_MAX + 1], schedule[CMS_ID_MAX + 1], currency[4];
    int64_t revision, start_ms, net, posted;
    int closed;
} prow;

/* the schedule revisions met so far (a tenant has few) */
typedef struct sched_cache {
    cms_schedule_row *rows;
    size_t n, cap;
} sched_cache;

static const cms_schedule *schedule_of(cm_db *db, const char *tenant, sched_cache *c,
                                       const char *id, int64_t revision, int *rc)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->rows[i].revision == revision && strcmp(c->rows[i].id, id) == 0)
            return &c->rows[i].s;
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 8;
        cms_schedule_row *r = realloc(c->rows, cap * sizeof *r);
        if (!r) {
            *rc = CM_ENOMEM;
            return NULL;
        }
        c->rows = r;
        c->cap = cap;
    }
    *rc = cms_store_get_schedule(db, tenant, id, revision, &c->rows[c->n]);
    if (*rc)
        return NULL;
    return &c->rows[c->n++].s;
}

static int add_violation(cm_rpc_ctx *ctx, Commerce__Commission__V1__CheckInvariantsResponse *resp,
                         const prow *r, int64_t net, int64_t posted, int64_t expected,
                         const char *what)
{
    if (resp->n_violations >= VIOLATIONS_MAX) {
        resp->truncated = 1;
        return 0;
    }
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    Commerce__Commission__V1__CommissionViolation *v = cm_arena_calloc(a, 1, sizeof *v);
    if (!v)
        return CM_ENOMEM;
    commerce__commission__v1__commission_violation__init(v);
    v->channel_id = cm_arena_strdup(a, r->channel);
    v->tier_schedule_id = cm_arena_strdup(a, r->schedule);
    v->tier_schedule_revision = r->revision;
    v->period_start = cm_pb_timestamp(a, r->start_ms);
    v->net_sales = cm_pb_money(a, net, r->currency);
    v->posted = cm_pb_money(a, posted, r->currency);
    v->expected = cm_pb_money(a, expected, r->currency);
    v->description = cm_arena_strdup(a, what);
    if (!v->channel_id || !v->tier_schedule_id || !v->net_sales || !v->posted || !v->expected ||
        !v->description)
        return CM_ENOMEM;
    resp->violations[resp->n_violations++] = v;
    return 0;
}

int cms_rpc_check_invariants(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Commission__V1__CheckInvariantsRequest *req = (const void *)in;
    Commerce__Commission__V1__CheckInvariantsResponse *resp = (void *)out;
    if (*req->channel_id && !cm_id_key_valid(req->channel_id, CMS_ID_MAX))
        return cm_rpc_fail_field(ctx, "channel_id", KEY_RULE ", or empty for every channel");
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    cm_db *db = cm_service_db(ctx);
    char lim[16];
    snprintf(lim, sizeof lim, "%d", ROWS_MAX + 1);
    const char *p[] = {tenant, req->channel_id, lim};
    PGresult *r = NULL;
    /* a closed period's rows together, so one group after another */
    int rc = cm_db_read(db, "read period rows",
                        "SELECT channel_id, schedule_id, schedule_revision, (extract(epoch FROM "
                        "period_start) * 1000)::bigint, currency, net_sales, posted, closed_at IS "
                        "NOT NULL FROM channel_periods WHERE tenant_id = $1 AND ($2 = '' OR "
                        "channel_id = $2) ORDER BY channel_id, schedule_id, period_start, "
                        "schedule_revision LIMIT $3::int",
                        3, p, &r);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not read the period rows");
    int n = PQntuples(r);
    if (n > ROWS_MAX) {
        n = ROWS_MAX;
        resp->truncated = 1;
    }
    prow *rows = calloc((size_t)(n ? n : 1), sizeof *rows);
    resp->violations = cm_rpc_alloc(ctx, VIOLATIONS_MAX * sizeof *resp->violations);
    if (!rows || !resp->violations) {
        free(rows);
        PQclear(r);
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "period rows");
    }
    for (int i = 0; i < n; i++) {
        prow *x = &rows[i];
        snprintf(x->channel, sizeof x->channel, "%s", PQgetvalue(r, i, 0));
        snprintf(x->schedule, sizeof x->schedule, "%s", PQgetvalue(r, i, 1));
        x->revision = strtoll(PQgetvalue(r, i, 2), NULL, 10);
        x->start_ms = strtoll(PQgetvalue(r, i, 3), NULL, 10);
        snprintf(x->currency, sizeof x->currency, "%s", PQgetvalue(r, i, 4));
        x->net = strtoll(PQgetvalue(r, i, 5), NULL, 10);
        x->posted = strtoll(PQgetvalue(r, i, 6), NULL, 10);
        x->closed = PQgetvalue(r, i, 7)[0] == 't';
    }
    PQclear(r);
    sched_cache cache = {0};
    for (int i = 0; rc == 0 && i < n;) {
        /* one period: the rows of a channel, schedule and start */
        int j = i + 1;
        while (j < n && strcmp(rows[j].channel, rows[i].channel) == 0 &&
               strcmp(rows[j].schedule, rows[i].schedule) == 0 &&
               rows[j].start_ms == rows[i].start_ms)
            j++;
        /* a closed period is final: late refunds and payments post their
         * own amounts and reprice nothing (README "Closing a period"), so
         * its rows no longer follow the formula; they are counted only */
        for (int k = i; rc == 0 && k < j && !rows[i].closed; k++) {
            int64_t want = 0;
            const cms_schedule *s =
                schedule_of(db, tenant, &cache, rows[k].schedule, rows[k].revision, &rc);
            if (s && cms_period_commission(s, rows[k].net, &want) == 0 && want != rows[k].posted)
                rc = add_violation(ctx, resp, &rows[k], rows[k].net, rows[k].posted, want,
                                   "period row: posted differs from its schedule revision's "
                                   "formula on its net sales");
        }
        i = j;
    }
    free(cache.rows);
    free(rows);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not check the period rows");
    resp->checked_periods = n;
    resp->checked_at = cm_pb_timestamp(cm_rpc_ctx_arena(ctx), (int64_t)time(NULL) * 1000);
    return 0;
}
