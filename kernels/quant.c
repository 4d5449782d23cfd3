/* The type table (quant.h: one row per type, filled by the families' register
 * functions) and the dispatch built from it: for each dtype its companion
 * activation format and the best variant of each function the CPU runs
 * (picked once, by CPUID). */
#include "quant_impl.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static lm_quant_entry g_table[LM_DTYPE_COUNT];
static lm_quant_ops g_ops[LM_DTYPE_COUNT];
static lm_isa g_isa;
static bool g_amx;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static lm_isa detect(void) {
    __builtin_cpu_init();
    lm_isa isa = LM_ISA_SCALAR;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = LM_ISA_AVX2;
    if (isa == LM_ISA_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512dq"))
        isa = LM_ISA_AVX512;
    /* LUMEN_ISA caps the choice (for tests and comparisons) */
    const char *cap = getenv("LUMEN_ISA");
    if (cap && !strcmp(cap, "scalar")) isa = LM_ISA_SCALAR;
    else if (cap && !strcmp(cap, "avx2") && isa > LM_ISA_AVX2) isa = LM_ISA_AVX2;
    /* AMX's bf16 tiles (LUMEN_ISA=avx512, or any lower cap, leaves them out): Linux
     * hands a process the tile state only once it asks (arch_prctl
     * ARCH_REQ_XCOMP_PERM for XTILEDATA); until then an AMX instruction faults */
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    const bool capped = cap && (!strcmp(cap, "scalar") || !strcmp(cap, "avx2") || !strcmp(cap, "avx512"));
    g_amx = isa == LM_ISA_AVX512 && !capped && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
            syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    return isa;
}

static void init(void) {
    g_isa = detect();
    lm_quant_register_legacy(g_table);
    lm_quant_register_k(g_table);
    for (int t = 0; t < LM_DTYPE_COUNT; t++) {
        lm_quant_entry *e = &g_table[t];
        lm_quant_ops *o = &g_ops[t];
        o->vec_dot_type = e->vec_dot_type;
        for (int i = g_isa; i >= 0; i--) {
            if (!o->vec_dot && e->vec_dot[i]) {
                o->vec_dot = e->vec_dot[i];
                /* a tile of this ISA or a higher one (up to the CPU's) matches this
                 * vec_dot bit for bit (quant.h); take the fastest */
                for (int k = g_isa; k >= i && !o->vec_dot_tile; k--) {
                    o->vec_dot_tile = e->vec_dot_tile[k];
                    o->tile_rows = e->tile_rows[k];
                }
            }
            if (!o->from_float && e->from_float[i]) o->from_float = e->from_float[i];
            if (!o->to_float && e->to_float[i]) o->to_float = e->to_float[i];
            if (!o->panel && i > LM_ISA_SCALAR && e->panel[i]) {
                o->panel = e->panel[i];
                /* the interleaved layout where this ISA reads it for every path */
                if (e->interleave && e->panel_il[i] && (!e->repack[i] || e->repack_il[i]))
                    o->interleave = e->interleave, o->panel_il = e->panel_il[i], o->repack_il = e->repack_il[i];
            }
            o->panel_decode = o->panel && e->panel_decode;
            if (!o->repack && i > LM_ISA_SCALAR && e->repack[i] && e->tiled[i]) {
                o->repack = e->repack[i], o->tiled = e->tiled[i], o->repack_block = e->repack_block;
                if (i == LM_ISA_AVX512 && g_amx) o->bf16_panel = e->bf16_panel;
                if (!o->panel && e->interleave && e->tiled_il[i] && e->repack_il[i])
                    o->interleave = e->interleave, o->tiled_il = e->tiled_il[i], o->repack_il = e->repack_il[i];
            }
        }
    }
}

void lm_kernels_init(void) { pthread_once(&g_once, init); }

lm_isa lm_cpu_isa(void) {
    lm_kernels_init();
    return g_isa;
}

bool lm_cpu_amx(void) {
    lm_kernels_init();
    return g_amx;
}

const char *lm_isa_name(lm_isa isa) {
    switch (isa) {
    case LM_ISA_SCALAR: return "scalar";
    case LM_ISA_AVX2: return "avx2";
    case LM_ISA_AVX512: return "avx512-vnni";
    default: return "?";
    }
}

const lm_quant_ops *lm_quant_ops_get(lm_dtype t) {
    lm_kernels_init();
    if ((int)t < 0 || t >= LM_DTYPE_COUNT) return NULL;
    const lm_quant_ops *o = &g_ops[t];
    return o->to_float || o->from_float || o->vec_dot ? o : NULL;
}

const lm_quant_entry *lm_quant_entry_get(lm_dtype t) {
    lm_kernels_init();
    if ((int)t < 0 || t >= LM_DTYPE_COUNT) return NULL;
    const lm_quant_entry *e = &g_table[t];
    return e->to_float[0] || e->from_float[0] || e->vec_dot[0] ? e : NULL;
}

const lm_quant_entry *lm_type_row(int t) {
    lm_kernels_init();
    return t >= 0 && t < LM_DTYPE_COUNT && g_table[t].name ? &g_table[t] : NULL;
}

size_t lm_panel_record(lm_dtype w) { return lm_type_row(w)->panel_record; }

void lm_panel_pack(lm_dtype w, const void *yq, void *dst, size_t y_stride, int64_t n) {
    lm_type_row(w)->panel_pack(yq, dst, y_stride, n);
}

/* bf16, exact, round to nearest even, NaN kept quiet. */
float lm_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* the bits of an f32 to bf16; without branches, so that the row loop vectorizes */
static inline uint16_t bf16_bits(uint32_t u) {
    const uint32_t nan = (u >> 16) | 64, rne = (u + 0x7fff + ((u >> 16) & 1)) >> 16; /* quiet NaN */
    return (uint16_t)((u & 0x7fffffff) > 0x7f800000 ? nan : rne);
}

uint16_t lm_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return bf16_bits(u);
}

void lm_f32_to_bf16_row(const float *restrict x, uint16_t *restrict y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        y[i] = bf16_bits(u);
    }
}
