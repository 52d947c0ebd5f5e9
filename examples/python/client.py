"""The commerce suite called from Python (grpcio), as a monolith would.

Sets stock, a split rule, a tier schedule and a channel; creates an order
(retried once with the same request_id), pays it, then reads the payment's
split from settlement and the channel's commission from commission (both
arrive through Kafka, so it polls with a deadline). Also shows how to read
the google.rpc.Status details of an expected error. Prints a transcript and
exits 0 only if every step worked and the numbers agree.

Stubs: examples/python/generate.sh OUT (python -m grpc_tools.protoc), then
PYTHONPATH=OUT python client.py. Targets from ORDER_TARGET, INVENTORY_TARGET,
SETTLEMENT_TARGET, COMMISSION_TARGET (default: the quick start's ports);
TENANT (default: a new one per run, so reruns never collide).
"""
import os
import sys
import time
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from commerce.commission.v1 import commission_pb2 as cms
from commerce.commission.v1 import commission_service_pb2 as cms_svc
from commerce.commission.v1 import commission_service_pb2_grpc as cms_grpc
from commerce.common.v1 import money_pb2
from commerce.inventory.v1 import inventory_service_pb2 as inv_svc
from commerce.inventory.v1 import inventory_service_pb2_grpc as inv_grpc
from commerce.order.v1 import order_pb2
from commerce.order.v1 import order_service_pb2 as ord_svc
from commerce.order.v1 import order_service_pb2_grpc as ord_grpc
from commerce.settlement.v1 import settlement_pb2 as stl
from commerce.settlement.v1 import settlement_service_pb2 as stl_svc
from commerce.settlement.v1 import settlement_service_pb2_grpc as stl_grpc

CURRENCY = "CNY"
UNIT_PRICE = 5000  # 50.00 CNY
QUANTITY = 2  # the order: 100.00 CNY
FEE_BPS, FEE_FIXED = 30, 10  # the provider's fee: 0.3 % + 0.10
PLATFORM_BPS, PROVIDER_BPS = 1000, 500  # the split: 10 % and 5 % of the net
COMMISSION_BPS = 500  # the channel's tier schedule: 5 % from the first fen
# the commission the checks expect; a different value makes the run fail
# (how the test of this example is shown to fail)
EXPECT_BPS = int(os.environ.get("EXAMPLE_EXPECT_COMMISSION_BPS", COMMISSION_BPS))
POLL_SECONDS = float(os.environ.get("EXAMPLE_POLL_SECONDS", "30"))

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.ABORTED}


def money(minor):
    return money_pb2.Money(amount_minor=minor, currency=CURRENCY)


def new_key():
    """One idempotency key per logical operation (the README recommends a
    UUIDv7; any unique 1-64 characters of [A-Za-z0-9._:-] will do)."""
    return str(uuid.uuid4())


class Client:
    def __init__(self, tenant):
        def target(name, port):
            return os.environ.get(name, "127.0.0.1:%d" % port)

        self.channels = [grpc.insecure_channel(target(n, p)) for n, p in (
            ("ORDER_TARGET", 50051), ("INVENTORY_TARGET", 50052),
            ("SETTLEMENT_TARGET", 50053), ("COMMISSION_TARGET", 50054))]
        self.order = ord_grpc.OrderServiceStub(self.channels[0])
        self.inventory = inv_grpc.InventoryServiceStub(self.channels[1])
        self.settlement = stl_grpc.SettlementServiceStub(self.channels[2])
        self.commission = cms_grpc.CommissionServiceStub(self.channels[3])
        # AUTH_MODE=off: the tenant is this header (with auth on, send
        # "authorization: Bearer <jwt>" whose tid claim names the tenant)
        self.metadata = (("x-tenant-id", tenant),)

    def call(self, method, request, attempts=4):
        """Calls method, retrying what the error model says is retryable
        with the same request, hence the same idempotency key."""
        for attempt in range(attempts):
            try:
                return method(request, metadata=self.metadata, timeout=10)
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or attempt == attempts - 1:
                    raise
                time.sleep(0.2 * 2 ** attempt)


def explain(err):
    """(code, reason, fields) of a failed call, from the google.rpc.Status
    in its grpc-status-details-bin trailer."""
    st = rpc_status.from_call(err)
    reason, fields = "", []
    if st is not None:
        for any_ in st.details:
            if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_.Unpack(info)
                reason = info.reason
            elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                any_.Unpack(bad)
                fields = [v.field for v in bad.field_violations]
    return err.code(), reason, fields


def poll(what, fetch):
    """fetch() until it returns something, for at most POLL_SECONDS."""
    deadline = time.monotonic() + POLL_SECONDS
    while True:
        got = fetch()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("%s did not appear within %.0f s" % (what, POLL_SECONDS))
        time.sleep(0.2)


def check(ok, what):
    if not ok:
        raise AssertionError(what)


def main():
    tenant = os.environ.get("TENANT") or "example-py-" + uuid.uuid4().hex[:12]
    c = Client(tenant)
    merchant, channel, sku, schedule = "m-1", "ch-1", "sku-1", "tiers-1"
    print("tenant %s" % tenant)

    r = c.call(c.inventory.SetStock, inv_svc.SetStockRequest(
        request_id=new_key(), sku=sku, available=10, reason="example: initial stock",
        actor="example-python"))
    print("1. SetStock %s available=%d" % (r.stock.sku, r.stock.available))

    rule = stl.SplitRule(
        merchant_id=merchant, currency=CURRENCY,
        receivers=[
            stl.SplitReceiver(type=stl.PARTY_TYPE_PLATFORM, receiver_id="platform",
                              share_bps=PLATFORM_BPS),
            stl.SplitReceiver(type=stl.PARTY_TYPE_SERVICE_PROVIDER, receiver_id="sp-1",
                              share_bps=PROVIDER_BPS, settle_delay_days=1)],
        fee=stl.FeeModel(bps=FEE_BPS, fixed_minor=FEE_FIXED, bearer=stl.FEE_BEARER_PRO_RATA))
    r = c.call(c.settlement.PutSplitRule,
               stl_svc.PutSplitRuleRequest(request_id=new_key(), rule=rule))
    print("2. PutSplitRule %s v%d: platform %d bps, sp-1 %d bps (T+1), fee %d bps + %d" % (
        r.rule.merchant_id, r.rule.version, PLATFORM_BPS, PROVIDER_BPS, FEE_BPS, FEE_FIXED))

    r = c.call(c.commission.PutTierSchedule, cms_svc.PutTierScheduleRequest(
        request_id=new_key(), schedule=cms.TierSchedule(
            tier_schedule_id=schedule, name="example schedule", currency=CURRENCY,
            period=cms.PERIOD_TYPE_MONTH, time_zone="Asia/Shanghai",
            tiers=[cms.Tier(from_sales=money(0), rate_bps=COMMISSION_BPS)],
            mode=cms.TIER_MODE_MARGINAL, payer=cms.COMMISSION_PAYER_MERCHANT)))
    print("3. PutTierSchedule %s rev %d: %d bps" % (
        r.schedule.tier_schedule_id, r.schedule.revision, COMMISSION_BPS))
    r = c.call(c.commission.PutChannel, cms_svc.PutChannelRequest(
        request_id=new_key(), channel=cms.Channel(
            channel_id=channel, name="example channel", type=cms.CHANNEL_TYPE_AFFILIATE,
            state=cms.CHANNEL_STATE_ACTIVE, tier_schedule_id=schedule)))
    print("4. PutChannel %s rev %d" % (r.channel.channel_id, r.channel.revision))

    def create_request(request_id, quantity):
        return ord_svc.CreateOrderRequest(
            request_id=request_id, buyer_id="buyer-1", merchant_id=merchant,
            channel_id=channel, currency=CURRENCY,
            lines=[ord_svc.CreateOrderLine(sku=sku, quantity=quantity,
                                           unit_price=money(UNIT_PRICE))])

    # an expected error, decoded: INVALID_ARGUMENT naming the field
    try:
        c.call(c.order.CreateOrder, create_request(new_key(), 0))
        raise AssertionError("CreateOrder with quantity 0 succeeded")
    except grpc.RpcError as e:
        code, reason, fields = explain(e)
        print("5. CreateOrder quantity=0 -> %s reason=%s field=%s" % (
            code.name, reason, ",".join(fields)))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and reason == "INVALID_ARGUMENT"
              and fields == ["lines[0].quantity"], "unexpected error details")

    # one key for the logical operation "create this order"; a retry (here:
    # as if the first reply had been lost) sends the same key and gets the
    # same order back, and reserves nothing twice
    key = new_key()
    first = c.call(c.order.CreateOrder, create_request(key, QUANTITY)).order
    again = c.call(c.order.CreateOrder, create_request(key, QUANTITY)).order
    total = first.total_amount.amount_minor
    print("6. CreateOrder request_id=%s -> %s %s total=%d; retried -> %s" % (
        key, first.order_id, order_pb2.OrderState.Name(first.state), total, again.order_id))
    check(again.order_id == first.order_id, "the retry made another order")
    check(total == QUANTITY * UNIT_PRICE, "total %d" % total)

    paid = c.call(c.order.MarkPaid, ord_svc.MarkPaidRequest(
        payment_id=new_key(), order_id=first.order_id, amount=money(total),
        provider="manual")).order
    print("7. MarkPaid -> %s" % order_pb2.OrderState.Name(paid.state))
    check(paid.state == order_pb2.ORDER_STATE_PAID, "not PAID")

    def split_entry():
        r = c.call(c.settlement.ListJournalEntries,
                   stl_svc.ListJournalEntriesRequest(order_id=first.order_id))
        return [e for e in r.entries if e.kind == stl.ENTRY_KIND_SPLIT]

    entry = poll("the split", split_entry)[0]
    parts = {}
    print("8. split (journal entry %d, rule v%d):" % (entry.entry_id, entry.rule_version))
    for p in entry.postings:
        name = stl.PartyType.Name(p.party.type)[len("PARTY_TYPE_"):]
        print("     %-16s %-8s %-16s %7d" % (name, p.party.id, stl.Bucket.Name(p.bucket), p.amount_minor))
        parts[name] = parts.get(name, 0) + p.amount_minor
    fee = (total * FEE_BPS + 5000) // 10000 + FEE_FIXED
    net = total - fee
    want = {"CLEARING": -total, "PROVIDER_FEE": fee,
            "PLATFORM": net * PLATFORM_BPS // 10000,
            "SERVICE_PROVIDER": net * PROVIDER_BPS // 10000}
    want["MERCHANT"] = net - want["PLATFORM"] - want["SERVICE_PROVIDER"]
    received = sum(v for v in parts.values() if v > 0)
    print("   parts sum to %d of %d paid" % (received, total))
    check(sum(parts.values()) == 0 and received == total, "the split does not balance")
    check(parts == want, "split %s, expected %s" % (parts, want))

    def commissions():
        r = c.call(c.commission.ListCommissions,
                   cms_svc.ListCommissionsRequest(channel_id=channel))
        return [m for m in r.commissions if m.order_id == first.order_id]

    com = poll("the commission", commissions)[0]
    expected = total * EXPECT_BPS // 10000
    print("9. commission %s on %d: %d (%s), expected %d bps = %d" % (
        com.channel_id, com.order_amount.amount_minor, com.amount.amount_minor,
        cms.CommissionState.Name(com.state), EXPECT_BPS, expected))
    check(com.amount.amount_minor == expected, "commission differs")

    for ch in c.channels:
        ch.close()
    print("ok")


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, grpc.RpcError) as e:
        if isinstance(e, grpc.RpcError):
            code, reason, fields = explain(e)
            e = "%s %s %s: %s" % (code.name, reason, ",".join(fields), e.details())
        print("FAILED: %s" % e)
        sys.exit(1)
