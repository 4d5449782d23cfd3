/* The families lumen knows (see arch.h): one line each. */
#include "arch.h"

#include <stdio.h>
#include <string.h>

extern const lm_arch_ops lm_arch_llama, lm_arch_bert, lm_arch_clip;

static const lm_arch_ops *const families[] = {
    &lm_arch_llama,
    &lm_arch_bert,
    &lm_arch_clip,
};
#define N_FAMILIES (sizeof families / sizeof families[0])

const lm_arch_ops *lm_arch_find(const char *name) {
    for (size_t f = 0; f < N_FAMILIES; f++)
        for (const char *const *n = families[f]->names; *n; n++)
            if (!strcmp(*n, name)) return families[f];
    return NULL;
}

const char *lm_arch_known(void) {
    static _Thread_local char buf[256];
    size_t used = 0;
    buf[0] = 0;
    for (size_t f = 0; f < N_FAMILIES; f++)
        for (const char *const *n = families[f]->names; *n; n++)
            if (used < sizeof buf) used += (size_t)snprintf(buf + used, sizeof buf - used, "%s%s", used ? ", " : "", *n);
    return buf;
}
