/* Vector search scores in ymm (vsearch.h: the order every kernel follows):
 * a row's sixteen partial sums are two registers, lanes 0-7 and 8-15, and the
 * tail block goes through a zero-padded copy so that its padding lanes see
 * fma(0, 0, p) exactly as the scalar reference's do. Built with the x86-64-v3
 * baseline flags (AVX2 + FMA). */
#include "../vsearch.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline __attribute__((always_inline)) void load16(const void *row, int i8, int32_t o, __m256 *lo, __m256 *hi) {
    if (i8) {
        const __m128i b = _mm_loadu_si128((const __m128i *)((const int8_t *)row + o));
        *lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
        *hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(b, b)));
    } else {
        *lo = _mm256_loadu_ps((const float *)row + o);
        *hi = _mm256_loadu_ps((const float *)row + o + 8);
    }
}

static inline __attribute__((always_inline)) void scores(const void *rows, const float *scales, int64_t n,
                                                         int32_t dim, const float *q, float *out, int i8) {
    const size_t esize = i8 ? 1 : sizeof(float);
    const int32_t full = dim & ~15, rest = dim & 15;
    float qt[16] = {0};
    memcpy(qt, q + full, (size_t)rest * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        const char *row = (const char *)rows + (size_t)i * dim * esize;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), x0, x1;
        for (int32_t o = 0; o < full; o += 16) {
            load16(row, i8, o, &x0, &x1);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + o), x0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + o + 8), x1, a1);
        }
        if (rest) {
            _Alignas(32) char xt[64] = {0};
            memcpy(xt, row + (size_t)full * esize, (size_t)rest * esize);
            load16(xt, i8, 0, &x0, &x1);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qt), x0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qt + 8), x1, a1);
        }
        float p[16];
        _mm256_storeu_ps(p, a0);
        _mm256_storeu_ps(p + 8, a1);
        const float d = lm_vsearch_reduce16(p);
        out[i] = i8 ? scales[i] * d : d;
    }
}

void lm_vsearch_scores_avx2(int dtype, const void *rows, const float *scales, int64_t n, int32_t dim,
                            const float *q, float *out) {
    if (dtype == LM_I8) scores(rows, scales, n, dim, q, out, 1);
    else scores(rows, NULL, n, dim, q, out, 0);
}
