/*
 * the rpc server runtime. design note: common/README.md, "rpc server".
 *
 * one completion queue per worker thread. each worker keeps, on its own
 * queue, one outstanding grpc_server_request_registered_call per method
 * (a "slot") plus one grpc_server_request_call for unknown paths. when a
 * slot fires, the worker moves the call out of the slot, re-arms the slot at
 * once (so core can match the next call while this one runs), runs the
 * handler to completion, and starts one batch: initial metadata, message,
 * status (with details in the trailer) and close. the batch completion comes
 * back on the same queue and releases the call and its arena.
 */
#include "cm_rpc.h"
#include "cm_auth.h"
#include "cm_err.h"
#include "cm_file.h"
#include "cm_log.h"
#include "cm_pb.h"
#include "cm_ratelimit.h"
#include "cm_reflection.h"
#include "cm_rpc_client.h"
#include "cm_utf8.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/rpc/error_details.pb-c.h"
#include "google/rpc/status.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"

#define NCODES 17 /* grpc status codes 0..16 */
#define MAX_FIELD_VIOLATIONS 16
#define MAX_ERROR_META 16
#define MAX_EXTRA_DETAILS 4
#define TLS_FILE_MAX (1u << 20) /* certificate chains and keys are small */
#define STOP_POLL_MS 200        /* how often an idle worker looks at the stop flag */
/* what a status may echo of the caller's input, in bytes */
#define ECHO_MESSAGE_MAX 512
#define ECHO_FIELD_MAX 128
#define ECHO_VALUE_MAX 256
/* google.rpc.Status details, packed: base64 on the wire (x4/3), with the
 * message, under a stock client's 8 KB metadata limit */
#define DETAILS_MAX 4600
/* violations' and metadata's text together, so ErrorInfo and BadRequest
 * leave room in DETAILS_MAX */
#define ECHO_TOTAL_MAX 2560
#define ERROR_INFO_URL "type.googleapis.com/google.rpc.ErrorInfo"
/* server reflection: streams open at once (more: RESOURCE_EXHAUSTED), the
 * largest request (a symbol or file name; more: RESOURCE_EXHAUSTED), and
 * how long a stream may go without a message before it is ended */
#define RPC_REFLECTION_STREAMS 8
#define RPC_REFLECTION_REQUEST_MAX 16384
#define RPC_REFLECTION_IDLE_MS 30000
#define RPC_REFLECTION_NAMES 20

typedef struct worker worker;

typedef struct method_entry {
    char path[256];
    const ProtobufCMessageDescriptor *input;
    const ProtobufCMessageDescriptor *output;
    cm_rpc_handler handler;
    unsigned flags;
    const char *roles; /* space-separated; NULL for the built-in methods */
    void *registered;  /* grpc core's handle */
    cm_histogram *latency;
    _Atomic(cm_counter *) handled[NCODES];
} method_entry;

typedef enum {
    TAG_SLOT,
    TAG_UNKNOWN,
    TAG_FINISH,
    TAG_WATCH_SEND,
    TAG_WATCH_CLOSE,
    TAG_REFL_IO,
    TAG_REFL_CLOSE
} tag_kind;

/* internal method flag: grpc.health.v1.Health/Watch, a server stream */
#define RPC_WATCH (1u << 31)
/* internal method flag: ServerReflectionInfo, a bidirectional stream
 * registered without a payload (its messages are read by refl_*) */
#define RPC_REFLECT (1u << 30)

typedef struct refl_stream refl_stream;
typedef struct refl_tag {
    tag_kind kind;
    refl_stream *st;
} refl_tag;

/* one ServerReflectionInfo stream. only the worker whose queue the call
 * is bound to touches it: no lock. at most one io batch (receive, send or
 * status) in flight, plus RECV_CLOSE_ON_SERVER from start to end */
struct refl_stream {
    refl_tag io_tag, close_tag;
    worker *w;
    grpc_call *call;
    grpc_metadata_array md;
    enum { REFL_RECV, REFL_SEND, REFL_STATUS } phase;
    grpc_byte_buffer *in, *out;
    unsigned char *sent;  /* files sent on this stream (cm_reflection_answer) */
    struct timespec last; /* last completed message: the idle bound */
    int io_in_flight;
    int closed; /* RECV_CLOSE_ON_SERVER completed */
    int cancelled;
    int idle_cut; /* ended for idleness: cancelled once */
    grpc_slice status_slice;
    int has_status_slice;
    refl_stream *prev, *next;
};

typedef struct watcher watcher;
typedef struct watch_tag {
    tag_kind kind;
    watcher *wt;
} watch_tag;

/* one open Watch stream. every field after `w` is guarded by the server's
 * watch_mu: status changes come from any thread, completions from the
 * worker whose queue the call is bound to */
struct watcher {
    watch_tag send_tag, close_tag;
    worker *w;
    grpc_call *call;
    grpc_metadata_array md;
    int known;     /* the service asked for is hosted here */
    int last_sent; /* status in the last message, -1 before the first */
    int headers_sent;
    int send_in_flight; /* one send batch at a time */
    int finishing;      /* draining: end the stream after the last status */
    int finished;       /* status sent, or the call is gone */
    int closed;         /* RECV_CLOSE_ON_SERVER completed */
    int cancelled;
    grpc_byte_buffer *out;
    grpc_slice status_slice;
    int has_status_slice;
    watcher *prev, *next;
};

/* one outstanding request for a registered method on one worker */
typedef struct slot {
    tag_kind kind;
    worker *w;
    method_entry *m;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
} slot;

/* one outstanding request for anything unregistered */
typedef struct unknown_slot {
    tag_kind kind;
    worker *w;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
} unknown_slot;

struct cm_rpc_ctx {
    tag_kind kind; /* TAG_FINISH: the send batch's tag */
    worker *w;
    method_entry *m; /* NULL for unknown methods */
    struct cm_rpc_ctx *next_free;
    cm_arena *arena;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_byte_buffer *response;
    struct timespec t0;
    int cancelled;
    const char *unknown_path;

    /* caller */
    const char *tenant;
    cm_auth_principal *principal;
    const char *merchant_scope; /* see authorize() */
    const char *channel_scope;

    /* outcome */
    int code;
    const char *message;
    const char *reason;
    const char *detail; /* for the log only, never sent */
    Google__Rpc__BadRequest__FieldViolation *violations[MAX_FIELD_VIOLATIONS];
    size_t n_violations;
    Google__Rpc__ErrorInfo__MetadataEntry *meta[MAX_ERROR_META];
    size_t n_meta;
    size_t echo_bytes; /* of violations and metadata, against ECHO_TOTAL_MAX */
    Google__Protobuf__Any *extra[MAX_EXTRA_DETAILS]; /* cm_rpc_fail_detail */
    size_t n_extra;
    const char *domain; /* ErrorInfo domain when not ours (a forwarded failure) */
    /* cm_rpc_fail_forward: the downstream's details, sent as they came */
    Google__Protobuf__Any **fwd;
    size_t n_fwd;

    /* what the send batch references until it completes */
    grpc_slice status_slice;
    grpc_metadata trailer;
    int has_trailer;
};

struct worker {
    int index;
    cm_rpc_server *s;
    grpc_completion_queue *cq;
    pthread_t thread;
    slot *slots;
    unknown_slot unknown;
    void *state; /* worker_init's result */
    cm_rpc_ctx *free_calls;
    int init_failed;
    refl_stream *streams; /* open reflection streams bound to this queue */
    struct timespec last_sweep;
};

struct cm_rpc_server {
    grpc_server *server;
    cm_rpc_server_opts o;
    char *listen;
    char *domain;
    int port;
    method_entry *methods;
    size_t nmethods, capmethods;
    worker *workers;
    int nworkers;
    cm_metrics *metrics;
    cm_gauge *inflight;
    cm_counter *unimplemented;
    atomic_int serving;
    atomic_int draining;
    atomic_int stop_workers; /* each worker shuts its own queue down */
    int started;
    int stopped;
    /* start handshake: workers initialise, then wait for go */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready_count;
    int go; /* 1 serve, -1 abort */
    /* open health Watch streams */
    pthread_mutex_t watch_mu;
    watcher *watchers;
    /* names for health Check */
    const char *services[16];
    size_t nservices;
    /* server reflection (opts.reflection): the index, the streams open,
     * and what list_services answers, sorted */
    cm_reflection *refl;
    atomic_int refl_open;
    const char *refl_names[RPC_REFLECTION_NAMES];
    size_t nrefl_names;
};

static const char *const code_names[NCODES] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

/* the ErrorInfo reason of a failure that named none (cm_rpc_fail with a
 * NULL reason): for each code the catalogue's reason that says the least
 * beyond the code. every reason sent is a name of error_reason.proto
 * (scripts/check_error_reasons.py reads this table too) */
static const char *const default_reasons[NCODES] = {
    [GRPC_STATUS_CANCELLED] = "SHUTTING_DOWN",
    [GRPC_STATUS_UNKNOWN] = "INTERNAL",
    [GRPC_STATUS_INVALID_ARGUMENT] = "INVALID_ARGUMENT",
    [GRPC_STATUS_DEADLINE_EXCEEDED] = "DEADLINE_EXCEEDED",
    [GRPC_STATUS_NOT_FOUND] = "RESOURCE_NOT_FOUND",
    [GRPC_STATUS_ALREADY_EXISTS] = "IDEMPOTENCY_KEY_REUSED",
    [GRPC_STATUS_PERMISSION_DENIED] = "ROLE_REQUIRED",
    [GRPC_STATUS_RESOURCE_EXHAUSTED] = "RATE_LIMITED",
    [GRPC_STATUS_FAILED_PRECONDITION] = "ILLEGAL_STATE_TRANSITION",
    [GRPC_STATUS_ABORTED] = "CONCURRENT_MODIFICATION",
    [GRPC_STATUS_OUT_OF_RANGE] = "INVALID_ARGUMENT",
    [GRPC_STATUS_UNIMPLEMENTED] = "UNIMPLEMENTED",
    [GRPC_STATUS_INTERNAL] = "INTERNAL",
    [GRPC_STATUS_UNAVAILABLE] = "DEPENDENCY_UNAVAILABLE",
    [GRPC_STATUS_DATA_LOSS] = "INTERNAL",
    [GRPC_STATUS_UNAUTHENTICATED] = "CREDENTIALS_INVALID",
};

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t errlen, const char *fmt,
                                                          ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int64_t elapsed_ns(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)(t.tv_sec - t0->tv_sec) * 1000000000 + (t.tv_nsec - t0->tv_nsec);
}

/* ---- health ---- */

static int health_check(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Grpc__Health__V1__HealthCheckRequest *req = (const void *)in;
    Grpc__Health__V1__HealthCheckResponse *resp = (void *)out;
    cm_rpc_server *s = ctx->w->s;
    int known = req->service[0] == '\0';
    for (size_t i = 0; !known && i < s->nservices; i++)
        known = strcmp(req->service, s->services[i]) == 0;
    if (!known)
        return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "SERVICE_UNKNOWN", "unknown service");
    resp->status = cm_rpc_server_serving(s)
                       ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                       : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    return 0;
}

/* never called: on_slot hands Watch calls to watch_start */
static int health_watch(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    (void)in;
    (void)out;
    return cm_rpc_fail(ctx, GRPC_STATUS_INTERNAL, "INTERNAL", "watch is a stream");
}

static const cm_rpc_method health_methods[] = {
    {"Check", health_check, CM_RPC_NO_TENANT, NULL},
    {"Watch", health_watch, CM_RPC_NO_TENANT | RPC_WATCH, NULL},
};

/* never called: on_slot hands reflection calls to refl_start */
static int reflection_info(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    (void)in;
    (void)out;
    return cm_rpc_fail(ctx, GRPC_STATUS_INTERNAL, "INTERNAL", "reflection is a stream");
}

static const cm_rpc_method reflection_methods[] = {
    {"ServerReflectionInfo", reflection_info, CM_RPC_NO_TENANT | RPC_REFLECT, NULL},
};

/* ---- server setup ---- */

int cm_rpc_server_new(cm_rpc_server **out, const cm_rpc_server_opts *o, char *err, size_t errlen)
{
    *out = NULL;
    if (!o || !o->listen || o->workers < 1 || o->workers > 256) {
        set_err(err, errlen, "rpc: invalid options");
        return CM_EINVAL;
    }
    if (!o->tls_cert_file != !o->tls_key_file) {
        set_err(err, errlen, "rpc: tls certificate and key must be given together");
        return CM_EINVAL;
    }
    cm_rpc_server *s = calloc(1, sizeof *s);
    if (!s)
        return CM_ENOMEM;
    s->o = *o;
    s->listen = strdup(o->listen);
    s->domain = strdup(o->error_domain ? o->error_domain : "commerce");
    s->metrics = o->metrics ? o->metrics : cm_metrics_default();
    s->nworkers = o->workers;
    if (!s->o.max_message_bytes)
        s->o.max_message_bytes = 4u << 20;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_mutex_init(&s->watch_mu, NULL);
    atomic_init(&s->serving, 1);
    atomic_init(&s->draining, 0);
    atomic_init(&s->refl_open, 0);
    if (!s->listen || !s->domain) {
        cm_rpc_server_free(s);
        return CM_ENOMEM;
    }
    s->inflight = cm_metrics_gauge(s->metrics, "rpc_server_in_flight", "calls being handled", NULL);
    s->unimplemented = cm_metrics_counter(s->metrics, "rpc_server_unimplemented_total",
                                          "calls to unknown methods", NULL);

    grpc_init();
    grpc_arg args[] = {
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = (int)s->o.max_message_bytes},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
         .value.integer = (int)s->o.max_message_bytes},
    };
    grpc_channel_args cargs = {.num_args = 2, .args = args};
    s->server = grpc_server_create(&cargs, NULL);
    if (!s->server) {
        set_err(err, errlen, "rpc: could not create server");
        cm_rpc_server_free(s);
        return CM_EINTERNAL;
    }
    int rc = cm_rpc_server_add_service(s, &grpc__health__v1__health__descriptor, health_methods, 2,
                                       err, errlen);
    if (rc) {
        cm_rpc_server_free(s);
        return rc;
    }
    s->nservices = 0; /* health itself is not listed; "" stands for the server */
    *out = s;
    return 0;
}

int cm_rpc_server_add_service(cm_rpc_server *s, const ProtobufCServiceDescriptor *svc,
                              const cm_rpc_method *methods, size_t n, char *err, size_t errlen)
{
    if (s->started) {
        set_err(err, errlen, "rpc: add_service after start");
        return CM_ESTATE;
    }
    if (s->nmethods + n > s->capmethods) {
        /* entries are referenced by pointer from slots: grow only before start */
        size_t cap = s->capmethods ? s->capmethods * 2 : 32;
        while (cap < s->nmethods + n)
            cap *= 2;
        method_entry *nm = realloc(s->methods, cap * sizeof *nm);
        if (!nm)
            return CM_ENOMEM;
        s->methods = nm;
        s->capmethods = cap;
    }
    for (size_t i = 0; i < n; i++) {
        const ProtobufCMethodDescriptor *md =
            protobuf_c_service_descriptor_get_method_by_name(svc, methods[i].name);
        if (!md || !methods[i].handler) {
            set_err(err, errlen, "rpc: no method %s in the service descriptor", methods[i].name);
            return CM_EINVAL;
        }
        method_entry *e = &s->methods[s->nmethods];
        memset(e, 0, sizeof *e);
        int len = snprintf(e->path, sizeof e->path, "/%s/%s", svc->name, md->name);
        if (len < 0 || (size_t)len >= sizeof e->path) {
            set_err(err, errlen, "rpc: method path too long: %s", md->name);
            return CM_EINVAL;
        }
        e->input = md->input;
        e->output = md->output;
        e->handler = methods[i].handler;
        e->flags = methods[i].flags;
        e->roles = methods[i].roles;
        if (!(e->flags & CM_RPC_NO_TENANT) &&
            (!cm_rpc_method_class(e->flags) || !e->roles || !e->roles[0])) {
            set_err(err, errlen, "rpc: %s needs a class (CM_RPC_READ/WRITE/ADMIN) and roles",
                    e->path);
            return CM_EINVAL;
        }
        /* a bidirectional stream reads its own messages */
        grpc_server_register_method_payload_handling payload =
            e->flags & RPC_REFLECT ? GRPC_SRM_PAYLOAD_NONE
                                   : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER;
        e->registered = grpc_server_register_method(s->server, e->path, NULL, payload, 0);
        if (!e->registered) {
            set_err(err, errlen, "rpc: could not register %s (duplicate?)", e->path);
            return CM_EINVAL;
        }
        char labels[320];
        snprintf(labels, sizeof labels, "method=\"%s\"", e->path);
        e->latency = cm_metrics_histogram(s->metrics, "rpc_server_handling_seconds",
                                          "time from call arrival to status sent", labels,
                                          cm_metrics_latency_buckets, cm_metrics_latency_nbuckets);
        s->nmethods++;
    }
    if (s->nservices < sizeof s->services / sizeof s->services[0])
        s->services[s->nservices++] = svc->name;
    return 0;
}

static grpc_server_credentials *server_credentials(cm_rpc_server *s, char *err, size_t errlen)
{
    if (!s->o.tls_cert_file)
        return grpc_insecure_server_credentials_create();
    char *cert = NULL, *key = NULL, *ca = NULL;
    cm_file_read(s->o.tls_cert_file, TLS_FILE_MAX, &cert, NULL);
    cm_file_read(s->o.tls_key_file, TLS_FILE_MAX, &key, NULL);
    if (s->o.tls_client_ca_file)
        cm_file_read(s->o.tls_client_ca_file, TLS_FILE_MAX, &ca, NULL);
    grpc_server_credentials *creds = NULL;
    if (!cert || !key || (s->o.tls_client_ca_file && !ca)) {
        set_err(err, errlen, "rpc: could not read tls files");
    } else {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
        creds = grpc_ssl_server_credentials_create_ex(
            ca, &pair, 1,
            ca ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
               : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
            NULL);
        if (!creds)
            set_err(err, errlen, "rpc: invalid tls certificate or key");
    }
    free(cert);
    free(key);
    free(ca);
    return creds;
}

/* ---- per-call state ---- */

static cm_rpc_ctx *call_get(worker *w)
{
    cm_rpc_ctx *c = w->free_calls;
    if (c) {
        w->free_calls = c->next_free;
        cm_arena *a = c->arena;
        memset(c, 0, sizeof *c);
        c->arena = a;
    } else {
        c = calloc(1, sizeof *c);
        if (!c)
            return NULL;
        c->arena = cm_arena_new(16384);
        if (!c->arena) {
            free(c);
            return NULL;
        }
    }
    c->kind = TAG_FINISH;
    c->w = w;
    c->code = GRPC_STATUS_OK;
    clock_gettime(CLOCK_MONOTONIC, &c->t0);
    return c;
}

static void call_put(worker *w, cm_rpc_ctx *c)
{
    if (c->call)
        grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->md);
    if (c->payload)
        grpc_byte_buffer_destroy(c->payload);
    if (c->response)
        grpc_byte_buffer_destroy(c->response);
    grpc_slice_unref(c->status_slice);
    if (c->has_trailer)
        grpc_slice_unref(c->trailer.value);
    cm_arena_reset(c->arena);
    c->next_free = w->free_calls;
    w->free_calls = c;
}

static void free_call_list(cm_rpc_ctx *c)
{
    while (c) {
        cm_rpc_ctx *next = c->next_free;
        cm_arena_free(c->arena);
        free(c);
        c = next;
    }
}

static cm_counter *handled_counter(cm_rpc_server *s, method_entry *m, int code)
{
    if (code < 0 || code >= NCODES)
        code = GRPC_STATUS_UNKNOWN;
    cm_counter *c = atomic_load_explicit(&m->handled[code], memory_order_acquire);
    if (!c) {
        char labels[360];
        snprintf(labels, sizeof labels, "method=\"%s\",code=\"%s\"", m->path, code_names[code]);
        c = cm_metrics_counter(s->metrics, "rpc_server_handled_total",
                               "calls completed, by method and status code", labels);
        atomic_store_explicit(&m->handled[code], c, memory_order_release);
    }
    return c;
}

/* ---- requesting calls ---- */

static void arm_slot(slot *sl)
{
    cm_rpc_server *s = sl->w->s;
    if (atomic_load(&s->draining))
        return;
    sl->call = NULL;
    sl->payload = NULL;
    grpc_metadata_array_init(&sl->md);
    /* core wants no payload pointer for a method registered without one */
    grpc_byte_buffer **payload = sl->m->flags & RPC_REFLECT ? NULL : &sl->payload;
    grpc_call_error e =
        grpc_server_request_registered_call(s->server, sl->m->registered, &sl->call, &sl->deadline,
                                            &sl->md, payload, sl->w->cq, sl->w->cq, sl);
    if (e != GRPC_CALL_OK)
        cm_log_error("could not request call", "method", sl->m->path, NULL);
}

static void arm_unknown(unknown_slot *u)
{
    cm_rpc_server *s = u->w->s;
    if (atomic_load(&s->draining))
        return;
    u->call = NULL;
    grpc_call_details_init(&u->details);
    grpc_metadata_array_init(&u->md);
    grpc_call_error e =
        grpc_server_request_call(s->server, &u->call, &u->details, &u->md, u->w->cq, u->w->cq, u);
    if (e != GRPC_CALL_OK)
        cm_log_error("could not request unregistered call", NULL);
}

/* ---- status details ---- */

static void pack_any(cm_arena *a, Google__Protobuf__Any *any, const char *type,
                     const ProtobufCMessage *msg)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = cm_arena_alloc(a, n ? n : 1);
    if (!buf)
        return;
    protobuf_c_message_pack(msg, buf);
    any->type_url = (char *)type;
    any->value.data = buf;
    any->value.len = n;
}

/* the failure as a google.rpc.Status, packed into the call's arena; NULL
 * (and *len 0) out of memory */
static uint8_t *pack_status(cm_rpc_ctx *c, Google__Protobuf__Any **details, size_t ndetails,
                            size_t *len)
{
    Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
    st.code = c->code;
    st.message = (char *)(c->message ? c->message : "");
    st.n_details = ndetails;
    st.details = details;
    size_t n = protobuf_c_message_get_packed_size(&st.base);
    uint8_t *buf = cm_arena_alloc(c->arena, n ? n : 1);
    *len = buf ? protobuf_c_message_pack(&st.base, buf) : 0;
    return buf;
}

/* the failure as grpc-status-details-bin carries it, packed in the call's
 * arena: google.rpc.Status{code, message, details: [ErrorInfo, BadRequest?,
 * extra...]}, or a forwarded status's details */
static uint8_t *build_status(cm_rpc_ctx *c, size_t *len)
{
    cm_arena *a = c->arena;
    Google__Rpc__ErrorInfo info = GOOGLE__RPC__ERROR_INFO__INIT;
    info.reason = (char *)(c->reason ? c->reason : default_reasons[c->code]);
    info.domain = (char *)(c->domain ? c->domain : c->w->s->domain);
    info.n_metadata = c->n_meta;
    info.metadata = c->meta;

    Google__Protobuf__Any any_info = GOOGLE__PROTOBUF__ANY__INIT;
    Google__Protobuf__Any any_bad = GOOGLE__PROTOBUF__ANY__INIT;
    Google__Protobuf__Any *details[2 + MAX_EXTRA_DETAILS] = {&any_info, &any_bad};
    pack_any(a, &any_info, ERROR_INFO_URL, &info.base);
    if (c->fwd) {
        /* the downstream's details byte for byte; ours in front only when
         * it sent no ErrorInfo, so every failure carries one */
        int has_info = 0;
        for (size_t i = 0; i < c->n_fwd; i++)
            has_info |= c->fwd[i]->type_url && strcmp(c->fwd[i]->type_url, ERROR_INFO_URL) == 0;
        Google__Protobuf__Any **d = cm_arena_alloc(a, (c->n_fwd + 1) * sizeof *d);
        if (d) {
            size_t n = 0;
            if (!has_info)
                d[n++] = &any_info;
            for (size_t i = 0; i < c->n_fwd; i++)
                d[n++] = c->fwd[i];
            return pack_status(c, d, n, len);
        }
    }
    size_t ndetails = 1;
    if (c->n_violations) {
        Google__Rpc__BadRequest bad = GOOGLE__RPC__BAD_REQUEST__INIT;
        bad.n_field_violations = c->n_violations;
        bad.field_violations = c->violations;
        pack_any(a, &any_bad, "type.googleapis.com/google.rpc.BadRequest", &bad.base);
        ndetails = 2;
    }
    size_t size = any_info.value.len + any_bad.value.len;
    for (size_t i = 0; i < c->n_extra; i++) {
        /* typed details are the first thing given up for room */
        if (size + c->extra[i]->value.len > DETAILS_MAX) {
            cm_log_warn("status detail dropped: the trailers would be too large", "method",
                        c->m ? c->m->path : "-", "type", c->extra[i]->type_url, NULL);
            continue;
        }
        size += c->extra[i]->value.len;
        details[ndetails++] = c->extra[i];
    }
    if (size > DETAILS_MAX && c->n_violations > 1) {
        /* the first bad field is named in the message as well */
        Google__Rpc__BadRequest bad = GOOGLE__RPC__BAD_REQUEST__INIT;
        bad.n_field_violations = 1;
        bad.field_violations = c->violations;
        pack_any(a, &any_bad, "type.googleapis.com/google.rpc.BadRequest", &bad.base);
    }
    return pack_status(c, details, ndetails, len);
}

static void build_trailer(cm_rpc_ctx *c)
{
    size_t n = 0;
    uint8_t *buf = build_status(c, &n);
    if (!buf)
        return; /* out of memory: the status goes without its details */
    c->trailer.key = grpc_slice_from_static_string("grpc-status-details-bin");
    c->trailer.value = grpc_slice_from_copied_buffer((const char *)buf, n);
    c->has_trailer = 1;
}

static void start_send(cm_rpc_ctx *c)
{
    grpc_op ops[5];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    /* initial metadata goes out even on errors: with gRPC core 1.51 a
     * trailers-only reply that carries grpc-status-details-bin never
     * reached the client (it timed out), while headers + trailers work */
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    n++;
    if (c->code == GRPC_STATUS_OK && c->response) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->response;
        n++;
    } else if (c->code != GRPC_STATUS_OK) {
        build_trailer(c);
    }
    c->status_slice = grpc_slice_from_copied_string(c->message ? c->message : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)c->code;
    ops[n].data.send_status_from_server.status_details = &c->status_slice;
    ops[n].data.send_status_from_server.trailing_metadata_count = c->has_trailer ? 1 : 0;
    ops[n].data.send_status_from_server.trailing_metadata = c->has_trailer ? &c->trailer : NULL;
    n++;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n].data.recv_close_on_server.cancelled = &c->cancelled;
    n++;
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, c, NULL);
    if (e != GRPC_CALL_OK) {
        /* the call is unusable; nothing will come back on the queue */
        cm_log_error("could not send reply", "method", c->m ? c->m->path : c->unknown_path, NULL);
        cm_gauge_add(c->w->s->inflight, -1);
        call_put(c->w, c);
    }
}

/* ---- dispatch ---- */

static const char *md_lookup(cm_rpc_ctx *c, const char *key)
{
    size_t klen = strlen(key);
    for (size_t i = 0; i < c->md.count; i++) {
        const grpc_slice *k = &c->md.metadata[i].key;
        if (GRPC_SLICE_LENGTH(*k) == klen && memcmp(GRPC_SLICE_START_PTR(*k), key, klen) == 0) {
            const grpc_slice *v = &c->md.metadata[i].value;
            return cm_arena_strndup(c->arena, (const char *)GRPC_SLICE_START_PTR(*v),
                                    GRPC_SLICE_LENGTH(*v));
        }
    }
    return NULL;
}

/* 1 when the space-separated list holds word */
static int list_has(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return 1;
    return 0;
}

/* the method's roles against the verified token's: one is needed; a caller
 * that holds only scoped ones (merchant, channel) is limited to its scope.
 * returns 0 or a failure already recorded */
static int authorize(cm_rpc_ctx *c)
{
    const char *allowed = c->m->roles;
    if (!allowed)
        return 0; /* built-in methods: health, reflection */
    const cm_auth_principal *p = c->principal;
    int merchant = 0, channel = 0;
    for (int i = 0; i < p->nroles && i < CM_AUTH_ROLES_MAX; i++) {
        const char *r = p->roles[i];
        if (!list_has(allowed, r))
            continue;
        if (strcmp(r, "merchant") == 0)
            merchant = 1;
        else if (strcmp(r, "channel") == 0)
            channel = 1;
        else
            return 0; /* an unscoped role: the tenant's whole data */
    }
    if (merchant) {
        c->merchant_scope = p->merchant;
        return 0;
    }
    if (channel) {
        c->channel_scope = p->channel;
        return 0;
    }
    int f = cm_rpc_fail(c, GRPC_STATUS_PERMISSION_DENIED, "ROLE_REQUIRED",
                        cm_arena_printf(c->arena, "this call needs one of the roles: %s", allowed));
    cm_rpc_fail_meta(c, "roles", allowed);
    /* "role": the first (most privileged) of them, as before the list */
    cm_rpc_fail_meta(c, "role", cm_arena_strndup(c->arena, allowed, strcspn(allowed, " ")));
    return f;
}

/* establishes the caller's tenant and checks its roles; returns 0 or a
 * failure already recorded */
static int authenticate(cm_rpc_ctx *c)
{
    cm_rpc_server *s = c->w->s;
    const char *xtid = md_lookup(c, "x-tenant-id");
    int need = !(c->m->flags & CM_RPC_NO_TENANT);
    if (!s->o.auth) {
        if (!xtid) {
            if (!need)
                return 0;
            return cm_rpc_fail_field(c, "metadata.x-tenant-id",
                                     "the x-tenant-id header is required");
        }
        if (!cm_auth_tenant_valid(xtid))
            return cm_rpc_fail_field(c, "metadata.x-tenant-id",
                                     "must be 1-64 characters of [A-Za-z0-9._-]");
        c->tenant = xtid;
        return 0;
    }
    const char *authz = md_lookup(c, "authorization");
    if (!authz && !need)
        return 0;
    c->principal = cm_arena_calloc(c->arena, 1, sizeof *c->principal);
    if (!c->principal)
        return cm_rpc_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "OUT_OF_MEMORY", "out of memory");
    char why[160];
    int rc = cm_auth_verify(s->o.auth, authz, xtid, c->principal, why, sizeof why);
    if (rc == CM_EPERM)
        return cm_rpc_fail(c, GRPC_STATUS_PERMISSION_DENIED, "TENANT_MISMATCH",
                           cm_arena_strdup(c->arena, why));
    if (rc)
        return cm_rpc_fail(c, GRPC_STATUS_UNAUTHENTICATED,
                           authz ? "CREDENTIALS_INVALID" : "CREDENTIALS_MISSING",
                           cm_arena_strdup(c->arena, why));
    c->tenant = c->principal->tenant;
    return authorize(c);
}

/* the tenant's bucket for the method's class, before the request is
 * decoded or a handler runs: a refused call costs next to nothing. health
 * and reflection have no class and are never limited. returns 0 or a
 * failure already recorded */
static int rate_class(const cm_rpc_ctx *c, cm_ratelimit_class *cls)
{
    switch (c->m ? c->m->flags & (CM_RPC_READ | CM_RPC_WRITE | CM_RPC_ADMIN) : 0) {
    case CM_RPC_READ:
        *cls = CM_RATELIMIT_READ;
        return 1;
    case CM_RPC_WRITE:
        *cls = CM_RATELIMIT_WRITE;
        return 1;
    case CM_RPC_ADMIN:
        *cls = CM_RATELIMIT_ADMIN;
        return 1;
    }
    return 0;
}

void cm_rpc_ctx_charge(cm_rpc_ctx *ctx, unsigned n)
{
    cm_ratelimit_class cls;
    if (ctx->w && ctx->w->s->o.ratelimit && ctx->tenant && rate_class(ctx, &cls))
        cm_ratelimit_charge(ctx->w->s->o.ratelimit, ctx->tenant, cls, n);
}

static int rate_limit(cm_rpc_ctx *c)
{
    cm_ratelimit *rl = c->w->s->o.ratelimit;
    cm_ratelimit_class cls;
    if (!rl || !c->tenant || !rate_class(c, &cls))
        return 0;
    cm_ratelimit_refusal why;
    if (cm_ratelimit_take(rl, c->tenant, cls, &why) == 0)
        return 0;
    cm_arena *a = c->arena;
    const char *name = cm_ratelimit_class_name(cls);
    long long ms = (long long)((why.retry_ns + 999999) / 1000000);
    const char *limit = cm_arena_printf(a, "%s calls: %g per second per replica, burst %g", name,
                                        why.limit.rate, why.limit.burst);
    int f =
        cm_rpc_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "RATE_LIMITED",
                    cm_arena_printf(a, "rate limit of tenant %s exceeded (%s): retry in %lld ms",
                                    c->tenant, limit ? limit : name, ms));
    cm_rpc_fail_meta(c, "retry_after_ms", cm_arena_printf(a, "%lld", ms));
    cm_rpc_fail_meta(c, "class", name);
    Google__Protobuf__Duration delay = GOOGLE__PROTOBUF__DURATION__INIT;
    delay.seconds = why.retry_ns / 1000000000;
    delay.nanos = (int32_t)(why.retry_ns % 1000000000);
    Google__Rpc__RetryInfo retry = GOOGLE__RPC__RETRY_INFO__INIT;
    retry.retry_delay = &delay;
    cm_rpc_fail_detail(c, &retry.base);
    Google__Rpc__QuotaFailure__Violation v = GOOGLE__RPC__QUOTA_FAILURE__VIOLATION__INIT;
    v.subject = cm_arena_printf(a, "tenant:%s", c->tenant);
    v.description = (char *)(limit ? limit : name);
    Google__Rpc__QuotaFailure__Violation *vs[] = {&v};
    Google__Rpc__QuotaFailure qf = GOOGLE__RPC__QUOTA_FAILURE__INIT;
    qf.n_violations = 1;
    qf.violations = vs;
    if (v.subject)
        cm_rpc_fail_detail(c, &qf.base);
    return f;
}

static int read_payload(cm_rpc_ctx *c, const uint8_t **data, size_t *len)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, c->payload))
        return -1;
    grpc_slice sl = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    size_t n = GRPC_SLICE_LENGTH(sl);
    uint8_t *buf = cm_arena_alloc(c->arena, n ? n : 1);
    if (buf)
        memcpy(buf, GRPC_SLICE_START_PTR(sl), n);
    grpc_slice_unref(sl);
    if (!buf)
        return -1;
    *data = buf;
    *len = n;
    return 0;
}

static void run_handler(cm_rpc_ctx *c)
{
    method_entry *m = c->m;
    gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
    if (gpr_time_cmp(gpr_convert_clock_type(c->deadline, GPR_CLOCK_MONOTONIC), now) <= 0) {
        cm_rpc_fail(c, GRPC_STATUS_DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED",
                    "deadline passed before the call was handled");
        return;
    }
    if (authenticate(c) || rate_limit(c))
        return;
    if (!c->payload) {
        cm_rpc_fail(c, GRPC_STATUS_INVALID_ARGUMENT, "MISSING_REQUEST", "no request message");
        return;
    }
    const uint8_t *data;
    size_t len;
    if (read_payload(c, &data, &len)) {
        cm_rpc_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "OUT_OF_MEMORY", "out of memory");
        return;
    }
    ProtobufCMessage *in;
    if (cm_rpc_ctx_decode(c, m->input, data, len, &in))
        return;
    ProtobufCMessage *out = cm_arena_alloc(c->arena, m->output->sizeof_message);
    if (!out) {
        cm_rpc_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "OUT_OF_MEMORY", "out of memory");
        return;
    }
    protobuf_c_message_init(m->output, out);
    int rc = m->handler(c, in, out);
    if (c->w->s->o.call_end)
        c->w->s->o.call_end(c->w->state, c->w->s->o.app);
    if (rc && c->code == GRPC_STATUS_OK) {
        /* the handler returned a CM_E* without describing it */
        cm_rpc_fail_err(c, rc, cm_strerror(rc));
    }
    if (c->code != GRPC_STATUS_OK)
        return;
    size_t n = protobuf_c_message_get_packed_size(out);
    if (n > c->w->s->o.max_message_bytes) {
        cm_log_error("reply larger than the maximum message size", "method", m->path, NULL);
        /* not RESOURCE_EXHAUSTED: clients retry that, and the same request
         * would get the same reply forever. FAILED_PRECONDITION is "not
         * until something changes" (a smaller page, a larger limit) */
        cm_rpc_fail(c, GRPC_STATUS_FAILED_PRECONDITION, "RESPONSE_TOO_LARGE",
                    "the reply exceeds the maximum message size; ask for a smaller page");
        return;
    }
    grpc_slice sl = grpc_slice_malloc(n);
    protobuf_c_message_pack(out, GRPC_SLICE_START_PTR(sl));
    c->response = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
}

/* ---- health Watch: a server stream per watcher ---- */

static int watch_status(cm_rpc_server *s, const watcher *wt)
{
    if (!wt->known)
        return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    return cm_rpc_server_serving(s)
               ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
               : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

static void watch_free_locked(cm_rpc_server *s, watcher *wt)
{
    if (wt->prev)
        wt->prev->next = wt->next;
    else
        s->watchers = wt->next;
    if (wt->next)
        wt->next->prev = wt->prev;
    grpc_call_unref(wt->call);
    grpc_metadata_array_destroy(&wt->md);
    if (wt->has_status_slice)
        grpc_slice_unref(wt->status_slice);
    free(wt);
}

/* sends what the watcher lacks: the current status when it changed, or,
 * when finishing, the final status once the last status went out */
static void watch_send_locked(cm_rpc_server *s, watcher *wt)
{
    if (wt->send_in_flight || wt->finished)
        return;
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!wt->headers_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        wt->headers_sent = 1;
    }
    int status = watch_status(s, wt);
    if (status != wt->last_sent) {
        Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        r.status = status;
        size_t len = protobuf_c_message_get_packed_size(&r.base);
        grpc_slice sl = grpc_slice_malloc(len);
        protobuf_c_message_pack(&r.base, GRPC_SLICE_START_PTR(sl));
        wt->out = grpc_raw_byte_buffer_create(&sl, 1);
        grpc_slice_unref(sl);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = wt->out;
        n++;
        wt->last_sent = status;
    } else if (wt->finishing) {
        wt->status_slice = grpc_slice_from_static_string("server shutting down");
        wt->has_status_slice = 1;
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = GRPC_STATUS_UNAVAILABLE;
        ops[n].data.send_status_from_server.status_details = &wt->status_slice;
        n++;
        wt->finished = 1;
    }
    if (n == 0)
        return;
    if (grpc_call_start_batch(wt->call, ops, n, &wt->send_tag, NULL) == GRPC_CALL_OK)
        wt->send_in_flight = 1;
    else
        wt->finished = 1;
}

static void watch_notify(cm_rpc_server *s, int finishing)
{
    pthread_mutex_lock(&s->watch_mu);
    for (watcher *wt = s->watchers; wt; wt = wt->next) {
        if (finishing)
            wt->finishing = 1;
        watch_send_locked(s, wt);
    }
    pthread_mutex_unlock(&s->watch_mu);
}

static void watch_start(worker *w, grpc_call *call, grpc_metadata_array md,
                        grpc_byte_buffer *payload)
{
    cm_rpc_server *s = w->s;
    watcher *wt = calloc(1, sizeof *wt);
    if (!wt) {
        grpc_call_cancel_with_status(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
        grpc_call_unref(call);
        grpc_metadata_array_destroy(&md);
        if (payload)
            grpc_byte_buffer_destroy(payload);
        return;
    }
    wt->send_tag = (watch_tag){TAG_WATCH_SEND, wt};
    wt->close_tag = (watch_tag){TAG_WATCH_CLOSE, wt};
    wt->w = w;
    wt->call = call;
    wt->md = md;
    wt->last_sent = -1;
    const char *service = "";
    Grpc__Health__V1__HealthCheckRequest *req = NULL;
    if (payload) {
        grpc_byte_buffer_reader r;
        if (grpc_byte_buffer_reader_init(&r, payload)) {
            grpc_slice all = grpc_byte_buffer_reader_readall(&r);
            grpc_byte_buffer_reader_destroy(&r);
            req = grpc__health__v1__health_check_request__unpack(NULL, GRPC_SLICE_LENGTH(all),
                                                                 GRPC_SLICE_START_PTR(all));
            grpc_slice_unref(all);
        }
        grpc_byte_buffer_destroy(payload);
        if (req)
            service = req->service;
    }
    wt->known = service[0] == '\0';
    for (size_t i = 0; !wt->known && i < s->nservices; i++)
        wt->known = strcmp(service, s->services[i]) == 0;
    if (req)
        grpc__health__v1__health_check_request__free_unpacked(req, NULL);

    grpc_op close_op;
    memset(&close_op, 0, sizeof close_op);
    close_op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    close_op.data.recv_close_on_server.cancelled = &wt->cancelled;

    pthread_mutex_lock(&s->watch_mu);
    wt->next = s->watchers;
    if (s->watchers)
        s->watchers->prev = wt;
    s->watchers = wt;
    if (grpc_call_start_batch(call, &close_op, 1, &wt->close_tag, NULL) != GRPC_CALL_OK) {
        watch_free_locked(s, wt);
    } else {
        /* a watch that arrives while draining ends at once */
        wt->finishing = atomic_load(&s->draining);
        watch_send_locked(s, wt);
    }
    pthread_mutex_unlock(&s->watch_mu);
}

static void on_watch_send(watcher *wt, int ok)
{
    cm_rpc_server *s = wt->w->s;
    pthread_mutex_lock(&s->watch_mu);
    wt->send_in_flight = 0;
    if (wt->out) {
        grpc_byte_buffer_destroy(wt->out);
        wt->out = NULL;
    }
    if (!ok)
        wt->finished = 1; /* the stream is broken: nothing more to send */
    if (wt->closed && !wt->send_in_flight)
        watch_free_locked(s, wt);
    else
        watch_send_locked(s, wt); /* a change may have come in meanwhile */
    pthread_mutex_unlock(&s->watch_mu);
}

static void on_watch_close(watcher *wt)
{
    cm_rpc_server *s = wt->w->s;
    pthread_mutex_lock(&s->watch_mu);
    wt->closed = 1;
    wt->finished = 1;
    if (!wt->send_in_flight)
        watch_free_locked(s, wt);
    pthread_mutex_unlock(&s->watch_mu);
}

/* ---- server reflection: a bidirectional stream per client ----
 *
 * receive a request, answer it, send the answer, receive the next, until
 * the client half-closes (status OK) or the stream breaks. the drain
 * cancels open streams with every other call (grpc_server_cancel_all_calls):
 * they are not counted in flight, so they do not hold it up. */

static void refl_free(refl_stream *st)
{
    worker *w = st->w;
    if (st->prev)
        st->prev->next = st->next;
    else
        w->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    grpc_call_unref(st->call);
    grpc_metadata_array_destroy(&st->md);
    if (st->in)
        grpc_byte_buffer_destroy(st->in);
    if (st->out)
        grpc_byte_buffer_destroy(st->out);
    if (st->has_status_slice)
        grpc_slice_unref(st->status_slice);
    free(st->sent);
    atomic_fetch_sub(&w->s->refl_open, 1);
    free(st);
}

static void refl_status(refl_stream *st, grpc_status_code code, const char *message)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    st->status_slice = grpc_slice_from_static_string(message);
    st->has_status_slice = 1;
    op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    op.data.send_status_from_server.status = code;
    op.data.send_status_from_server.status_details = &st->status_slice;
    st->phase = REFL_STATUS;
    if (grpc_call_start_batch(st->call, &op, 1, &st->io_tag, NULL) == GRPC_CALL_OK)
        st->io_in_flight = 1;
}

static void refl_recv(refl_stream *st, int with_headers)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (with_headers)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n].data.recv_message.recv_message = &st->in;
    n++;
    st->phase = REFL_RECV;
    if (grpc_call_start_batch(st->call, ops, n, &st->io_tag, NULL) == GRPC_CALL_OK)
        st->io_in_flight = 1;
}

/* a request arrived: answer it, or end the stream */
static void refl_answer(refl_stream *st)
{
    cm_rpc_server *s = st->w->s;
    grpc_byte_buffer_reader r;
    size_t len = grpc_byte_buffer_length(st->in);
    if (len > RPC_REFLECTION_REQUEST_MAX) {
        refl_status(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "reflection request too large");
        return;
    }
    if (atomic_load(&s->draining)) {
        refl_status(st, GRPC_STATUS_UNAVAILABLE, "server shutting down");
        return;
    }
    if (!grpc_byte_buffer_reader_init(&r, st->in)) {
        refl_status(st, GRPC_STATUS_INTERNAL, "could not read the request");
        return;
    }
    grpc_slice all = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    grpc_byte_buffer_destroy(st->in);
    st->in = NULL;
    uint8_t *out = NULL;
    size_t outlen = 0;
    int rc = cm_reflection_answer(s->refl, st->sent, s->refl_names, s->nrefl_names,
                                  GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all), &out, &outlen);
    grpc_slice_unref(all);
    if (rc == CM_EINVAL) {
        refl_status(st, GRPC_STATUS_INVALID_ARGUMENT, "invalid ServerReflectionRequest");
        return;
    }
    if (rc) {
        refl_status(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    grpc_slice sl = grpc_slice_new(out, outlen, free);
    st->out = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = st->out;
    st->phase = REFL_SEND;
    if (grpc_call_start_batch(st->call, &op, 1, &st->io_tag, NULL) == GRPC_CALL_OK)
        st->io_in_flight = 1;
}

static void refl_start(worker *w, grpc_call *call, grpc_metadata_array md)
{
    cm_rpc_server *s = w->s;
    refl_stream *st = NULL;
    if (atomic_fetch_add(&s->refl_open, 1) >= RPC_REFLECTION_STREAMS) {
        atomic_fetch_sub(&s->refl_open, 1);
        grpc_call_cancel_with_status(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                     "too many reflection streams", NULL);
    } else if (!(st = calloc(1, sizeof *st)) ||
               !(st->sent = calloc(cm_reflection_nfiles(s->refl), 1))) {
        free(st);
        st = NULL;
        atomic_fetch_sub(&s->refl_open, 1);
        grpc_call_cancel_with_status(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
    }
    if (!st) {
        grpc_call_unref(call);
        grpc_metadata_array_destroy(&md);
        return;
    }
    st->io_tag = (refl_tag){TAG_REFL_IO, st};
    st->close_tag = (refl_tag){TAG_REFL_CLOSE, st};
    st->w = w;
    st->call = call;
    st->md = md;
    clock_gettime(CLOCK_MONOTONIC, &st->last);
    st->next = w->streams;
    if (w->streams)
        w->streams->prev = st;
    w->streams = st;

    grpc_op close_op;
    memset(&close_op, 0, sizeof close_op);
    close_op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    close_op.data.recv_close_on_server.cancelled = &st->cancelled;
    if (grpc_call_start_batch(call, &close_op, 1, &st->close_tag, NULL) != GRPC_CALL_OK) {
        refl_free(st);
        return;
    }
    refl_recv(st, 1);
}

static void on_refl_io(refl_stream *st, int ok)
{
    st->io_in_flight = 0;
    clock_gettime(CLOCK_MONOTONIC, &st->last);
    if (st->out) {
        grpc_byte_buffer_destroy(st->out);
        st->out = NULL;
    }
    /* once the workers stop (the server's shutdown is over, every call
     * cancelled) this worker may shut its queue at any moment: no batch may
     * start on it then. only this thread shuts it, so the check is enough */
    if (ok && !st->closed && !atomic_load(&st->w->s->stop_workers)) {
        switch (st->phase) {
        case REFL_RECV:
            if (!st->in)
                refl_status(st, GRPC_STATUS_OK, ""); /* the client half-closed */
            else
                refl_answer(st);
            break;
        case REFL_SEND:
            refl_recv(st, 0);
            break;
        case REFL_STATUS:
            break;
        }
    }
    /* a failed batch means the call is gone: RECV_CLOSE_ON_SERVER follows */
    if (st->closed && !st->io_in_flight)
        refl_free(st);
}

static void on_refl_close(refl_stream *st)
{
    st->closed = 1;
    if (!st->io_in_flight)
        refl_free(st);
}

/* ends the streams of this worker that went RPC_REFLECTION_IDLE_MS without
 * a message: a client that opens one and goes quiet holds a stream slot
 * (of RPC_REFLECTION_STREAMS) only that long */
static void refl_sweep(worker *w)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (elapsed_ns(&w->last_sweep) < 200 * 1000000LL)
        return;
    w->last_sweep = now;
    for (refl_stream *st = w->streams; st; st = st->next) {
        if (st->idle_cut || st->closed ||
            elapsed_ns(&st->last) < RPC_REFLECTION_IDLE_MS * 1000000LL)
            continue;
        st->idle_cut = 1;
        grpc_call_cancel_with_status(st->call, GRPC_STATUS_DEADLINE_EXCEEDED,
                                     "reflection stream idle", NULL);
    }
}

static void on_slot(slot *sl, int ok)
{
    worker *w = sl->w;
    if (!ok) {
        /* the server is shutting down: the request was cancelled */
        grpc_metadata_array_destroy(&sl->md);
        return;
    }
    if (sl->m->flags & RPC_WATCH) {
        grpc_call *call = sl->call;
        grpc_metadata_array md = sl->md;
        grpc_byte_buffer *payload = sl->payload;
        arm_slot(sl);
        watch_start(w, call, md, payload);
        return;
    }
    if (sl->m->flags & RPC_REFLECT) {
        grpc_call *call = sl->call;
        grpc_metadata_array md = sl->md;
        arm_slot(sl);
        refl_start(w, call, md);
        return;
    }
    cm_rpc_ctx *c = call_get(w);
    if (!c) {
        /* out of memory: let the call die with the slot's resources */
        grpc_call_cancel_with_status(sl->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory",
                                     NULL);
        grpc_call_unref(sl->call);
        grpc_metadata_array_destroy(&sl->md);
        if (sl->payload)
            grpc_byte_buffer_destroy(sl->payload);
        arm_slot(sl);
        return;
    }
    c->m = sl->m;
    c->call = sl->call;
    c->deadline = sl->deadline;
    c->md = sl->md;
    c->payload = sl->payload;
    arm_slot(sl);
    cm_gauge_add(w->s->inflight, 1);
    run_handler(c);
    start_send(c);
}

static void on_unknown(unknown_slot *u, int ok)
{
    worker *w = u->w;
    if (!ok) {
        grpc_call_details_destroy(&u->details);
        grpc_metadata_array_destroy(&u->md);
        return;
    }
    cm_rpc_ctx *c = call_get(w);
    grpc_call *call = u->call;
    if (c) {
        c->call = call;
        c->md = u->md;
        c->unknown_path =
            cm_arena_strndup(c->arena, (const char *)GRPC_SLICE_START_PTR(u->details.method),
                             GRPC_SLICE_LENGTH(u->details.method));
    } else {
        grpc_call_cancel(call, NULL);
        grpc_call_unref(call);
        grpc_metadata_array_destroy(&u->md);
    }
    grpc_call_details_destroy(&u->details);
    arm_unknown(u);
    if (!c)
        return;
    cm_counter_add(w->s->unimplemented, 1);
    cm_log_debug("unknown method", "method", c->unknown_path, NULL);
    cm_gauge_add(w->s->inflight, 1);
    cm_rpc_fail(c, GRPC_STATUS_UNIMPLEMENTED, "UNIMPLEMENTED",
                cm_arena_printf(c->arena, "unknown method %s", c->unknown_path));
    start_send(c);
}

static void on_finish(cm_rpc_ctx *c, int ok)
{
    worker *w = c->w;
    cm_rpc_server *s = w->s;
    (void)ok;
    if (c->m) {
        cm_counter_add(handled_counter(s, c->m, c->code), 1);
        cm_histogram_observe(c->m->latency, (double)elapsed_ns(&c->t0) / 1e9);
    }
    const char *method = c->m ? c->m->path : c->unknown_path;
    if (c->code == GRPC_STATUS_INTERNAL || c->code == GRPC_STATUS_UNKNOWN) {
        cm_log_error("call failed", "method", method, "tenant", c->tenant, "detail",
                     c->detail ? c->detail : c->message, "request_id", md_lookup(c, "x-request-id"),
                     "trace_id", cm_rpc_ctx_trace_id(c), NULL);
    } else if (cm_log_enabled(CM_LOG_DEBUG)) {
        /* the access log: off at the default level, it costs a format per call */
        char ms[32];
        snprintf(ms, sizeof ms, "%.3f", (double)elapsed_ns(&c->t0) / 1e6);
        cm_log_debug("call", "method", method, "code", code_names[c->code], "ms", ms, "tenant",
                     c->tenant, "request_id", md_lookup(c, "x-request-id"), "trace_id",
                     cm_rpc_ctx_trace_id(c), NULL);
    }
    cm_gauge_add(s->inflight, -1);
    call_put(w, c);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    cm_rpc_server *s = w->s;
    if (s->o.worker_init) {
        w->state = s->o.worker_init(w->index, s->o.app);
        w->init_failed = w->state == NULL;
    }
    pthread_mutex_lock(&s->mu);
    s->ready_count++;
    pthread_cond_broadcast(&s->cv);
    while (s->go == 0)
        pthread_cond_wait(&s->cv, &s->mu);
    int go = s->go;
    pthread_mutex_unlock(&s->mu);

    if (go > 0) {
        for (size_t i = 0; i < s->nmethods; i++)
            arm_slot(&w->slots[i]);
        arm_unknown(&w->unknown);
    }
    int queue_shut = 0;
    for (;;) {
        gpr_timespec wake = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(STOP_POLL_MS, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(w->cq, wake, NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE && w->streams)
            refl_sweep(w);
        if (!queue_shut && atomic_load(&s->stop_workers)) {
            grpc_completion_queue_shutdown(w->cq);
            queue_shut = 1;
        }
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        switch (*(tag_kind *)ev.tag) {
        case TAG_SLOT:
            on_slot(ev.tag, ev.success);
            break;
        case TAG_UNKNOWN:
            on_unknown(ev.tag, ev.success);
            break;
        case TAG_WATCH_SEND:
            on_watch_send(((watch_tag *)ev.tag)->wt, ev.success);
            break;
        case TAG_WATCH_CLOSE:
            on_watch_close(((watch_tag *)ev.tag)->wt);
            break;
        case TAG_REFL_IO:
            on_refl_io(((refl_tag *)ev.tag)->st, ev.success);
            break;
        case TAG_REFL_CLOSE:
            on_refl_close(((refl_tag *)ev.tag)->st);
            break;
        case TAG_FINISH:
            on_finish(ev.tag, ev.success);
            break;
        }
        if (w->streams)
            refl_sweep(w);
    }
    if (s->o.worker_fini && w->state)
        s->o.worker_fini(w->state, s->o.app);
    w->state = NULL;
    return NULL;
}

static void release_workers(cm_rpc_server *s, int go)
{
    pthread_mutex_lock(&s->mu);
    s->go = go;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* cancelled calls no longer hold up the server's shutdown, but their
 * handlers may still be running and will start a batch on their worker's
 * queue when they return. so no other thread shuts a worker's queue down:
 * the worker does it itself, between handlers, when it sees the flag. */
static void join_workers(cm_rpc_server *s)
{
    atomic_store(&s->stop_workers, 1);
    for (int i = 0; i < s->nworkers; i++) {
        pthread_join(s->workers[i].thread, NULL);
        grpc_completion_queue_destroy(s->workers[i].cq);
        s->workers[i].cq = NULL;
    }
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* grpc.reflection.v1 and v1alpha, answered from the built-in descriptor
 * set. registered last, so list_services names every service added */
static int add_reflection(cm_rpc_server *s, char *err, size_t errlen)
{
    int rc = cm_reflection_new(&s->refl, cm_descriptor_set, cm_descriptor_set_len, err, errlen);
    if (rc)
        return rc;
    size_t hosted = s->nservices; /* reflection is no name for health Check */
    rc = cm_rpc_server_add_service(s, &grpc__reflection__v1__server_reflection__descriptor,
                                   reflection_methods, 1, err, errlen);
    if (!rc)
        rc = cm_rpc_server_add_service(s, &grpc__reflection__v1alpha__server_reflection__descriptor,
                                       reflection_methods, 1, err, errlen);
    s->nservices = hosted;
    if (rc)
        return rc;
    s->refl_names[s->nrefl_names++] = grpc__health__v1__health__descriptor.name;
    s->refl_names[s->nrefl_names++] = grpc__reflection__v1__server_reflection__descriptor.name;
    s->refl_names[s->nrefl_names++] = grpc__reflection__v1alpha__server_reflection__descriptor.name;
    for (size_t i = 0; i < hosted && s->nrefl_names < RPC_REFLECTION_NAMES; i++)
        s->refl_names[s->nrefl_names++] = s->services[i];
    qsort(s->refl_names, s->nrefl_names, sizeof s->refl_names[0], name_cmp);
    return 0;
}

int cm_rpc_server_start(cm_rpc_server *s, char *err, size_t errlen)
{
    if (s->started)
        return CM_ESTATE;
    if (s->o.reflection && !s->refl) {
        int rc = add_reflection(s, err, errlen);
        if (rc)
            return rc;
    }
    s->workers = calloc((size_t)s->nworkers, sizeof *s->workers);
    if (!s->workers)
        return CM_ENOMEM;
    for (int i = 0; i < s->nworkers; i++) {
        worker *w = &s->workers[i];
        w->index = i;
        w->s = s;
        w->cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(s->server, w->cq, NULL);
        w->slots = calloc(s->nmethods, sizeof *w->slots);
        if (!w->slots)
            return CM_ENOMEM;
        for (size_t j = 0; j < s->nmethods; j++) {
            w->slots[j].kind = TAG_SLOT;
            w->slots[j].w = w;
            w->slots[j].m = &s->methods[j];
        }
        w->unknown.kind = TAG_UNKNOWN;
        w->unknown.w = w;
    }
    grpc_server_credentials *creds = server_credentials(s, err, errlen);
    if (!creds)
        return CM_EINVAL;
    s->port = grpc_server_add_http2_port(s->server, s->listen, creds);
    grpc_server_credentials_release(creds);
    if (s->port <= 0) {
        set_err(err, errlen, "rpc: could not listen on %s", s->listen);
        return CM_EINVAL;
    }
    s->started = 1;
    grpc_server_start(s->server);

    int spawned = 0;
    for (int i = 0; i < s->nworkers; i++) {
        if (pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) != 0)
            break;
        spawned++;
    }
    pthread_mutex_lock(&s->mu);
    while (s->ready_count < spawned)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    int failed = spawned < s->nworkers;
    for (int i = 0; i < spawned; i++)
        failed |= s->workers[i].init_failed;
    if (failed) {
        /* nothing was requested yet, so no call can be in flight */
        atomic_store(&s->draining, 1);
        release_workers(s, -1);
        s->nworkers = spawned;
        grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
        grpc_server_shutdown_and_notify(s->server, cq, cq);
        grpc_completion_queue_pluck(cq, cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        grpc_completion_queue_shutdown(cq);
        while (
            grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
            GRPC_QUEUE_SHUTDOWN)
            ;
        grpc_completion_queue_destroy(cq);
        join_workers(s);
        s->stopped = 1;
        set_err(err, errlen, "rpc: a worker could not start (see log)");
        return CM_EUNAVAIL;
    }
    release_workers(s, 1);
    return 0;
}

int cm_rpc_server_port(const cm_rpc_server *s)
{
    return s->port;
}

void cm_rpc_server_set_serving(cm_rpc_server *s, int serving)
{
    int was = atomic_exchange(&s->serving, serving ? 1 : 0);
    if (was != (serving ? 1 : 0) && s->started)
        watch_notify(s, 0);
}

int cm_rpc_server_serving(const cm_rpc_server *s)
{
    return atomic_load(&((cm_rpc_server *)s)->serving) &&
           !atomic_load(&((cm_rpc_server *)s)->draining);
}

int cm_rpc_server_shutdown(cm_rpc_server *s, int grace_ms)
{
    if (!s->started || s->stopped)
        return 0;
    atomic_store(&s->draining, 1);
    /* watchers hear NOT_SERVING, then their streams end: open streams
     * would otherwise hold the drain for the whole grace period */
    watch_notify(s, 1);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_server_shutdown_and_notify(s->server, cq, cq);
    /* core's shutdown tag waits for every connection to go, not just every
     * call: an idle client keeping its channel open held the drain ~5 s.
     * so once no call has been in flight for two looks in a row, idle
     * connections are dropped; calls still running at the end of the grace
     * period are cancelled. */
    int cancelled = 0, idle_looks = 0, cut = 0;
    gpr_timespec until =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(grace_ms, GPR_TIMESPAN));
    for (;;) {
        gpr_timespec step =
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(50, GPR_TIMESPAN));
        if (gpr_time_cmp(step, until) > 0)
            step = until;
        grpc_event ev = grpc_completion_queue_pluck(cq, cq, step, NULL);
        if (ev.type == GRPC_OP_COMPLETE)
            break;
        double inflight = cm_gauge_value(s->inflight);
        idle_looks = inflight <= 0 ? idle_looks + 1 : 0;
        if (!cut && idle_looks >= 2) {
            grpc_server_cancel_all_calls(s->server);
            cut = 1;
        } else if (gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), until) >= 0) {
            cancelled = inflight > 0 ? (int)inflight : 0;
            cm_log_warn("drain grace period over: cancelling calls in flight", NULL);
            grpc_server_cancel_all_calls(s->server);
            grpc_completion_queue_pluck(cq, cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
            break;
        }
    }
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    join_workers(s);
    s->stopped = 1;
    return cancelled;
}

void cm_rpc_server_free(cm_rpc_server *s)
{
    if (!s)
        return;
    if (s->started && !s->stopped)
        cm_rpc_server_shutdown(s, 0);
    if (s->server)
        grpc_server_destroy(s->server);
    if (s->workers) {
        for (int i = 0; i < s->nworkers; i++) {
            free(s->workers[i].slots);
            free_call_list(s->workers[i].free_calls);
        }
        free(s->workers);
    }
    free(s->methods);
    cm_reflection_free(s->refl);
    free(s->listen);
    free(s->domain);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->watch_mu);
    free(s);
    grpc_shutdown();
}

/* ---- handler api ---- */

void *cm_rpc_ctx_worker(const cm_rpc_ctx *ctx)
{
    return ctx->w->state;
}

void *cm_rpc_ctx_app(const cm_rpc_ctx *ctx)
{
    return ctx->w->s->o.app;
}

int cm_rpc_ctx_decode(cm_rpc_ctx *c, const ProtobufCMessageDescriptor *d, const uint8_t *data,
                      size_t len, ProtobufCMessage **out)
{
    *out = NULL;
    /* strings are checked on the wire, once for every service: a decoded
     * C string can no longer show an embedded NUL */
    char path[256];
    int wire = cm_pb_check_wire(d, data, len, path, sizeof path);
    if (wire == CM_PB_WIRE_NUL || wire == CM_PB_WIRE_INVALID_UTF8)
        return cm_rpc_fail_field(c, path,
                                 wire == CM_PB_WIRE_NUL ? "must not contain NUL characters"
                                                        : "must be valid UTF-8");
    ProtobufCAllocator al = cm_arena_allocator(c->arena);
    ProtobufCMessage *in =
        wire == CM_PB_WIRE_OK ? protobuf_c_message_unpack(d, &al, len, data) : NULL;
    if (!in) {
        /* named like any bad field: where the encoding broke, or the
         * request itself */
        const char *where = path[0] ? path : "(request)";
        int rc = cm_rpc_fail(
            c, GRPC_STATUS_INVALID_ARGUMENT, "MALFORMED_REQUEST",
            cm_arena_printf(c->arena, "%s: not a valid encoding of %s", where, d->name));
        cm_rpc_fail_field(c, where, "not a valid protobuf encoding");
        return rc;
    }
    *out = in;
    return 0;
}

cm_rpc_ctx *cm_rpc_ctx_detached_new(const char *tenant)
{
    cm_rpc_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return NULL;
    ctx->arena = cm_arena_new(0);
    ctx->tenant = ctx->arena && tenant ? cm_arena_strdup(ctx->arena, tenant) : NULL;
    if (!ctx->arena || (tenant && !ctx->tenant)) {
        cm_rpc_ctx_detached_free(ctx);
        return NULL;
    }
    return ctx;
}

void cm_rpc_ctx_detached_free(cm_rpc_ctx *ctx)
{
    if (!ctx)
        return;
    cm_arena_free(ctx->arena);
    free(ctx);
}

cm_rpc_ctx *cm_rpc_ctx_item(cm_rpc_ctx *ctx)
{
    cm_rpc_ctx *it = cm_arena_alloc(ctx->arena, sizeof *it);
    if (!it)
        return NULL;
    *it = *ctx;
    /* the caller and the call as they are; the outcome its own */
    it->next_free = NULL;
    it->code = 0;
    it->message = it->reason = it->detail = it->domain = NULL;
    it->n_violations = it->n_meta = it->echo_bytes = it->n_extra = it->n_fwd = 0;
    it->fwd = NULL;
    it->has_trailer = 0;
    return it;
}

const uint8_t *cm_rpc_ctx_item_status(cm_rpc_ctx *item, size_t *len)
{
    *len = 0;
    if (item->code == GRPC_STATUS_OK)
        return NULL;
    if (item->detail)
        cm_log_info("batch item failed", "method", item->m ? item->m->path : "-", "code",
                    code_names[item->code], "detail", item->detail, NULL);
    return build_status(item, len);
}

int cm_rpc_ctx_code(const cm_rpc_ctx *ctx, const char **reason, const char **message)
{
    if (reason)
        *reason = ctx->reason;
    if (message)
        *message = ctx->message;
    return ctx->code;
}

cm_arena *cm_rpc_ctx_arena(const cm_rpc_ctx *ctx)
{
    return ctx->arena;
}

const char *cm_rpc_ctx_method(const cm_rpc_ctx *ctx)
{
    return ctx->m ? ctx->m->path : ctx->unknown_path;
}

const char *cm_rpc_ctx_tenant(const cm_rpc_ctx *ctx)
{
    return ctx->tenant;
}

const char *cm_rpc_ctx_subject(const cm_rpc_ctx *ctx)
{
    return ctx->principal && ctx->principal->subject[0] ? ctx->principal->subject : NULL;
}

const char *cm_rpc_ctx_merchant_scope(const cm_rpc_ctx *ctx)
{
    return ctx->merchant_scope;
}

const char *cm_rpc_ctx_channel_scope(const cm_rpc_ctx *ctx)
{
    return ctx->channel_scope;
}

const char *cm_rpc_scope_filter(const char *scope, const char *requested)
{
    if (!scope || strcmp(requested, scope) == 0)
        return requested;
    return *requested ? NULL : scope;
}

const char *cm_rpc_method_class(unsigned flags)
{
    switch (flags & (CM_RPC_READ | CM_RPC_WRITE | CM_RPC_ADMIN)) {
    case CM_RPC_READ:
        return "read";
    case CM_RPC_WRITE:
        return "write";
    case CM_RPC_ADMIN:
        return "admin";
    default:
        return NULL;
    }
}

const char *cm_rpc_ctx_metadata(cm_rpc_ctx *ctx, const char *key)
{
    return md_lookup(ctx, key);
}

const char *cm_rpc_ctx_request_id(cm_rpc_ctx *ctx)
{
    return md_lookup(ctx, "x-request-id");
}

const char *cm_rpc_ctx_traceparent(cm_rpc_ctx *ctx)
{
    return md_lookup(ctx, "traceparent");
}

const char *cm_rpc_ctx_trace_id(cm_rpc_ctx *ctx)
{
    /* traceparent: version(2)-trace_id(32)-parent_id(16)-flags(2) */
    const char *tp = md_lookup(ctx, "traceparent");
    if (!tp || strlen(tp) < 55 || tp[2] != '-' || tp[35] != '-')
        return NULL;
    for (int i = 3; i < 35; i++) {
        char ch = tp[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return NULL;
    }
    return cm_arena_strndup(ctx->arena, tp + 3, 32);
}

int64_t cm_rpc_ctx_deadline_left_ms(const cm_rpc_ctx *ctx)
{
    gpr_timespec d = gpr_convert_clock_type(ctx->deadline, GPR_CLOCK_MONOTONIC);
    if (gpr_time_cmp(d, gpr_inf_future(GPR_CLOCK_MONOTONIC)) == 0)
        return INT64_MAX;
    gpr_timespec left = gpr_time_sub(d, gpr_now(GPR_CLOCK_MONOTONIC));
    int64_t ms = (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
    if (ms > INT64_MAX / 2)
        return INT64_MAX;
    return ms < 0 ? 0 : ms;
}

void *cm_rpc_alloc(cm_rpc_ctx *ctx, size_t n)
{
    return cm_arena_calloc(ctx->arena, 1, n);
}

char *cm_rpc_strdup(cm_rpc_ctx *ctx, const char *s)
{
    return cm_arena_strdup(ctx->arena, s ? s : "");
}

int cm_rpc_fail(cm_rpc_ctx *ctx, int grpc_code, const char *reason, const char *message)
{
    if (grpc_code <= 0 || grpc_code >= NCODES)
        grpc_code = GRPC_STATUS_INTERNAL;
    /* the first failure wins: later ones only add detail */
    if (ctx->code == GRPC_STATUS_OK) {
        ctx->code = grpc_code;
        ctx->reason = reason;
        /* messages may echo the caller's input: bounded and printable, so
         * trailers stay under a client's metadata limit and parse */
        const char *m = message ? cm_utf8_clip(ctx->arena, message, ECHO_MESSAGE_MAX) : NULL;
        ctx->message = m ? m : code_names[grpc_code];
    }
    return -grpc_code;
}

int cm_rpc_fail_field(cm_rpc_ctx *ctx, const char *field, const char *description)
{
    if (ctx->n_violations < MAX_FIELD_VIOLATIONS) {
        Google__Rpc__BadRequest__FieldViolation *v = cm_arena_alloc(ctx->arena, sizeof *v);
        if (v) {
            google__rpc__bad_request__field_violation__init(v);
            v->field = cm_utf8_clip(ctx->arena, field, ECHO_FIELD_MAX);
            v->description = cm_utf8_clip(ctx->arena, description, ECHO_MESSAGE_MAX);
            size_t n = v->field && v->description ? strlen(v->field) + strlen(v->description) : 0;
            /* the first is always kept; later ones while there is room */
            if (n && (!ctx->n_violations || ctx->echo_bytes + n <= ECHO_TOTAL_MAX)) {
                ctx->echo_bytes += n;
                ctx->violations[ctx->n_violations++] = v;
            }
        }
    }
    return cm_rpc_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "INVALID_ARGUMENT",
                       cm_arena_printf(ctx->arena, "%s: %s", field, description));
}

int cm_rpc_fail_err(cm_rpc_ctx *ctx, int cm_err, const char *message)
{
    int code = cm_err_grpc_code(cm_err);
    if (code == GRPC_STATUS_OK)
        code = GRPC_STATUS_INTERNAL;
    /* internal detail stays in the log */
    if (code == GRPC_STATUS_INTERNAL) {
        if (ctx->code == GRPC_STATUS_OK)
            ctx->detail =
                cm_arena_printf(ctx->arena, "%s: %s", message ? message : "", cm_strerror(cm_err));
        return cm_rpc_fail(ctx, code, "INTERNAL", "internal error");
    }
    /* the catalogue's reasons (error_reason.proto), never a bare code name */
    const char *reason;
    switch (cm_err) {
    case CM_EINVAL:
    case CM_EOVERFLOW:
        reason = "INVALID_ARGUMENT";
        break;
    case CM_ENOMEM:
        reason = "OUT_OF_MEMORY";
        break;
    case CM_ENOTFOUND:
        reason = "RESOURCE_NOT_FOUND";
        break;
    case CM_EEXIST:
        reason = "IDEMPOTENCY_KEY_REUSED";
        break;
    case CM_ESTATE:
        reason = "ILLEGAL_STATE_TRANSITION";
        break;
    case CM_ECONFLICT:
        reason = "CONCURRENT_MODIFICATION";
        break;
    case CM_ELIMIT:
        reason = "RATE_LIMITED";
        break;
    case CM_EUNAVAIL:
        reason = "DEPENDENCY_UNAVAILABLE";
        break;
    case CM_ETIMEDOUT:
        reason = "DEADLINE_EXCEEDED";
        break;
    case CM_EAUTH:
        reason = "CREDENTIALS_INVALID";
        break;
    case CM_EPERM:
        reason = "ROLE_REQUIRED";
        break;
    case CM_ECANCELLED:
        /* only our own drain cancels a handler's work (a caller that
         * cancelled is not listening): retryable on another instance */
        code = GRPC_STATUS_UNAVAILABLE;
        reason = "SHUTTING_DOWN";
        break;
    default:
        reason = default_reasons[code];
        break;
    }
    return cm_rpc_fail(ctx, code, reason, message);
}

void cm_rpc_fail_detail(cm_rpc_ctx *ctx, const ProtobufCMessage *detail)
{
    if (ctx->n_extra >= MAX_EXTRA_DETAILS || !detail)
        return;
    Google__Protobuf__Any *any = cm_arena_alloc(ctx->arena, sizeof *any);
    if (!any)
        return;
    google__protobuf__any__init(any);
    /* packed now: the message may live on the handler's stack */
    char *url = cm_arena_printf(ctx->arena, "type.googleapis.com/%s", detail->descriptor->name);
    if (!url)
        return;
    pack_any(ctx->arena, any, url, detail);
    if (any->value.data)
        ctx->extra[ctx->n_extra++] = any;
}

void cm_rpc_fail_meta(cm_rpc_ctx *ctx, const char *key, const char *value)
{
    if (ctx->n_meta >= MAX_ERROR_META)
        return;
    Google__Rpc__ErrorInfo__MetadataEntry *e = cm_arena_alloc(ctx->arena, sizeof *e);
    if (!e)
        return;
    google__rpc__error_info__metadata_entry__init(e);
    e->key = cm_utf8_clip(ctx->arena, key, ECHO_FIELD_MAX);
    e->value = cm_utf8_clip(ctx->arena, value, ECHO_VALUE_MAX);
    size_t n = e->key && e->value ? strlen(e->key) + strlen(e->value) : 0;
    if (n && ctx->echo_bytes + n <= ECHO_TOTAL_MAX) {
        ctx->echo_bytes += n;
        ctx->meta[ctx->n_meta++] = e;
    }
}

/* what a downstream's code means to our caller: its own request or a
 * transient state (passed on), or our problem (INTERNAL) */
static int forward_code(int code)
{
    switch (code) {
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
    case GRPC_STATUS_NOT_FOUND:
    case GRPC_STATUS_ALREADY_EXISTS:
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
    case GRPC_STATUS_FAILED_PRECONDITION:
    case GRPC_STATUS_ABORTED:
    case GRPC_STATUS_OUT_OF_RANGE:
    case GRPC_STATUS_UNAVAILABLE:
        return code;
    case GRPC_STATUS_CANCELLED:
        /* our caller did not cancel us, or it would not be listening */
        return GRPC_STATUS_UNAVAILABLE;
    default:
        /* UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED: our credentials
         * or deployment; INTERNAL, UNKNOWN, DATA_LOSS: the downstream */
        return GRPC_STATUS_INTERNAL;
    }
}

int cm_rpc_fail_forward(cm_rpc_ctx *ctx, const cm_rpc_status *st)
{
    if (ctx->code != GRPC_STATUS_OK)
        return -ctx->code;
    cm_arena *a = ctx->arena;
    int code = st ? st->code : GRPC_STATUS_OK;
    if (code <= 0 || code >= NCODES) {
        ctx->detail = cm_arena_printf(a, "cm_rpc_fail_forward without a failure (code %d)", code);
        return cm_rpc_fail(ctx, GRPC_STATUS_INTERNAL, "INTERNAL", "internal error");
    }
    /* the downstream's status, for the log */
    const char *seen =
        cm_arena_printf(a, "%s %s/%s: %s", code_names[code], st->domain[0] ? st->domain : "-",
                        st->reason[0] ? st->reason : "-", st->message);
    int mapped = forward_code(code);
    if (mapped == GRPC_STATUS_INTERNAL) {
        /* on_finish logs the detail with the call */
        ctx->detail = cm_arena_printf(a, "dependency failed: %s", seen);
        if (code != GRPC_STATUS_UNAUTHENTICATED && code != GRPC_STATUS_PERMISSION_DENIED)
            return cm_rpc_fail(ctx, mapped, "DEPENDENCY_FAILED", "internal error");
        /* the credentials we sent (a service token, a client certificate)
         * are the operator's to fix: say so, with the dependency's reason
         * code but not its text */
        int f = cm_rpc_fail(ctx, mapped, "DEPENDENCY_FAILED",
                            "a dependency refused the credentials this service sent");
        if (st->domain[0])
            cm_rpc_fail_meta(ctx, "dependency", cm_arena_strdup(a, st->domain));
        if (st->reason[0])
            cm_rpc_fail_meta(ctx, "dependency_reason", cm_arena_strdup(a, st->reason));
        return f;
    }
    /* a downstream status with details but no reason (a foreign server)
     * gets ours: the dependency failed */
    const char *reason = st->reason[0] ? cm_arena_strdup(a, st->reason) : "DEPENDENCY_FAILED";
    if (mapped == code && st->details_len) {
        ProtobufCAllocator al = cm_arena_allocator(a);
        Google__Rpc__Status *ds =
            google__rpc__status__unpack(&al, st->details_len, st->details_bin);
        if (ds) {
            const char *msg =
                ds->message && ds->message[0] ? ds->message : cm_arena_strdup(a, st->message);
            cm_rpc_fail(ctx, code, reason, msg);
            ctx->fwd = ds->details;
            ctx->n_fwd = ds->n_details;
            /* a status with no details at all still gets our ErrorInfo */
            if (!ctx->fwd)
                ctx->fwd = cm_arena_alloc(a, sizeof *ctx->fwd);
            return -code;
        }
    }
    if (mapped == code && st->details_truncated) {
        /* too large to have been kept: pass on what was parsed */
        cm_log_warn("dependency status details too large to pass on whole", "method",
                    cm_rpc_ctx_method(ctx), "tenant", ctx->tenant, "request_id",
                    md_lookup(ctx, "x-request-id"), "status", seen, NULL);
        cm_rpc_fail(ctx, code, reason, cm_arena_strdup(a, st->message));
        if (st->domain[0])
            ctx->domain = cm_arena_strdup(a, st->domain);
        for (int i = 0; i < st->n_meta; i++)
            cm_rpc_fail_meta(ctx, st->meta[i].key, st->meta[i].value);
        if (st->field[0])
            cm_rpc_fail_field(ctx, st->field, ctx->message);
        return -code;
    }
    /* made by gRPC core or a foreign server: its text is not ours to show */
    cm_log_warn("dependency failed", "method", cm_rpc_ctx_method(ctx), "tenant", ctx->tenant,
                "request_id", md_lookup(ctx, "x-request-id"), "status", seen, NULL);
    return cm_rpc_fail(ctx, mapped, "DEPENDENCY_FAILED",
                       cm_arena_printf(a, "a dependency failed: %s", code_names[mapped]));
}

long long cm_rpc_ctx_quota(cm_rpc_ctx *ctx, const char *name, long long def)
{
    /* a detached context (tests, fuzzing) has no server, so no limits file */
    if (!ctx->w)
        return def;
    return cm_ratelimit_quota(ctx->w->s->o.ratelimit, ctx->tenant, name, def);
}

int cm_rpc_fail_quota(cm_rpc_ctx *ctx, const char *name, long long limit, const char *what)
{
    cm_arena *a = ctx->arena;
    const char *desc = cm_arena_printf(a, "%s: at most %lld", name, limit);
    int f = cm_rpc_fail(ctx, GRPC_STATUS_RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED",
                        cm_arena_printf(a,
                                        "quota %s of tenant %s reached (at most %lld): %s was "
                                        "not created",
                                        name, ctx->tenant ? ctx->tenant : "-", limit, what));
    cm_rpc_fail_meta(ctx, "quota", name);
    cm_rpc_fail_meta(ctx, "limit", cm_arena_printf(a, "%lld", limit));
    Google__Rpc__QuotaFailure__Violation v = GOOGLE__RPC__QUOTA_FAILURE__VIOLATION__INIT;
    v.subject = cm_arena_printf(a, "tenant:%s", ctx->tenant ? ctx->tenant : "-");
    v.description = (char *)desc;
    Google__Rpc__QuotaFailure__Violation *vs[] = {&v};
    Google__Rpc__QuotaFailure qf = GOOGLE__RPC__QUOTA_FAILURE__INIT;
    qf.n_violations = 1;
    qf.violations = vs;
    if (v.subject && v.description)
        cm_rpc_fail_detail(ctx, &qf.base);
    return f;
}

int cm_rpc_fail_key_reused(cm_rpc_ctx *ctx, const char *field)
{
    int f = cm_rpc_fail(ctx, GRPC_STATUS_ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                        cm_arena_printf(cm_rpc_ctx_arena(ctx),
                                        "%s was already used with a different request", field));
    cm_rpc_fail_meta(ctx, "field", field);
    return f;
}

int cm_rpc_fail_version(cm_rpc_ctx *ctx, const char *field, long long expected, long long current)
{
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    int f = cm_rpc_fail(ctx, GRPC_STATUS_ABORTED, "VERSION_MISMATCH",
                        cm_arena_printf(a, "%s %lld is not the current one (%lld): read it again",
                                        field, expected, current));
    cm_rpc_fail_meta(ctx, "current_version", cm_arena_printf(a, "%lld", current));
    return f;
}

int cm_rpc_fail_not_found(cm_rpc_ctx *ctx, const char *what)
{
    return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND",
                       cm_arena_printf(cm_rpc_ctx_arena(ctx), "no such %s", what));
}
