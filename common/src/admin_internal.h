/*
 * admin.c's request parsing apart from its socket, for the fuzz harness
 * (tests/fuzz/fuzz_admin_http.c): not part of the public api, so
 * http-parser's types stay out of the public headers.
 */
#ifndef CM_ADMIN_INTERNAL_H
#define CM_ADMIN_INTERNAL_H

#include <http_parser.h>
#include <stddef.h>

#define CM_ADMIN_MAX_HEAD (16 * 1024) /* request line + headers */
#define CM_ADMIN_MAX_URL 4096
#define CM_ADMIN_MAX_BODY (16 * 1024) /* nothing here takes a body */

/* the request being parsed on one connection: a parser's data points at
 * it. a callback that refuses the request sets reject_status (431, 414 or
 * 413) and stops the parser. */
typedef struct cm_admin_req {
    char url[CM_ADMIN_MAX_URL];
    size_t url_len;
    size_t head_bytes;
    size_t body_bytes;
    int last_cb;       /* 0 none yet, 1 header field, 2 header value */
    int reject_status; /* set by a callback that refused the request */
} cm_admin_req;

/* the callbacks that fill a cm_admin_req and enforce the limits: every one
 * but on_message_complete, which is the caller's */
void cm_admin_req_settings(http_parser_settings *s);

/* what a complete request asks for */
typedef enum {
    CM_ADMIN_BAD_REQUEST = 0, /* 400: no path in the url */
    CM_ADMIN_NOT_FOUND,       /* 404 */
    CM_ADMIN_NOT_ALLOWED,     /* 405: a known path, a method other than GET or HEAD */
    CM_ADMIN_METRICS,
    CM_ADMIN_HEALTHZ,
    CM_ADMIN_READYZ,
} cm_admin_route_t;

cm_admin_route_t cm_admin_route(const cm_admin_req *r, enum http_method method);

#endif
