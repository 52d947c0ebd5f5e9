/*
 * commerce-order: orders, the checkout saga with inventory, payment,
 * shipping, refunds. wiring only; the handlers are in api.c, the design in
 * README.md.
 */
#include "cm_service.h"
#include "ord_api.h"
#include "ord_events.h"

#include <stdlib.h>

#include "commerce/order/v1/order_service.pb-c.h"

extern const cm_migration ord_migrations[];
extern const size_t ord_migrations_count;

int main(int argc, char **argv)
{
    /* a CreateOrder blocks its worker while inventory reserves and while
     * its transaction commits, so concurrency per replica is WORKERS: more
     * than the runtime's one per cpu (each is also a database connection) */
    const char *w = getenv("WORKERS");
    if (!w || !*w)
        setenv("WORKERS", "32", 1);
    /* ORDER_SCHEMA and ORDER_TOPIC let tests and benchmarks run side by side */
    const char *schema = getenv("ORDER_SCHEMA");
    ord_events_set_topic(getenv("ORDER_TOPIC"));
    const cm_service_def def = {
        .name = "order",
        .schema = schema && *schema ? schema : "orders",
        .grpc_port = 50051,
        .admin_port = 9091,
        .needs_inventory = 1,
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
