/* Tensor math: elementwise ops with broadcasting, softmax, argmax, top-k,
 * dot/cosine on strided views, and the oneDNN matmul against a naive loop. */
#include "testutil.h"
#include "lumen.h"
#include "quant.h"
#include <math.h>
#include <string.h>
#include <time.h>

static lm_tensor *filled(int ndim, const int64_t *shape, uint64_t seed) {
    lm_tensor *t = lm_tensor_new(LM_F32, ndim, shape);
    float *d = lm_tensor_data(t);
    for (int64_t i = 0; i < lm_tensor_numel(t); i++) d[i] = tu_randf(&seed, -1, 1);
    return t;
}

/* Element of a 2-D F32 view (any strides). */
static float at2(const lm_tensor *t, int64_t i, int64_t j) {
    return *(const float *)((const char *)lm_tensor_data(t) + i * lm_tensor_stride(t, 0) + j * lm_tensor_stride(t, 1));
}

static int64_t s2[2];
static const int64_t *sh2(int64_t a, int64_t b) { s2[0] = a; s2[1] = b; return s2; }

static void test_binary(void) {
    lm_tensor *a = filled(2, sh2(2, 3), 1), *b = filled(2, sh2(2, 3), 2);
    const float *x = lm_tensor_data(a), *y = lm_tensor_data(b);
    for (int op = LM_OP_ADD; op <= LM_OP_DIV; op++) {
        lm_tensor *c = lm_tensor_binary(op, a, b);
        CHECK(c && lm_tensor_ndim(c) == 2 && lm_tensor_dim(c, 0) == 2 && lm_tensor_dim(c, 1) == 3, "op %d shape", op);
        const float *z = lm_tensor_data(c);
        for (int i = 0; i < 6; i++) {
            float want = op == LM_OP_ADD ? x[i] + y[i] : op == LM_OP_SUB ? x[i] - y[i] : op == LM_OP_MUL ? x[i] * y[i] : x[i] / y[i];
            CHECK(z[i] == want, "op %d element %d: %g vs %g", op, i, z[i], want);
        }
        lm_tensor_free(c);
    }

    /* b broadcast over rows: [3], [1, 3], and a single element */
    int64_t n3 = 3, n1 = 1;
    lm_tensor *row = filled(1, &n3, 3), *row2 = lm_tensor_view(row, 2, sh2(1, 3), NULL, 0), *one = filled(1, &n1, 4);
    const float *r = lm_tensor_data(row), *o = lm_tensor_data(one);
    lm_tensor *c1 = lm_tensor_binary(LM_OP_ADD, a, row), *c2 = lm_tensor_binary(LM_OP_SUB, a, row2), *c3 = lm_tensor_binary(LM_OP_MUL, a, one);
    CHECK(c1 && c2 && c3, "broadcasts: %s", lm_last_error());
    for (int i = 0; c1 && c2 && c3 && i < 6; i++) {
        CHECK(((float *)lm_tensor_data(c1))[i] == x[i] + r[i % 3], "row broadcast add %d", i);
        CHECK(((float *)lm_tensor_data(c2))[i] == x[i] - r[i % 3], "[1,3] broadcast sub %d", i);
        CHECK(((float *)lm_tensor_data(c3))[i] == x[i] * o[0], "scalar broadcast mul %d", i);
    }
    lm_tensor_free(c1); lm_tensor_free(c2); lm_tensor_free(c3);

    /* 3-D a with a 2-D b over its trailing dims */
    int64_t s3[3] = {4, 2, 3};
    lm_tensor *a3 = filled(3, s3, 5);
    lm_tensor *c4 = lm_tensor_binary(LM_OP_DIV, a3, b);
    CHECK(c4 && lm_tensor_ndim(c4) == 3, "3-D by 2-D");
    for (int i = 0; c4 && i < 24; i++)
        CHECK(((float *)lm_tensor_data(c4))[i] == ((float *)lm_tensor_data(a3))[i] / y[i % 6], "3-D broadcast %d", i);
    lm_tensor_free(c4);

    /* strided operands: a transposed view and a column slice */
    int64_t tst[2] = {4, 12};
    lm_tensor *at = lm_tensor_view(a, 2, sh2(3, 2), tst, 0);               /* a^T: [3, 2] */
    lm_tensor *big = filled(2, sh2(3, 5), 6);
    lm_tensor *cols = lm_tensor_slice(big, 1, 1, 3);                        /* [3, 2], row stride 20 */
    lm_tensor *c5 = lm_tensor_binary(LM_OP_SUB, at, cols);
    CHECK(c5 != NULL, "strided operands: %s", lm_last_error());
    for (int i = 0; c5 && i < 3; i++)
        for (int j = 0; j < 2; j++)
            CHECK(((float *)lm_tensor_data(c5))[i * 2 + j] == x[j * 3 + i] - at2(big, i, j + 1), "strided sub (%d,%d)", i, j);
    lm_tensor_free(c5);

    /* errors */
    int64_t n4 = 4;
    lm_tensor *four = filled(1, &n4, 7);
    CHECK(!lm_tensor_binary(LM_OP_ADD, a, four) && !strcmp(lm_last_error(), "add: shapes [2, 3] and [4] do not broadcast"), "mismatch: %s", lm_last_error());
    CHECK(!lm_tensor_binary(LM_OP_MUL, row, a) && strstr(lm_last_error(), "mul: shapes [3] and [2, 3]"), "a smaller than b: %s", lm_last_error());
    CHECK(!lm_tensor_binary(7, a, b) && strstr(lm_last_error(), "unknown op"), "bad op");
    CHECK(!lm_tensor_binary(LM_OP_ADD, a, NULL) && strstr(lm_last_error(), "b is NULL"), "NULL b");
    lm_tensor *q = lm_tensor_new(LM_Q4_0, 2, sh2(2, 32));
    CHECK(!lm_tensor_binary(LM_OP_ADD, q, q) && !strcmp(lm_last_error(), "add: dtype q4_0 not supported here (convert with :float())"), "quantized: %s", lm_last_error());
    CHECK(!lm_tensor_scale(q, 2) && strstr(lm_last_error(), "scale: dtype q4_0"), "scale quantized");

    /* scale, contiguous and strided */
    lm_tensor *s = lm_tensor_scale(at, -2.0f);
    for (int i = 0; s && i < 3; i++)
        for (int j = 0; j < 2; j++) CHECK(((float *)lm_tensor_data(s))[i * 2 + j] == -2.0f * x[j * 3 + i], "scale strided");
    lm_tensor *s1 = lm_tensor_scale(a, 0.5f);
    for (int i = 0; s1 && i < 6; i++) CHECK(((float *)lm_tensor_data(s1))[i] == 0.5f * x[i], "scale");

    lm_tensor *tensors[] = {a, b, row, row2, one, a3, at, big, cols, four, q, s, s1};
    for (size_t i = 0; i < sizeof tensors / sizeof *tensors; i++) lm_tensor_free(tensors[i]);
}

static void test_softmax_argmax_topk(void) {
    lm_tensor *a = filled(2, sh2(3, 7), 11);
    lm_tensor *cols = lm_tensor_slice(a, 1, 2, 7);  /* [3, 5] strided */
    lm_tensor *p = lm_tensor_softmax(cols);
    CHECK(p && lm_tensor_is_contiguous(p) && lm_tensor_dim(p, 1) == 5, "softmax shape");
    for (int i = 0; p && i < 3; i++) {
        double mx = -INFINITY, sum = 0, err = 0;
        for (int j = 0; j < 5; j++) mx = fmax(mx, at2(cols, i, j));
        for (int j = 0; j < 5; j++) sum += exp(at2(cols, i, j) - mx);
        for (int j = 0; j < 5; j++) err = fmax(err, fabs(at2(p, i, j) - exp(at2(cols, i, j) - mx) / sum));
        CHECK(err < 1e-6, "softmax row %d error %g", i, err);
    }
    lm_tensor_free(p);

    float *d = lm_tensor_data(a);
    d[2 * 7 + 4] = 5.0f;                                   /* (2, 4) of a is (2, 2) of cols */
    CHECK(lm_tensor_argmax(a) == 2 * 7 + 4, "argmax contiguous");
    CHECK(lm_tensor_argmax(cols) == 2 * 5 + 2, "argmax strided counts in the view's order");
    d[0] = 5.0f;
    CHECK(lm_tensor_argmax(a) == 0, "argmax: the first of equal maxima");
    d[0] = NAN;
    CHECK(lm_tensor_argmax(a) == 2 * 7 + 4, "argmax skips NaN");
    lm_tensor *empty = lm_tensor_slice(a, 0, 1, 1);
    CHECK(lm_tensor_argmax(empty) == -1 && strstr(lm_last_error(), "empty"), "argmax of nothing");

    int64_t n = 10;
    lm_tensor *v = lm_tensor_new(LM_F32, 1, &n);
    float vals[10] = {0.5f, 3, -1, 3, 7, 0, 2, 7, -4, 1};
    memcpy(lm_tensor_data(v), vals, sizeof vals);
    int64_t idx[12];
    float val[12];
    CHECK(lm_tensor_topk(v, 4, idx, val) == 4, "topk 4");
    CHECK(idx[0] == 4 && idx[1] == 7 && idx[2] == 1 && idx[3] == 3, "topk order, ties by index: %lld %lld %lld %lld",
          (long long)idx[0], (long long)idx[1], (long long)idx[2], (long long)idx[3]);
    CHECK(val[0] == 7 && val[1] == 7 && val[2] == 3 && val[3] == 3, "topk values");
    CHECK(lm_tensor_topk(v, 12, idx, val) == 10 && idx[9] == 8 && val[9] == -4, "k above n gives all, sorted");
    for (int i = 1; i < 10; i++) CHECK(val[i - 1] >= val[i], "descending %d", i);
    CHECK(lm_tensor_topk(v, 0, NULL, NULL) == 0, "k = 0");
    int64_t st = 8;
    lm_tensor *ev = lm_tensor_view(v, 1, (int64_t[]){5}, &st, 0);   /* even elements */
    CHECK(lm_tensor_topk(ev, 2, idx, val) == 2 && idx[0] == 2 && idx[1] == 3 && val[0] == 7, "topk strided");
    CHECK(lm_tensor_topk(a, 2, idx, val) == -1 && strstr(lm_last_error(), "1-D"), "topk needs 1-D: %s", lm_last_error());
    CHECK(lm_tensor_topk(v, -1, idx, val) == -1 && strstr(lm_last_error(), "k must"), "negative k");

    lm_tensor_free(ev); lm_tensor_free(v); lm_tensor_free(empty); lm_tensor_free(cols); lm_tensor_free(a);
}

static void test_dot_cosine(void) {
    lm_tensor *a = filled(2, sh2(4, 6), 21), *b = filled(2, sh2(3, 8), 22);
    const float *x = lm_tensor_data(a), *y = lm_tensor_data(b);
    double want = 0;
    for (int i = 0; i < 24; i++) want += (double)x[i] * y[i];
    CHECK(fabs(lm_tensor_dot(a, b) - want) < 1e-9, "dot over different shapes with equal counts");
    /* strided: columns of a transposed view against a contiguous copy of it */
    int64_t tst[2] = {4, 24};
    lm_tensor *at = lm_tensor_view(a, 2, sh2(6, 4), tst, 0);
    lm_tensor *atc = lm_tensor_copy(at, LM_F32);
    double self = 0;
    for (int i = 0; i < 24; i++) self += (double)x[i] * x[i];
    CHECK(fabs(lm_tensor_dot(at, atc) - self) < 1e-9, "strided dot %g vs %g", lm_tensor_dot(at, atc), self);
    CHECK(fabs(lm_tensor_dot(at, b) - lm_tensor_dot(atc, b)) < 1e-9, "strided against other shape");
    CHECK(fabs(lm_tensor_cosine(at, atc) - 1.0) < 1e-12, "cosine with itself is 1");
    lm_tensor *neg = lm_tensor_scale(a, -3.0f);
    CHECK(fabs(lm_tensor_cosine(a, neg) + 1.0) < 1e-9, "cosine with a negative multiple is -1");
    lm_tensor *z = lm_tensor_new(LM_F32, 2, sh2(4, 6));
    CHECK(lm_tensor_cosine(a, z) == 0.0, "cosine with a zero vector is 0");
    lm_tensor *c = filled(1, (int64_t[]){5}, 23);
    CHECK(isnan(lm_tensor_dot(a, c)) && strstr(lm_last_error(), "dot: element counts differ"), "dot mismatch: %s", lm_last_error());
    CHECK(isnan(lm_tensor_cosine(a, NULL)) && strstr(lm_last_error(), "cosine: b is NULL"), "cosine NULL");
    lm_tensor_free(c); lm_tensor_free(z); lm_tensor_free(neg); lm_tensor_free(atc); lm_tensor_free(at);
    lm_tensor_free(a); lm_tensor_free(b);
}

/* Naive c = a * b in double; a is [m, k] (any strides), b is [k, n] or, when tb, [n, k]. */
static double matmul_err(const lm_tensor *a, const lm_tensor *b, bool tb, const lm_tensor *c) {
    int64_t m = lm_tensor_dim(a, 0), k = lm_tensor_dim(a, 1), n = lm_tensor_dim(c, 1);
    double err = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t l = 0; l < k; l++) s += (double)at2(a, i, l) * (tb ? at2(b, j, l) : at2(b, l, j));
            err = fmax(err, fabs(s - ((const float *)lm_tensor_data(c))[i * n + j]) / (1.0 + fabs(s)));
        }
    return err;
}

static void check_matmul(int64_t m, int64_t k, int64_t n, bool tb, uint64_t seed) {
    lm_tensor *a = filled(2, sh2(m, k), seed), *b = tb ? filled(2, sh2(n, k), seed + 1) : filled(2, sh2(k, n), seed + 1);
    lm_tensor *c = lm_tensor_matmul(a, b, tb);
    CHECK(c && lm_tensor_dim(c, 0) == m && lm_tensor_dim(c, 1) == n, "%lldx%lld by %lldx%lld%s: %s", (long long)m,
          (long long)k, (long long)k, (long long)n, tb ? " (b transposed)" : "", c ? "" : lm_last_error());
    if (c) {
        double err = matmul_err(a, b, tb, c);
        CHECK(err < 1e-4, "%lldx%lldx%lld%s error %g", (long long)m, (long long)k, (long long)n, tb ? "^T" : "", err);
    }
    lm_tensor_free(c); lm_tensor_free(a); lm_tensor_free(b);
}

static void test_matmul(void) {
    check_matmul(1, 1, 1, false, 31);
    check_matmul(7, 13, 5, false, 32);
    check_matmul(7, 13, 5, true, 33);
    check_matmul(64, 576, 1536, true, 34);
    check_matmul(1, 576, 300, true, 35);    /* matrix-vector */

    /* strided inputs: a transposed view of a and a column slice of b */
    lm_tensor *base = filled(2, sh2(13, 7), 41), *wide = filled(2, sh2(13, 9), 42);
    int64_t tst[2] = {4, 28};
    lm_tensor *at = lm_tensor_view(base, 2, sh2(7, 13), tst, 0);   /* [7, 13], column-major */
    lm_tensor *bs = lm_tensor_slice(wide, 1, 2, 7);                  /* [13, 5], row stride 36 */
    lm_tensor *c = lm_tensor_matmul(at, bs, false);
    CHECK(c && matmul_err(at, bs, false, c) < 1e-5, "transposed a by sliced b: %s", c ? "" : lm_last_error());
    lm_tensor_free(c);
    /* b transposed through strides, used with transpose_b: two transposes */
    lm_tensor *bt = lm_tensor_view(wide, 2, sh2(9, 13), (int64_t[]){4, 36}, 0);  /* [9, 13] view of [13, 9] */
    c = lm_tensor_matmul(at, bt, true);
    CHECK(c && lm_tensor_dim(c, 1) == 9 && matmul_err(at, bt, true, c) < 1e-5, "strided b with transpose_b");
    lm_tensor_free(c);
    /* every other column: no unit stride, copied first */
    lm_tensor *odd = lm_tensor_view(wide, 2, sh2(13, 4), (int64_t[]){36, 8}, 0);
    c = lm_tensor_matmul(at, odd, false);
    CHECK(c && matmul_err(at, odd, false, c) < 1e-5, "b with a non-unit inner stride");
    lm_tensor_free(c);

    /* batch dims of a fold into rows: [2, 3, 13] x [13, 5] */
    int64_t s3[3] = {2, 3, 13};
    lm_tensor *a3 = filled(3, s3, 43);
    c = lm_tensor_matmul(a3, bs, false);
    CHECK(c && lm_tensor_ndim(c) == 3 && lm_tensor_dim(c, 0) == 2 && lm_tensor_dim(c, 1) == 3 && lm_tensor_dim(c, 2) == 5, "batched shape");
    lm_tensor *a2 = lm_tensor_view(a3, 2, sh2(6, 13), NULL, 0), *c2 = c ? lm_tensor_view(c, 2, sh2(6, 5), NULL, 0) : NULL;
    CHECK(c2 && matmul_err(a2, bs, false, c2) < 1e-5, "batched values");
    lm_tensor_free(c2); lm_tensor_free(c);
    /* a batch that does not fold (a slice along the middle dim) is copied */
    lm_tensor *mid = lm_tensor_slice(a3, 1, 1, 3);                   /* [2, 2, 13] */
    c = lm_tensor_matmul(mid, bs, false);
    lm_tensor *midc = lm_tensor_copy(mid, LM_F32);
    lm_tensor *m2 = lm_tensor_view(midc, 2, sh2(4, 13), NULL, 0), *cc = c ? lm_tensor_view(c, 2, sh2(4, 5), NULL, 0) : NULL;
    CHECK(cc && matmul_err(m2, bs, false, cc) < 1e-5, "unfoldable batch");
    lm_tensor_free(cc); lm_tensor_free(m2); lm_tensor_free(midc); lm_tensor_free(c); lm_tensor_free(mid);
    /* 1-D a: a vector times a matrix */
    lm_tensor *v = lm_tensor_view(base, 1, (int64_t[]){13}, NULL, 0);
    c = lm_tensor_matmul(v, bs, false);
    CHECK(c && lm_tensor_ndim(c) == 1 && lm_tensor_dim(c, 0) == 5, "vector by matrix");
    lm_tensor_free(c);

    /* quantized weights [n, k] with transpose_b are dequantized first */
    const int64_t n = 40, k = 64;
    lm_tensor *wf = filled(2, sh2(n, k), 44), *wq = lm_tensor_new(LM_Q8_0, 2, sh2(n, k));
    const lm_quant_ops *q8 = lm_quant_ops_get(LM_Q8_0);
    CHECK(q8 && q8->from_float, "q8_0 has from_float");
    if (q8 && q8->from_float) {
        for (int64_t r = 0; r < n; r++)
            q8->from_float((float *)lm_tensor_data(wf) + r * k, (char *)lm_tensor_data(wq) + r * lm_tensor_stride(wq, 0), k);
        lm_tensor *x = filled(2, sh2(5, k), 45);
        lm_tensor *wd = lm_tensor_copy(wq, LM_F32);
        c = lm_tensor_matmul(x, wq, true);
        CHECK(c && matmul_err(x, wd, true, c) < 1e-5, "q8_0 b matches its dequantized values: %s", c ? "" : lm_last_error());
        CHECK(c && matmul_err(x, wf, true, c) < 0.05, "q8_0 b is close to the float weights");
        lm_tensor_free(c);
        lm_tensor *wq2 = lm_tensor_slice(wq, 0, 8, 24);              /* rows 8..23 of the weight */
        lm_tensor *wd2 = lm_tensor_slice(wd, 0, 8, 24);
        c = lm_tensor_matmul(x, wq2, true);
        CHECK(c && lm_tensor_dim(c, 1) == 16 && matmul_err(x, wd2, true, c) < 1e-5, "q8_0 row slice");
        lm_tensor_free(c); lm_tensor_free(wq2); lm_tensor_free(wd2); lm_tensor_free(wd); lm_tensor_free(x);
    }

    /* errors */
    lm_tensor *e1 = filled(2, sh2(2, 3), 46), *e2 = filled(2, sh2(4, 5), 47);
    CHECK(!lm_tensor_matmul(e1, e2, false) && !strcmp(lm_last_error(), "matmul: inner dimensions differ: a is [2, 3], b is [4, 5]"), "%s", lm_last_error());
    CHECK(!lm_tensor_matmul(e1, e2, true) && strstr(lm_last_error(), "inner dimensions differ") && strstr(lm_last_error(), "transposed"), "%s", lm_last_error());
    CHECK(!lm_tensor_matmul(e1, a3, false) && strstr(lm_last_error(), "b must be 2-D"), "3-D b");
    CHECK(!lm_tensor_matmul(wq, e2, false) && strstr(lm_last_error(), "matmul: dtype q8_0 not supported here"), "quantized a: %s", lm_last_error());
    /* empty products are zeros */
    lm_tensor *z1 = lm_tensor_new(LM_F32, 2, sh2(3, 0)), *z2 = lm_tensor_new(LM_F32, 2, sh2(0, 4));
    c = lm_tensor_matmul(z1, z2, false);
    CHECK(c && lm_tensor_dim(c, 0) == 3 && lm_tensor_dim(c, 1) == 4 && ((float *)lm_tensor_data(c))[11] == 0, "k = 0 gives zeros");
    lm_tensor_free(c);

    lm_tensor *ts[] = {base, wide, at, bs, bt, odd, a3, a2, v, wf, wq, e1, e2, z1, z2};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) lm_tensor_free(ts[i]);
}

/* Not a check: the prefill-shaped product the architecture notes quote. */
static void bench_matmul(void) {
    lm_tensor *a = filled(2, sh2(512, 576), 51), *b = filled(2, sh2(576, 1536), 52);
    lm_tensor_free(lm_tensor_matmul(a, b, false));   /* warm-up: primitive creation, OpenMP threads */
    struct timespec t0, t1;
    int reps = 20;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < reps; i++) lm_tensor_free(lm_tensor_matmul(a, b, false));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    printf("matmul 512x576 @ 576x1536: %.1f GFLOP/s\n", 2.0 * 512 * 576 * 1536 * reps / s * 1e-9);
    lm_tensor_free(a); lm_tensor_free(b);
}

int main(void) {
    lm_kernels_init();
    test_binary();
    test_softmax_argmax_topk();
    test_dot_cosine();
    test_matmul();
    bench_matmul();
    return tu_finish("tensor_ops");
}
