/*
 * hostile input and an unlucky operator, against real order and inventory
 * processes:
 *
 * - every rpc of every service gets seeded random requests built from its
 *   protobuf-c descriptor (extreme numbers and timestamps, huge, empty and
 *   odd strings, strings with NUL bytes or invalid UTF-8, repeated fields
 *   with hundreds of elements) and mutated encodings. no call may answer
 *   INTERNAL, UNKNOWN or UNAVAILABLE, every INVALID_ARGUMENT names its
 *   field, a string with a NUL or invalid UTF-8 is always refused, both
 *   processes stay up, and a refused call stores nothing.
 * - postgres is restarted again and again while orders are created: every
 *   call succeeds or fails retryably, and once the release delay has
 *   passed no reservation is left held without its order.
 *
 * HOSTILE_SEED replays a run (the seed is printed); HOSTILE_CALLS sets the
 * requests per method (default 60).
 */
#include "fixture.h"

#include "cm_err.h"
#include "cm_id.h"

#include <grpc/status.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TENANT "t-hostile"

static const cm_rpc_md tenant_md[] = {{"x-tenant-id", TENANT}};

/* ---- the two services on fresh schemas ---- */

static fx the_pair; /* static: a failed assertion leaves the test's frame */

/* the pair as these tests have always run it: no order topic of its own,
 * four workers each, against dsn (the private postgres, or the restart
 * test's own cluster) */
static void pair_start(fx *p, const char *dsn, const char *tag, const char *const *ord_extra)
{
    static const char *const ienv[] = {"INVENTORY_SWEEP_MS=100", "WORKERS=4", NULL};
    static const char *const oenv[] = {"WORKERS=4", "ORDER_SWEEP_MS=100", NULL};
    fx_start_opts(p, &(fx_opts){.dsn = dsn,
                                .tag = tag,
                                .no_topic = 1,
                                .inventory_env = ienv,
                                .order_env = oenv,
                                .extra = ord_extra});
}

/* the restart test's private cluster, stopped by the teardown if the test
 * fails before it does */
static char cluster_stop_cmd[512];

static void teardown(void)
{
    if (cluster_stop_cmd[0]) {
        if (system(cluster_stop_cmd) != 0)
            fprintf(stderr, "could not stop the private postgres: %s\n", cluster_stop_cmd);
        cluster_stop_cmd[0] = '\0';
    }
    fx_teardown();
}

/* ---- requests built from descriptors ---- */

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
} wbuf;

static void put(wbuf *b, const void *v, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->n, v, n);
    b->n += n;
}

static void put_varint(wbuf *b, uint64_t v)
{
    uint8_t t[10];
    size_t n = 0;
    do {
        t[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            t[n] |= 0x80;
        n++;
    } while (v);
    put(b, t, n);
}

static void put_tag(wbuf *b, unsigned num, unsigned wt)
{
    put_varint(b, (uint64_t)num << 3 | wt);
}

static void put_ld(wbuf *b, unsigned num, const void *v, size_t n)
{
    put_tag(b, num, 2);
    put_varint(b, n);
    put(b, v, n);
}

static uint64_t rnd(unsigned *seed)
{
    return (uint64_t)rand_r(seed) << 33 ^ (uint64_t)rand_r(seed) << 11 ^ (uint64_t)rand_r(seed);
}

static int64_t pick_int(unsigned *seed)
{
    static const int64_t pool[] = {0,
                                   1,
                                   -1,
                                   2,
                                   3,
                                   7,
                                   100,
                                   1000,
                                   999999999,
                                   1000000000,
                                   1000000001,
                                   INT32_MAX,
                                   INT32_MIN,
                                   (int64_t)INT32_MAX + 1,
                                   INT64_MAX,
                                   INT64_MIN,
                                   INT64_MAX - 1,
                                   INT64_MIN + 1,
                                   9223372036854775LL,
                                   253402300800LL,
                                   -62135596801LL};
    if (rand_r(seed) % 5 == 0)
        return (int64_t)rnd(seed);
    return pool[(unsigned)rand_r(seed) % (sizeof pool / sizeof pool[0])];
}

typedef struct str {
    const char *s;
    size_t n;
    int hostile; /* NUL or invalid UTF-8: must be refused */
} str;

static char *big_a, *big_b;

static str pick_string(unsigned *seed)
{
    static const str pool[] = {
        {"", 0, 0},
        {"a", 1, 0},
        {"SKU-1", 5, 0},
        {"H-1", 3, 0},
        {TENANT, sizeof TENANT - 1, 0},
        {"buyer-1", 7, 0},
        {"0190a5c8-7d3e-7000-8000-000000000001", 36, 0},
        {"ffffffff-ffff-ffff-ffff-ffffffffffff", 36, 0},
        {"CNY", 3, 0},
        {"USD", 3, 0},
        {"XXX", 3, 0},
        {"usd", 3, 0},
        {"\xe5\x95\x86\xe5\x93\x81", 6, 0},
        {"\xf0\x9f\x9b\x92", 4, 0},
        {"../../etc/passwd", 16, 0},
        {"' OR '1'='1", 11, 0},
        {"%s%n%x", 6, 0},
        {"\t\r\n\x01\x1f\x7f", 6, 0},
        {"a,b;c|d=e", 9, 0},
        {"H-1\0zz", 6, 1},
        {"\0", 1, 1},
        {"\xff", 1, 1},
        {"ab\xc3", 3, 1},
        {"\xed\xa0\x80", 3, 1},
        {"\xc0\xaf", 2, 1},
    };
    unsigned r = (unsigned)rand_r(seed) % 100;
    if (r < 4)
        return (str){big_a, 10 * 1024, 0}; /* 10 KB */
    if (r < 6)
        return (str){big_b, 300 * 1024, 0}; /* 300 KB */
    if (r < 10) {
        static char digits[40];
        int n = snprintf(digits, sizeof digits, "%lld", (long long)pick_int(seed));
        return (str){digits, (size_t)n, 0};
    }
    return pool[(unsigned)rand_r(seed) % (sizeof pool / sizeof pool[0])];
}

static void gen_message(const ProtobufCMessageDescriptor *d, wbuf *b, int depth, unsigned *seed,
                        int *hostile);

static void gen_time(const ProtobufCMessageDescriptor *d, wbuf *b, unsigned *seed)
{
    /* Timestamp and Duration: seconds = 1, nanos = 2 */
    int64_t now = (int64_t)time(NULL);
    static const int64_t secs[] = {0,
                                   1,
                                   -1,
                                   60,
                                   3600,
                                   86400 * 9,
                                   INT64_MAX,
                                   INT64_MIN,
                                   253402300799LL,
                                   253402300800LL,
                                   -62135596801LL};
    int64_t s = secs[(unsigned)rand_r(seed) % (sizeof secs / sizeof secs[0])];
    if (strcmp(d->name, "google.protobuf.Timestamp") == 0 && rand_r(seed) % 2)
        s = now + (int64_t)(rand_r(seed) % 2000000) - 1000000;
    static const int32_t nanos[] = {0, 1, -1, 999999999, 1000000000, INT32_MAX, INT32_MIN};
    put_tag(b, 1, 0);
    put_varint(b, (uint64_t)s);
    if (rand_r(seed) % 2) {
        put_tag(b, 2, 0);
        put_varint(b, (uint64_t)(int64_t)nanos[(unsigned)rand_r(seed) % 7]);
    }
}

static void gen_value(const ProtobufCFieldDescriptor *f, wbuf *b, int depth, unsigned *seed,
                      int *hostile)
{
    int64_t v = pick_int(seed);
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_ENUM:
        put_tag(b, f->id, 0);
        put_varint(b, (uint64_t)(int64_t)(int32_t)v);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_UINT32:
        put_tag(b, f->id, 0);
        put_varint(b, f->type == PROTOBUF_C_TYPE_UINT32 ? (uint32_t)v : (uint64_t)v);
        break;
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SINT64:
        put_tag(b, f->id, 0);
        put_varint(b, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
        break;
    case PROTOBUF_C_TYPE_BOOL:
        put_tag(b, f->id, 0);
        put_varint(b, (uint64_t)(rand_r(seed) % 3));
        break;
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FLOAT: {
        uint32_t x = (uint32_t)v;
        put_tag(b, f->id, 5);
        put(b, &x, 4);
        break;
    }
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        put_tag(b, f->id, 1);
        put(b, &v, 8);
        break;
    case PROTOBUF_C_TYPE_STRING: {
        str s = pick_string(seed);
        *hostile |= s.hostile;
        put_ld(b, f->id, s.s, s.n);
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        uint8_t raw[32];
        size_t n = (size_t)(rand_r(seed) % 33);
        for (size_t i = 0; i < n; i++)
            raw[i] = (uint8_t)rand_r(seed);
        put_ld(b, f->id, raw, n);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *md = f->descriptor;
        wbuf sub = {0};
        if (strcmp(md->name, "google.protobuf.Timestamp") == 0 ||
            strcmp(md->name, "google.protobuf.Duration") == 0)
            gen_time(md, &sub, seed);
        else if (depth < 4)
            gen_message(md, &sub, depth + 1, seed, hostile);
        put_ld(b, f->id, sub.p ? sub.p : (const uint8_t *)"", sub.n);
        free(sub.p);
        break;
    }
    }
}

static void gen_message(const ProtobufCMessageDescriptor *d, wbuf *b, int depth, unsigned *seed,
                        int *hostile)
{
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (rand_r(seed) % 100 < 30)
            continue;
        unsigned n = 1;
        if (f->label == PROTOBUF_C_LABEL_REPEATED)
            n = rand_r(seed) % 12 == 0 ? 101 + (unsigned)rand_r(seed) % 200
                                       : (unsigned)rand_r(seed) % 4;
        for (unsigned k = 0; k < n; k++)
            gen_value(f, b, depth, seed, hostile);
    }
}

/* flips, truncates or replaces the encoding; 1 when it did */
static int mutate(wbuf *b, unsigned *seed)
{
    unsigned r = (unsigned)rand_r(seed) % 100;
    if (r < 70 || !b->n)
        return 0;
    if (r < 85) {
        for (int k = 0; k < 1 + rand_r(seed) % 3; k++)
            b->p[(unsigned)rand_r(seed) % b->n] ^= (uint8_t)(1u << (rand_r(seed) % 8));
    } else if (r < 95) {
        b->n = (size_t)rand_r(seed) % b->n;
    } else {
        for (size_t i = 0; i < b->n; i++)
            b->p[i] = (uint8_t)rand_r(seed);
    }
    return 1;
}

/* ---- the fuzz run ---- */

/* the tables a request can write: every table of the two schemas that is
 * still empty once the services are up (what holds rows by then is their
 * own bookkeeping: migrations, leases) */
static char *data_tables(PGconn *pg, const fx *p)
{
    char sql[2048];
    snprintf(sql, sizeof sql,
             "SELECT string_agg(quote_ident(table_schema) || '.' || quote_ident(table_name), ',') "
             "FROM information_schema.tables WHERE table_schema IN ('%s', '%s') "
             "AND table_type = 'BASE TABLE'",
             p->inv_schema, p->ord_schema);
    PGresult *r = PQexec(pg, sql);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    char *all = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    size_t cap = strlen(all) + 1, n = 0;
    char *out = calloc(1, cap);
    for (char *save = NULL, *t = strtok_r(all, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", t);
        if (hs_pg_scalar(pg, sql) == 0)
            n += (size_t)snprintf(out + n, cap - n, "%s%s", n ? "," : "", t);
    }
    free(all);
    return out;
}

static char *rows_sql(const char *tables)
{
    size_t cap = strlen(tables) * 2 + 256;
    char *sql = calloc(1, cap);
    size_t n = (size_t)snprintf(sql, cap, "SELECT 0");
    char *copy = strdup(tables);
    for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
        n += (size_t)snprintf(sql + n, cap - n, " + (SELECT count(*) FROM %s)", t);
    free(copy);
    return sql;
}

typedef struct tally {
    int ok, refused, invalid, hostile, mutated;
} tally;

static void fuzz_service(fx *p, cm_rpc_client *c, const ProtobufCServiceDescriptor *svc, PGconn *pg,
                         const char *tables, unsigned *seed, int per_method, tally *t)
{
    char *count_sql = rows_sql(tables);
    char truncate_sql[4096];
    snprintf(truncate_sql, sizeof truncate_sql, "TRUNCATE %s", tables);
    int dirty = 0;
    for (unsigned m = 0; m < svc->n_methods; m++) {
        const ProtobufCMethodDescriptor *md = &svc->methods[m];
        char path[160];
        snprintf(path, sizeof path, "/%s/%s", svc->name, md->name);
        for (int i = 0; i < per_method; i++) {
            if (dirty) {
                /* what an accepted call stored goes, so a refusal after it
                 * can be seen to store nothing */
                hs_pg_exec_retry(pg, truncate_sql);
                dirty = 0;
            }
            wbuf b = {0};
            int hostile = 0;
            gen_message(md->input, &b, 0, seed, &hostile);
            int mutated = mutate(&b, seed);
            cm_rpc_status st;
            ProtobufCMessage *resp = NULL;
            int rc = cm_rpc_call_bytes(c, path, b.p ? b.p : (const uint8_t *)"", b.n, md->output,
                                       NULL, &resp, tenant_md, 1, 10000, 0, &st);
            size_t sent = b.n;
            char hex[129] = "";
            for (size_t k = 0; k < b.n && k < 64; k++)
                snprintf(hex + 2 * k, 3, "%02x", b.p[k]);
            free(b.p);
            if (resp)
                protobuf_c_message_free_unpacked(resp, NULL);
            ck_assert_msg(
                st.code != GRPC_STATUS_INTERNAL && st.code != GRPC_STATUS_UNKNOWN &&
                    st.code != GRPC_STATUS_UNAVAILABLE && st.code != GRPC_STATUS_DATA_LOSS &&
                    st.code != GRPC_STATUS_UNIMPLEMENTED,
                "%s call %d: code %d reason %s: %s", path, i, st.code, st.reason, st.message);
            if (sent > (4u << 20)) {
                /* over GRPC_MAX_MESSAGE_BYTES: gRPC core refuses it before
                 * any of our code runs */
                ck_assert_int_eq(st.code, GRPC_STATUS_RESOURCE_EXHAUSTED);
                t->refused++;
                continue;
            }
            if (hostile && !mutated)
                ck_assert_msg(st.code == GRPC_STATUS_INVALID_ARGUMENT,
                              "%s call %d: a NUL or invalid UTF-8 was not refused (code %d %s): "
                              "%s",
                              path, i, st.code, st.message, hex);
            if (rc == 0) {
                t->ok++;
                dirty = 1;
                continue;
            }
            t->refused++;
            t->hostile += hostile && !mutated;
            t->mutated += mutated;
            ck_assert_msg(st.reason[0], "%s call %d: code %d without ErrorInfo", path, i, st.code);
            ck_assert_int_eq(st.details_truncated, 0);
            if (st.code == GRPC_STATUS_INVALID_ARGUMENT) {
                t->invalid++;
                ck_assert_msg(st.field[0], "%s call %d: INVALID_ARGUMENT names no field: %s", path,
                              i, st.message);
            }
            long long rows = hs_pg_scalar(pg, count_sql);
            ck_assert_msg(rows == 0, "%s call %d: refused (code %d %s) yet %lld rows stored", path,
                          i, st.code, st.reason, rows);
        }
        ck_assert_msg(hs_alive(&p->inv) && hs_alive(&p->ord), "a service died after %s", path);
    }
    if (dirty)
        hs_pg_exec_retry(pg, truncate_sql);
    free(count_sql);
}

START_TEST(every_rpc_survives_hostile_requests_and_refusals_store_nothing)
{
    const char *s = getenv("HOSTILE_SEED");
    unsigned seed = s && *s ? (unsigned)strtoul(s, NULL, 10) : (unsigned)time(NULL);
    const char *n = getenv("HOSTILE_CALLS");
    int per_method = n && *n ? (int)strtol(n, NULL, 10) : 60;
    fprintf(stderr, "hostile: seed %u (HOSTILE_SEED replays it), %d requests per method\n", seed,
            per_method);
    big_a = malloc(10 * 1024);
    memset(big_a, 'x', 10 * 1024);
    big_b = malloc(300 * 1024);
    memset(big_b, 'y', 300 * 1024);

    fx *p = &the_pair;
    pair_start(p, NULL, "fz", NULL);
    PGconn *pg = hs_pg_connect(hs_pg_dsn());
    usleep(500 * 1000); /* the services' own first writes (leases) */
    char *tables = data_tables(pg, p);
    ck_assert_msg(strstr(tables, "reservation") && strstr(tables, "orders"), "data tables: %s",
                  tables);
    tally ti = {0}, to = {0};
    fuzz_service(p, p->ic, &commerce__inventory__v1__inventory_service__descriptor, pg, tables,
                 &seed, per_method, &ti);
    fuzz_service(p, p->oc, &commerce__order__v1__order_service__descriptor, pg, tables, &seed,
                 per_method, &to);
    fprintf(stderr,
            "hostile: inventory %d ok, %d refused (%d INVALID_ARGUMENT, %d hostile strings, %d "
            "mutated); order %d ok, %d refused (%d INVALID_ARGUMENT, %d hostile strings, %d "
            "mutated)\n",
            ti.ok, ti.refused, ti.invalid, ti.hostile, ti.mutated, to.ok, to.refused, to.invalid,
            to.hostile, to.mutated);
    /* the generator reached the checks it exists for */
    ck_assert_int_gt(ti.hostile + to.hostile, per_method / 2);
    ck_assert_int_gt(ti.invalid + to.invalid, per_method);
    ck_assert_int_eq(hs_health(&p->inv), 1);
    ck_assert_int_eq(hs_health(&p->ord), 1);
    free(tables);
    PQfinish(pg);
    fx_stop(p);
    free(big_a);
    free(big_b);
}
END_TEST

/* ---- postgres restarted under load ---- */

/* a private cluster of its own: restarting the shared one would fail the
 * tests running beside this one */
typedef struct cluster {
    char dir[128];
    int port;
    char dsn[256];
} cluster;

static int pg_sh(const cluster *c, const char *verb)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "env -u PG_DSN PG_PORT=%d PG_RUN_DIR=%s %s %s >>%s.out 2>&1", c->port,
             c->dir, PG_SH, verb, c->dir);
    return system(cmd);
}

typedef struct loadgen {
    fx *p;
    atomic_int stop;
    atomic_int ok, retryable, bad;
    char last_bad[1024];
    pthread_mutex_t mu;
    int id;
} loadgen;

static int retryable(int code)
{
    return code == GRPC_STATUS_UNAVAILABLE || code == GRPC_STATUS_ABORTED ||
           code == GRPC_STATUS_DEADLINE_EXCEEDED;
}

static void *create_loop(void *arg)
{
    loadgen *g = arg;
    cm_rpc_client *c;
    char err[256];
    cm_rpc_client_opts o = {.target = g->p->ord.target, .max_attempts = 1};
    if (cm_rpc_client_new(&c, &o, err, sizeof err))
        return NULL;
    unsigned k = 0;
    while (!atomic_load(&g->stop)) {
        char rid[64];
        snprintf(rid, sizeof rid, "pgr-%d-%u", g->id, k++);
        Commerce__Common__V1__Money price = COMMERCE__COMMON__V1__MONEY__INIT;
        price.amount_minor = 1999;
        price.currency = "CNY";
        Commerce__Order__V1__CreateOrderLine line = COMMERCE__ORDER__V1__CREATE_ORDER_LINE__INIT;
        line.sku = "PGR-1";
        line.quantity = 1;
        line.unit_price = &price;
        Commerce__Order__V1__CreateOrderLine *lines[] = {&line};
        Commerce__Order__V1__CreateOrderRequest req =
            COMMERCE__ORDER__V1__CREATE_ORDER_REQUEST__INIT;
        req.request_id = rid;
        req.buyer_id = "buyer-pgr";
        req.merchant_id = "m-1";
        req.currency = "CNY";
        req.n_lines = 1;
        req.lines = lines;
        /* the caller's retry loop: the same request id until an answer
         * that is not retryable, each answer judged */
        for (int attempt = 0; attempt < 40 && !atomic_load(&g->stop); attempt++) {
            cm_rpc_status st;
            ProtobufCMessage *resp = NULL;
            int rc = cm_rpc_call(c, "/commerce.order.v1.OrderService/CreateOrder", &req.base,
                                 &commerce__order__v1__create_order_response__descriptor, NULL,
                                 &resp, tenant_md, 1, 5000, 0, &st);
            if (resp)
                protobuf_c_message_free_unpacked(resp, NULL);
            if (rc == 0) {
                atomic_fetch_add(&g->ok, 1);
                break;
            }
            if (retryable(st.code)) {
                atomic_fetch_add(&g->retryable, 1);
                usleep(100 * 1000);
                continue;
            }
            atomic_fetch_add(&g->bad, 1);
            pthread_mutex_lock(&g->mu);
            snprintf(g->last_bad, sizeof g->last_bad, "%s: code %d %s %s: %s", rid, st.code,
                     st.reason, st.field, st.message);
            pthread_mutex_unlock(&g->mu);
            break;
        }
    }
    cm_rpc_client_free(c);
    return NULL;
}

START_TEST(postgres_restarts_under_load_leave_no_orphan_reservation)
{
    cluster cl;
    snprintf(cl.dir, sizeof cl.dir, "/tmp/commerce-hostile-pg-%d", (int)getpid());
    cl.port = hs_free_port();
    snprintf(cl.dsn, sizeof cl.dsn, "host=127.0.0.1 port=%d dbname=commerce user=postgres",
             cl.port);
    snprintf(cluster_stop_cmd, sizeof cluster_stop_cmd,
             "env -u PG_DSN PG_PORT=%d PG_RUN_DIR=%s %s stop >/dev/null 2>&1; rm -rf %s %s.out",
             cl.port, cl.dir, PG_SH, cl.dir, cl.dir);
    ck_assert_msg(pg_sh(&cl, "start") == 0, "could not start a private postgres (%s.out)", cl.dir);

    /* the inventory timeout sets the release delay: 2x, at least 2 s */
    const char *ord_env[] = {"ORDER_INVENTORY_TIMEOUT_MS=1000", NULL};
    fx *p = &the_pair;
    pair_start(p, cl.dsn, "pgr", ord_env);
    fx_set_stock_md(p->ic, "pgr-stock", "PGR-1", 1000000, tenant_md);

    loadgen g = {.p = p};
    pthread_mutex_init(&g.mu, NULL);
    enum { THREADS = 4 };
    loadgen gs[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        gs[i] = g;
        gs[i].id = i;
        pthread_mutex_init(&gs[i].mu, NULL);
        pthread_create(&th[i], NULL, create_loop, &gs[i]);
    }
    for (int r = 0; r < 6; r++) {
        usleep(1500 * 1000);
        ck_assert_msg(pg_sh(&cl, "stop") == 0, "pg.sh stop failed (%s.out)", cl.dir);
        usleep(700 * 1000);
        ck_assert_msg(pg_sh(&cl, "start") == 0, "pg.sh start failed (%s.out)", cl.dir);
    }
    usleep(2000 * 1000);
    for (int i = 0; i < THREADS; i++) {
        atomic_store(&gs[i].stop, 1);
        pthread_join(th[i], NULL);
    }
    int ok = 0, retried = 0, bad = 0;
    for (int i = 0; i < THREADS; i++) {
        ok += atomic_load(&gs[i].ok);
        retried += atomic_load(&gs[i].retryable);
        bad += atomic_load(&gs[i].bad);
        ck_assert_msg(atomic_load(&gs[i].bad) == 0, "a create failed for good: %s", gs[i].last_bad);
    }
    fprintf(stderr, "pg restarts: %d orders created, %d retryable failures, %d final failures\n",
            ok, retried, bad);
    ck_assert_int_gt(ok, 20);
    ck_assert_int_gt(retried, 0); /* the restarts were felt */

    /* once the release delay has passed, every held reservation has its
     * order: none is left held with no order until its ttl */
    PGconn *pg = hs_pg_connect(cl.dsn);
    /* %.63s: the schema names fit fx's 64-byte arrays (gcc -O3 otherwise
     * sizes them by the rest of the struct) */
    char sql[2048];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM %.63s.reservation r WHERE r.state = 1 AND NOT EXISTS "
             "(SELECT 1 FROM %.63s.orders o WHERE o.tenant_id = r.tenant_id "
             "AND o.order_id::text = r.order_id)",
             p->inv_schema, p->ord_schema);
    long long orphans = -1;
    long long until = hs_now_ms() + 20000;
    while (hs_now_ms() < until && (orphans = hs_pg_scalar(pg, sql)) != 0)
        usleep(250 * 1000);
    ck_assert_msg(orphans == 0, "%lld reservations held without an order", orphans);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.orders", p->ord_schema);
    long long orders = hs_pg_scalar(pg, sql);
    snprintf(sql, sizeof sql,
             "SELECT coalesce(sum(l.quantity), 0) FROM %.63s.reservation r JOIN "
             "%.63s.reservation_line "
             "l USING (tenant_id, order_id) WHERE r.state = 1",
             p->inv_schema, p->inv_schema);
    ck_assert_int_eq(hs_pg_scalar(pg, sql), orders); /* one unit held per order */
    ck_assert_int_ge(orders, ok);
    PQfinish(pg);
    fx_stop(p);
    ck_assert_int_eq(system(cluster_stop_cmd), 0);
    cluster_stop_cmd[0] = '\0';
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("hostile");
    TCase *tc = tcase_create("hostile");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, every_rpc_survives_hostile_requests_and_refusals_store_nothing);
    tcase_add_test(tc, postgres_restarts_under_load_leave_no_orphan_reservation);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    /* gRPC does not survive fork: run every test in this process */
    return hs_run(suite(), 1);
}
