/* Attention over the fp16 KV cache for the query heads that share one KV head
 * (ops.h: lm_attend_group_f16), in zmm. A batched decode step spends its
 * attention here: 32 sequences x 30 layers x 3 KV heads of SmolLM2 each read
 * ~100 cached positions, and the one-head-at-a-time kernel (ops.c) converted
 * every K and V row once per query head, summed each score across lanes on its
 * own and took expf one score at a time.
 *
 * Here each K row is converted once for the group; 16 positions' scores come
 * out of 16 accumulators in one transposing reduction; the softmax is a
 * vector exp; each V row is converted once and feeds up to 4 heads' sums.
 * Every head's arithmetic is the same sequence of operations whatever the
 * group size (1 to any), so a head's output does not depend on which heads it
 * was computed with (test_ops checks this bit for bit). head_dim must be a
 * multiple of 16 and at most LM_ATTEND_MAX_HD (ops.c falls back otherwise).
 *
 * The q8_0 cache (lm_attend_group_q8_0) goes through the same code: only the
 * loads of 16 cached values differ (d * int8 instead of fp16, both exact in
 * float), so the two kernels cannot drift apart. */
#include "../ops.h"
#include "../quant_legacy.h" /* block_q8_0 */

#include <immintrin.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>

/* e^x for 16 floats: ops.c's exp8 (Cephes' polynomial) in zmm */
static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* lane i of the result = the sum of the 16 lanes of a[i] (a fixed tree of
 * unpacks and shuffles: 45 instructions for 16 sums) */
static inline __attribute__((always_inline)) __m512 hsum16(const __m512 a[16]) {
    __m512 b[8], c[4], e[2];
    for (int i = 0; i < 8; i++) /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) /* per lane: the lane's sums of 4 consecutive vectors */
        c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 2; i++)
        e[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(e[0], e[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(e[0], e[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* values [16 c, 16 c + 16) of a cached row as floats: fp16, or q8_0 (d * q) */
static inline __attribute__((always_inline)) __m512 load16(const char *row, int c, bool q8) {
    if (!q8) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 32 * c)));
    const block_q8_0 *b = (const block_q8_0 *)row + c / 2;
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(b->d));
    return _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + 16 * (c % 2))))));
}

/* The weighted sum of V for nb (1..4) heads over dims [d0, d0 + 16 * nv), nv
 * 1..4: each V row converted once, each head's sum over positions in order. */
static inline __attribute__((always_inline)) void v_block(float *out, int hd, const char *v, int64_t stride,
                                                          int32_t n, const float *scores, int64_t ns,
                                                          const float *inv, int nb, int d0, int nv, bool q8) {
    __m512 acc[4][4];
    for (int j = 0; j < nb; j++)
        for (int c = 0; c < nv; c++) acc[j][c] = _mm512_setzero_ps();
    for (int32_t t = 0; t < n; t++) {
        const char *vt = v + (int64_t)t * stride;
        __m512 vr[4];
        for (int c = 0; c < nv; c++) vr[c] = load16(vt, d0 / 16 + c, q8);
        for (int j = 0; j < nb; j++) {
            const __m512 p = _mm512_set1_ps(scores[j * ns + t]);
            for (int c = 0; c < nv; c++) acc[j][c] = _mm512_fmadd_ps(p, vr[c], acc[j][c]);
        }
    }
    for (int j = 0; j < nb; j++)
        for (int c = 0; c < nv; c++)
            _mm512_storeu_ps(out + (int64_t)j * hd + d0 + 16 * c, _mm512_mul_ps(acc[j][c], _mm512_set1_ps(inv[j])));
}

/* The K rows [b, b + m) of the cache (k: the span's first position) as
 * floats in kf (row r at kf + r * hd), the rest of the 16 zero; and the next
 * block's rows asked for while this one is scored (n: the span's length) */
static inline __attribute__((always_inline)) void k_block(float *kf, const char *k, int64_t stride, int hd, int32_t n,
                                                          int32_t b, int lines, bool q8) {
    const int m = n - b < 16 ? n - b : 16, nc = hd / 16;
    for (int r = 16; r < 32 && b + r < n; r++)
        for (int c = 0; c < lines; c++) _mm_prefetch(k + (int64_t)(b + r) * stride + 64 * c, _MM_HINT_T0);
    for (int r = 0; r < 16; r++) {
        const char *kt = k + (int64_t)(b + r) * stride;
        for (int c = 0; c < nc; c++) _mm512_store_ps(kf + r * hd + 16 * c, r < m ? load16(kt, c, q8) : _mm512_setzero_ps());
    }
}

/* The scores of positions [b, b + 16) for nq heads (q, head_dim apart):
 * head j's at scores + j * ns + b. A lane's score depends only on its own K
 * row (hsum16), so rows past a head's span change nothing it reads. */
static inline __attribute__((always_inline)) void score_block(const float *kf, const float *q, int nq, int hd,
                                                              float *scores, int64_t ns, int32_t b, __m512 vscale) {
    const int nc = hd / 16;
    for (int j = 0; j < nq; j++) {
        const float *qj = q + (int64_t)j * hd;
        __m512 acc[16];
        for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
        for (int c = 0; c < nc; c++) {
            const __m512 qc = _mm512_loadu_ps(qj + 16 * c);
            for (int r = 0; r < 16; r++) acc[r] = _mm512_fmadd_ps(qc, _mm512_load_ps(kf + r * hd + 16 * c), acc[r]);
        }
        _mm512_storeu_ps(scores + j * ns + b, _mm512_mul_ps(hsum16(acc), vscale));
    }
}

/* the cache's rows [0, n) of v to L2 (lines: 64-byte lines a row) */
static inline void prefetch_rows(const char *v, int64_t stride, int32_t n, int lines) {
    for (int32_t t = 0; t < n; t++)
        for (int c = 0; c < lines; c++) _mm_prefetch(v + (int64_t)t * stride + 64 * c, _MM_HINT_T1);
}

/* softmax numerators of nq heads' n scores in place (head j's at scores + j
 * * ns), then their weighted sums of V into out */
static inline __attribute__((always_inline)) void finish(float *out, int nq, const char *v, int64_t stride, int hd,
                                                         int32_t n, float *scores, int64_t ns, bool q8) {
    /* softmax numerators in place; 1 / their sum per head */
    float inv[4];
    for (int j0 = 0; j0 < nq; j0 += 4) {
        const int nb = nq - j0 < 4 ? nq - j0 : 4;
        for (int j = 0; j < nb; j++) {
            float *s = scores + (j0 + j) * ns;
            __m512 mx = _mm512_set1_ps(-INFINITY);
            for (int32_t b = 0; b < n; b += 16) {
                const __mmask16 live = n - b >= 16 ? 0xffff : (__mmask16)((1u << (n - b)) - 1);
                mx = _mm512_mask_max_ps(mx, live, mx, _mm512_loadu_ps(s + b));
            }
            const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
            __m512 sum = _mm512_setzero_ps();
            for (int32_t b = 0; b < n; b += 16) {
                const __mmask16 live = n - b >= 16 ? 0xffff : (__mmask16)((1u << (n - b)) - 1);
                const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + b), vmax));
                _mm512_storeu_ps(s + b, e);
                sum = _mm512_mask_add_ps(sum, live, sum, e);
            }
            inv[j] = 1.0f / _mm512_reduce_add_ps(sum);
        }
        /* then the heads' weighted sums of V, 64 dimensions at a time (q is
         * read completely above, so out may be q) */
        float *oj = out + (int64_t)j0 * hd;
        const float *sj = scores + j0 * ns;
        for (int d0 = 0; d0 < hd; d0 += 64) {
            const int nv = hd - d0 >= 64 ? 4 : (hd - d0) / 16;
            switch (nv == 4 ? nb : 0) {
            case 1: v_block(oj, hd, v, stride, n, sj, ns, inv, 1, d0, 4, q8); break;
            case 2: v_block(oj, hd, v, stride, n, sj, ns, inv, 2, d0, 4, q8); break;
            case 3: v_block(oj, hd, v, stride, n, sj, ns, inv, 3, d0, 4, q8); break;
            case 4: v_block(oj, hd, v, stride, n, sj, ns, inv, 4, d0, 4, q8); break;
            default: v_block(oj, hd, v, stride, n, sj, ns, inv, nb, d0, nv, q8); break;
            }
        }
    }
}

/* k, v: position 0 of the kv head; stride in bytes; q8: the cache is q8_0.
 * ntok consecutive tokens of one sequence, token i at q + i * qs (and out +
 * i * qs), attending [t0, t1 + i); one token: the group of heads of ops.h's
 * lm_attend_group_*. The cache is read from memory (a batched step's
 * sequences together outgrow L3) in short strided runs the hardware
 * prefetcher barely starts on: the V rows are asked for at once, to L2, for
 * after the scores, and each block's K rows while the previous block is
 * scored. The scores: 16 positions at a time, their K rows converted once for
 * all the heads and tokens; then each token is finished on its own, so every
 * token's result is the same bits as alone (scores: ntok * nq * round16(t1 +
 * ntok - 1 - t0) floats). */
static inline __attribute__((always_inline)) void attend_tokens(float *out, const float *q, int ntok, int64_t qs, int nq,
                                                                const char *k, const char *v, int64_t stride, int hd,
                                                                int32_t t0, int32_t t1, float scale, float *scores,
                                                                bool q8) {
    const int32_t n0 = t1 - t0, nmax = n0 + ntok - 1;
    const int64_t ns = ((int64_t)nmax + 15) & ~(int64_t)15, per = (int64_t)nq * ns; /* token i's scores at scores + i * per */
    k += (int64_t)t0 * stride;
    v += (int64_t)t0 * stride;
    _Alignas(64) float kf[16 * LM_ATTEND_MAX_HD];
    const __m512 vscale = _mm512_set1_ps(scale);
    const int lines = ((int)lm_kv_row_bytes(q8 ? LM_Q8_0 : LM_F16, hd) + 63) / 64;
    prefetch_rows(v, stride, nmax, lines);
    for (int32_t b = 0; b < nmax; b += 16) {
        k_block(kf, k, stride, hd, nmax, b, lines, q8);
        for (int i = b < n0 ? 0 : b - n0 + 1; i < ntok; i++) /* the tokens whose span reaches the block */
            score_block(kf, q + i * qs, nq, hd, scores + i * per, ns, b, vscale);
    }
    for (int i = 0; i < ntok; i++) finish(out + i * qs, nq, v, stride, hd, n0 + i, scores + i * per, ns, q8);
}

void lm_attend_tokens_f16_avx512(float *out, const float *q, int ntok, int64_t qs, int nq, const uint16_t *k,
                                 const uint16_t *v, int64_t stride, int hd, int32_t t0, int32_t t1, float scale,
                                 float *scores) {
    attend_tokens(out, q, ntok, qs, nq, (const char *)k, (const char *)v, stride * (int64_t)sizeof(uint16_t), hd, t0, t1,
                  scale, scores, false);
}

void lm_attend_tokens_q8_0_avx512(float *out, const float *q, int ntok, int64_t qs, int nq, const void *k, const void *v,
                                  int64_t stride, int hd, int32_t t0, int32_t t1, float scale, float *scores) {
    attend_tokens(out, q, ntok, qs, nq, k, v, stride, hd, t0, t1, scale, scores, true);
}

void lm_attend_group_f16_avx512(float *out, const float *q, int nq, const uint16_t *k, const uint16_t *v,
                                int64_t stride, int hd, int32_t t0, int32_t t1, float scale, float *scores) {
    attend_tokens(out, q, 1, 0, nq, (const char *)k, (const char *)v, stride * (int64_t)sizeof(uint16_t), hd, t0, t1,
                  scale, scores, false);
}

void lm_attend_group_q8_0_avx512(float *out, const float *q, int nq, const void *k, const void *v,
                                 int64_t stride, int hd, int32_t t0, int32_t t1, float scale, float *scores) {
    attend_tokens(out, q, 1, 0, nq, k, v, stride, hd, t0, t1, scale, scores, true);
}
