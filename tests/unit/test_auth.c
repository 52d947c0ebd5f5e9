#include "cm_auth.h"
#include "cm_err.h"

#include <check.h>
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SECRET "test-secret-0123456789abcdef0123456789"
#define OTHER_SECRET "other-secret-0123456789abcdef012345678"

/* rsa keys are slow to make: two pairs per process, made before the tests
 * fork, read-only afterwards */
static char *rsa_priv, *rsa_pub, *rsa2_priv, *rsa2_pub;

/* a per-test verifier and principal, freed by the teardown */
static cm_auth *auth;
static cm_auth_principal who;
static char why[256];

static char *bio_string(BIO *b)
{
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    ck_assert_int_gt(n, 0);
    char *s = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(s);
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    return s;
}

static void make_rsa(unsigned bits, char **priv, char **pub)
{
    EVP_PKEY *pk = EVP_RSA_gen(bits);
    ck_assert_ptr_nonnull(pk);
    BIO *b = BIO_new(BIO_s_mem());
    ck_assert_int_eq(PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL), 1);
    *priv = bio_string(b);
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    ck_assert_int_eq(PEM_write_bio_PUBKEY(b, pk), 1);
    *pub = bio_string(b);
    BIO_free(b);
    EVP_PKEY_free(pk);
}

static void rsa_setup(void)
{
    make_rsa(2048, &rsa_priv, &rsa_pub);
    make_rsa(2048, &rsa2_priv, &rsa2_pub);
}

static void rsa_teardown(void)
{
    free(rsa_priv);
    free(rsa_pub);
    free(rsa2_priv);
    free(rsa2_pub);
}

static void verifier_teardown(void)
{
    cm_auth_free(auth);
    auth = NULL;
}

static void new_verifier(const cm_auth_settings *s)
{
    char err[256] = "";
    cm_auth_free(auth);
    auth = NULL;
    ck_assert_msg(cm_auth_new(s, &auth, err, sizeof err) == 0, "cm_auth_new: %s", err);
}

static void hs_verifier(void)
{
    cm_auth_settings s = {.mode = CM_AUTH_REQUIRED, .hs256_secret = SECRET, .leeway_s = 30};
    new_verifier(&s);
}

/* signs claims (json object text) with alg; JWT_ALG_NONE makes an unsigned
 * token. the caller frees the result. */
static char *sign(jwt_alg_t alg, const char *key, const char *claims)
{
    jwt_t *j = NULL;
    ck_assert_int_eq(jwt_new(&j), 0);
    ck_assert_int_eq(jwt_add_grants_json(j, claims), 0);
    if (alg != JWT_ALG_NONE)
        ck_assert_int_eq(jwt_set_alg(j, alg, (const unsigned char *)key, (int)strlen(key)), 0);
    char *t = jwt_encode_str(j);
    ck_assert_ptr_nonnull(t);
    jwt_free(j);
    return t;
}

/* standard claims: tenant acme, subject u-1, expiring in 5 minutes, plus
 * extra members (text starting with a comma, or "") */
static char *std_claims(char *buf, size_t len, const char *extra)
{
    snprintf(buf, len, "{\"tid\":\"acme\",\"sub\":\"u-1\",\"exp\":%lld%s}",
             (long long)time(NULL) + 300, extra);
    return buf;
}

/* runs cm_auth_verify with "Bearer <token>" */
static int verify_token(const char *token, const char *xt)
{
    char h[CM_AUTH_TOKEN_MAX + 64];
    snprintf(h, sizeof h, "Bearer %s", token);
    return cm_auth_verify(auth, h, xt, &who, why, sizeof why);
}

static int verify_hs(const char *claims, const char *xt)
{
    char *t = sign(JWT_ALG_HS256, SECRET, claims);
    int rc = verify_token(t, xt);
    free(t);
    return rc;
}

START_TEST(hs256_valid_token_yields_principal)
{
    hs_verifier();
    char c[512];
    std_claims(c, sizeof c, ",\"roles\":[\"order:write\",\"order:read\"]");
    ck_assert_int_eq(verify_hs(c, NULL), 0);
    ck_assert_str_eq(who.tenant, "acme");
    ck_assert_str_eq(who.subject, "u-1");
    ck_assert_int_eq(who.nroles, 2);
    ck_assert_str_eq(who.roles[0], "order:write");
    ck_assert_str_eq(who.roles[1], "order:read");
    ck_assert_int_eq(who.auth_off, 0);
    ck_assert_int_eq(cm_auth_has_role(&who, "order:read"), 1);
    ck_assert_int_eq(cm_auth_has_role(&who, "order"), 0);
    ck_assert_int_eq(cm_auth_has_role(&who, "settlement:admin"), 0);
    ck_assert_int_eq(cm_auth_get_mode(auth), CM_AUTH_REQUIRED);
}
END_TEST

START_TEST(hs256_expired_token_is_rejected)
{
    hs_verifier(); /* leeway 30 s */
    char c[256];
    snprintf(c, sizeof c, "{\"tid\":\"acme\",\"exp\":%lld}", (long long)time(NULL) - 120);
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "expired"));
    ck_assert_str_eq(who.tenant, "");
}
END_TEST

START_TEST(hs256_expiry_within_leeway_is_accepted)
{
    hs_verifier();
    char c[256];
    snprintf(c, sizeof c, "{\"tid\":\"acme\",\"exp\":%lld}", (long long)time(NULL) - 10);
    ck_assert_int_eq(verify_hs(c, NULL), 0);

    cm_auth_settings s = {.mode = CM_AUTH_REQUIRED, .hs256_secret = SECRET, .leeway_s = 0};
    new_verifier(&s);
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
}
END_TEST

START_TEST(hs256_token_without_exp_is_rejected)
{
    hs_verifier();
    ck_assert_int_eq(verify_hs("{\"tid\":\"acme\"}", NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "exp"));
    /* exp as a string is not a NumericDate */
    ck_assert_int_eq(verify_hs("{\"tid\":\"acme\",\"exp\":\"4102444800\"}", NULL), CM_EAUTH);
}
END_TEST

START_TEST(hs256_nbf_in_future_is_rejected)
{
    hs_verifier();
    char c[256];
    long long now = (long long)time(NULL);
    snprintf(c, sizeof c, "{\"tid\":\"acme\",\"exp\":%lld,\"nbf\":%lld}", now + 600, now + 300);
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "not valid yet"));
    snprintf(c, sizeof c, "{\"tid\":\"acme\",\"exp\":%lld,\"nbf\":%lld}", now + 600, now + 10);
    ck_assert_int_eq(verify_hs(c, NULL), 0);
}
END_TEST

START_TEST(hs256_wrong_secret_is_rejected)
{
    hs_verifier();
    char c[256];
    char *t = sign(JWT_ALG_HS256, OTHER_SECRET, std_claims(c, sizeof c, ""));
    ck_assert_int_eq(verify_token(t, NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "signature"));
    /* the reason never echoes the token */
    ck_assert_ptr_null(strstr(why, strrchr(t, '.') + 1));
    free(t);
}
END_TEST

START_TEST(hs256_tampered_payload_is_rejected)
{
    hs_verifier();
    char c[256], c2[256];
    char *good = sign(JWT_ALG_HS256, SECRET, std_claims(c, sizeof c, ""));
    snprintf(c2, sizeof c2, "{\"tid\":\"evil\",\"exp\":%lld}", (long long)time(NULL) + 300);
    char *evil = sign(JWT_ALG_HS256, OTHER_SECRET, c2);
    /* evil's header and payload with good's signature */
    char spliced[2048];
    size_t head = (size_t)(strrchr(evil, '.') - evil);
    snprintf(spliced, sizeof spliced, "%.*s%s", (int)head, evil, strrchr(good, '.'));
    ck_assert_int_eq(verify_token(spliced, NULL), CM_EAUTH);
    ck_assert_int_eq(verify_token(good, NULL), 0);
    free(good);
    free(evil);
}
END_TEST

START_TEST(alg_none_is_rejected)
{
    hs_verifier();
    char c[256];
    char *t = sign(JWT_ALG_NONE, NULL, std_claims(c, sizeof c, ""));
    ck_assert_int_eq(verify_token(t, NULL), CM_EAUTH);
    /* with something in the signature slot it is refused for its alg */
    char forged[1024];
    snprintf(forged, sizeof forged, "%sAAAA", t);
    ck_assert_int_eq(verify_token(forged, NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "none"));
    ck_assert_str_eq(who.tenant, "");
    free(t);
}
END_TEST

START_TEST(alg_hs256_keyed_with_rsa_public_key_is_rejected)
{
    /* the classic confusion: an RS256 verifier must not treat its public
     * key as an HMAC secret */
    cm_auth_settings s = {.mode = CM_AUTH_REQUIRED, .rs256_public_key_pem = rsa_pub};
    new_verifier(&s);
    char c[256];
    char *t = sign(JWT_ALG_HS256, rsa_pub, std_claims(c, sizeof c, ""));
    ck_assert_int_eq(verify_token(t, NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "HS256"));
    free(t);
}
END_TEST

START_TEST(alg_rs256_refused_by_hs256_only_verifier)
{
    hs_verifier();
    char c[256];
    char *t = sign(JWT_ALG_RS256, rsa_priv, std_claims(c, sizeof c, ""));
    ck_assert_int_eq(verify_token(t, NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "RS256"));
    free(t);
}
END_TEST

START_TEST(rs256_valid_token_yields_principal)
{
    cm_auth_settings s = {
        .mode = CM_AUTH_REQUIRED, .hs256_secret = SECRET, .rs256_public_key_pem = rsa_pub};
    new_verifier(&s);
    char c[256];
    char *t = sign(JWT_ALG_RS256, rsa_priv, std_claims(c, sizeof c, ",\"roles\":\"finance\""));
    ck_assert_int_eq(verify_token(t, "acme"), 0);
    ck_assert_str_eq(who.tenant, "acme");
    ck_assert_int_eq(cm_auth_has_role(&who, "finance"), 1);
    free(t);
    /* both algorithms configured: HS256 still works */
    ck_assert_int_eq(verify_hs(std_claims(c, sizeof c, ""), NULL), 0);
}
END_TEST

START_TEST(rs256_other_key_is_rejected)
{
    cm_auth_settings s = {.mode = CM_AUTH_REQUIRED, .rs256_public_key_pem = rsa_pub};
    new_verifier(&s);
    char c[256];
    char *t = sign(JWT_ALG_RS256, rsa2_priv, std_claims(c, sizeof c, ""));
    ck_assert_int_eq(verify_token(t, NULL), CM_EAUTH);
    free(t);
}
END_TEST

START_TEST(rs256_public_key_file_is_read)
{
    char path[] = "/tmp/test_auth_pubXXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, rsa_pub, strlen(rsa_pub)), (ssize_t)strlen(rsa_pub));
    close(fd);
    cm_auth_settings s = {.mode = CM_AUTH_REQUIRED, .rs256_public_key_file = path};
    new_verifier(&s);
    unlink(path);
    char c[256];
    char *t = sign(JWT_ALG_RS256, rsa_priv, std_claims(c, sizeof c, ""));
    ck_assert_int_eq(verify_token(t, NULL), 0);
    free(t);
}
END_TEST

START_TEST(x_tenant_mismatch_is_permission_denied)
{
    hs_verifier();
    char c[256];
    std_claims(c, sizeof c, "");
    ck_assert_int_eq(verify_hs(c, "other"), CM_EPERM);
    ck_assert_ptr_nonnull(strstr(why, "x-tenant-id"));
    ck_assert_str_eq(who.tenant, "");
    ck_assert_int_eq(verify_hs(c, "acme"), 0);
    ck_assert_int_eq(verify_hs(c, ""), 0);
    ck_assert_str_eq(who.tenant, "acme");
}
END_TEST

START_TEST(missing_or_bad_tid_is_rejected)
{
    hs_verifier();
    char c[256];
    long long exp = (long long)time(NULL) + 300;
    snprintf(c, sizeof c, "{\"sub\":\"u-1\",\"exp\":%lld}", exp);
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "tid"));
    /* a missing tid is not made up from the header */
    ck_assert_int_eq(verify_hs(c, "acme"), CM_EAUTH);
    snprintf(c, sizeof c, "{\"tid\":\"a b\",\"exp\":%lld}", exp);
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    snprintf(c, sizeof c, "{\"tid\":42,\"exp\":%lld}", exp);
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    snprintf(c, sizeof c, "{\"tid\":\"\",\"exp\":%lld}", exp);
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
}
END_TEST

START_TEST(roles_space_separated_string_is_split)
{
    hs_verifier();
    char c[256];
    std_claims(c, sizeof c, ",\"roles\":\" admin  ops reader \"");
    ck_assert_int_eq(verify_hs(c, NULL), 0);
    ck_assert_int_eq(who.nroles, 3);
    ck_assert_str_eq(who.roles[0], "admin");
    ck_assert_str_eq(who.roles[1], "ops");
    ck_assert_str_eq(who.roles[2], "reader");
    ck_assert_int_eq(cm_auth_has_role(&who, "ops"), 1);
    ck_assert_int_eq(cm_auth_has_role(&who, "admin ops"), 0);
}
END_TEST

START_TEST(roles_absent_gives_no_roles)
{
    hs_verifier();
    char c[256];
    ck_assert_int_eq(verify_hs(std_claims(c, sizeof c, ""), NULL), 0);
    ck_assert_int_eq(who.nroles, 0);
    ck_assert_int_eq(cm_auth_has_role(&who, "admin"), 0);
}
END_TEST

START_TEST(scoped_roles_need_their_claim)
{
    hs_verifier();
    char c[512];
    std_claims(c, sizeof c, ",\"roles\":\"merchant\",\"merchant_id\":\"m:1\"");
    ck_assert_int_eq(verify_hs(c, NULL), 0);
    ck_assert_str_eq(who.merchant, "m:1");
    ck_assert_str_eq(who.channel, "");
    std_claims(c, sizeof c, ",\"roles\":[\"channel\"],\"channel_id\":\"ch-9\"");
    ck_assert_int_eq(verify_hs(c, NULL), 0);
    ck_assert_str_eq(who.channel, "ch-9");
    /* the role without its claim, a bad claim: not a token we accept */
    std_claims(c, sizeof c, ",\"roles\":\"merchant\"");
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "merchant_id"));
    std_claims(c, sizeof c, ",\"roles\":\"channel\",\"channel_id\":7");
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    std_claims(c, sizeof c, ",\"roles\":\"merchant\",\"merchant_id\":\"a b\"");
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    /* a claim without the role is carried but grants nothing by itself */
    std_claims(c, sizeof c, ",\"merchant_id\":\"m-2\"");
    ck_assert_int_eq(verify_hs(c, NULL), 0);
    ck_assert_int_eq(cm_auth_has_role(&who, "merchant"), 0);
}
END_TEST

START_TEST(roles_malformed_or_too_many_are_rejected)
{
    hs_verifier();
    char c[1024], roles[512];
    std_claims(c, sizeof c, ",\"roles\":[\"a\",7]");
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    std_claims(c, sizeof c, ",\"roles\":{\"a\":1}");
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    std_claims(c, sizeof c,
               ",\"roles\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"");
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH); /* 64 bytes */

    size_t o = 0;
    o += (size_t)snprintf(roles + o, sizeof roles - o, ",\"roles\":[");
    for (int i = 0; i < CM_AUTH_ROLES_MAX; i++)
        o += (size_t)snprintf(roles + o, sizeof roles - o, "%s\"r%d\"", i ? "," : "", i);
    snprintf(roles + o, sizeof roles - o, "]");
    ck_assert_int_eq(verify_hs(std_claims(c, sizeof c, roles), NULL), 0);
    ck_assert_int_eq(who.nroles, CM_AUTH_ROLES_MAX);
    ck_assert_int_eq(cm_auth_has_role(&who, "r15"), 1);

    snprintf(roles + o, sizeof roles - o, ",\"r16\"]");
    ck_assert_int_eq(verify_hs(std_claims(c, sizeof c, roles), NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "roles"));
}
END_TEST

START_TEST(subject_must_be_a_string)
{
    hs_verifier();
    char c[256];
    snprintf(c, sizeof c, "{\"tid\":\"acme\",\"sub\":12,\"exp\":%lld}",
             (long long)time(NULL) + 300);
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    snprintf(c, sizeof c, "{\"tid\":\"acme\",\"exp\":%lld}", (long long)time(NULL) + 300);
    ck_assert_int_eq(verify_hs(c, NULL), 0);
    ck_assert_str_eq(who.subject, "");
}
END_TEST

START_TEST(issuer_and_audience_are_checked_when_configured)
{
    cm_auth_settings s = {.mode = CM_AUTH_REQUIRED,
                          .hs256_secret = SECRET,
                          .issuer = "https://idp.example",
                          .audience = "commerce"};
    new_verifier(&s);
    char c[512];
    std_claims(c, sizeof c, ",\"iss\":\"https://idp.example\",\"aud\":[\"x\",\"commerce\"]");
    ck_assert_int_eq(verify_hs(c, NULL), 0);
    std_claims(c, sizeof c, ",\"iss\":\"https://idp.example\",\"aud\":\"commerce\"");
    ck_assert_int_eq(verify_hs(c, NULL), 0);
    std_claims(c, sizeof c, ",\"iss\":\"https://evil.example\",\"aud\":\"commerce\"");
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "issuer"));
    std_claims(c, sizeof c, ",\"iss\":\"https://idp.example\"");
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "audience"));
    std_claims(c, sizeof c, ",\"iss\":\"https://idp.example\",\"aud\":[\"x\"]");
    ck_assert_int_eq(verify_hs(c, NULL), CM_EAUTH);

    /* not configured: not checked */
    hs_verifier();
    std_claims(c, sizeof c, ",\"iss\":\"anyone\",\"aud\":\"anything\"");
    ck_assert_int_eq(verify_hs(c, NULL), 0);
}
END_TEST

START_TEST(authorization_header_forms)
{
    hs_verifier();
    char c[256], h[1024];
    char *t = sign(JWT_ALG_HS256, SECRET, std_claims(c, sizeof c, ""));
    static const char *bad[] = {"", "Bearer", "Bearer ", "Basic dXNlcjpwdw==", "Token x.y.z"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(cm_auth_verify(auth, bad[i], NULL, &who, why, sizeof why) == CM_EAUTH,
                      "accepted \"%s\"", bad[i]);
        ck_assert_str_eq(why, "missing bearer token");
    }
    ck_assert_int_eq(cm_auth_verify(auth, NULL, "acme", &who, why, sizeof why), CM_EAUTH);

    snprintf(h, sizeof h, "bearer %s", t);
    ck_assert_int_eq(cm_auth_verify(auth, h, NULL, &who, why, sizeof why), 0);
    snprintf(h, sizeof h, "BEARER   %s  ", t);
    ck_assert_int_eq(cm_auth_verify(auth, h, NULL, &who, why, sizeof why), 0);
    snprintf(h, sizeof h, "Bearer %s extra", t);
    ck_assert_int_eq(cm_auth_verify(auth, h, NULL, &who, why, sizeof why), CM_EAUTH);
    snprintf(h, sizeof h, "Bearer%s", t);
    ck_assert_int_eq(cm_auth_verify(auth, h, NULL, &who, why, sizeof why), CM_EAUTH);
    ck_assert_int_eq(verify_token("not-a-jwt", NULL), CM_EAUTH);
    ck_assert_int_eq(verify_token("a.b.c.d", NULL), CM_EAUTH);
    ck_assert_int_eq(verify_token("!!!.e30.AAAA", NULL), CM_EAUTH);
    /* why may be omitted */
    ck_assert_int_eq(cm_auth_verify(auth, "", NULL, &who, NULL, 0), CM_EAUTH);
    free(t);
}
END_TEST

START_TEST(oversized_token_is_rejected)
{
    hs_verifier();
    char *big = malloc(CM_AUTH_TOKEN_MAX + 16);
    ck_assert_ptr_nonnull(big);
    memset(big, 'a', CM_AUTH_TOKEN_MAX + 15);
    big[CM_AUTH_TOKEN_MAX + 15] = '\0';
    big[10] = '.';
    big[20] = '.';
    ck_assert_int_eq(verify_token(big, NULL), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "longer"));
    free(big);
}
END_TEST

START_TEST(off_mode_trusts_x_tenant_id)
{
    cm_auth_settings s = {.mode = CM_AUTH_OFF};
    new_verifier(&s);
    ck_assert_int_eq(cm_auth_get_mode(auth), CM_AUTH_OFF);
    ck_assert_int_eq(cm_auth_verify(auth, "Bearer garbage", "shop-1", &who, why, sizeof why), 0);
    ck_assert_str_eq(who.tenant, "shop-1");
    ck_assert_str_eq(who.subject, "");
    ck_assert_int_eq(who.auth_off, 1);
    ck_assert_int_eq(cm_auth_has_role(&who, "anything"), 1);

    ck_assert_int_eq(cm_auth_verify(auth, NULL, NULL, &who, why, sizeof why), CM_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "x-tenant-id"));
    ck_assert_int_eq(cm_auth_verify(auth, NULL, "", &who, why, sizeof why), CM_EAUTH);
    ck_assert_int_eq(cm_auth_verify(auth, NULL, "shop 1", &who, why, sizeof why), CM_EAUTH);
    ck_assert_int_eq(who.auth_off, 0);
    ck_assert_int_eq(cm_auth_has_role(&who, "anything"), 0);
}
END_TEST

START_TEST(new_rejects_bad_settings)
{
    char err[256];
    cm_auth *a = NULL;
    cm_auth_settings s = {.mode = CM_AUTH_REQUIRED};
    ck_assert_int_eq(cm_auth_new(&s, &a, err, sizeof err), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "required"));

    s.hs256_secret = "short";
    ck_assert_int_eq(cm_auth_new(&s, &a, err, sizeof err), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "at least 32 bytes"));

    s.hs256_secret = NULL;
    s.rs256_public_key_pem = "-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n";
    ck_assert_int_eq(cm_auth_new(&s, &a, err, sizeof err), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "PUBLIC KEY"));

    /* a private key where the public one belongs is refused too */
    s.rs256_public_key_pem = rsa_priv;
    ck_assert_int_eq(cm_auth_new(&s, &a, err, sizeof err), CM_EINVAL);

    EVP_PKEY *ec = EVP_EC_gen("P-256");
    ck_assert_ptr_nonnull(ec);
    BIO *b = BIO_new(BIO_s_mem());
    ck_assert_int_eq(PEM_write_bio_PUBKEY(b, ec), 1);
    char *ecpem = bio_string(b);
    BIO_free(b);
    EVP_PKEY_free(ec);
    s.rs256_public_key_pem = ecpem;
    ck_assert_int_eq(cm_auth_new(&s, &a, err, sizeof err), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "not an RSA key"));
    free(ecpem);

    char *weak_priv, *weak_pub;
    make_rsa(1024, &weak_priv, &weak_pub);
    s.rs256_public_key_pem = weak_pub;
    ck_assert_int_eq(cm_auth_new(&s, &a, err, sizeof err), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "1024-bit"));
    free(weak_priv);
    free(weak_pub);

    s.rs256_public_key_pem = NULL;
    s.rs256_public_key_file = "/nonexistent/key.pem";
    ck_assert_int_eq(cm_auth_new(&s, &a, err, sizeof err), CM_EIO);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/key.pem"));

    s.rs256_public_key_file = NULL;
    s.hs256_secret = SECRET;
    s.leeway_s = -1;
    ck_assert_int_eq(cm_auth_new(&s, &a, err, sizeof err), CM_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "leeway"));

    ck_assert_ptr_null(a);
    ck_assert_int_eq(cm_auth_new(NULL, &a, err, sizeof err), CM_EINVAL);
}
END_TEST

START_TEST(tenant_id_charset_and_length)
{
    ck_assert_int_eq(cm_auth_tenant_valid("acme"), 1);
    ck_assert_int_eq(cm_auth_tenant_valid("Shop_1.eu-west"), 1);
    char t[80];
    memset(t, 'a', 64);
    t[64] = '\0';
    ck_assert_int_eq(cm_auth_tenant_valid(t), 1);
    t[64] = 'a';
    t[65] = '\0';
    ck_assert_int_eq(cm_auth_tenant_valid(t), 0);
    ck_assert_int_eq(cm_auth_tenant_valid(""), 0);
    ck_assert_int_eq(cm_auth_tenant_valid(NULL), 0);
    ck_assert_int_eq(cm_auth_tenant_valid("a/b"), 0);
    ck_assert_int_eq(cm_auth_tenant_valid("a b"), 0);
    ck_assert_int_eq(cm_auth_tenant_valid("caf\xc3\xa9"), 0);
    ck_assert_int_eq(cm_auth_tenant_valid("a\n"), 0);
}
END_TEST

START_TEST(mode_parse_accepts_off_and_required)
{
    cm_auth_mode m = CM_AUTH_REQUIRED;
    ck_assert_int_eq(cm_auth_mode_parse("off", &m), 0);
    ck_assert_int_eq(m, CM_AUTH_OFF);
    ck_assert_int_eq(cm_auth_mode_parse("required", &m), 0);
    ck_assert_int_eq(m, CM_AUTH_REQUIRED);
    ck_assert_int_eq(cm_auth_mode_parse("on", &m), CM_EINVAL);
    ck_assert_int_eq(cm_auth_mode_parse("OFF", &m), CM_EINVAL);
    ck_assert_int_eq(cm_auth_mode_parse(NULL, &m), CM_EINVAL);
    ck_assert_int_eq(m, CM_AUTH_REQUIRED);
}
END_TEST

/* ---- JWKS: keys by id, rotation, reload ---- */

static void b64url(const unsigned char *in, size_t n, char *out, size_t cap)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        int chars = i + 2 < n ? 4 : i + 1 < n ? 3 : 2;
        for (int c = 0; c < chars; c++) {
            ck_assert_uint_lt(o + 1, cap);
            out[o++] = a[(v >> (18 - 6 * c)) & 63];
        }
    }
    out[o] = '\0';
}

/* the JWK of a PEM public key: {"kty":"RSA","kid":kid,"n":..,"e":..} */
static void rsa_jwk(const char *pub, const char *kid, char *out, size_t cap)
{
    BIO *b = BIO_new_mem_buf(pub, -1);
    EVP_PKEY *pk = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    BIO_free(b);
    ck_assert_ptr_nonnull(pk);
    BIGNUM *n = NULL, *e = NULL;
    ck_assert_int_eq(EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &n), 1);
    ck_assert_int_eq(EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &e), 1);
    unsigned char nb[1024], eb[16];
    int nl = BN_bn2bin(n, nb), el = BN_bn2bin(e, eb);
    char ns[1400], es[32];
    b64url(nb, (size_t)nl, ns, sizeof ns);
    b64url(eb, (size_t)el, es, sizeof es);
    snprintf(out, cap,
             "{\"kty\":\"RSA\",\"use\":\"sig\",\"alg\":\"RS256\",\"kid\":\"%s\",\"n\":\"%s\",\"e\":"
             "\"%s\"}",
             kid, ns, es);
    BN_free(n);
    BN_free(e);
    EVP_PKEY_free(pk);
}

static void oct_jwk(const char *secret, const char *kid, char *out, size_t cap)
{
    char k[256];
    b64url((const unsigned char *)secret, strlen(secret), k, sizeof k);
    /* bounded: the tests' secrets and kids are short (-O3 checks the sizes) */
    snprintf(out, cap, "{\"kty\":\"oct\",\"kid\":\"%.32s\",\"k\":\"%.160s\"}", kid, k);
}

static char jwks_path[64];

/* replaces the JWKS file the way a secret update does: a new file renamed
 * over the old one (a new inode, so a same-size rewrite is seen too) */
static void write_jwks(const char *text)
{
    char tmp[80];
    snprintf(tmp, sizeof tmp, "%s.new", jwks_path);
    FILE *f = fopen(tmp, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(rename(tmp, jwks_path), 0);
}

static void jwks_setup(void)
{
    snprintf(jwks_path, sizeof jwks_path, "/tmp/test_auth_jwks.%d.json", (int)getpid());
}

static void jwks_teardown(void)
{
    cm_auth_free(auth);
    auth = NULL;
    unlink(jwks_path);
}

/* a JWKS of the given JWKs (NULL-terminated) */
static void jwks_of(const char *const *jwks)
{
    static char doc[16384];
    size_t o = (size_t)snprintf(doc, sizeof doc, "{\"keys\":[");
    for (size_t i = 0; jwks[i]; i++)
        o += (size_t)snprintf(doc + o, sizeof doc - o, "%s%s", i ? "," : "", jwks[i]);
    snprintf(doc + o, sizeof doc - o, "]}");
    write_jwks(doc);
}

/* signs claims with alg and key, kid in the header unless NULL */
static char *sign_kid(jwt_alg_t alg, const char *key, const char *kid, const char *claims)
{
    jwt_t *j = NULL;
    ck_assert_int_eq(jwt_new(&j), 0);
    ck_assert_int_eq(jwt_add_grants_json(j, claims), 0);
    if (kid)
        ck_assert_int_eq(jwt_add_header(j, "kid", kid), 0);
    ck_assert_int_eq(jwt_set_alg(j, alg, (const unsigned char *)key, (int)strlen(key)), 0);
    char *t = jwt_encode_str(j);
    ck_assert_ptr_nonnull(t);
    jwt_free(j);
    return t;
}

static int verify_kid(jwt_alg_t alg, const char *key, const char *kid)
{
    char c[256];
    char *t = sign_kid(alg, key, kid, std_claims(c, sizeof c, ""));
    int rc = verify_token(t, NULL);
    free(t);
    return rc;
}

static void jwks_verifier(void)
{
    cm_auth_settings s = {.mode = CM_AUTH_REQUIRED, .jwks_file = jwks_path};
    new_verifier(&s);
}

START_TEST(jwks_kid_selects_the_key)
{
    char k1[2048], k2[2048];
    rsa_jwk(rsa_pub, "k1", k1, sizeof k1);
    rsa_jwk(rsa2_pub, "k2", k2, sizeof k2);
    jwks_of((const char *[]){k1, k2, NULL});
    jwks_verifier();
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa_priv, "k1"), 0);
    ck_assert_str_eq(who.tenant, "acme");
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa2_priv, "k2"), 0);
    /* the right kid, the other key's signature */
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa_priv, "k2"), CM_EAUTH);
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa_priv, "k3"), CM_EAUTH);
    ck_assert_str_eq(why, "token kid is not in the jwks");
    /* two RS256 keys: a token without kid is not tried against either */
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa_priv, NULL), CM_EAUTH);
    ck_assert_str_eq(why, "token has no kid and the jwks has 2 RS256 keys");
    cm_auth_jwks_stats st;
    cm_auth_jwks_stats_get(auth, &st);
    ck_assert_int_eq(st.keys, 2);

    /* a kid that is not a short string is refused before any key is tried */
    char c[256];
    jwt_t *j = NULL;
    ck_assert_int_eq(jwt_new(&j), 0);
    ck_assert_int_eq(jwt_add_grants_json(j, std_claims(c, sizeof c, "")), 0);
    ck_assert_int_eq(jwt_add_header_int(j, "kid", 1), 0);
    ck_assert_int_eq(
        jwt_set_alg(j, JWT_ALG_RS256, (const unsigned char *)rsa_priv, (int)strlen(rsa_priv)), 0);
    char *t = jwt_encode_str(j);
    jwt_free(j);
    ck_assert_int_eq(verify_token(t, NULL), CM_EAUTH);
    ck_assert_str_eq(why, "token kid must be a string of 1..128 bytes");
    free(t);
    char longkid[200];
    memset(longkid, 'k', sizeof longkid - 1);
    longkid[sizeof longkid - 1] = '\0';
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa_priv, longkid), CM_EAUTH);
    ck_assert_str_eq(why, "token kid must be a string of 1..128 bytes");
}
END_TEST

START_TEST(jwks_single_key_and_oct_keys)
{
    char k1[2048], h1[256];
    rsa_jwk(rsa_pub, "k1", k1, sizeof k1);
    oct_jwk(SECRET, "h1", h1, sizeof h1);
    jwks_of((const char *[]){k1, h1, NULL});
    jwks_verifier();
    /* one key of the token's alg: no kid needed */
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa_priv, NULL), 0);
    ck_assert_int_eq(verify_kid(JWT_ALG_HS256, SECRET, NULL), 0);
    ck_assert_int_eq(verify_kid(JWT_ALG_HS256, SECRET, "h1"), 0);
    ck_assert_int_eq(verify_kid(JWT_ALG_HS256, OTHER_SECRET, "h1"), CM_EAUTH);
    /* an HS256 token naming the RSA key, "signed" with its public PEM */
    ck_assert_int_eq(verify_kid(JWT_ALG_HS256, rsa_pub, "k1"), CM_EAUTH);
    ck_assert_str_eq(why, "token alg HS256 does not match its key");
}
END_TEST

START_TEST(jwks_with_single_key_settings)
{
    /* the old knobs keep working beside a JWKS: tokens without kid use
     * them, tokens with one the JWKS */
    char k2[2048];
    rsa_jwk(rsa2_pub, "k2", k2, sizeof k2);
    jwks_of((const char *[]){k2, NULL});
    cm_auth_settings s = {
        .mode = CM_AUTH_REQUIRED, .rs256_public_key_pem = rsa_pub, .jwks_file = jwks_path};
    new_verifier(&s);
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa_priv, NULL), 0);
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa2_priv, "k2"), 0);
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa2_priv, NULL), CM_EAUTH);
}
END_TEST

START_TEST(jwks_rotation_reloads_without_restart)
{
    char k1[2048], k2[2048];
    rsa_jwk(rsa_pub, "k1", k1, sizeof k1);
    rsa_jwk(rsa2_pub, "k2", k2, sizeof k2);
    jwks_of((const char *[]){k1, NULL});
    jwks_verifier();
    char err[512] = "";
    ck_assert_int_eq(cm_auth_reload(auth, 0, err, sizeof err), 0); /* unchanged */
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa2_priv, "k2"), CM_EAUTH);

    /* rollover: both keys valid */
    jwks_of((const char *[]){k1, k2, NULL});
    ck_assert_int_eq(cm_auth_reload(auth, 0, err, sizeof err), 1);
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa_priv, "k1"), 0);
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa2_priv, "k2"), 0);

    /* a broken file: refused once, the keys in use stay, and it is not
     * reported again until it changes */
    write_jwks("{\"keys\": [");
    ck_assert_int_lt(cm_auth_reload(auth, 0, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "not valid json"));
    ck_assert_ptr_nonnull(strstr(err, "the old keys stay in use"));
    ck_assert_int_eq(cm_auth_reload(auth, 0, err, sizeof err), 0);
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa2_priv, "k2"), 0);
    unlink(jwks_path);
    ck_assert_int_lt(cm_auth_reload(auth, 0, err, sizeof err), 0);
    ck_assert_int_eq(cm_auth_reload(auth, 0, err, sizeof err), 0);
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa_priv, "k1"), 0);

    /* the old key retired */
    jwks_of((const char *[]){k2, NULL});
    ck_assert_int_eq(cm_auth_reload(auth, 0, err, sizeof err), 1);
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa_priv, "k1"), CM_EAUTH);
    ck_assert_int_eq(verify_kid(JWT_ALG_RS256, rsa2_priv, "k2"), 0);
    /* forced (SIGHUP): read again even though nothing changed */
    ck_assert_int_eq(cm_auth_reload(auth, 1, err, sizeof err), 1);

    cm_auth_jwks_stats st;
    cm_auth_jwks_stats_get(auth, &st);
    ck_assert_uint_eq(st.reloads, 3);
    ck_assert_uint_eq(st.failures, 2);
    ck_assert_int_eq(st.keys, 1);
}
END_TEST

typedef struct verifier_arg {
    char *token;
    int ok, bad;
} verifier_arg;

static void *verify_loop(void *p)
{
    verifier_arg *v = p;
    char h[CM_AUTH_TOKEN_MAX + 64];
    snprintf(h, sizeof h, "Bearer %s", v->token);
    for (int i = 0; i < 300; i++) {
        cm_auth_principal pr;
        char w[128];
        if (cm_auth_verify(auth, h, NULL, &pr, w, sizeof w) == 0 && strcmp(pr.tenant, "acme") == 0)
            v->ok++;
        else
            v->bad++;
    }
    return NULL;
}

START_TEST(jwks_reload_while_verifying)
{
    /* every set holds k1, so every verify must pass while sets are swapped
     * and freed under the verifiers (ASan sees a use after free) */
    char k1[2048], k2[2048];
    rsa_jwk(rsa_pub, "k1", k1, sizeof k1);
    rsa_jwk(rsa2_pub, "k2", k2, sizeof k2);
    jwks_of((const char *[]){k1, NULL});
    jwks_verifier();
    char c[256];
    verifier_arg v[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        v[i] = (verifier_arg){
            .token = sign_kid(JWT_ALG_RS256, rsa_priv, "k1", std_claims(c, sizeof c, ""))};
        ck_assert_int_eq(pthread_create(&th[i], NULL, verify_loop, &v[i]), 0);
    }
    char err[512];
    int reloads = 0;
    for (int i = 0; i < 60; i++) {
        if (i % 2)
            jwks_of((const char *[]){k1, NULL});
        else
            jwks_of((const char *[]){k2, k1, NULL});
        reloads += cm_auth_reload(auth, 1, err, sizeof err) == 1;
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(v[i].ok, 300);
        ck_assert_int_eq(v[i].bad, 0);
        free(v[i].token);
    }
    ck_assert_int_eq(reloads, 60);
}
END_TEST

START_TEST(jwks_bad_files_stop_the_start)
{
    char k1[2048], weak[1024], h1[256], shorth[256];
    rsa_jwk(rsa_pub, "k1", k1, sizeof k1);
    char *wpriv, *wpub;
    make_rsa(1024, &wpriv, &wpub);
    rsa_jwk(wpub, "w", weak, sizeof weak);
    oct_jwk(SECRET, "h1", h1, sizeof h1);
    oct_jwk("short", "h2", shorth, sizeof shorth);
    char dup[4200];
    snprintf(dup, sizeof dup, "{\"keys\":[%s,%s]}", k1, k1);
    const struct {
        const char *doc, *want;
    } cases[] = {
        {"not json", "not valid json"},
        {"{\"keys\": {}}", "no \"keys\" array"},
        {"{\"keys\": []}", "no RS256 or HS256 signing key"},
        {"{\"keys\": [{\"kty\":\"EC\",\"kid\":\"e\",\"crv\":\"P-256\"}]}",
         "no RS256 or HS256 signing key"},
        {"{\"keys\": [{\"kty\":\"RSA\",\"kid\":\"x\",\"n\":\"!!\",\"e\":\"AQAB\"}]}",
         "key 0: n and e must be base64url"},
        {"{\"keys\": [{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}", "key 0: kid must be"},
        {dup, "key 1: kid \"k1\" appears twice"},
    };
    char err[512];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_jwks(cases[i].doc);
        cm_auth_settings s = {.mode = CM_AUTH_REQUIRED, .jwks_file = jwks_path};
        cm_auth *a = NULL;
        err[0] = '\0';
        ck_assert_int_ne(cm_auth_new(&s, &a, err, sizeof err), 0);
        ck_assert_msg(strstr(err, cases[i].want), "case %zu: %s", i, err);
        ck_assert_ptr_nonnull(strstr(err, jwks_path));
    }
    const char *weak_keys[] = {weak, NULL}, *short_keys[] = {shorth, NULL};
    const char *const *bad[] = {weak_keys, short_keys};
    const char *want[] = {"1024-bit RSA is too weak", "k must be base64url of 32..1024 bytes"};
    for (int i = 0; i < 2; i++) {
        jwks_of(bad[i]);
        cm_auth_settings s = {.mode = CM_AUTH_REQUIRED, .jwks_file = jwks_path};
        cm_auth *a = NULL;
        ck_assert_int_ne(cm_auth_new(&s, &a, err, sizeof err), 0);
        ck_assert_msg(strstr(err, want[i]), "%s", err);
        /* never the key material */
        ck_assert_ptr_null(strstr(err, "short"));
    }
    free(wpriv);
    free(wpub);
    /* skipped: encryption keys and algorithms we never accept */
    char doc[4096];
    snprintf(doc, sizeof doc,
             "{\"keys\":[{\"kty\":\"RSA\",\"use\":\"enc\",\"kid\":\"x\"},"
             "{\"kty\":\"RSA\",\"alg\":\"RS512\",\"kid\":\"y\"},%s]}",
             h1);
    write_jwks(doc);
    jwks_verifier();
    cm_auth_jwks_stats st;
    cm_auth_jwks_stats_get(auth, &st);
    ck_assert_int_eq(st.keys, 1);
}
END_TEST

/* ---- service tokens ---- */

START_TEST(service_token_acts_for_x_tenant_id)
{
    hs_verifier();
    char c[256];
    std_claims(c, sizeof c, ",\"roles\":[\"service\"]");
    /* tid "*": std_claims says acme, swap it */
    char svc[256];
    snprintf(svc, sizeof svc, "{\"tid\":\"*\"%s", strchr(c, ','));
    ck_assert_int_eq(verify_hs(svc, "globex"), 0);
    ck_assert_str_eq(who.tenant, "globex");
    ck_assert_int_eq(who.service, 1);
    ck_assert(cm_auth_has_role(&who, "service"));
    ck_assert_int_eq(verify_hs(svc, NULL), CM_EAUTH);
    ck_assert_str_eq(why, "a service token needs x-tenant-id");
    ck_assert_int_eq(verify_hs(svc, "bad tenant!"), CM_EAUTH);

    /* the same without the role: refused whatever x-tenant-id says */
    std_claims(c, sizeof c, ",\"roles\":[\"admin\"]");
    snprintf(svc, sizeof svc, "{\"tid\":\"*\"%s", strchr(c, ','));
    ck_assert_int_eq(verify_hs(svc, "globex"), CM_EAUTH);
    ck_assert_str_eq(why, "token tid \"*\" is only accepted with role service");
    /* a service role with a real tid is an ordinary token of that tenant */
    std_claims(c, sizeof c, ",\"roles\":[\"service\"]");
    ck_assert_int_eq(verify_hs(c, "globex"), CM_EPERM);
    ck_assert_int_eq(verify_hs(c, NULL), 0);
    ck_assert_int_eq(who.service, 0);
}
END_TEST

static Suite *auth_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("verify");
    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, rsa_setup, rsa_teardown);
    tcase_add_checked_fixture(tc, NULL, verifier_teardown);
    tcase_add_test(tc, hs256_valid_token_yields_principal);
    tcase_add_test(tc, hs256_expired_token_is_rejected);
    tcase_add_test(tc, hs256_expiry_within_leeway_is_accepted);
    tcase_add_test(tc, hs256_token_without_exp_is_rejected);
    tcase_add_test(tc, hs256_nbf_in_future_is_rejected);
    tcase_add_test(tc, hs256_wrong_secret_is_rejected);
    tcase_add_test(tc, hs256_tampered_payload_is_rejected);
    tcase_add_test(tc, alg_none_is_rejected);
    tcase_add_test(tc, alg_hs256_keyed_with_rsa_public_key_is_rejected);
    tcase_add_test(tc, alg_rs256_refused_by_hs256_only_verifier);
    tcase_add_test(tc, rs256_valid_token_yields_principal);
    tcase_add_test(tc, rs256_other_key_is_rejected);
    tcase_add_test(tc, rs256_public_key_file_is_read);
    tcase_add_test(tc, x_tenant_mismatch_is_permission_denied);
    tcase_add_test(tc, missing_or_bad_tid_is_rejected);
    tcase_add_test(tc, roles_space_separated_string_is_split);
    tcase_add_test(tc, roles_absent_gives_no_roles);
    tcase_add_test(tc, scoped_roles_need_their_claim);
    tcase_add_test(tc, roles_malformed_or_too_many_are_rejected);
    tcase_add_test(tc, subject_must_be_a_string);
    tcase_add_test(tc, issuer_and_audience_are_checked_when_configured);
    tcase_add_test(tc, authorization_header_forms);
    tcase_add_test(tc, oversized_token_is_rejected);
    tcase_add_test(tc, off_mode_trusts_x_tenant_id);
    tcase_add_test(tc, new_rejects_bad_settings);
    tcase_add_test(tc, tenant_id_charset_and_length);
    tcase_add_test(tc, mode_parse_accepts_off_and_required);
    suite_add_tcase(s, tc);

    TCase *tj = tcase_create("jwks");
    tcase_set_timeout(tj, 60);
    tcase_add_unchecked_fixture(tj, rsa_setup, rsa_teardown);
    tcase_add_checked_fixture(tj, jwks_setup, jwks_teardown);
    tcase_add_test(tj, jwks_kid_selects_the_key);
    tcase_add_test(tj, jwks_single_key_and_oct_keys);
    tcase_add_test(tj, jwks_with_single_key_settings);
    tcase_add_test(tj, jwks_rotation_reloads_without_restart);
    tcase_add_test(tj, jwks_reload_while_verifying);
    tcase_add_test(tj, jwks_bad_files_stop_the_start);
    tcase_add_test(tj, service_token_acts_for_x_tenant_id);
    suite_add_tcase(s, tj);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(auth_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
