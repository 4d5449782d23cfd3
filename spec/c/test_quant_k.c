/* K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K) through the dispatch table:
 * - hand-built blocks (packed here from the documented ggml layout) dequantize to
 *   the values computed independently from their logical fields;
 * - quantize -> dequantize stays within error bounds;
 * - the scalar vec_dot equals the dot of the dequantized rows;
 * - every SIMD variant the CPU runs agrees with the scalar reference (Q2_K's bit
 *   for bit, the others within 1e-5 of the sum of |products|), and the SIMD
 *   Q8_K quantizer is bit-identical to the scalar one.
 * (That the scalar quantizers and dequantizers give llama.cpp's bytes and values
 * is checked against llama.cpp itself by bench/quant_reference.py.) */
#include "testutil.h"
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { QK = 256 };

/* ---- packing from logical fields, written from the format description ------- */

/* 6-bit scales/mins of Q4_K/Q5_K: j<4 in the low 6 bits of bytes j (scale) and j+4
 * (min); j>=4 low nibbles in byte j+4 (scale low, min high), top 2 bits in the top
 * bits of byte j-4 (scale) and byte j (min). */
static void pack_sm(uint8_t out[12], const int sc[8], const int mn[8]) {
    memset(out, 0, 12);
    for (int j = 0; j < 4; j++) {
        out[j] |= (uint8_t)(sc[j] & 63);
        out[j + 4] |= (uint8_t)(mn[j] & 63);
    }
    for (int j = 4; j < 8; j++) {
        out[j + 4] = (uint8_t)((sc[j] & 15) | ((mn[j] & 15) << 4));
        out[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
        out[j] |= (uint8_t)((mn[j] >> 4) << 6);
    }
}

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* Q4_K: d, dmin, scales[12], qs[128] (byte 32g+l: q[64g+l] low, q[64g+32+l] high). */
static void build_q4_K(uint8_t blk[144], float d, float dmin, const int sc[8], const int mn[8], const int q[QK]) {
    put16(blk, lm_f32_to_f16(d));
    put16(blk + 2, lm_f32_to_f16(dmin));
    pack_sm(blk + 4, sc, mn);
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++) blk[16 + 32 * g + l] = (uint8_t)(q[64 * g + l] | (q[64 * g + 32 + l] << 4));
}

/* Q5_K: d, dmin, scales[12], qh[32] (bit 2g: q[64g+l]>>4, bit 2g+1: q[64g+32+l]>>4), qs[128]. */
static void build_q5_K(uint8_t blk[176], float d, float dmin, const int sc[8], const int mn[8], const int q[QK]) {
    put16(blk, lm_f32_to_f16(d));
    put16(blk + 2, lm_f32_to_f16(dmin));
    pack_sm(blk + 4, sc, mn);
    memset(blk + 16, 0, 32);
    for (int g = 0; g < 4; g++) {
        for (int l = 0; l < 32; l++) {
            const int a = q[64 * g + l], b = q[64 * g + 32 + l];
            blk[48 + 32 * g + l] = (uint8_t)((a & 15) | ((b & 15) << 4));
            blk[16 + l] |= (uint8_t)(((a >> 4) << (2 * g)) | ((b >> 4) << (2 * g + 1)));
        }
    }
}

/* Q6_K: ql[128], qh[64], scales[16], d. Per half h of 128: ql[64h+l] = q[l] | q[l+64]<<4,
 * ql[64h+32+l] = q[l+32] | q[l+96]<<4, qh[32h+l] = the four high bit pairs. */
static void build_q6_K(uint8_t blk[210], float d, const int sc[16], const int q[QK]) {
    for (int h = 0; h < 2; h++) {
        const int *qq = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            blk[64 * h + l] = (uint8_t)((qq[l] & 15) | ((qq[l + 64] & 15) << 4));
            blk[64 * h + 32 + l] = (uint8_t)((qq[l + 32] & 15) | ((qq[l + 96] & 15) << 4));
            blk[128 + 32 * h + l] = (uint8_t)((qq[l] >> 4) | ((qq[l + 32] >> 4) << 2) | ((qq[l + 64] >> 4) << 4) |
                                              ((qq[l + 96] >> 4) << 6));
        }
    }
    for (int j = 0; j < 16; j++) blk[192 + j] = (uint8_t)(int8_t)sc[j];
    put16(blk + 208, lm_f32_to_f16(d));
}

/* Q2_K: scales[16] (scale low nibble, min high), qs[64] (bits 2j of byte 32h+l:
 * q[128h+32j+l]), d, dmin. */
static void build_q2_K(uint8_t blk[84], float d, float dmin, const int sc[16], const int mn[16], const int q[QK]) {
    for (int j = 0; j < 16; j++) blk[j] = (uint8_t)((sc[j] & 15) | ((mn[j] & 15) << 4));
    memset(blk + 16, 0, 64);
    for (int k = 0; k < QK; k++) blk[16 + 32 * (k / 128) + k % 32] |= (uint8_t)((q[k] & 3) << (2 * ((k % 128) / 32)));
    put16(blk + 80, lm_f32_to_f16(d));
    put16(blk + 82, lm_f32_to_f16(dmin));
}

/* Q3_K: hmask[32] (bit k of byte l: q[32k+l] >= 0), qs[64] (the low bits of q+4, as
 * Q2_K), scales[12] (sc+32 in 6 bits: low nibbles in bytes 0-7, scale j<8 low / j>=8
 * high half of byte j%8; top two bits at bits 2*(j/4) of byte 8+j%4), d. */
static void build_q3_K(uint8_t blk[110], float d, const int sc[16], const int q[QK]) {
    memset(blk, 0, 108);
    for (int k = 0; k < QK; k++) {
        if (q[k] >= 0) blk[k % 32] |= (uint8_t)(1 << (k / 32));
        blk[32 + 32 * (k / 128) + k % 32] |= (uint8_t)(((q[k] + 4) & 3) << (2 * ((k % 128) / 32)));
    }
    for (int j = 0; j < 16; j++) {
        const int u = sc[j] + 32;
        blk[96 + j % 8] |= (uint8_t)((u & 15) << (j < 8 ? 0 : 4));
        blk[96 + 8 + j % 4] |= (uint8_t)((u >> 4) << (2 * (j / 4)));
    }
    put16(blk + 108, lm_f32_to_f16(d));
}

/* Q8_K: float d, int8 qs[256], int16 bsums[16]. */
static void build_q8_K(uint8_t blk[292], float d, const int q[QK]) {
    memcpy(blk, &d, 4);
    for (int k = 0; k < QK; k++) blk[4 + k] = (uint8_t)(int8_t)q[k];
    for (int j = 0; j < 16; j++) {
        int16_t s = 0;
        for (int l = 0; l < 16; l++) s = (int16_t)(s + q[16 * j + l]);
        memcpy(blk + 260 + 2 * j, &s, 2);
    }
}

/* ---- helpers --------------------------------------------------------------- */

static const char *tname(lm_dtype t) { return lm_dtype_name(t); }

static size_t bsize(lm_dtype t) { return lm_dtype_type_size(t); }

/* the weight types, and how many */
#define NW 5
static const lm_dtype WTS[NW] = {LM_Q2_K, LM_Q3_K, LM_Q4_K, LM_Q5_K, LM_Q6_K};

/* Bell-shaped values around 0 with the given spread (sum of uniforms). */
static void rand_normalish(uint64_t *rng, float *x, int64_t n, float sigma) {
    for (int64_t i = 0; i < n; i++) {
        float s = 0;
        for (int k = 0; k < 4; k++) s += tu_randf(rng, -1.0f, 1.0f);
        x[i] = s * sigma * 0.866f;
    }
}

/* Random weight blocks: random bytes, then sane fp16 scales. */
static void rand_weights(uint64_t *rng, lm_dtype t, uint8_t *w, int64_t nb) {
    const size_t bs = bsize(t);
    for (size_t k = 0; k < bs * (size_t)nb; k++) w[k] = (uint8_t)tu_rand(rng);
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *b = w + bs * (size_t)i;
        if (t == LM_Q6_K) {
            put16(b + 208, lm_f32_to_f16(tu_randf(rng, 0.0005f, 0.01f)));
        } else if (t == LM_Q3_K) {
            put16(b + 108, lm_f32_to_f16(tu_randf(rng, 0.0005f, 0.01f)));
        } else if (t == LM_Q2_K) {
            put16(b + 80, lm_f32_to_f16(tu_randf(rng, 0.001f, 0.02f)));
            put16(b + 82, lm_f32_to_f16(tu_randf(rng, 0.001f, 0.02f)));
        } else {
            put16(b, lm_f32_to_f16(tu_randf(rng, 0.001f, 0.02f)));
            put16(b + 2, lm_f32_to_f16(tu_randf(rng, 0.001f, 0.02f)));
        }
    }
}

/* dot of the dequantized rows (double) and sum of |products|, the scale errors are measured against. */
static double deq_dot(lm_dtype t, const void *w, const void *a, int64_t n, double *mag) {
    float *fw = malloc(sizeof(float) * (size_t)n), *fa = malloc(sizeof(float) * (size_t)n);
    lm_quant_entry_get(t)->to_float[LM_ISA_SCALAR](w, fw, n);
    lm_quant_entry_get(LM_Q8_K)->to_float[LM_ISA_SCALAR](a, fa, n);
    double dot = 0, m = 0;
    for (int64_t k = 0; k < n; k++) {
        dot += (double)fw[k] * fa[k];
        m += fabs((double)fw[k] * fa[k]);
    }
    free(fw);
    free(fa);
    *mag = m;
    return dot;
}

/* ---- tests ------------------------------------------------------------------- */

static void test_registration(void) {
    const lm_dtype *ws = WTS;
    for (int i = 0; i < NW; i++) {
        const lm_quant_entry *e = lm_quant_entry_get(ws[i]);
        CHECK(e != NULL, "%s registered", tname(ws[i]));
        if (!e) continue;
        CHECK(e->vec_dot_type == LM_Q8_K, "%s dots with q8_K", tname(ws[i]));
        CHECK(e->to_float[LM_ISA_SCALAR] && e->vec_dot[LM_ISA_SCALAR] && e->from_float[LM_ISA_SCALAR], "%s has reference functions", tname(ws[i]));
    }
    const lm_quant_entry *e = lm_quant_entry_get(LM_Q8_K);
    CHECK(e && e->to_float[LM_ISA_SCALAR] && e->from_float[LM_ISA_SCALAR], "q8_K has to_float and from_float");
}

static void test_hand_built(void) {
    int sc[8] = {1, 17, 33, 63, 5, 40, 20, 62}, mn[8] = {0, 3, 62, 16, 33, 7, 48, 63};
    int q[QK];
    float y[QK];
    uint8_t blk[292];

    /* Q4_K: value = d*sc*q - dmin*min, exact in float for these fields */
    for (int k = 0; k < QK; k++) q[k] = (k * 7 + 3) % 16;
    build_q4_K(blk, 0.5f, 0.25f, sc, mn, q);
    lm_quant_entry_get(LM_Q4_K)->to_float[LM_ISA_SCALAR](blk, y, QK);
    int bad = 0;
    for (int k = 0; k < QK; k++) bad += y[k] != 0.5f * sc[k / 32] * q[k] - 0.25f * mn[k / 32];
    CHECK(bad == 0, "q4_K hand-built block: %d of 256 values differ", bad);

    for (int k = 0; k < QK; k++) q[k] = (k * 13 + 5) % 32;
    build_q5_K(blk, 0.125f, 0.5f, sc, mn, q);
    lm_quant_entry_get(LM_Q5_K)->to_float[LM_ISA_SCALAR](blk, y, QK);
    bad = 0;
    for (int k = 0; k < QK; k++) bad += y[k] != 0.125f * sc[k / 32] * q[k] - 0.5f * mn[k / 32];
    CHECK(bad == 0, "q5_K hand-built block: %d of 256 values differ", bad);

    int sc6[16] = {-128, 127, -1, 5, 0, 64, -77, 31, 2, -3, 100, -100, 9, 1, -64, 33};
    for (int k = 0; k < QK; k++) q[k] = (k * 29 + 11) % 64;
    build_q6_K(blk, 0.0625f, sc6, q);
    lm_quant_entry_get(LM_Q6_K)->to_float[LM_ISA_SCALAR](blk, y, QK);
    bad = 0;
    for (int k = 0; k < QK; k++) bad += y[k] != 0.0625f * sc6[k / 16] * (q[k] - 32);
    CHECK(bad == 0, "q6_K hand-built block: %d of 256 values differ", bad);

    const int sc2[16] = {0, 1, 15, 7, 3, 9, 12, 4, 5, 6, 11, 2, 8, 13, 10, 14};
    const int mn2[16] = {15, 0, 3, 8, 1, 14, 2, 9, 10, 4, 7, 12, 6, 5, 13, 11};
    for (int k = 0; k < QK; k++) q[k] = (k * 7 + 1) % 4;
    build_q2_K(blk, 0.5f, 0.25f, sc2, mn2, q);
    lm_quant_entry_get(LM_Q2_K)->to_float[LM_ISA_SCALAR](blk, y, QK);
    bad = 0;
    for (int k = 0; k < QK; k++) bad += y[k] != 0.5f * sc2[k / 16] * q[k] - 0.25f * mn2[k / 16];
    CHECK(bad == 0, "q2_K hand-built block: %d of 256 values differ", bad);

    const int sc3[16] = {-32, 31, -1, 5, 0, 16, -17, 30, 2, -3, 20, -20, 9, 1, -31, 13};
    for (int k = 0; k < QK; k++) q[k] = (k * 11 + 3) % 8 - 4;
    build_q3_K(blk, 0.0625f, sc3, q);
    lm_quant_entry_get(LM_Q3_K)->to_float[LM_ISA_SCALAR](blk, y, QK);
    bad = 0;
    for (int k = 0; k < QK; k++) bad += y[k] != 0.0625f * sc3[k / 16] * q[k];
    CHECK(bad == 0, "q3_K hand-built block: %d of 256 values differ", bad);

    for (int k = 0; k < QK; k++) q[k] = (k * 37) % 255 - 127;
    build_q8_K(blk, -0.5f, q);
    lm_quant_entry_get(LM_Q8_K)->to_float[LM_ISA_SCALAR](blk, y, QK);
    bad = 0;
    for (int k = 0; k < QK; k++) bad += y[k] != -0.5f * q[k];
    CHECK(bad == 0, "q8_K hand-built block: %d of 256 values differ", bad);

    /* vec_dot of hand-built blocks against a hand-built Q8_K, every variant */
    uint8_t w2[84], w3[110], w4[144], w5[176], w6[210], a[292];
    for (int k = 0; k < QK; k++) q[k] = (k * 7 + 1) % 4;
    build_q2_K(w2, 0.5f, 0.25f, sc2, mn2, q);
    for (int k = 0; k < QK; k++) q[k] = (k * 11 + 3) % 8 - 4;
    build_q3_K(w3, 0.0625f, sc3, q);
    for (int k = 0; k < QK; k++) q[k] = (k * 7 + 3) % 16;
    build_q4_K(w4, 0.5f, 0.25f, sc, mn, q);
    for (int k = 0; k < QK; k++) q[k] = (k * 13 + 5) % 32;
    build_q5_K(w5, 0.125f, 0.5f, sc, mn, q);
    for (int k = 0; k < QK; k++) q[k] = (k * 29 + 11) % 64;
    build_q6_K(w6, 0.0625f, sc6, q);
    for (int k = 0; k < QK; k++) q[k] = (k * 37) % 255 - 127;
    build_q8_K(a, -0.5f, q);
    const lm_dtype *ts = WTS;
    const void *ws[NW] = {w2, w3, w4, w5, w6};
    for (int t = 0; t < NW; t++) {
        double mag, want = deq_dot(ts[t], ws[t], a, QK, &mag);
        for (int isa = 0; isa <= (int)lm_cpu_isa(); isa++) {
            lm_vec_dot_fn f = lm_quant_entry_get(ts[t])->vec_dot[isa];
            if (!f) continue;
            float got;
            f(QK, &got, ws[t], a);
            CHECK(fabs(got - want) <= 1e-6 * mag, "%s hand-built vec_dot (%s): %g, want %g", tname(ts[t]),
                  lm_isa_name((lm_isa)isa), got, want);
        }
    }
}

static void test_q8_K_quantize(void) {
    uint64_t rng = 11;
    const int64_t nb = 8, n = nb * QK;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    uint8_t *q = malloc(292 * nb);
    rand_normalish(&rng, x, n, 2.0f);
    memset(x + QK, 0, sizeof(float) * QK);              /* block 1: all zero */
    x[2 * QK + 17] = -9.0f; x[2 * QK + 200] = 9.0f;      /* block 2: tie, the first (negative) wins */
    for (int k = 0; k < QK; k++) x[3 * QK + k] = 1e-30f * (k - 100); /* block 3: tiny */
    const lm_quant_entry *e = lm_quant_entry_get(LM_Q8_K);
    e->from_float[LM_ISA_SCALAR](x, q, n);
    e->to_float[LM_ISA_SCALAR](q, y, n);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = q + 292 * i;
        float d;
        memcpy(&d, b, 4);
        float amax = 0;
        for (int k = 0; k < QK; k++) amax = fmaxf(amax, fabsf(x[i * QK + k]));
        int bad = 0, badsum = 0;
        for (int k = 0; k < QK; k++) bad += fabsf(y[i * QK + k] - x[i * QK + k]) > fabsf(d) * 0.5f * (1 + 1e-5f);
        for (int j = 0; j < 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += (int8_t)b[4 + 16 * j + l];
            int16_t bs;
            memcpy(&bs, b + 260 + 2 * j, 2);
            badsum += s != bs;
        }
        CHECK(bad == 0, "q8_K block %d: %d values off by more than d/2", (int)i, bad);
        CHECK(badsum == 0, "q8_K block %d: %d bsums wrong", (int)i, badsum);
        if (amax > 0) CHECK(fabsf(fabsf(d) * 127 - amax) <= amax * 1e-6f, "q8_K block %d: |d|*127 = max|x|", (int)i);
        else CHECK(d == 0, "q8_K zero block has d = 0");
    }
    float d2;
    memcpy(&d2, q + 292 * 2, 4);
    CHECK(d2 > 0 && (int8_t)q[292 * 2 + 4 + 17] == -127 && (int8_t)q[292 * 2 + 4 + 200] == 127,
          "q8_K tie: the first extreme (-9) sets the sign: d = %g", d2);
    free(x); free(y); free(q);
}

/* RMS error relative to the RMS of the data, for bell-shaped rows. */
static void test_weight_quantize(void) {
    const lm_dtype *ts = WTS;
    const double bound[NW] = {0.35, 0.18, 0.085, 0.045, 0.025};
    const int64_t n = 16 * QK;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    uint8_t *q = malloc(210 * 16);
    for (int t = 0; t < NW; t++) {
        uint64_t rng = 100 + t;
        rand_normalish(&rng, x, n, 0.02f);
        for (int k = 0; k < QK; k++) x[5 * QK + k] = 0.5f + 0.001f * k;  /* an all-positive block */
        memset(x + 7 * QK, 0, sizeof(float) * QK);                        /* an all-zero block */
        const lm_quant_entry *e = lm_quant_entry_get(ts[t]);
        e->from_float[LM_ISA_SCALAR](x, q, n);
        e->to_float[LM_ISA_SCALAR](q, y, n);
        double err = 0, ref = 0, ramp_err = 0;
        int nonzero_in_zero_block = 0;
        for (int64_t k = 0; k < n; k++) {
            const double e2 = (double)(y[k] - x[k]) * (y[k] - x[k]);
            if (k / QK == 7) nonzero_in_zero_block += y[k] != 0;
            else if (k / QK == 5) ramp_err = fmax(ramp_err, sqrt(e2));
            else { err += e2; ref += (double)x[k] * x[k]; }
        }
        const double rel = sqrt(err / ref);
        printf("  %s quantize: rms error %.4f of rms\n", tname(ts[t]), rel);
        CHECK(rel < bound[t], "%s quantize: relative rms error %g over %g", tname(ts[t]), rel, bound[t]);
        /* the ramp 0.5..0.755: at worst about half a step of the grid over 0.755
         * (levels above zero: Q2_K 3, Q3_K 4, Q4_K 15, Q5_K and Q6_K 31) */
        const double levels[NW] = {3, 4, 15, 31, 31};
        CHECK(ramp_err < 0.755 / levels[t] * 0.6, "%s: all-positive block max error %g", tname(ts[t]), ramp_err);
        CHECK(nonzero_in_zero_block == 0, "%s: a zero block dequantizes to zeros", tname(ts[t]));
    }
    free(x); free(y); free(q);
}

/* Random weight rows times a quantized random activation row. */
static void test_vec_dot(void) {
    const lm_dtype *ts = WTS;
    const int64_t ns[5] = {256, 512, 768, 2816, 11008};
    const lm_isa top = lm_cpu_isa();
    for (int isa = LM_ISA_AVX2; isa <= (int)top; isa++) {
        for (int t = 0; t < NW; t++)
            if (lm_quant_entry_get(ts[t])->vec_dot[isa]) printf("  vec_dot %s: %s\n", tname(ts[t]), lm_isa_name((lm_isa)isa));
        if (lm_quant_entry_get(LM_Q8_K)->from_float[isa]) printf("  quantize q8_K: %s\n", lm_isa_name((lm_isa)isa));
    }
    uint64_t rng = 7;
    for (int in = 0; in < 5; in++) {
        const int64_t n = ns[in], nb = n / QK;
        float *x = malloc(sizeof(float) * n);
        uint8_t *a = malloc(292 * nb), *w = malloc(210 * nb + 64);
        for (int rep = 0; rep < 3; rep++) {
            rand_normalish(&rng, x, n, rep == 2 ? 100.0f : 1.0f);
            lm_quant_entry_get(LM_Q8_K)->from_float[LM_ISA_SCALAR](x, a, n);
            for (int t = 0; t < NW; t++) {
                rand_weights(&rng, ts[t], w, nb);
                const lm_quant_entry *e = lm_quant_entry_get(ts[t]);
                double mag, want = deq_dot(ts[t], w, a, n, &mag);
                float ref;
                e->vec_dot[LM_ISA_SCALAR](n, &ref, w, a);
                CHECK(fabs(ref - want) <= 1e-5 * mag, "%s n=%d scalar vec_dot %.8g vs dequantized dot %.8g",
                      tname(ts[t]), (int)n, ref, want);
                for (int isa = LM_ISA_AVX2; isa <= (int)top; isa++) {
                    if (!e->vec_dot[isa]) continue;
                    float got;
                    e->vec_dot[isa](n, &got, w, a);
                    CHECK(fabs(got - ref) <= 1e-5 * fmax(fabs(ref), mag), "%s n=%d %s vec_dot %.8g vs scalar %.8g",
                          tname(ts[t]), (int)n, lm_isa_name((lm_isa)isa), got, ref);
                    if (ts[t] == LM_Q2_K)
                        CHECK(memcmp(&got, &ref, sizeof got) == 0, "q2_K n=%d %s vec_dot %.9g bit for bit = scalar %.9g",
                              (int)n, lm_isa_name((lm_isa)isa), got, ref);
                }
            }
        }
        free(x); free(a); free(w);
    }
}

/* Extremes: all weight bits set against q8 = +-127, so any int16 saturation shows. */
static void test_vec_dot_extremes(void) {
    const lm_dtype *ts = WTS;
    uint8_t w[210], a[292];
    int q[QK];
    for (int sign = -1; sign <= 1; sign += 2) {
        for (int k = 0; k < QK; k++) q[k] = sign * 127;
        build_q8_K(a, 0.01f, q);
        for (int t = 0; t < NW; t++) for (int fill = 0; fill < 2; fill++) {
            /* every bit set, or (Q3_K's most negative quants and scales) none */
            memset(w, fill ? 0x00 : 0xFF, sizeof w);
            if (ts[t] == LM_Q6_K) { put16(w + 208, lm_f32_to_f16(0.01f)); memset(w + 192, 0x80, 16); }
            else if (ts[t] == LM_Q3_K) put16(w + 108, lm_f32_to_f16(0.01f));
            else if (ts[t] == LM_Q2_K) { put16(w + 80, lm_f32_to_f16(0.01f)); put16(w + 82, lm_f32_to_f16(0.01f)); }
            else { put16(w, lm_f32_to_f16(0.01f)); put16(w + 2, lm_f32_to_f16(0.01f)); }
            double mag, want = deq_dot(ts[t], w, a, QK, &mag);
            for (int isa = 0; isa <= (int)lm_cpu_isa(); isa++) {
                lm_vec_dot_fn f = lm_quant_entry_get(ts[t])->vec_dot[isa];
                if (!f) continue;
                float got;
                f(QK, &got, w, a);
                CHECK(fabs(got - want) <= 1e-5 * mag, "%s extremes (%s, q8 %+d): %g, want %g", tname(ts[t]),
                      lm_isa_name((lm_isa)isa), sign * 127, got, want);
            }
        }
    }
}

static void test_q8_K_simd_identical(void) {
    const lm_quant_entry *e = lm_quant_entry_get(LM_Q8_K);
    const int64_t ns[4] = {256, 768, 2816, 11008};
    uint64_t rng = 99;
    for (int in = 0; in < 4; in++) {
        const int64_t n = ns[in], nb = n / QK;
        float *x = malloc(sizeof(float) * n);
        uint8_t *ref = malloc(292 * nb), *got = malloc(292 * nb);
        for (int rep = 0; rep < 4; rep++) {
            rand_normalish(&rng, x, n, rep == 3 ? 1e4f : 1.0f);
            if (nb > 2) {
                memset(x + QK, 0, sizeof(float) * QK);          /* zero block */
                x[2 * QK + 3] = 50.0f; x[2 * QK + 250] = -50.0f; /* tie: + first */
            }
            /* values exactly on .5 after scaling, to exercise ties-to-even */
            for (int k = 0; k < 32; k++) x[k] = (k - 16) * 0.5f;
            x[40] = 127.0f;
            e->from_float[LM_ISA_SCALAR](x, ref, n);
            for (int isa = LM_ISA_AVX2; isa <= (int)lm_cpu_isa(); isa++) {
                if (!e->from_float[isa]) continue;
                memset(got, 0xAB, 292 * nb);
                e->from_float[isa](x, got, n);
                CHECK(memcmp(ref, got, 292 * nb) == 0, "q8_K %s quantize bit-identical (n=%d)",
                      lm_isa_name((lm_isa)isa), (int)n);
            }
        }
        free(x); free(ref); free(got);
    }
}

/* Every SIMD to_float gives the scalar reference's floats bit for bit: random
 * blocks with sane scales, and blocks of random bytes throughout (any fp16
 * scale: subnormal, huge, negative, Inf, NaN). */
static void test_to_float_simd_identical(void) {
    const lm_dtype *ts = WTS;
    const int64_t nb = 43;
    uint64_t rng = 4242;
    uint8_t *w = malloc(210 * nb);
    float *ref = malloc(sizeof(float) * QK * nb), *got = malloc(sizeof(float) * QK * nb);
    for (int t = 0; t < NW; t++) {
        const lm_quant_entry *e = lm_quant_entry_get(ts[t]);
        for (int isa = LM_ISA_AVX2; isa <= (int)lm_cpu_isa(); isa++) {
            if (!e->to_float[isa]) continue;
            printf("  to_float %s: %s\n", tname(ts[t]), lm_isa_name((lm_isa)isa));
            for (int rep = 0; rep < 20; rep++) {
                if (rep % 2) for (size_t k = 0; k < bsize(ts[t]) * (size_t)nb; k++) w[k] = (uint8_t)tu_rand(&rng);
                else rand_weights(&rng, ts[t], w, nb);
                const int64_t n = QK * (1 + rep % nb);
                e->to_float[LM_ISA_SCALAR](w, ref, n);
                memset(got, 0xA5, sizeof(float) * QK * nb);
                e->to_float[isa](w, got, n);
                CHECK(memcmp(got, ref, sizeof(float) * (size_t)n) == 0, "%s %s to_float = scalar bit for bit (%d blocks, %s)",
                      tname(ts[t]), lm_isa_name((lm_isa)isa), (int)(n / QK), rep % 2 ? "random bytes" : "sane scales");
                CHECK(n == QK * nb || ((uint32_t *)got)[n] == 0xA5A5A5A5u, "%s %s to_float writes n floats only",
                      tname(ts[t]), lm_isa_name((lm_isa)isa));
            }
        }
    }
    free(w); free(ref); free(got);
}

int main(void) {
    lm_kernels_init();
    printf("cpu isa: %s\n", lm_isa_name(lm_cpu_isa()));
    test_registration();
    test_hand_built();
    test_q8_K_quantize();
    test_weight_quantize();
    test_vec_dot();
    test_vec_dot_extremes();
    test_q8_K_simd_identical();
    test_to_float_simd_identical();
    return tu_finish("quant_k");
}
