/*
 * cm_page: cursor pagination, the same for every list rpc.
 *
 * a list answers at most page_size rows (0: CM_PAGE_DEFAULT; above
 * CM_PAGE_MAX: CM_PAGE_MAX; negative: INVALID_ARGUMENT naming page_size)
 * and, when more remain, a next_page_token. the token is opaque to
 * callers: hex of "<kind>.<filter hash>.<position>", where kind tells one
 * list of a service from another, the filter hash is a 64-bit FNV-1a of
 * the list's filters in a canonical text, and the position is where the
 * page ended, in the list's own terms ("<created ms>.<order id>"). a token
 * is only accepted by the list and the filters it was made for, so a
 * caller cannot change the filters half way through and get a mixed
 * listing; anything else is INVALID_ARGUMENT / PAGE_TOKEN_INVALID naming
 * page_token.
 */
#ifndef CM_PAGE_H
#define CM_PAGE_H

#include <stddef.h>
#include <stdint.h>

#include "cm_rpc.h"

#define CM_PAGE_DEFAULT 50
#define CM_PAGE_MAX 500
#define CM_PAGE_POSITION_MAX 80 /* bytes of a position, NUL excluded */
#define CM_PAGE_TOKEN_MAX (2 * (CM_PAGE_POSITION_MAX + 20) + 1)

/* the rows to answer for a requested page_size, or -1 when negative. */
int cm_page_size(int32_t requested);

/* the 64-bit FNV-1a hash of a list's filters in a canonical text. */
uint64_t cm_page_filters(const char *canonical);

/* writes the token for (kind, filters, position) into out (cap >=
 * CM_PAGE_TOKEN_MAX). position: 1..CM_PAGE_POSITION_MAX characters of
 * [A-Za-z0-9._:-]. 0 or CM_EINVAL. */
int cm_page_token(char *out, size_t cap, char kind, uint64_t filters, const char *position);

/* the position of a token made by cm_page_token with the same kind and
 * filters, copied into position (cap > CM_PAGE_POSITION_MAX); CM_EINVAL
 * for anything else. */
int cm_page_token_parse(const char *token, char kind, uint64_t filters, char *position, size_t cap);

/* inside a list handler: the page size, and the position to continue after
 * (*after: NULL on the first page, else pos). records the failure naming
 * page_size or page_token and returns its value, else 0. */
int cm_page_begin(cm_rpc_ctx *ctx, int32_t page_size, const char *token, char kind,
                  uint64_t filters, char pos[CM_PAGE_POSITION_MAX + 1], const char **after,
                  int *size);

/* the failure of a token that parsed but whose position the list cannot
 * use (cm_page_begin's, for callers that check the position further). */
int cm_page_bad_token(cm_rpc_ctx *ctx);

/* sets *next to the next_page_token, in the call's arena, for a page that
 * ended at position when more rows remain (more && position), else leaves
 * it alone. 0, or a recorded failure (INTERNAL: a position the list should
 * never produce, or out of memory). */
int cm_page_next(cm_rpc_ctx *ctx, int more, char kind, uint64_t filters, const char *position,
                 char **next);

#endif
