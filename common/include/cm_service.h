/*
 * cm_service: everything a service's main.c would otherwise repeat.
 *
 *   int main(int argc, char **argv) { return cm_service_main(argc, argv, &ord_service); }
 *
 * cm_service_main parses the command line (--help, --version, migrate),
 * loads and validates the environment (cm_config), applies the service's
 * embedded migrations under an advisory lock, opens one database
 * connection per gRPC worker, starts the gRPC server and the admin HTTP
 * server, probes the database every second (health turns NOT_SERVING while
 * it is unreachable), and on SIGTERM/SIGINT drains: readiness and health go
 * NOT_SERVING, new calls are refused, calls in flight get
 * DRAIN_GRACE_SECONDS to finish, then the process exits 0.
 */
#ifndef CM_SERVICE_H
#define CM_SERVICE_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <uv.h>

#include "cm_config.h"
#include "cm_consumer.h"
#include "cm_db.h"
#include "cm_kafka.h"
#include "cm_metrics.h"
#include "cm_rpc.h"
#include "cm_rpc_client.h"
#include "cm_ticker.h"

typedef struct cm_service cm_service;

/* one subscription: a consumer thread with its own database connection,
 * applying events through the inbox (cm_consumer.h). the handler's arg is
 * the app state from app_init. */
typedef struct cm_service_consumer {
    const char *topic;
    const char *group; /* NULL: "commerce.<name>" (kafka/README.md) */
    cm_consumer_fn handler;
    /* optional, see cm_consumer_opts.after_commit (arg: the app state) */
    void (*after_commit)(const cm_event *ev, int duplicate, void *arg);
    int batch_size; /* see cm_consumer_opts.batch_size; 0: its default */
    /* optional, see cm_consumer_opts.tx_begin/tx_end (arg: the app state) */
    void (*tx_begin)(void *arg);
    int (*tx_end)(cm_db *db, void *arg);
    const char *const *types; /* see cm_consumer_opts.types; NULL: every type */
    int idempotent;           /* see cm_consumer_opts.idempotent */
    /* optional knobs (declared in the descriptor): an ONOFF knob that turns
     * the subscription off, TEXT knobs that override topic and group, an INT
     * knob that overrides batch_size when > 0 (1: one transaction per event,
     * the naive baseline of a benchmark) */
    const char *enabled_knob;
    const char *topic_knob;
    const char *group_knob;
    const char *batch_knob;
} cm_service_consumer;

/* a periodic job on a database connection the runtime owns: sweepers,
 * expiry, the settlement run. fn runs on the ticker's own thread, never
 * twice at a time; db is that thread's connection (schema set), made anew
 * after the server ended it. singleton: only one replica of the service
 * runs it at a time, the one holding a postgres advisory lock named after
 * the schema and the ticker (taken on the ticker's session, so a replica
 * that dies or loses its connection hands it over within a tick). */
typedef struct cm_service_ticker {
    const char *name;        /* "sweeper": logs, the lock's name */
    const char *period_knob; /* an INT knob holding the period in ms */
    void (*fn)(cm_service *svc, cm_db *db, void *app);
    int singleton;
    /* optional, singletons: called on the ticker's thread when this
     * replica stops leading (its session, and the lock with it, ended), so
     * what only the leader can know leaves its metrics
     * (cm_metrics_gauge_remove) instead of going stale */
    void (*resign)(cm_service *svc, void *app);
} cm_service_ticker;

typedef struct cm_service_def {
    const char *name;   /* "order": log "svc" field, error domain "order.commerce" */
    const char *schema; /* default postgres schema, e.g. "orders" (<NAME>_SCHEMA overrides) */
    int grpc_port;      /* default ports of DESIGN's table */
    int admin_port;
    int workers; /* default WORKERS; 0: the number of CPUs */
    /* the service's own settings and the services it calls (cm_config.h):
     * validated and printed by the runtime; read with cm_service_int,
     * cm_service_text and cm_service_peer */
    const cm_knob *knobs;
    size_t nknobs;
    const cm_peer_def *peers;
    size_t npeers;
    const cm_service_ticker *tickers;
    size_t ntickers;
    const cm_migration *migrations;
    size_t nmigrations;
    const ProtobufCServiceDescriptor *api;
    const cm_rpc_method *methods;
    size_t nmethods;
    /* optional: runs on the main thread after migrations, before serving;
     * *app is handed to handlers (cm_service_app). return 0 or a CM_E* with
     * a reason in err. */
    int (*app_init)(cm_service *svc, void **app, char *err, size_t errlen);
    void (*app_fini)(cm_service *svc, void *app);
    /* events, all optional (default off). uses_outbox: the outbox table is
     * migrated into the schema and the relay runs in this process (one
     * replica at a time publishes). consumers: the inbox table is migrated
     * and one consumer thread runs per entry. either starts the process's
     * one kafka producer (KAFKA_BROKERS). on SIGTERM, after the gRPC drain:
     * consumers stop (offsets of committed effects committed), the relay
     * finishes its batch, the producer flushes; each within
     * DRAIN_GRACE_SECONDS. */
    int uses_outbox;
    const cm_service_consumer *consumers;
    size_t nconsumers;
    /* extra librdkafka settings ("key", "value" pairs, NULL-terminated) for
     * the producer and the consumers (security.protocol, sasl.*), and for
     * the consumers only (session.timeout.ms), applied after the first */
    const char *const *kafka_conf;
    const char *const *kafka_consumer_conf;
} cm_service_def;

/* runs the service; returns the process exit code (0 after a clean drain,
 * 1 on a start failure, 2 on a configuration error). */
int cm_service_main(int argc, char **argv, const cm_service_def *def);

/* for app_init and timers on the main loop */
const cm_config *cm_service_config(const cm_service *svc);
uv_loop_t *cm_service_loop(cm_service *svc);
cm_metrics *cm_service_metrics(cm_service *svc);
/* the main thread's own database connection (not for handlers). */
cm_db *cm_service_main_db(cm_service *svc);
/* the process's kafka producer; NULL unless the service uses the outbox or
 * consumers. */
cm_kafka_producer *cm_service_producer(cm_service *svc);

/* the service's knobs (cm_config_int / cm_config_text on its config) */
long long cm_service_int(const cm_service *svc, const char *knob);
const char *cm_service_text(const cm_service *svc, const char *knob);
/* the schema the service runs in (<NAME>_SCHEMA or the descriptor's) */
const char *cm_service_schema(const cm_service *svc);
/* the client of a declared peer, made by the runtime before app_init from
 * <PEER>_TARGET and its TLS files; the caller's retries are its own
 * (cm_rpc_call's flags). aborts for an undeclared peer. */
cm_rpc_client *cm_service_peer(cm_service *svc, const char *name);

/* inside a handler: a database connection of the workers' pool (DB_POOL),
 * taken on the call's first use (waiting while every one is lent) and the
 * same for the rest of the call, given back when the handler returns;
 * NULL outside a worker. */
cm_db *cm_service_db(const cm_rpc_ctx *ctx);
/* gives the call's connection back before the handler returns, for a
 * handler about to wait on something else (a peer's call); a later
 * cm_service_db takes one again. never inside a transaction. */
void cm_service_db_done(const cm_rpc_ctx *ctx);
void *cm_service_app(const cm_rpc_ctx *ctx);

#endif
