/* K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and their activation format Q8_K: scalar references.
 *
 * Layouts are ggml's (see x86/quant_k_x86.h). The arithmetic follows llama.cpp's
 * reference code step for step, so results agree with it:
 * - vec_dot sums each super-block's integer products into eight lanes (element k
 *   into lane k % 8), scales them by d in float per lane and adds the lanes last,
 *   as ggml's generic vec_dot_*_q8_K do; the Q4_K/Q5_K mins enter once per block
 *   through Q8_K's bsums (dmin * sum(min_j * bsum_j)).
 * - quantize_q8_K is quantize_row_q8_K_ref (the activation quantizer, bit for bit);
 *   quantize_q{4,5,6}_K are quantize_row_q{4,5,6}_K_ref (weights, without an
 *   importance matrix) for the `lumen quantize` tool.
 * The SIMD variants live in x86/quant_k_avx2.c and x86/quant_k_avx512.c. */
#include "quant_impl.h"
#include "x86/quant_k_x86.h"

#include <math.h>
#include <string.h>

/* No fused multiply-adds here: llama.cpp's quantizers and dequantizers are built
 * for the x86-64 baseline, without FMA, and contracting a*b+c changes roundings
 * (quantized blocks and dequantized values would differ from theirs). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define GROUP_MAX_EPS 1e-15f

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

/* Round to nearest, ties to even: what ggml's nearest_int computes with its
 * 1.5*2^23 trick for |f| < 2^22 (written with lrintf so the compiler cannot fuse
 * a multiply into the magic add and round differently). */
static inline int nearest_int(float f) { return (int)lrintf(f); }

/* ---- unpacking: a super-block's quants as one int8 per weight ------------- */

static void unpack_q4_K(const block_q4_K *b, int8_t q[QK_K]) {
    for (int j = 0; j < QK_K / 64; j++) {
        const uint8_t *qs = b->qs + 32 * j;
        for (int l = 0; l < 32; l++) {
            q[64 * j + l] = (int8_t)(qs[l] & 0x0F);
            q[64 * j + 32 + l] = (int8_t)(qs[l] >> 4);
        }
    }
}

static void unpack_q5_K(const block_q5_K *b, int8_t q[QK_K]) {
    for (int j = 0; j < QK_K / 64; j++) {
        const uint8_t *qs = b->qs + 32 * j;
        for (int l = 0; l < 32; l++) {
            q[64 * j + l] = (int8_t)((qs[l] & 0x0F) | (((b->qh[l] >> (2 * j)) & 1) << 4));
            q[64 * j + 32 + l] = (int8_t)((qs[l] >> 4) | (((b->qh[l] >> (2 * j + 1)) & 1) << 4));
        }
    }
}

/* Q6_K quants with the -32 offset applied: -32..31. */
static void unpack_q6_K(const block_q6_K *b, int8_t q[QK_K]) {
    for (int h = 0; h < QK_K / 128; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        int8_t *out = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            out[l] = (int8_t)(((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32);
            out[l + 32] = (int8_t)(((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32);
            out[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            out[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

/* ---- to_float ---------------------------------------------------------------- */

static void dequantize_q4_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q4_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = lm_f16_to_f32(x[i].d), dmin = lm_f16_to_f32(x[i].dmin);
        int8_t q[QK_K];
        uint8_t sm[16];
        unpack_q4_K(&x[i], q);
        lm_k_unpack_scales(x[i].scales, sm);
        for (int j = 0; j < QK_K / 32; j++) {
            const float dl = d * sm[j], ml = dmin * sm[8 + j];
            for (int l = 0; l < 32; l++) y[32 * j + l] = dl * q[32 * j + l] - ml;
        }
        y += QK_K;
    }
}

static void dequantize_q5_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q5_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = lm_f16_to_f32(x[i].d), dmin = lm_f16_to_f32(x[i].dmin);
        int8_t q[QK_K];
        uint8_t sm[16];
        unpack_q5_K(&x[i], q);
        lm_k_unpack_scales(x[i].scales, sm);
        for (int j = 0; j < QK_K / 32; j++) {
            const float dl = d * sm[j], ml = dmin * sm[8 + j];
            for (int l = 0; l < 32; l++) y[32 * j + l] = dl * q[32 * j + l] - ml;
        }
        y += QK_K;
    }
}

static void dequantize_q6_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q6_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = lm_f16_to_f32(x[i].d);
        int8_t q[QK_K];
        unpack_q6_K(&x[i], q);
        for (int k = 0; k < QK_K; k++) y[k] = d * x[i].scales[k / 16] * q[k];
        y += QK_K;
    }
}

static void dequantize_q8_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q8_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++) {
        for (int k = 0; k < QK_K; k++) y[k] = x[i].d * x[i].qs[k];
        y += QK_K;
    }
}

/* ---- vec_dot ----------------------------------------------------------------- */

/* One super-block's integer dot, element k into lane k % 8; scale[k / group]
 * weighs element k. */
static void dot_lanes(int32_t lanes[8], const int8_t q[QK_K], const int8_t q8[QK_K],
                      const int32_t *scale, int group) {
    memset(lanes, 0, 8 * sizeof lanes[0]);
    for (int k = 0; k < QK_K; k += 8) {
        const int32_t sc = scale[k / group];   /* groups are multiples of 8 */
        for (int l = 0; l < 8; l++) lanes[l] += sc * (int16_t)(q[k + l] * q8[k + l]);
    }
}

/* Adds one Q4_K/Q5_K super-block (quants q, fp16 d and dmin, packed scales) dotted
 * with a Q8_K block: lane sums into acc[8], the min term into *sumf. */
static void dot_block_45(float acc[8], float *sumf, const int8_t q[QK_K], uint16_t d16,
                         uint16_t dmin16, const uint8_t packed[K_SCALE_SIZE], const block_q8_K *y) {
    uint8_t sm[16];
    lm_k_unpack_scales(packed, sm);
    int32_t scale[8], lanes[8];
    for (int j = 0; j < 8; j++) scale[j] = sm[j];
    dot_lanes(lanes, q, y->qs, scale, 32);
    int summins = 0;
    for (int j = 0; j < QK_K / 16; j++) summins += y->bsums[j] * sm[8 + j / 2];
    const float d = lm_f16_to_f32(d16) * y->d;
    for (int l = 0; l < 8; l++) acc[l] += d * lanes[l];
    const float dmin = lm_f16_to_f32(dmin16) * y->d;
    *sumf -= dmin * summins;
}

static void vec_dot_q4_K_q8_K(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    float acc[8] = {0}, sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int8_t q[QK_K];
        unpack_q4_K(&x[i], q);
        dot_block_45(acc, &sumf, q, x[i].d, x[i].dmin, x[i].scales, &y[i]);
    }
    for (int l = 0; l < 8; l++) sumf += acc[l];
    *s = sumf;
}

static void vec_dot_q5_K_q8_K(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q5_K *x = vx;
    const block_q8_K *y = vy;
    float acc[8] = {0}, sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int8_t q[QK_K];
        unpack_q5_K(&x[i], q);
        dot_block_45(acc, &sumf, q, x[i].d, x[i].dmin, x[i].scales, &y[i]);
    }
    for (int l = 0; l < 8; l++) sumf += acc[l];
    *s = sumf;
}

static void vec_dot_q6_K_q8_K(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
    float acc[8] = {0}, sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int8_t q[QK_K];
        int32_t scale[16], lanes[8];
        unpack_q6_K(&x[i], q);
        for (int j = 0; j < 16; j++) scale[j] = x[i].scales[j];
        dot_lanes(lanes, q, y[i].qs, scale, 16);
        const float d = lm_f16_to_f32(x[i].d) * y[i].d;
        for (int l = 0; l < 8; l++) acc[l] += d * lanes[l];
    }
    for (int l = 0; l < 8; l++) sumf += acc[l];
    *s = sumf;
}

/* ---- Q8_K: the activation quantizer ------------------------------------------ */

/* Per block: the element of largest magnitude (the first, on ties) keeps its sign,
 * iscale = -127/max, q = min(127, round(iscale*x)), d = 1/iscale (so d < 0 when
 * max > 0). An all-zero block gets d = 0 and zero quants and bsums. */
static void quantize_q8_K(const float *restrict x, void *restrict vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            x += QK_K;
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) y[i].qs[j] = (int8_t)imin(127, nearest_int(iscale * x[j]));
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
        x += QK_K;
    }
}

/* ---- weight quantizers (llama.cpp's *_ref, no importance matrix) --------------- */

/* Asymmetric fit of x[0..n) to scale*L + min with L in 0..nmax: ggml's
 * make_qkx2_quants. Starts from the min/max grid, then tries nstep+1 grids of
 * (rmin + rdelta*is + nmax) levels, each followed by a weighted least-squares
 * (scale, min), keeping the one of least weighted error (squared, or absolute
 * with use_mad). Returns the scale; *neg_min = -min (min is clamped to <= 0). */
static float fit_scale_min(int n, int nmax, const float *restrict x, const float *restrict w,
                           uint8_t *restrict L, float *restrict neg_min, uint8_t *restrict Laux,
                           float rmin, float rdelta, int nstep, bool use_mad) {
    float min = x[0], max = x[0];
    float sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
        const float diff = scale * L[i] + min - x[i];
        best_error += w[i] * (use_mad ? fabsf(diff) : diff * diff);
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            const int l = imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float error = 0;
            for (int i = 0; i < n; i++) {
                const float diff = this_scale * Laux[i] + this_min - x[i];
                error += w[i] * (use_mad ? fabsf(diff) : diff * diff);
            }
            if (error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *neg_min = -min;
    return scale;
}

/* Symmetric fit of x[0..n) to scale*l, l in -nmax..nmax-1, stored as L = l + nmax:
 * ggml's make_qx_quants with rmse_type 1 and no importance (weights x^2). Tries
 * 19 grids around nmax/max and keeps the best least-squares scale. */
static float fit_scale_symmetric(int n, int nmax, const float *restrict x, int8_t *restrict L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            const int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i]))));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* The inverse of lm_k_unpack_scales. */
static void pack_scales(uint8_t out[K_SCALE_SIZE], const uint8_t ls[8], const uint8_t lm[8]) {
    for (int j = 0; j < 4; j++) {
        out[j] = ls[j];
        out[j + 4] = lm[j];
    }
    for (int j = 4; j < 8; j++) {
        out[j + 4] = (uint8_t)((ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4));
        out[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
        out[j] |= (uint8_t)((lm[j] >> 4) << 6);
    }
}

/* The Q4_K/Q5_K recipe up to the quants L[0..256) in 0..nmax: each 32 fitted
 * asymmetrically with weights av_x + |x| (av_x the sub-block's rms), the 8 scales
 * and 8 mins quantized to 6 bits against their maxima, then every weight
 * requantized against the rounded scale and min it will be decoded with. */
static void quantize_block_45(const float *restrict x, int nmax, float rmin, float rdelta, int nstep,
                              uint16_t *d16, uint16_t *dmin16, uint8_t packed[K_SCALE_SIZE],
                              uint8_t L[QK_K]) {
    float scales[8], mins[8], weights[32];
    uint8_t Laux[32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = fit_scale_min(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t ls[8], lm[8];
    for (int j = 0; j < QK_K / 32; j++) {
        /* As uint8_t first, as ggml stores them: a negative fit wraps, then clamps to 63. */
        ls[j] = (uint8_t)imin(63, (uint8_t)nearest_int(inv_scale * scales[j]));
        lm[j] = (uint8_t)imin(63, (uint8_t)nearest_int(inv_min * mins[j]));
    }
    pack_scales(packed, ls, lm);
    *d16 = lm_f32_to_f16(max_scale / 63.f);
    *dmin16 = lm_f32_to_f16(max_min / 63.f);

    uint8_t sm[16];
    lm_k_unpack_scales(packed, sm);
    for (int j = 0; j < QK_K / 32; j++) {
        const float d = lm_f16_to_f32(*d16) * sm[j];
        if (!d) continue;
        const float dm = lm_f16_to_f32(*dmin16) * sm[8 + j];
        for (int l = 0; l < 32; l++)
            L[32 * j + l] = (uint8_t)imax(0, imin(nmax, nearest_int((x[32 * j + l] + dm) / d)));
    }
}

static void quantize_q4_K(const float *restrict x, void *restrict vy, int64_t n) {
    block_q4_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        uint8_t L[QK_K];
        quantize_block_45(x, 15, -1.f, 0.1f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
        for (int j = 0; j < QK_K / 64; j++)
            for (int l = 0; l < 32; l++)
                y[i].qs[32 * j + l] = (uint8_t)(L[64 * j + l] | (L[64 * j + 32 + l] << 4));
    }
}

static void quantize_q5_K(const float *restrict x, void *restrict vy, int64_t n) {
    block_q5_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        uint8_t L[QK_K];
        quantize_block_45(x, 31, -0.5f, 0.1f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int j = 0; j < QK_K / 64; j++) {
            for (int l = 0; l < 32; l++) {
                const int lo = L[64 * j + l], hi = L[64 * j + 32 + l];
                y[i].qs[32 * j + l] = (uint8_t)((lo & 0x0F) | ((hi & 0x0F) << 4));
                y[i].qh[l] |= (uint8_t)(((lo >> 4) << (2 * j)) | ((hi >> 4) << (2 * j + 1)));
            }
        }
    }
}

/* Each 16 fitted symmetrically with 6 bits; the 16 scales quantized to int8
 * against the one of largest magnitude (iscale = -128/that, so it lands on -128
 * and is clamped to 127 only if of the other sign); then every weight requantized
 * against its rounded scale. */
static void quantize_q6_K(const float *restrict x, void *restrict vy, int64_t n) {
    block_q6_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        int8_t L[QK_K];
        float scales[QK_K / 16];
        float max_scale = 0, max_abs_scale = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            scales[j] = fit_scale_symmetric(16, 32, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[i].d = lm_f32_to_f16(1 / iscale);
        for (int j = 0; j < QK_K / 16; j++) y[i].scales[j] = (int8_t)imin(127, nearest_int(iscale * scales[j]));
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = lm_f16_to_f32(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (int8_t)(imax(-32, imin(31, nearest_int(x[16 * j + l] / d))) + 32);
        }
        for (int h = 0; h < QK_K / 128; h++) {
            const int8_t *Lh = L + 128 * h;
            uint8_t *ql = y[i].ql + 64 * h, *qh = y[i].qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((Lh[l] & 0x0F) | ((Lh[l + 64] & 0x0F) << 4));
                ql[l + 32] = (uint8_t)((Lh[l + 32] & 0x0F) | ((Lh[l + 96] & 0x0F) << 4));
                qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                  ((Lh[l + 96] >> 4) << 6));
            }
        }
    }
}

/* ---- Q2_K and Q3_K ----------------------------------------------------------- */

/* Element 128h+32j+l's two low bits: bits 2j..2j+1 of qs[32h+l]. */
static inline int low2(const uint8_t *qs, int k) { return (qs[32 * (k / 128) + k % 32] >> (2 * ((k % 128) / 32))) & 3; }

/* Q3_K quants with the -4 applied: -4..3 (the third bit set means q - 4 >= 0). */
static void unpack_q3_K(const block_q3_K *b, int8_t q[QK_K]) {
    for (int k = 0; k < QK_K; k++) q[k] = (int8_t)(low2(b->qs, k) - ((b->hmask[k % 32] >> (k / 32)) & 1 ? 0 : 4));
}

static void dequantize_q2_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q2_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = lm_f16_to_f32(x[i].d), dmin = lm_f16_to_f32(x[i].dmin);
        for (int j = 0; j < QK_K / 16; j++) {
            const float dl = d * (x[i].scales[j] & 0xF), ml = dmin * (x[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++) y[16 * j + l] = dl * low2(x[i].qs, 16 * j + l) - ml;
        }
    }
}

static void dequantize_q3_K(const void *restrict vx, float *restrict y, int64_t n) {
    const block_q3_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = lm_f16_to_f32(x[i].d);
        int8_t q[QK_K], sc[16];
        unpack_q3_K(&x[i], q);
        lm_k_unpack_scales_q3(x[i].scales, sc);
        for (int j = 0; j < QK_K / 16; j++) {
            const float dl = d * sc[j];
            for (int l = 0; l < 16; l++) y[16 * j + l] = dl * q[16 * j + l];
        }
    }
}

/* ggml's generic form: per block the scaled sub-block dots summed exactly, then
 * sumf += d * isum - dmin * summins, in float, block after block. */
static void vec_dot_q2_K_q8_K(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q2_K *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int summs = 0, isum = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            summs += y[i].bsums[j] * (x[i].scales[j] >> 4);
            int dot = 0;
            for (int l = 0; l < 16; l++) dot += y[i].qs[16 * j + l] * low2(x[i].qs, 16 * j + l);
            isum += (x[i].scales[j] & 0xF) * dot;
        }
        sumf = lm_q2_K_block_sum(sumf, y[i].d * lm_f16_to_f32(x[i].d), isum, y[i].d * lm_f16_to_f32(x[i].dmin), summs);
    }
    *s = sumf;
}

/* ggml's generic form, as Q6_K: eight int32 lanes per block, scaled in float. */
static void vec_dot_q3_K_q8_K(int64_t n, float *restrict s, const void *restrict vx, const void *restrict vy) {
    const block_q3_K *x = vx;
    const block_q8_K *y = vy;
    float acc[8] = {0}, sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int8_t q[QK_K], sc[16];
        int32_t scale[16], lanes[8];
        unpack_q3_K(&x[i], q);
        lm_k_unpack_scales_q3(x[i].scales, sc);
        for (int j = 0; j < 16; j++) scale[j] = sc[j];
        dot_lanes(lanes, q, y[i].qs, scale, 16);
        const float d = lm_f16_to_f32(x[i].d) * y[i].d;
        for (int l = 0; l < 8; l++) acc[l] += d * lanes[l];
    }
    for (int l = 0; l < 8; l++) sumf += acc[l];
    *s = sumf;
}

/* The two low bits of L[0..256) (0..3 each) into qs. */
static void pack_low2(uint8_t qs[QK_K / 4], const uint8_t L[QK_K]) {
    for (int h = 0; h < QK_K / 128; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *Lh = L + 128 * h + l;
            qs[32 * h + l] = (uint8_t)(Lh[0] | (Lh[32] << 2) | (Lh[64] << 4) | (Lh[96] << 6));
        }
}

/* quantize_row_q2_K_ref: each 16 fitted asymmetrically on 0..3 (weights |x|,
 * least absolute error), scales and mins to 4 bits against their maxima, then
 * every weight requantized against what it will be decoded with. */
static void quantize_q2_K(const float *restrict x, void *restrict vy, int64_t n) {
    block_q2_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        uint8_t L[QK_K], Laux[16];
        float weights[16], mins[QK_K / 16], scales[QK_K / 16];
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            for (int l = 0; l < 16; l++) weights[l] = fabsf(x[16 * j + l]);
            scales[j] = fit_scale_min(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0) {
            const float iscale = 15.f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) y[i].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            y[i].d = lm_f32_to_f16(max_scale / 15.f);
        } else {
            memset(y[i].scales, 0, sizeof y[i].scales);
            y[i].d = lm_f32_to_f16(0.f);
        }
        if (max_min > 0) {
            const float iscale = 15.f / max_min;
            for (int j = 0; j < QK_K / 16; j++) y[i].scales[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
            y[i].dmin = lm_f32_to_f16(max_min / 15.f);
        } else {
            y[i].dmin = lm_f32_to_f16(0.f);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = lm_f16_to_f32(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = lm_f16_to_f32(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++) L[16 * j + l] = (uint8_t)imax(0, imin(3, nearest_int((x[16 * j + l] + dm) / d)));
        }
        pack_low2(y[i].qs, L);
    }
}

/* Symmetric fit of x[0..n) to scale*l, l in -nmax..nmax-1, stored as l + nmax:
 * ggml's make_q3_quants with do_rmse. Starts from the grid of the largest
 * magnitude, then moves single weights to their least-squares level while that
 * improves the fit (x^2-weighted), at most five rounds. */
static float fit_scale_q3(int n, int nmax, const float *restrict x, int8_t *restrict L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    const float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                const int new_l = imax(-nmax, imin(nmax - 1, nearest_int(x[i] * sl2 / slx)));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* quantize_row_q3_K_ref: each 16 fitted symmetrically on -4..3, the 16 scales
 * quantized to 6 bits against the one of largest magnitude (landing on -32),
 * then every weight requantized against its rounded scale. */
static void quantize_q3_K(const float *restrict x, void *restrict vy, int64_t n) {
    block_q3_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        int8_t L[QK_K];
        float scales[QK_K / 16];
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            scales[j] = fit_scale_q3(16, 4, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        memset(y[i].scales, 0, K_SCALE_SIZE);
        if (max_scale) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) {
                /* through int8_t first, as ggml stores it */
                const int l = imax(-32, imin(31, (int8_t)nearest_int(iscale * scales[j]))) + 32;
                if (j < 8) y[i].scales[j] = (uint8_t)(l & 0xF);
                else y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                y[i].scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            }
            y[i].d = lm_f32_to_f16(1 / iscale);
        } else {
            y[i].d = lm_f32_to_f16(0.f);
        }
        int8_t sc[16];
        lm_k_unpack_scales_q3(y[i].scales, sc);
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = lm_f16_to_f32(y[i].d) * sc[j];
            if (!d) continue;
            for (int l = 0; l < 16; l++) L[16 * j + l] = (int8_t)(imax(-4, imin(3, nearest_int(x[16 * j + l] / d))) + 4);
        }
        uint8_t low[QK_K];
        memset(y[i].hmask, 0, sizeof y[i].hmask);
        for (int k = 0; k < QK_K; k++) {
            if (L[k] > 3) y[i].hmask[k % 32] |= (uint8_t)(1 << (k / 32));
            low[k] = (uint8_t)(L[k] > 3 ? L[k] - 4 : L[k]);
        }
        pack_low2(y[i].qs, low);
    }
}

/* ---- registration ------------------------------------------------------------- */

/* Q4_K's and Q5_K's interleaved super-blocks (quant.h): 16 rows' block i
 * (size bytes each) as 64-byte lines of dwords (line k, lane r: bytes
 * 4k..4k + 3 of row r's block) */
static void interleave_dwords(LM_INTERLEAVE_ARGS, size_t size) {
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t *b = (uint8_t *)dst + (size_t)i * LM_PANEL_ROWS * size;
        for (int r = 0; r < LM_PANEL_ROWS; r++) {
            const uint8_t *src = (const uint8_t *)x + (size_t)r * x_stride + (size_t)i * size;
            for (size_t k = 0; k < size / 4; k++) memcpy(b + 64 * k + 4 * (size_t)r, src + 4 * k, 4);
        }
    }
}
static void interleave_q4_K(LM_INTERLEAVE_ARGS) { interleave_dwords(n, x, x_stride, dst, sizeof(block_q4_K)); }
static void interleave_q5_K(LM_INTERLEAVE_ARGS) { interleave_dwords(n, x, x_stride, dst, sizeof(block_q5_K)); }
_Static_assert(sizeof(block_q4_K) % 4 == 0 && sizeof(block_q5_K) % 4 == 0, "Q4_K's, Q5_K's interleaved super-blocks are whole lines");

/* Q6_K's interleaved super-block (quant.h), 16 rows' 3360 bytes: per
 * sub-block g of 16 weights, three lines A, B, C whose byte (lane r, byte b)
 * holds row r's quant 16g + b, + 4 + b, + 8 + b (unsigned, 0..63) in its low
 * six bits and two bits of quant 16g + 12 + b (bits 0-1 in A, 2-3 in B, 4-5
 * in C) in its top two; then the scales as pairs (bytes 32p + 2r, + 1: row
 * r's scales 2p, 2p + 1); then the rows' fp16 d. */
static void interleave_q6_K(LM_INTERLEAVE_ARGS) {
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t *b = (uint8_t *)dst + (size_t)i * LM_PANEL_ROWS * sizeof(block_q6_K);
        for (int r = 0; r < LM_PANEL_ROWS; r++) {
            const block_q6_K *k = (const block_q6_K *)((const uint8_t *)x + (size_t)r * x_stride) + i;
            int8_t q[QK_K];
            unpack_q6_K(k, q);
            for (int g = 0; g < QK_K / 16; g++)
                for (int j = 0; j < 3; j++)
                    for (int e = 0; e < 4; e++) {
                        const int w = q[16 * g + 4 * j + e] + 32, w3 = q[16 * g + 12 + e] + 32;
                        b[64 * (3 * g + j) + 4 * r + e] = (uint8_t)(w | ((w3 >> (2 * j)) & 3) << 6);
                    }
            for (int j = 0; j < 16; j++) b[64 * 48 + 32 * (j / 2) + 2 * r + j % 2] = (uint8_t)k->scales[j];
            memcpy(b + 64 * 52 + 2 * r, &k->d, 2);
        }
    }
}
_Static_assert(sizeof(block_q6_K) == 52 * 64 / 16 + 2, "Q6_K's interleaved super-block: 52 lines and 16 fp16 d");

/* Q2_K's interleaved super-block (quant.h), 16 rows' 1344 bytes: sub-block
 * m's four lines of quants (0..3) in line m, quant j of a dword's byte in its
 * bits 2j..2j + 1 (lines 0-15); the rows' 16 scale bytes as four lines of
 * dwords (16-19); a line of d | dmin << 16. */
static void interleave_q2_K(LM_INTERLEAVE_ARGS) {
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t *b = (uint8_t *)dst + (size_t)i * LM_PANEL_ROWS * sizeof(block_q2_K);
        for (int r = 0; r < LM_PANEL_ROWS; r++) {
            const block_q2_K *k = (const block_q2_K *)((const uint8_t *)x + (size_t)r * x_stride) + i;
            for (int m = 0; m < QK_K / 16; m++)
                for (int e = 0; e < 4; e++) {
                    int v = 0;
                    for (int j = 0; j < 4; j++) v |= low2(k->qs, 16 * m + 4 * j + e) << 2 * j;
                    b[64 * m + 4 * r + e] = (uint8_t)v;
                }
            for (int j = 0; j < 4; j++) memcpy(b + 64 * (16 + j) + 4 * r, k->scales + 4 * j, 4);
            memcpy(b + 64 * 20 + 4 * r, &k->d, 2);
            memcpy(b + 64 * 20 + 4 * r + 2, &k->dmin, 2);
        }
    }
}
_Static_assert(sizeof(block_q2_K) == 21 * 64 / 16, "Q2_K's interleaved super-block: 21 lines");

/* Q3_K's interleaved super-block (quant.h), 16 rows' 1760 bytes: each pair
 * of sub-blocks' eight lines of quants (0..7, the -4 taken out as the repack
 * does) in three lines of bytes, a b c: quants k = 0, 2, 4 of a dword's byte
 * in bits 0-2 of a, b, c, quants 1, 3, 5 in their bits 3-5, quant 6 in a's
 * bits 6-7 and c's bit 6, quant 7 in b's bits 6-7 and c's bit 7 (lines 0-23);
 * then the rows' 12 scale bytes as three lines of dwords (24-26) and the 16
 * fp16 d. */
static void interleave_q3_K(LM_INTERLEAVE_ARGS) {
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t *b = (uint8_t *)dst + (size_t)i * LM_PANEL_ROWS * sizeof(block_q3_K);
        for (int r = 0; r < LM_PANEL_ROWS; r++) {
            const block_q3_K *k = (const block_q3_K *)((const uint8_t *)x + (size_t)r * x_stride) + i;
            int8_t q[QK_K];
            unpack_q3_K(k, q);
            for (int u = 0; u < QK_K / 32; u++)
                for (int e = 0; e < 4; e++) {
                    int v[8];
                    for (int j = 0; j < 8; j++) v[j] = q[32 * u + 4 * j + e] + 4;
                    uint8_t *o = b + 64 * 3 * u + 4 * r + e;
                    o[0] = (uint8_t)(v[0] | v[1] << 3 | (v[6] & 3) << 6);
                    o[64] = (uint8_t)(v[2] | v[3] << 3 | (v[7] & 3) << 6);
                    o[128] = (uint8_t)(v[4] | v[5] << 3 | (v[6] >> 2) << 6 | (v[7] >> 2) << 7);
                }
            for (int j = 0; j < 3; j++) memcpy(b + 64 * (24 + j) + 4 * r, k->scales + 4 * j, 4);
            memcpy(b + 64 * 27 + 2 * r, &k->d, 2);
        }
    }
}
_Static_assert(sizeof(block_q3_K) == 27 * 64 / 16 + 2, "Q3_K's interleaved super-block: 27 lines and 16 fp16 d");

void lm_quant_register_k(lm_quant_entry table[LM_DTYPE_COUNT]) {
    table[LM_Q2_K] = (lm_quant_entry){
        .name = "q2_k", .block = QK_K, .size = sizeof(block_q2_K), .file_type = 10,
        .vec_dot_type = LM_Q8_K,
        .to_float = {dequantize_q2_K},
        .from_float = {[LM_ISA_SCALAR] = quantize_q2_K},
        .vec_dot = {[LM_ISA_SCALAR] = vec_dot_q2_K_q8_K,
                    [LM_ISA_AVX2] = lm_vec_dot_q2_K_q8_K_avx2,
                    [LM_ISA_AVX512] = lm_vec_dot_q2_K_q8_K_avx512},
        .panel = {[LM_ISA_SCALAR] = lm_panel_q2_K_ref},
        .repack = {[LM_ISA_AVX512] = lm_repack_q2_K_vnni}, .tiled = {[LM_ISA_AVX512] = lm_tiled_q2_K_vnni},
        .repack_block = sizeof(lm_ktile_block),
        .bf16_panel = lm_bf16_panel_q2_K,
        .panel_record = sizeof(block_q8_K), .panel_pack = lm_panel_pack_q8_K,
        .interleave = interleave_q2_K, .tiled_il = {[LM_ISA_AVX512] = lm_tiled_il_q2_K_vnni},
        .repack_il = {[LM_ISA_AVX512] = lm_repack_il_q2_K_vnni},
    };
    table[LM_Q3_K] = (lm_quant_entry){
        .name = "q3_k", .block = QK_K, .size = sizeof(block_q3_K), .file_type = 11, /* Q3_K_S */
        .vec_dot_type = LM_Q8_K,
        .to_float = {dequantize_q3_K},
        .from_float = {[LM_ISA_SCALAR] = quantize_q3_K},
        .vec_dot = {[LM_ISA_SCALAR] = vec_dot_q3_K_q8_K,
                    [LM_ISA_AVX2] = lm_vec_dot_q3_K_q8_K_avx2,
                    [LM_ISA_AVX512] = lm_vec_dot_q3_K_q8_K_avx512},
        .panel = {[LM_ISA_SCALAR] = lm_panel_q3_K_ref},
        .repack = {[LM_ISA_AVX512] = lm_repack_q3_K_vnni}, .tiled = {[LM_ISA_AVX512] = lm_tiled_q3_K_vnni},
        .repack_block = sizeof(lm_ktile_block),
        .bf16_panel = lm_bf16_panel_q3_K,
        .panel_record = sizeof(block_q8_K), .panel_pack = lm_panel_pack_q8_K,
        .interleave = interleave_q3_K, .tiled_il = {[LM_ISA_AVX512] = lm_tiled_il_q3_K_vnni},
        .repack_il = {[LM_ISA_AVX512] = lm_repack_il_q3_K_vnni},
    };
    table[LM_Q4_K] = (lm_quant_entry){
        .name = "q4_k", .block = QK_K, .size = sizeof(block_q4_K), .file_type = 15, /* Q4_K_M */
        .vec_dot_type = LM_Q8_K,
        .to_float = {[LM_ISA_SCALAR] = dequantize_q4_K, [LM_ISA_AVX512] = lm_dequantize_q4_K_avx512},
        .from_float = {[LM_ISA_SCALAR] = quantize_q4_K},
        .vec_dot = {[LM_ISA_SCALAR] = vec_dot_q4_K_q8_K,
                    [LM_ISA_AVX2] = lm_vec_dot_q4_K_q8_K_avx2,
                    [LM_ISA_AVX512] = lm_vec_dot_q4_K_q8_K_avx512},
        .vec_dot_tile = {[LM_ISA_AVX512] = lm_vec_dot_tile_q4_K_q8_K_vnni},
        .tile_rows = {[LM_ISA_AVX512] = LM_TILE_ROWS_K},
        .panel = {[LM_ISA_SCALAR] = lm_panel_q4_K_ref},
        .repack = {[LM_ISA_AVX512] = lm_repack_q4_K_vnni}, .tiled = {[LM_ISA_AVX512] = lm_tiled_q4_K_vnni},
        .repack_block = sizeof(lm_ktile_block),
        .bf16_panel = lm_bf16_panel_q4_K,
        .panel_record = sizeof(block_q8_K), .panel_pack = lm_panel_pack_q8_K32,
        .interleave = interleave_q4_K, .tiled_il = {[LM_ISA_AVX512] = lm_tiled_il_q4_K_vnni},
        .repack_il = {[LM_ISA_AVX512] = lm_repack_il_q4_K_vnni},
    };
    table[LM_Q5_K] = (lm_quant_entry){
        .name = "q5_k", .block = QK_K, .size = sizeof(block_q5_K), .file_type = 17, /* Q5_K_M */
        .vec_dot_type = LM_Q8_K,
        .to_float = {dequantize_q5_K},
        .from_float = {[LM_ISA_SCALAR] = quantize_q5_K},
        .vec_dot = {[LM_ISA_SCALAR] = vec_dot_q5_K_q8_K,
                    [LM_ISA_AVX2] = lm_vec_dot_q5_K_q8_K_avx2,
                    [LM_ISA_AVX512] = lm_vec_dot_q5_K_q8_K_avx512},
        .panel = {[LM_ISA_SCALAR] = lm_panel_q5_K_ref},
        .repack = {[LM_ISA_AVX512] = lm_repack_q5_K_vnni}, .tiled = {[LM_ISA_AVX512] = lm_tiled_q5_K_vnni},
        .repack_block = sizeof(lm_ktile_block),
        .bf16_panel = lm_bf16_panel_q5_K,
        .panel_record = sizeof(block_q8_K), .panel_pack = lm_panel_pack_q8_K32,
        .interleave = interleave_q5_K, .tiled_il = {[LM_ISA_AVX512] = lm_tiled_il_q5_K_vnni},
        .repack_il = {[LM_ISA_AVX512] = lm_repack_il_q5_K_vnni},
    };
    table[LM_Q6_K] = (lm_quant_entry){
        .name = "q6_k", .block = QK_K, .size = sizeof(block_q6_K), .file_type = 18,
        .vec_dot_type = LM_Q8_K,
        .to_float = {[LM_ISA_SCALAR] = dequantize_q6_K, [LM_ISA_AVX512] = lm_dequantize_q6_K_avx512},
        .from_float = {[LM_ISA_SCALAR] = quantize_q6_K},
        .vec_dot = {[LM_ISA_SCALAR] = vec_dot_q6_K_q8_K,
                    [LM_ISA_AVX2] = lm_vec_dot_q6_K_q8_K_avx2,
                    [LM_ISA_AVX512] = lm_vec_dot_q6_K_q8_K_avx512},
        .vec_dot_tile = {[LM_ISA_AVX512] = lm_vec_dot_tile_q6_K_q8_K_vnni},
        .tile_rows = {[LM_ISA_AVX512] = LM_TILE_ROWS_K},
        .panel = {[LM_ISA_SCALAR] = lm_panel_q6_K_ref},
        .repack = {[LM_ISA_AVX512] = lm_repack_q6_K_vnni}, .tiled = {[LM_ISA_AVX512] = lm_tiled_q6_K_vnni},
        .repack_block = sizeof(lm_ktile_block),
        .bf16_panel = lm_bf16_panel_q6_K,
        .panel_record = sizeof(block_q8_K), .panel_pack = lm_panel_pack_q8_K,
        .interleave = interleave_q6_K, .tiled_il = {[LM_ISA_AVX512] = lm_tiled_il_q6_K_vnni},
        .repack_il = {[LM_ISA_AVX512] = lm_repack_il_q6_K_vnni},
    };
    /* Activations only: quantized to, never dotted as weights. */
    table[LM_Q8_K] = (lm_quant_entry){
        .name = "q8_k", .block = QK_K, .size = sizeof(block_q8_K), .file_type = -1,
        .vec_dot_type = LM_Q8_K,
        .to_float = {dequantize_q8_K},
        .from_float = {[LM_ISA_SCALAR] = quantize_q8_K,
                       [LM_ISA_AVX2] = lm_quantize_q8_K_avx2,
                       [LM_ISA_AVX512] = lm_quantize_q8_K_avx512},
    };
}
