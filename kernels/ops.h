/* Float ops of the transformer forward pass (plain C, auto-vectorized under the
 * x86-64-v3 baseline; F16C for the fp16 KV cache). The arithmetic follows
 * llama.cpp's where rounding order matters for agreement (RMSNorm sums in
 * double, RoPE angles by repeated float multiplication). */
#ifndef LM_OPS_H
#define LM_OPS_H
#include <stdint.h>
#include <stddef.h>

/* y = x / rms(x) * w  (w may be NULL: no weight). y may alias x. */
void lm_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps);
/* y = (x - mean) / sqrt(var + eps) * w + b  (w, b may be NULL). y may alias x. */
void lm_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, float eps);

typedef enum { LM_ROPE_NORM = 0, LM_ROPE_NEOX = 2 } lm_rope_mode;
/* Rotates the first n_rot dims of each of n_heads heads (head_dim apart) at position pos. */
/* freq_factors: NULL, or n_rot/2 divisors of the angles (Llama 3's rope scaling, the
 * GGUF tensor rope_freqs.weight), applied as llama.cpp does: theta_i / freq_factors[i]. */
void lm_rope(float *x, int n_heads, int head_dim, int n_rot, int32_t pos, float freq_base,
             float freq_scale, const float *freq_factors, lm_rope_mode mode);

void lm_softmax(float *x, int64_t n);
/* x = softmax(x * scale) with vectorized exponentials (within 2 ulp of expf): attention rows. */
void lm_softmax_scaled(float *x, int64_t n, float scale);
void lm_silu(float *x, int64_t n);
void lm_gelu(float *x, int64_t n);          /* tanh approximation */
/* x = act(x) * g, for the gated FFN. */
void lm_swiglu(float *x, const float *g, int64_t n);
void lm_geglu(float *x, const float *g, int64_t n);
void lm_add(float *y, const float *x, int64_t n);   /* y += x */
void lm_scale(float *y, float s, int64_t n);
int64_t lm_argmax(const float *x, int64_t n);

void lm_f32_to_f16_row(const float *x, uint16_t *y, int64_t n);
void lm_f16_to_f32_row(const uint16_t *x, float *y, int64_t n);

/* One query head attending over a fp16 KV cache (out may be q itself: q is
 * read completely before out is written):
 * out[0..hd) = sum_t softmax_t(scale * q.k_t (+ softcap)) v_t for t in [t0, t1).
 * k and v point at position 0 of this kv head; consecutive positions are
 * `stride` halves apart. scores needs t1 floats. */
void lm_attend_f16(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                   int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale,
                   float *scores);

/* The nq query heads that share one kv head (consecutive in q and out,
 * head_dim apart), each as lm_attend_f16 computes it: K and V rows are read
 * once for the group. scores needs lm_attend_scores(nq, t1 - t0) floats. A
 * head's result does not depend on nq (the same bits alone or in a group);
 * it may differ from lm_attend_f16's in the last bits (another kernel: AVX-512
 * where the CPU has it and head_dim is a multiple of 16 up to
 * LM_ATTEND_MAX_HD, else lm_attend_f16 head by head). */
#define LM_ATTEND_MAX_HD 256
void lm_attend_group_f16(float *out, const float *q, int nq, const uint16_t *k, const uint16_t *v,
                         int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale, float *scores);
static inline int64_t lm_attend_scores(int nq, int64_t n) { return (int64_t)nq * ((n + 15) & ~(int64_t)15); }
void lm_attend_group_f16_avx512(float *out, const float *q, int nq, const uint16_t *k, const uint16_t *v,
                                int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale, float *scores);

/* The same over a q8_0 KV cache (a row of head_dim values is head_dim / 32
 * blocks of an fp16 scale and 32 int8, ggml's block_q8_0; head_dim a multiple
 * of 32): each cached value is d * q, exact in float, then the arithmetic of
 * the fp16 kernel. k and v point at position 0 of this kv head's blocks;
 * consecutive positions are `stride` BYTES apart. lm_attend_group_q8_0_ref is
 * the scalar reference (head by head, in plain C); the dispatching function
 * takes AVX-512 where the CPU has it and head_dim <= LM_ATTEND_MAX_HD, within
 * 2e-5 of the reference (test_ops), a head's bits independent of nq. */
void lm_attend_group_q8_0(float *out, const float *q, int nq, const void *k, const void *v,
                          int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale, float *scores);
void lm_attend_group_q8_0_ref(float *out, const float *q, int nq, const void *k, const void *v,
                              int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale, float *scores);
void lm_attend_group_q8_0_avx512(float *out, const float *q, int nq, const void *k, const void *v,
                                 int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale, float *scores);

/* A prompt's consecutive tokens at once: ntok tokens of one sequence, token
 * i's nq heads at q + i * qs (its result at out + i * qs, which may be q),
 * attending [t0, t1 + i). Each token's result is lm_attend_group_*'s for it
 * alone, bit for bit; the AVX-512 kernel converts each K row once for all
 * the tokens (a prompt's tokens read the same rows) and asks for the V rows
 * once. scores needs lm_attend_tokens_scores(ntok, nq, t1 + ntok - 1 - t0)
 * floats. */
void lm_attend_tokens_f16(float *out, const float *q, int ntok, int64_t qs, int nq, const uint16_t *k,
                          const uint16_t *v, int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale,
                          float *scores);
void lm_attend_tokens_q8_0(float *out, const float *q, int ntok, int64_t qs, int nq, const void *k, const void *v,
                           int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale, float *scores);
void lm_attend_tokens_f16_avx512(float *out, const float *q, int ntok, int64_t qs, int nq, const uint16_t *k,
                                 const uint16_t *v, int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale,
                                 float *scores);
void lm_attend_tokens_q8_0_avx512(float *out, const float *q, int ntok, int64_t qs, int nq, const void *k, const void *v,
                                  int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale, float *scores);
static inline int64_t lm_attend_tokens_scores(int ntok, int nq, int64_t n) { return (int64_t)ntok * lm_attend_scores(nq, n); }
/* Tokens a prompt's attention task takes at once (the session's scratch:
 * lm_attend_scratch floats a thread, enough for that many at 2048 positions,
 * fewer beyond) */
#define LM_ATTEND_TOKENS 16
static inline int64_t lm_attend_scratch(int nq, int64_t n_ctx) {
    const int64_t one = lm_attend_scores(nq, n_ctx), many = lm_attend_tokens_scores(LM_ATTEND_TOKENS, nq, 2048);
    return one > many ? one : many;
}
/* The KV cache's element types: the bytes of one row of n values (n a
 * multiple of 32 for q8_0), and a row of floats stored as one. */
size_t lm_kv_row_bytes(int kv_type, int64_t n);
void lm_kv_store_row(int kv_type, const float *x, void *y, int64_t n);

#endif
