/* mg_wal: the durable buffer of one destination: append-only segment files of
 * checksummed records (compressed remote-write batches), acknowledged
 * positions that survive restarts, size and age caps. Owns one directory.
 * Blocking file I/O, no libuv; fsync only in mg_wal_sync (see "Cost"). */
#ifndef MG_WAL_H
#define MG_WAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Design (docs/durability.md has the on-disk format and the reasoning):
 * - One WAL per destination, shared by all its shards. Each record carries
 *   the shard it was appended by ("tag") and the shard count of that run.
 *   Reader r of this run gets the records with tag % nshards == r, in
 *   append order, so a series keeps its order through a restart.
 * - When the shard count changed since older records were written, records
 *   of a newer shard count are held back (mg_wal_next says MG_EAGAIN) until
 *   every older record of a different shard count is acknowledged: a series
 *   may have moved to another shard, and its old samples must reach the
 *   receiver before its new ones (receivers commonly reject out-of-order
 *   samples).
 * - Delivery is at least once. After a clean close nothing acknowledged is
 *   returned again (acks out of order within a shard are kept as up to
 *   1024 id ranges; beyond that, and at or above an unreadable segment, they
 *   may be). After a crash (kill -9, power loss) records acknowledged since
 *   the last completed mg_wal_sync may be returned again. A record whose
 *   mg_wal_append returned 0 is never lost to a process crash, and to a
 *   power loss only if it was appended after the last completed sync.
 *
 * Cost (what the loop thread pays; measured figures in docs/durability.md):
 * - mg_wal_append: one pwritev(2) into the page cache plus a CRC-32 of the
 *   payload: tens of microseconds for a 64 KiB batch. When the size cap is
 *   hit it also drops the oldest segment (bookkeeping only; the file is
 *   unlinked by the next sync). Rolling to a new segment opens a file.
 * - mg_wal_next: one preadv(2) of the record (page cache in steady state;
 *   a disk read for a backlog recovered after a restart) plus its CRC-32.
 * - mg_wal_ack, mg_wal_stats, mg_wal_sync_wanted: memory only.
 * - mg_wal_sync: fsync(2) of the segments written since the last sync, the
 *   checkpoint (write temp, fsync, rename, fsync dir) and unlinking finished
 *   segments: milliseconds to seconds. Run it on the thread pool
 *   (uv_queue_work); it never allocates and holds the internal lock only to
 *   take a snapshot, so appends on the loop thread are not stalled.
 * - mg_wal_open (recovery) reads and checks every live record: startup only.
 *
 * Threads: every function except mg_wal_sync and mg_wal_stats must be
 * called from one thread (the loop). mg_wal_sync may run on any thread,
 * concurrently with those calls; concurrent syncs are serialized.
 * mg_wal_close must not overlap a running mg_wal_sync.
 *
 * fsync policy: the caller runs mg_wal_sync every sync interval (1 s is the
 * recommended default) and as soon as mg_wal_sync_wanted() says so (after
 * opts.sync_bytes of unsynced appends). An append is durable against a
 * process crash when it returns and against a power loss after the next
 * completed sync. opts.no_fsync skips fsync(2) altogether (tmpfs, tests). */

/* Most shards a destination can have (the shard tag is stored in 16 bits;
 * the checkpoint stores one position per shard). */
#define MG_WAL_MAX_SHARDS 1024u
/* Segment size bounds; opts.segment_bytes is clamped into them. */
#define MG_WAL_MIN_SEGMENT (4u << 10)
#define MG_WAL_MAX_SEGMENT (1u << 30)

typedef struct mg_wal mg_wal_t;

typedef struct mg_wal_opts {
  /* Cap on the bytes of live segment files. Appending past it drops the
   * oldest segment (its unacknowledged records are counted in
   * dropped_full_*). 0 = 1 GiB. Must be at least 2 * MG_WAL_MIN_SEGMENT. */
  uint64_t max_bytes;
  /* Records older than this (by append time) are dropped and counted in
   * dropped_old_*: whole segments by mg_wal_append/next/sync (at most once
   * a second), single records when mg_wal_next reaches them. 0 = no cap. */
  uint64_t max_age_ms;
  /* Size at which a segment is closed and a new one started. 0 = 64 MiB;
   * clamped to [MG_WAL_MIN_SEGMENT, min(MG_WAL_MAX_SEGMENT, max_bytes/2)].
   * The largest record is segment_bytes - 72 bytes. */
  uint64_t segment_bytes;
  /* mg_wal_sync_wanted() turns true after this many unsynced bytes.
   * 0 = 8 MiB. */
  uint64_t sync_bytes;
  /* Shards (readers) of this run, 1..MG_WAL_MAX_SHARDS; 0 = 1. */
  uint32_t nshards;
  /* Never call fsync(2): appends still survive a process crash, not a
   * power loss. For tmpfs and tests. */
  bool no_fsync;
  /* Wall clock in Unix milliseconds (record times survive restarts, so this
   * is not a monotonic clock). NULL = CLOCK_REALTIME. Tests inject time. */
  uint64_t (*clock_ms)(void *ud);
  void *clock_ud;
  /* Shown in log lines (the destination name); NULL = the directory. */
  const char *name;
  /* Write the checkpoint (acknowledgements) at most this often; syncs in
   * between only fsync appends. 0 = at every sync. A checkpoint is still
   * written before finished segments are unlinked and by mg_wal_close.
   * After a crash, records acked since the last checkpoint are returned
   * again: a longer interval means more resent after a crash and fewer
   * fsyncs (a checkpoint costs two) while running. */
  uint64_t checkpoint_ms;
} mg_wal_opts_t;

/* A record handed out by mg_wal_next. */
typedef struct mg_wal_record {
  uint64_t id;       /* pass to mg_wal_ack; ids only grow, never reused */
  uint32_t nsamples; /* as given to mg_wal_append */
  uint32_t shard;    /* the shard that appended it (may be >= nshards of this run) */
  uint64_t time_ms;  /* append time */
  char *data;        /* the payload; owned by the caller: mg_free() it */
  size_t len;
} mg_wal_record_t;

typedef struct mg_wal_stats {
  uint64_t bytes;           /* bytes of live segment files (what max_bytes caps) */
  uint64_t segments;        /* live segment files */
  uint64_t pending_records; /* appended or recovered, not yet acknowledged or dropped */
  uint64_t pending_samples; /*   (includes records handed out and in flight) */
  uint64_t unsynced_bytes;  /* appended since the last completed fsync */
  uint64_t next_id;         /* id the next append will get */
  uint64_t recovered_records, recovered_samples; /* unacknowledged records found by open */
  uint64_t dropped_full_records, dropped_full_samples; /* size cap (reason "buffer_full") */
  uint64_t dropped_old_records, dropped_old_samples;   /* age cap (reason "too_old") */
  /* Damaged data skipped (by open, or by mg_wal_next re-checking a record).
   * corrupt_records is exact for a record whose header survived and
   * estimated from the gap in record ids for a damaged region;
   * corrupt_samples counts only the records whose header survived. */
  uint64_t corrupt_records, corrupt_samples, corrupt_bytes;
  uint64_t torn_bytes; /* incomplete tails cut off by open (crash during an append) */
  /* Segment files open could not read (permissions, I/O error, a newer
   * format) and left untouched; acks at or above the lowest one's first id
   * are then not persisted (those records may be sent again). */
  uint64_t unreadable_segments;
  uint64_t write_errors, sync_errors; /* failed appends, failed fsyncs or checkpoints */
  int last_errno;                     /* errno of the latest failed write or sync, 0 if none yet */
  bool degraded;                      /* the last append failed (disk full, read-only, …) */
} mg_wal_stats_t;

/* Open (creating if missing, with parents) the WAL in dir and recover it:
 * every segment is checked record by record; records acknowledged per the
 * checkpoint are skipped, a torn tail is truncated away, damaged parts are
 * skipped and counted, segments with nothing left are deleted. Startup
 * only (blocking, reads every live record). opts may be NULL (defaults).
 * Errors: MG_EINVAL (opts out of range), MG_EEXISTS (another process holds
 * the directory), MG_EIO (cannot create or read the directory; logged with
 * errno), MG_ENOMEM. On error *out is NULL. */
int mg_wal_open(const char *dir, const mg_wal_opts_t *opts, mg_wal_t **out);

/* Append one record for shard (< nshards) holding nsamples samples; data is
 * copied. On 0, *id (may be NULL) is its id and the record survives a
 * process crash. Errors: MG_EINVAL (bad shard), MG_ETOOBIG (len over the
 * largest record), MG_ENOMEM, MG_EIO (write failed: disk full, quota,
 * read-only, …; logged once per failure streak with errno, counted in
 * write_errors, stats.degraded set until an append succeeds; nothing was
 * appended and earlier records are intact: keep the batch in memory). */
int mg_wal_append(mg_wal_t *w, uint32_t shard, const void *data, size_t len, uint32_t nsamples, uint64_t *id);

/* mg_wal_append that also hands the record out to reader shard at once
 * when that keeps the order: nothing older is pending for that reader and
 * the reshard barrier does not hold it. *taken says whether it was handed
 * out (then treat it as returned by mg_wal_next: send the caller's copy of
 * data, ack the id); otherwise it waits like any appended record. Saves
 * reading back a record the caller still holds. Errors as mg_wal_append
 * (*taken false). */
int mg_wal_append_take(mg_wal_t *w, uint32_t shard, const void *data, size_t len, uint32_t nsamples, uint64_t *id,
                       bool *taken);

/* Hand out the oldest record of reader shard that is not acknowledged and
 * not handed out yet, into *rec (the caller owns rec->data). before_id != 0
 * limits it to ids < before_id (to keep batches the caller holds in memory
 * in order with the WAL's). Records that turn out damaged or too old on the
 * way are skipped and counted. Returns 0, MG_EAGAIN (nothing to hand out
 * now: all handed out, or held back by a shard-count change), MG_EINVAL,
 * MG_ENOMEM (nothing handed out; try again later). A handed-out record
 * stays pending (and is returned again after a restart) until acked. */
int mg_wal_next(mg_wal_t *w, uint32_t shard, uint64_t before_id, mg_wal_record_t *rec);

/* Change the shard count of this run (a destination resharding): appends
 * from now on carry the new count and readers 0..nshards-1 share every
 * pending record by tag % nshards; the reshard barrier (see "Design")
 * holds the new appends back until the older ones are acknowledged.
 * Records handed out stay with whoever holds them. Returns 0, MG_EINVAL
 * (0 or over MG_WAL_MAX_SHARDS), MG_ENOMEM (nothing changed). */
int mg_wal_set_nshards(mg_wal_t *w, uint32_t nshards);

/* The record is finished: delivered, or permanently rejected. Records may
 * be acked in any order, handed out or not. A segment whose records are all
 * finished is deleted by the next sync. Returns 0, or MG_ENOTFOUND (unknown
 * id, acked twice, or dropped meanwhile by a cap). Memory only. */
int mg_wal_ack(mg_wal_t *w, uint64_t id);

/* Make appends durable and persist acknowledgements: fsync the segments
 * written since the last sync (and the directory when a segment was
 * created), write the checkpoint when something was acked or dropped since
 * the last one (temp file, fsync, rename, fsync dir), unlink finished and
 * dropped segments, apply the age cap. Any thread (see "Threads"); never
 * allocates. Returns 0 or MG_EIO (logged; counted in sync_errors; after a
 * failed fsync the next append starts a new segment, as the kernel may have
 * dropped the failed pages: the records stay readable from the cache but
 * are not known to be on disk). */
int mg_wal_sync(mg_wal_t *w);

/* True when opts.sync_bytes were appended since the last sync, or
 * segments wait to be unlinked: queue a sync now rather than at the next
 * tick. */
bool mg_wal_sync_wanted(mg_wal_t *w);

/* Counters and gauges for metrics (any thread). */
void mg_wal_stats(mg_wal_t *w, mg_wal_stats_t *st);

/* A last sync (blocking), then close everything and release the directory.
 * Records handed out and not acked are returned again by the next open.
 * NULL is fine. */
void mg_wal_close(mg_wal_t *w);

#endif
