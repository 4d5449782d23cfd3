/* What the C benchmarks in bench/ share: a clock, one fixed random stream and
 * random quantized weights that time like real ones. */
#ifndef LUMEN_BENCH_UTIL_H
#define LUMEN_BENCH_UTIL_H

#include "lumen.h"
#include "quant.h"
#include "tensor.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t bench_rng = 0x9e3779b97f4a7c15ull;
static inline float bench_urand(void) { /* xorshift64*, in [-1, 1) */
    bench_rng ^= bench_rng >> 12, bench_rng ^= bench_rng << 25, bench_rng ^= bench_rng >> 27;
    return (float)((bench_rng * 0x2545F4914F6CDD1Dull >> 40) * (2.0 / 16777216.0) - 1.0);
}

/* an N x K weight of type t (64-byte aligned): 64 distinct random rows
 * repeated over the N; NULL when out of memory */
static inline lm_tensor *bench_random_weight(lm_dtype t, int64_t K, int64_t N) {
    const lm_quant_ops *ops = lm_quant_ops_get(t);
    const size_t rb = lm_dtype_row_size(t, K), size = rb * (size_t)N;
    char *data = aligned_alloc(64, (size + 63) & ~(size_t)63);
    float *row = malloc((size_t)K * sizeof *row);
    if (!data || !row) {
        free(data), free(row);
        return NULL;
    }
    for (int64_t r = 0; r < N; r++) {
        if (r < 64) {
            for (int64_t k = 0; k < K; k++) row[k] = bench_urand() * 0.05f;
            ops->from_float(row, data + r * rb, K);
        } else {
            memcpy(data + r * rb, data + (r % 64) * rb, rb);
        }
    }
    free(row);
    return lm_tensor_wrap(t, 2, (int64_t[]){N, K}, data, free, data);
}

#endif
