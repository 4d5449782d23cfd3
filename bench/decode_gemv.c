/* Decode's matrix products against the read bandwidth: one token through the
 * path a decode token takes (lm_matmul_panel on the interleaved layer matrix
 * where the type has that layout, kernels/quant.h; else lm_matmul), for a
 * weight that stays in L2 (the kernel's own speed) and for ones far larger
 * than L3 (what decode meets: every weight read once per token), in GB/s of
 * weight bytes. Random rows (64 distinct, repeated), which time like real
 * ones. Each configuration takes its turn once per round, so drift on a
 * shared machine hits them alike; the medians of the rounds are printed, one
 * JSON line per (type, shape, threads). build/lumen_stream_read is the
 * memory's own figure to hold the large shapes against.
 *
 *   build/lumen_decode_gemv [rounds=5] [types=q4_0,q4_k,q6_k] [threads=1] [KxN=14336x4096]
 * Shapes: K x N = 4096 x 256 (L2) and KxN (default Qwen3-8B's ffn_down)
 * repeated over as many weights as make 0.4 GB or more (beyond the L3 of the
 * CPUs here). LUMEN_INTERLEAVE=0 keeps the file's layout. */
#include "bench_util.h"
#include "lumen.h"
#include "model.h"
#include "pool.h"
#include "quant.h"
#include "tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    lm_dtype t;
    int64_t K, N;
    int copies;
    lm_tensor *w[16];
    bool il;
    double gbs[64];
} cfg;

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static lm_tensor *make(lm_pool *pool, lm_dtype t, int64_t K, int64_t N, bool *il) {
    lm_tensor *w = bench_random_weight(t, K, N);
    if (!w) {
        fprintf(stderr, "lumen_decode_gemv: out of memory for a %lld x %lld weight\n", (long long)N, (long long)K);
        exit(1);
    }
    const size_t size = lm_dtype_row_size(t, K) * (size_t)N;
    const char *env = getenv("LUMEN_INTERLEAVE");
    *il = false;
    if ((!env || strcmp(env, "0")) && lm_matmul_can_interleave(w)) {
        char *dst = aligned_alloc(64, (size + 63) & ~(size_t)63);
        lm_storage *st = lm_storage_wrap(dst, size, free, dst);
        lm_tensor *wi = lm_matmul_interleave(pool, w, st, dst, NULL, false);
        lm_storage_release(st);
        if (wi) lm_tensor_free(w), w = wi, *il = true;
    }
    return w;
}

int main(int argc, char **argv) {
    const int rounds = argc > 1 ? atoi(argv[1]) : 5;
    char types[256];
    snprintf(types, sizeof types, "%s", argc > 2 ? argv[2] : "q4_0,q4_k,q6_k");
    const int threads = argc > 3 ? atoi(argv[3]) : 1;
    long long K = 14336, N = 4096;
    if (rounds < 1 || rounds > 64 || threads < 1 || (argc > 4 && sscanf(argv[4], "%lldx%lld", &K, &N) != 2) ||
        K < 256 || K % 256 || N < 16 || N % 16 || K > 65536 || N > 262144) {
        fprintf(stderr, "usage: lumen_decode_gemv [rounds 1..64] [types] [threads] [KxN: K a multiple of 256, N of 16]\n");
        return 2;
    }
    lm_kernels_init();
    lm_pool *pool = lm_pool_new(threads);
    cfg cs[32];
    int nc = 0;
    for (char *tok = strtok(types, ","); tok && nc + 2 <= 32; tok = strtok(NULL, ",")) {
        const int t = lm_dtype_from_name(tok);
        if (t < 0 || !lm_quant_ops_get((lm_dtype)t)) {
            fprintf(stderr, "lumen_decode_gemv: unknown or unsupported type '%s'\n", tok);
            return 2;
        }
        cs[nc++] = (cfg){.t = (lm_dtype)t, .K = 4096, .N = 256, .copies = 1};
        const double mb = lm_dtype_row_size((lm_dtype)t, K) * (double)N / 1e6;
        const int copies = mb >= 400 ? 1 : (int)(400 / mb) + 1;
        if (copies > 16) {
            fprintf(stderr, "lumen_decode_gemv: %lldx%lld is too small to stream from memory\n", K, N);
            return 2;
        }
        cs[nc++] = (cfg){.t = (lm_dtype)t, .K = K, .N = N, .copies = copies};
    }
    for (int c = 0; c < nc; c++)
        for (int i = 0; i < cs[c].copies; i++) cs[c].w[i] = make(pool, cs[c].t, cs[c].K, cs[c].N, &cs[c].il);
    float *x = malloc((size_t)K * sizeof *x), *y = malloc((size_t)N * sizeof *y);
    for (int64_t k = 0; k < K; k++) x[k] = bench_urand();
    size_t qsize = 0;
    for (int c = 0; c < nc; c++) {
        const size_t z = lm_matmul_qbuf_size(cs[c].w[0], 1, threads);
        qsize = z > qsize ? z : qsize;
    }
    void *q = aligned_alloc(64, (qsize + 63) & ~(size_t)63);
    for (int r = 0; r < rounds; r++)
        for (int c = 0; c < nc; c++) {
            cfg *k = &cs[c];
            const bool l2 = k->N == 256 && k->K == 4096;
            const int reps = l2 ? 400 : 2;
            const bool panel = lm_matmul_panel_decode(k->w[0]);
            double t0 = bench_now();
            for (int i = 0; i < reps; i++)
                for (int j = 0; j < k->copies; j++) {
                    if (panel) lm_matmul_panel(pool, k->w[j], x, 1, y, q);
                    else lm_matmul(pool, k->w[j], x, 1, y, q);
                }
            const double bytes = (double)lm_dtype_row_size(k->t, k->K) * (double)k->N * k->copies * reps;
            k->gbs[r] = bytes / (bench_now() - t0) / 1e9;
        }
    for (int c = 0; c < nc; c++) {
        cfg *k = &cs[c];
        double s[64];
        memcpy(s, k->gbs, sizeof(double) * rounds);
        qsort(s, rounds, sizeof *s, cmp_d);
        printf("{\"type\": \"%s\", \"K\": %lld, \"N\": %lld, \"mb\": %.0f, \"where\": \"%s\", \"threads\": %d, "
               "\"interleaved\": %s, \"gbs_median\": %.2f, \"gbs_min\": %.2f, \"gbs_max\": %.2f}\n",
               lm_dtype_name(k->t), (long long)k->K, (long long)k->N,
               lm_dtype_row_size(k->t, k->K) * (double)k->N * k->copies / 1e6, k->N == 256 && k->K == 4096 ? "L2" : "memory", threads,
               k->il ? "true" : "false", s[rounds / 2], s[0], s[rounds - 1]);
        for (int i = 0; i < k->copies; i++) lm_tensor_free(k->w[i]);
    }
    free(x), free(y), free(q);
    lm_pool_free(pool);
    return 0;
}
