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
#include "mg_lua.h"
#include "mg_lua_api.h"
#include "mg_promyml.h"
#include "mg_sd_file.h"
#include "mg_sd_lua.h"
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
  /* The file sink writes on libuv's thread pool: the output is complete
   * once its size held still for 50 ms (a busy machine can delay a write
   * by more than one poll). */
  long last = -1;
  int still = 0;
  for (int i = 0; i < 1000 && still < 25; i++) {
    uv_run(&f->loop, UV_RUN_NOWAIT);
    FILE *fp = fopen(f->path, "r");
    long n = 0;
    if (fp) {
      n = (long)fread(f->out, 1, sizeof f->out - 1, fp);
      fclose(fp);
    }
    f->out[n] = '\0';
    still = n == last ? still + 1 : 0;
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
  /* The same report again changes nothing. */
  long a = target_index(f.scrape, "//a:1/");
  CHECK_INT(report(f.scrape, 0, "a:1 env=prod", "b:1", "a:1 env=prod", "localhost:1", "drop:1", NULL), 0);
  CHECK_INT(mg_scrape_ntargets(f.scrape), 3);
  CHECK_INT(target_index(f.scrape, "//a:1/"), a);
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

/* ---- plan check ---------------------------------------------------------- */

static mg_conf_sd_t *file_source(mg_conf_t *c, const char *pattern, const char *refresh) {
  mg_conf_job_t *j = c->njobs ? c->jobs[0] : mg_conf_add_job(c, "j");
  mg_conf_sd_t *sd = mg_conf_job_add_sd(j, "file");
  sd->line = 7;
  mg_conf_val_t *files = mg_conf_val_new(MG_CONF_VAL_LIST, NULL, 0);
  if (pattern) mg_conf_val_push(files, mg_conf_val_new(MG_CONF_VAL_SCALAR, pattern, 0));
  mg_conf_val_put(sd->opts, "files", files);
  if (refresh) mg_conf_val_put(sd->opts, "refresh_interval", mg_conf_val_new(MG_CONF_VAL_SCALAR, refresh, 0));
  return sd;
}

static const char *check_one(const char *pattern, const char *refresh, const char *extra_key, char *msg, size_t len) {
  mg_conf_t *c = mg_conf_new("p.yml", MG_CONF_PROMYML);
  mg_conf_sd_t *sd = file_source(c, pattern, refresh);
  if (extra_key) mg_conf_val_put(sd->opts, extra_key, mg_conf_val_new(MG_CONF_VAL_SCALAR, "x", 0));
  mg_conf_error_t err;
  memset(&err, 0, sizeof err);
  int rc = mg_sd_check_plan(c, &err);
  snprintf(msg, len, "%s", rc ? err.msg : "");
  if (rc) {
    CHECK(strcmp(err.file, "p.yml") == 0);
    CHECK_INT(err.line, 7);
  }
  mg_conf_free(c);
  return msg;
}

MG_TEST(plan_check_names_the_job_and_field) {
  char m[600];
  CHECK(strcmp(check_one("/etc/t/*.yml", NULL, NULL, m, sizeof m), "") == 0);
  CHECK(strcmp(check_one("t/a.json", "30s", NULL, m, sizeof m), "") == 0);
  CHECK(contains(check_one("/etc/t/a.txt", NULL, NULL, m, sizeof m), "job \"j\": file_sd: files[0] \"/etc/t/a.txt\" must end in .json, .yml or .yaml"));
  CHECK(contains(check_one("/etc/*/a.yml", NULL, NULL, m, sizeof m), "only the last path element"));
  CHECK(contains(check_one(NULL, NULL, NULL, m, sizeof m), "files must be a non-empty list"));
  CHECK(contains(check_one("a.yml", "soon", NULL, m, sizeof m), "refresh_interval must be a duration"));
  CHECK(contains(check_one("a.yml", "0s", NULL, m, sizeof m), "refresh_interval must be a duration"));
  CHECK(contains(check_one("a.yml", NULL, "refresh", m, sizeof m), "unknown field \"refresh\""));
  mg_conf_t *c = mg_conf_new("p.yml", MG_CONF_PROMYML);
  mg_conf_sd_t *sd = mg_conf_job_add_sd(mg_conf_add_job(c, "web"), "consul");
  sd->line = 12;
  mg_conf_error_t err;
  CHECK_INT(mg_sd_check_plan(c, &err), MG_ECONFIG);
  CHECK(contains(err.msg, "job \"web\": unknown discovery kind \"consul\" (consul_sd_configs is not supported)"));
  CHECK_INT(err.line, 12);
  mg_conf_free(c);
  CHECK(mg_sd_find("file") == &mg_sd_file_ops);
  CHECK(mg_sd_find("nope") == NULL);
}

/* ---- file provider -------------------------------------------------------- */

typedef struct watcher {
  uv_loop_t loop;
  mg_conf_t *conf;
  mg_sd_env_t env;
  void *state;
  char dir[64];
  int updates, failures;
  char last[8192]; /* the last list: "address{labels};" per target, sorted */
} watcher_t;

static int line_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void on_update(void *ud, bool ok, const mg_sd_targets_t *ts) {
  watcher_t *w = ud;
  if (!ok) {
    CHECK(ts == NULL);
    w->failures++;
    return;
  }
  w->updates++;
  char *lines[64];
  size_t n = 0;
  for (size_t i = 0; i < ts->n && n < 64; i++) {
    char buf[512];
    int k = snprintf(buf, sizeof buf, "%s{", ts->v[i].address);
    for (size_t l = 0; l < ts->v[i].labels.n; l++) {
      const char *name = ts->v[i].labels.v[l].name, *value = ts->v[i].labels.v[l].value;
      /* The path is checked once below; elsewhere only its base name. */
      if (strcmp(name, "__meta_filepath") == 0 && strrchr(value, '/')) value = strrchr(value, '/') + 1;
      k += snprintf(buf + k, sizeof buf - (size_t)k, "%s%s=%s", l ? "," : "", name, value);
    }
    snprintf(buf + k, sizeof buf - (size_t)k, "}");
    lines[n++] = strdup(buf);
  }
  qsort(lines, n, sizeof *lines, line_cmp);
  w->last[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    strncat(w->last, lines[i], sizeof w->last - strlen(w->last) - 2);
    strcat(w->last, ";");
    free(lines[i]);
  }
}

static void write_file(const watcher_t *w, const char *name, const char *text) {
  char p[128];
  snprintf(p, sizeof p, "%s/%s", w->dir, name);
  FILE *fp = fopen(p, "w");
  REQUIRE(fp != NULL);
  fputs(text, fp);
  fclose(fp);
}

/* Atomic replacement, as configuration management tools do it. */
static void rename_file(const watcher_t *w, const char *name, const char *text) {
  char tmp[128], p[128];
  write_file(w, ".tmp.swp", text);
  snprintf(tmp, sizeof tmp, "%s/.tmp.swp", w->dir);
  snprintf(p, sizeof p, "%s/%s", w->dir, name);
  CHECK_INT(rename(tmp, p), 0);
}

/* Run the loop until the counter moves past `from` (5 s at most). */
static int wait_for(watcher_t *w, const int *counter, int from) {
  for (int i = 0; i < 1000 && *counter == from; i++) {
    uv_run(&w->loop, UV_RUN_NOWAIT);
    usleep(5000);
  }
  return *counter;
}

/* Let the loop run for a while (events that must not cause a report). */
static void settle(watcher_t *w, int ms) {
  for (int i = 0; i < ms / 5; i++) {
    uv_run(&w->loop, UV_RUN_NOWAIT);
    usleep(5000);
  }
}

static int watch_start(watcher_t *w, const char *pattern1, const char *pattern2) {
  memset(w, 0, sizeof *w);
  snprintf(w->dir, sizeof w->dir, "/tmp/mg_test_sd_XXXXXX");
  if (!mkdtemp(w->dir)) return -1;
  uv_loop_init(&w->loop);
  char path[128];
  snprintf(path, sizeof path, "%s/moongate.yml", w->dir);
  w->conf = mg_conf_new(path, MG_CONF_PROMYML);
  mg_conf_sd_t *sd = file_source(w->conf, pattern1, "1h");
  mg_conf_val_t *files = (mg_conf_val_t *)mg_conf_val_get(sd->opts, "files");
  if (pattern2) mg_conf_val_push(files, mg_conf_val_new(MG_CONF_VAL_SCALAR, pattern2, 0));
  char why[300];
  if (mg_sd_file_ops.check(sd, why, sizeof why) != 0) {
    fprintf(stderr, "check: %s\n", why);
    return -1;
  }
  w->env = (mg_sd_env_t){&w->loop, NULL, w->conf, w->conf->jobs[0], NULL};
  return mg_sd_file_ops.start(&w->env, sd, on_update, w, &w->state);
}

static void watch_stop(watcher_t *w) {
  int before = w->updates + w->failures;
  mg_sd_file_ops.stop(w->state);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  CHECK_INT(w->updates + w->failures, before); /* nothing after stop */
  CHECK_INT(uv_loop_close(&w->loop), 0);
  mg_conf_free(w->conf);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", w->dir);
  CHECK_INT(system(cmd), 0);
  mg_metrics_reset();
}

MG_TEST(file_sd_reads_watches_and_keeps_previous_on_errors) {
  watcher_t w;
  /* Relative patterns are taken from the plan file's directory. */
  REQUIRE(watch_start(&w, "*.yml", "b.json") == 0);
  CHECK_INT(w.updates, 0); /* never from inside start */
  /* Nothing there yet: an empty list, no failure. */
  CHECK_INT(wait_for(&w, &w.updates, 0), 1);
  CHECK(strcmp(w.last, "") == 0);
  CHECK_INT(w.failures, 0);

  write_file(&w, "a.yml",
             "# two web servers\n- targets: ['10.0.0.1:9100', 10.0.0.2:9100]\n  labels:\n    env: prod\n"
             "    __address__: ignored:1\n- targets: []\n- labels: {x: y}\n");
  CHECK_INT(wait_for(&w, &w.updates, 1), 2);
  CHECK(strcmp(w.last, "10.0.0.1:9100{env=prod,__meta_filepath=a.yml};10.0.0.2:9100{env=prod,__meta_filepath=a.yml};") == 0);

  /* JSON, strict, with escapes; both files together. */
  write_file(&w, "b.json", "[{\"targets\": [\"db:5432\"], \"labels\": {\"env\": \"st\\u0061ging\", \"e\": \"\\ud83d\\ude00\"}}]");
  CHECK_INT(wait_for(&w, &w.updates, 2), 3);
  CHECK(contains(w.last, "db:5432{env=staging,e=\xf0\x9f\x98\x80,__meta_filepath=b.json};"));
  CHECK(contains(w.last, "10.0.0.1:9100{"));

  /* Replaced by rename. */
  rename_file(&w, "a.yml", "- targets: ['10.0.0.3:9100']\n  labels: {env: prod}\n");
  CHECK_INT(wait_for(&w, &w.updates, 3), 4);
  CHECK(strstr(w.last, "10.0.0.1:9100") == NULL);
  CHECK(contains(w.last, "10.0.0.3:9100{env=prod,__meta_filepath=a.yml};"));

  /* Rewritten in place. */
  write_file(&w, "a.yml", "- targets: ['10.0.0.4:9100']\n");
  CHECK_INT(wait_for(&w, &w.updates, 4), 5);
  CHECK(contains(w.last, "10.0.0.4:9100{__meta_filepath=a.yml};"));
  CHECK(strstr(w.last, "10.0.0.3:9100") == NULL);

  /* Broken: a failure is reported, the previous groups stay (no new list). */
  int u = w.updates;
  write_file(&w, "a.yml", "- targets: ['10.0.0.5:9100'\n");
  CHECK_INT(wait_for(&w, &w.failures, 0), 1);
  settle(&w, 150);
  CHECK_INT(w.updates, u);
  write_file(&w, "b.json", "[{\"targets\": [\"db:5432\"],}]"); /* trailing comma: not JSON */
  CHECK(wait_for(&w, &w.failures, 1) >= 2);
  settle(&w, 150);
  CHECK_INT(w.updates, u);
  /* Fixed: read again. */
  write_file(&w, "a.yml", "- targets: ['10.0.0.5:9100']\n");
  CHECK_INT(wait_for(&w, &w.updates, u), u + 1);
  CHECK(contains(w.last, "10.0.0.5:9100{__meta_filepath=a.yml};"));
  CHECK(contains(w.last, "db:5432{env=staging")); /* b.json: still its previous groups */

  /* A new file matching the glob joins; one that does not is ignored. */
  u = w.updates;
  write_file(&w, "c.yml", "- targets: ['10.0.0.6:9100']\n");
  CHECK_INT(wait_for(&w, &w.updates, u), u + 1);
  CHECK(contains(w.last, "10.0.0.6:9100{__meta_filepath=c.yml};"));
  u = w.updates;
  write_file(&w, "c.txt", "- targets: ['10.0.0.7:9100']\n");
  settle(&w, 200);
  CHECK_INT(w.updates, u);

  /* Deleted: its targets go (b.json's previous groups too). */
  char p[128];
  snprintf(p, sizeof p, "%s/b.json", w.dir);
  CHECK_INT(unlink(p), 0);
  CHECK_INT(wait_for(&w, &w.updates, u), u + 1);
  CHECK(strstr(w.last, "db:5432") == NULL);
  CHECK(strcmp(w.last, "10.0.0.5:9100{__meta_filepath=a.yml};10.0.0.6:9100{__meta_filepath=c.yml};") == 0);
  watch_stop(&w);
}

MG_TEST(file_sd_refuses_bad_groups_and_huge_files) {
  watcher_t w;
  REQUIRE(watch_start(&w, "*.yaml", NULL) == 0);
  CHECK_INT(wait_for(&w, &w.updates, 0), 1);
  static const char *const bad[] = {
      "targets: ['a:1']\n",                     /* not a list */
      "- targets: 'a:1'\n",                     /* targets not a list */
      "- targets: [[a]]\n",                     /* a target not text */
      "- labels: {'1x': y}\n",                  /* bad label name */
      "- labels: [a]\n",                        /* labels not a mapping */
      "- targets: ['a:1']\n  port: 80\n",       /* unknown field */
      "- &g {targets: [a:1]}\n- *g\n- [*g]\n", /* a group that is a list */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int f = w.failures;
    write_file(&w, "x.yaml", bad[i]);
    CHECK_INT(wait_for(&w, &w.failures, f), f + 1);
  }
  CHECK_INT(w.updates, 1);
  /* Past 16 MiB: refused without reading it. */
  char p[128];
  snprintf(p, sizeof p, "%s/x.yaml", w.dir);
  int f = w.failures;
  int fd = open(p, O_WRONLY | O_TRUNC);
  REQUIRE(fd >= 0);
  CHECK_INT(ftruncate(fd, (off_t)MG_SD_FILE_MAX_BYTES + 1), 0);
  close(fd);
  CHECK_INT(wait_for(&w, &w.failures, f), f + 1);
  /* Empty: no groups. Aliases are fine when they expand to little. */
  write_file(&w, "x.yaml", "- &g {targets: ['a:1'], labels: {k: v}}\n- *g\n");
  CHECK_INT(wait_for(&w, &w.updates, 1), 2);
  CHECK(strcmp(w.last, "a:1{k=v,__meta_filepath=x.yaml};a:1{k=v,__meta_filepath=x.yaml};") == 0);
  write_file(&w, "x.yaml", "");
  CHECK_INT(wait_for(&w, &w.updates, 2), 3);
  CHECK(strcmp(w.last, "") == 0);
  watch_stop(&w);
}

/* ---- Lua function targets -------------------------------------------------- */

static const char fn_script[] =
    "local mg = require 'moongate'\n"
    "local n = 0\n"
    "mg.scrape { job = 'fn', labels = { team = 'a' }, targets = { refresh = '20ms', fn = function()\n"
    "  n = n + 1\n"
    "  if n == 1 then return { 'a:1', { targets = { 'b:1' }, labels = { env = 'prod' } } } end\n"
    "  if n == 2 then error('boom ' .. 'x') end\n"
    "  if n == 3 then return { targets = { 'x:1' } } end\n"
    "  if n == 4 then while true do end end\n"
    "  if n == 5 then return { { targets = { 'c:1' }, labels = { ['1x'] = 'y' } } } end\n"
    "  return { 'c:1' }\n"
    "end } }\n"
    "mg.scrape { job = 'files', file_sd = { { files = { 'a/*.yml' }, refresh_interval = '1m' }, { files = { 'b.json' }, x = { 1, true, { y = 'z' } } } } }\n"
    "mg.stdout {}\n";

MG_TEST(lua_function_targets_and_discovery_options) {
  char path[64];
  snprintf(path, sizeof path, "/tmp/mg_test_sd_%d.lua", (int)getpid());
  FILE *fp = fopen(path, "w");
  REQUIRE(fp != NULL);
  fputs(fn_script, fp);
  fclose(fp);
  mg_lua_vm_t *vm = NULL;
  mg_conf_t *c = NULL;
  mg_conf_error_t err;
  memset(&err, 0, sizeof err);
  REQUIRE(mg_lua_vm_new(NULL, &vm) == 0);
  REQUIRE(mg_lua_api_open(vm) == 0);
  if (mg_lua_api_load(vm, path, &c, &err) != 0 || mg_lua_api_finish(vm, c, &err) != 0) {
    fprintf(stderr, "%s:%u: %s\n", err.file, err.line, err.msg);
    REQUIRE(0);
  }
  /* The options of mg.scrape's file_sd, as trees, at the call's line. */
  const mg_conf_job_t *files = c->jobs[1];
  REQUIRE(files->nsds == 2);
  CHECK(strcmp(files->sds[0]->kind, "file") == 0);
  CHECK_INT(files->sds[0]->line, 12);
  CHECK(strcmp(mg_conf_val_str(files->sds[0]->opts, "refresh_interval"), "1m") == 0);
  const mg_conf_val_t *x = mg_conf_val_get(files->sds[1]->opts, "x");
  REQUIRE(x && x->type == MG_CONF_VAL_LIST && x->n == 3);
  CHECK(strcmp(x->v[0]->s, "1") == 0 && strcmp(x->v[1]->s, "true") == 0);
  CHECK(strcmp(mg_conf_val_str(x->v[2], "y"), "z") == 0);
  /* The function is a "lua" source. */
  const mg_conf_job_t *fn = c->jobs[0];
  REQUIRE(fn->nsds == 1);
  CHECK(strcmp(fn->sds[0]->kind, "lua") == 0);
  CHECK(fn->sds[0]->lua_ref >= 0);
  char why[300];
  CHECK_INT(mg_sd_lua_ops.check(fn->sds[0], why, sizeof why), 0);

  watcher_t w;
  memset(&w, 0, sizeof w);
  uv_loop_init(&w.loop);
  w.env = (mg_sd_env_t){&w.loop, NULL, c, fn, vm};
  REQUIRE(mg_sd_lua_ops.start(&w.env, fn->sds[0], on_update, &w, &w.state) == 0);
  CHECK_INT(w.updates, 0);
  /* First: strings get the job's labels, groups their own. */
  CHECK_INT(wait_for(&w, &w.updates, 0), 1);
  CHECK(strcmp(w.last, "a:1{team=a};b:1{env=prod};") == 0);
  /* An error, a result that is not a list, a runaway loop, a bad label
   * name: each a failed refresh, the previous list kept. */
  for (int i = 0; i < 4; i++) wait_for(&w, &w.failures, i);
  CHECK_INT(w.failures, 4);
  CHECK_INT(w.updates, 1);
  CHECK_DBL(metric_value("moongate_lua_errors_total{reason=\"error\"}"), 1);
  /* The runaway loop stops on instructions or on time, whichever comes
   * first on this machine. */
  double ins = metric_value("moongate_lua_errors_total{reason=\"instructions\"}"),
         tmo = metric_value("moongate_lua_errors_total{reason=\"timeout\"}");
  CHECK_DBL((ins > 0 ? ins : 0) + (tmo > 0 ? tmo : 0), 1);
  CHECK_DBL(metric_value("moongate_lua_errors_total{reason=\"result\"}"), 2);
  /* Healthy again. */
  CHECK_INT(wait_for(&w, &w.updates, 1), 2);
  CHECK(strcmp(w.last, "c:1{team=a};") == 0);
  mg_sd_lua_ops.stop(w.state);
  uv_run(&w.loop, UV_RUN_DEFAULT);
  CHECK_INT(uv_loop_close(&w.loop), 0);
  mg_conf_free(c);
  mg_lua_vm_free(vm);
  unlink(path);
  mg_metrics_reset();
}

/* A prometheus.yml cannot name a "lua" source; a Lua one needs its VM. */
MG_TEST(lua_source_needs_a_function) {
  mg_conf_t *c = mg_conf_new("p.yml", MG_CONF_PROMYML);
  mg_conf_job_add_sd(mg_conf_add_job(c, "j"), "lua");
  mg_conf_error_t err;
  CHECK_INT(mg_sd_check_plan(c, &err), MG_ECONFIG);
  CHECK(contains(err.msg, "job \"j\": lua discovery is a function in a Lua script"));
  mg_conf_free(c);
}

/* moongate check shows discovery options without their secrets. */
MG_TEST(print_masks_secret_options) {
  mg_conf_t *c = mg_conf_new("p.yml", MG_CONF_PROMYML);
  mg_conf_job_t *j = mg_conf_add_job(c, "j");
  mg_conf_sd_t *sd = mg_conf_job_add_sd(j, "http");
  mg_conf_val_put(sd->opts, "url", mg_conf_val_new(MG_CONF_VAL_SCALAR, "http://sd/", 0));
  mg_conf_val_put(sd->opts, "bearer_token", mg_conf_val_new(MG_CONF_VAL_SCALAR, "tok-123", 0));
  mg_conf_val_put(sd->opts, "bearer_token_file", mg_conf_val_new(MG_CONF_VAL_SCALAR, "/run/tok", 0));
  mg_conf_val_t *a = mg_conf_val_new(MG_CONF_VAL_MAP, NULL, 0);
  mg_conf_val_put(a, "credentials", mg_conf_val_new(MG_CONF_VAL_SCALAR, "cred-456", 0));
  mg_conf_val_put(a, "type", mg_conf_val_new(MG_CONF_VAL_SCALAR, "Bearer", 0));
  mg_conf_val_put(sd->opts, "authorization", a);
  mg_conf_val_t *b = mg_conf_val_new(MG_CONF_VAL_MAP, NULL, 0);
  mg_conf_val_put(b, "username", mg_conf_val_new(MG_CONF_VAL_SCALAR, "me", 0));
  mg_conf_val_put(b, "Password", mg_conf_val_new(MG_CONF_VAL_SCALAR, "pw-789", 0));
  mg_conf_val_put(sd->opts, "basic_auth", b);
  mg_conf_val_t *s = mg_conf_val_new(MG_CONF_VAL_LIST, NULL, 0);
  mg_conf_val_push(s, mg_conf_val_new(MG_CONF_VAL_SCALAR, "k-1", 0));
  mg_conf_val_put(sd->opts, "secret_keys", s);
  char *buf = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&buf, &len);
  REQUIRE(out != NULL);
  mg_conf_print(c, out);
  fclose(out);
  CHECK(contains(buf, "    discovery http: {url: \"http://sd/\", bearer_token: <secret>, bearer_token_file: \"/run/tok\", "
                      "authorization: {credentials: <secret>, type: \"Bearer\"}, basic_auth: {username: \"me\", "
                      "Password: <secret>}, secret_keys: [<secret>]}\n"));
  CHECK(!strstr(buf, "tok-123") && !strstr(buf, "cred-456") && !strstr(buf, "pw-789") && !strstr(buf, "k-1"));
  free(buf);
  mg_conf_free(c);
}

/* ---- prometheus.yml -------------------------------------------------------- */

MG_TEST(promyml_sd_configs_become_sources) {
  static const char yml[] =
      "scrape_configs:\n"
      "  - job_name: web\n"
      "    file_sd_configs:\n"
      "      - files: [a/*.yml, 'b.json']\n"
      "        refresh_interval: 1m\n"
      "      - &base\n"
      "        files: [c.yaml]\n"
      "        refresh_interval: ~\n"
      "    nomad_sd_configs:\n"
      "      - role: pod\n"
      "        namespaces: {names: [a, b], own_namespace: false}\n"
      "        port: 8080\n"
      "    consul_sd_configs: []\n"
      "  - job_name: other\n"
      "    consul_sd_configs:\n"
      "      - server: 'localhost:8500'\n"
      "remote_write:\n"
      "  - url: http://127.0.0.1:1/w\n";
  mg_conf_t *c = NULL;
  mg_conf_error_t err;
  memset(&err, 0, sizeof err);
  if (mg_promyml_load_buf(yml, sizeof yml - 1, "p.yml", &c, &err) != 0) {
    fprintf(stderr, "%u: %s\n", err.line, err.msg);
    REQUIRE(0);
  }
  const mg_conf_job_t *j = c->jobs[0];
  REQUIRE(j->nsds == 3);
  CHECK(strcmp(j->sds[0]->kind, "file") == 0 && j->sds[0]->line == 4);
  CHECK(strcmp(j->sds[1]->kind, "file") == 0 && j->sds[1]->line == 6); /* the anchor's line */
  CHECK(strcmp(j->sds[2]->kind, "nomad") == 0 && j->sds[2]->line == 10);
  const mg_conf_val_t *files = mg_conf_val_get(j->sds[0]->opts, "files");
  REQUIRE(files && files->type == MG_CONF_VAL_LIST && files->n == 2);
  CHECK(strcmp(files->v[0]->s, "a/*.yml") == 0 && strcmp(files->v[1]->s, "b.json") == 0);
  CHECK(strcmp(mg_conf_val_str(j->sds[0]->opts, "refresh_interval"), "1m") == 0);
  CHECK(mg_conf_val_get(j->sds[1]->opts, "refresh_interval") == NULL); /* null: absent */
  const mg_conf_val_t *ns = mg_conf_val_get(j->sds[2]->opts, "namespaces");
  REQUIRE(ns && ns->type == MG_CONF_VAL_MAP);
  CHECK(strcmp(mg_conf_val_str(ns, "own_namespace"), "false") == 0);
  CHECK_INT(mg_conf_val_get(ns, "names")->n, 2);
  CHECK(strcmp(mg_conf_val_str(j->sds[2]->opts, "port"), "8080") == 0);
  CHECK_INT(j->sds[2]->opts->line, 10);
  /* The kinds nobody provides are refused at check, with their line. */
  CHECK_INT(mg_sd_check_plan(c, &err), MG_ECONFIG);
  CHECK(contains(err.msg, "job \"web\": unknown discovery kind \"nomad\" (nomad_sd_configs is not supported)"));
  CHECK_INT(err.line, 10);
  mg_conf_free(c);
  /* Options that are not a mapping. */
  static const char bad[] = "scrape_configs:\n  - job_name: w\n    file_sd_configs: [[a]]\n";
  CHECK_INT(mg_promyml_load_buf(bad, sizeof bad - 1, "p.yml", &c, &err), MG_ECONFIG);
  CHECK(contains(err.msg, "file_sd_configs[0]: expected a mapping, got a list"));
}

MG_TEST_MAIN()
