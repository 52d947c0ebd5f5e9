/*
 * cm_rpc: a gRPC server on gRPC core that hosts protobuf-c services.
 *
 * a service registers its protobuf-c service descriptor and a table
 * {method name -> handler}. the runtime registers "/pkg.Service/Method" for
 * every entry, runs N worker threads each with its own completion queue,
 * unpacks the request into a per-call arena, checks the deadline and the
 * caller's tenant, calls the handler on the worker thread, packs the reply,
 * maps errors to status codes with google.rpc.Status details in
 * grpc-status-details-bin, and records per-method metrics. unknown methods
 * get UNIMPLEMENTED. every server also serves grpc.health.v1.Health (Check,
 * and Watch as a stream of status changes) and, unless turned off, gRPC
 * server reflection (a bidirectional stream, see opts.reflection).
 *
 * a handler runs to completion on its worker thread; it may block (on its
 * worker's database connection, say). it returns 0 for OK, or the value of
 * one of the cm_rpc_fail*() calls.
 */
#ifndef CM_RPC_H
#define CM_RPC_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "cm_arena.h"
#include "cm_metrics.h"

typedef struct cm_rpc_server cm_rpc_server;
typedef struct cm_rpc_ctx cm_rpc_ctx;
struct cm_auth;

/* out is initialised (protobuf defaults) and allocated in the call's arena;
 * the handler fills it. strings and repeated fields it sets must live at
 * least as long as the call: use the arena (cm_rpc_alloc, cm_rpc_strdup). */
typedef int (*cm_rpc_handler)(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out);

enum {
    /* the method needs no tenant (health, server-wide admin) */
    CM_RPC_NO_TENANT = 1 << 0,
    /* the method's class, exactly one per method of a service: what it
     * costs and which of a tenant's rate limits it draws on. READ: looks,
     * changes nothing; WRITE: the business's hot path (orders, payments,
     * reservations); ADMIN: configuration and operator actions, and reads
     * only admins may make */
    CM_RPC_READ = 1 << 1,
    CM_RPC_WRITE = 1 << 2,
    CM_RPC_ADMIN = 1 << 3,
};

/* roles a method allows, space-separated, checked by the runtime before the
 * handler runs (with authentication on; AUTH_MODE=off trusts every caller):
 *
 *   admin     the tenant's operators: every call
 *   service   the tenant's backends (the monolith, our own services): the
 *             hot path and its reads
 *   reader    read-only: dashboards, support tools
 *   merchant  one merchant (claim merchant_id): its own orders, payouts,
 *             statements; the handler applies the scope
 *             (cm_rpc_ctx_merchant_scope)
 *   channel   one distribution channel (claim channel_id): its own
 *             commissions and payouts (cm_rpc_ctx_channel_scope)
 *
 * a caller needs one of them; a caller that only holds a scoped role is
 * limited to its merchant or channel. the README's table of roles per RPC
 * is printed from these (commerce-<svc> --rpc-markdown). */
#define CM_RPC_ROLES_ADMIN "admin"
#define CM_RPC_ROLES_WRITE "admin service"
#define CM_RPC_ROLES_READ "admin service reader"

typedef struct cm_rpc_method {
    const char *name; /* as in the .proto, e.g. "CreateOrder" */
    cm_rpc_handler handler;
    unsigned flags;    /* CM_RPC_*: a class, and NO_TENANT where it applies */
    const char *roles; /* CM_RPC_ROLES_* or a literal list; required with a tenant */
} cm_rpc_method;

/* the class of a method's flags as a word: "read", "write", "admin" or
 * NULL when the flags name none or several */
const char *cm_rpc_method_class(unsigned flags);

typedef struct cm_rpc_server_opts {
    const char *listen;       /* "host:port"; port 0 picks a free one */
    int workers;              /* threads, each with its own completion queue */
    size_t max_message_bytes; /* larger requests: RESOURCE_EXHAUSTED (0: 4 MiB) */
    cm_metrics *metrics;      /* NULL: cm_metrics_default() */
    /* called on each worker thread before it serves, and after it stopped;
     * the returned pointer is what cm_rpc_ctx_worker() gives handlers (a
     * database connection, say). init returning NULL stops the start. */
    void *(*worker_init)(int index, void *app);
    void (*worker_fini)(void *worker, void *app);
    /* called on the worker's thread when a handler returned, before the
     * reply is sent (what the call borrowed goes back). NULL: nothing */
    void (*call_end)(void *worker, void *app);
    void *app; /* given to hooks, and to handlers by cm_rpc_ctx_app() */
    /* caller identity: NULL means tenants come from x-tenant-id alone.
     * not owned. */
    const struct cm_auth *auth;
    /* TLS: both or neither; with client_ca the server requires client
     * certificates (mTLS). paths to PEM files. */
    const char *tls_cert_file;
    const char *tls_key_file;
    const char *tls_client_ca_file;
    /* error domain in ErrorInfo, e.g. "order.commerce" */
    const char *error_domain;
    /* non-zero: also serve grpc.reflection.v1 and v1alpha ServerReflection
     * from the built-in descriptor set (cm_reflection.h), so grpcurl needs
     * no proto files. at most RPC_REFLECTION_STREAMS streams at once, each
     * ended after RPC_REFLECTION_IDLE_MS without a message (rpc_server.c) */
    int reflection;
    /* per-tenant rate limits (cm_ratelimit.h), taken after authentication
     * and before the request is decoded, by the method's class: a refused
     * call is RESOURCE_EXHAUSTED / RATE_LIMITED with google.rpc.RetryInfo
     * and QuotaFailure. NULL: none. not owned; must outlive the server */
    struct cm_ratelimit *ratelimit;
} cm_rpc_server_opts;

/* creates the server; nothing listens until cm_rpc_server_start. */
int cm_rpc_server_new(cm_rpc_server **out, const cm_rpc_server_opts *o, char *err, size_t errlen);

/* registers every method of methods[] (names must exist in svc); must be
 * called before start. the tables must outlive the server. a method with a
 * tenant must name one class and its roles (CM_EINVAL otherwise), so no
 * call is served without a role check. */
int cm_rpc_server_add_service(cm_rpc_server *s, const ProtobufCServiceDescriptor *svc,
                              const cm_rpc_method *methods, size_t n, char *err, size_t errlen);

/* binds, starts the workers (running worker_init on each) and serves. */
int cm_rpc_server_start(cm_rpc_server *s, char *err, size_t errlen);

/* the bound port after start. */
int cm_rpc_server_port(const cm_rpc_server *s);

/* health: serving flag (set by the service: database up, not draining).
 * thread-safe. */
void cm_rpc_server_set_serving(cm_rpc_server *s, int serving);
int cm_rpc_server_serving(const cm_rpc_server *s);

/* graceful drain: health turns NOT_SERVING, no new calls are accepted,
 * calls in flight get up to grace_ms to finish, the rest are cancelled;
 * then the workers stop (worker_fini runs on each). blocking; call once,
 * from any thread but a worker. returns the number of calls that had to
 * be cancelled. */
int cm_rpc_server_shutdown(cm_rpc_server *s, int grace_ms);

/* frees a server that was never started or has been shut down. */
void cm_rpc_server_free(cm_rpc_server *s);

/* ---- inside a handler ---- */

void *cm_rpc_ctx_worker(const cm_rpc_ctx *ctx);
void *cm_rpc_ctx_app(const cm_rpc_ctx *ctx);
cm_arena *cm_rpc_ctx_arena(const cm_rpc_ctx *ctx);
/* "/pkg.Service/Method" */
const char *cm_rpc_ctx_method(const cm_rpc_ctx *ctx);
/* the caller's tenant (verified by the runtime); NULL only for methods
 * flagged CM_RPC_NO_TENANT when none was sent. */
const char *cm_rpc_ctx_tenant(const cm_rpc_ctx *ctx);
/* subject ("sub" claim) of the verified token, or NULL. */
const char *cm_rpc_ctx_subject(const cm_rpc_ctx *ctx);
/* the merchant (channel) a caller is limited to on this call: its token's
 * merchant_id (channel_id) when the only role it holds among the method's
 * roles is "merchant" ("channel"); NULL when the caller is not limited.
 * a handler of a method that allows a scoped role must apply it: rows of
 * other merchants (channels) are left out of lists and are NOT_FOUND to
 * gets, exactly as another tenant's rows are. */
const char *cm_rpc_ctx_merchant_scope(const cm_rpc_ctx *ctx);
const char *cm_rpc_ctx_channel_scope(const cm_rpc_ctx *ctx);
/* the value a listing's filter on the scoped id (its merchant_id or
 * channel_id) takes for a caller limited to scope (from the calls above;
 * NULL: not limited): requested when not limited or when it is the scope,
 * the scope when the caller filters on none (requested ""), and NULL when
 * requested names another merchant or channel: the listing is then an
 * empty page, as for a merchant or channel without rows. so the scope is
 * the query's own filter and pages stay full. */
const char *cm_rpc_scope_filter(const char *scope, const char *requested);
/* request metadata value by lower-case key, NUL-terminated in the arena;
 * NULL when absent. binary (-bin) values are returned raw. */
const char *cm_rpc_ctx_metadata(cm_rpc_ctx *ctx, const char *key);
/* x-request-id, traceparent and its trace id (32 hex), or NULL. */
const char *cm_rpc_ctx_request_id(cm_rpc_ctx *ctx);
const char *cm_rpc_ctx_traceparent(cm_rpc_ctx *ctx);
const char *cm_rpc_ctx_trace_id(cm_rpc_ctx *ctx);
/* milliseconds left before the caller's deadline (INT64_MAX: none). */
int64_t cm_rpc_ctx_deadline_left_ms(const cm_rpc_ctx *ctx);

/* the request bytes decoded as the server does before any handler runs:
 * the encoding checked on the wire (cm_pb_check_wire: strings UTF-8
 * without NUL), then unpacked into ctx's arena. 0 with *out, or the
 * failure (INVALID_ARGUMENT naming the field, MALFORMED_REQUEST) recorded
 * in ctx and returned, *out NULL. */
int cm_rpc_ctx_decode(cm_rpc_ctx *ctx, const ProtobufCMessageDescriptor *d, const uint8_t *data,
                      size_t len, ProtobufCMessage **out);

/* a context with no call behind it, for running a handler's checks without
 * a server (the fuzz harnesses, tests/fuzz/): tenant (copied, may be NULL)
 * is the caller's, cm_rpc_alloc and the cm_rpc_fail* family work and record
 * the outcome, the arena is the context's, cm_rpc_ctx_quota gives the
 * default. anything else that needs the call, the worker or the app
 * (cm_service_app, metadata, deadline) must not be used with it. NULL on out of memory; free with
 * cm_rpc_ctx_detached_free. */
cm_rpc_ctx *cm_rpc_ctx_detached_new(const char *tenant);
void cm_rpc_ctx_detached_free(cm_rpc_ctx *ctx);
/* the outcome recorded so far: the grpc status code (0: none yet), and
 * the ErrorInfo reason and message (NULL when unset) */
int cm_rpc_ctx_code(const cm_rpc_ctx *ctx, const char **reason, const char **message);

/* batch calls (inventory's BatchReserve): a context for one item of the
 * call, in its arena. it is the call's — tenant, caller, metadata, worker,
 * arena — with an outcome of its own: the cm_rpc_fail* family on it
 * describes that item and leaves the call alone. never returned to the
 * runtime. NULL on out of memory. */
cm_rpc_ctx *cm_rpc_ctx_item(cm_rpc_ctx *ctx);
/* the item's failure, packed in the call's arena as the google.rpc.Status
 * that grpc-status-details-bin would carry for it (code, message, ErrorInfo,
 * BadRequest, typed details), length in *len; NULL with *len 0 when the item
 * did not fail (or out of memory). */
const uint8_t *cm_rpc_ctx_item_status(cm_rpc_ctx *item, size_t *len);

/* a call that does the work of n + 1 (a batch): n more tokens of the
 * tenant's rate limit for the method's class, never refused — the bucket
 * goes into debt that the tenant's next calls wait out (cm_ratelimit_charge) */
void cm_rpc_ctx_charge(cm_rpc_ctx *ctx, unsigned n);

void *cm_rpc_alloc(cm_rpc_ctx *ctx, size_t n); /* zeroed, from the arena */
char *cm_rpc_strdup(cm_rpc_ctx *ctx, const char *s);

/* failing: each records the status for the call and returns a negative
 * value for the handler to return. message is for the developer calling us
 * (never SQL or internals). reason is an UPPER_SNAKE ErrorInfo reason, a
 * value name of error_reason.proto (scripts/check_error_reasons.py checks
 * every one the code passes); NULL gets the catalogue's plainest reason
 * for the code. */
int cm_rpc_fail(cm_rpc_ctx *ctx, int grpc_code, const char *reason, const char *message);
/* INVALID_ARGUMENT with a google.rpc.BadRequest naming the field
 * ("lines[2].quantity") and reason "INVALID_ARGUMENT". may be called several
 * times to name several fields; the status message names the first. */
int cm_rpc_fail_field(cm_rpc_ctx *ctx, const char *field, const char *description);
/* maps a CM_E* code (cm_err_grpc_code) with the given message and the
 * code's catalogued reason (CM_EUNAVAIL: DEPENDENCY_UNAVAILABLE, CM_ENOMEM:
 * OUT_OF_MEMORY, ...); CM_ECANCELLED, which only the drain causes, is
 * UNAVAILABLE / SHUTTING_DOWN; INTERNAL keeps its detail for the log. */
int cm_rpc_fail_err(cm_rpc_ctx *ctx, int cm_err, const char *message);
/* the failures every admin api shares: an idempotency key used with
 * another body (ALREADY_EXISTS / IDEMPOTENCY_KEY_REUSED, metadata field);
 * compare-and-set lost (ABORTED / VERSION_MISMATCH naming the field and
 * the current value, metadata current_version); an unknown id of the
 * caller's tenant (NOT_FOUND / RESOURCE_NOT_FOUND, "no such <what>"). each
 * returns the failure's value. */
int cm_rpc_fail_key_reused(cm_rpc_ctx *ctx, const char *field);
int cm_rpc_fail_version(cm_rpc_ctx *ctx, const char *field, long long expected, long long current);
int cm_rpc_fail_not_found(cm_rpc_ctx *ctx, const char *what);

/* the caller's tenant's quota name (how many of something it may have,
 * e.g. "skus") from RATE_LIMITS_FILE (cm_ratelimit_quota), or def when
 * the file sets none or the server has no limiter. */
long long cm_rpc_ctx_quota(cm_rpc_ctx *ctx, const char *name, long long def);
/* a creation over the tenant's quota: RESOURCE_EXHAUSTED / QUOTA_EXCEEDED
 * naming it (metadata "quota", "limit"; a google.rpc.QuotaFailure with
 * subject "tenant:<id>" and description "<name>: at most <limit>"). what
 * says what was not created, for the message ("a new sku"). returns the
 * failure's value. */
int cm_rpc_fail_quota(cm_rpc_ctx *ctx, const char *name, long long limit, const char *what);

/* adds a typed detail to the failure's google.rpc.Status, packed as an Any
 * with type URL "type.googleapis.com/<full message name>" (e.g. a
 * commerce.inventory.v1.StockShortageDetail). packed at once, so detail may
 * live on the handler's stack. at most 4 per call; call after a
 * cm_rpc_fail*. */
void cm_rpc_fail_detail(cm_rpc_ctx *ctx, const ProtobufCMessage *detail);

/* adds a key/value to the ErrorInfo metadata of the failure (e.g. the SKUs
 * short and what is available). call after a cm_rpc_fail*. */
void cm_rpc_fail_meta(cm_rpc_ctx *ctx, const char *key, const char *value);

struct cm_rpc_status;

/* fails the call with what a downstream call (cm_rpc_call) returned in st,
 * so our caller sees the downstream's refusal as if it were ours. returns
 * the negative value for the handler to return; like every cm_rpc_fail*,
 * the first failure of a call wins. st is copied: it may live on the
 * handler's stack.
 *
 * passed through, same code: INVALID_ARGUMENT, DEADLINE_EXCEEDED,
 * NOT_FOUND, ALREADY_EXISTS, RESOURCE_EXHAUSTED, FAILED_PRECONDITION,
 * ABORTED, OUT_OF_RANGE, UNAVAILABLE. the downstream's google.rpc.Status is
 * re-emitted: its message, and every detail byte for byte — the ErrorInfo
 * with its reason, metadata and *the downstream's domain* (the domain says
 * who refused: "inventory.commerce" on SOLD_OUT tells the caller which
 * service to look at, and the reason is only unique within its domain),
 * BadRequest (whose field paths name the downstream's request: a handler
 * whose API names fields otherwise translates instead), typed Any's. a
 * status without ErrorInfo gets ours in front. when the details were too
 * large to keep (st->details_truncated), what was parsed is re-emitted:
 * message, ErrorInfo reason, domain and metadata, first BadRequest field;
 * other typed details are lost.
 *
 * not passed through: a downstream's UNAUTHENTICATED, PERMISSION_DENIED,
 * UNIMPLEMENTED, INTERNAL, UNKNOWN or DATA_LOSS means our credentials,
 * deployment or the downstream are broken — nothing our caller can fix or
 * should retry. the call fails INTERNAL, reason DEPENDENCY_FAILED in our
 * domain, with a generic message and no downstream detail; the downstream's
 * status goes to the error log. CANCELLED (our caller did not cancel us,
 * or it would not be listening) becomes UNAVAILABLE, DEPENDENCY_FAILED.
 * a status without details was made by gRPC core (connection refused,
 * deadline, message size) or a foreign server: its text may name
 * addresses, so only the code passes, with reason DEPENDENCY_FAILED in our
 * domain and a generic message; the original is logged as a warning.
 *
 * later cm_rpc_fail_meta/_detail/_field calls add nothing to a status
 * passed on byte for byte (it stays as the downstream sent it). */
int cm_rpc_fail_forward(cm_rpc_ctx *ctx, const struct cm_rpc_status *st);

#endif
