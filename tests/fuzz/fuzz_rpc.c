/*
 * invariants checked on every input (a break aborts, which libFuzzer
 * reports as a crash):
 *   - decoding fails exactly when it records a failure, and that failure is
 *     INVALID_ARGUMENT with a reason (never a crash, never a silent NULL);
 *   - a decoded request holds only UTF-8 strings at any depth: what the
 *     wire check promises every handler;
 *   - packing the decoded request and decoding that again gives the same
 *     bytes (nothing is lost or invented between the two);
 *   - a method's checks fail exactly when they record a failure, with a
 *     reason and a client-error code.
 */
#include "fuzz_rpc.h"

#include "cm_arena.h"
#include "cm_utf8.h"

#include <grpc/status.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void broken(const char *what, const char *method)
{
    fprintf(stderr, "fuzz_rpc: %s (%s)\n", what, method);
    abort();
}

static int strings_utf8(const ProtobufCMessage *m, int depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (depth > 100)
        return 1;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)m;
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which = *(const uint32_t *)(base + f->quantifier_offset);
            if (which != f->id)
                continue;
        }
        size_t n = 1;
        void *const *items = (void *const *)(base + f->offset);
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)(base + f->quantifier_offset);
            items = *(void *const *const *)(base + f->offset);
        }
        for (size_t k = 0; k < n; k++) {
            const void *v = items[k];
            if (!v)
                continue;
            if (f->type == PROTOBUF_C_TYPE_STRING) {
                if (!cm_utf8_valid(v, strlen(v)))
                    return 0;
            } else if (!strings_utf8(v, depth + 1)) {
                return 0;
            }
        }
    }
    return 1;
}

static void round_trip(const ProtobufCMessage *in, const char *method)
{
    size_t n = protobuf_c_message_get_packed_size(in);
    uint8_t *b1 = malloc(n ? n : 1);
    if (!b1)
        return;
    if (protobuf_c_message_pack(in, b1) != n)
        broken("packed size differs from the size announced", method);
    ProtobufCMessage *again = protobuf_c_message_unpack(in->descriptor, NULL, n, b1);
    if (!again)
        broken("a packed request does not decode", method);
    size_t n2 = protobuf_c_message_get_packed_size(again);
    uint8_t *b2 = malloc(n2 ? n2 : 1);
    if (b2) {
        protobuf_c_message_pack(again, b2);
        if (n2 != n || memcmp(b1, b2, n) != 0)
            broken("pack, unpack, pack changed the bytes", method);
    }
    free(b2);
    protobuf_c_message_free_unpacked(again, NULL);
    free(b1);
}

void fuzz_rpc_run(const ProtobufCServiceDescriptor *svc, const fuzz_rpc_method *methods, size_t n,
                  const uint8_t *data, size_t size)
{
    if (size < 1 || svc->n_methods == 0)
        return;
    const ProtobufCMethodDescriptor *md = &svc->methods[data[0] % svc->n_methods];
    cm_rpc_ctx *ctx = cm_rpc_ctx_detached_new("fuzz-tenant");
    if (!ctx)
        return;
    ProtobufCMessage *in;
    const char *reason;
    int rc = cm_rpc_ctx_decode(ctx, md->input, data + 1, size - 1, &in);
    int code = cm_rpc_ctx_code(ctx, &reason, NULL);
    if ((rc == 0) != (in != NULL) || (rc == 0) != (code == GRPC_STATUS_OK))
        broken("decode's result and its recorded failure disagree", md->name);
    if (rc && (code != GRPC_STATUS_INVALID_ARGUMENT || !reason))
        broken("a refused request is not INVALID_ARGUMENT with a reason", md->name);
    if (in) {
        if (!strings_utf8(in, 0))
            broken("a decoded string is not UTF-8", md->name);
        round_trip(in, md->name);
        for (size_t i = 0; i < n; i++) {
            if (strcmp(methods[i].name, md->name) != 0)
                continue;
            rc = methods[i].check(ctx, in);
            code = cm_rpc_ctx_code(ctx, &reason, NULL);
            if ((rc == 0) != (code == GRPC_STATUS_OK))
                broken("the checks' result and their recorded failure disagree", md->name);
            if (rc && (!reason || (code != GRPC_STATUS_INVALID_ARGUMENT &&
                                   code != GRPC_STATUS_RESOURCE_EXHAUSTED)))
                broken("refused without a reason or with a server-side code", md->name);
        }
    }
    cm_rpc_ctx_detached_free(ctx);
}
