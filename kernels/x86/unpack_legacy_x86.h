/* One block of a legacy format as 32 unsigned bytes, for vpdpbusd: the VNNI
 * tiles (quant_legacy_avx512.c) and panels (panel_avx512.c) share these. The
 * signed formats come shifted up by their bias (Q8_0: q + 128, one xor; Q5_0:
 * q + 16, the fifth bit from one masked move; Q4_0: q + 8, the nibble as is).
 * Needs AVX-512 BW + VL. */
#ifndef LM_UNPACK_LEGACY_X86_H
#define LM_UNPACK_LEGACY_X86_H

#include "quant_legacy.h"

#include <immintrin.h>
#include <string.h>

/* 16 bytes of nibble pairs -> 32 bytes: the low nibbles, then the high */
static inline __m256i nibbles(const uint8_t *qs) {
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

static inline __m256i unpack_q8_0(const char *x) {
    return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)((const block_q8_0 *)x)->qs), _mm256_set1_epi8((char)0x80));
}

static inline __m256i unpack_q5_0(const char *x) {
    const block_q5_0 *b = (const block_q5_0 *)x;
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    return _mm256_or_si256(nibbles(b->qs), _mm256_maskz_mov_epi8((__mmask32)qh, _mm256_set1_epi8(16)));
}

/* Q5_1: unsigned already (0..31), no shift */
static inline __m256i unpack_q5_1(const char *x) {
    const block_q5_1 *b = (const block_q5_1 *)x;
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    return _mm256_or_si256(nibbles(b->qs), _mm256_maskz_mov_epi8((__mmask32)qh, _mm256_set1_epi8(16)));
}

static inline __m256i unpack_q4_0(const char *x) { return nibbles(((const block_q4_0 *)x)->qs); }
static inline __m256i unpack_q4_1(const char *x) { return nibbles(((const block_q4_1 *)x)->qs); }

#endif
