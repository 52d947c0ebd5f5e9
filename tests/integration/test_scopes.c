/*
 * the scoped roles (issue 17) as a black box: commerce-order,
 * commerce-settlement and commerce-commission with AUTH_MODE=required,
 * called with tokens of role "merchant" (claim merchant_id) and "channel"
 * (claim channel_id). asserted per scoped rpc: the caller's own rows are
 * there; another merchant's (channel's) row is NOT_FOUND with the message
 * of an unknown id; lists leave the others' rows out with full pages and a
 * working cursor; a filter naming another merchant (channel) is an empty
 * page; every write, and every read not scoped, is ROLE_REQUIRED. an admin
 * token sees the others' rows, so it is the scope that hides them.
 *
 * the rows are written into the services' schemas with sql (what the
 * services read is what is asserted; how they got there is the other
 * tests' business).
 */
#include "harness.h"

#include "cm_err.h"

#include <check.h>
#include <grpc/status.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commerce/commission/v1/commission_service.pb-c.h"
#include "commerce/order/v1/order_service.pb-c.h"
#include "commerce/settlement/v1/settlement_service.pb-c.h"

#define SECRET "0123456789abcdef0123456789abcdef-scopes-test"
#define TENANT "tenant-sc"
#define OSVC "/commerce.order.v1.OrderService/"
#define SSVC "/commerce.settlement.v1.SettlementService/"
#define CSVC "/commerce.commission.v1.CommissionService/"
#define UNKNOWN "00000000-0000-4000-8000-00000000dead"

typedef struct svc {
    char schema[64], topics[4][128], env[8][256];
    int ntopics;
    hs_proc p;
    cm_rpc_client *c;
} svc;

static int seq;

/* a fresh topic prefix-<pid>-<seq>, created */
static const char *name(svc *s, const char *prefix)
{
    snprintf(s->topics[s->ntopics], sizeof s->topics[0], "%s-%d-%d", prefix, (int)getpid(), seq);
    hs_kafka_create_topic(hs_kafka_brokers(), s->topics[s->ntopics], 1);
    return s->topics[s->ntopics++];
}

/* starts bin with AUTH_MODE=required on a fresh schema; env[] gets the
 * knobs the caller adds after slot 3 */
static void start(svc *s, const char *bin, const char *prefix)
{
    const char *env[12];
    size_t n = 0;
    snprintf(s->env[0], sizeof s->env[0], "%s_SCHEMA=%s", prefix, s->schema);
    env[n++] = s->env[0];
    env[n++] = "AUTH_MODE=required";
    env[n++] = "JWT_HS256_SECRET=" SECRET;
    for (int i = 3; i < 8 && s->env[i][0]; i++)
        env[n++] = s->env[i];
    env[n] = NULL;
    hs_start(&s->p, bin, env);
    s->c = hs_client(&s->p, NULL);
}

static void stop(svc *s)
{
    cm_rpc_client_free(s->c);
    ck_assert_msg(hs_stop(&s->p, SIGTERM, 30000) == 0, "exit not 0 (log %s)", s->p.log_path);
    for (int i = 0; i < s->ntopics; i++)
        hs_kafka_delete_topic(hs_kafka_brokers(), s->topics[i]);
    hs_drop_schema(NULL, s->schema);
    memset(s, 0, sizeof *s);
}

/* ---- tokens and calls ---- */

static char *merchant_tok(const char *id)
{
    return hs_bearer_scoped(SECRET, TENANT, "m", "merchant", id, NULL, 300);
}

static char *channel_tok(const char *id)
{
    return hs_bearer_scoped(SECRET, TENANT, "c", "channel", NULL, id, 300);
}

static int call(svc *s, const char *tok, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *d, void *resp, cm_rpc_status *st)
{
    cm_rpc_md md[] = {{"authorization", tok}};
    return hs_call(s->c, method, req, d, (ProtobufCMessage **)resp, st, md, 1);
}

static void free_msg(void *m)
{
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
}

/* the call with an empty request fails PERMISSION_DENIED / ROLE_REQUIRED */
static void denied(svc *s, const char *tok, const char *method,
                   const ProtobufCMessageDescriptor *req_d,
                   const ProtobufCMessageDescriptor *resp_d)
{
    ProtobufCMessage *req = calloc(1, req_d->sizeof_message);
    ck_assert_ptr_nonnull(req);
    protobuf_c_message_init(req_d, req);
    cm_rpc_status st;
    int code = call(s, tok, method, req, resp_d, NULL, &st);
    ck_assert_msg(code == GRPC_STATUS_PERMISSION_DENIED, "%s: code %d (%s)", method, code,
                  st.message);
    ck_assert_str_eq(st.reason, "ROLE_REQUIRED");
    free(req);
}

#define DENIED_IN(s, tok, path, pre, Name, name)                                                   \
    denied(s, tok, path #Name, &pre##name##_request__descriptor, &pre##name##_response__descriptor)
#define DENIED_O(tok, Name, name) DENIED_IN(&O, tok, OSVC, commerce__order__v1__, Name, name)
#define DENIED_S(tok, Name, name) DENIED_IN(&S, tok, SSVC, commerce__settlement__v1__, Name, name)
#define DENIED_C(tok, Name, name) DENIED_IN(&C, tok, CSVC, commerce__commission__v1__, Name, name)

/* ---- order ---- */

static svc O;

static void order_start(void)
{
    seq++;
    snprintf(O.schema, sizeof O.schema, "ord_sc_%d_%d", (int)getpid(), seq);
    snprintf(O.env[3], sizeof O.env[3], "ORDER_TOPIC=%s", name(&O, "commerce.order.v1.sc"));
    snprintf(O.env[4], sizeof O.env[4], "INVENTORY_TARGET=127.0.0.1:%d", hs_free_port());
    start(&O, ORDER_BIN, "ORDER");
    /* m-1: 5 orders, m-2: 4, interleaved in time (m-2's newer than each
     * m-1 one), so that m-1's pages skip rows of m-2 */
    hs_sql_exec(O.schema,
                "INSERT INTO orders (tenant_id, order_id, request_id, body_hash, state, buyer_id, "
                "merchant_id, currency, total_amount, line_sku, line_qty, line_price, "
                "line_flash_sale, line_refunded_qty, line_refunded_amount, line_unit_cost, "
                "line_cost_reversed, cost_amount, cost_complete, created_at, updated_at, "
                "payment_deadline, reservation_expires_at) SELECT '" TENANT "', "
                "gen_random_uuid(), 'r-' || i, 'h', 1, 'b-1', CASE WHEN i % 2 = 1 THEN 'm-1' ELSE "
                "'m-2' END, 'CNY', 1000, ARRAY['sku-1'], ARRAY[1::bigint], ARRAY[1000::bigint], "
                "ARRAY[''], ARRAY[0::bigint], ARRAY[0::bigint], ARRAY[600::bigint], "
                "ARRAY[0::bigint], 600, true, date_trunc('milliseconds', now()) - i * interval '1 "
                "minute', now(), now() + "
                "interval '1 hour', now() + interval '1 hour' FROM generate_series(1, 9) i");
}

static void order_stop(void)
{
    stop(&O);
}

/* the id of an order of merchant m */
static void order_of(const char *m, char *id, size_t cap)
{
    char q[256];
    snprintf(q, sizeof q,
             "SELECT order_id::text FROM orders WHERE merchant_id = '%s' ORDER BY created_at "
             "LIMIT 1",
             m);
    PGconn *pg = PQconnectdb(hs_pg_dsn());
    char sp[128];
    snprintf(sp, sizeof sp, "SET search_path = %s", O.schema);
    hs_pg_exec(pg, sp);
    PGresult *r = PQexec(pg, q);
    ck_assert_int_eq(PQntuples(r), 1);
    snprintf(id, cap, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(pg);
}

static int get_order(const char *tok, const char *id, Commerce__Order__V1__GetOrderResponse **out,
                     cm_rpc_status *st)
{
    Commerce__Order__V1__GetOrderRequest q = COMMERCE__ORDER__V1__GET_ORDER_REQUEST__INIT;
    q.order_id = (char *)id;
    return call(&O, tok, OSVC "GetOrder", &q.base,
                &commerce__order__v1__get_order_response__descriptor, out, st);
}

/* every page of ListOrders (merchant filter m, page size 2): the number of
 * orders, each asserted to be of want_m (NULL: any), and of pages */
static int list_orders(const char *tok, const char *m, const char *want_m, int *pages)
{
    char token[512] = "";
    int n = 0;
    *pages = 0;
    do {
        Commerce__Order__V1__ListOrdersRequest q = COMMERCE__ORDER__V1__LIST_ORDERS_REQUEST__INIT;
        q.merchant_id = (char *)m;
        q.page_size = 2;
        q.page_token = token;
        Commerce__Order__V1__ListOrdersResponse *r = NULL;
        cm_rpc_status st;
        ck_assert_int_eq(call(&O, tok, OSVC "ListOrders", &q.base,
                              &commerce__order__v1__list_orders_response__descriptor, &r, &st),
                         0);
        (*pages)++;
        /* full pages: only the last may be short */
        if (r->next_page_token[0])
            ck_assert_int_eq(r->n_orders, 2);
        for (size_t i = 0; i < r->n_orders; i++) {
            if (want_m)
                ck_assert_str_eq(r->orders[i]->merchant_id, want_m);
            n++;
        }
        snprintf(token, sizeof token, "%s", r->next_page_token);
        free_msg(r);
    } while (token[0]);
    return n;
}

START_TEST(a_merchant_gets_its_own_orders_and_not_another_merchants)
{
    char *m1 = merchant_tok("m-1");
    char *admin = hs_bearer(SECRET, TENANT, "a", "admin", 300);
    char own[64], other[64];
    order_of("m-1", own, sizeof own);
    order_of("m-2", other, sizeof other);
    cm_rpc_status st, unknown;
    Commerce__Order__V1__GetOrderResponse *r = NULL;
    ck_assert_int_eq(get_order(m1, own, &r, &st), 0);
    ck_assert_str_eq(r->order->merchant_id, "m-1");
    /* costs are the tenant's secret: not to a merchant */
    ck_assert_ptr_null(r->order->cost_amount);
    ck_assert_ptr_null(r->order->gross_margin);
    ck_assert_ptr_null(r->order->lines[0]->unit_cost);
    free_msg(r);
    r = NULL;
    ck_assert_int_eq(get_order(admin, own, &r, &st), 0);
    ck_assert_ptr_nonnull(r->order->lines[0]->unit_cost);
    ck_assert_int_eq(r->order->lines[0]->unit_cost->amount_minor, 600);
    free_msg(r);

    /* another merchant's order is as an unknown one */
    ck_assert_int_eq(get_order(m1, other, NULL, &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_int_eq(get_order(m1, UNKNOWN, NULL, &unknown), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.reason, unknown.reason);
    char want[128];
    snprintf(want, sizeof want, "order %s not found", other);
    ck_assert_str_eq(st.message, want);
    snprintf(want, sizeof want, "order %s not found", UNKNOWN);
    ck_assert_str_eq(unknown.message, want);
    ck_assert_int_eq(get_order(admin, other, NULL, &st), 0);
    free(m1);
    free(admin);
}
END_TEST

START_TEST(a_merchant_lists_only_its_orders_in_full_pages)
{
    char *m1 = merchant_tok("m-1");
    char *m2 = merchant_tok("m-2");
    char *admin = hs_bearer(SECRET, TENANT, "a", "admin", 300);
    int pages = 0;
    ck_assert_int_eq(list_orders(m1, "", "m-1", &pages), 5);
    ck_assert_int_eq(pages, 3); /* 2 + 2 + 1 */
    ck_assert_int_eq(list_orders(m1, "m-1", "m-1", &pages), 5);
    ck_assert_int_eq(list_orders(m2, "", "m-2", &pages), 4);
    ck_assert_int_eq(pages, 2);
    /* a filter on another merchant: an empty page, not an error */
    ck_assert_int_eq(list_orders(m1, "m-2", NULL, &pages), 0);
    ck_assert_int_eq(pages, 1);
    ck_assert_int_eq(list_orders(admin, "", NULL, &pages), 9);
    free(m1);
    free(m2);
    free(admin);
}
END_TEST

START_TEST(a_merchant_cannot_write_orders_nor_read_the_rest)
{
    char *m1 = merchant_tok("m-1");
    char *ch = channel_tok("c-1");
    DENIED_O(m1, CreateOrder, create_order);
    DENIED_O(m1, MarkPaid, mark_paid);
    DENIED_O(m1, CancelOrder, cancel_order);
    DENIED_O(m1, ShipOrder, ship_order);
    DENIED_O(m1, CompleteOrder, complete_order);
    DENIED_O(m1, RefundOrder, refund_order);
    DENIED_O(m1, GetTenantSettings, get_tenant_settings);
    DENIED_O(m1, PutTenantSettings, put_tenant_settings);
    DENIED_O(m1, QueryMargin, query_margin);
    /* a channel's token is not a merchant's */
    DENIED_O(ch, ListOrders, list_orders);
    DENIED_O(ch, GetOrder, get_order);
    free(m1);
    free(ch);
}
END_TEST

/* ---- settlement ---- */

static svc S;

static void settlement_start(void)
{
    seq++;
    snprintf(S.schema, sizeof S.schema, "stl_sc_%d_%d", (int)getpid(), seq);
    snprintf(S.env[3], sizeof S.env[3], "SETTLEMENT_ORDER_TOPIC=%s",
             name(&S, "commerce.order.v1.stl-sc"));
    snprintf(S.env[4], sizeof S.env[4], "SETTLEMENT_TOPIC=%s",
             name(&S, "commerce.settlement.v1.sc"));
    snprintf(S.env[5], sizeof S.env[5], "SETTLEMENT_ORDER_GROUP=commerce.settlement.sc-%d-%d",
             (int)getpid(), seq);
    snprintf(S.env[6], sizeof S.env[6], "SETTLEMENT_RUN_TICK_MS=3600000");
    snprintf(S.env[7], sizeof S.env[7], "SETTLEMENT_PAYOUT_MS=3600000");
    start(&S, SETTLEMENT_BIN, "SETTLEMENT");
    /* accounts 1..5: m-1 CNY and USD, m-2 CNY, the platform, and a
     * sub-merchant that is also called m-1 (another party) */
    hs_sql_exec(S.schema,
                "INSERT INTO accounts (tenant_id, party_type, owner_id, currency, available) "
                "VALUES ('" TENANT "', 1, 'm-1', 'CNY', 100), ('" TENANT "', 1, 'm-1', 'USD', 0), "
                "('" TENANT "', 1, 'm-2', 'CNY', 0), ('" TENANT "', 2, 'p', 'CNY', 0), "
                "('" TENANT "', 4, 'm-1', 'CNY', 0)");
    /* payouts: 3 to m-1's CNY account, interleaved with 3 to m-2's and
     * one to the sub-merchant */
    hs_sql_exec(S.schema,
                "INSERT INTO payouts (payout_id, tenant_id, account_id, currency, amount, state, "
                "created_at) SELECT gen_random_uuid(), '" TENANT "', (SELECT account_id FROM "
                "accounts WHERE owner_id = CASE WHEN i % 2 = 1 AND i < 7 THEN 'm-1' WHEN i < 7 "
                "THEN 'm-2' ELSE 'm-1' END AND party_type = CASE WHEN i = 7 THEN 4 ELSE 1 END AND "
                "currency = 'CNY'), 'CNY', 10 * i, 1, date_trunc('milliseconds', now()) - i * "
                "interval '1 minute' FROM "
                "generate_series(1, 7) i");
    /* a posting on m-1's CNY account, for its statement */
    hs_sql_exec(
        S.schema,
        "INSERT INTO entries (tenant_id, kind, currency, amount, fee, account_ids, "
        "buckets, amounts, due_dates, versions) SELECT '" TENANT "', 3, 'CNY', 100, 0, "
        "ARRAY[a, a], ARRAY[1, 2]::smallint[], ARRAY[-100, 100]::bigint[], "
        "ARRAY[current_date, current_date], ARRAY[1, 2]::bigint[] FROM (SELECT account_id "
        "AS a FROM accounts WHERE party_type = 1 AND owner_id = 'm-1' AND currency = 'CNY') "
        "x");
}

static void settlement_stop(void)
{
    stop(&S);
}

static long long account(int type, const char *owner, const char *ccy)
{
    char q[256];
    snprintf(q, sizeof q,
             "SELECT account_id FROM accounts WHERE party_type = %d AND owner_id = '%s' AND "
             "currency = '%s'",
             type, owner, ccy);
    return hs_sql_long(S.schema, q);
}

static void payout_of(long long acct, char *id, size_t cap)
{
    char q[256];
    PGconn *pg = PQconnectdb(hs_pg_dsn());
    char sp[128];
    snprintf(sp, sizeof sp, "SET search_path = %s", S.schema);
    hs_pg_exec(pg, sp);
    snprintf(q, sizeof q, "SELECT payout_id::text FROM payouts WHERE account_id = %lld LIMIT 1",
             acct);
    PGresult *r = PQexec(pg, q);
    ck_assert_int_eq(PQntuples(r), 1);
    snprintf(id, cap, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(pg);
}

static int stl_get_payout(const char *tok, const char *id, cm_rpc_status *st)
{
    Commerce__Settlement__V1__GetPayoutRequest q =
        COMMERCE__SETTLEMENT__V1__GET_PAYOUT_REQUEST__INIT;
    q.payout_id = (char *)id;
    return call(&S, tok, SSVC "GetPayout", &q.base,
                &commerce__settlement__v1__get_payout_response__descriptor, NULL, st);
}

static int statement(const char *tok, long long acct, int *lines, cm_rpc_status *st)
{
    Commerce__Settlement__V1__GetAccountStatementRequest q =
        COMMERCE__SETTLEMENT__V1__GET_ACCOUNT_STATEMENT_REQUEST__INIT;
    Commerce__Common__V1__TimeRange tr = COMMERCE__COMMON__V1__TIME_RANGE__INIT;
    Google__Protobuf__Timestamp from = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    Google__Protobuf__Timestamp to = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    from.seconds = hs_real_ms() / 1000 - 86400;
    to.seconds = hs_real_ms() / 1000 + 86400;
    tr.start_at = &from;
    tr.end_at = &to;
    q.account_id = acct;
    q.period = &tr;
    Commerce__Settlement__V1__GetAccountStatementResponse *r = NULL;
    int code = call(&S, tok, SSVC "GetAccountStatement", &q.base,
                    &commerce__settlement__v1__get_account_statement_response__descriptor, &r, st);
    if (r) {
        *lines = (int)r->n_lines;
        ck_assert_int_eq(r->account->account_id, acct);
    }
    free_msg(r);
    return code;
}

/* every page of ListAccounts (party type/id filter when type, page size
 * 1): the accounts, each asserted to be m-1's MERCHANT account */
static int list_accounts(const char *tok, int type, const char *owner, const char *ccy,
                         const char *want_owner)
{
    char token[512] = "";
    int n = 0;
    do {
        Commerce__Settlement__V1__ListAccountsRequest q =
            COMMERCE__SETTLEMENT__V1__LIST_ACCOUNTS_REQUEST__INIT;
        Commerce__Settlement__V1__Party p = COMMERCE__SETTLEMENT__V1__PARTY__INIT;
        p.type = type;
        p.id = (char *)owner;
        q.party = type ? &p : NULL;
        q.currency = (char *)ccy;
        q.page_size = 1;
        q.page_token = token;
        Commerce__Settlement__V1__ListAccountsResponse *r = NULL;
        cm_rpc_status st;
        ck_assert_int_eq(call(&S, tok, SSVC "ListAccounts", &q.base,
                              &commerce__settlement__v1__list_accounts_response__descriptor, &r,
                              &st),
                         0);
        if (r->next_page_token[0])
            ck_assert_int_eq(r->n_accounts, 1);
        for (size_t i = 0; i < r->n_accounts; i++, n++)
            if (want_owner) {
                ck_assert_int_eq(r->accounts[i]->party->type, 1);
                ck_assert_str_eq(r->accounts[i]->party->id, want_owner);
            }
        snprintf(token, sizeof token, "%s", r->next_page_token);
        free_msg(r);
    } while (token[0]);
    return n;
}

/* every page of ListPayouts (account filter, page size 2) */
static int stl_list_payouts(const char *tok, long long acct, long long want_acct)
{
    char token[512] = "";
    int n = 0;
    do {
        Commerce__Settlement__V1__ListPayoutsRequest q =
            COMMERCE__SETTLEMENT__V1__LIST_PAYOUTS_REQUEST__INIT;
        q.account_id = acct;
        q.page_size = 2;
        q.page_token = token;
        Commerce__Settlement__V1__ListPayoutsResponse *r = NULL;
        cm_rpc_status st;
        ck_assert_int_eq(call(&S, tok, SSVC "ListPayouts", &q.base,
                              &commerce__settlement__v1__list_payouts_response__descriptor, &r,
                              &st),
                         0);
        if (r->next_page_token[0])
            ck_assert_int_eq(r->n_payouts, 2);
        for (size_t i = 0; i < r->n_payouts; i++, n++)
            if (want_acct)
                ck_assert_int_eq(r->payouts[i]->account_id, want_acct);
        snprintf(token, sizeof token, "%s", r->next_page_token);
        free_msg(r);
    } while (token[0]);
    return n;
}

START_TEST(a_merchant_sees_its_own_accounts_statement_and_payouts)
{
    char *m1 = merchant_tok("m-1");
    char *admin = hs_bearer(SECRET, TENANT, "a", "admin", 300);
    long long own = account(1, "m-1", "CNY"), m2 = account(1, "m-2", "CNY"),
              sub = account(4, "m-1", "CNY");

    /* accounts: its two MERCHANT accounts, one a page */
    ck_assert_int_eq(list_accounts(m1, 0, NULL, "", "m-1"), 2);
    ck_assert_int_eq(list_accounts(m1, 1, "m-1", "", "m-1"), 2);
    ck_assert_int_eq(list_accounts(m1, 0, NULL, "CNY", "m-1"), 1);
    /* another party: an empty page */
    ck_assert_int_eq(list_accounts(m1, 1, "m-2", "", NULL), 0);
    ck_assert_int_eq(list_accounts(m1, 4, "m-1", "", NULL), 0);
    ck_assert_int_eq(list_accounts(m1, 2, "p", "", NULL), 0);
    ck_assert_int_eq(list_accounts(admin, 0, NULL, "", NULL), 5);

    /* the statement of its account; another's is as an unknown account */
    int lines = -1;
    cm_rpc_status st, unknown;
    ck_assert_int_eq(statement(m1, own, &lines, &st), 0);
    ck_assert_int_eq(lines, 2);
    ck_assert_int_eq(statement(m1, 999999, &lines, &unknown), GRPC_STATUS_NOT_FOUND);
    ck_assert_int_eq(statement(m1, m2, &lines, &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.message, unknown.message);
    ck_assert_str_eq(st.reason, unknown.reason);
    ck_assert_int_eq(statement(m1, sub, &lines, &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.message, unknown.message);
    ck_assert_int_eq(statement(admin, m2, &lines, &st), 0);

    /* payouts: its 3 in pages of 2 (m-2's between them left out) */
    ck_assert_int_eq(stl_list_payouts(m1, 0, own), 3);
    ck_assert_int_eq(stl_list_payouts(m1, own, own), 3);
    ck_assert_int_eq(stl_list_payouts(m1, m2, 0), 0);
    ck_assert_int_eq(stl_list_payouts(m1, sub, 0), 0);
    ck_assert_int_eq(stl_list_payouts(admin, 0, 0), 7);
    char id[64];
    payout_of(own, id, sizeof id);
    ck_assert_int_eq(stl_get_payout(m1, id, &st), 0);
    ck_assert_int_eq(stl_get_payout(m1, UNKNOWN, &unknown), GRPC_STATUS_NOT_FOUND);
    payout_of(m2, id, sizeof id);
    ck_assert_int_eq(stl_get_payout(m1, id, &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.message, unknown.message);
    ck_assert_int_eq(stl_get_payout(admin, id, &st), 0);
    payout_of(sub, id, sizeof id);
    ck_assert_int_eq(stl_get_payout(m1, id, &st), GRPC_STATUS_NOT_FOUND);
    free(m1);
    free(admin);
}
END_TEST

START_TEST(a_merchant_cannot_write_settlement_nor_read_the_ledger)
{
    char *m1 = merchant_tok("m-1");
    char *service = hs_bearer(SECRET, TENANT, "s", "service", 300);
    char *reader = hs_bearer(SECRET, TENANT, "r", "reader", 300);
    DENIED_S(m1, PutSplitRule, put_split_rule);
    DENIED_S(m1, PutTenantSettings, put_tenant_settings);
    DENIED_S(m1, RunSettlement, run_settlement);
    DENIED_S(m1, ReportPayoutResult, report_payout_result);
    DENIED_S(m1, ImportStatement, import_statement);
    /* reads that are not its own */
    DENIED_S(m1, ListJournalEntries, list_journal_entries);
    DENIED_S(m1, GetSplitRule, get_split_rule);
    DENIED_S(m1, ListSettlementRuns, list_settlement_runs);
    DENIED_S(m1, GetReconciliation, get_reconciliation);
    /* the ledger is finance's: not for the backends' service role */
    DENIED_S(service, ListAccounts, list_accounts);
    DENIED_S(service, ListJournalEntries, list_journal_entries);
    ck_assert_int_eq(list_accounts(reader, 0, NULL, "", NULL), 5);
    free(m1);
    free(service);
    free(reader);
}
END_TEST

/* ---- commission ---- */

static svc C;

static void commission_start(void)
{
    seq++;
    snprintf(C.schema, sizeof C.schema, "cms_sc_%d_%d", (int)getpid(), seq);
    snprintf(C.env[3], sizeof C.env[3], "COMMISSION_ORDER_TOPIC=%s",
             name(&C, "commerce.order.v1.cms-sc"));
    snprintf(C.env[4], sizeof C.env[4], "COMMISSION_TOPIC=%s",
             name(&C, "commerce.commission.v1.sc"));
    snprintf(C.env[5], sizeof C.env[5], "COMMISSION_PARTNER_TOPIC=%s",
             name(&C, "commerce.commission.partner.v1.sc"));
    snprintf(C.env[6], sizeof C.env[6], "COMMISSION_ORDER_GROUP=commerce.commission.sc-%d-%d",
             (int)getpid(), seq);
    snprintf(C.env[7], sizeof C.env[7], "COMMISSION_FEED=off");
    start(&C, COMMISSION_BIN, "COMMISSION");
    hs_sql_exec(C.schema, "INSERT INTO channels (tenant_id, channel_id, name, type, state, "
                          "revision) SELECT '" TENANT "', 'c-' || i, 'channel ' || i, 1, 1, 1 "
                          "FROM generate_series(1, 3) i");
    /* commissions, adjustments and payouts: c-1's (i odd) interleaved
     * with c-2's */
    hs_sql_exec(C.schema,
                "INSERT INTO commissions (commission_id, tenant_id, channel_id, order_id, "
                "merchant_id, currency, state, order_amount, sales_before, amount, schedule_id, "
                "schedule_revision, period_start, period_end, bracket_from, bracket_bps, "
                "bracket_sales, bracket_amount, paid_at, accrued_at, source_event_id) SELECT "
                "gen_random_uuid(), '" TENANT "', CASE WHEN i % 2 = 1 THEN 'c-1' ELSE 'c-2' END, "
                "gen_random_uuid(), 'm-1', 'CNY', 1, 1000, 0, 100, 's-1', 1, date_trunc('month', "
                "now()), date_trunc('month', now()) + interval '1 month', ARRAY[0::bigint], "
                "ARRAY[1000], ARRAY[1000::bigint], ARRAY[100::bigint], now(), "
                "date_trunc('milliseconds', now()) - i * interval '1 minute', "
                "gen_random_uuid() FROM generate_series(1, 9) i");
    hs_sql_exec(C.schema,
                "INSERT INTO adjustments (adjustment_id, tenant_id, channel_id, kind, currency, "
                "amount, order_id, period_start, posted_at) SELECT gen_random_uuid(), '" TENANT
                "', CASE WHEN i % 2 = 1 THEN 'c-1' ELSE 'c-2' END, 1, 'CNY', -10, "
                "gen_random_uuid(), date_trunc('month', now()), date_trunc('milliseconds', now()) "
                "- i * interval '1 minute' "
                "FROM generate_series(1, 5) i");
    hs_sql_exec(C.schema,
                "INSERT INTO payouts (payout_id, tenant_id, channel_id, currency, request_id, "
                "state, amount, commissions, adjustments, created_at) SELECT gen_random_uuid(), "
                "'" TENANT "', CASE WHEN i % 2 = 1 THEN 'c-1' ELSE 'c-2' END, 'CNY', 'p-' || i, 1, "
                "100, 1, 0, date_trunc('milliseconds', now()) - i * interval '1 minute' FROM "
                "generate_series(1, 7) i");
}

static void commission_stop(void)
{
    stop(&C);
}

static void cms_payout_of(const char *ch, char *id, size_t cap)
{
    PGconn *pg = PQconnectdb(hs_pg_dsn());
    char q[256];
    snprintf(q, sizeof q, "SET search_path = %s", C.schema);
    hs_pg_exec(pg, q);
    snprintf(q, sizeof q, "SELECT payout_id::text FROM payouts WHERE channel_id = '%s' LIMIT 1",
             ch);
    PGresult *r = PQexec(pg, q);
    ck_assert_int_eq(PQntuples(r), 1);
    snprintf(id, cap, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(pg);
}

/* every page (size 2) of one of the channel lists: ListChannels,
 * ListCommissions, ListAdjustments or ListPayouts, filtered on channel ch
 * where the request has the field; each row asserted to be want_ch's
 * (NULL: any). the number of rows */
static int cms_list(const char *tok, const char *method, const char *ch, const char *want_ch)
{
    char token[512] = "";
    int n = 0;
    do {
        Commerce__Commission__V1__ListChannelsRequest lc =
            COMMERCE__COMMISSION__V1__LIST_CHANNELS_REQUEST__INIT;
        Commerce__Commission__V1__ListCommissionsRequest lm =
            COMMERCE__COMMISSION__V1__LIST_COMMISSIONS_REQUEST__INIT;
        Commerce__Commission__V1__ListAdjustmentsRequest la =
            COMMERCE__COMMISSION__V1__LIST_ADJUSTMENTS_REQUEST__INIT;
        Commerce__Commission__V1__ListPayoutsRequest lp =
            COMMERCE__COMMISSION__V1__LIST_PAYOUTS_REQUEST__INIT;
        lc.page_size = lm.page_size = la.page_size = lp.page_size = 2;
        lc.page_token = lm.page_token = la.page_token = lp.page_token = token;
        lm.channel_id = la.channel_id = lp.channel_id = (char *)ch;
        cm_rpc_status st;
        const char *rows[2] = {NULL, NULL};
        size_t nrows = 0;
        const char *next = "";
        ProtobufCMessage *resp = NULL;
        int code;
        if (strcmp(method, "ListChannels") == 0) {
            Commerce__Commission__V1__ListChannelsResponse *r = NULL;
            code = call(&C, tok, CSVC "ListChannels", &lc.base,
                        &commerce__commission__v1__list_channels_response__descriptor, &r, &st);
            for (size_t i = 0; r && i < r->n_channels && i < 2; i++)
                rows[nrows++] = r->channels[i]->channel_id;
            next = r ? r->next_page_token : "";
            resp = r ? &r->base : NULL;
        } else if (strcmp(method, "ListCommissions") == 0) {
            Commerce__Commission__V1__ListCommissionsResponse *r = NULL;
            code = call(&C, tok, CSVC "ListCommissions", &lm.base,
                        &commerce__commission__v1__list_commissions_response__descriptor, &r, &st);
            for (size_t i = 0; r && i < r->n_commissions && i < 2; i++)
                rows[nrows++] = r->commissions[i]->channel_id;
            next = r ? r->next_page_token : "";
            resp = r ? &r->base : NULL;
        } else if (strcmp(method, "ListAdjustments") == 0) {
            Commerce__Commission__V1__ListAdjustmentsResponse *r = NULL;
            code = call(&C, tok, CSVC "ListAdjustments", &la.base,
                        &commerce__commission__v1__list_adjustments_response__descriptor, &r, &st);
            for (size_t i = 0; r && i < r->n_adjustments && i < 2; i++)
                rows[nrows++] = r->adjustments[i]->channel_id;
            next = r ? r->next_page_token : "";
            resp = r ? &r->base : NULL;
        } else {
            Commerce__Commission__V1__ListPayoutsResponse *r = NULL;
            code = call(&C, tok, CSVC "ListPayouts", &lp.base,
                        &commerce__commission__v1__list_payouts_response__descriptor, &r, &st);
            for (size_t i = 0; r && i < r->n_payouts && i < 2; i++)
                rows[nrows++] = r->payouts[i]->channel_id;
            next = r ? r->next_page_token : "";
            resp = r ? &r->base : NULL;
        }
        ck_assert_msg(code == 0, "%s: code %d (%s)", method, code, st.message);
        if (next[0])
            ck_assert_int_eq(nrows, 2);
        for (size_t i = 0; i < nrows; i++, n++)
            if (want_ch)
                ck_assert_str_eq(rows[i], want_ch);
        snprintf(token, sizeof token, "%s", next);
        free_msg(resp);
    } while (token[0]);
    return n;
}

static int get_channel(const char *tok, const char *id, cm_rpc_status *st)
{
    Commerce__Commission__V1__GetChannelRequest q =
        COMMERCE__COMMISSION__V1__GET_CHANNEL_REQUEST__INIT;
    q.channel_id = (char *)id;
    return call(&C, tok, CSVC "GetChannel", &q.base,
                &commerce__commission__v1__get_channel_response__descriptor, NULL, st);
}

static int summary(const char *tok, const char *id, cm_rpc_status *st)
{
    Commerce__Commission__V1__GetChannelSummaryRequest q =
        COMMERCE__COMMISSION__V1__GET_CHANNEL_SUMMARY_REQUEST__INIT;
    q.channel_id = (char *)id;
    return call(&C, tok, CSVC "GetChannelSummary", &q.base,
                &commerce__commission__v1__get_channel_summary_response__descriptor, NULL, st);
}

static int cms_get_payout(const char *tok, const char *id, cm_rpc_status *st)
{
    Commerce__Commission__V1__GetPayoutRequest q =
        COMMERCE__COMMISSION__V1__GET_PAYOUT_REQUEST__INIT;
    q.payout_id = (char *)id;
    return call(&C, tok, CSVC "GetPayout", &q.base,
                &commerce__commission__v1__get_payout_response__descriptor, NULL, st);
}

START_TEST(a_channel_lists_only_its_own_in_full_pages)
{
    char *c1 = channel_tok("c-1");
    char *admin = hs_bearer(SECRET, TENANT, "a", "admin", 300);
    ck_assert_int_eq(cms_list(c1, "ListChannels", "", "c-1"), 1);
    ck_assert_int_eq(cms_list(admin, "ListChannels", "", NULL), 3);
    static const struct {
        const char *method;
        int own, all;
    } lists[] = {{"ListCommissions", 5, 9}, {"ListPayouts", 4, 7}};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        ck_assert_int_eq(cms_list(c1, lists[i].method, "", "c-1"), lists[i].own);
        ck_assert_int_eq(cms_list(c1, lists[i].method, "c-1", "c-1"), lists[i].own);
        /* a filter on another channel: an empty page */
        ck_assert_int_eq(cms_list(c1, lists[i].method, "c-2", NULL), 0);
        ck_assert_int_eq(cms_list(admin, lists[i].method, "", NULL), lists[i].all);
    }
    /* ListAdjustments names its channel */
    ck_assert_int_eq(cms_list(c1, "ListAdjustments", "c-1", "c-1"), 3);
    ck_assert_int_eq(cms_list(c1, "ListAdjustments", "c-2", NULL), 0);
    ck_assert_int_eq(cms_list(admin, "ListAdjustments", "c-2", "c-2"), 2);
    free(c1);
    free(admin);
}
END_TEST

START_TEST(a_channel_gets_its_own_and_not_another_channels)
{
    char *c1 = channel_tok("c-1");
    char *admin = hs_bearer(SECRET, TENANT, "a", "admin", 300);
    cm_rpc_status st, unknown;
    ck_assert_int_eq(get_channel(c1, "c-1", &st), 0);
    ck_assert_int_eq(get_channel(c1, "c-404", &unknown), GRPC_STATUS_NOT_FOUND);
    ck_assert_int_eq(get_channel(c1, "c-2", &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.message, unknown.message);
    ck_assert_str_eq(st.reason, unknown.reason);
    ck_assert_int_eq(get_channel(admin, "c-2", &st), 0);

    /* the summary: past the scope for its own channel (which has no
     * schedule: REFERENCE_NOT_FOUND), as unknown for another */
    ck_assert_int_eq(summary(c1, "c-1", &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "REFERENCE_NOT_FOUND");
    ck_assert_int_eq(summary(c1, "c-404", &unknown), GRPC_STATUS_NOT_FOUND);
    ck_assert_int_eq(summary(c1, "c-2", &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.message, unknown.message);
    ck_assert_int_eq(summary(admin, "c-2", &st), GRPC_STATUS_FAILED_PRECONDITION);

    char id[64];
    cms_payout_of("c-1", id, sizeof id);
    ck_assert_int_eq(cms_get_payout(c1, id, &st), 0);
    ck_assert_int_eq(cms_get_payout(c1, UNKNOWN, &unknown), GRPC_STATUS_NOT_FOUND);
    cms_payout_of("c-2", id, sizeof id);
    ck_assert_int_eq(cms_get_payout(c1, id, &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.message, unknown.message);
    ck_assert_int_eq(cms_get_payout(admin, id, &st), 0);
    free(c1);
    free(admin);
}
END_TEST

START_TEST(a_channel_cannot_write_commission_nor_read_the_rest)
{
    char *c1 = channel_tok("c-1");
    char *m1 = merchant_tok("m-1");
    DENIED_C(c1, PutChannel, put_channel);
    DENIED_C(c1, PutTierSchedule, put_tier_schedule);
    DENIED_C(c1, SettleCommissions, settle_commissions);
    DENIED_C(c1, ReportPayoutResult, report_payout_result);
    DENIED_C(c1, ClosePeriod, close_period);
    DENIED_C(c1, PutTenantSettings, put_tenant_settings);
    DENIED_C(c1, GetTierSchedule, get_tier_schedule);
    DENIED_C(c1, ListTierSchedules, list_tier_schedules);
    DENIED_C(c1, GetPartner, get_partner);
    DENIED_C(c1, ListWebhookDeliveries, list_webhook_deliveries);
    /* a merchant's token is not a channel's */
    DENIED_C(m1, ListCommissions, list_commissions);
    DENIED_C(m1, GetChannel, get_channel);
    free(c1);
    free(m1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("scopes");
    TCase *o = tcase_create("order");
    tcase_set_timeout(o, 120);
    tcase_add_unchecked_fixture(o, order_start, order_stop);
    tcase_add_test(o, a_merchant_gets_its_own_orders_and_not_another_merchants);
    tcase_add_test(o, a_merchant_lists_only_its_orders_in_full_pages);
    tcase_add_test(o, a_merchant_cannot_write_orders_nor_read_the_rest);
    suite_add_tcase(s, o);
    TCase *st = tcase_create("settlement");
    tcase_set_timeout(st, 120);
    tcase_add_unchecked_fixture(st, settlement_start, settlement_stop);
    tcase_add_test(st, a_merchant_sees_its_own_accounts_statement_and_payouts);
    tcase_add_test(st, a_merchant_cannot_write_settlement_nor_read_the_ledger);
    suite_add_tcase(s, st);
    TCase *c = tcase_create("commission");
    tcase_set_timeout(c, 120);
    tcase_add_unchecked_fixture(c, commission_start, commission_stop);
    tcase_add_test(c, a_channel_lists_only_its_own_in_full_pages);
    tcase_add_test(c, a_channel_gets_its_own_and_not_another_channels);
    tcase_add_test(c, a_channel_cannot_write_commission_nor_read_the_rest);
    suite_add_tcase(s, c);
    return hs_run(s, 1);
}
