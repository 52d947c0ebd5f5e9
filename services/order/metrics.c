/* the gross-margin counters: see ord_metrics.h */
#include "ord_metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the series of one (tenant, currency, sale) */
typedef struct series {
    cm_counter *revenue, *cost, *refunded, *reversed, *orders, *negative, *uncosted;
} series;

typedef struct entry {
    char key[96]; /* tenant \x1f currency \x1f sale */
    series s;
} entry;

struct ord_metrics {
    cm_metrics *m;
    pthread_mutex_t mu;
    size_t ntenants;
    char (*tenants)[72];
    size_t n, cap;
    entry *entries;
};

static int lookup(ord_metrics *om, const char *tenant, const char *currency, int flash,
                  series *out);

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
    if (lookup(om, "_other", "XXX", 0, &s) != 0) {
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
}

void ord_metrics_refunded(ord_metrics *om, const char *tenant, const ord_order *o,
                          const ord_refund *r)
{
    series s;
    if (!om || lookup(om, tenant, o->currency, o->flash, &s) != 0)
        return;
    add(s.refunded, r->amount);
    add(s.reversed, r->cost_reversed);
}
