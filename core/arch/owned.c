/* What the f32 families (bert, clip) keep beside the mapped file: weights
 * widened to f32 and matrices fused at load, freed together at unload. */
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
