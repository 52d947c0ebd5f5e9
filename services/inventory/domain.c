/* the inventory service's pure decisions: see inv_domain.h */
#include "inv_domain.h"

#include "cm_err.h"
#include "cm_id.h"
#include "cm_money.h"

#include <stdio.h>
#include <string.h>

static int viol(inv_violation *v, const char *field, const char *why)
{
    snprintf(v->field, sizeof v->field, "%s", field);
    snprintf(v->why, sizeof v->why, "%s", why);
    return CM_EINVAL;
}

int inv_valid_key(const char *s, size_t max)
{
    return cm_id_key_valid(s, max);
}

int inv_check_reserve(const char *order_id, const char *buyer_id, const inv_line *lines,
                      size_t nlines, int64_t ttl_ms, int64_t *ttl_out, inv_violation *v)
{
    if (!inv_valid_key(order_id, INV_KEY_MAX))
        return viol(v, "order_id", "must be 1-64 characters from [A-Za-z0-9._:-]");
    if (buyer_id && strlen(buyer_id) > INV_BUYER_MAX)
        return viol(v, "buyer_id", "must be at most 128 characters");
    if (nlines == 0)
        return viol(v, "lines", "must hold at least one line");
    if (nlines > INV_LINES_MAX)
        return viol(v, "lines", "must hold at most 100 lines");
    for (size_t i = 0; i < nlines; i++) {
        char f[64];
        if (!inv_valid_key(lines[i].sku, INV_SKU_MAX)) {
            snprintf(f, sizeof f, "lines[%zu].sku", i);
            return viol(v, f, "must be 1-64 characters from [A-Za-z0-9._:-]");
        }
        if (lines[i].qty < 1 || lines[i].qty > INV_QTY_MAX) {
            snprintf(f, sizeof f, "lines[%zu].quantity", i);
            return viol(v, f, "must be between 1 and 1000000000");
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(lines[i].sku, lines[j].sku) == 0) {
                snprintf(f, sizeof f, "lines[%zu].sku", i);
                return viol(v, f, "duplicates an earlier line's sku");
            }
        }
    }
    if (ttl_ms < 0) {
        *ttl_out = INV_TTL_DEFAULT_MS;
    } else if (ttl_ms < INV_TTL_MIN_MS || ttl_ms > INV_TTL_MAX_MS) {
        return viol(v, "ttl", "must be between 1 second and 7 days");
    } else {
        *ttl_out = ttl_ms;
    }
    return 0;
}

size_t inv_reserve_body(char *out, size_t cap, const char *buyer_id, int64_t ttl_ms,
                        const inv_line *lines, size_t nlines)
{
    size_t len = 0;
    int n = snprintf(out, cap, "b=%s;t=%lld", buyer_id ? buyer_id : "", (long long)ttl_ms);
    len += n > 0 ? (size_t)n : 0;
    for (size_t i = 0; i < nlines; i++) {
        n = snprintf(len < cap ? out + len : NULL, len < cap ? cap - len : 0, ";%s=%lld",
                     lines[i].sku, (long long)lines[i].qty);
        len += n > 0 ? (size_t)n : 0;
    }
    return len;
}

int inv_check_admin(int kind, const char *request_id, const char *sku, int64_t value,
                    const char *reason, const char *actor, inv_violation *v)
{
    if (!inv_valid_key(request_id, INV_KEY_MAX))
        return viol(v, "request_id", "must be 1-64 characters from [A-Za-z0-9._:-]");
    if (!inv_valid_key(sku, INV_SKU_MAX))
        return viol(v, "sku", "must be 1-64 characters from [A-Za-z0-9._:-]");
    if (kind == INV_KIND_SET && (value < 0 || value > INV_QTY_MAX))
        return viol(v, "available", "must be between 0 and 1000000000");
    if (kind == INV_KIND_ADJUST && value == 0)
        return viol(v, "delta", "must not be 0");
    if (kind == INV_KIND_ADJUST && (value < -INV_QTY_MAX || value > INV_QTY_MAX))
        return viol(v, "delta", "must be between -1000000000 and 1000000000");
    if (!reason || !*reason)
        return viol(v, "reason", "must not be empty");
    if (strlen(reason) > INV_REASON_MAX)
        return viol(v, "reason", "must be at most 256 characters");
    if (!actor || !*actor)
        return viol(v, "actor", "must not be empty");
    if (strlen(actor) > INV_ACTOR_MAX)
        return viol(v, "actor", "must be at most 128 characters");
    return 0;
}

int inv_check_cost(const char *request_id, const char *sku, int has_cost, int64_t unit_cost,
                   const char *currency, const char *reason, const char *actor,
                   int64_t expected_version, inv_violation *v)
{
    if (!inv_valid_key(request_id, INV_KEY_MAX))
        return viol(v, "request_id", "must be 1-64 characters from [A-Za-z0-9._:-]");
    if (!inv_valid_key(sku, INV_SKU_MAX))
        return viol(v, "sku", "must be 1-64 characters from [A-Za-z0-9._:-]");
    if (!has_cost)
        return viol(v, "unit_cost", "is required");
    if (unit_cost < 0 || unit_cost > INV_COST_MAX)
        return viol(v, "unit_cost.amount_minor", "must be between 0 and 1000000000000");
    if (!currency || !cm_money_currency_valid(currency))
        return viol(v, "unit_cost.currency", "must be a known ISO-4217 code");
    if (!reason || !*reason)
        return viol(v, "reason", "must not be empty");
    if (strlen(reason) > INV_REASON_MAX)
        return viol(v, "reason", "must be at most 256 characters");
    if (!actor || !*actor)
        return viol(v, "actor", "must not be empty");
    if (strlen(actor) > INV_ACTOR_MAX)
        return viol(v, "actor", "must be at most 128 characters");
    if (expected_version < 0)
        return viol(v, "expected_cost_version", "must not be negative");
    return 0;
}

int inv_admin_delta(int kind, int64_t available, int64_t value, int64_t *delta)
{
    int64_t d = kind == INV_KIND_SET ? value - available : value;
    if (available + d < 0)
        return CM_ESTATE;
    if (available + d > INV_QTY_MAX * 1000)
        return CM_EOVERFLOW;
    *delta = d;
    return 0;
}

inv_resolve_plan inv_plan_resolve(int state, int due, int to)
{
    inv_resolve_plan p = {0};
    if (state == 0) {
        if (to == INV_CONFIRMED)
            p.outcome = INV_RESOLVE_NOT_FOUND;
        else
            p.tombstone = 1;
        return p;
    }
    if (state == INV_ACTIVE && due) {
        /* past its ttl: it is expired whatever the sweeper's timing */
        p.expire_first = 1;
        state = INV_EXPIRED;
    } else if (state == INV_ACTIVE) {
        p.apply_to = to;
        return p;
    }
    if (to == INV_CONFIRMED) {
        if (state == INV_EXPIRED)
            p.outcome = INV_RESOLVE_EXPIRED;
        else if (state == INV_RELEASED)
            p.outcome = INV_RESOLVE_WAS_RELEASED;
    } else if (state == INV_CONFIRMED) {
        p.outcome = INV_RESOLVE_WAS_CONFIRMED;
    }
    return p;
}

int inv_sold_out_now(int64_t avail_before, int64_t avail_after)
{
    return avail_before > 0 && avail_after == 0;
}

int inv_back_in_stock(int64_t avail_before, int64_t avail_after)
{
    return avail_before == 0 && avail_after > 0;
}

inv_sale_update inv_plan_sale_update(const inv_sale_cfg *cur, int64_t held,
                                     const inv_sale_cfg *next, int64_t now_ms)
{
    if (strcmp(cur->sku, next->sku) != 0)
        return INV_SU_SKU_CHANGED;
    if (now_ms >= cur->ends_ms)
        return INV_SU_ENDED;
    /* running (or sold out): buyers already hold units under this window */
    if (now_ms >= cur->starts_ms && next->starts_ms != cur->starts_ms)
        return INV_SU_STARTED;
    if (next->sale_stock < held)
        return INV_SU_STOCK_BELOW_HELD;
    return INV_SU_OK;
}

int inv_sale_stock_edge(int64_t held, int64_t old_stock, int64_t new_stock)
{
    int was_full = held >= old_stock, full = held >= new_stock;
    return was_full == full ? -1 : full ? 0 : 1;
}

int inv_admit(inv_counter *cs, const size_t *pos, const inv_line *lines, size_t n, int64_t *avail)
{
    int fits = 1;
    for (size_t i = 0; i < n; i++) {
        avail[i] = pos[i] == SIZE_MAX ? 0 : cs[pos[i]].available;
        if (avail[i] < lines[i].qty)
            fits = 0;
    }
    if (!fits)
        return 0;
    for (size_t i = 0; i < n; i++) {
        inv_counter *c = &cs[pos[i]];
        c->available -= lines[i].qty;
        c->reserved += lines[i].qty;
        c->version++;
    }
    return 1;
}
