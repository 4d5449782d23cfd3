/* libFuzzer target for the GGUF reader (see README.md here).
 *
 * Parses the input with lm_gguf_open_memory and, when it is accepted, touches
 * everything a loader could: every kv through every getter, every string, every
 * tensor's bytes and its lookup by name. A crash, a sanitizer report or a leak
 * is a bug in core/gguf.c. */
#include "gguf.h"

#include <stdlib.h>
#include <string.h>

/* Reads all bytes so that ASan sees any pointer past the input. */
static volatile uint8_t g_sink;
static void touch(const void *p, uint64_t n) {
    const uint8_t *b = p;
    uint8_t x = 0;
    for (uint64_t i = 0; i < n; i++) x ^= b[i];
    g_sink ^= x;
}

static void walk_kv(const lm_gguf *g, const lm_gguf_kv *kv) {
    char key[256];
    /* keys are not NUL-terminated in the file; getters take C strings */
    uint64_t n = kv->key.len < sizeof key - 1 ? kv->key.len : sizeof key - 1;
    memcpy(key, kv->key.ptr, n);
    key[n] = 0;
    touch(kv->key.ptr, kv->key.len);
    if (lm_gguf_find(g, key) != kv && n == kv->key.len) abort(); /* lookup must agree with iteration */

    uint32_t u32; int32_t i32; uint64_t u64; float f; bool b;
    lm_gguf_str s;
    (void)lm_gguf_get_u32(g, key, &u32);
    (void)lm_gguf_get_i32(g, key, &i32);
    (void)lm_gguf_get_u64(g, key, &u64);
    (void)lm_gguf_get_f32(g, key, &f);
    (void)lm_gguf_get_bool(g, key, &b);
    if (lm_gguf_get_str(g, key, &s) == LM_OK) touch(s.ptr, s.len);

    const lm_gguf_str *strs;
    uint64_t ns;
    if (lm_gguf_get_str_arr(g, key, &strs, &ns) == LM_OK)
        for (uint64_t i = 0; i < ns; i++) touch(strs[i].ptr, strs[i].len);
    int32_t *iv;
    float *fv;
    uint64_t na;
    if (lm_gguf_get_arr_i32(g, key, &iv, &na) == LM_OK) { touch(iv, na * sizeof *iv); free(iv); }
    if (lm_gguf_get_arr_f32(g, key, &fv, &na) == LM_OK) { touch(fv, na * sizeof *fv); free(fv); }
    (void)lm_gguf_type_name(kv->type);
    (void)lm_gguf_str_eq(kv->key, "general.alignment");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lm_gguf *g = lm_gguf_open_memory(data, size, "fuzz.gguf");
    if (!g) return 0;
    (void)lm_gguf_name(g);
    (void)lm_gguf_version(g);
    (void)lm_gguf_size(g);
    (void)lm_gguf_alignment(g);
    for (int64_t i = 0; i < lm_gguf_n_kv(g); i++) walk_kv(g, lm_gguf_kv_at(g, i));
    for (int64_t i = 0; i < lm_gguf_n_tensors(g); i++) {
        const lm_gguf_tensor *t = lm_gguf_tensor_at(g, i);
        touch(t->data, t->nbytes);
        if (lm_gguf_find_tensor(g, t->name) != t) abort();
        (void)lm_dtype_name(t->type);
    }
    (void)lm_gguf_find(g, "general.architecture");
    (void)lm_gguf_find_tensor(g, "token_embd.weight");
    uint32_t v;
    (void)lm_gguf_get_u32(g, "no.such.key", &v);
    lm_gguf_close(g);
    return 0;
}
