/*
 * commerce-order calling inventory over mTLS (fixture.h), and refused
 * without a client certificate or in plaintext; and with a service token
 * (INVENTORY_TOKEN_FILE) under AUTH_MODE=required, refused with a wrong or
 * missing one.
 */
#include "fixture.h"

#include "cm_file.h"

#include <grpc/status.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- order calls inventory over mTLS ---- */

START_TEST(order_calls_inventory_over_mtls)
{
    char dir[128], ca[192], cert[192], key[192];
    hs_make_certs(dir, sizeof dir, "ord");
    snprintf(ca, sizeof ca, "INVENTORY_TLS_CA_FILE=%s/ca.pem", dir);
    snprintf(cert, sizeof cert, "INVENTORY_TLS_CERT_FILE=%s/client.pem", dir);
    snprintf(key, sizeof key, "INVENTORY_TLS_KEY_FILE=%s/client.key", dir);
    const char *env[] = {ca, cert, key, NULL};
    static fx f;
    fx_start_opts(&f, &(fx_opts){.extra = env, .tls_dir = dir});
    fx_set_stock(f.ic, "s-tls", "sku-tls", 10);
    fx_line l[] = {FX_L("sku-tls", 3, 250)};
    fx_order_spec s = fx_spec("req-tls-1", l, 1);
    fx_order *o = fx_must_create(f.oc, &s);
    ck_assert_int_eq(o->state, FX_ST(PENDING_PAYMENT));
    fx_order_free(o);
    fx_assert_level(f.ic, "sku-tls", 7, 3, 0);

    /* a replica that trusts inventory's CA but presents no certificate, and
     * one that speaks plaintext: inventory refuses the connection, the
     * create answers UNAVAILABLE and nothing is reserved or stored */
    const char *no_cert[] = {ca, NULL}, *plain[] = {NULL};
    const char *const *bad[] = {no_cert, plain};
    for (int i = 0; i < 2; i++) {
        hs_proc p;
        fx_spawn_order(&f, &p, bad[i]);
        cm_rpc_client *c = hs_client(&p, NULL);
        s.rid = i ? "req-tls-3" : "req-tls-2";
        cm_rpc_status st;
        int code = fx_create(c, &s, NULL, &st);
        ck_assert_msg(code == GRPC_STATUS_UNAVAILABLE, "%s: code %d %s",
                      i ? "plaintext" : "no client certificate", code, st.message);
        ck_assert_str_eq(st.reason, "DEPENDENCY_UNAVAILABLE");
        cm_rpc_client_free(c);
        ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
    }
    fx_assert_level(f.ic, "sku-tls", 7, 3, 0);
    fx_settle(&f);
    char ids[8][64];
    ck_assert_uint_eq(fx_all_orders(f.oc, ids, 8), 1);
    fx_stop(&f);
    hs_rm_rf(dir);
}
END_TEST

/* ---- order calls inventory with a service token ---- */

/* inventory trusts only the services' key; order trusts only the users'.
 * a call that reaches inventory with the buyer's token is refused, so an
 * order created proves order sent its own token. */
#define USER_SECRET "0123456789abcdef0123456789abcdef-user-key"
#define SVC_SECRET "0123456789abcdef0123456789abcdef-service-key"

/* the token of a "Bearer ..." into path, as a secret update does (a new
 * file renamed over the old) */
static void write_token(const char *path, const char *bearer)
{
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    FILE *f = fopen(tmp, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "%s\n", bearer + strlen("Bearer "));
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(rename(tmp, path), 0);
}

/* orders created by create_until: each reserved one unit */
static int created;

/* creates orders (request ids "<prefix>-<n>", one unit each) for up to
 * 10 s until one answers want: the token file is re-read within a second
 * of a change, so the first tries may still go out with the old token */
static int create_until(cm_rpc_client *c, const char *prefix, const cm_rpc_md *md, int want,
                        cm_rpc_status *st)
{
    fx_line l[] = {FX_L("sku-svc", 1, 100)};
    int code = -1;
    for (int i = 0; i < 100 && code != want; i++) {
        char rid[64];
        snprintf(rid, sizeof rid, "%s-%d", prefix, i);
        fx_order_spec s = fx_spec(rid, l, 1);
        fx_order *o = NULL;
        code = fx_create_md(c, &s, &o, st, md, 1);
        created += code == 0;
        fx_order_free(o);
        if (code != want)
            usleep(100 * 1000);
    }
    return code;
}

static int64_t reserved_of(cm_rpc_client *ic, const cm_rpc_md *md)
{
    Commerce__Inventory__V1__GetStockRequest q = COMMERCE__INVENTORY__V1__GET_STOCK_REQUEST__INIT;
    q.sku = "sku-svc";
    Commerce__Inventory__V1__GetStockResponse *r = NULL;
    cm_rpc_status st;
    ck_assert_int_eq(hs_call(ic, FX_ISVC "GetStock", &q.base,
                             &commerce__inventory__v1__get_stock_response__descriptor,
                             (ProtobufCMessage **)&r, &st, md, 1),
                     0);
    int64_t n = r->stock->reserved;
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return n;
}

static void assert_credentials_refused(const cm_rpc_status *st, int code)
{
    ck_assert_msg(code == GRPC_STATUS_INTERNAL, "code %d: %s", code, st->message);
    ck_assert_str_eq(st->reason, "DEPENDENCY_FAILED");
    ck_assert_str_eq(st->domain, "order.commerce");
    ck_assert_str_eq(st->message, "a dependency refused the credentials this service sent");
    ck_assert_str_eq(cm_rpc_status_meta(st, "dependency"), "inventory.commerce");
    ck_assert_str_eq(cm_rpc_status_meta(st, "dependency_reason"), "CREDENTIALS_INVALID");
}

START_TEST(order_calls_inventory_with_a_service_token)
{
    char path[128], var[160];
    snprintf(path, sizeof path, "/tmp/order-inventory-token.%d", (int)getpid());
    snprintf(var, sizeof var, "INVENTORY_TOKEN_FILE=%s", path);
    char *svc = hs_bearer(SVC_SECRET, "*", "commerce-order", "service", 600);
    write_token(path, svc);
    const char *inv_env[] = {"INVENTORY_SWEEP_MS=100", "WORKERS=8", "AUTH_MODE=required",
                             "JWT_HS256_SECRET=" SVC_SECRET, NULL};
    const char *ord_env[] = {"AUTH_MODE=required", "JWT_HS256_SECRET=" USER_SECRET, var, NULL};
    static fx f;
    fx_start_opts(&f, &(fx_opts){.inventory_env = inv_env, .extra = ord_env, .no_topic = 1});
    char *admin = hs_bearer(SVC_SECRET, FX_TENANT, "ops-1", "admin", 600);
    char *buyer = hs_bearer(USER_SECRET, FX_TENANT, "buyer-1", "service", 600);
    cm_rpc_md ma[] = {{"authorization", admin}}, mb[] = {{"authorization", buyer}};
    fx_set_stock_md(f.ic, "s-svc", "sku-svc", 1000, ma);

    /* the buyer's token alone: inventory refuses it */
    cm_rpc_status st;
    Commerce__Inventory__V1__GetStockRequest q = COMMERCE__INVENTORY__V1__GET_STOCK_REQUEST__INIT;
    q.sku = "sku-svc";
    ck_assert_int_eq(hs_call(f.ic, FX_ISVC "GetStock", &q.base,
                             &commerce__inventory__v1__get_stock_response__descriptor, NULL, &st,
                             mb, 1),
                     GRPC_STATUS_UNAUTHENTICATED);

    /* through order: its service token, acting for the buyer's tenant
     * (named only in the buyer's token) */
    fx_line l[] = {FX_L("sku-svc", 3, 250)};
    fx_order_spec s = fx_spec("req-svc-1", l, 1);
    fx_order *o = NULL;
    ck_assert_int_eq(fx_create_md(f.oc, &s, &o, &st, mb, 1), 0);
    ck_assert_int_eq(o->state, FX_ST(PENDING_PAYMENT));
    fx_order_free(o);
    ck_assert_int_eq(reserved_of(f.ic, ma), 3);

    /* a token inventory does not accept (the users' key; a service's tid
     * without the service role), swapped in while order runs: refused with
     * a clear status, nothing reserved */
    char *wrong[] = {hs_bearer(USER_SECRET, "*", "commerce-order", "service", 600),
                     hs_bearer(SVC_SECRET, "*", "commerce-order", "admin", 600)};
    created = 0;
    for (int i = 0; i < 2; i++) {
        write_token(path, wrong[i]);
        char prefix[32];
        snprintf(prefix, sizeof prefix, "req-wrong-%d", i);
        assert_credentials_refused(&st, create_until(f.oc, prefix, mb, GRPC_STATUS_INTERNAL, &st));
    }
    ck_assert_int_eq(reserved_of(f.ic, ma), 3 + created);
    /* the refusal holds: the next tries are refused as well */
    for (int i = 0; i < 3; i++) {
        s.rid = i == 0 ? "req-still-0" : i == 1 ? "req-still-1" : "req-still-2";
        assert_credentials_refused(&st, fx_create_md(f.oc, &s, NULL, &st, mb, 1));
    }

    /* a good one is picked up without a restart; then an empty file is
     * refused and the token in use stays */
    write_token(path, svc);
    ck_assert_int_eq(create_until(f.oc, "req-back", mb, 0, &st), 0);
    ck_assert_int_eq(reserved_of(f.ic, ma), 3 + created);
    write_token(path, "Bearer ");
    usleep(1500 * 1000);
    s.rid = "req-empty-file";
    ck_assert_int_eq(fx_create_md(f.oc, &s, NULL, &st, mb, 1), 0);
    created += 3;
    ck_assert_int_eq(reserved_of(f.ic, ma), 3 + created);

    /* a replica without a token file forwards the buyer's: refused */
    hs_proc p;
    const char *no_token[] = {"AUTH_MODE=required", "JWT_HS256_SECRET=" USER_SECRET, NULL};
    fx_spawn_order(&f, &p, no_token);
    cm_rpc_client *c = hs_client(&p, NULL);
    s.rid = "req-svc-2";
    assert_credentials_refused(&st, fx_create_md(c, &s, NULL, &st, mb, 1));
    cm_rpc_client_free(c);
    ck_assert_int_eq(hs_stop(&p, SIGTERM, 30000), 0);
    ck_assert_int_eq(reserved_of(f.ic, ma), 3 + created);

    /* no token in order's log */
    char *log = NULL;
    ck_assert_int_eq(cm_file_read(f.ord.log_path, 1 << 24, &log, NULL), 0);
    ck_assert_ptr_null(strstr(log, svc + strlen("Bearer ")));
    ck_assert_ptr_null(strstr(log, wrong[0] + strlen("Bearer ")));
    free(log);

    for (int i = 0; i < 2; i++)
        free(wrong[i]);
    free(svc);
    free(admin);
    free(buyer);
    fx_stop(&f);
    unlink(path);
}
END_TEST

int main(void)
{
    const TTest *const tests[] = {
        order_calls_inventory_over_mtls,
        order_calls_inventory_with_a_service_token,
    };
    return fx_run("order_tls", tests, sizeof tests / sizeof tests[0]);
}
