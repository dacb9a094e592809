/* mg_str: string views (pointer + length, not NUL-terminated), the 64-bit
 * hash used everywhere (XXH3), and an intern table whose strings are
 * compared by pointer. Pure. */
#ifndef MG_STR_H
#define MG_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct mg_str {
  const char *p;
  size_t n;
} mg_str_t;

#define MG_STR_LIT(s) ((mg_str_t){(s), sizeof(s) - 1})
static inline mg_str_t mg_str(const char *s) { return (mg_str_t){s, s ? strlen(s) : 0}; }
static inline mg_str_t mg_str_n(const char *s, size_t n) { return (mg_str_t){s, n}; }
static inline bool mg_str_eq(mg_str_t a, mg_str_t b) {
  return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}
static inline bool mg_str_eq_c(mg_str_t a, const char *b) { return mg_str_eq(a, mg_str(b)); }
/* A label as two views; the unit relabeling and encoding work on. */
typedef struct mg_label {
  mg_str_t name;
  mg_str_t value;
} mg_label_t;

/* Byte-wise comparison (the order remote write requires for label names).
 * Inline: label names are compared on every sample, and most pairs differ
 * in their first byte. */
static inline int mg_str_cmp(mg_str_t a, mg_str_t b) {
  if (a.n && b.n && a.p[0] != b.p[0]) return (unsigned char)a.p[0] < (unsigned char)b.p[0] ? -1 : 1;
  size_t n = a.n < b.n ? a.n : b.n;
  int c = n ? memcmp(a.p, b.p, n) : 0;
  if (c) return c;
  return a.n < b.n ? -1 : a.n > b.n;
}
bool mg_str_has_prefix(mg_str_t s, const char *prefix);

/* UTF-8 (the rules of Go's utf8.Valid: no overlongs, no surrogates,
 * nothing above U+10FFFF). Length of the multi-byte sequence at p
 * (p[0] >= 0x80) within avail bytes, or 0 when it is not well-formed. */
size_t mg_utf8_seq(const unsigned char *p, size_t avail);
/* Encode code point cp (<= 0x10FFFF) into o, which has room for 4 bytes;
 * returns the bytes written. */
size_t mg_utf8_put(char *o, unsigned cp);

/* 64-bit hash of bytes (XXH3, seedable). */
uint64_t mg_hash64(const void *p, size_t n, uint64_t seed);

/* Intern table: each distinct byte string is stored once (NUL-terminated)
 * and lives until mg_intern_cleanup; equal strings give equal pointers. */
typedef struct mg_intern_entry mg_intern_entry_t;
typedef struct mg_intern {
  mg_intern_entry_t **slots;
  size_t cap, count;
  size_t bytes; /* memory held, for self-metrics */
} mg_intern_t;

void mg_intern_init(mg_intern_t *t);
void mg_intern_cleanup(mg_intern_t *t);
/* Returns the interned copy (borrowed until cleanup), or NULL on OOM. */
const char *mg_intern(mg_intern_t *t, const char *p, size_t n);
/* Length of an interned string in O(1). */
size_t mg_intern_len(const char *interned);

#endif
