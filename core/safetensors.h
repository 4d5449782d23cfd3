/* SafeTensors reader, over an mmap of the file.
 *
 * Layout: a u64 (little-endian) header length N, N bytes of JSON
 *   {"__metadata__": {...}, "NAME": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
 * then the data section; offsets count from its start.
 *
 * lm_safetensors_open validates everything before returning: the header length
 * against the file, the JSON, every entry's dtype, shape and offsets (inside
 * the data section, end - begin == the size its dtype and shape make). Errors
 * name the file and the tensor. */
#ifndef LM_SAFETENSORS_H
#define LM_SAFETENSORS_H

#include "lumen.h"

#define LM_ST_MAX_DIMS 4
typedef struct lm_st_tensor {
    char *name;
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_ST_MAX_DIMS];   /* outermost first, as the file lists them */
    uint64_t nbytes;
    const void *data;                /* into the mapping */
} lm_st_tensor;

typedef struct lm_safetensors lm_safetensors;

lm_safetensors *lm_safetensors_open(const char *path);
/* Parses a buffer the caller keeps alive (tests). name is used in errors. */
lm_safetensors *lm_safetensors_open_memory(const void *data, size_t size, const char *name);
void lm_safetensors_close(lm_safetensors *st);

int64_t lm_safetensors_n_tensors(const lm_safetensors *st);
const lm_st_tensor *lm_safetensors_tensor_at(const lm_safetensors *st, int64_t i);
const lm_st_tensor *lm_safetensors_find(const lm_safetensors *st, const char *name); /* NULL if absent */
uint64_t lm_safetensors_size(const lm_safetensors *st);

#endif
