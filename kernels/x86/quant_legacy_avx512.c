/* VNNI (vpdpbusd) kernels of the legacy formats: the tiles (lm_vec_dot_tile_fn)
 * of batched decode and short prompts. Single-row decode runs the AVX2 kernels: the
 * AVX-512 single-row ones we had decoded 10-20% slower for Q4_1 and Q8_0 on the
 * Xeons measured (rows of 576 are only nine register pairs), and Q4_0's went
 * when its tiles moved to the AVX2 kernel's arithmetic, which let them take the
 * scale products as FMA broadcast operands (SmolLM2 Q4_0 128-token TTFT -5% on
 * 1 and 2 threads, decode -3 to -5%, medians of three alternations). */
#include "quant.h"
#include "quant_legacy.h"
#include "unpack_legacy_x86.h"

#include <immintrin.h>
#include <string.h>


static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Tiles (tile_legacy.h) with vpdpbusd: 16 accumulators fit AVX-512VL's 32 registers. */
#define DOT_US(x, y) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (x), (y))
#include "tile_legacy.h"

/* The VNNI tiles take the 16 scale products xd * yd of a block from memory as
 * FMA broadcast operands: four 4-wide multiplies per block instead of sixteen
 * 8-wide ones, and the FMA units, the bottleneck here (vpdpbusd runs there
 * too), do two operations per pair instead of three. Each product is the same
 * single IEEE multiply as the AVX2 kernel's scalar one, so still the same bits. */
/* acc + x * (*p broadcast): one vfmadd231ps with a {1to8} memory operand (the
 * compiler, given _mm256_set1_ps, shuffles the product out of a register). */
static inline __m256 fma_bcast(__m256 acc, __m256 x, const float *p) {
    __asm__("vfmadd231ps %2%{1to8%}, %1, %0" : "+v"(acc) : "v"(x), "m"(*p));
    return acc;
}

void lm_vec_dot_tile_q4_1_q8_1_vnni(int64_t n, float *s, size_t s_stride, const void *vx, size_t x_stride,
                                    const void *vy, size_t y_stride) {
    enum { R = LM_TILE_ROWS_VNNI };
    const char *xb = vx, *yb = vy;
    float prod[R][LM_TILE_C] __attribute__((aligned(64)));
    __m256 acc[R][LM_TILE_C];
    __m128 summs[R];
    for (int r = 0; r < R; r++) {
        summs[r] = _mm_setzero_ps();
        for (int c = 0; c < LM_TILE_C; c++) acc[r][c] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < n / QK; i++) {
        __m256i qy[LM_TILE_C];
        __m128 ds[LM_TILE_C];
        for (int c = 0; c < LM_TILE_C; c++) {
            const block_q8_1 *y = (const block_q8_1 *)(yb + c * y_stride) + i;
            ds[c] = tile_half2(y);
            qy[c] = _mm256_loadu_si256((const __m256i *)y->qs);
        }
        const __m128 lo = _mm_unpacklo_ps(ds[0], ds[1]), hi = _mm_unpacklo_ps(ds[2], ds[3]);
        const __m128 yd = _mm_movelh_ps(lo, hi), ys = _mm_movehl_ps(hi, lo);
        __m256i qx[R];
        for (int r = 0; r < R; r++) {
            const block_q4_1 *x = (const block_q4_1 *)(xb + r * x_stride) + i;
            const __m128 dm = tile_half2(x);
            _mm_store_ps(prod[r], _mm_mul_ps(_mm_broadcastss_ps(dm), yd));
            summs[r] = _mm_fmadd_ps(_mm_permute_ps(dm, 0x55), ys, summs[r]);
            qx[r] = nibbles(x->qs);
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < LM_TILE_C; c++)
                acc[r][c] = fma_bcast(acc[r][c], _mm256_cvtepi32_ps(DOT_US(qx[r], qy[c])), &prod[r][c]);
    }
    for (int r = 0; r < R; r++) {
        float m[4];
        _mm_storeu_ps(m, summs[r]);
        for (int c = 0; c < LM_TILE_C; c++) s[c * s_stride + r] = hsum8(acc[r][c]) + m[c];
    }
}

/* Q5_1 single rows with vpdpbusd on the unpacked block (its quants are
 * unsigned, so no shift), two blocks per zmm; the min term per block in
 * scalar as the AVX2 kernel. */
void lm_vec_dot_q5_1_q8_1_avx512(int64_t n, float *s, const void *vx, const void *vy) {
    const char *x = vx;
    const block_q8_1 *y = vy;
    const int64_t nb = n / QK;
    __m512 acc = _mm512_setzero_ps();
    float summs = 0;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        const block_q5_1 *b = (const block_q5_1 *)x + i;
        summs += lm_f16_to_f32(b[0].m) * lm_f16_to_f32(y[i].s);
        summs += lm_f16_to_f32(b[1].m) * lm_f16_to_f32(y[i + 1].s);
        const __m512i qx = _mm512_inserti64x4(_mm512_castsi256_si512(unpack_q5_1((const char *)b)), unpack_q5_1((const char *)(b + 1)), 1);
        const __m512i qy = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)y[i].qs)),
                                              _mm256_loadu_si256((const __m256i *)y[i + 1].qs), 1);
        const __m512 d = _mm512_insertf32x8(_mm512_set1_ps(lm_f16_to_f32(b[0].d) * lm_f16_to_f32(y[i].d)),
                                            _mm256_set1_ps(lm_f16_to_f32(b[1].d) * lm_f16_to_f32(y[i + 1].d)), 1);
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), qx, qy)), acc);
    }
    __m256 acc8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    for (; i < nb; i++) {
        const block_q5_1 *b = (const block_q5_1 *)x + i;
        summs += lm_f16_to_f32(b->m) * lm_f16_to_f32(y[i].s);
        const __m256 d = _mm256_set1_ps(lm_f16_to_f32(b->d) * lm_f16_to_f32(y[i].d));
        acc8 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(DOT_US(unpack_q5_1((const char *)b), _mm256_loadu_si256((const __m256i *)y[i].qs))), acc8);
    }
    *s = hsum8(acc8) + summs;
}

/* Weights against Q8_0 activations without the sign trick: vpdpbusd wants
 * unsigned bytes on one side, so the weights go in shifted up by `bias` (Q8_0:
 * q + 128, one xor; Q5_0: q + 16, the nibble and the fifth bit from one masked
 * move) and each sum starts from -bias * sum(y) instead of zero. The int32 sums
 * are the AVX2 kernel's and so is the float work (the scale products come from
 * memory as FMA broadcast operands), so every output is its bits. Both block
 * types start with their fp16 d. */
static inline __attribute__((always_inline)) void tile_q8y(int64_t n, float *s, size_t s_stride, const char *xb,
                                                           size_t x_stride, size_t x_block, const char *yb,
                                                           size_t y_stride, char bias, __m256i (*unpack)(const char *)) {
    enum { R = LM_TILE_ROWS_VNNI };
    const __m256i kb = _mm256_set1_epi8(bias);
    float prod[R][LM_TILE_C] __attribute__((aligned(64)));
    __m256 acc[R][LM_TILE_C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < LM_TILE_C; c++) acc[r][c] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++) {
        __m256i qy[LM_TILE_C], base[LM_TILE_C];
        float ydf[LM_TILE_C];
        for (int c = 0; c < LM_TILE_C; c++) {
            const block_q8_0 *y = (const block_q8_0 *)(yb + c * y_stride) + i;
            ydf[c] = lm_f16_to_f32(y->d);
            qy[c] = _mm256_loadu_si256((const __m256i *)y->qs);
            base[c] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), kb, qy[c]));
        }
        const __m128 yd = _mm_loadu_ps(ydf);
        __m256i ux[R];
        for (int r = 0; r < R; r++) {
            const char *x = xb + r * x_stride + i * x_block;
            uint16_t d;
            memcpy(&d, x, 2);
            _mm_store_ps(prod[r], _mm_mul_ps(_mm_set1_ps(lm_f16_to_f32(d)), yd));
            ux[r] = unpack(x);
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < LM_TILE_C; c++)
                acc[r][c] = fma_bcast(acc[r][c], _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(base[c], ux[r], qy[c])), &prod[r][c]);
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < LM_TILE_C; c++) s[c * s_stride + r] = hsum8(acc[r][c]);
}

void lm_vec_dot_tile_q4_0_q8_0_vnni(int64_t n, float *s, size_t s_stride, const void *vx, size_t x_stride,
                                   const void *vy, size_t y_stride) {
    tile_q8y(n, s, s_stride, vx, x_stride, sizeof(block_q4_0), vy, y_stride, 8, unpack_q4_0);
}

void lm_vec_dot_tile_q8_0_q8_0_vnni(int64_t n, float *s, size_t s_stride, const void *vx, size_t x_stride,
                                    const void *vy, size_t y_stride) {
    tile_q8y(n, s, s_stride, vx, x_stride, sizeof(block_q8_0), vy, y_stride, (char)0x80, unpack_q8_0);
}

void lm_vec_dot_tile_q5_0_q8_0_vnni(int64_t n, float *s, size_t s_stride, const void *vx, size_t x_stride,
                                    const void *vy, size_t y_stride) {
    tile_q8y(n, s, s_stride, vx, x_stride, sizeof(block_q5_0), vy, y_stride, 16, unpack_q5_0);
}
