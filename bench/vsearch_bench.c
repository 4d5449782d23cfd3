/* Exact vector search latency: lm_vec_topk over a store of random unit
 * vectors (default 1,000,000 x 384, all-MiniLM-L6-v2's width), f32 and int8,
 * on 1 and 2 threads. The four configurations take turns query by query, so
 * drift on a shared machine hits them alike; p50/p95 over the timed queries
 * after a few warm ones, and the read bandwidth the p50 implies (the store's
 * bytes / p50). Beside them, the same turns time a plain read of each
 * store (64-bit integer sums, no scoring) on 1 and 2 threads: the memory's
 * ceiling at that moment. "cpu" is the process's CPU time per query (all
 * its threads): on a shared machine, what a query costs on the cores while
 * the wall time also counts the waits for one. Also the int8 store's recall@k against f32's, and
 * the load average (the machine is shared: say what else ran).
 *
 *   build/lumen_vsearch_bench [rows] [dim] [queries] [k]
 * LUMEN_ISA=scalar|avx2 caps the kernels as everywhere. */
#include "lumen.h"
#include "quant.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static double uniform(void) { /* xorshift64*, in (0, 1] */
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    return ((g_rng * 0x2545F4914F6CDD1Dull >> 11) + 1) * (1.0 / 9007199254740992.0);
}

/* a uniformly random direction: normalized Gaussians (Box-Muller, both outputs) */
static void unit(float *v, int32_t dim) {
    double ss = 0;
    for (int32_t j = 0; j < dim; j += 2) {
        const double r = sqrt(-2.0 * log(uniform())), a = 6.283185307179586 * uniform();
        v[j] = (float)(r * cos(a));
        if (j + 1 < dim) v[j + 1] = (float)(r * sin(a));
    }
    for (int32_t j = 0; j < dim; j++) ss += (double)v[j] * v[j];
    const float inv = (float)(1.0 / sqrt(ss));
    for (int32_t j = 0; j < dim; j++) v[j] *= inv;
}

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }

typedef struct { const uint64_t *p; int64_t n; uint64_t sum; } read_job;

static void *read_part(void *arg) {
    read_job *j = arg;
    uint64_t s = 0;
    for (int64_t i = 0; i < j->n; i++) s += j->p[i];
    j->sum = s;
    return NULL;
}

/* reads bytes [0, len) on nt threads (1 or 2); the sum keeps the reads live */
static uint64_t read_all(const void *p, int64_t len, int nt) {
    read_job jobs[2] = {{0}};
    const int64_t words = len / 8;
    nt = nt == 2 ? 2 : 1;
    for (int t = 0; t < nt; t++)
        jobs[t] = (read_job){(const uint64_t *)p + words * t / nt, words * (t + 1) / nt - words * t / nt, 0};
    pthread_t tid;
    const int two = nt == 2 && pthread_create(&tid, NULL, read_part, &jobs[1]) == 0;
    read_part(&jobs[0]);
    if (two) pthread_join(tid, NULL);
    else if (nt == 2) read_part(&jobs[1]);
    return jobs[0].sum + (nt == 2 ? jobs[1].sum : 0);
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const int64_t n = argc > 1 ? atoll(argv[1]) : 1000000;
    const int32_t dim = argc > 2 ? atoi(argv[2]) : 384;
    const int nq = argc > 3 ? atoi(argv[3]) : 60;
    const int32_t k = argc > 4 ? atoi(argv[4]) : 10;
    const int warm = 3;
    if (n <= 0 || dim <= 0 || nq <= 0 || k <= 0) {
        fprintf(stderr, "usage: %s [rows] [dim] [queries] [k]\n", argv[0]);
        return 2;
    }
    float *x = malloc(sizeof(float) * (size_t)n * dim), *scales = malloc(sizeof(float) * (size_t)n);
    int8_t *x8 = malloc((size_t)n * dim);
    float *q = malloc(sizeof(float) * (size_t)dim * (nq + warm));
    int64_t *ids = malloc(sizeof(int64_t) * k * 2);
    float *sc = malloc(sizeof(float) * k);
    double *lat[8], *cpu[8];
    for (int c = 0; c < 8; c++) lat[c] = malloc(sizeof(double) * nq), cpu[c] = malloc(sizeof(double) * nq);
    if (!x || !scales || !x8 || !q || !ids || !sc) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (int64_t i = 0; i < n; i++) unit(x + i * dim, dim);
    for (int i = 0; i < nq + warm; i++) unit(q + (int64_t)i * dim, dim);
    if (lm_vec_quantize_i8(x, n, dim, x8, scales) != LM_OK) {
        fprintf(stderr, "%s\n", lm_last_error());
        return 1;
    }

    static const struct { int dtype; int32_t threads; const char *name; } cfg[8] = {
        {LM_F32, 1, "f32 1 thread"}, {LM_F32, 2, "f32 2 threads"},
        {LM_I8, 1, "i8 1 thread"}, {LM_I8, 2, "i8 2 threads"},
        {LM_F32, -1, "read f32 1 th."}, {LM_F32, -2, "read f32 2 th."},
        {LM_I8, -1, "read i8 1 th."}, {LM_I8, -2, "read i8 2 th."}};
    double recall = 0, load[2][3];
    uint64_t sink = 0;
    getloadavg(load[0], 3);
    for (int i = 0; i < nq + warm; i++) {
        const float *qi = q + (int64_t)i * dim;
        for (int c = 4; c < 8; c++) {
            const double t0 = now(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            if (cfg[c].dtype == LM_F32) sink += read_all(x, (int64_t)n * dim * (int64_t)sizeof(float), -cfg[c].threads);
            else sink += read_all(x8, (int64_t)n * dim, -cfg[c].threads) + read_all(scales, 4 * n, -cfg[c].threads);
            if (i >= warm) lat[c][i - warm] = now() - t0, cpu[c][i - warm] = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        }
        for (int c = 0; c < 4; c++) {
            const void *rows = cfg[c].dtype == LM_F32 ? (const void *)x : (const void *)x8;
            int64_t *out = ids + (cfg[c].dtype == LM_F32 ? 0 : k);
            const double t0 = now(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            const int64_t got = lm_vec_topk(rows, cfg[c].dtype, scales, n, dim, qi, k, cfg[c].threads, out, sc);
            const double t = now() - t0, tc = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
            if (got != (k < n ? k : n)) {
                fprintf(stderr, "lm_vec_topk: %s\n", lm_last_error());
                return 1;
            }
            if (i >= warm) lat[c][i - warm] = t, cpu[c][i - warm] = tc;
        }
        if (i >= warm) { /* int8's top-k against f32's */
            int same = 0;
            for (int a = 0; a < k; a++)
                for (int b = 0; b < k; b++) same += ids[a] == ids[k + b];
            recall += (double)same / k;
        }
    }

    getloadavg(load[1], 3);
    printf("%lld x %d, k = %d, %d queries (after %d warm), kernels: %s, load average %.1f -> %.1f (checksum %llx)\n",
           (long long)n, dim, k, nq, warm, lm_isa_name(lm_cpu_isa()), load[0][0], load[1][0],
           (unsigned long long)(sink & 0xff));
    for (int c = 0; c < 8; c++) {
        qsort(lat[c], nq, sizeof(double), cmp_double);
        qsort(cpu[c], nq, sizeof(double), cmp_double);
        const double p50 = lat[c][nq / 2], p95 = lat[c][(int)ceil(0.95 * nq) - 1];
        const double bytes = (double)n * dim * (cfg[c].dtype == LM_I8 ? 1 : 4) + (cfg[c].dtype == LM_I8 ? 4.0 * n : 0);
        printf("%-14s  p50 %7.2f ms  p95 %7.2f ms  min %7.2f ms  %5.1f GB/s at p50  cpu p50 %7.2f ms\n", cfg[c].name,
               p50 * 1e3, p95 * 1e3, lat[c][0] * 1e3, bytes / p50 * 1e-9, cpu[c][nq / 2] * 1e3);
    }
    printf("i8 recall@%d against f32: %.4f\n", k, recall / nq);
    free(x), free(scales), free(x8), free(q), free(ids), free(sc);
    for (int c = 0; c < 8; c++) free(lat[c]), free(cpu[c]);
    return 0;
}
