/* K-quant kernels for the x86-64-v3 baseline (AVX2, FMA, F16C).
 *
 * vec_dot: the weight quants are unsigned (Q4_K 0..15, Q5_K 0..31, Q6_K 0..63 before
 * its -32), so _mm256_maddubs_epi16(weights, q8) multiplies them with the signed
 * Q8_K quants exactly (pair sums stay below 2*63*127 < 2^15), and
 * _mm256_madd_epi16 applies the sub-block scales while widening to int32. Each
 * super-block's integer sum is exact; only the float accumulation order differs
 * from the scalar reference. Q6_K's -32 is taken out once per super-block through
 * Q8_K's bsums: sum(sc*(q-32)*q8) = sum(sc*q*q8) - 32*sum(sc*bsum).
 *
 * quantize_q8_K: bit-identical to the scalar reference (same max, same float
 * products, round-to-nearest-even conversion, saturating packs). */
#include "quant_k_x86.h"

#include <immintrin.h>

static inline float hsum_ps256(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* A pshufb control that broadcasts int16 element k of each 128-bit lane:
 * element `lo` in the low lane, `hi` in the high one. */
static inline __m256i pick16(int lo, int hi) {
    return _mm256_setr_m128i(_mm_set1_epi16((short)(0x0100 + 0x0202 * lo)),
                             _mm_set1_epi16((short)(0x0100 + 0x0202 * hi)));
}

/* Q4_K and Q5_K share everything but how the quants of a 64-element group are
 * formed; `lo`/`hi` are the quants of elements 64j..64j+31 and 64j+32..64j+63. */
static inline __m256i dot_group_45(__m256i lo, __m256i hi, const int8_t *q8, __m256i scales, int j) {
    const __m256i p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)q8));
    const __m256i p_hi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
    return _mm256_add_epi32(_mm256_madd_epi16(_mm256_shuffle_epi8(scales, pick16(2 * j, 2 * j)), p_lo),
                            _mm256_madd_epi16(_mm256_shuffle_epi8(scales, pick16(2 * j + 1, 2 * j + 1)), p_hi));
}

/* Per Q4_K/Q5_K block: d and dmin times the Q8_K d; the mins' term
 * dmin * sum(min_j * (bsum_2j + bsum_2j+1)) subtracted from *acc_m; and the scales
 * as int16 in both 128-bit lanes, for pshufb. */
static inline __m256i block_setup_45(uint16_t d, uint16_t dmin, const uint8_t *packed, const block_q8_K *y,
                                     __m256 *vd, __m256 *acc_m) {
    const uint32_t d2 = (uint32_t)d | (uint32_t)dmin << 16;
    const __m128 dd = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128((int)d2)), _mm_set1_ps(y->d)); /* d, dmin */
    *vd = _mm256_broadcastss_ps(dd);
    const __m128i sm = lm_k_unpack_scales_sse(packed);
    const __m128i dup_mins = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, dup_mins));
    const __m256i prod = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)y->bsums));
    *acc_m = _mm256_fnmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), _mm256_cvtepi32_ps(prod), *acc_m);
    return _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
}

void lm_vec_dot_q4_K_q8_K_avx2(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256 vd;
        const __m256i scales = block_setup_45(x[i].d, x[i].dmin, x[i].scales, &y[i], &vd, &acc_m);
        __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < QK_K / 64; j++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            const __m256i lo = _mm256_and_si256(q, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            sumi = _mm256_add_epi32(sumi, dot_group_45(lo, hi, y[i].qs + 64 * j, scales, j));
        }
        acc = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps256(acc) + hsum_ps256(acc_m);
}

void lm_vec_dot_q5_K_q8_K_avx2(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q5_K *x = vx;
    const block_q8_K *y = vy;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i bit4 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256 vd;
        const __m256i scales = block_setup_45(x[i].d, x[i].dmin, x[i].scales, &y[i], &vd, &acc_m);
        const __m256i qh = _mm256_loadu_si256((const __m256i *)x[i].qh);
        __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < QK_K / 64; j++) {
            /* Bit b of each qh byte moved to bit 4 of the same byte (16-bit shifts:
             * whatever crosses between bytes lands outside bit 4). */
            const int b = 2 * j;
            const __m256i h_lo = b <= 4 ? _mm256_slli_epi16(qh, 4 - b) : _mm256_srli_epi16(qh, b - 4);
            const __m256i h_hi = b + 1 <= 4 ? _mm256_slli_epi16(qh, 3 - b) : _mm256_srli_epi16(qh, b - 3);
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_and_si256(h_lo, bit4));
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                                               _mm256_and_si256(h_hi, bit4));
            sumi = _mm256_add_epi32(sumi, dot_group_45(lo, hi, y[i].qs + 64 * j, scales, j));
        }
        acc = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps256(acc) + hsum_ps256(acc_m);
}

void lm_vec_dot_q6_K_q8_K_avx2(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = y[i].d * _cvtsh_ss(x[i].d);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales));
        /* the -32: 32 * sum(sc_j * bsum_j), subtracted once */
        const __m256i offset = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)y[i].bsums));
        const __m256i sc_a = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sc16));      /* scales 0-7 */
        const __m256i sc_b = _mm256_broadcastsi128_si256(_mm256_extracti128_si256(sc16, 1)); /* scales 8-15 */
        __m256i sumi = _mm256_slli_epi32(offset, 5);
        sumi = _mm256_sub_epi32(_mm256_setzero_si256(), sumi);
#pragma GCC unroll 2
        for (int h = 0; h < QK_K / 128; h++) {
            const uint8_t *ql = x[i].ql + 64 * h;
            const int8_t *q8 = y[i].qs + 128 * h;
            const __m256i sc = h == 0 ? sc_a : sc_b;
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h));
            /* high bit pairs 0-1, 2-3, 4-5, 6-7 of qh moved to bits 4-5 */
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                               _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
            /* 32 elements span two 16-element sub-blocks: one per 128-bit lane */
            const __m256i p0 = _mm256_madd_epi16(_mm256_shuffle_epi8(sc, pick16(0, 1)),
                                                 _mm256_maddubs_epi16(q0, _mm256_loadu_si256((const __m256i *)q8)));
            const __m256i p1 = _mm256_madd_epi16(_mm256_shuffle_epi8(sc, pick16(2, 3)),
                                                 _mm256_maddubs_epi16(q1, _mm256_loadu_si256((const __m256i *)(q8 + 32))));
            const __m256i p2 = _mm256_madd_epi16(_mm256_shuffle_epi8(sc, pick16(4, 5)),
                                                 _mm256_maddubs_epi16(q2, _mm256_loadu_si256((const __m256i *)(q8 + 64))));
            const __m256i p3 = _mm256_madd_epi16(_mm256_shuffle_epi8(sc, pick16(6, 7)),
                                                 _mm256_maddubs_epi16(q3, _mm256_loadu_si256((const __m256i *)(q8 + 96))));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps256(acc);
}

/* Q2_K: the 2-bit quants are unsigned, so maddubs + madd as above; the block's
 * integer sums are reduced exactly and added as the scalar reference adds them,
 * which makes this bit-identical to it. */
static inline int32_t hsum_epi32(__m256i v) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(1, 0, 3, 2)));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(r);
}

/* The four 32-element groups of 128 weights against their Q8_K quants: group k
 * (bits 2k..2k+1 of each byte of w) spans sub-blocks 2k (low lane) and 2k+1 (high),
 * whose int16 scales are elements 0-7 of sc in both lanes. The weights are
 * ORed with extra[k] (Q3_K's third bit) first. */
static inline __m256i dot_128_low2(__m256i w, const __m256i extra[4], const int8_t *q8, __m256i sc) {
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        const __m256i q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w, 2 * k), m3), extra[k]);
        const __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(q8 + 32 * k)));
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_shuffle_epi8(sc, pick16(2 * k, 2 * k + 1)), p));
    }
    return sum;
}

void lm_vec_dot_q2_K_q8_K_avx2(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q2_K *x = vx;
    const block_q8_K *y = vy;
    const __m256i none[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m128i m4 = _mm_set1_epi8(0x0F);
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sc8, m4));
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), m4));
        const __m256i summs = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)y[i].bsums));
        const __m256i sc_a = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sc16));
        const __m256i sc_b = _mm256_broadcastsi128_si256(_mm256_extracti128_si256(sc16, 1));
        const __m256i sumi = _mm256_add_epi32(
            dot_128_low2(_mm256_loadu_si256((const __m256i *)x[i].qs), none, y[i].qs, sc_a),
            dot_128_low2(_mm256_loadu_si256((const __m256i *)(x[i].qs + 32)), none, y[i].qs + 128, sc_b));
        sumf = lm_q2_K_block_sum(sumf, y[i].d * _cvtsh_ss(x[i].d), hsum_epi32(sumi), y[i].d * _cvtsh_ss(x[i].dmin),
                                 hsum_epi32(summs));
    }
    *s = sumf;
}

/* Q3_K: the quants taken unsigned (0..7, the third bit as 4) and the -4 out once
 * per block through the bsums, as Q6_K's -32; exact integer sum per block, float
 * accumulation across blocks (within rounding of the scalar's lane order). */
void lm_vec_dot_q3_K_q8_K_avx2(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q3_K *x = vx;
    const block_q8_K *y = vy;
    const __m256i four = _mm256_set1_epi8(4);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(lm_k_scales_q3_x86(x[i].scales));
        const __m256i offset = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)y[i].bsums));
        __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 2));
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x[i].hmask);
#pragma GCC unroll 2
        for (int h = 0; h < QK_K / 128; h++) {
            __m256i extra[4];
            for (int k = 0; k < 4; k++) {
                const __m256i bit = _mm256_set1_epi8((char)(1 << (4 * h + k)));
                extra[k] = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), four);
            }
            const __m256i sc = h == 0 ? _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sc16))
                                      : _mm256_broadcastsi128_si256(_mm256_extracti128_si256(sc16, 1));
            sumi = _mm256_add_epi32(sumi, dot_128_low2(_mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h)), extra,
                                                       y[i].qs + 128 * h, sc));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(x[i].d) * y[i].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps256(acc);
}

/* ---- Q8_K quantizer ---------------------------------------------------------- */

/* bsums[0..16) of 256 int8 quants. */
static inline void q8_bsums_avx2(const int8_t *qs, int16_t *bsums) {
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    __m256i s4[8];   /* s4[v]: the sums of each 4 quants of qs[32v..32v+32) */
    for (int v = 0; v < 8; v++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * v));
        s4[v] = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
    }
    /* Lane l of s4[v] covers sub-block 2v+l. Two rounds of hadd leave the sums of
     * sub-blocks 2v (low lane) and 2v+1 (high lane), four vectors per result. */
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(s4[0], s4[1]), _mm256_hadd_epi32(s4[2], s4[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(s4[4], s4[5]), _mm256_hadd_epi32(s4[6], s4[7]));
    /* a: low lane 0,2,4,6  high lane 1,3,5,7;  b: likewise for 8..15 */
    const __m256i p = _mm256_packs_epi32(a, b); /* low lane 0,2,4,6,8,10,12,14  high 1,3,...,15 */
    const __m128i even = _mm256_castsi256_si128(p), odd = _mm256_extracti128_si256(p, 1);
    _mm_storeu_si128((__m128i *)bsums, _mm_unpacklo_epi16(even, odd));
    _mm_storeu_si128((__m128i *)(bsums + 8), _mm_unpackhi_epi16(even, odd));
}

void lm_quantize_q8_K_avx2(const float *restrict x, void *restrict vy, int64_t n) {
    block_q8_K *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m256 vmax = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 8) vmax = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), vmax);
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float amax = _mm_cvtss_f32(m);
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        /* the first element of that magnitude gives the sign, as in the reference */
        float max = 0;
        const __m256 vamax = _mm256_set1_ps(amax);
        for (int j = 0; j < QK_K; j += 8) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), vamax, _CMP_EQ_OQ));
            if (hit) { max = x[j + __builtin_ctz((unsigned)hit)]; break; }
        }
        const float iscale = -127.f / max;
        const __m256 mul = _mm256_set1_ps(iscale);
        const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (int j = 0; j < QK_K; j += 32) {
            const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j), mul));
            const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8), mul));
            const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 16), mul));
            const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 24), mul));
            /* packs work per 128-bit lane; the permute restores element order */
            const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            _mm256_storeu_si256((__m256i *)(y[i].qs + j), _mm256_permutevar8x32_epi32(p, perm));
        }
        q8_bsums_avx2(y[i].qs, y[i].bsums);
        y[i].d = 1 / iscale;
    }
}
