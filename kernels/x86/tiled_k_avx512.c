/* Repacked panels of the K-quants (quant.h): a prompt's product repacks each
 * 16-row panel once (lm_repack_*), then every token of the product passes the
 * repacked rows (lm_tiled_*) with nothing left to unpack, transpose or
 * gather in the loop: per four weights a 64-byte line (lane r: row r's four
 * quants, unsigned), loaded once for twelve tokens, each token's four
 * activation bytes a broadcast operand of vpdpbusd. The panels they replace
 * redid that unpacking and transposing for every eight tokens, in 256-bit
 * halves: on an Intel Xeon without AMX (bench/prefill_gemm.c, M = 512, 2048 x
 * 8192, one thread) Q4_K 87 GFLOP/s; repacked, with the sub-block scales
 * applied by vpmulld as those panels did, 219; as now (below, twelve tokens
 * a pass, the blocks in slices, core/matmul.c), 240-300 (oneDNN s8: 440-500).
 *
 * All five K-quants reduce to one form, and one kernel: per super-block, 256
 * unsigned quants; a scale per sub-block of 32 (Q4_K, Q5_K) or 16 (Q2_K,
 * Q3_K, Q6_K); an offset as pairs of int16 against Q8_K's bsums (Q3_K: -4 *
 * scale, Q6_K: -32 * scale); a min term (Q2_K, Q4_K, Q5_K), scaled by dmin.
 * Each sub-block's exact int32 dot is converted and taken into the
 * super-block's float part by one FMA with d * scale (repacked as a float):
 * two uops beside its vpdpbusd where an integer multiply by the scale (two
 * uops on one port, 1.3 G/s a core on that Xeon) and an add took three. The
 * float work is the panel reference's (kernels/panel.c) in its order, so the
 * results are the reference's bit for bit (spec/c/test_quant.c). */
#include "quant.h"
#include "quant_k_x86.h"
#include "panel_x86.h"

#include <immintrin.h>
#include <stddef.h>
#include <string.h>

_Static_assert(sizeof(lm_ktile_block) % 64 == 0, "repacked super-blocks stay 64-byte aligned");

/* the 32 quants 32q .. 32q + 31 of super-block xi, unsigned, in the reference's order */
static inline __attribute__((always_inline)) __m256i unpack32(const lm_dtype t, const char *xi, int q) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
    switch (t) {
    case LM_Q4_K:
    case LM_Q5_K: { /* low nibbles of qs[32 (q / 2) ..] for even q, high for odd; Q5_K's fifth bit: bit q of qh */
        const size_t qs_off = t == LM_Q5_K ? offsetof(block_q5_K, qs) : offsetof(block_q4_K, qs);
        const __m256i v = _mm256_loadu_si256((const __m256i *)(xi + qs_off + 32 * (q / 2)));
        __m256i r = _mm256_and_si256(q % 2 ? _mm256_srli_epi16(v, 4) : v, m4);
        if (t == LM_Q5_K) {
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(xi + offsetof(block_q5_K, qh)));
            r = _mm256_or_si256(r, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, q), m1), 4));
        }
        return r;
    }
    case LM_Q6_K: {
        const block_q6_K *b = (const block_q6_K *)xi;
        const int h = q / 4, c = q % 4;
        const __m256i ql = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32 * (c % 2)));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
        const __m256i lo = _mm256_and_si256(c < 2 ? ql : _mm256_srli_epi16(ql, 4), m4);
        return _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), m3), 4));
    }
    default: { /* Q2_K, Q3_K: bits 2j of qs[32h ..] (and bit 4h + j of hmask) */
        const int h = q / 4, j = q % 4;
        const size_t qs_off = t == LM_Q3_K ? offsetof(block_q3_K, qs) : offsetof(block_q2_K, qs);
        const __m256i v = _mm256_loadu_si256((const __m256i *)(xi + qs_off + 32 * h));
        __m256i r = _mm256_and_si256(_mm256_srli_epi16(v, 2 * j), m3);
        if (t == LM_Q3_K) {
            const __m256i hm = _mm256_loadu_si256((const __m256i *)(xi + offsetof(block_q3_K, hmask)));
            r = _mm256_or_si256(r, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + j), m1), 2));
        }
        return r;
    }
    }
}

static inline int32_t pair16(int a, int b) { return (int32_t)((uint32_t)(uint16_t)a | ((uint32_t)(uint16_t)b << 16)); }

/* one row's scales, offsets, mins and d, dmin of super-block xi into lane r of b */
static inline __attribute__((always_inline)) void repack_scales(const lm_dtype t, const char *xi, int r, lm_ktile_block *b) {
    switch (t) {
    case LM_Q4_K:
    case LM_Q5_K: {
        const block_q4_K *k = (const block_q4_K *)xi; /* Q5_K: the same first 16 bytes */
        uint8_t sm[16];
        lm_k_unpack_scales(k->scales, sm);
        const float d = _cvtsh_ss(k->d);
        for (int j = 0; j < 8; j++) b->dsc[j][r] = d * (float)sm[j];
        for (int p = 0; p < 4; p++) b->mn[p][r] = pair16(sm[8 + 2 * p], sm[8 + 2 * p + 1]); /* the record's sums of 32 */
        b->dmin[r] = _cvtsh_ss(k->dmin);
        break;
    }
    case LM_Q6_K: {
        const block_q6_K *k = (const block_q6_K *)xi;
        const float d = _cvtsh_ss(k->d);
        for (int j = 0; j < 16; j++) b->dsc[j][r] = d * (float)k->scales[j];
        for (int p = 0; p < 8; p++) b->off[p][r] = pair16(-32 * k->scales[2 * p], -32 * k->scales[2 * p + 1]);
        b->d[r] = d;
        break;
    }
    case LM_Q3_K: {
        const block_q3_K *k = (const block_q3_K *)xi;
        int8_t sc[16];
        lm_k_unpack_scales_q3(k->scales, sc);
        const float d = _cvtsh_ss(k->d);
        for (int j = 0; j < 16; j++) b->dsc[j][r] = d * (float)sc[j];
        for (int p = 0; p < 8; p++) b->off[p][r] = pair16(-4 * sc[2 * p], -4 * sc[2 * p + 1]);
        b->d[r] = d;
        break;
    }
    default: {
        const block_q2_K *k = (const block_q2_K *)xi;
        const float d = _cvtsh_ss(k->d);
        for (int j = 0; j < 16; j++) b->dsc[j][r] = d * (float)(k->scales[j] & 15);
        for (int p = 0; p < 8; p++) b->mn[p][r] = pair16(k->scales[2 * p] >> 4, k->scales[2 * p + 1] >> 4);
        b->dmin[r] = _cvtsh_ss(k->dmin);
        break;
    }
    }
}

/* 16 rows (x_stride apart) of n weights into n / 256 blocks at dst */
static inline __attribute__((always_inline)) void repack(const lm_dtype t, size_t bs, int64_t n, const char *x,
                                                         size_t x_stride, lm_ktile_block *dst) {
    for (int64_t i = 0; i < n / QK_K; i++) {
        lm_ktile_block *b = dst + i;
        const char *xi = x + i * bs;
        for (int r = 0; r < LM_PANEL_ROWS; r++) repack_scales(t, xi + r * x_stride, r, b);
        for (int q = 0; q < 8; q++) {
            __m256i v[16];
            __m512i w[8];
#pragma GCC unroll 16
            for (int k = 0; k < 16; k++) v[k] = unpack32(t, xi + k * x_stride, q);
            lm_transpose16(v, w);
#pragma GCC unroll 8
            for (int l = 0; l < 8; l++) _mm512_store_si512(b->q[8 * q + l], w[l]);
        }
    }
}

/* acc[c] = the exact sum over p < np of tab[p]'s int16 pairs times token c's bsums 2p, 2p + 1 */
static inline __attribute__((always_inline)) void bsums_dot(const int T, const int np, __m512i *acc, const __m512i tab[8],
                                                            const block_q8_K *y) {
#pragma GCC unroll 12
    for (int c = 0; c < T; c++) acc[c] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int p = 0; p < np; p++) {
#pragma GCC unroll 12
        for (int c = 0; c < T; c++) acc[c] = lm_dpwssd_bcst(acc[c], tab[p], y[c].bsums + 2 * p);
    }
}

static inline __attribute__((always_inline)) void load_tab(const int np, __m512i v[8], const int32_t tab[8][16]) {
#pragma GCC unroll 8
    for (int p = 0; p < np; p++) v[p] = _mm512_load_si512(tab[p]);
}

/* Interleaved super-blocks (quant.h): Q4_K's 16 rows' bytes of one
 * super-block as 64-byte lines (line k, lane r: bytes 4k..4k+3 of row r's
 * block); Q6_K's as each sub-block's quants in three lines (the six bits of
 * three quant lines, and the fourth line's in their top two bits:
 * kernels/quant_k.c), the scales in pairs and the fp16 d. From them, in
 * registers, what repack writes for it: d and dmin, each sub-block's integer
 * scale (dsc = d x scale, as repack_scales computes it), the min or offset
 * pairs, and the quant lines. */
static inline __attribute__((always_inline)) void il_scales(const lm_dtype t, const char *xi, __m512 *dw, __m512 *dmin,
                                                            __m512i sc[16], __m512i tab[8]) {
    if (t == LM_Q4_K || t == LM_Q5_K) {
        /* line 0: d | dmin << 16; lines 1-3: the 12 bytes of 6-bit scales and mins (lm_k_unpack_scales) */
        const __m512i l0 = _mm512_loadu_si512(xi), s0 = _mm512_loadu_si512(xi + 64), s1 = _mm512_loadu_si512(xi + 128),
                      s2 = _mm512_loadu_si512(xi + 192);
        const __m512i m63 = _mm512_set1_epi32(63), m15 = _mm512_set1_epi32(15), m3 = _mm512_set1_epi32(3);
        *dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(l0));
        *dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(l0, 16)));
        __m512i m[8];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            sc[j] = _mm512_and_si512(_mm512_srli_epi32(s0, 8 * j), m63);
            m[j] = _mm512_and_si512(_mm512_srli_epi32(s1, 8 * j), m63);
            sc[j + 4] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(s2, 8 * j), m15),
                                        _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s0, 8 * j + 6), m3), 4));
            m[j + 4] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(s2, 8 * j + 4), m15),
                                       _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s1, 8 * j + 6), m3), 4));
        }
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) tab[p] = _mm512_or_si512(m[2 * p], _mm512_slli_epi32(m[2 * p + 1], 16)); /* mins 2p, 2p + 1 */
    } else if (t == LM_Q2_K) { /* lines 16-19: the 16 scale bytes (scale | min << 4); line 20: d | dmin << 16 */
        const __m512i l20 = _mm512_loadu_si512(xi + 64 * 20), m15 = _mm512_set1_epi32(15);
        *dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(l20));
        *dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(l20, 16)));
        __m512i m[16];
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) {
            const __m512i v = _mm512_loadu_si512(xi + 64 * (16 + j / 4));
            sc[j] = _mm512_and_si512(_mm512_srli_epi32(v, 8 * (j % 4)), m15);
            m[j] = _mm512_and_si512(_mm512_srli_epi32(v, 8 * (j % 4) + 4), m15);
        }
#pragma GCC unroll 8
        for (int p = 0; p < 8; p++) tab[p] = _mm512_or_si512(m[2 * p], _mm512_slli_epi32(m[2 * p + 1], 16)); /* mins 2p, 2p + 1 */
    } else if (t == LM_Q3_K) { /* lines 24-26: the 12 scale bytes (lm_k_unpack_scales_q3), then 16 fp16 d */
        *dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(xi + 64 * 27)));
        *dmin = _mm512_setzero_ps();
        const __m512i s0 = _mm512_loadu_si512(xi + 64 * 24), s1 = _mm512_loadu_si512(xi + 64 * 25),
                      s2 = _mm512_loadu_si512(xi + 64 * 26);
        const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x03), k32 = _mm512_set1_epi8(32);
        /* u[m], byte j: scale 4m + j, -32 .. 31 */
        const __m512i u[4] = {
            _mm512_sub_epi8(_mm512_or_si512(_mm512_and_si512(s0, m4), _mm512_slli_epi32(_mm512_and_si512(s2, m2), 4)), k32),
            _mm512_sub_epi8(_mm512_or_si512(_mm512_and_si512(s1, m4),
                                            _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s2, 2), m2), 4)), k32),
            _mm512_sub_epi8(_mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(s0, 4), m4),
                                            _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s2, 4), m2), 4)), k32),
            _mm512_sub_epi8(_mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(s1, 4), m4),
                                            _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s2, 6), m2), 4)), k32)};
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) sc[j] = _mm512_srai_epi32(_mm512_slli_epi32(u[j / 4], 24 - 8 * (j % 4)), 24);
#pragma GCC unroll 8
        for (int p = 0; p < 8; p++) /* lane r: -4 x row r's scales 2p, 2p + 1 as int16 */
            tab[p] = _mm512_mullo_epi16(_mm512_or_si512(_mm512_and_si512(sc[2 * p], _mm512_set1_epi32(0xFFFF)),
                                                        _mm512_slli_epi32(sc[2 * p + 1], 16)),
                                        _mm512_set1_epi16(-4));
    } else { /* Q6_K: lines 48-51 the scales as pairs (bytes 32p + 2r, + 1), then 16 fp16 d */
        *dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(xi + 64 * 52)));
        *dmin = _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int p = 0; p < 8; p++) { /* lane r: row r's scales 2p, 2p + 1 as int16 */
            const __m512i pr = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(xi + 64 * 48 + 32 * p)));
            sc[2 * p] = _mm512_srai_epi32(_mm512_slli_epi32(pr, 16), 16);
            sc[2 * p + 1] = _mm512_srai_epi32(pr, 16);
            tab[p] = _mm512_mullo_epi16(pr, _mm512_set1_epi16(-32));
        }
    }
}

/* Q6_K's fourth line of sub-block quants from the top two bits of the three
 * (bits 0-1 of each quant in a, 2-3 in b, 4-5 in c) */
static inline __attribute__((always_inline)) __m512i q6_fourth(__m512i a, __m512i b, __m512i c) {
    const __m512i ab = _mm512_ternarylogic_epi32(_mm512_set1_epi8(0x03), _mm512_srli_epi16(a, 6), _mm512_srli_epi16(b, 4), 0xCA);
    const __m512i abc = _mm512_ternarylogic_epi32(_mm512_set1_epi8(0x0F), ab, _mm512_srli_epi16(c, 2), 0xCA);
    return _mm512_and_si512(abc, _mm512_set1_epi8(0x3F));
}

/* Q3_K's quant line k (0..7) of a pair of sub-blocks from its three lines
 * (kernels/quant_k.c): bits 0-2 or 3-5 of a, b, c; the last two from the top
 * bits of a or b and one of c's */
static inline __attribute__((always_inline)) __m512i q3_line(__m512i a, __m512i b, __m512i c, int k) {
    const __m512i m7 = _mm512_set1_epi8(7), m3 = _mm512_set1_epi8(3);
    const __m512i v = k / 2 == 0 ? a : k / 2 == 1 ? b : c;
    if (k < 6) return _mm512_and_si512(k % 2 ? _mm512_srli_epi16(v, 3) : v, m7);
    if (k == 6) return _mm512_and_si512(_mm512_ternarylogic_epi32(m3, _mm512_srli_epi16(a, 6), _mm512_srli_epi16(c, 4), 0xCA), m7);
    return _mm512_and_si512(_mm512_ternarylogic_epi32(m3, _mm512_srli_epi16(b, 6), _mm512_srli_epi16(c, 5), 0xCA), m7);
}

/* Q5_K's quants w (low four bits) with bit q of each byte of qh as their fifth */
static inline __attribute__((always_inline)) __m512i fifth_bit(__m512i w, __m512i qh, int q) {
    return _mm512_or_si512(w, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, q), _mm512_set1_epi8(1)), 4));
}

/* the types whose interleaved lines give two sub-blocks at a time (Q4_K and
 * Q5_K: a line's low and high nibbles; Q3_K: three lines for eight) */
static inline bool il_pairs(const lm_dtype t) { return t == LM_Q3_K || t == LM_Q4_K || t == LM_Q5_K; }

/* line l of sub-blocks g (w0) and g + 1 (w1), g even: repack's q lines
 * sub g + l and sub (g + 1) + l (weights 4 of every row, unsigned); hi16
 * (Q4_K): w1 its high nibbles where they are, 16 x the quants (so 16 x the
 * exact integer sums, which the caller shifts back before they are scaled) */
static inline __attribute__((always_inline)) void il_pair_lines(const lm_dtype t, const char *xi, int g, int l, __m512i *w0,
                                                                 __m512i *w1, const bool hi16) {
    if (t == LM_Q3_K) { /* sub-blocks g, g + 1 in lines 3g / 2 .. 3g / 2 + 2 */
        const char *u = xi + 64 * 3 * (g / 2);
        const __m512i a = _mm512_loadu_si512(u), b = _mm512_loadu_si512(u + 64), c = _mm512_loadu_si512(u + 128);
        *w0 = q3_line(a, b, c, l), *w1 = q3_line(a, b, c, 4 + l);
        return;
    }
    /* Q4_K, Q5_K: qs from line 4 (Q5_K: 12, after qh), sub-block g's low nibbles and g + 1's high ones
     * of qs[16 g ..]; Q5_K's fifth bits: bits g, g + 1 of qh[4 l ..] */
    const __m512i v = _mm512_loadu_si512(xi + 64 * ((t == LM_Q5_K ? 12 : 4) + 4 * g + l)), m4 = _mm512_set1_epi8(0x0F);
    *w0 = _mm512_and_si512(v, m4);
    *w1 = hi16 ? _mm512_andnot_si512(m4, v) : _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    if (t == LM_Q5_K) {
        const __m512i h = _mm512_loadu_si512(xi + 64 * (4 + l));
        *w0 = fifth_bit(*w0, h, g), *w1 = fifth_bit(*w1, h, g + 1);
    }
}

/* the four lines of sub-block g (Q2_K: one line's bit pairs; Q6_K: three lines' six bits and their top two) */
static inline __attribute__((always_inline)) void il_sub_lines(const lm_dtype t, const char *xi, int g, __m512i w[4]) {
    if (t == LM_Q2_K) {
        const __m512i v = _mm512_loadu_si512(xi + 64 * g);
#pragma GCC unroll 4
        for (int l = 0; l < 4; l++) w[l] = _mm512_and_si512(_mm512_srli_epi16(v, 2 * l), _mm512_set1_epi8(3));
        return;
    }
    const __m512i a = _mm512_loadu_si512(xi + 64 * 3 * g), b = _mm512_loadu_si512(xi + 64 * (3 * g + 1)),
                  c = _mm512_loadu_si512(xi + 64 * (3 * g + 2)), m6 = _mm512_set1_epi8(0x3F);
    w[0] = _mm512_and_si512(a, m6), w[1] = _mm512_and_si512(b, m6), w[2] = _mm512_and_si512(c, m6), w[3] = q6_fourth(a, b, c);
}

/* line idx of repack's q (weights 4 idx .. 4 idx + 3 of every row, unsigned) */
static inline __attribute__((always_inline)) __m512i il_qline(const lm_dtype t, const char *xi, int idx) {
    const int quads = t == LM_Q4_K || t == LM_Q5_K ? 8 : 4, g = idx / quads, l = idx % quads;
    __m512i w[4];
    if (il_pairs(t)) {
        il_pair_lines(t, xi, g & ~1, l, &w[0], &w[1], false);
        return w[g & 1];
    }
    il_sub_lines(t, xi, g, w);
    return w[l];
}

/* the repacked super-blocks (repack's) from interleaved ones: a prompt's
 * product takes them as from the file's rows (many tokens a pass reuse the
 * stored operands; tiled_il recomputes them every pass) */
static inline __attribute__((always_inline)) void repack_il(const lm_dtype t, size_t size, int64_t n, const char *x,
                                                            lm_ktile_block *dst) {
    for (int64_t i = 0; i < n / QK_K; i++) {
        const char *xi = x + i * LM_PANEL_ROWS * (int64_t)size;
        lm_ktile_block *b = dst + i;
        __m512 dw, dmin;
        __m512i sc[16], tab[8];
        il_scales(t, xi, &dw, &dmin, sc, tab);
        const bool mins = t != LM_Q3_K && t != LM_Q6_K; /* else an offset */
        const int nsub = t == LM_Q4_K || t == LM_Q5_K ? 8 : 16; /* sub-blocks of 32 or 16, min pairs half as many */
        for (int g = 0; g < nsub; g++) _mm512_store_ps(b->dsc[g], _mm512_mul_ps(dw, _mm512_cvtepi32_ps(sc[g])));
        if (mins) {
            _mm512_store_ps(b->dmin, dmin);
            for (int p = 0; p < nsub / 2; p++) _mm512_store_si512(b->mn[p], tab[p]);
        } else {
            _mm512_store_ps(b->d, dw);
            for (int p = 0; p < 8; p++) _mm512_store_si512(b->off[p], tab[p]);
        }
        /* the quant lines as the loads give them: two sub-blocks at a time, or one */
        const int quads = t == LM_Q4_K || t == LM_Q5_K ? 8 : 4; /* lines a sub-block */
        for (int g = 0; il_pairs(t) && g < nsub; g += 2) {
#pragma GCC unroll 8
            for (int l = 0; l < quads; l++) {
                __m512i w0, w1;
                il_pair_lines(t, xi, g, l, &w0, &w1, false);
                _mm512_store_si512(b->q[quads * g + l], w0);
                _mm512_store_si512(b->q[quads * (g + 1) + l], w1);
            }
        }
        for (int g = 0; !il_pairs(t) && g < nsub; g++) {
            __m512i w[4];
            il_sub_lines(t, xi, g, w);
#pragma GCC unroll 4
            for (int l = 0; l < 4; l++) _mm512_store_si512(b->q[4 * g + l], w[l]);
        }
    }
}

/* The prefetch of a decode step's next panel (tiled_il's pf): the L lines of
 * its super-block of il_block bytes at pf (64 apart from pf: every line it
 * touches), into L2, spread over a loop of n steps: m = L / n (at least one)
 * at each step k, the rest (L - m n) before the loop (il_pf_head). A line or
 * so asked for beside each line read rather than the super-block's all at
 * once, which queued the loop's own loads behind them on the fill buffers
 * (from memory, one thread, K = 4096, each type: 1.00-1.08x as fast;
 * core/matmul.c il_range). */
static inline __attribute__((always_inline)) int il_pf_lines(size_t il_block) { return (int)((il_block + 63) / 64); }
static inline __attribute__((always_inline)) int il_pf_step(size_t il_block, int n) {
    return il_pf_lines(il_block) / n > 0 ? il_pf_lines(il_block) / n : 1;
}
static inline __attribute__((always_inline)) int il_pf_rest(size_t il_block, int n) {
    const int r = il_pf_lines(il_block) - il_pf_step(il_block, n) * n;
    return r > 0 ? r : 0;
}
static inline __attribute__((always_inline)) void il_pf_head(const char *pf, size_t il_block, int n) {
    for (int l = 0; pf && l < il_pf_rest(il_block, n); l++) _mm_prefetch(pf + 64 * l, _MM_HINT_T1);
}
static inline __attribute__((always_inline)) void il_pf(const char *pf, size_t il_block, int k, int n) {
    const int L = il_pf_lines(il_block), m = il_pf_step(il_block, n), l0 = il_pf_rest(il_block, n) + k * m;
#pragma GCC unroll 4
    for (int j = 0; pf && j < m; j++)
        if (m * n <= L || l0 + j < L) _mm_prefetch(pf + 64 * (l0 + j), _MM_HINT_T1);
}

/* a sub-block's exact sums (acc) into its tokens' parts: times d x its scale */
static inline __attribute__((always_inline)) void take_sub(const int T, __m512 *part, const __m512i *acc, __m512 dw, __m512i sc) {
    const __m512 dsc = _mm512_mul_ps(dw, _mm512_cvtepi32_ps(sc));
#pragma GCC unroll 4
    for (int c = 0; c < T; c++) part[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[c]), dsc, part[c]);
}

/* T tokens against the 16 repacked rows (il: 0), or (il: the type) the
 * interleaved ones: sub = 32 (Q4_K, Q5_K) or 16; off: the offset pairs, times
 * d, start the super-block's part; mins: the second FMA. Per (row, token) the
 * reference's operations in its order (kernels/panel.c), from either source. */
static inline __attribute__((always_inline)) void tiled(const int T, const int sub, const int off, const int mins,
                                                        int64_t nb, float *s, size_t s_stride, const void *wp,
                                                        const char *yb, size_t y_stride, int more, const lm_dtype il,
                                                        size_t il_block, const char *pf) {
    const int nsub = QK_K / sub, quads = sub / 4, np = sub == 32 ? 4 : 8; /* min pairs: sums of 32 or 16 (quant.h) */
    /* the row sums in memory (L1): the registers hold each token's dot and part */
    float fs[12][16] __attribute__((aligned(64)));
#pragma GCC unroll 12
    for (int c = 0; c < T; c++) _mm512_store_ps(fs[c], more ? _mm512_loadu_ps(s + c * s_stride) : _mm512_setzero_ps());
    for (int64_t i = 0; i < nb; i++) {
        const lm_ktile_block *b = (const lm_ktile_block *)wp + i;
        const char *xi = (const char *)wp + i * il_block;
        const block_q8_K *y = (const block_q8_K *)(yb + i * y_stride);
        const char *pfi = il && pf ? pf + i * il_block : NULL;
        __m512i acc[12], sc[16], tab[8];
        __m512 part[12], dw = _mm512_setzero_ps(), dmin = _mm512_setzero_ps();
        if (il) {
            il_pf_head(pfi, il_block, !(T <= 4) ? nsub * quads : il_pairs(il) ? nsub / 2 * quads : nsub);
            il_scales(il, xi, &dw, &dmin, sc, tab);
        } else if (off) { /* repack writes only the fields its type uses */
            dw = _mm512_load_ps(b->d);
            load_tab(8, tab, b->off);
        }
        if (!il && mins) dmin = _mm512_load_ps(b->dmin);
        if (off) {
            bsums_dot(T, 8, acc, tab, y);
#pragma GCC unroll 12
            for (int c = 0; c < T; c++) part[c] = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[c]), dw);
        } else {
#pragma GCC unroll 12
            for (int c = 0; c < T; c++) part[c] = _mm512_setzero_ps();
        }
        /* interleaved, a few tokens (decode): the quants unpacked in
         * registers two sub-blocks at a time where one load (or three) holds
         * both, else one at a time; each sub-block's sum taken into the part
         * in order */
        for (int g = 0; il && il_pairs(il) && T <= 4 && g < nsub; g += 2) {
            __m512i acc1[4];
#pragma GCC unroll 4
            for (int c = 0; c < T; c++) acc[c] = acc1[c] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int l = 0; l < quads; l++) {
                __m512i w0, w1;
                il_pf(pfi, il_block, g / 2 * quads + l, nsub / 2 * quads);
                il_pair_lines(il, xi, g, l, &w0, &w1, il == LM_Q4_K);
#pragma GCC unroll 4
                for (int c = 0; c < T; c++) {
                    acc[c] = lm_dpbusd_bcst(acc[c], w0, y[c].qs + sub * g + 4 * l);
                    acc1[c] = lm_dpbusd_bcst(acc1[c], w1, y[c].qs + sub * (g + 1) + 4 * l);
                }
            }
            if (il == LM_Q4_K)
#pragma GCC unroll 4
                for (int c = 0; c < T; c++) acc1[c] = _mm512_srai_epi32(acc1[c], 4);
            take_sub(T, part, acc, dw, sc[g]);
            take_sub(T, part, acc1, dw, sc[g + 1]);
        }
        for (int g = 0; il && !il_pairs(il) && T <= 4 && g < nsub; g++) {
            __m512i w[4];
            il_pf(pfi, il_block, g, nsub);
            il_sub_lines(il, xi, g, w);
#pragma GCC unroll 4
            for (int c = 0; c < T; c++) {
                acc[c] = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int l = 0; l < 4; l++)
                    acc[c] = lm_dpbusd_bcst(acc[c], w[l], y[c].qs + 16 * g + 4 * l);
            }
            take_sub(T, part, acc, dw, sc[g]);
        }
        for (int g = 0; !(il && T <= 4) && g < nsub; g++) { /* otherwise (the fast paths above) */
#pragma GCC unroll 12
            for (int c = 0; c < T; c++) acc[c] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int l = 0; l < quads; l++) {
                il_pf(pfi, il_block, quads * g + l, nsub * quads);
                const __m512i wv = il ? il_qline(il, xi, quads * g + l) : _mm512_load_si512(b->q[quads * g + l]);
#pragma GCC unroll 12
                for (int c = 0; c < T; c++)
                    acc[c] = lm_dpbusd_bcst(acc[c], wv, y[c].qs + sub * g + 4 * l);
            }
            const __m512 dsc = il ? _mm512_mul_ps(dw, _mm512_cvtepi32_ps(sc[g])) : _mm512_load_ps(b->dsc[g]);
#pragma GCC unroll 12
            for (int c = 0; c < T; c++) part[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[c]), dsc, part[c]);
        }
#pragma GCC unroll 12
        for (int c = 0; c < T; c++) _mm512_store_ps(fs[c], _mm512_fmadd_ps(part[c], _mm512_set1_ps(y[c].d), _mm512_load_ps(fs[c])));
        if (mins) {
            if (!il) load_tab(np, tab, b->mn);
            bsums_dot(T, np, acc, tab, y);
#pragma GCC unroll 12
            for (int c = 0; c < T; c++)
                _mm512_store_ps(fs[c], _mm512_fnmadd_ps(_mm512_cvtepi32_ps(acc[c]), _mm512_mul_ps(dmin, _mm512_set1_ps(y[c].d)),
                                                        _mm512_load_ps(fs[c])));
        }
    }
#pragma GCC unroll 12
    for (int c = 0; c < T; c++) _mm512_storeu_ps(s + c * s_stride, _mm512_load_ps(fs[c]));
}

/* up to LM_PANEL_TOKENS tokens: twelve at a time, the rest in power-of-two pieces */
#define TILED_AT(T, SUB, OFF, MINS, IL, ILB)                                                                    \
    tiled(T, SUB, OFF, MINS, n / QK_K, s + c * s_stride, s_stride, xr, (const char *)y + c * sizeof(block_q8_K), \
          y_stride, more, IL, ILB, c == 0 ? (const char *)pf : NULL)
#define TILED_ALL(SUB, OFF, MINS, IL, ILB)                                  \
    int c = 0;                                                              \
    for (; c + 12 <= nt; c += 12) TILED_AT(12, SUB, OFF, MINS, IL, ILB);    \
    if (nt - c >= 8) { TILED_AT(8, SUB, OFF, MINS, IL, ILB); c += 8; }      \
    if (nt - c >= 4) { TILED_AT(4, SUB, OFF, MINS, IL, ILB); c += 4; }      \
    if (nt - c >= 2) { TILED_AT(2, SUB, OFF, MINS, IL, ILB); c += 2; }      \
    if (nt - c >= 1) TILED_AT(1, SUB, OFF, MINS, IL, ILB);
#define TILED(NAME, TYPE, SUB, OFF, MINS)                                   \
    void lm_tiled_##NAME##_vnni(LM_TILED_ARGS) {                            \
        const void *pf = NULL;                                              \
        TILED_ALL(SUB, OFF, MINS, 0, 0)                                     \
    }                                                                       \
    void lm_repack_##NAME##_vnni(LM_REPACK_ARGS) {                          \
        repack(TYPE, sizeof(block_##NAME), n, x, x_stride, dst);            \
    }
/* on interleaved rows (xr: the super-blocks, 16 rows' worth each) */
#define TILED_IL(NAME, TYPE, SUB, OFF, MINS)                                                                  \
    void lm_tiled_il_##NAME##_vnni(LM_TILED_IL_ARGS) { TILED_ALL(SUB, OFF, MINS, TYPE, LM_PANEL_ROWS * sizeof(block_##NAME)) } \
    void lm_repack_il_##NAME##_vnni(LM_REPACK_ARGS) {                                                         \
        (void)x_stride;                                                                                       \
        repack_il(TYPE, sizeof(block_##NAME), n, x, dst);                                                     \
    }

TILED(q2_K, LM_Q2_K, 16, 0, 1)
TILED(q3_K, LM_Q3_K, 16, 1, 0)
TILED(q4_K, LM_Q4_K, 32, 0, 1)
TILED(q5_K, LM_Q5_K, 32, 0, 1)
TILED(q6_K, LM_Q6_K, 16, 1, 0)
TILED_IL(q2_K, LM_Q2_K, 16, 0, 1)
TILED_IL(q3_K, LM_Q3_K, 16, 1, 0)
TILED_IL(q4_K, LM_Q4_K, 32, 0, 1)
TILED_IL(q5_K, LM_Q5_K, 32, 0, 1)
TILED_IL(q6_K, LM_Q6_K, 16, 1, 0)
