/* Exact vector search: every SIMD kernel against the scalar reference bit for
 * bit, top-k against a full sort, the argument contract, int8 quantization
 * and thread-count independence. */
#include "testutil.h"
#include "vsearch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const int32_t k_dims[] = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 127, 128,
                                 129, 255, 256, 300, 383, 384, 385, 511, 512, 513, 768, 1000, 1023, 1024};
static const int64_t k_rows[] = {0, 1, 2, 15, 16, 17, 31, 33, 100};

static void fill(uint64_t *r, float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = tu_randf(r, lo, hi);
}

static void fill_i8(uint64_t *r, int8_t *x, int64_t n, int lo, int hi) {
    for (int64_t i = 0; i < n; i++) x[i] = (int8_t)(lo + (int)(tu_rand(r) % (uint64_t)(hi - lo + 1)));
}

/* every kernel this CPU runs gives the scalar reference's bits */
static void check_kernels(int dtype, const void *rows, const float *scales, int64_t n, int32_t dim, const float *q,
                          float *ref, float *got) {
    lm_vsearch_kernel(LM_ISA_SCALAR)(dtype, rows, scales, n, dim, q, ref);
    for (int isa = LM_ISA_AVX2; isa <= (int)lm_cpu_isa(); isa++) {
        lm_vsearch_fn f = lm_vsearch_kernel((lm_isa)isa);
        if (!f) continue;
        for (int64_t i = 0; i < n; i++) got[i] = -12345.0f;
        f(dtype, rows, scales, n, dim, q, got);
        int64_t bad = -1;
        for (int64_t i = 0; i < n && bad < 0; i++)
            if (memcmp(&ref[i], &got[i], sizeof(float))) bad = i;
        CHECK(bad < 0, "%s %s n=%lld dim=%d: row %lld %.9g vs scalar %.9g", dtype == LM_F32 ? "f32" : "i8",
              lm_isa_name((lm_isa)isa), (long long)n, dim, (long long)bad, bad >= 0 ? got[bad] : 0.0,
              bad >= 0 ? ref[bad] : 0.0);
    }
}

static void test_kernels_match_scalar(void) {
    uint64_t r = 11;
    const int64_t max_rows = 10000;
    float *x = malloc(sizeof(float) * max_rows * 1024), *q = malloc(sizeof(float) * 1024);
    int8_t *x8 = malloc((size_t)max_rows * 1024);
    float *sc = malloc(sizeof(float) * max_rows), *ref = malloc(sizeof(float) * max_rows),
          *got = malloc(sizeof(float) * max_rows);
    for (size_t d = 0; d < sizeof k_dims / sizeof k_dims[0]; d++) {
        const int32_t dim = k_dims[d];
        fill(&r, q, dim, -1, 1);
        for (size_t s = 0; s < sizeof k_rows / sizeof k_rows[0] + 1; s++) {
            /* one large store per dim up to 384 wide, to cover long runs of blocks */
            const int64_t n = s < sizeof k_rows / sizeof k_rows[0] ? k_rows[s] : dim <= 384 ? max_rows : 1000;
            fill(&r, x, n * dim, -1, 1);
            fill_i8(&r, x8, n * dim, -127, 127);
            fill(&r, sc, n, 0, 0.02f);
            check_kernels(LM_F32, x, NULL, n, dim, q, ref, got);
            check_kernels(LM_I8, x8, sc, n, dim, q, ref, got);
        }
    }
    /* the stated order is a dot product: near the double-precision one */
    const int32_t dim = 384;
    fill(&r, x, 100 * dim, -1, 1);
    lm_vsearch_kernel(LM_ISA_SCALAR)(LM_F32, x, NULL, 100, dim, q, ref);
    double worst = 0;
    for (int i = 0; i < 100; i++) {
        double d = 0;
        for (int j = 0; j < dim; j++) d += (double)x[i * dim + j] * q[j];
        worst = fmax(worst, fabs(d - ref[i]));
    }
    CHECK(worst < 1e-4, "scalar f32 dot vs double: %g", worst);
    free(x), free(q), free(x8), free(sc), free(ref), free(got);
}

/* the reference ranking: score descending, then row ascending, NaN last */
static const float *g_sort_scores;
static int by_rank(const void *a, const void *b) {
    const int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    const float s = g_sort_scores[i], t = g_sort_scores[j];
    if (isnan(s) != isnan(t)) return isnan(s) ? 1 : -1;
    if (s > t) return -1;
    if (s < t) return 1;
    return i < j ? -1 : i > j;
}

/* lm_vec_topk for every k in ks against a full sort of the reference scores */
static void check_topk(int dtype, const void *rows, const float *scales, int64_t n, int32_t dim, const float *q,
                       int32_t n_threads, const char *what) {
    float *ref = malloc(sizeof(float) * (n + 1));
    int64_t *order = malloc(sizeof(int64_t) * (n + 1));
    lm_vsearch_kernel(LM_ISA_SCALAR)(dtype, rows, scales, n, dim, q, ref);
    for (int64_t i = 0; i < n; i++) order[i] = i;
    g_sort_scores = ref;
    qsort(order, (size_t)n, sizeof(int64_t), by_rank);
    const int32_t ks[] = {1, 2, 10, 100, (int32_t)n, (int32_t)n + 7};
    for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++) {
        const int32_t k = ks[c];
        if (k < 1) continue;
        int64_t *ids = malloc(sizeof(int64_t) * k);
        float *sc = malloc(sizeof(float) * k);
        const int64_t got = lm_vec_topk(rows, dtype, scales, n, dim, q, k, n_threads, ids, sc);
        const int64_t want = k < n ? k : n;
        CHECK(got == want, "%s k=%d: returned %lld, want %lld (%s)", what, k, (long long)got, (long long)want,
              lm_last_error());
        int64_t bad = -1;
        for (int64_t i = 0; i < want && got == want && bad < 0; i++)
            if (ids[i] != order[i] || memcmp(&sc[i], &ref[order[i]], sizeof(float))) bad = i;
        CHECK(bad < 0, "%s k=%d: rank %lld is row %lld (%.9g), the sort has row %lld (%.9g)", what, k,
              (long long)bad, bad >= 0 ? (long long)ids[bad] : 0LL, bad >= 0 ? sc[bad] : 0.0,
              bad >= 0 ? (long long)order[bad] : 0LL, bad >= 0 ? ref[order[bad]] : 0.0);
        free(ids), free(sc);
    }
    free(ref), free(order);
}

static void test_topk_equals_sort(void) {
    uint64_t r = 12;
    const int64_t shapes[][2] = {{1, 1}, {7, 3}, {100, 16}, {1000, 17}, {10000, 384}, {3000, 100}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t n = shapes[s][0];
        const int32_t dim = (int32_t)shapes[s][1];
        float *x = malloc(sizeof(float) * n * dim), *q = malloc(sizeof(float) * dim), *sc = malloc(sizeof(float) * n);
        int8_t *x8 = malloc((size_t)(n * dim));
        fill(&r, q, dim, -1, 1);
        fill(&r, x, n * dim, -1, 1);
        check_topk(LM_F32, x, NULL, n, dim, q, 1, "f32 random");
        /* ties: few distinct rows, and one scale, so many scores are equal */
        fill_i8(&r, x8, n * dim, -1, 1);
        for (int64_t i = 0; i < n; i++) sc[i] = 0.5f;
        for (int32_t j = 0; j < dim; j++) q[j] = (float)(j % 3) - 1.0f;
        check_topk(LM_I8, x8, sc, n, dim, q, 1, "i8 ties");
        for (int64_t i = 0; i < n * dim; i++) x[i] = (float)x8[i];
        check_topk(LM_F32, x, NULL, n, dim, q, 1, "f32 ties");
        free(x), free(q), free(sc), free(x8);
    }
}

static void test_edges(void) {
    float x[3 * 4] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0}, q[4] = {0.5f, 1, 0.25f, 0};
    int64_t ids[8];
    float sc[8];
    CHECK(lm_vec_topk(x, LM_F32, NULL, 3, 4, q, 8, 1, ids, sc) == 3, "k > n writes n");
    CHECK(ids[0] == 1 && ids[1] == 0 && ids[2] == 2 && sc[0] == 1 && sc[1] == 0.5f && sc[2] == 0.25f,
          "best first: %lld %lld %lld", (long long)ids[0], (long long)ids[1], (long long)ids[2]);
    CHECK(lm_vec_topk(x, LM_F32, NULL, 3, 4, q, 0, 1, NULL, NULL) == 0, "k = 0 writes nothing (NULL outputs ok)");
    CHECK(lm_vec_topk(NULL, LM_F32, NULL, 0, 4, q, 5, 0, ids, sc) == 0, "n = 0 writes nothing (NULL rows ok)");
    CHECK(lm_vec_topk(NULL, LM_I8, NULL, 0, 4, q, 5, 0, ids, sc) == 0, "n = 0, i8, NULL scales ok");
    /* a NaN score ranks last */
    x[4] = NAN;
    CHECK(lm_vec_topk(x, LM_F32, NULL, 3, 4, q, 3, 1, ids, sc) == 3 && ids[2] == 1 && isnan(sc[2]),
          "NaN last: %lld %lld %lld", (long long)ids[0], (long long)ids[1], (long long)ids[2]);
    x[4] = 0;

    struct { const void *rows; int dtype; const float *scales; int64_t n; int32_t dim; const float *q; int32_t k;
             int64_t *ids; float *sc; const char *want; } bad[] = {
        {NULL, LM_F32, NULL, 3, 4, q, 2, ids, sc, "rows is NULL"},
        {x, LM_F32, NULL, 3, 4, NULL, 2, ids, sc, "query is NULL"},
        {x, LM_F32, NULL, 3, 4, q, 2, NULL, sc, "ids is NULL"},
        {x, LM_F32, NULL, 3, 4, q, 2, ids, NULL, "scores is NULL"},
        {x, LM_I8, NULL, 3, 4, q, 2, ids, sc, "scales is NULL"},
        {x, LM_F32, NULL, 3, 0, q, 2, ids, sc, "dim = 0"},
        {x, LM_F32, NULL, 3, -4, q, 2, ids, sc, "dim = -4"},
        {x, LM_F32, NULL, -1, 4, q, 2, ids, sc, "n = -1"},
        {x, LM_F32, NULL, 3, 4, q, -2, ids, sc, "k = -2"},
        {x, LM_F16, NULL, 3, 4, q, 2, ids, sc, "dtype 1"},
        {x, 99, NULL, 3, 4, q, 2, ids, sc, "dtype 99"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const int64_t got = lm_vec_topk(bad[i].rows, bad[i].dtype, bad[i].scales, bad[i].n, bad[i].dim, bad[i].q,
                                        bad[i].k, 1, bad[i].ids, bad[i].sc);
        CHECK(got == -1 && strstr(lm_last_error(), bad[i].want), "%s: returned %lld, message '%s'", bad[i].want,
              (long long)got, lm_last_error());
    }
}

static void test_quantize(void) {
    uint64_t r = 13;
    enum { N = 300, D = 385 };
    float *x = malloc(sizeof(float) * N * D), sc[N];
    int8_t *q = malloc(N * D);
    fill(&r, x, (int64_t)N * D, -1, 1);
    for (int j = 0; j < D; j++) x[5 * D + j] = 0;            /* an all-zero row */
    for (int j = 0; j < D; j++) x[6 * D + j] *= 1e-30f;      /* a tiny one */
    for (int j = 0; j < D; j++) x[7 * D + j] *= 1e30f;       /* a huge one */
    CHECK(lm_vec_quantize_i8(x, N, D, q, sc) == LM_OK, "quantize: %s", lm_last_error());
    int worst_row = -1;
    double worst = 0;
    int hit_max = 1;
    for (int i = 0; i < N; i++) {
        int amax = 0;
        for (int j = 0; j < D; j++) {
            const double err = fabs((double)x[i * D + j] - (double)sc[i] * q[i * D + j]);
            const double rel = sc[i] > 0 ? err / sc[i] : err;
            if (rel > worst) worst = rel, worst_row = i;
            amax = abs(q[i * D + j]) > amax ? abs(q[i * D + j]) : amax;
        }
        if (i != 5 && amax != 127) hit_max = 0;
    }
    CHECK(worst <= 0.5 + 1e-5, "|x - s q| <= s/2: worst %g of the scale (row %d)", worst, worst_row);
    CHECK(sc[5] == 0 && q[5 * D] == 0, "an all-zero row: scale 0, quants 0");
    CHECK(hit_max, "every nonzero row's largest element quantizes to +-127");
    x[9 * D + 3] = INFINITY;
    CHECK(lm_vec_quantize_i8(x, N, D, q, sc) == LM_ERR && strstr(lm_last_error(), "row 9"), "inf refused: %s",
          lm_last_error());
    x[9 * D + 3] = NAN;
    CHECK(lm_vec_quantize_i8(x, N, D, q, sc) == LM_ERR, "NaN refused");
    CHECK(lm_vec_quantize_i8(NULL, N, D, q, sc) == LM_ERR && strstr(lm_last_error(), "x is NULL"), "NULL x");
    CHECK(lm_vec_quantize_i8(x, N, 0, q, sc) == LM_ERR && strstr(lm_last_error(), "dim"), "dim 0");
    free(x), free(q);
}

/* big enough that several threads are created; equal rows across the split
 * points so that ties straddle threads */
static void test_threads(void) {
    uint64_t r = 14;
    const int64_t n = 24000;
    const int32_t dim = 384;
    float *x = malloc(sizeof(float) * n * dim), *q = malloc(sizeof(float) * dim), *sc = malloc(sizeof(float) * n);
    int8_t *x8 = malloc((size_t)(n * dim));
    fill(&r, x, n * dim, -1, 1);
    fill(&r, q, dim, -1, 1);
    for (int64_t i = 0; i < n / 2; i++) memcpy(x + (i + n / 2) * dim, x + i * dim, sizeof(float) * dim);
    CHECK(lm_vec_quantize_i8(x, n, dim, x8, sc) == LM_OK, "quantize");
    for (int t = 0; t < 5; t++) {
        const int32_t nt[] = {1, 2, 3, 0, 7};
        char what[64];
        snprintf(what, sizeof what, "f32, %d threads", nt[t]);
        check_topk(LM_F32, x, NULL, n, dim, q, nt[t], what);
        snprintf(what, sizeof what, "i8, %d threads", nt[t]);
        check_topk(LM_I8, x8, sc, n, dim, q, nt[t], what);
    }
    free(x), free(q), free(sc), free(x8);
}

int main(void) {
    test_kernels_match_scalar();
    test_topk_equals_sort();
    test_edges();
    test_quantize();
    test_threads();
    return tu_finish("vsearch");
}
