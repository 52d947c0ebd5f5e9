/*
 * server reflection end to end: commerce-order as a real process, its
 * ServerReflectionInfo stream driven with gRPC core directly (a
 * bidirectional stream: our own client speaks unary calls only).
 */
#include "harness.h"

#include <check.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

#define V1 "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
#define V1ALPHA "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

typedef Grpc__Reflection__V1__ServerReflectionRequest req_t;
typedef Grpc__Reflection__V1__ServerReflectionResponse resp_t;

/* one client stream: its channel, call and queue */
typedef struct stream {
    grpc_channel *ch;
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_metadata_array initial, trailing;
    grpc_status_code code;
    grpc_slice details;
    int headers; /* the server's initial metadata was asked for */
    int wait_s;  /* how long a batch may take: 10 s unless a test says */
    int done;
} stream;

static hs_proc order;

static void start_order(const char *const *extra)
{
    const char *base[] = {"ORDER_SCHEMA=refl_test", NULL};
    const char *all[16];
    hs_start(&order, ORDER_BIN, hs_env_join(all, 16, base, extra));
}

static void teardown(void)
{
    hs_teardown();
}

/* runs one batch and waits for it (s->wait_s); the batch's success */
static int batch(stream *s, const grpc_op *ops, size_t n)
{
    ck_assert_int_eq(grpc_call_start_batch(s->call, ops, n, s, NULL), GRPC_CALL_OK);
    grpc_event ev = grpc_completion_queue_pluck(
        s->cq, s, gpr_time_from_seconds(s->wait_s ? s->wait_s : 10, GPR_TIMESPAN), NULL);
    ck_assert_msg(ev.type == GRPC_OP_COMPLETE, "batch timed out");
    return ev.success;
}

static void open_stream(stream *s, const char *method)
{
    memset(s, 0, sizeof *s);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", order.grpc_port);
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    s->ch = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_slice m = grpc_slice_from_static_string(method);
    /* no deadline: the server's idle bound is what ends a quiet stream */
    s->call = grpc_channel_create_call(s->ch, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, m, NULL,
                                       gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    ck_assert_ptr_nonnull(s->call);
    grpc_metadata_array_init(&s->initial);
    grpc_metadata_array_init(&s->trailing);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    ck_assert(batch(s, &op, 1));
}

/* sends req and reads one response: NULL when the stream ended instead */
static resp_t *exchange(stream *s, const req_t *req)
{
    size_t n = protobuf_c_message_get_packed_size(&req->base);
    grpc_slice sl = grpc_slice_malloc(n);
    protobuf_c_message_pack(&req->base, GRPC_SLICE_START_PTR(sl));
    grpc_byte_buffer *out = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    grpc_byte_buffer *in = NULL;
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t k = 0;
    if (!s->headers) {
        s->headers = 1;
        ops[k].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[k++].data.recv_initial_metadata.recv_initial_metadata = &s->initial;
    }
    ops[k].op = GRPC_OP_SEND_MESSAGE;
    ops[k++].data.send_message.send_message = out;
    ops[k].op = GRPC_OP_RECV_MESSAGE;
    ops[k++].data.recv_message.recv_message = &in;
    batch(s, ops, k);
    grpc_byte_buffer_destroy(out);
    if (!in)
        return NULL;
    grpc_byte_buffer_reader r;
    ck_assert(grpc_byte_buffer_reader_init(&r, in));
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    grpc_byte_buffer_destroy(in);
    resp_t *resp = grpc__reflection__v1__server_reflection_response__unpack(
        NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    ck_assert_ptr_nonnull(resp);
    return resp;
}

/* the stream's status: half-closes first when close is set */
static grpc_status_code finish(stream *s, int close)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t k = 0;
    if (close)
        ops[k++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[k].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[k].data.recv_status_on_client.trailing_metadata = &s->trailing;
    ops[k].data.recv_status_on_client.status = &s->code;
    ops[k].data.recv_status_on_client.status_details = &s->details;
    k++;
    batch(s, ops, k);
    s->done = 1;
    return s->code;
}

static void close_stream(stream *s)
{
    if (!s->done)
        grpc_call_cancel(s->call, NULL);
    grpc_call_unref(s->call);
    grpc_metadata_array_destroy(&s->initial);
    grpc_metadata_array_destroy(&s->trailing);
    if (s->done)
        grpc_slice_unref(s->details);
    grpc_completion_queue_shutdown(s->cq);
    while (
        grpc_completion_queue_pluck(s->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
        GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(s->cq);
    grpc_channel_destroy(s->ch);
}

static req_t symbol_req(const char *symbol)
{
    req_t r = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    r.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    r.file_containing_symbol = (char *)symbol;
    return r;
}

static req_t list_req(void)
{
    req_t r = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    r.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
    r.list_services = "";
    return r;
}

static int lists(const resp_t *resp, const char *name)
{
    for (size_t i = 0; i < resp->list_services_response->n_service; i++)
        if (strcmp(resp->list_services_response->service[i]->name, name) == 0)
            return 1;
    return 0;
}

static void check_lists_everything(const char *method)
{
    stream s;
    open_stream(&s, method);
    req_t req = list_req();
    resp_t *resp = exchange(&s, &req);
    ck_assert_ptr_nonnull(resp);
    ck_assert_int_eq(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE);
    ck_assert_uint_eq(resp->list_services_response->n_service, 4);
    ck_assert(lists(resp, "commerce.order.v1.OrderService"));
    ck_assert(lists(resp, "grpc.health.v1.Health"));
    ck_assert(lists(resp, "grpc.reflection.v1.ServerReflection"));
    ck_assert(lists(resp, "grpc.reflection.v1alpha.ServerReflection"));
    grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);
    ck_assert_int_eq(finish(&s, 1), GRPC_STATUS_OK);
    close_stream(&s);
}

START_TEST(list_services_names_the_api_health_and_reflection_on_v1_and_v1alpha)
{
    start_order(NULL);
    check_lists_everything(V1);
    check_lists_everything(V1ALPHA);
    hs_stop(&order, SIGTERM, 10000);
}
END_TEST

START_TEST(several_requests_on_one_stream_get_their_answers_in_order)
{
    start_order(NULL);
    stream s;
    open_stream(&s, V1);

    req_t req = symbol_req("commerce.order.v1.CreateOrderRequest");
    resp_t *resp = exchange(&s, &req);
    ck_assert_ptr_nonnull(resp);
    ck_assert_str_eq(resp->original_request->file_containing_symbol,
                     "commerce.order.v1.CreateOrderRequest");
    ck_assert_int_eq(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE);
    const Grpc__Reflection__V1__FileDescriptorResponse *f = resp->file_descriptor_response;
    ck_assert_uint_gt(f->n_file_descriptor_proto, 3);
    int saw_duration = 0;
    for (size_t i = 0; i < f->n_file_descriptor_proto; i++) {
        Google__Protobuf__FileDescriptorProto *fd = google__protobuf__file_descriptor_proto__unpack(
            NULL, f->file_descriptor_proto[i].len, f->file_descriptor_proto[i].data);
        ck_assert_ptr_nonnull(fd);
        if (i == 0) {
            ck_assert_str_eq(fd->name, "commerce/order/v1/order_service.proto");
            ck_assert_str_eq(fd->package, "commerce.order.v1");
        }
        saw_duration |= strcmp(fd->name, "google/protobuf/duration.proto") == 0;
        google__protobuf__file_descriptor_proto__free_unpacked(fd, NULL);
    }
    ck_assert(saw_duration);
    grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);

    req = symbol_req("commerce.order.v1.NoSuchMessage");
    resp = exchange(&s, &req);
    ck_assert_ptr_nonnull(resp);
    ck_assert_int_eq(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE);
    ck_assert_int_eq(resp->error_response->error_code, GRPC_STATUS_NOT_FOUND);
    grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);

    req = list_req();
    resp = exchange(&s, &req);
    ck_assert_ptr_nonnull(resp);
    ck_assert_int_eq(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE);
    grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);

    ck_assert_int_eq(finish(&s, 1), GRPC_STATUS_OK);
    close_stream(&s);
    ck_assert_int_eq(hs_stop(&order, SIGTERM, 10000), 0);
}
END_TEST

START_TEST(a_request_with_no_choice_ends_the_stream_invalid_argument)
{
    start_order(NULL);
    stream s;
    open_stream(&s, V1);
    req_t req = GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    req.host = "x";
    ck_assert_ptr_null(exchange(&s, &req));
    ck_assert_int_eq(finish(&s, 0), GRPC_STATUS_INVALID_ARGUMENT);
    close_stream(&s);

    /* and a request past the size bound ends it RESOURCE_EXHAUSTED */
    open_stream(&s, V1);
    char *big = malloc(20000);
    memset(big, 'a', 19999);
    big[19999] = '\0';
    req = symbol_req(big);
    ck_assert_ptr_null(exchange(&s, &req));
    free(big);
    ck_assert_int_eq(finish(&s, 0), GRPC_STATUS_RESOURCE_EXHAUSTED);
    close_stream(&s);
    ck_assert_int_eq(hs_stop(&order, SIGTERM, 10000), 0);
}
END_TEST

START_TEST(streams_past_the_bound_are_refused_resource_exhausted)
{
    start_order(NULL);
    enum { OPEN = 8 };
    stream s[OPEN + 1];
    req_t req = list_req();
    for (int i = 0; i < OPEN; i++) {
        open_stream(&s[i], V1);
        resp_t *resp = exchange(&s[i], &req); /* the server holds it now */
        ck_assert_ptr_nonnull(resp);
        grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);
    }
    open_stream(&s[OPEN], V1);
    ck_assert_ptr_null(exchange(&s[OPEN], &req));
    ck_assert_int_eq(finish(&s[OPEN], 0), GRPC_STATUS_RESOURCE_EXHAUSTED);
    close_stream(&s[OPEN]);
    /* one ends: its place is free again */
    ck_assert_int_eq(finish(&s[0], 1), GRPC_STATUS_OK);
    close_stream(&s[0]);
    open_stream(&s[0], V1);
    resp_t *resp = NULL;
    for (int tries = 0; tries < 50 && !resp; tries++) {
        resp = exchange(&s[0], &req);
        if (!resp) { /* the server may not have freed the old one yet */
            finish(&s[0], 0);
            close_stream(&s[0]);
            open_stream(&s[0], V1);
        }
    }
    ck_assert_ptr_nonnull(resp);
    grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);
    for (int i = 0; i < OPEN; i++)
        close_stream(&s[i]);
    ck_assert_int_eq(hs_stop(&order, SIGTERM, 10000), 0);
}
END_TEST

START_TEST(sigterm_with_a_stream_open_drains_promptly_and_exits_zero)
{
    const char *env[] = {"DRAIN_GRACE_SECONDS=20", NULL};
    start_order(env);
    stream s;
    open_stream(&s, V1);
    req_t req = list_req();
    resp_t *resp = exchange(&s, &req);
    ck_assert_ptr_nonnull(resp);
    grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);
    long long t0 = hs_now_ms();
    /* an idle open stream must not hold the drain for its grace period */
    ck_assert_int_eq(hs_stop(&order, SIGTERM, 15000), 0);
    ck_assert_msg(hs_now_ms() - t0 < 5000, "drain took %lld ms", hs_now_ms() - t0);
    grpc_status_code code = finish(&s, 0);
    ck_assert_msg(code == GRPC_STATUS_UNAVAILABLE || code == GRPC_STATUS_CANCELLED,
                  "stream ended %d", code);
    close_stream(&s);
}
END_TEST

START_TEST(a_quiet_stream_is_ended_after_the_idle_bound)
{
    start_order(NULL);
    stream s;
    open_stream(&s, V1);
    req_t req = list_req();
    resp_t *resp = exchange(&s, &req);
    ck_assert_ptr_nonnull(resp);
    grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);
    /* then nothing: the server ends it after 30 s (RPC_REFLECTION_IDLE_MS) */
    long long t0 = hs_now_ms();
    s.wait_s = 45;
    ck_assert_int_eq(finish(&s, 0), GRPC_STATUS_DEADLINE_EXCEEDED);
    long long took = hs_now_ms() - t0;
    ck_assert_msg(took >= 29000 && took < 40000, "ended after %lld ms", took);
    close_stream(&s);
    ck_assert_int_eq(hs_stop(&order, SIGTERM, 10000), 0);
}
END_TEST

START_TEST(grpc_reflection_off_leaves_the_method_unimplemented)
{
    const char *env[] = {"GRPC_REFLECTION=off", NULL};
    start_order(env);
    stream s;
    open_stream(&s, V1);
    req_t req = list_req();
    ck_assert_ptr_null(exchange(&s, &req));
    ck_assert_int_eq(finish(&s, 0), GRPC_STATUS_UNIMPLEMENTED);
    close_stream(&s);
    ck_assert_int_eq(hs_stop(&order, SIGTERM, 10000), 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("reflection");
    TCase *tc = tcase_create("order");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, list_services_names_the_api_health_and_reflection_on_v1_and_v1alpha);
    tcase_add_test(tc, several_requests_on_one_stream_get_their_answers_in_order);
    tcase_add_test(tc, a_request_with_no_choice_ends_the_stream_invalid_argument);
    tcase_add_test(tc, streams_past_the_bound_are_refused_resource_exhausted);
    tcase_add_test(tc, grpc_reflection_off_leaves_the_method_unimplemented);
    suite_add_tcase(s, tc);
    /* own cases, so each can be run alone (CK_RUN_CASE=drain) */
    TCase *drain = tcase_create("drain");
    tcase_add_checked_fixture(drain, NULL, teardown);
    tcase_set_timeout(drain, 120);
    tcase_add_test(drain, sigterm_with_a_stream_open_drains_promptly_and_exits_zero);
    suite_add_tcase(s, drain);
    TCase *idle = tcase_create("idle");
    tcase_add_checked_fixture(idle, NULL, teardown);
    tcase_set_timeout(idle, 120);
    tcase_add_test(idle, a_quiet_stream_is_ended_after_the_idle_bound);
    suite_add_tcase(s, idle);
    return s;
}

int main(void)
{
    grpc_init();
    /* gRPC does not survive fork: run every test in this process */
    int rc = hs_run(suite(), 1);
    grpc_shutdown();
    return rc;
}
