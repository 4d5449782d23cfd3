/* SafeTensors and Hugging Face directories on bad input: every corrupt header
 * (truncated, a huge length, offsets out of range, a wrong dtype, a size that
 * does not match the shape, not JSON) and every broken directory (missing,
 * no config.json, a missing key, no tokenizer) is an error naming the file,
 * never a crash; a valid file reads back exactly. */
#define _GNU_SOURCE
#include "testutil.h"
#include "lumen.h"
#include "safetensors.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* header (padded with spaces to a multiple of 8) + data */
static size_t make(char *buf, size_t cap, const char *header, const void *data, size_t n) {
    size_t h = strlen(header), hp = (h + 7) & ~(size_t)7;
    uint64_t len = hp;
    if (8 + hp + n > cap) return 0;
    memcpy(buf, &len, 8);
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, ' ', hp - h);
    memcpy(buf + 8 + hp, data, n);
    return 8 + hp + n;
}

static void expect_error(const char *what, const char *header, size_t data_bytes, const char *needle) {
    static char buf[4096];
    float data[64] = {0};
    size_t n = make(buf, sizeof buf, header, data, data_bytes);
    lm_safetensors *st = lm_safetensors_open_memory(buf, n, "bad.safetensors");
    CHECK(st == NULL, "%s: accepted", what);
    if (st) { lm_safetensors_close(st); return; }
    CHECK(strstr(lm_last_error(), "bad.safetensors") && strstr(lm_last_error(), needle), "%s: message '%s' (wanted '%s')",
          what, lm_last_error(), needle);
}

static void check_headers(void) {
    static char buf[4096];
    const float data[6] = {1, 2, 3, 4, 5, 6};
    const char *good = "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                       "\"b\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[24,24]}}";
    size_t n = make(buf, sizeof buf, good, data, sizeof data);
    lm_safetensors *st = lm_safetensors_open_memory(buf, n, "good.safetensors");
    CHECK(st != NULL, "a valid file: %s", lm_last_error());
    if (st) {
        const lm_st_tensor *w = lm_safetensors_find(st, "w");
        CHECK(lm_safetensors_n_tensors(st) == 2 && w && w->dtype == LM_F32 && w->ndim == 2 && w->shape[0] == 2 &&
              w->shape[1] == 3 && !memcmp(w->data, data, sizeof data), "w reads back");
        CHECK(lm_safetensors_find(st, "nope") == NULL, "an absent name");
        lm_safetensors_close(st);
    }
    /* every truncation of the valid file: an error or (at full length) the file */
    for (size_t k = 0; k < n; k++) {
        st = lm_safetensors_open_memory(buf, k, "cut.safetensors");
        CHECK(st == NULL, "cut at %zu of %zu bytes: accepted", k, n);
        lm_safetensors_close(st);
    }
    /* bytes of the header flipped at random: never a crash (ASan watches), whatever the answer */
    uint64_t rng = 7;
    for (int i = 0; i < 3000; i++) {
        char tmp[4096];
        memcpy(tmp, buf, n);
        for (int f = 0; f < 3; f++) tmp[8 + tu_rand(&rng) % (n - 8)] = (char)tu_rand(&rng);
        lm_safetensors_close(lm_safetensors_open_memory(tmp, n, "flip.safetensors"));
    }
    uint64_t huge = 1ull << 60;
    memcpy(buf, &huge, 8);
    st = lm_safetensors_open_memory(buf, n, "huge.safetensors");
    CHECK(st == NULL && strstr(lm_last_error(), "huge.safetensors") && strstr(lm_last_error(), "header claims"),
          "huge header length: %s", lm_last_error());
    lm_safetensors_close(st);
    st = lm_safetensors_open_memory(buf, 5, "tiny.safetensors");
    CHECK(st == NULL && strstr(lm_last_error(), "too short"), "5 bytes: %s", lm_last_error());

    expect_error("not JSON", "{\"w\": {\"dtype\": ", 0, "not valid JSON");
    expect_error("not an object", "[1, 2, 3]", 0, "not a JSON object");
    expect_error("wrong dtype", "{\"w\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype 'Q4'");
    expect_error("offsets past the end", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "outside the data section");
    expect_error("offsets reversed", "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, "outside the data section");
    expect_error("size and shape disagree", "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "need 12");
    expect_error("negative dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "invalid shape");
    expect_error("fractional offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0.5,8]}}", 8, "invalid data_offsets");
    expect_error("no dtype", "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "needs a string 'dtype'");
    expect_error("huge shape", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1000000000,1000000000,1000000],\"data_offsets\":[0,8]}}", 8, "");
    expect_error("five dims", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, "5 dimensions");
}

static char tmpdir[256];

static void write_file(const char *rel, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, rel);
    FILE *f = fopen(p, "wb");
    if (f) { fputs(text, f); fclose(f); }
}

static void expect_load_error(const char *what, const char *path, const char *needle) {
    lm_model *m = lm_model_load(path, NULL);
    CHECK(m == NULL, "%s: loaded", what);
    if (m) { lm_model_free(m); return; }
    CHECK(strstr(lm_last_error(), needle) != NULL, "%s: message '%s' (wanted '%s')", what, lm_last_error(), needle);
}

static void check_directories(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lumen_test_st_%d", (int)getpid());
    mkdir(tmpdir, 0700);
    char p[512];
    snprintf(p, sizeof p, "%s/nonexistent", tmpdir);
    expect_load_error("a missing directory", p, "nonexistent");
    expect_load_error("no config.json", tmpdir, "config.json");
    write_file("config.json", "{\"model_type\": \"bert\", \"hidden_size\": 384,");
    expect_load_error("config.json not JSON", tmpdir, "config.json: not valid JSON");
    write_file("config.json", "{\"hidden_size\": 384}");
    expect_load_error("no model_type", tmpdir, "config.json: missing key 'model_type'");
    write_file("config.json", "{\"model_type\": \"t5\"}");
    write_file("model.safetensors", "");
    expect_load_error("an unknown architecture", tmpdir, "model.safetensors");
    char st[4096];
    const float d[2] = {0};
    size_t n = make(st, sizeof st, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, sizeof d);
    snprintf(p, sizeof p, "%s/model.safetensors", tmpdir);
    FILE *f = fopen(p, "wb");
    if (f) { fwrite(st, 1, n - 3, f); fclose(f); }   /* cut short */
    write_file("config.json", "{\"model_type\": \"bert\"}");
    expect_load_error("a truncated model.safetensors", tmpdir, "model.safetensors");
    f = fopen(p, "wb");
    if (f) { fwrite(st, 1, n, f); fclose(f); }
    write_file("config.json", "{\"model_type\": \"t5\"}");
    expect_load_error("an unknown architecture", tmpdir, "architecture 't5' is not supported");
    write_file("config.json", "{\"model_type\": \"bert\", \"num_hidden_layers\": 6, \"hidden_size\": 384}");
    expect_load_error("a missing key", tmpdir, "config.json: missing key 'intermediate_size'");
    write_file("config.json", "{\"model_type\": \"bert\", \"num_hidden_layers\": 6, \"hidden_size\": 384, \"intermediate_size\": 1536,"
                              " \"num_attention_heads\": 12, \"max_position_embeddings\": 512}");
    expect_load_error("a missing tensor", tmpdir, "missing tensor 'embeddings.word_embeddings.weight'");

    /* the real weights beside a broken tokenizer */
    const char *env = getenv("LUMEN_MODELS");
    char real[512];
    if (env && *env) snprintf(real, sizeof real, "%s/all-MiniLM-L6-v2", env);
    else snprintf(real, sizeof real, "%sall-MiniLM-L6-v2", tu_path("models/"));
    char src[600];
    snprintf(src, sizeof src, "%s/model.safetensors", real);
    if (access(src, R_OK) == 0) {
        unlink(p);
        CHECK(symlink(src, p) == 0, "symlink");
        snprintf(src, sizeof src, "%s/config.json", real);
        char cfg[600];
        snprintf(cfg, sizeof cfg, "%s/config.json", tmpdir);
        unlink(cfg);
        CHECK(symlink(src, cfg) == 0, "symlink");
        expect_load_error("no tokenizer", tmpdir, "vocab.txt");
        write_file("tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}");
        expect_load_error("not a WordPiece tokenizer", tmpdir, "tokenizer.json: model.type is not \"WordPiece\"");
        write_file("tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[CLS]\": 0, \"a\": 1}}}");
        expect_load_error("a vocabulary without [SEP]", tmpdir, "lacks [CLS], [SEP] or [UNK]");
        unlink(cfg);
    } else {
        printf("skipping the tokenizer cases: %s is not fetched (scripts/fetch_model.py minilm)\n", src);
    }
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json"};
    for (size_t i = 0; i < 3; i++) { snprintf(p, sizeof p, "%s/%s", tmpdir, files[i]); unlink(p); }
    rmdir(tmpdir);
}

int main(void) {
    check_headers();
    check_directories();
    return tu_finish("safetensors");
}
