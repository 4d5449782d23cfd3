/* The BERT family of encoders (all-MiniLM-L6-v2 and its kin), read from a
 * Hugging Face directory (config.json + model.safetensors) or from a GGUF in
 * llama.cpp's `bert` layout.
 *
 * One encoder pass over many texts at once, readable top to bottom: the
 * tokens of all texts lie back to back (no padding), each attends only to its
 * own text's tokens. embed (word + position + type 0, LayerNorm) -> for each
 * layer (q/k/v in one GEMM, attention per text and head, output GEMM,
 * residual + LayerNorm, up GEMM + GELU, down GEMM, residual + LayerNorm) ->
 * pooling (mean or [CLS]) -> L2 normalization. The GEMMs run through oneDNN
 * in f32 (weights f16/bf16 in a file are widened once at load), each split
 * over the pool's threads by output columns. */
#include "arch.h"
#include "../error.h"
#include "ops.h"
#include "quant.h"

#include <cjson/cJSON.h>
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const float *wqkv, *bqkv;          /* [3E][E], [3E]: q, k and v fused at load */
    const float *wo, *bo, *ln1_w, *ln1_b;
    const float *wup, *bup, *wdown, *bdown, *ln2_w, *ln2_b;
} bert_layer;

typedef struct {
    const float *tok, *pos, *type, *ln_w, *ln_b;
    bert_layer *l;
    float eps;
    lm_owned owned;                    /* widened or fused copies */
} bert;

/* ---- loading ------------------------------------------------------------------ */

/* The names of a tensor in a GGUF (llama.cpp's) and in a Hugging Face checkpoint. */
typedef struct { const char *gguf, *hf; } tname;

/* f32 data of tensor n (layer il) of shape [rows][cols] (cols 0: a vector):
 * in place when the file holds aligned f32, else widened into a copy. */
static lm_status get(bert *b, lm_model *m, tname n, int il, int64_t rows, int64_t cols, const float **out) {
    char name[160];
    const lm_weights *w = m->weights;
    const char *pat = w->format == LM_WEIGHTS_GGUF ? n.gguf : n.hf;
    snprintf(name, sizeof name, pat, il);
    lm_weights_tensor t;
    bool found = lm_weights_find(w, name, &t);
    if (!found && w->format == LM_WEIGHTS_HF) {   /* checkpoints saved from BertForX prefix "bert." */
        char pre[sizeof name];
        snprintf(pre, sizeof pre, "bert.%.150s", name);
        if ((found = lm_weights_find(w, pre, &t))) memcpy(name, pre, sizeof name);
    }
    if (!found) return lm_err("%s: missing tensor '%s'", w->path, name);
    int64_t want_n = cols ? rows * cols : rows, numel = 1;
    for (int d = 0; d < t.ndim; d++) numel *= t.shape[d];
    bool shape_ok = cols ? t.ndim == 2 && t.shape[0] == rows && t.shape[1] == cols : numel == rows;
    if (!shape_ok || numel != want_n)
        return lm_err("%s: tensor '%s' has %d dims (%lld x %lld), expected [%lld%s%lld]", w->path, name, t.ndim,
                      (long long)t.shape[0], (long long)(t.ndim > 1 ? t.shape[1] : 1), (long long)rows,
                      cols ? ", " : "", (long long)(cols ? cols : 0));
    return lm_owned_f32(&b->owned, &t, want_n, w->path, name, out);
}

static lm_status key_int(lm_model *m, const char *gguf, const char *hf, int32_t *out, bool required, int32_t def) {
    int64_t v;
    if (lm_weights_int(m->weights, m->weights->format == LM_WEIGHTS_GGUF ? gguf : hf, &v, required, def)) return LM_ERR;
    if (v < 0 || v > (1 << 30)) return lm_err("%s: key '%s' = %lld is out of range", m->path, m->weights->format == LM_WEIGHTS_GGUF ? gguf : hf, (long long)v);
    *out = (int32_t)v;
    return LM_OK;
}

/* How sentence-transformers pools and normalizes (modules.json, 1_Pooling/config.json,
 * sentence_bert_config.json); without those files: mean pooling, normalized. */
static lm_status load_st_config(lm_model *m) {
    const char *dir = m->path;
    m->embed.pooling = LM_POOLING_MEAN;
    m->embed.normalize = 1;
    cJSON *mods = lm_json_file(dir, "modules.json", true);
    if (!mods) return LM_OK;
    m->embed.normalize = 0;
    const char *pool_dir = NULL;
    for (const cJSON *e = mods->child; e; e = e->next) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(e, "type"), *p = cJSON_GetObjectItemCaseSensitive(e, "path");
        if (!cJSON_IsString(ty)) continue;
        if (strstr(ty->valuestring, "Normalize")) m->embed.normalize = 1;
        if (strstr(ty->valuestring, "Pooling") && cJSON_IsString(p)) pool_dir = p->valuestring;
    }
    lm_status st = LM_OK;
    if (pool_dir) {
        char rel[512];
        snprintf(rel, sizeof rel, "%s/config.json", pool_dir);
        cJSON *pc = lm_json_file(dir, rel, false);
        if (!pc) st = LM_ERR;
        else {
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pc, "pooling_mode_cls_token"))) m->embed.pooling = LM_POOLING_CLS;
            else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pc, "pooling_mode_mean_tokens"))) m->embed.pooling = LM_POOLING_MEAN;
            else st = lm_err("%s/%s: lumen pools by mean or [CLS] token (pooling_mode_mean_tokens / pooling_mode_cls_token)", dir, rel);
            cJSON_Delete(pc);
        }
    }
    cJSON_Delete(mods);
    cJSON *sb = lm_json_file(dir, "sentence_bert_config.json", true);
    const cJSON *ml = cJSON_GetObjectItemCaseSensitive(sb, "max_seq_length");
    if (cJSON_IsNumber(ml) && ml->valuedouble >= 2 && ml->valuedouble < m->hp.n_ctx_train)
        m->embed.max_tokens = (int32_t)ml->valuedouble;
    cJSON_Delete(sb);
    return st;
}

static lm_status load_gguf_config(lm_model *m) {
    int32_t pooling, normalize, max_len;
    if (key_int(m, "bert.pooling_type", NULL, &pooling, false, LM_POOLING_MEAN) ||
        key_int(m, "lumen.embed.normalize", NULL, &normalize, false, 1) ||
        key_int(m, "lumen.embed.max_seq_length", NULL, &max_len, false, m->hp.n_ctx_train))
        return LM_ERR;
    if (pooling != LM_POOLING_MEAN && pooling != LM_POOLING_CLS)
        return lm_err("%s: bert.pooling_type %d: lumen pools by mean (1) or [CLS] (2)", m->path, pooling);
    m->embed.pooling = pooling;
    m->embed.normalize = normalize != 0;
    if (max_len >= 2 && max_len < m->hp.n_ctx_train) m->embed.max_tokens = max_len;
    return LM_OK;
}

static void bert_unload(lm_model *m) {
    bert *b = m->arch_state;
    if (!b) return;
    lm_owned_free(&b->owned);
    free(b->l);
    free(b);
    m->arch_state = NULL;
}

static lm_status bert_load(lm_model *m) {
    lm_hparams *hp = &m->hp;
    bert *b = calloc(1, sizeof *b);
    if (!b) return lm_err("out of memory");
    m->arch_state = b;
    if (key_int(m, "bert.block_count", "num_hidden_layers", &hp->n_layer, true, 0) ||
        key_int(m, "bert.embedding_length", "hidden_size", &hp->n_embd, true, 0) ||
        key_int(m, "bert.feed_forward_length", "intermediate_size", &hp->n_ff, true, 0) ||
        key_int(m, "bert.attention.head_count", "num_attention_heads", &hp->n_head, true, 0) ||
        key_int(m, "bert.context_length", "max_position_embeddings", &hp->n_ctx_train, true, 0))
        return LM_ERR;
    double eps;
    if (lm_weights_float(m->weights, m->weights->format == LM_WEIGHTS_GGUF ? "bert.attention.layer_norm_epsilon" : "layer_norm_eps",
                         &eps, false, 1e-12))
        return LM_ERR;
    b->eps = (float)eps;
    if (m->weights->format == LM_WEIGHTS_HF) {
        char act[32];
        const char *a = lm_weights_str(m->weights, "hidden_act", act, sizeof act);
        if (a && strcmp(a, "gelu"))
            return lm_err("%s: hidden_act '%s': lumen's BERT runs \"gelu\" (erf)", m->weights->config_path, a);
    }
    if (hp->n_layer < 1 || hp->n_embd < 1 || hp->n_head < 1 || hp->n_embd % hp->n_head || hp->n_ff < 1 ||
        hp->n_ctx_train < 2 || hp->n_layer > 256)
        return lm_err("%s: hyperparameters out of range (layers %d, hidden %d, heads %d, ff %d, positions %d)", m->path,
                      hp->n_layer, hp->n_embd, hp->n_head, hp->n_ff, hp->n_ctx_train);
    hp->n_head_kv = hp->n_head;
    hp->head_dim = hp->n_embd / hp->n_head;
    hp->norm_eps = b->eps;
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);

    lm_weights_tensor emb;
    const char *emb_name = m->weights->format == LM_WEIGHTS_GGUF ? "token_embd.weight" : "embeddings.word_embeddings.weight";
    if (!lm_weights_find(m->weights, emb_name, &emb) && !lm_weights_find(m->weights, "bert.embeddings.word_embeddings.weight", &emb))
        return lm_err("%s: missing tensor '%s'", m->path, emb_name);
    if (emb.ndim != 2 || emb.shape[0] < 1 || emb.shape[0] > (1 << 24))
        return lm_err("%s: '%s' is not a [vocabulary, hidden] matrix", m->path, emb_name);
    hp->n_vocab = (int32_t)emb.shape[0];
    const int64_t E = hp->n_embd, F = hp->n_ff, V = hp->n_vocab;
    int32_t n_types = 2;
    if (key_int(m, "tokenizer.ggml.token_type_count", "type_vocab_size", &n_types, false, 2)) return LM_ERR;
    if (get(b, m, (tname){"token_embd.weight", "embeddings.word_embeddings.weight"}, 0, V, E, &b->tok) ||
        get(b, m, (tname){"position_embd.weight", "embeddings.position_embeddings.weight"}, 0, hp->n_ctx_train, E, &b->pos) ||
        get(b, m, (tname){"token_types.weight", "embeddings.token_type_embeddings.weight"}, 0, n_types < 1 ? 1 : n_types, E, &b->type) ||
        get(b, m, (tname){"token_embd_norm.weight", "embeddings.LayerNorm.weight"}, 0, E, 0, &b->ln_w) ||
        get(b, m, (tname){"token_embd_norm.bias", "embeddings.LayerNorm.bias"}, 0, E, 0, &b->ln_b))
        return LM_ERR;

    b->l = calloc((size_t)hp->n_layer, sizeof *b->l);
    if (!b->l) return lm_err("out of memory");
    for (int i = 0; i < hp->n_layer; i++) {
        bert_layer *l = &b->l[i];
        const float *q, *k, *v, *bq, *bk, *bv;
        if (get(b, m, (tname){"blk.%d.attn_q.weight", "encoder.layer.%d.attention.self.query.weight"}, i, E, E, &q) ||
            get(b, m, (tname){"blk.%d.attn_k.weight", "encoder.layer.%d.attention.self.key.weight"}, i, E, E, &k) ||
            get(b, m, (tname){"blk.%d.attn_v.weight", "encoder.layer.%d.attention.self.value.weight"}, i, E, E, &v) ||
            get(b, m, (tname){"blk.%d.attn_q.bias", "encoder.layer.%d.attention.self.query.bias"}, i, E, 0, &bq) ||
            get(b, m, (tname){"blk.%d.attn_k.bias", "encoder.layer.%d.attention.self.key.bias"}, i, E, 0, &bk) ||
            get(b, m, (tname){"blk.%d.attn_v.bias", "encoder.layer.%d.attention.self.value.bias"}, i, E, 0, &bv) ||
            get(b, m, (tname){"blk.%d.attn_output.weight", "encoder.layer.%d.attention.output.dense.weight"}, i, E, E, &l->wo) ||
            get(b, m, (tname){"blk.%d.attn_output.bias", "encoder.layer.%d.attention.output.dense.bias"}, i, E, 0, &l->bo) ||
            get(b, m, (tname){"blk.%d.attn_output_norm.weight", "encoder.layer.%d.attention.output.LayerNorm.weight"}, i, E, 0, &l->ln1_w) ||
            get(b, m, (tname){"blk.%d.attn_output_norm.bias", "encoder.layer.%d.attention.output.LayerNorm.bias"}, i, E, 0, &l->ln1_b) ||
            get(b, m, (tname){"blk.%d.ffn_up.weight", "encoder.layer.%d.intermediate.dense.weight"}, i, F, E, &l->wup) ||
            get(b, m, (tname){"blk.%d.ffn_up.bias", "encoder.layer.%d.intermediate.dense.bias"}, i, F, 0, &l->bup) ||
            get(b, m, (tname){"blk.%d.ffn_down.weight", "encoder.layer.%d.output.dense.weight"}, i, E, F, &l->wdown) ||
            get(b, m, (tname){"blk.%d.ffn_down.bias", "encoder.layer.%d.output.dense.bias"}, i, E, 0, &l->bdown) ||
            get(b, m, (tname){"blk.%d.layer_output_norm.weight", "encoder.layer.%d.output.LayerNorm.weight"}, i, E, 0, &l->ln2_w) ||
            get(b, m, (tname){"blk.%d.layer_output_norm.bias", "encoder.layer.%d.output.LayerNorm.bias"}, i, E, 0, &l->ln2_b))
            return LM_ERR;
        /* one GEMM for q, k and v: their rows end to end */
        float *wqkv = lm_owned_alloc(&b->owned, (size_t)(3 * E * E) * sizeof(float)),
              *bqkv = lm_owned_alloc(&b->owned, (size_t)(3 * E) * sizeof(float));
        if (!wqkv || !bqkv) return lm_err("out of memory");
        memcpy(wqkv, q, (size_t)(E * E) * sizeof(float));
        memcpy(wqkv + E * E, k, (size_t)(E * E) * sizeof(float));
        memcpy(wqkv + 2 * E * E, v, (size_t)(E * E) * sizeof(float));
        memcpy(bqkv, bq, (size_t)E * sizeof(float));
        memcpy(bqkv + E, bk, (size_t)E * sizeof(float));
        memcpy(bqkv + 2 * E, bv, (size_t)E * sizeof(float));
        l->wqkv = wqkv;
        l->bqkv = bqkv;
    }
    m->embed.max_tokens = hp->n_ctx_train;
    return m->weights->format == LM_WEIGHTS_GGUF ? load_gguf_config(m) : load_st_config(m);
}

/* ---- the encoder pass ----------------------------------------------------------- */

/* The workspace of a pass over T tokens, in floats: x, qkv, attention out, FFN
 * hidden, a product's output; then each thread's attention scores. */
static size_t ws_floats(const lm_model *m, int64_t T, int64_t *scores_per_thread) {
    const lm_hparams *hp = &m->hp;
    const int64_t L = hp->n_ctx_train;   /* a long text's head: Q, K, V^T, out, then L x L scores */
    *scores_per_thread = (lm_attend_head_scratch(L, hp->head_dim) + 15) & ~(int64_t)15;
    return (size_t)(T * (6 * (int64_t)hp->n_embd + hp->n_ff) + lm_pool_size(m->pool) * *scores_per_thread);
}

static size_t bert_workspace(const lm_model *m, int64_t n_tokens) {
    int64_t sp;
    return ws_floats(m, n_tokens, &sp) * sizeof(float);
}

typedef struct {
    const lm_model *m;
    const bert *b;
    const int32_t *tokens;
    const int64_t *off;
    int32_t n_seq;
    int64_t T;
    float *x, *qkv, *att, *h, *y, *scores;
    int64_t scores_per_thread;
    int layer, stage;
    lm_pool_queue q;
    atomic_int failed;
} pass;

/* y += bias, then GELU (erf) when gelu, over one row slice. erf as a
 * rational function on [-4, 4] (Eigen's fast erf; max abs error 4.2e-7
 * against erf, checked over [-10, 10]) in AVX2 + FMA, the build's baseline
 * (glibc's erff, one call per element, took 10% of a pass). */
static void bias_act(float *restrict y, const float *restrict bias, int64_t n, bool gelu) {
    static const float P[7] = {-2.72614225801306e-10f, 2.77068142495902e-08f, -2.10102402082508e-06f,
                               -5.69250639462346e-05f, -7.34990630326855e-04f, -2.95459980854025e-03f,
                               -1.60960333262415e-02f};
    static const float Q[5] = {-1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f,
                               -7.37332916720468e-03f, -1.42647390514189e-02f};
    int64_t c = 0;
    if (gelu) {
        const __m256 lo = _mm256_set1_ps(-4.f), hi = _mm256_set1_ps(4.f), half = _mm256_set1_ps(0.5f),
                     one = _mm256_set1_ps(1.f), rs2 = _mm256_set1_ps(0.70710678118654752f);
        for (; c + 8 <= n; c += 8) {
            __m256 v = _mm256_add_ps(_mm256_loadu_ps(y + c), _mm256_loadu_ps(bias + c));
            __m256 x = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, rs2), lo), hi), x2 = _mm256_mul_ps(x, x);
            __m256 p = _mm256_set1_ps(P[0]), q = _mm256_set1_ps(Q[0]);
            for (int i = 1; i < 7; i++) p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(P[i]));
            for (int i = 1; i < 5; i++) q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(Q[i]));
            __m256 erf = _mm256_div_ps(_mm256_mul_ps(x, p), q);
            _mm256_storeu_ps(y + c, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf)));
        }
    }
    for (; c < n; c++) {
        float v = y[c] + bias[c];
        if (gelu) {
            float x = v * 0.70710678118654752f;
            x = x < -4.f ? -4.f : x > 4.f ? 4.f : x;
            const float x2 = x * x;
            float p = P[0], q = Q[0];
            for (int i = 1; i < 7; i++) p = p * x2 + P[i];
            for (int i = 1; i < 5; i++) q = q * x2 + Q[i];
            v = 0.5f * v * (1.0f + x * p / q);
        }
        y[c] = v;
    }
}

/* A dot product in 16 lanes (a float sum in order does not vectorize). */
static inline float dot_lanes(const float *a, const float *b, int64_t n) {
    float acc[16] = {0};
    int64_t c = 0;
    for (; c + 16 <= n; c += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[c + l] * b[c + l];
    float s = 0;
    for (int l = 0; l < 16; l++) s += acc[l];
    for (; c < n; c++) s += a[c] * b[c];
    return s;
}

static void bias_only(void *ctx, float *y, const float *bias, int64_t n) { (void)ctx; bias_act(y, bias, n, false); }
static void bias_gelu(void *ctx, float *y, const float *bias, int64_t n) { (void)ctx; bias_act(y, bias, n, true); }

/* y[T][n] = in[T][k] W^T + bias (then GELU), on the pool. */
static lm_status linear(lm_pool *pool, pass *p, const float *in, int64_t k, const float *w, const float *bias, int64_t n,
                        float *out, bool gelu) {
    return lm_linear_f32(pool, in, p->T, k, w, bias, n, out, gelu ? bias_gelu : bias_only, NULL);
}

/* Per-token stages, the threads taking tokens as they go. */
enum { ST_EMBED, ST_LN1, ST_LN2 };

static void token_rows(void *ctx, int ith, int nth) {
    pass *p = ctx;
    const int64_t E = p->m->hp.n_embd;
    const bert *b = p->b;
    int64_t lo, hi;
    (void)ith;
    while (lm_pool_take(&p->q, p->T, 8, nth, &lo, &hi)) {
        for (int64_t t = lo; t < hi; t++) {
            float *x = p->x + t * E;
            if (p->stage == ST_EMBED) {
                int32_t s = 0, lo_s = 0, hi_s = p->n_seq;   /* the text of token t: the last offset <= t */
                while (lo_s < hi_s) { int32_t mid = (lo_s + hi_s) / 2; if (p->off[mid] <= t) { s = mid; lo_s = mid + 1; } else hi_s = mid; }
                const int64_t pos = t - p->off[s];
                const float *te = b->tok + (int64_t)p->tokens[t] * E, *pe = b->pos + pos * E;
                for (int64_t i = 0; i < E; i++) x[i] = te[i] + pe[i] + b->type[i];
                lm_layernorm(x, x, b->ln_w, b->ln_b, E, b->eps);
            } else {
                const bert_layer *l = &b->l[p->layer];
                const float *y = p->y + t * E;
                for (int64_t i = 0; i < E; i++) x[i] += y[i];
                if (p->stage == ST_LN1) lm_layernorm(x, x, l->ln1_w, l->ln1_b, E, b->eps);
                else lm_layernorm(x, x, l->ln2_w, l->ln2_b, E, b->eps);
            }
        }
    }
}

static void per_token(lm_pool *pool, pass *p, int stage) {
    p->stage = stage;
    lm_pool_run_dynamic(p->T >= 16 ? pool : NULL, token_rows, p, &p->q);
}

/* Long texts' heads go through two GEMMs (lm_attend_head_gemm). */
#define ATTN_GEMM_MIN 32

/* Attention: a task is one head of one text; its queries attend to that text's
 * keys only (the padding mask of a padded batch, without the padding). Short
 * texts (most sentences) directly, long ones through attn_head_gemm. */
static void attn_tasks(void *ctx, int ith, int nth) {
    pass *p = ctx;
    const lm_hparams *hp = &p->m->hp;
    const int64_t E = hp->n_embd, HD = hp->head_dim, H = hp->n_head, QKV = 3 * E;
    float *sc = p->scores + ith * p->scores_per_thread;
    int64_t lo, hi;
    while (lm_pool_take(&p->q, (int64_t)p->n_seq * H, 1, nth, &lo, &hi)) {
        for (int64_t task = lo; task < hi; task++) {
            const int64_t s = task / H, h = task % H, o = p->off[s], L = p->off[s + 1] - o;
            const float *base = p->qkv + o * QKV;
            if (L >= ATTN_GEMM_MIN) {
                if (!lm_attend_head_gemm(base + h * HD, base + E + h * HD, base + 2 * E + h * HD, QKV, L, HD,
                                         hp->attn_scale, p->att + o * E + h * HD, E, sc))
                    atomic_store(&p->failed, 1);
                continue;
            }
            for (int64_t i = 0; i < L; i++) {
                const float *q = base + i * QKV + h * HD;
                float mx = -INFINITY;
                for (int64_t j = 0; j < L; j++) {
                    sc[j] = dot_lanes(q, base + j * QKV + E + h * HD, HD) * hp->attn_scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                float sum = 0;
                for (int64_t j = 0; j < L; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
                const float inv = 1.0f / sum;
                float *restrict out = p->att + (o + i) * E + h * HD;
                for (int64_t c = 0; c < HD; c++) out[c] = 0;
                for (int64_t j = 0; j < L; j++) {
                    const float *restrict v = base + j * QKV + 2 * E + h * HD;
                    const float pj = sc[j] * inv;
                    for (int64_t c = 0; c < HD; c++) out[c] += pj * v[c];
                }
            }
        }
    }
}

static lm_status bert_encode(lm_model *m, const int32_t *tokens, const int64_t *offsets, int32_t n_seq,
                             const lm_embed_params *how, float *out, void *ws) {
    const bert *b = m->arch_state;
    const lm_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, F = hp->n_ff, T = offsets[n_seq];
    lm_pool *pool = m->pool;
    pass p = {.m = m, .b = b, .tokens = tokens, .off = offsets, .n_seq = n_seq, .T = T};
    float *f = ws;
    ws_floats(m, T, &p.scores_per_thread);
    p.x = f; p.qkv = p.x + T * E; p.att = p.qkv + 3 * T * E; p.y = p.att + T * E; p.h = p.y + T * E;
    p.scores = p.h + T * F;

    per_token(pool, &p, ST_EMBED);
    for (int il = 0; il < hp->n_layer; il++) {
        const bert_layer *l = &b->l[il];
        p.layer = il;
        if (linear(pool, &p, p.x, E, l->wqkv, l->bqkv, 3 * E, p.qkv, false)) return LM_ERR;
        atomic_store(&p.failed, 0);
        lm_pool_run_dynamic(pool, attn_tasks, &p, &p.q);
        if (atomic_load(&p.failed)) return lm_err("bert: a oneDNN attention product failed");
        if (linear(pool, &p, p.att, E, l->wo, l->bo, E, p.y, false)) return LM_ERR;
        per_token(pool, &p, ST_LN1);                     /* x = LN(x + attention) */
        if (linear(pool, &p, p.x, E, l->wup, l->bup, F, p.h, true)) return LM_ERR;
        if (linear(pool, &p, p.h, F, l->wdown, l->bdown, E, p.y, false)) return LM_ERR;
        per_token(pool, &p, ST_LN2);                     /* x = LN(x + FFN) */
    }

    for (int32_t s = 0; s < n_seq; s++) {
        float *o = out + (int64_t)s * E;
        const int64_t t0 = offsets[s], L = offsets[s + 1] - t0;
        if (how->pooling == LM_POOLING_CLS) memcpy(o, p.x + t0 * E, (size_t)E * sizeof(float));
        else {
            for (int64_t i = 0; i < E; i++) o[i] = 0;
            for (int64_t t = t0; t < t0 + L; t++) lm_add(o, p.x + t * E, E);
            lm_scale(o, 1.0f / (float)L, E);
        }
        if (how->normalize) {
            double ss = 0;
            for (int64_t i = 0; i < E; i++) ss += (double)o[i] * o[i];
            const double norm = sqrt(ss);
            lm_scale(o, (float)(1.0 / (norm > 1e-12 ? norm : 1e-12)), E);  /* torch's F.normalize eps */
        }
    }
    return LM_OK;
}

static const char *const bert_names[] = {"bert", NULL};

const lm_arch_ops lm_arch_bert = {
    .family = "bert", .names = bert_names, .encoder = true, .load = bert_load, .unload = bert_unload,
    .encode = bert_encode, .workspace = bert_workspace,
};
