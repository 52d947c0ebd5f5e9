/*
 * cm_config: a service's settings from its environment (12-factor).
 *
 * every variable has a documented default and is validated at start; a bad
 * value stops the process with one line naming the variable and the value:
 *
 *   WORKERS: must be an integer between 1 and 256, got "abc"
 *
 * a variable that is set but empty counts as unset (helm templates often
 * render optional values that way). the runtime's own variables are the
 * same for every service; what a service reads besides comes from its
 * descriptor, as data (cm_config_defaults):
 *
 *   knobs  its own settings: name, type, range, default, help. validated
 *          with the rest, printed by --help, read with cm_config_int /
 *          cm_config_text. a service never calls getenv.
 *   peers  services it calls: <PEER>_TARGET and <PEER>_TLS_CA_FILE,
 *          _CERT_FILE, _KEY_FILE, validated like the server's TLS files
 *          (cm_config_peer_of).
 *
 * and <SERVICE>_SCHEMA names its postgres schema (tests and benchmarks run
 * side by side), read once here.
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

#define CM_CONFIG_KNOBS_MAX 32 /* per service */
#define CM_CONFIG_PEERS_MAX 4
#define CM_CONFIG_SCHEMA_MAX 64

typedef enum {
    CM_KNOB_INT,   /* a decimal integer in [lo, hi] */
    CM_KNOB_ONOFF, /* "on" (1) or "off" (0) */
    CM_KNOB_TEXT,  /* any text up to CM_CONFIG_ADDR_MAX - 1 bytes */
} cm_knob_type;

/* one setting a service reads, declared as data */
typedef struct cm_knob {
    const char *name; /* the variable, "ORDER_SWEEP_MS" */
    cm_knob_type type;
    long long def;        /* INT and ONOFF: the default */
    long long lo, hi;     /* INT: the accepted range */
    const char *def_text; /* TEXT: the default (NULL: "") */
    const char *help;     /* one line: what it does (--help, the README) */
} cm_knob;

/* a service this one calls */
typedef struct cm_peer_def {
    const char *name;   /* lower case, "inventory": INVENTORY_TARGET, INVENTORY_TLS_* */
    const char *target; /* the default target, "127.0.0.1:50052" */
} cm_peer_def;

typedef struct {
    const char *service; /* "order": the binary is commerce-<service> */
    int grpc_port;       /* default GRPC_LISTEN is 0.0.0.0:<grpc_port> */
    int admin_port;      /* default ADMIN_LISTEN is 0.0.0.0:<admin_port> */
    const char *schema;  /* default of <SERVICE>_SCHEMA (NULL: the service name) */
    int workers;         /* default WORKERS (0: the number of CPUs) */
    const cm_knob *knobs;
    size_t nknobs;
    const cm_peer_def *peers;
    size_t npeers;
} cm_config_defaults;

/* a peer's settings; "" = unset */
typedef struct cm_config_peer {
    char target[CM_CONFIG_ADDR_MAX];
    /* TLS_CA_FILE: set = calls use TLS, verified with this CA bundle;
     * TLS_CERT_FILE / TLS_KEY_FILE: the client certificate presented
     * (mTLS) */
    char tls_ca_file[CM_CONFIG_PATH_MAX];
    char tls_cert_file[CM_CONFIG_PATH_MAX];
    char tls_key_file[CM_CONFIG_PATH_MAX];
    /* TOKEN_FILE: set = calls carry "authorization: Bearer <the file's
     * token>" (this service's own, re-read when the file changes) instead
     * of the caller's */
    char token_file[CM_CONFIG_PATH_MAX];
} cm_config_peer;

typedef struct {
    char grpc_listen[CM_CONFIG_ADDR_MAX];   /* GRPC_LISTEN, host:port; ":p" -> 0.0.0.0:p */
    char admin_listen[CM_CONFIG_ADDR_MAX];  /* ADMIN_LISTEN, same form */
    char pg_dsn[CM_CONFIG_TEXT_MAX];        /* PG_DSN */
    char kafka_brokers[CM_CONFIG_TEXT_MAX]; /* KAFKA_BROKERS, host:port[,host:port...] */
    int kafka_linger_ms;                    /* KAFKA_LINGER_MS, 1..1000 (default 20) */
    char schema[CM_CONFIG_SCHEMA_MAX];      /* <SERVICE>_SCHEMA */
    int workers;                            /* WORKERS, 1..256 */
    int db_pool;                            /* DB_POOL, 1..256 (default: min(WORKERS, 16)) */
    cm_log_level log_level;                 /* LOG_LEVEL */
    int max_message_bytes;                  /* GRPC_MAX_MESSAGE_BYTES */
    int reflection;                         /* GRPC_REFLECTION: on (1) or off (0) */
    int drain_grace_ms;                     /* DRAIN_GRACE_SECONDS * 1000 */
    int outbox_retention_s; /* OUTBOX_RETENTION_SECONDS: 0 = delete rows once published */
    cm_auth_mode auth_mode; /* AUTH_MODE */
    char jwt_hs256_secret[CM_CONFIG_TEXT_MAX];          /* JWT_HS256_SECRET; "" = none */
    char jwt_rs256_public_key_file[CM_CONFIG_PATH_MAX]; /* JWT_RS256_PUBLIC_KEY_FILE */
    char jwt_jwks_file[CM_CONFIG_PATH_MAX];             /* JWT_JWKS_FILE; "" = none */
    int allow_insecure; /* ALLOW_INSECURE=1: AUTH_MODE=off on a non-loopback GRPC_LISTEN */
    char jwt_issuer[CM_CONFIG_ADDR_MAX];         /* JWT_ISSUER; "" = not checked */
    char jwt_audience[CM_CONFIG_ADDR_MAX];       /* JWT_AUDIENCE; "" = not checked */
    int jwt_leeway_s;                            /* JWT_LEEWAY_SECONDS */
    char tls_cert_file[CM_CONFIG_PATH_MAX];      /* TLS_CERT_FILE; "" = plaintext gRPC */
    char tls_key_file[CM_CONFIG_PATH_MAX];       /* TLS_KEY_FILE, set with the cert */
    char tls_client_ca_file[CM_CONFIG_PATH_MAX]; /* TLS_CLIENT_CA_FILE; set = mTLS required */
    /* RATE_LIMIT_READ, _WRITE, _ADMIN: calls per second per tenant on this
     * replica, burst one second's worth; 0 = unlimited. RATE_LIMITS_FILE
     * ("" = none) overrides them, per tenant too (cm_ratelimit.h) */
    int rate_limit[3];
    char rate_limits_file[CM_CONFIG_PATH_MAX];
    /* RPC_DISABLE: method names (comma-separated) this replica does not
     * serve: callers get UNIMPLEMENTED, as from a version without them.
     * the service refuses to start on a name it does not have */
    char rpc_disable[CM_CONFIG_PATH_MAX];
    /* the descriptor's knobs and peers, and their values in the same order */
    const cm_knob *knobs;
    size_t nknobs;
    long long knob_int[CM_CONFIG_KNOBS_MAX];
    char knob_text[CM_CONFIG_KNOBS_MAX][CM_CONFIG_ADDR_MAX];
    const cm_peer_def *peer_defs;
    size_t npeers;
    cm_config_peer peers[CM_CONFIG_PEERS_MAX];
} cm_config;

/* reads and validates every variable (getenv) into *cfg: the runtime's,
 * then the peers' and the knobs of d. addresses are host:port,
 * [ipv6]:port or :port (all interfaces, stored as 0.0.0.0:port) with port
 * 1..65535; a peer's target is host:port or a gRPC target URI
 * (dns:///host:port, unix:/path); numbers are plain decimal within their
 * range; files must be readable regular files; TLS_CERT_FILE and
 * TLS_KEY_FILE go together, so do a peer's _TLS_CERT_FILE and
 * _TLS_KEY_FILE, which need its _TLS_CA_FILE; AUTH_MODE=required needs a
 * JWT key; AUTH_MODE=off needs GRPC_LISTEN on loopback (127.0.0.0/8,
 * [::1], localhost) or ALLOW_INSECURE=1. returns 0, or CM_EINVAL with one line in err ("VARIABLE:
 * problem, got \"value\""; secrets are never echoed) leaving *cfg
 * untouched; also CM_EINVAL for a descriptor that is itself wrong (a
 * default out of its range, too many knobs). d's knobs and peers must
 * outlive cfg. */
int cm_config_load(cm_config *cfg, const cm_config_defaults *d, char *err, size_t errlen);
/* the same from envp, "NAME=value" strings ending with NULL (the last of a
 * name wins), instead of the process environment: a child's environment,
 * tests, the fuzz harness. envp NULL reads getenv as cm_config_load. */
int cm_config_load_env(cm_config *cfg, const cm_config_defaults *d, const char *const *envp,
                       char *err, size_t errlen);
/* prints the --help text for prog (NULL: commerce-<service>): usage line,
 * then every variable the service reads — the runtime's, its peers', its
 * knobs — with its meaning and this service's default. */
void cm_config_usage(FILE *f, const char *prog, const cm_config_defaults *d);

/* the same variables as markdown tables (| variable | meaning | default |):
 * which = "common" prints the runtime's own (the same for every service),
 * "service" this service's peers and knobs. for README tables that a check
 * compares with the binaries (scripts/config-tables.sh). */
void cm_config_markdown(FILE *f, const cm_config_defaults *d, const char *which);

/* handles the command line: no arguments -> 0; "migrate" -> 0 with
 * *migrate_only = 1 (else it is set to 0); "--help"/"-h" -> usage on stdout,
 * returns 1 ("exit 0 now"); "--config-markdown=common|service" -> the
 * tables on stdout, returns 1; "--version" -> "<prog> <version>" on stdout,
 * returns 1; anything else -> one line on stderr, returns -1. prog is the
 * base name of argv[0]. */
int cm_config_main_args(int argc, char **argv, const cm_config_defaults *d, int *migrate_only);

/* the port of "host:port", ":port" or "[ipv6]:port": 1..65535, or CM_EINVAL
 * when addr is not such an address. */
int cm_config_port_of(const char *addr);

/* a knob's value: INT and ONOFF knobs by cm_config_int, TEXT by
 * cm_config_text. name must be one of the descriptor's knobs of that type:
 * anything else is a bug in the service, and aborts with a line saying so. */
long long cm_config_int(const cm_config *cfg, const char *name);
const char *cm_config_text(const cm_config *cfg, const char *name);

/* a peer's settings by its name ("inventory"); aborts like cm_config_int
 * for a peer the descriptor does not declare. */
const cm_config_peer *cm_config_peer_of(const cm_config *cfg, const char *name);

/* points s at cfg's auth fields (no copies: cfg must outlive the
 * cm_auth_new call). */
void cm_config_auth_settings(const cm_config *cfg, cm_auth_settings *s);

#endif
