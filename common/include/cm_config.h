/*
 * cm_config: a service's settings from its environment (12-factor).
 *
 * every variable has a documented default and is validated at start; a bad
 * value stops the process with one line naming the variable and the value:
 *
 *   WORKERS: must be an integer between 1 and 256, got "abc"
 *
 * a variable that is set but empty counts as unset (helm templates often
 * render optional values that way). per-service defaults (ports, whether
 * INVENTORY_TARGET matters) come from a cm_config_defaults the service
 * passes. a typical main:
 *
 *   static const cm_config_defaults defs = {"order", 50051, 9091, 1};
 *   int migrate = 0, rc = cm_config_main_args(argc, argv, &defs, &migrate);
 *   if (rc != 0) return rc > 0 ? 0 : 2;
 *   cm_config cfg; char err[512];
 *   if (cm_config_load(&cfg, &defs, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); ... }
 */
#ifndef CM_CONFIG_H
#define CM_CONFIG_H

#include "cm_auth.h"
#include "cm_log.h"

#include <stddef.h>
#include <stdio.h>

#define CM_CONFIG_ADDR_MAX 256 /* buffer sizes, NUL included */
#define CM_CONFIG_TEXT_MAX 1024
#define CM_CONFIG_PATH_MAX 1024
#define CM_CONFIG_WORKERS_MAX 256

typedef struct {
    const char *service;        /* "order": the binary is commerce-<service> */
    int grpc_port;              /* default GRPC_LISTEN is 0.0.0.0:<grpc_port> */
    int admin_port;             /* default ADMIN_LISTEN is 0.0.0.0:<admin_port> */
    int needs_inventory_target; /* 1: INVENTORY_TARGET is read and shown in --help */
} cm_config_defaults;

typedef struct {
    char grpc_listen[CM_CONFIG_ADDR_MAX];      /* GRPC_LISTEN, host:port; ":p" -> 0.0.0.0:p */
    char admin_listen[CM_CONFIG_ADDR_MAX];     /* ADMIN_LISTEN, same form */
    char pg_dsn[CM_CONFIG_TEXT_MAX];           /* PG_DSN */
    char kafka_brokers[CM_CONFIG_TEXT_MAX];    /* KAFKA_BROKERS, host:port[,host:port...] */
    char inventory_target[CM_CONFIG_ADDR_MAX]; /* INVENTORY_TARGET; "" when not needed */
    /* INVENTORY_TLS_CA_FILE: set = calls to inventory use TLS, verified
     * with this CA bundle; INVENTORY_TLS_CERT_FILE / _KEY_FILE: the client
     * certificate presented to it (mTLS). "" = unset */
    char inventory_tls_ca_file[CM_CONFIG_PATH_MAX];
    char inventory_tls_cert_file[CM_CONFIG_PATH_MAX];
    char inventory_tls_key_file[CM_CONFIG_PATH_MAX];
    int workers;            /* WORKERS, 1..256 */
    cm_log_level log_level; /* LOG_LEVEL */
    int max_message_bytes;  /* GRPC_MAX_MESSAGE_BYTES */
    int drain_grace_ms;     /* DRAIN_GRACE_SECONDS * 1000 */
    int outbox_retention_s; /* OUTBOX_RETENTION_SECONDS: 0 = delete rows once published */
    cm_auth_mode auth_mode; /* AUTH_MODE */
    char jwt_hs256_secret[CM_CONFIG_TEXT_MAX];          /* JWT_HS256_SECRET; "" = none */
    char jwt_rs256_public_key_file[CM_CONFIG_PATH_MAX]; /* JWT_RS256_PUBLIC_KEY_FILE */
    char jwt_issuer[CM_CONFIG_ADDR_MAX];                /* JWT_ISSUER; "" = not checked */
    char jwt_audience[CM_CONFIG_ADDR_MAX];              /* JWT_AUDIENCE; "" = not checked */
    int jwt_leeway_s;                                   /* JWT_LEEWAY_SECONDS */
    char tls_cert_file[CM_CONFIG_PATH_MAX];             /* TLS_CERT_FILE; "" = plaintext gRPC */
    char tls_key_file[CM_CONFIG_PATH_MAX];              /* TLS_KEY_FILE, set with the cert */
    char tls_client_ca_file[CM_CONFIG_PATH_MAX]; /* TLS_CLIENT_CA_FILE; set = mTLS required */
} cm_config;

/* reads and validates every variable (getenv) into *cfg. addresses are
 * host:port, [ipv6]:port or :port (all interfaces, stored as 0.0.0.0:port)
 * with port 1..65535; INVENTORY_TARGET is host:port or a gRPC target URI
 * (dns:///host:port, unix:/path); numbers are plain decimal within their
 * range; files must be readable regular files; TLS_CERT_FILE and
 * TLS_KEY_FILE go together, so do INVENTORY_TLS_CERT_FILE and
 * INVENTORY_TLS_KEY_FILE, which need INVENTORY_TLS_CA_FILE; AUTH_MODE=required needs a JWT key.
 * returns 0, or CM_EINVAL with one line in err ("VARIABLE: problem, got \"value\""; secrets are
 * never echoed) leaving *cfg untouched. reads the environment, so call it before starting threads
 * that might setenv. */
int cm_config_load(cm_config *cfg, const cm_config_defaults *d, char *err, size_t errlen);

/* prints the --help text for prog (NULL: commerce-<service>): usage line,
 * then each variable with its meaning and this service's default. */
void cm_config_usage(FILE *f, const char *prog, const cm_config_defaults *d);

/* handles the command line: no arguments -> 0; "migrate" -> 0 with
 * *migrate_only = 1 (else it is set to 0); "--help"/"-h" -> usage on stdout,
 * returns 1 ("exit 0 now"); "--version" -> "<prog> <version>" on stdout,
 * returns 1; anything else -> one line on stderr, returns -1. prog is the
 * base name of argv[0]. */
int cm_config_main_args(int argc, char **argv, const cm_config_defaults *d, int *migrate_only);

/* the port of "host:port", ":port" or "[ipv6]:port": 1..65535, or CM_EINVAL
 * when addr is not such an address. */
int cm_config_port_of(const char *addr);

/* a service's own integer variable: def when unset or empty; otherwise the
 * whole value must be a decimal integer in [lo, hi], else def is returned
 * and *bad set to 1 (so a service checks all its variables, then refuses to
 * start with one line naming them). */
long cm_config_env_long(const char *name, long def, long lo, long hi, int *bad);

/* a service's own on/off switch: def when unset or empty, 1 for "on", 0 for
 * "off", anything else sets *bad and gives def. */
int cm_config_env_onoff(const char *name, int def, int *bad);

/* points s at cfg's auth fields (no copies: cfg must outlive the
 * cm_auth_new call). */
void cm_config_auth_settings(const cm_config *cfg, cm_auth_settings *s);

#endif
