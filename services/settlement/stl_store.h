/*
 * stl_store: settlement's sql. every function runs on the caller's
 * connection; the ones documented "inside a transaction" expect the
 * caller's cm_db_tx (or the consumer's) to be open.
 */
#ifndef STL_STORE_H
#define STL_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "cm_auth.h"
#include "cm_db.h"
#include "cm_id.h"
#include "stl_domain.h"

#define STL_TZ_MAX 64
#define STL_PRINCIPAL_MAX 128
#define STL_TENANT_MAX CM_AUTH_TENANT_MAX
#define STL_DATE_LEN 11 /* "YYYY-MM-DD" and the NUL */
/* the due date of parts held until their order completes */
#define STL_HELD_DATE "9999-12-31"

/* the ledger's own accounts (PartyType values), and a channel's commission
 * account (owner: the channel id), which settlement never pays out: the
 * commission service pays channels (README.md, "Commission cost") */
enum { STL_PARTY_CLEARING = 100, STL_PARTY_PROVIDER_FEE = 101, STL_PARTY_COMMISSION = 102 };

/* buckets, as stored and as in the proto enum */
enum { STL_PENDING = 1, STL_AVAILABLE = 2, STL_PAYING = 3, STL_PAID_OUT = 4 };

/* entry kinds, as stored and as in the proto enum */
enum {
    STL_ENTRY_SPLIT = 1,
    STL_ENTRY_REVERSAL = 2,
    STL_ENTRY_SETTLE = 3,
    STL_ENTRY_COMMISSION = 7
};

/* verdicts of idempotent writes */
enum { STL_OK = 0, STL_SAME = 1, STL_KEY_REUSED = 2, STL_VERSION = 3 };

typedef struct stl_settings {
    char tz[STL_TZ_MAX + 1];
    int64_t max_split_bps;
    char run_at[6];   /* "HH:MM" */
    int64_t revision; /* 0: the defaults */
    int64_t updated_ms;
    char updated_by[STL_PRINCIPAL_MAX + 1];
} stl_settings;

typedef struct stl_rule_row {
    char merchant[STL_ID_MAX + 1];
    int64_t version;
    int64_t effective_ms;
    char created_by[STL_PRINCIPAL_MAX + 1];
    stl_rule rule;
    char desc[STL_RECEIVERS_MAX][STL_DESC_MAX + 1];
} stl_rule_row;

/* ---- settings ---- */

/* the tenant's settings, or *def when it has none (revision 0) */
int stl_store_get_settings(cm_db *db, const char *tenant, const stl_settings *def,
                           stl_settings *out);
/* 1 when the database knows the IANA zone name, else 0 (or an error < 0) */
int stl_store_zone_known(cm_db *db, const char *tz);
/* PutTenantSettings: idempotent by request_id (hash: of the body),
 * compare-and-set by expected_revision. *verdict: STL_OK, STL_SAME,
 * STL_KEY_REUSED, STL_VERSION; out: the settings now. */
int stl_store_put_settings(cm_db *db, const char *tenant, const char *request_id, const char *hash,
                           const stl_settings *in, int64_t expected_revision, const char *principal,
                           const stl_settings *def, stl_settings *out, int *verdict);

/* ---- rules ---- */

/* stores a new version of the rule (idempotent by request_id with hash,
 * compare-and-set by expected_version). *verdict as above; out: the stored
 * version (STL_OK, STL_SAME) or the current one (STL_VERSION). */
int stl_store_put_rule(cm_db *db, const char *tenant, const char *request_id, const char *hash,
                       const char *merchant, const stl_rule *rule,
                       const char (*desc)[STL_DESC_MAX + 1], int64_t expected_version,
                       const char *principal, stl_rule_row *out, int *verdict);
/* one version (0: the newest); CM_ENOTFOUND when none */
int stl_store_get_rule(cm_db *db, const char *tenant, const char *merchant, const char *currency,
                       int64_t version, stl_rule_row *out);
/* versions below before (0: from the newest), newest first, at most limit;
 * out[] has room for limit */
int stl_store_list_rules(cm_db *db, const char *tenant, const char *merchant, const char *currency,
                         int64_t before, int limit, stl_rule_row *out, int *n);

/* ---- accounts ---- */

typedef struct stl_account {
    int64_t id;
    int type;
    char owner[STL_ID_MAX + 1];
    char currency[4];
    int64_t pending, available, paying, paid_out, version;
    int64_t updated_ms;
} stl_account;

/* the ids of n accounts of a tenant (types[i], owners[i], currency),
 * creating the missing ones. inside a transaction. */
int stl_store_accounts(cm_db *db, const char *tenant, const char *currency, size_t n,
                       const int *types, const char *const *owners, int64_t *ids);

/* accounts of a tenant after after_id (0: from the start) by id, filtered
 * by type (0: any), owner (NULL: any) and currency ("" : any) */
int stl_store_list_accounts(cm_db *db, const char *tenant, int type, const char *owner,
                            const char *currency, int64_t after_id, int limit, stl_account *out,
                            int *n);

/* ---- the journal ---- */

typedef struct stl_posting {
    int64_t account;
    int bucket;
    int64_t amount;
    char due[STL_DATE_LEN]; /* "" unless a pending posting */
    int64_t version;        /* the account's version after it */
    /* for reading: the account's owner */
    int type;
    char owner[STL_ID_MAX + 1];
} stl_posting;

#define STL_POSTINGS_MAX (2 * STL_PARTS_MAX + 4)

typedef struct stl_entry {
    int64_t id;
    int kind;
    char order_id[CM_ID_SIZE];
    char merchant[STL_ID_MAX + 1];
    char ref[STL_COST_KEY_MAX + 1]; /* a reversal's refund id, a commission cost's key */
    char currency[4];
    int64_t amount, fee, rule_version;
    int capped;
    char event_id[CM_ID_SIZE];
    int64_t posted_ms;
    size_t n;
    stl_posting p[STL_POSTINGS_MAX];
} stl_entry;

/* entries of a tenant, newest first, before before_id (0: the newest),
 * filtered by order (NULL: any), account (0: any) and posted range (ms;
 * 0: open) */
int stl_store_list_entries(cm_db *db, const char *tenant, const char *order_id, int64_t account,
                           int64_t from_ms, int64_t to_ms, int64_t before_id, int limit,
                           stl_entry *out, int *n);

/* ---- statements ---- */

typedef struct stl_buckets {
    int64_t pending, available, paying, paid_out;
} stl_buckets;

typedef struct stl_line {
    int64_t entry_id;
    int kind;
    int64_t posted_ms;
    char order_id[CM_ID_SIZE];
    char ref[STL_ID_MAX + 1];
    int bucket;
    int64_t amount;
} stl_line;

/* the account (CM_ENOTFOUND when not the tenant's, or with merchant not
 * NULL when not that merchant's account of party MERCHANT), its buckets at
 * from_ms and to_ms, and its postings in [from_ms, to_ms) after (entry
 * after_id, posting index after_k), oldest first, at most limit */
int stl_store_statement(cm_db *db, const char *tenant, int64_t account, const char *merchant,
                        int64_t from_ms, int64_t to_ms, int64_t after_id, int after_k, int limit,
                        stl_account *acct, stl_buckets *opening, stl_buckets *closing,
                        stl_line *lines, int *ks, int *n);

#endif
