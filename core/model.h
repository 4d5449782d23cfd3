/* Internal model and session structures shared by model.c, session.c and arch/. */
#ifndef LM_MODEL_H
#define LM_MODEL_H

#include "lumen.h"
#include "gguf.h"
#include "pool.h"
#include "tensor.h"
#include "tokenizer.h"
#include "weights.h"

#include <pthread.h>
#include <stdatomic.h>

typedef enum { LM_ARCH_LLAMA, LM_ARCH_QWEN2, LM_ARCH_QWEN3, LM_ARCH_GEMMA3 } lm_arch;

typedef struct lm_hparams {
    lm_arch arch;
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    int32_t n_rot;            /* rotated dims per head */
    float norm_eps;
    float rope_base, rope_base_local, rope_scale;
    int rope_mode;            /* lm_rope_mode */
    float attn_scale;         /* multiplies q.k */
    int32_t sliding_window;   /* 0: none */
    int32_t swa_period;       /* every swa_period-th layer is global; 0: all global */
    bool embd_scale;          /* gemma: embeddings * sqrt(n_embd) */
    bool gelu;                /* GELU-gated FFN instead of SiLU-gated */
} lm_hparams;

typedef struct lm_layer {
    lm_tensor *attn_norm, *wq, *wk, *wv, *wo;
    lm_tensor *bq, *bk, *bv;                 /* qwen2 biases (optional) */
    lm_tensor *q_norm, *k_norm;              /* qwen3/gemma3 per-head norms (optional) */
    lm_tensor *post_attn_norm;               /* gemma3 (optional) */
    lm_tensor *ffn_norm, *w_gate, *w_up, *w_down;
    lm_tensor *post_ffn_norm;                /* gemma3 (optional) */
} lm_layer;

/* The matrices of a layer that go through the matrix products, in one list. */
#define LM_LAYER_MATRICES 7
static inline void lm_layer_matrix_slots(lm_layer *l, lm_tensor **w[LM_LAYER_MATRICES]) {
    w[0] = &l->wq; w[1] = &l->wk; w[2] = &l->wv; w[3] = &l->wo; w[4] = &l->w_gate; w[5] = &l->w_up; w[6] = &l->w_down;
}
/* Their current tensors: acquire loads, as the interleaving thread swaps
 * them in (core/model.c, a release store under eval_mu), so that a reader
 * outside eval_mu (session creation, lm_model_get_info) sees one whole
 * tensor or the other; both have the same dtype and shape. */
static inline void lm_layer_matrices(const lm_layer *l, const lm_tensor *w[LM_LAYER_MATRICES]) {
    lm_tensor **s[LM_LAYER_MATRICES];
    lm_layer_matrix_slots((lm_layer *)l, s);
    for (int i = 0; i < LM_LAYER_MATRICES; i++) w[i] = __atomic_load_n(s[i], __ATOMIC_ACQUIRE);
}

struct lm_arch_ops;

struct lm_model {
    atomic_int refcount;      /* the user's handle + one per live session */
    lm_hparams hp;
    const struct lm_arch_ops *arch; /* the family (arch/arch.h) */
    void *arch_state;         /* what the family keeps beside hp and layers (arch/bert.c) */
    lm_weights *weights;      /* owned by `mapping` (closed when the last view goes) */
    lm_gguf *gguf;            /* weights->gguf: NULL for a Hugging Face directory */
    lm_storage *mapping;      /* weights->mapping; the model's reference */
    lm_tokenizer *tok;
    lm_tensor *tok_embd, *output_norm, *output;
    lm_tensor *rope_freqs;    /* Llama 3: the RoPE angles' divisors (optional) */
    lm_layer *layers;
    lm_pool *pool;
    lm_dtype kv_type;         /* its sessions' default KV cache type (lm_model_params) */
    pthread_mutex_t eval_mu;  /* one forward pass at a time uses the pool */
    float *batch_logits;      /* logits of a batched decode step (under eval_mu) */
    size_t batch_logits_cap;  /* in floats */
    void *batch_idx;          /* a batched step's positions, output rows and prompt flags (under eval_mu) */
    size_t batch_idx_cap;     /* in bytes */
    void *embed_ws;           /* an encoder's workspace (under eval_mu), kept between calls */
    size_t embed_ws_size;
    lm_embed_params embed;    /* an encoder's own pooling, normalization and max_tokens */
    char *path, *name, *arch_name, *chat_template;
    int64_t n_params;
    int32_t file_type;
    /* decode's interleaved layer matrices, written by a thread of their own
     * (core/model.c): each swapped in under eval_mu; the file-layout tensors
     * they replace (same dtype and shape) stay alive until the model goes */
    pthread_t il_thread;
    bool il_started;
    atomic_bool il_stop;
    atomic_int il_pending, il_done;
    lm_storage *il_storage;
    lm_tensor ***il_slot;     /* the matrices it may interleave (il_n: the output's, the layers') */
    int il_n;
    lm_tensor **il_old;
};

struct lm_session {
    atomic_int refcount;
    lm_model *model;
    int32_t *tokens;          /* the context, n_ctx entries */
    int32_t n_ctx, n_batch, pos;
    int64_t kv_dim;           /* n_head_kv * head_dim */
    lm_dtype kv_type;         /* LM_F16 or LM_Q8_0 */
    size_t kv_row;            /* bytes of one position's K (or V) row: kv_dim values of kv_type */
    char *k_cache, *v_cache;  /* [n_layer][n_ctx][kv_row] */
    float *x, *xb, *xb2, *q, *k, *v, *hb, *hb2, *scores, *logits;
    void *qbuf;               /* quantized activations */
    void *wbuf;               /* one dequantized weight matrix, for prefill GEMMs */
    size_t qbuf_size;
};

lm_model *lm_model_retain(lm_model *m);

/* One forward pass of a decoder: n tokens, token t at position pos[t] of
 * sequence seq[t] (its KV cache). A prompt chunk is one sequence at
 * consecutive positions; a batched decode step is one token of each of
 * several sequences. Activations live in the workspace session ws. */
typedef struct lm_batch {
    lm_session *ws;
    lm_session *const *seq;
    const int32_t *pos;
    int32_t n;
    bool gemm;                /* matrix products may use the prefill GEMM */
    const bool *prompt;       /* per token: part of a prompt of two or more (NULL: none is) */
    const float *embd;        /* rows[n][n_embd] in the tokens' place (lm_session_eval_embd), or NULL */
} lm_batch;

/* Forward pass for n tokens at positions s->pos.., writing logits of the last.
 * prompt: they are (part of) a prompt of two or more tokens, whose products go
 * through the integer panels (arch/llama.c's mm); false for a decode token. */
lm_status lm_forward(lm_session *s, const int32_t *tokens, int32_t n, bool prompt);
/* The same with rows of embeddings (rows[n][n_embd]) in the tokens' place. */
lm_status lm_forward_embd(lm_session *s, const float *rows, int32_t n, bool prompt);
/* Tokens of several sessions of one model in one pass with ws's activation
 * buffers (ws->n_batch >= n, ws->n_ctx >= every session's): token t goes to
 * seq[t] at position pos[t]; prompt[t] (NULL: all false) as lm_forward's
 * prompt. Logits for the n_out rows out_rows[] only, into
 * logits[n_out][n_vocab]. Each row comes out bit-identical to the same token
 * through lm_forward with the same prompt flag (no GEMM). */
lm_status lm_forward_multi(lm_session *ws, lm_session *const *seq, const int32_t *pos, const int32_t *tokens, int32_t n,
                           const bool *prompt, const int32_t *out_rows, int32_t n_out, float *logits);
/* Longest forward pass (lm_session_params.n_batch is capped to it). */
#define LM_MAX_BATCH 4096
/* Y[n][out] = X[n][in] @ W^T for W of shape [out][in]; qbuf holds the quantized X. */
void lm_matmul(lm_pool *pool, const lm_tensor *w, const float *x, int64_t n, float *y, void *qbuf);
size_t lm_matmul_qbuf_size(const lm_tensor *w, int64_t n, int threads);
/* Batches of at least this many tokens may go through oneDNN's f32 GEMM on
 * weights dequantized into wbuf (one matrix at a time) instead of the quantized
 * dots; lm_matmul_gemm_min says from how many for a given weight. */
#define LM_GEMM_MIN_TOKENS 16
int64_t lm_matmul_gemm_min(const lm_tensor *w);
/* wbuf: lm_matmul_wbuf_size(w) bytes (0: w never takes the GEMM); qbuf as for
 * lm_matmul (it holds the activations in bf16 when the GEMM runs in bf16) */
lm_status lm_matmul_gemm(lm_pool *pool, const lm_tensor *w, const float *x, int64_t n, float *y, void *wbuf, void *qbuf);
size_t lm_matmul_wbuf_size(const lm_tensor *w);
/* A prompt pass of n tokens on w (one with panels) takes the GEMM before the
 * panels: where oneDNN's bf16 outruns them (core/matmul.c) */
bool lm_matmul_prompt_gemm(const lm_tensor *w, int64_t n);
/* A prompt of n tokens (one session's) on AMX's bf16 tiles: w's type has
 * them on this CPU (the quantized types with repacked panels) and n is enough to amortize dequantizing
 * the weights once (core/matmul.c). lm_matmul_amx: k weights of one type and
 * width (interleaved or not, all alike) against the same activations, as
 * lm_matmul_panel_group; false (nothing done) when they do not qualify. qbuf
 * as lm_matmul_qbuf_size says for each of them. */
bool lm_matmul_prompt_amx(const lm_tensor *w, int64_t n);
int64_t lm_matmul_amx_min(const lm_tensor *w); /* the fewest tokens that take them, or 0: none for w */
bool lm_matmul_amx(lm_pool *pool, const lm_tensor *const *w, int k, const float *x, int64_t n, float *const *y, void *qbuf);
/* The integer panels (kernels/quant.h) in the GEMM's place, for weights that
 * have them; lm_matmul_panel_decode: decode tokens too (lm_quant_entry). */
bool lm_matmul_has_panel(const lm_tensor *w);
bool lm_matmul_panel_decode(const lm_tensor *w);
/* Whether a prompt's tokens take w's panels, else its quantized dots and tiles */
bool lm_matmul_prompt_panel(const lm_tensor *w);
void lm_matmul_panel(lm_pool *pool, const lm_tensor *w, const float *x, int64_t n, float *y, void *qbuf);
/* The same for up to LM_PANEL_GROUP weights of one type, width and row size
 * (each a multiple of the panel's rows) against the same x: one quantizing
 * pass and one pool run for all (q, k and v; gate and up), each y[i] the bits
 * lm_matmul_panel gives. false (nothing done) when they do not qualify. */
#define LM_PANEL_GROUP 3
bool lm_matmul_panel_group(lm_pool *pool, const lm_tensor *const *w, int k, const float *x, int64_t n,
                           float *const *y, void *qbuf);
/* Interleaved layer matrices (kernels/quant.h): whether w can be stored so on
 * this CPU (a contiguous matrix of whole panels of a type that has the
 * kernels), and a tensor on s of w's rows interleaved at dst (w's size, 64-byte
 * aligned), the panels written by the pool's threads. Every product of it
 * (lm_matmul, lm_matmul_panel, lm_matmul_panel_group) has the bits w's would.
 * stop (may be NULL): once it is set, no further panel is begun and NULL is
 * returned, with no error (a model being freed mid-copy). drop: each panel's
 * whole pages of w's rows are dropped once copied (lm_drop_pages; w a private
 * file mapping, whose products read them back from the page cache), so that
 * the copy and its source are not both resident (the Qwen3-8B shape's 510 MB
 * output matrix). */
bool lm_matmul_can_interleave(const lm_tensor *w);
lm_tensor *lm_matmul_interleave(lm_pool *pool, const lm_tensor *w, lm_storage *s, void *dst, const atomic_bool *stop,
                                bool drop);
/* The whole pages within [p, p + n) dropped from the process (MADV_DONTNEED):
 * for a private read-only file mapping, read back from the file if touched. */
void lm_drop_pages(const void *p, size_t n);
/* The chain has a link the caller runs (core/sampler.c). */
bool lm_sampler_has_external(const lm_sampler *s);
/* y[m][n] (row stride ldy) = a[m][k] * w[n][k]^T through oneDNN, single-threaded
 * in the calling thread (core/tensor_ops.c). */
lm_status lm_sgemm_nt(const float *a, int64_t m, int64_t k, const float *w, int64_t n, float *y, int64_t ldy);
/* The same in bf16 (a, w) with f32 results, and the oneDNN implementation it
 * gets on this CPU when that runs on bf16 hardware (AVX512-BF16, AMX), else NULL. */
lm_status lm_bgemm_nt(const uint16_t *a, int64_t m, int64_t k, const uint16_t *w, int64_t n, float *y, int64_t ldy);
const char *lm_bgemm_impl(void);
/* Whether that bf16 product outruns oneDNN's f32 one, so that prompts on
 * quantized weights gain by taking it: on AMX tiles, and on AMD's AVX512-BF16
 * (Zen 4 issues vdpbf16ps at twice the f32 FMA's multiply-adds). Intel's
 * AVX512-BF16 without AMX issues it at the f32 FMA's rate, and oneDNN's bf16
 * there is slower than its f32 (bench/prefill_gemm.c). */
bool lm_bgemm_preferred(void);
/* One head of full (unmasked) attention over L positions through two GEMMs in
 * the calling thread: S = q k^T * scale, softmax by rows, out = S v. Row i of
 * q, k and v is at q + i * ld (HD floats: a head's columns of a fused q|k|v
 * buffer); row i of the result goes to out + i * ldo. The head is copied out
 * contiguous first (v transposed) so oneDNN reads plain row-major matrices.
 * scr: lm_attend_head_scratch(L, HD) floats. false when oneDNN fails. */
bool lm_attend_head_gemm(const float *q, const float *k, const float *v, int64_t ld, int64_t L, int64_t HD,
                         float scale, float *out, int64_t ldo, float *scr);
static inline int64_t lm_attend_head_scratch(int64_t L, int64_t HD) { return 4 * L * HD + L * L; }

#endif
