/* This machine's achievable memory read bandwidth: the roofline for decode,
 * which reads every weight once per token.
 *
 * A read-only sum (AVX-512 where the CPU has it, else AVX2) over a buffer far
 * larger than L3, with 1 and N threads (pthreads, each its own contiguous
 * share, all started together), repeated; prints the median and the range in
 * GB/s (1e9 bytes/s) as one JSON line per thread count, the thread counts
 * alternating within each repetition so a shared machine's load hits both
 * alike. Pages are touched first (not timed) and backed by transparent huge
 * pages where the kernel gives them (madvise), as decode's mapped weights
 * can be (lm_model_load).
 *
 *   lumen_stream_read [MiB=1024] [reps=9] [threads=1,2]
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

typedef struct {
    const char *p;
    size_t n;
    double sum;
    pthread_barrier_t *bar;
} share;

__attribute__((target("avx512f"))) static double sum512(const char *p, size_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 256 <= n; i += 256) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps((const float *)(p + i)));
        a1 = _mm512_add_ps(a1, _mm512_load_ps((const float *)(p + i + 64)));
        a2 = _mm512_add_ps(a2, _mm512_load_ps((const float *)(p + i + 128)));
        a3 = _mm512_add_ps(a3, _mm512_load_ps((const float *)(p + i + 192)));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

__attribute__((target("avx2"))) static double sum256(const char *p, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps((const float *)(p + i)));
        a1 = _mm256_add_ps(a1, _mm256_load_ps((const float *)(p + i + 32)));
        a2 = _mm256_add_ps(a2, _mm256_load_ps((const float *)(p + i + 64)));
        a3 = _mm256_add_ps(a3, _mm256_load_ps((const float *)(p + i + 96)));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return (double)t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

static int have512;

static void *reader(void *v) {
    share *s = v;
    pthread_barrier_wait(s->bar);
    s->sum = have512 ? sum512(s->p, s->n) : sum256(s->p, s->n);
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One timed pass of nth threads over buf[0, bytes): GB/s. */
static double pass(const char *buf, size_t bytes, int nth, double *sink) {
    pthread_t th[64];
    share sh[64];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)nth + 1);
    size_t per = bytes / (size_t)nth / 256 * 256;
    for (int i = 0; i < nth; i++) {
        sh[i] = (share){buf + (size_t)i * per, per, 0, &bar};
        pthread_create(&th[i], NULL, reader, &sh[i]);
    }
    double t0 = now();
    pthread_barrier_wait(&bar);
    for (int i = 0; i < nth; i++) {
        pthread_join(th[i], NULL);
        *sink += sh[i].sum;
    }
    double t = now() - t0;
    pthread_barrier_destroy(&bar);
    return (double)per * nth / t / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
    int reps = argc > 2 ? atoi(argv[2]) : 9;
    int threads[16], nt = 0;
    char spec[64] = "1,2";
    if (argc > 3) snprintf(spec, sizeof spec, "%s", argv[3]);
    for (char *tok = strtok(spec, ","); tok && nt < 16; tok = strtok(NULL, ",")) {
        int t = atoi(tok);
        if (t < 1 || t > 64) { fprintf(stderr, "stream_read: thread count '%s' is outside 1..64\n", tok); return 2; }
        threads[nt++] = t;
    }
    if (mib < 64 || reps < 1 || reps > 1000 || nt == 0) {
        fprintf(stderr, "usage: lumen_stream_read [MiB >= 64] [reps 1..1000] [threads,...]\n");
        return 2;
    }
    __builtin_cpu_init();
    have512 = __builtin_cpu_supports("avx512f");
    size_t bytes = mib << 20;
    char *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { fprintf(stderr, "stream_read: cannot map %zu MiB\n", mib); return 1; }
    madvise(buf, bytes, MADV_HUGEPAGE);
    for (size_t i = 0; i < bytes; i += 4096) ((float *)(buf + i))[0] = 1.0f; /* fault every page in */
    memset(buf, 0, bytes);
    double sink = 0, *gbs = calloc((size_t)nt * reps, sizeof *gbs);
    for (int i = 0; i < nt; i++) pass(buf, bytes, threads[i], &sink); /* warm up */
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < nt; i++) gbs[i * reps + r] = pass(buf, bytes, threads[i], &sink);
    for (int i = 0; i < nt; i++) {
        double *g = gbs + i * reps;
        qsort(g, (size_t)reps, sizeof *g, cmp);
        printf("{\"threads\": %d, \"mib\": %zu, \"reps\": %d, \"isa\": \"%s\", \"read_gbs_median\": %.2f, "
               "\"read_gbs_min\": %.2f, \"read_gbs_max\": %.2f}\n",
               threads[i], mib, reps, have512 ? "avx512" : "avx2", g[reps / 2], g[0], g[reps - 1]);
    }
    free(gbs);
    munmap(buf, bytes);
    return sink == 12345.0; /* keeps the sums live */
}
