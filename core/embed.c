/* Embeddings: texts or token ids -> the encoder family's pass (arch.h encode),
 * in passes of at most EMBED_PASS_TOKENS tokens, with the model's pooling,
 * normalization and length limit unless the caller overrides them. */
#include "model.h"
#include "arch/arch.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

/* Tokens per encoder pass: enough for every GEMM to run at full speed, few
 * enough for the workspace (~20 MB for MiniLM) to stay in memory's cheap range. */
#define EMBED_PASS_TOKENS 4096

lm_embed_params lm_embed_default_params(void) {
    return (lm_embed_params){.pooling = -1, .normalize = -1, .max_tokens = 0, .truncate = true};
}

static lm_status resolve(const lm_model *m, const lm_embed_params *p, lm_embed_params *r) {
    if (!m) return lm_err("embed: model is NULL");
    if (!m->arch->encoder)
        return lm_err("embed: '%s' is a %s model, not an embedding model (encoder)", m->path, m->arch_name);
    lm_embed_params d = p ? *p : lm_embed_default_params();
    r->pooling = d.pooling < 0 ? m->embed.pooling : d.pooling;
    if (r->pooling != LM_POOLING_MEAN && r->pooling != LM_POOLING_CLS)
        return lm_err("embed: pooling %d is not one lumen does (1 mean, 2 cls)", d.pooling);
    r->normalize = d.normalize < 0 ? m->embed.normalize : d.normalize != 0;
    r->max_tokens = d.max_tokens <= 0 || d.max_tokens > m->embed.max_tokens ? m->embed.max_tokens : d.max_tokens;
    r->truncate = d.truncate;
    return LM_OK;
}

/* Sequences already within the limit, packed: passes of whole sequences. */
static lm_status run(lm_model *m, const int32_t *tokens, const int64_t *off, int32_t n, const lm_embed_params *how, float *out) {
    const int64_t E = m->hp.n_embd;
    int64_t *local = malloc(((size_t)n + 1) * sizeof *local);
    if (!local) return lm_err("out of memory");
    lm_status st = LM_OK;
    pthread_mutex_lock(&m->eval_mu);
    for (int32_t i = 0; i < n && st == LM_OK;) {
        int32_t k = 1;   /* one sequence always fits: it is at most max_tokens */
        while (i + k < n && off[i + k + 1] - off[i] <= EMBED_PASS_TOKENS) k++;
        for (int32_t j = 0; j <= k; j++) local[j] = off[i + j] - off[i];
        size_t need = m->arch->workspace(m, local[k]);
        if (need > m->embed_ws_size) {
            free(m->embed_ws);
            m->embed_ws = aligned_alloc(64, (need + 63) & ~(size_t)63);
            m->embed_ws_size = m->embed_ws ? need : 0;
            if (!m->embed_ws) { st = lm_err("embed: out of memory for a workspace of %zu bytes", need); break; }
        }
        st = m->arch->encode(m, tokens + off[i], local, k, how, out + (int64_t)i * E, m->embed_ws);
        i += k;
    }
    pthread_mutex_unlock(&m->eval_mu);
    free(local);
    return st;
}

lm_status lm_embed_tokens(lm_model *m, const int32_t *tokens, const int64_t *offsets, int32_t n,
                          const lm_embed_params *params, float *out) {
    lm_embed_params how;
    if (resolve(m, params, &how)) return LM_ERR;
    if (n < 0 || !offsets || (n && (!tokens || !out))) return lm_err("embed: bad arguments (n = %d)", n);
    if (n == 0) return LM_OK;
    if (offsets[0] != 0) return lm_err("embed: offsets[0] must be 0 (got %lld)", (long long)offsets[0]);
    bool cut = false;
    for (int32_t i = 0; i < n; i++) {
        const int64_t len = offsets[i + 1] - offsets[i];
        if (len < 1) return lm_err("embed: sequence %d is empty (offsets must increase)", i);
        if (len > how.max_tokens) {
            if (!how.truncate)
                return lm_err("embed: sequence %d has %lld tokens; the model takes at most %d", i, (long long)len, how.max_tokens);
            cut = true;
        }
        for (int64_t t = offsets[i]; t < offsets[i + 1]; t++)
            if (tokens[t] < 0 || tokens[t] >= m->hp.n_vocab)
                return lm_err("embed: token %d of sequence %d is outside the vocabulary [0, %d)", tokens[t], i, m->hp.n_vocab);
    }
    if (!cut) return run(m, tokens, offsets, n, &how, out);
    /* the first max_tokens - 1 tokens of a long sequence and its last ([SEP]) */
    int32_t *packed = malloc((size_t)offsets[n] * sizeof *packed);
    int64_t *off = malloc(((size_t)n + 1) * sizeof *off);
    lm_status st = packed && off ? LM_OK : lm_err("out of memory");
    if (off) off[0] = 0;
    for (int32_t i = 0; st == LM_OK && i < n; i++) {
        int64_t len = offsets[i + 1] - offsets[i], keep = len > how.max_tokens ? how.max_tokens : len;
        memcpy(packed + off[i], tokens + offsets[i], (size_t)(keep - 1) * sizeof *packed);
        packed[off[i] + keep - 1] = tokens[offsets[i + 1] - 1];
        off[i + 1] = off[i] + keep;
    }
    if (st == LM_OK) st = run(m, packed, off, n, &how, out);
    free(packed);
    free(off);
    return st;
}

lm_status lm_embed_texts(lm_model *m, const char *const *texts, const size_t *lens, int32_t n,
                         const lm_embed_params *params, float *out, int32_t *n_tokens) {
    lm_embed_params how;
    if (resolve(m, params, &how)) return LM_ERR;
    if (n < 0 || (n && (!texts || !lens || !out))) return lm_err("embed: bad arguments (n = %d)", n);
    int64_t *off = malloc(((size_t)n + 1) * sizeof *off);
    int32_t *toks = NULL;
    int64_t cap = 0;
    lm_status st = off ? LM_OK : lm_err("out of memory");
    if (off) off[0] = 0;
    for (int32_t i = 0; st == LM_OK && i < n; i++) {
        if (!texts[i] && lens[i]) { st = lm_err("embed: text %d is NULL", i); break; }
        for (;;) {
            int64_t got = lm_tokenize(m, texts[i] ? texts[i] : "", lens[i], toks ? toks + off[i] : NULL, cap - off[i], true, true);
            if (got == INT64_MIN) { st = lm_err_prefix("embed: text %d", i); break; }
            if (got >= 0) {
                if (got > how.max_tokens) {
                    if (!how.truncate) {
                        st = lm_err("embed: text %d has %lld tokens; the model takes at most %d", i, (long long)got, how.max_tokens);
                        break;
                    }
                    toks[off[i] + how.max_tokens - 1] = toks[off[i] + got - 1];   /* keep [SEP] */
                    got = how.max_tokens;
                }
                if (n_tokens) n_tokens[i] = (int32_t)got;
                off[i + 1] = off[i] + got;
                break;
            }
            int64_t want = off[i] - got + 1024;
            if (want < 2 * cap) want = 2 * cap;
            int32_t *nt = realloc(toks, (size_t)want * sizeof *nt);
            if (!nt) { st = lm_err("out of memory"); break; }
            toks = nt;
            cap = want;
        }
    }
    if (st == LM_OK && n) st = run(m, toks, off, n, &how, out);
    free(toks);
    free(off);
    return st;
}
