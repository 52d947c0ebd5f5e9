/*
 * cm_rpc_client: unary calls to another gRPC service (order -> inventory).
 *
 * one channel per target, shared by all threads (gRPC channels are
 * thread-safe). a call blocks the calling thread until the reply, the
 * deadline, or the last retry. calls flagged idempotent are retried on
 * UNAVAILABLE with jittered exponential backoff while the deadline allows;
 * others are tried once (the server may have acted on them).
 */
#ifndef CM_RPC_CLIENT_H
#define CM_RPC_CLIENT_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct cm_rpc_client cm_rpc_client;
struct cm_rpc_ctx;

typedef struct cm_rpc_client_opts {
    const char *target;       /* "host:port" */
    int max_attempts;         /* for idempotent calls; 0: 4 */
    int backoff_initial_ms;   /* 0: 20 ms */
    int backoff_max_ms;       /* 0: 500 ms */
    size_t max_message_bytes; /* 0: 4 MiB */
    /* TLS: ca file turns TLS on; cert+key add a client certificate (mTLS) */
    const char *tls_ca_file;
    const char *tls_cert_file;
    const char *tls_key_file;
    /* set: every call carries "authorization: Bearer <the file's token>",
     * this service's own, in place of any authorization in its metadata
     * (see cm_rpc_client_reload_token). read at cm_rpc_client_new. */
    const char *token_file;
} cm_rpc_client_opts;

typedef struct cm_rpc_md {
    const char *key;
    const char *value;
} cm_rpc_md;

#define CM_RPC_STATUS_DETAILS_MAX 4096 /* bytes of grpc-status-details-bin kept */
#define CM_RPC_STATUS_META_MAX 8       /* ErrorInfo metadata pairs kept */

/* what came back. reason, domain, meta and field come from the
 * grpc-status-details-bin trailer (google.rpc.ErrorInfo reason, domain and
 * metadata, first BadRequest field), empty if absent; detail_types lists the
 * type URL of every detail. strings longer than their buffer are cut.
 *
 * details_bin holds the trailer itself, the serialized google.rpc.Status,
 * byte for byte, so a service can pass a failure on with every typed detail
 * (cm_rpc_fail_forward). a trailer larger than CM_RPC_STATUS_DETAILS_MAX is
 * not kept at all (a cut protobuf is worthless): details_len is 0 and
 * details_truncated 1, and the parsed fields above are all that is left.
 * the struct is about 7.5 KiB: fine on a thread's stack, not in an array. */
typedef struct cm_rpc_status {
    int code; /* grpc_status_code */
    char message[256];
    char reason[64];
    char field[128];
    int attempts;
    /* type URLs of every detail in google.rpc.Status, in order (at most 8) */
    int n_details;
    char detail_types[8][96];
    /* ErrorInfo domain: who refused ("inventory.commerce") */
    char domain[64];
    /* ErrorInfo metadata in wire order; meta_truncated when there were more */
    int n_meta;
    int meta_truncated;
    struct {
        char key[64];
        char value[192];
    } meta[CM_RPC_STATUS_META_MAX];
    /* the raw google.rpc.Status of a failed call (see above) */
    size_t details_len;
    int details_truncated;
    unsigned char details_bin[CM_RPC_STATUS_DETAILS_MAX];
} cm_rpc_status;

/* fills st (zeroed by the caller) from a packed google.rpc.Status: what
 * grpc-status-details-bin carries, or one item of a batch call's reply
 * (BatchReserveResult.error). code and message come from the Status when
 * st->code is still 0. */
void cm_rpc_status_parse(const uint8_t *bin, size_t len, cm_rpc_status *st);

/* the ErrorInfo metadata value for key, or NULL. */
const char *cm_rpc_status_meta(const cm_rpc_status *st, const char *key);

enum { CM_RPC_CALL_IDEMPOTENT = 1 << 0 };

int cm_rpc_client_new(cm_rpc_client **out, const cm_rpc_client_opts *o, char *err, size_t errlen);
void cm_rpc_client_free(cm_rpc_client *c);

/* re-reads the token file when its inode, size or mtime changed (always
 * when force is set), from one thread at a time: a timer, once a second.
 * calls in flight keep the token they started with. returns 0 (no token
 * file, or unchanged), 1 (the new token is in use) or a negative CM_E*
 * with one line in err that names the file, never the token; the old
 * token stays in use. a token file holds one line: the token, without
 * "Bearer", at most CM_AUTH_TOKEN_MAX bytes of visible ASCII. */
int cm_rpc_client_reload_token(cm_rpc_client *c, int force, char *err, size_t errlen);

/* calls method ("/pkg.Service/Method") with req. on OK, *resp is unpacked
 * with alloc (NULL: malloc; free it with protobuf_c_message_free_unpacked)
 * and 0 is returned. otherwise *resp is NULL, st says why and the return
 * value is the CM_E* matching the status code (CM_EUNAVAIL for
 * UNAVAILABLE, CM_ETIMEDOUT for DEADLINE_EXCEEDED, ...). timeout_ms bounds
 * the whole call including retries. md: extra request metadata (may be
 * NULL). */
int cm_rpc_call(cm_rpc_client *c, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, ProtobufCAllocator *alloc,
                ProtobufCMessage **resp, const cm_rpc_md *md, size_t nmd, int timeout_ms,
                unsigned flags, cm_rpc_status *st);

/* cm_rpc_call with the request already encoded: data[0..len) is sent as
 * is, whatever it holds (a proxy's payload, a test's hostile bytes). */
int cm_rpc_call_bytes(cm_rpc_client *c, const char *method, const uint8_t *data, size_t len,
                      const ProtobufCMessageDescriptor *resp_desc, ProtobufCAllocator *alloc,
                      ProtobufCMessage **resp, const cm_rpc_md *md, size_t nmd, int timeout_ms,
                      unsigned flags, cm_rpc_status *st);

/* fills out[] with the metadata a service forwards downstream from the call
 * it is handling: authorization, x-tenant-id, x-request-id, traceparent.
 * returns how many entries were written (at most max). */
size_t cm_rpc_ctx_propagate(struct cm_rpc_ctx *ctx, cm_rpc_md *out, size_t max);

/* maps a grpc status code to the CM_E* a caller would return. */
int cm_rpc_code_to_err(int grpc_code);

#endif
