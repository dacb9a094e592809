/* mg_series: open addressing with linear probing and backward-shift
 * deletion (no tombstones, so lookups stay short after churn). Keys go to
 * an append-only store that is compacted when half of it is garbage. */
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
  mg_free(t->slots);
  free_blocks(t);
  mg_buf_cleanup(&t->tail);
  mg_buf_cleanup(&t->unz);
  mg_buf_cleanup(&t->hot);
  memset(t, 0, sizeof *t);
}

void mg_series_begin(mg_series_table_t *t) { t->epoch++; }

static int grow(mg_series_table_t *t) {
  uint32_t ncap = t->cap ? t->cap * 2 : 256;
  if (ncap < t->cap) return -1;
  mg_series_entry_t *ns = mg_calloc(ncap, sizeof *ns);
  if (!ns) return -1;
  for (uint32_t i = 0; i < t->cap; i++) {
    mg_series_entry_t *e = &t->slots[i];
    if (!e->hash) continue;
    uint32_t j = (uint32_t)e->hash & (ncap - 1);
    while (ns[j].hash) j = (j + 1) & (ncap - 1);
    ns[j] = *e;
  }
  mg_free(t->slots);
  t->slots = ns;
  t->cap = ncap;
  return 0;
}

mg_series_entry_t *mg_series_find(mg_series_table_t *t, uint64_t hash) {
  if (!t->cap) return NULL;
  uint32_t mask = t->cap - 1;
  for (uint32_t j = (uint32_t)hash & mask;; j = (j + 1) & mask) {
    mg_series_entry_t *e = &t->slots[j];
    if (e->hash == hash) return e;
    if (!e->hash) return NULL;
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
  mg_series_entry_t *e = mg_series_find(t, hash);
  if (e) {
    *is_new = false;
    return e;
  }
  if ((uint64_t)(t->count + 1) * 4 > (uint64_t)t->cap * 3 && grow(t) != 0) return NULL;
  uint32_t off;
  if (store_cold(t, key, &off) != 0) return NULL;
  uint32_t mask = t->cap - 1;
  uint32_t j = (uint32_t)hash & mask;
  while (t->slots[j].hash) j = (j + 1) & mask;
  e = &t->slots[j];
  e->hash = hash;
  e->key = off;
  e->epoch = t->epoch;
  e->route = MG_SERIES_ROUTE_UNDECIDED;
  t->count++;
  *is_new = true;
  return e;
}

/* Remove slot i and shift later members of its probe run back. */
static void delete_slot(mg_series_table_t *t, uint32_t i) {
  uint32_t mask = t->cap - 1;
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (!t->slots[j].hash) break;
    uint32_t home = (uint32_t)t->slots[j].hash & mask;
    /* Move j into the hole at i unless its home lies cyclically in (i, j]. */
    int in_range = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
    if (!in_range) {
      t->slots[i] = t->slots[j];
      i = j;
    }
  }
  t->slots[i].hash = 0;
  t->count--;
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
  for (uint32_t i = 0; i < t->cap; i++)
    if (t->slots[i].hash) live[n++] = &t->slots[i];
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
  for (uint32_t i = 0; i < t->cap; i++)
    if (t->slots[i].hash && (all || t->slots[i].epoch != t->epoch)) n++;
  if (!n) return 0;
  /* Visit the victims in key-store order, so each compressed block is
   * inflated once however many of its series go (a target going down
   * takes all of them). Without memory for the list, in slot order. */
  mg_series_entry_t *v = mg_mallocarray(n, sizeof *v);
  size_t k = 0;
  if (v) {
    for (uint32_t i = 0; i < t->cap; i++)
      if (t->slots[i].hash && (all || t->slots[i].epoch != t->epoch)) v[k++] = t->slots[i];
    qsort(v, n, sizeof *v, entry_ref_cmp);
    for (size_t i = 0; i < n; i++) {
      if (fn) fn(ud, &v[i], mg_series_key(t, &v[i]));
      drop_record(t, &v[i]);
    }
    for (size_t i = 0; i < n; i++) {
      mg_series_entry_t *e = mg_series_find(t, v[i].hash);
      if (e) delete_slot(t, (uint32_t)(e - t->slots));
    }
    mg_free(v);
  } else {
    /* Backward-shift deletion only moves entries into the hole at i or
     * into later holes of the same run (or, wrapping, between visited
     * slots), so re-checking slot i after a delete visits each once. */
    for (uint32_t i = 0; i < t->cap;) {
      mg_series_entry_t *e = &t->slots[i];
      if (e->hash && (all || e->epoch != t->epoch)) {
        if (fn) fn(ud, e, mg_series_key(t, e));
        drop_record(t, e);
        delete_slot(t, i);
        continue;
      }
      i++;
    }
  }
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
  for (uint32_t i = 0; i < t->cap; i++) t->slots[i].route = MG_SERIES_ROUTE_UNDECIDED;
}

size_t mg_series_bytes(const mg_series_table_t *t) {
  size_t b = (size_t)t->cap * sizeof(mg_series_entry_t) + t->tail.cap + t->unz.cap + t->hot.cap +
             t->blocks_cap * sizeof(mg_series_block_t);
  for (uint32_t i = 0; i < t->nblocks; i++) b += t->blocks[i].zlen;
  return b;
}
