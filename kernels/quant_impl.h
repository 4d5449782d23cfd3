/* Private to kernels/: how each family of formats fills the dispatch table.
 * quant.c owns the table (indexed by dtype) and calls these once at init. */
#ifndef LM_QUANT_IMPL_H
#define LM_QUANT_IMPL_H

#include "quant.h"

/* F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 and the plain integer / f64
 * types (kernels/quant_legacy.c + x86/) */
void lm_quant_register_legacy(lm_quant_entry table[LM_DTYPE_COUNT]);
/* Q4_K, Q5_K, Q6_K, Q8_K (kernels/quant_k.c + x86/) */
void lm_quant_register_k(lm_quant_entry table[LM_DTYPE_COUNT]);

/* the panels' activation packing (kernels/panel.c): Q8_0 blocks with the weights'
 * shift (bias 8, 16 or 128), Q8_1 blocks, Q8_K blocks (copied) */
void lm_panel_pack_q8_0_b8(const void *yq, void *dst, size_t y_stride, int64_t n);
void lm_panel_pack_q8_0_b16(const void *yq, void *dst, size_t y_stride, int64_t n);
void lm_panel_pack_q8_0_b128(const void *yq, void *dst, size_t y_stride, int64_t n);
void lm_panel_pack_q8_1(const void *yq, void *dst, size_t y_stride, int64_t n);
void lm_panel_pack_q8_K(const void *yq, void *dst, size_t y_stride, int64_t n);
void lm_panel_pack_q8_K32(const void *yq, void *dst, size_t y_stride, int64_t n);

#endif
