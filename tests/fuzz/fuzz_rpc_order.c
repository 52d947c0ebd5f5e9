/* OrderService requests: decoding for every method, then the checks of
 * every method that has any beyond decoding (GetOrder's one, order_id a
 * UUID, is cm_id_is_uuid, fuzzed in `text`) */
#include "fuzz_rpc.h"
#include "ord_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int64_t clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_rpc_order: %s\n", what);
    abort();
}

static int create_order(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    ord_order *o = cm_rpc_alloc(ctx, sizeof *o);
    ord_create_in ci;
    return o ? ord_api_create_in(ctx, (const void *)in, &ci, o) : 0;
}

static int refund_order(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    ord_refund_in ri;
    char *body;
    return ord_api_refund_in(ctx, (const void *)in, &ri, &body);
}

/* an accepted time is after 1970 and at most 5 minutes ahead */
static void time_ok(int64_t now, int64_t at)
{
    if (at <= 0 || at > now + ORD_PAID_AT_SKEW_MS)
        broken("an accepted time is out of range");
}

static int mark_paid(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    int64_t now = clock_ms(), at = 0;
    int rc = ord_api_pay_in(ctx, (const void *)in, now, &at);
    if (rc == 0)
        time_ok(now, at);
    return rc;
}

static int cancel_order(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    return ord_api_cancel_in(ctx, (const void *)in);
}

static int ship_order(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    int64_t now = clock_ms(), at = 0;
    int rc = ord_api_ship_in(ctx, (const void *)in, now, &at);
    if (rc == 0)
        time_ok(now, at);
    return rc;
}

static int complete_order(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    int64_t now = clock_ms(), at = 0;
    int rc = ord_api_complete_in(ctx, (const void *)in, now, &at);
    if (rc == 0)
        time_ok(now, at);
    return rc;
}

static int put_tenant_settings(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    ord_settings_in si;
    return ord_api_settings_in(ctx, (const void *)in, &si);
}

static int query_margin(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    int64_t from, to;
    int rc = ord_api_margin_in(ctx, (const void *)in, &from, &to);
    if (rc == 0 && (from < 0 || to < 0 || (from && to && to <= from)))
        broken("an accepted margin range is empty or negative");
    return rc;
}

static int list_orders(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Order__V1__ListOrdersRequest *req = (const void *)in;
    ord_list_in *li = cm_rpc_alloc(ctx, sizeof *li);
    if (!li)
        return 0;
    int rc = ord_api_list_in(ctx, req, li);
    if (rc || li->none)
        return rc;
    const ord_list_q *q = &li->q;
    if (q->limit <= 0 || q->nstates != req->n_states || q->nstates > 7)
        broken("an accepted listing has no page size or lost its states");
    for (size_t i = 0; i < q->nstates; i++)
        if (q->states[i] < ORD_PENDING || q->states[i] > ORD_REFUNDED ||
            (i && q->states[i] < q->states[i - 1]))
            broken("an accepted listing's states are unknown or unsorted");
    if ((q->from_ms && q->to_ms && q->to_ms <= q->from_ms) ||
        (q->paid_from_ms && q->paid_to_ms && q->paid_to_ms <= q->paid_from_ms))
        broken("an accepted listing's time range is empty");
    if ((q->after_id != NULL) != (req->page_token[0] != 0))
        broken("a page token was accepted without a position, or a position made up");
    return rc;
}

static const fuzz_rpc_method methods[] = {
    {"CreateOrder", create_order},
    {"RefundOrder", refund_order},
    {"MarkPaid", mark_paid},
    {"CancelOrder", cancel_order},
    {"ShipOrder", ship_order},
    {"CompleteOrder", complete_order},
    {"PutTenantSettings", put_tenant_settings},
    {"QueryMargin", query_margin},
    {"ListOrders", list_orders},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_rpc_run(&commerce__order__v1__order_service__descriptor, methods,
                 sizeof methods / sizeof methods[0], data, size);
    return 0;
}
