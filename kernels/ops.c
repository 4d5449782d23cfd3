#include "ops.h"
#include "quant.h" /* lm_cpu_isa */

#include <immintrin.h>
#include <math.h>
#include <string.h>

void lm_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float scale = 1.0f / sqrtf((float)(sum / n) + eps);
    if (w) for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale * w[i];
    else   for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale;
}

void lm_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += x[i];
    const float mean = (float)(sum / n);
    double var = 0.0;
    for (int64_t i = 0; i < n; i++) { float d = x[i] - mean; var += (double)(d * d); }
    const float scale = 1.0f / sqrtf((float)(var / n) + eps);
    for (int64_t i = 0; i < n; i++) {
        float v = (x[i] - mean) * scale;
        if (w) v *= w[i];
        if (b) v += b[i];
        y[i] = v;
    }
}

void lm_rope(float *x, int n_heads, int head_dim, int n_rot, int32_t pos, float freq_base,
             float freq_scale, const float *freq_factors, lm_rope_mode mode) {
    /* Angles as llama.cpp computes them: theta_i = pos * base^(-2i/n_rot), built by
     * repeated multiplication in float, so the rounding matches. */
    float cs[512], sn[512];
    const int half = n_rot / 2;
    const float theta_scale = powf(freq_base, -2.0f / (float)n_rot);
    float theta = (float)pos * freq_scale;
    for (int i = 0; i < half && i < 512; i++) {
        const float th = freq_factors ? theta / freq_factors[i] : theta;
        cs[i] = cosf(th);
        sn[i] = sinf(th);
        theta *= theta_scale;
    }
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (int64_t)h * head_dim;
        if (mode == LM_ROPE_NEOX) {
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * cs[i] - b * sn[i];
                v[i + half] = a * sn[i] + b * cs[i];
            }
        } else {
            for (int i = 0; i < half; i++) {
                float a = v[2 * i], b = v[2 * i + 1];
                v[2 * i] = a * cs[i] - b * sn[i];
                v[2 * i + 1] = a * sn[i] + b * cs[i];
            }
        }
    }
}

void lm_softmax(float *x, int64_t n) {
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++) if (x[i] > max) max = x[i];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) { x[i] = expf(x[i] - max); sum += x[i]; }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void lm_silu(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
}

/* GELU, tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
 * written as x / (1 + e^(-2u)), which is the same value without 1 + tanh(u)'s
 * cancellation for negative x. */
static inline float gelu1(float x) {
    const float u2 = -1.5957691216057308f * x * (1.0f + 0.044715f * x * x); /* -2u */
    return x / (1.0f + expf(u2 < 88.0f ? u2 : 88.0f));
}

void lm_gelu(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = gelu1(x[i]);
}

/* e^x for 8 floats (Cephes' polynomial on x - n ln2, then 2^n into the
 * exponent): within 2 ulp of expf. x is clamped to [-87, 88], where 2^n stays a
 * normal float; beyond it the callers' results are 0 or saturated anyway. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

void lm_softmax_scaled(float *x, int64_t n, float scale) {
    const __m256 vs = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
        _mm256_storeu_ps(x + i, v);
        vmax = _mm256_max_ps(vmax, v);
    }
    float lanes[8], max = -INFINITY;
    _mm256_storeu_ps(lanes, vmax);
    for (int l = 0; l < 8; l++) if (lanes[l] > max) max = lanes[l];
    for (int64_t j = i; j < n; j++) { x[j] *= scale; if (x[j] > max) max = x[j]; }
    const __m256 m = _mm256_set1_ps(max);
    __m256 vsum = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    _mm256_storeu_ps(lanes, vsum);
    float sum = 0;
    for (int l = 0; l < 8; l++) sum += lanes[l];
    for (int64_t j = i; j < n; j++) { x[j] = expf(x[j] - max); sum += x[j]; }
    lm_scale(x, 1.0f / sum, n);
}

/* The gated activations run over every FFN element of a prompt, so they are
 * vectorized (libm's expf/tanhf per element were 15% of Gemma's prefill);
 * the scalar formulas finish the tail and are the reference in test_ops. */
void lm_swiglu(float *x, const float *g, int64_t n) {
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256 s = _mm256_div_ps(v, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), v))));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(s, _mm256_loadu_ps(g + i)));
    }
    for (; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i])) * g[i];
}

void lm_geglu(float *x, const float *g, int64_t n) {
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        /* 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)): the same value without the
         * cancellation of 1 + tanh(u) near -1 */
        const __m256 u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(-1.5957691216057308f), v),
                                       _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), _mm256_mul_ps(v, v), one));
        const __m256 y = _mm256_div_ps(v, _mm256_add_ps(one, exp8(u)));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(y, _mm256_loadu_ps(g + i)));
    }
    for (; i < n; i++) x[i] = gelu1(x[i]) * g[i];
}

void lm_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

void lm_scale(float *y, float s, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] *= s;
}

int64_t lm_argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

void lm_f32_to_f16_row(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

void lm_f16_to_f32_row(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = _cvtsh_ss(x[i]);
}

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

void lm_attend_f16(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                   int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale,
                   float *scores) {
    float max = -INFINITY;
    const int vec = head_dim & ~7, vec32 = head_dim & ~31;
    for (int32_t t = t0; t < t1; t++) {
        const uint16_t *kt = k + (int64_t)t * stride;
        /* four independent sums: one chain of FMAs would wait on each one */
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int i = 0;
        for (; i < vec32; i += 32) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kt + i))), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kt + i + 8))), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 16), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kt + i + 16))), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 24), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kt + i + 24))), a3);
        }
        for (; i < vec; i += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kt + i))), a0);
        float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (; i < head_dim; i++) s += q[i] * _cvtsh_ss(kt[i]);
        s *= scale;
        scores[t] = s;
        if (s > max) max = s;
    }
    double sum = 0.0;
    for (int32_t t = t0; t < t1; t++) { scores[t] = expf(scores[t] - max); sum += scores[t]; }
    const float inv = (float)(1.0 / sum);
    for (int32_t t = t0; t < t1; t++) scores[t] *= inv;
    /* the weighted sum of V in registers, 64 dimensions at a time (each output
     * still sums over t in order) */
    for (int d0 = 0; d0 < vec; d0 += 64) {
        const int nv = (vec - d0 < 64 ? vec - d0 : 64) / 8;
        __m256 acc[8];
        for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
        for (int32_t t = t0; t < t1; t++) {
            const uint16_t *vt = v + (int64_t)t * stride + d0;
            const __m256 pv = _mm256_set1_ps(scores[t]);
            if (nv == 8) {
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++)
                    acc[j] = _mm256_fmadd_ps(pv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vt + 8 * j))), acc[j]);
            } else {
                for (int j = 0; j < nv; j++)
                    acc[j] = _mm256_fmadd_ps(pv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vt + 8 * j))), acc[j]);
            }
        }
        for (int j = 0; j < nv; j++) _mm256_storeu_ps(out + d0 + 8 * j, acc[j]);
    }
    for (int i = vec; i < head_dim; i++) {
        float o = 0;
        for (int32_t t = t0; t < t1; t++) o += scores[t] * _cvtsh_ss(v[(int64_t)t * stride + i]);
        out[i] = o;
    }
}

void lm_attend_group_f16(float *out, const float *q, int nq, const uint16_t *k, const uint16_t *v,
                         int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale, float *scores) {
    if (t1 <= t0) return;
    if (head_dim % 16 == 0 && head_dim <= LM_ATTEND_MAX_HD && lm_cpu_isa() >= LM_ISA_AVX512) {
        lm_attend_group_f16_avx512(out, q, nq, k, v, stride, head_dim, t0, t1, scale, scores);
        return;
    }
    for (int j = 0; j < nq; j++)
        lm_attend_f16(out + (int64_t)j * head_dim, q + (int64_t)j * head_dim, k, v, stride, head_dim, t0, t1, scale, scores);
}

void lm_attend_tokens_f16(float *out, const float *q, int ntok, int64_t qs, int nq, const uint16_t *k,
                          const uint16_t *v, int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale,
                          float *scores) {
    if (t1 <= t0 || ntok < 1) return;
    if (ntok > 1 && head_dim % 16 == 0 && head_dim <= LM_ATTEND_MAX_HD && lm_cpu_isa() >= LM_ISA_AVX512) {
        lm_attend_tokens_f16_avx512(out, q, ntok, qs, nq, k, v, stride, head_dim, t0, t1, scale, scores);
        return;
    }
    for (int i = 0; i < ntok; i++)
        lm_attend_group_f16(out + i * qs, q + i * qs, nq, k, v, stride, head_dim, t0, t1 + i, scale, scores);
}

/* ---- the q8_0 KV cache ------------------------------------------------------------ */

#include "quant_legacy.h" /* block_q8_0 */

size_t lm_kv_row_bytes(int kv_type, int64_t n) {
    return kv_type == LM_Q8_0 ? (size_t)(n / 32) * sizeof(block_q8_0) : (size_t)n * sizeof(uint16_t);
}

/* q8_0 rows through the weights' own quantizer (one rounding rule for both) */
void lm_kv_store_row(int kv_type, const float *x, void *y, int64_t n) {
    if (kv_type == LM_Q8_0) lm_quant_ops_get(LM_Q8_0)->from_float(x, y, n);
    else lm_f32_to_f16_row(x, y, n);
}

static void q8_0_row_to_float(const void *row, float *y, int n) {
    const block_q8_0 *b = row;
    for (int i = 0; i < n / 32; i++) {
        const float d = _cvtsh_ss(b[i].d);
        for (int j = 0; j < 32; j++) y[32 * i + j] = d * (float)b[i].qs[j];
    }
}

void lm_attend_group_q8_0_ref(float *out, const float *q, int nq, const void *k, const void *v,
                              int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale, float *scores) {
    float row[1024];
    for (int j = 0; j < nq; j++) {
        const float *qj = q + (int64_t)j * head_dim;
        float max = -INFINITY;
        for (int32_t t = t0; t < t1; t++) {
            q8_0_row_to_float((const char *)k + t * stride, row, head_dim);
            float s = 0;
            for (int i = 0; i < head_dim; i++) s += qj[i] * row[i];
            scores[t - t0] = s * scale;
            if (scores[t - t0] > max) max = scores[t - t0];
        }
        double sum = 0.0;
        for (int32_t t = 0; t < t1 - t0; t++) { scores[t] = expf(scores[t] - max); sum += scores[t]; }
        const float inv = (float)(1.0 / sum);
        float *oj = out + (int64_t)j * head_dim; /* q is read completely above, so out may be q */
        for (int i = 0; i < head_dim; i++) oj[i] = 0;
        for (int32_t t = t0; t < t1; t++) {
            q8_0_row_to_float((const char *)v + t * stride, row, head_dim);
            const float p = scores[t - t0] * inv;
            for (int i = 0; i < head_dim; i++) oj[i] += p * row[i];
        }
    }
}

void lm_attend_group_q8_0(float *out, const float *q, int nq, const void *k, const void *v,
                          int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale, float *scores) {
    if (t1 <= t0) return;
    if (head_dim <= LM_ATTEND_MAX_HD && lm_cpu_isa() >= LM_ISA_AVX512)
        lm_attend_group_q8_0_avx512(out, q, nq, k, v, stride, head_dim, t0, t1, scale, scores);
    else
        lm_attend_group_q8_0_ref(out, q, nq, k, v, stride, head_dim, t0, t1, scale, scores);
}

void lm_attend_tokens_q8_0(float *out, const float *q, int ntok, int64_t qs, int nq, const void *k, const void *v,
                           int64_t stride, int head_dim, int32_t t0, int32_t t1, float scale, float *scores) {
    if (t1 <= t0 || ntok < 1) return;
    if (ntok > 1 && head_dim <= LM_ATTEND_MAX_HD && lm_cpu_isa() >= LM_ISA_AVX512) {
        lm_attend_tokens_q8_0_avx512(out, q, ntok, qs, nq, k, v, stride, head_dim, t0, t1, scale, scores);
        return;
    }
    for (int i = 0; i < ntok; i++)
        lm_attend_group_q8_0(out + i * qs, q + i * qs, nq, k, v, stride, head_dim, t0, t1 + i, scale, scores);
}
