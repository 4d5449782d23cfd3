#include "fixture.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *unhex(const char *h, size_t *len) {
    size_t n = strlen(h) / 2;
    char *out = malloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
    out[n] = 0;
    *len = n;
    return out;
}

static int32_t *read_ids(char **save, int n) {
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    for (int i = 0; i < n; i++) {
        char *t = strtok_r(NULL, " \n", save);
        ids[i] = t ? (int32_t)strtol(t, NULL, 10) : -1;
    }
    return ids;
}

static fx_prompt *prompt_at(fixture *f, int i) {
    if (i < 0 || i > 1000) return NULL;
    if (i >= f->n_prompts) {
        f->prompts = realloc(f->prompts, (size_t)(i + 1) * sizeof *f->prompts);
        memset(f->prompts + f->n_prompts, 0, (size_t)(i + 1 - f->n_prompts) * sizeof *f->prompts);
        f->n_prompts = i + 1;
    }
    return &f->prompts[i];
}

fixture *fx_load(const char *path) {
    FILE *fp = fopen(path, "r");
    if (!fp) { fprintf(stderr, "fixture %s: cannot open\n", path); return NULL; }
    fixture *f = calloc(1, sizeof *f);
    size_t cap = 1 << 20;
    char *line = malloc(cap);
    while (fgets(line, (int)cap, fp)) {
        char *save, *kind = strtok_r(line, " \n", &save);
        if (!kind || kind[0] == '#') continue;
        if (!strcmp(kind, "tok")) {
            f->toks = realloc(f->toks, (size_t)(f->n_toks + 1) * sizeof *f->toks);
            fx_tok *t = &f->toks[f->n_toks++];
            t->special = atoi(strtok_r(NULL, " \n", &save));
            char *hex = strtok_r(NULL, " \n", &save);
            if (!strcmp(hex, "-")) hex = "";
            t->text = unhex(hex, &t->len);
            t->n = atoi(strtok_r(NULL, " \n", &save));
            t->ids = read_ids(&save, t->n);
        } else if (!strcmp(kind, "prompt")) {
            fx_prompt *p = prompt_at(f, atoi(strtok_r(NULL, " \n", &save)));
            if (!p) continue;
            p->text = unhex(strtok_r(NULL, " \n", &save), &p->len);
            p->special = atoi(strtok_r(NULL, " \n", &save));
            p->n = atoi(strtok_r(NULL, " \n", &save));
            p->ids = read_ids(&save, p->n);
        } else if (!strcmp(kind, "greedy")) {
            fx_prompt *p = prompt_at(f, atoi(strtok_r(NULL, " \n", &save)));
            int n = atoi(strtok_r(NULL, " \n", &save));
            if (!p || n > 64) continue;
            int32_t *ids = read_ids(&save, n);
            memcpy(p->greedy, ids, (size_t)n * sizeof *ids);
            p->n_greedy = n;
            free(ids);
        } else if (!strcmp(kind, "alt")) {
            fx_prompt *p = prompt_at(f, atoi(strtok_r(NULL, " \n", &save)));
            int pos = atoi(strtok_r(NULL, " \n", &save));
            if (!p || pos < 0 || pos >= 64) continue;
            p->alt_top1[pos] = (int32_t)strtol(strtok_r(NULL, " \n", &save), NULL, 10);
            int k = 0;
            char *t;
            while (k < 20 && (t = strtok_r(NULL, " \n", &save))) p->alt[pos][k++] = strtof(t, NULL);
            p->n_alt[pos] = k;
        } else if (!strcmp(kind, "ref")) {
            fx_prompt *p = prompt_at(f, atoi(strtok_r(NULL, " \n", &save)));
            int pos = atoi(strtok_r(NULL, " \n", &save));
            if (!p || pos < 0 || pos >= 64) continue;
            int k = 0;
            char *t;
            while (k < 20 && (t = strtok_r(NULL, " \n", &save))) p->ref[pos][k++] = strtof(t, NULL);
            p->n_ref[pos] = k;
        } else if (!strcmp(kind, "top")) {
            fx_prompt *p = prompt_at(f, atoi(strtok_r(NULL, " \n", &save)));
            int pos = atoi(strtok_r(NULL, " \n", &save));
            if (!p || pos < 0 || pos >= 64) continue;
            int k = 0;
            char *t;
            while (k < 20 && (t = strtok_r(NULL, " \n", &save))) {
                char *colon = strchr(t, ':');
                if (!colon) break;
                p->top[pos][k].id = (int32_t)strtol(t, NULL, 10);
                p->top[pos][k].logit = strtof(colon + 1, NULL);
                k++;
            }
            p->n_top[pos] = k;
        }
    }
    free(line);
    fclose(fp);
    return f;
}

void fx_free(fixture *f) {
    if (!f) return;
    for (int i = 0; i < f->n_toks; i++) { free(f->toks[i].text); free(f->toks[i].ids); }
    for (int i = 0; i < f->n_prompts; i++) { free(f->prompts[i].text); free(f->prompts[i].ids); }
    free(f->toks);
    free(f->prompts);
    free(f);
}
