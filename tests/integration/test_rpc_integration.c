/*
 * the rpc runtime end to end: commerce-testsvc as a real process, real
 * Postgres, real gRPC over loopback, called with our client.
 */
#include "harness.h"

#include "cm_err.h"
#include "cm_id.h"

#include <check.h>
#include <grpc/status.h>
#include <jwt.h>
#include <libpq-fe.h>
#include <time.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commerce/test/v1/test.pb-c.h"
#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/rpc/error_details.pb-c.h"
#include "google/rpc/status.pb-c.h"

#define SVC "/commerce.test.v1.TestService/"

static hs_proc svc;
static cm_rpc_client *cli;

static const cm_rpc_md tenant_md[] = {{"x-tenant-id", "tenant-a"}};

static void suite_setup(void)
{
    hs_start(&svc, TESTSVC_BIN, NULL);
    cli = hs_client(&svc, NULL);
}

static void suite_teardown(void)
{
    cm_rpc_client_free(cli);
    cli = NULL;
    int code = hs_stop(&svc, SIGTERM, 30000);
    ck_assert_int_eq(code, 0);
}

static int call(const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *rd, ProtobufCMessage **resp, const cm_rpc_md *md,
                size_t nmd, int timeout_ms, cm_rpc_status *st)
{
    return cm_rpc_call(cli, method, req, rd, NULL, resp, md, nmd, timeout_ms, 0, st);
}

static void random_key(char *out)
{
    ck_assert_int_eq(cm_id_uuid7(out), 0);
}

START_TEST(health_reports_serving_and_admin_answers)
{
    ck_assert_int_eq(hs_health(&svc), 1);
    char body[4096];
    ck_assert_int_eq(hs_http_get(svc.admin_port, "/healthz", body, sizeof body), 200);
    ck_assert_int_eq(hs_http_get(svc.admin_port, "/readyz", body, sizeof body), 200);
}
END_TEST

START_TEST(echo_returns_tenant_and_request_metadata)
{
    const cm_rpc_md md[] = {
        {"x-tenant-id", "tenant-a"},
        {"x-request-id", "req-42"},
        {"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    };
    Commerce__Test__V1__EchoRequest req = COMMERCE__TEST__V1__ECHO_REQUEST__INIT;
    req.text = "héllo";
    ProtobufCMessage *resp;
    cm_rpc_status st;
    ck_assert_int_eq(call(SVC "Echo", &req.base, &commerce__test__v1__echo_response__descriptor,
                          &resp, md, 3, 5000, &st),
                     0);
    Commerce__Test__V1__EchoResponse *r = (void *)resp;
    ck_assert_str_eq(r->text, "héllo");
    ck_assert_str_eq(r->tenant, "tenant-a");
    ck_assert_str_eq(r->request_id, "req-42");
    ck_assert_str_eq(r->trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    protobuf_c_message_free_unpacked(resp, NULL);
}
END_TEST

START_TEST(put_get_roundtrip_is_idempotent_in_postgres)
{
    char key[40];
    random_key(key);
    Commerce__Test__V1__PutRequest put = COMMERCE__TEST__V1__PUT_REQUEST__INIT;
    put.key = key;
    put.value = "v1";
    ProtobufCMessage *resp;
    cm_rpc_status st;
    ck_assert_int_eq(call(SVC "Put", &put.base, &commerce__test__v1__put_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     0);
    ck_assert(((Commerce__Test__V1__PutResponse *)resp)->created);
    protobuf_c_message_free_unpacked(resp, NULL);

    /* the same key and body again: the first result, nothing new */
    ck_assert_int_eq(call(SVC "Put", &put.base, &commerce__test__v1__put_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     0);
    ck_assert(!((Commerce__Test__V1__PutResponse *)resp)->created);
    protobuf_c_message_free_unpacked(resp, NULL);

    /* the same key with another body */
    put.value = "v2";
    ck_assert_int_eq(call(SVC "Put", &put.base, &commerce__test__v1__put_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     CM_EEXIST);
    ck_assert_int_eq(st.code, GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "KEY_EXISTS");

    Commerce__Test__V1__GetRequest get = COMMERCE__TEST__V1__GET_REQUEST__INIT;
    get.key = key;
    ck_assert_int_eq(call(SVC "Get", &get.base, &commerce__test__v1__get_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     0);
    ck_assert_str_eq(((Commerce__Test__V1__GetResponse *)resp)->value, "v1");
    protobuf_c_message_free_unpacked(resp, NULL);

    /* another tenant does not see it */
    const cm_rpc_md other[] = {{"x-tenant-id", "tenant-b"}};
    ck_assert_int_eq(call(SVC "Get", &get.base, &commerce__test__v1__get_response__descriptor,
                          &resp, other, 1, 5000, &st),
                     CM_ENOTFOUND);
    ck_assert_int_eq(st.code, GRPC_STATUS_NOT_FOUND);
}
END_TEST

START_TEST(bad_input_names_the_field_and_changes_nothing)
{
    Commerce__Test__V1__PutRequest put = COMMERCE__TEST__V1__PUT_REQUEST__INIT;
    put.key = "";
    put.value = "x";
    ProtobufCMessage *resp;
    cm_rpc_status st;
    ck_assert_int_eq(call(SVC "Put", &put.base, &commerce__test__v1__put_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     CM_EINVAL);
    ck_assert_int_eq(st.code, GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "key");
    ck_assert_str_eq(st.reason, "INVALID_ARGUMENT");
    ck_assert_ptr_nonnull(strstr(st.message, "key"));
}
END_TEST

START_TEST(missing_tenant_is_invalid_argument)
{
    Commerce__Test__V1__EchoRequest req = COMMERCE__TEST__V1__ECHO_REQUEST__INIT;
    ProtobufCMessage *resp;
    cm_rpc_status st;
    ck_assert_int_eq(call(SVC "Echo", &req.base, &commerce__test__v1__echo_response__descriptor,
                          &resp, NULL, 0, 5000, &st),
                     CM_EINVAL);
    ck_assert_str_eq(st.field, "metadata.x-tenant-id");

    const cm_rpc_md bad[] = {{"x-tenant-id", "no spaces allowed"}};
    ck_assert_int_eq(call(SVC "Echo", &req.base, &commerce__test__v1__echo_response__descriptor,
                          &resp, bad, 1, 5000, &st),
                     CM_EINVAL);
    ck_assert_str_eq(st.field, "metadata.x-tenant-id");
}
END_TEST

START_TEST(deadline_exceeded_is_reported_on_time)
{
    Commerce__Test__V1__SleepRequest req = COMMERCE__TEST__V1__SLEEP_REQUEST__INIT;
    req.millis = 1500;
    ProtobufCMessage *resp;
    cm_rpc_status st;
    long long t0 = hs_now_ms();
    ck_assert_int_eq(call(SVC "Sleep", &req.base, &commerce__test__v1__sleep_response__descriptor,
                          &resp, tenant_md, 1, 200, &st),
                     CM_ETIMEDOUT);
    ck_assert_int_eq(st.code, GRPC_STATUS_DEADLINE_EXCEEDED);
    ck_assert_int_lt(hs_now_ms() - t0, 1200);
}
END_TEST

START_TEST(unknown_method_is_unimplemented)
{
    Commerce__Test__V1__EchoRequest req = COMMERCE__TEST__V1__ECHO_REQUEST__INIT;
    ProtobufCMessage *resp;
    cm_rpc_status st;
    ck_assert_int_eq(call(SVC "NoSuchMethod", &req.base,
                          &commerce__test__v1__echo_response__descriptor, &resp, tenant_md, 1, 5000,
                          &st),
                     CM_EINTERNAL);
    ck_assert_int_eq(st.code, GRPC_STATUS_UNIMPLEMENTED);
    ck_assert_str_eq(st.reason, "UNIMPLEMENTED"); /* catalogued in error_reason.proto */
    ck_assert_int_eq(call("/no.such.Service/Method", &req.base,
                          &commerce__test__v1__echo_response__descriptor, &resp, tenant_md, 1, 5000,
                          &st),
                     CM_EINTERNAL);
    ck_assert_int_eq(st.code, GRPC_STATUS_UNIMPLEMENTED);
}
END_TEST

/* a reply over GRPC_MAX_MESSAGE_BYTES: FAILED_PRECONDITION, which no
 * client retries, not RESOURCE_EXHAUSTED, which clients retry forever */
START_TEST(a_reply_too_large_is_failed_precondition)
{
    hs_proc p;
    const char *env[] = {"GRPC_MAX_MESSAGE_BYTES=256", NULL};
    ck_assert_int_eq(hs_spawn(&p, TESTSVC_BIN, env), 0);
    ck_assert_int_eq(hs_wait_serving(&p, 20000), 0);
    cm_rpc_client *c;
    char err[256];
    cm_rpc_client_opts o = {.target = p.target};
    ck_assert_int_eq(cm_rpc_client_new(&c, &o, err, sizeof err), 0);
    /* a 160-byte text fits the request; echoed with a 120-byte request id
     * the reply does not */
    char text[161], rid[121];
    memset(text, 't', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    memset(rid, 'r', sizeof rid - 1);
    rid[sizeof rid - 1] = '\0';
    const cm_rpc_md md[] = {{"x-tenant-id", "tenant-a"}, {"x-request-id", rid}};
    Commerce__Test__V1__EchoRequest req = COMMERCE__TEST__V1__ECHO_REQUEST__INIT;
    req.text = text;
    ProtobufCMessage *resp = NULL;
    cm_rpc_status st;
    ck_assert_int_eq(cm_rpc_call(c, SVC "Echo", &req.base,
                                 &commerce__test__v1__echo_response__descriptor, NULL, &resp, md, 2,
                                 5000, CM_RPC_CALL_IDEMPOTENT, &st),
                     CM_ESTATE);
    ck_assert_int_eq(st.code, GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "RESPONSE_TOO_LARGE");
    ck_assert_str_eq(st.domain, "testsvc.commerce");
    ck_assert_int_eq(st.attempts, 1);
    /* the same call with a short request id fits */
    const cm_rpc_md small[] = {{"x-tenant-id", "tenant-a"}, {"x-request-id", "r-1"}};
    ck_assert_int_eq(cm_rpc_call(c, SVC "Echo", &req.base,
                                 &commerce__test__v1__echo_response__descriptor, NULL, &resp, small,
                                 2, 5000, 0, &st),
                     0);
    protobuf_c_message_free_unpacked(resp, NULL);
    static char body[1 << 20];
    ck_assert_int_eq(hs_http_get(p.admin_port, "/metrics", body, sizeof body), 200);
    ck_assert_ptr_nonnull(strstr(body, "rpc_server_handled_total{method=\"/commerce.test.v1."
                                       "TestService/Echo\",code=\"FAILED_PRECONDITION\"} 1"));
    ck_assert_ptr_null(strstr(body, "code=\"RESOURCE_EXHAUSTED\""));
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 10000), 0);
}
END_TEST

START_TEST(oversized_message_is_refused_and_server_lives_on)
{
    size_t n = 5u << 20;
    uint8_t *blob = calloc(1, n);
    Commerce__Test__V1__EchoRequest req = COMMERCE__TEST__V1__ECHO_REQUEST__INIT;
    req.blob.data = blob;
    req.blob.len = n;
    ProtobufCMessage *resp;
    cm_rpc_status st;
    call(SVC "Echo", &req.base, &commerce__test__v1__echo_response__descriptor, &resp, tenant_md, 1,
         5000, &st);
    free(blob);
    ck_assert_int_eq(st.code, GRPC_STATUS_RESOURCE_EXHAUSTED);

    /* just under the limit passes */
    n = (4u << 20) - 1024;
    blob = calloc(1, n);
    req.blob.data = blob;
    req.blob.len = n;
    ck_assert_int_eq(call(SVC "Echo", &req.base, &commerce__test__v1__echo_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     0);
    ck_assert_int_eq(((Commerce__Test__V1__EchoResponse *)resp)->blob_len, (int64_t)n);
    protobuf_c_message_free_unpacked(resp, NULL);
    free(blob);
}
END_TEST

START_TEST(malformed_request_is_invalid_argument)
{
    Commerce__Test__V1__WrongWireRequest req = COMMERCE__TEST__V1__WRONG_WIRE_REQUEST__INIT;
    req.text = 12345;
    ProtobufCMessage *resp;
    cm_rpc_status st;
    ck_assert_int_eq(call(SVC "Echo", &req.base, &commerce__test__v1__echo_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     CM_EINVAL);
    ck_assert_int_eq(st.code, GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "MALFORMED_REQUEST");
    ck_assert_str_eq(st.field, "text"); /* where the encoding broke: a fixed64 as a string */
}
END_TEST

/* a string that is not UTF-8, or holds a NUL, is refused naming its field
 * before any handler sees it: a C string would be cut at the NUL */
START_TEST(strings_with_nul_or_invalid_utf8_are_refused_naming_the_field)
{
    static const struct {
        const char *bytes;
        size_t len;
        const char *why;
    } bad[] = {
        {"H-1\0zz", 6, "NUL"},        {"\0", 1, "NUL"},
        {"\xff", 1, "UTF-8"},         {"ab\xc3", 3, "UTF-8"},
        {"\xed\xa0\x80", 3, "UTF-8"}, /* a surrogate */
        {"\xc0\xaf", 2, "UTF-8"},     /* overlong */
    };
    ProtobufCMessage *resp;
    cm_rpc_status st;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Commerce__Test__V1__RawEchoRequest raw = COMMERCE__TEST__V1__RAW_ECHO_REQUEST__INIT;
        raw.text.data = (uint8_t *)bad[i].bytes;
        raw.text.len = bad[i].len;
        ck_assert_int_eq(call(SVC "Echo", &raw.base, &commerce__test__v1__echo_response__descriptor,
                              &resp, tenant_md, 1, 5000, &st),
                         CM_EINVAL);
        ck_assert_str_eq(st.reason, "INVALID_ARGUMENT");
        ck_assert_str_eq(st.field, "text");
        ck_assert_msg(strstr(st.message, bad[i].why), "case %zu: %s", i, st.message);
    }
    /* nested: the second entry of a map names its path */
    Commerce__Test__V1__RawEntry e0 = COMMERCE__TEST__V1__RAW_ENTRY__INIT,
                                 e1 = COMMERCE__TEST__V1__RAW_ENTRY__INIT;
    e0.key.data = (uint8_t *)"k0";
    e0.key.len = 2;
    e1.key.data = (uint8_t *)"k1";
    e1.key.len = 2;
    e1.value.data = (uint8_t *)"v\0";
    e1.value.len = 2;
    Commerce__Test__V1__RawEntry *es[] = {&e0, &e1};
    Commerce__Test__V1__RawFailRequest rf = COMMERCE__TEST__V1__RAW_FAIL_REQUEST__INIT;
    rf.code = 9;
    rf.n_metadata = 2;
    rf.metadata = es;
    ck_assert_int_eq(call(SVC "Fail", &rf.base, &commerce__test__v1__fail_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     CM_EINVAL);
    ck_assert_str_eq(st.field, "metadata[1].value");
    /* valid multi-byte text still passes */
    Commerce__Test__V1__EchoRequest ok = COMMERCE__TEST__V1__ECHO_REQUEST__INIT;
    ok.text = "\xe5\x95\x86\xf0\x9f\x9b\x92"; /* 商, a 4-byte emoji */
    ck_assert_int_eq(call(SVC "Echo", &ok.base, &commerce__test__v1__echo_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     0);
    ck_assert_str_eq(((Commerce__Test__V1__EchoResponse *)resp)->text, ok.text);
    protobuf_c_message_free_unpacked(resp, NULL);
}
END_TEST

/* whatever a failure echoes of the caller's input is bounded, so the
 * trailers stay under a stock client's 8 KB metadata limit and parse */
START_TEST(echoed_input_in_a_failure_is_bounded)
{
    size_t n = 10 * 1024;
    char *huge = malloc(n + 1);
    memset(huge, 'x', n);
    huge[n] = '\0';
    Commerce__Test__V1__FailRequest req = COMMERCE__TEST__V1__FAIL_REQUEST__INIT;
    req.field = huge; /* the handler names it as the bad field */
    ProtobufCMessage *resp;
    cm_rpc_status st;
    ck_assert_int_eq(call(SVC "Fail", &req.base, &commerce__test__v1__fail_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     CM_EINVAL);
    ck_assert_int_eq(st.details_truncated, 0);
    ck_assert_str_eq(st.reason, "INVALID_ARGUMENT");
    ck_assert_uint_le(strlen(st.message), 515);
    ck_assert_uint_le(strlen(st.field), 131);
    ck_assert(strncmp(st.field, "xxxx", 4) == 0);

    /* metadata values too */
    req.field = "";
    req.code = 9;
    Commerce__Test__V1__FailRequest__MetadataEntry e =
        COMMERCE__TEST__V1__FAIL_REQUEST__METADATA_ENTRY__INIT;
    Commerce__Test__V1__FailRequest__MetadataEntry *es[] = {&e};
    e.key = "echo";
    e.value = huge;
    req.n_metadata = 1;
    req.metadata = es;
    ck_assert_int_eq(call(SVC "Fail", &req.base, &commerce__test__v1__fail_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     CM_ESTATE);
    ck_assert_int_eq(st.details_truncated, 0);
    const char *v = cm_rpc_status_meta(&st, "echo");
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_le(strlen(v), 259);
    free(huge);
}
END_TEST

START_TEST(unknown_fields_are_ignored)
{
    Commerce__Test__V1__WrongWireRequest req = COMMERCE__TEST__V1__WRONG_WIRE_REQUEST__INIT;
    req.extra = "from a newer client";
    ProtobufCMessage *resp;
    cm_rpc_status st;
    ck_assert_int_eq(call(SVC "Echo", &req.base, &commerce__test__v1__echo_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     0);
    ck_assert_str_eq(((Commerce__Test__V1__EchoResponse *)resp)->text, "");
    protobuf_c_message_free_unpacked(resp, NULL);
}
END_TEST

START_TEST(failure_carries_status_details)
{
    Commerce__Test__V1__FailRequest req = COMMERCE__TEST__V1__FAIL_REQUEST__INIT;
    req.code = GRPC_STATUS_FAILED_PRECONDITION;
    ProtobufCMessage *resp;
    cm_rpc_status st;
    ck_assert_int_eq(call(SVC "Fail", &req.base, &commerce__test__v1__fail_response__descriptor,
                          &resp, tenant_md, 1, 5000, &st),
                     CM_ESTATE);
    ck_assert_int_eq(st.code, GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "REQUESTED_FAILURE");
    ck_assert_str_eq(st.message, "failed on request");
}
END_TEST

START_TEST(client_in_a_handler_forwards_metadata_and_deadline)
{
    /* the shared service forwards to itself (INVENTORY_TARGET = own port) */
    const cm_rpc_md md[] = {
        {"x-tenant-id", "tenant-fwd"},
        {"x-request-id", "req-fwd"},
        {"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    };
    Commerce__Test__V1__ForwardRequest req = COMMERCE__TEST__V1__FORWARD_REQUEST__INIT;
    req.text = "via forward";
    ProtobufCMessage *resp;
    cm_rpc_status st;
    ck_assert_int_eq(call(SVC "Forward", &req.base,
                          &commerce__test__v1__forward_response__descriptor, &resp, md, 3, 5000,
                          &st),
                     0);
    Commerce__Test__V1__ForwardResponse *r = (void *)resp;
    ck_assert_ptr_nonnull(r->echo);
    ck_assert_str_eq(r->echo->text, "via forward");
    ck_assert_str_eq(r->echo->tenant, "tenant-fwd");
    ck_assert_str_eq(r->echo->request_id, "req-fwd");
    ck_assert_str_eq(r->echo->trace_id, "0af7651916cd43dd8448eb211c80319c");
    ck_assert_int_eq(r->attempts, 1);
    protobuf_c_message_free_unpacked(resp, NULL);
}
END_TEST

/* an idempotent call answered UNAVAILABLE once is retried with the same
 * message: gRPC core empties the buffer it sends, so each attempt needs
 * its own (the retry used to arrive empty) */
START_TEST(a_retried_call_sends_the_same_message)
{
    char text[96];
    char id[CM_ID_SIZE];
    random_key(id);
    snprintf(text, sizeof text, "unavailable-once:%s", id);
    Commerce__Test__V1__ForwardRequest req = COMMERCE__TEST__V1__FORWARD_REQUEST__INIT;
    req.text = text;
    ProtobufCMessage *resp;
    cm_rpc_status st;
    ck_assert_int_eq(call(SVC "Forward", &req.base,
                          &commerce__test__v1__forward_response__descriptor, &resp, tenant_md, 1,
                          5000, &st),
                     0);
    Commerce__Test__V1__ForwardResponse *r = (void *)resp;
    ck_assert_int_eq(r->attempts, 2);
    ck_assert_ptr_nonnull(r->echo);
    ck_assert_str_eq(r->echo->text, text);
    protobuf_c_message_free_unpacked(resp, NULL);
}
END_TEST

START_TEST(metrics_count_calls_by_method_and_code)
{
    static char body[1 << 20];
    ck_assert_int_eq(hs_http_get(svc.admin_port, "/metrics", body, sizeof body), 200);
    ck_assert_ptr_nonnull(strstr(
        body,
        "rpc_server_handled_total{method=\"/commerce.test.v1.TestService/Echo\",code=\"OK\"}"));
    ck_assert_ptr_nonnull(strstr(body, "rpc_server_handling_seconds_bucket"));
    ck_assert_ptr_nonnull(strstr(body, "process_resident_memory_bytes"));
}
END_TEST

typedef struct put_worker {
    int n, ok;
    cm_rpc_client *c; /* NULL: the suite's */
} put_worker;

static void *put_many(void *arg)
{
    put_worker *w = arg;
    for (int i = 0; i < w->n; i++) {
        char key[40];
        cm_id_uuid7(key);
        Commerce__Test__V1__PutRequest put = COMMERCE__TEST__V1__PUT_REQUEST__INIT;
        put.key = key;
        put.value = "x";
        ProtobufCMessage *resp;
        cm_rpc_status st;
        if (cm_rpc_call(w->c ? w->c : cli, SVC "Put", &put.base,
                        &commerce__test__v1__put_response__descriptor, NULL, &resp, tenant_md, 1,
                        10000, 0, &st) == 0) {
            w->ok += ((Commerce__Test__V1__PutResponse *)resp)->created;
            protobuf_c_message_free_unpacked(resp, NULL);
        }
    }
    return NULL;
}

START_TEST(concurrent_calls_all_succeed)
{
    pthread_t t[8];
    put_worker w[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (put_worker){.n = 100};
        pthread_create(&t[i], NULL, put_many, &w[i]);
    }
    int ok = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        ok += w[i].ok;
    }
    ck_assert_int_eq(ok, 800);
}
END_TEST

/* ---- processes of their own ---- */

/* 8 workers share 2 connections: every call is served, calls waited for a
 * connection (the pool is bounded), and none is lent once they are done */
START_TEST(workers_share_a_bounded_database_pool)
{
    hs_proc p;
    const char *env[] = {"WORKERS=8", "DB_POOL=2", NULL};
    hs_start(&p, TESTSVC_BIN, env);
    cm_rpc_client *c = hs_client(&p, NULL);
    pthread_t t[8];
    put_worker w[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (put_worker){.n = 40, .c = c};
        pthread_create(&t[i], NULL, put_many, &w[i]);
    }
    int ok = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        ok += w[i].ok;
    }
    ck_assert_int_eq(ok, 320);
    ck_assert_double_gt(hs_metric(&p, "db_pool_waits_total"), 0);
    ck_assert_double_eq(hs_metric(&p, "db_pool_in_use"), 0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 10000), 0);
}
END_TEST

typedef struct sleeper {
    const char *target;
    int millis;
    int rc;
    cm_rpc_status st;
} sleeper;

static void *sleep_call(void *arg)
{
    sleeper *s = arg;
    cm_rpc_client *c;
    char err[128];
    cm_rpc_client_opts o = {.target = s->target};
    cm_rpc_client_new(&c, &o, err, sizeof err);
    Commerce__Test__V1__SleepRequest req = COMMERCE__TEST__V1__SLEEP_REQUEST__INIT;
    req.millis = s->millis;
    ProtobufCMessage *resp = NULL;
    s->rc = cm_rpc_call(c, SVC "Sleep", &req.base, &commerce__test__v1__sleep_response__descriptor,
                        NULL, &resp, tenant_md, 1, 20000, 0, &s->st);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    cm_rpc_client_free(c);
    return NULL;
}

START_TEST(sigterm_drains_the_call_in_flight_and_exits_zero)
{
    hs_proc p;
    hs_start(&p, TESTSVC_BIN, NULL);
    sleeper s = {.target = p.target, .millis = 1000};
    pthread_t t;
    pthread_create(&t, NULL, sleep_call, &s);
    usleep(300 * 1000);
    kill(p.pid, SIGTERM);
    usleep(100 * 1000);
    /* draining: health is NOT_SERVING or the port is closed */
    int h = hs_health(&p);
    ck_assert_msg(h != 1, "still SERVING while draining (%d)", h);
    pthread_join(t, NULL);
    ck_assert_int_eq(s.rc, 0);
    ck_assert_int_eq(hs_stop(&p, 0, 10000), 0);
}
END_TEST

START_TEST(drain_grace_cancels_calls_that_overrun_it)
{
    hs_proc p;
    const char *env[] = {"DRAIN_GRACE_SECONDS=1", NULL};
    hs_start(&p, TESTSVC_BIN, env);
    sleeper s = {.target = p.target, .millis = 4000};
    pthread_t t;
    pthread_create(&t, NULL, sleep_call, &s);
    usleep(300 * 1000);
    long long t0 = hs_now_ms();
    kill(p.pid, SIGTERM);
    pthread_join(t, NULL);
    ck_assert_int_ne(s.rc, 0); /* cancelled, not completed */
    ck_assert_int_lt(hs_now_ms() - t0, 3000);
    ck_assert_int_eq(hs_stop(&p, 0, 10000), 0);
}
END_TEST

START_TEST(bad_configuration_exits_2_naming_the_variable)
{
    hs_proc p;
    const char *env[] = {"WORKERS=lots", NULL};
    ck_assert_int_eq(hs_spawn(&p, TESTSVC_BIN, env), 0);
    ck_assert_int_eq(hs_wait_exit(&p, 30000), 2); /* exited with 2, not killed */
    FILE *f = fopen(p.log_path, "r");
    ck_assert_ptr_nonnull(f);
    char line[512] = "";
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    fclose(f);
    ck_assert_msg(strstr(line, "WORKERS") != NULL, "no WORKERS in: %s", line);
}
END_TEST

/* the processes that ran the singleton ticker since (and including)
 * since_ms ago: a count of distinct pids, and one of them */
static int tickers_since(PGconn *pg, const char *schema, int since_ms, int *pid)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(DISTINCT pid), min(pid) FROM %s.ticks "
             "WHERE ran_at > clock_timestamp() - interval '%d milliseconds'",
             schema, since_ms);
    PGresult *r = PQexec(pg, sql);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    int n = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
    *pid = PQgetisnull(r, 0, 1) ? 0 : (int)strtol(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    return n;
}

/* a ticker the descriptor marks singleton runs on one replica at a time,
 * and another replica takes over when that one dies */
START_TEST(a_singleton_ticker_runs_on_one_replica_at_a_time)
{
    char schema[64], sv[96];
    snprintf(schema, sizeof schema, "ticks_it_%d", (int)getpid());
    snprintf(sv, sizeof sv, "TESTSVC_SCHEMA=%s", schema);
    const char *env[] = {sv, "TESTSVC_TICK_MS=50", NULL};
    hs_proc a, b;
    ck_assert_int_eq(hs_spawn(&a, TESTSVC_BIN, env), 0);
    ck_assert_int_eq(hs_wait_serving(&a, 20000), 0);
    ck_assert_int_eq(hs_spawn(&b, TESTSVC_BIN, env), 0);
    ck_assert_int_eq(hs_wait_serving(&b, 20000), 0);
    usleep(1500 * 1000);
    PGconn *pg = PQconnectdb(hs_pg_dsn());
    ck_assert_int_eq(PQstatus(pg), CONNECTION_OK);
    int leader = 0;
    ck_assert_int_eq(tickers_since(pg, schema, 1000, &leader), 1);
    ck_assert(leader == a.pid || leader == b.pid);
    hs_proc *dead = leader == a.pid ? &a : &b, *alive = leader == a.pid ? &b : &a;
    /* what only the leader knows is on the leader's /metrics alone */
    static char body[1 << 16];
    ck_assert_int_eq(hs_http_get(dead->admin_port, "/metrics", body, sizeof body), 200);
    ck_assert_ptr_nonnull(strstr(body, "\ntestsvc_leads 1"));
    ck_assert_int_eq(hs_http_get(alive->admin_port, "/metrics", body, sizeof body), 200);
    ck_assert_ptr_null(strstr(body, "\ntestsvc_leads"));
    /* the leader's session ends under it (the lock with it) until the
     * other replica has taken over: the former leader resigns, and its
     * gauge leaves its /metrics rather than going stale */
    int now = leader;
    /* only this test's sessions: tests run in parallel on one cluster, and
     * every service holds advisory locks (migrations, relays, tickers) */
    char kill[320];
    snprintf(kill, sizeof kill,
             "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity a "
             "USING (pid) WHERE l.locktype = 'advisory' AND l.granted AND "
             "a.application_name = 'commerce-%s' AND l.pid <> pg_backend_pid()",
             schema);
    for (int i = 0; i < 20 && now == leader; i++) {
        PQclear(PQexec(pg, kill));
        usleep(400 * 1000);
        ck_assert_int_eq(tickers_since(pg, schema, 150, &now), 1);
    }
    ck_assert_int_ne(now, leader);
    ck_assert_int_eq(hs_http_get(dead->admin_port, "/metrics", body, sizeof body), 200);
    ck_assert_msg(strstr(body, "\ntestsvc_leads") == NULL, "the former leader kept its gauge");
    ck_assert_int_eq(hs_http_get(alive->admin_port, "/metrics", body, sizeof body), 200);
    ck_assert_ptr_nonnull(strstr(body, "\ntestsvc_leads 1"));
    /* the new leader dies without a word: its session ends, the lock with
     * it, and the first one leads again */
    ck_assert_int_eq(hs_stop(alive, SIGKILL, 5000), 128 + SIGKILL);
    usleep(1500 * 1000);
    int next = 0;
    ck_assert_int_eq(tickers_since(pg, schema, 700, &next), 1);
    ck_assert_int_eq(next, dead->pid);
    ck_assert_int_eq(hs_stop(dead, SIGTERM, 10000), 0);
    char sql[128];
    snprintf(sql, sizeof sql, "DROP SCHEMA %s CASCADE", schema);
    PQclear(PQexec(pg, "SET client_min_messages = warning"));
    PQclear(PQexec(pg, sql));
    PQfinish(pg);
}
END_TEST

static int echo_with(const char *target, const cm_rpc_client_opts *extra, const cm_rpc_md *md,
                     size_t nmd, cm_rpc_status *st, char *tenant_out, size_t tlen)
{
    cm_rpc_client_opts o = extra ? *extra : (cm_rpc_client_opts){0};
    o.target = target;
    o.max_attempts = 1;
    cm_rpc_client *c;
    char err[256];
    ck_assert_int_eq(cm_rpc_client_new(&c, &o, err, sizeof err), 0);
    Commerce__Test__V1__EchoRequest req = COMMERCE__TEST__V1__ECHO_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int rc = cm_rpc_call(c, SVC "Echo", &req.base, &commerce__test__v1__echo_response__descriptor,
                         NULL, &resp, md, nmd, 3000, 0, st);
    if (rc == 0 && tenant_out)
        snprintf(tenant_out, tlen, "%s", ((Commerce__Test__V1__EchoResponse *)resp)->tenant);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    cm_rpc_client_free(c);
    return rc;
}

#define TEST_SECRET "0123456789abcdef0123456789abcdef-test-only"

static char *make_token(const char *tid, long exp_offset, const char *secret)
{
    return hs_bearer(secret, tid, "svc-test", "service", exp_offset);
}

START_TEST(auth_required_verifies_bearer_tokens)
{
    hs_proc p;
    const char *env[] = {"AUTH_MODE=required", "JWT_HS256_SECRET=" TEST_SECRET, NULL};
    hs_start(&p, TESTSVC_BIN, env); /* health needs no token */
    cm_rpc_status st;
    char tenant[80] = "";

    /* no token: x-tenant-id alone is not enough */
    ck_assert_int_eq(echo_with(p.target, NULL, tenant_md, 1, &st, NULL, 0), CM_EAUTH);
    ck_assert_int_eq(st.code, GRPC_STATUS_UNAUTHENTICATED);
    ck_assert_str_eq(st.reason, "CREDENTIALS_MISSING"); /* error_reason.proto's names */

    char *good = make_token("tenant-jwt", 60, TEST_SECRET);
    char *expired = make_token("tenant-jwt", -3600, TEST_SECRET);
    char *forged = make_token("tenant-jwt", 60, "another-secret-another-secret-another!!");
    cm_rpc_md md[2] = {{"authorization", good}, {"x-tenant-id", "tenant-jwt"}};
    ck_assert_int_eq(echo_with(p.target, NULL, md, 1, &st, tenant, sizeof tenant), 0);
    ck_assert_str_eq(tenant, "tenant-jwt");
    ck_assert_int_eq(echo_with(p.target, NULL, md, 2, &st, tenant, sizeof tenant), 0);

    md[1].value = "tenant-other"; /* header and token disagree */
    ck_assert_int_eq(echo_with(p.target, NULL, md, 2, &st, NULL, 0), CM_EPERM);
    ck_assert_int_eq(st.code, GRPC_STATUS_PERMISSION_DENIED);

    md[0].value = expired;
    ck_assert_int_eq(echo_with(p.target, NULL, md, 1, &st, NULL, 0), CM_EAUTH);
    ck_assert_str_eq(st.reason, "CREDENTIALS_INVALID");
    md[0].value = forged;
    ck_assert_int_eq(echo_with(p.target, NULL, md, 1, &st, NULL, 0), CM_EAUTH);
    md[0].value = "Bearer not.a.jwt";
    ck_assert_int_eq(echo_with(p.target, NULL, md, 1, &st, NULL, 0), CM_EAUTH);
    free(good);
    free(expired);
    free(forged);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 10000), 0);
}
END_TEST

/* one call as the bearer of token: Echo with text, or Put when text is
 * NULL; the echoed text goes to out */
static int call_as(const char *target, const char *token, const char *text, cm_rpc_status *st,
                   char *out, size_t outlen)
{
    cm_rpc_client_opts o = {.target = target, .max_attempts = 1};
    cm_rpc_client *c;
    char err[256];
    ck_assert_int_eq(cm_rpc_client_new(&c, &o, err, sizeof err), 0);
    cm_rpc_md md[1] = {{"authorization", token}};
    ProtobufCMessage *resp = NULL;
    int rc;
    if (text) {
        Commerce__Test__V1__EchoRequest req = COMMERCE__TEST__V1__ECHO_REQUEST__INIT;
        req.text = (char *)text;
        rc = cm_rpc_call(c, SVC "Echo", &req.base, &commerce__test__v1__echo_response__descriptor,
                         NULL, &resp, md, 1, 3000, 0, st);
        if (rc == 0 && out)
            snprintf(out, outlen, "%s", ((Commerce__Test__V1__EchoResponse *)resp)->text);
    } else {
        Commerce__Test__V1__PutRequest req = COMMERCE__TEST__V1__PUT_REQUEST__INIT;
        req.key = "role-test";
        req.value = "v";
        rc = cm_rpc_call(c, SVC "Put", &req.base, &commerce__test__v1__put_response__descriptor,
                         NULL, &resp, md, 1, 3000, 0, st);
    }
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    cm_rpc_client_free(c);
    return rc;
}

/* the runtime checks each method's roles from the service's table before
 * the handler runs, and limits callers holding only a scoped role */
START_TEST(roles_come_from_the_method_table)
{
    hs_proc p;
    const char *env[] = {"AUTH_MODE=required", "JWT_HS256_SECRET=" TEST_SECRET, NULL};
    hs_start(&p, TESTSVC_BIN, env);
    cm_rpc_status st;
    char text[80];
    char *reader = hs_bearer(TEST_SECRET, "tenant-r", "r", "reader", 60);
    char *none = hs_bearer(TEST_SECRET, "tenant-r", "n", NULL, 60);
    char *other = hs_bearer(TEST_SECRET, "tenant-r", "o", "support auditor", 60);
    char *service = hs_bearer(TEST_SECRET, "tenant-r", "s", "service", 60);
    char *merchant = hs_bearer_scoped(TEST_SECRET, "tenant-r", "m", "merchant", "m-1", NULL, 60);
    char *channel = hs_bearer_scoped(TEST_SECRET, "tenant-r", "c", "channel", NULL, "ch-9", 60);
    char *both = hs_bearer_scoped(TEST_SECRET, "tenant-r", "a", "merchant admin", "m-1", NULL, 60);
    char *unscoped = hs_bearer(TEST_SECRET, "tenant-r", "u", "merchant", 60);

    /* a read role reads and cannot write */
    ck_assert_int_eq(call_as(p.target, reader, "hi", &st, text, sizeof text), 0);
    ck_assert_int_eq(call_as(p.target, reader, NULL, &st, NULL, 0), CM_EPERM);
    ck_assert_int_eq(st.code, GRPC_STATUS_PERMISSION_DENIED);
    ck_assert_str_eq(st.reason, "ROLE_REQUIRED");
    ck_assert_ptr_nonnull(strstr(st.message, "admin service"));
    /* no role, or only roles the method does not list: nothing */
    ck_assert_int_eq(call_as(p.target, none, "hi", &st, NULL, 0), CM_EPERM);
    ck_assert_str_eq(st.reason, "ROLE_REQUIRED");
    ck_assert_int_eq(call_as(p.target, other, "hi", &st, NULL, 0), CM_EPERM);
    ck_assert_int_eq(call_as(p.target, service, NULL, &st, NULL, 0), 0);
    ck_assert_int_eq(call_as(p.target, service, "scope?", &st, text, sizeof text), 0);
    ck_assert_str_eq(text, "(none)");
    /* scoped roles: where the method lists them, limited to their claim */
    ck_assert_int_eq(call_as(p.target, merchant, "scope?", &st, text, sizeof text), 0);
    ck_assert_str_eq(text, "m-1");
    ck_assert_int_eq(call_as(p.target, channel, "scope?", &st, text, sizeof text), 0);
    ck_assert_str_eq(text, "ch-9");
    ck_assert_int_eq(call_as(p.target, merchant, NULL, &st, NULL, 0), CM_EPERM);
    /* an unscoped role the method lists lifts the limit */
    ck_assert_int_eq(call_as(p.target, both, "scope?", &st, text, sizeof text), 0);
    ck_assert_str_eq(text, "(none)");
    /* a scoped role without its claim is not a valid token */
    ck_assert_int_eq(call_as(p.target, unscoped, "hi", &st, NULL, 0), CM_EAUTH);
    ck_assert_int_eq(st.code, GRPC_STATUS_UNAUTHENTICATED);
    free(reader);
    free(none);
    free(other);
    free(service);
    free(merchant);
    free(channel);
    free(both);
    free(unscoped);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 10000), 0);
}
END_TEST

/* the whole log of p (malloc'd) */
static char *log_of(const hs_proc *p)
{
    FILE *f = fopen(p->log_path, "r");
    ck_assert_ptr_nonnull(f);
    static const size_t cap = 1 << 20;
    char *buf = calloc(1, cap + 1);
    ck_assert_ptr_nonnull(buf);
    size_t n = fread(buf, 1, cap, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* AUTH_MODE=off (the default) listening on all interfaces: exit 2 with
 * one line naming AUTH_MODE; loopback or ALLOW_INSECURE=1 start, and say
 * that authentication is off */
START_TEST(auth_off_is_refused_off_loopback)
{
    int port = hs_free_port();
    char listen[64];
    snprintf(listen, sizeof listen, "GRPC_LISTEN=0.0.0.0:%d", port);
    hs_proc p;
    const char *env[] = {listen, NULL};
    ck_assert_int_eq(hs_spawn(&p, TESTSVC_BIN, env), 0);
    ck_assert_int_eq(hs_wait_exit(&p, 30000), 2);
    char *log = log_of(&p);
    const char *want = "commerce-testsvc: AUTH_MODE: off is refused on GRPC_LISTEN=\"0.0.0.0:";
    ck_assert_msg(strncmp(log, want, strlen(want)) == 0, "%s", log);
    ck_assert_int_eq(count_of(log, "\n"), 1);
    free(log);

    /* the escape for an address that must not be loopback */
    const char *insecure[] = {listen, "ALLOW_INSECURE=1", NULL};
    ck_assert_int_eq(hs_spawn(&p, TESTSVC_BIN, insecure), 0);
    p.grpc_port = port;
    snprintf(p.target, sizeof p.target, "127.0.0.1:%d", port);
    ck_assert_int_eq(hs_wait_serving(&p, 20000), 0);
    log = log_of(&p);
    ck_assert_ptr_nonnull(strstr(log, "authentication is off"));
    ck_assert_ptr_nonnull(strstr(log, "\"allow_insecure\":\"1\""));
    free(log);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 10000), 0);

    /* loopback (the harness's 127.0.0.1): starts, with the warning */
    hs_start(&p, TESTSVC_BIN, NULL);
    log = log_of(&p);
    ck_assert_ptr_nonnull(strstr(log, "authentication is off"));
    free(log);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 10000), 0);
}
END_TEST

static void write_file(const char *path, const char *text)
{
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    FILE *f = fopen(tmp, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(rename(tmp, path), 0);
}

/* an HS256 bearer token for tenant-jwt with kid in its header */
static char *kid_token(const char *secret, const char *kid)
{
    jwt_t *j = NULL;
    ck_assert_int_eq(jwt_new(&j), 0);
    jwt_add_grant(j, "tid", "tenant-jwt");
    jwt_add_grant(j, "roles", "service");
    jwt_add_grant_int(j, "exp", (long)time(NULL) + 300);
    jwt_add_header(j, "kid", kid);
    jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret));
    char *t = jwt_encode_str(j);
    jwt_free(j);
    ck_assert_ptr_nonnull(t);
    char *b = malloc(strlen(t) + 8);
    snprintf(b, strlen(t) + 8, "Bearer %s", t);
    free(t);
    return b;
}

static int echo_token(const hs_proc *p, const char *bearer, cm_rpc_status *st)
{
    cm_rpc_md md[] = {{"authorization", bearer}};
    return echo_with(p->target, NULL, md, 1, st, NULL, 0);
}

/* polls (10 s at most) until series reaches want */
static double metric_until(const hs_proc *p, const char *series, double want)
{
    double v = -1;
    for (int i = 0; i < 100 && (v = hs_metric(p, series)) != want; i++)
        usleep(100 * 1000);
    return v;
}

/* base64url("0123456789abcdef0123456789abcdef-k1") and "...-k2" */
#define K1 "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYtazE"
#define K2 "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYtazI"
#define JWK(kid, k) "{\"kty\":\"oct\",\"kid\":\"" kid "\",\"k\":\"" k "\"}"

/* the JWKS file is re-read when it changes (a key rollover: both keys,
 * then the new one only) and on SIGHUP, without a restart; a broken file
 * keeps the keys in use and is logged once, without key material */
START_TEST(jwks_is_reloaded_while_serving)
{
    char path[96], var[128];
    snprintf(path, sizeof path, "/tmp/rpc-it-jwks.%d.json", (int)getpid());
    snprintf(var, sizeof var, "JWT_JWKS_FILE=%s", path);
    write_file(path, "{\"keys\":[" JWK("k1", K1) "]}");
    hs_proc p;
    const char *env[] = {"AUTH_MODE=required", var, NULL};
    hs_start(&p, TESTSVC_BIN, env);
    char *t1 = kid_token("0123456789abcdef0123456789abcdef-k1", "k1");
    char *t2 = kid_token("0123456789abcdef0123456789abcdef-k2", "k2");
    cm_rpc_status st;
    ck_assert_int_eq(echo_token(&p, t1, &st), 0);
    ck_assert_int_eq(echo_token(&p, t2, &st), CM_EAUTH);
    ck_assert_str_eq(st.message, "token kid is not in the jwks");
    ck_assert_int_eq((int)hs_metric(&p, "auth_jwks_keys"), 1);

    write_file(path, "{\"keys\":[" JWK("k1", K1) "," JWK("k2", K2) "]}");
    ck_assert_int_eq((int)metric_until(&p, "auth_credential_reloads_total{file=\"jwks\"}", 1), 1);
    ck_assert_int_eq((int)hs_metric(&p, "auth_jwks_keys"), 2);
    ck_assert_int_eq(echo_token(&p, t1, &st), 0);
    ck_assert_int_eq(echo_token(&p, t2, &st), 0);

    write_file(path, "{\"keys\":[" JWK("k3", "c2hvcnQ") "]}");
    ck_assert_int_eq(
        (int)metric_until(&p, "auth_credential_reload_failures_total{file=\"jwks\"}", 1), 1);
    ck_assert_int_eq(echo_token(&p, t1, &st), 0);
    ck_assert_int_eq(echo_token(&p, t2, &st), 0);

    write_file(path, "{\"keys\":[" JWK("k2", K2) "]}");
    ck_assert_int_eq((int)metric_until(&p, "auth_credential_reloads_total{file=\"jwks\"}", 2), 2);
    ck_assert_int_eq(echo_token(&p, t1, &st), CM_EAUTH);
    ck_assert_int_eq(echo_token(&p, t2, &st), 0);
    /* SIGHUP: read again though nothing changed */
    ck_assert_int_eq(kill(p.pid, SIGHUP), 0);
    ck_assert_int_eq((int)metric_until(&p, "auth_credential_reloads_total{file=\"jwks\"}", 3), 3);
    ck_assert_int_eq((int)hs_metric(&p, "auth_credential_reload_failures_total{file=\"jwks\"}"), 1);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 10000), 0);

    char *log = log_of(&p);
    ck_assert_int_eq(count_of(log, "could not reload the jwks"), 1);
    ck_assert_ptr_nonnull(strstr(log, "key 0: k must be base64url of 32..1024 bytes"));
    ck_assert_ptr_null(strstr(log, "c2hvcnQ"));
    ck_assert_ptr_null(strstr(log, K1));
    free(log);
    free(t1);
    free(t2);
    unlink(path);
}
END_TEST

START_TEST(tls_and_mtls_when_certificates_are_configured)
{
    char dir[128];
    hs_make_certs(dir, sizeof dir, "rpc");
    char cert[192], key[192], ca[192], ccert[192], ckey[192];
    snprintf(cert, sizeof cert, "TLS_CERT_FILE=%s/server.pem", dir);
    snprintf(key, sizeof key, "TLS_KEY_FILE=%s/server.key", dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    snprintf(ccert, sizeof ccert, "%s/client.pem", dir);
    snprintf(ckey, sizeof ckey, "%s/client.key", dir);
    cm_rpc_status st;

    /* tls: a client trusting the ca talks, a plaintext client cannot */
    hs_proc p;
    const char *env[] = {cert, key, NULL};
    ck_assert_int_eq(hs_spawn(&p, TESTSVC_BIN, env), 0);
    /* health over plaintext cannot tell us it is up: the admin port can */
    ck_assert_int_eq(hs_wait_ready(&p, 20000), 0);
    cm_rpc_client_opts tls = {.tls_ca_file = ca};
    ck_assert_int_eq(echo_with(p.target, &tls, tenant_md, 1, &st, NULL, 0), 0);
    ck_assert_int_ne(echo_with(p.target, NULL, tenant_md, 1, &st, NULL, 0), 0);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 10000), 0);

    /* mtls: the client must present a certificate signed by the ca */
    char client_ca[256];
    snprintf(client_ca, sizeof client_ca, "TLS_CLIENT_CA_FILE=%s", ca);
    const char *env2[] = {cert, key, client_ca, NULL};
    ck_assert_int_eq(hs_spawn(&p, TESTSVC_BIN, env2), 0);
    ck_assert_int_eq(hs_wait_ready(&p, 20000), 0);
    ck_assert_int_ne(echo_with(p.target, &tls, tenant_md, 1, &st, NULL, 0), 0);
    cm_rpc_client_opts mtls = {.tls_ca_file = ca, .tls_cert_file = ccert, .tls_key_file = ckey};
    ck_assert_int_eq(echo_with(p.target, &mtls, tenant_md, 1, &st, NULL, 0), 0);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 10000), 0);
    hs_rm_rf(dir);
}
END_TEST

START_TEST(database_outage_turns_health_not_serving_and_back)
{
    hs_proxy *px = hs_proxy_start(hs_pg_port());
    ck_assert_ptr_nonnull(px);
    char dsn[160];
    snprintf(dsn, sizeof dsn, "PG_DSN=host=127.0.0.1 port=%d dbname=commerce user=postgres",
             hs_proxy_port(px));
    hs_proc p;
    const char *env[] = {dsn, NULL};
    hs_start(&p, TESTSVC_BIN, env);

    hs_proxy_cut(px);
    ck_assert_msg(hs_wait_health(&p, 2, 5000) == 0, "health stayed SERVING with the database gone");
    char body[256];
    ck_assert_int_eq(hs_http_get(p.admin_port, "/readyz", body, sizeof body), 503);
    ck_assert_int_eq(hs_http_get(p.admin_port, "/healthz", body, sizeof body), 200);
    Commerce__Test__V1__GetRequest get = COMMERCE__TEST__V1__GET_REQUEST__INIT;
    get.key = "any";
    cm_rpc_client *c = hs_client(&p, NULL);
    ProtobufCMessage *resp = NULL;
    cm_rpc_status st;
    ck_assert_int_eq(cm_rpc_call(c, SVC "Get", &get.base,
                                 &commerce__test__v1__get_response__descriptor, NULL, &resp,
                                 tenant_md, 1, 10000, 0, &st),
                     CM_EUNAVAIL);
    ck_assert_int_eq(st.code, GRPC_STATUS_UNAVAILABLE);

    hs_proxy_restore(px);
    ck_assert_msg(hs_wait_health(&p, 1, 10000) == 0, "health did not come back");
    ck_assert_int_eq(hs_http_get(p.admin_port, "/readyz", body, sizeof body), 200);
    /* a worker whose connection died answers UNAVAILABLE once and
     * reconnects: a caller retrying UNAVAILABLE (an idempotent read) gets
     * through */
    int rc = cm_rpc_call(c, SVC "Get", &get.base, &commerce__test__v1__get_response__descriptor,
                         NULL, &resp, tenant_md, 1, 10000, CM_RPC_CALL_IDEMPOTENT, &st);
    ck_assert_int_eq(rc, CM_ENOTFOUND);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 10000), 0);
    hs_proxy_free(px);
}
END_TEST

/* ---- a dependency's failure passed on (cm_rpc_fail_forward) ---- */

/* Fail on target, directly or through ForwardFail on a front */
static int fail_via(cm_rpc_client *c, int through, Commerce__Test__V1__FailRequest *fr,
                    cm_rpc_status *st)
{
    Commerce__Test__V1__ForwardFailRequest ff = COMMERCE__TEST__V1__FORWARD_FAIL_REQUEST__INIT;
    ff.fail = fr;
    ProtobufCMessage *resp = NULL;
    int rc = through ? cm_rpc_call(c, SVC "ForwardFail", &ff.base,
                                   &commerce__test__v1__forward_fail_response__descriptor, NULL,
                                   &resp, tenant_md, 1, 5000, 0, st)
                     : cm_rpc_call(c, SVC "Fail", &fr->base,
                                   &commerce__test__v1__fail_response__descriptor, NULL, &resp,
                                   tenant_md, 1, 5000, 0, st);
    ck_assert_ptr_null(resp);
    return rc;
}

static int has_detail(const cm_rpc_status *st, const char *type_url)
{
    for (int i = 0; i < st->n_details; i++)
        if (strcmp(st->detail_types[i], type_url) == 0)
            return 1;
    return 0;
}

/* the typed FailRequest detail, unpacked from the raw status (free it) */
static Commerce__Test__V1__FailRequest *echoed_detail(const cm_rpc_status *st)
{
    Google__Rpc__Status *s = google__rpc__status__unpack(NULL, st->details_len, st->details_bin);
    ck_assert_ptr_nonnull(s);
    Commerce__Test__V1__FailRequest *fr = NULL;
    for (size_t i = 0; i < s->n_details && !fr; i++)
        if (strcmp(s->details[i]->type_url, "type.googleapis.com/commerce.test.v1.FailRequest") ==
            0)
            fr = commerce__test__v1__fail_request__unpack(NULL, s->details[i]->value.len,
                                                          s->details[i]->value.data);
    google__rpc__status__free_unpacked(s, NULL);
    return fr;
}

/* the forwarding test's processes and clients, for the teardown when an
 * assertion ends the test early (CK_NOFORK: nothing else would stop them) */
static hs_proc down, front;
static cm_rpc_client *dc, *fc;

static void forward_teardown(void)
{
    cm_rpc_client_free(dc);
    cm_rpc_client_free(fc);
    dc = fc = NULL;
    hs_teardown(); /* down, front, or what an earlier test left running */
}

START_TEST(a_dependency_failure_is_passed_on_intact)
{
    /* "stock" refuses; "testsvc" in front calls it and passes it on */
    const char *denv[] = {"TESTSVC_NAME=stock", NULL};
    hs_start(&down, TESTSVC_BIN, denv);
    char target[96];
    snprintf(target, sizeof target, "INVENTORY_TARGET=%s", down.target);
    const char *fenv[] = {target, NULL};
    hs_start(&front, TESTSVC_BIN, fenv);
    dc = hs_client(&down, NULL);
    fc = hs_client(&front, NULL);
    static cm_rpc_status direct, st; /* 7.5 KiB each: off the test's stack */

    /* a refusal with reason, metadata and a typed detail: the same bytes */
    Commerce__Test__V1__FailRequest__MetadataEntry skus =
        COMMERCE__TEST__V1__FAIL_REQUEST__METADATA_ENTRY__INIT;
    skus.key = "skus";
    skus.value = "A,B";
    Commerce__Test__V1__FailRequest__MetadataEntry *meta[] = {&skus};
    Commerce__Test__V1__FailRequest fr = COMMERCE__TEST__V1__FAIL_REQUEST__INIT;
    fr.code = GRPC_STATUS_FAILED_PRECONDITION;
    fr.n_metadata = 1;
    fr.metadata = meta;
    ck_assert_int_eq(fail_via(dc, 0, &fr, &direct), CM_ESTATE);
    ck_assert_int_eq(fail_via(fc, 1, &fr, &st), CM_ESTATE);
    ck_assert_int_eq(st.code, GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.message, "failed on request");
    ck_assert_str_eq(st.reason, "REQUESTED_FAILURE");
    ck_assert_str_eq(st.domain, "stock.commerce"); /* who refused */
    ck_assert_str_eq(cm_rpc_status_meta(&st, "skus"), "A,B");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "requested_code"), "9");
    ck_assert_int_eq(st.n_meta, 2);
    ck_assert_int_eq(st.details_truncated, 0);
    ck_assert_uint_gt(st.details_len, 0);
    ck_assert_uint_eq(st.details_len, direct.details_len);
    ck_assert(memcmp(st.details_bin, direct.details_bin, st.details_len) == 0);
    Commerce__Test__V1__FailRequest *echoed = echoed_detail(&st);
    ck_assert_ptr_nonnull(echoed);
    ck_assert_int_eq(echoed->code, GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_uint_eq(echoed->n_metadata, 1);
    ck_assert_str_eq(echoed->metadata[0]->value, "A,B");
    commerce__test__v1__fail_request__free_unpacked(echoed, NULL);

    /* field violations: the BadRequest passes unchanged */
    Commerce__Test__V1__FailRequest bad = COMMERCE__TEST__V1__FAIL_REQUEST__INIT;
    bad.field = "lines[1].sku";
    ck_assert_int_eq(fail_via(fc, 1, &bad, &st), CM_EINVAL);
    ck_assert_int_eq(st.code, GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "lines[1].sku");
    ck_assert_str_eq(st.reason, "INVALID_ARGUMENT");
    ck_assert_str_eq(st.domain, "stock.commerce");
    ck_assert(has_detail(&st, "type.googleapis.com/google.rpc.BadRequest"));

    /* the caller's own business or transient: same code, same details */
    static const int kept[] = {
        GRPC_STATUS_INVALID_ARGUMENT, GRPC_STATUS_DEADLINE_EXCEEDED,  GRPC_STATUS_NOT_FOUND,
        GRPC_STATUS_ALREADY_EXISTS,   GRPC_STATUS_RESOURCE_EXHAUSTED, GRPC_STATUS_ABORTED,
        GRPC_STATUS_OUT_OF_RANGE,     GRPC_STATUS_UNAVAILABLE,
    };
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
        fr.code = kept[i];
        fail_via(fc, 1, &fr, &st);
        ck_assert_int_eq(st.code, kept[i]);
        ck_assert_str_eq(st.reason, "REQUESTED_FAILURE");
        ck_assert_str_eq(st.domain, "stock.commerce");
        ck_assert(has_detail(&st, "type.googleapis.com/commerce.test.v1.FailRequest"));
    }

    /* our misconfiguration or the dependency's bug: INTERNAL, nothing of
     * the downstream's shown; CANCELLED: UNAVAILABLE */
    static const int mapped[][2] = {
        {GRPC_STATUS_UNAUTHENTICATED, GRPC_STATUS_INTERNAL},
        {GRPC_STATUS_PERMISSION_DENIED, GRPC_STATUS_INTERNAL},
        {GRPC_STATUS_UNIMPLEMENTED, GRPC_STATUS_INTERNAL},
        {GRPC_STATUS_INTERNAL, GRPC_STATUS_INTERNAL},
        {GRPC_STATUS_UNKNOWN, GRPC_STATUS_INTERNAL},
        {GRPC_STATUS_DATA_LOSS, GRPC_STATUS_INTERNAL},
        {GRPC_STATUS_CANCELLED, GRPC_STATUS_UNAVAILABLE},
    };
    for (size_t i = 0; i < sizeof mapped / sizeof mapped[0]; i++) {
        fr.code = mapped[i][0];
        ck_assert_int_eq(fail_via(fc, 1, &fr, &st), cm_rpc_code_to_err(mapped[i][1]));
        ck_assert_msg(st.code == mapped[i][1], "downstream %d: got %d", mapped[i][0], st.code);
        ck_assert_str_eq(st.reason, "DEPENDENCY_FAILED");
        ck_assert_str_eq(st.domain, "testsvc.commerce");
        ck_assert_ptr_null(strstr(st.message, "failed on request"));
        ck_assert_ptr_null(cm_rpc_status_meta(&st, "skus"));
        ck_assert(!has_detail(&st, "type.googleapis.com/commerce.test.v1.FailRequest"));
    }

    /* details too large to keep: what was parsed still passes */
    static char padding[4200];
    memset(padding, 'p', sizeof padding - 1);
    fr.code = GRPC_STATUS_FAILED_PRECONDITION;
    fr.padding = padding;
    ck_assert_int_eq(fail_via(dc, 0, &fr, &direct), CM_ESTATE);
    ck_assert_int_eq(direct.details_truncated, 1);
    ck_assert_uint_eq(direct.details_len, 0);
    ck_assert_str_eq(direct.reason, "REQUESTED_FAILURE");
    ck_assert_str_eq(cm_rpc_status_meta(&direct, "skus"), "A,B");
    ck_assert_int_eq(fail_via(fc, 1, &fr, &st), CM_ESTATE);
    ck_assert_int_eq(st.details_truncated, 0);
    ck_assert_str_eq(st.message, "failed on request");
    ck_assert_str_eq(st.reason, "REQUESTED_FAILURE");
    ck_assert_str_eq(st.domain, "stock.commerce");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "skus"), "A,B");
    ck_assert(!has_detail(&st, "type.googleapis.com/commerce.test.v1.FailRequest"));
    fr.padding = "";

    /* the dependency gone: gRPC core's status, whose text names addresses,
     * passes as a bare UNAVAILABLE */
    ck_assert_int_eq(hs_stop(&down, SIGTERM, 10000), 0);
    ck_assert_int_eq(fail_via(fc, 1, &fr, &st), CM_EUNAVAIL);
    ck_assert_int_eq(st.code, GRPC_STATUS_UNAVAILABLE);
    ck_assert_str_eq(st.reason, "DEPENDENCY_FAILED");
    ck_assert_str_eq(st.domain, "testsvc.commerce");
    ck_assert_msg(strstr(st.message, "127.0.0.1") == NULL, "address leaked: %s", st.message);

    ck_assert_int_eq(hs_stop(&front, SIGTERM, 10000), 0);
}
END_TEST

/* ---- rate limits ---- */

static void write_limits(const char *path, const char *json)
{
    /* a new file renamed over the old one: a reload sees a new inode */
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    ck_assert_ptr_nonnull(f);
    fputs(json, f);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(rename(tmp, path), 0);
}

/* an Echo as tenant: its status code */
static int echo_as(cm_rpc_client *c, const char *tenant, cm_rpc_status *st)
{
    const cm_rpc_md md[] = {{"x-tenant-id", tenant}};
    Commerce__Test__V1__EchoRequest req = COMMERCE__TEST__V1__ECHO_REQUEST__INIT;
    req.text = "limited?";
    ProtobufCMessage *resp = NULL;
    cm_rpc_status local;
    cm_rpc_call(c, SVC "Echo", &req.base, &commerce__test__v1__echo_response__descriptor, NULL,
                &resp, md, 1, 5000, 0, st ? st : &local);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    return st ? st->code : local.code;
}

/* how many of n Echo calls as tenant pass */
static int echoes_passing(cm_rpc_client *c, const char *tenant, int n)
{
    int ok = 0;
    for (int i = 0; i < n; i++)
        ok += echo_as(c, tenant, NULL) == GRPC_STATUS_OK;
    return ok;
}

START_TEST(rate_limits_refuse_one_tenant_with_retry_info_and_reload_without_restart)
{
    char path[128], env_file[160];
    snprintf(path, sizeof path, "/tmp/commerce-rate-limits-%d.json", (int)getpid());
    write_limits(path, "{\"tenants\": {\"tiny\": {\"read\": {\"rate\": 2, \"burst\": 2}}}}");
    snprintf(env_file, sizeof env_file, "RATE_LIMITS_FILE=%s", path);
    const char *env[] = {env_file, NULL};
    hs_proc p;
    hs_start(&p, TESTSVC_BIN, env);
    cm_rpc_client *c = hs_client(&p, NULL);

    /* the burst, then a refusal that says when to come back */
    ck_assert_int_eq(echoes_passing(c, "tiny", 2), 2);
    cm_rpc_status st;
    ck_assert_int_eq(echo_as(c, "tiny", &st), GRPC_STATUS_RESOURCE_EXHAUSTED);
    ck_assert_str_eq(st.reason, "RATE_LIMITED");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "class"), "read");
    long long after_ms = strtoll(cm_rpc_status_meta(&st, "retry_after_ms"), NULL, 10);
    ck_assert_int_gt(after_ms, 0);
    ck_assert_int_le(after_ms, 500);
    Google__Rpc__Status *s = google__rpc__status__unpack(NULL, st.details_len, st.details_bin);
    ck_assert_ptr_nonnull(s);
    int retry_seen = 0, quota_seen = 0;
    for (size_t i = 0; i < s->n_details; i++) {
        Google__Protobuf__Any *any = s->details[i];
        if (strcmp(any->type_url, "type.googleapis.com/google.rpc.RetryInfo") == 0) {
            Google__Rpc__RetryInfo *ri =
                google__rpc__retry_info__unpack(NULL, any->value.len, any->value.data);
            ck_assert_ptr_nonnull(ri);
            ck_assert_ptr_nonnull(ri->retry_delay);
            long long ns = ri->retry_delay->seconds * 1000000000LL + ri->retry_delay->nanos;
            ck_assert_int_gt(ns, 0);
            ck_assert_int_le(ns, 500000000LL);
            google__rpc__retry_info__free_unpacked(ri, NULL);
            retry_seen = 1;
        }
        if (strcmp(any->type_url, "type.googleapis.com/google.rpc.QuotaFailure") == 0) {
            Google__Rpc__QuotaFailure *qf =
                google__rpc__quota_failure__unpack(NULL, any->value.len, any->value.data);
            ck_assert_ptr_nonnull(qf);
            ck_assert_uint_eq(qf->n_violations, 1);
            ck_assert_str_eq(qf->violations[0]->subject, "tenant:tiny");
            ck_assert_ptr_nonnull(
                strstr(qf->violations[0]->description, "read calls: 2 per second per replica"));
            google__rpc__quota_failure__free_unpacked(qf, NULL);
            quota_seen = 1;
        }
    }
    google__rpc__status__free_unpacked(s, NULL);
    ck_assert(retry_seen && quota_seen);

    /* another tenant, and the same tenant's writes, are not held up */
    ck_assert_int_eq(echoes_passing(c, "big", 30), 30);
    Commerce__Test__V1__PutRequest put = COMMERCE__TEST__V1__PUT_REQUEST__INIT;
    char key[40];
    random_key(key);
    put.key = key;
    put.value = "v";
    const cm_rpc_md tiny_md[] = {{"x-tenant-id", "tiny"}};
    ProtobufCMessage *resp = NULL;
    ck_assert_int_eq(cm_rpc_call(c, SVC "Put", &put.base,
                                 &commerce__test__v1__put_response__descriptor, NULL, &resp,
                                 tiny_md, 1, 5000, 0, &st),
                     0);
    protobuf_c_message_free_unpacked(resp, NULL);
    /* health is never limited */
    ck_assert_int_eq(hs_health(&p), 1);

    /* after the delay it said, the tenant passes again */
    struct timespec wait = {.tv_sec = 0, .tv_nsec = (long)(after_ms + 20) * 1000000L};
    nanosleep(&wait, NULL);
    ck_assert_int_eq(echo_as(c, "tiny", &st), GRPC_STATUS_OK);
    ck_assert_int_ge(hs_metric(&p, "rpc_server_rate_limited_total{tenant=\"tiny\",class=\"read\"}"),
                     1);
    ck_assert_int_eq(hs_metric(&p, "rpc_server_rate_limited_total{tenant=\"big\",class=\"read\"}"),
                     -1);

    /* the file changes: tiny is let loose, big is held, no restart */
    write_limits(path, "{\"tenants\": {\"tiny\": {\"read\": {\"rate\": 1000, \"burst\": 1000}},"
                       " \"big\": {\"read\": {\"rate\": 1, \"burst\": 1}}}}");
    long long until = hs_now_ms() + 5000;
    int reloaded = 0;
    while (!reloaded && hs_now_ms() < until) {
        reloaded = echo_as(c, "big", NULL) == GRPC_STATUS_RESOURCE_EXHAUSTED;
        if (!reloaded) {
            struct timespec ts = {0, 50 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    ck_assert_msg(reloaded, "the new limits were not read within 5 s");
    ck_assert_int_eq(echoes_passing(c, "tiny", 30), 30);

    /* a bad file keeps the limits in force, and the process serving */
    write_limits(path, "{\"tenants\": {\"big\": {\"read\": {\"rate\": \"lots\"}}}}");
    struct timespec ts = {1, 300 * 1000000L};
    nanosleep(&ts, NULL);
    ck_assert_int_le(echoes_passing(c, "big", 5), 1); /* the token of the second slept */
    ck_assert_int_eq(echoes_passing(c, "tiny", 5), 5);

    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 10000), 0);
    FILE *log = fopen(p.log_path, "r");
    ck_assert_ptr_nonnull(log);
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, log);
    text[n] = '\0';
    fclose(log);
    ck_assert_ptr_nonnull(strstr(text, "could not reload the rate limits"));
    unlink(path);
}
END_TEST

START_TEST(a_bad_rate_limits_file_stops_the_start)
{
    char path[128], env_file[160];
    snprintf(path, sizeof path, "/tmp/commerce-rate-limits-bad-%d.json", (int)getpid());
    write_limits(path, "{\"default\": {\"write\": {\"rate\": -1}}}");
    snprintf(env_file, sizeof env_file, "RATE_LIMITS_FILE=%s", path);
    const char *env[] = {env_file, NULL};
    hs_proc p;
    ck_assert_int_eq(hs_spawn(&p, TESTSVC_BIN, env), 0);
    ck_assert_int_eq(hs_wait_exit(&p, 15000), 2);
    unlink(path);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("rpc_integration");
    TCase *shared = tcase_create("shared_process");
    tcase_add_unchecked_fixture(shared, suite_setup, suite_teardown);
    tcase_set_timeout(shared, 120);
    tcase_add_test(shared, health_reports_serving_and_admin_answers);
    tcase_add_test(shared, echo_returns_tenant_and_request_metadata);
    tcase_add_test(shared, put_get_roundtrip_is_idempotent_in_postgres);
    tcase_add_test(shared, bad_input_names_the_field_and_changes_nothing);
    tcase_add_test(shared, missing_tenant_is_invalid_argument);
    tcase_add_test(shared, deadline_exceeded_is_reported_on_time);
    tcase_add_test(shared, unknown_method_is_unimplemented);
    tcase_add_test(shared, oversized_message_is_refused_and_server_lives_on);
    tcase_add_test(shared, malformed_request_is_invalid_argument);
    tcase_add_test(shared, unknown_fields_are_ignored);
    tcase_add_test(shared, strings_with_nul_or_invalid_utf8_are_refused_naming_the_field);
    tcase_add_test(shared, echoed_input_in_a_failure_is_bounded);
    tcase_add_test(shared, a_retried_call_sends_the_same_message);
    tcase_add_test(shared, failure_carries_status_details);
    tcase_add_test(shared, concurrent_calls_all_succeed);
    tcase_add_test(shared, client_in_a_handler_forwards_metadata_and_deadline);
    tcase_add_test(shared, metrics_count_calls_by_method_and_code);
    suite_add_tcase(s, shared);

    TCase *own = tcase_create("own_process");
    tcase_add_checked_fixture(own, NULL, forward_teardown);
    tcase_set_timeout(own, 120);
    tcase_add_test(own, sigterm_drains_the_call_in_flight_and_exits_zero);
    tcase_add_test(own, workers_share_a_bounded_database_pool);
    tcase_add_test(own, drain_grace_cancels_calls_that_overrun_it);
    tcase_add_test(own, bad_configuration_exits_2_naming_the_variable);
    tcase_add_test(own, auth_required_verifies_bearer_tokens);
    tcase_add_test(own, roles_come_from_the_method_table);
    tcase_add_test(own, auth_off_is_refused_off_loopback);
    tcase_add_test(own, jwks_is_reloaded_while_serving);
    tcase_add_test(own, a_reply_too_large_is_failed_precondition);
    tcase_add_test(own, tls_and_mtls_when_certificates_are_configured);
    tcase_add_test(own, database_outage_turns_health_not_serving_and_back);
    tcase_add_test(own, a_dependency_failure_is_passed_on_intact);
    tcase_add_test(own, a_singleton_ticker_runs_on_one_replica_at_a_time);
    suite_add_tcase(s, own);

    TCase *limits = tcase_create("rate_limits");
    tcase_add_checked_fixture(limits, NULL, forward_teardown);
    tcase_set_timeout(limits, 120);
    tcase_add_test(limits,
                   rate_limits_refuse_one_tenant_with_retry_info_and_reload_without_restart);
    tcase_add_test(limits, a_bad_rate_limits_file_stops_the_start);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    /* gRPC does not survive fork: run every test in this process */
    return hs_run(suite(), 1);
}
