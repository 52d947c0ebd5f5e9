/* the gross-margin counters: see ord_metrics.h */
#include "ord_metrics.h"

#include "cm_id.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the series of one (tenant, currency, sale) */
typedef struct series {
    cm_counter *revenue, *cost, *refunded, *reversed, *orders, *negative, *uncosted;
} series;

typedef struct entry {
    char key[96]; /* tenant \x1f currency \x1f sale_entry */
    series s;
} entry;

/* the series of one flash sale (tenant, currency, flash_sale id): kept for
 * the ORD_METRICS_FLASH_SALES_MAX sales counted most recently */
typedef struct sale_entry {
    char tenant[72], currency[4], id[40];
    cm_counter *revenue, *cost, *refunded, *reversed;
    uint64_t used; /* the tick it was last counted at */
} sale_entry;

struct ord_metrics {
    cm_metrics *m;
    pthread_mutex_t mu;
    size_t ntenants;
    char (*tenants)[72];
    size_t n, cap;
    entry *entries;
    sale_entry sales[ORD_METRICS_FLASH_SALES_MAX];
    size_t nsales;
    uint64_t tick;
};

static int lookup(ord_metrics *om, const char *tenant, const char *currency, int flash,
                  series *out);
static int sale_series(ord_metrics *om, sale_entry *s, const char *tenant, const char *currency,
                       const char *id);

ord_metrics *ord_metrics_new(cm_metrics *m)
{
    ord_metrics *om = calloc(1, sizeof *om);
    if (!om)
        return NULL;
    om->tenants = calloc(ORD_METRICS_TENANTS_MAX, sizeof *om->tenants);
    if (!om->tenants) {
        free(om);
        return NULL;
    }
    om->m = m;
    pthread_mutex_init(&om->mu, NULL);
    /* the families are on /metrics from the start (dashboards, and the
     * deploy checks that scrape a fresh process): one zero series of no
     * tenant (_other) in no currency (XXX, ISO 4217's code for none),
     * which the alerts' ratios leave out (nothing sold) */
    series s;
    sale_entry none;
    if (lookup(om, "_other", "XXX", 0, &s) != 0 ||
        sale_series(om, &none, "_other", "XXX", "_other") != 0) {
        ord_metrics_free(om);
        return NULL;
    }
    return om;
}

void ord_metrics_free(ord_metrics *om)
{
    if (!om)
        return;
    pthread_mutex_destroy(&om->mu);
    free(om->tenants);
    free(om->entries);
    free(om);
}

/* the tenant's label value: itself while there is room, then "_other".
 * called with mu held */
static const char *tenant_label(ord_metrics *om, const char *tenant)
{
    for (size_t i = 0; i < om->ntenants; i++)
        if (strcmp(om->tenants[i], tenant) == 0)
            return om->tenants[i];
    if (om->ntenants == ORD_METRICS_TENANTS_MAX || strlen(tenant) >= sizeof om->tenants[0])
        return "_other";
    snprintf(om->tenants[om->ntenants], sizeof om->tenants[0], "%s", tenant);
    return om->tenants[om->ntenants++];
}

/* every series of a label set is registered at once, at 0, so that the
 * alert's arithmetic across them (revenue - refunded - cost + reversed)
 * finds all four from the first sample */
static int lookup(ord_metrics *om, const char *tenant, const char *currency, int flash, series *out)
{
    const char *sale = flash ? "flash" : "regular";
    pthread_mutex_lock(&om->mu);
    const char *t = tenant_label(om, tenant);
    char key[96];
    snprintf(key, sizeof key, "%s\x1f%s\x1f%s", t, currency, sale);
    for (size_t i = 0; i < om->n; i++) {
        if (strcmp(om->entries[i].key, key) == 0) {
            *out = om->entries[i].s;
            pthread_mutex_unlock(&om->mu);
            return 0;
        }
    }
    if (om->n == om->cap) {
        size_t cap = om->cap ? om->cap * 2 : 16;
        entry *e = realloc(om->entries, cap * sizeof *e);
        if (!e) {
            pthread_mutex_unlock(&om->mu);
            return -1;
        }
        om->entries = e;
        om->cap = cap;
    }
    /* tenant ids are [A-Za-z0-9._-] (cm_auth_tenant_valid) and currencies
     * three letters: nothing to escape */
    char labels[160];
    snprintf(labels, sizeof labels, "tenant=\"%s\",currency=\"%s\",sale=\"%s\"", t, currency, sale);
    series s = {
        .revenue = cm_metrics_counter(
            om->m, "order_revenue_minor_total",
            "amount paid for orders, in minor units of the currency (gross margin)", labels),
        .cost = cm_metrics_counter(om->m, "order_cost_minor_total",
                                   "cost of goods of the paid orders (their lines' recorded unit "
                                   "cost times quantity), in minor units",
                                   labels),
        .refunded = cm_metrics_counter(om->m, "order_refunded_minor_total",
                                       "amount refunded, in minor units", labels),
        .reversed = cm_metrics_counter(om->m, "order_cost_reversed_minor_total",
                                       "cost of goods reversed by refunds (pro rata, exact in "
                                       "full), in minor units",
                                       labels),
        .orders = cm_metrics_counter(om->m, "order_margin_orders_total",
                                     "paid orders counted in the margin counters", labels),
        .negative = cm_metrics_counter(om->m, "order_negative_margin_orders_total",
                                       "paid orders whose gross margin is below 0 (sold under "
                                       "cost)",
                                       labels),
        .uncosted =
            cm_metrics_counter(om->m, "order_uncosted_orders_total",
                               "paid orders with a line of unknown cost (counted as 0)", labels),
    };
    if (!s.revenue || !s.cost || !s.refunded || !s.reversed || !s.orders || !s.negative ||
        !s.uncosted) {
        pthread_mutex_unlock(&om->mu);
        return -1;
    }
    entry *e = &om->entries[om->n++];
    snprintf(e->key, sizeof e->key, "%s", key);
    e->s = s;
    *out = s;
    pthread_mutex_unlock(&om->mu);
    return 0;
}

static void add(cm_counter *c, int64_t v)
{
    if (v > 0)
        cm_counter_add(c, (uint64_t)v);
}

/* registers the four series of a flash sale's label set (get-or-create);
 * returns 0 or -1 */
static int sale_series(ord_metrics *om, sale_entry *s, const char *tenant, const char *currency,
                       const char *id)
{
    char labels[200];
    snprintf(labels, sizeof labels, "tenant=\"%s\",currency=\"%s\",flash_sale=\"%s\"", tenant,
             currency, id);
    s->revenue = cm_metrics_counter(om->m, "order_flash_sale_revenue_minor_total",
                                    "amount paid for a flash sale's lines, in minor units (the "
                                    "most recently sold flash sales; the rest under _other)",
                                    labels);
    s->cost =
        cm_metrics_counter(om->m, "order_flash_sale_cost_minor_total",
                           "cost of goods of a flash sale's paid lines, in minor units", labels);
    s->refunded =
        cm_metrics_counter(om->m, "order_flash_sale_refunded_minor_total",
                           "amount refunded on a flash sale's lines, in minor units", labels);
    s->reversed = cm_metrics_counter(om->m, "order_flash_sale_cost_reversed_minor_total",
                                     "cost of goods reversed by refunds of a flash sale's lines, "
                                     "in minor units",
                                     labels);
    return s->revenue && s->cost && s->refunded && s->reversed ? 0 : -1;
}

/* the sale's slot, made when new; the least recently counted sale makes
 * room: its totals move to tenant="_other",flash_sale="_other" of its
 * currency, so sums over sales stay monotonic, and its series leave
 * /metrics. called with mu held; NULL when out of memory */
static sale_entry *sale_slot(ord_metrics *om, const char *tenant, const char *currency,
                             const char *id)
{
    const char *t = tenant_label(om, tenant);
    for (size_t i = 0; i < om->nsales; i++) {
        sale_entry *s = &om->sales[i];
        if (strcmp(s->id, id) == 0 && strcmp(s->tenant, t) == 0 &&
            strcmp(s->currency, currency) == 0) {
            s->used = ++om->tick;
            return s;
        }
    }
    sale_entry *s;
    if (om->nsales < ORD_METRICS_FLASH_SALES_MAX) {
        s = &om->sales[om->nsales];
    } else {
        s = &om->sales[0];
        for (size_t i = 1; i < om->nsales; i++)
            if (om->sales[i].used < s->used)
                s = &om->sales[i];
        sale_entry other;
        if (sale_series(om, &other, "_other", s->currency, "_other") != 0)
            return NULL;
        cm_counter *from[] = {s->revenue, s->cost, s->refunded, s->reversed};
        cm_counter *to[] = {other.revenue, other.cost, other.refunded, other.reversed};
        for (size_t k = 0; k < 4; k++) {
            cm_counter_add(to[k], cm_counter_value(from[k]));
            cm_metrics_counter_remove(om->m, from[k]);
        }
        om->nsales--;
        *s = om->sales[om->nsales];
        s = &om->sales[om->nsales];
    }
    memset(s, 0, sizeof *s);
    if (sale_series(om, s, t, currency, id) != 0)
        return NULL;
    snprintf(s->tenant, sizeof s->tenant, "%s", t);
    snprintf(s->currency, sizeof s->currency, "%s", currency);
    snprintf(s->id, sizeof s->id, "%s", id);
    s->used = ++om->tick;
    om->nsales++;
    return s;
}

/* counts one line of a flash sale; ids that are not plain keys (never,
 * inventory makes them) count under _other rather than be escaped */
static void sale_add(ord_metrics *om, const char *tenant, const char *currency, const char *id,
                     int64_t revenue, int64_t cost, int64_t refunded, int64_t reversed)
{
    if (!cm_id_key_valid(id, 39))
        id = "_other";
    pthread_mutex_lock(&om->mu);
    sale_entry *s = sale_slot(om, tenant, currency, id);
    if (s) {
        add(s->revenue, revenue);
        add(s->cost, cost);
        add(s->refunded, refunded);
        add(s->reversed, reversed);
    }
    pthread_mutex_unlock(&om->mu);
}

void ord_metrics_paid(ord_metrics *om, const char *tenant, const ord_order *o)
{
    series s;
    if (!om || lookup(om, tenant, o->currency, o->flash, &s) != 0)
        return;
    ord_margin mg = ord_order_margin(o);
    add(s.revenue, o->total);
    add(s.cost, mg.cost);
    cm_counter_add(s.orders, 1);
    if (mg.margin < 0)
        cm_counter_add(s.negative, 1);
    if (!mg.complete)
        cm_counter_add(s.uncosted, 1);
    for (size_t i = 0; i < o->nlines; i++) {
        const ord_line *l = &o->lines[i];
        if (l->flash_sale_id[0])
            sale_add(om, tenant, o->currency, l->flash_sale_id, l->line_total,
                     l->unit_cost > 0 ? l->unit_cost * l->qty : 0, 0, 0);
    }
}

void ord_metrics_refunded(ord_metrics *om, const char *tenant, const ord_order *o,
                          const ord_refund *r)
{
    series s;
    if (!om || lookup(om, tenant, o->currency, o->flash, &s) != 0)
        return;
    add(s.refunded, r->amount);
    add(s.reversed, r->cost_reversed);
    for (size_t k = 0; k < r->nlines; k++) {
        const ord_refund_line *rl = &r->lines[k];
        for (size_t i = 0; i < o->nlines; i++) {
            const ord_line *l = &o->lines[i];
            if (strcmp(l->sku, rl->sku) == 0 && l->flash_sale_id[0]) {
                sale_add(om, tenant, o->currency, l->flash_sale_id, 0, 0, rl->amount, rl->cost);
                break;
            }
        }
    }
}
