/* Block layouts of the "legacy" formats (ggml's), shared by the scalar
 * reference and the x86 variants. */
#ifndef LM_QUANT_LEGACY_H
#define LM_QUANT_LEGACY_H
#include <stdint.h>

#include "quant.h"

#define QK 32
typedef struct { uint16_t d; uint8_t qs[QK / 2]; } block_q4_0;              /* x = (q - 8) * d */
typedef struct { uint16_t d, m; uint8_t qs[QK / 2]; } block_q4_1;           /* x = q * d + m */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0; /* x = (q - 16) * d */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1;
typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;                    /* x = q * d */
typedef struct { uint16_t d, s; int8_t qs[QK]; } block_q8_1;                 /* s = d * sum(q) */

_Static_assert(sizeof(block_q4_0) == 18, "q4_0");
_Static_assert(sizeof(block_q4_1) == 20, "q4_1");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0");
_Static_assert(sizeof(block_q5_1) == 24, "q5_1");
_Static_assert(sizeof(block_q8_0) == 34, "q8_0");
_Static_assert(sizeof(block_q8_1) == 36, "q8_1");

/* x86 variants (kernels/x86/quant_legacy_*.c) */
void lm_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *x, const void *y);
void lm_vec_dot_q4_1_q8_1_avx2(int64_t n, float *s, const void *x, const void *y);
void lm_vec_dot_q5_0_q8_0_avx2(int64_t n, float *s, const void *x, const void *y);
void lm_vec_dot_q5_1_q8_1_avx2(int64_t n, float *s, const void *x, const void *y);
void lm_vec_dot_q5_1_q8_1_avx512(int64_t n, float *s, const void *x, const void *y);
void lm_vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *x, const void *y);
void lm_vec_dot_tile_q4_1_q8_1_avx2(int64_t n, float *s, size_t s_stride, const void *x, size_t x_stride, const void *y, size_t y_stride);
void lm_vec_dot_tile_q8_0_q8_0_avx2(int64_t n, float *s, size_t s_stride, const void *x, size_t x_stride, const void *y, size_t y_stride);
void lm_vec_dot_tile_q4_1_q8_1_vnni(int64_t n, float *s, size_t s_stride, const void *x, size_t x_stride, const void *y, size_t y_stride);
void lm_vec_dot_tile_q8_0_q8_0_vnni(int64_t n, float *s, size_t s_stride, const void *x, size_t x_stride, const void *y, size_t y_stride);
void lm_vec_dot_tile_q4_0_q8_0_vnni(int64_t n, float *s, size_t s_stride, const void *x, size_t x_stride, const void *y, size_t y_stride);
void lm_vec_dot_tile_q5_0_q8_0_vnni(int64_t n, float *s, size_t s_stride, const void *x, size_t x_stride, const void *y, size_t y_stride);
/* panels (quant.h): scalar references (kernels/panel.c) and VNNI (x86/panel_avx512.c) */
void lm_panel_q4_0_ref(LM_PANEL_ARGS);
void lm_panel_q4_1_ref(LM_PANEL_ARGS);
void lm_panel_q5_0_ref(LM_PANEL_ARGS);
void lm_panel_q8_0_ref(LM_PANEL_ARGS);
void lm_panel_q5_1_ref(LM_PANEL_ARGS);
void lm_panel_q4_0_vnni(LM_PANEL_ARGS);
void lm_panel_q4_1_vnni(LM_PANEL_ARGS);
void lm_panel_q5_0_vnni(LM_PANEL_ARGS);
void lm_panel_q8_0_vnni(LM_PANEL_ARGS);
void lm_panel_q5_1_vnni(LM_PANEL_ARGS);
/* Repacked panels (quant.h; x86/panel_avx512.c): one block of a panel's 16 rows,
 * the weights as the panel's transposed operands (q[j]: weights 4j..4j+3 of
 * every row, unsigned), d and (Q4_1, Q5_1) m of every row as floats. */
typedef struct { uint8_t q[8][64]; float d[16], m[16]; } lm_ltile_block;
/* their blocks to AMX bf16 (quant.h: bf16_panel; x86/amx_avx512.c) */
void lm_bf16_panel_q4_0(int64_t n, const void *rp, uint16_t *dst);
void lm_bf16_panel_q4_1(int64_t n, const void *rp, uint16_t *dst);
void lm_bf16_panel_q5_0(int64_t n, const void *rp, uint16_t *dst);
void lm_bf16_panel_q5_1(int64_t n, const void *rp, uint16_t *dst);
void lm_bf16_panel_q8_0(int64_t n, const void *rp, uint16_t *dst);
void lm_repack_q4_0_vnni(LM_REPACK_ARGS);
void lm_repack_q4_1_vnni(LM_REPACK_ARGS);
void lm_repack_q5_0_vnni(LM_REPACK_ARGS);
void lm_repack_q8_0_vnni(LM_REPACK_ARGS);
void lm_repack_q5_1_vnni(LM_REPACK_ARGS);
void lm_tiled_q4_0_vnni(LM_TILED_ARGS);
void lm_tiled_q4_1_vnni(LM_TILED_ARGS);
void lm_tiled_q5_0_vnni(LM_TILED_ARGS);
void lm_tiled_q8_0_vnni(LM_TILED_ARGS);
void lm_tiled_q5_1_vnni(LM_TILED_ARGS);
/* on interleaved rows (quant.h) */
void lm_panel_il_q4_0_vnni(LM_PANEL_ARGS);
void lm_panel_il_q4_1_vnni(LM_PANEL_ARGS);
void lm_panel_il_q8_0_vnni(LM_PANEL_ARGS);
void lm_panel_il_q5_0_vnni(LM_PANEL_ARGS);
void lm_panel_il_q5_1_vnni(LM_PANEL_ARGS);
void lm_repack_il_q4_0_vnni(LM_REPACK_ARGS);
void lm_repack_il_q4_1_vnni(LM_REPACK_ARGS);
void lm_repack_il_q8_0_vnni(LM_REPACK_ARGS);
void lm_repack_il_q5_0_vnni(LM_REPACK_ARGS);
void lm_repack_il_q5_1_vnni(LM_REPACK_ARGS);
#define LM_TILE_ROWS_AVX2 2
#define LM_TILE_ROWS_VNNI 4
void lm_quantize_q8_0_avx2(const float *x, void *y, int64_t n);
void lm_quantize_q8_1_avx2(const float *x, void *y, int64_t n);
#endif
