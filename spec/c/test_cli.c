/* The command line as a user meets it: exit codes and one-line errors. */
#include "testutil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char out[1 << 16];

/* Runs `lumen ARGS`, capturing stderr+stdout; returns the exit status. */
static int run(const char *args) {
    char cmd[4096];
    const char *bin = getenv("LUMEN_BIN");
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", bin ? bin : "build/lumen", args);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = 0;
    int st = p ? pclose(p) : -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(void) {
    CHECK(run("generate -m /nonexistent/model.gguf -p hi") == 2 && strstr(out, "/nonexistent/model.gguf"), "missing model: %s", out);
    FILE *f = fopen("/tmp/lumen_corrupt.gguf", "wb");
    fputs("GGUF\x03\0\0\0garbage", f);
    fclose(f);
    CHECK(run("generate -m /tmp/lumen_corrupt.gguf -p hi") == 2 && strstr(out, "lumen_corrupt.gguf"), "corrupt model: %s", out);
    f = fopen("/tmp/lumen_notgguf.gguf", "wb");
    fputs("hello, I am not a model at all", f);
    fclose(f);
    CHECK(run("generate -m /tmp/lumen_notgguf.gguf -p hi") == 2 && strstr(out, "GGUF"), "not a GGUF: %s", out);
    CHECK(run("generate --frobnicate -p hi") == 2 && strstr(out, "unknown option"), "unknown flag: %s", out);
    CHECK(run("generate -p hi -n -5") == 2 && strstr(out, "-n"), "negative -n: %s", out);
    CHECK(run("generate -p hi -n lots") == 2 && strstr(out, "not an integer"), "non-numeric -n: %s", out);
    CHECK(run("generate -p hi --temp -1") == 2, "negative temperature: %s", out);
    CHECK(run("generate -n 5") == 2 && strstr(out, "prompt"), "no prompt: %s", out);
    CHECK(run("frobnicate") == 2 && strstr(out, "unknown command"), "unknown command: %s", out);
    CHECK(run("") == 2, "no command");
    for (char *c = out; *c; c++) if (*c == '\n' && c[1]) { CHECK(strstr(out, "usage") != NULL, "errors are one line"); break; }

    /* the real thing, when the default model is there: greedy text and stats */
    if (run("generate -p \"The capital of France is\" -n 8 --temp 0 --seed 1") == 0) {
        CHECK(strstr(out, "The capital of France is") && strstr(out, "decode:") && strstr(out, "tok/s"), "generate output: %s", out);
        char first[sizeof out];
        strcpy(first, out);
        char *a = strstr(first, "\nprompt:");
        if (a) *a = 0;
        run("generate -p \"The capital of France is\" -n 8 --temp 0 --seed 1");
        char *b = strstr(out, "\nprompt:");
        if (b) *b = 0;
        CHECK(!strcmp(first, out), "greedy output is deterministic");
        CHECK(run("chat -n 16 --temp 0 \"Say hello.\"") == 0 && strlen(out) > 10, "chat: %s", out);
        /* the REPL: commands, two turns, Ctrl-D (end of input) leaves with status 0 */
        FILE *in = fopen("/tmp/lumen_repl_in.txt", "w");
        fputs("What is 2+2?\n/stats\n/system Answer with one word.\nName a color.\n/reset\n\n", in);
        fclose(in);
        CHECK(run("chat -n 12 --temp 0 < /tmp/lumen_repl_in.txt") == 0, "repl exit: %s", out);
        CHECK(strstr(out, "(stats on)") && strstr(out, "system prompt set") && strstr(out, "(conversation reset)") &&
              strstr(out, "decode:"), "repl commands: %s", out);
        /* the examples run; the banned-phrase sampler keeps its phrase out */
        CHECK(run("run examples/entropy_sampler.lua \"Write a haiku about the sea.\"") == 0 && strlen(out) > 20, "entropy example: %s", out);
        CHECK(run("run examples/banned_phrase.lua \"Tell me about the ocean.\"") == 0 && strstr(out, "rewinds") &&
              !strstr(out, "ocean") && !strstr(out, "Ocean"), "banned-phrase example: %s", out);
    } else {
        CHECK(0, "default model not runnable: %s", out);
    }

    /* lumen --debug run: a script's error comes with a traceback and status 1 (without
     * --debug: one line, spec/serve/test_cli_user.py); a C error
     * reaches Lua as a Lua error with the C message */
    f = fopen("/tmp/lumen_bad_script.lua", "w");
    fputs("local function inner() error('boom from the script') end\ninner()\n", f);
    fclose(f);
    CHECK(run("--debug run /tmp/lumen_bad_script.lua") == 1 && strstr(out, "boom from the script") && strstr(out, "stack traceback"), "script error: %s", out);
    f = fopen("/tmp/lumen_c_error.lua", "w");
    fputs("local ok, err = pcall(require('lumen').model.load, '/tmp/lumen_notgguf.gguf')\n"
          "print(ok, err)\nreturn ok and 3 or 0\n", f);
    fclose(f);
    CHECK(run("run /tmp/lumen_c_error.lua") == 0 && strstr(out, "false") && strstr(out, "GGUF"), "C error as a Lua error: %s", out);
    CHECK(run("run /nonexistent/script.lua") == 2 && strstr(out, "/nonexistent/script.lua"), "missing script: %s", out);
    f = fopen("/tmp/lumen_args.lua", "w");
    fputs("print(select('#', ...), arg[1], arg[2])\n", f);
    fclose(f);
    CHECK(run("run /tmp/lumen_args.lua one two") == 0 && strstr(out, "2\tone\ttwo"), "script arguments: %s", out);
    return tu_finish("cli");
}
