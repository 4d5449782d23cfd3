/* Agreement with llama.cpp (the reference implementation of GGUF) on the default
 * model, against fixtures recorded by bench/make_fixtures.py:
 *  - tokenization identical, and decode(encode(x)) == x;
 *  - teacher-forced on llama.cpp's own sequence, lumen's logits for llama.cpp's
 *    top-20 ids are as close to llama.cpp's as llama.cpp's are to themselves;
 *  - free-running 32-token greedy continuations identical on >= 6 of 8 prompts.
 *
 * Why "as close as llama.cpp to itself" and not a fixed 0.25: with activations
 * quantized to Q8 this model is chaotic at float-rounding level. Scaling one
 * RMSNorm by (1 + 1e-6) moves lumen's logits by 0.77 (median over positions) and
 * up to 3.2; llama.cpp fed the same tokens one at a time instead of in a batch
 * differs from itself by 0.28 median, 1.68 max, with top-1 equal at 97.7% of
 * positions (the fixture's 'alt' records). A bound below that noise could only
 * be met by copying llama.cpp's arithmetic bit for bit. The bounds here:
 * top-1 rate >= llama.cpp's self rate - 2%, median |diff| <= max(0.25, 1.5 x
 * llama.cpp's self median), max |diff| <= max(0.25, 2 x llama.cpp's self max)
 * (the maximum is one position's outlier: which position flips depends on the
 * float summation order of the kernel the CPU runs, so it gets the wider margin;
 * llama.cpp with flash attention on differs from itself by up to 2.1). */
#include "testutil.h"
#include "fixture.h"
#include "lumen.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *model_path(const char *file) {
    static char buf[4096];
    const char *dir = getenv("LUMEN_MODELS");
    if (dir && *dir) snprintf(buf, sizeof buf, "%s/%s", dir, file);
    else snprintf(buf, sizeof buf, "%s", tu_path("models/"));
    if (!(dir && *dir)) strncat(buf, file, sizeof buf - strlen(buf) - 1);
    return buf;
}

static void check_tokenizer(lm_model *m, fixture *fx) {
    int same = 0, roundtrip = 0;
    int32_t *buf = malloc(1 << 20);
    char *text = malloc(1 << 20);
    for (int i = 0; i < fx->n_toks; i++) {
        fx_tok *t = &fx->toks[i];
        int64_t n = lm_tokenize(m, t->text, t->len, buf, (1 << 20) / 4, false, t->special);
        bool eq = n == t->n && !memcmp(buf, t->ids, (size_t)n * sizeof *buf);
        same += eq;
        if (!eq) {
            fprintf(stderr, "tokenize mismatch (special=%d) on \"%.60s\": %lld ids vs llama.cpp's %d\n",
                    t->special, t->text, (long long)n, t->n);
        }
        int64_t k = n > 0 ? lm_detokenize(m, buf, n, text, 1 << 20, t->special) : 0;
        bool rt = k == (int64_t)t->len && !memcmp(text, t->text, t->len);
        roundtrip += rt;
        if (!rt) fprintf(stderr, "round trip differs (special=%d) on \"%.60s\"\n", t->special, t->text);
    }
    printf("tokenizer: %d/%d texts tokenized identically to llama.cpp, %d/%d round-trip exactly\n",
           same, fx->n_toks, roundtrip, fx->n_toks);
    CHECK(fx->n_toks >= 20, "the fixture has only %d tokenizer records", fx->n_toks);
    CHECK(same == fx->n_toks, "%d tokenizations differ", fx->n_toks - same);
    CHECK(roundtrip == fx->n_toks, "%d round trips differ", fx->n_toks - roundtrip);
    free(buf);
    free(text);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static void check_logits(lm_model *m, fixture *fx) {
    lm_model_info info;
    lm_model_get_info(m, &info);
    int positions = 0, top1 = 0, greedy_same = 0, self_top1 = 0, n_forks = 0;
    float fork_margin[64];
    float worst = 0, self_worst = 0, long_worst = 0;
    int longest = 0;
    float *diffs = calloc(64 * 64, sizeof *diffs), *self_diffs = calloc(64 * 64, sizeof *self_diffs);
    for (int p = 0; p < fx->n_prompts; p++) {
        fx_prompt *fp = &fx->prompts[p];
        int32_t n_tok = 0;
        int32_t *toks = malloc(((size_t)fp->n + 64) * sizeof *toks);
        int64_t n = lm_tokenize(m, fp->text, fp->len, toks, fp->n + 64, true, fp->special);
        CHECK(n == fp->n && !memcmp(toks, fp->ids, (size_t)fp->n * 4), "prompt %d tokenizes differently", p);
        lm_session_params sp = {.n_ctx = 1024, .n_batch = 512};
        lm_session *s = lm_session_new(m, &sp);
        CHECK(s != NULL, "session: %s", lm_last_error());
        if (!s) { free(toks); continue; }
        /* teacher forcing on llama.cpp's sequence */
        CHECK(lm_session_eval(s, fp->ids, fp->n) == LM_OK, "eval: %s", lm_last_error());
        float prompt_worst = 0;
        for (int pos = 0; pos < fp->n_greedy; pos++) {
            const float *lg = lm_session_logits(s);
            int best = 0;
            for (int v = 1; v < info.n_vocab; v++) if (lg[v] > lg[best]) best = v;
            top1 += best == fp->top[pos][0].id;
            self_top1 += fp->alt_top1[pos] == fp->top[pos][0].id;
            float d_pos = 0, s_pos = 0;
            for (int k = 0; k < fp->n_top[pos]; k++) {
                float d = fabsf(lg[fp->top[pos][k].id] - fp->top[pos][k].logit);
                if (d > d_pos) d_pos = d;
                if (k < fp->n_alt[pos]) {
                    float e = fabsf(fp->alt[pos][k] - fp->top[pos][k].logit);
                    if (e > s_pos) s_pos = e;
                }
            }
            if (d_pos > prompt_worst) prompt_worst = d_pos;
            if (s_pos > self_worst) self_worst = s_pos;
            if (positions < 64 * 64) { diffs[positions] = d_pos; self_diffs[positions] = s_pos; }
            positions++;
            CHECK(lm_session_eval(s, &fp->greedy[pos], 1) == LM_OK, "eval: %s", lm_last_error());
        }
        if (prompt_worst > worst) worst = prompt_worst;
        /* free-running greedy from the prompt */
        CHECK(lm_session_rewind(s, fp->n - 1) == LM_OK, "rewind: %s", lm_last_error());
        CHECK(lm_session_eval(s, &fp->ids[fp->n - 1], 1) == LM_OK, "eval: %s", lm_last_error());
        int32_t mine[64];
        for (n_tok = 0; n_tok < fp->n_greedy; n_tok++) {
            const float *lg = lm_session_logits(s);
            int best = 0;
            for (int v = 1; v < info.n_vocab; v++) if (lg[v] > lg[best]) best = v;
            mine[n_tok] = best;
            if (lm_session_eval(s, &mine[n_tok], 1)) break;
        }
        int first_diff = -1;
        for (int i = 0; i < fp->n_greedy && first_diff < 0; i++) if (mine[i] != fp->greedy[i]) first_diff = i;
        greedy_same += first_diff < 0;
        printf("prompt %d: %d tokens, max |logit diff| %.4f, greedy ", p, fp->n, prompt_worst);
        if (first_diff < 0) {
            printf("identical\n");
        } else {
            /* how far apart llama.cpp itself put its pick and ours at the fork */
            float margin = INFINITY;
            for (int k = 0; k < fp->n_top[first_diff]; k++)
                if (fp->top[first_diff][k].id == mine[first_diff]) margin = fp->top[first_diff][0].logit - fp->top[first_diff][k].logit;
            fork_margin[n_forks++] = margin;
            printf("identical up to position %d, where llama.cpp's logits for its token and lumen's differ by %.3f\n", first_diff, margin);
        }
        /* the prompt and llama.cpp's continuation but its last token as one
         * prompt (past 64 tokens: the prefill GEMM where a weight takes it,
         * lm_matmul_prompt_gemm): the last position's logits */
        const int nl = fp->n + fp->n_greedy - 1, last = fp->n_greedy - 1;
        int32_t *seq = malloc((size_t)nl * sizeof *seq);
        memcpy(seq, fp->ids, (size_t)fp->n * sizeof *seq);
        memcpy(seq + fp->n, fp->greedy, (size_t)last * sizeof *seq);
        CHECK(lm_session_rewind(s, 0) == LM_OK && lm_session_eval(s, seq, nl) == LM_OK, "eval: %s", lm_last_error());
        const float *lg = lm_session_logits(s);
        float d_long = 0;
        for (int k = 0; k < fp->n_top[last]; k++) d_long = fmaxf(d_long, fabsf(lg[fp->top[last][k].id] - fp->top[last][k].logit));
        if (d_long > long_worst) long_worst = d_long;
        if (nl > longest) longest = nl;
        free(seq);
        lm_session_free(s);
        free(toks);
    }
    double rate = positions ? (double)top1 / positions : 0, self_rate = positions ? (double)self_top1 / positions : 0;
    int n = positions < 64 * 64 ? positions : 64 * 64;
    qsort(diffs, (size_t)n, sizeof *diffs, cmp_float);
    qsort(self_diffs, (size_t)n, sizeof *self_diffs, cmp_float);
    float med = n ? diffs[n / 2] : 0, self_med = n ? self_diffs[n / 2] : 0;
    printf("logits vs llama.cpp (batched prompt), over llama.cpp's top-20 at %d positions:\n", positions);
    printf("  lumen:                    top-1 equal %5.1f%%, |diff| median %.3f, max %.3f\n", 100 * rate, med, worst);
    printf("  llama.cpp, prompt 1 by 1: top-1 equal %5.1f%%, |diff| median %.3f, max %.3f\n", 100 * self_rate, self_med, self_worst);
    /* A continuation that forks where llama.cpp's own two candidates are closer than
     * its own noise (median) is a near-tie, not a disagreement. */
    int near_ties = 0;
    for (int i = 0; i < n_forks; i++) near_ties += fork_margin[i] <= self_med;
    printf("greedy: %d/%d continuations of 32 tokens identical; %d more fork at a near-tie (llama.cpp margin <= its noise %.3f)\n",
           greedy_same, fx->n_prompts, near_ties, self_med);
    CHECK(fx->n_prompts == 8, "expected 8 prompts, the fixture has %d", fx->n_prompts);
    CHECK(self_worst > 0, "the fixture has no 'alt' records (regenerate it with bench/make_fixtures.py)");
    CHECK(rate >= self_rate - 0.02, "top-1 agreement %.3f < llama.cpp's own %.3f - 0.02", rate, self_rate);
    CHECK(med <= fmaxf(0.25f, 1.5f * self_med), "median logit difference %.3f > max(0.25, 1.5 x %.3f)", med, self_med);
    CHECK(worst <= fmaxf(0.25f, 2.0f * self_worst), "max logit difference %.3f > max(0.25, 2 x %.3f)", worst, self_worst);
    printf("the sequences as one prompt (up to %d tokens): max |logit diff| at their last position %.3f\n", longest,
           long_worst);
    CHECK(long_worst <= fmaxf(0.25f, 2.0f * self_worst), "one-prompt max logit difference %.3f > max(0.25, 2 x %.3f)",
          long_worst, self_worst);
    CHECK(greedy_same + near_ties >= 6, "only %d/8 greedy continuations identical or forking at a near-tie", greedy_same + near_ties);
    free(diffs);
    free(self_diffs);
}

/* The default model, and Gemma 3 (the gemma3 architecture and a SentencePiece
 * vocabulary) checked the same way. */
static const struct { const char *fixture, *model; } CASES[] = {
    {"spec/fixtures/smollm2_q4_1.txt", "SmolLM2-135M-Instruct.Q4_1.gguf"},
    {"spec/fixtures/gemma3_q4_k_m.txt", "gemma-3-270m-q4_k_m.gguf"},
};

int main(void) {
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++) {
        printf("== %s\n", CASES[c].model);
        fixture *fx = fx_load(tu_path(CASES[c].fixture));
        CHECK(fx != NULL, "no fixture %s", CASES[c].fixture);
        lm_model *m = lm_model_load(model_path(CASES[c].model), NULL);
        CHECK(m != NULL, "model: %s (scripts/test.sh fetches it)", lm_last_error());
        if (fx && m) {
            check_tokenizer(m, fx);
            check_logits(m, fx);
        }
        lm_model_free(m);
        fx_free(fx);
    }
    return tu_finish("agreement");
}
