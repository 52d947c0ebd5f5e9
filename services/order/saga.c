/* the inventory side of CreateOrder: see ord_saga.h */
#include "ord_saga.h"

#include "cm_auth.h"
#include "cm_err.h"
#include "cm_log.h"
#include "ord_store.h"

#include <grpc/status.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RESERVE_METHOD "/commerce.inventory.v1.InventoryService/Reserve"
#define RELEASE_METHOD "/commerce.inventory.v1.InventoryService/Release"
#define GET_RESERVATION_METHOD "/commerce.inventory.v1.InventoryService/GetReservation"

struct ord_saga {
    cm_rpc_client *inv;
    int timeout_ms;
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

int ord_saga_new(ord_saga **out, cm_rpc_client *inv, int timeout_ms, cm_metrics *m)
{
    ord_saga *s = calloc(1, sizeof *s);
    if (!s)
        return CM_ENOMEM;
    s->inv = inv;
    s->timeout_ms = timeout_ms;
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
 * call's arena) or NULL with st filled. */
const Commerce__Inventory__V1__Reservation *
ord_saga_reserve(ord_saga *app, cm_rpc_ctx *ctx, const Commerce__Order__V1__CreateOrderRequest *req,
                 const ord_order *o, int64_t ttl_ms, cm_rpc_status *st)
{
    size_t n = req->n_lines;
    Commerce__Inventory__V1__ReserveRequest rr = COMMERCE__INVENTORY__V1__RESERVE_REQUEST__INIT;
    Commerce__Inventory__V1__ReserveLine *rl = cm_rpc_alloc(ctx, n * sizeof *rl);
    Commerce__Inventory__V1__ReserveLine **rlp = cm_rpc_alloc(ctx, n * sizeof *rlp);
    Google__Protobuf__Duration ttl = GOOGLE__PROTOBUF__DURATION__INIT;
    if (!rl || !rlp) {
        memset(st, 0, sizeof *st);
        st->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
        return NULL;
    }
    rr.order_id = (char *)o->order_id;
    rr.buyer_id = (char *)req->buyer_id;
    for (size_t i = 0; i < n; i++) {
        commerce__inventory__v1__reserve_line__init(&rl[i]);
        rl[i].sku = (char *)req->lines[i]->sku;
        rl[i].quantity = req->lines[i]->quantity;
        rlp[i] = &rl[i];
    }
    rr.lines = rlp;
    rr.n_lines = n;
    ttl.seconds = ttl_ms / 1000;
    rr.ttl = &ttl;
    cm_rpc_md md[8];
    size_t nmd = cm_rpc_ctx_propagate(ctx, md, 8);
    ProtobufCAllocator al = cm_arena_allocator(cm_rpc_ctx_arena(ctx));
    ProtobufCMessage *rm = NULL;
    int rc = cm_rpc_call(app->inv, RESERVE_METHOD, &rr.base,
                         &commerce__inventory__v1__reserve_response__descriptor, &al, &rm, md, nmd,
                         inventory_budget(app, ctx, app->timeout_ms), CM_RPC_CALL_IDEMPOTENT, st);
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
    pthread_mutex_destroy(&s->mu);
    free(s);
}
