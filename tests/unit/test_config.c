#include "cm_config.h"
#include "cm_err.h"
#include "cm_kafka.h"

#include <check.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const all_vars[] = {
    "GRPC_LISTEN",
    "ADMIN_LISTEN",
    "PG_DSN",
    "KAFKA_BROKERS",
    "INVENTORY_TARGET",
    "WORKERS",
    "LOG_LEVEL",
    "GRPC_MAX_MESSAGE_BYTES",
    "DRAIN_GRACE_SECONDS",
    "AUTH_MODE",
    "JWT_HS256_SECRET",
    "JWT_RS256_PUBLIC_KEY_FILE",
    "JWT_JWKS_FILE",
    "ALLOW_INSECURE",
    "INVENTORY_TOKEN_FILE",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWT_LEEWAY_SECONDS",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_CLIENT_CA_FILE",
    "INVENTORY_TLS_CA_FILE",
    "INVENTORY_TLS_CERT_FILE",
    "INVENTORY_TLS_KEY_FILE",
    "OUTBOX_RETENTION_SECONDS",
    "ORDER_SCHEMA",
    "CM_TEST_N",
    "CM_TEST_NEG",
    "CM_TEST_SWITCH",
    "CM_TEST_TEXT",
};

/* a service's own settings and peers, declared as data like a descriptor's */
static const cm_knob order_knobs[] = {
    {"CM_TEST_N", CM_KNOB_INT, 7, 1, 10, NULL, "a number"},
    {"CM_TEST_NEG", CM_KNOB_INT, -5, -10, 10, NULL, "a number that may be negative"},
    {"CM_TEST_SWITCH", CM_KNOB_ONOFF, 1, 0, 0, NULL, "a switch"},
    {"CM_TEST_TEXT", CM_KNOB_TEXT, 0, 0, 0, "dflt", "a text"},
};
static const cm_peer_def order_peers[] = {{"inventory", "127.0.0.1:50052"}};
static const cm_config_defaults order_defs = {.service = "order",
                                              .grpc_port = 50051,
                                              .admin_port = 9091,
                                              .schema = "orders",
                                              .knobs = order_knobs,
                                              .nknobs = 4,
                                              .peers = order_peers,
                                              .npeers = 1};
static const cm_config_defaults settle_defs = {
    .service = "settlement", .grpc_port = 50053, .admin_port = 9093};

#define INV(field) (cm_config_peer_of(&cfg, "inventory")->field)

static cm_config cfg;
static char err[512];
static char tmpfile_path[64];

/* every test starts from a clean environment and a scratch file; with
 * ALLOW_INSECURE=1, so the defaults (all interfaces, auth off) load */
static void env_setup(void)
{
    for (size_t i = 0; i < sizeof all_vars / sizeof all_vars[0]; i++)
        unsetenv(all_vars[i]);
    setenv("ALLOW_INSECURE", "1", 1);
    memset(&cfg, 0, sizeof cfg);
    err[0] = '\0';
    snprintf(tmpfile_path, sizeof tmpfile_path, "/tmp/test_configXXXXXX");
    int fd = mkstemp(tmpfile_path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "pem\n", 4), 4);
    close(fd);
}

static void env_teardown(void)
{
    unlink(tmpfile_path);
}

static int load(const cm_config_defaults *d)
{
    return cm_config_load(&cfg, d, err, sizeof err);
}

static int expected_workers(void)
{
    cpu_set_t set;
    ck_assert_int_eq(sched_getaffinity(0, sizeof set, &set), 0);
    int n = CPU_COUNT(&set);
    return n > 256 ? 256 : n;
}

START_TEST(defaults_follow_design_table)
{
    ck_assert_int_eq(load(&order_defs), 0);
    ck_assert_str_eq(err, "");
    ck_assert_str_eq(cfg.grpc_listen, "0.0.0.0:50051");
    ck_assert_str_eq(cfg.admin_listen, "0.0.0.0:9091");
    ck_assert_str_eq(cfg.pg_dsn, "postgresql:///commerce");
    ck_assert_str_eq(cfg.kafka_brokers, "127.0.0.1:9092");
    ck_assert_str_eq(INV(target), "127.0.0.1:50052");
    ck_assert_int_eq(cfg.workers, expected_workers());
    ck_assert_int_ge(cfg.workers, 1);
    ck_assert_int_eq(cfg.log_level, CM_LOG_INFO);
    ck_assert_int_eq(cfg.max_message_bytes, 4 * 1024 * 1024);
    ck_assert_int_eq(cfg.drain_grace_ms, 20000);
    ck_assert_int_eq(cfg.outbox_retention_s, 0); /* published rows are deleted */
    ck_assert_int_eq(cfg.auth_mode, CM_AUTH_OFF);
    ck_assert_str_eq(cfg.jwt_hs256_secret, "");
    ck_assert_str_eq(cfg.jwt_rs256_public_key_file, "");
    ck_assert_str_eq(cfg.jwt_issuer, "");
    ck_assert_str_eq(cfg.jwt_audience, "");
    ck_assert_int_eq(cfg.jwt_leeway_s, 30);
    ck_assert_str_eq(cfg.tls_cert_file, "");
    ck_assert_str_eq(cfg.tls_key_file, "");
    ck_assert_str_eq(cfg.tls_client_ca_file, "");
    ck_assert_str_eq(INV(tls_ca_file), "");

    /* a client certificate for inventory goes with the CA that turns TLS on */
    setenv("INVENTORY_TLS_CERT_FILE", tmpfile_path, 1);
    setenv("INVENTORY_TLS_KEY_FILE", tmpfile_path, 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_ptr_nonnull(
        strstr(err, "INVENTORY_TLS_CA_FILE: unset, but a client certificate is set"));
    setenv("INVENTORY_TLS_CA_FILE", tmpfile_path, 1);
    ck_assert_int_eq(load(&order_defs), 0);
    ck_assert_str_eq(INV(tls_cert_file), tmpfile_path);
}
END_TEST

START_TEST(defaults_are_per_service)
{
    setenv("INVENTORY_TARGET", "not an address", 1); /* ignored: not needed */
    setenv("INVENTORY_TLS_CA_FILE", "/nonexistent/ca.pem", 1);
    ck_assert_int_eq(load(&settle_defs), 0);
    ck_assert_str_eq(cfg.grpc_listen, "0.0.0.0:50053");
    ck_assert_str_eq(cfg.admin_listen, "0.0.0.0:9093");
    ck_assert_uint_eq(cfg.npeers, 0); /* no peer: nothing of INVENTORY_* is read */
    ck_assert_str_eq(cfg.schema, "settlement");
}
END_TEST

START_TEST(environment_overrides_defaults)
{
    setenv("GRPC_LISTEN", ":7001", 1);
    setenv("ADMIN_LISTEN", "127.0.0.1:7002", 1);
    setenv("PG_DSN", "host=db port=5433 dbname=shop", 1);
    setenv("KAFKA_BROKERS", "k1:9092,PLAINTEXT://k2.example:19092", 1);
    setenv("INVENTORY_TARGET", "dns:///inventory.commerce.svc:50052", 1);
    setenv("WORKERS", "8", 1);
    setenv("LOG_LEVEL", "debug", 1);
    setenv("GRPC_MAX_MESSAGE_BYTES", "1048576", 1);
    setenv("DRAIN_GRACE_SECONDS", "0", 1);
    setenv("OUTBOX_RETENTION_SECONDS", "900", 1);
    setenv("AUTH_MODE", "required", 1);
    setenv("JWT_HS256_SECRET", "0123456789abcdef0123456789abcdef", 1);
    setenv("JWT_RS256_PUBLIC_KEY_FILE", tmpfile_path, 1);
    setenv("JWT_ISSUER", "https://idp.example", 1);
    setenv("JWT_AUDIENCE", "commerce", 1);
    setenv("JWT_LEEWAY_SECONDS", "5", 1);
    setenv("TLS_CERT_FILE", tmpfile_path, 1);
    setenv("TLS_KEY_FILE", tmpfile_path, 1);
    setenv("TLS_CLIENT_CA_FILE", tmpfile_path, 1);
    setenv("INVENTORY_TLS_CA_FILE", tmpfile_path, 1);
    setenv("INVENTORY_TLS_CERT_FILE", tmpfile_path, 1);
    setenv("INVENTORY_TLS_KEY_FILE", tmpfile_path, 1);
    ck_assert_msg(load(&order_defs) == 0, "%s", err);
    ck_assert_str_eq(cfg.grpc_listen, "0.0.0.0:7001");
    ck_assert_str_eq(cfg.admin_listen, "127.0.0.1:7002");
    ck_assert_str_eq(cfg.pg_dsn, "host=db port=5433 dbname=shop");
    ck_assert_str_eq(cfg.kafka_brokers, "k1:9092,PLAINTEXT://k2.example:19092");
    ck_assert_str_eq(INV(target), "dns:///inventory.commerce.svc:50052");
    ck_assert_int_eq(cfg.workers, 8);
    ck_assert_int_eq(cfg.log_level, CM_LOG_DEBUG);
    ck_assert_int_eq(cfg.max_message_bytes, 1048576);
    ck_assert_int_eq(cfg.drain_grace_ms, 0);
    ck_assert_int_eq(cfg.outbox_retention_s, 900);
    ck_assert_int_eq(cfg.auth_mode, CM_AUTH_REQUIRED);
    ck_assert_str_eq(cfg.jwt_hs256_secret, "0123456789abcdef0123456789abcdef");
    ck_assert_str_eq(cfg.jwt_rs256_public_key_file, tmpfile_path);
    ck_assert_str_eq(cfg.jwt_issuer, "https://idp.example");
    ck_assert_str_eq(cfg.jwt_audience, "commerce");
    ck_assert_int_eq(cfg.jwt_leeway_s, 5);
    ck_assert_str_eq(cfg.tls_cert_file, tmpfile_path);
    ck_assert_str_eq(cfg.tls_key_file, tmpfile_path);
    ck_assert_str_eq(cfg.tls_client_ca_file, tmpfile_path);
    ck_assert_str_eq(INV(tls_ca_file), tmpfile_path);
    ck_assert_str_eq(INV(tls_cert_file), tmpfile_path);
    ck_assert_str_eq(INV(tls_key_file), tmpfile_path);

    cm_auth_settings s;
    cm_config_auth_settings(&cfg, &s);
    ck_assert_int_eq(s.mode, CM_AUTH_REQUIRED);
    ck_assert_str_eq(s.hs256_secret, cfg.jwt_hs256_secret);
    ck_assert_str_eq(s.rs256_public_key_file, tmpfile_path);
    ck_assert_ptr_null(s.rs256_public_key_pem);
    ck_assert_str_eq(s.issuer, "https://idp.example");
    ck_assert_int_eq(s.leeway_s, 5);
}
END_TEST

START_TEST(empty_variable_means_default)
{
    setenv("WORKERS", "", 1);
    setenv("GRPC_LISTEN", "", 1);
    setenv("LOG_LEVEL", "", 1);
    ck_assert_int_eq(load(&order_defs), 0);
    ck_assert_int_eq(cfg.workers, expected_workers());
    ck_assert_str_eq(cfg.grpc_listen, "0.0.0.0:50051");
    ck_assert_int_eq(cfg.log_level, CM_LOG_INFO);

    cm_auth_settings s;
    cm_config_auth_settings(&cfg, &s);
    ck_assert_ptr_null(s.hs256_secret);
    ck_assert_ptr_null(s.rs256_public_key_file);
    ck_assert_ptr_null(s.issuer);
    ck_assert_ptr_null(s.audience);
}
END_TEST

START_TEST(address_forms_are_normalised)
{
    setenv("GRPC_LISTEN", "[::]:50061", 1);
    setenv("ADMIN_LISTEN", "localhost:9191", 1);
    setenv("INVENTORY_TARGET", "[::1]:50052", 1);
    ck_assert_msg(load(&order_defs) == 0, "%s", err);
    ck_assert_str_eq(cfg.grpc_listen, "[::]:50061");
    ck_assert_str_eq(cfg.admin_listen, "localhost:9191");
    ck_assert_str_eq(INV(target), "[::1]:50052");
}
END_TEST

START_TEST(workers_error_names_variable_and_value)
{
    setenv("WORKERS", "abc", 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_str_eq(err, "WORKERS: must be an integer between 1 and 256, got \"abc\"");
}
END_TEST

START_TEST(rpc_disable_and_kafka_linger_are_read)
{
    const char *const none[] = {"ALLOW_INSECURE=1", NULL};
    ck_assert_int_eq(cm_config_load_env(&cfg, &order_defs, none, err, sizeof err), 0);
    ck_assert_str_eq(cfg.rpc_disable, "");
    ck_assert_int_eq(cfg.kafka_linger_ms, CM_KAFKA_LINGER_MS);
    const char *const envp[] = {"RPC_DISABLE=BatchReserve,Reserve", "ALLOW_INSECURE=1",
                                "KAFKA_LINGER_MS=7", NULL};
    ck_assert_int_eq(cm_config_load_env(&cfg, &order_defs, envp, err, sizeof err), 0);
    ck_assert_str_eq(cfg.rpc_disable, "BatchReserve,Reserve");
    ck_assert_int_eq(cfg.kafka_linger_ms, 7);
}
END_TEST

START_TEST(failed_load_leaves_config_untouched)
{
    ck_assert_int_eq(load(&order_defs), 0);
    cm_config before = cfg;
    setenv("GRPC_LISTEN", ":7001", 1);
    setenv("LOG_LEVEL", "loud", 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_int_eq(memcmp(&before, &cfg, sizeof cfg), 0);
}
END_TEST

START_TEST(env_array_is_read_instead_of_environment)
{
    setenv("WORKERS", "9", 1);
    const char *const envp[] = {"WORKERS=3",   "CM_TEST_N=2",      "WORKERSX=4",
                                "WORKERS=5",   "PG_DSN=",          "INVENTORY_TARGET=inv:1",
                                "GRPC_LISTEN", "ALLOW_INSECURE=1", NULL};
    ck_assert_int_eq(cm_config_load_env(&cfg, &order_defs, envp, err, sizeof err), 0);
    ck_assert_int_eq(cfg.workers, 5); /* the last of a name wins; the process env is not read */
    ck_assert_int_eq(cm_config_int(&cfg, "CM_TEST_N"), 2);
    ck_assert_str_eq(cfg.pg_dsn, "postgresql:///commerce"); /* empty counts as unset */
    ck_assert_str_eq(INV(target), "inv:1");
    ck_assert_str_eq(cfg.grpc_listen, "0.0.0.0:50051"); /* no '=': not a variable */
    const char *const bad_envp[] = {"WORKERS=abc", NULL};
    ck_assert_int_eq(cm_config_load_env(&cfg, &order_defs, bad_envp, err, sizeof err), CM_EINVAL);
    ck_assert_str_eq(err, "WORKERS: must be an integer between 1 and 256, got \"abc\"");
    const char *const rpc_envp[] = {"RPC_DISABLE=BatchReserve,Reserve", "ALLOW_INSECURE=1", NULL};
    ck_assert_int_eq(cm_config_load_env(&cfg, &order_defs, rpc_envp, err, sizeof err), 0);
    ck_assert_str_eq(cfg.rpc_disable, "BatchReserve,Reserve");
}
END_TEST

/* a fifo named as a key file was opened blocking: the start waited for a
 * writer forever (this test then fails on Check's timeout) */
START_TEST(fifo_as_a_file_is_refused_without_blocking)
{
    char fifo[80];
    snprintf(fifo, sizeof fifo, "%s.fifo", tmpfile_path);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    const char *envp[] = {"TLS_CERT_FILE=", "TLS_KEY_FILE=", NULL};
    char cert[112], key[112];
    snprintf(cert, sizeof cert, "TLS_CERT_FILE=%s", fifo);
    snprintf(key, sizeof key, "TLS_KEY_FILE=%s", tmpfile_path);
    envp[0] = cert;
    envp[1] = key;
    int rc = cm_config_load_env(&cfg, &order_defs, envp, err, sizeof err);
    unlink(fifo);
    ck_assert_int_eq(rc, CM_EINVAL);
    ck_assert_msg(strstr(err, "TLS_CERT_FILE") == err && strstr(err, "not a regular file"), "%s",
                  err);
}
END_TEST

/* one bad value per row: the message must start with the variable, show
 * the value (unless secret) and fit on one line */
static const struct {
    const char *var, *value, *expect;
} bad_rows[] = {
    {"WORKERS", "0", "WORKERS: must be an integer between 1 and 256, got \"0\""},
    {"RPC_DISABLE", "Batch Reserve", "RPC_DISABLE: must list method names separated by commas"},
    {"KAFKA_LINGER_MS", "0", "KAFKA_LINGER_MS: must be an integer between 1 and 1000"},
    {"RPC_DISABLE", "/svc/Method", "\"/svc/Method\""},
    {"WORKERS", "257", "WORKERS: must be an integer between 1 and 256, got \"257\""},
    {"WORKERS", "-1", "\"-1\""},
    {"WORKERS", " 4", "\" 4\""},
    {"WORKERS", "4x", "\"4x\""},
    {"WORKERS", "0x10", "\"0x10\""},
    {"WORKERS", "99999999999999999999999", "between 1 and 256"},
    {"GRPC_LISTEN", "abc", "GRPC_LISTEN: must be host:port"},
    {"GRPC_LISTEN", "host:0", "\"host:0\""},
    {"GRPC_LISTEN", "host:65536", "\"host:65536\""},
    {"GRPC_LISTEN", "host:", "\"host:\""},
    {"GRPC_LISTEN", ":", "GRPC_LISTEN:"},
    {"GRPC_LISTEN", "host:80a", "\"host:80a\""},
    {"GRPC_LISTEN", "ho st:80", "\"ho st:80\""},
    {"GRPC_LISTEN", "::1:50051", "\"::1:50051\""},
    {"GRPC_LISTEN", "[::1:50051", "\"[::1:50051\""},
    {"GRPC_LISTEN", "[]:50051", "\"[]:50051\""},
    {"GRPC_LISTEN", "a:+80", "\"a:+80\""},
    {"GRPC_LISTEN", "evil\nline:1", "\"evil\\x0aline:1\""},
    {"ADMIN_LISTEN", "nope", "ADMIN_LISTEN: must be host:port"},
    {"ADMIN_LISTEN", ":50051",
     "ADMIN_LISTEN: port 50051 is already used by GRPC_LISTEN, got \":50051\""},
    {"INVENTORY_TARGET", ":50052", "INVENTORY_TARGET: must be host:port or a gRPC target"},
    {"INVENTORY_TARGET", "inventory", "\"inventory\""},
    {"INVENTORY_TARGET", "dns:", "\"dns:\""},
    {"KAFKA_BROKERS", "k1:9092,,k2:9092", "KAFKA_BROKERS: must be a comma-separated list"},
    {"KAFKA_BROKERS", "k1", "\"k1\""},
    {"KAFKA_BROKERS", "k1:9092,", "\"k1:9092,\""},
    {"PG_DSN", "nonsense", "PG_DSN: not a valid libpq connection string: missing \"=\""},
    {"PG_DSN", "postgresql://u:pw@[", "PG_DSN: not a valid libpq connection string"},
    {"LOG_LEVEL", "verbose", "LOG_LEVEL: must be one of debug, info, warn, error, got \"verbose\""},
    {"GRPC_MAX_MESSAGE_BYTES", "0", "GRPC_MAX_MESSAGE_BYTES: must be an integer between 1 and"},
    {"GRPC_MAX_MESSAGE_BYTES", "4MiB", "\"4MiB\""},
    {"GRPC_MAX_MESSAGE_BYTES", "2147483648", "\"2147483648\""},
    {"DRAIN_GRACE_SECONDS", "-1", "DRAIN_GRACE_SECONDS: must be an integer between 0 and 3600"},
    {"DRAIN_GRACE_SECONDS", "3601", "\"3601\""},
    {"OUTBOX_RETENTION_SECONDS", "-5",
     "OUTBOX_RETENTION_SECONDS: must be an integer between 0 and"},
    {"OUTBOX_RETENTION_SECONDS", "604801", "\"604801\""},
    {"AUTH_MODE", "on", "AUTH_MODE: must be off or required, got \"on\""},
    {"AUTH_MODE", "required",
     "AUTH_MODE: \"required\" needs JWT_HS256_SECRET, JWT_RS256_PUBLIC_KEY_FILE or JWT_JWKS_FILE"},
    {"ALLOW_INSECURE", "yes", "ALLOW_INSECURE: must be 0 or 1, got \"yes\""},
    {"JWT_JWKS_FILE", "/nonexistent/jwks.json",
     "JWT_JWKS_FILE: cannot read \"/nonexistent/jwks.json\""},
    {"INVENTORY_TOKEN_FILE", "/nonexistent/token",
     "INVENTORY_TOKEN_FILE: cannot read \"/nonexistent/token\""},
    {"JWT_HS256_SECRET", "hunter2", "JWT_HS256_SECRET: must be at least 32 bytes, got 7"},
    {"JWT_RS256_PUBLIC_KEY_FILE", "/nonexistent/key.pem",
     "JWT_RS256_PUBLIC_KEY_FILE: cannot read \"/nonexistent/key.pem\": No such file"},
    {"JWT_RS256_PUBLIC_KEY_FILE", "/tmp", "JWT_RS256_PUBLIC_KEY_FILE: \"/tmp\" is not a regular"},
    {"JWT_LEEWAY_SECONDS", "x", "JWT_LEEWAY_SECONDS: must be an integer between 0 and 3600"},
    {"TLS_CERT_FILE", "@tmp", "TLS_KEY_FILE: unset, but TLS_CERT_FILE is set"},
    {"TLS_KEY_FILE", "@tmp", "TLS_CERT_FILE: unset, but TLS_KEY_FILE is set"},
    {"TLS_CLIENT_CA_FILE", "@tmp", "TLS_CLIENT_CA_FILE: mTLS needs TLS_CERT_FILE and TLS_KEY_FILE"},
    {"INVENTORY_TLS_CA_FILE", "/nonexistent/ca.pem",
     "INVENTORY_TLS_CA_FILE: cannot read \"/nonexistent/ca.pem\""},
    {"INVENTORY_TLS_CERT_FILE", "@tmp",
     "INVENTORY_TLS_KEY_FILE: unset, but INVENTORY_TLS_CERT_FILE is set"},
    {"INVENTORY_TLS_KEY_FILE", "@tmp",
     "INVENTORY_TLS_CERT_FILE: unset, but INVENTORY_TLS_KEY_FILE is set"},
};

START_TEST(bad_value_error_names_variable)
{
    const char *value = bad_rows[_i].value;
    if (strcmp(value, "@tmp") == 0)
        value = tmpfile_path;
    setenv(bad_rows[_i].var, value, 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_msg(strstr(err, bad_rows[_i].expect) != NULL, "%s=%s: got '%s', want '%s'",
                  bad_rows[_i].var, value, err, bad_rows[_i].expect);
    ck_assert_msg(strchr(err, '\n') == NULL, "message spans lines: %s", err);
    /* the message names a variable first */
    ck_assert_msg(strchr(err, ':') && strncmp(err, "config", 6) != 0, "%s", err);
}
END_TEST

START_TEST(secret_is_never_echoed)
{
    setenv("JWT_HS256_SECRET", "topsecret", 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_ptr_null(strstr(err, "topsecret"));
    setenv("JWT_HS256_SECRET", "", 1);
    setenv("PG_DSN", "postgresql://app:s3cr3tpw@[", 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "PG_DSN"));
    ck_assert_ptr_null(strstr(err, "s3cr3tpw"));
}
END_TEST

START_TEST(tls_files_must_be_readable)
{
    setenv("TLS_CERT_FILE", tmpfile_path, 1);
    setenv("TLS_KEY_FILE", "/nonexistent/tls.key", 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "TLS_KEY_FILE: cannot read \"/nonexistent/tls.key\""));
    setenv("TLS_KEY_FILE", tmpfile_path, 1);
    ck_assert_int_eq(load(&order_defs), 0);
    ck_assert_str_eq(cfg.tls_client_ca_file, "");
}
END_TEST

START_TEST(overlong_value_is_rejected)
{
    char big[400];
    memset(big, 'a', sizeof big - 7);
    memcpy(big + sizeof big - 7, ":50051", 7);
    setenv("GRPC_LISTEN", big, 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "GRPC_LISTEN:"));
    /* the quoted value is cut short, the line stays readable */
    ck_assert_uint_lt(strlen(err), 300);

    unsetenv("GRPC_LISTEN");
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    setenv("JWT_ISSUER", big, 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_str_eq(err, "JWT_ISSUER: longer than 255 bytes");
}
END_TEST

START_TEST(port_of_parses_address_forms)
{
    ck_assert_int_eq(cm_config_port_of("0.0.0.0:50051"), 50051);
    ck_assert_int_eq(cm_config_port_of(":9091"), 9091);
    ck_assert_int_eq(cm_config_port_of("[::1]:1"), 1);
    ck_assert_int_eq(cm_config_port_of("host:65535"), 65535);
    ck_assert_int_eq(cm_config_port_of("host:65536"), CM_EINVAL);
    ck_assert_int_eq(cm_config_port_of("host:0"), CM_EINVAL);
    ck_assert_int_eq(cm_config_port_of("host"), CM_EINVAL);
    ck_assert_int_eq(cm_config_port_of("host:"), CM_EINVAL);
    ck_assert_int_eq(cm_config_port_of("host:-1"), CM_EINVAL);
    ck_assert_int_eq(cm_config_port_of(""), CM_EINVAL);
    ck_assert_int_eq(cm_config_port_of(NULL), CM_EINVAL);
}
END_TEST

/* runs fn with stdout and stderr sent to files, returns their text */
typedef struct {
    char out[8192];
    char errs[1024];
    int rc;
    int migrate;
} run_result;

static char *slurp(FILE *f, char *buf, size_t len)
{
    rewind(f);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    return buf;
}

static void run_args(int argc, char **argv, const cm_config_defaults *d, run_result *r)
{
    FILE *o = tmpfile(), *e = tmpfile();
    ck_assert_ptr_nonnull(o);
    ck_assert_ptr_nonnull(e);
    fflush(stdout);
    fflush(stderr);
    int so = dup(STDOUT_FILENO), se = dup(STDERR_FILENO);
    dup2(fileno(o), STDOUT_FILENO);
    dup2(fileno(e), STDERR_FILENO);
    r->migrate = -7;
    r->rc = cm_config_main_args(argc, argv, d, &r->migrate);
    fflush(stdout);
    fflush(stderr);
    dup2(so, STDOUT_FILENO);
    dup2(se, STDERR_FILENO);
    close(so);
    close(se);
    slurp(o, r->out, sizeof r->out);
    slurp(e, r->errs, sizeof r->errs);
    fclose(o);
    fclose(e);
}

START_TEST(help_prints_every_variable_with_defaults)
{
    char *argv[] = {"/usr/bin/commerce-order", "--help", NULL};
    run_result r;
    run_args(2, argv, &order_defs, &r);
    ck_assert_int_eq(r.rc, 1);
    ck_assert_ptr_nonnull(strstr(r.out, "usage: commerce-order"));
    for (size_t i = 0; i < sizeof all_vars / sizeof all_vars[0]; i++)
        ck_assert_msg(strstr(r.out, all_vars[i]) != NULL, "--help lacks %s", all_vars[i]);
    ck_assert_ptr_nonnull(strstr(r.out, "0.0.0.0:50051"));
    ck_assert_ptr_nonnull(strstr(r.out, "0.0.0.0:9091"));
    ck_assert_ptr_nonnull(strstr(r.out, "postgresql:///commerce"));
    ck_assert_ptr_nonnull(strstr(r.out, "migrate"));
    ck_assert_str_eq(r.errs, "");

    char *argv2[] = {"commerce-settlement", "-h", NULL};
    run_args(2, argv2, &settle_defs, &r);
    ck_assert_int_eq(r.rc, 1);
    ck_assert_ptr_nonnull(strstr(r.out, "0.0.0.0:50053"));
    ck_assert_ptr_null(strstr(r.out, "INVENTORY_TARGET"));
}
END_TEST

START_TEST(version_prints_program_and_version)
{
    char *argv[] = {"./build/bin/commerce-order", "--version", NULL};
    run_result r;
    run_args(2, argv, &order_defs, &r);
    ck_assert_int_eq(r.rc, 1);
    ck_assert_str_eq(r.out, "commerce-order " COMMERCE_VERSION "\n");
}
END_TEST

START_TEST(migrate_sets_flag_and_continues)
{
    char *argv[] = {"commerce-order", "migrate", NULL};
    run_result r;
    run_args(2, argv, &order_defs, &r);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_int_eq(r.migrate, 1);
    ck_assert_str_eq(r.out, "");

    char *argv0[] = {"commerce-order", NULL};
    run_args(1, argv0, &order_defs, &r);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_int_eq(r.migrate, 0);
}
END_TEST

START_TEST(unknown_argument_is_one_line_error)
{
    char *argv[] = {"commerce-order", "--port=1", NULL};
    run_result r;
    run_args(2, argv, &order_defs, &r);
    ck_assert_int_eq(r.rc, -1);
    ck_assert_str_eq(r.out, "");
    ck_assert_str_eq(r.errs, "commerce-order: unknown argument \"--port=1\" (try --help)\n");
}
END_TEST

START_TEST(service_knobs_are_checked_whole)
{
    ck_assert_int_eq(load(&order_defs), 0);
    ck_assert_int_eq(cm_config_int(&cfg, "CM_TEST_N"), 7);
    ck_assert_int_eq(cm_config_int(&cfg, "CM_TEST_NEG"), -5);
    ck_assert_int_eq(cm_config_int(&cfg, "CM_TEST_SWITCH"), 1);
    ck_assert_str_eq(cm_config_text(&cfg, "CM_TEST_TEXT"), "dflt");
    ck_assert_str_eq(cfg.schema, "orders");
    setenv("CM_TEST_N", "", 1); /* empty is unset */
    setenv("CM_TEST_NEG", "-10", 1);
    setenv("CM_TEST_SWITCH", "off", 1);
    setenv("CM_TEST_TEXT", "commerce.order.v1.it", 1);
    setenv("ORDER_SCHEMA", "ord_it_1", 1);
    ck_assert_int_eq(load(&order_defs), 0);
    ck_assert_int_eq(cm_config_int(&cfg, "CM_TEST_N"), 7);
    ck_assert_int_eq(cm_config_int(&cfg, "CM_TEST_NEG"), -10);
    ck_assert_int_eq(cm_config_int(&cfg, "CM_TEST_SWITCH"), 0);
    ck_assert_str_eq(cm_config_text(&cfg, "CM_TEST_TEXT"), "commerce.order.v1.it");
    ck_assert_str_eq(cfg.schema, "ord_it_1");
    setenv("CM_TEST_N", "10", 1);
    ck_assert_int_eq(load(&order_defs), 0);
    ck_assert_int_eq(cm_config_int(&cfg, "CM_TEST_N"), 10);

    const char *wrong[] = {"11", "0", "5x", " 5", "-3", "+3", "99999999999999999999"};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        setenv("CM_TEST_N", wrong[i], 1);
        ck_assert_msg(load(&order_defs) == CM_EINVAL, "\"%s\" accepted", wrong[i]);
        ck_assert_ptr_nonnull(strstr(err, "CM_TEST_N: must be an integer between 1 and 10"));
    }
    unsetenv("CM_TEST_N");
    setenv("CM_TEST_NEG", "-11", 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    unsetenv("CM_TEST_NEG");
    setenv("CM_TEST_SWITCH", "yes", 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_str_eq(err, "CM_TEST_SWITCH: must be on or off, got \"yes\"");
    unsetenv("CM_TEST_SWITCH");
    const char *schemas[] = {"x-y", "1abc", "Orders", "a;drop"};
    for (size_t i = 0; i < sizeof schemas / sizeof schemas[0]; i++) {
        setenv("ORDER_SCHEMA", schemas[i], 1);
        ck_assert_msg(load(&order_defs) == CM_EINVAL, "schema \"%s\" accepted", schemas[i]);
        ck_assert_ptr_nonnull(strstr(err, "ORDER_SCHEMA: "));
    }
    unsetenv("ORDER_SCHEMA");
}
END_TEST

START_TEST(a_descriptor_default_outside_its_range_is_refused)
{
    static const cm_knob wrong[] = {{"CM_TEST_N", CM_KNOB_INT, 70, 1, 10, NULL, "a number"}};
    cm_config_defaults d = {
        .service = "x", .grpc_port = 1, .admin_port = 2, .knobs = wrong, .nknobs = 1};
    ck_assert_int_eq(load(&d), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "CM_TEST_N: the service's default is outside its own range"));
}
END_TEST

START_TEST(auth_off_needs_loopback_or_allow_insecure)
{
    unsetenv("ALLOW_INSECURE");
    /* the defaults: all interfaces, no authentication */
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_str_eq(err, "AUTH_MODE: off is refused on GRPC_LISTEN=\"0.0.0.0:50051\" (not "
                          "loopback): set AUTH_MODE=required with a JWT key, listen on "
                          "127.0.0.1, or set ALLOW_INSECURE=1");
    const char *refused[] = {":7001",          "10.0.0.1:7001",          "[::]:7001",
                             "128.0.0.1:7001", "localhost.example:7001", "[::2]:7001"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        setenv("GRPC_LISTEN", refused[i], 1);
        ck_assert_msg(load(&order_defs) == CM_EINVAL, "%s loaded", refused[i]);
        ck_assert_msg(strncmp(err, "AUTH_MODE: off is refused", 25) == 0, "%s", err);
    }
    const char *loopback[] = {"127.0.0.1:7001", "127.9.8.7:7001", "[::1]:7001", "localhost:7001"};
    for (size_t i = 0; i < sizeof loopback / sizeof loopback[0]; i++) {
        setenv("GRPC_LISTEN", loopback[i], 1);
        ck_assert_msg(load(&order_defs) == 0, "%s: %s", loopback[i], err);
        ck_assert_int_eq(cfg.allow_insecure, 0);
    }
    /* the escape for a non-loopback address */
    setenv("GRPC_LISTEN", "0.0.0.0:7001", 1);
    setenv("ALLOW_INSECURE", "0", 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    setenv("ALLOW_INSECURE", "1", 1);
    ck_assert_msg(load(&order_defs) == 0, "%s", err);
    ck_assert_int_eq(cfg.allow_insecure, 1);
    /* with authentication any address is fine */
    unsetenv("ALLOW_INSECURE");
    setenv("AUTH_MODE", "required", 1);
    setenv("JWT_JWKS_FILE", tmpfile_path, 1);
    ck_assert_msg(load(&order_defs) == 0, "%s", err);
    ck_assert_str_eq(cfg.jwt_jwks_file, tmpfile_path);
    cm_auth_settings as;
    cm_config_auth_settings(&cfg, &as);
    ck_assert_str_eq(as.jwks_file, tmpfile_path);
}
END_TEST

START_TEST(peer_token_file_is_read)
{
    ck_assert_int_eq(load(&order_defs), 0);
    ck_assert_str_eq(INV(token_file), "");
    setenv("INVENTORY_TOKEN_FILE", tmpfile_path, 1);
    ck_assert_msg(load(&order_defs) == 0, "%s", err);
    ck_assert_str_eq(INV(token_file), tmpfile_path);
    setenv("INVENTORY_TOKEN_FILE", "/tmp", 1);
    ck_assert_int_eq(load(&order_defs), CM_EINVAL);
    ck_assert_str_eq(err, "INVENTORY_TOKEN_FILE: \"/tmp\" is not a regular file");
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("load");
    tcase_add_checked_fixture(tc, env_setup, env_teardown);
    tcase_add_test(tc, defaults_follow_design_table);
    tcase_add_test(tc, defaults_are_per_service);
    tcase_add_test(tc, environment_overrides_defaults);
    tcase_add_test(tc, empty_variable_means_default);
    tcase_add_test(tc, env_array_is_read_instead_of_environment);
    tcase_add_test(tc, fifo_as_a_file_is_refused_without_blocking);
    tcase_add_test(tc, address_forms_are_normalised);
    tcase_add_test(tc, workers_error_names_variable_and_value);
    tcase_add_test(tc, rpc_disable_and_kafka_linger_are_read);
    tcase_add_test(tc, failed_load_leaves_config_untouched);
    tcase_add_loop_test(tc, bad_value_error_names_variable, 0,
                        (int)(sizeof bad_rows / sizeof bad_rows[0]));
    tcase_add_test(tc, secret_is_never_echoed);
    tcase_add_test(tc, tls_files_must_be_readable);
    tcase_add_test(tc, overlong_value_is_rejected);
    tcase_add_test(tc, port_of_parses_address_forms);
    tcase_add_test(tc, service_knobs_are_checked_whole);
    tcase_add_test(tc, a_descriptor_default_outside_its_range_is_refused);
    tcase_add_test(tc, auth_off_needs_loopback_or_allow_insecure);
    tcase_add_test(tc, peer_token_file_is_read);
    suite_add_tcase(s, tc);

    TCase *args = tcase_create("args");
    tcase_add_test(args, help_prints_every_variable_with_defaults);
    tcase_add_test(args, version_prints_program_and_version);
    tcase_add_test(args, migrate_sets_flag_and_continues);
    tcase_add_test(args, unknown_argument_is_one_line_error);
    suite_add_tcase(s, args);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
