/* SHA-256 as a stream, for code that hashes while it reads or writes (core/fetch.c
 * hashes a download as it arrives, so a 100 MB model is not read twice). */
#ifndef LM_SHA256_H
#define LM_SHA256_H
#include <stddef.h>
#include <stdint.h>

typedef struct lm_sha256_ctx { uint32_t h[8]; uint64_t len; uint8_t buf[64]; size_t n; } lm_sha256_ctx;

void lm_sha256_init(lm_sha256_ctx *c);
void lm_sha256_update(lm_sha256_ctx *c, const void *data, size_t n);
/* 64 lowercase hex digits + NUL into hex[65]; c is spent afterwards. */
void lm_sha256_final_hex(lm_sha256_ctx *c, char *hex);

#endif
