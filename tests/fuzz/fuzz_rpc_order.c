/* OrderService requests: decoding for every method, CreateOrder's and
 * RefundOrder's checks */
#include "fuzz_rpc.h"
#include "ord_api.h"

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

static const fuzz_rpc_method methods[] = {{"CreateOrder", create_order},
                                          {"RefundOrder", refund_order}};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_rpc_run(&commerce__order__v1__order_service__descriptor, methods,
                 sizeof methods / sizeof methods[0], data, size);
    return 0;
}
