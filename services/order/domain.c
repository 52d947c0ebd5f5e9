/* the order service's pure decisions: see ord_domain.h */
#include "ord_domain.h"

#include "cm_err.h"
#include "cm_id.h"
#include "cm_money.h"
#include "cm_utf8.h"

#include <openssl/evp.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void violate(ord_violation *v, const char *reason, const char *why, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void violate(ord_violation *v, const char *reason, const char *why, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->field, sizeof v->field, fmt, ap);
    va_end(ap);
    snprintf(v->why, sizeof v->why, "%s", why);
    snprintf(v->reason, sizeof v->reason, "%s", reason ? reason : "");
}

int ord_valid_key(const char *s, size_t max)
{
    return cm_id_key_valid(s, max);
}

int ord_valid_text(const char *s, size_t max, int required)
{
    return cm_utf8_text_valid(s, max, required);
}

int ord_check_create(const ord_create_in *in, ord_order *o, ord_violation *v)
{
    memset(o, 0, sizeof *o);
    if (!ord_valid_key(in->request_id, ORD_KEY_MAX)) {
        violate(v, NULL, "required: 1-64 characters from [A-Za-z0-9._:-]", "request_id");
        return CM_EINVAL;
    }
    if (!ord_valid_text(in->buyer_id, ORD_PARTY_MAX, 1)) {
        violate(v, NULL, "required, at most 64 characters of utf-8, no control characters",
                "buyer_id");
        return CM_EINVAL;
    }
    if (!ord_valid_text(in->merchant_id, ORD_PARTY_MAX, 1)) {
        violate(v, NULL, "required, at most 64 characters of utf-8, no control characters",
                "merchant_id");
        return CM_EINVAL;
    }
    if (!ord_valid_text(in->channel_id, ORD_PARTY_MAX, 0)) {
        violate(v, NULL, "at most 64 characters of utf-8, no control characters", "channel_id");
        return CM_EINVAL;
    }
    if (!in->currency || !*in->currency) {
        violate(v, NULL, "required: an ISO-4217 code such as \"CNY\"", "currency");
        return CM_EINVAL;
    }
    if (!cm_money_currency_valid(in->currency)) {
        violate(v, NULL, "unknown ISO-4217 currency code", "currency");
        return CM_EINVAL;
    }
    if (!ord_valid_text(in->external_ref, ORD_REF_MAX, 0)) {
        violate(v, NULL, "at most 128 characters of utf-8, no control characters", "external_ref");
        return CM_EINVAL;
    }
    if (in->nlines == 0) {
        violate(v, NULL, "at least one line is required", "lines");
        return CM_EINVAL;
    }
    if (in->nlines > ORD_LINES_MAX) {
        violate(v, NULL, "at most 100 lines", "lines");
        return CM_EINVAL;
    }
    if (in->timeout_ms >= 0 &&
        (in->timeout_ms < ORD_TIMEOUT_MIN_MS || in->timeout_ms > ORD_TIMEOUT_MAX_MS)) {
        violate(v, NULL, "must be between 1 minute and 72 hours", "payment_timeout");
        return CM_EINVAL;
    }
    int64_t total = 0;
    for (size_t i = 0; i < in->nlines; i++) {
        const ord_line_in *l = &in->lines[i];
        if (!ord_valid_key(l->sku, ORD_KEY_MAX)) {
            violate(v, NULL, "required: 1-64 characters from [A-Za-z0-9._:-]", "lines[%zu].sku", i);
            return CM_EINVAL;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(in->lines[j].sku, l->sku) == 0) {
                violate(v, NULL, "duplicate sku: each sku may appear in one line only",
                        "lines[%zu].sku", i);
                return CM_EINVAL;
            }
        }
        if (l->qty < 1) {
            violate(v, NULL, "must be at least 1", "lines[%zu].quantity", i);
            return CM_EINVAL;
        }
        if (l->qty > ORD_QTY_MAX) {
            violate(v, NULL, "must be at most 1000000000", "lines[%zu].quantity", i);
            return CM_EINVAL;
        }
        if (!l->has_price) {
            violate(v, NULL, "required", "lines[%zu].unit_price", i);
            return CM_EINVAL;
        }
        if (l->unit_price < 0) {
            violate(v, NULL, "must not be negative", "lines[%zu].unit_price.amount_minor", i);
            return CM_EINVAL;
        }
        if (!l->price_currency || strcmp(l->price_currency, in->currency) != 0) {
            violate(v, "CURRENCY_MISMATCH", "must be in the order currency",
                    "lines[%zu].unit_price.currency", i);
            return CM_EINVAL;
        }
        ord_line *ol = &o->lines[i];
        if (cm_money_mul(l->qty, l->unit_price, &ol->line_total) != 0) {
            violate(v, NULL, "quantity times unit_price overflows a 64-bit amount",
                    "lines[%zu].unit_price.amount_minor", i);
            return CM_EINVAL;
        }
        if (cm_money_add(total, ol->line_total, &total) != 0) {
            violate(v, NULL, "the order total overflows a 64-bit amount", "lines");
            return CM_EINVAL;
        }
        snprintf(ol->sku, sizeof ol->sku, "%s", l->sku);
        ol->qty = l->qty;
        ol->unit_price = l->unit_price;
        ol->unit_cost = -1; /* until the reservation says (ord_set_costs) */
    }
    o->nlines = in->nlines;
    o->total = total;
    snprintf(o->request_id, sizeof o->request_id, "%s", in->request_id);
    snprintf(o->buyer_id, sizeof o->buyer_id, "%s", in->buyer_id);
    snprintf(o->merchant_id, sizeof o->merchant_id, "%s", in->merchant_id);
    snprintf(o->channel_id, sizeof o->channel_id, "%s", in->channel_id ? in->channel_id : "");
    snprintf(o->currency, sizeof o->currency, "%s", in->currency);
    snprintf(o->external_ref, sizeof o->external_ref, "%s",
             in->external_ref ? in->external_ref : "");
    o->state = ORD_PENDING;
    return 0;
}

void ord_hash(const char *body, size_t len, char out[ORD_HASH_HEX + 1])
{
    cm_sha256_hex(body, len, out);
}

/* digest input: fields separated by NUL-free framing (length-prefixed) so
 * that no two different requests share a canonical text */
typedef struct canon {
    EVP_MD_CTX *md;
} canon;

static void canon_str(canon *c, const char *s)
{
    if (!s)
        s = "";
    char len[24];
    int n = snprintf(len, sizeof len, "%zu:", strlen(s));
    EVP_DigestUpdate(c->md, len, (size_t)n);
    EVP_DigestUpdate(c->md, s, strlen(s));
}

static void canon_num(canon *c, long long v)
{
    char n[32];
    snprintf(n, sizeof n, "%lld", v);
    canon_str(c, n);
}

static void canon_end(canon *c, char out[ORD_HASH_HEX + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(c->md, md, &n) != 1 || n != 32) {
        snprintf(out, ORD_HASH_HEX + 1, "%s", "unhashable");
    } else {
        for (unsigned i = 0; i < 32; i++)
            snprintf(out + 2 * i, 3, "%02x", md[i]);
    }
    EVP_MD_CTX_free(c->md);
}

static int canon_begin(canon *c, const char *what)
{
    c->md = EVP_MD_CTX_new();
    if (!c->md || EVP_DigestInit_ex(c->md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(c->md);
        c->md = NULL;
        return -1;
    }
    canon_str(c, what);
    return 0;
}

void ord_create_hash(const ord_create_in *in, char out[ORD_HASH_HEX + 1])
{
    canon c;
    if (canon_begin(&c, "create.v1") != 0) {
        snprintf(out, ORD_HASH_HEX + 1, "%s", "unhashable");
        return;
    }
    canon_str(&c, in->buyer_id);
    canon_str(&c, in->merchant_id);
    canon_str(&c, in->channel_id);
    canon_str(&c, in->currency);
    canon_str(&c, in->external_ref);
    canon_num(&c, in->timeout_ms);
    canon_num(&c, (long long)in->nlines);
    for (size_t i = 0; i < in->nlines; i++) {
        canon_str(&c, in->lines[i].sku);
        canon_num(&c, in->lines[i].qty);
        canon_num(&c, in->lines[i].has_price);
        canon_num(&c, in->lines[i].unit_price);
        canon_str(&c, in->lines[i].price_currency);
    }
    canon_end(&c, out);
}

static int check_timeout(int has, int64_t seconds, int32_t nanos, const char *field,
                         ord_violation *v)
{
    if (!has) {
        violate(v, NULL, "required: 1 minute to 72 hours", "%s", field);
        return CM_EINVAL;
    }
    if (nanos != 0) {
        violate(v, NULL, "must be a whole number of seconds", "%s", field);
        return CM_EINVAL;
    }
    if (seconds < ORD_TIMEOUT_MIN_MS / 1000 || seconds > ORD_TIMEOUT_MAX_MS / 1000) {
        violate(v, NULL, "must be between 1 minute and 72 hours", "%s", field);
        return CM_EINVAL;
    }
    return 0;
}

int ord_check_settings(const ord_settings_in *in, ord_violation *v)
{
    memset(v, 0, sizeof *v);
    if (!ord_valid_key(in->request_id, ORD_KEY_MAX)) {
        violate(v, NULL, "required: 1-64 characters from [A-Za-z0-9._:-]", "request_id");
        return CM_EINVAL;
    }
    if (!in->has_settings) {
        violate(v, NULL, "required: payment_timeout and flash_payment_timeout", "settings");
        return CM_EINVAL;
    }
    if (check_timeout(in->has_timeout, in->timeout_s, in->timeout_nanos, "settings.payment_timeout",
                      v) ||
        check_timeout(in->has_flash, in->flash_s, in->flash_nanos, "settings.flash_payment_timeout",
                      v))
        return CM_EINVAL;
    if (in->has_auto) {
        if (in->auto_nanos != 0) {
            violate(v, NULL, "must be a whole number of seconds", "settings.auto_complete_after");
            return CM_EINVAL;
        }
        if (in->auto_s < ORD_AUTO_COMPLETE_MIN_S || in->auto_s > ORD_AUTO_COMPLETE_MAX_S) {
            violate(v, NULL, "must be between 1 second and 90 days",
                    "settings.auto_complete_after");
            return CM_EINVAL;
        }
    }
    if (in->expected_revision < 0) {
        violate(v, NULL, "must not be negative (0: no check)", "expected_revision");
        return CM_EINVAL;
    }
    if (!ord_valid_text(in->actor, ORD_ACTOR_MAX, 1)) {
        violate(v, NULL, "required: 1-128 characters of utf-8, no control characters", "actor");
        return CM_EINVAL;
    }
    if (!ord_valid_text(in->reason, ORD_NOTE_MAX, 1)) {
        violate(v, NULL, "required: 1-256 characters of utf-8, no control characters", "reason");
        return CM_EINVAL;
    }
    return 0;
}

void ord_order_id(const char *tenant, const char *request_id, unsigned gen, char out[40])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    uint8_t id[16] = {0};
    if (m && EVP_DigestInit_ex(m, EVP_sha256(), NULL) == 1) {
        EVP_DigestUpdate(m, "commerce.order.id.v1", 21); /* with its NUL: a separator */
        EVP_DigestUpdate(m, tenant, strlen(tenant) + 1);
        EVP_DigestUpdate(m, request_id, strlen(request_id));
        if (gen > 0) {
            char g[16];
            int gl = snprintf(g, sizeof g, "#%u", gen); /* "#" is not a key character */
            EVP_DigestUpdate(m, g, (size_t)gl);
        }
        if (EVP_DigestFinal_ex(m, md, &n) == 1 && n >= 16)
            memcpy(id, md, 16);
    }
    EVP_MD_CTX_free(m);
    id[6] = (uint8_t)((id[6] & 0x0f) | 0x80); /* version 8: custom */
    id[8] = (uint8_t)((id[8] & 0x3f) | 0x80); /* variant 10 */
    char text[CM_ID_SIZE];
    cm_id_format(id, text);
    snprintf(out, 40, "%s", text);
}

int64_t ord_deadline(int64_t created_ms, int64_t timeout_ms, int64_t resv_expires_ms,
                     int64_t margin_ms)
{
    int64_t d = created_ms + timeout_ms;
    if (resv_expires_ms > 0 && d > resv_expires_ms - margin_ms)
        d = resv_expires_ms - margin_ms;
    if (d < created_ms)
        d = created_ms;
    return d;
}

static int paid_state(int s)
{
    return s == ORD_PAID || s == ORD_SHIPPED || s == ORD_COMPLETED || s == ORD_PART_REFUNDED ||
           s == ORD_REFUNDED;
}

ord_verdict ord_plan_pay(const ord_order *o, int64_t amount, const char *currency, int64_t now_ms,
                         int64_t grace_ms)
{
    if (o->state == ORD_CANCELLED)
        return ORD_LATE;
    if (paid_state(o->state))
        return ORD_DOUBLE_PAY;
    if (o->state != ORD_PENDING)
        return ORD_ILLEGAL;
    if (!currency || strcmp(currency, o->currency) != 0)
        return ORD_CURRENCY;
    if (amount != o->total)
        return ORD_AMOUNT;
    if (now_ms > o->deadline_ms + grace_ms)
        return ORD_LATE;
    return ORD_OK;
}

ord_verdict ord_plan_cancel(const ord_order *o)
{
    if (o->state == ORD_CANCELLED)
        return ORD_NOOP;
    return o->state == ORD_PENDING ? ORD_OK : ORD_ILLEGAL;
}

ord_verdict ord_plan_ship(const ord_order *o, int *to)
{
    if (o->state == ORD_PAID) {
        *to = ORD_SHIPPED;
        return ORD_OK;
    }
    if (o->state == ORD_PART_REFUNDED && o->shipped_ms == 0) {
        *to = ORD_PART_REFUNDED;
        return ORD_OK;
    }
    return ORD_ILLEGAL;
}

ord_verdict ord_plan_complete(const ord_order *o, int *to)
{
    if (o->state == ORD_SHIPPED) {
        *to = ORD_COMPLETED;
        return ORD_OK;
    }
    if (o->state == ORD_PART_REFUNDED && o->shipped_ms != 0 && o->completed_ms == 0) {
        *to = ORD_PART_REFUNDED;
        return ORD_OK;
    }
    return ORD_ILLEGAL;
}

int ord_check_refund(const ord_refund_in *in, ord_violation *v)
{
    switch (in->scope) {
    case ORD_SCOPE_FULL:
        if (in->nlines) {
            violate(v, NULL, "must be empty for REFUND_SCOPE_FULL", "lines");
            return CM_EINVAL;
        }
        if (in->has_amount) {
            violate(v, NULL, "must be unset for REFUND_SCOPE_FULL", "amount");
            return CM_EINVAL;
        }
        return 0;
    case ORD_SCOPE_LINES:
        if (in->has_amount) {
            violate(v, NULL, "must be unset for REFUND_SCOPE_LINES", "amount");
            return CM_EINVAL;
        }
        if (in->nlines == 0) {
            violate(v, NULL, "at least one line is required for REFUND_SCOPE_LINES", "lines");
            return CM_EINVAL;
        }
        if (in->nlines > ORD_LINES_MAX) {
            violate(v, NULL, "at most 100 lines", "lines");
            return CM_EINVAL;
        }
        for (size_t i = 0; i < in->nlines; i++) {
            if (!ord_valid_key(in->skus[i], ORD_KEY_MAX)) {
                violate(v, NULL, "required: 1-64 characters from [A-Za-z0-9._:-]", "lines[%zu].sku",
                        i);
                return CM_EINVAL;
            }
            for (size_t j = 0; j < i; j++) {
                if (strcmp(in->skus[i], in->skus[j]) == 0) {
                    violate(v, NULL, "duplicate sku", "lines[%zu].sku", i);
                    return CM_EINVAL;
                }
            }
            if (in->qtys[i] < 1) {
                violate(v, NULL, "must be at least 1", "lines[%zu].quantity", i);
                return CM_EINVAL;
            }
        }
        return 0;
    case ORD_SCOPE_AMOUNT:
        if (in->nlines) {
            violate(v, NULL, "must be empty for REFUND_SCOPE_AMOUNT", "lines");
            return CM_EINVAL;
        }
        if (!in->has_amount || in->amount <= 0) {
            violate(v, NULL, "required for REFUND_SCOPE_AMOUNT: a positive amount",
                    "amount.amount_minor");
            return CM_EINVAL;
        }
        return 0;
    default:
        violate(v, NULL, "required: FULL, LINES or AMOUNT", "scope");
        return CM_EINVAL;
    }
}

static int refundable_state(int s)
{
    return s == ORD_PAID || s == ORD_SHIPPED || s == ORD_COMPLETED || s == ORD_PART_REFUNDED;
}

static ord_verdict plan_refund(const ord_order *o, const ord_refund_in *in, ord_refund *r,
                               ord_violation *v)
{
    memset(r, 0, sizeof *r);
    r->scope = in->scope;
    if (!refundable_state(o->state))
        return ORD_ILLEGAL;
    int64_t left = o->total - o->refunded;
    switch (in->scope) {
    case ORD_SCOPE_FULL:
        for (size_t i = 0; i < o->nlines; i++) {
            const ord_line *l = &o->lines[i];
            int64_t amt = l->line_total - l->refunded_amount;
            int64_t qty = l->qty - l->refunded_qty;
            if (amt <= 0 && qty <= 0)
                continue;
            ord_refund_line *rl = &r->lines[r->nlines++];
            snprintf(rl->sku, sizeof rl->sku, "%s", l->sku);
            rl->qty = qty;
            rl->amount = amt;
            r->amount += amt;
        }
        if (r->amount <= 0) {
            violate(v, "REFUND_EXCEEDS_REFUNDABLE", "nothing is left to refund", "scope");
            return ORD_EXCEEDS;
        }
        return ORD_OK;
    case ORD_SCOPE_LINES:
        /* breakdown in the order's line order, whatever the request's */
        for (size_t i = 0; i < o->nlines; i++) {
            const ord_line *l = &o->lines[i];
            for (size_t k = 0; k < in->nlines; k++) {
                if (strcmp(in->skus[k], l->sku) != 0)
                    continue;
                if (in->qtys[k] > l->qty - l->refunded_qty) {
                    violate(v, "REFUND_EXCEEDS_REFUNDABLE",
                            "more units than are left to refund on this line",
                            "lines[%zu].quantity", k);
                    return ORD_EXCEEDS;
                }
                int64_t amt;
                if (cm_money_mul(in->qtys[k], l->unit_price, &amt) != 0 ||
                    amt > l->line_total - l->refunded_amount) {
                    violate(v, "REFUND_EXCEEDS_REFUNDABLE",
                            "more than is left to refund on this line", "lines[%zu].quantity", k);
                    return ORD_EXCEEDS;
                }
                ord_refund_line *rl = &r->lines[r->nlines++];
                snprintf(rl->sku, sizeof rl->sku, "%s", l->sku);
                rl->qty = in->qtys[k];
                rl->amount = amt;
                r->amount += amt;
            }
        }
        for (size_t k = 0; k < in->nlines; k++) {
            size_t i = 0;
            while (i < o->nlines && strcmp(o->lines[i].sku, in->skus[k]) != 0)
                i++;
            if (i == o->nlines) {
                violate(v, NULL, "not a sku of this order", "lines[%zu].sku", k);
                return ORD_BAD_INPUT;
            }
        }
        if (r->amount <= 0) {
            /* only zero-priced units: nothing to pay back */
            violate(v, "REFUND_EXCEEDS_REFUNDABLE", "the lines have nothing to refund", "lines");
            return ORD_EXCEEDS;
        }
        return ORD_OK;
    case ORD_SCOPE_AMOUNT: {
        if (!in->amount_currency || strcmp(in->amount_currency, o->currency) != 0) {
            violate(v, "CURRENCY_MISMATCH", "must be in the order currency", "amount.currency");
            return ORD_CURRENCY;
        }
        if (in->amount > left) {
            violate(v, "REFUND_EXCEEDS_REFUNDABLE", "more than is left to refund on the order",
                    "amount.amount_minor");
            return ORD_EXCEEDS;
        }
        int64_t parts[ORD_LINES_MAX], totals[ORD_LINES_MAX], done[ORD_LINES_MAX];
        for (size_t i = 0; i < o->nlines; i++) {
            totals[i] = o->lines[i].line_total;
            done[i] = o->lines[i].refunded_amount;
        }
        if (cm_money_split_refund(in->amount, totals, done, o->nlines, parts) != 0) {
            violate(v, "REFUND_EXCEEDS_REFUNDABLE", "more than is left to refund on the order",
                    "amount.amount_minor");
            return ORD_EXCEEDS;
        }
        for (size_t i = 0; i < o->nlines; i++) {
            if (parts[i] == 0)
                continue;
            ord_refund_line *rl = &r->lines[r->nlines++];
            snprintf(rl->sku, sizeof rl->sku, "%s", o->lines[i].sku);
            rl->qty = 0;
            rl->amount = parts[i];
        }
        r->amount = in->amount;
        return ORD_OK;
    }
    default:
        violate(v, NULL, "required: FULL, LINES or AMOUNT", "scope");
        return ORD_BAD_INPUT;
    }
}

/* what of line l is refunded after adding qty units and amount: the share
 * of the line's cost that is reversed (cumulative) */
static int64_t reversed_after(const ord_line *l, int64_t qty, int64_t amount)
{
    int64_t cost;
    if (ord_line_cost(l, &cost) != 0 || l->unit_cost < 0)
        return 0;
    if (l->line_total > 0)
        return ord_cost_share(cost, l->refunded_amount + amount, l->line_total);
    return ord_cost_share(cost, l->refunded_qty + qty, l->qty);
}

ord_verdict ord_plan_refund(const ord_order *o, const ord_refund_in *in, ord_refund *r,
                            ord_violation *v)
{
    ord_verdict verdict = plan_refund(o, in, r, v);
    if (verdict != ORD_OK)
        return verdict;
    r->cost_reversed = 0;
    for (size_t k = 0; k < r->nlines; k++) {
        ord_refund_line *rl = &r->lines[k];
        rl->cost = 0;
        for (size_t i = 0; i < o->nlines; i++) {
            const ord_line *l = &o->lines[i];
            if (strcmp(l->sku, rl->sku) != 0)
                continue;
            rl->cost = reversed_after(l, rl->qty, rl->amount) - l->cost_reversed;
            if (rl->cost < 0) /* cannot happen: the share only grows */
                rl->cost = 0;
            break;
        }
        r->cost_reversed += rl->cost;
    }
    return ORD_OK;
}

void ord_set_costs(ord_order *o, const int64_t *costs, const char *const *ccys)
{
    for (size_t i = 0; i < o->nlines; i++) {
        ord_line *l = &o->lines[i];
        int known = ccys[i] && strcmp(ccys[i], o->currency) == 0 && costs[i] >= 0;
        l->unit_cost = known ? costs[i] : -1;
        l->cost_reversed = 0;
    }
}

int ord_line_cost(const ord_line *l, int64_t *out)
{
    *out = 0;
    if (l->unit_cost < 0)
        return 0;
    int64_t c;
    if (cm_money_mul(l->qty, l->unit_cost, &c) != 0)
        return CM_EOVERFLOW;
    *out = c;
    return 0;
}

int64_t ord_cost_share(int64_t cost, int64_t done, int64_t whole)
{
    if (whole <= 0 || done <= 0 || cost <= 0)
        return 0;
    if (done >= whole)
        return cost;
    int64_t s;
    if (cm_money_muldiv(cost, done, whole, CM_ROUND_FLOOR, &s) != 0)
        return 0; /* cannot happen: done < whole keeps it under cost */
    return s;
}

ord_margin ord_order_margin(const ord_order *o)
{
    ord_margin m = {.complete = 1};
    for (size_t i = 0; i < o->nlines; i++) {
        const ord_line *l = &o->lines[i];
        int64_t c;
        if (l->unit_cost < 0 || ord_line_cost(l, &c) != 0) {
            m.complete = 0;
            continue;
        }
        /* a line's cost is at most ORD_QTY_MAX * the largest cost inventory
         * accepts (10^9 * 10^12 overflows, caught above); sums of 100 such
         * lines are kept within int64 by saturating */
        if (cm_money_add(m.cost, c, &m.cost) != 0)
            m.cost = INT64_MAX;
        m.reversed += l->cost_reversed;
    }
    m.margin = (o->total - o->refunded) - (m.cost - m.reversed);
    return m;
}

void ord_apply_refund(ord_order *o, const ord_refund *r)
{
    for (size_t k = 0; k < r->nlines; k++) {
        for (size_t i = 0; i < o->nlines; i++) {
            if (strcmp(o->lines[i].sku, r->lines[k].sku) == 0) {
                o->lines[i].refunded_qty += r->lines[k].qty;
                o->lines[i].refunded_amount += r->lines[k].amount;
                o->lines[i].cost_reversed += r->lines[k].cost;
                break;
            }
        }
    }
    o->refunded += r->amount;
    o->state = o->refunded >= o->total ? ORD_REFUNDED : ORD_PART_REFUNDED;
}
