/* Agreement with llama.cpp (the reference implementation of GGUF) on the default
 * model, against fixtures recorded by bench/make_fixtures.py:
 *  - tokenization identical, and decode(encode(x)) == x;
 *  - teacher-forced on llama.cpp's own sequence: top-1 equal at >= 98% of positions
 *    and max |logit difference| over llama.cpp's top-20 <= 0.25 everywhere;
 *  - free-running 32-token greedy continuations identical on >= 6 of 8 prompts. */
#include "testutil.h"
#include "fixture.h"
#include "lumen.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *model_path(void) {
    const char *env = getenv("LUMEN_MODEL");
    if (env && *env) return env;
    return tu_path("models/SmolLM2-135M-Instruct.Q4_1.gguf");
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

static void check_logits(lm_model *m, fixture *fx) {
    lm_model_info info;
    lm_model_get_info(m, &info);
    int positions = 0, top1 = 0, greedy_same = 0;
    float worst = 0;
    for (int p = 0; p < fx->n_prompts; p++) {
        fx_prompt *fp = &fx->prompts[p];
        int32_t n_tok = 0;
        int32_t *toks = malloc(((size_t)fp->n + 64) * sizeof *toks);
        int64_t n = lm_tokenize(m, fp->text, fp->len, toks, fp->n + 64, false, fp->special);
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
            positions++;
            top1 += best == fp->top[pos][0].id;
            for (int k = 0; k < fp->n_top[pos]; k++) {
                float d = fabsf(lg[fp->top[pos][k].id] - fp->top[pos][k].logit);
                if (d > prompt_worst) prompt_worst = d;
            }
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
        printf("prompt %d: %d tokens, max |logit diff| %.4f, greedy %s", p, fp->n, prompt_worst,
               first_diff < 0 ? "identical\n" : "differs from position ");
        if (first_diff >= 0) printf("%d\n", first_diff);
        lm_session_free(s);
        free(toks);
    }
    double rate = positions ? (double)top1 / positions : 0;
    printf("logits: top-1 agrees at %d/%d positions (%.1f%%), max |logit diff| over llama.cpp's top-20: %.4f\n",
           top1, positions, 100 * rate, worst);
    printf("greedy: %d/%d continuations of 32 tokens identical\n", greedy_same, fx->n_prompts);
    CHECK(fx->n_prompts == 8, "expected 8 prompts, the fixture has %d", fx->n_prompts);
    CHECK(rate >= 0.98, "top-1 agreement %.3f < 0.98", rate);
    CHECK(worst <= 0.25f, "max logit difference %.4f > 0.25", worst);
    CHECK(greedy_same >= 6, "only %d/8 greedy continuations identical", greedy_same);
}

int main(void) {
    fixture *fx = fx_load(tu_path("spec/fixtures/smollm2_q4_1.txt"));
    CHECK(fx != NULL, "no fixture");
    lm_model *m = lm_model_load(model_path(), NULL);
    CHECK(m != NULL, "model: %s (run scripts/setup.sh to fetch it)", lm_last_error());
    if (fx && m) {
        check_tokenizer(m, fx);
        check_logits(m, fx);
    }
    lm_model_free(m);
    fx_free(fx);
    return tu_finish("agreement");
}
