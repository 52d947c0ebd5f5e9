#include "cm_arena.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 16
#define ARENA_MAX ((size_t)1 << 30)

typedef struct chunk {
    struct chunk *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    _Alignas(ARENA_ALIGN) unsigned char data[];
} chunk;

struct cm_arena {
    chunk *head;  /* current chunk: allocations come from here */
    chunk *first; /* kept across resets */
    size_t used;
};

static chunk *chunk_new(size_t size)
{
    chunk *c = malloc(sizeof(chunk) + size);
    if (!c)
        return NULL;
    c->next = NULL;
    c->size = size;
    c->used = 0;
    return c;
}

cm_arena *cm_arena_new(size_t first_chunk)
{
    cm_arena *a = malloc(sizeof *a);
    if (!a)
        return NULL;
    a->first = chunk_new(first_chunk ? first_chunk : 8192);
    if (!a->first) {
        free(a);
        return NULL;
    }
    a->head = a->first;
    a->used = 0;
    return a;
}

static void free_chain(chunk *c, const chunk *stop)
{
    while (c && c != stop) {
        chunk *next = c->next;
        free(c);
        c = next;
    }
}

void cm_arena_reset(cm_arena *a)
{
    /* chunks are pushed at the head, so the first chunk is the tail */
    free_chain(a->head, a->first);
    a->head = a->first;
    a->first->next = NULL;
    a->first->used = 0;
    a->used = 0;
}

void cm_arena_free(cm_arena *a)
{
    if (!a)
        return;
    free_chain(a->head, NULL);
    free(a);
}

void *cm_arena_alloc(cm_arena *a, size_t n)
{
    if (n > ARENA_MAX)
        return NULL;
    size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (need == 0)
        need = ARENA_ALIGN;
    chunk *c = a->head;
    if (c->size - c->used < need) {
        /* grow geometrically so a large request costs few mallocs */
        size_t size = c->size * 2;
        if (size < need)
            size = need;
        chunk *nc = chunk_new(size);
        if (!nc)
            return NULL;
        nc->next = a->head;
        a->head = nc;
        c = nc;
    }
    void *p = c->data + c->used;
    c->used += need;
    a->used += need;
    return p;
}

void *cm_arena_calloc(cm_arena *a, size_t n, size_t size)
{
    if (size && n > ARENA_MAX / size)
        return NULL;
    void *p = cm_arena_alloc(a, n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

char *cm_arena_strndup(cm_arena *a, const char *s, size_t n)
{
    char *p = cm_arena_alloc(a, n + 1);
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *cm_arena_strdup(cm_arena *a, const char *s)
{
    return cm_arena_strndup(a, s, strlen(s));
}

char *cm_arena_printf(cm_arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *p = cm_arena_alloc(a, (size_t)n + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

size_t cm_arena_used(const cm_arena *a)
{
    return a->used;
}

static void *pb_alloc(void *data, size_t size)
{
    return cm_arena_alloc(data, size);
}

static void pb_free(void *data, void *p)
{
    (void)data;
    (void)p;
}

ProtobufCAllocator cm_arena_allocator(cm_arena *a)
{
    ProtobufCAllocator al = {.alloc = pb_alloc, .free = pb_free, .allocator_data = a};
    return al;
}
