/* payouts: see cms_payout.h */
#include "cms_payout.h"

#include "cm_arena.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "cms_events.h"
#include "cms_partner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAYOUT_COLS                                                                                \
    "payout_id::text, channel_id, currency, request_id, state, amount, commissions, "              \
    "adjustments, (extract(epoch FROM created_at) * 1000)::bigint, coalesce((extract(epoch FROM "  \
    "reported_at) * 1000)::bigint, 0), provider_reference, failure_reason, "                       \
    "coalesce((extract(epoch "                                                                     \
    "FROM period_start) * 1000)::bigint, 0)"

static void parse(const PGresult *r, int row, cms_payout *p)
{
    memset(p, 0, sizeof *p);
    cm_db_text(p->id, sizeof p->id, r, row, 0);
    cm_db_text(p->channel, sizeof p->channel, r, row, 1);
    cm_db_text(p->currency, sizeof p->currency, r, row, 2);
    cm_db_text(p->request_id, sizeof p->request_id, r, row, 3);
    p->state = (int)cm_db_int(r, row, 4);
    p->amount = cm_db_int(r, row, 5);
    p->commissions = cm_db_int(r, row, 6);
    p->adjustments = cm_db_int(r, row, 7);
    p->created_ms = cm_db_int(r, row, 8);
    p->reported_ms = cm_db_int(r, row, 9);
    cm_db_text(p->reference, sizeof p->reference, r, row, 10);
    cm_db_text(p->reason, sizeof p->reason, r, row, 11);
    p->period_start_ms = cm_db_int(r, row, 12);
}

/* the payout event of kind for p through the outbox, in the caller's
 * transaction (nothing when events are off) */
static int payout_event(cm_db *db, const cms_app *app, const char *tenant, int kind,
                        const cms_payout *p)
{
    if (!app->events_on)
        return 0;
    cm_arena *ar = cm_arena_new(8 * 1024);
    if (!ar)
        return CM_ENOMEM;
    char id[CM_ID_SIZE];
    const char *type = NULL;
    int64_t at = 0;
    const uint8_t *payload = NULL;
    size_t len = 0;
    int rc = cm_id_uuid7(id);
    if (rc == 0)
        rc = cms_ev_pack_payout(ar, tenant, id, kind, p, &type, &at, &payload, &len);
    cm_outbox_event ev[2];
    if (rc == 0) {
        ev[0] = (cm_outbox_event){.event_id = id,
                                  .tenant_id = tenant,
                                  .topic = app->topic,
                                  .key = p->channel,
                                  .type = type,
                                  .source = CMS_SOURCE,
                                  .payload = payload,
                                  .len = len,
                                  .occurred_at_ms = at};
        /* and for partners, in the same transaction */
        rc = cms_partner_payout_event(ar, app->partner_topic,
                                      kind == CMS_PAYOUT_EV_CREATED ? CMS_PARTNER_PAYOUT_CREATED
                                      : kind == CMS_PAYOUT_EV_PAID  ? CMS_PARTNER_PAYOUT_PAID
                                                                    : CMS_PARTNER_PAYOUT_FAILED,
                                      tenant, p, at, &ev[1]);
    }
    if (rc == 0)
        rc = cm_outbox_add_batch(db, ev, 2);
    cm_arena_free(ar);
    return rc;
}

/* the channel's payouts and payable items, one caller at a time */
static int lock_channel(cm_db *db, const char *tenant, const char *channel)
{
    const char *p[] = {tenant, channel};
    return cm_db_exec_prepared(db, "lock the channel's payouts", "cms_payout_lock",
                               "SELECT pg_advisory_xact_lock(hashtextextended('cms-payout/' || $1 "
                               "|| '/' || $2, 0))",
                               2, p, NULL, NULL, NULL);
}

typedef struct settle {
    const cms_app *app;
    const char *tenant, *request_id, *channel, *currency;
    int64_t period_ms; /* 0: every period */
    cms_payout *out;
    int64_t payable;
    int verdict;
} settle;

static int settle_fn(cm_db *db, void *arg)
{
    settle *s = arg;
    s->verdict = CMS_OK;
    s->payable = 0;
    int rc = lock_channel(db, s->tenant, s->channel);
    PGresult *r = NULL;
    if (rc == 0) {
        const char *p[] = {s->tenant, s->request_id};
        rc = cm_db_exec_prepared(db, "read payout by request", "cms_payout_by_req",
                                 "SELECT " PAYOUT_COLS
                                 " FROM payouts WHERE tenant_id = $1 AND request_id = $2",
                                 2, p, NULL, NULL, &r);
    }
    if (rc)
        return rc;
    if (PQntuples(r)) {
        parse(r, 0, s->out);
        PQclear(r);
        s->verdict = strcmp(s->out->channel, s->channel) == 0 &&
                             strcmp(s->out->currency, s->currency) == 0 &&
                             s->out->period_start_ms == s->period_ms
                         ? CMS_SAME
                         : CMS_KEY_REUSED;
        return 0;
    }
    PQclear(r);
    r = NULL;
    char id[CM_ID_SIZE];
    if ((rc = cm_id_uuid7(id)))
        return rc;
    /* take the items first, then sum what was taken: an item made payable
     * meanwhile is in the sum or waits, never half */
    char per[24];
    snprintf(per, sizeof per, "%lld", (long long)s->period_ms);
    const char *p[] = {s->tenant, s->channel, id, s->currency, per};
    rc = cm_db_exec_prepared(
        db, "take payable items", "cms_payout_take",
        "WITH ch AS (SELECT type, schedule_id FROM channels WHERE tenant_id = $1 AND channel_id = "
        "$2), c AS (UPDATE commissions SET payout_id = $3::uuid WHERE tenant_id = $1 AND "
        "channel_id = $2 AND currency = $4 AND state = 2 AND payout_id IS NULL AND ($5::bigint = "
        "0 OR period_start = to_timestamp($5::bigint / 1000.0)) AND EXISTS (SELECT 1 FROM ch) "
        "RETURNING payable_amount), a AS (UPDATE adjustments SET payout_id = $3::uuid WHERE "
        "tenant_id = $1 AND channel_id = $2 AND currency = $4 AND state = 2 AND payout_id IS NULL "
        "AND ($5::bigint = 0 OR period_start = to_timestamp($5::bigint / 1000.0)) AND EXISTS "
        "(SELECT 1 FROM ch) RETURNING amount) SELECT (SELECT "
        "count(*) FROM ch), (SELECT coalesce(sum(payable_amount), 0) FROM c) + (SELECT "
        "coalesce(sum(amount), 0) FROM a), (SELECT count(*) FROM c), (SELECT count(*) FROM a), "
        "coalesce((SELECT s.min_payout FROM tier_schedules s, ch WHERE s.tenant_id = $1 AND "
        "s.currency = $4 AND CASE WHEN ch.schedule_id <> '' THEN s.schedule_id = ch.schedule_id "
        "ELSE ch.type = ANY (s.channel_types) END ORDER BY s.effective_from DESC, s.revision DESC "
        "LIMIT 1), 0)",
        5, p, NULL, NULL, &r);
    if (rc)
        return rc;
    int found = cm_db_int(r, 0, 0) > 0;
    int64_t net = cm_db_int(r, 0, 1), nc = cm_db_int(r, 0, 2), na = cm_db_int(r, 0, 3);
    int64_t min = cm_db_int(r, 0, 4);
    PQclear(r);
    r = NULL;
    if (!found) {
        s->verdict = CMS_NO_REF;
        return 0;
    }
    if (net <= 0 || net < min) {
        s->verdict = CMS_BELOW_MINIMUM;
        s->payable = net;
        const char *q[] = {id};
        return cm_db_exec_prepared(
            db, "give the items back", "cms_payout_untake",
            "WITH c AS (UPDATE commissions SET payout_id = NULL WHERE payout_id = $1::uuid) "
            "UPDATE adjustments SET payout_id = NULL WHERE payout_id = $1::uuid",
            1, q, NULL, NULL, NULL);
    }
    char amt[24], ncs[24], nas[24];
    snprintf(amt, sizeof amt, "%lld", (long long)net);
    snprintf(ncs, sizeof ncs, "%lld", (long long)nc);
    snprintf(nas, sizeof nas, "%lld", (long long)na);
    const char *q[] = {id, s->tenant, s->channel, s->currency, s->request_id, amt, ncs, nas, per};
    rc = cm_db_exec_prepared(
        db, "insert payout", "cms_payout_insert",
        "INSERT INTO payouts (payout_id, tenant_id, channel_id, currency, request_id, state, "
        "amount, commissions, adjustments, period_start) VALUES ($1::uuid, $2, $3, $4, $5, 1, $6, "
        "$7, $8, CASE WHEN $9::bigint = 0 THEN NULL ELSE to_timestamp($9::bigint / 1000.0) END) "
        "RETURNING " PAYOUT_COLS,
        9, q, NULL, NULL, &r);
    if (rc == 0)
        parse(r, 0, s->out);
    PQclear(r);
    if (rc == 0)
        rc = payout_event(db, s->app, s->tenant, CMS_PAYOUT_EV_CREATED, s->out);
    return rc;
}

int cms_payout_settle(cm_db *db, const cms_app *app, const char *tenant, const char *request_id,
                      const char *channel, const char *currency, int64_t period_ms, cms_payout *out,
                      int64_t *payable, int *verdict)
{
    settle s = {.app = app,
                .tenant = tenant,
                .request_id = request_id,
                .channel = channel,
                .currency = currency,
                .period_ms = period_ms,
                .out = out};
    int rc = cm_db_tx(db, NULL, 3, settle_fn, &s);
    *payable = s.payable;
    *verdict = s.verdict;
    return rc;
}

int cms_payout_get(cm_db *db, const char *tenant, const char *id, const char *channel,
                   cms_payout *out)
{
    const char *p[] = {tenant, id, channel};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "read payout",
                        "SELECT " PAYOUT_COLS " FROM payouts WHERE tenant_id = $1 AND payout_id = "
                        "$2::uuid AND ($3::text IS NULL OR channel_id = $3)",
                        3, p, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0)
        rc = CM_ENOTFOUND;
    else
        parse(r, 0, out);
    PQclear(r);
    return rc;
}

typedef struct report {
    const cms_app *app;
    const char *tenant, *id, *reference, *reason;
    int result;
    cms_payout *out;
    int verdict;
} report;

/* CommissionSettled and the partners' settled event of each settled
 * commission in r */
static int settled_events(cm_db *db, const report *x, const PGresult *r)
{
    int n = PQntuples(r);
    if (!n || !x->app->events_on)
        return 0;
    cm_arena *ar = cm_arena_new(64 * 1024);
    cm_outbox_event *evs = calloc(2 * (size_t)n, sizeof *evs);
    int rc = ar && evs ? 0 : CM_ENOMEM;
    size_t nevs = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        cms_commission c;
        cms_store_parse_commission(r, i, &c);
        char *id = cm_arena_alloc(ar, CM_ID_SIZE);
        char *key = cm_arena_strdup(ar, c.channel);
        const uint8_t *payload;
        size_t len;
        rc = id && key ? cm_id_uuid7(id) : CM_ENOMEM;
        if (rc == 0)
            rc = cms_ev_pack_settled(ar, x->tenant, id, &c, &payload, &len);
        if (rc == 0)
            evs[nevs++] = (cm_outbox_event){.event_id = id,
                                            .tenant_id = x->tenant,
                                            .topic = x->app->topic,
                                            .key = key,
                                            .type = CMS_TYPE_SETTLED,
                                            .source = CMS_SOURCE,
                                            .payload = payload,
                                            .len = len,
                                            .occurred_at_ms = c.settled_ms};
        if (rc == 0) {
            rc = cms_partner_event(ar, x->app->partner_topic, CMS_PARTNER_SETTLED, x->tenant, &c,
                                   NULL, 0, c.settled_ms, NULL, &evs[nevs]);
            if (rc == 0)
                nevs++;
            else if (rc == CM_EINVAL)
                rc = 0; /* no brackets: not for partners */
        }
    }
    if (rc == 0 && nevs)
        rc = cm_outbox_add_batch(db, evs, nevs);
    free(evs);
    cm_arena_free(ar);
    return rc;
}

static int report_fn(cm_db *db, void *arg)
{
    report *x = arg;
    x->verdict = CMS_OK;
    const char *p[] = {x->tenant, x->id};
    PGresult *r = NULL;
    int rc = cm_db_exec_prepared(db, "lock payout", "cms_payout_lock_row",
                                 "SELECT " PAYOUT_COLS " FROM payouts WHERE tenant_id = $1 AND "
                                 "payout_id = $2::uuid FOR UPDATE",
                                 2, p, NULL, NULL, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return CM_ENOTFOUND;
    }
    parse(r, 0, x->out);
    PQclear(r);
    r = NULL;
    if (x->out->state != CMS_PAYOUT_PENDING) {
        x->verdict = x->out->state == x->result ? CMS_SAME : CMS_ILLEGAL;
        return 0;
    }
    if (x->result == CMS_PAYOUT_PAID) {
        const char *q[] = {x->id, x->reference};
        rc = cm_db_exec_prepared(
            db, "settle payout", "cms_payout_paid",
            "WITH p AS (UPDATE payouts SET state = 2, provider_reference = $2, reported_at = now() "
            "WHERE payout_id = $1::uuid), a AS (UPDATE adjustments SET state = 3, settled_at = "
            "now() WHERE payout_id = $1::uuid), c AS (UPDATE commissions SET state = 3, "
            "settled_at = now() WHERE payout_id = $1::uuid RETURNING *) SELECT " CMS_COMMISSION_COLS
            " FROM c ORDER BY commission_id",
            2, q, NULL, NULL, &r);
        if (rc == 0)
            rc = settled_events(db, x, r);
        PQclear(r);
    } else {
        const char *q[] = {x->id, x->reason};
        rc = cm_db_exec_prepared(
            db, "fail payout", "cms_payout_failed",
            "WITH p AS (UPDATE payouts SET state = 3, failure_reason = $2, reported_at = now() "
            "WHERE payout_id = $1::uuid), a AS (UPDATE adjustments SET payout_id = NULL WHERE "
            "payout_id = $1::uuid) UPDATE commissions SET payout_id = NULL WHERE payout_id = "
            "$1::uuid",
            2, q, NULL, NULL, NULL);
    }
    if (rc)
        return rc;
    r = NULL;
    rc = cm_db_exec_prepared(db, "read payout", "cms_payout_reread",
                             "SELECT " PAYOUT_COLS " FROM payouts WHERE payout_id = $1::uuid", 1,
                             &p[1], NULL, NULL, &r);
    if (rc == 0)
        parse(r, 0, x->out);
    PQclear(r);
    if (rc == 0)
        rc = payout_event(db, x->app, x->tenant,
                          x->result == CMS_PAYOUT_PAID ? CMS_PAYOUT_EV_PAID : CMS_PAYOUT_EV_FAILED,
                          x->out);
    return rc;
}

int cms_payout_report(cm_db *db, const cms_app *app, const char *tenant, const char *id, int result,
                      const char *reference, const char *reason, cms_payout *out, int *verdict)
{
    report x = {.app = app,
                .tenant = tenant,
                .id = id,
                .reference = reference ? reference : "",
                .reason = reason ? reason : "",
                .result = result,
                .out = out};
    int rc = cm_db_tx(db, NULL, 3, report_fn, &x);
    *verdict = x.verdict;
    return rc;
}

int cms_payout_list(cm_db *db, const char *tenant, const char *channel, unsigned states,
                    const char *after_id, int limit, cms_payout *out, int *n)
{
    char mask[16], lim[16];
    snprintf(mask, sizeof mask, "%u", states);
    snprintf(lim, sizeof lim, "%d", limit);
    const char *p[] = {tenant, channel, mask, after_id, lim};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "list payouts",
                        "SELECT " PAYOUT_COLS " FROM payouts WHERE tenant_id = $1 AND ($2 = '' OR "
                        "channel_id = $2) AND ($3::int = 0 OR ($3::int >> state) & 1 = 1) AND ($4 "
                        "= '' OR payout_id < NULLIF($4, '')::uuid) ORDER BY payout_id DESC LIMIT "
                        "$5",
                        5, p, &r);
    if (rc)
        return rc;
    *n = PQntuples(r);
    for (int i = 0; i < *n; i++)
        parse(r, i, &out[i]);
    PQclear(r);
    return 0;
}
