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
#include "cm_outbox.h"
#include "inv_store.h"

#include "commerce/inventory/v1/inventory.pb-c.h"

#include "cm_id.h"

#include <stddef.h>
#include <stdint.h>

#define INV_TOPIC "commerce.inventory.v1"
#define INV_SOURCE "/commerce/inventory"

/* what an event is written with: on (INVENTORY_EVENTS; off: every inv_ev_*
 * is a no-op) and the traceparent of the call being handled or of the
 * event being applied (NULL: none). passed down by each caller: no
 * process-wide setting. */
typedef struct inv_ev_ctx {
    int on;
    const char *traceparent;
    /* non-NULL: the events are added to these rows (which copy them)
     * instead of inserted one by one; the caller writes them all with
     * inv_store_write_events before its transaction ends (the order-event
     * consumer's batch: one insert per batch, not three per event) */
    cm_outbox_rows *stage;
} inv_ev_ctx;

/* every inv_ev_* below adds its event to the outbox of the caller's open
 * transaction (cm_outbox_add), keyed as inventory_events.proto says: the
 * sku for stock events, the order_id for reservation events. returns 0 or
 * a CM_E*. */
int inv_ev_stock_changed(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const inv_change *c);
/* SoldOut (restock = 0) or BackInStock (restock = 1) of regular stock
 * (flash_sale_id NULL) or of a flash sale's stock; occurred_at is the
 * level's updated_ms (0: now) */
int inv_ev_stock_edge(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const inv_level *l,
                      int restock, const char *flash_sale_id);
/* ReservationConfirmed, ReservationReleased or ReservationExpired by r->state */
int inv_ev_reservation(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const inv_resv *r);

/* an event packed but not written: the batched reserve path writes a
 * whole batch of these with one multi-row insert into the outbox table
 * (inv_store_write_events), with the columns cm_outbox_add would write */
typedef struct inv_ev_row {
    char event_id[CM_ID_SIZE]; /* a fresh UUIDv7, also the payload's event_id */
    const char *tenant;        /* borrowed from the caller */
    const char *key;           /* the sku, borrowed from the change or level */
    const char *type;          /* ce_type, a static string */
    int64_t occurred_ms;       /* ce_time */
    const char *traceparent;   /* NULL: none; set by the writer, not the packer */
    const uint8_t *payload;    /* the packed event, in the arena */
    size_t len;
} inv_ev_row;

/* pack the events inv_ev_stock_changed and inv_ev_stock_edge write, into
 * out (payload and messages allocated in a). 0 or CM_ENOMEM / CM_EIO. */
int inv_ev_pack_stock_changed(cm_arena *a, const char *tenant, const inv_change *c,
                              inv_ev_row *out);
int inv_ev_pack_stock_edge(cm_arena *a, const char *tenant, const inv_level *l, int restock,
                           const char *flash_sale_id, inv_ev_row *out);

/* conversions; everything is allocated in a (timestamps: cm_pb.h). */
Commerce__Inventory__V1__StockLevel *inv_pb_level(cm_arena *a, const inv_level *l);
Commerce__Inventory__V1__StockChange *inv_pb_change(cm_arena *a, const inv_change *c);
Commerce__Inventory__V1__CostChange *inv_pb_cost_change(cm_arena *a, const inv_cost_change *c);
/* a CostPrice; unit_cost unset when currency is "" (no cost) */
Commerce__Inventory__V1__CostPrice *inv_pb_cost(cm_arena *a, const char *sku, int64_t unit_cost,
                                                const char *currency, int64_t version);
Commerce__Inventory__V1__Reservation *inv_pb_resv(cm_arena *a, const inv_resv *r);

#endif
