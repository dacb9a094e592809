/* mg_buf: growable buffer. Growth doubles capacity; every size sum is
 * checked against the limit before realloc. */
#include "mg_buf.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "mg_err.h"
#include "mg_mem.h"

#define DEFAULT_LIMIT (SIZE_MAX / 2)

void mg_buf_init(mg_buf_t *b, size_t limit) {
  b->data = NULL;
  b->len = b->cap = 0;
  b->limit = limit ? limit : DEFAULT_LIMIT;
}

void mg_buf_cleanup(mg_buf_t *b) {
  mg_free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

void mg_buf_cleanup_secret(mg_buf_t *b) {
  if (b->data) mg_mem_wipe(b->data, b->cap + 1);
  mg_buf_cleanup(b);
}

void mg_buf_reset(mg_buf_t *b) {
  b->len = 0;
  if (b->data) b->data[0] = '\0';
}

int mg_buf_reserve(mg_buf_t *b, size_t n) {
  if (n > b->limit || b->len > b->limit - n) return MG_ETOOBIG;
  size_t need = b->len + n;
  if (need <= b->cap && b->data) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need) cap = cap > b->limit / 2 ? b->limit : cap * 2;
  char *p = mg_realloc(b->data, cap + 1);
  if (!p) return MG_ENOMEM;
  b->data = p;
  b->cap = cap;
  b->data[b->len] = '\0';
  return 0;
}

int mg_buf_append(mg_buf_t *b, const void *p, size_t n) {
  int rc = mg_buf_reserve(b, n);
  if (rc) return rc;
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

int mg_buf_append_str(mg_buf_t *b, const char *s) { return mg_buf_append(b, s, strlen(s)); }

int mg_buf_append_byte(mg_buf_t *b, unsigned char c) { return mg_buf_append(b, &c, 1); }

int mg_buf_printf(mg_buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char tmp[256];
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return MG_EINVAL;
  if ((size_t)n < sizeof tmp) return mg_buf_append(b, tmp, (size_t)n);
  int rc = mg_buf_reserve(b, (size_t)n);
  if (rc) return rc;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

int mg_buf_append_double(mg_buf_t *b, double v) {
  if (isnan(v)) return mg_buf_append_str(b, "NaN");
  if (isinf(v)) return mg_buf_append_str(b, v > 0 ? "+Inf" : "-Inf");
  char tmp[40];
  /* The fewest significant digits that read back to v (Go's 'g' with
   * precision -1, which Prometheus's text format uses), then Go's choice
   * of notation: exponent form below 1e-4 or from 1e+06 on. */
  int digits = 17;
  for (int p = 1; p <= 17; p++) {
    snprintf(tmp, sizeof tmp, "%.*e", p - 1, v);
    if (strtod(tmp, NULL) == v) {
      digits = p;
      break;
    }
  }
  snprintf(tmp, sizeof tmp, "%.*e", digits - 1, v);
  int exp = atoi(strchr(tmp, 'e') + 1);
  if (exp >= -4 && exp < 6) snprintf(tmp, sizeof tmp, "%.*f", digits - 1 - exp > 0 ? digits - 1 - exp : 0, v);
  return mg_buf_append_str(b, tmp);
}

void mg_buf_consume(mg_buf_t *b, size_t n) {
  if (n >= b->len) {
    mg_buf_reset(b);
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
  b->data[b->len] = '\0';
}

char *mg_buf_steal(mg_buf_t *b, size_t *len) {
  char *p = b->data;
  if (len) *len = b->len;
  b->data = NULL;
  b->len = b->cap = 0;
  return p;
}
