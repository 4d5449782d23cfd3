/* File helpers of the public API: lm_list_files (the files under a folder, for RAG
 * ingest and batch pipelines) and lm_html_to_text (a page's visible text). */
#include "testutil.h"
#include "lumen.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void put(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (f) { fputs(text, f); fclose(f); }
}

static void html_is(const char *html, const char *want, const char *what) {
    char *out = NULL;
    size_t n = 0;
    lm_status st = lm_html_to_text(html, strlen(html), &out, &n);
    CHECK(st == LM_OK && out && n == strlen(out) && !strcmp(out, want), "%s: got \"%s\"", what, out ? out : "(null)");
    lm_free(out);
}

int main(void) {
    char dir[] = "/tmp/lumen_files_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    put(dir, "b.txt", "x");
    put(dir, "a.txt", "x");
    char sub[256], empty[256], link[256], p[1024];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    mkdir(sub, 0755);
    put(sub, "c.md", "x");
    snprintf(empty, sizeof empty, "%s/empty", dir);
    mkdir(empty, 0755);
    snprintf(link, sizeof link, "%s/loop", dir);
    CHECK(symlink(dir, link) == 0, "symlink");
    char *out = NULL;
    size_t len = 0;
    int64_t n = 0;
    CHECK(lm_list_files(dir, &out, &len, &n) == LM_OK && n == 3 && len == 21 &&
          !memcmp(out, "a.txt\0b.txt\0sub/c.md\0", 21), "sorted, recursive, links not followed: %lld files", (long long)n);
    lm_free(out);
    CHECK(lm_list_files(empty, &out, &len, &n) == LM_OK && n == 0 && len == 0, "an empty folder");
    lm_free(out);
    CHECK(lm_list_files("/nonexistent/folder", &out, &len, &n) != LM_OK && strstr(lm_last_error(), "/nonexistent/folder"),
          "a missing folder is named: %s", lm_last_error());
    snprintf(p, sizeof p, "%s/a.txt", dir);
    CHECK(lm_list_files(p, &out, &len, &n) != LM_OK && strstr(lm_last_error(), "not a folder"), "a file is not a folder");

    html_is("<html><head><title>T</title><style>x{}</style><script>var s;</script></head>"
            "<body><h1>Head</h1><p>One  two\nthree</p><p>Four</p></body></html>", "T\n\nHead\n\nOne two three\n\nFour",
            "title, blocks as paragraphs, white space folded, scripts and styles dropped");
    html_is("<p>unclosed <b>bold<p>next", "unclosed bold\n\nnext", "broken markup recovers");
    html_is("", "", "an empty page");
    html_is("plain text, no tags", "plain text, no tags", "text without tags");
    /* deeply nested: no recursion to overflow */
    size_t depth = 200000;
    char *deep = malloc(depth * 5 + 16);
    size_t k = 0;
    for (size_t i = 0; i < depth; i++) { memcpy(deep + k, "<div>", 5); k += 5; }
    memcpy(deep + k, "deep", 5);
    char *t = NULL;
    size_t tn = 0;
    CHECK(lm_html_to_text(deep, k + 4, &t, &tn) == LM_OK, "200000 nested divs");
    lm_free(t);
    free(deep);
    CHECK(lm_html_to_text(NULL, 5, &t, &tn) != LM_OK, "NULL page with a length refused");

    unlink(link);
    snprintf(p, sizeof p, "%s/a.txt", dir); unlink(p);
    snprintf(p, sizeof p, "%s/b.txt", dir); unlink(p);
    snprintf(p, sizeof p, "%s/c.md", sub); unlink(p);
    rmdir(sub);
    rmdir(empty);
    rmdir(dir);
    return tu_finish("files");
}
