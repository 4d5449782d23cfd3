/* Grammars: GBNF errors with line:column, matching text, masks over the real
 * vocabulary against a token-by-token check, and the chain link. */
#include "testutil.h"
#include "lumen.h"
#include <stdlib.h>
#include <string.h>

static const char *ARITH =
    "# arithmetic\n"
    "root ::= expr\n"
    "expr ::= term ((\"+\" | \"-\") term)*\n"
    "term ::= factor ((\"*\" | \"/\") factor)*\n"
    "factor ::= num | \"(\" expr \")\"\n"
    "num ::= [0-9]+\n";

static const char *JSONG =
    "root   ::= object\n"
    "value  ::= object | array | string | number | (\"true\" | \"false\" | \"null\") ws\n"
    "object ::=\n"
    "  \"{\" ws (\n"
    "            string \":\" ws value\n"
    "    (\",\" ws string \":\" ws value)*\n"
    "  )? \"}\" ws\n"
    "array  ::=\n"
    "  \"[\" ws (\n"
    "            value\n"
    "    (\",\" ws value)*\n"
    "  )? \"]\" ws\n"
    "string ::=\n"
    "  \"\\\"\" (\n"
    "    [^\"\\\\\\x7F\\x00-\\x1F] |\n"
    "    \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})\n"
    "  )* \"\\\"\" ws\n"
    "number ::= (\"-\"? ([0-9] | [1-9] [0-9]{0,15})) (\".\" [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws\n"
    "ws ::= | \" \" | \"\\n\" [ \\t]{0,20}\n";

static lm_grammar *compile(const char *text) { return lm_grammar_new(text, strlen(text), NULL); }

static void check_error(const char *text, const char *want) {
    lm_grammar *g = compile(text);
    const char *msg = lm_last_error();
    CHECK(!g && strstr(msg, want), "grammar %.40s...: wanted an error with '%s', got %s", text, want, g ? "a grammar" : msg);
    lm_grammar_free(g);
}

/* 0: does not fit, 1: fits but incomplete, 2: complete */
static int match_text(lm_grammar *g, const char *s) {
    lm_matcher *m = lm_matcher_new(g, NULL);
    int r = 0;
    if (lm_matcher_accept_text(m, s, strlen(s)) == LM_OK) r = lm_matcher_status(m) == LM_GRAMMAR_OPEN ? 1 : 2;
    lm_matcher_free(m);
    return r;
}

static void errors(void) {
    check_error("root ::= \"a\" )\n", "grammar:1:14:");
    check_error("root ::= \"a\"\nfoo ::= bar\n", "grammar:2:9: undefined rule 'bar'");
    check_error("root ::= \"abc\n", "grammar:1:10: unterminated string");
    check_error("root ::= [a-z\n", "unterminated character class");
    check_error("root ::= [z-a]\n", "grammar:1:11: character range");
    check_error("root ::= []\n", "empty character class");
    check_error("root ::= \"\\q\"\n", "grammar:1:11: unknown escape");
    check_error("root = \"a\"\n", "grammar:1:6: expecting '::='");
    check_error("root ::= * \"a\"\n", "grammar:1:10: expecting an item before '*'");
    check_error("root ::= \"a\"{3,1}\n", "maximum is below the minimum");
    check_error("root ::= \"a\"{2\n", "expecting ',' or '}'");
    check_error("root ::= \"a\"\nroot ::= \"b\"\n", "grammar:2:1: rule 'root' is defined twice (first at 1:1)");
    check_error("start ::= \"a\"\n", "no rule named 'root'");
    check_error("root ::= expr\nexpr ::= expr \"+\" num | num\nnum ::= [0-9]+\n", "left recursion: rule 'expr'");
    check_error("root ::= a\na ::= b? a \"x\"\nb ::= \"y\"\n", "left recursion");
    check_error("root ::= (\"a\" | \"b\"\n", "expecting ')'");
    check_error("root ::= \"\xff\"\n", "invalid UTF-8");
    check_error("root ::= \"a\"{3000}\n", "repetition counts above");
    check_error("", "no rule named 'root'");
    const char *two = "root ::= \"a\" | b\nb ::= \"c\"\n";
    lm_grammar *g = lm_grammar_new(two, strlen(two), "b");
    CHECK(g && match_text(g, "c") == 2 && match_text(g, "a") == 0, "another start rule");
    lm_grammar_free(g);
}

static void text(void) {
    lm_grammar *g = compile(ARITH);
    CHECK(g, "arithmetic compiles: %s", lm_last_error());
    CHECK(match_text(g, "1+2*(3-4)/5") == 2, "arith complete");
    CHECK(match_text(g, "1+(2") == 1, "arith prefix");
    CHECK(match_text(g, "1+*2") == 0, "arith bad");
    lm_grammar_free(g);
    g = compile(JSONG);
    CHECK(g, "json compiles: %s", lm_last_error());
    CHECK(match_text(g, "{\"a\": [1, 2.5e3, \"x\\u00e9\"], \"b\": {\"c\": null}}") == 2, "json complete");
    CHECK(match_text(g, "{\"caf\xc3\xa9\": tr") == 1, "json prefix with UTF-8");
    CHECK(match_text(g, "{\"a\" 1}") == 0, "json bad");
    CHECK(match_text(g, "{\"a\":\"\x01\"}") == 0, "control char refused");
    lm_grammar_free(g);
    g = compile("root ::= [a-c]{2,3} \"!\"? x\nx ::= \"\" | \"\xe2\x82\xac\"+\n");
    CHECK(g && match_text(g, "ab") == 2 && match_text(g, "abc!\xe2\x82\xac\xe2\x82\xac") == 2 && match_text(g, "a") == 1
          && match_text(g, "abcd") == 0 && match_text(g, "ab\xe2\x82") == 1, "repetitions and UTF-8 partials");
    lm_grammar_free(g);
    g = compile("root ::= [^a-z]+ .\n");
    CHECK(g && match_text(g, "12\xf0\x9f\x98\x80z") == 2 && match_text(g, "a") == 0, "negated class and any");
    lm_grammar_free(g);
}

/* the mask against accepting each token alone from the same prefix */
static void mask_vs_tokens(lm_model *model, lm_token_trie *t, const char *gbnf, const char *prefix) {
    lm_grammar *g = compile(gbnf);
    lm_matcher *m = lm_matcher_new(g, t), *one = lm_matcher_new(g, t);
    CHECK(m && one && lm_matcher_accept_text(m, prefix, strlen(prefix)) == LM_OK, "prefix '%s' fits", prefix);
    int32_t n = 0;
    const uint32_t *bits = lm_matcher_allowed(m, &n);
    int32_t nv = lm_token_trie_n_vocab(t), bad = 0, count = 0;
    for (int32_t tok = 0; tok < nv; tok++) {
        lm_matcher_reset(one);
        lm_matcher_accept_text(one, prefix, strlen(prefix));
        bool want = lm_matcher_accept(one, tok) == LM_OK;
        char piece[64];
        int32_t len = lm_token_to_piece(model, tok, piece, sizeof piece, true);
        if (len == 0) want = false;
        bool got = bits[tok >> 5] >> (tok & 31) & 1;
        count += want;
        if (want != got && bad++ < 3) fprintf(stderr, "  token %d: mask %d, accept %d\n", tok, got, want);
    }
    fprintf(stderr, "  mask after %-20.20s %6d allowed\n", prefix, n);
    CHECK(bad == 0 && count == n, "mask after '%s': %d allowed, %d disagree with accepting alone (%d)", prefix, n, bad, count);
    lm_matcher_free(m); lm_matcher_free(one); lm_grammar_free(g);
}

static void with_model(void) {
    const char *dir = getenv("LUMEN_MODELS");
    char path[4096];
    snprintf(path, sizeof path, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", dir && *dir ? dir : tu_path("models"));
    lm_model *model = lm_model_load(path, NULL);
    if (!model) { fprintf(stderr, "(no model at %s: mask checks skipped)\n", path); return; }
    lm_token_trie *t = lm_token_trie_new(model);
    CHECK(t != NULL, "token trie: %s", lm_last_error());
    mask_vs_tokens(model, t, JSONG, "");
    mask_vs_tokens(model, t, JSONG, "{\"name\": \"caf");
    mask_vs_tokens(model, t, JSONG, "{\"a\": [1, 2");
    mask_vs_tokens(model, t, JSONG, "{\"a\": \"\xe2\x82");
    mask_vs_tokens(model, t, ARITH, "(12+");
    mask_vs_tokens(model, t, "root ::= [\xe0\xa0\x80-\xef\xbf\xbf]+ \"x\"\n", "");

    /* a chain: grammar first, then a draw; the output parses and ends where the grammar ends */
    lm_grammar *g = compile(ARITH);
    lm_sampler *s = lm_sampler_chain_new(3);
    lm_sampler_add_grammar(s, g, t);
    lm_sampler_add_top_k(s, 40);
    lm_sampler_add_temperature(s, 1.0f);
    lm_sampler_add_dist(s);
    lm_model_info info;
    lm_model_get_info(model, &info);
    float *logits = malloc((size_t)info.n_vocab * sizeof *logits);
    uint64_t r = 5;
    char out[4096] = "";
    size_t len = 0;
    lm_sampler_accept(s, 17); /* a prompt token before the first sample: not the grammar's */
    int steps = 0, eog = 0;
    for (; steps < 300; steps++) {
        for (int32_t i = 0; i < info.n_vocab; i++) logits[i] = tu_randf(&r, -3, 3);
        int32_t tok = lm_sampler_sample(s, logits, info.n_vocab);
        if (tok < 0) break;
        if (lm_token_is_eog(model, tok)) { eog = 1; break; }
        int32_t n = lm_token_to_piece(model, tok, out + len, (int32_t)(sizeof out - len - 1), true);
        if (n < 0) break;
        len += (size_t)n;
        lm_sampler_accept(s, tok);
        if (lm_matcher_status(lm_sampler_matcher(s)) == LM_GRAMMAR_COMPLETE) break;
    }
    out[len] = 0;
    CHECK(match_text(g, out) >= 1 && lm_matcher_status(lm_sampler_matcher(s)) != LM_GRAMMAR_FAILED,
          "sampled arithmetic fits: '%.60s' (%d steps, eog %d)", out, steps, eog);
    CHECK(eog ? match_text(g, out) == 2 : 1, "an end token only where the grammar may end");
    lm_sampler_reset(s, 3);
    CHECK(lm_matcher_status(lm_sampler_matcher(s)) == LM_GRAMMAR_OPEN, "reset restarts the grammar");
    /* a token that does not fit leaves the matcher failed, and only end tokens come */
    lm_sampler_sample(s, logits, info.n_vocab);
    lm_sampler_accept(s, lm_token_lookup(model, "abc") >= 0 ? lm_token_lookup(model, "abc") : 'a');
    CHECK(lm_matcher_status(lm_sampler_matcher(s)) == LM_GRAMMAR_FAILED, "a bad token fails the matcher");
    int32_t tok = lm_sampler_sample(s, logits, info.n_vocab);
    CHECK(tok >= 0 && lm_token_is_eog(model, tok), "after a failure only end tokens (%d)", tok);

    /* grammar + top-k: the k best allowed from testing the best tokens one by one
     * equal the whole mask then top-k (a link between them stops the shortcut) */
    {
        lm_grammar *gj = compile(JSONG);
        lm_sampler *fast = lm_sampler_chain_new(1), *full = lm_sampler_chain_new(1);
        lm_sampler_add_grammar(fast, gj, t); lm_sampler_add_top_k(fast, 40); lm_sampler_add_external(fast);
        lm_sampler_add_grammar(full, gj, t); lm_sampler_add_external(full); lm_sampler_add_top_k(full, 40); lm_sampler_add_external(full);
        const char *text = "{\"name\": \"a long string value";
        int same = 0, cases = 0;
        for (int rep = 0; rep < 30; rep++) {
            for (int32_t i = 0; i < info.n_vocab; i++) logits[i] = tu_randf(&r, -3, 3);
            lm_matcher_reset(lm_sampler_matcher(fast)); lm_matcher_reset(lm_sampler_matcher(full));
            size_t upto = (size_t)rep % strlen(text);
            lm_matcher_accept_text(lm_sampler_matcher(fast), text, upto);
            lm_matcher_accept_text(lm_sampler_matcher(full), text, upto);
            lm_candidates *a = lm_sampler_begin(fast, logits, info.n_vocab);
            lm_sampler_run(fast, 0);
            lm_candidates *b = lm_sampler_begin(full, logits, info.n_vocab);
            int32_t at = lm_sampler_run(full, 0);
            lm_sampler_run(full, at + 1);
            cases++;
            same += a->n == b->n && !memcmp(a->ids, b->ids, (size_t)a->n * sizeof *a->ids);
        }
        CHECK(same == cases, "top-k of the allowed by the shortcut equals mask then top-k (%d of %d)", same, cases);
        lm_sampler_free(fast); lm_sampler_free(full); lm_grammar_free(gj);
    }
    free(logits);
    lm_sampler_free(s);
    lm_grammar_free(g);

    /* forced: one allowed token is picked without a draw */
    g = compile("root ::= \"Hello\"\n");
    s = lm_sampler_chain_new(1);
    lm_sampler_add_grammar(s, g, t);
    lm_sampler_add_dist(s);
    float *flat = calloc((size_t)info.n_vocab, sizeof *flat);
    int32_t first = lm_sampler_sample(s, flat, info.n_vocab);
    char piece[32] = "";
    int32_t pn = lm_token_to_piece(model, first, piece, sizeof piece - 1, true);
    if (pn > 0) piece[pn] = 0;
    CHECK(first >= 0 && !strncmp("Hello", piece, strlen(piece)), "first token of a literal: '%s'", piece);
    free(flat);
    lm_sampler_free(s);
    lm_grammar_free(g);

    uint32_t bits[49152 / 32 + 1] = {0};
    int32_t marked = lm_token_trie_mark_prefixes(t, "Hello world", 11, bits);
    CHECK(marked >= 3 && (bits[lm_token_lookup(model, "Hello") >> 5] >> (lm_token_lookup(model, "Hello") & 31) & 1),
          "mark_prefixes marks 'H', 'He', 'Hello' (%d)", marked);
    lm_token_trie_free(t);
    lm_model_free(model);
}

/* mutated grammars and random text: an error message or a grammar, never a crash */
static const char PUNCT[] = "()[]{}\"|*+?:=-#\n ax0^.";
static const char TEXT_CHARS[] = "{}[]\",: 0123abc\\u\xc3\xa9";
static void robustness(void) {
    uint64_t r = 11;
    size_t n = strlen(JSONG);
    char *buf = malloc(n + 1);
    int compiled = 0, refused = 0, named = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, JSONG, n + 1);
        size_t len = n;
        int edits = 1 + (int)(tu_rand(&r) % 4);
        for (int e = 0; e < edits; e++) {
            if (len == 0) break;
            size_t at = (size_t)(tu_rand(&r) % len);
            switch (tu_rand(&r) % 3) {
            case 0: buf[at] = PUNCT[tu_rand(&r) % (sizeof PUNCT - 1)]; break;
            case 1: buf[at] = (char)(tu_rand(&r) & 0xff); break;
            default: len = at; break;
            }
        }
        lm_grammar *g = lm_grammar_new(buf, len, NULL);
        if (!g) { refused++; named += !strncmp(lm_last_error(), "grammar", 7); continue; }
        compiled++;
        lm_matcher *m = lm_matcher_new(g, NULL);
        char text[32];
        for (int k = 0; k < 32; k++) text[k] = TEXT_CHARS[tu_rand(&r) % (sizeof TEXT_CHARS - 1)];
        for (int k = 0; m && k < 32; k++) if (lm_matcher_accept_text(m, text + k, 1) != LM_OK) break;
        lm_matcher_status(m);
        lm_matcher_free(m);
        lm_grammar_free(g);
    }
    free(buf);
    CHECK(named == refused && compiled + refused == 3000, "3000 mutated grammars: %d compiled, %d refused with a message", compiled, refused);
    CHECK(!lm_grammar_new(NULL, 0, NULL) && !lm_matcher_new(NULL, NULL) && !lm_token_trie_new(NULL)
          && lm_sampler_add_grammar(NULL, NULL, NULL) == LM_ERR && !lm_sampler_matcher(NULL)
          && lm_matcher_status(NULL) == LM_GRAMMAR_FAILED && !lm_matcher_allowed(NULL, NULL), "NULL arguments are errors");
    lm_sampler *s = lm_sampler_chain_new(1);
    CHECK(lm_sampler_add_grammar(s, NULL, NULL) == LM_ERR && lm_sampler_n_links(s) == 0, "a chain refuses a NULL grammar");
    lm_sampler_free(s);
}

int main(void) {
    errors();
    robustness();
    text();
    with_model();
    return tu_finish("grammar");
}
