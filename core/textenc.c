/* Float rows as text for JSON answers (embeddings): a JSON array of numbers, or
 * base64 of the little-endian float bytes (OpenAI's encoding_format "base64").
 * In C because a 384-wide row per text, hundreds of texts per request, would
 * otherwise cross into Lua element by element. */
#include "error.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int64_t lm_f32_to_json(const float *x, int64_t n, char *out, int64_t cap) {
    if ((!x && n) || n < 0 || cap < 0) { lm_err("f32_to_json: bad arguments"); return INT64_MIN; }
    /* %.9g: the shortest form that reads back to the same float; JSON has no NaN/Inf */
    int64_t need = 2 + n * 17;
    if (need > cap) return -need;
    int64_t k = 0;
    out[k++] = '[';
    for (int64_t i = 0; i < n; i++) {
        if (i) out[k++] = ',';
        float v = x[i];
        if (!isfinite(v)) { memcpy(out + k, "null", 4); k += 4; continue; }
        k += snprintf(out + k, (size_t)(cap - k), "%.9g", (double)v);
    }
    out[k++] = ']';
    return k;
}

int64_t lm_base64_encode(const void *data, int64_t n, char *out, int64_t cap) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if ((!data && n) || n < 0 || cap < 0) { lm_err("base64_encode: bad arguments"); return INT64_MIN; }
    int64_t need = (n + 2) / 3 * 4;
    if (need > cap) return -need;
    const unsigned char *p = data;
    int64_t k = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[k++] = tab[v >> 18], out[k++] = tab[(v >> 12) & 63], out[k++] = tab[(v >> 6) & 63], out[k++] = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        out[k++] = tab[v >> 18], out[k++] = tab[(v >> 12) & 63];
        out[k++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[k++] = '=';
    }
    return k;
}

/* Strict: the standard alphabet only (no white space, no URL-safe letters), '=' only as the
 * last one or two characters of a length that is a multiple of 4; unpadded input (length
 * 2 or 3 mod 4) is accepted. The first bad character is named by its offset. */
int64_t lm_base64_decode(const char *in, int64_t n, void *out, int64_t cap) {
    if ((!in && n) || n < 0 || cap < 0 || (!out && cap)) { lm_err("base64_decode: bad arguments"); return INT64_MIN; }
    int64_t pad = 0;
    if (n % 4 == 0 && n >= 4) pad = (in[n - 1] == '=') + (in[n - 1] == '=' && in[n - 2] == '=');
    int64_t body = n - pad;
    int64_t need = body / 4 * 3 + (body % 4 ? body % 4 - 1 : 0);
    if (need > cap) return -need;
    unsigned char *p = out;
    uint32_t acc = 0;
    int64_t k = 0;
    for (int64_t i = 0; i < body; i++) {
        unsigned char c = (unsigned char)in[i];
        uint32_t v;
        if (c >= 'A' && c <= 'Z') v = c - 'A';
        else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
        else if (c >= '0' && c <= '9') v = c - '0' + 52;
        else if (c == '+') v = 62;
        else if (c == '/') v = 63;
        else {
            if (c >= 0x20 && c < 0x7f) lm_err("base64: '%c' at offset %lld is not a base64 character", c, (long long)i);
            else lm_err("base64: byte 0x%02x at offset %lld is not a base64 character", c, (long long)i);
            return INT64_MIN;
        }
        acc = acc << 6 | v;
        if (i % 4 == 3) { p[k++] = (unsigned char)(acc >> 16); p[k++] = (unsigned char)(acc >> 8); p[k++] = (unsigned char)acc; acc = 0; }
    }
    if (body % 4 == 1) { lm_err("base64: %lld characters is not a whole number of bytes (data cut short?)", (long long)n); return INT64_MIN; }
    if (body % 4 == 2) p[k++] = (unsigned char)(acc >> 4);
    else if (body % 4 == 3) { p[k++] = (unsigned char)(acc >> 10); p[k++] = (unsigned char)(acc >> 2); }
    return k;
}
