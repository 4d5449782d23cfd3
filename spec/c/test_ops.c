/* Float ops against straightforward double-precision definitions. */
#include "testutil.h"
#include "ops.h"
#include "pool.h"
#include "quant.h"
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_rmsnorm(void) {
    uint64_t r = 1;
    float x[576], w[576], y[576];
    for (int i = 0; i < 576; i++) { x[i] = tu_randf(&r, -3, 3); w[i] = tu_randf(&r, 0.5f, 1.5f); }
    double ss = 0;
    for (int i = 0; i < 576; i++) ss += (double)x[i] * x[i];
    double sc = 1.0 / sqrt(ss / 576 + 1e-5);
    lm_rmsnorm(y, x, w, 576, 1e-5f);
    double err = 0;
    for (int i = 0; i < 576; i++) err = fmax(err, fabs(y[i] - x[i] * sc * w[i]));
    CHECK(err < 1e-5, "rmsnorm error %g", err);
    lm_rmsnorm(x, x, NULL, 576, 1e-5f); /* in place, no weight */
    ss = 0;
    for (int i = 0; i < 576; i++) ss += (double)x[i] * x[i];
    CHECK(fabs(ss / 576 - 1.0) < 1e-3, "unit rms after norm (%g)", ss / 576);
}

static void test_rope(void) {
    const int heads = 3, hd = 64;
    float x[3 * 64], ref[3 * 64];
    uint64_t r = 2;
    /* Llama 3's frequency factors (rope_freqs.weight of Llama-3.2-1B: base 500000, factor
     * 32, low/high frequency factors 1/4, original context 8192) divide the angles */
    float ff[32];
    for (int i = 0; i < hd / 2; i++) {
        double wl = 2 * M_PI * pow(500000.0, 2.0 * i / hd), lo = 8192.0, hi = 8192.0 / 4, sm = (8192.0 / wl - 1) / 3;
        ff[i] = wl < hi ? 1.0f : wl > lo ? 32.0f : (float)(1 / ((1 - sm) / 32 + sm));
    }
    for (int c = 0; c < 4; c++) {
        const int mode = c % 2 ? LM_ROPE_NEOX : LM_ROPE_NORM;
        const bool scaled = c >= 2;
        const double base = scaled ? 500000.0 : 10000.0;
        for (int i = 0; i < heads * hd; i++) x[i] = ref[i] = tu_randf(&r, -1, 1);
        int pos = scaled ? 5000 : 37;
        lm_rope(x, heads, hd, hd, pos, (float)base, 1.0f, scaled ? ff : NULL, mode);
        double err = 0, norm_in = 0, norm_out = 0;
        for (int h = 0; h < heads; h++) {
            for (int i = 0; i < hd / 2; i++) {
                double th = pos * pow(base, -2.0 * i / hd) / (scaled ? ff[i] : 1.0);
                int a = mode ? i : 2 * i, b = mode ? i + hd / 2 : 2 * i + 1;
                double xa = ref[h * hd + a], xb = ref[h * hd + b];
                double ya = xa * cos(th) - xb * sin(th), yb = xa * sin(th) + xb * cos(th);
                err = fmax(err, fabs(ya - x[h * hd + a]));
                err = fmax(err, fabs(yb - x[h * hd + b]));
                norm_in += xa * xa + xb * xb;
                norm_out += (double)x[h * hd + a] * x[h * hd + a] + (double)x[h * hd + b] * x[h * hd + b];
            }
        }
        /* float angles: relative error ~1e-7 of pos * theta, so the bound grows with pos */
        CHECK(err < (scaled ? 2e-3 : 2e-4), "rope mode %d%s error %g", mode, scaled ? " (freq factors)" : "", err);
        CHECK(fabs(norm_in - norm_out) < 1e-3, "rope preserves the norm");
    }
    /* position 0 is the identity */
    for (int i = 0; i < hd; i++) x[i] = ref[i] = (float)i;
    lm_rope(x, 1, hd, hd, 0, 10000.0f, 1.0f, NULL, LM_ROPE_NORM);
    CHECK(!memcmp(x, ref, hd * sizeof(float)), "rope at position 0 changes nothing");
    /* factors of 1 change nothing: the same bits as none */
    float ones[32], y[64];
    for (int i = 0; i < hd / 2; i++) ones[i] = 1.0f;
    for (int i = 0; i < hd; i++) x[i] = y[i] = tu_randf(&r, -1, 1);
    lm_rope(x, 1, hd, hd, 123, 500000.0f, 1.0f, NULL, LM_ROPE_NORM);
    lm_rope(y, 1, hd, hd, 123, 500000.0f, 1.0f, ones, LM_ROPE_NORM);
    CHECK(!memcmp(x, y, hd * sizeof(float)), "frequency factors of 1 give the same bits as none");
}

static void test_softmax_act(void) {
    float x[5] = {1, 2, 3, 1000, -1000};
    lm_softmax(x, 5);
    CHECK(fabsf(x[3] - 1.0f) < 1e-6f && x[4] == 0.0f, "softmax is stable for large inputs");
    float s[3] = {-2, 0, 2};
    lm_silu(s, 3);
    CHECK(fabsf(s[0] - (-2 / (1 + expf(2)))) < 1e-6f && s[1] == 0 && fabsf(s[2] - 2 / (1 + expf(-2))) < 1e-6f, "silu");
    float g[3] = {-1, 0, 1};
    {   /* the vectorized gated activations agree with the scalar formulas */
        enum { N = 1003 };   /* a tail after the vector loop */
        static float a[N], b[N], ga[N], gb[N], gate[N];
        uint64_t st = 99;
        double worst_s = 0, worst_g = 0, worst_gx = 0;
        for (int i = 0; i < N; i++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            float u = (float)((st >> 40) & 0xFFFFFF) / 16777216.0f;
            a[i] = ga[i] = (i < 20) ? (float)(i - 10) * 12.0f : (u - 0.5f) * 24.0f;   /* includes +-120: saturation */
            gate[i] = 0.5f + u;
        }
        memcpy(b, a, sizeof a); memcpy(gb, ga, sizeof ga);
        lm_swiglu(a, gate, N);
        lm_geglu(ga, gate, N);
        for (int i = 0; i < N; i++) {
            float x = b[i], rs = x / (1.0f + expf(-x)) * gate[i];
            /* in double, as x / (1 + e^(-2u)) = 0.5 x (1 + tanh(u)): 1 + tanh(u) loses every digit as u -> -inf */
            double u = 0.7978845608028654 * x * (1.0 + 0.044715 * (double)x * x);
            double rg = x / (1.0 + exp(-2.0 * u)) * gate[i];
            double es = fabs((double)a[i] - rs) / fmax(1e-30, fmax(fabs(rs), 1e-6));
            double eg = fabs((double)ga[i] - rg) / fmax(fabs(rg), 1e-12);
            if (es > worst_s) worst_s = es;
            if (eg > worst_g) { worst_g = eg; worst_gx = x; }
            CHECK(isfinite(a[i]) && isfinite(ga[i]), "swiglu/geglu not finite at x=%g", x);
        }
        CHECK(worst_s < 2e-6, "vector swiglu off the scalar formula by %g (relative)", worst_s);
        /* float u carries ~1e-7 relative; e^(-2u) multiplies that by |2u| (about 30 where gelu is still > 1e-12) */
        CHECK(worst_g < 1e-5, "vector geglu off the scalar formula by %g (relative) at x = %g", worst_g, worst_gx);
        (void)gb;
    }
    lm_gelu(g, 3);
    CHECK(fabsf(g[2] - 0.841192f) < 1e-4f && fabsf(g[0] + 0.158808f) < 1e-4f, "gelu (tanh approximation)");
    float a[4] = {1, 5, 5, 2};
    CHECK(lm_argmax(a, 4) == 1, "argmax takes the first maximum");
}

/* One head's attention by the definition, in double precision: rows t0..t1-1
 * of k and v (row t at t * stride), the result in out[0..HD). */
static void attend_double(const float *q, const float *k, const float *v, int64_t stride, int HD, int t0, int t1,
                          double scale, double *out) {
    static double sc[4096];
    double mx = -1e30, sum = 0;
    for (int t = t0; t < t1; t++) {
        double d = 0;
        for (int i = 0; i < HD; i++) d += (double)q[i] * k[t * stride + i];
        sc[t] = d * scale;
        if (sc[t] > mx) mx = sc[t];
    }
    for (int t = t0; t < t1; t++) { sc[t] = exp(sc[t] - mx); sum += sc[t]; }
    for (int i = 0; i < HD; i++) {
        double acc = 0;
        for (int t = t0; t < t1; t++) acc += sc[t] / sum * v[t * stride + i];
        out[i] = acc;
    }
}

static void attention_case(const int HD) {
    enum { T = 50, MAXHD = 256 + 12, STRIDE = 3 * MAXHD };
    uint64_t r = 3 + (uint64_t)HD;
    static uint16_t k[T * STRIDE], v[T * STRIDE];
    static float kf[T * STRIDE], vf[T * STRIDE];
    float q[MAXHD], out[MAXHD], scores[T];
    for (int i = 0; i < T * STRIDE; i++) { kf[i] = tu_randf(&r, -1, 1); vf[i] = tu_randf(&r, -1, 1); }
    lm_f32_to_f16_row(kf, k, T * STRIDE);
    lm_f32_to_f16_row(vf, v, T * STRIDE);
    lm_f16_to_f32_row(k, kf, T * STRIDE);
    lm_f16_to_f32_row(v, vf, T * STRIDE);
    for (int i = 0; i < HD; i++) q[i] = tu_randf(&r, -1, 1);
    const int t0 = 5, t1 = 41;
    const float scale = 0.125f;
    double ref[MAXHD];
    attend_double(q, kf + HD, vf + HD, STRIDE, HD, t0, t1, scale, ref);
    lm_attend_f16(out, q, k + HD, v + HD, STRIDE, HD, t0, t1, scale, scores);
    double err = 0;
    for (int i = 0; i < HD; i++) err = fmax(err, fabs(out[i] - ref[i]));
    CHECK(err < 1e-5, "attention over a window of the fp16 cache (head_dim %d): error %g", HD, err);
}

/* head sizes of the models (64, 128, 256) and ones that leave 8-wide and scalar tails */
static void test_attention(void) {
    static const int hds[] = {64, 128, 256, 8, 40, 72, 100, 256 + 12};
    for (size_t i = 0; i < sizeof hds / sizeof *hds; i++) attention_case(hds[i]);
}

/* The grouped kernel: each head of a group against the double-precision
 * definition, and the same bits as that head computed alone (the server's
 * batched steps group heads, a one-token decode does not); out may be q. */
static void attention_group_case(int HD, int nq, int t0, int t1) {
    enum { T = 300, MAXHD = 256 + 12, NQ = 8, STRIDE = MAXHD + 16 };
    static uint16_t k[T * STRIDE], v[T * STRIDE];
    static float kf[T * STRIDE], vf[T * STRIDE], scores[NQ * (T + 16)];
    static float q[NQ * MAXHD], out[NQ * MAXHD], one[MAXHD], inplace[NQ * MAXHD];
    uint64_t r = 7 + (uint64_t)HD * 31 + (uint64_t)t1;
    for (int i = 0; i < T * STRIDE; i++) { kf[i] = tu_randf(&r, -1, 1); vf[i] = tu_randf(&r, -1, 1); }
    lm_f32_to_f16_row(kf, k, T * STRIDE);
    lm_f32_to_f16_row(vf, v, T * STRIDE);
    lm_f16_to_f32_row(k, kf, T * STRIDE);
    lm_f16_to_f32_row(v, vf, T * STRIDE);
    for (int i = 0; i < nq * HD; i++) q[i] = tu_randf(&r, -2, 2);
    memset(out, 0, sizeof out);
    const float scale = 1.0f / sqrtf((float)HD);
    lm_attend_group_f16(out, q, nq, k + 3, v + 3, STRIDE, HD, t0, t1, scale, scores);
    memcpy(inplace, q, sizeof(float) * nq * HD);
    lm_attend_group_f16(inplace, inplace, nq, k + 3, v + 3, STRIDE, HD, t0, t1, scale, scores);
    double err = 0;
    int same = 1;
    for (int j = 0; j < nq; j++) {
        double def[MAXHD];
        attend_double(q + j * HD, kf + 3, vf + 3, STRIDE, HD, t0, t1, scale, def);
        for (int i = 0; i < HD; i++) err = fmax(err, fabs(out[j * HD + i] - def[i]));
        lm_attend_group_f16(one, q + j * HD, 1, k + 3, v + 3, STRIDE, HD, t0, t1, scale, scores);
        same = same && !memcmp(one, out + j * HD, sizeof(float) * HD) && !memcmp(inplace + j * HD, out + j * HD, sizeof(float) * HD);
    }
    CHECK(err < 2e-5, "grouped attention, head_dim %d, %d heads, positions [%d, %d): error %g", HD, nq, t0, t1, err);
    CHECK(same, "grouped attention, head_dim %d, %d heads, positions [%d, %d): a head alone or in place gives other bits", HD, nq, t0, t1);
}

static void test_attention_group(void) {
    static const int hds[] = {64, 128, 256, 16, 80, 72, 40};
    static const int nqs[] = {1, 3, 4, 5, 8};
    static const int spans[][2] = {{0, 1}, {0, 15}, {2, 18}, {0, 17}, {5, 41}, {0, 300}, {100, 283}};
    for (size_t a = 0; a < sizeof hds / sizeof *hds; a++)
        for (size_t b = 0; b < sizeof nqs / sizeof *nqs; b++)
            for (size_t c = 0; c < sizeof spans / sizeof *spans; c++)
                attention_group_case(hds[a], nqs[b], spans[c][0], spans[c][1]);
}

/* The q8_0 KV cache: the scalar reference against the double-precision
 * definition over the dequantized cache (d * q), the AVX-512 kernel against
 * the reference (within 2e-5: another order of float sums), and a head's bits
 * the same alone, in a group and in place. Rows are kv heads side by side, as
 * in a session's cache: the head under test starts one block into the row. */
static void attention_q8_0_case(int HD, int nq, int t0, int t1) {
    enum { T = 300, MAXHD = 256, NQ = 8, ROWF = MAXHD + 32, ROWB = ROWF / 32 * 34 };
    static char k[T * ROWB], v[T * ROWB];
    static float kf[ROWF], vf[ROWF], kd[T * MAXHD], vd[T * MAXHD], scores[NQ * (T + 16)];
    static float q[NQ * MAXHD], out[NQ * MAXHD], ref[NQ * MAXHD], one[MAXHD], inplace[NQ * MAXHD];
    uint64_t r = 11 + (uint64_t)HD * 17 + (uint64_t)t1;
    const int64_t stride = (int64_t)lm_kv_row_bytes(LM_Q8_0, HD + 32);
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < HD + 32; i++) { kf[i] = tu_randf(&r, -1, 1); vf[i] = tu_randf(&r, -1, 1); }
        lm_kv_store_row(LM_Q8_0, kf, k + t * stride, HD + 32);
        lm_kv_store_row(LM_Q8_0, vf, v + t * stride, HD + 32);
        lm_quant_ops_get(LM_Q8_0)->to_float(k + t * stride + 34, kd + t * HD, HD);
        lm_quant_ops_get(LM_Q8_0)->to_float(v + t * stride + 34, vd + t * HD, HD);
    }
    for (int i = 0; i < nq * HD; i++) q[i] = tu_randf(&r, -2, 2);
    const float scale = 1.0f / sqrtf((float)HD);
    lm_attend_group_q8_0_ref(ref, q, nq, k + 34, v + 34, stride, HD, t0, t1, scale, scores);
    lm_attend_group_q8_0(out, q, nq, k + 34, v + 34, stride, HD, t0, t1, scale, scores);
    memcpy(inplace, q, sizeof(float) * nq * HD);
    lm_attend_group_q8_0(inplace, inplace, nq, k + 34, v + 34, stride, HD, t0, t1, scale, scores);
    double err_ref = 0, err = 0, kvq = 0;
    int same = 1;
    for (int j = 0; j < nq; j++) {
        double def[MAXHD];
        attend_double(q + j * HD, kd, vd, HD, HD, t0, t1, scale, def);
        for (int i = 0; i < HD; i++) {
            err_ref = fmax(err_ref, fabs(ref[j * HD + i] - def[i]));
            err = fmax(err, fabs(out[j * HD + i] - ref[j * HD + i]));
            kvq = fmax(kvq, fabs(def[i]));
        }
        lm_attend_group_q8_0(one, q + j * HD, 1, k + 34, v + 34, stride, HD, t0, t1, scale, scores);
        same = same && !memcmp(one, out + j * HD, sizeof(float) * HD) && !memcmp(inplace + j * HD, out + j * HD, sizeof(float) * HD);
    }
    CHECK(kvq > 0.01, "q8_0 attention, head_dim %d: the case is not degenerate", HD);
    CHECK(err_ref < 2e-5, "q8_0 attention reference, head_dim %d, %d heads, [%d, %d): error %g", HD, nq, t0, t1, err_ref);
    CHECK(err < 2e-5, "q8_0 attention kernel vs reference, head_dim %d, %d heads, [%d, %d): error %g", HD, nq, t0, t1, err);
    CHECK(same, "q8_0 attention, head_dim %d, %d heads, [%d, %d): a head alone or in place gives other bits", HD, nq, t0, t1);
}

static void test_attention_q8_0(void) {
    static const int hds[] = {64, 128, 256, 32, 96};
    static const int nqs[] = {1, 3, 4, 5, 8};
    static const int spans[][2] = {{0, 1}, {0, 15}, {2, 18}, {0, 17}, {5, 41}, {0, 300}, {100, 283}};
    for (size_t a = 0; a < sizeof hds / sizeof *hds; a++)
        for (size_t b = 0; b < sizeof nqs / sizeof *nqs; b++)
            for (size_t c = 0; c < sizeof spans / sizeof *spans; c++)
                attention_q8_0_case(hds[a], nqs[b], spans[c][0], spans[c][1]);
}

/* A prompt's tokens at once (lm_attend_tokens_*): token i of ntok, its nq
 * heads at q + i * qs, attending [t0, t1 + i), gives the bits of the same
 * token alone (lm_attend_group_*), in place too, over the fp16 and the q8_0
 * cache; and the cache rows past the last token's span are not read (they
 * hold NaN here). */
static void attention_tokens_case(int q8, int HD, int nq, int ntok, int t0, int t1) {
    enum { T = 300, MAXHD = 256, NQ = 8, NT = 20, ROWF = MAXHD + 32, ROWB = ROWF / 32 * 34 };
    static uint16_t kh[T * ROWF], vh[T * ROWF];
    static char kq[T * ROWB], vq[T * ROWB];
    static float row[ROWF], scores[NT * NQ * (T + 16)];
    static float q[NT * NQ * MAXHD], out[NT * NQ * MAXHD], one[NQ * MAXHD], inplace[NT * NQ * MAXHD];
    uint64_t r = 5 + (uint64_t)HD * 13 + (uint64_t)ntok * 7 + (uint64_t)t1;
    const int64_t stride = q8 ? (int64_t)lm_kv_row_bytes(LM_Q8_0, HD + 32) : HD + 32; /* bytes, or halves */
    const int64_t qs = (int64_t)nq * HD + 16, last = t1 + ntok - 1;
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < HD + 32; i++) row[i] = t < last ? tu_randf(&r, -1, 1) : NAN;
        if (q8) lm_kv_store_row(LM_Q8_0, row, kq + t * stride, HD + 32);
        else lm_f32_to_f16_row(row, kh + t * stride, HD + 32);
        for (int i = 0; i < HD + 32; i++) row[i] = t < last ? tu_randf(&r, -1, 1) : NAN;
        if (q8) lm_kv_store_row(LM_Q8_0, row, vq + t * stride, HD + 32);
        else lm_f32_to_f16_row(row, vh + t * stride, HD + 32);
    }
    for (int i = 0; i < ntok * qs; i++) q[i] = tu_randf(&r, -2, 2);
    const float scale = 1.0f / sqrtf((float)HD);
    const void *k = q8 ? (const void *)(kq + 34) : (const void *)(kh + 32), *v = q8 ? (const void *)(vq + 34) : (const void *)(vh + 32);
#define TOKENS(o, qq) (q8 ? lm_attend_tokens_q8_0(o, qq, ntok, qs, nq, k, v, stride, HD, t0, t1, scale, scores) \
                          : lm_attend_tokens_f16(o, qq, ntok, qs, nq, k, v, stride, HD, t0, t1, scale, scores))
    TOKENS(out, q);
    memcpy(inplace, q, sizeof(float) * ntok * qs);
    TOKENS(inplace, inplace);
#undef TOKENS
    int same = 1, finite = 1;
    for (int i = 0; i < ntok; i++) {
        if (q8) lm_attend_group_q8_0(one, q + i * qs, nq, k, v, stride, HD, t0, t1 + i, scale, scores);
        else lm_attend_group_f16(one, q + i * qs, nq, k, v, stride, HD, t0, t1 + i, scale, scores);
        same = same && !memcmp(one, out + i * qs, sizeof(float) * nq * HD) && !memcmp(inplace + i * qs, one, sizeof(float) * nq * HD);
        for (int e = 0; e < nq * HD; e++) finite = finite && isfinite(out[i * qs + e]);
    }
    CHECK(finite, "%s attention, %d tokens at once (head_dim %d, %d heads, [%d, %d + i)): a NaN from past the spans",
          q8 ? "q8_0" : "fp16", ntok, HD, nq, t0, t1);
    CHECK(same, "%s attention, %d tokens at once (head_dim %d, %d heads, [%d, %d + i)): other bits than each token alone",
          q8 ? "q8_0" : "fp16", ntok, HD, nq, t0, t1);
}

static void test_attention_tokens(void) {
    static const int hds[] = {64, 128, 32, 80, 40};
    static const int nqs[] = {1, 4, 5};
    static const int nts[] = {1, 2, 3, 16, 17, 20};
    static const int spans[][2] = {{0, 1}, {0, 15}, {2, 18}, {5, 41}, {100, 270}};
    for (int q8 = 0; q8 < 2; q8++)
        for (size_t a = 0; a < sizeof hds / sizeof *hds; a++)
            for (size_t b = 0; b < sizeof nqs / sizeof *nqs; b++)
                for (size_t n = 0; n < sizeof nts / sizeof *nts; n++)
                    for (size_t c = 0; c < sizeof spans / sizeof *spans; c++)
                        if (!q8 || hds[a] % 32 == 0) attention_tokens_case(q8, hds[a], nqs[b], nts[n], spans[c][0], spans[c][1]);
}

static atomic_int hits[4];
static void count3(void *ctx, int ith, int nth) { (void)ctx; atomic_fetch_add(&hits[ith], 1); CHECK(nth == 3, "nth"); }
static void count(void *ctx, int ith, int nth) { (void)ctx; atomic_fetch_add(&hits[ith], 1); CHECK(nth == 2, "nth"); }
static void sum_part(void *ctx, int ith, int nth) {
    int64_t lo, hi;
    lm_pool_split(1000, 16, ith, nth, &lo, &hi);
    long long s = 0;
    for (int64_t i = lo; i < hi; i++) s += i;
    atomic_fetch_add((atomic_llong *)ctx, s);
}

static void test_pool(void) {
    lm_pool *p = lm_pool_new(2);
    CHECK(p && lm_pool_size(p) == 2, "pool of 2");
    for (int i = 0; i < 5000; i++) lm_pool_run(p, count, NULL);
    CHECK(hits[0] == 5000 && hits[1] == 5000, "every region runs once per thread (%d, %d)", hits[0], hits[1]);
    atomic_llong total = 0;
    lm_pool_run(p, sum_part, &total);
    CHECK(total == 999 * 1000 / 2, "split covers [0, n) exactly once");
    int64_t lo, hi;
    lm_pool_split(100, 16, 1, 2, &lo, &hi);
    CHECK(lo % 16 == 0 && hi == 100, "aligned split [%lld, %lld)", (long long)lo, (long long)hi);
    lm_pool_free(p);
}

/* Dynamic regions back to back, mixed with fixed ones, on more threads than
 * cores (so workers arrive late, after a region closed, or while the next is
 * being set up): every item is done once, fn never runs for a region that has
 * returned, and the workers do take part. */
typedef struct { lm_pool_queue q; int64_t n; int region; atomic_int marks[64]; } dyn_job;
static atomic_int current_region = -1, stale_calls, worker_items;
static void dyn_items(void *vctx, int ith, int nth) {
    dyn_job *j = vctx;
    if (atomic_load(&current_region) != j->region) atomic_fetch_add(&stale_calls, 1);
    int64_t lo, hi;
    while (lm_pool_take(&j->q, j->n, 1, nth, &lo, &hi))
        for (int64_t i = lo; i < hi; i++) {
            atomic_fetch_add(&j->marks[i], 1);
            if (ith > 0) atomic_fetch_add(&worker_items, 1);
        }
}

/* The caller holds back until a worker has taken an item (or 30 s pass): the
 * regions above may all end before a worker is scheduled on a busy machine. */
static void dyn_items_after_worker(void *vctx, int ith, int nth) {
    for (int k = 0; ith == 0 && k < 30000 && !atomic_load(&worker_items); k++) usleep(1000);
    dyn_items(vctx, ith, nth);
}

static void test_pool_dynamic(void) {
    lm_pool *p = lm_pool_new(3);
    int bad = 0;
    memset(hits, 0, sizeof hits);
    for (int r = 0; r < 20000; r++) {
        if (r % 7 == 3) { lm_pool_run(p, count3, NULL); continue; }
        dyn_job j = {.n = 1 + r % 64, .region = r};
        for (int i = 0; i < 64; i++) atomic_init(&j.marks[i], 0);
        atomic_store(&current_region, r);
        lm_pool_run_dynamic(p, dyn_items, &j, &j.q);
        atomic_store(&current_region, -1);
        for (int i = 0; i < 64; i++) bad += atomic_load(&j.marks[i]) != (i < j.n);
    }
    dyn_job last = {.n = 64, .region = -2};
    for (int i = 0; i < 64; i++) atomic_init(&last.marks[i], 0);
    atomic_store(&current_region, -2);
    lm_pool_run_dynamic(p, dyn_items_after_worker, &last, &last.q);
    atomic_store(&current_region, -1);
    for (int i = 0; i < 64; i++) bad += atomic_load(&last.marks[i]) != 1;
    CHECK(bad == 0, "dynamic regions: %d items done other than once", bad);
    CHECK(atomic_load(&stale_calls) == 0, "dynamic regions: fn ran %d times for a region that had returned", atomic_load(&stale_calls));
    CHECK(atomic_load(&worker_items) > 0, "dynamic regions: the workers took no items");
    CHECK(hits[0] == 2857 && hits[1] == 2857 && hits[2] == 2857, "fixed regions among them run once per thread (%d, %d, %d)", hits[0], hits[1], hits[2]);
    int64_t lo, hi, at = 0, pieces = 0;
    lm_pool_queue q = {0};
    while (lm_pool_take(&q, 1000, 16, 2, &lo, &hi)) {
        bad += lo != at || hi <= lo || (hi != 1000 && (hi - lo) % 16);
        at = hi;
        pieces++;
    }
    CHECK(!bad && at == 1000 && pieces > 4 && pieces < 40, "pieces cover [0, n) in order, aligned, shrinking (%lld pieces)", (long long)pieces);
    lm_pool_free(p);
}

int main(void) {
    test_rmsnorm();
    test_rope();
    test_softmax_act();
    test_attention();
    test_attention_group();
    test_attention_q8_0();
    test_attention_tokens();
    test_pool();
    test_pool_dynamic();
    return tu_finish("ops");
}
