/*
 * cm_err: the error codes every common module returns.
 *
 * functions return int: 0 on success, a negative CM_E* on failure (libuv's
 * rule). cm_strerror() gives the text. codes map onto gRPC status codes with
 * cm_err_grpc_code(), so a store error can become the right status without
 * the handler knowing SQL.
 */
#ifndef CM_ERR_H
#define CM_ERR_H

#include <stddef.h>

enum {
    CM_OK = 0,
    CM_EINVAL = -1,      /* bad argument / input: INVALID_ARGUMENT */
    CM_ENOMEM = -2,      /* allocation failed: RESOURCE_EXHAUSTED */
    CM_ENOTFOUND = -3,   /* NOT_FOUND */
    CM_EEXIST = -4,      /* idempotency key reused with another body: ALREADY_EXISTS */
    CM_ESTATE = -5,      /* illegal state transition, sold out: FAILED_PRECONDITION */
    CM_ECONFLICT = -6,   /* serialization conflict, safe to retry: ABORTED */
    CM_ELIMIT = -7,      /* rate limited: RESOURCE_EXHAUSTED */
    CM_EUNAVAIL = -8,    /* a dependency is down: UNAVAILABLE */
    CM_ETIMEDOUT = -9,   /* deadline passed: DEADLINE_EXCEEDED */
    CM_EAUTH = -10,      /* missing/invalid credentials: UNAUTHENTICATED */
    CM_EPERM = -11,      /* not allowed: PERMISSION_DENIED */
    CM_EOVERFLOW = -12,  /* arithmetic overflow: INVALID_ARGUMENT */
    CM_EIO = -13,        /* i/o or database error: INTERNAL */
    CM_EINTERNAL = -14,  /* bug or unexpected state: INTERNAL */
    CM_ECHECKSUM = -15,  /* an applied migration was edited: INTERNAL */
    CM_ECANCELLED = -16, /* operation cancelled, e.g. while draining: CANCELLED */
};

/* static text for a CM_E* code; never NULL. */
const char *cm_strerror(int err);

/* the gRPC status code (grpc_status_code value) that a CM_E* code maps to. */
int cm_err_grpc_code(int err);

/* writes a printf-style message into a setup call's err buffer (the
 * "char *err, size_t errlen" convention); NULL or empty buffers are left
 * alone. */
void cm_err_set(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
