/*
 * commerce-order: orders, the checkout saga with inventory, payment,
 * shipping, refunds. wiring only; the handlers are in api.c, the design in
 * README.md.
 */
#include "cm_service.h"
#include "ord_api.h"
#include "ord_store.h"

#include "commerce/order/v1/order_service.pb-c.h"

extern const cm_migration ord_migrations[];
extern const size_t ord_migrations_count;

static const cm_knob knobs[] = {
    {"ORDER_PAYMENT_TIMEOUT_S", CM_KNOB_INT, 1800, 1, 259200, NULL,
     "payment timeout when CreateOrder sets none and the tenant has no setting (s)"},
    {"ORDER_FLASH_PAYMENT_TIMEOUT_S", CM_KNOB_INT, 300, 1, 259200, NULL,
     "the same when any line was reserved from a flash sale (s)"},
    {"ORDER_RESERVATION_MARGIN_S", CM_KNOB_INT, 3600, 1, 86400, NULL,
     "the reservation outlives the payment deadline by this much (s)"},
    {"ORDER_SWEEP_MS", CM_KNOB_INT, 1000, 50, 600000, NULL,
     "sweeper period: unpaid orders cancelled, shipped ones completed, due releases sent (ms)"},
    {"ORDER_AUTO_COMPLETE_DAYS", CM_KNOB_INT, 7, 1, 90, NULL,
     "a shipped order completes this long after shipment when its tenant sets none (days)"},
    {"ORDER_INVENTORY_TIMEOUT_MS", CM_KNOB_INT, 2000, 10, 60000, NULL,
     "deadline of Reserve; a given-up reservation is released 2x later (ms)"},
    {"ORDER_MAX_BATCH", CM_KNOB_INT, 64, 1, ORD_CREATE_MAX, NULL,
     "most creates stored by one group-commit statement"},
    {"ORDER_RESERVE_BATCH", CM_KNOB_INT, 64, 0, 100, NULL,
     "most Reserves of concurrent creates sent in one BatchReserve; 0: one call each"},
    {"ORDER_TOPIC", CM_KNOB_TEXT, 0, 0, 0, "commerce.order.v1",
     "topic of the order events (tests and benchmarks override it)"},
    {"ORDER_DEBUG_PAUSE_AFTER_RESERVE_MS", CM_KNOB_INT, 0, 0, 600000, NULL,
     "tests only: sleep between Reserve and the order's transaction (ms)"},
};

static const cm_peer_def peers[] = {{"inventory", "127.0.0.1:50052"}};

static const cm_service_ticker tickers[] = {
    /* every replica sweeps: the statements skip what another holds */
    {"sweeper", "ORDER_SWEEP_MS", ord_sweep, 0, NULL},
};

int main(int argc, char **argv)
{
    const cm_service_def def = {
        .name = "order",
        .schema = "orders",
        .grpc_port = 50051,
        .admin_port = 9091,
        /* a CreateOrder blocks its worker while inventory reserves and while
         * its transaction commits, so calls in flight per replica are
         * WORKERS. a worker holds one of the DB_POOL connections only from
         * its first statement to its handler's return, not while it waits
         * for inventory (README.md, "Benchmarks") */
        .workers = 128,
        .knobs = knobs,
        .nknobs = sizeof knobs / sizeof knobs[0],
        .peers = peers,
        .npeers = sizeof peers / sizeof peers[0],
        .tickers = tickers,
        .ntickers = sizeof tickers / sizeof tickers[0],
        .migrations = ord_migrations,
        .nmigrations = ord_migrations_count,
        .api = &commerce__order__v1__order_service__descriptor,
        .methods = ord_methods,
        .nmethods = ord_methods_count,
        .app_init = ord_app_init,
        .app_fini = ord_app_fini,
        .uses_outbox = 1,
    };
    return cm_service_main(argc, argv, &def);
}
