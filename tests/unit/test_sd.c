/* Unit tests for service discovery: the scrape engine's discovered targets
 * (relabeling, dedupe, keep/add/remove with staleness markers, scheduling,
 * reload carry-over), the plan check, and the file provider against a
 * temporary directory. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "mg_conf.h"
#include "mg_err.h"
#include "mg_http_client.h"
#include "mg_metrics.h"
#include "mg_remote_write.h"
#include "mg_scrape.h"
#include "mg_sd.h"
#include "mg_test.h"

/* ---- scrape engine ------------------------------------------------------ */

typedef struct fixture {
  uv_loop_t loop;
  mg_conf_t *conf;
  mg_http_client_t *http;
  mg_dest_t *dest;
  mg_scrape_t *scrape;
  char path[64];
  char out[65536];
} fixture_t;

/* A plan with job "j": static target localhost:1, two discovery sources (their
 * options differ by `variant`), and a rule dropping __address__ drop:1. */
static mg_conf_t *make_conf(const char *path, const char *variant) {
  mg_conf_t *c = mg_conf_new("test", MG_CONF_LUA);
  mg_conf_job_t *j = mg_conf_add_job(c, "j");
  j->interval_ms = 1000;
  j->timeout_ms = 500;
  mg_conf_job_add_target(j, "localhost:1");
  for (int i = 0; i < 2; i++) {
    mg_conf_sd_t *sd = mg_conf_job_add_sd(j, "file");
    mg_conf_val_put(sd->opts, "variant", mg_conf_val_new(MG_CONF_VAL_SCALAR, variant, 1));
  }
  mg_conf_relabel_t *r = mg_conf_relabels_add(&j->relabel_configs);
  mg_conf_relabel_add_source(r, "__address__");
  mg_conf_set_str(&r->regex, "drop:1");
  mg_conf_set_str(&r->action, "drop");
  mg_conf_dest_t *d = mg_conf_add_dest(c, "file", MG_DEST_FILE);
  mg_conf_set_str(&d->path, path);
  mg_conf_error_t err;
  if (mg_conf_finish(c, &err) != 0) {
    fprintf(stderr, "conf: %s\n", err.msg);
    mg_conf_free(c);
    return NULL;
  }
  return c;
}

static int setup(fixture_t *f) {
  memset(f, 0, sizeof *f);
  snprintf(f->path, sizeof f->path, "/tmp/mg_test_sd_%d.prom", (int)getpid());
  unlink(f->path);
  uv_loop_init(&f->loop);
  if (!(f->conf = make_conf(f->path, "a"))) return -1;
  int rc;
  f->http = mg_http_client_new(&f->loop, NULL);
  f->dest = mg_dest_new(&f->loop, f->http, f->conf->dests[0], &rc);
  f->scrape = mg_scrape_new(&f->loop, f->http, f->conf, &f->dest, 1, &rc);
  return f->scrape ? 0 : -1;
}

/* What the destination wrote since the last call. */
static const char *collect(fixture_t *f) {
  mg_dest_flush(f->dest);
  for (int i = 0; i < 100 && mg_dest_pending_samples(f->dest); i++) uv_run(&f->loop, UV_RUN_NOWAIT);
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
    if (n == last) break;
    last = n;
    usleep(2000);
  }
  if (truncate(f->path, 0) != 0) f->out[0] = '\0';
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

/* Report a list of "address" or "address label=value" strings (NULL-ended)
 * as source `src` of job 0. */
static int report(mg_scrape_t *s, size_t src, ...) {
  mg_sd_targets_t ts = {0};
  va_list ap;
  va_start(ap, src);
  for (const char *a; (a = va_arg(ap, const char *));) {
    char addr[64], name[32], value[32];
    int k = sscanf(a, "%63s %31[^=]=%31s", addr, name, value);
    mg_conf_target_t *t = mg_sd_targets_add(&ts, addr);
    if (t && k == 3) mg_kvs_add(&t->labels, name, value);
  }
  va_end(ap);
  int rc = mg_scrape_set_discovered(s, 0, src, ts.v, ts.n);
  mg_sd_targets_cleanup(&ts);
  return rc;
}

/* Index of the target whose URL contains `host`, or -1. */
static long target_index(const mg_scrape_t *s, const char *host) {
  for (size_t i = 0; i < mg_scrape_ntargets(s); i++) {
    mg_scrape_target_info_t ti;
    mg_scrape_target_info(s, i, &ti);
    if (strstr(ti.url, host)) return (long)i;
  }
  return -1;
}

static int ingest(fixture_t *f, const char *host, const char *body, int64_t ts) {
  long i = target_index(f->scrape, host);
  if (i < 0) return MG_ENOTFOUND;
  char why[256];
  return mg_scrape_ingest(f->scrape, (size_t)i, body, strlen(body), "text/plain; version=0.0.4", ts, why, sizeof why);
}

static int contains(const char *hay, const char *needle) {
  if (!strstr(hay, needle)) {
    fprintf(stderr, "  missing: %s\n  in:\n%s\n", needle, hay);
    return 0;
  }
  return 1;
}

static double metric_value(const char *series) {
  mg_buf_t b;
  mg_buf_init(&b, 0);
  mg_metrics_render(&b);
  mg_buf_append_byte(&b, 0);
  double v = -1;
  const char *p = strstr(b.data, series);
  if (p && p[strlen(series)] == ' ') v = strtod(p + strlen(series) + 1, NULL);
  mg_buf_cleanup(&b);
  return v;
}

MG_TEST(discovered_targets_relabeled_and_deduped) {
  fixture_t f;
  REQUIRE(setup(&f) == 0);
  CHECK_INT(mg_scrape_ntargets(f.scrape), 1);
  /* a:1 twice (one target), localhost:1 equals the static target, drop:1 is
   * dropped by relabel_configs. */
  CHECK_INT(report(f.scrape, 0, "a:1 env=prod", "b:1", "a:1 env=prod", "localhost:1", "drop:1", NULL), 0);
  CHECK_INT(mg_scrape_ntargets(f.scrape), 3);
  CHECK(target_index(f.scrape, "//localhost:1/") == 0); /* static first, jobs grouped */
  CHECK(target_index(f.scrape, "//a:1/") > 0);
  CHECK(target_index(f.scrape, "//b:1/") > 0);
  CHECK(target_index(f.scrape, "drop:1") < 0);
  CHECK_DBL(metric_value("moongate_sd_discovered_targets{job=\"j\"}"), 2);
  /* The same address with other labels is another target. */
  CHECK_INT(report(f.scrape, 0, "a:1 env=prod", "a:1 env=dev", "b:1", NULL), 0);
  CHECK_INT(mg_scrape_ntargets(f.scrape), 4);
  CHECK_INT(mg_scrape_set_discovered(f.scrape, 0, 2, NULL, 0), MG_EINVAL);
  CHECK_INT(mg_scrape_set_discovered(f.scrape, 1, 0, NULL, 0), MG_EINVAL);
  teardown(&f);
}

MG_TEST(discovered_targets_keep_series_and_go_stale) {
  fixture_t f;
  REQUIRE(setup(&f) == 0);
  CHECK_INT(report(f.scrape, 0, "a:1 env=prod", "b:1", NULL), 0);
  CHECK_INT(ingest(&f, "//a:1/", "m 1\n", 1000), 0);
  const char *out = collect(&f);
  CHECK(contains(out, "m{env=\"prod\",instance=\"a:1\",job=\"j\"} 1 1000\n"));
  /* b goes, c comes, a stays with its series table (nothing added on its
   * next scrape, no staleness marker). b was never scraped: no markers. */
  CHECK_INT(report(f.scrape, 0, "c:1", "a:1 env=prod", NULL), 0);
  out = collect(&f);
  CHECK(strstr(out, "NaN") == NULL);
  CHECK_INT(mg_scrape_ntargets(f.scrape), 3);
  CHECK(target_index(f.scrape, "//b:1/") < 0);
  CHECK(target_index(f.scrape, "//c:1/") > 0);
  CHECK_INT(mg_scrape_active_series(f.scrape), 1);
  CHECK_INT(ingest(&f, "//a:1/", "m 2\n", 2000), 0);
  out = collect(&f);
  CHECK(contains(out, "scrape_series_added{env=\"prod\",instance=\"a:1\",job=\"j\"} 0 2000\n"));
  /* Source 1 reports a too: when source 0 forgets it, it stays. */
  CHECK_INT(report(f.scrape, 1, "a:1 env=prod", NULL), 0);
  CHECK_INT(report(f.scrape, 0, NULL), 0);
  CHECK_INT(mg_scrape_ntargets(f.scrape), 2);
  out = collect(&f);
  CHECK(strstr(out, "NaN") == NULL);
  CHECK_DBL(metric_value("moongate_sd_discovered_targets{job=\"j\"}"), 1);
  /* Nobody reports it: staleness markers for its series; the static
   * target stays. */
  CHECK_INT(report(f.scrape, 1, NULL), 0);
  out = collect(&f);
  CHECK(contains(out, "m{env=\"prod\",instance=\"a:1\",job=\"j\"} NaN "));
  CHECK_INT(mg_scrape_ntargets(f.scrape), 1);
  CHECK(target_index(f.scrape, "//localhost:1/") == 0);
  CHECK_INT(mg_scrape_active_series(f.scrape), 0);
  CHECK_DBL(metric_value("moongate_sd_discovered_targets{job=\"j\"}"), 0);
  teardown(&f);
}

MG_TEST(discovered_target_is_scheduled_when_running) {
  fixture_t f;
  REQUIRE(setup(&f) == 0);
  mg_scrape_start(f.scrape);
  /* Port 1 on loopback refuses: the scrape fails fast and says up 0. */
  CHECK_INT(report(f.scrape, 0, "127.0.0.1:1", NULL), 0);
  long i = target_index(f.scrape, "127.0.0.1:1");
  REQUIRE(i > 0);
  mg_scrape_target_info_t ti = {0};
  for (int k = 0; k < 500; k++) {
    uv_run(&f.loop, UV_RUN_NOWAIT);
    mg_scrape_target_info(f.scrape, (size_t)i, &ti);
    if (ti.health == 0) break;
    usleep(10000);
  }
  CHECK_INT(ti.health, 0);
  CHECK(contains(collect(&f), "up{instance=\"127.0.0.1:1\",job=\"j\"} 0 "));
  /* Removed while scheduled (maybe in flight): its synthetic series go
   * stale, and no callback comes afterwards. */
  CHECK_INT(report(f.scrape, 0, NULL), 0);
  CHECK_INT(mg_scrape_ntargets(f.scrape), 1);
  const char *out = collect(&f);
  CHECK(contains(out, "up{instance=\"127.0.0.1:1\",job=\"j\"} NaN "));
  CHECK(contains(out, "scrape_duration_seconds{instance=\"127.0.0.1:1\",job=\"j\"} NaN "));
  for (int k = 0; k < 20; k++) uv_run(&f.loop, UV_RUN_NOWAIT);
  mg_scrape_stop(f.scrape);
  CHECK_INT(report(f.scrape, 0, "x:1", NULL), MG_ECLOSED);
  teardown(&f);
}

MG_TEST(reload_carries_discovered_targets_of_unchanged_sources) {
  fixture_t f;
  REQUIRE(setup(&f) == 0);
  CHECK_INT(report(f.scrape, 0, "a:1", NULL), 0);
  CHECK_INT(report(f.scrape, 1, "b:1", NULL), 0);
  CHECK_INT(ingest(&f, "//a:1/", "m 1\n", 1000), 0);
  CHECK_INT(ingest(&f, "//b:1/", "m 1\n", 1000), 0);
  collect(&f);
  /* Same options: the new engine starts with a and b, their series kept. */
  int rc;
  mg_conf_t *c2 = make_conf(f.path, "a");
  REQUIRE(c2 != NULL);
  mg_scrape_t *s2 = mg_scrape_new(&f.loop, f.http, c2, &f.dest, 1, &rc);
  REQUIRE(s2 != NULL);
  mg_scrape_adopt(s2, f.scrape);
  mg_scrape_free(f.scrape);
  f.scrape = s2;
  CHECK_INT(mg_scrape_ntargets(s2), 3);
  CHECK_INT(mg_scrape_active_series(s2), 2);
  CHECK(strstr(collect(&f), "NaN") == NULL);
  CHECK_DBL(metric_value("moongate_sd_discovered_targets{job=\"j\"}"), 2);
  /* Options changed: the sources start empty, their targets go stale. */
  mg_conf_t *c3 = make_conf(f.path, "b");
  REQUIRE(c3 != NULL);
  mg_scrape_t *s3 = mg_scrape_new(&f.loop, f.http, c3, &f.dest, 1, &rc);
  REQUIRE(s3 != NULL);
  mg_scrape_adopt(s3, s2);
  mg_scrape_free(s2);
  f.scrape = s3;
  CHECK_INT(mg_scrape_ntargets(s3), 1);
  const char *out = collect(&f);
  CHECK(contains(out, "m{instance=\"a:1\",job=\"j\"} NaN "));
  CHECK(contains(out, "m{instance=\"b:1\",job=\"j\"} NaN "));
  CHECK_DBL(metric_value("moongate_sd_discovered_targets{job=\"j\"}"), 0);
  mg_conf_free(c2);
  mg_conf_free(f.conf);
  f.conf = c3;
  teardown(&f);
}

MG_TEST_MAIN()
