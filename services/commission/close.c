/* closing periods: see cms_close.h */
#include "cms_close.h"

#include "cm_arena.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "cm_service.h"
#include "cms_domain.h"
#include "cms_events.h"
#include "cms_partner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_REVISIONS 64 /* rows of one period: one per schedule revision used */
#define TICK_BATCH 100

/* the period's merchants by id, their net sales in it (order amounts less
 * refunds) and which one had its latest commission: what a close true-up
 * is split over (cms_close_split) */
typedef struct close_merchants {
    size_t n, latest;
    char (*id)[CMS_ID_MAX + 1];
    int64_t *net, *parts;
} close_merchants;

typedef struct close_tx {
    const cms_app *app;
    const char *tenant, *channel, *schedule_id;
    int64_t start_ms;
    cms_close_row *out;
    int verdict;
    int payer; /* the newest revision's: who bears the close */
    close_merchants m;
} close_tx;

/* the PERIOD_CLOSE adjustment x and its events, in the transaction */
static int post_adjustment(cm_db *db, const cms_app *app, const char *tenant,
                           const cms_adjustment *x)
{
    char amt[24], start[24], at[24];
    snprintf(amt, sizeof amt, "%lld", (long long)x->amount);
    snprintf(start, sizeof start, "%lld", (long long)x->period_start_ms);
    snprintf(at, sizeof at, "%lld", (long long)x->posted_ms);
    char payer[8];
    snprintf(payer, sizeof payer, "%d", x->payer);
    const char *p[] = {x->id, tenant, x->channel, x->currency, amt,
                       start, at,     x->child,   payer,       x->merchant};
    int rc = cm_db_exec_prepared(
        db, "post period close", "cms_close_adj",
        "INSERT INTO adjustments (adjustment_id, tenant_id, channel_id, kind, state, currency, "
        "amount, order_id, child_id, period_start, posted_at, payable_at, payer, merchant_id) "
        "VALUES ($1::uuid, $2, $3, 4, 2, $4, $5, NULL, $8, to_timestamp($6::bigint / 1000.0), "
        "to_timestamp($7::bigint / 1000.0), to_timestamp($7::bigint / 1000.0), $9::smallint, "
        "$10)",
        10, p, NULL, NULL, NULL);
    if (rc || !app->events_on)
        return rc;
    cm_arena *ar = cm_arena_new(16 * 1024);
    if (!ar)
        return CM_ENOMEM;
    char id[CM_ID_SIZE];
    const uint8_t *payload = NULL;
    size_t len = 0;
    cm_outbox_event ev[2];
    rc = cm_id_uuid7(id);
    if (rc == 0)
        rc = cms_ev_pack_adjusted(ar, tenant, id, x, &payload, &len);
    if (rc == 0) {
        ev[0] = (cm_outbox_event){.event_id = id,
                                  .tenant_id = tenant,
                                  .topic = app->topic,
                                  .key = x->channel,
                                  .type = CMS_TYPE_ADJUSTED,
                                  .source = CMS_SOURCE,
                                  .payload = payload,
                                  .len = len,
                                  .occurred_at_ms = x->posted_ms};
        rc = cms_partner_adjustment_event(ar, app->partner_topic, CMS_PARTNER_ADJUSTED, tenant, x,
                                          x->posted_ms, NULL, &ev[1]);
    }
    if (rc == 0)
        rc = cm_outbox_add_batch(db, ev, 2);
    cm_arena_free(ar);
    return rc;
}

static void merchants_free(close_merchants *m)
{
    free(m->id);
    free(m->net);
    free(m->parts);
    memset(m, 0, sizeof *m);
}

/* t->m: the period's merchants, ordered by id so the split is a pure
 * function of the period */
static int read_merchants(cm_db *db, close_tx *t)
{
    char start[24];
    snprintf(start, sizeof start, "%lld", (long long)t->start_ms);
    const char *p[] = {t->tenant, t->channel, t->schedule_id, start};
    PGresult *r = NULL;
    int rc = cm_db_exec_prepared(
        db, "read the period's merchants", "cms_close_merchants",
        "WITH c AS (SELECT merchant_id, order_amount - refunded AS net, accrued_at, commission_id "
        "FROM commissions WHERE tenant_id = $1 AND channel_id = $2 AND schedule_id = $3 AND "
        "period_start = to_timestamp($4::bigint / 1000.0)) SELECT merchant_id, sum(net)::bigint, "
        "merchant_id = (SELECT merchant_id FROM c ORDER BY accrued_at DESC, commission_id DESC "
        "LIMIT 1) FROM c GROUP BY merchant_id ORDER BY merchant_id",
        4, p, NULL, NULL, &r);
    if (rc)
        return rc;
    close_merchants *m = &t->m;
    /* no commission at all (not expected of a period with rows): one
     * part, on no merchant, as a close was posted before the split */
    size_t rows = (size_t)PQntuples(r), n = rows ? rows : 1;
    m->id = calloc(n, sizeof *m->id);
    m->net = calloc(n, sizeof *m->net);
    m->parts = calloc(n, sizeof *m->parts);
    if (!m->id || !m->net || !m->parts) {
        PQclear(r);
        merchants_free(m);
        return CM_ENOMEM;
    }
    m->n = n;
    for (size_t i = 0; i < rows; i++) {
        cm_db_text(m->id[i], sizeof m->id[i], r, (int)i, 0);
        m->net[i] = cm_db_int(r, (int)i, 1);
        if (PQgetvalue(r, (int)i, 2)[0] == 't')
            m->latest = i;
    }
    PQclear(r);
    return 0;
}

/* amount split over t->m: one PERIOD_CLOSE adjustment like x per merchant
 * with a nonzero part, each on that merchant and t->payer. first_id gets
 * the first one's id ("" when nothing was posted) */
static int post_split(cm_db *db, close_tx *t, cms_adjustment *x, int64_t amount, char *first_id,
                      size_t cap)
{
    close_merchants *m = &t->m;
    first_id[0] = '\0';
    int rc = cms_close_split(amount, m->net, m->n, m->latest, m->parts);
    for (size_t i = 0; i < m->n && rc == 0; i++) {
        if (!m->parts[i])
            continue;
        if ((rc = cm_id_uuid7(x->id)))
            break;
        x->amount = m->parts[i];
        x->payer = t->payer;
        snprintf(x->merchant, sizeof x->merchant, "%s", m->id[i]);
        if (!first_id[0])
            snprintf(first_id, cap, "%s", x->id);
        rc = post_adjustment(db, t->app, t->tenant, x);
    }
    return rc;
}

/* the parent's share of the channel's close true-up o->true_up: the pool
 * of the channel's latest parent in the period (its commissions carry the
 * parent and rate they accrued under) moves by the true-up like by any
 * child posting, and the share is a PERIOD_CLOSE adjustment of the
 * parent. the pool is locked after the period rows, as the consumer does */
static int parent_share(cm_db *db, close_tx *t, cms_close_row *o, int64_t posted_ms)
{
    char start[24];
    snprintf(start, sizeof start, "%lld", (long long)t->start_ms);
    const char *p[] = {t->tenant, t->channel, t->schedule_id, start};
    PGresult *r = NULL;
    int rc = cm_db_exec_prepared(
        db, "read the period's parent", "cms_close_parent",
        "WITH c AS (SELECT parent_id, parent_bps, currency FROM commissions WHERE tenant_id = $1 "
        "AND channel_id = $2 AND schedule_id = $3 AND period_start = to_timestamp($4::bigint / "
        "1000.0) AND parent_id <> '' AND parent_bps > 0 ORDER BY accrued_at DESC, commission_id "
        "DESC LIMIT 1) SELECT c.parent_id, c.parent_bps, q.base FROM c JOIN parent_pools q ON "
        "q.tenant_id = $1 AND q.parent_id = c.parent_id AND q.currency = c.currency AND "
        "q.period_start = to_timestamp($4::bigint / 1000.0) AND q.override_bps = c.parent_bps FOR "
        "UPDATE OF q",
        4, p, NULL, NULL, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return 0; /* no parent in the period */
    }
    cm_db_text(o->parent, sizeof o->parent, r, 0, 0);
    int64_t bps = cm_db_int(r, 0, 1), base = cm_db_int(r, 0, 2);
    PQclear(r);
    rc = cms_parent_share(bps, base, o->true_up, &o->parent_share);
    if (rc)
        return rc;
    char b[24], d[24], sh[24];
    snprintf(b, sizeof b, "%lld", (long long)bps);
    snprintf(d, sizeof d, "%lld", (long long)o->true_up);
    snprintf(sh, sizeof sh, "%lld", (long long)o->parent_share);
    const char *q[] = {t->tenant, o->parent, o->currency, start, b, d, sh};
    rc = cm_db_exec_prepared(db, "move the parent's pool", "cms_close_pool",
                             "UPDATE parent_pools SET base = base + $6::bigint, posted = posted + "
                             "$7::bigint WHERE tenant_id = $1 AND parent_id = $2 AND currency = $3 "
                             "AND period_start = to_timestamp($4::bigint / 1000.0) AND "
                             "override_bps = $5::int",
                             7, q, NULL, NULL, NULL);
    if (rc || !o->parent_share)
        return rc;
    cms_adjustment x;
    memset(&x, 0, sizeof x);
    snprintf(x.channel, sizeof x.channel, "%s", o->parent);
    snprintf(x.child, sizeof x.child, "%s", t->channel);
    x.kind = CMS_ADJ_PERIOD_CLOSE;
    snprintf(x.currency, sizeof x.currency, "%s", o->currency);
    x.period_start_ms = t->start_ms;
    x.posted_ms = posted_ms;
    x.state = CMS_PAYABLE;
    x.payable_ms = posted_ms;
    /* split like the channel's own close: each merchant bears the share
     * of its part */
    return post_split(db, t, &x, o->parent_share, o->parent_adjustment_id,
                      sizeof o->parent_adjustment_id);
}

static int close_fn(cm_db *db, void *arg)
{
    close_tx *t = arg;
    cms_close_row *o = t->out;
    memset(o, 0, sizeof *o);
    t->verdict = CMS_OK;
    char start[24];
    snprintf(start, sizeof start, "%lld", (long long)t->start_ms);
    const char *p[] = {t->tenant, t->channel, t->schedule_id, start};
    PGresult *r = NULL;
    /* every revision's row, locked in the consumer's key order; the
     * newest last, with its schedule */
    int rc = cm_db_exec_prepared(
        db, "lock the period's rows", "cms_close_lock",
        "SELECT p.schedule_revision, p.net_sales, p.posted, p.currency, (extract(epoch FROM "
        "p.period_end) * 1000)::bigint, p.period_end <= now(), coalesce((extract(epoch FROM "
        "p.closed_at) * 1000)::bigint, 0), coalesce(p.close_true_up, 0), "
        "coalesce(p.close_adjustment_id::text, ''), " CMS_SCHEDULE_COLS
        " FROM channel_periods p JOIN tier_schedules s ON s.tenant_id = p.tenant_id AND "
        "s.schedule_id = p.schedule_id AND s.revision = p.schedule_revision WHERE p.tenant_id = "
        "$1 AND p.channel_id = $2 AND p.schedule_id = $3 AND p.period_start = "
        "to_timestamp($4::bigint / 1000.0) ORDER BY p.schedule_revision FOR UPDATE OF p",
        4, p, NULL, NULL, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    if (n == 0 || n > MAX_REVISIONS) {
        PQclear(r);
        t->verdict = n ? CMS_ILLEGAL : CMS_NO_REF;
        return 0;
    }
    int64_t net[MAX_REVISIONS], posted[MAX_REVISIONS];
    for (int i = 0; i < n; i++) {
        net[i] = cm_db_int(r, i, 1);
        posted[i] = cm_db_int(r, i, 2);
    }
    int last = n - 1;
    cms_schedule_row *sched = malloc(sizeof *sched);
    if (!sched) {
        PQclear(r);
        return CM_ENOMEM;
    }
    cms_store_parse_schedule(r, last, 9, sched);
    snprintf(o->channel, sizeof o->channel, "%s", t->channel);
    snprintf(o->schedule_id, sizeof o->schedule_id, "%s", t->schedule_id);
    cm_db_text(o->currency, sizeof o->currency, r, last, 3);
    o->revision = cm_db_int(r, last, 0);
    o->start_ms = t->start_ms;
    o->end_ms = cm_db_int(r, last, 4);
    int ended = PQgetvalue(r, last, 5)[0] == 't';
    o->closed_ms = cm_db_int(r, last, 6);
    int64_t stored_adj = cm_db_int(r, last, 7);
    cm_db_text(o->adjustment_id, sizeof o->adjustment_id, r, last, 8);
    PQclear(r);
    int mode = sched->s.mode;
    t->payer = sched->payer;
    rc = cms_close(&sched->s, net, posted, (size_t)n, &o->net_sales, &o->commission, &o->true_up);
    free(sched);
    if (o->closed_ms) {
        /* closed before: as it was then (late events since moved its
         * sales, never its close), with the parent's share it posted */
        o->true_up = stored_adj;
        t->verdict = CMS_SAME;
        const char *q[] = {t->tenant, t->channel, start};
        r = NULL;
        rc = cm_db_exec_prepared(
            db, "read the close's parent share", "cms_close_parent_adj",
            "SELECT channel_id, sum(amount)::bigint, (array_agg(adjustment_id::text ORDER BY "
            "merchant_id))[1] FROM adjustments WHERE tenant_id = $1 AND kind = 4 AND child_id = $2 "
            "AND period_start = to_timestamp($3::bigint / 1000.0) GROUP BY channel_id ORDER BY "
            "max(posted_at) DESC LIMIT 1",
            3, q, NULL, NULL, &r);
        if (rc == 0 && PQntuples(r)) {
            cm_db_text(o->parent, sizeof o->parent, r, 0, 0);
            o->parent_share = cm_db_int(r, 0, 1);
            cm_db_text(o->parent_adjustment_id, sizeof o->parent_adjustment_id, r, 0, 2);
        }
        PQclear(r);
        return rc;
    }
    if (mode != CMS_MODE_WHOLE_VOLUME) {
        t->verdict = CMS_ILLEGAL;
        return 0;
    }
    if (!ended) {
        t->verdict = CMS_CLOSE_EARLY;
        return 0;
    }
    if (rc)
        return rc;
    if (o->true_up) {
        /* one adjustment per merchant of the period, so settlement books
         * each merchant's part of the cost against it */
        if ((rc = read_merchants(db, t)))
            return rc;
        cms_adjustment x;
        memset(&x, 0, sizeof x);
        snprintf(x.channel, sizeof x.channel, "%s", t->channel);
        x.kind = CMS_ADJ_PERIOD_CLOSE;
        snprintf(x.currency, sizeof x.currency, "%s", o->currency);
        x.period_start_ms = t->start_ms;
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        x.posted_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
        x.state = CMS_PAYABLE;
        x.payable_ms = x.posted_ms;
        rc = post_split(db, t, &x, o->true_up, o->adjustment_id, sizeof o->adjustment_id);
        if (rc == 0)
            rc = parent_share(db, t, o, x.posted_ms);
        merchants_free(&t->m);
        if (rc)
            return rc;
    }
    char rev[24], adj[24];
    snprintf(rev, sizeof rev, "%lld", (long long)o->revision);
    snprintf(adj, sizeof adj, "%lld", (long long)o->true_up);
    const char *q[] = {t->tenant,
                       t->channel,
                       t->schedule_id,
                       start,
                       rev,
                       adj,
                       o->adjustment_id[0] ? o->adjustment_id : NULL};
    r = NULL;
    rc = cm_db_exec_prepared(
        db, "mark the period closed", "cms_close_mark",
        "UPDATE channel_periods SET closed_at = now(), updated_at = now(), posted = posted + CASE "
        "WHEN schedule_revision = $5::bigint THEN $6::bigint ELSE 0 END, close_true_up = CASE "
        "WHEN schedule_revision = $5::bigint THEN $6::bigint END, close_adjustment_id = CASE "
        "WHEN schedule_revision = $5::bigint THEN $7::uuid END WHERE tenant_id = $1 AND "
        "channel_id = $2 AND schedule_id = $3 AND period_start = to_timestamp($4::bigint / "
        "1000.0) RETURNING (extract(epoch FROM closed_at) * 1000)::bigint",
        7, q, NULL, NULL, &r);
    if (rc == 0 && PQntuples(r))
        o->closed_ms = cm_db_int(r, 0, 0);
    PQclear(r);
    return rc;
}

int cms_close_period(cm_db *db, const cms_app *app, const char *tenant, const char *channel,
                     const char *schedule_id, int64_t start_ms, cms_close_row *out, int *verdict)
{
    close_tx t = {.app = app,
                  .tenant = tenant,
                  .channel = channel,
                  .schedule_id = schedule_id,
                  .start_ms = start_ms,
                  .out = out};
    int rc = cm_db_tx(db, NULL, 3, close_fn, &t);
    *verdict = t.verdict;
    return rc;
}

void cms_close_tick(cm_service *svc, cm_db *db, void *arg)
{
    const cms_app *app = arg;
    char after[24], lim[16];
    snprintf(after, sizeof after, "%lld",
             (long long)cm_service_int(svc, "COMMISSION_CLOSE_AFTER_S"));
    snprintf(lim, sizeof lim, "%d", TICK_BATCH);
    const char *p[] = {after, lim};
    PGresult *r = NULL;
    /* the open periods ended long enough ago whose newest revision is
     * whole volume; a marginal period telescopes and needs no close */
    int rc = cm_db_read(
        db, "find periods to close",
        "SELECT tenant_id, channel_id, schedule_id, (extract(epoch FROM period_start) * "
        "1000)::bigint FROM (SELECT DISTINCT ON (p.tenant_id, p.channel_id, p.schedule_id, "
        "p.period_start) p.tenant_id, p.channel_id, p.schedule_id, p.period_start, s.mode FROM "
        "channel_periods p JOIN tier_schedules s ON s.tenant_id = p.tenant_id AND s.schedule_id = "
        "p.schedule_id AND s.revision = p.schedule_revision WHERE p.closed_at IS NULL AND "
        "p.period_end <= now() - make_interval(secs => $1::int) ORDER BY p.tenant_id, "
        "p.channel_id, p.schedule_id, p.period_start, p.schedule_revision DESC) x WHERE mode = 2 "
        "ORDER BY period_start, tenant_id, channel_id, schedule_id LIMIT $2",
        2, p, &r);
    if (rc) {
        cm_log_warn("close ticker could not find periods", "error", cm_strerror(rc), NULL);
        return;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        cms_close_row o;
        int verdict = 0;
        rc = cms_close_period(db, app, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                              PQgetvalue(r, i, 2), cm_db_int(r, i, 3), &o, &verdict);
        if (rc) {
            cm_log_warn("close ticker could not close a period", "tenant", PQgetvalue(r, i, 0),
                        "channel_id", PQgetvalue(r, i, 1), "error", cm_strerror(rc), NULL);
            continue;
        }
        if (verdict == CMS_OK) {
            char adj[24];
            snprintf(adj, sizeof adj, "%lld", (long long)o.true_up);
            cm_log_info("period closed", "tenant", PQgetvalue(r, i, 0), "channel_id",
                        PQgetvalue(r, i, 1), "tier_schedule_id", PQgetvalue(r, i, 2), "true_up",
                        adj, NULL);
        }
    }
    PQclear(r);
}
