/*
 * cm_arena: a bump allocator for request-scoped memory (nginx's per-request
 * pool). everything allocated from an arena is released by one
 * cm_arena_free() or cm_arena_reset(); there is no per-object free.
 *
 * the rpc runtime gives each call an arena and hands protobuf-c an allocator
 * backed by it, so unpacked requests, responses and handler scratch all go
 * away in one call after the status is sent. not thread-safe: an arena
 * belongs to one call on one thread.
 */
#ifndef CM_ARENA_H
#define CM_ARENA_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct cm_arena cm_arena;

/* first_chunk: bytes of the first chunk (0 picks 8 KiB). NULL on ENOMEM. */
cm_arena *cm_arena_new(size_t first_chunk);
void cm_arena_free(cm_arena *a);

/* releases every allocation but keeps the first chunk for reuse. */
void cm_arena_reset(cm_arena *a);

/* 16-byte aligned memory, or NULL when the system is out of memory or n is
 * absurd (> 1 GiB). */
void *cm_arena_alloc(cm_arena *a, size_t n);
void *cm_arena_calloc(cm_arena *a, size_t n, size_t size);
char *cm_arena_strdup(cm_arena *a, const char *s);
char *cm_arena_strndup(cm_arena *a, const char *s, size_t n);
/* printf into the arena; NULL on failure. */
char *cm_arena_printf(cm_arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* bytes handed out since the last reset (for metrics and tests). */
size_t cm_arena_used(const cm_arena *a);

/* a protobuf-c allocator that allocates from the arena; free is a no-op. */
ProtobufCAllocator cm_arena_allocator(cm_arena *a);

#endif
