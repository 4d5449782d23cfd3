/* lumen's allowed-token sets against llama.cpp's grammar sampler, at every step
 * of 20 strings for each grammar in spec/fixtures/grammars/ (recorded by
 * bench/grammar_reference.py into spec/fixtures/grammar_equivalence.txt).
 *
 * The two disagree on which tokens end generation: llama.cpp also counts
 * SmolLM2's "<reponame>" (a fill-in-the-middle token), lumen's tokenizer does
 * not. A grammar allows an end token only where it may end, and any other token
 * by its text, so the comparison gives such a token llama.cpp's treatment: it
 * is allowed exactly where lumen allows its own end tokens. Every other token
 * is compared as lumen decides it. */
#include "testutil.h"
#include "lumen.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    *len = fread(s, 1, (size_t)n, f);
    s[*len] = 0;
    fclose(f);
    return s;
}

int main(void) {
    const char *dir = getenv("LUMEN_MODELS");
    char path[4096];
    snprintf(path, sizeof path, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", dir && *dir ? dir : tu_path("models"));
    lm_model *model = lm_model_load(path, NULL);
    CHECK(model != NULL, "model: %s", lm_last_error());
    if (!model) return tu_finish("grammar_equiv");
    lm_token_trie *t = lm_token_trie_new(model);
    FILE *fx = fopen(tu_path("spec/fixtures/grammar_equivalence.txt"), "r");
    CHECK(fx != NULL, "fixture spec/fixtures/grammar_equivalence.txt");
    if (!fx) return tu_finish("grammar_equiv");
    char line[512], name[256] = "";
    lm_grammar *g = NULL;
    lm_matcher *m = NULL;
    int steps = 0, same = 0, strings = 0, grammars = 0, reported = 0, string_no = 0;
    bool live = false;
    int32_t nv = lm_token_trie_n_vocab(t);
    bool *their_eog = calloc((size_t)nv, sizeof *their_eog);
    uint32_t *mine = malloc((size_t)(nv + 31) / 32 * sizeof *mine);
    while (fgets(line, sizeof line, fx)) {
        if (line[0] == '#') continue;
        if (!strncmp(line, "eog", 3)) {
            char *p = line + 3, *end;
            for (long id = strtol(p, &end, 10); end != p; p = end, id = strtol(p, &end, 10))
                if (id >= 0 && id < nv) their_eog[id] = true;
            continue;
        }
        if (!strncmp(line, "grammar ", 8)) {
            if (grammars) fprintf(stderr, "  %-18s %d strings\n", name, string_no);
            lm_matcher_free(m); lm_grammar_free(g);
            m = NULL; g = NULL;
            sscanf(line + 8, "%255s", name);
            char rel[400];
            snprintf(rel, sizeof rel, "spec/fixtures/grammars/%s", name);
            size_t len;
            char *text = slurp(tu_path(rel), &len);
            g = text ? lm_grammar_new(text, len, NULL) : NULL;
            free(text);
            CHECK(g != NULL, "%s compiles: %s", name, lm_last_error());
            m = g ? lm_matcher_new(g, t) : NULL;
            grammars++;
            string_no = 0;
        } else if (!strncmp(line, "string ", 7)) {
            if (m) lm_matcher_reset(m);
            live = m != NULL;
            strings++;
            string_no++;
        } else if (!strncmp(line, "step ", 5) && live) {
            int n_want, tok;
            unsigned long long h_want;
            if (sscanf(line + 5, "%d %llx %d", &n_want, &h_want, &tok) != 3) { CHECK(0, "bad fixture line %s", line); continue; }
            int32_t n = 0;
            const uint32_t *bits = lm_matcher_allowed(m, &n);
            if (!bits) { CHECK(0, "allowed: %s", lm_last_error()); break; }
            memcpy(mine, bits, (size_t)(nv + 31) / 32 * sizeof *mine);
            bool end_ok = false;
            for (int32_t id = 0; id < nv; id++)
                if (lm_token_is_eog(model, id) && (mine[id >> 5] >> (id & 31) & 1)) end_ok = true;
            for (int32_t id = 0; id < nv; id++) {
                if (!their_eog[id] || lm_token_is_eog(model, id)) continue; /* (the converse occurs nowhere here) */
                bool was = mine[id >> 5] >> (id & 31) & 1, now = their_eog[id] && end_ok;
                if (was != now) { mine[id >> 5] ^= 1u << (id & 31); n += now ? 1 : -1; }
            }
            uint64_t h = 0;
            for (int32_t w = 0; w < (nv + 31) / 32; w++)
                for (uint32_t b = mine[w]; b; b &= b - 1) h += splitmix((uint64_t)(w * 32 + __builtin_ctz(b)));
            steps++;
            if (n == n_want && h == h_want) same++;
            else if (reported++ < 5) fprintf(stderr, "  %s string %d step: lumen %d tokens, llama.cpp %d\n", name, string_no, n, n_want);
            if (tok >= 0 && lm_matcher_accept(m, tok) != LM_OK) {
                CHECK(0, "%s string %d: token %d not accepted: %s", name, string_no, tok, lm_last_error());
                live = false;
            }
        }
    }
    if (grammars) fprintf(stderr, "  %-18s %d strings\n", name, string_no);
    fclose(fx);
    CHECK(grammars >= 10 && strings >= 200 && same == steps,
          "allowed sets equal to llama.cpp's at %d of %d steps (%d grammars, %d strings)", same, steps, grammars, strings);
    fprintf(stderr, "  equal at %d of %d steps, %d grammars, %d strings\n", same, steps, grammars, strings);
    free(their_eog); free(mine);
    lm_matcher_free(m); lm_grammar_free(g);
    lm_token_trie_free(t);
    lm_model_free(model);
    return tu_finish("grammar_equiv");
}
