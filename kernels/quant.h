/* Quantized block formats: per-dtype compute functions behind one dispatch table.
 *
 * For every weight dtype there is a plain scalar reference and, where it pays,
 * AVX2 and AVX-512 (VNNI) variants; lm_kernels_init() picks the best variant the
 * CPU supports (CPUID, once, thread-safe). A weight row of dtype T is dotted with
 * an activation row quantized to T's vec_dot_type (Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1
 * for Q4_1/Q5_1, Q8_K for the K-quants, F32 for F32/F16/BF16), as llama.cpp does,
 * so results agree with it. */
#ifndef LM_QUANT_H
#define LM_QUANT_H

#include "lumen.h"

typedef enum lm_isa { LM_ISA_SCALAR = 0, LM_ISA_AVX2 = 1, LM_ISA_AVX512 = 2, LM_ISA_COUNT = 3 } lm_isa;

/* y[0..n) = dequantized x. n is a multiple of the block size. */
typedef void (*lm_to_float_fn)(const void *restrict x, float *restrict y, int64_t n);
/* Quantize n floats (multiple of the block size) into blocks of the dtype. */
typedef void (*lm_from_float_fn)(const float *restrict x, void *restrict y, int64_t n);
/* *s = dot(x, y) over n elements; x of the weight dtype, y of its vec_dot_type. */
typedef void (*lm_vec_dot_fn)(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);

/* s[c * s_stride + r] = dot(x + r * x_stride, y + c * y_stride) for r < the
 * variant's tile_rows and c < 4: a tile of weight rows against four activation
 * rows, blocks unpacked and scales converted once per tile. Bit-identical to
 * the vec_dot it goes with, per pair, so batching never changes a result. */
typedef void (*lm_vec_dot_tile_fn)(int64_t n, float *restrict s, size_t s_stride, const void *restrict x, size_t x_stride,
                                   const void *restrict y, size_t y_stride);

/* Panels: the product for every token of a weight that has them (core/arch/llama.c
 * mm), whose results need not match the single-row kernel's, only each other's
 * (a token's result does not depend on the other tokens of the call, or on
 * their number). 16 weight rows (LM_PANEL_ROWS)
 * against up to LM_PANEL_TOKENS tokens; the weight blocks are unpacked and
 * transposed in registers so each vpdpbusd lane is one weight row and the
 * activation bytes come as broadcast operands: one int32 per (row, token,
 * block), converted and scaled once, instead of eight lanes to scale and sum.
 * Per (row, token): sum over blocks in order of fma((float)dot_b, dw*dy, sum),
 * plus fma(m, s_y, sum) for Q4_1. The K-quants' panels are repacked (below;
 * their order of operations in kernels/panel.c). The scalar references
 * (kernels/panel.c) do exactly that, so every variant gives the same bits.
 * s[t * s_stride + r] for r < 16, t < nt. pf: NULL, or 16 rows (x_stride apart)
 * to prefetch, a few cache lines per block in the first token pass: the next
 * rows of a product that streams its weights from memory (a decode step),
 * where prefetching them all at once stalls and the hardware prefetcher does
 * not follow the panel's interleaved rows. */
#define LM_PANEL_ROWS 16
#define LM_PANEL_TOKENS 32
/* The panels' activations, packed once per product (lm_panel_pack) so that a
 * pass reads every token from one pointer at fixed offsets: block i of token c
 * is the record at y + i * y_stride + c * lm_panel_record(w) (the tokens of a
 * pass side by side, block after block). A legacy panel's record: the block's
 * scale d; -bias * sum(q) (the weights go in shifted up by bias to be
 * vpdpbusd's unsigned side) or, for Q8_1 activations, s = d * sum(q); the 32
 * quants. The K-quants' record is the Q8_K block itself; for the types with a
 * scale and a min per 32 (Q4_K, Q5_K) its bsums[j], j < 8, hold the sum of
 * quants 32j .. 32j + 31 instead (|sum| <= 4096: an int16), so that a panel
 * takes two sub-blocks' mins in one int16 pair (lm_panel_pack_q8_K32). */
typedef struct { float d; union { int32_t c; float s; }; int8_t qs[32]; } lm_panel_block;
#define LM_PANEL_ARGS int64_t n, int nt, float *restrict s, size_t s_stride, const void *restrict x, size_t x_stride, \
                      const void *restrict y, size_t y_stride, const void *pf
typedef void (*lm_panel_fn)(LM_PANEL_ARGS);
/* bytes of one packed activation block for the panels of weight dtype w */
size_t lm_panel_record(lm_dtype w);
/* the n / block activations of one row yq (w's vec_dot_type) as panel records
 * at dst + i * y_stride */
void lm_panel_pack(lm_dtype w, const void *yq, void *dst, size_t y_stride, int64_t n);

/* Repacked panels (prompts: every K-quant product, the legacy types' from 16
 * tokens, core/matmul.c): a product repacks each panel's 16 rows once
 * (lm_repack_fn: n weights a row, x_stride apart, into n / block records of
 * repack_block bytes at dst, 64-byte aligned) into the order the VNNI units
 * read, then every token of the product passes the repacked rows (lm_tiled_fn:
 * a panel's arguments, the rows repacked), with nothing left to unpack or
 * transpose per pass (kernels/x86/tiled_k_avx512.c, panel_avx512.c). more: the sums
 * go on from s (the blocks before these done by an earlier call; a product
 * walks its rows in slices so that they stay in L1 across the tokens) rather
 * than from zero. Bit for bit the type's panel[LM_ISA_SCALAR], which is their
 * reference, however the blocks are sliced. */
#define LM_REPACK_ARGS int64_t n, const void *x, size_t x_stride, void *dst
#define LM_TILED_ARGS int64_t n, int nt, float *restrict s, size_t s_stride, const void *restrict xr, \
                      const void *restrict y, size_t y_stride, int more
typedef void (*lm_repack_fn)(LM_REPACK_ARGS);
typedef void (*lm_tiled_fn)(LM_TILED_ARGS);
/* tiled_il (below): tiled's arguments and pf, the bytes laid out as xr's (a
 * decode step's next panel) whose lines each super-block asks for into L2, a
 * few beside each line it reads, or NULL */
#define LM_TILED_IL_ARGS LM_TILED_ARGS, const void *pf
typedef void (*lm_tiled_il_fn)(LM_TILED_IL_ARGS);

/* Prompts on AMX's bf16 tiles (kernels/x86/amx_avx512.c): bf16_panel
 * dequantizes n weights of a repacked panel (rp: lm_repack_fn's blocks, or
 * repack_il's) into the tiles' B layout at dst (line j, 64 bytes, lane r: row
 * r's weights 2j, 2j + 1 in bf16; 32 n bytes); lm_amx_bf16_gemm sets
 * y[t * ys + 16 p + r] = the f32 sum over k of token t's bf16 activations (x +
 * t * xs) times row r of panel p (w + p * ws), for t < n, p < np, r < 16 (k a
 * multiple of 32). A token's sums do not depend on the others of the call. */
typedef void (*lm_bf16_panel_fn)(int64_t n, const void *rp, uint16_t *dst);
void lm_amx_bf16_gemm(int64_t k, int64_t n, const uint16_t *x, size_t xs, const uint16_t *w, size_t ws, int np, float *y,
                      size_t ys);

/* Interleaved weights (decode's layout: lm_model_load stores a model's layer
 * matrices so where the CPU has these kernels; core/matmul.c). A panel of 16
 * rows keeps its bytes (16 rows' worth, contiguous) in another order, the one
 * the VNNI panel reads, so it loads its operands whole with nothing to gather,
 * unpack row by row or transpose: first every block's quants as 64-byte lines
 * (line j of a block, lane r: bytes 4j..4j+3 of row r's quants; Q5_0 and
 * Q5_1 add a line of the rows' 4 bytes of fifth bits), then the 16 rows' fp16
 * d of every block ([block][16]), then (Q4_1, Q5_1) their m likewise.
 * lm_interleave_fn writes one panel (n weights a row, rows x_stride apart) at
 * dst; panel_il and repack_il are the type's panel and repack reading that
 * layout (x: the panel; x_stride: the row size), with the same bits as the
 * panel on the rows before. The K-quants keep each super-block's 16 rows
 * together instead, in the same bytes: Q4_K's and Q5_K's as 64-byte lines
 * (line k, lane r: bytes 4k..4k+3 of row r's block); Q6_K's 6-bit quants per
 * sub-block of 16 as three lines of bytes, the fourth line's quants spread
 * over their top two bits (what the kernel unpacks in a few instructions where
 * the file's split nibbles and high bits took a dozen), then the scales as
 * pairs and the 16 fp16 d; Q3_K's 3-bit quants per two sub-blocks as three
 * lines (eight lines of quants), then the scale bytes as lines of dwords and
 * the d; Q2_K's 2-bit quants a sub-block to a line, then the scale bytes and
 * d | dmin as lines of dwords (kernels/quant_k.c says where each bit goes);
 * tiled_il is the type's tiled reading its operands, scales and mins from
 * them, with nothing repacked (decode: a few tokens), repack_il the type's
 * repack from them (prompts), the same bits as tiled. */
#define LM_INTERLEAVE_ARGS int64_t n, const void *restrict x, size_t x_stride, void *restrict dst
typedef void (*lm_interleave_fn)(LM_INTERLEAVE_ARGS);

/* One row per element type: everything lumen knows about it. A type is added
 * by one row (an lm_quant_entry assignment in its family's register function,
 * kernels/quant_legacy.c or kernels/quant_k.c) plus its constant in lumen.h's
 * lm_dtype (GGUF's type id); names, block geometry (core/dtype.c), the
 * dispatch below, the panels' activation packing (core/matmul.c) and what
 * `lumen quantize` writes (core/quantize.c) are all read from the row. */
typedef void (*lm_panel_pack_fn)(const void *yq, void *dst, size_t y_stride, int64_t n);
typedef struct lm_quant_entry {
    const char *name;  /* "q4_k": lm_dtype_name / lm_dtype_from_name */
    int block;         /* elements per block */
    size_t size;       /* bytes per block */
    int file_type;     /* llama.cpp's general.file_type of a file `lumen quantize` writes in
                          this type; -1 (the activation formats): not a target */
    lm_dtype vec_dot_type;
    lm_to_float_fn to_float[LM_ISA_COUNT];     /* [LM_ISA_SCALAR] is the reference; the others give
                                                  its floats bit for bit (prompts through the bf16
                                                  GEMM dequantize every weight once per product) */
    lm_from_float_fn from_float[LM_ISA_COUNT]; /* [LM_ISA_SCALAR] is the reference; NULL = none */
    lm_vec_dot_fn vec_dot[LM_ISA_COUNT];       /* [LM_ISA_SCALAR] is the reference; NULL = none */
    lm_vec_dot_tile_fn vec_dot_tile[LM_ISA_COUNT]; /* optional; bit-identical to the vec_dot of the
                                                      highest ISA at or below its own that has one */
    int tile_rows[LM_ISA_COUNT];               /* weight rows per vec_dot_tile call */
    lm_panel_fn panel[LM_ISA_COUNT];           /* optional; [LM_ISA_SCALAR] is the reference */
    size_t panel_record;                       /* with panels: lm_panel_record */
    lm_panel_pack_fn panel_pack;               /* with panels: lm_panel_pack */
    bool panel_decode; /* the SIMD panel at one token streams the weights as fast as vec_dot
                          does, so decode tokens go through it too (core/arch/llama.c mm and
                          the output matrix). Measured on Zen 4 (16-row panels, the prefetch
                          into L1 or L2 by panel size): Q4_0, Q4_1, Q5_0 and Q8_0 as fast or
                          faster; the K-quants' panels 2.6x slower at one token (their per
                          super-block scale transposes) */
    lm_repack_fn repack[LM_ISA_COUNT]; /* optional, with tiled of the same ISA: prompts take them */
    lm_tiled_fn tiled[LM_ISA_COUNT];
    lm_bf16_panel_fn bf16_panel; /* optional: repack[LM_ISA_AVX512]'s (and repack_il's) blocks to AMX bf16 (above) */
    size_t repack_block;               /* bytes of one block of a panel's rows, repacked */
    lm_interleave_fn interleave;       /* optional (data movement: one for every ISA), with panel_il */
    lm_panel_fn panel_il[LM_ISA_COUNT];    /* the panel of the same ISA on interleaved rows */
    lm_repack_fn repack_il[LM_ISA_COUNT];  /* the repack of the same ISA from interleaved rows */
    lm_tiled_il_fn tiled_il[LM_ISA_COUNT]; /* K-quants: the tiled of the same ISA on interleaved rows */
} lm_quant_entry;

/* The chosen functions for the running CPU. */
typedef struct lm_quant_ops {
    lm_dtype vec_dot_type;
    lm_to_float_fn to_float;
    lm_from_float_fn from_float;
    lm_vec_dot_fn vec_dot;
    lm_vec_dot_tile_fn vec_dot_tile; /* NULL: vec_dot per row and token */
    int tile_rows;
    lm_panel_fn panel; /* NULL: none in SIMD on this CPU */
    bool panel_decode; /* panel, and every token goes through it (lm_quant_entry) */
    lm_repack_fn repack; /* NULL: none on this CPU; else prompts repack and take tiled */
    lm_tiled_fn tiled;
    size_t repack_block;
    /* NULL: no interleaved layout on this CPU; else panel_il (and, with
     * repack, repack_il) of the ISA panel and repack are, or (K-quants, no
     * panel) tiled_il and repack_il of the ISA tiled and repack */
    lm_interleave_fn interleave;
    lm_panel_fn panel_il;
    lm_repack_fn repack_il;
    lm_tiled_il_fn tiled_il;
    lm_bf16_panel_fn bf16_panel; /* NULL unless the CPU has AMX-BF16 (lm_cpu_amx) */
} lm_quant_ops;

void lm_kernels_init(void);
lm_isa lm_cpu_isa(void);                 /* best ISA this CPU runs (respects LUMEN_ISA=scalar|avx2|avx512 env cap) */
bool lm_cpu_amx(void);                   /* AMX-BF16 tiles, granted by the kernel, and no LUMEN_ISA cap */
const char *lm_isa_name(lm_isa isa);
/* NULL when the dtype has no compute support. */
const lm_quant_ops *lm_quant_ops_get(lm_dtype t);
/* The registered entry, for tests that compare variants (NULL when unsupported). */
const lm_quant_entry *lm_quant_entry_get(lm_dtype t);
/* The row of any known type, with or without compute functions (NULL when unknown). */
const lm_quant_entry *lm_type_row(int t);

/* fp16 / bf16 scalar conversions (exact, round-to-nearest-even). The fp16 ones
 * are single F16C instructions (in the x86-64-v3 baseline), inlined because the
 * kernels convert a block scale every 32 elements. */
#include <immintrin.h>
static inline float lm_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t lm_f32_to_f16(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
float lm_bf16_to_f32(uint16_t h);
uint16_t lm_f32_to_bf16(float f);
void lm_f32_to_bf16_row(const float *restrict x, uint16_t *restrict y, int64_t n);

#endif
