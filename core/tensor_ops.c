/* Tensor math (the "Tensor math" block of lumen.h): elementwise ops with
 * trailing-dims broadcasting, softmax, argmax, top-k, dot/cosine on F32 views of
 * any strides, and matmul through oneDNN.
 *
 * Everything walks a tensor by rows (innermost runs): a row is located from its
 * flat index, then processed with a contiguous fast path or a strided loop.
 * Results are new contiguous F32 tensors. */
#include "tensor.h"
#include "model.h"
#include "error.h"
#include "ops.h"
#include "quant.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

/* ---- helpers ---------------------------------------------------------------- */

/* "[2, 3]" into buf. */
static const char *shape_str(const lm_tensor *t, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

/* Checks that t is a non-NULL F32 tensor; sets the message otherwise. */
static bool need_f32(const char *op, const char *which, const lm_tensor *t) {
    if (!t) { lm_err("%s: %s is NULL", op, which); return false; }
    if (t->dtype != LM_F32) {
        const char *name = lm_dtype_name(t->dtype);
        lm_err("%s: dtype %s not supported here (convert with :float())", op, name ? name : "?");
        return false;
    }
    return true;
}

static int64_t n_rows(const lm_tensor *t) {
    int64_t r = 1;
    for (int d = 0; d < t->ndim - 1; d++) r *= t->shape[d];
    return r;
}

/* Start of row r (flat index over all but the innermost dimension). */
static const char *row_ptr(const lm_tensor *t, int64_t r) {
    const char *p = t->data;
    for (int d = t->ndim - 2; d >= 0; d--) {
        p += (r % t->shape[d]) * t->stride[d];
        r /= t->shape[d];
    }
    return p;
}

static int64_t inner_stride(const lm_tensor *t) { return t->stride[t->ndim - 1]; }

/* ---- elementwise ------------------------------------------------------------- */

/* y[i] = a[i] OP b[i] over n elements; a and b advance by byte strides sa and sb
 * (sb == 0 repeats one value). */
#define ROW_LOOP(OP) do { \
    if (sa == 4 && sb == 4) { \
        const float *restrict x = (const float *)a, *restrict z = (const float *)b; \
        for (int64_t i = 0; i < n; i++) y[i] = x[i] OP z[i]; \
    } else if (sa == 4 && sb == 0) { \
        const float *restrict x = (const float *)a; const float z = *(const float *)b; \
        for (int64_t i = 0; i < n; i++) y[i] = x[i] OP z; \
    } else { \
        for (int64_t i = 0; i < n; i++) \
            y[i] = *(const float *)(a + i * sa) OP *(const float *)(b + i * sb); \
    } \
} while (0)

static void binop_row(int op, float *restrict y, const char *a, int64_t sa, const char *b,
                      int64_t sb, int64_t n) {
    switch (op) {
    case LM_OP_ADD: ROW_LOOP(+); break;
    case LM_OP_SUB: ROW_LOOP(-); break;
    case LM_OP_MUL: ROW_LOOP(*); break;
    default:        ROW_LOOP(/); break;
    }
}

static const char *const g_op_names[] = {"add", "sub", "mul", "div"};

/* Does b broadcast against a? b is one element, or its shape (leading 1s
 * ignored) equals a's trailing dimensions. */
static bool broadcasts(const lm_tensor *a, const lm_tensor *b) {
    if (lm_tensor_numel(b) == 1) return true;
    int lead = 0;
    while (lead < b->ndim - 1 && b->shape[lead] == 1) lead++;
    int nb = b->ndim - lead;
    if (nb > a->ndim) return false;
    for (int i = 0; i < nb; i++)
        if (b->shape[lead + i] != a->shape[a->ndim - nb + i]) return false;
    return true;
}

/* out = a OP b (b broadcast), out contiguous with a's shape. */
static void binary_into(int op, lm_tensor *out, const lm_tensor *a, const lm_tensor *b) {
    int64_t n = a->shape[a->ndim - 1], rows = n_rows(a);
    float *y = (float *)out->data;
    int64_t sa = inner_stride(a);
    if (lm_tensor_numel(b) == 1) {
        const char *bv = b->data;
        if (lm_tensor_is_contiguous(a)) { binop_row(op, y, a->data, 4, bv, 0, lm_tensor_numel(a)); return; }
        for (int64_t r = 0; r < rows; r++) binop_row(op, y + r * n, row_ptr(a, r), sa, bv, 0, n);
        return;
    }
    if (lm_tensor_is_contiguous(a) && lm_tensor_is_contiguous(b) && lm_tensor_numel(a) == lm_tensor_numel(b)) {
        binop_row(op, y, a->data, 4, b->data, 4, lm_tensor_numel(a));
        return;
    }
    /* b's rows are a's trailing rows, so a's row r pairs with b's row r mod rows(b) */
    int64_t b_rows = n_rows(b), sb = inner_stride(b);
    for (int64_t r = 0; r < rows; r++)
        binop_row(op, y + r * n, row_ptr(a, r), sa, row_ptr(b, r % b_rows), sb, n);
}

lm_tensor *lm_tensor_binary(int op, const lm_tensor *a, const lm_tensor *b) {
    if (op < LM_OP_ADD || op > LM_OP_DIV) { lm_err("tensor binary: unknown op %d", op); return NULL; }
    const char *name = g_op_names[op];
    if (!need_f32(name, "a", a) || !need_f32(name, "b", b)) return NULL;
    if (!broadcasts(a, b)) {
        char sa[96], sb[96];
        lm_err("%s: shapes %s and %s do not broadcast", name, shape_str(a, sa, sizeof sa), shape_str(b, sb, sizeof sb));
        return NULL;
    }
    lm_tensor *out = lm_tensor_new(LM_F32, a->ndim, a->shape);
    if (!out) return NULL;
    if (lm_tensor_numel(out) > 0) binary_into(op, out, a, b);
    return out;
}

lm_tensor *lm_tensor_scale(const lm_tensor *a, float s) {
    if (!need_f32("scale", "a", a)) return NULL;
    lm_tensor *out = lm_tensor_new(LM_F32, a->ndim, a->shape);
    if (!out) return NULL;
    if (lm_tensor_numel(out) == 0) return out;
    int64_t n = a->shape[a->ndim - 1], rows = n_rows(a);
    float *y = (float *)out->data;
    if (lm_tensor_is_contiguous(a)) { binop_row(LM_OP_MUL, y, a->data, 4, (const char *)&s, 0, lm_tensor_numel(a)); return out; }
    for (int64_t r = 0; r < rows; r++)
        binop_row(LM_OP_MUL, y + r * n, row_ptr(a, r), inner_stride(a), (const char *)&s, 0, n);
    return out;
}

lm_tensor *lm_tensor_softmax(const lm_tensor *a) {
    if (!need_f32("softmax", "a", a)) return NULL;
    lm_tensor *out = lm_tensor_copy(a, LM_F32);  /* contiguous: each row is then in place */
    if (!out) return NULL;
    int64_t n = a->shape[a->ndim - 1], rows = n_rows(a);
    if (n == 0) return out;
    for (int64_t r = 0; r < rows; r++) lm_softmax((float *)out->data + r * n, n);
    return out;
}

/* ---- reductions ----------------------------------------------------------------- */

int64_t lm_tensor_argmax(const lm_tensor *a) {
    if (!need_f32("argmax", "a", a)) return -1;
    if (lm_tensor_numel(a) == 0) { lm_err("argmax: tensor is empty"); return -1; }
    int64_t n = a->shape[a->ndim - 1], rows = n_rows(a), s = inner_stride(a);
    int64_t best = -1;
    float bv = 0;
    for (int64_t r = 0; r < rows; r++) {
        const char *p = row_ptr(a, r);
        for (int64_t i = 0; i < n; i++) {
            float v = *(const float *)(p + i * s);
            if (best < 0 ? !isnan(v) : v > bv) { best = r * n + i; bv = v; }
        }
    }
    return best < 0 ? 0 : best;  /* all NaN: the first element */
}

/* Order for top-k: is (va, ia) ranked below (vb, ib)? NaN ranks lowest; ties go
 * to the lower index so results are deterministic. */
static bool ranks_below(float va, int64_t ia, float vb, int64_t ib) {
    bool na = isnan(va), nb = isnan(vb);
    if (na != nb) return na;
    if (!na && va != vb) return va < vb;
    return ia > ib;
}

/* Min-heap (lowest-ranked at the root) over idx/val[0..n). */
static void sift_down(int64_t *idx, float *val, int64_t n, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, m = i;
        if (l < n && ranks_below(val[l], idx[l], val[m], idx[m])) m = l;
        if (l + 1 < n && ranks_below(val[l + 1], idx[l + 1], val[m], idx[m])) m = l + 1;
        if (m == i) return;
        int64_t ti = idx[i]; idx[i] = idx[m]; idx[m] = ti;
        float tv = val[i]; val[i] = val[m]; val[m] = tv;
        i = m;
    }
}

int64_t lm_tensor_topk(const lm_tensor *a, int64_t k, int64_t *idx, float *val) {
    if (!need_f32("topk", "a", a)) return -1;
    if (a->ndim != 1) { char s[96]; lm_err("topk: expects a 1-D tensor, got %s", shape_str(a, s, sizeof s)); return -1; }
    if (k < 0) { lm_err("topk: k must be >= 0, got %lld", (long long)k); return -1; }
    if (k > 0 && (!idx || !val)) { lm_err("topk: idx or val is NULL"); return -1; }
    int64_t n = a->shape[0], s = a->stride[0];
    if (k > n) k = n;
    if (k == 0) return 0;
    /* keep the k best seen so far in a heap whose root is the weakest of them */
    for (int64_t i = 0; i < k; i++) { idx[i] = i; val[i] = *(const float *)(a->data + i * s); }
    for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(idx, val, k, i);
    for (int64_t i = k; i < n; i++) {
        float v = *(const float *)(a->data + i * s);
        if (ranks_below(val[0], idx[0], v, i)) { idx[0] = i; val[0] = v; sift_down(idx, val, k, 0); }
    }
    /* heap sort: moving the weakest to the back leaves the best first */
    for (int64_t end = k - 1; end > 0; end--) {
        int64_t ti = idx[0]; idx[0] = idx[end]; idx[end] = ti;
        float tv = val[0]; val[0] = val[end]; val[end] = tv;
        sift_down(idx, val, end, 0);
    }
    return k;
}

double lm_tensor_logsumexp(const lm_tensor *a) {
    if (!need_f32("logsumexp", "a", a)) return NAN;
    if (a->ndim != 1) { char s[96]; lm_err("logsumexp: expects a 1-D tensor, got %s", shape_str(a, s, sizeof s)); return NAN; }
    const int64_t n = a->shape[0], st = a->stride[0];
    if (n == 0) return -INFINITY;
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) { float v = *(const float *)(a->data + i * st); if (v > mx) mx = v; }
    if (!isfinite(mx)) return mx;   /* all -inf, or a +inf / NaN in the data */
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)*(const float *)(a->data + i * st) - mx);
    return mx + log(sum);
}

typedef struct { double ab, aa, bb; } dot3;

/* Sums of a*b, a*a, b*b over a run of n elements (byte strides sa, sb), in double. */
static void dot_run(dot3 *acc, const char *a, int64_t sa, const char *b, int64_t sb, int64_t n) {
    double ab[8] = {0}, aa[8] = {0}, bb[8] = {0};
    int64_t i = 0;
    if (sa == 4 && sb == 4) {
        const float *x = (const float *)a, *y = (const float *)b;
        for (; i + 8 <= n; i += 8)
            for (int l = 0; l < 8; l++) {
                double u = x[i + l], v = y[i + l];
                ab[l] += u * v; aa[l] += u * u; bb[l] += v * v;
            }
    }
    for (; i < n; i++) {
        double u = *(const float *)(a + i * sa), v = *(const float *)(b + i * sb);
        ab[0] += u * v; aa[0] += u * u; bb[0] += v * v;
    }
    for (int l = 0; l < 8; l++) { acc->ab += ab[l]; acc->aa += aa[l]; acc->bb += bb[l]; }
}

/* Walks both tensors in row-major order; rows need not line up (shapes may differ). */
static bool dot_all(const char *op, const lm_tensor *a, const lm_tensor *b, dot3 *acc) {
    if (!need_f32(op, "a", a) || !need_f32(op, "b", b)) return false;
    int64_t total = lm_tensor_numel(a);
    if (total != lm_tensor_numel(b)) {
        char sa[96], sb[96];
        lm_err("%s: element counts differ: a is %s (%lld), b is %s (%lld)", op, shape_str(a, sa, sizeof sa),
               (long long)total, shape_str(b, sb, sizeof sb), (long long)lm_tensor_numel(b));
        return false;
    }
    *acc = (dot3){0, 0, 0};
    if (total == 0) return true;
    if (lm_tensor_is_contiguous(a) && lm_tensor_is_contiguous(b)) {
        dot_run(acc, a->data, 4, b->data, 4, total);
        return true;
    }
    int64_t na = a->shape[a->ndim - 1], nb = b->shape[b->ndim - 1];
    int64_t ra = 0, ja = 0, rb = 0, jb = 0, sa = inner_stride(a), sb = inner_stride(b);
    for (int64_t done = 0; done < total;) {
        int64_t len = na - ja < nb - jb ? na - ja : nb - jb;
        dot_run(acc, row_ptr(a, ra) + ja * sa, sa, row_ptr(b, rb) + jb * sb, sb, len);
        done += len;
        if ((ja += len) == na) { ra++; ja = 0; }
        if ((jb += len) == nb) { rb++; jb = 0; }
    }
    return true;
}

double lm_tensor_dot(const lm_tensor *a, const lm_tensor *b) {
    dot3 acc;
    return dot_all("dot", a, b, &acc) ? acc.ab : NAN;
}

/* A zero vector has cosine 0 with anything (rather than NAN, which means an error). */
double lm_tensor_cosine(const lm_tensor *a, const lm_tensor *b) {
    dot3 acc;
    if (!dot_all("cosine", a, b, &acc)) return NAN;
    if (acc.aa == 0 || acc.bb == 0) return 0.0;
    return acc.ab / (sqrt(acc.aa) * sqrt(acc.bb));
}

/* ---- matmul through oneDNN ------------------------------------------------------ */

/* One CPU engine and stream for the process, made on first use. oneDNN's CPU
 * runtime here is OpenMP and already splits one product over all cores, so
 * products are run one at a time (the lock) rather than side by side, which
 * would oversubscribe the cores; it also keeps the shared stream single-user. */
static pthread_once_t g_dnnl_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_dnnl_lock = PTHREAD_MUTEX_INITIALIZER;
static dnnl_engine_t g_engine;
static dnnl_stream_t g_stream;
static dnnl_status_t g_dnnl_init;

static void dnnl_setup(void) {
    g_dnnl_init = dnnl_engine_create(&g_engine, dnnl_cpu, 0);
    if (g_dnnl_init == dnnl_success)
        g_dnnl_init = dnnl_stream_create(&g_stream, g_engine, dnnl_stream_default_flags);
}

/* A plain 2-D layout oneDNN runs fast: one of the two element strides is 1.
 * Strides of size-1 dimensions are meaningless, so they are normalized first. */
static bool plain_2d(int64_t rows, int64_t cols, int64_t *rs, int64_t *cs) {
    if (cols == 1) *cs = 1;
    if (rows == 1) *rs = cols * *cs;
    if (*rs <= 0 || *cs <= 0) return false;
    return (*cs == 1 && *rs >= cols) || (*rs == 1 && *cs >= rows);
}

/* Folds a's batch dimensions into its rows: a is then an m x k matrix with
 * element strides rs, cs. False when the batch does not fold (needs a copy). */
static bool fold_rows(const lm_tensor *a, int64_t m, int64_t k, int64_t *rs, int64_t *cs) {
    int nd = a->ndim;
    for (int d = 0; d < nd; d++) if (a->stride[d] % 4) return false;
    *cs = a->stride[nd - 1] / 4;
    int64_t row = -1, span = 0;   /* stride of the innermost non-1 outer dim; reach of the last one */
    for (int d = nd - 2; d >= 0; d--) {
        if (a->shape[d] == 1) continue;
        if (row >= 0 && a->stride[d] != span) return false;
        if (row < 0) row = a->stride[d];
        span = a->stride[d] * a->shape[d];
    }
    *rs = row < 0 ? k * *cs : row / 4;
    return plain_2d(m, k, rs, cs);
}

/* b as a k x n matrix (element strides) when b is a 2-D F32 tensor in a plain layout. */
static bool b_layout(const lm_tensor *b, bool transpose_b, int64_t *ks, int64_t *ns) {
    if (b->dtype != LM_F32 || b->stride[0] % 4 || b->stride[1] % 4) return false;
    int64_t r = b->stride[0] / 4, c = b->stride[1] / 4;
    if (!plain_2d(b->shape[0], b->shape[1], &r, &c)) return false;
    *ks = transpose_b ? c : r;   /* b[n][k]: k walks columns */
    *ns = transpose_b ? r : c;
    return true;
}

#define DNNL_TRY(call) do { dnnl_status_t st_ = (call); if (st_ != dnnl_success) { \
    lm_err("matmul: oneDNN %s failed: %s", #call, dnnl_status2str(st_)); goto done; } } while (0)

/* y[m x n] (row stride ldy) = a[m x k] * b[k x n]; element strides given. With
 * stream NULL the process's shared stream is used, one product at a time. */
static lm_status run_gemm_on(dnnl_stream_t stream, dnnl_data_type_t dt, const void *a, int64_t ars, int64_t acs,
                             const void *b, int64_t bks, int64_t bns, float *y, int64_t ldy, int64_t m, int64_t k,
                             int64_t n) {
    pthread_once(&g_dnnl_once, dnnl_setup);
    if (g_dnnl_init != dnnl_success)
        return lm_err("matmul: cannot create the oneDNN CPU engine: %s", dnnl_status2str(g_dnnl_init));
    lm_status rc = LM_ERR;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t am = NULL, bm = NULL, ym = NULL;
    dnnl_memory_desc_t amd, bmd, ymd;
    dnnl_dims_t ad = {m, k}, as = {ars, acs}, bd = {k, n}, bs = {bks, bns}, yd = {m, n}, ys = {ldy, 1};
    dnnl_matmul_desc_t md;
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&amd, 2, ad, dt, as));
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&bmd, 2, bd, dt, bs));
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&ymd, 2, yd, dnnl_f32, ys));
    DNNL_TRY(dnnl_matmul_desc_init(&md, &amd, &bmd, NULL, &ymd));
    /* oneDNN's primitive cache makes the repeated creation for a seen shape cheap */
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &md, NULL, g_engine, NULL));
    DNNL_TRY(dnnl_primitive_create(&prim, pd));
    DNNL_TRY(dnnl_memory_create(&am, &amd, g_engine, (void *)a));
    DNNL_TRY(dnnl_memory_create(&bm, &bmd, g_engine, (void *)b));
    DNNL_TRY(dnnl_memory_create(&ym, &ymd, g_engine, y));
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, ym}};
    if (!stream) pthread_mutex_lock(&g_dnnl_lock);
    dnnl_stream_t use = stream ? stream : g_stream;
    dnnl_status_t st = dnnl_primitive_execute(prim, use, 3, args);
    if (st == dnnl_success) st = dnnl_stream_wait(use);
    if (!stream) pthread_mutex_unlock(&g_dnnl_lock);
    if (st != dnnl_success) { lm_err("matmul: oneDNN execution failed: %s", dnnl_status2str(st)); goto done; }
    rc = LM_OK;
done:
    if (am) dnnl_memory_destroy(am);
    if (bm) dnnl_memory_destroy(bm);
    if (ym) dnnl_memory_destroy(ym);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    return rc;
}

/* Called from several of lumen's own pool threads at once: each has its own
 * stream, and oneDNN's OpenMP runs single-threaded inside it (the pool is the
 * parallelism; two thread systems spinning side by side would fight for the cores). */
extern void omp_set_num_threads(int);
static _Thread_local dnnl_stream_t t_stream;
/* a pool thread's stream is destroyed when the thread ends (a pool lives and
 * dies with its model), through this key's destructor */
static pthread_key_t g_stream_key;
static pthread_once_t g_stream_key_once = PTHREAD_ONCE_INIT;
static void stream_release(void *s) { dnnl_stream_destroy((dnnl_stream_t)s); }
static void stream_key_setup(void) { pthread_key_create(&g_stream_key, stream_release); }

/* the calling pool thread's stream (oneDNN's OpenMP held to one thread in it) */
static lm_status thread_stream(void) {
    pthread_once(&g_dnnl_once, dnnl_setup);
    if (g_dnnl_init != dnnl_success)
        return lm_err("matmul: cannot create the oneDNN CPU engine: %s", dnnl_status2str(g_dnnl_init));
    if (!t_stream) {
        omp_set_num_threads(1);
        if (dnnl_stream_create(&t_stream, g_engine, dnnl_stream_default_flags) != dnnl_success)
            return lm_err("matmul: cannot create a oneDNN stream");
        pthread_once(&g_stream_key_once, stream_key_setup);
        pthread_setspecific(g_stream_key, t_stream);
    }
    return LM_OK;
}

lm_status lm_sgemm_nt(const float *a, int64_t m, int64_t k, const float *w, int64_t n, float *y, int64_t ldy) {
    if (thread_stream() != LM_OK) return LM_ERR;
    /* w is [n][k] row-major: as a k x n matrix its strides are (1, k) */
    return run_gemm_on(t_stream, dnnl_f32, a, k, 1, w, 1, k, y, ldy, m, k, n);
}

lm_status lm_bgemm_nt(const uint16_t *a, int64_t m, int64_t k, const uint16_t *w, int64_t n, float *y, int64_t ldy) {
    if (thread_stream() != LM_OK) return LM_ERR;
    return run_gemm_on(t_stream, dnnl_bf16, a, k, 1, w, 1, k, y, ldy, m, k, n);
}

/* oneDNN's bf16 matmul is worth taking where it runs on bf16 hardware (a brgemm
 * on AVX512-BF16 or AMX); elsewhere it converts to f32 at best, or runs its
 * reference loops. Asked once: which implementation a bf16 product gets. */
static pthread_once_t g_bf16_once = PTHREAD_ONCE_INIT;
static bool g_bf16_fast;
static char g_bf16_impl[64];

static void bf16_probe(void) {
    pthread_once(&g_dnnl_once, dnnl_setup);
    if (g_dnnl_init != dnnl_success) return;
    dnnl_memory_desc_t amd, bmd, ymd;
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd = NULL;
    const char *impl = NULL;
    if (dnnl_memory_desc_init_by_tag(&amd, 2, (dnnl_dims_t){64, 256}, dnnl_bf16, dnnl_ab) == dnnl_success &&
        dnnl_memory_desc_init_by_tag(&bmd, 2, (dnnl_dims_t){256, 256}, dnnl_bf16, dnnl_ba) == dnnl_success &&
        dnnl_memory_desc_init_by_tag(&ymd, 2, (dnnl_dims_t){64, 256}, dnnl_f32, dnnl_ab) == dnnl_success &&
        dnnl_matmul_desc_init(&md, &amd, &bmd, NULL, &ymd) == dnnl_success &&
        dnnl_primitive_desc_create(&pd, &md, NULL, g_engine, NULL) == dnnl_success &&
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl) {
        snprintf(g_bf16_impl, sizeof g_bf16_impl, "%s", impl);
        g_bf16_fast = strstr(impl, "brg:") == impl && (strstr(impl, "bf16") || strstr(impl, "amx"));
    }
    if (pd) dnnl_primitive_desc_destroy(pd);
}

const char *lm_bgemm_impl(void) {
    pthread_once(&g_bf16_once, bf16_probe);
    return g_bf16_fast ? g_bf16_impl : NULL;
}

/* AMD's AVX512-BF16 (Zen 4) only: on Intel without AMX oneDNN's bf16 runs
 * slower than its f32, and with AMX (a Xeon, 2 vCPUs, M = 512, 2048 x 8192)
 * lumen's K-quant prompt through it, weights converted per call, ran at
 * 445 / 476 GFLOP/s on 1 / 2 threads against 467 / 643 for the VNNI repacked
 * panels, which the AMX int8 tiles then outran (kernels/x86/tiled_k_avx512.c) */
bool lm_bgemm_preferred(void) {
    pthread_once(&g_bf16_once, bf16_probe);
    return g_bf16_fast && __builtin_cpu_is("amd");
}

bool lm_attend_head_gemm(const float *q, const float *k, const float *v, int64_t ld, int64_t L, int64_t HD,
                         float scale, float *out, int64_t ldo, float *scr) {
    float *Q = scr, *K = Q + L * HD, *Vt = K + L * HD, *O = Vt + HD * L, *S = O + L * HD;
    for (int64_t i = 0; i < L; i++) {
        memcpy(Q + i * HD, q + i * ld, (size_t)HD * sizeof(float));
        memcpy(K + i * HD, k + i * ld, (size_t)HD * sizeof(float));
        for (int64_t c = 0; c < HD; c++) Vt[c * L + i] = v[i * ld + c];
    }
    if (lm_sgemm_nt(Q, L, HD, K, L, S, L) != LM_OK) return false;
    for (int64_t i = 0; i < L; i++) lm_softmax_scaled(S + i * L, L, scale);
    if (lm_sgemm_nt(S, L, L, Vt, HD, O, HD) != LM_OK) return false;
    for (int64_t i = 0; i < L; i++) memcpy(out + i * ldo, O + i * HD, (size_t)HD * sizeof(float));
    return true;
}

lm_tensor *lm_tensor_matmul(const lm_tensor *a, const lm_tensor *b, bool transpose_b) {
    if (!need_f32("matmul", "a", a)) return NULL;
    if (!b) { lm_err("matmul: b is NULL"); return NULL; }
    char sa[96], sb[96];
    if (b->ndim != 2) { lm_err("matmul: b must be 2-D, got %s", shape_str(b, sb, sizeof sb)); return NULL; }
    if (b->dtype != LM_F32) {
        lm_kernels_init();  /* once, thread-safe: the dtype table may not be filled yet without a model */
        const lm_quant_ops *q = lm_quant_ops_get(b->dtype);
        if (!q || !q->to_float) { lm_err("matmul: dtype %s of b cannot be converted to f32", lm_dtype_name(b->dtype)); return NULL; }
    }
    int64_t k = a->shape[a->ndim - 1];
    int64_t kb = b->shape[transpose_b ? 1 : 0], n = b->shape[transpose_b ? 0 : 1];
    if (k != kb) {
        lm_err("matmul: inner dimensions differ: a is %s, b is %s%s", shape_str(a, sa, sizeof sa),
               shape_str(b, sb, sizeof sb), transpose_b ? " (transposed: [n, k])" : "");
        return NULL;
    }
    int64_t shape[LM_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[a->ndim - 1] = n;
    lm_tensor *out = lm_tensor_new(LM_F32, a->ndim, shape);
    if (!out) return NULL;
    int64_t m = n_rows(a);
    if (m == 0 || n == 0 || k == 0) return out;   /* empty, or a sum over nothing: zeros */

    lm_tensor *at = NULL, *bt = NULL;
    const lm_tensor *aa = a, *bb = b;
    int64_t ars = 0, acs = 1, bks = 0, bns = 1;  /* set by fold_rows / b_layout */
    if (!fold_rows(aa, m, k, &ars, &acs)) {
        if (!(at = lm_tensor_copy(a, LM_F32))) goto fail;
        aa = at;
        fold_rows(aa, m, k, &ars, &acs);
    }
    if (!b_layout(bb, transpose_b, &bks, &bns)) {
        /* quantized/F16/BF16 weights or an odd layout: a contiguous F32 temporary */
        if (!(bt = lm_tensor_copy(b, LM_F32))) goto fail;
        bb = bt;
        b_layout(bb, transpose_b, &bks, &bns);
    }
    if (run_gemm_on(NULL, dnnl_f32, (const float *)aa->data, ars, acs, (const float *)bb->data, bks, bns,
                    (float *)out->data, n, m, k, n) != LM_OK) goto fail;
    lm_tensor_free(at);
    lm_tensor_free(bt);
    return out;
fail:
    lm_tensor_free(at);
    lm_tensor_free(bt);
    lm_tensor_free(out);
    return NULL;
}
