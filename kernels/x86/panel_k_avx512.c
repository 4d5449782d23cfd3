/* VNNI panels of the K-quants (quant.h): 16 weight rows (two halves of 8) x up
 * to 8 tokens a pass, of a prefill product, for Q2_K, Q3_K, Q4_K, Q5_K and Q6_K against Q8_K activations.
 *
 * Per 32 weights of a super-block the 8 rows' quants are unpacked to unsigned
 * bytes and transposed (panel_x86.h) so each vpdpbusd lane is one row; the
 * exact int32 dots of its sub-blocks are weighed by the rows' integer scales
 * (vpmulld) and summed in int32 over the super-block. The Q4_K mins and the
 * Q6_K -32 offset come from Q8_K's bsums through vpdpwssd (pairs of int16),
 * also exact, so a super-block costs one or two converts, multiplies and FMAs
 * per 8 rows and token. Sums per (row, token), in the scalar reference's order
 * (kernels/panel.c):
 *   Q4_K, Q5_K: fma((float)isum, d*dy, sum) then fma(-(float)imin, dmin*dy, sum)
 *   Q6_K: fma((float)isum, d*dy, sum), the offset inside isum. */
#include "quant.h"
#include "quant_k_x86.h"
#include "panel_x86.h"

#include <immintrin.h>
#include <stddef.h>
#include <string.h>

enum { KT = 8 }; /* tokens per call at most: 8 int and 8 float sums + 8 weight registers */

/* sum[c] += (float)isum[c] * (w * d of token c's block i), or -= (neg), per token */
static inline __attribute__((always_inline)) void scale_add(const int T, __m256 *sum, const __m256i *isum, __m256 w,
                                                           const char *yb, size_t y_stride, int64_t i, const int neg) {
#pragma GCC unroll 8
    for (int c = 0; c < T; c++) {
        const block_q8_K *y = (const block_q8_K *)(yb + i * y_stride) + c;
        const __m256 f = _mm256_cvtepi32_ps(isum[c]), p = _mm256_mul_ps(w, _mm256_set1_ps(y->d));
        sum[c] = neg ? _mm256_fnmadd_ps(f, p, sum[c]) : _mm256_fmadd_ps(f, p, sum[c]);
    }
}

/* isum[c] += sum over j of tab[j] (8 rows' int16 pairs) x token c's bsums 2j, 2j + 1 */
static inline __attribute__((always_inline)) void add_bsums(const int T, __m256i *isum, const int32_t tab[8][8],
                                                           const char *yb, size_t y_stride, int64_t i) {
    for (int j = 0; j < 8; j++) {
        const __m256i tv = _mm256_load_si256((const __m256i *)tab[j]);
#pragma GCC unroll 8
        for (int c = 0; c < T; c++) {
            const block_q8_K *y = (const block_q8_K *)(yb + i * y_stride) + c;
            isum[c] = _mm256_dpwssd_epi32(isum[c], tv, _mm256_set1_epi32(lm_load32(y->bsums + 2 * j)));
        }
    }
}

static inline __attribute__((always_inline)) void store_sums(const int T, float *s, size_t s_stride, const __m256 *sum) {
#pragma GCC unroll 8
    for (int c = 0; c < T; c++) _mm256_storeu_ps(s + c * s_stride, sum[c]);
}

/* Q4_K, and Q5_K (q5: the fifth bits from qh; the same scales and mins) */
static inline __attribute__((always_inline)) void panel_q45_K(const int T, int64_t n, float *s, size_t s_stride,
                                                              const char *xb, size_t x_stride, const char *yb,
                                                              size_t y_stride, const void *pfp, const int q5) {
    const size_t bs = q5 ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const size_t qs_off = q5 ? offsetof(block_q5_K, qs) : offsetof(block_q4_K, qs);
    const __m256i offs = lm_row_offsets(x_stride), m4 = _mm256_set1_epi8(0x0F), m1 = _mm256_set1_epi8(1);
    __m256 sum[KT];
#pragma GCC unroll 8
    for (int c = 0; c < T; c++) sum[c] = _mm256_setzero_ps();
    const lm_pf pf = lm_pf_init(pfp, 8, x_stride, n / QK_K);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const char *xi = xb + i * bs;
        lm_pf_block(&pf, i);
        /* the rows' 6-bit scales and mins: sc[j] lanes = rows; mp[j] = min j in both int16 halves */
        uint8_t sm[8][16];
        int32_t sc[8][8] __attribute__((aligned(32))), mp[8][8] __attribute__((aligned(32)));
        for (int r = 0; r < 8; r++)
            _mm_storeu_si128((__m128i *)sm[r], lm_k_unpack_scales_sse((const uint8_t *)(xi + r * x_stride) + offsetof(block_q4_K, scales)));
        for (int j = 0; j < 8; j++)
            for (int r = 0; r < 8; r++) { sc[j][r] = sm[r][j]; mp[j][r] = sm[r][8 + j] * 0x10001; }
        const __m256i g = lm_gather_rows(xi, offs);
        const __m256 dw = lm_f16_lo(g), dminw = lm_f16_hi(g);
        __m256i isum[KT];
#pragma GCC unroll 8
        for (int c = 0; c < T; c++) isum[c] = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {
            /* sub-block j: the low nibbles of qs[32 (j / 2) ..] for even j, the high
             * for odd; Q5_K's fifth bit is bit j of qh[0..32) */
            __m256i r[8], w[8];
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                const char *xk = xi + k * x_stride;
                const __m256i q = _mm256_loadu_si256((const __m256i *)(xk + qs_off + 32 * (j / 2)));
                r[k] = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(q, 4) : q, m4);
                if (q5) {
                    const __m256i qh = _mm256_loadu_si256((const __m256i *)(xk + offsetof(block_q5_K, qh)));
                    r[k] = _mm256_or_si256(r[k], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, j), m1), 4));
                }
            }
            lm_transpose8(r, w);
            const __m256i scv = _mm256_load_si256((const __m256i *)sc[j]);
#pragma GCC unroll 8
            for (int c = 0; c < T; c++) {
                const block_q8_K *y = (const block_q8_K *)(yb + i * y_stride) + c;
                __m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 8
                for (int l = 0; l < 8; l++)
                    acc = _mm256_dpbusd_epi32(acc, w[l], _mm256_set1_epi32(lm_load32(y->qs + 32 * j + 4 * l)));
                isum[c] = _mm256_add_epi32(isum[c], _mm256_mullo_epi32(acc, scv));
            }
        }
        scale_add(T, sum, isum, dw, yb, y_stride, i, 0);
#pragma GCC unroll 8
        for (int c = 0; c < T; c++) isum[c] = _mm256_setzero_si256();
        /* the mins: sum over the 16 bsums of min(k / 2) * bsum(k) */
        add_bsums(T, isum, mp, yb, y_stride, i);
        scale_add(T, sum, isum, dminw, yb, y_stride, i, 1);
    }
    store_sums(T, s, s_stride, sum);
}

static inline __attribute__((always_inline)) void panel_q6_K(const int T, int64_t n, float *s, size_t s_stride,
                                                             const char *xb, size_t x_stride, const char *yb,
                                                             size_t y_stride, const void *pfp) {
    const __m256i offs = lm_row_offsets(x_stride), m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    __m256 sum[KT];
#pragma GCC unroll 8
    for (int c = 0; c < T; c++) sum[c] = _mm256_setzero_ps();
    const lm_pf pf = lm_pf_init(pfp, 8, x_stride, n / QK_K);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const char *xi = xb + i * sizeof(block_q6_K);
        lm_pf_block(&pf, i);
        /* sc[k] lanes = rows: the signed scale of each 16; off[p] = -32 * scales 2p, 2p+1 as int16 */
        int32_t sc[16][8] __attribute__((aligned(32))), off[8][8] __attribute__((aligned(32)));
        for (int r = 0; r < 8; r++) {
            const int8_t *scales = (const int8_t *)(xi + r * x_stride + offsetof(block_q6_K, scales));
            for (int k = 0; k < 16; k++) sc[k][r] = scales[k];
            for (int p = 0; p < 8; p++)
                off[p][r] = (int32_t)(((uint32_t)(uint16_t)(-32 * scales[2 * p])) | ((uint32_t)(uint16_t)(-32 * scales[2 * p + 1]) << 16));
        }
        /* d is the block's last two bytes: the dword before it ends with them */
        const __m256 dw = lm_f16_hi(lm_gather_rows(xi + offsetof(block_q6_K, d) - 2, offs));
        __m256i isum[KT];
#pragma GCC unroll 8
        for (int c = 0; c < T; c++) isum[c] = _mm256_setzero_si256();
        add_bsums(T, isum, off, yb, y_stride, i);
        for (int q = 0; q < 8; q++) {
            /* weights 32q .. 32q + 31 (unpack_q6_K's order), quants 0..63 */
            const int h = q / 4, cc = q % 4;
            __m256i r[8], w[8];
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                const block_q6_K *b = (const block_q6_K *)(xi + k * x_stride);
                const __m256i ql = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32 * (cc % 2)));
                const __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
                const __m256i lo = _mm256_and_si256(cc < 2 ? ql : _mm256_srli_epi16(ql, 4), m4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * cc), m3);
                r[k] = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
            }
            lm_transpose8(r, w);
            const __m256i sa = _mm256_load_si256((const __m256i *)sc[2 * q]), sb = _mm256_load_si256((const __m256i *)sc[2 * q + 1]);
#pragma GCC unroll 8
            for (int c = 0; c < T; c++) {
                const block_q8_K *y = (const block_q8_K *)(yb + i * y_stride) + c;
                __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
#pragma GCC unroll 4
                for (int l = 0; l < 4; l++) {
                    a0 = _mm256_dpbusd_epi32(a0, w[l], _mm256_set1_epi32(lm_load32(y->qs + 32 * q + 4 * l)));
                    a1 = _mm256_dpbusd_epi32(a1, w[l + 4], _mm256_set1_epi32(lm_load32(y->qs + 32 * q + 16 + 4 * l)));
                }
                isum[c] = _mm256_add_epi32(isum[c], _mm256_add_epi32(_mm256_mullo_epi32(a0, sa), _mm256_mullo_epi32(a1, sb)));
            }
        }
        scale_add(T, sum, isum, dw, yb, y_stride, i, 0);
    }
    store_sums(T, s, s_stride, sum);
}

static inline __attribute__((always_inline)) void panel_q4_K(const int T, int64_t n, float *s, size_t s_stride,
                                                             const char *xb, size_t x_stride, const char *yb,
                                                             size_t y_stride, const void *pfp) {
    panel_q45_K(T, n, s, s_stride, xb, x_stride, yb, y_stride, pfp, 0);
}
static inline __attribute__((always_inline)) void panel_q5_K(const int T, int64_t n, float *s, size_t s_stride,
                                                             const char *xb, size_t x_stride, const char *yb,
                                                             size_t y_stride, const void *pfp) {
    panel_q45_K(T, n, s, s_stride, xb, x_stride, yb, y_stride, pfp, 1);
}

/* Q2_K and Q3_K: sixteen sub-blocks of 16 as Q6_K; quants unsigned (Q2_K 0..3,
 * Q3_K 0..7 with the third bit from hmask); Q3_K's -4 as -4 * scale * bsum inside
 * the integer sum, Q2_K's mins through the bsums and a second FMA (as Q4_K's). */
static inline __attribute__((always_inline)) void panel_q23_K(const int T, int64_t n, float *s, size_t s_stride,
                                                              const char *xb, size_t x_stride, const char *yb,
                                                              size_t y_stride, const void *pfp, const int q3) {
    const size_t bs = q3 ? sizeof(block_q3_K) : sizeof(block_q2_K);
    const size_t qs_off = q3 ? offsetof(block_q3_K, qs) : offsetof(block_q2_K, qs);
    const __m256i offs = lm_row_offsets(x_stride), m3 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
    __m256 sum[KT];
#pragma GCC unroll 8
    for (int c = 0; c < T; c++) sum[c] = _mm256_setzero_ps();
    const lm_pf pf = lm_pf_init(pfp, 8, x_stride, n / QK_K);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const char *xi = xb + i * bs;
        lm_pf_block(&pf, i);
        /* sc[k] lanes = rows: each 16's scale; tab[p]: the pair 2p, 2p+1 as int16 halves
         * (Q2_K: the mins; Q3_K: -4 * the scales) */
        int32_t sc[16][8] __attribute__((aligned(32))), tab[8][8] __attribute__((aligned(32)));
        for (int r = 0; r < 8; r++) {
            int8_t v[16];
            int16_t m[16]; /* -4 * -32 does not fit an int8 */
            if (q3) {
                lm_k_unpack_scales_q3(((const block_q3_K *)(xi + r * x_stride))->scales, v);
                for (int k = 0; k < 16; k++) m[k] = (int16_t)(-4 * v[k]);
            } else {
                const uint8_t *b = ((const block_q2_K *)(xi + r * x_stride))->scales;
                for (int k = 0; k < 16; k++) v[k] = (int8_t)(b[k] & 15), m[k] = (int16_t)(b[k] >> 4);
            }
            for (int k = 0; k < 16; k++) sc[k][r] = v[k];
            for (int p = 0; p < 8; p++)
                tab[p][r] = (int32_t)((uint32_t)(uint16_t)m[2 * p] | ((uint32_t)(uint16_t)m[2 * p + 1] << 16));
        }
        /* Q2_K: d, dmin at bytes 80-83; Q3_K: d the last two bytes */
        const __m256i g = lm_gather_rows(xi + (q3 ? offsetof(block_q3_K, d) - 2 : offsetof(block_q2_K, d)), offs);
        const __m256 dw = q3 ? lm_f16_hi(g) : lm_f16_lo(g);
        __m256i isum[KT];
#pragma GCC unroll 8
        for (int c = 0; c < T; c++) isum[c] = _mm256_setzero_si256();
        if (q3) add_bsums(T, isum, tab, yb, y_stride, i);
        for (int q = 0; q < 8; q++) {
            /* weights 32q .. 32q + 31: bits 2j of qs[32h ..] (and bit 4h+j of hmask) */
            const int h = q / 4, j = q % 4;
            __m256i r[8], w[8];
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                const char *xk = xi + k * x_stride;
                const __m256i qs = _mm256_loadu_si256((const __m256i *)(xk + qs_off + 32 * h));
                r[k] = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), m3);
                if (q3) {
                    const __m256i hm = _mm256_loadu_si256((const __m256i *)(xk + offsetof(block_q3_K, hmask)));
                    r[k] = _mm256_or_si256(r[k], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + j), m1), 2));
                }
            }
            lm_transpose8(r, w);
            const __m256i sa = _mm256_load_si256((const __m256i *)sc[2 * q]), sb = _mm256_load_si256((const __m256i *)sc[2 * q + 1]);
#pragma GCC unroll 8
            for (int c = 0; c < T; c++) {
                const block_q8_K *y = (const block_q8_K *)(yb + i * y_stride) + c;
                __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
#pragma GCC unroll 4
                for (int l = 0; l < 4; l++) {
                    a0 = _mm256_dpbusd_epi32(a0, w[l], _mm256_set1_epi32(lm_load32(y->qs + 32 * q + 4 * l)));
                    a1 = _mm256_dpbusd_epi32(a1, w[l + 4], _mm256_set1_epi32(lm_load32(y->qs + 32 * q + 16 + 4 * l)));
                }
                isum[c] = _mm256_add_epi32(isum[c], _mm256_add_epi32(_mm256_mullo_epi32(a0, sa), _mm256_mullo_epi32(a1, sb)));
            }
        }
        scale_add(T, sum, isum, dw, yb, y_stride, i, 0);
        if (!q3) {
#pragma GCC unroll 8
            for (int c = 0; c < T; c++) isum[c] = _mm256_setzero_si256();
            add_bsums(T, isum, tab, yb, y_stride, i);
            scale_add(T, sum, isum, lm_f16_hi(g), yb, y_stride, i, 1);
        }
    }
    store_sums(T, s, s_stride, sum);
}

static inline __attribute__((always_inline)) void panel_q2_K(const int T, int64_t n, float *s, size_t s_stride,
                                                             const char *xb, size_t x_stride, const char *yb,
                                                             size_t y_stride, const void *pfp) {
    panel_q23_K(T, n, s, s_stride, xb, x_stride, yb, y_stride, pfp, 0);
}
static inline __attribute__((always_inline)) void panel_q3_K(const int T, int64_t n, float *s, size_t s_stride,
                                                             const char *xb, size_t x_stride, const char *yb,
                                                             size_t y_stride, const void *pfp) {
    panel_q23_K(T, n, s, s_stride, xb, x_stride, yb, y_stride, pfp, 1);
}

/* the panel's 16 rows as two halves of 8; up to 8 tokens a pass, the rest in
 * power-of-two pieces; the first pass prefetches (each half its rows) */
#define PANEL_K_AT(BODY, T)                                                                                          \
    for (int h = 0; h < 2; h++)                                                                                      \
        BODY(T, n, s + c * s_stride + 8 * h, s_stride, (const char *)x + 8 * h * x_stride, x_stride,                 \
             yb + c * sizeof(block_q8_K), y_stride, c == 0 && pf ? (const char *)pf + 8 * h * x_stride : NULL)
#define PANEL_K(NAME, BODY)                                \
    void NAME(LM_PANEL_ARGS) {                             \
        const char *yb = y;                                \
        int c = 0;                                         \
        for (; c + 8 <= nt; c += 8) PANEL_K_AT(BODY, 8);   \
        if (nt - c >= 4) { PANEL_K_AT(BODY, 4); c += 4; }  \
        if (nt - c >= 2) { PANEL_K_AT(BODY, 2); c += 2; }  \
        if (nt - c >= 1) PANEL_K_AT(BODY, 1);              \
    }

PANEL_K(lm_panel_q4_K_vnni, panel_q4_K)
PANEL_K(lm_panel_q5_K_vnni, panel_q5_K)
PANEL_K(lm_panel_q6_K_vnni, panel_q6_K)
PANEL_K(lm_panel_q2_K_vnni, panel_q2_K)
PANEL_K(lm_panel_q3_K_vnni, panel_q3_K)
