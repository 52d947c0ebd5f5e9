/*
 * cm_metrics: counters, gauges and histograms, rendered as Prometheus text
 * (exposition format 0.0.4) by the admin HTTP server.
 *
 * a series is (name, labels). registering the same pair twice returns the
 * same series, so callers may look series up lazily. registration takes a
 * mutex; updates are lock-free atomics and safe from any thread. series live
 * as long as the registry.
 *
 * labels are given pre-formatted in Prometheus syntax, without braces:
 *   cm_metrics_counter(m, "rpc_requests_total", "calls served",
 *                      "method=\"/commerce.order.v1.OrderService/CreateOrder\",code=\"OK\"");
 * NULL or "" means no labels. label values must already be escaped.
 */
#ifndef CM_METRICS_H
#define CM_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct cm_metrics cm_metrics;
typedef struct cm_counter cm_counter;
typedef struct cm_gauge cm_gauge;
typedef struct cm_histogram cm_histogram;

cm_metrics *cm_metrics_new(void);
void cm_metrics_free(cm_metrics *m);

/* the process-wide registry, created on first use (thread-safe), freed by an
 * atexit handler so leak checkers stay quiet: threads that update its series
 * must be joined before the process exits. NULL only if allocation failed. */
cm_metrics *cm_metrics_default(void);

/* get-or-create. return NULL on allocation failure, when the name is
 * already registered with another type, or when the name is not a valid
 * prometheus name ([a-zA-Z_:][a-zA-Z0-9_:]*) or the labels contain a newline
 * or a brace. the help text of the first registration of a name wins; help is
 * escaped on output. */
cm_counter *cm_metrics_counter(cm_metrics *m, const char *name, const char *help,
                               const char *labels);
cm_gauge *cm_metrics_gauge(cm_metrics *m, const char *name, const char *help, const char *labels);
/* bounds: strictly ascending upper bounds (le), +Inf is implied; copied.
 * a series that already exists keeps the bounds it was created with. */
cm_histogram *cm_metrics_histogram(cm_metrics *m, const char *name, const char *help,
                                   const char *labels, const double *bounds, size_t nbounds);

/* takes a counter's series off the registry and frees it: the next scrape
 * no longer has it (Prometheus marks it stale). for label sets that come
 * and go (a bounded set of the most recent flash sales, say); the caller
 * guarantees no thread uses c any more. NULL is a no-op. */
void cm_metrics_counter_remove(cm_metrics *m, cm_counter *c);
/* the same for a gauge: a value only one replica can know (what a singleton
 * ticker computes) leaves the scrape of a replica that no longer leads */
void cm_metrics_gauge_remove(cm_metrics *m, cm_gauge *g);

/* default latency buckets in seconds, 0.0001 .. 10. */
extern const double cm_metrics_latency_buckets[];
extern const size_t cm_metrics_latency_nbuckets;

/* updates are lock-free relaxed atomics, safe from any thread. a histogram's
 * count is the sum of its buckets, so _count always equals the +Inf bucket. */
void cm_counter_add(cm_counter *c, uint64_t n);
uint64_t cm_counter_value(const cm_counter *c);
void cm_gauge_set(cm_gauge *g, double v);
void cm_gauge_add(cm_gauge *g, double delta);
double cm_gauge_value(const cm_gauge *g);
void cm_histogram_observe(cm_histogram *h, double v);
uint64_t cm_histogram_count(const cm_histogram *h);

/* renders every series, families in order of first registration, each with
 * one HELP and TYPE line; *out is malloc'd and NUL-terminated, caller frees;
 * len (may be NULL) gets its length. takes the registration mutex while it
 * walks the series, never blocks updates. returns 0, CM_EINVAL or CM_ENOMEM. */
int cm_metrics_render(cm_metrics *m, char **out, size_t *len);

#endif
