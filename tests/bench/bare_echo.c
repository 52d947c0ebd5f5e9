/*
 * commerce-bare-echo: the baseline for the rpc benchmark. a bare gRPC core
 * server with the runtime's threading shape and nothing else: no protobuf,
 * no metrics, no arena, no logging.
 *
 *   commerce-bare-echo --listen 127.0.0.1:PORT [--threads N] [--method PATH ...]
 *
 * like common/src/rpc_server.c: one completion queue per thread, registered
 * with the server before it starts; per thread and method one outstanding
 * grpc_server_request_registered_call (GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_
 * BUFFER, so the request arrives with the call) re-armed as soon as it
 * fires, plus one grpc_server_request_call that answers UNIMPLEMENTED for
 * unknown paths. a call is answered with one batch: initial metadata, the
 * request's own bytes as the reply (empty for an empty request), status OK,
 * close. the default method is the test service's Noop, whose request and
 * reply are both empty, so both servers send the same bytes.
 *
 * it prints "listening on HOST:PORT" once it serves, and exits 0 after a
 * graceful shutdown on SIGTERM or SIGINT.
 */
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_METHODS 16
#define DEFAULT_METHOD "/commerce.test.v1.TestService/Noop"

typedef enum { TAG_REQUEST, TAG_UNKNOWN, TAG_FINISH } tag_kind;

typedef struct worker worker;

/* one outstanding request for a registered method on one worker */
typedef struct request {
    tag_kind kind;
    worker *w;
    void *method;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
} request;

/* one outstanding request for an unregistered path */
typedef struct unknown_request {
    tag_kind kind;
    worker *w;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
} unknown_request;

/* a call being answered; lives until its batch completes */
typedef struct reply {
    tag_kind kind;
    struct reply *next_free;
    grpc_call *call;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    int cancelled;
} reply;

struct worker {
    grpc_server *server;
    grpc_completion_queue *cq;
    pthread_t thread;
    request requests[MAX_METHODS];
    int nrequests;
    unknown_request unknown;
    reply *free_replies;
};

static grpc_slice empty_details;
/* set before shutdown: requests are no longer re-armed */
static atomic_int draining;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: commerce-bare-echo --listen HOST:PORT [--threads N] [--method PATH ...]\n"
            "a bare gRPC core unary server that answers every registered PATH (default\n"
            "%s) with the request's bytes and OK.\n",
            DEFAULT_METHOD);
}

static void arm_request(request *q)
{
    q->call = NULL;
    q->payload = NULL;
    grpc_metadata_array_init(&q->md);
    grpc_call_error e =
        grpc_server_request_registered_call(q->w->server, q->method, &q->call, &q->deadline, &q->md,
                                            &q->payload, q->w->cq, q->w->cq, q);
    if (e != GRPC_CALL_OK)
        fprintf(stderr, "commerce-bare-echo: could not request a call (%d)\n", (int)e);
}

static void arm_unknown(unknown_request *u)
{
    u->call = NULL;
    grpc_call_details_init(&u->details);
    grpc_metadata_array_init(&u->md);
    grpc_call_error e = grpc_server_request_call(u->w->server, &u->call, &u->details, &u->md,
                                                 u->w->cq, u->w->cq, u);
    if (e != GRPC_CALL_OK)
        fprintf(stderr, "commerce-bare-echo: could not request a call (%d)\n", (int)e);
}

static reply *reply_get(worker *w)
{
    reply *r = w->free_replies;
    if (r) {
        w->free_replies = r->next_free;
        memset(r, 0, sizeof *r);
    } else {
        r = calloc(1, sizeof *r);
        if (!r)
            return NULL;
    }
    r->kind = TAG_FINISH;
    return r;
}

static void reply_put(worker *w, reply *r)
{
    grpc_call_unref(r->call);
    grpc_metadata_array_destroy(&r->md);
    if (r->payload)
        grpc_byte_buffer_destroy(r->payload);
    r->next_free = w->free_replies;
    w->free_replies = r;
}

static void send_reply(worker *w, reply *r, grpc_status_code code)
{
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    /* initial metadata even for an error: gRPC core 1.51 holds back a
     * status sent without it (a trailers-only reply) until the client
     * gives up, so the UNIMPLEMENTED would never arrive */
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (code == GRPC_STATUS_OK) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = r->payload;
        n++;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n].data.send_status_from_server.status_details = &empty_details;
    n++;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n].data.recv_close_on_server.cancelled = &r->cancelled;
    n++;
    if (grpc_call_start_batch(r->call, ops, n, r, NULL) != GRPC_CALL_OK) {
        /* nothing will come back on the queue for this call */
        fprintf(stderr, "commerce-bare-echo: could not send a reply\n");
        reply_put(w, r);
    }
}

static void on_request(worker *w, request *q, int ok)
{
    if (!ok) {
        /* the server is shutting down: the request was cancelled */
        grpc_metadata_array_destroy(&q->md);
        return;
    }
    reply *r = reply_get(w);
    grpc_call *call = q->call;
    grpc_metadata_array md = q->md;
    grpc_byte_buffer *payload = q->payload;
    /* re-arm first so core can match the next call while this one runs */
    if (!atomic_load_explicit(&draining, memory_order_relaxed))
        arm_request(q);
    if (!r) {
        grpc_call_cancel(call, NULL);
        grpc_call_unref(call);
        grpc_metadata_array_destroy(&md);
        if (payload)
            grpc_byte_buffer_destroy(payload);
        return;
    }
    r->call = call;
    r->md = md;
    /* echo: the request's bytes are the reply (an empty one when none came) */
    r->payload = payload ? payload : grpc_raw_byte_buffer_create(NULL, 0);
    send_reply(w, r, GRPC_STATUS_OK);
}

static void on_unknown(worker *w, unknown_request *u, int ok)
{
    if (!ok) {
        grpc_call_details_destroy(&u->details);
        grpc_metadata_array_destroy(&u->md);
        return;
    }
    reply *r = reply_get(w);
    grpc_call *call = u->call;
    grpc_metadata_array md = u->md;
    grpc_call_details_destroy(&u->details);
    if (!atomic_load_explicit(&draining, memory_order_relaxed))
        arm_unknown(u);
    if (!r) {
        grpc_call_cancel(call, NULL);
        grpc_call_unref(call);
        grpc_metadata_array_destroy(&md);
        return;
    }
    r->call = call;
    r->md = md;
    send_reply(w, r, GRPC_STATUS_UNIMPLEMENTED);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < w->nrequests; i++)
        arm_request(&w->requests[i]);
    arm_unknown(&w->unknown);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        switch (*(tag_kind *)ev.tag) {
        case TAG_REQUEST:
            on_request(w, ev.tag, ev.success);
            break;
        case TAG_UNKNOWN:
            on_unknown(w, ev.tag, ev.success);
            break;
        case TAG_FINISH:
            reply_put(w, ev.tag);
            break;
        }
    }
    while (w->free_replies) {
        reply *next = w->free_replies->next_free;
        free(w->free_replies);
        w->free_replies = next;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *listen = NULL;
    const char *methods[MAX_METHODS];
    int nmethods = 0;
    long nthreads = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "commerce-bare-echo: %s needs a value (or is unknown)\n", argv[i]);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(argv[i - 1], "--listen") == 0) {
            listen = v;
        } else if (strcmp(argv[i - 1], "--threads") == 0) {
            char *end;
            errno = 0;
            nthreads = strtol(v, &end, 10);
            if (errno || end == v || *end || nthreads < 1 || nthreads > 256) {
                fprintf(stderr, "commerce-bare-echo: --threads must be 1..256, got \"%s\"\n", v);
                return 2;
            }
        } else if (strcmp(argv[i - 1], "--method") == 0) {
            if (nmethods >= MAX_METHODS || v[0] != '/') {
                fprintf(stderr,
                        "commerce-bare-echo: --method wants /pkg.Service/Method "
                        "(at most %d)\n",
                        MAX_METHODS);
                return 2;
            }
            methods[nmethods++] = v;
        } else {
            fprintf(stderr, "commerce-bare-echo: unknown option %s\n", argv[i - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (!listen) {
        usage(stderr);
        return 2;
    }
    if (nmethods == 0)
        methods[nmethods++] = DEFAULT_METHOD;

    /* signals go to the main thread only, which waits for them: the
     * workers (and gRPC's own threads) inherit this mask */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    grpc_init();
    empty_details = grpc_empty_slice();
    grpc_server *server = grpc_server_create(NULL, NULL);
    void *registered[MAX_METHODS];
    for (int i = 0; i < nmethods; i++) {
        registered[i] = grpc_server_register_method(server, methods[i], NULL,
                                                    GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        if (!registered[i]) {
            fprintf(stderr, "commerce-bare-echo: could not register %s\n", methods[i]);
            return 2;
        }
    }
    worker *workers = calloc((size_t)nthreads, sizeof *workers);
    if (!workers)
        return 2;
    for (long t = 0; t < nthreads; t++) {
        worker *w = &workers[t];
        w->server = server;
        w->cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(server, w->cq, NULL);
        w->nrequests = nmethods;
        for (int i = 0; i < nmethods; i++) {
            w->requests[i].kind = TAG_REQUEST;
            w->requests[i].w = w;
            w->requests[i].method = registered[i];
        }
        w->unknown.kind = TAG_UNKNOWN;
        w->unknown.w = w;
    }
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(server, listen, creds);
    grpc_server_credentials_release(creds);
    if (port <= 0) {
        fprintf(stderr, "commerce-bare-echo: could not listen on %s\n", listen);
        return 1;
    }
    grpc_server_start(server);
    for (long t = 0; t < nthreads; t++) {
        if (pthread_create(&workers[t].thread, NULL, worker_main, &workers[t]) != 0) {
            fprintf(stderr, "commerce-bare-echo: could not start a thread\n");
            return 1;
        }
    }
    /* the port part of listen may be 0: print what was bound */
    const char *colon = strrchr(listen, ':');
    printf("listening on %.*s:%d\n", colon ? (int)(colon - listen) : (int)strlen(listen), listen,
           port);
    fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);

    /* documented order: shutdown_and_notify, wait (cancel after a grace),
     * destroy the server, then shut down and drain each queue */
    atomic_store(&draining, 1);
    grpc_completion_queue *scq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_server_shutdown_and_notify(server, scq, scq);
    gpr_timespec grace =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(2000, GPR_TIMESPAN));
    if (grpc_completion_queue_pluck(scq, scq, grace, NULL).type == GRPC_QUEUE_TIMEOUT) {
        grpc_server_cancel_all_calls(server);
        grpc_completion_queue_pluck(scq, scq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    }
    grpc_completion_queue_shutdown(scq);
    while (grpc_completion_queue_pluck(scq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(scq);
    grpc_server_destroy(server);
    for (long t = 0; t < nthreads; t++)
        grpc_completion_queue_shutdown(workers[t].cq);
    for (long t = 0; t < nthreads; t++) {
        pthread_join(workers[t].thread, NULL);
        grpc_completion_queue_destroy(workers[t].cq);
    }
    free(workers);
    grpc_shutdown();
    return 0;
}
