/* mg_series: entries in a dense array, in the order scrapes first saw them,
 * found by an open-addressing index of positions. A body lists its series
 * in the same order scrape after scrape, so a lookup first tries the entry
 * after the last one found: a sequential walk the prefetcher follows, where
 * a hash probe would miss the cache once per sample on large targets. A
 * sweep compacts the array (keeping the order) and rebuilds the index. Keys
 * go to an append-only store that is compacted when half of it is garbage. */
#include "mg_series.h"

#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "mg_err.h"
#include "mg_mem.h"

#define BLOCK_RAW (64u << 10) /* seal the tail at this size */
#define HOT_BIT 0x80000000u    /* key ref points into the hot store */

void mg_series_init(mg_series_table_t *t) {
  memset(t, 0, sizeof *t);
  mg_buf_init(&t->tail, BLOCK_RAW + 4096);
  mg_buf_init(&t->unz, BLOCK_RAW + 4096);
  mg_buf_init(&t->hot, HOT_BIT - 1);
  t->unz_block = UINT32_MAX;
}

static void free_blocks(mg_series_table_t *t) {
  for (uint32_t i = 0; i < t->nblocks; i++) mg_free(t->blocks[i].z);
  mg_free(t->blocks);
  t->blocks = NULL;
  t->nblocks = t->blocks_cap = 0;
}

void mg_series_cleanup(mg_series_table_t *t) {
  mg_free(t->ents);
  mg_free(t->index);
  free_blocks(t);
  mg_buf_cleanup(&t->tail);
  mg_buf_cleanup(&t->unz);
  mg_buf_cleanup(&t->hot);
  memset(t, 0, sizeof *t);
}

void mg_series_begin(mg_series_table_t *t) {
  t->epoch++;
  t->cursor = 0;
}

/* Index slots hold an entry position + 1; 0 is empty. */
static void index_put(mg_series_table_t *t, uint64_t hash, uint32_t pos) {
  uint32_t mask = t->idx_cap - 1;
  uint32_t j = (uint32_t)hash & mask;
  while (t->index[j]) j = (j + 1) & mask;
  t->index[j] = pos + 1;
}

/* Load at most 3/4. */
static uint32_t index_cap_for(uint32_t n) {
  uint32_t c = 256;
  while ((uint64_t)n * 4 > (uint64_t)c * 3) c *= 2;
  return c;
}

/* Index every entry again, into a new array of cap slots, or (cap == 0 or
 * no memory for a new one) into the current one. */
static void index_rebuild(mg_series_table_t *t, uint32_t cap) {
  uint32_t *ni = cap && cap != t->idx_cap ? mg_calloc(cap, sizeof *ni) : NULL;
  if (ni) {
    mg_free(t->index);
    t->index = ni;
    t->idx_cap = cap;
  } else if (t->index) {
    memset(t->index, 0, (size_t)t->idx_cap * sizeof *t->index);
  }
  for (uint32_t i = 0; i < t->count; i++) index_put(t, t->ents[i].hash, i);
}

mg_series_entry_t *mg_series_find(mg_series_table_t *t, uint64_t hash) {
  if (!t->idx_cap) return NULL;
  uint32_t mask = t->idx_cap - 1;
  for (uint32_t j = (uint32_t)hash & mask;; j = (j + 1) & mask) {
    uint32_t v = t->index[j];
    if (!v) return NULL;
    if (t->ents[v - 1].hash == hash) return &t->ents[v - 1];
  }
}

static size_t put_varint(unsigned char *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (unsigned char)v;
  return n;
}

static const unsigned char *get_varint(const unsigned char *p, size_t *v) {
  size_t n = 0;
  int shift = 0;
  while (*p & 0x80) {
    n |= (size_t)(*p++ & 0x7f) << shift;
    shift += 7;
  }
  *v = n | ((size_t)*p++ << shift);
  return p;
}

/* Deflate the tail into a sealed block. Level 6 (zlib's default) keeps
 * keys ~13 % smaller than level 1 (20 against 23 bytes a series on the
 * bench's pages); only new series pay for it, once. */
static int seal_tail(mg_series_table_t *t) {
  if (t->nblocks == HOT_BIT >> 16) return -1; /* the ref format's limit: 2 GiB of keys */
  if (t->nblocks == t->blocks_cap) {
    uint32_t ncap = t->blocks_cap ? t->blocks_cap * 2 : 16;
    mg_series_block_t *nb = mg_reallocarray(t->blocks, ncap, sizeof *nb);
    if (!nb) return -1;
    t->blocks = nb;
    t->blocks_cap = ncap;
  }
  uLongf zlen = compressBound((uLong)t->tail.len);
  unsigned char *z = mg_malloc(zlen);
  if (!z) return -1;
  if (compress2(z, &zlen, (const Bytef *)t->tail.data, (uLong)t->tail.len, 6) != Z_OK) {
    mg_free(z);
    return -1;
  }
  unsigned char *shrunk = mg_realloc(z, zlen);
  if (shrunk) z = shrunk;
  t->blocks[t->nblocks++] = (mg_series_block_t){z, (uint32_t)zlen, (uint32_t)t->tail.len, t->tail_live};
  mg_buf_reset(&t->tail);
  t->tail_live = 0;
  return 0;
}

/* The last sealed block was sealed early (mg_series_settle) and has room:
 * inflate it back into the tail. Its refs stay valid: the tail is block
 * nblocks, which is the popped block's index, at the same offsets. */
static int reopen_last(mg_series_table_t *t, size_t need) {
  mg_series_block_t *b = &t->blocks[t->nblocks - 1];
  if (!b->z || b->raw + need > BLOCK_RAW) return 0;
  if (mg_buf_reserve(&t->tail, b->raw) != 0) return -1;
  uLongf rawlen = b->raw;
  if (uncompress((Bytef *)t->tail.data, &rawlen, b->z, b->zlen) != Z_OK || rawlen != b->raw) return -1;
  t->tail.len = rawlen;
  t->tail.data[rawlen] = '\0';
  t->tail_live = b->live;
  mg_free(b->z);
  t->nblocks--;
  if (t->unz_block == t->nblocks) t->unz_block = UINT32_MAX;
  return 0;
}

/* A new key goes to the tail; the ref is block index (the tail is block
 * nblocks) << 16 | offset. */
static int store_cold(mg_series_table_t *t, mg_str_t key, uint32_t *ref) {
  unsigned char h[10];
  size_t hn = put_varint(h, key.n);
  if (hn + key.n > BLOCK_RAW) return -1; /* longer than any line the parser accepts */
  if (t->tail.len == 0 && t->nblocks && reopen_last(t, hn + key.n) != 0) return -1;
  t->tail_added = true;
  if (t->tail.len + hn + key.n > BLOCK_RAW && seal_tail(t) != 0) return -1;
  *ref = (uint32_t)t->nblocks << 16 | (uint32_t)t->tail.len;
  mg_buf_append(&t->tail, h, hn);
  mg_buf_append(&t->tail, key.p, key.n);
  t->tail_live += (uint32_t)(hn + key.n);
  t->cold_raw += hn + key.n;
  return 0;
}

static int store_hot(mg_series_table_t *t, mg_str_t key, const void *extra, size_t extra_n, uint32_t *ref) {
  unsigned char h1[10], h2[10];
  size_t n1 = put_varint(h1, key.n), n2 = put_varint(h2, extra_n);
  size_t at = t->hot.len;
  if (mg_buf_reserve(&t->hot, n1 + key.n + n2 + extra_n)) return -1;
  mg_buf_append(&t->hot, h1, n1);
  mg_buf_append(&t->hot, key.p, key.n);
  mg_buf_append(&t->hot, h2, n2);
  mg_buf_append(&t->hot, extra, extra_n);
  *ref = (uint32_t)at | HOT_BIT;
  return 0;
}

/* The raw bytes of the block a cold ref lives in (decompressing a sealed
 * block into the one-block cache), or NULL. */
static const unsigned char *cold_block(mg_series_table_t *t, uint32_t block) {
  if (block == t->nblocks) return (const unsigned char *)t->tail.data;
  if (block > t->nblocks) return NULL;
  if (t->unz_block != block) {
    mg_series_block_t *b = &t->blocks[block];
    mg_buf_reset(&t->unz);
    if (!b->z || mg_buf_reserve(&t->unz, b->raw) != 0) return NULL;
    uLongf rawlen = b->raw;
    if (uncompress((Bytef *)t->unz.data, &rawlen, b->z, b->zlen) != Z_OK || rawlen != b->raw) return NULL;
    t->unz.len = rawlen;
    t->unz_block = block;
  }
  return (const unsigned char *)t->unz.data;
}

mg_str_t mg_series_key(const mg_series_table_t *tc, const mg_series_entry_t *e) {
  mg_series_table_t *t = (mg_series_table_t *)tc; /* the decompression cache is not part of the value */
  size_t n;
  const unsigned char *p;
  if (e->key & HOT_BIT) {
    p = get_varint((const unsigned char *)t->hot.data + (e->key & ~HOT_BIT), &n);
  } else {
    const unsigned char *blk = cold_block(t, e->key >> 16);
    if (!blk) return mg_str_n("", 0);
    p = get_varint(blk + (e->key & 0xffffu), &n);
  }
  return mg_str_n((const char *)p, n);
}

mg_str_t mg_series_extra(const mg_series_table_t *t, const mg_series_entry_t *e) {
  if (!(e->key & HOT_BIT)) return mg_str_n("", 0);
  size_t n;
  const unsigned char *p = get_varint((const unsigned char *)t->hot.data + (e->key & ~HOT_BIT), &n);
  p = get_varint(p + n, &n);
  return mg_str_n((const char *)p, n);
}

/* Account a record as garbage in its store. */
static void drop_record(mg_series_table_t *t, const mg_series_entry_t *e) {
  if (e->key & HOT_BIT) {
    size_t n;
    const unsigned char *start = (const unsigned char *)t->hot.data + (e->key & ~HOT_BIT);
    const unsigned char *p = get_varint(start, &n);
    p = get_varint(p + n, &n);
    t->hot_garbage += (size_t)(p + n - start);
    return;
  }
  uint32_t block = e->key >> 16;
  const unsigned char *blk = cold_block(t, block);
  size_t n = 0;
  const unsigned char *start = blk ? blk + (e->key & 0xffffu) : NULL;
  size_t size = start ? (size_t)(get_varint(start, &n) - start) + n : 0;
  t->cold_garbage += size;
  if (block == t->nblocks) {
    t->tail_live -= (uint32_t)size;
  } else if (block < t->nblocks && (t->blocks[block].live -= (uint32_t)size) == 0) {
    /* Nothing left in it: free the compressed bytes now. */
    mg_free(t->blocks[block].z);
    t->blocks[block].z = NULL;
    t->cold_garbage -= t->blocks[block].raw;
    t->cold_raw -= t->blocks[block].raw;
    if (t->unz_block == block) t->unz_block = UINT32_MAX;
  }
}

int mg_series_set_extra(mg_series_table_t *t, mg_series_entry_t *e, const void *p, size_t n) {
  mg_str_t k = mg_series_key(t, e);
  /* The key may live in the hot store the append can move, or in the
   * decompression cache: copy it out first. */
  char stack[1024];
  char *copy = k.n <= sizeof stack ? stack : mg_malloc(k.n);
  if (!copy) return MG_ENOMEM;
  memcpy(copy, k.p, k.n);
  uint32_t ref;
  int rc = store_hot(t, mg_str_n(copy, k.n), p, n, &ref);
  if (copy != stack) mg_free(copy);
  if (rc) return MG_ENOMEM;
  drop_record(t, e);
  e->key = ref;
  return 0;
}

mg_series_entry_t *mg_series_upsert(mg_series_table_t *t, uint64_t hash, mg_str_t key, bool *is_new) {
  *is_new = false;
  if (t->cursor < t->count && t->ents[t->cursor].hash == hash) return &t->ents[t->cursor++];
  mg_series_entry_t *e = mg_series_find(t, hash);
  if (e) {
    t->cursor = (uint32_t)(e - t->ents) + 1;
    return e;
  }
  if (t->count == UINT32_MAX / 2) return NULL;
  if (t->count == t->ents_cap) {
    uint32_t ncap = t->ents_cap < 64 ? 64 : t->ents_cap + t->ents_cap / 2;
    mg_series_entry_t *ne = mg_reallocarray(t->ents, ncap, sizeof *ne);
    if (!ne) return NULL;
    t->ents = ne;
    t->ents_cap = ncap;
  }
  if ((uint64_t)(t->count + 1) * 4 > (uint64_t)t->idx_cap * 3) {
    uint32_t ncap = index_cap_for(t->count + 1);
    uint32_t *ni = mg_calloc(ncap, sizeof *ni);
    if (!ni) return NULL;
    mg_free(t->index);
    t->index = ni;
    t->idx_cap = ncap;
    for (uint32_t i = 0; i < t->count; i++) index_put(t, t->ents[i].hash, i); /* ni is zeroed already */
  }
  uint32_t off;
  if (store_cold(t, key, &off) != 0) return NULL;
  e = &t->ents[t->count];
  *e = (mg_series_entry_t){.hash = hash, .key = off, .epoch = t->epoch, .route = MG_SERIES_ROUTE_UNDECIDED};
  index_put(t, hash, t->count);
  t->cursor = ++t->count;
  *is_new = true;
  return e;
}

static int ref_cmp(const void *a, const void *b) {
  uint32_t x = (*(mg_series_entry_t *const *)a)->key, y = (*(mg_series_entry_t *const *)b)->key;
  return x < y ? -1 : x > y;
}

/* Rewrite both stores with only live records, visiting the cold ones in
 * block order so each block is decompressed once. On failure (memory) the
 * old stores stay; the next sweep tries again. */
static void compact(mg_series_table_t *t) {
  mg_series_entry_t **live = mg_mallocarray(t->count ? t->count : 1, sizeof *live);
  if (!live) return;
  size_t n = 0;
  for (uint32_t i = 0; i < t->count; i++) live[n++] = &t->ents[i];
  qsort(live, n, sizeof *live, ref_cmp);
  mg_series_table_t nt;
  mg_series_init(&nt);
  uint32_t *refs = mg_mallocarray(n ? n : 1, sizeof *refs);
  int rc = refs ? 0 : -1;
  for (size_t i = 0; i < n && !rc; i++) {
    mg_str_t k = mg_series_key(t, live[i]);
    if (live[i]->key & HOT_BIT) {
      mg_str_t x = mg_series_extra(t, live[i]);
      rc = store_hot(&nt, k, x.p, x.n, &refs[i]);
    } else {
      rc = store_cold(&nt, k, &refs[i]);
    }
  }
  if (!rc) {
    for (size_t i = 0; i < n; i++) live[i]->key = refs[i];
    free_blocks(t);
    mg_buf_cleanup(&t->tail);
    mg_buf_cleanup(&t->unz);
    mg_buf_cleanup(&t->hot);
    t->blocks = nt.blocks;
    t->nblocks = nt.nblocks;
    t->blocks_cap = nt.blocks_cap;
    t->tail = nt.tail;
    t->tail_live = nt.tail_live;
    t->tail_added = nt.tail_added;
    t->cold_raw = nt.cold_raw;
    t->unz = nt.unz;
    t->unz_block = UINT32_MAX;
    t->hot = nt.hot;
    t->cold_garbage = t->hot_garbage = 0;
  } else {
    mg_series_cleanup(&nt);
  }
  mg_free(refs);
  mg_free(live);
}

static int entry_ref_cmp(const void *a, const void *b) {
  uint32_t x = ((const mg_series_entry_t *)a)->key, y = ((const mg_series_entry_t *)b)->key;
  return x < y ? -1 : x > y;
}

size_t mg_series_sweep(mg_series_table_t *t, bool all, mg_series_gone_fn fn, void *ud) {
  size_t n = 0;
  for (uint32_t i = 0; i < t->count; i++)
    if (all || t->ents[i].epoch != t->epoch) n++;
  if (!n) return 0;
  /* Visit the victims in key-store order, so each compressed block is
   * inflated once however many of its series go (a target going down
   * takes all of them). Without memory for the list, in entry order. */
  mg_series_entry_t *v = mg_mallocarray(n, sizeof *v);
  if (v) {
    size_t k = 0;
    for (uint32_t i = 0; i < t->count; i++)
      if (all || t->ents[i].epoch != t->epoch) v[k++] = t->ents[i];
    qsort(v, n, sizeof *v, entry_ref_cmp);
    for (size_t i = 0; i < n; i++) {
      if (fn) fn(ud, &v[i], mg_series_key(t, &v[i]));
      drop_record(t, &v[i]);
    }
    mg_free(v);
  } else {
    for (uint32_t i = 0; i < t->count; i++) {
      mg_series_entry_t *e = &t->ents[i];
      if (!all && e->epoch == t->epoch) continue;
      if (fn) fn(ud, e, mg_series_key(t, e));
      drop_record(t, e);
    }
  }
  /* Keep the survivors in order. */
  uint32_t w = 0;
  for (uint32_t i = 0; i < t->count; i++)
    if (!all && t->ents[i].epoch == t->epoch) t->ents[w++] = t->ents[i];
  t->count = w;
  t->cursor = 0;
  index_rebuild(t, t->idx_cap > 256 && index_cap_for(w) < t->idx_cap / 2 ? index_cap_for(w) : 0);
  if (t->count == 0) {
    free_blocks(t);
    mg_buf_reset(&t->tail);
    mg_buf_reset(&t->hot);
    t->tail_live = 0;
    t->cold_raw = t->cold_garbage = t->hot_garbage = 0;
    t->unz_block = UINT32_MAX;
  } else if (t->cold_garbage > t->cold_raw / 2 || t->hot_garbage > t->hot.len / 2 + 4096) {
    compact(t);
  }
  return n;
}

void mg_series_settle(mg_series_table_t *t) {
  if (t->tail_added) {
    t->tail_added = false;
    return;
  }
  /* No new series either: the entry array loses its growth room. */
  if (t->ents_cap > t->count + t->count / 16 + 16) {
    mg_series_entry_t *ne = mg_reallocarray(t->ents, t->count ? t->count : 1, sizeof *ne);
    if (ne) {
      t->ents = ne;
      t->ents_cap = t->count ? t->count : 1;
    }
  }
  if (t->tail.len && seal_tail(t) != 0) return;
  /* Nothing is pending in the tail or the inflate cache: give the memory
   * back (64 KiB each, per target). */
  mg_buf_cleanup(&t->tail);
  mg_buf_init(&t->tail, BLOCK_RAW + 4096);
  mg_buf_cleanup(&t->unz);
  mg_buf_init(&t->unz, BLOCK_RAW + 4096);
  t->unz_block = UINT32_MAX;
}

void mg_series_reset_routes(mg_series_table_t *t) {
  for (uint32_t i = 0; i < t->count; i++) t->ents[i].route = MG_SERIES_ROUTE_UNDECIDED;
}

size_t mg_series_bytes(const mg_series_table_t *t) {
  size_t b = (size_t)t->ents_cap * sizeof(mg_series_entry_t) + (size_t)t->idx_cap * sizeof(uint32_t) + t->tail.cap + t->unz.cap + t->hot.cap +
             t->blocks_cap * sizeof(mg_series_block_t);
  for (uint32_t i = 0; i < t->nblocks; i++) b += t->blocks[i].zlen;
  return b;
}
