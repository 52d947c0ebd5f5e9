/*
 * cm_utf8: text from the wire, checked and made safe to echo.
 *
 * proto3 requires string fields to be UTF-8, and a string from protobuf
 * carries a length that C's NUL-terminated strings lose. the runtime checks
 * every request's strings once, at the edge (cm_pb_check_wire); these are
 * the checks, and the clipping applied to anything a status echoes back.
 */
#ifndef CM_UTF8_H
#define CM_UTF8_H

#include <stddef.h>

#include "cm_arena.h"

/* 1 when s[0..n) is well-formed UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF); NUL bytes are well-formed here. */
int cm_utf8_valid(const char *s, size_t n);

/* s, made fit to echo in a status or a log: its first max bytes at most,
 * cut on a character boundary, with "..." appended when cut (so up to
 * max + 3 bytes), invalid bytes and control
 * characters (C0, DEL) replaced by '?'. allocated in a; NULL s gives "".
 * NULL only when a is out of memory. */
char *cm_utf8_clip(cm_arena *a, const char *s, size_t max);

/* 1 when s is acceptable free text: well-formed UTF-8 without control
 * characters (C0, DEL), at most max characters (code points, as the proto
 * counts them) and max * 4 bytes; NULL or "" is acceptable unless
 * required. */
int cm_utf8_text_valid(const char *s, size_t max, int required);

#endif
