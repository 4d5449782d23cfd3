/* A fixed set of worker threads that run one parallel region at a time.
 *
 * lm_pool_run(pool, fn, ctx) calls fn(ctx, ith, nth) on every thread (the caller
 * is thread 0) and returns when all have finished. Workers are created once and
 * spin briefly between regions before sleeping, so a decode step's few hundred
 * regions cost microseconds, not thread creations. */
#ifndef LM_POOL_H
#define LM_POOL_H
#include "lumen.h"

#include <stdatomic.h>
#include <stdbool.h>

typedef struct lm_pool lm_pool;
typedef void (*lm_pool_fn)(void *ctx, int ith, int nth);

lm_pool *lm_pool_new(int n_threads);   /* <= 0: number of online CPUs */
void lm_pool_free(lm_pool *p);
int lm_pool_size(const lm_pool *p);
/* Not reentrant: one region at a time per pool (the caller must serialize). */
void lm_pool_run(lm_pool *p, lm_pool_fn fn, void *ctx);
/* Split [0, n) into nth nearly equal parts, multiples of `align`; part ith is [*lo, *hi). */
void lm_pool_split(int64_t n, int64_t align, int ith, int nth, int64_t *lo, int64_t *hi);

/* The queue a dynamic region hands its work out from (lm_pool_take). */
typedef struct { atomic_llong next; } lm_pool_queue;

/* A region whose work is handed out while it runs rather than split up
 * front. On a machine whose cores are shared (a server's clients on the same
 * two cores), a worker is often off its core when a region starts; with a
 * fixed split every region then waits for it (measured under bench/load.py:
 * ~17% of the server's time, most of it in the small per-token regions).
 * Here the caller starts at once and takes what is there, a worker that
 * arrives takes the rest, one that arrives after the region closed skips it,
 * and the caller waits only for pieces a worker has taken. q is reset first;
 * fn must take all of its work from it (lm_pool_take), may run on any number
 * of the threads, and must give the same results whichever thread takes which
 * piece; ith still names the thread (for per-thread scratch). p NULL: fn runs
 * on the caller alone. */
void lm_pool_run_dynamic(lm_pool *p, lm_pool_fn fn, void *ctx, lm_pool_queue *q);

/* The next piece [*lo, *hi) of [0, n) for the calling thread: half of what is
 * left over nth (multiples of align, at least align), false when none is left. */
bool lm_pool_take(lm_pool_queue *q, int64_t n, int64_t align, int nth, int64_t *lo, int64_t *hi);

#endif
