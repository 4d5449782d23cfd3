/* Internal layout of lm_tensor (public API in lumen.h). */
#ifndef LM_TENSOR_H
#define LM_TENSOR_H
#include "lumen.h"
#include <stdatomic.h>

typedef struct lm_storage {
    atomic_int refcount;
    void *data;
    size_t size;
    void (*release)(void *ctx);  /* NULL: data was malloc'ed by us and is freed */
    void *ctx;
} lm_storage;

struct lm_tensor {
    atomic_int refcount;
    lm_storage *storage;
    char *data;                  /* storage->data + offset */
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_MAX_DIMS];  /* outermost first */
    int64_t stride[LM_MAX_DIMS]; /* bytes; for quantized dtypes the innermost is unused */
    bool interleaved;            /* a model's matrix with its rows interleaved in panels
                                    (kernels/quant.h): only core/matmul.c reads it; never handed out */
    bool panels;                 /* every product of it through the panels, decode too (a matrix
                                    being interleaved, or interleaved: the same bits before and
                                    after; core/model.c) */
};

/* A storage for foreign memory; release(ctx) on the last reference. */
lm_storage *lm_storage_wrap(void *data, size_t size, void (*release)(void *), void *ctx);
lm_storage *lm_storage_retain(lm_storage *s);
void lm_storage_release(lm_storage *s);
/* A tensor viewing `data` inside storage s (takes a new reference to s). */
lm_tensor *lm_tensor_on_storage(lm_storage *s, void *data, int dtype, int ndim, const int64_t *shape);

#endif
