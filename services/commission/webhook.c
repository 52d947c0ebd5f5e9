/* the partner feed's webhooks over HTTP: see cms_webhook.h */
#include "cms_webhook.h"

#include "cm_err.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ---- secrets and signatures ---- */

int cms_webhook_secret_new(char out[CMS_WEBHOOK_SECRET_SIZE])
{
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof raw) != 1)
        return CM_EUNAVAIL;
    unsigned char b64[48];
    int n = EVP_EncodeBlock(b64, raw, sizeof raw); /* 44 characters, one '=' */
    memcpy(out, "whsec_", 6);
    size_t o = 6;
    for (int i = 0; i < n && b64[i] != '='; i++)
        out[o++] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : (char)b64[i];
    out[o] = '\0';
    return 0;
}

int cms_webhook_sign(const char *const *secrets, size_t n, int64_t t, const void *body, size_t len,
                     char out[CMS_WEBHOOK_SIG_SIZE])
{
    char ts[24];
    int tl = snprintf(ts, sizeof ts, "%lld", (long long)t);
    size_t o = (size_t)snprintf(out, CMS_WEBHOOK_SIG_SIZE, "t=%s", ts);
    int signed_by = 0;
    /* the signed bytes: "<t>.<body>" */
    unsigned char *msg = malloc((size_t)tl + 1 + len);
    if (!msg)
        return CM_ENOMEM;
    memcpy(msg, ts, (size_t)tl);
    msg[tl] = '.';
    if (len)
        memcpy(msg + tl + 1, body, len);
    for (size_t i = 0; i < n && i < 2; i++) {
        if (!secrets[i] || !secrets[i][0])
            continue;
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int maclen = 0;
        if (!HMAC(EVP_sha256(), secrets[i], (int)strlen(secrets[i]), msg, (size_t)tl + 1 + len, mac,
                  &maclen)) {
            free(msg);
            return CM_ENOMEM;
        }
        o += (size_t)snprintf(out + o, CMS_WEBHOOK_SIG_SIZE - o, ",v1=");
        for (unsigned int k = 0; k < maclen; k++)
            o += (size_t)snprintf(out + o, CMS_WEBHOOK_SIG_SIZE - o, "%02x", mac[k]);
        signed_by++;
    }
    free(msg);
    return signed_by ? 0 : CM_EINVAL;
}

/* ---- addresses ---- */

static int in_prefix(const unsigned char *a, const unsigned char *net, int prefix)
{
    int full = prefix / 8, rest = prefix % 8;
    if (memcmp(a, net, (size_t)full) != 0)
        return 0;
    if (!rest)
        return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[full] & mask) == (net[full] & mask);
}

int cms_webhook_policy_parse(cms_webhook_policy *p, const char *cidrs, char *why, size_t cap)
{
    p->nallow = 0;
    if (!cidrs)
        return 0;
    const char *s = cidrs;
    while (*s) {
        while (*s == ' ' || *s == ',')
            s++;
        if (!*s)
            break;
        size_t n = strcspn(s, ", ");
        char item[64];
        if (n >= sizeof item || p->nallow >= sizeof p->allow / sizeof p->allow[0]) {
            snprintf(why, cap, "too long or too many entries at '%.*s'", (int)(n < 40 ? n : 40), s);
            return CM_EINVAL;
        }
        memcpy(item, s, n);
        item[n] = '\0';
        s += n;
        char *slash = strchr(item, '/');
        int prefix = -1;
        if (slash) {
            *slash = '\0';
            char *end;
            long v = strtol(slash + 1, &end, 10);
            if (*end || end == slash + 1 || v < 0 || v > 128) {
                snprintf(why, cap, "bad prefix length in '%s/%s'", item, slash + 1);
                return CM_EINVAL;
            }
            prefix = (int)v;
        }
        cms_cidr *e = &p->allow[p->nallow];
        memset(e, 0, sizeof *e);
        if (inet_pton(AF_INET, item, e->addr) == 1) {
            e->family = AF_INET;
            if (prefix < 0)
                prefix = 32;
            if (prefix > 32) {
                snprintf(why, cap, "prefix over 32 for '%s'", item);
                return CM_EINVAL;
            }
        } else if (inet_pton(AF_INET6, item, e->addr) == 1) {
            e->family = AF_INET6;
            if (prefix < 0)
                prefix = 128;
        } else {
            snprintf(why, cap, "'%s' is not an IP address", item);
            return CM_EINVAL;
        }
        e->prefix = prefix;
        p->nallow++;
    }
    return 0;
}

/* 1 for an IPv4 address that is not public unicast (RFC 6890 and kin) */
static int v4_special(const unsigned char *a)
{
    static const struct {
        unsigned char net[4];
        int prefix;
    } blocks[] = {
        {{0, 0, 0, 0}, 8},     {{10, 0, 0, 0}, 8},      {{100, 64, 0, 0}, 10},
        {{127, 0, 0, 0}, 8},   {{169, 254, 0, 0}, 16},  {{172, 16, 0, 0}, 12},
        {{192, 0, 0, 0}, 24},  {{192, 0, 2, 0}, 24},    {{192, 168, 0, 0}, 16},
        {{198, 18, 0, 0}, 15}, {{198, 51, 100, 0}, 24}, {{203, 0, 113, 0}, 24},
        {{224, 0, 0, 0}, 4},   {{240, 0, 0, 0}, 4},
    };
    for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++)
        if (in_prefix(a, blocks[i].net, blocks[i].prefix))
            return 1;
    return 0;
}

static int v6_special(const unsigned char *a)
{
    static const unsigned char zero[16] = {0};
    static const unsigned char fc[16] = {0xfc}, fe80[16] = {0xfe, 0x80}, ff[16] = {0xff},
                               doc[16] = {0x20, 0x01, 0x0d, 0xb8};
    if (memcmp(a, zero, 15) == 0 && (a[15] == 0 || a[15] == 1))
        return 1; /* :: and ::1 */
    return in_prefix(a, fc, 7) || in_prefix(a, fe80, 10) || in_prefix(a, ff, 8) ||
           in_prefix(a, doc, 32);
}

static int allowed(const cms_webhook_policy *p, int family, const unsigned char *a)
{
    for (size_t i = 0; i < p->nallow; i++)
        if (p->allow[i].family == family && in_prefix(a, p->allow[i].addr, p->allow[i].prefix))
            return 1;
    return 0;
}

int cms_webhook_addr_allowed(const cms_webhook_policy *p, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const unsigned char *a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
        return !v4_special(a) || allowed(p, AF_INET, a);
    }
    if (sa->sa_family == AF_INET6) {
        const unsigned char *a =
            (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) /* ::ffff:a.b.c.d is a.b.c.d */
            return !v4_special(a + 12) || allowed(p, AF_INET, a + 12);
        return !v6_special(a) || allowed(p, AF_INET6, a);
    }
    return 0;
}

/* ---- urls ---- */

int cms_webhook_url_check(const cms_webhook_policy *p, const char *url, char *why, size_t cap)
{
    if (!url || !*url) {
        snprintf(why, cap, "required while the webhook is enabled");
        return CM_EINVAL;
    }
    if (strlen(url) > CMS_WEBHOOK_URL_MAX) {
        snprintf(why, cap, "longer than %d characters", CMS_WEBHOOK_URL_MAX);
        return CM_EINVAL;
    }
    for (const char *c = url; *c; c++)
        if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f) {
            snprintf(why, cap, "must be printable ASCII without spaces (percent-encode the rest)");
            return CM_EINVAL;
        }
    CURLU *u = curl_url();
    if (!u) {
        snprintf(why, cap, "out of memory");
        return CM_ENOMEM;
    }
    int rc = CM_EINVAL;
    char *scheme = NULL, *host = NULL, *user = NULL, *pass = NULL, *frag = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
        snprintf(why, cap, "not an absolute URL");
        goto out;
    }
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    curl_url_get(u, CURLUPART_HOST, &host, 0);
    curl_url_get(u, CURLUPART_USER, &user, 0);
    curl_url_get(u, CURLUPART_PASSWORD, &pass, 0);
    curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0);
    if (!scheme || (strcasecmp(scheme, "https") != 0 && strcasecmp(scheme, "http") != 0)) {
        snprintf(why, cap, "scheme must be https");
        goto out;
    }
    if (strcasecmp(scheme, "http") == 0 && !p->allow_http) {
        snprintf(why, cap, "scheme must be https (http is not allowed by this service)");
        goto out;
    }
    if (user || pass) {
        snprintf(why, cap, "must not carry a user name or password");
        goto out;
    }
    if (frag) {
        snprintf(why, cap, "must not have a fragment");
        goto out;
    }
    if (!host || !*host) {
        snprintf(why, cap, "has no host");
        goto out;
    }
    /* an address literal (curl keeps IPv6 ones in brackets) or localhost:
     * decided now; other names when they resolve, at each new connection */
    char lit[64];
    size_t hl = strlen(host);
    if (host[0] == '[' && hl > 2 && hl - 2 < sizeof lit) {
        memcpy(lit, host + 1, hl - 2);
        lit[hl - 2] = '\0';
    } else {
        snprintf(lit, sizeof lit, "%s", host);
    }
    char *pct = strchr(lit, '%'); /* a zone id */
    if (pct)
        *pct = '\0';
    /* lit's own length: a zone id cut it shorter than host */
    size_t ll = strlen(lit);
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
    struct sockaddr_in s4 = {.sin_family = AF_INET};
    const struct sockaddr *sa = NULL;
    if (inet_pton(AF_INET, lit, &s4.sin_addr) == 1)
        sa = (const struct sockaddr *)&s4;
    else if (inet_pton(AF_INET6, lit, &s6.sin6_addr) == 1)
        sa = (const struct sockaddr *)&s6;
    else if (strcasecmp(lit, "localhost") == 0 ||
             (ll > 10 && strcasecmp(lit + ll - 10, ".localhost") == 0)) {
        inet_pton(AF_INET, "127.0.0.1", &s4.sin_addr);
        sa = (const struct sockaddr *)&s4;
    }
    if (sa && !cms_webhook_addr_allowed(p, sa)) {
        snprintf(why, cap,
                 "host %s is a loopback, private or otherwise non-public address "
                 "(COMMISSION_WEBHOOK_ALLOW_CIDRS does not allow it)",
                 host);
        goto out;
    }
    rc = 0;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(pass);
    curl_free(frag);
    curl_url_cleanup(u);
    return rc;
}

/* ---- backoff ---- */

int64_t cms_webhook_backoff_ms(int failures, int64_t max_ms, uint32_t rnd)
{
    if (failures < 1)
        failures = 1;
    int64_t d = 1000;
    for (int i = 1; i < failures && d < max_ms; i++)
        d *= 2;
    if (d > max_ms)
        d = max_ms;
    int64_t half = d / 2;
    return half + (half ? (int64_t)(rnd % (uint64_t)(half + 1)) : 0);
}

/* ---- sending ---- */

struct cms_webhook_sender {
    CURL *curl;
    cms_webhook_policy policy;
    int timeout_ms;
    int refused; /* the last connect was refused by the policy */
};

static curl_socket_t open_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
    cms_webhook_sender *s = arg;
    if (purpose != CURLSOCKTYPE_IPCXN || !cms_webhook_addr_allowed(&s->policy, &a->addr)) {
        s->refused = 1;
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype, a->protocol);
}

/* the response body is not used: read and dropped, at most 64 KiB */
static size_t drop(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    size_t *total = arg;
    *total += size * n;
    return *total > 65536 ? 0 : size * n;
}

cms_webhook_sender *cms_webhook_sender_new(const cms_webhook_policy *p, int timeout_ms)
{
    cms_webhook_sender *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->curl = curl_easy_init();
    if (!s->curl) {
        free(s);
        return NULL;
    }
    s->policy = *p;
    s->timeout_ms = timeout_ms;
    return s;
}

void cms_webhook_sender_free(cms_webhook_sender *s)
{
    if (!s)
        return;
    curl_easy_cleanup(s->curl);
    free(s);
}

void cms_webhook_post(cms_webhook_sender *s, const char *url, const char *event_id, int attempt,
                      const char *signature, const void *body, size_t len, cms_webhook_result *out)
{
    memset(out, 0, sizeof *out);
    char h_id[96], h_attempt[48], h_sig[CMS_WEBHOOK_SIG_SIZE + 32];
    snprintf(h_id, sizeof h_id, "Commerce-Event-Id: %s", event_id);
    snprintf(h_attempt, sizeof h_attempt, "Commerce-Delivery-Attempt: %d", attempt);
    snprintf(h_sig, sizeof h_sig, "Commerce-Signature: %s", signature);
    struct curl_slist *h = NULL, *t;
    const char *lines[] = {"Content-Type: application/cloudevents+json; charset=UTF-8", h_id,
                           h_attempt, h_sig, "Expect:"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        t = curl_slist_append(h, lines[i]);
        if (!t) {
            curl_slist_free_all(h);
            snprintf(out->error, sizeof out->error, "out of memory");
            return;
        }
        h = t;
    }
    CURL *c = s->curl;
    size_t got = 0;
    s->refused = 0;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROXY, ""); /* never an environment proxy */
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "commerce-commission-feed/1");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)s->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(s->timeout_ms < 5000 ? s->timeout_ms : 5000));
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, s);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, drop);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &got);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    CURLcode rc = curl_easy_perform(c);
    clock_gettime(CLOCK_MONOTONIC, &b);
    out->latency_us = (b.tv_sec - a.tv_sec) * 1000000 + (b.tv_nsec - a.tv_nsec) / 1000;
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    out->status = (int)status;
    if (rc == CURLE_WRITE_ERROR && status >= 200 && status < 300)
        rc = CURLE_OK; /* an answer with a long body we stopped reading */
    if (rc != CURLE_OK)
        snprintf(out->error, sizeof out->error, "%s",
                 s->refused ? "address not allowed (COMMISSION_WEBHOOK_ALLOW_CIDRS)"
                            : curl_easy_strerror(rc));
    else if (status < 200 || status > 299)
        snprintf(out->error, sizeof out->error, "HTTP %ld", status);
    else
        out->ok = 1;
    curl_slist_free_all(h);
}
