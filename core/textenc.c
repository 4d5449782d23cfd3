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
