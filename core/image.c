/* Images: JPEG, PNG and WebP decoded by Debian's libraries (libjpeg-turbo,
 * libpng, libwebp) into 8-bit RGB, the way Pillow's Image.convert("RGB")
 * leaves them: alpha dropped (not composited), gray replicated, 16-bit
 * samples cut to their high byte, no gamma or orientation applied.
 *
 * Untrusted input: the format comes from the magic bytes (never the name),
 * the size from the header, checked against LM_IMAGE_MAX_SIDE and
 * LM_IMAGE_MAX_PIXELS before anything is allocated for the pixels; a file
 * that ends early is an error (libjpeg would fill the rest with gray). */
#include "image.h"
#include "error.h"

#include <stdio.h>   /* before jpeglib.h, which uses FILE */
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>

#include <errno.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void lm_image_free(lm_image *img) {
    if (!img) return;
    free(img->rgb);
    free(img);
}

int32_t lm_image_width(const lm_image *img) { return img ? img->w : 0; }
int32_t lm_image_height(const lm_image *img) { return img ? img->h : 0; }
const uint8_t *lm_image_rgb(const lm_image *img) { return img ? img->rgb : NULL; }

static lm_status check_size(const char *name, const char *fmt, int64_t w, int64_t h) {
    if (w <= 0 || h <= 0)
        return lm_err("%s: the %s image is %lldx%lld: an image needs at least one pixel", name, fmt, (long long)w, (long long)h);
    if (w > LM_IMAGE_MAX_SIDE || h > LM_IMAGE_MAX_SIDE || w * h > LM_IMAGE_MAX_PIXELS)
        return lm_err("%s: the %s image is %lldx%lld; lumen takes at most %d pixels a side and %d Mpixel "
                      "(refused from the header: a decompression bomb or an absurd size)",
                      name, fmt, (long long)w, (long long)h, LM_IMAGE_MAX_SIDE, LM_IMAGE_MAX_PIXELS / 1000000);
    return LM_OK;
}

static lm_image *new_image(int32_t w, int32_t h, const char *name) {
    lm_image *img = calloc(1, sizeof *img);
    if (img) img->rgb = malloc((size_t)w * (size_t)h * 3);
    if (!img || !img->rgb) {
        lm_image_free(img);
        lm_err("%s: out of memory for a %dx%d image", name, w, h);
        return NULL;
    }
    img->w = w;
    img->h = h;
    return img;
}

/* ---- JPEG (libjpeg-turbo) ------------------------------------------------------ */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    bool eof;
} jpeg_err;

static void jpeg_fail(j_common_ptr c) {
    jpeg_err *e = (jpeg_err *)c->err;
    c->err->format_message(c, e->msg);
    longjmp(e->jb, 1);
}

static void jpeg_note(j_common_ptr c, int level) {
    if (level >= 0) return;            /* trace messages */
    if (c->err->msg_code == JWRN_JPEG_EOF) ((jpeg_err *)c->err)->eof = true;
    c->err->num_warnings++;
}

static lm_image *decode_jpeg(const uint8_t *data, size_t len, const char *name) {
    struct jpeg_decompress_struct ci;
    jpeg_err je;
    lm_image *volatile img = NULL;
    memset(&je, 0, sizeof je);
    ci.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = jpeg_fail;
    je.pub.emit_message = jpeg_note;
    if (setjmp(je.jb)) {
        jpeg_destroy_decompress(&ci);
        lm_image_free(img);
        lm_err("%s: not a readable JPEG: %s", name, je.msg);
        return NULL;
    }
    jpeg_create_decompress(&ci);
    jpeg_mem_src(&ci, data, (unsigned long)len);
    jpeg_read_header(&ci, TRUE);
    if (check_size(name, "JPEG", ci.image_width, ci.image_height)) { jpeg_destroy_decompress(&ci); return NULL; }
    ci.out_color_space = JCS_RGB;
    jpeg_start_decompress(&ci);
    if (ci.output_components != 3) {
        jpeg_destroy_decompress(&ci);
        lm_err("%s: the JPEG decodes to %d channels, not RGB", name, ci.output_components);
        return NULL;
    }
    img = new_image((int32_t)ci.output_width, (int32_t)ci.output_height, name);
    if (!img) { jpeg_destroy_decompress(&ci); return NULL; }
    while (ci.output_scanline < ci.output_height && !je.eof) {
        JSAMPROW row = img->rgb + (size_t)ci.output_scanline * img->w * 3;
        jpeg_read_scanlines(&ci, &row, 1);
    }
    if (!je.eof) jpeg_finish_decompress(&ci);
    jpeg_destroy_decompress(&ci);
    if (je.eof) {
        lm_image_free(img);
        lm_err("%s: the JPEG is truncated (the data ends before the image does)", name);
        return NULL;
    }
    return img;
}

/* ---- PNG (libpng) ------------------------------------------------------------- */

typedef struct { const uint8_t *p; size_t n, off; char msg[200]; } png_src;

static void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
    png_src *s = png_get_io_ptr(png);
    if (n > s->n - s->off) png_error(png, "the file is truncated");
    memcpy(out, s->p + s->off, n);
    s->off += n;
}

static void png_fail(png_structp png, png_const_charp msg) {
    png_src *s = png_get_error_ptr(png);
    snprintf(s->msg, sizeof s->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_quiet(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static lm_image *decode_png(const uint8_t *data, size_t len, const char *name) {
    /* the size from IHDR first: libpng would call a 0x0 image just "Invalid IHDR data" */
    if (len >= 24 && memcmp(data + 12, "IHDR", 4) == 0) {
        const uint8_t *d = data + 16;
        int64_t w = (int64_t)d[0] << 24 | d[1] << 16 | d[2] << 8 | d[3];
        int64_t h = (int64_t)d[4] << 24 | d[5] << 16 | d[6] << 8 | d[7];
        if (check_size(name, "PNG", w, h)) return NULL;
    }
    png_src src = {.p = data, .n = len};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_fail, png_quiet);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    lm_image *volatile img = NULL;
    png_bytep *volatile rows = NULL;
    if (!info) {
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        lm_err("%s: out of memory", name);
        return NULL;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        lm_image_free(img);
        free(rows);
        lm_err("%s: not a readable PNG: %s", name, src.msg);
        return NULL;
    }
    png_set_read_fn(png, &src, png_read_mem);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);   /* our own limits, with our own message */
    png_set_chunk_malloc_max(png, 16u << 20);             /* text/ICC chunks: no huge allocations */
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, color;
    png_get_IHDR(png, info, &w, &h, &depth, &color, NULL, NULL, NULL);
    if (check_size(name, "PNG", w, h)) { png_destroy_read_struct(&png, &info, NULL); return NULL; }
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) png_set_strip_16(png);
    png_set_strip_alpha(png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_channels(png, info) != 3 || png_get_rowbytes(png, info) != (size_t)w * 3) {
        png_destroy_read_struct(&png, &info, NULL);
        lm_err("%s: the PNG does not convert to 8-bit RGB", name);
        return NULL;
    }
    img = new_image((int32_t)w, (int32_t)h, name);
    rows = img ? malloc(h * sizeof *rows) : NULL;
    if (!rows) {
        png_destroy_read_struct(&png, &info, NULL);
        lm_image_free(img);
        if (img) lm_err("%s: out of memory", name);
        return NULL;
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = img->rgb + (size_t)y * w * 3;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    return img;
}

/* ---- WebP (libwebp) ------------------------------------------------------------- */

static lm_image *decode_webp(const uint8_t *data, size_t len, const char *name) {
    int w = 0, h = 0;
    if (!WebPGetInfo(data, len, &w, &h)) { lm_err("%s: not a readable WebP image (bad or truncated header)", name); return NULL; }
    if (check_size(name, "WebP", w, h)) return NULL;
    lm_image *img = new_image(w, h, name);
    if (!img) return NULL;
    if (!WebPDecodeRGBInto(data, len, img->rgb, (size_t)w * h * 3, w * 3)) {
        lm_image_free(img);
        lm_err("%s: the WebP image cannot be decoded (truncated, corrupt or animated)", name);
        return NULL;
    }
    return img;
}

lm_image *lm_image_decode(const void *data, size_t len, const char *name) {
    if (!name) name = "image";
    if (!data && len) { lm_err("%s: data is NULL", name); return NULL; }
    const uint8_t *p = data;
    if (len >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) return decode_jpeg(p, len, name);
    if (len >= 8 && !memcmp(p, "\x89PNG\r\n\x1a\n", 8)) return decode_png(p, len, name);
    if (len >= 12 && !memcmp(p, "RIFF", 4) && !memcmp(p + 8, "WEBP", 4)) return decode_webp(p, len, name);
    lm_err("%s: not an image lumen reads (JPEG, PNG or WebP, told apart by their first bytes; %s)", name,
           len == 0 ? "the file is empty" : "these are none of them");
    return NULL;
}

lm_image *lm_image_load(const char *path) {
    if (!path) { lm_err("image: path is NULL"); return NULL; }
    FILE *f = fopen(path, "rb");
    if (!f) { lm_err("%s: cannot open: %s", path, strerror(errno)); return NULL; }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        lm_err("%s: not a regular file", path);
        return NULL;
    }
    if (st.st_size > LM_IMAGE_MAX_FILE) {
        fclose(f);
        lm_err("%s: the file has %lld bytes; lumen reads images of at most %d MiB", path, (long long)st.st_size,
               LM_IMAGE_MAX_FILE >> 20);
        return NULL;
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) { fclose(f); lm_err("%s: out of memory", path); return NULL; }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) { free(buf); lm_err("%s: read %zu of %zu bytes", path, got, n); return NULL; }
    lm_image *img = lm_image_decode(buf, n, path);
    free(buf);
    return img;
}
