/*
 * commerce-testsvc: a small service on the common runtime, for the
 * integration, interop and benchmark tests. it is shaped like a real
 * service (handlers validate, use the worker's database connection, map
 * errors) so the tests exercise what the business services will use.
 */
#include "cm_err.h"
#include "cm_log.h"
#include "cm_rpc.h"
#include "cm_rpc_client.h"
#include "cm_service.h"

#include <grpc/status.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commerce/test/v1/test.pb-c.h"

extern const cm_migration testsvc_migrations[];
extern const size_t testsvc_migrations_count;

/* texts starting "unavailable-once:" seen so far: the first Echo of such a
 * text answers UNAVAILABLE, so a client's retry can be watched */
#define ONCE_MAX 64
static char once_seen[ONCE_MAX][128];
static int once_n;
static pthread_mutex_t once_mu = PTHREAD_MUTEX_INITIALIZER;

static int first_time(const char *text)
{
    pthread_mutex_lock(&once_mu);
    int seen = 0;
    for (int i = 0; i < once_n && !seen; i++)
        seen = strcmp(once_seen[i], text) == 0;
    if (!seen)
        snprintf(once_seen[once_n++ % ONCE_MAX], sizeof once_seen[0], "%s", text);
    pthread_mutex_unlock(&once_mu);
    return !seen;
}

static int echo(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Test__V1__EchoRequest *req = (const void *)in;
    Commerce__Test__V1__EchoResponse *resp = (void *)out;
    if (strncmp(req->text, "unavailable-once:", 17) == 0 && first_time(req->text))
        return cm_rpc_fail(ctx, GRPC_STATUS_UNAVAILABLE, "DEPENDENCY_UNAVAILABLE",
                           "unavailable once, on request");
    resp->text = req->text;
    if (strcmp(req->text, "scope?") == 0) { /* what the runtime limited the caller to */
        const char *m = cm_rpc_ctx_merchant_scope(ctx), *c = cm_rpc_ctx_channel_scope(ctx);
        resp->text = cm_rpc_strdup(ctx, m ? m : c ? c : "(none)");
    }
    resp->tenant = (char *)cm_rpc_ctx_tenant(ctx);
    const char *rid = cm_rpc_ctx_request_id(ctx);
    const char *tid = cm_rpc_ctx_trace_id(ctx);
    resp->request_id = (char *)(rid ? rid : "");
    resp->trace_id = (char *)(tid ? tid : "");
    resp->blob_len = (int64_t)req->blob.len;
    return 0;
}

static int sleep_ms(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Test__V1__SleepRequest *req = (const void *)in;
    Commerce__Test__V1__SleepResponse *resp = (void *)out;
    if (req->millis < 0 || req->millis > 60000)
        return cm_rpc_fail_field(ctx, "millis", "must be between 0 and 60000");
    struct timespec ts = {.tv_sec = req->millis / 1000,
                          .tv_nsec = (long)(req->millis % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    resp->slept_millis = req->millis;
    return 0;
}

static int check_key(cm_rpc_ctx *ctx, const char *key)
{
    size_t n = strlen(key);
    if (n == 0)
        return cm_rpc_fail_field(ctx, "key", "must not be empty");
    if (n > 128)
        return cm_rpc_fail_field(ctx, "key", "must be at most 128 characters");
    return 0;
}

typedef struct put_tx {
    const char *tenant;
    const Commerce__Test__V1__PutRequest *req;
    int created;
} put_tx;

static int put_in_tx(cm_db *db, void *arg)
{
    put_tx *t = arg;
    const char *params[3] = {t->tenant, t->req->key, t->req->value};
    PGresult *r = PQexecParams(cm_db_conn(db),
                               "INSERT INTO kv (tenant_id, key, value) VALUES ($1, $2, $3) "
                               "ON CONFLICT (tenant_id, key) DO NOTHING RETURNING 1",
                               3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        int rc = cm_db_error(db, r, "insert kv");
        PQclear(r);
        return rc;
    }
    t->created = PQntuples(r) == 1;
    PQclear(r);
    if (t->created)
        return 0;
    /* the key exists: same value is a retry, another value a conflict */
    r = PQexecParams(cm_db_conn(db), "SELECT value FROM kv WHERE tenant_id = $1 AND key = $2", 2,
                     NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        int rc = cm_db_error(db, r, "select kv");
        PQclear(r);
        return rc;
    }
    int same = strcmp(PQgetvalue(r, 0, 0), t->req->value) == 0;
    PQclear(r);
    return same ? 0 : CM_EEXIST;
}

static int put(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Test__V1__PutRequest *req = (const void *)in;
    Commerce__Test__V1__PutResponse *resp = (void *)out;
    if (check_key(ctx, req->key))
        return -1;
    if (strlen(req->value) > 1024)
        return cm_rpc_fail_field(ctx, "value", "must be at most 1024 characters");
    put_tx t = {.tenant = cm_rpc_ctx_tenant(ctx), .req = req};
    int rc = cm_db_tx(cm_service_db(ctx), NULL, 5, put_in_tx, &t);
    if (rc == CM_EEXIST)
        return cm_rpc_fail(ctx, GRPC_STATUS_ALREADY_EXISTS, "KEY_EXISTS",
                           "key already holds another value");
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not store the value");
    resp->created = t.created;
    return 0;
}

static int get(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Test__V1__GetRequest *req = (const void *)in;
    Commerce__Test__V1__GetResponse *resp = (void *)out;
    if (check_key(ctx, req->key))
        return -1;
    cm_db *db = cm_service_db(ctx);
    const char *params[2] = {cm_rpc_ctx_tenant(ctx), req->key};
    PGresult *r =
        PQexecParams(cm_db_conn(db), "SELECT value FROM kv WHERE tenant_id = $1 AND key = $2", 2,
                     NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        int rc = cm_db_error(db, r, "select kv");
        PQclear(r);
        return cm_rpc_fail_err(ctx, rc, "could not read the value");
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "KEY_NOT_FOUND", "no such key");
    }
    resp->value = cm_rpc_strdup(ctx, PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

static int fail(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Test__V1__FailRequest *req = (const void *)in;
    (void)out;
    if (req->field[0])
        return cm_rpc_fail_field(ctx, req->field, "rejected on request");
    if (req->code <= 0 || req->code > 16)
        return cm_rpc_fail_field(ctx, "code", "must be a gRPC status code between 1 and 16");
    int rc = cm_rpc_fail(ctx, req->code, "REQUESTED_FAILURE", "failed on request");
    /* a typed detail of our own: the request, echoed */
    cm_rpc_fail_detail(ctx, in);
    cm_rpc_fail_meta(ctx, "requested_code",
                     cm_arena_printf(cm_rpc_ctx_arena(ctx), "%d", req->code));
    for (size_t i = 0; i < req->n_metadata; i++)
        cm_rpc_fail_meta(ctx, req->metadata[i]->key, req->metadata[i]->value);
    return rc;
}

static int noop(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    (void)ctx;
    (void)in;
    (void)out;
    return 0;
}

static int forward(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Test__V1__ForwardRequest *req = (const void *)in;
    Commerce__Test__V1__ForwardResponse *resp = (void *)out;
    cm_rpc_client *client = cm_service_app(ctx);
    cm_rpc_md md[8];
    size_t nmd = cm_rpc_ctx_propagate(ctx, md, 8);
    Commerce__Test__V1__EchoRequest ereq = COMMERCE__TEST__V1__ECHO_REQUEST__INIT;
    ereq.text = req->text;
    /* never wait longer than our own caller will */
    int64_t left = cm_rpc_ctx_deadline_left_ms(ctx);
    int timeout = left < 2000 ? (int)left : 2000;
    ProtobufCAllocator al = cm_arena_allocator(cm_rpc_ctx_arena(ctx));
    ProtobufCMessage *eresp = NULL;
    cm_rpc_status st;
    int rc = cm_rpc_call(client, "/commerce.test.v1.TestService/Echo", &ereq.base,
                         &commerce__test__v1__echo_response__descriptor, &al, &eresp, md, nmd,
                         timeout, CM_RPC_CALL_IDEMPOTENT, &st);
    if (rc)
        return cm_rpc_fail_forward(ctx, &st);
    resp->echo = (Commerce__Test__V1__EchoResponse *)eresp;
    resp->attempts = st.attempts;
    return 0;
}

/* Fail on the downstream, its failure passed on as order passes on
 * inventory's: not retried (the downstream may have acted) */
static int forward_fail(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Test__V1__ForwardFailRequest *req = (const void *)in;
    (void)out;
    if (!req->fail)
        return cm_rpc_fail_field(ctx, "fail", "is required");
    cm_rpc_md md[8];
    size_t nmd = cm_rpc_ctx_propagate(ctx, md, 8);
    int64_t left = cm_rpc_ctx_deadline_left_ms(ctx);
    ProtobufCAllocator al = cm_arena_allocator(cm_rpc_ctx_arena(ctx));
    ProtobufCMessage *fresp = NULL;
    cm_rpc_status st;
    int rc = cm_rpc_call(cm_service_app(ctx), "/commerce.test.v1.TestService/Fail",
                         &req->fail->base, &commerce__test__v1__fail_response__descriptor, &al,
                         &fresp, md, nmd, left < 2000 ? (int)left : 2000, 0, &st);
    return rc ? cm_rpc_fail_forward(ctx, &st) : 0;
}

static int app_init(cm_service *svc, void **app, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    *app = cm_service_peer(svc, "inventory");
    return 0;
}

/* a singleton ticker: each run records this process in the ticks table,
 * so a test sees that one replica at a time runs it */
static cm_gauge *leads_gauge(cm_service *svc)
{
    return cm_metrics_gauge(cm_service_metrics(svc), "testsvc_leads",
                            "1 on the replica whose singleton ticker leads", NULL);
}

/* the ticker's replica stopped leading: its gauge leaves /metrics */
static void resign(cm_service *svc, void *app)
{
    (void)app;
    cm_metrics_gauge_remove(cm_service_metrics(svc), leads_gauge(svc));
}

static void tick(cm_service *svc, cm_db *db, void *app)
{
    (void)app;
    cm_gauge_set(leads_gauge(svc), 1);
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    const char *p[] = {pid};
    PQclear(PQexecParams(cm_db_conn(db), "INSERT INTO ticks (pid) VALUES ($1::int)", 1, NULL, p,
                         NULL, NULL, 0));
}

static const cm_rpc_method methods[] = {
    {"Echo", echo, CM_RPC_READ, CM_RPC_ROLES_READ " merchant channel"},
    {"Sleep", sleep_ms, CM_RPC_READ, CM_RPC_ROLES_READ},
    {"Put", put, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"Get", get, CM_RPC_READ, CM_RPC_ROLES_READ},
    {"Fail", fail, CM_RPC_READ, CM_RPC_ROLES_READ},
    {"Noop", noop, CM_RPC_NO_TENANT, NULL},
    {"Forward", forward, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
    {"ForwardFail", forward_fail, CM_RPC_WRITE, CM_RPC_ROLES_WRITE},
};

static const cm_peer_def peers[] = {{"inventory", "127.0.0.1:50052"}};
static const cm_knob knobs[] = {
    {"TESTSVC_TICK_MS", CM_KNOB_INT, 1000, 10, 60000, NULL, "period of the singleton ticker (ms)"},
};
static const cm_service_ticker tickers[] = {{"ticks", "TESTSVC_TICK_MS", tick, 1, resign}};

int main(int argc, char **argv)
{
    /* TESTSVC_NAME: a second instance with its own error domain
     * ("<name>.commerce"), to tell a forwarded status from our own */
    const char *name = getenv("TESTSVC_NAME");
    const cm_service_def def = {
        .name = name && *name ? name : "testsvc",
        .schema = "testsvc",
        .grpc_port = 50059,
        .admin_port = 9099,
        .migrations = testsvc_migrations,
        .nmigrations = testsvc_migrations_count,
        .api = &commerce__test__v1__test_service__descriptor,
        .methods = methods,
        .nmethods = sizeof methods / sizeof methods[0],
        /* Forward calls INVENTORY_TARGET, like order calls inventory */
        .peers = peers,
        .npeers = 1,
        .knobs = knobs,
        .nknobs = sizeof knobs / sizeof knobs[0],
        .tickers = tickers,
        .ntickers = sizeof tickers / sizeof tickers[0],
        .app_init = app_init,
    };
    return cm_service_main(argc, argv, &def);
}
