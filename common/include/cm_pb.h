/*
 * cm_pb: small conversions between the services' values and the protobuf
 * types every api shares (google.protobuf.Timestamp, commerce.common.v1
 * Money), allocated in a call's arena.
 */
#ifndef CM_PB_H
#define CM_PB_H

#include <stdint.h>

#include "cm_arena.h"

#include "commerce/common/v1/money.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"

/* a Timestamp of unix milliseconds, in a; NULL for ms <= 0 (unset) or out
 * of memory. */
Google__Protobuf__Timestamp *cm_pb_timestamp(cm_arena *a, int64_t ms);

/* unix milliseconds of t; 0 for NULL (unset). */
int64_t cm_pb_timestamp_ms(const Google__Protobuf__Timestamp *t);

/* a Money of amount minor units in currency (copied into a); NULL on out
 * of memory. */
Commerce__Common__V1__Money *cm_pb_money(cm_arena *a, int64_t amount, const char *currency);

#endif
