/* Decoded images (core/image.c) and llama.cpp's preprocessing of them
 * (core/image_prep.c). */
#ifndef LM_IMAGE_H
#define LM_IMAGE_H

#include "lumen.h"

#define LM_IMAGE_MAX_SIDE 16384
#define LM_IMAGE_MAX_PIXELS 100000000
#define LM_IMAGE_MAX_FILE (256 << 20)

struct lm_image {
    int32_t w, h;
    uint8_t *rgb;   /* h rows of w RGB pixels */
};

/* Pillow's resampling filters, as llama.cpp's mtmd-image.cpp runs them (fixed point, 22 bits). */
typedef enum { LM_RESIZE_BILINEAR = 0, LM_RESIZE_BICUBIC = 1, LM_RESIZE_LANCZOS = 2 } lm_resize_filter;
/* A new image of w x h; NULL + message on a bad size or out of memory. */
lm_image *lm_image_resize(const lm_image *src, int32_t w, int32_t h, lm_resize_filter filter);

/* idefics3 (SmolVLM): the image resized so its longest side is `longest` (the other side
 * rounded to even), then up to whole tiles of `tile`, cut into grid_x * grid_y tiles
 * (row-major), plus the whole refined image resized to one tile (the overview, last).
 * out (may be NULL: only the grid) receives the n = grid_x * grid_y + 1 tiles as
 * [n][3][tile][tile] floats, (v / 255 - mean[c]) / std[c]. */
lm_status lm_image_idefics3(const lm_image *img, int32_t tile, int32_t longest, const float mean[3],
                            const float std[3], lm_resize_filter filter, float *out, int32_t *grid_x,
                            int32_t *grid_y);

#endif
