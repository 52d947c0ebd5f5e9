/*
 * OrderService's tenant settings admin rpcs (GetTenantSettings,
 * PutTenantSettings) as a black box: real order and inventory processes,
 * the private postgres and the broker KAFKA_BROKERS names. asserted: the
 * defaults at revision 0, validation naming the field (and storing
 * nothing), idempotency by request_id, compare-and-set, the audit trail
 * (who, when, why, old -> new), the admin role when auth is on, and that
 * new orders take the new timeout: at once on the replica that answered,
 * within the cache's 10 s on another. and auto-completion: a shipped order
 * (also a partially refunded one) completes once the tenant's
 * auto_complete_after has passed, with one OrderCompleted even with three
 * replicas sweeping; an order not shipped does not; on the 7-day default
 * an order shipped 8 days ago completes and one shipped now does not.
 *
 * on the shared order+inventory pair (fixture.h).
 */
#include "fixture.h"
#include "harness.h"

#include "cm_err.h"

#include <check.h>
#include <grpc/status.h>
#include <jwt.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commerce/inventory/v1/inventory_service.pb-c.h"
#include "commerce/order/v1/order_service.pb-c.h"

#define OSVC "/commerce.order.v1.OrderService/"
#define ISVC "/commerce.inventory.v1.InventoryService/"
#define SECRET "0123456789abcdef0123456789abcdef-settings-test"

typedef Commerce__Order__V1__TenantSettings Settings;

/* ---- the fixture: the shared order+inventory pair (fixture.h), one for
 * the whole case ---- */

static fx the_fx;
static const char *const inv_env[] = {"INVENTORY_CONSUME_ORDERS=off", "WORKERS=4", NULL};
static const char *const ord_env[] = {"WORKERS=4", "ORDER_PAYMENT_TIMEOUT_S=900",
                                      "ORDER_FLASH_PAYMENT_TIMEOUT_S=120", NULL};

static void pair_start(void)
{
    fx_opts o = {.tag = "set", .inventory_env = inv_env, .order_env = ord_env};
    fx_start_opts(&the_fx, &o);
}

static void pair_stop(void)
{
    fx_stop(&the_fx);
}

/* the auto-completion case has a pair of its own: the events on its topic
 * are all the fixture tenant's, as fx_settle checks */
static fx ac_fx;
static fx *db_fx = &the_fx; /* the schema sql_ll looks into */

static void ac_start(void)
{
    fx_start_opts(&ac_fx, &(fx_opts){.tag = "ac"});
    db_fx = &ac_fx;
}

static void ac_stop(void)
{
    fx_stop(&ac_fx);
    db_fx = &the_fx;
}

/* ---- the database (only to look) ---- */

__attribute__((format(printf, 1, 2))) static long long sql_ll(const char *fmt, ...)
{
    PGconn *pg = PQconnectdb(hs_pg_dsn());
    ck_assert_int_eq(PQstatus(pg), CONNECTION_OK);
    char sql[1024];
    snprintf(sql, sizeof sql, "SET search_path = %.63s", db_fx->ord_schema);
    PQclear(PQexec(pg, sql));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(pg, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(pg));
    long long v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    PQfinish(pg);
    return v;
}

static long long audit_rows(const char *tenant)
{
    return sql_ll("SELECT count(*) FROM tenant_settings_changes WHERE tenant_id = '%s'", tenant);
}

/* ---- calls ---- */

static int call(cm_rpc_client *c, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *d, ProtobufCMessage **resp, cm_rpc_status *st,
                const cm_rpc_md *md, size_t nmd)
{
    ProtobufCMessage *r = NULL;
    cm_rpc_call(c, method, req, d, NULL, &r, md, nmd, 15000, 0, st);
    if (resp)
        *resp = r;
    else if (r)
        protobuf_c_message_free_unpacked(r, NULL);
    return st->code;
}

static int get_settings(cm_rpc_client *c, const cm_rpc_md *md, size_t nmd,
                        Commerce__Order__V1__GetTenantSettingsResponse **out, cm_rpc_status *st)
{
    Commerce__Order__V1__GetTenantSettingsRequest q =
        COMMERCE__ORDER__V1__GET_TENANT_SETTINGS_REQUEST__INIT;
    return call(c, OSVC "GetTenantSettings", &q.base,
                &commerce__order__v1__get_tenant_settings_response__descriptor,
                (ProtobufCMessage **)out, st, md, nmd);
}

typedef struct put_spec {
    const char *rid, *actor, *reason;
    int64_t timeout_s, flash_s; /* < 0: unset */
    int32_t nanos;              /* of payment_timeout */
    int64_t auto_s;             /* auto_complete_after; 0: unset */
    int32_t auto_nanos;
    int64_t expected;
    int no_settings;
} put_spec;

static put_spec put_of(const char *rid, int64_t timeout_s, int64_t flash_s)
{
    return (put_spec){.rid = rid,
                      .actor = "ops:alice",
                      .reason = "checkout takes longer for pre-orders",
                      .timeout_s = timeout_s,
                      .flash_s = flash_s};
}

static int put_settings(cm_rpc_client *c, const cm_rpc_md *md, size_t nmd, const put_spec *p,
                        Commerce__Order__V1__PutTenantSettingsResponse **out, cm_rpc_status *st)
{
    Commerce__Order__V1__PutTenantSettingsRequest q =
        COMMERCE__ORDER__V1__PUT_TENANT_SETTINGS_REQUEST__INIT;
    Settings s = COMMERCE__ORDER__V1__TENANT_SETTINGS__INIT;
    Google__Protobuf__Duration t = GOOGLE__PROTOBUF__DURATION__INIT;
    Google__Protobuf__Duration f = GOOGLE__PROTOBUF__DURATION__INIT;
    Google__Protobuf__Duration ac = GOOGLE__PROTOBUF__DURATION__INIT;
    ac.seconds = p->auto_s;
    ac.nanos = p->auto_nanos;
    s.auto_complete_after = p->auto_s || p->auto_nanos ? &ac : NULL;
    t.seconds = p->timeout_s;
    t.nanos = p->nanos;
    f.seconds = p->flash_s;
    s.payment_timeout = p->timeout_s >= 0 ? &t : NULL;
    s.flash_payment_timeout = p->flash_s >= 0 ? &f : NULL;
    s.revision = 777; /* output only: ignored */
    s.updated_by = "forged";
    q.request_id = (char *)p->rid;
    q.settings = p->no_settings ? NULL : &s;
    q.expected_revision = p->expected;
    q.actor = (char *)p->actor;
    q.reason = (char *)p->reason;
    return call(c, OSVC "PutTenantSettings", &q.base,
                &commerce__order__v1__put_tenant_settings_response__descriptor,
                (ProtobufCMessage **)out, st, md, nmd);
}

static void free_msg(void *m)
{
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
}

static void assert_settings(const Settings *s, int64_t timeout_s, int64_t flash_s, int64_t rev)
{
    ck_assert_ptr_nonnull(s);
    ck_assert_ptr_nonnull(s->payment_timeout);
    ck_assert_ptr_nonnull(s->flash_payment_timeout);
    ck_assert_int_eq(s->payment_timeout->seconds, timeout_s);
    ck_assert_int_eq(s->payment_timeout->nanos, 0);
    ck_assert_int_eq(s->flash_payment_timeout->seconds, flash_s);
    ck_assert_int_eq(s->revision, rev);
}

#define MD(t)                                                                                      \
    {                                                                                              \
        {                                                                                          \
            "x-tenant-id", (t)                                                                     \
        }                                                                                          \
    }

/* ---- tests ---- */

START_TEST(get_shows_the_defaults_then_what_put_set)
{
    fx *f = &the_fx;
    const cm_rpc_md md[] = MD("set-basic");
    cm_rpc_status st;
    Commerce__Order__V1__GetTenantSettingsResponse *g = NULL;
    ck_assert_int_eq(get_settings(f->oc, md, 1, &g, &st), 0);
    /* no settings of its own: the service's, ORDER_PAYMENT_TIMEOUT_S=900
     * and ORDER_FLASH_PAYMENT_TIMEOUT_S=120, at revision 0 */
    assert_settings(g->settings, 900, 120, 0);
    ck_assert_ptr_null(g->settings->updated_at);
    /* and ORDER_AUTO_COMPLETE_DAYS' default, 7 days */
    ck_assert_ptr_nonnull(g->settings->auto_complete_after);
    ck_assert_int_eq(g->settings->auto_complete_after->seconds, 7 * 86400);
    free_msg(g);

    Commerce__Order__V1__PutTenantSettingsResponse *p = NULL;
    put_spec ps = put_of("basic-1", 7200, 600);
    ck_assert_int_eq(put_settings(f->oc, md, 1, &ps, &p, &st), 0);
    assert_settings(p->settings, 7200, 600, 1); /* the forged revision 777 is ignored */
    ck_assert_ptr_nonnull(p->settings->updated_at);
    ck_assert_str_eq(p->settings->updated_by, ""); /* no authentication here */
    ck_assert_ptr_nonnull(p->change);
    ck_assert_ptr_null(p->change->previous); /* the defaults applied before */
    assert_settings(p->change->current, 7200, 600, 1);
    ck_assert_str_eq(p->change->request_id, "basic-1");
    ck_assert_str_eq(p->change->actor, "ops:alice");
    ck_assert_str_eq(p->change->reason, "checkout takes longer for pre-orders");
    ck_assert_uint_eq(strlen(p->change->change_id), 36);
    ck_assert_int_eq(p->change->change_id[14], '7'); /* a UUIDv7 */
    free_msg(p);

    ck_assert_int_eq(get_settings(f->oc, md, 1, &g, &st), 0);
    assert_settings(g->settings, 7200, 600, 1);
    free_msg(g);

    /* a second change: the audit trail has old -> new */
    ps = put_of("basic-2", 1800, 300);
    ck_assert_int_eq(put_settings(f->oc, md, 1, &ps, &p, &st), 0);
    assert_settings(p->settings, 1800, 300, 2);
    assert_settings(p->change->previous, 7200, 600, 1);
    assert_settings(p->change->current, 1800, 300, 2);
    free_msg(p);
    ck_assert_int_eq(audit_rows("set-basic"), 2);
    ck_assert_int_eq(sql_ll("SELECT count(*) FROM tenant_settings_changes WHERE tenant_id = '%s' "
                            "AND request_id = 'basic-2' AND old_payment_timeout_s = 7200 AND "
                            "old_flash_payment_timeout_s = 600 AND new_payment_timeout_s = 1800 "
                            "AND new_flash_payment_timeout_s = 300 AND old_revision = 1 AND "
                            "revision = 2 AND actor = 'ops:alice' AND changed_at > now() - "
                            "interval '1 minute'",
                            "set-basic"),
                     1);
    /* auto_complete_after set, then left unset again (the default) */
    ps = put_of("basic-3", 1800, 300);
    ps.auto_s = 3 * 86400;
    ck_assert_int_eq(put_settings(f->oc, md, 1, &ps, &p, &st), 0);
    ck_assert_int_eq(p->settings->auto_complete_after->seconds, 3 * 86400);
    ck_assert_int_eq(p->change->previous->auto_complete_after->seconds, 7 * 86400);
    ck_assert_int_eq(p->change->current->auto_complete_after->seconds, 3 * 86400);
    free_msg(p);
    ps = put_of("basic-4", 1800, 300);
    ck_assert_int_eq(put_settings(f->oc, md, 1, &ps, &p, &st), 0);
    ck_assert_int_eq(p->settings->auto_complete_after->seconds, 7 * 86400);
    ck_assert_int_eq(p->change->previous->auto_complete_after->seconds, 3 * 86400);
    free_msg(p);
    ck_assert_int_eq(sql_ll("SELECT count(*) FROM tenant_settings_changes WHERE tenant_id = '%s' "
                            "AND ((request_id = 'basic-3' AND old_auto_complete_after_s IS NULL "
                            "AND new_auto_complete_after_s = 259200) OR (request_id = 'basic-4' "
                            "AND old_auto_complete_after_s = 259200 AND "
                            "new_auto_complete_after_s IS NULL))",
                            "set-basic"),
                     2);
    ck_assert_int_eq(audit_rows("set-basic"), 4);
    /* other tenants are untouched */
    const cm_rpc_md other[] = MD("set-basic-other");
    ck_assert_int_eq(get_settings(f->oc, other, 1, &g, &st), 0);
    assert_settings(g->settings, 900, 120, 0);
    free_msg(g);
}
END_TEST

START_TEST(put_is_idempotent_by_request_id)
{
    fx *f = &the_fx;
    const cm_rpc_md md[] = MD("set-idem");
    cm_rpc_status st;
    Commerce__Order__V1__PutTenantSettingsResponse *a = NULL, *b = NULL;
    put_spec ps = put_of("idem-1", 3600, 900);
    ck_assert_int_eq(put_settings(f->oc, md, 1, &ps, &a, &st), 0);
    /* a retry: the same change, nothing applied again */
    ck_assert_int_eq(put_settings(f->oc, md, 1, &ps, &b, &st), 0);
    ck_assert_str_eq(a->change->change_id, b->change->change_id);
    assert_settings(b->settings, 3600, 900, 1);
    assert_settings(b->change->current, 3600, 900, 1);
    ck_assert_int_eq(b->change->changed_at->seconds, a->change->changed_at->seconds);
    free_msg(b);
    ck_assert_int_eq(audit_rows("set-idem"), 1);

    /* another change later; a retry of the first then answers with the
     * first change and the settings as they are now */
    put_spec ps2 = put_of("idem-2", 5400, 900);
    ck_assert_int_eq(put_settings(f->oc, md, 1, &ps2, NULL, &st), 0);
    ck_assert_int_eq(put_settings(f->oc, md, 1, &ps, &b, &st), 0);
    ck_assert_str_eq(a->change->change_id, b->change->change_id);
    assert_settings(b->change->current, 3600, 900, 1);
    assert_settings(b->settings, 5400, 900, 2);
    free_msg(b);

    /* the same key with another body: refused, nothing stored */
    put_spec other = put_of("idem-1", 3601, 900);
    ck_assert_int_eq(put_settings(f->oc, md, 1, &other, NULL, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");
    other = put_of("idem-1", 3600, 900);
    other.actor = "ops:bob";
    ck_assert_int_eq(put_settings(f->oc, md, 1, &other, NULL, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_int_eq(audit_rows("set-idem"), 2);
    Commerce__Order__V1__GetTenantSettingsResponse *g = NULL;
    ck_assert_int_eq(get_settings(f->oc, md, 1, &g, &st), 0);
    assert_settings(g->settings, 5400, 900, 2);
    free_msg(g);
    free_msg(a);

    /* keys are per tenant */
    const cm_rpc_md md2[] = MD("set-idem-2");
    ck_assert_int_eq(put_settings(f->oc, md2, 1, &other, NULL, &st), 0);
}
END_TEST

START_TEST(put_validates_naming_the_field_and_stores_nothing)
{
    fx *f = &the_fx;
    const cm_rpc_md md[] = MD("set-bad");
    cm_rpc_status st;
    struct {
        put_spec p;
        const char *field;
    } bad[] = {
        {put_of("", 3600, 600), "request_id"},
        {put_of("bad 1", 3600, 600), "request_id"},
        {put_of("bad-1", -1, 600), "settings.payment_timeout"},
        {put_of("bad-1", 59, 600), "settings.payment_timeout"},
        {put_of("bad-1", 72 * 3600 + 1, 600), "settings.payment_timeout"},
        {put_of("bad-1", INT64_MAX, 600), "settings.payment_timeout"},
        {put_of("bad-1", 3600, -1), "settings.flash_payment_timeout"},
        {put_of("bad-1", 3600, 0), "settings.flash_payment_timeout"},
        {put_of("bad-1", 3600, 72 * 3600 + 60), "settings.flash_payment_timeout"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(put_settings(f->oc, md, 1, &bad[i].p, NULL, &st),
                         GRPC_STATUS_INVALID_ARGUMENT);
        ck_assert_msg(strcmp(st.field, bad[i].field) == 0, "case %zu: field %s, expected %s", i,
                      st.field, bad[i].field);
        ck_assert_str_eq(st.reason, "INVALID_ARGUMENT");
    }
    put_spec p = put_of("bad-1", 3600, 600);
    p.nanos = 5;
    ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "settings.payment_timeout");
    int64_t bad_auto[][2] = {{-1, 0}, {90LL * 86400 + 1, 0}, {60, 5}, {0, 500000000}};
    for (size_t i = 0; i < sizeof bad_auto / sizeof bad_auto[0]; i++) {
        p = put_of("bad-1", 3600, 600);
        p.auto_s = bad_auto[i][0];
        p.auto_nanos = (int32_t)bad_auto[i][1];
        ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
        ck_assert_str_eq(st.field, "settings.auto_complete_after");
    }
    p = put_of("bad-1", 3600, 600);
    p.no_settings = 1;
    ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "settings");
    p = put_of("bad-1", 3600, 600);
    p.actor = "";
    ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "actor");
    p = put_of("bad-1", 3600, 600);
    p.reason = "";
    ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "reason");
    p = put_of("bad-1", 3600, 600);
    p.expected = -1;
    ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(st.field, "expected_revision");

    ck_assert_int_eq(audit_rows("set-bad"), 0);
    ck_assert_int_eq(
        sql_ll("SELECT count(*) FROM tenant_settings WHERE tenant_id = '%s'", "set-bad"), 0);
    /* the refused key is still free */
    p = put_of("bad-1", 3600, 600);
    ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), 0);
}
END_TEST

START_TEST(put_with_expected_revision_is_compare_and_set)
{
    fx *f = &the_fx;
    const cm_rpc_md md[] = MD("set-cas");
    cm_rpc_status st;
    put_spec p = put_of("cas-1", 3600, 600);
    p.expected = 1; /* the tenant is at revision 0 */
    ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), GRPC_STATUS_ABORTED);
    ck_assert_str_eq(st.reason, "VERSION_MISMATCH");
    ck_assert_pstr_eq(cm_rpc_status_meta(&st, "current_version"), "0");
    ck_assert_int_eq(audit_rows("set-cas"), 0);
    p.expected = 0;
    ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), 0);
    p = put_of("cas-2", 4000, 600);
    p.expected = 1;
    ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), 0);
    p = put_of("cas-3", 5000, 600);
    p.expected = 1; /* stale: revision 2 now */
    ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), GRPC_STATUS_ABORTED);
    ck_assert_pstr_eq(cm_rpc_status_meta(&st, "current_version"), "2");
    ck_assert_int_eq(audit_rows("set-cas"), 2);
}
END_TEST

static int64_t create_timeout_s(cm_rpc_client *c, const cm_rpc_md *md, const char *rid)
{
    Commerce__Order__V1__CreateOrderRequest q = COMMERCE__ORDER__V1__CREATE_ORDER_REQUEST__INIT;
    Commerce__Order__V1__CreateOrderLine l = COMMERCE__ORDER__V1__CREATE_ORDER_LINE__INIT;
    Commerce__Common__V1__Money price = COMMERCE__COMMON__V1__MONEY__INIT;
    Commerce__Order__V1__CreateOrderLine *lp[] = {&l};
    price.amount_minor = 100;
    price.currency = "CNY";
    l.sku = "SET-SKU";
    l.quantity = 1;
    l.unit_price = &price;
    q.request_id = (char *)rid;
    q.buyer_id = "buyer-1";
    q.merchant_id = "merchant-1";
    q.currency = "CNY";
    q.lines = lp;
    q.n_lines = 1;
    Commerce__Order__V1__CreateOrderResponse *r = NULL;
    cm_rpc_status st;
    int code = call(c, OSVC "CreateOrder", &q.base,
                    &commerce__order__v1__create_order_response__descriptor,
                    (ProtobufCMessage **)&r, &st, md, 1);
    ck_assert_msg(code == 0, "CreateOrder %s: code %d %s %s", rid, code, st.reason, st.message);
    const Commerce__Order__V1__Order *o = r->order;
    int64_t s = o->payment_deadline->seconds - o->created_at->seconds;
    free_msg(r);
    return s;
}

static void stock(cm_rpc_client *ic, const cm_rpc_md *md, int64_t n)
{
    Commerce__Inventory__V1__SetStockRequest q = COMMERCE__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
    char rid[64];
    snprintf(rid, sizeof rid, "stock-%lld", hs_now_ms());
    q.request_id = rid;
    q.sku = "SET-SKU";
    q.available = n;
    q.reason = "test stock";
    q.actor = "test";
    cm_rpc_status st;
    ck_assert_int_eq(call(ic, ISVC "SetStock", &q.base,
                          &commerce__inventory__v1__set_stock_response__descriptor, NULL, &st, md,
                          1),
                     0);
}

START_TEST(new_orders_take_the_new_timeout)
{
    fx *f = &the_fx;
    const cm_rpc_md md[] = MD("set-orders");
    cm_rpc_status st;
    stock(f->ic, md, 100);
    /* a second replica, its cache filled before the change */
    hs_proc b;
    fx_spawn_order(f, &b, NULL);
    cm_rpc_client *bc = hs_client(&b, NULL);
    int64_t d = create_timeout_s(f->oc, md, "ord-a-1");
    ck_assert_msg(d >= 899 && d <= 901, "deadline %lld s after creation, expected 900",
                  (long long)d);
    d = create_timeout_s(bc, md, "ord-b-1");
    ck_assert_msg(d >= 899 && d <= 901, "deadline %lld s after creation, expected 900",
                  (long long)d);

    put_spec p = put_of("orders-1", 7200, 600);
    ck_assert_int_eq(put_settings(f->oc, md, 1, &p, NULL, &st), 0);
    long long changed = hs_now_ms();
    /* the replica that answered: at once */
    d = create_timeout_s(f->oc, md, "ord-a-2");
    ck_assert_msg(d >= 7199 && d <= 7201, "deadline %lld s after creation, expected 7200",
                  (long long)d);
    /* the other: within its cache's 10 s */
    int i = 0;
    for (;; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "ord-b-2-%d", i);
        d = create_timeout_s(bc, md, rid);
        if (d >= 7199 && d <= 7201)
            break;
        ck_assert_msg(d >= 899 && d <= 901, "deadline %lld s after creation", (long long)d);
        ck_assert_msg(hs_now_ms() - changed < 11000,
                      "replica b still used the old timeout %lld ms after the change",
                      hs_now_ms() - changed);
        usleep(500 * 1000);
    }
    cm_rpc_client_free(bc);
    ck_assert_int_eq(hs_stop(&b, SIGTERM, 30000), 0);
}
END_TEST

static char *token(const char *tid, const char *sub, const char *roles)
{
    return hs_bearer(SECRET, tid, sub, roles, 300);
}

START_TEST(the_admin_role_is_required_when_auth_is_on)
{
    fx *f = &the_fx;
    hs_proc a;
    const char *env[] = {"AUTH_MODE=required", "JWT_HS256_SECRET=" SECRET, NULL};
    fx_spawn_order(f, &a, env);
    cm_rpc_client *ac = hs_client(&a, NULL);
    char *clerk = token("set-auth", "clerk-7", "support");
    char *admin = token("set-auth", "admin-1", "admin support");
    cm_rpc_md md[] = {{"authorization", clerk}};
    cm_rpc_status st;
    put_spec p = put_of("auth-1", 3600, 600);

    ck_assert_int_eq(get_settings(ac, md, 1, NULL, &st), GRPC_STATUS_PERMISSION_DENIED);
    ck_assert_str_eq(st.reason, "ROLE_REQUIRED");
    ck_assert_pstr_eq(cm_rpc_status_meta(&st, "role"), "admin");
    ck_assert_int_eq(put_settings(ac, md, 1, &p, NULL, &st), GRPC_STATUS_PERMISSION_DENIED);
    ck_assert_str_eq(st.reason, "ROLE_REQUIRED");
    ck_assert_int_eq(audit_rows("set-auth"), 0);
    ck_assert_int_eq(put_settings(ac, NULL, 0, &p, NULL, &st), GRPC_STATUS_UNAUTHENTICATED);
    ck_assert_str_eq(st.reason, "CREDENTIALS_MISSING");

    md[0].value = admin;
    Commerce__Order__V1__PutTenantSettingsResponse *r = NULL;
    ck_assert_int_eq(put_settings(ac, md, 1, &p, &r, &st), 0);
    ck_assert_str_eq(r->change->principal, "admin-1"); /* the token's sub, audited */
    ck_assert_str_eq(r->change->actor, "ops:alice");
    ck_assert_str_eq(r->settings->updated_by, "admin-1");
    free_msg(r);
    Commerce__Order__V1__GetTenantSettingsResponse *g = NULL;
    ck_assert_int_eq(get_settings(ac, md, 1, &g, &st), 0);
    assert_settings(g->settings, 3600, 600, 1);
    ck_assert_str_eq(g->settings->updated_by, "admin-1");
    free_msg(g);
    ck_assert_int_eq(sql_ll("SELECT count(*) FROM tenant_settings_changes WHERE tenant_id = '%s' "
                            "AND principal = 'admin-1' AND actor = 'ops:alice'",
                            "set-auth"),
                     1);
    free(clerk);
    free(admin);
    cm_rpc_client_free(ac);
    ck_assert_int_eq(hs_stop(&a, SIGTERM, 30000), 0);
}
END_TEST

/* ---- auto-completion (the fixture's tenant, FX_TENANT) ---- */

/* a paid order of one unit of sku, request id rid; its id into id */
static void paid_order(fx *f, const char *rid, const char *sku, char id[64])
{
    const fx_line l[] = {FX_L(sku, 2, 500)};
    fx_order_spec spec = fx_spec(rid, l, 1);
    fx_order *o = fx_must_create(f->oc, &spec);
    char pid[80];
    snprintf(pid, sizeof pid, "pay-%s", rid);
    fx_must_pay(f->oc, o, pid);
    snprintf(id, 64, "%s", o->order_id);
    fx_order_free(o);
}

static void ship(fx *f, const char *id)
{
    char rid[96];
    snprintf(rid, sizeof rid, "ship-%.64s", id);
    cm_rpc_status st;
    ck_assert_int_eq(fx_ship(f->oc, rid, id, "sf", "SF1", NULL, &st), 0);
}

/* waits (at most ms) until order id has completed_at; its state then */
static int wait_completed(fx *f, const char *id, long long ms)
{
    long long until = hs_now_ms() + ms;
    for (;;) {
        fx_order *o = fx_must_get(f->oc, id);
        int done = o->completed_at != NULL;
        int state = (int)o->state;
        if (done)
            ck_assert_str_eq(o->completed_by, "system:auto-complete");
        fx_order_free(o);
        if (done)
            return state;
        ck_assert_msg(hs_now_ms() < until, "order %s not completed after %lld ms", id, ms);
        usleep(100 * 1000);
    }
}

/* ShipOrder with shipped_at ago_s seconds in the past */
static void ship_ago(fx *f, const char *id, int64_t ago_s)
{
    Commerce__Order__V1__ShipOrderRequest q = COMMERCE__ORDER__V1__SHIP_ORDER_REQUEST__INIT;
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    char rid[96];
    snprintf(rid, sizeof rid, "ship-%.64s", id);
    at.seconds = (int64_t)time(NULL) - ago_s;
    q.request_id = rid;
    q.order_id = (char *)id;
    q.carrier = "sf";
    q.tracking_number = "SF2";
    q.shipped_at = &at;
    cm_rpc_status st;
    int code = call(f->oc, OSVC "ShipOrder", &q.base,
                    &commerce__order__v1__ship_order_response__descriptor, NULL, &st, fx_md, 1);
    ck_assert_msg(code == 0, "ShipOrder: code %d %s %s %s", code, st.reason, st.field, st.message);
}

START_TEST(shipped_orders_complete_after_the_tenants_window)
{
    fx *f = &ac_fx;
    cm_rpc_status st;
    fx_set_stock(f->ic, "ac-stock", "AC-SKU", 1000);
    /* two more replicas sweeping every 50 ms next to the fixture's: every
     * order is offered to three sweepers at once */
    const char *fast[] = {"ORDER_SWEEP_MS=50", NULL};
    hs_proc r2, r3;
    fx_spawn_order(f, &r2, fast);
    fx_spawn_order(f, &r3, fast);

    char shipped[24][64], part[64], unshipped[64], manual[64];
    for (int i = 0; i < 24; i++) {
        char rid[32];
        snprintf(rid, sizeof rid, "ac-s-%d", i);
        paid_order(f, rid, "AC-SKU", shipped[i]);
    }
    paid_order(f, "ac-part", "AC-SKU", part);
    paid_order(f, "ac-unshipped", "AC-SKU", unshipped);
    paid_order(f, "ac-manual", "AC-SKU", manual);
    /* a partial refund before shipment: still completes (it keeps its
     * state, PARTIALLY_REFUNDED, and gets completed_at) */
    fx_refund_spec rs = {
        .refund_id = "ac-r1", .order_id = part, .scope = 3, .has_amount = 1, .amount = 100};
    ck_assert_int_eq(fx_refund_order(f->oc, &rs, NULL, &st), 0);
    /* completed by its caller before the window: not again by the sweeper */
    ship(f, manual);
    ck_assert_int_eq(fx_complete(f->oc, "ac-manual-c", manual, NULL, &st), 0);

    put_spec p = put_of("ac-1", 1800, 300);
    p.auto_s = 2;
    ck_assert_int_eq(put_settings(f->oc, fx_md, 1, &p, NULL, &st), 0);
    long long t0 = hs_now_ms();
    for (int i = 0; i < 24; i++)
        ship(f, shipped[i]);
    ship(f, part);

    for (int i = 0; i < 24; i++)
        ck_assert_int_eq(wait_completed(f, shipped[i], 15000), 4 /* COMPLETED */);
    ck_assert_int_eq(wait_completed(f, part, 15000), 6 /* PARTIALLY_REFUNDED */);
    /* not before the window */
    fx_order *o = fx_must_get(f->oc, shipped[0]);
    ck_assert_msg(fx_ts_ms(o->completed_at) - fx_ts_ms(o->shipment->shipped_at) >= 2000,
                  "completed %lld ms after shipment",
                  fx_ts_ms(o->completed_at) - fx_ts_ms(o->shipment->shipped_at));
    ck_assert_int_ge(hs_now_ms() - t0, 2000);
    fx_order_free(o);
    o = fx_must_get(f->oc, manual);
    ck_assert_str_eq(o->completed_by, "caller"); /* CompleteOrder, no authentication */
    fx_order_free(o);
    /* a paid order not shipped is left alone, well past the window */
    usleep(1500 * 1000);
    ck_assert_int_eq(fx_state_of(f->oc, unshipped), 2 /* PAID */);

    fx_settle(f);
    for (int i = 0; i < 24; i++) {
        int dups = 0;
        ck_assert_int_eq(fx_ev_count(f->log, shipped[i], FX_EV_COMPLETED, &dups), 1);
        const hs_record *r = fx_ev_nth(f->log, shipped[i], FX_EV_COMPLETED, 0);
        fx_event e;
        ck_assert_int_eq(fx_ev_decode(r, &e), 0);
        ck_assert_int_eq(e.prev, 3 /* SHIPPED */);
        ck_assert_int_eq((int)e.order->state, 4);
        ck_assert_str_eq(e.order->completed_by, "system:auto-complete");
        fx_ev_free(&e);
    }
    ck_assert_int_eq(fx_ev_count(f->log, part, FX_EV_COMPLETED, NULL), 1);
    ck_assert_int_eq(fx_ev_count(f->log, manual, FX_EV_COMPLETED, NULL), 1);
    ck_assert_int_eq(fx_ev_count(f->log, unshipped, FX_EV_COMPLETED, NULL), 0);
    ck_assert_int_eq(sql_ll("SELECT count(*) FROM orders WHERE tenant_id = '%s' AND "
                            "completed_by = 'system:auto-complete'",
                            FX_TENANT),
                     25);

    /* back to the default (7 days): a shipped order stays shipped */
    p = put_of("ac-2", 1800, 300);
    ck_assert_int_eq(put_settings(f->oc, fx_md, 1, &p, NULL, &st), 0);
    char later[64], old_ship[64];
    paid_order(f, "ac-later", "AC-SKU", later);
    paid_order(f, "ac-old", "AC-SKU", old_ship);
    ship(f, later);
    /* shipped 8 days ago (the carrier reported it late): past the default */
    ship_ago(f, old_ship, 8 * 86400);
    ck_assert_int_eq(wait_completed(f, old_ship, 15000), 4 /* COMPLETED */);
    usleep(3000 * 1000);
    ck_assert_int_eq(fx_state_of(f->oc, later), 3 /* SHIPPED */);
    ck_assert_int_eq(fx_state_of(f->oc, unshipped), 2 /* PAID */);

    ck_assert_int_eq(hs_stop(&r2, SIGTERM, 30000), 0);
    ck_assert_int_eq(hs_stop(&r3, SIGTERM, 30000), 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("order_settings");
    TCase *tc = tcase_create("settings");
    tcase_set_timeout(tc, 240);
    tcase_add_unchecked_fixture(tc, pair_start, pair_stop);
    tcase_add_test(tc, get_shows_the_defaults_then_what_put_set);
    tcase_add_test(tc, put_is_idempotent_by_request_id);
    tcase_add_test(tc, put_validates_naming_the_field_and_stores_nothing);
    tcase_add_test(tc, put_with_expected_revision_is_compare_and_set);
    tcase_add_test(tc, new_orders_take_the_new_timeout);
    tcase_add_test(tc, the_admin_role_is_required_when_auth_is_on);
    suite_add_tcase(s, tc);
    TCase *ac = tcase_create("auto_complete");
    tcase_set_timeout(ac, 240);
    tcase_add_unchecked_fixture(ac, ac_start, ac_stop);
    tcase_add_test(ac, shipped_orders_complete_after_the_tenants_window);
    suite_add_tcase(s, ac);
    return s;
}

int main(void)
{
    if (!getenv("KAFKA_BROKERS") || !*getenv("KAFKA_BROKERS") || !getenv("PG_DSN") ||
        !*getenv("PG_DSN")) {
        fprintf(stderr, "test_order_settings: FAIL: KAFKA_BROKERS and PG_DSN must be set "
                        "(scripts/test.sh sets both)\n");
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
