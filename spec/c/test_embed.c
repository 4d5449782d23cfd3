/* all-MiniLM-L6-v2 against a reference that is not lumen (spec/fixtures/
 * minilm_embed.txt: Hugging Face tokenizers + a NumPy transcription of the
 * model, bench/embed/make_fixture.py), loaded both ways lumen reads it: the
 * Hugging Face directory as shipped (scripts/fetch_model.py minilm) and the
 * GGUF written from it (minilm-gguf). Every text of spec/fixtures/
 * embed_corpus.txt must get the reference's token ids (after truncation at
 * the model's 256 tokens) and an embedding with cosine >= 0.9999 to the
 * reference's, all 250 texts embedded in one call; a text embedded alone must
 * give what it gets in the batch. */
#include "testutil.h"
#include "lumen.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct { int32_t *ids; int n; float *emb; } fx_row;

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    if (b) b[n] = 0;
    *len = (size_t)n;
    return b;
}

/* "ids ..." and "emb ..." lines after the header; returns the rows (n_texts of them). */
static fx_row *load_fixture(const char *path, int *n_texts, int *dim) {
    size_t len;
    char *s = read_all(path, &len);
    if (!s) return NULL;
    fx_row *rows = NULL;
    int r = -1;
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        if (!strncmp(line, "texts ", 6)) {
            sscanf(line, "texts %d dim %d", n_texts, dim);
            rows = calloc((size_t)*n_texts, sizeof *rows);
        } else if (rows && !strncmp(line, "ids ", 4) && r + 1 < *n_texts) {
            fx_row *w = &rows[++r];
            w->ids = malloc(strlen(line) * sizeof *w->ids);
            for (char *p = line + 4, *e; *p; p = e) {
                long v = strtol(p, &e, 10);
                if (e == p) break;
                w->ids[w->n++] = (int32_t)v;
            }
        } else if (rows && r >= 0 && !strncmp(line, "emb ", 4)) {
            rows[r].emb = malloc((size_t)*dim * sizeof(float));
            char *p = line + 4;
            for (int i = 0; i < *dim; i++) rows[r].emb[i] = strtof(p, &p);
        }
    }
    free(s);
    return rows;
}

static double cosine(const float *a, const float *b, int n) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) { ab += (double)a[i] * b[i]; aa += (double)a[i] * a[i]; bb += (double)b[i] * b[i]; }
    return ab / sqrt(aa * bb);
}

static const char *model_path(const char *file) {
    static char buf[4096];
    const char *dir = getenv("LUMEN_MODELS");
    if (dir && *dir) snprintf(buf, sizeof buf, "%s/%s", dir, file);
    else snprintf(buf, sizeof buf, "%s%s", tu_path("models/"), file);
    return buf;
}

static void check_model(const char *file, char **texts, size_t *lens, int n, const fx_row *fx, int dim) {
    printf("== %s\n", file);
    lm_model *m = lm_model_load(model_path(file), NULL);
    CHECK(m != NULL, "model: %s (scripts/test.sh fetches it)", lm_last_error());
    if (!m) return;
    lm_model_info info;
    lm_model_get_info(m, &info);
    CHECK(info.encoder && info.n_embd == dim && info.max_tokens == 256 && info.pooling == LM_POOLING_MEAN && info.normalize,
          "info: encoder %d, dim %d, max_tokens %d, pooling %d, normalize %d", info.encoder, info.n_embd, info.max_tokens,
          info.pooling, info.normalize);

    /* token ids: the tokenizer, then the truncation lm_embed_texts applies */
    int same_ids = 0;
    int32_t *ids = malloc(1 << 20);
    for (int i = 0; i < n; i++) {
        int64_t k = lm_tokenize(m, texts[i], lens[i], ids, (1 << 20) / 4, true, true);
        if (k > info.max_tokens) { ids[info.max_tokens - 1] = ids[k - 1]; k = info.max_tokens; }
        bool same = k == fx[i].n && !memcmp(ids, fx[i].ids, (size_t)k * sizeof *ids);
        same_ids += same;
        CHECK(same, "text %d: %lld tokens, the reference %d (first differing at %d)", i, (long long)k, fx[i].n,
              ({ int d = 0; while (d < k && d < fx[i].n && ids[d] == fx[i].ids[d]) d++; d; }));
    }
    free(ids);

    float *out = malloc((size_t)n * dim * sizeof(float));
    int32_t *ntok = malloc((size_t)n * sizeof *ntok);
    lm_status st = lm_embed_texts(m, (const char *const *)texts, lens, n, NULL, out, ntok);
    CHECK(st == LM_OK, "embed: %s", lm_last_error());
    double min_cos = 1;
    int worst = -1;
    for (int i = 0; st == LM_OK && i < n; i++) {
        double c = cosine(out + (size_t)i * dim, fx[i].emb, dim);
        if (c < min_cos) { min_cos = c; worst = i; }
        CHECK(c >= 0.9999, "text %d: cosine %.7f to the reference", i, c);
        CHECK(ntok[i] == fx[i].n, "text %d: %d tokens counted, the reference %d", i, ntok[i], fx[i].n);
    }
    printf("%s: %d of %d texts with the reference's token ids; min cosine %.9f (text %d)\n", file, same_ids, n, min_cos, worst);

    /* alone as in the batch: the pass does not mix texts */
    float one[1024];
    const int probe[] = {0, 97, n - 1};
    for (size_t p = 0; p < sizeof probe / sizeof *probe && st == LM_OK; p++) {
        int i = probe[p];
        CHECK(lm_embed_texts(m, (const char *const *)&texts[i], &lens[i], 1, NULL, one, NULL) == LM_OK, "%s", lm_last_error());
        double c = cosine(one, out + (size_t)i * dim, dim);
        CHECK(c > 0.999999, "text %d alone: cosine %.8f to its row of the batch", i, c);
    }

    /* the limit: refused with a message naming it, or cut */
    lm_embed_params p = lm_embed_default_params();
    p.truncate = false;
    const char *lng = texts[n - 4];
    size_t ll = strlen(lng);
    CHECK(lm_embed_texts(m, &lng, &ll, 1, &p, one, NULL) == LM_ERR && strstr(lm_last_error(), "at most 256"),
          "a long text without truncation: %s", lm_last_error());
    p = lm_embed_default_params();
    p.max_tokens = 8;
    int32_t cnt = 0;
    CHECK(lm_embed_texts(m, &lng, &ll, 1, &p, one, &cnt) == LM_OK && cnt == 8, "max_tokens 8: %d tokens", cnt);
    /* token ids in, and CLS pooling without normalization */
    int64_t off[2] = {0, fx[0].n};
    p = lm_embed_default_params();
    CHECK(lm_embed_tokens(m, fx[0].ids, off, 1, &p, one) == LM_OK && cosine(one, out, dim) > 0.999999,
          "from token ids: %s", lm_last_error());
    p.pooling = LM_POOLING_CLS;
    p.normalize = 0;
    CHECK(lm_embed_tokens(m, fx[0].ids, off, 1, &p, one) == LM_OK, "cls: %s", lm_last_error());
    double norm = 0;
    for (int i = 0; i < dim; i++) norm += (double)one[i] * one[i];
    CHECK(fabs(sqrt(norm) - 1) > 1e-3, "cls pooling without normalization has norm %.6f", sqrt(norm));
    int32_t bad = 999999;
    int64_t off1[2] = {0, 1};
    CHECK(lm_embed_tokens(m, &bad, off1, 1, NULL, one) == LM_ERR && strstr(lm_last_error(), "vocabulary"), "bad id: %s", lm_last_error());
    CHECK(lm_session_new(m, NULL) == NULL && strstr(lm_last_error(), "encoder"), "session on an encoder: %s", lm_last_error());
    free(out);
    free(ntok);
    lm_model_free(m);
}

int main(void) {
    int n = 0, dim = 0;
    fx_row *fx = load_fixture(tu_path("spec/fixtures/minilm_embed.txt"), &n, &dim);
    size_t clen;
    char *corpus = read_all(tu_path("spec/fixtures/embed_corpus.txt"), &clen);
    CHECK(fx && corpus && n >= 200 && dim > 0 && dim <= 1024, "fixture: %d texts of %d dims", n, dim);
    if (!fx || !corpus) return tu_finish("embed");
    char **texts = calloc((size_t)n, sizeof *texts);
    size_t *lens = calloc((size_t)n, sizeof *lens);
    int k = 0;
    for (char *p = corpus; k < n && *p; k++) {   /* one text a line; a text may hold '\r' */
        char *e = strchr(p, '\n');
        if (!e) break;
        *e = 0;
        texts[k] = p;
        lens[k] = (size_t)(e - p);
        p = e + 1;
    }
    CHECK(k == n, "the corpus has %d lines, the fixture %d texts", k, n);
    if (k == n) {
        check_model("all-MiniLM-L6-v2", texts, lens, n, fx, dim);
        check_model("all-MiniLM-L6-v2.f32.gguf", texts, lens, n, fx, dim);
    }
    for (int i = 0; i < n; i++) { free(fx[i].ids); free(fx[i].emb); }
    free(fx); free(texts); free(lens); free(corpus);
    return tu_finish("embed");
}
