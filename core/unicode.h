/* Unicode code point categories and UTF-8 decoding, as the tokenizers need them
 * (the same flags as llama.cpp's tables). */
#ifndef LM_UNICODE_H
#define LM_UNICODE_H
#include <stddef.h>
#include <stdint.h>

enum {
    LM_U_UNDEFINED = 0x01, LM_U_NUMBER = 0x02, LM_U_LETTER = 0x04, LM_U_SEPARATOR = 0x08,
    LM_U_MARK = 0x10, LM_U_PUNCT = 0x20, LM_U_SYMBOL = 0x40, LM_U_CONTROL = 0x80,
    LM_U_WHITESPACE = 0x100,
};

typedef struct { uint32_t start; uint16_t flags; } lm_ucd_range;
extern const lm_ucd_range lm_ucd_ranges[];
extern const int lm_ucd_n_ranges;

/* Flags of a code point (LM_U_UNDEFINED beyond U+10FFFF). */
unsigned lm_unicode_flags(uint32_t cp);
/* Decodes one code point at s[*i] (n bytes in all) and advances *i. An invalid
 * sequence yields U+FFFD and advances one byte, as llama.cpp does. */
uint32_t lm_utf8_decode(const char *s, size_t n, size_t *i);
/* Encodes cp; returns the byte count (1..4). */
int lm_utf8_encode(uint32_t cp, char *out);
/* ASCII-range lowercase (what the contraction rules need). */
uint32_t lm_unicode_tolower(uint32_t cp);

#endif
