#include "cm_rpc_client.h"
#include "cm_auth.h"
#include "cm_err.h"
#include "cm_file.h"
#include "cm_log.h"
#include "cm_rpc.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "google/protobuf/any.pb-c.h"
#include "google/rpc/error_details.pb-c.h"
#include "google/rpc/status.pb-c.h"

#define TLS_FILE_MAX (1u << 20) /* certificate chains and keys are small */

#define BEARER_MAX (CM_AUTH_TOKEN_MAX + 8) /* "Bearer " + token + NUL */

struct cm_rpc_client {
    grpc_channel *channel;
    cm_rpc_client_opts o;
    /* the service token: path, the file as last seen, and the header value
     * under mu (callers copy it out, so a reload never frees it under them) */
    char *token_path;
    cm_file_id token_seen;
    pthread_mutex_t mu;
    char *bearer;
};

/* the token file into a malloc'd "Bearer <token>" */
static int read_bearer(const char *path, char **out, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = cm_file_read(path, CM_AUTH_TOKEN_MAX + 2, &buf, &len);
    if (rc) {
        snprintf(err, errlen, "token file \"%s\": cannot read: %s", path,
                 rc == CM_ENOMEM  ? "out of memory"
                 : errno == EFBIG ? "too large"
                                  : strerror(errno));
        return rc;
    }
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
        buf[--len] = '\0';
    int ok = len > 0 && len <= CM_AUTH_TOKEN_MAX;
    for (size_t i = 0; ok && i < len; i++)
        ok = buf[i] > ' ' && buf[i] < 0x7f;
    if (!ok) {
        memset(buf, 0, len);
        free(buf);
        snprintf(err, errlen,
                 "token file \"%s\": must hold one token of 1..%d visible ASCII characters", path,
                 CM_AUTH_TOKEN_MAX);
        return CM_EINVAL;
    }
    char *b = malloc(len + 8);
    if (b)
        snprintf(b, len + 8, "Bearer %s", buf);
    memset(buf, 0, len);
    free(buf);
    if (!b) {
        snprintf(err, errlen, "token file \"%s\": out of memory", path);
        return CM_ENOMEM;
    }
    *out = b;
    return 0;
}

static void free_bearer(char *b)
{
    if (!b)
        return;
    volatile char *v = b;
    for (size_t i = 0; b[i]; i++)
        v[i] = 0;
    free(b);
}

int cm_rpc_client_reload_token(cm_rpc_client *c, int force, char *err, size_t errlen)
{
    if (!c || !c->token_path)
        return 0;
    cm_file_id id;
    if (cm_file_stat(c->token_path, &id) != 0) {
        int e = errno;
        cm_file_id gone;
        memset(&gone, 0, sizeof gone);
        if (!force && cm_file_id_eq(&gone, &c->token_seen))
            return 0;
        c->token_seen = gone;
        snprintf(err, errlen, "token file \"%s\": cannot read: %s; the old token stays in use",
                 c->token_path, strerror(e));
        return CM_EIO;
    }
    if (!force && cm_file_id_eq(&id, &c->token_seen))
        return 0;
    c->token_seen = id;
    char *b = NULL, why[300];
    int rc = read_bearer(c->token_path, &b, why, sizeof why);
    if (rc) {
        snprintf(err, errlen, "%s; the old token stays in use", why);
        return rc;
    }
    pthread_mutex_lock(&c->mu);
    char *old = c->bearer;
    c->bearer = b;
    pthread_mutex_unlock(&c->mu);
    free_bearer(old);
    return 1;
}

/* one pluck queue per thread, reused for every call that thread makes */
static pthread_key_t cq_key;
static pthread_once_t cq_once = PTHREAD_ONCE_INIT;

static void cq_destroy(void *p)
{
    grpc_completion_queue *cq = p;
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
}

static void cq_key_init(void)
{
    pthread_key_create(&cq_key, cq_destroy);
}

static grpc_completion_queue *thread_cq(void)
{
    pthread_once(&cq_once, cq_key_init);
    grpc_completion_queue *cq = pthread_getspecific(cq_key);
    if (!cq) {
        cq = grpc_completion_queue_create_for_pluck(NULL);
        pthread_setspecific(cq_key, cq);
    }
    return cq;
}

int cm_rpc_client_new(cm_rpc_client **out, const cm_rpc_client_opts *o, char *err, size_t errlen)
{
    *out = NULL;
    if (!o || !o->target || !*o->target) {
        snprintf(err, errlen, "rpc client: no target");
        return CM_EINVAL;
    }
    cm_rpc_client *c = calloc(1, sizeof *c);
    if (!c)
        return CM_ENOMEM;
    c->o = *o;
    pthread_mutex_init(&c->mu, NULL);
    if (o->token_file) {
        cm_file_stat(o->token_file, &c->token_seen);
        int rc = read_bearer(o->token_file, &c->bearer, err, errlen);
        if (rc == 0 && !(c->token_path = strdup(o->token_file)))
            rc = CM_ENOMEM;
        if (rc) {
            free_bearer(c->bearer);
            pthread_mutex_destroy(&c->mu);
            free(c);
            return rc;
        }
    }
    if (!c->o.max_attempts)
        c->o.max_attempts = 4;
    if (!c->o.backoff_initial_ms)
        c->o.backoff_initial_ms = 20;
    if (!c->o.backoff_max_ms)
        c->o.backoff_max_ms = 500;
    if (!c->o.max_message_bytes)
        c->o.max_message_bytes = 4u << 20;
    grpc_init();
    grpc_channel_credentials *creds;
    if (o->tls_ca_file) {
        char *ca = NULL, *cert = NULL, *key = NULL;
        cm_file_read(o->tls_ca_file, TLS_FILE_MAX, &ca, NULL);
        if (o->tls_cert_file)
            cm_file_read(o->tls_cert_file, TLS_FILE_MAX, &cert, NULL);
        if (o->tls_key_file)
            cm_file_read(o->tls_key_file, TLS_FILE_MAX, &key, NULL);
        if (!ca || (o->tls_cert_file && !cert) || (o->tls_key_file && !key)) {
            free(ca);
            free(cert);
            free(key);
            snprintf(err, errlen, "rpc client: could not read tls files");
            free_bearer(c->bearer);
            free(c->token_path);
            free(c);
            grpc_shutdown();
            return CM_EINVAL;
        }
        grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
        creds = grpc_ssl_credentials_create(ca, cert && key ? &pair : NULL, NULL, NULL);
        free(ca);
        free(cert);
        free(key);
    } else {
        creds = grpc_insecure_credentials_create();
    }
    grpc_arg args[] = {
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = (int)c->o.max_message_bytes},
        /* we retry ourselves, only where it is safe */
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ENABLE_RETRIES, .value.integer = 0},
        /* reconnect quickly after a dependency restarts */
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, .value.integer = 1000},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
         .value.integer = 100},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, .value.integer = 100},
    };
    grpc_channel_args cargs = {.num_args = sizeof args / sizeof args[0], .args = args};
    c->channel = grpc_channel_create(o->target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    if (!c->channel) {
        snprintf(err, errlen, "rpc client: could not create channel to %s", o->target);
        free_bearer(c->bearer);
        free(c->token_path);
        free(c);
        grpc_shutdown();
        return CM_EINVAL;
    }
    *out = c;
    return 0;
}

void cm_rpc_client_free(cm_rpc_client *c)
{
    if (!c)
        return;
    grpc_channel_destroy(c->channel);
    free_bearer(c->bearer);
    free(c->token_path);
    pthread_mutex_destroy(&c->mu);
    free(c);
    grpc_shutdown();
}

int cm_rpc_code_to_err(int code)
{
    switch (code) {
    case GRPC_STATUS_OK:
        return 0;
    case GRPC_STATUS_INVALID_ARGUMENT:
        return CM_EINVAL;
    case GRPC_STATUS_OUT_OF_RANGE:
        return CM_EINVAL;
    case GRPC_STATUS_NOT_FOUND:
        return CM_ENOTFOUND;
    case GRPC_STATUS_ALREADY_EXISTS:
        return CM_EEXIST;
    case GRPC_STATUS_FAILED_PRECONDITION:
        return CM_ESTATE;
    case GRPC_STATUS_ABORTED:
        return CM_ECONFLICT;
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
        return CM_ELIMIT;
    case GRPC_STATUS_UNAVAILABLE:
        return CM_EUNAVAIL;
    case GRPC_STATUS_DEADLINE_EXCEEDED:
        return CM_ETIMEDOUT;
    case GRPC_STATUS_UNAUTHENTICATED:
        return CM_EAUTH;
    case GRPC_STATUS_PERMISSION_DENIED:
        return CM_EPERM;
    case GRPC_STATUS_CANCELLED:
        return CM_ECANCELLED;
    }
    return CM_EINTERNAL;
}

static void copy_info(const Google__Rpc__ErrorInfo *ei, cm_rpc_status *st)
{
    snprintf(st->reason, sizeof st->reason, "%s", ei->reason);
    snprintf(st->domain, sizeof st->domain, "%s", ei->domain);
    for (size_t m = 0; m < ei->n_metadata; m++) {
        if (st->n_meta == CM_RPC_STATUS_META_MAX) {
            st->meta_truncated = 1;
            break;
        }
        snprintf(st->meta[st->n_meta].key, sizeof st->meta[0].key, "%s", ei->metadata[m]->key);
        snprintf(st->meta[st->n_meta].value, sizeof st->meta[0].value, "%s",
                 ei->metadata[m]->value);
        st->n_meta++;
    }
}

void cm_rpc_status_parse(const uint8_t *bin, size_t len, cm_rpc_status *st)
{
    /* kept whole or not at all: a cut protobuf is worthless */
    if (len <= sizeof st->details_bin) {
        memcpy(st->details_bin, bin, len);
        st->details_len = len;
    } else {
        st->details_truncated = 1;
    }
    Google__Rpc__Status *s = google__rpc__status__unpack(NULL, len, bin);
    if (!s)
        return;
    for (size_t d = 0; d < s->n_details; d++) {
        Google__Protobuf__Any *any = s->details[d];
        if (st->n_details < 8)
            snprintf(st->detail_types[st->n_details++], sizeof st->detail_types[0], "%s",
                     any->type_url);
        if (strcmp(any->type_url, "type.googleapis.com/google.rpc.ErrorInfo") == 0) {
            Google__Rpc__ErrorInfo *ei =
                google__rpc__error_info__unpack(NULL, any->value.len, any->value.data);
            if (ei) {
                copy_info(ei, st);
                google__rpc__error_info__free_unpacked(ei, NULL);
            }
        } else if (strcmp(any->type_url, "type.googleapis.com/google.rpc.BadRequest") == 0) {
            Google__Rpc__BadRequest *br =
                google__rpc__bad_request__unpack(NULL, any->value.len, any->value.data);
            if (br) {
                if (br->n_field_violations)
                    snprintf(st->field, sizeof st->field, "%s", br->field_violations[0]->field);
                google__rpc__bad_request__free_unpacked(br, NULL);
            }
        }
    }
    if (!st->code) {
        st->code = s->code;
        snprintf(st->message, sizeof st->message, "%s", s->message ? s->message : "");
    }
    google__rpc__status__free_unpacked(s, NULL);
}

static void parse_details(const grpc_metadata_array *trailers, cm_rpc_status *st)
{
    for (size_t i = 0; i < trailers->count; i++) {
        const grpc_slice *k = &trailers->metadata[i].key;
        if (grpc_slice_str_cmp(*k, "grpc-status-details-bin") != 0)
            continue;
        const grpc_slice *v = &trailers->metadata[i].value;
        cm_rpc_status_parse(GRPC_SLICE_START_PTR(*v), GRPC_SLICE_LENGTH(*v), st);
        return;
    }
}

const char *cm_rpc_status_meta(const cm_rpc_status *st, const char *key)
{
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta[i].key, key) == 0)
            return st->meta[i].value;
    return NULL;
}

static int call_once(cm_rpc_client *c, grpc_slice method, grpc_byte_buffer *req_bb,
                     const cm_rpc_md *md, size_t nmd, gpr_timespec deadline,
                     grpc_byte_buffer **resp_bb, cm_rpc_status *st)
{
    grpc_completion_queue *cq = thread_cq();
    grpc_call *call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                               method, NULL, deadline, NULL);
    if (!call) {
        st->code = GRPC_STATUS_INTERNAL;
        snprintf(st->message, sizeof st->message, "could not create call");
        return -1;
    }
    grpc_metadata send_md[16];
    size_t n_md = nmd < 16 ? nmd : 16;
    for (size_t i = 0; i < n_md; i++) {
        memset(&send_md[i], 0, sizeof send_md[i]);
        send_md[i].key = grpc_slice_from_static_string(md[i].key);
        send_md[i].value = grpc_slice_from_static_string(md[i].value);
    }
    grpc_metadata_array initial, trailing;
    grpc_metadata_array_init(&initial);
    grpc_metadata_array_init(&trailing);
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    *resp_bb = NULL;

    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = n_md;
    ops[0].data.send_initial_metadata.metadata = n_md ? send_md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = resp_bb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &details;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing;

    int tag;
    grpc_call_error e = grpc_call_start_batch(call, ops, 6, &tag, NULL);
    if (e == GRPC_CALL_OK) {
        grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    } else {
        status = GRPC_STATUS_INTERNAL;
    }
    st->code = status;
    size_t dl = GRPC_SLICE_LENGTH(details);
    if (dl >= sizeof st->message)
        dl = sizeof st->message - 1;
    memcpy(st->message, GRPC_SLICE_START_PTR(details), dl);
    st->message[dl] = '\0';
    /* a retry's status replaces the previous attempt's */
    st->reason[0] = st->field[0] = st->domain[0] = '\0';
    st->n_details = st->n_meta = st->meta_truncated = 0;
    st->details_len = 0;
    st->details_truncated = 0;
    if (status != GRPC_STATUS_OK)
        parse_details(&trailing, st);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&initial);
    grpc_metadata_array_destroy(&trailing);
    grpc_call_unref(call);
    if (status != GRPC_STATUS_OK && *resp_bb) {
        grpc_byte_buffer_destroy(*resp_bb);
        *resp_bb = NULL;
    }
    return status == GRPC_STATUS_OK ? 0 : -1;
}

static int call_slice(cm_rpc_client *c, const char *method, grpc_slice sl,
                      const ProtobufCMessageDescriptor *resp_desc, ProtobufCAllocator *alloc,
                      ProtobufCMessage **resp, const cm_rpc_md *md, size_t nmd, int timeout_ms,
                      unsigned flags, cm_rpc_status *st);

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int cm_rpc_call(cm_rpc_client *c, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, ProtobufCAllocator *alloc,
                ProtobufCMessage **resp, const cm_rpc_md *md, size_t nmd, int timeout_ms,
                unsigned flags, cm_rpc_status *st)
{
    size_t n = protobuf_c_message_get_packed_size(req);
    grpc_slice sl = grpc_slice_malloc(n);
    protobuf_c_message_pack(req, GRPC_SLICE_START_PTR(sl));
    int rc = call_slice(c, method, sl, resp_desc, alloc, resp, md, nmd, timeout_ms, flags, st);
    grpc_slice_unref(sl);
    return rc;
}

int cm_rpc_call_bytes(cm_rpc_client *c, const char *method, const uint8_t *data, size_t len,
                      const ProtobufCMessageDescriptor *resp_desc, ProtobufCAllocator *alloc,
                      ProtobufCMessage **resp, const cm_rpc_md *md, size_t nmd, int timeout_ms,
                      unsigned flags, cm_rpc_status *st)
{
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)data, len);
    int rc = call_slice(c, method, sl, resp_desc, alloc, resp, md, nmd, timeout_ms, flags, st);
    grpc_slice_unref(sl);
    return rc;
}

/* the request in sl (not taken: the caller unrefs it) */
static int call_slice(cm_rpc_client *c, const char *method, grpc_slice sl,
                      const ProtobufCMessageDescriptor *resp_desc, ProtobufCAllocator *alloc,
                      ProtobufCMessage **resp, const cm_rpc_md *md, size_t nmd, int timeout_ms,
                      unsigned flags, cm_rpc_status *st)
{
    *resp = NULL;
    memset(st, 0, sizeof *st);
    /* the service's own token replaces the caller's */
    char bearer[BEARER_MAX];
    cm_rpc_md own[16];
    if (c->token_path) {
        size_t k = 0;
        for (size_t i = 0; i < nmd && k < 15; i++)
            if (strcmp(md[i].key, "authorization") != 0)
                own[k++] = md[i];
        pthread_mutex_lock(&c->mu);
        snprintf(bearer, sizeof bearer, "%s", c->bearer);
        pthread_mutex_unlock(&c->mu);
        own[k].key = "authorization";
        own[k++].value = bearer;
        md = own;
        nmd = k;
    }
    /* copied: gRPC core may keep a static slice's pointer beyond the call
     * (a caller's buffer reused for another method was once sent on with
     * the earlier method's path) */
    grpc_slice method_slice = grpc_slice_from_copied_string(method);
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
    int attempts = (flags & CM_RPC_CALL_IDEMPOTENT) ? c->o.max_attempts : 1;
    int backoff = c->o.backoff_initial_ms;
    grpc_byte_buffer *resp_bb = NULL;
    int rc = -1;
    for (int a = 1; a <= attempts; a++) {
        st->attempts = a;
        /* a fresh buffer per attempt: gRPC core takes the slices of the
         * buffer it sends (grpc_types.h: afterwards it is "likely empty"),
         * so a retry with the same buffer would send an empty message */
        grpc_byte_buffer *req_bb = grpc_raw_byte_buffer_create(&sl, 1);
        rc = call_once(c, method_slice, req_bb, md, nmd, deadline, &resp_bb, st);
        grpc_byte_buffer_destroy(req_bb);
        if (rc == 0 || st->code != GRPC_STATUS_UNAVAILABLE || a == attempts)
            break;
        /* full jitter: sleep a random time up to the current backoff */
        unsigned r = 0;
        if (getrandom(&r, sizeof r, 0) != sizeof r)
            r = (unsigned)a * 7919u;
        int wait = 1 + (int)(r % (unsigned)backoff);
        gpr_timespec left = gpr_time_sub(deadline, gpr_now(GPR_CLOCK_MONOTONIC));
        int64_t left_ms = (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
        if (left_ms <= wait)
            break;
        sleep_ms(wait);
        backoff = backoff * 2 > c->o.backoff_max_ms ? c->o.backoff_max_ms : backoff * 2;
    }
    grpc_slice_unref(method_slice);
    if (rc != 0)
        return cm_rpc_code_to_err(st->code);
    if (!resp_bb) {
        st->code = GRPC_STATUS_INTERNAL;
        snprintf(st->message, sizeof st->message, "no reply message");
        return CM_EINTERNAL;
    }
    grpc_byte_buffer_reader r;
    grpc_byte_buffer_reader_init(&r, resp_bb);
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    grpc_byte_buffer_destroy(resp_bb);
    *resp = protobuf_c_message_unpack(resp_desc, alloc, GRPC_SLICE_LENGTH(all),
                                      GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    if (!*resp) {
        st->code = GRPC_STATUS_INTERNAL;
        snprintf(st->message, sizeof st->message, "could not parse the reply");
        return CM_EINTERNAL;
    }
    return 0;
}

size_t cm_rpc_ctx_propagate(struct cm_rpc_ctx *ctx, cm_rpc_md *out, size_t max)
{
    static const char *const keys[] = {"authorization", "x-tenant-id", "x-request-id",
                                       "traceparent"};
    size_t n = 0;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0] && n < max; i++) {
        const char *v = cm_rpc_ctx_metadata(ctx, keys[i]);
        /* the tenant the call was authenticated for, also when the caller
         * named it only in its token: a peer called with a service token
         * learns it from x-tenant-id */
        if (i == 1 && cm_rpc_ctx_tenant(ctx))
            v = cm_rpc_ctx_tenant(ctx);
        if (v) {
            out[n].key = keys[i];
            out[n].value = v;
            n++;
        }
    }
    return n;
}
