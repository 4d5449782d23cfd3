/* Built-in sampler: greedy, cuts, seeds, penalties, parameter checks. */
#include "testutil.h"
#include "lumen.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NV 1000
#define BIG 49152 /* SmolLM2's vocabulary: the sizes where the cuts take their fast paths */

static const float *g_sort_logits;
/* sort_desc's order: logit descending, then id ascending */
static int by_order(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float lx = g_sort_logits[x], ly = g_sort_logits[y];
    if (lx != ly) return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* The candidates a one-link chain leaves, against the same cut done by a full sort here. */
static void check_cut(const char *what, const float *logits, int link, float f, int32_t i) {
    static int32_t order[BIG];
    lm_sampler *ch = lm_sampler_chain_new(1);
    if (link == 0) lm_sampler_add_top_k(ch, i);
    else if (link == 1) lm_sampler_add_top_p(ch, f, i);
    else lm_sampler_add_min_p(ch, f, i);
    lm_sampler_add_external(ch);
    lm_candidates *cd = lm_sampler_begin(ch, logits, BIG);
    lm_sampler_run(ch, 0);
    for (int32_t k = 0; k < BIG; k++) order[k] = k;
    g_sort_logits = logits;
    qsort(order, BIG, sizeof *order, by_order);
    int32_t want = BIG;
    if (link == 0) want = i;
    else if (link == 1) {
        double sum = 0, cum = 0;
        for (int32_t k = 0; k < BIG; k++) sum += expf(logits[order[k]] - logits[order[0]]);
        for (int32_t k = 0; k < BIG; k++) {
            cum += (float)(expf(logits[order[k]] - logits[order[0]]) / sum);
            if (cum >= f && k + 1 >= i) { want = k + 1; break; }
        }
    } else {
        want = 0;
        while (want < BIG && (logits[order[want]] >= logits[order[0]] + logf(f) || want < i)) want++;
    }
    /* the mass summed in another order may cross p one candidate apart */
    int ok = link == 1 ? abs(cd->n - want) <= 1 : cd->n == want;
    int32_t n = cd->n < want ? cd->n : want;
    for (int32_t k = 0; k < n && ok; k++) ok = cd->ids[k] == order[k] && cd->logits[k] == logits[order[k]];
    CHECK(ok, "%s: %d candidates kept (a full sort keeps %d), in sort order", what, cd->n, want);
    lm_sampler_free(ch);
}

int main(void) {
    float logits[NV];
    uint64_t r = 7;
    for (int i = 0; i < NV; i++) logits[i] = tu_randf(&r, -5, 5);
    logits[123] = 9.0f;
    logits[456] = 8.9f;

    lm_sampler_params p = lm_sampler_default_params();
    p.temperature = 0;
    lm_sampler *g = lm_sampler_new(&p);
    CHECK(g && lm_sampler_sample(g, logits, NV) == 123, "greedy picks the argmax");
    lm_sampler_free(g);

    /* top-k 2: only the two best can come out; both do */
    p = lm_sampler_default_params();
    p.temperature = 1.0f; p.top_k = 2; p.top_p = 1.0f; p.min_p = 0; p.seed = 42;
    lm_sampler *s = lm_sampler_new(&p);
    int seen123 = 0, seen456 = 0, other = 0;
    for (int i = 0; i < 2000; i++) {
        int t = lm_sampler_sample(s, logits, NV);
        seen123 += t == 123; seen456 += t == 456; other += t != 123 && t != 456;
    }
    CHECK(other == 0 && seen123 > 800 && seen456 > 700, "top-k 2 draws (%d, %d, %d other)", seen123, seen456, other);
    lm_sampler_free(s);

    /* same seed, same sequence; another seed, another sequence */
    int a[50], b[50], c[50];
    p = lm_sampler_default_params();
    p.temperature = 1.5f; p.top_k = 0; p.top_p = 1; p.min_p = 0;
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 99 : 1234;
        lm_sampler *x = lm_sampler_new(&p);
        for (int i = 0; i < 50; i++) (run == 0 ? a : run == 1 ? b : c)[i] = lm_sampler_sample(x, logits, NV);
        lm_sampler_free(x);
    }
    CHECK(!memcmp(a, b, sizeof a), "the same seed gives the same draws");
    CHECK(memcmp(a, c, sizeof a) != 0, "another seed gives other draws");

    /* min-p 0.5 at temperature 1 keeps tokens within ln(2) of the best */
    p = lm_sampler_default_params();
    p.temperature = 1; p.top_k = 0; p.top_p = 1; p.min_p = 0.5f; p.seed = 5;
    s = lm_sampler_new(&p);
    other = 0;
    for (int i = 0; i < 500; i++) { int t = lm_sampler_sample(s, logits, NV); other += logits[t] < 9.0f - logf(2.0f) - 1e-4f; }
    CHECK(other == 0, "min-p cut (%d outside)", other);
    lm_sampler_free(s);

    /* repetition penalty turns greedy away from a repeated token */
    p = lm_sampler_default_params();
    p.temperature = 0; p.repeat_penalty = 1.5f; p.penalty_last_n = 8;
    s = lm_sampler_new(&p);
    lm_sampler_accept(s, 123);
    CHECK(lm_sampler_sample(s, logits, NV) == 456, "penalized argmax moves on");
    lm_sampler_free(s);

    /* bad parameters are refused with a message */
    p = lm_sampler_default_params(); p.top_p = 1.5f;
    CHECK(lm_sampler_new(&p) == NULL && strstr(lm_last_error(), "top_p"), "top_p > 1");
    p = lm_sampler_default_params(); p.temperature = NAN;
    CHECK(lm_sampler_new(&p) == NULL && strstr(lm_last_error(), "temperature"), "NaN temperature");
    p = lm_sampler_default_params(); p.repeat_penalty = 0;
    CHECK(lm_sampler_new(&p) == NULL, "zero penalty");
    /* a hand-built chain with an external link: the caller edits the candidates */
    lm_sampler *ch = lm_sampler_chain_new(1);
    CHECK(lm_sampler_add_top_k(ch, 10) == LM_OK && lm_sampler_add_external(ch) == LM_OK && lm_sampler_add_greedy(ch) == LM_OK, "chain");
    CHECK(lm_sampler_sample(ch, logits, NV) == -1 && strstr(lm_last_error(), "external"), "sample refuses external links");
    lm_candidates *cd = lm_sampler_begin(ch, logits, NV);
    int32_t at = lm_sampler_run(ch, 0);
    CHECK(at == 1 && cd->n == 10, "run stops at the external link with top-10 left (%d, %d)", at, cd->n);
    for (int32_t i = 0; i < cd->n; i++) if (cd->ids[i] == 123) cd->logits[i] = -100; /* ban the best */
    CHECK(lm_sampler_run(ch, at + 1) == lm_sampler_n_links(ch) && lm_sampler_result(ch) == 456, "greedy after the edit picks the runner-up");
    lm_sampler_free(ch);

    /* logit bias, presence and frequency penalties */
    ch = lm_sampler_chain_new(1);
    int32_t ids[1] = {7};
    float bias[1] = {100};
    lm_sampler_add_logit_bias(ch, ids, bias, 1);
    lm_sampler_add_greedy(ch);
    CHECK(lm_sampler_sample(ch, logits, NV) == 7, "a +100 bias wins");
    lm_sampler_free(ch);
    ch = lm_sampler_chain_new(1);
    lm_sampler_add_penalties(ch, -1, 1.0f, 0.1f, 0.05f);
    lm_sampler_add_greedy(ch);
    lm_sampler_accept(ch, 456);
    CHECK(lm_sampler_sample(ch, logits, NV) == 123, "presence+frequency keep 123 on top");
    for (int i = 0; i < 3; i++) lm_sampler_accept(ch, 123);
    CHECK(lm_sampler_sample(ch, logits, NV) == 456, "three uses of 123 cost 0.35 and it loses to 456");
    int32_t nh;
    CHECK(lm_sampler_history(ch, &nh) && nh == 4, "history");
    lm_sampler_free(ch);

    /* the cuts on a vocabulary of 49152, with many ties (quarter steps): the
     * same candidates in the same order as a full sort */
    static float big[BIG], flat[BIG];
    for (int i = 0; i < BIG; i++) {
        big[i] = floorf(tu_randf(&r, -10, 10) * 4) / 4;
        flat[i] = floorf(tu_randf(&r, -1, 1) * 4) / 4;
    }
    big[777] = 14; big[31000] = 13.75f; big[12] = 13.75f;
    check_cut("top-k 40", big, 0, 0, 40);
    check_cut("top-k 1", big, 0, 0, 1);
    check_cut("top-k 20000", big, 0, 0, 20000);
    check_cut("top-p 0.9, peaked", big, 1, 0.9f, 1);
    check_cut("top-p 0.9, min_keep 50", big, 1, 0.9f, 50);
    check_cut("top-p 0.9, flat (more than 1024 needed)", flat, 1, 0.9f, 1);
    check_cut("min-p 0.05", big, 2, 0.05f, 1);
    check_cut("min-p 0.5, min_keep 9", big, 2, 0.5f, 9);
    check_cut("min-p 0.9, flat", flat, 2, 0.9f, 1);

    /* a chain that starts with top-k: lm_sampler_sample takes the k straight
     * from the logits; the same draws as the candidates path (begin + run) */
    p = lm_sampler_default_params();
    p.temperature = 0.7f; p.top_k = 40; p.top_p = 0.9f; p.min_p = 0.05f; p.seed = 21;
    lm_sampler *fast = lm_sampler_new(&p), *slow = lm_sampler_new(&p);
    int same = 0;
    for (int i = 0; i < 300; i++) {
        int a1 = lm_sampler_sample(fast, big, BIG);
        lm_sampler_begin(slow, big, BIG);
        lm_sampler_run(slow, 0);
        same += a1 == lm_sampler_result(slow);
    }
    CHECK(same == 300, "top-k first: sample and begin/run agree on %d of 300 draws", same);
    lm_sampler_free(fast); lm_sampler_free(slow);

    /* the draw over all 49152 (no cut, so no sort): three tokens carry all but
     * e^-20 of the mass, in the ratio e^0 : e^-1 : e^-2 */
    for (int i = 0; i < BIG; i++) big[i] = tu_randf(&r, -10, 0);
    big[40000] = 20; big[5] = 19; big[49151] = 18;
    p = lm_sampler_default_params();
    p.temperature = 1; p.top_k = 0; p.top_p = 1; p.min_p = 0; p.seed = 11;
    s = lm_sampler_new(&p);
    int cnt[3] = {0}, rest = 0;
    for (int i = 0; i < 6000; i++) {
        int t = lm_sampler_sample(s, big, BIG);
        if (t == 40000) cnt[0]++; else if (t == 5) cnt[1]++; else if (t == 49151) cnt[2]++; else rest++;
    }
    const double z = 1 + exp(-1) + exp(-2);
    CHECK(rest == 0 && fabs(cnt[0] / 6000.0 - 1 / z) < 0.03 && fabs(cnt[1] / 6000.0 - exp(-1) / z) < 0.03 &&
          fabs(cnt[2] / 6000.0 - exp(-2) / z) < 0.03, "unsorted draw frequencies %d %d %d (%d elsewhere)", cnt[0], cnt[1], cnt[2], rest);
    lm_sampler_free(s);

    /* typical-p keeps a non-empty set and draws from it */
    p = lm_sampler_default_params();
    p.top_k = 0; p.top_p = 1; p.min_p = 0; p.typical_p = 0.5f; p.temperature = 1; p.seed = 3;
    s = lm_sampler_new(&p);
    CHECK(s && lm_sampler_sample(s, logits, NV) >= 0, "typical-p draws");
    lm_sampler_free(s);
    return tu_finish("sampler");
}
