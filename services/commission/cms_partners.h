/*
 * cms_partners: the partner RPCs of CommissionService (partners.c): the
 * partner feed's configuration, delivery log, redelivery and replay.
 * Listed in cms_methods (api.c).
 */
#ifndef CMS_PARTNERS_H
#define CMS_PARTNERS_H

#include "cm_rpc.h"

int cms_rpc_put_partner(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out);
int cms_rpc_get_partner(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out);
int cms_rpc_list_partners(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out);
int cms_rpc_rotate_webhook_secret(cm_rpc_ctx *ctx, const ProtobufCMessage *in,
                                  ProtobufCMessage *out);
int cms_rpc_list_webhook_deliveries(cm_rpc_ctx *ctx, const ProtobufCMessage *in,
                                    ProtobufCMessage *out);
int cms_rpc_redeliver_webhook_event(cm_rpc_ctx *ctx, const ProtobufCMessage *in,
                                    ProtobufCMessage *out);
int cms_rpc_replay_partner_events(cm_rpc_ctx *ctx, const ProtobufCMessage *in,
                                  ProtobufCMessage *out);

#endif
