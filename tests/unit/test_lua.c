/* Unit tests for mg_lua (VM, sandbox, budgets, errors) and mg_lua_api (the
 * moongate module: plan builders, argument checking, Destination handles),
 * driven by scripts written to a temporary directory, plus every script in
 * scripts/examples/. */
#include <dirent.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "mg_conf.h"
#include "mg_err.h"
#include "mg_log.h"
#include "mg_lua.h"
#include "mg_mem.h"
#include "mg_lua_api.h"
#include "mg_metrics.h"
#include "mg_test.h"

static char tmpdir[PATH_MAX];

static const char *tmp(void) {
  if (!tmpdir[0]) {
    snprintf(tmpdir, sizeof tmpdir, "%s/mg_test_lua_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
      perror("mkdtemp");
      exit(2);
    }
  }
  return tmpdir;
}

/* Write a script; returns its path (static buffer, one at a time). */
static const char *script(const char *name, const char *text) {
  static char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", tmp(), name);
  FILE *f = fopen(path, "wb");
  if (!f) {
    perror(path);
    exit(2);
  }
  fputs(text, f);
  fclose(f);
  return path;
}

/* Load a script expected to fail; returns the error. */
static mg_conf_error_t load_fail(const char *name, const char *text, int want_rc) {
  mg_conf_error_t err = {0};
  mg_conf_t *c = (mg_conf_t *)1;
  const char *p = script(name, text);
  int rc = mg_lua_load_conf(p, NULL, &c, &err);
  if (rc != want_rc) MG_FAIL_("%s: rc %s, want %s (msg: %s)", name, mg_err_name(rc), mg_err_name(want_rc), err.msg);
  if (c != NULL) MG_FAIL_("%s: *out not NULL on failure", name);
  unlink(p);
  return err;
}

static double lua_errors(const char *reason) {
  mg_metric_t *m = mg_metrics_counter("moongate_lua_errors_total", "", "reason", reason, NULL);
  return m ? m->v : -1;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the plan ------------------------------------------------------------ */

static const char full_script[] =
    "local mg = require \"moongate\"\n"
    "assert(mg.listen_address == \"127.0.0.1:19464\", mg.listen_address)\n"
    "assert(type(mg.version) == \"string\" and mg.version ~= \"\")\n"
    "assert(mg.env(\"MG_TEST_LUA_UNSET\") == nil)\n"
    "mg.global { scrape_interval = \"30s\", scrape_timeout = \"5s\", external_labels = { env = \"dev\", dc = \"x1\" } }\n"
    "mg.scrape {\n"
    "  job = \"node\", interval = \"15s\", timeout = \"10s\", scheme = \"https\", path = \"/probe\",\n"
    "  params = { module = { \"http_2xx\", \"tcp\" }, target = \"a\" },\n"
    "  honor_labels = true, honor_timestamps = false, enable_compression = false,\n"
    "  targets = { \"127.0.0.1:9100\", mg.listen_address,\n"
    "              { targets = { \"10.0.0.1:9100\", \"[::1]:9100\" }, labels = { rack = \"r1\" } } },\n"
    "  labels = { team = \"infra\" },\n"
    "  basic_auth = { username = \"u\", password_file = \"/run/pw\" },\n"
    "  tls = { ca_file = \"/ca.pem\", cert_file = \"/c.pem\", key_file = \"/k.pem\", server_name = \"n.example\",\n"
    "          insecure_skip_verify = true },\n"
    "  body_size_limit = \"50MB\", sample_limit = 1000, label_limit = 30, label_name_length_limit = 100,\n"
    "  label_value_length_limit = 200,\n"
    "}\n"
    "mg.scrape { job = \"min\", targets = {} }\n"
    "local prom = mg.remote_write {\n"
    "  name = \"prom\", url = mg.env(\"MG_TEST_LUA_URL\"),\n"
    "  headers = { [\"X-Scope-OrgID\"] = \"tenant-1\" },\n"
    "  bearer_token = \"s3cret\",\n"
    "  remote_timeout = \"20s\",\n"
    "  queue = { capacity = 5000, max_shards = 10, min_shards = 2, max_samples_per_send = 500,\n"
    "            batch_send_deadline = \"2s\", min_backoff = \"50ms\", max_backoff = \"10s\", retry_on_http_429 = false },\n"
    "  metadata = { send = false, send_interval = \"2m\" },\n"
    "}\n"
    "assert(prom.name == \"prom\" and prom.kind == \"remote_write\")\n"
    "assert(tostring(prom) == \"moongate.Destination(remote_write prom)\")\n"
    "assert(getmetatable(prom) == \"moongate.Destination\")\n"
    "assert(not pcall(function() prom.name = \"x\" end))\n"
    "local ws = mg.workspace { name = \"ws\", url = \"https://example.com/api/v1/write\", region = \"eu-west-1\",\n"
    "  credentials = mg.aws.assume_role { role_arn = \"arn:aws:iam::2:role/w\", external_id = \"e\",\n"
    "    duration = \"1h\", source = mg.aws.file { path = \"/c\", profile = \"p\" } } }\n"
    "local c = mg.stdout { name = \"console\" }\n"
    "local f = mg.file { path = \"/tmp/x.prom\" }\n"
    "assert(c.kind == \"stdout\" and f.kind == \"file\" and f.name == \"file\" and ws.kind == \"remote_write\")\n";

MG_TEST(full_script_builds_the_plan) {
  setenv("MG_TEST_LUA_URL", "http://127.0.0.1:9090/api/v1/write", 1);
  unsetenv("MG_TEST_LUA_UNSET");
  mg_lua_opts_t o = {.listen_address = "127.0.0.1:19464"};
  mg_conf_error_t err = {0};
  mg_conf_t *c = NULL;
  const char *p = script("full.lua", full_script);
  int rc = mg_lua_load_conf(p, &o, &c, &err);
  if (rc) fprintf(stderr, "  %s:%u: %s\n", err.file, err.line, err.msg);
  REQUIRE(rc == 0 && c);
  CHECK_INT(c->source, MG_CONF_LUA);
  CHECK_STR(c->path, p);
  CHECK(!c->frozen);
  CHECK_U64(c->scrape_interval_ms, 30000);
  CHECK_U64(c->scrape_timeout_ms, 5000);
  REQUIRE(c->external_labels.n == 2);
  CHECK_STR(c->external_labels.v[0].name, "dc"); /* maps are sorted */
  CHECK_STR(c->external_labels.v[1].value, "dev");

  REQUIRE(c->njobs == 2);
  mg_conf_job_t *j = c->jobs[0];
  CHECK_STR(j->name, "node");
  CHECK_U64(j->interval_ms, 15000);
  CHECK_U64(j->timeout_ms, 10000);
  CHECK_STR(j->scheme, "https");
  CHECK_STR(j->metrics_path, "/probe");
  REQUIRE(j->params.n == 3);
  CHECK_STR(j->params.v[0].name, "module");
  CHECK_STR(j->params.v[0].value, "http_2xx");
  CHECK_STR(j->params.v[1].value, "tcp");
  CHECK_STR(j->params.v[2].name, "target");
  CHECK(j->honor_labels);
  CHECK(!j->honor_timestamps);
  CHECK(!j->enable_compression);
  CHECK_STR(j->auth.basic_username, "u");
  CHECK_STR(j->auth.basic_password_file, "/run/pw");
  CHECK(j->auth.basic_password == NULL);
  CHECK_STR(j->tls.ca_file, "/ca.pem");
  CHECK_STR(j->tls.cert_file, "/c.pem");
  CHECK_STR(j->tls.key_file, "/k.pem");
  CHECK_STR(j->tls.server_name, "n.example");
  CHECK(j->tls.insecure_skip_verify);
  CHECK_U64(j->body_size_limit, 50ull << 20);
  CHECK_U64(j->sample_limit, 1000);
  CHECK_U64(j->label_limit, 30);
  CHECK_U64(j->label_name_length_limit, 100);
  CHECK_U64(j->label_value_length_limit, 200);
  REQUIRE(j->ntargets == 4);
  CHECK_STR(j->targets[0]->address, "127.0.0.1:9100");
  CHECK_STR(mg_kvs_get(&j->targets[0]->labels, "team"), "infra"); /* job labels go to string targets */
  CHECK_STR(j->targets[1]->address, "127.0.0.1:19464");
  CHECK_STR(j->targets[2]->address, "10.0.0.1:9100");
  CHECK_STR(mg_kvs_get(&j->targets[2]->labels, "rack"), "r1");
  CHECK(mg_kvs_get(&j->targets[2]->labels, "team") == NULL); /* groups carry their own */
  CHECK_STR(j->targets[3]->address, "[::1]:9100");
  mg_conf_job_t *m = c->jobs[1];
  CHECK_STR(m->name, "min");
  CHECK_U64(m->interval_ms, 0); /* inherited by mg_conf_finish */
  CHECK(m->scheme == NULL);
  CHECK(m->honor_timestamps);
  CHECK(m->enable_compression);
  CHECK_INT(m->ntargets, 0);

  REQUIRE(c->ndests == 4);
  mg_conf_dest_t *d = c->dests[0];
  CHECK_STR(d->name, "prom");
  CHECK_INT(d->kind, MG_DEST_REMOTE_WRITE);
  CHECK_STR(d->url, "http://127.0.0.1:9090/api/v1/write");
  CHECK_STR(mg_kvs_get(&d->headers, "X-Scope-OrgID"), "tenant-1");
  CHECK_STR(d->auth.auth_type, "Bearer");
  CHECK_STR(d->auth.credentials, "s3cret");
  CHECK_U64(d->remote_timeout_ms, 20000);
  CHECK_INT(d->queue.capacity, 5000);
  CHECK_INT(d->queue.max_shards, 10);
  CHECK_INT(d->queue.min_shards, 2);
  CHECK_INT(d->queue.max_samples_per_send, 500);
  CHECK_U64(d->queue.batch_send_deadline_ms, 2000);
  CHECK_U64(d->queue.min_backoff_ms, 50);
  CHECK_U64(d->queue.max_backoff_ms, 10000);
  CHECK(!d->queue.retry_on_http_429);
  CHECK(!d->send_metadata);
  CHECK_U64(d->metadata_send_interval_ms, 120000);
  CHECK_STR(c->dests[1]->name, "ws");
  CHECK(c->dests[1]->sigv4.enabled);
  CHECK_STR(c->dests[1]->sigv4.region, "eu-west-1");
  const mg_conf_creds_t *cr = &c->dests[1]->sigv4.creds;
  CHECK_INT(cr->kind, MG_CREDS_ASSUME_ROLE);
  CHECK_STR(cr->role_arn, "arn:aws:iam::2:role/w");
  CHECK_STR(cr->external_id, "e");
  CHECK_U64(cr->duration_s, 3600);
  REQUIRE(cr->source);
  CHECK_INT(cr->source->kind, MG_CREDS_PROFILE);
  CHECK_STR(cr->source->credentials_file, "/c");
  CHECK_STR(cr->source->profile, "p");
  CHECK(c->dests[1]->queue.retry_on_http_429); /* untouched default */
  CHECK_INT(c->dests[2]->kind, MG_DEST_STDOUT);
  CHECK_STR(c->dests[2]->name, "console");
  CHECK_INT(c->dests[3]->kind, MG_DEST_FILE);
  CHECK_STR(c->dests[3]->path, "/tmp/x.prom");

  CHECK_INT(mg_conf_finish(c, &err), 0);
  CHECK_U64(m->interval_ms, 30000);
  mg_conf_free(c);
  unlink(p);
}

/* ---- errors with file:line --------------------------------------------- */

MG_TEST(syntax_error_has_file_and_line) {
  mg_conf_error_t e = load_fail("syntax.lua", "local mg = require \"moongate\"\n\nlocal x = = 1\n", MG_ELUA);
  CHECK(strstr(e.file, "syntax.lua") != NULL);
  CHECK_STR(e.file + strlen(e.file) - strlen("/syntax.lua"), "/syntax.lua");
  CHECK_INT(e.line, 3);
  CHECK(strstr(e.msg, "unexpected symbol near '='") != NULL);
  CHECK(strncmp(e.msg, "unexpected", 10) == 0); /* the prefix went to file/line */
}

MG_TEST(runtime_error_has_file_and_line) {
  mg_conf_error_t e = load_fail("runtime.lua", "local mg = require \"moongate\"\nlocal y = 1\nfoo()\n", MG_ELUA);
  CHECK_INT(e.line, 3);
  CHECK_STR(e.msg, "attempt to call global 'foo' (a nil value)");
  CHECK(strstr(e.file, "runtime.lua") != NULL);
  /* Errors raised from a helper show where the error happened. */
  e = load_fail("runtime2.lua", "local function f(t)\n  return t.x.y\nend\nf({})\n", MG_ELUA);
  CHECK_INT(e.line, 2);
  CHECK(strstr(e.msg, "attempt to index field 'x' (a nil value)") != NULL);
  e = load_fail("runtime3.lua", "error({})\n", MG_ELUA);
  CHECK_INT(e.line, 0);
  CHECK_STR(e.msg, "(error object is a table value)");
}

MG_TEST(missing_script) {
  mg_conf_error_t err = {0};
  mg_conf_t *c = NULL;
  CHECK_INT(mg_lua_load_conf("/nonexistent/x.lua", NULL, &c, &err), MG_EIO);
  CHECK(c == NULL);
  CHECK_STR(err.file, "/nonexistent/x.lua");
  CHECK(strstr(err.msg, "cannot read script") != NULL);
}

MG_TEST(long_path_keeps_full_file_name) {
  /* Lua shortens long chunk names to "...tail"; the error gets the path back. */
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/a_rather_long_directory_name_to_push_the_chunk_name_over_sixty_chars", tmp());
  mkdir(dir, 0700);
  char path[PATH_MAX + 16];
  snprintf(path, sizeof path, "%s/broken.lua", dir);
  FILE *f = fopen(path, "w");
  REQUIRE(f);
  fputs("\n\nlocal = 1\n", f);
  fclose(f);
  mg_conf_error_t err = {0};
  mg_conf_t *c = NULL;
  CHECK_INT(mg_lua_load_conf(path, NULL, &c, &err), MG_ELUA);
  CHECK_STR(err.file, path);
  CHECK_INT(err.line, 3);
  unlink(path);
  rmdir(dir);
}

MG_TEST(error_parse) {
  mg_conf_error_t e;
  mg_lua_error_parse("x.lua:12: attempt to call a nil value (global 'foo')", "x.lua", &e);
  CHECK_STR(e.file, "x.lua");
  CHECK_INT(e.line, 12);
  CHECK_STR(e.msg, "attempt to call a nil value (global 'foo')");
  mg_lua_error_parse("x.lua:3: moongate.lua:9: boom", "x.lua", &e); /* outer position wins */
  CHECK_INT(e.line, 3);
  CHECK_STR(e.msg, "moongate.lua:9: boom");
  mg_lua_error_parse("C:\\weird:name:7: m", NULL, &e);
  CHECK_STR(e.file, "C:\\weird:name");
  CHECK_INT(e.line, 7);
  mg_lua_error_parse("no position here", "s.lua", &e);
  CHECK_STR(e.file, "s.lua");
  CHECK_INT(e.line, 0);
  CHECK_STR(e.msg, "no position here");
}

/* ---- argument tables ---------------------------------------------------- */

MG_TEST(unknown_field_is_an_error_at_the_call) {
  mg_conf_error_t e = load_fail("unknown.lua",
                                "local mg = require \"moongate\"\n"
                                "mg.stdout {}\n"
                                "mg.scrape {\n"
                                "  job = \"x\", targets = {},\n"
                                "  intervl = \"5s\" }\n",
                                MG_ELUA);
  CHECK_INT(e.line, 3);
  CHECK_STR(e.msg, "mg.scrape: unknown field 'intervl' (did you mean 'interval'?)");
  e = load_fail("unknown2.lua", "local mg = require \"moongate\"\nmg.scrape { job = \"x\", targets = {}, metrics_path = \"/m\" }\n",
                MG_ELUA);
  CHECK_STR(e.msg, "mg.scrape: unknown field 'metrics_path' (moongate calls it 'path')");
  e = load_fail("unknown3.lua", "local mg = require \"moongate\"\nmg.remote_write { name = \"a\", url = \"http://h:1/\", queue = { capacty = 1 } }\n",
                MG_ELUA);
  CHECK_STR(e.msg, "mg.remote_write: unknown field 'queue.capacty' (did you mean 'capacity'?)");
  e = load_fail("unknown4.lua", "local mg = require \"moongate\"\nmg.scarpe { job = \"x\" }\n", MG_ELUA);
  CHECK_INT(e.line, 2);
  CHECK_STR(e.msg, "moongate has no field \"scarpe\" (did you mean mg.scrape?)");
}

MG_TEST(bad_duration_names_the_field) {
  mg_conf_error_t e = load_fail("dur.lua",
                                "local mg = require \"moongate\"\n"
                                "local function job(name, every)\n"
                                "  mg.scrape { job = name, interval = every, targets = { \"a:1\" } }\n"
                                "end\n"
                                "job(\"ok\", \"5s\")\n"
                                "job(\"bad\", \"5x\")\n",
                                MG_ELUA);
  CHECK_INT(e.line, 3); /* the mg.scrape call, inside the script's helper */
  CHECK(strncmp(e.msg, "mg.scrape: field 'interval': invalid duration \"5x\"", 50) == 0);
  e = load_fail("dur2.lua", "local mg = require \"moongate\"\nmg.global { scrape_interval = 15 }\n", MG_ELUA);
  CHECK(strstr(e.msg, "mg.global: field 'scrape_interval': expected a duration string like \"15s\", got number 15") ==
        e.msg);
  e = load_fail("dur3.lua", "local mg = require \"moongate\"\nmg.scrape { job = \"a\", interval = \"10s\", timeout = \"20s\", targets = {} }\n",
                MG_ELUA);
  CHECK_STR(e.msg, "mg.scrape: field 'timeout': \"20s\" is longer than interval \"10s\"");
}

MG_TEST(argument_errors) {
  static const struct {
    const char *code, *msg;
  } cases[] = {
      {"mg.scrape { targets = {} }", "mg.scrape: field 'job' is required"},
      {"mg.scrape \"node\"", "mg.scrape: expected one table argument, like mg.scrape{ ... }"},
      {"mg:scrape { job = \"a\", targets = {} }",
       "mg.scrape: expected one table argument, like mg.scrape{ ... } (call mg.scrape{...} with a dot, not a colon)"},
      {"mg.scrape { job = \"a\", targets = \"h:1\" }", "mg.scrape: field 'targets': expected a list like { \"h:1\" }, got a string"},
      {"mg.scrape { job = \"a\", targets = { \"http://h:1\" } }",
       "mg.scrape: field 'targets[1]': \"http://h:1\": give host:port without a scheme (set scheme = \"https\" for TLS)"},
      {"mg.scrape { job = \"a\", targets = { \"h\" } }",
       "mg.scrape: field 'targets[1]': \"h\" is not host:port (like \"10.0.0.5:9100\"; IPv6 as \"[::1]:9100\")"},
      {"mg.scrape { job = \"a\", targets = { \"h:1\", \"h:1\" } }", "mg.scrape: field 'targets[2]': \"h:1\" is listed twice"},
      {"mg.scrape { job = \"a\", targets = { { targets = { \"h:99999\" } } } }",
       "mg.scrape: field 'targets[1].targets[1]': \"h:99999\": port must be from 1 to 65535"},
      {"mg.scrape { job = \"a\", targets = {}, labels = { [\"bad-name\"] = \"x\" } }",
       "mg.scrape: field 'labels': invalid label name \"bad-name\" (must match [a-zA-Z_][a-zA-Z0-9_]*)"},
      {"mg.scrape { job = \"a\", targets = {}, labels = { port = 9100 } }",
       "mg.scrape: field 'labels.port': expected a string, got number 9100 (label values are strings)"},
      {"mg.scrape { job = \"a\", targets = {}, scheme = \"ftp\" }",
       "mg.scrape: field 'scheme': expected \"http\" or \"https\", got string \"ftp\""},
      {"mg.scrape { job = \"a\", targets = {}, path = \"/m?x=1\" }",
       "mg.scrape: field 'path': \"/m?x=1\": put query parameters in params = { ... }"},
      {"mg.scrape { job = \"a\", targets = {}, sample_limit = -1 }",
       "mg.scrape: field 'sample_limit': must be from 0 to 9007199254740992, got -1"},
      {"mg.scrape { job = \"a\", targets = {}, body_size_limit = \"5 MB\" }",
       "mg.scrape: field 'body_size_limit': invalid size \"5 MB\" (examples: \"512KiB\", \"50MB\", \"1GB\", \"1048576\")"},
      {"mg.scrape { job = \"a\", targets = {}, tls = { cert_file = \"/c\" } }",
       "mg.scrape: field 'tls': cert_file and key_file go together (client certificate and its key)"},
      {"mg.scrape { job = \"a\", targets = {}, bearer_token = \"t\", basic_auth = { username = \"u\" } }",
       "mg.scrape: fields 'basic_auth' and 'bearer_token' are both set: use one way to authenticate"},
      {"mg.scrape { job = \"a\", targets = {} }\nmg.scrape { job = \"a\", targets = {} }",
       "mg.scrape: field 'job': \"a\" is already the name of the job declared at "},
      {"mg.global {}\nmg.global {}", "mg.global: already called at "},
      {"mg.remote_write { name = \"p\", url = \"https://u:pw@h/w\" }",
       "mg.remote_write: field 'url': must not contain user:password@ (use basic_auth: URLs end up in logs)"},
      {"mg.remote_write { name = \"p\", url = \"ftp://h/w\" }",
       "mg.remote_write: field 'url': must start with http:// or https://"},
      {"mg.remote_write { url = \"http://h/w\" }", "mg.remote_write: field 'name' is required"},
      {"mg.remote_write { name = \"p\", url = \"http://h/w\", headers = { Authorization = \"x\" } }",
       "mg.remote_write: field 'headers.Authorization': set it with basic_auth, authorization or bearer_token"},
      {"mg.remote_write { name = \"p\", url = \"http://h/w\", queue = { min_shards = 5, max_shards = 2 } }",
       "mg.remote_write: field 'queue.min_shards': 5 is more than max_shards 2"},
      {"mg.stdout {}\nmg.stdout {}", "mg.stdout: field 'name': \"stdout\" is already the name of the destination declared at "},
      {"mg.file { name = \"f\" }", "mg.file: field 'path' is required"},
      {"mg.workspace { name = \"w\", url = \"https://h/w\", credentials = {} }",
       "mg.workspace: field 'credentials': expected a credential source such as mg.aws.chain() or mg.aws.file{...}, "
       "got table"},
      {"mg.workspace { name = \"w\", url = \"https://h/w\", bearer_token = \"t\" }",
       "mg.workspace: field 'bearer_token': a workspace is signed with SigV4: use credentials = mg.aws..."},
      {"mg.aws.assume_role { external_id = \"x\" }", "mg.aws.assume_role: field 'role_arn' is required"},
      {"mg.log(\"loud\", \"x\")", "bad argument #1 to 'log' (invalid option 'loud')"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[1024];
    snprintf(text, sizeof text, "local mg = require \"moongate\"\n%s\n", cases[i].code);
    mg_conf_error_t e = load_fail("args.lua", text, MG_ELUA);
    if (strncmp(e.msg, cases[i].msg, strlen(cases[i].msg)) != 0)
      MG_FAIL_("case %zu: got \"%s\"\n      want \"%s\"", i, e.msg, cases[i].msg);
    if (e.line < 2) MG_FAIL_("case %zu: line %u", i, e.line);
  }
}

MG_TEST(builder_failure_caught_by_pcall_still_fails_the_load) {
  /* Argument errors leave the plan untouched, so catching them is fine... */
  mg_conf_error_t err = {0};
  mg_conf_t *c = NULL;
  const char *p = script("pcall.lua",
                         "local mg = require \"moongate\"\n"
                         "local ok, msg = pcall(mg.scrape, { job = \"a\", interval = \"1x\", targets = {} })\n"
                         "assert(not ok and msg:find(\"invalid duration\"))\n"
                         "mg.stdout {}\n");
  CHECK_INT(mg_lua_load_conf(p, NULL, &c, &err), 0);
  REQUIRE(c);
  CHECK_INT(c->njobs, 0);
  mg_conf_free(c);
  unlink(p);
}

MG_TEST(finish_errors_point_at_the_declaring_line) {
  mg_lua_vm_t *vm = NULL;
  REQUIRE(mg_lua_vm_new(NULL, &vm) == 0);
  REQUIRE(mg_lua_api_open(vm) == 0);
  const char *p = script("finish.lua",
                         "local mg = require \"moongate\"\n"
                         "mg.stdout {}\n"
                         "mg.scrape { job = \"a\", targets = { \"h:1\" } }\n"
                         "mg.scrape { job = \"b\",\n"
                         "  targets = { { targets = { \"h:1\" }, labels = { x = \"\\255\" } } } }\n");
  mg_conf_t *c = NULL;
  mg_conf_error_t err = {0};
  REQUIRE(mg_lua_api_load(vm, p, &c, &err) == 0);
  CHECK_INT(mg_lua_api_finish(vm, c, &err), MG_ECONFIG);
  CHECK_STR(err.file, p);
  CHECK_INT(err.line, 4);
  CHECK(strstr(err.msg, "not valid UTF-8") != NULL);
  /* Once per VM. */
  mg_conf_t *c2 = NULL;
  CHECK_INT(mg_lua_api_load(vm, p, &c2, &err), MG_EINVAL);
  CHECK(c2 == NULL);
  mg_conf_free(c);
  mg_lua_vm_free(vm);
  unlink(p);
}

/* Load a script in a kept VM, then call global function `name` of the
 * module table (set by the script) through mg_lua_call. */
static int call_module_fn(mg_lua_vm_t *vm, const char *name, int nres, const mg_lua_budget_t *b) {
  char code[256];
  snprintf(code, sizeof code, "return rawget(require \"moongate\", %s)\n", name);
  const char *p = script("get.lua", code);
  mg_conf_error_t err = {0};
  if (mg_lua_load_file(vm, p, &err) != 0 || mg_lua_call(vm, "get", 0, 1, NULL) != 0) {
    MG_FAIL_("cannot fetch %s: %s", name, err.msg);
    return -1;
  }
  unlink(p);
  return mg_lua_call(vm, name, 0, nres, b);
}

MG_TEST(destination_handles_and_load_time_only) {
  mg_lua_vm_t *vm = NULL;
  REQUIRE(mg_lua_vm_new(NULL, &vm) == 0);
  REQUIRE(mg_lua_api_open(vm) == 0);
  const char *p = script("handles.lua",
                         "local mg = require \"moongate\"\n"
                         "local a = mg.stdout { name = \"a\" }\n"
                         "local b = mg.remote_write { name = \"b\", url = \"http://127.0.0.1:1/w\" }\n"
                         "mg.pick = function() return b end\n"
                         "mg.late = function() mg.scrape { job = \"late\", targets = {} } end\n"
                         "mg.lazy = function() return require \"othermod\" end\n");
  mg_conf_t *c = NULL;
  mg_conf_error_t err = {0};
  REQUIRE(mg_lua_api_load(vm, p, &c, &err) == 0);
  lua_State *L = mg_lua_vm_state(vm);
  int top = lua_gettop(L);
  CHECK_INT(call_module_fn(vm, "'pick'", 1, NULL), 0);
  size_t idx = 99;
  CHECK_INT(mg_lua_api_todest(L, -1, &idx), 0);
  CHECK_INT(idx, 1);
  CHECK_STR(c->dests[idx]->name, "b");
  lua_pushstring(L, "not a handle");
  CHECK_INT(mg_lua_api_todest(L, -1, &idx), MG_EINVAL);
  lua_settop(L, top);
  double before = lua_errors("error");
  CHECK_INT(call_module_fn(vm, "'late'", 0, NULL), MG_ELUA);
  CHECK(strstr(mg_lua_vm_error(vm), "mg.scrape: load time only") != NULL);
  CHECK_DBL(lua_errors("error"), before + 1);
  CHECK_INT(lua_gettop(L), top);
  CHECK_INT(c->njobs, 0);
  /* A hook cannot make moongate read files. */
  CHECK_INT(call_module_fn(vm, "'lazy'", 0, NULL), MG_ELUA);
  CHECK(strstr(mg_lua_vm_error(vm), "require \"othermod\": load time only") != NULL);
  mg_conf_free(c);
  mg_lua_vm_free(vm);
  unlink(p);
}

/* ---- the sandbox -------------------------------------------------------- */

MG_TEST(sandbox_restrictions) {
  static const struct {
    const char *code, *msg;
  } cases[] = {
      {"io.open(\"/etc/passwd\")", "attempt to index global 'io' (a nil value)"},
      {"os.execute(\"true\")", "attempt to call field 'execute' (a nil value)"},
      {"os.exit(1)", "attempt to call field 'exit' (a nil value)"},
      {"os.remove(\"/tmp/x\")", "attempt to call field 'remove' (a nil value)"},
      {"os.getenv(\"HOME\")", "attempt to call field 'getenv' (a nil value)"},
      {"debug.getinfo(1)", "attempt to index global 'debug' (a nil value)"},
      {"ffi.cdef(\"int x;\")", "attempt to index global 'ffi' (a nil value)"},
      {"jit.on()", "attempt to index global 'jit' (a nil value)"},
      {"load(\"return 1\")", "attempt to call global 'load' (a nil value)"},
      {"loadstring(\"return 1\")", "attempt to call global 'loadstring' (a nil value)"},
      {"dofile(\"/etc/x.lua\")", "attempt to call global 'dofile' (a nil value)"},
      {"loadfile(\"/etc/x.lua\")", "attempt to call global 'loadfile' (a nil value)"},
      {"string.dump(print)", "attempt to call field 'dump' (a nil value)"},
      {"(\"\").dump(print)", "attempt to call field 'dump' (a nil value)"},
      {"getfenv(0)", "attempt to call global 'getfenv' (a nil value)"},
      {"setfenv(1, {})", "attempt to call global 'setfenv' (a nil value)"},
      {"package.loadlib(\"x\", \"y\")", "attempt to index global 'package' (a nil value)"},
      {"module(\"x\")", "attempt to call global 'module' (a nil value)"},
      {"newproxy(true)", "attempt to call global 'newproxy' (a nil value)"},
      {"coroutine.create(print)", "attempt to index global 'coroutine' (a nil value)"},
      {"collectgarbage(\"collect\")", "bad argument #1 to 'collectgarbage' (only \"count\" is allowed in moongate scripts)"},
      {"collectgarbage()", "bad argument #1 to 'collectgarbage' (only \"count\" is allowed"},
      {"getmetatable(\"\").__index = {}", "attempt to index a string value"},
      {"require \"ffi\"", "require \"ffi\": no such module"},
      {"require \"jit\"", "require \"jit\": no such module"},
      {"require \"debug\"", "require \"debug\": no such module"},
      {"require \"../../etc/passwd\"", "bad argument #1 to 'require' (module names are lowercase words"},
      {"require \"/etc/passwd\"", "bad argument #1 to 'require' (module names are lowercase words"},
      {"setmetatable(require \"moongate\", {})", "cannot change a protected metatable"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[512];
    snprintf(text, sizeof text, "local x = 1\n%s\n", cases[i].code);
    mg_conf_error_t e = load_fail("sandbox.lua", text, MG_ELUA);
    if (!strstr(e.msg, cases[i].msg)) MG_FAIL_("case %zu (%s): got \"%s\"", i, cases[i].code, e.msg);
    if (e.line != 2) MG_FAIL_("case %zu: line %u", i, e.line);
  }
}

MG_TEST(sandbox_allows_the_safe_library) {
  mg_conf_error_t err = {0};
  mg_conf_t *c = NULL;
  const char *p = script("safe.lua",
                         "local mg = require \"moongate\"\n"
                         "assert(require \"moongate\" == mg)\n"
                         "assert(string.format(\"%05.1f\", math.pi) == \"003.1\")\n"
                         "assert(table.concat({ \"a\", \"b\" }, \",\") == \"a,b\" and table.unpack == unpack)\n"
                         "assert(type(os.time()) == \"number\" and type(os.clock()) == \"number\")\n"
                         "assert(os.date(\"!%Y\", 0) == \"1970\")\n"
                         "assert(collectgarbage(\"count\") > 0)\n"
                         "assert(_G.string == string and _VERSION)\n"
                         "assert(select(\"#\", pcall(error, \"x\")) == 2)\n"
                         "assert(getmetatable(\"\") == \"string\" and (\"x\"):rep(3) == \"xxx\")\n"
                         "local t = setmetatable({}, { __index = function() return 1 end })\n"
                         "assert(t.z == 1 and rawget(t, \"z\") == nil and next({}) == nil and tonumber(\"7\") == 7)\n"
                         "string.upper = nil -- a script changes its own copy only\n"
                         "print(\"hello\", 1, nil, true)\n"
                         "mg.log(\"info\", \"from mg.log\")\n"
                         "mg.stdout {}\n");
  FILE *logf = tmpfile();
  REQUIRE(logf);
  mg_log_set_stream(logf);
  int rc = mg_lua_load_conf(p, NULL, &c, &err);
  mg_log_set_stream(NULL);
  if (rc) fprintf(stderr, "  %s:%u: %s\n", err.file, err.line, err.msg);
  CHECK_INT(rc, 0);
  mg_conf_free(c);
  char buf[4096] = {0};
  rewind(logf);
  size_t n = fread(buf, 1, sizeof buf - 1, logf);
  buf[n] = '\0';
  fclose(logf);
  CHECK(strstr(buf, "event=script_print") && strstr(buf, "msg=\"hello\\x091\\x09nil\\x09true\""));
  CHECK(strstr(buf, "event=script_log") && strstr(buf, "msg=\"from mg.log\""));
  CHECK(strstr(buf, "safe.lua:15") != NULL); /* mg.log names the script line */
  unlink(p);
}

MG_TEST(allow_unsafe_adds_io_and_os) {
  mg_lua_opts_t o = {.allow_unsafe = true};
  mg_conf_error_t err = {0};
  mg_conf_t *c = NULL;
  const char *p = script("unsafe.lua",
                         "assert(type(io.open) == \"function\" and type(os.execute) == \"function\")\n"
                         "assert(type(os.getenv) == \"function\" and debug == nil and load == nil)\n"
                         "require(\"moongate\").stdout {}\n");
  int rc = mg_lua_load_conf(p, &o, &c, &err);
  if (rc) fprintf(stderr, "  %s:%u: %s\n", err.file, err.line, err.msg);
  CHECK_INT(rc, 0);
  mg_conf_free(c);
  unlink(p);
}

MG_TEST(bytecode_is_refused) {
  lua_State *L = luaL_newstate();
  REQUIRE(L);
  luaL_openlibs(L);
  REQUIRE(luaL_dostring(L, "return string.dump(function() return 1 end)") == 0);
  size_t n;
  const char *bc = lua_tolstring(L, -1, &n);
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/bytecode.lua", tmp());
  FILE *f = fopen(path, "wb");
  REQUIRE(f);
  fwrite(bc, 1, n, f);
  fclose(f);
  lua_close(L);
  mg_conf_error_t err = {0};
  mg_conf_t *c = NULL;
  CHECK_INT(mg_lua_load_conf(path, NULL, &c, &err), MG_ELUA);
  CHECK(strstr(err.msg, "precompiled bytecode is refused") != NULL);
  unlink(path);
}

MG_TEST(shebang_line_is_skipped_and_lines_stay_true) {
  mg_conf_error_t e = load_fail("shebang.lua", "#!/usr/bin/env moongate\nlocal x = 1\nboom()\n", MG_ELUA);
  CHECK_INT(e.line, 3);
}

MG_TEST(lua_dir_search_order) {
  char out[PATH_MAX];
  mg_lua_opts_t o = {.lua_dir = "/nonexistent"};
  unsetenv("MOONGATE_LUA_DIR");
  /* Falls through to the source tree (MG_LUA_DIR). */
  REQUIRE(mg_lua_find_dir(&o, out, sizeof out) == 0);
  CHECK(strstr(out, "/lua") != NULL);
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/libdir", tmp());
  mkdir(dir, 0700);
  char f[PATH_MAX + 16];
  snprintf(f, sizeof f, "%s/moongate.lua", dir);
  FILE *fp = fopen(f, "w");
  REQUIRE(fp);
  fputs("local core = ...\nreturn { custom = true, version = core.version }\n", fp);
  fclose(fp);
  o.lua_dir = dir;
  CHECK_INT(mg_lua_find_dir(&o, out, sizeof out), 0);
  CHECK_STR(out, dir);
  setenv("MOONGATE_LUA_DIR", dir, 1);
  CHECK_INT(mg_lua_find_dir(NULL, out, sizeof out), 0);
  CHECK_STR(out, dir);
  /* The override really is the library scripts get. */
  mg_conf_error_t err = {0};
  mg_conf_t *c = NULL;
  const char *p = script("custom.lua", "assert(require(\"moongate\").custom == true)\n");
  CHECK_INT(mg_lua_load_conf(p, NULL, &c, &err), 0);
  mg_conf_free(c);
  unsetenv("MOONGATE_LUA_DIR");
  CHECK_INT(mg_lua_find_dir(&o, out, 4), MG_ETOOBIG);
  unlink(f);
  rmdir(dir);
  unlink(p);
}

/* ---- budgets ------------------------------------------------------------ */

/* Compile f(n) directly (not through mg_lua_load_file, which already keeps
 * script code interpreted) so the JIT may compile it. */
static void push_loop_fn(mg_lua_vm_t *vm) {
  lua_State *L = mg_lua_vm_state(vm);
  const char *src = "return function(n) local i = 0 while n == nil or i < n do i = i + 1 end return i end";
  if (luaL_loadbuffer(L, src, strlen(src), "=loop") != 0) abort();
  if (mg_lua_push_env(vm) != 0) abort();
  lua_setfenv(L, -2);
  lua_call(L, 0, 1);
}

MG_TEST(instruction_budget_stops_an_endless_hook) {
  alarm(60); /* a broken budget must fail the test, not hang it */
  mg_lua_vm_t *vm = NULL;
  REQUIRE(mg_lua_vm_new(NULL, &vm) == 0);
  lua_State *L = mg_lua_vm_state(vm);
  push_loop_fn(vm);
  int f = lua_gettop(L);
  mg_lua_budget_t b = {.max_instructions = 1000000};
  /* Warm up: the loop becomes a trace. */
  lua_pushvalue(L, f);
  lua_pushnumber(L, 1e6);
  REQUIRE(mg_lua_call(vm, "warm", 1, 1, NULL) == 0);
  lua_pop(L, 1);
  /* Why jit.off: the compiled trace never runs the count hook, so 1e8
   * iterations (~4e8 instructions) finish inside a 1e6 budget. If this
   * starts failing, LuaJIT now checks hooks in compiled code. */
  lua_pushvalue(L, f);
  lua_pushnumber(L, 1e8);
  CHECK_INT(mg_lua_call(vm, "compiled", 1, 1, &b), 0);
  CHECK_DBL(lua_tonumber(L, -1), 1e8);
  lua_pop(L, 1);

  CHECK_INT(mg_lua_jit_off(vm, f), 0);
  double before = lua_errors("instructions");
  int top = lua_gettop(L);
  lua_pushvalue(L, f); /* n = nil: while true do end */
  double t0 = now_s();
  CHECK_INT(mg_lua_call(vm, "route", 0, 1, &b), MG_ELUA);
  CHECK(now_s() - t0 < 5);
  CHECK_INT(lua_gettop(L), top);
  CHECK(strstr(mg_lua_vm_error(vm), "loop:1: instruction budget exceeded (1000000 instructions)") != NULL);
  CHECK_DBL(lua_errors("instructions"), before + 1);
  /* The VM is still usable, and the next call gets a fresh budget. */
  lua_pushvalue(L, f);
  lua_pushnumber(L, 1000);
  CHECK_INT(mg_lua_call(vm, "route", 1, 1, &b), 0);
  CHECK_DBL(lua_tonumber(L, -1), 1000);
  lua_pop(L, 1);
  lua_pushnumber(L, 1);
  CHECK_INT(mg_lua_jit_off(vm, -1), MG_EINVAL); /* not a function */
  lua_pop(L, 1);
  mg_lua_vm_free(vm);
  alarm(0);
}

MG_TEST(budget_cannot_be_swallowed_by_pcall) {
  alarm(60);
  mg_lua_vm_t *vm = NULL;
  REQUIRE(mg_lua_vm_new(NULL, &vm) == 0);
  const char *p = script("swallow.lua",
                         "return function()\n"
                         "  while true do pcall(function() while true do end end) end\n"
                         "end\n");
  mg_conf_error_t err = {0};
  REQUIRE(mg_lua_load_file(vm, p, &err) == 0);
  REQUIRE(mg_lua_call(vm, "load", 0, 1, NULL) == 0);
  mg_lua_budget_t b = {.max_instructions = 200000};
  CHECK_INT(mg_lua_call(vm, "filter", 0, 0, &b), MG_ELUA);
  CHECK(strstr(mg_lua_vm_error(vm), "instruction budget exceeded") != NULL);
  mg_lua_vm_free(vm);
  unlink(p);
  alarm(0);
}

MG_TEST(time_budget_stops_a_slow_hook) {
  alarm(60);
  mg_lua_vm_t *vm = NULL;
  REQUIRE(mg_lua_vm_new(NULL, &vm) == 0);
  const char *p = script("slow.lua", "return function()\n  while true do end\nend\n");
  mg_conf_error_t err = {0};
  REQUIRE(mg_lua_load_file(vm, p, &err) == 0);
  REQUIRE(mg_lua_call(vm, "load", 0, 1, NULL) == 0);
  mg_lua_budget_t b = {.max_ms = 50};
  double before = lua_errors("timeout");
  double t0 = now_s();
  CHECK_INT(mg_lua_call(vm, "route", 0, 0, &b), MG_ELUA);
  double took = now_s() - t0;
  CHECK(took >= 0.05 && took < 2);
  CHECK(strstr(mg_lua_vm_error(vm), "slow.lua:2: time budget exceeded (50 ms)") != NULL);
  CHECK_DBL(lua_errors("timeout"), before + 1);
  mg_lua_vm_free(vm);
  unlink(p);
  alarm(0);
}

MG_TEST(memory_ceiling_stops_a_hungry_hook) {
  alarm(60);
  mg_lua_vm_t *vm = NULL;
  REQUIRE(mg_lua_vm_new(NULL, &vm) == 0);
  lua_State *L = mg_lua_vm_state(vm);
  const char *p = script("hungry.lua",
                         "return function()\n"
                         "  local t = {} while true do t[#t + 1] = string.rep(\"x\", 1000) end\n"
                         "end, function() return #string.rep(\"y\", 100) end\n");
  mg_conf_error_t err = {0};
  REQUIRE(mg_lua_load_file(vm, p, &err) == 0);
  REQUIRE(mg_lua_call(vm, "load", 0, 2, NULL) == 0);
  size_t base = mg_lua_vm_mem(vm);
  mg_lua_budget_t b = {.max_instructions = 1000000000, .max_bytes = base + (8u << 20)};
  double before = lua_errors("memory");
  lua_pushvalue(L, -2);
  CHECK_INT(mg_lua_call(vm, "filter", 0, 0, &b), MG_ELUA);
  CHECK(strstr(mg_lua_vm_error(vm), "memory budget exceeded") != NULL);
  CHECK_DBL(lua_errors("memory"), before + 1);
  CHECK(mg_lua_vm_mem(vm) <= base + (8u << 20) + (64u << 10));
  /* The garbage goes, and the VM works on. */
  lua_gc(L, LUA_GCCOLLECT, 0);
  CHECK(mg_lua_vm_mem(vm) < base + (1u << 20));
  CHECK_INT(mg_lua_call(vm, "filter", 0, 1, &b), 0);
  CHECK_INT(lua_tointeger(L, -1), 100);
  mg_lua_vm_free(vm);
  unlink(p);
  alarm(0);
}

/* Load NAME (a chunk returning one function), turn the JIT off for it as
 * mg_lua_hooks does, and call it with a memory budget of `extra` bytes
 * above what the VM holds: mg_lua_call's result, its results on the
 * stack. */
static int call_hungry(mg_lua_vm_t *vm, const char *name, const char *src, size_t extra, int nresults) {
  const char *p = script(name, src);
  mg_conf_error_t err = {0};
  int rc = mg_lua_load_file(vm, p, &err);
  if (rc == 0) rc = mg_lua_call(vm, "load", 0, 1, NULL);
  unlink(p);
  CHECK_INT(rc, 0);
  if (rc) return rc;
  CHECK_INT(mg_lua_jit_off(vm, -1), 0);
  mg_lua_budget_t b = {.max_instructions = 1000000000, .max_bytes = mg_lua_vm_mem(vm) + extra};
  return mg_lua_call(vm, "filter", 0, nresults, &b);
}

/* The hungry hook above stores one interned string over and over: its
 * table's last doubling is a single allocation past the ceiling, which
 * the allocator refuses. A hook that grows a little at a time is stopped
 * by the count hook first, at a line of the script, before any allocation
 * has to fail inside LuaJIT; garbage does not stop a call. */
MG_TEST(memory_budget_stops_a_slow_leak_at_a_line_not_garbage) {
  alarm(60);
  mg_lua_vm_t *vm = NULL;
  REQUIRE(mg_lua_vm_new(NULL, &vm) == 0);
  lua_State *L = mg_lua_vm_state(vm);
  size_t base = mg_lua_vm_mem(vm);
  CHECK_INT(call_hungry(vm, "leak.lua",
                        "return function()\n"
                        "  local t, i = {}, 0\n"
                        "  while true do i = i + 1 t[i] = string.rep(\"x\", 1000) .. i end\n"
                        "end\n",
                        8u << 20, 0),
            MG_ELUA);
  CHECK(strstr(mg_lua_vm_error(vm), "leak.lua:3: memory budget exceeded") != NULL);
  CHECK(mg_lua_vm_mem(vm) <= base + (9u << 20));
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT, 0);
  /* 200 MB of short-lived strings under a 4 MiB budget. */
  CHECK_INT(call_hungry(vm, "churn.lua",
                        "return function()\n"
                        "  local n = 0\n"
                        "  for i = 1, 200000 do n = n + #(string.rep(\"z\", 1000) .. i) end\n"
                        "  return n\n"
                        "end\n",
                        4u << 20, 1),
            0);
  CHECK(lua_tointeger(L, -1) > 200000 * 1000);
  mg_lua_vm_free(vm);
  alarm(0);
}

MG_TEST(load_budget_stops_an_endless_script) {
  alarm(60);
  mg_lua_opts_t o = {.load_budget = {.max_instructions = 100000}};
  mg_conf_error_t err = {0};
  mg_conf_t *c = NULL;
  const char *p = script("forever.lua", "local mg = require \"moongate\"\nwhile true do end\n");
  CHECK_INT(mg_lua_load_conf(p, &o, &c, &err), MG_ELUA);
  CHECK(c == NULL);
  CHECK_INT(err.line, 2);
  CHECK_STR(err.msg, "instruction budget exceeded (100000 instructions)");
  o = (mg_lua_opts_t){.mem_limit = 4u << 20};
  p = script("huge.lua", "local t = {} for i = 1, 1e7 do t[i] = i end\n");
  CHECK_INT(mg_lua_load_conf(p, &o, &c, &err), MG_ELUA);
  CHECK(strstr(err.msg, "memory budget exceeded") != NULL);
  unlink(p);
  alarm(0);
}

MG_TEST(errors_are_logged_with_traceback_and_rate_limited) {
  mg_lua_vm_t *vm = NULL;
  REQUIRE(mg_lua_vm_new(NULL, &vm) == 0);
  lua_State *L = mg_lua_vm_state(vm);
  const char *p = script("tb.lua",
                         "local function inner() error(\"no route for you\") end\n"
                         "return function() inner() end\n");
  mg_conf_error_t err = {0};
  REQUIRE(mg_lua_load_file(vm, p, &err) == 0);
  REQUIRE(mg_lua_call(vm, "load", 0, 1, NULL) == 0);
  FILE *logf = tmpfile();
  REQUIRE(logf);
  mg_log_set_stream(logf);
  for (int i = 0; i < 3; i++) {
    lua_pushvalue(L, -1);
    CHECK_INT(mg_lua_call(vm, "route", 0, 0, NULL), MG_ELUA);
  }
  mg_log_set_stream(NULL);
  CHECK(strstr(mg_lua_vm_error(vm), "tb.lua:1: no route for you") != NULL);
  char buf[8192] = {0};
  rewind(logf);
  size_t n = fread(buf, 1, sizeof buf - 1, logf);
  buf[n] = '\0';
  fclose(logf);
  CHECK(strstr(buf, "event=lua_error") != NULL);
  CHECK(strstr(buf, "function=route") != NULL);
  CHECK(strstr(buf, "script=") && strstr(buf, "tb.lua"));
  CHECK(strstr(buf, "traceback=\"stack traceback:") != NULL);
  CHECK(strstr(buf, "in function 'inner'") || strstr(buf, "in upvalue 'inner'") || strstr(buf, "in local 'inner'"));
  /* Three errors within a second: one line. */
  const char *second = strstr(strstr(buf, "event=lua_error") + 1, "event=lua_error");
  CHECK(second == NULL);
  mg_lua_vm_free(vm);
  unlink(p);
}

/* Fail each allocation of a full load in turn: every run either succeeds
 * or reports an error; none crashes or leaks (ASan checks the latter). */
MG_TEST(torture_allocation_failures) {
  setenv("MG_TEST_LUA_URL", "http://127.0.0.1:9090/api/v1/write", 1);
  mg_lua_opts_t o = {.listen_address = "127.0.0.1:19464"};
  const char *p = script("torture.lua", full_script);
  mg_conf_error_t err;
  mg_conf_t *c = NULL;
  FILE *logf = tmpfile(); /* keep the expected noise out of the output */
  REQUIRE(logf);
  mg_log_set_stream(logf);
  uint64_t start = mg_mem_alloc_count();
  int rc = mg_lua_load_conf(p, &o, &c, &err);
  uint64_t total = mg_mem_alloc_count() - start;
  CHECK_INT(rc, 0);
  mg_conf_free(c);
  int failed = 0, ok = 0;
  for (uint64_t n = 1; n <= total + 10; n++) {
    mg_mem_fail_at(n);
    c = NULL;
    rc = mg_lua_load_conf(p, &o, &c, &err);
    mg_mem_fail_at(0);
    if (rc == 0) {
      ok++;
      CHECK(c != NULL);
      if (c && (c->njobs != 2 || c->ndests != 4)) MG_FAIL_("n=%" PRIu64 ": success with a partial plan", n);
      mg_conf_free(c);
    } else {
      failed++;
      CHECK(c == NULL);
      if (rc != MG_ENOMEM && rc != MG_ELUA) MG_FAIL_("n=%" PRIu64 ": rc %s", n, mg_err_name(rc));
    }
  }
  mg_log_set_stream(NULL);
  fclose(logf);
  printf("     torture: %" PRIu64 " allocations per load, %d runs failed cleanly\n", total, failed);
  CHECK(failed > 0);
  CHECK(ok > 0); /* the last runs fail past the end: all succeed */
  unlink(p);
}

/* ---- examples ----------------------------------------------------------- */

MG_TEST(example_scripts_load_and_check) {
  const char *src = getenv("MG_SOURCE_DIR");
  REQUIRE(src);
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/scripts/examples", src);
  DIR *d = opendir(dir);
  REQUIRE(d);
  int n = 0;
  struct dirent *e;
  unsetenv("PROM_URL");
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (len < 5 || strcmp(e->d_name + len - 4, ".lua") != 0) continue;
    char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    mg_conf_error_t err = {0};
    mg_conf_t *c = NULL;
    int rc = mg_lua_load_conf(path, NULL, &c, &err);
    if (rc == 0) rc = mg_conf_finish(c, &err);
    if (rc) MG_FAIL_("%s: %s:%u: %s", e->d_name, err.file, err.line, err.msg);
    if (c && strcmp(e->d_name, "default.lua") == 0) {
      CHECK_INT(c->njobs, 2);
      CHECK_STR(c->jobs[0]->targets[0]->address, MG_LUA_DEFAULT_LISTEN);
      CHECK_U64(c->jobs[1]->interval_ms, 5000);
      CHECK_INT(c->dests[0]->kind, MG_DEST_STDOUT);
    }
    if (c && strcmp(e->d_name, "prometheus_receiver.lua") == 0) {
      CHECK_STR(c->dests[0]->url, "http://127.0.0.1:9090/api/v1/write");
      CHECK_STR(c->jobs[0]->targets[0]->address, "127.0.0.1:9100");
    }
    mg_conf_free(c);
    n++;
  }
  closedir(d);
  CHECK(n >= 2);
}

MG_TEST(cleanup_tmpdir) {
  /* Runs last (registration order): remove what the tests left. */
  if (tmpdir[0]) {
    DIR *d = opendir(tmpdir);
    REQUIRE(d);
    struct dirent *e;
    while ((e = readdir(d))) {
      char p[PATH_MAX + 256];
      snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
      if (e->d_name[0] != '.') unlink(p);
    }
    closedir(d);
    CHECK_INT(rmdir(tmpdir), 0);
  }
  mg_metrics_reset();
}

MG_TEST_MAIN()
