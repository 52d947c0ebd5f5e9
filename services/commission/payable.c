/* FROZEN -> PAYABLE: see cms_payable.h */
#include "cms_payable.h"

#include "cm_arena.h"
#include "cm_buf.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "cm_service.h"
#include "cms_api.h"
#include "cms_events.h"
#include "cms_partner.h"
#include "cms_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 500

typedef struct run {
    cms_app *app;
    long long days;
    int moved, released;
} run;

/* CommissionAdjustmentPayable and the partners' adjustment_payable of each
 * adjustment in r (CMS_ADJUSTMENT_COLS, then tenant_id), into the outbox */
static int adjustment_events(cm_db *db, const cms_app *app, const PGresult *r)
{
    int n = PQntuples(r);
    if (!n || !app->events_on)
        return 0;
    cm_arena *ar = cm_arena_new(32 * 1024);
    cm_outbox_event *evs = calloc(2 * (size_t)n, sizeof *evs);
    int rc = ar && evs ? 0 : CM_ENOMEM;
    size_t nevs = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        cms_adjustment x;
        cms_store_parse_adjustment(r, i, &x);
        const char *tenant = cm_arena_strdup(ar, PQgetvalue(r, i, CMS_ADJUSTMENT_NCOLS));
        char *id = cm_arena_alloc(ar, CM_ID_SIZE);
        char *key = cm_arena_strdup(ar, x.channel);
        const uint8_t *payload;
        size_t len;
        rc = tenant && id && key ? cm_id_uuid7(id) : CM_ENOMEM;
        if (rc == 0)
            rc = cms_ev_pack_adjustment_payable(ar, tenant, id, &x, &payload, &len);
        if (rc == 0)
            evs[nevs++] = (cm_outbox_event){.event_id = id,
                                            .tenant_id = tenant,
                                            .topic = app->topic,
                                            .key = key,
                                            .type = CMS_TYPE_ADJUSTMENT_PAYABLE,
                                            .source = CMS_SOURCE,
                                            .payload = payload,
                                            .len = len,
                                            .occurred_at_ms = x.payable_ms};
        if (rc == 0) {
            rc =
                cms_partner_adjustment_event(ar, app->partner_topic, CMS_PARTNER_ADJUSTMENT_PAYABLE,
                                             tenant, &x, x.payable_ms, NULL, &evs[nevs]);
            if (rc == 0)
                nevs++;
            else if (rc == CM_EINVAL)
                rc = 0;
        }
    }
    if (rc == 0 && nevs)
        rc = cm_outbox_add_batch(db, evs, nevs);
    free(evs);
    cm_arena_free(ar);
    return rc;
}

/* one batch. the window is the tenant's own (tenant_settings.after_sale_s)
 * or the knob's days. SKIP LOCKED: a commission the consumer holds (a
 * refund being clawed back) waits for the next tick rather than blocking
 * the batch */
static int batch(cm_db *db, void *arg)
{
    run *x = arg;
    x->moved = x->released = 0;
    char days[24], lim[16];
    snprintf(days, sizeof days, "%lld", x->days);
    snprintf(lim, sizeof lim, "%d", BATCH);
    const char *p[] = {days, lim};
    PGresult *r = NULL;
    int rc = cm_db_exec_prepared(
        db, "make commissions payable", "cms_payable",
        "WITH due AS (SELECT c.commission_id FROM commissions c JOIN completed_orders o ON "
        "o.tenant_id = c.tenant_id AND o.order_id = c.order_id LEFT JOIN tenant_settings t ON "
        "t.tenant_id = c.tenant_id WHERE c.state = 1 AND o.completed_at <= now() - "
        "make_interval(secs => coalesce(t.after_sale_s, $1::int * 86400)) ORDER BY "
        "c.commission_id LIMIT $2 FOR UPDATE OF c SKIP LOCKED), up AS (UPDATE commissions c SET "
        "state = 2, payable_at = now(), payable_amount = c.amount - c.clawed_back FROM due WHERE "
        "c.commission_id = due.commission_id RETURNING c.*) SELECT " CMS_COMMISSION_COLS
        ", tenant_id FROM up ORDER BY channel_id, commission_id",
        2, p, NULL, NULL, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    cm_arena *ar = n ? cm_arena_new(64 * 1024) : NULL;
    cm_outbox_event *evs = n ? calloc(2 * (size_t)n, sizeof *evs) : NULL;
    if (n && (!ar || !evs))
        rc = CM_ENOMEM;
    size_t nevs = 0;
    /* the moved commissions' ids, as a uuid[] literal for their adjustments */
    cm_buf ids = {0};
    cm_buf_puts(&ids, "{");
    for (int i = 0; rc == 0 && i < n; i++) {
        cm_buf_puts(&ids, i ? "," : "");
        cm_buf_puts(&ids, PQgetvalue(r, i, 0));
    }
    cm_buf_puts(&ids, "}");
    if (ids.oom)
        rc = CM_ENOMEM;
    for (int i = 0; rc == 0 && i < n && x->app->events_on; i++) {
        cms_commission c;
        cms_store_parse_commission(r, i, &c);
        const char *tenant = cm_arena_strdup(ar, PQgetvalue(r, i, CMS_COMMISSION_NCOLS));
        char *id = cm_arena_alloc(ar, CM_ID_SIZE);
        char *key = cm_arena_strdup(ar, c.channel);
        const uint8_t *payload;
        size_t len;
        if (!tenant || !id || !key)
            rc = CM_ENOMEM;
        if (rc == 0)
            rc = cm_id_uuid7(id);
        if (rc == 0)
            rc = cms_ev_pack_payable(ar, tenant, id, &c, &payload, &len);
        if (rc == 0)
            evs[nevs++] = (cm_outbox_event){.event_id = id,
                                            .tenant_id = tenant,
                                            .topic = x->app->topic,
                                            .key = key,
                                            .type = CMS_TYPE_PAYABLE,
                                            .source = CMS_SOURCE,
                                            .payload = payload,
                                            .len = len,
                                            .occurred_at_ms = c.payable_ms};
        if (rc == 0) {
            rc = cms_partner_event(ar, x->app->partner_topic, CMS_PARTNER_PAYABLE, tenant, &c, NULL,
                                   0, c.payable_ms, NULL, &evs[nevs]);
            if (rc == 0)
                nevs++;
            else if (rc == CM_EINVAL)
                rc = 0; /* no brackets: not for partners */
        }
    }
    PQclear(r);
    if (rc == 0 && nevs)
        rc = cm_outbox_add_batch(db, evs, nevs);
    free(evs);
    cm_arena_free(ar);
    /* the FROZEN adjustments their orders caused follow them, in the same
     * transaction (the consumer holds a commission's row while it posts
     * one, so none is posted FROZEN after its commission moved) */
    r = NULL;
    if (rc == 0 && n) {
        const char *q[] = {ids.p};
        rc = cm_db_exec_prepared(
            db, "make adjustments payable", "cms_payable_adj_follow",
            "WITH up AS (UPDATE adjustments a SET state = 2, payable_at = now() FROM commissions c "
            "WHERE c.commission_id = ANY ($1::uuid[]) AND a.tenant_id = c.tenant_id AND "
            "a.order_id = c.order_id AND a.state = 1 RETURNING a.*) SELECT " CMS_ADJUSTMENT_COLS
            ", tenant_id FROM up ORDER BY channel_id, adjustment_id",
            1, q, NULL, NULL, &r);
        if (rc == 0)
            rc = adjustment_events(db, x->app, r);
        PQclear(r);
    }
    cm_buf_free(&ids);
    if (rc)
        return rc;
    x->moved = n;
    /* the adjustments of an order clawed back entirely while FROZEN: it
     * will never be payable, so they follow their period's end instead */
    r = NULL;
    rc = cm_db_exec_prepared(
        db, "release adjustments", "cms_payable_adj",
        "WITH due AS (SELECT a.adjustment_id FROM adjustments a JOIN commissions c ON c.tenant_id "
        "= a.tenant_id AND c.order_id = a.order_id WHERE a.state = 1 AND c.state = 4 AND "
        "c.period_end <= now() ORDER BY a.adjustment_id LIMIT $1 FOR UPDATE OF a SKIP LOCKED), "
        "up AS (UPDATE adjustments a SET state = 2, payable_at = now() FROM due WHERE "
        "a.adjustment_id = due.adjustment_id RETURNING a.*) SELECT " CMS_ADJUSTMENT_COLS
        ", tenant_id FROM up ORDER BY channel_id, adjustment_id",
        1, &p[1], NULL, NULL, &r);
    if (rc == 0) {
        x->released = PQntuples(r);
        rc = adjustment_events(db, x->app, r);
    }
    PQclear(r);
    return rc;
}

void cms_payable_tick(cm_service *svc, cm_db *db, void *arg)
{
    run x = {.app = arg, .days = cm_service_int(svc, "COMMISSION_AFTER_SALE_DAYS")};
    int rc;
    do {
        rc = cm_db_tx(db, NULL, 3, batch, &x);
        if (rc == 0 && x.moved) {
            char n[16];
            snprintf(n, sizeof n, "%d", x.moved);
            cm_log_info("commissions payable", "count", n, NULL);
        }
    } while (rc == 0 && (x.moved == BATCH || x.released == BATCH));
    if (rc)
        cm_log_warn("payable ticker could not move commissions", "error", cm_strerror(rc), NULL);
}
