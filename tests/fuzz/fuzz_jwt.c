/*
 * cm_auth_verify with an HS256 verifier. the first byte picks the mode:
 *   bit 0 clear: the rest is the bearer token as sent ("Bearer " added), so
 *          the token splitting, base64url, the header's alg and libjwt's
 *          decoding are fuzzed;
 *   bit 0 set:   the rest is "<header json>\n<claims json>", base64url
 *          encoded and signed validly with the verifier's secret, so the
 *          claim checks behind the signature are fuzzed too.
 * bit 1 sends x-tenant-id "acme" beside the token.
 * invariants: success fills a valid tenant and at most CM_AUTH_ROLES_MAX
 * roles with no reason; failure is CM_EAUTH or CM_EPERM with a reason and
 * the principal zeroed.
 */
#include "cm_auth.h"
#include "cm_err.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SECRET "fuzz-secret-fuzz-secret-fuzz-secret-0123"

static cm_auth *verifier(void)
{
    static cm_auth *a;
    if (!a) {
        cm_auth_settings s = {.mode = CM_AUTH_REQUIRED, .hs256_secret = SECRET, .leeway_s = 30};
        char err[256];
        if (cm_auth_new(&s, &a, err, sizeof err) != 0) {
            fprintf(stderr, "fuzz_jwt: %s\n", err);
            abort();
        }
    }
    return a;
}

/* base64url without padding of in[0..n) at out; the length written */
static size_t b64url(const unsigned char *in, size_t n, char *out)
{
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    for (int i = 0; i < len; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    out[len] = '\0';
    return (size_t)len;
}

/* "Bearer <b64(header)>.<b64(claims)>.<signature>", or NULL */
static char *signed_token(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t hl = nl ? (size_t)(nl - data) : size;
    const uint8_t *claims = nl ? nl + 1 : data + size;
    size_t cl = nl ? size - hl - 1 : 0;
    char *t = malloc(16 + 4 * (hl + cl + 32) / 3 + 64);
    if (!t)
        return NULL;
    size_t o = (size_t)snprintf(t, 8, "Bearer ");
    size_t start = o;
    o += b64url(data, hl, t + o);
    t[o++] = '.';
    o += b64url(claims, cl, t + o);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)t + start, o - start,
         mac, &maclen);
    t[o++] = '.';
    b64url(mac, maclen, t + o);
    return t;
}

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_jwt: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int mode = data[0];
    char *authz;
    if (mode & 1) {
        authz = signed_token(data + 1, size - 1);
    } else {
        authz = malloc(size + 7);
        if (authz) {
            memcpy(authz, "Bearer ", 7);
            memcpy(authz + 7, data + 1, size - 1);
            authz[size + 6] = '\0';
        }
    }
    if (!authz)
        return 0;
    cm_auth_principal p;
    char why[128];
    int rc = cm_auth_verify(verifier(), authz, (mode & 2) ? "acme" : NULL, &p, why, sizeof why);
    if (rc == 0) {
        if (!cm_auth_tenant_valid(p.tenant) || p.nroles < 0 || p.nroles > CM_AUTH_ROLES_MAX ||
            why[0] || p.auth_off)
            broken("accepted token gave an invalid principal");
        if ((mode & 2) && strcmp(p.tenant, "acme") != 0)
            broken("accepted a token of another tenant than x-tenant-id");
        for (int i = 0; i < p.nroles; i++)
            if (!memchr(p.roles[i], '\0', sizeof p.roles[i]) || !p.roles[i][0])
                broken("a role is empty or not terminated");
    } else {
        static const cm_auth_principal zero;
        if ((rc != CM_EAUTH && rc != CM_EPERM) || !why[0] || memcmp(&p, &zero, sizeof p) != 0)
            broken("refused without CM_EAUTH/CM_EPERM, a reason, or a zeroed principal");
    }
    free(authz);
    return 0;
}
