/* mg_series: open addressing with linear probing and backward-shift
 * deletion (no tombstones, so lookups stay short after churn). Keys go to
 * an append-only store that is compacted when half of it is garbage. */
#include "mg_series.h"

#include <string.h>

#include "mg_err.h"
#include "mg_mem.h"

void mg_series_init(mg_series_table_t *t) {
  memset(t, 0, sizeof *t);
  mg_buf_init(&t->keys, UINT32_MAX);
}

void mg_series_cleanup(mg_series_table_t *t) {
  mg_free(t->slots);
  mg_buf_cleanup(&t->keys);
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

static int store_record(mg_series_table_t *t, mg_str_t key, const void *extra, size_t extra_n, uint32_t *off) {
  unsigned char h1[10], h2[10];
  size_t n1 = put_varint(h1, key.n), n2 = put_varint(h2, extra_n);
  size_t at = t->keys.len;
  if (mg_buf_reserve(&t->keys, n1 + key.n + n2 + extra_n)) return -1;
  mg_buf_append(&t->keys, h1, n1);
  mg_buf_append(&t->keys, key.p, key.n);
  mg_buf_append(&t->keys, h2, n2);
  mg_buf_append(&t->keys, extra, extra_n);
  *off = (uint32_t)at;
  return 0;
}

mg_str_t mg_series_key(const mg_series_table_t *t, const mg_series_entry_t *e) {
  size_t n;
  const unsigned char *p = get_varint((const unsigned char *)t->keys.data + e->key, &n);
  return mg_str_n((const char *)p, n);
}

mg_str_t mg_series_extra(const mg_series_table_t *t, const mg_series_entry_t *e) {
  mg_str_t k = mg_series_key(t, e);
  size_t n;
  const unsigned char *p = get_varint((const unsigned char *)k.p + k.n, &n);
  return mg_str_n((const char *)p, n);
}

/* Whole record size, for garbage accounting and compaction. */
static size_t record_size(const mg_series_table_t *t, const mg_series_entry_t *e) {
  mg_str_t x = mg_series_extra(t, e);
  return (size_t)(x.p + x.n - (t->keys.data + e->key));
}

int mg_series_set_extra(mg_series_table_t *t, mg_series_entry_t *e, const void *p, size_t n) {
  /* The key view points into the store that the append may move: copy the
   * record's position, not the pointer. */
  size_t old = record_size(t, e);
  mg_str_t k = mg_series_key(t, e);
  size_t koff = (size_t)(k.p - t->keys.data), kn = k.n;
  if (mg_buf_reserve(&t->keys, kn + n + 20)) return MG_ENOMEM;
  uint32_t off;
  store_record(t, mg_str_n(t->keys.data + koff, kn), p, n, &off);
  t->garbage += old;
  e->key = off;
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
  if (store_record(t, key, NULL, 0, &off) != 0) return NULL;
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

static void compact_keys(mg_series_table_t *t) {
  mg_buf_t nk;
  mg_buf_init(&nk, UINT32_MAX);
  if (mg_buf_reserve(&nk, t->keys.len - t->garbage) != 0) return; /* try again next sweep */
  for (uint32_t i = 0; i < t->cap; i++) {
    mg_series_entry_t *e = &t->slots[i];
    if (!e->hash) continue;
    const char *start = t->keys.data + e->key;
    size_t total = record_size(t, e);
    e->key = (uint32_t)nk.len;
    mg_buf_append(&nk, start, total);
  }
  mg_buf_cleanup(&t->keys);
  t->keys = nk;
  t->garbage = 0;
}

size_t mg_series_sweep(mg_series_table_t *t, bool all, mg_series_gone_fn fn, void *ud) {
  size_t removed = 0;
  /* Backward-shift deletion only moves entries into the hole at i or into
   * later holes of the same run (or, wrapping, between already visited
   * slots), so re-checking slot i after a delete visits every entry once. */
  for (uint32_t i = 0; i < t->cap;) {
    mg_series_entry_t *e = &t->slots[i];
    if (e->hash && (all || e->epoch != t->epoch)) {
      mg_str_t key = mg_series_key(t, e);
      if (fn) fn(ud, e, key);
      t->garbage += record_size(t, e);
      delete_slot(t, i);
      removed++;
      continue;
    }
    i++;
  }
  if (t->count == 0) {
    mg_buf_reset(&t->keys);
    t->garbage = 0;
  } else if (t->garbage > t->keys.len / 2) {
    compact_keys(t);
  }
  return removed;
}

void mg_series_reset_routes(mg_series_table_t *t) {
  for (uint32_t i = 0; i < t->cap; i++) t->slots[i].route = MG_SERIES_ROUTE_UNDECIDED;
}

size_t mg_series_bytes(const mg_series_table_t *t) {
  return (size_t)t->cap * sizeof(mg_series_entry_t) + t->keys.cap;
}
