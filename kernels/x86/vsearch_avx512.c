/* Vector search scores in zmm (vsearch.h: the order every kernel follows).
 *
 * A store of a million rows is read from memory once per query, so what
 * matters is keeping the reads streaming: one row at a time, front to back,
 * its sixteen partial sums in one register fed by a chain of FMAs, reduced in
 * the reference's order with four shuffles. Measured against the other
 * shapes we tried (one thread, 300,000 x 384, variants alternating in one
 * process, medians of 11-15 runs on a loaded 2-core Zen 4): sixteen rows at a
 * time with one transposing reduction (attend_avx512.c's hsum16) was 10-17%
 * slower out of cache; interleaving the sixteen rows' loads (sixteen streams)
 * 1.3-2x slower; software prefetch 1-16 KB ahead 25-50% slower (the hardware
 * prefetcher follows one sequential stream well on its own).
 *
 * int8 rows: each 16 bytes sign-extended to int32, converted to float (exact)
 * and FMA'd like f32 rows; the score is scales[i] times the dot, the same
 * bits as the scalar reference. (vpdpbusd on a quantized query would change
 * the scores; measured over 1M x 384 on one thread it was 2.3x faster in
 * cache but only ~10% out of it, where this kernel is within 10-20% of a
 * plain read of the same bytes.) */
#include "../vsearch.h"

#include <immintrin.h>
#include <stdint.h>

/* 16 elements of a row from element offset o, as floats; lanes past the mask are 0 */
static inline __attribute__((always_inline)) __m512 load16(const void *row, int i8, int32_t o, __mmask16 m) {
    if (i8) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, (const int8_t *)row + o)));
    return _mm512_maskz_loadu_ps(m, (const float *)row + o);
}

/* lm_vsearch_reduce16's order, each add with the same left operand */
static inline float reduce16(__m512 p) {
    const __m512 t = _mm512_add_ps(p, _mm512_shuffle_ps(p, p, _MM_SHUFFLE(1, 0, 3, 2)));   /* p0+p2, p1+p3 */
    const __m512 s = _mm512_add_ps(t, _mm512_shuffle_ps(t, t, _MM_SHUFFLE(2, 3, 0, 1)));   /* s_c in lane 4c */
    const __m512 h = _mm512_add_ps(s, _mm512_shuffle_f32x4(s, s, _MM_SHUFFLE(2, 3, 0, 1))); /* s0+s1, s2+s3 */
    return _mm512_cvtss_f32(_mm512_add_ps(h, _mm512_shuffle_f32x4(h, h, _MM_SHUFFLE(1, 0, 3, 2))));
}

static inline __attribute__((always_inline)) void scores(const void *rows, const float *scales, int64_t n,
                                                         int32_t dim, const float *q, float *out, int i8) {
    const size_t row_bytes = (size_t)dim * (i8 ? 1 : sizeof(float));
    const int32_t full = dim & ~15;
    const __mmask16 tail = (__mmask16)((1u << (dim & 15)) - 1);
    const __m512 qt = _mm512_maskz_loadu_ps(tail, q + full);
    for (int64_t i = 0; i < n; i++) {
        const char *row = (const char *)rows + (size_t)i * row_bytes;
        __m512 acc = _mm512_setzero_ps();
        for (int32_t o = 0; o < full; o += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + o), load16(row, i8, o, 0xffff), acc);
        if (tail) acc = _mm512_fmadd_ps(qt, load16(row, i8, full, tail), acc);
        const float d = reduce16(acc);
        out[i] = i8 ? scales[i] * d : d;
    }
}

void lm_vsearch_scores_avx512(int dtype, const void *rows, const float *scales, int64_t n, int32_t dim,
                            const float *q, float *out) {
    if (dtype == LM_I8) scores(rows, scales, n, dim, q, out, 1);
    else scores(rows, NULL, n, dim, q, out, 0);
}
