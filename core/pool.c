#include "pool.h"
#include "error.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <immintrin.h>

/* An idle worker spins this many pauses, then yields the core for up to
 * YIELD_NS, then sleeps on the condition variable: regions a few microseconds
 * apart are picked up at once, and an oversubscribed machine (another process
 * busy on a core) does not lose whole time slices to spinning, since a yield
 * hands the core to whatever else is runnable. The yielding lasts long enough
 * to span the server's work between two batched steps (sampling, text, HTTP:
 * a few ms on the scheduler thread): a worker that slept through it had to be
 * woken into a run queue, often behind a client's thread, at the start of
 * every step, and the step's first regions waited for it (`bench/load.py`
 * on 2 cores, 3 runs alternating with 50 yields: 652 -> 717 tok/s, medians). */
#define SPIN_ITERS 2000
#define YIELD_NS 10000000LL

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct lm_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;        /* advanced by 2 per region; bit 0 set for a dynamic one */
    atomic_int pending;     /* workers still running the current region */
    atomic_int sleepers;
    atomic_bool quit;
    lm_pool_fn fn;
    void *ctx;
    atomic_uint open;       /* that region's gen while it is open, else 0 */
    atomic_int inside;      /* workers inside it */
};

typedef struct { lm_pool *p; int ith; } worker_arg;

static void *worker(void *varg) {
    worker_arg *a = varg;
    lm_pool *p = a->p;
    int ith = a->ith;
    free(a);
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        int64_t yield_until = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
            if (++spins < SPIN_ITERS) { _mm_pause(); continue; }
            if (!yield_until) yield_until = now_ns() + YIELD_NS;
            if (now_ns() < yield_until) { sched_yield(); continue; }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->gen) == seen) pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit)) return NULL;
        seen = g;
        /* The kind comes with g itself: a dynamic region may have ended, and
         * the next one's fn and ctx be being written, while this worker was
         * away (a fixed region cannot end without it). */
        if (g & 1) {
            /* join only while it is open: main closes it, then waits for
             * `inside` to drop, so fn and ctx stay valid while we are in */
            atomic_fetch_add(&p->inside, 1);
            if (atomic_load(&p->open) == g) p->fn(p->ctx, ith, p->n);
            atomic_fetch_sub_explicit(&p->inside, 1, memory_order_release);
        } else {
            p->fn(p->ctx, ith, p->n);
            atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
        }
    }
}

lm_pool *lm_pool_new(int n) {
    if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n <= 0) n = 1;
    if (n > 256) n = 256;
    lm_pool *p = calloc(1, sizeof *p);
    if (!p) { lm_err("out of memory"); return NULL; }
    p->n = n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc((size_t)n, sizeof *p->threads);
    if (!p->threads) { free(p); lm_err("out of memory"); return NULL; }
    for (int i = 1; i < n; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (!a) { p->n = i; lm_pool_free(p); lm_err("out of memory"); return NULL; }
        a->p = p; a->ith = i;
        if (pthread_create(&p->threads[i], NULL, worker, a) != 0) {
            free(a);
            p->n = i;
            lm_pool_free(p);
            lm_err("could not start worker thread %d", i);
            return NULL;
        }
    }
    return p;
}

static void wake_all(lm_pool *p) {
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
}

void lm_pool_free(lm_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, true);
    atomic_fetch_add(&p->gen, 2);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}

int lm_pool_size(const lm_pool *p) { return p ? p->n : 1; }

/* Publishes region gen g (fn, ctx written before it); the mutex orders the
 * bump against a worker that is about to sleep. */
static void start(lm_pool *p, lm_pool_fn fn, void *ctx, unsigned g) {
    p->fn = fn;
    p->ctx = ctx;
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->gen, g, memory_order_release);
    pthread_mutex_unlock(&p->mu);
    wake_all(p);
}

static void wait_zero(atomic_int *c) {
    for (int spins = 0; atomic_load_explicit(c, memory_order_acquire) > 0; spins++) {
        if (spins < SPIN_ITERS) _mm_pause();
        else sched_yield();
    }
}

/* the next region's gen: even for a fixed one, odd for a dynamic one */
static unsigned next_gen(lm_pool *p, unsigned kind) {
    return ((atomic_load_explicit(&p->gen, memory_order_relaxed) + 2) & ~1u) | kind;
}

void lm_pool_run(lm_pool *p, lm_pool_fn fn, void *ctx) {
    if (!p || p->n == 1) { fn(ctx, 0, 1); return; }
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    start(p, fn, ctx, next_gen(p, 0));
    fn(ctx, 0, p->n);
    wait_zero(&p->pending);
}

/* Every thread that arrives while the region is open runs fn; the caller
 * runs it at once, and when its fn returns (all work taken) the region
 * closes: a worker still on its way finds it closed and skips it, and the
 * caller waits only for the workers inside, which finish the pieces they took. */
void lm_pool_run_dynamic(lm_pool *p, lm_pool_fn fn, void *ctx, lm_pool_queue *q) {
    atomic_store_explicit(&q->next, 0, memory_order_relaxed);
    if (!p || p->n == 1) { fn(ctx, 0, 1); return; }
    const unsigned g = next_gen(p, 1);
    atomic_store(&p->open, g);
    start(p, fn, ctx, g);
    fn(ctx, 0, p->n);
    atomic_store(&p->open, 0);
    wait_zero(&p->inside);
}

void lm_pool_split(int64_t n, int64_t align, int ith, int nth, int64_t *lo, int64_t *hi) {
    if (align < 1) align = 1;
    int64_t units = (n + align - 1) / align;
    int64_t per = units / nth, rem = units % nth;
    int64_t a = ith * per + (ith < rem ? ith : rem);
    int64_t b = a + per + (ith < rem ? 1 : 0);
    a *= align; b *= align;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

bool lm_pool_take(lm_pool_queue *q, int64_t n, int64_t align, int nth, int64_t *lo, int64_t *hi) {
    if (align < 1) align = 1;
    if (nth < 1) nth = 1;
    long long cur = atomic_load_explicit(&q->next, memory_order_relaxed);
    for (;;) {
        if (cur >= n) return false;
        int64_t size = (n - cur) / (2 * (int64_t)nth);
        size = size < align ? align : (size + align - 1) / align * align;
        const int64_t end = n - cur > size ? cur + size : n;
        if (atomic_compare_exchange_weak_explicit(&q->next, &cur, end, memory_order_relaxed, memory_order_relaxed)) {
            *lo = cur;
            *hi = end;
            return true;
        }
    }
}
