/* Sampler chains: links applied in order to the candidates (see lumen.h). */
#include "lumen.h"
#include "error.h"
#include "grammar.h"

#include <math.h>

/* s->result when the links masked every token: lm_sampler_result reports it */
enum { NO_TOKEN = -2 };
#include <stdlib.h>
#include <string.h>

typedef enum { L_GREEDY, L_DIST, L_TEMP, L_TOP_K, L_TOP_P, L_MIN_P, L_TYPICAL, L_PENALTIES, L_BIAS, L_EXTERNAL, L_GRAMMAR } link_kind;

typedef struct {
    link_kind kind;
    float f;            /* temperature, p */
    int32_t i;          /* k, min_keep, last_n */
    float repeat, freq, presence;
    int32_t *bias_ids;
    float *bias;
    int32_t n_bias;
    lm_matcher *m;      /* grammar */
} link;

struct lm_sampler {
    uint64_t rng;
    link *links;
    int32_t n_links, cap_links;
    lm_candidates c;
    int32_t cap;
    int32_t *counts;     /* n_vocab scratch for penalties, kept zeroed */
    float *scratch;
    int32_t *heap;       /* n_vocab positions: the best-k selections */
    int32_t result;
    int32_t *hist;
    int32_t n_hist, cap_hist;
    bool identity;       /* candidates still in id order, all present */
    bool sampled;        /* a sample since the last reset: accepted tokens reach the grammar links */
};

lm_sampler_params lm_sampler_default_params(void) {
    return (lm_sampler_params){.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f,
                               .typical_p = 1.0f, .repeat_penalty = 1.0f, .penalty_last_n = 64,
                               .seed = 0x5eed};
}

lm_sampler *lm_sampler_chain_new(uint64_t seed) {
    lm_sampler *s = calloc(1, sizeof *s);
    if (!s) { lm_err("out of memory"); return NULL; }
    s->rng = seed;
    s->result = -1;
    return s;
}

void lm_sampler_free(lm_sampler *s) {
    if (!s) return;
    for (int32_t i = 0; i < s->n_links; i++) { free(s->links[i].bias_ids); free(s->links[i].bias); lm_matcher_free(s->links[i].m); }
    free(s->links);
    free(s->c.ids); free(s->c.logits); free(s->c.probs);
    free(s->counts); free(s->scratch); free(s->heap); free(s->hist);
    free(s);
}

static link *add(lm_sampler *s, link_kind k) {
    if (!s) { lm_err("sampler is NULL"); return NULL; }
    if (s->n_links == s->cap_links) {
        int32_t cap = s->cap_links ? 2 * s->cap_links : 8;
        link *l = realloc(s->links, (size_t)cap * sizeof *l);
        if (!l) { lm_err("out of memory"); return NULL; }
        s->links = l;
        s->cap_links = cap;
    }
    link *l = &s->links[s->n_links++];
    memset(l, 0, sizeof *l);
    l->kind = k;
    return l;
}

static bool prob_ok(float p) { return p >= 0 && p <= 1; }

lm_status lm_sampler_add_greedy(lm_sampler *s) { return add(s, L_GREEDY) ? LM_OK : LM_ERR; }
lm_status lm_sampler_add_dist(lm_sampler *s) { return add(s, L_DIST) ? LM_OK : LM_ERR; }
lm_status lm_sampler_add_external(lm_sampler *s) { return add(s, L_EXTERNAL) ? LM_OK : LM_ERR; }

lm_status lm_sampler_add_temperature(lm_sampler *s, float t) {
    if (!(t >= 0) || !isfinite(t)) return lm_err("temperature must be a finite number >= 0 (got %g)", t);
    link *l = add(s, L_TEMP);
    if (l) l->f = t;
    return l ? LM_OK : LM_ERR;
}

lm_status lm_sampler_add_top_k(lm_sampler *s, int32_t k) {
    if (k < 0) return lm_err("top_k must be >= 0 (got %d)", k);
    link *l = add(s, L_TOP_K);
    if (l) l->i = k;
    return l ? LM_OK : LM_ERR;
}

static lm_status add_p(lm_sampler *s, link_kind k, const char *name, float p, int32_t min_keep) {
    if (!prob_ok(p)) return lm_err("%s must be in [0, 1] (got %g)", name, p);
    if (min_keep < 1) min_keep = 1;
    link *l = add(s, k);
    if (l) { l->f = p; l->i = min_keep; }
    return l ? LM_OK : LM_ERR;
}

lm_status lm_sampler_add_top_p(lm_sampler *s, float p, int32_t mk) { return add_p(s, L_TOP_P, "top_p", p, mk); }
lm_status lm_sampler_add_min_p(lm_sampler *s, float p, int32_t mk) { return add_p(s, L_MIN_P, "min_p", p, mk); }
lm_status lm_sampler_add_typical(lm_sampler *s, float p, int32_t mk) { return add_p(s, L_TYPICAL, "typical_p", p, mk); }

lm_status lm_sampler_add_penalties(lm_sampler *s, int32_t last_n, float repeat, float freq, float presence) {
    if (last_n < -1) return lm_err("penalty last_n must be >= -1 (-1: the whole history)");
    if (!(repeat > 0) || !isfinite(repeat)) return lm_err("repeat penalty must be > 0 (got %g)", repeat);
    if (!isfinite(freq) || !isfinite(presence)) return lm_err("frequency/presence penalties must be finite");
    link *l = add(s, L_PENALTIES);
    if (l) { l->i = last_n; l->repeat = repeat; l->freq = freq; l->presence = presence; }
    return l ? LM_OK : LM_ERR;
}

lm_status lm_sampler_add_logit_bias(lm_sampler *s, const int32_t *ids, const float *bias, int32_t n) {
    if (n < 0 || (n && (!ids || !bias))) return lm_err("logit bias: bad arrays");
    for (int32_t i = 0; i < n; i++) {
        if (ids[i] < 0) return lm_err("logit bias: token id %d is negative", ids[i]);
        if (isnan(bias[i])) return lm_err("logit bias for token %d is NaN", ids[i]);
    }
    link *l = add(s, L_BIAS);
    if (!l) return LM_ERR;
    l->bias_ids = malloc((size_t)(n ? n : 1) * sizeof *ids);
    l->bias = malloc((size_t)(n ? n : 1) * sizeof *bias);
    if (!l->bias_ids || !l->bias) { s->n_links--; free(l->bias_ids); free(l->bias); return lm_err("out of memory"); }
    memcpy(l->bias_ids, ids, (size_t)n * sizeof *ids);
    memcpy(l->bias, bias, (size_t)n * sizeof *bias);
    l->n_bias = n;
    return LM_OK;
}

lm_status lm_sampler_add_grammar(lm_sampler *s, lm_grammar *g, lm_token_trie *t) {
    if (!s) return lm_err("sampler is NULL");
    lm_matcher *m = lm_matcher_new(g, t);
    if (!m) return LM_ERR;
    link *l = add(s, L_GRAMMAR);
    if (!l) { lm_matcher_free(m); return LM_ERR; }
    l->m = m;
    return LM_OK;
}

lm_matcher *lm_sampler_matcher(lm_sampler *s) {
    for (int32_t i = 0; s && i < s->n_links; i++)
        if (s->links[i].kind == L_GRAMMAR) return s->links[i].m;
    return NULL;
}

int32_t lm_sampler_n_links(const lm_sampler *s) { return s ? s->n_links : 0; }

bool lm_sampler_has_external(const lm_sampler *s) {
    for (int32_t i = 0; s && i < s->n_links; i++)
        if (s->links[i].kind == L_EXTERNAL) return true;
    return false;
}

lm_sampler *lm_sampler_new(const lm_sampler_params *params) {
    lm_sampler_params p = params ? *params : lm_sampler_default_params();
    lm_sampler *s = lm_sampler_chain_new(p.seed);
    if (!s) return NULL;
    lm_status st = LM_OK;
    if (p.repeat_penalty != 1.0f || p.frequency_penalty != 0 || p.presence_penalty != 0 || !(p.repeat_penalty > 0))
        st = lm_sampler_add_penalties(s, p.penalty_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty);
    if (!st && !(p.temperature > 0)) {
        if (!(p.temperature >= 0) || !isfinite(p.temperature)) st = lm_err("temperature must be a finite number >= 0 (got %g)", p.temperature);
        else st = lm_sampler_add_greedy(s);
    } else if (!st) {
        if (p.top_k > 0) st = lm_sampler_add_top_k(s, p.top_k);
        if (!st && p.typical_p < 1.0f) st = lm_sampler_add_typical(s, p.typical_p, 1);
        if (!st && p.top_p < 1.0f) st = lm_sampler_add_top_p(s, p.top_p, 1);
        if (!st && p.min_p > 0) st = lm_sampler_add_min_p(s, p.min_p, 1);
        if (!st) st = lm_sampler_add_temperature(s, p.temperature);
        if (!st) st = lm_sampler_add_dist(s);
    }
    if (!st && (!(p.top_p >= 0) || p.top_p > 1)) st = lm_err("top_p must be in [0, 1] (got %g)", p.top_p);
    if (!st && (!(p.min_p >= 0) || p.min_p > 1)) st = lm_err("min_p must be in [0, 1] (got %g)", p.min_p);
    if (st) { lm_sampler_free(s); return NULL; }
    return s;
}

/* ---- history ---------------------------------------------------------------------- */

void lm_sampler_accept(lm_sampler *s, int32_t token) {
    if (!s) return;
    if (s->n_hist == s->cap_hist) {
        int32_t cap = s->cap_hist ? 2 * s->cap_hist : 256;
        int32_t *h = realloc(s->hist, (size_t)cap * sizeof *h);
        if (!h) return;
        s->hist = h;
        s->cap_hist = cap;
    }
    s->hist[s->n_hist++] = token;
    if (s->sampled) /* an error leaves the matcher FAILED, which its status reports */
        for (int32_t i = 0; i < s->n_links; i++)
            if (s->links[i].kind == L_GRAMMAR) lm_matcher_accept(s->links[i].m, token);
}

const int32_t *lm_sampler_history(const lm_sampler *s, int32_t *n) {
    if (n) *n = s ? s->n_hist : 0;
    return s ? s->hist : NULL;
}

void lm_sampler_reset(lm_sampler *s, uint64_t seed) {
    if (!s) return;
    s->n_hist = 0;
    s->rng = seed;
    s->result = -1;
    s->sampled = false;
    for (int32_t i = 0; i < s->n_links; i++) lm_matcher_reset(s->links[i].m);
}

/* ---- links ------------------------------------------------------------------------ */

static uint64_t next_u64(uint64_t *x) {  /* splitmix64 */
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void swap(lm_candidates *c, int32_t a, int32_t b) {
    int32_t ti = c->ids[a]; c->ids[a] = c->ids[b]; c->ids[b] = ti;
    float tl = c->logits[a]; c->logits[a] = c->logits[b]; c->logits[b] = tl;
}

static void sort_desc(lm_candidates *c) {
    if (c->sorted) return;
    /* insertion sort for short lists, else a heap-free shell sort: no allocation */
    int32_t n = c->n;
    static const int32_t gaps[] = {1750, 701, 301, 132, 57, 23, 10, 4, 1};
    for (size_t g = 0; g < sizeof gaps / sizeof *gaps; g++) {
        int32_t gap = gaps[g];
        for (int32_t i = gap; i < n; i++) {
            float v = c->logits[i];
            int32_t id = c->ids[i], j = i;
            while (j >= gap && (c->logits[j - gap] < v || (c->logits[j - gap] == v && c->ids[j - gap] > id))) {
                c->logits[j] = c->logits[j - gap];
                c->ids[j] = c->ids[j - gap];
                j -= gap;
            }
            c->logits[j] = v;
            c->ids[j] = id;
        }
    }
    c->sorted = true;
}

static float max_logit(const lm_candidates *c) {
    float max = c->logits[0];
    for (int32_t i = 1; i < c->n; i++) if (c->logits[i] > max) max = c->logits[i];
    return max;
}

/* probs = softmax of the logits in their present order (max: the largest) */
static void softmax_probs(lm_candidates *c, float max) {
    double sum = 0;
    for (int32_t i = 0; i < c->n; i++) { c->probs[i] = expf(c->logits[i] - max); sum += c->probs[i]; }
    for (int32_t i = 0; i < c->n; i++) c->probs[i] = (float)(c->probs[i] / sum);
    c->has_probs = true;
}

void lm_candidates_softmax(lm_candidates *c) {
    if (!c || c->n <= 0) return;
    sort_desc(c);
    softmax_probs(c, c->logits[0]);
}

int32_t lm_candidates_keep(lm_candidates *c, const uint32_t *bits) {
    if (!c || !bits) return 0;
    int32_t k = 0;
    for (int32_t i = 0; i < c->n; i++) {
        int32_t id = c->ids[i];
        if (id >= 0 && id < c->n_vocab && (bits[id >> 5] >> (id & 31) & 1)) {
            c->ids[k] = id;
            c->logits[k] = c->logits[i];
            if (c->has_probs) c->probs[k] = c->probs[i];
            k++;
        }
    }
    if (k != c->n) c->has_probs = false; /* no longer sums to one */
    c->n = k;
    return k;
}

/* Sorting tens of thousands of candidates is most of a chain's cost; candidates
 * whose probability is under e^-60 of the best can never be drawn, so they go first. */
static void drop_hopeless(lm_candidates *c) {
    if (c->sorted || c->n < 1024) return;
    const float max = max_logit(c);
    int32_t m = 0;
    for (int32_t i = 0; i < c->n; i++)
        if (c->logits[i] >= max - 60.0f) { c->ids[m] = c->ids[i]; c->logits[m] = c->logits[i]; m++; }
    c->n = m;
}

/* Entry a goes before b: a higher logit, or the same and a lower id
 * (sort_desc's order); ids NULL: an entry's id is its position. */
static inline bool before(const float *lg, const int32_t *ids, int32_t a, int32_t b) {
    return lg[a] > lg[b] || (lg[a] == lg[b] && (ids ? ids[a] < ids[b] : a < b));
}

/* heap h[0..k) of positions with the last in order at the root */
static void sift(const float *lg, const int32_t *ids, int32_t *h, int32_t k, int32_t i) {
    for (;;) {
        int32_t w = i, l = 2 * i + 1, r = l + 1;
        if (l < k && before(lg, ids, h[w], h[l])) w = l;
        if (r < k && before(lg, ids, h[w], h[r])) w = r;
        if (w == i) return;
        int32_t t = h[i]; h[i] = h[w]; h[w] = t;
        i = w;
    }
}

/* The positions of the k first of n entries (lg, ids) in sort_desc's order, in
 * that order, in s->heap[0..k) (0 < k <= n); the entries stay as they are. One
 * pass with a heap of k: a few compares per entry where sorting tens of
 * thousands took milliseconds. */
static void best_k(lm_sampler *s, const float *lg, const int32_t *ids, int32_t n, int32_t k) {
    int32_t *h = s->heap;
    for (int32_t i = 0; i < k; i++) h[i] = i;
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift(lg, ids, h, k, i);
    /* most entries fall below the root: test 16 at a time against its logit */
    float bar = lg[h[0]];
    int32_t i = k;
    for (; i + 16 <= n; i += 16) {
        int any = 0;
        for (int32_t j = 0; j < 16; j++) any |= lg[i + j] >= bar;
        if (!any) continue;
        for (int32_t j = i; j < i + 16; j++)
            if (before(lg, ids, j, h[0])) { h[0] = j; sift(lg, ids, h, k, 0); bar = lg[h[0]]; }
    }
    for (; i < n; i++)
        if (before(lg, ids, i, h[0])) { h[0] = i; sift(lg, ids, h, k, 0); }
    for (int32_t m = k - 1; m > 0; m--) { /* the root (last in order) to the end */
        int32_t t = h[0]; h[0] = h[m]; h[m] = t;
        sift(lg, ids, h, m, 0);
    }
}

/* The candidates become the first k of best_k's selection from (lg, ids), sorted. */
static void keep_best(lm_sampler *s, const float *lg, const int32_t *ids, int32_t k) {
    lm_candidates *c = &s->c;
    int32_t *h = s->heap;
    for (int32_t j = 0; j < k; j++) { s->scratch[j] = lg[h[j]]; h[j] = ids ? ids[h[j]] : h[j]; }
    memcpy(c->logits, s->scratch, (size_t)k * sizeof *c->logits);
    memcpy(c->ids, h, (size_t)k * sizeof *c->ids);
    c->n = k;
    c->sorted = true;
    c->has_probs = false;
}

/* top-p on a long unsorted list: the mass of the best candidates taken in
 * order, from one pass over all for the normalizer and a best-k selection of
 * up to 1024; false (nothing changed) when those do not reach p. */
static bool top_p_selected(lm_sampler *s, float p, int32_t min_keep) {
    lm_candidates *c = &s->c;
    const int32_t k = c->n < 1024 ? c->n : 1024;
    if (min_keep > k) return false;
    const float max = max_logit(c);
    double sum = 0;
    for (int32_t i = 0; i < c->n; i++) sum += expf(c->logits[i] - max);
    best_k(s, c->logits, c->ids, c->n, k);
    double cum = 0;
    for (int32_t i = 0; i < k; i++) {
        cum += (float)(expf(c->logits[s->heap[i]] - max) / sum);
        if (cum >= p && i + 1 >= min_keep) { keep_best(s, c->logits, c->ids, i + 1); return true; }
    }
    return false;
}

static void apply_penalties(lm_sampler *s, const link *l) {
    lm_candidates *c = &s->c;
    int32_t start = l->i < 0 || l->i > s->n_hist ? 0 : s->n_hist - l->i;
    for (int32_t i = start; i < s->n_hist; i++)
        if (s->hist[i] >= 0 && s->hist[i] < c->n_vocab) s->counts[s->hist[i]]++;
    for (int32_t i = 0; i < c->n; i++) {
        int32_t n = s->counts[c->ids[i]];
        if (!n) continue;
        float v = c->logits[i];
        v = v > 0 ? v / l->repeat : v * l->repeat;
        v -= (float)n * l->freq + l->presence;
        c->logits[i] = v;
    }
    for (int32_t i = start; i < s->n_hist; i++)
        if (s->hist[i] >= 0 && s->hist[i] < c->n_vocab) s->counts[s->hist[i]] = 0;
    c->sorted = false;
}

static void apply_bias(lm_sampler *s, const link *l) {
    lm_candidates *c = &s->c;
    for (int32_t b = 0; b < l->n_bias; b++) {
        int32_t id = l->bias_ids[b];
        if (id >= c->n_vocab) continue;
        if (s->identity) { c->logits[id] += l->bias[b]; continue; }
        for (int32_t i = 0; i < c->n; i++) if (c->ids[i] == id) { c->logits[i] += l->bias[b]; break; }
    }
    c->sorted = false;
}

static void cut_cumulative(lm_candidates *c, float p, int32_t min_keep) {
    lm_candidates_softmax(c);
    double cum = 0;
    for (int32_t i = 0; i < c->n; i++) {
        cum += c->probs[i];
        if (cum >= p && i + 1 >= min_keep) { c->n = i + 1; break; }
    }
}

static void apply_typical(lm_sampler *s, const link *l) {
    lm_candidates *c = &s->c;
    lm_candidates_softmax(c);
    double ent = 0;
    for (int32_t i = 0; i < c->n; i++) if (c->probs[i] > 0) ent -= c->probs[i] * log(c->probs[i]);
    /* order by |-log p - H| ascending, keep until the cumulative mass reaches p */
    float *score = s->scratch;
    for (int32_t i = 0; i < c->n; i++) score[i] = (float)fabs(-log(c->probs[i] > 0 ? c->probs[i] : 1e-30) - ent);
    for (int32_t i = 1; i < c->n; i++) { /* insertion sort: typical runs on already-cut lists in practice */
        float sc = score[i], lg = c->logits[i], pr = c->probs[i];
        int32_t id = c->ids[i], j = i;
        while (j > 0 && score[j - 1] > sc) {
            score[j] = score[j - 1]; c->logits[j] = c->logits[j - 1]; c->probs[j] = c->probs[j - 1]; c->ids[j] = c->ids[j - 1];
            j--;
        }
        score[j] = sc; c->logits[j] = lg; c->probs[j] = pr; c->ids[j] = id;
    }
    double cum = 0;
    for (int32_t i = 0; i < c->n; i++) {
        cum += c->probs[i];
        if (cum >= l->f && i + 1 >= l->i) { c->n = i + 1; break; }
    }
    c->sorted = false;
    c->has_probs = false;
}

/* Returns true when the link picked the token. */
static bool run_link(lm_sampler *s, const link *l) {
    lm_candidates *c = &s->c;
    if (c->n <= 0) return false;
    switch (l->kind) {
    case L_PENALTIES: apply_penalties(s, l); c->has_probs = false; break;
    case L_BIAS: apply_bias(s, l); c->has_probs = false; break;
    case L_TEMP:
        if (l->f <= 0) { /* temperature 0 keeps only the best */
            int32_t best = 0;
            for (int32_t i = 1; i < c->n; i++) if (c->logits[i] > c->logits[best]) best = i;
            swap(c, 0, best);
            c->n = 1;
            c->sorted = true;
        } else {
            const float inv = 1.0f / l->f;
            for (int32_t i = 0; i < c->n; i++) c->logits[i] *= inv;
        }
        c->has_probs = false;
        break;
    case L_TOP_K:
        if (l->i > 0 && l->i < c->n) {
            if (c->sorted) {
                c->n = l->i;
                c->has_probs = false;
            } else {
                best_k(s, c->logits, c->ids, c->n, l->i);
                keep_best(s, c->logits, c->ids, l->i);
            }
        }
        break;
    case L_TOP_P:
        if (l->f < 1.0f) {
            drop_hopeless(c);
            if (!c->sorted && c->n > 4096 && top_p_selected(s, l->f, l->i)) break;
            cut_cumulative(c, l->f, l->i);
        }
        break;
    case L_MIN_P:
        if (l->f > 0) {
            drop_hopeless(c);
            if (!c->sorted) {
                /* only those within log(p) of the best can stay: sort just them */
                const float floor_logit = max_logit(c) + logf(l->f);
                int32_t m = 0;
                for (int32_t i = 0; i < c->n; i++) m += c->logits[i] >= floor_logit;
                if (m >= l->i) {
                    int32_t k = 0;
                    for (int32_t i = 0; i < c->n; i++)
                        if (c->logits[i] >= floor_logit) { c->logits[k] = c->logits[i]; c->ids[k] = c->ids[i]; k++; }
                    c->n = k;
                }
            }
            sort_desc(c);
            const float floor_logit = c->logits[0] + logf(l->f);
            int32_t k = 1;
            while (k < c->n && (c->logits[k] >= floor_logit || k < l->i)) k++;
            c->n = k;
            c->has_probs = false;
        }
        break;
    case L_TYPICAL:
        if (l->f < 1.0f) { drop_hopeless(c); apply_typical(s, l); }
        break;
    case L_GREEDY: {
        int32_t best = 0;
        for (int32_t i = 1; i < c->n; i++)
            if (c->logits[i] > c->logits[best] || (c->logits[i] == c->logits[best] && c->ids[i] < c->ids[best])) best = i;
        /* the best is -inf or NaN: the links masked every token */
        s->result = c->n > 0 && c->logits[best] > -INFINITY ? c->ids[best] : NO_TOKEN;
        return true;
    }
    case L_DIST: {
        drop_hopeless(c);
        const float top = c->n > 0 ? (c->sorted ? c->logits[0] : max_logit(c)) : -INFINITY;
        if (!(top > -INFINITY)) { s->result = NO_TOKEN; return true; } /* every token masked */
        /* the draw needs no order: a list nothing sorted is not sorted for it */
        softmax_probs(c, top);
        double u = (double)(next_u64(&s->rng) >> 11) * (1.0 / 9007199254740992.0);
        int32_t pick = c->n - 1;
        for (int32_t i = 0; i < c->n; i++) {
            u -= c->probs[i];
            if (u < 0) { pick = i; break; }
        }
        s->result = c->ids[pick];
        return true;
    }
    case L_GRAMMAR: {
        int32_t tok = lm_matcher_apply(l->m, c);
        if (tok >= 0) { s->result = tok; return true; }
        break;
    }
    case L_EXTERNAL: break;
    }
    s->identity = false;
    return false;
}

/* room for n_vocab candidates */
static bool ensure_cap(lm_sampler *s, int32_t n_vocab) {
    if (s->cap < n_vocab) {
        int32_t *ids = realloc(s->c.ids, (size_t)n_vocab * sizeof *ids);
        if (ids) s->c.ids = ids;
        float *lg = realloc(s->c.logits, (size_t)n_vocab * sizeof *lg);
        if (lg) s->c.logits = lg;
        float *pr = realloc(s->c.probs, (size_t)n_vocab * sizeof *pr);
        if (pr) s->c.probs = pr;
        float *sc = realloc(s->scratch, (size_t)n_vocab * sizeof *sc);
        if (sc) s->scratch = sc;
        int32_t *hp = realloc(s->heap, (size_t)n_vocab * sizeof *hp);
        if (hp) s->heap = hp;
        int32_t *counts = calloc((size_t)n_vocab, sizeof *counts);
        if (counts) { free(s->counts); s->counts = counts; }
        if (!ids || !lg || !pr || !sc || !hp || !counts) { lm_err("out of memory"); return false; }
        s->cap = n_vocab;
    }
    return true;
}

lm_candidates *lm_sampler_begin(lm_sampler *s, const float *logits, int32_t n_vocab) {
    if (!s || !logits || n_vocab <= 0) { lm_err("sampler: bad arguments"); return NULL; }
    if (!ensure_cap(s, n_vocab)) return NULL;
    for (int32_t i = 0; i < n_vocab; i++) s->c.ids[i] = i;
    memcpy(s->c.logits, logits, (size_t)n_vocab * sizeof *logits);
    s->c.n = s->c.n_vocab = n_vocab;
    s->c.sorted = s->c.has_probs = false;
    s->identity = true;
    s->result = -1;
    s->sampled = true;
    return &s->c;
}

/* A grammar link followed by top-k (or greedy: k = 1) needs only the k best
 * allowed candidates, which are the first k allowed in logit order: test the
 * best few hundred tokens one by one (a walk of a few bytes each) instead of
 * building the mask of the whole vocabulary, which a state seen for the first
 * time costs (every position of a string with a maxLength is a new state).
 * false: not enough of them are allowed; the caller applies the whole mask. */
static bool grammar_top_k(lm_sampler *s, lm_matcher *m, int32_t k) {
    lm_candidates *c = &s->c;
    int32_t look = k * 8 < 512 ? 512 : k * 8;
    if (c->n <= look || lm_matcher_mask_cached(m)) return false;
    best_k(s, c->logits, c->ids, c->n, look);
    int32_t kept = 0;
    for (int32_t j = 0; j < look && kept < k; j++)
        if (lm_matcher_allows(m, c->ids[s->heap[j]])) s->heap[kept++] = s->heap[j];
    if (kept < k) return false;
    keep_best(s, c->logits, c->ids, k);
    s->identity = false;
    return true;
}

int32_t lm_sampler_run(lm_sampler *s, int32_t from) {
    if (!s) return 0;
    for (int32_t i = from < 0 ? 0 : from; i < s->n_links; i++) {
        if (s->result >= 0) return s->n_links;
        if (s->links[i].kind == L_EXTERNAL) return i; /* the caller runs it, then run(i + 1) */
        if (s->links[i].kind == L_GRAMMAR && i + 1 < s->n_links && s->c.n > 0) {
            const link *next = &s->links[i + 1];
            int32_t k = next->kind == L_GREEDY ? 1 : next->kind == L_TOP_K ? next->i : 0;
            if (k > 0 && grammar_top_k(s, s->links[i].m, k)) continue;
        }
        if (run_link(s, &s->links[i])) return s->n_links;
    }
    return s->n_links;
}

void lm_sampler_set_result(lm_sampler *s, int32_t token) { if (s) s->result = token; }

int32_t lm_sampler_result(lm_sampler *s) {
    if (!s) return -1;
    if (s->result == -1 && s->c.n > 0) { /* no terminal link: the best remaining */
        int32_t best = 0;
        for (int32_t i = 1; i < s->c.n; i++) if (s->c.logits[i] > s->c.logits[best]) best = i;
        s->result = s->c.logits[best] > -INFINITY ? s->c.ids[best] : NO_TOKEN;
    }
    if (s->result == NO_TOKEN || (s->result < 0 && s->c.n == 0)) {
        lm_err("sampler: the chain's links left no token with a finite logit (every token was masked)");
        return -1;
    }
    return s->result;
}

int32_t lm_sampler_sample(lm_sampler *s, const float *logits, int32_t n_vocab) {
    if (!s) { lm_err("sampler is NULL"); return -1; }
    for (int32_t i = 0; i < s->n_links; i++)
        if (s->links[i].kind == L_EXTERNAL) { lm_err("sampler: the chain has external links; use begin/run"); return -1; }
    const link *l0 = s->n_links > 0 ? &s->links[0] : NULL;
    if (l0 && l0->kind == L_TOP_K && l0->i > 0 && l0->i < n_vocab && logits) {
        /* a chain that starts with top-k takes its k straight from the logits:
         * no copy of the whole vocabulary */
        if (!ensure_cap(s, n_vocab)) return -1;
        best_k(s, logits, NULL, n_vocab, l0->i);
        keep_best(s, logits, NULL, l0->i);
        s->c.n_vocab = n_vocab;
        s->identity = false;
        s->result = -1;
        s->sampled = true;
        lm_sampler_run(s, 1);
        return lm_sampler_result(s);
    }
    if (!lm_sampler_begin(s, logits, n_vocab)) return -1;
    lm_sampler_run(s, 0);
    return lm_sampler_result(s);
}
