/* GGUF reader: parses and validates a whole file up front (see gguf.h).
 *
 * Layout (all little-endian; lumen only targets little-endian hosts):
 *   "GGUF", u32 version, u64 tensor_count, u64 kv_count,
 *   kv_count x (string key, u32 type, value),
 *   tensor_count x (string name, u32 n_dims, n_dims x u64 ne, u32 type, u64 offset),
 *   zero padding to general.alignment, then the data section.
 * A string is a u64 length and that many bytes; an array value is a u32 element
 * type, a u64 count and the elements. Tensor offsets count from the start of
 * the data section.
 *
 * Every read goes through a cursor that knows how many bytes remain, and every
 * count is checked against those bytes before anything is allocated for it, so
 * a hostile file can neither read out of bounds nor make us allocate much more
 * than its own size. */
#include "gguf.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(size_t) == 8, "lumen needs a 64-bit size_t");

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_NAME 64
/* Smallest possible encodings, used to reject impossible counts early:
 * a kv is a key length (8), a non-empty key (1), a type (4) and a 1-byte value;
 * a tensor info a name length (8), a non-empty name (1), n_dims (4), type (4), offset (8). */
#define MIN_KV_BYTES 14
#define MIN_TENSOR_INFO_BYTES 25

/* ---- name -> index hash table (open addressing, linear probing) ------------- */

typedef struct { const char *key; uint64_t len; int64_t item; } slot;
typedef struct { slot *slots; uint64_t cap, used; } name_index; /* cap: 0 or a power of two */

static uint64_t hash_bytes(const char *p, uint64_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (uint64_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 0x100000001b3ull;
    return h;
}

/* The slot holding key, or the empty slot where it would go. cap must be > 0. */
static slot *index_slot(const name_index *ix, const char *key, uint64_t len) {
    uint64_t i = hash_bytes(key, len) & (ix->cap - 1);
    for (;;) {
        slot *s = &ix->slots[i];
        if (!s->key || (s->len == len && memcmp(s->key, key, len) == 0)) return s;
        i = (i + 1) & (ix->cap - 1);
    }
}

static int64_t index_get(const name_index *ix, const char *key, uint64_t len) {
    if (!ix->cap) return -1;
    const slot *s = index_slot(ix, key, len);
    return s->key ? s->item : -1;
}

/* Adds key -> item. Returns -1 when added, the earlier item when key is already
 * present, or -2 when out of memory. key must stay valid as long as ix. */
static int64_t index_add(name_index *ix, const char *key, uint64_t len, int64_t item) {
    if ((ix->used + 1) * 2 > ix->cap) { /* keep the load at most 1/2 */
        name_index big = {calloc(ix->cap ? ix->cap * 2 : 16, sizeof(slot)), ix->cap ? ix->cap * 2 : 16, ix->used};
        if (!big.slots) return -2;
        for (uint64_t i = 0; i < ix->cap; i++)
            if (ix->slots[i].key) *index_slot(&big, ix->slots[i].key, ix->slots[i].len) = ix->slots[i];
        free(ix->slots);
        *ix = big;
    }
    slot *s = index_slot(ix, key, len);
    if (s->key) return s->item;
    *s = (slot){key, len, item};
    ix->used++;
    return -1;
}

/* ---- the file ----------------------------------------------------------------- */

struct lm_gguf {
    char *name;              /* path or caller's name, for messages */
    const uint8_t *base;     /* the whole file */
    uint64_t size;
    void *map;               /* the mmap when opened from a path, else NULL */
    uint32_t version, alignment;
    lm_gguf_kv *kvs;
    int64_t n_kv, cap_kv;
    lm_gguf_tensor *tensors;
    int64_t n_tensors, cap_tensors;
    name_index kv_index, tensor_index;
};

/* Bounds-checked reading: pos never passes size. */
typedef struct { const uint8_t *p; uint64_t pos, size; } cursor;

static uint64_t remaining(const cursor *c) { return c->size - c->pos; }

static bool skip(cursor *c, uint64_t n) {
    if (n > remaining(c)) return false;
    c->pos += n;
    return true;
}

static bool read_bytes(cursor *c, void *out, uint64_t n) {
    if (n > remaining(c)) return false;
    memcpy(out, c->p + c->pos, n);
    c->pos += n;
    return true;
}

static bool read_u32(cursor *c, uint32_t *v) { return read_bytes(c, v, 4); }
static bool read_u64(cursor *c, uint64_t *v) { return read_bytes(c, v, 8); }

static bool read_str(cursor *c, lm_gguf_str *s) {
    uint64_t len;
    if (!read_u64(c, &len) || len > remaining(c)) return false;
    s->ptr = (const char *)c->p + c->pos;
    s->len = len;
    c->pos += len;
    return true;
}

/* A string from the file made printable for a message: at most 64 bytes,
 * control and non-ASCII bytes shown as '?'. */
typedef struct { char s[72]; } shown;
static shown show(lm_gguf_str str) {
    shown out;
    uint64_t n = str.len > GGUF_MAX_NAME ? GGUF_MAX_NAME : str.len, i;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)str.ptr[i];
        out.s[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    strcpy(out.s + i, str.len > n ? "..." : "");
    return out;
}

static shown show_z(const char *z) { return show((lm_gguf_str){z, strlen(z)}); }

static uint64_t scalar_size(uint32_t t) {
    switch (t) {
    case LM_GGUF_U8: case LM_GGUF_I8: case LM_GGUF_BOOL: return 1;
    case LM_GGUF_U16: case LM_GGUF_I16: return 2;
    case LM_GGUF_U32: case LM_GGUF_I32: case LM_GGUF_F32: return 4;
    case LM_GGUF_U64: case LM_GGUF_I64: case LM_GGUF_F64: return 8;
    default: return 0; /* string, array, unknown */
    }
}

const char *lm_gguf_type_name(lm_gguf_type t) {
    static const char *names[LM_GGUF_TYPE_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < LM_GGUF_TYPE_COUNT ? names[t] : "unknown";
}

/* "u32", or "array[string]" for arrays. */
typedef struct { char s[24]; } type_desc;
static type_desc describe(lm_gguf_type t, lm_gguf_type arr_type) {
    type_desc d;
    if (t == LM_GGUF_ARRAY) snprintf(d.s, sizeof d.s, "array[%s]", lm_gguf_type_name(arr_type));
    else snprintf(d.s, sizeof d.s, "%s", lm_gguf_type_name(t));
    return d;
}

static bool grow(void **items, int64_t *cap, int64_t need, size_t item_size) {
    if (need <= *cap) return true;
    int64_t n = *cap ? *cap * 2 : 16;
    void *p = realloc(*items, (size_t)n * item_size);
    if (!p) return false;
    *items = p;
    *cap = n;
    return true;
}

/* ---- parsing ------------------------------------------------------------------ */

static lm_status kv_truncated(const lm_gguf *g, int64_t i, const lm_gguf_str *key) {
    if (!key) return lm_err("%s: truncated: key/value %" PRId64 " runs past the end of the file", g->name, i);
    return lm_err("%s: truncated: key/value %" PRId64 " ('%s') runs past the end of the file",
                  g->name, i, show(*key).s);
}

static lm_status parse_header(lm_gguf *g, cursor *c, uint64_t *n_tensors, uint64_t *n_kv) {
    char magic[4];
    if (g->size == 0) return lm_err("%s: not a GGUF file (it is empty)", g->name);
    if (!read_bytes(c, magic, 4) || memcmp(magic, "GGUF", 4) != 0) {
        char shown_magic[17] = "", *o = shown_magic;
        for (uint64_t i = 0; i < 4 && i < g->size; i++) {
            unsigned char ch = (unsigned char)g->base[i];
            if (ch >= 0x20 && ch < 0x7f && ch != '\\') *o++ = (char)ch;
            else o += sprintf(o, "\\x%02x", ch);
        }
        return lm_err("%s: not a GGUF file (bad magic '%s')", g->name, shown_magic);
    }
    if (!read_u32(c, &g->version) || !read_u64(c, n_tensors) || !read_u64(c, n_kv))
        return lm_err("%s: truncated: the header runs past the end of the file (size %" PRIu64 ")", g->name, g->size);
    if (g->version == 1)
        return lm_err("%s: GGUF version 1 is not supported (only versions 2 and 3)", g->name);
    if (g->version == 0x02000000 || g->version == 0x03000000)
        return lm_err("%s: big-endian GGUF files are not supported", g->name);
    if (g->version != 2 && g->version != 3)
        return lm_err("%s: unsupported GGUF version %" PRIu32 " (only versions 2 and 3)", g->name, g->version);
    uint64_t rest = remaining(c);
    if (*n_kv > rest / MIN_KV_BYTES)
        return lm_err("%s: key/value count %" PRIu64 " is impossible for a file of %" PRIu64 " bytes",
                      g->name, *n_kv, g->size);
    rest -= *n_kv * MIN_KV_BYTES;
    if (*n_tensors > rest / MIN_TENSOR_INFO_BYTES)
        return lm_err("%s: tensor count %" PRIu64 " is impossible for a file of %" PRIu64 " bytes",
                      g->name, *n_tensors, g->size);
    return LM_OK;
}

/* The value of kv i (its type is next at the cursor). */
static lm_status parse_value(lm_gguf *g, cursor *c, int64_t i, lm_gguf_kv *kv) {
    uint32_t type;
    if (!read_u32(c, &type)) return kv_truncated(g, i, &kv->key);
    if (type >= LM_GGUF_TYPE_COUNT)
        return lm_err("%s: key '%s' has unknown value type %" PRIu32, g->name, show(kv->key).s, type);
    kv->type = (lm_gguf_type)type;
    kv->data = c->p + c->pos;
    if (type == LM_GGUF_STRING) {
        lm_gguf_str *s = malloc(sizeof *s);
        if (!s) return lm_err("%s: out of memory", g->name);
        kv->strs = s;
        return read_str(c, s) ? LM_OK : kv_truncated(g, i, &kv->key);
    }
    if (type != LM_GGUF_ARRAY)
        return skip(c, scalar_size(type)) ? LM_OK : kv_truncated(g, i, &kv->key);

    uint32_t arr_type;
    uint64_t n;
    if (!read_u32(c, &arr_type) || !read_u64(c, &n)) return kv_truncated(g, i, &kv->key);
    if (arr_type == LM_GGUF_ARRAY)
        return lm_err("%s: key '%s' is an array of arrays (nested arrays are not supported)", g->name, show(kv->key).s);
    if (arr_type >= LM_GGUF_TYPE_COUNT)
        return lm_err("%s: key '%s' is an array of unknown value type %" PRIu32, g->name, show(kv->key).s, arr_type);
    kv->arr_type = (lm_gguf_type)arr_type;
    kv->arr_n = n;
    kv->data = c->p + c->pos;
    /* Each element takes at least min_size bytes: a count beyond what is left is a lie. */
    uint64_t min_size = arr_type == LM_GGUF_STRING ? 8 : scalar_size(arr_type);
    if (n > remaining(c) / min_size)
        return lm_err("%s: key '%s': an array of %" PRIu64 " %s values cannot fit in the remaining %" PRIu64
                      " bytes of the file",
                      g->name, show(kv->key).s, n, lm_gguf_type_name(kv->arr_type), remaining(c));
    if (arr_type != LM_GGUF_STRING) return skip(c, n * min_size) ? LM_OK : kv_truncated(g, i, &kv->key);

    lm_gguf_str *strs = malloc((size_t)(n ? n : 1) * sizeof *strs);
    if (!strs) return lm_err("%s: out of memory", g->name);
    kv->strs = strs;
    for (uint64_t k = 0; k < n; k++)
        if (!read_str(c, &strs[k])) return kv_truncated(g, i, &kv->key);
    return LM_OK;
}

static lm_status parse_kv(lm_gguf *g, cursor *c, int64_t i) {
    if (!grow((void **)&g->kvs, &g->cap_kv, i + 1, sizeof *g->kvs)) return lm_err("%s: out of memory", g->name);
    lm_gguf_kv *kv = &g->kvs[i];
    memset(kv, 0, sizeof *kv);
    g->n_kv = i + 1; /* counted now so that close frees whatever the value allocates */
    if (!read_str(c, &kv->key)) return kv_truncated(g, i, NULL);
    if (kv->key.len == 0) return lm_err("%s: key/value %" PRId64 " has an empty key", g->name, i);
    if (memchr(kv->key.ptr, 0, kv->key.len))
        return lm_err("%s: key/value %" PRId64 " has a key containing a NUL byte ('%s')", g->name, i, show(kv->key).s);
    int64_t prev = index_add(&g->kv_index, kv->key.ptr, kv->key.len, i);
    if (prev == -2) return lm_err("%s: out of memory", g->name);
    if (prev >= 0)
        return lm_err("%s: duplicate key '%s' (key/values %" PRId64 " and %" PRId64 ")", g->name, show(kv->key).s, prev, i);
    return parse_value(g, c, i, kv);
}

static lm_status parse_alignment(lm_gguf *g) {
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const lm_gguf_kv *kv = lm_gguf_find(g, "general.alignment");
    if (!kv) return LM_OK;
    if (kv->type != LM_GGUF_U32)
        return lm_err("%s: key 'general.alignment' has type %s, expected u32", g->name, describe(kv->type, kv->arr_type).s);
    uint32_t a;
    memcpy(&a, kv->data, 4);
    if (a == 0 || (a & (a - 1)) != 0)
        return lm_err("%s: general.alignment = %" PRIu32 " is not a nonzero power of two", g->name, a);
    g->alignment = a;
    return LM_OK;
}

/* Tensor info i: name, shape, type, offset; checks everything but the data bounds. */
static lm_status parse_tensor_info(lm_gguf *g, cursor *c, int64_t i) {
    lm_gguf_str name;
    if (!read_str(c, &name))
        return lm_err("%s: truncated: tensor info %" PRId64 " runs past the end of the file", g->name, i);
    if (name.len == 0) return lm_err("%s: tensor %" PRId64 " has an empty name", g->name, i);
    if (name.len > GGUF_MAX_NAME)
        return lm_err("%s: tensor %" PRId64 " has a name of %" PRIu64 " bytes (at most %d): '%s'",
                      g->name, i, name.len, GGUF_MAX_NAME, show(name).s);
    if (memchr(name.ptr, 0, name.len))
        return lm_err("%s: tensor %" PRId64 " has a name containing a NUL byte ('%s')", g->name, i, show(name).s);
    int64_t prev = index_add(&g->tensor_index, name.ptr, name.len, i);
    if (prev == -2) return lm_err("%s: out of memory", g->name);
    if (prev >= 0)
        return lm_err("%s: duplicate tensor name '%s' (tensors %" PRId64 " and %" PRId64 ")",
                      g->name, show(name).s, prev, i);

    if (!grow((void **)&g->tensors, &g->cap_tensors, i + 1, sizeof *g->tensors))
        return lm_err("%s: out of memory", g->name);
    lm_gguf_tensor *t = &g->tensors[i];
    memset(t, 0, sizeof *t);
    memcpy(t->name, name.ptr, name.len);
    shown nm = show(name); /* for messages: the name may hold control bytes */
    uint32_t n_dims, type;
    if (!read_u32(c, &n_dims)) goto truncated;
    /* ggml writes at least one dimension but its reader takes 0 as a scalar; so do we. */
    if (n_dims > LM_GGUF_MAX_DIMS)
        return lm_err("%s: tensor '%s' has %" PRIu32 " dimensions (at most %d)", g->name, nm.s, n_dims, LM_GGUF_MAX_DIMS);
    t->n_dims = n_dims;
    for (int d = 0; d < LM_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t ne;
        if (!read_u64(c, &ne)) goto truncated;
        if (ne > INT64_MAX)
            return lm_err("%s: tensor '%s' has a negative dimension ne[%" PRIu32 "] = %" PRId64,
                          g->name, nm.s, d, (int64_t)(ne - INT64_MAX - 1) + INT64_MIN);
        t->ne[d] = (int64_t)ne;
    }
    if (!read_u32(c, &type) || !read_u64(c, &t->offset)) goto truncated;
    if (type >= LM_DTYPE_COUNT || !lm_dtype_name((int)type))
        return lm_err("%s: tensor '%s' has unknown type %" PRIu32, g->name, nm.s, type);
    t->type = (lm_dtype)type;

    int64_t n = 1;
    for (int d = 0; d < LM_GGUF_MAX_DIMS; d++) {
        if (t->ne[d] != 0 && n > INT64_MAX / t->ne[d])
            return lm_err("%s: tensor '%s': dimension overflow (the element count exceeds 2^63)", g->name, nm.s);
        n *= t->ne[d];
    }
    int block = lm_dtype_block_size(t->type);
    uint64_t type_size = lm_dtype_type_size(t->type);
    if (t->ne[0] % block != 0)
        return lm_err("%s: tensor '%s': ne[0] = %" PRId64 " is not a multiple of the block size %d of type %s",
                      g->name, nm.s, t->ne[0], block, lm_dtype_name(t->type));
    uint64_t blocks = (uint64_t)(n / block);
    if (blocks > UINT64_MAX / type_size)
        return lm_err("%s: tensor '%s': dimension overflow (the size in bytes exceeds 2^64)", g->name, nm.s);
    t->nbytes = blocks * type_size;
    if (t->offset % g->alignment != 0)
        return lm_err("%s: tensor '%s' has offset %" PRIu64 ", not a multiple of the alignment %" PRIu32,
                      g->name, nm.s, t->offset, g->alignment);
    g->n_tensors = i + 1;
    return LM_OK;
truncated:
    return lm_err("%s: truncated: tensor info %" PRId64 " ('%s') runs past the end of the file", g->name, i, nm.s);
}

/* After the tensor infos: find the data section and check every tensor lies in it. */
static lm_status locate_data(lm_gguf *g, const cursor *c) {
    uint64_t start = c->pos + (g->alignment - c->pos % g->alignment) % g->alignment;
    if (start > g->size) {
        /* Nothing needs the data section of a file without tensors, so it may end unpadded. */
        if (g->n_tensors == 0) return LM_OK;
        return lm_err("%s: truncated: the padding before the data section runs past the end of the file", g->name);
    }
    uint64_t data_size = g->size - start;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        lm_gguf_tensor *t = &g->tensors[i];
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            if (t->offset > UINT64_MAX - start || t->nbytes > UINT64_MAX - start - t->offset)
                return lm_err("%s: tensor '%s' data at offset %" PRIu64 " (%" PRIu64
                              " bytes) lies outside the file (size %" PRIu64 ")",
                              g->name, show_z(t->name).s, t->offset, t->nbytes, g->size);
            return lm_err("%s: tensor '%s' data [%" PRIu64 ", %" PRIu64 ") lies outside the file (size %" PRIu64 ")",
                          g->name, show_z(t->name).s, start + t->offset, start + t->offset + t->nbytes, g->size);
        }
        t->data = g->base + start + t->offset;
    }
    return LM_OK;
}

static lm_status parse(lm_gguf *g) {
    cursor c = {g->base, 0, g->size};
    uint64_t n_tensors = 0, n_kv = 0;
    if (parse_header(g, &c, &n_tensors, &n_kv)) return LM_ERR;
    for (uint64_t i = 0; i < n_kv; i++)
        if (parse_kv(g, &c, (int64_t)i)) return LM_ERR;
    if (parse_alignment(g)) return LM_ERR;
    for (uint64_t i = 0; i < n_tensors; i++)
        if (parse_tensor_info(g, &c, (int64_t)i)) return LM_ERR;
    return locate_data(g, &c);
}

/* ---- open / close ------------------------------------------------------------- */

static lm_gguf *gguf_new(const void *data, uint64_t size, const char *name) {
    lm_gguf *g = calloc(1, sizeof *g);
    if (g) g->name = strdup(name);
    if (!g || !g->name) {
        free(g);
        lm_err("%s: out of memory", name);
        return NULL;
    }
    g->base = data;
    g->size = size;
    return g;
}

void lm_gguf_close(lm_gguf *g) {
    if (!g) return;
    for (int64_t i = 0; i < g->n_kv; i++) free((void *)g->kvs[i].strs);
    free(g->kvs);
    free(g->tensors);
    free(g->kv_index.slots);
    free(g->tensor_index.slots);
    if (g->map) munmap(g->map, (size_t)g->size);
    free(g->name);
    free(g);
}

lm_gguf *lm_gguf_open_memory(const void *data, size_t size, const char *name) {
    if (!name) name = "<memory>";
    if (!data && size) { lm_err("%s: NULL buffer", name); return NULL; }
    lm_gguf *g = gguf_new(data, size, name);
    if (!g) return NULL;
    if (parse(g)) { lm_gguf_close(g); return NULL; }
    return g;
}

lm_gguf *lm_gguf_open(const char *path) {
    if (!path || !*path) { lm_err("GGUF path is empty"); return NULL; }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { lm_err("%s: cannot open (%s)", path, strerror(errno)); return NULL; }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        lm_err("%s: cannot stat (%s)", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) { lm_err("%s: not a regular file", path); close(fd); return NULL; }
    if (st.st_size == 0) { lm_err("%s: not a GGUF file (it is empty)", path); close(fd); return NULL; }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping stays valid */
    if (map == MAP_FAILED) { lm_err("%s: cannot mmap (%s)", path, strerror(map_errno)); return NULL; }
    /* decode streams every weight once per token: ask for huge pages where the
     * kernel maps a file's large folios only on request (Linux 6.18 here maps
     * them either way: 539 of 778 MB of a 1B model PMD-mapped with and without;
     * MADV_COLLAPSE is refused on a private file mapping) */
    madvise(map, (size_t)st.st_size, MADV_HUGEPAGE);
    lm_gguf *g = gguf_new(map, (uint64_t)st.st_size, path);
    if (!g) { munmap(map, (size_t)st.st_size); return NULL; }
    g->map = map;
    if (parse(g)) { lm_gguf_close(g); return NULL; }
    return g;
}

/* ---- accessors ---------------------------------------------------------------- */

const char *lm_gguf_name(const lm_gguf *g) { return g ? g->name : NULL; }
uint32_t lm_gguf_version(const lm_gguf *g) { return g ? g->version : 0; }
uint64_t lm_gguf_size(const lm_gguf *g) { return g ? g->size : 0; }

bool lm_gguf_maps(const lm_gguf *g, const void *p, size_t n) {
    const uint8_t *b = g ? g->map : NULL, *q = p;
    return b && q >= b && n <= g->size && (uint64_t)(q - b) <= g->size - n;
}

uint32_t lm_gguf_alignment(const lm_gguf *g) { return g ? g->alignment : 0; }
int64_t lm_gguf_n_kv(const lm_gguf *g) { return g ? g->n_kv : 0; }
int64_t lm_gguf_n_tensors(const lm_gguf *g) { return g ? g->n_tensors : 0; }

const lm_gguf_kv *lm_gguf_kv_at(const lm_gguf *g, int64_t i) {
    return g && i >= 0 && i < g->n_kv ? &g->kvs[i] : NULL;
}

const lm_gguf_tensor *lm_gguf_tensor_at(const lm_gguf *g, int64_t i) {
    return g && i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const lm_gguf_kv *lm_gguf_find(const lm_gguf *g, const char *key) {
    if (!g || !key) return NULL;
    int64_t i = index_get(&g->kv_index, key, strlen(key));
    return i >= 0 ? &g->kvs[i] : NULL;
}

const lm_gguf_tensor *lm_gguf_find_tensor(const lm_gguf *g, const char *name) {
    if (!g || !name) return NULL;
    int64_t i = index_get(&g->tensor_index, name, strlen(name));
    return i >= 0 ? &g->tensors[i] : NULL;
}

bool lm_gguf_str_eq(lm_gguf_str s, const char *z) {
    size_t n = strlen(z);
    return s.len == n && memcmp(s.ptr, z, n) == 0;
}

/* ---- typed getters -------------------------------------------------------------- */

/* An integer of any GGUF integer type: value = neg ? -mag : mag. */
typedef struct { bool neg; uint64_t mag; } wide_int;

static bool is_int_type(lm_gguf_type t) {
    return t == LM_GGUF_U8 || t == LM_GGUF_I8 || t == LM_GGUF_U16 || t == LM_GGUF_I16 || t == LM_GGUF_U32 ||
           t == LM_GGUF_I32 || t == LM_GGUF_U64 || t == LM_GGUF_I64;
}

static wide_int signed_int(int64_t v) { return (wide_int){v < 0, v < 0 ? 0 - (uint64_t)v : (uint64_t)v}; }

/* p points at a value of integer type t (possibly unaligned). */
static wide_int int_at(lm_gguf_type t, const uint8_t *p) {
    switch (t) {
    case LM_GGUF_U8: return (wide_int){false, p[0]};
    case LM_GGUF_I8: { int8_t v; memcpy(&v, p, 1); return signed_int(v); }
    case LM_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); return (wide_int){false, v}; }
    case LM_GGUF_I16: { int16_t v; memcpy(&v, p, 2); return signed_int(v); }
    case LM_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); return (wide_int){false, v}; }
    case LM_GGUF_I32: { int32_t v; memcpy(&v, p, 4); return signed_int(v); }
    case LM_GGUF_U64: { uint64_t v; memcpy(&v, p, 8); return (wide_int){false, v}; }
    case LM_GGUF_I64: { int64_t v; memcpy(&v, p, 8); return signed_int(v); }
    default: return (wide_int){false, 0};
    }
}

static bool fits_i32(wide_int v) { return v.neg ? v.mag <= (uint64_t)INT32_MAX + 1 : v.mag <= INT32_MAX; }
static int32_t to_i32(wide_int v) { return v.neg ? (int32_t)(-(int64_t)v.mag) : (int32_t)v.mag; }

/* The kv for key, or NULL with the "missing key" message set. */
static const lm_gguf_kv *need(const lm_gguf *g, const char *key) {
    if (!g || !key) { lm_err("lm_gguf_get: NULL argument"); return NULL; }
    const lm_gguf_kv *kv = lm_gguf_find(g, key);
    if (!kv) lm_err("%s: missing key '%s'", g->name, key);
    return kv;
}

static lm_status wrong_type(const lm_gguf *g, const char *key, const lm_gguf_kv *kv, const char *expected) {
    return lm_err("%s: key '%s' has type %s, expected %s", g->name, key, describe(kv->type, kv->arr_type).s, expected);
}

static lm_status out_of_range(const lm_gguf *g, const char *key, wide_int v, const char *target) {
    return lm_err("%s: key '%s' = %s%" PRIu64 " does not fit in %s", g->name, key, v.neg ? "-" : "", v.mag, target);
}

lm_status lm_gguf_get_u32(const lm_gguf *g, const char *key, uint32_t *out) {
    const lm_gguf_kv *kv = need(g, key);
    if (!kv) return LM_ERR;
    if (!is_int_type(kv->type)) return wrong_type(g, key, kv, "u32");
    wide_int v = int_at(kv->type, kv->data);
    if (v.neg || v.mag > UINT32_MAX) return out_of_range(g, key, v, "u32");
    *out = (uint32_t)v.mag;
    return LM_OK;
}

lm_status lm_gguf_get_i32(const lm_gguf *g, const char *key, int32_t *out) {
    const lm_gguf_kv *kv = need(g, key);
    if (!kv) return LM_ERR;
    if (!is_int_type(kv->type)) return wrong_type(g, key, kv, "i32");
    wide_int v = int_at(kv->type, kv->data);
    if (!fits_i32(v)) return out_of_range(g, key, v, "i32");
    *out = to_i32(v);
    return LM_OK;
}

lm_status lm_gguf_get_u64(const lm_gguf *g, const char *key, uint64_t *out) {
    const lm_gguf_kv *kv = need(g, key);
    if (!kv) return LM_ERR;
    if (!is_int_type(kv->type)) return wrong_type(g, key, kv, "u64");
    wide_int v = int_at(kv->type, kv->data);
    if (v.neg) return out_of_range(g, key, v, "u64");
    *out = v.mag;
    return LM_OK;
}

lm_status lm_gguf_get_f32(const lm_gguf *g, const char *key, float *out) {
    const lm_gguf_kv *kv = need(g, key);
    if (!kv) return LM_ERR;
    if (kv->type == LM_GGUF_F32) { memcpy(out, kv->data, 4); return LM_OK; }
    if (kv->type != LM_GGUF_F64) return wrong_type(g, key, kv, "f32");
    double d;
    memcpy(&d, kv->data, 8);
    *out = (float)d;
    return LM_OK;
}

lm_status lm_gguf_get_bool(const lm_gguf *g, const char *key, bool *out) {
    const lm_gguf_kv *kv = need(g, key);
    if (!kv) return LM_ERR;
    if (kv->type != LM_GGUF_BOOL) return wrong_type(g, key, kv, "bool");
    *out = *(const uint8_t *)kv->data != 0;
    return LM_OK;
}

lm_status lm_gguf_get_str(const lm_gguf *g, const char *key, lm_gguf_str *out) {
    const lm_gguf_kv *kv = need(g, key);
    if (!kv) return LM_ERR;
    if (kv->type != LM_GGUF_STRING) return wrong_type(g, key, kv, "string");
    *out = kv->strs[0];
    return LM_OK;
}

lm_status lm_gguf_get_str_arr(const lm_gguf *g, const char *key, const lm_gguf_str **out, uint64_t *n) {
    const lm_gguf_kv *kv = need(g, key);
    if (!kv) return LM_ERR;
    if (kv->type != LM_GGUF_ARRAY || kv->arr_type != LM_GGUF_STRING) return wrong_type(g, key, kv, "array[string]");
    *out = kv->strs;
    *n = kv->arr_n;
    return LM_OK;
}

/* A numeric array kv and room for its converted copy (elem_size bytes each). */
static const lm_gguf_kv *numeric_array(const lm_gguf *g, const char *key, bool ints_only, size_t elem_size,
                                       void **copy, const char *expected) {
    const lm_gguf_kv *kv = need(g, key);
    if (!kv) return NULL;
    lm_gguf_type t = kv->arr_type;
    bool ok = kv->type == LM_GGUF_ARRAY &&
              (is_int_type(t) || (!ints_only && (t == LM_GGUF_F32 || t == LM_GGUF_F64)));
    if (!ok) { wrong_type(g, key, kv, expected); return NULL; }
    /* arr_n was checked against the file size, so this cannot overflow. */
    *copy = malloc((size_t)(kv->arr_n ? kv->arr_n : 1) * elem_size);
    if (!*copy) { lm_err("%s: out of memory", g->name); return NULL; }
    return kv;
}

lm_status lm_gguf_get_arr_i32(const lm_gguf *g, const char *key, int32_t **out, uint64_t *n) {
    void *copy;
    const lm_gguf_kv *kv = numeric_array(g, key, true, sizeof(int32_t), &copy, "an integer array");
    if (!kv) return LM_ERR;
    int32_t *v = copy;
    uint64_t size = scalar_size(kv->arr_type);
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        wide_int x = int_at(kv->arr_type, (const uint8_t *)kv->data + i * size);
        if (!fits_i32(x)) {
            free(v);
            return lm_err("%s: key '%s': element %" PRIu64 " = %s%" PRIu64 " does not fit in i32",
                          g->name, key, i, x.neg ? "-" : "", x.mag);
        }
        v[i] = to_i32(x);
    }
    *out = v;
    *n = kv->arr_n;
    return LM_OK;
}

lm_status lm_gguf_get_arr_f32(const lm_gguf *g, const char *key, float **out, uint64_t *n) {
    void *copy;
    const lm_gguf_kv *kv = numeric_array(g, key, false, sizeof(float), &copy, "a numeric array");
    if (!kv) return LM_ERR;
    float *v = copy;
    uint64_t size = scalar_size(kv->arr_type);
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        const uint8_t *p = (const uint8_t *)kv->data + i * size;
        if (kv->arr_type == LM_GGUF_F32) memcpy(&v[i], p, 4);
        else if (kv->arr_type == LM_GGUF_F64) { double d; memcpy(&d, p, 8); v[i] = (float)d; }
        else { wide_int x = int_at(kv->arr_type, p); v[i] = x.neg ? -(float)x.mag : (float)x.mag; }
    }
    *out = v;
    *n = kv->arr_n;
    return LM_OK;
}
