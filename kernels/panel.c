/* Panels (quant.h): the scalar reference every SIMD panel matches bit for bit,
 * and the per-block activation data the panels read. Built with
 * -ffp-contract=off; the one fused multiply-add per block is an explicit fmaf,
 * as the SIMD variants' is one vfmadd. */
#include "quant_impl.h"
#include "quant_legacy.h"
#include "x86/quant_k_x86.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#define F16(x) lm_f16_to_f32(x)

/* how far the weights of a dtype are shifted up to be unsigned bytes */
static int panel_bias(lm_dtype w) {
    switch (w) {
    case LM_Q8_0: return 128;
    case LM_Q5_0: return 16;
    case LM_Q4_0: return 8;
    default: return 0;
    }
}

void lm_panel_pack_q8_K(const void *yq, void *dst, size_t y_stride, int64_t n) {
    char *o = dst; /* Q8_K blocks carry what the K-quant panels read */
    for (int64_t i = 0; i < n / QK_K; i++) memcpy(o + i * y_stride, (const block_q8_K *)yq + i, sizeof(block_q8_K));
}

/* Q4_K, Q5_K (quant.h): the sums of 32 quants in bsums[0..8), the rest zero */
void lm_panel_pack_q8_K32(const void *yq, void *dst, size_t y_stride, int64_t n) {
    lm_panel_pack_q8_K(yq, dst, y_stride, n);
    for (int64_t i = 0; i < n / QK_K; i++) {
        block_q8_K *b = (block_q8_K *)((char *)dst + i * y_stride);
        for (int j = 0; j < 8; j++) b->bsums[j] = (int16_t)(b->bsums[2 * j] + b->bsums[2 * j + 1]);
        for (int j = 8; j < 16; j++) b->bsums[j] = 0;
    }
}

void lm_panel_pack_q8_1(const void *yq, void *dst, size_t y_stride, int64_t n) {
    char *o = dst;
    const block_q8_1 *b = yq;
    for (int64_t i = 0; i < n / QK; i++) {
        lm_panel_block *p = (lm_panel_block *)(o + i * y_stride);
        p->d = F16(b[i].d);
        p->s = F16(b[i].s);
        memcpy(p->qs, b[i].qs, QK);
    }
}

static void pack_q8_0(const void *yq, void *dst, size_t y_stride, int64_t n, int bias) {
    char *o = dst;
    const block_q8_0 *b = yq;
    for (int64_t i = 0; i < n / QK; i++) {
        lm_panel_block *p = (lm_panel_block *)(o + i * y_stride);
        int32_t sum = 0;
        for (int k = 0; k < QK; k++) sum += b[i].qs[k];
        p->d = F16(b[i].d);
        p->c = -bias * sum;
        memcpy(p->qs, b[i].qs, QK);
    }
}
void lm_panel_pack_q8_0_b8(const void *yq, void *dst, size_t y_stride, int64_t n) { pack_q8_0(yq, dst, y_stride, n, 8); }
void lm_panel_pack_q8_0_b16(const void *yq, void *dst, size_t y_stride, int64_t n) { pack_q8_0(yq, dst, y_stride, n, 16); }
void lm_panel_pack_q8_0_b128(const void *yq, void *dst, size_t y_stride, int64_t n) { pack_q8_0(yq, dst, y_stride, n, 128); }

/* the 32 weights of block i of a row as signed integers, its scale and min */
static void weights(lm_dtype t, const char *row, int64_t i, int q[QK], float *d, float *m) {
    *m = 0;
    switch (t) {
    case LM_Q8_0: {
        const block_q8_0 *b = (const block_q8_0 *)row + i;
        for (int k = 0; k < QK; k++) q[k] = b->qs[k];
        *d = F16(b->d);
        break;
    }
    case LM_Q4_0: {
        const block_q4_0 *b = (const block_q4_0 *)row + i;
        for (int k = 0; k < QK / 2; k++) { q[k] = (b->qs[k] & 15) - 8; q[k + QK / 2] = (b->qs[k] >> 4) - 8; }
        *d = F16(b->d);
        break;
    }
    case LM_Q5_0: {
        const block_q5_0 *b = (const block_q5_0 *)row + i;
        uint32_t qh;
        memcpy(&qh, b->qh, 4);
        for (int k = 0; k < QK / 2; k++) {
            q[k] = ((b->qs[k] & 15) | (((qh >> k) & 1) << 4)) - 16;
            q[k + QK / 2] = ((b->qs[k] >> 4) | (((qh >> (k + 16)) & 1) << 4)) - 16;
        }
        *d = F16(b->d);
        break;
    }
    case LM_Q5_1: {
        const block_q5_1 *b = (const block_q5_1 *)row + i;
        uint32_t qh;
        memcpy(&qh, b->qh, 4);
        for (int k = 0; k < QK / 2; k++) {
            q[k] = (b->qs[k] & 15) | (((qh >> k) & 1) << 4);
            q[k + QK / 2] = (b->qs[k] >> 4) | (((qh >> (k + 16)) & 1) << 4);
        }
        *d = F16(b->d);
        *m = F16(b->m);
        break;
    }
    case LM_Q4_1: {
        const block_q4_1 *b = (const block_q4_1 *)row + i;
        for (int k = 0; k < QK / 2; k++) { q[k] = b->qs[k] & 15; q[k + QK / 2] = b->qs[k] >> 4; }
        *d = F16(b->d);
        *m = F16(b->m);
        break;
    }
    default: break;
    }
}

static void panel_ref(lm_dtype t, int64_t n, int nt, float *s, size_t s_stride, const char *x, size_t x_stride,
                      const char *y, size_t y_stride) {
    for (int r = 0; r < LM_PANEL_ROWS; r++)
        for (int c = 0; c < nt; c++) {
            float sum = 0;
            for (int64_t i = 0; i < n / QK; i++) {
                int q[QK];
                float d, m;
                weights(t, x + r * x_stride, i, q, &d, &m);
                const lm_panel_block *a = (const lm_panel_block *)(y + i * y_stride) + c;
                /* the packed -bias * sum(q) and the shifted weights, as the SIMD panels */
                const bool min = t == LM_Q4_1 || t == LM_Q5_1; /* Q8_1 activations, no shift */
                int32_t dot = min ? 0 : a->c;
                for (int k = 0; k < QK; k++) dot += (q[k] + panel_bias(t)) * a->qs[k];
                sum = fmaf((float)dot, d * a->d, sum);
                if (min) sum = fmaf(m, a->s, sum);
            }
            s[c * s_stride + r] = sum;
        }
}

/* K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) against Q8_K: the reference of the
 * repacked panels (quant.h, kernels/x86/tiled_k_avx512.c). Per super-block,
 * all quants taken unsigned (Q6_K 0..63, Q3_K 0..7); the offset (Q6_K's -32,
 * Q3_K's -4) as the exact integer sum over the bsums of -32 (-4) * scale *
 * bsum, times d; then per sub-block, in order, one FMA of its exact integer
 * dot by d * its scale (exact in a float: an 11-bit d by an 8-bit scale);
 * then that sum times the activations' d into the row's sum (one FMA), and
 * for the types with mins, one FMA of minus the exact sum of min * bsum by
 * dmin * the activations' d (Q4_K, Q5_K: the record's bsums are sums of 32,
 * quant.h). */
static void panel_ref_k(lm_dtype t, int64_t n, int nt, float *s, size_t s_stride, const char *x, size_t x_stride,
                        const char *y, size_t y_stride) {
    for (int r = 0; r < LM_PANEL_ROWS; r++)
        for (int c = 0; c < nt; c++) {
            float sum = 0;
            for (int64_t i = 0; i < n / QK_K; i++) {
                const block_q8_K *a = (const block_q8_K *)(y + i * y_stride) + c;
                const char *xi = x + r * x_stride;
                int q[QK_K], sc[16], off[16] = {0}, mn[16] = {0}, sub = 16;
                float d, dmin = 0;
                bool mins = false;
                if (t == LM_Q4_K || t == LM_Q5_K) {
                    /* the two share d, dmin, the packed scales and the nibbles' layout */
                    const block_q4_K *b4 = (const block_q4_K *)xi + i;
                    const block_q5_K *b5 = (const block_q5_K *)xi + i;
                    const uint8_t *qs = t == LM_Q4_K ? b4->qs : b5->qs;
                    uint8_t sm[16];
                    lm_k_unpack_scales(t == LM_Q4_K ? b4->scales : b5->scales, sm);
                    for (int p = 0; p < QK_K / 64; p++)
                        for (int l = 0; l < 32; l++) {
                            q[64 * p + l] = qs[32 * p + l] & 15;
                            q[64 * p + 32 + l] = qs[32 * p + l] >> 4;
                            if (t == LM_Q5_K) {
                                q[64 * p + l] |= ((b5->qh[l] >> (2 * p)) & 1) << 4;
                                q[64 * p + 32 + l] |= ((b5->qh[l] >> (2 * p + 1)) & 1) << 4;
                            }
                        }
                    sub = 32;
                    for (int j = 0; j < 8; j++) sc[j] = sm[j];
                    for (int k = 0; k < 8; k++) mn[k] = sm[8 + k]; /* against the record's sums of 32 */
                    d = F16(t == LM_Q4_K ? b4->d : b5->d), dmin = F16(t == LM_Q4_K ? b4->dmin : b5->dmin), mins = true;
                } else if (t == LM_Q2_K || t == LM_Q3_K) {
                    /* element 128h+32j+l: bits 2j of qs[32h+l] (and bit 4h+j of hmask[l]) */
                    const block_q2_K *b2 = (const block_q2_K *)xi + i;
                    const block_q3_K *b3 = (const block_q3_K *)xi + i;
                    const uint8_t *qs = t == LM_Q2_K ? b2->qs : b3->qs;
                    for (int k = 0; k < QK_K; k++) {
                        const int h = k / 128, j = (k % 128) / 32, l = k % 32;
                        q[k] = (qs[32 * h + l] >> (2 * j)) & 3;
                        if (t == LM_Q3_K) q[k] |= ((b3->hmask[l] >> (4 * h + j)) & 1) << 2;
                    }
                    if (t == LM_Q3_K) {
                        int8_t sc3[16];
                        lm_k_unpack_scales_q3(b3->scales, sc3);
                        for (int k = 0; k < 16; k++) sc[k] = sc3[k], off[k] = -4 * sc3[k];
                        d = F16(b3->d);
                    } else {
                        for (int k = 0; k < 16; k++) sc[k] = b2->scales[k] & 15, mn[k] = b2->scales[k] >> 4;
                        d = F16(b2->d), dmin = F16(b2->dmin), mins = true;
                    }
                } else {
                    const block_q6_K *b = (const block_q6_K *)xi + i;
                    for (int h = 0; h < QK_K / 128; h++) {
                        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
                        for (int l = 0; l < 32; l++) {
                            q[128 * h + l] = (ql[l] & 15) | (((qh[l] >> 0) & 3) << 4);
                            q[128 * h + l + 32] = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
                            q[128 * h + l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                            q[128 * h + l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                        }
                    }
                    for (int k = 0; k < 16; k++) sc[k] = b->scales[k], off[k] = -32 * b->scales[k];
                    d = F16(b->d);
                }
                int32_t ioff = 0, imin = 0;
                for (int k = 0; k < 16; k++) ioff += off[k] * a->bsums[k], imin += mn[k] * a->bsums[k];
                float part = t == LM_Q3_K || t == LM_Q6_K ? (float)ioff * d : 0.0f;
                for (int g = 0; g < QK_K / sub; g++) {
                    int32_t dot = 0;
                    for (int l = 0; l < sub; l++) dot += q[sub * g + l] * a->qs[sub * g + l];
                    part = fmaf((float)dot, d * (float)sc[g], part);
                }
                sum = fmaf(part, a->d, sum);
                if (mins) sum = fmaf(-(float)imin, dmin * a->d, sum);
            }
            s[c * s_stride + r] = sum;
        }
}

void lm_panel_q2_K_ref(LM_PANEL_ARGS) {
    (void)pf;
    panel_ref_k(LM_Q2_K, n, nt, s, s_stride, x, x_stride, y, y_stride);
}
void lm_panel_q3_K_ref(LM_PANEL_ARGS) {
    (void)pf;
    panel_ref_k(LM_Q3_K, n, nt, s, s_stride, x, x_stride, y, y_stride);
}
void lm_panel_q4_K_ref(LM_PANEL_ARGS) {
    (void)pf;
    panel_ref_k(LM_Q4_K, n, nt, s, s_stride, x, x_stride, y, y_stride);
}
void lm_panel_q5_K_ref(LM_PANEL_ARGS) {
    (void)pf;
    panel_ref_k(LM_Q5_K, n, nt, s, s_stride, x, x_stride, y, y_stride);
}
void lm_panel_q6_K_ref(LM_PANEL_ARGS) {
    (void)pf;
    panel_ref_k(LM_Q6_K, n, nt, s, s_stride, x, x_stride, y, y_stride);
}

#define REF(NAME, T) \
    void NAME(LM_PANEL_ARGS) { (void)pf; panel_ref(T, n, nt, s, s_stride, x, x_stride, y, y_stride); }
REF(lm_panel_q4_0_ref, LM_Q4_0)
REF(lm_panel_q4_1_ref, LM_Q4_1)
REF(lm_panel_q5_0_ref, LM_Q5_0)
REF(lm_panel_q8_0_ref, LM_Q8_0)
REF(lm_panel_q5_1_ref, LM_Q5_1)
