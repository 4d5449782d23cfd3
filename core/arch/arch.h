/* The architecture registry: one ops table per model family, looked up by the
 * file's architecture name (GGUF general.architecture, or config.json's
 * model_type for a Hugging Face directory). A new family is one file under
 * core/arch/ that defines its table, plus one line in registry.c. */
#ifndef LM_ARCH_H
#define LM_ARCH_H

#include "../model.h"

typedef struct lm_arch_ops {
    const char *family;              /* "llama", "bert" */
    const char *const *names;        /* the architecture names it loads, NULL-terminated */
    bool encoder;                    /* no sessions: embeddings through encode */
    bool vision;                     /* a vision projector (arch/clip.c): no tokenizer, no sessions */
    /* Reads the hyperparameters into m->hp and binds the weights (m->weights). */
    lm_status (*load)(lm_model *m);
    /* Frees what load made (m->layers, m->arch_state); safe after a failed load. */
    void (*unload)(lm_model *m);
    /* Decoders: one forward pass over a batch of tokens of sessions (lm_forward's
     * and lm_forward_multi's contract, in model.h). */
    lm_status (*forward)(const lm_batch *b, const int32_t *tokens, const int32_t *out_rows, int32_t n_out, float *logits);
    /* Encoders: n_seq sequences, their tokens back to back (sequence i is
     * tokens[offsets[i] .. offsets[i+1]), each within hp.n_ctx_train) in one
     * pass; out[n_seq][hp.n_embd] the pooled (and, per how, normalized)
     * embeddings. ws: workspace(m, offsets[n_seq]) bytes, 64-byte aligned. */
    lm_status (*encode)(lm_model *m, const int32_t *tokens, const int64_t *offsets, int32_t n_seq,
                        const lm_embed_params *how, float *out, void *ws);
    size_t (*workspace)(const lm_model *m, int64_t n_tokens);
} lm_arch_ops;

/* ---- shared by the f32 families (arch/f32.c) ---- */
/* Buffers a family makes at load (weights widened to f32, fused matrices), freed together. */
typedef struct lm_owned { void **p; int n; } lm_owned;
void *lm_owned_alloc(lm_owned *o, size_t bytes);   /* 64-byte aligned; NULL when out of memory */
void lm_owned_free(lm_owned *o);
/* t's numel elements as f32: in place when the file holds aligned f32, else
 * widened (f16, bf16) into a buffer of o. Errors name path and name. */
lm_status lm_owned_f32(lm_owned *o, const lm_weights_tensor *t, int64_t numel, const char *path, const char *name,
                       const float **out);

/* out[T][n] (row stride n) = in[T][k] w^T, w [n][k] row-major, through oneDNN
 * split over the pool's threads by output columns; then epi(ctx, y, bias, len)
 * on each row's slice of each thread while it is in cache (bias: that slice of
 * bias, or NULL), e.g. the bias and an activation. epi NULL: none. */
typedef void (*lm_linear_epi)(void *ctx, float *y, const float *bias, int64_t n);
lm_status lm_linear_f32(lm_pool *pool, const float *in, int64_t T, int64_t k, const float *w, const float *bias,
                        int64_t n, float *out, lm_linear_epi epi, void *ctx);

/* The family that loads architecture `name`, or NULL. */
const lm_arch_ops *lm_arch_find(const char *name);
/* "llama, qwen2, ..., bert": every name the registry knows, for messages. */
const char *lm_arch_known(void);

#endif
