#include "cm_config.h"
#include "cm_err.h"
#include "cm_kafka.h"

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
#include <arpa/inet.h>
#include <unistd.h>

#ifndef COMMERCE_VERSION
#define COMMERCE_VERSION "unknown"
#endif

#define DEF_PG_DSN "postgresql:///commerce"
#define DEF_KAFKA "127.0.0.1:9092"
#define DEF_MAX_MESSAGE (4 * 1024 * 1024)
#define DEF_DRAIN_S 20
#define DRAIN_MAX_S 3600
#define OUTBOX_RETENTION_MAX_S 604800 /* a week */
#define DEF_LEEWAY_S 30
#define LEEWAY_MAX_S 3600
#define RATE_LIMIT_MAX 1000000

/* where the variables come from: "NAME=value" strings (the last one of a
 * name wins, as a shell's), or the process environment when NULL */
typedef const char *const *env_src;

/* set but empty counts as unset */
static const char *env(env_src e, const char *name)
{
    const char *v = NULL;
    if (!e) {
        v = getenv(name);
    } else {
        size_t n = strlen(name);
        for (; *e; e++)
            if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
                v = *e + n + 1;
    }
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

/* 1 when a listen address (host:port, [ipv6]:port) only takes connections
 * from this machine: 127.0.0.0/8, ::1 or localhost */
static int listen_loopback(const char *v)
{
    const char *h;
    size_t hl;
    int br, port;
    char host[64];
    if (split_hostport(v, &h, &hl, &br, &port) != 0 || hl == 0 || hl >= sizeof host)
        return 0;
    memcpy(host, h, hl);
    host[hl] = '\0';
    unsigned char a[16];
    if (strcmp(host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    return inet_pton(AF_INET6, host, a) == 1 && memcmp(a, &in6addr_loopback, 16) == 0;
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
    /* non-blocking: opening a fifo would otherwise wait for a writer */
    int fd = open(v, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return bad(err, errlen, var, "cannot read %s: %s", quoted(v, q, sizeof q), strerror(errno));
    struct stat st;
    int regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    close(fd);
    if (!regular)
        return bad(err, errlen, var, "%s is not a regular file", quoted(v, q, sizeof q));
    return 0;
}

#define WORKERS_MEANING "gRPC worker threads: calls served at once, 1..256"
#define DB_POOL_MEANING                                                                            \
    "database connections the workers share, 1..256: a call holds one from its first "             \
    "statement until its handler returns"
/* 16 connections commit far more than any service's rate here, and keep a
 * few replicas of each service under Postgres's default max_connections
 * (100); common/README.md, "service" */
#define DEF_DB_POOL 16

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

/* "<PEER>_<suffix>" for a peer named "inventory" */
static void peer_var(char *out, size_t len, const char *peer, const char *suffix)
{
    size_t n = 0;
    for (const char *p = peer; *p && n + 1 < len; p++)
        out[n++] = (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p == '-' ? '_' : *p);
    snprintf(out + n, len - n, "_%s", suffix);
}

/* a peer: its target, and the TLS of the calls to it: the CA that signed
 * its certificate turns TLS on; a client certificate and key (both) add
 * mTLS */
static int load_peer(env_src e, cm_config_peer *pc, const cm_peer_def *pd, char *err, size_t errlen)
{
    char vt[96], vca[96], vcert[96], vkey[96], vtok[96];
    peer_var(vtok, sizeof vtok, pd->name, "TOKEN_FILE");
    peer_var(vt, sizeof vt, pd->name, "TARGET");
    peer_var(vca, sizeof vca, pd->name, "TLS_CA_FILE");
    peer_var(vcert, sizeof vcert, pd->name, "TLS_CERT_FILE");
    peer_var(vkey, sizeof vkey, pd->name, "TLS_KEY_FILE");
    int rc;
    const char *v = env(e, vt);
    if ((rc = load_target(pc->target, sizeof pc->target, vt, v ? v : pd->target, err, errlen)))
        return rc;
    const char *ca = env(e, vca), *cert = env(e, vcert), *key = env(e, vkey);
    if (cert && !key)
        return bad(err, errlen, vkey, "unset, but %s is set (mTLS needs both)", vcert);
    if (key && !cert)
        return bad(err, errlen, vcert, "unset, but %s is set (mTLS needs both)", vkey);
    if (cert && !ca)
        return bad(err, errlen, vca,
                   "unset, but a client certificate is set (it is sent over "
                   "TLS only)");
    if (ca && (rc = load_file(pc->tls_ca_file, sizeof pc->tls_ca_file, vca, ca, err, errlen)))
        return rc;
    if (cert &&
        (rc = load_file(pc->tls_cert_file, sizeof pc->tls_cert_file, vcert, cert, err, errlen)))
        return rc;
    if (key && (rc = load_file(pc->tls_key_file, sizeof pc->tls_key_file, vkey, key, err, errlen)))
        return rc;
    const char *tok = env(e, vtok);
    if (tok && (rc = load_file(pc->token_file, sizeof pc->token_file, vtok, tok, err, errlen)))
        return rc;
    return 0;
}

/* "<SERVICE>_SCHEMA" */
static void schema_var(char *out, size_t len, const char *service)
{
    char v[96];
    peer_var(v, sizeof v, service ? service : "service", "SCHEMA");
    snprintf(out, len, "%s", v);
}

/* a postgres identifier we can use unquoted: [a-z_][a-z0-9_]* */
static int identifier_ok(const char *v)
{
    if (!*v || strlen(v) >= CM_CONFIG_SCHEMA_MAX || (*v >= '0' && *v <= '9'))
        return 0;
    for (const char *p = v; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return 0;
    return 1;
}

static int load_knob(env_src e, cm_config *c, size_t i, char *err, size_t errlen)
{
    const cm_knob *k = &c->knobs[i];
    const char *v = env(e, k->name);
    char q[160];
    switch (k->type) {
    case CM_KNOB_INT: {
        c->knob_int[i] = k->def;
        if (!v)
            return 0;
        /* a sign is allowed where the range goes below zero */
        const char *digits = v[0] == '-' && k->lo < 0 ? v + 1 : v;
        char *end = NULL;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (*digits < '0' || *digits > '9' || errno || !end || *end || x < k->lo || x > k->hi)
            return bad(err, errlen, k->name, "must be an integer between %lld and %lld, got %s",
                       k->lo, k->hi, quoted(v, q, sizeof q));
        c->knob_int[i] = x;
        return 0;
    }
    case CM_KNOB_ONOFF:
        c->knob_int[i] = k->def;
        if (!v)
            return 0;
        if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0)
            return bad(err, errlen, k->name, "must be on or off, got %s", quoted(v, q, sizeof q));
        c->knob_int[i] = strcmp(v, "on") == 0;
        return 0;
    case CM_KNOB_TEXT:
        return copy_value(c->knob_text[i], sizeof c->knob_text[i], k->name,
                          v ? v : (k->def_text ? k->def_text : ""), err, errlen);
    }
    return bad(err, errlen, k->name, "unknown knob type");
}

/* the descriptor itself: a default outside its own range is a bug that
 * would otherwise show only when the variable is unset */
static int check_defaults(const cm_config_defaults *d, char *err, size_t errlen)
{
    if (d->nknobs > CM_CONFIG_KNOBS_MAX || d->npeers > CM_CONFIG_PEERS_MAX ||
        (d->nknobs && !d->knobs) || (d->npeers && !d->peers))
        return bad(err, errlen, "config", "too many knobs or peers in the service descriptor");
    for (size_t i = 0; i < d->nknobs; i++) {
        const cm_knob *k = &d->knobs[i];
        if (!k->name || !k->help ||
            (k->type == CM_KNOB_INT && (k->def < k->lo || k->def > k->hi)) ||
            (k->type == CM_KNOB_ONOFF && k->def != 0 && k->def != 1))
            return bad(err, errlen, k->name ? k->name : "config",
                       "the service's default is outside its own range");
    }
    for (size_t i = 0; i < d->npeers; i++)
        if (!d->peers[i].name || !d->peers[i].target)
            return bad(err, errlen, "config", "a peer without a name or target");
    return 0;
}

static int load_all(env_src e, cm_config *c, const cm_config_defaults *d, char *err, size_t errlen)
{
    const char *v;
    char q[160];
    int rc;

    snprintf(c->grpc_listen, sizeof c->grpc_listen, "0.0.0.0:%d", d->grpc_port);
    if ((v = env(e, "GRPC_LISTEN")) &&
        (rc = load_listen(c->grpc_listen, sizeof c->grpc_listen, "GRPC_LISTEN", v, err, errlen)))
        return rc;
    snprintf(c->admin_listen, sizeof c->admin_listen, "0.0.0.0:%d", d->admin_port);
    if ((v = env(e, "ADMIN_LISTEN")) &&
        (rc = load_listen(c->admin_listen, sizeof c->admin_listen, "ADMIN_LISTEN", v, err, errlen)))
        return rc;
    /* two listeners on one port: the second bind would fail later, less clearly */
    if (cm_config_port_of(c->grpc_listen) == cm_config_port_of(c->admin_listen)) {
        const char *g = c->grpc_listen, *a = c->admin_listen;
        size_t gl = strlen(g) - strlen(strrchr(g, ':')), al = strlen(a) - strlen(strrchr(a, ':'));
        int any = strncmp(g, "0.0.0.0:", 8) == 0 || strncmp(a, "0.0.0.0:", 8) == 0 ||
                  strncmp(g, "[::]:", 5) == 0 || strncmp(a, "[::]:", 5) == 0;
        const char *raw = env(e, "ADMIN_LISTEN");
        if (any || (gl == al && strncmp(g, a, gl) == 0))
            return bad(err, errlen, "ADMIN_LISTEN",
                       "port %d is already used by GRPC_LISTEN, got %s", cm_config_port_of(a),
                       quoted(raw ? raw : a, q, sizeof q));
    }

    snprintf(c->pg_dsn, sizeof c->pg_dsn, "%s", DEF_PG_DSN);
    if ((v = env(e, "PG_DSN")) &&
        (rc = load_dsn(c->pg_dsn, sizeof c->pg_dsn, "PG_DSN", v, err, errlen)))
        return rc;
    snprintf(c->kafka_brokers, sizeof c->kafka_brokers, "%s", DEF_KAFKA);
    if ((v = env(e, "KAFKA_BROKERS")) &&
        (rc = load_brokers(c->kafka_brokers, sizeof c->kafka_brokers, "KAFKA_BROKERS", v, err,
                           errlen)))
        return rc;
    c->kafka_linger_ms = CM_KAFKA_LINGER_MS;
    if ((v = env(e, "KAFKA_LINGER_MS")) &&
        (rc = load_int(&c->kafka_linger_ms, "KAFKA_LINGER_MS", v, 1, 1000, err, errlen)))
        return rc;
    char svar[96];
    schema_var(svar, sizeof svar, d->service);
    v = env(e, svar);
    if (!v)
        v = d->schema ? d->schema : d->service;
    if (!v || !identifier_ok(v))
        return bad(err, errlen, svar,
                   "must be a schema name of [a-z0-9_] (not starting with a "
                   "digit), at most 63 characters, got %s",
                   quoted(v ? v : "", q, sizeof q));
    snprintf(c->schema, sizeof c->schema, "%s", v);

    c->peer_defs = d->peers;
    c->npeers = d->npeers;
    for (size_t i = 0; i < d->npeers; i++)
        if ((rc = load_peer(e, &c->peers[i], &d->peers[i], err, errlen)))
            return rc;
    c->knobs = d->knobs;
    c->nknobs = d->nknobs;
    for (size_t i = 0; i < d->nknobs; i++)
        if ((rc = load_knob(e, c, i, err, errlen)))
            return rc;

    c->workers = d->workers > 0 ? d->workers : default_workers();
    if ((v = env(e, "WORKERS")) &&
        (rc = load_int(&c->workers, "WORKERS", v, 1, CM_CONFIG_WORKERS_MAX, err, errlen)))
        return rc;
    c->db_pool = c->workers < DEF_DB_POOL ? c->workers : DEF_DB_POOL;
    if ((v = env(e, "DB_POOL")) &&
        (rc = load_int(&c->db_pool, "DB_POOL", v, 1, CM_CONFIG_WORKERS_MAX, err, errlen)))
        return rc;
    c->log_level = CM_LOG_INFO;
    if ((v = env(e, "LOG_LEVEL")) && cm_log_level_parse(v, &c->log_level) != 0)
        return bad(err, errlen, "LOG_LEVEL", "must be one of debug, info, warn, error, got %s",
                   quoted(v, q, sizeof q));
    c->max_message_bytes = DEF_MAX_MESSAGE;
    if ((v = env(e, "GRPC_MAX_MESSAGE_BYTES")) &&
        (rc =
             load_int(&c->max_message_bytes, "GRPC_MAX_MESSAGE_BYTES", v, 1, INT_MAX, err, errlen)))
        return rc;
    c->reflection = 1;
    if ((v = env(e, "GRPC_REFLECTION"))) {
        if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0)
            return bad(err, errlen, "GRPC_REFLECTION", "must be on or off, got %s",
                       quoted(v, q, sizeof q));
        c->reflection = strcmp(v, "on") == 0;
    }
    int drain_s = DEF_DRAIN_S;
    if ((v = env(e, "DRAIN_GRACE_SECONDS")) &&
        (rc = load_int(&drain_s, "DRAIN_GRACE_SECONDS", v, 0, DRAIN_MAX_S, err, errlen)))
        return rc;
    c->drain_grace_ms = drain_s * 1000;
    c->outbox_retention_s = 0;
    if ((v = env(e, "OUTBOX_RETENTION_SECONDS")) &&
        (rc = load_int(&c->outbox_retention_s, "OUTBOX_RETENTION_SECONDS", v, 0,
                       OUTBOX_RETENTION_MAX_S, err, errlen)))
        return rc;

    c->auth_mode = CM_AUTH_OFF;
    if ((v = env(e, "AUTH_MODE")) && cm_auth_mode_parse(v, &c->auth_mode) != 0)
        return bad(err, errlen, "AUTH_MODE", "must be off or required, got %s",
                   quoted(v, q, sizeof q));
    if ((v = env(e, "JWT_HS256_SECRET"))) {
        /* a secret is never echoed, only measured */
        if (strlen(v) < CM_AUTH_HS256_MIN_SECRET)
            return bad(err, errlen, "JWT_HS256_SECRET", "must be at least %d bytes, got %zu",
                       CM_AUTH_HS256_MIN_SECRET, strlen(v));
        if ((rc = copy_value(c->jwt_hs256_secret, sizeof c->jwt_hs256_secret, "JWT_HS256_SECRET", v,
                             err, errlen)))
            return rc;
    }
    if ((v = env(e, "JWT_RS256_PUBLIC_KEY_FILE")) &&
        (rc = load_file(c->jwt_rs256_public_key_file, sizeof c->jwt_rs256_public_key_file,
                        "JWT_RS256_PUBLIC_KEY_FILE", v, err, errlen)))
        return rc;
    if ((v = env(e, "JWT_JWKS_FILE")) && (rc = load_file(c->jwt_jwks_file, sizeof c->jwt_jwks_file,
                                                         "JWT_JWKS_FILE", v, err, errlen)))
        return rc;
    if (c->auth_mode == CM_AUTH_REQUIRED && !c->jwt_hs256_secret[0] &&
        !c->jwt_rs256_public_key_file[0] && !c->jwt_jwks_file[0])
        return bad(err, errlen, "AUTH_MODE",
                   "\"required\" needs JWT_HS256_SECRET, JWT_RS256_PUBLIC_KEY_FILE or "
                   "JWT_JWKS_FILE");
    c->allow_insecure = 0;
    if ((v = env(e, "ALLOW_INSECURE"))) {
        if (strcmp(v, "0") != 0 && strcmp(v, "1") != 0)
            return bad(err, errlen, "ALLOW_INSECURE", "must be 0 or 1, got %s",
                       quoted(v, q, sizeof q));
        c->allow_insecure = strcmp(v, "1") == 0;
    }
    if ((v = env(e, "JWT_ISSUER")) &&
        (rc = copy_value(c->jwt_issuer, sizeof c->jwt_issuer, "JWT_ISSUER", v, err, errlen)))
        return rc;
    if ((v = env(e, "JWT_AUDIENCE")) &&
        (rc = copy_value(c->jwt_audience, sizeof c->jwt_audience, "JWT_AUDIENCE", v, err, errlen)))
        return rc;
    c->jwt_leeway_s = DEF_LEEWAY_S;
    if ((v = env(e, "JWT_LEEWAY_SECONDS")) &&
        (rc = load_int(&c->jwt_leeway_s, "JWT_LEEWAY_SECONDS", v, 0, LEEWAY_MAX_S, err, errlen)))
        return rc;

    const char *cert = env(e, "TLS_CERT_FILE"), *key = env(e, "TLS_KEY_FILE"),
               *ca = env(e, "TLS_CLIENT_CA_FILE");
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
    /* without authentication anyone who reaches the port picks a tenant:
     * only on loopback (the quick start), or when the operator says so */
    if (c->auth_mode == CM_AUTH_OFF && !c->allow_insecure && !listen_loopback(c->grpc_listen))
        return bad(err, errlen, "AUTH_MODE",
                   "off is refused on GRPC_LISTEN=%s (not loopback): set AUTH_MODE=required "
                   "with a JWT key, listen on 127.0.0.1, or set ALLOW_INSECURE=1",
                   quoted(c->grpc_listen, q, sizeof q));

    static const char *const rate_vars[3] = {"RATE_LIMIT_READ", "RATE_LIMIT_WRITE",
                                             "RATE_LIMIT_ADMIN"};
    for (int i = 0; i < 3; i++)
        if ((v = env(e, rate_vars[i])) &&
            (rc = load_int(&c->rate_limit[i], rate_vars[i], v, 0, RATE_LIMIT_MAX, err, errlen)))
            return rc;
    if ((v = env(e, "RATE_LIMITS_FILE")) &&
        (rc = load_file(c->rate_limits_file, sizeof c->rate_limits_file, "RATE_LIMITS_FILE", v, err,
                        errlen)))
        return rc;
    if ((v = env(e, "RPC_DISABLE"))) {
        for (const char *x = v; *x; x++)
            if (!((*x >= 'A' && *x <= 'Z') || (*x >= 'a' && *x <= 'z') ||
                  (*x >= '0' && *x <= '9') || *x == ',' || *x == '_'))
                return bad(err, errlen, "RPC_DISABLE",
                           "must list method names separated by commas, got %s",
                           quoted(v, q, sizeof q));
        if ((rc = copy_value(c->rpc_disable, sizeof c->rpc_disable, "RPC_DISABLE", v, err, errlen)))
            return rc;
    }
    return 0;
}

int cm_config_load(cm_config *cfg, const cm_config_defaults *d, char *err, size_t errlen)
{
    return cm_config_load_env(cfg, d, NULL, err, errlen);
}

int cm_config_load_env(cm_config *cfg, const cm_config_defaults *d, const char *const *envp,
                       char *err, size_t errlen)
{
    if (err && errlen > 0)
        err[0] = '\0';
    if (!cfg || !d || d->grpc_port < 1 || d->grpc_port > 65535 || d->admin_port < 1 ||
        d->admin_port > 65535)
        return bad(err, errlen, "config", "invalid service defaults");
    int rc = check_defaults(d, err, errlen);
    if (rc)
        return rc;
    /* build aside and copy on success, so a failed load leaves cfg as it was */
    cm_config *c = calloc(1, sizeof *c);
    if (!c)
        return bad(err, errlen, "config", "out of memory");
    rc = load_all(envp, c, d, err, errlen);
    if (rc == 0)
        memcpy(cfg, c, sizeof *c);
    /* the secret may be in c: wipe before freeing */
    volatile unsigned char *p = (volatile unsigned char *)c;
    for (size_t i = 0; i < sizeof *c; i++)
        p[i] = 0;
    free(c);
    return rc;
}

/* one line of --help and of the README tables */
typedef struct row {
    char var[96];
    char meaning[256];
    char def[128];
} row;

#define ROWS_MAX (32 + CM_CONFIG_KNOBS_MAX + 5 * CM_CONFIG_PEERS_MAX)

static size_t add_row(row *r, size_t n, const char *var, const char *meaning, const char *def)
{
    if (n >= ROWS_MAX)
        return n;
    snprintf(r[n].var, sizeof r[n].var, "%s", var);
    snprintf(r[n].meaning, sizeof r[n].meaning, "%s", meaning);
    snprintf(r[n].def, sizeof r[n].def, "%s", def);
    return n + 1;
}

/* the runtime's own variables; ports, schema and workers show this
 * service's defaults, or how they are derived when d is "every service" */
static size_t common_rows(const cm_config_defaults *d, row *r, int generic)
{
    char grpc[48], admin[48], workers[64], msg[32], drain[16], leeway[16], svar[96], sdef[96];
    snprintf(grpc, sizeof grpc, generic ? "0.0.0.0:<the service's port>" : "0.0.0.0:%d",
             d->grpc_port);
    snprintf(admin, sizeof admin, generic ? "0.0.0.0:<the service's port>" : "0.0.0.0:%d",
             d->admin_port);
    if (generic)
        snprintf(workers, sizeof workers, "the service's, else the number of CPUs");
    else if (d->workers > 0)
        snprintf(workers, sizeof workers, "%d", d->workers);
    else
        snprintf(workers, sizeof workers, "number of CPUs (%d here)", default_workers());
    snprintf(msg, sizeof msg, "%d (4 MiB)", DEF_MAX_MESSAGE);
    snprintf(drain, sizeof drain, "%d", DEF_DRAIN_S);
    snprintf(leeway, sizeof leeway, "%d", DEF_LEEWAY_S);
    if (generic) {
        snprintf(svar, sizeof svar, "<SERVICE>_SCHEMA");
        snprintf(sdef, sizeof sdef, "the service's");
    } else {
        schema_var(svar, sizeof svar, d->service);
        snprintf(sdef, sizeof sdef, "%s", d->schema ? d->schema : d->service);
    }
    size_t n = 0;
    n = add_row(r, n, "GRPC_LISTEN", "gRPC address, host:port or :port (all interfaces)", grpc);
    n = add_row(r, n, "ADMIN_LISTEN", "HTTP address of /metrics, /healthz and /readyz", admin);
    n = add_row(r, n, "PG_DSN", "libpq connection string; the service owns its schema", DEF_PG_DSN);
    n = add_row(r, n, svar, "Postgres schema of the service (tests run side by side)", sdef);
    n = add_row(r, n, "KAFKA_BROKERS", "Kafka bootstrap servers, host:port[,host:port]", DEF_KAFKA);
    char linger[16];
    snprintf(linger, sizeof linger, "%d", CM_KAFKA_LINGER_MS);
    n = add_row(r, n, "KAFKA_LINGER_MS",
                "how long the producer gathers events into a request before sending it "
                "(librdkafka linger.ms), 1..1000",
                linger);
    n = add_row(r, n, "WORKERS", WORKERS_MEANING, workers);
    n = add_row(r, n, "DB_POOL", DB_POOL_MEANING, "WORKERS, at most 16");
    n = add_row(r, n, "LOG_LEVEL", "debug, info, warn or error", "info");
    n = add_row(r, n, "GRPC_MAX_MESSAGE_BYTES",
                "largest message; a larger request: RESOURCE_EXHAUSTED, a larger reply: "
                "FAILED_PRECONDITION / RESPONSE_TOO_LARGE",
                msg);
    n = add_row(r, n, "GRPC_REFLECTION",
                "on or off: gRPC server reflection (v1 and v1alpha), for grpcurl and friends",
                "on");
    n = add_row(r, n, "DRAIN_GRACE_SECONDS", "on SIGTERM, time for calls in flight, 0..3600",
                drain);
    n = add_row(r, n, "OUTBOX_RETENTION_SECONDS",
                "keep published outbox rows this long; 0 deletes them, 0..604800", "0");
    n = add_row(r, n, "AUTH_MODE",
                "off (trust x-tenant-id; refused unless GRPC_LISTEN is loopback or "
                "ALLOW_INSECURE=1) or required (bearer JWT)",
                "off");
    n = add_row(r, n, "ALLOW_INSECURE", "1: allow AUTH_MODE=off on a non-loopback GRPC_LISTEN",
                "0");
    n = add_row(r, n, "JWT_HS256_SECRET", "shared secret for HS256 tokens, >= 32 bytes", "(none)");
    n = add_row(r, n, "JWT_RS256_PUBLIC_KEY_FILE", "PEM public key file for RS256 tokens",
                "(none)");
    n = add_row(r, n, "JWT_JWKS_FILE",
                "JWKS file (RS256 and HS256 keys by kid); re-read within a second of a change "
                "or on SIGHUP",
                "(none)");
    n = add_row(r, n, "JWT_ISSUER", "required iss claim", "(not checked)");
    n = add_row(r, n, "JWT_AUDIENCE", "required aud claim", "(not checked)");
    n = add_row(r, n, "JWT_LEEWAY_SECONDS", "clock skew allowed on exp/nbf, 0..3600", leeway);
    n = add_row(r, n, "TLS_CERT_FILE", "PEM server certificate chain; enables TLS", "(plaintext)");
    n = add_row(r, n, "TLS_KEY_FILE", "PEM private key of TLS_CERT_FILE", "(none)");
    n = add_row(r, n, "TLS_CLIENT_CA_FILE", "PEM CA bundle; set = client certificates required",
                "(no mTLS)");
    n = add_row(r, n, "RATE_LIMIT_READ",
                "read calls per second per tenant on each replica (burst: one second's), "
                "0 = unlimited, 0..1000000",
                "0");
    n = add_row(r, n, "RATE_LIMIT_WRITE",
                "write calls per second per tenant on each replica, as RATE_LIMIT_READ", "0");
    n = add_row(r, n, "RATE_LIMIT_ADMIN",
                "admin calls per second per tenant on each replica, as RATE_LIMIT_READ", "0");
    n = add_row(r, n, "RATE_LIMITS_FILE",
                "JSON limits per class and tenant, overriding RATE_LIMIT_*; re-read when it "
                "changes (README: rate limits)",
                "(none)");
    n = add_row(r, n, "RPC_DISABLE",
                "methods not served, comma-separated (e.g. BatchReserve): callers get "
                "UNIMPLEMENTED, as from an older version; an unknown name stops the start",
                "(none)");
    return n;
}

/* the service's peers and knobs */
static size_t service_rows(const cm_config_defaults *d, row *r)
{
    size_t n = 0;
    char var[96], var2[96], meaning[256], def[128];
    schema_var(var, sizeof var, d->service);
    n = add_row(r, n, var, "Postgres schema of the service (tests run side by side)",
                d->schema ? d->schema : d->service);
    if (d->workers > 0) {
        snprintf(def, sizeof def, "%d", d->workers);
        n = add_row(r, n, "WORKERS", WORKERS_MEANING, def);
    }
    for (size_t i = 0; i < d->npeers && i < CM_CONFIG_PEERS_MAX; i++) {
        const char *p = d->peers[i].name;
        peer_var(var, sizeof var, p, "TARGET");
        snprintf(meaning, sizeof meaning, "gRPC target of the %s service", p);
        n = add_row(r, n, var, meaning, d->peers[i].target);
        peer_var(var, sizeof var, p, "TLS_CA_FILE");
        snprintf(meaning, sizeof meaning, "PEM CA bundle of %s's certificate; enables TLS", p);
        n = add_row(r, n, var, meaning, "(plaintext)");
        peer_var(var, sizeof var, p, "TLS_CERT_FILE");
        snprintf(meaning, sizeof meaning, "PEM client certificate for %s's mTLS", p);
        n = add_row(r, n, var, meaning, "(none)");
        peer_var(var2, sizeof var2, p, "TLS_KEY_FILE");
        snprintf(meaning, sizeof meaning, "PEM private key of %s", var);
        n = add_row(r, n, var2, meaning, "(none)");
        peer_var(var, sizeof var, p, "TOKEN_FILE");
        snprintf(meaning, sizeof meaning,
                 "bearer token file sent to %s instead of the caller's (a service token); "
                 "re-read on change",
                 p);
        n = add_row(r, n, var, meaning, "(forward the caller's)");
    }
    for (size_t i = 0; i < d->nknobs && i < CM_CONFIG_KNOBS_MAX; i++) {
        const cm_knob *k = &d->knobs[i];
        switch (k->type) {
        case CM_KNOB_INT:
            snprintf(meaning, sizeof meaning, "%s, %lld..%lld", k->help, k->lo, k->hi);
            snprintf(def, sizeof def, "%lld", k->def);
            break;
        case CM_KNOB_ONOFF:
            snprintf(meaning, sizeof meaning, "%s, on or off", k->help);
            snprintf(def, sizeof def, "%s", k->def ? "on" : "off");
            break;
        case CM_KNOB_TEXT:
            snprintf(meaning, sizeof meaning, "%s", k->help);
            snprintf(def, sizeof def, "%s", k->def_text && *k->def_text ? k->def_text : "(none)");
            break;
        }
        n = add_row(r, n, k->name, meaning, def);
    }
    return n;
}

static void print_rows(FILE *f, const row *r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fprintf(f, "  %-34s %-22s %s\n", r[i].var, r[i].def, r[i].meaning);
}

void cm_config_usage(FILE *f, const char *prog, const cm_config_defaults *d)
{
    char name[96];
    static const cm_config_defaults none = {.service = "service"};
    if (!d)
        d = &none;
    const char *svc = d->service ? d->service : "service";
    if (!prog) {
        snprintf(name, sizeof name, "commerce-%s", svc);
        prog = name;
    }
    fprintf(f,
            "usage: %s [--help | --version | --config-markdown=common|service | --rpc-markdown |"
            " migrate]\n\n",
            prog);
    fprintf(f, "  (no argument)  serve the %s service\n", svc);
    fprintf(f, "  migrate        apply the database schema and exit\n");
    fprintf(f, "  --help         print this text\n");
    fprintf(f, "  --version      print the version\n");
    fprintf(f, "  --rpc-markdown print the roles each RPC allows (markdown)\n\n");
    fprintf(f, "environment (a set but empty variable counts as unset):\n");
    row *r = calloc(ROWS_MAX, sizeof *r);
    if (!r)
        return;
    row head = {"VARIABLE", "MEANING", "DEFAULT"}; /* printed in the order of print_rows */
    print_rows(f, &head, 1);
    print_rows(f, r, common_rows(d, r, 0));
    size_t n = service_rows(d, r);
    if (n) {
        fprintf(f, "\n%s's own:\n", svc);
        print_rows(f, r, n);
    }
    free(r);
}

void cm_config_markdown(FILE *f, const cm_config_defaults *d, const char *which)
{
    row *r = calloc(ROWS_MAX, sizeof *r);
    if (!r)
        return;
    size_t n = strcmp(which, "common") == 0 ? common_rows(d, r, 1) : service_rows(d, r);
    fprintf(f, "| variable | meaning | default |\n|---|---|---|\n");
    for (size_t i = 0; i < n; i++)
        fprintf(f, "| `%s` | %s | %s |\n", r[i].var, r[i].meaning, r[i].def);
    free(r);
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
        if (strcmp(a, "--config-markdown=common") == 0 ||
            strcmp(a, "--config-markdown=service") == 0) {
            cm_config_markdown(stdout, d, strchr(a, '=') + 1);
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
    s->jwks_file = cfg->jwt_jwks_file[0] ? cfg->jwt_jwks_file : NULL;
    s->issuer = cfg->jwt_issuer[0] ? cfg->jwt_issuer : NULL;
    s->audience = cfg->jwt_audience[0] ? cfg->jwt_audience : NULL;
    s->leeway_s = cfg->jwt_leeway_s;
}

/* a knob's index; a name the descriptor does not declare with that kind
 * of value is a bug in the service: say so and stop */
static size_t knob_index(const cm_config *cfg, const char *name, int text)
{
    for (size_t i = 0; i < cfg->nknobs; i++)
        if (strcmp(cfg->knobs[i].name, name) == 0 && (cfg->knobs[i].type == CM_KNOB_TEXT) == text)
            return i;
    fprintf(stderr, "bug: %s is not a declared %s knob\n", name, text ? "text" : "integer");
    abort();
}

long long cm_config_int(const cm_config *cfg, const char *name)
{
    return cfg->knob_int[knob_index(cfg, name, 0)];
}

const char *cm_config_text(const cm_config *cfg, const char *name)
{
    return cfg->knob_text[knob_index(cfg, name, 1)];
}

const cm_config_peer *cm_config_peer_of(const cm_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->npeers; i++)
        if (strcmp(cfg->peer_defs[i].name, name) == 0)
            return &cfg->peers[i];
    fprintf(stderr, "bug: %s is not a declared peer\n", name);
    abort();
}
