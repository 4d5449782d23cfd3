/* Sessions: a KV cache, scratch buffers sized for one batch, and a position. */
#include "model.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

static void *alloc(size_t n, const char *what, bool *ok) {
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (!p) { *ok = false; lm_err("out of memory allocating %zu bytes for the %s", n, what); }
    return p;
}

lm_session *lm_session_new(lm_model *m, const lm_session_params *params) {
    if (!m) { lm_err("session: model is NULL"); return NULL; }
    const lm_hparams *hp = &m->hp;
    int32_t n_ctx = params ? params->n_ctx : 0, n_batch = params ? params->n_batch : 0;
    if (n_ctx <= 0) n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (n_ctx > hp->n_ctx_train) {
        lm_err("session: n_ctx %d exceeds the model's training context %d", n_ctx, hp->n_ctx_train);
        return NULL;
    }
    if (n_batch <= 0) n_batch = 512;
    if (n_batch > n_ctx) n_batch = n_ctx;

    lm_session *s = calloc(1, sizeof *s);
    if (!s) { lm_err("out of memory"); return NULL; }
    s->model = lm_model_retain(m);
    s->n_ctx = n_ctx;
    s->n_batch = n_batch;
    s->kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    const size_t B = (size_t)n_batch, E = hp->n_embd, QD = (size_t)hp->n_head * hp->head_dim;
    const size_t kv = (size_t)hp->n_layer * n_ctx * s->kv_dim * sizeof(uint16_t);
    const size_t wide = E > QD ? E : QD;
    bool ok = true;
    s->k_cache = alloc(kv, "KV cache", &ok);
    if (ok) s->v_cache = alloc(kv, "KV cache", &ok);
    if (ok) s->x = alloc(B * E * sizeof(float), "activations", &ok);
    if (ok) s->xb = alloc(B * wide * sizeof(float), "activations", &ok);
    if (ok) s->xb2 = alloc(B * QD * sizeof(float), "activations", &ok);
    if (ok) s->q = alloc(B * QD * sizeof(float), "activations", &ok);
    if (ok) s->k = alloc(B * s->kv_dim * sizeof(float), "activations", &ok);
    if (ok) s->v = alloc(B * s->kv_dim * sizeof(float), "activations", &ok);
    if (ok) s->hb = alloc(B * hp->n_ff * sizeof(float), "activations", &ok);
    if (ok) s->hb2 = alloc(B * hp->n_ff * sizeof(float), "activations", &ok);
    if (ok) s->scores = alloc((size_t)lm_pool_size(m->pool) * n_ctx * sizeof(float), "attention scores", &ok);
    if (ok) s->logits = alloc((size_t)hp->n_vocab * sizeof(float), "logits", &ok);
    if (ok) {
        /* the widest activation row any matmul quantizes, times the batch */
        size_t q = 0;
        const lm_layer *l = &m->layers[0];
        const lm_tensor *ws[] = {l->wq, l->wo, l->w_gate, l->w_down, m->output};
        for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) {
            size_t need = lm_matmul_qbuf_size(ws[i], n_batch);
            if (need > q) q = need;
        }
        s->qbuf_size = q;
        s->qbuf = alloc(q, "quantized activations", &ok);
    }
    if (!ok) { lm_session_free(s); return NULL; }
    memset(s->logits, 0, (size_t)hp->n_vocab * sizeof(float));
    return s;
}

void lm_session_free(lm_session *s) {
    if (!s) return;
    free(s->k_cache); free(s->v_cache);
    free(s->x); free(s->xb); free(s->xb2); free(s->q); free(s->k); free(s->v);
    free(s->hb); free(s->hb2); free(s->scores); free(s->logits); free(s->qbuf);
    lm_model_free(s->model);
    free(s);
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
    pthread_mutex_lock(&s->model->eval_mu);
    lm_status st = LM_OK;
    for (int32_t i = 0; i < n && st == LM_OK; i += s->n_batch) {
        int32_t chunk = n - i < s->n_batch ? n - i : s->n_batch;
        st = lm_forward(s, tokens + i, chunk);
        if (st == LM_OK) s->pos += chunk;
    }
    pthread_mutex_unlock(&s->model->eval_mu);
    return st;
}

float *lm_session_logits(lm_session *s) { return s ? s->logits : NULL; }
int32_t lm_session_pos(const lm_session *s) { return s ? s->pos : 0; }
int32_t lm_session_n_ctx(const lm_session *s) { return s ? s->n_ctx : 0; }

lm_status lm_session_rewind(lm_session *s, int32_t n) {
    if (!s) return lm_err("rewind: session is NULL");
    if (n < 0 || n > s->pos) return lm_err("rewind: position %d is outside [0, %d]", n, s->pos);
    s->pos = n; /* later entries of the KV cache are overwritten by the next eval */
    return LM_OK;
}
