/* K-quant block layouts (byte-for-byte ggml's, so GGUF tensors are used in place),
 * the helpers the scalar reference and the SIMD variants share, and the x86
 * variants' entry points (kernels/x86/quant_k_avx2.c, quant_k_avx512.c).
 *
 * A K-quant "super-block" holds QK_K = 256 weights. Q4_K and Q5_K split it into
 * eight sub-blocks of 32 with a 6-bit scale and a 6-bit min each (value =
 * d*scale*q - dmin*min); Q6_K into sixteen sub-blocks of 16 with a signed 8-bit
 * scale (value = d*scale*(q - 32)). Q8_K is the activation format the three are
 * dotted with: float d, int8 quants and the sums of each 16 quants (bsums), which
 * turn the min / -32 offsets into one multiply per sub-block.
 *
 * Q2_K and Q3_K split it into sixteen sub-blocks of 16. Q2_K: 2-bit quants with a
 * 4-bit scale and a 4-bit min each (value = d*scale*q - dmin*min); Q3_K: 3-bit
 * quants (two low bits in qs, the third in hmask) with a 6-bit signed scale
 * (value = d*(scale-32)*(q-4)). In both, byte 32h+l of qs holds, at bits 2j..2j+1,
 * the low bits of element 128h+32j+l. */
#ifndef LM_QUANT_K_X86_H
#define LM_QUANT_K_X86_H

#include <stdint.h>
#include <string.h>

#include "quant.h"

#define QK_K 256
#define K_SCALE_SIZE 12

typedef struct {
    uint8_t scales[QK_K / 16];     /* sub-block j: scale in the low nibble, min in the high */
    uint8_t qs[QK_K / 4];          /* 2-bit quants, see above */
    uint16_t d;                    /* fp16 super-block scale for the scales */
    uint16_t dmin;                 /* fp16 super-block scale for the mins */
} block_q2_K;

typedef struct {
    uint8_t hmask[QK_K / 8];       /* third bit of element 32k+l: bit k of hmask[l] (set: q - 4 >= 0) */
    uint8_t qs[QK_K / 4];          /* low 2 bits, see above */
    uint8_t scales[K_SCALE_SIZE];  /* 16 scales of 6 bits (see lm_k_unpack_scales_q3) */
    uint16_t d;                    /* fp16 */
} block_q3_K;

typedef struct {
    uint16_t d;                    /* fp16 super-block scale for the sub-block scales */
    uint16_t dmin;                 /* fp16 super-block scale for the sub-block mins */
    uint8_t scales[K_SCALE_SIZE];  /* 8 scales + 8 mins, 6 bits each (see lm_k_unpack_scales) */
    uint8_t qs[QK_K / 2];          /* 4-bit quants: byte 32j+l holds q[64j+l] low, q[64j+32+l] high */
} block_q4_K;

typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];          /* 5th bit: bit 2j of qh[l] for q[64j+l], bit 2j+1 for q[64j+32+l] */
    uint8_t qs[QK_K / 2];          /* low 4 bits, laid out as in Q4_K */
} block_q5_K;

typedef struct {
    uint8_t ql[QK_K / 2];          /* low 4 bits; per 128: ql[l] = q[l] | q[l+64]<<4, ql[l+32] = q[l+32] | q[l+96]<<4 */
    uint8_t qh[QK_K / 4];          /* high 2 bits; per 128: qh[l] = q[l]>>4 | q[l+32]>>4<<2 | q[l+64]>>4<<4 | q[l+96]>>4<<6 */
    int8_t scales[QK_K / 16];      /* signed scale of each 16 */
    uint16_t d;                    /* fp16 */
} block_q6_K;

typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];      /* sum of each 16 quants */
} block_q8_K;

_Static_assert(sizeof(block_q2_K) == 84, "block_q2_K must be 84 bytes");
_Static_assert(sizeof(block_q3_K) == 110, "block_q3_K must be 110 bytes");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K must be 144 bytes");
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K must be 176 bytes");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K must be 210 bytes");
_Static_assert(sizeof(block_q8_K) == 292, "block_q8_K must be 292 bytes");

/* Unpacks the 12-byte 6-bit packing of Q4_K/Q5_K into out[0..8) = scales and
 * out[8..16) = mins. Bytes 0-3 hold scales 0-3 and bytes 4-7 mins 0-3 in their low
 * 6 bits; bytes 8-11 hold the low nibbles of scales 4-7 (low) and mins 4-7 (high),
 * whose top two bits ride in the top bits of bytes 0-3 (scales) and 4-7 (mins).
 * Done four at a time on 32-bit words, as ggml does (little-endian). */
static inline void lm_k_unpack_scales(const uint8_t packed[K_SCALE_SIZE], uint8_t out[16]) {
    const uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, low2 = 0x03030303;
    uint32_t w[3], u[4];
    memcpy(w, packed, K_SCALE_SIZE);
    u[0] = w[0] & low6;                                          /* scales 0-3 */
    u[1] = (w[2] & low4) | (((w[0] >> 6) & low2) << 4);          /* scales 4-7 */
    u[2] = w[1] & low6;                                          /* mins 0-3 */
    u[3] = ((w[2] >> 4) & low4) | (((w[1] >> 6) & low2) << 4);   /* mins 4-7 */
    memcpy(out, u, 16);
}

/* Q3_K's 16 scales as signed values -32..31: bytes 0-7 hold the low nibbles of
 * scales 0-7 (low) and 8-15 (high); bits 2k..2k+1 of bytes 8-11 the top two bits
 * of scales 4k'..: scale j's are bits 2*(j/4) of byte 8 + j%4. Four at a time on
 * 32-bit words, as ggml does (little-endian). */
static inline void lm_k_unpack_scales_q3(const uint8_t packed[K_SCALE_SIZE], int8_t out[16]) {
    const uint32_t low4 = 0x0f0f0f0f, low2 = 0x03030303;
    uint32_t w[3], u[4];
    memcpy(w, packed, K_SCALE_SIZE);
    u[0] = (w[0] & low4) | (((w[2] >> 0) & low2) << 4);        /* scales 0-3 */
    u[1] = (w[1] & low4) | (((w[2] >> 2) & low2) << 4);        /* scales 4-7 */
    u[2] = ((w[0] >> 4) & low4) | (((w[2] >> 4) & low2) << 4); /* scales 8-11 */
    u[3] = ((w[1] >> 4) & low4) | (((w[2] >> 6) & low2) << 4); /* scales 12-15 */
    memcpy(out, u, 16);
    for (int j = 0; j < 16; j++) out[j] = (int8_t)(out[j] - 32);
}

#ifdef __AVX2__
#include <immintrin.h>
/* the same 16 scales as int8 in a register (the vec_dots: an array of them
 * stored byte by byte and loaded whole stalls on store forwarding every block) */
static inline __m128i lm_k_scales_q3_x86(const uint8_t packed[K_SCALE_SIZE]) {
    uint32_t w2;
    memcpy(&w2, packed + 8, 4);
    const __m128i w01 = _mm_loadl_epi64((const __m128i *)packed); /* words 0, 1 */
    const __m128i lo = _mm_and_si128(_mm_srlv_epi32(_mm_unpacklo_epi64(w01, w01), _mm_setr_epi32(0, 0, 4, 4)), _mm_set1_epi8(0x0F));
    const __m128i hi = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32((int)w2), _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(0x03));
    return _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi32(hi, 4)), _mm_set1_epi8(32));
}
#endif

/* One Q2_K super-block added to a running sum as ggml's generic vec_dot does:
 * sumf + (dall*isum - dmin*summins), each product rounded on its own (the
 * empty asm keeps the compiler from fusing one into a multiply-add), so the
 * SIMD variants that sum isum and summins exactly give the scalar's bits. */
static inline float lm_q2_K_block_sum(float sumf, float dall, int32_t isum, float dmin, int32_t summins) {
    float a = dall * (float)isum, b = dmin * (float)summins;
    __asm__("" : "+x"(a), "+x"(b));
    return sumf + (a - b);
}

#if defined(__AVX2__)
#include <immintrin.h>
/* lm_k_unpack_scales in an xmm (scales in bytes 0-7, mins in 8-15), for the SIMD
 * variants. Reads 16 bytes at `packed`: inside a block the quants follow. */
static inline __m128i lm_k_unpack_scales_sse(const uint8_t *packed) {
    const __m128i v = _mm_loadu_si128((const __m128i *)packed);      /* words w0 w1 w2 */
    const __m128i a = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)); /* w0 w2 w1 w2 */
    const __m128i b = _mm_and_si128(_mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)), _mm_setr_epi32(0, -1, 0, -1));
    const __m128i low = _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4)),
                                      _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m128i top = _mm_and_si128(_mm_srli_epi32(b, 2), _mm_set1_epi32(0x30303030)); /* bits 6-7 -> 4-5 */
    return _mm_or_si128(low, top);
}
#endif

/* AVX2 + FMA + F16C (the x86-64-v3 baseline). */
void lm_vec_dot_q2_K_q8_K_avx2(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void lm_vec_dot_q3_K_q8_K_avx2(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void lm_vec_dot_q4_K_q8_K_avx2(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void lm_vec_dot_q5_K_q8_K_avx2(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void lm_vec_dot_q6_K_q8_K_avx2(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void lm_quantize_q8_K_avx2(const float *restrict x, void *restrict y, int64_t n);

/* AVX-512 F/BW/DQ/VL + VNNI. */
void lm_vec_dot_q2_K_q8_K_avx512(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void lm_vec_dot_q3_K_q8_K_avx512(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void lm_vec_dot_q4_K_q8_K_avx512(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void lm_vec_dot_tile_q4_K_q8_K_vnni(int64_t n, float *restrict s, size_t s_stride, const void *restrict x,
                                    size_t x_stride, const void *restrict y, size_t y_stride);
void lm_vec_dot_tile_q6_K_q8_K_vnni(int64_t n, float *restrict s, size_t s_stride, const void *restrict x,
                                    size_t x_stride, const void *restrict y, size_t y_stride);
#define LM_TILE_ROWS_K 2
void lm_vec_dot_q5_K_q8_K_avx512(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void lm_vec_dot_q6_K_q8_K_avx512(int64_t n, float *restrict s, const void *restrict x, const void *restrict y);
void lm_quantize_q8_K_avx512(const float *restrict x, void *restrict y, int64_t n);
void lm_dequantize_q4_K_avx512(const void *restrict x, float *restrict y, int64_t n);
void lm_dequantize_q6_K_avx512(const void *restrict x, float *restrict y, int64_t n);

/* Panels (quant.h): the scalar references (kernels/panel.c) of the repacked ones below. */
void lm_panel_q2_K_ref(LM_PANEL_ARGS);
void lm_panel_q3_K_ref(LM_PANEL_ARGS);
void lm_panel_q4_K_ref(LM_PANEL_ARGS);
void lm_panel_q5_K_ref(LM_PANEL_ARGS);
void lm_panel_q6_K_ref(LM_PANEL_ARGS);

/* Repacked panels (quant.h, x86/tiled_k_avx512.c): one super-block of a
 * panel's 16 rows, lanes = rows. dsc: d times each sub-block's scale (Q4_K,
 * Q5_K: the eight of 32 in dsc[0..8); the others sixteen of 16); d: the
 * offset's factor; off: pairs of int16 against bsums 2p, 2p + 1 (Q3_K: -4 *
 * scale, Q6_K: -32 * scale); mn: the same for the min term (Q2_K, Q4_K, Q5_K),
 * by dmin (Q4_K, Q5_K: mins 2p, 2p + 1 against the record's sums of 32, p <
 * 4); q[g]: weights 4g .. 4g + 3 of every row, unsigned. Fields a type does
 * not use are not written. */
typedef struct {
    float dsc[16][16];
    float d[16], dmin[16];
    int32_t off[8][16];
    int32_t mn[8][16];
    uint8_t q[QK_K / 4][64];
} lm_ktile_block;

void lm_repack_q2_K_vnni(LM_REPACK_ARGS);
void lm_repack_q3_K_vnni(LM_REPACK_ARGS);
void lm_repack_q4_K_vnni(LM_REPACK_ARGS);
void lm_repack_q5_K_vnni(LM_REPACK_ARGS);
void lm_repack_q6_K_vnni(LM_REPACK_ARGS);
void lm_tiled_q2_K_vnni(LM_TILED_ARGS);
void lm_tiled_q3_K_vnni(LM_TILED_ARGS);
void lm_tiled_q4_K_vnni(LM_TILED_ARGS);
void lm_tiled_q5_K_vnni(LM_TILED_ARGS);
void lm_tiled_q6_K_vnni(LM_TILED_ARGS);
void lm_bf16_panel_q2_K(int64_t n, const void *rp, uint16_t *dst);
void lm_bf16_panel_q3_K(int64_t n, const void *rp, uint16_t *dst);
void lm_bf16_panel_q4_K(int64_t n, const void *rp, uint16_t *dst);
void lm_bf16_panel_q5_K(int64_t n, const void *rp, uint16_t *dst);
void lm_bf16_panel_q6_K(int64_t n, const void *rp, uint16_t *dst);
void lm_tiled_il_q2_K_vnni(LM_TILED_IL_ARGS);
void lm_tiled_il_q3_K_vnni(LM_TILED_IL_ARGS);
void lm_tiled_il_q4_K_vnni(LM_TILED_IL_ARGS);
void lm_tiled_il_q5_K_vnni(LM_TILED_IL_ARGS);
void lm_tiled_il_q6_K_vnni(LM_TILED_IL_ARGS);
void lm_repack_il_q2_K_vnni(LM_REPACK_ARGS);
void lm_repack_il_q3_K_vnni(LM_REPACK_ARGS);
void lm_repack_il_q4_K_vnni(LM_REPACK_ARGS);
void lm_repack_il_q5_K_vnni(LM_REPACK_ARGS);
void lm_repack_il_q6_K_vnni(LM_REPACK_ARGS);

#endif
