#include "cm_err.h"
#include "cm_id.h"

#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

START_TEST(uuid7_text_is_canonical_lowercase)
{
    char id[CM_ID_SIZE];
    for (int k = 0; k < 1000; k++) {
        memset(id, 'x', sizeof id);
        ck_assert_int_eq(cm_id_uuid7(id), 0);
        ck_assert_uint_eq(strlen(id), 36);
        for (int i = 0; i < 36; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                ck_assert_int_eq(id[i], '-');
            else
                ck_assert_msg(is_lower_hex(id[i]), "char %d of %s", i, id);
        }
        ck_assert_int_eq(id[14], '7');
        ck_assert_ptr_nonnull(strchr("89ab", id[19]));
        ck_assert_int_eq(cm_id_is_uuid(id), 1);
    }
}
END_TEST

START_TEST(uuid7_bits_carry_version_variant_and_time)
{
    int64_t before = now_ms();
    uint8_t b[16];
    ck_assert_int_eq(cm_id_uuid7_bytes(b), 0);
    int64_t after = now_ms();
    ck_assert_uint_eq(b[6] >> 4, 7);
    ck_assert_uint_eq(b[8] >> 6, 2);
    int64_t t = cm_id_uuid7_time_ms(b);
    /* the id may borrow a few ms ahead, never lag behind the clock */
    ck_assert_int_ge(t, before);
    ck_assert_int_le(t, after + 5);

    uint8_t v4[16];
    memcpy(v4, b, 16);
    v4[6] = (uint8_t)(0x40 | (v4[6] & 0x0f));
    ck_assert_int_eq(cm_id_uuid7_time_ms(v4), CM_EINVAL);
    memcpy(v4, b, 16);
    v4[8] = (uint8_t)(0xc0 | (v4[8] & 0x3f));
    ck_assert_int_eq(cm_id_uuid7_time_ms(v4), CM_EINVAL);
}
END_TEST

START_TEST(uuid7_strictly_increases_across_100k_ids)
{
    enum { N = 100000 };
    char prev[CM_ID_SIZE], cur[CM_ID_SIZE];
    ck_assert_int_eq(cm_id_uuid7(prev), 0);
    for (int i = 1; i < N; i++) {
        ck_assert_int_eq(cm_id_uuid7(cur), 0);
        ck_assert_msg(strcmp(prev, cur) < 0, "id %d: %s !< %s", i, prev, cur);
        memcpy(prev, cur, sizeof cur);
    }
}
END_TEST

START_TEST(uuid7_counter_exhaustion_borrows_next_ms)
{
    /* 10000 ids at one frozen clock reading: the 12-bit counter runs out
     * several times and each time the timestamp moves on by one */
    uint64_t t = (uint64_t)now_ms() + 1000;
    uint8_t prev[16], cur[16];
    ck_assert_int_eq(cm_id_uuid7_from_clock(t, prev), 0);
    ck_assert_int_eq(cm_id_uuid7_time_ms(prev), (int64_t)t);
    for (int i = 1; i < 10000; i++) {
        ck_assert_int_eq(cm_id_uuid7_from_clock(t, cur), 0);
        ck_assert_msg(memcmp(prev, cur, 16) < 0, "id %d not above its predecessor", i);
        memcpy(prev, cur, 16);
    }
    int64_t last = cm_id_uuid7_time_ms(prev);
    ck_assert_int_gt(last, (int64_t)t);
    /* each ms holds at least 2048 ids (counter starts with its top bit clear) */
    ck_assert_int_le(last, (int64_t)t + 5);
}
END_TEST

START_TEST(uuid7_clock_step_back_keeps_order)
{
    uint64_t t = (uint64_t)now_ms() + 2000;
    uint8_t a[16], b[16];
    ck_assert_int_eq(cm_id_uuid7_from_clock(t, a), 0);
    ck_assert_int_eq(cm_id_uuid7_from_clock(t - 60000, b), 0);
    ck_assert_int_lt(memcmp(a, b, 16), 0);
    ck_assert_int_eq(cm_id_uuid7_time_ms(b), (int64_t)t);
    /* the real clock is now behind: ids keep rising from the stepped time */
    ck_assert_int_eq(cm_id_uuid7_bytes(a), 0);
    ck_assert_int_lt(memcmp(b, a, 16), 0);
}
END_TEST

enum { THREADS = 4, PER_THREAD = 20000 };

typedef struct {
    char (*ids)[CM_ID_SIZE];
    int ordered;
} gen_job;

static void *gen_thread(void *arg)
{
    gen_job *j = arg;
    j->ordered = 1;
    for (int i = 0; i < PER_THREAD; i++) {
        if (cm_id_uuid7(j->ids[i]) != 0)
            j->ordered = 0;
        if (i > 0 && strcmp(j->ids[i - 1], j->ids[i]) >= 0)
            j->ordered = 0;
    }
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

START_TEST(uuid7_unique_across_threads)
{
    char(*all)[CM_ID_SIZE] = calloc((size_t)THREADS * PER_THREAD, CM_ID_SIZE);
    ck_assert_ptr_nonnull(all);
    pthread_t th[THREADS];
    gen_job jobs[THREADS];
    for (int t = 0; t < THREADS; t++) {
        jobs[t].ids = all + (size_t)t * PER_THREAD;
        ck_assert_int_eq(pthread_create(&th[t], NULL, gen_thread, &jobs[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        ck_assert_msg(jobs[t].ordered, "thread %d saw its ids out of order", t);
    }
    qsort(all, (size_t)THREADS * PER_THREAD, CM_ID_SIZE, cmp_id);
    for (size_t i = 1; i < (size_t)THREADS * PER_THREAD; i++)
        ck_assert_msg(strcmp(all[i - 1], all[i]) != 0, "duplicate id %s", all[i]);
    free(all);
}
END_TEST

START_TEST(parse_round_trips_and_accepts_upper_case)
{
    uint8_t b[16], back[16];
    char id[CM_ID_SIZE], again[CM_ID_SIZE];
    ck_assert_int_eq(cm_id_uuid7_bytes(b), 0);
    cm_id_format(b, id);
    ck_assert_int_eq(cm_id_parse(id, back), 0);
    ck_assert_int_eq(memcmp(b, back, 16), 0);

    ck_assert_int_eq(cm_id_parse("0189F7E2-3C4D-7ABC-8DEF-0123456789AB", back), 0);
    cm_id_format(back, again);
    ck_assert_str_eq(again, "0189f7e2-3c4d-7abc-8def-0123456789ab");
    ck_assert_uint_eq(back[0], 0x01);
    ck_assert_uint_eq(back[15], 0xab);

    /* any version is uuid text: v4 and the nil uuid */
    ck_assert_int_eq(cm_id_is_uuid("f47ac10b-58cc-4372-a567-0e02b2c3d479"), 1);
    ck_assert_int_eq(cm_id_is_uuid("00000000-0000-0000-0000-000000000000"), 1);
}
END_TEST

START_TEST(parse_rejects_malformed_text)
{
    static const char *bad[] = {
        "",
        "0189f7e2-3c4d-7abc-8def-0123456789a",    /* short */
        "0189f7e2-3c4d-7abc-8def-0123456789abc",  /* long */
        "0189f7e23c4d7abc8def0123456789ab",       /* no hyphens */
        "0189f7e2-3c4d7-abc-8def-0123456789ab",   /* hyphen moved */
        "0189f7e2-3c4d-7abc-8def_0123456789ab",   /* wrong separator */
        "0189f7g2-3c4d-7abc-8def-0123456789ab",   /* not hex */
        "{0189f7e2-3c4d-7abc-8def-0123456789ab}", /* braces */
        " 0189f7e2-3c4d-7abc-8def-0123456789ab",  /* leading space */
        "0189f7e2-3c4d-7abc-8def-0123456789ab\n", /* trailing newline */
        "urn:uuid:0189f7e2-3c4d-7abc-8def-0123456789ab",
        "0189f7e2-3c4d-7abc-8def-0123456789-b",
        "+189f7e2-3c4d-7abc-8def-0123456789ab",
    };
    uint8_t out[16];
    memset(out, 0x5a, sizeof out);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(cm_id_parse(bad[i], out) == CM_EINVAL, "accepted \"%s\"", bad[i]);
        ck_assert_int_eq(cm_id_is_uuid(bad[i]), 0);
    }
    ck_assert_int_eq(cm_id_parse(NULL, out), CM_EINVAL);
    ck_assert_int_eq(cm_id_is_uuid(NULL), 0);
    for (int i = 0; i < 16; i++)
        ck_assert_uint_eq(out[i], 0x5a);
}
END_TEST

static Suite *id_suite(void)
{
    Suite *s = suite_create("id");
    TCase *gen = tcase_create("uuid7");
    tcase_set_timeout(gen, 60);
    tcase_add_test(gen, uuid7_text_is_canonical_lowercase);
    tcase_add_test(gen, uuid7_bits_carry_version_variant_and_time);
    tcase_add_test(gen, uuid7_strictly_increases_across_100k_ids);
    tcase_add_test(gen, uuid7_counter_exhaustion_borrows_next_ms);
    tcase_add_test(gen, uuid7_clock_step_back_keeps_order);
    tcase_add_test(gen, uuid7_unique_across_threads);
    suite_add_tcase(s, gen);

    TCase *parse = tcase_create("parse");
    tcase_add_test(parse, parse_round_trips_and_accepts_upper_case);
    tcase_add_test(parse, parse_rejects_malformed_text);
    suite_add_tcase(s, parse);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(id_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
