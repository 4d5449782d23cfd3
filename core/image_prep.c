/* Image preprocessing as llama.cpp's tools/mtmd/mtmd-image.cpp does it, so the
 * same image gives the same pixels: Pillow's separable resampling (weights in
 * double, normalized, then fixed point with 22 fractional bits; a horizontal
 * pass into 8 bits, then a vertical one), and idefics3's tiling. */
#include "image.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS (32 - 8 - 2)

static double filter_support(lm_resize_filter f) {
    return f == LM_RESIZE_BILINEAR ? 1.0 : f == LM_RESIZE_BICUBIC ? 2.0 : 3.0;
}

static double sinc(double v) {
    if (v == 0.0) return 1.0;
    const double pv = v * 3.141592653589793238462643383279502884;
    return sin(pv) / pv;
}

static double filter_weight(lm_resize_filter f, double x) {
    if (f == LM_RESIZE_LANCZOS) return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0;
    if (x < 0.0) x = -x;
    if (f == LM_RESIZE_BILINEAR) return x < 1.0 ? 1.0 - x : 0.0;
    const double a = -0.5;   /* Pillow's bicubic */
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static uint8_t clip8(int32_t v) { return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v; }

/* For each output pixel: the first input pixel, how many, and their weights (ksize apart). */
typedef struct { int ksize; int *bounds; int32_t *w; } coeffs;

static bool precompute(int in, int out, lm_resize_filter f, coeffs *c) {
    double scale = (double)in / out, filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = filter_support(f) * filterscale;
    c->ksize = (int)ceil(support) * 2 + 1;
    double *pre = malloc((size_t)out * c->ksize * sizeof *pre);
    c->bounds = malloc((size_t)out * 2 * sizeof *c->bounds);
    c->w = malloc((size_t)out * c->ksize * sizeof *c->w);
    if (!pre || !c->bounds || !c->w) { free(pre); return false; }
    for (int xx = 0; xx < out; xx++) {
        const double center = (xx + 0.5) * scale, ss = 1.0 / filterscale;
        double ww = 0.0;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in) xmax = in;
        xmax -= xmin;
        double *k = pre + (size_t)xx * c->ksize;
        int x = 0;
        for (; x < xmax; x++) { k[x] = filter_weight(f, (x + xmin - center + 0.5) * ss); ww += k[x]; }
        for (x = 0; x < xmax; x++) if (ww != 0.0) k[x] /= ww;
        for (; x < c->ksize; x++) k[x] = 0;
        c->bounds[xx * 2] = xmin;
        c->bounds[xx * 2 + 1] = xmax;
    }
    const double fxp = ldexp(1.0, PRECISION_BITS);
    for (size_t i = 0; i < (size_t)out * c->ksize; i++)
        c->w[i] = (int32_t)(pre[i] * fxp + (pre[i] < 0 ? -0.5 : 0.5));  /* Pillow: +-0.5 then truncate */
    free(pre);
    return true;
}

static void horizontal(const uint8_t *src, int in_nx, int ny, uint8_t *dst, int out_nx, const coeffs *c) {
    for (int y = 0; y < ny; y++) {
        const uint8_t *row = src + (size_t)y * in_nx * 3;
        uint8_t *o = dst + (size_t)y * out_nx * 3;
        for (int xx = 0; xx < out_nx; xx++) {
            const int xmin = c->bounds[xx * 2], xcnt = c->bounds[xx * 2 + 1];
            const int32_t *k = c->w + (size_t)xx * c->ksize;
            const uint8_t *p = row + (size_t)xmin * 3;
            int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < xcnt; x++, p += 3) { s0 += p[0] * k[x]; s1 += p[1] * k[x]; s2 += p[2] * k[x]; }
            o[xx * 3] = clip8(s0 >> PRECISION_BITS);
            o[xx * 3 + 1] = clip8(s1 >> PRECISION_BITS);
            o[xx * 3 + 2] = clip8(s2 >> PRECISION_BITS);
        }
    }
}

static bool vertical(const uint8_t *src, int nx, uint8_t *dst, int out_ny, const coeffs *c) {
    const size_t row = (size_t)nx * 3;
    int32_t *acc = malloc(row * sizeof *acc);
    if (!acc) return false;
    for (int yy = 0; yy < out_ny; yy++) {
        const int ymin = c->bounds[yy * 2], ycnt = c->bounds[yy * 2 + 1];
        const int32_t *k = c->w + (size_t)yy * c->ksize;
        for (size_t i = 0; i < row; i++) acc[i] = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < ycnt; y++) {
            const uint8_t *s = src + (size_t)(ymin + y) * row;
            const int32_t w = k[y];
            for (size_t i = 0; i < row; i++) acc[i] += s[i] * w;
        }
        uint8_t *o = dst + (size_t)yy * row;
        for (size_t i = 0; i < row; i++) o[i] = clip8(acc[i] >> PRECISION_BITS);
    }
    free(acc);
    return true;
}

lm_image *lm_image_resize(const lm_image *src, int32_t w, int32_t h, lm_resize_filter filter) {
    if (w <= 0 || h <= 0 || w > 65536 || h > 65536) { lm_err("resize: target %dx%d is out of range", w, h); return NULL; }
    lm_image *dst = calloc(1, sizeof *dst);
    if (dst) dst->rgb = malloc((size_t)w * h * 3);
    if (!dst || !dst->rgb) { lm_image_free(dst); lm_err("resize: out of memory for %dx%d", w, h); return NULL; }
    dst->w = w;
    dst->h = h;
    const bool need_h = w != src->w, need_v = h != src->h;
    coeffs ch = {0}, cv = {0};
    uint8_t *tmp = NULL;
    bool ok = (!need_h || precompute(src->w, w, filter, &ch)) && (!need_v || precompute(src->h, h, filter, &cv));
    if (ok) {
        if (need_h && need_v) {
            ok = (tmp = malloc((size_t)w * src->h * 3)) != NULL;
            if (ok) { horizontal(src->rgb, src->w, src->h, tmp, w, &ch); ok = vertical(tmp, w, dst->rgb, h, &cv); }
        } else if (need_h) {
            horizontal(src->rgb, src->w, src->h, dst->rgb, w, &ch);
        } else if (need_v) {
            ok = vertical(src->rgb, src->w, dst->rgb, h, &cv);
        } else {
            memcpy(dst->rgb, src->rgb, (size_t)w * h * 3);
        }
    }
    free(tmp);
    free(ch.bounds); free(ch.w); free(cv.bounds); free(cv.w);
    if (!ok) { lm_image_free(dst); lm_err("resize: out of memory for %dx%d", w, h); return NULL; }
    return dst;
}

/* One tile of `img` at (x0, y0), normalized, planar. */
static void put_tile(const lm_image *img, int32_t x0, int32_t y0, int32_t tile, const float mean[3], const float std[3],
                     float *out) {
    for (int c = 0; c < 3; c++)
        for (int32_t y = 0; y < tile; y++) {
            const uint8_t *p = img->rgb + ((size_t)(y0 + y) * img->w + x0) * 3 + c;
            float *o = out + ((size_t)c * tile + y) * tile;
            for (int32_t x = 0; x < tile; x++) o[x] = ((float)p[(size_t)x * 3] / 255.0f - mean[c]) / std[c];
        }
}

lm_status lm_image_idefics3(const lm_image *img, int32_t tile, int32_t longest, const float mean[3],
                            const float std[3], lm_resize_filter filter, float *out, int32_t *grid_x,
                            int32_t *grid_y) {
    if (!img || tile <= 0 || longest <= 0) return lm_err("image: bad preprocessing arguments");
    /* longest side to `longest`, the other by the aspect ratio, rounded up to even */
    const double aspect = (double)img->w / img->h;
    int32_t rw, rh;
    if (img->w >= img->h) { rw = longest; rh = (int32_t)(longest / aspect); rh += rh % 2; }
    else { rh = longest; rw = (int32_t)(longest * aspect); rw += rw % 2; }
    if (rw <= 0 || rh <= 0)
        return lm_err("image: %dx%d is too narrow to preprocess (it would be %dx%d at %d pixels on the long side)",
                      img->w, img->h, rw, rh, longest);
    const int32_t gx = (rw + tile - 1) / tile, gy = (rh + tile - 1) / tile;
    *grid_x = gx;
    *grid_y = gy;
    if (!out) return LM_OK;
    lm_image *resized = lm_image_resize(img, rw, rh, filter);
    lm_image *refined = resized ? lm_image_resize(resized, gx * tile, gy * tile, filter) : NULL;
    lm_image *overview = refined ? lm_image_resize(refined, tile, tile, filter) : NULL;
    lm_status st = overview ? LM_OK : LM_ERR;
    const size_t per = (size_t)3 * tile * tile;
    if (st == LM_OK) {
        for (int32_t y = 0; y < gy; y++)
            for (int32_t x = 0; x < gx; x++)
                put_tile(refined, x * tile, y * tile, tile, mean, std, out + (size_t)(y * gx + x) * per);
        put_tile(overview, 0, 0, tile, mean, std, out + (size_t)gx * gy * per);
    }
    lm_image_free(resized);
    lm_image_free(refined);
    lm_image_free(overview);
    return st;
}
