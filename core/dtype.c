/* The dtype traits every module needs: names and block geometry. Compute
 * functions per dtype live in kernels/quant.c. */
#include "lumen.h"

#include <ctype.h>
#include <string.h>

typedef struct { const char *name; int block; size_t size; } dtype_info;

static const dtype_info g_dtypes[LM_DTYPE_COUNT] = {
    [LM_F32] = {"f32", 1, 4},       [LM_F16] = {"f16", 1, 2},
    [LM_Q4_0] = {"q4_0", 32, 18},   [LM_Q4_1] = {"q4_1", 32, 20},
    [LM_Q5_0] = {"q5_0", 32, 22},   [LM_Q5_1] = {"q5_1", 32, 24},
    [LM_Q8_0] = {"q8_0", 32, 34},   [LM_Q8_1] = {"q8_1", 32, 36},
    [LM_Q2_K] = {"q2_k", 256, 84},  [LM_Q3_K] = {"q3_k", 256, 110},
    [LM_Q4_K] = {"q4_k", 256, 144}, [LM_Q5_K] = {"q5_k", 256, 176},
    [LM_Q6_K] = {"q6_k", 256, 210}, [LM_Q8_K] = {"q8_k", 256, 292},
    [LM_I8] = {"i8", 1, 1},         [LM_I16] = {"i16", 1, 2},
    [LM_I32] = {"i32", 1, 4},       [LM_I64] = {"i64", 1, 8},
    [LM_F64] = {"f64", 1, 8},       [LM_BF16] = {"bf16", 1, 2},
};

static const dtype_info *info(int t) {
    if (t < 0 || t >= LM_DTYPE_COUNT || !g_dtypes[t].name) return NULL;
    return &g_dtypes[t];
}

const char *lm_dtype_name(int t) { const dtype_info *i = info(t); return i ? i->name : NULL; }
int lm_dtype_block_size(int t) { const dtype_info *i = info(t); return i ? i->block : 0; }
size_t lm_dtype_type_size(int t) { const dtype_info *i = info(t); return i ? i->size : 0; }

size_t lm_dtype_row_size(int t, int64_t n) {
    const dtype_info *i = info(t);
    if (!i || n < 0 || n % i->block) return 0;
    return (size_t)(n / i->block) * i->size;
}

int lm_dtype_from_name(const char *name) {
    if (!name) return -1;
    for (int t = 0; t < LM_DTYPE_COUNT; t++) {
        const char *a = g_dtypes[t].name, *b = name;
        if (!a) continue;
        while (*a && *b && *a == tolower((unsigned char)*b)) a++, b++;
        if (!*a && !*b) return t;
    }
    return -1;
}
