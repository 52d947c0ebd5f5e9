/*
 * cm_pb: small conversions between the services' values and the protobuf
 * types every api shares (google.protobuf.Timestamp, commerce.common.v1
 * Money), allocated in a call's arena.
 */
#ifndef CM_PB_H
#define CM_PB_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "cm_arena.h"

#include "commerce/common/v1/money.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"

/* a Timestamp of unix milliseconds, in a; NULL for ms <= 0 (unset) or out
 * of memory. */
Google__Protobuf__Timestamp *cm_pb_timestamp(cm_arena *a, int64_t ms);

/* unix milliseconds of t; 0 for NULL (unset). */
int64_t cm_pb_timestamp_ms(const Google__Protobuf__Timestamp *t);

/* a Money of amount minor units in currency (copied into a); NULL on out
 * of memory. */
/* msg packed into a (the bytes and their count); 0 or CM_ENOMEM */
int cm_pb_pack(cm_arena *a, const ProtobufCMessage *msg, const uint8_t **out, size_t *len);

Commerce__Common__V1__Money *cm_pb_money(cm_arena *a, int64_t amount, const char *currency);

/* the range a google.protobuf.Timestamp may hold (timestamp.proto:
 * 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z) */
#define CM_PB_TIMESTAMP_MIN_SECONDS (-62135596800LL)
#define CM_PB_TIMESTAMP_MAX_SECONDS 253402300799LL
/* a Duration's range (duration.proto: about +-10,000 years) */
#define CM_PB_DURATION_MAX_SECONDS 315576000000LL

/* t in unix milliseconds, checked: 0 when t is a valid Timestamp (seconds
 * in the documented range, nanos in [0, 999999999]), CM_EINVAL otherwise.
 * never overflows: the range fits int64 milliseconds. */
int cm_pb_timestamp_check(const Google__Protobuf__Timestamp *t, int64_t *ms);

/* d in milliseconds (rounded towards zero), checked: 0 when d is a valid
 * Duration (seconds in range, nanos in [-999999999, 999999999] with the
 * sign of seconds), CM_EINVAL otherwise. */
int cm_pb_duration_check(const Google__Protobuf__Duration *d, int64_t *ms);

/* what cm_pb_check_wire found */
enum {
    CM_PB_WIRE_OK = 0,
    CM_PB_WIRE_MALFORMED,    /* not a valid encoding of the message */
    CM_PB_WIRE_NUL,          /* a string field holds a NUL byte */
    CM_PB_WIRE_INVALID_UTF8, /* a string field is not UTF-8 */
};

/* walks the encoded message data[0..len) of type d before anything
 * decodes it, and checks what a decoded C string can no longer show: every
 * string field, at any depth, must be UTF-8 without NUL bytes (a NUL would
 * cut the string short for every later reader: validation, SQL, keys).
 * also finds malformed encodings (truncated, wrong wire type, groups,
 * nesting deeper than 64). returns CM_PB_WIRE_*; on a finding, path gets
 * the field's path as the api names it ("lines[2].sku"; "" when the fault
 * is in the message itself, not in a field). */
int cm_pb_check_wire(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len,
                     char *path, size_t pathlen);

#endif
