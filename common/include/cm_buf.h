/*
 * cm_buf: a growable text buffer that remembers running out of memory, and
 * the postgres array literals built with it ("{1,2}", "{\"a\",\"b\"}"),
 * which the stores pass as one parameter where a statement takes a whole
 * batch or list (unnest($1::bigint[]), = ANY($2::int[])).
 *
 *   cm_buf b = {0};
 *   cm_buf_array_begin(&b);
 *   for (...) cm_buf_array_int(&b, v[i]);
 *   cm_buf_array_end(&b);
 *   if (b.oom) ...; use b.p; cm_buf_free(&b);
 *
 * every append is a no-op once oom is set, so a builder checks once at
 * the end. p is NUL-terminated after any append.
 */
#ifndef CM_BUF_H
#define CM_BUF_H

#include <stddef.h>

#include "cm_arena.h"

typedef struct cm_buf {
    char *p; /* malloc'd; NULL until the first append */
    size_t len, cap;
    int oom;
    int items; /* elements in the array being built */
} cm_buf;

void cm_buf_put(cm_buf *b, const void *s, size_t n);
void cm_buf_puts(cm_buf *b, const char *s);
void cm_buf_free(cm_buf *b);

/* an array literal: begin ("{"), elements, end ("}"). text elements are
 * quoted with '"' and '\\' escaped, so any text without NUL is safe. */
void cm_buf_array_begin(cm_buf *b);
void cm_buf_array_int(cm_buf *b, long long v);
void cm_buf_array_text(cm_buf *b, const char *s);
/* a NULL element; and s as a text element, or NULL when s is NULL or "" */
void cm_buf_array_null(cm_buf *b);
void cm_buf_array_text_or_null(cm_buf *b, const char *s);
void cm_buf_array_end(cm_buf *b);

/* n array literals built side by side: the columns of a batch a
 * statement unnests. begin starts them, end closes them and points
 * params[i] at column i (0, or CM_ENOMEM when any ran out of memory),
 * free releases them (also after an error). */
void cm_buf_columns_begin(cm_buf *cols, size_t n);
int cm_buf_columns_end(cm_buf *cols, size_t n, const char **params);
void cm_buf_columns_free(cm_buf *cols, size_t n);

/* a bigint[] literal of n numbers, the first at v, each stride bytes after
 * the previous (one field of an array of structs); in a, NULL when out of
 * memory */
char *cm_buf_int_array(cm_arena *a, const void *v, size_t n, size_t stride);
/* a text[] literal of get(arg, 0..n-1); in a, NULL when out of memory */
char *cm_buf_text_array(cm_arena *a, size_t n, const char *(*get)(const void *arg, size_t i),
                        const void *arg);

#endif
