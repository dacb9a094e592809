/* mg_buf: growable byte buffer with a hard limit (like curl's dynbuf).
 * Always NUL-terminated after data[len] when data is non-NULL, so text
 * can be handed to C string functions. Pure. */
#ifndef MG_BUF_H
#define MG_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct mg_buf {
  char *data;
  size_t len;
  size_t cap;   /* allocated bytes, excluding the NUL slot */
  size_t limit; /* hard maximum of len; 0 = SIZE_MAX/2 */
} mg_buf_t;

void mg_buf_init(mg_buf_t *b, size_t limit);
void mg_buf_cleanup(mg_buf_t *b);
/* Wipe the bytes (secrets) before freeing. */
void mg_buf_cleanup_secret(mg_buf_t *b);
/* len = 0, keeps the allocation. */
void mg_buf_reset(mg_buf_t *b);
/* Ensure room for n more bytes: 0, MG_ETOOBIG past the limit, MG_ENOMEM. */
int mg_buf_reserve(mg_buf_t *b, size_t n);
int mg_buf_append(mg_buf_t *b, const void *p, size_t n);
int mg_buf_append_str(mg_buf_t *b, const char *s);
int mg_buf_append_byte(mg_buf_t *b, unsigned char c);
int mg_buf_printf(mg_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append a float as Prometheus writes one: the shortest decimal that reads
 * back to the same double, "NaN", "+Inf", "-Inf". */
int mg_buf_append_double(mg_buf_t *b, double v);
/* Drop the first n bytes (moves the rest down). */
void mg_buf_consume(mg_buf_t *b, size_t n);
/* Give up ownership of the data (caller frees with mg_free). */
char *mg_buf_steal(mg_buf_t *b, size_t *len);

#endif
