/*
 * the webhook secrets' sealing (cms_secrets.h): AES-256-GCM from
 * libcrypto's EVP interface, a 96-bit random nonce per seal, the 128-bit
 * tag after the ciphertext.
 */
#include "cms_secrets.h"

#include "cm_err.h"
#include "cm_file.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_SIZE 32
#define NONCE_SIZE 12
#define TAG_SIZE 16
#define FILE_MAX 65536
/* binds a sealed value to what it is, then to its tenant and partner */
#define AAD_LABEL "commerce.commission.webhook-secret.v1"

typedef struct key {
    char id[CMS_SECRETS_KEY_ID_MAX + 1];
    unsigned char bytes[KEY_SIZE];
} key;

struct cms_keyring {
    size_t n;
    key keys[CMS_SECRETS_KEYS_MAX];
};

/* ---- base64 (standard alphabet, padded) ---- */

/* decodes n characters into out (cap bytes): the length, or -1 */
static int b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    if (n == 0 || n % 4 || n / 4 * 3 > cap)
        return -1;
    int len = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    if (len < 0)
        return -1;
    /* EVP_DecodeBlock counts the padding's bytes as data */
    if (in[n - 1] == '=')
        len--;
    if (in[n - 2] == '=')
        len--;
    return len;
}

static int valid_key_id(const char *s, size_t n)
{
    if (n < 1 || n > CMS_SECRETS_KEY_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* ---- the keyring ---- */

int cms_keyring_parse(const char *text, size_t len, cms_keyring **out, char *why, size_t cap)
{
    *out = NULL;
    cms_keyring *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(why, cap, "out of memory");
        return CM_ENOMEM;
    }
    size_t pos = 0;
    int line = 0;
    while (pos < len) {
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl ? 1 : 0);
        line++;
        while (n && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        if (n == 0 || s[0] == '#')
            continue;
        const char *colon = memchr(s, ':', n);
        size_t idn = colon ? (size_t)(colon - s) : 0;
        if (!colon || !valid_key_id(s, idn)) {
            snprintf(why, cap,
                     "line %d: not <key id>:<base64 key> (key ids: 1-32 of [A-Za-z0-9_-])", line);
            goto bad;
        }
        for (size_t i = 0; i < k->n; i++)
            if (strlen(k->keys[i].id) == idn && memcmp(k->keys[i].id, s, idn) == 0) {
                snprintf(why, cap, "line %d: key id %.*s repeats an earlier line", line, (int)idn,
                         s);
                goto bad;
            }
        if (k->n == CMS_SECRETS_KEYS_MAX) {
            snprintf(why, cap, "line %d: more than %d keys", line, CMS_SECRETS_KEYS_MAX);
            goto bad;
        }
        key *e = &k->keys[k->n];
        unsigned char raw[KEY_SIZE + 3];
        int got = b64_decode(colon + 1, n - idn - 1, raw, sizeof raw);
        if (got != KEY_SIZE) {
            OPENSSL_cleanse(raw, sizeof raw);
            snprintf(why, cap, "line %d (key %.*s): the key is not the base64 of 32 bytes", line,
                     (int)idn, s);
            goto bad;
        }
        memcpy(e->id, s, idn);
        e->id[idn] = '\0';
        memcpy(e->bytes, raw, KEY_SIZE);
        OPENSSL_cleanse(raw, sizeof raw);
        k->n++;
    }
    if (k->n == 0) {
        snprintf(why, cap, "no key in the keyring");
        goto bad;
    }
    *out = k;
    return 0;
bad:
    cms_keyring_free(k);
    return CM_EINVAL;
}

int cms_keyring_load(const char *path, cms_keyring **out, char *why, size_t cap)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = cm_file_read(path, FILE_MAX, &text, &len);
    if (rc) {
        snprintf(why, cap, "could not read %s", path);
        return rc;
    }
    rc = cms_keyring_parse(text, len, out, why, cap);
    OPENSSL_cleanse(text, len);
    free(text);
    return rc;
}

void cms_keyring_free(cms_keyring *k)
{
    if (!k)
        return;
    OPENSSL_cleanse(k, sizeof *k);
    free(k);
}

const char *cms_keyring_primary(const cms_keyring *k)
{
    return k->keys[0].id;
}

static const key *find_key(const cms_keyring *k, const char *id, size_t n)
{
    for (size_t i = 0; i < k->n; i++)
        if (strlen(k->keys[i].id) == n && memcmp(k->keys[i].id, id, n) == 0)
            return &k->keys[i];
    return NULL;
}

/* ---- sealing ---- */

/* label NUL tenant NUL partner into out: its length, or 0 when too long */
static size_t aad(const char *tenant, const char *partner, unsigned char *out, size_t cap)
{
    size_t a = sizeof AAD_LABEL, t = strlen(tenant) + 1, p = strlen(partner);
    if (a + t + p > cap)
        return 0;
    memcpy(out, AAD_LABEL, a);
    memcpy(out + a, tenant, t);
    memcpy(out + a + t, partner, p);
    return a + t + p;
}

/* one AES-256-GCM pass: enc 1 seals in (n bytes) into out and writes the
 * tag, 0 opens and checks it. 0, or CM_EINVAL (the tag did not match),
 * CM_EINTERNAL */
static int gcm(int enc, const key *kk, const unsigned char *nonce, const unsigned char *ad,
               size_t adn, const unsigned char *in, size_t n, unsigned char *out,
               unsigned char *tag)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (!c)
        return CM_EINTERNAL;
    int rc = CM_EINTERNAL, len = 0;
    if (EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_SIZE, NULL) != 1 ||
        EVP_CipherInit_ex(c, NULL, NULL, kk->bytes, nonce, enc) != 1 ||
        EVP_CipherUpdate(c, NULL, &len, ad, (int)adn) != 1 ||
        EVP_CipherUpdate(c, out, &len, in, (int)n) != 1)
        goto done;
    if (!enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, tag) != 1)
        goto done;
    if (EVP_CipherFinal_ex(c, out + len, &len) != 1) {
        rc = enc ? CM_EINTERNAL : CM_EINVAL;
        goto done;
    }
    if (enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, tag) != 1)
        goto done;
    rc = 0;
done:
    EVP_CIPHER_CTX_free(c);
    return rc;
}

int cms_secrets_seal(const cms_keyring *k, const char *tenant, const char *partner,
                     const char *plain, char out[CMS_SECRETS_SEALED_SIZE])
{
    size_t n = strlen(plain);
    unsigned char ad[512], nonce[NONCE_SIZE], ct[CMS_SECRETS_PLAIN_SIZE + TAG_SIZE];
    size_t adn = aad(tenant, partner, ad, sizeof ad);
    if (n >= CMS_SECRETS_PLAIN_SIZE || !adn)
        return CM_EINVAL;
    if (RAND_bytes(nonce, sizeof nonce) != 1)
        return CM_EUNAVAIL;
    const key *kk = &k->keys[0];
    int rc = gcm(1, kk, nonce, ad, adn, (const unsigned char *)plain, n, ct, ct + n);
    if (rc)
        return rc;
    /* 4 characters per 3 bytes: at most 20 + 108 here, with the id 32 */
    unsigned char b64n[24], b64c[(CMS_SECRETS_PLAIN_SIZE + TAG_SIZE + 2) / 3 * 4 + 1];
    EVP_EncodeBlock(b64n, nonce, sizeof nonce);
    EVP_EncodeBlock(b64c, ct, (int)(n + TAG_SIZE));
    OPENSSL_cleanse(ct, sizeof ct);
    int w = snprintf(out, CMS_SECRETS_SEALED_SIZE, CMS_SECRETS_PREFIX "%s:%s:%s", kk->id,
                     (const char *)b64n, (const char *)b64c);
    return w > 0 && w < CMS_SECRETS_SEALED_SIZE ? 0 : CM_EINVAL;
}

int cms_secrets_is_sealed(const char *stored)
{
    return strncmp(stored, CMS_SECRETS_PREFIX, sizeof CMS_SECRETS_PREFIX - 1) == 0;
}

int cms_secrets_open(const cms_keyring *k, const char *tenant, const char *partner,
                     const char *sealed, char out[CMS_SECRETS_PLAIN_SIZE])
{
    out[0] = '\0';
    if (!cms_secrets_is_sealed(sealed))
        return CM_EINVAL;
    const char *id = sealed + sizeof CMS_SECRETS_PREFIX - 1;
    const char *c1 = strchr(id, ':');
    const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2)
        return CM_EINVAL;
    const key *kk = find_key(k, id, (size_t)(c1 - id));
    if (!kk)
        return CM_ENOTFOUND;
    unsigned char nonce[NONCE_SIZE + 3], ct[CMS_SECRETS_PLAIN_SIZE + TAG_SIZE + 3],
        plain[CMS_SECRETS_PLAIN_SIZE + TAG_SIZE], ad[512];
    int nn = b64_decode(c1 + 1, (size_t)(c2 - c1 - 1), nonce, sizeof nonce);
    int cn = b64_decode(c2 + 1, strlen(c2 + 1), ct, sizeof ct);
    size_t adn = aad(tenant, partner, ad, sizeof ad);
    if (nn != NONCE_SIZE || cn <= TAG_SIZE || cn - TAG_SIZE >= CMS_SECRETS_PLAIN_SIZE || !adn)
        return CM_EINVAL;
    size_t n = (size_t)cn - TAG_SIZE;
    int rc = gcm(0, kk, nonce, ad, adn, ct, n, plain, ct + n);
    if (rc == 0) {
        memcpy(out, plain, n);
        out[n] = '\0';
    }
    OPENSSL_cleanse(plain, sizeof plain);
    return rc;
}
