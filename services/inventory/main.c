/*
 * commerce-inventory: stock per sku, reservations for orders, flash sales.
 * wiring only; the handlers are in api.c, the design in README.md.
 */
#include "cm_service.h"
#include "inv_api.h"

#include "commerce/inventory/v1/inventory_service.pb-c.h"

extern const cm_migration inv_migrations[];
extern const size_t inv_migrations_count;

static const cm_knob knobs[] = {
    {"INVENTORY_HOT_PATH", CM_KNOB_ONOFF, 1, 0, 0, NULL,
     "on: Reserve group-committed in batches; off: one transaction per call"},
    {"INVENTORY_MAX_BATCH", CM_KNOB_INT, 256, 1, 4096, NULL,
     "most reservations in one batch transaction"},
    {"INVENTORY_BATCHERS", CM_KNOB_INT, 1, 1, INV_BATCHERS_MAX, NULL,
     "batcher threads, each with its own connection"},
    {"INVENTORY_SOLD_OUT_TTL_MS", CM_KNOB_INT, 200, 1, 60000, NULL,
     "how long a sku seen at zero is answered SOLD_OUT from memory (ms)"},
    {"INVENTORY_SWEEP_MS", CM_KNOB_INT, 1000, 50, 600000, NULL, "expiry sweeper period (ms)"},
    {"INVENTORY_INVARIANT_CHECK_S", CM_KNOB_INT, 60, 1, 86400, NULL,
     "period of the check behind inventory_invariants_ok (s)"},
    {"INVENTORY_EVENTS", CM_KNOB_ONOFF, 1, 0, 0, NULL,
     "write stock and reservation events to the outbox"},
    {"INVENTORY_CONSUME_ORDERS", CM_KNOB_ONOFF, 1, 0, 0, NULL,
     "consume order events (paid: confirm, cancelled: release)"},
    {"INVENTORY_ORDER_TOPIC", CM_KNOB_TEXT, 0, 0, 0, "commerce.order.v1",
     "where order events come from (tests override it)"},
    {"INVENTORY_ORDER_GROUP", CM_KNOB_TEXT, 0, 0, 0, "commerce.inventory",
     "consumer group of the order events (tests override it)"},
};

/* the order events it acts on; the rest of the topic (created, shipped,
 * refunded, ...) is acknowledged without an inbox row */
static const char *const order_types[] = {"commerce.events.v1.OrderPaid",
                                          "commerce.events.v1.OrderCancelled", NULL};
static const cm_service_consumer consumers[] = {
    {.topic = "commerce.order.v1",
     .group = "commerce.inventory",
     .handler = inv_on_order_event,
     .tx_begin = inv_on_order_tx_begin,
     .tx_end = inv_on_order_tx_end,
     .types = order_types,
     .enabled_knob = "INVENTORY_CONSUME_ORDERS",
     .topic_knob = "INVENTORY_ORDER_TOPIC",
     .group_knob = "INVENTORY_ORDER_GROUP"},
};

static const cm_service_ticker tickers[] = {
    /* every replica sweeps: the statements skip what another holds */
    {"sweeper", "INVENTORY_SWEEP_MS", inv_sweep, 0, NULL},
};

int main(int argc, char **argv)
{
    const cm_service_def def = {
        .name = "inventory",
        .schema = "inventory",
        .grpc_port = 50052,
        .admin_port = 9092,
        /* a Reserve blocks its worker until its batch commits, so calls in
         * flight per replica are WORKERS: the benchmark's 128. the hot path
         * commits on its own INVENTORY_BATCHERS connections; the workers
         * share DB_POOL (16) for everything else, so threads, not
         * connections, grow with WORKERS (README.md, "Benchmarks") */
        .workers = 128,
        .knobs = knobs,
        .nknobs = sizeof knobs / sizeof knobs[0],
        .tickers = tickers,
        .ntickers = sizeof tickers / sizeof tickers[0],
        .migrations = inv_migrations,
        .nmigrations = inv_migrations_count,
        .api = &commerce__inventory__v1__inventory_service__descriptor,
        .methods = inv_methods,
        .nmethods = inv_methods_count,
        .app_init = inv_app_init,
        .app_fini = inv_app_fini,
        .uses_outbox = 1,
        .consumers = consumers,
        .nconsumers = sizeof consumers / sizeof consumers[0],
    };
    return cm_service_main(argc, argv, &def);
}
