/* Loading a model: the weights layer (GGUF or a Hugging Face directory) ->
 * the family's ops table (arch/registry.c) -> its load -> tokenizer, pool. */
#include "model.h"
#include "arch/arch.h"
#include "error.h"
#include "quant.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

const char *lm_version(void) { return "0.1.0"; }

/* ---- interleaved layer matrices ---------------------------------------------- */

/* A decode step streams every layer matrix from memory once; on interleaved
 * rows (kernels/quant.h) the VNNI panel loads its operands whole instead of
 * gathering, unpacking and transposing 16 rows' blocks, which kept it
 * compute-bound below the memory's pace (Xeon, one thread, tg32: Llama-3.2-1B
 * shape Q4_0 13.0 vs 9.3 tok/s, Qwen3-8B shape 2.32 vs 1.93). The K-quants'
 * interleaved super-blocks (Q2_K to Q6_K) go through their panels at every
 * token, which the file's rows would only by repacking them per product: a
 * matrix to be interleaved takes its panels from the first token (w->panels;
 * repacked until it is swapped), so its results do not change when it is,
 * and a prompt at once or token by token gives the same bits. Where the CPU has
 * those kernels, a thread of the model's own copies the layer matrices one by
 * one, interleaved, into memory of their own (huge pages where the kernel
 * gives them) and swaps each in under eval_mu, between forward passes: the
 * first token does not wait for it (fresh memory costs seconds per GB to
 * fault in on a virtual machine), and results are the same bits either way.
 * The file's pages a matrix was read from are then dropped from the process
 * (a private read-only mapping: they come back from the file if
 * lm_model_weight reads them), so the process holds each weight once.
 * LUMEN_INTERLEAVE=0 keeps the file's layout (for comparisons; the K-quants
 * then decode through their single-row kernels, other bits). */
typedef struct { void *map; size_t len; } anon_map;

static void anon_release(void *ctx) {
    anon_map *a = ctx;
    munmap(a->map, a->len);
    free(a);
}

void lm_drop_pages(const void *p, size_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1), hi = ((uintptr_t)p + n) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

static size_t il_bytes(const lm_tensor *w) { return (lm_tensor_nbytes(w) + 63) & ~(size_t)63; }

/* The matrices that may be interleaved (m->il_slot, il_n): every layer's,
 * then the output matrix. The output is a decode step's largest read
 * (Qwen3-8B shape: 510 MB of Q6_K, 11% of the bytes; the Llama-3.2-1B shape's,
 * the token embeddings: 27%), and interleaved it streams at 11.7-14 GB/s
 * where the single-row kernel took 9.6-11.7 (one thread,
 * build/lumen_decode_gemv 4096x151936). Last, because copied first (fresh
 * memory beside the file's pages the first token reads) it held the 8B
 * shape's first token back from 0.5 to 1.0 s and raised the peak RSS by up to
 * 230 MB; until it is swapped its products go through the panels (repacked:
 * 3-4 GB/s on one thread, +70 ms to that first token). Tied to the token
 * embeddings, the output slot alone takes the interleaved copy: the
 * embeddings keep the file's rows, a prompt's few faulted back from the page
 * cache once dropped. */
static void *interleave_thread(void *arg) {
    lm_model *m = arg;
    char *dst = m->il_storage->data;
    lm_tensor ***slot = m->il_slot;
    for (int i = 0; i < m->il_n && !atomic_load(&m->il_stop); i++) {
        lm_tensor *w = *slot[i];
        if (!w->panels || w->interleaved) continue;
        /* its rows in the file's mapping (a type's conversion at load would not be): dropped as copied */
        const bool file = lm_gguf_maps(m->gguf, w->data, lm_tensor_nbytes(w));
        lm_tensor *t = lm_matmul_interleave(NULL, w, m->il_storage, dst, &m->il_stop, file); /* on this thread alone */
        if (!t) break;
        dst += il_bytes(w);
        pthread_mutex_lock(&m->eval_mu);
        __atomic_store_n(slot[i], t, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&m->eval_mu);
        m->il_old[atomic_fetch_add(&m->il_done, 1)] = w;
        if (file) lm_drop_pages(w->data, lm_tensor_nbytes(w)); /* the pages the panels straddled */
        atomic_fetch_sub(&m->il_pending, 1);
    }
    atomic_store(&m->il_pending, 0);
    return NULL;
}

/* Starts the interleaving thread where there is work for it; an optimization
 * only: when memory or a thread is refused, the model keeps the file's layout. */
static void interleave_start(lm_model *m) {
    const char *env = getenv("LUMEN_INTERLEAVE");
    if (!m->layers || !m->gguf || (env && !strcmp(env, "0"))) return;
    const int out = m->output != NULL, slots = out + m->hp.n_layer * LM_LAYER_MATRICES;
    m->il_slot = calloc((size_t)slots, sizeof *m->il_slot);
    m->il_old = calloc((size_t)slots, sizeof *m->il_old);
    if (!m->il_slot || !m->il_old) return;
    for (int il = 0; il < m->hp.n_layer; il++) lm_layer_matrix_slots(&m->layers[il], m->il_slot + il * LM_LAYER_MATRICES);
    if (out) m->il_slot[slots - 1] = &m->output;
    m->il_n = slots;
    size_t total = 0;
    int n = 0;
    for (int i = 0; i < m->il_n; i++)
        if (lm_matmul_can_interleave(*m->il_slot[i])) total += il_bytes(*m->il_slot[i]), n++;
    if (!n) return;
    const size_t huge = (size_t)2 << 20, len = total + huge;
    anon_map *a = malloc(sizeof *a);
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!a || map == MAP_FAILED) {
        if (map != MAP_FAILED) munmap(map, len);
        free(a);
        return;
    }
    *a = (anon_map){map, len};
    char *base = (char *)(((uintptr_t)map + huge - 1) & ~(uintptr_t)(huge - 1));
    madvise(base, total, MADV_HUGEPAGE);
    m->il_storage = lm_storage_wrap(base, total, anon_release, a);
    if (!m->il_storage) { anon_release(a); return; }
    /* from the first forward pass on, through the panels (lm_matmul_panel_decode) */
    for (int i = 0; i < m->il_n; i++)
        if (lm_matmul_can_interleave(*m->il_slot[i])) (*m->il_slot[i])->panels = true;
    atomic_store(&m->il_pending, n);
    m->il_started = pthread_create(&m->il_thread, NULL, interleave_thread, m) == 0;
    if (!m->il_started) {
        atomic_store(&m->il_pending, 0);
        for (int i = 0; i < m->il_n; i++) (*m->il_slot[i])->panels = false;
    }
}

static void interleave_stop(lm_model *m) {
    if (m->il_started) {
        atomic_store(&m->il_stop, true);
        pthread_join(m->il_thread, NULL);
        m->il_started = false;
    }
}

void lm_model_wait_layout(lm_model *m) {
    while (m && atomic_load(&m->il_pending) > 0) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static char *dup_str(lm_gguf_str s) {
    char *z = malloc(s.len + 1);
    if (z) { memcpy(z, s.ptr, s.len); z[s.len] = 0; }
    return z;
}

lm_model *lm_model_retain(lm_model *m) {
    if (m) atomic_fetch_add(&m->refcount, 1);
    return m;
}

static void model_destroy(lm_model *m) {
    interleave_stop(m);
    if (m->arch && m->arch->unload) m->arch->unload(m);
    for (int i = 0; m->il_old && i < atomic_load(&m->il_done); i++) lm_tensor_free(m->il_old[i]);
    free(m->il_old);
    free(m->il_slot);
    lm_storage_release(m->il_storage);
    lm_tokenizer_free(m->tok);
    lm_pool_free(m->pool);
    lm_weights_release(m->weights);
    pthread_mutex_destroy(&m->eval_mu);
    free(m->batch_logits);
    free(m->batch_idx);
    free(m->embed_ws);
    free(m->path); free(m->name); free(m->arch_name); free(m->chat_template);
    free(m);
}

void lm_model_free(lm_model *m) {
    if (m && atomic_fetch_sub(&m->refcount, 1) == 1) model_destroy(m);
}

/* The last component of a path, without a trailing slash. */
static char *base_name(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    return strndup(path + b, n - b);
}

lm_model *lm_model_load(const char *path, const lm_model_params *params) {
    if (!path || !*path) { lm_err("model path is empty"); return NULL; }
    lm_kernels_init();
    lm_model *m = calloc(1, sizeof *m);
    if (!m) { lm_err("out of memory"); return NULL; }
    atomic_init(&m->refcount, 1);
    pthread_mutex_init(&m->eval_mu, NULL);
    m->path = strdup(path);
    /* The weights' views share one storage spanning the tensor data; its last
     * reference closes the files, so a weight tensor handed out keeps them mapped. */
    m->weights = lm_weights_open(path);
    if (!m->weights) goto fail;
    m->gguf = m->weights->gguf;
    m->mapping = m->weights->mapping;
    m->arch_name = strdup(m->weights->arch);
    m->arch = lm_arch_find(m->arch_name);
    if (!m->arch) {
        lm_err("architecture '%s' is not supported (supported: %s)", m->arch_name, lm_arch_known());
        goto fail;
    }
    if (m->gguf) {
        const lm_gguf_kv *kv = lm_gguf_find(m->gguf, "general.name");
        if (kv && kv->type == LM_GGUF_STRING) m->name = dup_str(kv->strs[0]);
        kv = lm_gguf_find(m->gguf, "tokenizer.chat_template");
        if (kv && kv->type == LM_GGUF_STRING) m->chat_template = dup_str(kv->strs[0]);
        uint32_t ft;
        m->file_type = lm_gguf_find(m->gguf, "general.file_type") && !lm_gguf_get_u32(m->gguf, "general.file_type", &ft) ? (int32_t)ft : -1;
    } else {
        m->file_type = -1;
    }
    if (!m->name) m->name = base_name(path);

    if (m->arch->load(m)) goto fail;
    if (!m->arch->vision) {   /* a vision projector has no vocabulary */
        m->tok = m->gguf ? lm_tokenizer_from_gguf(m->gguf) : lm_tokenizer_from_hf(path);
        if (!m->tok) goto fail;
    }
    if (m->tok && lm_tokenizer_n_vocab(m->tok) != m->hp.n_vocab) {
        lm_err("vocabulary size mismatch: the tokenizer has %d tokens, the embedding matrix %d rows",
               lm_tokenizer_n_vocab(m->tok), m->hp.n_vocab);
        goto fail;
    }
    m->n_params = lm_weights_n_params(m->weights);
    m->kv_type = params && params->kv_type ? params->kv_type : LM_F16;
    if (m->kv_type != LM_F16 && m->kv_type != LM_Q8_0) {
        lm_err("kv_type %d is not a KV cache type (f16 = %d, q8_0 = %d)", (int)m->kv_type, LM_F16, LM_Q8_0);
        goto fail;
    }
    m->pool = lm_pool_new(params ? params->n_threads : 0);
    if (!m->pool) goto fail;
    interleave_start(m);
    return m;
fail:
    lm_err_prefix("cannot load model '%s'", path);
    model_destroy(m);
    return NULL;
}

void lm_model_get_info(const lm_model *m, lm_model_info *o) {
    memset(o, 0, sizeof *o);
    if (!m) return;
    o->arch = m->arch_name;
    o->name = m->name;
    o->path = m->path;
    o->chat_template = m->chat_template;
    o->n_params = m->n_params;
    o->file_size = lm_weights_file_size(m->weights);
    o->family = m->arch->family;
    o->encoder = m->arch->encoder;
    o->vision = m->arch->vision;
    if (o->encoder) {
        o->max_tokens = m->embed.max_tokens;
        o->pooling = m->embed.pooling;
        o->normalize = m->embed.normalize;
    }
    o->n_vocab = m->hp.n_vocab;
    o->n_ctx_train = m->hp.n_ctx_train;
    o->n_embd = m->hp.n_embd;
    o->n_layer = m->hp.n_layer;
    o->n_head = m->hp.n_head;
    o->n_head_kv = m->hp.n_head_kv;
    o->head_dim = m->hp.head_dim;
    o->n_ff = m->hp.n_ff;
    o->bos_token = m->tok ? lm_tokenizer_bos(m->tok) : -1;
    o->eos_token = m->tok ? lm_tokenizer_eos(m->tok) : -1;
    o->file_type = m->file_type;
    o->interleaving = atomic_load(&m->il_pending);
    o->interleaved = atomic_load(&m->il_done);
    o->tiled = o->panels = m->hp.n_layer > 0 && m->layers;
    o->amx_prompt = 0;
    for (int il = 0; m->layers && il < m->hp.n_layer; il++) {
        const lm_tensor *w[LM_LAYER_MATRICES];
        lm_layer_matrices(&m->layers[il], w);
        for (int i = 0; i < LM_LAYER_MATRICES; i++) {
            const lm_quant_ops *ops = lm_quant_ops_get(w[i]->dtype);
            o->tiled = o->tiled && ops && ops->vec_dot_tile;
            o->panels = o->panels && lm_matmul_panel_decode(w[i]);
            const int64_t amx = lm_matmul_amx_min(w[i]);
            if (il == 0 && i == 0) o->amx_prompt = (int32_t)amx;
            else if (amx != o->amx_prompt) o->amx_prompt = 0;
        }
    }
}

int64_t lm_tokenize(const lm_model *m, const char *text, size_t len, int32_t *out, int64_t cap,
                    bool add_special, bool parse_special) {
    if (!m || (!text && len)) { lm_err("tokenize: model or text is NULL"); return INT64_MIN; }
    if (!m->tok) { lm_err("tokenize: '%s' has no tokenizer (a vision projector)", m->path); return INT64_MIN; }
    return lm_tokenizer_encode(m->tok, text ? text : "", len, out, cap, add_special, parse_special);
}

int64_t lm_escape_special(const lm_model *m, const char *text, size_t len, char *out, int64_t cap) {
    if (!m || (!text && len)) { lm_err("escape_special: model or text is NULL"); return INT64_MIN; }
    if (!m->tok) { lm_err("escape_special: '%s' has no tokenizer (a vision projector)", m->path); return INT64_MIN; }
    return lm_tokenizer_escape(m->tok, text ? text : "", len, out, cap);
}

int32_t lm_token_to_piece(const lm_model *m, int32_t token, char *buf, int32_t cap, bool render_special) {
    if (!m || !m->tok) { lm_err("token_to_piece: model is NULL or has no tokenizer"); return INT32_MIN; }
    return lm_tokenizer_piece(m->tok, token, buf, cap, render_special);
}

int64_t lm_detokenize(const lm_model *m, const int32_t *tokens, int64_t n, char *buf, int64_t cap,
                      bool render_special) {
    if (!m || !m->tok) { lm_err("detokenize: model is NULL or has no tokenizer"); return INT64_MIN; }
    return lm_tokenizer_decode(m->tok, tokens, n, buf, cap, render_special);
}

bool lm_token_is_eog(const lm_model *m, int32_t token) {
    return m && m->tok && lm_tokenizer_is_eog(m->tok, token);
}

int32_t lm_token_lookup(const lm_model *m, const char *text) {
    return m && m->tok && text ? lm_tokenizer_lookup(m->tok, text, strlen(text)) : -1;
}

lm_tensor *lm_model_weight(lm_model *m, const char *name) {
    if (!m || !name) { lm_err("weight: model or name is NULL"); return NULL; }
    lm_weights_tensor t;
    if (!lm_weights_find(m->weights, name, &t)) { lm_err("weight: the model has no tensor '%s'", name); return NULL; }
    return lm_weights_view(m->weights, name);
}
