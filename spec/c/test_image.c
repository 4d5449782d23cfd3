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

    /* base64 (images arrive as data: URLs): every length round-trips through the encoder,
     * into buffers of the exact size (ASan sees any overrun); random text never crashes */
    for (int n = 0; n <= 64; n++) {
        unsigned char raw[64], *back = malloc(n ? (size_t)n : 1);
        for (int i = 0; i < n; i++) raw[i] = (unsigned char)tu_rand(&rng);
        char *b64 = malloc((size_t)(n + 2) / 3 * 4 + 1);
        int64_t k = lm_base64_encode(raw, n, b64, (n + 2) / 3 * 4);
        CHECK(lm_base64_decode(b64, k, back, n ? n - 1 : 0) == (n ? -n : 0), "base64 length %d: a short buffer asks for %d", n, n);
        CHECK(lm_base64_decode(b64, k, back, n) == n && !memcmp(raw, back, (size_t)n), "base64 length %d round trip", n);
        while (k > 0 && b64[k - 1] == '=') k--;
        CHECK(lm_base64_decode(b64, k, back, n) == n && !memcmp(raw, back, (size_t)n), "base64 length %d unpadded", n);
        free(b64);
        free(back);
    }
    static const char alphabet[] = "AZaz09+/=-_ \n\x80";
    unsigned char junk[40], out[40];
    for (int t = 0; t < 20000; t++) {
        int n = (int)(tu_rand(&rng) % 40);
        for (int i = 0; i < n; i++) junk[i] = (unsigned char)alphabet[tu_rand(&rng) % (sizeof alphabet - 1)];
        int64_t k = lm_base64_decode((const char *)junk, n, out, sizeof out);
        CHECK(k == INT64_MIN ? strncmp(lm_last_error(), "base64: ", 8) == 0 : k >= 0 && k <= n * 3 / 4,
              "base64 junk of %d: %lld '%s'", n, (long long)k, lm_last_error());
    }
    CHECK(lm_base64_decode("aGVs*G8=", 8, out, sizeof out) == INT64_MIN && strstr(lm_last_error(), "'*' at offset 4"),
          "a bad character is named: %s", lm_last_error());

    /* an image encoded on a thread of its own gives the rows of lm_vision_encode, bit for bit
     * (the tiny projector from bench/vision/make_mmproj.py, which scripts/test.sh writes) */
    char mm[1024];
    const char *dir = getenv("LUMEN_MODELS");
    snprintf(mm, sizeof mm, "%s%s/vision-tiny-mmproj.gguf", dir ? dir : getenv("HOME"), dir ? "" : "/.cache/lumen/models");
    lm_model_params mp = {.n_threads = 2};
    lm_model *proj = lm_model_load(mm, &mp);
    CHECK(proj != NULL, "%s: %s (run bench/.venv-embed/bin/python bench/vision/make_mmproj.py)", mm, lm_last_error());
    size_t n;
    unsigned char *jpg = slurp(tu_path("spec/fixtures/vision/chelsea_40x27.jpg"), &n);
    if (proj && jpg) {
        lm_vision_info vi;
        int32_t gx, gy;
        lm_image *img = lm_image_decode(jpg, n, "chelsea");
        CHECK(lm_vision_get_info(proj, &vi) == LM_OK && lm_vision_grid(proj, img, &gx, &gy) == LM_OK, "info: %s", lm_last_error());
        const int32_t rows = (gx * gy + 1) * vi.tile_tokens;
        float *want = malloc((size_t)rows * vi.proj_dim * sizeof(float));
        CHECK(lm_vision_encode(proj, img, want) == LM_OK, "encode: %s", lm_last_error());
        lm_vision_job *jobs[3];
        for (int j = 0; j < 3; j++) jobs[j] = lm_vision_encode_start(proj, lm_image_decode(jpg, n, "chelsea"));   /* at once */
        for (int j = 0; j < 3; j++) {
            CHECK(jobs[j] != NULL, "start: %s", lm_last_error());
            if (!jobs[j]) continue;
            int st;
            while ((st = lm_vision_encode_poll(jobs[j])) == 0) {}
            int32_t got, jx, jy;
            const float *r = lm_vision_job_rows(jobs[j], &got, &jx, &jy);
            CHECK(st == 1 && r && got == rows && jx == gx && jy == gy, "job %d: state %d, %d rows", j, st, got);
            CHECK(r && !memcmp(r, want, (size_t)rows * vi.proj_dim * sizeof(float)), "job %d: rows differ from lm_vision_encode's", j);
        }
        lm_vision_job_free(jobs[2]);   /* in any order, also before the others are polled */
        lm_vision_job_free(jobs[0]);
        lm_vision_job_free(jobs[1]);
        lm_vision_job *unpolled = lm_vision_encode_start(proj, lm_image_decode(jpg, n, "chelsea"));
        lm_vision_job_free(unpolled);   /* freed while running: waits for the thread */
        CHECK(lm_vision_encode_start(proj, NULL) == NULL, "no image: refused");
        free(want);
        lm_image_free(img);
    }
    free(jpg);
    lm_model_free(proj);
    return tu_finish("image");
}
