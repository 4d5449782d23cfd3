#include "testutil.h"
#include <stdlib.h>

int tu_failures, tu_checks;

int tu_finish(const char *suite) {
    printf("%s: %d passed, %d failed\n", suite, tu_checks - tu_failures, tu_failures);
    return tu_failures ? 1 : 0;
}

uint64_t tu_rand(uint64_t *s) {
    uint64_t x = *s += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

float tu_randf(uint64_t *s, float lo, float hi) {
    return lo + (hi - lo) * (float)((tu_rand(s) >> 40) * (1.0 / 16777216.0));
}

const char *tu_path(const char *rel) {
    static char buf[4096];
    const char *root = getenv("LUMEN_ROOT");
    snprintf(buf, sizeof buf, "%s/%s", root ? root : ".", rel);
    return buf;
}
