/* The lumen executable: LuaJIT with the core linked in.
 *
 * The core's symbols are exported from this executable (CMake: ENABLE_EXPORTS and
 * --whole-archive), so lua/lumen/ffi.lua binds them through ffi.C. The host puts
 * lua/ and pipelines/ on package.path and runs lua/lumen/cli.lua with the command
 * line; everything else — subcommands, generation loops, pipelines — is Lua. */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <luajit.h>

#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The source tree root: $LUMEN_ROOT, or the parent of the executable's directory
 * (build/lumen -> .), as long as it holds lua/lumen/cli.lua. */
static int find_root(char *out, size_t cap) {
    const char *env = getenv("LUMEN_ROOT");
    char probe[PATH_MAX + 64];
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return -1;
    exe[n] = 0;
    for (int up = 0; up < 3; up++) {
        char *s = strrchr(exe, '/');
        if (!s) break;
        *s = 0;
        snprintf(probe, sizeof probe, "%s/lua/lumen/cli.lua", exe);
        if (access(probe, R_OK) == 0) {
            snprintf(out, cap, "%s", exe);
            return 0;
        }
    }
    return -1;
}

static int traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    lua_getglobal(L, "debug");
    lua_getfield(L, -1, "traceback");
    lua_pushstring(L, msg);
    lua_pushinteger(L, 2);
    lua_call(L, 2, 1);
    return 1;
}

int main(int argc, char **argv) {
    /* A fixed threshold: blocks of 1 MiB and more (oneDNN's per-call GEMM
     * scratchpads, activation buffers) are mmapped and go back to the system when
     * freed. glibc's default raises the threshold after the first such free, and
     * the freed scratchpads then stay in each thread's arena: 5-10 MiB of peak
     * RSS on Gemma 3 with 2 threads, for no speed. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    char root[PATH_MAX];
    if (find_root(root, sizeof root) != 0) {
        fputs("lumen: error: cannot find lumen's Lua files (lua/lumen/cli.lua); set LUMEN_ROOT to the source tree\n", stderr);
        return 2;
    }
    setenv("LUMEN_ROOT", root, 1);
    lua_State *L = luaL_newstate();
    if (!L) { fputs("lumen: error: cannot create the Lua state\n", stderr); return 1; }
    luaL_openlibs(L);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_ON);

    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s/pipelines/?.lua;", root, root, root);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);

    lua_createtable(L, argc, 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_setglobal(L, "arg");

    lua_pushcfunction(L, traceback);
    char cli[PATH_MAX + 32];
    snprintf(cli, sizeof cli, "%s/lua/lumen/cli.lua", root);
    int status = luaL_loadfile(L, cli);
    if (status == 0) {
        for (int i = 1; i < argc; i++) lua_pushstring(L, argv[i]);
        status = lua_pcall(L, argc - 1, 1, 1);
    }
    int code = 0;
    if (status != 0) {
        fprintf(stderr, "lumen: error: %s\n", lua_tostring(L, -1));
        code = 1;
    } else if (lua_isnumber(L, -1)) {
        code = (int)lua_tointeger(L, -1);
    }
    fflush(stdout);
    lua_close(L);
    return code;
}
