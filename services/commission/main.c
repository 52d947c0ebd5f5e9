/*
 * commerce-commission: distribution channels (分销) and volume-tiered
 * commission. wiring only; the handlers are in api.c, the design in
 * README.md.
 */
#include "cm_service.h"
#include "cms_api.h"
#include "cms_close.h"
#include "cms_events.h"
#include "cms_payable.h"

#include "commerce/commission/v1/commission_service.pb-c.h"

extern const cm_migration cms_migrations[];
extern const size_t cms_migrations_count;

static const cm_knob knobs[] = {
    {"COMMISSION_EVENTS", CM_KNOB_ONOFF, 1, 0, 0, NULL,
     "write commission events (accrued, payable, clawed back, adjusted, settled, payouts; also to "
     "partners) to the outbox"},
    {"COMMISSION_TOPIC", CM_KNOB_TEXT, 0, 0, 0, "commerce.commission.v1",
     "where commission's events go (tests override it)"},
    {"COMMISSION_PARTNER_TOPIC", CM_KNOB_TEXT, 0, 0, 0, "commerce.commission.partner.v1",
     "where the partners' cloudevents (commissions, adjustments, payouts) go (tests override it)"},
    {"COMMISSION_CONSUME_ORDERS", CM_KNOB_ONOFF, 1, 0, 0, NULL,
     "consume order events (paid: accrue, refunded: claw back, completed: after-sale window)"},
    {"COMMISSION_ORDER_TOPIC", CM_KNOB_TEXT, 0, 0, 0, "commerce.order.v1",
     "where order events come from (tests override it)"},
    {"COMMISSION_ORDER_GROUP", CM_KNOB_TEXT, 0, 0, 0, "commerce.commission",
     "consumer group of the order events (tests override it)"},
    {"COMMISSION_CONSUMER_BATCH", CM_KNOB_INT, 0, 0, 10000, NULL,
     "order events applied per transaction, at most; 0: the consumer's default (500), "
     "1: one transaction per event (the benchmark's naive baseline)"},
    {"COMMISSION_PARK_TIMEOUT_S", CM_KNOB_INT, 3600, 1, 30 * 86400, NULL,
     "how long a refund waits for its payment's accrual before it is dead-lettered (s)"},
    {"COMMISSION_PARKER_MS", CM_KNOB_INT, 10000, 100, 3600000, NULL,
     "period of the parked-refund expiry (ms)"},
    {"COMMISSION_AFTER_SALE_DAYS", CM_KNOB_INT, 7, 0, 90, NULL,
     "default after-sale window: days after an order's completion before its commission is "
     "payable, for tenants without their own (PutTenantSettings)"},
    {"COMMISSION_PAYABLE_MS", CM_KNOB_INT, 60000, 100, 3600000, NULL,
     "period of the payable ticker: FROZEN commissions past their window -> PAYABLE (ms)"},
    {"COMMISSION_CLOSE_MS", CM_KNOB_INT, 600000, 100, 86400000, NULL,
     "period of the close ticker: finished whole-volume periods -> closed, final true-up (ms)"},
    {"COMMISSION_CLOSE_AFTER_S", CM_KNOB_INT, 86400, 0, 30 * 86400, NULL,
     "how long after a period's end the close ticker closes it, for late events (s)"},
};

/* the order events it acts on; the rest of the topic is acknowledged
 * without an inbox row */
static const char *const order_types[] = {"commerce.events.v1.OrderPaid",
                                          "commerce.events.v1.OrderRefunded",
                                          "commerce.events.v1.OrderCompleted", NULL};

static const cm_service_consumer consumers[] = {
    {.topic = "commerce.order.v1",
     .group = "commerce.commission",
     .handler = cms_on_order_event,
     .after_commit = cms_on_committed,
     .tx_begin = cms_on_tx_begin,
     .tx_end = cms_on_tx_end,
     .types = order_types,
     .enabled_knob = "COMMISSION_CONSUME_ORDERS",
     .topic_knob = "COMMISSION_ORDER_TOPIC",
     .group_knob = "COMMISSION_ORDER_GROUP",
     .batch_knob = "COMMISSION_CONSUMER_BATCH"},
};

/* a replica that died hands its partitions over within 10 s */
static const char *const consumer_conf[] = {"session.timeout.ms", "10000", NULL};

static const cm_service_ticker tickers[] = {
    {"parker", "COMMISSION_PARKER_MS", cms_parker, 1},
    {"payable", "COMMISSION_PAYABLE_MS", cms_payable_tick, 1},
    {"close", "COMMISSION_CLOSE_MS", cms_close_tick, 1},
};

int main(int argc, char **argv)
{
    const cm_service_def def = {
        .name = "commission",
        .schema = "commission",
        .grpc_port = 50054,
        .admin_port = 9094,
        .knobs = knobs,
        .nknobs = sizeof knobs / sizeof knobs[0],
        .tickers = tickers,
        .ntickers = sizeof tickers / sizeof tickers[0],
        .migrations = cms_migrations,
        .nmigrations = cms_migrations_count,
        .api = &commerce__commission__v1__commission_service__descriptor,
        .methods = cms_methods,
        .nmethods = cms_methods_count,
        .app_init = cms_app_init,
        .app_fini = cms_app_fini,
        .uses_outbox = 1,
        .consumers = consumers,
        .nconsumers = sizeof consumers / sizeof consumers[0],
        .kafka_consumer_conf = consumer_conf,
    };
    return cm_service_main(argc, argv, &def);
}
