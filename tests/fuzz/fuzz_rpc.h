/*
 * the driver the four service harnesses share (fuzz_rpc_<service>.c): the
 * input's first byte picks a method of the service, the rest is its request
 * message. the bytes go through the server's own decoding
 * (cm_rpc_ctx_decode: wire check, unpack into the arena), then, for the
 * methods a service lists, through the handler's checks before any i/o.
 */
#ifndef FUZZ_RPC_H
#define FUZZ_RPC_H

#include "cm_rpc.h"

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

/* the checks of one method: 0 when the request passed them, else the
 * failure recorded in ctx (as the handler returns it) */
typedef int (*fuzz_rpc_check)(cm_rpc_ctx *ctx, const ProtobufCMessage *in);

typedef struct fuzz_rpc_method {
    const char *name; /* the method's name in the service descriptor */
    fuzz_rpc_check check;
} fuzz_rpc_method;

/* runs one input against svc; methods (n of them) name the checks. aborts
 * when an invariant of the decoding breaks (see fuzz_rpc.c) */
void fuzz_rpc_run(const ProtobufCServiceDescriptor *svc, const fuzz_rpc_method *methods, size_t n,
                  const uint8_t *data, size_t size);

#endif
