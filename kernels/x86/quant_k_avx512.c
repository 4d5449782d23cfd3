/* K-quant kernels for AVX-512 (F/BW/DQ/VL + VNNI).
 *
 * vec_dot works on 64 weights per zmm, in element order so the Q8_K quants load
 * straight: for Q4_K/Q5_K the 32 bytes of a 64-element group are broadcast to both
 * halves of a zmm and the upper half shifted down a nibble; for Q6_K 64 bytes of ql
 * give 64 low nibbles (or 64 high ones). The weights are unsigned, so VNNI's
 * vpdpbusd multiplies them with the signed Q8_K quants directly, summing each 4
 * products into an int32 lane (at most 4*63*128 < 2^15 in magnitude). Two such
 * vectors are packed to int16 (exactly, no saturation can occur) and one vpdpwssd
 * multiplies them by the sub-block scales (spread over the lanes with vpermw) and
 * accumulates: three VNNI instructions per 128 weights, and each super-block's
 * integer sum stays exact. Q6_K's -32 and the Q4_K/Q5_K mins come in through Q8_K's
 * bsums, once per block.
 *
 * quantize_q8_K: bit-identical to the scalar reference. */
#include "quant_k_x86.h"

#include <immintrin.h>

/* vpermw indices for the scales after packs_epi32(a0, a1): 128-bit lane L of the
 * result holds a0's lane L in int16 0-3 and a1's lane L in int16 4-7.
 * Q4_K/Q5_K, groups 2p (a0) and 2p+1 (a1) of 64: a group's lanes 0-1 are its low
 * nibbles (sub-block 2g), lanes 2-3 its high nibbles (2g+1). */
static const int16_t k_scale_idx_45[2][32] = {
    {0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2, 1, 1, 1, 1, 3, 3, 3, 3, 1, 1, 1, 1, 3, 3, 3, 3},
    {4, 4, 4, 4, 6, 6, 6, 6, 4, 4, 4, 4, 6, 6, 6, 6, 5, 5, 5, 5, 7, 7, 7, 7, 5, 5, 5, 5, 7, 7, 7, 7},
};
/* Q6_K, half h of 128: a0 holds sub-blocks 8h+L, a1 sub-blocks 8h+4+L, in lane L. */
static const int16_t k_scale_idx_6[2][32] = {
    {0, 0, 0, 0, 4, 4, 4, 4, 1, 1, 1, 1, 5, 5, 5, 5, 2, 2, 2, 2, 6, 6, 6, 6, 3, 3, 3, 3, 7, 7, 7, 7},
    {8, 8, 8, 8, 12, 12, 12, 12, 9, 9, 9, 9, 13, 13, 13, 13, 10, 10, 10, 10, 14, 14, 14, 14, 11, 11, 11, 11, 15, 15, 15, 15},
};

static inline float hsum_ps256(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* A 64-element group of Q4_K/Q5_K low bits: bytes qs[0..32) low nibbles, then high. */
static inline __m512i nibbles64(const uint8_t *qs, __m512i m4) {
    const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)qs));
    return _mm512_and_si512(_mm512_mask_srli_epi16(q, 0xFFFF0000u, q, 4), m4);
}

/* sum += scales * (dot of a0's weights, dot of a1's weights), see above. */
static inline __m512i dot_pair(__m512i sum, __m512i w0, __m512i w1, const int8_t *q8, __m512i scales) {
    const __m512i a0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, _mm512_loadu_si512(q8));
    const __m512i a1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, _mm512_loadu_si512(q8 + 64));
    return _mm512_dpwssd_epi32(sum, _mm512_packs_epi32(a0, a1), scales);
}

/* Per Q4_K/Q5_K block: d and dmin times the Q8_K d; the mins' term
 * dmin * sum(min_j * (bsum_2j + bsum_2j+1)) subtracted from *acc_m; and the scales
 * as int16 elements 0-7 of a zmm, for vpermw. */
static inline __m512i block_setup_45(uint16_t d, uint16_t dmin, const uint8_t *packed, const block_q8_K *y,
                                     __m512 *vd, __m256 *acc_m) {
    const uint32_t d2 = (uint32_t)d | (uint32_t)dmin << 16;
    const __m128 dd = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128((int)d2)), _mm_set1_ps(y->d)); /* d, dmin */
    *vd = _mm512_broadcastss_ps(dd);
    const __m128i sm = lm_k_unpack_scales_sse(packed);
    const __m128i dup_mins = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, dup_mins));
    const __m256i prod = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)y->bsums));
    *acc_m = _mm256_fnmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), _mm256_cvtepi32_ps(prod), *acc_m);
    return _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(sm));
}

void lm_vec_dot_q4_K_q8_K_avx512(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i idx[2] = {_mm512_loadu_si512(k_scale_idx_45[0]), _mm512_loadu_si512(k_scale_idx_45[1])};
    __m512 acc = _mm512_setzero_ps();
    __m256 acc_m = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m512 vd;
        const __m512i scales = block_setup_45(x[i].d, x[i].dmin, x[i].scales, &y[i], &vd, &acc_m);
        __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 2
        for (int p = 0; p < 2; p++) {
            const __m512i w0 = nibbles64(x[i].qs + 64 * p, m4), w1 = nibbles64(x[i].qs + 64 * p + 32, m4);
            sum = dot_pair(sum, w0, w1, y[i].qs + 128 * p, _mm512_permutexvar_epi16(idx[p], scales));
        }
        acc = _mm512_fmadd_ps(vd, _mm512_cvtepi32_ps(sum), acc);
    }
    *s = _mm512_reduce_add_ps(acc) + hsum_ps256(acc_m);
}

/* Q4_K tiles (lm_vec_dot_tile_fn): 2 weight rows x 4 activation rows. The
 * weights' nibbles and the scales spread for vpdpwssd are made once per row and
 * super-block; everything that touches an activation (the scale products, the
 * mins' term, the integer sums, the FMA) is done per pair exactly as
 * lm_vec_dot_q4_K_q8_K_avx512 does it, so each output is that kernel's bits. */
void lm_vec_dot_tile_q4_K_q8_K_vnni(int64_t n, float *restrict s, size_t s_stride, const void *restrict vx,
                                    size_t x_stride, const void *restrict vy, size_t y_stride) {
    enum { R = LM_TILE_ROWS_K, C = 4 };
    const char *xb = vx, *yb = vy;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i idx[2] = {_mm512_loadu_si512(k_scale_idx_45[0]), _mm512_loadu_si512(k_scale_idx_45[1])};
    __m512 acc[R][C];
    __m256 acc_m[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) { acc[r][c] = _mm512_setzero_ps(); acc_m[r][c] = _mm256_setzero_ps(); }
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m512i w[R][4], sc[R][2];
        const block_q4_K *x[R];
        for (int r = 0; r < R; r++) {
            x[r] = (const block_q4_K *)(xb + r * x_stride) + i;
            for (int p = 0; p < 2; p++) {
                w[r][2 * p] = nibbles64(x[r]->qs + 64 * p, m4);
                w[r][2 * p + 1] = nibbles64(x[r]->qs + 64 * p + 32, m4);
            }
        }
        for (int c = 0; c < C; c++) {
            const block_q8_K *y = (const block_q8_K *)(yb + c * y_stride) + i;
            for (int r = 0; r < R; r++) {
                __m512 vd;
                const __m512i scales = block_setup_45(x[r]->d, x[r]->dmin, x[r]->scales, y, &vd, &acc_m[r][c]);
                if (c == 0) {
                    sc[r][0] = _mm512_permutexvar_epi16(idx[0], scales);
                    sc[r][1] = _mm512_permutexvar_epi16(idx[1], scales);
                }
                __m512i sum = dot_pair(_mm512_setzero_si512(), w[r][0], w[r][1], y->qs, sc[r][0]);
                sum = dot_pair(sum, w[r][2], w[r][3], y->qs + 128, sc[r][1]);
                acc[r][c] = _mm512_fmadd_ps(vd, _mm512_cvtepi32_ps(sum), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) s[c * s_stride + r] = _mm512_reduce_add_ps(acc[r][c]) + hsum_ps256(acc_m[r][c]);
}

void lm_vec_dot_q5_K_q8_K_avx512(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q5_K *x = vx;
    const block_q8_K *y = vy;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i bit4 = _mm512_set1_epi8(0x10);
    const __m512i idx[2] = {_mm512_loadu_si512(k_scale_idx_45[0]), _mm512_loadu_si512(k_scale_idx_45[1])};
    __m512 acc = _mm512_setzero_ps();
    __m256 acc_m = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m512 vd;
        const __m512i scales = block_setup_45(x[i].d, x[i].dmin, x[i].scales, &y[i], &vd, &acc_m);
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)x[i].qh));
        __m512i w[4];
#pragma GCC unroll 4
        for (int j = 0; j < QK_K / 64; j++) {
            /* 5th bit: bit 2j of qh[l] for the low half, bit 2j+1 for the high half */
            const __m512i sel = _mm512_mask_blend_epi8(0xFFFFFFFF00000000ull, _mm512_set1_epi8((char)(1 << (2 * j))),
                                                       _mm512_set1_epi8((char)(1 << (2 * j + 1))));
            w[j] = nibbles64(x[i].qs + 32 * j, m4);
            w[j] = _mm512_mask_add_epi8(w[j], _mm512_test_epi8_mask(qh, sel), w[j], bit4);
        }
        __m512i sum = dot_pair(_mm512_setzero_si512(), w[0], w[1], y[i].qs, _mm512_permutexvar_epi16(idx[0], scales));
        sum = dot_pair(sum, w[2], w[3], y[i].qs + 128, _mm512_permutexvar_epi16(idx[1], scales));
        acc = _mm512_fmadd_ps(vd, _mm512_cvtepi32_ps(sum), acc);
    }
    *s = _mm512_reduce_add_ps(acc) + hsum_ps256(acc_m);
}

/* Q2_K and Q3_K: 64 weights per zmm as Q6_K (elements 128h+0..63 and 128h+64..127,
 * so Q6_K's scale spreading fits), their bits 2j..2j+1 of the 32 qs bytes of the
 * half broadcast to both 256-bit halves and shifted by half. Q2_K reduces each
 * block's integer sums exactly and adds them as the scalar reference does (bit
 * for bit); Q3_K takes its quants unsigned (0..7) with the -4 out through the
 * bsums and accumulates in float as Q6_K (within rounding of the scalar). */
static inline void low2_pairs(const uint8_t *qs, __m512i *w_a, __m512i *w_b) {
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)qs));
    const __m512i a = _mm512_mask_srli_epi16(q, 0xFFFF0000u, q, 2);     /* shifts 0 | 2 */
    *w_a = _mm512_and_si512(a, m3);
    *w_b = _mm512_and_si512(_mm512_srli_epi16(a, 4), m3);                /* shifts 4 | 6 */
}

void lm_vec_dot_q2_K_q8_K_avx512(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q2_K *x = vx;
    const block_q8_K *y = vy;
    const __m512i idx[2] = {_mm512_loadu_si512(k_scale_idx_6[0]), _mm512_loadu_si512(k_scale_idx_6[1])};
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m128i m4 = _mm_set1_epi8(0x0F);
        const __m512i scales = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(sc8, m4)));
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), m4));
        const __m256i summs = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)y[i].bsums));
        __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 2
        for (int h = 0; h < QK_K / 128; h++) {
            __m512i w_a, w_b;
            low2_pairs(x[i].qs + 32 * h, &w_a, &w_b);
            sum = dot_pair(sum, w_a, w_b, y[i].qs + 128 * h, _mm512_permutexvar_epi16(idx[h], scales));
        }
        sumf = lm_q2_K_block_sum(sumf, y[i].d * _cvtsh_ss(x[i].d), _mm512_reduce_add_epi32(sum),
                                 y[i].d * _cvtsh_ss(x[i].dmin), _mm512_reduce_add_epi32(_mm512_zextsi256_si512(summs)));
    }
    *s = sumf;
}

void lm_vec_dot_q3_K_q8_K_avx512(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q3_K *x = vx;
    const block_q8_K *y = vy;
    const __m512i idx[2] = {_mm512_loadu_si512(k_scale_idx_6[0]), _mm512_loadu_si512(k_scale_idx_6[1])};
    const __m512i four = _mm512_set1_epi8(4);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(lm_k_scales_q3_x86(x[i].scales));
        const __m512i scales = _mm512_zextsi256_si512(sc16);
        const __m256i offset = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)y[i].bsums));
        __m512i sum = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 2)));
        const __m512i hm = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)x[i].hmask));
#pragma GCC unroll 2
        for (int h = 0; h < QK_K / 128; h++) {
            __m512i w_a, w_b;
            low2_pairs(x[i].qs + 32 * h, &w_a, &w_b);
            /* the third bit of element 128h+32j+l is bit 4h+j of hmask[l]: j = 0 | 1 for w_a, 2 | 3 for w_b */
            const __m512i bits_a = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (4 * h))),
                                                      _mm256_set1_epi8((char)(1 << (4 * h + 1))), 1);
            const __m512i bits_b = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (4 * h + 2))),
                                                      _mm256_set1_epi8((char)(1 << (4 * h + 3))), 1);
            w_a = _mm512_mask_add_epi8(w_a, _mm512_test_epi8_mask(hm, bits_a), w_a, four);
            w_b = _mm512_mask_add_epi8(w_b, _mm512_test_epi8_mask(hm, bits_b), w_b, four);
            sum = dot_pair(sum, w_a, w_b, y[i].qs + 128 * h, _mm512_permutexvar_epi16(idx[h], scales));
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(x[i].d) * y[i].d), _mm512_cvtepi32_ps(sum), acc);
    }
    *s = _mm512_reduce_add_ps(acc);
}

void lm_vec_dot_q6_K_q8_K_avx512(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i m30 = _mm512_set1_epi8(0x30);
    const __m512i idx[2] = {_mm512_loadu_si512(k_scale_idx_6[0]), _mm512_loadu_si512(k_scale_idx_6[1])};
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales));
        const __m512i scales = _mm512_zextsi256_si512(sc16);
        /* the -32, once per block: -32 * sum(sc_j * bsum_j) */
        const __m256i offset = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)y[i].bsums));
        __m512i sum = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5)));
#pragma GCC unroll 2
        for (int h = 0; h < QK_K / 128; h++) {
            const __m512i ql = _mm512_loadu_si512(x[i].ql + 64 * h);
            const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h)));
            /* Elements 128h+0..63 take ql's low nibbles and qh bits 0-1 (first 32) or
             * 2-3 (next 32); elements 128h+64..127 the high nibbles and bits 4-5 / 6-7.
             * The bit pairs are shifted to bits 4-5 of their own byte. */
            const __m512i h_a = _mm512_mask_slli_epi16(_mm512_slli_epi16(qh, 4), 0xFFFF0000u, qh, 2);
            const __m512i h_b = _mm512_mask_srli_epi16(qh, 0xFFFF0000u, qh, 2);
            /* (a & m4) | b, with b pre-masked to bits 4-5 */
            const __m512i w_a = _mm512_ternarylogic_epi32(ql, _mm512_and_si512(h_a, m30), m4, 0xEC);
            const __m512i w_b = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql, 4), _mm512_and_si512(h_b, m30), m4, 0xEC);
            sum = dot_pair(sum, w_a, w_b, y[i].qs + 128 * h, _mm512_permutexvar_epi16(idx[h], scales));
        }
        const float d = y[i].d * _cvtsh_ss(x[i].d);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sum), acc);
    }
    *s = _mm512_reduce_add_ps(acc);
}

/* Q6_K tiles, 2 x 4, as the Q4_K ones: weights and spread scales once per row
 * and super-block, the rest per pair as lm_vec_dot_q6_K_q8_K_avx512 does it. */
void lm_vec_dot_tile_q6_K_q8_K_vnni(int64_t n, float *restrict s, size_t s_stride, const void *restrict vx,
                                    size_t x_stride, const void *restrict vy, size_t y_stride) {
    enum { R = LM_TILE_ROWS_K, C = 4 };
    const char *xb = vx, *yb = vy;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i m30 = _mm512_set1_epi8(0x30);
    const __m512i idx[2] = {_mm512_loadu_si512(k_scale_idx_6[0]), _mm512_loadu_si512(k_scale_idx_6[1])};
    __m512 acc[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m512i w[R][4], sc[R][2];
        __m256i sc16[R];
        float xd[R];
        for (int r = 0; r < R; r++) {
            const block_q6_K *x = (const block_q6_K *)(xb + r * x_stride) + i;
            sc16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
            const __m512i scales = _mm512_zextsi256_si512(sc16[r]);
            xd[r] = _cvtsh_ss(x->d);
            for (int h = 0; h < QK_K / 128; h++) {
                const __m512i ql = _mm512_loadu_si512(x->ql + 64 * h);
                const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x->qh + 32 * h)));
                const __m512i h_a = _mm512_mask_slli_epi16(_mm512_slli_epi16(qh, 4), 0xFFFF0000u, qh, 2);
                const __m512i h_b = _mm512_mask_srli_epi16(qh, 0xFFFF0000u, qh, 2);
                w[r][2 * h] = _mm512_ternarylogic_epi32(ql, _mm512_and_si512(h_a, m30), m4, 0xEC);
                w[r][2 * h + 1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql, 4), _mm512_and_si512(h_b, m30), m4, 0xEC);
                sc[r][h] = _mm512_permutexvar_epi16(idx[h], scales);
            }
        }
        for (int c = 0; c < C; c++) {
            const block_q8_K *y = (const block_q8_K *)(yb + c * y_stride) + i;
            const __m256i bsums = _mm256_loadu_si256((const __m256i *)y->bsums);
            for (int r = 0; r < R; r++) {
                const __m256i offset = _mm256_madd_epi16(sc16[r], bsums);
                __m512i sum = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5)));
                sum = dot_pair(sum, w[r][0], w[r][1], y->qs, sc[r][0]);
                sum = dot_pair(sum, w[r][2], w[r][3], y->qs + 128, sc[r][1]);
                const float d = y->d * xd[r];
                acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sum), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) s[c * s_stride + r] = _mm512_reduce_add_ps(acc[r][c]);
}

/* ---- Q8_K quantizer ---------------------------------------------------------- */

/* After packing four vectors of 16 int32 to bytes (or reducing four vectors lane
 * by lane), 32-bit chunk 4L+k holds vector k's lane L; this puts chunk 4k+L there. */
static inline __m512i transpose4x4_index(void) {
    return _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
}

void lm_quantize_q8_K_avx512(const float *restrict x, void *restrict vy, int64_t n) {
    block_q8_K *y = vy;
    const __m512i order = transpose4x4_index();
    const __m512i ones8 = _mm512_set1_epi8(1);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m512 v[16];
        __m512 vmax = _mm512_setzero_ps();
        for (int j = 0; j < 16; j++) {
            v[j] = _mm512_loadu_ps(x + 16 * j);
            vmax = _mm512_max_ps(_mm512_abs_ps(v[j]), vmax);
        }
        const float amax = _mm512_reduce_max_ps(vmax);
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        /* the first element of that magnitude gives the sign, as in the reference */
        float max = 0;
        const __m512 vamax = _mm512_set1_ps(amax);
        for (int j = 0; j < 16; j++) {
            const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(v[j]), vamax, _CMP_EQ_OQ);
            if (hit) { max = x[16 * j + __builtin_ctz(hit)]; break; }
        }
        const float iscale = -127.f / max;
        const __m512 mul = _mm512_set1_ps(iscale);
        __m512i sums4[4];
        for (int g = 0; g < 4; g++) {
            const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v[4 * g + 0], mul));
            const __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v[4 * g + 1], mul));
            const __m512i i2 = _mm512_cvtps_epi32(_mm512_mul_ps(v[4 * g + 2], mul));
            const __m512i i3 = _mm512_cvtps_epi32(_mm512_mul_ps(v[4 * g + 3], mul));
            /* saturating packs work per 128-bit lane; the permute restores element order */
            const __m512i p = _mm512_packs_epi16(_mm512_packs_epi32(i0, i1), _mm512_packs_epi32(i2, i3));
            const __m512i q = _mm512_permutexvar_epi32(order, p);
            _mm512_storeu_si512(y[i].qs + 64 * g, q);
            sums4[g] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones8, q); /* sums of each 4 quants */
        }
        /* Lane L of sums4[g] holds sub-block 4g+L in four parts; add them up so lane L
         * holds sub-blocks L, 4+L, 8+L, 12+L, then transpose into order. */
        const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(sums4[0], sums4[1]), _mm512_unpackhi_epi32(sums4[0], sums4[1]));
        const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(sums4[2], sums4[3]), _mm512_unpackhi_epi32(sums4[2], sums4[3]));
        const __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
        _mm256_storeu_si256((__m256i *)y[i].bsums, _mm512_cvtepi32_epi16(_mm512_permutexvar_epi32(order, t)));
        y[i].d = 1 / iscale;
    }
}

/* ---- to_float: the scalar references' values bit for bit (quant_k.c's
 * dequantize_q4_K / q6_K): each product and difference rounded on its own, as
 * there, never fused into one FMA. For prompts through the bf16 GEMM
 * (core/matmul.c), which dequantizes every weight row once per product. */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

/* 16 int8 quants times a scale, minus a min: 16 floats */
static inline void deq16(float *y, __m128i q, __m512 scale, __m512 min) {
    const __m512 v = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
    _mm512_storeu_ps(y, _mm512_sub_ps(v, min));
}

void lm_dequantize_q4_K_avx512(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q4_K *x = vx;
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = lm_f16_to_f32(x[i].d), dmin = lm_f16_to_f32(x[i].dmin);
        uint8_t sm[16];
        lm_k_unpack_scales(x[i].scales, sm);
        for (int j = 0; j < QK_K / 64; j++) {
            const __m512 dl0 = _mm512_set1_ps(d * sm[2 * j]), ml0 = _mm512_set1_ps(dmin * sm[8 + 2 * j]);
            const __m512 dl1 = _mm512_set1_ps(d * sm[2 * j + 1]), ml1 = _mm512_set1_ps(dmin * sm[9 + 2 * j]);
            for (int h = 0; h < 2; h++) {
                const __m128i q = _mm_loadu_si128((const __m128i *)(x[i].qs + 32 * j + 16 * h));
                deq16(y + 64 * j + 16 * h, _mm_and_si128(q, m4), dl0, ml0);
                deq16(y + 64 * j + 32 + 16 * h, _mm_and_si128(_mm_srli_epi16(q, 4), m4), dl1, ml1);
            }
        }
    }
}

void lm_dequantize_q6_K_avx512(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q6_K *x = vx;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = lm_f16_to_f32(x[i].d);
        for (int h = 0; h < QK_K / 128; h++) {
            const uint8_t *ql = x[i].ql + 64 * h, *qhp = x[i].qh + 32 * h;
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)qhp);
            /* the four runs of 32 of this half, quants in -32..31 (unpack_q6_K's order) */
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
            for (int r = 0; r < 4; r++) {
                const __m256i v = _mm256_sub_epi8(q[r], off);
                const int k = 128 * h + 32 * r; /* sub-blocks k/16 and k/16 + 1 */
                deq16(y + k, _mm256_castsi256_si128(v), _mm512_set1_ps(d * x[i].scales[k / 16]), zero);
                deq16(y + k + 16, _mm256_extracti128_si256(v, 1), _mm512_set1_ps(d * x[i].scales[k / 16 + 1]), zero);
            }
        }
    }
}
#pragma GCC pop_options
