/* libFuzzer driver for mg_parse: every input goes through both formats and
 * every view handed out is checked against the body; tokens also go through
 * mg_parse_float, which must agree with strtod on what it accepts. Aborts on
 * the first broken invariant. */
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_err.h"
#include "mg_parse.h"

typedef struct fctx {
  const char *body;
  size_t len;
  uint32_t last_line;
} fctx_t;

#define ENSURE(c)                                                               \
  do {                                                                          \
    if (!(c)) {                                                                 \
      fprintf(stderr, "fuzz_parse: invariant failed: %s (line %d)\n", #c, __LINE__); \
      abort();                                                                  \
    }                                                                           \
  } while (0)

static int inside(const fctx_t *f, mg_str_t s) {
  return s.p >= f->body && s.n <= f->len && (size_t)(s.p - f->body) <= f->len - s.n;
}

static int on_sample(void *ud, const mg_parse_sample_t *s) {
  fctx_t *f = ud;
  ENSURE(inside(f, s->series));
  ENSURE(s->name.p == s->series.p && s->name.n <= s->series.n);
  ENSURE(mg_parse_valid_metric_name(s->name));
  ENSURE(s->nlabels <= MG_PARSE_MAX_LABELS);
  ENSURE(s->line >= f->last_line && s->line >= 1);
  f->last_line = s->line;
  if (s->nlabels) ENSURE(s->series.p[s->series.n - 1] == '}');
  for (size_t i = 0; i < s->nlabels; i++) {
    const mg_parse_label_t *l = &s->labels[i];
    ENSURE(mg_parse_valid_label_name(l->name));
    ENSURE(l->name.p > s->name.p && l->value.p > l->name.p);
    ENSURE(l->value.p + l->value.n < s->series.p + s->series.n);
    ENSURE(l->escaped == (memchr(l->value.p, '\\', l->value.n) != NULL));
    for (size_t j = 0; j < i; j++) ENSURE(!mg_str_eq(l->name, s->labels[j].name));
    /* Unescaping never grows: write into an exactly sized heap buffer. */
    char *out = malloc(l->value.n ? l->value.n : 1);
    ENSURE(mg_parse_unescape(l->value, out) <= l->value.n);
    free(out);
  }
  return 0;
}

static int on_meta(void *ud, const mg_parse_meta_t *m) {
  fctx_t *f = ud;
  ENSURE(inside(f, m->family) && inside(f, m->text));
  ENSURE(mg_parse_valid_metric_name(m->family));
  if (m->kind == MG_META_TYPE) ENSURE(m->text.n == 0);
  char *out = malloc(m->text.n ? m->text.n : 1);
  ENSURE(mg_parse_unescape_help(m->text, MG_FMT_OPENMETRICS, out) <= m->text.n);
  free(out);
  return 0;
}

/* Differential check of one token against strtod: whatever mg_parse_float
 * accepts as a decimal must be strtod's value bit for bit, and a plain
 * decimal that strtod consumes whole must be accepted unless it overflows. */
static void check_float(const char *tok, size_t n) {
  double got, want;
  int rc = mg_parse_float(tok, n, &got);
  if (n > 4096) return;
  char buf[4097];
  memcpy(buf, tok, n);
  buf[n] = '\0';
  if (strlen(buf) != n) return; /* embedded NUL: strtod would stop early */
  int plain = n > 0;
  for (size_t i = 0; i < n; i++) {
    char c = buf[i];
    if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) plain = 0;
  }
  if (!plain) {
    if (rc == 0 && !isnan(got) && !isinf(got)) ENSURE(!"non-decimal token parsed as a finite number");
    return;
  }
  char *end;
  want = strtod(buf, &end);
  int whole = *end == '\0';
  if (rc == 0) {
    ENSURE(whole);
    ENSURE(memcmp(&got, &want, sizeof got) == 0);
  } else if (whole && !isinf(want)) {
    ENSURE(!"strtod accepts a decimal that mg_parse_float rejects");
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const mg_parse_callbacks_t cb = {on_sample, on_meta};
  static int init;
  if (!init) {
    setlocale(LC_NUMERIC, "C");
    init = 1;
  }
  /* libFuzzer's buffer is exactly size bytes: ASan sees any overread. */
  const char *body = (const char *)data;
  for (int fmt = 0; fmt < 2; fmt++) {
    fctx_t f = {body, size, 1};
    mg_parse_error_t err;
    int rc = mg_parse(body, size, (mg_parse_format_t)fmt, &cb, &f, &err);
    ENSURE(rc == 0 || rc == MG_EPARSE);
    if (rc == MG_EPARSE) ENSURE(err.msg && err.line >= 1 && err.column >= 1);
  }
  /* Tokens between blanks and newlines exercise the float parser. */
  size_t i = 0;
  while (i < size) {
    size_t j = i;
    while (j < size && body[j] != ' ' && body[j] != '\n') j++;
    if (j > i) check_float(body + i, j - i);
    i = j + 1;
  }
  return 0;
}
