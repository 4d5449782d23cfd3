/* Matching a grammar token by token: the parse state, the masks of allowed
 * tokens, and the token trie they are computed over.
 *
 * The state is a set of pushdown stacks, each with a character class on top
 * (or empty: the grammar may end there), as llama.cpp keeps it. Stacks are
 * hash-consed (a node is a position and its parent node), so equal stacks are
 * equal ids, and a set of stacks is interned too: it is a state of a lazily
 * built automaton whose transitions on code points are remembered. A mask is
 * one walk of the token trie from a state, a transition per trie node, pruned
 * at the first byte that fails; masks are remembered per state, so a state
 * seen again (every character inside a JSON string) costs a lookup. Bytes are
 * decoded to code points as llama.cpp's grammar does (decode_utf8 with a
 * partial sequence carried between tokens), so the allowed sets agree. */
#define _GNU_SOURCE  /* qsort_r */
#include "grammar.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

/* ---- the token trie ------------------------------------------------------------ */

enum { TOK_TRIE = 0, TOK_EOG = 1, TOK_NEVER = 2 };

struct lm_token_trie {
    atomic_int refs;
    int32_t n_vocab, n_nodes, max_depth;
    uint8_t *byte;           /* nodes in preorder; node 0 is the root */
    uint16_t *depth;
    int32_t *skip;           /* the node after this one's subtree */
    int32_t *tok_first;      /* tokens ending at node i: toks[tok_first[i] .. tok_first[i+1]) */
    int32_t *toks;
    int64_t *piece_off;      /* token t's bytes: pieces[piece_off[t] .. piece_off[t+1]) */
    char *pieces;
    uint8_t *kind;
    int32_t *eog;            /* the end-of-generation tokens */
    int32_t n_eog;
};

/* the order of tokens by their pieces (ctx: the trie), then by id */
static int by_piece(const void *a, const void *b, void *ctx) {
    const struct lm_token_trie *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    const int64_t *off = t->piece_off;
    int64_t lx = off[x + 1] - off[x], ly = off[y + 1] - off[y];
    const char *zx = memchr(t->pieces + off[x], 0, (size_t)lx), *zy = memchr(t->pieces + off[y], 0, (size_t)ly);
    if (zx) lx = zx - (t->pieces + off[x]);
    if (zy) ly = zy - (t->pieces + off[y]);
    int c = memcmp(t->pieces + off[x], t->pieces + off[y], (size_t)(lx < ly ? lx : ly));
    if (c) return c;
    if (lx != ly) return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

void lm_token_trie_free(lm_token_trie *t) {
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1) return;
    free(t->byte); free(t->depth); free(t->skip); free(t->tok_first); free(t->toks);
    free(t->piece_off); free(t->pieces); free(t->kind); free(t->eog);
    free(t);
}

lm_token_trie *lm_token_trie_retain(lm_token_trie *t) {
    if (t) atomic_fetch_add(&t->refs, 1);
    return t;
}

/* The length a token's piece has for the grammar: up to its first NUL (llama.cpp
 * reads pieces as C strings). */
static int64_t grammar_len(const lm_token_trie *t, int32_t tok) {
    const char *p = t->pieces + t->piece_off[tok];
    int64_t n = t->piece_off[tok + 1] - t->piece_off[tok];
    const char *z = memchr(p, 0, (size_t)n);
    return z ? z - p : n;
}

lm_token_trie *lm_token_trie_new(const lm_model *model) {
    if (!model) { lm_err("token trie: model is NULL"); return NULL; }
    lm_model_info info;
    lm_model_get_info(model, &info);
    const int32_t nv = info.n_vocab;
    lm_token_trie *t = calloc(1, sizeof *t);
    int32_t *order = malloc((size_t)nv * sizeof *order), *node_of = malloc((size_t)nv * sizeof *node_of);
    int32_t *path = NULL;
    int64_t cap = (int64_t)nv * 8 + 64, used = 0;
    if (t) {
        t->piece_off = malloc((size_t)(nv + 1) * sizeof *t->piece_off);
        t->pieces = malloc((size_t)cap);
        t->kind = malloc((size_t)nv);
    }
    if (!t || !order || !node_of || !t->piece_off || !t->pieces || !t->kind) goto oom;
    atomic_init(&t->refs, 1);
    t->n_vocab = nv;
    for (int32_t i = 0; i < nv; i++) {
        t->piece_off[i] = used;
        int32_t n = lm_token_to_piece(model, i, t->pieces + used, (int32_t)(cap - used > INT32_MAX ? INT32_MAX : cap - used), true);
        if (n < 0 && n != INT32_MIN) {
            while (cap - used < -(int64_t)n) cap *= 2;
            char *p = realloc(t->pieces, (size_t)cap);
            if (!p) goto oom;
            t->pieces = p;
            n = lm_token_to_piece(model, i, t->pieces + used, (int32_t)(cap - used > INT32_MAX ? INT32_MAX : cap - used), true);
        }
        if (n < 0) n = 0;
        used += n;
        if (cap - used < 256) {
            cap *= 2;
            char *p = realloc(t->pieces, (size_t)cap);
            if (!p) goto oom;
            t->pieces = p;
        }
    }
    t->piece_off[nv] = used;
    int32_t m = 0;
    int64_t total = 0;
    for (int32_t i = 0; i < nv; i++) {
        int64_t n = grammar_len(t, i);
        t->kind[i] = lm_token_is_eog(model, i) ? TOK_EOG : n == 0 ? TOK_NEVER : TOK_TRIE;
        if (t->kind[i] == TOK_TRIE) { order[m++] = i; total += n; if (n > t->max_depth) t->max_depth = (int32_t)n; }
        t->n_eog += t->kind[i] == TOK_EOG;
    }
    t->eog = malloc((size_t)(t->n_eog ? t->n_eog : 1) * sizeof *t->eog);
    if (!t->eog) goto oom;
    for (int32_t i = 0, k = 0; i < nv; i++) if (t->kind[i] == TOK_EOG) t->eog[k++] = i;
    qsort_r(order, (size_t)m, sizeof *order, by_piece, t);
    t->byte = malloc((size_t)(total + 1));
    t->depth = malloc((size_t)(total + 1) * sizeof *t->depth);
    t->skip = malloc((size_t)(total + 1) * sizeof *t->skip);
    path = malloc((size_t)(t->max_depth + 1) * sizeof *path);
    if (!t->byte || !t->depth || !t->skip || !path) goto oom;
    /* nodes in preorder from the sorted pieces: each piece adds the bytes past
     * its common prefix with the previous one */
    int32_t n_nodes = 1, prev = -1;
    int64_t prev_len = 0;
    t->byte[0] = 0; t->depth[0] = 0; path[0] = 0;
    for (int32_t k = 0; k < m; k++) {
        int32_t tok = order[k];
        const char *s = t->pieces + t->piece_off[tok];
        int64_t len = grammar_len(t, tok), lcp = 0;
        if (prev >= 0) {
            const char *ps = t->pieces + t->piece_off[prev];
            while (lcp < len && lcp < prev_len && s[lcp] == ps[lcp]) lcp++;
        }
        for (int64_t d = prev_len; d > lcp; d--) t->skip[path[d]] = n_nodes;
        for (int64_t d = lcp + 1; d <= len; d++) {
            t->byte[n_nodes] = (uint8_t)s[d - 1];
            t->depth[n_nodes] = (uint16_t)d;
            path[d] = n_nodes++;
        }
        node_of[tok] = path[len];
        prev = tok;
        prev_len = len;
    }
    for (int64_t d = prev_len; d >= 0; d--) t->skip[path[d]] = n_nodes;
    t->n_nodes = n_nodes;
    t->tok_first = calloc((size_t)n_nodes + 1, sizeof *t->tok_first);
    t->toks = malloc((size_t)(m ? m : 1) * sizeof *t->toks);
    if (!t->tok_first || !t->toks) goto oom;
    for (int32_t k = 0; k < m; k++) t->tok_first[node_of[order[k]] + 1]++;
    for (int32_t i = 0; i < n_nodes; i++) t->tok_first[i + 1] += t->tok_first[i];
    for (int32_t k = 0; k < m; k++) { /* order is by piece: a node's tokens come together */
        int32_t nd = node_of[order[k]];
        t->toks[t->tok_first[nd]++] = order[k];
    }
    for (int32_t i = n_nodes; i > 0; i--) t->tok_first[i] = t->tok_first[i - 1];
    t->tok_first[0] = 0;
    free(order); free(node_of); free(path);
    return t;
oom:
    free(order); free(node_of); free(path);
    if (t) { atomic_init(&t->refs, 1); lm_token_trie_free(t); }
    lm_err("out of memory");
    return NULL;
}

int32_t lm_token_trie_n_vocab(const lm_token_trie *t) { return t ? t->n_vocab : 0; }

int32_t lm_token_trie_mark_prefixes(const lm_token_trie *t, const char *s, size_t n, uint32_t *bits) {
    if (!t || !bits || (!s && n)) return 0;
    int32_t marked = 0, node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = node + 1, child = -1;
        while (c < t->skip[node]) {           /* the children of node, by their skips */
            if (t->byte[c] == (uint8_t)s[i]) { child = c; break; }
            c = t->skip[c];
        }
        if (child < 0) break;
        node = child;
        for (int32_t k = t->tok_first[node]; k < t->tok_first[node + 1]; k++) {
            int32_t tok = t->toks[k];
            if (!(bits[tok >> 5] >> (tok & 31) & 1)) { bits[tok >> 5] |= 1u << (tok & 31); marked++; }
        }
    }
    return marked;
}

/* ---- hash maps of 64-bit keys ---------------------------------------------------- */

#define EMPTY_KEY UINT64_MAX

typedef struct { uint64_t *keys; int32_t *vals; uint32_t cap, n; } map64;

static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
}

static int32_t map_get(const map64 *m, uint64_t key) {
    if (!m->cap) return -1;
    for (uint32_t i = (uint32_t)mix(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == key) return m->vals[i];
        if (m->keys[i] == EMPTY_KEY) return -1;
    }
}

static bool map_put(map64 *m, uint64_t key, int32_t val) {
    if ((m->n + 1) * 2 > m->cap) {
        uint32_t cap = m->cap ? m->cap * 2 : 1024;
        uint64_t *k = malloc((size_t)cap * sizeof *k);
        int32_t *v = malloc((size_t)cap * sizeof *v);
        if (!k || !v) { free(k); free(v); return false; }
        memset(k, 0xff, (size_t)cap * sizeof *k);
        for (uint32_t i = 0; i < m->cap; i++) {
            if (m->keys[i] == EMPTY_KEY) continue;
            uint32_t j = (uint32_t)mix(m->keys[i]) & (cap - 1);
            while (k[j] != EMPTY_KEY) j = (j + 1) & (cap - 1);
            k[j] = m->keys[i];
            v[j] = m->vals[i];
        }
        free(m->keys); free(m->vals);
        m->keys = k; m->vals = v; m->cap = cap;
    }
    uint32_t i = (uint32_t)mix(key) & (m->cap - 1);
    while (m->keys[i] != EMPTY_KEY && m->keys[i] != key) i = (i + 1) & (m->cap - 1);
    if (m->keys[i] == EMPTY_KEY) m->n++;
    m->keys[i] = key;
    m->vals[i] = val;
    return true;
}

static void map_clear(map64 *m) {
    if (m->cap) memset(m->keys, 0xff, (size_t)m->cap * sizeof *m->keys);
    m->n = 0;
}

static void map_free(map64 *m) { free(m->keys); free(m->vals); }

/* ---- the matcher ---------------------------------------------------------------- */

#define MASK_SLOTS 256

typedef struct {
    int32_t first, n;        /* stack ids in m->pool[first .. first + n), ascending */
    int32_t *ascii;          /* transitions on code points < 128, -1: not yet known */
} dstate;

struct lm_matcher {
    lm_grammar *g;
    lm_token_trie *t;
    int32_t n_words;
    /* stacks: node i = (pos, parent); node 0 is the empty stack */
    int32_t *st_pos, *st_par;
    int32_t n_st, cap_st;
    map64 st_map;
    /* states: interned sets of stacks; state 0 is the dead (empty) set */
    dstate *ds;
    int32_t n_ds, cap_ds;
    int32_t *pool;
    int64_t n_pool, cap_pool;
    int32_t *ds_tab;         /* open addressing over state ids, by set hash */
    uint32_t ds_tab_cap;
    map64 wide;              /* (state, code point >= 128) -> state */
    int32_t *scratch;
    int32_t n_scratch, cap_scratch;
    /* masks remembered per (state, partial UTF-8) */
    map64 mask_map;
    uint32_t *masks;
    int32_t *mask_count;
    int32_t n_masks;
    /* the walk's per-depth state */
    int32_t *w_d, *w_n;
    uint32_t *w_v;
    uint8_t *w_c;
    /* where the matcher is */
    int32_t start, cur, cur_n;
    uint32_t cur_v;
    bool ended, failed;
    bool oom;
};

static int32_t stack_intern(lm_matcher *m, int32_t pos, int32_t parent) {
    uint64_t key = (uint64_t)(uint32_t)pos << 32 | (uint32_t)parent;
    int32_t id = map_get(&m->st_map, key);
    if (id >= 0) return id;
    if (m->n_st == m->cap_st) {
        int32_t cap = m->cap_st ? m->cap_st * 2 : 1024;
        int32_t *a = realloc(m->st_pos, (size_t)cap * sizeof *a);
        if (a) m->st_pos = a;
        int32_t *b = realloc(m->st_par, (size_t)cap * sizeof *b);
        if (b) m->st_par = b;
        if (!a || !b) { m->oom = true; return 0; }
        m->cap_st = cap;
    }
    id = m->n_st++;
    m->st_pos[id] = pos;
    m->st_par[id] = parent;
    if (!map_put(&m->st_map, key, id)) m->oom = true;
    return id;
}

static void scratch_add(lm_matcher *m, int32_t id) {
    if (m->n_scratch == m->cap_scratch) {
        int32_t cap = m->cap_scratch ? m->cap_scratch * 2 : 256;
        int32_t *s = realloc(m->scratch, (size_t)cap * sizeof *s);
        if (!s) { m->oom = true; return; }
        m->scratch = s;
        m->cap_scratch = cap;
    }
    m->scratch[m->n_scratch++] = id;
}

static bool at_end(const lm_grammar *g, int32_t pos) { return g->el[pos].kind == G_END || g->el[pos].kind == G_ALT; }

/* the stack with pos on top of parent, or parent itself when pos ends its alternative */
static int32_t with_top(lm_matcher *m, int32_t pos, int32_t parent) {
    return at_end(m->g, pos) ? parent : stack_intern(m, pos, parent);
}

/* Adds to the scratch set every stack that stack s becomes once the rule
 * references on its top are expanded: a class on top, or empty. */
static void expand(lm_matcher *m, int32_t s) {
    if (s == 0 || m->g->el[m->st_pos[s]].kind == G_CLASS) { scratch_add(m, s); return; }
    const lm_grammar *g = m->g;
    int32_t pos = m->st_pos[s];
    int32_t base = with_top(m, pos + 1, m->st_par[s]);
    int32_t a = g->rule_first[g->el[pos].value];
    for (;;) {
        expand(m, with_top(m, a, base));
        while (!at_end(g, a)) a++;
        if (g->el[a].kind == G_END) break;
        a++;
    }
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t set_hash(const int32_t *v, int32_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    for (int32_t i = 0; i < n; i++) h = mix(h ^ (uint64_t)(uint32_t)v[i]);
    return h;
}

static bool ds_tab_grow(lm_matcher *m) {
    uint32_t cap = m->ds_tab_cap ? m->ds_tab_cap * 2 : 1024;
    int32_t *tab = malloc((size_t)cap * sizeof *tab);
    if (!tab) return false;
    memset(tab, 0xff, (size_t)cap * sizeof *tab);
    for (int32_t d = 0; d < m->n_ds; d++) {
        uint32_t i = (uint32_t)set_hash(m->pool + m->ds[d].first, m->ds[d].n) & (cap - 1);
        while (tab[i] >= 0) i = (i + 1) & (cap - 1);
        tab[i] = d;
    }
    free(m->ds_tab);
    m->ds_tab = tab;
    m->ds_tab_cap = cap;
    return true;
}

/* the state of the scratch set (sorted, deduplicated here) */
static int32_t state_of_scratch(lm_matcher *m) {
    int32_t n = m->n_scratch;
    int32_t *v = m->scratch;
    qsort(v, (size_t)n, sizeof *v, cmp_i32);
    int32_t k = 0;
    for (int32_t i = 0; i < n; i++) if (!k || v[k - 1] != v[i]) v[k++] = v[i];
    n = k;
    if (n == 0) return 0;
    if ((uint32_t)(m->n_ds + 1) * 2 > m->ds_tab_cap && !ds_tab_grow(m)) { m->oom = true; return 0; }
    uint32_t i = (uint32_t)set_hash(v, n) & (m->ds_tab_cap - 1);
    for (; m->ds_tab[i] >= 0; i = (i + 1) & (m->ds_tab_cap - 1)) {
        const dstate *d = &m->ds[m->ds_tab[i]];
        if (d->n == n && !memcmp(m->pool + d->first, v, (size_t)n * sizeof *v)) return m->ds_tab[i];
    }
    if (m->n_ds == m->cap_ds) {
        int32_t cap = m->cap_ds ? m->cap_ds * 2 : 256;
        dstate *d = realloc(m->ds, (size_t)cap * sizeof *d);
        if (!d) { m->oom = true; return 0; }
        m->ds = d;
        m->cap_ds = cap;
    }
    if (m->n_pool + n > m->cap_pool) {
        int64_t cap = m->cap_pool ? m->cap_pool * 2 : 4096;
        while (cap < m->n_pool + n) cap *= 2;
        int32_t *p = realloc(m->pool, (size_t)cap * sizeof *p);
        if (!p) { m->oom = true; return 0; }
        m->pool = p;
        m->cap_pool = cap;
    }
    int32_t id = m->n_ds++;
    m->ds[id] = (dstate){(int32_t)m->n_pool, n, NULL};
    memcpy(m->pool + m->n_pool, v, (size_t)n * sizeof *v);
    m->n_pool += n;
    m->ds_tab[i] = id;
    return id;
}

/* the state after code point c from state d */
static int32_t step(lm_matcher *m, int32_t d, uint32_t c) {
    m->n_scratch = 0;
    const lm_grammar *g = m->g;
    for (int32_t i = 0; i < m->ds[d].n; i++) {
        int32_t s = m->pool[m->ds[d].first + i];
        if (s == 0) continue;
        int32_t pos = m->st_pos[s];
        if (lm_gclass_match(g, g->el[pos].value, c)) expand(m, with_top(m, pos + 1, m->st_par[s]));
    }
    return state_of_scratch(m);
}

static int32_t trans(lm_matcher *m, int32_t d, uint32_t c) {
    if (d == 0) return 0;
    if (c < 128) {
        if (!m->ds[d].ascii) {
            int32_t *a = malloc(128 * sizeof *a);
            if (!a) { m->oom = true; return 0; }
            memset(a, 0xff, 128 * sizeof *a);
            m->ds[d].ascii = a;
        }
        int32_t v = m->ds[d].ascii[c];
        if (v >= 0) return v;
        v = step(m, d, c);
        m->ds[d].ascii[c] = v;
        return v;
    }
    uint64_t key = (uint64_t)(uint32_t)d << 32 | c;
    int32_t v = map_get(&m->wide, key);
    if (v >= 0) return v;
    v = step(m, d, c);
    if (!map_put(&m->wide, key, v)) m->oom = true;
    return v;
}

/* Whether some completion of a partial UTF-8 sequence (val, n_remain bytes to
 * come) could match class k, as llama.cpp's llama_grammar_match_partial_char. */
static bool partial_ok(const lm_grammar *g, int32_t k, uint32_t val, int32_t nrem) {
    if (nrem < 0 || (nrem == 1 && val < 2)) return false;
    uint32_t lo = val << (nrem * 6), hi = lo | ((1u << (nrem * 6)) - 1);
    if (lo == 0) lo = nrem == 2 ? 1u << 11 : nrem == 3 ? 1u << 16 : lo;
    const lm_gclass *cl = &g->cls[k];
    for (int32_t i = 0; i < cl->n; i++)
        if (g->rng[cl->first + i].lo <= hi && lo <= g->rng[cl->first + i].hi) return !cl->negated;
    return cl->negated;
}

static bool state_partial_ok(const lm_matcher *m, int32_t d, uint32_t val, int32_t nrem) {
    for (int32_t i = 0; i < m->ds[d].n; i++) {
        int32_t s = m->pool[m->ds[d].first + i];
        if (s && partial_ok(m->g, m->g->el[m->st_pos[s]].value, val, nrem)) return true;
    }
    return false;
}

static bool has_empty(const lm_matcher *m, int32_t d) { return m->ds[d].n > 0 && m->pool[m->ds[d].first] == 0; }

/* One byte of a token from (d, val, nrem, carried): false when no string of the
 * grammar can go on this way. carried: the partial sequence began in an earlier
 * token (llama.cpp checks continuation bytes only for those). */
static inline bool byte_step(lm_matcher *m, uint8_t b, int32_t *d, uint32_t *val, int32_t *nrem, uint8_t *carried) {
    static const int8_t len_of[16] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4};
    if (*nrem > 0) {
        if (*carried && (b >> 6) != 2) return false;
        *val = (*val << 6) + (b & 0x3Fu);
        if (--*nrem == 0) { *carried = 0; *d = trans(m, *d, *val); return *d != 0; }
        return true;
    }
    int32_t len = len_of[b >> 4];
    if (len == 0) return false;
    if (len == 1) { *d = trans(m, *d, b); return *d != 0; }
    *val = b & ((1u << (8 - len)) - 1);
    *nrem = len - 1;
    *carried = 0;
    return true;
}

/* the mask of state (d, val, nrem) into bits; returns the number allowed */
static int32_t compute_mask(lm_matcher *m, int32_t d, uint32_t val, int32_t nrem, uint32_t *bits) {
    const lm_token_trie *t = m->t;
    memset(bits, 0, (size_t)m->n_words * sizeof *bits);
    int32_t count = 0;
    m->w_d[0] = d; m->w_v[0] = val; m->w_n[0] = nrem; m->w_c[0] = nrem > 0;
    for (int32_t i = 1; i < t->n_nodes;) {
        int32_t dep = t->depth[i];
        int32_t dd = m->w_d[dep - 1], nn = m->w_n[dep - 1];
        uint32_t vv = m->w_v[dep - 1];
        uint8_t cc = m->w_c[dep - 1];
        if (!byte_step(m, t->byte[i], &dd, &vv, &nn, &cc)) { i = t->skip[i]; continue; }
        m->w_d[dep] = dd; m->w_v[dep] = vv; m->w_n[dep] = nn; m->w_c[dep] = cc;
        int32_t k0 = t->tok_first[i], k1 = t->tok_first[i + 1];
        if (k0 < k1 && (nn == 0 || state_partial_ok(m, dd, vv, nn))) {
            for (int32_t k = k0; k < k1; k++) bits[t->toks[k] >> 5] |= 1u << (t->toks[k] & 31);
            count += k1 - k0;
        }
        i++;
    }
    if (has_empty(m, d))
        for (int32_t k = 0; k < t->n_eog; k++) { bits[t->eog[k] >> 5] |= 1u << (t->eog[k] & 31); count++; }
    return count;
}

lm_matcher *lm_matcher_new(lm_grammar *g, lm_token_trie *t) {
    if (!g) { lm_err("matcher: grammar is NULL"); return NULL; }
    lm_matcher *m = calloc(1, sizeof *m);
    if (!m) { lm_err("out of memory"); return NULL; }
    m->g = lm_grammar_retain(g);
    m->t = lm_token_trie_retain(t);
    m->n_words = t ? (t->n_vocab + 31) / 32 : 1;
    int32_t depth = t ? t->max_depth + 2 : 2;
    m->w_d = malloc((size_t)depth * sizeof *m->w_d);
    m->w_n = malloc((size_t)depth * sizeof *m->w_n);
    m->w_v = malloc((size_t)depth * sizeof *m->w_v);
    m->w_c = malloc((size_t)depth);
    m->masks = malloc((size_t)MASK_SLOTS * (size_t)m->n_words * sizeof *m->masks);
    m->mask_count = malloc(MASK_SLOTS * sizeof *m->mask_count);
    if (!m->w_d || !m->w_n || !m->w_v || !m->w_c || !m->masks || !m->mask_count) goto oom;
    /* node 0: the empty stack; state 0: the dead (empty) set. Neither is in a table. */
    m->st_pos = malloc(1024 * sizeof *m->st_pos);
    m->st_par = malloc(1024 * sizeof *m->st_par);
    m->ds = malloc(256 * sizeof *m->ds);
    if (!m->st_pos || !m->st_par || !m->ds) goto oom;
    m->cap_st = 1024;
    m->st_pos[0] = m->st_par[0] = -1;
    m->n_st = 1;
    m->cap_ds = 256;
    m->ds[0] = (dstate){0, 0, NULL};
    m->n_ds = 1;
    /* the start: the root rule's alternatives expanded */
    m->n_scratch = 0;
    const lm_grammar *gr = m->g;
    int32_t a = gr->rule_first[gr->root];
    for (;;) {
        expand(m, with_top(m, a, 0));
        while (!at_end(gr, a)) a++;
        if (gr->el[a].kind == G_END) break;
        a++;
    }
    m->start = m->cur = state_of_scratch(m);
    if (m->oom) goto oom;
    return m;
oom:
    lm_matcher_free(m);
    lm_err("out of memory");
    return NULL;
}

void lm_matcher_free(lm_matcher *m) {
    if (!m) return;
    for (int32_t d = 0; d < m->n_ds; d++) free(m->ds[d].ascii);
    free(m->ds); free(m->pool); free(m->ds_tab); free(m->st_pos); free(m->st_par); free(m->scratch);
    map_free(&m->st_map); map_free(&m->wide); map_free(&m->mask_map);
    free(m->masks); free(m->mask_count);
    free(m->w_d); free(m->w_n); free(m->w_v); free(m->w_c);
    lm_grammar_free(m->g);
    lm_token_trie_free(m->t);
    free(m);
}

void lm_matcher_reset(lm_matcher *m) {
    if (!m) return;
    m->cur = m->start;
    m->cur_v = 0;
    m->cur_n = 0;
    m->ended = m->failed = false;
}

lm_grammar_status lm_matcher_status(const lm_matcher *m) {
    if (!m || m->failed || m->cur == 0) return LM_GRAMMAR_FAILED;
    if (m->ended) return LM_GRAMMAR_COMPLETE;
    if (!has_empty(m, m->cur) || m->cur_n > 0) return LM_GRAMMAR_OPEN; /* not inside a character */
    return m->ds[m->cur].n == 1 && m->cur_n == 0 ? LM_GRAMMAR_COMPLETE : LM_GRAMMAR_MAY_END;
}

const uint32_t *lm_matcher_allowed(lm_matcher *m, int32_t *n_allowed) {
    if (n_allowed) *n_allowed = 0;
    if (!m || !m->t) { lm_err(m ? "matcher: no token trie (made for text only)" : "matcher is NULL"); return NULL; }
    int32_t d = m->failed || m->ended ? 0 : m->cur;
    uint32_t v = d ? m->cur_v : 0;
    int32_t nr = d ? m->cur_n : 0;
    uint64_t key = (uint64_t)(uint32_t)d << 32 | (uint64_t)(uint32_t)nr << 28 | v;
    int32_t slot = map_get(&m->mask_map, key);
    if (slot < 0) {
        if (m->n_masks == MASK_SLOTS) { map_clear(&m->mask_map); m->n_masks = 0; }
        slot = m->n_masks++;
        uint32_t *bits = m->masks + (size_t)slot * (size_t)m->n_words;
        if (d == 0) { /* failed or ended: only an end token, so generation stops */
            memset(bits, 0, (size_t)m->n_words * sizeof *bits);
            m->mask_count[slot] = 0;
            for (int32_t k = 0; k < m->t->n_eog; k++) { bits[m->t->eog[k] >> 5] |= 1u << (m->t->eog[k] & 31); m->mask_count[slot]++; }
        } else {
            m->mask_count[slot] = compute_mask(m, d, v, nr, bits);
        }
        if (!map_put(&m->mask_map, key, slot)) m->oom = true;
        if (m->oom) { m->n_masks = 0; map_clear(&m->mask_map); m->oom = false; lm_err("out of memory"); return NULL; }
    }
    if (n_allowed) *n_allowed = m->mask_count[slot];
    return m->masks + (size_t)slot * (size_t)m->n_words;
}

/* walks bytes from the current state; false (state unchanged) when they do not fit */
static bool walk(lm_matcher *m, const char *s, size_t n) {
    int32_t d = m->cur, nr = m->cur_n;
    uint32_t v = m->cur_v;
    uint8_t c = nr > 0;
    for (size_t i = 0; i < n; i++)
        if (!byte_step(m, (uint8_t)s[i], &d, &v, &nr, &c)) return false;
    if (nr > 0 && !state_partial_ok(m, d, v, nr)) return false;
    m->cur = d; m->cur_v = v; m->cur_n = nr;
    return true;
}

lm_status lm_matcher_accept(lm_matcher *m, int32_t token) {
    if (!m || !m->t) return lm_err(m ? "matcher: no token trie (made for text only)" : "matcher is NULL");
    if (token < 0 || token >= m->t->n_vocab) { m->failed = true; return lm_err("grammar: token %d is out of range", token); }
    if (m->failed) return lm_err("grammar: the matcher failed earlier (reset it)");
    if (m->ended) { m->failed = true; return lm_err("grammar: token %d after the end of the grammar", token); }
    if (m->t->kind[token] == TOK_EOG) {
        if (has_empty(m, m->cur)) { m->ended = true; return LM_OK; }
        m->failed = true;
        return lm_err("grammar: end token %d where the grammar cannot end", token);
    }
    int64_t n = grammar_len(m->t, token);
    if (m->t->kind[token] == TOK_NEVER || !walk(m, m->t->pieces + m->t->piece_off[token], (size_t)n) || m->oom) {
        m->failed = true;
        m->oom = false;
        return lm_err("grammar: token %d does not continue the grammar", token);
    }
    return LM_OK;
}

lm_status lm_matcher_accept_text(lm_matcher *m, const char *s, size_t n) {
    if (!m || (!s && n)) return lm_err("matcher: bad arguments");
    if (m->failed || m->ended) return lm_err("grammar: the matcher has %s", m->failed ? "failed" : "ended");
    if (memchr(s, 0, n)) return lm_err("grammar: text with a NUL byte");
    if (!walk(m, s, n) || m->oom) { m->oom = false; return lm_err("grammar: the text does not continue the grammar"); }
    return LM_OK;
}

bool lm_matcher_allows(lm_matcher *m, int32_t token) {
    if (!m->t || token < 0 || token >= m->t->n_vocab) return false;
    if (m->failed || m->ended) return m->t->kind[token] == TOK_EOG;
    if (m->t->kind[token] == TOK_EOG) return has_empty(m, m->cur);
    if (m->t->kind[token] == TOK_NEVER) return false;
    const char *p = m->t->pieces + m->t->piece_off[token];
    int64_t n = grammar_len(m->t, token);
    int32_t d = m->cur, nr = m->cur_n;
    uint32_t v = m->cur_v;
    uint8_t c = nr > 0;
    for (int64_t i = 0; i < n; i++)
        if (!byte_step(m, (uint8_t)p[i], &d, &v, &nr, &c)) return false;
    return nr == 0 || state_partial_ok(m, d, v, nr);
}

bool lm_matcher_mask_cached(const lm_matcher *m) {
    int32_t d = m->failed || m->ended ? 0 : m->cur;
    uint64_t key = (uint64_t)(uint32_t)d << 32 | (uint64_t)(uint32_t)(d ? m->cur_n : 0) << 28 | (d ? m->cur_v : 0);
    return map_get(&m->mask_map, key) >= 0;
}

int32_t lm_matcher_apply(lm_matcher *m, lm_candidates *c) {
    int32_t n_allowed;
    const uint32_t *bits = lm_matcher_allowed(m, &n_allowed);
    if (!bits) return -1;
    if (lm_candidates_keep(c, bits) == 0) {
        lm_err("grammar: no candidate fits the grammar (put the grammar link before the links that cut candidates)");
        return -1;
    }
    return c->n == 1 && n_allowed == 1 ? c->ids[0] : -1;
}
