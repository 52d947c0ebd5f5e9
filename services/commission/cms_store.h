/*
 * cms_store: commission's sql for the api (channels, schedules, lists,
 * summaries). every function runs on the caller's connection; the
 * accrual's own sql is in accrual.c.
 */
#ifndef CMS_STORE_H
#define CMS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "cm_auth.h"
#include "cm_db.h"
#include "cm_id.h"
#include "cms_domain.h"

#define CMS_ID_MAX 64    /* channel, schedule, partner, merchant ids: bytes */
#define CMS_NAME_MAX 128 /* display names: characters */
/* quota "channels": how many channels a tenant may have when
 * RATE_LIMITS_FILE sets no other number (README: quotas) */
#define CMS_CHANNELS_QUOTA 100000LL
#define CMS_TZ_MAX 64
#define CMS_PRINCIPAL_MAX 128
#define CMS_TENANT_MAX CM_AUTH_TENANT_MAX
#define CMS_TYPES_MAX 4 /* channel types */

/* as stored and as in the proto enums */
enum { CMS_CHANNEL_ACTIVE = 1, CMS_CHANNEL_SUSPENDED = 2 };
enum { CMS_PERIOD_WEEK = 1, CMS_PERIOD_MONTH = 2, CMS_PERIOD_QUARTER = 3, CMS_PERIOD_YEAR = 4 };
enum { CMS_PAYER_MERCHANT = 1, CMS_PAYER_PLATFORM = 2 };
enum { CMS_FROZEN = 1, CMS_PAYABLE = 2, CMS_SETTLED = 3, CMS_CLAWED_BACK = 4 };
enum { CMS_PAYOUT_PENDING = 1, CMS_PAYOUT_PAID = 2, CMS_PAYOUT_FAILED = 3 };
enum {
    CMS_ADJ_TRUE_UP = 1,
    CMS_ADJ_PARENT_SHARE = 2,
    CMS_ADJ_CLAWBACK = 3,
    CMS_ADJ_PERIOD_CLOSE = 4
};
/* verdicts of idempotent writes */
enum {
    CMS_OK = 0,
    CMS_SAME = 1,
    CMS_KEY_REUSED = 2,
    CMS_VERSION = 3,
    CMS_NO_REF = 4,
    CMS_LEVELS = 5,
    CMS_BELOW_MINIMUM = 6,
    CMS_ILLEGAL = 7,
    CMS_QUOTA = 8
};

typedef struct cms_channel {
    char id[CMS_ID_MAX + 1];
    char name[CMS_NAME_MAX * 4 + 1];
    int type, state;
    char parent[CMS_ID_MAX + 1];
    int64_t override_bps;
    char schedule_id[CMS_ID_MAX + 1];
    char partner[CMS_ID_MAX + 1];
    int64_t revision, created_ms, updated_ms;
} cms_channel;

typedef struct cms_schedule_row {
    char id[CMS_ID_MAX + 1];
    char name[CMS_NAME_MAX * 4 + 1];
    int period;
    char tz[CMS_TZ_MAX + 1];
    cms_schedule s; /* currency, mode, tiers */
    size_t ntypes;
    int types[CMS_TYPES_MAX];
    int payer;
    int64_t min_payout;
    int64_t revision, effective_ms;
} cms_schedule_row;

/* a commission as stored (and as the events carry it) */
typedef struct cms_commission {
    char id[CM_ID_SIZE];
    char channel[CMS_ID_MAX + 1];
    char order_id[CM_ID_SIZE];
    char merchant[CMS_ID_MAX + 1];
    char currency[4];
    int state;
    int64_t order_amount, sales_before, amount, refunded, clawed_back;
    char schedule_id[CMS_ID_MAX + 1];
    int64_t schedule_revision;
    int64_t period_start_ms, period_end_ms, paid_ms, accrued_ms, clawed_ms;
    size_t nb;
    int64_t b_from[CMS_TIERS_MAX], b_bps[CMS_TIERS_MAX], b_sales[CMS_TIERS_MAX],
        b_amount[CMS_TIERS_MAX];
    char parent[CMS_ID_MAX + 1];
    int64_t parent_bps;
    int64_t payable_ms;         /* 0 unless PAYABLE */
    int64_t payable_amount;     /* its net when it became payable: what payouts count */
    int64_t settled_ms;         /* 0 unless SETTLED */
    char payout_id[CM_ID_SIZE]; /* "" unless in a payout */
    int payer;                  /* CMS_PAYER_*: its schedule revision's, fixed at accrual */
} cms_commission;

typedef struct cms_adjustment {
    char id[CM_ID_SIZE];
    char channel[CMS_ID_MAX + 1];
    int kind;
    char currency[4];
    int64_t amount;
    char order_id[CM_ID_SIZE];
    char refund_id[CMS_ID_MAX + 1];
    char child[CMS_ID_MAX + 1];
    int64_t period_start_ms, posted_ms;
    int state;                     /* CMS_FROZEN or CMS_PAYABLE */
    int64_t payable_ms;            /* 0 while FROZEN */
    char payout_id[CM_ID_SIZE];    /* "" unless in a payout */
    int payer;                     /* CMS_PAYER_*: the payer of order_id's commission */
    char merchant[CMS_ID_MAX + 1]; /* order_id's merchant */
} cms_adjustment;

/* 1 when the database knows the IANA zone name, else 0 (or an error < 0) */
int cms_store_zone_known(cm_db *db, const char *tz);

/* ---- channels ---- */

/* PutChannel: idempotent by request_id (hash: of the body), compare-and-set
 * by expected_revision, under a per-tenant lock of the channel tree.
 * *verdict: CMS_OK, CMS_SAME, CMS_KEY_REUSED, CMS_VERSION (out: the
 * current one), CMS_NO_REF (the schedule or the parent is unknown: *what
 * names the field), CMS_LEVELS (a third level) or CMS_QUOTA (a new
 * channel, and the tenant has quota channels already: its counter row in
 * quota_usage, read under the same lock, so concurrent creators cannot
 * overshoot). */
int cms_store_put_channel(cm_db *db, const char *tenant, const char *request_id, const char *hash,
                          const cms_channel *in, int64_t expected_revision, const char *principal,
                          long long quota, cms_channel *out, int *verdict, const char **what);
int cms_store_get_channel(cm_db *db, const char *tenant, const char *id, cms_channel *out);
/* channels after after_id ("" : from the start) by id, filtered by state
 * mask (bit 1 << state; 0: any), schedule ("" : any) and, for a channel's
 * token, to the one channel only (NULL: every channel) */
int cms_store_list_channels(cm_db *db, const char *tenant, const char *only, unsigned states,
                            const char *schedule, const char *after_id, int limit, cms_channel *out,
                            int *n);

/* ---- schedules ---- */

/* PutTierSchedule: a new revision, idempotent and compare-and-set as
 * above. *verdict: CMS_OK, CMS_SAME, CMS_KEY_REUSED, CMS_VERSION, or
 * CMS_LEVELS for a change of currency, period or time zone of a schedule a
 * channel or a commission uses. */
int cms_store_put_schedule(cm_db *db, const char *tenant, const char *request_id, const char *hash,
                           const cms_schedule_row *in, int64_t expected_revision,
                           const char *principal, cms_schedule_row *out, int *verdict);
/* one revision (0: the newest); CM_ENOTFOUND when none */
int cms_store_get_schedule(cm_db *db, const char *tenant, const char *id, int64_t revision,
                           cms_schedule_row *out);
/* the newest revision of every schedule after after_id by id */
int cms_store_list_schedules(cm_db *db, const char *tenant, const char *after_id, int limit,
                             cms_schedule_row *out, int *n);

/* ---- commissions and adjustments ---- */

/* commissions newest accrual first, before (accrued ms, id) (0: from the
 * newest), filtered by channel ("" : any), state mask (as above), order
 * ("" : any) and accrual range (ms; 0: open) */
int cms_store_list_commissions(cm_db *db, const char *tenant, const char *channel, unsigned states,
                               const char *order_id, int64_t from_ms, int64_t to_ms,
                               int64_t before_ms, const char *before_id, int limit,
                               cms_commission *out, int *n);
/* a channel's adjustments newest first, before (posted ms, id) */
int cms_store_list_adjustments(cm_db *db, const char *tenant, const char *channel,
                               int64_t before_ms, const char *before_id, int limit,
                               cms_adjustment *out, int *n);

/* ---- the summary ---- */

typedef struct cms_summary_row {
    cms_schedule_row sched;
    int64_t period_start_ms, period_end_ms;
    int64_t net_sales, orders;
    int64_t frozen;  /* commissions and adjustments FROZEN, in the currency */
    int64_t payable; /* PAYABLE in no payout: commissions' payable_amount, adjustments */
} cms_summary_row;

/* the schedule the channel would use for an order paid at at_ms (its own,
 * else the newest assigned to its type), that period's figures over every
 * revision and the frozen balance. CM_ENOTFOUND when no schedule applies. */
int cms_store_summary(cm_db *db, const char *tenant, const cms_channel *ch, int64_t at_ms,
                      cms_summary_row *out);

/* the schedule columns, for the accrual's reads */
#define CMS_SCHEDULE_COLS                                                                          \
    "s.schedule_id, s.name, s.period, s.time_zone, s.currency, s.mode, s.tier_from::text, "        \
    "s.tier_bps::text, s.channel_types::text, s.payer, s.min_payout, s.revision, "                 \
    "(extract(epoch FROM s.effective_from) * 1000)::bigint"
#define CMS_SCHEDULE_NCOLS 13
/* parses CMS_SCHEDULE_COLS from column col on */
void cms_store_parse_schedule(const PGresult *r, int row, int col, cms_schedule_row *o);
/* the commission columns (of commissions, unqualified) and their parser */
#define CMS_COMMISSION_COLS                                                                        \
    "commission_id::text, channel_id, order_id::text, merchant_id, currency, state, "              \
    "order_amount, sales_before, amount, refunded, clawed_back, schedule_id, "                     \
    "schedule_revision, (extract(epoch FROM period_start) * 1000)::bigint, (extract(epoch FROM "   \
    "period_end) * 1000)::bigint, (extract(epoch FROM paid_at) * 1000)::bigint, (extract(epoch "   \
    "FROM accrued_at) * 1000)::bigint, coalesce((extract(epoch FROM clawed_back_at) * "            \
    "1000)::bigint, 0), bracket_from::text, bracket_bps::text, bracket_sales::text, "              \
    "bracket_amount::text, parent_id, parent_bps, coalesce((extract(epoch FROM payable_at) * "     \
    "1000)::bigint, 0), payable_amount, coalesce((extract(epoch FROM settled_at) * "               \
    "1000)::bigint, 0), coalesce(payout_id::text, ''), payer"
#define CMS_COMMISSION_NCOLS 29
void cms_store_parse_commission(const PGresult *r, int row, cms_commission *c);
/* the adjustment columns (of adjustments, unqualified) and their parser */
#define CMS_ADJUSTMENT_COLS                                                                        \
    "adjustment_id::text, channel_id, kind, currency, amount, order_id::text, refund_id, "         \
    "child_id, (extract(epoch FROM period_start) * 1000)::bigint, (extract(epoch FROM posted_at) " \
    "* 1000)::bigint, state, coalesce((extract(epoch FROM payable_at) * 1000)::bigint, 0), "       \
    "coalesce(payout_id::text, ''), payer, merchant_id"
#define CMS_ADJUSTMENT_NCOLS 15
void cms_store_parse_adjustment(const PGresult *r, int row, cms_adjustment *a);

/* ---- tenant settings ---- */

typedef struct cms_settings {
    int has_window;   /* the tenant set its own after-sale window */
    int64_t window_s; /* its window, when has_window */
    int64_t revision; /* 0: no settings of its own */
    int64_t updated_ms;
    char updated_by[CMS_PRINCIPAL_MAX * 4 + 1];
} cms_settings;

/* the tenant's settings (revision 0 and has_window 0 when it has none) */
int cms_store_get_settings(cm_db *db, const char *tenant, cms_settings *out);

/* PutTenantSettings: in->has_window / in->window_s replace the tenant's
 * settings under compare-and-set (expected_revision > 0) and idempotency by
 * request_id (hash: the canonical body). *verdict: CMS_OK, CMS_SAME (out:
 * the settings as they are now), CMS_KEY_REUSED or CMS_VERSION (out: the
 * current revision). 0 or a CM_E* */
int cms_store_put_settings(cm_db *db, const char *tenant, const char *request_id, const char *hash,
                           const cms_settings *in, int64_t expected_revision, const char *principal,
                           cms_settings *out, int *verdict);

/* a put's start: takes the transaction lock of the tenant's scope (one
 * writer at a time; key hashtext('<scope>:<tenant>')), then reads the
 * idempotency record of (tenant, kind, request_id): 1 seen (*same: the
 * same body hash; key and revision as recorded), 0 not seen, or < 0 */
int cms_store_locked_request(cm_db *db, const char *what, const char *scope, const char *tenant,
                             const char *kind, const char *request_id, const char *hash, int *same,
                             char *key, size_t keycap, int64_t *revision);
/* the idempotency record of a put that applied, in its transaction */
int cms_store_record_request(cm_db *db, const char *tenant, const char *kind,
                             const char *request_id, const char *hash, const char *key,
                             int64_t revision, const char *principal);

#endif
