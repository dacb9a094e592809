/* Unit tests for mg_wal: round trips, restarts (clean and kill -9), damaged
 * and torn segments, caps, checkpoints, resharding, write errors through
 * RLIMIT_FSIZE, a sync thread, allocation failures, and the figures of
 * docs/durability.md. Each test uses its own mkdtemp directory, removed. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_test.h"
#include "mg_wal.h"

#define SEG_HDR 32
#define REC_HDR 40

/* ---- helpers ---- */

static char *tmpdir(void) {
  char t[] = "/tmp/mg_wal_test_XXXXXX";
  if (!mkdtemp(t)) return NULL;
  return strdup(t);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

static void rm_rf(char *dir) {
  if (!dir) return;
  nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  free(dir);
}

/* Record k's payload length and bytes: deterministic, so a reader can tell
 * a record's identity and integrity from its id alone. */
static size_t plen(uint64_t k) { return 100 + (size_t)((k * 37) % 900); }

static void fill(uint64_t k, char *buf, size_t len) {
  uint64_t x = k * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < len; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    buf[i] = (char)x;
  }
}

static bool payload_ok(uint64_t k, const char *data, size_t len) {
  if (len != plen(k)) return false;
  char tmp[1024];
  fill(k, tmp, len);
  return memcmp(tmp, data, len) == 0;
}

/* Append record k (its payload, nsamples k) for shard; returns the rc. */
static int app(mg_wal_t *w, uint32_t shard, uint64_t k, uint64_t *id) {
  char buf[1024];
  size_t n = plen(k);
  fill(k, buf, n);
  return mg_wal_append(w, shard, buf, n, (uint32_t)k, id);
}

static mg_wal_opts_t opts_small(void) {
  mg_wal_opts_t o = {0};
  o.no_fsync = true;
  return o;
}

static char *wal_path(const char *root) {
  static char p[512];
  snprintf(p, sizeof p, "%s/wal/dest", root);
  return p;
}

static char *seg_path(const char *root, uint64_t name) {
  static char p[600];
  snprintf(p, sizeof p, "%s/wal/dest/%016llx.seg", root, (unsigned long long)name);
  return p;
}

static int count_segs(const char *root) {
  char cmd[700];
  snprintf(cmd, sizeof cmd, "ls %s/wal/dest 2>/dev/null | grep -c '\\.seg$'", root);
  FILE *f = popen(cmd, "r");
  int n = -1;
  if (f) {
    if (fscanf(f, "%d", &n) != 1) n = -1;
    pclose(f);
  }
  return n;
}

static int count_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  while (readdir(d)) n++;
  closedir(d);
  return n;
}

static long file_size(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

/* Offset of record k (ids 1.. in a single segment, payloads plen(k)). */
static long rec_off(uint64_t k) {
  long off = SEG_HDR;
  for (uint64_t j = 1; j < k; j++) off += REC_HDR + (long)plen(j);
  return off;
}

static void flip(const char *path, long off) {
  int fd = open(path, O_RDWR);
  unsigned char c;
  if (fd < 0) return;
  if (pread(fd, &c, 1, off) == 1) {
    c ^= 0x5a;
    if (pwrite(fd, &c, 1, off) != 1) perror("pwrite");
  }
  close(fd);
}

/* Drain reader shard: ids into out (up to max), checking every payload;
 * acks them when ack is set. Returns the count. */
static int drain(mg_wal_t *w, uint32_t shard, uint64_t *out, int max, bool ack, int *bad) {
  int n = 0;
  mg_wal_record_t r;
  int rc;
  while ((rc = mg_wal_next(w, shard, 0, &r)) == 0) {
    if (!payload_ok(r.id, r.data, r.len) || r.nsamples != (uint32_t)r.id) (*bad)++;
    if (n < max) out[n] = r.id;
    n++;
    if (ack) mg_wal_ack(w, r.id);
    mg_free(r.data);
  }
  if (rc != MG_EAGAIN) (*bad)++;
  return n;
}

static uint64_t fake_now;
static uint64_t fake_clock(void *ud) {
  (void)ud;
  return fake_now;
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- tests ---- */

MG_TEST(roundtrip_in_order) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  uint64_t samples = 0, bytes = SEG_HDR;
  for (uint64_t k = 1; k <= 100; k++) {
    uint64_t id = 0;
    CHECK_INT(app(w, 0, k, &id), 0);
    CHECK_U64(id, k);
    samples += k;
    bytes += REC_HDR + plen(k);
  }
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.pending_records, 100);
  CHECK_U64(st.pending_samples, samples);
  CHECK_U64(st.bytes, bytes);
  CHECK_U64(st.segments, 1);
  CHECK_U64(st.next_id, 101);
  CHECK_U64((uint64_t)file_size(seg_path(root, 1)), bytes);
  mg_wal_record_t r;
  for (uint64_t k = 1; k <= 100; k++) {
    REQUIRE(mg_wal_next(w, 0, 0, &r) == 0);
    CHECK_U64(r.id, k);
    CHECK_INT(r.nsamples, k);
    CHECK_INT(r.shard, 0);
    CHECK(payload_ok(k, r.data, r.len));
    mg_free(r.data);
  }
  CHECK_INT(mg_wal_next(w, 0, 0, &r), MG_EAGAIN);
  CHECK(r.data == NULL);
  /* Handed out but not acked: still pending. */
  mg_wal_stats(w, &st);
  CHECK_U64(st.pending_records, 100);
  for (uint64_t k = 1; k <= 100; k++) CHECK_INT(mg_wal_ack(w, k), 0);
  CHECK_INT(mg_wal_ack(w, 50), MG_ENOTFOUND);
  mg_wal_stats(w, &st);
  CHECK_U64(st.pending_records, 0);
  CHECK_U64(st.pending_samples, 0);
  /* An empty payload is a valid record. */
  uint64_t id;
  CHECK_INT(mg_wal_append(w, 0, NULL, 0, 7, &id), 0);
  REQUIRE(mg_wal_next(w, 0, 0, &r) == 0);
  CHECK_U64(r.id, 101);
  CHECK_U64(r.len, 0);
  CHECK_INT(r.nsamples, 7);
  mg_free(r.data);
  mg_wal_close(w);
  rm_rf(root);
}

MG_TEST(shards_get_their_own_records) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.nshards = 4;
  o.segment_bytes = 4096; /* many segments */
  int fds0 = count_fds();
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 1; k <= 200; k++) CHECK_INT(app(w, (uint32_t)(k % 4), k, NULL), 0);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK(st.segments > 20);
  /* Open fds stay bounded however many segments there are: 16 segment fds
   * plus the directory and the lock file. */
  CHECK(count_fds() <= fds0 + 18);
  CHECK_INT(app(w, 4, 1, NULL), MG_EINVAL);
  mg_wal_record_t r;
  CHECK_INT(mg_wal_next(w, 4, 0, &r), MG_EINVAL);
  for (uint32_t s = 0; s < 4; s++) {
    uint64_t last = 0;
    int n = 0;
    while (mg_wal_next(w, s, 0, &r) == 0) {
      CHECK_INT(r.shard, s);
      CHECK_INT(r.id % 4, s);
      CHECK(r.id > last);
      CHECK(payload_ok(r.id, r.data, r.len));
      last = r.id;
      n++;
      mg_free(r.data);
    }
    CHECK_INT(n, 50);
  }
  /* Acks in any order; segments with everything acked are deleted. */
  for (uint64_t k = 200; k >= 1; k -= 2) CHECK_INT(mg_wal_ack(w, k), 0);
  for (uint64_t k = 1; k <= 199; k += 2) CHECK_INT(mg_wal_ack(w, k), 0);
  CHECK(count_fds() <= fds0 + 18);
  mg_wal_stats(w, &st);
  CHECK_U64(st.pending_records, 0);
  CHECK(mg_wal_sync_wanted(w)); /* finished segments wait for unlinking */
  CHECK_INT(mg_wal_sync(w), 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.segments, 1); /* the active one */
  CHECK_INT(count_segs(root), 1);
  mg_wal_close(w);
  /* Reopen: nothing pending, the last segment goes too, ids continue. */
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.pending_records, 0);
  CHECK_U64(st.next_id, 201);
  CHECK_INT(count_segs(root), 0);
  mg_wal_close(w);
  rm_rf(root);
}

MG_TEST(restart_returns_unacked_only) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.segment_bytes = 16384;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 1; k <= 50; k++) CHECK_INT(app(w, 0, k, NULL), 0);
  mg_wal_record_t r;
  for (int i = 0; i < 30; i++) {
    REQUIRE(mg_wal_next(w, 0, 0, &r) == 0);
    mg_free(r.data);
  }
  for (uint64_t k = 1; k <= 20; k++) CHECK_INT(mg_wal_ack(w, k), 0);
  CHECK_INT(mg_wal_ack(w, 25), 0);
  mg_wal_close(w);

  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.recovered_records, 29);
  CHECK_U64(st.corrupt_bytes + st.torn_bytes, 0);
  uint64_t ids[64];
  int bad = 0;
  int n = drain(w, 0, ids, 64, false, &bad);
  CHECK_INT(bad, 0);
  CHECK_INT(n, 29);
  int i = 0;
  for (uint64_t k = 21; k <= 50; k++) {
    if (k == 25) continue;
    CHECK_U64(ids[i], k);
    i++;
  }
  uint64_t id;
  CHECK_INT(app(w, 0, 51, &id), 0);
  CHECK_U64(id, 51);
  mg_wal_close(w);
  rm_rf(root);
}

/* A child appends (and now and then acks and syncs) until SIGKILL; it
 * reports every id whose append returned, and every "acked through X and
 * synced" mark, through a pipe. */
MG_TEST(kill9_loses_nothing_appended) {
  char *root = tmpdir();
  REQUIRE(root);
  int pfd[2];
  REQUIRE(pipe(pfd) == 0);
  fflush(stdout); /* or the child may print our buffer again */
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(pfd[0]);
    mg_log_set_level(MG_LOG_OFF);
    mg_wal_t *w = NULL;
    mg_wal_opts_t o = {0};
    o.segment_bytes = 64 << 10;
    if (mg_wal_open(wal_path(root), &o, &w) != 0) _exit(2);
    for (uint64_t k = 1;; k++) {
      uint64_t id;
      if (app(w, 0, k, &id) != 0 || id != k) _exit(3);
      if (write(pfd[1], &id, sizeof id) != sizeof id) _exit(4);
      if (k % 64 == 0) {
        for (uint64_t j = k - 63; j <= k - 32; j++) mg_wal_ack(w, j);
        if (mg_wal_sync(w) != 0) _exit(5);
        uint64_t mark = (k - 32) | (1ull << 63);
        if (write(pfd[1], &mark, sizeof mark) != sizeof mark) _exit(4);
        for (uint64_t j = k - 31; j <= k; j++) mg_wal_ack(w, j); /* acked, not synced */
      }
    }
  }
  close(pfd[1]);
  uint64_t v, last = 0, synced_through = 0, seen = 0;
  while (read(pfd[0], &v, sizeof v) == sizeof v) {
    if (v >> 63) synced_through = v & ~(1ull << 63);
    else last = v;
    if (++seen == 3000) kill(pid, SIGKILL);
  }
  close(pfd[0]);
  int status;
  waitpid(pid, &status, 0);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  CHECK(last >= 2000);

  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.corrupt_bytes, 0);
  CHECK_U64(st.corrupt_records, 0);
  /* Acks are contiguous, so what comes back is one run of ids: it starts
   * after everything acked before the last completed sync (records acked
   * since may come back: at least once), at the latest right after the
   * last round of acks (a multiple of 64), and ends at the last reported
   * append, or one later (the append in progress when killed). */
  mg_wal_record_t r;
  uint64_t first = 0, prev = 0, count = 0, acked_max = last - last % 64;
  int bad = 0;
  while (mg_wal_next(w, 0, 0, &r) == 0) {
    if (!payload_ok(r.id, r.data, r.len)) bad++;
    if (!first) first = r.id;
    else if (r.id != prev + 1) bad++;
    prev = r.id;
    count++;
    mg_free(r.data);
  }
  CHECK_INT(bad, 0);
  if (count) {
    CHECK(first > synced_through);
    CHECK(first <= acked_max + 1);
    CHECK(prev >= last && prev <= last + 1);
  } else {
    CHECK_U64(last % 64, 0);
  }
  printf("  kill9: %llu appends reported, acked+synced through %llu, %llu recovered, torn tail %llu bytes\n",
         (unsigned long long)last, (unsigned long long)synced_through, (unsigned long long)st.recovered_records,
         (unsigned long long)st.torn_bytes);
  mg_wal_close(w);
  rm_rf(root);
}

MG_TEST(torn_tail_is_cut) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 1; k <= 10; k++) CHECK_INT(app(w, 0, k, NULL), 0);
  mg_wal_close(w);
  const char *seg = seg_path(root, 1);
  long full = file_size(seg), end9 = rec_off(10);
  CHECK_INT(full, end9 + REC_HDR + (long)plen(10));

  /* Payload cut short. */
  REQUIRE(truncate(seg, full - 7) == 0);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.torn_bytes, (uint64_t)(full - 7 - end9));
  CHECK_U64(st.corrupt_bytes, 0);
  CHECK_U64(st.recovered_records, 9);
  CHECK_INT(file_size(seg), end9);
  uint64_t ids[16];
  int bad = 0;
  CHECK_INT(drain(w, 0, ids, 16, false, &bad), 9);
  CHECK_INT(bad, 0);
  CHECK_U64(st.next_id, 10); /* the torn record's append never returned */
  mg_wal_close(w);

  /* Half a header, then zeros after a power loss. */
  REQUIRE(truncate(seg, rec_off(9) + 20) == 0);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.torn_bytes, 20);
  CHECK_U64(st.recovered_records, 8);
  mg_wal_close(w);
  REQUIRE(truncate(seg, rec_off(9) + 4096) == 0);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.torn_bytes, 4096);
  CHECK_U64(st.corrupt_bytes, 0);
  CHECK_U64(st.recovered_records, 8);
  CHECK_INT(file_size(seg), rec_off(9));
  mg_wal_close(w);
  rm_rf(root);
}

/* Write 10 records, damage the segment with fn, reopen: returns the ids. */
static int damaged(void (*fn)(const char *seg), uint64_t *ids, mg_wal_stats_t *st, int *bad) {
  char *root = tmpdir();
  if (!root) return -1;
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  int n = -1;
  if (mg_wal_open(wal_path(root), &o, &w) == 0) {
    for (uint64_t k = 1; k <= 10; k++) app(w, 0, k, NULL);
    mg_wal_close(w);
    fn(seg_path(root, 1));
    if (mg_wal_open(wal_path(root), &o, &w) == 0) {
      mg_wal_stats(w, st);
      n = drain(w, 0, ids, 16, true, bad);
      /* Appends after damage work and survive another restart. */
      /* (ids of records cut off with a torn tail may be given again) */
      uint64_t id;
      if (app(w, 0, 11, &id) != 0) (*bad)++;
      if (id < ids[n - 1] + 1 || id > 11) (*bad)++;
      mg_wal_close(w);
      if (mg_wal_open(wal_path(root), &o, &w) == 0) {
        uint64_t more[4];
        mg_wal_record_t r;
        int k = 0;
        while (mg_wal_next(w, 0, 0, &r) == 0) {
          if (k < 4) more[k] = r.id;
          k++;
          if (r.len != plen(11)) (*bad)++;
          mg_free(r.data);
        }
        if (k != 1 || more[0] != id) (*bad)++;
        mg_wal_close(w);
      }
    }
  }
  rm_rf(root);
  return n;
}

static void flip_payload3(const char *seg) { flip(seg, rec_off(3) + REC_HDR + 10); }
static void flip_header5(const char *seg) { flip(seg, rec_off(5) + 17); }
static void flip_seg_header(const char *seg) { flip(seg, 3); }
static void flip_last_payload(const char *seg) { flip(seg, rec_off(10) + REC_HDR + 5); }
static void garbage_4_to_6(const char *seg) {
  int fd = open(seg, O_RDWR);
  if (fd < 0) return;
  long a = rec_off(4), b = rec_off(7);
  char *g = malloc((size_t)(b - a));
  for (long i = 0; i < b - a; i++) g[i] = (char)(i * 131 + 7);
  if (pwrite(fd, g, (size_t)(b - a), a) != b - a) perror("pwrite");
  free(g);
  close(fd);
}
static void magic_in_garbage(const char *seg) {
  /* A damaged region full of record magics whose headers do not check out. */
  int fd = open(seg, O_RDWR);
  if (fd < 0) return;
  long a = rec_off(2), b = rec_off(4);
  for (long p = a; p + 4 <= b; p += 4)
    if (pwrite(fd, "MGWR", 4, p) != 4) perror("pwrite");
  close(fd);
}

/* Record 3 rewritten with id 1000 and a header CRC that matches: it
 * checks out but cannot be one of ours (ids in a segment are consecutive). */
static void forge_id3(const char *seg) {
  int fd = open(seg, O_RDWR);
  if (fd < 0) return;
  unsigned char h[REC_HDR];
  long off = rec_off(3);
  if (pread(fd, h, sizeof h, off) == (ssize_t)sizeof h) {
    memset(h + 16, 0, 8);
    h[16] = 0xe8, h[17] = 0x03; /* 1000 */
    uint32_t c = (uint32_t)crc32_z(0, h + 8, REC_HDR - 8);
    for (int i = 0; i < 4; i++) h[4 + i] = (unsigned char)(c >> (8 * i));
    if (pwrite(fd, h, sizeof h, off) != (ssize_t)sizeof h) perror("pwrite");
  }
  close(fd);
}

static int seg_names(const char *root, uint64_t *out, int max) {
  DIR *d = opendir(wal_path(root));
  int n = 0;
  struct dirent *de;
  while (d && (de = readdir(d)) != NULL) {
    unsigned long long v;
    if (n < max && strlen(de->d_name) == 20 && sscanf(de->d_name, "%16llx.seg", &v) == 1) out[n++] = v;
  }
  if (d) closedir(d);
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && out[j] < out[j - 1]; j--) {
      uint64_t t = out[j];
      out[j] = out[j - 1];
      out[j - 1] = t;
    }
  return n;
}

/* Records 1..20 (payload and samples by id) in segments of o's size. */
static int append_20(const char *root, const mg_wal_opts_t *o) {
  mg_wal_t *w = NULL;
  if (mg_wal_open(wal_path(root), o, &w) != 0) return -1;
  int bad = 0;
  for (uint64_t k = 1; k <= 20; k++) {
    uint64_t id = 0;
    if (app(w, 0, k, &id) != 0 || id != k) bad++;
  }
  mg_wal_close(w);
  return bad ? -1 : 0;
}

/* Set the id of the record at `off` in a segment file (header CRC fixed). */
static void set_id(const char *seg, long off, uint64_t id) {
  int fd = open(seg, O_RDWR);
  if (fd < 0) return;
  unsigned char h[REC_HDR];
  if (pread(fd, h, sizeof h, off) == (ssize_t)sizeof h) {
    for (int i = 0; i < 8; i++) h[16 + i] = (unsigned char)(id >> (8 * i));
    uint32_t c = (uint32_t)crc32_z(0, h + 8, REC_HDR - 8);
    for (int i = 0; i < 4; i++) h[4 + i] = (unsigned char)(c >> (8 * i));
    if (pwrite(fd, h, sizeof h, off) != (ssize_t)sizeof h) perror("pwrite");
  }
  close(fd);
}

/* Offsets of the records of a segment file (walking the length fields);
 * returns how many, at most max. */
static int rec_offsets(const char *seg, long *offs, int max) {
  int fd = open(seg, O_RDONLY), n = 0;
  if (fd < 0) return 0;
  unsigned char h[REC_HDR];
  for (long off = SEG_HDR; n < max && pread(fd, h, sizeof h, off) == (ssize_t)sizeof h;
       off += REC_HDR + (long)(h[12] | h[13] << 8 | h[14] << 16 | (uint32_t)h[15] << 24))
    offs[n++] = off;
  close(fd);
  return n;
}

/* The last record of a segment rewritten to carry the next segment's first
 * id, its header CRC fixed: not a record of ours, since the next segment
 * was created after this one was sealed. The next segment's record keeps
 * that id whether or not the older segment is still there (fuzz_wal found
 * the answer depended on it once the older one was dropped). */
MG_TEST(ids_stay_below_the_next_segment) {
  char *root = tmpdir();
  mg_wal_opts_t o = opts_small();
  o.segment_bytes = 4096;
  REQUIRE(append_20(root, &o) == 0);
  mg_wal_t *w = NULL;
  uint64_t names[64];
  int nn = seg_names(root, names, 64);
  REQUIRE(nn >= 3);
  uint64_t a = names[0], b = names[1];
  long offs[64];
  int nrec = rec_offsets(seg_path(root, a), offs, 64);
  REQUIRE(nrec >= 2);
  unsigned char h[REC_HDR];
  int fd = open(seg_path(root, a), O_RDONLY);
  REQUIRE(fd >= 0 && pread(fd, h, sizeof h, offs[nrec - 1]) == (ssize_t)sizeof h);
  close(fd);
  CHECK_INT(h[16] | h[17] << 8, b - 1);
  set_id(seg_path(root, a), offs[nrec - 1], b);

  uint64_t ids[32];
  int bad = 0;
  mg_wal_stats_t st;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  int n = drain(w, 0, ids, 32, false, &bad);
  mg_wal_stats(w, &st);
  CHECK_INT(bad, 0); /* every id handed out with its own payload */
  CHECK_INT(n, 19);  /* record b - 1 is lost, counted */
  CHECK_U64(st.corrupt_records, 1);
  mg_wal_close(w);
  /* Segment a gone (as the size cap drops it): the same records. */
  REQUIRE(unlink(seg_path(root, a)) == 0);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  n = drain(w, 0, ids, 32, false, &bad);
  CHECK_INT(bad, 0);
  CHECK_INT(n, (int)(21 - b));
  CHECK(n > 0 && ids[0] == b);
  mg_wal_close(w);
  rm_rf(root);
}

/* A record of segment a claims the next segment's first id. Run 1
 * hands out b's records and later ones, acked, and none of a's: what is
 * handed out must not depend on b still being there. Once b is gone (all
 * acked, deleted), run 2 must not lose a record run 1 handed out and left
 * unacked, nor return one under an id already used (fuzz_wal found a's
 * records handed out in run 1 and lost in run 2). */
MG_TEST(reading_does_not_depend_on_later_segments) {
  char *root = tmpdir();
  mg_wal_opts_t o = opts_small();
  o.segment_bytes = 4096;
  REQUIRE(append_20(root, &o) == 0);
  mg_wal_t *w = NULL;
  uint64_t names[64];
  REQUIRE(seg_names(root, names, 64) >= 3);
  uint64_t a = names[0], b = names[1];
  /* The second-to-last record of a (well within reach of its position:
   * records are 140+ bytes, the reach grows by one id per 40) claims b. */
  long offs[64];
  int nrec = rec_offsets(seg_path(root, a), offs, 64);
  REQUIRE(nrec >= 3);
  set_id(seg_path(root, a), offs[nrec - 2], b);

  /* Run 1: whatever comes out, ack only ids >= b (b's segment empties). */
  bool handed[32] = {false}, acked[32] = {false};
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_record_t r;
  int bad = 0;
  while (mg_wal_next(w, 0, 0, &r) == 0) {
    if (r.id < 32) handed[r.id] = true;
    if (!payload_ok(r.id, r.data, r.len)) bad++;
    if (r.id >= b) {
      mg_wal_ack(w, r.id);
      if (r.id < 32) acked[r.id] = true;
    }
    mg_free(r.data);
  }
  mg_wal_close(w);
  CHECK_INT(bad, 0);
  /* Run 2: b's segment may be gone; every handed, unacked id comes back
   * with its own payload, and no acked id comes back. */
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  bool back[32] = {false};
  while (mg_wal_next(w, 0, 0, &r) == 0) {
    if (r.id < 32) back[r.id] = true;
    if (!payload_ok(r.id, r.data, r.len)) bad++;
    if (r.id < 32 && acked[r.id]) bad++;
    mg_free(r.data);
  }
  mg_wal_close(w);
  CHECK_INT(bad, 0);
  for (uint64_t id = 1; id < 32; id++)
    if (handed[id] && !acked[id]) CHECK(back[id]);
  rm_rf(root);
}

MG_TEST(damage_is_skipped_and_counted) {
  uint64_t ids[16];
  mg_wal_stats_t st;
  int bad = 0, n;

  n = damaged(flip_payload3, ids, &st, &bad);
  CHECK_INT(n, 9);
  CHECK_U64(ids[2], 4);
  CHECK_U64(st.corrupt_records, 1);
  CHECK_U64(st.corrupt_samples, 3);
  CHECK_U64(st.corrupt_bytes, REC_HDR + plen(3));
  CHECK_U64(st.torn_bytes, 0);

  n = damaged(flip_header5, ids, &st, &bad);
  CHECK_INT(n, 9);
  CHECK_U64(ids[3], 4);
  CHECK_U64(ids[4], 6);
  CHECK_U64(st.corrupt_records, 1); /* from the id gap 4 -> 6 */
  CHECK_U64(st.corrupt_bytes, REC_HDR + plen(5));

  n = damaged(flip_seg_header, ids, &st, &bad);
  CHECK_INT(n, 10);
  CHECK_U64(st.corrupt_bytes, SEG_HDR);
  CHECK_U64(st.corrupt_records, 0);

  /* Damage in the very last record looks like an append cut short. */
  n = damaged(flip_last_payload, ids, &st, &bad);
  CHECK_INT(n, 9);
  CHECK_U64(st.torn_bytes, REC_HDR + plen(10));
  CHECK_U64(st.corrupt_bytes, 0);

  n = damaged(garbage_4_to_6, ids, &st, &bad);
  CHECK_INT(n, 7);
  CHECK_U64(ids[3], 7);
  CHECK_U64(st.corrupt_records, 3);
  CHECK_U64(st.corrupt_bytes, (uint64_t)(rec_off(7) - rec_off(4)));

  n = damaged(forge_id3, ids, &st, &bad);
  CHECK_INT(n, 9);
  CHECK_U64(ids[2], 4);
  CHECK_U64(st.corrupt_records, 1);
  CHECK_U64(st.next_id, 11); /* not 1001 */

  n = damaged(magic_in_garbage, ids, &st, &bad);
  CHECK_INT(n, 8);
  CHECK_U64(ids[1], 4);
  CHECK_U64(st.corrupt_records, 2);
  CHECK_INT(bad, 0);
}

/* A record that goes bad on disk after open is caught when read back. */
MG_TEST(damage_after_open_is_caught_on_read) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 1; k <= 5; k++) CHECK_INT(app(w, 0, k, NULL), 0);
  flip(seg_path(root, 1), rec_off(2) + REC_HDR + 3);
  uint64_t ids[8];
  int bad = 0;
  CHECK_INT(drain(w, 0, ids, 8, true, &bad), 4);
  CHECK_INT(bad, 0);
  CHECK_U64(ids[1], 3);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.corrupt_records, 1);
  CHECK_U64(st.corrupt_samples, 2);
  CHECK_U64(st.pending_records, 0);
  mg_wal_close(w);
  rm_rf(root);
}

MG_TEST(size_cap_drops_oldest_counted) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.max_bytes = 64 << 10;
  o.segment_bytes = 16 << 10;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  char buf[1000];
  memset(buf, 'x', sizeof buf);
  mg_wal_stats_t st;
  for (uint32_t k = 1; k <= 300; k++) {
    CHECK_INT(mg_wal_append(w, 0, buf, sizeof buf, 10, NULL), 0);
    mg_wal_stats(w, &st);
    CHECK(st.bytes <= o.max_bytes);
  }
  mg_wal_stats(w, &st);
  CHECK(st.dropped_full_records > 0);
  CHECK_U64(st.dropped_full_records + st.pending_records, 300);
  CHECK_U64(st.dropped_full_samples, 10 * st.dropped_full_records);
  /* 15 records per 16 KiB segment, at most 4 segments of 64 KiB. */
  CHECK(st.pending_records >= 3 * 15 && st.pending_records <= 63);
  mg_wal_record_t r;
  uint64_t expect = st.dropped_full_records + 1;
  int n = 0;
  while (mg_wal_next(w, 0, 0, &r) == 0) {
    CHECK_U64(r.id, expect);
    CHECK_MEM(r.data, r.len, buf, sizeof buf);
    expect++;
    n++;
    mg_free(r.data);
  }
  CHECK_U64(n, st.pending_records);
  CHECK_U64(expect, 301);
  CHECK_INT(mg_wal_sync(w), 0);
  CHECK_INT(count_segs(root), (int)st.segments);
  mg_wal_close(w);
  rm_rf(root);
}

MG_TEST(size_cap_keeps_handed_out_record_with_caller) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.max_bytes = 16 << 10;
  o.segment_bytes = 4 << 10;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  char buf[1000] = {0};
  REQUIRE(mg_wal_append(w, 0, buf, sizeof buf, 5, NULL) == 0);
  mg_wal_record_t r;
  REQUIRE(mg_wal_next(w, 0, 0, &r) == 0); /* in flight */
  CHECK_U64(r.id, 1);
  for (int k = 0; k < 40; k++) CHECK_INT(mg_wal_append(w, 0, buf, sizeof buf, 5, NULL), 0);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  /* Its segment is gone, but the in-flight record is not counted as
   * dropped: the caller still holds it and acks it when sent. */
  CHECK(st.dropped_full_records > 0);
  mg_wal_record_t r2;
  REQUIRE(mg_wal_next(w, 0, 0, &r2) == 0);
  CHECK_U64(r2.id, st.dropped_full_records + 2);
  CHECK_U64(st.pending_records, 41 - st.dropped_full_records);
  CHECK_INT(mg_wal_ack(w, 1), 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.pending_records, 40 - st.dropped_full_records);
  mg_free(r.data);
  mg_free(r2.data);
  mg_wal_close(w);
  rm_rf(root);
}

MG_TEST(age_cap) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.segment_bytes = 4 << 10;
  o.max_age_ms = 10000;
  o.clock_ms = fake_clock;
  fake_now = 1700000000000ull;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  char buf[500] = {0};
  for (int k = 0; k < 20; k++) CHECK_INT(mg_wal_append(w, 0, buf, sizeof buf, 3, NULL), 0);
  fake_now += 5000;
  for (int k = 0; k < 20; k++) CHECK_INT(mg_wal_append(w, 0, buf, sizeof buf, 4, NULL), 0);
  fake_now += 7000; /* the first 20 are 12 s old, the rest 7 s */
  mg_wal_record_t r;
  int n = 0;
  while (mg_wal_next(w, 0, 0, &r) == 0) {
    CHECK(r.id > 20);
    CHECK_INT(r.nsamples, 4);
    n++;
    mg_free(r.data);
  }
  CHECK_INT(n, 20);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  /* Whole old segments by the cap, the rest of the straddling segment
   * record by record as the reader reached them: 20 either way. */
  CHECK_U64(st.dropped_old_records, 20);
  CHECK_U64(st.dropped_old_samples, 60);
  CHECK_INT(mg_wal_sync(w), 0);
  CHECK_INT(count_segs(root), (int)st.segments);
  mg_wal_close(w);
  /* Recovery applies the cap too. */
  fake_now += 4000;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.pending_records, 0);
  CHECK_U64(st.dropped_old_records, 20);
  CHECK_U64(st.dropped_old_samples, 80);
  CHECK_INT(mg_wal_sync(w), 0);
  CHECK_INT(count_segs(root), 0);
  mg_wal_close(w);
  rm_rf(root);
}

/* Acks are persisted per shard by mg_wal_sync: after a crash, records
 * acked before the last completed sync are not sent again, even when
 * another shard is stuck far behind. */
MG_TEST(acks_survive_crash_per_shard) {
  char *root = tmpdir();
  REQUIRE(root);
  fflush(stdout); /* or the child may print our buffer again */
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    mg_log_set_level(MG_LOG_OFF);
    mg_wal_t *w = NULL;
    mg_wal_opts_t o = {0};
    o.nshards = 2;
    o.segment_bytes = 8192;
    if (mg_wal_open(wal_path(root), &o, &w) != 0) _exit(2);
    for (uint64_t k = 1; k <= 100; k++)
      if (app(w, (uint32_t)(k % 2), k, NULL) != 0) _exit(3);
    /* Shard 1 (odd ids) delivers everything; shard 0 is stuck. Even ids
     * 2..20 are acked too, then a sync; then 22..40 without a sync. */
    for (uint64_t k = 1; k <= 99; k += 2) mg_wal_ack(w, k);
    for (uint64_t k = 2; k <= 20; k += 2) mg_wal_ack(w, k);
    if (mg_wal_sync(w) != 0) _exit(4);
    for (uint64_t k = 22; k <= 40; k += 2) mg_wal_ack(w, k);
    _exit(0); /* no close: like kill -9 after the last sync */
  }
  int status;
  waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.nshards = 2;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  uint64_t ids[128];
  int bad = 0;
  CHECK_INT(drain(w, 1, ids, 128, false, &bad), 0);
  int n = drain(w, 0, ids, 128, false, &bad);
  CHECK_INT(bad, 0);
  /* 22..100 even: 22..40 were acked after the sync (sent again, at least
   * once), 42..100 never acked. */
  CHECK_INT(n, 40);
  CHECK_U64(ids[0], 22);
  CHECK_U64(ids[n - 1], 100);
  mg_wal_close(w);
  rm_rf(root);
}

MG_TEST(write_errors_keep_earlier_records) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.segment_bytes = 64 << 10;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  char buf[1000];
  memset(buf, 'a', sizeof buf);
  /* Fill the file size budget like a full disk would: writes past it fail
   * with EFBIG (SIGXFSZ ignored), a partial record included. */
  struct rlimit old, lim;
  getrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, SIG_IGN);
  lim = old;
  lim.rlim_cur = 20000;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
  int ok = 0, rc = 0;
  for (int k = 0; k < 100 && (rc = mg_wal_append(w, 0, buf, sizeof buf, 1, NULL)) == 0; k++) ok++;
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  int rc2 = mg_wal_append(w, 0, buf, sizeof buf, 1, NULL);
  mg_wal_stats_t st2;
  mg_wal_stats(w, &st2);
  setrlimit(RLIMIT_FSIZE, &old);
  CHECK_INT(rc, MG_EIO);
  CHECK_INT(rc2, MG_EIO);
  CHECK_INT(ok, (20000 - SEG_HDR) / (REC_HDR + 1000));
  CHECK(st.degraded);
  CHECK_INT(st.last_errno, EFBIG);
  CHECK_U64(st.write_errors, 1);
  CHECK_U64(st2.write_errors, 2);
  CHECK_U64(st.pending_records, (uint64_t)ok);
  CHECK_INT(file_size(seg_path(root, 1)), SEG_HDR + ok * (REC_HDR + 1000)); /* partial record cut */
  /* Space is back: appends resume with the next id. */
  uint64_t id;
  CHECK_INT(mg_wal_append(w, 0, buf, sizeof buf, 1, &id), 0);
  CHECK_U64(id, (uint64_t)ok + 1);
  mg_wal_stats(w, &st);
  CHECK(!st.degraded);
  mg_wal_close(w);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.recovered_records, (uint64_t)ok + 1);
  CHECK_U64(st.corrupt_bytes + st.torn_bytes, 0);
  mg_wal_record_t r;
  int n = 0;
  while (mg_wal_next(w, 0, 0, &r) == 0) {
    CHECK_MEM(r.data, r.len, buf, sizeof buf);
    n++;
    mg_free(r.data);
  }
  CHECK_INT(n, ok + 1);
  mg_wal_close(w);

  /* A new segment that cannot even take its header leaves no file. */
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  lim.rlim_cur = 16;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
  rc = mg_wal_append(w, 0, buf, 10, 1, NULL);
  setrlimit(RLIMIT_FSIZE, &old);
  CHECK_INT(rc, MG_EIO);
  CHECK_INT(count_segs(root), 1); /* only the recovered one */
  CHECK_INT(mg_wal_append(w, 0, buf, 10, 1, NULL), 0);
  mg_wal_close(w);
  signal(SIGXFSZ, SIG_DFL);

  /* A directory that cannot be created. */
  char path[600];
  snprintf(path, sizeof path, "%s/wal/dest/%016llx.seg/sub", root, 1ull);
  CHECK_INT(mg_wal_open(path, &o, &w), MG_EIO);
  CHECK(w == NULL);
  rm_rf(root);
}

MG_TEST(reshard_keeps_series_order) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.nshards = 4;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 1; k <= 40; k++) CHECK_INT(app(w, (uint32_t)(k % 4), k, NULL), 0);
  mg_wal_close(w);
  o.nshards = 2;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 41; k <= 50; k++) CHECK_INT(app(w, (uint32_t)(k % 2), k, NULL), 0);
  /* Old records go to shard tag % 2; the new ones wait for all of them. */
  uint64_t ids[64];
  int bad = 0;
  int n0 = drain(w, 0, ids, 64, false, &bad);
  CHECK_INT(n0, 20);
  for (int i = 0; i < n0; i++) CHECK(ids[i] <= 40 && ids[i] % 2 == 0);
  int n1 = drain(w, 1, ids, 64, false, &bad);
  CHECK_INT(n1, 20);
  for (int i = 0; i < n1; i++) CHECK(ids[i] <= 40 && ids[i] % 2 == 1);
  for (uint64_t k = 1; k <= 39; k++) mg_wal_ack(w, k);
  mg_wal_record_t r;
  CHECK_INT(mg_wal_next(w, 0, 0, &r), MG_EAGAIN); /* 40 still pending */
  CHECK_INT(mg_wal_ack(w, 40), 0);
  n0 = drain(w, 0, ids, 64, true, &bad);
  n1 = drain(w, 1, ids + 32, 32, true, &bad);
  CHECK_INT(n0, 5);
  CHECK_INT(n1, 5);
  CHECK_U64(ids[0], 42);
  CHECK_U64(ids[32], 41);
  CHECK_INT(bad, 0);
  mg_wal_close(w);
  rm_rf(root);
}

/* The same, in one run: mg_wal_set_nshards while a record is handed out. */
MG_TEST(reshard_in_process) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.nshards = 2;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 1; k <= 10; k++) CHECK_INT(app(w, (uint32_t)(k % 2), k, NULL), 0);
  mg_wal_record_t r;
  REQUIRE(mg_wal_next(w, 1, 0, &r) == 0); /* id 1, in flight across the change */
  CHECK_U64(r.id, 1);
  mg_free(r.data);
  CHECK_INT(mg_wal_set_nshards(w, 0), MG_EINVAL);
  CHECK_INT(mg_wal_set_nshards(w, 3), 0);
  CHECK_INT(app(w, 3, 11, NULL), MG_EINVAL); /* readers are 0..2 now */
  for (uint64_t k = 11; k <= 16; k++) CHECK_INT(app(w, (uint32_t)(k % 3), k, NULL), 0);
  /* Old records 2..10 are spread by tag % 3 (tags 0 and 1: readers 0, 1). */
  uint64_t ids[32];
  int bad = 0;
  int n0 = drain(w, 0, ids, 32, false, &bad), n1 = drain(w, 1, ids + 16, 16, false, &bad);
  CHECK_INT(n0, 5); /* 2, 4, 6, 8, 10 */
  CHECK_INT(n1, 4); /* 3, 5, 7, 9 */
  CHECK_INT(drain(w, 2, ids, 16, false, &bad), 0);
  for (uint64_t k = 2; k <= 10; k++) CHECK_INT(mg_wal_ack(w, k), 0);
  CHECK_INT(mg_wal_next(w, 0, 0, &r), MG_EAGAIN); /* 1 still in flight: new records wait */
  CHECK_INT(mg_wal_ack(w, 1), 0);
  n0 = drain(w, 0, ids, 16, true, &bad);
  n1 = drain(w, 1, ids, 16, true, &bad);
  int n2 = drain(w, 2, ids, 16, true, &bad);
  CHECK_INT(n0 + n1 + n2, 6);
  CHECK_INT(n2, 2); /* 11 and 14 */
  CHECK_INT(bad, 0);
  mg_wal_close(w);
  rm_rf(root);
}

/* append_take hands a record out at once only when that keeps the order. */
MG_TEST(append_take_keeps_order) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.nshards = 2;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  char buf[1000];
  uint64_t id = 0;
  bool taken = false;
  fill(1, buf, plen(1));
  CHECK_INT(mg_wal_append_take(w, 0, buf, plen(1), 1, &id, &taken), 0);
  CHECK(taken);
  CHECK_U64(id, 1);
  mg_wal_record_t r;
  CHECK_INT(mg_wal_next(w, 0, 0, &r), MG_EAGAIN); /* already handed out */
  CHECK_INT(app(w, 0, 2, NULL), 0);                /* waits */
  fill(3, buf, plen(3));
  CHECK_INT(mg_wal_append_take(w, 0, buf, plen(3), 1, &id, &taken), 0);
  CHECK(!taken); /* 2 is older and pending */
  fill(4, buf, plen(4));
  CHECK_INT(mg_wal_append_take(w, 1, buf, plen(4), 1, &id, &taken), 0);
  CHECK(taken); /* reader 1 has nothing older */
  uint64_t ids[8];
  int bad = 0;
  CHECK_INT(drain(w, 0, ids, 8, true, &bad), 2);
  CHECK_U64(ids[0], 2);
  CHECK_U64(ids[1], 3);
  CHECK_INT(mg_wal_ack(w, 1), 0);
  CHECK_INT(mg_wal_ack(w, 4), 0);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.pending_records, 0);
  mg_wal_close(w);
  rm_rf(root);
}

/* checkpoint_ms: syncs between checkpoints leave it alone; close writes it. */
MG_TEST(checkpoint_interval) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.checkpoint_ms = 3600u * 1000u;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  char ck[600];
  snprintf(ck, sizeof ck, "%s/checkpoint", wal_path(root));
  for (uint64_t k = 1; k <= 4; k++) CHECK_INT(app(w, 0, k, NULL), 0);
  CHECK_INT(mg_wal_ack(w, 1), 0);
  CHECK_INT(mg_wal_sync(w), 0); /* the first checkpoint of the run is due */
  long first = file_size(ck);
  CHECK(first > 0);
  struct stat a, b;
  REQUIRE(stat(ck, &a) == 0);
  CHECK_INT(mg_wal_ack(w, 2), 0);
  CHECK_INT(mg_wal_sync(w), 0); /* not due: the file is not replaced */
  REQUIRE(stat(ck, &b) == 0);
  CHECK_U64((uint64_t)a.st_ino, (uint64_t)b.st_ino);
  mg_wal_close(w); /* forced */
  REQUIRE(stat(ck, &b) == 0);
  CHECK((uint64_t)a.st_ino != (uint64_t)b.st_ino);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  uint64_t ids[8];
  int bad = 0;
  CHECK_INT(drain(w, 0, ids, 8, false, &bad), 2); /* 3 and 4: the acks of 1 and 2 survived */
  CHECK_U64(ids[0], 3);
  mg_wal_close(w);
  rm_rf(root);
}

MG_TEST(one_process_per_directory) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *a = NULL, *b = NULL;
  mg_wal_opts_t o = opts_small();
  REQUIRE(mg_wal_open(wal_path(root), &o, &a) == 0);
  CHECK_INT(mg_wal_open(wal_path(root), &o, &b), MG_EEXISTS);
  CHECK(b == NULL);
  mg_wal_close(a);
  CHECK_INT(mg_wal_open(wal_path(root), &o, &b), 0);
  mg_wal_close(b);
  rm_rf(root);
}

MG_TEST(bad_checkpoint_means_resend) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 1; k <= 10; k++) CHECK_INT(app(w, 0, k, NULL), 0);
  for (uint64_t k = 1; k <= 5; k++) CHECK_INT(mg_wal_ack(w, k), 0);
  mg_wal_close(w);
  char ck[600];
  snprintf(ck, sizeof ck, "%s/checkpoint", wal_path(root));
  long sz = file_size(ck);
  CHECK_INT(sz, 36 + 8 + 4); /* header, one shard position, crc */
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.recovered_records, 5);
  mg_wal_close(w);
  flip(ck, 20);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.recovered_records, 10);
  mg_wal_close(w);
  REQUIRE(truncate(ck, 10) == 0);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.recovered_records, 10);
  mg_wal_close(w);
  /* A well-formed checkpoint that claims ids at or above its own next_id
   * (which the next appends would get) is refused as a whole. */
  unsigned char b[36 + 16 + 4] = {'M', 'G', 'W', 'A', 'L', 'C', 'K', 'P', 1, 0, 0, 0, 0, 0, 0, 0, 1};
  b[20] = 1;  /* acked_below */
  b[28] = 3;  /* next_id */
  b[36] = 2;  /* range [2, 100] */
  b[44] = 100;
  uint32_t c = (uint32_t)crc32_z(0, b, 52);
  for (int i = 0; i < 4; i++) b[52 + i] = (unsigned char)(c >> (8 * i));
  FILE *f = fopen(ck, "wb");
  REQUIRE(f);
  fwrite(b, 1, sizeof b, f);
  fclose(f);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.recovered_records, 10);
  mg_wal_close(w);
  b[44] = 2; /* range [2, 2]: valid, record 2 is acked */
  c = (uint32_t)crc32_z(0, b, 52);
  for (int i = 0; i < 4; i++) b[52 + i] = (unsigned char)(c >> (8 * i));
  f = fopen(ck, "wb");
  REQUIRE(f);
  fwrite(b, 1, sizeof b, f);
  fclose(f);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.recovered_records, 9);
  CHECK_U64(st.next_id, 11);
  mg_wal_close(w);
  rm_rf(root);
}

MG_TEST(before_id_limits_replay) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 1; k <= 10; k++) CHECK_INT(app(w, 0, k, NULL), 0);
  mg_wal_record_t r;
  for (uint64_t k = 1; k <= 4; k++) {
    REQUIRE(mg_wal_next(w, 0, 5, &r) == 0);
    CHECK_U64(r.id, k);
    mg_free(r.data);
  }
  CHECK_INT(mg_wal_next(w, 0, 5, &r), MG_EAGAIN);
  REQUIRE(mg_wal_next(w, 0, 0, &r) == 0);
  CHECK_U64(r.id, 5);
  mg_free(r.data);
  mg_wal_close(w);
  rm_rf(root);
}

MG_TEST(argument_checks) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.nshards = MG_WAL_MAX_SHARDS + 1;
  CHECK_INT(mg_wal_open(wal_path(root), &o, &w), MG_EINVAL);
  o = opts_small();
  o.max_bytes = 1000;
  CHECK_INT(mg_wal_open(wal_path(root), &o, &w), MG_EINVAL);
  CHECK_INT(mg_wal_open("", NULL, &w), MG_EINVAL);
  o = opts_small();
  o.max_bytes = 1 << 20;
  o.segment_bytes = 1 << 30; /* clamped to max_bytes / 2 */
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  static char big[(512 << 10) - 71];
  CHECK_INT(mg_wal_append(w, 0, big, sizeof big, 1, NULL), MG_ETOOBIG);
  CHECK_INT(mg_wal_append(w, 0, big, sizeof big - 1, 1, NULL), 0);
  CHECK_INT(mg_wal_append(w, 0, NULL, 5, 1, NULL), MG_EINVAL);
  CHECK_INT(mg_wal_ack(w, 999), MG_ENOTFOUND);
  CHECK_INT(mg_wal_ack(w, 1), 0);
  CHECK_INT(mg_wal_ack(w, 1), MG_ENOTFOUND);
  mg_wal_close(w);
  mg_wal_close(NULL);
  rm_rf(root);
}

MG_TEST(sync_wanted_after_sync_bytes) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = {0};
  o.sync_bytes = 10000;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  char buf[1000] = {0};
  int k = 0;
  while (!mg_wal_sync_wanted(w) && k < 100) {
    CHECK_INT(mg_wal_append(w, 0, buf, sizeof buf, 1, NULL), 0);
    k++;
  }
  CHECK_INT(k, 10); /* 32 + 10 * 1040 >= 10000 */
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.unsynced_bytes, SEG_HDR + 10 * (REC_HDR + 1000));
  CHECK_INT(mg_wal_sync(w), 0);
  CHECK(!mg_wal_sync_wanted(w));
  mg_wal_stats(w, &st);
  CHECK_U64(st.unsynced_bytes, 0);
  mg_wal_close(w);
  rm_rf(root);
}

typedef struct syncer {
  mg_wal_t *w;
  atomic_int stop;
  int syncs, errors;
} syncer_t;

static void *sync_loop(void *ud) {
  syncer_t *s = ud;
  while (!atomic_load(&s->stop)) {
    if (mg_wal_sync(s->w) != 0) s->errors++;
    s->syncs++;
  }
  return NULL;
}

/* mg_wal_sync on another thread while the loop thread appends (rolling
 * over segments), reads and acks; with and without fsync (without, syncs
 * are fast and interleave with nearly every append). */
static void sync_concurrently(bool no_fsync, int *syncs) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = {0};
  o.segment_bytes = 8192;
  o.no_fsync = no_fsync;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  syncer_t s = {w, 0, 0, 0};
  pthread_t th;
  REQUIRE(pthread_create(&th, NULL, sync_loop, &s) == 0);
  mg_wal_record_t r;
  for (uint64_t k = 1; k <= 3000; k++) {
    CHECK_INT(app(w, 0, k, NULL), 0);
    if (k % 3 == 0) {
      while (mg_wal_next(w, 0, 0, &r) == 0) {
        if (r.id % 100) mg_wal_ack(w, r.id);
        mg_free(r.data);
      }
    }
  }
  atomic_store(&s.stop, 1);
  pthread_join(th, NULL);
  CHECK_INT(s.errors, 0);
  CHECK(s.syncs > 0);
  *syncs = s.syncs;
  mg_wal_close(w);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  uint64_t ids[64];
  int bad = 0;
  int n = drain(w, 0, ids, 64, false, &bad);
  CHECK_INT(bad, 0);
  CHECK_INT(n, 30);
  for (int i = 0; i < n && i < 64; i++) CHECK_U64(ids[i], 100 * (uint64_t)i + 100);
  mg_wal_close(w);
  rm_rf(root);
}

MG_TEST(sync_on_another_thread) {
  int fast = 0, slow = 0;
  sync_concurrently(true, &fast);
  sync_concurrently(false, &slow);
  printf("  syncs alongside 3000 appends: %d without fsync, %d with\n", fast, slow);
}

/* Out-of-order acks are kept as ranges in the checkpoint, up to 1024 of
 * them; what does not fit is sent again after a restart (at least once). */
MG_TEST(checkpoint_range_bound) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 1; k <= 3000; k++) CHECK_INT(app(w, 0, k, NULL), 0);
  for (uint64_t k = 1; k <= 3000; k += 2) CHECK_INT(mg_wal_ack(w, k), 0);
  mg_wal_close(w);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_record_t r;
  int even = 0, odd = 0;
  uint64_t first_odd = 0;
  while (mg_wal_next(w, 0, 0, &r) == 0) {
    if (r.id % 2) {
      if (!odd) first_odd = r.id;
      odd++;
    } else {
      even++;
    }
    mg_wal_ack(w, r.id);
    mg_free(r.data);
  }
  CHECK_INT(even, 1500);
  /* 1 is below the first pending record; 3..2049 fit in 1024 ranges. */
  CHECK_INT(odd, 1500 - 1 - 1024);
  CHECK_U64(first_odd, 2051);
  mg_wal_close(w);
  /* Everything acked in order now: nothing comes back. */
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.pending_records, 0);
  mg_wal_close(w);
  rm_rf(root);
}

/* Acks recorded in one checkpoint stay recorded through the next runs,
 * even when a later run acks other records and writes a new checkpoint. */
MG_TEST(checkpoint_survives_restarts) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  o.nshards = 2;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 1; k <= 20; k++) CHECK_INT(app(w, (uint32_t)(k % 2), k, NULL), 0);
  uint64_t acked1[] = {5, 6, 7, 8, 12, 19};
  for (size_t i = 0; i < sizeof acked1 / sizeof *acked1; i++) CHECK_INT(mg_wal_ack(w, acked1[i]), 0);
  mg_wal_close(w);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  CHECK_INT(mg_wal_ack(w, 1), 0);
  CHECK_INT(mg_wal_ack(w, 14), 0);
  CHECK_INT(mg_wal_ack(w, 5), MG_ENOTFOUND); /* acked in run 1 */
  mg_wal_close(w);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  uint64_t ids[32];
  int bad = 0;
  int n0 = drain(w, 0, ids, 32, false, &bad);
  int n1 = drain(w, 1, ids + n0, 32 - n0, false, &bad);
  CHECK_INT(bad, 0);
  CHECK_INT(n0 + n1, 12);
  uint64_t want[] = {2, 4, 10, 16, 18, 20, 3, 9, 11, 13, 15, 17};
  for (int i = 0; i < 12 && i < n0 + n1; i++) CHECK_U64(ids[i], want[i]);
  mg_wal_close(w);
  rm_rf(root);
}

/* A segment written by a newer format is left alone: not read, not
 * deleted, not overwritten, and no checkpoint claims its ids. */
MG_TEST(newer_segment_left_alone) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = opts_small();
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  for (uint64_t k = 1; k <= 3; k++) CHECK_INT(app(w, 0, k, NULL), 0);
  mg_wal_close(w);
  unsigned char h[64] = {'M', 'G', 'W', 'A', 'L', 'S', 'E', 'G', 2};
  h[16] = 9;
  uint32_t c = (uint32_t)crc32_z(crc32_z(0, h, 12), h + 16, 16);
  for (int i = 0; i < 4; i++) h[12 + i] = (unsigned char)(c >> (8 * i));
  FILE *f = fopen(seg_path(root, 9), "wb");
  REQUIRE(f);
  fwrite(h, 1, sizeof h, f);
  fclose(f);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.recovered_records, 3);
  CHECK_U64(st.next_id, 10);
  uint64_t ids[8];
  int bad = 0;
  CHECK_INT(drain(w, 0, ids, 8, true, &bad), 3);
  CHECK_INT(app(w, 0, 10, NULL), 0);
  CHECK_INT(bad, 0);
  mg_wal_close(w);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats(w, &st);
  CHECK_U64(st.recovered_records, 1);
  CHECK_INT(file_size(seg_path(root, 9)), (long)sizeof h);
  mg_wal_close(w);
  rm_rf(root);
}

/* Fail each allocation in turn through open, append, next and close:
 * errors come back as MG_ENOMEM, nothing crashes or leaks (ASan). */
MG_TEST(allocation_failures) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_opts_t o = opts_small();
  o.segment_bytes = 4096;
  {
    /* Something to recover. */
    mg_wal_t *w = NULL;
    REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
    for (uint64_t k = 1; k <= 20; k++) app(w, 0, k, NULL);
    mg_wal_close(w);
  }
  int clean = 0;
  for (uint64_t nth = 1; nth < 1000 && !clean; nth++) {
    uint64_t before = mg_mem_alloc_count();
    mg_mem_fail_at(nth);
    mg_wal_t *w = NULL;
    int rc = mg_wal_open(wal_path(root), &o, &w);
    if (rc == 0) {
      mg_wal_record_t r;
      for (uint64_t k = 21; k <= 60; k++) {
        int a = app(w, 0, k, NULL);
        CHECK(a == 0 || a == MG_ENOMEM);
      }
      int g;
      while ((g = mg_wal_next(w, 0, 0, &r)) == 0) {
        mg_wal_ack(w, r.id);
        mg_free(r.data);
      }
      CHECK(g == MG_EAGAIN || g == MG_ENOMEM);
      mg_wal_close(w);
    } else {
      CHECK_INT(rc, MG_ENOMEM);
    }
    if (mg_mem_alloc_count() - before < nth) clean = 1; /* the injection never hit */
    mg_mem_fail_at(0);
  }
  CHECK(clean);
  /* Whatever happened, the directory still opens and reads cleanly. */
  mg_wal_t *w = NULL;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.corrupt_bytes, 0);
  uint64_t ids[4096];
  int bad = 0;
  drain(w, 0, ids, 4096, false, &bad);
  CHECK_INT(bad, 0);
  mg_wal_close(w);
  rm_rf(root);
}

static unsigned long bench_mb(void) {
  const char *e = getenv("MG_WAL_BENCH_MB");
  unsigned long v = e ? strtoul(e, NULL, 10) : 0;
  return v ? v : 128;
}

/* Figures for docs/durability.md: append throughput with 64 KiB batches
 * (page cache only, and with a sync every 8 MiB), replay throughput, and
 * recovery time; then many small records. */
MG_TEST(throughput_and_recovery) {
  char *root = tmpdir();
  REQUIRE(root);
  mg_wal_t *w = NULL;
  mg_wal_opts_t o = {0};
  o.max_bytes = 4ull << 30;
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  size_t rec = 64 << 10;
  char *buf = malloc(rec);
  REQUIRE(buf);
  for (size_t i = 0; i < rec; i++) buf[i] = (char)(i * 7 + (i >> 9));
  uint64_t n = bench_mb() * 16; /* 64 KiB records */
  double t0 = mono_s();
  for (uint64_t k = 0; k < n; k++) REQUIRE(mg_wal_append(w, 0, buf, rec, 2000, NULL) == 0);
  double t_app = mono_s() - t0;
  t0 = mono_s();
  REQUIRE(mg_wal_sync(w) == 0);
  double t_sync = mono_s() - t0;
  t0 = mono_s();
  for (uint64_t k = 0; k < n; k++) {
    REQUIRE(mg_wal_append(w, 0, buf, rec, 2000, NULL) == 0);
    if (mg_wal_sync_wanted(w)) REQUIRE(mg_wal_sync(w) == 0);
  }
  REQUIRE(mg_wal_sync(w) == 0);
  double t_app_sync = mono_s() - t0;
  mg_wal_close(w);
  t0 = mono_s();
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  double t_rec = mono_s() - t0;
  mg_wal_stats_t st;
  mg_wal_stats(w, &st);
  CHECK_U64(st.recovered_records, 2 * n);
  mg_wal_record_t r;
  uint64_t got = 0;
  t0 = mono_s();
  while (mg_wal_next(w, 0, 0, &r) == 0) {
    if (got == 0) CHECK_MEM(r.data, r.len, buf, rec);
    mg_wal_ack(w, r.id);
    mg_free(r.data);
    got++;
  }
  double t_next = mono_s() - t0;
  CHECK_U64(got, 2 * n);
  mg_wal_close(w);
  double mb = (double)(n * rec) / (1 << 20);
  printf("  append 64 KiB x %llu (%.0f MiB): %.0f MiB/s (page cache), final sync %.0f ms\n",
         (unsigned long long)n, mb, mb / t_app, t_sync * 1000);
  printf("  append 64 KiB with fsync every 8 MiB: %.0f MiB/s\n", mb / t_app_sync);
  printf("  recovery of %llu records (%.0f MiB): %.0f ms; replay next+ack: %.0f MiB/s\n",
         (unsigned long long)(2 * n), 2 * mb, t_rec * 1000, 2 * mb / t_next);
  CHECK(mb / t_app > 10); /* a floor that only a broken build misses */

  rm_rf(root);
  root = tmpdir();
  REQUIRE(root);
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  uint64_t small = 100000;
  t0 = mono_s();
  for (uint64_t k = 0; k < small; k++) REQUIRE(mg_wal_append(w, (uint32_t)0, buf, 1024, 20, NULL) == 0);
  double t_small = mono_s() - t0;
  mg_wal_close(w);
  t0 = mono_s();
  REQUIRE(mg_wal_open(wal_path(root), &o, &w) == 0);
  double t_rec_small = mono_s() - t0;
  mg_wal_stats(w, &st);
  CHECK_U64(st.recovered_records, small);
  mg_wal_close(w);
  printf("  append 1 KiB x %llu: %.0f records/s; recovery: %.0f ms\n", (unsigned long long)small,
         (double)small / t_small, t_rec_small * 1000);
  free(buf);
  rm_rf(root);
}

MG_TEST_MAIN()
