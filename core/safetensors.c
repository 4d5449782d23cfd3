/* SafeTensors reader (see safetensors.h). The header is JSON, parsed with
 * cJSON (Debian's libcjson); nothing in it is trusted before it is checked. */
#include "safetensors.h"
#include "error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The format's own limit on the header (the reference implementation refuses more). */
#define ST_MAX_HEADER (100u << 20)

struct lm_safetensors {
    char *name;
    void *map;          /* the mmap when opened from a path */
    size_t size;
    lm_st_tensor *t;
    int64_t n;
};

static const struct { const char *name; lm_dtype dtype; int size; } st_dtypes[] = {
    {"F32", LM_F32, 4}, {"F16", LM_F16, 2}, {"BF16", LM_BF16, 2}, {"F64", LM_F64, 8},
    {"I64", LM_I64, 8}, {"I32", LM_I32, 4}, {"I16", LM_I16, 2}, {"I8", LM_I8, 1},
};

void lm_safetensors_close(lm_safetensors *st) {
    if (!st) return;
    for (int64_t i = 0; i < st->n; i++) free(st->t[i].name);
    free(st->t);
    if (st->map) munmap(st->map, st->size);
    free(st->name);
    free(st);
}

/* A JSON number that is a non-negative integer below 2^53. */
static bool json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d < 9007199254740992.0) || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

static lm_status parse_entry(lm_safetensors *st, const cJSON *e, const char *data, uint64_t data_size, lm_st_tensor *t) {
    const char *nm = e->string;
    if (!cJSON_IsObject(e)) return lm_err("%s: tensor '%s' is not a JSON object", st->name, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of))
        return lm_err("%s: tensor '%s' needs a string 'dtype' and arrays 'shape' and 'data_offsets'", st->name, nm);
    int esize = 0;
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (!strcmp(dt->valuestring, st_dtypes[i].name)) { t->dtype = st_dtypes[i].dtype; esize = st_dtypes[i].size; }
    if (!esize) return lm_err("%s: tensor '%s' has dtype '%.32s', which lumen does not read", st->name, nm, dt->valuestring);
    int nd = cJSON_GetArraySize(sh);
    if (nd > LM_ST_MAX_DIMS) return lm_err("%s: tensor '%s' has %d dimensions (at most %d)", st->name, nm, nd, LM_ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_u64(cJSON_GetArrayItem(sh, i), &d) || d > (1ull << 40))
            return lm_err("%s: tensor '%s' has an invalid shape", st->name, nm);
        t->shape[i] = (int64_t)d;
        if (d && numel > (1ull << 62) / d) return lm_err("%s: tensor '%s' is impossibly large", st->name, nm);
        numel *= d;
    }
    uint64_t b, en;
    if (cJSON_GetArraySize(of) != 2 || !json_u64(cJSON_GetArrayItem(of, 0), &b) || !json_u64(cJSON_GetArrayItem(of, 1), &en))
        return lm_err("%s: tensor '%s' has invalid data_offsets", st->name, nm);
    if (b > en || en > data_size)
        return lm_err("%s: tensor '%s' data_offsets [%llu, %llu] lie outside the data section (%llu bytes)", st->name, nm,
                      (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_size);
    if (en - b != numel * (uint64_t)esize)
        return lm_err("%s: tensor '%s' has %llu bytes of data, but dtype %s and its shape need %llu", st->name, nm,
                      (unsigned long long)(en - b), dt->valuestring, (unsigned long long)(numel * (uint64_t)esize));
    t->nbytes = en - b;
    t->data = data + b;
    t->name = strdup(nm);
    return t->name ? LM_OK : lm_err("out of memory");
}

static lm_safetensors *parse(lm_safetensors *st, const char *p, size_t size) {
    cJSON *root = NULL;
    if (size < 8) { lm_err("%s: too short for a safetensors file (%zu bytes)", st->name, size); goto fail; }
    uint64_t hlen;
    memcpy(&hlen, p, 8);
    if (hlen > ST_MAX_HEADER || hlen > size - 8) {
        lm_err("%s: the header claims %llu bytes, but the file has %zu after the length%s", st->name,
               (unsigned long long)hlen, size - 8, hlen > ST_MAX_HEADER ? " (and the format allows 100 MB)" : "");
        goto fail;
    }
    if (hlen < 2 || p[8] != '{') { lm_err("%s: the header is not a JSON object (not a safetensors file?)", st->name); goto fail; }
    root = cJSON_ParseWithLength(p + 8, (size_t)hlen);
    if (!cJSON_IsObject(root)) { lm_err("%s: the header is not valid JSON", st->name); goto fail; }
    const char *data = p + 8 + hlen;
    const uint64_t data_size = size - 8 - hlen;
    int n = cJSON_GetArraySize(root);
    st->t = calloc(n > 0 ? (size_t)n : 1, sizeof *st->t);
    if (!st->t) { lm_err("out of memory"); goto fail; }
    for (const cJSON *e = root->child; e; e = e->next) {
        if (!e->string) { lm_err("%s: header entry without a name", st->name); goto fail; }
        if (!strcmp(e->string, "__metadata__")) continue;
        if (parse_entry(st, e, data, data_size, &st->t[st->n])) goto fail;
        st->n++;
    }
    cJSON_Delete(root);
    return st;
fail:
    cJSON_Delete(root);
    lm_safetensors_close(st);
    return NULL;
}

lm_safetensors *lm_safetensors_open_memory(const void *data, size_t size, const char *name) {
    lm_safetensors *st = calloc(1, sizeof *st);
    if (!st) { lm_err("out of memory"); return NULL; }
    st->name = strdup(name ? name : "<memory>");
    st->size = size;
    return parse(st, data, size);
}

lm_safetensors *lm_safetensors_open(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { lm_err("%s: cannot open (%s)", path, strerror(errno)); return NULL; }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        lm_err("%s: not a regular file", path);
        return NULL;
    }
    size_t size = (size_t)sb.st_size;
    void *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) { lm_err("%s: cannot mmap (%s)", path, strerror(map_errno)); return NULL; }
    lm_safetensors *st = calloc(1, sizeof *st);
    if (!st) { if (map) munmap(map, size); lm_err("out of memory"); return NULL; }
    st->name = strdup(path);
    st->map = map;
    st->size = size;
    return parse(st, map ? map : "", size);
}

int64_t lm_safetensors_n_tensors(const lm_safetensors *st) { return st->n; }
uint64_t lm_safetensors_size(const lm_safetensors *st) { return st->size; }

const lm_st_tensor *lm_safetensors_tensor_at(const lm_safetensors *st, int64_t i) {
    return i >= 0 && i < st->n ? &st->t[i] : NULL;
}

/* A BERT checkpoint has ~100 tensors, looked up once each at load: a scan will do. */
const lm_st_tensor *lm_safetensors_find(const lm_safetensors *st, const char *name) {
    for (int64_t i = 0; i < st->n; i++)
        if (!strcmp(st->t[i].name, name)) return &st->t[i];
    return NULL;
}
