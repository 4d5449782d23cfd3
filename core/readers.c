/* Readers for RAG ingest: the visible text of an HTML page (libxml2's HTML parser,
 * which recovers from broken markup as browsers do) and the regular files under a
 * folder. PDF text comes from poppler's pdftotext (lua/lumen/readers.lua). */
#define _GNU_SOURCE  /* nftw's FTW_PHYS */
#include "error.h"

#include <libxml/HTMLparser.h>
#include <libxml/tree.h>

#include <errno.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct { char *s; size_t n, cap; bool oom; } buf;

static void put(buf *b, const char *s, size_t n) {
    if (b->oom || !n) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) { b->oom = true; return; }
        b->s = p, b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

/* Elements whose text a reader never sees. */
static bool hidden(const char *name) {
    static const char *names[] = {"script", "style", "noscript", "template", "head", "svg", "iframe", "object", NULL};
    for (int i = 0; names[i]; i++) if (!strcasecmp(name, names[i])) return true;
    return false;
}

/* Elements that start a new line of text (so words of two paragraphs do not run together). */
static bool block(const char *name) {
    static const char *names[] = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header",
                                  "footer", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "dt", "dd",
                                  "hr", "title", "main", "nav", "aside", "figure", "figcaption", NULL};
    for (int i = 0; names[i]; i++) if (!strcasecmp(name, names[i])) return true;
    return false;
}

/* Text of a node's subtree; runs of white space inside text become one space,
 * blocks are separated by a blank line. Iterative: a page nested 100000 deep
 * does not overflow the stack. */
static void walk(xmlNode *root, buf *b, const char *title) {
    if (title) { put(b, title, strlen(title)); put(b, "\n\n", 2); }
    xmlNode *n = root;
    bool space = true; /* the last byte written was white space (or nothing yet) */
    while (n) {
        bool descend = false;
        if (n->type == XML_ELEMENT_NODE) {
            const char *name = (const char *)n->name;
            if (!hidden(name)) {
                if (block(name) && b->n && !space) { put(b, "\n\n", 2); space = true; }
                descend = n->children != NULL;
            }
        } else if (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) {
            for (const unsigned char *p = n->content; p && *p; p++) {
                if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f') {
                    if (!space) { put(b, " ", 1); space = true; }
                } else {
                    put(b, (const char *)p, 1);
                    space = false;
                }
            }
        }
        if (descend) { n = n->children; continue; }
        /* next: a sibling, or up until one; leaving a block ends its line */
        while (n && !n->next) {
            n = n->parent;
            if (!n || n == root->parent) { n = NULL; break; }
            if (n->type == XML_ELEMENT_NODE && block((const char *)n->name) && !space) { put(b, "\n\n", 2); space = true; }
        }
        if (n) n = n->next;
    }
}

lm_status lm_html_to_text(const char *html, size_t len, char **out, size_t *out_len) {
    if (!out || !out_len || (!html && len)) return lm_err("html_to_text: bad arguments");
    *out = NULL, *out_len = 0;
    if (len > (size_t)INT32_MAX) return lm_err("html_to_text: a page of %zu bytes is over 2 GiB", len);
    htmlDocPtr doc = htmlReadMemory(html ? html : "", (int)len, NULL, "UTF-8",
                                    HTML_PARSE_RECOVER | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING |
                                    HTML_PARSE_NONET | HTML_PARSE_NOBLANKS | HTML_PARSE_COMPACT);
    buf b = {0};
    put(&b, "", 0);
    if (doc) {
        xmlNode *root = xmlDocGetRootElement(doc);
        char *title = NULL;
        /* the <title> lives in <head>, which walk() skips: keep it as the first line */
        for (xmlNode *h = root ? root->children : NULL; h && !title; h = h->next)
            if (h->type == XML_ELEMENT_NODE && !strcasecmp((const char *)h->name, "head"))
                for (xmlNode *t = h->children; t && !title; t = t->next)
                    if (t->type == XML_ELEMENT_NODE && !strcasecmp((const char *)t->name, "title"))
                        title = (char *)xmlNodeGetContent(t);
        if (root) walk(root, &b, title && *title ? title : NULL);
        xmlFree(title);
        xmlFreeDoc(doc);
    }
    if (b.oom) { free(b.s); return lm_err("html_to_text: out of memory"); }
    if (!b.s && !(b.s = calloc(1, 1))) return lm_err("html_to_text: out of memory");
    /* trailing white space off */
    while (b.n && (b.s[b.n - 1] == '\n' || b.s[b.n - 1] == ' ')) b.s[--b.n] = 0;
    *out = b.s, *out_len = b.n;
    return LM_OK;
}

/* nftw has no user pointer: the walk's state is thread-local. */
static _Thread_local struct { buf *b; size_t root_len; int64_t n; } g_walk;

static int on_file(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st, (void)ftw;
    if (type != FTW_F) return 0;
    const char *rel = path + g_walk.root_len;
    while (*rel == '/') rel++;
    put(g_walk.b, rel, strlen(rel) + 1);
    g_walk.n++;
    return g_walk.b->oom ? 1 : 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

lm_status lm_list_files(const char *dir, char **out, size_t *out_len, int64_t *n_files) {
    if (!dir || !out || !out_len || !n_files) return lm_err("list_files: bad arguments");
    *out = NULL, *out_len = 0, *n_files = 0;
    struct stat st;
    if (stat(dir, &st) != 0) return lm_err("cannot read '%s': %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return lm_err("'%s' is not a folder", dir);
    buf b = {0};
    g_walk.b = &b, g_walk.root_len = strlen(dir), g_walk.n = 0;
    int rc = nftw(dir, on_file, 32, FTW_PHYS);
    int64_t n = g_walk.n;
    if (b.oom || rc != 0) {
        free(b.s);
        return b.oom ? lm_err("list_files: out of memory") : lm_err("cannot walk '%s': %s", dir, strerror(errno));
    }
    /* sorted, so runs are reproducible */
    char **ptrs = malloc((size_t)(n ? n : 1) * sizeof *ptrs);
    char *sorted = malloc(b.n + 1);
    if (!ptrs || !sorted) { free(ptrs); free(sorted); free(b.s); return lm_err("list_files: out of memory"); }
    char *p = b.s;
    for (int64_t i = 0; i < n; i++) { ptrs[i] = p; p += strlen(p) + 1; }
    qsort(ptrs, (size_t)n, sizeof *ptrs, cmp_str);
    size_t k = 0;
    for (int64_t i = 0; i < n; i++) { size_t l = strlen(ptrs[i]) + 1; memcpy(sorted + k, ptrs[i], l); k += l; }
    free(ptrs);
    free(b.s);
    *out = sorted, *out_len = k, *n_files = n;
    return LM_OK;
}

void lm_free(void *p) { free(p); }
