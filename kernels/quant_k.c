/* Placeholder until the K-quant kernels land. */
#include "quant_impl.h"
void lm_quant_register_k(lm_quant_entry table[LM_DTYPE_COUNT]) { (void)table; }
