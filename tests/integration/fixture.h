/*
 * fixture: the order+inventory pair on fresh schemas, and how a test talks
 * to it. fx_start spawns commerce-inventory (INVENTORY_BIN) and
 * commerce-order (ORDER_BIN) against the private postgres, each on a
 * schema of its own, with an order topic of the test's own that inventory
 * consumes, so the whole saga runs: reserve on create, confirm on
 * OrderPaid, release on OrderCancelled. the topic is read back with a plain
 * consumer (fx.log) and events are counted per order by distinct event id:
 * delivery is at least once, a redelivered id is reported, not failed.
 *
 * the calls below speak for the tenant FX_TENANT; what they assert is the
 * public contract (proto/commerce/order/v1, proto/commerce/inventory/v1,
 * proto/commerce/events/v1/order_events.proto). built on harness.h; like
 * it, what asserts belongs to the test's own thread.
 */
#ifndef FIXTURE_H
#define FIXTURE_H

#include "harness.h"

#include "commerce/events/v1/order_events.pb-c.h"
#include "commerce/inventory/v1/inventory_service.pb-c.h"
#include "commerce/order/v1/order_service.pb-c.h"

#define FX_OSVC "/commerce.order.v1.OrderService/"
#define FX_ISVC "/commerce.inventory.v1.InventoryService/"
#define FX_TENANT "tenant-it"

#define FX_ST(s) COMMERCE__ORDER__V1__ORDER_STATE__ORDER_STATE_##s
#define FX_CANCEL(r) COMMERCE__ORDER__V1__CANCEL_REASON__CANCEL_REASON_##r
#define FX_SCOPE(s) COMMERCE__ORDER__V1__REFUND_SCOPE__REFUND_SCOPE_##s
#define FX_KIND(k) COMMERCE__INVENTORY__V1__STOCK_CHANGE_KIND__STOCK_CHANGE_KIND_##k

#define FX_EV_CREATED "commerce.events.v1.OrderCreated"
#define FX_EV_PAID "commerce.events.v1.OrderPaid"
#define FX_EV_CANCELLED "commerce.events.v1.OrderCancelled"
#define FX_EV_SHIPPED "commerce.events.v1.OrderShipped"
#define FX_EV_COMPLETED "commerce.events.v1.OrderCompleted"
#define FX_EV_REFUNDED "commerce.events.v1.OrderRefunded"

typedef Commerce__Order__V1__Order fx_order;
typedef Commerce__Order__V1__Refund fx_refund;

/* x-tenant-id FX_TENANT, and another tenant's */
extern const cm_rpc_md fx_md[1];
extern const cm_rpc_md fx_md_other[1];

/* ---- the pair ---- */

typedef struct fx {
    char ord_schema[64], inv_schema[64], topic[128], group[128];
    const char *dsn;              /* NULL: the private postgres */
    const char *const *order_env; /* order's defaults (fx_opts.order_env) */
    const char *extra[16];        /* order's env from fx_start, for fx_respawn_order */
    const char *tls_dir;          /* inventory serves mTLS with make_certs.sh's files */
    hs_proc inv, ord;
    hs_proxy *proxy; /* set: order calls inventory through it */
    cm_rpc_client *oc, *ic;
    hs_topic *log; /* the order topic from its beginning; NULL without a topic */
} fx;

typedef struct fx_opts {
    const char *dsn;     /* NULL: the private postgres (PG_DSN) */
    const char *tag;     /* in the schema names; NULL: "it" */
    int no_topic;        /* no order topic of the test's own: both services'
                            defaults apply, and there is no fx.log */
    int proxy;           /* order calls inventory through an hs_proxy */
    const char *tls_dir; /* inventory serves mTLS with make_certs.sh's files
                            from there; the test's inventory client presents
                            the client certificate (order's env must name
                            its own: INVENTORY_TLS_*) */
    /* each replaces the fixture's defaults when set: inventory
     * INVENTORY_SWEEP_MS=100 WORKERS=8; order WORKERS=8 ORDER_SWEEP_MS=100
     * ORDER_RESERVATION_MARGIN_S=2 */
    const char *const *inventory_env;
    const char *const *order_env;
    const char *const *extra; /* order's env after order_env (at most 15) */
} fx_opts;

/* starts both services on fresh schemas (and, unless o->no_topic, a fresh
 * two-partition order topic, read from its beginning into f->log), each
 * serving, with a client for each (f->oc, f->ic). f must outlive the test's
 * frame (make it static): fx_teardown reads it after a failed assertion. */
void fx_start_opts(fx *f, const fx_opts *o);

/* fx_start_opts with extra as order's env and the fixture's defaults */
void fx_start(fx *f, const char *const *extra, int proxy);

/* stops both (asserting each exits 0), frees the clients, the reader and
 * the proxy, deletes the topic and drops both schemas. */
void fx_stop(fx *f);

/* a checked-fixture teardown: after a test that failed before fx_stop,
 * kills what it left running (hs_teardown) and says which schemas and
 * topic were kept to look at. nothing to do after one that passed. */
void fx_teardown(void);

/* another order process p on f's schema and topic, calling inventory as f
 * does (through f->proxy when set), with the defaults and extra (may be
 * NULL); asserts it serves. stop it with hs_stop. */
void fx_spawn_order(fx *f, hs_proc *p, const char *const *extra);

/* f->ord again, with fx_start's env, after the test stopped or killed it;
 * f->oc is freed and replaced by a client of the new process */
void fx_respawn_order(fx *f);

/* every outbox row of the order service published, then the topic read to
 * its end: what f->log holds is everything the service committed. asserts
 * that, and that every record keeps the envelope contract. */
void fx_settle(fx *f);

/* ---- order events, as read into f->log ---- */

/* a decoded event: the fields every order event shares */
typedef struct fx_event {
    ProtobufCMessage *m;
    const char *event_id, *tenant_id, *order_id;
    const fx_order *order;
    int prev; /* previous_state; -1 for OrderCreated */
    const fx_refund *refund;
} fx_event;

/* decodes r by its ce_type into e (free it with fx_ev_free); 0, or -1 for
 * an unknown type or a payload that does not decode */
int fx_ev_decode(const hs_record *r, fx_event *e);
void fx_ev_free(fx_event *e);

/* distinct event ids of one type for one order; *dups (may be NULL) gets
 * the records that repeat an id already seen (redeliveries) */
int fx_ev_count(const hs_topic *l, const char *order_id, const char *type, int *dups);

/* the first record of the k-th distinct event of a type for an order, or
 * NULL */
const hs_record *fx_ev_nth(const hs_topic *l, const char *order_id, const char *type, int k);

/* ---- order calls ---- */

/* the seconds and nanos of t in milliseconds; -1 for NULL */
long long fx_ts_ms(const Google__Protobuf__Timestamp *t);

/* "field is path or inside it": lines[0].unit_price matches
 * lines[0].unit_price.amount_minor, lines matches lines[3].sku */
int fx_field_is(const cm_rpc_status *st, const char *path);

#define fx_ck_field(st, path)                                                                      \
    ck_assert_msg(fx_field_is(&(st), path), "field: expected %s, got \"%s\" (code %d, %s)", path,  \
                  (st).field, (st).code, (st).message)

/* a line of a create (sku, units, unit price) or of a refund (sku, units) */
typedef struct fx_line {
    const char *sku;
    int64_t qty;
    int64_t price;
    const char *cur; /* NULL: the order's currency */
    int no_price;    /* leave unit_price unset */
} fx_line;

#define FX_L(s, q, p)                                                                              \
    {                                                                                              \
        .sku = (s), .qty = (q), .price = (p)                                                       \
    }
#define FX_RL(s, q)                                                                                \
    {                                                                                              \
        .sku = (s), .qty = (q)                                                                     \
    }

typedef struct fx_order_spec {
    const char *rid, *buyer, *merchant, *channel, *currency, *external_ref;
    const fx_line *lines;
    size_t n;          /* at most 128 */
    int64_t timeout_s; /* 0: unset, the service default */
} fx_order_spec;

/* request rid of buyer-1 at merchant-1 in CNY */
fx_order_spec fx_spec(const char *rid, const fx_line *lines, size_t n);

void fx_order_free(fx_order *o);

/* CreateOrder with metadata md; the order into *out (may be NULL) */
int fx_create_md(cm_rpc_client *c, const fx_order_spec *s, fx_order **out, cm_rpc_status *st,
                 const cm_rpc_md *md, size_t nmd);
int fx_create(cm_rpc_client *c, const fx_order_spec *s, fx_order **out, cm_rpc_status *st);
/* a create that must succeed; returns the order */
fx_order *fx_must_create(cm_rpc_client *c, const fx_order_spec *s);
/* a create that must succeed; keeps only its id */
void fx_create_id(cm_rpc_client *c, const fx_order_spec *s, char id[64]);
/* n unpaid orders of line l (request ids "<prefix>-<i>", 10 min to pay) */
void fx_create_pending(cm_rpc_client *c, const char *prefix, const fx_line *l, int n,
                       char (*ids)[64]);

/* GetOrder with md (may be NULL: no metadata) */
int fx_get_order_md(cm_rpc_client *c, const char *id, fx_order **out, cm_rpc_status *st,
                    const cm_rpc_md *md);
fx_order *fx_must_get(cm_rpc_client *c, const char *id);
int fx_state_of(cm_rpc_client *c, const char *id);

typedef struct fx_pay_spec {
    const char *payment_id, *order_id, *currency, *provider, *reference;
    int64_t amount;
    long long paid_at_ms; /* 0: unset */
} fx_pay_spec;

/* MarkPaid (currency NULL: CNY, provider NULL: alipay) */
int fx_mark_paid(cm_rpc_client *c, const fx_pay_spec *p, fx_order **out, cm_rpc_status *st);
/* pays o in full with payment id pid; must succeed */
void fx_must_pay(cm_rpc_client *c, const fx_order *o, const char *pid);

int fx_cancel(cm_rpc_client *c, const char *rid, const char *id, int reason, const char *note,
              fx_order **out, cm_rpc_status *st);
int fx_ship(cm_rpc_client *c, const char *rid, const char *id, const char *carrier,
            const char *tracking, fx_order **out, cm_rpc_status *st);
int fx_complete(cm_rpc_client *c, const char *rid, const char *id, fx_order **out,
                cm_rpc_status *st);

typedef struct fx_refund_spec {
    const char *refund_id, *order_id;
    int scope;
    const fx_line *lines; /* sku and qty used; at most 8 */
    size_t n;
    int has_amount;
    int64_t amount;
    const char *currency; /* NULL: CNY */
} fx_refund_spec;

/* RefundOrder; the whole response into *out (may be NULL; free it) */
int fx_refund_order(cm_rpc_client *c, const fx_refund_spec *s,
                    Commerce__Order__V1__RefundOrderResponse **out, cm_rpc_status *st);

int fx_list_orders(cm_rpc_client *c, Commerce__Order__V1__ListOrdersRequest *q,
                   Commerce__Order__V1__ListOrdersResponse **out, cm_rpc_status *st,
                   const cm_rpc_md *md);
/* walks every page of q (page_size as set); the ids, newest first, into
 * ids (cap entries of 64 bytes); returns how many. asserts no duplicate and
 * created_at never increasing. between (may be NULL) runs after page 1. */
size_t fx_list_all(cm_rpc_client *c, Commerce__Order__V1__ListOrdersRequest *q, char (*ids)[64],
                   size_t cap, void (*between)(void *), void *arg);
int fx_has_id(char (*ids)[64], size_t n, const char *id);
/* every order of the tenant; ids as fx_list_all */
size_t fx_all_orders(cm_rpc_client *c, char (*ids)[64], size_t cap);

void fx_assert_money(const Commerce__Common__V1__Money *m, int64_t minor, const char *cur);
/* unset money counts as 0 where the proto says "0 when none" */
int64_t fx_minor_or_0(const Commerce__Common__V1__Money *m);
/* o's line of sku; asserts there is one */
const Commerce__Order__V1__OrderLine *fx_line_of(const fx_order *o, const char *sku);
/* r's line of sku, or NULL */
const Commerce__Order__V1__RefundLine *fx_refund_line_of(const fx_refund *r, const char *sku);

/* ---- inventory calls ---- */

/* SetStock (reason "goods received", actor ops:test); must succeed */
void fx_set_stock(cm_rpc_client *c, const char *rid, const char *sku, int64_t avail);
/* the same for the tenant md names */
void fx_set_stock_md(cm_rpc_client *c, const char *rid, const char *sku, int64_t avail,
                     const cm_rpc_md *md);

/* ConfigureFlashSale q as it is; the sale into *out (may be NULL; free it
 * with protobuf_c_message_free_unpacked). the status code. */
int fx_configure_sale(cm_rpc_client *c, const Commerce__Inventory__V1__ConfigureFlashSaleRequest *q,
                      Commerce__Inventory__V1__FlashSale **out, cm_rpc_status *st);
/* ConfigureFlashSale of sku from start_off to end_off (seconds from now),
 * actor ops:test; id NULL: a new sale; expected 0: any version */
int fx_configure_sale_in(cm_rpc_client *c, const char *rid, const char *id, const char *sku,
                         long start_off, long end_off, int64_t stock, int64_t limit,
                         int64_t expected, Commerce__Inventory__V1__FlashSale **out,
                         cm_rpc_status *st);

typedef struct fx_level {
    int64_t available, reserved, sold, on_hand;
} fx_level;

/* GetStock's levels; all -1 when the call failed */
fx_level fx_get_level(cm_rpc_client *c, const char *sku);
/* the same as the tenant md names (fx_md_other: another tenant's view) */
fx_level fx_get_level_md(cm_rpc_client *c, const char *sku, const cm_rpc_md *md);
/* waits (30 s at most) until sku has these levels, which inventory reaches
 * by consuming the order events; asserts them */
void fx_wait_level(cm_rpc_client *c, const char *sku, int64_t avail, int64_t reserved,
                   int64_t sold);
void fx_assert_level(cm_rpc_client *c, const char *sku, int64_t avail, int64_t reserved,
                     int64_t sold);

/* stock changes of one kind (FX_KIND) on one sku ("": every sku); the
 * first one's order id into order (may be NULL) */
size_t fx_stock_changes(cm_rpc_client *c, const char *sku, int kind, char *order, size_t cap);

/* the violations CheckInvariants reports for the tenant, -1 when the call
 * failed; *checked_skus (may be NULL) how many skus it checked */
long fx_violations(cm_rpc_client *c, int64_t *checked_skus);

/* ---- the runner ---- */

/* runs tests (a tcase of them with fx_teardown, 180 s each) in this
 * process; ORDER_IT_ONLY=word runs only those whose name contains word.
 * returns the exit status. */
int fx_run(const char *name, const TTest *const *tests, size_t n);

#endif
