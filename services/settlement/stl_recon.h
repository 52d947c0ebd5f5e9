/*
 * stl_recon: reconciliation (对账) of the ledger with itself and with the
 * payment provider's daily statement (RECONCILIATION.md): the
 * statement's CSV, its import, the RPCs that compare, and the ticker that
 * keeps the metrics settlement_ledger_balanced and
 * settlement_reconciliation_differences.
 *
 * dates are local business dates in the tenant's zone: a payment belongs
 * to the date of its paid_at, a refund to the date its reversal was posted.
 * a statement's payment line is matched with the order's SPLIT entry, a
 * refund line with the REVERSAL of the same order and refund id, each of
 * any date; a posting is missing from the statement when no statement of
 * any date lists it (a provider's cut-off a little off ours is no
 * difference).
 */
#ifndef STL_RECON_H
#define STL_RECON_H

#include <stddef.h>
#include <stdint.h>

#include "cm_db.h"
#include "cm_id.h"
#include "cm_rpc.h"
#include "stl_domain.h"

#define STL_CSV_MAX_BYTES 4000000
#define STL_CSV_MAX_LINES 100000

/* statement line kinds, as stored and as in the proto enum */
enum { STL_LINE_PAYMENT = 1, STL_LINE_REFUND = 2 };

/* one data line of a statement, amounts in minor units */
typedef struct stl_stmt_line {
    int line;      /* 1-based; the header is line 1 */
    int kind;      /* STL_LINE_* */
    char time[20]; /* "YYYY-MM-DD HH:MM:SS" */
    char txn[STL_ID_MAX + 1];
    char order_id[CM_ID_SIZE];
    char refund_id[STL_ID_MAX + 1]; /* "" for a payment */
    char currency[4];
    int64_t amount, fee;
} stl_stmt_line;

/* parses a statement (the columns are documented on the proto's
 * ImportStatementRequest) and calls fn for every data line in order; fn
 * returns 0 to go on, anything else stops the parse and is returned.
 * checks every line on its own (a duplicate is the store's to find).
 * returns 0, the value of fn, or CM_EINVAL with why ("line 7: amount: ...")
 * and *line the line at fault. pure: no i/o (recon_csv.c). */
int stl_recon_parse(const char *csv, size_t len, int (*fn)(void *arg, const stl_stmt_line *l),
                    void *arg, char *why, size_t whylen, int *line);

/* 1 when s is "YYYY-MM-DD HH:MM:SS" and that time exists (leap years
 * counted, no leap seconds) */
int stl_recon_time_valid(const char *s);

/* the SettlementService handlers (registered in api.c's stl_methods[]) */
int stl_import_statement(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out);
int stl_get_reconciliation(cm_rpc_ctx *ctx, const ProtobufCMessage *in, ProtobufCMessage *out);
int stl_list_reconciliation_differences(cm_rpc_ctx *ctx, const ProtobufCMessage *in,
                                        ProtobufCMessage *out);

/* the recon ticker (singleton, SETTLEMENT_RECON_MS): sets
 * settlement_ledger_balanced (1 when every tenant's accounts sum to zero
 * per currency and every account's buckets equal the sums of its
 * postings) and settlement_reconciliation_differences (the differences of
 * the statements of the last SETTLEMENT_RECON_DAYS bill dates, every
 * tenant and currency). arg: the stl_app. */
struct cm_service;
void stl_recon_tick(struct cm_service *svc, cm_db *db, void *arg);
/* the recon ticker's replica stopped leading: its two gauges leave the
 * scrape, so a former leader shows no stale verdict */
void stl_recon_resign(struct cm_service *svc, void *arg);

#endif
