/* Thread-local error message: the one way library code reports failure.
 * A function that fails sets the message and returns LM_ERR/NULL; the caller
 * reads it with lm_last_error(). Library code never calls exit() or abort(). */
#ifndef LM_ERROR_H
#define LM_ERROR_H
#include "lumen.h"

/* printf-style; always returns LM_ERR so callers can `return lm_err(...)`. */
lm_status lm_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prefix the current message with "<prefix>: " (for adding context on the way up). */
lm_status lm_err_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void lm_clear_error(void);

#endif
