/* The weights layer over GGUF and Hugging Face directories (see weights.h). */
#include "weights.h"
#include "error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void weights_free(void *ctx) {
    lm_weights *w = ctx;
    if (!w) return;
    lm_gguf_close(w->gguf);
    lm_safetensors_close(w->st);
    cJSON_Delete(w->config);
    free(w->config_path);
    free(w->path);
    free(w->arch);
    free(w);
}

void lm_weights_release(lm_weights *w) {
    if (!w) return;
    if (w->mapping) lm_storage_release(w->mapping);
    else weights_free(w);
}

cJSON *lm_json_file(const char *dir, const char *rel, bool missing_ok) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (missing_ok && errno == ENOENT) return NULL;
        lm_err("%s: cannot open (%s)", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && n < (256L << 20) && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    }
    fclose(f);
    if (!buf) { lm_err("%s: cannot read", path); return NULL; }
    cJSON *j = cJSON_ParseWithLength(buf, (size_t)n);
    free(buf);
    if (!j) lm_err("%s: not valid JSON", path);
    return j;
}

static lm_status span(lm_weights *w, const char *lo, const char *hi) {
    if (!lo) return lm_err("%s: the model has no tensors", w->path);
    w->mapping = lm_storage_wrap((void *)lo, (size_t)(hi - lo), weights_free, w);
    return w->mapping ? LM_OK : LM_ERR;
}

static lm_status open_gguf(lm_weights *w) {
    w->gguf = lm_gguf_open(w->path);
    if (!w->gguf) return LM_ERR;
    lm_gguf_str s;
    if (lm_gguf_get_str(w->gguf, "general.architecture", &s)) return LM_ERR;
    w->arch = strndup(s.ptr, s.len);
    const char *lo = NULL, *hi = NULL;
    for (int64_t i = 0; i < lm_gguf_n_tensors(w->gguf); i++) {
        const lm_gguf_tensor *t = lm_gguf_tensor_at(w->gguf, i);
        const char *a = t->data, *b = a + t->nbytes;
        if (!lo || a < lo) lo = a;
        if (!hi || b > hi) hi = b;
    }
    return span(w, lo, hi);
}

static lm_status open_hf(lm_weights *w) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", w->path);
    w->config_path = strdup(path);
    w->config = lm_json_file(w->path, "config.json", false);
    if (!w->config) return LM_ERR;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(w->config, "model_type");
    if (!cJSON_IsString(mt)) return lm_err("%s: missing key 'model_type' (a string)", w->config_path);
    w->arch = strdup(mt->valuestring);
    snprintf(path, sizeof path, "%s/model.safetensors", w->path);
    w->st = lm_safetensors_open(path);
    if (!w->st) return LM_ERR;
    const char *lo = NULL, *hi = NULL;
    for (int64_t i = 0; i < lm_safetensors_n_tensors(w->st); i++) {
        const lm_st_tensor *t = lm_safetensors_tensor_at(w->st, i);
        const char *a = t->data, *b = a + t->nbytes;
        if (!lo || a < lo) lo = a;
        if (!hi || b > hi) hi = b;
    }
    if (lo && lo == hi) hi = lo + 1; /* only empty tensors: still a storage */
    return span(w, lo, hi);
}

lm_weights *lm_weights_open(const char *path) {
    if (!path || !*path) { lm_err("model path is empty"); return NULL; }
    struct stat sb;
    if (stat(path, &sb) != 0) { lm_err("%s: cannot open (%s)", path, strerror(errno)); return NULL; }
    lm_weights *w = calloc(1, sizeof *w);
    if (!w) { lm_err("out of memory"); return NULL; }
    w->path = strdup(path);
    w->format = S_ISDIR(sb.st_mode) ? LM_WEIGHTS_HF : LM_WEIGHTS_GGUF;
    if ((w->format == LM_WEIGHTS_HF ? open_hf(w) : open_gguf(w)) != LM_OK) {
        lm_weights_release(w);
        return NULL;
    }
    return w;
}

bool lm_weights_find(const lm_weights *w, const char *name, lm_weights_tensor *o) {
    memset(o, 0, sizeof *o);
    if (w->format == LM_WEIGHTS_GGUF) {
        const lm_gguf_tensor *t = lm_gguf_find_tensor(w->gguf, name);
        if (!t) return false;
        o->dtype = t->type;
        o->ndim = (int)t->n_dims;
        for (int i = 0; i < o->ndim; i++) o->shape[i] = t->ne[o->ndim - 1 - i]; /* GGUF lists the innermost first */
        o->data = t->data;
        o->nbytes = t->nbytes;
        return true;
    }
    const lm_st_tensor *t = lm_safetensors_find(w->st, name);
    if (!t) return false;
    o->dtype = t->dtype;
    o->ndim = t->ndim;
    memcpy(o->shape, t->shape, sizeof o->shape);
    o->data = t->data;
    o->nbytes = t->nbytes;
    return true;
}

lm_tensor *lm_weights_view(const lm_weights *w, const char *name) {
    lm_weights_tensor t;
    if (!lm_weights_find(w, name, &t)) { lm_err("%s: no tensor '%s'", w->path, name); return NULL; }
    if (t.ndim == 0) { t.ndim = 1; t.shape[0] = 1; }
    return lm_tensor_on_storage(w->mapping, (void *)t.data, t.dtype, t.ndim, t.shape);
}

int64_t lm_weights_n_params(const lm_weights *w) {
    int64_t n = 0;
    int64_t count = w->format == LM_WEIGHTS_GGUF ? lm_gguf_n_tensors(w->gguf) : lm_safetensors_n_tensors(w->st);
    for (int64_t i = 0; i < count; i++) {
        int64_t e = 1;
        if (w->format == LM_WEIGHTS_GGUF) {
            const lm_gguf_tensor *t = lm_gguf_tensor_at(w->gguf, i);
            for (uint32_t d = 0; d < t->n_dims; d++) e *= t->ne[d];
        } else {
            const lm_st_tensor *t = lm_safetensors_tensor_at(w->st, i);
            for (int d = 0; d < t->ndim; d++) e *= t->shape[d];
        }
        n += e;
    }
    return n;
}

uint64_t lm_weights_file_size(const lm_weights *w) {
    return w->format == LM_WEIGHTS_GGUF ? lm_gguf_size(w->gguf) : lm_safetensors_size(w->st);
}

/* Whether key is there: 1, or 0 when absent and not required (the caller
 * takes its default), or LM_ERR naming the file when absent and required.
 * *j: the config.json value of a Hugging Face directory. */
static int key_present(const lm_weights *w, const char *key, bool required, const cJSON **j) {
    bool there;
    if (w->format == LM_WEIGHTS_GGUF) there = lm_gguf_find(w->gguf, key) != NULL;
    else {
        *j = cJSON_GetObjectItemCaseSensitive(w->config, key);
        there = *j && !cJSON_IsNull(*j);
    }
    if (!there && required) return lm_err("%s: missing key '%s'", w->format == LM_WEIGHTS_GGUF ? w->path : w->config_path, key);
    return there;
}

lm_status lm_weights_int(const lm_weights *w, const char *key, int64_t *out, bool required, int64_t def) {
    const cJSON *v = NULL;
    int there = key_present(w, key, required, &v);
    if (there <= 0) { *out = def; return there; }
    if (w->format == LM_WEIGHTS_GGUF) {
        uint64_t u;
        if (lm_gguf_get_u64(w->gguf, key, &u)) return LM_ERR;
        if (u > (1ull << 40)) return lm_err("%s: key '%s' = %llu is out of range", w->path, key, (unsigned long long)u);
        *out = (int64_t)u;
        return LM_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 1e12)
        return lm_err("%s: key '%s' is not an integer", w->config_path, key);
    *out = (int64_t)v->valuedouble;
    return LM_OK;
}

lm_status lm_weights_float(const lm_weights *w, const char *key, double *out, bool required, double def) {
    const cJSON *v = NULL;
    int there = key_present(w, key, required, &v);
    if (there <= 0) { *out = def; return there; }
    if (w->format == LM_WEIGHTS_GGUF) {
        float f;
        if (lm_gguf_get_f32(w->gguf, key, &f)) return LM_ERR;
        *out = f;
        return LM_OK;
    }
    if (!cJSON_IsNumber(v)) return lm_err("%s: key '%s' is not a number", w->config_path, key);
    *out = v->valuedouble;
    return LM_OK;
}

const char *lm_weights_str(const lm_weights *w, const char *key, char *buf, size_t cap) {
    if (w->format == LM_WEIGHTS_GGUF) {
        const lm_gguf_kv *kv = lm_gguf_find(w->gguf, key);
        if (!kv || kv->type != LM_GGUF_STRING) return NULL;
        snprintf(buf, cap, "%.*s", (int)kv->strs[0].len, kv->strs[0].ptr);
        return buf;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(w->config, key);
    if (!cJSON_IsString(v)) return NULL;
    snprintf(buf, cap, "%s", v->valuestring);
    return buf;
}
