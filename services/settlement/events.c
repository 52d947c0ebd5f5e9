/* settlement's events: see stl_events.h */
#include "stl_events.h"

#include "cm_err.h"
#include "cm_id.h"
#include "cm_log.h"
#include "cm_money.h"
#include "cm_park.h"
#include "cm_pb.h"
#include "stl_api.h"

#include <stdio.h>
#include <string.h>

#include "commerce/events/v1/commission_events.pb-c.h"
#include "commerce/events/v1/order_events.pb-c.h"
#include "commerce/events/v1/settlement_events.pb-c.h"

static Commerce__Common__V1__Date *date(cm_arena *a, const char *ymd)
{
    int y, mo, d;
    if (!*ymd || sscanf(ymd, "%d-%d-%d", &y, &mo, &d) != 3)
        return NULL;
    Commerce__Common__V1__Date *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__common__v1__date__init(m);
    m->year = y;
    m->month = mo;
    m->day = d;
    return m;
}

Commerce__Settlement__V1__Party *stl_pb_party(cm_arena *a, int type, const char *id)
{
    Commerce__Settlement__V1__Party *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__settlement__v1__party__init(m);
    m->type = (Commerce__Settlement__V1__PartyType)type;
    m->id = cm_arena_strdup(a, id);
    return m->id ? m : NULL;
}

Commerce__Settlement__V1__JournalEntry *stl_pb_entry(cm_arena *a, const stl_entry *e)
{
    Commerce__Settlement__V1__JournalEntry *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__settlement__v1__journal_entry__init(m);
    m->entry_id = e->id;
    m->kind = (Commerce__Settlement__V1__EntryKind)e->kind;
    m->order_id = cm_arena_strdup(a, e->order_id);
    m->merchant_id = cm_arena_strdup(a, e->merchant);
    m->refund_id = cm_arena_strdup(a, e->ref);
    m->currency = cm_arena_strdup(a, e->currency);
    m->posted_at = cm_pb_timestamp(a, e->posted_ms);
    m->rule_version = e->rule_version;
    m->capped = e->capped;
    m->source_event_id = cm_arena_strdup(a, e->event_id);
    m->amount = cm_pb_money(a, e->amount, e->currency);
    m->fee = cm_pb_money(a, e->fee, e->currency);
    m->postings = cm_arena_calloc(a, e->n ? e->n : 1, sizeof *m->postings);
    if (!m->order_id || !m->merchant_id || !m->refund_id || !m->currency || !m->amount || !m->fee ||
        !m->postings || !m->source_event_id)
        return NULL;
    for (size_t i = 0; i < e->n; i++) {
        const stl_posting *q = &e->p[i];
        Commerce__Settlement__V1__Posting *p = cm_arena_calloc(a, 1, sizeof *p);
        if (!p)
            return NULL;
        commerce__settlement__v1__posting__init(p);
        if (!(p->party = stl_pb_party(a, q->type, q->owner)))
            return NULL;
        p->account_id = q->account;
        p->bucket = (Commerce__Settlement__V1__Bucket)q->bucket;
        p->amount_minor = q->amount;
        p->due_date = date(a, q->due);
        m->postings[i] = p;
    }
    m->n_postings = e->n;
    return m;
}

int stl_ev_pack_entry(cm_arena *a, const char *tenant, const char *event_id, const stl_entry *e,
                      const uint8_t **out, size_t *len)
{
    Commerce__Settlement__V1__JournalEntry *entry = stl_pb_entry(a, e);
    int64_t *versions = cm_arena_calloc(a, e->n ? e->n : 1, sizeof *versions);
    if (!entry || !versions)
        return CM_ENOMEM;
    for (size_t i = 0; i < e->n; i++)
        versions[i] = e->p[i].version;
    const ProtobufCMessage *msg;
    if (e->kind == STL_ENTRY_COMMISSION && e->n == 2) {
        /* postings: the payer, then the channel's commission account */
        Commerce__Events__V1__CommissionCostPosted cc =
            COMMERCE__EVENTS__V1__COMMISSION_COST_POSTED__INIT;
        cc.event_id = (char *)event_id;
        cc.tenant_id = (char *)tenant;
        cc.occurred_at = entry->posted_at;
        cc.order_id = entry->order_id;
        cc.merchant_id = entry->merchant_id;
        cc.channel_id = cm_arena_strdup(a, e->p[1].owner);
        cc.payer = stl_pb_party(a, e->p[0].type, e->p[0].owner);
        cc.change = cm_pb_money(a, e->p[1].amount, e->currency);
        cc.entry = entry;
        cc.account_versions = versions;
        cc.n_account_versions = e->n;
        if (!cc.channel_id || !cc.payer || !cc.change)
            return CM_ENOMEM;
        return cm_pb_pack(a, &cc.base, out, len);
    }
    Commerce__Events__V1__SplitPosted sp = COMMERCE__EVENTS__V1__SPLIT_POSTED__INIT;
    Commerce__Events__V1__SplitReversed sr = COMMERCE__EVENTS__V1__SPLIT_REVERSED__INIT;
    if (e->kind == STL_ENTRY_SPLIT) {
        sp.event_id = (char *)event_id;
        sp.tenant_id = (char *)tenant;
        sp.occurred_at = entry->posted_at;
        sp.order_id = entry->order_id;
        sp.merchant_id = entry->merchant_id;
        sp.paid_amount = entry->amount;
        sp.entry = entry;
        sp.account_versions = versions;
        sp.n_account_versions = e->n;
        msg = &sp.base;
    } else {
        sr.event_id = (char *)event_id;
        sr.tenant_id = (char *)tenant;
        sr.occurred_at = entry->posted_at;
        sr.order_id = entry->order_id;
        sr.merchant_id = entry->merchant_id;
        sr.refund_id = entry->refund_id;
        sr.refunded_amount = entry->amount;
        sr.entry = entry;
        sr.account_versions = versions;
        sr.n_account_versions = e->n;
        msg = &sr.base;
    }
    return cm_pb_pack(a, msg, out, len);
}

Commerce__Settlement__V1__Payout *stl_pb_payout(cm_arena *a, const stl_payout *x)
{
    Commerce__Settlement__V1__Payout *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__settlement__v1__payout__init(m);
    m->party = stl_pb_party(a, x->type, x->owner);
    m->payout_id = cm_arena_strdup(a, x->id);
    m->account_id = x->account;
    m->amount = cm_pb_money(a, x->amount, x->currency);
    m->state = (Commerce__Settlement__V1__PayoutState)x->state;
    m->created_at = cm_pb_timestamp(a, x->created_ms);
    m->updated_at = cm_pb_timestamp(a, x->updated_ms);
    m->provider_reference = cm_arena_strdup(a, x->ref);
    m->failure_reason = cm_arena_strdup(a, x->reason);
    return m->party && m->payout_id && m->amount && m->provider_reference && m->failure_reason
               ? m
               : NULL;
}

Commerce__Settlement__V1__SettlementRun *stl_pb_run(cm_arena *a, const stl_run *r)
{
    Commerce__Settlement__V1__SettlementRun *m = cm_arena_calloc(a, 1, sizeof *m);
    if (!m)
        return NULL;
    commerce__settlement__v1__settlement_run__init(m);
    m->run_id = cm_arena_strdup(a, r->id);
    m->business_date = date(a, r->date);
    m->state = (Commerce__Settlement__V1__SettlementRunState)r->state;
    m->trigger = (Commerce__Settlement__V1__SettlementTrigger)r->trigger;
    m->settled_accounts = r->entries;
    m->settled_rows = r->rows;
    m->started_at = cm_pb_timestamp(a, r->started_ms);
    m->finished_at = r->finished_ms ? cm_pb_timestamp(a, r->finished_ms) : NULL;
    return m->run_id && m->business_date ? m : NULL;
}

int stl_ev_pack_payout(cm_arena *a, const char *tenant, const char *event_id, const char *type,
                       const stl_payout *x, const uint8_t **out, size_t *len)
{
    Commerce__Settlement__V1__Payout *po = stl_pb_payout(a, x);
    if (!po)
        return CM_ENOMEM;
    Google__Protobuf__Timestamp *at =
        x->state == STL_PAYOUT_PENDING ? po->created_at : po->updated_at;
    /* the three payout events have the same fields */
    if (strcmp(type, STL_TYPE_PAYOUT_CREATED) == 0) {
        Commerce__Events__V1__PayoutCreated e = COMMERCE__EVENTS__V1__PAYOUT_CREATED__INIT;
        e.event_id = (char *)event_id;
        e.tenant_id = (char *)tenant;
        e.occurred_at = at;
        e.payout = po;
        return cm_pb_pack(a, &e.base, out, len);
    }
    if (strcmp(type, STL_TYPE_PAYOUT_PAID) == 0) {
        Commerce__Events__V1__PayoutPaid e = COMMERCE__EVENTS__V1__PAYOUT_PAID__INIT;
        e.event_id = (char *)event_id;
        e.tenant_id = (char *)tenant;
        e.occurred_at = at;
        e.payout = po;
        return cm_pb_pack(a, &e.base, out, len);
    }
    Commerce__Events__V1__PayoutFailed e = COMMERCE__EVENTS__V1__PAYOUT_FAILED__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = (char *)tenant;
    e.occurred_at = at;
    e.payout = po;
    return cm_pb_pack(a, &e.base, out, len);
}

int stl_ev_pack_run(cm_arena *a, const char *tenant, const char *event_id, const stl_run *r,
                    const uint8_t **out, size_t *len)
{
    Commerce__Events__V1__SettlementRunCompleted e =
        COMMERCE__EVENTS__V1__SETTLEMENT_RUN_COMPLETED__INIT;
    e.event_id = (char *)event_id;
    e.tenant_id = (char *)tenant;
    e.run = stl_pb_run(a, r);
    if (!e.run)
        return CM_ENOMEM;
    e.occurred_at = e.run->finished_at;
    return cm_pb_pack(a, &e.base, out, len);
}

/* ---- the order events ---- */

static int64_t ts_ms(const Google__Protobuf__Timestamp *t)
{
    return t ? cm_pb_timestamp_ms(t) : 0;
}

/* a key as the order service writes them: 1-64 of [A-Za-z0-9._:-] */
static int valid_key(const char *s)
{
    return cm_id_key_valid(s, STL_ID_MAX);
}

int stl_ev_paid_in(const cm_event *ev, Commerce__Events__V1__OrderPaid **msg, stl_pay_in *in)
{
    *msg = NULL;
    Commerce__Events__V1__OrderPaid *p =
        commerce__events__v1__order_paid__unpack(NULL, ev->len, ev->payload);
    if (!p)
        return CM_EINVAL;
    const Commerce__Order__V1__Order *o = p->order;
    const char *tenant = *p->tenant_id ? p->tenant_id : ev->tenant_id;
    const Commerce__Common__V1__Money *amt = o && o->payment && o->payment->amount
                                                 ? o->payment->amount
                                             : o ? o->total_amount
                                                 : NULL;
    int rc = CM_EINVAL;
    if (o && amt && *tenant && cm_id_is_uuid(p->order_id) && valid_key(o->merchant_id) &&
        cm_money_currency_valid(amt->currency) && amt->amount_minor >= 0) {
        int64_t paid = ts_ms(o->payment ? o->payment->paid_at : NULL);
        if (!paid)
            paid = ts_ms(o->payment ? o->payment->recorded_at : NULL);
        if (!paid)
            paid = ts_ms(p->occurred_at);
        *in = (stl_pay_in){.tenant = tenant,
                           .order_id = p->order_id,
                           .merchant = o->merchant_id,
                           .currency = amt->currency,
                           .event_id = ev->id,
                           .traceparent = ev->traceparent,
                           .amount = amt->amount_minor,
                           .paid_ms = paid};
        *msg = p;
        rc = 0;
    } else {
        cm_log_warn("OrderPaid event refused: missing or invalid fields", "event_id", ev->id, NULL);
        protobuf_c_message_free_unpacked(&p->base, NULL);
    }
    return rc;
}

static int on_paid(stl_app *app, const cm_event *ev)
{
    Commerce__Events__V1__OrderPaid *p;
    stl_pay_in in;
    int rc = stl_ev_paid_in(ev, &p, &in);
    if (rc)
        return rc;
    rc = stl_ledger_stage_pay(app->ledger, &in);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    return rc;
}

int stl_ev_refund_in(const cm_event *ev, Commerce__Events__V1__OrderRefunded **msg,
                     stl_refund_in *in)
{
    *msg = NULL;
    Commerce__Events__V1__OrderRefunded *p =
        commerce__events__v1__order_refunded__unpack(NULL, ev->len, ev->payload);
    if (!p)
        return CM_EINVAL;
    const char *tenant = *p->tenant_id ? p->tenant_id : ev->tenant_id;
    const Commerce__Order__V1__Refund *rf = p->refund;
    if (!(rf && rf->amount && *tenant && cm_id_is_uuid(p->order_id) && valid_key(rf->refund_id))) {
        cm_log_warn("OrderRefunded event refused: missing or invalid fields", "event_id", ev->id,
                    NULL);
        protobuf_c_message_free_unpacked(&p->base, NULL);
        return CM_EINVAL;
    }
    *in = (stl_refund_in){.tenant = tenant,
                          .order_id = p->order_id,
                          .refund_id = rf->refund_id,
                          .currency = rf->amount->currency,
                          .event_id = ev->id,
                          .traceparent = ev->traceparent,
                          .amount = rf->amount->amount_minor};
    *msg = p;
    return 0;
}

static int on_refunded(stl_app *app, cm_db *db, const cm_event *ev)
{
    Commerce__Events__V1__OrderRefunded *p;
    stl_refund_in in;
    int rc = stl_ev_refund_in(ev, &p, &in);
    if (rc)
        return rc;
    rc = stl_ledger_refund(app->ledger, db, &in);
    if (rc == CM_ENOTFOUND) {
        /* the payment is not posted yet: parked until it is (or until the
         * parker dead-letters it), the consumer goes on */
        cm_log_warn("refund before its payment: parked", "tenant", in.tenant, "order_id",
                    in.order_id, "refund_id", in.refund_id, NULL);
        cm_counter_add(app->parked, 1);
        cm_park_refund pk = {.tenant = in.tenant,
                             .order_id = in.order_id,
                             .refund_id = in.refund_id,
                             .event_id = ev->id,
                             .currency = in.currency,
                             .amount = in.amount,
                             .traceparent = ev->traceparent,
                             .topic = ev->topic,
                             .payload = ev->payload,
                             .len = ev->len};
        rc = cm_park_add(db, &pk);
    }
    protobuf_c_message_free_unpacked(&p->base, NULL);
    return rc;
}

int stl_ev_completed_in(const cm_event *ev, Commerce__Events__V1__OrderCompleted **msg,
                        stl_completed_in *in)
{
    *msg = NULL;
    Commerce__Events__V1__OrderCompleted *p =
        commerce__events__v1__order_completed__unpack(NULL, ev->len, ev->payload);
    if (!p)
        return CM_EINVAL;
    const char *tenant = *p->tenant_id ? p->tenant_id : ev->tenant_id;
    if (!*tenant || !cm_id_is_uuid(p->order_id)) {
        cm_log_warn("OrderCompleted event refused: missing or invalid fields", "event_id", ev->id,
                    NULL);
        protobuf_c_message_free_unpacked(&p->base, NULL);
        return CM_EINVAL;
    }
    int64_t at = ts_ms(p->order ? p->order->completed_at : NULL);
    if (!at)
        at = ts_ms(p->occurred_at);
    *in = (stl_completed_in){.tenant = tenant, .order_id = p->order_id, .completed_ms = at};
    *msg = p;
    return 0;
}

static int on_completed(stl_app *app, cm_db *db, const cm_event *ev)
{
    Commerce__Events__V1__OrderCompleted *p;
    stl_completed_in in;
    int rc = stl_ev_completed_in(ev, &p, &in);
    if (rc)
        return rc;
    rc = stl_ledger_complete(app->ledger, db, in.tenant, in.order_id, in.completed_ms);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    return rc;
}

int stl_on_order_event(cm_db *db, const cm_event *ev, void *arg)
{
    stl_app *app = arg;
    if (strcmp(ev->type, "commerce.events.v1.OrderPaid") == 0)
        return on_paid(app, ev);
    if (strcmp(ev->type, "commerce.events.v1.OrderRefunded") == 0)
        return on_refunded(app, db, ev);
    if (strcmp(ev->type, "commerce.events.v1.OrderCompleted") == 0)
        return on_completed(app, db, ev);
    return 0;
}

void stl_parker(cm_service *svc, cm_db *db, void *arg)
{
    stl_app *app = arg;
    int n = 0, rc;
    do {
        rc = cm_park_expire(db, "payment not posted in time",
                            (int)cm_service_int(svc, "SETTLEMENT_PARK_TIMEOUT_S"), &n);
        if (rc == 0 && n) {
            cm_counter_add(app->dead_lettered, (uint64_t)n);
            cm_log_warn("parked refunds dead-lettered: their payment never came", "count",
                        n > 1 ? "several" : "one", NULL);
        }
    } while (rc == 0 && n == 500);
    if (rc)
        cm_log_warn("parker could not expire refunds", "error", cm_strerror(rc), NULL);
}

void stl_settler(cm_service *svc, cm_db *db, void *arg)
{
    stl_app *app = arg;
    int runs = 0, payouts = 0;
    int rc = stl_settle(db, &app->defaults, (int)cm_service_int(svc, "SETTLEMENT_RUN_BATCH"),
                        app->events_on, app->topic, &runs, &payouts);
    if (rc)
        cm_log_warn("settler could not finish", "error", cm_strerror(rc), NULL);
    cm_counter_add(app->runs, (uint64_t)runs);
    cm_counter_add(app->payouts, (uint64_t)payouts);
}

void stl_payer(cm_service *svc, cm_db *db, void *arg)
{
    stl_app *app = arg;
    int payouts = 0;
    int rc = stl_pay_out(db, app->events_on, app->topic, &payouts);
    if (rc)
        cm_log_warn("payer could not finish", "error", cm_strerror(rc), NULL);
    cm_counter_add(app->payouts, (uint64_t)payouts);
    long long pending = 0;
    if (!app->payouts_pending)
        app->payouts_pending = cm_metrics_gauge(
            cm_service_metrics(svc), "settlement_payouts_pending",
            "payouts waiting for the payment system's report (as of the payer's last pass; "
            "only the replica whose payer leads has it)",
            NULL);
    if (stl_payouts_pending(db, &pending) == 0)
        cm_gauge_set(app->payouts_pending, (double)pending);
}

void stl_payer_resign(cm_service *svc, void *arg)
{
    stl_app *app = arg;
    cm_metrics_gauge_remove(cm_service_metrics(svc), app->payouts_pending);
    app->payouts_pending = NULL;
}

void stl_on_tx_begin(void *arg)
{
    stl_app *app = arg;
    stl_ledger_begin(app->ledger);
}

int stl_on_tx_end(cm_db *db, void *arg)
{
    stl_app *app = arg;
    return stl_ledger_flush(app->ledger, db);
}

void stl_on_committed(const cm_event *ev, int duplicate, void *arg)
{
    (void)ev;
    (void)duplicate;
    stl_app *app = arg;
    stl_ledger_committed(app->ledger);
    stl_ledger_stats s;
    stl_ledger_get_stats(app->ledger, &s);
    cm_counter_add(app->posted, s.splits - app->last.splits);
    cm_counter_add(app->reversed, s.reversals - app->last.reversals);
    cm_counter_add(app->duplicates, s.duplicates - app->last.duplicates);
    cm_counter_add(app->capped, s.capped - app->last.capped);
    app->last = s;
}

/* ---- the commission events: the commission cost (cost.c) ---- */

/* the fields every commission event's entry needs, checked once */
static int cost_valid(const stl_cost_event *c)
{
    /* a period close belongs to a period, not an order */
    int no_order = c->kind == STL_COST_ADJUSTED && c->adj_kind == STL_ADJ_PERIOD_CLOSE;
    return *c->tenant && valid_key(c->channel) &&
           (no_order ? !*c->order_id : cm_id_is_uuid(c->order_id)) &&
           (!*c->merchant || valid_key(c->merchant)) && cm_money_currency_valid(c->currency) &&
           (c->kind == STL_COST_ADJUSTED ? cm_id_is_uuid(c->adjustment_id)
                                         : cm_id_is_uuid(c->commission_id)) &&
           (c->kind != STL_COST_CLAWED_BACK || valid_key(c->refund_id));
}

/* c: the event's commission (accrued, clawed back); money: the amount */
static void cost_from_commission(stl_cost_event *out, const Commerce__Commission__V1__Commission *c,
                                 const Commerce__Common__V1__Money *money)
{
    out->commission_id = c->commission_id;
    out->channel = c->channel_id;
    out->order_id = c->order_id;
    out->merchant = c->merchant_id;
    out->payer = (int)c->payer;
    out->currency = money->currency;
    out->amount = money->amount_minor;
}

int stl_ev_cost_in(const cm_event *ev, ProtobufCMessage **msg_out, stl_cost_event *out)
{
    *msg_out = NULL;
    stl_cost_event c = {.event_id = ev->id, .traceparent = ev->traceparent, .refund_id = ""};
    ProtobufCMessage *msg = NULL;
    const char *tenant = "";
    int ok = 0;
    if (strcmp(ev->type, "commerce.events.v1.CommissionAccrued") == 0) {
        Commerce__Events__V1__CommissionAccrued *p =
            commerce__events__v1__commission_accrued__unpack(NULL, ev->len, ev->payload);
        if ((msg = p ? &p->base : NULL) && p->commission && p->commission->amount) {
            c.kind = STL_COST_ACCRUED;
            cost_from_commission(&c, p->commission, p->commission->amount);
            c.occurred_ms = ts_ms(p->occurred_at);
            tenant = p->tenant_id;
            ok = 1;
        }
    } else if (strcmp(ev->type, "commerce.events.v1.CommissionClawedBack") == 0) {
        Commerce__Events__V1__CommissionClawedBack *p =
            commerce__events__v1__commission_clawed_back__unpack(NULL, ev->len, ev->payload);
        if ((msg = p ? &p->base : NULL) && p->commission && p->clawback_amount) {
            c.kind = STL_COST_CLAWED_BACK;
            cost_from_commission(&c, p->commission, p->clawback_amount);
            c.refund_id = p->refund_id;
            c.occurred_ms = ts_ms(p->occurred_at);
            tenant = p->tenant_id;
            ok = 1;
        }
    } else if (strcmp(ev->type, "commerce.events.v1.CommissionAdjusted") == 0) {
        Commerce__Events__V1__CommissionAdjusted *p =
            commerce__events__v1__commission_adjusted__unpack(NULL, ev->len, ev->payload);
        const Commerce__Commission__V1__Adjustment *x = p ? p->adjustment : NULL;
        if ((msg = p ? &p->base : NULL) && x && x->amount) {
            c.kind = STL_COST_ADJUSTED;
            c.adj_kind = (int)x->kind;
            c.adjustment_id = x->adjustment_id;
            c.channel = x->channel_id;
            c.order_id = x->order_id;
            c.merchant = x->merchant_id;
            c.payer = (int)x->payer;
            c.currency = x->amount->currency;
            c.amount = x->amount->amount_minor;
            c.occurred_ms = ts_ms(p->occurred_at);
            tenant = p->tenant_id;
            ok = 1;
        }
    } else {
        return 1;
    }
    c.tenant = *tenant ? tenant : ev->tenant_id;
    if (!ok || !cost_valid(&c)) {
        if (msg)
            protobuf_c_message_free_unpacked(msg, NULL);
        return CM_EINVAL;
    }
    *out = c;
    *msg_out = msg;
    return 0;
}

int stl_on_commission_event(cm_db *db, const cm_event *ev, void *arg)
{
    (void)db;
    stl_app *app = arg;
    ProtobufCMessage *msg;
    stl_cost_event c;
    int rc = stl_ev_cost_in(ev, &msg, &c);
    if (rc == 1)
        return 0; /* not ours to act on */
    if (rc == 0)
        rc = stl_costs_stage(app->costs, &c);
    if (rc == CM_EINVAL)
        cm_log_warn("commission event refused: missing or invalid fields", "event_id", ev->id,
                    "type", ev->type, NULL);
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
}

void stl_on_cost_tx_begin(void *arg)
{
    stl_app *app = arg;
    stl_costs_begin(app->costs);
}

int stl_on_cost_tx_end(cm_db *db, void *arg)
{
    stl_app *app = arg;
    return stl_costs_flush(app->costs, db);
}

void stl_on_cost_committed(const cm_event *ev, int duplicate, void *arg)
{
    (void)ev;
    (void)duplicate;
    stl_app *app = arg;
    stl_costs_committed(app->costs);
    stl_costs_stats s;
    stl_costs_get_stats(app->costs, &s);
    cm_counter_add(app->costs_posted, s.posted - app->costs_last.posted);
    cm_counter_add(app->costs_duplicates, s.duplicates - app->costs_last.duplicates);
    app->costs_last = s;
}
