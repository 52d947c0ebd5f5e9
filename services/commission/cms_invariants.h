/*
 * cms_invariants: CommissionService.CheckInvariants (invariants.c), the
 * books checked read only: open period rows against their revision's
 * formula, closed periods together against the newest revision's.
 */
#ifndef CMS_INVARIANTS_H
#define CMS_INVARIANTS_H

#include "cm_rpc.h"

int cms_rpc_check_invariants(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out);

#endif
