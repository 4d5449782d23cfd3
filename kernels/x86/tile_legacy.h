/* R x 4 tiles of the legacy formats' dot products (lm_vec_dot_tile_fn), for
 * batched decode and short prefills: R weight rows against 4 activation rows,
 * each weight block unpacked once per tile and each activation block's scales
 * converted once per tile, instead of once per (row, activation) pair.
 *
 * Every output repeats the AVX2 single-row kernel's float operations in its
 * order (per block: the scale product xd * yd, the int32 partial sums
 * converted, one FMA into eight lanes; Q4_1's min term as a separate running
 * FMA; a final hsum8 plus that term), so a tile is bit-identical to the row
 * by row product and batching never changes a result.
 *
 * Included by an ISA's kernel file after it defines
 *   nibbles(qs)   16 bytes of nibble pairs -> 32 bytes (low nibbles, then high)
 *   DOT_US(x, y)  unsigned bytes x times signed bytes y -> 8 int32 sums of 4
 *   hsum8(v)      the AVX2 kernels' horizontal sum */
#ifndef LM_TILE_LEGACY_H
#define LM_TILE_LEGACY_H

#define LM_TILE_C 4

/* fp16 d and s of a q8_1 block (adjacent) -> floats in lanes 0 and 1 */
static inline __m128 tile_half2(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(v));
}

#define LM_DEFINE_TILE_Q4_1(NAME, R)                                                                   \
void NAME(int64_t n, float *s, size_t s_stride, const void *vx, size_t x_stride, const void *vy,     \
          size_t y_stride) {                                                                          \
    const char *xb = vx, *yb = vy;                                                                    \
    __m256 acc[R][LM_TILE_C];                                                                         \
    __m128 summs[R];                                                                                  \
    for (int r = 0; r < R; r++) {                                                                     \
        summs[r] = _mm_setzero_ps();                                                                  \
        for (int c = 0; c < LM_TILE_C; c++) acc[r][c] = _mm256_setzero_ps();                          \
    }                                                                                                 \
    for (int64_t i = 0; i < n / QK; i++) {                                                            \
        __m256i qy[LM_TILE_C];                                                                        \
        __m256 yd[LM_TILE_C];                                                                         \
        __m128 ds[LM_TILE_C];                                                                         \
        for (int c = 0; c < LM_TILE_C; c++) {                                                         \
            const block_q8_1 *y = (const block_q8_1 *)(yb + c * y_stride) + i;                        \
            ds[c] = tile_half2(y);                                                                    \
            yd[c] = _mm256_broadcastss_ps(ds[c]);                                                     \
            qy[c] = _mm256_loadu_si256((const __m256i *)y->qs);                                       \
        }                                                                                             \
        /* the four activations' s in one vector: lanes 1 of ds[0..3] */                              \
        const __m128 s01 = _mm_unpacklo_ps(ds[0], ds[1]), s23 = _mm_unpacklo_ps(ds[2], ds[3]);       \
        const __m128 ys = _mm_movehl_ps(s23, s01);                                                    \
        for (int r = 0; r < R; r++) {                                                                 \
            const block_q4_1 *x = (const block_q4_1 *)(xb + r * x_stride) + i;                        \
            const __m128 dm = tile_half2(x);                                                          \
            const __m256 xd = _mm256_broadcastss_ps(dm);                                              \
            summs[r] = _mm_fmadd_ps(_mm_permute_ps(dm, 0x55), ys, summs[r]);                          \
            const __m256i qx = nibbles(x->qs);                                                        \
            for (int c = 0; c < LM_TILE_C; c++)                                                       \
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(xd, yd[c]),                                 \
                                            _mm256_cvtepi32_ps(DOT_US(qx, qy[c])), acc[r][c]);        \
        }                                                                                             \
    }                                                                                                 \
    for (int r = 0; r < R; r++) {                                                                     \
        float m[4];                                                                                   \
        _mm_storeu_ps(m, summs[r]);                                                                   \
        for (int c = 0; c < LM_TILE_C; c++) s[c * s_stride + r] = hsum8(acc[r][c]) + m[c];           \
    }                                                                                                 \
}

#define LM_DEFINE_TILE_Q8_0(NAME, R)                                                                   \
void NAME(int64_t n, float *s, size_t s_stride, const void *vx, size_t x_stride, const void *vy,     \
          size_t y_stride) {                                                                          \
    const char *xb = vx, *yb = vy;                                                                    \
    __m256 acc[R][LM_TILE_C];                                                                         \
    for (int r = 0; r < R; r++)                                                                       \
        for (int c = 0; c < LM_TILE_C; c++) acc[r][c] = _mm256_setzero_ps();                          \
    for (int64_t i = 0; i < n / QK; i++) {                                                            \
        __m256i qy[LM_TILE_C];                                                                        \
        __m256 yd[LM_TILE_C];                                                                         \
        for (int c = 0; c < LM_TILE_C; c++) {                                                         \
            const block_q8_0 *y = (const block_q8_0 *)(yb + c * y_stride) + i;                        \
            yd[c] = _mm256_set1_ps(lm_f16_to_f32(y->d));                                              \
            qy[c] = _mm256_loadu_si256((const __m256i *)y->qs);                                       \
        }                                                                                             \
        for (int r = 0; r < R; r++) {                                                                 \
            const block_q8_0 *x = (const block_q8_0 *)(xb + r * x_stride) + i;                        \
            const __m256 xd = _mm256_set1_ps(lm_f16_to_f32(x->d));                                    \
            const __m256i qx = _mm256_loadu_si256((const __m256i *)x->qs);                            \
            const __m256i ax = _mm256_sign_epi8(qx, qx);                                              \
            for (int c = 0; c < LM_TILE_C; c++)                                                       \
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(xd, yd[c]),                                 \
                                            _mm256_cvtepi32_ps(DOT_US(ax, _mm256_sign_epi8(qy[c], qx))), \
                                            acc[r][c]);                                               \
        }                                                                                             \
    }                                                                                                 \
    for (int r = 0; r < R; r++)                                                                       \
        for (int c = 0; c < LM_TILE_C; c++) s[c * s_stride + r] = hsum8(acc[r][c]);                   \
}

#endif
