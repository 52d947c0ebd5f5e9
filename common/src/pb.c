/* conversions to the shared protobuf types: see cm_pb.h */
#include "cm_pb.h"
#include "cm_err.h"
#include "cm_utf8.h"

#include <stdio.h>
#include <string.h>

Google__Protobuf__Timestamp *cm_pb_timestamp(cm_arena *a, int64_t ms)
{
    if (ms <= 0)
        return NULL;
    Google__Protobuf__Timestamp *t = cm_arena_calloc(a, 1, sizeof *t);
    if (!t)
        return NULL;
    google__protobuf__timestamp__init(t);
    t->seconds = ms / 1000;
    t->nanos = (int32_t)(ms % 1000) * 1000000;
    return t;
}

int64_t cm_pb_timestamp_ms(const Google__Protobuf__Timestamp *t)
{
    return t ? t->seconds * 1000 + t->nanos / 1000000 : 0;
}

Commerce__Common__V1__Money *cm_pb_money(cm_arena *a, int64_t amount, const char *currency)
{
    Commerce__Common__V1__Money *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__common__v1__money__init(m);
    m->amount_minor = amount;
    m->currency = cm_arena_strdup(a, currency ? currency : "");
    return m->currency ? m : NULL;
}

int cm_pb_timestamp_check(const Google__Protobuf__Timestamp *t, int64_t *ms)
{
    if (!t || t->seconds < CM_PB_TIMESTAMP_MIN_SECONDS ||
        t->seconds > CM_PB_TIMESTAMP_MAX_SECONDS || t->nanos < 0 || t->nanos > 999999999)
        return CM_EINVAL;
    *ms = t->seconds * 1000 + t->nanos / 1000000;
    return 0;
}

int cm_pb_duration_check(const Google__Protobuf__Duration *d, int64_t *ms)
{
    if (!d || d->seconds < -CM_PB_DURATION_MAX_SECONDS || d->seconds > CM_PB_DURATION_MAX_SECONDS ||
        d->nanos < -999999999 || d->nanos > 999999999 || (d->seconds > 0 && d->nanos < 0) ||
        (d->seconds < 0 && d->nanos > 0))
        return CM_EINVAL;
    *ms = d->seconds * 1000 + d->nanos / 1000000;
    return 0;
}

/* ---- the wire walk (cm_pb_check_wire) ---- */

#define WIRE_MAX_DEPTH 64

typedef struct wire_in {
    const uint8_t *p, *end;
} wire_in;

static int read_varint(wire_in *w, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (w->p == w->end)
            return -1;
        uint8_t b = *w->p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* the wire type a field of this type takes when not packed */
static unsigned wire_type_of(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 1;
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        return 5;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE:
        return 2;
    default:
        return 0;
    }
}

/* skips one field's value; 0 or -1 when the data ends inside it */
static int skip_value(wire_in *w, unsigned wt, const uint8_t **val, size_t *vlen)
{
    uint64_t n;
    switch (wt) {
    case 0:
        return read_varint(w, &n);
    case 1:
    case 5: {
        size_t k = wt == 1 ? 8 : 4;
        if ((size_t)(w->end - w->p) < k)
            return -1;
        w->p += k;
        return 0;
    }
    case 2:
        if (read_varint(w, &n) || n > (uint64_t)(w->end - w->p))
            return -1;
        *val = w->p;
        *vlen = (size_t)n;
        w->p += n;
        return 0;
    default:
        return -1; /* groups (3, 4) are not proto3; 6, 7 do not exist */
    }
}

/* how many earlier occurrences of field num precede stop in data: the
 * index of a repeated field's element, for the path */
static size_t occurrence(const uint8_t *data, const uint8_t *stop, uint32_t num)
{
    wire_in w = {data, stop};
    size_t k = 0;
    while (w.p < w.end) {
        uint64_t tag;
        const uint8_t *v;
        size_t vl;
        if (read_varint(&w, &tag) || skip_value(&w, (unsigned)(tag & 7), &v, &vl))
            break;
        if ((tag >> 3) == num)
            k++;
    }
    return k;
}

/* prepends "name" or "name[i]" (and a dot before what is there) to path */
static void path_prepend(char *path, size_t pathlen, const ProtobufCFieldDescriptor *f,
                         size_t index)
{
    char head[160];
    int n = f->label == PROTOBUF_C_LABEL_REPEATED
                ? snprintf(head, sizeof head, "%s[%zu]", f->name, index)
                : snprintf(head, sizeof head, "%s", f->name);
    if (n < 0 || (size_t)n >= sizeof head)
        return;
    size_t tail = strlen(path);
    size_t need = (size_t)n + (tail ? 1 : 0) + tail + 1;
    if (need > pathlen)
        return; /* too deep to name: keep the innermost part */
    memmove(path + n + (tail ? 1 : 0), path, tail + 1);
    memcpy(path, head, (size_t)n);
    if (tail)
        path[n] = '.';
}

static int walk(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len, int depth,
                char *path, size_t pathlen)
{
    if (depth > WIRE_MAX_DEPTH)
        return CM_PB_WIRE_MALFORMED;
    wire_in w = {data, data + len};
    while (w.p < w.end) {
        const uint8_t *field_start = w.p;
        uint64_t tag;
        if (read_varint(&w, &tag) || (tag >> 3) == 0 || (tag >> 3) > 536870911u)
            return CM_PB_WIRE_MALFORMED;
        uint32_t num = (uint32_t)(tag >> 3);
        unsigned wt = (unsigned)(tag & 7);
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, num);
        const uint8_t *val = NULL;
        size_t vlen = 0;
        int rc = CM_PB_WIRE_OK;
        if (skip_value(&w, wt, &val, &vlen)) {
            rc = CM_PB_WIRE_MALFORMED;
        } else if (f) {
            unsigned want = wire_type_of(f->type);
            /* repeated scalars may come packed (wire type 2) */
            int packed_ok = f->label == PROTOBUF_C_LABEL_REPEATED && want != 2 && wt == 2;
            if (wt != want && !packed_ok)
                rc = CM_PB_WIRE_MALFORMED;
            else if (f->type == PROTOBUF_C_TYPE_STRING && memchr(val, 0, vlen))
                rc = CM_PB_WIRE_NUL;
            else if (f->type == PROTOBUF_C_TYPE_STRING && !cm_utf8_valid((const char *)val, vlen))
                rc = CM_PB_WIRE_INVALID_UTF8;
            else if (f->type == PROTOBUF_C_TYPE_MESSAGE)
                rc = walk(f->descriptor, val, vlen, depth + 1, path, pathlen);
        }
        if (rc != CM_PB_WIRE_OK) {
            if (f)
                path_prepend(
                    path, pathlen, f,
                    f->label == PROTOBUF_C_LABEL_REPEATED ? occurrence(data, field_start, num) : 0);
            return rc;
        }
    }
    return CM_PB_WIRE_OK;
}

int cm_pb_check_wire(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len,
                     char *path, size_t pathlen)
{
    if (pathlen)
        path[0] = '\0';
    return walk(d, data, len, 0, path, pathlen);
}

int cm_pb_pack(cm_arena *a, const ProtobufCMessage *msg, const uint8_t **out, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *p = cm_arena_alloc(a, n ? n : 1);
    if (!p)
        return CM_ENOMEM;
    protobuf_c_message_pack(msg, p);
    *out = p;
    *len = n;
    return 0;
}
