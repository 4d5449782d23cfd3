/* The weights layer: a model's tensors and hyperparameters, from either
 *  - a GGUF file (keys as llama.cpp names them: "bert.block_count"), or
 *  - a Hugging Face model directory: config.json (keys as transformers names
 *    them: "num_hidden_layers") and model.safetensors.
 * An architecture (core/arch/) asks for a tensor or a key by the name its
 * format uses; the layer answers with a view of the mapped data or a number.
 *
 * Ownership: lm_weights_open returns the weights with one reference held by
 * w->mapping, a storage spanning all tensor data; views of the weights keep it
 * alive, and its last release closes the files (lm_weights_release drops the
 * opener's reference). */
#ifndef LM_WEIGHTS_H
#define LM_WEIGHTS_H

#include "gguf.h"
#include "safetensors.h"
#include "tensor.h"

typedef struct cJSON cJSON;

typedef enum { LM_WEIGHTS_GGUF = 0, LM_WEIGHTS_HF = 1 } lm_weights_format;

typedef struct lm_weights {
    lm_weights_format format;
    char *path;            /* the file (GGUF) or the directory (HF) */
    char *arch;            /* general.architecture, or config.json's model_type */
    lm_gguf *gguf;         /* GGUF */
    lm_safetensors *st;    /* HF: model.safetensors */
    cJSON *config;         /* HF: config.json */
    char *config_path;
    lm_storage *mapping;   /* spans the tensor data */
} lm_weights;

/* A path to a directory is a Hugging Face model, anything else a GGUF file.
 * Errors name the file at fault (a missing config.json key, a corrupt header). */
lm_weights *lm_weights_open(const char *path);
void lm_weights_release(lm_weights *w);

/* A tensor by its name in the file, shape outermost first. */
typedef struct { lm_dtype dtype; int ndim; int64_t shape[4]; const void *data; uint64_t nbytes; } lm_weights_tensor;
bool lm_weights_find(const lm_weights *w, const char *name, lm_weights_tensor *out);
/* A view of it on the mapping; NULL + message naming the file when absent. */
lm_tensor *lm_weights_view(const lm_weights *w, const char *name);
int64_t lm_weights_n_params(const lm_weights *w);
uint64_t lm_weights_file_size(const lm_weights *w);

/* Hyperparameters by key (GGUF key or config.json key, as the format names it).
 * A missing key is an error naming the file and key when required, else def. */
lm_status lm_weights_int(const lm_weights *w, const char *key, int64_t *out, bool required, int64_t def);
lm_status lm_weights_float(const lm_weights *w, const char *key, double *out, bool required, double def);
/* A string key, or NULL (no error) when absent or not a string. */
const char *lm_weights_str(const lm_weights *w, const char *key, char *buf, size_t cap);

/* A JSON file of the model directory (dir/rel), parsed; NULL + message naming
 * the file when it is missing or not JSON (missing_ok: NULL without error). */
cJSON *lm_json_file(const char *dir, const char *rel, bool missing_ok);

#endif
