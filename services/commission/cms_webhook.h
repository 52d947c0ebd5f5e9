/*
 * cms_webhook: the HTTP side of the partner feed's webhooks (README.md,
 * "The partner feed"): signing secrets, the Commerce-Signature header, the
 * rules an endpoint URL and the address it resolves to must pass, the
 * retry backoff, and one POST through libcurl. No database here: feed.c
 * decides what to send and records what happened.
 *
 * The signature (kafka/partner/README.md, "Webhooks"), Stripe-style:
 *   Commerce-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]
 * each hex the lower-case HMAC-SHA256, keyed with a secret's bytes, of
 * "<t>.<body>"; one v1 per valid secret (the new one first during a
 * rotation), so a receiver that knows either verifies.
 */
#ifndef CMS_WEBHOOK_H
#define CMS_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* "whsec_" + 43 characters of base64url (32 random bytes) + NUL */
#define CMS_WEBHOOK_SECRET_SIZE 50
/* "t=" 20 digits + 2 x ",v1=" 64 hex + NUL, with room */
#define CMS_WEBHOOK_SIG_SIZE 192
#define CMS_WEBHOOK_URL_MAX 2048

/* a new secret from the system's CSPRNG: 0, or CM_EUNAVAIL */
int cms_webhook_secret_new(char out[CMS_WEBHOOK_SECRET_SIZE]);

/* the header value for body signed at unix time t with secrets[0..n)
 * (n 1 or 2, empty ones skipped): 0, or CM_EINVAL (no secret) */
int cms_webhook_sign(const char *const *secrets, size_t n, int64_t t, const void *body, size_t len,
                     char out[CMS_WEBHOOK_SIG_SIZE]);

/* what an endpoint may be. allow: CIDRs ("127.0.0.0/8", "::1/128")
 * whose addresses are accepted although not public. */
typedef struct cms_cidr {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    int prefix;
} cms_cidr;

typedef struct cms_webhook_policy {
    int allow_http;
    size_t nallow;
    cms_cidr allow[16];
} cms_webhook_policy;

/* parses a comma-separated CIDR list into p->allow: 0, or CM_EINVAL with
 * the bad entry named in why */
int cms_webhook_policy_parse(cms_webhook_policy *p, const char *cidrs, char *why, size_t cap);

/* 1 when the address may be connected to: public unicast, or inside an
 * allowed CIDR */
int cms_webhook_addr_allowed(const cms_webhook_policy *p, const struct sockaddr *sa);

/* checks an endpoint URL: absolute, https (http only when allowed), a
 * host, no user info, no fragment, at most CMS_WEBHOOK_URL_MAX, and a host
 * that is an IP literal (or "localhost") only when that address is allowed.
 * Names are checked again when they resolve (cms_webhook_post). 0, or
 * CM_EINVAL with the reason in why. */
int cms_webhook_url_check(const cms_webhook_policy *p, const char *url, char *why, size_t cap);

/* the delay before retry number `failures` (1 = after the first failure):
 * min(max_ms, 1 s * 2^(failures-1)), then a uniform jitter in [d/2, d]
 * drawn from rnd */
int64_t cms_webhook_backoff_ms(int failures, int64_t max_ms, uint32_t rnd);

/* one sender per thread: a libcurl handle that keeps its connections */
typedef struct cms_webhook_sender cms_webhook_sender;
cms_webhook_sender *cms_webhook_sender_new(const cms_webhook_policy *p, int timeout_ms);
void cms_webhook_sender_free(cms_webhook_sender *s);

typedef struct cms_webhook_result {
    int ok;     /* a 2xx came back */
    int status; /* the HTTP status; 0 when none */
    int64_t latency_us;
    char error[160]; /* "" for a 2xx */
} cms_webhook_result;

/* POSTs body to url with the feed's headers (content type, the event id,
 * the attempt, the signature); never follows redirects; refuses to
 * connect to an address the policy does not allow. */
void cms_webhook_post(cms_webhook_sender *s, const char *url, const char *event_id, int attempt,
                      const char *signature, const void *body, size_t len, cms_webhook_result *out);

#endif
