/* the inventory service's only SQL: see inv_store.h */
#include "inv_store.h"

#include "cm_buf.h"
#include "cm_err.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "cm_arena.h"
#include "cm_id.h"
#include "inv_events.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MS(x) "(extract(epoch FROM " x ") * 1000)::bigint"

#define CHANGE_COLS                                                                                \
    "change_id, kind, available_delta, reserved_delta, sold_delta, sku, available, reserved, "     \
    "sold, on_hand, version, order_id, request_id, reason, actor, principal, " MS("occurred_at")

#define LEVEL_COLS "sku, available, reserved, sold, on_hand, version, " MS("updated_at")

/* ---- small helpers ---- */

static int64_t i64(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static void cpy(char *dst, size_t cap, const PGresult *r, int row, int col)
{
    snprintf(dst, cap, "%s", PQgetvalue(r, row, col));
}

static void parse_level(const PGresult *r, int row, int col, inv_level *l)
{
    cpy(l->sku, sizeof l->sku, r, row, col);
    l->available = i64(r, row, col + 1);
    l->reserved = i64(r, row, col + 2);
    l->sold = i64(r, row, col + 3);
    l->on_hand = i64(r, row, col + 4);
    l->version = i64(r, row, col + 5);
    l->updated_ms = i64(r, row, col + 6);
}

static void parse_change(const PGresult *r, int row, int col, inv_change *c)
{
    memset(c, 0, sizeof *c);
    cpy(c->change_id, sizeof c->change_id, r, row, col);
    c->kind = (int)i64(r, row, col + 1);
    c->da = i64(r, row, col + 2);
    c->dr = i64(r, row, col + 3);
    c->ds = i64(r, row, col + 4);
    cpy(c->level.sku, sizeof c->level.sku, r, row, col + 5);
    c->level.available = i64(r, row, col + 6);
    c->level.reserved = i64(r, row, col + 7);
    c->level.sold = i64(r, row, col + 8);
    c->level.on_hand = i64(r, row, col + 9);
    c->level.version = i64(r, row, col + 10);
    cpy(c->order_id, sizeof c->order_id, r, row, col + 11);
    cpy(c->request_id, sizeof c->request_id, r, row, col + 12);
    cpy(c->reason, sizeof c->reason, r, row, col + 13);
    cpy(c->actor, sizeof c->actor, r, row, col + 14);
    cpy(c->principal, sizeof c->principal, r, row, col + 15);
    c->occurred_ms = i64(r, row, col + 16);
    c->level.updated_ms = c->occurred_ms;
}

/* a growable text buffer for array literals */
/* fixed texts whose plan does not depend on their values: prepared once
 * per connection, by their own text (the order-event consumer's confirm
 * and release ran a handful of them unprepared per event). statements
 * with optional filters call cm_db_exec instead */
static int exec(cm_db *db, const char *what, const char *sql, int n, const char *const *p,
                PGresult **out)
{
    return cm_db_exec_auto(db, what, sql, n, p, out);
}

/* ---- reads ---- */

int inv_store_get_stock(cm_db *db, const char *tenant, const char *sku, inv_level *out)
{
    const char *p[] = {tenant, sku};
    PGresult *r = NULL;
    int rc =
        cm_db_read(db, "get stock",
                   "SELECT " LEVEL_COLS " FROM stock WHERE tenant_id = $1 AND sku = $2", 2, p, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return CM_ENOTFOUND;
    }
    parse_level(r, 0, 0, out);
    PQclear(r);
    return 0;
}

/* the reservation and its lines in one prepared statement (the resolve
 * path reads it once per order event; the lines were a second round trip,
 * parsed and planned every time): a row per line in line order, or one
 * row with no line (a tombstone) */
#define RESV_COLS                                                                                  \
    "r.order_id, r.state, r.buyer_id, r.flash_sale::int, " MS("r.created_at") ", " MS(             \
        "r.expires_at") ", coalesce(" MS("r.resolved_at") ", 0)"
#define RESV_LINE_COLS                                                                             \
    "l.sku, l.quantity, l.flash_sale_id, l.unit_cost, coalesce(l.cost_currency, '')"

/* rows [from, to) of RESV_COLS, RESV_LINE_COLS from column col: one
 * reservation, a row per line (or one without a line) */
static void parse_resv(const PGresult *r, int from, int to, int col, inv_resv *out)
{
    memset(out, 0, offsetof(inv_resv, lines));
    cpy(out->order_id, sizeof out->order_id, r, from, col);
    out->state = (int)i64(r, from, col + 1);
    cpy(out->buyer_id, sizeof out->buyer_id, r, from, col + 2);
    out->flash = (int)i64(r, from, col + 3);
    out->created_ms = i64(r, from, col + 4);
    out->expires_ms = i64(r, from, col + 5);
    out->resolved_ms = i64(r, from, col + 6);
    int n = PQgetisnull(r, from, col + 7) ? 0 : to - from;
    for (int i = 0; i < n && i < INV_LINES_MAX; i++) {
        int row = from + i;
        cpy(out->lines[i].sku, sizeof out->lines[i].sku, r, row, col + 7);
        out->lines[i].qty = i64(r, row, col + 8);
        cpy(out->lines[i].flash_sale_id, sizeof out->lines[i].flash_sale_id, r, row, col + 9);
        out->lines[i].unit_cost = i64(r, row, col + 10);
        cpy(out->lines[i].cost_currency, sizeof out->lines[i].cost_currency, r, row, col + 11);
    }
    out->nlines = (size_t)(n < INV_LINES_MAX ? n : INV_LINES_MAX);
}

int inv_store_get_reservation(cm_db *db, const char *tenant, const char *order_id, inv_resv *out)
{
    const char *p[] = {tenant, order_id};
    PGresult *r = NULL;
    int rc = cm_db_read_auto(db, "get reservation",
                             "SELECT " RESV_COLS ", " RESV_LINE_COLS
                             " FROM reservation r LEFT JOIN reservation_line l "
                             "ON l.tenant_id = r.tenant_id AND l.order_id = r.order_id "
                             "WHERE r.tenant_id = $1 AND r.order_id = $2 ORDER BY l.idx",
                             2, p, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return CM_ENOTFOUND;
    }
    parse_resv(r, 0, PQntuples(r), 0, out);
    PQclear(r);
    return 0;
}

/* ---- prepared statements ---- */

/* the batch's statements (and the flash path's outbox insert) are parsed
 * and planned once per connection
 * (server-side prepared statements, cm_db_exec_prepared): parse, analysis
 * and planning of the big unnest statements were about a quarter of
 * postgres's cpu per batch. a connection replaced after an outage prepares
 * them again; one the server lost them on fails the attempt with
 * CM_ECONFLICT, which cm_db_tx runs again. */
enum { PS_LOCK, PS_WRITE, PS_OUTBOX, PS_COUNT };
static const char *const ps_names[PS_COUNT] = {"inv_batch_lock", "inv_batch_write",
                                               "inv_outbox_write"};

/* runs statement `which` (sql, n text parameters, except p[bin] sent as
 * binary of binlen bytes when bin >= 0) */
static int exec_ps(cm_db *db, int which, const char *what, const char *sql, int n,
                   const char *const *p, int bin, size_t binlen, PGresult **out)
{
    int lengths[48] = {0}, formats[48] = {0};
    if (n > 48 || bin >= n || binlen > INT32_MAX)
        return CM_EINVAL;
    if (bin >= 0) {
        lengths[bin] = (int)binlen;
        formats[bin] = 1;
    }
    return cm_db_exec_prepared(db, what, ps_names[which], sql, n, p, lengths, formats, out);
}

/* ---- outbox rows written by the store itself ---- */

/* the events of a batch as one fixed-text insert into the outbox
 * (cm_outbox_rows): prepared once, and also embedded in the batch's write
 * statement (README.md, "Events") */
typedef struct ev_rows {
    cm_outbox_rows rows;
    int on;      /* INVENTORY_EVENTS: off adds nothing */
    cm_arena *a; /* scratch for packing one event */
} ev_rows;

static int ev_init(ev_rows *e, int on)
{
    memset(e, 0, sizeof *e);
    e->on = on;
    cm_outbox_rows_init(&e->rows);
    e->a = cm_arena_new(8192);
    return e->a ? 0 : CM_ENOMEM;
}

static void ev_free(ev_rows *e)
{
    cm_outbox_rows_free(&e->rows);
    cm_arena_free(e->a);
}

/* copies r (which may borrow from the caller) into the rows */
static void ev_add(ev_rows *e, const inv_ev_row *r)
{
    cm_outbox_event ev = {.event_id = r->event_id,
                          .tenant_id = r->tenant,
                          .key = r->key,
                          .type = r->type,
                          .payload = r->payload,
                          .len = r->len,
                          .occurred_at_ms = r->occurred_ms,
                          .traceparent = r->traceparent};
    cm_outbox_rows_add(&e->rows, &ev);
    cm_arena_reset(e->a);
}

/* packs and adds the StockChanged of c, with the trace of the call that
 * made it (NULL: none); nothing when events are off */
static int ev_changed(ev_rows *e, const char *tenant, const inv_change *c, const char *trace)
{
    if (!e->on)
        return 0;
    inv_ev_row r;
    int rc = inv_ev_pack_stock_changed(e->a, tenant, c, &r);
    r.traceparent = trace;
    if (rc == 0)
        ev_add(e, &r);
    return rc;
}

/* packs and adds a SoldOut (restock 0) or BackInStock */
static int ev_edge(ev_rows *e, const char *tenant, const inv_level *l, int restock,
                   const char *flash_sale_id, const char *trace)
{
    if (!e->on)
        return 0;
    inv_ev_row r;
    int rc = inv_ev_pack_stock_edge(e->a, tenant, l, restock, flash_sale_id, &r);
    r.traceparent = trace;
    if (rc == 0)
        ev_add(e, &r);
    return rc;
}

int inv_store_write_events(cm_db *db, cm_outbox_rows *rows)
{
    int rc = cm_outbox_rows_close(rows);
    if (rc || rows->n == 0)
        return rc;
    const char *p[CM_OUTBOX_ROWS_NPARAMS + 2];
    cm_outbox_rows_params(rows, p);
    p[CM_OUTBOX_ROWS_NPARAMS] = INV_TOPIC;
    p[CM_OUTBOX_ROWS_NPARAMS + 1] = INV_SOURCE;
    rc = exec_ps(
        db, PS_OUTBOX, "write outbox rows",
        CM_OUTBOX_ROWS_INSERT("$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10", "$11"),
        CM_OUTBOX_ROWS_NPARAMS + 2, p, CM_OUTBOX_ROWS_BLOB, rows->blob.len, NULL);
    /* the relay is woken after the commit (a NOTIFY inside the transaction
     * would hold a database-wide lock through the commit) */
    return rc ? rc : cm_outbox_wake_on_commit(db);
}

/* ---- events for a set of audit rows ---- */

/* the StockChanged (and sold-out / back-in-stock) events of change rows
 * [from, to) of r, CHANGE_COLS from column col */
static int emit_change_rows(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const PGresult *r,
                            int from, int to, int col, inv_stock_cb cb, void *arg)
{
    for (int i = from; i < to; i++) {
        inv_change c;
        parse_change(r, i, col, &c);
        int rc = inv_ev_stock_changed(db, ec, tenant, &c);
        if (rc)
            return rc;
        int64_t before = c.level.available - c.da;
        int edge = inv_back_in_stock(before, c.level.available)  ? 1
                   : inv_sold_out_now(before, c.level.available) ? 0
                                                                 : -1;
        if (edge >= 0) {
            rc = inv_ev_stock_edge(db, ec, tenant, &c.level, edge, NULL);
            if (rc)
                return rc;
            /* clearing a sold-out flag early is harmless: it only costs a
             * database check */
            if (cb && edge == 1)
                cb(arg, tenant, c.level.sku, 1);
        }
    }
    return 0;
}

static int emit_changes(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const PGresult *r,
                        int col, inv_stock_cb cb, void *arg)
{
    return emit_change_rows(db, ec, tenant, r, 0, PQntuples(r), col, cb, arg);
}

/* ---- reserve ---- */

/* a sku that reached 0 in a batch: marked sold out after commit */
typedef struct zero_sku {
    char tenant[INV_KEY_MAX + 1];
    char sku[INV_SKU_MAX + 1];
} zero_sku;

/* the batch's requests as arrays: inv_reserve_batch's ten arguments, in
 * its order (the row-by-row path), four of them the lock's */
enum {
    A_TENANT,
    A_ORDER,
    A_BUYER,
    A_TTL,
    A_BODY,
    A_NLINES,
    A_LINE_TENANT,
    A_LINE_SKU,
    A_LINE_QTY,
    A_PRINCIPAL,
    A_COUNT
};

typedef struct reserve_tx {
    inv_reserve_item *const *items;
    size_t n;
    const char *params[A_COUNT];
    zero_sku *zero;
    size_t nzero, capzero;
} reserve_tx;

static int add_zero(reserve_tx *t, const char *tenant, const char *sku)
{
    if (t->nzero == t->capzero) {
        size_t cap = t->capzero ? t->capzero * 2 : 16;
        zero_sku *z = realloc(t->zero, cap * sizeof *z);
        if (!z)
            return CM_ENOMEM;
        t->zero = z;
        t->capzero = cap;
    }
    zero_sku *z = &t->zero[t->nzero++];
    snprintf(z->tenant, sizeof z->tenant, "%s", tenant);
    snprintf(z->sku, sizeof z->sku, "%s", sku);
    return 0;
}

/* the counters of a row of inv_reserve_batch's result (outcomes 8-10) */
static void parse_batch_level(const PGresult *r, int k, inv_level *l)
{
    cpy(l->sku, sizeof l->sku, r, k, 2);
    l->available = i64(r, k, 11);
    l->reserved = i64(r, k, 12);
    l->sold = i64(r, k, 13);
    l->on_hand = i64(r, k, 14);
    l->version = i64(r, k, 15);
    l->updated_ms = i64(r, k, 16);
}

/* the batch through the row-by-row plpgsql function: used when a sku of
 * the batch is in an active flash sale (sale stock, per-buyer limits). the
 * function reports the audit rows and the sold-out edges; their events go
 * to the outbox with one more statement. */
static int reserve_rows(cm_db *db, reserve_tx *t)
{
    PGresult *r = NULL;
    int rc = exec(db, "reserve batch",
                  "SELECT req, outcome, sku, requested, avail, flash_sale_id, created_ms, "
                  "expires_ms, item, tenant, change_id, l_available, l_reserved, l_sold, "
                  "l_on_hand, l_version, at_ms "
                  "FROM inv_reserve_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                  A_COUNT, t->params, &r);
    if (rc)
        return rc;
    ev_rows ev;
    rc = ev_init(&ev, t->n && t->items[0]->ev->on);
    int rows = PQntuples(r);
    for (int k = 0; rc == 0 && k < rows; k++) {
        int req = (int)i64(r, k, 0);
        int outcome = (int)i64(r, k, 1);
        int item = (int)i64(r, k, 8);
        if (outcome == 8 && item >= 1 && (size_t)item <= t->n) {
            const inv_reserve_item *it = t->items[item - 1];
            inv_change c;
            memset(&c, 0, sizeof c);
            cpy(c.change_id, sizeof c.change_id, r, k, 10);
            c.kind = INV_KIND_RESERVE;
            c.da = -i64(r, k, 3);
            c.dr = i64(r, k, 3);
            parse_batch_level(r, k, &c.level);
            snprintf(c.order_id, sizeof c.order_id, "%s", it->order_id);
            snprintf(c.principal, sizeof c.principal, "%s", it->principal ? it->principal : "");
            c.occurred_ms = c.level.updated_ms;
            rc = ev_changed(&ev, it->tenant, &c, it->ev->traceparent);
            continue;
        }
        if (outcome == 9 || outcome == 10) {
            inv_level l;
            parse_batch_level(r, k, &l);
            const char *tenant = PQgetvalue(r, k, 9);
            /* a sku's edge belongs to no single call: no trace */
            rc = ev_edge(&ev, tenant, &l, 0, outcome == 10 ? PQgetvalue(r, k, 5) : NULL, NULL);
            if (rc == 0 && outcome == 9)
                rc = add_zero(t, tenant, l.sku);
            continue;
        }
        if (req < 1 || (size_t)req > t->n)
            continue;
        inv_reserve_item *it = t->items[req - 1];
        it->outcome = outcome;
        it->flash_batch = 1;
        if (outcome == INV_R_RESERVED) {
            it->created_ms = i64(r, k, 6);
            it->expires_ms = i64(r, k, 7);
        } else if (outcome == INV_R_SOLD_OUT && it->nshort < it->nlines) {
            inv_shortage *sh = &it->shortages[it->nshort++];
            cpy(sh->sku, sizeof sh->sku, r, k, 2);
            sh->requested = i64(r, k, 3);
            sh->available = i64(r, k, 4);
            cpy(sh->flash_sale_id, sizeof sh->flash_sale_id, r, k, 5);
        }
    }
    PQclear(r);
    if (rc == 0)
        rc = inv_store_write_events(db, &ev.rows);
    ev_free(&ev);
    return rc;
}

static int counter_cmp(const void *a, const void *b)
{
    const inv_counter *x = a, *y = b;
    int c = strcmp(x->tenant, y->tenant);
    return c ? c : strcmp(x->sku, y->sku);
}

static size_t find_counter(const inv_counter *cs, size_t n, const char *tenant, const char *sku)
{
    inv_counter key = {.tenant = tenant, .sku = sku};
    const inv_counter *c = bsearch(&key, cs, n, sizeof *cs, counter_cmp);
    return c ? (size_t)(c - cs) : SIZE_MAX;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void level_of(const inv_counter *c, int64_t at_ms, inv_level *l)
{
    snprintf(l->sku, sizeof l->sku, "%s", c->sku);
    l->available = c->available;
    l->reserved = c->reserved;
    l->sold = c->sold;
    l->on_hand = c->on_hand;
    l->version = c->version;
    l->updated_ms = at_ms;
}

/* the batch's arrays, one per column (cm_buf array literals): its
 * reservations, their lines, the lines' audit rows and the stock rows
 * they changed. the write statement names them (below), so nothing is
 * numbered by hand */
/* clang-format off */
#define BATCH_ARRAYS(X)                                                                  \
    X(r_tenant) X(r_order) X(r_buyer) X(r_body) X(r_created) X(r_expires)                \
    X(l_tenant) X(l_order) X(l_idx) X(l_sku) X(l_qty) X(l_cost) X(l_ccy)                 \
    X(a_id) X(a_available) X(a_reserved) X(a_sold) X(a_on_hand) X(a_version)             \
    X(a_principal)                                                                       \
    X(s_tid) X(s_tenant) X(s_sku) X(s_available) X(s_reserved) X(s_version)
/* the write statement's parameters: the arrays, the batch's time, the
 * outbox rows (CM_OUTBOX_ROWS_NPARAMS of them, in cm_outbox_rows_params'
 * order) and their topic and source */
#define WRITE_PARAMS(X)                                                                  \
    BATCH_ARRAYS(X) X(now)                                                               \
    X(ob_id) X(ob_tenant) X(ob_key) X(ob_type) X(ob_at) X(ob_off) X(ob_len) X(ob_tp)     \
    X(ob_blob) X(ob_topic) X(ob_source)
/* clang-format on */
#define AS_ENUM(n) W_##n,
#define AS_NAME(n) #n,
enum { WRITE_PARAMS(AS_ENUM) W_COUNT };
enum { W_ARRAYS = W_now };
static const char *const write_names[W_COUNT] = {WRITE_PARAMS(AS_NAME)};

static const char write_sql[] =
    "WITH r AS (INSERT INTO reservation (tenant_id, order_id, state, buyer_id, body, "
    "  created_at, expires_at) SELECT u.t, u.o, 1, u.b, u.body, to_timestamp(u.c / 1000.0), "
    "  to_timestamp(u.e / 1000.0) FROM unnest($r_tenant::text[], $r_order::text[], "
    "  $r_buyer::text[], $r_body::text[], $r_created::bigint[], $r_expires::bigint[]) "
    "  AS u(t, o, b, body, c, e) ON CONFLICT DO NOTHING RETURNING 1), "
    "l AS (INSERT INTO reservation_line (tenant_id, order_id, idx, sku, quantity, unit_cost, "
    "  cost_currency) SELECT * FROM unnest($l_tenant::text[], $l_order::text[], $l_idx::int[], "
    "  $l_sku::text[], $l_qty::bigint[], $l_cost::bigint[], $l_ccy::text[])), "
    "c AS (INSERT INTO stock_change (change_id, tenant_id, sku, kind, available_delta, "
    "  reserved_delta, sold_delta, available, reserved, sold, on_hand, version, "
    "  order_id, principal, occurred_at) SELECT u.id, u.t, u.s, 3, -u.q, u.q, 0, u.a, "
    "  u.r, u.sd, u.oh, u.v, u.o, u.p, to_timestamp($now::bigint / 1000.0) "
    "  FROM unnest($a_id::uuid[], $l_tenant::text[], $l_sku::text[], $l_qty::bigint[], "
    "  $a_available::bigint[], $a_reserved::bigint[], $a_sold::bigint[], "
    "  $a_on_hand::bigint[], $a_version::bigint[], $l_order::text[], $a_principal::text[]) "
    "  AS u(id, t, s, q, a, r, sd, oh, v, o, p)), "
    "s AS (UPDATE stock x SET available = u.a, reserved = u.r, version = u.v, "
    "  updated_at = to_timestamp($now::bigint / 1000.0) FROM unnest($s_tenant::text[], "
    "  $s_sku::text[], $s_available::bigint[], $s_reserved::bigint[], $s_version::bigint[]) "
    "  AS u(t, s, a, r, v) WHERE x.ctid = ANY($s_tid::tid[]) AND x.tenant_id = u.t "
    "  AND x.sku = u.s RETURNING 1), "
    "o AS (" CM_OUTBOX_ROWS_INSERT("$ob_id", "$ob_tenant", "$ob_key", "$ob_type", "$ob_at",
                                   "$ob_off", "$ob_len", "$ob_tp", "$ob_blob", "$ob_topic",
                                   "$ob_source") ") SELECT (SELECT count(*) FROM r), "
                                                 "(SELECT count(*) FROM s)";

/* write_sql with $1... for its names: built once */
static char write_numbered[sizeof write_sql + W_COUNT * 4];
static pthread_once_t write_once = PTHREAD_ONCE_INIT;
static void number_write(void)
{
    if (cm_db_number_params(write_sql, write_names, W_COUNT, write_numbered, sizeof write_numbered))
        write_numbered[0] = '\0';
}

/* what a batch decides, to be written by one statement */
typedef struct batch_writes {
    cm_buf col[W_ARRAYS];
    ev_rows ev;
    long long reserved;   /* reservations admitted */
    long long stock_rows; /* stock rows to update */
    int64_t now;
} batch_writes;

/* phase 1, read: one round trip locks the batch's stock rows (in (tenant,
 * sku) order, the key columns' COLLATE "C": batches of two replicas never
 * deadlock) and returns with them the batch's orders that exist: kind 0 a
 * stock row, 1 an order (its stored body last).
 *
 * Both lookups are one primary-key probe per key of the batch (CROSS JOIN
 * LATERAL over the sorted keys), a shape no cost model can turn into a
 * scan. The statement is prepared, so its plan is the generic one made on
 * the connection's sixth batch: as a join of the unnested arrays with the
 * tables, that plan was made from the tables' size at that moment, and
 * with random_page_cost = 4 (PostgreSQL's default) a young schema got a
 * hash join over sequential scans of stock and reservation that it kept
 * while reservation grew by thousands of rows a second (hot SKU: 11,100 →
 * 5,900 reservations/s; tests/bench/README.md, "Planner settings").
 * OFFSET 0 keeps the planner from flattening the reservation lookup back
 * into a join and from turning the flash-sale EXISTS into one hashed scan
 * of every sale (it would: both are "simple" subqueries without it). The
 * sale's end is compared as "(...) IS TRUE", which no index can serve, so
 * the probe is always flash_sale_sku's (tenant, sku, starts_at) and never
 * flash_sale_ends' (tenant, ends_at): with an empty flash_sale the two
 * cost the same and the cached plan took the latter, a walk over every
 * running sale of the tenant per SKU of the batch. */
static int lock_batch(cm_db *db, const reserve_tx *t, PGresult **rs)
{
    const char *p[] = {t->params[A_LINE_TENANT], t->params[A_LINE_SKU], t->params[A_TENANT],
                       t->params[A_ORDER]};
    return exec_ps(
        db, PS_LOCK, "lock batch stock",
        "WITH k AS (SELECT s.tenant_id, s.sku, s.available, s.reserved, s.sold, "
        "  s.on_hand, s.version, s.unit_cost, s.cost_currency, s.tid, "
        "  EXISTS (SELECT 1 FROM flash_sale f "
        "  WHERE f.tenant_id = s.tenant_id AND f.sku = s.sku AND f.starts_at <= now() "
        "  AND (f.ends_at > now()) IS TRUE OFFSET 0)::int AS fs "
        "  FROM (SELECT DISTINCT * FROM unnest($1::text[] COLLATE \"C\", "
        "  $2::text[] COLLATE \"C\") AS u(t, k) ORDER BY 1, 2) u "
        "  CROSS JOIN LATERAL (SELECT x.ctid AS tid, x.* FROM stock x WHERE x.tenant_id = u.t "
        "  AND x.sku = u.k FOR UPDATE) s) "
        "SELECT 0, tenant_id, sku, available, reserved, sold, on_hand, version, fs, "
        "  NULL::text, unit_cost, cost_currency, tid::text FROM k "
        "UNION ALL SELECT 1, x.tenant_id, x.order_id, 0, 0, 0, 0, 0, 0, x.body, 0, '', "
        "  NULL "
        "  FROM unnest($3::text[] COLLATE \"C\", $4::text[] COLLATE \"C\") AS u(t, o) "
        "  CROSS JOIN LATERAL (SELECT * FROM reservation r WHERE r.tenant_id = u.t "
        "  AND r.order_id = u.o OFFSET 0) x",
        4, p, -1, 0, rs);
}

/* the locked counters of rs, sorted for find_counter; they point into rs */
static inv_counter *read_counters(const PGresult *rs, size_t *nc)
{
    int rows = PQntuples(rs);
    inv_counter *cs = calloc((size_t)(rows ? rows : 1), sizeof *cs);
    if (!cs)
        return NULL;
    *nc = 0;
    for (int k = 0; k < rows; k++) {
        if (i64(rs, k, 0) != 0)
            continue;
        inv_counter *c = &cs[(*nc)++];
        c->tenant = PQgetvalue(rs, k, 1);
        c->sku = PQgetvalue(rs, k, 2);
        c->available = c->available0 = i64(rs, k, 3);
        c->reserved = i64(rs, k, 4);
        c->sold = i64(rs, k, 5);
        c->on_hand = i64(rs, k, 6);
        c->version = i64(rs, k, 7);
        c->unit_cost = i64(rs, k, 10);
        c->cost_currency = PQgetvalue(rs, k, 11);
        c->tid = PQgetvalue(rs, k, 12);
    }
    /* the rows come in the key columns' order (COLLATE "C", strcmp's since
     * migration 0005); sorted here all the same, as bsearch needs it */
    qsort(cs, *nc, sizeof *cs, counter_cmp);
    return cs;
}

/* the stored body of it's order: one that exists (rs), or came earlier in
 * this batch; NULL if none */
static const char *existing_body(const reserve_tx *t, size_t i, const PGresult *rs)
{
    const inv_reserve_item *it = t->items[i];
    for (int k = 0; k < PQntuples(rs); k++)
        if (i64(rs, k, 0) == 1 && strcmp(PQgetvalue(rs, k, 1), it->tenant) == 0 &&
            strcmp(PQgetvalue(rs, k, 2), it->order_id) == 0)
            return PQgetvalue(rs, k, 9);
    for (size_t j = 0; j < i; j++)
        if (t->items[j]->outcome == INV_R_RESERVED &&
            strcmp(t->items[j]->tenant, it->tenant) == 0 &&
            strcmp(t->items[j]->order_id, it->order_id) == 0)
            return t->items[j]->body;
    return NULL;
}

/* an admitted reservation's rows: it, its lines, one audit row and one
 * StockChanged per line. a line's sku is in no other line of the
 * reservation, so the counters inv_admit left are the ones right after
 * this line, which its audit row carries */
static int add_reservation(batch_writes *w, const inv_reserve_item *it, const inv_counter *cs,
                           const size_t *pos)
{
    cm_buf *col = w->col;
    cm_buf_array_text(&col[W_r_tenant], it->tenant);
    cm_buf_array_text(&col[W_r_order], it->order_id);
    cm_buf_array_text(&col[W_r_buyer], it->buyer_id ? it->buyer_id : "");
    cm_buf_array_text(&col[W_r_body], it->body);
    cm_buf_array_int(&col[W_r_created], it->created_ms);
    cm_buf_array_int(&col[W_r_expires], it->expires_ms);
    const char *principal = it->principal ? it->principal : "";
    for (size_t j = 0; j < it->nlines; j++) {
        const inv_counter *c = &cs[pos[j]];
        inv_change chg;
        memset(&chg, 0, sizeof chg);
        int rc = cm_id_uuid7(chg.change_id);
        if (rc)
            return rc;
        chg.kind = INV_KIND_RESERVE;
        chg.da = -it->lines[j].qty;
        chg.dr = it->lines[j].qty;
        level_of(c, w->now, &chg.level);
        snprintf(chg.order_id, sizeof chg.order_id, "%s", it->order_id);
        snprintf(chg.principal, sizeof chg.principal, "%s", principal);
        chg.occurred_ms = w->now;
        if ((rc = ev_changed(&w->ev, it->tenant, &chg, it->ev->traceparent)) != 0)
            return rc;
        cm_buf_array_text(&col[W_l_tenant], it->tenant);
        cm_buf_array_text(&col[W_l_order], it->order_id);
        cm_buf_array_int(&col[W_l_idx], (long long)j);
        cm_buf_array_text(&col[W_l_sku], it->lines[j].sku);
        cm_buf_array_int(&col[W_l_qty], it->lines[j].qty);
        cm_buf_array_int(&col[W_l_cost], c->unit_cost);
        cm_buf_array_text(&col[W_l_ccy], c->cost_currency);
        if (it->costs) {
            it->costs[j].unit_cost = c->unit_cost;
            snprintf(it->costs[j].cost_currency, sizeof it->costs[j].cost_currency, "%s",
                     c->cost_currency);
        }
        cm_buf_array_text(&col[W_a_id], chg.change_id);
        cm_buf_array_int(&col[W_a_available], c->available);
        cm_buf_array_int(&col[W_a_reserved], c->reserved);
        cm_buf_array_int(&col[W_a_sold], c->sold);
        cm_buf_array_int(&col[W_a_on_hand], c->on_hand);
        cm_buf_array_int(&col[W_a_version], c->version);
        cm_buf_array_text(&col[W_a_principal], principal);
    }
    w->reserved++;
    return 0;
}

/* phase 2, decide: every reservation in request order against the locked
 * counters (inv_admit: all lines or none), in memory; then the stock rows
 * that changed, with a SoldOut for each that reached 0 */
static int decide(reserve_tx *t, const PGresult *rs, inv_counter *cs, size_t nc, batch_writes *w)
{
    size_t maxl = 1;
    for (size_t i = 0; i < t->n; i++)
        maxl = t->items[i]->nlines > maxl ? t->items[i]->nlines : maxl;
    size_t *pos = calloc(maxl, sizeof *pos);
    int64_t *av = calloc(maxl, sizeof *av);
    int rc = pos && av ? 0 : CM_ENOMEM;
    for (size_t i = 0; i < t->n && rc == 0; i++) {
        inv_reserve_item *it = t->items[i];
        const char *body = existing_body(t, i, rs);
        if (body) {
            it->outcome = !*body                        ? INV_R_TOMBSTONE
                          : strcmp(body, it->body) == 0 ? INV_R_SAME
                                                        : INV_R_DIFFERENT;
            continue;
        }
        for (size_t j = 0; j < it->nlines; j++)
            pos[j] = find_counter(cs, nc, it->tenant, it->lines[j].sku);
        if (!inv_admit(cs, pos, it->lines, it->nlines, av)) {
            it->outcome = INV_R_SOLD_OUT;
            for (size_t j = 0; j < it->nlines; j++) {
                if (av[j] >= it->lines[j].qty)
                    continue;
                inv_shortage *sh = &it->shortages[it->nshort++];
                snprintf(sh->sku, sizeof sh->sku, "%s", it->lines[j].sku);
                sh->requested = it->lines[j].qty;
                sh->available = av[j];
            }
            continue;
        }
        it->outcome = INV_R_RESERVED;
        it->created_ms = w->now;
        it->expires_ms = w->now + it->ttl_ms;
        rc = add_reservation(w, it, cs, pos);
    }
    for (size_t k = 0; rc == 0 && k < nc; k++) {
        const inv_counter *c = &cs[k];
        if (c->available == c->available0)
            continue;
        cm_buf_array_text(&w->col[W_s_tid], c->tid);
        cm_buf_array_text(&w->col[W_s_tenant], c->tenant);
        w->stock_rows++;
        cm_buf_array_text(&w->col[W_s_sku], c->sku);
        cm_buf_array_int(&w->col[W_s_available], c->available);
        cm_buf_array_int(&w->col[W_s_reserved], c->reserved);
        cm_buf_array_int(&w->col[W_s_version], c->version);
        if (c->available == 0) {
            inv_level l;
            level_of(c, w->now, &l);
            /* a sku's edge belongs to no single call: no trace */
            rc = ev_edge(&w->ev, c->tenant, &l, 0, NULL, NULL);
            if (rc == 0)
                rc = add_zero(t, c->tenant, c->sku);
        }
    }
    free(pos);
    free(av);
    return rc;
}

/* phase 3, write: reservations, lines, audit rows, the new counters and
 * the outbox events in one statement */
static int write_batch(cm_db *db, batch_writes *w)
{
    int oom = 0;
    for (int k = 0; k < W_ARRAYS; k++) {
        cm_buf_array_end(&w->col[k]);
        oom |= w->col[k].oom;
    }
    if (oom || cm_outbox_rows_close(&w->ev.rows))
        return CM_ENOMEM;
    pthread_once(&write_once, number_write);
    if (!write_numbered[0])
        return CM_EINTERNAL;
    char now_s[24];
    snprintf(now_s, sizeof now_s, "%lld", (long long)w->now);
    const char *p[W_COUNT];
    for (int k = 0; k < W_ARRAYS; k++)
        p[k] = w->col[k].p;
    p[W_now] = now_s;
    cm_outbox_rows_params(&w->ev.rows, p + W_ob_id);
    p[W_ob_topic] = INV_TOPIC;
    p[W_ob_source] = INV_SOURCE;
    PGresult *r = NULL;
    /* sql-safe: write_sql, a literal, with its $names numbered */
    int rc = exec_ps(db, PS_WRITE, "write batch", write_numbered, W_COUNT, p, W_ob_blob,
                     w->ev.rows.blob.len, &r);
    if (rc)
        return rc;
    long long inserted = i64(r, 0, 0), updated = i64(r, 0, 1);
    PQclear(r);
    /* another transaction reserved one of these orders meanwhile: run the
     * batch again, it will then see that reservation */
    if (inserted != w->reserved)
        return CM_ECONFLICT;
    /* the rows are found by the ctid read under their lock (lock_batch);
     * nothing else can move a row this transaction holds, so a miss is a
     * bug: never a lost update, the batch is rolled back and run again */
    if (updated != w->stock_rows) {
        char u[24], want[24];
        snprintf(u, sizeof u, "%lld", updated);
        snprintf(want, sizeof want, "%lld", w->stock_rows);
        cm_log_error("batch write missed locked stock rows", "updated", u, "locked", want, NULL);
        return CM_ECONFLICT;
    }
    return w->ev.rows.n ? cm_outbox_wake_on_commit(db) : 0;
}

/* the batch, in one transaction: read (lock), decide, write. three round
 * trips per batch, whatever its size. a sku in an active flash sale sends
 * the batch down the row-by-row path instead (reserve_rows) */
static int reserve_fn(cm_db *db, void *arg)
{
    reserve_tx *t = arg;
    t->nzero = 0;
    for (size_t i = 0; i < t->n; i++) {
        t->items[i]->outcome = INV_R_PENDING;
        t->items[i]->nshort = 0;
    }
    PGresult *rs = NULL;
    int rc = lock_batch(db, t, &rs);
    if (rc)
        return rc;
    for (int k = 0; k < PQntuples(rs); k++) {
        if (i64(rs, k, 0) == 0 && i64(rs, k, 8)) {
            PQclear(rs);
            return reserve_rows(db, t);
        }
    }
    batch_writes w;
    memset(&w, 0, sizeof w);
    w.now = wall_ms();
    for (int k = 0; k < W_ARRAYS; k++)
        cm_buf_array_begin(&w.col[k]);
    size_t nc = 0;
    inv_counter *cs = read_counters(rs, &nc);
    rc = ev_init(&w.ev, t->n && t->items[0]->ev->on);
    if (!cs && rc == 0)
        rc = CM_ENOMEM;
    if (rc == 0)
        rc = decide(t, rs, cs, nc, &w);
    if (rc == 0 && w.reserved)
        rc = write_batch(db, &w);
    for (int k = 0; k < W_ARRAYS; k++)
        free(w.col[k].p);
    ev_free(&w.ev);
    free(cs);
    PQclear(rs);
    return rc;
}

int inv_store_reserve_batch(cm_db *db, inv_reserve_item *const *items, size_t n, inv_stock_cb cb,
                            void *arg)
{
    cm_buf a[A_COUNT];
    cm_buf_columns_begin(a, A_COUNT);
    for (size_t i = 0; i < n; i++) {
        const inv_reserve_item *it = items[i];
        cm_buf_array_text(&a[A_TENANT], it->tenant);
        cm_buf_array_text(&a[A_ORDER], it->order_id);
        cm_buf_array_text(&a[A_BUYER], it->buyer_id ? it->buyer_id : "");
        cm_buf_array_int(&a[A_TTL], it->ttl_ms);
        cm_buf_array_text(&a[A_BODY], it->body);
        cm_buf_array_int(&a[A_NLINES], (long long)it->nlines);
        for (size_t j = 0; j < it->nlines; j++) {
            cm_buf_array_text(&a[A_LINE_TENANT], it->tenant);
            cm_buf_array_text(&a[A_LINE_SKU], it->lines[j].sku);
            cm_buf_array_int(&a[A_LINE_QTY], it->lines[j].qty);
        }
        cm_buf_array_text(&a[A_PRINCIPAL], it->principal ? it->principal : "");
    }
    int oom = 0;
    for (int k = 0; k < A_COUNT; k++) {
        cm_buf_array_end(&a[k]);
        oom |= a[k].oom;
    }
    int rc = CM_ENOMEM;
    reserve_tx *t = calloc(1, sizeof *t);
    if (!oom && t) {
        t->items = items;
        t->n = n;
        for (int k = 0; k < A_COUNT; k++)
            t->params[k] = a[k].p;
        rc = cm_db_tx(db, NULL, 8, reserve_fn, t);
        if (rc == 0 && cb)
            for (size_t z = 0; z < t->nzero; z++)
                cb(arg, t->zero[z].tenant, t->zero[z].sku, 0);
    }
    if (t)
        free(t->zero);
    free(t);
    for (int k = 0; k < A_COUNT; k++)
        free(a[k].p);
    return rc;
}

/* ---- confirm, release, expire ---- */

/* a release or expiry gave a flash sale's units back (inv_resolve_lines,
 * which holds the sale's row lock): BackInStock of the sale when it was
 * full before and is running now */
static int flash_back_in_stock(cm_db *db, const inv_ev_ctx *ec, const char *tenant,
                               const inv_resv *r)
{
    for (size_t i = 0; i < r->nlines; i++) {
        const inv_resv_line *l = &r->lines[i];
        if (!l->flash_sale_id[0] || !ec->on)
            continue;
        char q[24];
        snprintf(q, sizeof q, "%lld", (long long)l->qty);
        const char *p[] = {tenant, l->flash_sale_id, q};
        PGresult *x = NULL;
        int rc = exec(db, "flash sale freed",
                      "SELECT 1 FROM flash_sale WHERE tenant_id = $1 AND flash_sale_id = $2 "
                      "AND reserved + sold < sale_stock AND reserved + sold + $3::bigint >= "
                      "sale_stock AND starts_at <= now() AND ends_at > now()",
                      3, p, &x);
        if (rc)
            return rc;
        int edge = PQntuples(x) == 1;
        PQclear(x);
        inv_level lv;
        if (edge && ((rc = inv_store_get_stock(db, tenant, l->sku, &lv)) != 0 ||
                     (rc = inv_ev_stock_edge(db, ec, tenant, &lv, 1, l->flash_sale_id)) != 0))
            return rc;
    }
    return 0;
}

static int resolve_lines(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const char *order_id,
                         int to, const char *principal, inv_resv *out, inv_stock_cb cb, void *arg)
{
    char tos[8];
    snprintf(tos, sizeof tos, "%d", to);
    const char *p[] = {tenant, order_id, tos, principal ? principal : ""};
    PGresult *r = NULL;
    int rc = exec(db, "resolve reservation",
                  "SELECT " CHANGE_COLS " FROM inv_resolve_lines($1, $2, $3::int, $4)", 4, p, &r);
    if (rc)
        return rc;
    rc = emit_changes(db, ec, tenant, r, 0, cb, arg);
    PQclear(r);
    if (rc)
        return rc;
    rc = inv_store_get_reservation(db, tenant, order_id, out);
    if (rc)
        return rc == CM_ENOTFOUND ? CM_EINTERNAL : rc;
    if (to != INV_CONFIRMED && (rc = flash_back_in_stock(db, ec, tenant, out)) != 0)
        return rc;
    return inv_ev_reservation(db, ec, tenant, out);
}

typedef struct resolve_tx {
    const inv_ev_ctx *ec;
    const char *tenant, *order_id, *principal;
    int to;
    inv_resolve_outcome outcome;
    inv_resv *out;
    inv_stock_cb cb;
    void *arg;
} resolve_tx;

static int resolve_fn(cm_db *db, void *arg)
{
    resolve_tx *t = arg;
    const char *p[] = {t->tenant, t->order_id};
    PGresult *r = NULL;
    int rc = exec(db, "lock reservation",
                  "SELECT state, (expires_at <= now())::int FROM reservation "
                  "WHERE tenant_id = $1 AND order_id = $2 FOR UPDATE",
                  2, p, &r);
    if (rc)
        return rc;
    int state = 0, due = 0;
    if (PQntuples(r) == 1) {
        state = (int)i64(r, 0, 0);
        due = (int)i64(r, 0, 1);
    }
    PQclear(r);
    inv_resolve_plan plan = inv_plan_resolve(state, due, t->to);
    t->outcome = plan.outcome;
    if (plan.tombstone) {
        rc = exec(db, "release tombstone",
                  "INSERT INTO reservation (tenant_id, order_id, state, body, expires_at, "
                  "resolved_at) VALUES ($1, $2, 3, '', now(), now()) ON CONFLICT DO NOTHING "
                  "RETURNING 1",
                  2, p, &r);
        if (rc)
            return rc;
        int inserted = PQntuples(r) == 1;
        PQclear(r);
        /* a reserve committed meanwhile: run again and release it */
        if (!inserted)
            return CM_ECONFLICT;
    }
    if (plan.expire_first) {
        rc = resolve_lines(db, t->ec, t->tenant, t->order_id, INV_EXPIRED, "system", t->out, t->cb,
                           t->arg);
        if (rc)
            return rc;
    }
    if (plan.apply_to) {
        rc = resolve_lines(db, t->ec, t->tenant, t->order_id, plan.apply_to, t->principal, t->out,
                           t->cb, t->arg);
        if (rc)
            return rc;
    }
    /* a change just read the reservation as it now is */
    if (plan.outcome == INV_RESOLVE_NOT_FOUND || plan.apply_to || plan.expire_first)
        return 0;
    return inv_store_get_reservation(db, t->tenant, t->order_id, t->out);
}

int inv_store_resolve(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const char *order_id,
                      int to, const char *principal, inv_resolve_outcome *outcome, inv_resv *out,
                      inv_stock_cb cb, void *arg)
{
    resolve_tx t = {.ec = ec,
                    .tenant = tenant,
                    .order_id = order_id,
                    .principal = principal,
                    .to = to,
                    .out = out,
                    .cb = cb,
                    .arg = arg};
    int rc = cm_db_tx(db, NULL, 8, resolve_fn, &t);
    *outcome = t.outcome;
    return rc;
}

int inv_store_resolve_tx(cm_db *db, const inv_ev_ctx *ec, const char *tenant, const char *order_id,
                         int to, const char *principal, inv_resolve_outcome *outcome, inv_resv *out)
{
    resolve_tx t = {.ec = ec,
                    .tenant = tenant,
                    .order_id = order_id,
                    .principal = principal,
                    .to = to,
                    .out = out};
    int rc = resolve_fn(db, &t);
    *outcome = t.outcome;
    return rc;
}

/* the consumer's OrderPaid events of a batch (0008_confirm_batch.sql):
 * one statement confirms every ACTIVE reservation not yet due, one reads
 * them back, and each event's changes and ReservationConfirmed are written
 * in the events' order, as resolve_lines writes them for one */
int inv_store_confirm_batch(cm_db *db, inv_confirm_item *items, size_t n, const char *principal)
{
    if (n == 0)
        return 0;
    cm_buf cols[2];
    const char *p[3];
    cm_buf_columns_begin(cols, 2);
    for (size_t i = 0; i < n; i++) {
        cm_buf_array_text(&cols[0], items[i].tenant);
        cm_buf_array_text(&cols[1], items[i].order_id);
        items[i].left = 1;
    }
    int rc = cm_buf_columns_end(cols, 2, p);
    p[2] = principal ? principal : "";
    PGresult *r = NULL, *rs = NULL;
    if (rc == 0)
        rc = exec(db, "confirm batch",
                  "SELECT b.ev, b.ok::int, " CHANGE_COLS
                  " FROM inv_confirm_batch($1::text[], $2::text[], $3) WITH ORDINALITY "
                  "AS b(ev, ok, ch, n), LATERAL (SELECT (b.ch).*) AS c ORDER BY b.n",
                  3, p, &r);
    cm_buf_columns_free(cols, 2);
    if (rc)
        return rc;
    /* the confirmed ones, read back: one primary-key probe each */
    cm_buf_columns_begin(cols, 2);
    size_t nok = 0;
    for (int k = 0; k < PQntuples(r); k++) {
        if (!PQgetisnull(r, k, 2) || i64(r, k, 1) != 1)
            continue; /* a change row, or an event left alone */
        size_t i = (size_t)i64(r, k, 0) - 1;
        if (i >= n)
            continue;
        items[i].left = 0;
        cm_buf_array_text(&cols[0], items[i].tenant);
        cm_buf_array_text(&cols[1], items[i].order_id);
        nok++;
    }
    rc = cm_buf_columns_end(cols, 2, p);
    if (rc == 0 && nok)
        rc = exec(db, "read confirmed reservations",
                  "SELECT u.i, " RESV_COLS ", " RESV_LINE_COLS
                  " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(t, o, i) "
                  "CROSS JOIN LATERAL (SELECT * FROM reservation x WHERE x.tenant_id = u.t "
                  "AND x.order_id = u.o OFFSET 0) AS r "
                  "LEFT JOIN LATERAL (SELECT * FROM reservation_line y WHERE y.tenant_id = "
                  "r.tenant_id AND y.order_id = r.order_id OFFSET 0) AS l ON true "
                  "ORDER BY u.i, l.idx",
                  2, p, &rs);
    cm_buf_columns_free(cols, 2);
    inv_resv *resv = rc == 0 ? malloc(sizeof *resv) : NULL;
    if (rc == 0 && !resv)
        rc = CM_ENOMEM;
    /* each confirmed event in order: its change rows follow its marker,
     * its reservation's rows are the read-back's next (same order) */
    int nr = PQntuples(r), nrs = rs ? PQntuples(rs) : 0, at = 0;
    long long seq = 0;
    for (int k = 0; rc == 0 && k < nr; k++) {
        if (!PQgetisnull(r, k, 2) || i64(r, k, 1) != 1)
            continue;
        size_t i = (size_t)i64(r, k, 0) - 1;
        int end = k + 1;
        while (end < nr && !PQgetisnull(r, end, 2))
            end++;
        rc = emit_change_rows(db, items[i].ec, items[i].tenant, r, k + 1, end, 2, NULL, NULL);
        seq++;
        int to = at;
        while (to < nrs && i64(rs, to, 0) == seq)
            to++;
        if (rc == 0 && to == at)
            rc = CM_EINTERNAL; /* confirmed a moment ago, in this transaction */
        if (rc == 0) {
            parse_resv(rs, at, to, 1, resv);
            rc = inv_ev_reservation(db, items[i].ec, items[i].tenant, resv);
        }
        at = to;
        k = end - 1;
    }
    free(resv);
    PQclear(r);
    PQclear(rs);
    return rc;
}

typedef struct expire_tx {
    const inv_ev_ctx *ec;
    int limit, expired;
    inv_resv *scratch;
    inv_stock_cb cb;
    void *arg;
} expire_tx;

static int expire_fn(cm_db *db, void *arg)
{
    expire_tx *t = arg;
    char lim[16];
    snprintf(lim, sizeof lim, "%d", t->limit);
    const char *p[] = {lim};
    PGresult *r = NULL;
    /* skip locked: two sweepers (two replicas) never take the same row, and
     * the row lock rechecks state = 1, so a reservation confirmed or
     * released meanwhile is left alone */
    int rc = exec(db, "due reservations",
                  "SELECT tenant_id, order_id FROM reservation WHERE state = 1 AND expires_at <= "
                  "now() ORDER BY expires_at LIMIT $1::int FOR UPDATE SKIP LOCKED",
                  1, p, &r);
    if (rc)
        return rc;
    t->expired = 0;
    int n = PQntuples(r);
    for (int i = 0; i < n && rc == 0; i++) {
        rc = resolve_lines(db, t->ec, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), INV_EXPIRED,
                           "system", t->scratch, t->cb, t->arg);
        if (rc == 0)
            t->expired++;
    }
    PQclear(r);
    return rc;
}

int inv_store_expire_due(cm_db *db, const inv_ev_ctx *ec, int limit, int *expired, inv_stock_cb cb,
                         void *arg)
{
    expire_tx t = {.ec = ec, .limit = limit, .cb = cb, .arg = arg};
    t.scratch = malloc(sizeof *t.scratch);
    if (!t.scratch)
        return CM_ENOMEM;
    int rc = cm_db_tx(db, NULL, 8, expire_fn, &t);
    free(t.scratch);
    *expired = rc == 0 ? t.expired : 0;
    return rc;
}

/* ---- admin ---- */

typedef struct admin_tx {
    const inv_admin_req *q;
    int verdict;
    inv_change *change;
    inv_level *level;
    inv_stock_cb cb;
    void *arg;
} admin_tx;

/* a set that would create a sku: its tenant's row of quota_usage locked
 * and compared with the quota, so concurrent creators queue on the row
 * and none overshoots (the insert's trigger adds the sku to the row, in
 * this transaction; README: quotas). an existing sku costs one index probe
 * and takes no lock (*exists = 1). CM_ESTATE with INV_A_QUOTA when the
 * tenant has its quota's worth already */
static int sku_quota_check(cm_db *db, const inv_admin_req *q, int *exists, int *verdict)
{
    const char *p2[] = {q->tenant, q->sku};
    PGresult *r = NULL;
    int rc =
        exec(db, "find sku", "SELECT 1 FROM stock WHERE tenant_id = $1 AND sku = $2", 2, p2, &r);
    if (rc)
        return rc;
    *exists = PQntuples(r) == 1;
    PQclear(r);
    if (*exists)
        return 0;
    const char *p1[] = {q->tenant};
    rc = exec(db, "lock sku quota",
              "INSERT INTO quota_usage AS u (tenant_id, quota, used) VALUES ($1, 'skus', 0) "
              "ON CONFLICT (tenant_id, quota) DO UPDATE SET used = u.used RETURNING used",
              1, p1, &r);
    if (rc)
        return rc;
    long long used = i64(r, 0, 0);
    PQclear(r);
    if (used < q->sku_quota)
        return 0;
    *verdict = INV_A_QUOTA;
    return CM_ESTATE;
}

static int admin_fn(cm_db *db, void *arg)
{
    admin_tx *t = arg;
    const inv_admin_req *q = t->q;
    const char *p2[] = {q->tenant, q->sku};
    PGresult *r = NULL;
    int rc;
    int exists = 1;
    if (q->kind == INV_KIND_SET && (rc = sku_quota_check(db, q, &exists, &t->verdict)))
        return rc;
    if (!exists) {
        /* DO NOTHING: a concurrent creator of this sku committed it first
         * (and the trigger then counts nothing) */
        rc = exec(db, "create stock",
                  "INSERT INTO stock (tenant_id, sku, available, reserved, sold, on_hand, version) "
                  "VALUES ($1, $2, 0, 0, 0, 0, 0) ON CONFLICT DO NOTHING",
                  2, p2, NULL);
        if (rc)
            return rc;
    }
    /* the row lock first: two calls with one request_id then serialise, and
     * the second sees the first's audit row */
    rc = exec(db, "lock stock",
              "SELECT available, version FROM stock WHERE tenant_id = $1 AND sku = $2 FOR UPDATE",
              2, p2, &r);
    if (rc)
        return rc;
    int found = PQntuples(r) == 1;
    int64_t avail = found ? i64(r, 0, 0) : 0, version = found ? i64(r, 0, 1) : 0;
    PQclear(r);
    const char *pr[] = {q->tenant, q->request_id};
    rc = exec(db, "find request",
              "SELECT request_body, " CHANGE_COLS
              " FROM stock_change WHERE tenant_id = $1 AND request_id = $2",
              2, pr, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 1) {
        int same = strcmp(PQgetvalue(r, 0, 0), q->body) == 0;
        if (same)
            parse_change(r, 0, 1, t->change);
        PQclear(r);
        t->verdict = same ? INV_A_REPLAY : INV_A_REUSED;
        if (same && (rc = inv_store_get_stock(db, q->tenant, t->change->level.sku, t->level)))
            return rc;
        return CM_ESTATE; /* nothing to write: roll back */
    }
    PQclear(r);
    if (!found) {
        t->verdict = INV_A_NOT_FOUND;
        return CM_ESTATE;
    }
    if (q->expected_version > 0 && q->expected_version != version) {
        t->verdict = INV_A_VERSION;
        return CM_ESTATE;
    }
    int64_t delta;
    if (inv_admin_delta(q->kind, avail, q->value, &delta)) {
        t->verdict = INV_A_NEGATIVE;
        return CM_ESTATE;
    }
    char kind[8], d[32];
    snprintf(kind, sizeof kind, "%d", q->kind);
    snprintf(d, sizeof d, "%lld", (long long)delta);
    const char *pa[] = {q->tenant, q->sku, kind, d, q->principal ? q->principal : ""};
    rc = exec(db, "apply admin change",
              "SELECT " CHANGE_COLS
              " FROM inv_apply($1, $2, $3::int, $4::bigint, 0, 0, '', $5) AS c",
              5, pa, &r);
    if (rc)
        return rc;
    parse_change(r, 0, 0, t->change);
    PQclear(r);
    const char *pu[] = {t->change->change_id, q->request_id, q->body, q->reason, q->actor};
    rc = exec(db, "record admin request",
              "UPDATE stock_change SET request_id = $2, request_body = $3, reason = $4, actor = $5 "
              "WHERE change_id = $1::uuid",
              5, pu, NULL);
    if (rc)
        return rc;
    snprintf(t->change->request_id, sizeof t->change->request_id, "%s", q->request_id);
    snprintf(t->change->reason, sizeof t->change->reason, "%s", q->reason);
    snprintf(t->change->actor, sizeof t->change->actor, "%s", q->actor);
    *t->level = t->change->level;
    t->verdict = INV_A_APPLIED;
    rc = inv_ev_stock_changed(db, q->ev, q->tenant, t->change);
    if (rc)
        return rc;
    int64_t before = t->level->available - delta;
    if (inv_sold_out_now(before, t->level->available))
        rc = inv_ev_stock_edge(db, q->ev, q->tenant, t->level, 0, NULL);
    else if (inv_back_in_stock(before, t->level->available))
        rc = inv_ev_stock_edge(db, q->ev, q->tenant, t->level, 1, NULL);
    return rc;
}

int inv_store_admin(cm_db *db, const inv_admin_req *q, int *verdict, inv_change *change,
                    inv_level *level, inv_stock_cb cb, void *arg)
{
    admin_tx t = {.q = q, .verdict = -1, .change = change, .level = level, .cb = cb, .arg = arg};
    int rc = cm_db_tx(db, NULL, 8, admin_fn, &t);
    if (rc == CM_ESTATE && t.verdict >= 0)
        rc = 0;
    *verdict = t.verdict;
    if (rc == 0 && t.verdict == INV_A_APPLIED && cb && level->available > 0)
        cb(arg, q->tenant, q->sku, 1);
    return rc;
}

/* ---- invariants ---- */

typedef struct check_tx {
    const char *tenant;
    const char *skus;
    inv_breach *out;
    size_t cap, total;
    int64_t checked, at_ms;
} check_tx;

static int check_fn(cm_db *db, void *arg)
{
    check_tx *t = arg;
    const char *p[] = {t->tenant, t->skus};
    PGresult *r = NULL;
    /* optional filters ($1, $2 NULL: every tenant, every sku): planned per
     * call, not through exec's prepared statements, whose generic plan
     * could scan every tenant's stock for one sku's check */
    int rc = cm_db_exec(
        db, "check invariants",
        "WITH s AS (SELECT * FROM stock WHERE ($1::text IS NULL OR tenant_id = $1) "
        "  AND ($2::text[] IS NULL OR sku = ANY($2::text[]))), "
        "l AS (SELECT x.tenant_id, x.sku, sum(x.quantity) FILTER (WHERE r.state = 1) AS act, "
        "  sum(x.quantity) FILTER (WHERE r.state = 2) AS conf FROM reservation_line x "
        "  JOIN reservation r USING (tenant_id, order_id) JOIN s USING (tenant_id, sku) "
        "  GROUP BY 1, 2), "
        "a AS (SELECT c.tenant_id, c.sku, sum(c.available_delta) AS da, "
        "  sum(c.reserved_delta) AS dr, sum(c.sold_delta) AS ds FROM stock_change c "
        "  JOIN s USING (tenant_id, sku) GROUP BY 1, 2), "
        "v AS (SELECT s.tenant_id, s.sku, x.inv, x.expected, x.actual, x.fs FROM s "
        "  LEFT JOIN l USING (tenant_id, sku) LEFT JOIN a USING (tenant_id, sku) "
        "  CROSS JOIN LATERAL (VALUES "
        "   (1, (s.available + s.reserved + s.sold)::numeric, s.on_hand::numeric, ''), "
        "   (2, 0::numeric, least(s.available, s.reserved, s.sold)::numeric, ''), "
        "   (3, coalesce(l.act, 0), s.reserved::numeric, ''), "
        "   (4, coalesce(l.conf, 0), s.sold::numeric, ''), "
        "   (5, coalesce(a.da, 0), s.available::numeric, ''), "
        "   (5, coalesce(a.dr, 0), s.reserved::numeric, ''), "
        "   (5, coalesce(a.ds, 0), s.sold::numeric, '')) AS x(inv, expected, actual, fs) "
        "  WHERE CASE WHEN x.inv = 2 THEN x.actual < 0 ELSE x.expected <> x.actual END "
        "  UNION ALL SELECT s.tenant_id, s.sku, 6, f.sale_stock, f.reserved + f.sold, "
        "   f.flash_sale_id FROM s JOIN flash_sale f USING (tenant_id, sku) "
        "   WHERE f.reserved + f.sold > f.sale_stock) "
        "SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM v), " MS(
            "now()") ", "
                     "  v.inv, v.expected, v.actual, v.fs, s.sku, s.available, s.reserved, s.sold, "
                     "  s.on_hand, s.version, " MS(
                         "s.updated_at") " FROM (SELECT 1) AS one "
                                         "  LEFT JOIN (v JOIN s USING (tenant_id, sku)) ON true "
                                         "  ORDER BY v.tenant_id, v.sku, v.inv LIMIT 1001",
        2, p, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    t->checked = i64(r, 0, 0);
    t->total = (size_t)i64(r, 0, 1);
    t->at_ms = i64(r, 0, 2);
    size_t k = 0;
    for (int i = 0; i < n && k < t->cap; i++) {
        if (PQgetisnull(r, i, 3))
            continue;
        inv_breach *b = &t->out[k++];
        memset(b, 0, sizeof *b);
        b->invariant = (int)i64(r, i, 3);
        b->expected = i64(r, i, 4);
        b->actual = i64(r, i, 5);
        cpy(b->flash_sale_id, sizeof b->flash_sale_id, r, i, 6);
        parse_level(r, i, 7, &b->level);
    }
    PQclear(r);
    return 0;
}

int inv_store_check(cm_db *db, const char *tenant, const char *const *skus, size_t nskus,
                    inv_breach *out, size_t cap, size_t *total, int64_t *checked, int64_t *at_ms)
{
    cm_buf b = {0};
    if (nskus) {
        cm_buf_array_begin(&b);
        for (size_t i = 0; i < nskus; i++)
            cm_buf_array_text(&b, skus[i]);
        cm_buf_array_end(&b);
        if (b.oom) {
            free(b.p);
            return CM_ENOMEM;
        }
    }
    check_tx t = {.tenant = tenant, .skus = b.p, .out = out, .cap = cap};
    /* one snapshot for every table the check reads */
    int rc = cm_db_tx(db, "REPEATABLE READ", 3, check_fn, &t);
    free(b.p);
    *total = t.total;
    *checked = t.checked;
    *at_ms = t.at_ms;
    return rc;
}

/* ---- flash sales ---- */

#define SALE_COLS                                                                                  \
    "flash_sale_id, sku, " MS("starts_at") ", " MS(                                                \
        "ends_at") ", sale_stock, per_buyer_limit, "                                               \
                   "reserved, sold, version, " MS("created_at") ", " MS("updated_at") ", " MS(     \
                       "now()")

static void parse_sale(const PGresult *r, int row, inv_sale *s)
{
    cpy(s->flash_sale_id, sizeof s->flash_sale_id, r, row, 0);
    cpy(s->sku, sizeof s->sku, r, row, 1);
    s->starts_ms = i64(r, row, 2);
    s->ends_ms = i64(r, row, 3);
    s->sale_stock = i64(r, row, 4);
    s->per_buyer_limit = i64(r, row, 5);
    s->reserved = i64(r, row, 6);
    s->sold = i64(r, row, 7);
    s->version = i64(r, row, 8);
    s->created_ms = i64(r, row, 9);
    s->updated_ms = i64(r, row, 10);
    s->now_ms = i64(r, row, 11);
}

int inv_store_sale_get(cm_db *db, const char *tenant, const char *id, inv_sale *out)
{
    const char *p[] = {tenant, id};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "get flash sale",
                        "SELECT " SALE_COLS
                        " FROM flash_sale WHERE tenant_id = $1 AND flash_sale_id = $2",
                        2, p, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return CM_ENOTFOUND;
    }
    parse_sale(r, 0, out);
    PQclear(r);
    return 0;
}

typedef struct sale_tx {
    const inv_sale_req *q;
    int verdict, refusal;
    int64_t held;
    inv_sale *out;
} sale_tx;

/* 1 when another sale of the sku (not except_id) overlaps [st, en) */
static int sale_overlaps(cm_db *db, const inv_sale_req *q, const char *st, const char *en,
                         const char *except_id, int *overlap)
{
    const char *po[] = {q->tenant, q->sku, st, en, except_id ? except_id : ""};
    PGresult *r = NULL;
    int rc = exec(db, "sale overlap",
                  "SELECT 1 FROM flash_sale WHERE tenant_id = $1 AND sku = $2 "
                  "AND flash_sale_id <> $5 "
                  "AND starts_at < to_timestamp($4::bigint / 1000.0) "
                  "AND ends_at > to_timestamp($3::bigint / 1000.0)",
                  5, po, &r);
    if (rc)
        return rc;
    *overlap = PQntuples(r) > 0;
    PQclear(r);
    return 0;
}

static int record_sale_request(cm_db *db, const inv_sale_req *q, const char *id)
{
    const char *pq[] = {q->tenant, q->request_id, q->body, id};
    return exec(db, "record sale request",
                "INSERT INTO flash_sale_request (tenant_id, request_id, request_body, "
                "flash_sale_id) VALUES ($1, $2, $3, $4)",
                4, pq, NULL);
}

/* an update of an existing sale: locked (the sku's stock row first, then
 * the sale row, the order the flash reserve path takes them), decided by
 * inv_plan_sale_update against the stored sale and the clock of the
 * database, written with the CHECKs of the table as the last word. a
 * running sale whose sale_stock change makes it full or frees it gets its
 * SoldOut / BackInStock. */
static int sale_update(cm_db *db, sale_tx *t, const char *st, const char *en, const char *stock,
                       const char *lim)
{
    const inv_sale_req *q = t->q;
    const char *pk[] = {q->tenant, q->sku};
    int rc = exec(db, "lock sale stock",
                  "SELECT 1 FROM stock WHERE tenant_id = $1 AND sku = $2 FOR UPDATE", 2, pk, NULL);
    if (rc)
        return rc;
    const char *pf[] = {q->tenant, q->flash_sale_id};
    PGresult *r = NULL;
    rc = exec(db, "lock flash sale",
              "SELECT " SALE_COLS " FROM flash_sale WHERE tenant_id = $1 AND flash_sale_id = $2 "
              "FOR UPDATE",
              2, pf, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        t->verdict = INV_S_NOT_FOUND;
        return 0;
    }
    inv_sale cur;
    parse_sale(r, 0, &cur);
    PQclear(r);
    if (q->expected_version > 0 && q->expected_version != cur.version) {
        t->verdict = INV_S_VERSION;
        return 0;
    }
    t->held = cur.reserved + cur.sold;
    inv_sale_cfg was = {.sku = cur.sku,
                        .starts_ms = cur.starts_ms,
                        .ends_ms = cur.ends_ms,
                        .sale_stock = cur.sale_stock,
                        .per_buyer_limit = cur.per_buyer_limit};
    inv_sale_cfg next = {.sku = q->sku,
                         .starts_ms = q->starts_ms,
                         .ends_ms = q->ends_ms,
                         .sale_stock = q->sale_stock,
                         .per_buyer_limit = q->per_buyer_limit};
    t->refusal = (int)inv_plan_sale_update(&was, t->held, &next, cur.now_ms);
    if (t->refusal != INV_SU_OK) {
        t->verdict = INV_S_REFUSED;
        return 0;
    }
    int overlap = 0;
    if ((rc = sale_overlaps(db, q, st, en, q->flash_sale_id, &overlap)) != 0)
        return rc;
    if (overlap) {
        t->verdict = INV_S_OVERLAP;
        return 0;
    }
    const char *pu[] = {q->tenant, q->flash_sale_id, st, en, stock, lim};
    rc = exec(db, "update sale",
              "UPDATE flash_sale SET starts_at = to_timestamp($3::bigint / 1000.0), "
              "ends_at = to_timestamp($4::bigint / 1000.0), sale_stock = $5::bigint, "
              "per_buyer_limit = $6::bigint, version = version + 1, updated_at = now() "
              "WHERE tenant_id = $1 AND flash_sale_id = $2 RETURNING " SALE_COLS,
              6, pu, &r);
    if (rc)
        return rc;
    parse_sale(r, 0, t->out);
    PQclear(r);
    if ((rc = record_sale_request(db, q, q->flash_sale_id)) != 0)
        return rc;
    t->verdict = INV_S_UPDATED;
    int running = cur.now_ms >= cur.starts_ms && cur.now_ms < t->out->ends_ms;
    int edge = inv_sale_stock_edge(t->held, cur.sale_stock, t->out->sale_stock);
    if (!running || edge < 0)
        return 0;
    inv_level l;
    rc = inv_store_get_stock(db, q->tenant, q->sku, &l);
    if (rc == CM_ENOTFOUND) {
        /* a sale of a sku never stocked: its counters are all 0 */
        memset(&l, 0, sizeof l);
        snprintf(l.sku, sizeof l.sku, "%s", q->sku);
        rc = 0;
    }
    return rc ? rc : inv_ev_stock_edge(db, q->ev, q->tenant, &l, edge, q->flash_sale_id);
}

static int sale_fn(cm_db *db, void *arg)
{
    sale_tx *t = arg;
    const inv_sale_req *q = t->q;
    /* one sku's sales are configured one at a time, so the overlap check
     * holds across replicas */
    const char *pk[] = {q->tenant, q->sku};
    int rc = exec(db, "lock sku sales", "SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2))",
                  2, pk, NULL);
    if (rc)
        return rc;
    const char *pr[] = {q->tenant, q->request_id};
    PGresult *r = NULL;
    rc = exec(db, "find sale request",
              "SELECT request_body, flash_sale_id FROM flash_sale_request "
              "WHERE tenant_id = $1 AND request_id = $2",
              2, pr, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 1) {
        int same = strcmp(PQgetvalue(r, 0, 0), q->body) == 0;
        char id[40];
        cpy(id, sizeof id, r, 0, 1);
        PQclear(r);
        t->verdict = same ? INV_S_REPLAY : INV_S_REUSED;
        return same ? inv_store_sale_get(db, q->tenant, id, t->out) : 0;
    }
    PQclear(r);
    char st[24], en[24], stock[24], lim[24];
    snprintf(st, sizeof st, "%lld", (long long)q->starts_ms);
    snprintf(en, sizeof en, "%lld", (long long)q->ends_ms);
    snprintf(stock, sizeof stock, "%lld", (long long)q->sale_stock);
    snprintf(lim, sizeof lim, "%lld", (long long)q->per_buyer_limit);
    if (q->flash_sale_id && q->flash_sale_id[0])
        return sale_update(db, t, st, en, stock, lim);
    int overlap = 0;
    if ((rc = sale_overlaps(db, q, st, en, NULL, &overlap)) != 0)
        return rc;
    if (overlap) {
        t->verdict = INV_S_OVERLAP;
        return 0;
    }
    /* the tenant's sales not yet ended, counted one creator at a time (this
     * lock after the sku's: always in that order). a count, not a counter
     * row: sales end by time, with no write (README: quotas); the index
     * flash_sale_ends makes it O(the sales not yet ended) */
    const char *pt[] = {q->tenant};
    rc = exec(db, "lock sale quota",
              "SELECT pg_advisory_xact_lock(hashtext('commerce.inventory.quota.flash_sales'), "
              "hashtext($1))",
              1, pt, NULL);
    if (rc == 0)
        rc = exec(db, "count sales",
                  "SELECT count(*) FROM flash_sale WHERE tenant_id = $1 AND ends_at > now()", 1, pt,
                  &r);
    if (rc)
        return rc;
    long long open_sales = i64(r, 0, 0);
    PQclear(r);
    if (open_sales >= q->sale_quota) {
        t->verdict = INV_S_QUOTA;
        return 0;
    }
    const char *pi[] = {q->tenant, q->sku, st, en, stock, lim, q->request_id, q->body};
    rc = exec(db, "create sale",
              "INSERT INTO flash_sale (tenant_id, flash_sale_id, sku, starts_at, ends_at, "
              "sale_stock, per_buyer_limit, request_id, request_body) VALUES ($1, uuid7()::text, "
              "$2, to_timestamp($3::bigint / 1000.0), to_timestamp($4::bigint / 1000.0), "
              "$5::bigint, $6::bigint, $7, $8) RETURNING " SALE_COLS,
              8, pi, &r);
    if (rc)
        return rc;
    parse_sale(r, 0, t->out);
    PQclear(r);
    rc = record_sale_request(db, q, t->out->flash_sale_id);
    t->verdict = INV_S_CREATED;
    return rc;
}

int inv_store_sale_configure(cm_db *db, const inv_sale_req *q, int *verdict, int *refusal,
                             int64_t *held, inv_sale *out)
{
    sale_tx t = {.q = q, .verdict = -1, .out = out};
    int rc = cm_db_tx(db, NULL, 8, sale_fn, &t);
    /* a refusal wrote nothing; commit or roll back, it is the same */
    *verdict = t.verdict;
    *refusal = t.refusal;
    *held = t.held;
    return rc;
}

/* ---- lists ---- */

/* a postgres int[] literal ("{1,3}") of the values; malloc'd */
static char *int_array(const int *v, size_t n)
{
    cm_buf b = {0};
    cm_buf_array_begin(&b);
    for (size_t i = 0; i < n; i++)
        cm_buf_array_int(&b, v[i]);
    cm_buf_array_end(&b);
    if (b.oom) {
        cm_buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* 1 when the row id exists for the tenant: a cursor must point at a row */
static int cursor_exists(cm_db *db, const char *what, const char *sql, const char *tenant,
                         const char *id, int *found)
{
    const char *p[] = {tenant, id};
    PGresult *r = NULL;
    int rc = exec(db, what, sql, 2, p, &r);
    if (rc)
        return rc;
    *found = PQntuples(r) > 0;
    PQclear(r);
    return 0;
}

int inv_store_list_changes(cm_db *db, const inv_change_query *q, inv_change *out, size_t cap,
                           size_t *n, int *more)
{
    *n = 0;
    *more = 0;
    if (q->after_id) {
        int found = 0;
        /* change ids are uuids: cast in sql only after the text check */
        int rc = cursor_exists(db, "find change cursor",
                               "SELECT 1 FROM stock_change WHERE tenant_id = $1 "
                               "AND change_id::text = $2",
                               q->tenant, q->after_id, &found);
        if (rc)
            return rc;
        if (!found)
            return CM_ENOTFOUND;
    }
    char *kinds = int_array(q->kinds, q->nkinds);
    if (!kinds)
        return CM_ENOMEM;
    char from[24], to[24], lim[24];
    snprintf(from, sizeof from, "%lld", (long long)q->from_us);
    snprintf(to, sizeof to, "%lld", (long long)q->to_us);
    snprintf(lim, sizeof lim, "%zu", cap + 1);
    const char *p[] = {
        q->tenant,   q->sku, q->order_id, kinds, q->has_from ? from : NULL, q->has_to ? to : NULL,
        q->after_id, lim};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "list stock changes",
                        "SELECT " CHANGE_COLS " FROM stock_change c WHERE tenant_id = $1 "
                        "AND ($2 = '' OR sku = $2) AND ($3 = '' OR order_id = $3) "
                        "AND (cardinality($4::int[]) = 0 OR kind = ANY($4::int[])) "
                        "AND ($5::bigint IS NULL OR occurred_at >= "
                        "timestamptz 'epoch' + $5::bigint * interval '1 microsecond') "
                        "AND ($6::bigint IS NULL OR occurred_at < "
                        "timestamptz 'epoch' + $6::bigint * interval '1 microsecond') "
                        "AND ($7::uuid IS NULL OR (occurred_at, change_id) < "
                        "(SELECT x.occurred_at, x.change_id FROM stock_change x "
                        "WHERE x.tenant_id = $1 AND x.change_id = $7::uuid)) "
                        "ORDER BY occurred_at DESC, change_id DESC LIMIT $8::bigint",
                        8, p, &r);
    free(kinds);
    if (rc)
        return rc;
    size_t rows = (size_t)PQntuples(r);
    *more = rows > cap;
    for (size_t i = 0; i < rows && i < cap; i++)
        parse_change(r, (int)i, 0, &out[(*n)++]);
    PQclear(r);
    return 0;
}

#define SALE_STATE                                                                                 \
    "(CASE WHEN now() < starts_at THEN 1 WHEN now() >= ends_at THEN 4 "                            \
    "WHEN reserved + sold >= sale_stock THEN 3 ELSE 2 END)"

int inv_store_list_sales(cm_db *db, const char *tenant, const char *sku, const int *states,
                         size_t nstates, const char *after_id, inv_sale *out, size_t cap, size_t *n,
                         int *more)
{
    *n = 0;
    *more = 0;
    if (after_id) {
        int found = 0;
        int rc = cursor_exists(db, "find sale cursor",
                               "SELECT 1 FROM flash_sale WHERE tenant_id = $1 "
                               "AND flash_sale_id = $2",
                               tenant, after_id, &found);
        if (rc)
            return rc;
        if (!found)
            return CM_ENOTFOUND;
    }
    char *st = int_array(states, nstates);
    if (!st)
        return CM_ENOMEM;
    char lim[24];
    snprintf(lim, sizeof lim, "%zu", cap + 1);
    const char *p[] = {tenant, sku, st, after_id, lim};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "list flash sales",
                        "SELECT " SALE_COLS " FROM flash_sale WHERE tenant_id = $1 "
                        "AND ($2 = '' OR sku = $2) "
                        "AND (cardinality($3::int[]) = 0 OR " SALE_STATE " = ANY($3::int[])) "
                        "AND ($4::text IS NULL OR (starts_at, flash_sale_id) < "
                        "(SELECT x.starts_at, x.flash_sale_id FROM flash_sale x "
                        "WHERE x.tenant_id = $1 AND x.flash_sale_id = $4::text)) "
                        "ORDER BY starts_at DESC, flash_sale_id DESC LIMIT $5::bigint",
                        5, p, &r);
    free(st);
    if (rc)
        return rc;
    size_t rows = (size_t)PQntuples(r);
    *more = rows > cap;
    for (size_t i = 0; i < rows && i < cap; i++)
        parse_sale(r, (int)i, &out[(*n)++]);
    PQclear(r);
    return 0;
}

/* ---- cost price ---- */

/* the columns of inv_set_cost's result from change_id on, as for
 * inv_store_get_cost's changes */
static void parse_cost(const PGresult *r, int row, int c0, inv_cost_change *c)
{
    cpy(c->change_id, sizeof c->change_id, r, row, c0);
    cpy(c->sku, sizeof c->sku, r, row, c0 + 1);
    c->unit_cost = i64(r, row, c0 + 2);
    cpy(c->currency, sizeof c->currency, r, row, c0 + 3);
    c->previous_cost = i64(r, row, c0 + 4);
    cpy(c->previous_currency, sizeof c->previous_currency, r, row, c0 + 5);
    c->cost_version = i64(r, row, c0 + 6);
    cpy(c->request_id, sizeof c->request_id, r, row, c0 + 7);
    cpy(c->reason, sizeof c->reason, r, row, c0 + 8);
    cpy(c->actor, sizeof c->actor, r, row, c0 + 9);
    cpy(c->principal, sizeof c->principal, r, row, c0 + 10);
    c->occurred_ms = i64(r, row, c0 + 11);
}

int inv_store_set_cost(cm_db *db, const inv_cost_req *q, int *verdict, inv_cost_change *change)
{
    char cost[32], expected[32];
    snprintf(cost, sizeof cost, "%lld", (long long)q->unit_cost);
    snprintf(expected, sizeof expected, "%lld", (long long)q->expected_version);
    const char *p[] = {
        q->tenant,     q->sku,  cost,      q->currency, expected,
        q->request_id, q->body, q->reason, q->actor,    q->principal ? q->principal : ""};
    int rc = CM_EEXIST;
    /* two calls racing with one new request_id: the second's insert hits
     * the unique index; run it again and it replays the first */
    for (int attempt = 0; attempt < 2 && rc == CM_EEXIST; attempt++) {
        PGresult *r = NULL;
        rc = exec(db, "set cost",
                  "SELECT * FROM inv_set_cost($1, $2, $3::bigint, $4, $5::bigint, $6, $7, "
                  "$8, $9, $10)",
                  10, p, &r);
        if (rc)
            continue;
        *verdict = (int)i64(r, 0, 0);
        if (*verdict <= INV_A_REPLAY)
            parse_cost(r, 0, 1, change);
        PQclear(r);
    }
    return rc;
}

int inv_store_get_cost(cm_db *db, const char *tenant, const char *sku, inv_cost_change *cur,
                       inv_cost_change *changes, size_t cap, size_t *n)
{
    const char *p[] = {tenant, sku};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "get cost",
                        "SELECT unit_cost, cost_currency, cost_version FROM stock "
                        "WHERE tenant_id = $1 AND sku = $2",
                        2, p, &r);
    if (rc)
        return rc;
    if (PQntuples(r) != 1) {
        PQclear(r);
        return CM_ENOTFOUND;
    }
    memset(cur, 0, sizeof *cur);
    snprintf(cur->sku, sizeof cur->sku, "%s", sku);
    cur->unit_cost = i64(r, 0, 0);
    cpy(cur->currency, sizeof cur->currency, r, 0, 1);
    cur->cost_version = i64(r, 0, 2);
    PQclear(r);
    char lim[24];
    snprintf(lim, sizeof lim, "%zu", cap);
    const char *pl[] = {tenant, sku, lim};
    rc = cm_db_read(db, "get cost changes",
                    "SELECT change_id::text, sku, unit_cost, currency, previous_cost, "
                    "previous_currency, cost_version, request_id, reason, actor, principal, "
                    "(extract(epoch FROM occurred_at) * 1000)::bigint FROM cost_change "
                    "WHERE tenant_id = $1 AND sku = $2 ORDER BY cost_version DESC LIMIT $3::int",
                    3, pl, &r);
    if (rc)
        return rc;
    *n = (size_t)PQntuples(r);
    for (size_t i = 0; i < *n; i++)
        parse_cost(r, (int)i, 0, &changes[i]);
    PQclear(r);
    return 0;
}
