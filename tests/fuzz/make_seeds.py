#!/usr/bin/env python3
"""writes the seed corpus of every harness into tests/fuzz/corpus/<harness>/
(committed; run again after a proto or harness input format changes):

  tests/fuzz/make_seeds.py build-fuzz/gen/python

the protobuf seeds are serialised with the generated python modules, so
they are real encodings of the current protos. each file is one input, in
the harness's format (tests/fuzz/README.md)."""
import base64
import hashlib
import hmac
import os
import sys

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else "build-fuzz/gen/python")
from google.protobuf import message_factory, text_format  # noqa: E402

from commerce.commission.v1 import commission_service_pb2 as cms  # noqa: E402
from commerce.events.v1 import commission_events_pb2 as cev  # noqa: E402
from commerce.events.v1 import order_events_pb2 as oev  # noqa: E402
from commerce.inventory.v1 import inventory_service_pb2 as inv  # noqa: E402
from commerce.order.v1 import order_service_pb2 as ords  # noqa: E402
from commerce.settlement.v1 import settlement_service_pb2 as stl  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
corpus = os.path.join(here, "corpus")
ORDER_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def write(harness, name, data):
    d = os.path.join(corpus, harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def rpc(harness, module, service, requests):
    sd = module.DESCRIPTOR.services_by_name[service]
    methods = list(sd.methods)
    for i, m in enumerate(methods):
        # every method with an empty request, so each is reachable
        write(harness, "%02d-%s-empty" % (i, m.name), bytes([i]))
    names = set()
    for method, text in requests:
        i = [m.name for m in methods].index(method)
        # the request's class, wherever its proto file defines it
        msg = message_factory.MessageFactory().GetPrototype(methods[i].input_type)()
        text_format.Parse(text, msg)
        name = "%02d-%s-%d" % (i, method, len(text))
        while name in names:  # two requests of one method with texts of one length
            name += "b"
        names.add(name)
        write(harness, name, bytes([i]) + msg.SerializeToString())


def fnv(canonical):
    """cm_page_filters: the 64-bit FNV-1a of a listing's canonical filters"""
    h = 14695981039346656037
    for c in canonical.encode():
        h = ((h ^ c) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def tok(kind, canonical, position):
    """a next_page_token as cm_page_token writes it for these filters"""
    return ("%s.%016x.%s" % (kind, fnv(canonical), position)).encode().hex()


PAYOUT_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a60"
TS = "{ seconds: 1764000000 }"
TS2 = "{ seconds: 1764086400 }"
FUTURE = "{ seconds: 4102444800 }"
STATEMENT = ("transaction_time,provider_transaction_id,order_id,kind,currency,amount,fee,refund_id\n"
             "2026-12-01 10:00:00,tx-1,%s,PAYMENT,CNY,39.98,0.24,\n"
             "2026-12-01 11:00:00,tx-2,%s,REFUND,CNY,10.00,0.00,rf-1\n" % (ORDER_ID, ORDER_ID))


def rpcs():
    rpc("rpc_order", ords, "OrderService", [
        ("CreateOrder", 'request_id: "r1" buyer_id: "b1" merchant_id: "m1" currency: "CNY" '
                        'lines { sku: "sku-1" quantity: 2 unit_price { amount_minor: 1999 currency: "CNY" } } '
                        'lines { sku: "sku-2" quantity: 1 unit_price { amount_minor: 500 currency: "CNY" } } '
                        'payment_timeout { seconds: 900 }'),
        ("CreateOrder", 'request_id: "r2" buyer_id: "b1" merchant_id: "m1" channel_id: "c1" currency: "JPY" '
                        'lines { sku: "s" quantity: 1 unit_price { amount_minor: 300 currency: "JPY" } } '
                        'external_ref: "ext-1"'),
        ("GetOrder", 'order_id: "%s"' % ORDER_ID),
        ("RefundOrder", 'refund_id: "rf-1" order_id: "%s" scope: 1 reason: "damaged"' % ORDER_ID),
        ("RefundOrder", 'refund_id: "rf-2" order_id: "%s" scope: 2 lines { sku: "sku-1" quantity: 1 } '
                        'lines { sku: "sku-2" quantity: 2 }' % ORDER_ID),
        ("RefundOrder", 'refund_id: "rf-3" order_id: "%s" scope: 3 '
                        'amount { amount_minor: 500 currency: "CNY" }' % ORDER_ID),
        ("MarkPaid", 'payment_id: "pay-1" order_id: "%s" amount { amount_minor: 3998 currency: "CNY" } '
                     'provider: "alipay" provider_reference: "2026120122001" paid_at %s' % (ORDER_ID, TS)),
        ("CancelOrder", 'request_id: "c1" order_id: "%s" reason: 1 note: "changed my mind"' % ORDER_ID),
        ("ShipOrder", 'request_id: "s1" order_id: "%s" carrier: "SF" tracking_number: "SF123" '
                      'shipped_at %s' % (ORDER_ID, TS)),
        ("CompleteOrder", 'request_id: "d1" order_id: "%s" completed_at %s' % (ORDER_ID, TS)),
        ("PutTenantSettings", 'request_id: "t1" actor: "ops" reason: "flash week" expected_revision: 1 '
                              'settings { payment_timeout { seconds: 1800 } '
                              'flash_payment_timeout { seconds: 300 } auto_complete_after { seconds: 864000 } }'),
        ("QueryMargin", 'sku: "sku-1" paid { start_at %s end_at %s }' % (TS, TS2)),
        ("ListOrders", 'buyer_id: "b1" states: 2 states: 1 created { start_at %s end_at %s } '
                       'paid { start_at %s } page_size: 20' % (TS, TS2, TS)),
        ("ListOrders", 'buyer_id: "b1" page_token: "%s"'
                       % tok("o", "b=b1\nm=\nc=\nf=0\nt=0\ns=", "1764000000000." + ORDER_ID)),
    ])
    rpc("rpc_inventory", inv, "InventoryService", [
        ("Reserve", 'order_id: "o1" buyer_id: "b1" lines { sku: "sku-1" quantity: 2 } '
                    'lines { sku: "sku-2" quantity: 1 } ttl { seconds: 600 }'),
        ("Reserve", 'order_id: "o2" lines { sku: "a" quantity: 1 }'),
        ("SetStock", 'request_id: "r1" sku: "sku-1" available: 100 reason: "count" actor: "ops"'),
        ("AdjustStock", 'request_id: "r2" sku: "sku-1" delta: -3 reason: "damaged" actor: "ops" '
                        'expected_version: 4'),
        ("SetCost", 'request_id: "r3" sku: "sku-1" unit_cost { amount_minor: 1200 currency: "CNY" } '
                    'reason: "supplier" actor: "ops" expected_cost_version: 1'),
        ("Confirm", 'order_id: "o1"'),
        ("Release", 'order_id: "o1"'),
        ("ConfigureFlashSale", 'request_id: "r4" sku: "sku-1" starts_at %s ends_at %s sale_stock: 100 '
                               'per_buyer_limit: 1 actor: "ops"' % (TS, FUTURE)),
        ("ConfigureFlashSale", 'request_id: "r5" flash_sale_id: "fs-1" expected_version: 2 sku: "sku-1" '
                               'starts_at %s ends_at %s sale_stock: 50 per_buyer_limit: 2 actor: "ops"'
                               % (TS, FUTURE)),
        # refused: the window ended (the one check against the clock)
        ("ConfigureFlashSale", 'request_id: "r6" sku: "sku-1" starts_at %s ends_at %s sale_stock: 1 '
                               'per_buyer_limit: 1 actor: "ops"' % (TS, TS2)),
        ("BatchGetStock", 'skus: "sku-1" skus: "sku-2"'),
        ("CheckInvariants", 'skus: "sku-1"'),
        ("ListStockChanges", 'sku: "sku-1" kinds: 1 occurred { start_at %s end_at %s } page_size: 5'
                             % (TS, TS2)),
        ("ListStockChanges", 'sku: "sku-1" kinds: 1 page_token: "%s"'
                             % tok("c", "s=sku-1;o=;k=1,;f=0:0;t=0:0", "12345")),
        ("ListFlashSales", 'sku: "sku-1" states: 2 page_token: "%s"' % tok("f", "s=sku-1;st=2,", "fs-1")),
    ])
    rpc("rpc_settlement", stl, "SettlementService", [
        ("PutSplitRule", 'request_id: "r1" rule { merchant_id: "m1" currency: "CNY" '
                         'receivers { type: 1 receiver_id: "platform" share_bps: 1000 } '
                         'receivers { type: 2 receiver_id: "m1" share_bps: 9000 settle_delay_days: 7 } '
                         'fee { bps: 60 } merchant_settle_delay_days: 1 }'),
        ("GetSplitRule", 'merchant_id: "m1" currency: "CNY" version: 2'),
        ("PutTenantSettings", 'request_id: "r2" expected_revision: 1 settings { time_zone: "Asia/Shanghai" '
                              'max_split_bps: 3000 run_at: "02:30" }'),
        ("RunSettlement", 'business_date { year: 2026 month: 2 day: 28 }'),
        ("ReportPayoutResult", 'payout_id: "%s" result: 2 provider_reference: "bank-1"' % PAYOUT_ID),
        ("ReportPayoutResult", 'payout_id: "%s" result: 3 failure_reason: "account closed"' % PAYOUT_ID),
        ("ListSplitRuleVersions", 'merchant_id: "m1" currency: "CNY" page_token: "%s"'
                                  % tok("r", "m1|CNY", "3")),
        ("ListAccounts", 'party { type: 1 id: "m1" } currency: "CNY" page_size: 10'),
        ("ListAccounts", 'page_token: "%s"' % tok("a", "0|\x01|", "42")),
        ("ListJournalEntries", 'order_id: "%s" posted { start_at %s end_at %s }' % (ORDER_ID, TS, TS2)),
        ("ListJournalEntries", 'account_id: 7 page_token: "%s"' % tok("e", "|7|0|0", "100")),
        ("ListSettlementRuns", 'page_token: "%s"' % tok("u", "runs", "2026-12-01")),
        ("ListPayouts", 'state: 2 account_id: 7 page_token: "%s"'
                        % tok("p", "2|7", "1764000000000." + PAYOUT_ID)),
        ("GetAccountStatement", 'account_id: 7 period { start_at %s end_at %s } page_token: "%s"'
                                % (TS, TS2, tok("s", "7|1764000000000|1764086400000", "100.2"))),
        ("ImportStatement", 'request_id: "stmt-2026-12-01" bill_date { year: 2026 month: 12 day: 1 } '
                            'csv: "%s"' % STATEMENT.replace("\n", "\\n")),
        ("GetReconciliation", 'date { year: 2024 month: 2 day: 29 } currency: "CNY"'),
        ("ListReconciliationDifferences", 'date { year: 2026 month: 12 day: 1 } currency: "CNY" page_size: 50'),
        ("ListReconciliationDifferences", 'date { year: 2026 month: 12 day: 1 } currency: "CNY" '
                                          'page_token: "%s"' % tok("x", "2026-12-01|CNY", ORDER_ID + "."
                                                                   + "d41d8cd98f00b204e9800998ecf8427e.1")),
    ])
    rpc("rpc_commission", cms, "CommissionService", [
        ("PutTierSchedule", 'request_id: "r1" schedule { tier_schedule_id: "std" name: "standard" '
                            'currency: "CNY" period: 2 time_zone: "Asia/Shanghai" '
                            'tiers { from_sales { amount_minor: 0 currency: "CNY" } rate_bps: 500 } '
                            'tiers { from_sales { amount_minor: 1000000 currency: "CNY" } rate_bps: 800 } '
                            'mode: 1 channel_types: 1 payer: 1 min_payout_minor: 100 }'),
        ("PutChannel", 'request_id: "r2" channel { channel_id: "c2" name: "Kol two" type: 1 state: 1 '
                       'parent_channel_id: "c1" parent_override_bps: 500 tier_schedule_id: "std" '
                       'partner_id: "p1" }'),
        ("SettleCommissions", 'request_id: "r3" channel_id: "c1" currency: "CNY" period_start %s' % TS),
        ("ReportPayoutResult", 'payout_id: "%s" result: 2 provider_reference: "bank-1"' % PAYOUT_ID),
        ("ClosePeriod", 'channel_id: "c1" tier_schedule_id: "std" period_start %s' % TS),
        ("PutTenantSettings", 'request_id: "r4" settings { after_sale_window { seconds: 604800 } }'),
        ("GetChannelSummary", 'channel_id: "c1" at %s' % TS),
        ("ListChannels", 'states: 1 tier_schedule_id: "std" page_token: "%s"' % tok("c", "2|std", "c1")),
        ("ListCommissions", 'channel_id: "c1" states: 1 accrued { start_at %s end_at %s } page_token: "%s"'
                            % (TS, TS2, tok("m", "c1|2||1764000000000|1764086400000",
                                            "1764000000000." + ORDER_ID))),
        ("ListAdjustments", 'channel_id: "c1" page_token: "%s"' % tok("j", "c1", "1764000000000." + ORDER_ID)),
        ("ListPayouts", 'channel_id: "c1" states: 1 page_token: "%s"' % tok("p", "c1|2", PAYOUT_ID)),
        ("PutPartner", 'request_id: "r5" expected_revision: 1 partner { partner_id: "p1" name: "Partner one" '
                       'channel_ids: "c1" channel_ids: "c2" kafka { enabled: true } '
                       'webhook { enabled: true url: "https://partner.example.com/hooks/commerce" } }'),
        ("PutPartner", 'request_id: "r6" partner { partner_id: "p2" name: "Kafka only" kafka { enabled: true } }'),
        ("GetPartner", 'partner_id: "p1"'),
        ("ListPartners", 'page_size: 20 page_token: "%s"' % tok("p", "partners", "p1")),
        ("RotateWebhookSecret", 'request_id: "r7" partner_id: "p1" previous_secret_ttl { seconds: 3600 }'),
        ("ListWebhookDeliveries", 'partner_id: "p1" pending_only: true page_token: "%s"'
                                  % tok("w", "p1|1", "42")),
        ("RedeliverWebhookEvent", 'request_id: "r8" partner_id: "p1" event_id: "%s"' % ORDER_ID),
        ("ReplayPartnerEvents", 'request_id: "r9" partner_id: "p1" channel_id: "c1" target: 2 '
                                'range { start_at %s end_at %s }' % (TS, TS2)),
    ])


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


SECRET = b"fuzz-secret-fuzz-secret-fuzz-secret-0123"


def jwt():
    header = b'{"alg":"HS256","typ":"JWT"}'
    claims = [
        b'{"tid":"acme","sub":"user-1","roles":["admin","operator"],"exp":4102444800}',
        b'{"tid":"acme","roles":"admin merchant","exp":4102444800,"nbf":1,"iat":1}',
        b'{"tid":"other","sub":"s","exp":4102444800,"aud":["a","b"],"iss":"i"}',
        b'{"tid":"acme","exp":1}',
    ]
    for i, c in enumerate(claims):
        # mode 1: header and claims, signed by the harness
        write("jwt", "signed-%d" % i, b"\x01" + header + b"\n" + c)
        write("jwt", "signed-tenant-%d" % i, b"\x03" + header + b"\n" + c)
        # mode 0: the whole token, signed here
        t = b64(header) + b"." + b64(c)
        sig = b64(hmac.new(SECRET, t, hashlib.sha256).digest())
        write("jwt", "token-%d" % i, b"\x00" + t + b"." + sig)
    write("jwt", "alg-none", b"\x00" + b64(b'{"alg":"none"}') + b"." + b64(claims[0]) + b".")
    write("jwt", "rs256", b"\x00" + b64(b'{"alg":"RS256"}') + b"." + b64(claims[0]) + b".c2ln")


def config():
    write("config", "defaults", "")
    write("config", "all", "GRPC_LISTEN=:7001\nADMIN_LISTEN=127.0.0.1:7002\nWORKERS=4\n"
          "LOG_LEVEL=debug\nPG_DSN=postgresql://u@127.0.0.1:5432/db?sslmode=disable\n"
          "KAFKA_BROKERS=a:9092,b:9092\nGRPC_MAX_MESSAGE_BYTES=1048576\nGRPC_REFLECTION=on\n"
          "DRAIN_GRACE_SECONDS=5\nOUTBOX_RETENTION_SECONDS=60\nORDER_SCHEMA=orders\n"
          "FUZZ_N=12\nFUZZ_SWITCH=off\nFUZZ_TEXT=hello\nINVENTORY_TARGET=dns:///inv:50052\n")
    write("config", "auth", "AUTH_MODE=required\nJWT_HS256_SECRET=0123456789abcdef0123456789abcdef\n"
          "JWT_ISSUER=iss\nJWT_AUDIENCE=aud\nJWT_LEEWAY_SECONDS=10\n")
    write("config", "ipv6", "GRPC_LISTEN=[::1]:7001\nADMIN_LISTEN=[::]:7002\n")
    write("config", "tls", "TLS_CERT_FILE=/etc/hostname\nTLS_KEY_FILE=/etc/hostname\n"
          "INVENTORY_TLS_CA_FILE=/etc/hostname\n")
    write("config", "short-secret", "AUTH_MODE=required\nJWT_HS256_SECRET=shortsecret\n")


def field(b):
    return bytes([len(b)]) + b if b is not None else b"\xff"


def event(flags, headers, key, payload):
    out = bytes([flags])
    for h in headers:
        out += field(h)
    return out + field(key) + payload


def events():
    paid = oev.OrderPaid()
    text_format.Parse('event_id: "e1" tenant_id: "acme" order_id: "%s" '
                      'order { merchant_id: "m1" channel_id: "c1" '
                      'total_amount { amount_minor: 3998 currency: "CNY" } '
                      'payment { amount { amount_minor: 3998 currency: "CNY" } '
                      'paid_at { seconds: 1764000000 } } }' % ORDER_ID, paid)
    p = paid.SerializeToString()
    hdr = [b"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c", b"commerce.events.v1.OrderPaid",
           b"/commerce/order", b"2026-12-01T00:00:00.000Z", b"application/protobuf",
           b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", b"acme"]
    write("events", "binary-paid", event(0, hdr, ORDER_ID.encode(), p))
    nochan = oev.OrderPaid()
    nochan.CopyFrom(paid)
    nochan.order.channel_id = ""
    write("events", "binary-paid-no-channel", event(0, hdr, b"k", nochan.SerializeToString()))
    write("events", "binary-other", event(0, hdr[:1] + [b"commerce.events.v1.OrderCreated"] + hdr[2:],
                                          b"k", b""))
    js = ('{"specversion":"1.0","id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d",'
          '"source":"/commerce/commission","type":"com.commerce.commission.v1.accrued",'
          '"time":"2026-12-01T00:00:00.000Z","datacontenttype":"application/json",'
          '"tenantid":"acme","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",'
          '"data":{"a":1}}').encode()
    write("events", "structured", event(1, [None] * 7, b"k", js))
    write("events", "structured-with-header",
          event(0, [None, None, None, None, b"application/cloudevents+json", None, None], b"k", js))
    write("events", "typed-paid", event(2, [b"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5e"] + [None] * 6, b"k", p))
    # every other type a consumer acts on, binary mode, ce_type from flags bits 1-3
    eid = [b"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a61"]
    refunded = oev.OrderRefunded()
    text_format.Parse('event_id: "e2" tenant_id: "acme" order_id: "%s" occurred_at %s '
                      'order { merchant_id: "m1" channel_id: "c1" } '
                      'refund { refund_id: "rf-1" amount { amount_minor: 500 currency: "CNY" } }'
                      % (ORDER_ID, TS), refunded)
    write("events", "typed-refunded", event(4, eid + [None] * 6, b"k", refunded.SerializeToString()))
    completed = oev.OrderCompleted()
    text_format.Parse('event_id: "e3" tenant_id: "acme" order_id: "%s" occurred_at %s '
                      'order { merchant_id: "m1" channel_id: "c1" completed_at %s }'
                      % (ORDER_ID, TS2, TS), completed)
    write("events", "typed-completed", event(6, eid + [None] * 6, b"k", completed.SerializeToString()))
    cancelled = oev.OrderCancelled()
    text_format.Parse('event_id: "e4" order_id: "%s"' % ORDER_ID, cancelled)
    write("events", "typed-cancelled-tenant-header",
          event(8, eid + [None] * 5 + [b"acme"], b"k", cancelled.SerializeToString()))
    accrued = cev.CommissionAccrued()
    text_format.Parse('event_id: "e5" tenant_id: "acme" channel_id: "c1" occurred_at %s '
                      'commission { commission_id: "%s" channel_id: "c1" order_id: "%s" merchant_id: "m1" '
                      'amount { amount_minor: 200 currency: "CNY" } }' % (TS, PAYOUT_ID, ORDER_ID), accrued)
    write("events", "typed-accrued", event(10, eid + [None] * 6, b"k", accrued.SerializeToString()))
    clawed = cev.CommissionClawedBack()
    clawed.CopyFrom(cev.CommissionClawedBack(event_id="e6", tenant_id="acme", channel_id="c1",
                                             commission=accrued.commission, refund_id="rf-1"))
    clawed.clawback_amount.amount_minor = 25
    clawed.clawback_amount.currency = "CNY"
    write("events", "typed-clawed-back", event(12, eid + [None] * 6, b"k", clawed.SerializeToString()))
    adjusted = cev.CommissionAdjusted()
    text_format.Parse('event_id: "e7" tenant_id: "acme" channel_id: "c1" '
                      'adjustment { adjustment_id: "%s" channel_id: "c1" kind: 1 order_id: "%s" '
                      'amount { amount_minor: -40 currency: "CNY" } }' % (PAYOUT_ID, ORDER_ID), adjusted)
    write("events", "typed-adjusted", event(14, eid + [None] * 6, b"k", adjusted.SerializeToString()))
    closed = cev.CommissionAdjusted()
    text_format.Parse('event_id: "e8" tenant_id: "acme" channel_id: "c1" '
                      'adjustment { adjustment_id: "%s" channel_id: "c1" kind: 4 '
                      'amount { amount_minor: 90 currency: "CNY" } }' % PAYOUT_ID, closed)
    write("events", "typed-adjusted-period-close", event(14, eid + [None] * 6, b"k", closed.SerializeToString()))


def text():
    write("text", "utf8", b"\x00\x10" + "héllo wörld 中文 \u2028 emoji \U0001F600".encode())
    write("text", "utf8-bad", b"\x00\x04\xc3\x28\xed\xa0\x80\xf4\x90\x80\x80abc")
    write("text", "uuid", b"\x01\x00" + ORDER_ID.encode())
    write("text", "uuid-upper", b"\x01\x00" + ORDER_ID.upper().encode())
    # page tokens as cm_page_token writes them for the harness's kind and filters
    for sel in (0, 5):
        kind = chr(ord("a") + sel % 4)
        filters = (sel * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        raw = "%s.%016x.%s" % (kind, filters, "2026-12-01:" + ORDER_ID)
        write("text", "page-%d" % sel, bytes([2, sel]) + raw.encode().hex().encode())
    m = b"\x03\x00"
    for v in (1999, -5, 2**62, 10000, 3, 1, 2, 5):
        m += (v & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
    write("text", "money", m[:2 + 24] + b"\x02" + m[2 + 24:])


def csv():
    head = "transaction_time,provider_transaction_id,order_id,kind,currency,amount,fee,refund_id\n"
    write("recon_csv", "header-only", head)
    write("recon_csv", "lines", head +
          "2026-12-01 10:00:00,tx-1,%s,PAYMENT,CNY,39.98,0.24,\n" % ORDER_ID +
          "2026-12-01 11:00:00,tx-2,%s,REFUND,CNY,10.00,0.00,rf-1\n" % ORDER_ID +
          "2026-12-01 12:00:00,tx-3,%s,PAYMENT,JPY,100,0,\r\n" % ORDER_ID +
          '2026-12-01 12:00:00,"tx-4",%s,PAYMENT,KWD,1.234,0.001,\n' % ORDER_ID)
    write("recon_csv", "bad-date", head + "2026-02-30 10:00:00,tx-1,%s,PAYMENT,CNY,1.00,0.00,\n" % ORDER_ID)


def webhook():
    write("webhook_url", "https", b"\x00https://partner.example.com/hooks/commerce?x=1")
    write("webhook_url", "http-allowed", b"\x01http://partner.example.com:8080/h")
    write("webhook_url", "ipv4-cidr", b"\x01" + b"10.0.0.0/8,192.168.1.0/24\nhttp://10.1.2.3/h")
    write("webhook_url", "ipv6-cidr", b"\x00" + b"fd00::/8\nhttps://[fd00::1]:8443/h")
    write("webhook_url", "user", b"\x00https://u:p@example.com/")
    write("webhook_url", "localhost", b"\x01" + b"127.0.0.0/8\nhttp://localhost:9000/h#frag")


def admin():
    write("admin_http", "metrics", b"\x00GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    write("admin_http", "pipelined", b"\x07GET /healthz HTTP/1.1\r\n\r\nHEAD /readyz HTTP/1.1\r\n\r\n"
                                     b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                                     b"GET /nope HTTP/1.0\r\n\r\n")
    write("admin_http", "absolute", b"\x00GET http://h:9091/readyz?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n")
    write("admin_http", "chunked", b"\x03POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"3\r\nabc\r\n0\r\n\r\n")
    write("admin_http", "upgrade", b"\x00GET /healthz HTTP/1.1\r\nUpgrade: websocket\r\n"
                                   b"Connection: Upgrade\r\n\r\n")


if __name__ == "__main__":
    rpcs()
    jwt()
    config()
    events()
    text()
    csv()
    webhook()
    admin()
