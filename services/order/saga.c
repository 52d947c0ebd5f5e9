/* the inventory side of CreateOrder: see ord_saga.h */
#include "ord_saga.h"

#include "cm_auth.h"
#include "cm_err.h"
#include "cm_log.h"
#include "ord_store.h"

#include <grpc/status.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RESERVE_METHOD "/commerce.inventory.v1.InventoryService/Reserve"
#define RELEASE_METHOD "/commerce.inventory.v1.InventoryService/Release"
#define GET_RESERVATION_METHOD "/commerce.inventory.v1.InventoryService/GetReservation"
#define BATCH_RESERVE_METHOD "/commerce.inventory.v1.InventoryService/BatchReserve"

struct ord_saga {
    cm_rpc_client *inv;
    int timeout_ms;
    cm_group *batch;      /* concurrent Reserves as BatchReserves; NULL: off */
    atomic_int batch_off; /* inventory answered UNIMPLEMENTED: an older one */
    cm_counter *batched;  /* reservations made through BatchReserve */
    pthread_mutex_t mu;
    struct pending_release *releases; /* for the sweeper thread to send */
    size_t nreleases;
    cm_counter *released, *skipped;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int batch_commit(void *arg, void *conn, void *const *items, size_t n);

int ord_saga_new(ord_saga **out, cm_rpc_client *inv, int timeout_ms, int batch, cm_metrics *m)
{
    ord_saga *s = calloc(1, sizeof *s);
    if (!s)
        return CM_ENOMEM;
    s->inv = inv;
    s->timeout_ms = timeout_ms;
    /* two batches in flight: one gathers while the other is at inventory */
    if (batch > 0 && cm_group_new(&s->batch, &(cm_group_opts){.commit = batch_commit,
                                                              .arg = s,
                                                              .max_batch = batch,
                                                              .leaders = 2}) != 0) {
        free(s);
        return CM_ENOMEM;
    }
    s->batched = cm_metrics_counter(
        m, "order_batch_reserved_total",
        "Reserves sent to inventory inside a BatchReserve (ORDER_RESERVE_BATCH)", NULL);
    pthread_mutex_init(&s->mu, NULL);
    s->released =
        cm_metrics_counter(m, "order_reservations_released_total",
                           "reservations given back because their order could not be stored", NULL);
    s->skipped = cm_metrics_counter(
        m, "order_releases_skipped_total",
        "releases not sent because another attempt of the same create stored its order on that "
        "reservation meanwhile",
        NULL);
    *out = s;
    return 0;
}

/* a Release for the sweeper thread to send, with the metadata of the call
 * that asked for it (tenant, authorization, trace), once due */
typedef struct pending_release {
    char order_id[40];
    char tenant[CM_AUTH_TENANT_MAX + 1];
    int64_t due_ms;
    cm_rpc_md md[8];
    size_t nmd;
    struct pending_release *next;
    char buf[]; /* the metadata's strings */
} pending_release;

/* gives a reservation back (best effort: the reservation's ttl is the
 * backstop): the order could not be stored, or inventory did not answer in
 * time and may still make it. queued for the sweeper thread, so the caller
 * is answered at once.
 *
 * Not sent at once: another attempt of the same create (the caller's retry
 * while this one still waited, or a duplicate) derives the same order id,
 * finds the same reservation and may be storing its order on it right now.
 * Released then, that order would hold no stock. So the Release waits
 * release_delay_ms (twice ORDER_INVENTORY_TIMEOUT_MS, at least 2 s: longer
 * than such an attempt takes from its Reserve to its commit) and is sent
 * only if no order with that id exists by then. A later retry finds the
 * released reservation and moves to the next order id generation, or,
 * before the release, carries on with the reservation itself.
 *
 * Bounded: at most MAX_RELEASES wait, and one whose check the database
 * cannot answer for RELEASE_GIVE_UP_MS after it was due is dropped. Either
 * way the reservation's ttl returns the stock: held too long, never sold
 * twice. */
#define MAX_RELEASES 10000
#define RELEASE_GIVE_UP_MS 60000
static int64_t release_delay_ms(const ord_saga *s)
{
    int64_t d = 2 * (int64_t)s->timeout_ms;
    return d < 2000 ? 2000 : d;
}

void ord_saga_release_later(ord_saga *app, cm_rpc_ctx *ctx, const char *order_id)
{
    cm_rpc_md md[8];
    size_t nmd = cm_rpc_ctx_propagate(ctx, md, 8), need = 0;
    for (size_t i = 0; i < nmd; i++)
        need += strlen(md[i].key) + strlen(md[i].value) + 2;
    pending_release *r = calloc(1, sizeof *r + need);
    if (!r) {
        cm_log_warn("could not queue the release of a reservation; its ttl will", "order_id",
                    order_id, NULL);
        return;
    }
    snprintf(r->order_id, sizeof r->order_id, "%s", order_id);
    snprintf(r->tenant, sizeof r->tenant, "%s", cm_rpc_ctx_tenant(ctx));
    r->due_ms = now_ms() + release_delay_ms(app);
    char *p = r->buf;
    for (size_t i = 0; i < nmd; i++) {
        size_t kl = strlen(md[i].key) + 1, vl = strlen(md[i].value) + 1;
        memcpy(p, md[i].key, kl);
        r->md[i].key = p;
        p += kl;
        memcpy(p, md[i].value, vl);
        r->md[i].value = p;
        p += vl;
    }
    r->nmd = nmd;
    pthread_mutex_lock(&app->mu);
    int full = app->nreleases >= MAX_RELEASES;
    if (!full) {
        r->next = app->releases;
        app->releases = r;
        app->nreleases++;
    }
    pthread_mutex_unlock(&app->mu);
    if (full) {
        cm_log_warn("too many releases waiting; this reservation's ttl will return the stock",
                    "order_id", order_id, NULL);
        free(r);
    }
}

/* on the sweeper thread: sends the queued releases that are due, unless
 * their order exists by now (see release); keeps the others */
void ord_saga_send_releases(ord_saga *app, cm_db *db)
{
    pthread_mutex_lock(&app->mu);
    pending_release *list = app->releases;
    app->releases = NULL;
    app->nreleases = 0;
    pthread_mutex_unlock(&app->mu);
    pending_release *keep = NULL;
    size_t nkeep = 0;
    int64_t now = now_ms();
    while (list) {
        pending_release *r = list;
        list = r->next;
        int found = r->due_ms > now ? 1 : ord_store_exists(db, r->tenant, r->order_id);
        if (found == 0) {
            /* another attempt stored its order on this reservation */
            cm_counter_add(app->skipped, 1);
            free(r);
            continue;
        }
        if (found < 0 && found != CM_ENOTFOUND && now - r->due_ms > RELEASE_GIVE_UP_MS) {
            cm_log_warn("could not check for an order before a release; its ttl will", "order_id",
                        r->order_id, "error", cm_strerror(found), NULL);
            free(r);
            continue;
        }
        if (found != CM_ENOTFOUND) {
            /* not due (1), or the store could not say: later */
            r->next = keep;
            keep = r;
            nkeep++;
            continue;
        }
        Commerce__Inventory__V1__ReleaseRequest rq = COMMERCE__INVENTORY__V1__RELEASE_REQUEST__INIT;
        rq.order_id = r->order_id;
        ProtobufCMessage *resp = NULL;
        cm_rpc_status st;
        int rc = cm_rpc_call(app->inv, RELEASE_METHOD, &rq.base,
                             &commerce__inventory__v1__release_response__descriptor, NULL, &resp,
                             r->md, r->nmd, app->timeout_ms, CM_RPC_CALL_IDEMPOTENT, &st);
        if (rc == 0) {
            cm_counter_add(app->released, 1);
            protobuf_c_message_free_unpacked(resp, NULL);
        } else {
            cm_log_warn("could not release a reservation without an order; its ttl will",
                        "order_id", r->order_id, "error", st.message, NULL);
        }
        free(r);
    }
    if (keep) {
        pthread_mutex_lock(&app->mu);
        pending_release *last = keep;
        while (last->next)
            last = last->next;
        last->next = app->releases;
        app->releases = keep;
        app->nreleases += nkeep;
        pthread_mutex_unlock(&app->mu);
    }
}

/* one Reserve waiting in the batch group: the request and the caller's
 * metadata in, the outcome out */
typedef struct batch_job {
    const Commerce__Inventory__V1__ReserveRequest *rr;
    const char *tenant, *authz; /* calls go out per tenant and credentials */
    cm_rpc_md md[8];
    size_t nmd;
    int budget_ms;
    /* out */
    int sent;  /* inventory answered this request: resv_bin or st */
    int taken; /* the leader put it in a call already */
    cm_rpc_status *st;
    /* the reservation, packed (malloc'd): the caller unpacks it into its
     * own arena once woken. the leader never touches a caller's arena: the
     * caller may be leading another batch at that moment (two leaders) */
    uint8_t *resv_bin;
    size_t resv_len;
} batch_job;

static int same_text(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* 1 when no job of in[0..k) reserves j's order id (inventory refuses a
 * call that names one twice: concurrent creates of one request_id) */
static int unique_in(batch_job *const *in, size_t k, const batch_job *j)
{
    for (size_t i = 0; i < k; i++)
        if (strcmp(in[i]->rr->order_id, j->rr->order_id) == 0)
            return 0;
    return 1;
}

/* a BatchReserve result into its job: the reservation packed for the
 * caller (the reply lives in the leader's arena), or the failure */
static void batch_result(ord_saga *app, batch_job *j,
                         const Commerce__Inventory__V1__BatchReserveResult *r)
{
    memset(j->st, 0, sizeof *j->st);
    if (r->reservation && r->code == 0) {
        size_t n = protobuf_c_message_get_packed_size(&r->reservation->base);
        j->resv_bin = malloc(n ? n : 1);
        if (!j->resv_bin)
            return; /* out of memory: the caller asks on its own */
        j->resv_len = protobuf_c_message_pack(&r->reservation->base, j->resv_bin);
        cm_counter_add(app->batched, 1);
    } else {
        cm_rpc_status_parse(r->error.data, r->error.len, j->st);
        if (j->st->code == GRPC_STATUS_OK)
            j->st->code = r->code ? r->code : GRPC_STATUS_INTERNAL;
    }
    j->sent = 1;
}

/* a cm_group commit: the queued Reserves, one BatchReserve per tenant and
 * credentials (a batch never carries one caller's request on another's
 * token) and never one order id twice, on the leading caller's thread;
 * conn is its context. a call that failed as a whole (unavailable,
 * deadline) is each job's failure, as its own Reserve's would have been.
 * a job the call could not carry (an older inventory without the RPC, a
 * refused call, a reply that does not fit) is left unsent: its caller
 * sends its Reserve alone, which is idempotent by order id. always 0: the
 * outcomes are per job */
static int batch_commit(void *arg, void *conn, void *const *items, size_t n)
{
    ord_saga *app = arg;
    cm_rpc_ctx *lead = conn;
    batch_job *const *jobs = (batch_job *const *)items;
    Commerce__Inventory__V1__ReserveRequest **reqs = cm_rpc_alloc(lead, n * sizeof *reqs);
    batch_job **in = cm_rpc_alloc(lead, n * sizeof *in);
    cm_rpc_status *st = cm_rpc_alloc(lead, sizeof *st);
    if (!reqs || !in || !st)
        return 0;
    for (size_t i = 0; i < n; i++) {
        batch_job *first = jobs[i];
        if (first->taken)
            continue;
        size_t k = 0;
        int budget = first->budget_ms;
        for (size_t j = i; j < n; j++) {
            batch_job *b = jobs[j];
            if (b->taken || !same_text(b->tenant, first->tenant) ||
                !same_text(b->authz, first->authz) || !unique_in(in, k, b))
                continue; /* a later call of this commit takes it */
            b->taken = 1;
            budget = b->budget_ms < budget ? b->budget_ms : budget;
            in[k] = b;
            reqs[k++] = (Commerce__Inventory__V1__ReserveRequest *)b->rr;
        }
        if (atomic_load(&app->batch_off))
            continue;
        Commerce__Inventory__V1__BatchReserveRequest br =
            COMMERCE__INVENTORY__V1__BATCH_RESERVE_REQUEST__INIT;
        br.requests = reqs;
        br.n_requests = k;
        ProtobufCAllocator al = cm_arena_allocator(cm_rpc_ctx_arena(lead));
        ProtobufCMessage *rm = NULL;
        /* the first caller's metadata: its trace and request id stand for
         * the batch's (every caller of it has the same tenant and token) */
        int rc = cm_rpc_call(app->inv, BATCH_RESERVE_METHOD, &br.base,
                             &commerce__inventory__v1__batch_reserve_response__descriptor, &al, &rm,
                             first->md, first->nmd, budget, CM_RPC_CALL_IDEMPOTENT, st);
        if (rc) {
            if (st->code == GRPC_STATUS_UNIMPLEMENTED && !atomic_exchange(&app->batch_off, 1))
                cm_log_warn("inventory has no BatchReserve (an older version): reserving one "
                            "order per call",
                            NULL);
            if (st->code == GRPC_STATUS_UNIMPLEMENTED || st->code == GRPC_STATUS_INVALID_ARGUMENT)
                continue; /* the call, not a request: each caller sends its own */
            /* unavailable, deadline, ...: what each Reserve alone would have
             * met (inventory may have acted: the callers give their
             * reservations back, README.md) */
            for (size_t j = 0; j < k; j++) {
                memcpy(in[j]->st, st, sizeof *st);
                in[j]->sent = 1;
            }
            continue;
        }
        const Commerce__Inventory__V1__BatchReserveResponse *resp = (const void *)rm;
        if (resp->n_results != k)
            continue;
        for (size_t j = 0; j < k; j++)
            if (resp->results[j])
                batch_result(app, in[j], resp->results[j]);
    }
    return 0;
}

/* the time left for a call to inventory */
static int inventory_budget(const ord_saga *app, cm_rpc_ctx *ctx, int want)
{
    int budget = want < app->timeout_ms ? want : app->timeout_ms;
    int64_t left = cm_rpc_ctx_deadline_left_ms(ctx);
    if (left < (int64_t)budget + 50)
        budget = left > 100 ? (int)(left - 50) : 50;
    return budget;
}

/* Reserve of o's lines under o->order_id. returns the reservation (in the
 * call's arena) or NULL with st filled. with ORDER_RESERVE_BATCH, it goes
 * with the Reserves of concurrent creates in one BatchReserve (README.md,
 * "Reserving in batches"); alone when that call did not answer it. */
const Commerce__Inventory__V1__Reservation *
ord_saga_reserve(ord_saga *app, cm_rpc_ctx *ctx, const Commerce__Order__V1__CreateOrderRequest *req,
                 const ord_order *o, int64_t ttl_ms, cm_rpc_status *st)
{
    size_t n = req->n_lines;
    Commerce__Inventory__V1__ReserveRequest *rr = cm_rpc_alloc(ctx, sizeof *rr);
    Commerce__Inventory__V1__ReserveLine *rl = cm_rpc_alloc(ctx, n * sizeof *rl);
    Commerce__Inventory__V1__ReserveLine **rlp = cm_rpc_alloc(ctx, n * sizeof *rlp);
    Google__Protobuf__Duration *ttl = cm_rpc_alloc(ctx, sizeof *ttl);
    if (!rr || !rl || !rlp || !ttl) {
        memset(st, 0, sizeof *st);
        st->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        return NULL;
    }
    commerce__inventory__v1__reserve_request__init(rr);
    google__protobuf__duration__init(ttl);
    rr->order_id = (char *)o->order_id;
    rr->buyer_id = (char *)req->buyer_id;
    for (size_t i = 0; i < n; i++) {
        commerce__inventory__v1__reserve_line__init(&rl[i]);
        rl[i].sku = (char *)req->lines[i]->sku;
        rl[i].quantity = req->lines[i]->quantity;
        rlp[i] = &rl[i];
    }
    rr->lines = rlp;
    rr->n_lines = n;
    ttl->seconds = ttl_ms / 1000;
    rr->ttl = ttl;
    cm_rpc_md md[8];
    size_t nmd = cm_rpc_ctx_propagate(ctx, md, 8);
    int budget = inventory_budget(app, ctx, app->timeout_ms);
    if (app->batch && !atomic_load(&app->batch_off)) {
        batch_job job = {.rr = rr,
                         .tenant = cm_rpc_ctx_tenant(ctx),
                         .authz = cm_rpc_ctx_metadata(ctx, "authorization"),
                         .nmd = nmd,
                         .budget_ms = budget,
                         .st = st};
        memcpy(job.md, md, sizeof md);
        if (cm_group_submit(app->batch, ctx, &job) == 0 && job.sent) {
            if (!job.resv_bin)
                return NULL; /* st says why */
            ProtobufCAllocator al = cm_arena_allocator(cm_rpc_ctx_arena(ctx));
            const Commerce__Inventory__V1__Reservation *r =
                commerce__inventory__v1__reservation__unpack(&al, job.resv_len, job.resv_bin);
            free(job.resv_bin);
            if (r)
                return r;
            memset(st, 0, sizeof *st);
            st->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            return NULL;
        }
        free(job.resv_bin);
    }
    ProtobufCAllocator al = cm_arena_allocator(cm_rpc_ctx_arena(ctx));
    ProtobufCMessage *rm = NULL;
    int rc = cm_rpc_call(app->inv, RESERVE_METHOD, &rr->base,
                         &commerce__inventory__v1__reserve_response__descriptor, &al, &rm, md, nmd,
                         budget, CM_RPC_CALL_IDEMPOTENT, st);
    if (rc)
        return NULL;
    const Commerce__Inventory__V1__Reservation *r =
        ((Commerce__Inventory__V1__ReserveResponse *)rm)->reservation;
    if (!r) {
        memset(st, 0, sizeof *st);
        st->code = GRPC_STATUS_INTERNAL;
        snprintf(st->message, sizeof st->message, "inventory answered without a reservation");
    }
    return r;
}

/* inventory refused a Reserve under o->order_id for "another body". The
 * id is derived from this create's request_id, so the reservation is an
 * earlier attempt's that stored no order (the store was read first). If
 * it holds the same buyer and lines and is still ACTIVE, only its ttl
 * differs: the tenant's payment timeout changed between the attempts, or
 * the request's did. Carrying on with it keeps the stock held once; the
 * order's deadline then ends before the reservation (ord_deadline). A
 * different buyer or lines (the caller reused its key for another order)
 * or a reservation no longer active answers NULL: the next generation.
 * Never released here: a concurrent attempt may be storing its order on
 * this very reservation. */
const Commerce__Inventory__V1__Reservation *
ord_saga_earlier_attempt(ord_saga *app, cm_rpc_ctx *ctx,
                         const Commerce__Order__V1__CreateOrderRequest *req, const ord_order *o)
{
    Commerce__Inventory__V1__GetReservationRequest rq =
        COMMERCE__INVENTORY__V1__GET_RESERVATION_REQUEST__INIT;
    rq.order_id = (char *)o->order_id;
    cm_rpc_md md[8];
    size_t nmd = cm_rpc_ctx_propagate(ctx, md, 8);
    ProtobufCAllocator al = cm_arena_allocator(cm_rpc_ctx_arena(ctx));
    ProtobufCMessage *rm = NULL;
    cm_rpc_status st;
    if (cm_rpc_call(app->inv, GET_RESERVATION_METHOD, &rq.base,
                    &commerce__inventory__v1__get_reservation_response__descriptor, &al, &rm, md,
                    nmd, inventory_budget(app, ctx, app->timeout_ms), CM_RPC_CALL_IDEMPOTENT, &st))
        return NULL;
    const Commerce__Inventory__V1__Reservation *r =
        ((Commerce__Inventory__V1__GetReservationResponse *)rm)->reservation;
    if (!r || r->state != COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_ACTIVE ||
        strcmp(r->buyer_id ? r->buyer_id : "", req->buyer_id ? req->buyer_id : "") != 0 ||
        r->n_lines != req->n_lines)
        return NULL;
    for (size_t i = 0; i < req->n_lines; i++) {
        size_t k = 0;
        while (k < r->n_lines && strcmp(r->lines[k]->sku, req->lines[i]->sku) != 0)
            k++;
        if (k == r->n_lines || r->lines[k]->quantity != req->lines[i]->quantity)
            return NULL;
    }
    return r;
}

void ord_saga_free(ord_saga *s, cm_db *db)
{
    if (!s)
        return;
    /* the drain has let the calls go and the sweeper has stopped: the
     * releases that are due still go out; the others are left to their
     * reservations' ttl, since another replica's attempt may still be
     * storing an order on them */
    if (db)
        ord_saga_send_releases(s, db);
    size_t left = 0;
    while (s->releases) {
        pending_release *r = s->releases;
        s->releases = r->next;
        free(r);
        left++;
    }
    if (left) {
        char n[24];
        snprintf(n, sizeof n, "%zu", left);
        cm_log_warn(
            "releases not yet due at shutdown; their reservations' ttl will return the stock",
            "count", n, NULL);
    }
    cm_group_free(s->batch);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
