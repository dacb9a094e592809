/* mg_str: views, hashing, intern table (open addressing, linear probing,
 * grows at 70% load). */
#include "mg_str.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "mg_mem.h"

bool mg_str_has_prefix(mg_str_t s, const char *prefix) {
  size_t n = strlen(prefix);
  return s.n >= n && memcmp(s.p, prefix, n) == 0;
}

size_t mg_utf8_seq(const unsigned char *p, size_t avail) {
  unsigned char c = p[0], lo = 0x80, hi = 0xBF;
  size_t n;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0; /* no overlongs */
    if (c == 0xED) hi = 0x9F; /* no surrogates */
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
  } else {
    return 0;
  }
  if (avail < n || p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < n; i++)
    if ((p[i] & 0xC0) != 0x80) return 0;
  return n;
}

size_t mg_utf8_put(char *o, unsigned cp) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (char)(0xC0 | cp >> 6);
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | cp >> 12);
    o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | cp >> 18);
  o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
  o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
  o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

uint64_t mg_hash64(const void *p, size_t n, uint64_t seed) { return XXH3_64bits_withSeed(p, n, seed); }

struct mg_intern_entry {
  uint64_t hash;
  size_t len;
  char s[];
};

void mg_intern_init(mg_intern_t *t) {
  t->slots = NULL;
  t->cap = t->count = t->bytes = 0;
}

void mg_intern_cleanup(mg_intern_t *t) {
  for (size_t i = 0; i < t->cap; i++) mg_free(t->slots[i]);
  mg_free(t->slots);
  mg_intern_init(t);
}

static int grow(mg_intern_t *t) {
  size_t ncap = t->cap ? t->cap * 2 : 64;
  mg_intern_entry_t **ns = mg_calloc(ncap, sizeof *ns);
  if (!ns) return -1;
  for (size_t i = 0; i < t->cap; i++) {
    mg_intern_entry_t *e = t->slots[i];
    if (!e) continue;
    size_t j = e->hash & (ncap - 1);
    while (ns[j]) j = (j + 1) & (ncap - 1);
    ns[j] = e;
  }
  mg_free(t->slots);
  t->bytes += (ncap - t->cap) * sizeof *ns;
  t->slots = ns;
  t->cap = ncap;
  return 0;
}

const char *mg_intern(mg_intern_t *t, const char *p, size_t n) {
  if ((t->count + 1) * 10 > t->cap * 7 && grow(t) != 0) return NULL;
  uint64_t h = mg_hash64(p, n, 0);
  size_t j = h & (t->cap - 1);
  for (;;) {
    mg_intern_entry_t *e = t->slots[j];
    if (!e) break;
    if (e->hash == h && e->len == n && memcmp(e->s, p, n) == 0) return e->s;
    j = (j + 1) & (t->cap - 1);
  }
  if (n > SIZE_MAX - sizeof(mg_intern_entry_t) - 1) return NULL;
  mg_intern_entry_t *e = mg_malloc(sizeof *e + n + 1);
  if (!e) return NULL;
  e->hash = h;
  e->len = n;
  if (n) memcpy(e->s, p, n);
  e->s[n] = '\0';
  t->slots[j] = e;
  t->count++;
  t->bytes += sizeof *e + n + 1;
  return e->s;
}

size_t mg_intern_len(const char *interned) {
  const mg_intern_entry_t *e = (const mg_intern_entry_t *)(const void *)(interned - offsetof(mg_intern_entry_t, s));
  return e->len;
}
