#!/usr/bin/python3
"""Isolation proven (issue 17): every RPC of every service, called with
another tenant's token (and another merchant's or channel's, and without
the role it needs), can neither read, change nor detect tenant A's data.

Design
  The four services run with AUTH_MODE=required and an HS256 secret on
  127.0.0.1, on this run's own schemas and topics (the repo's postgres and
  broker: PG_DSN, KAFKA_BROKERS). Tokens are minted here (hmac, claims tid,
  sub, roles, exp, merchant_id / channel_id).

  Seed   tenant A and tenant B get the same kind of data, each under names
         of its own (every name A chooses starts with A's tenant id): SKUs
         with stock and cost, a flash sale, a reservation, orders paid,
         shipped, completed, refunded and pending over two merchants and two
         channels, a split rule, settlement payouts, a run and an imported
         statement, a tier schedule, channels, commissions, a clawback
         adjustment, a commission payout, a partner with a webhook (served
         here) and its deliveries.
  Table  the RPCs are enumerated from the generated descriptors (the _pb2
         modules, enumerate_rpcs) and checked against `commerce-<svc>
         --rpc-markdown` (the roles each RPC allows). cases() holds one row
         per RPC: a request aimed at A's data and what tenant B may see:
           hidden  NOT_FOUND (existence must not leak)
           list    OK, and nothing of A's in the answer
           local   a create/put that is B's own by construction (A's names,
                   A's request ids reused): any of `codes`, nothing of A's
                   in the answer beyond what B itself sent
         A missing row fails the test, so a new RPC cannot be left out.
  Aimed  each get and list row is first read with A's own token and must
         reach A's data: a NOT_FOUND or an empty list then means something.
  Leaks  "nothing of A's": no token starting with A's tenant id and none of
         the server-made ids A's seed saw (order, payout, run, flash sale,
         delivery ids...) in the answer's text, its status message or its
         details; numeric ids (accounts, journal entries) by field.
  Matrix for every row: B's admin token (the expected outcome); B's token
         with x-tenant-id A (PERMISSION_DENIED / TENANT_MISMATCH or
         UNAUTHENTICATED, and nothing of A's); A's
         token holding none of the RPC's roles (PERMISSION_DENIED /
         ROLE_REQUIRED); a third, empty tenant's token holding each allowed
         role alone (not refused for its role). Rows of scoped_cases() run,
         for RPCs whose roles list merchant or channel, merchant M2's token
         against merchant M1's rows, channel C2's against C1's (NOT_FOUND,
         left out of lists); a scoped RPC without such a row fails the test.
         B's own writes come last: they create B rows under A's names.
  Intact A's state is read back with A's token before and after the matrix
         (stock, reservations, costs, orders, settings, ledger, payouts,
         runs, channels, commissions, partner config, deliveries) and must
         be identical.

  tests/e2e/test_isolation.py        (exit 0 when every check holds)
Environment: PG_DSN, KAFKA_BROKERS, COMMERCE_BIN (the build's bin/),
COMMERCE_PY_GEN (its gen/python).
"""
import base64
import datetime
import hashlib
import hmac
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.environ.get("COMMERCE_PY_GEN", os.path.join(ROOT, "build", "gen", "python")))
from commerce.commission.v1 import commission_pb2 as cms  # noqa: E402
from commerce.commission.v1 import commission_service_pb2 as cmss  # noqa: E402
from commerce.common.v1 import date_pb2, money_pb2, time_range_pb2  # noqa: E402
from commerce.inventory.v1 import inventory_service_pb2 as invs  # noqa: E402
from commerce.order.v1 import order_pb2 as ordm  # noqa: E402
from commerce.order.v1 import order_service_pb2 as ords  # noqa: E402
from commerce.settlement.v1 import reconciliation_pb2 as rec  # noqa: E402
from commerce.settlement.v1 import settlement_pb2 as stl  # noqa: E402
from commerce.settlement.v1 import settlement_service_pb2 as stls  # noqa: E402
from google.protobuf import duration_pb2, symbol_database, text_format, timestamp_pb2  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402

RUN = f"{time.strftime('%H%M%S')}{os.getpid() % 10000}"
SECRET = "isolation-matrix-test-secret-" + RUN + "-0123456789abcdef"
TA, TB, TC = f"iso-a-{RUN}", f"iso-b-{RUN}", f"iso-c-{RUN}"
SERVICES = {  # service name -> (binary, pb2 module of the service)
    "commerce.order.v1.OrderService": ("order", ords),
    "commerce.inventory.v1.InventoryService": ("inventory", invs),
    "commerce.settlement.v1.SettlementService": ("settlement", stls),
    "commerce.commission.v1.CommissionService": ("commission", cmss),
}
UNSCOPED_ROLES = ["admin", "service", "reader"]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}", flush=True)


def money(minor):
    return money_pb2.Money(amount_minor=minor, currency="CNY")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(tid, sub, roles, merchant=None, channel=None):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"tid": tid, "sub": sub, "roles": roles, "exp": int(time.time()) + 3600}
    if merchant:
        claims["merchant_id"] = merchant
    if channel:
        claims["channel_id"] = channel
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


# ---- the services ----

class Service:
    def __init__(self, name, env):
        self.name, self.env = name, env
        self.grpc, self.admin = free_port(), free_port()
        self.log = open(f"/tmp/commerce-iso-{RUN}-{name}.log", "ab")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc}")
        self.proc = None

    def start(self):
        env = dict(os.environ, GRPC_LISTEN=f"127.0.0.1:{self.grpc}",
                   ADMIN_LISTEN=f"127.0.0.1:{self.admin}", LOG_LEVEL="warn", AUTH_MODE="required",
                   JWT_HS256_SECRET=SECRET, **self.env)
        self.proc = subprocess.Popen([os.path.join(BIN, f"commerce-{self.name}")], env=env,
                                     stdout=self.log, stderr=self.log)

    def ready(self, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"isolation: commerce-{self.name} exited ({self.log.name})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"isolation: commerce-{self.name} not ready ({self.log.name})")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return -9
        return 0


SVCS = {}


class Outcome:
    """one call's answer: code (a grpc.StatusCode), response or None, the
    status message, the details' reason and everything printable of it"""

    def __init__(self, code, resp=None, message="", reason="", text=""):
        self.code, self.resp, self.message, self.reason, self.text = (code, resp, message, reason,
                                                                     text)


def invoke(rpc, req, bearer, tenant=None, retry_for=20):
    svc_name, method = rpc.rsplit(".", 1)
    binary, mod = SERVICES[svc_name]
    out_cls = symbol_database.Default().GetSymbol(
        mod.DESCRIPTOR.services_by_name[svc_name.rsplit(".", 1)[1]].methods_by_name[method]
        .output_type.full_name)
    md = [("authorization", f"Bearer {bearer}")]
    if tenant:
        md.append(("x-tenant-id", tenant))
    f = SVCS[binary].channel.unary_unary(f"/{svc_name}/{method}",
                                         request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=out_cls.FromString)
    end = time.time() + retry_for
    while True:
        try:
            resp = f(req, metadata=md, timeout=10)
            return Outcome(grpc.StatusCode.OK, resp, "", "", text_format.MessageToString(resp))
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and \
                    time.time() < end:
                time.sleep(0.3)
                continue
            reason, text = "", e.details() or ""
            for k, v in e.trailing_metadata() or ():
                if k == "grpc-status-details-bin":
                    st = status_pb2.Status.FromString(v)
                    text += "\n" + text_format.MessageToString(st)
                    for d in st.details:
                        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                            ei = error_details_pb2.ErrorInfo()
                            d.Unpack(ei)
                            reason = ei.reason
                            text += "\n" + text_format.MessageToString(ei)
                        else:
                            text += "\n" + d.value.decode("utf-8", "replace")
            return Outcome(e.code(), None, e.details() or "", reason, text)


class Tenant:
    """a tenant, its names (all start with its id) and what its seed saw"""

    def __init__(self, tid):
        self.tid = tid
        self.admin = token(tid, f"{tid}-admin", "admin")
        self.m1, self.m2 = f"{tid}-m1", f"{tid}-m2"
        self.ch1, self.ch2 = f"{tid}-ch1", f"{tid}-ch2"
        self.skus = [f"{tid}-sku1", f"{tid}-sku2"]
        self.flash_sku = f"{tid}-flash"
        self.sched = f"{tid}-sched"
        self.partner = f"{tid}-p1"
        self.ids = set()       # server-made ids its seed saw (uuid-like)
        self.accounts = set()  # settlement account ids
        self.m1_accounts = set()
        self.entries = set()   # journal entry ids
        self.orders = {}       # name -> order
        self.today = None

    def call(self, rpc, req, check=True):
        o = invoke(rpc, req, self.admin)
        if check and o.code != grpc.StatusCode.OK:
            raise SystemExit(f"isolation: seed {self.tid} {rpc}: {o.code.name} {o.message}")
        self.ids.update(UUID.findall(o.text))
        return o.resp


O, I, S, C = ("commerce.order.v1.OrderService.", "commerce.inventory.v1.InventoryService.",
              "commerce.settlement.v1.SettlementService.",
              "commerce.commission.v1.CommissionService.")


# ---- seed ----

def seed(t, receiver):
    r = t.tid
    t.call(S + "PutTenantSettings", stls.PutTenantSettingsRequest(
        request_id=f"{r}-stl-settings", settings=stl.TenantSettings(
            time_zone="Asia/Shanghai", max_split_bps=10000, run_at="02:00")))
    for m in (t.m1, t.m2):
        t.call(S + "PutSplitRule", stls.PutSplitRuleRequest(
            request_id=f"{r}-rule-{m}", rule=stl.SplitRule(
                merchant_id=m, currency="CNY", merchant_settle_delay_days=0,
                receivers=[stl.SplitReceiver(type=stl.PARTY_TYPE_PLATFORM, receiver_id=f"{r}-plat",
                                             share_bps=1000),
                           stl.SplitReceiver(type=stl.PARTY_TYPE_SERVICE_PROVIDER,
                                             receiver_id=f"{r}-sp", share_bps=500,
                                             settle_delay_days=1)],
                fee=stl.FeeModel(bps=30, fixed_minor=10, bearer=stl.FEE_BEARER_PRO_RATA))))
    t.call(C + "PutTenantSettings", cmss.PutTenantSettingsRequest(
        request_id=f"{r}-cms-settings", settings=cms.TenantSettings(
            after_sale_window=duration_pb2.Duration(seconds=0))))
    t.call(O + "PutTenantSettings", ords.PutTenantSettingsRequest(
        request_id=f"{r}-ord-settings", actor=f"{r}-actor", reason=f"{r}-reason",
        settings=ordm.TenantSettings(payment_timeout=duration_pb2.Duration(seconds=3600),
                                     flash_payment_timeout=duration_pb2.Duration(seconds=600))))
    t.call(C + "PutTierSchedule", cmss.PutTierScheduleRequest(
        request_id=f"{r}-tiers", schedule=cms.TierSchedule(
            tier_schedule_id=t.sched, name=f"{r} schedule", currency="CNY",
            period=cms.PERIOD_TYPE_MONTH, time_zone="Asia/Shanghai", mode=cms.TIER_MODE_MARGINAL,
            channel_types=[cms.CHANNEL_TYPE_COMMUNITY_LEADER],
            tiers=[cms.Tier(from_sales=money(0), rate_bps=500),
                   cms.Tier(from_sales=money(1000000), rate_bps=800)])))
    for ch in (t.ch1, t.ch2):
        t.call(C + "PutChannel", cmss.PutChannelRequest(
            request_id=f"{r}-put-{ch}", channel=cms.Channel(
            channel_id=ch, name=f"{ch} name", type=cms.CHANNEL_TYPE_COMMUNITY_LEADER,
            state=cms.CHANNEL_STATE_ACTIVE, tier_schedule_id=t.sched)))
    p = t.call(C + "PutPartner", cmss.PutPartnerRequest(
        request_id=f"{r}-partner", partner=cms.Partner(
        partner_id=t.partner, name=f"{r} partner", channel_ids=[t.ch1, t.ch2],
        webhook=cms.PartnerWebhook(enabled=True,
                                   url=f"http://127.0.0.1:{receiver.port}/hook/{r}"))))
    receiver.secrets[r] = p.webhook_secret
    for sku in t.skus:
        t.call(I + "SetStock", invs.SetStockRequest(request_id=f"{r}-stock-{sku}", sku=sku,
                                                    available=1000, reason=f"{r} seed",
                                                    actor=f"{r}-actor"))
        t.call(I + "SetCost", invs.SetCostRequest(request_id=f"{r}-cost-{sku}", sku=sku,
                                                  unit_cost=money(400), reason=f"{r} seed",
                                                  actor=f"{r}-actor"))
    t.call(I + "SetStock", invs.SetStockRequest(request_id=f"{r}-stock-flash", sku=t.flash_sku,
                                                available=100, reason=f"{r} seed",
                                                actor=f"{r}-actor"))
    now = int(time.time())
    t.flash = t.call(I + "ConfigureFlashSale", invs.ConfigureFlashSaleRequest(
        request_id=f"{r}-flash", sku=t.flash_sku, starts_at=timestamp_pb2.Timestamp(seconds=now),
        ends_at=timestamp_pb2.Timestamp(seconds=now + 7200), sale_stock=10, per_buyer_limit=2,
        actor=f"{r}-actor")).flash_sale.flash_sale_id
    # a reservation of an order that does not exist (inventory alone)
    t.resv_order = f"{r}-resv-order"
    t.call(I + "Reserve", invs.ReserveRequest(order_id=t.resv_order, buyer_id=f"{r}-buyer",
                                              lines=[invs.ReserveLine(sku=t.skus[1], quantity=1)],
                                              ttl=duration_pb2.Duration(seconds=3600)))

    def order(name, merchant, channel, price):
        o = t.call(O + "CreateOrder", ords.CreateOrderRequest(
            request_id=f"{r}-create-{name}", buyer_id=f"{r}-buyer-{name}", merchant_id=merchant,
            channel_id=channel, currency="CNY",
            lines=[ords.CreateOrderLine(sku=t.skus[0], quantity=2, unit_price=money(price))])).order
        t.orders[name] = o
        return o

    def pay(name):
        o = t.orders[name]
        t.call(O + "MarkPaid", ords.MarkPaidRequest(
            payment_id=f"{r}-pay-{name}", order_id=o.order_id, amount=o.total_amount,
            provider="alipay", provider_reference=f"{r}-txn-{name}"))

    def ship(name):
        t.call(O + "ShipOrder", ords.ShipOrderRequest(request_id=f"{r}-ship-{name}",
                                                      order_id=t.orders[name].order_id,
                                                      carrier="sf", tracking_number=f"{r}-trk"))

    def complete(name):
        t.call(O + "CompleteOrder", ords.CompleteOrderRequest(request_id=f"{r}-done-{name}",
                                                              order_id=t.orders[name].order_id))

    # merchant m1, channel ch1: completed (commission payable, paid out),
    # refunded in part after it (a clawback adjustment); shipped; refunded
    order("done", t.m1, t.ch1, 50000)
    pay("done"), ship("done"), complete("done")
    order("shipped", t.m1, t.ch1, 30000)
    pay("shipped"), ship("shipped")
    order("refunded", t.m1, t.ch1, 20000)
    pay("refunded")
    t.call(O + "RefundOrder", ords.RefundOrderRequest(
        refund_id=f"{r}-refund-full", order_id=t.orders["refunded"].order_id,
        scope=ordm.REFUND_SCOPE_FULL, reason=f"{r} refund"))
    order("pending", t.m1, t.ch1, 10000)
    # merchant m2, channel ch2: its own paid and completed order
    order("m2", t.m2, t.ch2, 40000)
    pay("m2"), ship("m2"), complete("m2")
    wait(f"{r}: commissions payable", lambda: sum(
        1 for c in t.call(C + "ListCommissions", cmss.ListCommissionsRequest(
            states=[cms.COMMISSION_STATE_PAYABLE])).commissions) >= 2)
    t.call(O + "RefundOrder", ords.RefundOrderRequest(
        refund_id=f"{r}-refund-part", order_id=t.orders["done"].order_id,
        scope=ordm.REFUND_SCOPE_AMOUNT, amount=money(5000), reason=f"{r} part"))
    wait(f"{r}: clawback adjustment", lambda: len(t.call(
        C + "ListAdjustments", cmss.ListAdjustmentsRequest(channel_id=t.ch1)).adjustments) >= 1)
    for ch in (t.ch1, t.ch2):
        pay_out = t.call(C + "SettleCommissions", cmss.SettleCommissionsRequest(
            request_id=f"{r}-settle-{ch}", channel_id=ch, currency="CNY"))
        if not pay_out.payout.payout_id:
            raise SystemExit(f"isolation: seed {r}: no commission payout for {ch} "
                             f"(below_minimum {pay_out.below_minimum})")
        setattr(t, "cpayout_" + ("ch1" if ch == t.ch1 else "ch2"), pay_out.payout.payout_id)
    # settlement: the merchants' T+0 money becomes payouts; a run of today
    wait(f"{r}: settlement payouts", lambda: {p.party.id for p in t.call(
        S + "ListPayouts", stls.ListPayoutsRequest(page_size=100)).payouts} >= {t.m1, t.m2})
    pays = t.call(S + "ListPayouts", stls.ListPayoutsRequest(page_size=100)).payouts
    t.spayout_m1 = next(p.payout_id for p in pays if p.party.id == t.m1)
    t.spayout_m2 = next(p.payout_id for p in pays if p.party.id == t.m2)
    tz = datetime.timezone(datetime.timedelta(hours=8))
    d = datetime.datetime.now(tz).date()
    t.today = date_pb2.Date(year=d.year, month=d.month, day=d.day)
    t.period = time_range_pb2.TimeRange(start_at=timestamp_pb2.Timestamp(seconds=now - 86400),
                                        end_at=timestamp_pb2.Timestamp(seconds=now + 86400))
    t.run = t.call(S + "RunSettlement", stls.RunSettlementRequest(business_date=t.today)).run.run_id
    accts = t.call(S + "ListAccounts", stls.ListAccountsRequest(page_size=500)).accounts
    t.accounts = {a.account_id for a in accts}
    t.m1_accounts = {a.account_id for a in accts if a.party.id == t.m1}
    t.m1_account = min(t.m1_accounts)
    t.m2_account = min(a.account_id for a in accts if a.party.id == t.m2)
    for a in t.accounts:
        for e in t.call(S + "ListJournalEntries", stls.ListJournalEntriesRequest(
                account_id=a, page_size=500)).entries:
            t.entries.add(e.entry_id)
    csv = "transaction_time,provider_transaction_id,order_id,kind,currency,amount,fee,refund_id\n"
    for name in ("done", "m2"):
        csv += (f"{d.isoformat()} 10:00:00,{r}-txn-{name},{t.orders[name].order_id},payment,CNY,"
                f"{t.orders[name].total_amount.amount_minor / 100:.2f},0.01,\n")
    t.call(S + "ImportStatement", rec.ImportStatementRequest(request_id=f"{r}-bill",
                                                             bill_date=t.today, csv=csv))
    wait(f"{r}: webhook deliveries", lambda: len(t.call(
        C + "ListWebhookDeliveries",
        cmss.ListWebhookDeliveriesRequest(partner_id=t.partner)).deliveries) >= 1)
    t.event = t.call(C + "ListWebhookDeliveries", cmss.ListWebhookDeliveriesRequest(
        partner_id=t.partner)).deliveries[0].event_id
    # everything A's seed answered with a server-made id, and A's listings
    for o in t.orders.values():
        t.ids.add(o.order_id)


def wait(what, cond, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.3)
    raise SystemExit(f"isolation: seed: {what} did not happen in {timeout} s")


class Receiver:
    """the partner's webhook: accepts every signed delivery"""

    def __init__(self):
        self.secrets = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# ---- what of A's may not show ----

TOKEN = re.compile(r"[A-Za-z0-9_.-]+")


def request_strings(req):
    return set(TOKEN.findall(text_format.MessageToString(req))) | set(
        UUID.findall(text_format.MessageToString(req)))


def leaks(a, text, echo=frozenset()):
    """A's tokens in text that are not in echo (what the caller sent)"""
    found = set()
    for tok in TOKEN.findall(text):
        tok = tok.strip(".")
        if tok in echo:
            continue
        if tok.startswith(a.tid) or tok in a.ids:
            found.add(tok)
    for u in UUID.findall(text):
        if u in a.ids and u not in echo:
            found.add(u)
    for m in re.finditer(r"(account_id|entry_id): (\d+)", text):
        n = int(m.group(2))
        if (n in a.accounts if m.group(1) == "account_id" else n in a.entries) and \
                m.group(2) not in echo:
            found.add(m.group(0))
    return sorted(found)


# ---- the case table: one row per RPC, aimed at tenant A's data ----

class Case:
    def __init__(self, kind, req, codes=("OK",), check=None, echo=False):
        self.kind, self.req, self.codes, self.check = kind, req, codes, check
        # what the caller sent may come back (an error naming the key, a
        # list of the keys it did not find, B's own row under that name)
        self.echo = echo or kind in ("hidden", "local")


def hidden(req):
    return Case("hidden", req, ("NOT_FOUND",))


def listing(req, check=None, echo=False):
    return Case("list", req, ("OK",), check, echo)


def local(req, *codes, check=None):
    return Case("local", req, codes or ("OK",), check)


def cases(a):
    o = a.orders
    ts = timestamp_pb2.Timestamp
    day = a.today
    m1_party = stl.Party(type=stl.PARTY_TYPE_MERCHANT, id=a.m1)
    return {
        # order
        O + "GetOrder": hidden(ords.GetOrderRequest(order_id=o["done"].order_id)),
        O + "ListOrders": listing(ords.ListOrdersRequest(merchant_id=a.m1, page_size=100)),
        O + "MarkPaid": hidden(ords.MarkPaidRequest(
            payment_id=f"{a.tid}-pay-pending", order_id=o["pending"].order_id,
            amount=o["pending"].total_amount, provider="alipay")),
        O + "CancelOrder": hidden(ords.CancelOrderRequest(
            request_id=f"{a.tid}-iso-cancel", order_id=o["pending"].order_id,
            reason=ordm.CANCEL_REASON_BUYER_REQUESTED)),
        O + "ShipOrder": hidden(ords.ShipOrderRequest(request_id=f"{a.tid}-iso-ship",
                                                      order_id=o["done"].order_id, carrier="sf")),
        O + "CompleteOrder": hidden(ords.CompleteOrderRequest(request_id=f"{a.tid}-iso-done",
                                                              order_id=o["shipped"].order_id)),
        O + "RefundOrder": hidden(ords.RefundOrderRequest(
            refund_id=f"{a.tid}-iso-refund", order_id=o["shipped"].order_id,
            scope=ordm.REFUND_SCOPE_FULL, reason="iso")),
        # A's request id and skus, in B: B's own (B has no such skus)
        O + "CreateOrder": local(ords.CreateOrderRequest(
            request_id=f"{a.tid}-create-done", buyer_id=f"{a.tid}-buyer-done", merchant_id=a.m1,
            channel_id=a.ch1, currency="CNY",
            lines=[ords.CreateOrderLine(sku=a.skus[0], quantity=2, unit_price=money(50000))]),
            "OK", "FAILED_PRECONDITION", "NOT_FOUND"),
        O + "GetTenantSettings": listing(ords.GetTenantSettingsRequest()),
        O + "PutTenantSettings": local(ords.PutTenantSettingsRequest(
            request_id=f"{a.tid}-ord-settings", actor="iso", reason="iso",
            settings=ordm.TenantSettings(payment_timeout=duration_pb2.Duration(seconds=7200),
                                         flash_payment_timeout=duration_pb2.Duration(seconds=900)))),
        O + "QueryMargin": listing(ords.QueryMarginRequest(sku=a.skus[0]),
                                   check=lambda r: not r.margins or "margins of A's sku"),
        # inventory
        I + "GetStock": hidden(invs.GetStockRequest(sku=a.skus[0])),
        I + "BatchGetStock": listing(invs.BatchGetStockRequest(skus=a.skus + [a.flash_sku]),
                                     check=lambda r: not r.stocks or "stock of A's skus",
                                     echo=True),
        I + "SetStock": local(invs.SetStockRequest(request_id=f"{a.tid}-stock-{a.skus[0]}",
                                                   sku=a.skus[0], available=5, reason="iso",
                                                   actor="iso")),
        I + "AdjustStock": hidden(invs.AdjustStockRequest(request_id=f"{a.tid}-iso-adjust",
                                                          sku=a.skus[1], delta=-1, reason="iso",
                                                          actor="iso")),
        I + "Reserve": local(invs.ReserveRequest(order_id=a.resv_order, buyer_id="iso",
                                                 lines=[invs.ReserveLine(sku=a.skus[1], quantity=1)]),
                             "FAILED_PRECONDITION", "NOT_FOUND"),
        # each request answered on its own: A's order id and A's sku are
        # B's own unknown ones (never stocked: sold out), and nothing of A's
        # comes back
        I + "BatchReserve": local(
            invs.BatchReserveRequest(requests=[invs.ReserveRequest(
                order_id=a.resv_order, buyer_id="iso",
                lines=[invs.ReserveLine(sku=a.skus[1], quantity=1)])]),
            check=lambda r: (len(r.results) == 1 and r.results[0].code in (5, 9) and
                             not r.results[0].HasField("reservation")) or
            f"BatchReserve answered {r}"),
        I + "Confirm": hidden(invs.ConfirmRequest(order_id=a.resv_order)),
        # a release of an unknown order leaves a tombstone: B's own
        I + "Release": local(invs.ReleaseRequest(order_id=a.resv_order),
                             check=lambda r: not r.reservation.lines or "lines of A's"),
        I + "GetReservation": hidden(invs.GetReservationRequest(order_id=a.resv_order)),
        I + "SetCost": hidden(invs.SetCostRequest(request_id=f"{a.tid}-iso-cost", sku=a.skus[1],
                                                  unit_cost=money(1), reason="iso", actor="iso")),
        I + "GetCost": hidden(invs.GetCostRequest(sku=a.skus[0])),
        I + "CheckInvariants": listing(invs.CheckInvariantsRequest(skus=a.skus),
                                       check=lambda r: r.checked_skus == 0 or
                                       f"checked {r.checked_skus} of A's skus"),
        I + "ConfigureFlashSale": hidden(invs.ConfigureFlashSaleRequest(
            request_id=f"{a.tid}-iso-flash", flash_sale_id=a.flash, sku=a.flash_sku,
            starts_at=ts(seconds=int(time.time())), ends_at=ts(seconds=int(time.time()) + 60),
            sale_stock=1, per_buyer_limit=1, actor="iso", expected_version=1)),
        I + "GetFlashSale": hidden(invs.GetFlashSaleRequest(flash_sale_id=a.flash)),
        I + "ListFlashSales": listing(invs.ListFlashSalesRequest(sku=a.flash_sku)),
        I + "ListStockChanges": listing(invs.ListStockChangesRequest(sku=a.skus[0], page_size=100)),
        # settlement
        S + "PutSplitRule": local(stls.PutSplitRuleRequest(
            request_id=f"{a.tid}-rule-{a.m1}", rule=stl.SplitRule(
                merchant_id=a.m1, currency="CNY",
                receivers=[stl.SplitReceiver(type=stl.PARTY_TYPE_PLATFORM, receiver_id="plat",
                                             share_bps=100)],
                fee=stl.FeeModel(bps=30, bearer=stl.FEE_BEARER_PRO_RATA)))),
        S + "GetSplitRule": hidden(stls.GetSplitRuleRequest(merchant_id=a.m2, currency="CNY")),
        S + "ListSplitRuleVersions": listing(stls.ListSplitRuleVersionsRequest(
            merchant_id=a.m2, currency="CNY")),
        S + "GetTenantSettings": listing(stls.GetTenantSettingsRequest()),
        S + "PutTenantSettings": local(stls.PutTenantSettingsRequest(
            request_id=f"{a.tid}-stl-settings", settings=stl.TenantSettings(
                time_zone="Asia/Shanghai", max_split_bps=5000, run_at="03:00"))),
        S + "ListAccounts": listing(stls.ListAccountsRequest(party=m1_party, page_size=500)),
        S + "ListJournalEntries": listing(stls.ListJournalEntriesRequest(
            order_id=o["done"].order_id, posted=a.period, page_size=500)),
        S + "RunSettlement": local(stls.RunSettlementRequest(business_date=day)),
        S + "GetSettlementRun": hidden(stls.GetSettlementRunRequest(run_id=a.run)),
        S + "ListSettlementRuns": listing(stls.ListSettlementRunsRequest(page_size=100)),
        S + "GetPayout": hidden(stls.GetPayoutRequest(payout_id=a.spayout_m1)),
        S + "ListPayouts": listing(stls.ListPayoutsRequest(account_id=a.m1_account,
                                                           page_size=100)),
        S + "ReportPayoutResult": hidden(stls.ReportPayoutResultRequest(
            payout_id=a.spayout_m1, result=stl.PAYOUT_STATE_PAID, provider_reference="iso")),
        S + "GetAccountStatement": hidden(stls.GetAccountStatementRequest(
            account_id=a.m1_account, period=a.period)),
        S + "ImportStatement": local(rec.ImportStatementRequest(
            request_id=f"{a.tid}-bill", bill_date=day,
            csv="transaction_time,provider_transaction_id,order_id,kind,currency,amount,fee,"
                "refund_id\n")),
        S + "GetReconciliation": listing(rec.GetReconciliationRequest(date=day, currency="CNY")),
        S + "ListReconciliationDifferences": listing(rec.ListReconciliationDifferencesRequest(
            date=day, currency="CNY", page_size=100)),
        # commission
        C + "PutChannel": local(cmss.PutChannelRequest(
            request_id=f"{a.tid}-put-{a.ch1}", channel=cms.Channel(
                channel_id=a.ch1, name="iso", type=cms.CHANNEL_TYPE_COMMUNITY_LEADER,
                state=cms.CHANNEL_STATE_ACTIVE, tier_schedule_id=a.sched)),
            "OK", "NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT"),
        C + "GetChannel": hidden(cmss.GetChannelRequest(channel_id=a.ch1)),
        C + "ListChannels": listing(cmss.ListChannelsRequest(tier_schedule_id=a.sched)),
        C + "PutTierSchedule": local(cmss.PutTierScheduleRequest(
            request_id=f"{a.tid}-tiers", schedule=cms.TierSchedule(
                tier_schedule_id=a.sched, name="iso", currency="CNY", period=cms.PERIOD_TYPE_MONTH,
                time_zone="Asia/Shanghai", mode=cms.TIER_MODE_MARGINAL,
                tiers=[cms.Tier(from_sales=money(0), rate_bps=100)]))),
        C + "GetTierSchedule": hidden(cmss.GetTierScheduleRequest(tier_schedule_id=a.sched)),
        C + "ListTierSchedules": listing(cmss.ListTierSchedulesRequest(page_size=100)),
        C + "ListCommissions": listing(cmss.ListCommissionsRequest(channel_id=a.ch1,
                                                                   page_size=100)),
        C + "GetChannelSummary": hidden(cmss.GetChannelSummaryRequest(channel_id=a.ch1)),
        C + "ListAdjustments": listing(cmss.ListAdjustmentsRequest(channel_id=a.ch1,
                                                                   page_size=100)),
        C + "SettleCommissions": local(cmss.SettleCommissionsRequest(
            request_id=f"{a.tid}-settle-{a.ch1}", channel_id=a.ch1, currency="CNY"),
            "NOT_FOUND", "OK"),
        C + "GetPayout": hidden(cmss.GetPayoutRequest(payout_id=a.cpayout_ch1)),
        C + "ReportPayoutResult": hidden(cmss.ReportPayoutResultRequest(
            payout_id=a.cpayout_ch1, result=cms.PAYOUT_STATE_PAID, provider_reference="iso")),
        C + "ListPayouts": listing(cmss.ListPayoutsRequest(channel_id=a.ch1, page_size=100)),
        C + "ClosePeriod": local(cmss.ClosePeriodRequest(
            channel_id=a.ch1, tier_schedule_id=a.sched,
            period_start=ts(seconds=int(time.time()) - 86400 * 40)),
            "NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT"),
        C + "GetTenantSettings": listing(cmss.GetTenantSettingsRequest()),
        C + "PutTenantSettings": local(cmss.PutTenantSettingsRequest(
            request_id=f"{a.tid}-cms-settings", settings=cms.TenantSettings(
                after_sale_window=duration_pb2.Duration(seconds=3600)))),
        C + "PutPartner": local(cmss.PutPartnerRequest(
            request_id=f"{a.tid}-partner", partner=cms.Partner(
                partner_id=a.partner, name="iso", channel_ids=[a.ch1],
                webhook=cms.PartnerWebhook(enabled=False, url="http://127.0.0.1:9/iso"))),
            "OK", "NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT"),
        C + "GetPartner": hidden(cmss.GetPartnerRequest(partner_id=a.partner)),
        C + "ListPartners": listing(cmss.ListPartnersRequest(page_size=100)),
        C + "RotateWebhookSecret": hidden(cmss.RotateWebhookSecretRequest(
            request_id=f"{a.tid}-iso-rotate", partner_id=a.partner)),
        C + "ListWebhookDeliveries": local(cmss.ListWebhookDeliveriesRequest(
            partner_id=a.partner, page_size=100), "NOT_FOUND",
            check=None),
        C + "RedeliverWebhookEvent": hidden(cmss.RedeliverWebhookEventRequest(
            request_id=f"{a.tid}-iso-redeliver", partner_id=a.partner, event_id=a.event)),
        C + "ReplayPartnerEvents": hidden(cmss.ReplayPartnerEventsRequest(
            request_id=f"{a.tid}-iso-replay", partner_id=a.partner, channel_id=a.ch1,
            range=a.period, target=cmss.REPLAY_TARGET_WEBHOOK)),
        C + "CheckInvariants": local(cmss.CheckInvariantsRequest(channel_id=a.ch1),
                                     "OK", "NOT_FOUND",
                                     check=lambda r: r.checked_periods == 0 or
                                     f"checked {r.checked_periods} periods of A's channel"),
    }


# scoped rows (tenant A): merchant m2 / channel ch2 aimed at m1's / ch1's rows.
# they run only for RPCs whose roles list the scoped role; each names the
# tokens of the other scope that must not show (beyond what was sent)
def scoped_cases(a):
    o = a.orders
    m1 = {a.m1} | {x.order_id for n, x in o.items() if x.merchant_id == a.m1} | {a.spayout_m1}
    m1_accounts = a.m1_accounts
    ch1 = {a.ch1, a.cpayout_ch1, o["done"].order_id, o["shipped"].order_id,
           o["refunded"].order_id}
    party_m1 = stl.Party(type=stl.PARTY_TYPE_MERCHANT, id=a.m1)
    return {
        "merchant": {
            O + "GetOrder": (hidden(ords.GetOrderRequest(order_id=o["done"].order_id)), m1, set()),
            O + "ListOrders": (listing(ords.ListOrdersRequest(page_size=100)), m1, set()),
            S + "GetPayout": (hidden(stls.GetPayoutRequest(payout_id=a.spayout_m1)), m1, set()),
            S + "ListPayouts": (listing(stls.ListPayoutsRequest(page_size=100)), m1, m1_accounts),
            S + "GetAccountStatement": (hidden(stls.GetAccountStatementRequest(
                account_id=a.m1_account, period=a.period)), m1, m1_accounts),
            S + "ListAccounts": (listing(stls.ListAccountsRequest(party=party_m1, page_size=500)),
                                 m1, m1_accounts),
            S + "ListJournalEntries": (listing(stls.ListJournalEntriesRequest(
                account_id=a.m1_account, page_size=500)), m1, m1_accounts),
        },
        "channel": {
            C + "GetChannel": (hidden(cmss.GetChannelRequest(channel_id=a.ch1)), ch1, set()),
            C + "ListChannels": (listing(cmss.ListChannelsRequest(page_size=100)), ch1, set()),
            C + "ListCommissions": (listing(cmss.ListCommissionsRequest(page_size=100)), ch1,
                                    set()),
            C + "GetChannelSummary": (hidden(cmss.GetChannelSummaryRequest(channel_id=a.ch1)),
                                      ch1, set()),
            # its channel_id is required: aimed at C1's, nothing (or NOT_FOUND)
            C + "ListAdjustments": (Case("list", cmss.ListAdjustmentsRequest(
                channel_id=a.ch1, page_size=100), ("OK", "NOT_FOUND")), ch1, set()),
            C + "GetPayout": (hidden(cmss.GetPayoutRequest(payout_id=a.cpayout_ch1)), ch1, set()),
            C + "ListPayouts": (listing(cmss.ListPayoutsRequest(page_size=100)), ch1, set()),
        },
    }


# ---- the RPCs, from the descriptors and the services' tables ----

def enumerate_rpcs():
    rpcs = {}
    for full, (binary, mod) in SERVICES.items():
        sd = mod.DESCRIPTOR.services_by_name[full.rsplit(".", 1)[1]]
        for m in sd.methods:
            rpcs[f"{full}.{m.name}"] = None
        out = subprocess.run([os.path.join(BIN, f"commerce-{binary}"), "--rpc-markdown"],
                             capture_output=True, text=True, check=True).stdout
        table = {}
        for line in out.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 3 and cells[0].startswith("`"):
                table[cells[0].strip("`")] = cells[2].split()
        for name in [n for n in rpcs if n.startswith(full + ".")]:
            if name not in table:
                fail(f"{name}: in the descriptor, not in commerce-{binary} --rpc-markdown")
            else:
                rpcs[name] = table[name]
        for name in table:
            if name not in rpcs:
                fail(f"{name}: in commerce-{binary} --rpc-markdown, not in the descriptor")
    return rpcs


# ---- state of A, read back with A's token ----

def snapshot(a):
    reads = [
        (O + "ListOrders", ords.ListOrdersRequest(page_size=100)),
        (O + "GetTenantSettings", ords.GetTenantSettingsRequest()),
        (I + "BatchGetStock", invs.BatchGetStockRequest(skus=a.skus + [a.flash_sku])),
        (I + "GetReservation", invs.GetReservationRequest(order_id=a.resv_order)),
        (I + "GetFlashSale", invs.GetFlashSaleRequest(flash_sale_id=a.flash)),
        (I + "ListStockChanges", invs.ListStockChangesRequest(page_size=500)),
        (S + "GetTenantSettings", stls.GetTenantSettingsRequest()),
        (S + "ListSplitRuleVersions", stls.ListSplitRuleVersionsRequest(merchant_id=a.m1,
                                                                        currency="CNY")),
        (S + "ListSplitRuleVersions", stls.ListSplitRuleVersionsRequest(merchant_id=a.m2,
                                                                        currency="CNY")),
        (S + "ListAccounts", stls.ListAccountsRequest(page_size=500)),
        (S + "ListPayouts", stls.ListPayoutsRequest(page_size=500)),
        (S + "ListSettlementRuns", stls.ListSettlementRunsRequest(page_size=100)),
        (S + "ListReconciliationDifferences", rec.ListReconciliationDifferencesRequest(
            date=a.today, currency="CNY", page_size=500)),
        (C + "GetTenantSettings", cmss.GetTenantSettingsRequest()),
        (C + "ListChannels", cmss.ListChannelsRequest(page_size=100)),
        (C + "ListTierSchedules", cmss.ListTierSchedulesRequest(page_size=100)),
        (C + "ListCommissions", cmss.ListCommissionsRequest(page_size=500)),
        (C + "ListAdjustments", cmss.ListAdjustmentsRequest(page_size=500)),
        (C + "ListPayouts", cmss.ListPayoutsRequest(page_size=500)),
        (C + "ListPartners", cmss.ListPartnersRequest(page_size=100)),
        (C + "ListWebhookDeliveries", cmss.ListWebhookDeliveriesRequest(partner_id=a.partner,
                                                                        page_size=500)),
    ]
    for sku in a.skus:
        reads.append((I + "GetCost", invs.GetCostRequest(sku=sku)))
    for ch in (a.ch1, a.ch2):
        reads.append((C + "GetChannelSummary", cmss.GetChannelSummaryRequest(channel_id=ch)))
    for acct in sorted(a.accounts):
        reads.append((S + "GetAccountStatement", stls.GetAccountStatementRequest(
            account_id=acct, period=a.period, page_size=500)))
    snap = {}
    for rpc, req in reads:
        o = invoke(rpc, req, a.admin)
        # timestamps of the read itself change with every read
        text = re.sub(r"(computed_at|checked_at) \{[^}]*\}", "", o.text)
        snap[f"{rpc}({text_format.MessageToString(req, as_one_line=True)})"] = (o.code.name, text)
    return snap


def settle_snapshot(a):
    """A's state once its background work (payouts, deliveries) is done"""
    prev = snapshot(a)
    for _ in range(30):
        time.sleep(1)
        cur = snapshot(a)
        if cur == prev:
            return cur
        prev = cur
    raise SystemExit("isolation: tenant A's state did not settle")


# ---- the matrix ----

def check_b(rpc, case, o, a, who):
    if o.code.name not in case.codes:
        fail(f"{rpc} {who}: {o.code.name} ({o.message}), want {' or '.join(case.codes)}")
    echo = request_strings(case.req) if case.echo else frozenset()
    bad = leaks(a, o.text, echo)
    if bad:
        fail(f"{rpc} {who}: the answer shows tenant A's {', '.join(bad[:5])}")
    if case.check and o.code == grpc.StatusCode.OK:
        r = case.check(o.resp)
        if r is not True:
            fail(f"{rpc} {who}: {r}")


def main():
    global BIN
    BIN = os.environ.get("COMMERCE_BIN", os.path.join(ROOT, "build", "bin"))
    brokers = os.environ["KAFKA_BROKERS"]
    kafka_sh = os.path.join(ROOT, "scripts", "kafka.sh")
    topic = f"iso.{RUN}"
    # the partners' webhook secrets sealed at rest, as deployed
    keys = f"/tmp/commerce-iso-{RUN}.keys"
    with open(os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(f"iso:{base64.b64encode(os.urandom(32)).decode()}\n")
    topics = [f"{topic}.order", f"{topic}.cms", f"{topic}.partner", f"{topic}.stl"]
    for t in topics:
        subprocess.run([kafka_sh, "topic", t, "3"], check=True, capture_output=True)
        subprocess.run([kafka_sh, "topic", f"{t}.dlq", "1"], check=True, capture_output=True)
    SVCS["inventory"] = Service("inventory", {
        "INVENTORY_SCHEMA": f"iso_inv_{RUN}", "INVENTORY_ORDER_TOPIC": f"{topic}.order",
        "INVENTORY_ORDER_GROUP": f"{topic}.inv", "KAFKA_BROKERS": brokers})
    SVCS["order"] = Service("order", {
        "ORDER_SCHEMA": f"iso_ord_{RUN}", "ORDER_TOPIC": f"{topic}.order",
        "KAFKA_BROKERS": brokers})
    SVCS["order"].env["INVENTORY_TARGET"] = f"127.0.0.1:{SVCS['inventory'].grpc}"
    SVCS["settlement"] = Service("settlement", {
        "SETTLEMENT_SCHEMA": f"iso_stl_{RUN}", "SETTLEMENT_ORDER_TOPIC": f"{topic}.order",
        "SETTLEMENT_ORDER_GROUP": f"{topic}.stl", "SETTLEMENT_TOPIC": f"{topic}.stl",
        "SETTLEMENT_COMMISSION_TOPIC": f"{topic}.cms",
        "SETTLEMENT_COMMISSION_GROUP": f"{topic}.stlc", "SETTLEMENT_PAYOUT_MS": "300",
        "SETTLEMENT_RUN_TICK_MS": "300", "KAFKA_BROKERS": brokers})
    SVCS["commission"] = Service("commission", {
        "COMMISSION_SCHEMA": f"iso_cms_{RUN}", "COMMISSION_ORDER_TOPIC": f"{topic}.order",
        "COMMISSION_ORDER_GROUP": f"{topic}.cms", "COMMISSION_TOPIC": f"{topic}.cms",
        "COMMISSION_PARTNER_TOPIC": f"{topic}.partner", "COMMISSION_FEED_GROUP": f"{topic}.feed",
        "COMMISSION_PAYABLE_MS": "200", "COMMISSION_WEBHOOK_ALLOW_HTTP": "on",
        "COMMISSION_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8", "COMMISSION_SECRETS_KEY_FILE": keys,
        "KAFKA_BROKERS": brokers})
    rc = 1
    t0 = time.time()
    try:
        for sv in SVCS.values():
            sv.start()
        for sv in SVCS.values():
            sv.ready()
        rpcs = enumerate_rpcs()
        print(f"== isolation {RUN}: {len(rpcs)} RPCs; tenants {TA} (aimed at), {TB}, {TC}",
              flush=True)
        receiver = Receiver()
        a, b = Tenant(TA), Tenant(TB)
        for t in (a, b):
            seed(t, receiver)
        print(f"  seeded both tenants in {time.time() - t0:.0f} s", flush=True)
        table = cases(a)
        for name in rpcs:
            if name not in table:
                fail(f"{name}: no row in the case table (every RPC needs one)")
        for name in table:
            if name not in rpcs:
                fail(f"{name}: a row for an RPC the services do not have")
        # the rows aim at A's data: A's own token reading the same thing
        # sees it (else a NOT_FOUND or an empty list would prove nothing)
        aimed = 0
        for name, case in table.items():
            if name not in rpcs:
                continue
            if case.kind == "list" or (case.kind == "hidden" and
                                       name.rsplit(".", 1)[1].startswith("Get")):
                aimed += 1
                o = invoke(name, case.req, a.admin)
                reach = o.code == grpc.StatusCode.OK and (
                    leaks(a, o.text) or (case.check and case.check(o.resp) is not True))
                if not reach:
                    fail(f"{name}: the row does not reach A's data (A's own token: "
                         f"{o.code.name} {o.message})")
        before = settle_snapshot(a)
        b_calls = 0
        # reads first: B's own writes below create rows under A's names
        order = sorted((n for n in rpcs if n in table),
                       key=lambda n: table[n].kind == "local")
        for name in order:
            case = table[name]
            check_b(name, case, invoke(name, case.req, b.admin), a, "with B's token")
            b_calls += 1
            o = invoke(name, case.req, b.admin, tenant=TA)
            if not ((o.code == grpc.StatusCode.PERMISSION_DENIED and o.reason == "TENANT_MISMATCH")
                    or o.code == grpc.StatusCode.UNAUTHENTICATED):
                fail(f"{name} with B's token and x-tenant-id A: {o.code.name} {o.reason}")
            elif leaks(a, o.text, request_strings(case.req) | {TA}):
                fail(f"{name} with B's token and x-tenant-id A: shows {leaks(a, o.text)}")
        # roles: A's token without any allowed role is refused, and the
        # same request with one allowed role is not (on an empty tenant)
        denied = allowed = 0
        for name in order:
            roles, case = rpcs[name], table[name]
            others = [r for r in UNSCOPED_ROLES + ["merchant", "channel"] if r not in roles]
            tok = token(TA, f"{TA}-norole", others or ["nobody"], merchant=a.m1, channel=a.ch1)
            o = invoke(name, case.req, tok)
            denied += 1
            if o.code != grpc.StatusCode.PERMISSION_DENIED or o.reason != "ROLE_REQUIRED":
                fail(f"{name} with roles {others}: {o.code.name} {o.reason}, want "
                     f"PERMISSION_DENIED ROLE_REQUIRED")
            for r in roles:
                if r not in UNSCOPED_ROLES:
                    continue
                o = invoke(name, case.req, token(TC, f"{TC}-{r}", [r]))
                allowed += 1
                if o.reason == "ROLE_REQUIRED" or o.code == grpc.StatusCode.UNAUTHENTICATED:
                    fail(f"{name} with role {r} (allowed): {o.code.name} {o.reason}")
        # scoped: another merchant's / channel's token
        scoped = scoped_cases(a)
        ran = 0
        for role, other_id in (("merchant", a.m2), ("channel", a.ch2)):
            for name, roles in rpcs.items():
                if role not in roles:
                    continue
                if name not in scoped[role]:
                    fail(f"{name} allows role {role}: no row in the scoped table")
                    continue
                case, forbidden, accounts = scoped[role][name]
                tok = token(TA, f"{TA}-{role}-2", [role],
                            merchant=other_id if role == "merchant" else None,
                            channel=other_id if role == "channel" else None)
                o = invoke(name, case.req, tok)
                ran += 1
                who = f"as {role} {other_id}"
                if o.code.name not in case.codes:
                    fail(f"{name} {who}: {o.code.name} ({o.message}), want "
                         f"{' or '.join(case.codes)}")
                # an error may name what was asked; an answer may not
                echo = request_strings(case.req) if case.echo or o.resp is None else set()
                shown = {tok_ for tok_ in TOKEN.findall(o.text) + UUID.findall(o.text)
                         if tok_ in forbidden and tok_ not in echo}
                shown |= {int(n) for n in re.findall(r"account_id: (\d+)", o.text)
                          if int(n) in accounts and n not in echo}
                if shown:
                    fail(f"{name} {who}: shows the other {role}'s {sorted(map(str, shown))[:5]}")
        after = snapshot(a)
        changed = [k for k in before if before[k] != after.get(k)]
        for k in changed:
            fail(f"tenant A changed: {k}: {before[k][1][:300]!r} -> {after[k][1][:300]!r}")
        print(f"  {aimed} get/list rows reach A's data with A's token; "
              f"{b_calls} RPCs with B's token (and with x-tenant-id A), {denied} without "
              f"their roles, {allowed} with each allowed role, {ran} scoped; "
              f"{len(before)} reads of A identical after: {not changed}", flush=True)
        rc = 0 if not failures else 1
    finally:
        codes = {n: sv.stop() for n, sv in SVCS.items()}
        for n, code in codes.items():
            if code not in (0, None):
                fail(f"commerce-{n} exited {code} on SIGTERM")
                rc = 1
        if not failures:
            for t in topics:
                subprocess.run([kafka_sh, "delete-topic", t], capture_output=True)
                subprocess.run([kafka_sh, "delete-topic", f"{t}.dlq"], capture_output=True)
            for sv in SVCS.values():
                for key, val in sv.env.items():
                    if key.endswith("_SCHEMA"):
                        subprocess.run(["psql", os.environ["PG_DSN"], "-XAtqc",
                                        f"DROP SCHEMA IF EXISTS {val} CASCADE"],
                                       capture_output=True)
        os.unlink(keys)
    print(f"== isolation: {'ok' if rc == 0 else f'{len(failures)} FAILURES'} in "
          f"{time.time() - t0:.0f} s", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
