/*
 * cm_auth: who is calling, for which tenant.
 *
 * callers send `authorization: Bearer <JWT>`; the token names the tenant in
 * its `tid` claim, the caller in `sub` and its permissions in `roles`. a
 * verifier is built once from settings and is then read-only, so any number
 * of worker threads may verify with it at the same time:
 *
 *   cm_auth_settings s = {.mode = CM_AUTH_REQUIRED, .hs256_secret = secret};
 *   cm_auth *a;
 *   if (cm_auth_new(&s, &a, err, sizeof err) != 0) ... refuse to start
 *   cm_auth_principal p;
 *   int rc = cm_auth_verify(a, authorization, x_tenant_id, &p, why, sizeof why);
 *
 * accepted algorithms are exactly HS256 (when a secret is configured) and
 * RS256 (when a public key is configured); the algorithm is read from the
 * token header before any key is chosen, so a token can neither pick "none"
 * nor get an RSA public key used as an HMAC secret.
 *
 * keys by id (JWKS): a JWKS file holds RS256 keys (kty RSA, n, e) and
 * HS256 keys (kty oct, k), each with a kid. a token whose header names a
 * kid is verified with that key only, and the key's algorithm must be the
 * token's; a token without kid uses the single-key settings (hs256_secret,
 * the rs256 public key) or, when there are none for its algorithm, the
 * JWKS's only key of that algorithm — never a guess among several.
 * cm_auth_reload re-reads the file when it changed and swaps the key set
 * atomically: verifiers running at that moment finish on the set they
 * started with (a reference-counted snapshot), and a file that does not
 * parse leaves the old set in place.
 *
 * service tokens: a token with tid "*" and role "service" is a service
 * acting for the tenant named by x-tenant-id (order calling inventory for
 * its caller's tenant). tid "*" without that role is refused.
 */
#ifndef CM_AUTH_H
#define CM_AUTH_H

#include <stddef.h>

#define CM_AUTH_TENANT_MAX 64   /* characters, [A-Za-z0-9._-] */
#define CM_AUTH_SUBJECT_MAX 255 /* bytes */
#define CM_AUTH_ROLES_MAX 16
#define CM_AUTH_ROLE_MAX 63           /* bytes per role */
#define CM_AUTH_HS256_MIN_SECRET 32   /* RFC 7518: a key at least as long as the hash */
#define CM_AUTH_TOKEN_MAX 8192        /* longer bearer tokens are refused unparsed */
#define CM_AUTH_SCOPE_MAX 64          /* merchant_id / channel_id claims, [A-Za-z0-9._:-] */
#define CM_AUTH_JWKS_MAX (256 * 1024) /* bytes of a JWKS file */
#define CM_AUTH_JWKS_KEYS_MAX 32      /* keys in one JWKS */
#define CM_AUTH_KID_MAX 128           /* bytes of a key id */
#define CM_AUTH_ANY_TENANT "*"        /* tid of a service token */
#define CM_AUTH_SERVICE_ROLE "service"

typedef enum {
    CM_AUTH_OFF = 0,  /* trust x-tenant-id; for development only */
    CM_AUTH_REQUIRED, /* every call needs a valid bearer token */
} cm_auth_mode;

typedef struct {
    cm_auth_mode mode;
    const char *hs256_secret;          /* NULL: HS256 tokens refused */
    const char *rs256_public_key_pem;  /* PEM "PUBLIC KEY" text; NULL: see file */
    const char *rs256_public_key_file; /* read at cm_auth_new when pem is NULL */
    const char *jwks_file;             /* JWKS json; read at cm_auth_new, see cm_auth_reload */
    const char *issuer;                /* NULL: iss not checked */
    const char *audience;              /* NULL: aud not checked */
    int leeway_s;                      /* clock skew allowed on exp and nbf, >= 0 */
} cm_auth_settings;

typedef struct cm_auth cm_auth;

/* the verified caller. plain data, safe to copy. */
typedef struct {
    char tenant[CM_AUTH_TENANT_MAX + 1];
    char subject[CM_AUTH_SUBJECT_MAX + 1]; /* "" when the token has no sub */
    int nroles;
    char roles[CM_AUTH_ROLES_MAX][CM_AUTH_ROLE_MAX + 1];
    /* the scope of a scoped role: role "merchant" comes with a merchant_id
     * claim, role "channel" with a channel_id claim (tokens carrying the
     * role without its claim are refused); "" when absent */
    char merchant[CM_AUTH_SCOPE_MAX + 1];
    char channel[CM_AUTH_SCOPE_MAX + 1];
    int auth_off; /* 1 when the verifier is in mode off: every role check passes */
    int service;  /* 1 for a service token: tenant came from x-tenant-id */
} cm_auth_principal;

/* the JWKS's counters since cm_auth_new */
typedef struct {
    unsigned long long reloads;  /* key sets swapped in after a change */
    unsigned long long failures; /* changed files that were refused */
    int keys;                    /* keys in the current set */
} cm_auth_jwks_stats;

/* parses "off" or "required". returns 0 or CM_EINVAL. */
int cm_auth_mode_parse(const char *s, cm_auth_mode *out);

/* 1 when s is a valid tenant id: 1..64 characters of [A-Za-z0-9._-]. */
int cm_auth_tenant_valid(const char *s);

/* builds a verifier; copies everything it needs from s, which the caller
 * keeps. in mode required at least one of hs256_secret (>= 32 bytes) or an
 * RS256 RSA public key must be given; keys are checked here so a bad one
 * stops the process at start rather than failing every call. returns 0 and
 * *out (free with cm_auth_free), or CM_EINVAL / CM_EIO / CM_ENOMEM with one
 * line in err. */
int cm_auth_new(const cm_auth_settings *s, cm_auth **out, char *err, size_t errlen);

/* frees a; no cm_auth_verify may be running. */
void cm_auth_free(cm_auth *a);

/* re-reads the JWKS file when its inode, size or mtime changed since the
 * last look (or always, when force is set: SIGHUP). one stat(2) when
 * nothing changed: call it from a timer (once a second), never per call.
 * safe while other threads verify. returns 0 (no JWKS, or unchanged), 1
 * (a new key set is in use) or a negative CM_E* with one line in err
 * naming the file and the problem, never key material; the old keys stay
 * and the same broken file is not reported again until it changes. */
int cm_auth_reload(cm_auth *a, int force, char *err, size_t errlen);

/* the JWKS counters; all zero without a JWKS. */
void cm_auth_jwks_stats_get(cm_auth *a, cm_auth_jwks_stats *out);

cm_auth_mode cm_auth_get_mode(const cm_auth *a);

/* checks one call's credentials and fills *out. in mode required:
 * authorization must be "Bearer <token>" (scheme in any case) with a token
 * whose alg is accepted and signature valid, exp present and not passed,
 * nbf (if present) reached — both with the configured leeway — iss and aud
 * matching when configured, a valid `tid`, an optional string `sub`,
 * `roles` (optional) as an array of strings or one space-separated string,
 * and `merchant_id` / `channel_id`, required with the roles "merchant" /
 * "channel" (the only merchant or channel such a caller may see).
 * when x_tenant_id is given (not NULL, not "") it must equal tid, except
 * for a service token (tid "*", role "service"), whose tenant is
 * x_tenant_id and which without one is refused. in mode
 * off the tenant is x_tenant_id alone and authorization is ignored.
 * returns 0, CM_EAUTH (missing or invalid credentials) or CM_EPERM (valid
 * token, other tenant); on failure *out is zeroed and why (may be NULL)
 * gets a short lower-case reason fit for a log line, never the token. */
int cm_auth_verify(const cm_auth *a, const char *authorization, const char *x_tenant_id,
                   cm_auth_principal *out, char *why, size_t whylen);

/* 1 when p holds role (exact match) or p->auth_off is set, else 0. */
int cm_auth_has_role(const cm_auth_principal *p, const char *role);

#endif
