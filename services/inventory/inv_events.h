/*
 * inv_events: inventory events (commerce.events.v1, topic
 * commerce.inventory.v1) written to the outbox inside the caller's
 * transaction, and the conversions from stored rows to protobuf messages
 * that the api shares.
 */
#ifndef INV_EVENTS_H
#define INV_EVENTS_H

#include "cm_arena.h"
#include "cm_db.h"
#include "inv_store.h"

#include "commerce/inventory/v1/inventory.pb-c.h"

#define INV_TOPIC "commerce.inventory.v1"

/* events off: every inv_ev_* is a no-op (INVENTORY_EVENTS=off) */
void inv_events_enable(int on);

int inv_ev_stock_changed(cm_db *db, const char *tenant, const inv_change *c);
/* SoldOut (restock = 0) or BackInStock (restock = 1) */
int inv_ev_stock_edge(cm_db *db, const char *tenant, const inv_level *l, int restock);
/* ReservationConfirmed, ReservationReleased or ReservationExpired by r->state */
int inv_ev_reservation(cm_db *db, const char *tenant, const inv_resv *r);

/* conversions; everything is allocated in a. inv_pb_ts returns NULL for 0. */
Google__Protobuf__Timestamp *inv_pb_ts(cm_arena *a, int64_t ms);
Commerce__Inventory__V1__StockLevel *inv_pb_level(cm_arena *a, const inv_level *l);
Commerce__Inventory__V1__StockChange *inv_pb_change(cm_arena *a, const inv_change *c);
Commerce__Inventory__V1__Reservation *inv_pb_resv(cm_arena *a, const inv_resv *r);

#endif
