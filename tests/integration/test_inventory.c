/*
 * commerce-inventory as real processes against the private postgres over
 * real gRPC: reservations never oversell (one and two replicas), retries
 * are idempotent, bad input changes nothing, expiry happens exactly once,
 * a kill -9 under load loses no acknowledged reservation. one inventory
 * (or two) of its own per test, spawned here; the calls every service test
 * makes (SetStock, GetStock, CheckInvariants) and the tenant come from
 * fixture.h.
 */
#include "fixture.h"

#include <grpc/status.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cm_kafka.h"

#include "commerce/events/v1/inventory_events.pb-c.h"
#include "google/rpc/status.pb-c.h"

#define SVC FX_ISVC

static char schema[64];
static int schema_seq;

/* a fresh schema per test: tests never see each other's rows */
static void new_schema(void)
{
    snprintf(schema, sizeof schema, "inv_it_%d_%d", (int)getpid(), ++schema_seq);
}

static void spawn(hs_proc *p, const char *const *extra)
{
    char s[96];
    snprintf(s, sizeof s, "INVENTORY_SCHEMA=%s", schema);
    /* published outbox rows are kept (marked) for an hour: the tests read
     * what each change wrote to the outbox after the relay sent it */
    const char *env[] = {s,
                         "INVENTORY_SWEEP_MS=100",
                         "INVENTORY_CONSUME_ORDERS=off",
                         "WORKERS=16",
                         "INVENTORY_INVARIANT_CHECK_S=1",
                         "OUTBOX_RETENTION_SECONDS=3600",
                         NULL};
    const char *all[24];
    hs_start(p, INVENTORY_BIN, hs_env_join(all, 24, env, extra));
}

static int reserve_lines(cm_rpc_client *c, const char *order, const char *buyer,
                         const char *const *skus, const int64_t *qty, size_t n, int ttl_s,
                         Commerce__Inventory__V1__ReserveResponse **out, cm_rpc_status *st)
{
    Commerce__Inventory__V1__ReserveRequest q = COMMERCE__INVENTORY__V1__RESERVE_REQUEST__INIT;
    Commerce__Inventory__V1__ReserveLine lines[8], *lp[8];
    Google__Protobuf__Duration ttl = GOOGLE__PROTOBUF__DURATION__INIT;
    for (size_t i = 0; i < n; i++) {
        commerce__inventory__v1__reserve_line__init(&lines[i]);
        lines[i].sku = (char *)skus[i];
        lines[i].quantity = qty[i];
        lp[i] = &lines[i];
    }
    q.order_id = (char *)order;
    q.buyer_id = (char *)(buyer ? buyer : "");
    q.lines = lp;
    q.n_lines = n;
    if (ttl_s) {
        ttl.seconds = ttl_s;
        q.ttl = &ttl;
    }
    return hs_call(c, SVC "Reserve", &q.base,
                   &commerce__inventory__v1__reserve_response__descriptor, (ProtobufCMessage **)out,
                   st, fx_md, 1);
}

static int reserve1(cm_rpc_client *c, const char *order, const char *sku, int64_t qty,
                    cm_rpc_status *st)
{
    const char *skus[] = {sku};
    return reserve_lines(c, order, NULL, skus, &qty, 1, 0, NULL, st);
}

static int resolve(cm_rpc_client *c, const char *method, const char *order, int *state,
                   cm_rpc_status *st)
{
    Commerce__Inventory__V1__ConfirmRequest q = COMMERCE__INVENTORY__V1__CONFIRM_REQUEST__INIT;
    q.order_id = (char *)order;
    Commerce__Inventory__V1__ConfirmResponse *r = NULL;
    int code = hs_call(c, method, &q.base, &commerce__inventory__v1__confirm_response__descriptor,
                       (ProtobufCMessage **)&r, st, fx_md, 1);
    if (state)
        *state = r && r->reservation ? (int)r->reservation->state : 0;
    if (r)
        protobuf_c_message_free_unpacked(&r->base, NULL);
    return code;
}

/* violations CheckInvariants reports for the tenant (-1: the call failed);
 * a call that answered must have checked some skus */
static long violations(cm_rpc_client *c)
{
    int64_t checked = 0;
    long n = fx_violations(c, &checked);
    if (n >= 0)
        ck_assert_int_gt(checked, 0);
    return n;
}

/* ---- the basics ---- */

START_TEST(reserve_confirm_release_and_retries)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    cm_rpc_client *c = hs_client(&p, NULL);
    fx_set_stock(c, "r1", "sku-a", 10);
    fx_set_stock(c, "r2", "sku-b", 5);

    const char *skus[] = {"sku-a", "sku-b"};
    int64_t q[] = {3, 2};
    Commerce__Inventory__V1__ReserveResponse *r = NULL;
    ck_assert_int_eq(reserve_lines(c, "o-1", "u1", skus, q, 2, 0, &r, NULL), 0);
    ck_assert_int_eq(r->reservation->state,
                     COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_ACTIVE);
    ck_assert_uint_eq(r->reservation->n_lines, 2);
    ck_assert_ptr_nonnull(r->reservation->expires_at);
    int64_t expires = r->reservation->expires_at->seconds;
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* the same order again: the same reservation, nothing more reserved */
    ck_assert_int_eq(reserve_lines(c, "o-1", "u1", skus, q, 2, 0, &r, NULL), 0);
    ck_assert_int_eq(r->reservation->expires_at->seconds, expires);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    fx_level a = fx_get_level(c, "sku-a");
    ck_assert_int_eq(a.available, 7);
    ck_assert_int_eq(a.reserved, 3);

    /* the same order with other lines: ALREADY_EXISTS */
    int64_t q2[] = {4, 2};
    cm_rpc_status st;
    ck_assert_int_eq(reserve_lines(c, "o-1", "u1", skus, q2, 2, 0, NULL, &st),
                     GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");

    /* confirm twice: sold, once */
    int state;
    ck_assert_int_eq(resolve(c, SVC "Confirm", "o-1", &state, NULL), 0);
    ck_assert_int_eq(state,
                     COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_CONFIRMED);
    ck_assert_int_eq(resolve(c, SVC "Confirm", "o-1", &state, NULL), 0);
    a = fx_get_level(c, "sku-a");
    ck_assert_int_eq(a.sold, 3);
    ck_assert_int_eq(a.reserved, 0);
    ck_assert_int_eq(a.on_hand, 10);
    /* release after confirm is refused */
    ck_assert_int_eq(resolve(c, SVC "Release", "o-1", NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");

    /* release twice: back to available, once */
    ck_assert_int_eq(reserve_lines(c, "o-2", "u1", skus, q, 2, 0, NULL, NULL), 0);
    ck_assert_int_eq(resolve(c, SVC "Release", "o-2", &state, NULL), 0);
    ck_assert_int_eq(state, COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_RELEASED);
    ck_assert_int_eq(resolve(c, SVC "Release", "o-2", NULL, NULL), 0);
    a = fx_get_level(c, "sku-a");
    ck_assert_int_eq(a.available, 7);
    ck_assert_int_eq(a.reserved, 0);
    /* confirm after release is refused */
    ck_assert_int_eq(resolve(c, SVC "Confirm", "o-2", NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);

    /* release of an unknown order leaves a tombstone: a late reserve is refused */
    ck_assert_int_eq(resolve(c, SVC "Release", "o-late", NULL, NULL), 0);
    ck_assert_int_eq(reserve1(c, "o-late", "sku-a", 1, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_int_eq(fx_get_level(c, "sku-a").available, 7);
    /* confirm of an unknown order */
    ck_assert_int_eq(resolve(c, SVC "Confirm", "o-none", NULL, NULL), GRPC_STATUS_NOT_FOUND);

    /* sold out names the sku and what is available; nothing is reserved */
    int64_t big[] = {1, 6};
    ck_assert_int_eq(reserve_lines(c, "o-3", "u1", skus, big, 2, 0, NULL, &st),
                     GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "SOLD_OUT");
    ck_assert_msg(strstr(st.message, "sku-b") && strstr(st.message, "available 3"), "message: %s",
                  st.message);
    /* ErrorInfo first, then the typed StockShortageDetail */
    ck_assert_int_eq(st.n_details, 2);
    ck_assert_str_eq(st.detail_types[0], "type.googleapis.com/google.rpc.ErrorInfo");
    ck_assert_str_eq(st.detail_types[1],
                     "type.googleapis.com/commerce.inventory.v1.StockShortageDetail");
    ck_assert_int_eq(fx_get_level(c, "sku-a").available, 7);

    ck_assert_int_eq(violations(c), 0);

    /* many in one call: known skus in request order, unknown ones listed apart */
    Commerce__Inventory__V1__BatchGetStockRequest bq =
        COMMERCE__INVENTORY__V1__BATCH_GET_STOCK_REQUEST__INIT;
    char *bskus[] = {"sku-b", "sku-none", "sku-a"};
    bq.skus = bskus;
    bq.n_skus = 3;
    Commerce__Inventory__V1__BatchGetStockResponse *br = NULL;
    ck_assert_int_eq(hs_call(c, SVC "BatchGetStock", &bq.base,
                             &commerce__inventory__v1__batch_get_stock_response__descriptor,
                             (ProtobufCMessage **)&br, NULL, fx_md, 1),
                     0);
    ck_assert_uint_eq(br->n_stocks, 2);
    ck_assert_str_eq(br->stocks[0]->sku, "sku-b");
    ck_assert_str_eq(br->stocks[1]->sku, "sku-a");
    ck_assert_int_eq(br->stocks[1]->available, 7);
    ck_assert_uint_eq(br->n_missing_skus, 1);
    ck_assert_str_eq(br->missing_skus[0], "sku-none");
    protobuf_c_message_free_unpacked(&br->base, NULL);
    bskus[2] = "sku-b";
    ck_assert_int_eq(hs_call(c, SVC "BatchGetStock", &bq.base,
                             &commerce__inventory__v1__batch_get_stock_response__descriptor, NULL,
                             &st, fx_md, 1),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "skus[2]");

    /* the metric says the invariants hold (checked every second here) */
    char body[65536];
    usleep(1500000);
    ck_assert_int_eq(hs_http_get(p.admin_port, "/metrics", body, sizeof body), 200);
    ck_assert(hs_metric_in(body, "inventory_invariants_ok") == 1);
    ck_assert(hs_metric_in(body, "inventory_invariant_violations") == 0);

    /* the events went to the outbox with their changes: set, confirm, release */
    ck_assert_int_ge(hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE type = "
                                         "'commerce.events.v1.StockChanged' AND key = 'sku-a'"),
                     3);
    ck_assert_int_eq(hs_sql_long(schema,
                                 "SELECT count(*) FROM outbox WHERE type = "
                                 "'commerce.events.v1.ReservationConfirmed' AND key = 'o-1'"),
                     1);
    ck_assert_int_eq(hs_sql_long(schema,
                                 "SELECT count(*) FROM outbox WHERE type = "
                                 "'commerce.events.v1.ReservationReleased' AND key = 'o-2'"),
                     1);
    ck_assert_int_eq(
        hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE topic <> 'commerce.inventory.v1'"),
        0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

START_TEST(bad_input_changes_nothing)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    cm_rpc_client *c = hs_client(&p, NULL);
    fx_set_stock(c, "r1", "sku-a", 10);
    cm_rpc_status st;
    const char *two[] = {"sku-a", "sku-a"};
    int64_t q2[] = {1, 1};
    ck_assert_int_eq(reserve1(c, "o-1", "sku-a", -1, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "lines[0].quantity");
    ck_assert_int_eq(reserve1(c, "o-1", "sku-a", 0, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "lines[0].quantity");
    ck_assert_int_eq(reserve1(c, "o-1", "sku-a", 1LL << 60, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "lines[0].quantity");
    ck_assert_int_eq(reserve_lines(c, "o-1", NULL, two, q2, 2, 0, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "lines[1].sku");
    ck_assert_int_eq(reserve_lines(c, "o-1", NULL, two, q2, 0, 0, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "lines");
    ck_assert_int_eq(reserve1(c, "o-1", "bad sku!", 1, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "lines[0].sku");
    ck_assert_int_eq(reserve1(c, "", "sku-a", 1, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "order_id");
    /* a never-stocked sku is sold out, as the api says */
    ck_assert_int_eq(reserve1(c, "o-1", "sku-unknown", 1, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "SOLD_OUT");
    /* missing tenant */
    Commerce__Inventory__V1__GetStockRequest g = COMMERCE__INVENTORY__V1__GET_STOCK_REQUEST__INIT;
    g.sku = "sku-a";
    int code =
        hs_call(c, SVC "GetStock", &g.base,
                &commerce__inventory__v1__get_stock_response__descriptor, NULL, &st, NULL, 0);
    ck_assert(code == GRPC_STATUS_INVALID_ARGUMENT || code == GRPC_STATUS_UNAUTHENTICATED);
    g.sku = "sku-unknown";
    ck_assert_int_eq(hs_call(c, SVC "GetStock", &g.base,
                             &commerce__inventory__v1__get_stock_response__descriptor, NULL, &st,
                             fx_md, 1),
                     GRPC_STATUS_NOT_FOUND);
    /* admin input */
    Commerce__Inventory__V1__AdjustStockRequest a =
        COMMERCE__INVENTORY__V1__ADJUST_STOCK_REQUEST__INIT;
    a.request_id = "adj-1";
    a.sku = "sku-a";
    a.delta = 0;
    a.reason = "x";
    a.actor = "y";
    ck_assert_int_eq(hs_call(c, SVC "AdjustStock", &a.base,
                             &commerce__inventory__v1__adjust_stock_response__descriptor, NULL, &st,
                             fx_md, 1),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "delta");
    a.delta = -11;
    ck_assert_int_eq(hs_call(c, SVC "AdjustStock", &a.base,
                             &commerce__inventory__v1__adjust_stock_response__descriptor, NULL, &st,
                             fx_md, 1),
                     GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "STOCK_WOULD_GO_NEGATIVE");
    a.sku = "sku-unknown";
    a.delta = -1;
    a.request_id = "adj-2";
    ck_assert_int_eq(hs_call(c, SVC "AdjustStock", &a.base,
                             &commerce__inventory__v1__adjust_stock_response__descriptor, NULL, &st,
                             fx_md, 1),
                     GRPC_STATUS_NOT_FOUND);
    a.reason = "";
    ck_assert_int_eq(hs_call(c, SVC "AdjustStock", &a.base,
                             &commerce__inventory__v1__adjust_stock_response__descriptor, NULL, &st,
                             fx_md, 1),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "reason");

    fx_level l = fx_get_level(c, "sku-a");
    ck_assert_int_eq(l.available, 10);
    ck_assert_int_eq(l.reserved, 0);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM reservation"), 0);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock"), 1);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change"), 1);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

START_TEST(admin_changes_are_idempotent_and_audited)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    cm_rpc_client *c = hs_client(&p, NULL);
    Commerce__Inventory__V1__SetStockRequest s = COMMERCE__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
    s.request_id = "set-1";
    s.sku = "sku-a";
    s.available = 10;
    s.reason = "stock take";
    s.actor = "ops:alice";
    Commerce__Inventory__V1__SetStockResponse *r1 = NULL, *r2 = NULL;
    ck_assert_int_eq(hs_call(c, SVC "SetStock", &s.base,
                             &commerce__inventory__v1__set_stock_response__descriptor,
                             (ProtobufCMessage **)&r1, NULL, fx_md, 1),
                     0);
    ck_assert_int_eq(hs_call(c, SVC "SetStock", &s.base,
                             &commerce__inventory__v1__set_stock_response__descriptor,
                             (ProtobufCMessage **)&r2, NULL, fx_md, 1),
                     0);
    ck_assert_str_eq(r1->change->change_id, r2->change->change_id);
    ck_assert_str_eq(r2->change->reason, "stock take");
    ck_assert_str_eq(r2->change->actor, "ops:alice");
    ck_assert_int_eq(r2->change->available_delta, 10);
    ck_assert_int_eq(r2->stock->available, 10);
    protobuf_c_message_free_unpacked(&r1->base, NULL);
    protobuf_c_message_free_unpacked(&r2->base, NULL);
    cm_rpc_status st;
    s.available = 11;
    ck_assert_int_eq(hs_call(c, SVC "SetStock", &s.base,
                             &commerce__inventory__v1__set_stock_response__descriptor, NULL, &st,
                             fx_md, 1),
                     GRPC_STATUS_ALREADY_EXISTS);
    /* compare-and-set */
    s.request_id = "set-2";
    s.expected_version = 99;
    ck_assert_int_eq(hs_call(c, SVC "SetStock", &s.base,
                             &commerce__inventory__v1__set_stock_response__descriptor, NULL, &st,
                             fx_md, 1),
                     GRPC_STATUS_ABORTED);
    Commerce__Inventory__V1__AdjustStockRequest a =
        COMMERCE__INVENTORY__V1__ADJUST_STOCK_REQUEST__INIT;
    a.request_id = "adj-1";
    a.sku = "sku-a";
    a.delta = -3;
    a.reason = "damaged";
    a.actor = "wms";
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(hs_call(c, SVC "AdjustStock", &a.base,
                                 &commerce__inventory__v1__adjust_stock_response__descriptor, NULL,
                                 NULL, fx_md, 1),
                         0);
    fx_level l = fx_get_level(c, "sku-a");
    ck_assert_int_eq(l.available, 7);
    ck_assert_int_eq(l.on_hand, 7);
    ck_assert_int_eq(hs_sql_long(schema,
                                 "SELECT count(*) FROM stock_change WHERE reason = 'damaged' AND "
                                 "actor = 'wms' AND available_delta = -3"),
                     1);
    ck_assert_int_eq(violations(c), 0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

/* ---- expiry ---- */

START_TEST(expiry_releases_exactly_once_with_two_replicas)
{
    new_schema();
    hs_proc p1, p2;
    spawn(&p1, NULL);
    spawn(&p2, NULL);
    cm_rpc_client *c = hs_client(&p1, NULL);
    fx_set_stock(c, "r1", "sku-e", 100);
    const char *skus[] = {"sku-e"};
    int64_t one = 1;
    char order[32];
    for (int i = 0; i < 40; i++) {
        snprintf(order, sizeof order, "exp-%d", i);
        ck_assert_int_eq(reserve_lines(c, order, NULL, skus, &one, 1, 1, NULL, NULL), 0);
    }
    ck_assert_int_eq(fx_get_level(c, "sku-e").reserved, 40);
    long long until = hs_now_ms() + 15000;
    while (hs_now_ms() < until && fx_get_level(c, "sku-e").reserved > 0)
        usleep(100000);
    fx_level l = fx_get_level(c, "sku-e");
    ck_assert_int_eq(l.reserved, 0);
    ck_assert_int_eq(l.available, 100);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change WHERE kind = 6"), 40);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM reservation WHERE state = 4"), 40);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE type = "
                                         "'commerce.events.v1.ReservationExpired'"),
                     40);
    /* confirm after expiry is refused, clearly */
    cm_rpc_status st;
    ck_assert_int_eq(resolve(c, SVC "Confirm", "exp-0", NULL, &st),
                     GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(st.message, "expired"));
    /* release after expiry is a no-op success */
    int state;
    ck_assert_int_eq(resolve(c, SVC "Release", "exp-1", &state, NULL), 0);
    ck_assert_int_eq(state, COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_EXPIRED);
    ck_assert_int_eq(fx_get_level(c, "sku-e").available, 100);
    ck_assert_int_eq(violations(c), 0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p1, SIGTERM, 20000), 0);
    ck_assert_int_eq(hs_stop(&p2, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

/* ---- concurrency ---- */

typedef struct buyers {
    cm_rpc_client *clients[2];
    int nclients;
    const char *sku;
    int per_thread;
    atomic_int ok, sold_out, other, next;
    char prefix[16];
} buyers;

static void *buyer_main(void *p)
{
    buyers *b = p;
    for (int i = 0; i < b->per_thread; i++) {
        int n = atomic_fetch_add(&b->next, 1);
        char order[48];
        snprintf(order, sizeof order, "%s-%d", b->prefix, n);
        cm_rpc_status st;
        int code = reserve1(b->clients[n % b->nclients], order, b->sku, 1, &st);
        if (code == 0)
            atomic_fetch_add(&b->ok, 1);
        else if (code == GRPC_STATUS_FAILED_PRECONDITION && strcmp(st.reason, "SOLD_OUT") == 0)
            atomic_fetch_add(&b->sold_out, 1);
        else
            atomic_fetch_add(&b->other, 1);
    }
    return NULL;
}

static void run_buyers(buyers *b, int threads)
{
    pthread_t t[64];
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, buyer_main, b);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
}

static void never_oversell(int replicas, const char *hot)
{
    new_schema();
    hs_proc p[2];
    const char *env[] = {hot, NULL};
    buyers b = {.nclients = replicas, .sku = "sku-hot", .per_thread = 10, .prefix = "cc"};
    for (int i = 0; i < replicas; i++) {
        spawn(&p[i], env);
        b.clients[i] = hs_client(&p[i], NULL);
    }
    const int stock = 137;
    fx_set_stock(b.clients[0], "r1", "sku-hot", stock);
    run_buyers(&b, 32); /* 320 buyers for 137 units */
    ck_assert_int_eq(atomic_load(&b.other), 0);
    ck_assert_int_eq(atomic_load(&b.ok), stock);
    ck_assert_int_eq(atomic_load(&b.sold_out), 320 - stock);
    fx_level l = fx_get_level(b.clients[0], "sku-hot");
    ck_assert_int_eq(l.available, 0);
    ck_assert_int_eq(l.reserved, stock);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM reservation WHERE state = 1"),
                     stock);
    ck_assert_int_eq(violations(b.clients[0]), 0);
    for (int i = 0; i < replicas; i++) {
        cm_rpc_client_free(b.clients[i]);
        ck_assert_int_eq(hs_stop(&p[i], SIGTERM, 20000), 0);
    }
}

START_TEST(concurrent_buyers_never_oversell)
{
    never_oversell(1, "INVENTORY_HOT_PATH=on");
    hs_drop_schema(NULL, schema);
}
END_TEST

START_TEST(concurrent_buyers_never_oversell_two_replicas)
{
    never_oversell(2, "INVENTORY_HOT_PATH=on");
    hs_drop_schema(NULL, schema);
}
END_TEST

START_TEST(concurrent_buyers_never_oversell_naive_path)
{
    never_oversell(2, "INVENTORY_HOT_PATH=off");
    hs_drop_schema(NULL, schema);
}
END_TEST

/* ---- kill -9 ---- */

typedef struct killer {
    cm_rpc_client *c;
    atomic_int next, stop;
    int acked[4000];
    atomic_int nacked;
} killer;

static void *kill_buyer(void *p)
{
    killer *k = p;
    while (!atomic_load(&k->stop)) {
        int n = atomic_fetch_add(&k->next, 1);
        if (n >= 4000)
            break;
        char order[32];
        snprintf(order, sizeof order, "k-%d", n);
        if (reserve1(k->c, order, "sku-k", 1, NULL) == 0)
            k->acked[atomic_fetch_add(&k->nacked, 1)] = n;
    }
    return NULL;
}

START_TEST(kill_9_under_load_loses_no_acknowledged_reservation)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    killer *k = calloc(1, sizeof *k);
    k->c = hs_client(&p, NULL);
    fx_set_stock(k->c, "r1", "sku-k", 300);
    pthread_t t[16];
    for (int i = 0; i < 16; i++)
        pthread_create(&t[i], NULL, kill_buyer, k);
    usleep(300000);
    kill(p.pid, SIGKILL);
    hs_stop(&p, SIGKILL, 5000);
    atomic_store(&k->stop, 1);
    for (int i = 0; i < 16; i++)
        pthread_join(t[i], NULL);
    int acked = atomic_load(&k->nacked);
    ck_assert_int_gt(acked, 0);
    cm_rpc_client_free(k->c);

    spawn(&p, NULL);
    k->c = hs_client(&p, NULL);
    for (int i = 0; i < acked; i++) {
        char sql[96];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM reservation WHERE order_id = 'k-%d'",
                 k->acked[i]);
        ck_assert_int_eq(hs_sql_long(schema, sql), 1);
    }
    fx_level l = fx_get_level(k->c, "sku-k");
    ck_assert_int_ge(l.reserved, acked);
    ck_assert_int_le(l.reserved, 300);
    ck_assert_int_eq(l.on_hand, 300);
    ck_assert_int_eq(violations(k->c), 0);
    cm_rpc_client_free(k->c);
    free(k);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

/* ---- flash sale: per-buyer limit under concurrent requests ---- */

typedef struct limit_run {
    cm_rpc_client *clients[2];
    atomic_int next, ok, limited, sold_out, other;
} limit_run;

static void *limit_buyer(void *p)
{
    limit_run *lr = p;
    for (int i = 0; i < 4; i++) {
        int n = atomic_fetch_add(&lr->next, 1);
        char order[32];
        snprintf(order, sizeof order, "fs-%d", n);
        const char *skus[] = {"sku-fs"};
        int64_t one = 1;
        cm_rpc_status st;
        int code = reserve_lines(lr->clients[n % 2], order, "buyer-1", skus, &one, 1, 0, NULL, &st);
        if (code == 0)
            atomic_fetch_add(&lr->ok, 1);
        else if (code == GRPC_STATUS_FAILED_PRECONDITION &&
                 strcmp(st.reason, "FLASH_SALE_LIMIT_EXCEEDED") == 0)
            atomic_fetch_add(&lr->limited, 1);
        else
            atomic_fetch_add(&lr->other, 1);
    }
    return NULL;
}

START_TEST(flash_sale_per_buyer_limit_is_exact_under_concurrency)
{
    new_schema();
    hs_proc p[2];
    limit_run lr = {0};
    for (int i = 0; i < 2; i++) {
        spawn(&p[i], NULL);
        lr.clients[i] = hs_client(&p[i], NULL);
    }
    cm_rpc_client *c = lr.clients[0];
    fx_set_stock(c, "r1", "sku-fs", 100);
    Commerce__Inventory__V1__ConfigureFlashSaleRequest q =
        COMMERCE__INVENTORY__V1__CONFIGURE_FLASH_SALE_REQUEST__INIT;
    Google__Protobuf__Timestamp st = GOOGLE__PROTOBUF__TIMESTAMP__INIT,
                                en = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    st.seconds = time(NULL) - 5;
    en.seconds = time(NULL) + 3600;
    q.request_id = "fs-create-1";
    q.sku = "sku-fs";
    q.starts_at = &st;
    q.ends_at = &en;
    q.sale_stock = 50;
    q.per_buyer_limit = 3;
    q.actor = "ops:test";
    Commerce__Inventory__V1__FlashSale *fr = NULL;
    ck_assert_int_eq(fx_configure_sale(c, &q, &fr, NULL), 0);
    ck_assert_int_eq(fr->state, COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_ACTIVE);
    char sale_id[64];
    snprintf(sale_id, sizeof sale_id, "%s", fr->flash_sale_id);
    protobuf_c_message_free_unpacked(&fr->base, NULL);
    /* the same request again: the same sale; an overlapping one is refused */
    ck_assert_int_eq(fx_configure_sale(c, &q, &fr, NULL), 0);
    ck_assert_str_eq(fr->flash_sale_id, sale_id);
    protobuf_c_message_free_unpacked(&fr->base, NULL);
    cm_rpc_status s;
    q.request_id = "fs-create-2";
    ck_assert_int_eq(fx_configure_sale(c, &q, NULL, &s), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(s.reason, "FLASH_SALE_OVERLAP");

    /* a buyer is required in a sale */
    ck_assert_int_eq(reserve1(c, "fs-nobuyer", "sku-fs", 1, &s), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(s.field, "buyer_id");

    /* one buyer, 16 threads x 4 calls over two replicas: exactly 3 units */
    pthread_t t[16];
    for (int i = 0; i < 16; i++)
        pthread_create(&t[i], NULL, limit_buyer, &lr);
    for (int i = 0; i < 16; i++)
        pthread_join(t[i], NULL);
    ck_assert_int_eq(atomic_load(&lr.other), 0);
    ck_assert_int_eq(atomic_load(&lr.ok), 3);
    ck_assert_int_eq(atomic_load(&lr.limited), 61);
    ck_assert_int_eq(
        hs_sql_long(schema, "SELECT units FROM flash_buyer WHERE buyer_id = 'buyer-1'"), 3);
    ck_assert_int_eq(fx_get_level(c, "sku-fs").reserved, 3);

    /* the limit counts held units: a release gives one back */
    Commerce__Inventory__V1__ReserveResponse *rr = NULL;
    const char *skus[] = {"sku-fs"};
    int64_t one = 1;
    char released[32] = "";
    for (int i = 0; i < 64 && !released[0]; i++) {
        char order[32];
        snprintf(order, sizeof order, "fs-%d", i);
        if (resolve(c, SVC "Release", order, NULL, NULL) == 0 &&
            hs_sql_long(schema, "SELECT units FROM flash_buyer WHERE buyer_id = 'buyer-1'") == 2)
            snprintf(released, sizeof released, "%s", order);
    }
    ck_assert(released[0]);
    ck_assert_int_eq(reserve_lines(c, "fs-again", "buyer-1", skus, &one, 1, 0, &rr, NULL), 0);
    ck_assert_uint_eq(rr->reservation->n_lines, 1);
    ck_assert_str_eq(rr->reservation->lines[0]->flash_sale_id, sale_id);
    ck_assert(rr->reservation->flash_sale);
    protobuf_c_message_free_unpacked(&rr->base, NULL);
    ck_assert_int_eq(reserve_lines(c, "fs-over", "buyer-1", skus, &one, 1, 0, NULL, &s),
                     GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(s.reason, "FLASH_SALE_LIMIT_EXCEEDED");
    /* another buyer is not limited by the first */
    ck_assert_int_eq(reserve_lines(c, "fs-b2", "buyer-2", skus, &one, 1, 0, NULL, NULL), 0);

    Commerce__Inventory__V1__GetFlashSaleRequest g =
        COMMERCE__INVENTORY__V1__GET_FLASH_SALE_REQUEST__INIT;
    g.flash_sale_id = sale_id;
    Commerce__Inventory__V1__GetFlashSaleResponse *gr = NULL;
    ck_assert_int_eq(hs_call(c, SVC "GetFlashSale", &g.base,
                             &commerce__inventory__v1__get_flash_sale_response__descriptor,
                             (ProtobufCMessage **)&gr, NULL, fx_md, 1),
                     0);
    ck_assert_int_eq(gr->flash_sale->reserved, 4);
    protobuf_c_message_free_unpacked(&gr->base, NULL);
    ck_assert_int_eq(violations(c), 0);
    for (int i = 0; i < 2; i++) {
        cm_rpc_client_free(lr.clients[i]);
        ck_assert_int_eq(hs_stop(&p[i], SIGTERM, 20000), 0);
    }
    hs_drop_schema(NULL, schema);
}
END_TEST

/* ---- order events through the inbox ---- */

static void produce_order_event(cm_kafka_producer *kp, const char *topic, const char *type,
                                const char *event_id, const char *order_id)
{
    uint8_t buf[512];
    size_t len;
    if (strcmp(type, "commerce.events.v1.OrderPaid") == 0) {
        Commerce__Events__V1__OrderPaid m = COMMERCE__EVENTS__V1__ORDER_PAID__INIT;
        m.event_id = (char *)event_id;
        m.tenant_id = FX_TENANT;
        m.order_id = (char *)order_id;
        len = commerce__events__v1__order_paid__pack(&m, buf);
    } else {
        Commerce__Events__V1__OrderCancelled m = COMMERCE__EVENTS__V1__ORDER_CANCELLED__INIT;
        m.event_id = (char *)event_id;
        m.tenant_id = FX_TENANT;
        m.order_id = (char *)order_id;
        len = commerce__events__v1__order_cancelled__pack(&m, buf);
    }
    cm_kafka_msg msg = {.topic = topic,
                        .key = order_id,
                        .key_len = strlen(order_id),
                        .payload = buf,
                        .len = len,
                        .id = event_id,
                        .type = type,
                        .source = "/commerce/order",
                        .content_type = "application/protobuf",
                        .tenant_id = FX_TENANT};
    cm_kafka_report rep;
    ck_assert_int_eq(cm_kafka_produce_sync(kp, &msg, &rep), 0);
}

static int state_of(cm_rpc_client *c, const char *order)
{
    Commerce__Inventory__V1__GetReservationRequest q =
        COMMERCE__INVENTORY__V1__GET_RESERVATION_REQUEST__INIT;
    q.order_id = (char *)order;
    Commerce__Inventory__V1__GetReservationResponse *r = NULL;
    int state = 0;
    if (hs_call(c, SVC "GetReservation", &q.base,
                &commerce__inventory__v1__get_reservation_response__descriptor,
                (ProtobufCMessage **)&r, NULL, fx_md, 1) == 0) {
        state = (int)r->reservation->state;
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    return state;
}

/* a fresh one-partition order topic for the schema's inventory to
 * consume (tag keeps two tests' topics apart); env gets the settings */
typedef struct consume_env {
    char topic[96], group[96], t_env[128], g_env[128];
    const char *env[4];
} consume_env;

static void consume_setup(consume_env *ce, const char *tag)
{
    snprintf(ce->topic, sizeof ce->topic, "commerce.order.v1.%s-%s", tag, schema);
    snprintf(ce->group, sizeof ce->group, "commerce.inventory.%s-%s", tag, schema);
    hs_kafka_create_topic(hs_kafka_brokers(), ce->topic, 1);
    snprintf(ce->t_env, sizeof ce->t_env, "INVENTORY_ORDER_TOPIC=%s", ce->topic);
    snprintf(ce->g_env, sizeof ce->g_env, "INVENTORY_ORDER_GROUP=%s", ce->group);
    ce->env[0] = "INVENTORY_CONSUME_ORDERS=on";
    ce->env[1] = ce->t_env;
    ce->env[2] = ce->g_env;
    ce->env[3] = NULL;
}

START_TEST(order_events_confirm_and_release_through_the_inbox)
{
    const char *brokers = hs_kafka_brokers();
    new_schema();
    static consume_env ce;
    consume_setup(&ce, "it");
    const char *topic = ce.topic;
    hs_proc p;
    spawn(&p, ce.env);
    cm_rpc_client *c = hs_client(&p, NULL);
    fx_set_stock(c, "r1", "sku-o", 10);
    const char *skus[] = {"sku-o"};
    int64_t two = 2, three = 3;
    ck_assert_int_eq(reserve_lines(c, "o-paid", NULL, skus, &two, 1, 0, NULL, NULL), 0);
    ck_assert_int_eq(reserve_lines(c, "o-cancel", NULL, skus, &three, 1, 0, NULL, NULL), 0);
    /* an order paid after its reservation was given back: refused, and
     * counted for the operators (its stock is not confirmed) */
    int64_t one = 1;
    ck_assert_int_eq(reserve_lines(c, "o-late-paid", NULL, skus, &one, 1, 0, NULL, NULL), 0);
    ck_assert_int_eq(resolve(c, SVC "Release", "o-late-paid", NULL, NULL), 0);

    cm_kafka_producer *kp = NULL;
    char err[256];
    ck_assert_int_eq(cm_kafka_producer_new(&kp, brokers, "test-inventory", NULL, err, sizeof err),
                     0);
    produce_order_event(kp, topic, "commerce.events.v1.OrderPaid",
                        "0190a8e0-0000-7000-8000-000000000001", "o-paid");
    /* a redelivery of the same event: the inbox absorbs it */
    produce_order_event(kp, topic, "commerce.events.v1.OrderPaid",
                        "0190a8e0-0000-7000-8000-000000000001", "o-paid");
    produce_order_event(kp, topic, "commerce.events.v1.OrderPaid",
                        "0190a8e0-0000-7000-8000-000000000003", "o-late-paid");
    produce_order_event(kp, topic, "commerce.events.v1.OrderCancelled",
                        "0190a8e0-0000-7000-8000-000000000002", "o-cancel");
    cm_kafka_producer_free(kp, 5000);

    long long until = hs_now_ms() + 60000;
    while (hs_now_ms() < until &&
           (state_of(c, "o-paid") !=
                COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_CONFIRMED ||
            state_of(c, "o-cancel") !=
                COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_RELEASED))
        usleep(200000);
    ck_assert_int_eq(state_of(c, "o-paid"),
                     COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_CONFIRMED);
    ck_assert_int_eq(state_of(c, "o-cancel"),
                     COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_RELEASED);
    fx_level l = fx_get_level(c, "sku-o");
    ck_assert_int_eq(l.sold, 2);
    ck_assert_int_eq(l.reserved, 0);
    ck_assert_int_eq(l.available, 8);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change WHERE kind = 4"), 1);
    /* the events are one partition, in order: o-late-paid's came before
     * o-cancel's, which has been applied */
    ck_assert_int_eq(state_of(c, "o-late-paid"),
                     COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_RELEASED);
    char body[65536];
    ck_assert_int_eq(hs_http_get(p.admin_port, "/metrics", body, sizeof body), 200);
    ck_assert(hs_metric_in(body, "inventory_order_events_refused_total") == 1);
    ck_assert_int_eq(violations(c), 0);
    /* the consumer's changes wrote their events (staged, one insert per
     * batch), each order's in the order of its changes and the orders in
     * the order of their events: o-paid's StockChanged (kind 4, confirm)
     * and ReservationConfirmed, then o-cancel's StockChanged and
     * ReservationReleased; the redelivery wrote nothing */
    ck_assert_int_eq(
        hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE id > (SELECT max(id) FROM outbox "
                            "WHERE key = 'o-late-paid')"),
        4);
    ck_assert_int_eq(
        hs_sql_long(schema,
                    "SELECT (string_agg(type || ':' || key, ',' ORDER BY id) = "
                    "'commerce.events.v1.StockChanged:sku-o,"
                    "commerce.events.v1.ReservationConfirmed:o-paid,"
                    "commerce.events.v1.StockChanged:sku-o,"
                    "commerce.events.v1.ReservationReleased:o-cancel')::int FROM outbox WHERE "
                    "id > (SELECT max(id) FROM outbox WHERE key = 'o-late-paid')"),
        1);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
    hs_kafka_delete_topic(brokers, topic);
    hs_drop_schema(NULL, schema);
}
END_TEST

/* a consumer batch of OrderPaid events is confirmed by one statement
 * (0008_confirm_batch.sql); the outcome must be the one-by-one path's:
 * the events are produced while inventory is down, so they arrive as one
 * batch, mixed with the cases the batch leaves to that path (a second
 * OrderPaid, no reservation, a reservation due to expire, a cancel of an
 * order the batch just confirmed, a cancel in between) */
START_TEST(paid_orders_in_one_batch_confirm_as_one_by_one)
{
    const char *brokers = hs_kafka_brokers();
    new_schema();
    static consume_env ce;
    consume_setup(&ce, "itb");
    const char *topic = ce.topic, *const *env = ce.env;
    hs_proc p;
    spawn(&p, env);
    cm_rpc_client *c = hs_client(&p, NULL);
    fx_set_stock(c, "rb1", "sku-a", 100);
    fx_set_stock(c, "rb2", "sku-b", 100);
    fx_set_stock(c, "rb3", "sku-c", 5);
    const char *ab[] = {"sku-a", "sku-b"}, *cc[] = {"sku-c"};
    int64_t sold_a = 0;
    char id[32];
    for (int i = 0; i < 20; i++) {
        int64_t q[] = {1 + i % 3, 2};
        snprintf(id, sizeof id, "p-%02d", i);
        ck_assert_int_eq(reserve_lines(c, id, NULL, ab, q, 2, 0, NULL, NULL), 0);
        sold_a += q[0];
    }
    int64_t one = 1, two = 2;
    ck_assert_int_eq(reserve_lines(c, "p-due", NULL, cc, &one, 1, 1, NULL, NULL), 0);
    ck_assert_int_eq(reserve_lines(c, "p-cancel", NULL, cc, &two, 1, 0, NULL, NULL), 0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
    usleep(1500000); /* p-due's ttl passes: the batch finds it due */

    cm_kafka_producer *kp = NULL;
    char err[256], ev[64];
    ck_assert_int_eq(cm_kafka_producer_new(&kp, brokers, "test-inventory", NULL, err, sizeof err),
                     0);
    int n = 0;
#define EV() (snprintf(ev, sizeof ev, "0190a8e0-0000-7000-8000-%012d", ++n), ev)
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "p-%02d", i);
        produce_order_event(kp, topic, "commerce.events.v1.OrderPaid", EV(), id);
    }
    produce_order_event(kp, topic, "commerce.events.v1.OrderPaid", EV(), "p-05"); /* again */
    produce_order_event(kp, topic, "commerce.events.v1.OrderPaid", EV(), "p-none");
    produce_order_event(kp, topic, "commerce.events.v1.OrderCancelled", EV(), "p-03");
    for (int i = 10; i < 20; i++) {
        snprintf(id, sizeof id, "p-%02d", i);
        produce_order_event(kp, topic, "commerce.events.v1.OrderPaid", EV(), id);
    }
    produce_order_event(kp, topic, "commerce.events.v1.OrderPaid", EV(), "p-due");
    produce_order_event(kp, topic, "commerce.events.v1.OrderCancelled", EV(), "p-cancel");
#undef EV
    cm_kafka_producer_free(kp, 5000);

    spawn(&p, env);
    c = hs_client(&p, NULL);
    long long until = hs_now_ms() + 60000;
    while (hs_now_ms() < until &&
           state_of(c, "p-cancel") !=
               COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_RELEASED)
        usleep(200000);
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof id, "p-%02d", i);
        ck_assert_msg(state_of(c, id) ==
                          COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_CONFIRMED,
                      "%s not confirmed", id);
    }
    ck_assert_int_eq(state_of(c, "p-due"),
                     COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_EXPIRED);
    ck_assert_int_eq(state_of(c, "p-cancel"),
                     COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_RELEASED);
    fx_level a = fx_get_level(c, "sku-a"), b = fx_get_level(c, "sku-b"),
             cl = fx_get_level(c, "sku-c");
    ck_assert_int_eq(a.sold, sold_a);
    ck_assert_int_eq(a.reserved, 0);
    ck_assert_int_eq(a.available, 100 - sold_a);
    ck_assert_int_eq(b.sold, 40);
    ck_assert_int_eq(b.reserved, 0);
    ck_assert_int_eq(cl.available, 5);
    ck_assert_int_eq(cl.reserved + cl.sold, 0);
    /* one confirm audit row per line, and every sku's audit trail runs:
     * each row's counters are the previous row's plus its deltas, its
     * version the previous one's plus one */
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change WHERE kind = 4"), 40);
    ck_assert_int_eq(
        hs_sql_long(schema, "SELECT count(*) FROM (SELECT available - lag(available) OVER w AS da, "
                            "reserved - lag(reserved) OVER w AS dr, sold - lag(sold) OVER w AS ds, "
                            "version - lag(version) OVER w AS dv, available_delta, reserved_delta, "
                            "sold_delta FROM stock_change WINDOW w AS (PARTITION BY tenant_id, sku "
                            "ORDER BY version)) x WHERE dv IS NOT NULL AND (dv <> 1 OR da <> "
                            "available_delta OR dr <> reserved_delta OR ds <> sold_delta)"),
        0);
    /* the events: one ReservationConfirmed per order, one StockChanged per
     * confirmed line, nothing for the events that changed nothing */
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE type = "
                                         "'commerce.events.v1.ReservationConfirmed'"),
                     20);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE type = "
                                         "'commerce.events.v1.ReservationExpired'"),
                     1);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE type = "
                                         "'commerce.events.v1.ReservationReleased'"),
                     1);
    /* a StockChanged per audit row: 3 stockings, 42 reserved lines, 40
     * confirmed, p-due's expiry, p-cancel's release */
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change"), 3 + 42 + 40 + 2);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE type = "
                                         "'commerce.events.v1.StockChanged'"),
                     3 + 42 + 40 + 1 + 1);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change WHERE kind = 5"), 1);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change WHERE kind = 6"), 1);
    /* each confirmed order's ReservationConfirmed follows its own
     * StockChanged: the one written right before it is a confirm of one of
     * its skus */
    ck_assert_int_eq(
        hs_sql_long(schema, "SELECT count(*) FROM outbox o WHERE o.type = "
                            "'commerce.events.v1.ReservationConfirmed' AND (SELECT p.type FROM "
                            "outbox p WHERE p.id < o.id ORDER BY p.id DESC LIMIT 1) <> "
                            "'commerce.events.v1.StockChanged'"),
        0);
    /* refused, for the operators: p-none (no reservation), p-03's cancel
     * (confirmed just before, in the same batch), p-due (expired) */
    char body[65536];
    ck_assert_int_eq(hs_http_get(p.admin_port, "/metrics", body, sizeof body), 200);
    ck_assert(hs_metric_in(body, "inventory_order_events_refused_total") == 3);
    ck_assert_int_eq(violations(c), 0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
    hs_kafka_delete_topic(brokers, topic);
    hs_drop_schema(NULL, schema);
}
END_TEST

/* ---- lists ---- */

static int list_changes(cm_rpc_client *c, Commerce__Inventory__V1__ListStockChangesRequest *q,
                        Commerce__Inventory__V1__ListStockChangesResponse **out, cm_rpc_status *st,
                        const cm_rpc_md *md)
{
    return hs_call(c, SVC "ListStockChanges", &q->base,
                   &commerce__inventory__v1__list_stock_changes_response__descriptor,
                   (ProtobufCMessage **)out, st, md, 1);
}

static int adjust(cm_rpc_client *c, const char *rid, const char *sku, int64_t delta,
                  const char *reason, const char *actor)
{
    Commerce__Inventory__V1__AdjustStockRequest a =
        COMMERCE__INVENTORY__V1__ADJUST_STOCK_REQUEST__INIT;
    a.request_id = (char *)rid;
    a.sku = (char *)sku;
    a.delta = delta;
    a.reason = (char *)reason;
    a.actor = (char *)actor;
    return hs_call(c, SVC "AdjustStock", &a.base,
                   &commerce__inventory__v1__adjust_stock_response__descriptor, NULL, NULL, fx_md,
                   1);
}

/* rows of one filter, all pages (page_size 0: the default) */
static size_t count_changes(cm_rpc_client *c, Commerce__Inventory__V1__ListStockChangesRequest *q)
{
    Commerce__Inventory__V1__ListStockChangesResponse *r = NULL;
    ck_assert_int_eq(list_changes(c, q, &r, NULL, fx_md), 0);
    size_t n = r->n_changes;
    ck_assert_str_eq(r->next_page_token, "");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return n;
}

START_TEST(list_stock_changes_pages_the_audit_trail)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    cm_rpc_client *c = hs_client(&p, NULL);
    /* 9 changes: SET + ADJUST + RESERVE on sku-a, SET + 5 RESERVE on sku-b */
    fx_set_stock(c, "set-a", "sku-a", 10);
    ck_assert_int_eq(adjust(c, "adj-a", "sku-a", -3, "damaged in warehouse", "wms"), 0);
    ck_assert_int_eq(reserve1(c, "o-a", "sku-a", 2, NULL), 0);
    fx_set_stock(c, "set-b", "sku-b", 50);
    for (int i = 0; i < 5; i++) {
        char o[16];
        snprintf(o, sizeof o, "o-b%d", i);
        ck_assert_int_eq(reserve1(c, o, "sku-b", 1, NULL), 0);
    }

    /* one page, newest first, with reason/actor/request id/order id */
    Commerce__Inventory__V1__ListStockChangesRequest q =
        COMMERCE__INVENTORY__V1__LIST_STOCK_CHANGES_REQUEST__INIT;
    Commerce__Inventory__V1__ListStockChangesResponse *r = NULL;
    ck_assert_int_eq(list_changes(c, &q, &r, NULL, fx_md), 0);
    ck_assert_int_eq(r->n_changes, 9);
    ck_assert_str_eq(r->next_page_token, "");
    char ids[9][40];
    for (size_t i = 0; i < r->n_changes; i++) {
        snprintf(ids[i], sizeof ids[i], "%s", r->changes[i]->change_id);
        if (i)
            ck_assert(r->changes[i]->occurred_at->seconds <=
                      r->changes[i - 1]->occurred_at->seconds);
    }
    const Commerce__Inventory__V1__StockChange *set = r->changes[8], *adj = r->changes[7],
                                               *res = r->changes[6], *last = r->changes[0];
    ck_assert_int_eq(set->kind, COMMERCE__INVENTORY__V1__STOCK_CHANGE_KIND__STOCK_CHANGE_KIND_SET);
    ck_assert_str_eq(set->sku, "sku-a");
    ck_assert_str_eq(set->reason, "goods received");
    ck_assert_str_eq(set->actor, "ops:test");
    ck_assert_str_eq(set->request_id, "set-a");
    ck_assert_int_eq(set->available_delta, 10);
    ck_assert_int_eq(adj->kind,
                     COMMERCE__INVENTORY__V1__STOCK_CHANGE_KIND__STOCK_CHANGE_KIND_ADJUST);
    ck_assert_str_eq(adj->reason, "damaged in warehouse");
    ck_assert_str_eq(adj->actor, "wms");
    ck_assert_str_eq(adj->request_id, "adj-a");
    ck_assert_int_eq(adj->available_delta, -3);
    ck_assert_int_eq(adj->level->available, 7);
    ck_assert_int_eq(res->kind,
                     COMMERCE__INVENTORY__V1__STOCK_CHANGE_KIND__STOCK_CHANGE_KIND_RESERVE);
    ck_assert_str_eq(res->order_id, "o-a");
    ck_assert_int_eq(res->available_delta, -2);
    ck_assert_int_eq(res->reserved_delta, 2);
    ck_assert_str_eq(res->reason, "");
    ck_assert_str_eq(last->order_id, "o-b4");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* filters */
    q.sku = "sku-a";
    ck_assert_int_eq(count_changes(c, &q), 3);
    q.sku = "";
    q.order_id = "o-a";
    ck_assert_int_eq(count_changes(c, &q), 1);
    q.order_id = "";
    Commerce__Inventory__V1__StockChangeKind kinds[] = {
        COMMERCE__INVENTORY__V1__STOCK_CHANGE_KIND__STOCK_CHANGE_KIND_RESERVE};
    q.kinds = kinds;
    q.n_kinds = 1;
    ck_assert_int_eq(count_changes(c, &q), 6);
    q.n_kinds = 0;
    Commerce__Common__V1__TimeRange tr = COMMERCE__COMMON__V1__TIME_RANGE__INIT;
    Google__Protobuf__Timestamp from = GOOGLE__PROTOBUF__TIMESTAMP__INIT,
                                to = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    from.seconds = time(NULL) + 3600;
    tr.start_at = &from;
    q.occurred = &tr;
    ck_assert_int_eq(count_changes(c, &q), 0);
    from.seconds = time(NULL) - 3600;
    ck_assert_int_eq(count_changes(c, &q), 9);
    q.occurred = NULL;

    /* pages of 2 walk every row exactly once, in the same order, also
     * when a change is written between pages (it is newer: not listed) */
    q.page_size = 2;
    char *token = strdup("");
    size_t seen = 0, pages = 0;
    for (;;) {
        q.page_token = token;
        ck_assert_int_eq(list_changes(c, &q, &r, NULL, fx_md), 0);
        ck_assert_int_le(r->n_changes, 2);
        for (size_t i = 0; i < r->n_changes; i++) {
            ck_assert_int_lt(seen, 9);
            ck_assert_str_eq(r->changes[i]->change_id, ids[seen]);
            seen++;
        }
        free(token);
        token = strdup(r->next_page_token);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        if (++pages == 1)
            ck_assert_int_eq(adjust(c, "adj-mid", "sku-b", 5, "goods received", "wms"), 0);
        if (!token[0])
            break;
    }
    free(token);
    ck_assert_int_eq(seen, 9);
    ck_assert_int_eq(pages, 5);

    /* a token is tied to its filters and its tenant */
    q.page_token = "";
    ck_assert_int_eq(list_changes(c, &q, &r, NULL, fx_md), 0);
    char *first_token = strdup(r->next_page_token);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    cm_rpc_status st;
    q.page_token = first_token;
    q.sku = "sku-b";
    ck_assert_int_eq(list_changes(c, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "page_token");
    ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
    q.sku = "";
    ck_assert_int_eq(list_changes(c, &q, NULL, &st, fx_md_other), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "page_token");
    free(first_token);
    const char *bad[] = {"zz", "not-a-token", "00", "632e", "abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        q.page_token = (char *)bad[i];
        ck_assert_int_eq(list_changes(c, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
        ck_assert_str_eq(st.field, "page_token");
        ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
    }
    q.page_token = "";

    /* another tenant sees nothing */
    q.page_size = 0;
    ck_assert_int_eq(list_changes(c, &q, &r, NULL, fx_md_other), 0);
    ck_assert_int_eq(r->n_changes, 0);
    ck_assert_str_eq(r->next_page_token, "");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* page_size: negative is refused, above 500 is 500 */
    q.page_size = -1;
    ck_assert_int_eq(list_changes(c, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "page_size");
    q.page_size = 100000;
    ck_assert_int_eq(count_changes(c, &q), 10);
    q.page_size = 0;
    /* other bad filters name their field */
    q.sku = "bad sku!";
    ck_assert_int_eq(list_changes(c, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "sku");
    q.sku = "";
    Commerce__Inventory__V1__StockChangeKind unspec[] = {
        COMMERCE__INVENTORY__V1__STOCK_CHANGE_KIND__STOCK_CHANGE_KIND_UNSPECIFIED};
    q.kinds = unspec;
    q.n_kinds = 1;
    ck_assert_int_eq(list_changes(c, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "kinds[0]");
    q.n_kinds = 0;
    to.seconds = from.seconds - 1;
    tr.end_at = &to;
    q.occurred = &tr;
    ck_assert_int_eq(list_changes(c, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "occurred.end_at");

    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

static void configure_sale(cm_rpc_client *c, const char *rid, const char *sku, long start_off,
                           int64_t stock, char *id, size_t idcap)
{
    Commerce__Inventory__V1__FlashSale *f = NULL;
    ck_assert_int_eq(
        fx_configure_sale_in(c, rid, NULL, sku, start_off, start_off + 1800, stock, 2, 0, &f, NULL),
        0);
    snprintf(id, idcap, "%s", f->flash_sale_id);
    protobuf_c_message_free_unpacked(&f->base, NULL);
}

static int list_sales(cm_rpc_client *c, Commerce__Inventory__V1__ListFlashSalesRequest *q,
                      Commerce__Inventory__V1__ListFlashSalesResponse **out, cm_rpc_status *st,
                      const cm_rpc_md *md)
{
    return hs_call(c, SVC "ListFlashSales", &q->base,
                   &commerce__inventory__v1__list_flash_sales_response__descriptor,
                   (ProtobufCMessage **)out, st, md, 1);
}

START_TEST(list_flash_sales_returns_configured_sales)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    cm_rpc_client *c = hs_client(&p, NULL);
    char id[3][64];
    /* active now, in 1 h, in 2 h: listed newest start first */
    configure_sale(c, "fs-1", "sku-f1", -5, 10, id[0], sizeof id[0]);
    configure_sale(c, "fs-2", "sku-f2", 3600, 20, id[1], sizeof id[1]);
    configure_sale(c, "fs-3", "sku-f3", 7200, 30, id[2], sizeof id[2]);

    Commerce__Inventory__V1__ListFlashSalesRequest q =
        COMMERCE__INVENTORY__V1__LIST_FLASH_SALES_REQUEST__INIT;
    Commerce__Inventory__V1__ListFlashSalesResponse *r = NULL;
    ck_assert_int_eq(list_sales(c, &q, &r, NULL, fx_md), 0);
    ck_assert_int_eq(r->n_flash_sales, 3);
    ck_assert_str_eq(r->next_page_token, "");
    for (int i = 0; i < 3; i++) {
        const Commerce__Inventory__V1__FlashSale *f = r->flash_sales[i];
        ck_assert_str_eq(f->flash_sale_id, id[2 - i]);
        ck_assert_int_eq(f->sale_stock, 10 * (3 - i));
        ck_assert_int_eq(f->per_buyer_limit, 2);
    }
    ck_assert_str_eq(r->flash_sales[2]->sku, "sku-f1");
    ck_assert_int_eq(r->flash_sales[2]->state,
                     COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_ACTIVE);
    ck_assert_int_eq(r->flash_sales[0]->state,
                     COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_SCHEDULED);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* filters: state, sku */
    Commerce__Inventory__V1__FlashSaleState active[] = {
        COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_ACTIVE};
    q.states = active;
    q.n_states = 1;
    ck_assert_int_eq(list_sales(c, &q, &r, NULL, fx_md), 0);
    ck_assert_int_eq(r->n_flash_sales, 1);
    ck_assert_str_eq(r->flash_sales[0]->flash_sale_id, id[0]);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    q.n_states = 0;
    q.sku = "sku-f2";
    ck_assert_int_eq(list_sales(c, &q, &r, NULL, fx_md), 0);
    ck_assert_int_eq(r->n_flash_sales, 1);
    ck_assert_str_eq(r->flash_sales[0]->flash_sale_id, id[1]);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    q.sku = "";

    /* pages of one: each sale exactly once, in order */
    q.page_size = 1;
    char *token = strdup("");
    int seen = 0;
    for (;;) {
        q.page_token = token;
        ck_assert_int_eq(list_sales(c, &q, &r, NULL, fx_md), 0);
        ck_assert_int_le(r->n_flash_sales, 1);
        for (size_t i = 0; i < r->n_flash_sales; i++) {
            ck_assert_int_lt(seen, 3);
            ck_assert_str_eq(r->flash_sales[i]->flash_sale_id, id[2 - seen]);
            seen++;
        }
        free(token);
        token = strdup(r->next_page_token);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        if (!token[0])
            break;
    }
    free(token);
    ck_assert_int_eq(seen, 3);

    /* bad token, bad page_size, another tenant */
    cm_rpc_status st;
    q.page_token = "nonsense";
    ck_assert_int_eq(list_sales(c, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "page_token");
    ck_assert_str_eq(st.reason, "PAGE_TOKEN_INVALID");
    q.page_token = "";
    q.page_size = -5;
    ck_assert_int_eq(list_sales(c, &q, NULL, &st, fx_md), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "page_size");
    q.page_size = 0;
    ck_assert_int_eq(list_sales(c, &q, &r, NULL, fx_md_other), 0);
    ck_assert_int_eq(r->n_flash_sales, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

/* ---- events of the batched reserve path, read back from kafka ---- */

#define EV_BURST_ORDERS 240
#define INV_SKU_TEST_MAX 65

/* one inventory event as read from the topic, in partition order */
typedef struct read_ev {
    char type[64];
    char sku[INV_SKU_TEST_MAX];
    char order_id[48];
    char change_id[40];
    char flash_sale_id[40];
    int64_t version, available, da, dr;
    int kind;
} read_ev;

/* reads the topic until want events keyed by one of skus came, or
 * timeout_ms passed */
static size_t read_events(hs_topic *t, const char *const *skus, size_t nskus, read_ev *out,
                          size_t want, int timeout_ms)
{
    size_t n = 0;
    long long until = hs_now_ms() + timeout_ms;
    while (n < want && hs_now_ms() < until) {
        const hs_record *m = hs_topic_next(t, 500);
        if (!m)
            continue;
        int ours = 0;
        for (size_t i = 0; i < nskus; i++)
            ours |= strcmp(m->key, skus[i]) == 0;
        if (ours && hs_record_header(m, "ce_type")) {
            read_ev *e = &out[n++];
            memset(e, 0, sizeof *e);
            snprintf(e->type, sizeof e->type, "%s", m->type);
            if (strcmp(e->type, "commerce.events.v1.StockChanged") == 0) {
                Commerce__Events__V1__StockChanged *s =
                    commerce__events__v1__stock_changed__unpack(NULL, m->len, m->payload);
                ck_assert_ptr_nonnull(s);
                ck_assert_ptr_nonnull(s->change);
                ck_assert_ptr_nonnull(s->change->level);
                snprintf(e->sku, sizeof e->sku, "%s", s->sku);
                snprintf(e->order_id, sizeof e->order_id, "%s", s->change->order_id);
                snprintf(e->change_id, sizeof e->change_id, "%s", s->change->change_id);
                e->kind = (int)s->change->kind;
                e->dr = s->change->reserved_delta;
                e->version = s->change->level->version;
                e->available = s->change->level->available;
                e->da = s->change->available_delta;
                ck_assert_ptr_nonnull(s->occurred_at);
                protobuf_c_message_free_unpacked(&s->base, NULL);
            } else if (strcmp(e->type, "commerce.events.v1.SoldOut") == 0) {
                Commerce__Events__V1__SoldOut *s =
                    commerce__events__v1__sold_out__unpack(NULL, m->len, m->payload);
                ck_assert_ptr_nonnull(s);
                snprintf(e->sku, sizeof e->sku, "%s", s->sku);
                snprintf(e->flash_sale_id, sizeof e->flash_sale_id, "%s", s->flash_sale_id);
                e->available = s->stock ? s->stock->available : -1;
                e->version = s->stock ? s->stock->version : -1;
                protobuf_c_message_free_unpacked(&s->base, NULL);
            }
        }
    }
    return n;
}

typedef struct ev_burst {
    cm_rpc_client *clients[2];
    const char *plenty, *scarce;
    atomic_int next;
    atomic_int ok[EV_BURST_ORDERS];
    atomic_int other;
} ev_burst;

/* order n: one line of the plentiful sku, and for odd n a line of the
 * scarce one too */
static void *ev_buyer(void *p)
{
    ev_burst *b = p;
    for (;;) {
        int n = atomic_fetch_add(&b->next, 1);
        if (n >= EV_BURST_ORDERS)
            break;
        char order[32];
        snprintf(order, sizeof order, "ev-%d", n);
        const char *skus[] = {b->plenty, b->scarce};
        int64_t qty[] = {1, 1};
        cm_rpc_status st;
        int code =
            reserve_lines(b->clients[n % 2], order, NULL, skus, qty, n % 2 ? 2 : 1, 0, NULL, &st);
        if (code == 0)
            atomic_store(&b->ok[n], 1);
        else if (code != GRPC_STATUS_FAILED_PRECONDITION || strcmp(st.reason, "SOLD_OUT") != 0)
            atomic_fetch_add(&b->other, 1);
    }
    return NULL;
}

START_TEST(reserve_burst_emits_one_stock_changed_per_line)
{
    const char *brokers = hs_kafka_brokers();
    new_schema();
    /* skus of this run only: the topic is shared with every other test */
    char plenty[INV_SKU_TEST_MAX], scarce[INV_SKU_TEST_MAX];
    snprintf(plenty, sizeof plenty, "ev.%d.%d.plenty", (int)getpid(), schema_seq);
    snprintf(scarce, sizeof scarce, "ev.%d.%d.scarce", (int)getpid(), schema_seq);
    hs_topic *rk = hs_topic_open(brokers, "commerce.inventory.v1", 1);
    hs_proc p[2];
    ev_burst *b = calloc(1, sizeof *b);
    b->plenty = plenty;
    b->scarce = scarce;
    for (int i = 0; i < 2; i++) {
        spawn(&p[i], NULL);
        b->clients[i] = hs_client(&p[i], NULL);
    }
    const int scarce_stock = 40;
    fx_set_stock(b->clients[0], "r1", plenty, 1000);
    fx_set_stock(b->clients[0], "r2", scarce, scarce_stock);
    /* 32 callers over two replicas: batches of several reservations */
    pthread_t t[32];
    for (int i = 0; i < 32; i++)
        pthread_create(&t[i], NULL, ev_buyer, b);
    for (int i = 0; i < 32; i++)
        pthread_join(t[i], NULL);
    ck_assert_int_eq(atomic_load(&b->other), 0);
    int ok = 0, ok_scarce = 0;
    for (int n = 0; n < EV_BURST_ORDERS; n++) {
        ok += atomic_load(&b->ok[n]);
        ok_scarce += n % 2 ? atomic_load(&b->ok[n]) : 0;
    }
    ck_assert_int_eq(ok_scarce, scarce_stock);
    ck_assert_int_eq(ok, EV_BURST_ORDERS / 2 + scarce_stock);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change WHERE kind = 3"),
                     ok + ok_scarce);

    /* from the broker: both skus' SetStock (StockChanged and BackInStock),
     * every reserved line's StockChanged, the scarce sku's SoldOut */
    const char *keys[] = {plenty, scarce};
    size_t want = 4 + (size_t)(ok + ok_scarce) + 1;
    read_ev *ev = calloc(want + 1, sizeof *ev);
    size_t got = read_events(rk, keys, 2, ev, want, 60000);
    ck_assert_uint_eq(got, want);
    /* and nothing more: a duplicate would have come with the others */
    ck_assert_uint_eq(read_events(rk, keys, 2, ev + got, 1, 3000), 0);
    int per_order[EV_BURST_ORDERS][2] = {{0}};
    int64_t last_version[2] = {-1, -1}, last_avail[2] = {-1, -1};
    int sold_out = 0, after_sold_out = 0, set = 0;
    char *ids = strdup("{");
    for (size_t i = 0; i < got; i++) {
        const read_ev *e = &ev[i];
        int s = strcmp(e->sku, scarce) == 0;
        if (strcmp(e->type, "commerce.events.v1.SoldOut") == 0) {
            ck_assert(s);
            ck_assert_int_eq(e->available, 0);
            ck_assert_str_eq(e->flash_sale_id, "");
            sold_out++;
            continue;
        }
        if (strcmp(e->type, "commerce.events.v1.BackInStock") == 0)
            continue;
        ck_assert_str_eq(e->type, "commerce.events.v1.StockChanged");
        if (e->kind == COMMERCE__INVENTORY__V1__STOCK_CHANGE_KIND__STOCK_CHANGE_KIND_SET) {
            /* first of its key: the counters every reserve starts from */
            ck_assert_int_eq(last_version[s], -1);
            last_version[s] = e->version;
            last_avail[s] = e->available;
            set++;
            continue;
        }
        ck_assert_int_eq(e->kind,
                         COMMERCE__INVENTORY__V1__STOCK_CHANGE_KIND__STOCK_CHANGE_KIND_RESERVE);
        ck_assert_int_eq(e->dr, 1);
        ck_assert_int_eq(e->da, -1);
        int n = -1;
        ck_assert_int_eq(sscanf(e->order_id, "ev-%d", &n), 1);
        ck_assert(n >= 0 && n < EV_BURST_ORDERS && atomic_load(&b->ok[n]));
        per_order[n][s]++;
        /* per-key order: each sku's events in the order of its changes */
        ck_assert_int_gt(e->version, last_version[s]);
        ck_assert_int_eq(e->available, last_avail[s] - 1);
        last_version[s] = e->version;
        last_avail[s] = e->available;
        after_sold_out += s && sold_out;
        size_t len = strlen(ids);
        char *grown = realloc(ids, len + 48);
        ck_assert_ptr_nonnull(grown);
        ids = grown;
        snprintf(ids + len, 48, "%s%s", len > 1 ? "," : "", e->change_id);
    }
    ck_assert_int_eq(set, 2);
    ck_assert_int_eq(sold_out, 1);
    ck_assert_int_eq(after_sold_out, 0);
    ck_assert_int_eq(last_avail[0], 1000 - ok);
    ck_assert_int_eq(last_avail[1], 0);
    for (int n = 0; n < EV_BURST_ORDERS; n++) {
        int k = atomic_load(&b->ok[n]);
        ck_assert_int_eq(per_order[n][0], k);
        ck_assert_int_eq(per_order[n][1], n % 2 ? k : 0);
    }
    /* each event names its audit row */
    size_t len = strlen(ids);
    char *sql = malloc(len + 128);
    snprintf(sql, len + 128,
             "SELECT count(*) FROM stock_change WHERE kind = 3 AND change_id = ANY('%s}'::uuid[])",
             ids);
    ck_assert_int_eq(hs_sql_long(schema, sql), ok + ok_scarce);
    free(sql);
    free(ids);
    /* the relay marks what the broker acknowledged */
    long long until = hs_now_ms() + 20000;
    while (hs_now_ms() < until &&
           hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE published_at IS NULL") > 0)
        usleep(200000);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE published_at IS NULL"),
                     0);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE type = "
                                         "'commerce.events.v1.StockChanged'"),
                     2 + ok + ok_scarce);
    ck_assert_int_eq(violations(b->clients[0]), 0);
    for (int i = 0; i < 2; i++) {
        cm_rpc_client_free(b->clients[i]);
        ck_assert_int_eq(hs_stop(&p[i], SIGTERM, 20000), 0);
    }
    free(ev);
    free(b);
    hs_topic_close(rk);
    hs_drop_schema(NULL, schema);
}
END_TEST

/* ---- flash sale updates ---- */

/* ConfigureFlashSale with the sale's stored window (an update that keeps it) */
static int configure_keep_window(cm_rpc_client *c, const char *rid,
                                 const Commerce__Inventory__V1__FlashSale *f, int64_t stock,
                                 int64_t limit, int64_t expected,
                                 Commerce__Inventory__V1__FlashSale **out, cm_rpc_status *st)
{
    Commerce__Inventory__V1__ConfigureFlashSaleRequest q =
        COMMERCE__INVENTORY__V1__CONFIGURE_FLASH_SALE_REQUEST__INIT;
    q.request_id = (char *)rid;
    q.flash_sale_id = f->flash_sale_id;
    q.sku = f->sku;
    q.starts_at = f->starts_at;
    q.ends_at = f->ends_at;
    q.sale_stock = stock;
    q.per_buyer_limit = limit;
    q.actor = "ops:test";
    q.expected_version = expected;
    return fx_configure_sale(c, &q, out, st);
}

static Commerce__Inventory__V1__FlashSale *get_sale(cm_rpc_client *c, const char *id)
{
    Commerce__Inventory__V1__GetFlashSaleRequest g =
        COMMERCE__INVENTORY__V1__GET_FLASH_SALE_REQUEST__INIT;
    g.flash_sale_id = (char *)id;
    Commerce__Inventory__V1__GetFlashSaleResponse *r = NULL;
    ck_assert_int_eq(hs_call(c, SVC "GetFlashSale", &g.base,
                             &commerce__inventory__v1__get_flash_sale_response__descriptor,
                             (ProtobufCMessage **)&r, NULL, fx_md, 1),
                     0);
    Commerce__Inventory__V1__FlashSale *f = r->flash_sale;
    r->flash_sale = NULL;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return f;
}

static void free_sale(Commerce__Inventory__V1__FlashSale *f)
{
    if (f)
        protobuf_c_message_free_unpacked(&f->base, NULL);
}

/* reserve one unit of sku for buyer: the status code, and the reason */
static int buy(cm_rpc_client *c, const char *order, const char *buyer, const char *sku,
               cm_rpc_status *st)
{
    const char *skus[] = {sku};
    int64_t one = 1;
    return reserve_lines(c, order, buyer, skus, &one, 1, 0, NULL, st);
}

/* outbox events of a type keyed by sku whose payload names the sale */
static long sale_events(const char *type, const char *sku, const char *id)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox WHERE type = 'commerce.events.v1.%s' AND key = '%s' "
             "AND position(convert_to('%s', 'UTF8') IN payload) > 0",
             type, sku, id);
    return hs_sql_long(schema, sql);
}

START_TEST(flash_sale_updates_change_a_running_sale_within_its_invariants)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    cm_rpc_client *c = hs_client(&p, NULL);
    fx_set_stock(c, "r1", "sku-u", 100);
    Commerce__Inventory__V1__FlashSale *f = NULL, *g = NULL;
    ck_assert_int_eq(fx_configure_sale_in(c, "u-0", NULL, "sku-u", -5, 3600, 5, 2, 0, &f, NULL), 0);
    ck_assert_int_eq(f->state, COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_ACTIVE);
    char id[64];
    snprintf(id, sizeof id, "%s", f->flash_sale_id);
    free_sale(f);
    cm_rpc_status st;
    ck_assert_int_eq(buy(c, "u-b1-1", "b1", "sku-u", NULL), 0);
    ck_assert_int_eq(buy(c, "u-b1-2", "b1", "sku-u", NULL), 0);
    ck_assert_int_eq(buy(c, "u-b1-3", "b1", "sku-u", &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "FLASH_SALE_LIMIT_EXCEEDED");

    /* a higher limit: the buyer may add one more, then no more */
    Commerce__Inventory__V1__FlashSale *cur = get_sale(c, id);
    ck_assert_int_eq(configure_keep_window(c, "u-1", cur, 5, 3, cur->version, &g, NULL), 0);
    ck_assert_str_eq(g->flash_sale_id, id);
    ck_assert_int_eq(g->per_buyer_limit, 3);
    ck_assert_int_eq(g->version, cur->version + 1);
    ck_assert_int_eq(g->reserved, 2);
    ck_assert_int_eq(g->starts_at->seconds, cur->starts_at->seconds);
    int64_t v1 = g->version;
    free_sale(g);
    ck_assert_int_eq(buy(c, "u-b1-3", "b1", "sku-u", NULL), 0);
    ck_assert_int_eq(buy(c, "u-b1-4", "b1", "sku-u", &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "FLASH_SALE_LIMIT_EXCEEDED");
    /* the same update again: the sale as it is now, applied once */
    ck_assert_int_eq(configure_keep_window(c, "u-1", cur, 5, 3, cur->version, &g, NULL), 0);
    ck_assert_int_eq(g->per_buyer_limit, 3);
    ck_assert_int_eq(g->reserved, 3);
    ck_assert_int_eq(g->version, v1 + 1); /* + 1: the reservation since */
    free_sale(g);
    /* the same request_id for another change */
    ck_assert_int_eq(configure_keep_window(c, "u-1", cur, 5, 4, cur->version, NULL, &st),
                     GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");
    /* a stale expected_version */
    ck_assert_int_eq(configure_keep_window(c, "u-2", cur, 5, 4, cur->version, NULL, &st),
                     GRPC_STATUS_ABORTED);
    ck_assert_str_eq(st.reason, "VERSION_MISMATCH");
    free_sale(cur);

    /* a lower limit is not retroactive: b1 keeps 3 but may not add, b2
     * gets 1 */
    cur = get_sale(c, id);
    ck_assert_int_eq(configure_keep_window(c, "u-3", cur, 5, 1, 0, NULL, NULL), 0);
    ck_assert_int_eq(buy(c, "u-b1-5", "b1", "sku-u", &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "FLASH_SALE_LIMIT_EXCEEDED");
    ck_assert_int_eq(buy(c, "u-b2-1", "b2", "sku-u", NULL), 0);
    ck_assert_int_eq(buy(c, "u-b2-2", "b2", "sku-u", &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "FLASH_SALE_LIMIT_EXCEEDED");
    free_sale(cur);

    /* refused updates name the field and change nothing: stock below the 4
     * units held, a new start of a running sale, another sku, unknown id */
    cur = get_sale(c, id);
    ck_assert_int_eq(cur->reserved, 4);
    ck_assert_int_eq(configure_keep_window(c, "u-4", cur, 3, 1, 0, NULL, &st),
                     GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "STOCK_WOULD_GO_NEGATIVE");
    ck_assert_str_eq(st.field, "sale_stock");
    ck_assert_int_eq(fx_configure_sale_in(c, "u-5", id, "sku-u", -60, 3600, 5, 1, 0, NULL, &st),
                     GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_str_eq(st.field, "starts_at");
    Commerce__Inventory__V1__FlashSale other = *cur;
    other.sku = "sku-other";
    ck_assert_int_eq(configure_keep_window(c, "u-6", &other, 5, 1, 0, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "sku");
    other = *cur;
    other.flash_sale_id = "0190a8e0-0000-7000-8000-00000000dead";
    ck_assert_int_eq(configure_keep_window(c, "u-7", &other, 5, 1, 0, NULL, &st),
                     GRPC_STATUS_NOT_FOUND);
    g = get_sale(c, id);
    ck_assert_int_eq(g->version, cur->version);
    ck_assert_int_eq(g->sale_stock, 5);
    ck_assert_int_eq(g->per_buyer_limit, 1);
    ck_assert_int_eq(g->starts_at->seconds, cur->starts_at->seconds);
    ck_assert_int_eq(g->ends_at->seconds, cur->ends_at->seconds);
    free_sale(g);
    /* a refused request_id was not used up */
    ck_assert_int_eq(configure_keep_window(c, "u-4", cur, 4, 1, 0, &g, NULL), 0);
    free_sale(cur);

    /* stock down to what is held: sold out (SoldOut of the sale); a buyer
     * is refused naming the sale; stock up: back in stock, and buyable */
    ck_assert_int_eq(g->sale_stock, 4);
    ck_assert_int_eq(g->state,
                     COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_SOLD_OUT);
    ck_assert_int_eq(sale_events("SoldOut", "sku-u", id), 1);
    ck_assert_int_eq(buy(c, "u-b3-1", "b3", "sku-u", &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "SOLD_OUT");
    ck_assert_int_eq(configure_keep_window(c, "u-8", g, 6, 1, 0, NULL, NULL), 0);
    free_sale(g);
    ck_assert_int_eq(sale_events("BackInStock", "sku-u", id), 1);
    ck_assert_int_eq(buy(c, "u-b3-1", "b3", "sku-u", NULL), 0);
    /* the last unit through a reservation: SoldOut from the reserve path;
     * its release: BackInStock */
    ck_assert_int_eq(buy(c, "u-b4-1", "b4", "sku-u", NULL), 0);
    ck_assert_int_eq(sale_events("SoldOut", "sku-u", id), 2);
    ck_assert_int_eq(resolve(c, SVC "Release", "u-b4-1", NULL, NULL), 0);
    ck_assert_int_eq(sale_events("BackInStock", "sku-u", id), 2);
    /* every reserved line of the flash path has its StockChanged */
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE type = "
                                         "'commerce.events.v1.StockChanged' AND key = 'sku-u'"),
                     1 + 6 + 1);

    /* a later end: the window grows, and the sale runs on */
    ck_assert_int_eq(fx_configure_sale_in(c, "u-9", id, "sku-u", 0, 7200, 6, 1, 0, &g, &st),
                     GRPC_STATUS_FAILED_PRECONDITION); /* a new start: refused */
    cur = get_sale(c, id);
    Google__Protobuf__Timestamp later = *cur->ends_at;
    later.seconds += 3600;
    other = *cur;
    other.ends_at = &later;
    ck_assert_int_eq(configure_keep_window(c, "u-10", &other, 6, 1, 0, &g, NULL), 0);
    ck_assert_int_eq(g->ends_at->seconds, cur->ends_at->seconds + 3600);
    ck_assert_int_eq(g->state, COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_ACTIVE);
    free_sale(g);
    free_sale(cur);

    /* a scheduled sale: every field may move, but not onto another sale */
    fx_set_stock(c, "r2", "sku-w", 10);
    ck_assert_int_eq(fx_configure_sale_in(c, "w-0", NULL, "sku-w", 3600, 7200, 5, 2, 0, &f, NULL),
                     0);
    ck_assert_int_eq(fx_configure_sale_in(c, "w-1", NULL, "sku-w", 10800, 14400, 5, 2, 0, &g, NULL),
                     0);
    ck_assert_int_eq(
        fx_configure_sale_in(c, "w-2", f->flash_sale_id, "sku-w", 9000, 12000, 8, 3, 0, NULL, &st),
        GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "FLASH_SALE_OVERLAP");
    free_sale(g);
    ck_assert_int_eq(
        fx_configure_sale_in(c, "w-3", f->flash_sale_id, "sku-w", 1800, 9000, 8, 3, 0, &g, NULL),
        0);
    ck_assert_int_eq(g->sale_stock, 8);
    ck_assert_int_eq(g->per_buyer_limit, 3);
    ck_assert_int_le(labs((long)(g->starts_at->seconds - (time(NULL) + 1800))), 2);
    free_sale(g);
    /* moved to now, it runs; moved to end in two seconds, it ends, and an
     * ended sale is final */
    ck_assert_int_eq(
        fx_configure_sale_in(c, "w-4", f->flash_sale_id, "sku-w", -10, 2, 8, 3, 0, &g, NULL), 0);
    ck_assert_int_eq(g->state, COMMERCE__INVENTORY__V1__FLASH_SALE_STATE__FLASH_SALE_STATE_ACTIVE);
    free_sale(g);
    ck_assert_int_eq(buy(c, "w-b1-1", "b1", "sku-w", NULL), 0);
    sleep(3);
    ck_assert_int_eq(
        fx_configure_sale_in(c, "w-5", f->flash_sale_id, "sku-w", -10, 3600, 8, 3, 0, NULL, &st),
        GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    free_sale(f);
    ck_assert_int_eq(violations(c), 0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

/* ---- a lost database connection ---- */

/* the service's connections to the test's schema ended by the server */
static long terminate_service_backends(void)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
             "WHERE application_name = 'commerce-%s'",
             schema);
    return hs_sql_long(schema, sql);
}

START_TEST(reserve_survives_lost_database_connections)
{
    new_schema();
    hs_proc p[2];
    const char *naive[] = {"INVENTORY_HOT_PATH=off", NULL};
    spawn(&p[0], NULL);
    spawn(&p[1], naive);
    cm_rpc_client *c[2] = {hs_client(&p[0], NULL), hs_client(&p[1], NULL)};
    fx_set_stock(c[0], "r1", "sku-l", 10);
    /* each path has prepared its statements on its connection */
    ck_assert_int_eq(reserve1(c[0], "l-1", "sku-l", 1, NULL), 0);
    ck_assert_int_eq(reserve1(c[1], "l-2", "sku-l", 1, NULL), 0);
    ck_assert_int_gt(terminate_service_backends(), 0);
    /* reads first: every worker finds its connection ended on its next
     * query, and a read runs again on a new one (cm_db_read): none fails */
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 48; i++) {
            fx_level r = fx_get_level(c[k], "sku-l");
            ck_assert_msg(r.reserved == 2, "replica %d, read %d after the connections ended: %lld",
                          k, i, (long long)r.reserved);
        }
    /* new connections, without the prepared statements: still served */
    cm_rpc_status st;
    ck_assert_msg(reserve1(c[0], "l-3", "sku-l", 1, &st) == 0, "hot path: %s", st.message);
    ck_assert_msg(reserve1(c[1], "l-4", "sku-l", 1, &st) == 0, "naive path: %s", st.message);
    ck_assert_int_eq(reserve1(c[0], "l-5", "sku-l", 1, NULL), 0);
    fx_level l = fx_get_level(c[0], "sku-l");
    ck_assert_int_eq(l.reserved, 5);
    ck_assert_int_eq(l.available, 5);
    long v = violations(c[0]);
    for (int i = 0; i < 40 && v < 0; i++)
        v = violations(c[0]);
    ck_assert_int_eq(v, 0);
    for (int i = 0; i < 2; i++) {
        cm_rpc_client_free(c[i]);
        ck_assert_int_eq(hs_stop(&p[i], SIGTERM, 20000), 0);
    }
    hs_drop_schema(NULL, schema);
}
END_TEST

/* the events a call causes carry its traceparent, on every write path:
 * an admin change (one statement per event), the batched Reserve (one
 * insert for a batch, each row with its own call's trace) and a release;
 * the sweeper's expiry, caused by no call, carries none */
START_TEST(events_carry_the_callers_traceparent)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    cm_rpc_client *c = hs_client(&p, NULL);
    const char *tp_set = "00-11111111111111111111111111111111-1111111111111111-01";
    const char *tp_res = "00-22222222222222222222222222222222-2222222222222222-01";
    const char *tp_rel = "00-33333333333333333333333333333333-3333333333333333-01";
    const cm_rpc_md md_set[] = {{"x-tenant-id", FX_TENANT}, {"traceparent", tp_set}};
    Commerce__Inventory__V1__SetStockRequest ss = COMMERCE__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
    ss.request_id = "tp-stock";
    ss.sku = "TP-1";
    ss.available = 10;
    ss.reason = "trace test";
    ss.actor = "test";
    cm_rpc_status st;
    ck_assert_int_eq(hs_call(c, SVC "SetStock", &ss.base,
                             &commerce__inventory__v1__set_stock_response__descriptor, NULL, &st,
                             md_set, 2),
                     0);

    Commerce__Inventory__V1__ReserveLine line = COMMERCE__INVENTORY__V1__RESERVE_LINE__INIT;
    Commerce__Inventory__V1__ReserveLine *lp[] = {&line};
    line.sku = "TP-1";
    line.quantity = 10; /* all of it: a SoldOut in the same batch */
    Commerce__Inventory__V1__ReserveRequest q = COMMERCE__INVENTORY__V1__RESERVE_REQUEST__INIT;
    q.order_id = "tp-order-1";
    q.lines = lp;
    q.n_lines = 1;
    const cm_rpc_md md_res[] = {{"x-tenant-id", FX_TENANT}, {"traceparent", tp_res}};
    ck_assert_int_eq(hs_call(c, SVC "Reserve", &q.base,
                             &commerce__inventory__v1__reserve_response__descriptor, NULL, &st,
                             md_res, 2),
                     0);
    Commerce__Inventory__V1__ReleaseRequest rq = COMMERCE__INVENTORY__V1__RELEASE_REQUEST__INIT;
    rq.order_id = "tp-order-1";
    const cm_rpc_md md_rel[] = {{"x-tenant-id", FX_TENANT}, {"traceparent", tp_rel}};
    ck_assert_int_eq(hs_call(c, SVC "Release", &rq.base,
                             &commerce__inventory__v1__release_response__descriptor, NULL, &st,
                             md_rel, 2),
                     0);
    char sql[512];
    /* SetStock: its StockChanged */
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox WHERE type = 'commerce.events.v1.StockChanged' "
             "AND traceparent = '%s'",
             tp_set);
    ck_assert_int_eq(hs_sql_long(schema, sql), 1);
    /* Reserve through the batch: its StockChanged; the SoldOut belongs to
     * the sku, not to one call, and carries none */
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM outbox WHERE type = 'commerce.events.v1.StockChanged' "
             "AND traceparent = '%s'",
             tp_res);
    ck_assert_int_eq(hs_sql_long(schema, sql), 1);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM outbox WHERE type = "
                                         "'commerce.events.v1.SoldOut' AND traceparent IS NULL"),
                     1);
    /* Release: its StockChanged, BackInStock and ReservationReleased */
    snprintf(sql, sizeof sql, "SELECT count(*) FROM outbox WHERE traceparent = '%s'", tp_rel);
    ck_assert_int_eq(hs_sql_long(schema, sql), 3);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

/* ---- BatchReserve ---- */

/* one request of a BatchReserve: an order and its lines */
typedef struct breq {
    const char *order, *buyer;
    size_t n;
    const char *sku[4];
    int64_t qty[4];
} breq;

#define BATCH_CAP 128 /* requests one helper call can send (above the api's 100) */

/* BatchReserve of rq[0..n) as the tenant md names; callable from any thread */
static int batch_reserve_md(cm_rpc_client *c, const breq *rq, size_t n,
                            Commerce__Inventory__V1__BatchReserveResponse **out, cm_rpc_status *st,
                            const cm_rpc_md *md)
{
    Commerce__Inventory__V1__ReserveRequest q[BATCH_CAP], *qp[BATCH_CAP];
    Commerce__Inventory__V1__ReserveLine lines[BATCH_CAP][4], *lp[BATCH_CAP][4];
    Commerce__Inventory__V1__BatchReserveRequest b =
        COMMERCE__INVENTORY__V1__BATCH_RESERVE_REQUEST__INIT;
    if (n > BATCH_CAP)
        n = BATCH_CAP;
    for (size_t i = 0; i < n; i++) {
        commerce__inventory__v1__reserve_request__init(&q[i]);
        q[i].order_id = (char *)rq[i].order;
        q[i].buyer_id = (char *)(rq[i].buyer ? rq[i].buyer : "");
        for (size_t j = 0; j < rq[i].n && j < 4; j++) {
            commerce__inventory__v1__reserve_line__init(&lines[i][j]);
            lines[i][j].sku = (char *)rq[i].sku[j];
            lines[i][j].quantity = rq[i].qty[j];
            lp[i][j] = &lines[i][j];
        }
        q[i].lines = lp[i];
        q[i].n_lines = rq[i].n;
        qp[i] = &q[i];
    }
    b.requests = qp;
    b.n_requests = n;
    return hs_call(c, SVC "BatchReserve", &b.base,
                   &commerce__inventory__v1__batch_reserve_response__descriptor,
                   (ProtobufCMessage **)out, st, md, 1);
}

static int batch_reserve(cm_rpc_client *c, const breq *rq, size_t n,
                         Commerce__Inventory__V1__BatchReserveResponse **out, cm_rpc_status *st)
{
    return batch_reserve_md(c, rq, n, out, st, fx_md);
}

/* result i as a client reads it: exactly one of reservation and error; the
 * error, a packed google.rpc.Status, parsed into *st (zeroed first) and
 * carrying the result's code and inventory's domain. returns the code */
static int item_status(const Commerce__Inventory__V1__BatchReserveResponse *r, size_t i,
                       cm_rpc_status *st)
{
    ck_assert_uint_gt(r->n_results, i);
    const Commerce__Inventory__V1__BatchReserveResult *x = r->results[i];
    memset(st, 0, sizeof *st);
    if (x->code == 0) {
        ck_assert_msg(x->reservation != NULL, "result %zu: code 0 without a reservation", i);
        ck_assert_uint_eq(x->error.len, 0);
        return 0;
    }
    ck_assert_msg(x->reservation == NULL, "result %zu: code %d with a reservation", i, x->code);
    ck_assert_msg(x->error.len > 0, "result %zu: code %d without an error", i, x->code);
    cm_rpc_status_parse(x->error.data, x->error.len, st);
    ck_assert_int_eq(st->code, x->code);
    ck_assert_str_eq(st->domain, "inventory.commerce");
    return x->code;
}

/* st's details hold a detail of type url (type.googleapis.com/...) */
static int has_detail(const cm_rpc_status *st, const char *type)
{
    for (int i = 0; i < st->n_details; i++)
        if (strcmp(st->detail_types[i], type) == 0)
            return 1;
    return 0;
}

/* the StockShortage of sku in st's StockShortageDetail: 1 with requested
 * and available, 0 when there is none */
static int shortage_of(const cm_rpc_status *st, const char *sku, int64_t *requested,
                       int64_t *available)
{
    Google__Rpc__Status *s = google__rpc__status__unpack(NULL, st->details_len, st->details_bin);
    int found = 0;
    for (size_t d = 0; s && d < s->n_details && !found; d++) {
        const Google__Protobuf__Any *any = s->details[d];
        if (strcmp(any->type_url,
                   "type.googleapis.com/commerce.inventory.v1.StockShortageDetail") != 0)
            continue;
        Commerce__Inventory__V1__StockShortageDetail *sd =
            commerce__inventory__v1__stock_shortage_detail__unpack(NULL, any->value.len,
                                                                   any->value.data);
        for (size_t k = 0; sd && k < sd->n_shortages && !found; k++) {
            if (strcmp(sd->shortages[k]->sku, sku) == 0) {
                *requested = sd->shortages[k]->requested;
                *available = sd->shortages[k]->available;
                found = 1;
            }
        }
        if (sd)
            commerce__inventory__v1__stock_shortage_detail__free_unpacked(sd, NULL);
    }
    if (s)
        google__rpc__status__free_unpacked(s, NULL);
    return found;
}

/* r is q's reservation, ACTIVE, with q's lines in q's order */
static void assert_reservation_of(const Commerce__Inventory__V1__Reservation *r, const breq *q)
{
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r->order_id, q->order);
    ck_assert_str_eq(r->buyer_id, q->buyer ? q->buyer : "");
    ck_assert_int_eq(r->state,
                     COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_ACTIVE);
    ck_assert_ptr_nonnull(r->expires_at);
    ck_assert_uint_eq(r->n_lines, q->n);
    for (size_t j = 0; j < q->n; j++) {
        ck_assert_str_eq(r->lines[j]->sku, q->sku[j]);
        ck_assert_int_eq(r->lines[j]->quantity, q->qty[j]);
    }
}

/* GetReservation of order as the tenant md names; the status code */
static int get_reservation_md(cm_rpc_client *c, const char *order, const cm_rpc_md *md,
                              Commerce__Inventory__V1__GetReservationResponse **out,
                              cm_rpc_status *st)
{
    Commerce__Inventory__V1__GetReservationRequest q =
        COMMERCE__INVENTORY__V1__GET_RESERVATION_REQUEST__INIT;
    q.order_id = (char *)order;
    return hs_call(c, SVC "GetReservation", &q.base,
                   &commerce__inventory__v1__get_reservation_response__descriptor,
                   (ProtobufCMessage **)out, st, md, 1);
}

static void assert_level(cm_rpc_client *c, const char *sku, int64_t avail, int64_t reserved)
{
    fx_level l = fx_get_level(c, sku);
    ck_assert_msg(l.available == avail && l.reserved == reserved && l.sold == 0 &&
                      l.on_hand == avail + reserved,
                  "%s: available/reserved/sold/on_hand %lld/%lld/%lld/%lld, expected %lld/%lld/0",
                  sku, (long long)l.available, (long long)l.reserved, (long long)l.sold,
                  (long long)l.on_hand, (long long)avail, (long long)reserved);
}

/* the mixed batch both tests below start with, on sku-a 10, sku-b 5,
 * sku-c 7: [0] and [3] valid, [1] more of sku-b than there is, [2] a line
 * of quantity 0 */
static const breq mixed[4] = {
    {.order = "b-1", .buyer = "u1", .n = 1, .sku = {"sku-a"}, .qty = {3}},
    {.order = "b-2", .buyer = "u1", .n = 1, .sku = {"sku-b"}, .qty = {6}},
    {.order = "b-3", .buyer = "u2", .n = 2, .sku = {"sku-c", "sku-a"}, .qty = {1, 0}},
    {.order = "b-4", .buyer = "u2", .n = 2, .sku = {"sku-b", "sku-c"}, .qty = {2, 4}},
};

/* sends mixed and asserts each result on its own; the response into *out */
static void mixed_batch(cm_rpc_client *c, Commerce__Inventory__V1__BatchReserveResponse **out)
{
    Commerce__Inventory__V1__BatchReserveResponse *r = NULL;
    cm_rpc_status st;
    ck_assert_int_eq(batch_reserve(c, mixed, 4, &r, &st), 0);
    ck_assert_uint_eq(r->n_results, 4);
    /* the valid ones: ACTIVE, with their lines */
    ck_assert_int_eq(item_status(r, 0, &st), 0);
    assert_reservation_of(r->results[0]->reservation, &mixed[0]);
    ck_assert_int_eq(item_status(r, 3, &st), 0);
    assert_reservation_of(r->results[3]->reservation, &mixed[3]);
    /* sold out, as Reserve says it: the sku, and what was available to it
     * (sku-b's 5: request 3 comes after it) */
    ck_assert_int_eq(item_status(r, 1, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "SOLD_OUT");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "skus"), "sku-b");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "available"), "sku-b:5");
    ck_assert_msg(strstr(st.message, "sku-b requested 6 available 5"), "message: %s", st.message);
    ck_assert(has_detail(&st, "type.googleapis.com/google.rpc.ErrorInfo"));
    ck_assert(has_detail(&st, "type.googleapis.com/commerce.inventory.v1.StockShortageDetail"));
    int64_t requested = -1, available = -1;
    ck_assert(shortage_of(&st, "sku-b", &requested, &available));
    ck_assert_int_eq(requested, 6);
    ck_assert_int_eq(available, 5);
    /* invalid: the field named within its own request */
    ck_assert_int_eq(item_status(r, 2, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.reason, "INVALID_ARGUMENT");
    ck_assert_str_eq(st.field, "lines[1].quantity");
    ck_assert(has_detail(&st, "type.googleapis.com/google.rpc.BadRequest"));
    *out = r;
}

START_TEST(batch_reserve_answers_each_request_on_its_own)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    cm_rpc_client *c = hs_client(&p, NULL);
    fx_set_stock(c, "r1", "sku-a", 10);
    fx_set_stock(c, "r2", "sku-b", 5);
    fx_set_stock(c, "r3", "sku-c", 7);

    Commerce__Inventory__V1__BatchReserveResponse *r = NULL;
    mixed_batch(c, &r);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* the stock moved by the valid requests' lines, nothing else: sku-a 3
     * (b-1; b-3's line of sku-a was refused with it), sku-b 2, sku-c 4 */
    assert_level(c, "sku-a", 7, 3);
    assert_level(c, "sku-b", 3, 2);
    assert_level(c, "sku-c", 3, 4);
    /* the reservations as stored: the valid two, the refused none */
    Commerce__Inventory__V1__GetReservationResponse *g = NULL;
    ck_assert_int_eq(get_reservation_md(c, "b-1", fx_md, &g, NULL), 0);
    assert_reservation_of(g->reservation, &mixed[0]);
    protobuf_c_message_free_unpacked(&g->base, NULL);
    ck_assert_int_eq(get_reservation_md(c, "b-4", fx_md, &g, NULL), 0);
    assert_reservation_of(g->reservation, &mixed[3]);
    protobuf_c_message_free_unpacked(&g->base, NULL);
    ck_assert_int_eq(get_reservation_md(c, "b-2", fx_md, NULL, NULL), GRPC_STATUS_NOT_FOUND);
    ck_assert_int_eq(get_reservation_md(c, "b-3", fx_md, NULL, NULL), GRPC_STATUS_NOT_FOUND);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM reservation"), 2);
    /* one audit row per reserved line, for the reserved orders only */
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change WHERE kind = 3"), 3);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change WHERE kind = 3 AND "
                                         "order_id IN ('b-1', 'b-4')"),
                     3);
    ck_assert_int_eq(violations(c), 0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

START_TEST(batch_reserve_retries_are_idempotent_per_order)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    cm_rpc_client *c = hs_client(&p, NULL);
    fx_set_stock(c, "r1", "sku-a", 10);
    fx_set_stock(c, "r2", "sku-b", 5);
    fx_set_stock(c, "r3", "sku-c", 7);
    Commerce__Inventory__V1__BatchReserveResponse *first = NULL, *again = NULL;
    mixed_batch(c, &first);

    /* the same batch again: the same reservations, the same refusals (sku-b
     * now has 3 for b-2's 6), nothing more reserved */
    cm_rpc_status st;
    ck_assert_int_eq(batch_reserve(c, mixed, 4, &again, &st), 0);
    ck_assert_uint_eq(again->n_results, 4);
    size_t valid[] = {0, 3};
    for (size_t k = 0; k < 2; k++) {
        size_t i = valid[k];
        ck_assert_int_eq(item_status(again, i, &st), 0);
        const Commerce__Inventory__V1__Reservation *a = first->results[i]->reservation;
        const Commerce__Inventory__V1__Reservation *b = again->results[i]->reservation;
        assert_reservation_of(b, &mixed[i]);
        ck_assert_int_eq(fx_ts_ms(b->created_at), fx_ts_ms(a->created_at));
        ck_assert_int_eq(fx_ts_ms(b->expires_at), fx_ts_ms(a->expires_at));
    }
    ck_assert_int_eq(item_status(again, 1, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "SOLD_OUT");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "available"), "sku-b:3");
    ck_assert_int_eq(item_status(again, 2, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "lines[1].quantity");
    protobuf_c_message_free_unpacked(&again->base, NULL);
    protobuf_c_message_free_unpacked(&first->base, NULL);
    assert_level(c, "sku-a", 7, 3);
    assert_level(c, "sku-b", 3, 2);
    assert_level(c, "sku-c", 3, 4);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change WHERE kind = 3"), 3);

    /* b-1 with other lines is refused; a new order and b-4's retry beside
     * it in the same batch are answered as alone */
    const breq reuse[3] = {
        {.order = "b-1", .buyer = "u1", .n = 1, .sku = {"sku-a"}, .qty = {4}},
        {.order = "b-5", .buyer = "u3", .n = 1, .sku = {"sku-c"}, .qty = {1}},
        mixed[3],
    };
    ck_assert_int_eq(batch_reserve(c, reuse, 3, &again, &st), 0);
    ck_assert_uint_eq(again->n_results, 3);
    ck_assert_int_eq(item_status(again, 0, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");
    ck_assert_int_eq(item_status(again, 1, &st), 0);
    assert_reservation_of(again->results[1]->reservation, &reuse[1]);
    ck_assert_int_eq(item_status(again, 2, &st), 0);
    assert_reservation_of(again->results[2]->reservation, &mixed[3]);
    protobuf_c_message_free_unpacked(&again->base, NULL);
    /* b-1 still holds its 3 of sku-a; only b-5's unit moved */
    Commerce__Inventory__V1__GetReservationResponse *g = NULL;
    ck_assert_int_eq(get_reservation_md(c, "b-1", fx_md, &g, NULL), 0);
    assert_reservation_of(g->reservation, &mixed[0]);
    protobuf_c_message_free_unpacked(&g->base, NULL);
    assert_level(c, "sku-a", 7, 3);
    assert_level(c, "sku-b", 3, 2);
    assert_level(c, "sku-c", 2, 5);
    /* and a single Reserve of a batch's order is its retry too */
    Commerce__Inventory__V1__ReserveResponse *one = NULL;
    ck_assert_int_eq(reserve_lines(c, "b-5", "u3", reuse[1].sku, reuse[1].qty, 1, 0, &one, &st), 0);
    assert_reservation_of(one->reservation, &reuse[1]);
    protobuf_c_message_free_unpacked(&one->base, NULL);
    assert_level(c, "sku-c", 2, 5);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM reservation"), 3);
    ck_assert_int_eq(violations(c), 0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

START_TEST(batch_reserve_refuses_a_malformed_batch_as_a_whole)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    cm_rpc_client *c = hs_client(&p, NULL);
    fx_set_stock(c, "r1", "sku-w", 1000);
    static breq many[BATCH_CAP];
    static char ids[BATCH_CAP][16];
    for (int i = 0; i < BATCH_CAP; i++) {
        snprintf(ids[i], sizeof ids[i], "w-%d", i);
        many[i] = (breq){.order = ids[i], .n = 1, .sku = {"sku-w"}, .qty = {1}};
    }
    Commerce__Inventory__V1__BatchReserveResponse *r = NULL;
    cm_rpc_status st;

    /* no requests */
    ck_assert_int_eq(batch_reserve(c, many, 0, &r, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_ptr_null(r);
    ck_assert_str_eq(st.reason, "INVALID_ARGUMENT");
    ck_assert_str_eq(st.field, "requests");
    /* 101 requests */
    ck_assert_int_eq(batch_reserve(c, many, 101, &r, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_ptr_null(r);
    ck_assert_str_eq(st.field, "requests");
    assert_level(c, "sku-w", 1000, 0);
    /* an order twice: named at its second place, whatever is around it */
    breq dup[4] = {many[0], many[1], many[2], many[1]};
    dup[2].qty[0] = 0; /* itself invalid: the whole call is refused first */
    ck_assert_int_eq(batch_reserve(c, dup, 4, &r, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_ptr_null(r);
    ck_assert_str_eq(st.reason, "INVALID_ARGUMENT");
    ck_assert_str_eq(st.field, "requests[3].order_id");
    /* the same order with other lines is the same order */
    dup[3] = many[1];
    dup[3].qty[0] = 2;
    dup[2] = many[2];
    ck_assert_int_eq(batch_reserve(c, dup, 4, &r, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "requests[3].order_id");
    /* nothing of a refused call was reserved */
    assert_level(c, "sku-w", 1000, 0);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM reservation"), 0);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock_change WHERE kind = 3"), 0);
    ck_assert_int_eq(get_reservation_md(c, "w-0", fx_md, NULL, NULL), GRPC_STATUS_NOT_FOUND);

    /* 100 is the limit, not above it: each answered, in request order */
    ck_assert_int_eq(batch_reserve(c, many, 100, &r, &st), 0);
    ck_assert_uint_eq(r->n_results, 100);
    for (size_t i = 0; i < 100; i++) {
        ck_assert_int_eq(item_status(r, i, &st), 0);
        assert_reservation_of(r->results[i]->reservation, &many[i]);
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    assert_level(c, "sku-w", 900, 100);
    ck_assert_int_eq(violations(c), 0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

/* RPC_DISABLE: the method answers UNIMPLEMENTED, the others serve; a name
 * the service does not have stops the start, naming it */
START_TEST(rpc_disable_turns_a_method_off_and_refuses_unknown_names)
{
    new_schema();
    char s[96];
    snprintf(s, sizeof s, "INVENTORY_SCHEMA=%s", schema);
    hs_proc bad;
    const char *const bad_env[] = {s, "RPC_DISABLE=BatchReserve,NoSuchRpc", NULL};
    ck_assert_int_eq(hs_spawn(&bad, INVENTORY_BIN, bad_env), 0);
    ck_assert_int_ne(hs_wait_exit(&bad, 30000), 0);
    ck_assert(hs_log_contains(&bad, "RPC_DISABLE: NoSuchRpc is not a method of this service"));

    const char *env[] = {"RPC_DISABLE=BatchReserve", NULL};
    hs_proc p;
    spawn(&p, env);
    cm_rpc_client *c = hs_client(&p, NULL);
    fx_set_stock(c, "rd1", "sku-d", 5);
    Commerce__Inventory__V1__ReserveRequest rq = COMMERCE__INVENTORY__V1__RESERVE_REQUEST__INIT;
    Commerce__Inventory__V1__ReserveLine ln = COMMERCE__INVENTORY__V1__RESERVE_LINE__INIT,
                                         *lp = &ln;
    ln.sku = "sku-d";
    ln.quantity = 1;
    rq.order_id = "d-1";
    rq.lines = &lp;
    rq.n_lines = 1;
    Commerce__Inventory__V1__ReserveRequest *rqs = &rq;
    Commerce__Inventory__V1__BatchReserveRequest b =
        COMMERCE__INVENTORY__V1__BATCH_RESERVE_REQUEST__INIT;
    b.requests = &rqs;
    b.n_requests = 1;
    cm_rpc_status st;
    ck_assert_int_eq(hs_call(c, SVC "BatchReserve", &b.base,
                             &commerce__inventory__v1__batch_reserve_response__descriptor, NULL,
                             &st, fx_md, 1),
                     GRPC_STATUS_UNIMPLEMENTED);
    fx_assert_level(c, "sku-d", 5, 0, 0); /* nothing reserved */
    ck_assert_int_eq(reserve1(c, "d-1", "sku-d", 1, NULL), 0);
    fx_assert_level(c, "sku-d", 4, 1, 0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

START_TEST(batch_reserve_keeps_tenants_apart)
{
    new_schema();
    hs_proc p;
    spawn(&p, NULL);
    cm_rpc_client *c = hs_client(&p, NULL);
    fx_set_stock(c, "r1", "sku-t", 10);
    fx_set_stock_md(c, "r1", "sku-t", 3, fx_md_other);
    /* tenant A holds t-1 (4) and t-2 (1) */
    const breq a[2] = {
        {.order = "t-1", .buyer = "ua", .n = 1, .sku = {"sku-t"}, .qty = {4}},
        {.order = "t-2", .buyer = "ua", .n = 1, .sku = {"sku-t"}, .qty = {1}},
    };
    Commerce__Inventory__V1__BatchReserveResponse *r = NULL;
    cm_rpc_status st;
    ck_assert_int_eq(batch_reserve(c, a, 2, &r, &st), 0);
    ck_assert_int_eq(item_status(r, 0, &st), 0);
    ck_assert_int_eq(item_status(r, 1, &st), 0);
    long long a_created = fx_ts_ms(r->results[0]->reservation->created_at);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* tenant B, the same order ids with other bodies: not A's orders, so
     * no IDEMPOTENCY_KEY_REUSED; t-1 is reserved from B's 3, t-2 finds
     * what is left of B's stock (1), not A's */
    const breq b[2] = {
        {.order = "t-1", .buyer = "ub", .n = 1, .sku = {"sku-t"}, .qty = {2}},
        {.order = "t-2", .buyer = "ub", .n = 1, .sku = {"sku-t"}, .qty = {5}},
    };
    ck_assert_int_eq(batch_reserve_md(c, b, 2, &r, &st, fx_md_other), 0);
    ck_assert_uint_eq(r->n_results, 2);
    ck_assert_int_eq(item_status(r, 0, &st), 0);
    assert_reservation_of(r->results[0]->reservation, &b[0]);
    ck_assert_int_eq(item_status(r, 1, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "SOLD_OUT");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "available"), "sku-t:1");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    fx_level lb = fx_get_level_md(c, "sku-t", fx_md_other);
    ck_assert_int_eq(lb.available, 1);
    ck_assert_int_eq(lb.reserved, 2);

    /* A's reservations and stock untouched */
    assert_level(c, "sku-t", 5, 5);
    Commerce__Inventory__V1__GetReservationResponse *g = NULL;
    ck_assert_int_eq(get_reservation_md(c, "t-1", fx_md, &g, NULL), 0);
    assert_reservation_of(g->reservation, &a[0]);
    ck_assert_int_eq(fx_ts_ms(g->reservation->created_at), a_created);
    protobuf_c_message_free_unpacked(&g->base, NULL);
    ck_assert_int_eq(get_reservation_md(c, "t-2", fx_md, &g, NULL), 0);
    assert_reservation_of(g->reservation, &a[1]);
    protobuf_c_message_free_unpacked(&g->base, NULL);
    /* B sees its own */
    ck_assert_int_eq(get_reservation_md(c, "t-1", fx_md_other, &g, NULL), 0);
    assert_reservation_of(g->reservation, &b[0]);
    protobuf_c_message_free_unpacked(&g->base, NULL);
    ck_assert_int_eq(get_reservation_md(c, "t-2", fx_md_other, NULL, NULL), GRPC_STATUS_NOT_FOUND);
    /* A's retry is still A's: the same reservations, nothing more */
    ck_assert_int_eq(batch_reserve(c, a, 2, &r, &st), 0);
    ck_assert_int_eq(item_status(r, 0, &st), 0);
    assert_reservation_of(r->results[0]->reservation, &a[0]);
    ck_assert_int_eq(fx_ts_ms(r->results[0]->reservation->created_at), a_created);
    ck_assert_int_eq(item_status(r, 1, &st), 0);
    assert_reservation_of(r->results[1]->reservation, &a[1]);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    assert_level(c, "sku-t", 5, 5);
    ck_assert_int_eq(
        hs_sql_long(schema, "SELECT count(*) FROM reservation WHERE tenant_id = '" FX_TENANT "'"),
        2);
    ck_assert_int_eq(hs_sql_long(schema,
                                 "SELECT count(*) FROM reservation WHERE tenant_id = '" FX_TENANT
                                 "-other'"),
                     1);
    ck_assert_int_eq(violations(c), 0);
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 20000), 0);
    hs_drop_schema(NULL, schema);
}
END_TEST

/* buyers of one hot sku, each round a BatchReserve of 5 one-unit orders
 * and a single Reserve */
typedef struct mixed_buyers {
    cm_rpc_client *clients[2];
    int nclients, rounds;
    atomic_int next, ok_batch, ok_single, sold_out, other;
} mixed_buyers;

#define HOT_BATCH 5

static void *mixed_buyer(void *p)
{
    mixed_buyers *m = p;
    for (int round = 0; round < m->rounds; round++) {
        int n = atomic_fetch_add(&m->next, 1);
        cm_rpc_client *c = m->clients[n % m->nclients];
        char ids[HOT_BATCH][32];
        breq rq[HOT_BATCH];
        for (int k = 0; k < HOT_BATCH; k++) {
            snprintf(ids[k], sizeof ids[k], "hb-%d-%d", n, k);
            rq[k] = (breq){.order = ids[k], .n = 1, .sku = {"sku-hot"}, .qty = {1}};
        }
        Commerce__Inventory__V1__BatchReserveResponse *r = NULL;
        cm_rpc_status st;
        if (batch_reserve(c, rq, HOT_BATCH, &r, &st) != 0 || r->n_results != HOT_BATCH) {
            atomic_fetch_add(&m->other, HOT_BATCH);
        } else {
            for (size_t k = 0; k < HOT_BATCH; k++) {
                const Commerce__Inventory__V1__BatchReserveResult *x = r->results[k];
                const Commerce__Inventory__V1__Reservation *v = x->reservation;
                memset(&st, 0, sizeof st);
                if (x->code == 0 && v && strcmp(v->order_id, ids[k]) == 0 &&
                    v->state ==
                        COMMERCE__INVENTORY__V1__RESERVATION_STATE__RESERVATION_STATE_ACTIVE &&
                    v->n_lines == 1 && v->lines[0]->quantity == 1) {
                    atomic_fetch_add(&m->ok_batch, 1);
                    continue;
                }
                if (x->code == GRPC_STATUS_FAILED_PRECONDITION && !v) {
                    cm_rpc_status_parse(x->error.data, x->error.len, &st);
                    if (strcmp(st.reason, "SOLD_OUT") == 0) {
                        atomic_fetch_add(&m->sold_out, 1);
                        continue;
                    }
                }
                atomic_fetch_add(&m->other, 1);
            }
        }
        if (r)
            protobuf_c_message_free_unpacked(&r->base, NULL);
        char one[32];
        snprintf(one, sizeof one, "hs-%d", n);
        int code = reserve1(c, one, "sku-hot", 1, &st);
        if (code == 0)
            atomic_fetch_add(&m->ok_single, 1);
        else if (code == GRPC_STATUS_FAILED_PRECONDITION && strcmp(st.reason, "SOLD_OUT") == 0)
            atomic_fetch_add(&m->sold_out, 1);
        else
            atomic_fetch_add(&m->other, 1);
    }
    return NULL;
}

/* 8 threads, 3 rounds each: 144 one-unit orders for 50 units */
static void batch_and_single_never_oversell(int replicas, const char *const *env)
{
    new_schema();
    hs_proc p[2];
    mixed_buyers m = {.nclients = replicas, .rounds = 3};
    for (int i = 0; i < replicas; i++) {
        spawn(&p[i], env);
        m.clients[i] = hs_client(&p[i], NULL);
    }
    const int stock = 50, threads = 8, tries = threads * m.rounds * (HOT_BATCH + 1);
    fx_set_stock(m.clients[0], "r1", "sku-hot", stock);
    pthread_t t[8];
    for (int i = 0; i < threads; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, mixed_buyer, &m), 0);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    int ok_batch = atomic_load(&m.ok_batch), ok_single = atomic_load(&m.ok_single);
    int sold_out = atomic_load(&m.sold_out), other = atomic_load(&m.other);
    ck_assert_int_eq(other, 0);
    ck_assert_int_eq(ok_batch + ok_single, stock);
    ck_assert_int_eq(sold_out, tries - stock);
    ck_assert_int_gt(ok_batch, 0);
    fx_level l = fx_get_level(m.clients[0], "sku-hot");
    ck_assert_int_eq(l.available, 0);
    ck_assert_int_eq(l.reserved, stock);
    ck_assert_int_eq(l.on_hand, stock);
    /* every acknowledged order is held, and no other */
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM reservation WHERE state = 1"),
                     stock);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM reservation WHERE state = 1 AND "
                                         "order_id LIKE 'hb-%'"),
                     ok_batch);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM reservation WHERE state = 1 AND "
                                         "order_id LIKE 'hs-%'"),
                     ok_single);
    ck_assert_int_eq(violations(m.clients[0]), 0);
    for (int i = 0; i < replicas; i++) {
        cm_rpc_client_free(m.clients[i]);
        ck_assert_int_eq(hs_stop(&p[i], SIGTERM, 20000), 0);
    }
    hs_drop_schema(NULL, schema);
}

START_TEST(batch_and_single_reserves_never_oversell)
{
    batch_and_single_never_oversell(1, NULL);
}
END_TEST

/* batches of 3 on two batchers: a BatchReserve's requests are committed in
 * several transactions, beside other calls' */
START_TEST(batch_and_single_reserves_never_oversell_small_batches)
{
    const char *env[] = {"INVENTORY_MAX_BATCH=3", "INVENTORY_BATCHERS=2", NULL};
    batch_and_single_never_oversell(1, env);
}
END_TEST

START_TEST(batch_and_single_reserves_never_oversell_naive_path)
{
    const char *env[] = {"INVENTORY_HOT_PATH=off", NULL};
    batch_and_single_never_oversell(2, env);
}
END_TEST

/* ---- quotas ---- */

static int set_stock_as(cm_rpc_client *c, const char *tenant, const char *rid, const char *sku,
                        cm_rpc_status *st)
{
    const cm_rpc_md md[] = {{"x-tenant-id", tenant}};
    Commerce__Inventory__V1__SetStockRequest q = COMMERCE__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
    q.request_id = (char *)rid;
    q.sku = (char *)sku;
    q.available = 5;
    q.reason = "goods received";
    q.actor = "ops:test";
    return hs_call(c, SVC "SetStock", &q.base,
                   &commerce__inventory__v1__set_stock_response__descriptor, NULL, st, md, 1);
}

typedef struct creator {
    cm_rpc_client *c;
    int index, created, refused;
} creator;

static void *create_skus(void *arg)
{
    creator *k = arg;
    for (int i = 0; i < 4; i++) {
        char rid[64], sku[64];
        snprintf(rid, sizeof rid, "race-%d-%d", k->index, i);
        snprintf(sku, sizeof sku, "RACE-%d-%d", k->index, i);
        cm_rpc_status st;
        int code = set_stock_as(k->c, "race", rid, sku, &st);
        k->created += code == 0;
        k->refused += code == GRPC_STATUS_RESOURCE_EXHAUSTED;
    }
    return NULL;
}

START_TEST(sku_quota_refuses_a_new_sku_naming_the_quota_and_creates_nothing)
{
    new_schema();
    char path[128], env_file[160];
    snprintf(path, sizeof path, "/tmp/commerce-inv-quotas-%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"tenants\": {\"small\": {\"quotas\": {\"skus\": 3}},"
          "              \"race\": {\"quotas\": {\"skus\": 5}},"
          "              \"" FX_TENANT "\": {\"quotas\": {\"flash_sales\": 2}}}}",
          f);
    ck_assert_int_eq(fclose(f), 0);
    snprintf(env_file, sizeof env_file, "RATE_LIMITS_FILE=%s", path);
    const char *extra[] = {env_file, NULL};
    hs_proc p;
    spawn(&p, extra);
    cm_rpc_client *c = hs_client(&p, NULL);

    cm_rpc_status st;
    ck_assert_int_eq(set_stock_as(c, "small", "q-1", "Q-1", &st), 0);
    ck_assert_int_eq(set_stock_as(c, "small", "q-2", "Q-2", &st), 0);
    ck_assert_int_eq(set_stock_as(c, "small", "q-3", "Q-3", &st), 0);
    ck_assert_int_eq(set_stock_as(c, "small", "q-4", "Q-4", &st), GRPC_STATUS_RESOURCE_EXHAUSTED);
    ck_assert_str_eq(st.reason, "QUOTA_EXCEEDED");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "quota"), "skus");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "limit"), "3");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "sku"), "Q-4");
    int quota_detail = 0;
    for (int i = 0; i < st.n_details; i++)
        quota_detail |=
            strcmp(st.detail_types[i], "type.googleapis.com/google.rpc.QuotaFailure") == 0;
    ck_assert(quota_detail);
    ck_assert_ptr_nonnull(strstr(st.message, "skus"));
    /* nothing was created: no row, no audit, no event */
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock WHERE sku = 'Q-4'"), 0);
    ck_assert_int_eq(
        hs_sql_long(schema, "SELECT count(*) FROM stock_change WHERE request_id = 'q-4'"), 0);
    /* the skus it has may still be set; another tenant is not held by it */
    ck_assert_int_eq(set_stock_as(c, "small", "q-5", "Q-2", &st), 0);
    ck_assert_int_eq(set_stock_as(c, "roomy", "r-1", "Q-1", &st), 0);
    ck_assert_int_eq(set_stock_as(c, "roomy", "r-2", "Q-4", &st), 0);

    /* flash sales: those not yet ended count; an ended one frees its place */
    fx_set_stock(c, "fs-s1", "FS-1", 10);
    Commerce__Inventory__V1__FlashSale *fs = NULL;
    ck_assert_int_eq(fx_configure_sale_in(c, "fs-1", NULL, "FS-1", -5, 1800, 5, 1, 0, &fs, &st), 0);
    protobuf_c_message_free_unpacked(&fs->base, NULL);
    ck_assert_int_eq(fx_configure_sale_in(c, "fs-2", NULL, "FS-1", 3600, 5400, 5, 1, 0, &fs, &st),
                     0);
    protobuf_c_message_free_unpacked(&fs->base, NULL);
    fs = NULL;
    ck_assert_int_eq(fx_configure_sale_in(c, "fs-3", NULL, "FS-1", 7200, 9000, 5, 1, 0, &fs, &st),
                     GRPC_STATUS_RESOURCE_EXHAUSTED);
    ck_assert_ptr_null(fs);
    ck_assert_str_eq(st.reason, "QUOTA_EXCEEDED");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "quota"), "flash_sales");
    ck_assert_str_eq(cm_rpc_status_meta(&st, "limit"), "2");
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM flash_sale"), 2);
    ck_assert_int_eq(
        hs_sql_long(schema, "SELECT count(*) FROM flash_sale_request WHERE request_id = 'fs-3'"),
        0);
    hs_sql_exec(schema, "UPDATE flash_sale SET starts_at = now() - interval '2 hours', "
                        "ends_at = now() - interval '1 hour' WHERE request_id = 'fs-2'");
    ck_assert_int_eq(fx_configure_sale_in(c, "fs-3", NULL, "FS-1", 7200, 9000, 5, 1, 0, &fs, &st),
                     0);
    protobuf_c_message_free_unpacked(&fs->base, NULL);

    /* concurrent creators on 8 threads do not overshoot */
    enum { N = 8 };
    pthread_t th[N];
    creator k[N];
    for (int i = 0; i < N; i++) {
        k[i] = (creator){c, i, 0, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, create_skus, &k[i]), 0);
    }
    int created = 0, refused = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        created += k[i].created;
        refused += k[i].refused;
    }
    ck_assert_int_eq(created, 5);
    ck_assert_int_eq(refused, N * 4 - 5);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock WHERE tenant_id = 'race'"), 5);

    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
    hs_drop_schema(NULL, schema);
    unlink(path);
}
END_TEST

START_TEST(sku_quota_counter_is_backfilled_and_follows_deletes)
{
    new_schema();
    char path[128], env_file[160];
    snprintf(path, sizeof path, "/tmp/commerce-inv-quotas-%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"tenants\": {\"pre\": {\"quotas\": {\"skus\": 3}}}}", f);
    ck_assert_int_eq(fclose(f), 0);
    snprintf(env_file, sizeof env_file, "RATE_LIMITS_FILE=%s", path);
    const char *extra[] = {env_file, NULL};
    hs_proc p;
    spawn(&p, extra);
    cm_rpc_client *c = hs_client(&p, NULL);
    const char *used = "SELECT COALESCE((SELECT used FROM quota_usage WHERE tenant_id = 'pre' AND "
                       "quota = 'skus'), -1)";

    /* skus written in sql (a bulk load, from a session whose search_path
     * is not the service's) are counted too */
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO %s.stock (tenant_id, sku, available, reserved, sold, on_hand) "
             "SELECT t, 'PRE-' || i, 1, 0, 0, 1 FROM generate_series(1, 2) i, "
             "(VALUES ('pre'), ('other')) v(t)",
             schema);
    hs_sql_exec(NULL, sql);
    ck_assert_int_eq(hs_sql_long(schema, used), 2);
    /* a deployment from before the counter: rows, no counts; the
     * migration's recount (the backfill) counts them, again and again */
    hs_sql_exec(schema, "DELETE FROM quota_usage");
    hs_sql_exec(schema, "SELECT inv_quota_recount()");
    ck_assert_int_eq(hs_sql_long(schema, used), 2);
    hs_sql_exec(schema, "SELECT inv_quota_recount()");
    ck_assert_int_eq(hs_sql_long(schema, used), 2);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT used FROM quota_usage WHERE tenant_id = 'other'"),
                     2);

    cm_rpc_status st;
    ck_assert_int_eq(set_stock_as(c, "pre", "p-1", "P-1", &st), 0);
    ck_assert_int_eq(set_stock_as(c, "pre", "p-2", "P-2", &st), GRPC_STATUS_RESOURCE_EXHAUSTED);
    ck_assert_str_eq(cm_rpc_status_meta(&st, "quota"), "skus");
    /* setting a sku it has is no creation */
    ck_assert_int_eq(set_stock_as(c, "pre", "p-3", "PRE-1", &st), 0);
    ck_assert_int_eq(hs_sql_long(schema, used), 3);
    /* a deleted sku frees its place */
    hs_sql_exec(schema, "DELETE FROM stock WHERE tenant_id = 'pre' AND sku = 'PRE-2'");
    ck_assert_int_eq(hs_sql_long(schema, used), 2);
    ck_assert_int_eq(set_stock_as(c, "pre", "p-2", "P-2", &st), 0);
    ck_assert_int_eq(hs_sql_long(schema, used), 3);
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM stock WHERE tenant_id = 'pre'"), 3);
    /* an emptied table empties the counters */
    hs_sql_exec(schema, "TRUNCATE stock CASCADE");
    ck_assert_int_eq(hs_sql_long(schema, "SELECT count(*) FROM quota_usage"), 0);
    ck_assert_int_eq(set_stock_as(c, "pre", "p-4", "P-4", &st), 0);
    ck_assert_int_eq(hs_sql_long(schema, used), 1);

    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
    hs_drop_schema(NULL, schema);
    unlink(path);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("inventory");
    TCase *t = tcase_create("inventory");
    tcase_set_timeout(t, 120);
    tcase_add_checked_fixture(t, NULL, hs_teardown);
    tcase_add_test(t, reserve_confirm_release_and_retries);
    tcase_add_test(t, events_carry_the_callers_traceparent);
    tcase_add_test(t, bad_input_changes_nothing);
    tcase_add_test(t, admin_changes_are_idempotent_and_audited);
    tcase_add_test(t, expiry_releases_exactly_once_with_two_replicas);
    tcase_add_test(t, concurrent_buyers_never_oversell);
    tcase_add_test(t, concurrent_buyers_never_oversell_two_replicas);
    tcase_add_test(t, concurrent_buyers_never_oversell_naive_path);
    tcase_add_test(t, kill_9_under_load_loses_no_acknowledged_reservation);
    tcase_add_test(t, flash_sale_per_buyer_limit_is_exact_under_concurrency);
    tcase_add_test(t, order_events_confirm_and_release_through_the_inbox);
    tcase_add_test(t, paid_orders_in_one_batch_confirm_as_one_by_one);
    tcase_add_test(t, rpc_disable_turns_a_method_off_and_refuses_unknown_names);
    tcase_add_test(t, list_stock_changes_pages_the_audit_trail);
    tcase_add_test(t, list_flash_sales_returns_configured_sales);
    tcase_add_test(t, reserve_burst_emits_one_stock_changed_per_line);
    tcase_add_test(t, flash_sale_updates_change_a_running_sale_within_its_invariants);
    tcase_add_test(t, reserve_survives_lost_database_connections);
    suite_add_tcase(s, t);

    TCase *b = tcase_create("batch_reserve");
    tcase_set_timeout(b, 120);
    tcase_add_checked_fixture(b, NULL, hs_teardown);
    tcase_add_test(b, batch_reserve_answers_each_request_on_its_own);
    tcase_add_test(b, batch_reserve_retries_are_idempotent_per_order);
    tcase_add_test(b, batch_reserve_refuses_a_malformed_batch_as_a_whole);
    tcase_add_test(b, batch_reserve_keeps_tenants_apart);
    tcase_add_test(b, batch_and_single_reserves_never_oversell);
    tcase_add_test(b, batch_and_single_reserves_never_oversell_small_batches);
    tcase_add_test(b, batch_and_single_reserves_never_oversell_naive_path);
    suite_add_tcase(s, b);

    TCase *q = tcase_create("quotas");
    tcase_set_timeout(q, 120);
    tcase_add_checked_fixture(q, NULL, hs_teardown);
    tcase_add_test(q, sku_quota_refuses_a_new_sku_naming_the_quota_and_creates_nothing);
    tcase_add_test(q, sku_quota_counter_is_backfilled_and_follows_deletes);
    suite_add_tcase(s, q);
    return s;
}

int main(void)
{
    return hs_run(suite(), 1);
}
