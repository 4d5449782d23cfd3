/* Built-in sampling: penalties -> top-k -> top-p -> min-p -> temperature ->
 * seeded draw (llama.cpp's default order). Greedy when temperature <= 0. */
#include "lumen.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int32_t id; float v; } cand;

struct lm_sampler {
    lm_sampler_params p;
    uint64_t rng;
    cand *c;
    float *pr;           /* probabilities scratch, cap entries */
    int32_t cap;
    int32_t *hist;       /* ring of the last repeat_last_n accepted tokens */
    int32_t hist_n, hist_at;
};

lm_sampler_params lm_sampler_default_params(void) {
    return (lm_sampler_params){.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f,
                               .repeat_penalty = 1.0f, .repeat_last_n = 64, .seed = 0x5eed};
}

lm_sampler *lm_sampler_new(const lm_sampler_params *params) {
    lm_sampler_params p = params ? *params : lm_sampler_default_params();
    if (!(p.temperature >= 0) || !isfinite(p.temperature)) { lm_err("sampler: temperature must be a finite number >= 0"); return NULL; }
    if (!(p.top_p >= 0) || p.top_p > 1) { lm_err("sampler: top_p must be in [0, 1] (got %g)", p.top_p); return NULL; }
    if (!(p.min_p >= 0) || p.min_p > 1) { lm_err("sampler: min_p must be in [0, 1] (got %g)", p.min_p); return NULL; }
    if (!(p.repeat_penalty > 0) || !isfinite(p.repeat_penalty)) { lm_err("sampler: repeat_penalty must be > 0"); return NULL; }
    if (p.repeat_last_n < 0 || p.repeat_last_n > 1 << 20) { lm_err("sampler: repeat_last_n out of range"); return NULL; }
    lm_sampler *s = calloc(1, sizeof *s);
    if (!s) { lm_err("out of memory"); return NULL; }
    s->p = p;
    s->rng = p.seed;
    if (p.repeat_last_n > 0) {
        s->hist = calloc((size_t)p.repeat_last_n, sizeof *s->hist);
        if (!s->hist) { free(s); lm_err("out of memory"); return NULL; }
    }
    return s;
}

void lm_sampler_free(lm_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s->pr);
    free(s->hist);
    free(s);
}

void lm_sampler_accept(lm_sampler *s, int32_t token) {
    if (!s || !s->hist) return;
    s->hist[s->hist_at] = token;
    s->hist_at = (s->hist_at + 1) % s->p.repeat_last_n;
    if (s->hist_n < s->p.repeat_last_n) s->hist_n++;
}

static uint64_t next_u64(uint64_t *x) {  /* splitmix64 */
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int by_value_desc(const void *a, const void *b) {
    float x = ((const cand *)a)->v, y = ((const cand *)b)->v;
    if (x != y) return x < y ? 1 : -1;
    return ((const cand *)a)->id - ((const cand *)b)->id;
}

int32_t lm_sampler_sample(lm_sampler *s, const float *logits, int32_t n) {
    if (!s || !logits || n <= 0) { lm_err("sample: bad arguments"); return -1; }
    if (s->cap < n) {
        cand *c = realloc(s->c, (size_t)n * sizeof *c);
        if (c) s->c = c;
        float *pr = realloc(s->pr, (size_t)n * sizeof *pr);
        if (pr) s->pr = pr;
        if (!c || !pr) { lm_err("out of memory"); return -1; }
        s->cap = n;
    }
    cand *c = s->c;
    for (int32_t i = 0; i < n; i++) c[i] = (cand){i, logits[i]};
    if (s->p.repeat_penalty != 1.0f) {
        for (int32_t i = 0; i < s->hist_n; i++) {
            int32_t t = s->hist[i];
            if (t < 0 || t >= n) continue;
            bool seen = false; /* penalize each distinct token once */
            for (int32_t j = 0; j < i; j++) if (s->hist[j] == t) { seen = true; break; }
            if (seen) continue;
            c[t].v = c[t].v > 0 ? c[t].v / s->p.repeat_penalty : c[t].v * s->p.repeat_penalty;
        }
    }
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++) if (c[i].v > c[best].v) best = i;
    if (s->p.temperature <= 0 || s->p.top_k == 1) return c[best].id;

    /* Drop candidates whose probability is below e^-60 of the best before any
     * later cut; they cannot be drawn and sorting them is most of the cost. */
    const float floor_v = c[best].v - 60.0f * s->p.temperature;
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++) if (c[i].v >= floor_v) c[m++] = c[i];
    qsort(c, (size_t)m, sizeof *c, by_value_desc);
    if (s->p.top_k > 0 && s->p.top_k < m) m = s->p.top_k;

    /* probabilities at temperature 1 for the top-p / min-p cuts (as llama.cpp's chain) */
    double sum = 0;
    float *pr = s->pr;
    for (int32_t i = 0; i < m; i++) { pr[i] = expf(c[i].v - c[0].v); sum += pr[i]; }
    if (s->p.top_p < 1.0f) {
        double cum = 0;
        for (int32_t i = 0; i < m; i++) {
            cum += pr[i] / sum;
            if (cum >= s->p.top_p) { m = i + 1; break; }
        }
    }
    if (s->p.min_p > 0) {
        int32_t k = 1;
        while (k < m && pr[k] >= s->p.min_p * pr[0]) k++;
        m = k;
    }
    sum = 0;
    for (int32_t i = 0; i < m; i++) { pr[i] = expf((c[i].v - c[0].v) / s->p.temperature); sum += pr[i]; }
    double u = (double)(next_u64(&s->rng) >> 11) * (1.0 / 9007199254740992.0) * sum;
    int32_t pick = m - 1;
    for (int32_t i = 0; i < m; i++) {
        u -= pr[i];
        if (u < 0) { pick = i; break; }
    }
    return c[pick].id;
}
