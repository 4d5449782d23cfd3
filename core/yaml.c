/* YAML documents through libyaml's event parser.
 *
 * The events become a flat node array (node 0 = root, nodes in document order).
 * The event API is used rather than yaml_parser_load because the document API
 * gives every untagged node a default tag, so an explicit "!!str" could not be
 * told apart from no tag at all.
 *
 * While parsing, nodes, child indices and text live in growable buffers
 * addressed by offsets; at the end everything is copied into one allocation
 * (the lm_yaml itself), so lm_yaml_free is a single free().
 *
 * An alias reuses the node index of its anchor, so the array is a DAG whose size
 * is bounded by the input. A consumer that expands aliases (a copy each time a
 * node is reached) could still blow up ("billion laughs"), so every node carries
 * its expanded size and height, and documents that would expand beyond
 * LM_YAML_MAX_EXPANDED nodes or LM_YAML_MAX_DEPTH levels are refused. Anchors are
 * registered when their node is complete, so an alias never points into its own
 * ancestors: recursive documents are refused as well. */
#include "error.h"

#include <errno.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

enum { LM_YAML_MAX_DEPTH = 256, LM_YAML_MAX_EXPANDED = 1000000 };

struct lm_yaml {
    int32_t n_nodes;
    const lm_yaml_node *nodes;
    const char *name;
    /* nodes, child indices, text and name follow in the same allocation */
};

/* A node while parsing: text and children by offset, since the buffers move. */
typedef struct bnode {
    int32_t kind, style;
    size_t value_off, len;
    size_t items_off;
    int32_t n_items;
    int32_t line, column;
    int64_t tag_off;        /* -1: no tag */
    int64_t expanded;       /* nodes reached when aliases are expanded */
    int32_t height;         /* nested collections: 0 for a scalar */
} bnode;

/* A child waiting for its collection to end, with where it occurred (for an
 * alias the alias, not the anchor) for duplicate-key messages. */
typedef struct pending {
    int32_t node, line, column;
} pending;

typedef struct frame {
    int32_t node;
    size_t first;           /* its first child in the pending stack */
    int64_t expanded;       /* itself and its children so far */
    int32_t height;
    int64_t anchor_off;     /* -1: not anchored */
} frame;

/* A slot of the anchor table (open addressing); node -1 marks an empty slot. */
typedef struct anchor {
    size_t name_off;
    int32_t node;
} anchor;

typedef struct builder {
    const char *name;
    const unsigned char *text;  /* the input, to place reader errors */
    size_t text_len;
    bnode *nodes;    size_t n_nodes, cap_nodes;
    int32_t *items;  size_t n_items, cap_items;
    char *chars;     size_t n_chars, cap_chars;
    pending *pend;   size_t n_pend, cap_pend;
    frame *frames;   size_t n_frames, cap_frames;
    anchor *anchors; size_t n_anchors, cap_anchors;  /* cap: a power of two */
    int64_t expanded;       /* the document so far, aliases expanded */
    int n_docs;
} builder;

/* Grows *buf (an array of *cap elements of elem bytes) to hold need elements. */
static int grow(void *buf, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t ncap = *cap ? *cap : 16;
    while (ncap < need) ncap *= 2;
    void *p = realloc(*(void **)buf, ncap * elem);
    if (!p) return -1;
    *(void **)buf = p;
    *cap = ncap;
    return 0;
}

static void builder_free(builder *b) {
    free(b->nodes);
    free(b->items);
    free(b->chars);
    free(b->pend);
    free(b->frames);
    free(b->anchors);
}

static lm_status oom(const builder *b) { return lm_err("%s: out of memory", b->name); }

static lm_status err_at(const builder *b, int32_t line, int32_t column, const char *what) {
    return lm_err("%s:%d:%d: %s", b->name, line, column, what);
}

static lm_status err_mark(const builder *b, yaml_mark_t m, const char *what) {
    return err_at(b, (int32_t)m.line + 1, (int32_t)m.column + 1, what);
}

/* Appends prefix, s and a NUL; the offset, or -1 when out of memory. */
static int64_t add_text2(builder *b, const char *prefix, const char *s, size_t len) {
    size_t plen = strlen(prefix);
    if (grow(&b->chars, &b->cap_chars, b->n_chars + plen + len + 1, 1)) return -1;
    size_t off = b->n_chars;
    memcpy(b->chars + off, prefix, plen);
    if (len) memcpy(b->chars + off + plen, s, len);
    b->chars[off + plen + len] = 0;
    b->n_chars += plen + len + 1;
    return (int64_t)off;
}

static int64_t add_text(builder *b, const char *s, size_t len) { return add_text2(b, "", s, len); }

/* libyaml resolves "!!str" to "tag:yaml.org,2002:str"; tags keep the short
 * form as they are usually written. The offset, -1 for no tag, -2 out of memory. */
static int64_t add_tag(builder *b, const yaml_char_t *tag) {
    static const char core[] = "tag:yaml.org,2002:";
    const char *t = (const char *)tag;
    if (!t) return -1;
    if (strncmp(t, core, sizeof core - 1) == 0) {
        const char *suffix = t + sizeof core - 1;
        int64_t off = add_text2(b, "!!", suffix, strlen(suffix));
        return off < 0 ? -2 : off;
    }
    int64_t off = add_text(b, t, strlen(t));
    return off < 0 ? -2 : off;
}

static int64_t add_anchor_name(builder *b, const yaml_char_t *name) {
    if (!name) return -1;
    int64_t off = add_text(b, (const char *)name, strlen((const char *)name));
    return off < 0 ? -2 : off;
}

static size_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull;  /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (size_t)h;
}

/* The slot of name in the anchor table: its own, or the empty one it would take. */
static anchor *anchor_slot(const builder *b, const char *name) {
    size_t mask = b->cap_anchors - 1;
    for (size_t i = hash_name(name) & mask;; i = (i + 1) & mask) {
        anchor *a = &b->anchors[i];
        if (a->node < 0 || strcmp(b->chars + a->name_off, name) == 0) return a;
    }
}

/* A table rather than a list: a document may hold many anchors and aliases. */
static lm_status register_anchor(builder *b, int64_t name_off, int32_t node) {
    if (name_off < 0) return LM_OK;
    if (2 * (b->n_anchors + 1) > b->cap_anchors) {
        anchor *old = b->anchors;
        size_t old_cap = b->cap_anchors, cap = old_cap ? 2 * old_cap : 64;
        anchor *fresh = malloc(cap * sizeof *fresh);
        if (!fresh) return oom(b);
        for (size_t i = 0; i < cap; i++) fresh[i] = (anchor){ 0, -1 };
        b->anchors = fresh;
        b->cap_anchors = cap;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].node >= 0) *anchor_slot(b, b->chars + old[i].name_off) = old[i];
        free(old);
    }
    anchor *a = anchor_slot(b, b->chars + name_off);
    if (a->node < 0) b->n_anchors++;
    /* a later anchor of the same name shadows the earlier one */
    *a = (anchor){ (size_t)name_off, node };
    return LM_OK;
}

/* The node of the latest definition of an anchor, or -1. */
static int32_t find_anchor(const builder *b, const char *name) {
    if (!b->cap_anchors) return -1;
    return anchor_slot(b, name)->node;
}

/* A new node at mark; its index, or -1 (message set). */
static int32_t new_node(builder *b, int32_t kind, yaml_mark_t m, const yaml_char_t *tag) {
    if (b->n_nodes >= INT32_MAX) return lm_err("%s: too many nodes", b->name), -1;
    if (grow(&b->nodes, &b->cap_nodes, b->n_nodes + 1, sizeof *b->nodes)) return oom(b), -1;
    int64_t tag_off = add_tag(b, tag);
    if (tag_off == -2) return oom(b), -1;
    b->nodes[b->n_nodes] = (bnode){
        .kind = kind, .line = (int32_t)m.line + 1, .column = (int32_t)m.column + 1,
        .tag_off = tag_off, .expanded = 1, .height = kind == LM_YAML_SCALAR ? 0 : 1,
    };
    return (int32_t)b->n_nodes++;
}

/* Adds a complete node (new, or reached through an alias) to the open
 * collection. counted: its expansion is already in b->expanded (a collection
 * that just closed). The limits are checked here, where an alias is used. */
static lm_status attach(builder *b, int32_t node, int32_t line, int32_t column, int counted) {
    const bnode *n = &b->nodes[node];
    if (!counted) b->expanded += n->expanded;
    if (b->n_frames == 0) return LM_OK;  /* the root */
    frame *f = &b->frames[b->n_frames - 1];
    if ((size_t)n->height + b->n_frames > LM_YAML_MAX_DEPTH) {
        char msg[64];
        snprintf(msg, sizeof msg, "nesting deeper than %d levels", LM_YAML_MAX_DEPTH);
        return err_at(b, line, column, msg);
    }
    if (b->expanded > LM_YAML_MAX_EXPANDED) {
        char msg[96];
        snprintf(msg, sizeof msg, "aliases expand the document beyond %d nodes", LM_YAML_MAX_EXPANDED);
        return err_at(b, line, column, msg);
    }
    f->expanded += n->expanded;
    if (n->height + 1 > f->height) f->height = n->height + 1;
    if (grow(&b->pend, &b->cap_pend, b->n_pend + 1, sizeof *b->pend)) return oom(b);
    b->pend[b->n_pend++] = (pending){ node, line, column };
    return LM_OK;
}

static lm_status open_collection(builder *b, int32_t kind, const yaml_event_t *ev) {
    const yaml_char_t *tag = kind == LM_YAML_SEQ ? ev->data.sequence_start.tag : ev->data.mapping_start.tag;
    const yaml_char_t *anchor_name =
        kind == LM_YAML_SEQ ? ev->data.sequence_start.anchor : ev->data.mapping_start.anchor;
    if (b->n_frames + 1 > LM_YAML_MAX_DEPTH) {
        char msg[64];
        snprintf(msg, sizeof msg, "nesting deeper than %d levels", LM_YAML_MAX_DEPTH);
        return err_mark(b, ev->start_mark, msg);
    }
    int32_t node = new_node(b, kind, ev->start_mark, tag);
    if (node < 0) return LM_ERR;
    int64_t anchor_off = add_anchor_name(b, anchor_name);
    if (anchor_off == -2) return oom(b);
    if (grow(&b->frames, &b->cap_frames, b->n_frames + 1, sizeof *b->frames)) return oom(b);
    b->frames[b->n_frames++] = (frame){ node, b->n_pend, 1, 1, anchor_off };
    b->expanded += 1;
    return LM_OK;
}

typedef struct keyref {
    const char *text;
    size_t len;
    size_t pair;
} keyref;

/* By key text, then by position, so that a repeat sorts after its first use. */
static int keyref_cmp(const void *a, const void *b) {
    const keyref *x = a, *y = b;
    int c = memcmp(x->text, y->text, x->len < y->len ? x->len : y->len);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return (x->pair > y->pair) - (x->pair < y->pair);
}

/* Refuses a mapping with the same scalar key text twice, naming the first
 * repeated key in document order. */
static lm_status check_duplicates(builder *b, const frame *f) {
    size_t n_pairs = (b->n_pend - f->first) / 2;
    const pending *kv = b->pend + f->first;
    if (n_pairs < 2) return LM_OK;
    keyref *refs = malloc(n_pairs * sizeof *refs);
    if (!refs) return oom(b);
    size_t m = 0;
    for (size_t i = 0; i < n_pairs; i++) {
        const bnode *k = &b->nodes[kv[2 * i].node];
        if (k->kind == LM_YAML_SCALAR) refs[m++] = (keyref){ b->chars + k->value_off, k->len, i };
    }
    qsort(refs, m, sizeof *refs, keyref_cmp);
    size_t dup = SIZE_MAX;
    for (size_t i = 1; i < m; i++)
        if (refs[i].len == refs[i - 1].len && memcmp(refs[i].text, refs[i - 1].text, refs[i].len) == 0 &&
            refs[i].pair < dup)
            dup = refs[i].pair;
    free(refs);
    if (dup == SIZE_MAX) return LM_OK;
    const pending *k = &kv[2 * dup];
    const bnode *kn = &b->nodes[k->node];
    return lm_err("%s:%d:%d: duplicate key '%.*s'", b->name, k->line, k->column,
                  (int)(kn->len > 80 ? 80 : kn->len), b->chars + kn->value_off);
}

static lm_status close_collection(builder *b) {
    frame f = b->frames[b->n_frames - 1];
    bnode *n = &b->nodes[f.node];
    if (n->kind == LM_YAML_MAP && check_duplicates(b, &f)) return LM_ERR;
    size_t count = b->n_pend - f.first;
    if (count > INT32_MAX) return lm_err("%s:%d:%d: collection too large", b->name, n->line, n->column);
    if (grow(&b->items, &b->cap_items, b->n_items + count, sizeof *b->items)) return oom(b);
    n->items_off = b->n_items;
    n->n_items = (int32_t)count;
    for (size_t i = 0; i < count; i++) b->items[b->n_items++] = b->pend[f.first + i].node;
    n->expanded = f.expanded;
    n->height = f.height;
    b->n_pend = f.first;
    b->n_frames--;
    if (register_anchor(b, f.anchor_off, f.node)) return LM_ERR;
    return attach(b, f.node, n->line, n->column, 1);
}

static lm_status on_scalar(builder *b, const yaml_event_t *ev) {
    int32_t node = new_node(b, LM_YAML_SCALAR, ev->start_mark, ev->data.scalar.tag);
    if (node < 0) return LM_ERR;
    int64_t off = add_text(b, (const char *)ev->data.scalar.value, ev->data.scalar.length);
    int64_t anchor_off = add_anchor_name(b, ev->data.scalar.anchor);
    if (off < 0 || anchor_off == -2) return oom(b);
    bnode *n = &b->nodes[node];
    n->value_off = (size_t)off;
    n->len = ev->data.scalar.length;
    switch (ev->data.scalar.style) {
    case YAML_SINGLE_QUOTED_SCALAR_STYLE:
    case YAML_DOUBLE_QUOTED_SCALAR_STYLE: n->style = LM_YAML_QUOTED; break;
    case YAML_LITERAL_SCALAR_STYLE:
    case YAML_FOLDED_SCALAR_STYLE: n->style = LM_YAML_BLOCK; break;
    default: n->style = LM_YAML_PLAIN; break;
    }
    if (register_anchor(b, anchor_off, node)) return LM_ERR;
    return attach(b, node, n->line, n->column, 0);
}

static lm_status on_alias(builder *b, const yaml_event_t *ev) {
    const char *name = (const char *)ev->data.alias.anchor;
    int32_t node = find_anchor(b, name);
    char msg[160];
    if (node >= 0) return attach(b, node, (int32_t)ev->start_mark.line + 1, (int32_t)ev->start_mark.column + 1, 0);
    for (size_t i = 0; i < b->n_frames; i++) {
        if (b->frames[i].anchor_off >= 0 && strcmp(b->chars + b->frames[i].anchor_off, name) == 0) {
            snprintf(msg, sizeof msg, "recursive alias '*%.100s' (refers to a node that contains it)", name);
            return err_mark(b, ev->start_mark, msg);
        }
    }
    snprintf(msg, sizeof msg, "unknown anchor '%.100s'", name);
    return err_mark(b, ev->start_mark, msg);
}

static lm_status on_event(builder *b, const yaml_event_t *ev) {
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (b->n_docs++ > 0) return err_mark(b, ev->start_mark, "only one document is supported");
        return LM_OK;
    case YAML_SCALAR_EVENT: return on_scalar(b, ev);
    case YAML_ALIAS_EVENT: return on_alias(b, ev);
    case YAML_SEQUENCE_START_EVENT: return open_collection(b, LM_YAML_SEQ, ev);
    case YAML_MAPPING_START_EVENT: return open_collection(b, LM_YAML_MAP, ev);
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT: return close_collection(b);
    default: return LM_OK;
    }
}

/* libyaml's message with its position; reader errors (bad encoding, control
 * characters) carry a byte offset instead of a mark. */
static lm_status parser_error(const builder *b, const yaml_parser_t *p) {
    if (p->error == YAML_MEMORY_ERROR) return oom(b);
    const char *problem = p->problem ? p->problem : "parse error";
    if (p->error == YAML_READER_ERROR) {
        int32_t line = 1, column = 1;
        for (size_t i = 0; i < p->problem_offset && i < b->text_len; i++) {
            if (b->text[i] == '\n') line++, column = 1;
            else if ((b->text[i] & 0xC0) != 0x80) column++;
        }
        if (p->problem_value != -1)
            return lm_err("%s:%d:%d: %s (#%X)", b->name, line, column, problem, (unsigned)p->problem_value);
        return err_at(b, line, column, problem);
    }
    int line = (int)p->problem_mark.line + 1, column = (int)p->problem_mark.column + 1;
    if (p->context)
        return lm_err("%s:%d:%d: %s (%s at line %d, column %d)", b->name, line, column, problem, p->context,
                      (int)p->context_mark.line + 1, (int)p->context_mark.column + 1);
    return lm_err("%s:%d:%d: %s", b->name, line, column, problem);
}

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* Copies the parsed document into one allocation, resolving offsets. */
static lm_yaml *finish(builder *b) {
    size_t name_len = strlen(b->name);
    size_t nodes_at = align_up(sizeof(lm_yaml), alignof(lm_yaml_node));
    size_t items_at = align_up(nodes_at + b->n_nodes * sizeof(lm_yaml_node), alignof(int32_t));
    size_t chars_at = items_at + b->n_items * sizeof(int32_t);
    size_t name_at = chars_at + b->n_chars;
    char *mem = malloc(name_at + name_len + 1);
    if (!mem) return oom(b), NULL;
    lm_yaml *y = (lm_yaml *)mem;
    lm_yaml_node *nodes = (lm_yaml_node *)(mem + nodes_at);
    int32_t *items = (int32_t *)(mem + items_at);
    char *chars = mem + chars_at;
    if (b->n_items) memcpy(items, b->items, b->n_items * sizeof(int32_t));
    memcpy(chars, b->chars, b->n_chars);
    memcpy(mem + name_at, b->name, name_len + 1);
    for (size_t i = 0; i < b->n_nodes; i++) {
        const bnode *s = &b->nodes[i];
        nodes[i] = (lm_yaml_node){
            .kind = s->kind, .style = s->style,
            .value = chars + s->value_off, .len = s->len,
            .n_items = s->n_items, .items = s->n_items ? items + s->items_off : NULL,
            .line = s->line, .column = s->column,
            .tag = s->tag_off >= 0 ? chars + s->tag_off : NULL,
        };
    }
    y->n_nodes = (int32_t)b->n_nodes;
    y->nodes = nodes;
    y->name = mem + name_at;
    return y;
}

lm_yaml *lm_yaml_load_string(const char *text, size_t len, const char *name) {
    if (!name) name = "<string>";
    if (!text && len) return lm_err("lm_yaml_load_string: %s: text is NULL", name), NULL;
    builder b = { .name = name, .text = (const unsigned char *)(text ? text : ""), .text_len = len };
    lm_yaml *y = NULL;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) return oom(&b), NULL;
    yaml_parser_set_input_string(&p, b.text, len);
    /* offset 0 is the empty string: the value of collections */
    if (add_text(&b, "", 0) < 0) { oom(&b); goto done; }
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) { parser_error(&b, &p); goto done; }
        lm_status st = on_event(&b, &ev);
        yaml_event_type_t type = ev.type;
        yaml_event_delete(&ev);
        if (st) goto done;
        if (type == YAML_STREAM_END_EVENT) break;
    }
    if (b.n_nodes == 0) {
        /* no document at all (empty or only comments): a null root */
        yaml_mark_t start = { 0, 0, 0 };
        if (new_node(&b, LM_YAML_SCALAR, start, NULL) < 0) goto done;
    }
    y = finish(&b);
done:
    yaml_parser_delete(&p);
    builder_free(&b);
    return y;
}

lm_yaml *lm_yaml_load_file(const char *path) {
    if (!path) return lm_err("lm_yaml_load_file: path is NULL"), NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return lm_err("cannot open '%s': %s", path, strerror(errno)), NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (grow(&buf, &cap, len + 65536, 1)) {
            fclose(f);
            free(buf);
            return lm_err("%s: out of memory", path), NULL;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    int failed = ferror(f);
    int saved = errno;
    fclose(f);
    if (failed) {
        free(buf);
        return lm_err("cannot read '%s': %s", path, strerror(saved)), NULL;
    }
    lm_yaml *y = lm_yaml_load_string(buf, len, path);
    free(buf);
    return y;
}

void lm_yaml_free(lm_yaml *y) { free(y); }

int32_t lm_yaml_n_nodes(const lm_yaml *y) { return y ? y->n_nodes : 0; }

const lm_yaml_node *lm_yaml_node_at(const lm_yaml *y, int32_t i) {
    if (!y || i < 0 || i >= y->n_nodes) return NULL;
    return &y->nodes[i];
}

const char *lm_yaml_name(const lm_yaml *y) { return y ? y->name : NULL; }
