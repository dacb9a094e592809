/* mg_str: views, hashing, intern table (open addressing, linear probing,
 * grows at 70% load). */
#include "mg_str.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "mg_mem.h"

int mg_str_cmp(mg_str_t a, mg_str_t b) {
  size_t n = a.n < b.n ? a.n : b.n;
  int c = n ? memcmp(a.p, b.p, n) : 0;
  if (c) return c;
  return a.n < b.n ? -1 : a.n > b.n;
}

bool mg_str_has_prefix(mg_str_t s, const char *prefix) {
  size_t n = strlen(prefix);
  return s.n >= n && memcmp(s.p, prefix, n) == 0;
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
