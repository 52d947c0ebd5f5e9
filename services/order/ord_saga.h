/*
 * ord_saga: the inventory side of CreateOrder — Reserve, the look at an
 * earlier attempt's reservation (GetReservation), and the queue of
 * delayed Releases for reservations no order was stored on. README.md,
 * "The CreateOrder saga", has the reasoning; the comments in saga.c the
 * details.
 */
#ifndef ORD_SAGA_H
#define ORD_SAGA_H

#include "cm_db.h"
#include "cm_group.h"
#include "cm_metrics.h"
#include "cm_rpc.h"
#include "cm_rpc_client.h"
#include "ord_domain.h"

#include <stdint.h>

#include "commerce/inventory/v1/inventory_service.pb-c.h"
#include "commerce/order/v1/order_service.pb-c.h"

typedef struct ord_saga ord_saga;

/* inv: the inventory client (not owned); timeout_ms: a call's deadline
 * (ORDER_INVENTORY_TIMEOUT_MS), which also sets the release delay; batch:
 * most Reserves in one BatchReserve (ORDER_RESERVE_BATCH), 0 one call per
 * Reserve. counts order_reservations_released_total,
 * order_releases_skipped_total and order_batch_reserved_total in m. 0 or
 * CM_ENOMEM. */
int ord_saga_new(ord_saga **out, cm_rpc_client *inv, int timeout_ms, int batch, cm_metrics *m);

/* sends the releases that are due (on db), logs how many were left to
 * their reservations' ttl, and frees s. call after the gRPC drain and the
 * sweeper stopped. NULL is a no-op. */
void ord_saga_free(ord_saga *s, cm_db *db);

/* Reserve of req's lines under o->order_id with a ttl of ttl_ms, within the
 * call's deadline. the reservation (in the call's arena), or NULL with st
 * filled. */
const Commerce__Inventory__V1__Reservation *
ord_saga_reserve(ord_saga *s, cm_rpc_ctx *ctx, const Commerce__Order__V1__CreateOrderRequest *req,
                 const ord_order *o, int64_t ttl_ms, cm_rpc_status *st);

/* after inventory refused a Reserve under o->order_id for "another body":
 * that earlier attempt's reservation, when it is ACTIVE with req's buyer
 * and lines (only its ttl differs), else NULL. never released here. */
const Commerce__Inventory__V1__Reservation *
ord_saga_earlier_attempt(ord_saga *s, cm_rpc_ctx *ctx,
                         const Commerce__Order__V1__CreateOrderRequest *req, const ord_order *o);

/* queues the Release of order_id's reservation, sent by the sweeper once
 * due and only if no order with that id exists by then (with ctx's
 * tenant, authorization and trace). */
void ord_saga_release_later(ord_saga *s, cm_rpc_ctx *ctx, const char *order_id);

/* on the sweeper's thread: sends the due releases (db: to look for their
 * orders), keeps the others. */
void ord_saga_send_releases(ord_saga *s, cm_db *db);

#endif
