/*
 * commerce-order calling inventory over mTLS (fixture.h), and refused
 * without a client certificate or in plaintext.
 */
#include "fixture.h"

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

int main(void)
{
    const TTest *const tests[] = {
        order_calls_inventory_over_mtls,
    };
    return fx_run("order_tls", tests, sizeof tests / sizeof tests[0]);
}
