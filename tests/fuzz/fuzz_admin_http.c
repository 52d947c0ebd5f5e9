/*
 * the admin endpoint's request parsing (admin.c: http-parser with the
 * endpoint's callbacks and limits, then the route), fed as the socket
 * would: the first byte is the read size (0: everything at once), the rest
 * the bytes a client sends, pipelined requests included. a request that
 * closes the connection stops the parse, as the endpoint pauses there.
 * invariants: the limits hold for every complete request (url, head,
 * body); a refusal carries 413, 414, 431 or none (400); a served path is
 * really in the url, and only for GET or HEAD.
 */
#include "admin_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_admin_http: %s\n", what);
    abort();
}

static int in_url(const cm_admin_req *r, const char *path)
{
    return memmem(r->url, r->url_len, path, strlen(path)) != NULL;
}

static int on_complete(http_parser *p)
{
    const cm_admin_req *r = p->data;
    if (r->url_len >= CM_ADMIN_MAX_URL || r->head_bytes > CM_ADMIN_MAX_HEAD ||
        r->body_bytes > CM_ADMIN_MAX_BODY)
        broken("a request past the limits completed");
    int get = p->method == HTTP_GET || p->method == HTTP_HEAD;
    switch (cm_admin_route(r, (enum http_method)p->method)) {
    case CM_ADMIN_METRICS:
        if (!get || !in_url(r, "/metrics"))
            broken("metrics served for another path or method");
        break;
    case CM_ADMIN_HEALTHZ:
        if (!get || !in_url(r, "/healthz"))
            broken("healthz served for another path or method");
        break;
    case CM_ADMIN_READYZ:
        if (!get || !in_url(r, "/readyz"))
            broken("readyz served for another path or method");
        break;
    case CM_ADMIN_NOT_ALLOWED:
        if (get)
            broken("GET or HEAD refused as a method");
        break;
    case CM_ADMIN_BAD_REQUEST:
        http_parser_pause(p, 1); /* answered, then closed */
        return 0;
    case CM_ADMIN_NOT_FOUND:
        break;
    }
    if (!http_should_keep_alive(p) || p->upgrade)
        http_parser_pause(p, 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t chunk = data[0] ? data[0] : size;
    static http_parser_settings settings;
    if (!settings.on_url) {
        cm_admin_req_settings(&settings);
        settings.on_message_complete = on_complete;
    }
    cm_admin_req *req = calloc(1, sizeof *req);
    if (!req)
        return 0;
    http_parser parser;
    http_parser_init(&parser, HTTP_REQUEST);
    parser.data = req;
    for (size_t at = 1; at < size;) {
        size_t len = size - at < chunk ? size - at : chunk;
        /* each read in its own allocation, so the parser cannot read on */
        char *buf = malloc(len);
        if (!buf)
            break;
        memcpy(buf, data + at, len);
        size_t n = http_parser_execute(&parser, &settings, buf, len);
        free(buf);
        enum http_errno e = HTTP_PARSER_ERRNO(&parser);
        if (e == HPE_PAUSED)
            break;
        if (e != HPE_OK || n != len) {
            int st = req->reject_status;
            if (st != 0 && st != HTTP_STATUS_PAYLOAD_TOO_LARGE && st != HTTP_STATUS_URI_TOO_LONG &&
                st != HTTP_STATUS_REQUEST_HEADER_FIELDS_TOO_LARGE)
                broken("refused with an unexpected status");
            break;
        }
        at += len;
    }
    free(req);
    return 0;
}
