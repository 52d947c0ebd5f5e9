#!/usr/bin/python3
"""The quick start's guided demo (scripts/run.sh --demo, or on its own
against running services): seeds a demo tenant in all four services, drives
a short scenario and prints a one-screen summary.

  tenant      demo-<time>: a fresh one each run
  seed        a merchant with a split rule (platform 10 %, logistics partner
              5 %, a 0.30 % + 0.10 fee), the seed's tier table (5 % / 8 % /
              12 % by monthly sales) and two channels, stock for two SKUs and
              a flash sale of 20 units (one per buyer), a partner owning one
              channel with a signed webhook to a receiver inside this script
  scenario    orders paid, one left unpaid (it times out a minute later,
              while the services keep running), a partial refund, a
              flash-sale rush of 60 buyers
  summary     stock per SKU (and inventory's invariant check), orders by
              state, each party's balance, each channel's commission and
              tier, the partner events received (signatures checked)

Run with Debian's python3 (python3-grpcio, python3-protobuf) and the
message modules of the build (COMMERCE_PY_GEN, default build/gen/python).
Exit 0 when every step worked and the books agree.
"""
import argparse
import concurrent.futures
import hashlib
import hmac
import http.server
import json
import os
import sys
import threading
import time

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gen_dir():
    d = os.environ.get("COMMERCE_PY_GEN")
    for b in ([d] if d else []) + [os.path.join(ROOT, b, "gen", "python")
                                    for b in ("build", "build-asan", "build-dev")]:
        if b and os.path.isdir(os.path.join(b, "commerce", "order")):
            return b
    sys.exit("demo: no generated python modules (build first: scripts/run.sh builds them)")


sys.path.append(gen_dir())  # after site-packages: gen/python/grpc must not shadow grpc
from commerce.commission.v1 import commission_pb2 as cms  # noqa: E402
from commerce.commission.v1 import commission_service_pb2 as cmss  # noqa: E402
from commerce.common.v1 import money_pb2  # noqa: E402
from commerce.inventory.v1 import inventory_service_pb2 as invs  # noqa: E402
from commerce.order.v1 import order_pb2 as ordm  # noqa: E402
from commerce.order.v1 import order_service_pb2 as ords  # noqa: E402
from commerce.settlement.v1 import settlement_pb2 as stl  # noqa: E402
from commerce.settlement.v1 import settlement_service_pb2 as stls  # noqa: E402
from google.protobuf import duration_pb2, timestamp_pb2  # noqa: E402

MERCHANT = "m-demo"


def money(minor):
    return money_pb2.Money(amount_minor=minor, currency="CNY")


def yuan(minor):
    return f"{minor / 100:,.2f}"


class Client:
    """unary calls to one service, the tenant in the metadata"""

    def __init__(self, target, package, service, tenant):
        self.channel = grpc.insecure_channel(target)
        self.prefix = f"/{package}.{service}/"
        self.md = (("x-tenant-id", tenant),)

    def __call__(self, method, req, resp_cls, timeout=10):
        call = self.channel.unary_unary(self.prefix + method,
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=resp_cls.FromString)
        return call(req, metadata=self.md, timeout=timeout)


class Progress:
    def __init__(self):
        self.tty = sys.stdout.isatty()

    def __call__(self, text):
        if self.tty:
            print(f"\r\033[K  … {text}", end="", flush=True)
        else:
            print(f"  … {text}", flush=True)

    def done(self):
        if self.tty:
            print("\r\033[K", end="", flush=True)


# ---- the partner's webhook receiver (what a partner runs; see
# kafka/partner/receivers/ for the reference one) ----

class Receiver:
    def __init__(self):
        self.secret = None
        self.events = {}  # id -> type
        self.bad = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sig = self.headers.get("Commerce-Signature", "")
                parts = [p.split("=", 1) for p in sig.split(",") if "=" in p]
                t = next((v for k, v in parts if k == "t"), "")
                want = hmac.new((outer.secret or "").encode(), t.encode() + b"." + body,
                                hashlib.sha256).hexdigest()
                ok = any(k == "v1" and hmac.compare_digest(v, want) for k, v in parts)
                if ok:
                    ok = abs(time.time() - int(t or 0)) <= 300
                with outer.lock:
                    if ok:
                        ev = json.loads(body)
                        outer.events[ev["id"]] = ev["type"].rsplit(".", 1)[-1]
                    else:
                        outer.bad += 1
                self.send_response(204 if ok else 401)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    host = "127.0.0.1"
    ap.add_argument("--order", default=f"{host}:50051")
    ap.add_argument("--inventory", default=f"{host}:50052")
    ap.add_argument("--settlement", default=f"{host}:50053")
    ap.add_argument("--commission", default=f"{host}:50054")
    ap.add_argument("--tenant", default="demo-" + time.strftime("%H%M%S"))
    args = ap.parse_args()
    tenant = args.tenant
    order = Client(args.order, "commerce.order.v1", "OrderService", tenant)
    inv = Client(args.inventory, "commerce.inventory.v1", "InventoryService", tenant)
    settle = Client(args.settlement, "commerce.settlement.v1", "SettlementService", tenant)
    comm = Client(args.commission, "commerce.commission.v1", "CommissionService", tenant)
    say = Progress()
    print(f"== demo: tenant {tenant}")

    # ---- seed ----
    say("settlement: tenant settings and the merchant's split rule")
    settle("PutTenantSettings", stls.PutTenantSettingsRequest(
        request_id="demo-settings", settings=stl.TenantSettings(
            time_zone="Asia/Shanghai", max_split_bps=10000, run_at="02:00")),
        stls.PutTenantSettingsResponse)
    settle("PutSplitRule", stls.PutSplitRuleRequest(request_id="demo-rule", rule=stl.SplitRule(
        merchant_id=MERCHANT, currency="CNY",
        receivers=[stl.SplitReceiver(type=stl.PARTY_TYPE_PLATFORM, receiver_id="platform",
                                     share_bps=1000),
                   stl.SplitReceiver(type=stl.PARTY_TYPE_SERVICE_PROVIDER,
                                     receiver_id="sp-logistics", share_bps=500,
                                     settle_delay_days=1)],
        fee=stl.FeeModel(bps=30, fixed_minor=10, bearer=stl.FEE_BEARER_PRO_RATA))),
        stls.PutSplitRuleResponse)
    say("commission: the seed's tier table and two channels")
    comm("PutTierSchedule", cmss.PutTierScheduleRequest(
        request_id="demo-tiers", schedule=cms.TierSchedule(
            tier_schedule_id="seed", name="the seed's table", currency="CNY",
            period=cms.PERIOD_TYPE_MONTH, time_zone="Asia/Shanghai", mode=cms.TIER_MODE_MARGINAL,
            channel_types=[cms.CHANNEL_TYPE_COMMUNITY_LEADER],
            tiers=[cms.Tier(from_sales=money(0), rate_bps=500),
                   cms.Tier(from_sales=money(1000000), rate_bps=800),
                   cms.Tier(from_sales=money(5000000), rate_bps=1200)])),
        cmss.PutTierScheduleResponse)
    channels = ["ch-alice", "ch-bob"]
    for ch in channels:
        comm("PutChannel", cmss.PutChannelRequest(request_id=f"demo-{ch}", channel=cms.Channel(
            channel_id=ch, name=ch[3:].title() + "'s group", type=cms.CHANNEL_TYPE_COMMUNITY_LEADER,
            state=cms.CHANNEL_STATE_ACTIVE, tier_schedule_id="seed")), cmss.PutChannelResponse)
    receiver = Receiver()
    say("commission: partner p-alice owns ch-alice, webhook to this script")
    try:
        r = comm("PutPartner", cmss.PutPartnerRequest(request_id="demo-partner", partner=cms.Partner(
            partner_id="p-alice", name="Alice", channel_ids=["ch-alice"],
            webhook=cms.PartnerWebhook(
                enabled=True, url=f"http://127.0.0.1:{receiver.port}/commerce")),
        ), cmss.PutPartnerResponse)
        receiver.secret = r.webhook_secret
    except grpc.RpcError as e:
        print(f"\n  (no partner webhook: {e.details()}; run.sh allows loopback webhooks)")
    say("inventory: stock and a flash sale")
    skus = {"SKU-TEA": (120, 12800), "SKU-MUG": (60, 5900)}
    for sku, (n, _) in skus.items():
        inv("SetStock", invs.SetStockRequest(request_id=f"demo-stock-{sku}", sku=sku, available=n,
                                             reason="demo seed", actor="demo"),
            invs.SetStockResponse)
    inv("SetStock", invs.SetStockRequest(request_id="demo-stock-flash", sku="SKU-FLASH",
                                         available=500, reason="demo seed", actor="demo"),
        invs.SetStockResponse)
    now = time.time()
    flash_start = int(now) + 2
    flash_id = inv("ConfigureFlashSale", invs.ConfigureFlashSaleRequest(
        request_id="demo-flash", sku="SKU-FLASH",
        starts_at=timestamp_pb2.Timestamp(seconds=flash_start),
        ends_at=timestamp_pb2.Timestamp(seconds=int(now) + 3600), sale_stock=20,
        per_buyer_limit=1, actor="demo"), invs.ConfigureFlashSaleResponse).flash_sale.flash_sale_id

    # ---- scenario ----
    def create(i, buyer, ch, lines, timeout_s=None):
        req = ords.CreateOrderRequest(
            request_id=f"demo-order-{i}", buyer_id=buyer, merchant_id=MERCHANT, channel_id=ch,
            currency="CNY", lines=[ords.CreateOrderLine(sku=s, quantity=q,
                                                        unit_price=money(p))
                                   for s, q, p in lines])
        if timeout_s:
            req.payment_timeout.CopyFrom(duration_pb2.Duration(seconds=timeout_s))
        return order("CreateOrder", req, ords.CreateOrderResponse).order

    def pay(o):
        order("MarkPaid", ords.MarkPaidRequest(payment_id=f"pay-{o.order_id}", order_id=o.order_id,
                                               amount=o.total_amount, provider="alipay"),
              ords.MarkPaidResponse)

    paid = []
    for i in range(8):
        say(f"orders: {i + 1} of 8 created and paid")
        ch = channels[i % 2]
        lines = [("SKU-TEA", 1 + i % 3, 12800)] + ([("SKU-MUG", 2, 5900)] if i % 2 else [])
        o = create(i, f"buyer-{i}", ch, lines)
        pay(o)
        paid.append(o)
    say("orders: one left unpaid, payment timeout 1 minute (the shortest allowed)")
    unpaid = create(100, "buyer-slow", "ch-bob", [("SKU-MUG", 3, 5900)], timeout_s=60)
    say("orders: a partial refund of 50.00")
    order("RefundOrder", ords.RefundOrderRequest(
        refund_id="demo-refund-1", order_id=paid[0].order_id, scope=ordm.REFUND_SCOPE_AMOUNT,
        amount=money(5000), reason="a damaged box"), ords.RefundOrderResponse)

    while time.time() < flash_start + 0.2:
        say("flash sale: waiting for it to start")
        time.sleep(0.1)
    say("flash sale: 60 buyers rush 20 units")
    outcome = {}

    def rush(b):
        try:
            o = create(1000 + b, f"rusher-{b}", "ch-alice", [("SKU-FLASH", 1, 990)])
            pay(o)
            return "bought"
        except grpc.RpcError as e:
            return f"refused ({e.details()})"

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        for r in pool.map(rush, range(60)):
            outcome[r] = outcome.get(r, 0) + 1
    flash_paid = outcome.get("bought", 0)

    # ---- the asynchronous effects ----
    n_commissions = len(paid) + flash_paid
    deadline = time.time() + 60
    state = {}
    while time.time() < deadline:
        got = 0
        for ch in channels:
            r = comm("ListCommissions", cmss.ListCommissionsRequest(channel_id=ch, page_size=500),
                     cmss.ListCommissionsResponse)
            got += len(r.commissions)
        st = order("GetOrder", ords.GetOrderRequest(order_id=unpaid.order_id),
                   ords.GetOrderResponse).order.state
        state = {"commissions": got, "unpaid": st}
        say(f"waiting for the events: {got} of {n_commissions} commissions, "
            f"{len(receiver.events)} partner events")
        if got >= n_commissions and \
                (receiver.secret is None or len(receiver.events) >= got // 2):
            break
        time.sleep(0.5)
    say.done()

    # ---- summary ----
    ok = True
    print("== stock")
    for sku in list(skus) + ["SKU-FLASH"]:
        s = inv("GetStock", invs.GetStockRequest(sku=sku), invs.GetStockResponse).stock
        print(f"  {sku:10} available {s.available:4}  reserved {s.reserved:3}  sold {s.sold:3}"
              f"  on hand {s.on_hand:4}")
    chk = inv("CheckInvariants", invs.CheckInvariantsRequest(), invs.CheckInvariantsResponse)
    fs = inv("GetFlashSale", invs.GetFlashSaleRequest(flash_sale_id=flash_id),
             invs.GetFlashSaleResponse).flash_sale
    violations = len(chk.violations) if hasattr(chk, "violations") else 0
    print(f"  flash sale: {fs.sold} sold of {fs.sale_stock}, {fs.reserved} reserved; the rush: "
          + ", ".join(f"{v} {k}" for k, v in sorted(outcome.items()))
          + f"; invariants: {'ok' if violations == 0 else f'{violations} VIOLATIONS'}")
    ok = ok and violations == 0 and fs.sold + fs.reserved <= fs.sale_stock
    print("== orders")
    counts = {}
    for o in paid + [unpaid]:
        s = order("GetOrder", ords.GetOrderRequest(order_id=o.order_id), ords.GetOrderResponse)
        name = ordm.OrderState.Name(s.order.state)[12:].lower()
        counts[name] = counts.get(name, 0) + 1
    counts["paid (flash sale)"] = flash_paid
    print("  " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    dl = unpaid.payment_deadline.seconds
    print(f"  the unpaid order: {ordm.OrderState.Name(state.get('unpaid', 0))[12:].lower()}; "
          f"its payment deadline is {time.strftime('%H:%M:%S', time.localtime(dl))}, then the "
          "sweeper cancels it and its stock returns (GetOrder / GetStock SKU-MUG to see)")
    print("== balances (settlement ledger, CNY)")
    accts = settle("ListAccounts", stls.ListAccountsRequest(currency="CNY", page_size=100),
                   stls.ListAccountsResponse).accounts
    total = 0
    for a in sorted(accts, key=lambda a: (a.party.type, a.party.id)):
        total += a.pending_minor + a.available_minor + a.paying_minor
        print(f"  {stl.PartyType.Name(a.party.type)[11:].lower():18} {a.party.id:13}"
              f" pending {yuan(a.pending_minor):>10}  available {yuan(a.available_minor):>10}")
    print(f"  double entry: the accounts sum to {yuan(total)} (clearing holds what the payment "
          "provider still owes)")
    ok = ok and total == 0
    print("== commission")
    for ch in channels:
        s = comm("GetChannelSummary", cmss.GetChannelSummaryRequest(channel_id=ch),
                 cmss.GetChannelSummaryResponse).summary
        print(f"  {ch:9} sales {yuan(s.period_sales.amount_minor):>10} in {s.period_orders:3} orders"
              f"  commission {yuan(s.period_commission.amount_minor):>8}"
              f"  at {s.current_rate_bps / 100:g} %,"
              f" {yuan(s.sales_to_next_tier.amount_minor)} more sales to"
              f" {s.next_rate_bps / 100:g} %")
    ok = ok and state.get("commissions", 0) >= n_commissions
    if receiver.secret:
        by_type = {}
        for t in receiver.events.values():
            by_type[t] = by_type.get(t, 0) + 1
        print(f"== partner p-alice (webhook, signatures checked): {len(receiver.events)} events "
              f"({', '.join(f'{v} {k}' for k, v in sorted(by_type.items()))}); "
              f"{receiver.bad} refused")
        ok = ok and receiver.bad == 0 and len(receiver.events) > 0
    print(f"== {'ok' if ok else 'SOMETHING IS OFF (see above)'}: the services keep running; try "
          f"grpcurl or the admin ports' /metrics (tenant {tenant})")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as e:
        print(f"\ndemo: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)
