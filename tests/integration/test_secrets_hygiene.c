/*
 * secrets never reach logs or metrics (SECURITY.md, "Secrets"). the four
 * services run with AUTH_MODE=required and a known HS256 secret, on a
 * postgres role that logs in with a password (pg.sh's pg_hba asks roles in
 * commerce_password_auth for one), at LOG_LEVEL=debug; the calls include
 * failing ones (a token signed with another key, an expired one, a
 * malformed one, a caller without the role), a partner's webhook secret
 * made, fetched again by a retry and rotated, webhooks that fail (nothing
 * listens), and a start with a wrong password, which must fail. then every
 * line every process wrote and a /metrics scrape of each service are
 * searched for every secret: the JWT key, each token sent (and its
 * signature alone), the passwords, the webhook secrets. one hit fails.
 */
#include "fixture.h"

#include <check.h>
#include <grpc/status.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cm_id.h"
#include "commerce/commission/v1/commission_service.pb-c.h"
#include "commerce/settlement/v1/settlement_service.pb-c.h"

#define CSVC "/commerce.commission.v1.CommissionService/"
#define SSVC "/commerce.settlement.v1.SettlementService/"
#define JWT_SECRET "hygiene-jwt-key-6b1f0c2e9d8a7f5e4c3b2a1908f7e6d5"
#define AUTH_GROUP "commerce_password_auth"

/* what must not appear anywhere */
#define MAX_SECRETS 32
static char *secrets[MAX_SECRETS];
static const char *secret_names[MAX_SECRETS];
static int nsecrets;

static void must_not_leak(const char *name, const char *value)
{
    ck_assert_int_lt(nsecrets, MAX_SECRETS);
    ck_assert_msg(value && strlen(value) >= 8, "secret %s too short to search for", name);
    secret_names[nsecrets] = name;
    secrets[nsecrets++] = strdup(value);
}

/* a bearer token, and its signature alone, are secrets */
static const char *token(const char *name, const char *bearer)
{
    must_not_leak(name, bearer + strlen("Bearer "));
    const char *sig = strrchr(bearer, '.');
    ck_assert_ptr_nonnull(sig);
    must_not_leak(name, sig + 1);
    return bearer;
}

static void random_hex(char *out, size_t n)
{
    char id[CM_ID_SIZE];
    ck_assert_int_eq(cm_id_uuid7(id), 0);
    /* the random tail of a uuid7, without its dashes */
    size_t k = 0;
    for (const char *p = id + 19; *p && k + 1 < n; p++)
        if (*p != '-')
            out[k++] = *p;
    out[k] = '\0';
}

/* searches one text for every secret: the number of hits, each reported */
static int search(const char *where, const char *text, size_t len)
{
    int hits = 0;
    for (int i = 0; i < nsecrets; i++) {
        if (memmem(text, len, secrets[i], strlen(secrets[i]))) {
            fprintf(stderr, "LEAK: %s holds %s\n", where, secret_names[i]);
            hits++;
        }
    }
    return hits;
}

static int search_file(const char *path, size_t *lines)
{
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "no log %s", path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int hits = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        (*lines)++;
        hits += search(path, line, (size_t)n);
    }
    free(line);
    fclose(f);
    return hits;
}

static int search_metrics(const hs_proc *p, const char *name)
{
    static char body[1 << 18];
    ck_assert_int_eq(hs_http_get(p->admin_port, "/metrics", body, sizeof body), 200);
    ck_assert_msg(strstr(body, "# TYPE"), "%s: /metrics is empty", name);
    return search(name, body, strlen(body));
}

static int file_has(const char *path, const char *what)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, what) != NULL;
}

/* ---- the services ---- */

typedef struct world {
    char role[64], password[40], dsn[512], dsn_env[600];
    char topic[128], ctopic[128], ptopic[128], stopic[128];
    char hook[96]; /* the partner's webhook: nothing listens there */
    char e[12][200];
    fx f;
    hs_proc cms, stl;
    cm_rpc_client *cc, *sc;
    hs_producer *prod;
} world;

static world W;

static void make_role(world *w)
{
    PGconn *pg = hs_pg_connect(NULL);
    char sql[512];
    hs_pg_exec(pg, "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '" AUTH_GROUP
                   "') THEN CREATE ROLE " AUTH_GROUP " NOLOGIN; END IF; END $$");
    snprintf(sql, sizeof sql, "CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE " AUTH_GROUP, w->role,
             w->password);
    hs_pg_exec(pg, sql);
    snprintf(sql, sizeof sql, "GRANT CREATE, CONNECT ON DATABASE %s TO %s", PQdb(pg), w->role);
    hs_pg_exec(pg, sql);
    snprintf(w->dsn, sizeof w->dsn, "host=127.0.0.1 port=%d dbname=%s user=%s password=%s",
             hs_pg_port(), PQdb(pg), w->role, w->password);
    PQfinish(pg);
    /* the password is asked for: a wrong one does not log in */
    char wrong[600];
    snprintf(wrong, sizeof wrong, "host=127.0.0.1 port=%d dbname=commerce user=%s password=nope",
             hs_pg_port(), w->role);
    PGconn *c = PQconnectdb(wrong);
    int refused = PQstatus(c) != CONNECTION_OK;
    PQfinish(c);
    ck_assert_msg(refused,
                  "postgres let %s in without its password: pg_hba.conf lacks the "
                  "scram line for +" AUTH_GROUP " (restart scripts/pg.sh)",
                  w->role);
}

static void drop_role(world *w)
{
    PGconn *pg = hs_pg_connect(NULL);
    char sql[256];
    snprintf(sql, sizeof sql, "DROP OWNED BY %s CASCADE", w->role);
    hs_pg_exec(pg, sql);
    snprintf(sql, sizeof sql, "DROP ROLE %s", w->role);
    hs_pg_exec(pg, sql);
    PQfinish(pg);
}

static const char *const *common_env(world *w, const char **out)
{
    out[0] = "AUTH_MODE=required";
    out[1] = "JWT_HS256_SECRET=" JWT_SECRET;
    out[2] = "LOG_LEVEL=debug";
    out[3] = w->dsn_env;
    out[4] = NULL;
    return out;
}

static void start_all(world *w)
{
    int pid = (int)getpid();
    snprintf(w->dsn_env, sizeof w->dsn_env, "PG_DSN=%s", w->dsn);
    const char *env[8];
    const char *inv_env[] = {"INVENTORY_SWEEP_MS=100", "AUTH_MODE=required",
                             "JWT_HS256_SECRET=" JWT_SECRET, "LOG_LEVEL=debug", NULL};
    const char *ord_env[] = {"ORDER_SWEEP_MS=100", "AUTH_MODE=required",
                             "JWT_HS256_SECRET=" JWT_SECRET, "LOG_LEVEL=debug", NULL};
    fx_opts o = {.dsn = w->dsn, .tag = "leak", .inventory_env = inv_env, .order_env = ord_env};
    fx_start_opts(&w->f, &o);

    snprintf(w->ctopic, sizeof w->ctopic, "commerce.commission.v1.leak-%d", pid);
    snprintf(w->ptopic, sizeof w->ptopic, "commerce.commission.partner.v1.leak-%d", pid);
    snprintf(w->stopic, sizeof w->stopic, "commerce.settlement.v1.leak-%d", pid);
    snprintf(w->topic, sizeof w->topic, "commerce.order.v1.leak-%d", pid);
    hs_kafka_create_topic(hs_kafka_brokers(), w->topic, 1);
    hs_kafka_create_topic(hs_kafka_brokers(), w->ctopic, 1);
    hs_kafka_create_topic(hs_kafka_brokers(), w->ptopic, 1);
    hs_kafka_create_topic(hs_kafka_brokers(), w->stopic, 1);
    char keys[128];
    snprintf(keys, sizeof keys, "/tmp/commerce-leak-keys-%d", pid);
    FILE *kf = fopen(keys, "w");
    ck_assert_ptr_nonnull(kf);
    fputs("leak1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", kf);
    fclose(kf);
    snprintf(w->e[0], sizeof w->e[0], "COMMISSION_SCHEMA=leak_cms_%d", pid);
    snprintf(w->e[1], sizeof w->e[1], "COMMISSION_ORDER_TOPIC=%s", w->topic);
    snprintf(w->e[2], sizeof w->e[2], "COMMISSION_ORDER_GROUP=leak-cms-%d", pid);
    snprintf(w->e[3], sizeof w->e[3], "COMMISSION_TOPIC=%s", w->ctopic);
    snprintf(w->e[4], sizeof w->e[4], "COMMISSION_PARTNER_TOPIC=%s", w->ptopic);
    snprintf(w->e[5], sizeof w->e[5], "COMMISSION_FEED_GROUP=leak-feed-%d", pid);
    snprintf(w->e[6], sizeof w->e[6], "COMMISSION_SECRETS_KEY_FILE=%s", keys);
    const char *cms_env[] = {w->e[0],
                             w->e[1],
                             w->e[2],
                             w->e[3],
                             w->e[4],
                             w->e[5],
                             w->e[6],
                             "COMMISSION_WEBHOOK_ALLOW_HTTP=on",
                             "COMMISSION_WEBHOOK_ALLOW_CIDRS=127.0.0.0/8",
                             "COMMISSION_WEBHOOK_POLL_MS=20",
                             "COMMISSION_WEBHOOK_BACKOFF_MAX_MS=500",
                             "COMMISSION_WEBHOOK_TIMEOUT_MS=1000",
                             NULL};
    const char *all[40];
    hs_start(&w->cms, COMMISSION_BIN, hs_env_join(all, 40, common_env(w, env), cms_env));
    w->cc = hs_client(&w->cms, NULL);

    snprintf(w->e[7], sizeof w->e[7], "SETTLEMENT_SCHEMA=leak_stl_%d", pid);
    snprintf(w->e[8], sizeof w->e[8], "SETTLEMENT_ORDER_TOPIC=%s", w->topic);
    snprintf(w->e[9], sizeof w->e[9], "SETTLEMENT_ORDER_GROUP=leak-stl-%d", pid);
    snprintf(w->e[10], sizeof w->e[10], "SETTLEMENT_TOPIC=%s", w->stopic);
    snprintf(w->e[11], sizeof w->e[11], "SETTLEMENT_COMMISSION_TOPIC=%s", w->ctopic);
    const char *stl_env[] = {w->e[7], w->e[8], w->e[9], w->e[10], w->e[11], NULL};
    hs_start(&w->stl, SETTLEMENT_BIN, hs_env_join(all, 40, common_env(w, env), stl_env));
    w->sc = hs_client(&w->stl, NULL);
    w->prod = hs_producer_new(hs_kafka_brokers());
}

static void stop_all(world *w)
{
    cm_rpc_client_free(w->cc);
    cm_rpc_client_free(w->sc);
    hs_producer_free(w->prod);
    ck_assert_int_eq(hs_stop(&w->cms, SIGTERM, 30000), 0);
    ck_assert_int_eq(hs_stop(&w->stl, SIGTERM, 30000), 0);
    int pid = (int)getpid();
    char s[64];
    snprintf(s, sizeof s, "leak_cms_%d", pid);
    hs_drop_schema(NULL, s);
    snprintf(s, sizeof s, "leak_stl_%d", pid);
    hs_drop_schema(NULL, s);
    char keys[128];
    snprintf(keys, sizeof keys, "/tmp/commerce-leak-keys-%d", pid);
    unlink(keys);
    hs_kafka_delete_topic(hs_kafka_brokers(), w->topic);
    hs_kafka_delete_topic(hs_kafka_brokers(), w->ctopic);
    hs_kafka_delete_topic(hs_kafka_brokers(), w->ptopic);
    hs_kafka_delete_topic(hs_kafka_brokers(), w->stopic);
}

/* ---- the calls ---- */

static int commission_call(world *w, const char *bearer, const char *method,
                           const ProtobufCMessage *req, const ProtobufCMessageDescriptor *rd,
                           ProtobufCMessage **resp, cm_rpc_status *st)
{
    const cm_rpc_md md[1] = {{"authorization", bearer}};
    return hs_call(w->cc, method, req, rd, resp, st, md, 1);
}

static void commission_setup(world *w, const char *admin)
{
    cm_rpc_status st;
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
    int code = commission_call(w, admin, CSVC "PutTierSchedule", &r.base,
                               &commerce__commission__v1__put_tier_schedule_response__descriptor,
                               NULL, &st);
    ck_assert_msg(code == 0, "PutTierSchedule: %d %s", code, st.message);
    Commerce__Commission__V1__Channel c = COMMERCE__COMMISSION__V1__CHANNEL__INIT;
    c.channel_id = "ch-leak";
    c.name = "a channel";
    c.type = COMMERCE__COMMISSION__V1__CHANNEL_TYPE__CHANNEL_TYPE_AFFILIATE;
    c.state = COMMERCE__COMMISSION__V1__CHANNEL_STATE__CHANNEL_STATE_ACTIVE;
    c.tier_schedule_id = "flat";
    Commerce__Commission__V1__PutChannelRequest pc =
        COMMERCE__COMMISSION__V1__PUT_CHANNEL_REQUEST__INIT;
    pc.request_id = "ch-leak";
    pc.channel = &c;
    code = commission_call(w, admin, CSVC "PutChannel", &pc.base,
                           &commerce__commission__v1__put_channel_response__descriptor, NULL, &st);
    ck_assert_msg(code == 0, "PutChannel: %d %s", code, st.message);
}

/* PutPartner with a webhook to a port nothing listens on */
static int put_partner(world *w, const char *bearer, const char *rid, char *secret, size_t cap,
                       cm_rpc_status *st)
{
    if (!w->hook[0])
        snprintf(w->hook, sizeof w->hook, "http://127.0.0.1:%d/hooks", hs_free_port());
    Commerce__Commission__V1__PartnerWebhook wh = COMMERCE__COMMISSION__V1__PARTNER_WEBHOOK__INIT;
    wh.enabled = 1;
    wh.url = w->hook;
    char *chans[] = {"ch-leak"};
    Commerce__Commission__V1__Partner p = COMMERCE__COMMISSION__V1__PARTNER__INIT;
    p.partner_id = "p-leak";
    p.name = "a partner";
    p.channel_ids = chans;
    p.n_channel_ids = 1;
    p.webhook = &wh;
    Commerce__Commission__V1__PutPartnerRequest r =
        COMMERCE__COMMISSION__V1__PUT_PARTNER_REQUEST__INIT;
    r.request_id = (char *)rid;
    r.partner = &p;
    Commerce__Commission__V1__PutPartnerResponse *resp = NULL;
    int code = commission_call(w, bearer, CSVC "PutPartner", &r.base,
                               &commerce__commission__v1__put_partner_response__descriptor,
                               (ProtobufCMessage **)&resp, st);
    if (code == 0) {
        snprintf(secret, cap, "%s", resp->webhook_secret ? resp->webhook_secret : "");
        commerce__commission__v1__put_partner_response__free_unpacked(resp, NULL);
    }
    return code;
}

static void rotate(world *w, const char *bearer, char *secret, size_t cap)
{
    Commerce__Commission__V1__RotateWebhookSecretRequest r =
        COMMERCE__COMMISSION__V1__ROTATE_WEBHOOK_SECRET_REQUEST__INIT;
    r.request_id = "rot-leak";
    r.partner_id = "p-leak";
    Commerce__Commission__V1__RotateWebhookSecretResponse *resp = NULL;
    cm_rpc_status st;
    int code =
        commission_call(w, bearer, CSVC "RotateWebhookSecret", &r.base,
                        &commerce__commission__v1__rotate_webhook_secret_response__descriptor,
                        (ProtobufCMessage **)&resp, &st);
    ck_assert_msg(code == 0, "RotateWebhookSecret: %d %s", code, st.message);
    snprintf(secret, cap, "%s", resp->secret);
    commerce__commission__v1__rotate_webhook_secret_response__free_unpacked(resp, NULL);
}

/* an OrderPaid on the channel, as order sends it: accrues, reaches the
 * partner feed, and its webhook fails */
static void paid(world *w, long long amount)
{
    char order_id[CM_ID_SIZE], event_id[CM_ID_SIZE];
    ck_assert_int_eq(cm_id_uuid7(order_id), 0);
    order_id[14] = '8';
    ck_assert_int_eq(cm_id_uuid7(event_id), 0);
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
    o.channel_id = "ch-leak";
    o.currency = "CNY";
    o.total_amount = &m;
    o.payment = &pay;
    Commerce__Events__V1__OrderPaid e = COMMERCE__EVENTS__V1__ORDER_PAID__INIT;
    e.event_id = event_id;
    e.tenant_id = FX_TENANT;
    e.order_id = order_id;
    e.order = &o;
    hs_produce_event(w->prod, w->topic, order_id, "commerce.events.v1.OrderPaid", "/commerce/order",
                     event_id, FX_TENANT, &e.base);
}

static int settlement_get_rule(world *w, const char *bearer)
{
    Commerce__Settlement__V1__GetSplitRuleRequest r =
        COMMERCE__SETTLEMENT__V1__GET_SPLIT_RULE_REQUEST__INIT;
    r.merchant_id = "m-1";
    r.currency = "CNY";
    const cm_rpc_md md[1] = {{"authorization", bearer}};
    cm_rpc_status st;
    return hs_call(w->sc, SSVC "GetSplitRule", &r.base,
                   &commerce__settlement__v1__get_split_rule_response__descriptor, NULL, &st, md,
                   1);
}

/* ---- the test ---- */

START_TEST(no_secret_in_any_log_line_or_metric)
{
    world *w = &W;
    memset(w, 0, sizeof *w);
    snprintf(w->role, sizeof w->role, "leak_%d", (int)getpid());
    char pw[24];
    random_hex(pw, sizeof pw);
    snprintf(w->password, sizeof w->password, "pw-%s", pw);
    must_not_leak("the postgres password", w->password);
    must_not_leak("the JWT HS256 key", JWT_SECRET);
    make_role(w);

    /* a wrong password at start: the service refuses to start */
    char wrong_pw[40], wrong_dsn[600];
    random_hex(pw, sizeof pw);
    snprintf(wrong_pw, sizeof wrong_pw, "wrong-%s", pw);
    must_not_leak("a wrong postgres password", wrong_pw);
    snprintf(wrong_dsn, sizeof wrong_dsn, "PG_DSN=postgresql://%.63s:%.39s@127.0.0.1:%d/commerce",
             w->role, wrong_pw, hs_pg_port());
    const char *bad_env[] = {wrong_dsn, "LOG_LEVEL=debug", "AUTH_MODE=required",
                             "JWT_HS256_SECRET=" JWT_SECRET, NULL};
    hs_proc bad;
    ck_assert_int_eq(hs_spawn(&bad, INVENTORY_BIN, bad_env), 0);
    int code = hs_wait_exit(&bad, 30000);
    ck_assert_msg(code != 0 && code != -1, "inventory started on a wrong password (%d, log %s)",
                  code, bad.log_path);
    if (code == -1)
        hs_stop(&bad, SIGKILL, 1000);
    ck_assert_msg(file_has(bad.log_path, "password "
                                         "authentication"),
                  "inventory did not fail on the password (log %s)", bad.log_path);

    start_all(w);
    const char *admin =
        token("the admin's token", hs_bearer(JWT_SECRET, FX_TENANT, "ops-1", "admin", 300));
    const char *clerk =
        token("a clerk's token", hs_bearer(JWT_SECRET, FX_TENANT, "clerk-1", "support", 300));
    const char *forged =
        token("a token signed with another key", hs_bearer("another-key-entirely-0123456789abcdef",
                                                           FX_TENANT, "mallory", "admin", 300));
    const char *expired =
        token("an expired token", hs_bearer(JWT_SECRET, FX_TENANT, "ops-1", "admin", -600));
    const char *garbage = "Bearer not-a-jwt.garbage-payload.garbage-signature-0123456789";
    must_not_leak("a malformed token", garbage + 7);
    const cm_rpc_md md_admin[1] = {{"authorization", admin}};

    /* inventory and order: a good stock write and order, then refusals */
    fx_set_stock_md(w->f.ic, "stock-leak", "sku-leak", 100, md_admin);
    fx_line l[1] = {FX_L("sku-leak", 2, 1500)};
    fx_order_spec spec = fx_spec("ord-leak", l, 1);
    cm_rpc_status st;
    code = fx_create_md(w->f.oc, &spec, NULL, &st, md_admin, 1);
    ck_assert_msg(code == 0, "CreateOrder: %d %s", code, st.message);
    const char *refused[] = {forged, expired, garbage};
    for (size_t i = 0; i < 3; i++) {
        const cm_rpc_md md[1] = {{"authorization", refused[i]}};
        fx_order_spec s2 = fx_spec("ord-leak-bad", l, 1);
        ck_assert_int_eq(fx_create_md(w->f.oc, &s2, NULL, &st, md, 1), GRPC_STATUS_UNAUTHENTICATED);
        ck_assert_int_eq(
            fx_get_order_md(w->f.oc, "01900000-0000-8000-8000-000000000000", NULL, &st, md),
            GRPC_STATUS_UNAUTHENTICATED);
    }

    /* commission: a partner's webhook secret, made, fetched again by a
     * retry and rotated; a caller without the role refused */
    commission_setup(w, admin);
    char s1[128], s1again[128], s2[128];
    ck_assert_int_ne(put_partner(w, clerk, "put-leak", s1, sizeof s1, &st), 0);
    ck_assert_int_eq(put_partner(w, admin, "put-leak", s1, sizeof s1, &st), 0);
    must_not_leak("the first webhook secret", s1);
    ck_assert_int_eq(put_partner(w, admin, "put-leak", s1again, sizeof s1again, &st), 0);
    ck_assert_str_eq(s1again, s1);
    ck_assert_int_eq(put_partner(w, forged, "put-leak-2", s2, sizeof s2, &st),
                     GRPC_STATUS_UNAUTHENTICATED);
    rotate(w, admin, s2, sizeof s2);
    must_not_leak("the rotated webhook secret", s2);
    /* webhooks that fail: nothing listens at the partner's url */
    paid(w, 10000);
    paid(w, 20000);
    const char *q = "SELECT least(count(*), 2) FROM webhook_attempts";
    char schema[64];
    snprintf(schema, sizeof schema, "leak_cms_%d", (int)getpid());
    hs_wait_sql(schema, q, 2, w->cms.log_path);

    /* settlement: a read allowed, then refused */
    ck_assert_int_ne(settlement_get_rule(w, admin), GRPC_STATUS_UNAUTHENTICATED);
    ck_assert_int_eq(settlement_get_rule(w, forged), GRPC_STATUS_UNAUTHENTICATED);
    ck_assert_int_eq(settlement_get_rule(w, expired), GRPC_STATUS_UNAUTHENTICATED);

    /* every metric of every service, then every line they wrote */
    int hits = search_metrics(&w->f.inv, "inventory /metrics") +
               search_metrics(&w->f.ord, "order /metrics") +
               search_metrics(&w->cms, "commission /metrics") +
               search_metrics(&w->stl, "settlement /metrics");
    /* kept: the processes' records go with fx_stop and stop_all */
    char logs[4][sizeof w->cms.log_path];
    memcpy(logs[0], w->f.inv.log_path, sizeof logs[0]);
    memcpy(logs[1], w->f.ord.log_path, sizeof logs[1]);
    memcpy(logs[2], w->cms.log_path, sizeof logs[2]);
    memcpy(logs[3], w->stl.log_path, sizeof logs[3]);
    fx_stop(&w->f);
    stop_all(w);
    size_t lines = 0;
    hits += search_file(bad.log_path, &lines);
    for (int i = 0; i < 4; i++)
        hits += search_file(logs[i], &lines);
    /* the logs said something: the searched text is not empty */
    ck_assert_msg(lines > 100, "only %zu log lines", lines);
    fprintf(stderr, "searched %zu log lines and 4 /metrics scrapes for %d secrets: %d hits\n",
            lines, nsecrets, hits);
    ck_assert_msg(hits == 0, "%d secrets leaked (LEAK lines above)", hits);
    drop_role(w);
    free((void *)admin);
    free((void *)clerk);
    free((void *)forged);
    free((void *)expired);
    for (int i = 0; i < nsecrets; i++)
        free(secrets[i]);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("secrets_hygiene");
    TCase *tc = tcase_create("hygiene");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, NULL, fx_teardown);
    tcase_add_test(tc, no_secret_in_any_log_line_or_metric);
    suite_add_tcase(s, tc);
    return hs_run(s, 1);
}
