/* mg_log: leveled logfmt logging to stderr: `ts=… level=… mod=… event=… k=v`.
 * Owns the global level and the output stream. Callers never pass secrets:
 * credential values go through mg_log_mask() first. */
#ifndef MG_LOG_H
#define MG_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

typedef enum { MG_LOG_DEBUG = 0, MG_LOG_INFO, MG_LOG_WARN, MG_LOG_ERROR, MG_LOG_OFF } mg_log_level_t;

extern mg_log_level_t mg_log_level_;

/* Parse "debug"/"info"/"warn"/"error"/"off"; returns 0 or MG_EINVAL. */
int mg_log_set_level_name(const char *name);
void mg_log_set_level(mg_log_level_t lvl);
/* Redirect output (tests); NULL restores stderr. Borrowed until reset. */
void mg_log_set_stream(FILE *f);

/* fmt formats the tail of the line: key=value pairs. Values that may hold
 * spaces or quotes must be passed through %s with mg_log_q() buffers or
 * written as key="%s" by the caller when known to be safe. */
void mg_log_write(mg_log_level_t lvl, const char *mod, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void mg_log_vwrite(mg_log_level_t lvl, const char *mod, const char *event, const char *fmt, va_list ap);

/* Level check happens before any formatting. */
#define MG_LOG(lvl, mod, event, ...)                                         \
  do {                                                                       \
    if ((lvl) >= mg_log_level_) mg_log_write((lvl), (mod), (event), __VA_ARGS__); \
  } while (0)
#define MG_DEBUG(mod, event, ...) MG_LOG(MG_LOG_DEBUG, mod, event, __VA_ARGS__)
#define MG_INFO(mod, event, ...) MG_LOG(MG_LOG_INFO, mod, event, __VA_ARGS__)
#define MG_WARN(mod, event, ...) MG_LOG(MG_LOG_WARN, mod, event, __VA_ARGS__)
#define MG_ERROR(mod, event, ...) MG_LOG(MG_LOG_ERROR, mod, event, __VA_ARGS__)

/* Quote a value for logfmt into out (always NUL-terminated, truncated with
 * "…" when it does not fit): wraps in quotes and escapes `"`, `\` and
 * control bytes when needed. Returns out. */
char *mg_log_q(char *out, size_t outsz, const char *s, size_t n);
/* Mask a credential identifier for display: first 4 characters then "****"
 * (e.g. "ASIA****"). Never pass a secret key or token here: those are not
 * logged at all. Returns out. */
char *mg_log_mask(char *out, size_t outsz, const char *s);

/* Rate limiting for repeated warnings: returns 1 when a message keyed by
 * *last_ms may be logged now (at most once per interval_ms) and updates it. */
int mg_log_ratelimit(unsigned long long *last_ms, unsigned long long now_ms, unsigned long long interval_ms);

#endif
