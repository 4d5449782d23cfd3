/* Prompts on AMX's bf16 tiles (quant.h: lm_amx_bf16_gemm, the types'
 * bf16_panel): a product's weights, repacked as for the VNNI kernels (the
 * K-quants' lm_ktile_block: per four weights a 64-byte line, lane r row r's
 * quants; d x each sub-block's scale; the offsets or mins; the legacy types'
 * lm_ltile_block likewise, with d and m), are dequantized once per
 * product into the tiles' B layout, and every 16 tokens (their activations
 * rounded to bf16 once) pass them by tdpbf16ps, the sums kept in the tiles'
 * f32 over the whole row. Nothing per sub-block is left to the vector units,
 * where the int8 tiles leave a convert and an FMA per (token, row, sub-block)
 * (measured on the Xeon: those, not the tiles, held the int8 product to
 * 1.1x the VNNI kernel). Each weight is d x scale x q + bias (-dmin x min, or
 * d x offset) in f32, rounded to bf16 once; each activation rounded once; the
 * products summed in f32: within 2^-7 of sum |w x| of the exact dot of the
 * dequantized weights (spec/c/test_quant.c), the bound the bf16 GEMM keeps. */
#include "quant.h"
#include "quant_k_x86.h"
#include "quant_legacy.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* vcvtne2ps2bf16 gives [first 16 | second 16]; this takes word r of each to lanes 2r, 2r + 1 */
static inline __m512i pair_mix(void) {
    return _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3,
                            18, 2, 17, 1, 16, 0);
}

/* a line of four weights of 16 rows (lane r: row r's, unsigned bytes) as
 * two lines of bf16 pairs at out: each weight scale x q + bias */
static inline __attribute__((always_inline)) __m512i *bf16_lines(__m512i v, __m512 scale, __m512 bias, __m512i mix,
                                                                 __m512i *out) {
    const __m512i lo8 = _mm512_set1_epi32(0xFF);
    __m512 w[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
        w[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(v, 8 * j), lo8)), scale, bias);
    _mm512_storeu_si512(out, _mm512_permutexvar_epi16(mix, (__m512i)_mm512_cvtne2ps_pbh(w[1], w[0])));
    _mm512_storeu_si512(out + 1, _mm512_permutexvar_epi16(mix, (__m512i)_mm512_cvtne2ps_pbh(w[3], w[2])));
    return out + 2;
}

/* n weights of 16 repacked rows (n / 256 blocks at rp) as bf16 pairs: line
 * j (64 bytes), lane r: row r's weights 2j and 2j + 1. sub: 32 (Q4_K, Q5_K)
 * or 16; off: the offset term (Q3_K, Q6_K) or else the min term. */
static inline __attribute__((always_inline)) void bf16_panel(const int sub, const int off, int64_t n, const void *rp,
                                                             uint16_t *dst) {
    const int nsub = QK_K / sub, quads = sub / 4;
    const __m512i mix = pair_mix();
    __m512i *out = (__m512i *)dst;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const lm_ktile_block *b = (const lm_ktile_block *)rp + i;
        const __m512 f = off ? _mm512_load_ps(b->d) : _mm512_sub_ps(_mm512_setzero_ps(), _mm512_load_ps(b->dmin));
        for (int g = 0; g < nsub; g++) {
            const __m512 dsc = _mm512_load_ps(b->dsc[g]);
            const __m512i t = _mm512_load_si512(off ? b->off[g / 2] : b->mn[g / 2]);
            const __m512i h = g % 2 ? _mm512_srai_epi32(t, 16) : _mm512_srai_epi32(_mm512_slli_epi32(t, 16), 16);
            const __m512 bias = _mm512_mul_ps(_mm512_cvtepi32_ps(h), f);
#pragma GCC unroll 8
            for (int l = 0; l < quads; l++) out = bf16_lines(_mm512_load_si512(b->q[quads * g + l]), dsc, bias, mix, out);
        }
    }
}

#define BF16_PANEL(NAME, SUB, OFF) \
    void lm_bf16_panel_##NAME(int64_t n, const void *rp, uint16_t *dst) { bf16_panel(SUB, OFF, n, rp, dst); }
BF16_PANEL(q2_K, 16, 0)
BF16_PANEL(q3_K, 16, 1)
BF16_PANEL(q4_K, 32, 0)
BF16_PANEL(q5_K, 32, 0)
BF16_PANEL(q6_K, 16, 1)

/* The legacy types' repacked blocks (lm_ltile_block: 32 weights of 16 rows
 * as eight lines, shifted up by the format's bias; d and, Q4_1 and Q5_1, m):
 * each weight d x q + (m, or -bias x d) */
static inline __attribute__((always_inline)) void bf16_panel_legacy(const int bias, const int q41, int64_t n,
                                                                    const void *rp, uint16_t *dst) {
    const __m512i mix = pair_mix();
    __m512i *out = (__m512i *)dst;
    for (int64_t i = 0; i < n / 32; i++) {
        const lm_ltile_block *b = (const lm_ltile_block *)rp + i;
        const __m512 d = _mm512_load_ps(b->d);
        const __m512 off = q41 ? _mm512_load_ps(b->m) : _mm512_mul_ps(d, _mm512_set1_ps((float)-bias));
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) out = bf16_lines(_mm512_load_si512(b->q[l]), d, off, mix, out);
    }
}

#define BF16_PANEL_LEGACY(NAME, BIAS, Q41) \
    void lm_bf16_panel_##NAME(int64_t n, const void *rp, uint16_t *dst) { bf16_panel_legacy(BIAS, Q41, n, rp, dst); }
BF16_PANEL_LEGACY(q4_0, 8, 0)
BF16_PANEL_LEGACY(q4_1, 0, 1)
BF16_PANEL_LEGACY(q5_0, 16, 0)
BF16_PANEL_LEGACY(q5_1, 0, 1)
BF16_PANEL_LEGACY(q8_0, 128, 0)

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* tmm0-3: f32 sums (tokens x 16 rows), 4-5: tokens' 32 activations, 6-7: 16 lines of weight pairs */
static inline __attribute__((always_inline, target("amx-tile"))) void bf16_config(int rows) {
    amx_config c __attribute__((aligned(64)));
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 6; t++) c.colsb[t] = 64, c.rows[t] = (uint8_t)rows;
    for (int t = 6; t < 8; t++) c.colsb[t] = 64, c.rows[t] = 16;
    _tile_loadconfig(&c);
}

/* TB token tiles (16 tokens, or the configured rows) by PB panels, k of
 * the weights: the sums from zero (first) or going on from y */
static inline __attribute__((always_inline, target("amx-tile,amx-bf16"))) void
bf16_block(const int TB, const int PB, int first, int64_t k, const uint16_t *x, size_t xs, const uint16_t *w, size_t ws,
           float *y, size_t ys) {
    if (first) {
        _tile_zero(0);
        if (PB > 1) _tile_zero(1);
        if (TB > 1) _tile_zero(2);
        if (TB > 1 && PB > 1) _tile_zero(3);
    } else {
        _tile_loadd(0, y, (long)(ys * 4));
        if (PB > 1) _tile_loadd(1, y + 16, (long)(ys * 4));
        if (TB > 1) _tile_loadd(2, y + 16 * ys, (long)(ys * 4));
        if (TB > 1 && PB > 1) _tile_loadd(3, y + 16 * ys + 16, (long)(ys * 4));
    }
    const uint16_t *x1 = x + 16 * xs, *w1 = w + ws;
    for (int64_t c = 0; c < k; c += 32) {
        _tile_loadd(4, x + c, (long)(xs * 2));
        _tile_loadd(6, w + c * 16, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (PB > 1) {
            _tile_loadd(7, w1 + c * 16, 64);
            _tile_dpbf16ps(1, 4, 7);
        }
        if (TB > 1) {
            _tile_loadd(5, x1 + c, (long)(xs * 2));
            _tile_dpbf16ps(2, 5, 6);
            if (PB > 1) _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, y, (long)(ys * 4));
    if (PB > 1) _tile_stored(1, y + 16, (long)(ys * 4));
    if (TB > 1) _tile_stored(2, y + 16 * ys, (long)(ys * 4));
    if (TB > 1 && PB > 1) _tile_stored(3, y + 16 * ys + 16, (long)(ys * 4));
}

/* tokens [t0, t1) by every panel, weights [k0, k0 + kc) */
static inline __attribute__((always_inline, target("amx-tile,amx-bf16"))) void
bf16_tokens(int64_t t0, int64_t t1, int64_t k0, int64_t kc, const uint16_t *x, size_t xs, const uint16_t *w, size_t ws,
            int np, float *y, size_t ys) {
    for (int64_t t = t0; t < t1; t += 32) {
        const uint16_t *xt = x + t * xs + k0, *wk = w + k0 * 16;
        float *yt = y + t * ys;
        int p = 0;
        if (t1 - t >= 32) {
            for (; p + 2 <= np; p += 2) bf16_block(2, 2, k0 == 0, kc, xt, xs, wk + (size_t)p * ws, ws, yt + 16 * p, ys);
            if (p < np) bf16_block(2, 1, k0 == 0, kc, xt, xs, wk + (size_t)p * ws, ws, yt + 16 * p, ys);
        } else {
            for (; p + 2 <= np; p += 2) bf16_block(1, 2, k0 == 0, kc, xt, xs, wk + (size_t)p * ws, ws, yt + 16 * p, ys);
            if (p < np) bf16_block(1, 1, k0 == 0, kc, xt, xs, wk + (size_t)p * ws, ws, yt + 16 * p, ys);
        }
    }
}

/* The weights taken AMX_K at a time across all the tokens, so that a chunk's
 * weights (up to 8 panels: 512 KB) stay in L2 while the tokens pass: at K =
 * 8192, one thread, 512 tokens, 2-4 panels, 842-874 GFLOP/s whole against
 * 1250 at K = 2048. The sums go on in the same order: the same bits. */
#define AMX_K 2048

__attribute__((target("amx-tile,amx-bf16"))) void lm_amx_bf16_gemm(int64_t k, int64_t n, const uint16_t *x, size_t xs,
                                                                  const uint16_t *w, size_t ws, int np, float *y, size_t ys) {
    const int64_t full = n / 16 * 16;
    if (full) {
        bf16_config(16);
        for (int64_t k0 = 0; k0 < k; k0 += AMX_K)
            bf16_tokens(0, full, k0, k - k0 < AMX_K ? k - k0 : AMX_K, x, xs, w, ws, np, y, ys);
    }
    if (full < n) { /* the last few tokens: tiles of that many rows, nothing read beyond them */
        bf16_config((int)(n - full));
        for (int64_t k0 = 0; k0 < k; k0 += AMX_K)
            bf16_tokens(full, n, k0, k - k0 < AMX_K ? k - k0 : AMX_K, x, xs, w, ws, np, y, ys);
    }
    _tile_release();
}
