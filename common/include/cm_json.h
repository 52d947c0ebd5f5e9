/*
 * cm_json: a compact JSON writer for the hot paths that emit JSON per
 * event (commission's partner events: one 1.5 KB CloudEvent per accrual).
 *
 * jansson builds a tree of objects with hash tables and dumps it; for a
 * document written once, front to back, that was over a third of the
 * accrual consumer's CPU. this writer appends to a cm_buf as it goes, and
 * writes exactly the bytes jansson's json_dumps(JSON_COMPACT) writes for
 * the same members in the same order (test_json checks that against
 * jansson on random input): no spaces, '"' '\\' and the C0 controls
 * escaped (\b \f \n \r \t, else \u00XX upper case), everything else —
 * '/', DEL, non-ASCII — as is. strings must be UTF-8 (checked, as jansson
 * does); parsing stays jansson's.
 *
 *   cm_buf b = {0};
 *   cm_json j;
 *   cm_json_init(&j, &b);
 *   cm_json_object(&j, NULL);
 *   cm_json_str(&j, "id", id);
 *   cm_json_array(&j, "tiers");  cm_json_int(&j, NULL, 500);  cm_json_end(&j);
 *   cm_json_end(&j);
 *   if (cm_json_done(&j) == 0) ... b.p, b.len ...
 *
 * key: the member's name inside an object, NULL inside an array and for
 * the top-level value. every call is a no-op after an error; cm_json_done
 * reports the first.
 */
#ifndef CM_JSON_H
#define CM_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "cm_buf.h"

/* containers open at once, at most */
#define CM_JSON_DEPTH 16

typedef struct cm_json {
    cm_buf *b;
    int err;        /* 0, CM_EINVAL (not UTF-8, a key missing or extra, unbalanced, too deep) */
    unsigned depth; /* containers open */
    int top;        /* the top-level value is begun */
    unsigned char level[CM_JSON_DEPTH]; /* each: array or object, empty or not */
} cm_json;

void cm_json_init(cm_json *j, cm_buf *b);
/* opens an object or an array; cm_json_end closes the innermost one */
void cm_json_object(cm_json *j, const char *key);
void cm_json_array(cm_json *j, const char *key);
void cm_json_end(cm_json *j);
/* a string (UTF-8, not NULL; CM_EINVAL otherwise), a number, true/false */
void cm_json_str(cm_json *j, const char *key, const char *v);
void cm_json_int(cm_json *j, const char *key, int64_t v);
void cm_json_bool(cm_json *j, const char *key, int v);
/* n bytes that are already one JSON value (another writer's, jansson's
 * dump), written as they are */
void cm_json_raw(cm_json *j, const char *key, const char *v, size_t n);
/* 0 when every container is closed and nothing failed; CM_EINVAL;
 * CM_ENOMEM (the buffer ran out) */
int cm_json_done(const cm_json *j);

#endif
