/* main: the command line and the wiring of modules into a running
 * gateway. Owns the process-wide objects (loop, HTTP client and server,
 * destinations, scrape engine) and their shutdown order; no logic of its
 * own beyond that. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mg_conf.h"
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
#include "mg_promyml.h"
#include "mg_remote_write.h"
#include "mg_scrape.h"

#define DEFAULT_LISTEN "127.0.0.1:9464"
#define DEFAULT_DRAIN_MS 10000

static const char usage[] =
    "moongate " MG_VERSION " - scrape Prometheus targets, route with Lua, remote_write (SigV4-ready)\n"
    "\n"
    "Usage:\n"
    "  moongate run FILE [--listen ADDR] [--data-dir DIR] [--log-level LEVEL] [--drain-timeout DUR]\n"
    "               [--allow-unsafe-lua]\n"
    "  moongate check FILE [--allow-unsafe-lua]\n"
    "  moongate test FILE --input EXPOSITION [--job NAME] [--target-label NAME=VALUE ...]\n"
    "                [--content-type TYPE]   print where each series would go, and why\n"
    "  moongate --version | --help\n"
    "\n"
    "FILE is a Lua script (*.lua) or a Prometheus configuration (*.yml, *.yaml).\n"
    "  --listen ADDR        own HTTP endpoints (/metrics, /-/healthy, /-/ready); default " DEFAULT_LISTEN "\n"
    "  --data-dir DIR       state directory (created if missing); default ./data\n"
    "  --log-level LEVEL    debug, info, warn or error; default info\n"
    "  --drain-timeout DUR  on SIGTERM, keep sending for at most DUR; default 10s\n"
    "  --allow-unsafe-lua   give scripts io and os (off by default: scripts are sandboxed)\n";

typedef struct app {
  mg_loop_t loop;
  mg_conf_t *conf;
  mg_lua_vm_t *vm; /* kept while the script's hooks are in use */
  mg_lua_hooks_t *hooks;
  mg_http_client_t *http;
  mg_http_server_t *server;
  mg_dest_t **dests;
  size_t ndests;
  mg_scrape_t *scrape;
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

/* Load FILE into a finished plan. For a Lua script that defines hooks,
 * *vm and *hooks stay alive for the caller (both NULL otherwise). */
static int load_conf(const char *path, const char *listen, int allow_unsafe, mg_conf_t **out, mg_lua_vm_t **vmp,
                     mg_lua_hooks_t **hooksp) {
  *vmp = NULL;
  *hooksp = NULL;
  mg_conf_error_t err;
  memset(&err, 0, sizeof err);
  int rc;
  if (access(path, R_OK) != 0) {
    fprintf(stderr, "%s: cannot read: %s\n", path, strerror(errno));
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
    if (*hooksp) *vmp = vm;
    else mg_lua_vm_free(vm);
  } else if (has_suffix(path, ".yml") || has_suffix(path, ".yaml")) {
    rc = mg_promyml_load(path, out, &err);
  } else {
    fprintf(stderr, "%s: unknown kind of file: name a Lua script *.lua or a Prometheus config *.yml/*.yaml\n", path);
    return MG_EINVAL;
  }
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
  mg_scrape_free(a->scrape);
  a->scrape = NULL;
  mg_http_server_free(a->server);
  a->server = NULL;
  a->draining = a->ndests + 1;
  for (size_t i = 0; i < a->ndests; i++) mg_dest_drain(a->dests[i], a->drain_ms, on_dest_drained, a);
  on_dest_drained(a);
}

static void on_reload(void *ud, int signum) {
  (void)ud;
  (void)signum;
  MG_WARN("main", "reload_unsupported", "hint=\"this version applies a changed script only on restart\"");
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
  mg_buf_printf(&o->line, " %.17g -> ", v);
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
  test_out_t out = {0};
  mg_buf_init(&out.line, 0);
  if (load_conf(path, DEFAULT_LISTEN, allow_unsafe, &conf, &vm, &hooks) != 0) goto done;
  if (read_file(input, &body) != 0) {
    fprintf(stderr, "--input %s: cannot read: %s\n", input, strerror(errno));
    goto done;
  }
  const mg_conf_job_t *src = NULL;
  for (size_t i = 0; i < conf->njobs; i++)
    if (!job_name || strcmp(conf->jobs[i]->name, job_name) == 0) {
      src = conf->jobs[i];
      break;
    }
  if (job_name && !src) {
    fprintf(stderr, "--job %s: the script declares no such job\n", job_name);
    goto done;
  }
  mini = mg_conf_new(path, conf->source);
  mg_conf_job_t *j = mini ? mg_conf_add_job(mini, src ? src->name : "test") : NULL;
  const char *addr = "test:0";
  for (size_t i = 0; i < ntlabels; i++)
    if (strncmp(tlabels[i], "instance=", 9) == 0) addr = tlabels[i] + 9;
  mg_conf_target_t *t = j ? mg_conf_job_add_target(j, addr) : NULL;
  if (!t) goto done;
  for (size_t i = 0; i < conf->external_labels.n; i++)
    mg_kvs_add(&mini->external_labels, conf->external_labels.v[i].name, conf->external_labels.v[i].value);
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
  if (src) {
    j->honor_labels = src->honor_labels;
    j->honor_timestamps = src->honor_timestamps;
    j->sample_limit = src->sample_limit;
    j->label_limit = src->label_limit;
    j->label_name_length_limit = src->label_name_length_limit;
    j->label_value_length_limit = src->label_value_length_limit;
  } else {
    j->honor_timestamps = true;
  }
  mg_conf_set_str(&j->scheme, "http");
  mg_conf_set_str(&j->metrics_path, "/metrics");
  scrape = mg_scrape_new(&loop, NULL, mini, NULL, conf->ndests, &rc);
  if (!scrape) goto done;
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

static int cmd_run(const char *path, const char *listen, const char *data_dir, uint64_t drain_ms, int allow_unsafe) {
  app_t a;
  memset(&a, 0, sizeof a);
  a.drain_ms = drain_ms;
  if (load_conf(path, listen, allow_unsafe, &a.conf, &a.vm, &a.hooks) != 0) return 1;
  if (ensure_dir(data_dir) != 0) {
    mg_conf_free(a.conf);
    return 1;
  }
  int rc = mg_loop_init(&a.loop);
  if (rc) {
    fprintf(stderr, "event loop: %s\n", mg_err_str(rc));
    mg_conf_free(a.conf);
    return 1;
  }
  int exit_code = 1;
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
  }
  a.scrape = mg_scrape_new(&a.loop.uv, a.http, a.conf, a.dests, a.ndests, &rc);
  if (!a.scrape) {
    fprintf(stderr, "scrape set-up: %s\n", mg_err_str(rc));
    goto out;
  }
  if (a.hooks) mg_scrape_set_decider(a.scrape, mg_lua_hooks_decide, a.hooks);
  mg_loop_watch_signals(&a.loop, on_stop, on_reload, &a);
  mg_scrape_start(a.scrape);
  a.ready = 1;
  MG_INFO("main", "started", "version=%s config=%s listen=%s jobs=%zu destinations=%zu", MG_VERSION, path, listen,
          a.conf->njobs, a.conf->ndests);
  mg_loop_run(&a.loop);
  exit_code = 0;
out:
  /* Normal exit arrives here with everything already released by the
   * shutdown sequence; a failed start releases what it made. */
  mg_scrape_free(a.scrape);
  mg_http_server_free(a.server);
  for (size_t i = 0; i < a.ndests; i++) mg_dest_free(a.dests[i]);
  mg_http_client_free(a.http);
  mg_metrics_off_collect(collect_process, &a);
  if (mg_loop_close(&a.loop) != 0) {
    MG_ERROR("main", "unclean_shutdown", "hint=\"handles were left open; please report\"");
  }
  mg_free(a.dests);
  mg_lua_hooks_free(a.hooks);
  mg_lua_vm_free(a.vm);
  mg_conf_free(a.conf);
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
  const char *input = NULL, *job = NULL, *ctype = "text/plain; version=0.0.4";
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
    return !strcmp(cmd, "run") ? cmd_run(file, listen, data_dir, drain_ms, allow_unsafe) : cmd_check(file, allow_unsafe);
  }
  fprintf(stderr, "unknown command %s\n\n%s", cmd, usage);
  return 2;
}
