/* the settlement run and payouts: see stl_run.h, README.md */
#include "stl_run.h"

#include "cm_arena.h"
#include "cm_err.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "stl_events.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- runs ---- */

#define RUN_COLS                                                                                   \
    "run_id::text, tenant_id, to_char(business_date, 'YYYY-MM-DD'), state, trigger, "              \
    "settled_accounts, settled_rows, (extract(epoch FROM started_at) * 1000)::bigint, "            \
    "coalesce((extract(epoch FROM finished_at) * 1000)::bigint, 0)"

static void parse_run(const PGresult *r, int row, stl_run *o)
{
    memset(o, 0, sizeof *o);
    cm_db_text(o->id, sizeof o->id, r, row, 0);
    cm_db_text(o->tenant, sizeof o->tenant, r, row, 1);
    cm_db_text(o->date, sizeof o->date, r, row, 2);
    o->state = (int)cm_db_int(r, row, 3);
    o->trigger = (int)cm_db_int(r, row, 4);
    o->entries = cm_db_int(r, row, 5);
    o->rows = cm_db_int(r, row, 6);
    o->started_ms = cm_db_int(r, row, 7);
    o->finished_ms = cm_db_int(r, row, 8);
}

int stl_run_request(cm_db *db, const char *tenant, const char *date, int trigger,
                    const char *principal, const stl_settings *def, stl_run *out)
{
    char id[CM_ID_SIZE], trig[8];
    int rc = cm_id_uuid7(id);
    if (rc)
        return rc;
    snprintf(trig, sizeof trig, "%d", trigger);
    const char *p[] = {tenant, date, id, trig, principal, def->tz};
    PGresult *r = NULL;
    /* the date in the tenant's zone; a later one is refused (NULL result) */
    rc = cm_db_exec(
        db, "request settlement run",
        "WITH d AS (SELECT coalesce($2::date, today) AS day, today FROM (SELECT (now() AT TIME "
        "ZONE coalesce((SELECT time_zone FROM tenant_settings WHERE tenant_id = $1), $6))::date "
        "AS today) t), i AS (INSERT INTO settlement_runs (run_id, tenant_id, business_date, "
        "state, trigger, principal) SELECT $3::uuid, $1, d.day, 1, $4, $5 FROM d WHERE d.day <= "
        "d.today ON CONFLICT (tenant_id, business_date) DO NOTHING RETURNING " RUN_COLS
        ") SELECT * FROM i UNION ALL SELECT " RUN_COLS " FROM settlement_runs WHERE "
        "tenant_id = $1 AND business_date = (SELECT day FROM d WHERE day <= today) AND NOT "
        "EXISTS (SELECT 1 FROM i)",
        6, p, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return CM_EINVAL;
    }
    parse_run(r, 0, out);
    PQclear(r);
    return 0;
}

int stl_run_get(cm_db *db, const char *tenant, const char *run_id, stl_run *out)
{
    const char *p[] = {tenant, run_id};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "get settlement run",
                        "SELECT " RUN_COLS " FROM settlement_runs WHERE tenant_id = $1 AND run_id "
                        "= $2::uuid",
                        2, p, &r);
    if (rc)
        return rc;
    rc = PQntuples(r) ? 0 : CM_ENOTFOUND;
    if (rc == 0)
        parse_run(r, 0, out);
    PQclear(r);
    return rc;
}

int stl_run_list(cm_db *db, const char *tenant, const char *before, int limit, stl_run *out, int *n)
{
    char l[24];
    snprintf(l, sizeof l, "%d", limit);
    const char *p[] = {tenant, before, l};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "list settlement runs",
                        "SELECT " RUN_COLS " FROM settlement_runs WHERE tenant_id = $1 AND ($2 = "
                        "'' OR business_date < $2::date) ORDER BY business_date DESC LIMIT $3",
                        3, p, &r);
    if (rc)
        return rc;
    *n = PQntuples(r);
    for (int i = 0; i < *n; i++)
        parse_run(r, i, &out[i]);
    PQclear(r);
    return 0;
}

/* ---- events ---- */

/* adds the events of payouts (or one run) to the outbox of the open
 * transaction */
static int add_events(cm_db *db, const char *topic, const char *type, const stl_payout *po,
                      size_t n, const stl_run *run)
{
    cm_arena *a = cm_arena_new(16 * 1024);
    cm_outbox_event *evs = calloc(n ? n : 1, sizeof *evs);
    int rc = a && evs ? 0 : CM_ENOMEM;
    for (size_t i = 0; i < (run ? 1 : n) && rc == 0; i++) {
        char *id = cm_arena_alloc(a, CM_ID_SIZE);
        const uint8_t *payload = NULL;
        size_t len = 0;
        rc = id ? cm_id_uuid7(id) : CM_ENOMEM;
        if (rc == 0)
            rc = run ? stl_ev_pack_run(a, run->tenant, id, run, &payload, &len)
                     : stl_ev_pack_payout(a, po[i].tenant, id, type, &po[i], &payload, &len);
        if (rc)
            break;
        evs[i] = (cm_outbox_event){
            .event_id = id,
            .tenant_id = run ? run->tenant : po[i].tenant,
            .topic = topic,
            .key = run ? run->tenant : cm_arena_printf(a, "%lld", (long long)po[i].account),
            .type = type,
            .source = STL_SOURCE,
            .payload = payload,
            .len = len,
        };
    }
    if (rc == 0)
        rc = cm_outbox_add_batch(db, evs, run ? 1 : n);
    free(evs);
    cm_arena_free(a);
    return rc;
}

/* ---- carrying out a run ---- */

typedef struct chunk_tx {
    const stl_run *run;
    int batch;
    long long moved;
    /* where the last batch ended: the next starts after it (keyset: the
     * rows before it are gone, a batch never scans them again) */
    char after_account[24], after_due[STL_DATE_LEN];
} chunk_tx;

/* one batch of due pending rows of the run's tenant to available: one
 * SETTLE entry per account, accounts locked in id order (as posting does) */
static int chunk_fn(cm_db *db, void *arg)
{
    chunk_tx *t = arg;
    char b[24];
    snprintf(b, sizeof b, "%d", t->batch);
    const char *p[] = {t->run->tenant, t->run->date, b, t->run->id, t->after_account, t->after_due};
    PGresult *r = NULL;
    int rc = cm_db_exec(
        db, "settle a batch",
        "WITH due AS (DELETE FROM pending_due WHERE ctid = ANY (ARRAY(SELECT ctid FROM "
        "pending_due WHERE tenant_id = $1 AND (account_id, due_date) > ($5::bigint, $6::date) "
        "AND due_date <= $2::date ORDER BY account_id, due_date LIMIT $3::int FOR UPDATE)) "
        "RETURNING account_id, due_date, amount), agg AS (SELECT "
        "account_id, sum(amount)::bigint AS s, count(*) AS k FROM due GROUP BY account_id), l AS "
        "(SELECT a.account_id FROM accounts a JOIN agg USING (account_id) ORDER BY a.account_id "
        "FOR UPDATE OF a), u AS (UPDATE accounts a SET pending = a.pending - agg.s, available = "
        "a.available + agg.s, version = a.version + 1, updated_at = now() FROM agg, l WHERE "
        "a.account_id = agg.account_id AND l.account_id = agg.account_id RETURNING a.account_id, "
        "a.tenant_id, a.currency, a.version, agg.s, agg.k), e AS (INSERT INTO entries "
        "(tenant_id, kind, ref, currency, amount, fee, account_ids, buckets, amounts, due_dates, "
        "versions) SELECT u.tenant_id, 3, $4, u.currency, u.s, 0, ARRAY[u.account_id, "
        "u.account_id], '{1,2}', ARRAY[-u.s, u.s], '{NULL,NULL}', ARRAY[u.version, u.version] "
        "FROM u WHERE u.s <> 0 RETURNING 1), x AS (UPDATE settlement_runs SET settled_accounts "
        "= settled_accounts + (SELECT count(*) FROM e), settled_rows = settled_rows + (SELECT "
        "count(*) FROM due) WHERE run_id = $4::uuid RETURNING 1) SELECT (SELECT count(*) FROM "
        "due), (SELECT count(*) FROM x), (SELECT account_id FROM due ORDER BY account_id DESC, "
        "due_date DESC LIMIT 1), (SELECT to_char(due_date, 'YYYY-MM-DD') FROM due ORDER BY "
        "account_id DESC, due_date DESC LIMIT 1)",
        6, p, &r);
    if (rc)
        return rc;
    t->moved = cm_db_int(r, 0, 0);
    if (t->moved > 0) {
        cm_db_text(t->after_account, sizeof t->after_account, r, 0, 2);
        cm_db_text(t->after_due, sizeof t->after_due, r, 0, 3);
    }
    PQclear(r);
    return 0;
}

typedef struct finish_tx {
    stl_run *run;
    int events_on;
    const char *topic;
    int done;
} finish_tx;

static int finish_fn(cm_db *db, void *arg)
{
    finish_tx *t = arg;
    const char *p[] = {t->run->id};
    PGresult *r = NULL;
    int rc = cm_db_exec(db, "finish settlement run",
                        "UPDATE settlement_runs SET state = 2, finished_at = now() WHERE run_id = "
                        "$1::uuid AND state = 1 RETURNING " RUN_COLS,
                        1, p, &r);
    if (rc)
        return rc;
    t->done = PQntuples(r) == 1;
    if (t->done)
        parse_run(r, 0, t->run);
    PQclear(r);
    if (t->done && t->events_on)
        rc = add_events(db, t->topic, STL_TYPE_RUN_COMPLETED, NULL, 0, t->run);
    return rc;
}

/* carries out one running run to the end */
static int carry_out(cm_db *db, stl_run *run, int batch, int events_on, const char *topic)
{
    chunk_tx c = {.run = run, .batch = batch, .after_account = "0", .after_due = "0001-01-01"};
    int rc;
    do {
        rc = cm_db_tx(db, NULL, 5, chunk_fn, &c);
    } while (rc == 0 && c.moved > 0);
    if (rc)
        return rc;
    finish_tx f = {.run = run, .events_on = events_on, .topic = topic};
    rc = cm_db_tx(db, NULL, 5, finish_fn, &f);
    if (rc == 0 && f.done)
        cm_log_info("settlement run succeeded", "tenant", run->tenant, "business_date", run->date,
                    "run_id", run->id, NULL);
    return rc;
}

int stl_settle(cm_db *db, const stl_settings *def, int batch, int events_on, const char *topic,
               int *runs_done, int *payouts)
{
    *runs_done = *payouts = 0;
    /* the scheduled runs due now: tenants with accounts whose local time
     * of day passed run_at, without a run for their local today */
    const char *p[] = {def->tz, def->run_at};
    int rc = cm_db_exec(
        db, "schedule settlement runs",
        "INSERT INTO settlement_runs (run_id, tenant_id, business_date, state, trigger) SELECT "
        "gen_random_uuid(), t.tenant_id, (now() AT TIME ZONE coalesce(s.time_zone, $1))::date, "
        "1, 1 FROM (SELECT DISTINCT tenant_id FROM accounts) t LEFT JOIN tenant_settings s ON "
        "s.tenant_id = t.tenant_id WHERE (now() AT TIME ZONE coalesce(s.time_zone, $1))::time >= "
        "coalesce(s.run_at, $2::time) ON CONFLICT (tenant_id, business_date) DO NOTHING",
        2, p, NULL);
    if (rc)
        return rc;
    PGresult *r = NULL;
    rc = cm_db_exec(db, "running settlement runs",
                    "SELECT " RUN_COLS " FROM settlement_runs WHERE state = 1 ORDER BY started_at "
                    "LIMIT 100",
                    0, NULL, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    stl_run *runs = calloc((size_t)n + 1, sizeof *runs);
    if (!runs) {
        PQclear(r);
        return CM_ENOMEM;
    }
    for (int i = 0; i < n; i++)
        parse_run(r, i, &runs[i]);
    PQclear(r);
    for (int i = 0; i < n && rc == 0; i++) {
        rc = carry_out(db, &runs[i], batch, events_on, topic);
        if (rc == 0)
            (*runs_done)++;
    }
    free(runs);
    if (rc == 0)
        rc = stl_pay_out(db, events_on, topic, payouts);
    return rc;
}

/* ---- payouts ---- */

#define PAYOUT_COLS                                                                                \
    "p.payout_id::text, p.tenant_id, p.account_id, a.party_type, a.owner_id, p.currency, "         \
    "p.amount, p.state, (extract(epoch FROM p.created_at) * 1000)::bigint, (extract(epoch FROM "   \
    "p.updated_at) * 1000)::bigint, p.provider_ref, p.failure_reason"

static void parse_payout(const PGresult *r, int row, stl_payout *o)
{
    memset(o, 0, sizeof *o);
    cm_db_text(o->id, sizeof o->id, r, row, 0);
    cm_db_text(o->tenant, sizeof o->tenant, r, row, 1);
    o->account = cm_db_int(r, row, 2);
    o->type = (int)cm_db_int(r, row, 3);
    cm_db_text(o->owner, sizeof o->owner, r, row, 4);
    cm_db_text(o->currency, sizeof o->currency, r, row, 5);
    o->amount = cm_db_int(r, row, 6);
    o->state = (int)cm_db_int(r, row, 7);
    o->created_ms = cm_db_int(r, row, 8);
    o->updated_ms = cm_db_int(r, row, 9);
    cm_db_text(o->ref, sizeof o->ref, r, row, 10);
    cm_db_text(o->reason, sizeof o->reason, r, row, 11);
}

typedef struct pay_tx {
    int events_on;
    const char *topic;
    int made;
} pay_tx;

/* up to 500 accounts with money available: everything available becomes
 * one payout each (skipping accounts a posting holds: the next pass gets
 * them) */
static int pay_fn(cm_db *db, void *arg)
{
    pay_tx *t = arg;
    PGresult *r = NULL;
    int rc = cm_db_exec(
        db, "create payouts",
        "WITH c AS (SELECT account_id, tenant_id, currency, available, party_type, owner_id FROM "
        "accounts WHERE available > 0 AND party_type < 100 ORDER BY account_id LIMIT 500 FOR "
        "UPDATE SKIP LOCKED), u AS (UPDATE accounts a SET available = a.available - c.available, "
        "paying = a.paying + c.available, version = a.version + 1, updated_at = now() FROM c "
        "WHERE a.account_id = c.account_id RETURNING a.account_id, a.version), p AS (INSERT INTO "
        "payouts (payout_id, tenant_id, account_id, currency, amount, state) SELECT "
        "gen_random_uuid(), c.tenant_id, c.account_id, c.currency, c.available, 1 FROM c "
        "RETURNING payout_id, tenant_id, account_id, currency, amount, state, created_at, "
        "updated_at, provider_ref, failure_reason), e AS (INSERT INTO entries (tenant_id, kind, "
        "ref, currency, amount, fee, account_ids, buckets, amounts, due_dates, versions) SELECT "
        "p.tenant_id, 4, p.payout_id::text, p.currency, p.amount, 0, ARRAY[p.account_id, "
        "p.account_id], '{2,3}', ARRAY[-p.amount, p.amount], '{NULL,NULL}', ARRAY[u.version, "
        "u.version] FROM p JOIN u USING (account_id) RETURNING 1) SELECT " PAYOUT_COLS
        ", (SELECT count(*) FROM e) FROM p JOIN c a USING (account_id)",
        0, NULL, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    t->made = n;
    if (n && t->events_on) {
        stl_payout *po = calloc((size_t)n, sizeof *po);
        if (!po) {
            PQclear(r);
            return CM_ENOMEM;
        }
        for (int i = 0; i < n; i++)
            parse_payout(r, i, &po[i]);
        rc = add_events(db, t->topic, STL_TYPE_PAYOUT_CREATED, po, (size_t)n, NULL);
        free(po);
    }
    PQclear(r);
    return rc;
}

int stl_pay_out(cm_db *db, int events_on, const char *topic, int *payouts)
{
    pay_tx t = {.events_on = events_on, .topic = topic};
    int rc;
    *payouts = 0;
    do {
        rc = cm_db_tx(db, NULL, 5, pay_fn, &t);
        if (rc == 0)
            *payouts += t.made;
    } while (rc == 0 && t.made == 500);
    return rc;
}

int stl_payout_get(cm_db *db, const char *tenant, const char *id, const char *merchant,
                   stl_payout *out)
{
    const char *p[] = {tenant, id, merchant};
    PGresult *r = NULL;
    int rc = cm_db_read(db, "get payout",
                        "SELECT " PAYOUT_COLS " FROM payouts p JOIN accounts a USING (account_id) "
                        "WHERE p.tenant_id = $1 AND p.payout_id = $2::uuid AND ($3::text IS NULL "
                        "OR (a.party_type = 1 AND a.owner_id = $3))",
                        3, p, &r);
    if (rc)
        return rc;
    rc = PQntuples(r) ? 0 : CM_ENOTFOUND;
    if (rc == 0)
        parse_payout(r, 0, out);
    PQclear(r);
    return rc;
}

int stl_payout_list(cm_db *db, const char *tenant, const char *merchant, int state, int64_t account,
                    int64_t before_ms, const char *before_id, int limit, stl_payout *out, int *n)
{
    char s[8], ac[24], b[24], l[24];
    snprintf(s, sizeof s, "%d", state);
    snprintf(ac, sizeof ac, "%lld", (long long)account);
    snprintf(b, sizeof b, "%lld", (long long)before_ms);
    snprintf(l, sizeof l, "%d", limit);
    /* NULL on the first page: "" is no uuid, and the cast of a parameter
     * is not spared by the OR; $4 a bigint (ms overflow an int). the
     * position is the last row's own (created_at, payout_id), read by id:
     * created_at holds microseconds (DEFAULT now()), which the token's
     * milliseconds would round, repeating or skipping rows across pages */
    const char *p[] = {tenant, s, ac, b, before_ms ? before_id : NULL, l, merchant};
    PGresult *r = NULL;
    int rc = cm_db_read(
        db, "list payouts",
        "SELECT " PAYOUT_COLS " FROM payouts p JOIN accounts a USING (account_id) WHERE "
        "p.tenant_id = $1 AND ($2 = 0 OR p.state = $2) AND ($3 = 0 OR p.account_id = $3) AND "
        "($4::bigint = 0 OR (p.created_at, p.payout_id) < (SELECT x.created_at, x.payout_id "
        "FROM payouts x WHERE x.tenant_id = $1 AND x.payout_id = $5::uuid)) AND "
        "($7::text IS NULL OR (a.party_type = 1 AND a.owner_id = $7)) ORDER BY "
        "p.created_at DESC, p.payout_id DESC LIMIT $6",
        7, p, &r);
    if (rc)
        return rc;
    *n = PQntuples(r);
    for (int i = 0; i < *n; i++)
        parse_payout(r, i, &out[i]);
    PQclear(r);
    return 0;
}

typedef struct report_tx {
    const char *tenant, *id, *ref, *reason, *topic;
    int result, events_on, verdict;
    stl_payout *out;
} report_tx;

static int report_fn(cm_db *db, void *arg)
{
    report_tx *t = arg;
    const char *p[] = {t->tenant, t->id};
    PGresult *r = NULL;
    int rc = cm_db_exec(db, "lock payout",
                        "SELECT " PAYOUT_COLS " FROM payouts p JOIN accounts a USING (account_id) "
                        "WHERE p.tenant_id = $1 AND p.payout_id = $2::uuid FOR UPDATE OF p",
                        2, p, &r);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return CM_ENOTFOUND;
    }
    parse_payout(r, 0, t->out);
    PQclear(r);
    if (t->out->state != STL_PAYOUT_PENDING) {
        t->verdict = t->out->state == t->result ? STL_SAME : STL_VERSION;
        return 0;
    }
    char res[8];
    snprintf(res, sizeof res, "%d", t->result);
    const char *q[] = {t->tenant, t->id, res, t->ref, t->reason};
    /* paid: paying to paid out; failed: paying back to available */
    rc = cm_db_exec(
        db, "report payout",
        "WITH p AS (UPDATE payouts SET state = $3::smallint, provider_ref = $4, failure_reason = "
        "$5, updated_at = now() WHERE tenant_id = $1 AND payout_id = $2::uuid RETURNING "
        "account_id, amount, currency), u AS (UPDATE accounts a SET paying = a.paying - p.amount, "
        "paid_out = a.paid_out + CASE WHEN $3 = '2' THEN p.amount ELSE 0 END, available = "
        "a.available + CASE WHEN $3 = '2' THEN 0 ELSE p.amount END, version = a.version + 1, "
        "updated_at = now() FROM p WHERE a.account_id = p.account_id RETURNING a.account_id, "
        "a.version) INSERT INTO entries (tenant_id, kind, ref, currency, amount, fee, "
        "account_ids, buckets, amounts, due_dates, versions) SELECT $1, CASE WHEN $3 = '2' THEN "
        "5 ELSE 6 END, $2, p.currency, p.amount, 0, ARRAY[p.account_id, p.account_id], CASE "
        "WHEN $3 = '2' THEN '{3,4}'::smallint[] ELSE '{3,2}'::smallint[] END, ARRAY[-p.amount, "
        "p.amount], '{NULL,NULL}', ARRAY[u.version, u.version] FROM p JOIN u USING (account_id)",
        5, q, NULL);
    if (rc)
        return rc;
    t->out->state = t->result;
    snprintf(t->out->ref, sizeof t->out->ref, "%s", t->ref);
    snprintf(t->out->reason, sizeof t->out->reason, "%s", t->reason);
    t->verdict = STL_OK;
    if (t->events_on)
        rc =
            add_events(db, t->topic,
                       t->result == STL_PAYOUT_PAID ? STL_TYPE_PAYOUT_PAID : STL_TYPE_PAYOUT_FAILED,
                       t->out, 1, NULL);
    return rc;
}

int stl_payout_report(cm_db *db, const char *tenant, const char *id, int result, const char *ref,
                      const char *reason, int events_on, const char *topic, stl_payout *out,
                      int *verdict)
{
    report_tx t = {.tenant = tenant,
                   .id = id,
                   .ref = ref,
                   .reason = reason,
                   .topic = topic,
                   .result = result,
                   .events_on = events_on,
                   .out = out};
    int rc = cm_db_tx(db, NULL, 5, report_fn, &t);
    *verdict = t.verdict;
    if (rc == 0 && t.verdict == STL_OK)
        return stl_payout_get(db, tenant, id, NULL, out);
    return rc;
}

int stl_payouts_pending(cm_db *db, long long *n)
{
    PGresult *r = NULL;
    int rc = cm_db_read(db, "count pending payouts", "SELECT count(*) FROM payouts WHERE state = 1",
                        0, NULL, &r);
    if (rc)
        return rc;
    *n = cm_db_int(r, 0, 0);
    PQclear(r);
    return 0;
}
