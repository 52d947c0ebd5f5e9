/*
 * commerce-settlement: payment split (分账) on a double-entry ledger.
 * wiring only; the handlers are in api.c, the design in README.md.
 */
#include "cm_service.h"
#include "stl_api.h"
#include "stl_events.h"
#include "stl_recon.h"

#include "commerce/settlement/v1/settlement_service.pb-c.h"

extern const cm_migration stl_migrations[];
extern const size_t stl_migrations_count;

static const cm_knob knobs[] = {
    {"SETTLEMENT_DEFAULT_TIME_ZONE", CM_KNOB_TEXT, 0, 0, 0, "Asia/Shanghai",
     "IANA time zone of tenants without their own settings (T+N days, run dates)"},
    {"SETTLEMENT_DEFAULT_MAX_SPLIT_BPS", CM_KNOB_INT, 3000, 0, 10000, NULL,
     "cap on the split to others, bps of the net amount, for tenants without their own"},
    {"SETTLEMENT_DEFAULT_RUN_AT", CM_KNOB_TEXT, 0, 0, 0, "02:00",
     "local time of the daily settlement run, for tenants without their own"},
    {"SETTLEMENT_EVENTS", CM_KNOB_ONOFF, 1, 0, 0, NULL,
     "write split, commission cost and payout events to the outbox"},
    {"SETTLEMENT_TOPIC", CM_KNOB_TEXT, 0, 0, 0, "commerce.settlement.v1",
     "where settlement's events go (tests override it)"},
    {"SETTLEMENT_PARK_TIMEOUT_S", CM_KNOB_INT, 3600, 1, 30 * 86400, NULL,
     "how long a refund waits for its payment before it is dead-lettered (s)"},
    {"SETTLEMENT_PARKER_MS", CM_KNOB_INT, 10000, 100, 3600000, NULL,
     "period of the parked-refund expiry (ms)"},
    {"SETTLEMENT_RUN_TICK_MS", CM_KNOB_INT, 10000, 100, 3600000, NULL,
     "how often the settler looks for runs to start or finish (ms)"},
    {"SETTLEMENT_RUN_BATCH", CM_KNOB_INT, 5000, 100, 100000, NULL,
     "pending rows a run moves per transaction"},
    {"SETTLEMENT_PAYOUT_MS", CM_KNOB_INT, 60000, 100, 86400000, NULL,
     "how often T+0 money available becomes payouts (ms)"},
    {"SETTLEMENT_CONSUME_ORDERS", CM_KNOB_ONOFF, 1, 0, 0, NULL,
     "consume order events (paid: split, refunded: reverse)"},
    {"SETTLEMENT_ORDER_TOPIC", CM_KNOB_TEXT, 0, 0, 0, "commerce.order.v1",
     "where order events come from (tests override it)"},
    {"SETTLEMENT_ORDER_GROUP", CM_KNOB_TEXT, 0, 0, 0, "commerce.settlement",
     "consumer group of the order events (tests override it)"},
    {"SETTLEMENT_CONSUME_COMMISSIONS", CM_KNOB_ONOFF, 1, 0, 0, NULL,
     "consume commission events (accrued, clawed back, adjusted: the commission cost)"},
    {"SETTLEMENT_COMMISSION_TOPIC", CM_KNOB_TEXT, 0, 0, 0, "commerce.commission.v1",
     "where commission events come from (tests override it)"},
    {"SETTLEMENT_COMMISSION_GROUP", CM_KNOB_TEXT, 0, 0, 0, "commerce.settlement.commission",
     "consumer group of the commission events (tests override it)"},
    {"SETTLEMENT_PLATFORM_ID", CM_KNOB_TEXT, 0, 0, 0, "platform",
     "owner id of the platform's account, debited with the commission cost of schedules the "
     "platform pays"},
    {"SETTLEMENT_RECON_MS", CM_KNOB_INT, 60000, 100, 86400000, NULL,
     "period of the reconciliation metrics (ledger balanced, statement differences) (ms)"},
    {"SETTLEMENT_RECON_DAYS", CM_KNOB_INT, 7, 1, 90, NULL,
     "bill dates back from today whose statements the differences metric covers"},
    {"SETTLEMENT_CONSUMER_BATCH", CM_KNOB_INT, 0, 0, 10000, NULL,
     "order events applied per transaction, at most; 0: the consumer's default (500), "
     "1: one transaction per event (the benchmark's naive baseline)"},
};

/* the order events it posts; the rest of the topic is acknowledged
 * without an inbox row */
static const char *const order_types[] = {"commerce.events.v1.OrderPaid",
                                          "commerce.events.v1.OrderRefunded",
                                          "commerce.events.v1.OrderCompleted", NULL};
/* the commission events that change a channel's commission: its cost */
static const char *const commission_types[] = {"commerce.events.v1.CommissionAccrued",
                                               "commerce.events.v1.CommissionClawedBack",
                                               "commerce.events.v1.CommissionAdjusted", NULL};
static const cm_service_consumer consumers[] = {
    {.topic = "commerce.order.v1",
     .group = "commerce.settlement",
     .handler = stl_on_order_event,
     .after_commit = stl_on_committed,
     .tx_begin = stl_on_tx_begin,
     .tx_end = stl_on_tx_end,
     .types = order_types,
     .enabled_knob = "SETTLEMENT_CONSUME_ORDERS",
     .topic_knob = "SETTLEMENT_ORDER_TOPIC",
     .group_knob = "SETTLEMENT_ORDER_GROUP",
     .batch_knob = "SETTLEMENT_CONSUMER_BATCH"},
    {.topic = "commerce.commission.v1",
     .group = "commerce.settlement.commission",
     .handler = stl_on_commission_event,
     .after_commit = stl_on_cost_committed,
     .tx_begin = stl_on_cost_tx_begin,
     .tx_end = stl_on_cost_tx_end,
     .types = commission_types,
     .enabled_knob = "SETTLEMENT_CONSUME_COMMISSIONS",
     .topic_knob = "SETTLEMENT_COMMISSION_TOPIC",
     .group_knob = "SETTLEMENT_COMMISSION_GROUP"},
};

/* a replica that died hands its partitions over within 10 s (librdkafka's
 * default is 45 s, during which the dead member's partitions wait) */
static const char *const consumer_conf[] = {"session.timeout.ms", "10000", NULL};

static const cm_service_ticker tickers[] = {
    {"parker", "SETTLEMENT_PARKER_MS", stl_parker, 1, NULL},
    {"settler", "SETTLEMENT_RUN_TICK_MS", stl_settler, 1, NULL},
    {"payer", "SETTLEMENT_PAYOUT_MS", stl_payer, 1, stl_payer_resign},
    {"recon", "SETTLEMENT_RECON_MS", stl_recon_tick, 1, stl_recon_resign},
};

int main(int argc, char **argv)
{
    const cm_service_def def = {
        .name = "settlement",
        .schema = "settlement",
        .grpc_port = 50053,
        .admin_port = 9093,
        .knobs = knobs,
        .nknobs = sizeof knobs / sizeof knobs[0],
        .tickers = tickers,
        .ntickers = sizeof tickers / sizeof tickers[0],
        .migrations = stl_migrations,
        .nmigrations = stl_migrations_count,
        .api = &commerce__settlement__v1__settlement_service__descriptor,
        .methods = stl_methods,
        .nmethods = stl_methods_count,
        .app_init = stl_app_init,
        .app_fini = stl_app_fini,
        .uses_outbox = 1,
        .consumers = consumers,
        .nconsumers = sizeof consumers / sizeof consumers[0],
        .kafka_consumer_conf = consumer_conf,
    };
    return cm_service_main(argc, argv, &def);
}
