/* a compact json writer: see cm_json.h */
#include "cm_json.h"
#include "cm_err.h"
#include "cm_utf8.h"

#include <stdio.h>
#include <string.h>

/* cm_json.level: the open container is an array; it has a member already */
enum { ARRAY = 1, MORE = 2 };

void cm_json_init(cm_json *j, cm_buf *b)
{
    memset(j, 0, sizeof *j);
    j->b = b;
}

/* a string's bytes between quotes, escaped as jansson's dump_string does
 * without flags */
static void quoted(cm_json *j, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (!s || !cm_utf8_valid(s, n)) {
        j->err = CM_EINVAL;
        return;
    }
    cm_buf *b = j->b;
    cm_buf_put(b, "\"", 1);
    const char *run = s;
    for (const char *c = s; *c; c++) {
        unsigned char u = (unsigned char)*c;
        if (u >= 0x20 && u != '"' && u != '\\')
            continue;
        cm_buf_put(b, run, (size_t)(c - run));
        run = c + 1;
        char seq[8];
        const char *e = seq;
        switch (u) {
        case '"':
            e = "\\\"";
            break;
        case '\\':
            e = "\\\\";
            break;
        case '\b':
            e = "\\b";
            break;
        case '\f':
            e = "\\f";
            break;
        case '\n':
            e = "\\n";
            break;
        case '\r':
            e = "\\r";
            break;
        case '\t':
            e = "\\t";
            break;
        default:
            snprintf(seq, sizeof seq, "\\u%04X", u);
            break;
        }
        cm_buf_puts(b, e);
    }
    cm_buf_put(b, run, (size_t)(s + n - run));
    cm_buf_put(b, "\"", 1);
}

/* the separator and the key before a value; 0 when the value may follow */
static int member(cm_json *j, const char *key)
{
    if (j->err)
        return -1;
    if (j->depth == 0) {
        /* the top-level value: one, and without a key */
        if (key || j->top) {
            j->err = CM_EINVAL;
            return -1;
        }
        j->top = 1;
        return 0;
    }
    unsigned char *level = &j->level[j->depth - 1];
    /* a member of an object has a name, an element of an array none */
    if (!key != !!(*level & ARRAY)) {
        j->err = CM_EINVAL;
        return -1;
    }
    if (*level & MORE)
        cm_buf_put(j->b, ",", 1);
    *level |= MORE;
    if (key) {
        quoted(j, key);
        cm_buf_put(j->b, ":", 1);
    }
    return j->err ? -1 : 0;
}

static void open_container(cm_json *j, const char *key, int array)
{
    if (member(j, key))
        return;
    if (j->depth == CM_JSON_DEPTH) {
        j->err = CM_EINVAL;
        return;
    }
    j->level[j->depth++] = array ? ARRAY : 0;
    cm_buf_put(j->b, array ? "[" : "{", 1);
}

void cm_json_object(cm_json *j, const char *key)
{
    open_container(j, key, 0);
}

void cm_json_array(cm_json *j, const char *key)
{
    open_container(j, key, 1);
}

void cm_json_end(cm_json *j)
{
    if (j->err)
        return;
    if (j->depth == 0) {
        j->err = CM_EINVAL;
        return;
    }
    j->depth--;
    cm_buf_put(j->b, j->level[j->depth] & ARRAY ? "]" : "}", 1);
}

void cm_json_str(cm_json *j, const char *key, const char *v)
{
    if (member(j, key) == 0)
        quoted(j, v);
}

void cm_json_int(cm_json *j, const char *key, int64_t v)
{
    if (member(j, key))
        return;
    char s[24];
    int k = snprintf(s, sizeof s, "%lld", (long long)v);
    cm_buf_put(j->b, s, (size_t)k);
}

void cm_json_bool(cm_json *j, const char *key, int v)
{
    if (member(j, key) == 0)
        cm_buf_puts(j->b, v ? "true" : "false");
}

void cm_json_raw(cm_json *j, const char *key, const char *v, size_t n)
{
    if (member(j, key) == 0)
        cm_buf_put(j->b, v, n);
}

int cm_json_done(const cm_json *j)
{
    if (j->err)
        return j->err;
    if (j->b->oom)
        return CM_ENOMEM;
    return j->depth || !j->top ? CM_EINVAL : 0;
}
