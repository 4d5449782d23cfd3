/* Panels (quant.h): the scalar reference every SIMD panel matches bit for bit,
 * and the per-block activation data the panels read. Built with
 * -ffp-contract=off; the one fused multiply-add per block is an explicit fmaf,
 * as the SIMD variants' is one vfmadd. */
#include "quant_impl.h"
#include "quant_legacy.h"

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

void lm_panel_prep(lm_dtype w, const void *y, lm_panel_aux *aux, int64_t n) {
    if (w == LM_Q4_1) {
        const block_q8_1 *b = y;
        for (int64_t i = 0; i < n / QK; i++) aux[i] = (lm_panel_aux){.d = F16(b[i].d), .s = F16(b[i].s)};
        return;
    }
    const block_q8_0 *b = y;
    const int bias = panel_bias(w);
    for (int64_t i = 0; i < n / QK; i++) {
        int32_t sum = 0;
        for (int k = 0; k < QK; k++) sum += b[i].qs[k];
        aux[i] = (lm_panel_aux){.d = F16(b[i].d), .c = -bias * sum};
    }
}

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
                      const char *y, size_t y_stride, const lm_panel_aux *aux, size_t aux_stride) {
    const size_t qs_off = t == LM_Q4_1 ? offsetof(block_q8_1, qs) : offsetof(block_q8_0, qs);
    const size_t y_block = t == LM_Q4_1 ? sizeof(block_q8_1) : sizeof(block_q8_0);
    for (int r = 0; r < LM_PANEL_ROWS; r++)
        for (int c = 0; c < nt; c++) {
            float sum = 0;
            for (int64_t i = 0; i < n / QK; i++) {
                int q[QK];
                float d, m;
                weights(t, x + r * x_stride, i, q, &d, &m);
                const int8_t *qy = (const int8_t *)(y + c * y_stride + i * y_block + qs_off);
                const lm_panel_aux *a = aux + c * aux_stride + i;
                int32_t dot = 0;
                for (int k = 0; k < QK; k++) dot += q[k] * qy[k];
                sum = fmaf((float)dot, d * a->d, sum);
                if (t == LM_Q4_1) sum = fmaf(m, a->s, sum);
            }
            s[c * s_stride + r] = sum;
        }
}

#define REF(NAME, T)                                                                                         \
    void NAME(int64_t n, int nt, float *s, size_t s_stride, const void *x, size_t x_stride, const void *y,   \
              size_t y_stride, const lm_panel_aux *aux, size_t aux_stride) {                                \
        panel_ref(T, n, nt, s, s_stride, x, x_stride, y, y_stride, aux, aux_stride);                         \
    }
REF(lm_panel_q4_0_ref, LM_Q4_0)
REF(lm_panel_q4_1_ref, LM_Q4_1)
REF(lm_panel_q5_0_ref, LM_Q5_0)
REF(lm_panel_q8_0_ref, LM_Q8_0)
