/* libFuzzer target for the SafeTensors reader (see README.md here).
 *
 * Parses the input with lm_safetensors_open_memory and, when it is accepted,
 * touches every tensor's bytes and looks each up by name. A crash, a
 * sanitizer report or a leak is a bug in core/safetensors.c. */
#include "safetensors.h"

#include <stdlib.h>
#include <string.h>

static volatile uint8_t g_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lm_safetensors *st = lm_safetensors_open_memory(data, size, "fuzz.safetensors");
    if (!st) return 0;
    for (int64_t i = 0; i < lm_safetensors_n_tensors(st); i++) {
        const lm_st_tensor *t = lm_safetensors_tensor_at(st, i);
        const uint8_t *b = t->data;
        uint8_t x = 0;
        for (uint64_t k = 0; k < t->nbytes; k++) x ^= b[k];
        g_sink ^= x;
        if (lm_safetensors_find(st, t->name) == NULL) abort();
    }
    lm_safetensors_close(st);
    return 0;
}
