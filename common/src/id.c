#include "cm_id.h"
#include "cm_err.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* the last id's timestamp and counter: ids are ordered process-wide, so
 * this is shared state behind one short lock */
static pthread_mutex_t id_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t id_last_ms;
static unsigned id_counter;

#define ID_COUNTER_MAX 0xfffu
#define ID_TIME_MAX ((UINT64_C(1) << 48) - 1)

static int fill_random(uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = getrandom(buf + got, len - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return CM_EIO;
        }
        got += (size_t)n;
    }
    return 0;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int cm_id_uuid7_from_clock(uint64_t now_ms, uint8_t out[16])
{
    /* 2 bytes seed a fresh counter, 8 give rand_b; drawn outside the lock */
    uint8_t rnd[10];
    if (fill_random(rnd, sizeof rnd) != 0)
        return CM_EIO;
    now_ms &= ID_TIME_MAX;

    pthread_mutex_lock(&id_mu);
    if (now_ms > id_last_ms) {
        id_last_ms = now_ms;
        /* top bit clear leaves at least 2048 increments in this ms */
        id_counter = ((unsigned)rnd[0] << 8 | rnd[1]) & 0x7ffu;
    } else if (id_counter < ID_COUNTER_MAX) {
        /* same ms, or the clock stepped back: keep the last time */
        id_counter++;
    } else {
        /* counter exhausted: borrow the next ms rather than repeat */
        id_last_ms++;
        id_counter = ((unsigned)rnd[0] << 8 | rnd[1]) & 0x7ffu;
    }
    uint64_t ms = id_last_ms;
    unsigned ctr = id_counter;
    pthread_mutex_unlock(&id_mu);

    for (int i = 0; i < 6; i++)
        out[i] = (uint8_t)(ms >> (40 - 8 * i));
    out[6] = (uint8_t)(0x70u | (ctr >> 8));
    out[7] = (uint8_t)(ctr & 0xffu);
    out[8] = (uint8_t)(0x80u | (rnd[2] & 0x3fu));
    memcpy(out + 9, rnd + 3, 7);
    return 0;
}

int cm_id_uuid7_bytes(uint8_t out[16])
{
    return cm_id_uuid7_from_clock(wall_ms(), out);
}

void cm_id_format(const uint8_t in[16], char out[CM_ID_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[in[i] >> 4];
        out[o++] = hex[in[i] & 0x0f];
    }
    out[o] = '\0';
}

int cm_id_uuid7(char out[CM_ID_SIZE])
{
    uint8_t b[16];
    int rc = cm_id_uuid7_bytes(b);
    if (rc != 0) {
        out[0] = '\0';
        return rc;
    }
    cm_id_format(b, out);
    return 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int cm_id_parse(const char *s, uint8_t out[16])
{
    if (!s)
        return CM_EINVAL;
    uint8_t b[16];
    size_t nb = 0;
    /* the NUL terminator fails both tests below, so a short string stops
     * the scan before reading past its end */
    for (size_t i = 0; i < CM_ID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return CM_EINVAL;
            continue;
        }
        int hi = hex_value(s[i]);
        if (hi < 0)
            return CM_EINVAL;
        int lo = hex_value(s[++i]);
        if (lo < 0)
            return CM_EINVAL;
        b[nb++] = (uint8_t)(hi << 4 | lo);
    }
    if (s[CM_ID_LEN] != '\0')
        return CM_EINVAL;
    memcpy(out, b, sizeof b);
    return 0;
}

int cm_id_is_uuid(const char *s)
{
    uint8_t b[16];
    return cm_id_parse(s, b) == 0;
}

int64_t cm_id_uuid7_time_ms(const uint8_t id[16])
{
    if ((id[6] >> 4) != 7 || (id[8] >> 6) != 2)
        return CM_EINVAL;
    uint64_t ms = 0;
    for (int i = 0; i < 6; i++)
        ms = ms << 8 | id[i];
    return (int64_t)ms;
}

void cm_sha256_hex(const void *data, size_t len, char out[CM_SHA256_HEX])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) != 1 || n != 32) {
        /* cannot happen with a working libcrypto; never equal to a real hash */
        memcpy(out, "unhashable", sizeof "unhashable");
        return;
    }
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

int cm_id_key_valid(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    return n >= 1 && n <= max &&
           strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") == n;
}
