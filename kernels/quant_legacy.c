/* Scalar references of the legacy block formats: F32, F16, BF16, Q4_0, Q4_1,
 * Q5_0, Q5_1, Q8_0, Q8_1. The quantizers follow llama.cpp's quantize_row_*_ref
 * formula for formula (and this file is built with -ffp-contract=off, as they
 * are), so a file requantized here has the bytes llama-quantize would write. */
#include "quant_impl.h"
#include "quant_legacy.h"

#include <float.h>
#include <math.h>
#include <string.h>

#define F16(x) lm_f16_to_f32(x)
#define TO_F16(x) lm_f32_to_f16(x)
#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* ---- plain floats ------------------------------------------------------------ */

static void f32_to_float(const void *x, float *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof *y); }
static void f32_from_float(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof *x); }
static void f16_to_float(const void *x, float *y, int64_t n) { const uint16_t *h = x; for (int64_t i = 0; i < n; i++) y[i] = F16(h[i]); }
static void f16_from_float(const float *x, void *y, int64_t n) { uint16_t *h = y; for (int64_t i = 0; i < n; i++) h[i] = TO_F16(x[i]); }
static void bf16_to_float(const void *x, float *y, int64_t n) { const uint16_t *h = x; for (int64_t i = 0; i < n; i++) y[i] = lm_bf16_to_f32(h[i]); }
static void bf16_from_float(const float *x, void *y, int64_t n) { uint16_t *h = y; for (int64_t i = 0; i < n; i++) h[i] = lm_f32_to_bf16(x[i]); }

static void dot_f32(int64_t n, float *s, const void *x, const void *y) {
    const float *a = x, *b = y;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)a[i] * b[i];
    *s = (float)sum;
}
static void dot_f16(int64_t n, float *s, const void *x, const void *y) {
    const uint16_t *a = x;
    const float *b = y;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)F16(a[i]) * b[i];
    *s = (float)sum;
}
static void dot_bf16(int64_t n, float *s, const void *x, const void *y) {
    const uint16_t *a = x;
    const float *b = y;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)lm_bf16_to_f32(a[i]) * b[i];
    *s = (float)sum;
}

/* ---- quantize ----------------------------------------------------------------- */

static void quant_q4_0(const float *x, void *vy, int64_t n) {
    block_q4_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK; j++) if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        const float d = max / -8, id = d ? 1.0f / d : 0.0f;
        y[i].d = TO_F16(d);
        for (int j = 0; j < QK / 2; j++) {
            const float x0 = x[j] * id, x1 = x[QK / 2 + j] * id;
            const uint8_t q0 = MIN(15, (int8_t)(x0 + 8.5f)), q1 = MIN(15, (int8_t)(x1 + 8.5f));
            y[i].qs[j] = q0 | (uint8_t)(q1 << 4);
        }
    }
}

static void quant_q4_1(const float *x, void *vy, int64_t n) {
    block_q4_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK; j++) { if (x[j] < min) min = x[j]; if (x[j] > max) max = x[j]; }
        const float d = (max - min) / 15, id = d ? 1.0f / d : 0.0f;
        y[i].d = TO_F16(d);
        y[i].m = TO_F16(min);
        for (int j = 0; j < QK / 2; j++) {
            const float x0 = (x[j] - min) * id, x1 = (x[QK / 2 + j] - min) * id;
            const uint8_t q0 = MIN(15, (int8_t)(x0 + 0.5f)), q1 = MIN(15, (int8_t)(x1 + 0.5f));
            y[i].qs[j] = q0 | (uint8_t)(q1 << 4);
        }
    }
}

static void quant_q5_0(const float *x, void *vy, int64_t n) {
    block_q5_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK; j++) if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        const float d = max / -16, id = d ? 1.0f / d : 0.0f;
        y[i].d = TO_F16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            const float x0 = x[j] * id, x1 = x[QK / 2 + j] * id;
            const uint8_t q0 = MIN(31, (int8_t)(x0 + 16.5f)), q1 = MIN(31, (int8_t)(x1 + 16.5f));
            y[i].qs[j] = (q0 & 0x0F) | (uint8_t)((q1 & 0x0F) << 4);
            qh |= ((q0 & 0x10u) >> 4) << j;
            qh |= ((q1 & 0x10u) >> 4) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

static void quant_q5_1(const float *x, void *vy, int64_t n) {
    block_q5_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK; j++) { if (x[j] < min) min = x[j]; if (x[j] > max) max = x[j]; }
        const float d = (max - min) / 31, id = d ? 1.0f / d : 0.0f;
        y[i].d = TO_F16(d);
        y[i].m = TO_F16(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            const float x0 = (x[j] - min) * id, x1 = (x[QK / 2 + j] - min) * id;
            const uint8_t q0 = (uint8_t)(x0 + 0.5f), q1 = (uint8_t)(x1 + 0.5f);
            y[i].qs[j] = (q0 & 0x0F) | (uint8_t)((q1 & 0x0F) << 4);
            qh |= ((q0 & 0x10u) >> 4) << j;
            qh |= ((q1 & 0x10u) >> 4) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

static void quant_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        y[i].d = TO_F16(d);
        for (int j = 0; j < QK; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void quant_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        y[i].d = TO_F16(d);
        int sum = 0;
        for (int j = 0; j < QK; j++) { y[i].qs[j] = (int8_t)roundf(x[j] * id); sum += y[i].qs[j]; }
        y[i].s = TO_F16((float)sum * d);
    }
}

/* ---- dequantize ----------------------------------------------------------------- */

static void deq_q4_0(const void *vx, float *y, int64_t n) {
    const block_q4_0 *x = vx;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = F16(x[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = ((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void deq_q4_1(const void *vx, float *y, int64_t n) {
    const block_q4_1 *x = vx;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = F16(x[i].d), m = F16(x[i].m);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (x[i].qs[j] & 0x0F) * d + m;
            y[j + QK / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

static inline void q5_values(const uint8_t *qs, const uint8_t *qhb, int *v) {
    uint32_t qh;
    memcpy(&qh, qhb, 4);
    for (int j = 0; j < QK / 2; j++) {
        v[j] = (qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10);
        v[j + QK / 2] = (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10);
    }
}

static void deq_q5_0(const void *vx, float *y, int64_t n) {
    const block_q5_0 *x = vx;
    int v[QK];
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = F16(x[i].d);
        q5_values(x[i].qs, x[i].qh, v);
        for (int j = 0; j < QK; j++) y[j] = (v[j] - 16) * d;
    }
}

static void deq_q5_1(const void *vx, float *y, int64_t n) {
    const block_q5_1 *x = vx;
    int v[QK];
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = F16(x[i].d), m = F16(x[i].m);
        q5_values(x[i].qs, x[i].qh, v);
        for (int j = 0; j < QK; j++) y[j] = v[j] * d + m;
    }
}

static void deq_q8_0(const void *vx, float *y, int64_t n) {
    const block_q8_0 *x = vx;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = F16(x[i].d);
        for (int j = 0; j < QK; j++) y[j] = x[i].qs[j] * d;
    }
}

static void deq_q8_1(const void *vx, float *y, int64_t n) {
    const block_q8_1 *x = vx;
    for (int64_t i = 0; i < n / QK; i++, y += QK) {
        const float d = F16(x[i].d);
        for (int j = 0; j < QK; j++) y[j] = x[i].qs[j] * d;
    }
}

/* ---- dot products with quantized activations -------------------------------------- */

static void dot_q4_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q4_0 *x = vx;
    const block_q8_0 *y = vy;
    float sum = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++)
            sumi += ((x[i].qs[j] & 0x0F) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + QK / 2];
        sum += sumi * F16(x[i].d) * F16(y[i].d);
    }
    *s = sum;
}

static void dot_q4_1(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q4_1 *x = vx;
    const block_q8_1 *y = vy;
    float sum = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++)
            sumi += (x[i].qs[j] & 0x0F) * y[i].qs[j] + (x[i].qs[j] >> 4) * y[i].qs[j + QK / 2];
        sum += (F16(x[i].d) * F16(y[i].d)) * sumi + F16(x[i].m) * F16(y[i].s);
    }
    *s = sum;
}

static void dot_q5_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q5_0 *x = vx;
    const block_q8_0 *y = vy;
    int v[QK];
    float sum = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        q5_values(x[i].qs, x[i].qh, v);
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += (v[j] - 16) * y[i].qs[j];
        sum += (F16(x[i].d) * F16(y[i].d)) * sumi;
    }
    *s = sum;
}

static void dot_q5_1(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q5_1 *x = vx;
    const block_q8_1 *y = vy;
    int v[QK];
    float sum = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        q5_values(x[i].qs, x[i].qh, v);
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += v[j] * y[i].qs[j];
        sum += (F16(x[i].d) * F16(y[i].d)) * sumi + F16(x[i].m) * F16(y[i].s);
    }
    *s = sum;
}

static void dot_q8_0(int64_t n, float *s, const void *vx, const void *vy) {
    const block_q8_0 *x = vx, *y = vy;
    float sum = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += x[i].qs[j] * y[i].qs[j];
        sum += sumi * (F16(x[i].d) * F16(y[i].d));
    }
    *s = sum;
}

/* ---- interleaved panels (quant.h) --------------------------------------------- */

/* 16 rows of blocks of bsize bytes, each: nscale fp16 scales (d, then m) at
 * its start, qs_len bytes of quants at qs_off and (Q5_0, Q5_1; qh_off >= 0)
 * the 4 bytes of fifth bits at qh_off, which become the block's last line */
static void interleave(int64_t n, const uint8_t *x, size_t x_stride, uint8_t *dst, size_t bsize, int nscale, int qs_off,
                       int qs_len, int qh_off) {
    const int64_t nb = n / QK;
    const int lines = qs_len / 4 + (qh_off >= 0);
    uint8_t *sc = dst + (size_t)nb * (size_t)lines * 64;
    for (int r = 0; r < LM_PANEL_ROWS; r++)
        for (int64_t i = 0; i < nb; i++) {
            const uint8_t *b = x + (size_t)r * x_stride + (size_t)i * bsize;
            uint8_t *q = dst + (size_t)i * (size_t)lines * 64 + 4 * r;
            for (int j = 0; j < qs_len / 4; j++) memcpy(q + 64 * j, b + qs_off + 4 * j, 4);
            if (qh_off >= 0) memcpy(q + 64 * (lines - 1), b + qh_off, 4);
            for (int h = 0; h < nscale; h++) memcpy(sc + (((size_t)h * (size_t)nb + (size_t)i) * LM_PANEL_ROWS + (size_t)r) * 2, b + 2 * h, 2);
        }
}
static void interleave_q4_0(LM_INTERLEAVE_ARGS) { interleave(n, x, x_stride, dst, sizeof(block_q4_0), 1, 2, QK / 2, -1); }
static void interleave_q4_1(LM_INTERLEAVE_ARGS) { interleave(n, x, x_stride, dst, sizeof(block_q4_1), 2, 4, QK / 2, -1); }
static void interleave_q5_0(LM_INTERLEAVE_ARGS) { interleave(n, x, x_stride, dst, sizeof(block_q5_0), 1, 6, QK / 2, 2); }
static void interleave_q5_1(LM_INTERLEAVE_ARGS) { interleave(n, x, x_stride, dst, sizeof(block_q5_1), 2, 8, QK / 2, 4); }
static void interleave_q8_0(LM_INTERLEAVE_ARGS) { interleave(n, x, x_stride, dst, sizeof(block_q8_0), 1, 2, QK, -1); }

void lm_quant_register_legacy(lm_quant_entry t[LM_DTYPE_COUNT]) {
    t[LM_F32] = (lm_quant_entry){.name = "f32", .block = 1, .size = 4, .file_type = 0, .vec_dot_type = LM_F32,
                                 .to_float = {f32_to_float}, .from_float = {f32_from_float}, .vec_dot = {dot_f32}};
    t[LM_F16] = (lm_quant_entry){.name = "f16", .block = 1, .size = 2, .file_type = 1, .vec_dot_type = LM_F32,
                                 .to_float = {f16_to_float}, .from_float = {f16_from_float}, .vec_dot = {dot_f16}};
    t[LM_BF16] = (lm_quant_entry){.name = "bf16", .block = 1, .size = 2, .file_type = 32, .vec_dot_type = LM_F32,
                                  .to_float = {bf16_to_float}, .from_float = {bf16_from_float}, .vec_dot = {dot_bf16}};
    t[LM_Q4_0] = (lm_quant_entry){
        .name = "q4_0", .block = QK, .size = sizeof(block_q4_0), .file_type = 2, .vec_dot_type = LM_Q8_0,
        .to_float = {deq_q4_0}, .from_float = {quant_q4_0}, .vec_dot = {dot_q4_0, lm_vec_dot_q4_0_q8_0_avx2},
        .vec_dot_tile = {[LM_ISA_AVX512] = lm_vec_dot_tile_q4_0_q8_0_vnni}, .tile_rows = {[LM_ISA_AVX512] = LM_TILE_ROWS_VNNI},
        .panel = {lm_panel_q4_0_ref, NULL, lm_panel_q4_0_vnni},
        .repack = {[LM_ISA_AVX512] = lm_repack_q4_0_vnni}, .tiled = {[LM_ISA_AVX512] = lm_tiled_q4_0_vnni},
        .repack_block = sizeof(lm_ltile_block), .panel_record = sizeof(lm_panel_block),
        .bf16_panel = lm_bf16_panel_q4_0,
        .panel_pack = lm_panel_pack_q8_0_b8, .panel_decode = true, .interleave = interleave_q4_0,
        .panel_il = {[LM_ISA_AVX512] = lm_panel_il_q4_0_vnni}, .repack_il = {[LM_ISA_AVX512] = lm_repack_il_q4_0_vnni}};
    t[LM_Q4_1] = (lm_quant_entry){
        .name = "q4_1", .block = QK, .size = sizeof(block_q4_1), .file_type = 3, .vec_dot_type = LM_Q8_1,
        .to_float = {deq_q4_1}, .from_float = {quant_q4_1}, .vec_dot = {dot_q4_1, lm_vec_dot_q4_1_q8_1_avx2},
        .vec_dot_tile = {NULL, lm_vec_dot_tile_q4_1_q8_1_avx2, lm_vec_dot_tile_q4_1_q8_1_vnni},
        .tile_rows = {0, LM_TILE_ROWS_AVX2, LM_TILE_ROWS_VNNI},
        .panel = {lm_panel_q4_1_ref, NULL, lm_panel_q4_1_vnni},
        .repack = {[LM_ISA_AVX512] = lm_repack_q4_1_vnni}, .tiled = {[LM_ISA_AVX512] = lm_tiled_q4_1_vnni},
        .repack_block = sizeof(lm_ltile_block), .panel_record = sizeof(lm_panel_block),
        .bf16_panel = lm_bf16_panel_q4_1,
        .panel_pack = lm_panel_pack_q8_1, .panel_decode = true, .interleave = interleave_q4_1,
        .panel_il = {[LM_ISA_AVX512] = lm_panel_il_q4_1_vnni}, .repack_il = {[LM_ISA_AVX512] = lm_repack_il_q4_1_vnni}};
    t[LM_Q5_0] = (lm_quant_entry){
        .name = "q5_0", .block = QK, .size = sizeof(block_q5_0), .file_type = 8, .vec_dot_type = LM_Q8_0,
        .to_float = {deq_q5_0}, .from_float = {quant_q5_0}, .vec_dot = {dot_q5_0, lm_vec_dot_q5_0_q8_0_avx2},
        .vec_dot_tile = {[LM_ISA_AVX512] = lm_vec_dot_tile_q5_0_q8_0_vnni}, .tile_rows = {[LM_ISA_AVX512] = LM_TILE_ROWS_VNNI},
        .panel = {lm_panel_q5_0_ref, NULL, lm_panel_q5_0_vnni},
        .repack = {[LM_ISA_AVX512] = lm_repack_q5_0_vnni}, .tiled = {[LM_ISA_AVX512] = lm_tiled_q5_0_vnni},
        .repack_block = sizeof(lm_ltile_block), .panel_record = sizeof(lm_panel_block),
        .bf16_panel = lm_bf16_panel_q5_0,
        .panel_pack = lm_panel_pack_q8_0_b16, .panel_decode = true, .interleave = interleave_q5_0,
        .panel_il = {[LM_ISA_AVX512] = lm_panel_il_q5_0_vnni}, .repack_il = {[LM_ISA_AVX512] = lm_repack_il_q5_0_vnni}};
    t[LM_Q5_1] = (lm_quant_entry){
        .name = "q5_1", .block = QK, .size = sizeof(block_q5_1), .file_type = 9, .vec_dot_type = LM_Q8_1,
        .to_float = {deq_q5_1}, .from_float = {quant_q5_1},
        .vec_dot = {dot_q5_1, lm_vec_dot_q5_1_q8_1_avx2, lm_vec_dot_q5_1_q8_1_avx512},
        .panel = {lm_panel_q5_1_ref, NULL, lm_panel_q5_1_vnni},
        .repack = {[LM_ISA_AVX512] = lm_repack_q5_1_vnni}, .tiled = {[LM_ISA_AVX512] = lm_tiled_q5_1_vnni},
        .repack_block = sizeof(lm_ltile_block), .panel_record = sizeof(lm_panel_block),
        .bf16_panel = lm_bf16_panel_q5_1,
        .panel_pack = lm_panel_pack_q8_1, .panel_decode = true, .interleave = interleave_q5_1,
        .panel_il = {[LM_ISA_AVX512] = lm_panel_il_q5_1_vnni}, .repack_il = {[LM_ISA_AVX512] = lm_repack_il_q5_1_vnni}};
    t[LM_Q8_0] = (lm_quant_entry){
        .name = "q8_0", .block = QK, .size = sizeof(block_q8_0), .file_type = 7, .vec_dot_type = LM_Q8_0,
        .to_float = {deq_q8_0}, .from_float = {quant_q8_0, lm_quantize_q8_0_avx2}, .vec_dot = {dot_q8_0, lm_vec_dot_q8_0_q8_0_avx2},
        .vec_dot_tile = {NULL, lm_vec_dot_tile_q8_0_q8_0_avx2, lm_vec_dot_tile_q8_0_q8_0_vnni},
        .tile_rows = {0, LM_TILE_ROWS_AVX2, LM_TILE_ROWS_VNNI},
        .panel = {lm_panel_q8_0_ref, NULL, lm_panel_q8_0_vnni},
        .repack = {[LM_ISA_AVX512] = lm_repack_q8_0_vnni}, .tiled = {[LM_ISA_AVX512] = lm_tiled_q8_0_vnni},
        .repack_block = sizeof(lm_ltile_block), .panel_record = sizeof(lm_panel_block),
        .bf16_panel = lm_bf16_panel_q8_0,
        .panel_pack = lm_panel_pack_q8_0_b128, .panel_decode = true, .interleave = interleave_q8_0,
        .panel_il = {[LM_ISA_AVX512] = lm_panel_il_q8_0_vnni}, .repack_il = {[LM_ISA_AVX512] = lm_repack_il_q8_0_vnni}};
    /* activations only */
    t[LM_Q8_1] = (lm_quant_entry){.name = "q8_1", .block = QK, .size = sizeof(block_q8_1), .file_type = -1,
                                  .vec_dot_type = LM_Q8_1, .to_float = {deq_q8_1}, .from_float = {quant_q8_1, lm_quantize_q8_1_avx2}};
    /* storage only: names and sizes, no compute */
    t[LM_I8] = (lm_quant_entry){.name = "i8", .block = 1, .size = 1, .file_type = -1};
    t[LM_I16] = (lm_quant_entry){.name = "i16", .block = 1, .size = 2, .file_type = -1};
    t[LM_I32] = (lm_quant_entry){.name = "i32", .block = 1, .size = 4, .file_type = -1};
    t[LM_I64] = (lm_quant_entry){.name = "i64", .block = 1, .size = 8, .file_type = -1};
    t[LM_F64] = (lm_quant_entry){.name = "f64", .block = 1, .size = 8, .file_type = -1};
}
