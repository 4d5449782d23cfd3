/* lumen command line: `lumen generate` and `lumen chat`.
 * Text streams to stdout; statistics and errors go to stderr. Usage errors and
 * bad models exit with status 2. */
#define _GNU_SOURCE
#include "lumen.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MODEL_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"

static const char *USAGE =
    "usage: lumen generate [-m MODEL] -p TEXT [options]\n"
    "       lumen chat [-m MODEL] [options] TEXT\n"
    "options:\n"
    "  -m, --model PATH      GGUF model (default: $LUMEN_MODEL or models/" DEFAULT_MODEL_FILE ")\n"
    "  -p, --prompt TEXT     prompt text (generate)\n"
    "  -n, --n-predict N     tokens to generate (default 256)\n"
    "  -t, --threads N       compute threads (default: all cores)\n"
    "  -c, --ctx N           context size (default: prompt + n, at most the model's)\n"
    "      --temp T          temperature; 0 = greedy (default 0.8)\n"
    "      --top-k K         (default 40)   --top-p P (default 0.95)   --min-p P (default 0.05)\n"
    "      --repeat-penalty R (default 1.0) --seed S\n"
    "      --no-stats        do not print speed statistics to stderr\n";

static int die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("lumen: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long parse_int(const char *opt, const char *v, long lo, long hi) {
    if (!v) die("%s needs a value", opt);
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end) die("%s: '%s' is not an integer", opt, v);
    if (x < lo || x > hi) die("%s: %ld is out of range [%ld, %ld]", opt, x, lo, hi);
    return x;
}

static double parse_num(const char *opt, const char *v, double lo, double hi) {
    if (!v) die("%s needs a value", opt);
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x)) die("%s: '%s' is not a number", opt, v);
    if (x < lo || x > hi) die("%s: %g is out of range [%g, %g]", opt, x, lo, hi);
    return x;
}

/* models/<default> next to the executable's parent directory (build/..). */
static char *default_model(void) {
    const char *env = getenv("LUMEN_MODEL");
    if (env && *env) return strdup(env);
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        for (int up = 0; up < 2; up++) { char *s = strrchr(exe, '/'); if (s) *s = 0; }
        char *path;
        if (asprintf(&path, "%s/models/%s", exe, DEFAULT_MODEL_FILE) > 0) {
            if (access(path, F_OK) == 0) return path;
            free(path);
        }
    }
    char *home = getenv("HOME"), *path;
    if (home && asprintf(&path, "%s/.cache/lumen/models/%s", home, DEFAULT_MODEL_FILE) > 0) return path;
    return strdup("models/" DEFAULT_MODEL_FILE);
}

/* Built-in chat formatting until templates are rendered from the model's own
 * Jinja (lua/): ChatML with the template's default system prompt, or Gemma turns. */
static char *chat_prompt(const lm_model *m, const char *user) {
    lm_model_info info;
    lm_model_get_info(m, &info);
    const char *tpl = info.chat_template ? info.chat_template : "";
    char *out = NULL;
    if (strstr(tpl, "<start_of_turn>")) {
        if (asprintf(&out, "<start_of_turn>user\n%s<end_of_turn>\n<start_of_turn>model\n", user) < 0) return NULL;
        return out;
    }
    char system[1024] = "";
    const char *s = strstr(tpl, "<|im_start|>system\n");
    if (s) {
        s += strlen("<|im_start|>system\n");
        const char *e = strstr(s, "<|im_end|>");
        if (e && (size_t)(e - s) < sizeof system && !memchr(s, '{', (size_t)(e - s))) {
            memcpy(system, s, (size_t)(e - s));
            system[e - s] = 0;
        }
    }
    if (system[0]) {
        if (asprintf(&out, "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", system, user) < 0) return NULL;
    } else if (asprintf(&out, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", user) < 0) {
        return NULL;
    }
    return out;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    bool chat = !strcmp(cmd, "chat");
    if (!chat && strcmp(cmd, "generate")) die("unknown command '%s' (try: lumen --help)", cmd);

    char *model_path = NULL;
    const char *prompt = NULL;
    long n_predict = 256, threads = 0, n_ctx = 0;
    bool stats = true, seed_set = false;
    lm_sampler_params sp = lm_sampler_default_params();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!v) die("%s needs a value", a); model_path = strdup(v); i++; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { if (!v) die("%s needs a value", a); prompt = v; i++; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) { n_predict = parse_int(a, v, 0, 1 << 20); i++; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { threads = parse_int(a, v, 1, 256); i++; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) { n_ctx = parse_int(a, v, 1, 1 << 24); i++; }
        else if (!strcmp(a, "--temp")) { sp.temperature = (float)parse_num(a, v, 0, 100); i++; }
        else if (!strcmp(a, "--top-k")) { sp.top_k = (int32_t)parse_int(a, v, 0, INT32_MAX); i++; }
        else if (!strcmp(a, "--top-p")) { sp.top_p = (float)parse_num(a, v, 0, 1); i++; }
        else if (!strcmp(a, "--min-p")) { sp.min_p = (float)parse_num(a, v, 0, 1); i++; }
        else if (!strcmp(a, "--repeat-penalty")) { sp.repeat_penalty = (float)parse_num(a, v, 0.01, 100); i++; }
        else if (!strcmp(a, "--seed")) { sp.seed = (uint64_t)parse_int(a, v, 0, LONG_MAX); seed_set = true; i++; }
        else if (!strcmp(a, "--no-stats")) stats = false;
        else if (a[0] == '-' && a[1]) die("unknown option '%s' (try: lumen --help)", a);
        else if (chat && !prompt) prompt = a;
        else die("unexpected argument '%s'", a);
    }
    if (!prompt) die(chat ? "chat needs a message: lumen chat \"TEXT\"" : "generate needs a prompt: -p TEXT");
    if (!seed_set) sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (!model_path) model_path = default_model();

    lm_model_params mp = {.n_threads = (int)threads};
    lm_model *model = lm_model_load(model_path, &mp);
    if (!model) die("%s", lm_last_error());

    char *text = chat ? chat_prompt(model, prompt) : strdup(prompt);
    if (!text) die("out of memory");
    size_t len = strlen(text);
    int64_t cap = (int64_t)len + 16;
    int32_t *toks = malloc((size_t)cap * sizeof *toks);
    int64_t n_prompt = toks ? lm_tokenize(model, text, len, toks, cap, true, chat) : INT64_MIN;
    if (n_prompt == INT64_MIN) die("tokenize: %s", lm_last_error());
    if (n_prompt < 0) die("tokenize: internal buffer too small");
    if (n_prompt == 0) die("the prompt is empty after tokenization");

    lm_model_info info;
    lm_model_get_info(model, &info);
    if (n_ctx == 0) {
        n_ctx = n_prompt + n_predict;
        if (n_ctx > info.n_ctx_train) n_ctx = info.n_ctx_train;
    }
    if (n_prompt >= n_ctx) die("the prompt has %lld tokens; it does not fit a context of %ld", (long long)n_prompt, n_ctx);
    lm_session_params spar = {.n_ctx = (int32_t)n_ctx};
    lm_session *sess = lm_session_new(model, &spar);
    if (!sess) die("%s", lm_last_error());
    lm_sampler *smp = lm_sampler_new(&sp);
    if (!smp) die("%s", lm_last_error());

    if (!chat) { fputs(prompt, stdout); fflush(stdout); }
    double t0 = now_s();
    if (lm_session_eval(sess, toks, (int32_t)n_prompt)) die("%s", lm_last_error());
    double t1 = now_s(), t_first = 0;
    for (int64_t i = 0; i < n_prompt; i++) lm_sampler_accept(smp, toks[i]);

    /* Pieces are held back while they end inside a UTF-8 character. */
    char pend[256];
    size_t npend = 0;
    long n_gen = 0;
    while (n_gen < n_predict && lm_session_pos(sess) < n_ctx) {
        int32_t tok = lm_sampler_sample(smp, lm_session_logits(sess), info.n_vocab);
        if (tok < 0) die("%s", lm_last_error());
        if (n_gen == 0) t_first = now_s();
        n_gen++;
        if (lm_token_is_eog(model, tok)) break;
        lm_sampler_accept(smp, tok);
        char piece[128];
        int32_t k = lm_token_to_piece(model, tok, piece, sizeof piece, false);
        if (k > 0) {
            if (npend + (size_t)k > sizeof pend) { fwrite(pend, 1, npend, stdout); npend = 0; }
            memcpy(pend + npend, piece, (size_t)k);
            npend += (size_t)k;
            size_t ok = lm_utf8_complete_len(pend, npend);
            fwrite(pend, 1, ok, stdout);
            memmove(pend, pend + ok, npend - ok);
            npend -= ok;
            fflush(stdout);
        }
        if (n_gen == n_predict) break;
        if (lm_session_eval(sess, &tok, 1)) die("%s", lm_last_error());
    }
    fwrite(pend, 1, npend, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    double t2 = now_s();
    if (stats) {
        double pp = t1 - t0, dec = t2 - (t_first ? t_first : t2);
        long n_dec = n_gen > 1 ? n_gen - 1 : 0; /* tokens decoded after the first */
        fprintf(stderr, "\nprompt: %lld tokens in %.3f s (%.1f tok/s) | decode: %ld tokens in %.3f s (%.1f tok/s) | time to first token: %.1f ms | threads: %ld\n",
                (long long)n_prompt, pp, n_prompt / pp, n_dec, dec, dec > 0 ? n_dec / dec : 0.0,
                (t_first ? t_first - t0 : pp) * 1e3, threads ? threads : (long)sysconf(_SC_NPROCESSORS_ONLN));
    }
    lm_sampler_free(smp);
    lm_session_free(sess);
    lm_model_free(model);
    free(toks);
    free(text);
    free(model_path);
    return 0;
}
