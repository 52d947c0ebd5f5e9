/*
 * the partner feed's webhook rules (services/commission/webhook.c): the
 * signing secrets, the Commerce-Signature header (vectors computed with
 * Python's hmac module), which endpoint URLs and addresses are accepted,
 * and the retry backoff.
 */
#include "cms_webhook.h"

#include "cm_err.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <string.h>

START_TEST(secrets_are_whsec_base64url_and_fresh)
{
    char a[CMS_WEBHOOK_SECRET_SIZE], b[CMS_WEBHOOK_SECRET_SIZE];
    ck_assert_int_eq(cms_webhook_secret_new(a), 0);
    ck_assert_int_eq(cms_webhook_secret_new(b), 0);
    ck_assert_uint_eq(strlen(a), 49);
    ck_assert(strncmp(a, "whsec_", 6) == 0);
    ck_assert_uint_eq(
        strspn(a + 6, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), 43);
    ck_assert_str_ne(a, b);
}
END_TEST

START_TEST(signature_is_hmac_sha256_of_t_dot_body)
{
    const char *body = "{\"a\":1}";
    char sig[CMS_WEBHOOK_SIG_SIZE];
    const char *one[] = {"whsec_test", ""};
    ck_assert_int_eq(cms_webhook_sign(one, 2, 1700000000, body, strlen(body), sig), 0);
    ck_assert_str_eq(sig, "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4"
                          "ca4d3789");
    /* during a rotation: one v1 per secret, the new one first */
    const char *two[] = {"whsec_test", "whsec_old"};
    ck_assert_int_eq(cms_webhook_sign(two, 2, 1700000000, body, strlen(body), sig), 0);
    ck_assert_str_eq(sig, "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4"
                          "ca4d3789,v1=b9d801502bb535e960ee9aeee7a294b082bda5089d79c7db610b8511"
                          "6ce6faa6");
    /* one byte of the body changes the signature */
    ck_assert_int_eq(cms_webhook_sign(one, 1, 1700000000, "{\"a\":2}", 7, sig), 0);
    ck_assert(strstr(sig, "38877139") == NULL);
    const char *none[] = {"", NULL};
    ck_assert_int_eq(cms_webhook_sign(none, 2, 1, body, strlen(body), sig), CM_EINVAL);
}
END_TEST

static int url_ok(const cms_webhook_policy *p, const char *url)
{
    char why[256];
    return cms_webhook_url_check(p, url, why, sizeof why) == 0;
}

START_TEST(urls_https_public_without_credentials)
{
    cms_webhook_policy p = {0};
    char why[160];
    ck_assert_int_eq(cms_webhook_policy_parse(&p, "", why, sizeof why), 0);
    ck_assert(url_ok(&p, "https://partner.example.com/hooks/commerce?x=1"));
    ck_assert(url_ok(&p, "https://93.184.216.34:8443/h"));
    ck_assert(!url_ok(&p, "http://partner.example.com/h")); /* https only */
    ck_assert(!url_ok(&p, "ftp://partner.example.com/h"));
    ck_assert(!url_ok(&p, "https://u:p@partner.example.com/h"));
    ck_assert(!url_ok(&p, "https://u@partner.example.com/h"));
    ck_assert(!url_ok(&p, "https://partner.example.com/h#x"));
    ck_assert(!url_ok(&p, "partner.example.com/h"));
    ck_assert(!url_ok(&p, "https://partner.example.com/a b"));
    ck_assert(!url_ok(&p, ""));
    /* non-public literals */
    const char *private_[] = {"https://127.0.0.1/h",         "https://10.0.0.1/h",
                              "https://172.16.5.4/h",        "https://192.168.1.1/h",
                              "https://169.254.169.254/",    "https://100.64.0.1/h",
                              "https://0.0.0.0/h",           "https://[::1]/h",
                              "https://[fd00::1]/h",         "https://[fe80::1]/h",
                              "https://[::ffff:10.0.0.1]/h", "https://localhost/h",
                              "https://api.localhost/h",     "https://224.0.0.1/h"};
    for (size_t i = 0; i < sizeof private_ / sizeof private_[0]; i++)
        ck_assert_msg(!url_ok(&p, private_[i]), "%s accepted", private_[i]);
    char big[CMS_WEBHOOK_URL_MAX + 40] = "https://partner.example.com/";
    memset(big + strlen(big), 'a', CMS_WEBHOOK_URL_MAX);
    big[CMS_WEBHOOK_URL_MAX + 1] = '\0';
    ck_assert(!url_ok(&p, big));
    /* allowed: loopback by the allow-list, http by the flag */
    ck_assert_int_eq(cms_webhook_policy_parse(&p, "127.0.0.0/8, ::1/128", why, sizeof why), 0);
    ck_assert(url_ok(&p, "https://127.0.0.1:9000/h"));
    ck_assert(url_ok(&p, "https://[::1]:9000/h"));
    ck_assert(url_ok(&p, "https://localhost/h"));
    ck_assert(!url_ok(&p, "https://10.0.0.1/h"));
    ck_assert(!url_ok(&p, "http://127.0.0.1:9000/h"));
    p.allow_http = 1;
    ck_assert(url_ok(&p, "http://127.0.0.1:9000/h"));
}
END_TEST

/* found by fuzz_webhook_url: a zone id ("%...") cut the host short, and the
 * ".localhost" suffix was then looked for before the start of the buffer
 * (a stack read out of bounds under ASan) */
START_TEST(zone_id_shorter_than_localhost_suffix)
{
    cms_webhook_policy p = {0};
    char why[160];
    ck_assert_int_eq(cms_webhook_policy_parse(&p, "", why, sizeof why), 0);
    /* a name, not a literal: decided when it resolves */
    ck_assert(url_ok(&p, "https://ocloc%alhost/h"));
    ck_assert(url_ok(&p, "https://a%bcdefghijklmnop/h"));
    /* the suffix is still seen before a zone id */
    ck_assert(!url_ok(&p, "https://api.localhost%eth0/h"));
}
END_TEST

START_TEST(addresses_and_the_allow_list)
{
    cms_webhook_policy p = {0};
    char why[160];
    ck_assert_int_eq(cms_webhook_policy_parse(&p, "10.1.0.0/16", why, sizeof why), 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, "8.8.8.8", &a.sin_addr);
    ck_assert(cms_webhook_addr_allowed(&p, (struct sockaddr *)&a));
    inet_pton(AF_INET, "10.1.2.3", &a.sin_addr);
    ck_assert(cms_webhook_addr_allowed(&p, (struct sockaddr *)&a));
    inet_pton(AF_INET, "10.2.0.1", &a.sin_addr);
    ck_assert(!cms_webhook_addr_allowed(&p, (struct sockaddr *)&a));
    inet_pton(AF_INET, "172.31.255.255", &a.sin_addr);
    ck_assert(!cms_webhook_addr_allowed(&p, (struct sockaddr *)&a));
    inet_pton(AF_INET, "172.32.0.1", &a.sin_addr);
    ck_assert(cms_webhook_addr_allowed(&p, (struct sockaddr *)&a));
    struct sockaddr_in6 b = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "2606:4700::1111", &b.sin6_addr);
    ck_assert(cms_webhook_addr_allowed(&p, (struct sockaddr *)&b));
    inet_pton(AF_INET6, "::ffff:10.1.9.9", &b.sin6_addr); /* mapped: the v4 rules */
    ck_assert(cms_webhook_addr_allowed(&p, (struct sockaddr *)&b));
    inet_pton(AF_INET6, "::ffff:127.0.0.1", &b.sin6_addr);
    ck_assert(!cms_webhook_addr_allowed(&p, (struct sockaddr *)&b));
    inet_pton(AF_INET6, "::", &b.sin6_addr);
    ck_assert(!cms_webhook_addr_allowed(&p, (struct sockaddr *)&b));
    /* bad lists are refused, naming the entry */
    ck_assert_int_eq(cms_webhook_policy_parse(&p, "300.1.1.1", why, sizeof why), CM_EINVAL);
    ck_assert_int_eq(cms_webhook_policy_parse(&p, "10.0.0.0/33", why, sizeof why), CM_EINVAL);
    ck_assert_int_eq(cms_webhook_policy_parse(&p, "10.0.0.0/x", why, sizeof why), CM_EINVAL);
    ck_assert(strstr(why, "10.0.0.0") != NULL);
}
END_TEST

START_TEST(backoff_doubles_with_jitter_up_to_the_cap)
{
    for (uint32_t r = 0; r < 5000; r += 97) {
        int64_t d1 = cms_webhook_backoff_ms(1, 3600000, r);
        ck_assert(d1 >= 500 && d1 <= 1000);
        int64_t d5 = cms_webhook_backoff_ms(5, 3600000, r);
        ck_assert(d5 >= 8000 && d5 <= 16000);
        int64_t dc = cms_webhook_backoff_ms(5, 2000, r);
        ck_assert(dc >= 1000 && dc <= 2000);
        int64_t dbig = cms_webhook_backoff_ms(1000000, 3600000, r);
        ck_assert(dbig >= 1800000 && dbig <= 3600000);
    }
    ck_assert_int_ne(cms_webhook_backoff_ms(3, 3600000, 1),
                     cms_webhook_backoff_ms(3, 3600000, 1234));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("commission_webhook");
    TCase *tc = tcase_create("webhook");
    tcase_add_test(tc, secrets_are_whsec_base64url_and_fresh);
    tcase_add_test(tc, signature_is_hmac_sha256_of_t_dot_body);
    tcase_add_test(tc, urls_https_public_without_credentials);
    tcase_add_test(tc, zone_id_shorter_than_localhost_suffix);
    tcase_add_test(tc, addresses_and_the_allow_list);
    tcase_add_test(tc, backoff_doubles_with_jitter_up_to_the_cap);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
