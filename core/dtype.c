/* The dtype traits every module needs: names and block geometry, read from
 * the one row each type has in the type table (kernels/quant.h). */
#include "lumen.h"
#include "quant.h"

#include <ctype.h>

const char *lm_dtype_name(int t) { const lm_quant_entry *r = lm_type_row(t); return r ? r->name : NULL; }
int lm_dtype_block_size(int t) { const lm_quant_entry *r = lm_type_row(t); return r ? r->block : 0; }
size_t lm_dtype_type_size(int t) { const lm_quant_entry *r = lm_type_row(t); return r ? r->size : 0; }

size_t lm_dtype_row_size(int t, int64_t n) {
    const lm_quant_entry *r = lm_type_row(t);
    if (!r || n < 0 || n % r->block) return 0;
    return (size_t)(n / r->block) * r->size;
}

int lm_dtype_from_name(const char *name) {
    if (!name) return -1;
    for (int t = 0; t < LM_DTYPE_COUNT; t++) {
        const lm_quant_entry *r = lm_type_row(t);
        if (!r) continue;
        const char *a = r->name, *b = name;
        while (*a && *b && *a == tolower((unsigned char)*b)) a++, b++;
        if (!*a && !*b) return t;
    }
    return -1;
}
