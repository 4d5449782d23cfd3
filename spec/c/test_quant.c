/* Legacy block formats: known blocks, round trips, and every SIMD variant
 * against the scalar reference. */
#include "testutil.h"
#include "quant.h"
#include "quant_legacy.h"
#include "model.h"
#include "pool.h"
#include "tensor.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static float rel(float a, float b) { return fabsf(a - b) / fmaxf(1e-6f, fmaxf(fabsf(a), fabsf(b))); }

static void fill(float *x, int64_t n, uint64_t *r, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = tu_randf(r, -scale, scale);
    if (n > 7) x[7] = 3 * scale; /* an outlier, as real activations have */
}

static void test_known_blocks(void) {
    /* Q4_0: d = 0.5, nibbles 0..15 -> (q - 8) * 0.5 */
    block_q4_0 b;
    b.d = lm_f32_to_f16(0.5f);
    for (int j = 0; j < 16; j++) b.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    lm_quant_entry_get(LM_Q4_0)->to_float[LM_ISA_SCALAR](&b, y, 32);
    CHECK(y[0] == -4.0f && y[15] == 3.5f && y[16] == 3.5f && y[31] == -4.0f, "q4_0 values %g %g %g %g", y[0], y[15], y[16], y[31]);
    /* Q4_1: d = 1, m = -2 */
    block_q4_1 c;
    c.d = lm_f32_to_f16(1.0f);
    c.m = lm_f32_to_f16(-2.0f);
    for (int j = 0; j < 16; j++) c.qs[j] = (uint8_t)(j | (j << 4));
    lm_quant_entry_get(LM_Q4_1)->to_float[LM_ISA_SCALAR](&c, y, 32);
    CHECK(y[0] == -2.0f && y[5] == 3.0f && y[21] == 3.0f, "q4_1 values");
    /* Q5_0: the fifth bit comes from qh */
    block_q5_0 d;
    d.d = lm_f32_to_f16(1.0f);
    memset(d.qs, 0, sizeof d.qs);
    uint32_t qh = 1u << 3 | 1u << 20;
    memcpy(d.qh, &qh, 4);
    lm_quant_entry_get(LM_Q5_0)->to_float[LM_ISA_SCALAR](&d, y, 32);
    CHECK(y[3] == 0.0f && y[0] == -16.0f && y[20] == 0.0f && y[19] == -16.0f, "q5_0 high bits %g %g %g", y[3], y[0], y[20]);
}

static void test_round_trips(void) {
    uint64_t r = 1;
    float x[256], y[256];
    static const struct { lm_dtype t; float tol; } cases[] = {
        {LM_Q4_0, 0.13f}, {LM_Q4_1, 0.07f}, {LM_Q5_0, 0.07f}, {LM_Q5_1, 0.035f}, {LM_Q8_0, 0.005f},
        {LM_Q8_1, 0.005f}, {LM_F16, 1e-3f}, {LM_BF16, 8e-3f}};
    char q[1024];
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const lm_quant_entry *e = lm_quant_entry_get(cases[c].t);
        fill(x, 256, &r, 1.0f);
        e->from_float[LM_ISA_SCALAR](x, q, 256);
        e->to_float[LM_ISA_SCALAR](q, y, 256);
        float worst = 0;
        for (int i = 0; i < 256; i++) worst = fmaxf(worst, fabsf(x[i] - y[i]));
        /* errors are relative to the block's range (the outlier is 3) */
        CHECK(worst < cases[c].tol * 3, "%s round trip error %g", lm_dtype_name(cases[c].t), worst);
    }
}

static void test_fp16_exhaustive(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = lm_f16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        if (lm_f32_to_f16(f) != h) bad++;
    }
    CHECK(bad == 0, "%d half values do not round-trip", bad);
    CHECK(lm_f32_to_bf16(1.0f) == 0x3F80 && lm_bf16_to_f32(0x3F80) == 1.0f, "bf16 1.0");
    CHECK(lm_f32_to_bf16(1.00390625f) == 0x3F80, "bf16 ties to even");
    CHECK(isnan(lm_bf16_to_f32(lm_f32_to_bf16(NAN))), "bf16 keeps NaN");
}

static void test_variants(void) {
    static const lm_dtype types[] = {LM_Q4_0, LM_Q4_1, LM_Q5_0, LM_Q5_1, LM_Q8_0, LM_F32, LM_F16, LM_BF16};
    static const int64_t lens[] = {32, 64, 96, 4096 + 32, 11008};
    uint64_t r = 7;
    float *x = malloc(11008 * sizeof *x), *a = malloc(11008 * sizeof *a);
    char *qx = malloc(11008 * 4), *qa = malloc(11008 * 4 + 64);
    int ran[LM_ISA_COUNT] = {0};
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        const lm_quant_entry *e = lm_quant_entry_get(types[t]);
        const lm_quant_entry *act = lm_quant_entry_get(e->vec_dot_type);
        for (size_t l = 0; l < sizeof lens / sizeof *lens; l++) {
            int64_t n = lens[l];
            fill(x, n, &r, 2.0f);
            fill(a, n, &r, 1.0f);
            e->from_float[LM_ISA_SCALAR](x, qx, n);
            act->from_float[LM_ISA_SCALAR](a, qa, n);
            float ref;
            e->vec_dot[LM_ISA_SCALAR](n, &ref, qx, qa);
            /* the reference dot agrees with the dot of the dequantized rows */
            float *dx = malloc(n * sizeof *dx), *da = malloc(n * sizeof *da);
            e->to_float[LM_ISA_SCALAR](qx, dx, n);
            act->to_float[LM_ISA_SCALAR](qa, da, n);
            double exact = 0;
            for (int64_t i = 0; i < n; i++) exact += (double)dx[i] * da[i];
            /* the _1 formats carry sum(q)*d rounded to fp16: a little looser */
            float tol = e->vec_dot_type == LM_Q8_1 ? 5e-3f : 1e-3f;
            CHECK(rel(ref, (float)exact) < tol, "%s n=%lld: reference %g vs dequantized %g", lm_dtype_name(types[t]), (long long)n, ref, exact);
            free(dx); free(da);
            for (int isa = 1; isa < LM_ISA_COUNT; isa++) {
                if (!e->vec_dot[isa] || isa > (int)lm_cpu_isa()) continue;
                float v;
                e->vec_dot[isa](n, &v, qx, qa);
                ran[isa]++;
                CHECK(rel(v, ref) < 1e-5f, "%s %s n=%lld: %g vs reference %g", lm_dtype_name(types[t]), lm_isa_name(isa), (long long)n, v, ref);
            }
        }
    }
    /* SIMD activation quantizers: bit-identical to the reference */
    static const lm_dtype acts[] = {LM_Q8_0, LM_Q8_1};
    for (size_t t = 0; t < 2; t++) {
        const lm_quant_entry *e = lm_quant_entry_get(acts[t]);
        for (int isa = 1; isa < LM_ISA_COUNT; isa++) {
            if (!e->from_float[isa] || isa > (int)lm_cpu_isa()) continue;
            for (int rep = 0; rep < 50; rep++) {
                int64_t n = 32 * (1 + rep % 40);
                fill(x, n, &r, rep % 2 ? 1000.0f : 0.01f);
                if (rep == 3) memset(x, 0, n * sizeof *x); /* all-zero blocks */
                if (rep == 4) for (int64_t i = 0; i < n; i++) x[i] = (float)(i % 7) * 0.5f; /* exact halves: rounding ties */
                e->from_float[LM_ISA_SCALAR](x, qx, n);
                e->from_float[isa](x, qa, n);
                CHECK(!memcmp(qx, qa, lm_dtype_row_size(acts[t], n)), "%s %s quantizer differs from the reference (rep %d)", lm_dtype_name(acts[t]), lm_isa_name(isa), rep);
            }
            ran[isa]++;
        }
    }
    printf("variants checked: avx2 %d, avx512 %d (cpu: %s)\n", ran[LM_ISA_AVX2], ran[LM_ISA_AVX512], lm_isa_name(lm_cpu_isa()));
    CHECK(lm_cpu_isa() == LM_ISA_SCALAR || ran[LM_ISA_AVX2] > 0, "no AVX2 variant ran");
    free(x); free(a); free(qx); free(qa);
}

/* Every tile variant against its single-row vec_dot, pair by pair, bit for bit:
 * tile_rows weight rows (one of them all zeros, one with huge scales) times four
 * activation rows (one of them zeros), at odd strides. */
static void test_tile(void) {
    static const int64_t lens[] = {32, 64, 256, 576, 1536, 2304, 4096 + 32};
    uint64_t r = 29;
    int ran = 0;
    for (int t = 0; t < LM_DTYPE_COUNT; t++) {
        const lm_quant_entry *e = lm_quant_entry_get((lm_dtype)t);
        if (!e) continue;
        for (int isa = 1; isa < LM_ISA_COUNT; isa++) {
            if (!e->vec_dot_tile[isa] || isa > (int)lm_cpu_isa()) continue;
            lm_vec_dot_fn dot1 = NULL;
            for (int k = isa; k >= 1 && !dot1; k--) dot1 = e->vec_dot[k];
            const int R = e->tile_rows[isa];
            CHECK(dot1 != NULL && R >= 1 && R <= 16, "%s: %s tile without a SIMD vec_dot or with %d rows",
                  lm_dtype_name(t), lm_isa_name(isa), R);
            if (!dot1 || R < 1 || R > 16) continue;
            const lm_quant_entry *act = lm_quant_entry_get(e->vec_dot_type);
            for (size_t l = 0; l < sizeof lens / sizeof *lens; l++) {
                int64_t n = lens[l];
                if (n % lm_dtype_block_size(t)) continue;
                size_t wrow = lm_dtype_row_size(t, n) + 6, arow = lm_dtype_row_size(e->vec_dot_type, n) + 12; /* odd strides, the blocks still aligned */
                float *x = malloc(n * sizeof *x);
                char *qw = malloc(R * wrow), *qa = malloc(4 * arow);
                for (int k = 0; k < R; k++) {
                    fill(x, n, &r, k == 1 ? 5000.0f : 3.0f);
                    if (k == R - 1 && R > 2) memset(x, 0, n * sizeof *x);
                    e->from_float[LM_ISA_SCALAR](x, qw + k * wrow, n);
                }
                for (int k = 0; k < 4; k++) {
                    fill(x, n, &r, k == 2 ? 1000.0f : 1.0f);
                    if (k == 3) memset(x, 0, n * sizeof *x);
                    act->from_float[LM_ISA_SCALAR](x, qa + k * arow, n);
                }
                const size_t ss = (size_t)R + 3; /* output stride between activation rows */
                float s[4 * 19], s1;
                for (size_t k = 0; k < sizeof s / sizeof *s; k++) s[k] = -7.0f;
                e->vec_dot_tile[isa](n, s, ss, qw, wrow, qa, arow);
                for (int c = 0; c < 4; c++) {
                    for (int k = 0; k < R; k++) {
                        dot1(n, &s1, qw + k * wrow, qa + c * arow);
                        CHECK(memcmp(&s1, &s[c * ss + k], sizeof s1) == 0, "%s %s n=%lld row %d act %d: tile %.9g vs dot %.9g",
                              lm_dtype_name(t), lm_isa_name(isa), (long long)n, k, c, s[c * ss + k], s1);
                    }
                    for (size_t k = R; k < ss && c < 3; k++)
                        CHECK(s[c * ss + k] == -7.0f, "%s %s: tile wrote outside its outputs", lm_dtype_name(t), lm_isa_name(isa));
                }
                ran++;
                free(x); free(qw); free(qa);
            }
        }
    }
    printf("tile variants checked: %d\n", ran);
    CHECK(lm_cpu_isa() == LM_ISA_SCALAR || ran > 0, "no tile variant ran");
}

/* s against the panel reference's outputs ref, bit for bit, for the nt tokens'
 * rows; untouched (-7) elsewhere among the rows x ss outputs */
static void same_as_ref(const char *what, lm_dtype t, lm_isa isa, int64_t n, int nt, const float *s, const float *ref,
                        int rows, size_t ss, int r) {
    for (int c = 0; c < rows; c++)
        for (size_t k = 0; k < ss; k++) {
            const float want = c < nt && k < (size_t)r ? ref[c * ss + k] : -7.0f;
            CHECK(memcmp(&want, &s[c * ss + k], sizeof want) == 0, "%s %s n=%lld nt=%d row %zu act %d: %s %.9g vs reference %.9g",
                  lm_dtype_name(t), lm_isa_name(isa), (long long)n, nt, k, c, what, s[c * ss + k], want);
        }
}

/* Every panel variant against the scalar reference, bit for bit, and the
 * reference against the dot product of the dequantized rows: 8 weight rows
 * (one all zeros, one with huge scales) times 1..33 activation rows (one of
 * them zeros), at odd strides, with and without a prefetch pointer; nothing
 * written outside the outputs. */
static void test_panel(void) {
    static const int64_t lens[] = {32, 64, 256, 576, 1536, 2048, 4096 + 32};
    static const int nts[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 29, 31, 32, 33};
    enum { R = LM_PANEL_ROWS, MAXT = 33 };
    uint64_t r = 31;
    int ran = 0, refs = 0, tiled = 0, interleaved = 0;
    for (int t = 0; t < LM_DTYPE_COUNT; t++) {
        const lm_quant_entry *e = lm_quant_entry_get((lm_dtype)t);
        if (!e || !e->panel[LM_ISA_SCALAR]) continue;
        const lm_quant_entry *act = lm_quant_entry_get(e->vec_dot_type);
        for (size_t l = 0; l < sizeof lens / sizeof *lens; l++) {
            const int64_t n = lens[l];
            if (n % lm_dtype_block_size(t)) continue;
            size_t wrow = lm_dtype_row_size(t, n) + 6, arow = lm_dtype_row_size(e->vec_dot_type, n) + 12;
            float *x = malloc(n * sizeof *x), *dw = malloc(R * n * sizeof *dw), *da = malloc(MAXT * n * sizeof *da);
            char *qw = malloc(R * wrow), *qa = malloc(MAXT * arow);
            /* the packed activations: the tokens side by side, block after block, with a gap */
            const size_t rec = lm_panel_record((lm_dtype)t), ystr = MAXT * rec + 12;
            const int64_t npk = n / lm_dtype_block_size(e->vec_dot_type);
            char *pk = malloc(npk * ystr);
            for (int k = 0; k < R; k++) {
                fill(x, n, &r, k == 1 ? 5000.0f : 3.0f);
                if (k == R - 1) memset(x, 0, n * sizeof *x);
                e->from_float[LM_ISA_SCALAR](x, qw + k * wrow, n);
                e->to_float[LM_ISA_SCALAR](qw + k * wrow, dw + k * n, n);
            }
            for (int c = 0; c < MAXT; c++) {
                fill(x, n, &r, c == 2 ? 1000.0f : 1.0f);
                if (c == 3) memset(x, 0, n * sizeof *x);
                act->from_float[LM_ISA_SCALAR](x, qa + c * arow, n);
                act->to_float[LM_ISA_SCALAR](qa + c * arow, da + c * n, n);
                lm_panel_pack((lm_dtype)t, qa + c * arow, pk + c * rec, ystr, n);
            }
            const size_t ss = R + 5;
            float ref[MAXT * (R + 5)], s[MAXT * (R + 5)];
            for (size_t k = 0; k < sizeof ref / sizeof *ref; k++) ref[k] = -7.0f;
            e->panel[LM_ISA_SCALAR](n, MAXT, ref, ss, qw, wrow, pk, ystr, NULL);
            for (int c = 0; c < MAXT; c++)
                for (int k = 0; k < R; k++) {
                    double exact = 0, mag = 0;
                    for (int64_t i = 0; i < n; i++) {
                        exact += (double)dw[k * n + i] * da[c * n + i];
                        mag += fabs((double)dw[k * n + i] * da[c * n + i]);
                    }
                    /* relative to the sum of magnitudes: the _1 formats carry d * sum(q) in fp16 */
                    double tol = (e->vec_dot_type == LM_Q8_1 ? 2e-3 : 1e-5) * mag + 1e-6;
                    CHECK(fabs(ref[c * ss + k] - exact) <= tol, "%s n=%lld row %d act %d: panel reference %.9g vs dequantized %.9g",
                          lm_dtype_name(t), (long long)n, k, c, ref[c * ss + k], exact);
                    refs++;
                }
            for (int isa = 1; isa < LM_ISA_COUNT; isa++) {
                if (!e->panel[isa] || isa > (int)lm_cpu_isa()) continue;
                for (size_t q = 0; q < sizeof nts / sizeof *nts; q++) {
                    const int nt = nts[q];
                    for (size_t k = 0; k < sizeof s / sizeof *s; k++) s[k] = -7.0f;
                    /* with and without the prefetch of (here, the same) 8 rows: the same bits */
                    e->panel[isa](n, nt, s, ss, qw, wrow, pk, ystr, q % 2 ? qw : NULL);
                    same_as_ref("panel", (lm_dtype)t, (lm_isa)isa, n, nt, s, ref, MAXT, ss, R);
                    ran++;
                }
            }
            /* the repacked panels (quant.h): the rows repacked once, every count of tokens, the same bits */
            for (int isa = 1; isa < LM_ISA_COUNT; isa++) {
                if (!e->repack[isa] || isa > (int)lm_cpu_isa()) continue;
                void *rp = aligned_alloc(64, (size_t)(n / lm_dtype_block_size(t)) * e->repack_block);
                e->repack[isa](n, qw, wrow, rp);
                for (size_t q = 0; q < sizeof nts / sizeof *nts; q++) {
                    const int nt = nts[q];
                    for (size_t k = 0; k < sizeof s / sizeof *s; k++) s[k] = -7.0f;
                    /* whole, or (odd counts) sliced after its first block, the sums going on */
                    const int64_t bs = lm_dtype_block_size(t), cut = q % 2 && n > bs ? bs : n;
                    e->tiled[isa](cut, nt, s, ss, rp, pk, ystr, 0);
                    if (cut < n) e->tiled[isa](n - cut, nt, s, ss, (const char *)rp + e->repack_block, pk + ystr, ystr, 1);
                    same_as_ref("repacked panel", (lm_dtype)t, (lm_isa)isa, n, nt, s, ref, MAXT, ss, R);
                    tiled++;
                }
                free(rp);
            }
            /* the interleaved rows (quant.h): the panel and the repack reading them, the same bits */
            for (int isa = 1; isa < LM_ISA_COUNT; isa++) {
                if (!e->interleave || !e->panel_il[isa] || isa > (int)lm_cpu_isa()) continue;
                const size_t row = lm_dtype_row_size(t, n);
                char *il = aligned_alloc(64, (R * row + 63) & ~(size_t)63);
                e->interleave(n, qw, wrow, il);
                void *rp = aligned_alloc(64, (size_t)(n / lm_dtype_block_size(t)) * e->repack_block);
                e->repack_il[isa](n, il, row, rp);
                for (size_t q = 0; q < sizeof nts / sizeof *nts; q++) {
                    const int nt = nts[q];
                    for (size_t k = 0; k < sizeof s / sizeof *s; k++) s[k] = -7.0f;
                    e->panel_il[isa](n, nt, s, ss, il, row, pk, ystr, q % 2 ? il : NULL);
                    same_as_ref("interleaved panel", (lm_dtype)t, (lm_isa)isa, n, nt, s, ref, MAXT, ss, R);
                    for (size_t k = 0; k < sizeof s / sizeof *s; k++) s[k] = -7.0f;
                    e->tiled[isa](n, nt, s, ss, rp, pk, ystr, 0);
                    same_as_ref("repacked interleaved panel", (lm_dtype)t, (lm_isa)isa, n, nt, s, ref, MAXT, ss, R);
                    interleaved++;
                }
                free(rp);
                free(il);
            }
            /* the K-quants' interleaved super-blocks: tiled_il on them, whole and sliced, the same bits */
            for (int isa = 1; isa < LM_ISA_COUNT; isa++) {
                if (!e->interleave || !e->tiled_il[isa] || !e->repack_il[isa] || isa > (int)lm_cpu_isa()) continue;
                const size_t row = lm_dtype_row_size(t, n), sb = R * row / (size_t)(n / lm_dtype_block_size(t));
                char *il = aligned_alloc(64, (R * row + 63) & ~(size_t)63);
                e->interleave(n, qw, wrow, il);
                for (size_t q = 0; q < sizeof nts / sizeof *nts; q++) {
                    const int nt = nts[q];
                    for (size_t k = 0; k < sizeof s / sizeof *s; k++) s[k] = -7.0f;
                    const int64_t bs = lm_dtype_block_size(t), cut = q % 2 && n > bs ? bs : n;
                    e->tiled_il[isa](cut, nt, s, ss, il, pk, ystr, 0, il);
                    if (cut < n) e->tiled_il[isa](n - cut, nt, s, ss, il + sb, pk + ystr, ystr, 1, NULL);
                    same_as_ref("interleaved K panel", (lm_dtype)t, (lm_isa)isa, n, nt, s, ref, MAXT, ss, R);
                    interleaved++;
                }
                void *rp = aligned_alloc(64, (size_t)(n / lm_dtype_block_size(t)) * e->repack_block);
                e->repack_il[isa](n, il, row, rp);
                for (size_t q = 0; q < sizeof nts / sizeof *nts; q++) {
                    for (size_t k = 0; k < sizeof s / sizeof *s; k++) s[k] = -7.0f;
                    e->tiled[isa](n, nts[q], s, ss, rp, pk, ystr, 0);
                    same_as_ref("repacked interleaved K panel", (lm_dtype)t, (lm_isa)isa, n, nts[q], s, ref, MAXT, ss, R);
                }
                free(rp);
                free(il);
            }
            free(x); free(dw); free(da); free(qw); free(qa); free(pk);
        }
    }
    printf("panel variants checked: %d, repacked: %d, interleaved: %d (reference outputs %d)\n", ran, tiled, interleaved, refs);
    CHECK(lm_cpu_isa() < LM_ISA_AVX512 || interleaved > 0, "no interleaved panel ran");
    CHECK(refs > 0, "no panel reference ran");
    CHECK(lm_cpu_isa() < LM_ISA_AVX512 || tiled > 0, "no repacked panel ran");
    CHECK(lm_cpu_isa() < LM_ISA_AVX512 || ran > 0, "no SIMD panel ran");
}

/* A whole product through lm_matmul_panel, on two threads: every row, token
 * and pass the bits of the scalar panel reference for its token alone (rows
 * beyond the last whole panel: the single-row dot), at 5 and 40 tokens (the
 * legacy types repack from 16; the K-quants always), with more panels than a
 * thread repacks at once, blocks in several slices and two token passes. */
static void test_panel_product(void) {
    enum { OUT = 16 * 9 + 5, MAXN = 40 };
    static const int ns[] = {5, MAXN};
    lm_pool *pool = lm_pool_new(2);
    uint64_t r = 77;
    int checked = 0;
    for (int t = 0; t < LM_DTYPE_COUNT; t++) {
        const lm_quant_entry *e = lm_quant_entry_get((lm_dtype)t);
        const lm_quant_ops *ops = lm_quant_ops_get((lm_dtype)t);
        if (!e || !e->panel[LM_ISA_SCALAR] || !ops) continue;
        /* a width of three slices or more of a repacked panel (core/matmul.c) */
        const int64_t bs = lm_dtype_block_size((lm_dtype)t), in = bs == 256 ? 256 * 13 : 32 * 130;
        const size_t rb = lm_dtype_row_size((lm_dtype)t, in);
        char *d = malloc(rb * OUT);
        float *row = malloc(in * sizeof *row), *x = malloc(MAXN * in * sizeof *x);
        for (int64_t k = 0; k < OUT; k++) {
            fill(row, in, &r, k == 3 ? 5000.0f : 1.0f);
            e->from_float[LM_ISA_SCALAR](row, d + k * rb, in);
        }
        fill(x, MAXN * in, &r, 2.0f);
        lm_tensor *w = lm_tensor_wrap((lm_dtype)t, 2, (int64_t[]){OUT, in}, d, free, d);
        if (!lm_matmul_has_panel(w)) { /* no SIMD panels on this CPU */
            lm_tensor_free(w); free(row); free(x);
            continue;
        }
        const lm_quant_ops *act = lm_quant_ops_get(e->vec_dot_type);
        const size_t arow = lm_dtype_row_size(e->vec_dot_type, in), rec = lm_panel_record((lm_dtype)t);
        char *qa = malloc(arow), *pk = malloc((size_t)(in / lm_dtype_block_size(e->vec_dot_type)) * rec);
        void *q = aligned_alloc(64, (lm_matmul_qbuf_size(w, MAXN, lm_pool_size(pool)) + 63) & ~(size_t)63);
        float *y = malloc(MAXN * OUT * sizeof *y), ref[LM_PANEL_ROWS];
        for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
            const int n = ns[k];
            lm_matmul_panel(pool, w, x, n, y, q);
            int bad = 0;
            for (int c = 0; c < n; c++) {
                act->from_float(x + c * in, qa, in);
                lm_panel_pack((lm_dtype)t, qa, pk, rec, in);
                for (int64_t p = 0; p < OUT; p += LM_PANEL_ROWS) {
                    const int rows = OUT - p < LM_PANEL_ROWS ? (int)(OUT - p) : LM_PANEL_ROWS;
                    if (rows == LM_PANEL_ROWS) e->panel[LM_ISA_SCALAR](in, 1, ref, LM_PANEL_ROWS, d + p * rb, rb, pk, rec, NULL);
                    else for (int i = 0; i < rows; i++) ops->vec_dot(in, &ref[i], d + (p + i) * rb, qa);
                    for (int i = 0; i < rows; i++) bad += memcmp(&ref[i], &y[c * OUT + p + i], sizeof(float)) != 0;
                }
            }
            CHECK(bad == 0, "%s n=%d: %d of %d outputs differ from the reference", lm_dtype_name(t), n, bad, n * OUT);
            checked++;
        }
        lm_tensor_free(w);
        free(row); free(x); free(qa); free(pk); free(q); free(y);
    }
    printf("panel products checked: %d\n", checked);
    CHECK(lm_cpu_isa() < LM_ISA_AVX512 || checked > 0, "no panel product ran");
    lm_pool_free(pool);
}

/* Weights of one type through lm_matmul_panel_group: the bits lm_matmul_panel
 * gives each alone, for one token and for batches, on two threads; weights
 * that do not share a type, a width or whole panels are refused untouched. */
static void test_panel_group(void) {
    enum { IN = 576, MAXN = 33 };
    static const int64_t outs[3] = {48, 32, 16};
    static const int ns[] = {1, 3, 5, 16, 33};
    const lm_dtype types[] = {LM_Q4_0, LM_Q4_1, LM_Q5_0, LM_Q8_0};
    lm_pool *pool = lm_pool_new(2);
    uint64_t r = 5;
    float *x = malloc(MAXN * IN * sizeof *x), *row = malloc(IN * sizeof *row);
    fill(x, MAXN * IN, &r, 2.0f);
    int checked = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++) {
        const lm_dtype t = types[ti];
        if (!lm_quant_ops_get(t)->panel) continue;
        lm_tensor *w[3];
        float *y[3], *want[3];
        for (int i = 0; i < 3; i++) {
            const size_t rb = lm_dtype_row_size(t, IN);
            char *d = malloc(rb * outs[i]);
            for (int64_t k = 0; k < outs[i]; k++) {
                fill(row, IN, &r, 1.0f);
                lm_quant_ops_get(t)->from_float(row, d + k * rb, IN);
            }
            w[i] = lm_tensor_wrap(t, 2, (int64_t[]){outs[i], IN}, d, free, d);
            y[i] = malloc(MAXN * outs[i] * sizeof(float));
            want[i] = malloc(MAXN * outs[i] * sizeof(float));
        }
        size_t qs = 0;
        for (int i = 0; i < 3; i++) if (lm_matmul_qbuf_size(w[i], MAXN, lm_pool_size(pool)) > qs) qs = lm_matmul_qbuf_size(w[i], MAXN, lm_pool_size(pool));
        void *q = aligned_alloc(64, (qs + 63) & ~(size_t)63);
        for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
            const int n = ns[k];
            for (int i = 0; i < 3; i++) lm_matmul_panel(pool, w[i], x, n, want[i], q);
            CHECK(lm_matmul_panel_group(pool, (const lm_tensor *const *)w, 3, x, n, y, q), "%s group refused", lm_dtype_name(t));
            for (int i = 0; i < 3; i++)
                CHECK(memcmp(y[i], want[i], n * outs[i] * sizeof(float)) == 0, "%s n=%d weight %d: group differs from alone",
                      lm_dtype_name(t), n, i);
            checked++;
        }
        for (int i = 0; i < 3; i++) { lm_tensor_free(w[i]); free(y[i]); free(want[i]); }
        free(q);
    }
    /* refusals: another type, another width, rows not a multiple of the panel */
    char *d = calloc(1, 1 << 20);
    lm_tensor *a = lm_tensor_wrap(LM_Q4_0, 2, (int64_t[]){32, IN}, d, NULL, NULL);
    lm_tensor *b = lm_tensor_wrap(LM_Q8_0, 2, (int64_t[]){32, IN}, d, NULL, NULL);
    lm_tensor *c = lm_tensor_wrap(LM_Q4_0, 2, (int64_t[]){32, 2 * IN}, d, NULL, NULL);
    lm_tensor *e = lm_tensor_wrap(LM_Q4_0, 2, (int64_t[]){40, IN}, d, NULL, NULL);
    float *yy[2] = {NULL, NULL};
    CHECK(!lm_matmul_panel_group(pool, (const lm_tensor *[]){a, b}, 2, x, 1, yy, NULL), "mixed types refused");
    CHECK(!lm_matmul_panel_group(pool, (const lm_tensor *[]){a, c}, 2, x, 1, yy, NULL), "mixed widths refused");
    CHECK(!lm_matmul_panel_group(pool, (const lm_tensor *[]){a, e}, 2, x, 1, yy, NULL), "partial panels refused");
    CHECK(!lm_matmul_panel_group(pool, (const lm_tensor *[]){a, a, a, a}, 4, x, 1, yy, NULL), "more than LM_PANEL_GROUP refused");
    lm_tensor_free(a); lm_tensor_free(b); lm_tensor_free(c); lm_tensor_free(e);
    free(d); free(x); free(row);
    lm_pool_free(pool);
    printf("panel groups checked: %d\n", checked);
    CHECK(lm_cpu_isa() < LM_ISA_AVX512 || checked > 0, "no panel group ran");
}

/* Interleaved layer matrices (lm_matmul_interleave): every product of one
 * (lm_matmul_panel at 1..40 tokens, lm_matmul, lm_matmul_panel_group) the bits
 * of the same rows in the file's layout, on two threads, at a width of
 * several slices; what cannot be interleaved is refused, and the GEMM refuses
 * an interleaved weight with an error. */
/* The bf16 products' bound (test_gemm, test_amx): the worst error of y
 * (n tokens x out) against the exact dot (double) of the dequantized weights
 * wf (out x in) and the activations x, as a fraction of 2^-7 sum |w x|; *bad:
 * how many outputs exceed it */
static double bf16_worst(const float *y, const float *wf, const float *x, int n, int out, int in, int *bad) {
    double worst = 0;
    *bad = 0;
    for (int c = 0; c < n; c++)
        for (int o = 0; o < out; o++) {
            double exact = 0, mag = 0;
            for (int i = 0; i < in; i++) {
                exact += (double)wf[o * in + i] * x[c * in + i];
                mag += fabs((double)wf[o * in + i] * x[c * in + i]);
            }
            const double e = fabs(y[c * out + o] - exact) / (mag * 0x1p-7 + 1e-30);
            if (e > worst) worst = e;
            *bad += e > 1;
        }
    return worst;
}

/* Prompts on AMX's bf16 tiles (lm_matmul_amx, where this CPU has them): every
 * output within the bf16 bound (2^-7 of sum |w x|, as test_gemm) of the exact
 * dot of the dequantized weights and the f32 activations; from interleaved
 * rows the same bits; a token's outputs the same bits whatever else is in the
 * call (the fewest tokens the path takes, then more: a whole tile of 16 and
 * a remainder, and twice as many); two weights as a group as one by one;
 * nothing written past the outputs; one token fewer refused. 80 rows: an odd
 * panel at the end of a chunk. */
static void test_amx(void) {
    enum { OUT = 80, IN = 256 * 3, MAXN = 1024 };
    if (!lm_cpu_amx()) { printf("amx: no AMX-BF16 on this CPU\n"); return; }
    lm_tensor *probe = lm_tensor_new(LM_Q4_K, 2, (int64_t[]){16, 256});
    const int nmin = (int)lm_matmul_amx_min(probe);
    lm_tensor_free(probe);
    CHECK(nmin > 1 && nmin < MAXN / 2, "AMX from %d tokens", nmin);
    const int ns[] = {nmin, nmin + 15, 2 * nmin + 6};
    lm_pool *pool = lm_pool_new(2);
    uint64_t r = 23;
    float *x = malloc(MAXN * IN * sizeof *x), *wf = malloc(OUT * IN * sizeof *wf);
    float *y = malloc((MAXN * OUT + 16) * sizeof *y), *y2 = malloc((MAXN * OUT + 16) * sizeof *y2), *y0 = malloc(MAXN * OUT * sizeof *y0);
    fill(x, MAXN * IN, &r, 2.0f);
    int checked = 0;
    for (int t = 0; t < LM_DTYPE_COUNT; t++) {
        const lm_quant_ops *ops = lm_quant_ops_get((lm_dtype)t);
        if (!ops || !ops->bf16_panel) continue;
        const size_t rb = lm_dtype_row_size((lm_dtype)t, IN);
        char *d = malloc(rb * OUT), *il = aligned_alloc(64, (rb * OUT + 63) & ~(size_t)63);
        for (int64_t k = 0; k < OUT; k++) {
            fill(wf + k * IN, IN, &r, k == 7 ? 3000.0f : 1.0f);
            ops->from_float(wf + k * IN, d + k * rb, IN);
            lm_quant_entry_get((lm_dtype)t)->to_float[LM_ISA_SCALAR](d + k * rb, wf + k * IN, IN);
        }
        lm_tensor *w = lm_tensor_wrap((lm_dtype)t, 2, (int64_t[]){OUT, IN}, d, free, d);
        lm_storage *st = lm_storage_wrap(il, rb * OUT, NULL, NULL);
        lm_tensor *wi = lm_matmul_interleave(pool, w, st, il, NULL, false);
        lm_storage_release(st);
        CHECK(wi != NULL, "%s: interleaving failed", lm_dtype_name(t));
        void *q = aligned_alloc(64, (lm_matmul_qbuf_size(w, MAXN, lm_pool_size(pool)) + 63) & ~(size_t)63);
        CHECK(!lm_matmul_prompt_amx(w, nmin - 1) && !lm_matmul_amx(pool, (const lm_tensor *const *)&w, 1, x, nmin - 1, &y, q),
              "%s: %d tokens refused", lm_dtype_name(t), nmin - 1);
        CHECK(!lm_matmul_amx(pool, (const lm_tensor *[]){w, wi}, 2, x, nmin, (float *[]){y, y2}, q), "%s: mixed layouts refused",
              lm_dtype_name(t));
        double worst = 0;
        for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
            const int n = ns[k];
            for (int i = 0; i < 16; i++) y[n * OUT + i] = y2[n * OUT + i] = -7.0f;
            CHECK(lm_matmul_amx(pool, (const lm_tensor *const *)&w, 1, x, n, &y, q), "%s n=%d: refused", lm_dtype_name(t), n);
            int bad;
            const double e = bf16_worst(y, wf, x, n, OUT, IN, &bad);
            if (e > worst) worst = e;
            CHECK(bad == 0, "%s n=%d: %d of %d AMX outputs outside 2^-7 sum|w x| (worst %.2f of it)", lm_dtype_name(t), n, bad,
                  n * OUT, worst);
            CHECK(lm_matmul_amx(pool, (const lm_tensor *const *)&wi, 1, x, n, &y2, q), "%s n=%d: interleaved refused",
                  lm_dtype_name(t), n);
            CHECK(memcmp(y, y2, n * OUT * sizeof *y) == 0, "%s n=%d: interleaved rows differ", lm_dtype_name(t), n);
            CHECK(lm_matmul_amx(pool, (const lm_tensor *[]){wi, wi}, 2, x, n, (float *[]){y2, y2}, q) &&
                      memcmp(y, y2, n * OUT * sizeof *y) == 0,
                  "%s n=%d: a group differs", lm_dtype_name(t), n);
            for (int i = 0; i < 16; i++)
                CHECK(y[n * OUT + i] == -7.0f && y2[n * OUT + i] == -7.0f, "%s n=%d: written past the outputs",
                      lm_dtype_name(t), n);
            if (n == nmin) memcpy(y0, y, nmin * OUT * sizeof *y);
            else CHECK(memcmp(y, y0, nmin * OUT * sizeof *y) == 0, "%s n=%d: the first %d tokens differ from a call of as many",
                       lm_dtype_name(t), n, nmin);
            checked++;
        }
        printf("amx %s: worst error %.3f of the bound\n", lm_dtype_name(t), worst);
        lm_tensor_free(w);
        lm_tensor_free(wi);
        free(q);
    }
    free(x), free(wf), free(y), free(y2), free(y0);
    lm_pool_free(pool);
    CHECK(checked > 0, "no AMX product ran");
}

static void test_interleaved(void) {
    enum { MAXN = 40 };
    static const int64_t outs[3] = {16 * 9, 32, 16};
    const int64_t IN = 256 * 13; /* a multiple of every block: several slices of a panel either way */
    static const int ns[] = {1, 3, 5, 16, 33, MAXN};
    lm_pool *pool = lm_pool_new(2);
    uint64_t r = 91;
    float *x = malloc(MAXN * IN * sizeof *x), *row = malloc(IN * sizeof *row);
    fill(x, MAXN * IN, &r, 2.0f);
    int checked = 0;
    for (int t = 0; t < LM_DTYPE_COUNT; t++) {
        const lm_quant_ops *ops = lm_quant_ops_get((lm_dtype)t);
        if (!ops || !ops->interleave) continue;
        const size_t rb = lm_dtype_row_size((lm_dtype)t, IN);
        lm_tensor *w[3], *wi[3];
        float *y[3], *want[3];
        size_t total = 0;
        for (int i = 0; i < 3; i++) total += rb * outs[i];
        char *il = aligned_alloc(64, (total + 63) & ~(size_t)63);
        lm_storage *st = lm_storage_wrap(il, total, NULL, NULL);
        for (int i = 0, off = 0; i < 3; off += (int)(rb * outs[i]), i++) {
            char *d = malloc(rb * outs[i]);
            for (int64_t k = 0; k < outs[i]; k++) {
                fill(row, IN, &r, k == 5 ? 3000.0f : 1.0f);
                ops->from_float(row, d + k * rb, IN);
            }
            w[i] = lm_tensor_wrap((lm_dtype)t, 2, (int64_t[]){outs[i], IN}, d, free, d);
            CHECK(lm_matmul_can_interleave(w[i]), "%s: %lld rows not interleavable", lm_dtype_name(t), (long long)outs[i]);
            wi[i] = lm_matmul_interleave(pool, w[i], st, il + off, NULL, false);
            CHECK(wi[i] && !lm_matmul_can_interleave(wi[i]), "%s: interleaving failed or repeatable", lm_dtype_name(t));
            y[i] = malloc(MAXN * outs[i] * sizeof(float));
            want[i] = malloc(MAXN * outs[i] * sizeof(float));
        }
        lm_storage_release(st);
        void *q = aligned_alloc(64, (lm_matmul_qbuf_size(w[0], MAXN, lm_pool_size(pool)) + 63) & ~(size_t)63);
        for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
            const int n = ns[k];
            for (int i = 0; i < 3; i++) {
                lm_matmul_panel(pool, w[i], x, n, want[i], q);
                lm_matmul_panel(pool, wi[i], x, n, y[i], q);
                CHECK(memcmp(y[i], want[i], n * outs[i] * sizeof(float)) == 0, "%s n=%d weight %d: interleaved differs",
                      lm_dtype_name(t), n, i);
                memset(y[i], 0, n * outs[i] * sizeof(float));
                lm_matmul(pool, wi[i], x, n, y[i], q);
                CHECK(memcmp(y[i], want[i], n * outs[i] * sizeof(float)) == 0, "%s n=%d weight %d: lm_matmul of interleaved differs",
                      lm_dtype_name(t), n, i);
            }
            CHECK(lm_matmul_panel_group(pool, (const lm_tensor *const *)wi, 3, x, n, y, q), "%s interleaved group refused",
                  lm_dtype_name(t));
            for (int i = 0; i < 3; i++)
                CHECK(memcmp(y[i], want[i], n * outs[i] * sizeof(float)) == 0, "%s n=%d weight %d: interleaved group differs",
                      lm_dtype_name(t), n, i);
            checked++;
        }
        CHECK(!lm_matmul_panel_group(pool, (const lm_tensor *[]){w[1], wi[1]}, 2, x, 1, y, q), "%s mixed layouts refused",
              lm_dtype_name(t));
        CHECK(lm_matmul_gemm(pool, wi[1], x, 1, y[1], NULL, q) == LM_ERR && strstr(lm_last_error(), "interleaved"),
              "%s: the GEMM refuses an interleaved weight", lm_dtype_name(t));
        lm_tensor *part = lm_tensor_wrap((lm_dtype)t, 2, (int64_t[]){outs[1] - 8, IN}, w[1]->data, NULL, NULL);
        CHECK(!lm_matmul_can_interleave(part), "%s: partial panels refused", lm_dtype_name(t));
        lm_tensor_free(part);
        for (int i = 0; i < 3; i++) { lm_tensor_free(w[i]); lm_tensor_free(wi[i]); free(y[i]); free(want[i]); }
        free(q);
    }
    free(x); free(row);
    lm_pool_free(pool);
    printf("interleaved products checked: %d\n", checked);
    CHECK(lm_cpu_isa() < LM_ISA_AVX512 || checked > 0, "no interleaved product ran");
}

/* f32 -> bf16 rows: every element the bits of the scalar conversion, over all
 * sign/exponent/high-mantissa patterns with low halves at and around the tie
 * (NaN, infinities and subnormals among them). */
static void test_bf16_row(void) {
    static const uint32_t lows[] = {0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff};
    enum { NL = sizeof lows / sizeof *lows };
    float *x = malloc(65536 * NL * sizeof *x);
    uint16_t *y = malloc(65536 * NL * sizeof *y);
    for (uint32_t h = 0; h < 65536; h++)
        for (int l = 0; l < NL; l++) {
            const uint32_t u = h << 16 | lows[l];
            memcpy(&x[h * NL + l], &u, 4);
        }
    lm_f32_to_bf16_row(x, y, 65536 * NL);
    int bad = 0;
    for (int64_t i = 0; i < 65536 * NL; i++) bad += y[i] != lm_f32_to_bf16(x[i]);
    CHECK(bad == 0, "%d of %d bf16 row conversions differ from the scalar one", bad, 65536 * NL);
    free(x), free(y);
}

/* The prefill GEMM (lm_matmul_gemm) on quantized weights, in bf16 where this
 * CPU runs oneDNN's bf16 on the hardware, else f32: every output within the
 * stated bound of the exact dot (double) of the dequantized weights and the
 * f32 activations: 2^-7 of the sum of |w x| (core/matmul.c: two roundings to
 * bf16, each within 2^-9, and f32 sums). 300 rows: a last slice shorter than
 * the others; 70 tokens. */
static void test_gemm(void) {
    enum { OUT = 300, IN = 512, N = 70 };
    const lm_dtype types[] = {LM_Q4_K, LM_Q5_K, LM_Q6_K, LM_Q5_1, LM_Q8_0};
    lm_pool *pool = lm_pool_new(2);
    uint64_t r = 11;
    float *x = malloc(N * IN * sizeof *x), *wf = malloc(OUT * IN * sizeof *wf), *y = malloc(N * OUT * sizeof *y);
    fill(x, N * IN, &r, 2.0f);
    printf("prefill GEMM: %s\n", lm_bgemm_impl() ? lm_bgemm_impl() : "no bf16 hardware path");
    for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++) {
        const lm_dtype t = types[ti];
        const lm_quant_ops *ops = lm_quant_ops_get(t);
        const size_t rb = lm_dtype_row_size(t, IN);
        char *d = malloc(rb * OUT);
        for (int64_t k = 0; k < OUT; k++) {
            fill(wf + k * IN, IN, &r, 1.0f);
            ops->from_float(wf + k * IN, d + k * rb, IN);
            ops->to_float(d + k * rb, wf + k * IN, IN);
        }
        lm_tensor *w = lm_tensor_wrap(t, 2, (int64_t[]){OUT, IN}, d, free, d);
        const size_t wbs = lm_matmul_wbuf_size(w);
        if (!wbs) { lm_tensor_free(w); continue; } /* never takes the GEMM on this CPU */
        void *wbuf = malloc(wbs), *q = aligned_alloc(64, (lm_matmul_qbuf_size(w, N, lm_pool_size(pool)) + 63) & ~(size_t)63);
        CHECK(lm_matmul_gemm(pool, w, x, N, y, wbuf, q) == LM_OK, "%s: gemm failed: %s", lm_dtype_name(t), lm_last_error());
        int bad;
        const double worst = bf16_worst(y, wf, x, N, OUT, IN, &bad);
        CHECK(bad == 0, "%s: %d of %d GEMM outputs outside 2^-7 sum|w x| (worst %.2f of it)", lm_dtype_name(t), bad,
              N * OUT, worst);
        printf("gemm %s (%s): worst error %.3f of the bound\n", lm_dtype_name(t),
               wbs == (size_t)OUT * IN * 2 ? "bf16" : "f32", worst);
        lm_tensor_free(w);
        free(wbuf), free(q);
    }
    free(x), free(wf), free(y);
    lm_pool_free(pool);
}

int main(void) {
    test_bf16_row();
    test_gemm();
    test_amx();
    test_panel();
    test_panel_group();
    test_panel_product();
    test_interleaved();
    test_tile();
    test_known_blocks();
    test_round_trips();
    test_fp16_exhaustive();
    test_variants();
    return tu_finish("quant");
}
