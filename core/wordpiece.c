/* WordPiece (see wordpiece.h). The rules follow tokenizers' BertNormalizer,
 * BertPreTokenizer and WordPiece model, so the ids match sentence-transformers'. */
#define _GNU_SOURCE
#include "wordpiece.h"
#include "tokenizer.h"
#include "error.h"
#include "unicode.h"
#include "weights.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>

#define MAX_WORD 256   /* the longest max_input_chars_per_word taken from a file */

struct lm_wordpiece {
    int32_t n;
    char *text;           /* every token's text (HF form: "##ing", "[CLS]"), NUL-separated */
    uint32_t *off, *len;  /* by id */
    int32_t *sorted;      /* ids ordered by text, for lookup by binary search */
    bool *special;        /* by id: [CLS], [SEP], [PAD], ... (matched in text with parse_special) */
    int32_t *specials;    /* their ids, for matching */
    int32_t n_specials;
    int32_t cls, sep, unk;
    bool lowercase, strip_accents, chinese, clean;
    int32_t max_chars;    /* longer words are [UNK] */
};

void lm_wordpiece_free(lm_wordpiece *w) {
    if (!w) return;
    free(w->text); free(w->off); free(w->len); free(w->sorted); free(w->special); free(w->specials);
    free(w);
}

int32_t lm_wordpiece_n_vocab(const lm_wordpiece *w) { return w->n; }
int32_t lm_wordpiece_cls(const lm_wordpiece *w) { return w->cls; }
int32_t lm_wordpiece_sep(const lm_wordpiece *w) { return w->sep; }

static int cmp_text(const char *a, size_t na, const char *b, size_t nb) {
    int c = memcmp(a, b, na < nb ? na : nb);
    return c ? c : (na > nb) - (na < nb);
}

static const lm_wordpiece *g_sort_w; /* qsort has no context argument; set only while building */
static int cmp_ids(const void *x, const void *y) {
    const lm_wordpiece *w = g_sort_w;
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    int c = cmp_text(w->text + w->off[a], w->len[a], w->text + w->off[b], w->len[b]);
    return c ? c : (a > b) - (a < b);   /* the lower id of duplicates first: it wins */
}

int32_t lm_wordpiece_lookup(const lm_wordpiece *w, const char *s, size_t n) {
    int32_t lo = 0, hi = w->n;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2, id = w->sorted[mid];
        if (cmp_text(w->text + w->off[id], w->len[id], s, n) < 0) lo = mid + 1; else hi = mid;
    }
    if (lo < w->n) {
        int32_t id = w->sorted[lo];
        if (!cmp_text(w->text + w->off[id], w->len[id], s, n)) return id;
    }
    return -1;
}

/* texts[i] of lens[i] bytes for ids 0..n-1 (NULL: no such id, never matched) */
static lm_wordpiece *build(int32_t n, const char *const *texts, const size_t *lens) {
    if (n < 1 || n > (1 << 24)) { lm_err("tokenizer: %d tokens is not a plausible vocabulary", n); return NULL; }
    lm_wordpiece *w = calloc(1, sizeof *w);
    if (!w) { lm_err("out of memory"); return NULL; }
    size_t bytes = 1;
    for (int32_t i = 0; i < n; i++) bytes += (texts[i] ? lens[i] : 0) + 1;
    w->n = n;
    w->text = malloc(bytes);
    w->off = calloc((size_t)n, sizeof *w->off);
    w->len = calloc((size_t)n, sizeof *w->len);
    w->sorted = malloc((size_t)n * sizeof *w->sorted);
    w->special = calloc((size_t)n, sizeof *w->special);
    if (!w->text || !w->off || !w->len || !w->sorted || !w->special || bytes > UINT32_MAX) {
        lm_wordpiece_free(w);
        lm_err("out of memory");
        return NULL;
    }
    uint32_t at = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t l = texts[i] ? lens[i] : 0;
        if (l) memcpy(w->text + at, texts[i], l);
        w->text[at + l] = 0;
        w->off[i] = at;
        w->len[i] = texts[i] ? (uint32_t)l : UINT32_MAX / 2; /* a gap: longer than any lookup */
        at += (uint32_t)l + 1;
        w->sorted[i] = i;
    }
    g_sort_w = w;
    qsort(w->sorted, (size_t)n, sizeof *w->sorted, cmp_ids);
    g_sort_w = NULL;
    for (int32_t i = 0; i < n; i++) if (!texts[i]) w->len[i] = 0;
    w->lowercase = w->strip_accents = w->chinese = w->clean = true;
    w->max_chars = 100;
    return w;
}

/* The ids of [CLS], [SEP], [UNK] by text where the file did not say. */
static lm_status find_specials(lm_wordpiece *w, const char *src) {
    if (w->cls < 0) w->cls = lm_wordpiece_lookup(w, "[CLS]", 5);
    if (w->sep < 0) w->sep = lm_wordpiece_lookup(w, "[SEP]", 5);
    if (w->unk < 0) w->unk = lm_wordpiece_lookup(w, "[UNK]", 5);
    if (w->cls < 0 || w->sep < 0 || w->unk < 0 || w->cls >= w->n || w->sep >= w->n || w->unk >= w->n)
        return lm_err("%s: the vocabulary lacks [CLS], [SEP] or [UNK]", src);
    w->special[w->cls] = w->special[w->sep] = w->special[w->unk] = true;
    w->specials = malloc((size_t)w->n * sizeof *w->specials);
    if (!w->specials) return lm_err("out of memory");
    for (int32_t id = 0; id < w->n; id++)
        if (w->special[id] && w->len[id]) w->specials[w->n_specials++] = id;
    return LM_OK;
}

/* ---- loading -------------------------------------------------------------------- */

static lm_wordpiece *from_vocab_txt(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    FILE *f = fopen(path, "rb");
    if (!f) { lm_err("%s: no tokenizer.json, and cannot open vocab.txt (%s)", dir, strerror(errno)); return NULL; }
    char **lines = NULL;
    size_t *lens = NULL, n = 0, cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t got;
    lm_wordpiece *w = NULL;
    while ((got = getline(&line, &lcap, f)) >= 0) {
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) got--;
        if (n == cap) {
            cap = cap ? 2 * cap : 32768;
            char **nl = realloc(lines, cap * sizeof *lines);
            size_t *nn = realloc(lens, cap * sizeof *lens);
            if (nl) lines = nl;
            if (nn) lens = nn;
            if (!nl || !nn) { lm_err("out of memory"); goto done; }
        }
        lines[n] = strndup(line, (size_t)got);
        lens[n] = (size_t)got;
        if (!lines[n]) { lm_err("out of memory"); goto done; }
        n++;
        if (n > (1u << 24)) { lm_err("%s: implausibly many lines", path); goto done; }
    }
    if (!n) { lm_err("%s: empty vocabulary", path); goto done; }
    w = build((int32_t)n, (const char *const *)lines, lens);
    if (w) {
        w->cls = w->sep = w->unk = -1;
        cJSON *cfg = lm_json_file(dir, "tokenizer_config.json", true);
        const cJSON *lc = cJSON_GetObjectItemCaseSensitive(cfg, "do_lower_case");
        if (cJSON_IsBool(lc)) w->lowercase = w->strip_accents = cJSON_IsTrue(lc);
        cJSON_Delete(cfg);
        if (find_specials(w, path)) { lm_wordpiece_free(w); w = NULL; }
    }
done:
    for (size_t i = 0; i < n; i++) free(lines[i]);
    free(lines); free(lens); free(line);
    fclose(f);
    return w;
}

static lm_wordpiece *from_tokenizer_json(const char *dir, cJSON *tj) {
    char src[4096];
    snprintf(src, sizeof src, "%s/tokenizer.json", dir);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(tj, "model");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "WordPiece") || !cJSON_IsObject(vocab)) {
        lm_err("%s: model.type is not \"WordPiece\" with a model.vocab object (lumen reads BERT tokenizers here)", src);
        return NULL;
    }
    int32_t n = 0;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= (1 << 24)) {
            lm_err("%s: model.vocab entry '%.40s' has no valid id", src, e->string ? e->string : "");
            return NULL;
        }
        if ((int32_t)e->valuedouble + 1 > n) n = (int32_t)e->valuedouble + 1;
    }
    if (!n) { lm_err("%s: model.vocab is empty", src); return NULL; }
    const char **texts = calloc((size_t)n, sizeof *texts);
    size_t *lens = calloc((size_t)n, sizeof *lens);
    lm_wordpiece *w = NULL;
    if (!texts || !lens) { lm_err("out of memory"); goto done; }
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int32_t id = (int32_t)e->valuedouble;
        if (!texts[id]) { texts[id] = e->string; lens[id] = strlen(e->string); }
    }
    w = build(n, texts, lens);
    if (!w) goto done;
    w->cls = w->sep = w->unk = -1;
    const cJSON *mc = cJSON_GetObjectItemCaseSensitive(model, "max_input_chars_per_word");
    if (cJSON_IsNumber(mc) && mc->valuedouble >= 1) w->max_chars = mc->valuedouble < MAX_WORD ? (int32_t)mc->valuedouble : MAX_WORD;
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (cJSON_IsString(unk)) w->unk = lm_wordpiece_lookup(w, unk->valuestring, strlen(unk->valuestring));
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(tj, "normalizer");
    const cJSON *nt = cJSON_GetObjectItemCaseSensitive(norm, "type");
    if (cJSON_IsString(nt) && !strcmp(nt->valuestring, "BertNormalizer")) {
        const cJSON *v;
        if (cJSON_IsBool(v = cJSON_GetObjectItemCaseSensitive(norm, "lowercase"))) w->lowercase = cJSON_IsTrue(v);
        if (cJSON_IsBool(v = cJSON_GetObjectItemCaseSensitive(norm, "clean_text"))) w->clean = cJSON_IsTrue(v);
        if (cJSON_IsBool(v = cJSON_GetObjectItemCaseSensitive(norm, "handle_chinese_chars"))) w->chinese = cJSON_IsTrue(v);
        v = cJSON_GetObjectItemCaseSensitive(norm, "strip_accents");
        w->strip_accents = cJSON_IsBool(v) ? cJSON_IsTrue(v) : w->lowercase; /* null: as lowercase */
    } else if (norm && !cJSON_IsNull(norm)) {
        lm_err("%s: normalizer '%s' is not supported (BertNormalizer is)", src, cJSON_IsString(nt) ? nt->valuestring : "?");
        lm_wordpiece_free(w);
        w = NULL;
        goto done;
    } else {
        w->lowercase = w->strip_accents = w->chinese = w->clean = false;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(tj, "added_tokens");
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id"), *sp = cJSON_GetObjectItemCaseSensitive(a, "special");
        if (cJSON_IsNumber(id) && id->valuedouble >= 0 && id->valuedouble < n && cJSON_IsTrue(sp))
            w->special[(int32_t)id->valuedouble] = true;
    }
    /* the post-processor's template names the tokens around a text */
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(tj, "post_processor");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(pp, "special_tokens");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(st, "[CLS]"), *s = cJSON_GetObjectItemCaseSensitive(st, "[SEP]");
    const cJSON *ci = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(c, "ids"), 0);
    const cJSON *si = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(s, "ids"), 0);
    if (cJSON_IsNumber(ci) && ci->valuedouble >= 0 && ci->valuedouble < n) w->cls = (int32_t)ci->valuedouble;
    if (cJSON_IsNumber(si) && si->valuedouble >= 0 && si->valuedouble < n) w->sep = (int32_t)si->valuedouble;
    if (find_specials(w, src)) { lm_wordpiece_free(w); w = NULL; }
done:
    free(texts); free(lens);
    return w;
}

lm_wordpiece *lm_wordpiece_from_hf(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (access(path, F_OK) != 0) return from_vocab_txt(dir);
    cJSON *tj = lm_json_file(dir, "tokenizer.json", false);
    if (!tj) return NULL;
    lm_wordpiece *w = from_tokenizer_json(dir, tj);
    cJSON_Delete(tj);
    return w;
}

static int32_t gguf_id(const lm_gguf *g, const char *key, int32_t n) {
    uint32_t v;
    if (!lm_gguf_find(g, key) || lm_gguf_get_u32(g, key, &v) || v >= (uint32_t)n) return -1;
    return (int32_t)v;
}

lm_wordpiece *lm_wordpiece_from_gguf(const lm_gguf *g) {
    const lm_gguf_str *toks;
    uint64_t n;
    if (lm_gguf_get_str_arr(g, "tokenizer.ggml.tokens", &toks, &n)) return NULL;
    if (n == 0 || n > (1u << 24)) { lm_err("%s: %llu tokens is not a plausible vocabulary", lm_gguf_name(g), (unsigned long long)n); return NULL; }
    int32_t *types = NULL;
    uint64_t nty = 0;
    if (lm_gguf_find(g, "tokenizer.ggml.token_type") && lm_gguf_get_arr_i32(g, "tokenizer.ggml.token_type", &types, &nty)) return NULL;
    /* back from llama.cpp's form: "\u2581word" starts a word, "piece" continues one, "[X]" is itself */
    char **texts = calloc(n, sizeof *texts);
    size_t *lens = calloc(n, sizeof *lens);
    lm_wordpiece *w = NULL;
    if (!texts || !lens) { lm_err("out of memory"); goto done; }
    for (uint64_t i = 0; i < n; i++) {
        const char *p = toks[i].ptr;
        size_t l = toks[i].len;
        texts[i] = malloc(l + 3);
        if (!texts[i]) { lm_err("out of memory"); goto done; }
        if (l >= 2 && p[0] == '[' && p[l - 1] == ']') { memcpy(texts[i], p, l); lens[i] = l; }
        else if (l >= 3 && !memcmp(p, "\xe2\x96\x81", 3)) { memcpy(texts[i], p + 3, l - 3); lens[i] = l - 3; }
        else { memcpy(texts[i], "##", 2); memcpy(texts[i] + 2, p, l); lens[i] = l + 2; }
    }
    w = build((int32_t)n, (const char *const *)texts, lens);
    if (!w) goto done;
    for (uint64_t i = 0; i < nty && i < n; i++) w->special[i] = types[i] == 3; /* control */
    w->cls = gguf_id(g, "tokenizer.ggml.bos_token_id", w->n);   /* llama.cpp's BERT: [CLS] is BOS */
    w->sep = gguf_id(g, "tokenizer.ggml.seperator_token_id", w->n);
    w->unk = gguf_id(g, "tokenizer.ggml.unknown_token_id", w->n);
    if (find_specials(w, lm_gguf_name(g))) { lm_wordpiece_free(w); w = NULL; }
done:
    if (texts) for (uint64_t i = 0; i < n; i++) free(texts[i]);
    free(texts); free(lens); free(types);
    return w;
}

/* ---- encoding ------------------------------------------------------------------- */

typedef struct { uint32_t *v; size_t n, cap; } cps;

static bool push_cp(cps *b, uint32_t c) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 256;
        uint32_t *v = realloc(b->v, cap * sizeof *v);
        if (!v) return false;
        b->v = v; b->cap = cap;
    }
    b->v[b->n++] = c;
    return true;
}

/* Rust's char::is_whitespace (the White_Space property) */
static bool is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static bool is_other(uint32_t c) {   /* categories Cc, Cf, Cs, Co, Cn */
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CS ||
           k == UTF8PROC_CATEGORY_CO || k == UTF8PROC_CATEGORY_CN;
}

static bool is_punct(uint32_t c) {
    if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO;
}

/* the ideograph blocks BERT splits into single characters (tokenizers' list) */
static bool is_cjk(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* BertNormalizer: text -> code points */
static bool normalize(const lm_wordpiece *w, const char *s, size_t n, cps *out) {
    for (size_t i = 0; i < n;) {
        uint32_t c = lm_utf8_decode(s, n, &i);
        if (w->clean) {
            if (c == 0 || c == 0xFFFD || (c != '\t' && c != '\n' && c != '\r' && is_other(c))) continue;
            if (is_ws(c)) c = ' ';
        }
        if (w->chinese && is_cjk(c)) {
            if (!push_cp(out, ' ') || !push_cp(out, c) || !push_cp(out, ' ')) return false;
            continue;
        }
        utf8proc_int32_t d[32];
        utf8proc_ssize_t nd = 1;
        d[0] = (utf8proc_int32_t)c;
        if (w->strip_accents) {
            int bound = 0;
            nd = utf8proc_decompose_char((utf8proc_int32_t)c, d, 32, UTF8PROC_DECOMPOSE, &bound);
            if (nd < 1 || nd > 32) { d[0] = (utf8proc_int32_t)c; nd = 1; }
        }
        for (utf8proc_ssize_t k = 0; k < nd; k++) {
            if (w->strip_accents && utf8proc_category(d[k]) == UTF8PROC_CATEGORY_MN) continue;
            uint32_t e = (uint32_t)(w->lowercase ? utf8proc_tolower(d[k]) : d[k]);
            if (!push_cp(out, e)) return false;
        }
    }
    return true;
}

/* One word (code points) into ids: longest match first, or [UNK]. */
static bool word_ids(const lm_wordpiece *w, const uint32_t *c, size_t n, lm_idbuf *out) {
    if (n > (size_t)w->max_chars) return lm_idbuf_push(out, w->unk);
    char buf[4 * MAX_WORD], cand[2 + 4 * MAX_WORD];
    size_t boff[MAX_WORD + 1];
    boff[0] = 0;
    for (size_t k = 0; k < n; k++) boff[k + 1] = boff[k] + (size_t)lm_utf8_encode(c[k], buf + boff[k]);
    memcpy(cand, "##", 2);
    int64_t mark = out->n;
    for (size_t start = 0; start < n;) {
        int32_t id = -1;
        size_t end = n;
        for (; end > start; end--) {
            size_t len = boff[end] - boff[start];
            if (start == 0) id = lm_wordpiece_lookup(w, buf, len);
            else { memcpy(cand + 2, buf + boff[start], len); id = lm_wordpiece_lookup(w, cand, len + 2); }
            if (id >= 0) break;
        }
        if (id < 0) { out->n = mark; return lm_idbuf_push(out, w->unk); }
        if (!lm_idbuf_push(out, id)) return false;
        start = end;
    }
    return true;
}

/* BertPreTokenizer: split at whitespace, punctuation characters alone */
static bool text_ids(const lm_wordpiece *w, const char *s, size_t n, lm_idbuf *out) {
    cps c = {0};
    bool ok = normalize(w, s, n, &c);
    size_t start = 0;
    for (size_t i = 0; ok && i <= c.n; i++) {
        bool end = i == c.n || is_ws(c.v[i]), punct = !end && is_punct(c.v[i]);
        if (!end && !punct) continue;
        if (i > start) ok = word_ids(w, c.v + start, i - start, out);
        if (ok && punct) ok = word_ids(w, c.v + i, 1, out);
        start = i + 1;
    }
    free(c.v);
    return ok;
}

/* The special token whose text starts at s[0..n), longest first; -1 if none. */
static int32_t special_at(const lm_wordpiece *w, const char *s, size_t n, size_t *len) {
    int32_t best = -1;
    for (int32_t k = 0; k < w->n_specials; k++) {
        const int32_t id = w->specials[k];
        if (w->len[id] > n || (best >= 0 && w->len[id] <= *len)) continue;
        if (!memcmp(s, w->text + w->off[id], w->len[id])) { best = id; *len = w->len[id]; }
    }
    return best;
}

int64_t lm_wordpiece_encode(const lm_wordpiece *w, const char *text, size_t len, int32_t *out, int64_t cap,
                            bool add_special, bool parse_special) {
    if (!w || (!text && len) || cap < 0) { lm_err("tokenize: bad arguments"); return INT64_MIN; }
    lm_idbuf b = {0};
    bool ok = !add_special || lm_idbuf_push(&b, w->cls);
    size_t from = 0;
    for (size_t i = 0; ok && i <= len; i++) {
        size_t sl = 0;
        int32_t sp = -1;
        /* special tokens of BERT vocabularies look like "[SEP]": only a '[' can start one */
        if (i < len && parse_special && text[i] == '[') sp = special_at(w, text + i, len - i, &sl);
        if (i < len && sp < 0) continue;
        if (i > from) ok = text_ids(w, text + from, i - from, &b);
        if (ok && sp >= 0) { ok = lm_idbuf_push(&b, sp); i += sl - 1; }
        from = i + 1;
    }
    if (ok && add_special) ok = lm_idbuf_push(&b, w->sep);
    return lm_idbuf_finish(&b, ok, out, cap);
}

/* ---- pieces and decoding ---------------------------------------------------------- */

static bool piece_text(const lm_wordpiece *w, int32_t id, bool render_special, const char **p, size_t *n, bool *cont) {
    *p = w->text + w->off[id];
    *n = w->len[id];
    *cont = *n >= 2 && !memcmp(*p, "##", 2);
    if (*cont) { *p += 2; *n -= 2; }
    return !w->special[id] || render_special;
}

int32_t lm_wordpiece_piece(const lm_wordpiece *w, int32_t tok, char *buf, int32_t cap, bool render_special) {
    if (tok < 0 || tok >= w->n) { lm_err("token id %d is outside the vocabulary [0, %d)", tok, w->n); return INT32_MIN; }
    const char *p;
    size_t n;
    bool cont;
    if (!piece_text(w, tok, render_special, &p, &n, &cont)) n = 0;
    if ((int64_t)n > cap) return -(int32_t)n;
    if (n) memcpy(buf, p, n);
    return (int32_t)n;
}

int64_t lm_wordpiece_decode(const lm_wordpiece *w, const int32_t *toks, int64_t n, char *buf, int64_t cap,
                            bool render_special) {
    if ((!toks && n) || n < 0) { lm_err("detokenize: bad arguments"); return INT64_MIN; }
    int64_t len = 0;
    for (int64_t i = 0; i < n; i++) {
        if (toks[i] < 0 || toks[i] >= w->n) {
            lm_err("detokenize: token %d at index %lld is outside the vocabulary", toks[i], (long long)i);
            return INT64_MIN;
        }
        const char *p;
        size_t pn;
        bool cont;
        if (!piece_text(w, toks[i], render_special, &p, &pn, &cont)) continue;
        if (len && !cont) { if (len < cap) buf[len] = ' '; len++; }
        if (len + (int64_t)pn <= cap) memcpy(buf + len, p, pn);
        len += (int64_t)pn;
    }
    return len > cap ? -len : len;
}
