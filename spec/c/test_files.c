/* File helpers of the public API: lm_dir_files (the documents of a folder). */
#include "testutil.h"
#include "lumen.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void touch(const char *dir, const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (f) { fputs("x", f); fclose(f); }
}

int main(void) {
    char dir[] = "/tmp/lumen_files_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    touch(dir, "b.txt");
    touch(dir, "a.txt");
    touch(dir, ".hidden");
    char sub[512];
    snprintf(sub, sizeof sub, "%s/folder", dir);
    mkdir(sub, 0755);
    char buf[64];
    int64_t n = lm_dir_files(dir, buf, sizeof buf);
    CHECK(n == 12 && memcmp(buf, "a.txt\0b.txt\0", 12) == 0, "sorted regular files, no hidden ones or folders: %lld", (long long)n);
    CHECK(lm_dir_files(dir, buf, 4) == 12, "a short buffer: the size needed");
    CHECK(lm_dir_files(dir, NULL, 0) == 12, "no buffer: the size needed");
    CHECK(lm_dir_files(sub, buf, sizeof buf) == 0, "an empty folder");
    CHECK(lm_dir_files("/nonexistent/folder", buf, sizeof buf) == -1 && strstr(lm_last_error(), "/nonexistent/folder"),
          "a missing folder is named: %s", lm_last_error());
    char p[512];
    snprintf(p, sizeof p, "%s/a.txt", dir);
    CHECK(lm_dir_files(p, buf, sizeof buf) == -1, "a file is not a folder");
    unlink(p);
    snprintf(p, sizeof p, "%s/b.txt", dir); unlink(p);
    snprintf(p, sizeof p, "%s/.hidden", dir); unlink(p);
    rmdir(sub);
    rmdir(dir);
    return tu_finish("files");
}
