/*
 * commerce-inventory: stock per sku, reservations for orders, flash sales.
 * wiring only; the handlers are in api.c, the design in README.md.
 */
#include "cm_service.h"
#include "inv_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commerce/inventory/v1/inventory_service.pb-c.h"

extern const cm_migration inv_migrations[];
extern const size_t inv_migrations_count;

/* the order events this service applies (kafka/topics.tsv); the topic and
 * group can be overridden for tests */
/* the order events it acts on; the rest of the topic (created, shipped,
 * refunded, ...) is acknowledged without an inbox row */
static const char *const order_types[] = {"commerce.events.v1.OrderPaid",
                                          "commerce.events.v1.OrderCancelled", NULL};
static cm_service_consumer consumers[] = {
    {.topic = "commerce.order.v1",
     .group = "commerce.inventory",
     .handler = inv_on_order_event,
     .types = order_types},
};

int main(int argc, char **argv)
{
    /* a Reserve blocks its worker until its batch commits, so concurrency
     * per replica is WORKERS: more than the runtime's one per cpu (each is
     * also a database connection; two replicas stay under postgres's
     * default max_connections of 100) */
    const char *w = getenv("WORKERS");
    if (!w || !*w)
        setenv("WORKERS", "32", 1);
    /* INVENTORY_SCHEMA lets tests and benchmarks run side by side */
    const char *schema = getenv("INVENTORY_SCHEMA");
    const char *topic = getenv("INVENTORY_ORDER_TOPIC");
    const char *group = getenv("INVENTORY_ORDER_GROUP");
    if (topic && *topic)
        consumers[0].topic = topic;
    if (group && *group)
        consumers[0].group = group;
    /* validated like every other variable: a typo must not silently mean "on" */
    int bad = 0;
    int consume_on = cm_config_env_onoff("INVENTORY_CONSUME_ORDERS", 1, &bad);
    if (bad) {
        fprintf(stderr, "commerce-inventory: INVENTORY_CONSUME_ORDERS: on or off, got \"%s\"\n",
                getenv("INVENTORY_CONSUME_ORDERS"));
        return 2;
    }
    const cm_service_def def = {
        .name = "inventory",
        .schema = schema && *schema ? schema : "inventory",
        .grpc_port = 50052,
        .admin_port = 9092,
        .migrations = inv_migrations,
        .nmigrations = inv_migrations_count,
        .api = &commerce__inventory__v1__inventory_service__descriptor,
        .methods = inv_methods,
        .nmethods = inv_methods_count,
        .app_init = inv_app_init,
        .app_fini = inv_app_fini,
        .uses_outbox = 1,
        .consumers = consume_on ? consumers : NULL,
        .nconsumers = consume_on ? 1 : 0,
    };
    return cm_service_main(argc, argv, &def);
}
