/* An image encoded on a thread of its own: lm_vision_encode can take a minute at real
 * projector sizes, and a server's streams should go on meanwhile. The job owns the
 * image and the rows; the caller polls (never blocks) and frees it when it is done. */
#include "error.h"
#include "lumen.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

struct lm_vision_job {
    pthread_t thread;
    lm_model *mmproj;
    lm_image *img;
    float *rows;
    int32_t n_rows, grid_x, grid_y;
    atomic_int state;       /* 0 running, 1 done, -1 failed */
    char msg[512];          /* the worker's lm_last_error(), for the caller's thread */
};

static void *run(void *arg) {
    lm_vision_job *j = arg;
    lm_status st = lm_vision_encode(j->mmproj, j->img, j->rows);
    if (st) snprintf(j->msg, sizeof j->msg, "%s", lm_last_error());
    atomic_store(&j->state, st ? -1 : 1);
    return NULL;
}

lm_vision_job *lm_vision_encode_start(lm_model *mmproj, lm_image *img) {
    if (!mmproj || !img) { lm_err("vision_encode_start: mmproj or image is NULL"); lm_image_free(img); return NULL; }
    lm_vision_info info;
    int32_t gx, gy;
    if (lm_vision_get_info(mmproj, &info) || lm_vision_grid(mmproj, img, &gx, &gy)) { lm_image_free(img); return NULL; }
    lm_vision_job *j = calloc(1, sizeof *j);
    const int64_t n = ((int64_t)gx * gy + 1) * info.tile_tokens;
    float *rows = j ? malloc((size_t)n * (size_t)info.proj_dim * sizeof(float)) : NULL;
    if (!rows) { free(j); lm_image_free(img); lm_err("vision_encode_start: out of memory for %lld rows", (long long)n); return NULL; }
    *j = (lm_vision_job){.mmproj = mmproj, .img = img, .rows = rows, .n_rows = (int32_t)n, .grid_x = gx, .grid_y = gy};
    atomic_init(&j->state, 0);
    int e = pthread_create(&j->thread, NULL, run, j);
    if (e) {
        free(rows); free(j); lm_image_free(img);
        lm_err("vision_encode_start: cannot start a thread (error %d)", e);
        return NULL;
    }
    return j;
}

int lm_vision_encode_poll(lm_vision_job *j) {
    if (!j) { lm_err("vision_encode_poll: job is NULL"); return -1; }
    int st = atomic_load(&j->state);
    if (st < 0) lm_err("%s", j->msg);
    return st;
}

const float *lm_vision_job_rows(const lm_vision_job *j, int32_t *n_rows, int32_t *grid_x, int32_t *grid_y) {
    if (!j || atomic_load(&((lm_vision_job *)j)->state) != 1) return NULL;
    if (n_rows) *n_rows = j->n_rows;
    if (grid_x) *grid_x = j->grid_x;
    if (grid_y) *grid_y = j->grid_y;
    return j->rows;
}

void lm_vision_job_free(lm_vision_job *j) {
    if (!j) return;
    pthread_join(j->thread, NULL);
    lm_image_free(j->img);
    free(j->rows);
    free(j);
}
