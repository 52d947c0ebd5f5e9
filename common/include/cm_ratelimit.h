/*
 * cm_ratelimit: token buckets per tenant and per call class (read, write,
 * admin), enforced in this process. design note: common/README.md, "rate
 * limits and quotas".
 *
 * a limit is a rate (calls per second, fractions allowed) and a burst (how
 * many calls may come at once after a quiet spell); rate 0 means unlimited.
 * limits come from the defaults given at creation, overridden by a JSON
 * file (RATE_LIMITS_FILE) that may also set them per tenant:
 *
 *   {"default": {"write": {"rate": 200, "burst": 400}},
 *    "tenants": {"acme": {"read": {"rate": 50, "burst": 50}}}}
 *
 * a class (or quota, cm_ratelimit_quota) a tenant's entry leaves out is
 * the file's default for it, and a
 * class the file's default leaves out is the creation default. the file is
 * re-read when it changed (cm_ratelimit_reload, which the service runtime
 * calls once a second from its loop); a bad file keeps the limits in force.
 *
 * takes are thread-safe and cheap: the buckets live in a hash table split
 * into shards, each under its own mutex, and a take touches one shard. the
 * number of buckets is bounded: a full shard reuses its least recently used
 * bucket, so made-up tenant names cannot grow memory.
 */
#ifndef CM_RATELIMIT_H
#define CM_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "cm_metrics.h"

typedef struct cm_ratelimit cm_ratelimit;

typedef enum {
    CM_RATELIMIT_READ,
    CM_RATELIMIT_WRITE,
    CM_RATELIMIT_ADMIN,
    CM_RATELIMIT_NCLASSES
} cm_ratelimit_class;

typedef struct cm_ratelimit_limit {
    double rate;  /* calls per second; 0: unlimited */
    double burst; /* calls at once, >= 1 (0: one second's worth of rate) */
} cm_ratelimit_limit;

typedef struct cm_ratelimit_opts {
    /* per class, when the file does not say otherwise */
    cm_ratelimit_limit defaults[CM_RATELIMIT_NCLASSES];
    const char *file;   /* RATE_LIMITS_FILE; NULL or "": none */
    size_t max_buckets; /* 0: 65536 */
    /* the clock, in nanoseconds on any monotonic scale; NULL:
     * CLOCK_MONOTONIC. for tests */
    int64_t (*now_ns)(void *arg);
    void *clock_arg;
    /* rate_limited_total{tenant,class}; NULL: no metrics. not owned */
    cm_metrics *metrics;
} cm_ratelimit_opts;

/* a refused take: how long until a token is there, and the limit */
typedef struct cm_ratelimit_refusal {
    int64_t retry_ns;
    cm_ratelimit_limit limit;
} cm_ratelimit_refusal;

/* creates the limiter; a file that cannot be read or parsed stops the
 * start (CM_EINVAL, the reason in err). */
int cm_ratelimit_new(cm_ratelimit **out, const cm_ratelimit_opts *o, char *err, size_t errlen);
void cm_ratelimit_free(cm_ratelimit *rl);

/* 1 when no limit at all is configured (every take would pass): the
 * runtime may skip takes altogether. may change when the file does. */
int cm_ratelimit_off(const cm_ratelimit *rl);

/* takes one token of tenant's bucket for cls. 0: go on; CM_ELIMIT: over
 * the limit, with *why (may be NULL) saying when to retry and which limit.
 * counts the refusal in the metrics. thread-safe. */
int cm_ratelimit_take(cm_ratelimit *rl, const char *tenant, cm_ratelimit_class cls,
                      cm_ratelimit_refusal *why);

/* charges n more tokens of tenant's bucket for cls, never refusing: the
 * bucket may go into debt, which the takes after it wait out. for a call
 * that does the work of n + 1 (a batch of n + 1 items): it passed its own
 * take, and the limit holds on average over the items. thread-safe. */
void cm_ratelimit_charge(cm_ratelimit *rl, const char *tenant, cm_ratelimit_class cls, unsigned n);

/* looks at the file (one stat) and re-reads it when it changed, or
 * always with force: 1 when the new limits are in force, 0 when nothing
 * changed (or there is no file), CM_EINVAL with the limits in force kept
 * and the reason in err. the service runtime calls it once a second from
 * its loop, with the JWKS and the peers' tokens (and forced on SIGHUP):
 * takes never touch the file. */
int cm_ratelimit_reload(cm_ratelimit *rl, int force, char *err, size_t errlen);

/* the limit in force for tenant and cls (for messages and tests) */
cm_ratelimit_limit cm_ratelimit_limit_of(cm_ratelimit *rl, const char *tenant,
                                         cm_ratelimit_class cls);

/* the quota name (e.g. "skus": how many a tenant may have) in force for
 * tenant: its entry's in the file, else the file's default's, else def.
 * quotas are set in the same file, beside the classes:
 *   {"default": {"quotas": {"skus": 100000}},
 *    "tenants": {"acme": {"quotas": {"skus": 10}}}}
 * names are [a-z_]; which ones mean something is the services' business
 * (their READMEs list them with their defaults). thread-safe; no IO. */
long long cm_ratelimit_quota(cm_ratelimit *rl, const char *tenant, const char *name, long long def);

/* "read", "write", "admin" */
const char *cm_ratelimit_class_name(cm_ratelimit_class cls);

/* the number of buckets held now (bounded by max_buckets) */
size_t cm_ratelimit_buckets(cm_ratelimit *rl);

#endif
