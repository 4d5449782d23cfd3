/* Tokenizers from GGUF metadata, following llama.cpp's rules so the ids match:
 *  - byte-level BPE (tokenizer.ggml.model "gpt2"): special-token partition, the
 *    pre-tokenizer named by tokenizer.ggml.pre, bytes mapped to GPT-2's printable
 *    code points, merges applied by rank (lowest first, leftmost on ties);
 *  - SentencePiece (tokenizer.ggml.model "llama"): spaces to U+2581, bigrams
 *    merged by vocabulary score (highest first), unknown pieces resegmented
 *    along their merges, then to <0xXX> byte tokens. */
#define _GNU_SOURCE
#include "tokenizer.h"
#include "error.h"
#include "unicode.h"
#include "wordpiece.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { T_NORMAL = 1, T_UNKNOWN = 2, T_CONTROL = 3, T_USER = 4, T_UNUSED = 5, T_BYTE = 6 };
typedef enum { PRE_GPT2, PRE_SMOLLM, PRE_LLAMA3, PRE_QWEN2 } pre_kind;

/* Keys live in one arena (the vocabulary's or the merges' text); a slot holds
 * their offset, which keeps a 262k-token vocabulary's index small. */
typedef struct { uint32_t off, len; int32_t val; } hslot;
typedef struct { hslot *slots; uint32_t cap; const char *base; } hmap;

typedef struct { uint32_t off, len; float score; int32_t type; } vtoken;
#define TEXT(t, v) ((t)->text + (v)->off)

struct lm_tokenizer {
    lm_wordpiece *wp;    /* BERT's WordPiece (wordpiece.c): every call goes there */
    bool spm;
    pre_kind pre;
    bool ignore_merges, add_bos, add_eos, add_space_prefix;
    int32_t n, bos, eos, eot, unk;
    vtoken *tok;
    char *text;          /* every token's text, back to back */
    hmap vocab;          /* text -> id */
    hmap merges;         /* "left right" -> rank */
    char *merge_text;    /* storage of merge keys */
    int32_t *special;    /* ids of control/user/unknown tokens, longest text first */
    int32_t n_special;
    bool *eog;
    char byte_enc[256][3];   /* byte -> UTF-8 of its printable stand-in (1-2 bytes + len in [2]) */
    int16_t byte_dec[512];   /* stand-in code point -> byte, -1 if none */
    int32_t byte_tok[256];   /* SPM: id of <0xXX>, or -1 */
};

/* ---- hash map over byte strings (open addressing, FNV-1a) ---------------------- */

static uint32_t fnv(const char *s, uint32_t n) {
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static bool hmap_init(hmap *m, uint32_t n, const char *base) {
    uint32_t cap = 16;
    while (cap < n + n / 2) cap <<= 1;
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots) return false;
    for (uint32_t i = 0; i < cap; i++) m->slots[i].val = -1;
    m->cap = cap;
    m->base = base;
    return true;
}

/* key: base[off, off+n) */
static void hmap_put(hmap *m, uint32_t off, uint32_t n, int32_t v) {
    const char *s = m->base + off;
    uint32_t i = fnv(s, n) & (m->cap - 1);
    while (m->slots[i].val >= 0) {
        if (m->slots[i].len == n && !memcmp(m->base + m->slots[i].off, s, n)) return; /* first wins */
        i = (i + 1) & (m->cap - 1);
    }
    m->slots[i] = (hslot){off, n, v};
}

static int32_t hmap_get(const hmap *m, const char *s, uint32_t n) {
    if (!m->cap) return -1;
    uint32_t i = fnv(s, n) & (m->cap - 1);
    while (m->slots[i].val >= 0) {
        if (m->slots[i].len == n && !memcmp(m->base + m->slots[i].off, s, n)) return m->slots[i].val;
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

/* ---- growable outputs ------------------------------------------------------------------ */

bool lm_idbuf_push(lm_idbuf *b, int32_t id) {
    if (b->n == b->cap) {
        int64_t cap = b->cap ? b->cap * 2 : 64;
        int32_t *p = realloc(b->ids, (size_t)cap * sizeof *p);
        if (!p) return false;
        b->ids = p;
        b->cap = cap;
    }
    b->ids[b->n++] = id;
    return true;
}

typedef struct { char *s; size_t n, cap; } sbuf;
static bool push_bytes(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) return false;
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    return true;
}

/* ---- loading ---------------------------------------------------------------------------- */

static int32_t opt_id(const lm_gguf *g, const char *key, int32_t n) {
    uint32_t v;
    if (!lm_gguf_find(g, key) || lm_gguf_get_u32(g, key, &v) || v >= (uint32_t)n) return -1;
    return (int32_t)v;
}

static bool opt_bool(const lm_gguf *g, const char *key, bool def) {
    bool v;
    if (!lm_gguf_find(g, key) || lm_gguf_get_bool(g, key, &v)) return def;
    return v;
}

static void init_byte_maps(lm_tokenizer *t) {
    /* GPT-2's map: printable Latin-1 bytes stand for themselves, the rest for 256+k */
    int k = 0;
    for (int i = 0; i < 512; i++) t->byte_dec[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        uint32_t cp = printable ? (uint32_t)b : 256u + (uint32_t)k++;
        t->byte_enc[b][2] = (char)lm_utf8_encode(cp, t->byte_enc[b]);
        t->byte_dec[cp] = (int16_t)b;
    }
}

static int cmp_special(const void *a, const void *b, void *ctx) {
    const lm_tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->tok[x].len != t->tok[y].len) return t->tok[x].len > t->tok[y].len ? -1 : 1;
    return x - y;
}

void lm_tokenizer_free(lm_tokenizer *t) {
    if (!t) return;
    lm_wordpiece_free(t->wp);
    free(t->tok);
    free(t->text);
    free(t->vocab.slots);
    free(t->merges.slots);
    free(t->merge_text);
    free(t->special);
    free(t->eog);
    free(t);
}

lm_tokenizer *lm_tokenizer_from_gguf(const lm_gguf *g) {
    lm_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { lm_err("out of memory"); return NULL; }
    lm_gguf_str model, pre = {"default", 7};
    const lm_gguf_str *toks;
    uint64_t n;
    if (lm_gguf_get_str(g, "tokenizer.ggml.model", &model) ||
        lm_gguf_get_str_arr(g, "tokenizer.ggml.tokens", &toks, &n))
        goto fail;
    if (n == 0 || n > (1u << 24)) { lm_err("tokenizer: %llu tokens is not a plausible vocabulary", (unsigned long long)n); goto fail; }
    if (lm_gguf_str_eq(model, "bert")) {
        t->wp = lm_wordpiece_from_gguf(g);
        if (!t->wp) goto fail;
        return t;
    }
    if (lm_gguf_str_eq(model, "llama")) t->spm = true;
    else if (!lm_gguf_str_eq(model, "gpt2")) {
        lm_err("tokenizer model '%.*s' is not supported (supported: gpt2 byte-level BPE, llama SentencePiece, bert WordPiece)", (int)model.len, model.ptr);
        goto fail;
    }
    t->n = (int32_t)n;
    size_t text_bytes = 0;
    for (uint64_t i = 0; i < n; i++) text_bytes += toks[i].len + 1;
    if (text_bytes > UINT32_MAX) { lm_err("tokenizer: the vocabulary's text is too large"); goto fail; }
    t->tok = calloc(n, sizeof *t->tok);
    t->eog = calloc(n, sizeof *t->eog);
    t->text = malloc(text_bytes);
    if (!t->tok || !t->eog || !t->text || !hmap_init(&t->vocab, (uint32_t)n, t->text)) { lm_err("out of memory"); goto fail; }
    float *scores = NULL;
    int32_t *types = NULL;
    uint64_t ns = 0, nty = 0;
    if (lm_gguf_find(g, "tokenizer.ggml.scores") && lm_gguf_get_arr_f32(g, "tokenizer.ggml.scores", &scores, &ns)) goto fail;
    if (lm_gguf_find(g, "tokenizer.ggml.token_type") && lm_gguf_get_arr_i32(g, "tokenizer.ggml.token_type", &types, &nty)) { free(scores); goto fail; }
    uint32_t at = 0;
    for (uint64_t i = 0; i < n; i++) {
        vtoken *v = &t->tok[i];
        memcpy(t->text + at, toks[i].ptr, toks[i].len);
        t->text[at + toks[i].len] = 0;
        v->off = at;
        v->len = (uint32_t)toks[i].len;
        v->score = i < ns ? scores[i] : 0.0f;
        v->type = i < nty ? types[i] : T_NORMAL;
        hmap_put(&t->vocab, at, v->len, (int32_t)i);
        at += v->len + 1;
    }
    free(scores);
    free(types);

    t->bos = opt_id(g, "tokenizer.ggml.bos_token_id", t->n);
    t->eos = opt_id(g, "tokenizer.ggml.eos_token_id", t->n);
    t->eot = opt_id(g, "tokenizer.ggml.eot_token_id", t->n);
    t->unk = opt_id(g, "tokenizer.ggml.unknown_token_id", t->n);
    t->add_bos = opt_bool(g, "tokenizer.ggml.add_bos_token", t->spm);
    t->add_eos = opt_bool(g, "tokenizer.ggml.add_eos_token", false);
    t->add_space_prefix = opt_bool(g, "tokenizer.ggml.add_space_prefix", t->spm);

    if (!t->spm) {
        init_byte_maps(t);
        const lm_gguf_kv *pk = lm_gguf_find(g, "tokenizer.ggml.pre");
        if (pk && pk->type == LM_GGUF_STRING) pre = pk->strs[0];
        static const char *smollm[] = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva", NULL};
        static const char *llama3[] = {"llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe", "pixtral", NULL};
        static const char *qwen2[] = {"qwen2", "deepseek-r1-qwen", "megrez", "hunyuan", NULL};
        static const char *gpt2[] = {"default", "gpt2", "gpt-2", "olmo", "jais", "phi-2", "stablelm2", "mpt", NULL};
        bool found = false;
        for (int i = 0; !found && smollm[i]; i++) if (lm_gguf_str_eq(pre, smollm[i])) t->pre = PRE_SMOLLM, found = true;
        for (int i = 0; !found && llama3[i]; i++) if (lm_gguf_str_eq(pre, llama3[i])) t->pre = PRE_LLAMA3, t->ignore_merges = true, found = true;
        for (int i = 0; !found && qwen2[i]; i++) if (lm_gguf_str_eq(pre, qwen2[i])) t->pre = PRE_QWEN2, found = true;
        for (int i = 0; !found && gpt2[i]; i++) if (lm_gguf_str_eq(pre, gpt2[i])) t->pre = PRE_GPT2, found = true;
        if (!found) { lm_err("tokenizer: pre-tokenizer '%.*s' is not supported", (int)pre.len, pre.ptr); goto fail; }

        const lm_gguf_str *mg;
        uint64_t nm;
        if (lm_gguf_get_str_arr(g, "tokenizer.ggml.merges", &mg, &nm)) goto fail;
        size_t total = 0;
        for (uint64_t i = 0; i < nm; i++) total += mg[i].len + 1;
        if (total > UINT32_MAX) { lm_err("tokenizer: the merges' text is too large"); goto fail; }
        t->merge_text = malloc(total ? total : 1);
        if (!t->merge_text || !hmap_init(&t->merges, (uint32_t)nm, t->merge_text)) { lm_err("out of memory"); goto fail; }
        uint32_t p = 0;
        for (uint64_t i = 0; i < nm; i++) {
            memcpy(t->merge_text + p, mg[i].ptr, mg[i].len);
            hmap_put(&t->merges, p, (uint32_t)mg[i].len, (int32_t)i);
            p += (uint32_t)mg[i].len + 1;
        }
    } else {
        for (int b = 0; b < 256; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            t->byte_tok[b] = hmap_get(&t->vocab, name, 6);
        }
    }

    /* End of generation: eos, eot, and the end-of-turn tokens llama.cpp recognizes by text
     * (llama-vocab.cpp, 0.3.36). As there, such a token is a control token whatever the file
     * says: a user-defined one would be cut out of plain text (Gemma 3's "</s>"), where
     * llama.cpp keeps it as text unless special tokens are parsed. Also as there, "</s>"
     * stays a normal token where the vocabulary has gemma4's or plamo's own end marker. */
    static const char *eog_text[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
                                     "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>",
                                     "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
                                     "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                                     "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>", "[e~[", NULL};
    bool s_is_normal = hmap_get(&t->vocab, "<|tool_response>", 16) >= 0 || hmap_get(&t->vocab, "<|plamo:eos|>", 13) >= 0;
    if (t->eos >= 0) t->eog[t->eos] = true;
    if (t->eot >= 0) t->eog[t->eot] = true;
    for (int i = 0; eog_text[i]; i++) {
        if (s_is_normal && !strcmp(eog_text[i], "</s>")) continue;
        int32_t id = hmap_get(&t->vocab, eog_text[i], (uint32_t)strlen(eog_text[i]));
        if (id < 0) continue;
        t->eog[id] = true;
        if (t->tok[id].type != T_UNUSED) t->tok[id].type = T_CONTROL;
    }

    /* special tokens for the partition: control, user-defined and unknown, longest first */
    t->special = malloc(n * sizeof *t->special);
    if (!t->special) { lm_err("out of memory"); goto fail; }
    for (int32_t i = 0; i < t->n; i++) {
        int ty = t->tok[i].type;
        if ((ty == T_CONTROL || ty == T_USER || ty == T_UNKNOWN) && t->tok[i].len > 0) t->special[t->n_special++] = i;
    }
    qsort_r(t->special, (size_t)t->n_special, sizeof *t->special, cmp_special, t);
    int32_t *fit = realloc(t->special, (size_t)(t->n_special ? t->n_special : 1) * sizeof *t->special);
    if (fit) t->special = fit;

    return t;
fail:
    lm_err_prefix("tokenizer");
    lm_tokenizer_free(t);
    return NULL;
}

lm_tokenizer *lm_tokenizer_from_hf(const char *dir) {
    lm_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { lm_err("out of memory"); return NULL; }
    t->wp = lm_wordpiece_from_hf(dir);
    if (!t->wp) { free(t); return NULL; }
    return t;
}

/* WordPiece: [CLS] and [SEP] stand where BOS and EOS would */
int32_t lm_tokenizer_n_vocab(const lm_tokenizer *t) { return t->wp ? lm_wordpiece_n_vocab(t->wp) : t->n; }
int32_t lm_tokenizer_bos(const lm_tokenizer *t) { return t->wp ? lm_wordpiece_cls(t->wp) : t->bos; }
int32_t lm_tokenizer_eos(const lm_tokenizer *t) { return t->wp ? lm_wordpiece_sep(t->wp) : t->eos; }
bool lm_tokenizer_is_eog(const lm_tokenizer *t, int32_t id) { return !t->wp && id >= 0 && id < t->n && t->eog[id]; }
int32_t lm_tokenizer_lookup(const lm_tokenizer *t, const char *s, size_t n) {
    return t->wp ? lm_wordpiece_lookup(t->wp, s, n) : hmap_get(&t->vocab, s, (uint32_t)n);
}

/* ---- pre-tokenization (code point offsets of words) ------------------------------------ */

typedef struct { uint32_t *cp; size_t n; } cps;

static unsigned flags_at(const cps *c, size_t lo, size_t hi, size_t i) {
    return i >= lo && i < hi ? lm_unicode_flags(c->cp[i]) : 0;
}
static uint32_t cp_at(const cps *c, size_t lo, size_t hi, size_t i) {
    return i >= lo && i < hi ? c->cp[i] : 0xFFFFFFFFu;
}

typedef struct { size_t *end; size_t n, cap; } cuts;
static bool cut(cuts *w, size_t *prev, size_t end) {
    if (end > *prev) {
        if (w->n == w->cap) {
            size_t cap = w->cap ? w->cap * 2 : 64;
            size_t *p = realloc(w->end, cap * sizeof *p);
            if (!p) return false;
            w->end = p;
            w->cap = cap;
        }
        w->end[w->n++] = end;
    }
    *prev = end;
    return true;
}

#define IS_L(f) ((f) & LM_U_LETTER)
#define IS_N(f) ((f) & LM_U_NUMBER)
#define IS_WS(f) ((f) & LM_U_WHITESPACE)

static bool contraction(const cps *c, size_t lo, size_t hi, size_t pos, bool fold, size_t *len) {
    if (cp_at(c, lo, hi, pos) != '\'' || pos + 1 >= hi) return false;
    uint32_t a = cp_at(c, lo, hi, pos + 1), b = pos + 2 < hi ? cp_at(c, lo, hi, pos + 2) : 0;
    if (fold) { a = lm_unicode_tolower(a); b = lm_unicode_tolower(b); }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') { *len = 2; return true; }
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) { *len = 3; return true; }
    return false;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static bool split_gpt2(const cps *c, size_t lo, size_t hi, cuts *w) {
    size_t prev = lo, len;
    for (size_t pos = lo; pos < hi;) {
        uint32_t cp = c->cp[pos];
        unsigned f = flags_at(c, lo, hi, pos);
        if (contraction(c, lo, hi, pos, false, &len)) { pos += len; if (!cut(w, &prev, pos)) return false; continue; }
        unsigned f2 = cp == ' ' ? flags_at(c, lo, hi, pos + 1) : f;
        if (IS_L(f2) || IS_N(f2) || (!(IS_WS(f2) | IS_L(f2) | IS_N(f2)) && f2)) {
            unsigned kind = IS_L(f2) ? LM_U_LETTER : IS_N(f2) ? LM_U_NUMBER : 0;
            pos += cp == ' ';
            for (;;) {
                unsigned g = flags_at(c, lo, hi, pos);
                bool more = kind ? (g & kind) != 0 : (!(IS_WS(g) | IS_L(g) | IS_N(g)) && g);
                if (!more) break;
                pos++;
            }
            if (!cut(w, &prev, pos)) return false;
            continue;
        }
        size_t nws = 0;
        while (IS_WS(flags_at(c, lo, hi, pos + nws))) nws++;
        if (nws > 1 && cp_at(c, lo, hi, pos + nws) != 0xFFFFFFFFu) pos += nws - 1;
        else if (nws > 0) pos += nws;
        else pos++;
        if (!cut(w, &prev, pos)) return false;
    }
    return true;
}

/* llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * qwen2: the same with \p{N} (digits one by one): group = 1. */
static bool split_llama3(const cps *c, size_t lo, size_t hi, cuts *w, int group) {
    size_t prev = lo, len;
    for (size_t pos = lo; pos < hi;) {
        uint32_t cp = c->cp[pos];
        unsigned f = flags_at(c, lo, hi, pos);
        if (contraction(c, lo, hi, pos, true, &len)) { pos += len; if (!cut(w, &prev, pos)) return false; continue; }
        if (!(cp == '\r' || cp == '\n' || IS_N(f)) && (IS_L(f) || IS_L(flags_at(c, lo, hi, pos + 1)))) {
            pos++;
            while (IS_L(flags_at(c, lo, hi, pos))) pos++;
            if (!cut(w, &prev, pos)) return false;
            continue;
        }
        if (IS_N(f)) {
            size_t ini = pos;
            while (IS_N(flags_at(c, lo, hi, pos))) {
                if ((int)(++pos - ini) >= group) { if (!cut(w, &prev, pos)) return false; ini = pos; }
            }
            if (!cut(w, &prev, pos)) return false;
            continue;
        }
        unsigned f2 = cp == ' ' ? flags_at(c, lo, hi, pos + 1) : f;
        if (!(IS_WS(f2) | IS_L(f2) | IS_N(f2)) && f2) {
            pos += cp == ' ';
            while (!(IS_WS(f2) | IS_L(f2) | IS_N(f2)) && f2) f2 = flags_at(c, lo, hi, ++pos);
            uint32_t c2 = cp_at(c, lo, hi, pos);
            while (c2 == '\r' || c2 == '\n') c2 = cp_at(c, lo, hi, ++pos);
            if (!cut(w, &prev, pos)) return false;
            continue;
        }
        size_t nws = 0, last_nl = 0;
        while (IS_WS(flags_at(c, lo, hi, pos + nws))) {
            uint32_t c2 = cp_at(c, lo, hi, pos + nws);
            if (c2 == '\r' || c2 == '\n') last_nl = pos + nws + 1;
            nws++;
        }
        if (last_nl > 0) pos = last_nl;
        else if (nws > 1 && cp_at(c, lo, hi, pos + nws) != 0xFFFFFFFFu) pos += nws - 1;
        else if (nws > 0) pos += nws;
        else pos++;
        if (!cut(w, &prev, pos)) return false;
    }
    return true;
}

static bool pretokenize(const lm_tokenizer *t, const cps *c, cuts *w) {
    switch (t->pre) {
    case PRE_LLAMA3: return split_llama3(c, 0, c->n, w, 3);
    case PRE_QWEN2: return split_llama3(c, 0, c->n, w, 1);
    case PRE_GPT2: return split_gpt2(c, 0, c->n, w);
    case PRE_SMOLLM: {
        /* first \p{N}: every number code point stands alone; then GPT-2's rules per piece */
        size_t lo = 0;
        for (size_t i = 0; i <= c->n; i++) {
            if (i == c->n || IS_N(lm_unicode_flags(c->cp[i]))) {
                if (i > lo && !split_gpt2(c, lo, i, w)) return false;
                if (i < c->n) { size_t prev = i; if (!cut(w, &prev, i + 1)) return false; }
                lo = i + 1;
            }
        }
        return true;
    }
    }
    return false;
}

/* ---- BPE merges ---------------------------------------------------------------------- */

typedef struct { int32_t prev, next; uint32_t start, len; } sym;
typedef struct { int32_t rank; int32_t left; uint32_t len; } bigram;
typedef struct { bigram *a; size_t n, cap; } heap;

static bool bg_less(bigram x, bigram y) { return x.rank < y.rank || (x.rank == y.rank && x.left < y.left); }
static bool heap_push(heap *h, bigram b) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        bigram *p = realloc(h->a, cap * sizeof *p);
        if (!p) return false;
        h->a = p;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && bg_less(b, h->a[(i - 1) / 2])) { h->a[i] = h->a[(i - 1) / 2]; i = (i - 1) / 2; }
    h->a[i] = b;
    return true;
}
static bigram heap_pop(heap *h) {
    bigram top = h->a[0], last = h->a[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        bigram best = last;
        if (l < h->n && bg_less(h->a[l], best)) { m = l; best = h->a[l]; }
        if (r < h->n && bg_less(h->a[r], best)) m = r;
        if (m == i) break;
        h->a[i] = h->a[m];
        i = m;
    }
    if (h->n) h->a[i] = last;
    return top;
}

typedef struct { sym *s; size_t cap; heap h; sbuf key; } bpe_scratch;

static bool bpe_rank(const lm_tokenizer *t, bpe_scratch *sc, const char *w, const sym *a, const sym *b, int32_t *rank) {
    sc->key.n = 0;
    if (!push_bytes(&sc->key, w + a->start, a->len) || !push_bytes(&sc->key, " ", 1) || !push_bytes(&sc->key, w + b->start, b->len)) return false;
    *rank = hmap_get(&t->merges, sc->key.s, (uint32_t)sc->key.n);
    return true;
}

/* word: the byte-level encoded text of one pre-token. */
static bool bpe_word(const lm_tokenizer *t, bpe_scratch *sc, const char *w, size_t n, lm_idbuf *out) {
    if (t->ignore_merges) {
        int32_t id = hmap_get(&t->vocab, w, (uint32_t)n);
        if (id >= 0) return lm_idbuf_push(out, id);
    }
    size_t ns = 0;
    if (sc->cap < n) {
        sym *p = realloc(sc->s, n * sizeof *p);
        if (!p) return false;
        sc->s = p;
        sc->cap = n;
    }
    for (size_t i = 0; i < n;) {
        size_t j = i;
        lm_utf8_decode(w, n, &j);
        sc->s[ns] = (sym){(int32_t)ns - 1, (int32_t)ns + 1, (uint32_t)i, (uint32_t)(j - i)};
        ns++;
        i = j;
    }
    sc->s[ns - 1].next = -1;
    sc->h.n = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        int32_t r;
        if (!bpe_rank(t, sc, w, &sc->s[i], &sc->s[i + 1], &r)) return false;
        if (r >= 0 && !heap_push(&sc->h, (bigram){r, (int32_t)i, sc->s[i].len + sc->s[i + 1].len})) return false;
    }
    while (sc->h.n) {
        bigram b = heap_pop(&sc->h);
        sym *l = &sc->s[b.left];
        if (l->len == 0 || l->next < 0) continue;
        sym *r = &sc->s[l->next];
        if (l->len + r->len != b.len) continue; /* outdated */
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) sc->s[r->next].prev = b.left;
        int32_t rank;
        if (l->prev >= 0) {
            sym *p = &sc->s[l->prev];
            if (!bpe_rank(t, sc, w, p, l, &rank)) return false;
            if (rank >= 0 && !heap_push(&sc->h, (bigram){rank, l->prev, p->len + l->len})) return false;
        }
        if (l->next >= 0) {
            sym *nx = &sc->s[l->next];
            if (!bpe_rank(t, sc, w, l, nx, &rank)) return false;
            if (rank >= 0 && !heap_push(&sc->h, (bigram){rank, b.left, l->len + nx->len})) return false;
        }
    }
    for (int32_t i = 0; i >= 0; i = sc->s[i].next) {
        const sym *s = &sc->s[i];
        if (!s->len) continue;
        int32_t id = hmap_get(&t->vocab, w + s->start, s->len);
        if (id >= 0) { if (!lm_idbuf_push(out, id)) return false; continue; }
        /* not in the vocabulary: one token per byte stand-in */
        for (uint32_t k = 0; k < s->len;) {
            size_t j = s->start + k;
            lm_utf8_decode(w, s->start + s->len, &j);
            int32_t bid = hmap_get(&t->vocab, w + s->start + k, (uint32_t)(j - s->start - k));
            if (bid >= 0 && !lm_idbuf_push(out, bid)) return false;
            k = (uint32_t)(j - s->start);
        }
    }
    return true;
}

static bool bpe_fragment(const lm_tokenizer *t, const char *text, size_t len, lm_idbuf *out) {
    cps c = {malloc((len + 1) * sizeof(uint32_t)), 0};
    cuts w = {0};
    sbuf word = {0};
    bpe_scratch sc = {0};
    bool ok = c.cp != NULL;
    for (size_t i = 0; ok && i < len;) c.cp[c.n++] = lm_utf8_decode(text, len, &i);
    ok = ok && pretokenize(t, &c, &w);
    size_t start = 0;
    for (size_t k = 0; ok && k < w.n; k++) {
        word.n = 0;
        for (size_t i = start; ok && i < w.end[k]; i++) {
            char u[4];
            int nb = lm_utf8_encode(c.cp[i], u);
            for (int b = 0; ok && b < nb; b++) {
                const char *e = t->byte_enc[(unsigned char)u[b]];
                ok = push_bytes(&word, e, (size_t)e[2]);
            }
        }
        ok = ok && bpe_word(t, &sc, word.s, word.n, out);
        start = w.end[k];
    }
    free(c.cp); free(w.end); free(word.s); free(sc.s); free(sc.h.a); free(sc.key.s);
    return ok;
}

/* ---- SentencePiece ------------------------------------------------------------------- */

typedef struct { float score; int32_t left; uint32_t len; } spm_bigram;

static bool spm_resegment(const lm_tokenizer *t, const char *s, uint32_t n, lm_idbuf *out, int depth) {
    int32_t id = hmap_get(&t->vocab, s, n);
    if (id >= 0) return lm_idbuf_push(out, id);
    /* split where a merge could have joined two vocabulary pieces (first such split) */
    if (depth < 64) {
        for (uint32_t k = 1; k < n; k++) {
            if ((s[k] & 0xC0) == 0x80) continue;
            if (hmap_get(&t->vocab, s, k) >= 0 && hmap_get(&t->vocab, s + k, n - k) >= 0)
                return spm_resegment(t, s, k, out, depth + 1) && spm_resegment(t, s + k, n - k, out, depth + 1);
        }
    }
    for (uint32_t k = 0; k < n; k++) {
        int32_t b = t->byte_tok[(unsigned char)s[k]];
        if (b < 0) b = t->unk;
        if (b >= 0 && !lm_idbuf_push(out, b)) return false;
    }
    return true;
}

static bool spm_fragment(const lm_tokenizer *t, const char *text, size_t len, bool prefix, lm_idbuf *out) {
    sbuf s = {0};
    bool ok = true;
    if (prefix) ok = push_bytes(&s, "\xe2\x96\x81", 3);
    for (size_t i = 0; ok && i < len; i++)
        ok = text[i] == ' ' ? push_bytes(&s, "\xe2\x96\x81", 3) : push_bytes(&s, text + i, 1);
    if (!ok || s.n == 0) { free(s.s); return ok; }
    size_t ns = 0;
    sym *sy = malloc(s.n * sizeof *sy);
    spm_bigram *q = NULL;
    size_t nq = 0, cq = 0;
    if (!sy) { free(s.s); return false; }
    for (size_t i = 0; i < s.n;) {
        size_t j = i;
        lm_utf8_decode(s.s, s.n, &j);
        sy[ns] = (sym){(int32_t)ns - 1, (int32_t)ns + 1, (uint32_t)i, (uint32_t)(j - i)};
        ns++;
        i = j;
    }
    sy[ns - 1].next = -1;
#define SPM_TRY(L, R) do { \
        uint32_t ln = sy[L].len + sy[R].len; \
        int32_t id = hmap_get(&t->vocab, s.s + sy[L].start, ln); \
        if (id >= 0) { \
            if (nq == cq) { cq = cq ? cq * 2 : 64; spm_bigram *p = realloc(q, cq * sizeof *p); if (!p) { ok = false; break; } q = p; } \
            q[nq++] = (spm_bigram){t->tok[id].score, (L), ln}; \
        } } while (0)
    for (size_t i = 0; ok && i + 1 < ns; i++) SPM_TRY((int32_t)i, (int32_t)i + 1);
    while (ok && nq) {
        /* highest score first, leftmost on ties (a linear scan: SPM inputs are short) */
        size_t best = 0;
        for (size_t k = 1; k < nq; k++)
            if (q[k].score > q[best].score || (q[k].score == q[best].score && q[k].left < q[best].left)) best = k;
        spm_bigram b = q[best];
        q[best] = q[--nq];
        sym *l = &sy[b.left];
        if (l->len == 0 || l->next < 0 || l->len + sy[l->next].len != b.len) continue;
        sym *r = &sy[l->next];
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) sy[r->next].prev = b.left;
        if (l->prev >= 0) SPM_TRY(l->prev, b.left);
        if (ok && l->next >= 0) SPM_TRY(b.left, l->next);
    }
#undef SPM_TRY
    for (int32_t i = 0; ok && i >= 0; i = sy[i].next)
        if (sy[i].len) ok = spm_resegment(t, s.s + sy[i].start, sy[i].len, out, 0);
    free(sy); free(q); free(s.s);
    return ok;
}

/* ---- encode / decode ------------------------------------------------------------------ */

typedef struct { size_t start, len; int32_t id; } frag; /* id < 0: raw text */

/* Splits the text on special tokens as llama.cpp does: each special token in turn,
 * longest first, is cut out of every raw fragment that still contains it. */
static frag *partition(const lm_tokenizer *t, const char *text, size_t len, bool parse_special, size_t *nf) {
    size_t n = 1, cap = 16;
    frag *f = malloc(cap * sizeof *f);
    if (!f) return NULL;
    f[0] = (frag){0, len, -1};
    for (int32_t k = 0; k < t->n_special; k++) {
        const vtoken *v = &t->tok[t->special[k]];
        if (!parse_special && v->type != T_USER) continue;
        for (size_t i = 0; i < n; i++) {
            if (f[i].id >= 0 || f[i].len < v->len) continue;
            const char *hit = memmem(text + f[i].start, f[i].len, TEXT(t, v), v->len);
            if (!hit) continue;
            if (n + 2 > cap) {
                cap *= 2;
                frag *p = realloc(f, cap * sizeof *f);
                if (!p) { free(f); return NULL; }
                f = p;
            }
            size_t at = (size_t)(hit - text), end = f[i].start + f[i].len;
            frag before = {f[i].start, at - f[i].start, -1}, tok = {at, v->len, t->special[k]},
                 after = {at + v->len, end - at - v->len, -1};
            /* replace f[i] by [before?] tok [after?]; `after` is searched again by this loop */
            size_t add = (before.len > 0) + 1 + (after.len > 0);
            memmove(f + i + add, f + i + 1, (n - i - 1) * sizeof *f);
            size_t j = i;
            if (before.len) f[j++] = before;
            f[j++] = tok;
            if (after.len) f[j++] = after;
            n += add - 1;
            i = j - 1 - (after.len > 0); /* continue with `after` (the loop's i++) */
        }
    }
    *nf = n;
    return f;
}

int64_t lm_tokenizer_encode(const lm_tokenizer *t, const char *text, size_t len, int32_t *out, int64_t cap,
                            bool add_special, bool parse_special) {
    if (!t || (!text && len)) { lm_err("tokenize: bad arguments"); return INT64_MIN; }
    if (cap < 0) { lm_err("tokenize: negative capacity"); return INT64_MIN; }
    if (t->wp) return lm_wordpiece_encode(t->wp, text, len, out, cap, add_special, parse_special);
    lm_idbuf ids = {0};
    bool ok = true;
    if (add_special && t->add_bos && t->bos >= 0) ok = lm_idbuf_push(&ids, t->bos);
    size_t nf = 0;
    frag *f = len ? partition(t, text, len, parse_special, &nf) : NULL;
    if (len && !f) ok = false;
    bool prev_special = true; /* SPM: a raw fragment at the start or after a special token gets the space prefix */
    char *clean = NULL;       /* a raw fragment without its LM_SPECIAL_BREAK bytes */
    for (size_t i = 0; ok && i < nf; i++) {
        if (f[i].id >= 0) { ok = lm_idbuf_push(&ids, f[i].id); prev_special = true; continue; }
        const char *s = text + f[i].start;
        size_t n = f[i].len;
        if (parse_special && memchr(s, LM_SPECIAL_BREAK, n)) {
            char *c = realloc(clean, n);
            if (!c) { ok = false; break; }
            clean = c;
            size_t k = 0;
            for (size_t j = 0; j < n; j++) if ((unsigned char)s[j] != LM_SPECIAL_BREAK) clean[k++] = s[j];
            s = clean, n = k;
            if (!n) continue;
        }
        ok = t->spm ? spm_fragment(t, s, n, prev_special && t->add_space_prefix, &ids) : bpe_fragment(t, s, n, &ids);
        prev_special = false;
    }
    free(clean);
    free(f);
    if (ok && add_special && t->add_eos && t->eos >= 0) ok = lm_idbuf_push(&ids, t->eos);
    return lm_idbuf_finish(&ids, ok, out, cap);
}

int64_t lm_idbuf_finish(lm_idbuf *b, bool ok, int32_t *out, int64_t cap) {
    int64_t n = b->n;
    if (!ok) lm_err("tokenize: out of memory");
    else if (n <= cap && n) memcpy(out, b->ids, (size_t)n * sizeof *out);
    free(b->ids);
    *b = (lm_idbuf){0};
    return !ok ? INT64_MIN : n > cap ? -n : n;
}

int64_t lm_tokenizer_escape(const lm_tokenizer *t, const char *text, size_t len, char *out, int64_t cap) {
    if (!t || (!text && len)) { lm_err("escape_special: bad arguments"); return INT64_MIN; }
    if (cap < 0) { lm_err("escape_special: negative capacity"); return INT64_MIN; }
    /* brk[i]: a break byte goes before text[i] (brk[len]: after the last byte) */
    unsigned char *brk = calloc(len + 1, 1);
    if (!brk) { lm_err("escape_special: out of memory"); return INT64_MIN; }
    for (int32_t k = 0; k < t->n_special; k++) {
        const vtoken *v = &t->tok[t->special[k]];
        if (v->type == T_USER || v->len < 2) continue; /* cut from plain text too; nothing to break */
        const char *sp = TEXT(t, v);
        size_t L = v->len;
        /* every occurrence: a break between each two of its bytes, so that neither it nor a
         * shorter special token inside it matches */
        for (const char *p = text, *end = text + len; (size_t)(end - p) >= L;) {
            const char *hit = memmem(p, (size_t)(end - p), sp, L);
            if (!hit) break;
            memset(brk + (hit - text) + 1, 1, L - 1);
            p = hit + 1;
        }
        /* the text's ends: a special token could start in the text and end in what follows it
         * (or the other way round) once the text is put into a template */
        for (size_t m = 1; m < L && m <= len; m++) {
            if (!brk[len] && !memcmp(text + len - m, sp, m)) brk[len] = 1;
            if (!brk[0] && !memcmp(text, sp + L - m, m)) brk[0] = 1;
        }
    }
    int64_t need = (int64_t)len;
    for (size_t i = 0; i <= len; i++) need += brk[i];
    if (need > cap) { free(brk); return -need; }
    int64_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (brk[i]) out[k++] = (char)LM_SPECIAL_BREAK;
        out[k++] = text[i];
    }
    if (brk[len]) out[k++] = (char)LM_SPECIAL_BREAK;
    free(brk);
    return k;
}

/* Bytes of a token into sb. */
static bool piece(const lm_tokenizer *t, int32_t id, bool render_special, sbuf *sb) {
    const vtoken *v = &t->tok[id];
    const char *text = TEXT(t, v);
    if (v->type == T_CONTROL || v->type == T_UNKNOWN || v->type == T_UNUSED)
        return render_special ? push_bytes(sb, text, v->len) : true;
    if (v->type == T_USER) return push_bytes(sb, text, v->len);
    if (t->spm) {
        if (v->type == T_BYTE) {
            unsigned b;
            if (v->len == 6 && sscanf(text, "<0x%02X>", &b) == 1) { char c = (char)b; return push_bytes(sb, &c, 1); }
            return push_bytes(sb, text, v->len);
        }
        for (uint32_t i = 0; i < v->len;) {
            if (i + 3 <= v->len && !memcmp(text + i, "\xe2\x96\x81", 3)) { if (!push_bytes(sb, " ", 1)) return false; i += 3; }
            else { if (!push_bytes(sb, text + i, 1)) return false; i++; }
        }
        return true;
    }
    for (size_t i = 0; i < v->len;) {
        size_t j = i;
        uint32_t cp = lm_utf8_decode(text, v->len, &j);
        if (cp < 512 && t->byte_dec[cp] >= 0) { char c = (char)t->byte_dec[cp]; if (!push_bytes(sb, &c, 1)) return false; }
        else if (!push_bytes(sb, text + i, j - i)) return false;
        i = j;
    }
    return true;
}

int32_t lm_tokenizer_piece(const lm_tokenizer *t, int32_t tok, char *buf, int32_t cap, bool render_special) {
    if (t && t->wp) return lm_wordpiece_piece(t->wp, tok, buf, cap, render_special);
    if (!t || tok < 0 || tok >= t->n) { lm_err("token id %d is outside the vocabulary [0, %d)", tok, t ? t->n : 0); return INT32_MIN; }
    sbuf sb = {0};
    if (!piece(t, tok, render_special, &sb)) { free(sb.s); lm_err("out of memory"); return INT32_MIN; }
    int32_t n = (int32_t)sb.n;
    if (n > cap) { free(sb.s); return -n; }
    if (n) memcpy(buf, sb.s, (size_t)n);
    free(sb.s);
    return n;
}

int64_t lm_tokenizer_decode(const lm_tokenizer *t, const int32_t *toks, int64_t n, char *buf, int64_t cap,
                            bool render_special) {
    if (!t || (!toks && n) || n < 0) { lm_err("detokenize: bad arguments"); return INT64_MIN; }
    if (t->wp) return lm_wordpiece_decode(t->wp, toks, n, buf, cap, render_special);
    sbuf sb = {0};
    for (int64_t i = 0; i < n; i++) {
        if (toks[i] < 0 || toks[i] >= t->n) { free(sb.s); lm_err("detokenize: token %d at index %lld is outside the vocabulary", toks[i], (long long)i); return INT64_MIN; }
        size_t before = sb.n;
        if (!piece(t, toks[i], render_special, &sb)) { free(sb.s); lm_err("out of memory"); return INT64_MIN; }
        /* SentencePiece: the space the tokenizer added in front of the text is not part of it */
        if (t->spm && t->add_space_prefix && i == 0 && sb.n > before && sb.s[before] == ' ') {
            memmove(sb.s + before, sb.s + before + 1, sb.n - before - 1);
            sb.n--;
        }
    }
    int64_t len = (int64_t)sb.n;
    if (len > cap) { free(sb.s); return -len; }
    if (len) memcpy(buf, sb.s, (size_t)len);
    free(sb.s);
    return len;
}
