/* Grammars (GBNF) compiled to flat rules, and the token trie the matcher walks.
 * grammar.c parses and compiles; grammar_match.c holds the parse state, the
 * per-step masks and the token trie. Both are immutable once built, so one
 * grammar or trie is shared by any number of matchers on any threads. */
#ifndef LM_GRAMMAR_H
#define LM_GRAMMAR_H
#include "lumen.h"

#include <stdatomic.h>

/* A rule is a run of elements: alternatives each end with G_ALT, the last with
 * G_END. A stack position is an element index; it never rests on an end. */
enum { G_END = 0, G_ALT = 1, G_REF = 2, G_CLASS = 3 };

typedef struct { int32_t kind, value; } lm_gelem;       /* value: rule id (G_REF) or class id (G_CLASS) */
typedef struct { uint32_t lo, hi; } lm_grange;          /* inclusive code point range */
typedef struct {
    int32_t first, n;        /* ranges g->rng[first .. first + n) */
    bool negated;
    uint64_t ascii[2];       /* the answer for code points < 128, precomputed */
} lm_gclass;

struct lm_grammar {
    atomic_int refs;
    lm_gelem *el;
    int32_t n_el;
    int32_t *rule_first;     /* rule id -> index of its first element */
    int32_t n_rules;
    lm_gclass *cls;
    int32_t n_cls;
    lm_grange *rng;
    int32_t n_rng;
    int32_t root;
};

/* true when code point c matches class k */
static inline bool lm_gclass_match(const struct lm_grammar *g, int32_t k, uint32_t c) {
    const lm_gclass *cl = &g->cls[k];
    if (c < 128) return (cl->ascii[c >> 6] >> (c & 63)) & 1;
    bool in = false;
    for (int32_t i = 0; i < cl->n && !in; i++) in = g->rng[cl->first + i].lo <= c && c <= g->rng[cl->first + i].hi;
    return in != cl->negated;
}

/* The grammar link's step on the candidates (sampler.c): keeps the allowed ones;
 * returns the token when it is the only one allowed, else -1 (-1 with c->n == 0
 * and a message when none fits). */
int32_t lm_matcher_apply(lm_matcher *m, lm_candidates *c);
/* Whether one token may come next (its bytes walked from the current state). */
bool lm_matcher_allows(lm_matcher *m, int32_t token);
/* Whether the current state's mask is already known (then applying it is cheap). */
bool lm_matcher_mask_cached(const lm_matcher *m);

#endif
