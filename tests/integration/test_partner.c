/*
 * the partner topic end to end, read by a client that is not ours: events
 * of every commission type are written through the outbox as structured
 * cloudevents (cm_cloudevent_json), the relay publishes them to
 * commerce.commission.partner.v1 on KAFKA_BROKERS, then kcat reads the
 * topic and kafka/partner/validate.py --records checks every record of this
 * run against the json schema and the contract (key = channel id,
 * content-type application/cloudevents+json, no ce_* headers).
 *
 * the examples are hand-written; so the schema is also run against events
 * made from real orders: a commerce-order (with its commerce-inventory)
 * creates and takes payment for orders, and each becomes an accrued event
 * carrying that order's id, merchant, channel, amount and payment time. an
 * order id is a name-based UUIDv8, not the UUIDv7 the schema once
 * required. and a running commerce-commission consumes such orders (paid,
 * shipped, completed, refunded): what it writes to its partner topic
 * itself is checked the same way.
 */
#include "cm_cloudevents.h"
#include "cm_db.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_kafka.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "harness.h"

#include <check.h>
#include <grpc/status.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef ORDER_BIN
#include "fixture.h"

#include "commerce/commission/v1/commission_service.pb-c.h"
#include "commerce/inventory/v1/inventory_service.pb-c.h"
#include "commerce/order/v1/order_service.pb-c.h"
#endif

#define TOPIC "commerce.commission.partner.v1"

static const char *brokers;
static const char *const kinds[] = {"accrued", "payable", "settled", "clawed_back"};
enum { NKINDS = 4 };

/* ---- the envelope alone ---- */

START_TEST(envelope_has_the_contract_attributes)
{
    char id[CM_ID_SIZE];
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    cm_cloudevent ce = {
        .id = id,
        .source = "/commerce/commission",
        .type = "com.commerce.commission.v1.accrued",
        .time_ms = 1795400130112LL,
        .subject = "s-1",
        .tenant_id = "shop-cn-01",
        .partition_key = "partner-\"42\"",
    };
    char *out = NULL;
    size_t len = 0;
    ck_assert_int_eq(cm_cloudevent_json(&ce, "{\"channel_id\":\"partner-\\\"42\\\"\"}", &out, &len),
                     0);
    ck_assert_uint_eq(strlen(out), len);
    json_error_t jerr;
    json_t *doc = json_loads(out, 0, &jerr);
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "specversion")), "1.0");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "id")), id);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "time")), "2026-11-23T02:15:30.112Z");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "datacontenttype")),
                     "application/json");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "partitionkey")), "partner-\"42\"");
    /* absent optional attributes are left out, never null */
    ck_assert_ptr_null(json_object_get(doc, "traceparent"));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(doc, "data"), "channel_id")),
                     "partner-\"42\"");
    json_decref(doc);
    /* written member by member, the envelope is the same text */
    cm_buf b = {0};
    cm_json j;
    cm_json_init(&j, &b);
    ck_assert_int_eq(cm_cloudevent_begin(&j, &ce), 0);
    cm_json_object(&j, "data");
    cm_json_str(&j, "channel_id", "partner-\"42\"");
    cm_json_end(&j);
    cm_json_end(&j);
    ck_assert_int_eq(cm_json_done(&j), 0);
    ck_assert_str_eq(b.p, out);
    ck_assert_uint_eq(b.len, len);
    cm_buf_free(&b);
    /* a value that is not UTF-8 fails the envelope */
    cm_json_init(&j, &b);
    cm_cloudevent ce_bad = ce;
    ce_bad.subject = "s-\xc3";
    ck_assert_int_eq(cm_cloudevent_begin(&j, &ce_bad), CM_EINVAL);
    cm_buf_free(&b);
    free(out);
    out = NULL;

    ck_assert_int_eq(cm_cloudevent_json(&ce, "[1]", &out, &len), CM_EINVAL);
    ck_assert_int_eq(cm_cloudevent_json(&ce, "{\"a\":", &out, &len), CM_EINVAL);
    ck_assert_ptr_null(out);
    ce.id = "not-a-uuid";
    ck_assert_int_eq(cm_cloudevent_json(&ce, "{}", &out, &len), CM_EINVAL);
    ce.id = id;
    ce.type = NULL;
    ck_assert_int_eq(cm_cloudevent_json(&ce, "{}", &out, &len), CM_EINVAL);

    ck_assert_int_eq(cm_cloudevent_is_structured(CM_CLOUDEVENTS_JSON_CONTENT_TYPE), 1);
    ck_assert_int_eq(cm_cloudevent_is_structured("application/cloudevents+json"), 1);
    ck_assert_int_eq(cm_cloudevent_is_structured("application/cloudevents-batch+json"), 0);
    ck_assert_int_eq(cm_cloudevent_is_structured("application/protobuf"), 0);
    ck_assert_int_eq(cm_cloudevent_is_structured(NULL), 0);
}
END_TEST

/* ---- through the outbox, the relay and the broker ---- */

typedef struct partner_tx {
    const char *channel;
    char ids[NKINDS][CM_ID_SIZE];
} partner_tx;

/* the example of a kind, with this run's channel id and the envelope's
 * attributes taken out: what the commission service will put in data */
static char *example_data(const char *kind, const char *channel, char *type, size_t typelen,
                          char *subject, size_t subjlen)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/examples/%s.json", PARTNER_DIR, kind);
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    ck_assert_msg(doc != NULL, "%s: %s", path, jerr.text);
    snprintf(type, typelen, "%s", json_string_value(json_object_get(doc, "type")));
    json_t *data = json_object_get(doc, "data");
    json_t *c = json_object_get(data, "commission");
    snprintf(subject, subjlen, "%s", json_string_value(json_object_get(c, "commission_id")));
    json_object_set_new(data, "channel_id", json_string(channel));
    json_object_set_new(c, "channel_id", json_string(channel));
    char *text = json_dumps(data, JSON_COMPACT);
    ck_assert_ptr_nonnull(text);
    json_decref(doc);
    return text;
}

/* a partner event as the commission service writes it: the structured
 * CloudEvent of ce with data (taken and freed) into the outbox of the open
 * transaction, keyed by its channel */
static int add_cloudevent(cm_db *db, const cm_cloudevent *ce, char *data)
{
    char *payload = NULL;
    size_t len = 0;
    int rc = cm_cloudevent_json(ce, data, &payload, &len);
    free(data);
    if (rc)
        return rc;
    cm_outbox_event ev = {
        .event_id = ce->id,
        .tenant_id = ce->tenant_id,
        .topic = TOPIC,
        .key = ce->partition_key,
        .type = ce->type,
        .source = ce->source,
        .payload = payload,
        .len = len,
        .content_type = CM_CLOUDEVENTS_JSON_CONTENT_TYPE,
        .traceparent = ce->traceparent,
        /* as commission writes the internal topic: the envelope in headers
         * too, its time the value's */
        .occurred_at_ms = ce->time_ms,
        .envelope_headers = 1,
    };
    rc = cm_outbox_add(db, &ev);
    free(payload);
    return rc;
}

static int write_events(cm_db *db, void *arg)
{
    partner_tx *t = arg;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    for (int i = 0; i < NKINDS; i++) {
        char type[128], subject[64];
        char *data = example_data(kinds[i], t->channel, type, sizeof type, subject, sizeof subject);
        cm_cloudevent ce = {
            .id = t->ids[i],
            .source = "/commerce/commission",
            .type = type,
            .time_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 + i,
            .subject = subject,
            .tenant_id = "shop-cn-01",
            .partition_key = t->channel,
            .traceparent =
                i == 0 ? "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" : NULL,
        };
        int rc = add_cloudevent(db, &ce, data);
        if (rc)
            return rc;
    }
    return 0;
}

/* rows not yet acknowledged by kafka (the relay then deletes them) */
static long unsent(cm_db *db)
{
    PGresult *r = NULL;
    if (cm_db_exec(db, "count unsent", "SELECT count(*) FROM outbox WHERE published_at IS NULL", 0,
                   NULL, &r) != 0)
        return -1;
    long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

/* a schema of the run's own holding the outbox */
static cm_db *outbox_db(const char *schema)
{
    char err[512], drop[128];
    cm_db *db;
    ck_assert_msg(cm_db_connect(&db, hs_pg_dsn(), schema, err, sizeof err) == 0, "%s", err);
    snprintf(drop, sizeof drop, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    ck_assert_int_eq(cm_db_exec(db, "drop", drop, 0, NULL, NULL), 0);
    ck_assert_msg(cm_db_migrate_component(db, schema, "outbox", cm_outbox_migrations,
                                          cm_outbox_migrations_count, err, sizeof err) == 0,
                  "%s", err);
    return db;
}

static void outbox_db_drop(cm_db *db, const char *schema)
{
    char drop[128];
    snprintf(drop, sizeof drop, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    ck_assert_int_eq(cm_db_exec(db, "drop", drop, 0, NULL, NULL), 0);
    cm_db_free(db);
}

/* the relay publishes what the outbox of schema holds; then kcat reads the
 * whole topic into a file (returned, to be unlinked) */
static char *publish_and_read(cm_db *db, const char *schema)
{
    char err[512];
    cm_kafka_producer *p;
    ck_assert_int_eq(cm_kafka_producer_new(&p, brokers, "test-partner", NULL, err, sizeof err), 0);
    cm_outbox_relay *relay;
    cm_outbox_relay_opts ro = {.dsn = hs_pg_dsn(), .schema = schema, .producer = p};
    ck_assert_msg(cm_outbox_relay_start(&relay, &ro, err, sizeof err) == 0, "%s", err);
    long long until = hs_now_ms() + 30000;
    while (unsent(db) != 0) {
        ck_assert_msg(hs_now_ms() < until, "the relay did not publish the partner events");
        usleep(100 * 1000);
    }
    cm_outbox_relay_free(relay);
    cm_kafka_producer_free(p, 5000);

    /* kcat, not our client, reads the whole topic */
    char *out = strdup("/tmp/test_partner_XXXXXX");
    int fd = mkstemp(out);
    ck_assert_int_ge(fd, 0);
    close(fd);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "kcat -C -b '%s' -t %s -o beginning -e -q -J > %s 2>/dev/null",
             brokers, TOPIC, out);
    ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
    return out;
}

/* the contract's own checker accepts every record of key in file (the
 * internal topic's: the envelope also in headers, equal to the value's) */
static void validate_records(const char *file, const char *key)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 %s/validate.py --records --internal --key '%s' < %s", PARTNER_DIR,
             key, file);
    int st = system(cmd);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "validate.py rejected a record: %s", cmd);
}

/* each record of key in file, parsed (the caller json_decref's them), in
 * topic order of first arrival; returns how many. The feed is at least once
 * and partners deduplicate by the CloudEvent id (kafka/partner/README.md):
 * a repeated id (a relay retry after a lost ack) is dropped here the way a
 * partner drops it, and said on stderr. */
static size_t records_of(const char *file, const char *key, json_t **docs, size_t max)
{
    size_t dups = 0;
    FILE *f = fopen(file, "r");
    ck_assert_ptr_nonnull(f);
    static char line[1 << 20];
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t jerr;
        json_t *rec = json_loads(line, 0, &jerr);
        if (!rec)
            continue;
        const char *k = json_string_value(json_object_get(rec, "key"));
        if (k && strcmp(k, key) == 0) {
            json_t *doc = json_loads(json_string_value(json_object_get(rec, "payload")), 0, &jerr);
            ck_assert_ptr_nonnull(doc);
            const char *id = json_string_value(json_object_get(doc, "id"));
            ck_assert_ptr_nonnull(id);
            int again = 0;
            for (size_t i = 0; i < n && !again; i++)
                again = strcmp(json_string_value(json_object_get(docs[i], "id")), id) == 0;
            if (again) {
                dups++;
                json_decref(doc);
            } else {
                ck_assert_uint_lt(n, max);
                docs[n++] = doc;
            }
        }
        json_decref(rec);
    }
    fclose(f);
    if (dups)
        fprintf(stderr, "test_partner: %zu repeated record(s) of %s dropped by id\n", dups, key);
    return n;
}

START_TEST(kcat_reads_valid_partner_cloudevents)
{
    hs_kafka_create_topic(brokers, TOPIC, 6); /* as kafka/topics.tsv has it */
    char schema[64], channel[64];
    snprintf(schema, sizeof schema, "partner_%ld", (long)getpid());
    snprintf(channel, sizeof channel, "partner-t%ld-%lld", (long)getpid(), hs_now_ms());
    cm_db *db = outbox_db(schema);
    partner_tx t = {.channel = channel};
    for (int i = 0; i < NKINDS; i++)
        ck_assert_int_eq(cm_id_uuid7(t.ids[i]), 0);
    ck_assert_int_eq(cm_db_tx(db, NULL, 3, write_events, &t), 0);
    char *out = publish_and_read(db, schema);

    /* this run's records: all four, in commit order (one key, one partition) */
    json_t *docs[NKINDS + 1];
    size_t seen = records_of(out, channel, docs, NKINDS + 1);
    ck_assert_uint_eq(seen, NKINDS);
    for (size_t i = 0; i < seen; i++) {
        ck_assert_str_eq(json_string_value(json_object_get(docs[i], "id")), t.ids[i]);
        char type[96];
        snprintf(type, sizeof type, "com.commerce.commission.v1.%s", kinds[i]);
        ck_assert_str_eq(json_string_value(json_object_get(docs[i], "type")), type);
        json_decref(docs[i]);
    }
    validate_records(out, channel);
    unlink(out);
    free(out);
    outbox_db_drop(db, schema);
}
END_TEST

#ifdef ORDER_BIN
/* ---- events made from real orders ---- */

#define OSVC "/commerce.order.v1.OrderService/"
#define ISVC "/commerce.inventory.v1.InventoryService/"
#define NORDERS 6

typedef Commerce__Order__V1__Order Order;

static void must_call(cm_rpc_client *c, const char *method, const ProtobufCMessage *req,
                      const ProtobufCMessageDescriptor *d, ProtobufCMessage **resp,
                      const cm_rpc_md *md)
{
    cm_rpc_status st;
    int rc = cm_rpc_call(c, method, req, d, NULL, resp, md, 1, 15000, 0, &st);
    ck_assert_msg(rc == 0, "%s: code %d %s %s", method, st.code, st.reason, st.message);
}

/* RFC 3339 UTC with milliseconds, as the contract writes instants */
static void rfc3339(int64_t ms, char out[32])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char day[24];
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 32, "%s.%03dZ", day, (int)(ms % 1000));
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static json_t *money(int64_t amount, const char *currency)
{
    char n[24];
    snprintf(n, sizeof n, "%lld", (long long)amount);
    return json_pack("{s:s, s:s}", "amount_minor", n, "currency", currency);
}

/* the accrued example, made the commission of a real (paid) order: its id,
 * merchant, channel, amount and payment time; one bracket at 5 % */
static char *accrued_of(const Order *o, const char *commission_id, int64_t now_ms)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/examples/accrued.json", PARTNER_DIR);
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    ck_assert_msg(doc != NULL, "%s: %s", path, jerr.text);
    json_t *data = json_object_get(doc, "data");
    json_t *c = json_object_get(data, "commission");
    const char *cur = o->total_amount->currency;
    int64_t total = o->total_amount->amount_minor;
    int64_t fee = (total * 500 + 5000) / 10000;
    char paid[32], accrued[32];
    rfc3339(o->payment->paid_at->seconds * 1000 + o->payment->paid_at->nanos / 1000000, paid);
    rfc3339(now_ms, accrued);
    json_object_set_new(data, "channel_id", json_string(o->channel_id));
    json_object_set_new(c, "commission_id", json_string(commission_id));
    json_object_set_new(c, "channel_id", json_string(o->channel_id));
    json_object_set_new(c, "merchant_id", json_string(o->merchant_id));
    json_object_set_new(c, "order_id", json_string(o->order_id));
    json_object_set_new(c, "order_amount", money(total, cur));
    json_object_set_new(c, "period_sales_before", money(0, cur));
    json_object_set_new(c, "amount", money(fee, cur));
    json_object_set_new(c, "clawed_back_amount", money(0, cur));
    json_object_set_new(c, "net_amount", money(fee, cur));
    json_object_set_new(c, "brackets",
                        json_pack("[{s:o, s:i, s:o, s:o}]", "from_sales", money(0, cur), "rate_bps",
                                  500, "sales", money(total, cur), "commission", money(fee, cur)));
    json_object_set_new(c, "paid_at", json_string(paid));
    json_object_set_new(c, "accrued_at", json_string(accrued));
    char *text = json_dumps(data, JSON_COMPACT);
    ck_assert_ptr_nonnull(text);
    json_decref(doc);
    return text;
}

typedef struct real_tx {
    const char *tenant, *channel;
    Order *orders[NORDERS];
    char ids[NORDERS][CM_ID_SIZE];         /* event ids */
    char commissions[NORDERS][CM_ID_SIZE]; /* commission ids */
} real_tx;

static int write_real_events(cm_db *db, void *arg)
{
    real_tx *t = arg;
    for (int i = 0; i < NORDERS; i++) {
        int64_t now = wall_ms();
        char *data = accrued_of(t->orders[i], t->commissions[i], now);
        cm_cloudevent ce = {
            .id = t->ids[i],
            .source = "/commerce/commission",
            .type = "com.commerce.commission.v1.accrued",
            .time_ms = now,
            .subject = t->commissions[i],
            .tenant_id = t->tenant,
            .partition_key = t->channel,
        };
        int rc = add_cloudevent(db, &ce, data);
        if (rc)
            return rc;
    }
    return 0;
}

/* orders as a running order service makes them: created (inventory
 * reserves), then paid */
static void make_orders(real_tx *t)
{
    /* the shared pair (fixture.h) on fresh schemas and a fresh order topic */
    static fx pair;
    static const char *const inv_env[] = {"INVENTORY_CONSUME_ORDERS=off", "WORKERS=4", NULL};
    static const char *const ord_env[] = {"WORKERS=4", NULL};
    fx_opts fo = {.tag = "partner", .inventory_env = inv_env, .order_env = ord_env};
    fx_start_opts(&pair, &fo);
    cm_rpc_client *ic = pair.ic, *oc = pair.oc;
    const cm_rpc_md md[] = {{"x-tenant-id", t->tenant}};

    Commerce__Inventory__V1__SetStockRequest ss = COMMERCE__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
    ss.request_id = "partner-stock-1";
    ss.sku = "PARTNER-SKU";
    ss.available = 1000;
    ss.reason = "stock for the partner contract test";
    ss.actor = "test_partner";
    ProtobufCMessage *r = NULL;
    must_call(ic, ISVC "SetStock", &ss.base,
              &commerce__inventory__v1__set_stock_response__descriptor, &r, md);
    protobuf_c_message_free_unpacked(r, NULL);

    for (int i = 0; i < NORDERS; i++) {
        char rid[48], pid[64];
        /* request ids as callers make them: some UUIDs, some their own */
        if (i % 2)
            ck_assert_int_eq(cm_id_uuid7(rid), 0);
        else
            snprintf(rid, sizeof rid, "checkout-%ld-%d", (long)getpid(), i);
        Commerce__Common__V1__Money price = COMMERCE__COMMON__V1__MONEY__INIT;
        price.amount_minor = 1999 + 1000 * i;
        price.currency = "CNY";
        Commerce__Order__V1__CreateOrderLine l = COMMERCE__ORDER__V1__CREATE_ORDER_LINE__INIT;
        l.sku = "PARTNER-SKU";
        l.quantity = 1 + i;
        l.unit_price = &price;
        Commerce__Order__V1__CreateOrderLine *lp[] = {&l};
        Commerce__Order__V1__CreateOrderRequest co =
            COMMERCE__ORDER__V1__CREATE_ORDER_REQUEST__INIT;
        co.request_id = rid;
        co.buyer_id = "buyer-9";
        co.merchant_id = "m-1024";
        co.channel_id = (char *)t->channel;
        co.currency = "CNY";
        co.lines = lp;
        co.n_lines = 1;
        Commerce__Order__V1__CreateOrderResponse *cr = NULL;
        must_call(oc, OSVC "CreateOrder", &co.base,
                  &commerce__order__v1__create_order_response__descriptor, (ProtobufCMessage **)&cr,
                  md);
        Commerce__Order__V1__MarkPaidRequest mp = COMMERCE__ORDER__V1__MARK_PAID_REQUEST__INIT;
        snprintf(pid, sizeof pid, "pay-%s", rid);
        mp.payment_id = pid;
        mp.order_id = cr->order->order_id;
        mp.amount = cr->order->total_amount;
        mp.provider = "alipay";
        Commerce__Order__V1__MarkPaidResponse *pr = NULL;
        must_call(oc, OSVC "MarkPaid", &mp.base,
                  &commerce__order__v1__mark_paid_response__descriptor, (ProtobufCMessage **)&pr,
                  md);
        protobuf_c_message_free_unpacked(&cr->base, NULL);
        t->orders[i] = pr->order;
        pr->order = NULL;
        protobuf_c_message_free_unpacked(&pr->base, NULL);
        ck_assert_ptr_nonnull(t->orders[i]->payment);
    }
    fx_stop(&pair);
}

START_TEST(partner_events_of_real_orders_validate)
{
    hs_kafka_create_topic(brokers, TOPIC, 6); /* as kafka/topics.tsv has it */
    char schema[64], channel[64];
    snprintf(schema, sizeof schema, "partner_real_%ld", (long)getpid());
    snprintf(channel, sizeof channel, "partner-r%ld-%lld", (long)getpid(), hs_now_ms());
    real_tx t = {.tenant = "shop-cn-01", .channel = channel};
    make_orders(&t);
    for (int i = 0; i < NORDERS; i++) {
        /* what the order service assigns: a name-based UUIDv8 */
        uint8_t b[16];
        ck_assert_int_eq(cm_id_parse(t.orders[i]->order_id, b), 0);
        ck_assert_uint_eq(b[6] >> 4, 8);
        ck_assert_int_eq(cm_id_uuid7(t.ids[i]), 0);
        ck_assert_int_eq(cm_id_uuid7(t.commissions[i]), 0);
    }
    cm_db *db = outbox_db(schema);
    ck_assert_int_eq(cm_db_tx(db, NULL, 3, write_real_events, &t), 0);
    char *out = publish_and_read(db, schema);
    json_t *docs[NORDERS + 1];
    size_t n = records_of(out, channel, docs, NORDERS + 1);
    ck_assert_uint_eq(n, NORDERS);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_object_get(json_object_get(docs[i], "data"), "commission");
        ck_assert_str_eq(json_string_value(json_object_get(c, "order_id")), t.orders[i]->order_id);
        json_decref(docs[i]);
    }
    /* the schema and the contract's invariants hold for every one */
    validate_records(out, channel);
    unlink(out);
    free(out);
    for (int i = 0; i < NORDERS; i++)
        protobuf_c_message_free_unpacked(&t.orders[i]->base, NULL);
    outbox_db_drop(db, schema);
}
END_TEST

#ifdef COMMISSION_BIN
/* ---- what commerce-commission itself writes for real orders ---- */

#define CSVC "/commerce.commission.v1.CommissionService/"

static long long cms_sql(const char *schema, const char *q)
{
    long long v = -1;
    hs_sql_try_long(schema, q, &v);
    return v;
}

typedef struct cms_wait {
    const char *schema, *q;
    long long want;
} cms_wait;

static int cms_is(void *arg)
{
    cms_wait *w = arg;
    return cms_sql(w->schema, w->q) == w->want;
}

static void cms_wait_for(const char *schema, const char *q, long long want)
{
    cms_wait w = {schema, q, want};
    ck_assert_msg(hs_poll(cms_is, &w, 60000, 100) == 0, "waited for %s = %lld, have %lld", q, want,
                  cms_sql(schema, q));
}

/* how many records of key in file carry com.commerce.commission.v1.<kind> */
static int count_kind(const char *file, const char *key, const char *kind)
{
    json_t *docs[64];
    size_t n = records_of(file, key, docs, 64);
    int k = 0;
    char type[96];
    snprintf(type, sizeof type, "com.commerce.commission.v1.%s", kind);
    for (size_t i = 0; i < n; i++) {
        k += strcmp(json_string_value(json_object_get(docs[i], "type")), type) == 0;
        json_decref(docs[i]);
    }
    return k;
}

/* orders made, paid, shipped, completed and refunded by a running order
 * service; commerce-commission consumes its topic, and what it writes to
 * its partner topic is read with kcat and checked with validate.py:
 * accrued for each order, payable once completed (window 0), clawed back
 * after PAYABLE and while FROZEN */
START_TEST(commission_partner_events_of_real_orders_validate)
{
    static fx pair;
    static const char *const inv_env[] = {"INVENTORY_CONSUME_ORDERS=off", "WORKERS=4", NULL};
    static const char *const ord_env[] = {"WORKERS=4", NULL};
    fx_opts fo = {.tag = "pcms", .inventory_env = inv_env, .order_env = ord_env};
    fx_start_opts(&pair, &fo);
    const char *tenant = "shop-cn-02";
    const cm_rpc_md md[] = {{"x-tenant-id", tenant}};
    long pid = (long)getpid();
    char schema[64], ptopic[128], ctopic[128], channel[64];
    char e[6][192];
    snprintf(schema, sizeof schema, "partner_cms_%ld", pid);
    snprintf(ptopic, sizeof ptopic, "commerce.commission.partner.v1.pcms-%ld", pid);
    snprintf(ctopic, sizeof ctopic, "commerce.commission.v1.pcms-%ld", pid);
    snprintf(channel, sizeof channel, "partner-c%ld-%lld", pid, hs_now_ms());
    hs_kafka_create_topic(brokers, ptopic, 2);
    hs_kafka_create_topic(brokers, ctopic, 2);
    snprintf(e[0], sizeof e[0], "COMMISSION_SCHEMA=%s", schema);
    snprintf(e[1], sizeof e[1], "COMMISSION_ORDER_TOPIC=%s", pair.topic);
    snprintf(e[2], sizeof e[2], "COMMISSION_ORDER_GROUP=commerce.commission.pcms-%ld", pid);
    snprintf(e[3], sizeof e[3], "COMMISSION_TOPIC=%s", ctopic);
    snprintf(e[4], sizeof e[4], "COMMISSION_PARTNER_TOPIC=%s", ptopic);
    snprintf(e[5], sizeof e[5], "COMMISSION_AFTER_SALE_DAYS=0");
    const char *env[] = {
        e[0], e[1], e[2], e[3], e[4], e[5], "COMMISSION_PAYABLE_MS=200", "COMMISSION_FEED=off",
        NULL};
    hs_proc cp;
    hs_start(&cp, COMMISSION_BIN, env);
    cm_rpc_client *cc = hs_client(&cp, NULL);

    /* 5 % up to 100.00 of period sales, 8 % above: orders cross a bound */
    Commerce__Common__V1__Money f0 = COMMERCE__COMMON__V1__MONEY__INIT,
                                f1 = COMMERCE__COMMON__V1__MONEY__INIT;
    f0.currency = f1.currency = "CNY";
    f1.amount_minor = 10000;
    Commerce__Commission__V1__Tier t0 = COMMERCE__COMMISSION__V1__TIER__INIT,
                                   t1 = COMMERCE__COMMISSION__V1__TIER__INIT;
    t0.from_sales = &f0;
    t0.rate_bps = 500;
    t1.from_sales = &f1;
    t1.rate_bps = 800;
    Commerce__Commission__V1__Tier *tp[] = {&t0, &t1};
    Commerce__Commission__V1__TierSchedule sc = COMMERCE__COMMISSION__V1__TIER_SCHEDULE__INIT;
    sc.tier_schedule_id = "ts-partner";
    sc.name = "partner";
    sc.currency = "CNY";
    sc.period = COMMERCE__COMMISSION__V1__PERIOD_TYPE__PERIOD_TYPE_MONTH;
    sc.time_zone = "Asia/Shanghai";
    sc.tiers = tp;
    sc.n_tiers = 2;
    sc.mode = COMMERCE__COMMISSION__V1__TIER_MODE__TIER_MODE_MARGINAL;
    Commerce__Commission__V1__PutTierScheduleRequest ps =
        COMMERCE__COMMISSION__V1__PUT_TIER_SCHEDULE_REQUEST__INIT;
    ps.request_id = "ps-1";
    ps.schedule = &sc;
    ProtobufCMessage *r = NULL;
    must_call(cc, CSVC "PutTierSchedule", &ps.base,
              &commerce__commission__v1__put_tier_schedule_response__descriptor, &r, md);
    protobuf_c_message_free_unpacked(r, NULL);
    /* a parent channel earning 10 % of the channel's commission: its
     * shares are adjustments of their own, keyed by the parent */
    char parent[80];
    snprintf(parent, sizeof parent, "%s-parent", channel);
    Commerce__Commission__V1__Channel ch = COMMERCE__COMMISSION__V1__CHANNEL__INIT;
    ch.channel_id = parent;
    ch.name = "partner parent channel";
    ch.type = COMMERCE__COMMISSION__V1__CHANNEL_TYPE__CHANNEL_TYPE_REGIONAL_AGENT;
    ch.state = COMMERCE__COMMISSION__V1__CHANNEL_STATE__CHANNEL_STATE_ACTIVE;
    ch.tier_schedule_id = "ts-partner";
    Commerce__Commission__V1__PutChannelRequest pc =
        COMMERCE__COMMISSION__V1__PUT_CHANNEL_REQUEST__INIT;
    pc.request_id = "pc-0";
    pc.channel = &ch;
    must_call(cc, CSVC "PutChannel", &pc.base,
              &commerce__commission__v1__put_channel_response__descriptor, &r, md);
    protobuf_c_message_free_unpacked(r, NULL);
    ch.channel_id = channel;
    ch.name = "partner channel";
    ch.type = COMMERCE__COMMISSION__V1__CHANNEL_TYPE__CHANNEL_TYPE_COMMUNITY_LEADER;
    ch.parent_channel_id = parent;
    ch.parent_override_bps = 1000;
    pc.request_id = "pc-1";
    must_call(cc, CSVC "PutChannel", &pc.base,
              &commerce__commission__v1__put_channel_response__descriptor, &r, md);
    protobuf_c_message_free_unpacked(r, NULL);

    cm_rpc_client *ic = pair.ic, *oc = pair.oc;
    Commerce__Inventory__V1__SetStockRequest ss = COMMERCE__INVENTORY__V1__SET_STOCK_REQUEST__INIT;
    ss.request_id = "pcms-stock-1";
    ss.sku = "PCMS-SKU";
    ss.available = 1000;
    ss.reason = "stock for the commission partner test";
    ss.actor = "test_partner";
    must_call(ic, ISVC "SetStock", &ss.base,
              &commerce__inventory__v1__set_stock_response__descriptor, &r, md);
    protobuf_c_message_free_unpacked(r, NULL);

    enum { N = 3 };
    char oid[N][CM_ID_SIZE];
    for (int i = 0; i < N; i++) {
        char rid[48], payid[64];
        snprintf(rid, sizeof rid, "pcms-%ld-%d", pid, i);
        Commerce__Common__V1__Money price = COMMERCE__COMMON__V1__MONEY__INIT;
        price.amount_minor = 4999 + 1000 * i;
        price.currency = "CNY";
        Commerce__Order__V1__CreateOrderLine l = COMMERCE__ORDER__V1__CREATE_ORDER_LINE__INIT;
        l.sku = "PCMS-SKU";
        l.quantity = 1 + i;
        l.unit_price = &price;
        Commerce__Order__V1__CreateOrderLine *lp[] = {&l};
        Commerce__Order__V1__CreateOrderRequest co =
            COMMERCE__ORDER__V1__CREATE_ORDER_REQUEST__INIT;
        co.request_id = rid;
        co.buyer_id = "buyer-9";
        co.merchant_id = "m-1024";
        co.channel_id = channel;
        co.currency = "CNY";
        co.lines = lp;
        co.n_lines = 1;
        Commerce__Order__V1__CreateOrderResponse *cr = NULL;
        must_call(oc, OSVC "CreateOrder", &co.base,
                  &commerce__order__v1__create_order_response__descriptor, (ProtobufCMessage **)&cr,
                  md);
        snprintf(oid[i], sizeof oid[i], "%s", cr->order->order_id);
        Commerce__Order__V1__MarkPaidRequest mp = COMMERCE__ORDER__V1__MARK_PAID_REQUEST__INIT;
        snprintf(payid, sizeof payid, "pay-%s", rid);
        mp.payment_id = payid;
        mp.order_id = oid[i];
        mp.amount = cr->order->total_amount;
        mp.provider = "alipay";
        must_call(oc, OSVC "MarkPaid", &mp.base,
                  &commerce__order__v1__mark_paid_response__descriptor, &r, md);
        protobuf_c_message_free_unpacked(r, NULL);
        protobuf_c_message_free_unpacked(&cr->base, NULL);
    }
    cms_wait_for(schema, "SELECT count(*) FROM commissions WHERE state = 1", N);
    /* orders 0 and 1 are shipped and received: payable at once (window 0) */
    for (int i = 0; i < 2; i++) {
        char rq[64];
        snprintf(rq, sizeof rq, "ship-%ld-%d", pid, i);
        Commerce__Order__V1__ShipOrderRequest so = COMMERCE__ORDER__V1__SHIP_ORDER_REQUEST__INIT;
        so.request_id = rq;
        so.order_id = oid[i];
        so.carrier = "sf-express";
        so.tracking_number = "SF1234567890";
        must_call(oc, OSVC "ShipOrder", &so.base,
                  &commerce__order__v1__ship_order_response__descriptor, &r, md);
        protobuf_c_message_free_unpacked(r, NULL);
        snprintf(rq, sizeof rq, "done-%ld-%d", pid, i);
        Commerce__Order__V1__CompleteOrderRequest dn =
            COMMERCE__ORDER__V1__COMPLETE_ORDER_REQUEST__INIT;
        dn.request_id = rq;
        dn.order_id = oid[i];
        must_call(oc, OSVC "CompleteOrder", &dn.base,
                  &commerce__order__v1__complete_order_response__descriptor, &r, md);
        protobuf_c_message_free_unpacked(r, NULL);
    }
    cms_wait_for(schema, "SELECT count(*) FROM commissions WHERE state = 2", 2);
    /* order 1 refunded in part after PAYABLE, order 2 in full while FROZEN */
    for (int i = 1; i < N; i++) {
        char rq[64];
        snprintf(rq, sizeof rq, "rf-%ld-%d", pid, i);
        Commerce__Common__V1__Money amt = COMMERCE__COMMON__V1__MONEY__INIT;
        amt.amount_minor = 3000;
        amt.currency = "CNY";
        Commerce__Order__V1__RefundOrderRequest rf =
            COMMERCE__ORDER__V1__REFUND_ORDER_REQUEST__INIT;
        rf.refund_id = rq;
        rf.order_id = oid[i];
        rf.scope = i == 1 ? COMMERCE__ORDER__V1__REFUND_SCOPE__REFUND_SCOPE_AMOUNT
                          : COMMERCE__ORDER__V1__REFUND_SCOPE__REFUND_SCOPE_FULL;
        rf.amount = i == 1 ? &amt : NULL;
        rf.reason = "partner test";
        must_call(oc, OSVC "RefundOrder", &rf.base,
                  &commerce__order__v1__refund_order_response__descriptor, &r, md);
        protobuf_c_message_free_unpacked(r, NULL);
    }
    cms_wait_for(schema, "SELECT count(*) FROM refunds_applied", 2);
    ck_assert_int_eq(cms_sql(schema, "SELECT count(*) FROM commissions WHERE state = 4"), 1);
    ck_assert_int_eq(cms_sql(schema, "SELECT count(*) FROM adjustments WHERE kind = 3"), 1);
    /* the channel is paid what it is owed, then the transfer succeeds */
    Commerce__Commission__V1__SettleCommissionsRequest sq =
        COMMERCE__COMMISSION__V1__SETTLE_COMMISSIONS_REQUEST__INIT;
    sq.request_id = "pcms-payout-1";
    sq.channel_id = channel;
    sq.currency = "CNY";
    Commerce__Commission__V1__SettleCommissionsResponse *sr = NULL;
    must_call(cc, CSVC "SettleCommissions", &sq.base,
              &commerce__commission__v1__settle_commissions_response__descriptor,
              (ProtobufCMessage **)&sr, md);
    ck_assert_ptr_nonnull(sr->payout);
    Commerce__Commission__V1__ReportPayoutResultRequest rq =
        COMMERCE__COMMISSION__V1__REPORT_PAYOUT_RESULT_REQUEST__INIT;
    rq.payout_id = sr->payout->payout_id;
    rq.result = COMMERCE__COMMISSION__V1__PAYOUT_STATE__PAYOUT_STATE_PAID;
    rq.provider_reference = "alipay-transfer-pcms";
    must_call(cc, CSVC "ReportPayoutResult", &rq.base,
              &commerce__commission__v1__report_payout_result_response__descriptor, &r, md);
    protobuf_c_message_free_unpacked(r, NULL);
    protobuf_c_message_free_unpacked(&sr->base, NULL);

    /* the relay publishes what the service committed; kcat reads it */
    char *out = strdup("/tmp/test_partner_cms_XXXXXX");
    int fd = mkstemp(out);
    ck_assert_int_ge(fd, 0);
    close(fd);
    char cmd[2048];
    /* the channel: its commissions' events, its adjustments (the refunds'
     * true-ups and the clawback after PAYABLE) and its payout; the parent:
     * its shares, two of them made payable with orders 0 and 1. -1: at
     * least one */
    enum { NK = 9 };
    static const char *const kinds9[NK] = {"accrued",        "payable",     "clawed_back",
                                           "settled",        "adjusted",    "adjustment_payable",
                                           "payout_created", "payout_paid", "payout_failed"};
    const int want[NK] = {N, 2, 2, 2, -1, 0, 1, 1, 0};
    const int want_parent[NK] = {0, 0, 0, 0, -1, 2, 0, 0, 0};
    int have[NK], have_parent[NK];
    for (int tries = 0; tries < 150; tries++) {
        snprintf(cmd, sizeof cmd, "kcat -C -b '%s' -t %s -o beginning -e -q -J > %s 2>/dev/null",
                 brokers, ptopic, out);
        ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
        int same = 1;
        for (int k = 0; k < NK; k++) {
            have[k] = count_kind(out, channel, kinds9[k]);
            have_parent[k] = count_kind(out, parent, kinds9[k]);
            same = same && (want[k] < 0 ? have[k] > 0 : have[k] == want[k]) &&
                   (want_parent[k] < 0 ? have_parent[k] > 0 : have_parent[k] == want_parent[k]);
        }
        if (same)
            break;
        usleep(200 * 1000);
    }
    for (int k = 0; k < NK; k++) {
        ck_assert_msg(want[k] < 0 ? have[k] > 0 : have[k] == want[k], "%s: %d records, want %d",
                      kinds9[k], have[k], want[k]);
        ck_assert_msg(want_parent[k] < 0 ? have_parent[k] > 0 : have_parent[k] == want_parent[k],
                      "parent %s: %d records, want %d", kinds9[k], have_parent[k], want_parent[k]);
    }
    validate_records(out, channel);
    validate_records(out, parent);
    unlink(out);
    free(out);

    /* the chain with nobody calling CompleteOrder: the order service's
     * sweeper completes a shipped order after the tenant's
     * auto_complete_after (1 s here), its OrderCompleted reaches
     * commission, and the commission becomes PAYABLE (window 0) */
    Commerce__Order__V1__PutTenantSettingsRequest ts =
        COMMERCE__ORDER__V1__PUT_TENANT_SETTINGS_REQUEST__INIT;
    Commerce__Order__V1__TenantSettings set = COMMERCE__ORDER__V1__TENANT_SETTINGS__INIT;
    Google__Protobuf__Duration pt = GOOGLE__PROTOBUF__DURATION__INIT,
                               ft = GOOGLE__PROTOBUF__DURATION__INIT,
                               ac = GOOGLE__PROTOBUF__DURATION__INIT;
    pt.seconds = 1800;
    ft.seconds = 300;
    ac.seconds = 1;
    set.payment_timeout = &pt;
    set.flash_payment_timeout = &ft;
    set.auto_complete_after = &ac;
    ts.request_id = "pcms-auto-complete";
    ts.settings = &set;
    ts.actor = "test_partner";
    ts.reason = "complete shipped orders after 1 s";
    must_call(oc, OSVC "PutTenantSettings", &ts.base,
              &commerce__order__v1__put_tenant_settings_response__descriptor, &r, md);
    protobuf_c_message_free_unpacked(r, NULL);
    {
        char rid[48], payid[64], sq_id[64], q[256];
        snprintf(rid, sizeof rid, "pcms-%ld-auto", pid);
        Commerce__Common__V1__Money price = COMMERCE__COMMON__V1__MONEY__INIT;
        price.amount_minor = 12345;
        price.currency = "CNY";
        Commerce__Order__V1__CreateOrderLine l = COMMERCE__ORDER__V1__CREATE_ORDER_LINE__INIT;
        l.sku = "PCMS-SKU";
        l.quantity = 1;
        l.unit_price = &price;
        Commerce__Order__V1__CreateOrderLine *lp[] = {&l};
        Commerce__Order__V1__CreateOrderRequest co =
            COMMERCE__ORDER__V1__CREATE_ORDER_REQUEST__INIT;
        co.request_id = rid;
        co.buyer_id = "buyer-9";
        co.merchant_id = "m-1024";
        co.channel_id = channel;
        co.currency = "CNY";
        co.lines = lp;
        co.n_lines = 1;
        Commerce__Order__V1__CreateOrderResponse *cr = NULL;
        must_call(oc, OSVC "CreateOrder", &co.base,
                  &commerce__order__v1__create_order_response__descriptor, (ProtobufCMessage **)&cr,
                  md);
        char auto_id[CM_ID_SIZE];
        snprintf(auto_id, sizeof auto_id, "%s", cr->order->order_id);
        Commerce__Order__V1__MarkPaidRequest mp = COMMERCE__ORDER__V1__MARK_PAID_REQUEST__INIT;
        snprintf(payid, sizeof payid, "pay-%s", rid);
        mp.payment_id = payid;
        mp.order_id = auto_id;
        mp.amount = cr->order->total_amount;
        mp.provider = "alipay";
        must_call(oc, OSVC "MarkPaid", &mp.base,
                  &commerce__order__v1__mark_paid_response__descriptor, &r, md);
        protobuf_c_message_free_unpacked(r, NULL);
        protobuf_c_message_free_unpacked(&cr->base, NULL);
        snprintf(q, sizeof q, "SELECT count(*) FROM commissions WHERE order_id = '%s'", auto_id);
        cms_wait_for(schema, q, 1);
        snprintf(sq_id, sizeof sq_id, "ship-%ld-auto", pid);
        Commerce__Order__V1__ShipOrderRequest so = COMMERCE__ORDER__V1__SHIP_ORDER_REQUEST__INIT;
        so.request_id = sq_id;
        so.order_id = auto_id;
        so.carrier = "sf-express";
        so.tracking_number = "SF1234567891";
        must_call(oc, OSVC "ShipOrder", &so.base,
                  &commerce__order__v1__ship_order_response__descriptor, &r, md);
        protobuf_c_message_free_unpacked(r, NULL);
        /* FROZEN until the sweeper completes the order */
        snprintf(q, sizeof q,
                 "SELECT count(*) FROM commissions WHERE order_id = '%s' AND state = 2 AND "
                 "payable_at IS NOT NULL",
                 auto_id);
        cms_wait_for(schema, q, 1);
        snprintf(q, sizeof q, "SELECT count(*) FROM completed_orders WHERE order_id = '%s'",
                 auto_id);
        ck_assert_int_eq(cms_sql(schema, q), 1);
    }

    cm_rpc_client_free(cc);
    ck_assert_int_eq(hs_stop(&cp, SIGTERM, 30000), 0);
    fx_stop(&pair);
    hs_kafka_delete_topic(brokers, ptopic);
    hs_kafka_delete_topic(brokers, ctopic);
    hs_drop_schema(NULL, schema);
}
END_TEST
#endif
#endif

static Suite *partner_suite(void)
{
    Suite *s = suite_create("partner");
    TCase *env = tcase_create("envelope");
    tcase_add_test(env, envelope_has_the_contract_attributes);
    suite_add_tcase(s, env);
    TCase *tc = tcase_create("kcat");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, kcat_reads_valid_partner_cloudevents);
#ifdef ORDER_BIN
    tcase_add_test(tc, partner_events_of_real_orders_validate);
#ifdef COMMISSION_BIN
    tcase_add_test(tc, commission_partner_events_of_real_orders_validate);
#endif
#endif
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    brokers = getenv("KAFKA_BROKERS");
    if (!brokers || !*brokers || !getenv("PG_DSN") || !*getenv("PG_DSN")) {
        fprintf(stderr, "test_partner: FAIL: KAFKA_BROKERS and PG_DSN must be set (scripts/test.sh "
                        "sets both)\n");
        return EXIT_FAILURE;
    }
    if (system("kcat -V >/dev/null 2>&1") != 0) {
        fprintf(stderr, "test_partner: FAIL: kcat is missing (scripts/install-deps.sh)\n");
        return EXIT_FAILURE;
    }
    cm_log_init("test_partner", CM_LOG_ERROR);
    SRunner *sr = srunner_create(partner_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
