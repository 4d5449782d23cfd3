/* VNNI panels (quant.h): 16 weight rows x up to 16 tokens a pass.
 * Per block, the 16 rows' 32 weights are unpacked to unsigned bytes (shifted
 * up by the format's bias) and transposed, so zmm register j holds weights
 * 4j..4j+3 of every row; each token's activation bytes 4j..4j+3 come as a
 * broadcast, and 8 vpdpbusd leave one exact int32 dot per row, which starts
 * from -bias * sum(y) (quant.h). The block's float work is then one convert,
 * one multiply by the token's scale and one FMA for 16 rows x 32 weights,
 * where the tiles (tile_legacy.h) spend it per row. */
#include "quant.h"
#include "quant_legacy.h"
#include "panel_x86.h"
#include "unpack_legacy_x86.h"

#include <immintrin.h>
#include <stddef.h>
#include <string.h>

/* One token's block against the 16 rows' transposed weights w: the exact int32
 * dots (from the record's -bias * sum(q), or 0 for Q8_1 activations), then
 * sum + dot * (dw * d) (+ mw * s for Q4_1), per row. */
static inline __attribute__((always_inline)) __m512 token_block(const lm_panel_block *a, const __m512i w[8], __m512 dw,
                                                               __m512 mw, const int q41, __m512 sum) {
    __m512i acc = q41 ? _mm512_setzero_si512() : _mm512_set1_epi32(a->c);
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) acc = lm_dpbusd_bcst(acc, w[j], a->qs + 4 * j);
    sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(dw, _mm512_set1_ps(a->d)), sum);
    return q41 ? _mm512_fmadd_ps(mw, _mm512_set1_ps(a->s), sum) : sum;
}

/* One block of the 16 rows x_stride apart at x as vpdpbusd operands: w[j] =
 * weights 4j..4j+3 of every row (two halves of 8, each transposed as 8 x 8
 * dwords, side by side in zmm: lane r is row r); d, and Q4_1's m next to it,
 * as floats */
static inline __attribute__((always_inline)) void block_operands(const char *x, size_t x_stride, __m512i offs,
                                                                 const int q41, __m256i (*unpack)(const char *),
                                                                 __m512i w[8], __m512 *dw, __m512 *mw) {
    __m256i r[16];
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++) r[k] = unpack(x + k * x_stride);
    lm_transpose16(r, w);
    const __m512i g = _mm512_i32gather_epi32(offs, x, 1);
    *dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
    *mw = q41 ? _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16))) : _mm512_setzero_ps();
}

/* Block i of an interleaved panel x of nb blocks (quant.h) as the same
 * operands: lines 64-byte lines of quants a block (4: nibble pairs, the low
 * nibbles weights 0..15 and the high 16..31, as unpack gives them; 5: the
 * same and a line of the rows' fifth bits, bit k of lane r for weight k of row
 * r, which add 16; 8: Q8_0's bytes, shifted up by 128), then the scales. */
static inline __attribute__((always_inline)) void il_operands(const char *x, int64_t nb, int64_t i, const int lines,
                                                              const int q41, __m512i w[8], __m512 *dw, __m512 *mw) {
    const char *q = x + i * lines * 64;
    if (lines == 8) {
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) w[j] = _mm512_xor_si512(_mm512_loadu_si512(q + 64 * j), _mm512_set1_epi8((char)0x80));
    } else {
        const __m512i m4 = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m512i l = _mm512_loadu_si512(q + 64 * j);
            w[j] = _mm512_and_si512(l, m4);
            w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(l, 4), m4);
        }
        if (lines == 5) {
            /* weights 4j..4j+3 of a row take bits 4j..4j+3 of its qh, which
             * lie in byte j / 2: that byte to all four of the lane's, then
             * each byte tests its own bit */
            const __m512i qh = _mm512_loadu_si512(q + 64 * 4);
            const __m512i pos = _mm512_set4_epi32(0x0C0C0C0C, 0x08080808, 0x04040404, 0x00000000);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                const __m512i t = _mm512_shuffle_epi8(qh, _mm512_add_epi8(pos, _mm512_set1_epi8((char)k)));
                const __mmask64 lo = _mm512_test_epi8_mask(t, _mm512_set1_epi32(0x08040201));
                const __mmask64 hi = _mm512_test_epi8_mask(t, _mm512_set1_epi32((int)0x80402010));
                w[2 * k] = _mm512_mask_add_epi8(w[2 * k], lo, w[2 * k], _mm512_set1_epi8(16));
                w[2 * k + 1] = _mm512_mask_add_epi8(w[2 * k + 1], hi, w[2 * k + 1], _mm512_set1_epi8(16));
            }
        }
    }
    const uint16_t *sc = (const uint16_t *)(x + nb * lines * 64) + i * LM_PANEL_ROWS;
    *dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sc));
    *mw = q41 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + nb * LM_PANEL_ROWS))) : _mm512_setzero_ps();
}

/* q41: Q4_1 weights against Q8_1 activations (no shift; the min term);
 * otherwise Q8_0 activations and sums starting from the record's c. The 16
 * rows as two halves of 8, each transposed as 8 x 8 dwords, side by side in
 * zmm: lane r is row r. */
static inline __attribute__((always_inline)) void panel(const int T, const int T2, int64_t n, float *s, size_t s_stride,
                                                        const char *xb, size_t x_stride, size_t x_block,
                                                        const char *yb, size_t y_stride, const void *pfp, const int q41,
                                                        __m256i (*unpack)(const char *), const int il) {
    const __m512i offs = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)x_stride));
    /* T2: a second group of tokens whose sums live in memory (no registers
     * are left): it reuses the block's unpacked and transposed weights */
    __m512 sum[16], sum2[16];
#pragma GCC unroll 16
    for (int c = 0; c < T; c++) sum[c] = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int c = 0; c < T2; c++) sum2[c] = _mm512_setzero_ps();
    const lm_pf pf = lm_pf_init(pfp, LM_PANEL_ROWS, x_stride, n / QK);
    for (int64_t i = 0; i < n / QK; i++) {
        __m512i w[8];
        __m512 dw, mw;
        lm_pf_block(&pf, i);
        if (il) il_operands(xb, n / QK, i, il, q41, w, &dw, &mw);
        else block_operands(xb + i * x_block, x_stride, offs, q41, unpack, w, &dw, &mw);
        /* every token's record at a fixed offset from one pointer (quant.h) */
        const lm_panel_block *y = (const lm_panel_block *)(yb + i * y_stride);
#pragma GCC unroll 16
        for (int c = 0; c < T; c++) sum[c] = token_block(y + c, w, dw, mw, q41, sum[c]);
#pragma GCC unroll 16
        for (int c = 0; c < T2; c++) sum2[c] = token_block(y + T + c, w, dw, mw, q41, sum2[c]);
    }
#pragma GCC unroll 16
    for (int c = 0; c < T; c++) _mm512_storeu_ps(s + c * s_stride, sum[c]);
#pragma GCC unroll 16
    for (int c = 0; c < T2; c++) _mm512_storeu_ps(s + (T + c) * s_stride, sum2[c]);
}

/* up to 32 tokens a pass (16 in registers and up to 16 more), the rest in
 * power-of-two pieces */
#define PANEL_AT2(T, T2) panel(T, T2, n, s + c * s_stride, s_stride, x, x_stride, block, \
                                  (const char *)y + c * sizeof(lm_panel_block), y_stride, c == 0 ? pf : NULL, q41, unpack, il)
#define PANEL_AT(T) PANEL_AT2(T, 0)
static inline __attribute__((always_inline)) void panel_tokens(LM_PANEL_ARGS, size_t block, const int q41,
                                                               __m256i (*unpack)(const char *), const int il) {
    int c = 0;
    for (; c + 32 <= nt; c += 32) PANEL_AT2(16, 16);
    if (nt - c > 16) { /* 17..31 left: one pass, the second group's count known at run time */
        const int t2 = nt - c - 16;
        PANEL_AT2(16, t2);
        return;
    }
    for (; c + 16 <= nt; c += 16) PANEL_AT(16);
    if (nt - c >= 8) { PANEL_AT(8); c += 8; }
    if (nt - c >= 4) { PANEL_AT(4); c += 4; }
    if (nt - c >= 2) { PANEL_AT(2); c += 2; }
    if (nt - c >= 1) PANEL_AT(1);
}

#define PANEL(NAME, BLOCK, Q41, UNPACK) \
    void NAME(LM_PANEL_ARGS) { panel_tokens(n, nt, s, s_stride, x, x_stride, y, y_stride, pf, BLOCK, Q41, UNPACK, 0); }
/* on interleaved rows: LINES 64-byte lines of quants a block */
#define PANEL_IL(NAME, BLOCK, Q41, UNPACK, LINES) \
    void NAME(LM_PANEL_ARGS) { panel_tokens(n, nt, s, s_stride, x, x_stride, y, y_stride, pf, BLOCK, Q41, UNPACK, LINES); }

PANEL(lm_panel_q4_0_vnni, sizeof(block_q4_0), 0, unpack_q4_0)
PANEL(lm_panel_q4_1_vnni, sizeof(block_q4_1), 1, unpack_q4_1)
PANEL(lm_panel_q5_0_vnni, sizeof(block_q5_0), 0, unpack_q5_0)
PANEL(lm_panel_q8_0_vnni, sizeof(block_q8_0), 0, unpack_q8_0)
PANEL(lm_panel_q5_1_vnni, sizeof(block_q5_1), 1, unpack_q5_1) /* d and m first, as Q4_1 */
PANEL_IL(lm_panel_il_q4_0_vnni, sizeof(block_q4_0), 0, unpack_q4_0, 4)
PANEL_IL(lm_panel_il_q4_1_vnni, sizeof(block_q4_1), 1, unpack_q4_1, 4)
PANEL_IL(lm_panel_il_q8_0_vnni, sizeof(block_q8_0), 0, unpack_q8_0, 8)
PANEL_IL(lm_panel_il_q5_0_vnni, sizeof(block_q5_0), 0, unpack_q5_0, 5)
PANEL_IL(lm_panel_il_q5_1_vnni, sizeof(block_q5_1), 1, unpack_q5_1, 5)

/* Repacked panels (quant.h): a prompt's product repacks each panel's blocks
 * once (the operands above, stored), then every token passes them, twelve a
 * pass, with the panel's per-token work (token_block) only: the same bits as
 * the panel. */
static inline __attribute__((always_inline)) void repack(int64_t n, const char *x, size_t x_stride, size_t x_block,
                                                         const int q41, __m256i (*unpack)(const char *),
                                                         lm_ltile_block *dst, const int il) {
    const __m512i offs = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)x_stride));
    for (int64_t i = 0; i < n / QK; i++) {
        __m512i w[8];
        __m512 dw, mw;
        if (il) il_operands(x, n / QK, i, il, q41, w, &dw, &mw);
        else block_operands(x + i * x_block, x_stride, offs, q41, unpack, w, &dw, &mw);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) _mm512_store_si512(dst[i].q[j], w[j]);
        _mm512_store_ps(dst[i].d, dw);
        if (q41) _mm512_store_ps(dst[i].m, mw);
    }
}

static inline __attribute__((always_inline)) void tiled(const int T, int64_t nb, float *s, size_t s_stride,
                                                        const lm_ltile_block *w, const char *yb, size_t y_stride,
                                                        const int q41, int more) {
    __m512 sum[12];
#pragma GCC unroll 12
    for (int c = 0; c < T; c++) sum[c] = more ? _mm512_loadu_ps(s + c * s_stride) : _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m512i wv[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) wv[j] = _mm512_load_si512(w[i].q[j]);
        const __m512 dw = _mm512_load_ps(w[i].d), mw = q41 ? _mm512_load_ps(w[i].m) : _mm512_setzero_ps();
        const lm_panel_block *y = (const lm_panel_block *)(yb + i * y_stride);
#pragma GCC unroll 12
        for (int c = 0; c < T; c++) sum[c] = token_block(y + c, wv, dw, mw, q41, sum[c]);
    }
#pragma GCC unroll 12
    for (int c = 0; c < T; c++) _mm512_storeu_ps(s + c * s_stride, sum[c]);
}

#define LTILED_AT(T, Q41) \
    tiled(T, n / QK, s + c * s_stride, s_stride, xr, (const char *)y + c * sizeof(lm_panel_block), y_stride, Q41, more)
#define LTILED(NAME, BLOCK, Q41, UNPACK)                                  \
    void lm_tiled_##NAME##_vnni(LM_TILED_ARGS) {                          \
        int c = 0;                                                        \
        for (; c + 12 <= nt; c += 12) LTILED_AT(12, Q41);                 \
        if (nt - c >= 8) { LTILED_AT(8, Q41); c += 8; }                   \
        if (nt - c >= 4) { LTILED_AT(4, Q41); c += 4; }                   \
        if (nt - c >= 2) { LTILED_AT(2, Q41); c += 2; }                   \
        if (nt - c >= 1) LTILED_AT(1, Q41);                               \
    }                                                                     \
    void lm_repack_##NAME##_vnni(LM_REPACK_ARGS) { repack(n, x, x_stride, BLOCK, Q41, UNPACK, dst, 0); }
#define REPACK_IL(NAME, BLOCK, Q41, UNPACK, LINES) \
    void lm_repack_il_##NAME##_vnni(LM_REPACK_ARGS) { repack(n, x, x_stride, BLOCK, Q41, UNPACK, dst, LINES); }

LTILED(q4_0, sizeof(block_q4_0), 0, unpack_q4_0)
LTILED(q4_1, sizeof(block_q4_1), 1, unpack_q4_1)
LTILED(q5_0, sizeof(block_q5_0), 0, unpack_q5_0)
LTILED(q8_0, sizeof(block_q8_0), 0, unpack_q8_0)
LTILED(q5_1, sizeof(block_q5_1), 1, unpack_q5_1)
REPACK_IL(q4_0, sizeof(block_q4_0), 0, unpack_q4_0, 4)
REPACK_IL(q4_1, sizeof(block_q4_1), 1, unpack_q4_1, 4)
REPACK_IL(q8_0, sizeof(block_q8_0), 0, unpack_q8_0, 8)
REPACK_IL(q5_0, sizeof(block_q5_0), 0, unpack_q5_0, 5)
REPACK_IL(q5_1, sizeof(block_q5_1), 1, unpack_q5_1, 5)
