/* YAML documents: node layout, scalars and styles, positions, tags, aliases,
 * the repo's configs/models.yaml, every error with FILE:LINE:COL, alias bombs,
 * and many load/free cycles (leaks show under ASan). */
#include "testutil.h"
#include "lumen.h"
#include <stdlib.h>
#include <string.h>

static lm_yaml *load(const char *text) { return lm_yaml_load_string(text, strlen(text), "t.yaml"); }

static const lm_yaml_node *node(const lm_yaml *y, int32_t i) { return lm_yaml_node_at(y, i); }

/* The value node of key in the mapping m, or NULL. */
static const lm_yaml_node *get(const lm_yaml *y, const lm_yaml_node *m, const char *key) {
    if (!m || m->kind != LM_YAML_MAP) return NULL;
    for (int32_t i = 0; i + 1 < m->n_items; i += 2) {
        const lm_yaml_node *k = node(y, m->items[i]);
        if (k->kind == LM_YAML_SCALAR && k->len == strlen(key) && memcmp(k->value, key, k->len) == 0)
            return node(y, m->items[i + 1]);
    }
    return NULL;
}

static const lm_yaml_node *item(const lm_yaml *y, const lm_yaml_node *s, int32_t i) {
    if (!s || s->kind != LM_YAML_SEQ || i >= s->n_items) return NULL;
    return node(y, s->items[i]);
}

static int is_scalar(const lm_yaml_node *n, const char *text, int style) {
    return n && n->kind == LM_YAML_SCALAR && n->style == style && n->len == strlen(text) &&
           strcmp(n->value, text) == 0;
}

/* Loading text fails with a message containing want. */
static void check_error(const char *text, const char *want) {
    lm_yaml *y = load(text);
    CHECK(y == NULL, "expected an error for [%s]", text);
    CHECK(strstr(lm_last_error(), want) != NULL, "error [%s] lacks [%s]", lm_last_error(), want);
    lm_yaml_free(y);
}

/* Appends printf output to a growing buffer. */
typedef struct sbuf { char *s; size_t n, cap; } sbuf;
static void put(sbuf *b, const char *s) {
    size_t n = strlen(s);
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, n + 1);
    b->n += n;
}

static void test_structure(void) {
    lm_yaml *y = load("name: lumen\n"
                      "list:\n"
                      "  - 1\n"
                      "  - [a, b]\n"
                      "  - {k: v}\n"
                      "nested:\n"
                      "  deeper:\n"
                      "    deepest: x\n"
                      "empty_seq: []\n"
                      "empty_map: {}\n");
    CHECK(y != NULL, "%s", lm_last_error());
    if (!y) return;
    const lm_yaml_node *root = node(y, 0);
    CHECK(root->kind == LM_YAML_MAP && root->n_items == 10, "root is a map of 5 pairs");
    CHECK(is_scalar(get(y, root, "name"), "lumen", LM_YAML_PLAIN), "name");
    const lm_yaml_node *list = get(y, root, "list");
    CHECK(list && list->kind == LM_YAML_SEQ && list->n_items == 3, "list has 3 items");
    CHECK(is_scalar(item(y, list, 0), "1", LM_YAML_PLAIN), "list[0]");
    const lm_yaml_node *ab = item(y, list, 1);
    CHECK(ab && ab->kind == LM_YAML_SEQ && ab->n_items == 2 && is_scalar(item(y, ab, 1), "b", LM_YAML_PLAIN),
          "flow sequence");
    CHECK(is_scalar(get(y, item(y, list, 2), "k"), "v", LM_YAML_PLAIN), "flow mapping");
    CHECK(is_scalar(get(y, get(y, get(y, root, "nested"), "deeper"), "deepest"), "x", LM_YAML_PLAIN), "nested");
    const lm_yaml_node *es = get(y, root, "empty_seq"), *em = get(y, root, "empty_map");
    CHECK(es && es->kind == LM_YAML_SEQ && es->n_items == 0 && es->items == NULL, "empty sequence");
    CHECK(em && em->kind == LM_YAML_MAP && em->n_items == 0, "empty mapping");
    CHECK(es && es->value && es->value[0] == 0 && es->len == 0, "collections have an empty value");
    CHECK(lm_yaml_node_at(y, -1) == NULL && lm_yaml_node_at(y, lm_yaml_n_nodes(y)) == NULL, "out of range");
    CHECK(strcmp(lm_yaml_name(y), "t.yaml") == 0, "name kept");
    /* positions, 1-based */
    CHECK(root->line == 1 && root->column == 1, "root at 1:1");
    const lm_yaml_node *deepest = get(y, get(y, get(y, root, "nested"), "deeper"), "deepest");
    CHECK(deepest && deepest->line == 8 && deepest->column == 14, "deepest at %d:%d", deepest ? deepest->line : 0,
          deepest ? deepest->column : 0);
    CHECK(ab && ab->line == 4 && ab->column == 5, "[a, b] at 4:5");
    lm_yaml_free(y);
}

static void test_scalars(void) {
    lm_yaml *y = load("plain: hello world\n"
                      "single: 'it''s'\n"
                      "double: \"tab\\there\\u00e9\"\n"
                      "nul: \"a\\0b\"\n"
                      "literal: |\n"
                      "  line one\n"
                      "  line two\n"
                      "folded: >-\n"
                      "  folded\n"
                      "  text\n"
                      "null1: ~\n"
                      "null2:\n"
                      "tagged: !!str 12\n"
                      "verbatim: !<tag:yaml.org,2002:int> 3\n"
                      "local: !thing x\n"
                      "seq: !!seq [1]\n"
                      "untagged: 12\n");
    CHECK(y != NULL, "%s", lm_last_error());
    if (!y) return;
    const lm_yaml_node *r = node(y, 0);
    CHECK(is_scalar(get(y, r, "plain"), "hello world", LM_YAML_PLAIN), "plain");
    CHECK(is_scalar(get(y, r, "single"), "it's", LM_YAML_QUOTED), "single quoted");
    CHECK(is_scalar(get(y, r, "double"), "tab\there\xc3\xa9", LM_YAML_QUOTED), "double quoted escapes");
    const lm_yaml_node *nul = get(y, r, "nul");
    CHECK(nul && nul->len == 3 && memcmp(nul->value, "a\0b", 4) == 0, "NUL kept, length 3");
    CHECK(is_scalar(get(y, r, "literal"), "line one\nline two\n", LM_YAML_BLOCK), "literal block");
    CHECK(is_scalar(get(y, r, "folded"), "folded text", LM_YAML_BLOCK), "folded block, stripped");
    CHECK(is_scalar(get(y, r, "null1"), "~", LM_YAML_PLAIN), "~ is plain text, typed by the caller");
    CHECK(is_scalar(get(y, r, "null2"), "", LM_YAML_PLAIN), "missing value is an empty plain scalar");
    const lm_yaml_node *t = get(y, r, "tagged");
    CHECK(t && t->tag && strcmp(t->tag, "!!str") == 0 && is_scalar(t, "12", LM_YAML_PLAIN), "!!str kept short");
    t = get(y, r, "verbatim");
    CHECK(t && t->tag && strcmp(t->tag, "!!int") == 0, "verbatim core tag shortened");
    t = get(y, r, "local");
    CHECK(t && t->tag && strcmp(t->tag, "!thing") == 0, "local tag");
    t = get(y, r, "seq");
    CHECK(t && t->kind == LM_YAML_SEQ && t->tag && strcmp(t->tag, "!!seq") == 0, "tag on a collection");
    t = get(y, r, "untagged");
    CHECK(t && t->tag == NULL, "no tag unless written");
    CHECK(r->tag == NULL, "root has no tag");
    lm_yaml_free(y);
}

static void test_aliases(void) {
    lm_yaml *y = load("base: &b {x: 1, y: [2, 3]}\n"
                      "copy: *b\n"
                      "name: &n hello\n"
                      "names: [*n, *n]\n"
                      "shadow: &b 7\n"
                      "late: *b\n");
    CHECK(y != NULL, "%s", lm_last_error());
    if (!y) return;
    const lm_yaml_node *r = node(y, 0);
    CHECK(get(y, r, "base") == get(y, r, "copy"), "an alias is the anchored node itself");
    const lm_yaml_node *names = get(y, r, "names");
    CHECK(names && names->n_items == 2 && names->items[0] == names->items[1] &&
          is_scalar(item(y, names, 0), "hello", LM_YAML_PLAIN), "scalar aliases");
    CHECK(is_scalar(get(y, r, "late"), "7", LM_YAML_PLAIN), "a redefined anchor shadows the earlier one");
    lm_yaml_free(y);
}

static void test_empty(void) {
    const char *docs[] = { "", "# only a comment\n", "\n\n" };
    for (int i = 0; i < 3; i++) {
        lm_yaml *y = load(docs[i]);
        CHECK(y && lm_yaml_n_nodes(y) == 1, "empty document %d: %s", i, lm_last_error());
        if (y) CHECK(is_scalar(node(y, 0), "", LM_YAML_PLAIN) && node(y, 0)->tag == NULL, "null root");
        lm_yaml_free(y);
    }
    lm_yaml *y = lm_yaml_load_string(NULL, 0, NULL);
    CHECK(y && is_scalar(node(y, 0), "", LM_YAML_PLAIN), "NULL, 0 is an empty document");
    CHECK(y && strcmp(lm_yaml_name(y), "<string>") == 0, "default name");
    lm_yaml_free(y);
    y = load("--- just text\n...\n");
    CHECK(y && is_scalar(node(y, 0), "just text", LM_YAML_PLAIN), "explicit single document");
    lm_yaml_free(y);
}

static void test_models_yaml(void) {
    lm_yaml *y = lm_yaml_load_file(tu_path("configs/models.yaml"));
    CHECK(y != NULL, "configs/models.yaml: %s", lm_last_error());
    if (!y) return;
    const lm_yaml_node *r = node(y, 0);
    CHECK(get(y, r, "default") && get(y, r, "default")->kind == LM_YAML_SCALAR, "default alias");
    const lm_yaml_node *models = get(y, r, "models");
    CHECK(models && models->kind == LM_YAML_MAP && models->n_items >= 2, "models mapping");
    const lm_yaml_node *m = get(y, models, get(y, r, "default") ? get(y, r, "default")->value : "");
    CHECK(m && m->kind == LM_YAML_MAP, "the default model is registered");
    const lm_yaml_node *sha = get(y, m, "sha256");
    int hex = sha && sha->len == 64;
    for (size_t i = 0; hex && i < 64; i++) hex = strchr("0123456789abcdef", sha->value[i]) != NULL;
    CHECK(hex, "sha256 is 64 hex digits");
    CHECK(strstr(lm_yaml_name(y), "configs/models.yaml") != NULL, "name is the path");
    lm_yaml_free(y);
}

static void test_errors(void) {
    check_error("a: 1\nb: c: d\n", "t.yaml:2:5: mapping values are not allowed in this context");
    check_error("a:\n  - [1, 2\n", "t.yaml:3:1: did not find expected ',' or ']' (while parsing a flow sequence at line 2, column 5)");
    check_error("key: \"unterminated\n", "t.yaml:2:1: found unexpected end of stream (while scanning a quoted scalar at line 1, column 6)");
    check_error("a: 1\n---\nb: 2\n", "t.yaml:2:1: only one document is supported");
    check_error("a: 1\nb: 2\na: 3\n", "t.yaml:3:1: duplicate key 'a'");
    check_error("m:\n  x: 1\n  'x': 2\n", "t.yaml:3:3: duplicate key 'x'");
    check_error("{a: 1, b: 2, a: 3}", "t.yaml:1:14: duplicate key 'a'");
    check_error("&k a: 1\nb: 2\n*k : 3\n", "t.yaml:3:1: duplicate key 'a'");
    check_error("a: *missing\n", "t.yaml:1:4: unknown anchor 'missing'");
    check_error("a: &x [1, *x]\n", "t.yaml:1:11: recursive alias '*x'");
    check_error("a: \xff\n", "t.yaml:1:4: invalid leading UTF-8 octet");
    check_error("a: \x01\n", "t.yaml:1:4: control characters are not allowed");
    check_error("\tx: 1\n", "t.yaml:1:1: found character that cannot start any token");

    /* duplicates in a large mapping (the sorted path) are found too */
    sbuf b = { 0 };
    char line[64];
    for (int i = 0; i < 500; i++) {
        snprintf(line, sizeof line, "k%d: %d\n", i, i);
        put(&b, line);
    }
    put(&b, "k250: again\n");
    check_error(b.s, "t.yaml:501:1: duplicate key 'k250'");
    free(b.s);

    lm_yaml *y = lm_yaml_load_file("spec/c/no/such/file.yaml");
    CHECK(y == NULL && strcmp(lm_last_error(), "cannot open 'spec/c/no/such/file.yaml': No such file or directory") == 0,
          "missing file: %s", lm_last_error());
    y = lm_yaml_load_file(tu_path("configs"));
    CHECK(y == NULL && strstr(lm_last_error(), "configs") != NULL, "a directory: %s", lm_last_error());
    y = lm_yaml_load_string(NULL, 5, "n.yaml");
    CHECK(y == NULL && strstr(lm_last_error(), "n.yaml") != NULL, "NULL text with a length");
}

static void test_limits(void) {
    /* billion laughs: nine levels of ten aliases each would expand to 10^9 nodes */
    sbuf b = { 0 };
    put(&b, "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    char line[160];
    for (int i = 1; i <= 9; i++) {
        snprintf(line, sizeof line, "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i,
                 i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
        put(&b, line);
    }
    check_error(b.s, "aliases expand the document beyond 1000000 nodes");
    check_error(b.s, "t.yaml:6:");  /* where the expansion first passes the limit */
    free(b.s);

    /* five levels (10^5 nodes) are fine */
    b = (sbuf){ 0 };
    put(&b, "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (int i = 1; i <= 4; i++) {
        snprintf(line, sizeof line, "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i,
                 i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
        put(&b, line);
    }
    lm_yaml *y = load(b.s);
    CHECK(y != NULL, "10^5 expanded nodes load: %s", lm_last_error());
    CHECK(y && lm_yaml_n_nodes(y) < 100, "aliases are not copied (%d nodes)", lm_yaml_n_nodes(y));
    lm_yaml_free(y);
    free(b.s);

    /* plain nesting: 256 levels load, 257 do not */
    char deep[1200];
    memset(deep, '[', 256);
    memset(deep + 256, ']', 256);
    deep[512] = 0;
    y = load(deep);
    CHECK(y != NULL, "256 levels: %s", lm_last_error());
    lm_yaml_free(y);
    memset(deep, '[', 257);
    memset(deep + 257, ']', 257);
    deep[514] = 0;
    check_error(deep, "t.yaml:1:257: nesting deeper than 256 levels");

    /* nesting through aliases: each anchor nests the previous one 20 levels deeper */
    b = (sbuf){ 0 };
    for (int i = 0; i < 14; i++) {
        snprintf(line, sizeof line, "l%d: &l%d ", i, i);
        put(&b, line);
        for (int d = 0; d < 20; d++) put(&b, "[");
        if (i == 0) put(&b, "x");
        else {
            snprintf(line, sizeof line, "*l%d", i - 1);
            put(&b, line);
        }
        for (int d = 0; d < 20; d++) put(&b, "]");
        put(&b, "\n");
    }
    check_error(b.s, "nesting deeper than 256 levels");
    check_error(b.s, "t.yaml:13:");
    free(b.s);
}

static void test_many_loads(void) {
    const char *text = "default: a\nmodels:\n  a: &m {file: a.gguf, sampling: {top_k: 40, top_p: 0.9}}\n"
                       "  b: *m\nlist:\n  - 1\n  - 'two'\n  - |\n    three\n";
    int ok = 1;
    for (int i = 0; i < 10000 && ok; i++) {
        lm_yaml *y = load(text);
        ok = y && lm_yaml_n_nodes(y) == 21;
        if (!ok) CHECK(0, "load %d: %s (%d nodes)", i, lm_last_error(), lm_yaml_n_nodes(y));
        lm_yaml_free(y);
    }
    CHECK(ok, "10000 loads and frees");
    for (int i = 0; i < 1000; i++) {
        lm_yaml *y = load("a: 1\na: 2\n");  /* the error path frees too */
        if (y) { ok = 0; lm_yaml_free(y); }
    }
    CHECK(ok, "1000 failed loads");
}

int main(void) {
    test_structure();
    test_scalars();
    test_aliases();
    test_empty();
    test_models_yaml();
    test_errors();
    test_limits();
    test_many_loads();
    lm_yaml_free(NULL);
    return tu_finish("yaml");
}
