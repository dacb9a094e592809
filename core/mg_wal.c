/* mg_wal: segment files, the recovery scan, the in-memory record index with
 * one cursor per shard, checkpoints, and the size and age caps of one
 * destination's durable buffer. Owns the files and fds of its directory.
 * Blocking file I/O, but fsync(2) only in mg_wal_sync; no libuv here. */
#include "mg_wal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"

/* On-disk layout, little-endian (docs/durability.md):
 * segment header (32): "MGWALSEG", u32 version, u32 crc of the other 28
 *   bytes, u64 first id (also the file name, %016x.seg), u64 created ms.
 * record header (40): "MGWR", u32 crc of header bytes 8..39, u32 crc of the
 *   payload, u32 payload length, u64 id, u64 append ms, u32 nsamples,
 *   u16 shard, u16 shard count; then the payload.
 * checkpoint: "MGWALCKP", u32 version, u32 ntags, u32 nranges,
 *   u64 acked_below, u64 next_id, ntags x u64 per-shard acked_below,
 *   nranges x (u64 first, u64 last) acked id ranges, u32 crc of all before. */
#define SEG_HDR 32u
#define REC_HDR 40u
#define SEG_VERSION 1u
#define CKPT_VERSION 1u
#define CKPT_HDR 36u
/* Acks beyond a shard's first pending record are kept as id ranges; past
 * this many ranges the rest is left out and sent again after a restart. */
#define CKPT_RANGES 1024u
#define CKPT_MAX (CKPT_HDR + 8u * MG_WAL_MAX_SHARDS + 16u * CKPT_RANGES + 4u)
#define CKPT_NAME "checkpoint"
#define CKPT_TMP "checkpoint.tmp"
/* Ids stay far from overflow even when a damaged file claims a huge one. */
#define MAX_ID (UINT64_C(1) << 62)
/* Read fds kept open for replay; more live segments than this (a crash
 * loop leaves many small ones) reopen on demand, least recently used first. */
#define MAX_READ_FDS 16
/* fds one sync round fsyncs; the scratch array is fixed so that a sync on a
 * pool thread never allocates (mg_mem's counters are not thread-safe). */
#define SYNC_BATCH 64
#define EXPIRE_EVERY_MS 1000u
#define SCAN_CHUNK (1u << 20)
#define READ_LOG_EVERY_MS 10000u
#define DEFAULT_MAX_BYTES (UINT64_C(1) << 30)
#define DEFAULT_SEGMENT (UINT64_C(64) << 20)
#define DEFAULT_SYNC_BYTES (UINT64_C(8) << 20)

static const unsigned char seg_magic[8] = {'M', 'G', 'W', 'A', 'L', 'S', 'E', 'G'};
static const unsigned char rec_magic[4] = {'M', 'G', 'W', 'R'};
static const unsigned char ckpt_magic[8] = {'M', 'G', 'W', 'A', 'L', 'C', 'K', 'P'};

enum { E_PENDING, E_HANDED, E_DONE };
typedef enum { WHY_ACK, WHY_FULL, WHY_OLD, WHY_CORRUPT } why_t;

typedef struct seg {
  struct seg *prev, *next;
  uint64_t name;      /* first id when created: the file name */
  uint64_t lo, hi;    /* ids of its first and last indexed record; lo 0 = none */
  uint64_t size;      /* bytes of valid data */
  uint64_t newest_ms; /* newest record's append time (age cap) */
  uint64_t pending;   /* index entries not finished whose data is here */
  uint64_t last_use;  /* read-fd LRU */
  int fd;             /* read fd (read-write for the active segment), or -1 */
  int sync_fd;        /* dup() owned by the next sync once sealed, or -1 */
} seg_t;

typedef struct entry {
  uint64_t id;
  seg_t *seg; /* NULL once finished, or when its segment was dropped while handed out */
  uint32_t off, len, nsamples;
  uint16_t tag, nshards;
  uint8_t state;
} entry_t;

/* A run of consecutive records appended with the same shard count; the
 * reshard barrier holds a record back while an earlier run of another
 * shard count has pending records. Runs with none pending are removed. */
typedef struct run {
  uint64_t first_id, pending;
  uint16_t nshards;
} run_t;

typedef struct ckpt {
  uint64_t below, next_id;
  uint32_t ntags, nranges;
  uint64_t tag[MG_WAL_MAX_SHARDS];
  uint64_t range[CKPT_RANGES][2];
} ckpt_t;

struct mg_wal {
  pthread_mutex_t mu;      /* every field below, except job_* */
  pthread_mutex_t sync_mu; /* one sync at a time; guards job_* */
  mg_wal_opts_t o;
  uint64_t max_record;
  char *dir;
  char qname[160]; /* logfmt-quoted name for log lines */
  int dirfd, lockfd;
  /* segments, oldest first; the active one (if any) is the tail */
  seg_t *head, *tail, *active;
  seg_t *dead; /* retired: unlinked and freed by the next sync */
  uint64_t live_bytes, nsegs, use_clock;
  int open_fds;
  bool dir_dirty, fsync_failed, sync_failing;
  /* index: ring of entries by absolute position, ids strictly increasing */
  entry_t *ring;
  uint64_t ring_cap, rhead, rtail;
  uint64_t *cursor; /* per reader: next position to look at */
  run_t *runs;
  size_t nruns, runs_cap;
  uint64_t tag_pending[MG_WAL_MAX_SHARDS];
  uint32_t ntags;
  uint64_t next_id, pending_records, pending_samples;
  uint64_t ack_gen, ckpt_gen; /* finishes so far; value in the last checkpoint */
  uint64_t last_ckpt_ms;      /* when the last checkpoint was started (opts.checkpoint_ms) */
  uint64_t max_done_id;       /* highest id finished: bounds the range scan */
  uint64_t protect_from;      /* lowest name of a segment left alone (MAX_ID if none) */
  uint64_t written, synced, sync_attempted; /* bytes since open */
  uint64_t last_expire_ms;
  unsigned long long last_read_log_ms, last_old_log_ms;
  mg_wal_stats_t st;
  /* sync scratch (sync_mu) */
  int job_fds[SYNC_BATCH];
  unsigned char job_ckpt[CKPT_MAX];
  size_t job_ckpt_len;
};

/* ---- small helpers ---- */

static void put16(unsigned char *p, uint16_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
}
static void put32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const unsigned char *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

/* zlib's CRC-32 (IEEE): at hand, and fast enough (~1.7 GB/s here) that a
 * 64 KiB batch costs tens of microseconds. */
static uint32_t crc(const void *p, size_t n) { return (uint32_t)crc32_z(0, p, n); }

static const char *ename(int e) {
  const char *s = strerrorname_np(e);
  return s ? s : "EUNKNOWN";
}
static const char *edesc(int e) {
  const char *s = strerrordesc_np(e);
  return s ? s : "unknown error";
}

static uint64_t wall_ms(const mg_wal_t *w) {
  if (w->o.clock_ms) return w->o.clock_ms(w->o.clock_ud);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void seg_fname(char out[32], uint64_t name) { snprintf(out, 32, "%016" PRIx64 ".seg", name); }

static bool parse_seg_fname(const char *s, uint64_t *out) {
  if (strlen(s) != 20 || strcmp(s + 16, ".seg") != 0) return false;
  uint64_t v = 0;
  for (int i = 0; i < 16; i++) {
    char c = s[i];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return false;
    v = v << 4 | (uint64_t)d;
  }
  if (v == 0 || v >= MAX_ID) return false;
  *out = v;
  return true;
}

/* Write all of iov at off, resuming after short writes. 0 or an errno. */
static int pwrite_all(int fd, struct iovec *iov, int cnt, uint64_t off) {
  for (;;) {
    while (cnt > 0 && iov->iov_len == 0) iov++, cnt--;
    if (cnt == 0) return 0;
    ssize_t n = pwritev(fd, iov, cnt, (off_t)off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    off += (uint64_t)n;
    size_t left = (size_t)n;
    while (cnt > 0 && left >= iov->iov_len) left -= iov->iov_len, iov++, cnt--;
    if (cnt > 0) {
      iov->iov_base = (char *)iov->iov_base + left;
      iov->iov_len -= left;
    }
  }
}

/* A record header that passes its own CRC and whose fields are in range.
 * The header CRC is what makes resynchronisation after damage linear: a
 * candidate is accepted or refused on 40 bytes, not on its payload. */
static bool rec_hdr_ok(const unsigned char *h) {
  if (memcmp(h, rec_magic, 4) != 0 || crc(h + 8, REC_HDR - 8) != get32(h + 4)) return false;
  uint64_t id = get64(h + 16);
  uint16_t tag = get16(h + 36), nsh = get16(h + 38);
  return get32(h + 12) <= MG_WAL_MAX_SEGMENT && id >= 1 && id < MAX_ID && nsh >= 1 && nsh <= MG_WAL_MAX_SHARDS &&
         tag < nsh;
}

/* ---- the index ---- */

static entry_t *at(const mg_wal_t *w, uint64_t pos) { return &w->ring[pos & (w->ring_cap - 1)]; }

static int ring_resize(mg_wal_t *w, uint64_t cap) {
  entry_t *n = mg_mallocarray((size_t)cap, sizeof *n);
  if (!n) return MG_ENOMEM;
  for (uint64_t p = w->rhead; p < w->rtail; p++) n[p & (cap - 1)] = *at(w, p);
  mg_free(w->ring);
  w->ring = n;
  w->ring_cap = cap;
  return 0;
}

static bool needs_run(const mg_wal_t *w, uint16_t nshards) {
  return w->nruns == 0 || w->runs[w->nruns - 1].nshards != nshards;
}

static int reserve_ring(mg_wal_t *w) {
  if (w->rtail - w->rhead == w->ring_cap && ring_resize(w, w->ring_cap ? w->ring_cap * 2 : 64) != 0)
    return MG_ENOMEM;
  return 0;
}

/* Room for one more entry (and its run), before anything is written. */
static int reserve_entry(mg_wal_t *w, uint16_t nshards) {
  if (reserve_ring(w) != 0) return MG_ENOMEM;
  if (needs_run(w, nshards) && w->nruns == w->runs_cap) {
    size_t cap = w->runs_cap ? w->runs_cap * 2 : 4;
    run_t *r = mg_reallocarray(w->runs, cap, sizeof *r);
    if (!r) return MG_ENOMEM;
    w->runs = r;
    w->runs_cap = cap;
  }
  return 0;
}

static void push(mg_wal_t *w, const entry_t *e) {
  *at(w, w->rtail++) = *e;
  if (needs_run(w, e->nshards)) w->runs[w->nruns++] = (run_t){e->id, 0, e->nshards};
  w->runs[w->nruns - 1].pending++;
  w->tag_pending[e->tag]++;
  if (e->tag >= w->ntags) w->ntags = e->tag + 1u;
  w->pending_records++;
  w->pending_samples += e->nsamples;
  seg_t *s = e->seg;
  s->pending++;
  if (!s->lo) s->lo = e->id;
  s->hi = e->id;
}

/* A record found finished by recovery (per the previous checkpoint) but
 * behind a pending one: kept so the next checkpoint still covers it. */
static void push_done(mg_wal_t *w, uint64_t id, uint16_t tag, uint16_t nshards) {
  *at(w, w->rtail++) = (entry_t){.id = id, .tag = tag, .nshards = nshards, .state = E_DONE};
  if (id > w->max_done_id) w->max_done_id = id;
}

/* Position of the first entry with id >= id (rtail if none). */
static uint64_t lower_bound(const mg_wal_t *w, uint64_t id) {
  uint64_t lo = w->rhead, hi = w->rtail;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (at(w, mid)->id < id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

static void pop_front(mg_wal_t *w) {
  while (w->rhead < w->rtail && at(w, w->rhead)->state == E_DONE) w->rhead++;
}

/* After an outage drained: give back most of a ring that grew large.
 * Allocates, so only the loop thread calls it. */
static void maybe_shrink(mg_wal_t *w) {
  if (w->ring_cap > 1024 && w->rtail - w->rhead < w->ring_cap / 8) (void)ring_resize(w, w->ring_cap / 2);
}

static void run_done(mg_wal_t *w, uint64_t id) {
  for (size_t i = w->nruns; i-- > 0;) {
    if (w->runs[i].first_id > id) continue;
    if (--w->runs[i].pending == 0) {
      memmove(&w->runs[i], &w->runs[i + 1], (w->nruns - i - 1) * sizeof *w->runs);
      w->nruns--;
    }
    return;
  }
}

/* Held back by the reshard barrier: an earlier run with another shard
 * count still has records pending. */
static bool blocked(const mg_wal_t *w, const entry_t *e) {
  for (size_t i = 0; i < w->nruns && w->runs[i].first_id <= e->id; i++)
    if (w->runs[i].nshards != e->nshards) return true;
  return false;
}

/* ---- segments ---- */

static void retire(mg_wal_t *w, seg_t *s) {
  if (s->prev) s->prev->next = s->next;
  else w->head = s->next;
  if (s->next) s->next->prev = s->prev;
  else w->tail = s->prev;
  if (s == w->active) w->active = NULL;
  if (s->fd >= 0) {
    close(s->fd);
    s->fd = -1;
    w->open_fds--;
  }
  w->live_bytes -= s->size;
  w->nsegs--;
  s->prev = NULL;
  s->next = w->dead;
  w->dead = s;
}

static void link_tail(mg_wal_t *w, seg_t *s) {
  s->prev = w->tail;
  s->next = NULL;
  if (w->tail) w->tail->next = s;
  else w->head = s;
  w->tail = s;
  w->nsegs++;
  w->live_bytes += s->size;
}

static void finish(mg_wal_t *w, entry_t *e, why_t why) {
  if (e->state == E_DONE) return;
  e->state = E_DONE;
  w->pending_records--;
  w->pending_samples -= e->nsamples;
  w->tag_pending[e->tag]--;
  run_done(w, e->id);
  w->ack_gen++;
  if (e->id > w->max_done_id) w->max_done_id = e->id;
  switch (why) {
  case WHY_ACK:
    break;
  case WHY_FULL:
    w->st.dropped_full_records++;
    w->st.dropped_full_samples += e->nsamples;
    break;
  case WHY_OLD:
    w->st.dropped_old_records++;
    w->st.dropped_old_samples += e->nsamples;
    break;
  case WHY_CORRUPT:
    w->st.corrupt_records++;
    w->st.corrupt_samples += e->nsamples;
    w->st.corrupt_bytes += REC_HDR + (uint64_t)e->len;
    break;
  }
  seg_t *s = e->seg;
  e->seg = NULL;
  if (s && --s->pending == 0 && s != w->active) retire(w, s);
}

/* Close the least recently read fds of sealed segments until at most keep
 * are open (the active segment's stays). A long outage leaves many sealed
 * segments; each reopens on demand when a reader gets to it. */
static void trim_fds(mg_wal_t *w, int keep) {
  while (w->open_fds > keep) {
    seg_t *lru = NULL;
    for (seg_t *t = w->head; t; t = t->next)
      if (t->fd >= 0 && t != w->active && (!lru || t->last_use < lru->last_use)) lru = t;
    if (!lru) return;
    close(lru->fd);
    lru->fd = -1;
    w->open_fds--;
  }
}

/* Stop appending to the active segment. Its fd is dup()ed for the next
 * sync to fsync: the segment itself may be retired before that. */
static void seal_active(mg_wal_t *w) {
  seg_t *s = w->active;
  if (!s) return;
  w->active = NULL;
  if (!w->o.no_fsync && s->sync_fd < 0) {
    s->sync_fd = fcntl(s->fd, F_DUPFD_CLOEXEC, 0);
    /* Out of fds: fsync here rather than forget the segment (rare). */
    if (s->sync_fd < 0 && fsync(s->fd) != 0) {
      w->st.sync_errors++;
      w->st.last_errno = errno;
    }
  }
  if (s->pending == 0) retire(w, s);
  else trim_fds(w, MAX_READ_FDS - 1); /* room for the next active one */
}

/* Drop a whole segment (size or age cap). Records handed out stay pending
 * without a segment: the caller holds their data and acks them later, and
 * they are counted by the caller when their send ends, not here. */
static void evict(mg_wal_t *w, seg_t *s, why_t why) {
  uint64_t recs = w->pending_records, samples = w->pending_samples;
  if (s == w->active) w->active = NULL;
  if (s->lo) {
    for (uint64_t p = lower_bound(w, s->lo); p < w->rtail; p++) {
      entry_t *e = at(w, p);
      if (e->id > s->hi) break;
      if (e->seg != s) continue;
      e->seg = NULL;
      s->pending--;
      if (e->state == E_PENDING) finish(w, e, why);
    }
  }
  retire(w, s);
  recs -= w->pending_records;
  samples -= w->pending_samples;
  char fname[32];
  seg_fname(fname, s->name);
  if (why == WHY_FULL)
    MG_WARN("wal", "dropped", "wal=%s reason=buffer_full segment=%s records=%" PRIu64 " samples=%" PRIu64
            " hint=\"receiver down or slower than the scrapes; raise the buffer size or fix the receiver\"",
            w->qname, fname, recs, samples);
  else
    MG_WARN("wal", "dropped", "wal=%s reason=too_old segment=%s records=%" PRIu64 " samples=%" PRIu64
            " max_age_ms=%" PRIu64, w->qname, fname, recs, samples, w->o.max_age_ms);
}

static void maybe_expire(mg_wal_t *w, uint64_t now, bool force) {
  if (!w->o.max_age_ms) return;
  if (!force && now >= w->last_expire_ms && now - w->last_expire_ms < EXPIRE_EVERY_MS) return;
  w->last_expire_ms = now;
  if (now <= w->o.max_age_ms) return;
  uint64_t cutoff = now - w->o.max_age_ms;
  for (seg_t *s = w->head, *nx; s; s = nx) {
    nx = s->next;
    if (s->lo && s->newest_ms < cutoff) evict(w, s, WHY_OLD);
  }
}

static void write_failed(mg_wal_t *w, const char *op, int err) {
  w->st.write_errors++;
  w->st.last_errno = err;
  if (w->st.degraded) return; /* logged once per failure streak */
  w->st.degraded = true;
  MG_ERROR("wal", "append_failed", "wal=%s op=%s err=EIO errno=%s detail=\"%s\" hint=\"free disk space or fix "
           "permissions under the data directory; batches are kept in memory meanwhile\"",
           w->qname, op, ename(err), edesc(err));
}

static int new_segment(mg_wal_t *w, uint64_t now) {
  seg_t *s = mg_calloc(1, sizeof *s);
  if (!s) return MG_ENOMEM;
  s->fd = s->sync_fd = -1;
  s->name = w->next_id;
  char fname[32];
  seg_fname(fname, s->name);
  /* O_TRUNC: the name is above every live segment's ids, so an existing
   * file of that name is one that could not be read or unlinked. */
  int fd = openat(w->dirfd, fname, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) {
    write_failed(w, "create_segment", errno);
    mg_free(s);
    return MG_EIO;
  }
  unsigned char h[SEG_HDR];
  memcpy(h, seg_magic, 8);
  put32(h + 8, SEG_VERSION);
  put64(h + 16, s->name);
  put64(h + 24, now);
  uint32_t c = (uint32_t)crc32_z(crc(h, 12), h + 16, SEG_HDR - 16);
  put32(h + 12, c);
  struct iovec iov = {h, SEG_HDR};
  int err = pwrite_all(fd, &iov, 1, 0);
  if (err) {
    write_failed(w, "create_segment", err);
    close(fd);
    unlinkat(w->dirfd, fname, 0);
    mg_free(s);
    return MG_EIO;
  }
  s->fd = fd;
  w->open_fds++;
  s->last_use = ++w->use_clock;
  s->size = SEG_HDR;
  s->newest_ms = now;
  link_tail(w, s);
  w->active = s;
  w->written += SEG_HDR;
  w->dir_dirty = true;
  return 0;
}

/* The segment's read fd, opened on demand; at most MAX_READ_FDS stay open. */
static int seg_fd(mg_wal_t *w, seg_t *s) {
  s->last_use = ++w->use_clock;
  if (s->fd >= 0) return s->fd;
  trim_fds(w, MAX_READ_FDS - 1);
  char fname[32];
  seg_fname(fname, s->name);
  s->fd = openat(w->dirfd, fname, O_RDONLY | O_CLOEXEC);
  if (s->fd >= 0) w->open_fds++;
  return s->fd;
}

/* ---- append ---- */

static int append_locked(mg_wal_t *w, uint32_t shard, const void *data, size_t len, uint32_t nsamples, uint64_t now,
                         uint64_t *id) {
  /* 2^62 ids last 146 000 years at a million appends a second: only a
   * forged checkpoint gets here. */
  if (w->next_id >= MAX_ID) {
    write_failed(w, "ids_exhausted", ERANGE);
    return MG_EIO;
  }
  uint64_t need = REC_HDR + (uint64_t)len;
  if (w->fsync_failed) {
    seal_active(w);
    w->fsync_failed = false;
  }
  if (w->active && w->active->size + need > w->o.segment_bytes) seal_active(w);
  /* Size cap: oldest segments go first. Terminates with room because a
   * record plus a segment header fits in segment_bytes <= max_bytes / 2. */
  while (w->head && w->live_bytes + need + (w->active ? 0 : SEG_HDR) > w->o.max_bytes) evict(w, w->head, WHY_FULL);
  uint16_t nsh = (uint16_t)w->o.nshards;
  int rc = reserve_entry(w, nsh);
  if (rc) return rc;
  if (!w->active && (rc = new_segment(w, now)) != 0) return rc;
  seg_t *s = w->active;
  entry_t e = {.id = w->next_id, .seg = s, .off = (uint32_t)s->size, .len = (uint32_t)len, .nsamples = nsamples,
               .tag = (uint16_t)shard, .nshards = nsh, .state = E_PENDING};
  unsigned char h[REC_HDR];
  memcpy(h, rec_magic, 4);
  put32(h + 8, crc(data, len));
  put32(h + 12, (uint32_t)len);
  put64(h + 16, e.id);
  put64(h + 24, now);
  put32(h + 32, nsamples);
  put16(h + 36, e.tag);
  put16(h + 38, nsh);
  put32(h + 4, crc(h + 8, REC_HDR - 8));
  struct iovec iov[2] = {{h, REC_HDR}, {(void *)data, len}};
  int err = pwrite_all(s->fd, iov, 2, s->size);
  if (err) {
    write_failed(w, "append", err);
    /* Cut a partial record so later appends do not follow garbage; if
     * even that fails, leave the file to recovery (a torn tail). */
    if (ftruncate(s->fd, (off_t)s->size) != 0) seal_active(w);
    return MG_EIO;
  }
  s->size += need;
  w->live_bytes += need;
  w->written += need;
  if (now > s->newest_ms) s->newest_ms = now;
  push(w, &e);
  w->next_id++;
  if (w->st.degraded) {
    w->st.degraded = false;
    MG_INFO("wal", "append_recovered", "wal=%s failed_appends=%" PRIu64, w->qname, w->st.write_errors);
  }
  if (id) *id = e.id;
  return 0;
}

static int append(mg_wal_t *w, uint32_t shard, const void *data, size_t len, uint32_t nsamples, uint64_t *id,
                  bool *taken) {
  if (id) *id = 0;
  if (taken) *taken = false;
  if (!w || shard >= w->o.nshards || (!data && len)) return MG_EINVAL;
  if (len > w->max_record) return MG_ETOOBIG;
  pthread_mutex_lock(&w->mu);
  uint64_t now = wall_ms(w);
  maybe_expire(w, now, false);
  int rc = append_locked(w, shard, data, len, nsamples, now, id);
  if (rc == 0 && taken) {
    /* Hand it out only if reader shard has nothing older pending (from
     * its cursor on) and the reshard barrier does not hold it. */
    uint64_t pos = w->rtail - 1;
    entry_t *e = at(w, pos);
    bool ok = !blocked(w, e);
    for (uint64_t p = w->cursor[shard] > w->rhead ? w->cursor[shard] : w->rhead; ok && p < pos; p++) {
      const entry_t *x = at(w, p);
      ok = !(x->state == E_PENDING && x->tag % w->o.nshards == shard);
    }
    if (ok) {
      e->state = E_HANDED;
      w->cursor[shard] = pos + 1;
      *taken = true;
    }
  }
  pop_front(w);
  maybe_shrink(w);
  pthread_mutex_unlock(&w->mu);
  return rc;
}

int mg_wal_append(mg_wal_t *w, uint32_t shard, const void *data, size_t len, uint32_t nsamples, uint64_t *id) {
  return append(w, shard, data, len, nsamples, id, NULL);
}

int mg_wal_append_take(mg_wal_t *w, uint32_t shard, const void *data, size_t len, uint32_t nsamples, uint64_t *id,
                       bool *taken) {
  bool t = false;
  int rc = append(w, shard, data, len, nsamples, id, &t);
  if (taken) *taken = t;
  return rc;
}

/* ---- replay ---- */

/* Read and re-check one record. 0: rec filled; 1: skipped (finished as
 * damaged or too old); MG_ENOMEM: left pending. */
static int read_entry(mg_wal_t *w, entry_t *e, mg_wal_record_t *rec, uint64_t now) {
  char *buf = mg_malloc(e->len ? e->len : 1);
  if (!buf) return MG_ENOMEM;
  unsigned char h[REC_HDR];
  const char *problem = NULL;
  int err = 0;
  int fd = seg_fd(w, e->seg);
  if (fd < 0) {
    err = errno;
    problem = "open";
  } else {
    struct iovec iov[2] = {{h, REC_HDR}, {buf, e->len}};
    ssize_t n;
    do n = preadv(fd, iov, 2, (off_t)e->off);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      err = errno;
      problem = "read";
    } else if ((size_t)n != REC_HDR + (size_t)e->len) {
      problem = "short_read";
    } else if (!rec_hdr_ok(h) || get64(h + 16) != e->id || get32(h + 12) != e->len ||
               crc(buf, e->len) != get32(h + 8)) {
      problem = "checksum";
    }
  }
  if (problem) {
    if (mg_log_ratelimit(&w->last_read_log_ms, now, READ_LOG_EVERY_MS)) {
      char fname[32];
      seg_fname(fname, e->seg->name);
      MG_WARN("wal", "record_unreadable", "wal=%s segment=%s offset=%" PRIu32 " id=%" PRIu64 " problem=%s errno=%s"
              " hint=\"disk or filesystem damage; the record is skipped\"",
              w->qname, fname, e->off, e->id, problem, err ? ename(err) : "none");
    }
    mg_free(buf);
    finish(w, e, WHY_CORRUPT);
    return 1;
  }
  uint64_t t = get64(h + 24);
  if (w->o.max_age_ms && now > t && now - t > w->o.max_age_ms) {
    if (mg_log_ratelimit(&w->last_old_log_ms, now, READ_LOG_EVERY_MS))
      MG_WARN("wal", "dropped", "wal=%s reason=too_old id=%" PRIu64 " samples=%" PRIu32 " age_ms=%" PRIu64
              " max_age_ms=%" PRIu64 " note=\"further drops counted, logged every 10 s\"",
              w->qname, e->id, e->nsamples, now - t, w->o.max_age_ms);
    mg_free(buf);
    finish(w, e, WHY_OLD);
    return 1;
  }
  rec->id = e->id;
  rec->nsamples = e->nsamples;
  rec->shard = e->tag;
  rec->time_ms = t;
  rec->data = buf;
  rec->len = e->len;
  return 0;
}

int mg_wal_next(mg_wal_t *w, uint32_t shard, uint64_t before_id, mg_wal_record_t *rec) {
  if (rec) memset(rec, 0, sizeof *rec);
  if (!w || !rec || shard >= w->o.nshards) return MG_EINVAL;
  pthread_mutex_lock(&w->mu);
  uint64_t now = wall_ms(w);
  maybe_expire(w, now, false);
  uint64_t pos = w->cursor[shard] > w->rhead ? w->cursor[shard] : w->rhead;
  int rc = MG_EAGAIN;
  for (; pos < w->rtail; pos++) {
    entry_t *e = at(w, pos);
    if (e->state != E_PENDING || e->tag % w->o.nshards != shard) continue;
    if ((before_id && e->id >= before_id) || blocked(w, e)) break;
    int r = read_entry(w, e, rec, now);
    if (r == 1) continue;
    if (r < 0) {
      rc = r;
      break;
    }
    e->state = E_HANDED;
    pos++;
    rc = 0;
    break;
  }
  w->cursor[shard] = pos;
  pop_front(w);
  pthread_mutex_unlock(&w->mu);
  return rc;
}

int mg_wal_set_nshards(mg_wal_t *w, uint32_t nshards) {
  if (!w || !nshards || nshards > MG_WAL_MAX_SHARDS) return MG_EINVAL;
  uint64_t *c = mg_calloc(nshards, sizeof *c);
  if (!c) return MG_ENOMEM;
  pthread_mutex_lock(&w->mu);
  for (uint32_t i = 0; i < nshards; i++) c[i] = w->rhead; /* records move between readers: look again */
  uint64_t *old = w->cursor;
  w->cursor = c;
  w->o.nshards = nshards;
  pthread_mutex_unlock(&w->mu);
  mg_free(old);
  return 0;
}

int mg_wal_ack(mg_wal_t *w, uint64_t id) {
  if (!w) return MG_EINVAL;
  pthread_mutex_lock(&w->mu);
  int rc = MG_ENOTFOUND;
  uint64_t pos = lower_bound(w, id);
  if (pos < w->rtail) {
    entry_t *e = at(w, pos);
    if (e->id == id && e->state != E_DONE) {
      finish(w, e, WHY_ACK);
      rc = 0;
    }
  }
  pop_front(w);
  pthread_mutex_unlock(&w->mu);
  return rc;
}

/* ---- checkpoint ---- */

/* What is finished, for the next open: every id below acked_below; for
 * each shard tag t, its records below tag[t] (its first pending one); and
 * id ranges between pending records that hold finished records the first
 * two do not cover (acks out of order). The index holds every record on
 * disk from the first pending one on (recovery keeps the ones finished per
 * the previous checkpoint as finished entries), so an id of a gap that is
 * not in the index is on no readable segment and claiming it costs
 * nothing. Nothing at or above protect_from is claimed. Built under mu,
 * into the fixed scratch buffer. */
static void ckpt_range(unsigned char *b, uint32_t *nr, uint64_t first, uint64_t last, uint64_t cap) {
  if (first > last || first >= cap || *nr == CKPT_RANGES) return;
  if (last >= cap) last = cap - 1;
  put64(b + 16 * *nr, first);
  put64(b + 16 * *nr + 8, last);
  (*nr)++;
}

static size_t build_checkpoint(mg_wal_t *w, unsigned char *b) {
  uint32_t nt = w->ntags, nr = 0;
  uint64_t cap = w->protect_from;
  uint64_t below = w->rhead < w->rtail ? at(w, w->rhead)->id : w->next_id;
  if (below > cap) below = cap;
  memcpy(b, ckpt_magic, 8);
  put32(b + 8, CKPT_VERSION);
  put32(b + 12, nt);
  put64(b + 20, below);
  put64(b + 28, w->next_id);
  unsigned char *tp = b + CKPT_HDR, *rp = tp + 8 * (size_t)nt;
  unsigned char found[MG_WAL_MAX_SHARDS / 8] = {0};
  uint32_t want = 0;
  for (uint32_t t = 0; t < nt; t++) {
    put64(tp + 8 * t, w->tag_pending[t] ? below : (w->next_id < cap ? w->next_id : cap));
    if (w->tag_pending[t]) want++;
  }
  /* Stops once every shard with pending records has its first one: in an
   * outage all shards are stuck near the front, so this is short. */
  for (uint64_t p = w->rhead; p < w->rtail && want; p++) {
    const entry_t *e = at(w, p);
    if (e->state == E_DONE || (found[e->tag / 8] & (1u << (e->tag % 8)))) continue;
    found[e->tag / 8] |= (unsigned char)(1u << (e->tag % 8));
    put64(tp + 8 * e->tag, e->id < cap ? e->id : cap);
    want--;
  }
  /* Ranges: a gap between two pending records is listed when it holds a
   * finished record that its shard's position does not cover. The scan
   * ends at the first pending record after the highest finished id: past
   * it everything is pending. */
  if (w->rhead < w->rtail) {
    uint64_t pend = at(w, w->rhead)->id;
    bool need = false;
    for (uint64_t p = w->rhead + 1; p < w->rtail && nr < CKPT_RANGES; p++) {
      const entry_t *e = at(w, p);
      if (e->state == E_DONE) {
        if (e->id >= get64(tp + 8 * e->tag)) need = true;
        continue;
      }
      if (need) ckpt_range(rp, &nr, pend + 1, e->id - 1, cap);
      need = false;
      pend = e->id;
      if (e->id > w->max_done_id) break;
    }
    if (need) ckpt_range(rp, &nr, pend + 1, w->next_id - 1, cap);
  }
  put32(b + 16, nr);
  size_t n = CKPT_HDR + 8 * (size_t)nt + 16 * (size_t)nr;
  put32(b + n, crc(b, n));
  return n + 4;
}

/* 0, or an errno. Uses only job_ckpt: safe on a pool thread. */
static int write_checkpoint(mg_wal_t *w) {
  int fd = openat(w->dirfd, CKPT_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return errno;
  struct iovec iov = {w->job_ckpt, w->job_ckpt_len};
  int err = pwrite_all(fd, &iov, 1, 0);
  if (!err && !w->o.no_fsync && fsync(fd) != 0) err = errno;
  if (close(fd) != 0 && !err) err = errno;
  if (!err && renameat(w->dirfd, CKPT_TMP, w->dirfd, CKPT_NAME) != 0) err = errno;
  if (!err && !w->o.no_fsync && fsync(w->dirfd) != 0) err = errno;
  if (err) unlinkat(w->dirfd, CKPT_TMP, 0);
  return err;
}

/* Read the checkpoint into ck; a missing one means a fresh directory, a
 * damaged one means "send everything again" (at least once). */
static void read_checkpoint(mg_wal_t *w, ckpt_t *ck) {
  memset(ck, 0, sizeof *ck);
  int fd = openat(w->dirfd, CKPT_NAME, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT)
      MG_WARN("wal", "checkpoint_unreadable", "wal=%s errno=%s hint=\"unacknowledged and acknowledged records "
              "since the last checkpoint will be sent again\"", w->qname, ename(errno));
    return;
  }
  unsigned char *b = w->job_ckpt; /* no sync can run before open returns */
  struct stat stt;
  ssize_t n = -1;
  if (fstat(fd, &stt) == 0 && stt.st_size <= (off_t)CKPT_MAX) {
    size_t got = 0, want = (size_t)stt.st_size;
    ssize_t k = 0;
    while (got < want && ((k = pread(fd, b + got, want - got, (off_t)got)) > 0 || (k < 0 && errno == EINTR)))
      if (k > 0) got += (size_t)k;
    n = (ssize_t)got;
  }
  close(fd);
  const char *problem = NULL;
  uint32_t nt = n >= (ssize_t)CKPT_HDR ? get32(b + 12) : 0, nr = n >= (ssize_t)CKPT_HDR ? get32(b + 16) : 0;
  if (n < 0) problem = "size";
  else if (n < (ssize_t)(CKPT_HDR + 4) || memcmp(b, ckpt_magic, 8) != 0) problem = "magic";
  else if (get32(b + 8) != CKPT_VERSION) problem = "version";
  else if (nt > MG_WAL_MAX_SHARDS || nr > CKPT_RANGES || (size_t)n != CKPT_HDR + 8 * (size_t)nt + 16 * (size_t)nr + 4)
    problem = "size";
  else if (crc(b, (size_t)n - 4) != get32(b + n - 4)) problem = "checksum";
  /* Nothing may be claimed at or above its next_id: the ids this run
   * appends start there, and a claim on them would lose them. */
  uint64_t next = n >= (ssize_t)CKPT_HDR ? get64(b + 28) : 0;
  /* (offsets only once the size is known to match) */
  const unsigned char *tp = b + CKPT_HDR, *rp = problem ? tp : tp + 8 * (size_t)nt;
  if (!problem && (next >= MAX_ID || get64(b + 20) > next)) problem = "range";
  for (uint32_t t = 0; !problem && t < nt; t++)
    if (get64(tp + 8 * t) > next) problem = "range";
  /* Ranges ascending and disjoint (ck_done searches them). */
  for (uint32_t i = 0; !problem && i < nr; i++) {
    uint64_t f = get64(rp + 16 * i), l = get64(rp + 16 * i + 8);
    if (f > l || l >= next || (i > 0 && f <= get64(rp + 16 * (i - 1) + 8))) problem = "range";
  }
  if (problem) {
    MG_WARN("wal", "checkpoint_invalid", "wal=%s problem=%s hint=\"records are sent again from the oldest segment\"",
            w->qname, problem);
    return;
  }
  ck->below = get64(b + 20);
  ck->next_id = get64(b + 28);
  ck->ntags = nt;
  ck->nranges = nr;
  for (uint32_t t = 0; t < nt; t++) ck->tag[t] = get64(tp + 8 * t);
  for (uint32_t i = 0; i < nr; i++) {
    ck->range[i][0] = get64(rp + 16 * i);
    ck->range[i][1] = get64(rp + 16 * i + 8);
  }
}

static bool ck_done(const ckpt_t *ck, uint64_t id, uint16_t tag) {
  if (id < ck->below || (tag < ck->ntags && id < ck->tag[tag])) return true;
  size_t lo = 0, hi = ck->nranges;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (ck->range[mid][1] < id) lo = mid + 1;
    else hi = mid;
  }
  return lo < ck->nranges && ck->range[lo][0] <= id;
}

/* ---- recovery ---- */

/* Buffered positional reader over one segment file. */
typedef struct rd {
  int fd;
  uint64_t size;
  unsigned char *buf;
  size_t cap, blen;
  uint64_t boff;
  int err;
} rd_t;

/* n bytes at off (off + n <= size), or NULL with r->err set. */
static const unsigned char *rd_get(rd_t *r, uint64_t off, size_t n) {
  if (off >= r->boff && off + n <= r->boff + r->blen) return r->buf + (off - r->boff);
  size_t want = n > SCAN_CHUNK ? n : SCAN_CHUNK;
  if (want > r->size - off) want = (size_t)(r->size - off);
  if (want > r->cap) {
    unsigned char *b = mg_realloc(r->buf, want);
    if (!b) {
      r->err = ENOMEM;
      return NULL;
    }
    r->buf = b;
    r->cap = want;
  }
  size_t got = 0;
  r->blen = 0;
  while (got < want) {
    ssize_t k = pread(r->fd, r->buf + got, want - got, (off_t)(off + got));
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      r->err = errno;
      return NULL;
    }
    if (k == 0) break;
    got += (size_t)k;
  }
  r->boff = off;
  r->blen = got;
  if (got < n) {
    r->err = EIO; /* the file shrank under us */
    return NULL;
  }
  return r->buf;
}

/* Offset of the next record header that checks out, at or after from;
 * r->size when there is none (or on a read error, r->err set). */
static uint64_t find_next(rd_t *r, uint64_t from) {
  uint64_t p = from;
  while (p + REC_HDR <= r->size) {
    size_t win = r->size - p > SCAN_CHUNK ? SCAN_CHUNK : (size_t)(r->size - p);
    const unsigned char *b = rd_get(r, p, win);
    if (!b) return r->size;
    const unsigned char *hit = memmem(b, win, rec_magic, sizeof rec_magic);
    if (!hit) {
      p += win - (sizeof rec_magic - 1); /* a magic may straddle windows */
      continue;
    }
    uint64_t q = p + (uint64_t)(hit - b);
    if (q + REC_HDR > r->size) return r->size;
    const unsigned char *h = rd_get(r, q, REC_HDR);
    if (!h) return r->size;
    if (rec_hdr_ok(h)) return q;
    p = q + 1;
  }
  return r->size;
}

typedef struct scan {
  const ckpt_t *ck;
  uint64_t last_id;  /* highest id accepted so far: ids must grow */
  uint64_t min_next; /* next_id must exceed names of files left in place */
  rd_t r;
} scan_t;

/* A segment that cannot be read now (permissions, I/O error, a newer
 * format) stays on disk untouched: new names go above it, and no
 * checkpoint claims its ids as finished. */
static void left_alone(mg_wal_t *w, scan_t *sc, uint64_t name) {
  w->st.unreadable_segments++;
  if (name + 1 > sc->min_next) sc->min_next = name + 1;
  if (name < w->protect_from) w->protect_from = name;
}

/* Check one segment record by record and index its unfinished records.
 * Damage with a valid record after it is skipped and counted (exactly for
 * a record whose header survived, by the id gap otherwise); damage that
 * reaches the end of the file is a torn tail and is cut off. Returns 0 or
 * MG_ENOMEM (an unreadable file is logged and left alone). */
static int scan_segment(mg_wal_t *w, uint64_t name, uint64_t next_name, scan_t *sc) {
  char fname[32];
  seg_fname(fname, name);
  bool rw = true;
  int fd = openat(w->dirfd, fname, O_RDWR | O_CLOEXEC);
  if (fd < 0 && (errno == EACCES || errno == EROFS || errno == EPERM)) {
    rw = false;
    fd = openat(w->dirfd, fname, O_RDONLY | O_CLOEXEC);
  }
  struct stat stt;
  if (fd < 0 || fstat(fd, &stt) != 0) {
    MG_ERROR("wal", "segment_unreadable", "wal=%s segment=%s errno=%s hint=\"check permissions and the disk; "
             "the file is left alone\"", w->qname, fname, ename(errno));
    if (fd >= 0) close(fd);
    left_alone(w, sc, name);
    return 0;
  }
  uint64_t size = (uint64_t)stt.st_size, excess = 0;
  /* We never write a segment larger than MG_WAL_MAX_SEGMENT (and offsets
   * are 32-bit): anything past that is not ours. */
  if (size > MG_WAL_MAX_SEGMENT) {
    excess = size - MG_WAL_MAX_SEGMENT;
    size = MG_WAL_MAX_SEGMENT;
  }
  sc->r.fd = fd;
  sc->r.size = size;
  sc->r.blen = 0;
  sc->r.boff = 0;
  sc->r.err = 0;
  uint64_t corrupt_bytes = excess, corrupt_records = 0, corrupt_samples = 0, torn = 0, off = SEG_HDR;
  if (size < SEG_HDR) {
    off = size;
    torn = size;
  } else {
    const unsigned char *h = rd_get(&sc->r, 0, SEG_HDR);
    if (!h) goto read_error;
    bool hdr_ok = memcmp(h, seg_magic, 8) == 0 && (uint32_t)crc32_z(crc(h, 12), h + 16, SEG_HDR - 16) == get32(h + 12);
    if (hdr_ok && get32(h + 8) != SEG_VERSION) {
      MG_ERROR("wal", "segment_version", "wal=%s segment=%s version=%" PRIu32 " hint=\"written by a newer moongate; "
               "the file is left alone\"", w->qname, fname, get32(h + 8));
      close(fd);
      left_alone(w, sc, name);
      return 0;
    }
    if (!hdr_ok) corrupt_bytes += SEG_HDR; /* the records may still be fine */
  }
  seg_t *s = mg_calloc(1, sizeof *s);
  if (!s) {
    close(fd);
    return MG_ENOMEM;
  }
  s->fd = s->sync_fd = -1;
  s->name = name;
  uint64_t prev = sc->last_id > name - 1 ? sc->last_id : name - 1;
  int rc = 0;
  while (off < size) {
    if (size - off < REC_HDR) {
      torn = size - off;
      break;
    }
    const unsigned char *h = rd_get(&sc->r, off, REC_HDR);
    if (!h) break;
    if (rec_hdr_ok(h)) {
      uint64_t id = get64(h + 16), t = get64(h + 24);
      uint32_t len = get32(h + 12), pcrc = get32(h + 8), ns = get32(h + 32);
      uint16_t tag = get16(h + 36), nsh = get16(h + 38);
      uint64_t end = off + REC_HDR + len;
      if (end > size) { /* header written, payload not (or not all) */
        torn = size - off;
        break;
      }
      const unsigned char *p = rd_get(&sc->r, off + REC_HDR, len);
      if (!p) break;
      bool crc_ok = crc(p, len) == pcrc;
      /* A segment's ids are consecutive from its name, one per record of at
       * least REC_HDR bytes: an id beyond that is not one we wrote (and a
       * forged huge one would exhaust the id space). Nor is one at or past
       * the next segment's name, which was created after this one was
       * sealed: so whether a record counts does not depend on which older
       * segments are still there (dropping one must not bring a record
       * with a reused id back to life in the next). */
      bool in_reach = id <= name + (off - SEG_HDR) / REC_HDR;
      bool plausible = id > prev && in_reach && id < next_name;
      /* New segments are named above every id this file could hold, so
       * creating one never changes how an existing file reads. */
      if (in_reach && id + 1 > sc->min_next) sc->min_next = id + 1;
      if (crc_ok && plausible) {
        if (t > s->newest_ms) s->newest_ms = t;
        if (!ck_done(sc->ck, id, tag)) {
          if ((rc = reserve_entry(w, nsh)) != 0) break;
          entry_t e = {.id = id, .seg = s, .off = (uint32_t)off, .len = len, .nsamples = ns, .tag = tag,
                       .nshards = nsh, .state = E_PENDING};
          push(w, &e);
          w->st.recovered_records++;
          w->st.recovered_samples += ns;
        } else if (w->rtail > w->rhead) {
          if ((rc = reserve_ring(w)) != 0) break;
          push_done(w, id, tag, nsh);
        }
        prev = id;
        off = end;
        continue;
      }
      if (!crc_ok && end == size) { /* the last payload did not make it */
        torn = size - off;
        break;
      }
      if (id >= next_name && id > prev && in_reach) {
        /* An id the next segment owns: what follows in this file is not
         * this segment's stream either. Skipping only this record would let
         * the verdict on the ones after it depend on whether the next
         * segment still exists (once it is gone, this id counts and later
         * ones that counted before fall behind it). Counted as one record. */
        corrupt_records++;
        corrupt_bytes += size - off;
        off = size;
        break;
      }
      /* A damaged payload (or a stale copy of an older record, or an
       * implausible id): its extent is known, so only this record is lost. */
      if (plausible && !ck_done(sc->ck, id, tag)) {
        corrupt_records++;
        corrupt_samples += ns;
      } else if (!plausible && id > prev) {
        corrupt_records++; /* in place of one record; its fields are not ours */
      }
      corrupt_bytes += end - off;
      if (plausible) prev = id;
      off = end;
      continue;
    }
    uint64_t nxt = find_next(&sc->r, off + 1);
    if (sc->r.err) break;
    if (nxt >= size) {
      torn = size - off;
      break;
    }
    /* Damaged region [off, nxt): the records it held are estimated from
     * the id gap, bounded by how many headers fit in it. */
    const unsigned char *nh = rd_get(&sc->r, nxt, REC_HDR);
    if (!nh) break;
    uint64_t nid = get64(nh + 16), lo = prev + 1 > sc->ck->below ? prev + 1 : sc->ck->below;
    uint64_t lost = nid > lo ? nid - lo : 0, fit = (nxt - off) / REC_HDR;
    corrupt_records += lost < fit ? lost : fit;
    corrupt_bytes += nxt - off;
    off = nxt;
  }
  if (rc == 0 && sc->r.err == ENOMEM) {
    rc = MG_ENOMEM; /* open fails as a whole */
  } else if (rc == 0 && sc->r.err) {
    /* A read error mid-file: keep what was indexed, leave the rest. */
    MG_ERROR("wal", "segment_read_failed", "wal=%s segment=%s offset=%" PRIu64 " errno=%s hint=\"check the disk\"",
             w->qname, fname, off, ename(sc->r.err));
    corrupt_bytes += size - off;
  } else if (torn) {
    /* Cut the tail so the next recovery does not report it again. */
    off = size - torn;
    if (rw && ftruncate(fd, (off_t)off) != 0)
      MG_WARN("wal", "truncate_failed", "wal=%s segment=%s errno=%s", w->qname, fname, ename(errno));
  }
  close(fd);
  s->size = off < size ? off : size;
  link_tail(w, s);
  sc->last_id = prev;
  w->st.corrupt_records += corrupt_records;
  w->st.corrupt_samples += corrupt_samples;
  w->st.corrupt_bytes += corrupt_bytes;
  w->st.torn_bytes += torn;
  if (corrupt_bytes)
    MG_WARN("wal", "segment_corrupt", "wal=%s segment=%s bytes_skipped=%" PRIu64 " records_lost=%" PRIu64
            " samples_lost=%" PRIu64 " hint=\"disk or filesystem damage; the damaged part was skipped\"",
            w->qname, fname, corrupt_bytes, corrupt_records, corrupt_samples);
  if (torn)
    MG_INFO("wal", "torn_tail", "wal=%s segment=%s bytes=%" PRIu64 " note=\"incomplete last append of a crashed run\"",
            w->qname, fname, torn);
  return rc;

read_error:
  if (sc->r.err == ENOMEM) {
    close(fd);
    return MG_ENOMEM;
  }
  MG_ERROR("wal", "segment_read_failed", "wal=%s segment=%s offset=0 errno=%s hint=\"check the disk; the file is "
           "left alone\"", w->qname, fname, ename(sc->r.err));
  close(fd);
  left_alone(w, sc, name);
  return 0;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Segment names in dir, sorted. */
static int list_segments(mg_wal_t *w, uint64_t **names, size_t *n) {
  *names = NULL;
  *n = 0;
  int dfd = fcntl(w->dirfd, F_DUPFD_CLOEXEC, 0);
  DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
  if (!d) {
    int e = errno;
    if (dfd >= 0) close(dfd);
    MG_ERROR("wal", "open_failed", "wal=%s op=readdir errno=%s", w->qname, ename(e));
    return MG_EIO;
  }
  rewinddir(d);
  size_t cap = 0;
  struct dirent *de;
  int rc = 0;
  while ((de = readdir(d)) != NULL) {
    uint64_t v;
    if (!parse_seg_fname(de->d_name, &v)) continue;
    if (*n == cap) {
      size_t nc = cap ? cap * 2 : 16;
      uint64_t *nn = mg_reallocarray(*names, nc, sizeof *nn);
      if (!nn) {
        rc = MG_ENOMEM;
        break;
      }
      *names = nn;
      cap = nc;
    }
    (*names)[(*n)++] = v;
  }
  closedir(d);
  if (rc) {
    mg_free(*names);
    *names = NULL;
    *n = 0;
    return rc;
  }
  if (*n) qsort(*names, *n, sizeof **names, cmp_u64);
  return 0;
}

static int mkdir_p(const char *dir) {
  char p[4096];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof p) return ENAMETOOLONG;
  memcpy(p, dir, n + 1);
  for (size_t i = 1; i < n; i++) {
    if (p[i] != '/') continue;
    p[i] = '\0';
    if (mkdir(p, 0750) != 0 && errno != EEXIST) return errno;
    p[i] = '/';
  }
  if (mkdir(p, 0750) != 0 && errno != EEXIST) return errno;
  return 0;
}

/* Unlink and free retired segments (the sync thread, or open/close). */
static void reap(mg_wal_t *w, seg_t *dead) {
  while (dead) {
    seg_t *nx = dead->next;
    if (dead->sync_fd >= 0) close(dead->sync_fd);
    char fname[32];
    seg_fname(fname, dead->name);
    if (unlinkat(w->dirfd, fname, 0) != 0 && errno != ENOENT)
      MG_WARN("wal", "unlink_failed", "wal=%s segment=%s errno=%s", w->qname, fname, ename(errno));
    mg_free(dead);
    dead = nx;
  }
}

static void wal_free(mg_wal_t *w) {
  if (!w) return;
  for (seg_t *s = w->head, *nx; s; s = nx) {
    nx = s->next;
    if (s->fd >= 0) close(s->fd);
    if (s->sync_fd >= 0) close(s->sync_fd);
    mg_free(s);
  }
  for (seg_t *s = w->dead, *nx; s; s = nx) {
    nx = s->next;
    if (s->sync_fd >= 0) close(s->sync_fd);
    mg_free(s);
  }
  if (w->dirfd >= 0) close(w->dirfd);
  if (w->lockfd >= 0) close(w->lockfd); /* releases the flock */
  mg_free(w->ring);
  mg_free(w->runs);
  mg_free(w->cursor);
  mg_free(w->dir);
  pthread_mutex_destroy(&w->mu);
  pthread_mutex_destroy(&w->sync_mu);
  mg_free(w);
}

static int open_fail(mg_wal_t *w, const char *op, int e) {
  MG_ERROR("wal", "open_failed", "wal=%s op=%s errno=%s detail=\"%s\" hint=\"check that the data directory "
           "exists, is writable and is on a local filesystem\"", w->qname, op, ename(e), edesc(e));
  return MG_EIO;
}

int mg_wal_open(const char *dir, const mg_wal_opts_t *opts, mg_wal_t **out) {
  if (!out) return MG_EINVAL;
  *out = NULL;
  mg_wal_opts_t o = opts ? *opts : (mg_wal_opts_t){0};
  if (!dir || !*dir) return MG_EINVAL;
  if (!o.max_bytes) o.max_bytes = DEFAULT_MAX_BYTES;
  if (!o.segment_bytes) o.segment_bytes = DEFAULT_SEGMENT;
  if (!o.sync_bytes) o.sync_bytes = DEFAULT_SYNC_BYTES;
  if (!o.nshards) o.nshards = 1;
  if (o.nshards > MG_WAL_MAX_SHARDS || o.max_bytes < 2u * MG_WAL_MIN_SEGMENT) return MG_EINVAL;
  uint64_t seg_cap = o.max_bytes / 2 < MG_WAL_MAX_SEGMENT ? o.max_bytes / 2 : MG_WAL_MAX_SEGMENT;
  if (o.segment_bytes > seg_cap) o.segment_bytes = seg_cap;
  if (o.segment_bytes < MG_WAL_MIN_SEGMENT) o.segment_bytes = MG_WAL_MIN_SEGMENT;

  mg_wal_t *w = mg_calloc(1, sizeof *w);
  if (!w) return MG_ENOMEM;
  pthread_mutex_init(&w->mu, NULL);
  pthread_mutex_init(&w->sync_mu, NULL);
  w->dirfd = w->lockfd = -1;
  w->protect_from = MAX_ID;
  w->o = o;
  w->o.name = NULL; /* borrowed only during open */
  w->max_record = o.segment_bytes - SEG_HDR - REC_HDR;
  const char *nm = o.name ? o.name : dir;
  mg_log_q(w->qname, sizeof w->qname, nm, strlen(nm));
  w->dir = mg_strdup(dir);
  w->cursor = mg_calloc(o.nshards, sizeof *w->cursor);
  ckpt_t *ck = mg_malloc(sizeof *ck);
  uint64_t *names = NULL;
  size_t nnames = 0;
  scan_t sc = {0};
  int rc = 0, e;
  uint64_t t0 = mono_ms();
  if (!w->dir || !w->cursor || !ck) {
    rc = MG_ENOMEM;
    goto fail;
  }
  if ((e = mkdir_p(dir)) != 0) {
    rc = open_fail(w, "mkdir", e);
    goto fail;
  }
  w->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (w->dirfd < 0) {
    rc = open_fail(w, "open_dir", errno);
    goto fail;
  }
  w->lockfd = openat(w->dirfd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (w->lockfd < 0) {
    rc = open_fail(w, "lock", errno);
    goto fail;
  }
  /* Two writers would interleave records and delete each other's
   * segments; flock is released by the kernel when the process dies. */
  if (flock(w->lockfd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      MG_ERROR("wal", "locked", "wal=%s hint=\"another moongate process uses this data directory; give each its own "
               "--data-dir\"", w->qname);
      rc = MG_EEXISTS;
    } else {
      rc = open_fail(w, "flock", errno);
    }
    goto fail;
  }
  unlinkat(w->dirfd, CKPT_TMP, 0); /* a crash mid-checkpoint; the old one stands */
  read_checkpoint(w, ck);
  if ((rc = list_segments(w, &names, &nnames)) != 0) goto fail;
  sc.ck = ck;
  for (size_t i = 0; i < nnames; i++)
    if ((rc = scan_segment(w, names[i], i + 1 < nnames ? names[i + 1] : UINT64_MAX, &sc)) != 0) goto fail;
  w->next_id = sc.last_id + 1;
  if (ck->below > w->next_id) w->next_id = ck->below;
  if (ck->next_id > w->next_id) w->next_id = ck->next_id;
  for (uint32_t t = 0; t < ck->ntags; t++)
    if (ck->tag[t] > w->next_id) w->next_id = ck->tag[t];
  if (sc.min_next > w->next_id) w->next_id = sc.min_next;
  /* Tags the old checkpoint knew stay in the next one (as "all done
   * below next_id" when none of theirs is pending), or records it had
   * marked finished would be sent again after the next restart. */
  if (ck->ntags > w->ntags) w->ntags = ck->ntags;
  for (uint32_t i = 0; i < o.nshards; i++) w->cursor[i] = w->rhead;
  /* Segments with nothing left to send go now, then the age cap. */
  for (seg_t *s = w->head, *nx; s; s = nx) {
    nx = s->next;
    if (s->pending == 0) retire(w, s);
  }
  maybe_expire(w, wall_ms(w), true);
  pop_front(w);
  reap(w, w->dead);
  w->dead = NULL;
  MG_INFO("wal", "opened", "wal=%s segments=%" PRIu64 " bytes=%" PRIu64 " records=%" PRIu64 " samples=%" PRIu64
          " corrupt_bytes=%" PRIu64 " torn_bytes=%" PRIu64 " next_id=%" PRIu64 " ms=%" PRIu64,
          w->qname, w->nsegs, w->live_bytes, w->pending_records, w->pending_samples, w->st.corrupt_bytes,
          w->st.torn_bytes, w->next_id, mono_ms() - t0);
  mg_free(sc.r.buf);
  mg_free(names);
  mg_free(ck);
  *out = w;
  return 0;

fail:
  mg_free(sc.r.buf);
  mg_free(names);
  mg_free(ck);
  wal_free(w);
  return rc;
}

/* ---- sync ---- */

static int sync_impl(mg_wal_t *w, bool force_ckpt);

int mg_wal_sync(mg_wal_t *w) { return sync_impl(w, false); }

static int sync_impl(mg_wal_t *w, bool force_ckpt) {
  if (!w) return MG_EINVAL;
  pthread_mutex_lock(&w->sync_mu);
  int err = 0, ckerr = 0;
  const char *what = NULL;
  uint64_t target = 0, gen = 0;
  bool first = true, more, ckpt = false, dir_dirty = false;
  seg_t *dead = NULL;
  do {
    int n = 0;
    pthread_mutex_lock(&w->mu);
    if (first) {
      maybe_expire(w, wall_ms(w), false);
      pop_front(w);
      target = w->sync_attempted = w->written;
      /* The active segment keeps taking appends meanwhile: fsync a dup so
       * a roll-over closing its fd cannot pull the fd from under us. */
      if (!w->o.no_fsync && w->active && w->written > w->synced) {
        int fd = fcntl(w->active->fd, F_DUPFD_CLOEXEC, 0);
        if (fd >= 0) w->job_fds[n++] = fd;
        else err = errno, what = "dup";
      }
      dir_dirty = w->dir_dirty;
      w->dir_dirty = false;
    }
    more = false;
    for (seg_t *s = w->head; s; s = s->next) {
      if (s->sync_fd < 0) continue;
      if (n == SYNC_BATCH) {
        more = true;
        break;
      }
      w->job_fds[n++] = s->sync_fd;
      s->sync_fd = -1;
    }
    if (!more) {
      dead = w->dead;
      w->dead = NULL;
      pop_front(w);
      uint64_t now = wall_ms(w);
      bool due = force_ckpt || dead || !w->o.checkpoint_ms || now - w->last_ckpt_ms >= w->o.checkpoint_ms;
      if (w->ack_gen != w->ckpt_gen && due) {
        w->last_ckpt_ms = now;
        ckpt = true;
        gen = w->ack_gen;
        w->job_ckpt_len = build_checkpoint(w, w->job_ckpt);
      }
    }
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < n; i++) {
      if (!w->o.no_fsync && fsync(w->job_fds[i]) != 0 && !err) err = errno, what = "fsync";
      close(w->job_fds[i]);
    }
    first = false;
  } while (more);
  /* New segment files must be in the directory to be found after a crash. */
  if (dir_dirty && !w->o.no_fsync && fsync(w->dirfd) != 0 && !err) err = errno, what = "fsync_dir";
  /* Checkpoint before unlinking: a crash in between leaves files whose
   * records the checkpoint already counts as finished. */
  if (ckpt) ckerr = write_checkpoint(w);
  reap(w, dead);
  pthread_mutex_lock(&w->mu);
  if (err || ckerr) {
    w->st.sync_errors++;
    w->st.last_errno = err ? err : ckerr;
    if (err) w->fsync_failed = true;
    if (!w->sync_failing)
      MG_ERROR("wal", "sync_failed", "wal=%s op=%s errno=%s hint=\"the disk is failing or full; appends since the "
               "last good sync may not survive a power loss\"",
               w->qname, err ? what : "checkpoint", ename(err ? err : ckerr));
    w->sync_failing = true;
  } else if (w->sync_failing) {
    w->sync_failing = false;
    MG_INFO("wal", "sync_recovered", "wal=%s sync_errors=%" PRIu64, w->qname, w->st.sync_errors);
  }
  if (!err && target > w->synced) w->synced = target;
  if (ckpt && !ckerr) w->ckpt_gen = gen;
  pthread_mutex_unlock(&w->mu);
  pthread_mutex_unlock(&w->sync_mu);
  return err || ckerr ? MG_EIO : 0;
}

bool mg_wal_sync_wanted(mg_wal_t *w) {
  if (!w) return false;
  pthread_mutex_lock(&w->mu);
  bool r = (!w->o.no_fsync && w->written - w->sync_attempted >= w->o.sync_bytes) || w->dead != NULL;
  pthread_mutex_unlock(&w->mu);
  return r;
}

void mg_wal_stats(mg_wal_t *w, mg_wal_stats_t *st) {
  memset(st, 0, sizeof *st);
  if (!w) return;
  pthread_mutex_lock(&w->mu);
  *st = w->st;
  st->bytes = w->live_bytes;
  st->segments = w->nsegs;
  st->pending_records = w->pending_records;
  st->pending_samples = w->pending_samples;
  st->unsynced_bytes = w->o.no_fsync ? 0 : w->written - w->synced;
  st->next_id = w->next_id;
  pthread_mutex_unlock(&w->mu);
}

void mg_wal_close(mg_wal_t *w) {
  if (!w) return;
  (void)sync_impl(w, true);
  wal_free(w);
}
