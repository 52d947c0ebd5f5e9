/*
 * commission's partner webhook endpoint rules (cms_webhook_policy_parse,
 * cms_webhook_url_check): input is flags (bit 0: http allowed), then a
 * CIDR list up to the first newline, then the URL. invariants: an accepted
 * URL is absolute, https (http only when allowed), has a host and no user
 * or fragment, fits CMS_WEBHOOK_URL_MAX, and an IP-literal host is an
 * address the policy allows; a refusal says why.
 */
#include "cm_err.h"
#include "cms_webhook.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void broken(const char *what, const char *url)
{
    fprintf(stderr, "fuzz_webhook_url: %s: %s\n", what, url);
    abort();
}

static void check_accepted(const cms_webhook_policy *p, const char *url)
{
    if (strlen(url) > CMS_WEBHOOK_URL_MAX)
        broken("accepted a URL longer than the maximum", url);
    CURLU *u = curl_url();
    if (!u)
        return;
    char *scheme = NULL, *host = NULL, *user = NULL, *frag = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        broken("accepted a URL curl cannot parse", url);
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    curl_url_get(u, CURLUPART_HOST, &host, 0);
    curl_url_get(u, CURLUPART_USER, &user, 0);
    curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0);
    if (!scheme || (strcmp(scheme, "https") != 0 && !(p->allow_http && !strcmp(scheme, "http"))))
        broken("accepted a scheme that is not allowed", url);
    if (!host || !*host || user || frag)
        broken("accepted a URL without a host, or with user info or a fragment", url);
    /* an IP literal must be an allowed address */
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
    struct sockaddr_in s4 = {.sin_family = AF_INET};
    size_t hl = strlen(host);
    char lit[64];
    if (hl > 2 && host[0] == '[' && hl - 2 < sizeof lit) {
        memcpy(lit, host + 1, hl - 2);
        lit[hl - 2] = '\0';
        char *pct = strchr(lit, '%'); /* a zone id */
        if (pct)
            *pct = '\0';
        if (inet_pton(AF_INET6, lit, &s6.sin6_addr) == 1 &&
            !cms_webhook_addr_allowed(p, (struct sockaddr *)&s6))
            broken("accepted an IPv6 literal the policy does not allow", url);
    } else if (inet_pton(AF_INET, host, &s4.sin_addr) == 1 &&
               !cms_webhook_addr_allowed(p, (struct sockaddr *)&s4)) {
        broken("accepted an IPv4 literal the policy does not allow", url);
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(frag);
    curl_url_cleanup(u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    char *nl = strchr(text, '\n');
    const char *url = text;
    cms_webhook_policy p = {.allow_http = data[0] & 1};
    char why[256] = "";
    if (nl) {
        *nl = '\0';
        url = nl + 1;
        if (cms_webhook_policy_parse(&p, text, why, sizeof why) != 0) {
            if (!why[0])
                broken("policy refused without a reason", text);
            free(text);
            return 0;
        }
        p.allow_http = data[0] & 1;
    }
    why[0] = '\0';
    int rc = cms_webhook_url_check(&p, url, why, sizeof why);
    if (rc == 0)
        check_accepted(&p, url);
    else if (rc != CM_EINVAL || !why[0])
        broken("refused without CM_EINVAL and a reason", url);
    free(text);
    return 0;
}
