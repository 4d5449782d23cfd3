/* The llama family: llama (SmolLM2, Llama 2/3), qwen2, qwen3 and gemma3.
 *
 * One forward pass, readable top to bottom: embed -> for each layer
 * (norm, q/k/v, rope, attention over the KV cache, output, residual, norm,
 * gated FFN, residual) -> final norm -> logits of the last token. The family
 * members differ only in the switches of lm_hparams and optional tensors. */
#include "arch.h"
#include "../error.h"
#include "ops.h"
#include "quant.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

#define F32(t) ((const float *)(t)->data)

/* ---- loading ------------------------------------------------------------------ */

typedef struct { lm_model *m; char prefix[32]; } loader;

static lm_status get_u32(loader *L, const char *key, int32_t *out, bool required, int32_t def) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", L->prefix, key);
    if (!lm_gguf_find(L->m->gguf, full)) {
        if (required) return lm_err("missing key '%s'", full);
        *out = def;
        return LM_OK;
    }
    uint32_t v;
    if (lm_gguf_get_u32(L->m->gguf, full, &v)) return LM_ERR;
    if (v > (1u << 30)) return lm_err("key '%s' = %u is out of range", full, v);
    *out = (int32_t)v;
    return LM_OK;
}

static lm_status get_f32(loader *L, const char *key, float *out, float def) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", L->prefix, key);
    if (!lm_gguf_find(L->m->gguf, full)) { *out = def; return LM_OK; }
    return lm_gguf_get_f32(L->m->gguf, full, out);
}

/* Binds tensor `name` of shape [rows][cols] (cols == 0: a vector of `rows`). */
static lm_status bind(loader *L, lm_tensor **out, const char *name, int64_t rows, int64_t cols, bool required) {
    const lm_gguf_tensor *t = lm_gguf_find_tensor(L->m->gguf, name);
    *out = NULL;
    if (!t) return required ? lm_err("missing tensor '%s'", name) : LM_OK;
    bool vec = cols == 0;
    int64_t want0 = vec ? rows : cols, want1 = vec ? 1 : rows;
    if (t->ne[0] != want0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1)
        return lm_err("tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld] (GGUF order)",
                      name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                      (long long)t->ne[3], (long long)want0, (long long)want1);
    if (vec && t->type != LM_F32)
        return lm_err("tensor '%s' is %s; lumen expects f32 for norm weights and biases", name, lm_dtype_name(t->type));
    if (!vec) {
        const lm_quant_ops *ops = lm_quant_ops_get(t->type);
        if (!ops || !ops->vec_dot || !lm_quant_ops_get(ops->vec_dot_type) || !lm_quant_ops_get(ops->vec_dot_type)->from_float)
            return lm_err("tensor '%s' has type %s, which lumen cannot compute with yet", name, lm_dtype_name(t->type));
    }
    int64_t shape[2] = {want1, want0};
    *out = lm_tensor_on_storage(L->m->mapping, (void *)t->data, t->type, vec ? 1 : 2, vec ? &shape[1] : shape);
    return *out ? LM_OK : LM_ERR;
}

static lm_status llama_load(lm_model *m) {
    if (!m->gguf) return lm_err("%s: the %s family is read from GGUF files only", m->path, m->arch_name);
    loader L = {.m = m};
    lm_hparams *hp = &m->hp;
    snprintf(L.prefix, sizeof L.prefix, "%s", m->arch_name);
    if (!strcmp(m->arch_name, "llama")) hp->arch = LM_ARCH_LLAMA;
    else if (!strcmp(m->arch_name, "qwen2")) hp->arch = LM_ARCH_QWEN2;
    else if (!strcmp(m->arch_name, "qwen3")) hp->arch = LM_ARCH_QWEN3;
    else if (!strcmp(m->arch_name, "gemma3")) hp->arch = LM_ARCH_GEMMA3;
    else return lm_err("architecture '%s' is not supported (supported: llama, qwen2, qwen3, gemma3)", m->arch_name);

    if (get_u32(&L, "block_count", &hp->n_layer, true, 0) ||
        get_u32(&L, "context_length", &hp->n_ctx_train, false, 2048) ||
        get_u32(&L, "embedding_length", &hp->n_embd, true, 0) ||
        get_u32(&L, "feed_forward_length", &hp->n_ff, true, 0) ||
        get_u32(&L, "attention.head_count", &hp->n_head, true, 0))
        return LM_ERR;
    if (get_u32(&L, "attention.head_count_kv", &hp->n_head_kv, false, hp->n_head)) return LM_ERR;
    if (hp->n_layer < 1 || hp->n_embd < 1 || hp->n_head < 1 || hp->n_head_kv < 1 || hp->n_ff < 1)
        return lm_err("hyperparameters out of range (layers %d, embd %d, heads %d/%d, ff %d)",
                      hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->n_ff);
    if (hp->n_head % hp->n_head_kv)
        return lm_err("head_count %d is not a multiple of head_count_kv %d", hp->n_head, hp->n_head_kv);
    if (get_u32(&L, "attention.key_length", &hp->head_dim, false, hp->n_embd / hp->n_head)) return LM_ERR;
    if (hp->head_dim < 2 || hp->head_dim > 1024 || hp->head_dim % 2)
        return lm_err("head dimension %d is out of range", hp->head_dim);
    if (get_u32(&L, "rope.dimension_count", &hp->n_rot, false, hp->head_dim)) return LM_ERR;
    if (hp->n_rot < 2 || hp->n_rot > hp->head_dim || hp->n_rot % 2)
        return lm_err("rope dimension %d is out of range for head dimension %d", hp->n_rot, hp->head_dim);
    if (get_f32(&L, "attention.layer_norm_rms_epsilon", &hp->norm_eps, 1e-5f) ||
        get_f32(&L, "rope.freq_base", &hp->rope_base, 10000.0f))
        return LM_ERR;
    hp->rope_scale = 1.0f;
    float factor = 1.0f;
    if (get_f32(&L, "rope.scaling.factor", &factor, 1.0f)) return LM_ERR;
    if (factor > 0) hp->rope_scale = 1.0f / factor;
    hp->rope_mode = hp->arch == LM_ARCH_LLAMA ? LM_ROPE_NORM : LM_ROPE_NEOX;
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    if (hp->arch == LM_ARCH_GEMMA3) {
        hp->embd_scale = true;
        hp->gelu = true;
        if (get_u32(&L, "attention.sliding_window", &hp->sliding_window, false, 0)) return LM_ERR;
        hp->swa_period = 6;        /* five local layers, then one global */
        hp->rope_base_local = 10000.0f;
        if (get_f32(&L, "rope.freq_base_swa", &hp->rope_base_local, 10000.0f)) return LM_ERR;
    }

    const int64_t E = hp->n_embd, F = hp->n_ff, HD = hp->head_dim;
    const int64_t QD = (int64_t)hp->n_head * HD, KVD = (int64_t)hp->n_head_kv * HD;
    const lm_gguf_tensor *emb = lm_gguf_find_tensor(m->gguf, "token_embd.weight");
    if (!emb) return lm_err("missing tensor 'token_embd.weight'");
    if (emb->ne[1] < 1 || emb->ne[1] > (1 << 24)) return lm_err("token_embd.weight has an implausible vocabulary size %lld", (long long)emb->ne[1]);
    hp->n_vocab = (int32_t)emb->ne[1];
    if (bind(&L, &m->tok_embd, "token_embd.weight", hp->n_vocab, E, true) ||
        bind(&L, &m->output_norm, "output_norm.weight", E, 0, true) ||
        bind(&L, &m->output, "output.weight", hp->n_vocab, E, false) ||
        bind(&L, &m->rope_freqs, "rope_freqs.weight", hp->n_rot / 2, 0, false)) /* Llama 3's rope scaling */
        return LM_ERR;
    if (!m->output) m->output = lm_tensor_retain(m->tok_embd); /* tied embeddings */
    for (int i = 0; m->rope_freqs && i < hp->n_rot / 2; i++) {
        const float f = F32(m->rope_freqs)[i];
        if (!(f > 0 && isfinite(f)))
            return lm_err("%s: rope_freqs.weight[%d] = %g; the RoPE frequency factors must be positive and finite", m->path, i, f);
    }

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return lm_err("out of memory");
    for (int i = 0; i < hp->n_layer; i++) {
        lm_layer *l = &m->layers[i];
        char n[96];
#define B(field, suffix, rows, cols, req) \
        (snprintf(n, sizeof n, "blk.%d." suffix, i), bind(&L, &l->field, n, rows, cols, req))
        if (B(attn_norm, "attn_norm.weight", E, 0, true) || B(wq, "attn_q.weight", QD, E, true) ||
            B(wk, "attn_k.weight", KVD, E, true) || B(wv, "attn_v.weight", KVD, E, true) ||
            B(wo, "attn_output.weight", E, QD, true) ||
            B(bq, "attn_q.bias", QD, 0, false) || B(bk, "attn_k.bias", KVD, 0, false) ||
            B(bv, "attn_v.bias", KVD, 0, false) ||
            B(q_norm, "attn_q_norm.weight", HD, 0, hp->arch == LM_ARCH_QWEN3 || hp->arch == LM_ARCH_GEMMA3) ||
            B(k_norm, "attn_k_norm.weight", HD, 0, hp->arch == LM_ARCH_QWEN3 || hp->arch == LM_ARCH_GEMMA3) ||
            B(post_attn_norm, "post_attention_norm.weight", E, 0, hp->arch == LM_ARCH_GEMMA3) ||
            B(ffn_norm, "ffn_norm.weight", E, 0, true) || B(w_gate, "ffn_gate.weight", F, E, true) ||
            B(w_up, "ffn_up.weight", F, E, true) || B(w_down, "ffn_down.weight", E, F, true) ||
            B(post_ffn_norm, "post_ffw_norm.weight", E, 0, hp->arch == LM_ARCH_GEMMA3))
            return LM_ERR;
#undef B
    }
    return LM_OK;
}

/* ---- forward pass --------------------------------------------------------------- */

/* A batch of tokens of sessions (model.h) */
typedef lm_batch batch;

typedef struct {
    const batch *b;
    int layer;
    lm_pool_queue q;
} attn_job;

/* The positions token t attends to: [*t0, pos + 1) of its sequence's cache. */
static int32_t attn_span(const batch *b, const lm_hparams *hp, bool local, int32_t t, int32_t *t0) {
    int32_t pos = b->pos[t];
    *t0 = local && pos + 1 > hp->sliding_window ? pos + 1 - hp->sliding_window : 0;
    return pos + 1 - *t0;
}

/* The cache rows token t will read, all kv heads, to L2: one contiguous run
 * per K and V that the hardware prefetcher, left alone, would only find in
 * pieces (the kernel reads a kv head's part of each row). Asked for while the
 * token before it computes; worth it between sequences of a batched step
 * (a prompt's next token reads the rows this one just read). */
static void prefetch_kv(const batch *b, const lm_hparams *hp, bool local, int layer, int32_t t) {
    int32_t t0;
    const int32_t n = attn_span(b, hp, local, t, &t0);
    const lm_session *sq = b->seq[t];
    const int64_t off = ((int64_t)layer * sq->n_ctx + t0) * (int64_t)sq->kv_row;
    const char *k = sq->k_cache + off, *v = sq->v_cache + off;
    const int64_t bytes = (int64_t)n * (int64_t)sq->kv_row;
    for (int64_t o = 0; o < bytes; o += 64) {
        __builtin_prefetch(k + o, 0, 2);
        __builtin_prefetch(v + o, 0, 2);
    }
}

/* A task is one token's query heads that share a kv head (K and V rows read
 * once for them), or, when there are too few such tasks to keep every thread
 * busy (a one-token decode), one query head: a head's result is the same bits
 * either way (lm_attend_group_f16). A batch with enough tokens (a prompt)
 * takes them LM_ATTEND_TOKENS at a time instead: a task is a kv head's query
 * heads for those tokens, and each run of them that are one sequence's
 * consecutive positions goes through lm_attend_tokens_* (each K row
 * converted once for the run; each token's result the same bits as alone).
 * The threads take tasks as they go (lm_pool_run_dynamic): their costs
 * differ (a prompt's late tokens read many more positions than its early
 * ones, a batched step's sequences have different lengths), and a thread
 * that is late does not hold the others. */
static void attn_rows(void *vctx, int ith, int nth) {
    attn_job *j = vctx;
    const batch *b = j->b;
    lm_session *ws = b->ws;
    const lm_hparams *hp = &ws->model->hp;
    const int HD = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    const int64_t QD = (int64_t)hp->n_head * HD;
    const bool local = hp->sliding_window > 0 && hp->swa_period > 0 && (j->layer + 1) % hp->swa_period != 0;
    const int64_t cap = lm_attend_scratch(group, ws->n_ctx); /* the thread's scores (core/session.c) */
    float *scores = ws->scores + (int64_t)ith * cap;
    const int64_t tiles = (b->n + LM_ATTEND_TOKENS - 1) / LM_ATTEND_TOKENS;
    const bool tiled = b->n > 1 && tiles * hp->n_head_kv >= 4 * nth;
    const int per = tiled || (int64_t)b->n * hp->n_head_kv >= 4 * nth ? group : 1; /* query heads per task */
    const int tasks = hp->n_head / per;                                            /* per token or tile */
    int64_t lo, hi;
    while (lm_pool_take(&j->q, (tiled ? tiles : (int64_t)b->n) * tasks, 1, nth, &lo, &hi)) {
        for (int64_t u = lo; u < hi; u++) {
            const int task = (int)(u % tasks), h = task * per;
            const int32_t span = tiled ? LM_ATTEND_TOKENS : 1;
            int32_t t = (int32_t)(u / tasks) * span;
            const int32_t end = t + span < b->n ? t + span : b->n;
            if (!tiled && task == 0 && t + 1 < b->n && b->seq[t + 1] != b->seq[t] && u + tasks < hi)
                prefetch_kv(b, hp, local, j->layer, t + 1); /* this piece's next token, another sequence */
            while (t < end) {
                /* a run: one sequence's consecutive positions from one span start, as many as the scores hold */
                const lm_session *sq = b->seq[t];
                int32_t t0, t0n;
                attn_span(b, hp, local, t, &t0);
                int ntok = 1;
                while (t + ntok < end && b->seq[t + ntok] == sq && b->pos[t + ntok] == b->pos[t] + ntok &&
                       (attn_span(b, hp, local, t + ntok, &t0n), t0n == t0) &&
                       lm_attend_tokens_scores(ntok + 1, per, (int64_t)b->pos[t] + ntok + 1 - t0) <= cap)
                    ntok++;
                if (tiled && task == 0 && t + ntok < end && b->seq[t + ntok] != sq)
                    prefetch_kv(b, hp, local, j->layer, t + ntok); /* the tile's next run, another sequence */
                const char *kc = sq->k_cache + (int64_t)j->layer * sq->n_ctx * (int64_t)sq->kv_row;
                const char *vc = sq->v_cache + (int64_t)j->layer * sq->n_ctx * (int64_t)sq->kv_row;
                const int64_t kvo = (int64_t)lm_kv_row_bytes(sq->kv_type, (int64_t)(h / group) * HD);
                float *o = ws->xb2 + t * QD + (int64_t)h * HD;
                const float *qh = ws->q + t * QD + (int64_t)h * HD;
                if (sq->kv_type == LM_Q8_0)
                    lm_attend_tokens_q8_0(o, qh, ntok, QD, per, kc + kvo, vc + kvo, (int64_t)sq->kv_row, HD, t0,
                                          b->pos[t] + 1, hp->attn_scale, scores);
                else
                    lm_attend_tokens_f16(o, qh, ntok, QD, per, (const uint16_t *)(kc + kvo), (const uint16_t *)(vc + kvo),
                                         sq->kv_dim, HD, t0, b->pos[t] + 1, hp->attn_scale, scores);
                t += ntok;
            }
        }
    }
}

/* Tokens of a prompt (of two or more) go through the integer panels where the
 * weight has them, and so do decode tokens where the panel at one token is as
 * fast as the single-row kernel (lm_matmul_panel_decode: Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0) or the weight is being interleaved (the K-quants, core/model.c);
 * other decode tokens (and one-token prompts) through the quantized dot
 * products and their tiles. Either way each comes out the same whatever else
 * is in its pass: a prompt token as in `lumen generate`'s prefill, a decode
 * token as alone. A batch with both takes each run of one kind in turn. A
 * prompt (of one session) on weights whose panels oneDNN's bf16 GEMM outruns
 * (lm_matmul_prompt_gemm: the K-quants where oneDNN's bf16 outruns its f32) goes through it, and
 * one on AMX (lm_matmul_prompt_amx: weights with repacked panels, from 64 tokens) through its bf16 tiles. On
 * weights without panels, a prompt batch of lm_matmul_gemm_min tokens goes
 * through oneDNN's GEMM, and everything else (and any GEMM oneDNN refuses)
 * through the quantized dots. */
static void mm(const batch *b, const lm_tensor *w, const float *x, float *y) {
    lm_session *s = b->ws;
    lm_pool *pool = s->model->pool;
    if (b->gemm && b->prompt && b->prompt[0] && lm_matmul_amx(pool, &w, 1, x, b->n, &y, s->qbuf)) return;
    if (b->gemm && b->prompt && b->prompt[0] && lm_matmul_prompt_gemm(w, b->n) && s->wbuf &&
        lm_matmul_gemm(pool, w, x, b->n, y, s->wbuf, s->qbuf) == LM_OK) return;
    if (lm_matmul_panel_decode(w)) {
        lm_matmul_panel(pool, w, x, b->n, y, s->qbuf);
        return;
    }
    if (b->prompt && lm_matmul_prompt_panel(w)) {
        const int64_t in = w->shape[1], out = w->shape[0];
        for (int32_t t0 = 0, t1; t0 < b->n; t0 = t1) {
            for (t1 = t0 + 1; t1 < b->n && b->prompt[t1] == b->prompt[t0]; t1++) {}
            if (b->prompt[t0]) lm_matmul_panel(pool, w, x + t0 * in, t1 - t0, y + t0 * out, s->qbuf);
            else lm_matmul(pool, w, x + t0 * in, t1 - t0, y + t0 * out, s->qbuf);
        }
        return;
    }
    if (b->gemm && b->n >= lm_matmul_gemm_min(w) && s->wbuf &&
        lm_matmul_gemm(pool, w, x, b->n, y, s->wbuf, s->qbuf) == LM_OK) return;
    lm_matmul(pool, w, x, b->n, y, s->qbuf);
}

/* Weights that read the same activations (q, k, v; gate, up): where they all
 * take every token through the panels and qualify, one quantizing pass and one
 * pool run for all of them (the same bits as one at a time); else one by one. */
static void mm_group(const batch *b, const lm_tensor *const *w, float *const *y, int k, const float *x) {
    if (b->gemm && b->prompt && b->prompt[0] && lm_matmul_amx(b->ws->model->pool, w, k, x, b->n, y, b->ws->qbuf)) return;
    bool all = true;
    for (int i = 0; i < k; i++) all = all && lm_matmul_panel_decode(w[i]);
    if (all && lm_matmul_panel_group(b->ws->model->pool, w, k, x, b->n, y, b->ws->qbuf)) return;
    for (int i = 0; i < k; i++) mm(b, w[i], x, y[i]);
}

/* The output matrix, for the rows that want logits: through the panels where
 * its type takes every token through them (a batched decode step's logits
 * then come at the panels' speed, each row the same bits as alone), else the
 * quantized dots and their tiles (bit-identical to one row at a time). */
static void logits_mm(lm_pool *pool, const lm_tensor *w, const float *x, int64_t n, float *y, void *qbuf) {
    if (lm_matmul_panel_decode(w)) lm_matmul_panel(pool, w, x, n, y, qbuf);
    else lm_matmul(pool, w, x, n, y, qbuf);
}

/* The per-token work between the matrix products (norms, RoPE, the KV cache
 * store, the gated activation, residual adds), split over the pool by tokens
 * for a prompt batch; each token's arithmetic is the same whoever runs it. */
enum { ST_ATTN_NORM, ST_QK, ST_MID, ST_GATE, ST_OUT };
typedef struct { const batch *b; const lm_layer *l; int il, stage; float rope_base; lm_pool_queue q; } tok_job;

static void tok_stage(const tok_job *j, int32_t t0, int32_t t1) {
    const batch *b = j->b;
    lm_session *s = b->ws;
    const lm_hparams *hp = &s->model->hp;
    const lm_layer *l = j->l;
    const int64_t E = hp->n_embd, F = hp->n_ff, HD = hp->head_dim;
    const int64_t QD = (int64_t)hp->n_head * HD, KVD = s->kv_dim;
    for (int32_t t = t0; t < t1; t++) {
        switch (j->stage) {
        case ST_ATTN_NORM:
            lm_rmsnorm(s->xb + t * E, s->x + t * E, F32(l->attn_norm), E, hp->norm_eps);
            break;
        case ST_QK: {
            float *q = s->q + t * QD, *k = s->k + t * KVD;
            const float *rope_ff = s->model->rope_freqs ? F32(s->model->rope_freqs) : NULL;
            lm_session *sq = b->seq[t];
            if (l->bq) lm_add(q, F32(l->bq), QD);
            if (l->bk) lm_add(k, F32(l->bk), KVD);
            if (l->bv) lm_add(s->v + t * KVD, F32(l->bv), KVD);
            if (l->q_norm) for (int h = 0; h < hp->n_head; h++) lm_rmsnorm(q + h * HD, q + h * HD, F32(l->q_norm), HD, hp->norm_eps);
            if (l->k_norm) for (int h = 0; h < hp->n_head_kv; h++) lm_rmsnorm(k + h * HD, k + h * HD, F32(l->k_norm), HD, hp->norm_eps);
            lm_rope(q, hp->n_head, (int)HD, hp->n_rot, b->pos[t], j->rope_base, hp->rope_scale, rope_ff, hp->rope_mode);
            lm_rope(k, hp->n_head_kv, (int)HD, hp->n_rot, b->pos[t], j->rope_base, hp->rope_scale, rope_ff, hp->rope_mode);
            int64_t at = ((int64_t)j->il * sq->n_ctx + b->pos[t]) * (int64_t)sq->kv_row;
            lm_kv_store_row(sq->kv_type, k, sq->k_cache + at, KVD);
            lm_kv_store_row(sq->kv_type, s->v + t * KVD, sq->v_cache + at, KVD);
            break;
        }
        case ST_MID:
            if (l->post_attn_norm) lm_rmsnorm(s->xb + t * E, s->xb + t * E, F32(l->post_attn_norm), E, hp->norm_eps);
            lm_add(s->x + t * E, s->xb + t * E, E);
            lm_rmsnorm(s->xb + t * E, s->x + t * E, F32(l->ffn_norm), E, hp->norm_eps);
            break;
        case ST_GATE:
            if (hp->gelu) lm_geglu(s->hb + t * F, s->hb2 + t * F, F);
            else lm_swiglu(s->hb + t * F, s->hb2 + t * F, F);
            break;
        case ST_OUT:
            if (l->post_ffn_norm) lm_rmsnorm(s->xb + t * E, s->xb + t * E, F32(l->post_ffn_norm), E, hp->norm_eps);
            lm_add(s->x + t * E, s->xb + t * E, E);
            break;
        }
    }
}

static void tok_rows(void *vctx, int ith, int nth) {
    tok_job *j = vctx;
    int64_t lo, hi;
    (void)ith;
    while (lm_pool_take(&j->q, j->b->n, 1, nth, &lo, &hi)) tok_stage(j, (int32_t)lo, (int32_t)hi);
}

/* Runs one stage for every token: on the pool for a prompt batch, inline for a
 * few tokens (a decode step), where waking the workers costs more than it saves. */
static void per_token(const batch *b, const lm_layer *l, int il, int stage, float rope_base) {
    tok_job j = {.b = b, .l = l, .il = il, .stage = stage, .rope_base = rope_base};
    if (b->n >= 8) lm_pool_run_dynamic(b->ws->model->pool, tok_rows, &j, &j.q);
    else tok_stage(&j, 0, b->n);
}

/* logits: where the logits of the n_out rows out_rows[] go (n_out rows of
 * n_vocab), or NULL for only the last token's, into ws->logits. */
static lm_status forward(const batch *b, const int32_t *tokens, const int32_t *out_rows, int32_t n_out, float *logits) {
    lm_session *s = b->ws;
    lm_model *m = s->model;
    const lm_hparams *hp = &m->hp;
    lm_pool *pool = m->pool;
    const int32_t n = b->n;
    const int64_t E = hp->n_embd;

    /* embeddings: looked up, or given (an image's rows, used as they are: not scaled) */
    const lm_quant_ops *eops = lm_quant_ops_get(m->tok_embd->dtype);
    if (b->embd) memcpy(s->x, b->embd, (size_t)n * E * sizeof(float));
    for (int32_t t = 0; t < n && !b->embd; t++) {
        eops->to_float((const char *)m->tok_embd->data + (int64_t)tokens[t] * m->tok_embd->stride[0], s->x + t * E, E);
        if (hp->embd_scale) lm_scale(s->x + t * E, sqrtf((float)E), E);
    }

    for (int il = 0; il < hp->n_layer; il++) {
        const lm_layer *l = &m->layers[il];
        bool local = hp->sliding_window > 0 && hp->swa_period > 0 && (il + 1) % hp->swa_period != 0;
        float rope_base = local ? hp->rope_base_local : hp->rope_base;

        per_token(b, l, il, ST_ATTN_NORM, rope_base);
        mm_group(b, (const lm_tensor *[]){l->wq, l->wk, l->wv}, (float *[]){s->q, s->k, s->v}, 3, s->xb);
        per_token(b, l, il, ST_QK, rope_base);     /* biases, q/k norms, RoPE, into the KV cache */
        attn_job aj = {.b = b, .layer = il};
        lm_pool_run_dynamic(pool, attn_rows, &aj, &aj.q);
        mm(b, l->wo, s->xb2, s->xb);
        per_token(b, l, il, ST_MID, rope_base);    /* post-attention norm, residual, FFN norm */
        mm_group(b, (const lm_tensor *[]){l->w_gate, l->w_up}, (float *[]){s->hb, s->hb2}, 2, s->xb);
        per_token(b, l, il, ST_GATE, rope_base);   /* SiLU- or GELU-gated */
        mm(b, l->w_down, s->hb, s->xb);
        per_token(b, l, il, ST_OUT, rope_base);    /* post-FFN norm, residual */
    }

    if (!logits) { /* only the last token's logits are needed */
        lm_rmsnorm(s->xb, s->x + (int64_t)(n - 1) * E, F32(m->output_norm), E, hp->norm_eps);
        logits_mm(pool, m->output, s->xb, 1, s->logits, s->qbuf);
        return LM_OK;
    }
    for (int32_t i = 0; i < n_out; i++)
        lm_rmsnorm(s->xb + i * E, s->x + (int64_t)out_rows[i] * E, F32(m->output_norm), E, hp->norm_eps);
    logits_mm(pool, m->output, s->xb, n_out, logits, s->qbuf);
    return LM_OK;
}

static void llama_unload(lm_model *m) {
    if (m->layers) {
        for (int i = 0; i < m->hp.n_layer; i++) {
            lm_tensor **t = (lm_tensor **)&m->layers[i];
            for (size_t k = 0; k < sizeof(lm_layer) / sizeof(lm_tensor *); k++) lm_tensor_free(t[k]);
        }
        free(m->layers);
        m->layers = NULL;
    }
    lm_tensor_free(m->tok_embd);
    lm_tensor_free(m->output_norm);
    lm_tensor_free(m->output);
    lm_tensor_free(m->rope_freqs);
    m->tok_embd = m->output_norm = m->output = m->rope_freqs = NULL;
}

static const char *const llama_names[] = {"llama", "qwen2", "qwen3", "gemma3", NULL};

/* Sessions size their own activation buffers (session.c): no workspace here. */
const lm_arch_ops lm_arch_llama = {
    .family = "llama", .names = llama_names, .load = llama_load, .unload = llama_unload, .forward = forward,
};
