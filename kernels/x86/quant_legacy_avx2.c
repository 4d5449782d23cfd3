/* AVX2 variants of the legacy formats (the x86-64-v3 baseline: AVX2, FMA, F16C). */
#include "quant.h"
#include "quant_legacy.h"

#include <immintrin.h>
#include <string.h>

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 16 bytes of nibble pairs -> 32 bytes: low nibbles first, then high nibbles. */
static inline __m256i nibbles(const uint8_t *qs) {
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

/* Bit i of the 32 bits at p -> byte i = 0xFF or 0x00. */
static inline __m256i bits_to_bytes(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* Sum of unsigned x times signed y, as 8 int32 partial sums. */
static inline __m256i dot_us(__m256i x, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}

/* Signed times signed: |x| and y with x's sign. */
static inline __m256i dot_ss(__m256i x, __m256i y) {
    return dot_us(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

void lm_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q4_0 *x = vx;
    const block_q8_0 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++) {
        const __m256i qx = _mm256_sub_epi8(nibbles(x[i].qs), _mm256_set1_epi8(8));
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 d = _mm256_set1_ps(lm_f16_to_f32(x[i].d) * lm_f16_to_f32(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_ss(qx, qy)), acc);
    }
    *s = hsum8(acc);
}

void lm_vec_dot_q4_1_q8_1_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q4_1 *x = vx;
    const block_q8_1 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        summs += lm_f16_to_f32(x[i].m) * lm_f16_to_f32(y[i].s);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 d = _mm256_set1_ps(lm_f16_to_f32(x[i].d) * lm_f16_to_f32(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_us(nibbles(x[i].qs), qy)), acc);
    }
    *s = hsum8(acc) + summs;
}

/* Q5_1: Q4_1's kernel with the fifth bit ORed in as 16. */
void lm_vec_dot_q5_1_q8_1_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q5_1 *x = vx;
    const block_q8_1 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        summs += lm_f16_to_f32(x[i].m) * lm_f16_to_f32(y[i].s);
        const __m256i qx = _mm256_or_si256(nibbles(x[i].qs), _mm256_and_si256(bits_to_bytes(x[i].qh), _mm256_set1_epi8(16)));
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 d = _mm256_set1_ps(lm_f16_to_f32(x[i].d) * lm_f16_to_f32(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_us(qx, qy)), acc);
    }
    *s = hsum8(acc) + summs;
}

void lm_vec_dot_q5_0_q8_0_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q5_0 *x = vx;
    const block_q8_0 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++) {
        /* q - 16 as a signed byte: the nibble, or the nibble | 0xF0 when the fifth bit is clear */
        const __m256i hi = _mm256_andnot_si256(bits_to_bytes(x[i].qh), _mm256_set1_epi8((char)0xF0));
        const __m256i qx = _mm256_or_si256(nibbles(x[i].qs), hi);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 d = _mm256_set1_ps(lm_f16_to_f32(x[i].d) * lm_f16_to_f32(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_ss(qx, qy)), acc);
    }
    *s = hsum8(acc);
}

void lm_vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q8_0 *x = vx, *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++) {
        const __m256i qx = _mm256_loadu_si256((const __m256i *)x[i].qs);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 d = _mm256_set1_ps(lm_f16_to_f32(x[i].d) * lm_f16_to_f32(y[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_ss(qx, qy)), acc);
    }
    *s = hsum8(acc);
}

#define DOT_US dot_us
#include "tile_legacy.h"
LM_DEFINE_TILE_Q4_1(lm_vec_dot_tile_q4_1_q8_1_avx2, LM_TILE_ROWS_AVX2)
LM_DEFINE_TILE_Q8_0(lm_vec_dot_tile_q8_0_q8_0_avx2, LM_TILE_ROWS_AVX2)

/* roundf (halves away from zero), exactly: truncate, then step away from zero
 * when the dropped part is at least one half (x - trunc(x) is exact). */
static inline __m256 roundf8(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0f));
    const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, t));
    const __m256 step = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), _mm256_or_ps(sign, _mm256_set1_ps(1.0f)));
    return _mm256_add_ps(t, step);
}

/* One block of 32 floats -> 32 int8 (as the reference: q = roundf(x * id)); returns sum(q). */
static inline int quant_block(const float *x, int8_t *q, float *d_out) {
    const __m256 sgn = _mm256_set1_ps(-0.0f);
    __m256 v[4], m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        m = _mm256_max_ps(m, _mm256_andnot_ps(sgn, v[k]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
    *d_out = d;
    const __m256 mul = _mm256_set1_ps(id);
    __m256i i32[4];
    for (int k = 0; k < 4; k++) i32[k] = _mm256_cvtps_epi32(roundf8(_mm256_mul_ps(v[k], mul)));
    /* pack 32 int32 to 32 int8; packs work per 128-bit lane, the permute restores the order */
    __m256i a = _mm256_packs_epi32(i32[0], i32[1]), b = _mm256_packs_epi32(i32[2], i32[3]);
    __m256i sum16 = _mm256_add_epi16(a, b);
    __m256i p = _mm256_packs_epi16(a, b);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
    __m256i s32 = _mm256_madd_epi16(sum16, _mm256_set1_epi16(1));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    return _mm_cvtsi128_si32(s4);
}

void lm_quantize_q8_0_avx2(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) {
        float d;
        quant_block(x + i * QK, y[i].qs, &d);
        y[i].d = lm_f32_to_f16(d);
    }
}

void lm_quantize_q8_1_avx2(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++) {
        float d;
        int sum = quant_block(x + i * QK, y[i].qs, &d);
        y[i].d = lm_f32_to_f16(d);
        y[i].s = lm_f32_to_f16((float)sum * d);
    }
}
