#include "cm_auth.h"
#include "cm_err.h"
#include "cm_file.h"
#include "cm_id.h"

#include <errno.h>
#include <jansson.h>
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define AUTH_PEM_MAX (64 * 1024)
#define AUTH_HEADER_MAX 1024 /* decoded JOSE header bytes */
#define AUTH_LEEWAY_MAX 86400

struct cm_auth {
    cm_auth_mode mode;
    unsigned char *secret; /* NULL: HS256 refused */
    size_t secret_len;
    unsigned char *pem; /* NULL: RS256 refused */
    size_t pem_len;
    char *issuer;
    char *audience;
    int leeway_s;
};

int cm_auth_mode_parse(const char *s, cm_auth_mode *out)
{
    if (s && strcmp(s, "off") == 0) {
        *out = CM_AUTH_OFF;
        return 0;
    }
    if (s && strcmp(s, "required") == 0) {
        *out = CM_AUTH_REQUIRED;
        return 0;
    }
    return CM_EINVAL;
}

int cm_auth_tenant_valid(const char *s)
{
    if (!s)
        return 0;
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        if (!ok || n >= CM_AUTH_TENANT_MAX)
            return 0;
    }
    return n > 0;
}

static char *dup_or_null(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

static int read_small_file(const char *path, unsigned char **out, size_t *outlen, char *err,
                           size_t errlen)
{
    char *buf;
    int rc = cm_file_read(path, AUTH_PEM_MAX, &buf, outlen);
    if (rc == CM_ENOMEM) {
        cm_err_set(err, errlen, "rs256 public key: out of memory");
        return rc;
    }
    if (rc) {
        cm_err_set(err, errlen, "rs256 public key: cannot read \"%s\": %s", path,
                   errno == EFBIG ? "larger than 64 KiB" : strerror(errno));
        return CM_EIO;
    }
    *out = (unsigned char *)buf;
    return 0;
}

/* loads the key the way libjwt will at verify time (PEM_read_bio_PUBKEY), so
 * a key that passes here also works there */
static int check_rsa_public_key(const unsigned char *pem, size_t len, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio) {
        cm_err_set(err, errlen, "rs256 public key: out of memory");
        return CM_ENOMEM;
    }
    EVP_PKEY *pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    /* leave no stale errors in this thread's queue for the next user */
    ERR_clear_error();
    if (!pkey) {
        cm_err_set(err, errlen, "rs256 public key: not a PEM \"PUBLIC KEY\"");
        return CM_EINVAL;
    }
    int rc = 0;
    if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
        cm_err_set(err, errlen, "rs256 public key: not an RSA key");
        rc = CM_EINVAL;
    } else if (EVP_PKEY_get_bits(pkey) < 2048) {
        cm_err_set(err, errlen, "rs256 public key: %d-bit RSA is too weak, need at least 2048",
                   EVP_PKEY_get_bits(pkey));
        rc = CM_EINVAL;
    }
    EVP_PKEY_free(pkey);
    return rc;
}

int cm_auth_new(const cm_auth_settings *s, cm_auth **out, char *err, size_t errlen)
{
    if (!s || !out) {
        cm_err_set(err, errlen, "auth: no settings");
        return CM_EINVAL;
    }
    if (s->mode != CM_AUTH_OFF && s->mode != CM_AUTH_REQUIRED) {
        cm_err_set(err, errlen, "auth: unknown mode %d", (int)s->mode);
        return CM_EINVAL;
    }
    if (s->leeway_s < 0 || s->leeway_s > AUTH_LEEWAY_MAX) {
        cm_err_set(err, errlen, "auth: leeway must be between 0 and %d seconds, got %d",
                   AUTH_LEEWAY_MAX, s->leeway_s);
        return CM_EINVAL;
    }
    if (s->hs256_secret && strlen(s->hs256_secret) < CM_AUTH_HS256_MIN_SECRET) {
        cm_err_set(err, errlen, "hs256 secret: must be at least %d bytes, got %zu",
                   CM_AUTH_HS256_MIN_SECRET, strlen(s->hs256_secret));
        return CM_EINVAL;
    }

    cm_auth *a = calloc(1, sizeof *a);
    if (!a) {
        cm_err_set(err, errlen, "auth: out of memory");
        return CM_ENOMEM;
    }
    a->mode = s->mode;
    a->leeway_s = s->leeway_s;

    int rc = 0;
    if (s->rs256_public_key_pem) {
        a->pem_len = strlen(s->rs256_public_key_pem);
        a->pem = (unsigned char *)dup_or_null(s->rs256_public_key_pem);
        if (!a->pem)
            rc = CM_ENOMEM;
    } else if (s->rs256_public_key_file) {
        rc = read_small_file(s->rs256_public_key_file, &a->pem, &a->pem_len, err, errlen);
    }
    if (rc == 0 && a->pem)
        rc = check_rsa_public_key(a->pem, a->pem_len, err, errlen);

    if (rc == 0 && s->hs256_secret) {
        a->secret_len = strlen(s->hs256_secret);
        a->secret = (unsigned char *)dup_or_null(s->hs256_secret);
        if (!a->secret)
            rc = CM_ENOMEM;
    }
    if (rc == 0 && s->issuer && !(a->issuer = dup_or_null(s->issuer)))
        rc = CM_ENOMEM;
    if (rc == 0 && s->audience && !(a->audience = dup_or_null(s->audience)))
        rc = CM_ENOMEM;
    if (rc == CM_ENOMEM)
        cm_err_set(err, errlen, "auth: out of memory");

    if (rc == 0 && a->mode == CM_AUTH_REQUIRED && !a->secret && !a->pem) {
        cm_err_set(err, errlen, "auth: mode required needs an hs256 secret or an rs256 public key");
        rc = CM_EINVAL;
    }
    if (rc != 0) {
        cm_auth_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

void cm_auth_free(cm_auth *a)
{
    if (!a)
        return;
    if (a->secret) {
        /* do not leave the shared secret in freed heap */
        volatile unsigned char *p = a->secret;
        for (size_t i = 0; i < a->secret_len; i++)
            p[i] = 0;
    }
    free(a->secret);
    free(a->pem);
    free(a->issuer);
    free(a->audience);
    free(a);
}

cm_auth_mode cm_auth_get_mode(const cm_auth *a)
{
    return a->mode;
}

static int fail(cm_auth_principal *out, char *why, size_t whylen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int fail(cm_auth_principal *out, char *why, size_t whylen, int rc, const char *fmt, ...)
{
    memset(out, 0, sizeof *out);
    if (why && whylen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* unpadded base64url (RFC 7515 section 2). returns decoded length or -1. */
static long b64url_decode(const char *s, size_t len, unsigned char *out, size_t cap)
{
    if (len % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return (long)o;
}

/* the alg named in the token's own header. libjwt only reports it after a
 * keyed decode, but the key has to be chosen from it first. */
static jwt_alg_t header_alg(const char *token, size_t head_len, char *name, size_t namelen)
{
    unsigned char buf[AUTH_HEADER_MAX + 1];
    long n = b64url_decode(token, head_len, buf, AUTH_HEADER_MAX);
    snprintf(name, namelen, "?");
    if (n < 0)
        return JWT_ALG_INVAL;
    json_t *h = json_loadb((const char *)buf, (size_t)n, 0, NULL);
    if (!h)
        return JWT_ALG_INVAL;
    jwt_alg_t alg = JWT_ALG_INVAL;
    json_t *v = json_is_object(h) ? json_object_get(h, "alg") : NULL;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        snprintf(name, namelen, "%s", s);
        if (strcmp(s, "HS256") == 0)
            alg = JWT_ALG_HS256;
        else if (strcmp(s, "RS256") == 0)
            alg = JWT_ALG_RS256;
        else if (strcasecmp(s, "none") == 0)
            alg = JWT_ALG_NONE;
    }
    json_decref(h);
    return alg;
}

/* "Bearer <token>": points *tok at the token inside the header. */
static int bearer_token(const char *h, const char **tok, size_t *toklen)
{
    if (!h)
        return -1;
    while (*h == ' ' || *h == '\t')
        h++;
    if (strncasecmp(h, "bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
        return -1;
    h += 6;
    while (*h == ' ' || *h == '\t')
        h++;
    size_t n = 0;
    while (h[n] && h[n] != ' ' && h[n] != '\t')
        n++;
    for (size_t i = n; h[i]; i++)
        if (h[i] != ' ' && h[i] != '\t')
            return -1;
    if (n == 0)
        return -1;
    *tok = h;
    *toklen = n;
    return 0;
}

/* a NumericDate claim: 1 and *out when present, 0 when absent, -1 when it is
 * not a number */
static int claim_time(json_t *claims, const char *name, int64_t *out)
{
    json_t *v = json_object_get(claims, name);
    if (!v)
        return 0;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d > -9.2e18 && d < 9.2e18))
            return -1;
        *out = (int64_t)d;
        return 1;
    }
    return -1;
}

static int audience_matches(json_t *aud, const char *want)
{
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    if (json_is_array(aud)) {
        size_t i;
        json_t *v;
        json_array_foreach(aud, i, v)
        {
            if (json_is_string(v) && strcmp(json_string_value(v), want) == 0)
                return 1;
        }
    }
    return 0;
}

static int add_role(cm_auth_principal *p, const char *r, size_t len)
{
    if (len == 0)
        return 0;
    if (p->nroles >= CM_AUTH_ROLES_MAX || len > CM_AUTH_ROLE_MAX)
        return -1;
    memcpy(p->roles[p->nroles], r, len);
    p->roles[p->nroles][len] = '\0';
    p->nroles++;
    return 0;
}

static int read_roles(json_t *claims, cm_auth_principal *p)
{
    json_t *v = json_object_get(claims, "roles");
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        while (*s) {
            size_t n = strcspn(s, " ");
            if (add_role(p, s, n) != 0)
                return -1;
            s += n;
            s += strspn(s, " ");
        }
        return 0;
    }
    if (!json_is_array(v))
        return -1;
    size_t i;
    json_t *r;
    json_array_foreach(v, i, r)
    {
        if (!json_is_string(r) || json_string_length(r) == 0)
            return -1;
        if (add_role(p, json_string_value(r), json_string_length(r)) != 0)
            return -1;
    }
    return 0;
}

/* everything after the signature check: times, iss, aud, tid, sub, roles */
static int check_claims(const cm_auth *a, json_t *claims, const char *x_tenant_id,
                        cm_auth_principal *out, char *why, size_t whylen)
{
    int64_t now = (int64_t)time(NULL), exp = 0, nbf = 0;
    int has = claim_time(claims, "exp", &exp);
    if (has < 0)
        return fail(out, why, whylen, CM_EAUTH, "token exp is not a number");
    if (has == 0)
        return fail(out, why, whylen, CM_EAUTH, "token has no exp");
    /* RFC 7519: valid only before exp */
    if (now - a->leeway_s >= exp)
        return fail(out, why, whylen, CM_EAUTH, "token expired");
    has = claim_time(claims, "nbf", &nbf);
    if (has < 0)
        return fail(out, why, whylen, CM_EAUTH, "token nbf is not a number");
    if (has > 0 && now + a->leeway_s < nbf)
        return fail(out, why, whylen, CM_EAUTH, "token not valid yet");

    if (a->issuer) {
        json_t *iss = json_object_get(claims, "iss");
        if (!json_is_string(iss) || strcmp(json_string_value(iss), a->issuer) != 0)
            return fail(out, why, whylen, CM_EAUTH, "token issuer is not accepted");
    }
    if (a->audience && !audience_matches(json_object_get(claims, "aud"), a->audience))
        return fail(out, why, whylen, CM_EAUTH, "token audience is not accepted");

    json_t *tid = json_object_get(claims, "tid");
    if (!tid)
        return fail(out, why, whylen, CM_EAUTH, "token has no tid");
    if (!json_is_string(tid) || !cm_auth_tenant_valid(json_string_value(tid)))
        return fail(out, why, whylen, CM_EAUTH, "token tid is not a valid tenant id");

    json_t *sub = json_object_get(claims, "sub");
    if (sub && !(json_is_string(sub) && json_string_length(sub) <= CM_AUTH_SUBJECT_MAX))
        return fail(out, why, whylen, CM_EAUTH, "token sub must be a string of at most %d bytes",
                    CM_AUTH_SUBJECT_MAX);

    memset(out, 0, sizeof *out);
    if (read_roles(claims, out) != 0)
        return fail(out, why, whylen, CM_EAUTH,
                    "token roles must be up to %d strings of 1..%d bytes", CM_AUTH_ROLES_MAX,
                    CM_AUTH_ROLE_MAX);

    static const struct {
        const char *role, *claim;
        size_t off;
    } scopes[] = {
        {"merchant", "merchant_id", offsetof(cm_auth_principal, merchant)},
        {"channel", "channel_id", offsetof(cm_auth_principal, channel)},
    };
    for (size_t i = 0; i < sizeof scopes / sizeof scopes[0]; i++) {
        json_t *v = json_object_get(claims, scopes[i].claim);
        if (!v) {
            if (cm_auth_has_role(out, scopes[i].role))
                return fail(out, why, whylen, CM_EAUTH, "token has role %s but no %s",
                            scopes[i].role, scopes[i].claim);
            continue;
        }
        if (!json_is_string(v) || !cm_id_key_valid(json_string_value(v), CM_AUTH_SCOPE_MAX))
            return fail(out, why, whylen, CM_EAUTH,
                        "token %s must be 1..%d characters of [A-Za-z0-9._:-]", scopes[i].claim,
                        CM_AUTH_SCOPE_MAX);
        snprintf((char *)out + scopes[i].off, CM_AUTH_SCOPE_MAX + 1, "%s", json_string_value(v));
    }

    const char *t = json_string_value(tid);
    if (x_tenant_id && *x_tenant_id && strcmp(x_tenant_id, t) != 0)
        return fail(out, why, whylen, CM_EPERM, "x-tenant-id does not match the token tenant");

    /* lengths were checked above */
    snprintf(out->tenant, sizeof out->tenant, "%s", t);
    if (sub)
        snprintf(out->subject, sizeof out->subject, "%s", json_string_value(sub));
    return 0;
}

int cm_auth_verify(const cm_auth *a, const char *authorization, const char *x_tenant_id,
                   cm_auth_principal *out, char *why, size_t whylen)
{
    if (why && whylen > 0)
        why[0] = '\0';
    if (!a || !out)
        return CM_EINVAL;

    if (a->mode == CM_AUTH_OFF) {
        if (!x_tenant_id || !*x_tenant_id)
            return fail(out, why, whylen, CM_EAUTH, "missing x-tenant-id");
        if (!cm_auth_tenant_valid(x_tenant_id))
            return fail(out, why, whylen, CM_EAUTH, "x-tenant-id is not a valid tenant id");
        memset(out, 0, sizeof *out);
        snprintf(out->tenant, sizeof out->tenant, "%s", x_tenant_id);
        out->auth_off = 1;
        return 0;
    }

    const char *t;
    size_t tlen;
    if (bearer_token(authorization, &t, &tlen) != 0)
        return fail(out, why, whylen, CM_EAUTH, "missing bearer token");
    if (tlen > CM_AUTH_TOKEN_MAX)
        return fail(out, why, whylen, CM_EAUTH, "bearer token longer than %d bytes",
                    CM_AUTH_TOKEN_MAX);
    char token[CM_AUTH_TOKEN_MAX + 1];
    memcpy(token, t, tlen);
    token[tlen] = '\0';

    const char *dot1 = strchr(token, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot1 || !dot2 || strchr(dot2 + 1, '.') || dot2[1] == '\0')
        return fail(out, why, whylen, CM_EAUTH, "malformed token");

    char algname[16];
    jwt_alg_t alg = header_alg(token, (size_t)(dot1 - token), algname, sizeof algname);
    const unsigned char *key = NULL;
    size_t keylen = 0;
    if (alg == JWT_ALG_NONE)
        return fail(out, why, whylen, CM_EAUTH, "unsigned token (alg none) refused");
    if (alg == JWT_ALG_HS256 && a->secret) {
        key = a->secret;
        keylen = a->secret_len;
    } else if (alg == JWT_ALG_RS256 && a->pem) {
        key = a->pem;
        keylen = a->pem_len;
    } else {
        return fail(out, why, whylen, CM_EAUTH, "token alg %s is not accepted", algname);
    }

    jwt_t *j = NULL;
    if (jwt_decode(&j, token, key, (int)keylen) != 0 || !j) {
        jwt_free(j);
        ERR_clear_error();
        return fail(out, why, whylen, CM_EAUTH, "token signature or encoding is invalid");
    }
    /* belt and braces: what libjwt verified is what we chose the key for */
    if (jwt_get_alg(j) != alg) {
        jwt_free(j);
        return fail(out, why, whylen, CM_EAUTH, "token alg changed during decoding");
    }
    char *cj = jwt_get_grants_json(j, NULL);
    jwt_free(j);
    json_t *claims = cj ? json_loads(cj, 0, NULL) : NULL;
    free(cj);
    if (!json_is_object(claims)) {
        json_decref(claims);
        return fail(out, why, whylen, CM_EAUTH, "token claims are not a json object");
    }
    int rc = check_claims(a, claims, x_tenant_id, out, why, whylen);
    json_decref(claims);
    return rc;
}

int cm_auth_has_role(const cm_auth_principal *p, const char *role)
{
    if (!p || !role)
        return 0;
    if (p->auth_off)
        return 1;
    for (int i = 0; i < p->nroles && i < CM_AUTH_ROLES_MAX; i++)
        if (strcmp(p->roles[i], role) == 0)
            return 1;
    return 0;
}
