/* Exact top-k vector search: the scalar reference scores (the order in
 * vsearch.h), the selection, the threads and the dispatch. Built with
 * -ffp-contract=off so that the compiler fuses nothing the order does not say;
 * the fused multiply-adds it does say are explicit fmaf calls. */
#include "vsearch.h"

#include "error.h"
#include "pool.h" /* lm_pool_take */

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- scalar reference scores ---------------------------------------------- */

/* element i of a row as a float, 0 past the end (the padding of the last block) */
static inline float elem(int dtype, const void *row, int32_t i, int32_t dim) {
    if (i >= dim) return 0.0f;
    return dtype == LM_I8 ? (float)((const int8_t *)row)[i] : ((const float *)row)[i];
}

static void scores_scalar(int dtype, const void *rows, const float *scales, int64_t n, int32_t dim, const float *q,
                          float *out) {
    const size_t row_bytes = (size_t)dim * (dtype == LM_I8 ? 1 : sizeof(float));
    for (int64_t r = 0; r < n; r++) {
        const void *row = (const char *)rows + (size_t)r * row_bytes;
        float p[16] = {0};
        for (int32_t b = 0; b < dim; b += 16)
            for (int j = 0; j < 16; j++) p[j] = fmaf(b + j < dim ? q[b + j] : 0.0f, elem(dtype, row, b + j, dim), p[j]);
        const float d = lm_vsearch_reduce16(p);
        out[r] = dtype == LM_I8 ? scales[r] * d : d;
    }
}

/* ---- dispatch --------------------------------------------------------------- */

lm_vsearch_fn lm_vsearch_kernel(lm_isa isa) {
    static const lm_vsearch_fn table[LM_ISA_COUNT] = {scores_scalar, lm_vsearch_scores_avx2, lm_vsearch_scores_avx512};
    return (int)isa >= 0 && isa < LM_ISA_COUNT ? table[isa] : NULL;
}

/* ---- selection: a heap of the k best, worst at the root ---------------------- */

typedef struct { float s; int64_t id; } hit;

/* The one total order on (score, row): higher score first, then lower row;
 * NaN below everything. Any split of the rows keeps the same k best. */
static inline int better(float a, int64_t ia, float b, int64_t ib) {
    if (a > b) return 1;
    if (a < b) return 0;
    if (a == b) return ia < ib;
    if (isnan(a) && isnan(b)) return ia < ib;
    return isnan(b);
}

typedef struct { hit *h; int64_t len, cap; } heap;

static void sift_down(heap *hp, int64_t i) {
    hit *h = hp->h;
    const hit x = h[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= hp->len) break;
        if (c + 1 < hp->len && better(h[c].s, h[c].id, h[c + 1].s, h[c + 1].id)) c++; /* the worse child */
        if (!better(x.s, x.id, h[c].s, h[c].id)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static inline void offer(heap *hp, float s, int64_t id) {
    hit *h = hp->h;
    if (hp->len < hp->cap) {
        int64_t i = hp->len++;
        while (i > 0) { /* sift up: a parent is never worse than its children */
            const int64_t p = (i - 1) / 2;
            if (!better(h[p].s, h[p].id, s, id)) break;
            h[i] = h[p];
            i = p;
        }
        h[i] = (hit){s, id};
    } else if (better(s, id, h[0].s, h[0].id)) {
        h[0] = (hit){s, id};
        sift_down(hp, 0);
    }
}

/* ---- scanning, shared between threads --------------------------------------- */

/* rows scored per kernel call: a few KB of scores, reused from L1 */
#define SCAN_BLOCK 512
/* Below this many elements a thread's share is not worth creating it: a
 * thread costs tens of microseconds, 1M elements take a few hundred to read.
 * Also the smallest piece of work handed out. */
#define MIN_WORK_PER_THREAD ((int64_t)1 << 20)
#define MAX_THREADS 64

/* One search, shared by the caller and the threads it creates. The rows are
 * handed out in shrinking pieces (lm_pool_take) rather than split up front:
 * on a machine whose cores are busy (five engineers' builds, a server's
 * decode) a new thread often waits milliseconds for a core, and with a fixed
 * split the caller would wait for it; here the caller takes what is left, and
 * waits only for pieces a thread has taken. Each participant keeps its own
 * heap; whichever rows it scored, the merge under the one total order gives
 * the same k. The threads are detached and the last one out frees the search,
 * so a thread that starts after the caller returned finds no work and no
 * dangling memory. */
typedef struct {
    lm_vsearch_fn fn;
    int dtype;
    const char *rows;
    size_t row_bytes;
    const float *scales, *q;
    int32_t dim;
    int64_t n, align;
    int nt;
    lm_pool_queue queue;
    pthread_mutex_t mu;
    pthread_cond_t done;
    int joined, finished, refs; /* under mu: participants so far (the caller is 0), those finished, holders */
    heap *heaps;                /* one per participant, kk hits each */
    hit *store;
} search;

static void scan(search *s, heap *hp) {
    float buf[SCAN_BLOCK];
    int64_t lo, hi;
    while (lm_pool_take(&s->queue, s->n, s->align, s->nt, &lo, &hi))
        for (int64_t b = lo; b < hi; b += SCAN_BLOCK) {
            const int64_t m = hi - b < SCAN_BLOCK ? hi - b : SCAN_BLOCK;
            s->fn(s->dtype, s->rows + (size_t)b * s->row_bytes, s->scales ? s->scales + b : NULL, m, s->dim, s->q, buf);
            for (int64_t i = 0; i < m; i++) offer(hp, buf[i], b + i);
        }
}

static void release(search *s) {
    pthread_mutex_lock(&s->mu);
    const int last = --s->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (!last) return;
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->done);
    free(s->store);
    free(s->heaps);
    free(s);
}

static void *worker(void *arg) {
    search *s = arg;
    pthread_mutex_lock(&s->mu);
    heap *hp = &s->heaps[s->joined++];
    pthread_mutex_unlock(&s->mu);
    scan(s, hp);
    pthread_mutex_lock(&s->mu);
    s->finished++;
    pthread_cond_signal(&s->done);
    pthread_mutex_unlock(&s->mu);
    release(s);
    return NULL;
}

int64_t lm_vec_topk(const void *rows, int dtype, const float *scales, int64_t n, int32_t dim, const float *query,
                    int32_t k, int32_t n_threads, int64_t *ids, float *scores) {
    if (dtype != LM_F32 && dtype != LM_I8) return lm_err("lm_vec_topk: dtype %d is not LM_F32 or LM_I8", dtype);
    if (n < 0) return lm_err("lm_vec_topk: n = %lld rows", (long long)n);
    if (dim <= 0) return lm_err("lm_vec_topk: dim = %d (must be >= 1)", dim);
    if (k < 0) return lm_err("lm_vec_topk: k = %d", k);
    if (!query) return lm_err("lm_vec_topk: query is NULL");
    if (n > 0 && !rows) return lm_err("lm_vec_topk: rows is NULL");
    if (n > 0 && dtype == LM_I8 && !scales) return lm_err("lm_vec_topk: scales is NULL (LM_I8 rows)");
    if (k > 0 && (!ids || !scores)) return lm_err("lm_vec_topk: %s is NULL", ids ? "scores" : "ids");
    if (n > INT64_MAX / dim) return lm_err("lm_vec_topk: n * dim overflows");
    const int64_t kk = k < n ? k : n;
    if (kk == 0) return 0;

    int64_t nt = n_threads > 0 ? n_threads : sysconf(_SC_NPROCESSORS_ONLN);
    const int64_t by_work = n * dim / MIN_WORK_PER_THREAD;
    if (nt > by_work) nt = by_work;
    if (nt > MAX_THREADS) nt = MAX_THREADS;
    if (nt < 1) nt = 1;

    search *s = calloc(1, sizeof *s);
    hit *store = malloc(sizeof(hit) * (size_t)(kk * (nt + 1)));
    heap *heaps = malloc(sizeof(heap) * (size_t)nt);
    if (!s || !store || !heaps) {
        free(s), free(store), free(heaps);
        return lm_err("lm_vec_topk: out of memory for %lld hits", (long long)(kk * (nt + 1)));
    }
    *s = (search){.fn = lm_vsearch_kernel(lm_cpu_isa()), /* LUMEN_ISA caps it */
                  .dtype = dtype, .rows = rows, .row_bytes = (size_t)dim * (dtype == LM_F32 ? sizeof(float) : 1),
                  .scales = dtype == LM_I8 ? scales : NULL, .q = query, .dim = dim, .n = n,
                  .align = (MIN_WORK_PER_THREAD + dim - 1) / dim, .nt = (int)nt, .joined = 1, .refs = 1,
                  .heaps = heaps, .store = store};
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->done, NULL);
    for (int64_t t = 0; t < nt; t++) heaps[t] = (heap){store + t * kk, 0, kk};
    /* a thread that cannot be created leaves its work to the others */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (int64_t t = 1; t < nt; t++) {
        pthread_t tid;
        pthread_mutex_lock(&s->mu);
        s->refs++;
        pthread_mutex_unlock(&s->mu);
        if (pthread_create(&tid, &attr, worker, s)) release(s);
    }
    pthread_attr_destroy(&attr);
    scan(s, &heaps[0]);
    /* the queue is empty: wait for the pieces taken by threads that joined;
     * one joining from now on takes nothing and leaves its heap empty */
    pthread_mutex_lock(&s->mu);
    while (s->finished < s->joined - 1) pthread_cond_wait(&s->done, &s->mu);
    const int joined = s->joined;
    pthread_mutex_unlock(&s->mu);

    heap all = {store + nt * kk, 0, kk};
    for (int t = 0; t < joined; t++)
        for (int64_t i = 0; i < heaps[t].len; i++) offer(&all, heaps[t].h[i].s, heaps[t].h[i].id);
    /* popping the root gives the worst first: fill from the back */
    for (int64_t i = kk - 1; i >= 0; i--) {
        ids[i] = all.h[0].id;
        scores[i] = all.h[0].s;
        all.h[0] = all.h[--all.len];
        sift_down(&all, 0);
    }
    release(s);
    return kk;
}

/* ---- int8 storage ------------------------------------------------------------ */

lm_status lm_vec_quantize_i8(const float *x, int64_t n, int32_t dim, int8_t *out, float *scales) {
    if (!x || !out || !scales) return lm_err("lm_vec_quantize_i8: %s is NULL", !x ? "x" : !out ? "out" : "scales");
    if (n < 0) return lm_err("lm_vec_quantize_i8: n = %lld rows", (long long)n);
    if (dim <= 0) return lm_err("lm_vec_quantize_i8: dim = %d (must be >= 1)", dim);
    for (int64_t i = 0; i < n; i++) {
        const float *r = x + i * dim;
        float amax = 0.0f;
        for (int32_t j = 0; j < dim; j++) {
            if (!isfinite(r[j])) return lm_err("lm_vec_quantize_i8: row %lld, element %d is %g", (long long)i, j, r[j]);
            amax = fmaxf(amax, fabsf(r[j]));
        }
        const float s = amax / 127.0f;
        scales[i] = s;
        for (int32_t j = 0; j < dim; j++) {
            /* x / s rather than x * (127 / amax): the stated bound is against s itself */
            const float v = s > 0.0f ? nearbyintf(r[j] / s) : 0.0f;
            out[i * dim + j] = (int8_t)(v > 127.0f ? 127 : v < -127.0f ? -127 : v);
        }
    }
    return LM_OK;
}
