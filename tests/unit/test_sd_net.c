/* Tests for the http and dns discovery providers against in-process fakes
 * on loopback: an mg_http_server answering from a script, and a small DNS
 * server on libuv (UDP, plus TCP for truncated answers) answering from a
 * table. Each network test runs its own loop and ends with uv_loop_close
 * returning 0. */
#include <arpa/inet.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <uv.h>

#include "mg_err.h"
#include "mg_http_client.h"
#include "mg_http_server.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_metrics.h"
#include "mg_sd_dns.h"
#include "mg_sd_http.h"
#include "mg_test.h"

__attribute__((constructor)) static void ignore_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }

/* ------------------------------------------------------------------ helpers */

/* Options as a loader builds them: key, value pairs; a value starting with
 * '[' is a list of comma-separated scalars ("[a,b]"). */
static mg_conf_val_t *opts_v(const char *k, va_list ap) {
  mg_conf_val_t *m = mg_conf_val_new(MG_CONF_VAL_MAP, NULL, 1);
  for (; m && k; k = va_arg(ap, const char *)) {
    const char *v = va_arg(ap, const char *);
    mg_conf_val_t *item;
    if (v[0] == '[') {
      item = mg_conf_val_new(MG_CONF_VAL_LIST, NULL, 1);
      char buf[512];
      snprintf(buf, sizeof buf, "%.*s", (int)strlen(v) - 2, v + 1);
      for (char *save = NULL, *t = strtok_r(buf, ",", &save); item && t; t = strtok_r(NULL, ",", &save))
        mg_conf_val_push(item, mg_conf_val_new(MG_CONF_VAL_SCALAR, t, 1));
    } else {
      item = mg_conf_val_new(MG_CONF_VAL_SCALAR, v, 1);
    }
    mg_conf_val_put(m, k, item);
  }
  return m;
}

static mg_conf_sd_t sd_opts(const char *kind, const char *k, ...) {
  va_list ap;
  va_start(ap, k);
  mg_conf_sd_t sd = {.kind = (char *)kind, .opts = opts_v(k, ap), .lua_ref = -1, .line = 1};
  va_end(ap);
  return sd;
}

/* Add a nested mapping (basic_auth, tls_config, ...) to an options tree. */
static void put_map(mg_conf_sd_t *sd, const char *key, const char *k, ...) {
  va_list ap;
  va_start(ap, k);
  mg_conf_val_put(sd->opts, key, opts_v(k, ap));
  va_end(ap);
}

static int check(const mg_sd_ops_t *ops, mg_conf_sd_t *sd, char *why, size_t n) {
  why[0] = '\0';
  int rc = ops->check(sd, why, n);
  mg_conf_val_free(sd->opts);
  return rc;
}

static void tick(uv_timer_t *t) { (void)t; }

/* Run the loop until *counter reaches target or max_ms pass. */
static void run_until(uv_loop_t *loop, const int *counter, int target, uint64_t max_ms) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, tick, 10, 10);
  uv_update_time(loop);
  uint64_t start = uv_now(loop);
  while (*counter < target && uv_now(loop) - start < max_ms) uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static void finish_loop(uv_loop_t *loop) {
  uv_run(loop, UV_RUN_DEFAULT);
  CHECK_INT(uv_loop_close(loop), 0);
}

/* What the provider reported, one target per line:
 * "address k=v k=v" with labels sorted, lines in report order. */
typedef struct rec {
  int calls, oks, fails;
  bool in_start;
  mg_buf_t last; /* of the last ok report */
} rec_t;

static int kv_cmp(const void *a, const void *b) {
  return strcmp(((const mg_kv_t *)a)->name, ((const mg_kv_t *)b)->name);
}

static void on_update(void *ud, bool ok, const mg_sd_targets_t *ts) {
  rec_t *r = ud;
  CHECK(!r->in_start);
  r->calls++;
  if (!ok) {
    CHECK(ts == NULL);
    r->fails++;
    return;
  }
  r->oks++;
  mg_buf_reset(&r->last);
  mg_buf_append_str(&r->last, "");
  for (size_t i = 0; i < ts->n; i++) {
    mg_kv_t kv[64];
    size_t n = ts->v[i].labels.n < 64 ? ts->v[i].labels.n : 64;
    memcpy(kv, ts->v[i].labels.v, n * sizeof kv[0]);
    qsort(kv, n, sizeof kv[0], kv_cmp);
    mg_buf_append_str(&r->last, ts->v[i].address);
    for (size_t k = 0; k < n; k++) mg_buf_printf(&r->last, " %s=%s", kv[k].name, kv[k].value);
    mg_buf_append_str(&r->last, "\n");
  }
}

static void rec_init(rec_t *r) {
  memset(r, 0, sizeof *r);
  mg_buf_init(&r->last, 0);
  mg_buf_append_str(&r->last, "");
}

static void *start(const mg_sd_ops_t *ops, uv_loop_t *loop, mg_http_client_t *http, mg_conf_sd_t *sd, rec_t *r) {
  mg_sd_env_t env = {.loop = loop, .http = http};
  void *state = NULL;
  r->in_start = true;
  int rc = ops->start(&env, sd, on_update, r, &state);
  r->in_start = false;
  CHECK_INT(rc, 0);
  mg_conf_val_free(sd->opts); /* the provider keeps copies */
  return state;
}

/* A counter's value (help text as the provider registers it). */
static double metric_value(const char *name, const char *help) {
  mg_metric_t *m = mg_metrics_counter(name, help, NULL);
  return m ? m->v : -1;
}

static double dns_lookups(void) {
  return metric_value("moongate_sd_dns_lookups_total", "DNS discovery lookups (one per name and refresh).");
}

static double dns_lookup_failures(void) {
  return metric_value("moongate_sd_dns_lookup_failures_total",
                      "DNS discovery lookups that failed (the name keeps its previous targets).");
}

/* Log lines go to a temporary file, read back by count_log. */
static FILE *log_file;

static void log_capture(void) {
  log_file = tmpfile();
  mg_log_set_stream(log_file);
}

static int count_log(const char *needle) {
  fflush(log_file);
  rewind(log_file);
  char line[2048];
  int n = 0;
  while (fgets(line, sizeof line, log_file))
    if (strstr(line, needle)) n++;
  fseek(log_file, 0, SEEK_END);
  return n;
}

static void log_release(void) {
  mg_log_set_stream(NULL);
  fclose(log_file);
  log_file = NULL;
}

/* ------------------------------------------------------- http_sd: decoding */

static int decode(const char *doc, mg_buf_t *out, char *why, size_t n) {
  mg_sd_targets_t ts = {0};
  int rc = mg_sd_http_decode(doc, strlen(doc), "http://sd/x", &ts, why, n);
  rec_t r;
  rec_init(&r);
  if (rc == 0) on_update(&r, true, &ts);
  mg_buf_reset(out);
  mg_buf_append(out, r.last.data, r.last.len);
  mg_buf_cleanup(&r.last);
  mg_sd_targets_cleanup(&ts);
  return rc;
}

MG_TEST(http_decode_groups) {
  mg_buf_t out;
  mg_buf_init(&out, 0);
  char why[256];
  CHECK_INT(decode("[{\"targets\": [\"a:1\", \"b:2\"], \"labels\": {\"env\": \"prod\", \"__meta_x\": \"y\"}},"
                   " {\"targets\": [\"[::1]:3\"]}, {\"labels\": {\"lonely\": \"1\"}}, {\"targets\": []}]",
                   &out, why, sizeof why),
            0);
  CHECK_STR(out.data, "a:1 __meta_url=http://sd/x __meta_x=y env=prod\nb:2 __meta_url=http://sd/x __meta_x=y env=prod\n"
                      "[::1]:3 __meta_url=http://sd/x\n");
  CHECK_INT(decode("[]", &out, why, sizeof why), 0);
  CHECK_STR(out.data, "");
  /* Go's encoding/json: member names in any case, null members empty,
   * null label values empty, a repeated targets replaces, repeated labels
   * merge. The group's __address__ and __meta_url give way. */
  CHECK_INT(decode("[{\"Targets\": [\"x:1\"], "
                   "\"LABELS\": {\"a\": null, \"__address__\": \"evil:1\", \"__meta_url\": \"u\"},"
                   " \"targets\": [\"y:2\"], \"labels\": {\"b\": \"\\u00e9\"}}, {\"targets\": null, \"labels\": null}]",
                   &out, why, sizeof why),
            0);
  CHECK_STR(out.data, "y:2 __meta_url=http://sd/x a= b=\xc3\xa9\n");
  mg_buf_cleanup(&out);
}

MG_TEST(http_decode_refusals) {
  static const struct {
    const char *doc, *why;
  } bad[] = {
      {"null", "not a JSON list of target groups (byte 0: expected an array)"},
      {"{}", "not a JSON list of target groups (byte 0: expected an array)"},
      {"[{\"targets\": [\"a:1\"]}", "not a JSON list of target groups (byte 21: unterminated array)"},
      {"[null]", "target group 0 is null"},
      {"[{}, 5]", "target group 1 is not a mapping"},
      {"[{\"targets\": [\"a:1\"], \"port\": 1}]", "target group 0: unknown field \"port\""},
      {"[{\"targets\": \"a:1\"}]", "target group 0: targets must be a list of strings"},
      {"[{\"targets\": [1]}]", "target group 0: target 0 is not a string"},
      {"[{\"targets\": [\"a\\u0000b\"]}]", "target group 0: target 0 holds a NUL byte"},
      {"[{\"labels\": []}]", "target group 0: labels must be a mapping"},
      {"[{\"labels\": {\"a-b\": \"1\"}}]",
       "target group 0: invalid label name \"a-b\" (must match [a-zA-Z_][a-zA-Z0-9_]*)"},
      {"[{\"labels\": {\"1a\": \"1\"}}]",
       "target group 0: invalid label name \"1a\" (must match [a-zA-Z_][a-zA-Z0-9_]*)"},
      {"[{\"labels\": {\"\": \"1\"}}]", "target group 0: invalid label name \"\" (must match [a-zA-Z_][a-zA-Z0-9_]*)"},
      {"[{}, {\"labels\": {\"a\": 1}}]", "target group 1: value of label \"a\" is not a string"},
      {"[{\"labels\": {\"a\": \"x\\u0000\"}}]", "target group 0: value of label \"a\" holds a NUL byte"},
  };
  mg_buf_t out;
  mg_buf_init(&out, 0);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char why[256] = "";
    int rc = decode(bad[i].doc, &out, why, sizeof why);
    if (rc != MG_EPARSE) MG_FAIL_("case %zu accepted: rc=%d", i, rc);
    CHECK_STR(why, bad[i].why);
  }
  /* A failure leaves what the list held before. */
  mg_sd_targets_t ts = {0};
  mg_sd_targets_add(&ts, "keep:1");
  char why[256];
  const char *doc = "[{\"targets\": [\"a:1\", \"b:1\"]}, {\"targets\": [\"c:1\"], \"labels\": {\"-\": \"\"}}]";
  CHECK_INT(mg_sd_http_decode(doc, strlen(doc), "u", &ts, why, sizeof why), MG_EPARSE);
  CHECK_INT(ts.n, 1);
  CHECK_STR(ts.v[0].address, "keep:1");
  /* Label and target counts are bounded. */
  mg_buf_t big;
  mg_buf_init(&big, 0);
  mg_buf_append_str(&big, "[{\"targets\": [\"a:1\"], \"labels\": {");
  for (int i = 0; i <= MG_CONF_MAX_LABELS; i++) mg_buf_printf(&big, "%s\"l%d\": \"v\"", i ? "," : "", i);
  mg_buf_append_str(&big, "}}]");
  CHECK_INT(mg_sd_http_decode(big.data, big.len, "u", &ts, why, sizeof why), MG_EPARSE);
  CHECK_STR(why, "target group 0: more than 256 labels");
  mg_buf_reset(&big);
  mg_buf_append_str(&big, "[{\"targets\": [");
  for (int i = 0; i <= MG_CONF_MAX_TARGETS; i++) mg_buf_printf(&big, "%s\"h:%d\"", i ? "," : "", 1 + i % 60000);
  mg_buf_append_str(&big, "]}]");
  CHECK_INT(mg_sd_http_decode(big.data, big.len, "u", &ts, why, sizeof why), MG_EPARSE);
  CHECK_STR(why, "more than 100000 targets");
  CHECK_INT(ts.n, 1);
  /* Out of memory at any allocation fails cleanly (no leak under ASan). */
  doc = "[{\"targets\": [\"a:1\", \"b:1\"], \"labels\": {\"x\": \"y\"}}]";
  int ooms = 0;
  for (int k = 1; k < 40; k++) {
    mg_mem_fail_at(k);
    int rc = mg_sd_http_decode(doc, strlen(doc), "u", &ts, why, sizeof why);
    mg_mem_fail_at(0);
    if (rc == MG_ENOMEM) {
      ooms++;
      CHECK_INT(ts.n, 1);
      CHECK_STR(why, "out of memory");
    } else {
      CHECK_INT(rc, 0);
      break;
    }
  }
  CHECK(ooms > 3);
  mg_buf_cleanup(&big);
  mg_sd_targets_cleanup(&ts);
  mg_buf_cleanup(&out);
}

/* -------------------------------------------------------- http_sd: options */

MG_TEST(http_check_options) {
  char why[400];
  mg_conf_sd_t sd = sd_opts("http", "url", "https://sd.example:8443/targets?x=1", "refresh_interval", "15s",
                            "follow_redirects", "false", "enable_http2", "true", NULL);
  put_map(&sd, "authorization", "credentials", "s3cret", NULL);
  put_map(&sd, "tls_config", "ca_file", "ca.pem", "insecure_skip_verify", "true", NULL);
  CHECK_INT(check(&mg_sd_http_ops, &sd, why, sizeof why), 0);
  CHECK_STR(why, "");
  sd = sd_opts("http", "url", "http://[::1]:80/", "bearer_token_file", "/t", NULL);
  CHECK_INT(check(&mg_sd_http_ops, &sd, why, sizeof why), 0);

  static const struct {
    const char *k1, *v1, *k2, *v2, *why;
  } bad[] = {
      {"refresh_interval", "1m", NULL, NULL, "http_sd_configs: url is missing"},
      {"url", "ftp://x/", NULL, NULL, "http_sd_configs: url must start with http:// or https://"},
      {"url", "http://user:pw@x/", NULL, NULL, "http_sd_configs: url must not contain user:password@ (use basic_auth)"},
      {"url", "http:///path", NULL, NULL, "http_sd_configs: url has no valid host[:port]"},
      {"url", "http://x:0/", NULL, NULL, "http_sd_configs: url has no valid host[:port]"},
      {"url", "http://x y/", NULL, NULL, "http_sd_configs: url contains spaces or control characters"},
      {"url", "http://x/", "refresh_interval", "soon",
       "http_sd_configs: refresh_interval must be a positive duration like 60s"},
      {"url", "http://x/", "refresh_interval", "0s",
       "http_sd_configs: refresh_interval must be a positive duration like 60s"},
      {"url", "http://x/", "proxy_url", "http://p/",
       "http_sd_configs: proxy_url is not supported by this moongate version"},
      {"url", "http://x/", "follow_redirects", "true",
       "http_sd_configs: follow_redirects: moongate does not follow redirects (set false)"},
      {"url", "http://x/", "enable_http2", "maybe", "http_sd_configs: enable_http2 must be true or false"},
      {"url", "http://x/", "bearer_token", "a\nb", "http_sd_configs: bearer_token contains control characters"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    sd = sd_opts("http", bad[i].k1, bad[i].v1, bad[i].k2, bad[i].v2, NULL);
    CHECK_INT(check(&mg_sd_http_ops, &sd, why, sizeof why), MG_ECONFIG);
    CHECK_STR(why, bad[i].why);
  }
  sd = sd_opts("http", "url", "http://x/", "bearer_token", "t", NULL);
  put_map(&sd, "basic_auth", "username", "u", NULL);
  CHECK_INT(check(&mg_sd_http_ops, &sd, why, sizeof why), MG_ECONFIG);
  CHECK_STR(why, "http_sd_configs: at most one of basic_auth, authorization and bearer_token may be set");
  sd = sd_opts("http", "url", "http://x/", "bearer_token", "t", "bearer_token_file", "f", NULL);
  CHECK_INT(check(&mg_sd_http_ops, &sd, why, sizeof why), MG_ECONFIG);
  CHECK_STR(why, "http_sd_configs: at most one of bearer_token and bearer_token_file may be set");
  sd = sd_opts("http", "url", "http://x/", NULL);
  put_map(&sd, "basic_auth", "username", "u", "password", "p", "password_file", "f", NULL);
  CHECK_INT(check(&mg_sd_http_ops, &sd, why, sizeof why), MG_ECONFIG);
  CHECK_STR(why, "http_sd_configs: basic_auth: at most one of password and password_file may be set");
  sd = sd_opts("http", "url", "http://x/", NULL);
  put_map(&sd, "authorization", "type", "Basic", "credentials", "c", NULL);
  CHECK_INT(check(&mg_sd_http_ops, &sd, why, sizeof why), MG_ECONFIG);
  CHECK_STR(why, "http_sd_configs: authorization: type cannot be \"Basic\", use basic_auth instead");
  sd = sd_opts("http", "url", "http://x/", NULL);
  put_map(&sd, "tls_config", "cert_file", "c.pem", NULL);
  CHECK_INT(check(&mg_sd_http_ops, &sd, why, sizeof why), MG_ECONFIG);
  CHECK_STR(why, "http_sd_configs: tls_config: cert_file and key_file go together");
  sd = sd_opts("http", "url", "http://x/", NULL);
  put_map(&sd, "tls_config", "min_version", "TLS12", NULL);
  CHECK_INT(check(&mg_sd_http_ops, &sd, why, sizeof why), MG_ECONFIG);
  CHECK_STR(why, "http_sd_configs: tls_config: min_version is not supported by this moongate version");
  /* A secret never shows up in a message. */
  sd = sd_opts("http", "url", "http://x/?token=SECRET1", "tls_config", "SECRET2", NULL);
  put_map(&sd, "basic_auth", "password", "SECRET3", "oops", "SECRET4", NULL);
  CHECK_INT(check(&mg_sd_http_ops, &sd, why, sizeof why), MG_ECONFIG);
  CHECK(!strstr(why, "SECRET"));
}

/* ------------------------------------------------- http_sd: fake server */

typedef struct answer {
  int status;
  const char *content_type; /* NULL: none */
  const char *body;
} answer_t;

typedef struct fake_http {
  const answer_t *script;
  size_t n;
  int requests;
  char auth[256], accept[64], interval[32], agent[64], path[64];
} fake_http_t;

static void copy_header(const mg_http_sreq_t *req, const char *name, char *out, size_t n) {
  const char *v = mg_http_sreq_header(req, name);
  snprintf(out, n, "%s", v ? v : "");
}

static void h_sd(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  fake_http_t *f = ud;
  const answer_t *a = &f->script[(size_t)f->requests < f->n ? (size_t)f->requests : f->n - 1];
  f->requests++;
  copy_header(req, "authorization", f->auth, sizeof f->auth);
  copy_header(req, "accept", f->accept, sizeof f->accept);
  copy_header(req, "x-prometheus-refresh-interval-seconds", f->interval, sizeof f->interval);
  copy_header(req, "user-agent", f->agent, sizeof f->agent);
  snprintf(f->path, sizeof f->path, "%.*s?%.*s", (int)req->path.n, req->path.p, (int)req->query.n, req->query.p);
  resp->status = a->status;
  if (a->content_type) mg_http_sresp_header(resp, "Content-Type", a->content_type);
  mg_buf_append_str(&resp->body, a->body);
}

typedef struct http_env {
  uv_loop_t loop;
  mg_http_server_t *srv;
  mg_http_client_t *cli;
  char url[128];
} http_env_t;

static bool http_env_init(http_env_t *e, fake_http_t *f) {
  uv_loop_init(&e->loop);
  int err = 0;
  e->srv = mg_http_server_new(&e->loop, "127.0.0.1:0", NULL, &err);
  if (!e->srv) return false;
  mg_http_server_route(e->srv, "GET", "/sd", h_sd, f);
  e->cli = mg_http_client_new(&e->loop, NULL);
  snprintf(e->url, sizeof e->url, "http://127.0.0.1:%d/sd?x=1", mg_http_server_port(e->srv));
  return e->cli != NULL;
}

static void http_env_finish(http_env_t *e) {
  mg_http_client_free(e->cli);
  mg_http_server_free(e->srv);
  finish_loop(&e->loop);
}

MG_TEST(http_refreshes_and_failures) {
  static const answer_t script[] = {
      {200, "application/json", "[{\"targets\": [\"10.0.0.1:9100\"], \"labels\": {\"team\": \"a\"}}]"},
      {200, "application/json; charset=utf-8", "[]"},
      {200, "application/json", "[{\"targets\": "},           /* bad JSON: logged */
      {200, "application/json", "[{\"targets\": "},           /* the same error: not logged again */
      {500, "application/json", "[]"},                        /* another error: logged */
      {200, "text/plain", "[]"},                              /* wrong content type */
      {200, NULL, "[]"},                                      /* none */
      {200, "application/json", "[{\"labels\": {\"a.b\": \"1\"}}]"}, /* bad label name */
      {200, "application/json", "null"},                      /* null is no list */
      {200, " Application/JSON;charset=\"UTF-8\" ", "[{\"targets\": [\"10.0.0.2:9100\"]}]"},
  };
  fake_http_t f = {.script = script, .n = sizeof script / sizeof script[0]};
  http_env_t e;
  REQUIRE(http_env_init(&e, &f));
  log_capture();
  char url[160];
  snprintf(url, sizeof url, "%s", e.url);
  mg_conf_sd_t sd = sd_opts("http", "url", url, "refresh_interval", "20ms", NULL);
  put_map(&sd, "authorization", "credentials", "tok-SECRET", NULL);
  rec_t r;
  rec_init(&r);
  void *st = start(&mg_sd_http_ops, &e.loop, e.cli, &sd, &r);
  REQUIRE(st);

  run_until(&e.loop, &r.calls, 1, 5000);
  CHECK_INT(r.oks, 1);
  char want[512];
  snprintf(want, sizeof want, "10.0.0.1:9100 __meta_url=%s team=a\n", url);
  CHECK_STR(r.last.data, want);
  CHECK_STR(f.auth, "Bearer tok-SECRET");
  CHECK_STR(f.accept, "application/json");
  CHECK_STR(f.interval, "0.02");
  CHECK(strncmp(f.agent, "moongate/", 9) == 0);
  CHECK_STR(f.path, "/sd?x=1");

  run_until(&e.loop, &r.calls, 2, 5000);
  CHECK_INT(r.oks, 2);
  CHECK_STR(r.last.data, "");

  run_until(&e.loop, &r.calls, 9, 5000);
  CHECK_INT(r.oks, 2);
  CHECK_INT(r.fails, 7);
  /* Seven failures, six distinct messages: one warning each. */
  CHECK_INT(count_log("event=refresh_failed"), 6);
  CHECK_INT(count_log("byte 13: expected a value"), 1);
  CHECK_INT(count_log("server answered HTTP 500"), 1);
  CHECK_INT(count_log("unsupported content type \\\"text/plain\\\""), 1);
  CHECK_INT(count_log("no Content-Type"), 1);
  CHECK_INT(count_log("invalid label name"), 1);
  CHECK_INT(count_log("expected an array"), 1);

  run_until(&e.loop, &r.calls, 10, 5000);
  CHECK_INT(r.oks, 3);
  snprintf(want, sizeof want, "10.0.0.2:9100 __meta_url=%s\n", url);
  CHECK_STR(r.last.data, want);
  CHECK_INT(count_log("event=refresh_recovered"), 1);

  /* The query (it may hold a token) and the bearer token stay out of logs. */
  CHECK_INT(count_log("SECRET"), 0);
  CHECK_INT(count_log("x=1"), 0);
  CHECK(count_log("url=http://127.0.0.1:") > 0);

  mg_sd_http_ops.stop(st);
  int calls = r.calls;
  http_env_finish(&e);
  CHECK_INT(r.calls, calls); /* never after stop */
  log_release();
  mg_buf_cleanup(&r.last);
}

MG_TEST(http_basic_auth_from_file) {
  static const answer_t script[] = {{200, "application/json", "[]"}};
  fake_http_t f = {.script = script, .n = 1};
  http_env_t e;
  REQUIRE(http_env_init(&e, &f));
  char path[] = "/tmp/mg_sd_pw_XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, "pass\n", 5) == 5);
  close(fd);
  mg_conf_sd_t sd = sd_opts("http", "url", e.url, NULL);
  put_map(&sd, "basic_auth", "username", "user", "password_file", path, NULL);
  rec_t r;
  rec_init(&r);
  void *st = start(&mg_sd_http_ops, &e.loop, e.cli, &sd, &r);
  REQUIRE(st);
  run_until(&e.loop, &r.calls, 1, 5000);
  CHECK_INT(r.oks, 1);
  CHECK_STR(f.auth, "Basic dXNlcjpwYXNz"); /* user:pass */
  CHECK_STR(f.interval, "60");
  mg_sd_http_ops.stop(st);
  http_env_finish(&e);
  unlink(path);
  mg_buf_cleanup(&r.last);
}

/* A server that accepts and never answers: stop must cancel the request. */
static void on_silent_conn(uv_stream_t *srv, int status) {
  if (status < 0) return;
  uv_tcp_t *c = mg_calloc(1, sizeof *c);
  uv_tcp_init(srv->loop, c);
  if (uv_accept(srv, (uv_stream_t *)c) != 0) uv_close((uv_handle_t *)c, (uv_close_cb)mg_free);
  else srv->data = c; /* one connection is enough */
}

MG_TEST(http_stop_cancels_and_never_reports) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_tcp_t srv;
  uv_tcp_init(&loop, &srv);
  srv.data = NULL;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", 0, &sa);
  REQUIRE(uv_tcp_bind(&srv, (const struct sockaddr *)&sa, 0) == 0);
  REQUIRE(uv_listen((uv_stream_t *)&srv, 8, on_silent_conn) == 0);
  struct sockaddr_in bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&srv, (struct sockaddr *)&bound, &len);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/sd", ntohs(bound.sin_port));
  mg_http_client_t *cli = mg_http_client_new(&loop, NULL);

  /* Stopped before the first refresh ran. */
  rec_t r;
  rec_init(&r);
  mg_conf_sd_t sd = sd_opts("http", "url", url, NULL);
  void *st = start(&mg_sd_http_ops, &loop, cli, &sd, &r);
  mg_sd_http_ops.stop(st);
  uv_run(&loop, UV_RUN_NOWAIT);

  /* Stopped with its request waiting for an answer. */
  sd = sd_opts("http", "url", url, NULL);
  st = start(&mg_sd_http_ops, &loop, cli, &sd, &r);
  int connected = 0;
  for (int i = 0; i < 200 && !srv.data; i++) run_until(&loop, &connected, 1, 10);
  CHECK(srv.data != NULL);
  mg_sd_http_ops.stop(st);
  for (int i = 0; i < 5; i++) uv_run(&loop, UV_RUN_NOWAIT);
  CHECK_INT(r.calls, 0);

  mg_http_client_free(cli);
  if (srv.data) uv_close((uv_handle_t *)srv.data, (uv_close_cb)mg_free);
  uv_close((uv_handle_t *)&srv, NULL);
  finish_loop(&loop);
  CHECK_INT(r.calls, 0);
  mg_buf_cleanup(&r.last);
}

MG_TEST(http_start_refuses_bad_options_and_unreadable_files) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  mg_sd_env_t env = {.loop = &loop};
  rec_t r;
  rec_init(&r);
  void *st = (void *)1;
  mg_conf_sd_t sd = sd_opts("http", "url", "gopher://x/", NULL);
  CHECK_INT(mg_sd_http_ops.start(&env, &sd, on_update, &r, &st), MG_ECONFIG);
  CHECK(st == NULL);
  mg_conf_val_free(sd.opts);
  sd = sd_opts("http", "url", "http://x/", "bearer_token_file", "/nonexistent/mg-token", NULL);
  CHECK_INT(mg_sd_http_ops.start(&env, &sd, on_update, &r, &st), MG_EIO);
  CHECK(st == NULL);
  mg_conf_val_free(sd.opts);
  finish_loop(&loop);
  CHECK_INT(r.calls, 0);
  mg_buf_cleanup(&r.last);
}

/* One self-signed certificate for "sd.test" that is its own CA: the
 * server's certificate, the client's, and the trust anchor of both. */
static int make_pki(char *dir, char *cert, char *key, size_t n) {
  snprintf(dir, n, "/tmp/mg_sd_tls_XXXXXX");
  if (!mkdtemp(dir)) return -1;
  snprintf(cert, n, "%s/cert.pem", dir);
  snprintf(key, n, "%s/key.pem", dir);
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  int ok = k && x;
  if (ok) {
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, k);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"sd.test", -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    const int nids[] = {NID_basic_constraints, NID_subject_alt_name};
    const char *vals[] = {"critical,CA:TRUE", "DNS:sd.test"};
    for (int i = 0; i < 2 && ok; i++) {
      X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nids[i], vals[i]);
      ok = e && X509_add_ext(x, e, -1);
      X509_EXTENSION_free(e);
    }
    ok = ok && X509_sign(x, k, EVP_sha256());
  }
  FILE *fc = ok ? fopen(cert, "w") : NULL, *fk = ok ? fopen(key, "w") : NULL;
  ok = fc && fk && PEM_write_X509(fc, x) && PEM_write_PrivateKey(fk, k, NULL, NULL, 0, NULL, NULL);
  if (fc) fclose(fc);
  if (fk) fclose(fk);
  X509_free(x);
  EVP_PKEY_free(k);
  return ok ? 0 : -1;
}

MG_TEST(http_tls_options) {
  static const answer_t script[] = {{200, "application/json", "[{\"targets\": [\"a:1\"]}]"}};
  fake_http_t f = {.script = script, .n = 1};
  char dir[64], cert[96], key[96];
  REQUIRE(make_pki(dir, cert, key, sizeof cert) == 0);
  http_env_t e;
  REQUIRE(http_env_init(&e, &f));
  REQUIRE(mg_http_server_tls(e.srv, cert, key, cert) == 0); /* clients must show a certificate */
  char url[128];
  snprintf(url, sizeof url, "https://127.0.0.1:%d/sd", mg_http_server_port(e.srv));
  static const struct {
    const char *ca, *server_name, *insecure;
    bool client_cert, ok;
  } cases[] = {
      {"ca", "sd.test", NULL, true, true},  /* verified against ca_file, name from server_name */
      {NULL, "sd.test", NULL, true, false}, /* not in the system store */
      {"ca", NULL, NULL, true, false},      /* the certificate is not for 127.0.0.1 */
      {NULL, NULL, "true", true, true},     /* insecure_skip_verify */
      {"ca", "sd.test", NULL, false, false}, /* no client certificate */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mg_conf_sd_t sd = sd_opts("http", "url", url, NULL);
    mg_conf_val_t *tls = mg_conf_val_new(MG_CONF_VAL_MAP, NULL, 1);
    if (cases[i].ca) mg_conf_val_put(tls, "ca_file", mg_conf_val_new(MG_CONF_VAL_SCALAR, cert, 1));
    if (cases[i].server_name)
      mg_conf_val_put(tls, "server_name", mg_conf_val_new(MG_CONF_VAL_SCALAR, cases[i].server_name, 1));
    if (cases[i].insecure)
      mg_conf_val_put(tls, "insecure_skip_verify", mg_conf_val_new(MG_CONF_VAL_SCALAR, cases[i].insecure, 1));
    if (cases[i].client_cert) {
      mg_conf_val_put(tls, "cert_file", mg_conf_val_new(MG_CONF_VAL_SCALAR, cert, 1));
      mg_conf_val_put(tls, "key_file", mg_conf_val_new(MG_CONF_VAL_SCALAR, key, 1));
    }
    mg_conf_val_put(sd.opts, "tls_config", tls);
    rec_t r;
    rec_init(&r);
    void *st = start(&mg_sd_http_ops, &e.loop, e.cli, &sd, &r);
    if (!st) continue;
    run_until(&e.loop, &r.calls, 1, 5000);
    if (r.oks != (cases[i].ok ? 1 : 0) || r.calls != 1) MG_FAIL_("case %zu: calls=%d oks=%d", i, r.calls, r.oks);
    mg_sd_http_ops.stop(st);
    mg_buf_cleanup(&r.last);
  }
  http_env_finish(&e);
  unlink(cert);
  unlink(key);
  rmdir(dir);
}

/* ------------------------------------------------------------ fake DNS */

enum { QA = 1, QNS = 2, QCNAME = 5, QMX = 15, QAAAA = 28, QSRV = 33 };

typedef struct rr {
  const char *name; /* owner, lower case, no final dot */
  int type;
  const char *data; /* A/AAAA: address; NS/CNAME: name; MX: "pref name"; SRV: "prio weight port target" */
} rr_t;

/* Names not in the table get NXDOMAIN; this one is truncated over UDP
 * and answered over TCP. */
#define NX_NAME "nx.example.test"
#define TRUNC_NAME "_trunc._tcp.example.test"

typedef struct fake_dns {
  uv_udp_t udp;
  uv_tcp_t tcp;
  int port;
  const rr_t *table;
  size_t n;
  const char *servfail; /* a name answered with SERVFAIL ("*": every name) */
  const char *garbage;  /* a name answered with a record cut short */
  int queries, tcp_queries;
} fake_dns_t;

/* Read a question name at msg[*off] into out (dotted, lower case). */
static bool read_qname(const unsigned char *msg, size_t len, size_t *off, char *out, size_t outsz) {
  size_t o = 0, i = *off;
  while (i < len && msg[i]) {
    size_t l = msg[i++];
    if (l > 63 || i + l > len || o + l + 2 > outsz) return false;
    if (o) out[o++] = '.';
    for (size_t k = 0; k < l; k++) {
      char c = (char)msg[i + k];
      out[o++] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
    }
    i += l;
  }
  if (i >= len) return false;
  out[o] = '\0';
  *off = i + 1;
  return true;
}

static void put16(mg_buf_t *b, unsigned v) {
  mg_buf_append_byte(b, (unsigned char)(v >> 8));
  mg_buf_append_byte(b, (unsigned char)v);
}

static void put_name(mg_buf_t *b, const char *name) {
  while (*name) {
    size_t l = strcspn(name, ".");
    mg_buf_append_byte(b, (unsigned char)l);
    mg_buf_append(b, name, l);
    name += l;
    if (*name == '.') name++;
  }
  mg_buf_append_byte(b, 0);
}

/* owner NULL: the question's name (a compression pointer). */
static void put_rr(mg_buf_t *b, const rr_t *r, const char *owner) {
  if (owner) put_name(b, owner);
  else put16(b, 0xC00C);
  put16(b, (unsigned)r->type);
  put16(b, 1);
  put16(b, 0);
  put16(b, 60); /* TTL */
  size_t at = b->len;
  put16(b, 0); /* RDLENGTH, patched below */
  unsigned char addr[16];
  unsigned a, w, p;
  char target[256];
  switch (r->type) {
  case QA: inet_pton(AF_INET, r->data, addr), mg_buf_append(b, addr, 4); break;
  case QAAAA: inet_pton(AF_INET6, r->data, addr), mg_buf_append(b, addr, 16); break;
  case QNS:
  case QCNAME: put_name(b, r->data); break;
  case QMX:
    sscanf(r->data, "%u %255s", &a, target);
    put16(b, a);
    put_name(b, target);
    break;
  case QSRV:
    sscanf(r->data, "%u %u %u %255s", &a, &w, &p, target);
    put16(b, a), put16(b, w), put16(b, p);
    put_name(b, target);
    break;
  }
  size_t rdlen = b->len - at - 2;
  b->data[at] = (char)(rdlen >> 8);
  b->data[at + 1] = (char)rdlen;
}

/* Build the answer to query q; tcp: a truncated name gets its records. */
static void dns_answer(fake_dns_t *d, const unsigned char *q, size_t len, bool tcp, mg_buf_t *out) {
  size_t off = 12;
  char name[256];
  if (len < 12 || !read_qname(q, len, &off, name, sizeof name) || off + 4 > len) return;
  unsigned qtype = (unsigned)q[off] << 8 | q[off + 1];
  size_t qend = off + 4;
  unsigned rcode = 0, flags = 0x8180; /* QR, RD, RA */
  bool garbage = d->garbage && !strcmp(name, d->garbage);
  if (d->servfail && (!strcmp(d->servfail, "*") || !strcmp(name, d->servfail))) rcode = 2;
  /* The records at the name (of the type asked, or a CNAME), then the
   * records of the type at a CNAME's target (one level, as a resolver
   * would add them). */
  const rr_t *rrs[32];
  const char *owners[32];
  size_t an = 0;
  bool known = false;
  for (size_t i = 0; i < d->n && an < 32; i++) {
    const rr_t *r = &d->table[i];
    if (strcmp(r->name, name)) continue;
    known = true;
    if ((unsigned)r->type != qtype && r->type != QCNAME) continue;
    rrs[an] = r, owners[an++] = NULL;
    for (size_t k = 0; r->type == QCNAME && k < d->n && an < 32; k++)
      if (!strcmp(d->table[k].name, r->data) && (unsigned)d->table[k].type == qtype)
        rrs[an] = &d->table[k], owners[an++] = r->data;
  }
  if (!known && !rcode && !garbage) rcode = 3; /* NXDOMAIN */
  bool truncated = !strcmp(name, TRUNC_NAME) && !tcp;
  if (truncated) flags |= 0x0200, an = 0;
  mg_buf_append(out, q, 2); /* id */
  put16(out, flags | rcode);
  put16(out, 1);
  put16(out, garbage ? 1 : (unsigned)(rcode ? 0 : an));
  put16(out, 0);
  put16(out, 0);
  mg_buf_append(out, q + 12, qend - 12); /* the question */
  if (garbage) {
    mg_buf_append(out, "\xc0\x0c\x00\x21\x00\x01\x00\x00\x00\x3c\x00\x40\x01", 13); /* RDLENGTH past the end */
    return;
  }
  if (rcode) return;
  for (size_t i = 0; i < an; i++) put_rr(out, rrs[i], owners[i]);
}

static void on_udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  static char slab[4096];
  (void)h, (void)hint;
  *buf = uv_buf_init(slab, sizeof slab);
}

typedef struct udp_send {
  uv_udp_send_t req;
  mg_buf_t b;
} udp_send_t;

static void on_udp_sent(uv_udp_send_t *req, int status) {
  udp_send_t *s = (udp_send_t *)req;
  (void)status;
  mg_buf_cleanup(&s->b);
  mg_free(s);
}

static void on_udp_read(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from, unsigned flags) {
  fake_dns_t *d = h->data;
  (void)flags;
  if (n <= 0 || !from) return;
  d->queries++;
  udp_send_t *s = mg_calloc(1, sizeof *s);
  mg_buf_init(&s->b, 0);
  dns_answer(d, (const unsigned char *)buf->base, (size_t)n, false, &s->b);
  uv_buf_t out = uv_buf_init(s->b.data, (unsigned)s->b.len);
  if (!s->b.len || uv_udp_send(&s->req, h, &out, 1, from, on_udp_sent) != 0) {
    mg_buf_cleanup(&s->b);
    mg_free(s);
  }
}

/* TCP: one query per connection (2-byte length prefix each way). */
typedef struct tcp_conn {
  uv_tcp_t h;
  fake_dns_t *d;
  mg_buf_t in, out;
  uv_write_t w;
} tcp_conn_t;

static void on_tcp_closed(uv_handle_t *h) {
  tcp_conn_t *c = (tcp_conn_t *)h;
  mg_buf_cleanup(&c->in);
  mg_buf_cleanup(&c->out);
  mg_free(c);
}

static void on_tcp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  static char slab[4096];
  (void)h, (void)hint;
  *buf = uv_buf_init(slab, sizeof slab);
}

static void on_tcp_written(uv_write_t *w, int status) {
  (void)status;
  uv_close((uv_handle_t *)w->handle, on_tcp_closed);
}

static void on_tcp_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  tcp_conn_t *c = (tcp_conn_t *)s;
  if (n < 0) {
    uv_close((uv_handle_t *)s, on_tcp_closed);
    return;
  }
  mg_buf_append(&c->in, buf->base, (size_t)n);
  if (c->in.len < 2) return;
  size_t qlen = (size_t)(unsigned char)c->in.data[0] << 8 | (unsigned char)c->in.data[1];
  if (c->in.len < 2 + qlen) return;
  uv_read_stop(s);
  c->d->tcp_queries++;
  mg_buf_t a;
  mg_buf_init(&a, 0);
  dns_answer(c->d, (const unsigned char *)c->in.data + 2, qlen, true, &a);
  put16(&c->out, (unsigned)a.len);
  mg_buf_append(&c->out, a.data, a.len);
  mg_buf_cleanup(&a);
  uv_buf_t out = uv_buf_init(c->out.data, (unsigned)c->out.len);
  if (uv_write(&c->w, s, &out, 1, on_tcp_written) != 0) uv_close((uv_handle_t *)s, on_tcp_closed);
}

static void on_tcp_conn(uv_stream_t *srv, int status) {
  if (status < 0) return;
  tcp_conn_t *c = mg_calloc(1, sizeof *c);
  c->d = srv->data;
  mg_buf_init(&c->in, 0);
  mg_buf_init(&c->out, 0);
  uv_tcp_init(srv->loop, &c->h);
  if (uv_accept(srv, (uv_stream_t *)&c->h) != 0 || uv_read_start((uv_stream_t *)&c->h, on_tcp_alloc, on_tcp_read) != 0)
    uv_close((uv_handle_t *)&c->h, on_tcp_closed);
}

/* UDP and TCP on the same random port of a loopback address (retried if
 * TCP's is taken). False if the address cannot be bound (no IPv6). */
static bool fake_dns_start(uv_loop_t *loop, fake_dns_t *d, const char *ip) {
  for (int attempt = 0; attempt < 20; attempt++) {
    struct sockaddr_storage sa;
    if (strchr(ip, ':')) uv_ip6_addr(ip, 0, (struct sockaddr_in6 *)&sa);
    else uv_ip4_addr(ip, 0, (struct sockaddr_in *)&sa);
    uv_udp_init(loop, &d->udp);
    d->udp.data = d;
    uv_tcp_init(loop, &d->tcp);
    d->tcp.data = d;
    struct sockaddr_storage bound;
    int len = sizeof bound;
    if (uv_udp_bind(&d->udp, (const struct sockaddr *)&sa, 0) == 0 &&
        uv_udp_getsockname(&d->udp, (struct sockaddr *)&bound, &len) == 0 &&
        uv_tcp_bind(&d->tcp, (const struct sockaddr *)&bound, 0) == 0 &&
        uv_listen((uv_stream_t *)&d->tcp, 8, on_tcp_conn) == 0) {
      d->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                  : ((struct sockaddr_in *)&bound)->sin_port);
      return uv_udp_recv_start(&d->udp, on_udp_alloc, on_udp_read) == 0;
    }
    uv_close((uv_handle_t *)&d->udp, NULL);
    uv_close((uv_handle_t *)&d->tcp, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (uv_udp_init(loop, &d->udp) == 0) { /* is the address usable at all? */
      int rc = uv_udp_bind(&d->udp, (const struct sockaddr *)&sa, 0);
      uv_close((uv_handle_t *)&d->udp, NULL);
      uv_run(loop, UV_RUN_NOWAIT);
      if (rc != 0) return false;
    }
  }
  return false;
}

static void fake_dns_stop(fake_dns_t *d) {
  uv_close((uv_handle_t *)&d->udp, NULL);
  uv_close((uv_handle_t *)&d->tcp, NULL);
}

/* ------------------------------------------------------------ dns_sd tests */

static const rr_t zone[] = {
    {"_prom._tcp.example.test", QSRV, "10 5 9100 web1.example.test"},
    {"_prom._tcp.example.test", QSRV, "20 5 9101 web2.example.test"},
    {"_none._tcp.example.test", QSRV, "0 0 0 ."},
    {TRUNC_NAME, QSRV, "1 1 9200 big.example.test"},
    {"hosts.example.test", QA, "10.1.0.1"},
    {"hosts.example.test", QA, "10.1.0.2"},
    {"hosts.example.test", QAAAA, "2001:db8::5"},
    {"hosts.example.test", QAAAA, "::1"},
    {"alias.example.test", QCNAME, "canonical.example.test"},
    {"canonical.example.test", QA, "10.1.0.3"},
    {"onlycname.example.test", QCNAME, "elsewhere.example.test"},
    {"example.test", QMX, "10 mx1.example.test"},
    {"example.test", QMX, "20 mx2.example.test"},
    {"example.test", QNS, "ns1.example.test"},
    {"example.test", QNS, "ns2.example.test"},
};

typedef struct dns_env {
  uv_loop_t loop;
  fake_dns_t fake;
  char ns[32];
} dns_env_t;

static bool dns_env_init_at(dns_env_t *e, const rr_t *table, size_t n, const char *ip) {
  uv_loop_init(&e->loop);
  memset(&e->fake, 0, sizeof e->fake);
  e->fake.table = table;
  e->fake.n = n;
  if (!fake_dns_start(&e->loop, &e->fake, ip)) {
    finish_loop(&e->loop);
    return false;
  }
  snprintf(e->ns, sizeof e->ns, strchr(ip, ':') ? "[[%s]:%d]" : "[%s:%d]", ip, e->fake.port);
  return true;
}

static bool dns_env_init(dns_env_t *e, const rr_t *table, size_t n) {
  return dns_env_init_at(e, table, n, "127.0.0.1");
}

static void dns_env_finish(dns_env_t *e) {
  fake_dns_stop(&e->fake);
  finish_loop(&e->loop);
}

/* One round of a provider over the fake. */
static void dns_round(dns_env_t *e, const char *names, const char *type, const char *port, rec_t *r) {
  mg_conf_sd_t sd = port ? sd_opts("dns", "names", names, "type", type, "port", port, "nameservers", e->ns, NULL)
                         : sd_opts("dns", "names", names, "type", type, "nameservers", e->ns, NULL);
  void *st = start(&mg_sd_dns_ops, &e->loop, NULL, &sd, r);
  if (!st) return;
  run_until(&e->loop, &r->calls, 1, 10000);
  CHECK_INT(r->calls, 1);
  mg_sd_dns_ops.stop(st);
  uv_run(&e->loop, UV_RUN_NOWAIT);
}

MG_TEST(dns_every_record_type) {
  dns_env_t e;
  REQUIRE(dns_env_init(&e, zone, sizeof zone / sizeof zone[0]));
  static const struct {
    const char *names, *type, *port, *want; /* want NULL: the round fails */
  } cases[] = {
      {"[_prom._tcp.example.test]", "SRV", NULL,
       "web1.example.test:9100 __meta_dns_name=_prom._tcp.example.test "
       "__meta_dns_srv_record_port=9100 __meta_dns_srv_record_target=web1.example.test.\n"
       "web2.example.test:9101 __meta_dns_name=_prom._tcp.example.test "
       "__meta_dns_srv_record_port=9101 __meta_dns_srv_record_target=web2.example.test.\n"},
      {"[hosts.example.test]", "a", "8080",
       "10.1.0.1:8080 __meta_dns_name=hosts.example.test\n10.1.0.2:8080 __meta_dns_name=hosts.example.test\n"},
      {"[hosts.example.test]", "AAAA", "8080",
       "[2001:db8::5]:8080 __meta_dns_name=hosts.example.test\n[::1]:8080 __meta_dns_name=hosts.example.test\n"},
      {"[example.test]", "MX", "25",
       "mx1.example.test:25 __meta_dns_mx_record_target=mx1.example.test. __meta_dns_name=example.test\n"
       "mx2.example.test:25 __meta_dns_mx_record_target=mx2.example.test. __meta_dns_name=example.test\n"},
      {"[example.test]", "NS", "9100",
       "ns1.example.test:9100 __meta_dns_name=example.test __meta_dns_ns_record_target=ns1.example.test.\n"
       "ns2.example.test:9100 __meta_dns_name=example.test __meta_dns_ns_record_target=ns2.example.test.\n"},
      /* A CNAME in an A answer is followed and gives no target itself. */
      {"[alias.example.test]", "A", "1", "10.1.0.3:1 __meta_dns_name=alias.example.test\n"},
      /* Names without such records, or that do not exist: no targets. */
      {"[onlycname.example.test]", "A", "1", ""},
      {"[hosts.example.test]", "MX", "25", ""},
      {"[" NX_NAME "]", "SRV", NULL, ""},
      {"[_none._tcp.example.test]", "SRV", NULL, ""},
      /* A truncated UDP answer is asked again over TCP. */
      {"[" TRUNC_NAME "]", "SRV", NULL,
       "big.example.test:9200 __meta_dns_name=" TRUNC_NAME
       " __meta_dns_srv_record_port=9200 __meta_dns_srv_record_target=big.example.test.\n"},
      /* Several names: one list, in the order of the names. */
      {"[example.test,hosts.example.test]", "A", "7",
       "10.1.0.1:7 __meta_dns_name=hosts.example.test\n10.1.0.2:7 __meta_dns_name=hosts.example.test\n"},
      /* A record cut short, and SERVFAIL: the lookup failed. */
      {"[garbage.example.test]", "SRV", NULL, NULL},
      {"[hosts.example.test]", "A", "1", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    rec_t r;
    rec_init(&r);
    e.fake.garbage = "garbage.example.test";
    e.fake.servfail = i == sizeof cases / sizeof cases[0] - 1 ? "*" : NULL;
    dns_round(&e, cases[i].names, cases[i].type, cases[i].port, &r);
    if (r.oks != (cases[i].want != NULL)) MG_FAIL_("case %zu: oks=%d", i, r.oks);
    if (cases[i].want && strcmp(r.last.data, cases[i].want) != 0)
      MG_FAIL_("case %zu:\n%s!=\n%s", i, r.last.data, cases[i].want);
    mg_buf_cleanup(&r.last);
  }
  CHECK_INT(e.fake.tcp_queries, 1);
  dns_env_finish(&e);
}

MG_TEST(dns_ipv6_nameserver) {
  dns_env_t e;
  if (!dns_env_init_at(&e, zone, sizeof zone / sizeof zone[0], "::1")) {
    printf("skip dns_ipv6_nameserver: no IPv6 loopback\n");
    return;
  }
  rec_t r;
  rec_init(&r);
  dns_round(&e, "[hosts.example.test]", "A", "9", &r);
  CHECK_INT(r.oks, 1);
  CHECK_STR(r.last.data,
            "10.1.0.1:9 __meta_dns_name=hosts.example.test\n10.1.0.2:9 __meta_dns_name=hosts.example.test\n");
  CHECK(e.fake.queries >= 1);
  mg_buf_cleanup(&r.last);
  dns_env_finish(&e);
}

MG_TEST(dns_failed_names_keep_their_targets) {
  /* The table changes under the provider between rounds (each change is
   * made right after a report, before the next round starts). */
  static rr_t table[] = {
      {"a.example.test", QA, "10.2.0.1"},
      {"b.example.test", QA, "10.2.0.2"},
  };
  dns_env_t e;
  REQUIRE(dns_env_init(&e, table, 2));
  log_capture();
  double fails0 = dns_lookup_failures(), lookups0 = dns_lookups();
  mg_conf_sd_t sd = sd_opts("dns", "names", "[a.example.test,b.example.test]", "type", "A", "port", "80",
                            "refresh_interval", "20ms", "nameservers", e.ns, NULL);
  rec_t r;
  rec_init(&r);
  void *st = start(&mg_sd_dns_ops, &e.loop, NULL, &sd, &r);
  REQUIRE(st);
  run_until(&e.loop, &r.calls, 1, 10000);
  CHECK_STR(r.last.data, "10.2.0.1:80 __meta_dns_name=a.example.test\n10.2.0.2:80 __meta_dns_name=b.example.test\n");

  /* b fails twice with SERVFAIL: it keeps its target, a follows the DNS;
   * the failure is counted each time and logged once. */
  table[0].data = "10.2.0.9";
  e.fake.servfail = "b.example.test";
  run_until(&e.loop, &r.calls, 3, 10000);
  CHECK_INT(r.oks, 3);
  CHECK_STR(r.last.data, "10.2.0.9:80 __meta_dns_name=a.example.test\n10.2.0.2:80 __meta_dns_name=b.example.test\n");
  CHECK_DBL(dns_lookup_failures() - fails0, 2);
  CHECK_DBL(dns_lookups() - lookups0, 6);
  CHECK_INT(count_log("event=lookup_failed"), 1);
  CHECK_INT(count_log("name=b.example.test"), 1);

  /* Another error is logged again. */
  e.fake.servfail = NULL;
  e.fake.garbage = "b.example.test";
  run_until(&e.loop, &r.calls, 4, 10000);
  CHECK_INT(r.oks, 4);
  CHECK_STR(r.last.data, "10.2.0.9:80 __meta_dns_name=a.example.test\n10.2.0.2:80 __meta_dns_name=b.example.test\n");
  CHECK_INT(count_log("event=lookup_failed"), 2);

  /* Every name failing is a failed refresh. */
  e.fake.garbage = NULL;
  e.fake.servfail = "*";
  run_until(&e.loop, &r.calls, 5, 10000);
  CHECK_INT(r.fails, 1);
  CHECK_INT(r.oks, 4);
  CHECK_DBL(dns_lookup_failures() - fails0, 5);

  /* Back to health; b is gone from the DNS (NXDOMAIN): its target goes. */
  e.fake.servfail = NULL;
  table[1].name = "other.example.test";
  run_until(&e.loop, &r.calls, 6, 10000);
  CHECK_INT(r.oks, 5);
  CHECK_STR(r.last.data, "10.2.0.9:80 __meta_dns_name=a.example.test\n");
  CHECK_INT(count_log("event=lookup_recovered"), 2);

  mg_sd_dns_ops.stop(st);
  int calls = r.calls;
  dns_env_finish(&e);
  CHECK_INT(r.calls, calls);
  log_release();
  mg_buf_cleanup(&r.last);
}

MG_TEST(dns_check_options) {
  char why[400];
  mg_conf_sd_t sd = sd_opts("dns", "names", "[_x._tcp.a.test,b.test]", NULL);
  CHECK_INT(check(&mg_sd_dns_ops, &sd, why, sizeof why), 0);
  sd = sd_opts("dns", "names", "[a.test]", "type", "aaaa", "port", "9100", "refresh_interval", "1m",
               "nameservers", "[10.0.0.2,10.0.0.3:5353,[::1]:53,::1,[fe80::1]]", NULL);
  CHECK_INT(check(&mg_sd_dns_ops, &sd, why, sizeof why), 0);
  static const struct {
    const char *k1, *v1, *k2, *v2, *why;
  } bad[] = {
      {"type", "A", NULL, NULL, "dns_sd_configs: names must list at least one name"},
      {"names", "a.test", NULL, NULL, "dns_sd_configs: names must be a list"},
      {"names", "[a test]", NULL, NULL,
       "dns_sd_configs: names[0] must be a DNS name (printable, no spaces, at most 253 bytes)"},
      {"names", "[a.test]", "type", "TXT", "dns_sd_configs: type must be SRV, A, AAAA, MX or NS"},
      {"names", "[a.test]", "type", "A", "dns_sd_configs: port is required for every record type except SRV"},
      {"names", "[a.test]", "type", "MX", "dns_sd_configs: port is required for every record type except SRV"},
      {"names", "[a.test]", "port", "0", "dns_sd_configs: port must be a number from 1 to 65535"},
      {"names", "[a.test]", "port", "65536", "dns_sd_configs: port must be a number from 1 to 65535"},
      {"names", "[a.test]", "refresh_interval", "0s",
       "dns_sd_configs: refresh_interval must be a positive duration like 30s"},
      {"names", "[a.test]", "nameservers", "[dns.google]",
       "dns_sd_configs: nameservers[0] must be an IP address with an optional port: 10.0.0.2:53, [::1]:53"},
      {"names", "[a.test]", "nameservers", "[1.2.3.4:0]",
       "dns_sd_configs: nameservers[0] must be an IP address with an optional port: 10.0.0.2:53, [::1]:53"},
      {"names", "[a.test]", "nameservers", "10.0.0.1", "dns_sd_configs: nameservers must be a non-empty list"},
      {"names", "[a.test]", "server", "10.0.0.1", "dns_sd_configs: server is not supported by this moongate version"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    sd = sd_opts("dns", bad[i].k1, bad[i].v1, bad[i].k2, bad[i].v2, NULL);
    CHECK_INT(check(&mg_sd_dns_ops, &sd, why, sizeof why), MG_ECONFIG);
    CHECK_STR(why, bad[i].why);
  }
}

MG_TEST(dns_stop_while_waiting) {
  /* A server that never answers: the lookup is pending when stop runs. */
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_udp_t mute;
  uv_udp_init(&loop, &mute);
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", 0, &sa);
  REQUIRE(uv_udp_bind(&mute, (const struct sockaddr *)&sa, 0) == 0);
  struct sockaddr_in bound;
  int len = sizeof bound;
  uv_udp_getsockname(&mute, (struct sockaddr *)&bound, &len);
  char ns[32];
  snprintf(ns, sizeof ns, "[127.0.0.1:%d]", ntohs(bound.sin_port));
  rec_t r;
  rec_init(&r);
  mg_conf_sd_t sd = sd_opts("dns", "names", "[a.test]", "nameservers", ns, NULL);
  void *st = start(&mg_sd_dns_ops, &loop, NULL, &sd, &r);
  REQUIRE(st);
  int never = 0;
  run_until(&loop, &never, 1, 100);
  mg_sd_dns_ops.stop(st);
  uv_close((uv_handle_t *)&mute, NULL);
  finish_loop(&loop);
  CHECK_INT(r.calls, 0);
  mg_buf_cleanup(&r.last);
}

MG_TEST(dns_start_fails_cleanly) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  mg_sd_env_t env = {.loop = &loop};
  rec_t r;
  rec_init(&r);
  void *st = (void *)1;
  mg_conf_sd_t sd = sd_opts("dns", "names", "[a.test]", "type", "A", NULL);
  CHECK_INT(mg_sd_dns_ops.start(&env, &sd, on_update, &r, &st), MG_ECONFIG);
  CHECK(st == NULL);
  mg_conf_val_free(sd.opts);
  /* Out of memory at each allocation of start, then a clean stop. */
  for (int k = 1; k < 12; k++) {
    sd = sd_opts("dns", "names", "[a.test,b.test]", "nameservers", "[127.0.0.1:9]", NULL);
    mg_mem_fail_at(k);
    int rc = mg_sd_dns_ops.start(&env, &sd, on_update, &r, &st);
    mg_mem_fail_at(0);
    mg_conf_val_free(sd.opts);
    if (rc == 0) {
      mg_sd_dns_ops.stop(st);
      break;
    }
    CHECK(rc == MG_ENOMEM || rc == MG_ECONFIG);
    CHECK(st == NULL);
  }
  finish_loop(&loop);
  CHECK_INT(r.calls, 0);
  mg_buf_cleanup(&r.last);
}

MG_TEST_MAIN()
