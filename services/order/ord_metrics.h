/*
 * ord_metrics: the gross-margin counters of the order service (README.md,
 * "Cost and margin"). labels are tenant, currency and sale ("flash" when
 * any line was reserved from a flash sale, else "regular"): bounded by the
 * deployment's tenants, never per sku or per flash sale (QueryMargin
 * answers those). past ORD_METRICS_TENANTS_MAX distinct tenants a process
 * counts the rest under tenant="_other", so a flood of tenants cannot
 * grow /metrics without bound.
 *
 * per flash sale: revenue, cost, refunded and reversed counters labelled
 * tenant, currency and flash_sale, for the ORD_METRICS_FLASH_SALES_MAX
 * sales a process counted most recently (a flash sale is short and busy:
 * the ones on now are the recent ones). the least recently counted sale
 * gives its slot up to a new one: its totals move to
 * flash_sale="_other",tenant="_other" and its series leave /metrics
 * (stale to Prometheus), so sums over sales stay monotonic and the label
 * set stays bounded however many sales a tenant runs. the chart records
 * the margin ratio per flash sale from them
 * (commerce:order_flash_sale_margin:ratio15m).
 */
#ifndef ORD_METRICS_H
#define ORD_METRICS_H

#include "cm_metrics.h"
#include "ord_domain.h"

#define ORD_METRICS_TENANTS_MAX 200
#define ORD_METRICS_FLASH_SALES_MAX 64

typedef struct ord_metrics ord_metrics;

/* NULL on allocation failure; the series live in m */
ord_metrics *ord_metrics_new(cm_metrics *m);
void ord_metrics_free(ord_metrics *om);

/* a payment applied (not a replay): revenue, cost of goods, the order
 * counted, and a negative-margin order when it was sold under cost */
void ord_metrics_paid(ord_metrics *om, const char *tenant, const ord_order *o);

/* a refund applied (not a replay): refunded revenue and reversed cost */
void ord_metrics_refunded(ord_metrics *om, const char *tenant, const ord_order *o,
                          const ord_refund *r);

#endif
