/* Exact vector search (lumen.h: lm_vec_topk): the score kernels and their
 * one summation order.
 *
 * A row's dot product with the query is defined as sixteen partial sums, so
 * that a 512-bit register (or two 256-bit ones) holds them and every kernel
 * gives the same bits as the scalar reference:
 *   p[j] = +0 for j < 16;
 *   for each block b of 16 elements (the last one padded with zeros in both
 *   the row and the query), for each j: p[j] = fma(q[16b + j], x[16b + j], p[j]);
 *   s_c = (p[4c] + p[4c + 2]) + (p[4c + 1] + p[4c + 3])   for c < 4;
 *   dot = (s_0 + s_1) + (s_2 + s_3).
 * (A tree, not a left-to-right sum, so that a register reduces it in four
 * shuffles and adds.)
 * x is the float row, or (float) of the int8 row; an int8 row's score is
 * scales[i] * dot, one rounding more. */
#ifndef LM_VSEARCH_H
#define LM_VSEARCH_H

#include "quant.h" /* lm_isa */

#include <stdint.h>

/* out[i] = score of row i for i < n. rows: n * dim floats (dtype LM_F32) or
 * int8s (LM_I8, with scales[n]; scales unused for LM_F32). */
typedef void (*lm_vsearch_fn)(int dtype, const void *rows, const float *scales, int64_t n, int32_t dim,
                              const float *q, float *out);

/* The kernel of exactly this ISA, NULL if there is none. */
lm_vsearch_fn lm_vsearch_kernel(lm_isa isa);

/* The sixteen partial sums reduced in the order above. */
static inline float lm_vsearch_reduce16(const float p[16]) {
    float s[4];
    for (int c = 0; c < 4; c++) s[c] = (p[4 * c] + p[4 * c + 2]) + (p[4 * c + 1] + p[4 * c + 3]);
    return (s[0] + s[1]) + (s[2] + s[3]);
}

void lm_vsearch_scores_avx2(int dtype, const void *rows, const float *scales, int64_t n, int32_t dim, const float *q,
                            float *out);
void lm_vsearch_scores_avx512(int dtype, const void *rows, const float *scales, int64_t n, int32_t dim,
                              const float *q, float *out);

#endif
