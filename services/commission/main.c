/*
 * commerce-commission: distribution channels (分销) and volume-tiered
 * commission. wiring only; the handlers are in api.c, the design in
 * README.md.
 */
#include "cm_service.h"
#include "cms_api.h"
#include "cms_close.h"
#include "cms_events.h"
#include "cms_feed.h"
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
    {"COMMISSION_CONSUMER_BATCH", CM_KNOB_INT, 1000, 0, 10000, NULL,
     "order events applied per transaction, at most (the hot channel's row is locked once per "
     "batch); 0: the consumer's default (500), 1: one transaction per event (the naive "
     "baseline)"},
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
    {"COMMISSION_FEED", CM_KNOB_ONOFF, 1, 0, 0, NULL,
     "the partner feed: consume COMMISSION_PARTNER_TOPIC, route each event to the partner owning "
     "its channel (its Kafka topic, its webhook) and deliver the webhooks"},
    {"COMMISSION_FEED_GROUP", CM_KNOB_TEXT, 0, 0, 0, "commerce.commission.feed",
     "consumer group of the partner feed (tests override it)"},
    {"COMMISSION_FEED_TOPIC_PARTITIONS", CM_KNOB_INT, 3, 1, 1000, NULL,
     "partitions of a partner's topic when the service creates it"},
    {"COMMISSION_FEED_TOPIC_REPLICATION", CM_KNOB_INT, 0, 0, 16, NULL,
     "replication factor of a partner's topic when the service creates it; 0: the brokers' "
     "default"},
    {"COMMISSION_FEED_RETENTION_DAYS", CM_KNOB_INT, 30, 1, 3650, NULL,
     "how long routed events are kept for replays (events still to be delivered stay)"},
    {"COMMISSION_FEED_PRUNE_MS", CM_KNOB_INT, 600000, 1000, 86400000, NULL,
     "period of the feed's retention ticker (ms)"},
    {"COMMISSION_WEBHOOK_WORKERS", CM_KNOB_INT, 2, 0, 4, NULL,
     "webhook dispatcher threads per replica (each delivers one partner at a time); 0: none"},
    {"COMMISSION_WEBHOOK_POLL_MS", CM_KNOB_INT, 50, 5, 60000, NULL,
     "how often an idle dispatcher looks for deliveries due (ms)"},
    {"COMMISSION_WEBHOOK_BATCH", CM_KNOB_INT, 200, 1, 10000, NULL,
     "deliveries a dispatcher sends per lease of a partner, at most"},
    {"COMMISSION_WEBHOOK_TIMEOUT_MS", CM_KNOB_INT, 10000, 100, 120000, NULL,
     "one POST's time limit, connection included (ms)"},
    {"COMMISSION_WEBHOOK_BACKOFF_MAX_MS", CM_KNOB_INT, 3600000, 100, 86400000, NULL,
     "the longest wait between two attempts of a failing endpoint (ms): 1 s doubling up to it, "
     "with jitter"},
    {"COMMISSION_WEBHOOK_DISABLE_AFTER_S", CM_KNOB_INT, 259200, 1, 30 * 86400, NULL,
     "an endpoint failing for this long is disabled (s); 3 days by default"},
    {"COMMISSION_WEBHOOK_ALLOW_HTTP", CM_KNOB_ONOFF, 0, 0, 0, NULL,
     "accept http:// webhook URLs (tests, a private network); https only when off"},
    {"COMMISSION_WEBHOOK_ALLOW_CIDRS", CM_KNOB_TEXT, 0, 0, 0, "",
     "comma-separated CIDRs of non-public addresses webhooks may reach (e.g. 127.0.0.0/8 in "
     "tests); loopback, private and link-local addresses are refused otherwise"},
    {"COMMISSION_SECRETS_KEY_FILE", CM_KNOB_TEXT, 0, 0, 0, "",
     "the keyring sealing the partners' webhook secrets at rest (AES-256-GCM): lines "
     "KEY_ID:BASE64 (32 bytes), the first seals, all open; read at start, which also seals "
     "rows in plain text or under an older key"},
    {"COMMISSION_SECRETS_PLAINTEXT", CM_KNOB_ONOFF, 0, 0, 0, NULL,
     "without COMMISSION_SECRETS_KEY_FILE: store new webhook secrets in plain text (development "
     "and tests); when off too, PutPartner with a webhook and RotateWebhookSecret are refused"},
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
    {.topic = "commerce.commission.partner.v1",
     .group = "commerce.commission.feed",
     .handler = cms_feed_on_event,
     .tx_begin = cms_feed_on_tx_begin,
     .tx_end = cms_feed_on_tx_end,
     /* routing inserts the event into feed_events by its id and does
      * nothing more when it is there: no inbox needed */
     .idempotent = 1,
     .enabled_knob = "COMMISSION_FEED",
     .topic_knob = "COMMISSION_PARTNER_TOPIC",
     .group_knob = "COMMISSION_FEED_GROUP"},
};

/* a replica that died hands its partitions over within 10 s */
static const char *const consumer_conf[] = {"session.timeout.ms", "10000", NULL};

static const cm_service_ticker tickers[] = {
    {"parker", "COMMISSION_PARKER_MS", cms_parker, 1, NULL},
    {"payable", "COMMISSION_PAYABLE_MS", cms_payable_tick, 1, NULL},
    {"close", "COMMISSION_CLOSE_MS", cms_close_tick, 1, NULL},
    {"feed-prune", "COMMISSION_FEED_PRUNE_MS", cms_feed_prune, 1, NULL},
    /* the webhook dispatchers: threads of every replica, partners leased */
    {"webhook-1", "COMMISSION_WEBHOOK_POLL_MS", cms_feed_webhook_1, 0, NULL},
    {"webhook-2", "COMMISSION_WEBHOOK_POLL_MS", cms_feed_webhook_2, 0, NULL},
    {"webhook-3", "COMMISSION_WEBHOOK_POLL_MS", cms_feed_webhook_3, 0, NULL},
    {"webhook-4", "COMMISSION_WEBHOOK_POLL_MS", cms_feed_webhook_4, 0, NULL},
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
