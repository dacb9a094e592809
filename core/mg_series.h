/* mg_series: the per-target series table. Keyed by a 64-bit hash of the raw
 * series bytes of the exposition ("name{labels}"), it holds what a known
 * series costs to remember: the cached decision, which scrape last saw it
 * (staleness), and where its key bytes live (needed only to write a
 * staleness marker once it disappears). Pure: no libuv, no clock. */
#ifndef MG_SERIES_H
#define MG_SERIES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mg_buf.h"
#include "mg_parse.h"
#include "mg_str.h"

/* 16 bytes per series in the entry array, plus 4 bytes per index slot (load
 * under 3/4); a target whose series stopped changing gives back the array's
 * growth room. A 64-bit hash
 * collision between two series of one target (odds ~n^2/2^65, 3e-8 for a
 * million series) would merge their bookkeeping; the samples themselves are
 * always encoded from the body, so labels are never mixed up. */
typedef struct mg_series_entry {
  uint64_t hash;  /* never 0 (mg_series_hash remaps it) */
  uint32_t key;   /* offset of the key bytes in the key store */
  uint16_t epoch; /* scrape that last saw it */
  uint16_t route; /* cached decision: MG_SERIES_ROUTE_* or an index set by the decision hook */
} mg_series_entry_t;

#define MG_SERIES_ROUTE_UNDECIDED 0
#define MG_SERIES_ROUTE_DEFAULT 1 /* every destination, labels as scraped */
#define MG_SERIES_ROUTE_DROP 2
/* Flag on route: first seen by a scrape that has not committed yet. If
 * that scrape fails, the series was never written and gets no staleness
 * marker. */
#define MG_SERIES_ROUTE_PENDING 0x8000u
/* Flag on route: the decision rewrote the labels; the rewritten set is
 * kept with the key (mg_series_extra). */
#define MG_SERIES_ROUTE_REWRITTEN 0x4000u
#define MG_SERIES_ROUTE_ID(route) ((route) & 0x3fffu)

/* Keys are needed only to write a staleness marker once a series is gone,
 * so they are kept deflate-compressed in blocks of up to 64 KiB (a tail
 * block fills uncompressed first): exposition keys compress ~5-10x. A
 * series with stored extra bytes (read on every scrape) keeps key and
 * extra uncompressed in the hot store instead. */
typedef struct mg_series_block {
  unsigned char *z; /* compressed bytes */
  uint32_t zlen;
  uint32_t raw;     /* uncompressed length */
  uint32_t live;    /* raw bytes of records still referenced */
} mg_series_block_t;

typedef struct mg_series_table {
  mg_series_entry_t *ents; /* in first-seen order */
  uint32_t ents_cap, count;
  uint32_t *index; /* open addressing: entry position + 1, 0 = empty */
  uint32_t idx_cap;
  uint32_t cursor; /* where the next series of this scrape is expected */
  uint16_t epoch;
  /* Cold store: sealed blocks + the tail being filled. Records are varint
   * length + key bytes. */
  mg_series_block_t *blocks;
  uint32_t nblocks, blocks_cap;
  mg_buf_t tail;
  uint32_t tail_live;
  bool tail_added; /* a key went to the tail since the last mg_series_settle */
  size_t cold_raw, cold_garbage;
  mg_buf_t unz;       /* one decompressed block (cache for mg_series_key) */
  uint32_t unz_block; /* which block unz holds; UINT32_MAX: none */
  /* Hot store: varint length + key + varint length + extra, uncompressed. */
  mg_buf_t hot;
  size_t hot_garbage;
} mg_series_table_t;

void mg_series_init(mg_series_table_t *t);
void mg_series_cleanup(mg_series_table_t *t);

/* Start a scrape: advances the epoch. */
void mg_series_begin(mg_series_table_t *t);

/* Normalise a raw hash (0 is reserved for empty slots). */
static inline uint64_t mg_series_hash(const void *key, size_t n, uint64_t seed) {
  uint64_t h = mg_hash64(key, n, seed);
  return h ? h : 1;
}

/* Find the series, or insert it (copying key) with route UNDECIDED. *is_new
 * tells which. Returns NULL on OOM. The pointer is valid until the next
 * insert, sweep or settle. The entry after the last one found is tried
 * first: bodies list their series in the same order every scrape. */
mg_series_entry_t *mg_series_upsert(mg_series_table_t *t, uint64_t hash, mg_str_t key, bool *is_new);
mg_series_entry_t *mg_series_find(mg_series_table_t *t, uint64_t hash);

/* The key bytes of an entry (borrowed until the next call into the table:
 * a key in a sealed block is decompressed into a shared buffer). */
mg_str_t mg_series_key(const mg_series_table_t *t, const mg_series_entry_t *e);
/* Bytes the decision stored with the series (rewritten labels), or empty.
 * Borrowed until the next insert, set_extra or sweep. */
mg_str_t mg_series_extra(const mg_series_table_t *t, const mg_series_entry_t *e);
/* Store bytes with the series (replaces what was there). Costs a copy of
 * the key: meant for new series only. Returns 0 or MG_ENOMEM. */
int mg_series_set_extra(mg_series_table_t *t, mg_series_entry_t *e, const void *p, size_t n);

/* After a successful scrape: every series not seen in the current epoch is
 * passed to fn (to write a staleness marker) and removed. With all = true
 * (target down or removed) every series is passed and removed. fn may be
 * NULL. Returns the number removed. */
typedef void (*mg_series_gone_fn)(void *ud, const mg_series_entry_t *e, mg_str_t key);
size_t mg_series_sweep(mg_series_table_t *t, bool all, mg_series_gone_fn fn, void *ud);

/* After a scrape and its sweep: when no new key arrived since the last
 * call, the keys still held raw (the tail of the key store, under 64 KiB)
 * are compressed and the raw and inflate buffers freed, so a target whose
 * series are stable keeps nothing uncompressed. The next new key reopens
 * that last block while it has room, so blocks stay large. */
void mg_series_settle(mg_series_table_t *t);

/* Forget every cached decision (after a reload): routes go back to UNDECIDED. */
void mg_series_reset_routes(mg_series_table_t *t);

/* ---- decisions ------------------------------------------------------------
 * What happens to a new series is decided once, by a hook (the Lua
 * scripting layer fills it in; core modules never call Lua directly), and
 * cached in the entry's route. */

/* What the hook sees: the series' labels after metric relabeling (sorted,
 * with __name__), the target's labels, and the family's metadata. */
typedef struct mg_series_view {
  const mg_label_t *labels;
  size_t nlabels;
  const mg_label_t *target_labels;
  size_t ntarget_labels;
  const char *job;
  mg_str_t name;
  mg_metric_kind_t type;
  mg_str_t help; /* raw (escapes unresolved) */
} mg_series_view_t;

/* What the hook answers. dests: bit i = destination i of the plan (at
 * most 64); 0 drops the series. labels (optional): a replacement label set,
 * sorted by name, unique, non-empty values; borrowed until the next call
 * of the hook. reason: why it was dropped (for `moongate test`), static. */
typedef struct mg_series_decision {
  uint64_t dests;
  const mg_label_t *labels;
  size_t nlabels;
  const char *reason;
} mg_series_decision_t;

/* Returns 0, or a negative mg_err when the hook itself failed; the hook has
 * then already applied its fallback to *out (and logged and counted the
 * failure). Runs on the loop, once per new series. */
typedef int (*mg_series_decide_fn)(void *ud, const mg_series_view_t *in, mg_series_decision_t *out);

/* Heap bytes held, for self-metrics. */
size_t mg_series_bytes(const mg_series_table_t *t);

#endif
