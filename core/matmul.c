/* Quantized matrix products on the thread pool: activations are quantized once
 * per product to the weight's vec_dot type, then the weight rows are split
 * across threads; each thread walks its rows in small tiles so a tile stays in
 * cache while every token of the batch is dotted with it. */
#include "model.h"
#include "error.h"
#include "quant.h"

#include <immintrin.h>
#include <stdatomic.h>
#include <string.h>

#define ROW_TILE 16

typedef struct {
    const lm_quant_ops *ops;
    const char *w;
    size_t w_row, x_row;
    int64_t out, in, n;
    const float *x;
    char *xq;
    float *y;
    lm_dtype wt;
    char *pk;      /* panels: the activations packed (quant.h), in passes of LM_PANEL_TOKENS */
    size_t pk_rec; /* bytes of one packed block */
    int64_t pk_nb; /* packed blocks per token */
    char *rp;         /* repacked panels (quant.h): each thread's scratch, rp_chunk panels apart */
    size_t rp_panel;  /* bytes of one repacked panel */
    int64_t rp_chunk; /* panels a thread repacks at once */
    bool il;          /* the weight's rows are interleaved (quant.h): ops->panel_il, repack_il */
    lm_pool_queue q; /* the region's work, handed out (lm_pool_run_dynamic) */
} mm_job;

/* each activation row to the weight's vec_dot type (and, for panels, packed:
 * the LM_PANEL_TOKENS tokens of a pass block after block, side by side) */
static void quantize_rows(void *vctx, int ith, int nth) {
    mm_job *j = vctx;
    int64_t lo, hi;
    (void)ith;
    const lm_quant_ops *q = lm_quant_ops_get(j->ops->vec_dot_type);
    while (lm_pool_take(&j->q, j->n, 1, nth, &lo, &hi)) {
        for (int64_t t = lo; t < hi; t++) {
            q->from_float(j->x + t * j->in, j->xq + t * j->x_row, j->in);
            if (j->pk) {
                const int64_t p = t / LM_PANEL_TOKENS * LM_PANEL_TOKENS;
                const int64_t np = j->n - p < LM_PANEL_TOKENS ? j->n - p : LM_PANEL_TOKENS;
                lm_panel_pack(j->wt, j->xq + t * j->x_row, j->pk + (size_t)(p * j->pk_nb + (t - p)) * j->pk_rec,
                              (size_t)np * j->pk_rec, j->in);
            }
        }
    }
}

static mm_job mm_job_for(const lm_tensor *w, const float *x, int64_t n, float *y) {
    const lm_quant_ops *ops = lm_quant_ops_get(w->dtype);
    mm_job j = {
        .ops = ops, .w = w->data, .w_row = (size_t)w->stride[0],
        .out = w->shape[0], .in = w->shape[1], .n = n, .x = x, .y = y, .wt = w->dtype, .il = w->interleaved,
    };
    j.x_row = lm_dtype_row_size(ops->vec_dot_type, j.in);
    return j;
}

/* Rows ahead to prefetch: the hardware prefetchers of the machines measured
 * (virtualized Xeons) leave a single thread at ~2.5 GB/s on a streamed weight
 * matrix; touching the row 4 ahead brings it to ~6.8 GB/s. */
#define PREFETCH_ROWS 4

static inline void prefetch_row(const char *p, size_t bytes) {
    for (size_t c = 0; c < bytes; c += 64) _mm_prefetch(p + c, _MM_HINT_T0);
}

static void mm_rows(void *vctx, int ith, int nth) {
    mm_job *j = vctx;
    int64_t lo, hi;
    lm_pool_split(j->out, ROW_TILE, ith, nth, &lo, &hi);
    if (j->n == 1) { /* decode: one activation row, weights streamed from memory */
        const char *xq = j->xq;
        for (int64_t r = lo; r < hi; r++) {
            if (r + PREFETCH_ROWS < hi) prefetch_row(j->w + (r + PREFETCH_ROWS) * j->w_row, j->w_row);
            j->ops->vec_dot(j->in, &j->y[r], j->w + r * j->w_row, xq);
        }
        return;
    }
    for (int64_t r0 = lo; r0 < hi; r0 += ROW_TILE) {
        int64_t r1 = r0 + ROW_TILE < hi ? r0 + ROW_TILE : hi;
        if (r1 < hi) prefetch_row(j->w + r1 * j->w_row, j->w_row * (size_t)(hi - r1 < ROW_TILE ? hi - r1 : ROW_TILE));
        /* tiles of weight rows x four tokens (quant.h) cover rows [r0, rt) of
         * tokens [0, t4); the rest goes one row and one token at a time */
        int64_t rt = r0, t4 = 0;
        if (j->ops->vec_dot_tile) {
            const int64_t R = j->ops->tile_rows;
            rt = r0 + (r1 - r0) / R * R;
            t4 = j->n / 4 * 4;
            for (int64_t t = 0; t < t4; t += 4)
                for (int64_t r = r0; r < rt; r += R)
                    j->ops->vec_dot_tile(j->in, j->y + t * j->out + r, (size_t)j->out, j->w + r * j->w_row, j->w_row,
                                         j->xq + t * j->x_row, j->x_row);
        }
        for (int64_t t = 0; t < j->n; t++) {
            const char *xq = j->xq + t * j->x_row;
            float *y = j->y + t * j->out;
            for (int64_t r = t < t4 ? rt : r0; r < r1; r++)
                j->ops->vec_dot(j->in, &y[r], j->w + r * j->w_row, xq);
        }
    }
}

/* Where the GEMM starts to win, measured with SmolLM2 on a Zen 4 (2 threads and
 * 1, bench/ttft.lua at 24..256 tokens, alternating): dequantizing a matrix costs
 * the same for any batch, so the integer tiles win short prompts. Q4_1 at 128
 * tokens on 2 threads: tiles 204 ms, GEMM 224-360 ms; even at 256. Q8_0 at 48:
 * 66 vs 96 ms; behind from about 96. Gemma 3 (Q5_0, Q4_K, Q6_K, Q8_0) at 128
 * on one thread: 353 vs 440 ms, even on two. Without tiles, from 16. Weights
 * with panels (quant.h) take every prompt through them instead (llama.c mm). */
int64_t lm_matmul_gemm_min(const lm_tensor *w) {
    const lm_quant_ops *ops = lm_quant_ops_get(w->dtype);
    if (!ops || !ops->vec_dot_tile) return LM_GEMM_MIN_TOKENS;
    return w->dtype == LM_Q8_0 ? 64 : 160;
}

/* the quantized rows, then (64-byte aligned) the panels' packed activations */
static size_t qrows_size(const lm_quant_ops *ops, const lm_tensor *w, int64_t n) {
    return (lm_dtype_row_size(ops->vec_dot_type, w->shape[1]) * (size_t)n + 63) & ~(size_t)63;
}

static size_t packed_size(const lm_quant_ops *ops, const lm_tensor *w, int64_t n) {
    if (!ops->panel && !ops->repack) return 0;
    return ((size_t)n * (size_t)(w->shape[1] / lm_dtype_block_size(ops->vec_dot_type)) * lm_panel_record(w->dtype) + 63) &
           ~(size_t)63;
}

/* Repacked panels (quant.h) a thread holds at once: as many as keep them
 * within TILED_BYTES (at least one), up to TILED_PANELS; every pass of
 * LM_PANEL_TOKENS tokens then reads them from L2 beside its activations. */
#define TILED_BYTES (768 * 1024)
/* Bytes of a panel a pass takes before the next blocks of every panel of the
 * chunk: a panel's slice stays in L1 while the pass's groups of tokens go by.
 * Measured on the Xeon with the K-quants (6 KB a repacked block; M = 512, one
 * thread, 1, 2, 4, 8 or all blocks): within its noise (+-15% run to run), 2
 * and 4 ahead at K = 8192 in most runs. */
#define TILED_SLICE_BYTES (25 * 1024)
/* Types that have plain panels too (the legacy ones, whose panels take decode
 * tokens) repack from this many tokens: the same bits either way (quant.h). */
#define TILED_MIN_TOKENS 16
#define TILED_PANELS 4
static size_t tiled_panel_size(const lm_quant_ops *ops, const lm_tensor *w) {
    return (size_t)(w->shape[1] / lm_dtype_block_size(w->dtype)) * ops->repack_block;
}
static int64_t tiled_panels(const lm_quant_ops *ops, const lm_tensor *w) {
    const size_t p = tiled_panel_size(ops, w), k = p ? TILED_BYTES / p : 1;
    return k < 1 ? 1 : k > TILED_PANELS ? TILED_PANELS : (int64_t)k;
}

/* a product of n tokens through the repacked panels (quant.h) */
static bool take_tiled(const lm_tensor *w, int64_t n) {
    const lm_quant_ops *ops = lm_quant_ops_get(w->dtype);
    return ops->repack && (!ops->panel || n >= TILED_MIN_TOKENS);
}

static bool gemm_bf16(const lm_tensor *w);

/* Several weights' rows laid end to end (a group's, split over the threads
 * as one matrix): the share [*a, *e) of rows [lo, hi) that falls to the
 * weight of out rows after base rows of the others; false when none */
static inline bool end_to_end(int64_t lo, int64_t hi, int64_t base, int64_t out, int64_t *a, int64_t *e) {
    *a = lo > base ? lo - base : 0;
    *e = hi - base < out ? hi - base : out;
    return *a < *e;
}

/* Prompts on AMX's bf16 tiles (quant.h: bf16_panel, lm_amx_bf16_gemm): the
 * quantized types with repacked panels (the K-quants and the legacy ones),
 * from AMX_MIN_TOKENS tokens of one session's prompt (llama.c mm, mm_group),
 * whose weights are dequantized to bf16 once per product. A thread
 * takes AMX_PANELS panels at a time, repacks each (its own or, interleaved,
 * repack_il) and dequantizes it, then every token passes them, 32 tokens by
 * two panels a block, 2048 weights of the row at a time (the chunk's slice in
 * L2 as the tokens pass; lm_amx_bf16_gemm). The qbuf: the activations in
 * bf16, then each thread's repacked panel and bf16 chunk. */
/* build/lumen_prefill_gemm, 2 threads, M = 64 against the VNNI panels: Q4_K
 * 464 vs 630 GFLOP/s at 2048 x 8192, 795 vs 676 at 8192 x 2048; Q4_0 861
 * and 910 against 600-800; from 96 the tiles ahead everywhere */
#define AMX_MIN_TOKENS 64
#define AMX_PANELS 8
/* a thread's repacked panel, then its chunk in bf16 */
static size_t amx_repacked_size(const lm_tensor *w) {
    const size_t blocks = (size_t)(w->shape[1] / lm_dtype_block_size(w->dtype));
    return (blocks * lm_quant_ops_get(w->dtype)->repack_block + 63) & ~(size_t)63;
}
static size_t amx_thread_size(const lm_tensor *w) {
    return amx_repacked_size(w) + (size_t)AMX_PANELS * (size_t)w->shape[1] * 2 * LM_PANEL_ROWS;
}
static size_t amx_x_size(const lm_tensor *w, int64_t n) { return ((size_t)n * (size_t)w->shape[1] * 2 + 63) & ~(size_t)63; }

bool lm_matmul_prompt_amx(const lm_tensor *w, int64_t n) {
    const lm_quant_ops *ops = lm_quant_ops_get(w->dtype);
    return n >= AMX_MIN_TOKENS && ops && ops->bf16_panel && w->ndim == 2 && w->shape[0] % LM_PANEL_ROWS == 0 &&
           w->shape[1] % lm_dtype_block_size(w->dtype) == 0 &&
           (w->interleaved || (size_t)w->stride[0] == lm_dtype_row_size(w->dtype, w->shape[1]));
}

int64_t lm_matmul_amx_min(const lm_tensor *w) { return lm_matmul_prompt_amx(w, AMX_MIN_TOKENS) ? AMX_MIN_TOKENS : 0; }

static size_t amx_size(const lm_tensor *w, int64_t n, int threads) {
    if (!lm_matmul_prompt_amx(w, n)) return 0;
    return amx_x_size(w, n) + (size_t)(threads > 0 ? threads : 1) * amx_thread_size(w);
}

typedef struct {
    const lm_quant_ops *ops;
    int k;
    const char *w[LM_PANEL_GROUP];
    int64_t out[LM_PANEL_GROUP];
    float *y[LM_PANEL_GROUP];
    int64_t in, n;
    size_t row, repacked; /* the weights' row size; a thread's repacked panel (its scratch, then the chunk) */
    bool il;
    uint16_t *xb;
    char *scratch;
    size_t scratch_size;
    lm_pool_queue q;
} amx_job;

/* n activation rows of k to bf16 (the bf16 GEMM's and the AMX tiles'), by tokens over the pool */
typedef struct {
    const float *x;
    uint16_t *xb;
    int64_t n, k;
    lm_pool_queue q;
} bf16_rows_job;

static void bf16_rows(void *vctx, int ith, int nth) {
    bf16_rows_job *j = vctx;
    int64_t lo, hi;
    (void)ith;
    while (lm_pool_take(&j->q, j->n, 1, nth, &lo, &hi)) lm_f32_to_bf16_row(j->x + lo * j->k, j->xb + lo * j->k, (hi - lo) * j->k);
}

static void to_bf16(lm_pool *pool, const float *x, int64_t n, int64_t k, uint16_t *xb) {
    bf16_rows_job j = {.x = x, .xb = xb, .n = n, .k = k};
    lm_pool_run_dynamic(pool, bf16_rows, &j, &j.q);
}

/* rows [lo, hi) of weight i, a chunk of panels at a time */
static void amx_range(const amx_job *j, int i, int64_t lo, int64_t hi, char *scr) {
    uint16_t *wb = (uint16_t *)(scr + j->repacked);
    const lm_repack_fn repack = j->il ? j->ops->repack_il : j->ops->repack;
    const size_t ws = (size_t)j->in * LM_PANEL_ROWS;
    for (int64_t r0 = lo; r0 < hi; r0 += AMX_PANELS * LM_PANEL_ROWS) {
        const int64_t r1 = r0 + AMX_PANELS * LM_PANEL_ROWS < hi ? r0 + AMX_PANELS * LM_PANEL_ROWS : hi;
        for (int64_t r = r0; r < r1; r += LM_PANEL_ROWS) {
            repack(j->in, j->w[i] + (size_t)r * j->row, j->row, scr);
            j->ops->bf16_panel(j->in, scr, wb + (size_t)((r - r0) / LM_PANEL_ROWS) * ws);
        }
        lm_amx_bf16_gemm(j->in, j->n, j->xb, (size_t)j->in, wb, ws, (int)((r1 - r0) / LM_PANEL_ROWS), j->y[i] + r0,
                         (size_t)j->out[i]);
    }
}

static void amx_rows(void *vctx, int ith, int nth) {
    amx_job *j = vctx;
    int64_t total = 0, lo, hi, a, e;
    for (int i = 0; i < j->k; i++) total += j->out[i];
    while (lm_pool_take(&j->q, total, AMX_PANELS * LM_PANEL_ROWS, nth, &lo, &hi))
        for (int64_t i = 0, base = 0; i < j->k; base += j->out[i], i++)
            if (end_to_end(lo, hi, base, j->out[i], &a, &e)) amx_range(j, (int)i, a, e, j->scratch + (size_t)ith * j->scratch_size);
}

bool lm_matmul_amx(lm_pool *pool, const lm_tensor *const *w, int k, const float *x, int64_t n, float *const *y, void *qbuf) {
    if (k < 1 || k > LM_PANEL_GROUP) return false;
    for (int i = 0; i < k; i++)
        if (!lm_matmul_prompt_amx(w[i], n) || w[i]->dtype != w[0]->dtype || w[i]->shape[1] != w[0]->shape[1] ||
            w[i]->interleaved != w[0]->interleaved)
            return false;
    amx_job j = {.ops = lm_quant_ops_get(w[0]->dtype), .k = k, .in = w[0]->shape[1], .n = n,
                 .row = (size_t)w[0]->stride[0], .repacked = amx_repacked_size(w[0]), .il = w[0]->interleaved, .xb = qbuf,
                 .scratch = (char *)qbuf + amx_x_size(w[0], n), .scratch_size = amx_thread_size(w[0])};
    for (int i = 0; i < k; i++) j.w[i] = w[i]->data, j.out[i] = w[i]->shape[0], j.y[i] = y[i];
    to_bf16(pool, x, n, j.in, j.xb);
    lm_pool_run_dynamic(pool, amx_rows, &j, &j.q);
    return true;
}

size_t lm_matmul_qbuf_size(const lm_tensor *w, int64_t n, int threads) {
    const lm_quant_ops *ops = lm_quant_ops_get(w->dtype);
    size_t q = qrows_size(ops, w, n) + packed_size(ops, w, n);
    if (take_tiled(w, n)) q += (size_t)(threads > 0 ? threads : 1) * (size_t)tiled_panels(ops, w) * tiled_panel_size(ops, w);
    /* or the activations in bf16, for the bf16 GEMM */
    size_t b = gemm_bf16(w) ? (size_t)n * (size_t)w->shape[1] * sizeof(uint16_t) : 0;
    if (amx_size(w, n, threads) > b) b = amx_size(w, n, threads);
    return q > b ? q : b;
}

void lm_matmul(lm_pool *pool, const lm_tensor *w, const float *x, int64_t n, float *y, void *qbuf) {
    if (w->interleaved) { /* its rows exist only as panels */
        lm_matmul_panel(pool, w, x, n, y, qbuf);
        return;
    }
    mm_job j = mm_job_for(w, x, n, y);
    if (j.ops->vec_dot_type == LM_F32) {
        j.xq = (char *)x;
    } else {
        j.xq = qbuf;
        lm_pool_run_dynamic(n >= 4 ? pool : NULL, quantize_rows, &j, &j.q);
    }
    lm_pool_run(pool, mm_rows, &j);
}

/* Panels (quant.h): each thread takes its rows in chunks that stay in cache
 * while every token of the batch passes them, 16 rows by up to 32 tokens a
 * call; rows beyond a multiple of 16 go through vec_dot. The first token pass
 * prefetches the next panel's rows (within the thread's share): a decode step
 * streams the weights from memory once, and the hardware prefetcher does not
 * follow interleaved rows (SmolLM2 decode on one thread, 8-row panels: 66-75
 * tok/s without, ~105 with, the single-row kernel ~100). Two panels ahead
 * was no faster. */
#define PANEL_CHUNK 64
#define PANEL_PREFETCH LM_PANEL_ROWS

/* rows [lo, hi) beyond the last whole panel: one row and one token at a time */
static void rest_rows(const mm_job *j, const char *w, int64_t out, float *y, int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++)
        for (int64_t t = 0; t < j->n; t++) j->ops->vec_dot(j->in, &y[t * out + r], w + r * j->w_row, j->xq + t * j->x_row);
}

/* rows [lo, hi) of one weight (w, out rows, into y) through its repacked
 * panels, in chunks that the thread's scratch rp holds: each chunk's panels
 * repacked once, then every token passes them */
static void tiled_range(const mm_job *j, const char *w, int64_t out, float *y, int64_t lo, int64_t hi, char *rp) {
    const int64_t full = out / LM_PANEL_ROWS * LM_PANEL_ROWS, chunk = j->rp_chunk * LM_PANEL_ROWS;
    for (int64_t r0 = lo; r0 < hi; r0 += chunk) {
        const int64_t r1 = r0 + chunk < hi ? r0 + chunk : hi, rt = r1 < full ? r1 : full;
        const lm_repack_fn repack = j->il ? j->ops->repack_il : j->ops->repack;
        for (int64_t r = r0; r < rt; r += LM_PANEL_ROWS)
            repack(j->in, w + r * j->w_row, j->w_row, rp + (size_t)((r - r0) / LM_PANEL_ROWS) * j->rp_panel);
        const int64_t bs = lm_dtype_block_size(j->wt), nb = j->in / bs, bytes = (int64_t)j->ops->repack_block;
        const int64_t slice = TILED_SLICE_BYTES / bytes > 1 ? TILED_SLICE_BYTES / bytes : 1;
        for (int64_t t = 0; t < j->n; t += LM_PANEL_TOKENS) {
            const int nt = (int)(j->n - t < LM_PANEL_TOKENS ? j->n - t : LM_PANEL_TOKENS);
            const char *yp = j->pk + (size_t)(t * j->pk_nb) * j->pk_rec;
            const size_t ys = (size_t)nt * j->pk_rec;
            for (int64_t i = 0; i < nb; i += slice) {
                const int64_t m = nb - i < slice ? nb - i : slice;
                for (int64_t r = r0; r < rt; r += LM_PANEL_ROWS)
                    j->ops->tiled(m * bs, nt, y + t * out + r, (size_t)out,
                                  rp + (size_t)((r - r0) / LM_PANEL_ROWS) * j->rp_panel + (size_t)(i * bytes),
                                  yp + (size_t)i * ys, ys, i > 0);
            }
        }
        rest_rows(j, w, out, y, rt > r0 ? rt : r0, r1);
    }
}

/* rows [lo, hi) of one weight (w, out rows, into y), the activations of job j */
static void panel_range(const mm_job *j, const char *w, int64_t out, float *y, int64_t lo, int64_t hi) {
    const int64_t rp = out / LM_PANEL_ROWS * LM_PANEL_ROWS;
    const lm_panel_fn panel = j->il ? j->ops->panel_il : j->ops->panel;
    for (int64_t r0 = lo; r0 < hi; r0 += PANEL_CHUNK) {
        const int64_t r1 = r0 + PANEL_CHUNK < hi ? r0 + PANEL_CHUNK : hi, rt = r1 < rp ? r1 : rp;
        for (int64_t t = 0; t < j->n; t += LM_PANEL_TOKENS) {
            const int nt = (int)(j->n - t < LM_PANEL_TOKENS ? j->n - t : LM_PANEL_TOKENS);
            for (int64_t r = r0; r < rt; r += LM_PANEL_ROWS) {
                const char *pf = t == 0 && r + PANEL_PREFETCH + LM_PANEL_ROWS <= rp ? w + (r + PANEL_PREFETCH) * j->w_row : NULL;
                panel(j->in, nt, y + t * out + r, (size_t)out, w + r * j->w_row, j->w_row,
                              j->pk + (size_t)(t * j->pk_nb) * j->pk_rec, (size_t)nt * j->pk_rec, pf);
            }
        }
        rest_rows(j, w, out, y, rt > r0 ? rt : r0, r1);
    }
}

/* rows [lo, hi) of an interleaved K-quant weight (quant.h), fewer tokens than
 * TILED_MIN_TOKENS (more repack, tiled_range): tiled_il straight on its
 * super-blocks, nothing repacked, a panel at a time, a super-block at
 * a time (2.3-3.4 KB: in L1 while the passes of tokens go by); each asks for
 * the same super-block of the next panel (within the thread's rows) into L2,
 * a line or two beside each line it reads (tiled_il's pf), as the panels of a
 * decode step do (lm_pf): the weights stream from memory. (The whole next
 * panel asked for at once, 360 lines, stalled on the fill buffers: 17% of a
 * one-thread decode's time; a super-block's share at once before each call:
 * the 8B Q4_K_M decode on one thread 1.01-1.10x slower than spread through
 * it.) */
static void il_range(const mm_job *j, const char *w, int64_t out, float *y, int64_t lo, int64_t hi) {
    const int64_t bs = lm_dtype_block_size(j->wt), nb = j->in / bs;
    const size_t sb = LM_PANEL_ROWS * (j->w_row / (size_t)nb); /* one super-block of the panel's rows */
    for (int64_t r = lo; r < hi; r += LM_PANEL_ROWS) {
        const char *p = w + r * j->w_row, *next = r + 2 * LM_PANEL_ROWS <= hi ? p + LM_PANEL_ROWS * j->w_row : NULL;
        for (int64_t i = 0; i < nb; i++) {
            for (int64_t t = 0; t < j->n; t += LM_PANEL_TOKENS) {
                const int nt = (int)(j->n - t < LM_PANEL_TOKENS ? j->n - t : LM_PANEL_TOKENS);
                const size_t ys = (size_t)nt * j->pk_rec;
                j->ops->tiled_il(bs, nt, y + t * out + r, (size_t)out, p + (size_t)i * sb,
                                 j->pk + (size_t)(t * j->pk_nb) * j->pk_rec + (size_t)i * ys, ys, i > 0,
                                 next && t == 0 ? next + (size_t)i * sb : NULL);
            }
        }
    }
}

/* thread ith's repacked panels */
static char *scratch(const mm_job *j, int ith) { return j->rp + (size_t)ith * (size_t)j->rp_chunk * j->rp_panel; }

/* rows [lo, hi) of one weight by whichever panels it takes */
static void rows_range(const mm_job *j, const char *w, int64_t out, float *y, int64_t lo, int64_t hi, int ith) {
    if (j->il && j->ops->tiled_il && j->n < TILED_MIN_TOKENS) il_range(j, w, out, y, lo, hi);
    else if (j->rp) tiled_range(j, w, out, y, lo, hi, scratch(j, ith));
    else panel_range(j, w, out, y, lo, hi);
}

static void panel_rows(void *vctx, int ith, int nth) {
    mm_job *j = vctx;
    int64_t lo, hi;
    while (lm_pool_take(&j->q, j->out, LM_PANEL_ROWS, nth, &lo, &hi)) rows_range(j, j->w, j->out, j->y, lo, hi, ith);
}

/* Several weights of one type and width against the same activations: their
 * rows end to end, split over the threads as one matrix */
typedef struct {
    mm_job j;
    int k;
    const char *w[LM_PANEL_GROUP];
    int64_t out[LM_PANEL_GROUP];
    float *y[LM_PANEL_GROUP];
} group_job;

static void group_rows(void *vctx, int ith, int nth) {
    group_job *g = vctx;
    int64_t total = 0, lo, hi, a, e;
    for (int i = 0; i < g->k; i++) total += g->out[i];
    while (lm_pool_take(&g->j.q, total, LM_PANEL_ROWS, nth, &lo, &hi))
        for (int64_t i = 0, base = 0; i < g->k; base += g->out[i], i++)
            if (end_to_end(lo, hi, base, g->out[i], &a, &e)) rows_range(&g->j, g->w[i], g->out[i], g->y[i], a, e, ith);
}

bool lm_matmul_has_panel(const lm_tensor *w) {
    const lm_quant_ops *ops = lm_quant_ops_get(w->dtype);
    return ops && (ops->panel || ops->repack) && w->shape[1] % lm_dtype_block_size(w->dtype) == 0;
}

/* Prompts take the panels wherever a weight has them: the K-quants' repacked
 * panels against their tiles (two rows by four tokens, bit for bit the
 * single-row dots), build/lumen_prefill_gemm M = 512, 2048 x 8192, on an
 * Intel Xeon with AVX512-VNNI and no AMX: Q4_K 219 vs 86 GFLOP/s on one
 * thread, 436 vs 166 on two (the unrepacked panels they replace: 87, 128). */
bool lm_matmul_prompt_panel(const lm_tensor *w) { return lm_matmul_has_panel(w); }

/* the K-quants' single-row kernels give other bits than their panels, so a
 * matrix being interleaved (w->panels) decodes through the panels from its
 * first token: repacked per product until it is swapped for its interleaved
 * copy, then straight from that (il_range) */
bool lm_matmul_panel_decode(const lm_tensor *w) {
    return lm_matmul_has_panel(w) && (lm_quant_ops_get(w->dtype)->panel_decode || w->panels);
}

/* A panel product's job, its activations quantized and packed into qbuf
 * (and with repacked panels, tiled: the threads' scratch after them). */
static mm_job panel_job(lm_pool *pool, const lm_tensor *w, const float *x, int64_t n, float *y, void *qbuf, bool tiled) {
    mm_job j = mm_job_for(w, x, n, y);
    j.xq = qbuf;
    j.pk = (char *)qbuf + qrows_size(j.ops, w, n);
    j.pk_rec = lm_panel_record(w->dtype);
    j.pk_nb = j.in / lm_dtype_block_size(j.ops->vec_dot_type);
    if (tiled) {
        j.rp = j.pk + packed_size(j.ops, w, n);
        j.rp_panel = tiled_panel_size(j.ops, w);
        j.rp_chunk = tiled_panels(j.ops, w);
    }
    lm_pool_run_dynamic(n >= 4 ? pool : NULL, quantize_rows, &j, &j.q);
    return j;
}

bool lm_matmul_panel_group(lm_pool *pool, const lm_tensor *const *w, int k, const float *x, int64_t n,
                           float *const *y, void *qbuf) {
    if (k < 1 || k > LM_PANEL_GROUP) return false;
    for (int i = 0; i < k; i++)
        if (!lm_matmul_has_panel(w[i]) || w[i]->dtype != w[0]->dtype || w[i]->shape[1] != w[0]->shape[1] ||
            w[i]->stride[0] != w[0]->stride[0] || w[i]->shape[0] % LM_PANEL_ROWS || w[i]->interleaved != w[0]->interleaved)
            return false;
    group_job g = {.j = panel_job(pool, w[0], x, n, y[0], qbuf, take_tiled(w[0], n)), .k = k};
    for (int i = 0; i < k; i++) g.w[i] = w[i]->data, g.out[i] = w[i]->shape[0], g.y[i] = y[i];
    lm_pool_run_dynamic(pool, group_rows, &g, &g.j.q);
    return true;
}

void lm_matmul_panel(lm_pool *pool, const lm_tensor *w, const float *x, int64_t n, float *y, void *qbuf) {
    mm_job j = panel_job(pool, w, x, n, y, qbuf, take_tiled(w, n));
    lm_pool_run_dynamic(pool, panel_rows, &j, &j.q);
}

/* Interleaved weights (quant.h) */
static bool prompt_bf16(const lm_tensor *w);

/* not where a prompt would take the bf16 GEMM (AMX, Zen 4: K-quants), which
 * dequantizes the file's rows */
bool lm_matmul_can_interleave(const lm_tensor *w) {
    const lm_quant_ops *ops = lm_quant_ops_get(w->dtype);
    return ops && ops->interleave && !w->interleaved && !prompt_bf16(w) && w->ndim == 2 && w->shape[0] % LM_PANEL_ROWS == 0 &&
           w->shape[1] % lm_dtype_block_size(w->dtype) == 0 &&
           (size_t)w->stride[0] == lm_dtype_row_size(w->dtype, w->shape[1]);
}

typedef struct {
    const lm_tensor *w;
    char *dst;
    lm_interleave_fn interleave;
    const atomic_bool *stop;
    bool drop;
    lm_pool_queue q;
} il_job;

static void il_panels(void *vctx, int ith, int nth) {
    il_job *j = vctx;
    const size_t row = (size_t)j->w->stride[0];
    int64_t lo, hi;
    (void)ith;
    while (lm_pool_take(&j->q, j->w->shape[0], LM_PANEL_ROWS, nth, &lo, &hi))
        for (int64_t r = lo; r < hi && !(j->stop && atomic_load(j->stop)); r += LM_PANEL_ROWS) {
            j->interleave(j->w->shape[1], j->w->data + (size_t)r * row, row, j->dst + (size_t)r * row);
            if (j->drop) lm_drop_pages(j->w->data + (size_t)r * row, LM_PANEL_ROWS * row);
        }
}

lm_tensor *lm_matmul_interleave(lm_pool *pool, const lm_tensor *w, lm_storage *s, void *dst, const atomic_bool *stop,
                                bool drop) {
    if (!lm_matmul_can_interleave(w)) { lm_err("matmul: this weight cannot be interleaved on this CPU"); return NULL; }
    il_job j = {.w = w, .dst = dst, .interleave = lm_quant_ops_get(w->dtype)->interleave, .stop = stop, .drop = drop};
    lm_pool_run_dynamic(pool, il_panels, &j, &j.q);
    if (stop && atomic_load(stop)) return NULL;
    lm_tensor *t = lm_tensor_on_storage(s, dst, w->dtype, 2, w->shape);
    if (t) t->interleaved = t->panels = true;
    return t;
}

/* Prefill through oneDNN: each thread dequantizes its share of the weight rows
 * and multiplies the batch by them at once, while they are still in cache;
 * oneDNN's OpenMP is held to one thread inside (lm_sgemm_nt). In f32, or in
 * bf16 where oneDNN runs bf16 on the hardware (AVX512-BF16 here; AMX tiles on
 * CPUs that have them, untested by us) for quantized weights: the weights
 * dequantized to f32 and rounded to bf16 (round to nearest even), the
 * activations rounded once per product, the products summed in f32. Each
 * rounding is within 2^-9 of its value, so a dot differs from the exact dot
 * of the dequantized weights and f32 activations by under 2^-7 of the sum of
 * |w x| (spec/c/test_quant.c checks that bound). */
static bool gemm_bf16(const lm_tensor *w) {
    const lm_quant_ops *ops = lm_quant_ops_get(w->dtype);
    /* Q4_0, Q4_1, Q5_0, Q8_0: their integer panels are as fast as oneDNN's
     * bf16 on Zen 4 (bench/prefill_gemm.c) without the weights' conversion */
    if (!ops || ops->vec_dot_type == LM_F32 || ops->panel_decode || lm_cpu_isa() < LM_ISA_AVX512) return false;
    return lm_bgemm_impl() != NULL;
}

/* Where a prompt's tokens take the bf16 GEMM rather than the integer panels
 * (K-quants): where that GEMM outruns oneDNN's f32 (lm_bgemm_preferred), from
 * as many tokens as amortize the weights' conversion. bench/prefill_gemm.c,
 * M = 512 (else as said), 2048 x 8192, GFLOP/s GEMM vs panels: on a Zen 4
 * under load, one thread, Q4_K 31 vs 33 at 64 tokens, 18 vs 11 at 128; Q6_K
 * (its dequantization then 6x Q4_K's) 10 vs 13 at 128, 11 vs 9 at 256; quiet,
 * 192 vs 140. On an Intel Xeon with AVX512-BF16 and no AMX (quiet): oneDNN
 * bf16 75 vs f32 118 on one thread, Q4_K 66 vs 77 on the panels, and on two
 * 98 vs 143-163: no bf16 there (and the tiles, lm_matmul_prompt_panel). */
static bool prompt_bf16(const lm_tensor *w) { return lm_matmul_has_panel(w) && gemm_bf16(w) && lm_bgemm_preferred(); }

bool lm_matmul_prompt_gemm(const lm_tensor *w, int64_t n) {
    return !w->interleaved && n >= (w->dtype == LM_Q6_K ? 192 : 64) && prompt_bf16(w);
}

size_t lm_matmul_wbuf_size(const lm_tensor *w) {
    const size_t e = (size_t)w->shape[0] * (size_t)w->shape[1];
    if (lm_matmul_has_panel(w)) return prompt_bf16(w) ? e * sizeof(uint16_t) : 0;
    return gemm_bf16(w) ? e * sizeof(uint16_t) : e * sizeof(float);
}

typedef struct {
    const lm_tensor *w;
    const float *x;
    int64_t n;
    float *y;
    void *wbuf;
    uint16_t *xb; /* bf16: the activations */
    bool bf16;
    atomic_int failed;
    lm_pool_queue q;
} gemm_job;
#define GEMM_ROWS 256

/* rows [lo, hi): dequantized, then multiplied by the batch */
static void gemm_range(gemm_job *j, int64_t lo, int64_t hi) {
    const lm_quant_ops *ops = lm_quant_ops_get(j->w->dtype);
    const int64_t rows = j->w->shape[0], cols = j->w->shape[1];
    const char *wd = (const char *)j->w->data;
    float *wf = j->wbuf;
    uint16_t *wb = j->wbuf;
    if (j->bf16) {
        /* a row at a time through an f32 piece on the stack */
        const int64_t bs = lm_dtype_block_size(j->w->dtype), piece = 1024 / bs * bs;
        float tmp[1024];
        for (int64_t r = lo; r < hi; r++)
            for (int64_t c = 0; c < cols; c += piece) {
                const int64_t m = cols - c < piece ? cols - c : piece;
                ops->to_float(wd + r * j->w->stride[0] + lm_dtype_row_size(j->w->dtype, c), tmp, m);
                lm_f32_to_bf16_row(tmp, wb + r * cols + c, m);
            }
    } else {
        for (int64_t r = lo; r < hi; r++) ops->to_float(wd + r * j->w->stride[0], wf + r * cols, cols);
    }
    const lm_status st = j->bf16 ? lm_bgemm_nt(j->xb, j->n, cols, wb + lo * cols, hi - lo, j->y + lo, rows)
                                 : lm_sgemm_nt(j->x, j->n, cols, wf + lo * cols, hi - lo, j->y + lo, rows);
    if (st != LM_OK) atomic_store(&j->failed, 1);
}

/* in slices of GEMM_ROWS weight rows, handed out while the region runs (a
 * thread off its core does not hold the others), at fixed boundaries (the same
 * results whichever thread takes which); oneDNN's per-thread scratchpad (it
 * packs the weights) grows with the slice, and peak memory with it */
static void gemm_rows(void *vctx, int ith, int nth) {
    gemm_job *j = vctx;
    int64_t lo, hi;
    (void)ith;
    while (lm_pool_take(&j->q, j->w->shape[0], GEMM_ROWS, nth, &lo, &hi))
        for (int64_t r0 = lo; r0 < hi; r0 += GEMM_ROWS) gemm_range(j, r0, r0 + GEMM_ROWS < hi ? r0 + GEMM_ROWS : hi);
}

lm_status lm_matmul_gemm(lm_pool *pool, const lm_tensor *w, const float *x, int64_t n, float *y, void *wbuf, void *qbuf) {
    if (w->interleaved) return lm_err("matmul: an interleaved weight has no rows to dequantize (core/matmul.c)");
    gemm_job j = {.w = w, .x = x, .n = n, .y = y, .wbuf = wbuf, .xb = qbuf, .bf16 = gemm_bf16(w)};
    if (j.bf16) to_bf16(pool, x, n, w->shape[1], j.xb);
    lm_pool_run_dynamic(pool, gemm_rows, &j, &j.q);
    return atomic_load(&j.failed) ? LM_ERR : LM_OK;
}
