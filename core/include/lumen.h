/* lumen — the public C API.
 *
 * This header is the only thing lua/ binds (with ffi.cdef), so it stays plain:
 * opaque handles, plain structs, enums with explicit values, no macros that the
 * FFI would need to evaluate. Everything is prefixed lm_.
 *
 * Conventions
 * - Functions that can fail return lm_status (LM_OK == 0) or NULL, and set a
 *   thread-local message readable with lm_last_error(). The message names the
 *   file or argument at fault. Library code never exits or aborts.
 * - Whoever creates frees: lm_x_new/lm_x_load pair with lm_x_free.
 * - Shapes are listed outermost first (rows, then columns), as in numpy.
 */
#ifndef LUMEN_H
#define LUMEN_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef int lm_status;
enum { LM_OK = 0, LM_ERR = -1 };

const char *lm_last_error(void);
const char *lm_version(void);

/* Element types. The numbers are GGUF's (ggml's) type ids so files map directly. */
typedef enum lm_dtype {
    LM_F32 = 0, LM_F16 = 1, LM_Q4_0 = 2, LM_Q4_1 = 3, LM_Q5_0 = 6, LM_Q5_1 = 7,
    LM_Q8_0 = 8, LM_Q8_1 = 9, LM_Q2_K = 10, LM_Q3_K = 11, LM_Q4_K = 12, LM_Q5_K = 13,
    LM_Q6_K = 14, LM_Q8_K = 15, LM_I8 = 24, LM_I16 = 25, LM_I32 = 26, LM_I64 = 27,
    LM_F64 = 28, LM_BF16 = 30, LM_DTYPE_COUNT = 40
} lm_dtype;

/* Name ("q4_k"), elements per block, bytes per block; name NULL / sizes 0 for an unknown id. */
const char *lm_dtype_name(int dtype);
int lm_dtype_block_size(int dtype);
size_t lm_dtype_type_size(int dtype);
/* Bytes of a row of n elements; 0 when n is not a multiple of the block size. */
size_t lm_dtype_row_size(int dtype, int64_t n);
/* Parses a name such as "q8_0" (case-insensitive); -1 when unknown. */
int lm_dtype_from_name(const char *name);

/* ---- tensors ----------------------------------------------------------------
 * A tensor is a view (dtype, shape, byte strides, offset) over a reference-counted
 * storage: memory it allocated, a model's mmapped weights, or a session's buffers.
 * A view keeps its storage alive, so a tensor outlives the model or session it
 * came from safely. Quantized dtypes are viewed by whole rows: the innermost
 * dimension is contiguous and a multiple of the block size. */
typedef struct lm_tensor lm_tensor;
enum { LM_MAX_DIMS = 4 };

/* Zero-filled, contiguous. */
lm_tensor *lm_tensor_new(int dtype, int ndim, const int64_t *shape);
/* A view of external memory; release(ctx) runs when the last view is dropped (may be NULL). */
lm_tensor *lm_tensor_wrap(int dtype, int ndim, const int64_t *shape, void *data,
                          void (*release)(void *ctx), void *ctx);
/* A new view over t's storage: offset in bytes from t's data, strides in bytes (NULL: contiguous). */
lm_tensor *lm_tensor_view(lm_tensor *t, int ndim, const int64_t *shape, const int64_t *strides,
                          int64_t byte_offset);
/* Elements [start, end) along dim, without copying. */
lm_tensor *lm_tensor_slice(lm_tensor *t, int dim, int64_t start, int64_t end);
/* A contiguous copy (converts to dtype when dtype != t's; only to F32 from quantized). */
lm_tensor *lm_tensor_copy(const lm_tensor *t, int dtype);
lm_tensor *lm_tensor_retain(lm_tensor *t);
void lm_tensor_free(lm_tensor *t);   /* drops one reference; NULL is fine */

int lm_tensor_dtype(const lm_tensor *t);
int lm_tensor_ndim(const lm_tensor *t);
int64_t lm_tensor_dim(const lm_tensor *t, int i);     /* 0 when i is out of range */
int64_t lm_tensor_stride(const lm_tensor *t, int i);  /* bytes */
int64_t lm_tensor_numel(const lm_tensor *t);
size_t lm_tensor_nbytes(const lm_tensor *t);          /* of a contiguous layout */
bool lm_tensor_is_contiguous(const lm_tensor *t);
void *lm_tensor_data(const lm_tensor *t);
int32_t lm_tensor_refcount(const lm_tensor *t);

/* Tensor math on F32 tensors of any strides (quantized inputs are dequantized
 * where noted). Results are new contiguous F32 tensors; NULL + message on a
 * shape or dtype mismatch. Binary ops broadcast b when b has fewer dims (its
 * shape must match a's trailing dims) or is a single element. */
typedef enum lm_binop { LM_OP_ADD = 0, LM_OP_SUB = 1, LM_OP_MUL = 2, LM_OP_DIV = 3 } lm_binop;
lm_tensor *lm_tensor_binary(int op, const lm_tensor *a, const lm_tensor *b);
lm_tensor *lm_tensor_scale(const lm_tensor *a, float s);
/* [.., m, k] x [k, n] -> [.., m, n] through oneDNN; b may be quantized ([n, k] rows
 * when transpose_b, as weights are stored), it is then dequantized first. */
lm_tensor *lm_tensor_matmul(const lm_tensor *a, const lm_tensor *b, bool transpose_b);
lm_tensor *lm_tensor_softmax(const lm_tensor *a);    /* over the last dimension */
/* Over all elements, in row-major order of the view. */
int64_t lm_tensor_argmax(const lm_tensor *a);        /* -1 on error */
/* The k largest of a 1-D tensor, descending: fills idx/val (k entries each); returns k used or -1. */
int64_t lm_tensor_topk(const lm_tensor *a, int64_t k, int64_t *idx, float *val);
/* log(sum(exp(a))) over a 1-D F32 tensor, computed stably; NAN on error.
 * With it, logprob(i) = a[i] - lm_tensor_logsumexp(a). */
double lm_tensor_logsumexp(const lm_tensor *a);
/* dot / cosine of two tensors with the same number of elements; NAN on error. */
double lm_tensor_dot(const lm_tensor *a, const lm_tensor *b);
double lm_tensor_cosine(const lm_tensor *a, const lm_tensor *b);

/* ---- models ---------------------------------------------------------------- */
typedef struct lm_model lm_model;

typedef struct lm_model_params {
    int n_threads;      /* worker threads for compute; <= 0 means all cores */
    lm_dtype kv_type;   /* its sessions' default KV cache type: LM_F16, or LM_Q8_0 (half the
                           memory); 0 (LM_F32) means LM_F16 */
} lm_model_params;

typedef struct lm_model_info {
    const char *arch;        /* "llama", "qwen2", "gemma3", ... */
    const char *name;        /* general.name, or the file name */
    const char *path;
    const char *chat_template; /* tokenizer.chat_template, or NULL */
    int64_t n_params;
    uint64_t file_size;
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    int32_t bos_token, eos_token; /* -1 when absent */
    int32_t file_type;          /* dominant weight dtype */
    bool tiled;   /* every layer matrix has integer tile kernels here: a few tokens of
                     several sessions in one pass (lm_session_eval_batch) cost little
                     more per token than a prompt through the GEMM */
    bool panels;  /* every layer matrix takes every token, prompt or decode, through the
                     integer panels here (AVX-512 VNNI: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and
                     the K-quants being interleaved): a prompt at once or one token at a
                     time gives the same bits, in a server's batches always, in one
                     session's evaluation up to amx_prompt tokens */
    int32_t amx_prompt; /* 0, or the fewest tokens of one session's prompt (lm_session_eval)
                           that go through AMX's bf16 tiles here instead (every layer matrix
                           has them): to 2^-7 of the panels' sums, not their bits */
    const char *family;  /* the architecture family that runs it: "llama", "bert" */
    bool encoder;        /* an embedding model: lm_embed_*, no sessions */
    int32_t max_tokens;  /* encoders: the longest input in tokens, [CLS] and [SEP] included
                            (sentence-transformers' max_seq_length where the model has one) */
    int32_t pooling;     /* encoders: the model's own lm_pooling */
    bool normalize;      /* encoders: the model's own L2 normalization */
    bool vision;         /* a vision projector (mmproj, family "clip"): lm_vision_*, no tokenizer,
                            no sessions; n_embd, n_layer, n_head, n_ff are its ViT's */
    int32_t interleaved;  /* matrices in decode's interleaved layout so far, the layers' then the
                             output's (tied to the token embeddings or not; they keep the
                             file's rows): a thread of
                             the model's copies them after lm_model_load returns where the CPU
                             has the kernels (AVX-512 VNNI; Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
                             Q6_K), the same results before and after (LUMEN_INTERLEAVE=0: none) */
    int32_t interleaving; /* matrices that thread has still to do (0: done) */
} lm_model_info;

lm_model *lm_model_load(const char *path, const lm_model_params *params);
void lm_model_free(lm_model *model);
/* Returns when the model's layer matrices are in their final layout
 * (lm_model_info.interleaving == 0): before timing decode, say. */
void lm_model_wait_layout(lm_model *model);
void lm_model_get_info(const lm_model *model, lm_model_info *out);

/* A model is a GGUF file or a Hugging Face model directory (config.json,
 * model.safetensors, tokenizer.json or vocab.txt); lm_model_load tells them
 * apart by whether path is a directory. */

/* ---- embeddings (encoder models: the BERT family) ----------------------------
 * Many texts in one forward pass: their tokens are packed back to back (no
 * padding) and each attends to its own tokens only. Pooling numbers are
 * llama.cpp's (bert.pooling_type). */
typedef enum lm_pooling { LM_POOLING_NONE = 0, LM_POOLING_MEAN = 1, LM_POOLING_CLS = 2 } lm_pooling;

typedef struct lm_embed_params {
    int32_t pooling;     /* lm_pooling; -1: the model's own (1_Pooling/config.json, bert.pooling_type) */
    int32_t normalize;   /* 1: L2-normalize, 0: not, -1: as the model says */
    int32_t max_tokens;  /* <= 0: the model's max_tokens; larger is capped to it */
    bool truncate;       /* texts longer than max_tokens: cut (keeping [SEP]) when true, else an
                            error naming the text and the limit */
} lm_embed_params;

lm_embed_params lm_embed_default_params(void);   /* the model's own settings, truncate on */
/* Embeddings of n texts (texts[i] of lens[i] bytes, UTF-8) into out[n][n_embd].
 * Each text is tokenized as the model's tokenizer does ([CLS] text [SEP];
 * literal special tokens such as "[SEP]" count as those, as in Hugging Face's
 * tokenizers); n_tokens (may be NULL) receives how many tokens each one took
 * after truncation (for usage accounting). Errors name the text by its
 * 0-based index. Thread-safe (one pass at a time per model). */
lm_status lm_embed_texts(lm_model *model, const char *const *texts, const size_t *lens, int32_t n,
                         const lm_embed_params *params, float *out, int32_t *n_tokens);
/* The same from token ids: sequence i is tokens[offsets[i] .. offsets[i+1]),
 * complete with its special tokens. A sequence longer than max_tokens is an
 * error naming it and the limit (or, with truncate, cut keeping its last token). */
lm_status lm_embed_tokens(lm_model *model, const int32_t *tokens, const int64_t *offsets, int32_t n,
                          const lm_embed_params *params, float *out);

/* ---- images and vision projectors -------------------------------------------
 * An image is decoded from JPEG, PNG or WebP (told apart by their first bytes)
 * into 8-bit RGB as Pillow's convert("RGB") leaves it (alpha dropped, gray
 * replicated). Sizes come from the header and are refused before decoding past
 * 16384 pixels a side or 100 Mpixel; truncated files are errors.
 * A vision projector is llama.cpp's mmproj GGUF (general.architecture "clip",
 * projector type idefics3: SmolVLM), loaded with lm_model_load. It turns an image
 * into rows of the text model's embedding width: the image is cut into tiles
 * (grid_x * grid_y, row-major, then one overview of the whole image), each tile
 * becomes tile_tokens rows. */
typedef struct lm_image lm_image;
lm_image *lm_image_decode(const void *data, size_t len, const char *name); /* name: for messages */
lm_image *lm_image_load(const char *path);
void lm_image_free(lm_image *img);
int32_t lm_image_width(const lm_image *img);
int32_t lm_image_height(const lm_image *img);
const uint8_t *lm_image_rgb(const lm_image *img);   /* height rows of width RGB pixels */

typedef struct lm_vision_info {
    int32_t image_size;      /* a tile's side in pixels */
    int32_t patch_size, scale_factor;
    int32_t longest_edge;    /* the image's long side is resized to this before tiling */
    int32_t proj_dim;        /* width of the rows it makes (the text model's n_embd) */
    int32_t tile_tokens;     /* rows per tile */
} lm_vision_info;
lm_status lm_vision_get_info(const lm_model *mmproj, lm_vision_info *out);
/* An error naming both files when the projector's rows do not fit the text model. */
lm_status lm_vision_check(const lm_model *mmproj, const lm_model *text);
/* How img is cut: *grid_x * *grid_y tiles plus the overview. */
lm_status lm_vision_grid(const lm_model *mmproj, const lm_image *img, int32_t *grid_x, int32_t *grid_y);
/* The preprocessed tiles, [n_tiles][3][image_size][image_size] (for checks against llama.cpp). */
lm_status lm_vision_preprocess(const lm_model *mmproj, const lm_image *img, float *out);
/* The image's rows: out[(grid_x * grid_y + 1) * tile_tokens][proj_dim], tiles in the order above. */
lm_status lm_vision_encode(lm_model *mmproj, const lm_image *img, float *out);
/* The same on a thread of its own, so the caller (a server's loop) goes on meanwhile. The job
 * takes the image (freed with the job, also on failure to start); the mmproj stays loaded
 * until the job is freed. poll never blocks: 0 still running, 1 done, -1 failed
 * (lm_last_error() says why). rows: NULL until done; then out[n_rows][proj_dim], valid
 * until the job is freed. free waits for the thread (at once when poll said done). */
typedef struct lm_vision_job lm_vision_job;
lm_vision_job *lm_vision_encode_start(lm_model *mmproj, lm_image *img);
int lm_vision_encode_poll(lm_vision_job *job);
const float *lm_vision_job_rows(const lm_vision_job *job, int32_t *n_rows, int32_t *grid_x, int32_t *grid_y);
void lm_vision_job_free(lm_vision_job *job);

/* ---- tokenizer (owned by the model) -------------------------------------- */
/* Writes up to cap ids; returns the number of tokens, or -(needed) when cap is too
 * small (nothing is lost: call again with a larger buffer), or INT64_MIN on error.
 * parse_special: the text of a control token ("<|im_end|>") becomes that token, and the
 * byte LM_SPECIAL_BREAK is dropped (it never occurs in UTF-8); user-defined tokens are
 * cut out of the text either way, as llama.cpp does. */
int64_t lm_tokenize(const lm_model *model, const char *text, size_t len, int32_t *out,
                    int64_t cap, bool add_special, bool parse_special);
/* Untrusted text (a chat message's content) on its way into a prompt that is tokenized
 * with parse_special: a copy with LM_SPECIAL_BREAK inside every control token's text in
 * it, and at either end where a control token could begin or end across that end, so
 * that the prompt's tokens for it are the tokens of the text alone without special
 * parsing. Same return convention as lm_tokenize (bytes). */
enum { LM_SPECIAL_BREAK = 0xFF };
int64_t lm_escape_special(const lm_model *model, const char *text, size_t len, char *out,
                          int64_t cap);
/* Bytes of one token (may be part of a UTF-8 character). Returns the length, or
 * -(needed) when cap is too small, or INT32_MIN for an id out of range. */
int32_t lm_token_to_piece(const lm_model *model, int32_t token, char *buf, int32_t cap,
                          bool render_special);
/* Concatenated pieces; same return convention as lm_tokenize. */
int64_t lm_detokenize(const lm_model *model, const int32_t *tokens, int64_t n, char *buf,
                      int64_t cap, bool render_special);
bool lm_token_is_eog(const lm_model *model, int32_t token);
/* Id of a token given its exact text (e.g. "<|im_end|>"), or -1. */
int32_t lm_token_lookup(const lm_model *model, const char *text);
/* Length of the longest prefix of s[0..n) that does not end inside a UTF-8 sequence. */
size_t lm_utf8_complete_len(const char *s, size_t n);
/* s[0..n) with every ill-formed UTF-8 subpart (a stray byte, a sequence cut
 * short) replaced by U+FFFD, into out (room for 3 * n bytes); returns the
 * length written. Generated text crosses into JSON through it. */
int64_t lm_utf8_sanitize(const char *s, int64_t n, char *out);

/* ---- sessions: a KV cache and the position in it -------------------------- */
typedef struct lm_session lm_session;

typedef struct lm_session_params {
    int32_t n_ctx;     /* context length in tokens; <= 0: min(4096, model's) */
    int32_t n_batch;   /* max tokens per forward pass in eval; <= 0: 512 */
    lm_dtype kv_type;  /* LM_F16 or LM_Q8_0 (head_dim a multiple of 32); 0: the model's default */
} lm_session_params;

lm_session *lm_session_new(lm_model *model, const lm_session_params *params);
void lm_session_free(lm_session *s);
/* Appends tokens to the context and runs the forward pass. Afterwards
 * lm_session_logits() holds the logits after the last token. */
lm_status lm_session_eval(lm_session *s, const int32_t *tokens, int32_t n);
/* Appends n rows of embeddings (rows[n][n_embd]: an image's rows from lm_vision_encode)
 * where token ids would be looked up, and runs the forward pass. The token history
 * records these positions as negative ids, -1 - ((H + i) mod 2^30) for row i, H a hash of
 * all n rows: they never equal a token, and positions of different images differ, so a
 * prefix match over lm_session_tokens reuses an image's positions only for the same rows. */
lm_status lm_session_eval_embd(lm_session *s, const float *rows, int32_t n);
/* The history ids lm_session_eval_embd records for these n rows (of the text model m's
 * n_embd), into out[n]: a prompt that holds them matches a session's history by prefix. */
lm_status lm_embd_ids(const lm_model *m, const float *rows, int32_t n, int32_t *out);
/* View of n_vocab floats, valid until the next eval/rewind/free. */
/* Continuous batching: appends tokens[i] to sessions[i] for every i, all in
 * one forward pass (split at the largest session's n_batch), so the weights are
 * read once for all of them. A session may take several entries in a row (a
 * prompt chunk riding along with other sessions' decode tokens); its entries
 * must be adjacent. Afterwards each session's logits are those after its last
 * entry, bit for bit what lm_session_eval of its tokens one at a time would
 * leave (the integer kernels, never the prefill GEMM). */
lm_status lm_session_eval_batch(lm_session *const *sessions, const int32_t *tokens, int32_t n);
float *lm_session_logits(lm_session *s);
int32_t lm_session_pos(const lm_session *s);
int32_t lm_session_n_ctx(const lm_session *s);
lm_dtype lm_session_kv_type(const lm_session *s);   /* LM_F16 or LM_Q8_0 */
/* Forgets everything after the first n tokens. The logits are those after token n
 * only once something is evaluated again (or n == pos). */
lm_status lm_session_rewind(lm_session *s, int32_t n);
/* The tokens in the context (pos of them), valid until the next eval/rewind/free. */
const int32_t *lm_session_tokens(const lm_session *s);
/* A new, independent session with the same context so far (KV cache copied). */
lm_session *lm_session_fork(const lm_session *s);
/* Saves the context (tokens, KV cache, logits) to a file / restores it into a session
 * of the same model whose n_ctx is large enough. Restore checks the file thoroughly. */
lm_status lm_session_save(const lm_session *s, const char *path);
lm_status lm_session_load(lm_session *s, const char *path);
/* Sessions are reference counted like models: free drops one reference. */
lm_session *lm_session_retain(lm_session *s);
/* A 1-D F32 tensor viewing the logits in place; it keeps the session alive. */
lm_tensor *lm_session_logits_tensor(lm_session *s);
/* A tensor viewing a weight of the model ("blk.0.attn_q.weight"); it keeps the
 * file mapped after the model is freed. NULL when there is no such tensor. */
lm_tensor *lm_model_weight(lm_model *model, const char *name);

/* ---- samplers ----------------------------------------------------------------
 * A sampler is a chain of links applied, in order, to the candidates (token ids
 * with logits). Filtering links (top-k, top-p, ...) shrink the set; a terminal
 * link (greedy, dist) picks the token. An "external" link is a place in the
 * chain where the caller runs its own code on the candidates (lua/ runs a Lua
 * function there): lm_sampler_begin + lm_sampler_run stop at each one. A chain
 * without a terminal link picks the highest remaining logit. */
typedef struct lm_sampler lm_sampler;

typedef struct lm_candidates {
    int32_t *ids;
    float *logits;
    float *probs;      /* softmax of logits, valid when has_probs */
    int32_t n;         /* live candidates; a link may lower it to drop the tail */
    int32_t n_vocab;
    bool sorted;       /* by logit, descending */
    bool has_probs;
} lm_candidates;

typedef struct lm_sampler_params {
    float temperature;   /* <= 0: greedy */
    int32_t top_k;       /* <= 0: off */
    float top_p;         /* >= 1: off */
    float min_p;         /* <= 0: off */
    float typical_p;     /* >= 1: off */
    float repeat_penalty;/* 1: off */
    float frequency_penalty, presence_penalty; /* 0: off */
    int32_t penalty_last_n;
    uint64_t seed;
} lm_sampler_params;

lm_sampler_params lm_sampler_default_params(void);
/* The standard chain for params: penalties, top-k, typical, top-p, min-p, temperature, dist (or greedy). */
lm_sampler *lm_sampler_new(const lm_sampler_params *params);
/* An empty chain to add links to. */
lm_sampler *lm_sampler_chain_new(uint64_t seed);
void lm_sampler_free(lm_sampler *s);

lm_status lm_sampler_add_greedy(lm_sampler *s);
lm_status lm_sampler_add_dist(lm_sampler *s);
lm_status lm_sampler_add_temperature(lm_sampler *s, float t);
lm_status lm_sampler_add_top_k(lm_sampler *s, int32_t k);
lm_status lm_sampler_add_top_p(lm_sampler *s, float p, int32_t min_keep);
lm_status lm_sampler_add_min_p(lm_sampler *s, float p, int32_t min_keep);
lm_status lm_sampler_add_typical(lm_sampler *s, float p, int32_t min_keep);
lm_status lm_sampler_add_penalties(lm_sampler *s, int32_t last_n, float repeat, float frequency, float presence);
lm_status lm_sampler_add_logit_bias(lm_sampler *s, const int32_t *ids, const float *bias, int32_t n);
lm_status lm_sampler_add_external(lm_sampler *s);
int32_t lm_sampler_n_links(const lm_sampler *s);

/* One call: the whole chain on a copy of logits (not modified); -1 on error, or
 * when the chain has external links (use begin/run). */
int32_t lm_sampler_sample(lm_sampler *s, const float *logits, int32_t n_vocab);
/* The same for n sessions of one model at once, on the model's threads:
 * out[i] = lm_sampler_sample(samplers[i], logits of sessions[i]). Each sampler
 * once at most (each draws from its own state); no external links. */
lm_status lm_sessions_sample(lm_sampler *const *samplers, lm_session *const *sessions, int32_t n, int32_t *out);
/* Step by step: load the candidates, then run links from index `from` up to the
 * next external link; returns that link's index, or lm_sampler_n_links() at the end. */
lm_candidates *lm_sampler_begin(lm_sampler *s, const float *logits, int32_t n_vocab);
int32_t lm_sampler_run(lm_sampler *s, int32_t from);
/* Sets the choice (an external link may pick the token itself). */
void lm_sampler_set_result(lm_sampler *s, int32_t token);
/* The token picked after run() reached the end (or set_result), -1 if none yet. */
int32_t lm_sampler_result(lm_sampler *s);
/* Records a token that was accepted (for penalties); history is the accepted tokens. */
void lm_sampler_accept(lm_sampler *s, int32_t token);
const int32_t *lm_sampler_history(const lm_sampler *s, int32_t *n);
/* Clears the history and re-seeds the RNG. */
void lm_sampler_reset(lm_sampler *s, uint64_t seed);
/* Sorts the candidates by logit (descending) and fills probs: for external links. */
void lm_candidates_softmax(lm_candidates *c);
/* Drops the candidates whose token's bit is clear in bits (n_vocab bits, token t
 * at bits[t / 32] >> (t % 32)); keeps their order; returns how many are left. */
int32_t lm_candidates_keep(lm_candidates *c, const uint32_t *bits);

/* ---- grammars: constrained output ---------------------------------------------
 * A grammar in llama.cpp's GBNF notation, compiled once (no model needed: this is
 * also the validator; errors read "grammar:LINE:COL: problem"). A token trie holds a
 * model's token pieces for the masks; build it once per model and share it. A
 * matcher is one parse state: which tokens may come next (EOG tokens only where
 * the grammar may end), and accepting a token advances it. Grammars and tries are
 * immutable and reference counted (free drops one reference); a matcher belongs
 * to one thread at a time. */
typedef struct lm_grammar lm_grammar;
typedef struct lm_token_trie lm_token_trie;
typedef struct lm_matcher lm_matcher;
typedef enum lm_grammar_status {
    LM_GRAMMAR_OPEN = 0,      /* the text so far needs more to be complete */
    LM_GRAMMAR_MAY_END = 1,   /* complete, and it may also go on */
    LM_GRAMMAR_COMPLETE = 2,  /* complete and nothing can follow (or an end token was accepted): stop */
    LM_GRAMMAR_FAILED = 3     /* a token that does not fit was accepted */
} lm_grammar_status;

/* root: the start rule's name (NULL: "root"). Refuses undefined rules and left recursion. */
lm_grammar *lm_grammar_new(const char *gbnf, size_t len, const char *root);
lm_grammar *lm_grammar_retain(lm_grammar *g);
void lm_grammar_free(lm_grammar *g);

lm_token_trie *lm_token_trie_new(const lm_model *model);
lm_token_trie *lm_token_trie_retain(lm_token_trie *t);
void lm_token_trie_free(lm_token_trie *t);
int32_t lm_token_trie_n_vocab(const lm_token_trie *t);
/* Sets the bit of every token whose piece is a non-empty prefix of s[0..n) (bits:
 * n_vocab bits, not cleared first); returns how many bits it set. For constraints
 * written in Lua: the tokens that can start a known continuation. */
int32_t lm_token_trie_mark_prefixes(const lm_token_trie *t, const char *s, size_t n, uint32_t *bits);

/* t may be NULL for a matcher of text only (lm_matcher_accept_text, status). */
lm_matcher *lm_matcher_new(lm_grammar *g, lm_token_trie *t);
void lm_matcher_free(lm_matcher *m);
void lm_matcher_reset(lm_matcher *m);
/* The tokens allowed next as n_vocab bits (valid until the next call on m) and
 * their number; NULL on error. Cached per parse state: a state seen before costs a lookup. */
const uint32_t *lm_matcher_allowed(lm_matcher *m, int32_t *n_allowed);
/* Advances by a token (an EOG token ends the grammar where it may end). A token
 * that does not fit: LM_ERR, and the matcher is FAILED until reset. */
lm_status lm_matcher_accept(lm_matcher *m, int32_t token);
/* Advances by text (bytes); LM_ERR (nothing changed) when it does not fit. */
lm_status lm_matcher_accept_text(lm_matcher *m, const char *s, size_t n);
lm_grammar_status lm_matcher_status(const lm_matcher *m);

/* A chain link that keeps only the candidates the grammar allows (put it before
 * the cuts: top-k/top-p then cut the constrained distribution; right before top-k
 * or greedy it tests only the best few hundred tokens until k fit, the same k the
 * whole mask would leave); when one token alone is allowed it is picked without
 * sampling. The link's matcher advances on
 * lm_sampler_accept of tokens after the chain's first sample since its reset (the
 * prompt tokens accepted before, for the penalties, do not reach it). */
lm_status lm_sampler_add_grammar(lm_sampler *s, lm_grammar *g, lm_token_trie *t);
/* The matcher of the chain's first grammar link (owned by the chain), or NULL:
 * lm_matcher_status tells the caller when to stop. */
lm_matcher *lm_sampler_matcher(lm_sampler *s);

/* ---- tools ------------------------------------------------------------------------ */
/* Whether lm_quantize_file can write dtype (the types with a reference quantizer). */
bool lm_quantize_supports(int dtype);
/* Writes a copy of the GGUF model `in` to `out` with every 2-D weight matrix
 * requantized to dtype (one lm_quantize_supports: q4_0 ... q6_k, f16, bf16, f32);
 * norms and biases stay f32, metadata is copied (general.file_type updated).
 * Matrices whose rows are not a whole number of dtype's blocks keep their type.
 * The output appears under its name only when complete. */
lm_status lm_quantize_file(const char *in, const char *out, int dtype, int n_threads);

/* ---- exact vector search -----------------------------------------------------------
 * Brute-force top-k by inner product over an embedding store (the RAG store's chunk
 * vectors): every row is scored, nothing is approximate. Scores come from one fixed
 * summation order (kernels/vsearch.h), the same bits on every CPU kernel and any
 * number of threads. */
/* Scores every row against query (inner product: cosine for L2-normalized rows) and keeps
 * the k best, best first (ties: the lower row first). rows: n rows of dim elements, contiguous,
 * dtype LM_F32 (float) or LM_I8 (int8_t; row i's score is scales[i] * dot(query, row_i)).
 * ids[k] / scores[k] receive them (ids: 0-based row numbers); returns how many were written (min(k, n)), or -1 with
 * lm_last_error() on bad arguments. n_threads <= 0: all cores.
 * Arguments: n >= 0, dim >= 1, k >= 0; query never NULL; rows (and scales for LM_I8) may be
 * NULL only when n == 0, ids and scores only when k == 0. A NaN score ranks below every
 * other score. Small stores (n * dim under ~1M elements per thread) are scored on the
 * calling thread; for larger ones up to n_threads - 1 threads are created for the call and
 * share the rows with the caller (results do not depend on the number). Nothing is kept
 * between calls; calls may run concurrently on the same rows. */
int64_t lm_vec_topk(const void *rows, int dtype, const float *scales, int64_t n, int32_t dim,
                    const float *query, int32_t k, int32_t n_threads, int64_t *ids, float *scores);
/* n rows of dim floats to int8, one scale per row (max|x| / 127, rounding to nearest), for lm_vec_topk.
 * out[i * dim + j] = round_to_nearest_even(x[i * dim + j] / scales[i]) (an all-zero row: scale 0,
 * quants 0), so |x - scales[i] * out| <= scales[i] / 2 (to float rounding; coarser for rows whose
 * max|x| is below ~1e-36, where the scale is subnormal). Fails (-1, lm_last_error())
 * on NULL pointers, n < 0, dim <= 0 or a row with an infinite or NaN element. */
lm_status lm_vec_quantize_i8(const float *x, int64_t n, int32_t dim, int8_t *out, float *scales);

/* ---- files ----------------------------------------------------------------------- */
/* SHA-256 of a whole file as 64 lowercase hex digits (+ NUL) in hex_out[65]. */
lm_status lm_sha256_file(const char *path, char *hex_out);
/* Size in bytes and modification time (seconds) of a file. */
lm_status lm_file_info(const char *path, int64_t *size, int64_t *mtime);
/* SHA-256 of a buffer, same output form. */
void lm_sha256_hex(const void *data, size_t len, char *hex_out);
/* a[0..n) == b[0..n), in time that depends on n only (for secrets: compare the SHA-256
 * digests of a presented API key and of each known key, so no length leaks either). */
bool lm_ct_equal(const void *a, const void *b, size_t n);

/* ---- downloads (libcurl; `lumen pull`) -------------------------------------------------
 * lm_fetch_file downloads an http:// or https:// URL into partial_path. Bytes already in
 * partial_path (an earlier, interrupted run) are kept and the rest is asked for with a Range
 * request; a server that ignores it (200) or answers with another range makes the file start
 * again from zero, and the old bytes are dropped only once the new body begins. The file's
 * ETag (or Last-Modified) is kept in PARTIAL.etag and sent as If-Range when continuing, so
 * a file changed upstream comes whole rather than spliced onto old bytes (the .etag file
 * is removed on success). Redirects are followed (http and https only). The file is hashed as it is written, so
 * out->sha256 is the whole file's without reading it again. On any failure the bytes
 * received stay in partial_path for the next run, and the message names the URL (and the
 * HTTP status: "HTTP 404 Not Found"). Moving the file into place is the caller's: after
 * checking out->sha256 against its pin. Two runs on one partial_path at once: the second
 * fails ("another download is writing it"). partial_path's folder is created if missing. */
typedef struct lm_fetch_progress {
    int64_t bytes;          /* in the partial file now */
    int64_t total;          /* of the whole file: expected_size, or as the server says; -1 unknown */
    int64_t resumed_from;   /* already in the file when this transfer began */
    double seconds;         /* since this transfer began */
} lm_fetch_progress;
/* Called at most once per progress_interval_s, and once at the end; nonzero cancels. */
typedef int32_t (*lm_fetch_progress_fn)(const lm_fetch_progress *p, void *ctx);
typedef struct lm_fetch_params {   /* all zero: the defaults */
    int64_t expected_size;         /* <= 0: unknown; otherwise a file of another size is an error */
    int32_t connect_timeout_s;     /* <= 0: 30 */
    int32_t low_speed_time_s;      /* abort after this long under low_speed_bytes per second; <= 0: 60 */
    int32_t low_speed_bytes;       /* <= 0: 1024 */
    double progress_interval_s;    /* <= 0: 0.25 */
    lm_fetch_progress_fn progress; /* may be NULL */
    void *ctx;
} lm_fetch_params;
typedef struct lm_fetch_result {
    int64_t size;           /* of the complete file */
    int64_t resumed_from;   /* bytes reused from an earlier run (0: all downloaded now) */
    int32_t http_status;    /* of the final response: 200 or 206 (0: nothing was left to fetch) */
    int32_t restarted;      /* 1 when a partial file was there but the download began again from zero */
    char sha256[65];        /* of the whole file: 64 lowercase hex digits + NUL */
} lm_fetch_result;
lm_status lm_fetch_file(const char *url, const char *partial_path, const lm_fetch_params *params,
                        lm_fetch_result *out);

/* ---- float rows as text (embeddings in JSON answers) ----------------------------------- */
/* x[0..n) as a JSON array ("[0.0123,-0.5]", each number in the shortest form that reads
 * back to the same float; NaN/Inf as null). Returns the bytes written, or -(needed) when
 * cap is too small (nothing written then), or INT64_MIN on bad arguments. */
int64_t lm_f32_to_json(const float *x, int64_t n, char *out, int64_t cap);
/* Standard base64 (with padding) of data[0..n); same return convention. */
int64_t lm_base64_encode(const void *data, int64_t n, char *out, int64_t cap);
/* The bytes of standard base64 text in[0..n) (padding optional; no white space or other
 * characters: the first one is named by its offset): the bytes written, -(needed) when cap
 * is too small (nothing written then), or INT64_MIN with lm_last_error() set. */
int64_t lm_base64_decode(const char *in, int64_t n, void *out, int64_t cap);

/* ---- document readers (RAG ingest) -------------------------------------------------- */
/* The visible text of an HTML page (libxml2's forgiving HTML parser): the title, then text
 * in document order with script/style/head skipped, white space runs folded, block elements
 * (p, div, li, h1..h6, tr, ...) ending paragraphs ("\n\n"). *out is malloc'd and
 * NUL-terminated (free with lm_free). */
lm_status lm_html_to_text(const char *html, size_t len, char **out, size_t *out_len);
/* Regular files under dir, recursively (links not followed), as paths relative to dir,
 * sorted, each NUL-terminated, back to back in *out (free with lm_free). */
lm_status lm_list_files(const char *dir, char **out, size_t *out_len, int64_t *n_files);
void lm_free(void *p);

/* ---- YAML documents (libyaml) ------------------------------------------------
 * A parsed document is a flat array of nodes; node 0 is the root. Scalars keep
 * their text (plain scalars are typed by the caller: lua/lumen/yaml.lua). Aliases
 * are resolved (a node may be reached twice); positions are 1-based. */
typedef struct lm_yaml lm_yaml;
typedef enum lm_yaml_kind { LM_YAML_SCALAR = 1, LM_YAML_SEQ = 2, LM_YAML_MAP = 3 } lm_yaml_kind;
typedef enum lm_yaml_style { LM_YAML_PLAIN = 0, LM_YAML_QUOTED = 1, LM_YAML_BLOCK = 2 } lm_yaml_style;
typedef struct lm_yaml_node {
    int32_t kind;          /* lm_yaml_kind */
    int32_t style;         /* lm_yaml_style, for scalars */
    const char *value;     /* scalar text, NUL-terminated (may contain NULs: use len) */
    size_t len;
    int32_t n_items;       /* children: sequence items, or 2 * pairs (key, value, key, value...) */
    const int32_t *items;  /* node indices */
    int32_t line, column;
    const char *tag;       /* explicit tag such as "!!str", or NULL */
} lm_yaml_node;

/* Parses a file / a buffer (name used in messages). Errors: "FILE:LINE:COL: problem". */
lm_yaml *lm_yaml_load_file(const char *path);
lm_yaml *lm_yaml_load_string(const char *text, size_t len, const char *name);
void lm_yaml_free(lm_yaml *y);
int32_t lm_yaml_n_nodes(const lm_yaml *y);
const lm_yaml_node *lm_yaml_node_at(const lm_yaml *y, int32_t i); /* NULL when out of range */
const char *lm_yaml_name(const lm_yaml *y);

/* ---- HTTP front end (libmicrohttpd) -------------------------------------------------
 * The transport of `lumen serve`. libmicrohttpd parses HTTP in its own threads (one per
 * connection); one consumer thread (the Lua scheduler) takes complete requests with
 * lm_http_next and answers each one with lm_http_respond, or with lm_http_stream_open,
 * any number of lm_http_stream_write and lm_http_stream_close. The consumer functions
 * are meant for that one thread; none of them blocks on a client.
 * A request is "finished" by lm_http_respond or lm_http_stream_close (whether they
 * succeed or report a gone client), by a failing lm_http_stream_write, by
 * lm_http_alive returning false, or by lm_http_stop; its strings and id are invalid
 * afterwards (later calls with the id return LM_ERR). */
typedef struct lm_http lm_http;
typedef struct lm_http_params {
    const char *host;          /* address to bind, e.g. "127.0.0.1" (NULL: 127.0.0.1); "0.0.0.0", "::1" allowed */
    int32_t port;              /* 0: any free port (see lm_http_port) */
    int64_t max_body_bytes;    /* <= 0: 1 MiB. Larger bodies get 413 + OpenAI-style JSON error from C and never reach lm_http_next */
    int32_t timeout_s;         /* idle timeout (slow clients) <= 0: 30: a connection that sends nothing
                                  while its request is read, or a stream whose client takes none of
                                  its waiting bytes for this long, is closed */
    int32_t max_connections;   /* <= 0: 256 */
} lm_http_params;
typedef struct lm_http_request {
    int64_t id;                /* > 0 */
    const char *method, *path, *query;   /* path without the query string, both as sent (not %-decoded); query may be "" */
    const char *authorization; /* the Authorization header or "" */
    const char *content_type;  /* or "" */
    const char *body;          /* the raw body bytes (NUL-terminated for convenience, may contain NULs) */
    int64_t body_len;
    const char *remote;        /* the client's address ("127.0.0.1", "::1") */
} lm_http_request;   /* strings stay valid until the request is finished (respond, or stream_close) */

/* Binds and starts serving. NULL + message (e.g. "cannot bind 127.0.0.1:8080: Address already in use"). */
lm_http *lm_http_start(const lm_http_params *p);
/* The bound port (the one picked when params.port was 0). */
int32_t lm_http_port(const lm_http *h);
/* Waits up to timeout_ms (<= 0: don't wait) for the next complete request. Returns 1 and
 * fills *out, 0 on timeout, LM_ERR on error. Requests whose client left while queued are
 * dropped unseen. */
int lm_http_next(lm_http *h, lm_http_request *out, int32_t timeout_ms);
/* Whole response: status 200..599, content_type (NULL or "": none), body[0..len).
 * headers: extra header lines "Name: value\r\n..." or NULL. Finishes the request, also when
 * it returns LM_ERR because the client left ("client disconnected") or the id is unknown;
 * a bad argument (status, header line) leaves the request open so it can still be answered. */
lm_status lm_http_respond(lm_http *h, int64_t id, int32_t status, const char *content_type, const char *body, int64_t len, const char *headers);
/* Starts a chunked streaming response (used for text/event-stream); same arguments and
 * errors as lm_http_respond, but the request stays open for stream_write/stream_close. */
lm_status lm_http_stream_open(lm_http *h, int64_t id, int32_t status, const char *content_type, const char *headers);
/* Queues bytes to send; returns LM_ERR (message "client disconnected") once the client has
 * gone, and the request is then finished. Never blocks on a slow client: data is buffered,
 * and a client with more than 8 MiB unsent counts as gone. */
lm_status lm_http_stream_write(lm_http *h, int64_t id, const char *data, int64_t len);
/* Ends the stream (the last chunk goes out once queued data is flushed) and finishes the
 * request. LM_ERR when the client had gone (the request is finished all the same). */
lm_status lm_http_stream_close(lm_http *h, int64_t id);
/* false once the client of request id disconnected (noticed within ~0.1 s), or when id is
 * unknown/finished. Lets the scheduler drop work for a client that left before its answer:
 * returning false for a gone client finishes the request (no respond/close needed). */
bool lm_http_alive(lm_http *h, int64_t id);
/* Stops accepting and waits (up to timeout_ms) for open streams/responses to flush, then
 * frees everything. Requests never answered get 503; open streams are ended after their
 * queued bytes; whatever is still unsent at the deadline is cut off. h is invalid afterwards. */
void lm_http_stop(lm_http *h, int32_t timeout_ms);
/* SIGTERM/SIGINT handling for the server loop: install once; lm_signal_term() then returns
 * true after such a signal arrived (async-signal-safe flag). The handler is one-shot: a
 * second signal of the same kind acts as if none were installed (kills the process). */
lm_status lm_signal_watch(void);
bool lm_signal_term(void);
/* true when s[0..n) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF); for validating request bodies. */
bool lm_utf8_valid(const char *s, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
