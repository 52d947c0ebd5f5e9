/* utf-8 checks and clipping: see cm_utf8.h */
#include "cm_utf8.h"

#include <stdint.h>
#include <string.h>

/* length of the well-formed character at s[0..n), or 0 when it is not one */
static size_t char_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0; /* overlong */
        else if (c == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90; /* overlong */
        else if (c == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

int cm_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        /* ascii runs are the common case */
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t l = char_len(p + i, n - i);
        if (!l)
            return 0;
        i += l;
    }
    return 1;
}

char *cm_utf8_clip(cm_arena *a, const char *s, size_t max)
{
    if (!s)
        s = "";
    size_t n = strlen(s);
    char *out = cm_arena_alloc(a, (n < max ? n : max) + 4);
    if (!out)
        return NULL;
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        size_t l = char_len(p + i, n - i);
        size_t w = l ? l : 1;
        if (o + w > max) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (!l || p[i] < 0x20 || p[i] == 0x7f)
            out[o] = '?';
        else
            memcpy(out + o, p + i, l);
        o += l && p[i] >= 0x20 && p[i] != 0x7f ? l : 1;
        i += w;
    }
    out[o] = '\0';
    return out;
}

int cm_utf8_text_valid(const char *s, size_t max, int required)
{
    if (!s || !*s)
        return !required;
    const unsigned char *p = (const unsigned char *)s;
    size_t n = 0;
    while (*p) {
        unsigned c = *p;
        size_t len = c < 0x80             ? 1
                     : (c & 0xe0) == 0xc0 ? 2
                     : (c & 0xf0) == 0xe0 ? 3
                     : (c & 0xf8) == 0xf0 ? 4
                                          : 0;
        if (len == 0 || (len == 2 && c < 0xc2) || (len == 4 && c > 0xf4))
            return 0; /* not a utf-8 lead byte, or an overlong / out of range one */
        if (c < 0x20 || c == 0x7f)
            return 0; /* control characters */
        for (size_t k = 1; k < len; k++)
            if ((p[k] & 0xc0) != 0x80)
                return 0;
        if (len == 3 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0)))
            return 0; /* overlong, or a utf-16 surrogate */
        if (len == 4 && ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90)))
            return 0; /* overlong, or past U+10FFFF */
        p += len;
        n++;
    }
    /* characters as the proto counts them, and bytes as the buffers hold
     * them (4 bytes per character at most) */
    return n <= max && (size_t)(p - (const unsigned char *)s) <= max * 4;
}
