/* libFuzzer driver for mg_ini: any input either parses, with every item
 * well formed (kinds in order, keys non-empty and trimmed, lines rising,
 * views inside the input unless a value was joined from continuation
 * lines), or fails with a line inside the input and a message that quotes
 * none of it. Each input is parsed twice and must give the same items; one
 * input in eight also fails an allocation to walk the error paths. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_err.h"
#include "mg_ini.h"
#include "mg_mem.h"

#define ENSURE(c)                                                                \
  do {                                                                           \
    if (!(c)) {                                                                  \
      fprintf(stderr, "fuzz_ini: invariant failed: %s (line %d)\n", #c, __LINE__); \
      abort();                                                                   \
    }                                                                            \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct st {
  const char *in;
  size_t n;
  uint32_t last_line, lines;
  uint64_t digest; /* of every item, to compare the two runs */
  bool seen_section;
  int items;
} st_t;

static bool blank(char c) { return c == ' ' || c == '\t'; }

static bool inside(const st_t *s, mg_str_t v) { return v.n == 0 || (v.p >= s->in && v.p + v.n <= s->in + s->n); }

static uint64_t mix(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

static int on_item(void *ud, const mg_ini_item_t *it) {
  st_t *s = ud;
  ENSURE(it->line >= 1 && it->line <= s->lines);
  ENSURE(it->line >= s->last_line);
  s->last_line = it->line;
  ENSURE(inside(s, it->section));
  ENSURE(!it->section.n || (!blank(it->section.p[0]) && !blank(it->section.p[it->section.n - 1])));
  ENSURE(!memchr(it->section.p, '\n', it->section.n) && !memchr(it->section.p, ']', it->section.n));
  if (it->kind == MG_INI_SECTION) {
    s->seen_section = true;
    ENSURE(it->key.n == 0 && it->value.n == 0);
  } else {
    ENSURE(s->seen_section);
    ENSURE(it->kind == MG_INI_PROPERTY || it->kind == MG_INI_SUBPROPERTY);
    ENSURE(it->key.n > 0 && inside(s, it->key));
    ENSURE(!blank(it->key.p[0]) && !blank(it->key.p[it->key.n - 1]));
    ENSURE(!memchr(it->key.p, '=', it->key.n) && !memchr(it->key.p, '\n', it->key.n));
    ENSURE(!it->value.n || (!blank(it->value.p[0]) && !blank(it->value.p[it->value.n - 1])));
    ENSURE(!memchr(it->value.p, '\0', it->value.n));
    /* A value without a newline is a view into the input; joined ones are not. */
    if (!memchr(it->value.p, '\n', it->value.n)) ENSURE(inside(s, it->value));
    if (it->kind == MG_INI_SUBPROPERTY) ENSURE(it->parent.n > 0 && inside(s, it->parent));
  }
  s->items++;
  s->digest = mix(s->digest, &it->kind, sizeof it->kind);
  s->digest = mix(s->digest, it->key.p, it->key.n);
  s->digest = mix(s->digest, it->value.p, it->value.n);
  s->digest = mix(s->digest, &it->line, sizeof it->line);
  return 0;
}

static int run(const char *in, size_t n, st_t *s, mg_ini_error_t *err) {
  memset(s, 0, sizeof *s);
  s->in = in;
  s->n = n;
  s->lines = 1;
  for (size_t i = 0; i < n; i++) s->lines += in[i] == '\n';
  s->digest = 0xcbf29ce484222325ull;
  return mg_ini_parse(in, n, on_item, s, err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 1 << 16) return 0;
  char *in = malloc(size ? size : 1);
  if (!in) return 0;
  memcpy(in, data, size);
  st_t a, b;
  mg_ini_error_t ea, eb;
  int ra = run(in, size, &a, &ea), rb = run(in, size, &b, &eb);
  ENSURE(ra == rb && a.digest == b.digest && a.items == b.items);
  ENSURE(ra == 0 || ra == MG_EPARSE);
  if (ra == MG_EPARSE) {
    ENSURE(ea.msg && ea.line >= 1 && ea.line <= a.lines);
    ENSURE(ea.line == eb.line && strcmp(ea.msg, eb.msg) == 0);
    /* Messages are fixed text, never built from the input (it may hold secrets). */
    static const char *known[] = {"NUL byte in line", "indented line without a property to continue",
                                  "expected 'name = value' in a sub-property", "empty sub-property name",
                                  "section header must end with ']'", "section name contains '[' or ']'",
                                  "expected 'name = value'", "empty property name", "property outside any [section]"};
    bool found = false;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) found = found || strcmp(ea.msg, known[i]) == 0;
    ENSURE(found);
  }
  /* Allocation failure: an error, never a crash or a leak. */
  uint64_t h = mix(0xcbf29ce484222325ull, data, size);
  if (h % 8 == 0) {
    mg_mem_fail_at(1);
    st_t c;
    int rc = run(in, size, &c, NULL);
    mg_mem_fail_at(0);
    ENSURE(rc == MG_ENOMEM || (size == 0 && rc == 0));
  }
  free(in);
  return 0;
}
