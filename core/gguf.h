/* GGUF reader (versions 2 and 3), over an mmap of the file.
 *
 * lm_gguf_open validates the whole file before returning: magic, version,
 * counts, every key/value (types, string lengths, array sizes), every tensor
 * info (name, dims, type, offset, size) and that all tensor data lies inside
 * the file. After a successful open nothing in the file is trusted again
 * without having been checked. Strings are not NUL-terminated in the file:
 * lm_gguf_str carries a length. Errors name the file and the problem. */
#ifndef LM_GGUF_H
#define LM_GGUF_H

#include "lumen.h"

typedef enum lm_gguf_type {
    LM_GGUF_U8 = 0, LM_GGUF_I8 = 1, LM_GGUF_U16 = 2, LM_GGUF_I16 = 3,
    LM_GGUF_U32 = 4, LM_GGUF_I32 = 5, LM_GGUF_F32 = 6, LM_GGUF_BOOL = 7,
    LM_GGUF_STRING = 8, LM_GGUF_ARRAY = 9, LM_GGUF_U64 = 10, LM_GGUF_I64 = 11,
    LM_GGUF_F64 = 12, LM_GGUF_TYPE_COUNT = 13
} lm_gguf_type;

typedef struct lm_gguf_str { const char *ptr; uint64_t len; } lm_gguf_str;

typedef struct lm_gguf_kv {
    lm_gguf_str key;
    lm_gguf_type type;       /* LM_GGUF_ARRAY for arrays */
    lm_gguf_type arr_type;   /* element type when type == LM_GGUF_ARRAY */
    uint64_t arr_n;          /* element count when an array */
    const void *data;        /* scalar value or first array element, in the mapping (may be unaligned;
                                for strings: the encoded form, u64 length then bytes) */
    const lm_gguf_str *strs; /* string value (1 entry) or string array elements (arr_n entries) */
} lm_gguf_kv;

#define LM_GGUF_MAX_DIMS 4
typedef struct lm_gguf_tensor {
    char name[128];          /* NUL-terminated copy (GGUF limits names to 64 bytes; longer is an error) */
    uint32_t n_dims;
    int64_t ne[LM_GGUF_MAX_DIMS]; /* GGUF order: ne[0] is the innermost (row length); unused dims are 1 */
    lm_dtype type;
    uint64_t offset;         /* from the start of the data section */
    uint64_t nbytes;
    const void *data;        /* into the mapping */
} lm_gguf_tensor;

typedef struct lm_gguf lm_gguf;

lm_gguf *lm_gguf_open(const char *path);
/* Parses a buffer the caller keeps alive (tests, fuzzing). name is used in errors. */
lm_gguf *lm_gguf_open_memory(const void *data, size_t size, const char *name);
void lm_gguf_close(lm_gguf *g);

const char *lm_gguf_name(const lm_gguf *g);
uint32_t lm_gguf_version(const lm_gguf *g);
uint64_t lm_gguf_size(const lm_gguf *g);
/* [p, p + n) lies within g's own read-only mapping of its file (opened from a path) */
bool lm_gguf_maps(const lm_gguf *g, const void *p, size_t n);
uint32_t lm_gguf_alignment(const lm_gguf *g);

int64_t lm_gguf_n_kv(const lm_gguf *g);
const lm_gguf_kv *lm_gguf_kv_at(const lm_gguf *g, int64_t i);
const lm_gguf_kv *lm_gguf_find(const lm_gguf *g, const char *key); /* NULL if absent (no error set) */

/* Typed getters. They fail (LM_ERR, message naming file and key) when the key is
 * missing or its type does not fit; integer getters accept any integer type whose
 * value fits the target. */
lm_status lm_gguf_get_u32(const lm_gguf *g, const char *key, uint32_t *out);
lm_status lm_gguf_get_i32(const lm_gguf *g, const char *key, int32_t *out);
lm_status lm_gguf_get_u64(const lm_gguf *g, const char *key, uint64_t *out);
lm_status lm_gguf_get_f32(const lm_gguf *g, const char *key, float *out);  /* accepts f32/f64 */
lm_status lm_gguf_get_bool(const lm_gguf *g, const char *key, bool *out);
lm_status lm_gguf_get_str(const lm_gguf *g, const char *key, lm_gguf_str *out);
/* Array of strings: pointer to arr_n entries owned by g. */
lm_status lm_gguf_get_str_arr(const lm_gguf *g, const char *key, const lm_gguf_str **out, uint64_t *n);
/* Numeric array as a fresh copy converted to the wanted type (LM_GGUF_I32 or LM_GGUF_F32);
 * caller frees with free(). Fails when elements do not convert. */
lm_status lm_gguf_get_arr_i32(const lm_gguf *g, const char *key, int32_t **out, uint64_t *n);
lm_status lm_gguf_get_arr_f32(const lm_gguf *g, const char *key, float **out, uint64_t *n);

int64_t lm_gguf_n_tensors(const lm_gguf *g);
const lm_gguf_tensor *lm_gguf_tensor_at(const lm_gguf *g, int64_t i);
const lm_gguf_tensor *lm_gguf_find_tensor(const lm_gguf *g, const char *name); /* NULL if absent */

const char *lm_gguf_type_name(lm_gguf_type t);
/* Compare a GGUF string with a C string. */
bool lm_gguf_str_eq(lm_gguf_str s, const char *z);

#endif
