/* inventory events through the outbox: see inv_events.h */
#include "inv_events.h"

#include "cm_err.h"
#include "cm_id.h"
#include "cm_outbox.h"
#include "cm_pb.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "commerce/events/v1/inventory_events.pb-c.h"

Commerce__Inventory__V1__StockLevel *inv_pb_level(cm_arena *a, const inv_level *l)
{
    Commerce__Inventory__V1__StockLevel *s = cm_arena_calloc(a, 1, sizeof *s);
    if (!s)
        return NULL;
    commerce__inventory__v1__stock_level__init(s);
    s->sku = cm_arena_strdup(a, l->sku);
    s->available = l->available;
    s->reserved = l->reserved;
    s->sold = l->sold;
    s->on_hand = l->on_hand;
    s->version = l->version;
    s->updated_at = cm_pb_timestamp(a, l->updated_ms);
    return s;
}

Commerce__Inventory__V1__StockChange *inv_pb_change(cm_arena *a, const inv_change *c)
{
    Commerce__Inventory__V1__StockChange *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__inventory__v1__stock_change__init(m);
    m->change_id = cm_arena_strdup(a, c->change_id);
    m->sku = cm_arena_strdup(a, c->level.sku);
    m->kind = (Commerce__Inventory__V1__StockChangeKind)c->kind;
    m->available_delta = c->da;
    m->reserved_delta = c->dr;
    m->sold_delta = c->ds;
    m->level = inv_pb_level(a, &c->level);
    m->order_id = cm_arena_strdup(a, c->order_id);
    m->request_id = cm_arena_strdup(a, c->request_id);
    m->reason = cm_arena_strdup(a, c->reason);
    m->actor = cm_arena_strdup(a, c->actor);
    m->principal = cm_arena_strdup(a, c->principal);
    m->occurred_at = cm_pb_timestamp(a, c->occurred_ms);
    return m;
}

Commerce__Inventory__V1__CostChange *inv_pb_cost_change(cm_arena *a, const inv_cost_change *c)
{
    Commerce__Inventory__V1__CostChange *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__inventory__v1__cost_change__init(m);
    m->change_id = cm_arena_strdup(a, c->change_id);
    m->sku = cm_arena_strdup(a, c->sku);
    m->unit_cost = cm_pb_money(a, c->unit_cost, c->currency);
    if (c->previous_currency[0])
        m->previous_unit_cost = cm_pb_money(a, c->previous_cost, c->previous_currency);
    m->cost_version = c->cost_version;
    m->request_id = cm_arena_strdup(a, c->request_id);
    m->reason = cm_arena_strdup(a, c->reason);
    m->actor = cm_arena_strdup(a, c->actor);
    m->principal = cm_arena_strdup(a, c->principal);
    m->occurred_at = cm_pb_timestamp(a, c->occurred_ms);
    return m;
}

Commerce__Inventory__V1__CostPrice *inv_pb_cost(cm_arena *a, const char *sku, int64_t unit_cost,
                                                const char *currency, int64_t version)
{
    Commerce__Inventory__V1__CostPrice *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__inventory__v1__cost_price__init(m);
    m->sku = cm_arena_strdup(a, sku);
    if (currency[0])
        m->unit_cost = cm_pb_money(a, unit_cost, currency);
    m->cost_version = version;
    return m;
}

Commerce__Inventory__V1__Reservation *inv_pb_resv(cm_arena *a, const inv_resv *r)
{
    Commerce__Inventory__V1__Reservation *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__inventory__v1__reservation__init(m);
    m->order_id = cm_arena_strdup(a, r->order_id);
    m->state = (Commerce__Inventory__V1__ReservationState)r->state;
    m->buyer_id = cm_arena_strdup(a, r->buyer_id);
    m->flash_sale = r->flash;
    m->created_at = cm_pb_timestamp(a, r->created_ms);
    m->expires_at = cm_pb_timestamp(a, r->expires_ms);
    m->resolved_at = cm_pb_timestamp(a, r->resolved_ms);
    if (r->nlines) {
        m->lines = cm_arena_calloc(a, r->nlines, sizeof *m->lines);
        if (!m->lines)
            return NULL;
        for (size_t i = 0; i < r->nlines; i++) {
            Commerce__Inventory__V1__ReservationLine *l = cm_arena_calloc(a, 1, sizeof *l);
            if (!l)
                return NULL;
            commerce__inventory__v1__reservation_line__init(l);
            l->sku = cm_arena_strdup(a, r->lines[i].sku);
            l->quantity = r->lines[i].qty;
            l->flash_sale_id = cm_arena_strdup(a, r->lines[i].flash_sale_id);
            if (r->lines[i].cost_currency[0])
                l->unit_cost = cm_pb_money(a, r->lines[i].unit_cost, r->lines[i].cost_currency);
            m->lines[i] = l;
        }
        m->n_lines = r->nlines;
    }
    return m;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* packs msg into the arena */
static int pack(const ProtobufCMessage *msg, cm_arena *a, const uint8_t **out, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(msg);
    uint8_t *p = cm_arena_alloc(a, *len ? *len : 1);
    if (!p)
        return CM_ENOMEM;
    protobuf_c_message_pack(msg, p);
    *out = p;
    return 0;
}

/* adds a packed row to the outbox of the caller's transaction, or to the
 * caller's staged rows */
static int add_row(cm_db *db, const inv_ev_ctx *ec, const inv_ev_row *r)
{
    cm_outbox_event ev = {
        .event_id = r->event_id,
        .tenant_id = r->tenant,
        .topic = INV_TOPIC,
        .key = r->key,
        .type = r->type,
        .source = INV_SOURCE,
        .payload = r->payload,
        .len = r->len,
        .occurred_at_ms = r->occurred_ms,
        .traceparent = r->traceparent,
    };
    if (ec->stage) {
        cm_outbox_rows_add(ec->stage, &ev); /* out of memory: at its close */
        return 0;
    }
    return cm_outbox_add(db, &ev);
}

/* packs msg and adds it to the outbox of the caller's transaction */
static int add(cm_db *db, const inv_ev_ctx *ec, const char *id, const char *tenant, const char *key,
               const char *type, const ProtobufCMessage *msg, cm_arena *a)
{
    inv_ev_row r = {.tenant = tenant, .key = key, .type = type, .traceparent = ec->traceparent};
    snprintf(r.event_id, sizeof r.event_id, "%s", id);
    int rc = pack(msg, a, &r.payload, &r.len);
    return rc ? rc : add_row(db, ec, &r);
}

static int64_t ts_to_ms(const Google__Protobuf__Timestamp *t)
{
    return t ? t->seconds * 1000 + t->nanos / 1000000 : 0;
}

int inv_ev_pack_stock_changed(cm_arena *a, const char *tenant, const inv_change *c, inv_ev_row *out)
{
    int rc = cm_id_uuid7(out->event_id);
    if (rc)
        return rc;
    Commerce__Events__V1__StockChanged m = COMMERCE__EVENTS__V1__STOCK_CHANGED__INIT;
    m.event_id = out->event_id;
    m.tenant_id = (char *)tenant;
    m.occurred_at = cm_pb_timestamp(a, c->occurred_ms ? c->occurred_ms : now_ms());
    m.sku = (char *)c->level.sku;
    m.change = inv_pb_change(a, c);
    if (!m.occurred_at || !m.change)
        return CM_ENOMEM;
    out->tenant = tenant;
    out->key = c->level.sku;
    out->type = "commerce.events.v1.StockChanged";
    out->occurred_ms = ts_to_ms(m.occurred_at);
    return pack(&m.base, a, &out->payload, &out->len);
}

int inv_ev_pack_stock_edge(cm_arena *a, const char *tenant, const inv_level *l, int restock,
                           const char *flash_sale_id, inv_ev_row *out)
{
    int rc = cm_id_uuid7(out->event_id);
    if (rc)
        return rc;
    int64_t at = l->updated_ms > 0 ? l->updated_ms : now_ms();
    Google__Protobuf__Timestamp *ts = cm_pb_timestamp(a, at);
    Commerce__Inventory__V1__StockLevel *lv = inv_pb_level(a, l);
    if (!ts || !lv)
        return CM_ENOMEM;
    out->tenant = tenant;
    out->key = l->sku;
    out->occurred_ms = at;
    char *fs = (char *)(flash_sale_id ? flash_sale_id : "");
    /* SoldOut and BackInStock have the same fields */
    if (restock) {
        Commerce__Events__V1__BackInStock m = COMMERCE__EVENTS__V1__BACK_IN_STOCK__INIT;
        m.event_id = out->event_id;
        m.tenant_id = (char *)tenant;
        m.occurred_at = ts;
        m.sku = (char *)l->sku;
        m.stock = lv;
        m.flash_sale_id = fs;
        out->type = "commerce.events.v1.BackInStock";
        return pack(&m.base, a, &out->payload, &out->len);
    }
    Commerce__Events__V1__SoldOut m = COMMERCE__EVENTS__V1__SOLD_OUT__INIT;
    m.event_id = out->event_id;
    m.tenant_id = (char *)tenant;
    m.occurred_at = ts;
    m.sku = (char *)l->sku;
    m.stock = lv;
    m.flash_sale_id = fs;
    out->type = "commerce.events.v1.SoldOut";
    return pack(&m.base, a, &out->payload, &out->len);
}

int inv_ev_stock_changed(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const inv_change *c)
{
    if (!ec->on)
        return 0;
    cm_arena *a = cm_arena_new(4096);
    if (!a)
        return CM_ENOMEM;
    inv_ev_row r;
    int rc = inv_ev_pack_stock_changed(a, tenant, c, &r);
    r.traceparent = ec->traceparent;
    if (rc == 0)
        rc = add_row(db, ec, &r);
    cm_arena_free(a);
    return rc;
}

int inv_ev_stock_edge(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const inv_level *l,
                      int restock, const char *flash_sale_id)
{
    if (!ec->on)
        return 0;
    cm_arena *a = cm_arena_new(4096);
    if (!a)
        return CM_ENOMEM;
    inv_ev_row r;
    int rc = inv_ev_pack_stock_edge(a, tenant, l, restock, flash_sale_id, &r);
    r.traceparent = ec->traceparent;
    if (rc == 0)
        rc = add_row(db, ec, &r);
    cm_arena_free(a);
    return rc;
}

#define EVENT_BEGIN                                                                                \
    if (!ec->on)                                                                                   \
        return 0;                                                                                  \
    cm_arena *a = cm_arena_new(4096);                                                              \
    if (!a)                                                                                        \
        return CM_ENOMEM;                                                                          \
    char id[CM_ID_SIZE];                                                                           \
    int rc = cm_id_uuid7(id);                                                                      \
    if (rc) {                                                                                      \
        cm_arena_free(a);                                                                          \
        return rc;                                                                                 \
    }                                                                                              \
    int64_t at = now_ms()

int inv_ev_reservation(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const inv_resv *r)
{
    EVENT_BEGIN;
    /* the three reservation events share their fields */
    Commerce__Events__V1__ReservationConfirmed c =
        COMMERCE__EVENTS__V1__RESERVATION_CONFIRMED__INIT;
    Commerce__Events__V1__ReservationReleased rel =
        COMMERCE__EVENTS__V1__RESERVATION_RELEASED__INIT;
    Commerce__Events__V1__ReservationExpired ex = COMMERCE__EVENTS__V1__RESERVATION_EXPIRED__INIT;
    Google__Protobuf__Timestamp *ts = cm_pb_timestamp(a, r->resolved_ms ? r->resolved_ms : at);
    Commerce__Inventory__V1__Reservation *m = inv_pb_resv(a, r);
    if (!ts || !m) {
        cm_arena_free(a);
        return CM_ENOMEM;
    }
    switch (r->state) {
    case INV_CONFIRMED:
        c.event_id = id;
        c.tenant_id = (char *)tenant;
        c.occurred_at = ts;
        c.order_id = (char *)r->order_id;
        c.reservation = m;
        rc = add(db, ec, id, tenant, r->order_id, "commerce.events.v1.ReservationConfirmed",
                 &c.base, a);
        break;
    case INV_RELEASED:
        rel.event_id = id;
        rel.tenant_id = (char *)tenant;
        rel.occurred_at = ts;
        rel.order_id = (char *)r->order_id;
        rel.reservation = m;
        rc = add(db, ec, id, tenant, r->order_id, "commerce.events.v1.ReservationReleased",
                 &rel.base, a);
        break;
    case INV_EXPIRED:
        ex.event_id = id;
        ex.tenant_id = (char *)tenant;
        ex.occurred_at = ts;
        ex.order_id = (char *)r->order_id;
        ex.reservation = m;
        rc = add(db, ec, id, tenant, r->order_id, "commerce.events.v1.ReservationExpired", &ex.base,
                 a);
        break;
    default:
        rc = 0;
    }
    cm_arena_free(a);
    return rc;
}
