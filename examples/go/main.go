// The commerce suite called from Go (grpc-go), as a monolith would.
//
// Sets stock, a split rule, a tier schedule and a channel; creates an order
// (retried once with the same request_id), pays it, then reads the
// payment's split from settlement and the channel's commission from
// commission (both arrive through Kafka, so it polls with a deadline). Also
// shows how to read the google.rpc.Status details of an expected error.
// Prints a transcript and exits 0 only if every step worked and the numbers
// agree.
//
// Stubs: ./generate.sh (protoc + protoc-gen-go + protoc-gen-go-grpc into
// ./gen), then go run . Targets from ORDER_TARGET, INVENTORY_TARGET,
// SETTLEMENT_TARGET, COMMISSION_TARGET (default: the quick start's ports);
// TENANT (default: a new one per run, so reruns never collide).
package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	commissionv1 "github.com/commerce/commerce/gen/go/commerce/commission/v1"
	commonv1 "github.com/commerce/commerce/gen/go/commerce/common/v1"
	inventoryv1 "github.com/commerce/commerce/gen/go/commerce/inventory/v1"
	orderv1 "github.com/commerce/commerce/gen/go/commerce/order/v1"
	settlementv1 "github.com/commerce/commerce/gen/go/commerce/settlement/v1"
)

const (
	currency      = "CNY"
	unitPrice     = 5000 // 50.00 CNY
	quantity      = 2    // the order: 100.00 CNY
	feeBps        = 30   // the provider's fee: 0.3 % + 0.10
	feeFixed      = 10
	platformBps   = 1000 // the split: 10 % and 5 % of the net
	providerBps   = 500
	commissionBps = 500 // the channel's tier schedule: 5 % from the first fen
)

func money(minor int64) *commonv1.Money {
	return &commonv1.Money{AmountMinor: minor, Currency: currency}
}

// newKey is one idempotency key per logical operation (the README
// recommends a UUIDv7; any unique 1-64 characters of [A-Za-z0-9._:-] do).
func newKey() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// call runs f, retrying what the error model says is retryable with the
// same request, hence the same idempotency key.
func call[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := f(cctx)
		cancel()
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
			if attempt < 3 {
				time.Sleep(time.Duration(200<<attempt) * time.Millisecond)
				continue
			}
		}
		return r, err
	}
}

// explain returns the code, ErrorInfo reason and BadRequest fields of a
// failed call, from the google.rpc.Status in its grpc-status-details-bin.
func explain(err error) (codes.Code, string, []string) {
	st, _ := status.FromError(err)
	reason, fields := "", []string{}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			reason = d.GetReason()
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return st.Code(), reason, fields
}

var pollFor = 30 * time.Second

// poll runs fetch until it returns true, for at most pollFor.
func poll(what string, fetch func() (bool, error)) error {
	deadline := time.Now().Add(pollFor)
	for {
		ok, err := fetch()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v", what, pollFor)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func dial(env string, port int) *grpc.ClientConn {
	target := os.Getenv(env)
	if target == "" {
		target = fmt.Sprintf("127.0.0.1:%d", port)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail(err)
	}
	return conn
}

func fail(err error) {
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.OK {
		code, reason, fields := explain(err)
		fmt.Printf("FAILED: %v %s %s: %s\n", code, reason, strings.Join(fields, ","), status.Convert(err).Message())
	} else {
		fmt.Printf("FAILED: %v\n", err)
	}
	os.Exit(1)
}

func check(ok bool, format string, a ...any) {
	if !ok {
		fail(fmt.Errorf(format, a...))
	}
}

func must[T any](r T, err error) T {
	if err != nil {
		fail(err)
	}
	return r
}

func main() {
	expectBps := int64(commissionBps)
	// the commission the checks expect; a different value makes the run
	// fail (how the test of this example is shown to fail)
	if v := os.Getenv("EXAMPLE_EXPECT_COMMISSION_BPS"); v != "" {
		expectBps = must(strconv.ParseInt(v, 10, 64))
	}
	if v := os.Getenv("EXAMPLE_POLL_SECONDS"); v != "" {
		pollFor = time.Duration(must(strconv.ParseFloat(v, 64)) * float64(time.Second))
	}
	tenant := os.Getenv("TENANT")
	if tenant == "" {
		tenant = "example-go-" + strings.ReplaceAll(newKey(), "-", "")[:12]
	}
	fmt.Println("tenant", tenant)
	// AUTH_MODE=off: the tenant is this header (with auth on, send
	// "authorization: Bearer <jwt>" whose tid claim names the tenant)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-tenant-id", tenant)
	orderConn, invConn := dial("ORDER_TARGET", 50051), dial("INVENTORY_TARGET", 50052)
	stlConn, cmsConn := dial("SETTLEMENT_TARGET", 50053), dial("COMMISSION_TARGET", 50054)
	defer orderConn.Close()
	defer invConn.Close()
	defer stlConn.Close()
	defer cmsConn.Close()
	orders := orderv1.NewOrderServiceClient(orderConn)
	inventory := inventoryv1.NewInventoryServiceClient(invConn)
	settlement := settlementv1.NewSettlementServiceClient(stlConn)
	commission := commissionv1.NewCommissionServiceClient(cmsConn)
	const merchant, channel, sku, schedule = "m-1", "ch-1", "sku-1", "tiers-1"

	stock := must(call(ctx, func(c context.Context) (*inventoryv1.SetStockResponse, error) {
		return inventory.SetStock(c, &inventoryv1.SetStockRequest{RequestId: newKey(), Sku: sku,
			Available: 10, Reason: "example: initial stock", Actor: "example-go"})
	}))
	fmt.Printf("1. SetStock %s available=%d\n", stock.GetStock().GetSku(), stock.GetStock().GetAvailable())

	ruleReq := &settlementv1.PutSplitRuleRequest{RequestId: newKey(), Rule: &settlementv1.SplitRule{
		MerchantId: merchant, Currency: currency,
		Receivers: []*settlementv1.SplitReceiver{
			{Type: settlementv1.PartyType_PARTY_TYPE_PLATFORM, ReceiverId: "platform", ShareBps: platformBps},
			{Type: settlementv1.PartyType_PARTY_TYPE_SERVICE_PROVIDER, ReceiverId: "sp-1",
				ShareBps: providerBps, SettleDelayDays: 1}},
		Fee: &settlementv1.FeeModel{Bps: feeBps, FixedMinor: feeFixed,
			Bearer: settlementv1.FeeBearer_FEE_BEARER_PRO_RATA}}}
	rule := must(call(ctx, func(c context.Context) (*settlementv1.PutSplitRuleResponse, error) {
		return settlement.PutSplitRule(c, ruleReq)
	})).GetRule()
	fmt.Printf("2. PutSplitRule %s v%d: platform %d bps, sp-1 %d bps (T+1), fee %d bps + %d\n",
		rule.GetMerchantId(), rule.GetVersion(), platformBps, providerBps, feeBps, feeFixed)

	tiersReq := &commissionv1.PutTierScheduleRequest{RequestId: newKey(), Schedule: &commissionv1.TierSchedule{
		TierScheduleId: schedule, Name: "example schedule", Currency: currency,
		Period: commissionv1.PeriodType_PERIOD_TYPE_MONTH, TimeZone: "Asia/Shanghai",
		Tiers: []*commissionv1.Tier{{FromSales: money(0), RateBps: commissionBps}},
		Mode:  commissionv1.TierMode_TIER_MODE_MARGINAL, Payer: commissionv1.CommissionPayer_COMMISSION_PAYER_MERCHANT}}
	tiers := must(call(ctx, func(c context.Context) (*commissionv1.PutTierScheduleResponse, error) {
		return commission.PutTierSchedule(c, tiersReq)
	})).GetSchedule()
	fmt.Printf("3. PutTierSchedule %s rev %d: %d bps\n", tiers.GetTierScheduleId(), tiers.GetRevision(), commissionBps)
	chReq := &commissionv1.PutChannelRequest{RequestId: newKey(), Channel: &commissionv1.Channel{
		ChannelId: channel, Name: "example channel", Type: commissionv1.ChannelType_CHANNEL_TYPE_AFFILIATE,
		State: commissionv1.ChannelState_CHANNEL_STATE_ACTIVE, TierScheduleId: schedule}}
	ch := must(call(ctx, func(c context.Context) (*commissionv1.PutChannelResponse, error) {
		return commission.PutChannel(c, chReq)
	})).GetChannel()
	fmt.Printf("4. PutChannel %s rev %d\n", ch.GetChannelId(), ch.GetRevision())

	createReq := func(requestID string, qty int64) *orderv1.CreateOrderRequest {
		return &orderv1.CreateOrderRequest{RequestId: requestID, BuyerId: "buyer-1", MerchantId: merchant,
			ChannelId: channel, Currency: currency,
			Lines: []*orderv1.CreateOrderLine{{Sku: sku, Quantity: qty, UnitPrice: money(unitPrice)}}}
	}
	create := func(req *orderv1.CreateOrderRequest) (*orderv1.Order, error) {
		r, err := call(ctx, func(c context.Context) (*orderv1.CreateOrderResponse, error) {
			return orders.CreateOrder(c, req)
		})
		return r.GetOrder(), err
	}

	// an expected error, decoded: INVALID_ARGUMENT naming the field
	_, err := create(createReq(newKey(), 0))
	check(err != nil, "CreateOrder with quantity 0 succeeded")
	code, reason, fields := explain(err)
	fmt.Printf("5. CreateOrder quantity=0 -> %v reason=%s field=%s\n", code, reason, strings.Join(fields, ","))
	check(code == codes.InvalidArgument && reason == "INVALID_ARGUMENT" &&
		len(fields) == 1 && fields[0] == "lines[0].quantity", "unexpected error details")

	// one key for the logical operation "create this order"; a retry (here:
	// as if the first reply had been lost) sends the same key and gets the
	// same order back, and reserves nothing twice
	key := newKey()
	first := must(create(createReq(key, quantity)))
	again := must(create(createReq(key, quantity)))
	total := first.GetTotalAmount().GetAmountMinor()
	fmt.Printf("6. CreateOrder request_id=%s -> %s %s total=%d; retried -> %s\n",
		key, first.GetOrderId(), first.GetState(), total, again.GetOrderId())
	check(again.GetOrderId() == first.GetOrderId(), "the retry made another order")
	check(total == quantity*unitPrice, "total %d", total)

	payReq := &orderv1.MarkPaidRequest{PaymentId: newKey(), OrderId: first.GetOrderId(),
		Amount: money(total), Provider: "manual"}
	paid := must(call(ctx, func(c context.Context) (*orderv1.MarkPaidResponse, error) {
		return orders.MarkPaid(c, payReq)
	})).GetOrder()
	fmt.Printf("7. MarkPaid -> %s\n", paid.GetState())
	check(paid.GetState() == orderv1.OrderState_ORDER_STATE_PAID, "not PAID")

	var entry *settlementv1.JournalEntry
	err = poll("the split", func() (bool, error) {
		r, err := call(ctx, func(c context.Context) (*settlementv1.ListJournalEntriesResponse, error) {
			return settlement.ListJournalEntries(c, &settlementv1.ListJournalEntriesRequest{OrderId: first.GetOrderId()})
		})
		for _, e := range r.GetEntries() {
			if e.GetKind() == settlementv1.EntryKind_ENTRY_KIND_SPLIT {
				entry = e
			}
		}
		return entry != nil, err
	})
	if err != nil {
		fail(err)
	}
	fmt.Printf("8. split (journal entry %d, rule v%d):\n", entry.GetEntryId(), entry.GetRuleVersion())
	parts := map[string]int64{}
	var sum, received int64
	for _, p := range entry.GetPostings() {
		name := strings.TrimPrefix(p.GetParty().GetType().String(), "PARTY_TYPE_")
		fmt.Printf("     %-16s %-8s %-16s %7d\n", name, p.GetParty().GetId(), p.GetBucket(), p.GetAmountMinor())
		parts[name] += p.GetAmountMinor()
		sum += p.GetAmountMinor()
		if p.GetAmountMinor() > 0 {
			received += p.GetAmountMinor()
		}
	}
	fee := (total*feeBps+5000)/10000 + feeFixed
	net := total - fee
	want := map[string]int64{"CLEARING": -total, "PROVIDER_FEE": fee,
		"PLATFORM": net * platformBps / 10000, "SERVICE_PROVIDER": net * providerBps / 10000}
	want["MERCHANT"] = net - want["PLATFORM"] - want["SERVICE_PROVIDER"]
	fmt.Printf("   parts sum to %d of %d paid\n", received, total)
	check(sum == 0 && received == total, "the split does not balance")
	check(fmt.Sprint(parts) == fmt.Sprint(want), "split %v, expected %v", parts, want)

	var com *commissionv1.Commission
	err = poll("the commission", func() (bool, error) {
		r, err := call(ctx, func(c context.Context) (*commissionv1.ListCommissionsResponse, error) {
			return commission.ListCommissions(c, &commissionv1.ListCommissionsRequest{ChannelId: channel})
		})
		for _, m := range r.GetCommissions() {
			if m.GetOrderId() == first.GetOrderId() {
				com = m
			}
		}
		return com != nil, err
	})
	if err != nil {
		fail(err)
	}
	expected := total * expectBps / 10000
	fmt.Printf("9. commission %s on %d: %d (%s), expected %d bps = %d\n", com.GetChannelId(),
		com.GetOrderAmount().GetAmountMinor(), com.GetAmount().GetAmountMinor(), com.GetState(), expectBps, expected)
	check(com.GetAmount().GetAmountMinor() == expected, "commission differs")
	fmt.Println("ok")
}
