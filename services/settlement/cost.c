/* the commission cost on the ledger: see stl_cost.h, README.md "Commission cost" */
#include "stl_cost.h"

#include "cm_buf.h"
#include "cm_err.h"
#include "stl_domain.h"
#include "stl_ledger.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct cost_item {
    char tenant[STL_TENANT_MAX + 1], key[STL_COST_KEY_MAX + 1];
    char channel[STL_ID_MAX + 1], order_id[CM_ID_SIZE], merchant[STL_ID_MAX + 1];
    char currency[4], event_id[CM_ID_SIZE], traceparent[64];
    int payer_type;
    char payer_owner[STL_ID_MAX + 1];
    int64_t delta, occurred_ms;
    int dup; /* booked before, or earlier in this batch */
} cost_item;

struct stl_costs {
    stl_ledger *ledger; /* its account cache and posting */
    char platform[STL_ID_MAX + 1];
    cm_histogram *lag;
    cost_item *items;
    size_t n, cap;
    atomic_uint_fast64_t posted, duplicates, nothing;
};

stl_costs *stl_costs_new(const stl_settings *defaults, const char *platform, int events_on,
                         const char *topic, cm_histogram *lag)
{
    stl_costs *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (!(c->ledger = stl_ledger_new(defaults, events_on, topic, NULL))) {
        free(c);
        return NULL;
    }
    snprintf(c->platform, sizeof c->platform, "%s", platform);
    c->lag = lag;
    return c;
}

void stl_costs_free(stl_costs *c)
{
    if (!c)
        return;
    stl_ledger_free(c->ledger);
    free(c->items);
    free(c);
}

void stl_costs_begin(stl_costs *c)
{
    c->n = 0;
    stl_ledger_begin(c->ledger);
}

void stl_costs_committed(stl_costs *c)
{
    stl_ledger_committed(c->ledger);
}

void stl_costs_get_stats(const stl_costs *c, stl_costs_stats *out)
{
    out->posted = atomic_load(&c->posted);
    out->duplicates = atomic_load(&c->duplicates);
    out->nothing = atomic_load(&c->nothing);
}

int stl_costs_stage(stl_costs *c, const stl_cost_event *ev)
{
    stl_cost_in in = {.kind = ev->kind,
                      .adj_kind = ev->adj_kind,
                      .payer = ev->payer,
                      .amount = ev->amount,
                      .merchant = ev->merchant,
                      .platform = c->platform};
    stl_cost cost;
    int rc = stl_cost_of(&in, &cost);
    if (rc == STL_COST_NOTHING) {
        atomic_fetch_add(&c->nothing, 1);
        return 0;
    }
    if (rc)
        return rc;
    char key[STL_COST_KEY_MAX + 1];
    if ((rc = stl_cost_key(ev->kind, ev->commission_id, ev->refund_id, ev->adjustment_id, key,
                           sizeof key)))
        return rc;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        cost_item *p = realloc(c->items, cap * sizeof *p);
        if (!p)
            return CM_ENOMEM;
        c->items = p;
        c->cap = cap;
    }
    cost_item *it = &c->items[c->n++];
    memset(it, 0, sizeof *it);
    snprintf(it->tenant, sizeof it->tenant, "%s", ev->tenant);
    memcpy(it->key, key, sizeof key);
    snprintf(it->channel, sizeof it->channel, "%s", ev->channel);
    snprintf(it->order_id, sizeof it->order_id, "%s", ev->order_id);
    snprintf(it->merchant, sizeof it->merchant, "%s", ev->merchant ? ev->merchant : "");
    snprintf(it->currency, sizeof it->currency, "%s", ev->currency);
    snprintf(it->event_id, sizeof it->event_id, "%s", ev->event_id);
    snprintf(it->traceparent, sizeof it->traceparent, "%s", ev->traceparent ? ev->traceparent : "");
    it->payer_type = cost.payer_type;
    snprintf(it->payer_owner, sizeof it->payer_owner, "%s", cost.payer_owner);
    it->delta = cost.delta;
    it->occurred_ms = ev->occurred_ms;
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* marks the items whose key was booked before, or earlier in the batch */
static int mark_duplicates(stl_costs *c, cm_db *db)
{
    for (size_t i = 0; i < c->n; i++)
        for (size_t j = 0; j < i && !c->items[i].dup; j++)
            if (strcmp(c->items[i].key, c->items[j].key) == 0 &&
                strcmp(c->items[i].tenant, c->items[j].tenant) == 0)
                c->items[i].dup = 1;
    cm_buf col[2];
    const char *p[2];
    cm_buf_columns_begin(col, 2);
    for (size_t i = 0; i < c->n; i++) {
        cm_buf_array_text(&col[0], c->items[i].tenant);
        cm_buf_array_text(&col[1], c->items[i].key);
    }
    int rc = cm_buf_columns_end(col, 2, p);
    PGresult *r = NULL;
    if (rc == 0)
        rc = cm_db_exec_prepared(db, "commission costs booked", "stl_costs_booked",
                                 "SELECT u.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY "
                                 "AS u(t, r, i) WHERE EXISTS (SELECT 1 FROM entries e WHERE "
                                 "e.tenant_id = u.t AND e.kind = 7 AND e.ref = u.r)",
                                 2, p, NULL, NULL, &r);
    cm_buf_columns_free(col, 2);
    if (rc)
        return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        long long k = cm_db_int(r, i, 0);
        if (k >= 1 && (size_t)k <= c->n)
            c->items[k - 1].dup = 1;
    }
    PQclear(r);
    return 0;
}

/* the entry of one fresh item: the payer gives delta, the channel's
 * commission account gets it (a negative delta the other way round) */
static int cost_entry(stl_costs *c, cm_db *db, const cost_item *it, int64_t posted_ms, stl_entry *e)
{
    int types[2] = {it->payer_type, STL_PARTY_COMMISSION};
    const char *owners[2] = {it->payer_owner, it->channel};
    int64_t ids[2];
    int rc = stl_ledger_accounts(c->ledger, db, it->tenant, it->currency, 2, types, owners, ids);
    if (rc)
        return rc;
    e->kind = STL_ENTRY_COMMISSION;
    snprintf(e->order_id, sizeof e->order_id, "%s", it->order_id);
    snprintf(e->merchant, sizeof e->merchant, "%s", it->merchant);
    memcpy(e->ref, it->key, sizeof it->key);
    snprintf(e->currency, sizeof e->currency, "%s", it->currency);
    snprintf(e->event_id, sizeof e->event_id, "%s", it->event_id);
    e->amount = it->delta < 0 ? -it->delta : it->delta;
    e->posted_ms = posted_ms;
    e->n = 2;
    e->p[0] = (stl_posting){
        .account = ids[0], .bucket = STL_AVAILABLE, .amount = -it->delta, .type = types[0]};
    snprintf(e->p[0].owner, sizeof e->p[0].owner, "%s", owners[0]);
    e->p[1] = (stl_posting){
        .account = ids[1], .bucket = STL_AVAILABLE, .amount = it->delta, .type = types[1]};
    snprintf(e->p[1].owner, sizeof e->p[1].owner, "%s", owners[1]);
    return 0;
}

int stl_costs_flush(stl_costs *c, cm_db *db)
{
    if (!c->n)
        return 0;
    /* the batch's lookups plan against the tables as they are now */
    int rc = cm_db_custom_plans(db);
    if (rc == 0)
        rc = mark_duplicates(c, db);
    size_t n = 0;
    for (size_t i = 0; i < c->n; i++)
        n += !c->items[i].dup;
    stl_entry **entries = calloc(n + 1, sizeof *entries);
    const char **tenants = calloc(n + 1, sizeof *tenants);
    const char **tps = calloc(n + 1, sizeof *tps);
    if (!entries || !tenants || !tps)
        rc = rc ? rc : CM_ENOMEM;
    int64_t posted = now_ms();
    size_t k = 0;
    for (size_t i = 0; i < c->n && rc == 0; i++) {
        const cost_item *it = &c->items[i];
        if (it->dup)
            continue;
        if (!(entries[k] = calloc(1, sizeof *entries[k]))) {
            rc = CM_ENOMEM;
            break;
        }
        tenants[k] = it->tenant;
        tps[k] = it->traceparent[0] ? it->traceparent : NULL;
        rc = cost_entry(c, db, it, posted, entries[k]);
        k++;
    }
    if (rc == 0)
        rc = stl_ledger_post(c->ledger, db, tenants, tps, entries, n);
    if (rc == 0) {
        for (size_t i = 0; i < c->n; i++) {
            const cost_item *it = &c->items[i];
            if (it->dup) {
                atomic_fetch_add(&c->duplicates, 1);
                continue;
            }
            atomic_fetch_add(&c->posted, 1);
            if (c->lag && it->occurred_ms)
                cm_histogram_observe(c->lag, (double)(posted - it->occurred_ms) / 1000.0);
        }
        c->n = 0;
    }
    for (size_t i = 0; entries && i < k; i++)
        free(entries[i]);
    free(entries);
    free(tenants);
    free(tps);
    return rc;
}
