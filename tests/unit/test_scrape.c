/* Unit tests for the scrape hot path (mg_scrape_ingest) end to end into a
 * file destination: final label sets, honor_labels, escapes, external
 * labels, synthetic series, staleness, and all-or-nothing scrapes. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <uv.h>

#include "mg_conf.h"
#include "mg_err.h"
#include "mg_http_client.h"
#include "mg_metrics.h"
#include "mg_remote_write.h"
#include "mg_scrape.h"
#include "mg_test.h"

typedef struct fixture {
  uv_loop_t loop;
  mg_conf_t *conf;
  mg_http_client_t *http;
  mg_dest_t *dest;
  mg_scrape_t *scrape;
  char path[64];
  char out[65536];
} fixture_t;

static int setup(fixture_t *f, int honor_labels, uint64_t sample_limit) {
  memset(f, 0, sizeof *f);
  snprintf(f->path, sizeof f->path, "/tmp/mg_test_scrape_%d.prom", (int)getpid());
  unlink(f->path);
  uv_loop_init(&f->loop);
  f->conf = mg_conf_new("test", MG_CONF_LUA);
  mg_kvs_add(&f->conf->external_labels, "env", "dev");
  mg_conf_job_t *j = mg_conf_add_job(f->conf, "j");
  j->honor_labels = honor_labels;
  j->sample_limit = sample_limit;
  mg_conf_target_t *t = mg_conf_job_add_target(j, "h:1");
  mg_kvs_add(&t->labels, "zone", "a");
  mg_conf_dest_t *d = mg_conf_add_dest(f->conf, "file", MG_DEST_FILE);
  mg_conf_set_str(&d->path, f->path);
  mg_conf_error_t err;
  if (mg_conf_finish(f->conf, &err) != 0) {
    fprintf(stderr, "conf: %s\n", err.msg);
    return -1;
  }
  int rc;
  f->http = mg_http_client_new(&f->loop, NULL);
  f->dest = mg_dest_new(&f->loop, f->http, f->conf->dests[0], &rc);
  f->scrape = mg_scrape_new(&f->loop, f->http, f->conf, &f->dest, 1, &rc);
  return f->scrape ? 0 : -1;
}

/* Ingest a body and return what the destination wrote for it. */
static const char *ingest(fixture_t *f, const char *body, int64_t ts, int expect_rc) {
  char why[256];
  int rc = mg_scrape_ingest(f->scrape, 0, body, strlen(body), "text/plain; version=0.0.4", ts, why, sizeof why);
  CHECK_INT(rc, expect_rc);
  mg_dest_flush(f->dest);
  for (int i = 0; i < 100 && mg_dest_pending_samples(f->dest); i++) uv_run(&f->loop, UV_RUN_NOWAIT);
  /* The sink writes through the thread pool: wait for the file to settle. */
  long last = -1;
  for (int i = 0; i < 200; i++) {
    uv_run(&f->loop, UV_RUN_NOWAIT);
    FILE *fp = fopen(f->path, "r");
    long n = 0;
    if (fp) {
      n = (long)fread(f->out, 1, sizeof f->out - 1, fp);
      fclose(fp);
    }
    f->out[n] = '\0';
    if (n == last && n > 0) break;
    last = n;
    usleep(2000);
  }
  /* The sink appends (O_APPEND) to its open file: truncating starts the
   * next ingest's output at offset 0. */
  CHECK_INT(truncate(f->path, 0), 0);
  return f->out;
}

static void teardown(fixture_t *f) {
  mg_scrape_free(f->scrape);
  mg_dest_free(f->dest);
  mg_http_client_free(f->http);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  CHECK_INT(uv_loop_close(&f->loop), 0);
  mg_conf_free(f->conf);
  unlink(f->path);
  mg_metrics_reset();
}

static int contains(const char *hay, const char *needle) {
  if (!strstr(hay, needle)) {
    fprintf(stderr, "  missing line: %s\n  in:\n%s\n", needle, hay);
    return 0;
  }
  return 1;
}

MG_TEST(labels_and_synthetic_series) {
  fixture_t f;
  REQUIRE(setup(&f, 0, 0) == 0);
  const char *out = ingest(&f,
                           "# HELP a_total A counter.\n# TYPE a_total counter\n"
                           "a_total{method=\"get\",code=\"200\"} 5\n"
                           "b{job=\"other\",esc=\"q\\\"\\\\x\\n\"} 1.5 1600000000000\n"
                           "c{env=\"prod\",empty=\"\"} 7\n",
                           1700000000000, 0);
  /* Labels sorted, target labels added, external label env added. */
  CHECK(contains(out, "a_total{code=\"200\",env=\"dev\",instance=\"h:1\",job=\"j\",method=\"get\",zone=\"a\"} 5 1700000000000\n"));
  /* honor_labels=false: scraped job kept as exported_job; honor_timestamps
   * default true: the body's timestamp is used. Escapes resolved. */
  CHECK(contains(out, "b{env=\"dev\",esc=\"q\\\"\\\\x\\n\",exported_job=\"other\",instance=\"h:1\",job=\"j\",zone=\"a\"} 1.5 1600000000000\n"));
  /* A scraped label wins over an external label; empty values vanish. */
  CHECK(contains(out, "c{env=\"prod\",instance=\"h:1\",job=\"j\",zone=\"a\"} 7 1700000000000\n"));
  CHECK(contains(out, "up{env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} 1 1700000000000\n"));
  CHECK(contains(out, "scrape_samples_scraped{env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} 3 1700000000000\n"));
  CHECK(contains(out, "scrape_series_added{env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} 3 1700000000000\n"));
  CHECK(contains(out, "scrape_samples_post_metric_relabeling{env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} 3 "));
  CHECK(contains(out, "scrape_duration_seconds{env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} "));

  /* Second scrape: b disappears -> staleness marker; a_total repeats twice
   * (duplicate kept once); nothing added. */
  out = ingest(&f, "a_total{method=\"get\",code=\"200\"} 6\na_total{method=\"get\",code=\"200\"} 9\nc{env=\"prod\",empty=\"\"} 8\n",
               1700000005000, 0);
  CHECK(contains(out, "a_total{code=\"200\",env=\"dev\",instance=\"h:1\",job=\"j\",method=\"get\",zone=\"a\"} 6 1700000005000\n"));
  CHECK(strstr(out, "} 9 ") == NULL);
  CHECK(contains(out, "b{env=\"dev\",esc=\"q\\\"\\\\x\\n\",exported_job=\"other\",instance=\"h:1\",job=\"j\",zone=\"a\"} NaN 1700000005000\n"));
  CHECK(contains(out, "scrape_series_added{env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} 0 "));
  CHECK_INT(mg_scrape_active_series(f.scrape), 2);
  teardown(&f);
}

MG_TEST(rekeyed_series_is_not_stale) {
  fixture_t f;
  REQUIRE(setup(&f, 0, 0) == 0);
  ingest(&f, "m{a=\"1\",b=\"2\"} 1\n", 1000, 0);
  /* Same labels in another order: other raw bytes, same series. */
  const char *out = ingest(&f, "m{b=\"2\",a=\"1\"} 2\n", 2000, 0);
  CHECK(contains(out, "m{a=\"1\",b=\"2\",env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} 2 2000\n"));
  CHECK(strstr(out, "NaN") == NULL);
  teardown(&f);
}

MG_TEST(failed_scrape_commits_only_up_and_staleness) {
  fixture_t f;
  REQUIRE(setup(&f, 1, 0) == 0);
  ingest(&f, "x{job=\"mine\"} 1\n", 1000, 0);
  CHECK(strstr(f.out, "x{env=\"dev\",instance=\"h:1\",job=\"mine\",zone=\"a\"} 1 1000\n") != NULL); /* honor_labels */
  const char *out = ingest(&f, "y 2\nthis is { not exposition\n", 2000, MG_EPARSE);
  CHECK(strstr(out, "y{") == NULL);
  CHECK(contains(out, "up{env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} 0 2000\n"));
  CHECK(contains(out, "x{env=\"dev\",instance=\"h:1\",job=\"mine\",zone=\"a\"} NaN 2000\n"));
  CHECK(contains(out, "scrape_samples_scraped{env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} 0 2000\n"));
  CHECK_INT(mg_scrape_active_series(f.scrape), 0);
  /* Back to health: x is new again. */
  out = ingest(&f, "x{job=\"mine\"} 3\n", 3000, 0);
  CHECK(contains(out, "scrape_series_added{env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} 1 3000\n"));
  teardown(&f);
}

MG_TEST(sample_limit_fails_the_scrape) {
  fixture_t f;
  REQUIRE(setup(&f, 0, 2) == 0);
  const char *out = ingest(&f, "a 1\nb 2\nc 3\n", 1000, MG_ETOOBIG);
  CHECK(strstr(out, "a{") == NULL);
  CHECK(contains(out, "up{env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} 0 1000\n"));
  out = ingest(&f, "a 1\nb 2\n", 2000, 0);
  CHECK(contains(out, "up{env=\"dev\",instance=\"h:1\",job=\"j\",zone=\"a\"} 1 2000\n"));
  teardown(&f);
}

MG_TEST_MAIN()
