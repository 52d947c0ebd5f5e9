/* the order service's only SQL: see ord_store.h */
#include "ord_store.h"

#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_buf.h"
#include "cm_outbox.h"
#include "ord_events.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MS(x) "(extract(epoch FROM " x ") * 1000)::bigint"
#define MS0(x) "coalesce(" MS(x) ", 0)"
#define TS(p) "to_timestamp(" p "::bigint / 1000.0)"

/* every column of an order, in parse_order's order */
// clang-format off
#define ORDER_COLS                                                                                 \
    "order_id, request_id, state, buyer_id, merchant_id, channel_id, currency, total_amount, "     \
    "refunded_amount, flash_sale::int, external_ref, array_to_string(line_sku, ','), "             \
    "array_to_string(line_qty, ','), array_to_string(line_price, ','), "                           \
    "array_to_string(line_flash_sale, ','), array_to_string(line_refunded_qty, ','), "             \
    "array_to_string(line_refunded_amount, ','), "                                                 \
    MS("created_at") ", (extract(epoch FROM updated_at) * 1000)::bigint, (extract(epoch FROM payment_deadline) * 1000)::bigint, "                        \
    MS("reservation_expires_at") ", " MS0("cancelled_at") ", cancel_reason, cancel_note, "         \
    MS0("completed_at") ", coalesce(payment_id, ''), coalesce(pay_amount, 0), "                    \
    "coalesce(pay_provider, ''), coalesce(pay_reference, ''), "                                    \
    MS0("paid_at") ", " MS0("pay_recorded_at") ", coalesce(carrier, ''), "                         \
    "coalesce(tracking_number, ''), " MS0("shipped_at") ", version, body_hash, "                   \
    "coalesce(payment_hash, ''), completed_by, "                                                   \
    "coalesce(array_to_string(line_unit_cost, ','), ''), "                                         \
    "coalesce(array_to_string(line_cost_reversed, ','), '')"
enum { ORDER_NCOLS = 40, COL_BODY_HASH = 35, COL_PAYMENT_HASH = 36 };

#define REFUND_COLS                                                                                \
    "refund_id, scope, amount, array_to_string(line_sku, ','), array_to_string(line_qty, ','), "   \
    "array_to_string(line_amount, ','), reason, (extract(epoch FROM created_at) * 1000)::bigint, order_id, body_hash, " \
    "coalesce(array_to_string(line_cost, ','), ''), cost_reversed"
// clang-format on

/* ---- small helpers ---- */

static int64_t i64(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static void cpy(char *dst, size_t cap, const PGresult *r, int row, int col)
{
    snprintf(dst, cap, "%s", PQgetvalue(r, row, col));
}

/* every statement here is a fixed text (a few with a choice of suffix):
 * prepared once per connection, by its own text */
static int exec(cm_db *db, const char *what, const char *sql, int n, const char *const *p,
                PGresult **out)
{
    return cm_db_exec_auto(db, what, sql, n, p, out);
}

/* the i-th comma-separated field of s into dst (fields never hold commas:
 * skus and flash sale ids are [A-Za-z0-9._:-]) */
static void field_str(const char *s, size_t i, char *dst, size_t cap)
{
    while (i > 0 && *s) {
        if (*s++ == ',')
            i--;
    }
    size_t n = 0;
    while (s[n] && s[n] != ',')
        n++;
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = 0;
}

static size_t split_i64(const char *s, int64_t *out, size_t max)
{
    size_t n = 0;
    if (!*s)
        return 0;
    while (n < max) {
        char *end = NULL;
        out[n++] = strtoll(s, &end, 10);
        if (*end != ',')
            break;
        s = end + 1;
    }
    return n;
}

static void parse_order(const PGresult *r, int row, ord_order *o)
{
    memset(o, 0, sizeof *o);
    cpy(o->order_id, sizeof o->order_id, r, row, 0);
    cpy(o->request_id, sizeof o->request_id, r, row, 1);
    o->state = (int)i64(r, row, 2);
    cpy(o->buyer_id, sizeof o->buyer_id, r, row, 3);
    cpy(o->merchant_id, sizeof o->merchant_id, r, row, 4);
    cpy(o->channel_id, sizeof o->channel_id, r, row, 5);
    cpy(o->currency, sizeof o->currency, r, row, 6);
    o->total = i64(r, row, 7);
    o->refunded = i64(r, row, 8);
    o->flash = (int)i64(r, row, 9);
    cpy(o->external_ref, sizeof o->external_ref, r, row, 10);
    int64_t v[ORD_LINES_MAX];
    const char *skus = PQgetvalue(r, row, 11);
    size_t n = split_i64(PQgetvalue(r, row, 12), v, ORD_LINES_MAX);
    o->nlines = n;
    for (size_t i = 0; i < n; i++) {
        field_str(skus, i, o->lines[i].sku, sizeof o->lines[i].sku);
        o->lines[i].qty = v[i];
        field_str(PQgetvalue(r, row, 14), i, o->lines[i].flash_sale_id,
                  sizeof o->lines[i].flash_sale_id);
    }
    split_i64(PQgetvalue(r, row, 13), v, n);
    for (size_t i = 0; i < n; i++) {
        o->lines[i].unit_price = v[i];
        /* cannot overflow: checked when the order was created */
        o->lines[i].line_total = o->lines[i].qty * v[i];
    }
    split_i64(PQgetvalue(r, row, 15), v, n);
    for (size_t i = 0; i < n; i++)
        o->lines[i].refunded_qty = v[i];
    split_i64(PQgetvalue(r, row, 16), v, n);
    for (size_t i = 0; i < n; i++)
        o->lines[i].refunded_amount = v[i];
    o->created_ms = i64(r, row, 17);
    o->updated_ms = i64(r, row, 18);
    o->deadline_ms = i64(r, row, 19);
    o->resv_expires_ms = i64(r, row, 20);
    o->cancelled_ms = i64(r, row, 21);
    o->cancel_reason = (int)i64(r, row, 22);
    cpy(o->cancel_note, sizeof o->cancel_note, r, row, 23);
    o->completed_ms = i64(r, row, 24);
    cpy(o->payment_id, sizeof o->payment_id, r, row, 25);
    o->pay_amount = i64(r, row, 26);
    cpy(o->provider, sizeof o->provider, r, row, 27);
    cpy(o->provider_ref, sizeof o->provider_ref, r, row, 28);
    o->paid_ms = i64(r, row, 29);
    o->pay_recorded_ms = i64(r, row, 30);
    cpy(o->carrier, sizeof o->carrier, r, row, 31);
    cpy(o->tracking, sizeof o->tracking, r, row, 32);
    o->shipped_ms = i64(r, row, 33);
    o->version = i64(r, row, 34);
    cpy(o->completed_by, sizeof o->completed_by, r, row, 37);
    /* no stored costs (an order from before migration 0006): unknown */
    for (size_t i = 0; i < n; i++) {
        o->lines[i].unit_cost = -1;
        o->lines[i].cost_reversed = 0;
    }
    size_t nc = split_i64(PQgetvalue(r, row, 38), v, n);
    for (size_t i = 0; i < nc; i++)
        o->lines[i].unit_cost = v[i];
    nc = split_i64(PQgetvalue(r, row, 39), v, n);
    for (size_t i = 0; i < nc; i++)
        o->lines[i].cost_reversed = v[i];
}

static void parse_refund(const PGresult *r, int row, ord_refund *f)
{
    memset(f, 0, sizeof *f);
    cpy(f->refund_id, sizeof f->refund_id, r, row, 0);
    f->scope = (int)i64(r, row, 1);
    f->amount = i64(r, row, 2);
    int64_t q[ORD_LINES_MAX], m[ORD_LINES_MAX];
    size_t n = split_i64(PQgetvalue(r, row, 4), q, ORD_LINES_MAX);
    split_i64(PQgetvalue(r, row, 5), m, n);
    for (size_t i = 0; i < n; i++) {
        field_str(PQgetvalue(r, row, 3), i, f->lines[i].sku, sizeof f->lines[i].sku);
        f->lines[i].qty = q[i];
        f->lines[i].amount = m[i];
    }
    f->nlines = n;
    cpy(f->reason, sizeof f->reason, r, row, 6);
    f->created_ms = i64(r, row, 7);
    size_t nc = split_i64(PQgetvalue(r, row, 10), m, n);
    for (size_t i = 0; i < nc; i++)
        f->lines[i].cost = m[i];
    f->cost_reversed = i64(r, row, 11);
}

/* text of a number, in the arena */
static const char *num(cm_arena *a, long long v)
{
    return cm_arena_printf(a, "%lld", v);
}

static const char *ms_or_null(cm_arena *a, int64_t ms)
{
    return ms > 0 ? num(a, ms) : NULL;
}

#define LINE_FIELD(o, f) cm_buf_int_array(a, &(o)->lines[0].f, (o)->nlines, sizeof((o)->lines[0]))

static const char *line_sku(const void *o, size_t i)
{
    return ((const ord_order *)o)->lines[i].sku;
}

static const char *line_flash(const void *o, size_t i)
{
    return ((const ord_order *)o)->lines[i].flash_sale_id;
}

static const char *refund_sku(const void *r, size_t i)
{
    return ((const ord_refund *)r)->lines[i].sku;
}

/* a lookup of one row: 0 with *r holding it (the caller clears it),
 * CM_ENOTFOUND with nothing held, or the database error */
static int read_row(cm_db *db, const char *what, const char *sql, int n, const char *const *p,
                    PGresult **r)
{
    int rc = cm_db_read_auto(db, what, sql, n, p, r);
    if (rc == 0 && PQntuples(*r) == 0) {
        PQclear(*r);
        *r = NULL;
        return CM_ENOTFOUND;
    }
    return rc;
}

/* ---- reads ---- */

static int load_refunds(cm_db *db, const char *tenant, cm_arena *a, ord_order *o)
{
    const char *p[] = {tenant, o->order_id};
    PGresult *r = NULL;
    int rc =
        cm_db_read(db, "get refunds",
                   "SELECT " REFUND_COLS " FROM refunds WHERE tenant_id = $1 AND order_id = $2 "
                   "ORDER BY created_at, refund_id",
                   2, p, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    o->nrefunds = 0;
    o->refunds = NULL;
    if (n > 0) {
        o->refunds = cm_arena_calloc(a, (size_t)n, sizeof *o->refunds);
        if (!o->refunds) {
            PQclear(r);
            return CM_ENOMEM;
        }
        for (int i = 0; i < n; i++)
            parse_refund(r, i, &o->refunds[i]);
        o->nrefunds = (size_t)n;
    }
    PQclear(r);
    return 0;
}

/* load_refunds where o may have any: every refund pays back a positive
 * amount and adds it to the order's refunded_amount in its transaction
 * (plan_refund refuses less; ord_apply_refund), so an order with none refunded
 * has no refund rows and its read needs no second round trip */
static int load_refunds_of(cm_db *db, const char *tenant, cm_arena *a, ord_order *o)
{
    if (o->refunded == 0) {
        o->nrefunds = 0;
        o->refunds = NULL;
        return 0;
    }
    return load_refunds(db, tenant, a, o);
}

/* one order by id, of merchant only when not NULL; lock: "FOR UPDATE" or "" */
static int load_of(cm_db *db, const char *tenant, const char *order_id, const char *merchant,
                   const char *lock, cm_arena *a, ord_order *o)
{
    if (!cm_id_is_uuid(order_id))
        return CM_ENOTFOUND;
    const char *p[] = {tenant, order_id, merchant};
    PGresult *r = NULL;
    char sql[2048];
    /* sql-safe: lock is "FOR UPDATE" or "", literals of this file */
    snprintf(sql, sizeof sql,
             "SELECT " ORDER_COLS " FROM orders WHERE tenant_id = $1 AND order_id = $2::uuid "
             "AND ($3::text IS NULL OR merchant_id = $3) %s",
             lock);
    int rc = read_row(db, "get order", sql, 3, p, &r);
    if (rc)
        return rc;
    parse_order(r, 0, o);
    PQclear(r);
    return a ? load_refunds_of(db, tenant, a, o) : 0;
}

static int load(cm_db *db, const char *tenant, const char *order_id, const char *lock, cm_arena *a,
                ord_order *o)
{
    return load_of(db, tenant, order_id, NULL, lock, a, o);
}

int ord_store_get(cm_db *db, const char *tenant, const char *order_id, const char *merchant,
                  cm_arena *a, ord_order *o)
{
    return load_of(db, tenant, order_id, merchant, "", a, o);
}

int ord_store_exists(cm_db *db, const char *tenant, const char *order_id)
{
    const char *p[] = {tenant, order_id};
    PGresult *r = NULL;
    int rc =
        cm_db_read(db, "find order",
                   "SELECT 1 FROM orders WHERE tenant_id = $1 AND order_id = $2::uuid", 2, p, &r);
    if (rc)
        return rc;
    rc = PQntuples(r) > 0 ? 0 : CM_ENOTFOUND;
    PQclear(r);
    return rc;
}

int ord_store_get_by_request(cm_db *db, const char *tenant, const char *request_id, cm_arena *a,
                             ord_order *o, char hash[ORD_HASH_HEX + 1])
{
    const char *p[] = {tenant, request_id};
    PGresult *r = NULL;
    int rc = read_row(db, "get order by request",
                      "SELECT " ORDER_COLS " FROM orders WHERE tenant_id = $1 AND request_id = $2",
                      2, p, &r);
    if (rc)
        return rc;
    parse_order(r, 0, o);
    snprintf(hash, ORD_HASH_HEX + 1, "%s", PQgetvalue(r, 0, COL_BODY_HASH));
    PQclear(r);
    return load_refunds_of(db, tenant, a, o);
}

/* ---- writes ---- */

/* writes every mutable field of o back (after a transition), version + 1;
 * $23, when not NULL, is the recorded payment's request hash (one row
 * version for a payment, not two). $1-$25: save_params */
#define SAVE_SQL                                                                                   \
    "UPDATE orders SET state = $3, refunded_amount = $4, line_refunded_qty = $5, "                 \
    "line_refunded_amount = $6, updated_at = to_timestamp($7::bigint / 1000.0), "                  \
    "cancelled_at = to_timestamp($8::bigint / 1000.0), cancel_reason = $9, "                       \
    "cancel_note = $10, completed_at = to_timestamp($11::bigint / 1000.0), "                       \
    "payment_id = $12, pay_amount = $13, pay_provider = $14, pay_reference = $15, "                \
    "paid_at = to_timestamp($16::bigint / 1000.0), "                                               \
    "pay_recorded_at = to_timestamp($17::bigint / 1000.0), carrier = $18, "                        \
    "tracking_number = $19, shipped_at = to_timestamp($20::bigint / 1000.0), "                     \
    "version = $21, completed_by = $22, payment_hash = coalesce($23, payment_hash), "              \
    "line_cost_reversed = $24, cost_reversed = $25 "                                               \
    "WHERE tenant_id = $1 AND order_id = $2::uuid"
enum { SAVE_NPARAMS = 25 };

/* the next version of o (its version + 1) as SAVE_SQL's parameters */
static void save_params(const char *tenant, cm_arena *a, ord_order *o, const char *payment_hash,
                        const char **p)
{
    o->version++;
    const char *v[SAVE_NPARAMS] = {
        tenant,
        o->order_id,
        num(a, o->state),
        num(a, o->refunded),
        LINE_FIELD(o, refunded_qty),
        LINE_FIELD(o, refunded_amount),
        num(a, o->updated_ms),
        ms_or_null(a, o->cancelled_ms),
        num(a, o->cancel_reason),
        o->cancel_note,
        ms_or_null(a, o->completed_ms),
        o->payment_id[0] ? o->payment_id : NULL,
        o->payment_id[0] ? num(a, o->pay_amount) : NULL,
        o->payment_id[0] ? o->provider : NULL,
        o->payment_id[0] ? o->provider_ref : NULL,
        ms_or_null(a, o->paid_ms),
        ms_or_null(a, o->pay_recorded_ms),
        o->shipped_ms ? o->carrier : NULL,
        o->shipped_ms ? o->tracking : NULL,
        ms_or_null(a, o->shipped_ms),
        num(a, o->version),
        o->completed_by,
        payment_hash,
        LINE_FIELD(o, cost_reversed),
        num(a, ord_order_margin(o).reversed),
    };
    memcpy(p, v, sizeof v);
}

/*
 * a state change of the locked order o and its event (kind, from state
 * prev; r: the refund of an OrderRefunded) in one statement: the update
 * and the outbox row as a data-modifying WITH, one round trip where an
 * update and cm_outbox_add took two (MarkPaid ran seven from BEGIN to
 * COMMIT). the event row is the shared batched insert (cm_outbox_rows)
 * with one row, inserted only if the update found the order, and the
 * relay is woken once the transaction commits. payment_hash: MarkPaid's
 * request hash, or NULL to keep the stored one.
 */
#define SAVE_EMIT_SQL                                                                              \
    "WITH u AS (" SAVE_SQL " RETURNING 1), e AS (" CM_OUTBOX_ROWS_INSERT_WHERE(                    \
        "$26", "$27", "$28", "$29", "$30", "$31", "$32", "$33", "$34", "$35", "$36",               \
        "EXISTS (SELECT 1 FROM u)") ") SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM e)"
enum { SAVE_EMIT_NPARAMS = SAVE_NPARAMS + CM_OUTBOX_ROWS_NPARAMS + 2 };

static int save_emit(cm_db *db, const ord_ev_ctx *ec, const char *tenant, cm_arena *a, ord_order *o,
                     const char *payment_hash, int kind, int prev, const ord_refund *rf)
{
    const char *p[SAVE_EMIT_NPARAMS];
    int lengths[SAVE_EMIT_NPARAMS] = {0}, formats[SAVE_EMIT_NPARAMS] = {0};
    save_params(tenant, a, o, payment_hash, p); /* first: the event has the new version */
    cm_outbox_event e;
    int rc = ord_ev_build(a, ec, tenant, kind, o, prev, rf, &e);
    if (rc)
        return rc;
    cm_outbox_rows rows;
    cm_outbox_rows_init(&rows);
    cm_outbox_rows_add(&rows, &e);
    if (cm_outbox_rows_close(&rows)) {
        cm_outbox_rows_free(&rows);
        return CM_ENOMEM;
    }
    cm_outbox_rows_params(&rows, p + SAVE_NPARAMS);
    p[SAVE_NPARAMS + CM_OUTBOX_ROWS_NPARAMS] = e.topic;
    p[SAVE_NPARAMS + CM_OUTBOX_ROWS_NPARAMS + 1] = e.source;
    lengths[SAVE_NPARAMS + CM_OUTBOX_ROWS_BLOB] = (int)rows.blob.len;
    formats[SAVE_NPARAMS + CM_OUTBOX_ROWS_BLOB] = 1;
    PGresult *r = NULL;
    rc = cm_db_exec_prepared(db, "update order and add its event", "ord_save_emit", SAVE_EMIT_SQL,
                             SAVE_EMIT_NPARAMS, p, lengths, formats, &r);
    cm_outbox_rows_free(&rows);
    if (rc)
        return rc;
    /* the order is locked by the caller's transaction: it is there */
    int ok = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "1") == 0 &&
             strcmp(PQgetvalue(r, 0, 1), "1") == 0;
    PQclear(r);
    if (!ok) {
        cm_log_error("order update found no row under its lock", "tenant", tenant, "order_id",
                     o->order_id, NULL);
        return CM_EINTERNAL;
    }
    return cm_outbox_wake_on_commit(db);
}

/* ---- create ---- */

/* stores items' orders and, for those inserted, their OrderCreated events
 * in one statement: a data-modifying WITH runs in autocommit as one
 * transaction, so a batch costs one round trip instead of four (BEGIN, two
 * inserts, COMMIT). an order whose request_id or id exists is skipped by
 * ON CONFLICT, and so is its event (it is inserted only where its order
 * was). the events are the shared batched outbox insert (cm_outbox_rows):
 * parameters $1-$11, the orders' from $12. */
enum { COLS = 22, FIRST = CM_OUTBOX_ROWS_NPARAMS + 3 };
static int insert_many(cm_db *db, ord_new *const *items, size_t n, cm_arena *a, cm_outbox_rows *ev)
{
    const char **p = cm_arena_calloc(a, FIRST - 1 + n * COLS, sizeof *p);
    int *lengths = cm_arena_calloc(a, FIRST - 1 + n * COLS, sizeof *lengths);
    int *formats = cm_arena_calloc(a, FIRST - 1 + n * COLS, sizeof *formats);
    size_t cap = 1024 + n * 520, len = 0;
    char *sql = cm_arena_alloc(a, cap);
    size_t *uniq = cm_arena_calloc(a, n, sizeof *uniq);
    if (!p || !lengths || !formats || !sql || !uniq)
        return CM_ENOMEM;
    len += (size_t)snprintf(
        sql, cap,
        "WITH o AS (INSERT INTO orders (tenant_id, order_id, request_id, body_hash, state, "
        "buyer_id, merchant_id, channel_id, currency, total_amount, flash_sale, external_ref, "
        "line_sku, line_qty, line_price, line_flash_sale, line_refunded_qty, "
        "line_refunded_amount, created_at, updated_at, payment_deadline, reservation_expires_at, "
        "line_unit_cost, line_cost_reversed, cost_amount, cost_complete) "
        "VALUES ");
    /* one row per order id: concurrent retries of one create can meet in
     * a batch, and two rows of one id would give its order two events (the
     * filter below matches by id) */
    size_t m = 0;
    for (size_t j = 0; j < n; j++) {
        items[j]->inserted = 0;
        int dup = 0;
        for (size_t k = 0; k < m && !dup; k++)
            dup = strcmp(items[uniq[k]]->o->order_id, items[j]->o->order_id) == 0 &&
                  strcmp(items[uniq[k]]->tenant, items[j]->tenant) == 0;
        if (!dup)
            uniq[m++] = j;
    }
    const char *topic = NULL;
    for (size_t u = 0; u < m; u++) {
        size_t i = uniq[u];
        ord_order *o = items[i]->o;
        o->version = 1;
        o->updated_ms = o->created_ms;
        const char **q = p + FIRST - 1 + u * COLS;
        q[0] = items[i]->tenant;
        q[1] = o->order_id;
        q[2] = o->request_id;
        q[3] = items[i]->hash;
        q[4] = o->buyer_id;
        q[5] = o->merchant_id;
        q[6] = o->channel_id;
        q[7] = o->currency;
        q[8] = num(a, o->total);
        q[9] = o->flash ? "true" : "false";
        q[10] = o->external_ref;
        q[11] = cm_buf_text_array(a, o->nlines, line_sku, o);
        q[12] = LINE_FIELD(o, qty);
        q[13] = LINE_FIELD(o, unit_price);
        q[14] = cm_buf_text_array(a, o->nlines, line_flash, o);
        q[15] = num(a, o->created_ms);
        q[16] = num(a, o->deadline_ms);
        q[17] = num(a, o->resv_expires_ms);
        q[18] = num(a, (long long)o->nlines);
        q[19] = LINE_FIELD(o, unit_cost);
        ord_margin mg = ord_order_margin(o);
        q[20] = num(a, mg.cost);
        q[21] = mg.complete ? "true" : "false";
        cm_outbox_event e;
        int rc = ord_ev_build(a, items[i]->ev, items[i]->tenant, ORD_EV_CREATED, o, 0, NULL, &e);
        if (rc)
            return rc;
        /* one topic per statement: every create of a process has its */
        if (topic && strcmp(topic, e.topic) != 0)
            return CM_EINVAL;
        topic = e.topic;
        cm_outbox_rows_add(ev, &e);
        size_t k = FIRST + u * COLS;
#define P(j) (k + (j)-1)
        /* sql-safe: parameter numbers */
        len += (size_t)snprintf(
            sql + len, cap - len,
            "%s($%zu, $%zu::uuid, $%zu, $%zu, 1, $%zu, $%zu, $%zu, $%zu, $%zu::bigint, "
            "$%zu::boolean, $%zu, $%zu::text[], $%zu::bigint[], $%zu::bigint[], $%zu::text[], "
            "array_fill(0::bigint, ARRAY[$%zu::int]), array_fill(0::bigint, ARRAY[$%zu::int]), "
            "to_timestamp($%zu::bigint / 1000.0), to_timestamp($%zu::bigint / 1000.0), "
            "to_timestamp($%zu::bigint / 1000.0), to_timestamp($%zu::bigint / 1000.0), "
            "$%zu::bigint[], array_fill(0::bigint, ARRAY[$%zu::int]), $%zu::bigint, "
            "$%zu::boolean)",
            u ? ", " : "", P(1), P(2), P(3), P(4), P(5), P(6), P(7), P(8), P(9), P(10), P(11),
            P(12), P(13), P(14), P(15), P(19), P(19), P(16), P(16), P(17), P(18), P(20), P(19),
            P(21), P(22));
#undef P
    }
    if (cm_outbox_rows_close(ev) || len >= cap)
        return CM_ENOMEM;
    /* sql-safe: sql is the VALUES list built above (parameter numbers) */
    const char *full =
        cm_arena_printf(a,
                        "%s ON CONFLICT DO NOTHING RETURNING tenant_id, order_id::text AS oid), "
                        "e AS (" CM_OUTBOX_ROWS_INSERT_WHERE(
                            "$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10", "$11",
                            "EXISTS (SELECT 1 FROM o WHERE o.tenant_id = u.t "
                            "AND o.oid = u.k)") ") SELECT tenant_id, oid FROM o",
                        sql);
    if (!full)
        return CM_ENOMEM;
    cm_outbox_rows_params(ev, p);
    p[CM_OUTBOX_ROWS_NPARAMS] = topic;
    p[CM_OUTBOX_ROWS_NPARAMS + 1] = "/commerce/order";
    lengths[CM_OUTBOX_ROWS_BLOB] = (int)ev->blob.len;
    formats[CM_OUTBOX_ROWS_BLOB] = 1;
    int np = (int)(FIRST - 1 + m * COLS);
    if (PQstatus(cm_db_conn(db)) == CONNECTION_BAD && cm_db_ping(db) != 0)
        return CM_EUNAVAIL;
    /* the statement's text depends only on the batch size: prepared once
     * per size and connection, parse and planning are paid once */
    char name[32];
    snprintf(name, sizeof name, "ord_create_%zu", m);
    int rc;
    for (int attempt = 0;; attempt++) {
        PGresult *r = NULL;
        rc = cm_db_exec_prepared(db, "insert orders", name, full, np, p, lengths, formats, &r);
        if (rc == CM_EUNAVAIL && attempt == 0 && PQstatus(cm_db_conn(db)) == CONNECTION_BAD &&
            cm_db_ping(db) == 0) {
            /* the server ended the connection (a restart, a failover, an
             * operator): run it again on the new one. safe whether or not
             * the first run committed: the inserts skip what exists, so a
             * repeat stores nothing twice and its callers find their orders */
            continue;
        }
        if (rc == 0) {
            /* RETURNING lists the rows inserted; the others exist already */
            for (int row = 0; row < PQntuples(r); row++) {
                for (size_t i = 0; i < n; i++) {
                    if (!items[i]->inserted &&
                        strcmp(PQgetvalue(r, row, 1), items[i]->o->order_id) == 0 &&
                        strcmp(PQgetvalue(r, row, 0), items[i]->tenant) == 0) {
                        items[i]->inserted = 1;
                        break;
                    }
                }
            }
            PQclear(r);
            cm_outbox_wake(db);
            return 0;
        }
        /* a deadlock with another replica's batch: nothing was stored */
        if (rc != CM_ECONFLICT || attempt >= 4)
            break;
    }
    return rc;
}

int ord_store_create_many(cm_db *db, ord_new *const *items, size_t n)
{
    cm_arena *a = cm_arena_new(16384 + n * 8192);
    if (!a)
        return CM_ENOMEM;
    cm_outbox_rows ev;
    cm_outbox_rows_init(&ev);
    int rc = insert_many(db, items, n, a, &ev);
    cm_outbox_rows_free(&ev);
    cm_arena_free(a);
    return rc;
}

/* ---- payment ---- */

/* what every state change's transaction function gets: its request, the
 * order to fill, and the verdict it decides (ord_store.h) */
typedef struct change_tx {
    const void *q;
    cm_arena *a;
    ord_order *o;
    ord_refund *r;
    ord_violation *v;
    int verdict;
} change_tx;

/* runs a state change's transaction; its verdict counts once it committed */
static int run_change(cm_db *db, cm_db_tx_fn fn, change_tx *t, int *verdict)
{
    int rc = cm_db_tx(db, NULL, 5, fn, t);
    if (rc == 0)
        *verdict = t->verdict;
    return rc;
}

static int record_rejection(cm_db *db, const ord_pay_req *q, cm_arena *a, const char *why)
{
    const char *p[] = {
        q->tenant,   q->payment_id,   q->order_id,        q->hash, num(a, q->amount), q->currency,
        q->provider, q->provider_ref, num(a, q->paid_ms), why};
    PGresult *r = NULL;
    int rc = exec(db, "record rejected payment",
                  "INSERT INTO payment_rejections (tenant_id, payment_id, order_id, body_hash, "
                  "amount, currency, provider, provider_reference, paid_at, reason) VALUES ($1, "
                  "$2, $3::uuid, $4, $5, $6, $7, $8, to_timestamp($9::bigint / 1000.0), $10) ON "
                  "CONFLICT DO NOTHING",
                  10, p, &r);
    PQclear(r);
    if (rc == 0)
        cm_log_warn("payment refused: the caller must refund it", "tenant", q->tenant, "order_id",
                    q->order_id, "payment_id", q->payment_id, "reason", why, NULL);
    return rc;
}

/* where the payment id was seen: a rejection of it (the order, request
 * hash and reason) or the order paid by it (hash and reason ""); the first
 * row decides. $1 tenant, pid the payment id's placeholder. */
#define PAYMENT_SEEN_SQL(pid)                                                                      \
    "SELECT order_id::text AS seen_order, body_hash AS seen_hash, reason AS seen_why "             \
    "FROM payment_rejections WHERE tenant_id = $1 AND payment_id = " pid " UNION ALL "             \
    "SELECT p.order_id::text, '', '' FROM orders p WHERE p.tenant_id = $1 AND p.payment_id = " pid \
    " LIMIT 1"

/* the payment's verdict from where its id was seen (row 0 of r at column
 * c), or -1: not seen */
static int payment_seen(const ord_pay_req *q, const PGresult *r, int c)
{
    if (PQntuples(r) == 0 || PQgetisnull(r, 0, c))
        return -1;
    const char *why = PQgetvalue(r, 0, c + 2);
    if (strcmp(PQgetvalue(r, 0, c), q->order_id) == 0 &&
        strcmp(PQgetvalue(r, 0, c + 1), q->hash) == 0 && *why)
        return strcmp(why, "double_payment") == 0 ? ORD_DOUBLE_PAY : ORD_LATE;
    return ORD_KEY_REUSED;
}

/*
 * MarkPaid's first statement: the order locked, and where the payment id
 * was seen, in one round trip (the lookup was a second). read committed
 * evaluates the lookup in the statement's snapshot, taken before a wait
 * for the order's lock, while the locked row is read again once the lock
 * is ours. so a lookup that found nothing is repeated when the order is no
 * longer pending (a concurrent change may have recorded this payment);
 * for a pending order nothing changes: a payment id taken meanwhile by
 * another order is still refused by the update (orders_payment, unique).
 * verdict: -1 (not seen) or payment_seen's; paid_hash: the recorded
 * payment's request hash ("" when none).
 */
/* the lock statement's lookup: the payment id is its $3 */
#define PAYMENT_SEEN_3 PAYMENT_SEEN_SQL("$3")
#define PAY_LOAD_SQL                                                                               \
    "SELECT " ORDER_COLS ", s.seen_order, s.seen_hash, s.seen_why FROM orders "                    \
    "LEFT JOIN LATERAL (" PAYMENT_SEEN_3 ") s ON true "                                            \
    "WHERE orders.tenant_id = $1 AND orders.order_id = $2::uuid FOR UPDATE OF orders"

static int pay_load(cm_db *db, const ord_pay_req *q, cm_arena *a, ord_order *o, int *verdict,
                    char paid_hash[ORD_HASH_HEX + 1])
{
    if (!cm_id_is_uuid(q->order_id))
        return CM_ENOTFOUND;
    const char *p[] = {q->tenant, q->order_id, q->payment_id};
    PGresult *r = NULL;
    int rc = read_row(db, "get order to pay", PAY_LOAD_SQL, 3, p, &r);
    if (rc)
        return rc;
    parse_order(r, 0, o);
    snprintf(paid_hash, ORD_HASH_HEX + 1, "%s", PQgetvalue(r, 0, COL_PAYMENT_HASH));
    *verdict = payment_seen(q, r, ORDER_NCOLS);
    PQclear(r);
    if (*verdict < 0 && o->state != ORD_PENDING) {
        const char *pp[] = {q->tenant, q->payment_id};
        rc = exec(db, "find payment id", PAYMENT_SEEN_SQL("$2"), 2, pp, &r);
        if (rc)
            return rc;
        *verdict = payment_seen(q, r, 0);
        PQclear(r);
    }
    return load_refunds_of(db, q->tenant, a, o);
}

static int pay_fn(cm_db *db, void *arg)
{
    change_tx *t = arg;
    const ord_pay_req *q = t->q;
    ord_order *o = t->o;
    int seen = -1;
    char paid_hash[ORD_HASH_HEX + 1];
    int rc = pay_load(db, q, t->a, o, &seen, paid_hash);
    if (rc == CM_ENOTFOUND) {
        t->verdict = ORD_NOT_FOUND;
        return 0;
    }
    if (rc)
        return rc;
    if (strcmp(o->payment_id, q->payment_id) == 0) {
        /* this payment was recorded: a duplicate notification (the row was
         * read under its lock, so its hash is the recorded one) */
        t->verdict = strcmp(paid_hash, q->hash) == 0 ? ORD_SAME : ORD_KEY_REUSED;
        return 0;
    }
    /* the payment id with another order, or refused before */
    if (seen >= 0) {
        t->verdict = seen;
        return 0;
    }
    ord_verdict v = ord_plan_pay(o, q->amount, q->currency, q->now_ms, q->grace_ms);
    t->verdict = (int)v;
    switch (v) {
    case ORD_OK: {
        int prev = o->state;
        o->state = ORD_PAID;
        snprintf(o->payment_id, sizeof o->payment_id, "%s", q->payment_id);
        o->pay_amount = q->amount;
        snprintf(o->provider, sizeof o->provider, "%s", q->provider);
        snprintf(o->provider_ref, sizeof o->provider_ref, "%s", q->provider_ref);
        o->paid_ms = q->paid_ms;
        o->pay_recorded_ms = q->now_ms;
        o->updated_ms = q->now_ms;
        return save_emit(db, q->ev, q->tenant, t->a, o, q->hash, ORD_EV_PAID, prev, NULL);
    }
    case ORD_LATE:
        if (o->state == ORD_PENDING) {
            /* past deadline and grace: cancel now rather than take money
             * whose stock may already be gone */
            o->state = ORD_CANCELLED;
            o->cancel_reason = ORD_CANCEL_PAYMENT_TIMEOUT;
            o->cancelled_ms = q->now_ms;
            o->updated_ms = q->now_ms;
            rc =
                save_emit(db, q->ev, q->tenant, t->a, o, NULL, ORD_EV_CANCELLED, ORD_PENDING, NULL);
            if (rc)
                return rc;
        }
        return record_rejection(db, q, t->a, "order_cancelled");
    case ORD_DOUBLE_PAY:
        return record_rejection(db, q, t->a, "double_payment");
    default:
        return 0; /* refused, nothing written */
    }
}

int ord_store_pay(cm_db *db, const ord_pay_req *q, cm_arena *a, ord_order *o, int *verdict)
{
    change_tx t = {.q = q, .a = a, .o = o};
    return run_change(db, pay_fn, &t, verdict);
}

/* ---- cancel, ship, complete ---- */

/* the write phase of a planned transition of the locked order o (state prev
 * before, to after): its fields, the row, and its event in the outbox. one
 * path for the rpcs and the auto-completing sweeper, so a completion is the
 * same change and the same OrderCompleted whoever made it. */
static int apply_op(cm_db *db, const ord_op_req *q, cm_arena *a, ord_order *o, int prev, int to,
                    int kind)
{
    o->state = to;
    o->updated_ms = q->now_ms;
    switch (q->op) {
    case ORD_OP_CANCEL:
        o->cancel_reason = q->cancel_reason;
        snprintf(o->cancel_note, sizeof o->cancel_note, "%s", q->note ? q->note : "");
        o->cancelled_ms = q->now_ms;
        break;
    case ORD_OP_SHIP:
        snprintf(o->carrier, sizeof o->carrier, "%s", q->carrier ? q->carrier : "");
        snprintf(o->tracking, sizeof o->tracking, "%s", q->tracking ? q->tracking : "");
        o->shipped_ms = q->at_ms;
        break;
    default:
        o->completed_ms = q->at_ms;
        snprintf(o->completed_by, sizeof o->completed_by, "%s",
                 q->completed_by && *q->completed_by ? q->completed_by : "caller");
        break;
    }
    return save_emit(db, q->ev, q->tenant, a, o, NULL, kind, prev, NULL);
}

static int op_fn(cm_db *db, void *arg)
{
    change_tx *t = arg;
    const ord_op_req *q = t->q;
    ord_order *o = t->o;
    const char *k[] = {q->tenant, q->request_id};
    PGresult *r = NULL;
    int rc = exec(db, "find request",
                  "SELECT op, order_id::text, body_hash FROM requests "
                  "WHERE tenant_id = $1 AND request_id = $2",
                  2, k, &r);
    if (rc)
        return rc;
    if (PQntuples(r) > 0) {
        int same = i64(r, 0, 0) == q->op && strcmp(PQgetvalue(r, 0, 1), q->order_id) == 0 &&
                   strcmp(PQgetvalue(r, 0, 2), q->hash) == 0;
        PQclear(r);
        if (!same) {
            t->verdict = ORD_KEY_REUSED;
            return 0;
        }
        rc = load(db, q->tenant, q->order_id, "", t->a, o);
        t->verdict = ORD_SAME;
        return rc;
    }
    PQclear(r);
    rc = load(db, q->tenant, q->order_id, "FOR UPDATE", t->a, o);
    if (rc == CM_ENOTFOUND) {
        t->verdict = ORD_NOT_FOUND;
        return 0;
    }
    if (rc)
        return rc;
    int prev = o->state, to = 0, kind = 0;
    ord_verdict v;
    switch (q->op) {
    case ORD_OP_CANCEL:
        v = ord_plan_cancel(o);
        to = ORD_CANCELLED;
        kind = ORD_EV_CANCELLED;
        break;
    case ORD_OP_SHIP:
        v = ord_plan_ship(o, &to);
        kind = ORD_EV_SHIPPED;
        break;
    default:
        v = ord_plan_complete(o, &to);
        kind = ORD_EV_COMPLETED;
        break;
    }
    t->verdict = (int)v;
    if (v != ORD_OK && v != ORD_NOOP)
        return 0;
    /* bind the key; a concurrent call with the same key waits here for the
     * other transaction and then retries into the branch above */
    const char *p[] = {q->tenant, q->request_id, num(t->a, q->op), q->order_id, q->hash};
    rc = exec(db, "record request",
              "INSERT INTO requests (tenant_id, request_id, op, order_id, body_hash) "
              "VALUES ($1, $2, $3, $4::uuid, $5) ON CONFLICT DO NOTHING RETURNING 1",
              5, p, &r);
    if (rc)
        return rc;
    int bound = PQntuples(r) == 1;
    PQclear(r);
    if (!bound)
        return CM_ECONFLICT;
    if (v == ORD_NOOP)
        return 0;
    return apply_op(db, q, t->a, o, prev, to, kind);
}

int ord_store_transition(cm_db *db, const ord_op_req *q, cm_arena *a, ord_order *o, int *verdict)
{
    change_tx t = {.q = q, .a = a, .o = o};
    return run_change(db, op_fn, &t, verdict);
}

/* ---- refund ---- */

static int refund_fn(cm_db *db, void *arg)
{
    change_tx *t = arg;
    const ord_refund_req *q = t->q;
    ord_order *o = t->o;
    const char *k[] = {q->tenant, q->refund_id};
    PGresult *r = NULL;
    int rc = exec(db, "find refund",
                  "SELECT " REFUND_COLS " FROM refunds WHERE tenant_id = $1 AND refund_id = $2", 2,
                  k, &r);
    if (rc)
        return rc;
    if (PQntuples(r) > 0) {
        int same = strcmp(PQgetvalue(r, 0, 8), q->order_id) == 0 &&
                   strcmp(PQgetvalue(r, 0, 9), q->hash) == 0;
        if (same)
            parse_refund(r, 0, t->r);
        PQclear(r);
        if (!same) {
            t->verdict = ORD_KEY_REUSED;
            return 0;
        }
        t->verdict = ORD_SAME;
        return load(db, q->tenant, q->order_id, "", t->a, o);
    }
    PQclear(r);
    rc = load(db, q->tenant, q->order_id, "FOR UPDATE", t->a, o);
    if (rc == CM_ENOTFOUND) {
        t->verdict = ORD_NOT_FOUND;
        return 0;
    }
    if (rc)
        return rc;
    ord_verdict v = ord_plan_refund(o, q->in, t->r, t->v);
    t->verdict = (int)v;
    if (v != ORD_OK)
        return 0;
    ord_refund *f = t->r;
    snprintf(f->refund_id, sizeof f->refund_id, "%s", q->refund_id);
    snprintf(f->reason, sizeof f->reason, "%s", q->reason ? q->reason : "");
    f->created_ms = q->now_ms;
    const char *p[] = {q->tenant,
                       q->refund_id,
                       q->order_id,
                       q->hash,
                       num(t->a, f->scope),
                       num(t->a, f->amount),
                       cm_buf_text_array(t->a, f->nlines, refund_sku, f),
                       cm_buf_int_array(t->a, &f->lines[0].qty, f->nlines, sizeof f->lines[0]),
                       cm_buf_int_array(t->a, &f->lines[0].amount, f->nlines, sizeof f->lines[0]),
                       f->reason,
                       num(t->a, f->created_ms),
                       cm_buf_int_array(t->a, &f->lines[0].cost, f->nlines, sizeof f->lines[0]),
                       num(t->a, f->cost_reversed)};
    rc = exec(db, "insert refund",
              "INSERT INTO refunds (tenant_id, refund_id, order_id, body_hash, scope, amount, "
              "line_sku, line_qty, line_amount, reason, created_at, line_cost, cost_reversed) "
              "VALUES ($1, $2, $3::uuid, $4, $5, $6, $7, $8, $9, $10, "
              "to_timestamp($11::bigint / 1000.0), $12, $13) ON CONFLICT DO NOTHING RETURNING 1",
              13, p, &r);
    if (rc)
        return rc;
    int bound = PQntuples(r) == 1;
    PQclear(r);
    if (!bound)
        return CM_ECONFLICT; /* the same refund_id committed meanwhile: retry */
    int prev = o->state;
    ord_apply_refund(o, f);
    o->updated_ms = q->now_ms;
    /* the event's order lists this refund last */
    ord_refund *all = cm_arena_calloc(t->a, o->nrefunds + 1, sizeof *all);
    if (!all)
        return CM_ENOMEM;
    if (o->nrefunds)
        memcpy(all, o->refunds, o->nrefunds * sizeof *all);
    all[o->nrefunds] = *f;
    o->refunds = all;
    o->nrefunds++;
    return save_emit(db, q->ev, q->tenant, t->a, o, NULL, ORD_EV_REFUNDED, prev, f);
}

int ord_store_refund(cm_db *db, const ord_refund_req *q, cm_arena *a, ord_order *o, ord_refund *r,
                     int *verdict, ord_violation *v)
{
    change_tx t = {.q = q, .a = a, .o = o, .r = r, .v = v};
    return run_change(db, refund_fn, &t, verdict);
}

/* ---- the payment-timeout sweeper ---- */

typedef struct due_tx {
    const ord_ev_ctx *ev;
    int64_t now_ms;
    int limit;
    int cancelled;
} due_tx;

static int due_fn(cm_db *db, void *arg)
{
    due_tx *t = arg;
    cm_arena *a = cm_arena_new(8192);
    if (!a)
        return CM_ENOMEM;
    const char *p[] = {num(a, t->now_ms), num(a, t->limit)};
    PGresult *r = NULL;
    int rc = exec(
        db, "find due orders",
        "SELECT tenant_id, order_id::text FROM orders WHERE state = 1 AND "
        "payment_deadline <= to_timestamp($1::bigint / 1000.0) ORDER BY payment_deadline LIMIT $2 "
        "FOR UPDATE SKIP LOCKED",
        2, p, &r);
    if (rc) {
        cm_arena_free(a);
        return rc;
    }
    int n = PQntuples(r);
    ord_order *o = malloc(sizeof *o);
    if (!o) {
        PQclear(r);
        cm_arena_free(a);
        return CM_ENOMEM;
    }
    t->cancelled = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        char tenant[256];
        snprintf(tenant, sizeof tenant, "%s", PQgetvalue(r, i, 0));
        const char *oid = PQgetvalue(r, i, 1);
        rc = load(db, tenant, oid, "", NULL, o); /* locked above */
        if (rc)
            break;
        o->state = ORD_CANCELLED;
        o->cancel_reason = ORD_CANCEL_PAYMENT_TIMEOUT;
        o->cancel_note[0] = 0;
        o->cancelled_ms = t->now_ms;
        o->updated_ms = t->now_ms;
        rc = save_emit(db, t->ev, tenant, a, o, NULL, ORD_EV_CANCELLED, ORD_PENDING, NULL);
        if (rc == 0)
            t->cancelled++;
        cm_arena_reset(a);
    }
    free(o);
    PQclear(r);
    cm_arena_free(a);
    return rc;
}

int ord_store_cancel_due(cm_db *db, const ord_ev_ctx *ev, int64_t now_ms, int limit, int *cancelled)
{
    due_tx t = {.ev = ev, .now_ms = now_ms, .limit = limit};
    int rc = cm_db_tx(db, NULL, 3, due_fn, &t);
    *cancelled = rc == 0 ? t.cancelled : 0;
    return rc;
}

/* ---- the auto-completing sweeper ---- */

typedef struct complete_due_tx {
    const ord_ev_ctx *ev;
    int64_t now_ms, default_s;
    int limit;
    int completed;
} complete_due_tx;

/* the orders of a tenant on the service default: the oldest shipments
 * first across tenants (orders_to_complete), past the default window,
 * skipping tenants with a window of their own */
#define DUE_DEFAULT                                                                                \
    "SELECT o.tenant_id, o.order_id::text FROM orders o "                                          \
    "WHERE o.state IN (3, 6) AND o.completed_at IS NULL AND o.shipped_at IS NOT NULL "             \
    "AND o.shipped_at <= to_timestamp($1::bigint / 1000.0) - make_interval(secs => $2::int) "      \
    "AND NOT EXISTS (SELECT 1 FROM tenant_settings s WHERE s.tenant_id = o.tenant_id "             \
    "AND s.auto_complete_after_s IS NOT NULL) "                                                    \
    "ORDER BY o.shipped_at LIMIT $3 FOR UPDATE OF o SKIP LOCKED"

/* the orders of tenants with a window of their own: per tenant, its
 * oldest shipments past its window (orders_to_complete_by_tenant) */
#define DUE_OWN                                                                                    \
    "SELECT d.tenant_id, d.order_id::text FROM tenant_settings s CROSS JOIN LATERAL ("             \
    "SELECT o.tenant_id, o.order_id FROM orders o WHERE o.tenant_id = s.tenant_id "                \
    "AND o.state IN (3, 6) AND o.completed_at IS NULL AND o.shipped_at IS NOT NULL "               \
    "AND o.shipped_at <= to_timestamp($1::bigint / 1000.0) "                                       \
    "- make_interval(secs => s.auto_complete_after_s) "                                            \
    "ORDER BY o.shipped_at LIMIT $2 FOR UPDATE OF o SKIP LOCKED) d "                               \
    "WHERE s.auto_complete_after_s IS NOT NULL LIMIT $2"

/* completes the (locked) orders of r through CompleteOrder's write phase */
static int complete_rows(cm_db *db, complete_due_tx *t, const PGresult *r, cm_arena *a,
                         ord_order *o)
{
    int rc = 0;
    for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
        char tenant[256];
        snprintf(tenant, sizeof tenant, "%s", PQgetvalue(r, i, 0));
        const char *oid = PQgetvalue(r, i, 1);
        rc = load(db, tenant, oid, "", a, o); /* locked; refunds for the event */
        if (rc)
            break;
        int to = 0, prev = o->state;
        if (ord_plan_complete(o, &to) == ORD_OK) {
            ord_op_req q = {.ev = t->ev,
                            .tenant = tenant,
                            .order_id = oid,
                            .op = ORD_OP_COMPLETE,
                            .now_ms = t->now_ms,
                            .at_ms = t->now_ms,
                            .completed_by = ORD_AUTO_COMPLETE_ACTOR};
            rc = apply_op(db, &q, a, o, prev, to, ORD_EV_COMPLETED);
            if (rc == 0)
                t->completed++;
        }
        cm_arena_reset(a);
    }
    return rc;
}

/* shipped, not completed, the tenant's window (or the default) passed: two
 * scans, each an index range of due rows only, so a tenant with a long
 * window never makes the others' scan read its waiting orders. rows
 * another replica holds are skipped, and a row it completed meanwhile no
 * longer matches */
static int complete_due_fn(cm_db *db, void *arg)
{
    complete_due_tx *t = arg;
    cm_arena *a = cm_arena_new(8192);
    ord_order *o = malloc(sizeof *o);
    char now[24], def[24], lim[24];
    snprintf(now, sizeof now, "%lld", (long long)t->now_ms);
    snprintf(def, sizeof def, "%lld", (long long)t->default_s);
    snprintf(lim, sizeof lim, "%d", t->limit);
    int rc = a && o ? 0 : CM_ENOMEM;
    t->completed = 0;
    PGresult *r = NULL;
    const char *p1[] = {now, def, lim};
    if (rc == 0)
        rc = exec(db, "find orders to complete", DUE_DEFAULT, 3, p1, &r);
    if (rc == 0)
        rc = complete_rows(db, t, r, a, o);
    PQclear(r);
    r = NULL;
    const char *p2[] = {now, lim};
    if (rc == 0)
        rc = exec(db, "find orders to complete (own window)", DUE_OWN, 2, p2, &r);
    if (rc == 0)
        rc = complete_rows(db, t, r, a, o);
    PQclear(r);
    free(o);
    cm_arena_free(a);
    return rc;
}

int ord_store_complete_due(cm_db *db, const ord_ev_ctx *ev, int64_t now_ms, int64_t default_s,
                           int limit, int *completed)
{
    complete_due_tx t = {.ev = ev, .now_ms = now_ms, .default_s = default_s, .limit = limit};
    int rc = cm_db_tx(db, NULL, 3, complete_due_fn, &t);
    *completed = rc == 0 ? t.completed : 0;
    return rc;
}

/* ---- list ---- */

int ord_store_list(cm_db *db, const ord_list_q *q, cm_arena *a, ord_order *out, size_t *n,
                   int *more)
{
    /* a fixed statement with optional filters: a NULL parameter is "any" */
    char *states = NULL;
    if (q->nstates) {
        int64_t st[16];
        size_t ns = q->nstates < 16 ? q->nstates : 16;
        for (size_t i = 0; i < ns; i++)
            st[i] = q->states[i];
        states = cm_buf_int_array(a, st, ns, sizeof st[0]);
    }
    const char *p[] = {
        q->tenant,
        q->buyer_id && *q->buyer_id ? q->buyer_id : NULL,
        q->merchant_id && *q->merchant_id ? q->merchant_id : NULL,
        q->channel_id && *q->channel_id ? q->channel_id : NULL,
        states,
        ms_or_null(a, q->from_ms),
        ms_or_null(a, q->to_ms),
        q->after_id ? num(a, q->after_created_ms) : NULL,
        q->after_id,
        num(a, q->limit + 1),
        q->paid ? "t" : NULL,
        q->paid ? ms_or_null(a, q->paid_from_ms) : NULL,
        q->paid ? ms_or_null(a, q->paid_to_ms) : NULL,
    };
    PGresult *r = NULL;
    int rc = cm_db_read(
        db, "list orders",
        "SELECT " ORDER_COLS " FROM orders WHERE tenant_id = $1 "
        "AND ($2::text IS NULL OR buyer_id = $2) "
        "AND ($3::text IS NULL OR merchant_id = $3) "
        "AND ($4::text IS NULL OR channel_id = $4) "
        "AND ($5::smallint[] IS NULL OR state = ANY($5::smallint[])) "
        "AND ($6::bigint IS NULL OR created_at >= to_timestamp($6::bigint / 1000.0)) "
        "AND ($7::bigint IS NULL OR created_at < to_timestamp($7::bigint / 1000.0)) "
        "AND ($8::bigint IS NULL "
        "     OR (created_at, order_id) < (to_timestamp($8::bigint / 1000.0), $9::uuid)) "
        "AND ($11::boolean IS NULL OR paid_at IS NOT NULL) "
        "AND ($12::bigint IS NULL OR paid_at >= to_timestamp($12::bigint / 1000.0)) "
        "AND ($13::bigint IS NULL OR paid_at < to_timestamp($13::bigint / 1000.0)) "
        "ORDER BY created_at DESC, order_id DESC LIMIT $10",
        13, p, &r);
    if (rc)
        return rc;
    int rows = PQntuples(r);
    *more = rows > q->limit;
    *n = 0;
    for (int i = 0; i < rows && i < q->limit; i++) {
        parse_order(r, i, &out[i]);
        (*n)++;
    }
    PQclear(r);
    for (size_t i = 0; i < *n && rc == 0; i++)
        rc = load_refunds_of(db, q->tenant, a, &out[i]);
    return rc;
}

int ord_store_tenant_timeouts(cm_db *db, const char *tenant, int64_t *normal_ms, int64_t *flash_ms)
{
    const char *p[] = {tenant};
    PGresult *r = NULL;
    int rc = read_row(db, "get tenant settings",
                      "SELECT payment_timeout_s, flash_payment_timeout_s FROM tenant_settings "
                      "WHERE tenant_id = $1",
                      1, p, &r);
    if (rc)
        return rc;
    *normal_ms = i64(r, 0, 0) * 1000;
    *flash_ms = i64(r, 0, 1) * 1000;
    PQclear(r);
    return 0;
}

/* ---- tenant settings (PutTenantSettings) ---- */

#define SETTINGS_COLS                                                                              \
    "payment_timeout_s, flash_payment_timeout_s, revision, " MS(                                   \
        "updated_at") ", updated_by, "                                                             \
                      "coalesce(auto_complete_after_s, 0)"

static void parse_settings(const PGresult *r, int row, ord_settings *s)
{
    memset(s, 0, sizeof *s);
    s->timeout_s = i64(r, row, 0);
    s->flash_s = i64(r, row, 1);
    s->revision = i64(r, row, 2);
    s->updated_ms = i64(r, row, 3);
    cpy(s->updated_by, sizeof s->updated_by, r, row, 4);
    s->auto_s = i64(r, row, 5);
}

int ord_store_get_settings(cm_db *db, const char *tenant, ord_settings *s)
{
    const char *p[] = {tenant};
    PGresult *r = NULL;
    int rc =
        read_row(db, "get tenant settings row",
                 "SELECT " SETTINGS_COLS " FROM tenant_settings WHERE tenant_id = $1", 1, p, &r);
    if (rc)
        return rc;
    parse_settings(r, 0, s);
    PQclear(r);
    return 0;
}

typedef struct settings_tx {
    const ord_settings_req *q;
    ord_settings *now;
    ord_settings_change *c;
    int verdict;
} settings_tx;

/* the audit entry a request_id wrote: 1 found (hash in *hash_same: 1 when
 * the body is the same), 0 none, or a CM_E* */
static int find_settings_change(cm_db *db, const ord_settings_req *q, ord_settings_change *c,
                                int *same)
{
    const char *p[] = {q->tenant, q->request_id};
    PGresult *r = NULL;
    int rc = exec(
        db, "find settings change",
        "SELECT change_id::text, body_hash, revision, old_revision, "
        "coalesce(old_payment_timeout_s, 0), coalesce(old_flash_payment_timeout_s, 0), "
        "(old_payment_timeout_s IS NOT NULL)::int, new_payment_timeout_s, "
        "new_flash_payment_timeout_s, actor, principal, reason, " MS(
            "changed_at") ", coalesce(old_auto_complete_after_s, 0), "
                          "coalesce(new_auto_complete_after_s, 0) "
                          "FROM tenant_settings_changes WHERE tenant_id = $1 AND request_id = $2",
        2, p, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return 0;
    }
    *same = strcmp(PQgetvalue(r, 0, 1), q->hash) == 0;
    memset(c, 0, sizeof *c);
    cpy(c->change_id, sizeof c->change_id, r, 0, 0);
    snprintf(c->request_id, sizeof c->request_id, "%s", q->request_id);
    c->cur.revision = i64(r, 0, 2);
    c->old.revision = i64(r, 0, 3);
    c->old.timeout_s = i64(r, 0, 4);
    c->old.flash_s = i64(r, 0, 5);
    c->has_old = i64(r, 0, 6) != 0;
    c->cur.timeout_s = i64(r, 0, 7);
    c->cur.flash_s = i64(r, 0, 8);
    cpy(c->actor, sizeof c->actor, r, 0, 9);
    cpy(c->principal, sizeof c->principal, r, 0, 10);
    cpy(c->reason, sizeof c->reason, r, 0, 11);
    c->changed_ms = i64(r, 0, 12);
    c->old.auto_s = i64(r, 0, 13);
    c->cur.auto_s = i64(r, 0, 14);
    c->cur.updated_ms = c->changed_ms;
    snprintf(c->cur.updated_by, sizeof c->cur.updated_by, "%s", c->principal);
    PQclear(r);
    return 1;
}

/* the tenant's row, locked; 1 found, 0 none, or a CM_E* */
static int lock_settings(cm_db *db, const char *tenant, ord_settings *s)
{
    const char *p[] = {tenant};
    PGresult *r = NULL;
    int rc = exec(db, "lock tenant settings",
                  "SELECT " SETTINGS_COLS " FROM tenant_settings WHERE tenant_id = $1 FOR UPDATE",
                  1, p, &r);
    if (rc)
        return rc;
    int found = PQntuples(r) > 0;
    if (found)
        parse_settings(r, 0, s);
    else
        memset(s, 0, sizeof *s);
    PQclear(r);
    return found;
}

static int put_settings_fn(cm_db *db, void *arg)
{
    settings_tx *t = arg;
    const ord_settings_req *q = t->q;
    ord_settings_change *c = t->c;
    char buf[10][24];
    /* the key first: a retry answers with what its first call recorded */
    int same = 0;
    int rc = find_settings_change(db, q, c, &same);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        t->verdict = same ? ORD_SAME : ORD_KEY_REUSED;
        rc = lock_settings(db, q->tenant, t->now);
        return rc < 0 ? rc : 0;
    }
    ord_settings old;
    int had = lock_settings(db, q->tenant, &old);
    if (had < 0)
        return had;
    if (q->expected_revision > 0 && q->expected_revision != old.revision) {
        t->verdict = ORD_VERSION;
        *t->now = old;
        return 0;
    }
    memset(c, 0, sizeof *c);
    if (cm_id_uuid7(c->change_id) != 0)
        return CM_EINTERNAL;
    snprintf(c->request_id, sizeof c->request_id, "%s", q->request_id);
    c->has_old = had;
    c->old = old;
    c->cur.timeout_s = q->timeout_s;
    c->cur.flash_s = q->flash_s;
    c->cur.auto_s = q->auto_s;
    c->cur.revision = old.revision + 1;
    c->cur.updated_ms = q->now_ms;
    snprintf(c->cur.updated_by, sizeof c->cur.updated_by, "%s", q->principal);
    snprintf(c->actor, sizeof c->actor, "%s", q->actor);
    snprintf(c->principal, sizeof c->principal, "%s", q->principal);
    snprintf(c->reason, sizeof c->reason, "%s", q->reason);
    c->changed_ms = q->now_ms;

    snprintf(buf[0], sizeof buf[0], "%lld", (long long)q->timeout_s);
    snprintf(buf[1], sizeof buf[1], "%lld", (long long)q->flash_s);
    snprintf(buf[2], sizeof buf[2], "%lld", (long long)c->cur.revision);
    snprintf(buf[3], sizeof buf[3], "%lld", (long long)q->now_ms);
    snprintf(buf[7], sizeof buf[7], "%lld", (long long)q->auto_s);
    const char *row[] = {
        q->tenant, buf[0], buf[1], buf[2], buf[3], q->principal, q->auto_s > 0 ? buf[7] : NULL};
    PGresult *r = NULL;
    /* a tenant without a row: two first puts race to insert it; the loser
     * inserts nothing and runs again, then finds the row and locks it */
    rc = exec(db, "write tenant settings",
              had ? "UPDATE tenant_settings SET payment_timeout_s = $2, "
                    "flash_payment_timeout_s = $3, revision = $4, updated_at = " TS(
                        "$5") ", "
                              "updated_by = $6, auto_complete_after_s = $7 "
                              "WHERE tenant_id = $1 RETURNING 1"
                  : "INSERT INTO tenant_settings (tenant_id, payment_timeout_s, "
                    "flash_payment_timeout_s, revision, updated_at, updated_by, "
                    "auto_complete_after_s) VALUES ($1, $2, $3, $4, " TS(
                        "$5") ", $6, $7) ON CONFLICT DO NOTHING RETURNING 1",
              7, row, &r);
    if (rc)
        return rc;
    int wrote = PQntuples(r) == 1;
    PQclear(r);
    if (!wrote)
        return CM_ECONFLICT;

    snprintf(buf[4], sizeof buf[4], "%lld", (long long)old.revision);
    snprintf(buf[5], sizeof buf[5], "%lld", (long long)old.timeout_s);
    snprintf(buf[6], sizeof buf[6], "%lld", (long long)old.flash_s);
    snprintf(buf[8], sizeof buf[8], "%lld", (long long)old.auto_s);
    const char *audit[] = {q->tenant,
                           q->request_id,
                           c->change_id,
                           q->hash,
                           buf[2],
                           buf[4],
                           had ? buf[5] : NULL,
                           had ? buf[6] : NULL,
                           buf[0],
                           buf[1],
                           q->actor,
                           q->principal,
                           q->reason,
                           buf[3],
                           had && old.auto_s > 0 ? buf[8] : NULL,
                           q->auto_s > 0 ? buf[7] : NULL};
    /* binds the key; a concurrent call with the same key waits here for the
     * other transaction and then runs again into the branch above */
    rc = exec(db, "record settings change",
              "INSERT INTO tenant_settings_changes (tenant_id, request_id, change_id, body_hash, "
              "revision, old_revision, old_payment_timeout_s, old_flash_payment_timeout_s, "
              "new_payment_timeout_s, new_flash_payment_timeout_s, actor, principal, reason, "
              "changed_at, old_auto_complete_after_s, new_auto_complete_after_s) VALUES ($1, $2, "
              "$3::uuid, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, " TS(
                  "$14") ", $15, $16) ON CONFLICT (tenant_id, request_id) DO NOTHING RETURNING 1",
              16, audit, &r);
    if (rc)
        return rc;
    int bound = PQntuples(r) == 1;
    PQclear(r);
    if (!bound)
        return CM_ECONFLICT;
    t->verdict = ORD_OK;
    *t->now = c->cur;
    return 0;
}

int ord_store_put_settings(cm_db *db, const ord_settings_req *q, ord_settings *now,
                           ord_settings_change *c, int *verdict)
{
    settings_tx t = {.q = q, .now = now, .c = c};
    int rc = cm_db_tx(db, NULL, 5, put_settings_fn, &t);
    if (rc == 0)
        *verdict = t.verdict;
    return rc;
}

/* ---- margin ---- */

int ord_store_query_margin(cm_db *db, const char *tenant, const char *sku, const char *fs,
                           int64_t from_ms, int64_t to_ms, ord_margin_row *rows, size_t cap,
                           size_t *n)
{
    char from[24], to[24];
    snprintf(from, sizeof from, "%lld", (long long)from_ms);
    snprintf(to, sizeof to, "%lld", (long long)to_ms);
    const char *p[] = {tenant, sku, fs, from, to};
    PGresult *r = NULL;
    /* orders from before migration 0006 have NULL cost arrays: unnest pads
     * them with NULLs, counted as lines of unknown cost */
    int rc = cm_db_read(
        db, "query margin",
        "SELECT o.currency, count(DISTINCT o.order_id), coalesce(sum(l.q * l.p), 0)::bigint, "
        "coalesce(sum(l.ra), 0)::bigint, "
        "coalesce(sum(CASE WHEN l.c >= 0 THEN l.q * l.c ELSE 0 END), 0)::bigint, "
        "coalesce(sum(coalesce(l.cr, 0)), 0)::bigint, "
        "count(*) FILTER (WHERE l.c IS NULL OR l.c < 0) "
        "FROM orders o, unnest(o.line_sku, o.line_qty, o.line_price, o.line_refunded_amount, "
        "  o.line_flash_sale, o.line_unit_cost, o.line_cost_reversed) AS l(s, q, p, ra, f, c, cr) "
        "WHERE o.tenant_id = $1 AND o.paid_at IS NOT NULL "
        "AND ($4::bigint = 0 OR o.paid_at >= " TS(
            "$4") ") "
                  "AND ($5::bigint = 0 OR o.paid_at < " TS(
                      "$5") ") "
                            "AND ($2 = '' OR l.s = $2) AND ($3 = '' OR l.f = $3) "
                            "GROUP BY o.currency ORDER BY o.currency",
        5, p, &r);
    if (rc)
        return rc;
    *n = 0;
    for (int i = 0; i < PQntuples(r) && *n < cap; i++) {
        ord_margin_row *m = &rows[(*n)++];
        cpy(m->currency, sizeof m->currency, r, i, 0);
        m->orders = i64(r, i, 1);
        m->revenue = i64(r, i, 2);
        m->refunded = i64(r, i, 3);
        m->cost = i64(r, i, 4);
        m->reversed = i64(r, i, 5);
        m->uncosted = i64(r, i, 6);
    }
    PQclear(r);
    return 0;
}
