/* Tensors: shapes, strides, views without copies, reference counting. */
#include "testutil.h"
#include "lumen.h"
#include "quant.h"
#include <string.h>

static int released;
static void on_release(void *ctx) { released += *(int *)ctx; }

int main(void) {
    int64_t shape[2] = {3, 4};
    lm_tensor *t = lm_tensor_new(LM_F32, 2, shape);
    CHECK(t && lm_tensor_ndim(t) == 2 && lm_tensor_dim(t, 0) == 3 && lm_tensor_dim(t, 1) == 4, "new 3x4");
    CHECK(lm_tensor_stride(t, 0) == 16 && lm_tensor_stride(t, 1) == 4, "row-major byte strides");
    CHECK(lm_tensor_numel(t) == 12 && lm_tensor_nbytes(t) == 48 && lm_tensor_is_contiguous(t), "size");
    float *d = lm_tensor_data(t);
    for (int i = 0; i < 12; i++) CHECK(d[i] == 0.0f, "zero-filled");
    for (int i = 0; i < 12; i++) d[i] = (float)i;

    /* a slice shares memory and keeps the storage alive after the base is freed */
    lm_tensor *col = lm_tensor_slice(t, 1, 1, 3);
    CHECK(col && lm_tensor_dim(col, 1) == 2 && lm_tensor_dim(col, 0) == 3, "slice shape");
    CHECK(col && lm_tensor_data(col) == (char *)d + 4, "slice views the same bytes");
    CHECK(col && !lm_tensor_is_contiguous(col), "a column slice is not contiguous");
    lm_tensor_free(t);
    float *c = lm_tensor_data(col);
    CHECK(c[0] == 1.0f && c[4] == 5.0f, "slice still valid after the base is freed (row stride 16 bytes)");
    lm_tensor *cp = lm_tensor_copy(col, LM_F32);
    CHECK(cp && lm_tensor_is_contiguous(cp), "copy is contiguous");
    float *q = lm_tensor_data(cp);
    CHECK(q[0] == 1 && q[1] == 2 && q[2] == 5 && q[3] == 6 && q[5] == 10, "copy gathers the strided view");
    lm_tensor_free(cp);

    /* transposed view via strides */
    int64_t tshape[2] = {2, 3}, tstr[2] = {4, 16};
    lm_tensor *tr = lm_tensor_view(col, 2, tshape, tstr, 0);
    CHECK(tr != NULL, "transposed view: %s", lm_last_error());
    if (tr) { float *e = lm_tensor_data(tr); CHECK(e[tstr[0] / 4 * 1 + tstr[1] / 4 * 2] == 10.0f, "element (1,2) of the transpose"); }
    lm_tensor_free(tr);

    /* out-of-range views and slices are refused with a message */
    CHECK(lm_tensor_slice(col, 0, 2, 5) == NULL && strstr(lm_last_error(), "out of range"), "slice past the end: %s", lm_last_error());
    CHECK(lm_tensor_slice(col, 3, 0, 1) == NULL && strstr(lm_last_error(), "dim"), "bad dim");
    int64_t big[2] = {10, 4};
    CHECK(lm_tensor_view(col, 2, big, NULL, 0) == NULL && strstr(lm_last_error(), "outside"), "view beyond storage");
    lm_tensor_free(col);

    /* bad arguments */
    CHECK(lm_tensor_new(99, 2, shape) == NULL && strstr(lm_last_error(), "dtype"), "unknown dtype");
    CHECK(lm_tensor_new(LM_F32, 5, shape) == NULL, "too many dims");
    int64_t neg[1] = {-1};
    CHECK(lm_tensor_new(LM_F32, 1, neg) == NULL && strstr(lm_last_error(), "negative"), "negative dim");
    int64_t odd[2] = {2, 33};
    CHECK(lm_tensor_new(LM_Q8_0, 2, odd) == NULL && strstr(lm_last_error(), "block size"), "q8_0 rows need whole blocks");

    /* quantized tensors: whole-row views, dequantizing copy */
    int64_t qs[2] = {2, 64};
    lm_tensor *qt = lm_tensor_new(LM_Q8_0, 2, qs);
    CHECK(qt && lm_tensor_nbytes(qt) == 2 * 2 * 34, "q8_0 size");
    float src[128];
    for (int i = 0; i < 128; i++) src[i] = (float)(i % 17) - 8.0f;
    lm_quant_ops_get(LM_Q8_0)->from_float(src, lm_tensor_data(qt), 128);
    lm_tensor *row1 = lm_tensor_slice(qt, 0, 1, 2);
    lm_tensor *f = lm_tensor_copy(row1, LM_F32);
    CHECK(f && lm_tensor_dim(f, 1) == 64, "dequantized copy");
    if (f) { float *y = lm_tensor_data(f); float err = 0; for (int i = 0; i < 64; i++) { float e = y[i] - src[64 + i]; err += e * e; } CHECK(err < 0.1f, "dequantized values (sq err %g)", err); }
    CHECK(lm_tensor_slice(qt, 1, 0, 16) == NULL && strstr(lm_last_error(), "block"), "q8_0 rows cut inside a block");
    lm_tensor_free(f); lm_tensor_free(row1); lm_tensor_free(qt);

    /* wrapped memory: the release callback runs once, when the last view goes */
    float ext[8] = {0};
    int one = 1;
    int64_t es[1] = {8};
    lm_tensor *w = lm_tensor_wrap(LM_F32, 1, es, ext, on_release, &one);
    lm_tensor *w2 = lm_tensor_slice(w, 0, 2, 4);
    lm_tensor_retain(w2);
    CHECK(lm_tensor_refcount(w2) == 2, "retain counts");
    lm_tensor_free(w);
    lm_tensor_free(w2);
    CHECK(released == 0, "storage alive while a view exists");
    lm_tensor_free(w2);
    CHECK(released == 1, "released exactly once");
    lm_tensor_free(NULL);

    /* many tensors created and dropped: nothing accumulates (ASan/LSan checks leaks) */
    for (int i = 0; i < 10000; i++) {
        lm_tensor *a = lm_tensor_new(LM_F32, 2, shape);
        lm_tensor *b = lm_tensor_slice(a, 0, 1, 2);
        lm_tensor_free(a);
        lm_tensor_free(b);
    }
    return tu_finish("tensor");
}
