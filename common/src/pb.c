/* conversions to the shared protobuf types: see cm_pb.h */
#include "cm_pb.h"

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
