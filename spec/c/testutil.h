/* Minimal test helpers for the C tests: CHECK records a failure and goes on,
 * the process exit code tells ctest. */
#ifndef LM_TESTUTIL_H
#define LM_TESTUTIL_H
#include <stdio.h>
#include <stdint.h>

extern int tu_failures, tu_checks;
#define CHECK(cond, ...) do { tu_checks++; if (!(cond)) { tu_failures++; \
    fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)
/* Prints "N passed, N failed" and returns the exit status for main(). */
int tu_finish(const char *suite);
/* Deterministic RNG for tests. */
uint64_t tu_rand(uint64_t *state);
float tu_randf(uint64_t *state, float lo, float hi);
/* Path under the repo root (LUMEN_ROOT or "."), in a static buffer. */
const char *tu_path(const char *rel);
#endif
