/* Shared by the VNNI panels (panel_avx512.c, tiled_k_avx512.c; see quant.h):
 * the dword transposes that turn 8 or 16 weight rows into vpdpbusd operands,
 * vpdpbusd / vpdpwssd against activations broadcast from memory, and the
 * panels' prefetch. Compiled with AVX-512 VL. */
#ifndef LM_PANEL_X86_H
#define LM_PANEL_X86_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

/* rows r[0..8) of 8 dwords -> w[j] = dword j of every row */
static inline __attribute__((always_inline)) void lm_transpose8(const __m256i r[8], __m256i w[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; h++) {
        const __m256i *p = t + 4 * h;
        u[4 * h + 0] = _mm256_unpacklo_epi64(p[0], p[2]);
        u[4 * h + 1] = _mm256_unpackhi_epi64(p[0], p[2]);
        u[4 * h + 2] = _mm256_unpacklo_epi64(p[1], p[3]);
        u[4 * h + 3] = _mm256_unpackhi_epi64(p[1], p[3]);
    }
    for (int j = 0; j < 4; j++) {
        w[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
        w[j + 4] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
    }
}

/* acc + vpdpbusd of w's unsigned bytes with the four signed bytes at p, in
 * every lane: the instruction's own broadcast from memory, one fused uop (GCC
 * 12 emits a vpbroadcastd and the vpdpbusd for _mm512_set1_epi32 of a load:
 * twice the uops; measured on the Xeon, a 32-token pass 1.04-1.08x faster with
 * this in the K-quants' tiles, 1.20-1.38x in the legacy panels and tiles) */
static inline __attribute__((always_inline)) __m512i lm_dpbusd_bcst(__m512i acc, __m512i w, const void *p) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const int32_t *)p));
    return acc;
}
/* the same for vpdpwssd: w's int16 pairs with the two int16 at p */
static inline __attribute__((always_inline)) __m512i lm_dpwssd_bcst(__m512i acc, __m512i w, const void *p) {
    __asm__("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const int32_t *)p));
    return acc;
}

/* The panels' prefetch (quant.h): `rows` rows x_stride apart from pf, spread
 * over the nb blocks of a pass; block i takes its share of the cache lines.
 * Into L1 while the rows being read and the rows coming both fit in it with
 * room to spare (up to 16 KB of the 32 KB each), else into L2: Q8_0 rows of
 * 1536 (26 KB a panel) prefetched into L1 evict what the panel is reading
 * (576 x 1536, one token, one thread: 0.078 ms into L1, 0.038 into L2, 0.060
 * with the single-row kernel), while 576-wide rows are faster through L1
 * (0.037-0.039 vs 0.046-0.047 ms). */
#define LM_PF_L1_BYTES 16384
typedef struct { const char *p; int64_t step, end; int l2; } lm_pf;
static inline lm_pf lm_pf_init(const void *pf, int rows, size_t x_stride, int64_t nb) {
    const int64_t lines = (int64_t)(((size_t)rows * x_stride + 63) / 64);
    return (lm_pf){(const char *)pf, (lines + nb - 1) / nb, lines, (size_t)rows * x_stride > LM_PF_L1_BYTES};
}
static inline __attribute__((always_inline)) void lm_pf_block(const lm_pf *f, int64_t i) {
    if (!f->p) return;
    const int64_t l1 = (i + 1) * f->step < f->end ? (i + 1) * f->step : f->end;
    if (f->l2)
        for (int64_t l = i * f->step; l < l1; l++) _mm_prefetch(f->p + 64 * l, _MM_HINT_T1);
    else
        for (int64_t l = i * f->step; l < l1; l++) _mm_prefetch(f->p + 64 * l, _MM_HINT_T0);
}

/* 16 rows of 32 unsigned bytes -> w[j] = dword j of every row (lane r: row
 * r): two halves of 8 transposed, side by side in zmm */
static inline __attribute__((always_inline)) void lm_transpose16(const __m256i r[16], __m512i w[8]) {
    __m256i lo[8], hi[8];
    lm_transpose8(r, lo);
    lm_transpose8(r + 8, hi);
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) w[j] = _mm512_inserti64x4(_mm512_castsi256_si512(lo[j]), hi[j], 1);
}

#endif
