/* reconciliation (对账): see stl_recon.h, RECONCILIATION.md */
#include "stl_recon.h"

#include "cm_buf.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "cm_money.h"
#include "cm_page.h"
#include "cm_pb.h"
#include "cm_service.h"
#include "stl_api.h"
#include "stl_store.h"

#include <grpc/status.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commerce/settlement/v1/settlement_service.pb-c.h"

/* ---- helpers ---- */

static int fail_field(cm_rpc_ctx *ctx, const char *field, const char *why)
{
    return cm_rpc_fail_field(ctx, field, why);
}

static const char *num(char *buf, size_t cap, long long v)
{
    snprintf(buf, cap, "%lld", v);
    return buf;
}

/* a Date that exists into "YYYY-MM-DD"; 0 or a failure naming field */
static int date_in(cm_rpc_ctx *ctx, const Commerce__Common__V1__Date *d, const char *field,
                   char out[STL_DATE_LEN])
{
    char t[24] = "";
    if (d && d->year >= 1 && d->year <= 9999 && d->month >= 1 && d->month <= 12 && d->day >= 1 &&
        d->day <= 31)
        snprintf(t, sizeof t, "%04d-%02d-%02d 00:00:00", d->year, d->month, d->day);
    if (!stl_recon_time_valid(t))
        return fail_field(ctx, field, "required: a date that exists (year 1-9999)");
    memcpy(out, t, 10);
    out[10] = '\0';
    return 0;
}

static Commerce__Common__V1__Date *pb_date(cm_arena *a, const char *ymd)
{
    Commerce__Common__V1__Date *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__common__v1__date__init(m);
    int y = 0, mo = 0, d = 0;
    if (sscanf(ymd, "%d-%d-%d", &y, &mo, &d) != 3)
        return NULL;
    m->year = y;
    m->month = mo;
    m->day = d;
    return m;
}

static const char *date_text(char out[STL_DATE_LEN], const char *pg)
{
    snprintf(out, STL_DATE_LEN, "%s", pg);
    return out;
}

/* ---- ImportStatement ---- */

enum { STL_DUPLICATE = 10 }; /* a verdict: a line listed twice */

typedef struct import_cols {
    cm_buf line, kind, time, txn, order, refund, currency, amount, fee;
    int64_t lines, payments, refunds;
} import_cols;

static cm_buf *cols_at(import_cols *c, int i)
{
    cm_buf *b[] = {&c->line,   &c->kind,     &c->time,   &c->txn, &c->order,
                   &c->refund, &c->currency, &c->amount, &c->fee};
    return i < 9 ? b[i] : NULL;
}

static int collect(void *arg, const stl_stmt_line *l)
{
    import_cols *c = arg;
    cm_buf_array_int(&c->line, l->line);
    cm_buf_array_int(&c->kind, l->kind);
    cm_buf_array_text(&c->time, l->time);
    cm_buf_array_text(&c->txn, l->txn);
    cm_buf_array_text(&c->order, l->order_id);
    cm_buf_array_text(&c->refund, l->refund_id);
    cm_buf_array_text(&c->currency, l->currency);
    cm_buf_array_int(&c->amount, l->amount);
    cm_buf_array_int(&c->fee, l->fee);
    c->lines++;
    if (l->kind == STL_LINE_PAYMENT)
        c->payments++;
    else
        c->refunds++;
    return 0;
}

typedef struct import_tx {
    const char *tenant, *request_id, *hash, *date, *principal;
    import_cols *c;
    int verdict; /* STL_OK, STL_SAME, STL_KEY_REUSED, STL_DUPLICATE */
    int dup_line, dup_first, dup_kind;
    char date_out[STL_DATE_LEN];
    int64_t lines, payments, refunds, imported_ms;
    int replaced;
} import_tx;

static int import_fn(cm_db *db, void *arg)
{
    import_tx *t = arg;
    const char *k[] = {t->tenant, t->request_id, t->date};
    PGresult *r = NULL;
    /* one import of a tenant's date at a time; the key's first use wins */
    int rc = cm_db_exec(
        db, "lock statement",
        "SELECT pg_advisory_xact_lock(hashtext('settlement.statement:' || $1 || '/' || $3::text)), "
        "i.body_hash, i.bill_date::text, i.lines, i.payment_count, i.refund_count, "
        "i.replaced::int, (extract(epoch FROM i.imported_at) * 1000)::bigint, (SELECT count(*) "
        "FROM statements WHERE tenant_id = $1 AND bill_date = $3::date) FROM (SELECT 1) one LEFT "
        "JOIN statement_imports i ON i.tenant_id = $1 AND i.request_id = $2",
        3, k, &r);
    if (rc)
        return rc;
    if (!PQgetisnull(r, 0, 1)) {
        t->verdict = strcmp(PQgetvalue(r, 0, 1), t->hash) == 0 ? STL_SAME : STL_KEY_REUSED;
        date_text(t->date_out, PQgetvalue(r, 0, 2));
        t->lines = cm_db_int(r, 0, 3);
        t->payments = cm_db_int(r, 0, 4);
        t->refunds = cm_db_int(r, 0, 5);
        t->replaced = (int)cm_db_int(r, 0, 6);
        t->imported_ms = cm_db_int(r, 0, 7);
        PQclear(r);
        return 0;
    }
    t->replaced = cm_db_int(r, 0, 8) > 0;
    PQclear(r);
    import_cols *c = t->c;
    /* an item listed twice: the later line is at fault */
    const char *d[] = {c->line.p, c->order.p, c->kind.p, c->refund.p};
    rc = cm_db_exec(db, "check statement duplicates",
                    "SELECT l, f, k FROM (SELECT l, k, min(l) OVER (PARTITION BY o, k, r) AS f "
                    "FROM unnest($1::int[], $2::uuid[], $3::smallint[], $4::text[]) AS u(l, o, k, "
                    "r)) x WHERE l <> f ORDER BY l LIMIT 1",
                    4, d, &r);
    if (rc)
        return rc;
    if (PQntuples(r)) {
        t->verdict = STL_DUPLICATE;
        t->dup_line = (int)cm_db_int(r, 0, 0);
        t->dup_first = (int)cm_db_int(r, 0, 1);
        t->dup_kind = (int)cm_db_int(r, 0, 2);
        PQclear(r);
        return 0;
    }
    PQclear(r);
    const char *del[] = {t->tenant, t->date};
    rc = cm_db_exec(db, "drop statement lines",
                    "DELETE FROM statement_lines WHERE tenant_id = $1 AND bill_date = $2::date", 2,
                    del, NULL);
    if (rc)
        return rc;
    const char *p[] = {t->tenant,  t->date,     c->line.p,     c->kind.p,   c->time.p, c->txn.p,
                       c->order.p, c->refund.p, c->currency.p, c->amount.p, c->fee.p};
    rc =
        cm_db_exec(db, "store statement lines",
                   "INSERT INTO statement_lines (tenant_id, bill_date, line_no, kind, "
                   "transaction_time, provider_txn_id, order_id, refund_id, currency, amount, fee) "
                   "SELECT $1, $2::date, u.* FROM unnest($3::int[], $4::smallint[], "
                   "$5::timestamp[], $6::text[], $7::uuid[], $8::text[], $9::text[], "
                   "$10::bigint[], $11::bigint[]) AS u",
                   11, p, NULL);
    if (rc)
        return rc;
    char n[24], pc[24], rn[24];
    const char *s[] = {t->tenant,
                       t->date,
                       t->request_id,
                       num(n, sizeof n, c->lines),
                       t->principal,
                       t->hash,
                       num(pc, sizeof pc, c->payments),
                       num(rn, sizeof rn, c->refunds),
                       t->replaced ? "true" : "false"};
    rc = cm_db_exec(
        db, "store statement",
        "WITH s AS (INSERT INTO statements (tenant_id, bill_date, request_id, lines, imported_by) "
        "VALUES ($1, $2::date, $3, $4, $5) ON CONFLICT (tenant_id, bill_date) DO UPDATE SET "
        "request_id = EXCLUDED.request_id, lines = EXCLUDED.lines, imported_at = now(), "
        "imported_by = EXCLUDED.imported_by) INSERT INTO statement_imports (tenant_id, "
        "request_id, body_hash, bill_date, lines, payment_count, refund_count, replaced, "
        "imported_by) VALUES ($1, $3, $6, $2::date, $4, $7, $8, $9::boolean, $5) RETURNING "
        "(extract(epoch FROM imported_at) * 1000)::bigint",
        9, s, &r);
    if (rc == CM_EEXIST)
        return CM_ECONFLICT; /* the key was taken meanwhile (another date): run again */
    if (rc)
        return rc;
    t->imported_ms = cm_db_int(r, 0, 0);
    PQclear(r);
    t->verdict = STL_OK;
    snprintf(t->date_out, sizeof t->date_out, "%s", t->date);
    t->lines = c->lines;
    t->payments = c->payments;
    t->refunds = c->refunds;
    return 0;
}

int stl_api_import_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__ImportStatementRequest *req,
                      char date[STL_DATE_LEN])
{
    if (!cm_id_key_valid(req->request_id, STL_ID_MAX))
        return fail_field(ctx, "request_id", "required: 1-64 characters from [A-Za-z0-9._:-]");
    if (date_in(ctx, req->bill_date, "bill_date", date))
        return -1;
    if (strlen(req->csv) > STL_CSV_MAX_BYTES)
        return fail_field(ctx, "csv", "at most 4000000 bytes");
    return 0;
}

int stl_import_statement(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__ImportStatementRequest *req = (const void *)in;
    Commerce__Settlement__V1__ImportStatementResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    char date[STL_DATE_LEN];
    if (stl_api_import_in(ctx, req, date))
        return -1;
    size_t len = strlen(req->csv);
    char h1[CM_SHA256_HEX], hash[CM_SHA256_HEX];
    cm_sha256_hex(req->csv, len, h1);
    const char *body = cm_arena_printf(a, "statement.v1|%s|%s", date, h1);
    if (!body)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "statement");
    cm_sha256_hex(body, strlen(body), hash);
    import_cols c;
    memset(&c, 0, sizeof c);
    for (int i = 0; i < 9; i++)
        cm_buf_array_begin(cols_at(&c, i));
    char why[256];
    int at = 0, oom = 0;
    int rc = stl_recon_parse(req->csv, len, collect, &c, why, sizeof why, &at);
    for (int i = 0; i < 9; i++) {
        cm_buf_array_end(cols_at(&c, i));
        oom |= cols_at(&c, i)->oom;
    }
    if (rc == 0 && oom)
        rc = CM_ENOMEM;
    if (rc) {
        for (int i = 0; i < 9; i++)
            cm_buf_free(cols_at(&c, i));
        return rc == CM_EINVAL ? fail_field(ctx, "csv", why)
                               : cm_rpc_fail_err(ctx, rc, "could not read the statement");
    }
    const char *who = cm_rpc_ctx_subject(ctx);
    import_tx t = {.tenant = cm_rpc_ctx_tenant(ctx),
                   .request_id = req->request_id,
                   .hash = hash,
                   .date = date,
                   .principal = who ? who : "",
                   .c = &c};
    rc = cm_db_tx(cm_service_db(ctx), NULL, 3, import_fn, &t);
    for (int i = 0; i < 9; i++)
        cm_buf_free(cols_at(&c, i));
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not store the statement");
    if (t.verdict == STL_KEY_REUSED) {
        int f = cm_rpc_fail(ctx, GRPC_STATUS_ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                            "request_id was already used with a different request");
        cm_rpc_fail_meta(ctx, "field", "request_id");
        return f;
    }
    if (t.verdict == STL_DUPLICATE)
        return fail_field(ctx, "csv",
                          cm_arena_printf(a, "line %d: %s listed twice (first at line %d)",
                                          t.dup_line,
                                          t.dup_kind == STL_LINE_PAYMENT ? "the order's payment"
                                                                         : "the order's refund",
                                          t.dup_first));
    if (t.verdict == STL_OK)
        cm_log_info("statement imported", "tenant", t.tenant, "bill_date", date, "lines",
                    cm_arena_printf(a, "%lld", (long long)t.lines), "replaced",
                    t.replaced ? "true" : "false", "principal", t.principal, NULL);
    resp->bill_date = pb_date(a, t.date_out);
    resp->lines = t.lines;
    resp->payment_count = t.payments;
    resp->refund_count = t.refunds;
    resp->replaced = t.replaced != 0;
    resp->imported_at = cm_pb_timestamp(a, t.imported_ms);
    return resp->bill_date && resp->imported_at ? 0 : cm_rpc_fail_err(ctx, CM_ENOMEM, "statement");
}

/* ---- the comparisons ---- */

/* $1 tenant, $2 local date, $3 currency, $4 time zone: the date's bounds */
#define RECON_BOUNDS                                                                               \
    "b AS (SELECT ($2::date)::timestamp AT TIME ZONE $4::text AS lo, ($2::date + 1)::timestamp "   \
    "AT TIME ZONE $4::text AS hi)"

/* the differences with the statement of the date, one row each: kind,
 * line kind, order, refund id, provider txn, line, entry, ledger amount,
 * statement amount, ledger fee, statement fee */
#define RECON_DIFFS                                                                                \
    "d AS (SELECT CASE WHEN e.entry_id IS NULL THEN 1 WHEN e.amount <> l.amount THEN 3 ELSE 4 "    \
    "END AS kind, 1 AS lk, l.order_id, ''::text AS ref, l.provider_txn_id AS txn, l.line_no, "     \
    "coalesce(e.entry_id, 0) AS entry_id, coalesce(e.amount, 0) AS la, l.amount AS sa, "           \
    "coalesce(e.fee, 0) AS lf, l.fee AS sf FROM statement_lines l LEFT JOIN entries e ON "         \
    "e.tenant_id = l.tenant_id AND e.order_id = l.order_id AND e.kind = 1 AND e.ref = '' AND "     \
    "e.currency = l.currency WHERE l.tenant_id = $1 AND l.bill_date = $2::date AND l.currency = "  \
    "$3::text AND l.kind = 1 AND (e.entry_id IS NULL OR e.amount <> l.amount OR e.fee <> l.fee) "  \
    "UNION ALL SELECT CASE WHEN e.entry_id IS NULL THEN 1 ELSE 5 END, 2, l.order_id, "             \
    "l.refund_id, l.provider_txn_id, l.line_no, coalesce(e.entry_id, 0), coalesce(e.amount, 0), "  \
    "l.amount, coalesce(e.fee, 0), l.fee FROM statement_lines l LEFT JOIN entries e ON "           \
    "e.tenant_id = l.tenant_id AND e.order_id = l.order_id AND e.kind = 2 AND e.ref = "            \
    "l.refund_id AND e.currency = l.currency WHERE l.tenant_id = $1 AND l.bill_date = $2::date "   \
    "AND l.currency = $3::text AND l.kind = 2 AND (e.entry_id IS NULL OR e.amount <> l.amount OR " \
    "e.fee <> l.fee) UNION ALL SELECT 2, 1, e.order_id, '', '', 0, e.entry_id, e.amount, 0, "      \
    "e.fee, 0 FROM b, order_splits s JOIN entries e ON e.tenant_id = s.tenant_id AND e.order_id "  \
    "= s.order_id AND e.kind = 1 AND e.ref = '' WHERE s.tenant_id = $1 AND s.currency = $3::text " \
    "AND s.paid_at >= b.lo AND s.paid_at < b.hi AND e.currency = $3::text AND NOT EXISTS (SELECT " \
    "1 FROM statement_lines x WHERE x.tenant_id = $1 AND x.order_id = e.order_id AND x.kind = 1 "  \
    "AND x.refund_id = '' AND x.currency = $3::text) UNION ALL SELECT 2, 2, e.order_id, e.ref, "   \
    "'', 0, e.entry_id, e.amount, 0, e.fee, 0 FROM b, entries e WHERE e.tenant_id = $1 AND "       \
    "e.kind = 2 AND e.currency = $3::text AND e.posted_at >= b.lo AND e.posted_at < b.hi AND NOT " \
    "EXISTS (SELECT 1 FROM statement_lines x WHERE x.tenant_id = $1 AND x.order_id = e.order_id "  \
    "AND x.kind = 2 AND x.refund_id = e.ref AND x.currency = $3::text))"

/* every account's buckets against the sums of its postings */
#define POSTING_SUMS(where)                                                                        \
    "(SELECT x.id, sum(x.amt) FILTER (WHERE x.bk = 1) AS p, sum(x.amt) FILTER (WHERE x.bk = 2) "   \
    "AS v, sum(x.amt) FILTER (WHERE x.bk = 3) AS y, sum(x.amt) FILTER (WHERE x.bk = 4) AS o "      \
    "FROM entries e, unnest(e.account_ids, e.buckets, e.amounts) AS x(id, bk, amt) " where         \
    " GROUP BY x.id) j ON j.id = a.account_id"
#define MISMATCH                                                                                   \
    "(a.pending <> coalesce(j.p, 0) OR a.available <> coalesce(j.v, 0) OR a.paying <> "            \
    "coalesce(j.y, 0) OR a.paid_out <> coalesce(j.o, 0))"

static int count_diffs(cm_db *db, const char *const p[4], int64_t *n)
{
    PGresult *r = NULL;
    int rc = cm_db_read(db, "count reconciliation differences",
                        "WITH " RECON_BOUNDS ", " RECON_DIFFS " SELECT count(*) FROM d", 4, p, &r);
    if (rc)
        return rc;
    *n = cm_db_int(r, 0, 0);
    PQclear(r);
    return 0;
}

typedef struct recon_tx {
    const char *p[4]; /* tenant, date, currency, time zone */
    int64_t v[12];
    int64_t total, mismatched;
    int has_stmt;
    char request_id[STL_ID_MAX + 1], by[STL_PRINCIPAL_MAX + 1];
    int64_t s[8]; /* imported ms, lines, payments (n, amount, fee), refunds (n, amount, fee) */
    int64_t diffs, now_ms;
} recon_tx;

static int recon_fn(cm_db *db, void *arg)
{
    recon_tx *t = arg;
    PGresult *r = NULL;
    int rc = cm_db_exec(
        db, "reconcile the ledger",
        "WITH " RECON_BOUNDS ", p AS (SELECT count(*) AS n, coalesce(sum(s.amount), 0) AS amt, "
        "count(e.entry_id) AS ne, coalesce(sum(e.amount), 0) AS ea, coalesce(sum(e.fee), 0) AS "
        "ef, count(*) FILTER (WHERE e.entry_id IS NULL OR e.amount <> s.amount OR e.fee <> "
        "s.fee) AS bad FROM b, order_splits s LEFT JOIN entries e ON e.tenant_id = s.tenant_id "
        "AND e.order_id = s.order_id AND e.kind = 1 AND e.ref = '' WHERE s.tenant_id = $1 AND "
        "s.currency = $3::text AND s.paid_at >= b.lo AND s.paid_at < b.hi), r AS (SELECT "
        "count(*) AS n, coalesce(sum(e.amount), 0) AS amt, coalesce(sum(e.fee), 0) AS fee FROM "
        "b, entries e WHERE e.tenant_id = $1 AND e.kind = 2 AND e.currency = $3::text AND "
        "e.posted_at >= b.lo AND e.posted_at < b.hi) SELECT p.n, p.amt, p.ne, p.ea, p.ef, p.bad, "
        "r.n, r.amt, r.fee, (SELECT coalesce(sum(pending::numeric + available + paying + "
        "paid_out), 0) FROM accounts WHERE tenant_id = $1 AND currency = $3::text), (SELECT "
        "count(*) FROM accounts a LEFT JOIN " POSTING_SUMS(
            "WHERE e.tenant_id = $1 AND e.currency = $3::text") " WHERE a.tenant_id = $1 AND "
                                                                "a.currency = $3::text "
                                                                "AND " MISMATCH
                                                                "), (extract(epoch FROM "
                                                                "clock_timestamp()) * "
                                                                "1000)::bigint FROM p, r",
        4, t->p, &r);
    if (rc)
        return rc;
    for (int i = 0; i < 9; i++)
        t->v[i] = cm_db_int(r, 0, i);
    t->total = cm_db_int(r, 0, 9);
    t->mismatched = cm_db_int(r, 0, 10);
    t->now_ms = cm_db_int(r, 0, 11);
    PQclear(r);
    const char *q[] = {t->p[0], t->p[1], t->p[2]};
    rc = cm_db_exec(
        db, "read statement summary",
        "SELECT st.request_id, st.imported_by, (extract(epoch FROM st.imported_at) * "
        "1000)::bigint, st.lines, count(l.line_no) FILTER (WHERE l.kind = 1), "
        "coalesce(sum(l.amount) FILTER (WHERE l.kind = 1), 0), coalesce(sum(l.fee) FILTER (WHERE "
        "l.kind = 1), 0), count(l.line_no) FILTER (WHERE l.kind = 2), coalesce(sum(l.amount) "
        "FILTER (WHERE l.kind = 2), 0), coalesce(sum(l.fee) FILTER (WHERE l.kind = 2), 0) FROM "
        "statements st LEFT JOIN statement_lines l ON l.tenant_id = st.tenant_id AND l.bill_date "
        "= st.bill_date AND l.currency = $3::text WHERE st.tenant_id = $1 AND st.bill_date = "
        "$2::date GROUP BY st.request_id, st.imported_by, st.imported_at, st.lines",
        3, q, &r);
    if (rc)
        return rc;
    t->has_stmt = PQntuples(r) > 0;
    if (t->has_stmt) {
        snprintf(t->request_id, sizeof t->request_id, "%s", PQgetvalue(r, 0, 0));
        snprintf(t->by, sizeof t->by, "%s", PQgetvalue(r, 0, 1));
        for (int i = 0; i < 8; i++)
            t->s[i] = cm_db_int(r, 0, i + 2);
    }
    PQclear(r);
    t->diffs = 0;
    return t->has_stmt ? count_diffs(db, t->p, &t->diffs) : 0;
}

/* the date and currency of a request; 0 or a failure */
static int recon_in(cm_rpc_ctx *ctx, const Commerce__Common__V1__Date *d, const char *currency,
                    char date[STL_DATE_LEN])
{
    if (date_in(ctx, d, "date", date))
        return -1;
    if (!cm_money_currency_valid(currency))
        return fail_field(ctx, "currency", "required: a known ISO-4217 code");
    return 0;
}

int stl_api_recon_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__GetReconciliationRequest *req,
                     char date[STL_DATE_LEN])
{
    return recon_in(ctx, req->date, req->currency, date);
}

int stl_api_recon_diffs_in(
    cm_rpc_ctx *ctx, const Commerce__Settlement__V1__ListReconciliationDifferencesRequest *req,
    char date[STL_DATE_LEN], stl_list_in *li)
{
    memset(li, 0, sizeof *li);
    if (recon_in(ctx, req->date, req->currency, date))
        return -1;
    const char *f = cm_arena_printf(cm_rpc_ctx_arena(ctx), "%s|%s", date, req->currency);
    if (!f)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "differences");
    li->filters = cm_page_filters(f);
    return cm_page_begin(ctx, req->page_size, req->page_token, 'x', li->filters, li->pos,
                         &li->after, &li->limit);
}

/* the tenant's settings (its time zone); 0 or a failure */
static int recon_settings(cm_rpc_ctx *ctx, stl_settings *set)
{
    stl_app *app = cm_service_app(ctx);
    int rc =
        stl_store_get_settings(cm_service_db(ctx), cm_rpc_ctx_tenant(ctx), &app->defaults, set);
    return rc ? cm_rpc_fail_err(ctx, rc, "could not read the tenant's settings") : 0;
}

int stl_get_reconciliation(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__GetReconciliationRequest *req = (const void *)in;
    Commerce__Settlement__V1__GetReconciliationResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    char date[STL_DATE_LEN];
    stl_settings set;
    if (stl_api_recon_in(ctx, req, date) || recon_settings(ctx, &set))
        return -1;
    recon_tx t = {.p = {cm_rpc_ctx_tenant(ctx), date, req->currency, set.tz}};
    /* one snapshot: the sums agree with each other */
    int rc = cm_db_tx(cm_service_db(ctx), "REPEATABLE READ", 3, recon_fn, &t);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not reconcile");
    Commerce__Settlement__V1__Reconciliation *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "reconciliation");
    commerce__settlement__v1__reconciliation__init(m);
    m->date = pb_date(a, date);
    m->currency = cm_arena_strdup(a, req->currency);
    m->time_zone = cm_arena_strdup(a, set.tz);
    m->paid_orders = t.v[0];
    m->paid_amount_minor = t.v[1];
    m->split_entries = t.v[2];
    m->split_amount_minor = t.v[3];
    m->split_fee_minor = t.v[4];
    m->unposted_orders = t.v[5];
    m->refund_entries = t.v[6];
    m->refunded_amount_minor = t.v[7];
    m->refund_fee_minor = t.v[8];
    m->ledger_total_minor = t.total;
    m->mismatched_accounts = t.mismatched;
    m->ledger_balanced = t.total == 0 && t.mismatched == 0;
    m->differences = t.diffs;
    m->computed_at = cm_pb_timestamp(a, t.now_ms);
    if (t.has_stmt) {
        Commerce__Settlement__V1__StatementSummary *s = cm_arena_calloc(a, 1, sizeof *s);
        if (!s)
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "reconciliation");
        commerce__settlement__v1__statement_summary__init(s);
        s->request_id = cm_arena_strdup(a, t.request_id);
        s->imported_by = cm_arena_strdup(a, t.by);
        s->imported_at = cm_pb_timestamp(a, t.s[0]);
        s->lines = t.s[1];
        s->payment_count = t.s[2];
        s->payment_amount_minor = t.s[3];
        s->payment_fee_minor = t.s[4];
        s->refund_count = t.s[5];
        s->refund_amount_minor = t.s[6];
        s->refund_fee_minor = t.s[7];
        if (!s->request_id || !s->imported_by || !s->imported_at)
            return cm_rpc_fail_err(ctx, CM_ENOMEM, "reconciliation");
        m->statement = s;
    }
    if (!m->date || !m->currency || !m->time_zone || !m->computed_at)
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "reconciliation");
    resp->reconciliation = m;
    return 0;
}

int stl_list_reconciliation_differences(cm_rpc_ctx *ctx, const ProtobufCMessage *in,
                                        ProtobufCMessage *out)
{
    const Commerce__Settlement__V1__ListReconciliationDifferencesRequest *req = (const void *)in;
    Commerce__Settlement__V1__ListReconciliationDifferencesResponse *resp = (void *)out;
    cm_arena *a = cm_rpc_ctx_arena(ctx);
    char date[STL_DATE_LEN];
    stl_settings set;
    stl_list_in li;
    if (stl_api_recon_diffs_in(ctx, req, date, &li) || recon_settings(ctx, &set))
        return -1;
    uint64_t fh = li.filters;
    const char *after = li.after;
    int limit = li.limit;
    cm_db *db = cm_service_db(ctx);
    const char *tenant = cm_rpc_ctx_tenant(ctx);
    char l[24];
    const char *p[] = {
        tenant, date, req->currency, set.tz, after ? after : "", num(l, sizeof l, limit + 1)};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "find statement",
                        "SELECT 1 FROM statements WHERE tenant_id = $1 AND bill_date = $2::date", 2,
                        p, &r);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not list the differences");
    int found = PQntuples(r) > 0;
    PQclear(r);
    if (!found)
        return cm_rpc_fail(ctx, GRPC_STATUS_NOT_FOUND, "RESOURCE_NOT_FOUND",
                           "no statement was imported for this date");
    rc = cm_db_read(db, "list reconciliation differences",
                    "WITH " RECON_BOUNDS ", " RECON_DIFFS
                    " SELECT z.kind, z.lk, z.order_id::text, z.ref, z.txn, z.line_no, z.entry_id, "
                    "z.la, z.sa, z.lf, z.sf, z.k FROM (SELECT d.*, (d.order_id::text || '.' || "
                    "md5(d.ref) || '.' || d.kind) COLLATE \"C\" AS k FROM d) z WHERE z.k > "
                    "$5::text COLLATE \"C\" ORDER BY z.k LIMIT $6::int",
                    6, p, &r);
    if (rc)
        return cm_rpc_fail_err(ctx, rc, "could not list the differences");
    int n = PQntuples(r);
    int more = n > limit;
    if (more)
        n = limit;
    resp->differences = cm_rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->differences);
    for (int i = 0; resp->differences && i < n; i++) {
        Commerce__Settlement__V1__ReconciliationDifference *x = cm_arena_calloc(a, 1, sizeof *x);
        if (!x) {
            resp->differences = NULL;
            break;
        }
        commerce__settlement__v1__reconciliation_difference__init(x);
        x->kind = (Commerce__Settlement__V1__DifferenceKind)cm_db_int(r, i, 0);
        x->line_kind = (Commerce__Settlement__V1__StatementLineKind)cm_db_int(r, i, 1);
        x->order_id = cm_arena_strdup(a, PQgetvalue(r, i, 2));
        x->refund_id = cm_arena_strdup(a, PQgetvalue(r, i, 3));
        x->provider_transaction_id = cm_arena_strdup(a, PQgetvalue(r, i, 4));
        x->statement_line = (int32_t)cm_db_int(r, i, 5);
        x->entry_id = cm_db_int(r, i, 6);
        x->ledger_amount_minor = cm_db_int(r, i, 7);
        x->statement_amount_minor = cm_db_int(r, i, 8);
        x->ledger_fee_minor = cm_db_int(r, i, 9);
        x->statement_fee_minor = cm_db_int(r, i, 10);
        if (!x->order_id || !x->refund_id || !x->provider_transaction_id) {
            resp->differences = NULL;
            break;
        }
        resp->differences[i] = x;
    }
    const char *last = n ? cm_arena_strdup(a, PQgetvalue(r, n - 1, 11)) : NULL;
    PQclear(r);
    if (!resp->differences || (n && !last))
        return cm_rpc_fail_err(ctx, CM_ENOMEM, "differences");
    resp->n_differences = (size_t)n;
    return cm_page_next(ctx, more, 'x', fh, last, &resp->next_page_token);
}

/* ---- the ticker ---- */

/* at most 1000 (tenant, date, currency) a tick: the gauge is a signal,
 * GetReconciliation the tool */
static cm_gauge *balanced_gauge(cm_metrics *m)
{
    return cm_metrics_gauge(
        m, "settlement_ledger_balanced",
        "1 when every tenant's accounts sum to zero per currency and every account's buckets "
        "equal the sums of its postings, else 0 (only the replica whose recon ticker leads has it)",
        NULL);
}

static cm_gauge *diffs_gauge(cm_metrics *m)
{
    return cm_metrics_gauge(
        m, "settlement_reconciliation_differences",
        "differences between the ledger and the provider statements of the recent bill dates",
        NULL);
}

void stl_recon_resign(cm_service *svc, void *arg)
{
    (void)arg;
    cm_metrics *m = cm_service_metrics(svc);
    cm_metrics_gauge_remove(m, balanced_gauge(m));
    cm_metrics_gauge_remove(m, diffs_gauge(m));
}

void stl_recon_tick(cm_service *svc, cm_db *db, void *arg)
{
    stl_app *app = arg;
    cm_metrics *m = cm_service_metrics(svc);
    cm_gauge *balanced = balanced_gauge(m);
    cm_gauge *diffs = diffs_gauge(m);
    PGresult *r = NULL;
    int rc = cm_db_read(
        db, "check the ledger",
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM accounts GROUP BY tenant_id, currency HAVING "
        "sum(pending::numeric + available + paying + paid_out) <> 0) u), (SELECT count(*) FROM "
        "accounts a LEFT JOIN " POSTING_SUMS("") " WHERE " MISMATCH ")",
        0, NULL, &r);
    if (rc) {
        cm_log_warn("could not check the ledger", "error", cm_strerror(rc), NULL);
        return;
    }
    int64_t unbalanced = cm_db_int(r, 0, 0), mismatched = cm_db_int(r, 0, 1);
    PQclear(r);
    int ok = unbalanced == 0 && mismatched == 0;
    char nu[24], nm[24];
    if (!ok && cm_gauge_value(balanced) != 0)
        cm_log_warn("ledger not balanced", "unbalanced_currencies", num(nu, sizeof nu, unbalanced),
                    "mismatched_accounts", num(nm, sizeof nm, mismatched), NULL);
    cm_gauge_set(balanced, ok ? 1 : 0);
    char days[24];
    const char *p[] = {num(days, sizeof days, cm_service_int(svc, "SETTLEMENT_RECON_DAYS")),
                       app->defaults.tz};
    rc = cm_db_read(
        db, "list recent statements",
        "SELECT s.tenant_id, s.bill_date::text, c.currency, coalesce(ts.time_zone, $2) FROM "
        "statements s LEFT JOIN tenant_settings ts ON ts.tenant_id = s.tenant_id CROSS JOIN "
        "LATERAL (SELECT l.currency FROM statement_lines l WHERE l.tenant_id = s.tenant_id AND "
        "l.bill_date = s.bill_date UNION SELECT a.currency FROM accounts a WHERE a.tenant_id = "
        "s.tenant_id) c WHERE s.bill_date >= current_date - $1::int ORDER BY 1, 2, 3 LIMIT 1000",
        2, p, &r);
    if (rc) {
        cm_log_warn("could not list the statements to reconcile", "error", cm_strerror(rc), NULL);
        return;
    }
    int64_t total = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        const char *q[] = {PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                           PQgetvalue(r, i, 3)};
        int64_t n = 0;
        rc = count_diffs(db, q, &n);
        total += n;
    }
    PQclear(r);
    if (rc) {
        cm_log_warn("could not count reconciliation differences", "error", cm_strerror(rc), NULL);
        return;
    }
    cm_gauge_set(diffs, (double)total);
}
