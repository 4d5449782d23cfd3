/* Prefill's matrix products against this machine's limit: oneDNN's own f32,
 * bf16 and s8 (u8 x s8) matmul of M x K by K x N, weights reordered once into
 * the layout oneDNN picks (what a loader would do), beside lumen's product of
 * the same shape from quantized weights (Q4_0, Q4_K, Q8_0: random rows, which
 * time like real ones) through the path a prompt takes (core/arch/llama.c mm:
 * the integer panels where the weight has them, else the f32 GEMM on weights
 * dequantized per call). Default shapes: Llama-3.2-1B's and Qwen3-8B's K x N
 * at M = 512, on 1 and 2 threads. Every configuration of a shape takes its
 * turn once per round, so drift on a shared machine hits them alike; the
 * medians of the rounds are printed as GFLOP/s (2 M K N / s) and the
 * implementation oneDNN chose (ONEDNN_VERBOSE=1 prints the same per call).
 *
 *   build/lumen_prefill_gemm [M] [rounds] [shapes: KxN,KxN,...] [threads: 1,2]
 * LUMEN_ISA=scalar|avx2 caps lumen's kernels as everywhere; PLAIN=1 hands oneDNN
 * its weights in the plain layout lumen's GEMM gives it instead of its own
 * (on Zen 4 as fast). */
#include "bench_util.h"
#include "lumen.h"
#include "model.h"
#include "pool.h"
#include "quant.h"

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CK(x) do { dnnl_status_t st_ = (x); if (st_ != dnnl_success) { \
    fprintf(stderr, "prefill_gemm: %s: %s\n", #x, dnnl_status2str(st_)); exit(1); } } while (0)

static dnnl_engine_t g_eng;
static dnnl_stream_t g_str;

/* one oneDNN matmul: its primitive (made for the thread count), the operands */
typedef struct {
    const char *name;
    dnnl_primitive_t prim;
    dnnl_memory_t a, w, y;
    char impl[160];
} dnn_mm;

static dnn_mm dnn_make(const char *name, dnnl_data_type_t at, dnnl_data_type_t wt, int64_t M, int64_t K, int64_t N,
                       const float *af, const float *wf) {
    dnn_mm d = {.name = name};
    dnnl_memory_desc_t amd, wmd, wany, ymd, wsrc;
    dnnl_dims_t ad = {M, K}, wd = {K, N}, yd = {M, N};
    CK(dnnl_memory_desc_init_by_tag(&amd, 2, ad, at, dnnl_ab));
    CK(dnnl_memory_desc_init_by_tag(&wany, 2, wd, wt, getenv("PLAIN") ? dnnl_ba : dnnl_format_tag_any));
    CK(dnnl_memory_desc_init_by_tag(&ymd, 2, yd, dnnl_f32, dnnl_ab));
    dnnl_matmul_desc_t md;
    CK(dnnl_matmul_desc_init(&md, &amd, &wany, NULL, &ymd));
    dnnl_primitive_desc_t pd;
    CK(dnnl_primitive_desc_create(&pd, &md, NULL, g_eng, NULL));
    const char *impl = NULL;
    CK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    snprintf(d.impl, sizeof d.impl, "%s", impl);
    CK(dnnl_primitive_create(&d.prim, pd));
    wmd = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    /* the operands: f32 sources converted (u8 activations around 128, s8 weights) */
    CK(dnnl_memory_create(&d.a, &amd, g_eng, DNNL_MEMORY_ALLOCATE));
    CK(dnnl_memory_create(&d.y, &ymd, g_eng, DNNL_MEMORY_ALLOCATE));
    void *ap;
    CK(dnnl_memory_get_data_handle(d.a, &ap));
    for (int64_t i = 0; i < M * K; i++) {
        if (at == dnnl_f32) ((float *)ap)[i] = af[i];
        else if (at == dnnl_bf16) ((uint16_t *)ap)[i] = lm_f32_to_bf16(af[i]);
        else ((uint8_t *)ap)[i] = (uint8_t)(128 + (int)(af[i] * 100));
    }
    /* the weights as K x N plain (lumen's [N][K] rows: strides 1, K), then reordered */
    CK(dnnl_memory_desc_init_by_tag(&wsrc, 2, wd, wt, dnnl_ba));
    dnnl_memory_t ws;
    CK(dnnl_memory_create(&ws, &wsrc, g_eng, DNNL_MEMORY_ALLOCATE));
    void *wp;
    CK(dnnl_memory_get_data_handle(ws, &wp));
    for (int64_t i = 0; i < N * K; i++) {
        if (wt == dnnl_f32) ((float *)wp)[i] = wf[i];
        else if (wt == dnnl_bf16) ((uint16_t *)wp)[i] = lm_f32_to_bf16(wf[i]);
        else ((int8_t *)wp)[i] = (int8_t)(wf[i] * 100);
    }
    CK(dnnl_memory_create(&d.w, &wmd, g_eng, DNNL_MEMORY_ALLOCATE));
    dnnl_primitive_desc_t rpd;
    dnnl_primitive_t r;
    CK(dnnl_reorder_primitive_desc_create(&rpd, &wsrc, g_eng, &wmd, g_eng, NULL));
    CK(dnnl_primitive_create(&r, rpd));
    dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, ws}, {DNNL_ARG_TO, d.w}};
    CK(dnnl_primitive_execute(r, g_str, 2, rargs));
    CK(dnnl_stream_wait(g_str));
    dnnl_primitive_destroy(r);
    dnnl_primitive_desc_destroy(rpd);
    dnnl_primitive_desc_destroy(pd);
    dnnl_memory_destroy(ws);
    return d;
}

static void dnn_run(dnn_mm *d) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, d->a}, {DNNL_ARG_WEIGHTS, d->w}, {DNNL_ARG_DST, d->y}};
    CK(dnnl_primitive_execute(d->prim, g_str, 3, args));
    CK(dnnl_stream_wait(g_str));
}

static void dnn_free(dnn_mm *d) {
    dnnl_primitive_destroy(d->prim);
    dnnl_memory_destroy(d->a);
    dnnl_memory_destroy(d->w);
    dnnl_memory_destroy(d->y);
}

/* lumen's weights of one dtype: 64 distinct random rows repeated over N rows */
typedef struct {
    lm_dtype t;
    lm_tensor *w;
    void *qbuf, *wbuf;
    bool gemm;  /* the path a prompt of M tokens takes (core/arch/llama.c mm) */
    bool amx;   /* that path: AMX's bf16 tiles (lm_matmul_amx) */
    bool dots;  /* the quantized dots and their tiles (a decode batch's path) instead */
    char path[48];
} lm_mm;

/* thread counts up to this (the repacked panels' scratch is per thread) */
#define MAX_THREADS 64

/* mode 0: the path a prompt takes; 1: the panels; 2: the quantized dots */
static lm_mm lm_make(lm_dtype t, int64_t K, int64_t N, int64_t M, int mode) {
    lm_mm m = {.t = t, .dots = mode == 2};
    const bool force_panel = mode != 0;
    m.w = bench_random_weight(t, K, N);
    if (!m.w) {
        fprintf(stderr, "prefill_gemm: out of memory for a %lld x %lld weight\n", (long long)N, (long long)K);
        exit(1);
    }
    m.qbuf = aligned_alloc(64, (lm_matmul_qbuf_size(m.w, M, MAX_THREADS) + 63) & ~(size_t)63);
    const bool panel = lm_matmul_has_panel(m.w);
    m.amx = !force_panel && lm_matmul_prompt_amx(m.w, M);
    m.gemm = !force_panel && !m.amx && (panel ? lm_matmul_prompt_gemm(m.w, M) : M >= lm_matmul_gemm_min(m.w));
    if (m.amx) {
        snprintf(m.path, sizeof m.path, "%s amx bf16", lm_dtype_name(t));
    } else if (m.gemm) {
        m.wbuf = malloc(lm_matmul_wbuf_size(m.w));
        const char *impl = lm_bgemm_impl();
        snprintf(m.path, sizeof m.path, "%s gemm (%s)", lm_dtype_name(t),
                 lm_matmul_wbuf_size(m.w) == (size_t)(N * K) * 2 && impl ? impl : "f32");
    } else {
        snprintf(m.path, sizeof m.path, "%s %s", lm_dtype_name(t), panel && !m.dots ? "panel" : "quantized dots");
    }
    return m;
}

static void lm_run(lm_mm *m, lm_pool *pool, const float *x, int64_t M, float *y) {
    if (m->amx) lm_matmul_amx(pool, (const lm_tensor *const *)&m->w, 1, x, M, &y, m->qbuf);
    else if (m->gemm) lm_matmul_gemm(pool, m->w, x, M, y, m->wbuf, m->qbuf);
    else if (lm_matmul_has_panel(m->w) && !m->dots) lm_matmul_panel(pool, m->w, x, M, y, m->qbuf);
    else lm_matmul(pool, m->w, x, M, y, m->qbuf);
}

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int64_t M = argc > 1 ? atoll(argv[1]) : 512;
    int rounds = argc > 2 ? atoi(argv[2]) : 3;
    const char *shapes = argc > 3 ? argv[3]
        : "2048x2048,2048x512,2048x8192,8192x2048,4096x4096,4096x1024,4096x12288,12288x4096";
    const char *threads = argc > 4 ? argv[4] : "1,2";
    if (M < 1 || rounds < 1) { fprintf(stderr, "usage: %s [M] [rounds] [KxN,...] [threads,...]\n", argv[0]); return 2; }
    lm_kernels_init();
    CK(dnnl_engine_create(&g_eng, dnnl_cpu, 0));
    CK(dnnl_stream_create(&g_str, g_eng, dnnl_stream_default_flags));
    double load[3] = {0};
    if (getloadavg(load, 3) < 0) load[0] = -1;
    printf("# M=%lld, %d rounds, medians; lumen ISA %s; load average at start %.1f\n", (long long)M, rounds,
           lm_isa_name(lm_cpu_isa()), load[0]);
    printf("%-11s %3s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s  (GFLOP/s = 2MKN/s; lm_*: the path a prompt takes, "
           "*_pan: the panels, *_dot: the quantized dots and tiles)\n", "KxN", "thr", "dnnl_f32", "dnnl_bf16", "dnnl_s8",
           "lm_q4_0", "lm_q8_0", "lm_q4_K", "lm_q6_K", "q4_K_pan", "q6_K_pan", "q4_K_dot", "q6_K_dot");
    char *sh = strdup(shapes);
    for (char *tok = strtok(sh, ","); tok; tok = strtok(NULL, ",")) {
        long long K, N;
        if (sscanf(tok, "%lldx%lld", &K, &N) != 2 || K < 256 || N < 16 || K % 256) {
            fprintf(stderr, "prefill_gemm: bad shape '%s' (K x N, K a multiple of 256)\n", tok);
            return 2;
        }
        float *af = malloc((size_t)(M * K) * sizeof(float)), *wf = malloc((size_t)(N * K) * sizeof(float));
        float *y = malloc((size_t)(M * N) * sizeof(float));
        for (int64_t i = 0; i < M * K; i++) af[i] = bench_urand();
        for (int64_t i = 0; i < N * K; i++) wf[i] = bench_urand();
        enum { NL = 8, NC = 3 + NL };
        const lm_dtype lt[NL] = {LM_Q4_0, LM_Q8_0, LM_Q4_K, LM_Q6_K, LM_Q4_K, LM_Q6_K, LM_Q4_K, LM_Q6_K};
        const int mode[NL] = {0, 0, 0, 0, 1, 1, 2, 2};
        lm_mm lw[NL];
        for (int i = 0; i < NL; i++) lw[i] = lm_make(lt[i], K, N, M, mode[i]);
        char tl[64];
        snprintf(tl, sizeof tl, "%s", threads);
        char *save = NULL;
        for (char *tt = strtok_r(tl, ",", &save); tt; tt = strtok_r(NULL, ",", &save)) {
            const int nth = atoi(tt);
            if (nth < 1 || nth > MAX_THREADS) { fprintf(stderr, "prefill_gemm: threads %s: 1..%d\n", tt, MAX_THREADS); return 2; }
            omp_set_num_threads(nth);
            dnn_mm dm[3] = {dnn_make("f32", dnnl_f32, dnnl_f32, M, K, N, af, wf),
                            dnn_make("bf16", dnnl_bf16, dnnl_bf16, M, K, N, af, wf),
                            dnn_make("s8", dnnl_u8, dnnl_s8, M, K, N, af, wf)};
            lm_pool *pool = lm_pool_new(nth);
            double t[NC][64];
            for (int r = -1; r < rounds && r < 64; r++) { /* round -1 warms up */
                for (int c = 0; c < NC; c++) {
                    const double t0 = bench_now();
                    if (c < 3) dnn_run(&dm[c]);
                    else lm_run(&lw[c - 3], pool, af, M, y);
                    if (r >= 0) t[c][r] = bench_now() - t0;
                }
            }
            const double flop = 2.0 * (double)M * (double)K * (double)N;
            printf("%-11s %3d", tok, nth);
            for (int c = 0; c < NC; c++) {
                qsort(t[c], (size_t)rounds, sizeof(double), cmp_d);
                printf(" %9.1f", flop / t[c][rounds / 2] * 1e-9);
            }
            printf("\n");
            if (tt == tl) {
                printf("#   dnnl: f32 %s, bf16 %s, s8 %s; lumen:", dm[0].impl, dm[1].impl, dm[2].impl);
                for (int i = 0; i < NL; i++) printf(" %s%s", lw[i].path, i < NL - 1 ? "," : "\n");
            }
            fflush(stdout);
            lm_pool_free(pool);
            for (int c = 0; c < 3; c++) dnn_free(&dm[c]);
        }
        for (int i = 0; i < NL; i++) { lm_tensor_free(lw[i].w); free(lw[i].qbuf); free(lw[i].wbuf); }
        free(af), free(wf), free(y);
    }
    free(sh);
    dnnl_stream_destroy(g_str);
    dnnl_engine_destroy(g_eng);
    return 0;
}
