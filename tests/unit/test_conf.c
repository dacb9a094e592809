/* Unit tests for mg_conf: builders, defaults, every check mg_conf_finish
 * makes, durations and sizes, the printed plan (which must never show a
 * secret), and allocation failure at every step. */
#include "mg_conf.h"
#include "mg_err.h"
#include "mg_mem.h"
#include "mg_test.h"

/* A conf that passes finish: one job with one target, one destination. */
static mg_conf_t *minimal(mg_conf_job_t **job, mg_conf_dest_t **dest) {
  mg_conf_t *c = mg_conf_new("test.lua", MG_CONF_LUA);
  if (!c) return NULL;
  mg_conf_job_t *j = mg_conf_add_job(c, "node");
  mg_conf_dest_t *d = mg_conf_add_dest(c, "main", MG_DEST_REMOTE_WRITE);
  if (!j || !d || !mg_conf_job_add_target(j, "localhost:9100") ||
      mg_conf_set_str(&d->url, "http://localhost:9090/api/v1/write") < 0) {
    mg_conf_free(c);
    return NULL;
  }
  if (job) *job = j;
  if (dest) *dest = d;
  return c;
}

/* Finish c, expect failure with exactly msg, free c. */
static void expect_error(mg_conf_t *c, const char *msg, int line) {
  mg_conf_error_t err = {0};
  int rc = mg_conf_finish(c, &err);
  if (rc != MG_ECONFIG) MG_FAIL_("line %d: finish returned %d, want MG_ECONFIG", line, rc);
  if (strcmp(err.msg, msg) != 0) MG_FAIL_("line %d: message \"%s\", want \"%s\"", line, err.msg, msg);
  CHECK(!c->frozen);
  mg_conf_free(c);
}
#define EXPECT_ERROR(c, msg) expect_error((c), (msg), __LINE__)

MG_TEST(builders_and_free) {
  mg_conf_t *c = mg_conf_new("x.lua", MG_CONF_LUA);
  REQUIRE(c);
  CHECK_STR(c->path, "x.lua");
  CHECK_INT(c->source, MG_CONF_LUA);
  mg_conf_job_t *j = mg_conf_add_job(c, "node");
  REQUIRE(j);
  CHECK_STR(j->name, "node");
  CHECK(j->honor_timestamps);
  CHECK(j->enable_compression);
  CHECK(!j->honor_labels);
  mg_conf_target_t *t = mg_conf_job_add_target(j, "localhost:9100");
  REQUIRE(t);
  CHECK_INT(mg_kvs_add(&t->labels, "env", "prod"), 0);
  CHECK_INT(mg_kvs_set(&t->labels, "env", "dev"), 0);
  CHECK_INT(mg_kvs_set(&t->labels, "zone", "a"), 0);
  CHECK_INT(t->labels.n, 2);
  CHECK_STR(mg_kvs_get(&t->labels, "env"), "dev");
  CHECK_STR(mg_kvs_get(&t->labels, "zone"), "a");
  CHECK(mg_kvs_get(&t->labels, "nope") == NULL);
  CHECK_INT(mg_kvs_add(&t->labels, NULL, "x"), MG_EINVAL);
  CHECK_INT(mg_kvs_add(&t->labels, "x", NULL), MG_EINVAL);
  mg_conf_dest_t *d = mg_conf_add_dest(c, NULL, MG_DEST_REMOTE_WRITE);
  REQUIRE(d);
  CHECK(d->name == NULL);
  CHECK(d->queue.retry_on_http_429);
  CHECK(d->send_metadata);
  CHECK_INT(mg_conf_set_str(&d->url, "http://localhost:9090/api/v1/write"), 0);
  CHECK_INT(mg_conf_set_secret(&d->auth.basic_password, "pw"), 0);
  CHECK_INT(mg_conf_set_secret(&d->auth.basic_password, "pw2"), 0);
  CHECK_STR(d->auth.basic_password, "pw2");
  CHECK_INT(mg_conf_set_str(&d->auth.basic_username, "user"), 0);
  CHECK_INT(mg_conf_set_str(&d->auth.basic_username, NULL), 0);
  CHECK(d->auth.basic_username == NULL);
  mg_conf_error_t err;
  CHECK_INT(mg_conf_finish(c, &err), 0);
  CHECK(c->frozen);
  CHECK_STR(d->name, "rw-0");
  CHECK_INT(mg_conf_finish(c, &err), 0); /* idempotent once frozen */
  mg_conf_free(c);
  mg_conf_free(NULL);
}

MG_TEST(many_items_grow) {
  mg_conf_t *c = mg_conf_new(NULL, MG_CONF_LUA);
  REQUIRE(c);
  CHECK(c->path == NULL);
  char name[32];
  for (int i = 0; i < 100; i++) {
    snprintf(name, sizeof(name), "job%d", i);
    mg_conf_job_t *j = mg_conf_add_job(c, name);
    REQUIRE(j);
    for (int t = 0; t < 50; t++) {
      snprintf(name, sizeof(name), "h%d:%d", i, 1000 + t);
      mg_conf_target_t *tg = mg_conf_job_add_target(j, name);
      REQUIRE(tg);
      REQUIRE(mg_kvs_add(&tg->labels, "i", name) == 0);
    }
  }
  for (int i = 0; i < 10; i++) {
    mg_conf_dest_t *d = mg_conf_add_dest(c, NULL, MG_DEST_STDOUT);
    REQUIRE(d);
  }
  CHECK_INT(c->njobs, 100);
  CHECK(c->jobs_cap >= 100);
  CHECK_INT(c->jobs[99]->ntargets, 50);
  CHECK_STR(c->jobs[42]->targets[7]->address, "h42:1007");
  mg_conf_error_t err;
  CHECK_INT(mg_conf_finish(c, &err), 0);
  CHECK_STR(c->dests[3]->name, "stdout-3");
  mg_conf_free(c);
}

MG_TEST(parse_duration_table) {
  static const struct {
    const char *s;
    uint64_t ms;
  } ok[] = {
      {"0", 0},         {"0s", 0},          {"1ms", 1},           {"500ms", 500},
      {"15s", 15000},   {"1m", 60000},      {"1m30s", 90000},     {"1h30m", 5400000},
      {"2d", 172800000}, {"1w", 604800000}, {"1y", 31536000000ull}, {"90d", 7776000000ull},
      {"1y2w3d4h5m6s7ms", 31536000000ull + 2 * 604800000ull + 3 * 86400000ull + 4 * 3600000ull + 5 * 60000 + 6000 + 7},
      {"10s500ms", 10500},
      {"106751d", 106751ull * 86400000},
  };
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
    uint64_t ms = 12345;
    int rc = mg_conf_parse_duration(ok[i].s, &ms);
    if (rc != 0 || ms != ok[i].ms) MG_FAIL_("\"%s\": rc=%d ms=%llu want %llu", ok[i].s, rc, (unsigned long long)ms,
                                             (unsigned long long)ok[i].ms);
  }
  static const char *const bad[] = {
      "",     "5x",  "1s1m", "1m1m", "-1s",  "1.5s", "s",   "1",     " 1s",     "1s ",
      "1M",   "1S",  "ms",   "1mss", "1h1h", "1sm",  "1ns", "1us",   "106752d", "99999999999999999999s",
      "0x1s", "1m 30s",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    uint64_t ms = 777;
    int rc = mg_conf_parse_duration(bad[i], &ms);
    if (rc != MG_EINVAL || ms != 777) MG_FAIL_("\"%s\": rc=%d ms=%llu, want MG_EINVAL", bad[i], rc, (unsigned long long)ms);
  }
  uint64_t ms;
  CHECK_INT(mg_conf_parse_duration(NULL, &ms), MG_EINVAL);
}

MG_TEST(format_duration_table) {
  static const struct {
    uint64_t ms;
    const char *s;
  } t[] = {
      {0, "0s"},           {1, "1ms"},         {500, "500ms"},      {15000, "15s"},
      {90000, "1m30s"},    {5400000, "1h30m"}, {3723004, "1h2m3s4ms"}, {7776000000ull, "90d"},
      {604800000, "1w"},   {31536000000ull, "1y"}, {366ull * 86400000, "366d"}, {14ull * 86400000, "2w"},
  };
  char buf[32];
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
    CHECK_STR(mg_conf_format_duration(t[i].ms, buf, sizeof(buf)), t[i].s);
    uint64_t back;
    CHECK_INT(mg_conf_parse_duration(buf, &back), 0);
    CHECK_U64(back, t[i].ms);
  }
  char small[4];
  CHECK_STR(mg_conf_format_duration(3723004, small, sizeof(small)), "1h");
}

MG_TEST(parse_bytes_table) {
  static const struct {
    const char *s;
    uint64_t n;
  } ok[] = {
      {"0", 0},           {"512", 512},         {"1B", 1},
      {"1KB", 1024},      {"1KiB", 1024},       {"50MB", 50ull << 20},
      {"50MiB", 50ull << 20}, {"1GB", 1ull << 30}, {"2TiB", 2ull << 40},
      {"1.5MB", 1572864}, {"1GB512MB", (1ull << 30) + (512ull << 20)}, {".5KB", 512},
      {"7EB", 7ull << 60}, {"3PB", 3ull << 50},
  };
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
    uint64_t n = 12345;
    int rc = mg_conf_parse_bytes(ok[i].s, &n);
    if (rc != 0 || n != ok[i].n)
      MG_FAIL_("\"%s\": rc=%d n=%llu want %llu", ok[i].s, rc, (unsigned long long)n, (unsigned long long)ok[i].n);
  }
  /* "kB" is the SI spelling, which Prometheus's base-2 parser refuses. */
  static const char *const bad[] = {"", "1kB", "1 KB", "KB", "1XB", "-1KB", "1.5", "8EB", "1KB ", "1..5KB",
                                    "99999999999999999999", "1kb", "1K", "."};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    uint64_t n = 777;
    int rc = mg_conf_parse_bytes(bad[i], &n);
    if (rc != MG_EINVAL || n != 777) MG_FAIL_("\"%s\": rc=%d n=%llu, want MG_EINVAL", bad[i], rc, (unsigned long long)n);
  }
}

MG_TEST(defaults_like_prometheus) {
  mg_conf_job_t *j;
  mg_conf_dest_t *d;
  mg_conf_t *c = minimal(&j, &d);
  REQUIRE(c);
  mg_conf_job_t *j2 = mg_conf_add_job(c, "fast");
  REQUIRE(j2);
  j2->interval_ms = 5000; /* global timeout 10s is capped at the interval */
  mg_conf_error_t err;
  REQUIRE(mg_conf_finish(c, &err) == 0);
  CHECK_U64(c->scrape_interval_ms, 60000);
  CHECK_U64(c->scrape_timeout_ms, 10000);
  CHECK_U64(j->interval_ms, 60000);
  CHECK_U64(j->timeout_ms, 10000);
  CHECK_U64(j2->interval_ms, 5000);
  CHECK_U64(j2->timeout_ms, 5000);
  CHECK_STR(j->scheme, "http");
  CHECK_STR(j->metrics_path, "/metrics");
  CHECK(j->honor_timestamps);
  CHECK(j->enable_compression);
  CHECK(!j->honor_labels);
  CHECK_U64(j->body_size_limit, 0);
  CHECK_U64(j->sample_limit, 0);
  CHECK_U64(d->remote_timeout_ms, 30000);
  CHECK_INT(d->queue.capacity, 2500);
  CHECK_INT(d->queue.max_shards, 50);
  CHECK_INT(d->queue.min_shards, 1);
  CHECK_INT(d->queue.max_samples_per_send, 2000);
  CHECK_U64(d->queue.batch_send_deadline_ms, 5000);
  CHECK_U64(d->queue.min_backoff_ms, 30);
  CHECK_U64(d->queue.max_backoff_ms, 5000);
  CHECK(d->queue.retry_on_http_429);
  CHECK(d->send_metadata);
  CHECK_U64(d->metadata_send_interval_ms, 60000);
  CHECK(d->auth.auth_type == NULL);
  mg_conf_free(c);
}

MG_TEST(global_inheritance) {
  mg_conf_job_t *j;
  mg_conf_t *c = minimal(&j, NULL);
  REQUIRE(c);
  c->scrape_interval_ms = 5000; /* global timeout default 10s capped to 5s */
  mg_conf_error_t err;
  REQUIRE(mg_conf_finish(c, &err) == 0);
  CHECK_U64(c->scrape_timeout_ms, 5000);
  CHECK_U64(j->interval_ms, 5000);
  CHECK_U64(j->timeout_ms, 5000);
  mg_conf_free(c);

  c = minimal(&j, NULL);
  REQUIRE(c);
  c->scrape_interval_ms = 30000;
  c->scrape_timeout_ms = 20000;
  j->interval_ms = 15000; /* job inherits 20s timeout capped to its 15s */
  REQUIRE(mg_conf_finish(c, &err) == 0);
  CHECK_U64(j->timeout_ms, 15000);
  mg_conf_free(c);

  c = minimal(&j, NULL);
  REQUIRE(c);
  j->interval_ms = 30000; /* explicit settings are kept */
  j->timeout_ms = 30000;
  REQUIRE(mg_conf_finish(c, &err) == 0);
  CHECK_U64(j->interval_ms, 30000);
  CHECK_U64(j->timeout_ms, 30000);
  mg_conf_free(c);
}

MG_TEST(timeout_greater_than_interval) {
  mg_conf_job_t *j;
  mg_conf_t *c = minimal(&j, NULL);
  REQUIRE(c);
  j->interval_ms = 10000;
  j->timeout_ms = 15000;
  EXPECT_ERROR(c, "job \"node\": scrape_timeout (15s) greater than scrape_interval (10s)");

  /* An explicit job timeout over the inherited global interval. */
  c = minimal(&j, NULL);
  REQUIRE(c);
  j->timeout_ms = 90000;
  EXPECT_ERROR(c, "job \"node\": scrape_timeout (1m30s) greater than scrape_interval (1m)");

  c = minimal(NULL, NULL);
  REQUIRE(c);
  c->scrape_interval_ms = 5000;
  c->scrape_timeout_ms = 6000;
  EXPECT_ERROR(c, "global: scrape_timeout (6s) greater than scrape_interval (5s)");
}

MG_TEST(error_names_file_and_locus) {
  mg_conf_t *c = minimal(NULL, NULL);
  REQUIRE(c);
  mg_conf_job_t *j = mg_conf_add_job(c, "second");
  REQUIRE(j);
  REQUIRE(mg_conf_job_add_target(j, "bad"));
  mg_conf_error_t err;
  mg_conf_at_t at = MG_CONF_AT_GLOBAL;
  size_t index = 99;
  CHECK_INT(mg_conf_finish_at(c, &err, &at, &index), MG_ECONFIG);
  CHECK_STR(err.file, "test.lua");
  CHECK_INT(err.line, 0);
  CHECK_INT(at, MG_CONF_AT_JOB);
  CHECK_INT(index, 1);
  CHECK_STR(err.msg, "job \"second\": target \"bad\": not host:port: missing port");
  mg_conf_free(c);

  c = minimal(NULL, NULL);
  REQUIRE(c);
  mg_conf_dest_t *d = mg_conf_add_dest(c, "b", MG_DEST_REMOTE_WRITE);
  REQUIRE(d);
  CHECK_INT(mg_conf_finish_at(c, &err, &at, &index), MG_ECONFIG);
  CHECK_INT(at, MG_CONF_AT_DEST);
  CHECK_INT(index, 1);
  CHECK_STR(err.msg, "destination \"b\": url is missing");
  /* A NULL err is allowed: the caller only wants the code. */
  CHECK_INT(mg_conf_finish(c, NULL), MG_ECONFIG);
  mg_conf_free(c);
}

MG_TEST(duplicate_names) {
  mg_conf_t *c = minimal(NULL, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_add_job(c, "node"));
  EXPECT_ERROR(c, "job \"node\": job_name used by more than one scrape job");

  c = minimal(NULL, NULL);
  REQUIRE(c);
  mg_conf_dest_t *d = mg_conf_add_dest(c, "main", MG_DEST_STDOUT);
  REQUIRE(d);
  EXPECT_ERROR(c, "destination \"main\": name used by more than one destination");

  /* An auto name can collide with an explicit one; that is reported too. */
  c = minimal(NULL, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_add_dest(c, "rw-2", MG_DEST_STDOUT));
  d = mg_conf_add_dest(c, NULL, MG_DEST_REMOTE_WRITE);
  REQUIRE(d);
  REQUIRE(mg_conf_set_str(&d->url, "http://x:1/") == 0);
  EXPECT_ERROR(c, "destination \"rw-2\": name used by more than one destination");

  c = minimal(NULL, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_add_job(c, NULL));
  EXPECT_ERROR(c, "job #2: job_name is missing, too long or not printable UTF-8");

  c = minimal(NULL, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_add_job(c, ""));
  EXPECT_ERROR(c, "job #2: job_name is missing, too long or not printable UTF-8");

  c = minimal(NULL, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_add_dest(c, "bad\nname", MG_DEST_STDOUT));
  EXPECT_ERROR(c, "destination #2: name is empty, too long or not printable UTF-8");

  c = minimal(NULL, NULL);
  REQUIRE(c);
  char longname[MG_CONF_MAX_NAME + 2];
  memset(longname, 'a', sizeof(longname) - 1);
  longname[sizeof(longname) - 1] = '\0';
  REQUIRE(mg_conf_add_job(c, longname));
  EXPECT_ERROR(c, "job #2: job_name is missing, too long or not printable UTF-8");
}

MG_TEST(target_addresses) {
  static const char *const good[] = {"x:1", "localhost:9100", "[::1]:9100", "10.0.0.1:65535",
                                     "my-host.example.com:443", "[2001:db8::1]:80", "under_score:1"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    mg_conf_job_t *j;
    mg_conf_t *c = minimal(&j, NULL);
    REQUIRE(c);
    REQUIRE(mg_conf_set_str(&j->targets[0]->address, good[i]) == 0);
    mg_conf_error_t err;
    int rc = mg_conf_finish(c, &err);
    if (rc != 0) MG_FAIL_("\"%s\" refused: %s", good[i], err.msg);
    mg_conf_free(c);
  }
  static const struct {
    const char *addr, *msg;
  } bad[] = {
      {"http://x:1", "job \"node\": target \"http://x:1\": give host:port without a scheme (set scheme: https instead)"},
      {"x:1/metrics", "job \"node\": target \"x:1/metrics\": give host:port without a path (set metrics_path instead)"},
      {"x", "job \"node\": target \"x\": not host:port: missing port"},
      {"::1:9100", "job \"node\": target \"::1:9100\": not host:port: missing host"},
      {"h::1:9100",
       "job \"node\": target \"h::1:9100\": not host:port: too many ':' (write IPv6 addresses in brackets: [::1]:9100)"},
      {"[::1]", "job \"node\": target \"[::1]\": not host:port: missing port"},
      {"[::1", "job \"node\": target \"[::1\": not host:port: IPv6 address needs a closing ']'"},
      {"[::g]:1", "job \"node\": target \"[::g]:1\": not host:port: bad character in IPv6 address"},
      {"[::1]9100", "job \"node\": target \"[::1]9100\": not host:port: expected ':' after ']'"},
      {"x:0", "job \"node\": target \"x:0\": not host:port: port must be a number from 1 to 65535"},
      {"x:70000", "job \"node\": target \"x:70000\": not host:port: port must be a number from 1 to 65535"},
      {"x:abc", "job \"node\": target \"x:abc\": not host:port: port must be a number from 1 to 65535"},
      {"x:", "job \"node\": target \"x:\": not host:port: port must be a number from 1 to 65535"},
      {"user@x:1", "job \"node\": target \"user@x:1\": not host:port: bad character in host"},
      {"a b:1", "job \"node\": target \"a b:1\": not host:port: bad character in host"},
      {"", "job \"node\": target address is empty"},
      {"a\nb:1", "job \"node\": target \"a?b:1\": not host:port: bad character in host"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    mg_conf_job_t *j;
    mg_conf_t *c = minimal(&j, NULL);
    REQUIRE(c);
    REQUIRE(mg_conf_set_str(&j->targets[0]->address, bad[i].addr) == 0);
    EXPECT_ERROR(c, bad[i].msg);
  }
  mg_conf_job_t *j;
  mg_conf_t *c = minimal(&j, NULL);
  REQUIRE(c);
  mg_conf_target_t *t2 = mg_conf_job_add_target(j, "localhost:9100");
  REQUIRE(t2);
  REQUIRE(mg_kvs_add(&j->targets[0]->labels, "a", "1") == 0);
  REQUIRE(mg_kvs_add(&j->targets[0]->labels, "b", "2") == 0);
  REQUIRE(mg_kvs_add(&t2->labels, "b", "2") == 0);
  REQUIRE(mg_kvs_add(&t2->labels, "a", "1") == 0); /* same set, other order */
  EXPECT_ERROR(c, "job \"node\": target \"localhost:9100\" listed twice with the same labels");

  /* The same address with other labels is another target, as in Prometheus. */
  c = minimal(&j, NULL);
  REQUIRE(c);
  t2 = mg_conf_job_add_target(j, "localhost:9100");
  REQUIRE(t2);
  REQUIRE(mg_kvs_add(&t2->labels, "a", "1") == 0);
  mg_conf_target_t *t3 = mg_conf_job_add_target(j, "localhost:9100");
  REQUIRE(t3);
  REQUIRE(mg_kvs_add(&t3->labels, "a", "2") == 0);
  mg_conf_error_t err;
  CHECK_INT(mg_conf_finish(c, &err), 0);
  mg_conf_free(c);
}

MG_TEST(label_names_and_values) {
  static const char *const bad[] = {"1a", "a-b", "", "é", "a.b", "a b"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    mg_conf_job_t *j;
    mg_conf_t *c = minimal(&j, NULL);
    REQUIRE(c);
    REQUIRE(mg_kvs_add(&j->targets[0]->labels, bad[i], "v") == 0);
    char want[256];
    snprintf(want, sizeof(want),
             "job \"node\": target \"localhost:9100\": invalid label name \"%s\" (must match [a-zA-Z_][a-zA-Z0-9_]*)",
             bad[i]);
    EXPECT_ERROR(c, want);
  }
  mg_conf_job_t *j;
  mg_conf_t *c = minimal(&j, NULL);
  REQUIRE(c);
  REQUIRE(mg_kvs_add(&j->targets[0]->labels, "_ok9", "héllo ✓") == 0);
  REQUIRE(mg_kvs_add(&j->targets[0]->labels, "Z", "") == 0);
  mg_conf_error_t err;
  CHECK_INT(mg_conf_finish(c, &err), 0);
  mg_conf_free(c);

  static const char *const bad_utf8[] = {"\xff", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "a\xe2\x82"};
  for (size_t i = 0; i < sizeof(bad_utf8) / sizeof(bad_utf8[0]); i++) {
    c = minimal(NULL, NULL);
    REQUIRE(c);
    REQUIRE(mg_kvs_add(&c->external_labels, "env", bad_utf8[i]) == 0);
    EXPECT_ERROR(c, "global: external_labels: value of label \"env\" is not valid UTF-8");
  }
  c = minimal(NULL, NULL);
  REQUIRE(c);
  REQUIRE(mg_kvs_add(&c->external_labels, "env", "a") == 0);
  REQUIRE(mg_kvs_add(&c->external_labels, "env", "b") == 0);
  EXPECT_ERROR(c, "global: external_labels: label \"env\" given twice");
}

MG_TEST(job_fields) {
  mg_conf_job_t *j;
  mg_conf_t *c = minimal(&j, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&j->scheme, "ftp") == 0);
  EXPECT_ERROR(c, "job \"node\": scheme \"ftp\" is not http or https");

  c = minimal(&j, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&j->metrics_path, "metrics") == 0);
  EXPECT_ERROR(c, "job \"node\": metrics_path \"metrics\" must start with '/' and hold no spaces, '?' or '#' (use "
                  "params)");

  c = minimal(&j, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&j->metrics_path, "/m?x=1") == 0);
  EXPECT_ERROR(c, "job \"node\": metrics_path \"/m?x=1\" must start with '/' and hold no spaces, '?' or '#' (use "
                  "params)");

  c = minimal(&j, NULL);
  REQUIRE(c);
  REQUIRE(mg_kvs_add(&j->params, "", "x") == 0);
  EXPECT_ERROR(c, "job \"node\": params: empty name or control characters");

  c = minimal(&j, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&j->scheme, "https") == 0);
  REQUIRE(mg_kvs_add(&j->params, "module", "a") == 0);
  REQUIRE(mg_kvs_add(&j->params, "module", "b") == 0); /* repeated names are fine */
  mg_conf_error_t err;
  CHECK_INT(mg_conf_finish(c, &err), 0);
  mg_conf_free(c);
}

MG_TEST(auth_rules) {
  mg_conf_job_t *j;
  mg_conf_dest_t *d;
  mg_conf_t *c = minimal(&j, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&j->auth.basic_username, "u") == 0);
  REQUIRE(mg_conf_set_secret(&j->auth.credentials, "tok") == 0);
  EXPECT_ERROR(c, "job \"node\": at most one of basic_auth and authorization may be set");

  c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_conf_set_secret(&d->auth.basic_password, "p") == 0);
  REQUIRE(mg_conf_set_str(&d->auth.basic_password_file, "/p") == 0);
  EXPECT_ERROR(c, "destination \"main\": basic_auth: at most one of password and password_file may be set");

  c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_conf_set_secret(&d->auth.credentials, "p") == 0);
  REQUIRE(mg_conf_set_str(&d->auth.credentials_file, "/p") == 0);
  EXPECT_ERROR(c, "destination \"main\": authorization: at most one of credentials and credentials_file may be set");

  c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_conf_set_secret(&d->auth.credentials, "tok\r\nX-Evil: 1") == 0);
  EXPECT_ERROR(c, "destination \"main\": authorization: credentials contain control characters");

  c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&d->auth.auth_type, "basic") == 0);
  EXPECT_ERROR(c, "destination \"main\": authorization: type cannot be \"Basic\", use basic_auth instead");

  c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&d->auth.auth_type, "Bearer x") == 0);
  EXPECT_ERROR(c, "destination \"main\": authorization: type must be one word, like Bearer");

  /* Credentials without a type get "Bearer", as in Prometheus. */
  c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&d->auth.credentials_file, "/run/token") == 0);
  mg_conf_error_t err;
  CHECK_INT(mg_conf_finish(c, &err), 0);
  CHECK_STR(d->auth.auth_type, "Bearer");
  mg_conf_free(c);
}

MG_TEST(tls_rules) {
  mg_conf_job_t *j;
  mg_conf_t *c = minimal(&j, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&j->tls.cert_file, "/c.pem") == 0);
  EXPECT_ERROR(c, "job \"node\": tls_config: cert_file given without key_file");
  c = minimal(&j, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&j->tls.key_file, "/k.pem") == 0);
  EXPECT_ERROR(c, "job \"node\": tls_config: key_file given without cert_file");
  c = minimal(&j, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&j->tls.server_name, "") == 0);
  EXPECT_ERROR(c, "job \"node\": tls_config: server_name is empty or has control characters");
}

MG_TEST(destination_rules) {
  static const struct {
    const char *url, *msg;
  } bad[] = {
      {"ftp://x/", "destination \"main\": url must start with http:// or https://"},
      {"localhost:9090", "destination \"main\": url must start with http:// or https://"},
      {"http://", "destination \"main\": url: bad host: missing host"},
      {"http://u:secret@x/", "destination \"main\": url must not contain user:password@ (use basic_auth)"},
      {"http://x:99999/", "destination \"main\": url: bad host: port must be a number from 1 to 65535"},
      {"http://x y/", "destination \"main\": url contains spaces or control characters"},
      {"", "destination \"main\": url is missing"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    mg_conf_dest_t *d;
    mg_conf_t *c = minimal(NULL, &d);
    REQUIRE(c);
    REQUIRE(mg_conf_set_str(&d->url, bad[i].url) == 0);
    EXPECT_ERROR(c, bad[i].msg);
  }
  static const char *const good[] = {"https://[::1]:9090/api/v1/write", "http://vm:8428/api/v1/write?extra_label=a",
                                     "https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-1/api/v1/remote_write",
                                     "http://x"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    mg_conf_dest_t *d;
    mg_conf_t *c = minimal(NULL, &d);
    REQUIRE(c);
    REQUIRE(mg_conf_set_str(&d->url, good[i]) == 0);
    mg_conf_error_t err;
    int rc = mg_conf_finish(c, &err);
    if (rc) MG_FAIL_("%s refused: %s", good[i], err.msg);
    mg_conf_free(c);
  }

  mg_conf_dest_t *d;
  mg_conf_t *c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_kvs_add(&d->headers, "Authorization", "Bearer x") == 0);
  EXPECT_ERROR(c, "destination \"main\": headers: set Authorization through basic_auth or authorization");
  c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_kvs_add(&d->headers, "content-encoding", "gzip") == 0);
  EXPECT_ERROR(c, "destination \"main\": headers: content-encoding is a reserved header and must not be changed");
  c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_kvs_add(&d->headers, "X-Amz-Security-Token", "t") == 0);
  EXPECT_ERROR(c, "destination \"main\": headers: X-Amz-Security-Token is a reserved header and must not be changed");
  c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_kvs_add(&d->headers, "Bad Name", "v") == 0);
  EXPECT_ERROR(c, "destination \"main\": headers: invalid header name \"Bad Name\"");
  c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_kvs_add(&d->headers, "X-Tenant", "a\r\nb") == 0);
  EXPECT_ERROR(c, "destination \"main\": headers: value of X-Tenant has control characters");
  c = minimal(NULL, &d);
  REQUIRE(c);
  REQUIRE(mg_kvs_add(&d->headers, "X-Tenant", "a") == 0);
  REQUIRE(mg_kvs_add(&d->headers, "x-tenant", "b") == 0);
  EXPECT_ERROR(c, "destination \"main\": headers: x-tenant given twice");

  c = minimal(NULL, &d);
  REQUIRE(c);
  d->queue.min_shards = 10;
  d->queue.max_shards = 5;
  EXPECT_ERROR(c, "destination \"main\": queue_config: min_shards (10) greater than max_shards (5)");
  c = minimal(NULL, &d);
  REQUIRE(c);
  d->queue.min_backoff_ms = 10000;
  EXPECT_ERROR(c, "destination \"main\": queue_config: min_backoff (10s) greater than max_backoff (5s)");

  c = minimal(NULL, NULL);
  REQUIRE(c);
  REQUIRE(mg_conf_add_dest(c, "f", MG_DEST_FILE));
  EXPECT_ERROR(c, "destination \"f\": path is missing");
}

MG_TEST(destinations_required_jobs_not) {
  mg_conf_t *c = mg_conf_new("p", MG_CONF_LUA);
  REQUIRE(c);
  REQUIRE(mg_conf_add_job(c, "a"));
  EXPECT_ERROR(c, "no destination: add a remote_write entry");

  c = mg_conf_new("p", MG_CONF_LUA);
  REQUIRE(c);
  mg_conf_dest_t *d = mg_conf_add_dest(c, NULL, MG_DEST_STDOUT);
  REQUIRE(d);
  mg_conf_error_t err;
  CHECK_INT(mg_conf_finish(c, &err), 0);
  CHECK_STR(d->name, "stdout-0");
  mg_conf_free(c);
}

MG_TEST(limits_enforced) {
  mg_conf_t *c = minimal(NULL, NULL);
  REQUIRE(c);
  for (int i = 0; i < MG_CONF_MAX_DESTS; i++) REQUIRE(mg_conf_add_dest(c, NULL, MG_DEST_STDOUT));
  EXPECT_ERROR(c, "65 destinations, more than the maximum 64");

  mg_conf_job_t *j;
  c = minimal(&j, NULL);
  REQUIRE(c);
  char name[32];
  for (int i = 0; i <= MG_CONF_MAX_LABELS; i++) {
    snprintf(name, sizeof(name), "l%d", i);
    REQUIRE(mg_kvs_add(&j->targets[0]->labels, name, "v") == 0);
  }
  EXPECT_ERROR(c, "job \"node\": target \"localhost:9100\": 257 labels, more than the maximum 256");

  /* The maximum number of targets passes (duplicate search is linear)... */
  c = minimal(&j, NULL);
  REQUIRE(c);
  for (int i = 1; i < MG_CONF_MAX_TARGETS; i++) {
    snprintf(name, sizeof(name), "10.%d.%d.%d:%d", i >> 16, (i >> 8) & 255, i & 255, 9100);
    REQUIRE(mg_conf_job_add_target(j, name));
  }
  mg_conf_error_t err;
  CHECK_INT(mg_conf_finish(c, &err), 0);
  mg_conf_free(c);
  /* ...one more does not. */
  c = minimal(&j, NULL);
  REQUIRE(c);
  for (int i = 1; i <= MG_CONF_MAX_TARGETS; i++) {
    snprintf(name, sizeof(name), "h%d:1", i);
    REQUIRE(mg_conf_job_add_target(j, name));
  }
  EXPECT_ERROR(c, "job \"node\": 100001 targets, more than the maximum 100000");
}

static char *print_to_string(const mg_conf_t *c) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) return NULL;
  mg_conf_print(c, f);
  fclose(f);
  return text;
}

MG_TEST(print_hides_secrets) {
  mg_conf_job_t *j;
  mg_conf_dest_t *d;
  mg_conf_t *c = minimal(&j, &d);
  REQUIRE(c);
  REQUIRE(mg_conf_set_str(&j->auth.basic_username, "scraper") == 0);
  REQUIRE(mg_conf_set_secret(&j->auth.basic_password, "hunter2-job") == 0);
  REQUIRE(mg_conf_set_secret(&d->auth.credentials, "tok3n-dest") == 0);
  REQUIRE(mg_kvs_add(&d->headers, "X-Api-Key", "apikey-value-123") == 0);
  REQUIRE(mg_kvs_add(&c->external_labels, "region", "eu") == 0);
  REQUIRE(mg_kvs_add(&j->targets[0]->labels, "env", "prod") == 0);
  REQUIRE(mg_conf_set_str(&j->tls.ca_file, "/etc/ca.pem") == 0);
  mg_conf_error_t err;
  REQUIRE(mg_conf_finish(c, &err) == 0);
  char *text = print_to_string(c);
  REQUIRE(text);
  CHECK(strstr(text, "hunter2") == NULL);
  CHECK(strstr(text, "tok3n") == NULL);
  CHECK(strstr(text, "apikey-value") == NULL);
  CHECK(strstr(text, "password=<secret>") != NULL);
  CHECK(strstr(text, "credentials=<secret>") != NULL);
  CHECK(strstr(text, "X-Api-Key=<secret>") != NULL);
  CHECK(strstr(text, "username=\"scraper\"") != NULL);
  CHECK(strstr(text, "type=\"Bearer\"") != NULL);
  CHECK(strstr(text, "job \"node\": every 1m, timeout 10s, http://<target>/metrics") != NULL);
  CHECK(strstr(text, "localhost:9100 {env=\"prod\"}") != NULL);
  CHECK(strstr(text, "external_labels={region=\"eu\"}") != NULL);
  CHECK(strstr(text, "ca_file=\"/etc/ca.pem\"") != NULL);
  CHECK(strstr(text, "destination \"main\": remote_write \"http://localhost:9090/api/v1/write\" remote_timeout=30s") !=
        NULL);
  CHECK(strstr(text, "capacity=2500 min_shards=1 max_shards=50 max_samples_per_send=2000") != NULL);
  CHECK(strstr(text, "[not checked]") == NULL);
  free(text);
  mg_conf_free(c);
}

MG_TEST(sigv4_and_relabel_rules) {
  mg_conf_dest_t *d;
  mg_conf_t *c = minimal(NULL, &d);
  REQUIRE(c);
  d->sigv4.enabled = true;
  REQUIRE(mg_conf_set_str(&d->auth.basic_username, "u") == 0);
  EXPECT_ERROR(c, "destination \"main\": at most one of basic_auth, authorization and sigv4 may be set");

  mg_conf_job_t *j;
  c = minimal(&j, &d);
  REQUIRE(c);
  d->sigv4.enabled = true;
  REQUIRE(mg_conf_set_str(&d->sigv4.region, "us-east-1") == 0);
  d->sigv4.creds.kind = MG_CREDS_ASSUME_ROLE;
  REQUIRE(mg_conf_set_str(&d->sigv4.creds.role_arn, "arn:aws:iam::1:role/w") == 0);
  mg_conf_creds_t *src = mg_conf_creds_add_source(&d->sigv4.creds, MG_CREDS_STATIC);
  REQUIRE(src);
  REQUIRE(mg_conf_set_str(&src->access_key_id, "AKIAEXAMPLEKEY") == 0);
  REQUIRE(mg_conf_set_secret(&src->secret_access_key, "wJalrXUtnFEMI-SECRET") == 0);
  REQUIRE(mg_conf_set_secret(&src->session_token, "FwoG-TOKEN") == 0);
  REQUIRE(mg_conf_relabels_add(&j->metric_relabel_configs));
  REQUIRE(mg_conf_relabels_add(&j->metric_relabel_configs));
  REQUIRE(mg_conf_relabels_add(&d->write_relabel_configs));
  mg_conf_error_t err;
  REQUIRE(mg_conf_finish(c, &err) == 0);
  CHECK_STR(d->sigv4.service, "aps");
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  REQUIRE(f);
  mg_conf_print(c, f);
  fclose(f);
  CHECK(strstr(text, "SECRET") == NULL);
  CHECK(strstr(text, "TOKEN") == NULL);
  CHECK(strstr(text, "EXAMPLEKEY") == NULL);
  CHECK(strstr(text, "sigv4: region=\"us-east-1\" service=\"aps\" credentials=assume_role") != NULL);
  CHECK(strstr(text, "source: credentials=static access_key_id=AKIA****") != NULL);
  CHECK(strstr(text, "metric_relabel_configs: 2 rule(s)") != NULL);
  CHECK(strstr(text, "write_relabel_configs: 1 rule(s)") != NULL);
  free(text);
  mg_conf_free(c);
}

/* Fail each allocation in turn while building and finishing a conf: every
 * step must report the failure and mg_conf_free must release the rest
 * (ASan checks the leaks). */
static int build_all(void) {
  mg_conf_t *c = mg_conf_new("t.lua", MG_CONF_LUA);
  if (!c) return MG_ENOMEM;
  int rc = MG_ENOMEM;
  mg_conf_job_t *j = mg_conf_add_job(c, "job");
  if (!j) goto out;
  for (int i = 0; i < 6; i++) {
    char a[32];
    snprintf(a, sizeof(a), "h:%d", 1000 + i);
    mg_conf_target_t *t = mg_conf_job_add_target(j, a);
    if (!t || mg_kvs_add(&t->labels, "a", "b") < 0 || mg_kvs_set(&t->labels, "a", "c") < 0) goto out;
  }
  mg_conf_dest_t *d = mg_conf_add_dest(c, NULL, MG_DEST_REMOTE_WRITE);
  if (!d || mg_conf_set_str(&d->url, "http://x:1/") < 0 || mg_conf_set_secret(&d->auth.credentials, "s") < 0 ||
      mg_kvs_add(&d->headers, "X-A", "1") < 0)
    goto out;
  rc = mg_conf_finish(c, NULL);
out:
  mg_conf_free(c);
  return rc;
}

MG_TEST(allocation_failures) {
  int ok_at = 0;
  for (int n = 1; n < 500 && !ok_at; n++) {
    mg_mem_fail_at((uint64_t)n);
    int rc = build_all();
    mg_mem_fail_at(0);
    if (rc == 0)
      ok_at = n;
    else
      CHECK_INT(rc, MG_ENOMEM);
  }
  CHECK(ok_at > 10);
}

MG_TEST_MAIN()
