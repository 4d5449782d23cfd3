/* Vision projectors: llama.cpp's mmproj GGUF (general.architecture "clip") for
 * projector type idefics3 (SmolVLM): a SigLIP ViT, pixel shuffle, one linear
 * projection to the text model's width.
 *
 * One tile through the encoder, readable top to bottom: patches (the patch
 * conv as a GEMM over flattened 3 x P x P patches) + bias + learned position
 * embeddings -> for each layer (LayerNorm, q/k/v in one GEMM, full attention
 * per head, output GEMM + residual, LayerNorm, up GEMM + GELU, down GEMM +
 * residual) -> post-LayerNorm -> pixel shuffle (scale_factor^2 neighbouring
 * patches side by side in one row) -> mm.model.fc. The GEMMs run through
 * oneDNN in f32 (f16/bf16 weights widened once at load), split over the
 * pool's threads by output columns. GELU is llama.cpp's: the tanh form looked
 * up at the input rounded to fp16, the result rounded to fp16 (ggml's table). */
#include "arch.h"
#include "../error.h"
#include "../image.h"
#include "ops.h"
#include "quant.h"

#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const float *ln1_w, *ln1_b, *wqkv, *bqkv, *wo, *bo, *ln2_w, *ln2_b, *wup, *bup, *wdown, *bdown;
} vit_layer;

typedef struct {
    int32_t image, patch, side, n_pos, scale, longest, proj_dim, n_tok;
    float mean[3], std[3], eps;
    bool gelu_quick;                   /* clip.use_gelu false: x * sigmoid(1.702 x) */
    const float *patch_w, *patch_b, *pos, *post_w, *post_b, *fc;
    vit_layer *l;
    float *gelu;                       /* 65536 entries: GELU at each fp16 value, rounded to fp16 */
    lm_owned owned;                    /* widened or fused copies, the GELU table */
} vit;

/* ---- loading ------------------------------------------------------------------ */

/* f32 data of tensor `name` with `rows` outermost and rows * cols elements:
 * in place when the file holds aligned f32, else widened into a copy. */
static lm_status get(vit *v, const lm_model *m, const char *name, int64_t rows, int64_t cols, const float **out) {
    lm_weights_tensor t;
    if (!lm_weights_find(m->weights, name, &t)) return lm_err("%s: missing tensor '%s'", m->path, name);
    int64_t numel = 1;
    for (int d = 0; d < t.ndim; d++) numel *= t.shape[d];
    if (t.shape[0] != rows || numel != rows * cols)
        return lm_err("%s: tensor '%s' has %lld elements (%lld outermost), expected [%lld, %lld]", m->path, name,
                      (long long)numel, (long long)t.shape[0], (long long)rows, (long long)cols);
    return lm_owned_f32(&v->owned, &t, numel, m->path, name, out);
}

static lm_status key(const lm_model *m, const char *name, int32_t *out, bool required, int32_t def) {
    int64_t x;
    if (lm_weights_int(m->weights, name, &x, required, def)) return LM_ERR;
    if (x < 0 || x > (1 << 20)) return lm_err("%s: key '%s' = %lld is out of range", m->path, name, (long long)x);
    *out = (int32_t)x;
    return LM_OK;
}

static lm_status key_bool(const lm_model *m, const char *name, bool *out) {
    *out = false;
    return lm_gguf_find(m->gguf, name) ? lm_gguf_get_bool(m->gguf, name, out) : LM_OK;
}

static lm_status key_rgb(const lm_model *m, const char *name, float out[3]) {
    float *a = NULL;
    uint64_t n = 0;
    if (!lm_gguf_find(m->gguf, name)) return lm_err("%s: missing key '%s'", m->path, name);
    if (lm_gguf_get_arr_f32(m->gguf, name, &a, &n)) return LM_ERR;
    lm_status st = n >= 3 ? LM_OK : lm_err("%s: key '%s' has %llu values, expected 3", m->path, name, (unsigned long long)n);
    if (!st) memcpy(out, a, 3 * sizeof(float));
    free(a);
    return st;
}

static float f16_round(float x) { return _cvtsh_ss(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)); }

static void clip_unload(lm_model *m) {
    vit *v = m->arch_state;
    if (!v) return;
    lm_owned_free(&v->owned);
    free(v->l);
    free(v);
    m->arch_state = NULL;
}

static lm_status clip_load(lm_model *m) {
    if (!m->gguf) return lm_err("%s: vision projectors are read from GGUF (mmproj) files only", m->path);
    vit *v = calloc(1, sizeof *v);
    if (!v) return lm_err("out of memory");
    m->arch_state = v;
    lm_hparams *hp = &m->hp;
    char type[64];
    const char *pt = lm_weights_str(m->weights, "clip.vision.projector_type", type, sizeof type);
    if (!pt) pt = lm_weights_str(m->weights, "clip.projector_type", type, sizeof type);
    if (!pt || strcmp(pt, "idefics3"))
        return lm_err("%s: projector type '%s': lumen runs idefics3 (SmolVLM) projectors only", m->path, pt ? pt : "(none)");
    bool has_vision, gelu, silu;
    if (key_bool(m, "clip.has_vision_encoder", &has_vision) || key_bool(m, "clip.use_gelu", &gelu) ||
        key_bool(m, "clip.use_silu", &silu))
        return LM_ERR;
    if (!has_vision) return lm_err("%s: the file has no vision encoder (clip.has_vision_encoder)", m->path);
    if (silu) return lm_err("%s: clip.use_silu: lumen's SigLIP runs GELU", m->path);
    v->gelu_quick = !gelu;
    if (key(m, "clip.vision.image_size", &v->image, true, 0) || key(m, "clip.vision.patch_size", &v->patch, true, 0) ||
        key(m, "clip.vision.embedding_length", &hp->n_embd, true, 0) ||
        key(m, "clip.vision.feed_forward_length", &hp->n_ff, true, 0) ||
        key(m, "clip.vision.block_count", &hp->n_layer, true, 0) ||
        key(m, "clip.vision.attention.head_count", &hp->n_head, true, 0) ||
        key(m, "clip.vision.projection_dim", &v->proj_dim, true, 0) ||
        key(m, "clip.vision.projector.scale_factor", &v->scale, true, 0) ||
        key(m, "clip.vision.preproc_image_size", &v->longest, true, 0) ||
        key_rgb(m, "clip.vision.image_mean", v->mean) || key_rgb(m, "clip.vision.image_std", v->std))
        return LM_ERR;
    double eps;
    if (lm_weights_float(m->weights, "clip.vision.attention.layer_norm_epsilon", &eps, false, 1e-6)) return LM_ERR;
    v->eps = (float)eps;
    const int32_t E = hp->n_embd;
    if (E < 1 || hp->n_head < 1 || E % hp->n_head || hp->n_ff < 1 || hp->n_layer < 1 || hp->n_layer > 256 ||
        v->patch < 1 || v->image < v->patch || v->image % v->patch || v->scale < 2 || v->proj_dim < 1 || v->longest < 1)
        return lm_err("%s: hyperparameters out of range (image %d, patch %d, width %d, heads %d, ff %d, layers %d, "
                      "scale factor %d, projection %d, longest edge %d)", m->path, v->image, v->patch, E, hp->n_head,
                      hp->n_ff, hp->n_layer, v->scale, v->proj_dim, v->longest);
    if (v->longest / v->image > 32)
        return lm_err("%s: preproc_image_size %d would cut an image into more than 32 x 32 tiles of %d", m->path,
                      v->longest, v->image);
    v->side = v->image / v->patch;
    if (v->side % v->scale)
        return lm_err("%s: %d patches a side is not a multiple of the scale factor %d", m->path, v->side, v->scale);
    for (int c = 0; c < 3; c++)
        if (!(v->std[c] > 0)) return lm_err("%s: clip.vision.image_std[%d] = %g is not positive", m->path, c, v->std[c]);
    v->n_pos = v->side * v->side;
    v->n_tok = v->n_pos / (v->scale * v->scale);
    hp->n_head_kv = hp->n_head;
    hp->head_dim = E / hp->n_head;
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    hp->norm_eps = v->eps;
    hp->n_ctx_train = v->n_pos;

    const int64_t F = hp->n_ff, PP = 3 * (int64_t)v->patch * v->patch;
    if (get(v, m, "v.patch_embd.weight", E, PP, &v->patch_w) || get(v, m, "v.patch_embd.bias", E, 1, &v->patch_b) ||
        get(v, m, "v.position_embd.weight", v->n_pos, E, &v->pos) || get(v, m, "v.post_ln.weight", E, 1, &v->post_w) ||
        get(v, m, "v.post_ln.bias", E, 1, &v->post_b) ||
        get(v, m, "mm.model.fc.weight", v->proj_dim, (int64_t)E * v->scale * v->scale, &v->fc))
        return LM_ERR;
    v->l = calloc((size_t)hp->n_layer, sizeof *v->l);
    if (!v->l) return lm_err("out of memory");
    for (int i = 0; i < hp->n_layer; i++) {
        vit_layer *l = &v->l[i];
        const float *q, *k, *vv, *bq, *bk, *bv;
        char n[16][64];
        static const char *const names[16] = {"ln1.weight", "ln1.bias", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                                              "attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_out.weight", "attn_out.bias",
                                              "ln2.weight", "ln2.bias", "ffn_up.weight", "ffn_up.bias", "ffn_down.weight",
                                              "ffn_down.bias"};
        for (int j = 0; j < 16; j++) snprintf(n[j], sizeof n[j], "v.blk.%d.%s", i, names[j]);
        if (get(v, m, n[0], E, 1, &l->ln1_w) || get(v, m, n[1], E, 1, &l->ln1_b) || get(v, m, n[2], E, E, &q) ||
            get(v, m, n[3], E, E, &k) || get(v, m, n[4], E, E, &vv) || get(v, m, n[5], E, 1, &bq) ||
            get(v, m, n[6], E, 1, &bk) || get(v, m, n[7], E, 1, &bv) || get(v, m, n[8], E, E, &l->wo) ||
            get(v, m, n[9], E, 1, &l->bo) || get(v, m, n[10], E, 1, &l->ln2_w) || get(v, m, n[11], E, 1, &l->ln2_b) ||
            get(v, m, n[12], F, E, &l->wup) || get(v, m, n[13], F, 1, &l->bup) || get(v, m, n[14], E, F, &l->wdown) ||
            get(v, m, n[15], E, 1, &l->bdown))
            return LM_ERR;
        /* one GEMM for q, k and v: their rows end to end */
        float *wqkv = lm_owned_alloc(&v->owned, (size_t)3 * E * E * sizeof(float)),
              *bqkv = lm_owned_alloc(&v->owned, (size_t)3 * E * sizeof(float));
        if (!wqkv || !bqkv) return lm_err("out of memory");
        const float *w3[3] = {q, k, vv}, *b3[3] = {bq, bk, bv};
        for (int j = 0; j < 3; j++) {
            memcpy(wqkv + (size_t)j * E * E, w3[j], (size_t)E * E * sizeof(float));
            memcpy(bqkv + (size_t)j * E, b3[j], (size_t)E * sizeof(float));
        }
        l->wqkv = wqkv;
        l->bqkv = bqkv;
    }
    if (!(v->gelu = lm_owned_alloc(&v->owned, 65536 * sizeof(float)))) return lm_err("out of memory");
    for (uint32_t i = 0; i < 65536; i++) {
        const float x = _cvtsh_ss((unsigned short)i);
        v->gelu[i] = f16_round(0.5f * x * (1.0f + tanhf(0.79788456080286535587989211986876f * x * (1.0f + 0.044715f * x * x))));
    }
    return LM_OK;
}

/* ---- the encoder pass ----------------------------------------------------------- */

typedef struct {
    const lm_model *m;
    const vit *v;
    int64_t T;                          /* patches of the tile */
    float *pix, *patches, *x, *h, *qkv, *att, *ff, *scores;
    int64_t scores_per_thread;
    int layer, stage;
    lm_pool_queue q;
    atomic_int failed;
} pass;

static inline float gelu(const vit *v, float x) {
    if (v->gelu_quick) return x * (1.0f / (1.0f + expf(-1.702f * x)));
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return v->gelu[_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)];
}

/* y += bias, then GELU (ctx: the vit), over one row slice */
static void bias_gelu(void *ctx, float *y, const float *bias, int64_t n) {
    for (int64_t c = 0; c < n; c++) y[c] = gelu(ctx, y[c] + bias[c]);
}

static void bias_only(void *ctx, float *y, const float *bias, int64_t n) {
    (void)ctx;
    lm_add(y, bias, n);
}

static lm_status linear(lm_pool *pool, pass *p, const float *in, int64_t T, int64_t k, const float *w,
                        const float *bias, int64_t n, float *out, bool act) {
    return lm_linear_f32(pool, in, T, k, w, bias, n, out, !bias ? NULL : act ? bias_gelu : bias_only, (void *)p->v);
}

/* Per-patch stages, the threads taking patches as they go. */
enum { ST_PATCHES, ST_POS, ST_LN1, ST_RES_LN2, ST_RES, ST_POST };

static void patch_rows(void *ctx, int ith, int nth) {
    pass *p = ctx;
    const vit *v = p->v;
    const int64_t E = p->m->hp.n_embd, P = v->patch, S = v->image, PP = 3 * P * P;
    const vit_layer *l = p->stage == ST_LN1 || p->stage == ST_RES_LN2 || p->stage == ST_RES ? &v->l[p->layer] : NULL;
    int64_t lo, hi;
    (void)ith;
    while (lm_pool_take(&p->q, p->T, 8, nth, &lo, &hi)) {
        for (int64_t t = lo; t < hi; t++) {
            float *x = p->x + t * E, *h = p->h + t * E;
            switch (p->stage) {
            case ST_PATCHES: {        /* patch t as conv order: channel, row, column */
                const int64_t py = t / v->side, px = t % v->side;
                float *o = p->patches + t * PP;
                for (int64_t c = 0; c < 3; c++)
                    for (int64_t ky = 0; ky < P; ky++)
                        memcpy(o + (c * P + ky) * P, p->pix + (c * S + py * P + ky) * S + px * P, (size_t)P * sizeof(float));
                break;
            }
            case ST_POS: lm_add(x, v->pos + t * E, E); break;
            case ST_LN1: lm_layernorm(h, x, l->ln1_w, l->ln1_b, E, v->eps); break;
            case ST_RES_LN2:
                lm_add(x, h, E);
                lm_layernorm(h, x, l->ln2_w, l->ln2_b, E, v->eps);
                break;
            case ST_RES: lm_add(x, h, E); break;
            case ST_POST: lm_layernorm(x, x, v->post_w, v->post_b, E, v->eps); break;
            }
        }
    }
}

static void per_patch(lm_pool *pool, pass *p, int stage) {
    p->stage = stage;
    lm_pool_run_dynamic(pool, patch_rows, p, &p->q);
}

static void attn_heads(void *ctx, int ith, int nth) {
    pass *p = ctx;
    const lm_hparams *hp = &p->m->hp;
    const int64_t E = hp->n_embd, HD = hp->head_dim;
    float *sc = p->scores + ith * p->scores_per_thread;
    int64_t lo, hi;
    while (lm_pool_take(&p->q, hp->n_head, 1, nth, &lo, &hi))
        for (int64_t h = lo; h < hi; h++)
            if (!lm_attend_head_gemm(p->qkv + h * HD, p->qkv + E + h * HD, p->qkv + 2 * E + h * HD, 3 * E, p->T, HD,
                                     hp->attn_scale, p->att + h * HD, E, sc))
                atomic_store(&p->failed, 1);
}

/* Pixel shuffle: patch (y, x) goes to row (y / s) * (side / s) + x / s, at
 * column block (y % s) * s + x % s (llama.cpp's build_patch_merge_permute). */
static void shuffle(const vit *v, const float *x, int64_t E, float *out) {
    const int64_t s = v->scale, side = v->side, ow = side / s;
    for (int64_t y = 0; y < side; y++)
        for (int64_t xx = 0; xx < side; xx++) {
            const int64_t row = (y / s) * ow + xx / s, blk = (y % s) * s + xx % s;
            memcpy(out + (row * s * s + blk) * E, x + (y * side + xx) * E, (size_t)E * sizeof(float));
        }
}

static size_t ws_floats(const lm_model *m, int64_t *scores_per_thread) {
    const vit *v = m->arch_state;
    const int64_t T = v->n_pos, E = m->hp.n_embd, F = m->hp.n_ff, PP = 3 * (int64_t)v->patch * v->patch;
    *scores_per_thread = (lm_attend_head_scratch(T, m->hp.head_dim) + 15) & ~(int64_t)15;
    return (size_t)(T * (PP + 6 * E + F) + lm_pool_size(m->pool) * *scores_per_thread);
}

/* One tile (pix: [3][image][image]) -> out[n_tok][proj_dim]. */
static lm_status encode_tile(lm_model *m, const float *pix, float *out, float *ws) {
    const vit *v = m->arch_state;
    const lm_hparams *hp = &m->hp;
    const int64_t T = v->n_pos, E = hp->n_embd, F = hp->n_ff, PP = 3 * (int64_t)v->patch * v->patch;
    lm_pool *pool = m->pool;
    pass p = {.m = m, .v = v, .T = T, .pix = (float *)pix};
    ws_floats(m, &p.scores_per_thread);
    p.patches = ws; p.x = p.patches + T * PP; p.h = p.x + T * E; p.qkv = p.h + T * E; p.att = p.qkv + 3 * T * E;
    p.ff = p.att + T * E; p.scores = p.ff + T * F;

    per_patch(pool, &p, ST_PATCHES);
    if (linear(pool, &p, p.patches, T, PP, v->patch_w, v->patch_b, E, p.x, false)) return LM_ERR;
    per_patch(pool, &p, ST_POS);
    for (int il = 0; il < hp->n_layer; il++) {
        const vit_layer *l = &v->l[il];
        p.layer = il;
        per_patch(pool, &p, ST_LN1);                                          /* h = LN1(x) */
        if (linear(pool, &p, p.h, T, E, l->wqkv, l->bqkv, 3 * E, p.qkv, false)) return LM_ERR;
        atomic_store(&p.failed, 0);
        lm_pool_run_dynamic(pool, attn_heads, &p, &p.q);
        if (atomic_load(&p.failed)) return lm_err("clip: a oneDNN attention product failed");
        if (linear(pool, &p, p.att, T, E, l->wo, l->bo, E, p.h, false)) return LM_ERR;
        per_patch(pool, &p, ST_RES_LN2);                                      /* x += attn; h = LN2(x) */
        if (linear(pool, &p, p.h, T, E, l->wup, l->bup, F, p.ff, true)) return LM_ERR;
        if (linear(pool, &p, p.ff, T, F, l->wdown, l->bdown, E, p.h, false)) return LM_ERR;
        per_patch(pool, &p, ST_RES);                                          /* x += ffn */
    }
    per_patch(pool, &p, ST_POST);
    shuffle(v, p.x, E, p.h);
    const int64_t SE = E * v->scale * v->scale;
    return linear(pool, &p, p.h, v->n_tok, SE, v->fc, NULL, v->proj_dim, out, false);
}

/* ---- the public entry points (lumen.h: images and vision projectors) ------------------ */

static const vit *vision_of(const lm_model *m, const char *fn) {
    if (!m) { lm_err("%s: model is NULL", fn); return NULL; }
    if (!m->arch->vision) { lm_err("%s: '%s' is not a vision projector (mmproj) but a %s model", fn, m->path, m->arch_name); return NULL; }
    return m->arch_state;
}

lm_status lm_vision_get_info(const lm_model *m, lm_vision_info *o) {
    const vit *v = vision_of(m, "vision_info");
    if (!v || !o) return v ? lm_err("vision_info: out is NULL") : LM_ERR;
    *o = (lm_vision_info){.image_size = v->image, .patch_size = v->patch, .scale_factor = v->scale,
                          .longest_edge = v->longest, .proj_dim = v->proj_dim, .tile_tokens = v->n_tok};
    return LM_OK;
}

lm_status lm_vision_check(const lm_model *mmproj, const lm_model *text) {
    const vit *v = vision_of(mmproj, "vision");
    if (!v) return LM_ERR;
    if (!text || !text->arch->forward) return lm_err("vision: '%s' is not a text model with sessions", text ? text->path : "(null)");
    if (v->proj_dim != text->hp.n_embd)
        return lm_err("vision: the projector '%s' makes rows of %d values, the text model '%s' takes %d (n_embd): "
                      "they are not a pair", mmproj->path, v->proj_dim, text->path, text->hp.n_embd);
    return LM_OK;
}

lm_status lm_vision_grid(const lm_model *m, const lm_image *img, int32_t *gx, int32_t *gy) {
    const vit *v = vision_of(m, "vision_grid");
    if (!v) return LM_ERR;
    if (!img || !gx || !gy) return lm_err("vision_grid: image or output is NULL");
    return lm_image_idefics3(img, v->image, v->longest, v->mean, v->std, LM_RESIZE_LANCZOS, NULL, gx, gy);
}

lm_status lm_vision_preprocess(const lm_model *m, const lm_image *img, float *out) {
    const vit *v = vision_of(m, "vision_preprocess");
    int32_t gx, gy;
    if (!v) return LM_ERR;
    if (!img || !out) return lm_err("vision_preprocess: image or out is NULL");
    return lm_image_idefics3(img, v->image, v->longest, v->mean, v->std, LM_RESIZE_LANCZOS, out, &gx, &gy);
}

lm_status lm_vision_encode(lm_model *m, const lm_image *img, float *out) {
    const vit *v = vision_of(m, "vision_encode");
    int32_t gx, gy;
    if (!v) return LM_ERR;
    if (!img || !out) return lm_err("vision_encode: image or out is NULL");
    if (lm_vision_grid(m, img, &gx, &gy)) return LM_ERR;
    const int64_t n = (int64_t)gx * gy + 1, per = 3 * (int64_t)v->image * v->image;
    int64_t spt;
    const size_t ws_n = ws_floats(m, &spt);
    float *tiles = malloc((size_t)(n * per) * sizeof(float));
    float *ws = aligned_alloc(64, ((ws_n * sizeof(float)) + 63) & ~(size_t)63);
    lm_status st = tiles && ws ? LM_OK : lm_err("vision_encode: out of memory (%lld tiles)", (long long)n);
    if (!st) st = lm_image_idefics3(img, v->image, v->longest, v->mean, v->std, LM_RESIZE_LANCZOS, tiles, &gx, &gy);
    if (!st) {
        pthread_mutex_lock(&m->eval_mu);
        for (int64_t t = 0; t < n && !st; t++)
            st = encode_tile(m, tiles + t * per, out + t * v->n_tok * v->proj_dim, ws);
        pthread_mutex_unlock(&m->eval_mu);
    }
    free(tiles);
    free(ws);
    return st;
}

static const char *const clip_names[] = {"clip", NULL};

const lm_arch_ops lm_arch_clip = {
    .family = "clip", .names = clip_names, .vision = true, .load = clip_load, .unload = clip_unload,
};
