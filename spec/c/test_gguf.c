/* The GGUF reader: valid files read back exactly, every malformed file is
 * rejected with a message naming the problem, and no prefix of a valid file
 * is accepted. The files are built in memory by the small writer below.
 *
 * `test_gguf --seeds DIR` writes the valid files as seeds for spec/fuzz/fuzz_gguf. */
#include "gguf.h"
#include "error.h"
#include "testutil.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- a tiny GGUF writer ------------------------------------------------------- */

typedef struct { uint8_t *p; size_t n, cap; } buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) { fprintf(stderr, "out of memory\n"); exit(2); }
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_u8(buf *b, uint8_t v) { put(b, &v, 1); }
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s) { put_u64(b, strlen(s)); put(b, s, strlen(s)); }
static void pad(buf *b, size_t align) { while (b->n % align) put_u8(b, 0); }

static void header(buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b->n = 0;
    put(b, "GGUF", 4);
    put_u32(b, version);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}
static void key(buf *b, const char *k, uint32_t type) { put_str(b, k); put_u32(b, type); }
static void kv_u32(buf *b, const char *k, uint32_t v) { key(b, k, LM_GGUF_U32); put_u32(b, v); }
static void kv_str(buf *b, const char *k, const char *v) { key(b, k, LM_GGUF_STRING); put_str(b, v); }
static void array(buf *b, const char *k, uint32_t type, uint64_t n) {
    key(b, k, LM_GGUF_ARRAY);
    put_u32(b, type);
    put_u64(b, n);
}
static void tensor_info(buf *b, const char *name, uint32_t n_dims, const int64_t *ne, uint32_t type, uint64_t offset) {
    put_str(b, name);
    put_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) put_u64(b, (uint64_t)ne[i]);
    put_u32(b, type);
    put_u64(b, offset);
}
/* Padding, then nbytes of data (byte k = k & 0xff). */
static void data_section(buf *b, size_t align, size_t nbytes) {
    pad(b, align);
    for (size_t k = 0; k < nbytes; k++) put_u8(b, (uint8_t)k);
}

/* The reference file: every scalar type, string and numeric arrays, an f32 and a
 * q8_0 tensor. alignment 0: no general.alignment key (default 32). No padding
 * after the last tensor, so every proper prefix is invalid. */
#define N_KV_BASE 18
static const float F32_DATA_SCALE = 0.5f;
static size_t g_data_start; /* of the last build_valid */

static void build_valid(buf *b, uint32_t version, uint32_t alignment) {
    header(b, version, 2, N_KV_BASE + (alignment != 0));
    kv_str(b, "general.architecture", "llama");
    key(b, "t.u8", LM_GGUF_U8); put_u8(b, 200);
    key(b, "t.i8", LM_GGUF_I8); put_u8(b, (uint8_t)-5);
    key(b, "t.u16", LM_GGUF_U16); uint16_t u16 = 60000; put(b, &u16, 2);
    key(b, "t.i16", LM_GGUF_I16); int16_t i16 = -30000; put(b, &i16, 2);
    kv_u32(b, "t.u32", 4000000000u);
    key(b, "t.i32", LM_GGUF_I32); int32_t i32 = -2000000000; put(b, &i32, 4);
    key(b, "t.f32", LM_GGUF_F32); float f32 = 1.5f; put(b, &f32, 4);
    key(b, "t.bool", LM_GGUF_BOOL); put_u8(b, 1);
    kv_str(b, "t.str", "hello");
    key(b, "t.u64", LM_GGUF_U64); put_u64(b, (1ull << 63) + 5);
    key(b, "t.i64", LM_GGUF_I64); put_u64(b, (uint64_t)-(int64_t)(1ll << 40));
    key(b, "t.f64", LM_GGUF_F64); double f64 = 0.25; put(b, &f64, 8);
    array(b, "t.strs", LM_GGUF_STRING, 3); put_str(b, "a"); put_str(b, "bc"); put_str(b, "");
    array(b, "t.i32s", LM_GGUF_I32, 3);
    int32_t i32s[3] = {1, -2, 3}; put(b, i32s, sizeof i32s);
    array(b, "t.f32s", LM_GGUF_F32, 2);
    float f32s[2] = {0.5f, -1.0f}; put(b, f32s, sizeof f32s);
    array(b, "t.u8s", LM_GGUF_U8, 2); put_u8(b, 7); put_u8(b, 8);
    array(b, "t.u32s", LM_GGUF_U32, 2); put_u32(b, 1); put_u32(b, 3000000000u);
    if (alignment) kv_u32(b, "general.alignment", alignment);
    size_t align = alignment ? alignment : 32;
    size_t off1 = (80 + align - 1) / align * align;
    tensor_info(b, "tok.weight", 2, (int64_t[]){4, 5}, LM_F32, 0);
    tensor_info(b, "blk.0.w", 2, (int64_t[]){64, 2}, LM_Q8_0, off1);
    pad(b, align);
    g_data_start = b->n;
    for (int i = 0; i < 20; i++) { float v = (float)i * F32_DATA_SCALE; put(b, &v, 4); }
    pad(b, align);
    for (int k = 0; k < 136; k++) put_u8(b, (uint8_t)(k * 7));
}

static lm_gguf *open_buf(const buf *b) { return lm_gguf_open_memory(b->p, b->n, "t.gguf"); }

/* Checks that b is rejected with a message containing every word (NULL-terminated list). */
static void expect_err_at(int line, const buf *b, ...) {
    lm_gguf *g = open_buf(b);
    CHECK(g == NULL, "line %d: the file was accepted", line);
    lm_gguf_close(g);
    const char *msg = lm_last_error();
    if (getenv("GGUF_TEST_VERBOSE")) printf("%s\n", msg);
    va_list ap;
    va_start(ap, b);
    for (const char *w; (w = va_arg(ap, const char *));)
        CHECK(strstr(msg, w) != NULL, "line %d: message '%s' lacks '%s'", line, msg, w);
    va_end(ap);
}
#define EXPECT_ERR(b, ...) expect_err_at(__LINE__, b, __VA_ARGS__, (const char *)NULL)

static bool str_is(lm_gguf_str s, const char *z) { return lm_gguf_str_eq(s, z); }

/* ---- valid files -------------------------------------------------------------- */

static void check_valid(lm_gguf *g, const uint8_t *base, uint32_t version, uint32_t alignment) {
    CHECK(g != NULL, "open failed: %s", lm_last_error());
    if (!g) return;
    CHECK(lm_gguf_version(g) == version, "version %u", lm_gguf_version(g));
    CHECK(lm_gguf_alignment(g) == (alignment ? alignment : 32), "alignment %u", lm_gguf_alignment(g));
    CHECK(lm_gguf_n_kv(g) == N_KV_BASE + (alignment != 0), "n_kv %lld", (long long)lm_gguf_n_kv(g));
    CHECK(lm_gguf_kv_at(g, -1) == NULL && lm_gguf_kv_at(g, lm_gguf_n_kv(g)) == NULL, "kv_at out of range");
    const lm_gguf_kv *kv0 = lm_gguf_kv_at(g, 0);
    CHECK(kv0 && str_is(kv0->key, "general.architecture") && kv0->type == LM_GGUF_STRING, "kv 0");

    uint32_t u32 = 0; int32_t i32 = 0; uint64_t u64 = 0; float f = 0; bool bl = false;
    lm_gguf_str s = {0};
    CHECK(lm_gguf_get_u32(g, "t.u8", &u32) == LM_OK && u32 == 200, "u8 -> u32");
    CHECK(lm_gguf_get_i32(g, "t.i8", &i32) == LM_OK && i32 == -5, "i8 -> i32");
    CHECK(lm_gguf_get_u32(g, "t.u16", &u32) == LM_OK && u32 == 60000, "u16");
    CHECK(lm_gguf_get_i32(g, "t.i16", &i32) == LM_OK && i32 == -30000, "i16");
    CHECK(lm_gguf_get_u32(g, "t.u32", &u32) == LM_OK && u32 == 4000000000u, "u32");
    CHECK(lm_gguf_get_i32(g, "t.i32", &i32) == LM_OK && i32 == -2000000000, "i32");
    CHECK(lm_gguf_get_f32(g, "t.f32", &f) == LM_OK && f == 1.5f, "f32");
    CHECK(lm_gguf_get_bool(g, "t.bool", &bl) == LM_OK && bl, "bool");
    CHECK(lm_gguf_get_str(g, "t.str", &s) == LM_OK && str_is(s, "hello"), "str");
    CHECK(lm_gguf_get_u64(g, "t.u64", &u64) == LM_OK && u64 == (1ull << 63) + 5, "u64");
    CHECK(lm_gguf_get_u64(g, "t.u32", &u64) == LM_OK && u64 == 4000000000u, "u32 -> u64");
    CHECK(lm_gguf_get_f32(g, "t.f64", &f) == LM_OK && f == 0.25f, "f64 -> f32");
    CHECK(lm_gguf_get_str(g, "general.architecture", &s) == LM_OK && str_is(s, "llama"), "architecture");

    /* values that do not fit, wrong types, missing keys */
    u32 = 77;
    CHECK(lm_gguf_get_u32(g, "t.i8", &u32) == LM_ERR && u32 == 77, "negative into u32");
    CHECK(strstr(lm_last_error(), "t.gguf: key 't.i8' = -5 does not fit in u32"), "%s", lm_last_error());
    CHECK(lm_gguf_get_i32(g, "t.u32", &i32) == LM_ERR, "4e9 into i32");
    CHECK(lm_gguf_get_i32(g, "t.i64", &i32) == LM_ERR, "-2^40 into i32");
    CHECK(lm_gguf_get_u64(g, "t.i64", &u64) == LM_ERR, "negative into u64");
    CHECK(lm_gguf_get_u32(g, "t.u64", &u32) == LM_ERR, "2^63 into u32");
    CHECK(lm_gguf_get_f32(g, "t.u32", &f) == LM_ERR, "u32 as f32");
    CHECK(strstr(lm_last_error(), "t.gguf: key 't.u32' has type u32, expected f32"), "%s", lm_last_error());
    CHECK(lm_gguf_get_u32(g, "t.f32", &u32) == LM_ERR, "f32 as u32");
    CHECK(lm_gguf_get_u32(g, "t.str", &u32) == LM_ERR, "string as u32");
    CHECK(lm_gguf_get_bool(g, "t.u8", &bl) == LM_ERR, "u8 as bool");
    CHECK(lm_gguf_get_str(g, "t.strs", &s) == LM_ERR, "string array as string");
    CHECK(strstr(lm_last_error(), "has type array[string], expected string"), "%s", lm_last_error());
    CHECK(lm_gguf_get_u32(g, "nope", &u32) == LM_ERR, "missing key");
    CHECK(strcmp(lm_last_error(), "t.gguf: missing key 'nope'") == 0, "%s", lm_last_error());
    CHECK(lm_gguf_find(g, "nope") == NULL && lm_gguf_find(g, "t.u") == NULL && lm_gguf_find(g, "") == NULL, "find");

    /* arrays */
    const lm_gguf_str *strs = NULL;
    uint64_t n = 0;
    CHECK(lm_gguf_get_str_arr(g, "t.strs", &strs, &n) == LM_OK && n == 3, "string array");
    if (n == 3) CHECK(str_is(strs[0], "a") && str_is(strs[1], "bc") && str_is(strs[2], ""), "string array items");
    CHECK(lm_gguf_get_str_arr(g, "t.i32s", &strs, &n) == LM_ERR, "i32 array as strings");
    CHECK(strstr(lm_last_error(), "key 't.i32s' has type array[i32], expected array[string]"), "%s", lm_last_error());
    int32_t *iv = NULL;
    CHECK(lm_gguf_get_arr_i32(g, "t.i32s", &iv, &n) == LM_OK && n == 3 && iv[0] == 1 && iv[1] == -2 && iv[2] == 3,
          "i32 array");
    free(iv); iv = NULL;
    CHECK(lm_gguf_get_arr_i32(g, "t.u8s", &iv, &n) == LM_OK && n == 2 && iv[0] == 7 && iv[1] == 8, "u8 array as i32");
    free(iv); iv = NULL;
    CHECK(lm_gguf_get_arr_i32(g, "t.u32s", &iv, &n) == LM_ERR && iv == NULL, "3e9 in an i32 array");
    CHECK(strstr(lm_last_error(), "element 1 = 3000000000 does not fit in i32"), "%s", lm_last_error());
    CHECK(lm_gguf_get_arr_i32(g, "t.f32s", &iv, &n) == LM_ERR, "f32 array as i32");
    CHECK(lm_gguf_get_arr_i32(g, "t.u32", &iv, &n) == LM_ERR, "scalar as array");
    float *fv = NULL;
    CHECK(lm_gguf_get_arr_f32(g, "t.f32s", &fv, &n) == LM_OK && n == 2 && fv[0] == 0.5f && fv[1] == -1.0f, "f32 array");
    free(fv); fv = NULL;
    CHECK(lm_gguf_get_arr_f32(g, "t.i32s", &fv, &n) == LM_OK && n == 3 && fv[1] == -2.0f, "i32 array as f32");
    free(fv); fv = NULL;
    CHECK(lm_gguf_get_arr_f32(g, "t.strs", &fv, &n) == LM_ERR, "string array as f32");
    const lm_gguf_kv *kv = lm_gguf_find(g, "t.strs");
    CHECK(kv && kv->type == LM_GGUF_ARRAY && kv->arr_type == LM_GGUF_STRING && kv->arr_n == 3, "string array kv");
    kv = lm_gguf_find(g, "t.u16");
    uint16_t raw16 = 0;
    if (kv) memcpy(&raw16, kv->data, 2);
    CHECK(kv && kv->type == LM_GGUF_U16 && raw16 == 60000, "raw u16 data");

    /* tensors */
    CHECK(lm_gguf_n_tensors(g) == 2, "n_tensors %lld", (long long)lm_gguf_n_tensors(g));
    CHECK(lm_gguf_tensor_at(g, 2) == NULL && lm_gguf_tensor_at(g, -1) == NULL, "tensor_at out of range");
    CHECK(lm_gguf_find_tensor(g, "nope") == NULL && lm_gguf_find_tensor(g, "blk.0") == NULL, "find_tensor absent");
    const lm_gguf_tensor *t = lm_gguf_find_tensor(g, "tok.weight");
    CHECK(t && t == lm_gguf_tensor_at(g, 0), "tok.weight");
    if (t) {
        CHECK(t->type == LM_F32 && t->n_dims == 2 && t->ne[0] == 4 && t->ne[1] == 5 && t->ne[2] == 1 && t->ne[3] == 1,
              "tok.weight shape");
        CHECK(t->offset == 0 && t->nbytes == 80, "tok.weight offset/size");
        CHECK((const uint8_t *)t->data == base + g_data_start, "tok.weight data");
        float v;
        memcpy(&v, (const char *)t->data + 7 * 4, 4);
        CHECK(v == 7 * F32_DATA_SCALE, "tok.weight[7] = %g", v);
    }
    t = lm_gguf_find_tensor(g, "blk.0.w");
    CHECK(t && t == lm_gguf_tensor_at(g, 1), "blk.0.w");
    if (t) {
        uint32_t a = alignment ? alignment : 32;
        CHECK(t->type == LM_Q8_0 && t->n_dims == 2 && t->ne[0] == 64 && t->ne[1] == 2, "blk.0.w shape");
        CHECK(t->nbytes == 136 && t->offset == (80 + a - 1) / a * a, "blk.0.w offset %llu", (unsigned long long)t->offset);
        CHECK(((const uint8_t *)t->data - base) % a == 0, "blk.0.w aligned");
        CHECK(((const uint8_t *)t->data)[135] == (uint8_t)(135 * 7), "blk.0.w last byte");
    }
}

static void test_valid(void) {
    buf b = {0};
    const uint32_t versions[] = {3, 2}, aligns[] = {0, 32, 64, 128};
    for (int v = 0; v < 2; v++)
        for (int a = 0; a < 4; a++) {
            build_valid(&b, versions[v], aligns[a]);
            lm_gguf *g = open_buf(&b);
            check_valid(g, b.p, versions[v], aligns[a]);
            lm_gguf_close(g);
        }
    lm_gguf_close(NULL);
    free(b.p);
}

/* Through the file system: mmap, and data aligned in memory too. */
static void test_open_file(void) {
    buf b = {0};
    build_valid(&b, 3, 64);
    char path[] = "/tmp/lumen_test_gguf_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp: %s", strerror(errno));
    if (fd < 0) { free(b.p); return; }
    CHECK(write(fd, b.p, b.n) == (ssize_t)b.n, "write");
    close(fd);
    lm_gguf *g = lm_gguf_open(path);
    CHECK(g != NULL, "open %s: %s", path, lm_last_error());
    if (g) {
        CHECK(strcmp(lm_gguf_name(g), path) == 0 && lm_gguf_size(g) == b.n, "name/size");
        const lm_gguf_tensor *t = lm_gguf_find_tensor(g, "blk.0.w");
        CHECK(t && (uintptr_t)t->data % 64 == 0, "tensor data aligned in the mapping");
        CHECK(t && memcmp(t->data, b.p + g_data_start + t->offset, t->nbytes) == 0, "mapped contents");
    }
    lm_gguf_close(g);

    /* a truncated file names the path */
    CHECK(truncate(path, (off_t)b.n - 1) == 0, "truncate");
    g = lm_gguf_open(path);
    CHECK(g == NULL && strstr(lm_last_error(), path) && strstr(lm_last_error(), "outside the file"), "%s", lm_last_error());
    lm_gguf_close(g);
    CHECK(truncate(path, 0) == 0, "truncate");
    g = lm_gguf_open(path);
    CHECK(g == NULL && strstr(lm_last_error(), path) && strstr(lm_last_error(), "empty"), "%s", lm_last_error());
    unlink(path);

    g = lm_gguf_open("/nonexistent/lumen/model.gguf");
    CHECK(g == NULL, "missing file opened");
    CHECK(strstr(lm_last_error(), "/nonexistent/lumen/model.gguf") && strstr(lm_last_error(), "No such file"),
          "%s", lm_last_error());
    g = lm_gguf_open("/tmp");
    CHECK(g == NULL && strstr(lm_last_error(), "/tmp: not a regular file"), "%s", lm_last_error());
    g = lm_gguf_open("");
    CHECK(g == NULL, "empty path");
    free(b.p);
}

/* Every proper prefix of a valid file fails cleanly. Each prefix gets a heap
 * buffer of exactly its size, so AddressSanitizer catches any read past the end. */
static void test_truncation(void) {
    buf b = {0};
    build_valid(&b, 3, 64);
    int accepted = 0, silent = 0;
    for (size_t n = 0; n < b.n; n++) {
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, b.p, n);
        lm_clear_error();
        lm_gguf *g = lm_gguf_open_memory(p, n, "t.gguf");
        if (g) accepted++;
        else if (strncmp(lm_last_error(), "t.gguf: ", 8) != 0) silent++;
        lm_gguf_close(g);
        free(p);
    }
    CHECK(accepted == 0, "%d of %zu prefixes accepted", accepted, b.n);
    CHECK(silent == 0, "%d prefixes failed without a message naming the file", silent);
    free(b.p);
}

/* Every byte of a valid file replaced by a few values: whatever is accepted must
 * be safe to walk (a cheap, deterministic cousin of spec/fuzz/fuzz_gguf). */
static void test_mutations(void) {
    buf b = {0};
    build_valid(&b, 3, 64);
    uint8_t *p = malloc(b.n);
    int accepted = 0, unnamed = 0;
    for (size_t i = 0; i < b.n; i++) {
        const uint8_t orig = b.p[i], subst[] = {0, 0xff, (uint8_t)(orig ^ 0x80), (uint8_t)(orig + 1)};
        for (int k = 0; k < 4; k++) {
            memcpy(p, b.p, b.n);
            p[i] = subst[k];
            lm_gguf *g = lm_gguf_open_memory(p, b.n, "t.gguf");
            if (!g) { unnamed += strncmp(lm_last_error(), "t.gguf: ", 8) != 0; continue; }
            accepted++;
            unsigned sum = 0;
            for (int64_t t = 0; t < lm_gguf_n_tensors(g); t++) {
                const lm_gguf_tensor *ti = lm_gguf_tensor_at(g, t);
                for (uint64_t j = 0; j < ti->nbytes; j++) sum += ((const uint8_t *)ti->data)[j];
            }
            for (int64_t j = 0; j < lm_gguf_n_kv(g); j++) {
                const lm_gguf_kv *kv = lm_gguf_kv_at(g, j);
                uint64_t n = kv->type == LM_GGUF_STRING ? 1
                           : kv->type == LM_GGUF_ARRAY && kv->arr_type == LM_GGUF_STRING ? kv->arr_n : 0;
                for (uint64_t m = 0; m < n; m++)
                    for (uint64_t c = 0; c < kv->strs[m].len; c++) sum += (uint8_t)kv->strs[m].ptr[c];
            }
            (void)sum;
            lm_gguf_close(g);
        }
    }
    CHECK(accepted > 0 && unnamed == 0, "%d mutants accepted, %d errors without the file name", accepted, unnamed);
    free(p);
    free(b.p);
}

/* ---- malformed files ---------------------------------------------------------- */

static void test_header_errors(void) {
    buf b = {0};
    header(&b, 3, 0, 0);
    memcpy(b.p, "ABCD", 4);
    EXPECT_ERR(&b, "t.gguf: not a GGUF file", "bad magic 'ABCD'");
    memcpy(b.p, "GG\x01\xff", 4);
    EXPECT_ERR(&b, "bad magic 'GG\\x01\\xff'");
    b.n = 3; memcpy(b.p, "GGU", 3);
    EXPECT_ERR(&b, "not a GGUF file", "bad magic 'GGU'");
    b.n = 0;
    EXPECT_ERR(&b, "not a GGUF file", "empty");
    header(&b, 3, 0, 0); b.n = 12;
    EXPECT_ERR(&b, "truncated", "header");
    header(&b, 1, 0, 0);
    EXPECT_ERR(&b, "t.gguf: GGUF version 1 is not supported");
    header(&b, 4, 0, 0);
    EXPECT_ERR(&b, "unsupported GGUF version 4");
    header(&b, 0x03000000, 0, 0);
    EXPECT_ERR(&b, "big-endian");
    header(&b, 3, 0, 1000000000000000ull);
    EXPECT_ERR(&b, "key/value count 1000000000000000 is impossible");
    header(&b, 3, UINT64_MAX, 0);
    EXPECT_ERR(&b, "tensor count 18446744073709551615 is impossible");
    header(&b, 3, 3, 0); /* 3 tensor infos need at least 75 bytes */
    put_u64(&b, 0); put_u64(&b, 0);
    EXPECT_ERR(&b, "tensor count 3 is impossible");
    /* the smallest valid file: no kvs, no tensors */
    header(&b, 3, 0, 0);
    lm_gguf *g = open_buf(&b);
    CHECK(g && lm_gguf_n_kv(g) == 0 && lm_gguf_n_tensors(g) == 0 && lm_gguf_alignment(g) == 32,
          "empty GGUF: %s", lm_last_error());
    lm_gguf_close(g);
    free(b.p);
}

static void test_kv_errors(void) {
    buf b = {0};
    header(&b, 3, 0, 1); kv_u32(&b, "", 1);
    EXPECT_ERR(&b, "key/value 0 has an empty key");
    header(&b, 3, 0, 1); put_u64(&b, 3); put(&b, "a\0b", 3); put_u32(&b, LM_GGUF_U8); put_u8(&b, 1);
    EXPECT_ERR(&b, "NUL byte");
    header(&b, 3, 0, 3); kv_u32(&b, "a", 1); kv_u32(&b, "b", 2); kv_u32(&b, "a", 3);
    EXPECT_ERR(&b, "t.gguf: duplicate key 'a'");
    header(&b, 3, 0, 1); key(&b, "k", 13); put_u64(&b, 0);
    EXPECT_ERR(&b, "key 'k' has unknown value type 13");
    header(&b, 3, 0, 1); key(&b, "k", 0xffffffffu); put_u64(&b, 0);
    EXPECT_ERR(&b, "unknown value type 4294967295");
    header(&b, 3, 0, 1); array(&b, "k", 99, 0); put_u64(&b, 0);
    EXPECT_ERR(&b, "array of unknown value type 99");
    header(&b, 3, 0, 1); array(&b, "k", LM_GGUF_ARRAY, 1); put_u32(&b, LM_GGUF_U8); put_u64(&b, 1); put_u8(&b, 1);
    EXPECT_ERR(&b, "key 'k'", "nested arrays");
    header(&b, 3, 0, 1); array(&b, "k", LM_GGUF_U32, 1ull << 61); put_u64(&b, 0);
    EXPECT_ERR(&b, "key 'k'", "array of 2305843009213693952 u32 values cannot fit in the remaining 8 bytes");
    header(&b, 3, 0, 1); array(&b, "k", LM_GGUF_U64, UINT64_MAX); put_u64(&b, 0);
    EXPECT_ERR(&b, "cannot fit");
    header(&b, 3, 0, 1); array(&b, "tokenizer.ggml.tokens", LM_GGUF_STRING, 1000000000); put_str(&b, "x");
    EXPECT_ERR(&b, "'tokenizer.ggml.tokens'", "array of 1000000000 string values cannot fit");
    /* two strings promised, one present */
    header(&b, 3, 0, 2); kv_u32(&b, "a", 1);
    array(&b, "tokenizer.ggml.merges", LM_GGUF_STRING, 2); put_str(&b, "h e"); put_u64(&b, 100); put_u32(&b, 0);
    EXPECT_ERR(&b, "t.gguf: truncated: key/value 1 ('tokenizer.ggml.merges') runs past the end of the file");
    header(&b, 3, 0, 1); key(&b, "s", LM_GGUF_STRING); put_u64(&b, 1000); put(&b, "abcdefgh", 8);
    EXPECT_ERR(&b, "truncated: key/value 0 ('s') runs past the end");
    header(&b, 3, 0, 1); put_u64(&b, 1ull << 40); put(&b, "abcdefgh", 8);
    EXPECT_ERR(&b, "truncated: key/value 0 runs past the end");
    header(&b, 3, 0, 1); key(&b, "k", LM_GGUF_U64); put_u32(&b, 0); put_u8(&b, 0);
    EXPECT_ERR(&b, "truncated: key/value 0 ('k')");
    /* long keys are shown shortened */
    char longkey[201];
    memset(longkey, 'x', 200); longkey[200] = 0;
    header(&b, 3, 0, 1); key(&b, longkey, 13);
    EXPECT_ERR(&b, "xxx...' has unknown value type 13");
    CHECK(strlen(lm_last_error()) < 150, "long key not shortened: %s", lm_last_error());

    /* general.alignment */
    const uint32_t bad[] = {0, 48, 3, 0x80000001u};
    for (int i = 0; i < 4; i++) {
        header(&b, 3, 0, 1); kv_u32(&b, "general.alignment", bad[i]);
        EXPECT_ERR(&b, "general.alignment", "not a nonzero power of two");
    }
    header(&b, 3, 0, 1); kv_str(&b, "general.alignment", "32");
    EXPECT_ERR(&b, "key 'general.alignment' has type string, expected u32");
    header(&b, 3, 0, 1); key(&b, "general.alignment", LM_GGUF_U64); put_u64(&b, 32);
    EXPECT_ERR(&b, "has type u64, expected u32");
    free(b.p);
}

/* A file with one tensor: (name, n_dims, ne, type, offset) then data_bytes of data. */
static void one_tensor(buf *b, const char *name, uint32_t n_dims, const int64_t *ne, uint32_t type,
                       uint64_t offset, size_t data_bytes) {
    header(b, 3, 1, 0);
    tensor_info(b, name, n_dims, ne, type, offset);
    data_section(b, 32, data_bytes);
}

static void test_tensor_errors(void) {
    buf b = {0};
    const int64_t ne4[] = {4, 1, 1, 1};
    /* a correct one first, so the cases below differ from it in one thing */
    one_tensor(&b, "w", 1, ne4, LM_F32, 0, 16);
    lm_gguf *g = open_buf(&b);
    CHECK(g && lm_gguf_n_tensors(g) == 1 && lm_gguf_find_tensor(g, "w")->nbytes == 16, "one tensor: %s", lm_last_error());
    lm_gguf_close(g);

    one_tensor(&b, "", 1, ne4, LM_F32, 0, 16);
    EXPECT_ERR(&b, "tensor 0 has an empty name");
    char name[80];
    memset(name, 'n', 64); name[64] = 0;
    one_tensor(&b, name, 1, ne4, LM_F32, 0, 16);
    g = open_buf(&b);
    CHECK(g && lm_gguf_find_tensor(g, name), "64-byte name: %s", lm_last_error());
    lm_gguf_close(g);
    strcat(name, "n");
    one_tensor(&b, name, 1, ne4, LM_F32, 0, 16);
    EXPECT_ERR(&b, "tensor 0 has a name of 65 bytes (at most 64)");
    header(&b, 3, 1, 0); put_u64(&b, 3); put(&b, "a\0b", 3);
    put_u32(&b, 1); put_u64(&b, 4); put_u32(&b, LM_F32); put_u64(&b, 0); data_section(&b, 32, 16);
    EXPECT_ERR(&b, "tensor 0 has a name containing a NUL byte");

    header(&b, 3, 3, 0);
    tensor_info(&b, "a", 1, ne4, LM_F32, 0);
    tensor_info(&b, "blk.0.attn_q.weight", 1, ne4, LM_F32, 32);
    tensor_info(&b, "blk.0.attn_q.weight", 1, ne4, LM_F32, 64);
    data_section(&b, 32, 80);
    EXPECT_ERR(&b, "duplicate tensor name 'blk.0.attn_q.weight' (tensors 1 and 2)");

    header(&b, 3, 1, 0);
    tensor_info(&b, "w", 5, (int64_t[]){1, 1, 1, 1, 4}, LM_F32, 0);
    data_section(&b, 32, 16);
    EXPECT_ERR(&b, "tensor 'w' has 5 dimensions (at most 4)");
    one_tensor(&b, "w", 2, (int64_t[]){4, -3}, LM_F32, 0, 16);
    EXPECT_ERR(&b, "tensor 'w' has a negative dimension ne[1] = -3");
    one_tensor(&b, "w", 2, (int64_t[]){4, INT64_MIN}, LM_F32, 0, 16);
    EXPECT_ERR(&b, "ne[1] = -9223372036854775808");
    one_tensor(&b, "w", 3, (int64_t[]){1ll << 40, 1ll << 20, 1ll << 4}, LM_F32, 0, 16);
    EXPECT_ERR(&b, "tensor 'w'", "dimension overflow");
    one_tensor(&b, "w", 2, (int64_t[]){1ll << 31, 1ll << 31}, LM_I64, 0, 16); /* 2^62 elements, 2^65 bytes */
    EXPECT_ERR(&b, "tensor 'w'", "dimension overflow");
    one_tensor(&b, "w", 4, (int64_t[]){INT64_MAX, 1, 1, 1}, LM_F32, 0, 16);
    EXPECT_ERR(&b, "dimension overflow"); /* 2^63 * 4 bytes */
    one_tensor(&b, "blk.0.attn_q.weight", 1, ne4, 77, 0, 16);
    EXPECT_ERR(&b, "t.gguf: tensor 'blk.0.attn_q.weight' has unknown type 77");
    one_tensor(&b, "w", 1, ne4, 4, 0, 16); /* Q4_2, removed from ggml long ago */
    EXPECT_ERR(&b, "has unknown type 4");
    one_tensor(&b, "w", 1, ne4, 0x80000000u, 0, 16);
    EXPECT_ERR(&b, "has unknown type 2147483648");
    one_tensor(&b, "w", 2, (int64_t[]){48, 2}, LM_Q8_0, 0, 200);
    EXPECT_ERR(&b, "ne[0] = 48 is not a multiple of the block size 32 of type q8_0");
    one_tensor(&b, "w", 1, ne4, LM_F32, 16, 64);
    EXPECT_ERR(&b, "tensor 'w' has offset 16, not a multiple of the alignment 32");
    one_tensor(&b, "w", 1, (int64_t[]){5}, LM_F32, 0, 16);
    EXPECT_ERR(&b, "tensor 'w' data [64, 84) lies outside the file (size 80)");
    one_tensor(&b, "w", 1, ne4, LM_F32, 32, 16);
    EXPECT_ERR(&b, "tensor 'w' data [96, 112) lies outside the file (size 80)");
    one_tensor(&b, "w", 1, ne4, LM_F32, UINT64_MAX - 31, 16);
    EXPECT_ERR(&b, "tensor 'w' data at offset 18446744073709551584", "lies outside the file (size 80)");
    one_tensor(&b, "w", 1, (int64_t[]){1ll << 60}, LM_F32, 0, 16);
    EXPECT_ERR(&b, "lies outside the file");
    header(&b, 3, 1, 0);
    tensor_info(&b, "w", 1, ne4, LM_F32, 0);
    EXPECT_ERR(&b, "t.gguf: truncated: the padding before the data section");
    header(&b, 3, 1, 0);
    tensor_info(&b, "w", 1, ne4, LM_F32, 0);
    b.n -= 3;
    EXPECT_ERR(&b, "truncated: tensor info 0 ('w') runs past the end of the file");

    /* ggml reads n_dims 0 as a scalar; so do we. Empty tensors are fine too. */
    one_tensor(&b, "s", 0, NULL, LM_F32, 0, 4);
    g = open_buf(&b);
    const lm_gguf_tensor *t = lm_gguf_find_tensor(g, "s");
    CHECK(t && t->n_dims == 0 && t->ne[0] == 1 && t->ne[3] == 1 && t->nbytes == 4, "scalar tensor: %s", lm_last_error());
    lm_gguf_close(g);
    one_tensor(&b, "e", 2, (int64_t[]){0, 7}, LM_Q8_0, 0, 0);
    g = open_buf(&b);
    t = lm_gguf_find_tensor(g, "e");
    CHECK(t && t->nbytes == 0, "empty tensor: %s", lm_last_error());
    lm_gguf_close(g);
    free(b.p);
}

/* Many tensors: lookups go through the hash index. */
static void test_many_tensors(void) {
    buf b = {0};
    enum { N = 3000 };
    header(&b, 3, N, 0);
    char name[32];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "blk.%d.w", i);
        tensor_info(&b, name, 1, (int64_t[]){8}, LM_F32, (uint64_t)i * 32);
    }
    data_section(&b, 32, (size_t)N * 32);
    lm_gguf *g = open_buf(&b);
    CHECK(g && lm_gguf_n_tensors(g) == N, "3000 tensors: %s", lm_last_error());
    int found = 0;
    for (int i = 0; g && i < N; i++) {
        snprintf(name, sizeof name, "blk.%d.w", i);
        const lm_gguf_tensor *t = lm_gguf_find_tensor(g, name);
        found += t == lm_gguf_tensor_at(g, i) && t->offset == (uint64_t)i * 32;
    }
    CHECK(found == N, "found %d of %d", found, N);
    lm_gguf_close(g);
    free(b.p);
}

/* ---- the real model, when present ---------------------------------------------- */

static void test_real_model(void) {
    const char *home = getenv("HOME");
    char path[1024];
    snprintf(path, sizeof path, "%s/.cache/lumen/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "");
    if (access(path, R_OK) != 0) {
        printf("gguf: %s not found, skipping the real-model checks\n", path);
        return;
    }
    lm_gguf *g = lm_gguf_open(path);
    CHECK(g != NULL, "%s", lm_last_error());
    if (!g) return;
    CHECK(lm_gguf_version(g) == 3, "version %u", lm_gguf_version(g));
    CHECK(lm_gguf_n_tensors(g) == 272, "n_tensors %lld", (long long)lm_gguf_n_tensors(g));
    lm_gguf_str s = {0};
    CHECK(lm_gguf_get_str(g, "general.architecture", &s) == LM_OK && str_is(s, "llama"), "architecture");
    uint32_t n_embd = 0;
    CHECK(lm_gguf_get_u32(g, "llama.embedding_length", &n_embd) == LM_OK && n_embd == 576, "n_embd %u", n_embd);
    const lm_gguf_str *toks = NULL;
    uint64_t n = 0;
    CHECK(lm_gguf_get_str_arr(g, "tokenizer.ggml.tokens", &toks, &n) == LM_OK && n == 49152, "tokens %llu",
          (unsigned long long)n);
    const lm_gguf_tensor *t = lm_gguf_find_tensor(g, "token_embd.weight");
    CHECK(t && t->type == LM_Q8_0 && t->n_dims == 2 && t->ne[0] == 576 && t->ne[1] == 49152, "token_embd.weight");
    CHECK(t && t->nbytes == 576 / 32 * 34 * 49152ull, "token_embd.weight size");
    lm_gguf_close(g);
}

/* ---- fuzz seeds ---------------------------------------------------------------- */

static int write_seeds(const char *dir) {
    buf b = {0};
    char path[4096];
    int n = 0;
    mkdir(dir, 0755);
    const uint32_t versions[] = {3, 2}, aligns[] = {0, 64};
    for (int v = 0; v < 2; v++)
        for (int a = 0; a < 2; a++) {
            build_valid(&b, versions[v], aligns[a]);
            snprintf(path, sizeof path, "%s/valid_v%u_a%u.gguf", dir, versions[v], aligns[a]);
            FILE *f = fopen(path, "wb");
            if (!f || fwrite(b.p, 1, b.n, f) != b.n) { fprintf(stderr, "cannot write %s\n", path); return 1; }
            fclose(f);
            n++;
        }
    header(&b, 3, 0, 0);
    snprintf(path, sizeof path, "%s/empty.gguf", dir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b.p, 1, b.n, f) != b.n) { fprintf(stderr, "cannot write %s\n", path); return 1; }
    fclose(f);
    printf("wrote %d seeds to %s\n", n + 1, dir);
    free(b.p);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--seeds") == 0) return write_seeds(argv[2]);
    test_valid();
    test_open_file();
    test_truncation();
    test_mutations();
    test_header_errors();
    test_kv_errors();
    test_tensor_errors();
    test_many_tensors();
    test_real_model();
    return tu_finish("gguf");
}
