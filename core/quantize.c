/* `lumen quantize`: requantize a GGUF model's weight matrices. Each matrix is
 * dequantized row by row to f32 and quantized with the target format's
 * reference quantizer (the same recipes as llama.cpp's), split across threads. */
#include "gguf.h"
#include "error.h"
#include "pool.h"
#include "quant.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t gguf_scalar_size(lm_gguf_type t) {
    switch (t) {
    case LM_GGUF_U8: case LM_GGUF_I8: case LM_GGUF_BOOL: return 1;
    case LM_GGUF_U16: case LM_GGUF_I16: return 2;
    case LM_GGUF_U32: case LM_GGUF_I32: case LM_GGUF_F32: return 4;
    case LM_GGUF_U64: case LM_GGUF_I64: case LM_GGUF_F64: return 8;
    default: return 0;
    }
}

static bool put(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n; }
static bool put_u32(FILE *f, uint32_t v) { return put(f, &v, 4); }
static bool put_u64(FILE *f, uint64_t v) { return put(f, &v, 8); }
static bool put_str(FILE *f, lm_gguf_str s) { return put_u64(f, s.len) && put(f, s.ptr, s.len); }

static bool put_kv(FILE *f, const lm_gguf_kv *kv, int file_type) {
    if (!put_str(f, kv->key) || !put_u32(f, kv->type)) return false;
    if (lm_gguf_str_eq(kv->key, "general.file_type") && kv->type == LM_GGUF_U32) return put_u32(f, (uint32_t)file_type);
    if (kv->type == LM_GGUF_STRING) return put_str(f, kv->strs[0]);
    if (kv->type != LM_GGUF_ARRAY) return put(f, kv->data, gguf_scalar_size(kv->type));
    if (!put_u32(f, kv->arr_type) || !put_u64(f, kv->arr_n)) return false;
    if (kv->arr_type == LM_GGUF_STRING) {
        for (uint64_t i = 0; i < kv->arr_n; i++) if (!put_str(f, kv->strs[i])) return false;
        return true;
    }
    return put(f, kv->data, gguf_scalar_size(kv->arr_type) * kv->arr_n);
}

bool lm_quantize_supports(int dtype) {
    const lm_quant_entry *r = lm_type_row(dtype);
    return r && r->from_float[LM_ISA_SCALAR] && r->file_type >= 0;
}

static bool is_matrix(const lm_gguf_tensor *t) {
    return t->n_dims == 2 && t->ne[1] > 1 && strstr(t->name, "norm") == NULL;
}

typedef struct {
    const lm_gguf_tensor *t;
    int dst_type;
    char *out;
    size_t out_row;
    lm_status st;
} qjob;

static void quantize_rows(void *vctx, int ith, int nth) {
    qjob *j = vctx;
    const lm_gguf_tensor *t = j->t;
    const int64_t n = t->ne[0], rows = t->nbytes / lm_dtype_row_size(t->type, n);
    const size_t in_row = lm_dtype_row_size(t->type, n);
    const lm_quant_entry *src = lm_quant_entry_get(t->type), *dst = lm_quant_entry_get(j->dst_type);
    float *tmp = malloc((size_t)n * sizeof *tmp);
    if (!tmp) { j->st = LM_ERR; return; }
    int64_t lo, hi;
    lm_pool_split(rows, 1, ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        src->to_float[LM_ISA_SCALAR]((const char *)t->data + r * in_row, tmp, n);
        dst->from_float[LM_ISA_SCALAR](tmp, j->out + r * j->out_row, n);
    }
    free(tmp);
}

lm_status lm_quantize_file(const char *in, const char *out, int dtype, int n_threads) {
    lm_kernels_init();
    if (!lm_quantize_supports(dtype)) {
        char names[256] = "";
        for (int t = 0; t < LM_DTYPE_COUNT; t++)
            if (lm_quantize_supports(t)) {
                if (*names) strncat(names, " ", sizeof names - strlen(names) - 1);
                strncat(names, lm_dtype_name(t), sizeof names - strlen(names) - 1);
            }
        return lm_err("quantize: cannot quantize to %s (choose one of: %s)",
                      lm_dtype_name(dtype) ? lm_dtype_name(dtype) : "an unknown type", names);
    }
    const int file_type = lm_type_row(dtype)->file_type;
    if (!in || !out) return lm_err("quantize: input or output path is NULL");
    lm_gguf *g = lm_gguf_open(in);
    if (!g) return LM_ERR;
    const int64_t nt = lm_gguf_n_tensors(g);
    int *types = calloc((size_t)(nt ? nt : 1), sizeof *types);
    if (!types) { lm_gguf_close(g); return lm_err("out of memory"); }
    for (int64_t i = 0; i < nt; i++) {
        const lm_gguf_tensor *t = lm_gguf_tensor_at(g, i);
        types[i] = t->type;
        const lm_quant_entry *src = lm_quant_entry_get(t->type);
        if (is_matrix(t) && t->ne[0] % lm_dtype_block_size(dtype) == 0 && src && src->to_float[LM_ISA_SCALAR]) types[i] = dtype;
    }

    char tmp_path[4096];
    snprintf(tmp_path, sizeof tmp_path, "%s.part", out);
    FILE *f = fopen(tmp_path, "wb");
    lm_status st = LM_OK;
    if (!f) { st = lm_err("quantize: cannot write '%s': %s", tmp_path, strerror(errno)); goto done; }
    const uint32_t align = lm_gguf_alignment(g);
    bool ok = put(f, "GGUF", 4) && put_u32(f, 3) && put_u64(f, (uint64_t)nt) && put_u64(f, (uint64_t)lm_gguf_n_kv(g));
    for (int64_t i = 0; ok && i < lm_gguf_n_kv(g); i++) ok = put_kv(f, lm_gguf_kv_at(g, i), file_type);
    uint64_t off = 0;
    for (int64_t i = 0; ok && i < nt; i++) {
        const lm_gguf_tensor *t = lm_gguf_tensor_at(g, i);
        lm_gguf_str name = {t->name, strlen(t->name)};
        ok = put_str(f, name) && put_u32(f, t->n_dims);
        for (uint32_t d = 0; ok && d < t->n_dims; d++) ok = put_u64(f, (uint64_t)t->ne[d]);
        size_t bytes = lm_dtype_row_size(types[i], t->ne[0]) * (size_t)(t->nbytes / lm_dtype_row_size(t->type, t->ne[0]));
        ok = ok && put_u32(f, (uint32_t)types[i]) && put_u64(f, off);
        off += (bytes + align - 1) / align * align;
    }
    static const char zeros[256];
    long pos = ftell(f);
    if (ok && pos % align) ok = put(f, zeros, align - pos % align);

    lm_pool *pool = lm_pool_new(n_threads);
    if (!pool) ok = false;
    for (int64_t i = 0; ok && i < nt; i++) {
        const lm_gguf_tensor *t = lm_gguf_tensor_at(g, i);
        size_t rows = t->nbytes / lm_dtype_row_size(t->type, t->ne[0]);
        size_t bytes = lm_dtype_row_size(types[i], t->ne[0]) * rows;
        if (types[i] == (int)t->type) {
            ok = put(f, t->data, bytes);
        } else {
            char *buf = malloc(bytes);
            if (!buf) { st = lm_err("out of memory"); ok = false; break; }
            qjob j = {t, types[i], buf, lm_dtype_row_size(types[i], t->ne[0]), LM_OK};
            lm_pool_run(pool, quantize_rows, &j);
            ok = j.st == LM_OK && put(f, buf, bytes);
            free(buf);
        }
        if (ok && bytes % align) ok = put(f, zeros, align - bytes % align);
    }
    lm_pool_free(pool);
    if (fclose(f) != 0) ok = false;
    if (!ok || rename(tmp_path, out) != 0) {
        if (!st) st = lm_err("quantize: writing '%s' failed: %s", out, strerror(errno));
        remove(tmp_path);
    }
done:
    free(types);
    lm_gguf_close(g);
    return st;
}
