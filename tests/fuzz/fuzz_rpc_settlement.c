/* SettlementService requests: decoding for every method, then the checks of
 * every method that has any beyond decoding. left out: GetSettlementRun and
 * GetPayout (one check: the id is a UUID, cm_id_is_uuid, fuzzed in `text`),
 * GetTenantSettings (no request fields). ImportStatement's CSV lines are
 * the `recon_csv` harness's (stl_recon_parse); its request id, date and
 * size are here */
#include "cm_id.h"
#include "cm_money.h"
#include "fuzz_rpc.h"
#include "stl_api.h"
#include "stl_recon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_rpc_settlement: %s\n", what);
    abort();
}

static int put_split_rule(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__PutSplitRuleRequest *req = (const void *)in;
    stl_rule *rule = cm_rpc_alloc(ctx, sizeof *rule);
    char(*desc)[STL_DESC_MAX + 1] = cm_rpc_alloc(ctx, STL_RECEIVERS_MAX * (STL_DESC_MAX + 1));
    return rule && desc ? stl_api_put_rule_in(ctx, req, rule, desc) : 0;
}

static int get_split_rule(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    return stl_api_get_rule_in(ctx, (const void *)in);
}

static int put_tenant_settings(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__PutTenantSettingsRequest *req = (const void *)in;
    int rc = stl_api_settings_in(ctx, req);
    if (rc == 0 && (!req->settings || strlen(req->settings->run_at) != 5))
        broken("PutTenantSettings accepted without settings or a run_at");
    return rc;
}

static int run_settlement(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__RunSettlementRequest *req = (const void *)in;
    const char *date = NULL;
    int rc = stl_api_run_in(ctx, req, &date);
    if (rc == 0 && (date != NULL) != (req->business_date != NULL))
        broken("RunSettlement lost or made up its business date");
    if (rc == 0 && date && strlen(date) != 10)
        broken("RunSettlement's business date is not YYYY-MM-DD");
    return rc;
}

static int report_payout_result(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const char *ref = NULL, *why = NULL;
    int rc = stl_api_report_in(ctx, (const void *)in, &ref, &why);
    if (rc == 0 && (!ref || !why || (*ref != 0) == (*why != 0)))
        broken("ReportPayoutResult accepted without exactly one of reference and reason");
    return rc;
}

/* what every accepted listing holds */
static void list_ok(const stl_list_in *li, const char *token)
{
    if (li->limit <= 0)
        broken("a listing accepted without a page size");
    if (!li->none && (li->after != NULL) != (token[0] != 0))
        broken("a page token was accepted without a position, or a position made up");
    if (li->from_ms && li->to_ms && li->to_ms <= li->from_ms)
        broken("a listing accepted an empty time range");
}

static int list_split_rule_versions(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__ListSplitRuleVersionsRequest *req = (const void *)in;
    stl_list_in li;
    int rc = stl_api_rules_in(ctx, req, &li);
    if (rc == 0) {
        list_ok(&li, req->page_token);
        if (li.after && li.at <= 0)
            broken("ListSplitRuleVersions accepted a position that is no version");
    }
    return rc;
}

static int list_accounts(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__ListAccountsRequest *req = (const void *)in;
    stl_list_in li;
    int rc = stl_api_accounts_in(ctx, req, &li);
    if (rc == 0)
        list_ok(&li, req->page_token);
    return rc;
}

static int list_journal_entries(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__ListJournalEntriesRequest *req = (const void *)in;
    stl_list_in li;
    int rc = stl_api_journal_in(ctx, req, &li);
    if (rc == 0)
        list_ok(&li, req->page_token);
    return rc;
}

static int list_settlement_runs(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__ListSettlementRunsRequest *req = (const void *)in;
    stl_list_in li;
    int rc = stl_api_runs_in(ctx, req, &li);
    if (rc == 0)
        list_ok(&li, req->page_token);
    return rc;
}

static int list_payouts(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__ListPayoutsRequest *req = (const void *)in;
    stl_list_in li;
    int rc = stl_api_payouts_in(ctx, req, &li);
    if (rc == 0) {
        list_ok(&li, req->page_token);
        if (!li.at_id || (li.after && (li.at <= 0 || strlen(li.at_id) != 36)))
            broken("ListPayouts accepted a position without its time and payout id");
    }
    return rc;
}

static int get_account_statement(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__GetAccountStatementRequest *req = (const void *)in;
    stl_list_in li;
    int rc = stl_api_statement_in(ctx, req, &li);
    if (rc == 0) {
        list_ok(&li, req->page_token);
        if (li.to_ms <= li.from_ms)
            broken("GetAccountStatement accepted an empty period");
    }
    return rc;
}

/* what an accepted reconciliation date is: "YYYY-MM-DD" of a day that
 * exists, as the queries cast it to a date */
static void date_ok(const char *date, const char *method)
{
    char t[24];
    snprintf(t, sizeof t, "%s 00:00:00", date);
    if (strlen(date) != 10 || !stl_recon_time_valid(t)) {
        fprintf(stderr, "fuzz_rpc_settlement: %s: %s\n", method, date);
        broken("a reconciliation date accepted that is not a day that exists");
    }
}

static int import_statement(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__ImportStatementRequest *req = (const void *)in;
    char date[STL_DATE_LEN] = "";
    int rc = stl_api_import_in(ctx, req, date);
    if (rc == 0) {
        date_ok(date, "ImportStatement");
        if (!cm_id_key_valid(req->request_id, STL_ID_MAX))
            broken("ImportStatement accepted a request_id that is no key");
        if (strlen(req->csv) > STL_CSV_MAX_BYTES)
            broken("ImportStatement accepted a statement over its size");
    }
    return rc;
}

static int get_reconciliation(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__GetReconciliationRequest *req = (const void *)in;
    char date[STL_DATE_LEN] = "";
    int rc = stl_api_recon_in(ctx, req, date);
    if (rc == 0) {
        date_ok(date, "GetReconciliation");
        if (!cm_money_currency_valid(req->currency))
            broken("GetReconciliation accepted an unknown currency");
    }
    return rc;
}

static int list_reconciliation_differences(cm_rpc_ctx *ctx, const ProtobufCMessage *in)
{
    const Commerce__Settlement__V1__ListReconciliationDifferencesRequest *req = (const void *)in;
    char date[STL_DATE_LEN] = "";
    stl_list_in li;
    int rc = stl_api_recon_diffs_in(ctx, req, date, &li);
    if (rc == 0) {
        date_ok(date, "ListReconciliationDifferences");
        if (!cm_money_currency_valid(req->currency))
            broken("ListReconciliationDifferences accepted an unknown currency");
        list_ok(&li, req->page_token);
    }
    return rc;
}

static const fuzz_rpc_method methods[] = {
    {"PutSplitRule", put_split_rule},
    {"GetSplitRule", get_split_rule},
    {"PutTenantSettings", put_tenant_settings},
    {"RunSettlement", run_settlement},
    {"ReportPayoutResult", report_payout_result},
    {"ListSplitRuleVersions", list_split_rule_versions},
    {"ListAccounts", list_accounts},
    {"ListJournalEntries", list_journal_entries},
    {"ListSettlementRuns", list_settlement_runs},
    {"ListPayouts", list_payouts},
    {"GetAccountStatement", get_account_statement},
    {"ImportStatement", import_statement},
    {"GetReconciliation", get_reconciliation},
    {"ListReconciliationDifferences", list_reconciliation_differences},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_rpc_run(&commerce__settlement__v1__settlement_service__descriptor, methods,
                 sizeof methods / sizeof methods[0], data, size);
    return 0;
}
