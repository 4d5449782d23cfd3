/* A fixed set of worker threads that run one parallel region at a time.
 *
 * lm_pool_run(pool, fn, ctx) calls fn(ctx, ith, nth) on every thread (the caller
 * is thread 0) and returns when all have finished. Workers are created once and
 * spin briefly between regions before sleeping, so a decode step's few hundred
 * regions cost microseconds, not thread creations. */
#ifndef LM_POOL_H
#define LM_POOL_H
#include "lumen.h"

typedef struct lm_pool lm_pool;
typedef void (*lm_pool_fn)(void *ctx, int ith, int nth);

lm_pool *lm_pool_new(int n_threads);   /* <= 0: number of online CPUs */
void lm_pool_free(lm_pool *p);
int lm_pool_size(const lm_pool *p);
/* Not reentrant: one region at a time per pool (the caller must serialize). */
void lm_pool_run(lm_pool *p, lm_pool_fn fn, void *ctx);
/* Split [0, n) into nth nearly equal parts, multiples of `align`; part ith is [*lo, *hi). */
void lm_pool_split(int64_t n, int64_t align, int ith, int nth, int64_t *lo, int64_t *hi);

#endif
