/* What the f32 families (bert, clip) share: the buffers they keep beside the
 * mapped file (weights widened to f32, matrices fused at load, freed together at
 * unload), and their matrix product, split over the pool by output columns. */
#include "arch.h"
#include "../error.h"
#include "quant.h"

#include <stdlib.h>
#include <string.h>

void *lm_owned_alloc(lm_owned *o, size_t bytes) {
    void **p = realloc(o->p, (size_t)(o->n + 1) * sizeof *p);
    if (!p) return NULL;
    o->p = p;
    void *b = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (b) o->p[o->n++] = b;
    return b;
}

void lm_owned_free(lm_owned *o) {
    for (int i = 0; i < o->n; i++) free(o->p[i]);
    free(o->p);
    o->p = NULL;
    o->n = 0;
}

lm_status lm_owned_f32(lm_owned *o, const lm_weights_tensor *t, int64_t numel, const char *path, const char *name,
                       const float **out) {
    if (t->dtype == LM_F32 && ((uintptr_t)t->data & 3) == 0) { *out = t->data; return LM_OK; }
    const lm_quant_ops *ops = lm_quant_ops_get(t->dtype);
    if (!ops || !ops->to_float || lm_dtype_block_size(t->dtype) != 1)
        return lm_err("%s: tensor '%s' is %s; this family reads f32, f16 or bf16", path, name, lm_dtype_name(t->dtype));
    float *f = lm_owned_alloc(o, (size_t)numel * sizeof(float));
    if (!f) return lm_err("out of memory");
    if (t->dtype == LM_F32) memcpy(f, t->data, (size_t)numel * sizeof(float));
    else ops->to_float(t->data, f, numel);
    *out = f;
    return LM_OK;
}

typedef struct {
    const float *in, *w, *bias;
    float *out;
    int64_t T, k, n;
    lm_linear_epi epi;
    void *ctx;
    atomic_int failed;
} linear_job;

/* Each thread a slice of the output columns: its weight rows through oneDNN,
 * then the epilogue on the slice while it is in cache. */
static void linear_cols(void *vctx, int ith, int nth) {
    linear_job *j = vctx;
    int64_t lo, hi;
    lm_pool_split(j->n, 16, ith, nth, &lo, &hi);
    if (lo >= hi) return;
    if (lm_sgemm_nt(j->in, j->T, j->k, j->w + lo * j->k, hi - lo, j->out + lo, j->n) != LM_OK) {
        atomic_store(&j->failed, 1);
        return;
    }
    if (j->epi)
        for (int64_t t = 0; t < j->T; t++) j->epi(j->ctx, j->out + t * j->n + lo, j->bias ? j->bias + lo : NULL, hi - lo);
}

lm_status lm_linear_f32(lm_pool *pool, const float *in, int64_t T, int64_t k, const float *w, const float *bias,
                        int64_t n, float *out, lm_linear_epi epi, void *ctx) {
    linear_job j = {.in = in, .w = w, .bias = bias, .out = out, .T = T, .k = k, .n = n, .epi = epi, .ctx = ctx};
    atomic_init(&j.failed, 0);
    lm_pool_run(pool, linear_cols, &j);
    return atomic_load(&j.failed) ? lm_err("a oneDNN matrix product (%lld x %lld x %lld) failed", (long long)T,
                                           (long long)k, (long long)n) : LM_OK;
}
