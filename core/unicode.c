#include "unicode.h"
#include "lumen.h"

#include <string.h>

unsigned lm_unicode_flags(uint32_t cp) {
    if (cp > 0x10FFFF) return LM_U_UNDEFINED;
    /* a flat table for the common planes would be faster; binary search is ~10 steps */
    int lo = 0, hi = lm_ucd_n_ranges - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (lm_ucd_ranges[mid].start <= cp) lo = mid; else hi = mid - 1;
    }
    return lm_ucd_ranges[lo].flags;
}

uint32_t lm_utf8_decode(const char *str, size_t n, size_t *i) {
    const unsigned char *s = (const unsigned char *)str + *i;
    size_t left = n - *i;
    unsigned c = s[0];
    if (c < 0x80) { *i += 1; return c; }
    if (!(c & 0x40)) goto bad;
    if (!(c & 0x20)) {
        if (left < 2 || (s[1] & 0xC0) != 0x80) goto bad;
        *i += 2;
        return ((c & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (!(c & 0x10)) {
        if (left < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) goto bad;
        *i += 3;
        return ((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    if (!(c & 0x08)) {
        if (left < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) goto bad;
        *i += 4;
        return ((c & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    }
bad:
    *i += 1;
    return 0xFFFD;
}

int lm_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = 0xC0 | (cp >> 6); o[1] = 0x80 | (cp & 0x3F); return 2; }
    if (cp < 0x10000) { o[0] = 0xE0 | (cp >> 12); o[1] = 0x80 | ((cp >> 6) & 0x3F); o[2] = 0x80 | (cp & 0x3F); return 3; }
    o[0] = 0xF0 | (cp >> 18); o[1] = 0x80 | ((cp >> 12) & 0x3F); o[2] = 0x80 | ((cp >> 6) & 0x3F); o[3] = 0x80 | (cp & 0x3F);
    return 4;
}

uint32_t lm_unicode_tolower(uint32_t cp) { return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp; }

size_t lm_utf8_complete_len(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    /* look back at most 3 bytes for a lead byte whose sequence is cut off */
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        unsigned c = s[n - back];
        if ((c & 0xC0) == 0x80) continue;          /* continuation byte */
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > back ? n - back : n;
    }
    return n;
}

/* The well-formed UTF-8 sequence at p[0..n): its length, or minus the length of
 * its maximal ill-formed subpart (a lead byte and the continuation bytes it
 * allows, cut short; at least 1) -- the unit Unicode replaces with one U+FFFD. */
static int utf8_seq(const unsigned char *p, int64_t n) {
    unsigned c = p[0];
    if (c < 0x80) return 1;
    int len;
    unsigned lo = 0x80, hi = 0xBF; /* the allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;       /* overlong */
        else if (c == 0xED) hi = 0x9F;  /* UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;       /* overlong */
        else if (c == 0xF4) hi = 0x8F;  /* beyond U+10FFFF */
    } else {
        return -1;                      /* continuation byte, C0/C1 overlongs, F5..FF */
    }
    if (n < 2 || p[1] < lo || p[1] > hi) return -1;
    for (int k = 2; k < len; k++)
        if (k >= n || (p[k] & 0xC0) != 0x80) return -k;
    return len;
}

bool lm_utf8_valid(const char *s, int64_t n) {
    const unsigned char *p = (const unsigned char *)s;
    if (n < 0 || (n > 0 && !s)) return false;
    for (int64_t i = 0; i < n;) {
        int k = utf8_seq(p + i, n - i);
        if (k < 0) return false;
        i += k;
    }
    return true;
}

int64_t lm_utf8_sanitize(const char *s, int64_t n, char *out) {
    const unsigned char *p = (const unsigned char *)s;
    int64_t o = 0;
    if (n <= 0 || !s || !out) return 0;
    for (int64_t i = 0; i < n;) {
        int k = utf8_seq(p + i, n - i);
        if (k > 0) {
            memcpy(out + o, p + i, (size_t)k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += -k;
        }
    }
    return o;
}
