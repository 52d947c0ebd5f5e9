/*
 * cm_id: UUIDv7 identifiers (RFC 9562), time-ordered and index-friendly.
 *
 * layout: 48-bit unix time in ms, version 7, a 12-bit counter in rand_a
 * (RFC 9562 section 6.2, method 1), variant 10, 62 random bits from
 * getrandom(2). within one process ids are strictly increasing, also when
 * many are made in the same millisecond or the wall clock steps back: the
 * counter is reseeded (top bit clear) on every new millisecond, and when it
 * runs out the timestamp borrows the next millisecond. the canonical text
 * form is lower-case, so text order is id order. thread-safe.
 */
#ifndef CM_ID_H
#define CM_ID_H

#include <stddef.h>
#include <stdint.h>

/* canonical text length without the NUL, and the buffer size with it. */
#define CM_ID_LEN 36
#define CM_ID_SIZE 37

/* writes a new UUIDv7 to out as 36 lower-case characters plus NUL.
 * returns 0, or CM_EIO when the kernel gives no random bytes (out is then
 * set to the empty string). */
int cm_id_uuid7(char out[CM_ID_SIZE]);

/* same as cm_id_uuid7 in binary (network byte order). returns 0 or CM_EIO. */
int cm_id_uuid7_bytes(uint8_t out[16]);

/* makes a UUIDv7 as if the wall clock read now_ms, still keeping the
 * process-wide order (a reading behind the last id's time is treated as
 * that time). meant for tests of clock steps and counter exhaustion.
 * returns 0 or CM_EIO. */
int cm_id_uuid7_from_clock(uint64_t now_ms, uint8_t out[16]);

/* writes the canonical lower-case text of a binary UUID (any version). */
void cm_id_format(const uint8_t in[16], char out[CM_ID_SIZE]);

/* parses UUID text of any version: exactly 8-4-4-4-12 hex digits of either
 * case, nothing before or after. returns 0 and fills out, or CM_EINVAL
 * leaving out untouched (also for NULL). */
int cm_id_parse(const char *s, uint8_t out[16]);

/* 1 when s is UUID text that cm_id_parse accepts, else 0. */
int cm_id_is_uuid(const char *s);

/* the unix-ms timestamp of a UUIDv7, or CM_EINVAL when id is not version 7
 * with variant 10. */
int64_t cm_id_uuid7_time_ms(const uint8_t id[16]);

/* the lower-case hex SHA-256 of len bytes at data (64 characters and the
 * NUL): idempotency body hashes, migration checksums. */
#define CM_SHA256_HEX 65
void cm_sha256_hex(const void *data, size_t len, char out[CM_SHA256_HEX]);

/* 1 when s is a caller key: 1..max characters from [A-Za-z0-9._:-]
 * (request ids, merchant, sku and party ids); NULL is not one. */
int cm_id_key_valid(const char *s, size_t max);

#endif
