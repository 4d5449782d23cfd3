/* Image decoding on untrusted bytes (runs under ASan too: ctest -L asan): small
 * JPEG, PNG (RGBA, grayscale) and WebP fixtures decode to Pillow's RGB pixels
 * (spec/fixtures/vision/, sha256 of Pillow 12's convert("RGB")), and every
 * prefix of each file and thousands of corrupted copies either decode or fail
 * with a message naming the file; never a crash, a leak or a read out of bounds.
 * Also the Pillow-compatible resize on a known case. */
#include "testutil.h"
#include "image.h"
#include "lumen.h"

#include <stdlib.h>
#include <string.h>

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

static const struct { const char *file, *sha; int w, h; } cases[] = {
    {"spec/fixtures/vision/chelsea_40x27.jpg", "84ae847f4121c7921908d384397511f916d2f3cd7cfd46002a2a026cdd83cce3", 40, 27},
    {"spec/fixtures/vision/chelsea_40x27_rgba.png", "dd4963e41fd9d1728661bbc2299cfd67bcb96dcf3a4e35c1aed8ae8c6feadc54", 40, 27},
    {"spec/fixtures/vision/chelsea_40x27_gray.png", "80d9f7cbd00795320f92028beb3fccd80e50bd0e0dbdad403bad9e0b739d2e83", 40, 27},
    {"spec/fixtures/vision/chelsea_120x80.webp", "be6cf4ec329541fbdc60bcb83e333d7c3711e8a0f5910b9ba71f1c7cd290a6ee", 120, 80},
};

int main(void) {
    uint64_t rng = 42;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n;
        unsigned char *data = slurp(tu_path(cases[c].file), &n);
        CHECK(data != NULL, "cannot read %s", cases[c].file);
        if (!data) continue;
        lm_image *img = lm_image_decode(data, n, cases[c].file);
        CHECK(img != NULL, "%s: %s", cases[c].file, lm_last_error());
        if (img) {
            char hex[65];
            lm_sha256_hex(lm_image_rgb(img), (size_t)lm_image_width(img) * lm_image_height(img) * 3, hex);
            CHECK(lm_image_width(img) == cases[c].w && lm_image_height(img) == cases[c].h, "%s: %dx%d", cases[c].file,
                  lm_image_width(img), lm_image_height(img));
            CHECK(!strcmp(hex, cases[c].sha), "%s: pixels differ from Pillow's (%s)", cases[c].file, hex);
            lm_image_free(img);
        }
        /* every prefix: decodes (a format that tolerates it) or fails naming the file */
        int refused = 0;
        for (size_t len = 0; len < n; len++) {
            unsigned char *cut = malloc(len ? len : 1);   /* exact size: ASan sees any overread */
            memcpy(cut, data, len);
            lm_image *p = lm_image_decode(cut, len, "cut");
            if (!p) {
                refused++;
                if (strncmp(lm_last_error(), "cut: ", 5)) CHECK(0, "%s at %zu: message '%s'", cases[c].file, len, lm_last_error());
            }
            lm_image_free(p);
            free(cut);
        }
        CHECK(refused >= (int)n * 9 / 10, "%s: only %d of %zu prefixes refused", cases[c].file, refused, n);
        /* corrupted copies: a few bytes changed anywhere */
        unsigned char *bad = malloc(n);
        for (int k = 0; k < 1500; k++) {
            memcpy(bad, data, n);
            for (int j = 0; j < 1 + (int)(tu_rand(&rng) % 4); j++) bad[tu_rand(&rng) % n] = (unsigned char)tu_rand(&rng);
            lm_image_free(lm_image_decode(bad, n, "bad"));
        }
        free(bad);
        free(data);
    }

    /* Pillow's bilinear on a 4x1 ramp to 2x1 (Pillow 12: Image.resize((2, 1), BILINEAR) gives 46, 146) */
    uint8_t px[12] = {0, 0, 0, 64, 64, 64, 128, 128, 128, 192, 192, 192};
    lm_image src = {.w = 4, .h = 1, .rgb = px};
    lm_image *r = lm_image_resize(&src, 2, 1, LM_RESIZE_BILINEAR);
    CHECK(r && r->rgb[0] == 46 && r->rgb[3] == 146, "bilinear ramp: %d %d", r ? r->rgb[0] : -1, r ? r->rgb[3] : -1);
    lm_image_free(r);
    CHECK(lm_image_resize(&src, 0, 1, LM_RESIZE_LANCZOS) == NULL, "a 0-wide target is refused");
    return tu_finish("image");
}
