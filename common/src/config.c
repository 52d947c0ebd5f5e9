#include "cm_config.h"
#include "cm_err.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef COMMERCE_VERSION
#define COMMERCE_VERSION "unknown"
#endif

#define DEF_PG_DSN "postgresql:///commerce"
#define DEF_KAFKA "127.0.0.1:9092"
#define DEF_INVENTORY "127.0.0.1:50052"
#define DEF_MAX_MESSAGE (4 * 1024 * 1024)
#define DEF_DRAIN_S 20
#define DRAIN_MAX_S 3600
#define OUTBOX_RETENTION_MAX_S 604800 /* a week */
#define DEF_LEEWAY_S 30
#define LEEWAY_MAX_S 3600

/* set but empty counts as unset */
static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* the value as it goes into an error line: quoted, control bytes escaped so
 * the message stays one line, cut short when long */
static const char *quoted(const char *v, char *buf, size_t len)
{
    size_t o = 0;
    buf[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)v; *p && o + 8 < len; p++) {
        if (p - (const unsigned char *)v >= 120) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (*p < 0x20 || *p == 0x7f || *p == '"' || *p == '\\')
            o += (size_t)snprintf(buf + o, len - o, "\\x%02x", *p);
        else
            buf[o++] = (char)*p;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

static int bad(char *err, size_t errlen, const char *var, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int bad(char *err, size_t errlen, const char *var, const char *fmt, ...)
{
    if (err && errlen > 0) {
        int n = snprintf(err, errlen, "%s: ", var);
        if (n >= 0 && (size_t)n < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return CM_EINVAL;
}

static int copy_value(char *dst, size_t dstlen, const char *var, const char *v, char *err,
                      size_t errlen)
{
    size_t n = strlen(v);
    if (n >= dstlen)
        return bad(err, errlen, var, "longer than %zu bytes", dstlen - 1);
    memcpy(dst, v, n + 1);
    return 0;
}

/* decimal digits only: no sign, no spaces, no 0x; -1 when not a number in
 * [lo, hi] */
static int parse_int(const char *s, long lo, long hi, long *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || !end || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int host_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_';
}

/* splits "host:port", "[v6]:port" or ":port". on success *port is 1..65535,
 * host/hostlen point into s (hostlen 0 for ":port"), *bracketed says [v6]. */
static int split_hostport(const char *s, const char **host, size_t *hostlen, int *bracketed,
                          int *port)
{
    const char *colon;
    *bracketed = 0;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close == s + 1 || close[1] != ':')
            return -1;
        for (const char *p = s + 1; p < close; p++)
            if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
                  (*p >= 'A' && *p <= 'F') || *p == ':' || *p == '.'))
                return -1;
        *host = s + 1;
        *hostlen = (size_t)(close - s - 1);
        *bracketed = 1;
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -1;
        for (const char *p = s; p < colon; p++)
            if (!host_char_ok(*p))
                return -1;
        *host = s;
        *hostlen = (size_t)(colon - s);
        if (*hostlen > 253)
            return -1;
    }
    long p;
    if (parse_int(colon + 1, 1, 65535, &p) != 0 || strlen(colon + 1) > 5)
        return -1;
    *port = (int)p;
    return 0;
}

int cm_config_port_of(const char *addr)
{
    const char *h;
    size_t hl;
    int br, port;
    if (!addr || split_hostport(addr, &h, &hl, &br, &port) != 0)
        return CM_EINVAL;
    return port;
}

/* a listen address; ":port" becomes "0.0.0.0:port" so every consumer (gRPC
 * core, libuv) gets the same explicit form */
static int load_listen(char *dst, size_t dstlen, const char *var, const char *v, char *err,
                       size_t errlen)
{
    char q[160];
    const char *h;
    size_t hl;
    int br, port;
    if (split_hostport(v, &h, &hl, &br, &port) != 0)
        return bad(err, errlen, var,
                   "must be host:port, [ipv6]:port or :port with port 1..65535, got %s",
                   quoted(v, q, sizeof q));
    if (hl == 0)
        snprintf(dst, dstlen, "0.0.0.0:%d", port);
    else
        return copy_value(dst, dstlen, var, v, err, errlen);
    return 0;
}

static int uri_scheme_ok(const char *v)
{
    static const char *const schemes[] = {"dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:"};
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        size_t n = strlen(schemes[i]);
        if (strncmp(v, schemes[i], n) == 0) {
            if (v[n] == '\0')
                return 0;
            for (const char *p = v + n; *p; p++)
                if (*p <= ' ' || *p == 0x7f)
                    return 0;
            return 1;
        }
    }
    return -1;
}

static int load_target(char *dst, size_t dstlen, const char *var, const char *v, char *err,
                       size_t errlen)
{
    char q[160];
    int u = uri_scheme_ok(v);
    const char *h;
    size_t hl;
    int br, port;
    /* a connect target needs a host: ":port" is only meaningful for listening */
    if (u == 0 || (u < 0 && (split_hostport(v, &h, &hl, &br, &port) != 0 || hl == 0)))
        return bad(err, errlen, var,
                   "must be host:port or a gRPC target such as dns:///host:port, got %s",
                   quoted(v, q, sizeof q));
    return copy_value(dst, dstlen, var, v, err, errlen);
}

/* comma-separated host:port, each optionally behind a listener name
 * (PLAINTEXT://, SSL://) as librdkafka accepts */
static int load_brokers(char *dst, size_t dstlen, const char *var, const char *v, char *err,
                        size_t errlen)
{
    char q[160], item[300];
    const char *p = v;
    for (;;) {
        size_t n = strcspn(p, ",");
        int ok = n > 0 && n < sizeof item;
        if (ok) {
            memcpy(item, p, n);
            item[n] = '\0';
            const char *hp = strstr(item, "://");
            hp = hp ? hp + 3 : item;
            const char *h;
            size_t hl;
            int br, port;
            ok = split_hostport(hp, &h, &hl, &br, &port) == 0 && hl > 0;
        }
        if (!ok)
            return bad(err, errlen, var, "must be a comma-separated list of host:port, got %s",
                       quoted(v, q, sizeof q));
        if (p[n] == '\0')
            break;
        p += n + 1;
    }
    return copy_value(dst, dstlen, var, v, err, errlen);
}

static int load_dsn(char *dst, size_t dstlen, const char *var, const char *v, char *err,
                    size_t errlen)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(v, &msg);
    if (!opts) {
        /* libpq quotes the string back, which may hold a password: only pass
         * its reason on when there is none to leak */
        int secret = strchr(v, '@') || strstr(v, "password");
        if (msg && !secret) {
            size_t n = strcspn(msg, "\n");
            msg[n] = '\0';
        }
        int rc = bad(err, errlen, var, "not a valid libpq connection string%s%s",
                     msg && !secret ? ": " : "", msg && !secret ? msg : "");
        if (msg)
            PQfreemem(msg);
        return rc;
    }
    PQconninfoFree(opts);
    return copy_value(dst, dstlen, var, v, err, errlen);
}

static int load_int(int *dst, const char *var, const char *v, long lo, long hi, char *err,
                    size_t errlen)
{
    char q[160];
    long x;
    if (parse_int(v, lo, hi, &x) != 0)
        return bad(err, errlen, var, "must be an integer between %ld and %ld, got %s", lo, hi,
                   quoted(v, q, sizeof q));
    *dst = (int)x;
    return 0;
}

/* a file the process will open later: check now, fail at start */
static int load_file(char *dst, size_t dstlen, const char *var, const char *v, char *err,
                     size_t errlen)
{
    char q[160];
    int rc = copy_value(dst, dstlen, var, v, err, errlen);
    if (rc != 0)
        return rc;
    int fd = open(v, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return bad(err, errlen, var, "cannot read %s: %s", quoted(v, q, sizeof q), strerror(errno));
    struct stat st;
    int regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    close(fd);
    if (!regular)
        return bad(err, errlen, var, "%s is not a regular file", quoted(v, q, sizeof q));
    return 0;
}

static int default_workers(void)
{
    /* the cpus this process may run on, which containers and taskset narrow */
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 && c < INT_MAX ? (int)c : 1;
    }
    return n > CM_CONFIG_WORKERS_MAX ? CM_CONFIG_WORKERS_MAX : n;
}

/* the TLS of the calls to inventory: the CA that signed inventory's
 * certificate turns it on; a client certificate and key (both) add mTLS */
static int load_client_tls(cm_config *c, char *err, size_t errlen)
{
    const char *ca = env("INVENTORY_TLS_CA_FILE"), *cert = env("INVENTORY_TLS_CERT_FILE"),
               *key = env("INVENTORY_TLS_KEY_FILE");
    int rc;
    if (cert && !key)
        return bad(err, errlen, "INVENTORY_TLS_KEY_FILE",
                   "unset, but INVENTORY_TLS_CERT_FILE is set (mTLS needs both)");
    if (key && !cert)
        return bad(err, errlen, "INVENTORY_TLS_CERT_FILE",
                   "unset, but INVENTORY_TLS_KEY_FILE is set (mTLS needs both)");
    if (cert && !ca)
        return bad(err, errlen, "INVENTORY_TLS_CA_FILE",
                   "unset, but a client certificate is set (it is sent over TLS only)");
    if (ca && (rc = load_file(c->inventory_tls_ca_file, sizeof c->inventory_tls_ca_file,
                              "INVENTORY_TLS_CA_FILE", ca, err, errlen)))
        return rc;
    if (cert && (rc = load_file(c->inventory_tls_cert_file, sizeof c->inventory_tls_cert_file,
                                "INVENTORY_TLS_CERT_FILE", cert, err, errlen)))
        return rc;
    if (key && (rc = load_file(c->inventory_tls_key_file, sizeof c->inventory_tls_key_file,
                               "INVENTORY_TLS_KEY_FILE", key, err, errlen)))
        return rc;
    return 0;
}

static int load_all(cm_config *c, const cm_config_defaults *d, char *err, size_t errlen)
{
    const char *v;
    char q[160];
    int rc;

    snprintf(c->grpc_listen, sizeof c->grpc_listen, "0.0.0.0:%d", d->grpc_port);
    if ((v = env("GRPC_LISTEN")) &&
        (rc = load_listen(c->grpc_listen, sizeof c->grpc_listen, "GRPC_LISTEN", v, err, errlen)))
        return rc;
    snprintf(c->admin_listen, sizeof c->admin_listen, "0.0.0.0:%d", d->admin_port);
    if ((v = env("ADMIN_LISTEN")) &&
        (rc = load_listen(c->admin_listen, sizeof c->admin_listen, "ADMIN_LISTEN", v, err, errlen)))
        return rc;
    /* two listeners on one port: the second bind would fail later, less clearly */
    if (cm_config_port_of(c->grpc_listen) == cm_config_port_of(c->admin_listen)) {
        const char *g = c->grpc_listen, *a = c->admin_listen;
        size_t gl = strlen(g) - strlen(strrchr(g, ':')), al = strlen(a) - strlen(strrchr(a, ':'));
        int any = strncmp(g, "0.0.0.0:", 8) == 0 || strncmp(a, "0.0.0.0:", 8) == 0 ||
                  strncmp(g, "[::]:", 5) == 0 || strncmp(a, "[::]:", 5) == 0;
        const char *raw = env("ADMIN_LISTEN");
        if (any || (gl == al && strncmp(g, a, gl) == 0))
            return bad(err, errlen, "ADMIN_LISTEN",
                       "port %d is already used by GRPC_LISTEN, got %s", cm_config_port_of(a),
                       quoted(raw ? raw : a, q, sizeof q));
    }

    snprintf(c->pg_dsn, sizeof c->pg_dsn, "%s", DEF_PG_DSN);
    if ((v = env("PG_DSN")) &&
        (rc = load_dsn(c->pg_dsn, sizeof c->pg_dsn, "PG_DSN", v, err, errlen)))
        return rc;
    snprintf(c->kafka_brokers, sizeof c->kafka_brokers, "%s", DEF_KAFKA);
    if ((v = env("KAFKA_BROKERS")) && (rc = load_brokers(c->kafka_brokers, sizeof c->kafka_brokers,
                                                         "KAFKA_BROKERS", v, err, errlen)))
        return rc;
    if (d->needs_inventory_target) {
        snprintf(c->inventory_target, sizeof c->inventory_target, "%s", DEF_INVENTORY);
        if ((v = env("INVENTORY_TARGET")) &&
            (rc = load_target(c->inventory_target, sizeof c->inventory_target, "INVENTORY_TARGET",
                              v, err, errlen)))
            return rc;
        if ((rc = load_client_tls(c, err, errlen)))
            return rc;
    }

    c->workers = default_workers();
    if ((v = env("WORKERS")) &&
        (rc = load_int(&c->workers, "WORKERS", v, 1, CM_CONFIG_WORKERS_MAX, err, errlen)))
        return rc;
    c->log_level = CM_LOG_INFO;
    if ((v = env("LOG_LEVEL")) && cm_log_level_parse(v, &c->log_level) != 0)
        return bad(err, errlen, "LOG_LEVEL", "must be one of debug, info, warn, error, got %s",
                   quoted(v, q, sizeof q));
    c->max_message_bytes = DEF_MAX_MESSAGE;
    if ((v = env("GRPC_MAX_MESSAGE_BYTES")) &&
        (rc =
             load_int(&c->max_message_bytes, "GRPC_MAX_MESSAGE_BYTES", v, 1, INT_MAX, err, errlen)))
        return rc;
    int drain_s = DEF_DRAIN_S;
    if ((v = env("DRAIN_GRACE_SECONDS")) &&
        (rc = load_int(&drain_s, "DRAIN_GRACE_SECONDS", v, 0, DRAIN_MAX_S, err, errlen)))
        return rc;
    c->drain_grace_ms = drain_s * 1000;
    c->outbox_retention_s = 0;
    if ((v = env("OUTBOX_RETENTION_SECONDS")) &&
        (rc = load_int(&c->outbox_retention_s, "OUTBOX_RETENTION_SECONDS", v, 0,
                       OUTBOX_RETENTION_MAX_S, err, errlen)))
        return rc;

    c->auth_mode = CM_AUTH_OFF;
    if ((v = env("AUTH_MODE")) && cm_auth_mode_parse(v, &c->auth_mode) != 0)
        return bad(err, errlen, "AUTH_MODE", "must be off or required, got %s",
                   quoted(v, q, sizeof q));
    if ((v = env("JWT_HS256_SECRET"))) {
        /* a secret is never echoed, only measured */
        if (strlen(v) < CM_AUTH_HS256_MIN_SECRET)
            return bad(err, errlen, "JWT_HS256_SECRET", "must be at least %d bytes, got %zu",
                       CM_AUTH_HS256_MIN_SECRET, strlen(v));
        if ((rc = copy_value(c->jwt_hs256_secret, sizeof c->jwt_hs256_secret, "JWT_HS256_SECRET", v,
                             err, errlen)))
            return rc;
    }
    if ((v = env("JWT_RS256_PUBLIC_KEY_FILE")) &&
        (rc = load_file(c->jwt_rs256_public_key_file, sizeof c->jwt_rs256_public_key_file,
                        "JWT_RS256_PUBLIC_KEY_FILE", v, err, errlen)))
        return rc;
    if (c->auth_mode == CM_AUTH_REQUIRED && !c->jwt_hs256_secret[0] &&
        !c->jwt_rs256_public_key_file[0])
        return bad(err, errlen, "AUTH_MODE",
                   "\"required\" needs JWT_HS256_SECRET or JWT_RS256_PUBLIC_KEY_FILE");
    if ((v = env("JWT_ISSUER")) &&
        (rc = copy_value(c->jwt_issuer, sizeof c->jwt_issuer, "JWT_ISSUER", v, err, errlen)))
        return rc;
    if ((v = env("JWT_AUDIENCE")) &&
        (rc = copy_value(c->jwt_audience, sizeof c->jwt_audience, "JWT_AUDIENCE", v, err, errlen)))
        return rc;
    c->jwt_leeway_s = DEF_LEEWAY_S;
    if ((v = env("JWT_LEEWAY_SECONDS")) &&
        (rc = load_int(&c->jwt_leeway_s, "JWT_LEEWAY_SECONDS", v, 0, LEEWAY_MAX_S, err, errlen)))
        return rc;

    const char *cert = env("TLS_CERT_FILE"), *key = env("TLS_KEY_FILE"),
               *ca = env("TLS_CLIENT_CA_FILE");
    if (cert && !key)
        return bad(err, errlen, "TLS_KEY_FILE", "unset, but TLS_CERT_FILE is set (TLS needs both)");
    if (key && !cert)
        return bad(err, errlen, "TLS_CERT_FILE", "unset, but TLS_KEY_FILE is set (TLS needs both)");
    if (ca && !cert)
        return bad(err, errlen, "TLS_CLIENT_CA_FILE",
                   "mTLS needs TLS_CERT_FILE and TLS_KEY_FILE too, got %s",
                   quoted(ca, q, sizeof q));
    if (cert && (rc = load_file(c->tls_cert_file, sizeof c->tls_cert_file, "TLS_CERT_FILE", cert,
                                err, errlen)))
        return rc;
    if (key &&
        (rc = load_file(c->tls_key_file, sizeof c->tls_key_file, "TLS_KEY_FILE", key, err, errlen)))
        return rc;
    if (ca && (rc = load_file(c->tls_client_ca_file, sizeof c->tls_client_ca_file,
                              "TLS_CLIENT_CA_FILE", ca, err, errlen)))
        return rc;
    return 0;
}

int cm_config_load(cm_config *cfg, const cm_config_defaults *d, char *err, size_t errlen)
{
    if (err && errlen > 0)
        err[0] = '\0';
    if (!cfg || !d || d->grpc_port < 1 || d->grpc_port > 65535 || d->admin_port < 1 ||
        d->admin_port > 65535)
        return bad(err, errlen, "config", "invalid service defaults");
    /* build aside and copy on success, so a failed load leaves cfg as it was */
    cm_config *c = calloc(1, sizeof *c);
    if (!c)
        return bad(err, errlen, "config", "out of memory");
    int rc = load_all(c, d, err, errlen);
    if (rc == 0)
        memcpy(cfg, c, sizeof *c);
    /* the secret may be in c: wipe before freeing */
    volatile unsigned char *p = (volatile unsigned char *)c;
    for (size_t i = 0; i < sizeof *c; i++)
        p[i] = 0;
    free(c);
    return rc;
}

static void usage_row(FILE *f, const char *var, const char *meaning, const char *def)
{
    fprintf(f, "  %-27s %-54s %s\n", var, meaning, def);
}

void cm_config_usage(FILE *f, const char *prog, const cm_config_defaults *d)
{
    char name[96], grpc[32], admin[32], workers[48], msg[32], drain[16], leeway[16];
    const char *svc = d && d->service ? d->service : "service";
    if (!prog) {
        snprintf(name, sizeof name, "commerce-%s", svc);
        prog = name;
    }
    snprintf(grpc, sizeof grpc, "0.0.0.0:%d", d ? d->grpc_port : 0);
    snprintf(admin, sizeof admin, "0.0.0.0:%d", d ? d->admin_port : 0);
    snprintf(workers, sizeof workers, "number of CPUs (%d here)", default_workers());
    snprintf(msg, sizeof msg, "%d (4 MiB)", DEF_MAX_MESSAGE);
    snprintf(drain, sizeof drain, "%d", DEF_DRAIN_S);
    snprintf(leeway, sizeof leeway, "%d", DEF_LEEWAY_S);

    fprintf(f, "usage: %s [--help | --version | migrate]\n\n", prog);
    fprintf(f, "  (no argument)  serve the %s service\n", svc);
    fprintf(f, "  migrate        apply the database schema and exit\n");
    fprintf(f, "  --help         print this text\n");
    fprintf(f, "  --version      print the version\n\n");
    fprintf(f, "environment (a set but empty variable counts as unset):\n");
    usage_row(f, "VARIABLE", "MEANING", "DEFAULT");
    usage_row(f, "GRPC_LISTEN", "gRPC address, host:port or :port (all interfaces)", grpc);
    usage_row(f, "ADMIN_LISTEN", "HTTP address of /metrics, /healthz and /readyz", admin);
    usage_row(f, "PG_DSN", "libpq connection string; the service owns its schema", DEF_PG_DSN);
    usage_row(f, "KAFKA_BROKERS", "Kafka bootstrap servers, host:port[,host:port]", DEF_KAFKA);
    if (d && d->needs_inventory_target) {
        usage_row(f, "INVENTORY_TARGET", "gRPC target of the inventory service", DEF_INVENTORY);
        usage_row(f, "INVENTORY_TLS_CA_FILE",
                  "PEM CA bundle of inventory's certificate; enables TLS", "(plaintext)");
        usage_row(f, "INVENTORY_TLS_CERT_FILE", "PEM client certificate for inventory's mTLS",
                  "(none)");
        usage_row(f, "INVENTORY_TLS_KEY_FILE", "PEM private key of INVENTORY_TLS_CERT_FILE",
                  "(none)");
    }
    usage_row(f, "WORKERS", "gRPC worker threads (and DB connections), 1..256", workers);
    usage_row(f, "LOG_LEVEL", "debug, info, warn or error", "info");
    usage_row(f, "GRPC_MAX_MESSAGE_BYTES", "largest gRPC message accepted or sent", msg);
    usage_row(f, "DRAIN_GRACE_SECONDS", "on SIGTERM, time for calls in flight, 0..3600", drain);
    usage_row(f, "OUTBOX_RETENTION_SECONDS",
              "keep published outbox rows this long; 0 deletes them, 0..604800", "0");
    usage_row(f, "AUTH_MODE", "off (trust x-tenant-id) or required (bearer JWT)", "off");
    usage_row(f, "JWT_HS256_SECRET", "shared secret for HS256 tokens, >= 32 bytes", "(none)");
    usage_row(f, "JWT_RS256_PUBLIC_KEY_FILE", "PEM public key file for RS256 tokens", "(none)");
    usage_row(f, "JWT_ISSUER", "required iss claim", "(not checked)");
    usage_row(f, "JWT_AUDIENCE", "required aud claim", "(not checked)");
    usage_row(f, "JWT_LEEWAY_SECONDS", "clock skew allowed on exp/nbf, 0..3600", leeway);
    usage_row(f, "TLS_CERT_FILE", "PEM server certificate chain; enables TLS", "(plaintext)");
    usage_row(f, "TLS_KEY_FILE", "PEM private key of TLS_CERT_FILE", "(none)");
    usage_row(f, "TLS_CLIENT_CA_FILE", "PEM CA bundle; set = client certificates required",
              "(no mTLS)");
}

int cm_config_main_args(int argc, char **argv, const cm_config_defaults *d, int *migrate_only)
{
    char name[96];
    const char *prog = NULL;
    if (argc > 0 && argv && argv[0] && argv[0][0]) {
        const char *slash = strrchr(argv[0], '/');
        prog = slash ? slash + 1 : argv[0];
    }
    if (!prog || !*prog) {
        snprintf(name, sizeof name, "commerce-%s", d && d->service ? d->service : "service");
        prog = name;
    }
    if (migrate_only)
        *migrate_only = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cm_config_usage(stdout, prog, d);
            fflush(stdout);
            return 1;
        }
        if (strcmp(a, "--version") == 0) {
            printf("%s %s\n", prog, COMMERCE_VERSION);
            fflush(stdout);
            return 1;
        }
        if (strcmp(a, "migrate") == 0) {
            if (migrate_only)
                *migrate_only = 1;
            continue;
        }
        char q[160];
        fprintf(stderr, "%s: unknown argument %s (try --help)\n", prog, quoted(a, q, sizeof q));
        return -1;
    }
    return 0;
}

void cm_config_auth_settings(const cm_config *cfg, cm_auth_settings *s)
{
    memset(s, 0, sizeof *s);
    s->mode = cfg->auth_mode;
    s->hs256_secret = cfg->jwt_hs256_secret[0] ? cfg->jwt_hs256_secret : NULL;
    s->rs256_public_key_file =
        cfg->jwt_rs256_public_key_file[0] ? cfg->jwt_rs256_public_key_file : NULL;
    s->issuer = cfg->jwt_issuer[0] ? cfg->jwt_issuer : NULL;
    s->audience = cfg->jwt_audience[0] ? cfg->jwt_audience : NULL;
    s->leeway_s = cfg->jwt_leeway_s;
}

long cm_config_env_long(const char *name, long def, long lo, long hi, int *bad)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end = NULL;
    errno = 0;
    long n = strtol(v, &end, 10);
    /* strtol would skip leading blanks: the whole value must be the number */
    if (errno || *end || !(*v == '-' || (*v >= '0' && *v <= '9')) || n < lo || n > hi) {
        *bad = 1;
        return def;
    }
    return n;
}

int cm_config_env_onoff(const char *name, int def, int *bad)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    if (strcmp(v, "on") == 0)
        return 1;
    if (strcmp(v, "off") == 0)
        return 0;
    *bad = 1;
    return def;
}
