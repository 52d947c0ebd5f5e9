/*
 * cms_secrets: the partners' webhook signing secrets at rest (README.md,
 * "Webhook secrets at rest"). A secret is stored sealed with AES-256-GCM
 * under a key of a keyring (COMMISSION_SECRETS_KEY_FILE), as one text
 * value:
 *   cms1:<key id>:<base64 nonce>:<base64 ciphertext || tag>
 * with the tenant id and the partner id as additional data, so a value
 * copied to another partner's row does not open. No database here.
 *
 * The keyring file: one key a line, "<key id>:<base64 of 32 bytes>"; key
 * ids are 1-32 characters from [A-Za-z0-9_-]; blank lines and lines
 * starting with '#' are skipped. The first key seals, every key opens.
 */
#ifndef CMS_SECRETS_H
#define CMS_SECRETS_H

#include <stddef.h>

#define CMS_SECRETS_PREFIX "cms1:"
#define CMS_SECRETS_KEY_ID_MAX 32
#define CMS_SECRETS_KEYS_MAX 16
/* what a sealed secret of up to 63 bytes takes, NUL included */
#define CMS_SECRETS_SEALED_SIZE 192
/* the largest secret sealed or opened, NUL included */
#define CMS_SECRETS_PLAIN_SIZE 64

typedef struct cms_keyring cms_keyring;

/* parses a keyring's text (len bytes): 0 and *out (free it with
 * cms_keyring_free), or CM_EINVAL with the bad line named in why (never
 * its key), CM_ENOMEM. an empty keyring is CM_EINVAL. */
int cms_keyring_parse(const char *text, size_t len, cms_keyring **out, char *why, size_t cap);

/* cms_keyring_parse on the file at path: CM_EIO when it cannot be read */
int cms_keyring_load(const char *path, cms_keyring **out, char *why, size_t cap);

void cms_keyring_free(cms_keyring *k);

/* the id of the key that seals (the first) */
const char *cms_keyring_primary(const cms_keyring *k);

/* the stored form of plain (at most CMS_SECRETS_PLAIN_SIZE - 1 bytes)
 * for (tenant, partner), sealed under the primary key with a fresh random
 * nonce, into out (CMS_SECRETS_SEALED_SIZE): 0, CM_EINVAL (too long),
 * CM_EUNAVAIL (no randomness), CM_EINTERNAL (openssl failed) */
int cms_secrets_seal(const cms_keyring *k, const char *tenant, const char *partner,
                     const char *plain, char out[CMS_SECRETS_SEALED_SIZE]);

/* the secret a sealed value holds, into out (CMS_SECRETS_PLAIN_SIZE): 0;
 * CM_ENOTFOUND when its key id is not in the keyring; CM_EINVAL when it is
 * not a sealed value, or it does not open (another tenant or partner,
 * another key under that id, altered) */
int cms_secrets_open(const cms_keyring *k, const char *tenant, const char *partner,
                     const char *sealed, char out[CMS_SECRETS_PLAIN_SIZE]);

/* 1 when stored has the sealed form's prefix */
int cms_secrets_is_sealed(const char *stored);

#endif
