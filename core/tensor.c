/* Tensors: views over reference-counted storage (see tensor.h for the layout). */
#include "tensor.h"
#include "error.h"
#include "quant.h"

#include <stdlib.h>
#include <string.h>

static void noop_release(void *ctx) { (void)ctx; }

lm_storage *lm_storage_wrap(void *data, size_t size, void (*release)(void *), void *ctx) {
    lm_storage *s = calloc(1, sizeof *s);
    if (!s) { lm_err("out of memory"); return NULL; }
    atomic_init(&s->refcount, 1);
    s->data = data; s->size = size; s->release = release; s->ctx = ctx;
    return s;
}

lm_storage *lm_storage_retain(lm_storage *s) {
    if (s) atomic_fetch_add(&s->refcount, 1);
    return s;
}

void lm_storage_release(lm_storage *s) {
    if (!s || atomic_fetch_sub(&s->refcount, 1) != 1) return;
    if (s->release) s->release(s->ctx);
    else free(s->data);
    free(s);
}

/* Checks dtype/shape and fills the contiguous strides; returns the byte size or 0 on error. */
static size_t layout(int dtype, int ndim, const int64_t *shape, int64_t *stride) {
    if (!lm_dtype_name(dtype)) { lm_err("tensor: unknown dtype %d", dtype); return 0; }
    if (ndim < 1 || ndim > LM_MAX_DIMS) { lm_err("tensor: ndim must be 1..%d, got %d", LM_MAX_DIMS, ndim); return 0; }
    if (!shape) { lm_err("tensor: shape is NULL"); return 0; }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) { lm_err("tensor: dimension %d is negative (%lld)", i, (long long)shape[i]); return 0; }
    int64_t inner = shape[ndim - 1];
    int bs = lm_dtype_block_size(dtype);
    if (inner % bs) { lm_err("tensor: innermost dimension %lld is not a multiple of %s's block size %d", (long long)inner, lm_dtype_name(dtype), bs); return 0; }
    size_t row = lm_dtype_row_size(dtype, inner);
    size_t total = row;
    stride[ndim - 1] = bs == 1 ? (int64_t)lm_dtype_type_size(dtype) : 0; /* quantized rows: unused */
    int64_t st = (int64_t)row;
    for (int i = ndim - 2; i >= 0; i--) {
        stride[i] = st;
        if (shape[i] && total > SIZE_MAX / (size_t)shape[i]) { lm_err("tensor: size overflows"); return 0; }
        total *= (size_t)shape[i];
        st = (int64_t)total;
    }
    return total ? total : 1;
}

lm_tensor *lm_tensor_on_storage(lm_storage *s, void *data, int dtype, int ndim, const int64_t *shape) {
    int64_t stride[LM_MAX_DIMS];
    if (!layout(dtype, ndim, shape, stride)) return NULL;
    lm_tensor *t = calloc(1, sizeof *t);
    if (!t) { lm_err("out of memory"); return NULL; }
    atomic_init(&t->refcount, 1);
    t->storage = lm_storage_retain(s);
    t->data = data;
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, ndim * sizeof *shape);
    memcpy(t->stride, stride, ndim * sizeof *stride);
    return t;
}

lm_tensor *lm_tensor_new(int dtype, int ndim, const int64_t *shape) {
    int64_t stride[LM_MAX_DIMS];
    size_t size = layout(dtype, ndim, shape, stride);
    if (!size) return NULL;
    void *data = aligned_alloc(64, (size + 63) & ~(size_t)63);
    if (!data) { lm_err("tensor: out of memory allocating %zu bytes", size); return NULL; }
    memset(data, 0, size);
    lm_storage *s = lm_storage_wrap(data, size, NULL, NULL);
    if (!s) { free(data); return NULL; }
    lm_tensor *t = lm_tensor_on_storage(s, data, dtype, ndim, shape);
    lm_storage_release(s);
    return t;
}

lm_tensor *lm_tensor_wrap(int dtype, int ndim, const int64_t *shape, void *data,
                          void (*release)(void *), void *ctx) {
    int64_t stride[LM_MAX_DIMS];
    size_t size = layout(dtype, ndim, shape, stride);
    if (!size) return NULL;
    if (!data) { lm_err("tensor: data is NULL"); return NULL; }
    lm_storage *s = lm_storage_wrap(data, size, release ? release : noop_release, ctx);
    if (!s) return NULL;
    lm_tensor *t = lm_tensor_on_storage(s, data, dtype, ndim, shape);
    lm_storage_release(s);
    return t;
}

static bool in_storage(const lm_storage *s, const char *lo, const char *hi) {
    const char *b = s->data;
    return lo >= b && hi <= b + s->size;
}

/* Byte range [lo, hi) that a view touches. */
static void extent(const lm_tensor *t, const char **lo, const char **hi) {
    const char *a = t->data, *b = t->data;
    bool empty = false;
    for (int i = 0; i < t->ndim - 1; i++) {
        if (t->shape[i] == 0) empty = true;
        int64_t span = (t->shape[i] - 1) * t->stride[i];
        if (span < 0) a += span; else b += span;
    }
    int inner_dim = t->ndim - 1;
    if (t->shape[inner_dim] == 0) empty = true;
    size_t row;
    if (lm_dtype_block_size(t->dtype) == 1) {
        int64_t span = (t->shape[inner_dim] - 1) * t->stride[inner_dim];
        if (span < 0) a += span; else b += span;
        row = lm_dtype_type_size(t->dtype);
    } else {
        row = lm_dtype_row_size(t->dtype, t->shape[inner_dim]);
    }
    b += row;
    if (empty) b = a;
    *lo = a; *hi = b;
}

lm_tensor *lm_tensor_view(lm_tensor *t, int ndim, const int64_t *shape, const int64_t *strides,
                          int64_t byte_offset) {
    if (!t) { lm_err("tensor view: tensor is NULL"); return NULL; }
    lm_tensor *v = lm_tensor_on_storage(t->storage, t->data + byte_offset, t->dtype, ndim, shape);
    if (!v) return NULL;
    if (strides) {
        if (lm_dtype_block_size(t->dtype) > 1 && strides[ndim - 1] != 0 && strides[ndim - 1] != (int64_t)lm_dtype_type_size(t->dtype)) {
            lm_tensor_free(v);
            lm_err("tensor view: a quantized (%s) tensor's rows must stay contiguous", lm_dtype_name(t->dtype));
            return NULL;
        }
        memcpy(v->stride, strides, ndim * sizeof *strides);
    }
    const char *lo, *hi;
    extent(v, &lo, &hi);
    if (!in_storage(t->storage, lo, hi)) {
        lm_tensor_free(v);
        lm_err("tensor view: the view's bytes lie outside the viewed storage");
        return NULL;
    }
    return v;
}

lm_tensor *lm_tensor_slice(lm_tensor *t, int dim, int64_t start, int64_t end) {
    if (!t) { lm_err("tensor slice: tensor is NULL"); return NULL; }
    if (dim < 0 || dim >= t->ndim) { lm_err("tensor slice: dim %d out of range for a %d-d tensor", dim, t->ndim); return NULL; }
    if (start < 0 || end < start || end > t->shape[dim]) {
        lm_err("tensor slice: [%lld, %lld) out of range for dimension %d of size %lld",
               (long long)start, (long long)end, dim, (long long)t->shape[dim]);
        return NULL;
    }
    int64_t shape[LM_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[dim] = end - start;
    int64_t off;
    if (dim == t->ndim - 1 && lm_dtype_block_size(t->dtype) > 1) {
        /* quantized rows are cut only at block boundaries */
        int bs = lm_dtype_block_size(t->dtype);
        if (start % bs || (end - start) % bs) { lm_err("tensor slice: a %s row can only be cut at block boundaries (%d)", lm_dtype_name(t->dtype), bs); return NULL; }
        off = (int64_t)lm_dtype_row_size(t->dtype, start);
    } else {
        off = start * t->stride[dim];
    }
    return lm_tensor_view(t, t->ndim, shape, t->stride, off);
}

lm_tensor *lm_tensor_retain(lm_tensor *t) {
    if (t) atomic_fetch_add(&t->refcount, 1);
    return t;
}

void lm_tensor_free(lm_tensor *t) {
    if (!t || atomic_fetch_sub(&t->refcount, 1) != 1) return;
    lm_storage_release(t->storage);
    free(t);
}

int lm_tensor_dtype(const lm_tensor *t) { return t ? (int)t->dtype : -1; }
int lm_tensor_ndim(const lm_tensor *t) { return t ? t->ndim : 0; }
int64_t lm_tensor_dim(const lm_tensor *t, int i) { return t && i >= 0 && i < t->ndim ? t->shape[i] : 0; }
int64_t lm_tensor_stride(const lm_tensor *t, int i) { return t && i >= 0 && i < t->ndim ? t->stride[i] : 0; }
void *lm_tensor_data(const lm_tensor *t) { return t ? t->data : NULL; }
int32_t lm_tensor_refcount(const lm_tensor *t) { return t ? atomic_load(&t->refcount) : 0; }

int64_t lm_tensor_numel(const lm_tensor *t) {
    if (!t) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t lm_tensor_nbytes(const lm_tensor *t) {
    if (!t) return 0;
    size_t n = lm_dtype_row_size(t->dtype, t->shape[t->ndim - 1]);
    for (int i = 0; i < t->ndim - 1; i++) n *= (size_t)t->shape[i];
    return n;
}

bool lm_tensor_is_contiguous(const lm_tensor *t) {
    if (!t) return false;
    int64_t stride[LM_MAX_DIMS];
    if (!layout(t->dtype, t->ndim, t->shape, stride)) return false;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] <= 1) continue;
        if (i == t->ndim - 1 && lm_dtype_block_size(t->dtype) > 1) continue;
        if (t->stride[i] != stride[i]) return false;
    }
    return true;
}

/* Calls fn for every row (innermost run) of t. */
static void for_rows(const lm_tensor *t, void (*fn)(const char *row, int64_t i, void *ctx), void *ctx) {
    int64_t idx[LM_MAX_DIMS] = {0};
    int64_t rows = 1;
    for (int d = 0; d < t->ndim - 1; d++) rows *= t->shape[d];
    for (int64_t r = 0; r < rows; r++) {
        const char *p = t->data;
        for (int d = 0; d < t->ndim - 1; d++) p += idx[d] * t->stride[d];
        fn(p, r, ctx);
        for (int d = t->ndim - 2; d >= 0; d--) {
            if (++idx[d] < t->shape[d]) break;
            idx[d] = 0;
        }
    }
}

typedef struct { const lm_tensor *src; lm_tensor *dst; size_t dst_row; } copy_ctx;

static void copy_row(const char *row, int64_t i, void *vctx) {
    copy_ctx *c = vctx;
    const lm_tensor *s = c->src;
    int64_t n = s->shape[s->ndim - 1];
    char *out = c->dst->data + (size_t)i * c->dst_row;
    if (c->dst->dtype == s->dtype) {
        if (lm_dtype_block_size(s->dtype) > 1 || s->stride[s->ndim - 1] == (int64_t)lm_dtype_type_size(s->dtype)) {
            memcpy(out, row, c->dst_row);
        } else {
            size_t es = lm_dtype_type_size(s->dtype);
            for (int64_t j = 0; j < n; j++) memcpy(out + j * es, row + j * s->stride[s->ndim - 1], es);
        }
        return;
    }
    /* to F32 */
    float *y = (float *)out;
    if (lm_dtype_block_size(s->dtype) > 1 || s->stride[s->ndim - 1] == (int64_t)lm_dtype_type_size(s->dtype)) {
        lm_quant_ops_get(s->dtype)->to_float(row, y, n);
    } else {
        for (int64_t j = 0; j < n; j++) lm_quant_ops_get(s->dtype)->to_float(row + j * s->stride[s->ndim - 1], y + j, 1);
    }
}

lm_tensor *lm_tensor_copy(const lm_tensor *t, int dtype) {
    if (!t) { lm_err("tensor copy: tensor is NULL"); return NULL; }
    if (dtype != (int)t->dtype) {
        if (dtype != LM_F32) { lm_err("tensor copy: only conversion to f32 is supported (asked %s -> %s)", lm_dtype_name(t->dtype), lm_dtype_name(dtype) ? lm_dtype_name(dtype) : "?"); return NULL; }
        if (!lm_quant_ops_get(t->dtype) || !lm_quant_ops_get(t->dtype)->to_float) { lm_err("tensor copy: no conversion from %s to f32", lm_dtype_name(t->dtype)); return NULL; }
    }
    lm_tensor *out = lm_tensor_new(dtype, t->ndim, t->shape);
    if (!out) return NULL;
    copy_ctx c = {t, out, lm_dtype_row_size(dtype, t->shape[t->ndim - 1])};
    for_rows(t, copy_row, &c);
    return out;
}
