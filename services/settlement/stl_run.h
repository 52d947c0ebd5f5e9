/*
 * stl_run: the settlement run (due pending parts to available, once per
 * tenant and local business date) and payouts (available to paying, then
 * paid out or back). README.md, "Settlement run and payouts".
 */
#ifndef STL_RUN_H
#define STL_RUN_H

#include <stddef.h>
#include <stdint.h>

#include "cm_db.h"
#include "cm_id.h"
#include "stl_store.h"

#define STL_REF_MAX 128    /* a payout's provider reference: characters */
#define STL_REASON_MAX 256 /* a payout's failure reason: characters */

enum { STL_RUN_RUNNING = 1, STL_RUN_SUCCEEDED = 2 };
enum { STL_TRIGGER_SCHEDULED = 1, STL_TRIGGER_MANUAL = 2 };
enum { STL_PAYOUT_PENDING = 1, STL_PAYOUT_PAID = 2, STL_PAYOUT_FAILED = 3 };

typedef struct stl_run {
    char id[CM_ID_SIZE];
    char tenant[STL_TENANT_MAX + 1];
    char date[STL_DATE_LEN];
    int state, trigger;
    int64_t entries, rows;
    int64_t started_ms, finished_ms; /* finished 0: running */
} stl_run;

typedef struct stl_payout {
    char id[CM_ID_SIZE];
    char tenant[STL_TENANT_MAX + 1];
    int64_t account;
    int type;
    char owner[STL_ID_MAX + 1];
    char currency[4];
    int64_t amount;
    int state;
    int64_t created_ms, updated_ms;
    char ref[STL_REF_MAX * 4 + 1];
    char reason[STL_REASON_MAX * 4 + 1];
} stl_payout;

/* the run of a tenant's business date ("YYYY-MM-DD"; NULL: its local
 * today), asked for now (trigger) unless one exists. CM_EINVAL for a date
 * after the local today. */
int stl_run_request(cm_db *db, const char *tenant, const char *date, int trigger,
                    const char *principal, const stl_settings *def, stl_run *out);
int stl_run_get(cm_db *db, const char *tenant, const char *run_id, stl_run *out);
/* runs of a tenant before business date before ("" : from the newest) */
int stl_run_list(cm_db *db, const char *tenant, const char *before, int limit, stl_run *out,
                 int *n);

/* one settler pass: asks for the scheduled runs that are due (tenants
 * whose local time passed run_at today), then carries out every running
 * run in batches of batch rows, then creates payouts. on the runtime's
 * ticker connection. topic: where the events go (events_on). */
int stl_settle(cm_db *db, const stl_settings *def, int batch, int events_on, const char *topic,
               int *runs_done, int *payouts);
/* payouts for every account with money available (up to 500 per
 * transaction, until none is left) */
int stl_pay_out(cm_db *db, int events_on, const char *topic, int *payouts);

/* payouts waiting for a report, every tenant's */
int stl_payouts_pending(cm_db *db, long long *n);

/* a payout by id; with merchant (not NULL) only one to that merchant's
 * account (party MERCHANT): another's is CM_ENOTFOUND, as an unknown id */
int stl_payout_get(cm_db *db, const char *tenant, const char *id, const char *merchant,
                   stl_payout *out);
/* payouts of a tenant, newest first, before (created ms, id) (0: from the
 * newest), filtered by state (0: any), account (0: any) and merchant (the
 * accounts of party MERCHANT with that id; NULL: any) */
int stl_payout_list(cm_db *db, const char *tenant, const char *merchant, int state, int64_t account,
                    int64_t before_ms, const char *before_id, int limit, stl_payout *out, int *n);
/* the payment system's report (result PAID or FAILED). *verdict STL_OK,
 * STL_SAME (that result was reported before) or STL_VERSION (the other
 * result was); CM_ENOTFOUND for an unknown payout. out: the payout now. */
int stl_payout_report(cm_db *db, const char *tenant, const char *id, int result, const char *ref,
                      const char *reason, int events_on, const char *topic, stl_payout *out,
                      int *verdict);

#endif
