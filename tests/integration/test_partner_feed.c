/*
 * the partner feed (services/commission/README.md, "The partner feed")
 * against the real broker, postgres and the reference webhook receiver
 * (kafka/partner/receivers/webhook_receiver.py): partners and their
 * configuration errors, isolation (a partner gets its own channels'
 * events only, on its webhook and on its topic), a receiver down for 30 s
 * under a steady flow (every event afterwards, once, in order per channel,
 * signed), a tampered request refused, replay with the same ids, secret
 * rotation, redelivery and the delivery log.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <grpc/status.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cm_id.h"
#include "commerce/commission/v1/commission_service.pb-c.h"
#include "commerce/events/v1/order_events.pb-c.h"

#define SVC "/commerce.commission.v1.CommissionService/"
#define TENANT "tenant-feed"
#define RECEIVER PARTNER_DIR "/receivers/webhook_receiver.py"
#define PARTNER_PYTHON SOURCE_DIR "/scripts/partner-python"

static const cm_rpc_md md[1] = {{"x-tenant-id", TENANT}};

/* ---- the service ---- */

typedef struct st {
    char schema[64], otopic[128], ctopic[128], ptopic[128], group[128], fgroup[128];
    char e[7][192];
    char keys[128]; /* the keyring file: webhook secrets sealed at rest */
    hs_proc p;
    cm_rpc_client *c;
    hs_producer *prod;
} st;

static st S;
static int seq;

#define KEY_1 "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEY_2 "k2:QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="

static void write_keys(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_ge(fputs(text, f), 0);
    ck_assert_int_eq(fclose(f), 0);
}

/* starts (again) with the test's settings, then extra's */
static void st_spawn(st *s, const char *const *extra)
{
    const char *base[] = {s->e[0],
                          s->e[1],
                          s->e[2],
                          s->e[3],
                          s->e[4],
                          s->e[5],
                          s->e[6],
                          "COMMISSION_WEBHOOK_ALLOW_HTTP=on",
                          "COMMISSION_WEBHOOK_ALLOW_CIDRS=127.0.0.0/8",
                          "COMMISSION_WEBHOOK_POLL_MS=20",
                          "COMMISSION_WEBHOOK_BACKOFF_MAX_MS=2000",
                          "COMMISSION_WEBHOOK_TIMEOUT_MS=3000",
                          NULL};
    const char *env[40];
    hs_start(&s->p, COMMISSION_BIN, hs_env_join(env, 40, base, extra));
    s->c = hs_client(&s->p, NULL);
}

static void st_start(st *s, const char *tag, const char *const *extra)
{
    memset(s, 0, sizeof *s);
    seq++;
    int pid = (int)getpid();
    snprintf(s->schema, sizeof s->schema, "feed_%s_%d_%d", tag, pid, seq);
    snprintf(s->otopic, sizeof s->otopic, "commerce.order.v1.feed-%s-%d-%d", tag, pid, seq);
    snprintf(s->ctopic, sizeof s->ctopic, "commerce.commission.v1.feed-%s-%d-%d", tag, pid, seq);
    snprintf(s->ptopic, sizeof s->ptopic, "commerce.commission.partner.v1.feed-%s-%d-%d", tag, pid,
             seq);
    snprintf(s->group, sizeof s->group, "commerce.commission.feed-%s-%d-%d", tag, pid, seq);
    snprintf(s->fgroup, sizeof s->fgroup, "commerce.commission.feedr-%s-%d-%d", tag, pid, seq);
    hs_kafka_create_topic(hs_kafka_brokers(), s->otopic, 2);
    hs_kafka_create_topic(hs_kafka_brokers(), s->ctopic, 2);
    hs_kafka_create_topic(hs_kafka_brokers(), s->ptopic, 2);
    snprintf(s->e[0], sizeof s->e[0], "COMMISSION_SCHEMA=%s", s->schema);
    snprintf(s->e[1], sizeof s->e[1], "COMMISSION_ORDER_TOPIC=%s", s->otopic);
    snprintf(s->e[2], sizeof s->e[2], "COMMISSION_ORDER_GROUP=%s", s->group);
    snprintf(s->e[3], sizeof s->e[3], "COMMISSION_TOPIC=%s", s->ctopic);
    snprintf(s->e[4], sizeof s->e[4], "COMMISSION_PARTNER_TOPIC=%s", s->ptopic);
    snprintf(s->e[5], sizeof s->e[5], "COMMISSION_FEED_GROUP=%s", s->fgroup);
    snprintf(s->keys, sizeof s->keys, "/tmp/commerce-feed-keys-%s-%d-%d", tag, pid, seq);
    write_keys(s->keys, KEY_1 "\n");
    snprintf(s->e[6], sizeof s->e[6], "COMMISSION_SECRETS_KEY_FILE=%s", s->keys);
    st_spawn(s, extra);
    s->prod = hs_producer_new(hs_kafka_brokers());
}

static void st_stop(st *s)
{
    cm_rpc_client_free(s->c);
    hs_producer_free(s->prod);
    ck_assert_msg(hs_stop(&s->p, SIGTERM, 30000) == 0, "commission did not exit 0 (log %s)",
                  s->p.log_path);
    hs_kafka_delete_topic(hs_kafka_brokers(), s->otopic);
    hs_kafka_delete_topic(hs_kafka_brokers(), s->ctopic);
    hs_kafka_delete_topic(hs_kafka_brokers(), s->ptopic);
    hs_drop_schema(NULL, s->schema);
    unlink(s->keys);
}

/* stops the service (its schema and topics stay) and starts it again */
static void st_restart(st *s, const char *const *extra)
{
    cm_rpc_client_free(s->c);
    ck_assert_msg(hs_stop(&s->p, SIGTERM, 30000) == 0, "commission did not exit 0 (log %s)",
                  s->p.log_path);
    st_spawn(s, extra);
}

static long long sql(const st *s, const char *q)
{
    return hs_sql_long(s->schema, q);
}

/* waits up to timeout_ms for the one-row query to read want */
static void wait_sql(const st *s, const char *q, long long want, int timeout_ms)
{
    if (hs_poll_sql(s->schema, q, want, timeout_ms, 100) != 0)
        ck_abort_msg("waited %d ms for %s = %lld, read %lld (log %s)", timeout_ms, q, want,
                     sql(s, q), s->p.log_path);
}

/* the "field" of a failure: the BadRequest's, else the ErrorInfo metadata's */
static const char *field_of(const cm_rpc_status *x)
{
    if (x->field[0])
        return x->field;
    for (int i = 0; i < x->n_meta; i++)
        if (strcmp(x->meta[i].key, "field") == 0)
            return x->meta[i].value;
    return "";
}

static void teardown(void)
{
    hs_teardown();
}

/* ---- configuration ---- */

/* 5 % flat, monthly, CNY */
static void put_schedule(st *s)
{
    Commerce__Common__V1__Money f0 = COMMERCE__COMMON__V1__MONEY__INIT;
    f0.currency = "CNY";
    Commerce__Commission__V1__Tier t0 = COMMERCE__COMMISSION__V1__TIER__INIT, *tp[1] = {&t0};
    t0.from_sales = &f0;
    t0.rate_bps = 500;
    Commerce__Commission__V1__ChannelType types[1] = {
        COMMERCE__COMMISSION__V1__CHANNEL_TYPE__CHANNEL_TYPE_AFFILIATE};
    Commerce__Commission__V1__TierSchedule sc = COMMERCE__COMMISSION__V1__TIER_SCHEDULE__INIT;
    sc.tier_schedule_id = "flat";
    sc.name = "flat";
    sc.currency = "CNY";
    sc.period = COMMERCE__COMMISSION__V1__PERIOD_TYPE__PERIOD_TYPE_MONTH;
    sc.time_zone = "Asia/Shanghai";
    sc.tiers = tp;
    sc.n_tiers = 1;
    sc.channel_types = types;
    sc.n_channel_types = 1;
    sc.mode = COMMERCE__COMMISSION__V1__TIER_MODE__TIER_MODE_MARGINAL;
    Commerce__Commission__V1__PutTierScheduleRequest r =
        COMMERCE__COMMISSION__V1__PUT_TIER_SCHEDULE_REQUEST__INIT;
    r.request_id = "sched-flat";
    r.schedule = &sc;
    cm_rpc_status stt;
    int code = hs_call(s->c, SVC "PutTierSchedule", &r.base,
                       &commerce__commission__v1__put_tier_schedule_response__descriptor, NULL,
                       &stt, md, 1);
    ck_assert_msg(code == 0, "PutTierSchedule: %d %s", code, stt.message);
}

static void put_channel(st *s, const char *id)
{
    Commerce__Commission__V1__Channel c = COMMERCE__COMMISSION__V1__CHANNEL__INIT;
    c.channel_id = (char *)id;
    c.name = "a channel";
    c.type = COMMERCE__COMMISSION__V1__CHANNEL_TYPE__CHANNEL_TYPE_AFFILIATE;
    c.state = COMMERCE__COMMISSION__V1__CHANNEL_STATE__CHANNEL_STATE_ACTIVE;
    c.tier_schedule_id = "flat";
    Commerce__Commission__V1__PutChannelRequest r =
        COMMERCE__COMMISSION__V1__PUT_CHANNEL_REQUEST__INIT;
    char req[96];
    snprintf(req, sizeof req, "ch-%s", id);
    r.request_id = req;
    r.channel = &c;
    cm_rpc_status stt;
    int code =
        hs_call(s->c, SVC "PutChannel", &r.base,
                &commerce__commission__v1__put_channel_response__descriptor, NULL, &stt, md, 1);
    ck_assert_msg(code == 0, "PutChannel %s: %d %s", id, code, stt.message);
}

/* PutPartner: the code; *resp (may be NULL) on OK */
static int put_partner(st *s, const char *req_id, const char *id, const char *const *channels,
                       int kafka, const char *url, int hook_on, cm_rpc_status *stt,
                       Commerce__Commission__V1__PutPartnerResponse **resp)
{
    Commerce__Commission__V1__PartnerKafka k = COMMERCE__COMMISSION__V1__PARTNER_KAFKA__INIT;
    k.enabled = kafka;
    Commerce__Commission__V1__PartnerWebhook w = COMMERCE__COMMISSION__V1__PARTNER_WEBHOOK__INIT;
    w.enabled = hook_on;
    w.url = (char *)(url ? url : "");
    Commerce__Commission__V1__Partner p = COMMERCE__COMMISSION__V1__PARTNER__INIT;
    p.partner_id = (char *)id;
    p.name = "a partner";
    size_t n = 0;
    while (channels && channels[n])
        n++;
    p.channel_ids = (char **)channels;
    p.n_channel_ids = n;
    p.kafka = &k;
    p.webhook = &w;
    Commerce__Commission__V1__PutPartnerRequest r =
        COMMERCE__COMMISSION__V1__PUT_PARTNER_REQUEST__INIT;
    r.request_id = (char *)req_id;
    r.partner = &p;
    return hs_call(s->c, SVC "PutPartner", &r.base,
                   &commerce__commission__v1__put_partner_response__descriptor,
                   (ProtobufCMessage **)resp, stt, md, 1);
}

static Commerce__Commission__V1__Partner *get_partner(st *s, const char *id, int *code)
{
    Commerce__Commission__V1__GetPartnerRequest r =
        COMMERCE__COMMISSION__V1__GET_PARTNER_REQUEST__INIT;
    r.partner_id = (char *)id;
    Commerce__Commission__V1__GetPartnerResponse *resp = NULL;
    cm_rpc_status stt;
    *code = hs_call(s->c, SVC "GetPartner", &r.base,
                    &commerce__commission__v1__get_partner_response__descriptor,
                    (ProtobufCMessage **)&resp, &stt, md, 1);
    if (*code)
        return NULL;
    Commerce__Commission__V1__Partner *p = resp->partner;
    resp->partner = NULL;
    commerce__commission__v1__get_partner_response__free_unpacked(resp, NULL);
    return p;
}

/* ---- order events (as the order service sends them) ---- */

static char *uuid(void)
{
    static char ids[64][CM_ID_SIZE];
    static int k;
    char *id = ids[k++ % 64];
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    return id;
}

/* an order id as the order service makes them: a UUIDv8 */
static char *order_uuid(void)
{
    char *id = uuid();
    id[14] = '8';
    return id;
}

static void paid(st *s, const char *channel, long long amount)
{
    char order_id[CM_ID_SIZE], event_id[CM_ID_SIZE];
    snprintf(order_id, sizeof order_id, "%s", order_uuid());
    snprintf(event_id, sizeof event_id, "%s", uuid());
    long long at_ms = hs_real_ms();
    Commerce__Common__V1__Money m = COMMERCE__COMMON__V1__MONEY__INIT;
    m.amount_minor = amount;
    m.currency = "CNY";
    Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    at.seconds = at_ms / 1000;
    at.nanos = (int32_t)(at_ms % 1000) * 1000000;
    Commerce__Order__V1__Payment pay = COMMERCE__ORDER__V1__PAYMENT__INIT;
    pay.payment_id = "pay-1";
    pay.amount = &m;
    pay.paid_at = &at;
    Commerce__Order__V1__Order o = COMMERCE__ORDER__V1__ORDER__INIT;
    o.order_id = order_id;
    o.merchant_id = "m-1";
    o.channel_id = (char *)channel;
    o.currency = "CNY";
    o.total_amount = &m;
    o.payment = &pay;
    Commerce__Events__V1__OrderPaid e = COMMERCE__EVENTS__V1__ORDER_PAID__INIT;
    e.event_id = event_id;
    e.tenant_id = TENANT;
    e.order_id = order_id;
    e.order = &o;
    hs_produce_event(s->prod, s->otopic, order_id, "commerce.events.v1.OrderPaid",
                     "/commerce/order", event_id, TENANT, &e.base);
}

/* ---- the reference webhook receiver ---- */

typedef struct rcv {
    pid_t pid;
    int port;
    char log[256], db[256], out[256];
} rcv;

static int port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

static void rcv_init(rcv *r, const char *tag)
{
    memset(r, 0, sizeof *r);
    r->port = hs_free_port();
    snprintf(r->log, sizeof r->log, "/tmp/commerce-feed-%s-%d.jsonl", tag, (int)getpid());
    snprintf(r->db, sizeof r->db, "/tmp/commerce-feed-%s-%d.sqlite", tag, (int)getpid());
    snprintf(r->out, sizeof r->out, "/tmp/commerce-feed-%s-%d.out", tag, (int)getpid());
    unlink(r->log);
    unlink(r->db);
}

/* starts it with up to two secrets; waits until it listens */
static void rcv_start(rcv *r, const char *secret, const char *secret2)
{
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", r->port);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        FILE *f = freopen(r->out, "a", stdout);
        (void)f;
        dup2(1, 2);
        const char *argv[16] = {PARTNER_PYTHON, RECEIVER, "--listen", listen,     "--log", r->log,
                                "--dedup-db",   r->db,    "--quiet",  "--secret", secret};
        int n = 11;
        if (secret2) {
            argv[n++] = "--secret";
            argv[n++] = secret2;
        }
        argv[n] = NULL;
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    r->pid = pid;
    for (int i = 0; i < 200 && !port_open(r->port); i++)
        usleep(50000);
    ck_assert_msg(port_open(r->port), "the webhook receiver did not listen (log %s)", r->out);
}

static void rcv_stop(rcv *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGTERM);
        waitpid(r->pid, NULL, 0);
        r->pid = 0;
    }
}

static char *rcv_url(const rcv *r)
{
    static char u[4][96];
    static int k;
    char *s = u[k++ % 4];
    snprintf(s, 96, "http://127.0.0.1:%d/hooks/commerce", r->port);
    return s;
}

typedef struct got {
    char id[64], channel[80], type[80];
} got;

/* the new events the receiver logged, in arrival order */
static size_t rcv_read(const rcv *r, got *out, size_t cap)
{
    FILE *f = fopen(r->log, "r");
    if (!f)
        return 0;
    size_t n = 0;
    char line[4096];
    while (n < cap && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        if (!j)
            continue;
        snprintf(out[n].id, sizeof out[n].id, "%s", json_string_value(json_object_get(j, "id")));
        snprintf(out[n].channel, sizeof out[n].channel, "%s",
                 json_string_value(json_object_get(j, "channel")));
        snprintf(out[n].type, sizeof out[n].type, "%s",
                 json_string_value(json_object_get(j, "type")));
        json_decref(j);
        n++;
    }
    fclose(f);
    return n;
}

static size_t rcv_wait(const rcv *r, size_t want, int timeout_ms, got *out, size_t cap)
{
    long long end = hs_real_ms() + timeout_ms;
    size_t n;
    while ((n = rcv_read(r, out, cap)) < want && hs_real_ms() < end)
        usleep(100000);
    return n;
}

/* one raw POST to the receiver: the HTTP status */
static int raw_post(int port, const char *sig, const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    char req[16384];
    int n = snprintf(req, sizeof req,
                     "POST /hooks/commerce HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     "application/cloudevents+json; charset=UTF-8\r\nCommerce-Signature: "
                     "%s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     sig, strlen(body), body);
    ck_assert_int_eq(write(fd, req, (size_t)n), n);
    char resp[512] = {0};
    ssize_t rd = read(fd, resp, sizeof resp - 1);
    close(fd);
    int status = 0;
    if (rd > 12)
        sscanf(resp, "HTTP/1.%*d %d", &status);
    return status;
}

/* ---- tests ---- */

START_TEST(bad_configuration_is_refused_naming_the_field)
{
    st *s = &S;
    st_start(s, "bad", NULL);
    put_schedule(s);
    put_channel(s, "c-1");
    put_channel(s, "c-2");
    cm_rpc_status stt;
    const char *one[] = {"c-1", NULL};
    static const struct {
        const char *url;
        const char *why;
    } bad_urls[] = {
        {"ftp://127.0.0.1/x", "a scheme other than http(s)"},
        {"http://user:pw@127.0.0.1/x", "credentials in the URL"},
        {"https://10.1.2.3/hook", "a private address not allowed"},
        {"http://169.254.169.254/latest", "link-local (cloud metadata)"},
        {"https://[::1]/hook", "IPv6 loopback, not in the allow-list"},
        {"not a url", "not a URL"},
        {"http://127.0.0.1/x#frag", "a fragment"},
    };
    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
        int code = put_partner(s, "p-bad", "p1", one, 0, bad_urls[i].url, 1, &stt, NULL);
        ck_assert_msg(code == GRPC_STATUS_INVALID_ARGUMENT, "%s (%s): %d", bad_urls[i].url,
                      bad_urls[i].why, code);
        ck_assert_str_eq(stt.field, "partner.webhook.url");
    }
    ck_assert_int_eq(put_partner(s, "p-bad-2", "p1", one, 0, NULL, 1, &stt, NULL),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(stt.field, "partner.webhook.url");
    ck_assert_int_eq(put_partner(s, "p-bad-3", "p.1", one, 0, NULL, 0, &stt, NULL),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(stt.field, "partner.partner_id");
    const char *dup[] = {"c-1", "c-2", "c-1", NULL};
    ck_assert_int_eq(put_partner(s, "p-bad-4", "p1", dup, 0, NULL, 0, &stt, NULL),
                     GRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_str_eq(stt.field, "partner.channel_ids[2]");
    const char *unknown[] = {"c-1", "nope", NULL};
    ck_assert_int_eq(put_partner(s, "p-bad-5", "p1", unknown, 0, NULL, 0, &stt, NULL),
                     GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(stt.reason, "REFERENCE_NOT_FOUND");
    ck_assert_str_eq(field_of(&stt), "partner.channel_ids[1]");
    /* nothing of the refused calls was stored */
    int code = 0;
    ck_assert_ptr_null(get_partner(s, "p1", &code));
    ck_assert_int_eq(code, GRPC_STATUS_NOT_FOUND);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM channels WHERE partner_id <> ''"), 0);

    /* a channel has one partner: another partner cannot take it */
    ck_assert_int_eq(put_partner(s, "p-ok-1", "p1", one, 0, NULL, 0, &stt, NULL), 0);
    const char *taken[] = {"c-2", "c-1", NULL};
    ck_assert_int_eq(put_partner(s, "p-bad-6", "p2", taken, 0, NULL, 0, &stt, NULL),
                     GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(stt.reason, "ILLEGAL_STATE_TRANSITION");
    ck_assert_str_eq(field_of(&stt), "partner.channel_ids[1]");
    ck_assert_ptr_null(get_partner(s, "p2", &code));
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM channels WHERE partner_id = 'p1'"), 1);
    /* the same key with another body */
    ck_assert_int_eq(put_partner(s, "p-ok-1", "p1", taken, 0, NULL, 0, &stt, NULL),
                     GRPC_STATUS_ALREADY_EXISTS);
    /* PutPartner sets the list: c-2 moves in, c-1 out */
    const char *two[] = {"c-2", NULL};
    ck_assert_int_eq(put_partner(s, "p-ok-2", "p1", two, 0, NULL, 0, &stt, NULL), 0);
    Commerce__Commission__V1__Partner *p = get_partner(s, "p1", &code);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(p->n_channel_ids, 1);
    ck_assert_str_eq(p->channel_ids[0], "c-2");
    ck_assert_int_eq(p->revision, 2);
    ck_assert_str_eq(p->kafka->topic, "commerce.partner.v1." TENANT ".p1");
    ck_assert_str_eq(p->kafka->username, TENANT ".p1");
    commerce__commission__v1__partner__free_unpacked(p, NULL);
    st_stop(s);
}
END_TEST

/* the event ids of the partner's deliveries of one reason, in order */
static size_t delivery_ids(const st *s, const char *partner, int reason, char (*out)[64],
                           size_t cap)
{
    PGconn *pg = hs_pg_connect(NULL);
    char q[512];
    snprintf(q, sizeof q,
             "SELECT f.event_id FROM \"%s\".webhook_deliveries d JOIN \"%s\".feed_events f ON "
             "f.seq = d.seq WHERE d.partner_id = '%s' AND d.reason = %d ORDER BY d.delivery_id",
             s->schema, s->schema, partner, reason);
    PGresult *r = PQexec(pg, q);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    size_t n = (size_t)PQntuples(r);
    for (size_t i = 0; i < n && i < cap; i++)
        snprintf(out[i], 64, "%s", PQgetvalue(r, (int)i, 0));
    PQclear(r);
    PQfinish(pg);
    return n < cap ? n : cap;
}

START_TEST(webhooks_isolated_signed_and_kafka_per_partner)
{
    st *s = &S;
    st_start(s, "iso", NULL);
    put_schedule(s);
    const char *chans[] = {"a-1", "a-2", "b-1", "nobody"};
    for (int i = 0; i < 4; i++)
        put_channel(s, chans[i]);
    rcv ra, rb;
    rcv_init(&ra, "iso-a");
    rcv_init(&rb, "iso-b");
    cm_rpc_status stt;
    Commerce__Commission__V1__PutPartnerResponse *pa = NULL, *pb = NULL;
    const char *ca[] = {"a-1", "a-2", NULL}, *cb[] = {"b-1", NULL};
    /* partner ids of this run: their kafka users and topics outlive it */
    char ida[32], idb[32];
    snprintf(ida, sizeof ida, "pa-%d", (int)getpid());
    snprintf(idb, sizeof idb, "pb-%d", (int)getpid());
    ck_assert_int_eq(put_partner(s, "pa-1", ida, ca, 1, rcv_url(&ra), 1, &stt, &pa), 0);
    ck_assert_int_eq(put_partner(s, "pb-1", idb, cb, 0, rcv_url(&rb), 1, &stt, &pb), 0);
    ck_assert_msg(strncmp(pa->webhook_secret, "whsec_", 6) == 0, "secret %s", pa->webhook_secret);
    ck_assert_uint_eq(strlen(pa->webhook_secret), 49);
    ck_assert_str_ne(pa->webhook_secret, pb->webhook_secret);
    /* at rest: sealed under the keyring's key, no secret in the clear */
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM partners WHERE secret LIKE 'cms1:k1:%'"), 2);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM partners WHERE strpos(secret || "
                            "previous_secret, 'whsec_') > 0"),
                     0);
    /* a retry of the put gets the secret again; a later put none */
    Commerce__Commission__V1__PutPartnerResponse *again = NULL;
    ck_assert_int_eq(put_partner(s, "pa-1", ida, ca, 1, rcv_url(&ra), 1, &stt, &again), 0);
    ck_assert_str_eq(again->webhook_secret, pa->webhook_secret);
    commerce__commission__v1__put_partner_response__free_unpacked(again, NULL);
    rcv_start(&ra, pa->webhook_secret, NULL);
    rcv_start(&rb, pb->webhook_secret, NULL);
    char topic_a[256];
    snprintf(topic_a, sizeof topic_a, "commerce.partner.v1." TENANT ".%s", ida);
    hs_topic *ta = hs_topic_open(hs_kafka_brokers(), topic_a, 0);

    for (int i = 0; i < 5; i++) {
        paid(s, "a-1", 10000 + i);
        paid(s, "a-2", 20000 + i);
        paid(s, "b-1", 30000 + i);
        paid(s, "nobody", 40000 + i);
    }
    got ga[64], gb[64];
    size_t na = rcv_wait(&ra, 10, 30000, ga, 64);
    size_t nb = rcv_wait(&rb, 5, 30000, gb, 64);
    ck_assert_msg(na == 10, "partner a received %zu of 10 (log %s)", na, s->p.log_path);
    ck_assert_msg(nb == 5, "partner b received %zu of 5", nb);
    for (size_t i = 0; i < na; i++) {
        ck_assert_msg(strcmp(ga[i].channel, "a-1") == 0 || strcmp(ga[i].channel, "a-2") == 0,
                      "partner a got channel %s", ga[i].channel);
        ck_assert_str_eq(ga[i].type, "com.commerce.commission.v1.accrued");
    }
    for (size_t i = 0; i < nb; i++)
        ck_assert_str_eq(gb[i].channel, "b-1");
    /* the unowned channel's events were routed nowhere */
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM feed_events WHERE channel_id = 'nobody'"), 0);
    /* kafka: partner a's own topic has its 10 events, keyed by channel, as
     * structured cloudevents with the same ids */
    ck_assert_uint_eq(hs_topic_read(ta, 10, 30000), 10);
    hs_topic_catch_up(ta, 5000);
    ck_assert_uint_eq(hs_topic_count(ta), 10);
    for (size_t i = 0; i < 10; i++) {
        const hs_record *rec = hs_topic_at(ta, i);
        ck_assert_msg(strcmp(rec->key, "a-1") == 0 || strcmp(rec->key, "a-2") == 0, "key %s",
                      rec->key);
        ck_assert_str_eq(rec->content_type, "application/cloudevents+json; charset=UTF-8");
        ck_assert_str_eq(rec->id, ""); /* structured mode: no ce_id header */
        json_t *j = json_loadb((const char *)rec->payload, rec->len, 0, NULL);
        ck_assert_ptr_nonnull(j);
        const char *id = json_string_value(json_object_get(j, "id"));
        int found = 0;
        for (size_t k = 0; k < na; k++)
            found += strcmp(ga[k].id, id) == 0;
        ck_assert_msg(found == 1, "kafka event %s not delivered by webhook once", id);
        json_decref(j);
    }
    hs_topic_close(ta);
    /* the partner reads its topic as itself: the reference consumer with
     * its SASL/SCRAM user (the recipe of kafka-access.md, applied by
     * kafka.sh partner-access); the other partner's user is refused */
    char cmd[2048], logp[128], outp[128];
    snprintf(logp, sizeof logp, "/tmp/commerce-feed-kafka-%d.jsonl", (int)getpid());
    snprintf(outp, sizeof outp, "/tmp/commerce-feed-kafka-%d.out", (int)getpid());
    unlink(logp);
    snprintf(cmd, sizeof cmd,
             "%s/scripts/kafka.sh partner-access " TENANT " %s pa-secret-%d >%s 2>&1 && "
             "%s/scripts/kafka.sh partner-access " TENANT " %s pb-secret-%d >>%s 2>&1",
             SOURCE_DIR, ida, (int)getpid(), outp, SOURCE_DIR, idb, (int)getpid(), outp);
    ck_assert_msg(system(cmd) == 0, "partner-access failed (%s)", outp);
    for (int who = 0; who < 2; who++) {
        const char *id = who ? idb : ida;
        snprintf(cmd, sizeof cmd,
                 "timeout 90 %s %s/receivers/kafka_consumer.py --bootstrap "
                 "\"$(%s/scripts/kafka.sh sasl-bootstrap)\" --security-protocol SASL_PLAINTEXT "
                 "--topic %s --group commerce.partner.v1." TENANT ".%s.stmt --username " TENANT
                 ".%s --password %s-secret-%d --from-beginning --max-idle 8 --log %s >>%s 2>&1",
                 PARTNER_PYTHON, PARTNER_DIR, SOURCE_DIR, topic_a, id, id, who ? "pb" : "pa",
                 (int)getpid(), logp, outp);
        int rc = system(cmd);
        rcv lr = {0};
        snprintf(lr.log, sizeof lr.log, "%s", logp);
        got gk[32];
        size_t nk = rcv_read(&lr, gk, 32);
        if (who == 0) {
            ck_assert_msg(rc == 0 && nk == 10, "partner a read %zu of its 10 events (rc %d, %s)",
                          nk, rc, outp);
            for (size_t i = 0; i < nk; i++)
                ck_assert_msg(strncmp(gk[i].channel, "a-", 2) == 0, "channel %s", gk[i].channel);
        } else {
            ck_assert_msg(rc != 0 && nk == 10, "partner b read partner a's topic (rc %d, %s)", rc,
                          outp);
        }
    }
    /* replay to kafka: channel a-1's events again, the same ids in the same
     * order, after the 10 live ones */
    Commerce__Commission__V1__ReplayPartnerEventsRequest rr =
        COMMERCE__COMMISSION__V1__REPLAY_PARTNER_EVENTS_REQUEST__INIT;
    Commerce__Common__V1__TimeRange range = COMMERCE__COMMON__V1__TIME_RANGE__INIT;
    Google__Protobuf__Timestamp from = GOOGLE__PROTOBUF__TIMESTAMP__INIT,
                                to = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    from.seconds = hs_real_ms() / 1000 - 3600;
    to.seconds = hs_real_ms() / 1000 + 60;
    range.start_at = &from;
    range.end_at = &to;
    rr.request_id = "replay-kafka-1";
    rr.partner_id = ida;
    rr.channel_id = "a-1";
    rr.range = &range;
    rr.target = COMMERCE__COMMISSION__V1__REPLAY_TARGET__REPLAY_TARGET_KAFKA;
    Commerce__Commission__V1__ReplayPartnerEventsResponse *rresp = NULL;
    ck_assert_int_eq(hs_call(s->c, SVC "ReplayPartnerEvents", &rr.base,
                             &commerce__commission__v1__replay_partner_events_response__descriptor,
                             (ProtobufCMessage **)&rresp, &stt, md, 1),
                     0);
    ck_assert_int_eq(rresp->events, 5);
    commerce__commission__v1__replay_partner_events_response__free_unpacked(rresp, NULL);
    /* a retry queues nothing again */
    ck_assert_int_eq(hs_call(s->c, SVC "ReplayPartnerEvents", &rr.base,
                             &commerce__commission__v1__replay_partner_events_response__descriptor,
                             NULL, &stt, md, 1),
                     0);
    hs_topic *tr = hs_topic_open(hs_kafka_brokers(), topic_a, 0);
    ck_assert_uint_eq(hs_topic_read(tr, 15, 30000), 15);
    usleep(1000000);
    hs_topic_catch_up(tr, 5000);
    ck_assert_uint_eq(hs_topic_count(tr), 15);
    char live_a1[5][64], again_a1[5][64];
    int nl = 0, nagain = 0;
    for (size_t i = 0; i < hs_topic_count(tr); i++) {
        const hs_record *rec = hs_topic_at(tr, i);
        if (strcmp(rec->key, "a-1") != 0)
            continue;
        json_t *j = json_loadb((const char *)rec->payload, rec->len, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "id"));
        /* one partition per key: the first five are the live ones */
        if (nl < 5)
            snprintf(live_a1[nl++], 64, "%s", id);
        else if (nagain < 5)
            snprintf(again_a1[nagain++], 64, "%s", id);
        json_decref(j);
    }
    ck_assert_int_eq(nl, 5);
    ck_assert_int_eq(nagain, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_str_eq(again_a1[i], live_a1[i]);
    hs_topic_close(tr);
    snprintf(cmd, sizeof cmd,
             "%s/scripts/kafka.sh partner-revoke " TENANT " %s >>%s 2>&1; "
             "%s/scripts/kafka.sh partner-revoke " TENANT " %s >>%s 2>&1",
             SOURCE_DIR, ida, outp, SOURCE_DIR, idb, outp);
    ck_assert_int_eq(system(cmd), 0);
    hs_kafka_delete_topic(hs_kafka_brokers(), topic_a);
    /* a tampered copy of a delivered body is refused by the receiver */
    PGconn *pg = hs_pg_connect(NULL);
    char q[4096];
    snprintf(q, sizeof q, "SELECT body FROM \"%s\".feed_events WHERE partner_id = '%s' LIMIT 1",
             s->schema, ida);
    PGresult *r = PQexec(pg, q);
    ck_assert_int_eq(PQntuples(r), 1);
    char body[8192];
    snprintf(body, sizeof body, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(pg);
    char *amt = strstr(body, "\"amount_minor\":\"");
    ck_assert_ptr_nonnull(amt);
    amt[16] = amt[16] == '9' ? '8' : '9';
    char sig[256];
    snprintf(sig, sizeof sig, "t=%lld,v1=%064d", hs_real_ms() / 1000, 0);
    ck_assert_int_eq(raw_post(ra.port, sig, body), 401);
    /* the delivery log: every delivery once, with its 2xx attempt */
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM webhook_deliveries WHERE delivered_at IS NULL"),
                     0);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM webhook_attempts WHERE http_status NOT BETWEEN "
                            "200 AND 299"),
                     0);
    Commerce__Commission__V1__ListWebhookDeliveriesRequest lr =
        COMMERCE__COMMISSION__V1__LIST_WEBHOOK_DELIVERIES_REQUEST__INIT;
    lr.partner_id = ida;
    lr.page_size = 4;
    Commerce__Commission__V1__ListWebhookDeliveriesResponse *lresp = NULL;
    ck_assert_int_eq(
        hs_call(s->c, SVC "ListWebhookDeliveries", &lr.base,
                &commerce__commission__v1__list_webhook_deliveries_response__descriptor,
                (ProtobufCMessage **)&lresp, &stt, md, 1),
        0);
    ck_assert_uint_eq(lresp->n_deliveries, 4);
    ck_assert_str_ne(lresp->next_page_token, "");
    for (size_t i = 0; i < lresp->n_deliveries; i++) {
        Commerce__Commission__V1__WebhookDelivery *d = lresp->deliveries[i];
        ck_assert(d->delivered);
        ck_assert_int_eq(d->attempts, 1);
        ck_assert_uint_eq(d->n_recent_attempts, 1);
        ck_assert_int_eq(d->recent_attempts[0]->http_status / 100, 2);
        ck_assert_int_eq(d->reason,
                         COMMERCE__COMMISSION__V1__DELIVERY_REASON__DELIVERY_REASON_LIVE);
    }
    commerce__commission__v1__list_webhook_deliveries_response__free_unpacked(lresp, NULL);
    rcv_stop(&ra);
    rcv_stop(&rb);
    commerce__commission__v1__put_partner_response__free_unpacked(pa, NULL);
    commerce__commission__v1__put_partner_response__free_unpacked(pb, NULL);
    st_stop(s);
}
END_TEST

START_TEST(receiver_down_30s_then_everything_once_in_order)
{
    st *s = &S;
    st_start(s, "down", NULL);
    put_schedule(s);
    put_channel(s, "d-1");
    put_channel(s, "d-2");
    rcv r;
    rcv_init(&r, "down");
    cm_rpc_status stt;
    Commerce__Commission__V1__PutPartnerResponse *pr = NULL;
    const char *ch[] = {"d-1", "d-2", NULL};
    ck_assert_int_eq(put_partner(s, "pd-1", "pd", ch, 0, rcv_url(&r), 1, &stt, &pr), 0);
    rcv_start(&r, pr->webhook_secret, NULL);
    /* a steady flow: 4 payments a second for 40 s; the receiver is down
     * from the 5th second to the 35th */
    int sent = 0;
    long long start = hs_real_ms();
    int stopped = 0, restarted = 0;
    while (hs_real_ms() - start < 40000) {
        long long t = hs_real_ms() - start;
        if (!stopped && t >= 5000) {
            rcv_stop(&r);
            stopped = 1;
        }
        if (stopped && !restarted && t >= 35000) {
            rcv_start(&r, pr->webhook_secret, NULL);
            restarted = 1;
        }
        paid(s, sent % 2 ? "d-2" : "d-1", 1000 + sent);
        sent++;
        usleep(250000);
    }
    ck_assert(restarted);
    /* the endpoint failed while down (backoff, not disabled) */
    ck_assert_int_gt(sql(s, "SELECT count(*) FROM webhook_attempts WHERE http_status = 0"), 0);
    got *g = calloc((size_t)sent + 16, sizeof *g);
    size_t n = rcv_wait(&r, (size_t)sent, 60000, g, (size_t)sent + 16);
    ck_assert_msg(n == (size_t)sent, "received %zu of %d events", n, sent);
    /* once by id (the receiver's dedup log holds new ids only, so compare
     * with the sender's view too: one delivery per event, all delivered) */
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            ck_assert_str_ne(g[i].id, g[j].id);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM webhook_deliveries"), sent);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM webhook_deliveries WHERE delivered_at IS NULL"),
                     0);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM (SELECT delivery_id FROM webhook_attempts WHERE "
                            "http_status BETWEEN 200 AND 299 GROUP BY delivery_id HAVING count(*) "
                            "> 1) x"),
                     0);
    /* in order per channel: the order the commission service produced them
     * (feed seq, which follows the internal topic's order per channel) */
    char(*want)[64] = calloc((size_t)sent, 64);
    for (int c = 0; c < 2; c++) {
        const char *chan = c ? "d-2" : "d-1";
        PGconn *pg = hs_pg_connect(NULL);
        char q[4096];
        snprintf(q, sizeof q,
                 "SELECT event_id FROM \"%s\".feed_events WHERE channel_id = '%s' ORDER BY seq",
                 s->schema, chan);
        PGresult *res = PQexec(pg, q);
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(g[i].channel, chan) != 0)
                continue;
            ck_assert_msg((int)k < PQntuples(res), "more %s events received than routed", chan);
            ck_assert_msg(strcmp(g[i].id, PQgetvalue(res, (int)k, 0)) == 0,
                          "channel %s: event %zu out of order", chan, k);
            k++;
        }
        ck_assert_int_eq((int)k, PQntuples(res));
        PQclear(res);
        PQfinish(pg);
    }
    free(want);
    /* the partner is healthy again */
    int code = 0;
    Commerce__Commission__V1__Partner *p = get_partner(s, "pd", &code);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(p->webhook->state,
                     COMMERCE__COMMISSION__V1__WEBHOOK_STATE__WEBHOOK_STATE_ACTIVE);
    ck_assert_int_eq(p->webhook->pending, 0);
    commerce__commission__v1__partner__free_unpacked(p, NULL);

    /* replay: the same ids again, to the webhook, in their order */
    Commerce__Commission__V1__ReplayPartnerEventsRequest rr =
        COMMERCE__COMMISSION__V1__REPLAY_PARTNER_EVENTS_REQUEST__INIT;
    Commerce__Common__V1__TimeRange range = COMMERCE__COMMON__V1__TIME_RANGE__INIT;
    Google__Protobuf__Timestamp from = GOOGLE__PROTOBUF__TIMESTAMP__INIT,
                                to = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    from.seconds = start / 1000 - 60;
    to.seconds = hs_real_ms() / 1000 + 60;
    range.start_at = &from;
    range.end_at = &to;
    rr.request_id = "replay-1";
    rr.partner_id = "pd";
    rr.channel_id = "d-2";
    rr.range = &range;
    rr.target = COMMERCE__COMMISSION__V1__REPLAY_TARGET__REPLAY_TARGET_WEBHOOK;
    Commerce__Commission__V1__ReplayPartnerEventsResponse *rresp = NULL;
    ck_assert_int_eq(hs_call(s->c, SVC "ReplayPartnerEvents", &rr.base,
                             &commerce__commission__v1__replay_partner_events_response__descriptor,
                             (ProtobufCMessage **)&rresp, &stt, md, 1),
                     0);
    ck_assert_int_eq(rresp->events, sent / 2);
    commerce__commission__v1__replay_partner_events_response__free_unpacked(rresp, NULL);
    /* kafka is off for this partner */
    rr.request_id = "replay-2";
    rr.target = COMMERCE__COMMISSION__V1__REPLAY_TARGET__REPLAY_TARGET_KAFKA;
    ck_assert_int_eq(hs_call(s->c, SVC "ReplayPartnerEvents", &rr.base,
                             &commerce__commission__v1__replay_partner_events_response__descriptor,
                             NULL, &stt, md, 1),
                     GRPC_STATUS_FAILED_PRECONDITION);
    wait_sql(
        s, "SELECT count(*) FROM webhook_deliveries WHERE reason = 2 AND delivered_at IS NOT NULL",
        sent / 2, 30000);
    char(*live)[64] = calloc((size_t)sent, 64);
    char(*again)[64] = calloc((size_t)sent, 64);
    size_t nl = delivery_ids(s, "pd", 1, live, (size_t)sent);
    size_t na = delivery_ids(s, "pd", 2, again, (size_t)sent);
    ck_assert_uint_eq(na, (size_t)sent / 2);
    size_t k = 0;
    for (size_t i = 0; i < nl; i++) {
        /* the d-2 events, in order */
        if (k < na && strcmp(live[i], again[k]) == 0)
            k++;
    }
    ck_assert_msg(k == na, "replayed ids are not the live d-2 ids in their order (%zu of %zu)", k,
                  na);
    free(live);
    free(again);
    free(g);
    rcv_stop(&r);
    commerce__commission__v1__put_partner_response__free_unpacked(pr, NULL);
    st_stop(s);
}
END_TEST

START_TEST(rotation_both_secrets_during_overlap_then_only_new)
{
    st *s = &S;
    st_start(s, "rot", NULL);
    put_schedule(s);
    put_channel(s, "r-1");
    rcv old_only, new_only;
    rcv_init(&old_only, "rot-old");
    rcv_init(&new_only, "rot-new");
    cm_rpc_status stt;
    Commerce__Commission__V1__PutPartnerResponse *pr = NULL;
    const char *ch[] = {"r-1", NULL};
    ck_assert_int_eq(put_partner(s, "pr-1", "pr", ch, 0, rcv_url(&old_only), 1, &stt, &pr), 0);
    char old[64];
    snprintf(old, sizeof old, "%s", pr->webhook_secret);
    commerce__commission__v1__put_partner_response__free_unpacked(pr, NULL);
    rcv_start(&old_only, old, NULL);
    paid(s, "r-1", 100);
    got g[16];
    ck_assert_uint_eq(rcv_wait(&old_only, 1, 30000, g, 16), 1);

    /* rotate with 8 s of overlap */
    Commerce__Commission__V1__RotateWebhookSecretRequest rq =
        COMMERCE__COMMISSION__V1__ROTATE_WEBHOOK_SECRET_REQUEST__INIT;
    Google__Protobuf__Duration ttl = GOOGLE__PROTOBUF__DURATION__INIT;
    ttl.seconds = 8;
    rq.request_id = "rot-1";
    rq.partner_id = "pr";
    rq.previous_secret_ttl = &ttl;
    Commerce__Commission__V1__RotateWebhookSecretResponse *rs = NULL;
    ck_assert_int_eq(hs_call(s->c, SVC "RotateWebhookSecret", &rq.base,
                             &commerce__commission__v1__rotate_webhook_secret_response__descriptor,
                             (ProtobufCMessage **)&rs, &stt, md, 1),
                     0);
    char fresh[64];
    snprintf(fresh, sizeof fresh, "%s", rs->secret);
    ck_assert_str_ne(fresh, old);
    ck_assert_ptr_nonnull(rs->previous_secret_expires_at);
    commerce__commission__v1__rotate_webhook_secret_response__free_unpacked(rs, NULL);
    /* both the new secret and the previous one stay sealed */
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM partners WHERE secret LIKE 'cms1:k1:%' AND "
                            "previous_secret LIKE 'cms1:k1:%' AND secret <> previous_secret"),
                     1);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM partners WHERE strpos(secret || "
                            "previous_secret, 'whsec_') > 0"),
                     0);
    long long rotated = hs_real_ms();
    /* during the overlap: the receiver that knows only the old secret
     * verifies, and so does one that knows only the new */
    paid(s, "r-1", 200);
    ck_assert_uint_eq(rcv_wait(&old_only, 2, 5000, g, 16), 2);
    rcv_stop(&old_only);
    new_only.port = old_only.port;
    rcv_start(&new_only, fresh, NULL);
    paid(s, "r-1", 300);
    ck_assert_uint_eq(rcv_wait(&new_only, 1, 5000, g, 16), 1);
    rcv_stop(&new_only);
    /* after the overlap only the new secret signs: the old-only receiver
     * refuses (401), the delivery fails and waits */
    while (hs_real_ms() - rotated < 9000)
        usleep(100000);
    unlink(old_only.db);
    unlink(old_only.log);
    rcv_start(&old_only, old, NULL);
    paid(s, "r-1", 400);
    wait_sql(s, "SELECT count(*) FROM webhook_attempts WHERE http_status = 401", 1, 30000);
    ck_assert_uint_eq(rcv_read(&old_only, g, 16), 0);
    rcv_stop(&old_only);
    /* the new-only receiver gets it */
    rcv_start(&new_only, fresh, NULL);
    ck_assert_uint_eq(rcv_wait(&new_only, 2, 30000, g, 16), 2);
    rcv_stop(&new_only);

    /* redelivery: one event again, same id, a new delivery */
    Commerce__Commission__V1__RedeliverWebhookEventRequest rd =
        COMMERCE__COMMISSION__V1__REDELIVER_WEBHOOK_EVENT_REQUEST__INIT;
    rd.request_id = "redeliver-1";
    rd.partner_id = "pr";
    rd.event_id = g[0].id;
    Commerce__Commission__V1__RedeliverWebhookEventResponse *rdr = NULL;
    ck_assert_int_eq(
        hs_call(s->c, SVC "RedeliverWebhookEvent", &rd.base,
                &commerce__commission__v1__redeliver_webhook_event_response__descriptor,
                (ProtobufCMessage **)&rdr, &stt, md, 1),
        0);
    ck_assert_str_eq(rdr->delivery->event_id, g[0].id);
    ck_assert_int_eq(rdr->delivery->reason,
                     COMMERCE__COMMISSION__V1__DELIVERY_REASON__DELIVERY_REASON_REDELIVERY);
    commerce__commission__v1__redeliver_webhook_event_response__free_unpacked(rdr, NULL);
    rd.request_id = "redeliver-2";
    rd.event_id = "01900000-0000-7000-8000-000000000000";
    ck_assert_int_eq(
        hs_call(s->c, SVC "RedeliverWebhookEvent", &rd.base,
                &commerce__commission__v1__redeliver_webhook_event_response__descriptor, NULL, &stt,
                md, 1),
        GRPC_STATUS_NOT_FOUND);
    st_stop(s);
}
END_TEST

/* the secrets at rest across restarts: refused without a key, plain text
 * with the development knob, sealed at the next start with a keyring,
 * sealed again under a new first key, and bound to their partner */
START_TEST(secrets_sealed_at_start_rotated_and_bound_to_their_partner)
{
    st *s = &S;
    const char *nokey[] = {"COMMISSION_SECRETS_KEY_FILE=", NULL};
    st_start(s, "seal", nokey);
    put_schedule(s);
    put_channel(s, "s-1");
    put_channel(s, "s-2");
    rcv r, r2;
    rcv_init(&r, "seal");
    rcv_init(&r2, "seal-2");
    cm_rpc_status stt;
    Commerce__Commission__V1__PutPartnerResponse *pr = NULL;
    const char *ch[] = {"s-1", NULL}, *ch2[] = {"s-2", NULL};
    /* no keyring, no plain-text knob: a webhook is refused, not stored */
    ck_assert_int_eq(put_partner(s, "ps-0", "ps", ch, 0, rcv_url(&r), 1, &stt, NULL),
                     GRPC_STATUS_FAILED_PRECONDITION);
    ck_assert_str_eq(stt.reason, "NOT_CONFIGURED");
    ck_assert_msg(strstr(stt.message, "COMMISSION_SECRETS_KEY_FILE"), "%s", stt.message);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM partners"), 0);

    /* the development knob: plain text */
    const char *plain[] = {"COMMISSION_SECRETS_KEY_FILE=", "COMMISSION_SECRETS_PLAINTEXT=on", NULL};
    st_restart(s, plain);
    ck_assert_int_eq(put_partner(s, "ps-1", "ps", ch, 0, rcv_url(&r), 1, &stt, &pr), 0);
    char secret[64];
    snprintf(secret, sizeof secret, "%s", pr->webhook_secret);
    commerce__commission__v1__put_partner_response__free_unpacked(pr, NULL);
    ck_assert_int_eq(put_partner(s, "ps2-1", "ps2", ch2, 0, rcv_url(&r2), 1, &stt, &pr), 0);
    char secret2[64];
    snprintf(secret2, sizeof secret2, "%s", pr->webhook_secret);
    commerce__commission__v1__put_partner_response__free_unpacked(pr, NULL);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM partners WHERE secret LIKE 'whsec_%'"), 2);

    /* a keyring: the start seals both rows; the secret is the same */
    st_restart(s, NULL);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM partners WHERE secret LIKE 'cms1:k1:%'"), 2);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM partners WHERE strpos(secret, 'whsec_') > 0"), 0);
    ck_assert_int_eq(put_partner(s, "ps-1", "ps", ch, 0, rcv_url(&r), 1, &stt, &pr), 0);
    ck_assert_str_eq(pr->webhook_secret, secret);
    commerce__commission__v1__put_partner_response__free_unpacked(pr, NULL);
    rcv_start(&r, secret, NULL);
    paid(s, "s-1", 100);
    got g[16];
    ck_assert_msg(rcv_wait(&r, 1, 30000, g, 16) == 1, "not delivered signed (log %s)",
                  s->p.log_path);

    /* a new first key: the start seals again under it; the old key still
     * opens what it sealed until then */
    write_keys(s->keys, KEY_2 "\n" KEY_1 "\n");
    st_restart(s, NULL);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM partners WHERE secret LIKE 'cms1:k2:%'"), 2);
    paid(s, "s-1", 200);
    ck_assert_msg(rcv_wait(&r, 2, 30000, g, 16) == 2,
                  "not delivered after the key rotation (log %s)", s->p.log_path);
    rcv_stop(&r);

    /* a sealed secret copied to another partner does not open there: its
     * deliveries fail (recorded) rather than being signed with it */
    hs_sql_exec(s->schema, "UPDATE partners SET secret = (SELECT secret FROM partners WHERE "
                           "partner_id = 'ps') WHERE partner_id = 'ps2'");
    rcv_start(&r2, secret, NULL);
    paid(s, "s-2", 300);
    wait_sql(s,
             "SELECT least(count(*), 1) FROM webhook_attempts a JOIN webhook_deliveries d USING "
             "(delivery_id) WHERE d.partner_id = 'ps2' AND a.error LIKE '%does not open%'",
             1, 30000);
    ck_assert_uint_eq(rcv_read(&r2, g, 16), 0);
    rcv_stop(&r2);
    (void)secret2;
    st_stop(s);
}
END_TEST

START_TEST(endpoint_disabled_after_failing_then_reenabled)
{
    st *s = &S;
    const char *extra[] = {"COMMISSION_WEBHOOK_DISABLE_AFTER_S=3", NULL};
    st_start(s, "dis", extra);
    put_schedule(s);
    put_channel(s, "x-1");
    rcv r;
    rcv_init(&r, "dis");
    cm_rpc_status stt;
    Commerce__Commission__V1__PutPartnerResponse *pr = NULL;
    const char *ch[] = {"x-1", NULL};
    ck_assert_int_eq(put_partner(s, "px-1", "px", ch, 0, rcv_url(&r), 1, &stt, &pr), 0);
    /* nobody listens: failing, then disabled after 3 s */
    paid(s, "x-1", 100);
    wait_sql(s, "SELECT webhook_state FROM partners WHERE partner_id = 'px'", 3, 30000);
    int code = 0;
    Commerce__Commission__V1__Partner *p = get_partner(s, "px", &code);
    ck_assert_int_eq(p->webhook->state,
                     COMMERCE__COMMISSION__V1__WEBHOOK_STATE__WEBHOOK_STATE_DISABLED);
    ck_assert_ptr_nonnull(p->webhook->disabled_at);
    ck_assert_str_ne(p->webhook->last_error, "");
    commerce__commission__v1__partner__free_unpacked(p, NULL);
    /* the tenant is told, once: PartnerWebhookDisabled on its commission
     * topic, keyed by the partner */
    hs_topic *ct = hs_topic_open(hs_kafka_brokers(), s->ctopic, 0);
    long long until = hs_real_ms() + 20000;
    int told = 0;
    while (hs_real_ms() < until && !told) {
        hs_topic_next(ct, 500);
        for (size_t i = 0; i < hs_topic_count(ct); i++) {
            const hs_record *rec = hs_topic_at(ct, i);
            if (strcmp(rec->type, "commerce.events.v1.PartnerWebhookDisabled") == 0) {
                ck_assert_str_eq(rec->key, "px");
                told++;
            }
        }
    }
    hs_topic_catch_up(ct, 5000);
    told = 0;
    for (size_t i = 0; i < hs_topic_count(ct); i++)
        told += strcmp(hs_topic_at(ct, i)->type, "commerce.events.v1.PartnerWebhookDisabled") == 0;
    ck_assert_int_eq(told, 1);
    hs_topic_close(ct);
    /* events keep queueing while disabled, and nothing is attempted */
    paid(s, "x-1", 200);
    wait_sql(s, "SELECT count(*) FROM webhook_deliveries", 2, 30000);
    long long attempts = sql(s, "SELECT count(*) FROM webhook_attempts");
    usleep(1500000);
    ck_assert_int_eq(sql(s, "SELECT count(*) FROM webhook_attempts"), attempts);
    /* re-enabled: the backlog goes out, in order */
    rcv_start(&r, pr->webhook_secret, NULL);
    ck_assert_int_eq(put_partner(s, "px-2", "px", ch, 0, rcv_url(&r), 1, &stt, NULL), 0);
    got g[8];
    ck_assert_uint_eq(rcv_wait(&r, 2, 30000, g, 8), 2);
    wait_sql(s, "SELECT webhook_state FROM partners WHERE partner_id = 'px'", 1, 10000);
    rcv_stop(&r);
    commerce__commission__v1__put_partner_response__free_unpacked(pr, NULL);
    st_stop(s);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("partner_feed");
    TCase *tc = tcase_create("feed");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, bad_configuration_is_refused_naming_the_field);
    tcase_add_test(tc, webhooks_isolated_signed_and_kafka_per_partner);
    tcase_add_test(tc, rotation_both_secrets_during_overlap_then_only_new);
    tcase_add_test(tc, secrets_sealed_at_start_rotated_and_bound_to_their_partner);
    tcase_add_test(tc, endpoint_disabled_after_failing_then_reenabled);
    tcase_add_test(tc, receiver_down_30s_then_everything_once_in_order);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
