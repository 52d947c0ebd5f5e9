/*
 * stl_api: the SettlementService handlers and the process's app state.
 */
#ifndef STL_API_H
#define STL_API_H

#include "cm_metrics.h"
#include "cm_rpc.h"
#include "cm_service.h"
#include "cm_page.h"
#include "stl_cost.h"
#include "stl_ledger.h"
#include "stl_store.h"

#include <stddef.h>

#include "commerce/settlement/v1/settlement_service.pb-c.h"

typedef struct stl_app {
    stl_settings defaults; /* SETTLEMENT_DEFAULT_* */
    int events_on;
    char topic[256];    /* SETTLEMENT_TOPIC */
    stl_ledger *ledger; /* the order-event consumer's (one consumer thread) */
    cm_counter *posted, *reversed, *duplicates, *capped, *parked, *dead_lettered, *runs, *payouts;
    cm_counter *payouts_paid, *payouts_failed;
    cm_gauge *payouts_pending; /* the payer's, while it leads (stl_payer) */
    cm_histogram *lag;
    stl_ledger_stats last; /* what was last added to the counters */
    /* the commission consumer's (one consumer thread) and its metrics */
    stl_costs *costs;
    cm_counter *costs_posted, *costs_duplicates;
    cm_histogram *costs_lag;
    stl_costs_stats costs_last;
} stl_app;

extern const cm_rpc_method stl_methods[];
extern const size_t stl_methods_count;

/* the split rule of a request as the domain checks it, with the receivers'
 * descriptions in desc (STL_RECEIVERS_MAX of them) — the handler's checks
 * before any i/o, also run by tests/fuzz: 0, or the failure recorded in ctx
 * naming the field */
int stl_api_rule_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__SplitRule *in, stl_rule *r,
                    char (*desc)[STL_DESC_MAX + 1]);

/* PutSplitRule's checks before any i/o: its request_id, expected_version
 * and the tenant's quota of receivers (RESOURCE_EXHAUSTED), then
 * stl_api_rule_in */
int stl_api_put_rule_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__PutSplitRuleRequest *req,
                        stl_rule *r, char (*desc)[STL_DESC_MAX + 1]);

/* the checks before any i/o of the other handlers, each also run by
 * tests/fuzz: 0, or the failure recorded in ctx naming the field.
 * PutTenantSettings' time zone is checked after these, against the
 * database's list of zones (i/o). RunSettlement: *date is the business
 * date "YYYY-MM-DD" (in ctx's arena) or NULL for the tenant's yesterday.
 * ReportPayoutResult: *ref and *why are the reference of a PAID and the
 * reason of a FAILED, "" for the other */
int stl_api_get_rule_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__GetSplitRuleRequest *req);
int stl_api_settings_in(cm_rpc_ctx *ctx,
                        const Commerce__Settlement__V1__PutTenantSettingsRequest *req);
int stl_api_run_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__RunSettlementRequest *req,
                   const char **date);
int stl_api_report_in(cm_rpc_ctx *ctx,
                      const Commerce__Settlement__V1__ReportPayoutResultRequest *req,
                      const char **ref, const char **why);

/* a listing's checked filters and page, as its handler reads them */
typedef struct stl_list_in {
    uint64_t filters; /* the hash its page tokens carry */
    int limit;        /* the page size */
    char pos[CM_PAGE_POSITION_MAX + 1];
    const char *after;      /* the token's position (into pos); NULL on the first page */
    long long at, at_k;     /* the position's numbers: the version, entry or account id, or
                             * created ms (payouts) to go on from; the posting (statement) */
    const char *at_id;      /* ListPayouts: the payout id of the position ("" on the first page) */
    int64_t from_ms, to_ms; /* the time range, 0 where open */
    int party_type;         /* ListAccounts: the party filter (the caller's merchant for a */
    const char *party_id;   /* merchant's token), NULL owner: every owner */
    int none;               /* ListAccounts: another party's, for a merchant: an empty page */
} stl_list_in;

int stl_api_rules_in(cm_rpc_ctx *ctx,
                     const Commerce__Settlement__V1__ListSplitRuleVersionsRequest *req,
                     stl_list_in *li);
int stl_api_accounts_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__ListAccountsRequest *req,
                        stl_list_in *li);
int stl_api_journal_in(cm_rpc_ctx *ctx,
                       const Commerce__Settlement__V1__ListJournalEntriesRequest *req,
                       stl_list_in *li);
int stl_api_runs_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__ListSettlementRunsRequest *req,
                    stl_list_in *li);
int stl_api_payouts_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__ListPayoutsRequest *req,
                       stl_list_in *li);
int stl_api_statement_in(cm_rpc_ctx *ctx,
                         const Commerce__Settlement__V1__GetAccountStatementRequest *req,
                         stl_list_in *li);

/* the reconciliation's checks before any i/o (recon.c), each also run by
 * tests/fuzz: 0, or the failure recorded in ctx naming the field; date is
 * the checked date "YYYY-MM-DD". ImportStatement: request_id, bill_date and
 * the CSV's size (its lines are stl_recon_parse's, fuzzed in `recon_csv`).
 * GetReconciliation: date and currency. ListReconciliationDifferences: those
 * and its page (li: filters, limit, pos, after). the tenant's time zone is
 * read after these (i/o) */
int stl_api_import_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__ImportStatementRequest *req,
                      char date[STL_DATE_LEN]);
int stl_api_recon_in(cm_rpc_ctx *ctx, const Commerce__Settlement__V1__GetReconciliationRequest *req,
                     char date[STL_DATE_LEN]);
int stl_api_recon_diffs_in(
    cm_rpc_ctx *ctx, const Commerce__Settlement__V1__ListReconciliationDifferencesRequest *req,
    char date[STL_DATE_LEN], stl_list_in *li);

int stl_app_init(cm_service *svc, void **app, char *err, size_t errlen);
void stl_app_fini(cm_service *svc, void *app);

#endif
