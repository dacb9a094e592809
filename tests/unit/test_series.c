/* Unit tests for mg_series: insert/find, staleness sweeps, deletion under
 * heavy churn, key store compaction. */
#include <stdio.h>

#include "mg_series.h"
#include "mg_test.h"

typedef struct {
  int n;
  char last[64];
} gone_t;

static void on_gone(void *ud, const mg_series_entry_t *e, mg_str_t key) {
  gone_t *g = ud;
  (void)e;
  g->n++;
  snprintf(g->last, sizeof g->last, "%.*s", (int)key.n, key.p);
}

static uint64_t h(const char *s) { return mg_series_hash(s, strlen(s), 0); }

MG_TEST(upsert_and_stale) {
  mg_series_table_t t;
  mg_series_init(&t);
  bool is_new;
  mg_series_begin(&t);
  mg_series_entry_t *a = mg_series_upsert(&t, h("a{x=\"1\"}"), MG_STR_LIT("a{x=\"1\"}"), &is_new);
  REQUIRE(a && is_new);
  mg_series_upsert(&t, h("b"), MG_STR_LIT("b"), &is_new);
  CHECK(is_new);
  a = mg_series_upsert(&t, h("a{x=\"1\"}"), MG_STR_LIT("a{x=\"1\"}"), &is_new);
  CHECK(!is_new);
  mg_str_t k = mg_series_key(&t, a);
  CHECK_MEM(k.p, k.n, "a{x=\"1\"}", 8);
  CHECK_INT(t.count, 2);
  gone_t g = {0};
  CHECK_INT(mg_series_sweep(&t, false, on_gone, &g), 0);
  /* Next scrape sees only b: a goes stale. */
  mg_series_begin(&t);
  mg_series_entry_t *b = mg_series_upsert(&t, h("b"), MG_STR_LIT("b"), &is_new);
  b->epoch = t.epoch;
  CHECK_INT(mg_series_sweep(&t, false, on_gone, &g), 1);
  CHECK_STR(g.last, "a{x=\"1\"}");
  CHECK(mg_series_find(&t, h("a{x=\"1\"}")) == NULL);
  CHECK(mg_series_find(&t, h("b")) != NULL);
  CHECK_INT(mg_series_sweep(&t, true, on_gone, &g), 1);
  CHECK_INT(t.count, 0);
  mg_series_cleanup(&t);
}

MG_TEST(churn_keeps_every_entry_findable) {
  mg_series_table_t t;
  mg_series_init(&t);
  char key[32];
  bool is_new;
  /* 40 rounds: each round keeps a moving window of 5000 series alive, so
   * deletions happen all over the table, including runs that wrap. */
  for (int round = 0; round < 40; round++) {
    mg_series_begin(&t);
    for (int i = round * 500; i < round * 500 + 5000; i++) {
      int n = snprintf(key, sizeof key, "s{i=\"%d\"}", i);
      mg_series_entry_t *e = mg_series_upsert(&t, mg_series_hash(key, (size_t)n, 0), mg_str_n(key, (size_t)n), &is_new);
      REQUIRE(e);
      e->epoch = t.epoch;
    }
    gone_t g = {0};
    mg_series_sweep(&t, false, on_gone, &g);
    CHECK_INT(g.n, round == 0 ? 0 : 500);
    CHECK_INT(t.count, 5000);
  }
  int missing = 0, wrong_key = 0;
  for (int i = 39 * 500; i < 39 * 500 + 5000; i++) {
    int n = snprintf(key, sizeof key, "s{i=\"%d\"}", i);
    mg_series_entry_t *e = mg_series_find(&t, mg_series_hash(key, (size_t)n, 0));
    if (!e) {
      missing++;
      continue;
    }
    mg_str_t k = mg_series_key(&t, e);
    if (!mg_str_eq(k, mg_str_n(key, (size_t)n))) wrong_key++;
  }
  CHECK_INT(missing, 0);
  CHECK_INT(wrong_key, 0);
  /* Compaction keeps the key stores near their live size. */
  CHECK(t.cold_raw < 2 * 5000 * 16);
  mg_series_cleanup(&t);
}

MG_TEST(extra_bytes_survive_compaction) {
  mg_series_table_t t;
  mg_series_init(&t);
  bool is_new;
  char key[32], extra[32];
  for (int round = 0; round < 6; round++) {
    mg_series_begin(&t);
    for (int i = round * 100; i < round * 100 + 300; i++) {
      int n = snprintf(key, sizeof key, "k%d", i);
      mg_series_entry_t *e = mg_series_upsert(&t, mg_series_hash(key, (size_t)n, 0), mg_str_n(key, (size_t)n), &is_new);
      REQUIRE(e);
      e->epoch = t.epoch;
      if (is_new && i % 2) {
        int m = snprintf(extra, sizeof extra, "x%d", i);
        CHECK_INT(mg_series_set_extra(&t, e, extra, (size_t)m), 0);
      }
    }
    mg_series_sweep(&t, false, NULL, NULL);
  }
  int bad = 0;
  for (int i = 500; i < 800; i++) {
    int n = snprintf(key, sizeof key, "k%d", i);
    mg_series_entry_t *e = mg_series_find(&t, mg_series_hash(key, (size_t)n, 0));
    REQUIRE(e);
    mg_str_t k = mg_series_key(&t, e), x = mg_series_extra(&t, e);
    int m = snprintf(extra, sizeof extra, "x%d", i);
    if (!mg_str_eq(k, mg_str_n(key, (size_t)n))) bad++;
    if (i % 2 ? !mg_str_eq(x, mg_str_n(extra, (size_t)m)) : x.n != 0) bad++;
  }
  CHECK_INT(bad, 0);
  mg_series_cleanup(&t);
}

/* Realistic keys span many sealed (deflated) blocks: all stay readable,
 * staleness visits each once, and they take a fraction of their raw size. */
MG_TEST(compressed_keys) {
  mg_series_table_t t;
  mg_series_init(&t);
  char key[256];
  bool is_new;
  enum { N = 20000 };
  size_t raw = 0;
  mg_series_begin(&t);
  for (int i = 0; i < N; i++) {
    int n = snprintf(key, sizeof key,
                     "container_cpu_usage_seconds_total{container=\"app-%d\",id=\"/kubepods/burstable/pod%08x-1c2d\","
                     "image=\"registry.example.com/team/app:v1.%d\",namespace=\"prod\",pod=\"app-%d-7d9f8b\"}",
                     i % 50, i * 2654435761u, i % 7, i);
    raw += (size_t)n;
    mg_series_entry_t *e = mg_series_upsert(&t, mg_series_hash(key, (size_t)n, 0), mg_str_n(key, (size_t)n), &is_new);
    REQUIRE(e && is_new);
  }
  CHECK(t.nblocks > 10);
  size_t held = mg_series_bytes(&t) - (size_t)t.ents_cap * sizeof(mg_series_entry_t) - (size_t)t.idx_cap * 4;
  printf("     %d keys: %zu raw bytes held in %zu bytes (%u blocks)\n", N, raw, held, t.nblocks);
  CHECK(held < raw / 3);
  int bad = 0;
  for (int i = 0; i < N; i += 7) {
    int n = snprintf(key, sizeof key,
                     "container_cpu_usage_seconds_total{container=\"app-%d\",id=\"/kubepods/burstable/pod%08x-1c2d\","
                     "image=\"registry.example.com/team/app:v1.%d\",namespace=\"prod\",pod=\"app-%d-7d9f8b\"}",
                     i % 50, i * 2654435761u, i % 7, i);
    mg_series_entry_t *e = mg_series_find(&t, mg_series_hash(key, (size_t)n, 0));
    if (!e || !mg_str_eq(mg_series_key(&t, e), mg_str_n(key, (size_t)n))) bad++;
  }
  CHECK_INT(bad, 0);
  /* Every series goes stale: each key handed out intact. */
  gone_t g = {0};
  CHECK_INT(mg_series_sweep(&t, true, on_gone, &g), N);
  CHECK_INT(g.n, N);
  CHECK_INT(t.count, 0);
  CHECK_INT(t.nblocks, 0);
  mg_series_cleanup(&t);
}

static int make_key(char *key, size_t cap, int i) {
  return snprintf(key, cap, "node_filesystem_avail_bytes{device=\"/dev/vd%d\",fstype=\"ext4\",mountpoint=\"/srv/%d\"}",
                  i % 26, i);
}

/* One scrape: series [from, to) seen, the sweep and the settle after it. */
static void scrape_range(mg_series_table_t *t, int from, int to) {
  char key[256];
  bool is_new;
  mg_series_begin(t);
  for (int i = from; i < to; i++) {
    int n = make_key(key, sizeof key, i);
    mg_series_entry_t *e = mg_series_upsert(t, mg_series_hash(key, (size_t)n, 0), mg_str_n(key, (size_t)n), &is_new);
    if (e) e->epoch = t->epoch; /* seen, as the scrape marks it */
  }
  mg_series_sweep(t, false, NULL, NULL);
  mg_series_settle(t);
}

static int bad_keys(mg_series_table_t *t, int from, int to) {
  char key[256];
  int bad = 0;
  for (int i = from; i < to; i++) {
    int n = make_key(key, sizeof key, i);
    mg_series_entry_t *e = mg_series_find(t, mg_series_hash(key, (size_t)n, 0));
    if (!e || !mg_str_eq(mg_series_key(t, e), mg_str_n(key, (size_t)n))) bad++;
  }
  return bad;
}

/* A scrape that adds nothing compresses the raw tail and frees it; the next
 * new key inflates that short block back instead of starting a new one. */
MG_TEST(settle_seals_the_tail_and_reopens_it) {
  mg_series_table_t t;
  mg_series_init(&t);
  scrape_range(&t, 0, 300); /* new keys: the tail stays raw */
  CHECK(t.tail.len > 0);
  CHECK_INT(t.nblocks, 0);
  size_t before = mg_series_bytes(&t);
  scrape_range(&t, 0, 300); /* nothing new: sealed, buffers freed */
  CHECK_INT(t.tail.len, 0);
  CHECK_INT(t.tail.cap, 0);
  CHECK_INT(t.nblocks, 1);
  CHECK(mg_series_bytes(&t) < before / 2);
  CHECK_INT(bad_keys(&t, 0, 300), 0);
  scrape_range(&t, 0, 301); /* one new key: the block is reopened */
  CHECK_INT(t.nblocks, 0);
  CHECK(t.tail.len > 0);
  CHECK_INT(bad_keys(&t, 0, 301), 0);
  scrape_range(&t, 0, 301);
  CHECK_INT(t.nblocks, 1);
  /* Growth past one block in small steps: blocks stay near full, and a
   * series dropped from a sealed block still hands out its key. */
  int last = 301;
  for (int k = 301; k < 3000; k += 37) {
    scrape_range(&t, 0, k);
    scrape_range(&t, 0, k);
    last = k;
  }
  CHECK(t.nblocks >= 3);
  for (uint32_t b = 0; b + 1 < t.nblocks; b++) CHECK(t.blocks[b].raw > 60000);
  CHECK_INT(bad_keys(&t, 0, last), 0);
  CHECK_INT(t.count, last);
  gone_t g = {0};
  size_t live = t.count;
  mg_series_begin(&t);
  CHECK_INT(mg_series_sweep(&t, false, on_gone, &g), live);
  CHECK_INT(g.n, live);
  CHECK_INT(t.count, 0);
  /* A one-series target shrinks to one entry, then grows again. */
  scrape_range(&t, 0, 1);
  scrape_range(&t, 0, 1);
  CHECK_INT(t.ents_cap, 1);
  scrape_range(&t, 0, 100);
  CHECK_INT(t.count, 100);
  CHECK_INT(bad_keys(&t, 0, 100), 0);
  g.n = 0;
  live = t.count;
  mg_series_begin(&t);
  CHECK_INT(mg_series_sweep(&t, false, on_gone, &g), live);
  CHECK_INT(g.n, live);
  CHECK_INT(t.count, 0);
  mg_series_cleanup(&t);
}

MG_TEST_MAIN()
