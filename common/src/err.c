#include "cm_err.h"

#include <stdarg.h>
#include <stdio.h>

#include <grpc/status.h>

const char *cm_strerror(int err)
{
    switch (err) {
    case CM_OK:
        return "ok";
    case CM_EINVAL:
        return "invalid argument";
    case CM_ENOMEM:
        return "out of memory";
    case CM_ENOTFOUND:
        return "not found";
    case CM_EEXIST:
        return "already exists with different content";
    case CM_ESTATE:
        return "illegal state";
    case CM_ECONFLICT:
        return "conflict, retry";
    case CM_ELIMIT:
        return "rate limited";
    case CM_EUNAVAIL:
        return "dependency unavailable";
    case CM_ETIMEDOUT:
        return "deadline exceeded";
    case CM_EAUTH:
        return "unauthenticated";
    case CM_EPERM:
        return "permission denied";
    case CM_EOVERFLOW:
        return "arithmetic overflow";
    case CM_EIO:
        return "i/o error";
    case CM_EINTERNAL:
        return "internal error";
    case CM_ECHECKSUM:
        return "checksum mismatch";
    case CM_ECANCELLED:
        return "cancelled";
    }
    return "unknown error";
}

int cm_err_grpc_code(int err)
{
    switch (err) {
    case CM_OK:
        return GRPC_STATUS_OK;
    case CM_EINVAL:
        return GRPC_STATUS_INVALID_ARGUMENT;
    case CM_EOVERFLOW:
        return GRPC_STATUS_INVALID_ARGUMENT;
    case CM_ENOMEM:
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case CM_ELIMIT:
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case CM_ENOTFOUND:
        return GRPC_STATUS_NOT_FOUND;
    case CM_EEXIST:
        return GRPC_STATUS_ALREADY_EXISTS;
    case CM_ESTATE:
        return GRPC_STATUS_FAILED_PRECONDITION;
    case CM_ECONFLICT:
        return GRPC_STATUS_ABORTED;
    case CM_EUNAVAIL:
        return GRPC_STATUS_UNAVAILABLE;
    case CM_ETIMEDOUT:
        return GRPC_STATUS_DEADLINE_EXCEEDED;
    case CM_EAUTH:
        return GRPC_STATUS_UNAUTHENTICATED;
    case CM_EPERM:
        return GRPC_STATUS_PERMISSION_DENIED;
    case CM_ECANCELLED:
        return GRPC_STATUS_CANCELLED;
    }
    return GRPC_STATUS_INTERNAL;
}

void cm_err_set(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
