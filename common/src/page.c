/* cursor pagination: see cm_page.h */
#include "cm_page.h"
#include "cm_err.h"

#include <grpc/status.h>
#include <stdio.h>
#include <string.h>

int cm_page_size(int32_t requested)
{
    if (requested < 0)
        return -1;
    if (requested == 0)
        return CM_PAGE_DEFAULT;
    return requested > CM_PAGE_MAX ? CM_PAGE_MAX : (int)requested;
}

uint64_t cm_page_filters(const char *canonical)
{
    uint64_t h = 14695981039346656037ULL; /* the 64-bit fnv offset basis */
    for (const unsigned char *c = (const unsigned char *)canonical; c && *c; c++) {
        h ^= *c;
        h *= 1099511628211ULL;
    }
    return h;
}

static int position_ok(const char *p, size_t n)
{
    if (n == 0 || n > CM_PAGE_POSITION_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

static const char hexd[] = "0123456789abcdef";

int cm_page_token(char *out, size_t cap, char kind, uint64_t filters, const char *position)
{
    char raw[CM_PAGE_POSITION_MAX + 24];
    if (!position || !position_ok(position, strlen(position)))
        return CM_EINVAL;
    int n = snprintf(raw, sizeof raw, "%c.%016llx.%s", kind, (unsigned long long)filters, position);
    if (n < 0 || (size_t)n >= sizeof raw || cap < (size_t)n * 2 + 1)
        return CM_EINVAL;
    for (int i = 0; i < n; i++) {
        out[2 * i] = hexd[(unsigned char)raw[i] >> 4];
        out[2 * i + 1] = hexd[(unsigned char)raw[i] & 15];
    }
    out[2 * n] = '\0';
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int cm_page_token_parse(const char *token, char kind, uint64_t filters, char *position, size_t cap)
{
    char raw[CM_PAGE_POSITION_MAX + 24];
    size_t len = token ? strlen(token) : 0;
    if (len == 0 || len % 2 || len / 2 >= sizeof raw)
        return CM_EINVAL;
    for (size_t i = 0; i < len / 2; i++) {
        int hi = hexval(token[2 * i]), lo = hexval(token[2 * i + 1]);
        if (hi < 0 || lo < 0 || (hi | lo) == 0) /* a NUL inside is no token */
            return CM_EINVAL;
        raw[i] = (char)(hi << 4 | lo);
    }
    raw[len / 2] = '\0';
    char want[24];
    int wl = snprintf(want, sizeof want, "%c.%016llx.", kind, (unsigned long long)filters);
    if (wl < 0 || strncmp(raw, want, (size_t)wl) != 0)
        return CM_EINVAL;
    const char *p = raw + wl;
    size_t n = strlen(p);
    if (!position_ok(p, n) || n >= cap)
        return CM_EINVAL;
    memcpy(position, p, n + 1);
    return 0;
}

int cm_page_bad_token(cm_rpc_ctx *ctx)
{
    int f = cm_rpc_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "PAGE_TOKEN_INVALID",
                        "page_token: is not a next_page_token of this call with these filters");
    cm_rpc_fail_field(ctx, "page_token",
                      "is not a next_page_token of this call with these filters");
    return f;
}

int cm_page_begin(cm_rpc_ctx *ctx, int32_t page_size, const char *token, char kind,
                  uint64_t filters, char pos[CM_PAGE_POSITION_MAX + 1], const char **after,
                  int *size)
{
    *after = NULL;
    *size = cm_page_size(page_size);
    if (*size < 0)
        return cm_rpc_fail_field(ctx, "page_size", "must not be negative");
    if (token && *token) {
        if (cm_page_token_parse(token, kind, filters, pos, CM_PAGE_POSITION_MAX + 1))
            return cm_page_bad_token(ctx);
        *after = pos;
    }
    return 0;
}

int cm_page_next(cm_rpc_ctx *ctx, int more, char kind, uint64_t filters, const char *position,
                 char **next)
{
    if (!more || !position)
        return 0;
    char tok[CM_PAGE_TOKEN_MAX];
    char *t = cm_page_token(tok, sizeof tok, kind, filters, position) == 0
                  ? cm_arena_strdup(cm_rpc_ctx_arena(ctx), tok)
                  : NULL;
    if (!t)
        return cm_rpc_fail_err(ctx, CM_EINTERNAL, "could not make the next page token");
    *next = t;
    return 0;
}
