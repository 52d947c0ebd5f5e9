/*
 * commerce-order's saga against a real inventory, postgres and the kafka
 * broker (fixture.h): create -> pay -> ship -> complete, the payment timeout
 * releasing stock, cancel, the tenant's default timeout, and every illegal
 * transition refused.
 */
#include "fixture.h"

#include <grpc/status.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the saga ---- */

START_TEST(saga_create_pay_ship_complete)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-a", "sku-a", 10);
    fx_set_stock(f.ic, "s-b", "sku-b", 5);

    fx_line ls[] = {FX_L("sku-a", 3, 1250), FX_L("sku-b", 1, 9900)};
    fx_order_spec s = fx_spec("req-saga-1", ls, 2);
    s.channel = "ch-7";
    s.external_ref = "EXT-1";
    s.timeout_s = 600;
    fx_order *o = fx_must_create(f.oc, &s);
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    ck_assert_uint_eq(strlen(id), 36);
    ck_assert_str_eq(o->request_id, "req-saga-1");
    ck_assert_int_eq(o->state, FX_ST(PENDING_PAYMENT));
    ck_assert_str_eq(o->buyer_id, "buyer-1");
    ck_assert_str_eq(o->merchant_id, "merchant-1");
    ck_assert_str_eq(o->channel_id, "ch-7");
    ck_assert_str_eq(o->currency, "CNY");
    ck_assert_str_eq(o->external_ref, "EXT-1");
    ck_assert_uint_eq(o->n_lines, 2);
    ck_assert_str_eq(o->lines[0]->sku, "sku-a");
    ck_assert_int_eq(o->lines[0]->quantity, 3);
    fx_assert_money(o->lines[0]->unit_price, 1250, "CNY");
    fx_assert_money(o->lines[0]->line_total, 3750, "CNY");
    ck_assert_str_eq(o->lines[1]->sku, "sku-b");
    fx_assert_money(o->lines[1]->line_total, 9900, "CNY");
    ck_assert_str_eq(o->lines[0]->flash_sale_id, "");
    fx_assert_money(o->total_amount, 13650, "CNY");
    ck_assert_int_eq(fx_minor_or_0(o->refunded_amount), 0);
    ck_assert_ptr_null(o->payment);
    ck_assert_ptr_null(o->shipment);
    ck_assert_int_eq(o->cancel_reason, FX_CANCEL(UNSPECIFIED));
    ck_assert(!o->flash_sale);
    ck_assert_ptr_nonnull(o->created_at);
    long long dl = fx_ts_ms(o->payment_deadline) - fx_ts_ms(o->created_at);
    ck_assert_msg(dl >= 599000 && dl <= 601000, "deadline - created = %lld ms", dl);
    fx_order_free(o);
    fx_assert_level(f.ic, "sku-a", 7, 3, 0);
    fx_assert_level(f.ic, "sku-b", 4, 1, 0);

    /* the same request again: the same order, nothing reserved twice */
    o = fx_must_create(f.oc, &s);
    ck_assert_str_eq(o->order_id, id);
    ck_assert_int_eq(o->state, FX_ST(PENDING_PAYMENT));
    fx_order_free(o);
    fx_assert_level(f.ic, "sku-a", 7, 3, 0);
    ck_assert_uint_eq(fx_stock_changes(f.ic, "sku-a", FX_KIND(RESERVE), NULL, 0), 1);

    /* the same request_id with another body */
    fx_line ls2[] = {FX_L("sku-a", 4, 1250), FX_L("sku-b", 1, 9900)};
    fx_order_spec s2 = s;
    s2.lines = ls2;
    cm_rpc_status st;
    ck_assert_int_eq(fx_create(f.oc, &s2, NULL, &st), GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");
    fx_assert_level(f.ic, "sku-a", 7, 3, 0);

    /* pay: the provider's capture time is kept */
    long long paid_at = (hs_real_ms() - 60000) / 1000 * 1000;
    fx_pay_spec p = {.payment_id = "pay-saga-1",
                     .order_id = id,
                     .amount = 13650,
                     .provider = "alipay",
                     .reference = "ALI-123",
                     .paid_at_ms = paid_at};
    ck_assert_int_eq(fx_mark_paid(f.oc, &p, &o, &st), 0);
    ck_assert_int_eq(o->state, FX_ST(PAID));
    ck_assert_ptr_nonnull(o->payment);
    ck_assert_str_eq(o->payment->payment_id, "pay-saga-1");
    fx_assert_money(o->payment->amount, 13650, "CNY");
    ck_assert_str_eq(o->payment->provider, "alipay");
    ck_assert_str_eq(o->payment->provider_reference, "ALI-123");
    ck_assert_int_eq(fx_ts_ms(o->payment->paid_at), paid_at);
    ck_assert_ptr_nonnull(o->payment->recorded_at);
    fx_order_free(o);
    /* inventory confirms from OrderPaid: reserved becomes sold */
    fx_wait_level(f.ic, "sku-a", 7, 0, 3);
    fx_wait_level(f.ic, "sku-b", 4, 0, 1);

    ck_assert_int_eq(fx_ship(f.oc, "ship-1", id, "sf-express", "SF123", &o, &st), 0);
    ck_assert_int_eq(o->state, FX_ST(SHIPPED));
    ck_assert_ptr_nonnull(o->shipment);
    ck_assert_str_eq(o->shipment->carrier, "sf-express");
    ck_assert_str_eq(o->shipment->tracking_number, "SF123");
    ck_assert_ptr_nonnull(o->shipment->shipped_at);
    fx_order_free(o);
    /* a retried ship is the same ship */
    ck_assert_int_eq(fx_ship(f.oc, "ship-1", id, "sf-express", "SF123", NULL, &st), 0);
    ck_assert_int_eq(fx_ship(f.oc, "ship-1", id, "sf-express", "SF999", NULL, &st),
                     GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_int_eq(fx_complete(f.oc, "done-1", id, &o, &st), 0);
    ck_assert_int_eq(o->state, FX_ST(COMPLETED));
    ck_assert_ptr_nonnull(o->completed_at);
    fx_order_free(o);
    ck_assert_int_eq(fx_complete(f.oc, "done-1", id, NULL, &st), 0);

    o = fx_must_get(f.oc, id);
    ck_assert_int_eq(o->state, FX_ST(COMPLETED));
    ck_assert_str_eq(o->payment->payment_id, "pay-saga-1");
    ck_assert_str_eq(o->shipment->tracking_number, "SF123");
    fx_assert_money(o->total_amount, 13650, "CNY");
    fx_order_free(o);

    /* a late duplicate of the payment notification: OK, nothing applied
     * again, the order as it is now */
    ck_assert_int_eq(fx_mark_paid(f.oc, &p, &o, &st), 0);
    ck_assert_str_eq(o->order_id, id);
    ck_assert_int_eq(o->state, FX_ST(COMPLETED));
    ck_assert_str_eq(o->payment->payment_id, "pay-saga-1");
    fx_order_free(o);
    ck_assert_int_eq(fx_state_of(f.oc, id), FX_ST(COMPLETED));

    /* exactly one event per step, in order, with the saga's data */
    fx_settle(&f);
    const char *types[] = {FX_EV_CREATED, FX_EV_PAID, FX_EV_SHIPPED, FX_EV_COMPLETED};
    for (int i = 0; i < 4; i++) {
        int dups;
        ck_assert_msg(fx_ev_count(f.log, id, types[i], &dups) == 1, "%s: %d distinct events",
                      types[i], fx_ev_count(f.log, id, types[i], NULL));
    }
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_CANCELLED, NULL), 0);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_REFUNDED, NULL), 0);
    /* one key, one partition: the topic holds them in the order they happened */
    int step = 0;
    for (size_t i = 0; i < hs_topic_count(f.log); i++) {
        if (strcmp(hs_topic_at(f.log, i)->key, id))
            continue;
        int k = 0;
        while (k < 4 && strcmp(hs_topic_at(f.log, i)->type, types[k]))
            k++;
        ck_assert_msg(k >= step - 1 && k <= step, "event %s out of order",
                      hs_topic_at(f.log, i)->type);
        if (k == step)
            step++;
    }
    ck_assert_int_eq(step, 4);
    fx_event e;
    ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, id, FX_EV_PAID, 0), &e), 0);
    ck_assert_str_eq(e.order->merchant_id, "merchant-1");
    ck_assert_str_eq(e.order->channel_id, "ch-7");
    fx_assert_money(e.order->total_amount, 13650, "CNY");
    ck_assert_int_eq(fx_ts_ms(e.order->payment->paid_at), paid_at);
    ck_assert_uint_eq(e.order->n_lines, 2);
    fx_ev_free(&e);
    ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, id, FX_EV_SHIPPED, 0), &e), 0);
    ck_assert_int_eq(e.prev, FX_ST(PAID));
    fx_ev_free(&e);
    ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, id, FX_EV_COMPLETED, 0), &e), 0);
    ck_assert_int_eq(e.prev, FX_ST(SHIPPED));
    fx_ev_free(&e);
    ck_assert_int_eq(fx_violations(f.ic, NULL), 0);
    fx_stop(&f);
}
END_TEST

START_TEST(saga_payment_timeout_releases_stock)
{
    const char *env[] = {"ORDER_PAYMENT_TIMEOUT_S=2", "ORDER_FLASH_PAYMENT_TIMEOUT_S=1", NULL};
    static fx f;
    fx_start(&f, env, 0);
    fx_set_stock(f.ic, "s-t", "sku-t", 10);
    fx_set_stock(f.ic, "s-f", "sku-f", 10);
    /* a flash sale on sku-f, running now */
    Commerce__Inventory__V1__FlashSale *fs = NULL;
    ck_assert_int_eq(
        fx_configure_sale_in(f.ic, "fs-1", NULL, "sku-f", -5, 3600, 5, 2, 0, &fs, NULL), 0);
    char sale[64];
    snprintf(sale, sizeof sale, "%s", fs->flash_sale_id);
    protobuf_c_message_free_unpacked(&fs->base, NULL);

    /* the default payment timeout (ORDER_PAYMENT_TIMEOUT_S) */
    fx_line lt[] = {FX_L("sku-t", 4, 500)};
    fx_order *o = fx_must_create(f.oc, &(fx_order_spec){.rid = "req-to-1",
                                                        .buyer = "buyer-1",
                                                        .merchant = "merchant-1",
                                                        .currency = "CNY",
                                                        .lines = lt,
                                                        .n = 1});
    char id1[64];
    snprintf(id1, sizeof id1, "%s", o->order_id);
    long long dl = fx_ts_ms(o->payment_deadline) - fx_ts_ms(o->created_at);
    ck_assert_msg(dl >= 1500 && dl <= 2500, "deadline - created = %lld ms (expected 2 s)", dl);
    ck_assert(!o->flash_sale);
    fx_order_free(o);
    /* a flash-sale line: the flash default (ORDER_FLASH_PAYMENT_TIMEOUT_S) */
    fx_line lf[] = {FX_L("sku-f", 1, 100)};
    fx_order_spec sf = fx_spec("req-to-2", lf, 1);
    o = fx_must_create(f.oc, &sf);
    char id2[64];
    snprintf(id2, sizeof id2, "%s", o->order_id);
    ck_assert(o->flash_sale);
    ck_assert_str_eq(o->lines[0]->flash_sale_id, sale);
    dl = fx_ts_ms(o->payment_deadline) - fx_ts_ms(o->created_at);
    ck_assert_msg(dl >= 500 && dl <= 1500, "flash: deadline - created = %lld ms (expected 1 s)",
                  dl);
    fx_order_free(o);
    /* a timeout given in the request wins over both defaults */
    sf.rid = "req-to-3";
    sf.buyer = "buyer-2";
    sf.timeout_s = 120;
    o = fx_must_create(f.oc, &sf);
    char id3[64];
    snprintf(id3, sizeof id3, "%s", o->order_id);
    dl = fx_ts_ms(o->payment_deadline) - fx_ts_ms(o->created_at);
    ck_assert_msg(dl >= 119000 && dl <= 121000, "deadline - created = %lld ms (expected 120 s)",
                  dl);
    fx_order_free(o);
    fx_assert_level(f.ic, "sku-t", 6, 4, 0);
    fx_assert_level(f.ic, "sku-f", 8, 2, 0);

    /* the sweeper cancels both unpaid orders after their deadline */
    long long until = hs_now_ms() + 20000;
    while (hs_now_ms() < until && (fx_state_of(f.oc, id1) != FX_ST(CANCELLED) ||
                                   fx_state_of(f.oc, id2) != FX_ST(CANCELLED)))
        usleep(100000);
    const char *ids[] = {id1, id2};
    for (int i = 0; i < 2; i++) {
        o = fx_must_get(f.oc, ids[i]);
        ck_assert_int_eq(o->state, FX_ST(CANCELLED));
        ck_assert_int_eq(o->cancel_reason, FX_CANCEL(PAYMENT_TIMEOUT));
        ck_assert_ptr_nonnull(o->cancelled_at);
        ck_assert_int_ge(fx_ts_ms(o->cancelled_at), fx_ts_ms(o->payment_deadline));
        ck_assert_ptr_null(o->payment);
        fx_order_free(o);
    }
    ck_assert_int_eq(fx_state_of(f.oc, id3), FX_ST(PENDING_PAYMENT));
    /* inventory releases from OrderCancelled: available back */
    fx_wait_level(f.ic, "sku-t", 10, 0, 0);
    fx_wait_level(f.ic, "sku-f", 9, 1, 0);

    /* a payment after the cancellation is refused, clearly, and recorded */
    fx_pay_spec p = {.payment_id = "pay-late-1", .order_id = id1, .amount = 2000};
    cm_rpc_status st;
    ck_assert_int_eq(fx_mark_paid(f.oc, &p, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(st.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_int_eq(hs_sql_long(f.ord_schema, "SELECT count(*) FROM payment_rejections"), 1);
    ck_assert_int_eq(fx_mark_paid(f.oc, &p, NULL, &st), GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_int_eq(fx_state_of(f.oc, id1), FX_ST(CANCELLED));
    /* a caller's cancel of a cancelled order: OK, unchanged */
    ck_assert_int_eq(fx_cancel(f.oc, "cx-late", id1, FX_CANCEL(BUYER_REQUESTED), NULL, &o, &st), 0);
    ck_assert_int_eq(o->state, FX_ST(CANCELLED));
    ck_assert_int_eq(o->cancel_reason, FX_CANCEL(PAYMENT_TIMEOUT));
    fx_order_free(o);
    fx_wait_level(f.ic, "sku-t", 10, 0, 0);

    fx_settle(&f);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(fx_ev_count(f.log, ids[i], FX_EV_CREATED, NULL), 1);
        ck_assert_int_eq(fx_ev_count(f.log, ids[i], FX_EV_CANCELLED, NULL), 1);
        ck_assert_int_eq(fx_ev_count(f.log, ids[i], FX_EV_PAID, NULL), 0);
        fx_event e;
        ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, ids[i], FX_EV_CANCELLED, 0), &e), 0);
        ck_assert_int_eq(e.order->cancel_reason, FX_CANCEL(PAYMENT_TIMEOUT));
        ck_assert_int_eq(e.prev, FX_ST(PENDING_PAYMENT));
        fx_ev_free(&e);
    }
    ck_assert_int_eq(fx_ev_count(f.log, id3, FX_EV_CREATED, NULL), 1);
    ck_assert_int_eq(fx_ev_count(f.log, id3, FX_EV_CANCELLED, NULL), 0);
    ck_assert_int_eq(fx_violations(f.ic, NULL), 0);
    fx_stop(&f);
}
END_TEST

START_TEST(saga_cancel_releases_stock)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-c", "sku-c", 10);
    fx_line ls[] = {FX_L("sku-c", 2, 700)};
    fx_order *o = fx_must_create(f.oc, &(fx_order_spec){.rid = "req-c-1",
                                                        .buyer = "buyer-1",
                                                        .merchant = "merchant-1",
                                                        .currency = "CNY",
                                                        .lines = ls,
                                                        .n = 1,
                                                        .timeout_s = 600});
    char id[64];
    snprintf(id, sizeof id, "%s", o->order_id);
    fx_order_free(o);
    fx_order *o2 = fx_must_create(f.oc, &(fx_order_spec){.rid = "req-c-2",
                                                         .buyer = "buyer-1",
                                                         .merchant = "merchant-1",
                                                         .currency = "CNY",
                                                         .lines = ls,
                                                         .n = 1,
                                                         .timeout_s = 600});
    char id2[64];
    snprintf(id2, sizeof id2, "%s", o2->order_id);
    fx_order_free(o2);
    fx_assert_level(f.ic, "sku-c", 6, 4, 0);

    cm_rpc_status st;
    ck_assert_int_eq(
        fx_cancel(f.oc, "cx-1", id, FX_CANCEL(BUYER_REQUESTED), "changed mind", &o, &st), 0);
    ck_assert_int_eq(o->state, FX_ST(CANCELLED));
    ck_assert_int_eq(o->cancel_reason, FX_CANCEL(BUYER_REQUESTED));
    ck_assert_str_eq(o->cancel_note, "changed mind");
    ck_assert_ptr_nonnull(o->cancelled_at);
    ck_assert_ptr_null(o->payment);
    fx_order_free(o);
    /* the retry is the same cancel; the same key with another body is not */
    ck_assert_int_eq(
        fx_cancel(f.oc, "cx-1", id, FX_CANCEL(BUYER_REQUESTED), "changed mind", NULL, &st), 0);
    ck_assert_int_eq(fx_cancel(f.oc, "cx-1", id, FX_CANCEL(BUYER_REQUESTED), "other", NULL, &st),
                     GRPC_STATUS_ALREADY_EXISTS);
    ck_assert_str_eq(st.reason, "IDEMPOTENCY_KEY_REUSED");
    /* a second cancel: OK, the order unchanged */
    ck_assert_int_eq(
        fx_cancel(f.oc, "cx-2", id, FX_CANCEL(MERCHANT_REQUESTED), "no stock", &o, &st), 0);
    ck_assert_int_eq(o->cancel_reason, FX_CANCEL(BUYER_REQUESTED));
    ck_assert_str_eq(o->cancel_note, "changed mind");
    fx_order_free(o);
    /* the reason is the caller's to give, but not the server's own */
    ck_assert_int_eq(fx_cancel(f.oc, "cx-3", id2, FX_CANCEL(UNSPECIFIED), NULL, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "reason");
    ck_assert_int_eq(fx_cancel(f.oc, "cx-4", id2, FX_CANCEL(PAYMENT_TIMEOUT), NULL, NULL, &st),
                     GRPC_STATUS_INVALID_ARGUMENT);
    fx_ck_field(st, "reason");
    ck_assert_int_eq(fx_state_of(f.oc, id2), FX_ST(PENDING_PAYMENT));
    ck_assert_int_eq(fx_cancel(f.oc, "cx-5", "0190a8e0-0000-7000-8000-0000000000aa",
                               FX_CANCEL(BUYER_REQUESTED), NULL, NULL, &st),
                     GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.reason, "RESOURCE_NOT_FOUND");

    fx_wait_level(f.ic, "sku-c", 8, 2, 0);
    fx_settle(&f);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_CREATED, NULL), 1);
    ck_assert_int_eq(fx_ev_count(f.log, id, FX_EV_CANCELLED, NULL), 1);
    fx_event e;
    ck_assert_int_eq(fx_ev_decode(fx_ev_nth(f.log, id, FX_EV_CANCELLED, 0), &e), 0);
    ck_assert_int_eq(e.order->cancel_reason, FX_CANCEL(BUYER_REQUESTED));
    ck_assert_str_eq(e.order->cancel_note, "changed mind");
    fx_ev_free(&e);
    ck_assert_int_eq(fx_ev_count(f.log, id2, FX_EV_CANCELLED, NULL), 0);
    fx_stop(&f);
}
END_TEST

/* ---- per-tenant payment timeouts ---- */

/* the key columns of both schemas and their inboxes compare bytewise
 * (inventory's migration 0005, order's 0002, the inbox's 0002): every
 * text column that is part of an index, and none left on the default */
static void assert_keys_collate_c(const char *schema)
{
    const char *sql =
        "SELECT count(*) FILTER (WHERE coalesce(c.collation_name, '') <> 'C') * 1000 + count(*) "
        "FROM information_schema.columns c WHERE c.table_schema = current_schema() "
        "AND c.data_type = 'text' AND EXISTS (SELECT 1 FROM pg_index i "
        "  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
        "  WHERE i.indrelid = (quote_ident(c.table_schema) || '.' || quote_ident(c.table_name))"
        "::regclass AND a.attname = c.column_name)";
    long v = hs_sql_long(schema, sql);
    ck_assert_msg(v % 1000 >= 3, "%s: only %ld indexed text columns", schema, v % 1000);
    ck_assert_msg(v / 1000 == 0, "%s: %ld indexed text columns not COLLATE \"C\"", schema,
                  v / 1000);
}

START_TEST(tenant_settings_set_the_default_payment_timeout)
{
    const char *env[] = {"ORDER_PAYMENT_TIMEOUT_S=900", NULL};
    static fx f;
    fx_start(&f, env, 0);
    assert_keys_collate_c(f.ord_schema);
    assert_keys_collate_c(f.inv_schema);
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO tenant_settings (tenant_id, payment_timeout_s, flash_payment_timeout_s) "
             "VALUES ('%s', 120, 60) RETURNING 1",
             FX_TENANT);
    ck_assert_int_eq(hs_sql_long(f.ord_schema, sql), 1);
    fx_set_stock(f.ic, "s-ts", "sku-ts", 10);
    fx_set_stock_md(f.ic, "s-ts-other", "sku-ts", 10, fx_md_other);
    cm_rpc_status st;
    fx_line l[] = {FX_L("sku-ts", 1, 100)};
    /* the tenant's row */
    fx_order_spec s = fx_spec("req-ts-1", l, 1);
    fx_order *o = fx_must_create(f.oc, &s);
    long long dl = fx_ts_ms(o->payment_deadline) - fx_ts_ms(o->created_at);
    ck_assert_msg(dl >= 119000 && dl <= 121000, "tenant default: %lld ms (expected 120 s)", dl);
    fx_order_free(o);
    /* a tenant without a row: the service default */
    s.rid = "req-ts-2";
    ck_assert_int_eq(fx_create_md(f.oc, &s, &o, &st, fx_md_other, 1), 0);
    dl = fx_ts_ms(o->payment_deadline) - fx_ts_ms(o->created_at);
    ck_assert_msg(dl >= 899000 && dl <= 901000, "service default: %lld ms (expected 900 s)", dl);
    fx_order_free(o);
    /* the request's own timeout wins over both */
    s.rid = "req-ts-3";
    s.timeout_s = 300;
    o = fx_must_create(f.oc, &s);
    dl = fx_ts_ms(o->payment_deadline) - fx_ts_ms(o->created_at);
    ck_assert_msg(dl >= 299000 && dl <= 301000, "request: %lld ms (expected 300 s)", dl);
    fx_order_free(o);
    fx_stop(&f);
}
END_TEST

/* ---- illegal transitions ---- */

static void refused(int code, const cm_rpc_status *st, const char *what)
{
    ck_assert_msg(code == GRPC_STATUS_FAILED_PRECONDITION &&
                      strcmp(st->reason, "ILLEGAL_STATE_TRANSITION") == 0,
                  "%s: code %d reason %s (%s), expected FAILED_PRECONDITION "
                  "ILLEGAL_STATE_TRANSITION",
                  what, code, st->reason, st->message);
}

START_TEST(illegal_transitions_are_failed_precondition)
{
    static fx f;
    fx_start(&f, NULL, 0);
    fx_set_stock(f.ic, "s-i", "sku-i", 100);
    fx_line ls[] = {FX_L("sku-i", 1, 300)};
    char id[3][64];
    fx_create_pending(f.oc, "req-i", ls, 3, id);
    cm_rpc_status st;
    /* pending: not shippable, not completable, not refundable */
    refused(fx_ship(f.oc, "x-1", id[0], NULL, NULL, NULL, &st), &st, "ship unpaid");
    refused(fx_complete(f.oc, "x-2", id[0], NULL, &st), &st, "complete unpaid");
    fx_refund_spec full = {.refund_id = "rf-x", .order_id = id[0], .scope = FX_SCOPE(FULL)};
    refused(fx_refund_order(f.oc, &full, NULL, &st), &st, "refund unpaid");
    ck_assert_int_eq(fx_state_of(f.oc, id[0]), FX_ST(PENDING_PAYMENT));

    /* paid: not cancellable, not completable before shipping */
    fx_order *o = fx_must_get(f.oc, id[1]);
    fx_must_pay(f.oc, o, "pay-i-1");
    fx_order_free(o);
    refused(fx_cancel(f.oc, "x-3", id[1], FX_CANCEL(BUYER_REQUESTED), NULL, NULL, &st), &st,
            "cancel paid");
    refused(fx_complete(f.oc, "x-4", id[1], NULL, &st), &st, "complete unshipped");
    ck_assert_int_eq(fx_state_of(f.oc, id[1]), FX_ST(PAID));
    /* shipped: not twice (another request), not cancellable */
    ck_assert_int_eq(fx_ship(f.oc, "x-5", id[1], "ems", "1", NULL, &st), 0);
    refused(fx_ship(f.oc, "x-6", id[1], "ems", "2", NULL, &st), &st, "ship twice");
    refused(fx_cancel(f.oc, "x-7", id[1], FX_CANCEL(BUYER_REQUESTED), NULL, NULL, &st), &st,
            "cancel shipped");
    /* completed: not twice */
    ck_assert_int_eq(fx_complete(f.oc, "x-8", id[1], NULL, &st), 0);
    refused(fx_complete(f.oc, "x-9", id[1], NULL, &st), &st, "complete twice");
    refused(fx_cancel(f.oc, "x-10", id[1], FX_CANCEL(BUYER_REQUESTED), NULL, NULL, &st), &st,
            "cancel completed");
    ck_assert_int_eq(fx_state_of(f.oc, id[1]), FX_ST(COMPLETED));

    /* cancelled: final */
    ck_assert_int_eq(fx_cancel(f.oc, "x-11", id[2], FX_CANCEL(RISK_CONTROL), "fraud", NULL, &st),
                     0);
    refused(fx_ship(f.oc, "x-12", id[2], NULL, NULL, NULL, &st), &st, "ship cancelled");
    refused(fx_complete(f.oc, "x-13", id[2], NULL, &st), &st, "complete cancelled");
    full.refund_id = "rf-x2";
    full.order_id = id[2];
    refused(fx_refund_order(f.oc, &full, NULL, &st), &st, "refund cancelled");
    fx_pay_spec p = {.payment_id = "pay-i-2", .order_id = id[2], .amount = 300};
    refused(fx_mark_paid(f.oc, &p, NULL, &st), &st, "pay cancelled");
    ck_assert_int_eq(fx_state_of(f.oc, id[2]), FX_ST(CANCELLED));

    /* unknown orders: NOT_FOUND everywhere */
    const char *nf = "0190a8e0-0000-7000-8000-0000000000ee";
    ck_assert_int_eq(fx_ship(f.oc, "x-14", nf, NULL, NULL, NULL, &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.reason, "RESOURCE_NOT_FOUND");
    ck_assert_int_eq(fx_complete(f.oc, "x-15", nf, NULL, &st), GRPC_STATUS_NOT_FOUND);
    ck_assert_str_eq(st.reason, "RESOURCE_NOT_FOUND");

    /* the refused calls changed nothing and published nothing */
    fx_settle(&f);
    ck_assert_int_eq(fx_ev_count(f.log, id[0], FX_EV_CREATED, NULL), 1);
    for (int i = 0; i < 3; i++) {
        int n = 0;
        for (size_t k = 0; k < hs_topic_count(f.log); k++)
            n += strcmp(hs_topic_at(f.log, k)->key, id[i]) == 0;
        ck_assert_int_eq(n, i == 0 ? 1 : i == 1 ? 4 : 2);
    }
    fx_stop(&f);
}
END_TEST

int main(void)
{
    const TTest *const tests[] = {
        saga_create_pay_ship_complete,
        saga_payment_timeout_releases_stock,
        saga_cancel_releases_stock,
        tenant_settings_set_the_default_payment_timeout,
        illegal_transitions_are_failed_precondition,
    };
    return fx_run("order_saga", tests, sizeof tests / sizeof tests[0]);
}
