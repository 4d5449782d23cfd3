/* GBNF (llama.cpp's grammar notation) parsed and compiled to flat rules.
 *
 *   rule     ::= name "::=" alternates        (ends at a newline outside parentheses)
 *   alternates ::= sequence ("|" sequence)*
 *   item     ::= name | "literal" | [class] | [^class] | "." | "(" alternates ")"
 *   repeat   ::= item ("*" | "+" | "?" | "{m}" | "{m,}" | "{m,n}")
 *
 * Comments run from '#' to the end of the line. Escapes: \n \r \t \\ \" \[ \]
 * \xHH \uHHHH \UHHHHHHHH. Repetitions become helper rules (S{1,3} = S S', with
 * S' ::= S S'' | and S'' ::= S |), so the matcher only knows rule references
 * and character classes. Every error names the line and column. */
#include "grammar.h"
#include "error.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REPEAT 2000
#define MAX_ELEMENTS (1 << 22)

typedef struct { lm_gelem *v; int32_t n, cap; } evec;

typedef struct {
    char *name;
    evec body;
    bool defined;
    size_t def_at, ref_at;   /* where defined / first referenced */
} sym;

typedef struct {
    const char *src;
    size_t len, pos;
    sym *syms;
    int32_t n_syms, cap_syms;
    lm_gclass *cls;
    int32_t n_cls, cap_cls;
    lm_grange *rng;
    int32_t n_rng, cap_rng;
    int64_t n_el;            /* elements in all rules so far */
    int32_t n_gen;           /* helper rules made */
    bool failed;
} parser;

/* ---- errors with line:column --------------------------------------------------- */

static void where(const parser *p, size_t at, int *line, int *col) {
    *line = 1; *col = 1;
    for (size_t i = 0; i < at && i < p->len; i++) {
        if (p->src[i] == '\n') { (*line)++; *col = 1; }
        else if (((unsigned char)p->src[i] & 0xC0) != 0x80) (*col)++;
    }
}

__attribute__((format(printf, 3, 4)))
static bool fail(parser *p, size_t at, const char *fmt, ...) {
    if (p->failed) return false;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    where(p, at, &line, &col);
    lm_err("grammar:%d:%d: %s", line, col, msg);
    p->failed = true;
    return false;
}

static int peek(const parser *p) { return p->pos < p->len ? (unsigned char)p->src[p->pos] : -1; }
static int peek_at(const parser *p, size_t k) { return p->pos + k < p->len ? (unsigned char)p->src[p->pos + k] : -1; }

/* what stands at the cursor, for messages */
static const char *shown(const parser *p, char *buf, size_t cap) {
    int c = peek(p);
    if (c < 0) return "the end of the grammar";
    if (c == '\n' || c == '\r') return "the end of the line";
    snprintf(buf, cap, "'%c'", c >= 32 && c < 127 ? c : '?');
    return buf;
}

/* ---- growable arrays --------------------------------------------------------------- */

static bool grow(void **v, int32_t *cap, int32_t need, size_t size) {
    if (need <= *cap) return true;
    int32_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *n = realloc(*v, (size_t)c * size);
    if (!n) { lm_err("out of memory"); return false; }
    *v = n;
    *cap = c;
    return true;
}

static bool push(parser *p, evec *e, int32_t kind, int32_t value) {
    if (++p->n_el > MAX_ELEMENTS) return fail(p, p->pos, "the grammar grows past %d elements (repetitions of repetitions?)", MAX_ELEMENTS);
    if (!grow((void **)&e->v, &e->cap, e->n + 1, sizeof *e->v)) { p->failed = true; return false; }
    e->v[e->n++] = (lm_gelem){kind, value};
    return true;
}

static int32_t new_sym(parser *p, const char *name, size_t len) {
    if (!grow((void **)&p->syms, &p->cap_syms, p->n_syms + 1, sizeof *p->syms)) { p->failed = true; return -1; }
    sym *s = &p->syms[p->n_syms];
    memset(s, 0, sizeof *s);
    s->name = malloc(len + 1);
    if (!s->name) { lm_err("out of memory"); p->failed = true; return -1; }
    memcpy(s->name, name, len);
    s->name[len] = 0;
    s->ref_at = s->def_at = (size_t)-1;
    return p->n_syms++;
}

static int32_t find_sym(parser *p, const char *name, size_t len) {
    for (int32_t i = 0; i < p->n_syms; i++)
        if (strlen(p->syms[i].name) == len && !memcmp(p->syms[i].name, name, len)) return i;
    return new_sym(p, name, len);
}

/* a helper rule; its name (never a valid rule name) only shows in messages */
static int32_t gen_sym(parser *p, int32_t parent) {
    char name[160];
    snprintf(name, sizeof name, "%.120s/%d", p->syms[parent].name, ++p->n_gen);
    int32_t id = new_sym(p, name, strlen(name));
    if (id >= 0) p->syms[id].defined = true;
    return id;
}

static int32_t new_class(parser *p, bool negated, int32_t first) {
    if (!grow((void **)&p->cls, &p->cap_cls, p->n_cls + 1, sizeof *p->cls)) { p->failed = true; return -1; }
    lm_gclass *c = &p->cls[p->n_cls];
    c->first = first;
    c->n = p->n_rng - first;
    c->negated = negated;
    c->ascii[0] = c->ascii[1] = 0;
    for (uint32_t ch = 0; ch < 128; ch++) {
        bool in = false;
        for (int32_t i = first; i < p->n_rng && !in; i++) in = p->rng[i].lo <= ch && ch <= p->rng[i].hi;
        if (in != negated) c->ascii[ch >> 6] |= 1ull << (ch & 63);
    }
    return p->n_cls++;
}

static bool add_range(parser *p, uint32_t lo, uint32_t hi) {
    if (!grow((void **)&p->rng, &p->cap_rng, p->n_rng + 1, sizeof *p->rng)) { p->failed = true; return false; }
    p->rng[p->n_rng++] = (lm_grange){lo, hi};
    return true;
}

/* ---- lexical pieces ----------------------------------------------------------------- */

static bool is_name_char(int c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

static void space(parser *p, bool newlines) {
    for (;;) {
        int c = peek(p);
        if (c == ' ' || c == '\t') p->pos++;
        else if (c == '#') { while (peek(p) >= 0 && peek(p) != '\n' && peek(p) != '\r') p->pos++; }
        else if (newlines && (c == '\n' || c == '\r')) p->pos++;
        else return;
    }
}

static bool hex(parser *p, int digits, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < digits; i++) {
        int c = peek(p), d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return fail(p, p->pos, "expecting %d hex digits in the escape", digits);
        v = v * 16 + (uint32_t)d;
        p->pos++;
    }
    *out = v;
    return true;
}

/* one character of a literal or class: an escape or a UTF-8 sequence */
static bool character(parser *p, uint32_t *out) {
    size_t at = p->pos;
    int c = peek(p);
    if (c < 0) return fail(p, at, "unexpected end of the grammar");
    if (c == '\\') {
        p->pos++;
        int e = peek(p);
        p->pos++;
        switch (e) {
        case 'x': return hex(p, 2, out);
        case 'u': return hex(p, 4, out);
        case 'U': return hex(p, 8, out);
        case 'n': *out = '\n'; return true;
        case 'r': *out = '\r'; return true;
        case 't': *out = '\t'; return true;
        case '\\': case '"': case '[': case ']': case '-': case '^': *out = (uint32_t)e; return true;
        default: return fail(p, at, "unknown escape '\\%c'", e >= 32 && e < 127 ? e : '?');
        }
    }
    if (c == 0) return fail(p, at, "a NUL byte in the grammar");
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!n) return fail(p, at, "invalid UTF-8");
    uint32_t v = n == 1 ? (uint32_t)c : (uint32_t)c & (0x3Fu >> (n - 1));
    for (int i = 1; i < n; i++) {
        int b = peek_at(p, (size_t)i);
        if (b < 0 || (b & 0xC0) != 0x80) return fail(p, at, "invalid UTF-8");
        v = (v << 6) | ((uint32_t)b & 0x3F);
    }
    p->pos += (size_t)n;
    *out = v;
    return true;
}

/* ---- rules ---------------------------------------------------------------------------- */

static bool alternates(parser *p, int32_t rule, evec *out, bool nested);

/* S{min,max} on the elements out[last..]: one element S (a helper rule when
 * they are several), min copies of it, then the optional rest as helper rules. */
static bool repeat(parser *p, int32_t rule, evec *out, int32_t last, int64_t min, int64_t max, size_t at) {
    if (last == out->n) return fail(p, at, "expecting an item before '%c'", p->src[at]);
    if (min > MAX_REPEAT || max > MAX_REPEAT) return fail(p, at, "repetition counts above %d are not supported", MAX_REPEAT);
    if (max >= 0 && max < min) return fail(p, at, "repetition {%lld,%lld}: the maximum is below the minimum", (long long)min, (long long)max);
    lm_gelem s = out->v[last];
    if (out->n - last > 1) {
        int32_t sub = gen_sym(p, rule);
        if (sub < 0) return false;
        evec *b = &p->syms[sub].body;
        for (int32_t i = last; i < out->n; i++) if (!push(p, b, out->v[i].kind, out->v[i].value)) return false;
        if (!push(p, b, G_END, 0)) return false;
        s = (lm_gelem){G_REF, sub};
    }
    p->n_el -= out->n - last;
    out->n = last;
    for (int64_t i = 0; i < min; i++) if (!push(p, out, s.kind, s.value)) return false;
    int32_t tail = -1;
    int64_t n_opt = max < 0 ? 1 : max - min;
    for (int64_t k = 0; k < n_opt; k++) {
        int32_t r = gen_sym(p, rule);
        if (r < 0) return false;
        evec *b = &p->syms[r].body;
        if (!push(p, b, s.kind, s.value)) return false;
        if (max < 0 && !push(p, b, G_REF, r)) return false;        /* S' ::= S S' | */
        if (max >= 0 && tail >= 0 && !push(p, b, G_REF, tail)) return false;
        if (!push(p, b, G_ALT, 0) || !push(p, b, G_END, 0)) return false;
        tail = r;
    }
    if (tail >= 0 && !push(p, out, G_REF, tail)) return false;
    return true;
}

static bool count(parser *p, int64_t *out) {
    size_t at = p->pos;
    int64_t v = 0;
    if (peek(p) < '0' || peek(p) > '9') return fail(p, at, "expecting a number");
    while (peek(p) >= '0' && peek(p) <= '9') {
        v = v * 10 + (peek(p) - '0');
        if (v > 1000000) return fail(p, at, "repetition count too large");
        p->pos++;
    }
    *out = v;
    return true;
}

static bool char_class(parser *p, evec *out) {
    size_t at = p->pos;
    p->pos++; /* [ */
    bool neg = peek(p) == '^';
    if (neg) p->pos++;
    int32_t first = p->n_rng;
    while (peek(p) != ']') {
        if (peek(p) < 0) return fail(p, at, "unterminated character class");
        uint32_t lo, hi;
        size_t at_lo = p->pos;
        if (!character(p, &lo)) return false;
        hi = lo;
        if (peek(p) == '-' && peek_at(p, 1) != ']' && peek_at(p, 1) >= 0) {
            p->pos++;
            if (!character(p, &hi)) return false;
            if (hi < lo) return fail(p, at_lo, "character range with its end (U+%04X) before its start (U+%04X)", hi, lo);
        }
        if (!add_range(p, lo, hi)) return false;
    }
    p->pos++;
    if (p->n_rng == first) return fail(p, at, "empty character class");
    int32_t k = new_class(p, neg, first);
    return k >= 0 && push(p, out, G_CLASS, k);
}

static bool sequence(parser *p, int32_t rule, evec *out, bool nested) {
    int32_t last = out->n;
    for (;;) {
        int c = peek(p);
        size_t at = p->pos;
        if (c == '"') {
            p->pos++;
            last = out->n;
            while (peek(p) != '"') {
                if (peek(p) < 0) return fail(p, at, "unterminated string literal");
                uint32_t ch;
                if (!character(p, &ch)) return false;
                int32_t first = p->n_rng;
                if (!add_range(p, ch, ch)) return false;
                int32_t k = new_class(p, false, first);
                if (k < 0 || !push(p, out, G_CLASS, k)) return false;
            }
            p->pos++;
        } else if (c == '[') {
            last = out->n;
            if (!char_class(p, out)) return false;
        } else if (c >= 0 && is_name_char(c)) {
            size_t start = p->pos;
            while (peek(p) >= 0 && is_name_char(peek(p))) p->pos++;
            int32_t r = find_sym(p, p->src + start, p->pos - start);
            if (r < 0) return false;
            if (p->syms[r].ref_at == (size_t)-1) p->syms[r].ref_at = start;
            last = out->n;
            if (!push(p, out, G_REF, r)) return false;
        } else if (c == '(') {
            p->pos++;
            space(p, true);
            int32_t sub = gen_sym(p, rule);
            if (sub < 0) return false;
            evec body = {0};
            bool ok = alternates(p, sub, &body, true);
            p->syms[sub].body = body;
            if (!ok) return false;
            if (peek(p) != ')') { char b[8]; return fail(p, p->pos, "expecting ')' to close a group, found %s", shown(p, b, sizeof b)); }
            p->pos++;
            last = out->n;
            if (!push(p, out, G_REF, sub)) return false;
        } else if (c == '.') {
            p->pos++;
            int32_t first = p->n_rng;
            if (!add_range(p, 0, UINT32_MAX)) return false;
            int32_t k = new_class(p, false, first);
            last = out->n;
            if (k < 0 || !push(p, out, G_CLASS, k)) return false;
        } else if (c == '*' || c == '+' || c == '?') {
            p->pos++;
            if (!repeat(p, rule, out, last, c == '+', c == '?' ? 1 : -1, at)) return false;
        } else if (c == '{') {
            p->pos++;
            space(p, nested);
            int64_t min, max = -1;
            if (!count(p, &min)) return false;
            space(p, nested);
            if (peek(p) == '}') max = min;
            else if (peek(p) == ',') {
                p->pos++;
                space(p, nested);
                if (peek(p) >= '0' && peek(p) <= '9' && !count(p, &max)) return false;
                space(p, nested);
                if (peek(p) != '}') { char b[8]; return fail(p, p->pos, "expecting '}', found %s", shown(p, b, sizeof b)); }
            } else { char b[8]; return fail(p, p->pos, "expecting ',' or '}', found %s", shown(p, b, sizeof b)); }
            p->pos++;
            if (!repeat(p, rule, out, last, min, max, at)) return false;
        } else {
            return true;
        }
        space(p, nested);
    }
}

static bool alternates(parser *p, int32_t rule, evec *out, bool nested) {
    if (!sequence(p, rule, out, nested)) return false;
    while (peek(p) == '|') {
        p->pos++;
        space(p, true);
        if (!push(p, out, G_ALT, 0) || !sequence(p, rule, out, nested)) return false;
    }
    return push(p, out, G_END, 0);
}

static bool rule(parser *p) {
    size_t at = p->pos;
    while (peek(p) >= 0 && is_name_char(peek(p))) p->pos++;
    if (p->pos == at) { char b[8]; return fail(p, at, "expecting a rule name, found %s", shown(p, b, sizeof b)); }
    int32_t r = find_sym(p, p->src + at, p->pos - at);
    if (r < 0) return false;
    space(p, false);
    if (!(peek(p) == ':' && peek_at(p, 1) == ':' && peek_at(p, 2) == '=')) {
        char b[8];
        return fail(p, p->pos, "expecting '::=' after the rule name '%s', found %s", p->syms[r].name, shown(p, b, sizeof b));
    }
    if (p->syms[r].defined) {
        int line, col;
        where(p, p->syms[r].def_at, &line, &col);
        return fail(p, at, "rule '%s' is defined twice (first at %d:%d)", p->syms[r].name, line, col);
    }
    p->syms[r].defined = true;
    p->syms[r].def_at = at;
    p->pos += 3;
    space(p, true);
    evec body = {0};
    bool ok = alternates(p, r, &body, false);
    p->syms[r].body = body;
    if (!ok) return false;
    int c = peek(p);
    if (c == '\r') p->pos += peek_at(p, 1) == '\n' ? 2 : 1;
    else if (c == '\n') p->pos++;
    else if (c >= 0) {
        char b[8];
        return fail(p, p->pos, "unexpected %s in rule '%s' (expecting an item, '|' or the end of the line)", shown(p, b, sizeof b), p->syms[r].name);
    }
    space(p, true);
    return true;
}

/* ---- checks --------------------------------------------------------------------------- */

/* Left recursion would expand forever (the matcher expands rules depth first):
 * find a rule that can begin with itself, through rules that may match nothing. */
static bool left_recursion(parser *p) {
    int32_t n = p->n_syms;
    bool *nullable = calloc((size_t)n, sizeof *nullable);
    int8_t *color = calloc((size_t)n, sizeof *color);
    int32_t *path = malloc((size_t)n * sizeof *path), *iter = malloc((size_t)n * sizeof *iter);
    if (!nullable || !color || !path || !iter) { free(nullable); free(color); free(path); free(iter); lm_err("out of memory"); p->failed = true; return false; }
    for (bool changed = true; changed;) {
        changed = false;
        for (int32_t r = 0; r < n; r++) {
            if (nullable[r]) continue;
            const evec *b = &p->syms[r].body;
            bool all = true;
            for (int32_t i = 0; i < b->n; i++) {
                lm_gelem e = b->v[i];
                if (e.kind == G_ALT || e.kind == G_END) { if (all) { nullable[r] = changed = true; break; } all = true; }
                else if (e.kind == G_CLASS || !nullable[e.value]) all = false;
            }
        }
    }
    bool ok = true;
    /* depth-first over "r can start with s" edges; iter[r] = next element to look at */
    for (int32_t start = 0; start < n && ok; start++) {
        if (color[start]) continue;
        int32_t depth = 0;
        path[depth++] = start;
        color[start] = 1;
        iter[start] = 0;
        while (depth > 0 && ok) {
            int32_t r = path[depth - 1];
            const evec *b = &p->syms[r].body;
            int32_t next = -1;
            while (iter[r] < b->n && next < 0) {
                /* is element iter[r] at the start of its alternative, after nullable refs only? */
                int32_t i = iter[r]++;
                lm_gelem e = b->v[i];
                if (e.kind != G_REF) continue;
                bool at_start = true;
                for (int32_t j = i - 1; j >= 0 && b->v[j].kind != G_ALT; j--)
                    if (b->v[j].kind == G_CLASS || !nullable[b->v[j].value]) { at_start = false; break; }
                if (at_start) next = e.value;
            }
            if (next < 0) { color[r] = 2; depth--; continue; }
            if (color[next] == 1) {
                char chain[400] = "";
                size_t len = 0;
                int32_t k = depth - 1;
                while (k > 0 && path[k] != next) k--;
                for (; k < depth && len < sizeof chain - 80; k++)
                    len += (size_t)snprintf(chain + len, sizeof chain - len, "%s -> ", p->syms[path[k]].name);
                snprintf(chain + len, sizeof chain - len, "%s", p->syms[next].name);
                size_t at = p->syms[next].def_at != (size_t)-1 ? p->syms[next].def_at : 0;
                ok = fail(p, at, "left recursion: rule '%s' can begin with itself (%s); rewrite it with a repetition, e.g. a ::= b (\"+\" b)*",
                          p->syms[next].name, chain);
            } else if (!color[next]) {
                color[next] = 1;
                iter[next] = 0;
                path[depth++] = next;
            }
        }
    }
    free(nullable); free(color); free(path); free(iter);
    return ok;
}

static void free_parser(parser *p) {
    for (int32_t i = 0; i < p->n_syms; i++) { free(p->syms[i].name); free(p->syms[i].body.v); }
    free(p->syms); free(p->cls); free(p->rng);
}

lm_grammar *lm_grammar_new(const char *text, size_t len, const char *root) {
    if (!text) { lm_err("grammar: text is NULL"); return NULL; }
    if (!root || !*root) root = "root";
    parser p = {.src = text, .len = len};
    space(&p, true);
    while (!p.failed && p.pos < p.len) if (!rule(&p)) break;
    int32_t root_id = -1;
    if (!p.failed) {
        for (int32_t i = 0; i < p.n_syms && !p.failed; i++)
            if (!p.syms[i].defined) fail(&p, p.syms[i].ref_at, "undefined rule '%s'", p.syms[i].name);
        for (int32_t i = 0; i < p.n_syms && root_id < 0; i++) if (!strcmp(p.syms[i].name, root)) root_id = i;
        if (!p.failed && root_id < 0) { lm_err("grammar: no rule named '%s' (the start rule)", root); p.failed = true; }
    }
    if (!p.failed) left_recursion(&p);
    if (p.failed) { free_parser(&p); return NULL; }

    lm_grammar *g = calloc(1, sizeof *g);
    int64_t n_el = 0;
    for (int32_t i = 0; i < p.n_syms; i++) n_el += p.syms[i].body.n;
    if (g) {
        g->el = malloc((size_t)(n_el ? n_el : 1) * sizeof *g->el);
        g->rule_first = malloc((size_t)p.n_syms * sizeof *g->rule_first);
    }
    if (!g || !g->el || !g->rule_first) {
        if (g) { free(g->el); free(g->rule_first); free(g); }
        free_parser(&p);
        lm_err("out of memory");
        return NULL;
    }
    for (int32_t i = 0; i < p.n_syms; i++) {
        g->rule_first[i] = g->n_el;
        memcpy(g->el + g->n_el, p.syms[i].body.v, (size_t)p.syms[i].body.n * sizeof *g->el);
        g->n_el += p.syms[i].body.n;
    }
    g->n_rules = p.n_syms;
    g->cls = p.cls; g->n_cls = p.n_cls;
    g->rng = p.rng; g->n_rng = p.n_rng;
    p.cls = NULL; p.rng = NULL;
    g->root = root_id;
    atomic_init(&g->refs, 1);
    free_parser(&p);
    return g;
}

lm_grammar *lm_grammar_retain(lm_grammar *g) {
    if (g) atomic_fetch_add(&g->refs, 1);
    return g;
}

void lm_grammar_free(lm_grammar *g) {
    if (!g || atomic_fetch_sub(&g->refs, 1) != 1) return;
    free(g->el); free(g->rule_first); free(g->cls); free(g->rng);
    free(g);
}
