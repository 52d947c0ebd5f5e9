/* cm_utf8 and the wire check built on it (cm_pb_check_wire) */
#include "cm_arena.h"
#include "cm_pb.h"
#include "cm_utf8.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "commerce/order/v1/order_service.pb-c.h"

START_TEST(utf8_valid_accepts_well_formed_and_refuses_the_rest)
{
    static const struct {
        const char *s;
        size_t n;
        int ok;
    } cases[] = {
        {"", 0, 1},
        {"plain ascii", 11, 1},
        {"\xe5\x95\x86\xe5\x93\x81", 6, 1}, /* 商品 */
        {"\xf0\x9f\x9b\x92", 4, 1},         /* U+1F6D2 */
        {"\xf4\x8f\xbf\xbf", 4, 1},         /* U+10FFFF, the last */
        {"a\0b", 3, 1},                     /* NUL is UTF-8; the wire check refuses it */
        {"\xff", 1, 0},                     /* never a lead byte */
        {"\x80", 1, 0},                     /* a lone continuation */
        {"\xc3", 1, 0},                     /* cut short */
        {"\xc0\xaf", 2, 0},                 /* overlong '/' */
        {"\xe0\x80\xaf", 3, 0},             /* overlong, 3 bytes */
        {"\xf0\x80\x80\xaf", 4, 0},         /* overlong, 4 bytes */
        {"\xed\xa0\x80", 3, 0},             /* a surrogate */
        {"\xf4\x90\x80\x80", 4, 0},         /* above U+10FFFF */
        {"\xe5\x95", 2, 0},                 /* cut short */
        {"\xe5\x95\x41", 3, 0},             /* bad continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(cm_utf8_valid(cases[i].s, cases[i].n) == cases[i].ok, "case %zu", i);
}
END_TEST

START_TEST(utf8_clip_bounds_on_a_character_boundary_and_replaces_controls)
{
    cm_arena *a = cm_arena_new(0);
    ck_assert_str_eq(cm_utf8_clip(a, NULL, 10), "");
    ck_assert_str_eq(cm_utf8_clip(a, "short", 10), "short");
    ck_assert_str_eq(cm_utf8_clip(a, "0123456789abc", 10), "0123456789...");
    /* 商 is 3 bytes: 4 bytes of room keep one, never half of the second */
    ck_assert_str_eq(cm_utf8_clip(a, "\xe5\x95\x86\xe5\x93\x81", 4), "\xe5\x95\x86...");
    ck_assert_str_eq(cm_utf8_clip(a,
                                  "a\x01"
                                  "b\x7f\n",
                                  10),
                     "a?b??");
    ck_assert_str_eq(cm_utf8_clip(a, "x\xff\xc3y", 10), "x??y");
    char *big = malloc(100001);
    memset(big, 'z', 100000);
    big[100000] = '\0';
    char *c = cm_utf8_clip(a, big, 256);
    ck_assert_uint_eq(strlen(c), 259);
    ck_assert(cm_utf8_valid(c, strlen(c)));
    free(big);
    cm_arena_free(a);
}
END_TEST

/* appends a length-delimited field */
static size_t put_ld(uint8_t *b, size_t o, unsigned num, const void *v, size_t n)
{
    b[o++] = (uint8_t)(num << 3 | 2);
    b[o++] = (uint8_t)n; /* tests stay under 128 bytes */
    memcpy(b + o, v, n);
    return o + n;
}

START_TEST(wire_check_names_the_bad_string_at_any_depth)
{
    const ProtobufCMessageDescriptor *d = &commerce__order__v1__create_order_request__descriptor;
    uint8_t line[64], buf[256];
    char path[128];
    size_t o = put_ld(buf, 0, 1, "req-1", 5);
    /* lines[0] fine, lines[1].sku holds a NUL */
    size_t l = put_ld(line, 0, 1, "SKU-1", 5);
    o = put_ld(buf, o, 6, line, l);
    ck_assert_int_eq(cm_pb_check_wire(d, buf, o, path, sizeof path), CM_PB_WIRE_OK);
    l = put_ld(line, 0, 1, "H-1\0zz", 6);
    size_t o2 = put_ld(buf, o, 6, line, l);
    ck_assert_int_eq(cm_pb_check_wire(d, buf, o2, path, sizeof path), CM_PB_WIRE_NUL);
    ck_assert_str_eq(path, "lines[1].sku");
    /* lines[1].unit_price.currency not UTF-8 */
    uint8_t money[16];
    size_t m = put_ld(money, 0, 2, "\xff", 1);
    l = put_ld(line, 0, 3, money, m);
    o2 = put_ld(buf, o, 6, line, l);
    ck_assert_int_eq(cm_pb_check_wire(d, buf, o2, path, sizeof path), CM_PB_WIRE_INVALID_UTF8);
    ck_assert_str_eq(path, "lines[1].unit_price.currency");
    /* a top-level string */
    o2 = put_ld(buf, o, 2, "\xc3", 1);
    ck_assert_int_eq(cm_pb_check_wire(d, buf, o2, path, sizeof path), CM_PB_WIRE_INVALID_UTF8);
    ck_assert_str_eq(path, "buyer_id");
    /* bytes in an unknown field are nobody's business */
    o2 = put_ld(buf, o, 15, "\xff\0", 2);
    ck_assert_int_eq(cm_pb_check_wire(d, buf, o2, path, sizeof path), CM_PB_WIRE_OK);
}
END_TEST

START_TEST(wire_check_finds_malformed_encodings)
{
    const ProtobufCMessageDescriptor *d = &commerce__order__v1__create_order_request__descriptor;
    char path[128];
    uint8_t b[16];
    /* a length past the end */
    b[0] = 1 << 3 | 2;
    b[1] = 10;
    b[2] = 'a';
    ck_assert_int_eq(cm_pb_check_wire(d, b, 3, path, sizeof path), CM_PB_WIRE_MALFORMED);
    ck_assert_str_eq(path, "request_id");
    /* a string sent as a varint */
    b[0] = 2 << 3 | 0;
    b[1] = 5;
    ck_assert_int_eq(cm_pb_check_wire(d, b, 2, path, sizeof path), CM_PB_WIRE_MALFORMED);
    ck_assert_str_eq(path, "buyer_id");
    /* field number 0, a group, a varint that never ends */
    b[0] = 0;
    ck_assert_int_eq(cm_pb_check_wire(d, b, 2, path, sizeof path), CM_PB_WIRE_MALFORMED);
    ck_assert_str_eq(path, "");
    b[0] = 9 << 3 | 3;
    ck_assert_int_eq(cm_pb_check_wire(d, b, 1, path, sizeof path), CM_PB_WIRE_MALFORMED);
    memset(b, 0xff, sizeof b);
    ck_assert_int_eq(cm_pb_check_wire(d, b, sizeof b, path, sizeof path), CM_PB_WIRE_MALFORMED);
    ck_assert_int_eq(cm_pb_check_wire(d, b, 0, path, sizeof path), CM_PB_WIRE_OK);
}
END_TEST

START_TEST(wire_check_agrees_with_the_decoder_on_random_bytes)
{
    /* whatever the check passes, protobuf-c decodes; seeded for replay */
    const ProtobufCMessageDescriptor *d = &commerce__order__v1__create_order_request__descriptor;
    unsigned seed = 20261206;
    uint8_t buf[64];
    char path[128];
    int passed = 0;
    for (int i = 0; i < 200000; i++) {
        size_t n = (size_t)(rand_r(&seed) % sizeof buf);
        for (size_t k = 0; k < n; k++)
            buf[k] = (uint8_t)rand_r(&seed);
        if (i % 2) /* a plausible first tag more often */
            buf[0] = (uint8_t)((1 + rand_r(&seed) % 8) << 3 | (rand_r(&seed) % 3));
        if (cm_pb_check_wire(d, buf, n, path, sizeof path) != CM_PB_WIRE_OK)
            continue;
        ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, n, buf);
        ck_assert_msg(m != NULL, "checked yet not decodable (iteration %d)", i);
        protobuf_c_message_free_unpacked(m, NULL);
        passed++;
    }
    ck_assert_int_gt(passed, 1000);
}
END_TEST

START_TEST(timestamps_and_durations_are_range_checked_without_overflow)
{
    int64_t ms = 0;
    Google__Protobuf__Timestamp t = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    t.seconds = 1700000000;
    t.nanos = 999999999;
    ck_assert_int_eq(cm_pb_timestamp_check(&t, &ms), 0);
    ck_assert_int_eq(ms, 1700000000999LL);
    t.seconds = INT64_MAX;
    ck_assert_int_ne(cm_pb_timestamp_check(&t, &ms), 0);
    t.seconds = CM_PB_TIMESTAMP_MAX_SECONDS + 1;
    ck_assert_int_ne(cm_pb_timestamp_check(&t, &ms), 0);
    t.seconds = CM_PB_TIMESTAMP_MIN_SECONDS - 1;
    ck_assert_int_ne(cm_pb_timestamp_check(&t, &ms), 0);
    t.seconds = 0;
    t.nanos = -1;
    ck_assert_int_ne(cm_pb_timestamp_check(&t, &ms), 0);
    t.nanos = 1000000000;
    ck_assert_int_ne(cm_pb_timestamp_check(&t, &ms), 0);
    ck_assert_int_ne(cm_pb_timestamp_check(NULL, &ms), 0);

    Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
    d.seconds = 90;
    d.nanos = 500000000;
    ck_assert_int_eq(cm_pb_duration_check(&d, &ms), 0);
    ck_assert_int_eq(ms, 90500);
    d.nanos = -5; /* sign differs from seconds */
    ck_assert_int_ne(cm_pb_duration_check(&d, &ms), 0);
    d.seconds = INT64_MAX;
    d.nanos = 0;
    ck_assert_int_ne(cm_pb_duration_check(&d, &ms), 0);
    d.seconds = 0;
    d.nanos = 2000000000;
    ck_assert_int_ne(cm_pb_duration_check(&d, &ms), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("utf8");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, utf8_valid_accepts_well_formed_and_refuses_the_rest);
    tcase_add_test(tc, utf8_clip_bounds_on_a_character_boundary_and_replaces_controls);
    tcase_add_test(tc, wire_check_names_the_bad_string_at_any_depth);
    tcase_add_test(tc, wire_check_finds_malformed_encodings);
    tcase_add_test(tc, wire_check_agrees_with_the_decoder_on_random_bytes);
    tcase_add_test(tc, timestamps_and_durations_are_range_checked_without_overflow);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
