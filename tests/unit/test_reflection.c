/*
 * cm_reflection: the built-in descriptor set indexed, and the answers to
 * each kind of ServerReflectionRequest, without a server.
 */
#include "cm_err.h"
#include "cm_reflection.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

static cm_reflection *r;
static unsigned char *sent;
static const char *const services[] = {"commerce.order.v1.OrderService", "grpc.health.v1.Health"};

static void setup(void)
{
    char err[256] = "";
    ck_assert_msg(
        cm_reflection_new(&r, cm_descriptor_set, cm_descriptor_set_len, err, sizeof err) == 0, "%s",
        err);
    sent = calloc(cm_reflection_nfiles(r), 1);
    ck_assert_ptr_nonnull(sent);
}

static void teardown(void)
{
    free(sent);
    cm_reflection_free(r);
    r = NULL;
    sent = NULL;
}

/* packs req, answers it on this test's stream, unpacks the response */
static Grpc__Reflection__V1__ServerReflectionResponse *
ask(Grpc__Reflection__V1__ServerReflectionRequest *req)
{
    size_t n = protobuf_c_message_get_packed_size(&req->base);
    uint8_t *buf = malloc(n + 1);
    protobuf_c_message_pack(&req->base, buf);
    uint8_t *out = NULL;
    size_t outlen = 0;
    ck_assert_int_eq(cm_reflection_answer(r, sent, services, 2, buf, n, &out, &outlen), 0);
    free(buf);
    Grpc__Reflection__V1__ServerReflectionResponse *resp =
        grpc__reflection__v1__server_reflection_response__unpack(NULL, outlen, out);
    free(out);
    ck_assert_ptr_nonnull(resp);
    return resp;
}

static Grpc__Reflection__V1__ServerReflectionResponse *ask_symbol(const char *symbol)
{
    Grpc__Reflection__V1__ServerReflectionRequest req =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    req.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    req.file_containing_symbol = (char *)symbol;
    return ask(&req);
}

static void free_resp(Grpc__Reflection__V1__ServerReflectionResponse *resp)
{
    grpc__reflection__v1__server_reflection_response__free_unpacked(resp, NULL);
}

/* the names of the files in a file_descriptor_response, each parsed as a
 * FileDescriptorProto, "|"-joined */
static void file_names(const Grpc__Reflection__V1__ServerReflectionResponse *resp, char *out,
                       size_t outlen)
{
    ck_assert_int_eq(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE);
    out[0] = '\0';
    const Grpc__Reflection__V1__FileDescriptorResponse *f = resp->file_descriptor_response;
    for (size_t i = 0; i < f->n_file_descriptor_proto; i++) {
        Google__Protobuf__FileDescriptorProto *fd = google__protobuf__file_descriptor_proto__unpack(
            NULL, f->file_descriptor_proto[i].len, f->file_descriptor_proto[i].data);
        ck_assert_ptr_nonnull(fd);
        size_t used = strlen(out);
        snprintf(out + used, outlen - used, "%s%s", i ? "|" : "", fd->name);
        google__protobuf__file_descriptor_proto__free_unpacked(fd, NULL);
    }
}

static int has_file(const char *names, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = names; (p = strstr(p, name)) != NULL; p += n)
        if ((p == names || p[-1] == '|') && (p[n] == '|' || p[n] == '\0'))
            return 1;
    return 0;
}

START_TEST(message_symbol_gives_its_file_first_then_every_dependency)
{
    Grpc__Reflection__V1__ServerReflectionResponse *resp =
        ask_symbol("commerce.order.v1.CreateOrderRequest");
    char names[4096];
    file_names(resp, names, sizeof names);
    ck_assert_msg(strncmp(names, "commerce/order/v1/order_service.proto|", 38) == 0, "%s", names);
    /* direct and transitive imports: grpcurl cannot build the file without */
    ck_assert_msg(has_file(names, "commerce/order/v1/order.proto"), "%s", names);
    ck_assert_msg(has_file(names, "google/protobuf/duration.proto"), "%s", names);
    ck_assert_msg(has_file(names, "commerce/common/v1/money.proto"), "%s", names);
    ck_assert_msg(!has_file(names, "commerce/inventory/v1/inventory_service.proto"), "%s", names);
    free_resp(resp);
}
END_TEST

START_TEST(every_kind_of_symbol_is_found)
{
    static const struct {
        const char *symbol, *file;
    } cases[] = {
        {"commerce.order.v1.OrderService", "commerce/order/v1/order_service.proto"},
        {"commerce.order.v1.OrderService.GetOrder", "commerce/order/v1/order_service.proto"},
        {"commerce.order.v1.CreateOrderRequest.buyer_id", "commerce/order/v1/order_service.proto"},
        {"grpc.health.v1.HealthCheckResponse.ServingStatus", "grpc/health/v1/health.proto"},
        {"grpc.health.v1.HealthCheckResponse.SERVING", "grpc/health/v1/health.proto"},
        {"grpc.reflection.v1alpha.ServerReflection", "grpc/reflection/v1alpha/reflection.proto"},
        {"grpc.reflection.v1.ServerReflectionRequest.message_request",
         "grpc/reflection/v1/reflection.proto"},
        {"google.protobuf.Timestamp", "google/protobuf/timestamp.proto"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Grpc__Reflection__V1__ServerReflectionResponse *resp = ask_symbol(cases[i].symbol);
        char names[4096];
        file_names(resp, names, sizeof names);
        size_t n = strlen(cases[i].file);
        ck_assert_msg(strncmp(names, cases[i].file, n) == 0 && (names[n] == '|' || !names[n]),
                      "%s: %s", cases[i].symbol, names);
        free_resp(resp);
    }
}
END_TEST

START_TEST(a_stream_gets_each_dependency_once_but_always_the_file_asked_for)
{
    Grpc__Reflection__V1__ServerReflectionResponse *a =
        ask_symbol("commerce.order.v1.CreateOrderRequest");
    Grpc__Reflection__V1__ServerReflectionResponse *b =
        ask_symbol("commerce.order.v1.GetOrderRequest");
    Grpc__Reflection__V1__ServerReflectionResponse *c = ask_symbol("google.protobuf.Duration");
    char names[4096];
    file_names(a, names, sizeof names);
    ck_assert_ptr_nonnull(strchr(names, '|'));
    file_names(b, names, sizeof names);
    ck_assert_str_eq(names, "commerce/order/v1/order_service.proto");
    file_names(c, names, sizeof names);
    ck_assert_str_eq(names, "google/protobuf/duration.proto");
    free_resp(a);
    free_resp(b);
    free_resp(c);
}
END_TEST

START_TEST(unknown_symbol_and_file_are_not_found_on_the_stream)
{
    Grpc__Reflection__V1__ServerReflectionResponse *resp = ask_symbol("commerce.order.v1.Nope");
    ck_assert_int_eq(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE);
    ck_assert_int_eq(resp->error_response->error_code, 5); /* NOT_FOUND */
    ck_assert_ptr_nonnull(strstr(resp->error_response->error_message, "commerce.order.v1.Nope"));
    /* the request comes back as it was sent */
    ck_assert_str_eq(resp->original_request->file_containing_symbol, "commerce.order.v1.Nope");
    free_resp(resp);

    Grpc__Reflection__V1__ServerReflectionRequest req =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    req.host = "h";
    req.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME;
    req.file_by_filename = "commerce/order/v1/nope.proto";
    resp = ask(&req);
    ck_assert_str_eq(resp->valid_host, "h");
    ck_assert_int_eq(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE);
    ck_assert_int_eq(resp->error_response->error_code, 5);
    free_resp(resp);

    req.file_by_filename = "google/rpc/status.proto";
    resp = ask(&req);
    char names[4096];
    file_names(resp, names, sizeof names);
    ck_assert_str_eq(names, "google/rpc/status.proto|google/protobuf/any.proto");
    free_resp(resp);
}
END_TEST

START_TEST(extensions_as_grpc_go_answers_them)
{
    Grpc__Reflection__V1__ExtensionRequest x = GRPC__REFLECTION__V1__EXTENSION_REQUEST__INIT;
    x.containing_type = "commerce.order.v1.CreateOrderRequest";
    x.extension_number = 100;
    Grpc__Reflection__V1__ServerReflectionRequest req =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    req.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION;
    req.file_containing_extension = &x;
    Grpc__Reflection__V1__ServerReflectionResponse *resp = ask(&req);
    ck_assert_int_eq(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE);
    ck_assert_int_eq(resp->error_response->error_code, 5);
    free_resp(resp);

    /* a message we know has no extensions: an empty list, not an error */
    req.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE;
    req.all_extension_numbers_of_type = "commerce.order.v1.CreateOrderRequest";
    resp = ask(&req);
    ck_assert_int_eq(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE);
    ck_assert_str_eq(resp->all_extension_numbers_response->base_type_name,
                     "commerce.order.v1.CreateOrderRequest");
    ck_assert_uint_eq(resp->all_extension_numbers_response->n_extension_number, 0);
    free_resp(resp);

    /* a name we do not know is NOT_FOUND */
    req.all_extension_numbers_of_type = "commerce.order.v1.NoSuchMessage";
    resp = ask(&req);
    ck_assert_int_eq(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE);
    ck_assert_int_eq(resp->error_response->error_code, 5);
    free_resp(resp);
}
END_TEST

START_TEST(list_services_names_what_it_is_given)
{
    Grpc__Reflection__V1__ServerReflectionRequest req =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    req.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
    req.list_services = "*";
    Grpc__Reflection__V1__ServerReflectionResponse *resp = ask(&req);
    ck_assert_int_eq(
        resp->message_response_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE);
    ck_assert_uint_eq(resp->list_services_response->n_service, 2);
    ck_assert_str_eq(resp->list_services_response->service[0]->name,
                     "commerce.order.v1.OrderService");
    ck_assert_str_eq(resp->list_services_response->service[1]->name, "grpc.health.v1.Health");
    free_resp(resp);
}
END_TEST

START_TEST(a_request_with_no_choice_or_no_request_at_all_is_invalid)
{
    Grpc__Reflection__V1__ServerReflectionRequest req =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    req.host = "h";
    uint8_t buf[16];
    size_t n = protobuf_c_message_pack(&req.base, buf);
    uint8_t *out = NULL;
    size_t outlen = 0;
    ck_assert_int_eq(cm_reflection_answer(r, sent, services, 2, buf, n, &out, &outlen), CM_EINVAL);
    ck_assert_ptr_null(out);
    static const uint8_t junk[] = {0xff, 0xff, 0xff};
    ck_assert_int_eq(cm_reflection_answer(r, sent, services, 2, junk, 3, &out, &outlen), CM_EINVAL);
}
END_TEST

START_TEST(a_set_must_parse_and_carry_every_import)
{
    cm_reflection *bad = NULL;
    char err[256] = "";
    static const uint8_t junk[] = {0x0a, 0x7f, 0x01};
    ck_assert_int_eq(cm_reflection_new(&bad, junk, sizeof junk, err, sizeof err), CM_EINVAL);
    ck_assert_ptr_null(bad);

    /* google/rpc/status.proto alone: it imports any.proto */
    Grpc__Reflection__V1__ServerReflectionRequest req =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
    req.message_request_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME;
    req.file_by_filename = "google/rpc/status.proto";
    Grpc__Reflection__V1__ServerReflectionResponse *resp = ask(&req);
    const ProtobufCBinaryData *fd = &resp->file_descriptor_response->file_descriptor_proto[0];
    ck_assert_uint_lt(fd->len, 1000);
    uint8_t set[1024];
    set[0] = 0x0a;
    set[1] = (uint8_t)(fd->len < 128 ? fd->len : (fd->len & 0x7f) | 0x80);
    size_t hdr = 2;
    if (fd->len >= 128)
        set[hdr++] = (uint8_t)(fd->len >> 7);
    memcpy(set + hdr, fd->data, fd->len);
    err[0] = '\0';
    ck_assert_int_eq(cm_reflection_new(&bad, set, hdr + fd->len, err, sizeof err), CM_EINVAL);
    ck_assert_msg(strstr(err, "google/protobuf/any.proto") != NULL, "%s", err);
    free_resp(resp);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("reflection");
    TCase *tc = tcase_create("answers");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, message_symbol_gives_its_file_first_then_every_dependency);
    tcase_add_test(tc, every_kind_of_symbol_is_found);
    tcase_add_test(tc, a_stream_gets_each_dependency_once_but_always_the_file_asked_for);
    tcase_add_test(tc, unknown_symbol_and_file_are_not_found_on_the_stream);
    tcase_add_test(tc, extensions_as_grpc_go_answers_them);
    tcase_add_test(tc, list_services_names_what_it_is_given);
    tcase_add_test(tc, a_request_with_no_choice_or_no_request_at_all_is_invalid);
    tcase_add_test(tc, a_set_must_parse_and_carry_every_import);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
