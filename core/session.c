/* Sessions: a KV cache, scratch buffers sized for one batch, and a position. */
#include "model.h"
#include "arch/arch.h"
#include "error.h"
#include "ops.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *alloc(size_t n, const char *what, bool *ok) {
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (!p) { *ok = false; lm_err("out of memory allocating %zu bytes for the %s", n, what); }
    return p;
}

lm_session *lm_session_new(lm_model *m, const lm_session_params *params) {
    if (!m) { lm_err("session: model is NULL"); return NULL; }
    if (!m->arch->forward) {
        if (m->arch->vision) lm_err("session: '%s' is a vision projector (%s): it has no sessions; use lm_vision_encode", m->path, m->arch_name);
        else lm_err("session: '%s' is an encoder (%s): it has no sessions; use lm_embed_texts / model:embed", m->path, m->arch_name);
        return NULL;
    }
    const lm_hparams *hp = &m->hp;
    int32_t n_ctx = params ? params->n_ctx : 0, n_batch = params ? params->n_batch : 0;
    if (n_ctx <= 0) n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (n_ctx > hp->n_ctx_train) {
        lm_err("session: n_ctx %d exceeds the model's training context %d", n_ctx, hp->n_ctx_train);
        return NULL;
    }
    lm_dtype kv_type = params && params->kv_type ? params->kv_type : m->kv_type;
    if (kv_type != LM_F16 && kv_type != LM_Q8_0) {
        lm_err("session: kv_type %d is not a KV cache type (f16 = %d, q8_0 = %d)", (int)kv_type, LM_F16, LM_Q8_0);
        return NULL;
    }
    if (kv_type == LM_Q8_0 && hp->head_dim % 32) {
        lm_err("session: a q8_0 KV cache needs a head dimension that is a multiple of 32; '%s' has %d", m->path, hp->head_dim);
        return NULL;
    }
    if (n_batch <= 0) n_batch = 512;
    if (n_batch > n_ctx) n_batch = n_ctx;
    if (n_batch > LM_MAX_BATCH) n_batch = LM_MAX_BATCH;

    lm_session *s = calloc(1, sizeof *s);
    if (!s) { lm_err("out of memory"); return NULL; }
    atomic_init(&s->refcount, 1);
    s->model = lm_model_retain(m);
    s->n_ctx = n_ctx;
    s->n_batch = n_batch;
    s->kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    s->kv_type = kv_type;
    s->kv_row = lm_kv_row_bytes(kv_type, s->kv_dim);
    const size_t B = (size_t)n_batch, E = hp->n_embd, QD = (size_t)hp->n_head * hp->head_dim;
    const size_t kv = (size_t)hp->n_layer * n_ctx * s->kv_row;
    const size_t wide = E > QD ? E : QD;
    bool ok = true;
    s->k_cache = alloc(kv, "KV cache", &ok);
    if (ok) s->v_cache = alloc(kv, "KV cache", &ok);
    if (ok) s->x = alloc(B * E * sizeof(float), "activations", &ok);
    if (ok) s->xb = alloc(B * wide * sizeof(float), "activations", &ok);
    if (ok) s->q = alloc(B * QD * sizeof(float), "activations", &ok);
    /* attention writes each head's output over that head's query, which it has
     * finished reading by then (lm_attend_f16), so the two share one buffer */
    s->xb2 = s->q;
    if (ok) s->k = alloc(B * s->kv_dim * sizeof(float), "activations", &ok);
    if (ok) s->v = alloc(B * s->kv_dim * sizeof(float), "activations", &ok);
    if (ok) s->hb = alloc(B * hp->n_ff * sizeof(float), "activations", &ok);
    if (ok) s->hb2 = alloc(B * hp->n_ff * sizeof(float), "activations", &ok);
    if (ok) s->scores = alloc((size_t)lm_pool_size(m->pool) * lm_attend_scratch(hp->n_head / hp->n_head_kv, n_ctx) * sizeof(float),
                                  "attention scores", &ok);
    if (ok) s->logits = alloc((size_t)hp->n_vocab * sizeof(float), "logits", &ok);
    if (ok) s->tokens = alloc((size_t)n_ctx * sizeof(int32_t), "token history", &ok);
    /* q: the widest activation row any matmul quantizes, times the batch;
     * w: the largest layer matrix without integer panels, dequantized for a
     * prefill GEMM (none when they all have panels) */
    size_t q = lm_matmul_qbuf_size(m->output, n_batch, lm_pool_size(m->pool)), w = 0;
    for (int64_t il = 0; il < hp->n_layer; il++) {
        const lm_tensor *ws[LM_LAYER_MATRICES];
        lm_layer_matrices(&m->layers[il], ws);
        for (int i = 0; i < LM_LAYER_MATRICES; i++) {
            size_t need = lm_matmul_qbuf_size(ws[i], n_batch, lm_pool_size(m->pool));
            if (need > q) q = need;
            if (lm_matmul_wbuf_size(ws[i]) > w) w = lm_matmul_wbuf_size(ws[i]);
        }
    }
    s->qbuf_size = q;
    if (ok) s->qbuf = alloc(q, "quantized activations", &ok);
    if (ok && n_batch >= LM_GEMM_MIN_TOKENS && w) s->wbuf = alloc(w, "prefill weights", &ok);
    if (!ok) { lm_session_free(s); return NULL; }
    memset(s->logits, 0, (size_t)hp->n_vocab * sizeof(float));
    return s;
}

typedef struct {
    lm_sampler *const *samplers;
    lm_session *const *sessions;
    int32_t *out;
    int32_t n, n_vocab;
    lm_pool_queue q;
} sample_job;

static void sample_rows(void *vctx, int ith, int nth) {
    sample_job *j = vctx;
    int64_t lo, hi;
    (void)ith;
    while (lm_pool_take(&j->q, j->n, 1, nth, &lo, &hi))
        for (int64_t i = lo; i < hi; i++) j->out[i] = lm_sampler_sample(j->samplers[i], j->sessions[i]->logits, j->n_vocab);
}

lm_status lm_sessions_sample(lm_sampler *const *samplers, lm_session *const *sessions, int32_t n, int32_t *out) {
    if (!samplers || !sessions || !out || n <= 0) return lm_err("sample: bad arguments (n = %d)", n);
    for (int32_t i = 0; i < n; i++) {
        if (!samplers[i] || !sessions[i]) return lm_err("sample: entry %d has no sampler or session", i);
        if (sessions[i]->model != sessions[0]->model) return lm_err("sample: entry %d is a session of another model", i);
        if (lm_sampler_has_external(samplers[i])) return lm_err("sample: entry %d's chain has external links (use begin/run)", i);
        for (int32_t k = 0; k < i; k++)
            if (samplers[k] == samplers[i]) return lm_err("sample: entries %d and %d share a sampler", k, i);
    }
    lm_model *m = sessions[0]->model;
    sample_job j = {.samplers = samplers, .sessions = sessions, .out = out, .n = n, .n_vocab = m->hp.n_vocab};
    /* the pool runs one region at a time: not beside another thread's eval */
    pthread_mutex_lock(&m->eval_mu);
    lm_pool_run_dynamic(n >= 4 ? m->pool : NULL, sample_rows, &j, &j.q);
    pthread_mutex_unlock(&m->eval_mu);
    for (int32_t i = 0; i < n; i++)
        if (out[i] < 0) return lm_err("sample: entry %d failed: its links (a grammar, a Lua mask) left no token with a finite logit, or out of memory", i);
    return LM_OK;
}

lm_session *lm_session_retain(lm_session *s) {
    if (s) atomic_fetch_add(&s->refcount, 1);
    return s;
}

void lm_session_free(lm_session *s) {
    if (!s || atomic_fetch_sub(&s->refcount, 1) != 1) return;
    free(s->tokens);
    free(s->k_cache); free(s->v_cache);
    free(s->x); free(s->xb); free(s->q); free(s->k); free(s->v);
    free(s->hb); free(s->hb2); free(s->scores); free(s->logits); free(s->qbuf); free(s->wbuf);
    lm_model_free(s->model);
    free(s);
}

/* n tokens, or n rows of embeddings (recorded in the history as ids from h), in
 * passes of n_batch. */
/* The history id of row i of rows whose hash is h (see lm_session_eval_embd). */
static int32_t embd_id(uint64_t h, int32_t i) { return -1 - (int32_t)((h + (uint64_t)i) % (1u << 30)); }

static lm_status eval_run(lm_session *s, const int32_t *tokens, const float *rows, int32_t n, uint64_t h) {
    const int64_t E = s->model->hp.n_embd;
    pthread_mutex_lock(&s->model->eval_mu);
    lm_status st = LM_OK;
    for (int32_t i = 0; i < n && st == LM_OK; i += s->n_batch) {
        int32_t chunk = n - i < s->n_batch ? n - i : s->n_batch;
        st = tokens ? lm_forward(s, tokens + i, chunk, n >= 2) : lm_forward_embd(s, rows + (int64_t)i * E, chunk, n >= 2);
        for (int32_t j = 0; st == LM_OK && j < chunk; j++)
            s->tokens[s->pos++] = tokens ? tokens[i + j] : embd_id(h, i + j);
    }
    pthread_mutex_unlock(&s->model->eval_mu);
    return st;
}

lm_status lm_session_eval(lm_session *s, const int32_t *tokens, int32_t n) {
    if (!s) return lm_err("eval: session is NULL");
    if (n <= 0) return lm_err("eval: need at least one token (got %d)", n);
    if (!tokens) return lm_err("eval: tokens is NULL");
    if (n > s->n_ctx - s->pos)
        return lm_err("eval: context full: %d tokens at position %d exceed the session's context of %d tokens",
                      n, s->pos, s->n_ctx);
    const int32_t n_vocab = s->model->hp.n_vocab;
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            return lm_err("eval: token %d at index %d is outside the vocabulary [0, %d)", tokens[i], i, n_vocab);
    return eval_run(s, tokens, NULL, n, 0);
}

/* FNV-1a over the rows' bits, 64 bits at a time: equal rows give equal ids. */
static uint64_t rows_hash(const float *rows, size_t n_floats) {
    uint64_t h = 0xcbf29ce484222325ull;
    const uint32_t *u = (const uint32_t *)rows;
    for (size_t i = 0; i < n_floats; i++) { h ^= u[i]; h *= 0x100000001b3ull; }
    return h ^ (h >> 29);
}

lm_status lm_session_eval_embd(lm_session *s, const float *rows, int32_t n) {
    if (!s) return lm_err("eval_embd: session is NULL");
    if (n <= 0) return lm_err("eval_embd: need at least one row (got %d)", n);
    if (!rows) return lm_err("eval_embd: rows is NULL");
    if (n > s->n_ctx - s->pos)
        return lm_err("eval_embd: context full: %d rows at position %d exceed the session's context of %d positions",
                      n, s->pos, s->n_ctx);
    return eval_run(s, NULL, rows, n, rows_hash(rows, (size_t)n * s->model->hp.n_embd));
}

lm_status lm_embd_ids(const lm_model *m, const float *rows, int32_t n, int32_t *out) {
    if (!m || !rows || !out) return lm_err("embd_ids: model, rows or out is NULL");
    if (n <= 0) return lm_err("embd_ids: need at least one row (got %d)", n);
    const uint64_t h = rows_hash(rows, (size_t)n * m->hp.n_embd);
    for (int32_t i = 0; i < n; i++) out[i] = embd_id(h, i);
    return LM_OK;
}

lm_status lm_session_eval_batch(lm_session *const *sessions, const int32_t *tokens, int32_t n) {
    if (n <= 0) return lm_err("eval_batch: need at least one token (got %d)", n);
    if (!sessions || !tokens) return lm_err("eval_batch: sessions or tokens is NULL");
    if (n > LM_MAX_BATCH) return lm_err("eval_batch: at most %d entries (got %d)", LM_MAX_BATCH, n);
    lm_session *ws = NULL;
    for (int32_t i = 0, run = 0; i < n; i++) {
        lm_session *s = sessions[i];
        if (!s) return lm_err("eval_batch: session %d is NULL", i);
        if (s->model != sessions[0]->model) return lm_err("eval_batch: session %d belongs to another model", i);
        if (tokens[i] < 0 || tokens[i] >= s->model->hp.n_vocab)
            return lm_err("eval_batch: token %d at index %d is outside the vocabulary [0, %d)", tokens[i], i, s->model->hp.n_vocab);
        run = i > 0 && sessions[i - 1] == s ? run + 1 : 0;
        if (s->pos + run >= s->n_ctx)
            return lm_err("eval_batch: context full: session %d would go past position %d of its %d-token context",
                          i, s->pos + run, s->n_ctx);
        if (run == 0)
            for (int32_t j = 0; j < i; j++)
                if (sessions[j] == s)
                    return lm_err("eval_batch: session %d appears twice (at %d and %d) with other sessions between; "
                                  "a session's entries must be adjacent", i, j, i);
        if (!ws || s->n_ctx > ws->n_ctx || (s->n_ctx == ws->n_ctx && s->n_batch > ws->n_batch)) ws = s;
    }
    lm_model *m = ws->model;
    const size_t V = (size_t)m->hp.n_vocab;
    const int32_t chunk_max = ws->n_batch;
    const size_t c_max = (size_t)(n < chunk_max ? n : chunk_max), idx = 2 * c_max * sizeof(int32_t) + (size_t)n * sizeof(bool);
    pthread_mutex_lock(&m->eval_mu);
    /* the model's buffer, grown to the largest step so far: no allocation per step */
    if (m->batch_idx_cap < idx) {
        void *b = realloc(m->batch_idx, idx);
        if (!b) {
            pthread_mutex_unlock(&m->eval_mu);
            return lm_err("eval_batch: out of memory");
        }
        m->batch_idx = b;
        m->batch_idx_cap = idx;
    }
    int32_t *pos = m->batch_idx, *out_rows = pos + c_max;
    bool *prompt = (bool *)(out_rows + c_max);
    /* a session's adjacent entries are a prompt chunk, however the passes cut them */
    for (int32_t t = 0; t < n; t++)
        prompt[t] = (t > 0 && sessions[t - 1] == sessions[t]) || (t + 1 < n && sessions[t + 1] == sessions[t]);
    lm_status st = LM_OK;
    for (int32_t i = 0; i < n && st == LM_OK; i += chunk_max) {
        const int32_t c = n - i < chunk_max ? n - i : chunk_max;
        lm_session *const *seq = sessions + i;
        /* positions run on within a session's entries; logits only for the last one */
        int32_t n_out = 0;
        for (int32_t t = 0; t < c; t++) {
            pos[t] = t > 0 && seq[t - 1] == seq[t] ? pos[t - 1] + 1 : seq[t]->pos;
            if (t == c - 1 || seq[t + 1] != seq[t]) out_rows[n_out++] = t;
        }
        size_t need = (size_t)n_out * V;
        if (m->batch_logits_cap < need) {
            float *b = realloc(m->batch_logits, need * sizeof(float));
            if (!b) { st = lm_err("eval_batch: out of memory for %zu logits", need); break; }
            m->batch_logits = b;
            m->batch_logits_cap = need;
        }
        st = lm_forward_multi(ws, seq, pos, tokens + i, c, prompt + i, out_rows, n_out, m->batch_logits);
        if (st != LM_OK) break;
        for (int32_t t = 0; t < c; t++) seq[t]->tokens[seq[t]->pos++] = tokens[i + t];
        for (int32_t k = 0; k < n_out; k++)
            memcpy(seq[out_rows[k]]->logits, m->batch_logits + (size_t)k * V, V * sizeof(float));
    }
    pthread_mutex_unlock(&m->eval_mu);
    return st;
}

float *lm_session_logits(lm_session *s) { return s ? s->logits : NULL; }
int32_t lm_session_pos(const lm_session *s) { return s ? s->pos : 0; }
int32_t lm_session_n_ctx(const lm_session *s) { return s ? s->n_ctx : 0; }
lm_dtype lm_session_kv_type(const lm_session *s) { return s ? s->kv_type : LM_F16; }

lm_status lm_session_rewind(lm_session *s, int32_t n) {
    if (!s) return lm_err("rewind: session is NULL");
    if (n < 0 || n > s->pos) return lm_err("rewind: position %d is outside [0, %d]", n, s->pos);
    s->pos = n; /* later entries of the KV cache are overwritten by the next eval */
    return LM_OK;
}

const int32_t *lm_session_tokens(const lm_session *s) { return s ? s->tokens : NULL; }

/* Copies the first n positions of every layer's K and V. */
static void copy_kv(lm_session *dst, const lm_session *src, int32_t n) {
    const size_t row = src->kv_row;
    for (int l = 0; l < src->model->hp.n_layer; l++) {
        memcpy(dst->k_cache + (size_t)l * dst->n_ctx * row, src->k_cache + (size_t)l * src->n_ctx * row, row * n);
        memcpy(dst->v_cache + (size_t)l * dst->n_ctx * row, src->v_cache + (size_t)l * src->n_ctx * row, row * n);
    }
}

lm_session *lm_session_fork(const lm_session *s) {
    if (!s) { lm_err("fork: session is NULL"); return NULL; }
    lm_session_params p = {.n_ctx = s->n_ctx, .n_batch = s->n_batch, .kv_type = s->kv_type};
    lm_session *f = lm_session_new(s->model, &p);
    if (!f) return NULL;
    copy_kv(f, s, s->pos);
    memcpy(f->tokens, s->tokens, (size_t)s->pos * sizeof *s->tokens);
    memcpy(f->logits, s->logits, (size_t)s->model->hp.n_vocab * sizeof(float));
    f->pos = s->pos;
    return f;
}

/* ---- save / restore -------------------------------------------------------------
 * File: header, then tokens[pos], logits[n_vocab], then per layer K[pos][kv_dim]
 * and V[pos][kv_dim] as the session's KV type (the header's kv_type: 0 for fp16,
 * which files from before the q8_0 cache hold, or LM_Q8_0). The header pins the
 * model's shape so a state is never restored into a model it does not belong to. */
#define STATE_MAGIC 0x53534d4cu /* "LMSS" */
#define STATE_VERSION 1

typedef struct {
    uint32_t magic, version;
    int32_t n_layer, n_vocab, n_embd, kv_dim, pos, kv_type;
    uint64_t model_size;
} state_header;

static state_header header_of(const lm_session *s) {
    const lm_hparams *hp = &s->model->hp;
    return (state_header){STATE_MAGIC, STATE_VERSION, hp->n_layer, hp->n_vocab, hp->n_embd,
                          (int32_t)s->kv_dim, s->pos, s->kv_type == LM_Q8_0 ? LM_Q8_0 : 0, lm_gguf_size(s->model->gguf)};
}

lm_status lm_session_save(const lm_session *s, const char *path) {
    if (!s || !path) return lm_err("save: session or path is NULL");
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return lm_err("save: path too long");
    FILE *f = fopen(tmp, "wb");
    if (!f) return lm_err("save: cannot write '%s': %s", tmp, strerror(errno));
    state_header h = header_of(s);
    bool ok = fwrite(&h, sizeof h, 1, f) == 1 &&
              fwrite(s->tokens, sizeof *s->tokens, (size_t)s->pos, f) == (size_t)s->pos &&
              fwrite(s->logits, sizeof(float), (size_t)h.n_vocab, f) == (size_t)h.n_vocab;
    const size_t row = s->kv_row;
    for (int l = 0; ok && l < h.n_layer; l++) {
        ok = fwrite(s->k_cache + (size_t)l * s->n_ctx * row, row, (size_t)s->pos, f) == (size_t)s->pos &&
             fwrite(s->v_cache + (size_t)l * s->n_ctx * row, row, (size_t)s->pos, f) == (size_t)s->pos;
    }
    if (fclose(f) != 0) ok = false;
    /* write-then-rename: a crash never leaves a half-written state under the real name */
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return lm_err("save: writing '%s' failed: %s", path, strerror(e));
    }
    return LM_OK;
}

lm_status lm_session_load(lm_session *s, const char *path) {
    if (!s || !path) return lm_err("load: session or path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f) return lm_err("load: cannot open '%s': %s", path, strerror(errno));
    state_header h, want = header_of(s);
    lm_status st = LM_OK;
    if (fread(&h, sizeof h, 1, f) != 1 || h.magic != STATE_MAGIC) {
        st = lm_err("load: '%s' is not a lumen session state", path);
    } else if (h.version != STATE_VERSION) {
        st = lm_err("load: '%s' has state version %u; this lumen reads version %u", path, h.version, STATE_VERSION);
    } else if (h.n_layer != want.n_layer || h.n_vocab != want.n_vocab || h.n_embd != want.n_embd ||
               h.kv_dim != want.kv_dim || h.model_size != want.model_size) {
        st = lm_err("load: '%s' was saved from a different model", path);
    } else if (h.kv_type != want.kv_type) {
        st = lm_err("load: '%s' holds a %s KV cache; this session's is %s", path, h.kv_type ? "q8_0" : "f16",
                    want.kv_type ? "q8_0" : "f16");
    } else if (h.pos < 0 || h.pos > s->n_ctx) {
        st = lm_err("load: '%s' holds %d tokens; the session's context is %d", path, h.pos, s->n_ctx);
    }
    if (st) { fclose(f); return st; }
    /* read into fresh buffers first, so a truncated file leaves the session as it was */
    const size_t row = s->kv_row;
    int32_t *toks = malloc((size_t)(h.pos ? h.pos : 1) * sizeof *toks);
    float *logits = malloc((size_t)h.n_vocab * sizeof *logits);
    char *kv = malloc((size_t)h.n_layer * 2 * (h.pos ? h.pos : 1) * row);
    bool ok = toks && logits && kv &&
              fread(toks, sizeof *toks, (size_t)h.pos, f) == (size_t)h.pos &&
              fread(logits, sizeof *logits, (size_t)h.n_vocab, f) == (size_t)h.n_vocab &&
              fread(kv, row, (size_t)h.n_layer * 2 * h.pos, f) == (size_t)h.n_layer * 2 * h.pos;
    for (int32_t i = 0; ok && i < h.pos; i++)   /* negative: embedding rows (lm_session_eval_embd) */
        if (toks[i] >= h.n_vocab) ok = false;
    if (ok) {
        for (int l = 0; l < h.n_layer; l++) {
            const char *kl = kv + (size_t)l * 2 * h.pos * row, *vl = kl + (size_t)h.pos * row;
            memcpy(s->k_cache + (size_t)l * s->n_ctx * row, kl, (size_t)h.pos * row);
            memcpy(s->v_cache + (size_t)l * s->n_ctx * row, vl, (size_t)h.pos * row);
        }
        memcpy(s->tokens, toks, (size_t)h.pos * sizeof *toks);
        memcpy(s->logits, logits, (size_t)h.n_vocab * sizeof *logits);
        s->pos = h.pos;
    }
    free(toks); free(logits); free(kv);
    fclose(f);
    return ok ? LM_OK : lm_err("load: '%s' is truncated or corrupt", path);
}

static void release_session(void *ctx) { lm_session_free(ctx); }

lm_tensor *lm_session_logits_tensor(lm_session *s) {
    if (!s) { lm_err("logits: session is NULL"); return NULL; }
    int64_t n = s->model->hp.n_vocab;
    lm_tensor *t = lm_tensor_wrap(LM_F32, 1, &n, s->logits, release_session, s);
    if (t) lm_session_retain(s);
    return t;
}

/* n tokens (or rows of embeddings) of one session at its next positions. */
static lm_status forward_one(lm_session *s, const int32_t *tokens, const float *rows, int32_t n, bool prompt) {
    lm_session *seq[LM_MAX_BATCH];
    int32_t pos[LM_MAX_BATCH];
    bool is_prompt[LM_MAX_BATCH];
    if (n > LM_MAX_BATCH) return lm_err("eval: a forward pass takes at most %d tokens", LM_MAX_BATCH);
    for (int32_t t = 0; t < n; t++) { seq[t] = s; pos[t] = s->pos + t; is_prompt[t] = prompt; }
    lm_batch b = {.ws = s, .seq = seq, .pos = pos, .n = n, .gemm = true, .prompt = prompt ? is_prompt : NULL, .embd = rows};
    return s->model->arch->forward(&b, tokens, NULL, 0, NULL);
}

lm_status lm_forward(lm_session *s, const int32_t *tokens, int32_t n, bool prompt) {
    return forward_one(s, tokens, NULL, n, prompt);
}

lm_status lm_forward_embd(lm_session *s, const float *rows, int32_t n, bool prompt) {
    return forward_one(s, NULL, rows, n, prompt);
}

lm_status lm_forward_multi(lm_session *ws, lm_session *const *seq, const int32_t *pos, const int32_t *tokens, int32_t n,
                           const bool *prompt, const int32_t *out_rows, int32_t n_out, float *logits) {
    if (n > LM_MAX_BATCH) return lm_err("eval: a forward pass takes at most %d tokens", LM_MAX_BATCH);
    lm_batch b = {.ws = ws, .seq = seq, .pos = pos, .n = n, .gemm = false, .prompt = prompt};
    return ws->model->arch->forward(&b, tokens, out_rows, n_out, logits);
}
