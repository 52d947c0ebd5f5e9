#include "cm_arena.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

START_TEST(arena_allocations_are_aligned_and_distinct)
{
    cm_arena *a = cm_arena_new(64);
    ck_assert_ptr_nonnull(a);
    char *prev = NULL;
    for (int i = 1; i < 200; i++) {
        char *p = cm_arena_alloc(a, (size_t)i);
        ck_assert_ptr_nonnull(p);
        ck_assert_uint_eq((uintptr_t)p % 16, 0);
        memset(p, 0xab, (size_t)i); /* ASan catches overlap or overflow */
        ck_assert_ptr_ne(p, prev);
        prev = p;
    }
    ck_assert_uint_ge(cm_arena_used(a), 199 * 200 / 2);
    cm_arena_free(a);
}
END_TEST

START_TEST(arena_reset_keeps_first_chunk_and_frees_the_rest)
{
    cm_arena *a = cm_arena_new(128);
    void *first = cm_arena_alloc(a, 16);
    for (int i = 0; i < 100; i++)
        ck_assert_ptr_nonnull(cm_arena_alloc(a, 1000));
    cm_arena_reset(a);
    ck_assert_uint_eq(cm_arena_used(a), 0);
    /* the first chunk is reused: the first allocation lands where it did */
    ck_assert_ptr_eq(cm_arena_alloc(a, 16), first);
    cm_arena_free(a);
}
END_TEST

START_TEST(arena_large_and_absurd_sizes)
{
    cm_arena *a = cm_arena_new(0);
    char *big = cm_arena_alloc(a, 1 << 20);
    ck_assert_ptr_nonnull(big);
    memset(big, 1, 1 << 20);
    ck_assert_ptr_null(cm_arena_alloc(a, (size_t)1 << 40));
    ck_assert_ptr_null(cm_arena_calloc(a, SIZE_MAX / 2, 4));
    cm_arena_free(a);
}
END_TEST

START_TEST(arena_strings_and_printf)
{
    cm_arena *a = cm_arena_new(0);
    ck_assert_str_eq(cm_arena_strdup(a, "tenant-a"), "tenant-a");
    ck_assert_str_eq(cm_arena_strndup(a, "abcdef", 3), "abc");
    ck_assert_str_eq(cm_arena_printf(a, "%s[%d].%s", "lines", 2, "quantity"), "lines[2].quantity");
    int *z = cm_arena_calloc(a, 10, sizeof(int));
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(z[i], 0);
    cm_arena_free(a);
}
END_TEST

START_TEST(arena_backs_protobuf_allocator)
{
    cm_arena *a = cm_arena_new(0);
    ProtobufCAllocator al = cm_arena_allocator(a);
    void *p = al.alloc(al.allocator_data, 100);
    ck_assert_ptr_nonnull(p);
    al.free(al.allocator_data, p); /* no-op: released with the arena */
    ck_assert_uint_ge(cm_arena_used(a), 100);
    cm_arena_free(a);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("arena");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, arena_allocations_are_aligned_and_distinct);
    tcase_add_test(tc, arena_reset_keeps_first_chunk_and_frees_the_rest);
    tcase_add_test(tc, arena_large_and_absurd_sizes);
    tcase_add_test(tc, arena_strings_and_printf);
    tcase_add_test(tc, arena_backs_protobuf_allocator);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
