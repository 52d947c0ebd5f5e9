/* SettlementService requests: decoding for every method, PutSplitRule's
 * rule checks */
#include "fuzz_rpc.h"
#include "stl_api.h"

static int put_split_rule(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__PutSplitRuleRequest *req = (const void *)in;
    stl_rule *rule = cm_rpc_alloc(ctx, sizeof *rule);
    char(*desc)[STL_DESC_MAX + 1] = cm_rpc_alloc(ctx, STL_RECEIVERS_MAX * (STL_DESC_MAX + 1));
    return rule && desc ? stl_api_rule_in(ctx, req->rule, rule, desc) : 0;
}

static const fuzz_rpc_method methods[] = {{"PutSplitRule", put_split_rule}};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_rpc_run(&commerce__settlement__v1__settlement_service__descriptor, methods,
                 sizeof methods / sizeof methods[0], data, size);
    return 0;
}
