/* growable buffers and postgres array literals: see cm_buf.h */
#include "cm_buf.h"
#include "cm_err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cm_buf_put(cm_buf *b, const void *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void cm_buf_puts(cm_buf *b, const char *s)
{
    cm_buf_put(b, s, strlen(s));
}

void cm_buf_free(cm_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

void cm_buf_array_begin(cm_buf *b)
{
    b->items = 0;
    cm_buf_put(b, "{", 1);
}

void cm_buf_array_int(cm_buf *b, long long v)
{
    char n[32];
    int k = snprintf(n, sizeof n, b->items++ ? ",%lld" : "%lld", v);
    cm_buf_put(b, n, (size_t)k);
}

void cm_buf_array_text(cm_buf *b, const char *s)
{
    cm_buf_puts(b, b->items++ ? ",\"" : "\"");
    const char *run = s;
    for (const char *c = s; *c; c++) {
        if (*c == '"' || *c == '\\') {
            cm_buf_put(b, run, (size_t)(c - run));
            cm_buf_put(b, "\\", 1);
            run = c;
        }
    }
    cm_buf_puts(b, run);
    cm_buf_put(b, "\"", 1);
}

void cm_buf_array_null(cm_buf *b)
{
    cm_buf_puts(b, b->items++ ? ",NULL" : "NULL");
}

void cm_buf_array_text_or_null(cm_buf *b, const char *s)
{
    if (s && *s)
        cm_buf_array_text(b, s);
    else
        cm_buf_array_null(b);
}

void cm_buf_array_end(cm_buf *b)
{
    cm_buf_put(b, "}", 1);
}

/* the finished literal, copied into a */
static char *into_arena(cm_arena *a, cm_buf *b)
{
    char *s = b->oom ? NULL : cm_arena_strndup(a, b->p, b->len);
    cm_buf_free(b);
    return s;
}

char *cm_buf_int_array(cm_arena *a, const void *v, size_t n, size_t stride)
{
    cm_buf b = {0};
    cm_buf_array_begin(&b);
    const char *p = v;
    for (size_t i = 0; i < n; i++, p += stride) {
        int64_t x;
        memcpy(&x, p, sizeof x);
        cm_buf_array_int(&b, (long long)x);
    }
    cm_buf_array_end(&b);
    return into_arena(a, &b);
}

char *cm_buf_text_array(cm_arena *a, size_t n, const char *(*get)(const void *arg, size_t i),
                        const void *arg)
{
    cm_buf b = {0};
    cm_buf_array_begin(&b);
    for (size_t i = 0; i < n; i++)
        cm_buf_array_text(&b, get(arg, i));
    cm_buf_array_end(&b);
    return into_arena(a, &b);
}

void cm_buf_columns_begin(cm_buf *cols, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cols[i] = (cm_buf){0};
        cm_buf_array_begin(&cols[i]);
    }
}

int cm_buf_columns_end(cm_buf *cols, size_t n, const char **params)
{
    int oom = 0;
    for (size_t i = 0; i < n; i++) {
        cm_buf_array_end(&cols[i]);
        oom |= cols[i].oom;
        params[i] = cols[i].p;
    }
    return oom ? CM_ENOMEM : 0;
}

void cm_buf_columns_free(cm_buf *cols, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cm_buf_free(&cols[i]);
}
