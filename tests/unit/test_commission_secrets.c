/*
 * the webhook secrets at rest (services/commission/secrets.c): the
 * keyring file's format, AES-256-GCM sealing bound to the tenant and the
 * partner, key rotation, and what does not open. the known-answer vector
 * was made with Python's cryptography (AESGCM).
 */
#include "cms_secrets.h"

#include "cm_err.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* bytes 0..31 */
#define KEY_A "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
/* bytes 32 x 0x42 */
#define KEY_B "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="

static cms_keyring *ring(const char *text)
{
    cms_keyring *k = NULL;
    char why[256] = "";
    ck_assert_msg(cms_keyring_parse(text, strlen(text), &k, why, sizeof why) == 0, "%s", why);
    return k;
}

static int parse_fails(const char *text, const char *want)
{
    cms_keyring *k = NULL;
    char why[256] = "";
    int rc = cms_keyring_parse(text, strlen(text), &k, why, sizeof why);
    ck_assert_ptr_null(k);
    ck_assert_msg(strstr(why, want), "why: %s (want %s)", why, want);
    /* the reason never quotes a key */
    ck_assert_ptr_null(strstr(why, "AAEC"));
    return rc;
}

START_TEST(keyring_lines_comments_and_errors)
{
    cms_keyring *k = ring("# rotated 2026-12\n\nk2:" KEY_B "\r\nk1:" KEY_A "  \n");
    ck_assert_str_eq(cms_keyring_primary(k), "k2");
    cms_keyring_free(k);
    ck_assert_int_eq(parse_fails("", "no key"), CM_EINVAL);
    ck_assert_int_eq(parse_fails("# only a comment\n", "no key"), CM_EINVAL);
    ck_assert_int_eq(parse_fails(KEY_A "\n", "line 1"), CM_EINVAL);
    ck_assert_int_eq(parse_fails("k1:" KEY_A "\nk.2:" KEY_B, "line 2"), CM_EINVAL);
    ck_assert_int_eq(parse_fails("k1:" KEY_A "\nk1:" KEY_B, "repeats"), CM_EINVAL);
    /* 24 bytes, and not base64 */
    ck_assert_int_eq(parse_fails("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYX\n", "32 bytes"), CM_EINVAL);
    ck_assert_int_eq(parse_fails("k1:AAEC*wQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "32 bytes"),
                     CM_EINVAL);
}
END_TEST

START_TEST(keyring_file_is_read)
{
    char path[] = "/tmp/commerce-keyring-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char text[] = "k1:" KEY_A "\n";
    ck_assert_int_eq(write(fd, text, sizeof text - 1), (int)sizeof text - 1);
    close(fd);
    cms_keyring *k = NULL;
    char why[256];
    ck_assert_int_eq(cms_keyring_load(path, &k, why, sizeof why), 0);
    ck_assert_str_eq(cms_keyring_primary(k), "k1");
    cms_keyring_free(k);
    unlink(path);
    ck_assert_int_eq(cms_keyring_load(path, &k, why, sizeof why), CM_EIO);
    ck_assert_ptr_null(k);
}
END_TEST

START_TEST(seal_round_trip_hides_the_secret)
{
    cms_keyring *k = ring("k1:" KEY_A "\n");
    const char *secret = "whsec_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    char a[CMS_SECRETS_SEALED_SIZE], b[CMS_SECRETS_SEALED_SIZE], out[CMS_SECRETS_PLAIN_SIZE];
    ck_assert_int_eq(cms_secrets_seal(k, "t1", "p-alice", secret, a), 0);
    ck_assert_int_eq(cms_secrets_seal(k, "t1", "p-alice", secret, b), 0);
    ck_assert(strncmp(a, "cms1:k1:", 8) == 0);
    ck_assert(cms_secrets_is_sealed(a));
    ck_assert(!cms_secrets_is_sealed(secret));
    ck_assert_ptr_null(strstr(a, "whsec_"));
    ck_assert_str_ne(a, b); /* a fresh nonce each time */
    ck_assert_int_eq(cms_secrets_open(k, "t1", "p-alice", a, out), 0);
    ck_assert_str_eq(out, secret);
    ck_assert_int_eq(cms_secrets_open(k, "t1", "p-alice", b, out), 0);
    ck_assert_str_eq(out, secret);
    /* too long to seal */
    char big[CMS_SECRETS_PLAIN_SIZE + 1];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ck_assert_int_eq(cms_secrets_seal(k, "t1", "p-alice", big, a), CM_EINVAL);
    cms_keyring_free(k);
}
END_TEST

START_TEST(known_answer_from_python_aesgcm)
{
    cms_keyring *k = ring("k1:" KEY_A "\n");
    char out[CMS_SECRETS_PLAIN_SIZE];
    ck_assert_int_eq(
        cms_secrets_open(k, "t1", "p-alice",
                         "cms1:k1:ZGVmZ2hpamtsbW5v:P3OtAxq2PfBRFTHCryfpWtUV0mV+k2sqk6YU", out),
        0);
    ck_assert_str_eq(out, "whsec_known");
    cms_keyring_free(k);
}
END_TEST

START_TEST(another_tenant_or_partner_does_not_open)
{
    cms_keyring *k = ring("k1:" KEY_A "\n");
    char s[CMS_SECRETS_SEALED_SIZE], out[CMS_SECRETS_PLAIN_SIZE];
    ck_assert_int_eq(cms_secrets_seal(k, "t1", "p-alice", "whsec_x", s), 0);
    ck_assert_int_eq(cms_secrets_open(k, "t2", "p-alice", s, out), CM_EINVAL);
    ck_assert_int_eq(cms_secrets_open(k, "t1", "p-bob", s, out), CM_EINVAL);
    /* the boundary between the two is kept: ("t1p", "-alice") is another pair */
    ck_assert_int_eq(cms_secrets_open(k, "t1p", "-alice", s, out), CM_EINVAL);
    ck_assert_str_eq(out, "");
    cms_keyring_free(k);
}
END_TEST

START_TEST(unknown_or_other_key_does_not_open)
{
    cms_keyring *k1 = ring("k1:" KEY_A "\n");
    cms_keyring *k2 = ring("k2:" KEY_B "\n");
    cms_keyring *k1b = ring("k1:" KEY_B "\n"); /* the same id, other bytes */
    char s[CMS_SECRETS_SEALED_SIZE], out[CMS_SECRETS_PLAIN_SIZE];
    ck_assert_int_eq(cms_secrets_seal(k1, "t1", "p", "whsec_x", s), 0);
    ck_assert_int_eq(cms_secrets_open(k2, "t1", "p", s, out), CM_ENOTFOUND);
    ck_assert_int_eq(cms_secrets_open(k1b, "t1", "p", s, out), CM_EINVAL);
    cms_keyring_free(k1);
    cms_keyring_free(k2);
    cms_keyring_free(k1b);
}
END_TEST

START_TEST(rotation_seals_with_the_first_opens_with_all)
{
    cms_keyring *old = ring("k1:" KEY_A "\n");
    cms_keyring *both = ring("k2:" KEY_B "\nk1:" KEY_A "\n");
    char s1[CMS_SECRETS_SEALED_SIZE], s2[CMS_SECRETS_SEALED_SIZE], out[CMS_SECRETS_PLAIN_SIZE];
    ck_assert_int_eq(cms_secrets_seal(old, "t1", "p", "whsec_old", s1), 0);
    ck_assert_int_eq(cms_secrets_seal(both, "t1", "p", "whsec_new", s2), 0);
    ck_assert(strncmp(s2, "cms1:k2:", 8) == 0);
    ck_assert_int_eq(cms_secrets_open(both, "t1", "p", s1, out), 0);
    ck_assert_str_eq(out, "whsec_old");
    ck_assert_int_eq(cms_secrets_open(both, "t1", "p", s2, out), 0);
    ck_assert_str_eq(out, "whsec_new");
    cms_keyring_free(old);
    cms_keyring_free(both);
}
END_TEST

START_TEST(tampering_is_detected)
{
    cms_keyring *k = ring("k1:" KEY_A "\n");
    char s[CMS_SECRETS_SEALED_SIZE], t[CMS_SECRETS_SEALED_SIZE], out[CMS_SECRETS_PLAIN_SIZE];
    ck_assert_int_eq(cms_secrets_seal(k, "t1", "p", "whsec_abcdefgh", s), 0);
    size_t n = strlen(s);
    /* every base64 character of the nonce and of ciphertext||tag (12 and
     * 30 bytes: no padding bits), flipped to another valid one: the tag
     * check fails */
    for (size_t i = 8; i < n; i++) {
        if (s[i] == ':' || s[i] == '=')
            continue;
        memcpy(t, s, n + 1);
        t[i] = t[i] == 'A' ? 'B' : 'A';
        int rc = cms_secrets_open(k, "t1", "p", t, out);
        ck_assert_msg(rc == CM_EINVAL, "byte %zu changed still opens (%d)", i, rc);
    }
    /* cut short, the tag alone, garbage */
    memcpy(t, s, n + 1);
    t[n - 4] = '\0';
    ck_assert_int_eq(cms_secrets_open(k, "t1", "p", t, out), CM_EINVAL);
    ck_assert_int_eq(cms_secrets_open(k, "t1", "p", "cms1:k1:", out), CM_EINVAL);
    ck_assert_int_eq(cms_secrets_open(k, "t1", "p", "cms1:k1:ZGVmZ2hpamtsbW5v:", out), CM_EINVAL);
    ck_assert_int_eq(cms_secrets_open(k, "t1", "p", "whsec_plain", out), CM_EINVAL);
    cms_keyring_free(k);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("commission_secrets");
    TCase *tc = tcase_create("secrets");
    tcase_add_test(tc, keyring_lines_comments_and_errors);
    tcase_add_test(tc, keyring_file_is_read);
    tcase_add_test(tc, seal_round_trip_hides_the_secret);
    tcase_add_test(tc, known_answer_from_python_aesgcm);
    tcase_add_test(tc, another_tenant_or_partner_does_not_open);
    tcase_add_test(tc, unknown_or_other_key_does_not_open);
    tcase_add_test(tc, rotation_seals_with_the_first_opens_with_all);
    tcase_add_test(tc, tampering_is_detected);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
