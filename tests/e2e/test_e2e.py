#!/usr/bin/python3
"""The suite end to end: all four services (built binaries), the real broker
(KAFKA_BROKERS) and Postgres (PG_DSN), each service on schemas, topics and
groups of this run's own, driven as the monoliths would drive them.

  load      ORDERS random orders over two tenants (one merchant each, three
            channels, five SKUs and a flash sale): paid, cancelled, left to
            time out (ORDER_PAYMENT_TIMEOUT_S=4), refunded in part and in
            full, flash-sale orders; every call retried with its idempotency
            key until it answers, the way a client must
  faults    then the same load for FAULT_SECONDS while, every few seconds,
            a service is killed with SIGKILL and restarted (each in turn);
            with E2E_RESTART_INFRA=1 the broker and postgres are restarted
            too (scripts/kafka.sh and scripts/pg.sh: only for a run that is
            alone on them, as ctest runs it)
  checks    after each phase, once the suite is quiet, per tenant:
            - stock conserved per SKU (available + reserved + sold = on hand
              = the stock set, nothing reserved), inventory's CheckInvariants
              clean, the flash sale never oversold;
            - every order in the state its acknowledged calls imply (a paid
              order is not pending or cancelled; acknowledged refunds are in
              refunded_amount): nothing acknowledged was lost;
            - the ledger balanced (its accounts sum to 0) and the clearing
              account = -(paid - refunded) of the merchant's orders;
            - per channel, net sales = its paid orders less their refunds
              and the commission = the tier schedule's formula on them;
            - every partner event routed to the tenant's partner was
              delivered to its webhook (signature checked, valid against
              the partner schema), once by id at the receiver.

  tests/e2e/test_e2e.py [--orders N] [--fault-seconds S] [--soak]
  (--soak: print RSS and consumer lag of every service every 5 s)

Environment: PG_DSN, KAFKA_BROKERS, COMMERCE_BIN (the build's bin/),
COMMERCE_PY_GEN (its gen/python). Exit 0 when every check holds.
"""
import argparse
import base64
import concurrent.futures
import hashlib
import hmac
import http.server
import json
import os
import random
import signal
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
from commerce.common.v1 import money_pb2  # noqa: E402
from commerce.inventory.v1 import inventory_service_pb2 as invs  # noqa: E402
from commerce.order.v1 import order_pb2 as ordm  # noqa: E402
from commerce.order.v1 import order_service_pb2 as ords  # noqa: E402
from commerce.settlement.v1 import settlement_pb2 as stl  # noqa: E402
from commerce.settlement.v1 import settlement_service_pb2 as stls  # noqa: E402
from google.protobuf import timestamp_pb2  # noqa: E402

try:
    import jsonschema
except ImportError:
    jsonschema = None

RUN = f"{time.strftime('%H%M%S')}{os.getpid() % 10000}"
TENANTS = [f"e2e-a-{RUN}", f"e2e-b-{RUN}"]
SKUS = ["SKU-1", "SKU-2", "SKU-3", "SKU-4", "SKU-5"]
STOCK = 100000
FLASH_SKU, FLASH_STOCK = "SKU-FLASH", 30
CHANNELS = ["ch-1", "ch-2", "ch-3"]
MERCHANT = "m-1"
TIERS = [(0, 500), (1000000, 800), (5000000, 1200)]  # the seed's table
PAID_STATES = {ordm.ORDER_STATE_PAID, ordm.ORDER_STATE_SHIPPED, ordm.ORDER_STATE_COMPLETED,
               ordm.ORDER_STATE_PARTIALLY_REFUNDED, ordm.ORDER_STATE_REFUNDED}
failures = []
FLASH_IDS = {}


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


# ---- the services ----

class Service:
    def __init__(self, name, env):
        self.name, self.env = name, env
        self.grpc, self.admin = free_port(), free_port()
        self.proc = None
        self.log = open(f"/tmp/commerce-e2e-{RUN}-{name}.log", "ab")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc}")

    def start(self):
        env = dict(os.environ, GRPC_LISTEN=f"127.0.0.1:{self.grpc}",
                   ADMIN_LISTEN=f"127.0.0.1:{self.admin}", LOG_LEVEL="warn", **self.env)
        self.proc = subprocess.Popen([os.path.join(BIN, f"commerce-{self.name}")], env=env,
                                     stdout=self.log, stderr=self.log)

    def supervise(self, timeout=120):
        """(re)starts it like a process supervisor would: a start that exits
        (its database is down, say) is tried again"""
        end = time.time() + timeout
        while True:
            self.start()
            try:
                return self.ready(max(1, min(30, end - time.time())))
            except SystemExit:
                if time.time() > end:
                    raise
                time.sleep(1)

    def ready(self, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"e2e: commerce-{self.name} exited ({self.log.name})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"e2e: commerce-{self.name} not ready in {timeout} s ({self.log.name})")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return -9
        return 0

    def metric_sum(self, name):
        """the sum of a metric's samples on /metrics (every label set)"""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=1) as r:
                text = r.read().decode()
        except OSError:
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss_mb(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0


RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
         grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
         grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED}


def call(svc, package_service, method, req, resp_cls, tenant, retry_for=90):
    """one unary call, retried with the same request (its idempotency key)
    while the service is down or busy; other errors are raised"""
    end = time.time() + retry_for
    while True:
        try:
            f = svc.channel.unary_unary(f"/{package_service}/{method}",
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=resp_cls.FromString)
            return f(req, metadata=(("x-tenant-id", tenant),), timeout=5)
        except grpc.RpcError as e:
            if e.code() not in RETRY or time.time() > end:
                raise
            time.sleep(0.2)


# ---- the partner's webhook receiver ----

class Receiver:
    def __init__(self, schema):
        self.secrets = {}  # tenant -> secret
        self.ids = {}      # id -> (tenant, channel, type)
        self.deliveries = 0
        self.bad = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                tenant = self.path.rsplit("/", 1)[-1]
                sig = self.headers.get("Commerce-Signature", "")
                parts = [p.split("=", 1) for p in sig.split(",") if "=" in p]
                t = next((v for k, v in parts if k == "t"), "0")
                want = hmac.new(outer.secrets.get(tenant, "").encode(), t.encode() + b"." + body,
                                hashlib.sha256).hexdigest()
                ok = any(k == "v1" and hmac.compare_digest(v, want) for k, v in parts)
                problem = None if ok else "bad signature"
                if ok:
                    ev = json.loads(body)
                    if schema is not None:
                        try:
                            jsonschema.validate(ev, schema)
                        except jsonschema.ValidationError as e:
                            problem = f"schema: {e.message}"
                with outer.lock:
                    outer.deliveries += 1
                    if problem:
                        outer.bad.append(problem)
                    else:
                        outer.ids[ev["id"]] = (ev["tenantid"], ev["partitionkey"], ev["type"])
                self.send_response(204 if not problem else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                # a sender killed mid-request (the fault phase) resets its
                # connection: expected here, not worth a traceback
                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# ---- the model: what the test was told ----

class Model:
    def __init__(self):
        self.lock = threading.Lock()
        self.orders = {}  # order_id -> {"tenant", "acked_paid", "acked_refund", "cancel"}

    def note(self, oid, **kw):
        with self.lock:
            self.orders.setdefault(oid, {"acked_paid": False, "acked_refund": 0,
                                         "cancel": False}).update(kw)


def seed(svcs, tenant, receiver):
    o, i, s, c = svcs["order"], svcs["inventory"], svcs["settlement"], svcs["commission"]
    call(s, "commerce.settlement.v1.SettlementService", "PutTenantSettings",
         stls.PutTenantSettingsRequest(request_id="e2e-settings", settings=stl.TenantSettings(
             time_zone="Asia/Shanghai", max_split_bps=10000, run_at="02:00")),
         stls.PutTenantSettingsResponse, tenant)
    call(s, "commerce.settlement.v1.SettlementService", "PutSplitRule", stls.PutSplitRuleRequest(
        request_id="e2e-rule", rule=stl.SplitRule(
            merchant_id=MERCHANT, currency="CNY",
            receivers=[stl.SplitReceiver(type=stl.PARTY_TYPE_PLATFORM, receiver_id="platform",
                                         share_bps=1000),
                       stl.SplitReceiver(type=stl.PARTY_TYPE_SERVICE_PROVIDER, receiver_id="sp-1",
                                         share_bps=500, settle_delay_days=1)],
            fee=stl.FeeModel(bps=30, fixed_minor=10, bearer=stl.FEE_BEARER_PRO_RATA))),
        stls.PutSplitRuleResponse, tenant)
    cs = "commerce.commission.v1.CommissionService"
    call(c, cs, "PutTierSchedule", cmss.PutTierScheduleRequest(
        request_id="e2e-tiers", schedule=cms.TierSchedule(
            tier_schedule_id="seed", name="the seed's table", currency="CNY",
            period=cms.PERIOD_TYPE_MONTH, time_zone="Asia/Shanghai", mode=cms.TIER_MODE_MARGINAL,
            channel_types=[cms.CHANNEL_TYPE_COMMUNITY_LEADER],
            tiers=[cms.Tier(from_sales=money(f), rate_bps=b) for f, b in TIERS])),
        cmss.PutTierScheduleResponse, tenant)
    for ch in CHANNELS:
        call(c, cs, "PutChannel", cmss.PutChannelRequest(request_id=f"e2e-{ch}", channel=cms.Channel(
            channel_id=ch, name=ch, type=cms.CHANNEL_TYPE_COMMUNITY_LEADER,
            state=cms.CHANNEL_STATE_ACTIVE, tier_schedule_id="seed")), cmss.PutChannelResponse,
            tenant)
    r = call(c, cs, "PutPartner", cmss.PutPartnerRequest(request_id="e2e-partner", partner=cms.Partner(
        partner_id="p-1", name="the partner", channel_ids=CHANNELS[:2],
        webhook=cms.PartnerWebhook(enabled=True,
                                   url=f"http://127.0.0.1:{receiver.port}/hook/{tenant}"))),
        cmss.PutPartnerResponse, tenant)
    receiver.secrets[tenant] = r.webhook_secret
    for sku in SKUS:
        call(i, "commerce.inventory.v1.InventoryService", "SetStock", invs.SetStockRequest(
            request_id=f"e2e-stock-{sku}", sku=sku, available=STOCK, reason="e2e", actor="e2e"),
            invs.SetStockResponse, tenant)
    call(i, "commerce.inventory.v1.InventoryService", "SetStock", invs.SetStockRequest(
        request_id="e2e-stock-flash", sku=FLASH_SKU, available=1000, reason="e2e", actor="e2e"),
        invs.SetStockResponse, tenant)
    now = int(time.time())
    FLASH_IDS[tenant] = call(i, "commerce.inventory.v1.InventoryService", "ConfigureFlashSale",
         invs.ConfigureFlashSaleRequest(request_id="e2e-flash", sku=FLASH_SKU,
                                        starts_at=timestamp_pb2.Timestamp(seconds=now + 1),
                                        ends_at=timestamp_pb2.Timestamp(seconds=now + 7200),
                                        sale_stock=FLASH_STOCK, per_buyer_limit=1, actor="e2e"),
         invs.ConfigureFlashSaleResponse, tenant).flash_sale.flash_sale_id


def one_order(svcs, model, tenant, k, rng):
    """creates, then pays / cancels / leaves / refunds one order; every call
    retried with its key; what was acknowledged goes into the model"""
    o = svcs["order"]
    osvc = "commerce.order.v1.OrderService"
    flash = rng.random() < 0.08
    if flash:
        lines = [ords.CreateOrderLine(sku=FLASH_SKU, quantity=1, unit_price=money(990))]
    else:
        lines = [ords.CreateOrderLine(sku=s, quantity=rng.randint(1, 3),
                                      unit_price=money(rng.randint(100, 50000)))
                 for s in rng.sample(SKUS, rng.randint(1, 3))]
    ch = rng.choice(CHANNELS + [""])
    try:
        order = call(o, osvc, "CreateOrder", ords.CreateOrderRequest(
            request_id=f"o-{k}", buyer_id=f"buyer-{k}", merchant_id=MERCHANT, channel_id=ch,
            currency="CNY", lines=lines), ords.CreateOrderResponse, tenant).order
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION:  # sold out, flash limit
            return "refused"
        raise
    oid = order.order_id
    model.note(oid, tenant=tenant)
    x = rng.random()
    if x < 0.10:
        call(o, osvc, "CancelOrder", ords.CancelOrderRequest(
            request_id=f"c-{k}", order_id=oid, reason=ordm.CANCEL_REASON_BUYER_REQUESTED),
            ords.CancelOrderResponse, tenant)
        model.note(oid, cancel=True)
        return "cancelled"
    if x < 0.18:
        return "left to time out"
    try:
        call(o, osvc, "MarkPaid", ords.MarkPaidRequest(
            payment_id=f"pay-{k}", order_id=oid, amount=order.total_amount, provider="alipay"),
            ords.MarkPaidResponse, tenant)
    except grpc.RpcError as e:
        # the order timed out while the order service was down: refused,
        # not acknowledged (a real client refunds the payment provider)
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return "payment too late"
        raise
    model.note(oid, acked_paid=True)
    y = rng.random()
    total = order.total_amount.amount_minor
    if y < 0.12:
        amt = max(1, total // 3)
        call(o, osvc, "RefundOrder", ords.RefundOrderRequest(
            refund_id=f"r-{k}", order_id=oid, scope=ordm.REFUND_SCOPE_AMOUNT, amount=money(amt),
            reason="e2e partial"), ords.RefundOrderResponse, tenant)
        model.note(oid, acked_refund=amt)
        return "paid, refunded in part"
    if y < 0.18:
        call(o, osvc, "RefundOrder", ords.RefundOrderRequest(
            refund_id=f"r-{k}", order_id=oid, scope=ordm.REFUND_SCOPE_FULL,
            reason="e2e full"), ords.RefundOrderResponse, tenant)
        model.note(oid, acked_refund=total)
        return "paid, refunded in full"
    return "paid"


def load(svcs, model, n, tag, seconds=None):
    rng = random.Random(hash(tag) & 0xffffffff)
    outcomes = {}
    jobs = [(TENANTS[k % 2], f"{tag}-{k}", random.Random(rng.random())) for k in range(n)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futs = [pool.submit(one_order, svcs, model, t, k, r) for t, k, r in jobs]
        for f in concurrent.futures.as_completed(futs):
            try:
                r = f.result()
            except grpc.RpcError as e:
                r = f"error {e.code().name}: {e.details()}"
                fail(f"a call failed for good: {r}")
            outcomes[r] = outcomes.get(r, 0) + 1
    return outcomes


# ---- checks ----

def commission_formula(sales):
    c = 0
    for i, (lo, bps) in enumerate(TIERS):
        hi = TIERS[i + 1][0] if i + 1 < len(TIERS) else None
        if sales > lo:
            c += ((min(sales, hi) if hi is not None else sales) - lo) * bps
    return c // 10000


def psql(sql):
    out = subprocess.run(["psql", os.environ["PG_DSN"], "-XAtqc", sql], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def quiet_and_check(svcs, model, receiver, phase, timeout=120):
    """waits until the books agree or timeout; then reports what does not"""
    o, i, s, c = svcs["order"], svcs["inventory"], svcs["settlement"], svcs["commission"]
    end = time.time() + timeout
    while True:
        problems = check(svcs, model, receiver)
        if not problems or time.time() > end:
            break
        time.sleep(1)
    for p in problems:
        fail(f"{phase}: {p}")
    if not problems:
        print(f"  {phase}: every check holds ({len(model.orders)} orders so far)", flush=True)


def check(svcs, model, receiver):
    problems = []
    o, i, s, c = svcs["order"], svcs["inventory"], svcs["settlement"], svcs["commission"]
    osvc = "commerce.order.v1.OrderService"
    truth = {}
    with model.lock:
        items = list(model.orders.items())
    for oid, m in items:
        od = call(o, osvc, "GetOrder", ords.GetOrderRequest(order_id=oid), ords.GetOrderResponse,
                  m["tenant"]).order
        truth[oid] = od
        if m["acked_paid"] and od.state not in PAID_STATES:
            problems.append(f"order {oid}: payment acknowledged, state "
                            f"{ordm.OrderState.Name(od.state)}")
        if od.refunded_amount.amount_minor < m["acked_refund"]:
            problems.append(f"order {oid}: refunds acknowledged {m['acked_refund']}, refunded "
                            f"{od.refunded_amount.amount_minor}")
        if od.state == ordm.ORDER_STATE_PENDING_PAYMENT:
            problems.append(f"order {oid}: still pending (its timeout is 4 s)")
    for t in TENANTS:
        # stock
        for sku in SKUS + [FLASH_SKU]:
            lv = call(i, "commerce.inventory.v1.InventoryService", "GetStock",
                      invs.GetStockRequest(sku=sku), invs.GetStockResponse, t).stock
            if lv.available + lv.reserved + lv.sold != lv.on_hand or lv.reserved != 0 or \
                    lv.on_hand != (STOCK if sku != FLASH_SKU else 1000):
                problems.append(f"{t} {sku}: available {lv.available} reserved {lv.reserved} "
                                f"sold {lv.sold} on hand {lv.on_hand}")
        inv_chk = call(i, "commerce.inventory.v1.InventoryService", "CheckInvariants",
                       invs.CheckInvariantsRequest(), invs.CheckInvariantsResponse, t)
        for v in inv_chk.violations:
            problems.append(f"{t} CheckInvariants: {v.sku} {v.description}")
        fl = call(i, "commerce.inventory.v1.InventoryService", "GetFlashSale",
                  invs.GetFlashSaleRequest(flash_sale_id=FLASH_IDS[t]), invs.GetFlashSaleResponse,
                  t).flash_sale
        if fl.sold + fl.reserved > FLASH_STOCK:
            problems.append(f"{t} flash sale oversold: {fl.sold} sold + {fl.reserved} reserved "
                            f"of {FLASH_STOCK}")
        # ledger
        accts = call(s, "commerce.settlement.v1.SettlementService", "ListAccounts",
                     stls.ListAccountsRequest(currency="CNY", page_size=500),
                     stls.ListAccountsResponse, t).accounts
        total = sum(a.pending_minor + a.available_minor + a.paying_minor + a.paid_out_minor
                    for a in accts)
        clearing = sum(a.available_minor + a.pending_minor for a in accts
                       if a.party.type == stl.PARTY_TYPE_CLEARING) if hasattr(
            stl, "PARTY_TYPE_CLEARING") else None
        mine = [od for oid, od in truth.items() if model.orders[oid]["tenant"] == t]
        net = sum(od.total_amount.amount_minor - od.refunded_amount.amount_minor
                  for od in mine if od.state in PAID_STATES)
        if total != 0:
            problems.append(f"{t} ledger: the accounts sum to {total}, not 0")
        if clearing is not None and clearing != -net:
            problems.append(f"{t} ledger: clearing {clearing}, want -(paid - refunded) = {-net}")
        # commission
        for ch in CHANNELS:
            sales = sum(od.total_amount.amount_minor - od.refunded_amount.amount_minor
                        for od in mine if od.state in PAID_STATES and od.channel_id == ch)
            sm = call(c, "commerce.commission.v1.CommissionService", "GetChannelSummary",
                      cmss.GetChannelSummaryRequest(channel_id=ch), cmss.GetChannelSummaryResponse,
                      t).summary
            if sm.period_sales.amount_minor != sales:
                problems.append(f"{t} {ch}: net sales {sm.period_sales.amount_minor}, orders say "
                                f"{sales}")
            elif sm.period_commission.amount_minor != commission_formula(sales):
                problems.append(f"{t} {ch}: commission {sm.period_commission.amount_minor}, the "
                                f"formula on {sales} says {commission_formula(sales)}")
        # the operator's own check of the same books
        cinv = call(c, "commerce.commission.v1.CommissionService", "CheckInvariants",
                    cmss.CheckInvariantsRequest(), cmss.CheckInvariantsResponse, t)
        for v in cinv.violations:
            problems.append(f"{t} commission CheckInvariants: {v.channel_id} {v.description}")
        # the partner feed: every event routed to the partner, received once by id
        schema_name = c.env["COMMISSION_SCHEMA"]
        routed = set(psql(f"SELECT event_id FROM {schema_name}.feed_events WHERE tenant_id = "
                          f"'{t}'").split())
        with receiver.lock:
            got = {k for k, v in receiver.ids.items() if v[0] == t}
            owned = {k for k, v in receiver.ids.items() if v[0] == t and v[1] not in CHANNELS[:2]}
            bad = list(receiver.bad)
        if routed - got:
            problems.append(f"{t} partner: {len(routed - got)} of {len(routed)} routed events "
                            "not received")
        if got - routed:
            problems.append(f"{t} partner: {len(got - routed)} events received that were not "
                            "routed to it")
        if bad:
            problems.append(f"partner: {len(bad)} deliveries refused by the receiver ({bad[0]})")
        if owned:
            problems.append(f"{t} partner: got events of channels it does not own")
    return problems


def main():
    global BIN
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=1000)
    ap.add_argument("--fault-seconds", type=int, default=60)
    ap.add_argument("--soak", action="store_true")
    args = ap.parse_args()
    BIN = os.environ.get("COMMERCE_BIN", os.path.join(ROOT, "build", "bin"))
    brokers = os.environ["KAFKA_BROKERS"]
    kafka_sh = os.path.join(ROOT, "scripts", "kafka.sh")
    pg_sh = os.path.join(ROOT, "scripts", "pg.sh")
    # restart the broker and postgres too: only when this run may (ctest
    # runs it alone: RUN_SERIAL) and they are the repo's own
    infra = os.environ.get("E2E_RESTART_INFRA") == "1"
    # the scripts act on the repo's own servers only without PG_DSN and
    # KAFKA_BROKERS; restart them only when those are the ones in use
    infra_env = {k: v for k, v in os.environ.items() if k not in ("PG_DSN", "KAFKA_BROKERS")}
    if infra:
        own_pg = subprocess.run([pg_sh, "dsn"], capture_output=True, text=True,
                                env=infra_env).stdout.strip()
        own_kafka = subprocess.run([kafka_sh, "bootstrap"], capture_output=True, text=True,
                                   env=infra_env).stdout.strip()
        if own_pg != os.environ["PG_DSN"] or own_kafka != brokers:
            print(f"  (not restarting postgres and the broker: PG_DSN / KAFKA_BROKERS are not "
                  f"the repo's own, {own_pg!r} / {own_kafka!r})", flush=True)
            infra = False
    topic = f"e2e.{RUN}"
    # the partners' webhook secrets sealed at rest, as deployed
    keys = f"/tmp/commerce-e2e-{RUN}.keys"
    with open(os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(f"e2e:{base64.b64encode(os.urandom(32)).decode()}\n")
    topics = [f"{topic}.order", f"{topic}.cms", f"{topic}.partner", f"{topic}.stl"]
    for t in topics:
        subprocess.run([kafka_sh, "topic", t, "3"], check=True, capture_output=True)
        subprocess.run([kafka_sh, "topic", f"{t}.dlq", "1"], check=True, capture_output=True)
    schema = None
    if jsonschema:
        with open(os.path.join(ROOT, "kafka", "partner", "schema",
                               "commission-event.v1.schema.json")) as f:
            schema = json.load(f)
    receiver = Receiver(schema)
    svcs = {}
    svcs["inventory"] = Service("inventory", {
        "INVENTORY_SCHEMA": f"e2e_inv_{RUN}", "INVENTORY_ORDER_TOPIC": f"{topic}.order",
        "INVENTORY_ORDER_GROUP": f"{topic}.inv", "KAFKA_BROKERS": brokers})
    svcs["order"] = Service("order", {
        "ORDER_SCHEMA": f"e2e_ord_{RUN}", "ORDER_TOPIC": f"{topic}.order",
        "ORDER_PAYMENT_TIMEOUT_S": "4", "ORDER_SWEEP_MS": "200", "KAFKA_BROKERS": brokers})
    svcs["order"].env["INVENTORY_TARGET"] = f"127.0.0.1:{svcs['inventory'].grpc}"
    svcs["settlement"] = Service("settlement", {
        "SETTLEMENT_SCHEMA": f"e2e_stl_{RUN}", "SETTLEMENT_ORDER_TOPIC": f"{topic}.order",
        "SETTLEMENT_ORDER_GROUP": f"{topic}.stl", "SETTLEMENT_TOPIC": f"{topic}.stl",
        "SETTLEMENT_COMMISSION_TOPIC": f"{topic}.cms", "SETTLEMENT_COMMISSION_GROUP":
        f"{topic}.stlc", "KAFKA_BROKERS": brokers})
    svcs["commission"] = Service("commission", {
        "COMMISSION_SCHEMA": f"e2e_cms_{RUN}", "COMMISSION_ORDER_TOPIC": f"{topic}.order",
        "COMMISSION_ORDER_GROUP": f"{topic}.cms", "COMMISSION_TOPIC": f"{topic}.cms",
        "COMMISSION_PARTNER_TOPIC": f"{topic}.partner", "COMMISSION_FEED_GROUP":
        f"{topic}.feed", "COMMISSION_WEBHOOK_ALLOW_HTTP": "on",
        "COMMISSION_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8", "COMMISSION_WEBHOOK_BACKOFF_MAX_MS":
        "2000", "COMMISSION_SECRETS_KEY_FILE": keys, "KAFKA_BROKERS": brokers})
    model = Model()
    rc = 1
    try:
        for sv in svcs.values():
            sv.start()
        for sv in svcs.values():
            sv.ready()
        print(f"== e2e {RUN}: four services, tenants {', '.join(TENANTS)}", flush=True)
        for t in TENANTS:
            seed(svcs, t, receiver)
        time.sleep(1.2)  # the flash sale starts
        t0 = time.time()
        out = load(svcs, model, args.orders, "calm")
        print(f"  load: {args.orders} orders in {time.time() - t0:.1f} s: "
              + ", ".join(f"{v} {k}" for k, v in sorted(out.items())), flush=True)
        time.sleep(5)  # the orders left to time out
        quiet_and_check(svcs, model, receiver, "calm")

        if args.fault_seconds > 0:
            stop = threading.Event()
            kills = []

            def chaos():
                # every service in turn (a fresh order each round), then,
                # when this run owns them, the broker and postgres
                rng = random.Random(7)
                victims = []
                while not stop.wait(rng.uniform(3, 5)):
                    if not victims:
                        victims = list(svcs)
                        rng.shuffle(victims)
                        if infra:
                            victims += ["kafka", "postgres"]
                    name = victims.pop(0)
                    kills.append(name)
                    if name in svcs:
                        sv = svcs[name]
                        sv.kill9()
                        time.sleep(rng.uniform(0.5, 2))
                        try:
                            sv.supervise()
                        except SystemExit as e:
                            fail(str(e))
                            return
                        continue
                    script = kafka_sh if name == "kafka" else pg_sh
                    r1 = subprocess.run([script, "stop"], capture_output=True, text=True,
                                        env=infra_env)
                    time.sleep(1)
                    # a start can fail while the old port is still held (a
                    # client's connection in TIME_WAIT): try again a while
                    for _ in range(30):
                        r2 = subprocess.run([script, "start"], capture_output=True, text=True,
                                            env=infra_env)
                        if r2.returncode == 0:
                            break
                        time.sleep(3)
                    if r1.returncode or r2.returncode:
                        fail(f"could not restart {name}: {r1.stderr[-300:]} {r2.stderr[-300:]}")
                        return

            def soak():
                t_soak = time.time()
                while not stop.wait(5):
                    cells = []
                    for n, sv in svcs.items():
                        lag = sv.metric_sum("consumer_lag")
                        back = sv.metric_sum("outbox_backlog")
                        cells.append(f"{n} {sv.rss_mb():.0f} MB lag {lag if lag is None else int(lag)}"
                                     f" outbox {back if back is None else int(back)}")
                    print(f"  soak {time.time() - t_soak:5.0f} s: " + " | ".join(cells),
                          flush=True)

            th = threading.Thread(target=chaos, daemon=True)
            th.start()
            if args.soak:
                threading.Thread(target=soak, daemon=True).start()
            t0 = time.time()
            batches = 0
            while time.time() - t0 < args.fault_seconds:
                out = load(svcs, model, 100, f"faults-{batches}")
                batches += 1
            stop.set()
            th.join()
            print(f"  faults: {batches * 100} orders in {time.time() - t0:.0f} s while these "
                  f"were killed (services: SIGKILL) and restarted: {', '.join(kills)}",
                  flush=True)
            time.sleep(5)
            quiet_and_check(svcs, model, receiver, "after faults")
        rc = 0 if not failures else 1
    finally:
        codes = {n: sv.stop() for n, sv in svcs.items()}
        for n, code in codes.items():
            if code not in (0, None):
                fail(f"commerce-{n} exited {code} on SIGTERM")
                rc = 1
        if not failures:
            for t in topics:
                subprocess.run([kafka_sh, "delete-topic", t], capture_output=True)
                subprocess.run([kafka_sh, "delete-topic", f"{t}.dlq"], capture_output=True)
            for sv in svcs.values():
                for key, val in sv.env.items():
                    if key.endswith("_SCHEMA"):
                        psql(f"DROP SCHEMA IF EXISTS {val} CASCADE")
        os.unlink(keys)
    print(f"== e2e: {'ok' if rc == 0 else f'{len(failures)} FAILURES'}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
