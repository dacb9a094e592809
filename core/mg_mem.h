/* mg_mem: allocation wrappers (with fault injection for torture tests),
 * a chunked arena for per-scrape and per-config data, and secure wipe.
 * All allocation in core/ goes through here. Pure: no libuv. */
#ifndef MG_MEM_H
#define MG_MEM_H

#include <stddef.h>
#include <stdint.h>

/* Return NULL on failure (or on the injected failure); never abort. */
void *mg_malloc(size_t n);
void *mg_calloc(size_t count, size_t size);
void *mg_realloc(void *p, size_t n);
/* Allocate count*size bytes, failing on overflow. */
void *mg_mallocarray(size_t count, size_t size);
void *mg_reallocarray(void *p, size_t count, size_t size);
char *mg_strdup(const char *s);
char *mg_strndup(const char *s, size_t n);
void mg_free(void *p);

/* Fault injection: fail the Nth allocation from now (1 = the next), 0 to
 * disable. mg_mem_alloc_count() counts allocations since start. */
void mg_mem_fail_at(uint64_t nth);
uint64_t mg_mem_alloc_count(void);

/* Give free heap memory back to the system (malloc_trim where glibc has
 * it; a no-op elsewhere). Buffers that grew once (a target's first scrape,
 * a backlog) leave free holes that malloc otherwise keeps resident. */
void mg_mem_trim(void);

/* Overwrite memory that held a secret (OPENSSL_cleanse: not optimised away). */
void mg_mem_wipe(void *p, size_t n);
/* Wipe a NUL-terminated string in place and free it. NULL is fine. */
void mg_mem_free_secret(char *s);

/* Arena: bump allocator over chunks; everything is freed at once by
 * mg_arena_reset (keeps the first chunk for reuse) or mg_arena_cleanup.
 * Allocations are 8-byte aligned. */
typedef struct mg_arena_chunk mg_arena_chunk_t;
typedef struct mg_arena {
  mg_arena_chunk_t *head;
  size_t chunk_size; /* default size of new chunks */
  size_t used;       /* bytes handed out since the last reset */
  size_t limit;      /* 0 = unlimited; otherwise allocations fail past it */
} mg_arena_t;

void mg_arena_init(mg_arena_t *a, size_t chunk_size, size_t limit);
void mg_arena_cleanup(mg_arena_t *a);
void mg_arena_reset(mg_arena_t *a);
void *mg_arena_alloc(mg_arena_t *a, size_t n);
char *mg_arena_strndup(mg_arena_t *a, const char *s, size_t n);

#endif
