#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char g_msg[1024];

const char *lm_last_error(void) { return g_msg[0] ? g_msg : "no error"; }

void lm_clear_error(void) { g_msg[0] = 0; }

lm_status lm_err(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    return LM_ERR;
}

lm_status lm_err_prefix(const char *fmt, ...) {
    char prefix[512], old[sizeof g_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_msg, sizeof old);
    size_t n = strlen(prefix);
    if (n > sizeof g_msg - 3) n = sizeof g_msg - 3;
    memcpy(g_msg, prefix, n);
    memcpy(g_msg + n, ": ", 2);
    size_t room = sizeof g_msg - n - 3, m = strlen(old);
    if (m > room) m = room;
    memcpy(g_msg + n + 2, old, m);
    g_msg[n + 2 + m] = 0;
    return LM_ERR;
}
