/* InventoryService requests: decoding for every method, Reserve's checks */
#include "fuzz_rpc.h"
#include "inv_api.h"

static int reserve(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    inv_line *lines;
    int64_t ttl;
    return inv_api_reserve_in(ctx, (const void *)in, &lines, &ttl);
}

static const fuzz_rpc_method methods[] = {{"Reserve", reserve}};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_rpc_run(&commerce__inventory__v1__inventory_service__descriptor, methods,
                 sizeof methods / sizeof methods[0], data, size);
    return 0;
}
