/* WordPiece, the BERT tokenizer, as Hugging Face's `tokenizers` runs it
 * (BertNormalizer -> BertPreTokenizer -> WordPiece):
 *  - normalize: drop NUL, U+FFFD and control characters, whitespace to ' '
 *    (clean_text); spaces around CJK ideographs; NFD and no nonspacing marks
 *    (strip_accents, on by default when lower-casing); lower-case;
 *  - split at whitespace, and every punctuation character a word of its own;
 *  - each word: longest vocabulary match first, continuations as "##piece";
 *    a word that cannot be covered (or longer than 100 characters) is [UNK].
 * Unicode data (categories, decompositions, case) from utf8proc.
 * The vocabulary comes from a model directory (tokenizer.json, else vocab.txt
 * with tokenizer_config.json) or from a GGUF of llama.cpp's `bert` layout,
 * whose token list marks word starts with U+2581 instead of continuations with "##". */
#ifndef LM_WORDPIECE_H
#define LM_WORDPIECE_H

#include "gguf.h"

typedef struct lm_wordpiece lm_wordpiece;

lm_wordpiece *lm_wordpiece_from_hf(const char *dir);
lm_wordpiece *lm_wordpiece_from_gguf(const lm_gguf *g);
void lm_wordpiece_free(lm_wordpiece *w);

int32_t lm_wordpiece_n_vocab(const lm_wordpiece *w);
int32_t lm_wordpiece_cls(const lm_wordpiece *w);
int32_t lm_wordpiece_sep(const lm_wordpiece *w);
int32_t lm_wordpiece_lookup(const lm_wordpiece *w, const char *text, size_t len);
/* add_special: [CLS] ... [SEP]; parse_special: "[SEP]" etc. in the text are those tokens. */
int64_t lm_wordpiece_encode(const lm_wordpiece *w, const char *text, size_t len, int32_t *out, int64_t cap,
                            bool add_special, bool parse_special);
/* A token's text ("##ing" without its "##"), special tokens only when render_special. */
int32_t lm_wordpiece_piece(const lm_wordpiece *w, int32_t tok, char *buf, int32_t cap, bool render_special);
/* Words joined by spaces, continuations glued to their word. */
int64_t lm_wordpiece_decode(const lm_wordpiece *w, const int32_t *toks, int64_t n, char *buf, int64_t cap,
                            bool render_special);

#endif
