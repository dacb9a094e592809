/* main: the command line and the wiring of modules into a running
 * gateway. Owns the process-wide objects (loop, HTTP client and server,
 * destinations, scrape engine) and their shutdown order; no logic of its
 * own beyond that. */
#include <errno.h>
#include <openssl/crypto.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mg_conf.h"
#include "mg_creds.h"
#include "mg_credscli.h"
#include "mg_err.h"
#include "mg_http_client.h"
#include "mg_http_server.h"
#include "mg_log.h"
#include "mg_loop.h"
#include "mg_lua.h"
#include "mg_lua_api.h"
#include "mg_lua_hooks.h"
#include "mg_mem.h"
#include "mg_metrics.h"
#include "mg_privsep.h"
#include "mg_promyml.h"
#include "mg_relabel.h"
#include "mg_remote_write.h"
#include "mg_scrape.h"
#include "mg_sd.h"
#include "mg_status.h"

#define DEFAULT_LISTEN "127.0.0.1:9464"
#define DEFAULT_DRAIN_MS 10000

static const char usage[] =
    "moongate " MG_VERSION " - scrape Prometheus targets, route with Lua, remote_write (SigV4-ready)\n"
    "\n"
    "Usage:\n"
    "  moongate run FILE [--listen ADDR] [--data-dir DIR] [--log-level LEVEL] [--drain-timeout DUR]\n"
    "               [--allow-unsafe-lua] [--user NAME]\n"
    "  moongate check FILE [--allow-unsafe-lua]\n"
    "  moongate test FILE --input EXPOSITION [--job NAME] [--target-label NAME=VALUE ...]\n"
    "                [--content-type TYPE]   print where each series would go, and why\n"
    "  moongate creds [FILE [--destination NAME]] [--profile P] [--credentials-file F]\n"
    "                 [--role-arn ARN [--external-id ID]] [--region R]\n"
    "                       which AWS credentials resolve (masked), until when, and who STS says they are\n"
    "  moongate --version | --help\n"
    "\n"
    "FILE is a Lua script (*.lua) or a Prometheus configuration (*.yml, *.yaml).\n"
    "  --listen ADDR        own HTTP endpoints (/metrics, /-/healthy, /-/ready); default " DEFAULT_LISTEN "\n"
    "  --data-dir DIR       state directory (created if missing); default ./data\n"
    "  --log-level LEVEL    debug, info, warn or error; default info\n"
    "  --drain-timeout DUR  on SIGTERM, keep sending for at most DUR; default 10s\n"
    "  --allow-unsafe-lua   give scripts io and os (off by default: scripts are sandboxed)\n"
    "  --reload-token-file F  POST /-/reload then needs \"Authorization: Bearer <contents of F>\"\n"
    "  --user NAME          started as root: keep root only in a helper that reads the AWS credential\n"
    "                       files, run everything else (script, scrapes, HTTP) as NAME; --data-dir is\n"
    "                       given to NAME, FILE must be readable by NAME\n"
    "  --sigv4-debug        when AMP refuses a signature, log the canonical request and string to sign\n"
    "  --shard K/N          scrape only the targets whose hashmod(__address__, N) is K (K may be a\n"
    "                       StatefulSet pod name such as moongate-2)\n"
    "  --ha-cluster NAME --ha-replica NAME\n"
    "                       add the cluster and __replica__ labels AMP uses to deduplicate an HA pair\n"
    "\n"
    "SIGHUP or POST /-/reload loads FILE again; a broken file leaves the running one in place.\n";

typedef struct app {
  mg_loop_t loop;
  mg_privsep_t *privsep; /* --user: the helper that reads the credential files */
  mg_conf_t *conf;
  mg_lua_vm_t *vm; /* kept while the script's hooks are in use */
  mg_lua_hooks_t *hooks;
  mg_http_client_t *http;
  mg_http_server_t *server;
  mg_dest_t **dests;
  size_t ndests;
  mg_scrape_t *scrape;
  mg_sd_runner_t *sd; /* discovery of the running plan, feeding scrape */
  const char *path, *listen, *data_dir;
  int allow_unsafe;
  char *reload_token; /* secret; NULL: /-/reload needs no token */
  mg_metric_t *m_reload_ok, *m_reload_ts, *m_reloads_failed;
  int64_t started_ms, last_reload_ms;
  char reload_error[1024];
  int ready;
  int stopping;
  size_t draining;
  uint64_t drain_ms;
  mg_metric_t *m_rss, *m_cpu, *m_start;
} app_t;

/* ---- configuration -------------------------------------------------------- */

static int has_suffix(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void print_conf_error(const mg_conf_error_t *e) {
  if (e->line) fprintf(stderr, "%s:%u: %s\n", e->file, e->line, e->msg);
  else if (e->file[0]) fprintf(stderr, "%s: %s\n", e->file, e->msg);
  else fprintf(stderr, "%s\n", e->msg);
}

/* Scale-out options from the command line, applied to every plan loaded
 * (start and reload). */
static struct {
  uint32_t shard_index, shard_count;
  const char *ha_cluster, *ha_replica;
} g_scale;

/* "K/N", where K may be a StatefulSet pod name ending in -<ordinal>. */
static int parse_shard(const char *s, uint32_t *k, uint32_t *n) {
  const char *slash = strrchr(s, '/');
  if (!slash || slash == s) return -1;
  const char *d = slash;
  while (d > s && d[-1] >= '0' && d[-1] <= '9') d--;
  if (d == slash) return -1;
  char *end;
  unsigned long kv = strtoul(d, &end, 10), nv = strtoul(slash + 1, &end, 10);
  if (*end || nv == 0 || nv > 100000 || kv >= nv) return -1;
  *k = (uint32_t)kv;
  *n = (uint32_t)nv;
  return 0;
}

static int apply_scale(mg_conf_t *c) {
  c->shard_index = g_scale.shard_index;
  c->shard_count = g_scale.shard_count;
  /* AMP deduplicates an HA pair by these two labels (as Cortex does):
   * cluster names the pair, __replica__ the member. */
  if (g_scale.ha_cluster && (mg_kvs_set(&c->external_labels, "cluster", g_scale.ha_cluster) != 0 ||
                             mg_kvs_set(&c->external_labels, "__replica__", g_scale.ha_replica) != 0))
    return MG_ENOMEM;
  return 0;
}

/* Relabel rules are compiled by the engine; compile them here too so that
 * `check` and a reload refuse a bad rule before anything starts. */
static int check_rules(const mg_conf_t *c, const mg_conf_relabels_t *rs, const char *owner, const char *field,
                       mg_conf_error_t *err) {
  if (!rs->n) return 0;
  mg_relabel_t *r = NULL;
  char why[400];
  int rc = mg_relabel_compile(rs, &r, why, sizeof why);
  mg_relabel_free(r);
  if (!rc) return 0;
  memset(err, 0, sizeof *err);
  snprintf(err->file, sizeof err->file, "%s", c->path ? c->path : "");
  snprintf(err->msg, sizeof err->msg, "%s: %s: %s", owner, field, why);
  return rc;
}

static int check_all_rules(const mg_conf_t *c, mg_conf_error_t *err) {
  int rc = 0;
  char owner[300];
  for (size_t i = 0; !rc && i < c->njobs; i++) {
    snprintf(owner, sizeof owner, "job \"%s\"", c->jobs[i]->name);
    rc = check_rules(c, &c->jobs[i]->relabel_configs, owner, "relabel_configs", err);
    if (!rc) rc = check_rules(c, &c->jobs[i]->metric_relabel_configs, owner, "metric_relabel_configs", err);
  }
  for (size_t i = 0; !rc && i < c->ndests; i++) {
    snprintf(owner, sizeof owner, "destination \"%s\"", c->dests[i]->name);
    rc = check_rules(c, &c->dests[i]->write_relabel_configs, owner, "write_relabel_configs", err);
  }
  return rc;
}

static bool uses_lua_targets(const mg_conf_t *c) {
  for (size_t j = 0; j < c->njobs; j++)
    for (size_t i = 0; i < c->jobs[j]->nsds; i++)
      if (strcmp(c->jobs[j]->sds[i]->kind, "lua") == 0) return true;
  return false;
}

/* Load FILE into a finished plan, its discovery sources checked. For a Lua
 * script that defines hooks or function targets, *vm stays alive for the
 * caller (and *hooks for hooks; both NULL otherwise). Errors are
 * described in *errp. */
static int load_conf_quiet(const char *path, const char *listen, int allow_unsafe, mg_conf_t **out,
                           mg_lua_vm_t **vmp, mg_lua_hooks_t **hooksp, mg_conf_error_t *errp) {
  *vmp = NULL;
  *hooksp = NULL;
  *out = NULL;
  mg_conf_error_t err;
  memset(&err, 0, sizeof err);
  int rc;
  if (access(path, R_OK) != 0) {
    snprintf(err.file, sizeof err.file, "%s", path);
    snprintf(err.msg, sizeof err.msg, "cannot read: %s", strerror(errno));
    *errp = err;
    return MG_EIO;
  }
  if (has_suffix(path, ".lua")) {
    mg_lua_opts_t opts;
    memset(&opts, 0, sizeof opts);
    opts.listen_address = listen;
    opts.allow_unsafe = allow_unsafe != 0;
    /* The VM stays up through mg_lua_api_finish so plan errors point at
     * the script line that declared the job or destination. */
    mg_lua_vm_t *vm = NULL;
    rc = mg_lua_vm_new(&opts, &vm);
    if (rc == 0) rc = mg_lua_api_open(vm);
    if (rc == 0) rc = mg_lua_api_load(vm, path, out, &err);
    if (rc == 0) rc = mg_lua_api_finish(vm, *out, &err);
    if (rc == 0) rc = mg_lua_hooks_new(vm, *out, hooksp, &err);
    if (rc && *out) {
      mg_conf_free(*out);
      *out = NULL;
    }
    if (rc && !err.msg[0]) snprintf(err.msg, sizeof err.msg, "cannot start the Lua VM: %s", mg_err_str(rc));
    /* Function targets run in the script's VM too. */
    if (*hooksp || (rc == 0 && uses_lua_targets(*out))) *vmp = vm;
    else mg_lua_vm_free(vm);
  } else if (has_suffix(path, ".yml") || has_suffix(path, ".yaml")) {
    rc = mg_promyml_load(path, out, &err);
  } else {
    snprintf(err.file, sizeof err.file, "%s", path);
    snprintf(err.msg, sizeof err.msg, "unknown kind of file: name a Lua script *.lua or a Prometheus config *.yml/*.yaml");
    rc = MG_EINVAL;
  }
  if (rc == 0 && (rc = apply_scale(*out)) != 0) snprintf(err.msg, sizeof err.msg, "out of memory");
  if (rc == 0 && ((rc = check_all_rules(*out, &err)) != 0 || (rc = mg_sd_check_plan(*out, &err)) != 0)) {
    mg_lua_hooks_free(*hooksp);
    *hooksp = NULL;
    mg_lua_vm_free(*vmp);
    *vmp = NULL;
    mg_conf_free(*out);
    *out = NULL;
  }
  *errp = err;
  return rc;
}

static int load_conf(const char *path, const char *listen, int allow_unsafe, mg_conf_t **out, mg_lua_vm_t **vmp,
                     mg_lua_hooks_t **hooksp) {
  mg_conf_error_t err;
  int rc = load_conf_quiet(path, listen, allow_unsafe, out, vmp, hooksp, &err);
  if (rc) print_conf_error(&err);
  return rc;
}

/* ---- HTTP endpoints --------------------------------------------------------- */

static void h_metrics(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  (void)ud;
  (void)req;
  mg_http_sresp_header(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
  if (mg_metrics_render(&resp->body) != 0) resp->status = 500;
}

static void h_healthy(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  (void)ud;
  (void)req;
  mg_buf_append_str(&resp->body, "moongate is healthy.\n");
}

static void h_ready(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  app_t *a = ud;
  (void)req;
  if (a->ready && !a->stopping) {
    mg_buf_append_str(&resp->body, "moongate is ready.\n");
  } else {
    resp->status = 503;
    mg_buf_append_str(&resp->body, a->stopping ? "moongate is shutting down.\n" : "moongate is starting.\n");
  }
}

/* Process metrics with the names client libraries use, read from /proc
 * when /metrics is rendered (procfs reads do not block on disk). */
static void collect_process(void *ud) {
  app_t *a = ud;
  FILE *f = fopen("/proc/self/statm", "re");
  if (f) {
    unsigned long size, resident;
    if (fscanf(f, "%lu %lu", &size, &resident) == 2) mg_metric_set(a->m_rss, (double)resident * (double)sysconf(_SC_PAGESIZE));
    fclose(f);
  }
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                 (double)ru.ru_stime.tv_usec / 1e6;
    mg_metric_set(a->m_cpu, cpu);
  }
}

/* ---- shutdown ------------------------------------------------------------------ */

static void on_dest_drained(void *ud) {
  app_t *a = ud;
  if (--a->draining) return;
  for (size_t i = 0; i < a->ndests; i++) mg_dest_free(a->dests[i]);
  a->ndests = 0;
  mg_http_client_free(a->http);
  a->http = NULL;
  mg_loop_unwatch_signals(&a->loop);
  mg_metrics_off_collect(collect_process, a);
  MG_INFO("main", "stopped", "exit=0");
}

static void on_stop(void *ud, int signum) {
  app_t *a = ud;
  if (a->stopping) return;
  a->stopping = 1;
  MG_INFO("main", "stopping", "signal=%d drain_timeout_ms=%llu", signum, (unsigned long long)a->drain_ms);
  mg_sd_runner_stop(a->sd);
  a->sd = NULL;
  mg_scrape_free(a->scrape);
  a->scrape = NULL;
  mg_http_server_free(a->server);
  a->server = NULL;
  a->draining = a->ndests + 1;
  for (size_t i = 0; i < a->ndests; i++) mg_dest_drain(a->dests[i], a->drain_ms, on_dest_drained, a);
  on_dest_drained(a);
}

/* A discovery source reported its whole list: the engine of its plan
 * (ud) takes it. */
static void on_discovered(void *ud, size_t job, size_t source, const mg_sd_targets_t *ts) {
  mg_scrape_set_discovered(ud, job, source, ts->v, ts->n);
}

/* What a reload leaves behind until its old destinations have drained:
 * they still point into the old plan. */
typedef struct retired {
  mg_conf_t *conf;
  mg_lua_vm_t *vm;
  mg_lua_hooks_t *hooks;
  size_t draining;
} retired_t;

static void retired_release(void *ud) {
  retired_t *r = ud;
  if (r->draining && --r->draining) return;
  mg_lua_hooks_free(r->hooks);
  mg_lua_vm_free(r->vm);
  mg_conf_free(r->conf);
  mg_free(r);
}

typedef struct retire_dest {
  mg_dest_t *d;
  retired_t *r;
} retire_dest_t;

static void on_retired_dest_drained(void *ud) {
  retire_dest_t *x = ud;
  mg_dest_free(x->d);
  retired_release(x->r);
  mg_free(x);
}

/* Load the script again in a fresh VM; swap only if it loads and checks.
 * Destinations whose settings did not change keep their queues; targets
 * that stay keep their series (decisions are made again); targets that
 * went away get staleness markers. */
static int reload(app_t *a, char *msg, size_t msglen) {
  if (a->stopping) return snprintf(msg, msglen, "shutting down"), MG_ECANCELED;
  mg_conf_t *conf = NULL;
  mg_lua_vm_t *vm = NULL;
  mg_lua_hooks_t *hooks = NULL;
  mg_conf_error_t err;
  int rc = load_conf_quiet(a->path, a->listen, a->allow_unsafe, &conf, &vm, &hooks, &err);
  if (rc) {
    if (err.line) snprintf(msg, msglen, "%s:%u: %s", err.file, err.line, err.msg);
    else snprintf(msg, msglen, "%s: %s", err.file[0] ? err.file : a->path, err.msg);
    char q[1100];
    MG_ERROR("main", "reload_failed", "error=%s hint=\"the previous configuration keeps running\"",
             mg_log_q(q, sizeof q, msg, strlen(msg)));
    mg_metric_set(a->m_reload_ok, 0);
    mg_metric_inc(a->m_reloads_failed);
    snprintf(a->reload_error, sizeof a->reload_error, "%s", msg);
    return rc;
  }
  mg_dest_t **dests = mg_calloc(conf->ndests ? conf->ndests : 1, sizeof *dests);
  retired_t *r = mg_calloc(1, sizeof *r);
  bool *kept = mg_calloc(a->ndests ? a->ndests : 1, sizeof *kept);
  rc = (dests && r && kept) ? 0 : MG_ENOMEM;
  for (size_t i = 0; !rc && i < conf->ndests; i++) {
    for (size_t k = 0; k < a->ndests && !dests[i]; k++)
      if (!kept[k] && mg_conf_dest_equal(a->conf->dests[k], conf->dests[i])) {
        dests[i] = a->dests[k];
        kept[k] = true;
      }
    if (!dests[i] && !(dests[i] = mg_dest_new(&a->loop.uv, a->http, conf->dests[i], &rc)))
      snprintf(msg, msglen, "destination %s: %s", conf->dests[i]->name, mg_err_str(rc));
    else if (!rc && (rc = mg_dest_open_buffer(dests[i], a->data_dir, true)) != 0)
      snprintf(msg, msglen, "destination %s: buffer: %s", conf->dests[i]->name, mg_err_str(rc));
  }
  mg_scrape_t *scrape = rc ? NULL : mg_scrape_new(&a->loop.uv, a->http, conf, dests, conf->ndests, &rc);
  /* The new plan's discovery starts now; it reports from the loop only,
   * so after the old one stopped and the engines were paired below. */
  mg_sd_runner_t *sd = NULL;
  if (scrape && (rc = mg_sd_runner_start(&a->loop.uv, a->http, conf, vm, on_discovered, scrape, &sd)) != 0) {
    snprintf(msg, msglen, "service discovery: %s", mg_err_str(rc));
    mg_scrape_free(scrape);
    scrape = NULL;
  }
  if (!scrape) {
    /* Undo: new destinations go, kept ones stay with the old plan. */
    for (size_t i = 0; dests && i < conf->ndests; i++) {
      bool reused = false;
      for (size_t k = 0; k < a->ndests; k++) reused |= dests[i] == a->dests[k];
      if (dests[i] && !reused) mg_dest_free(dests[i]);
    }
    if (!msg[0]) snprintf(msg, msglen, "%s", mg_err_str(rc));
    MG_ERROR("main", "reload_failed", "error=\"%s\"", mg_err_str(rc));
    mg_free(dests);
    mg_free(r);
    mg_free(kept);
    mg_lua_hooks_free(hooks);
    mg_lua_vm_free(vm);
    mg_conf_free(conf);
    mg_metric_set(a->m_reload_ok, 0);
    mg_metric_inc(a->m_reloads_failed);
    return rc ? rc : MG_ENOMEM;
  }
  if (hooks) mg_scrape_set_decider(scrape, mg_lua_hooks_decide, hooks);
  /* Kept destinations now read the new plan's (identical) settings. */
  for (size_t i = 0; i < conf->ndests; i++)
    for (size_t k = 0; k < a->ndests; k++)
      if (dests[i] == a->dests[k]) mg_dest_rebind(dests[i], conf->dests[i]);
  mg_sd_runner_stop(a->sd);
  a->sd = sd;
  mg_scrape_adopt(scrape, a->scrape);
  mg_scrape_free(a->scrape);
  a->scrape = scrape;
  r->conf = a->conf;
  r->vm = a->vm;
  r->hooks = a->hooks;
  r->draining = 1;
  for (size_t k = 0; k < a->ndests; k++) {
    retire_dest_t *x = kept[k] ? NULL : mg_malloc(sizeof *x);
    if (!x) continue;
    x->d = a->dests[k];
    x->r = r;
    r->draining++;
    mg_dest_drain(x->d, a->drain_ms, on_retired_dest_drained, x);
  }
  retired_release(r);
  mg_free(kept);
  mg_free(a->dests);
  a->dests = dests;
  a->ndests = conf->ndests;
  a->conf = conf;
  a->vm = vm;
  a->hooks = hooks;
  mg_scrape_start(scrape);
  mg_metric_set(a->m_reload_ok, 1);
  a->last_reload_ms = mg_wall_ms();
  a->reload_error[0] = '\0';
  mg_metric_set(a->m_reload_ts, (double)a->last_reload_ms / 1000.0);
  MG_INFO("main", "reloaded", "config=%s jobs=%zu destinations=%zu", a->path, conf->njobs, conf->ndests);
  snprintf(msg, msglen, "reloaded");
  return 0;
}

static void on_reload(void *ud, int signum) {
  (void)signum;
  char msg[1024] = "";
  reload(ud, msg, sizeof msg);
}

static void h_status(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  app_t *a = ud;
  (void)req;
  mg_status_input_t in = {MG_VERSION, a->path,        a->started_ms, a->last_reload_ms, a->reload_error,
                          a->scrape,  a->dests,       a->ndests,     mg_wall_ms()};
  mg_http_sresp_header(resp, "Content-Type", "text/html; charset=utf-8");
  if (mg_status_render(&resp->body, &in) != 0) resp->status = 500;
}

static void h_reload(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  app_t *a = ud;
  if (a->reload_token) {
    const char *auth = mg_http_sreq_header(req, "authorization");
    size_t tl = strlen(a->reload_token);
    bool ok = auth && strncmp(auth, "Bearer ", 7) == 0 && strlen(auth + 7) == tl &&
              CRYPTO_memcmp(auth + 7, a->reload_token, tl) == 0;
    if (!ok) {
      resp->status = 401;
      mg_http_sresp_header(resp, "WWW-Authenticate", "Bearer");
      mg_buf_append_str(&resp->body, "reload needs the bearer token given by --reload-token-file\n");
      return;
    }
  }
  char msg[1024] = "";
  int rc = reload(a, msg, sizeof msg);
  resp->status = rc == 0 ? 200 : (rc == MG_ECANCELED ? 503 : 500);
  mg_buf_append_str(&resp->body, msg);
  mg_buf_append_byte(&resp->body, '\n');
}
/* ---- commands ---------------------------------------------------------------- */

typedef struct test_out {
  const mg_conf_t *conf;
  mg_buf_t line;
} test_out_t;

/* `moongate test` prints each sample's final labels and where it goes. */
static void test_trace(void *ud, const mg_label_t *labels, size_t n, uint64_t dests, const char *reason, double v) {
  test_out_t *o = ud;
  mg_buf_reset(&o->line);
  mg_str_t name = {"", 0};
  for (size_t i = 0; i < n; i++)
    if (mg_str_eq_c(labels[i].name, "__name__")) name = labels[i].value;
  mg_buf_append(&o->line, name.p, name.n);
  int first = 1;
  for (size_t i = 0; i < n; i++) {
    if (mg_str_eq_c(labels[i].name, "__name__")) continue;
    mg_buf_printf(&o->line, "%s%.*s=\"", first ? "{" : ",", (int)labels[i].name.n, labels[i].name.p);
    for (size_t k = 0; k < labels[i].value.n; k++) {
      char ch = labels[i].value.p[k];
      if (ch == '"' || ch == '\\') mg_buf_append_byte(&o->line, '\\');
      if (ch == '\n') mg_buf_append(&o->line, "\\n", 2);
      else mg_buf_append_byte(&o->line, (unsigned char)ch);
    }
    mg_buf_append_byte(&o->line, '"');
    first = 0;
  }
  if (!first) mg_buf_append_byte(&o->line, '}');
  mg_buf_append_byte(&o->line, ' ');
  mg_buf_append_double(&o->line, v);
  mg_buf_append_str(&o->line, " -> ");
  if (!dests) {
    mg_buf_printf(&o->line, "dropped (%s)", reason ? reason : "dropped");
  } else {
    int sep = 0;
    for (size_t d = 0; d < o->conf->ndests && d < 64; d++)
      if (dests >> d & 1) mg_buf_printf(&o->line, "%s%s", sep++ ? ", " : "", o->conf->dests[d]->name);
  }
  printf("%s\n", o->line.data);
}

static int read_file(const char *path, mg_buf_t *out) {
  FILE *f = fopen(path, "re");
  if (!f) return MG_EIO;
  char chunk[65536];
  size_t n;
  int rc = 0;
  while (!rc && (n = fread(chunk, 1, sizeof chunk, f)) > 0) rc = mg_buf_append(out, chunk, n);
  fclose(f);
  return rc;
}

/* Dry-run an exposition file through the script's rules: one target of
 * the chosen job (labels from --target-label), no network, no sending. */
static int cmd_test(const char *path, const char *input, const char *job_name, const char *ctype, char **tlabels,
                    size_t ntlabels, int allow_unsafe) {
  mg_conf_t *conf = NULL, *mini = NULL;
  mg_lua_vm_t *vm;
  mg_lua_hooks_t *hooks;
  mg_buf_t body;
  mg_buf_init(&body, 256u << 20);
  int exit_code = 1, rc;
  uv_loop_t loop;
  uv_loop_init(&loop);
  mg_scrape_t *scrape = NULL;
  size_t *saved = NULL;
  mg_conf_target_t **saved_targets = NULL;
  mg_conf_job_t *src = NULL;
  test_out_t out = {0};
  mg_buf_init(&out.line, 0);
  if (load_conf(path, DEFAULT_LISTEN, allow_unsafe, &conf, &vm, &hooks) != 0) goto done;
  if (read_file(input, &body) != 0) {
    fprintf(stderr, "--input %s: cannot read: %s\n", input, strerror(errno));
    goto done;
  }
  for (size_t i = 0; i < conf->njobs; i++)
    if (!job_name || strcmp(conf->jobs[i]->name, job_name) == 0) {
      src = conf->jobs[i];
      break;
    }
  if (job_name && !src) {
    fprintf(stderr, "--job %s: the script declares no such job\n", job_name);
    goto done;
  }
  if (!src) {
    fprintf(stderr, "%s: declares no scrape job to test with\n", path);
    goto done;
  }
  /* One target of the job, made from the options: the job's rules
   * (target and metric relabeling, limits) and the plan's destinations
   * apply exactly as in `run`. The plan is borrowed for the dry run: every
   * job's target list is swapped for this one target, then restored. */
  const char *addr = "test:0";
  for (size_t i = 0; i < ntlabels; i++)
    if (strncmp(tlabels[i], "instance=", 9) == 0) addr = tlabels[i] + 9;
  mini = mg_conf_new(path, conf->source);
  mg_conf_job_t *holder = mini ? mg_conf_add_job(mini, src->name) : NULL;
  mg_conf_target_t *t = holder ? mg_conf_job_add_target(holder, addr) : NULL;
  if (!t) goto done;
  for (size_t i = 0; i < ntlabels; i++) {
    char *eq = strchr(tlabels[i], '=');
    if (!eq) {
      fprintf(stderr, "--target-label %s: use NAME=VALUE\n", tlabels[i]);
      goto done;
    }
    *eq = '\0';
    if (strcmp(tlabels[i], "instance") != 0) mg_kvs_set(&t->labels, tlabels[i], eq + 1);
    *eq = '=';
  }
  saved = mg_calloc(conf->njobs, sizeof *saved);
  if (!saved) goto done;
  for (size_t i = 0; i < conf->njobs; i++) {
    saved[i] = conf->jobs[i]->ntargets;
    conf->jobs[i]->ntargets = 0;
  }
  saved_targets = src->targets;
  src->targets = holder->targets;
  src->ntargets = 1;
  scrape = mg_scrape_new(&loop, NULL, conf, NULL, conf->ndests, &rc);
  if (!scrape) goto done;
  if (mg_scrape_ntargets(scrape) == 0) {
    fprintf(stderr, "the target %s is dropped by job %s's relabel_configs\n", addr, src->name);
    goto done;
  }
  out.conf = conf;
  if (hooks) mg_scrape_set_decider(scrape, mg_lua_hooks_decide, hooks);
  mg_scrape_set_trace(scrape, test_trace, &out);
  char why[320];
  rc = mg_scrape_ingest(scrape, 0, body.data, body.len, ctype, mg_wall_ms(), why, sizeof why);
  if (rc) {
    fprintf(stderr, "%s: the scrape would fail (up=0): %s\n", input, why);
    goto done;
  }
  exit_code = 0;
done:
  mg_scrape_free(scrape);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (saved) {
    for (size_t i = 0; i < conf->njobs; i++) conf->jobs[i]->ntargets = saved[i];
    src->targets = saved_targets;
    mg_free(saved);
  }
  uv_loop_close(&loop);
  mg_buf_cleanup(&out.line);
  mg_buf_cleanup(&body);
  mg_lua_hooks_free(hooks);
  mg_lua_vm_free(vm);
  mg_conf_free(mini);
  mg_conf_free(conf);
  mg_metrics_reset();
  return exit_code;
}

static int cmd_check(const char *path, int allow_unsafe) {
  mg_conf_t *conf = NULL;
  mg_lua_vm_t *vm;
  mg_lua_hooks_t *hooks;
  if (load_conf(path, DEFAULT_LISTEN, allow_unsafe, &conf, &vm, &hooks) != 0) return 1;
  mg_conf_print(conf, stdout);
  if (hooks) printf("hooks: per-series Lua hooks defined (run once per new series)\n");
  printf("%s: OK\n", path);
  mg_lua_hooks_free(hooks);
  mg_lua_vm_free(vm);
  mg_conf_free(conf);
  return 0;
}

static int ensure_dir(const char *dir) {
  if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
    fprintf(stderr, "--data-dir %s: cannot create: %s\n", dir, strerror(errno));
    return -1;
  }
  if (access(dir, W_OK) != 0) {
    fprintf(stderr, "--data-dir %s: not writable: %s\n", dir, strerror(errno));
    return -1;
  }
  return 0;
}

/* --user NAME: fork the helper for the credential files mg_creds would
 * read here (before any script, socket, thread or loop exists), give the
 * data directory to NAME, then drop to NAME for good. */
static int run_as_user(const char *user, const char *data_dir, mg_privsep_t **out) {
  char msg[512];
  mg_privsep_user_t u;
  *out = NULL;
  if (geteuid() != 0) {
    fprintf(stderr, "--user %s: moongate must be started as root to change user (it runs as uid %u); without "
                    "--user it runs as whoever starts it\n", user, (unsigned)geteuid());
    return -1;
  }
  if (mg_privsep_lookup(user, &u, msg, sizeof msg) != 0) {
    fprintf(stderr, "--user %s: %s\n", user, msg);
    return -1;
  }
  /* "~" in AWS file names is HOME: pin root's, so that the main process,
   * as NAME, names the same files the helper serves. */
  struct passwd *pw = getenv("HOME") ? NULL : getpwuid(getuid());
  if (pw && pw->pw_dir) setenv("HOME", pw->pw_dir, 1);
  char files[MG_CREDS_ENV_FILES_MAX][MG_CREDS_PATH_MAX];
  const char *paths[MG_CREDS_ENV_FILES_MAX];
  size_t n = mg_creds_env_files(files, MG_CREDS_ENV_FILES_MAX);
  char list[1024] = "";
  for (size_t i = 0; i < n; i++) {
    paths[i] = files[i];
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? "," : "", files[i]);
  }
  if (mg_privsep_spawn(paths, n, out, msg, sizeof msg) != 0) {
    fprintf(stderr, "--user %s: cannot start the credentials helper: %s\n", user, msg);
    return -1;
  }
  int rc = mg_privsep_give_dir(data_dir, &u, msg, sizeof msg);
  if (rc) fprintf(stderr, "--data-dir %s: %s\n", data_dir, msg);
  else if ((rc = mg_privsep_drop(&u, msg, sizeof msg)) != 0) fprintf(stderr, "--user %s: %s\n", user, msg);
  if (rc) {
    mg_privsep_free(*out);
    *out = NULL;
    return -1;
  }
  char q[1100];
  MG_INFO("main", "privileges_dropped", "user=%s uid=%u gid=%u helper_pid=%d helper_files=%s", u.name,
          (unsigned)u.uid, (unsigned)u.gid, (int)mg_privsep_pid(*out), mg_log_q(q, sizeof q, list, strlen(list)));
  return 0;
}

static int cmd_run(const char *path, const char *listen, const char *data_dir, uint64_t drain_ms, int allow_unsafe,
                   const char *reload_token_file, const char *user) {
  app_t a;
  memset(&a, 0, sizeof a);
  a.drain_ms = drain_ms;
  a.path = path;
  a.listen = listen;
  a.data_dir = data_dir;
  a.allow_unsafe = allow_unsafe;
  if (reload_token_file) {
    mg_buf_t tok;
    mg_buf_init(&tok, 4096);
    int trc = read_file(reload_token_file, &tok);
    while (tok.len && (tok.data[tok.len - 1] == '\n' || tok.data[tok.len - 1] == '\r')) tok.len--;
    if (trc || !tok.len) {
      fprintf(stderr, "--reload-token-file %s: %s\n", reload_token_file, trc ? "cannot read" : "empty");
      mg_buf_cleanup_secret(&tok);
      return 1;
    }
    a.reload_token = mg_strndup(tok.data, tok.len);
    mg_buf_cleanup_secret(&tok);
  }
  /* Read as root (it may be root's alone); everything below runs as NAME. */
  if (user && run_as_user(user, data_dir, &a.privsep) != 0) {
    mg_mem_free_secret(a.reload_token);
    return 1;
  }
  if (load_conf(path, listen, allow_unsafe, &a.conf, &a.vm, &a.hooks) != 0) {
    mg_privsep_free(a.privsep);
    return 1;
  }
  if (ensure_dir(data_dir) != 0) {
    mg_privsep_free(a.privsep);
    mg_conf_free(a.conf);
    return 1;
  }
  int rc = mg_loop_init(&a.loop);
  if (rc) {
    fprintf(stderr, "event loop: %s\n", mg_err_str(rc));
    mg_privsep_free(a.privsep);
    mg_conf_free(a.conf);
    return 1;
  }
  int exit_code = 1;
  if (a.privsep) {
    if ((rc = mg_privsep_attach(a.privsep, &a.loop.uv)) != 0) {
      fprintf(stderr, "--user: the credentials helper: %s\n", mg_err_str(rc));
      goto out;
    }
    mg_creds_use_fileio(mg_privsep_fileio(a.privsep)); /* before the first destination */
  }
  mg_metric_t *bi = mg_metrics_gauge("moongate_build_info", "Version of this moongate binary.", "version", MG_VERSION, NULL);
  if (bi) mg_metric_set(bi, 1);
  a.m_rss = mg_metrics_gauge("process_resident_memory_bytes", "Resident memory size in bytes.", NULL);
  a.m_cpu = mg_metrics_counter("process_cpu_seconds_total", "User and system CPU time spent in seconds.", NULL);
  a.m_start = mg_metrics_gauge("process_start_time_seconds", "Start time of the process since the Unix epoch.", NULL);
  if (!a.m_rss || !a.m_cpu || !a.m_start) goto out;
  mg_metric_set(a.m_start, (double)mg_wall_ms() / 1000.0);
  mg_metrics_on_collect(collect_process, &a);

  a.server = mg_http_server_new(&a.loop.uv, listen, NULL, &rc);
  if (!a.server) {
    fprintf(stderr, "--listen %s: %s\n", listen, mg_err_str(rc));
    goto out;
  }
  mg_http_server_route(a.server, "GET", "/metrics", h_metrics, &a);
  mg_http_server_route(a.server, NULL, "/-/healthy", h_healthy, &a);
  mg_http_server_route(a.server, NULL, "/-/ready", h_ready, &a);
  /* POST (and PUT, as Prometheus accepts) only: a GET from a browser or a
   * crawler must not reload. */
  mg_http_server_route(a.server, "POST", "/-/reload", h_reload, &a);
  a.m_reload_ok = mg_metrics_gauge("moongate_config_last_reload_successful",
                                   "1 if the last configuration (re)load succeeded.", NULL);
  a.m_reload_ts = mg_metrics_gauge("moongate_config_last_reload_success_timestamp_seconds",
                                   "Time of the last successful configuration (re)load.", NULL);
  a.m_reloads_failed = mg_metrics_counter("moongate_config_reloads_failed_total",
                                          "Reloads refused because the new configuration did not load.", NULL);
  if (!a.m_reload_ok || !a.m_reload_ts || !a.m_reloads_failed) goto out;
  mg_metric_set(a.m_reload_ok, 1);
  a.started_ms = a.last_reload_ms = mg_wall_ms();
  mg_metric_set(a.m_reload_ts, (double)a.started_ms / 1000.0);
  mg_http_server_route(a.server, "GET", "/", h_status, &a);

  a.http = mg_http_client_new(&a.loop.uv, NULL);
  a.dests = mg_calloc(a.conf->ndests ? a.conf->ndests : 1, sizeof *a.dests);
  if (!a.http || !a.dests) goto out;
  for (size_t i = 0; i < a.conf->ndests; i++) {
    a.dests[i] = mg_dest_new(&a.loop.uv, a.http, a.conf->dests[i], &rc);
    if (!a.dests[i]) {
      fprintf(stderr, "destination %s: %s\n", a.conf->dests[i]->name, mg_err_str(rc));
      goto out;
    }
    a.ndests++;
    if ((rc = mg_dest_open_buffer(a.dests[i], data_dir, false)) != 0) {
      fprintf(stderr, "destination %s: durable buffer in %s/wal: %s%s\n", a.conf->dests[i]->name, data_dir,
              mg_err_str(rc), rc == MG_EEXISTS ? " (another moongate uses this --data-dir)" : "");
      goto out;
    }
  }
  a.scrape = mg_scrape_new(&a.loop.uv, a.http, a.conf, a.dests, a.ndests, &rc);
  if (!a.scrape) {
    fprintf(stderr, "scrape set-up: %s\n", mg_err_str(rc));
    goto out;
  }
  if (a.hooks) mg_scrape_set_decider(a.scrape, mg_lua_hooks_decide, a.hooks);
  mg_loop_watch_signals(&a.loop, on_stop, on_reload, &a);
  mg_scrape_start(a.scrape);
  if ((rc = mg_sd_runner_start(&a.loop.uv, a.http, a.conf, a.vm, on_discovered, a.scrape, &a.sd)) != 0) {
    fprintf(stderr, "service discovery: %s\n", mg_err_str(rc));
    goto out;
  }
  a.ready = 1;
  MG_INFO("main", "started", "version=%s config=%s listen=%s jobs=%zu destinations=%zu", MG_VERSION, path, listen,
          a.conf->njobs, a.conf->ndests);
  mg_loop_run(&a.loop);
  exit_code = 0;
out:
  /* Normal exit arrives here with everything already released by the
   * shutdown sequence; a failed start releases what it made. */
  mg_sd_runner_stop(a.sd);
  mg_scrape_free(a.scrape);
  mg_http_server_free(a.server);
  for (size_t i = 0; i < a.ndests; i++) mg_dest_free(a.dests[i]);
  mg_http_client_free(a.http);
  mg_metrics_off_collect(collect_process, &a);
  mg_creds_use_fileio(NULL);
  mg_privsep_free(a.privsep); /* after the destinations: their last reads complete */
  if (mg_loop_close(&a.loop) != 0) {
    MG_ERROR("main", "unclean_shutdown", "hint=\"handles were left open; please report\"");
  }
  mg_free(a.dests);
  mg_lua_hooks_free(a.hooks);
  mg_lua_vm_free(a.vm);
  mg_conf_free(a.conf);
  mg_mem_free_secret(a.reload_token);
  mg_metrics_reset();
  return exit_code;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage, stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
    printf("moongate %s\n", MG_VERSION);
    return 0;
  }
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    fputs(usage, stdout);
    return 0;
  }
  const char *file = NULL, *listen = DEFAULT_LISTEN, *data_dir = "data";
  uint64_t drain_ms = DEFAULT_DRAIN_MS;
  int allow_unsafe = 0;
  const char *shard = NULL, *ha_cluster = NULL, *ha_replica = NULL;
  const char *c_dest = NULL, *c_profile = NULL, *c_role = NULL, *c_ext = NULL, *c_region = NULL, *c_file = NULL;
  const char *input = NULL, *job = NULL, *ctype = "text/plain; version=0.0.4", *reload_token_file = NULL;
  const char *user = NULL;
  char *tlabels[64];
  size_t ntlabels = 0;
  for (int i = 2; i < argc; i++) {
    const char *arg = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(arg, "--listen") && val) listen = val, i++;
    else if (!strcmp(arg, "--data-dir") && val) data_dir = val, i++;
    else if (!strcmp(arg, "--log-level") && val) {
      if (mg_log_set_level_name(val) != 0) {
        fprintf(stderr, "--log-level %s: use debug, info, warn or error\n", val);
        return 2;
      }
      i++;
    } else if (!strcmp(arg, "--drain-timeout") && val) {
      if (mg_conf_parse_duration(val, &drain_ms) != 0) {
        fprintf(stderr, "--drain-timeout %s: not a duration (e.g. 10s, 1m)\n", val);
        return 2;
      }
      i++;
    } else if (!strcmp(arg, "--input") && val) {
      input = val, i++;
    } else if (!strcmp(arg, "--job") && val) {
      job = val, i++;
    } else if (!strcmp(arg, "--content-type") && val) {
      ctype = val, i++;
    } else if (!strcmp(arg, "--target-label") && val) {
      if (ntlabels == sizeof tlabels / sizeof *tlabels) {
        fprintf(stderr, "too many --target-label options\n");
        return 2;
      }
      tlabels[ntlabels++] = argv[++i];
    } else if (!strcmp(arg, "--reload-token-file") && val) {
      reload_token_file = val, i++;
    } else if (!strcmp(arg, "--user") && val) {
      user = val, i++;
    } else if (!strcmp(arg, "--shard") && val) {
      shard = val, i++;
    } else if (!strcmp(arg, "--ha-cluster") && val) {
      ha_cluster = val, i++;
    } else if (!strcmp(arg, "--ha-replica") && val) {
      ha_replica = val, i++;
    } else if (!strcmp(arg, "--destination") && val) {
      c_dest = val, i++;
    } else if (!strcmp(arg, "--profile") && val) {
      c_profile = val, i++;
    } else if (!strcmp(arg, "--role-arn") && val) {
      c_role = val, i++;
    } else if (!strcmp(arg, "--external-id") && val) {
      c_ext = val, i++;
    } else if (!strcmp(arg, "--region") && val) {
      c_region = val, i++;
    } else if (!strcmp(arg, "--credentials-file") && val) {
      c_file = val, i++;
    } else if (!strcmp(arg, "--sigv4-debug")) {
      mg_remote_write_sigv4_debug(true);
    } else if (!strcmp(arg, "--allow-unsafe-lua")) {
      allow_unsafe = 1;
    } else if (arg[0] == '-') {
      fprintf(stderr, "unknown or incomplete option %s\n\n%s", arg, usage);
      return 2;
    } else if (!file) {
      file = arg;
    } else {
      fprintf(stderr, "unexpected argument %s\n\n%s", arg, usage);
      return 2;
    }
  }
  if ((ha_cluster != NULL) != (ha_replica != NULL)) {
    fprintf(stderr, "--ha-cluster and --ha-replica go together\n");
    return 2;
  }
  if (shard && parse_shard(shard, &g_scale.shard_index, &g_scale.shard_count) != 0) {
    fprintf(stderr, "--shard %s: use K/N with 0 <= K < N (K may end a pod name: moongate-2/3)\n", shard);
    return 2;
  }
  g_scale.ha_cluster = ha_cluster;
  g_scale.ha_replica = ha_replica;
  if (user && strcmp(cmd, "run") != 0) {
    fprintf(stderr, "--user applies to moongate run only\n");
    return 2;
  }
  if (!strcmp(cmd, "creds")) {
    if (file) {
      mg_conf_t *conf = NULL;
      mg_lua_vm_t *vm;
      mg_lua_hooks_t *hooks;
      if (load_conf(file, DEFAULT_LISTEN, allow_unsafe, &conf, &vm, &hooks) != 0) return 1;
      const mg_conf_dest_t *d = NULL;
      for (size_t i = 0; i < conf->ndests && !d; i++)
        if (conf->dests[i]->sigv4.enabled && (!c_dest || !strcmp(conf->dests[i]->name, c_dest))) d = conf->dests[i];
      int rc = 1;
      if (!d) {
        fprintf(stderr, "%s: no SigV4 destination%s%s\n", file, c_dest ? " named " : "", c_dest ? c_dest : "");
      } else {
        /* The region as the destination signs with it. */
        char region[64] = "";
        const char *host = d->url ? strstr(d->url, "://aps-workspaces.") : NULL;
        if (d->sigv4.region) snprintf(region, sizeof region, "%s", d->sigv4.region);
        else if (host) snprintf(region, sizeof region, "%.*s", (int)strcspn(host + 18, "."), host + 18);
        printf("destination: %s\n", d->name);
        rc = mg_credscli_run(&d->sigv4.creds, region[0] ? region : c_region, 30000);
      }
      mg_lua_hooks_free(hooks);
      mg_lua_vm_free(vm);
      mg_conf_free(conf);
      mg_metrics_reset();
      return rc;
    }
    mg_conf_creds_t base = {0}, role = {0};
    base.kind = (c_profile || c_file) ? MG_CREDS_PROFILE : MG_CREDS_CHAIN;
    base.profile = (char *)c_profile;
    base.credentials_file = (char *)c_file;
    role.kind = MG_CREDS_ASSUME_ROLE;
    role.role_arn = (char *)c_role;
    role.external_id = (char *)c_ext;
    role.source = &base;
    int rc = mg_credscli_run(c_role ? &role : &base, c_region, 30000);
    mg_metrics_reset();
    return rc;
  }
  if (!strcmp(cmd, "test")) {
    if (!file || !input) {
      fprintf(stderr, "moongate test: name a script or prometheus.yml and --input FILE\n\n%s", usage);
      return 2;
    }
    return cmd_test(file, input, job, ctype, tlabels, ntlabels, allow_unsafe);
  }
  if (!strcmp(cmd, "run") || !strcmp(cmd, "check")) {
    if (!file) {
      fprintf(stderr, "moongate %s: name a script or prometheus.yml\n\n%s", cmd, usage);
      return 2;
    }
    return !strcmp(cmd, "run") ? cmd_run(file, listen, data_dir, drain_ms, allow_unsafe, reload_token_file, user) : cmd_check(file, allow_unsafe);
  }
  fprintf(stderr, "unknown command %s\n\n%s", cmd, usage);
  return 2;
}
