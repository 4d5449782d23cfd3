/* Built-in sampler: greedy, cuts, seeds, penalties, parameter checks. */
#include "testutil.h"
#include "lumen.h"
#include <math.h>
#include <string.h>

#define NV 1000

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

    /* typical-p keeps a non-empty set and draws from it */
    p = lm_sampler_default_params();
    p.top_k = 0; p.top_p = 1; p.min_p = 0; p.typical_p = 0.5f; p.temperature = 1; p.seed = 3;
    s = lm_sampler_new(&p);
    CHECK(s && lm_sampler_sample(s, logits, NV) >= 0, "typical-p draws");
    lm_sampler_free(s);
    return tu_finish("sampler");
}
