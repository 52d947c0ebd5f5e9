/* CommissionService requests: decoding for every method,
 * PutTierSchedule's schedule checks */
#include "cms_api.h"
#include "fuzz_rpc.h"

static int put_tier_schedule(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Commission__V1__PutTierScheduleRequest *req = (const void *)in;
    cms_schedule_row *s = cm_rpc_alloc(ctx, sizeof *s);
    return s ? cms_api_schedule_in(ctx, req->schedule, s) : 0;
}

static const fuzz_rpc_method methods[] = {{"PutTierSchedule", put_tier_schedule}};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_rpc_run(&commerce__commission__v1__commission_service__descriptor, methods,
                 sizeof methods / sizeof methods[0], data, size);
    return 0;
}
