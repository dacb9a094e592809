/* mg_mem: malloc wrappers with an allocation counter for fault injection,
 * the arena, and secret wiping. No global state besides the two counters. */
#include "mg_mem.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static uint64_t alloc_count;
static uint64_t fail_at; /* absolute allocation number to fail, 0 = never */

void mg_mem_trim(void) {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

void mg_mem_fail_at(uint64_t nth) { fail_at = nth ? alloc_count + nth : 0; }
uint64_t mg_mem_alloc_count(void) { return alloc_count; }

static int injected_failure(void) {
  alloc_count++;
  return fail_at != 0 && alloc_count == fail_at;
}

void *mg_malloc(size_t n) {
  if (injected_failure()) return NULL;
  return malloc(n ? n : 1);
}

void *mg_calloc(size_t count, size_t size) {
  if (injected_failure()) return NULL;
  return calloc(count ? count : 1, size ? size : 1);
}

void *mg_realloc(void *p, size_t n) {
  if (injected_failure()) return NULL;
  return realloc(p, n ? n : 1);
}

void *mg_mallocarray(size_t count, size_t size) {
  if (size && count > SIZE_MAX / size) return NULL;
  return mg_malloc(count * size);
}

void *mg_reallocarray(void *p, size_t count, size_t size) {
  if (size && count > SIZE_MAX / size) return NULL;
  return mg_realloc(p, count * size);
}

char *mg_strndup(const char *s, size_t n) {
  char *d = mg_malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

char *mg_strdup(const char *s) { return s ? mg_strndup(s, strlen(s)) : NULL; }

void mg_free(void *p) { free(p); }

void mg_mem_wipe(void *p, size_t n) {
  if (p && n) OPENSSL_cleanse(p, n);
}

void mg_mem_free_secret(char *s) {
  if (!s) return;
  mg_mem_wipe(s, strlen(s));
  free(s);
}

struct mg_arena_chunk {
  mg_arena_chunk_t *next;
  size_t size, off;
  _Alignas(8) unsigned char data[];
};

void mg_arena_init(mg_arena_t *a, size_t chunk_size, size_t limit) {
  a->head = NULL;
  a->chunk_size = chunk_size ? chunk_size : 4096;
  a->used = 0;
  a->limit = limit;
}

void mg_arena_cleanup(mg_arena_t *a) {
  mg_arena_chunk_t *c = a->head;
  while (c) {
    mg_arena_chunk_t *next = c->next;
    free(c);
    c = next;
  }
  a->head = NULL;
  a->used = 0;
}

void mg_arena_reset(mg_arena_t *a) {
  if (!a->head) return;
  /* Keep only the last chunk in the list (the oldest, usually the default
   * size) so steady-state scrapes do not call malloc. */
  mg_arena_chunk_t *c = a->head, *keep = NULL;
  while (c) {
    mg_arena_chunk_t *next = c->next;
    if (!next) keep = c;
    else free(c);
    c = next;
  }
  keep->off = 0;
  keep->next = NULL;
  a->head = keep;
  a->used = 0;
}

void *mg_arena_alloc(mg_arena_t *a, size_t n) {
  size_t rounded = (n + 7) & ~(size_t)7;
  if (rounded < n) return NULL;
  if (a->limit && (rounded > a->limit || a->used > a->limit - rounded)) return NULL;
  mg_arena_chunk_t *c = a->head;
  if (!c || c->size - c->off < rounded) {
    size_t sz = rounded > a->chunk_size ? rounded : a->chunk_size;
    if (sz > SIZE_MAX - sizeof *c) return NULL;
    mg_arena_chunk_t *nc = mg_malloc(sizeof *nc + sz);
    if (!nc) return NULL;
    nc->size = sz;
    nc->off = 0;
    nc->next = a->head;
    a->head = nc;
    c = nc;
  }
  void *p = c->data + c->off;
  c->off += rounded;
  a->used += rounded;
  return p;
}

char *mg_arena_strndup(mg_arena_t *a, const char *s, size_t n) {
  if (n == SIZE_MAX) return NULL;
  char *d = mg_arena_alloc(a, n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}
