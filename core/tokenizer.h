/* Tokenizers read from GGUF metadata: byte-level BPE (tokenizer.ggml.model =
 * "gpt2", with the pre-tokenizer that tokenizer.ggml.pre names) and
 * SentencePiece (tokenizer.ggml.model = "llama"), and BERT's WordPiece
 * (tokenizer.ggml.model = "bert", or a model directory; wordpiece.c).
 * Results match llama.cpp's (WordPiece: Hugging Face tokenizers'). */
#ifndef LM_TOKENIZER_H
#define LM_TOKENIZER_H

#include "gguf.h"

typedef struct lm_tokenizer lm_tokenizer;

/* NULL + lm_err on a missing/invalid tokenizer. Copies what it needs: g may be closed after. */
lm_tokenizer *lm_tokenizer_from_gguf(const lm_gguf *g);
/* A Hugging Face model directory's WordPiece tokenizer (tokenizer.json or vocab.txt). */
lm_tokenizer *lm_tokenizer_from_hf(const char *dir);
void lm_tokenizer_free(lm_tokenizer *t);

int32_t lm_tokenizer_n_vocab(const lm_tokenizer *t);
int32_t lm_tokenizer_bos(const lm_tokenizer *t); /* -1 when none */
int32_t lm_tokenizer_eos(const lm_tokenizer *t);
bool lm_tokenizer_is_eog(const lm_tokenizer *t, int32_t tok); /* eos, eot, <|im_end|>, <end_of_turn>, ... */
int32_t lm_tokenizer_lookup(const lm_tokenizer *t, const char *text, size_t len); /* -1 when absent */

/* Same conventions as lm_tokenize / lm_token_to_piece / lm_detokenize in lumen.h.
 * add_special: add BOS/EOS as the model's metadata says (tokenizer.ggml.add_bos_token...).
 * parse_special: text like "<|im_start|>" becomes the special token instead of plain text. */
/* A growable list of token ids, shared by the tokenizers. */
typedef struct { int32_t *ids; int64_t n, cap; } lm_idbuf;
bool lm_idbuf_push(lm_idbuf *b, int32_t id);   /* false when out of memory */
/* Hands b's ids to out[cap] by lm_tokenize's convention (the count, -needed
 * when cap is too small, INT64_MIN and a message when !ok) and frees b. */
int64_t lm_idbuf_finish(lm_idbuf *b, bool ok, int32_t *out, int64_t cap);

int64_t lm_tokenizer_encode(const lm_tokenizer *t, const char *text, size_t len, int32_t *out,
                            int64_t cap, bool add_special, bool parse_special);
/* lm_escape_special (lumen.h). */
int64_t lm_tokenizer_escape(const lm_tokenizer *t, const char *text, size_t len, char *out, int64_t cap);
int32_t lm_tokenizer_piece(const lm_tokenizer *t, int32_t tok, char *buf, int32_t cap,
                           bool render_special);
int64_t lm_tokenizer_decode(const lm_tokenizer *t, const int32_t *toks, int64_t n, char *buf,
                            int64_t cap, bool render_special);

#endif
