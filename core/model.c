/* Loading a model: the weights layer (GGUF or a Hugging Face directory) ->
 * the family's ops table (arch/registry.c) -> its load -> tokenizer, pool. */
#include "model.h"
#include "arch/arch.h"
#include "error.h"
#include "quant.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *lm_version(void) { return "0.1.0"; }

static char *dup_str(lm_gguf_str s) {
    char *z = malloc(s.len + 1);
    if (z) { memcpy(z, s.ptr, s.len); z[s.len] = 0; }
    return z;
}

lm_model *lm_model_retain(lm_model *m) {
    if (m) atomic_fetch_add(&m->refcount, 1);
    return m;
}

static void model_destroy(lm_model *m) {
    if (m->arch && m->arch->unload) m->arch->unload(m);
    lm_tokenizer_free(m->tok);
    lm_pool_free(m->pool);
    lm_weights_release(m->weights);
    pthread_mutex_destroy(&m->eval_mu);
    free(m->batch_logits);
    free(m->embed_ws);
    free(m->path); free(m->name); free(m->arch_name); free(m->chat_template);
    free(m);
}

void lm_model_free(lm_model *m) {
    if (m && atomic_fetch_sub(&m->refcount, 1) == 1) model_destroy(m);
}

/* The last component of a path, without a trailing slash. */
static char *base_name(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    return strndup(path + b, n - b);
}

lm_model *lm_model_load(const char *path, const lm_model_params *params) {
    if (!path || !*path) { lm_err("model path is empty"); return NULL; }
    lm_kernels_init();
    lm_model *m = calloc(1, sizeof *m);
    if (!m) { lm_err("out of memory"); return NULL; }
    atomic_init(&m->refcount, 1);
    pthread_mutex_init(&m->eval_mu, NULL);
    m->path = strdup(path);
    /* The weights' views share one storage spanning the tensor data; its last
     * reference closes the files, so a weight tensor handed out keeps them mapped. */
    m->weights = lm_weights_open(path);
    if (!m->weights) goto fail;
    m->gguf = m->weights->gguf;
    m->mapping = m->weights->mapping;
    m->arch_name = strdup(m->weights->arch);
    m->arch = lm_arch_find(m->arch_name);
    if (!m->arch) {
        lm_err("architecture '%s' is not supported (supported: %s)", m->arch_name, lm_arch_known());
        goto fail;
    }
    if (m->gguf) {
        const lm_gguf_kv *kv = lm_gguf_find(m->gguf, "general.name");
        if (kv && kv->type == LM_GGUF_STRING) m->name = dup_str(kv->strs[0]);
        kv = lm_gguf_find(m->gguf, "tokenizer.chat_template");
        if (kv && kv->type == LM_GGUF_STRING) m->chat_template = dup_str(kv->strs[0]);
        uint32_t ft;
        m->file_type = lm_gguf_find(m->gguf, "general.file_type") && !lm_gguf_get_u32(m->gguf, "general.file_type", &ft) ? (int32_t)ft : -1;
    } else {
        m->file_type = -1;
    }
    if (!m->name) m->name = base_name(path);

    if (m->arch->load(m)) goto fail;
    if (!m->arch->vision) {   /* a vision projector has no vocabulary */
        m->tok = m->gguf ? lm_tokenizer_from_gguf(m->gguf) : lm_tokenizer_from_hf(path);
        if (!m->tok) goto fail;
    }
    if (m->tok && lm_tokenizer_n_vocab(m->tok) != m->hp.n_vocab) {
        lm_err("vocabulary size mismatch: the tokenizer has %d tokens, the embedding matrix %d rows",
               lm_tokenizer_n_vocab(m->tok), m->hp.n_vocab);
        goto fail;
    }
    m->n_params = lm_weights_n_params(m->weights);
    m->kv_type = params && params->kv_type ? params->kv_type : LM_F16;
    if (m->kv_type != LM_F16 && m->kv_type != LM_Q8_0) {
        lm_err("kv_type %d is not a KV cache type (f16 = %d, q8_0 = %d)", (int)m->kv_type, LM_F16, LM_Q8_0);
        goto fail;
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
    o->file_size = lm_weights_file_size(m->weights);
    o->family = m->arch->family;
    o->encoder = m->arch->encoder;
    o->vision = m->arch->vision;
    if (o->encoder) {
        o->max_tokens = m->embed.max_tokens;
        o->pooling = m->embed.pooling;
        o->normalize = m->embed.normalize;
    }
    o->n_vocab = m->hp.n_vocab;
    o->n_ctx_train = m->hp.n_ctx_train;
    o->n_embd = m->hp.n_embd;
    o->n_layer = m->hp.n_layer;
    o->n_head = m->hp.n_head;
    o->n_head_kv = m->hp.n_head_kv;
    o->head_dim = m->hp.head_dim;
    o->n_ff = m->hp.n_ff;
    o->bos_token = m->tok ? lm_tokenizer_bos(m->tok) : -1;
    o->eos_token = m->tok ? lm_tokenizer_eos(m->tok) : -1;
    o->file_type = m->file_type;
    o->tiled = o->panels = m->hp.n_layer > 0 && m->layers;
    for (int il = 0; m->layers && il < m->hp.n_layer; il++) {
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
    if (!m->tok) { lm_err("tokenize: '%s' has no tokenizer (a vision projector)", m->path); return INT64_MIN; }
    return lm_tokenizer_encode(m->tok, text ? text : "", len, out, cap, add_special, parse_special);
}

int64_t lm_escape_special(const lm_model *m, const char *text, size_t len, char *out, int64_t cap) {
    if (!m || (!text && len)) { lm_err("escape_special: model or text is NULL"); return INT64_MIN; }
    if (!m->tok) { lm_err("escape_special: '%s' has no tokenizer (a vision projector)", m->path); return INT64_MIN; }
    return lm_tokenizer_escape(m->tok, text ? text : "", len, out, cap);
}

int32_t lm_token_to_piece(const lm_model *m, int32_t token, char *buf, int32_t cap, bool render_special) {
    if (!m || !m->tok) { lm_err("token_to_piece: model is NULL or has no tokenizer"); return INT32_MIN; }
    return lm_tokenizer_piece(m->tok, token, buf, cap, render_special);
}

int64_t lm_detokenize(const lm_model *m, const int32_t *tokens, int64_t n, char *buf, int64_t cap,
                      bool render_special) {
    if (!m || !m->tok) { lm_err("detokenize: model is NULL or has no tokenizer"); return INT64_MIN; }
    return lm_tokenizer_decode(m->tok, tokens, n, buf, cap, render_special);
}

bool lm_token_is_eog(const lm_model *m, int32_t token) {
    return m && m->tok && lm_tokenizer_is_eog(m->tok, token);
}

int32_t lm_token_lookup(const lm_model *m, const char *text) {
    return m && m->tok && text ? lm_tokenizer_lookup(m->tok, text, strlen(text)) : -1;
}

lm_tensor *lm_model_weight(lm_model *m, const char *name) {
    if (!m || !name) { lm_err("weight: model or name is NULL"); return NULL; }
    lm_weights_tensor t;
    if (!lm_weights_find(m->weights, name, &t)) { lm_err("weight: the model has no tensor '%s'", name); return NULL; }
    return lm_weights_view(m->weights, name);
}
