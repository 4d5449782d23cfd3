/* Loading a model: GGUF -> hyperparameters, weight views, tokenizer, pool. */
#include "model.h"
#include "error.h"
#include "quant.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Defined in arch/llama.c: reads hyperparameters and binds the weights. */
lm_status lm_llama_load(lm_model *m);

const char *lm_version(void) { return "0.1.0"; }

static char *dup_str(lm_gguf_str s) {
    char *z = malloc(s.len + 1);
    if (z) { memcpy(z, s.ptr, s.len); z[s.len] = 0; }
    return z;
}

static void close_gguf(void *ctx) { lm_gguf_close(ctx); }

lm_model *lm_model_retain(lm_model *m) {
    if (m) atomic_fetch_add(&m->refcount, 1);
    return m;
}

static void model_destroy(lm_model *m) {
    if (m->layers) {
        for (int i = 0; i < m->hp.n_layer; i++) {
            lm_tensor **t = (lm_tensor **)&m->layers[i];
            for (size_t k = 0; k < sizeof(lm_layer) / sizeof(lm_tensor *); k++) lm_tensor_free(t[k]);
        }
        free(m->layers);
    }
    lm_tensor_free(m->tok_embd);
    lm_tensor_free(m->output_norm);
    lm_tensor_free(m->output);
    lm_tokenizer_free(m->tok);
    lm_pool_free(m->pool);
    if (m->mapping) lm_storage_release(m->mapping);
    else lm_gguf_close(m->gguf);
    pthread_mutex_destroy(&m->eval_mu);
    free(m->batch_logits);
    free(m->path); free(m->name); free(m->arch_name); free(m->chat_template);
    free(m);
}

void lm_model_free(lm_model *m) {
    if (m && atomic_fetch_sub(&m->refcount, 1) == 1) model_destroy(m);
}

lm_model *lm_model_load(const char *path, const lm_model_params *params) {
    if (!path || !*path) { lm_err("model path is empty"); return NULL; }
    lm_kernels_init();
    lm_model *m = calloc(1, sizeof *m);
    if (!m) { lm_err("out of memory"); return NULL; }
    atomic_init(&m->refcount, 1);
    pthread_mutex_init(&m->eval_mu, NULL);
    m->path = strdup(path);
    m->gguf = lm_gguf_open(path);
    if (!m->gguf) goto fail;
    /* The weights' views share one storage spanning the tensor data; its last
     * reference closes the file, so a weight tensor handed out keeps it mapped. */
    const char *lo = NULL, *hi = NULL;
    for (int64_t i = 0; i < lm_gguf_n_tensors(m->gguf); i++) {
        const lm_gguf_tensor *t = lm_gguf_tensor_at(m->gguf, i);
        const char *a = t->data, *b = a + t->nbytes;
        if (!lo || a < lo) lo = a;
        if (!hi || b > hi) hi = b;
    }
    if (!lo) { lm_err("the file has no tensors"); goto fail; }
    m->mapping = lm_storage_wrap((void *)lo, (size_t)(hi - lo), close_gguf, m->gguf);
    if (!m->mapping) goto fail;

    lm_gguf_str s;
    if (lm_gguf_get_str(m->gguf, "general.architecture", &s)) goto fail;
    m->arch_name = dup_str(s);
    const lm_gguf_kv *kv = lm_gguf_find(m->gguf, "general.name");
    if (kv && kv->type == LM_GGUF_STRING) m->name = dup_str(kv->strs[0]);
    else {
        const char *base = strrchr(path, '/');
        m->name = strdup(base ? base + 1 : path);
    }
    kv = lm_gguf_find(m->gguf, "tokenizer.chat_template");
    if (kv && kv->type == LM_GGUF_STRING) m->chat_template = dup_str(kv->strs[0]);
    uint32_t ft;
    m->file_type = lm_gguf_find(m->gguf, "general.file_type") && !lm_gguf_get_u32(m->gguf, "general.file_type", &ft) ? (int32_t)ft : -1;

    if (lm_llama_load(m)) goto fail;
    m->tok = lm_tokenizer_from_gguf(m->gguf);
    if (!m->tok) goto fail;
    if (lm_tokenizer_n_vocab(m->tok) != m->hp.n_vocab) {
        lm_err("vocabulary size mismatch: the tokenizer has %d tokens, the embedding matrix %d rows",
               lm_tokenizer_n_vocab(m->tok), m->hp.n_vocab);
        goto fail;
    }
    for (int64_t i = 0; i < lm_gguf_n_tensors(m->gguf); i++) {
        const lm_gguf_tensor *t = lm_gguf_tensor_at(m->gguf, i);
        int64_t n = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) n *= t->ne[d];
        m->n_params += n;
    }
    m->pool = lm_pool_new(params ? params->n_threads : 0);
    if (!m->pool) goto fail;
    return m;
fail:
    lm_err_prefix("cannot load model '%s'", path);
    model_destroy(m);
    return NULL;
}

void lm_model_get_info(const lm_model *m, lm_model_info *o) {
    memset(o, 0, sizeof *o);
    if (!m) return;
    o->arch = m->arch_name;
    o->name = m->name;
    o->path = m->path;
    o->chat_template = m->chat_template;
    o->n_params = m->n_params;
    o->file_size = lm_gguf_size(m->gguf);
    o->n_vocab = m->hp.n_vocab;
    o->n_ctx_train = m->hp.n_ctx_train;
    o->n_embd = m->hp.n_embd;
    o->n_layer = m->hp.n_layer;
    o->n_head = m->hp.n_head;
    o->n_head_kv = m->hp.n_head_kv;
    o->head_dim = m->hp.head_dim;
    o->n_ff = m->hp.n_ff;
    o->bos_token = lm_tokenizer_bos(m->tok);
    o->eos_token = lm_tokenizer_eos(m->tok);
    o->file_type = m->file_type;
    o->tiled = o->panels = m->hp.n_layer > 0;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const lm_tensor *w[LM_LAYER_MATRICES];
        lm_layer_matrices(&m->layers[il], w);
        for (int i = 0; i < LM_LAYER_MATRICES; i++) {
            const lm_quant_ops *ops = lm_quant_ops_get(w[i]->dtype);
            o->tiled = o->tiled && ops && ops->vec_dot_tile;
            o->panels = o->panels && lm_matmul_panel_decode(w[i]);
        }
    }
}

int64_t lm_tokenize(const lm_model *m, const char *text, size_t len, int32_t *out, int64_t cap,
                    bool add_special, bool parse_special) {
    if (!m || (!text && len)) { lm_err("tokenize: model or text is NULL"); return INT64_MIN; }
    return lm_tokenizer_encode(m->tok, text ? text : "", len, out, cap, add_special, parse_special);
}

int64_t lm_escape_special(const lm_model *m, const char *text, size_t len, char *out, int64_t cap) {
    if (!m || (!text && len)) { lm_err("escape_special: model or text is NULL"); return INT64_MIN; }
    return lm_tokenizer_escape(m->tok, text ? text : "", len, out, cap);
}

int32_t lm_token_to_piece(const lm_model *m, int32_t token, char *buf, int32_t cap, bool render_special) {
    if (!m) { lm_err("token_to_piece: model is NULL"); return INT32_MIN; }
    return lm_tokenizer_piece(m->tok, token, buf, cap, render_special);
}

int64_t lm_detokenize(const lm_model *m, const int32_t *tokens, int64_t n, char *buf, int64_t cap,
                      bool render_special) {
    if (!m) { lm_err("detokenize: model is NULL"); return INT64_MIN; }
    return lm_tokenizer_decode(m->tok, tokens, n, buf, cap, render_special);
}

bool lm_token_is_eog(const lm_model *m, int32_t token) {
    return m && lm_tokenizer_is_eog(m->tok, token);
}

int32_t lm_token_lookup(const lm_model *m, const char *text) {
    return m && text ? lm_tokenizer_lookup(m->tok, text, strlen(text)) : -1;
}

lm_tensor *lm_model_weight(lm_model *m, const char *name) {
    if (!m || !name) { lm_err("weight: model or name is NULL"); return NULL; }
    const lm_gguf_tensor *t = lm_gguf_find_tensor(m->gguf, name);
    if (!t) { lm_err("weight: the model has no tensor '%s'", name); return NULL; }
    int64_t shape[LM_GGUF_MAX_DIMS];
    int nd = (int)t->n_dims;
    for (int i = 0; i < nd; i++) shape[i] = t->ne[nd - 1 - i]; /* GGUF lists the innermost first */
    return lm_tensor_on_storage(m->mapping, (void *)t->data, t->type, nd, shape);
}
