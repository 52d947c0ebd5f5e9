package example;

import com.commerce.commission.v1.ChannelState;
import com.commerce.commission.v1.ChannelType;
import com.commerce.commission.v1.Commission;
import com.commerce.commission.v1.CommissionPayer;
import com.commerce.commission.v1.CommissionServiceGrpc;
import com.commerce.commission.v1.ListCommissionsRequest;
import com.commerce.commission.v1.PeriodType;
import com.commerce.commission.v1.PutChannelRequest;
import com.commerce.commission.v1.PutTierScheduleRequest;
import com.commerce.commission.v1.Tier;
import com.commerce.commission.v1.TierMode;
import com.commerce.commission.v1.TierSchedule;
import com.commerce.common.v1.Money;
import com.commerce.inventory.v1.InventoryServiceGrpc;
import com.commerce.inventory.v1.SetStockRequest;
import com.commerce.inventory.v1.StockLevel;
import com.commerce.order.v1.CreateOrderLine;
import com.commerce.order.v1.CreateOrderRequest;
import com.commerce.order.v1.MarkPaidRequest;
import com.commerce.order.v1.Order;
import com.commerce.order.v1.OrderServiceGrpc;
import com.commerce.order.v1.OrderState;
import com.commerce.settlement.v1.EntryKind;
import com.commerce.settlement.v1.FeeBearer;
import com.commerce.settlement.v1.FeeModel;
import com.commerce.settlement.v1.JournalEntry;
import com.commerce.settlement.v1.ListJournalEntriesRequest;
import com.commerce.settlement.v1.PartyType;
import com.commerce.settlement.v1.Posting;
import com.commerce.settlement.v1.PutSplitRuleRequest;
import com.commerce.settlement.v1.SettlementServiceGrpc;
import com.commerce.settlement.v1.SplitReceiver;
import com.commerce.settlement.v1.SplitRule;
import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.AbstractStub;
import io.grpc.stub.MetadataUtils;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.TreeMap;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;

/**
 * The commerce suite called from Java (grpc-java), as a monolith would.
 *
 * <p>Sets stock, a split rule, a tier schedule and a channel; creates an order (retried once
 * with the same request_id), pays it, then reads the payment's split from settlement and the
 * channel's commission from commission (both arrive through Kafka, so it polls with a
 * deadline). Also shows how to read the google.rpc.Status details of an expected error. Prints
 * a transcript and exits 0 only if every step worked and the numbers agree.
 */
public final class Client {
  static final String CURRENCY = "CNY";
  static final long UNIT_PRICE = 5000; // 50.00 CNY
  static final long QUANTITY = 2; // the order: 100.00 CNY
  static final int FEE_BPS = 30; // the provider's fee: 0.3 % + 0.10
  static final long FEE_FIXED = 10;
  static final int PLATFORM_BPS = 1000; // the split: 10 % and 5 % of the net
  static final int PROVIDER_BPS = 500;
  static final int COMMISSION_BPS = 500; // the channel's tier schedule: 5 % from the first fen

  static final class Failed extends RuntimeException {
    Failed(String what) {
      super(what);
    }
  }

  static Money money(long minor) {
    return Money.newBuilder().setAmountMinor(minor).setCurrency(CURRENCY).build();
  }

  /**
   * One idempotency key per logical operation (the README recommends a UUIDv7; any unique 1-64
   * characters of [A-Za-z0-9._:-] will do).
   */
  static String newKey() {
    return UUID.randomUUID().toString();
  }

  static String env(String name, String dflt) {
    String v = System.getenv(name);
    return v == null || v.isEmpty() ? dflt : v;
  }

  /** A stub with a fresh 10 s deadline for one call. */
  static <S extends AbstractStub<S>> S deadline(S stub) {
    return stub.withDeadlineAfter(10, TimeUnit.SECONDS);
  }

  /**
   * Runs f, retrying what the error model says is retryable with the same request, hence the
   * same idempotency key.
   */
  static <T> T call(Supplier<T> f) {
    for (int attempt = 0; ; attempt++) {
      try {
        return f.get();
      } catch (StatusRuntimeException e) {
        Status.Code code = e.getStatus().getCode();
        boolean retryable =
            code == Status.Code.UNAVAILABLE
                || code == Status.Code.DEADLINE_EXCEEDED
                || code == Status.Code.ABORTED;
        if (!retryable || attempt == 3) {
          throw e;
        }
        try {
          Thread.sleep(200L << attempt);
        } catch (InterruptedException ie) {
          throw e;
        }
      }
    }
  }

  /** The ErrorInfo reason and BadRequest fields of a failed call, from its google.rpc.Status. */
  record Explained(Status.Code code, String reason, List<String> fields) {}

  static Explained explain(Throwable t) {
    com.google.rpc.Status st = StatusProto.fromThrowable(t);
    String reason = "";
    List<String> fields = new ArrayList<>();
    if (st != null) {
      try {
        for (Any d : st.getDetailsList()) {
          if (d.is(ErrorInfo.class)) {
            reason = d.unpack(ErrorInfo.class).getReason();
          } else if (d.is(BadRequest.class)) {
            for (BadRequest.FieldViolation v : d.unpack(BadRequest.class).getFieldViolationsList()) {
              fields.add(v.getField());
            }
          }
        }
      } catch (InvalidProtocolBufferException e) {
        throw new Failed("undecodable error details: " + e);
      }
    }
    return new Explained(Status.fromThrowable(t).getCode(), reason, fields);
  }

  /** fetch until it returns something, for at most EXAMPLE_POLL_SECONDS (30). */
  static <T> T poll(String what, Supplier<Optional<T>> fetch) throws InterruptedException {
    double seconds = Double.parseDouble(env("EXAMPLE_POLL_SECONDS", "30"));
    long deadline = System.nanoTime() + (long) (seconds * 1e9);
    while (true) {
      Optional<T> got = fetch.get();
      if (got.isPresent()) {
        return got.get();
      }
      if (System.nanoTime() > deadline) {
        throw new Failed(what + " did not appear within " + seconds + " s");
      }
      Thread.sleep(200);
    }
  }

  static void check(boolean ok, String what) {
    if (!ok) {
      throw new Failed(what);
    }
  }

  public static void main(String[] args) throws Exception {
    int rc;
    try {
      run();
      rc = 0;
    } catch (StatusRuntimeException e) {
      Explained x = explain(e);
      System.out.printf(
          "FAILED: %s %s %s: %s%n",
          x.code(), x.reason(), String.join(",", x.fields()), e.getStatus().getDescription());
      rc = 1;
    } catch (Failed e) {
      System.out.println("FAILED: " + e.getMessage());
      rc = 1;
    }
    System.out.flush();
    System.exit(rc);
  }

  static void run() throws Exception {
    // the commission the checks expect; a different value makes the run fail (how the test of
    // this example is shown to fail)
    long expectBps =
        Long.parseLong(env("EXAMPLE_EXPECT_COMMISSION_BPS", Integer.toString(COMMISSION_BPS)));
    String tenant =
        env("TENANT", "example-java-" + newKey().replace("-", "").substring(0, 12));
    System.out.println("tenant " + tenant);
    // AUTH_MODE=off: the tenant is this header (with auth on, send "authorization: Bearer <jwt>"
    // whose tid claim names the tenant)
    Metadata md = new Metadata();
    md.put(Metadata.Key.of("x-tenant-id", Metadata.ASCII_STRING_MARSHALLER), tenant);
    var tenantHeader = MetadataUtils.newAttachHeadersInterceptor(md);
    List<ManagedChannel> channels = new ArrayList<>();
    ManagedChannel orderCh = open(channels, "ORDER_TARGET", 50051);
    ManagedChannel invCh = open(channels, "INVENTORY_TARGET", 50052);
    ManagedChannel stlCh = open(channels, "SETTLEMENT_TARGET", 50053);
    ManagedChannel cmsCh = open(channels, "COMMISSION_TARGET", 50054);
    var orders = OrderServiceGrpc.newBlockingStub(orderCh).withInterceptors(tenantHeader);
    var inventory = InventoryServiceGrpc.newBlockingStub(invCh).withInterceptors(tenantHeader);
    var settlement = SettlementServiceGrpc.newBlockingStub(stlCh).withInterceptors(tenantHeader);
    var commission = CommissionServiceGrpc.newBlockingStub(cmsCh).withInterceptors(tenantHeader);
    String merchant = "m-1", channel = "ch-1", sku = "sku-1", schedule = "tiers-1";

    SetStockRequest stockReq =
        SetStockRequest.newBuilder()
            .setRequestId(newKey())
            .setSku(sku)
            .setAvailable(10)
            .setReason("example: initial stock")
            .setActor("example-java")
            .build();
    StockLevel stock = call(() -> deadline(inventory).setStock(stockReq)).getStock();
    System.out.printf("1. SetStock %s available=%d%n", stock.getSku(), stock.getAvailable());

    SplitRule ruleIn =
        SplitRule.newBuilder()
            .setMerchantId(merchant)
            .setCurrency(CURRENCY)
            .addReceivers(
                SplitReceiver.newBuilder()
                    .setType(PartyType.PARTY_TYPE_PLATFORM)
                    .setReceiverId("platform")
                    .setShareBps(PLATFORM_BPS))
            .addReceivers(
                SplitReceiver.newBuilder()
                    .setType(PartyType.PARTY_TYPE_SERVICE_PROVIDER)
                    .setReceiverId("sp-1")
                    .setShareBps(PROVIDER_BPS)
                    .setSettleDelayDays(1))
            .setFee(
                FeeModel.newBuilder()
                    .setBps(FEE_BPS)
                    .setFixedMinor(FEE_FIXED)
                    .setBearer(FeeBearer.FEE_BEARER_PRO_RATA))
            .build();
    PutSplitRuleRequest ruleReq =
        PutSplitRuleRequest.newBuilder().setRequestId(newKey()).setRule(ruleIn).build();
    SplitRule rule = call(() -> deadline(settlement).putSplitRule(ruleReq)).getRule();
    System.out.printf(
        "2. PutSplitRule %s v%d: platform %d bps, sp-1 %d bps (T+1), fee %d bps + %d%n",
        rule.getMerchantId(), rule.getVersion(), PLATFORM_BPS, PROVIDER_BPS, FEE_BPS, FEE_FIXED);

    PutTierScheduleRequest tiersReq =
        PutTierScheduleRequest.newBuilder()
            .setRequestId(newKey())
            .setSchedule(
                TierSchedule.newBuilder()
                    .setTierScheduleId(schedule)
                    .setName("example schedule")
                    .setCurrency(CURRENCY)
                    .setPeriod(PeriodType.PERIOD_TYPE_MONTH)
                    .setTimeZone("Asia/Shanghai")
                    .addTiers(Tier.newBuilder().setFromSales(money(0)).setRateBps(COMMISSION_BPS))
                    .setMode(TierMode.TIER_MODE_MARGINAL)
                    .setPayer(CommissionPayer.COMMISSION_PAYER_MERCHANT))
            .build();
    TierSchedule tiers = call(() -> deadline(commission).putTierSchedule(tiersReq)).getSchedule();
    System.out.printf(
        "3. PutTierSchedule %s rev %d: %d bps%n",
        tiers.getTierScheduleId(), tiers.getRevision(), COMMISSION_BPS);
    PutChannelRequest chReq =
        PutChannelRequest.newBuilder()
            .setRequestId(newKey())
            .setChannel(
                com.commerce.commission.v1.Channel.newBuilder()
                    .setChannelId(channel)
                    .setName("example channel")
                    .setType(ChannelType.CHANNEL_TYPE_AFFILIATE)
                    .setState(ChannelState.CHANNEL_STATE_ACTIVE)
                    .setTierScheduleId(schedule))
            .build();
    var ch = call(() -> deadline(commission).putChannel(chReq)).getChannel();
    System.out.printf("4. PutChannel %s rev %d%n", ch.getChannelId(), ch.getRevision());

    // an expected error, decoded: INVALID_ARGUMENT naming the field
    CreateOrderRequest bad = createRequest(newKey(), merchant, channel, sku, 0);
    try {
      call(() -> deadline(orders).createOrder(bad));
      throw new Failed("CreateOrder with quantity 0 succeeded");
    } catch (StatusRuntimeException e) {
      Explained x = explain(e);
      System.out.printf(
          "5. CreateOrder quantity=0 -> %s reason=%s field=%s%n",
          x.code(), x.reason(), String.join(",", x.fields()));
      check(
          x.code() == Status.Code.INVALID_ARGUMENT
              && x.reason().equals("INVALID_ARGUMENT")
              && x.fields().equals(List.of("lines[0].quantity")),
          "unexpected error details");
    }

    // one key for the logical operation "create this order"; a retry (here: as if the first
    // reply had been lost) sends the same key and gets the same order back, and reserves
    // nothing twice
    String key = newKey();
    CreateOrderRequest create = createRequest(key, merchant, channel, sku, QUANTITY);
    Order first = call(() -> deadline(orders).createOrder(create)).getOrder();
    Order again = call(() -> deadline(orders).createOrder(create)).getOrder();
    long total = first.getTotalAmount().getAmountMinor();
    System.out.printf(
        "6. CreateOrder request_id=%s -> %s %s total=%d; retried -> %s%n",
        key, first.getOrderId(), first.getState(), total, again.getOrderId());
    check(again.getOrderId().equals(first.getOrderId()), "the retry made another order");
    check(total == QUANTITY * UNIT_PRICE, "total " + total);

    MarkPaidRequest pay =
        MarkPaidRequest.newBuilder()
            .setPaymentId(newKey())
            .setOrderId(first.getOrderId())
            .setAmount(money(total))
            .setProvider("manual")
            .build();
    Order paid = call(() -> deadline(orders).markPaid(pay)).getOrder();
    System.out.printf("7. MarkPaid -> %s%n", paid.getState());
    check(paid.getState() == OrderState.ORDER_STATE_PAID, "not PAID");

    ListJournalEntriesRequest entriesReq =
        ListJournalEntriesRequest.newBuilder().setOrderId(first.getOrderId()).build();
    JournalEntry entry =
        poll(
            "the split",
            () ->
                call(() -> deadline(settlement).listJournalEntries(entriesReq))
                    .getEntriesList()
                    .stream()
                    .filter(e -> e.getKind() == EntryKind.ENTRY_KIND_SPLIT)
                    .findFirst());
    System.out.printf(
        "8. split (journal entry %d, rule v%d):%n", entry.getEntryId(), entry.getRuleVersion());
    Map<String, Long> parts = new TreeMap<>();
    long sum = 0, received = 0;
    for (Posting p : entry.getPostingsList()) {
      String name = p.getParty().getType().name().substring("PARTY_TYPE_".length());
      System.out.printf(
          "     %-16s %-8s %-16s %7d%n",
          name, p.getParty().getId(), p.getBucket(), p.getAmountMinor());
      parts.merge(name, p.getAmountMinor(), Long::sum);
      sum += p.getAmountMinor();
      received += Math.max(0, p.getAmountMinor());
    }
    long fee = (total * FEE_BPS + 5000) / 10000 + FEE_FIXED;
    long net = total - fee;
    Map<String, Long> want = new TreeMap<>();
    want.put("CLEARING", -total);
    want.put("PROVIDER_FEE", fee);
    want.put("PLATFORM", net * PLATFORM_BPS / 10000);
    want.put("SERVICE_PROVIDER", net * PROVIDER_BPS / 10000);
    want.put("MERCHANT", net - want.get("PLATFORM") - want.get("SERVICE_PROVIDER"));
    System.out.printf("   parts sum to %d of %d paid%n", received, total);
    check(sum == 0 && received == total, "the split does not balance");
    check(parts.equals(want), "split " + parts + ", expected " + want);

    ListCommissionsRequest comReq =
        ListCommissionsRequest.newBuilder().setChannelId(channel).build();
    Commission com =
        poll(
            "the commission",
            () ->
                call(() -> deadline(commission).listCommissions(comReq))
                    .getCommissionsList()
                    .stream()
                    .filter(m -> m.getOrderId().equals(first.getOrderId()))
                    .findFirst());
    long expected = total * expectBps / 10000;
    System.out.printf(
        "9. commission %s on %d: %d (%s), expected %d bps = %d%n",
        com.getChannelId(),
        com.getOrderAmount().getAmountMinor(),
        com.getAmount().getAmountMinor(),
        com.getState(),
        expectBps,
        expected);
    check(com.getAmount().getAmountMinor() == expected, "commission differs");

    for (ManagedChannel c : channels) {
      c.shutdown().awaitTermination(5, TimeUnit.SECONDS);
    }
    System.out.println("ok");
  }

  static ManagedChannel open(List<ManagedChannel> all, String env, int port) {
    ManagedChannel c =
        ManagedChannelBuilder.forTarget(env(env, "127.0.0.1:" + port)).usePlaintext().build();
    all.add(c);
    return c;
  }

  static CreateOrderRequest createRequest(
      String requestId, String merchant, String channel, String sku, long quantity) {
    return CreateOrderRequest.newBuilder()
        .setRequestId(requestId)
        .setBuyerId("buyer-1")
        .setMerchantId(merchant)
        .setChannelId(channel)
        .setCurrency(CURRENCY)
        .addLines(
            CreateOrderLine.newBuilder()
                .setSku(sku)
                .setQuantity(quantity)
                .setUnitPrice(money(UNIT_PRICE)))
        .build();
  }
}
