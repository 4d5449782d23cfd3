/* Reader for the llama.cpp reference fixtures (format: spec/fixtures/README.md). */
#ifndef LM_FIXTURE_H
#define LM_FIXTURE_H
#include <stdint.h>
#include <stddef.h>

typedef struct { int special; char *text; size_t len; int32_t *ids; int n; } fx_tok;
typedef struct { int32_t id; float logit; } fx_top;
typedef struct {
    char *text; size_t len; int special;
    int32_t *ids; int n;                /* prompt tokens */
    int32_t greedy[64]; int n_greedy;   /* llama.cpp's greedy continuation */
    fx_top top[64][20]; int n_top[64];  /* top-20 logits at each position */
    int32_t alt_top1[64];               /* llama.cpp, prompt fed token by token: its top-1 */
    float alt[64][20]; int n_alt[64];   /* ... and its logits for the ids of top[pos] */
    float ref[64][20]; int n_ref[64];   /* the float64 logits of those ids (no activation quantization; optional) */
} fx_prompt;

typedef struct {
    fx_tok *toks; int n_toks;
    fx_prompt *prompts; int n_prompts;
} fixture;

/* NULL (and a message on stderr) when the file cannot be read or parsed. */
fixture *fx_load(const char *path);
void fx_free(fixture *f);
#endif
