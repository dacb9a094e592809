/* libFuzzer driver for mg_wal recovery: input bytes become a checkpoint and
 * up to four segments (raw, or CRCs fixed up), opened, drained, acked in part,
 * appended to and reopened. Aborts unless appended records come back intact,
 * acked ones stay acked and nothing pending is lost over the restart. */
#include <dirent.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_wal.h"

#define ENSURE(c)                                                                \
  do {                                                                           \
    if (!(c)) {                                                                  \
      fprintf(stderr, "fuzz_wal: invariant failed: %s (line %d)\n", #c, __LINE__); \
      abort();                                                                   \
    }                                                                            \
  } while (0)

/* Input: control byte, then pieces separated by SEP: checkpoint, segment
 * 0000000000000001.seg, ...0010.seg, ...0100.seg, ...1000.seg. */
#define SEP "MGFZ"
#define SEP_LEN 4
#define MAX_PIECES 5
static const uint64_t seg_names[MAX_PIECES - 1] = {0x1, 0x10, 0x100, 0x1000};

enum {
  C_FIX_CRC = 1,  /* recompute header, record and checkpoint CRCs */
  C_SHARDS = 6,   /* (c >> 1 & 3) + 1 shards this run */
  C_ACK_ODD = 8,  /* run 1 acks odd ids only (out of order acks) */
  C_ACK_NONE = 16, /* run 1 acks nothing */
  C_SMALL = 32,    /* max_bytes 8 KiB: appends drop old segments */
  C_AGE = 64       /* max_age 1 s, the clock 2 s later for run 2 */
};

static char dir[256], base_dir[256];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void clean_dir(void);
static void remove_dirs(void) {
  clean_dir();
  rmdir(dir);
  rmdir(base_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  /* FUZZ_WAL_LOG=1 shows the WAL's log lines when reproducing a crash. */
  mg_log_set_level(getenv("FUZZ_WAL_LOG") ? MG_LOG_DEBUG : MG_LOG_OFF);
  char base[] = "/dev/shm/fuzz_wal_XXXXXX";
  char base2[] = "/tmp/fuzz_wal_XXXXXX";
  const char *b = mkdtemp(base);
  if (!b) b = mkdtemp(base2);
  if (!b) abort();
  snprintf(base_dir, sizeof base_dir, "%s", b);
  snprintf(dir, sizeof dir, "%s/w", b);
  atexit(remove_dirs);
  return 0;
}

static void clean_dir(void) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d)) != NULL)
    if (de->d_name[0] != '.') unlinkat(dirfd(d), de->d_name, 0);
  closedir(d);
}

static void put32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Make a segment's header and records check out, as far as they parse. */
static void fix_segment(unsigned char *p, size_t n) {
  if (n < 32) return;
  put32(p + 12, (uint32_t)crc32_z(crc32_z(0, p, 12), p + 16, 16));
  size_t off = 32;
  while (off + 40 <= n) {
    unsigned char *h = p + off;
    size_t len = get32(h + 12);
    if (len > n - off - 40) break;
    memcpy(h, "MGWR", 4);
    put32(h + 8, (uint32_t)crc32_z(0, h + 40, len));
    put32(h + 4, (uint32_t)crc32_z(0, h + 8, 32));
    off += 40 + len;
  }
}

static void write_file(const char *name, const unsigned char *p, size_t n) {
  char path[320];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) abort();
  if (n && write(fd, p, n) != (ssize_t)n) abort();
  close(fd);
}

typedef struct seen {
  uint64_t id;
  uint64_t hash;
  bool acked;
} seen_t;

static uint64_t hash(const void *p, size_t n) { return crc32_z(0, p, n) | (uint64_t)n << 32; }

static seen_t *find(seen_t *v, size_t n, uint64_t id) {
  for (size_t i = 0; i < n; i++)
    if (v[i].id == id) return &v[i];
  return NULL;
}

static uint64_t now_ms = 1700000000000ull;
static uint64_t clock_ms(void *ud) {
  (void)ud;
  return now_ms;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > (1u << 20)) return 0;
  unsigned ctl = data[0];
  const uint8_t *piece[MAX_PIECES] = {0};
  size_t plen[MAX_PIECES] = {0}, np = 0;
  const uint8_t *p = data + 1, *end = data + size;
  while (np < MAX_PIECES) {
    const uint8_t *s = memmem(p, (size_t)(end - p), SEP, SEP_LEN);
    if (np == MAX_PIECES - 1 || !s) s = end;
    piece[np] = p;
    plen[np++] = (size_t)(s - p);
    if (s == end) break;
    p = s + SEP_LEN;
  }

  mkdir(dir, 0700);
  clean_dir();
  unsigned char *buf = malloc(size + 1);
  if (!buf) return 0;
  for (size_t i = 0; i < np; i++) {
    if (!plen[i] && i == 0) continue;
    memcpy(buf, piece[i], plen[i]);
    if (ctl & C_FIX_CRC) {
      if (i == 0 && plen[i] >= 4) put32(buf + plen[i] - 4, (uint32_t)crc32_z(0, buf, plen[i] - 4));
      if (i > 0) fix_segment(buf, plen[i]);
    }
    char name[32];
    if (i == 0) snprintf(name, sizeof name, "checkpoint");
    else snprintf(name, sizeof name, "%016llx.seg", (unsigned long long)seg_names[i - 1]);
    write_file(name, buf, plen[i]);
  }
  free(buf);

  uint32_t nshards = ((ctl & C_SHARDS) >> 1) + 1;
  mg_wal_opts_t o = {0};
  o.no_fsync = true;
  o.segment_bytes = 4096;
  o.max_bytes = ctl & C_SMALL ? 8192 : 64u << 20;
  o.max_age_ms = ctl & C_AGE ? 1000 : 0;
  o.nshards = nshards;
  o.clock_ms = clock_ms;
  now_ms = 1700000000000ull;
  /* Caps drop records on purpose: then only appended records must come
   * back, and acks need not be exact. */
  bool caps = ctl & (C_SMALL | C_AGE);
  mg_wal_t *w = NULL;
  ENSURE(mg_wal_open(dir, &o, &w) == 0);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  ENSURE(st.pending_records + st.dropped_old_records == st.recovered_records);
  uint64_t cap = st.recovered_records + 3 * nshards + 1;
  seen_t *v = calloc(cap, sizeof *v);
  size_t nv = 0;
  ENSURE(v);

  /* Run 1: drain every shard (ids grow per shard), ack by policy. */
  uint64_t last[4] = {0};
  for (uint32_t s = 0; s < nshards; s++) {
    mg_wal_record_t r;
    int rc;
    while ((rc = mg_wal_next(w, s, 0, &r)) == 0) {
      ENSURE(r.id > last[s] && r.id < st.next_id);
      ENSURE(r.shard % nshards == s);
      ENSURE(nv < cap);
      last[s] = r.id;
      bool ack = !(ctl & C_ACK_NONE) && (!(ctl & C_ACK_ODD) || (r.id & 1));
      v[nv++] = (seen_t){r.id, hash(r.data, r.len), ack};
      if (ack) ENSURE(mg_wal_ack(w, r.id) == 0);
      mg_free(r.data);
    }
    ENSURE(rc == MG_EAGAIN);
  }
  /* With the small cap, 1500-byte records (two per 4 KiB segment, at most
   * four: 6.2 KiB) make the appends drop recovered segments, never each
   * other. */
  for (uint32_t s = 0; s < nshards; s++) {
    char payload[1500];
    int n = snprintf(payload, sizeof payload, "appended by shard %u", s);
    if (ctl & C_SMALL) {
      memset(payload + n, 'x', sizeof payload - (size_t)n);
      n = (int)sizeof payload;
    }
    uint64_t id;
    int rc = mg_wal_append(w, s, payload, (size_t)n, s + 1, &id);
    /* A forged checkpoint can claim ids up to 2^62: then appends fail. */
    if (rc == MG_EIO && st.next_id + nshards >= (1ull << 62)) continue;
    ENSURE(rc == 0);
    ENSURE(id >= st.next_id && !find(v, nv, id));
    ENSURE(nv < cap);
    v[nv++] = (seen_t){id, hash(payload, (size_t)n), false};
  }
  mg_wal_stats(w, &st);
  uint64_t acked = 0;
  for (size_t i = 0; i < nv; i++) acked += v[i].acked;
  ENSURE(st.pending_records >= nv - acked);
  if (getenv("FUZZ_WAL_LOG"))
    fprintf(stderr, "run1: handed+appended=%zu acked=%llu pending=%llu\n", nv, (unsigned long long)acked,
            (unsigned long long)st.pending_records);
  bool exact = !caps && st.unreadable_segments == 0 && acked < 1000;
  mg_wal_close(w);
  /* Appended records are 0.5 s old in run 2 (not too old), recovered ones
   * from the input are mostly far older. */
  if (ctl & C_AGE) now_ms += 500;

  if (getenv("FUZZ_WAL_DEBUG")) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "ls -l %s >&2; cp -r %s /tmp/fuzz_wal_dir_after_run1", dir, dir);
    if (system(cmd) != 0) fprintf(stderr, "debug copy failed\n");
  }
  /* Run 2: everything pending comes back once, acked records do not. */
  w = NULL;
  ENSURE(mg_wal_open(dir, &o, &w) == 0);
  mg_wal_stats_t st2;
  uint64_t returned = 0, pending = UINT64_MAX;
  /* Rounds over the shards until nothing moves: a record dropped as too
   * old by one reader can unblock another (the reshard barrier). */
  for (;;) {
    mg_wal_stats(w, &st2);
    if (st2.pending_records == pending) break;
    pending = st2.pending_records;
    for (uint32_t s = 0; s < nshards; s++) {
      mg_wal_record_t r;
      while (mg_wal_next(w, s, 0, &r) == 0) {
        seen_t *e = find(v, nv, r.id);
        if (e) {
          if (exact) ENSURE(!e->acked);
          ENSURE(e->hash == hash(r.data, r.len));
          e->acked = true; /* returned */
        }
        ENSURE(mg_wal_ack(w, r.id) == 0);
        returned++;
        mg_free(r.data);
      }
    }
  }
  mg_wal_stats(w, &st2);
  if (getenv("FUZZ_WAL_LOG"))
    fprintf(stderr, "run2: returned=%llu recovered=%llu dropped_old=%llu corrupt=%llu\n",
            (unsigned long long)returned, (unsigned long long)st2.recovered_records,
            (unsigned long long)st2.dropped_old_records, (unsigned long long)st2.corrupt_records);
  /* The files did not change between the runs: nothing turns bad on read. */
  ENSURE(returned + st2.dropped_old_records == st2.recovered_records);
  if (!caps) ENSURE(st2.dropped_old_records == 0);
  /* Every record handed out in run 1 was acked there or came back, and
   * so did every record appended. */
  for (size_t i = 0; i < nv; i++) ENSURE(v[i].acked || (caps && i < nv - nshards));
  ENSURE(st2.pending_records == 0);
  mg_wal_close(w);
  free(v);
  return 0;
}
