/* InventoryService requests: decoding for every method, then the checks of
 * every method that has any beyond decoding. GetStock, GetCost,
 * GetReservation and GetFlashSale check one key each (inv_valid_key, as
 * Confirm's and Release's order_id here) */
#include "fuzz_rpc.h"
#include "inv_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_rpc_inventory: %s\n", what);
    abort();
}

static int reserve(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    inv_line *lines;
    int64_t ttl;
    return inv_api_reserve_in(ctx, (const void *)in, &lines, &ttl);
}

static int set_stock(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Inventory__V1__SetStockRequest *req = (const void *)in;
    return inv_api_admin_in(ctx, INV_KIND_SET, req->request_id, req->sku, req->available,
                            req->reason, req->actor, req->expected_version);
}

static int adjust_stock(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Inventory__V1__AdjustStockRequest *req = (const void *)in;
    return inv_api_admin_in(ctx, INV_KIND_ADJUST, req->request_id, req->sku, req->delta,
                            req->reason, req->actor, req->expected_version);
}

static int set_cost(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Inventory__V1__SetCostRequest *req = (const void *)in;
    int rc = inv_api_cost_in(ctx, req);
    /* the handler reads the money unchecked once the checks pass */
    if (rc == 0 && (!req->unit_cost || req->unit_cost->amount_minor < 0))
        broken("SetCost accepted without a cost, or a negative one");
    return rc;
}

static int confirm(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    return inv_api_resolve_in(ctx, ((const Commerce__Inventory__V1__ConfirmRequest *)in)->order_id);
}

static int release(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    return inv_api_resolve_in(ctx, ((const Commerce__Inventory__V1__ReleaseRequest *)in)->order_id);
}

static int batch_get_stock(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Inventory__V1__BatchGetStockRequest *req = (const void *)in;
    int rc = inv_api_batch_get_in(ctx, req);
    if (rc == 0 && (req->n_skus == 0 || req->n_skus > INV_BATCH_GET_MAX))
        broken("BatchGetStock accepted no skus or too many");
    return rc;
}

static int check_invariants(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    return inv_api_check_in(ctx, (const void *)in);
}

static int configure_flash_sale(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Inventory__V1__ConfigureFlashSaleRequest *req = (const void *)in;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t now_ms = (int64_t)now.tv_sec * 1000, st = 0, en = 0;
    int rc = inv_api_sale_in(ctx, req, now_ms, &st, &en);
    if (rc == 0 &&
        (st <= 0 || en <= st || en <= now_ms || req->sale_stock < 1 || req->per_buyer_limit < 1))
        broken("ConfigureFlashSale accepted an empty or past window, or no stock");
    return rc;
}

static int list_stock_changes(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Inventory__V1__ListStockChangesRequest *req = (const void *)in;
    inv_changes_in *li = cm_rpc_alloc(ctx, sizeof *li);
    if (!li)
        return 0;
    int rc = inv_api_changes_in(ctx, req, li);
    if (rc)
        return rc;
    const inv_change_query *q = &li->q;
    if (li->size <= 0 || q->nkinds != req->n_kinds || q->nkinds > 16)
        broken("ListStockChanges accepted without a page size, or lost its kinds");
    for (size_t i = 0; i < q->nkinds; i++)
        if (q->kinds[i] < INV_KIND_SET || q->kinds[i] > INV_KIND_EXPIRE)
            broken("ListStockChanges accepted an unknown kind");
    if (q->has_from && q->has_to && q->to_us <= q->from_us)
        broken("ListStockChanges accepted an empty time range");
    if ((q->after_id != NULL) != (req->page_token[0] != 0))
        broken("a page token was accepted without a position, or a position made up");
    return rc;
}

static int list_flash_sales(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Inventory__V1__ListFlashSalesRequest *req = (const void *)in;
    inv_sales_in *li = cm_rpc_alloc(ctx, sizeof *li);
    if (!li)
        return 0;
    int rc = inv_api_sales_in(ctx, req, li);
    if (rc)
        return rc;
    if (li->size <= 0 || li->nstates != req->n_states || li->nstates > 16)
        broken("ListFlashSales accepted without a page size, or lost its states");
    if ((li->after_id != NULL) != (req->page_token[0] != 0))
        broken("a page token was accepted without a position, or a position made up");
    return rc;
}

static const fuzz_rpc_method methods[] = {
    {"Reserve", reserve},
    {"SetStock", set_stock},
    {"AdjustStock", adjust_stock},
    {"SetCost", set_cost},
    {"Confirm", confirm},
    {"Release", release},
    {"ConfigureFlashSale", configure_flash_sale},
    {"BatchGetStock", batch_get_stock},
    {"CheckInvariants", check_invariants},
    {"ListStockChanges", list_stock_changes},
    {"ListFlashSales", list_flash_sales},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_rpc_run(&commerce__inventory__v1__inventory_service__descriptor, methods,
                 sizeof methods / sizeof methods[0], data, size);
    return 0;
}
