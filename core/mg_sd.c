/* mg_sd: the table of discovery providers, target lists they report, the
 * load-time check of every discovery source of a plan, and the runner that
 * starts one provider per source and forwards its reports to a sink.
 * Owns the runner and the lists it builds; providers own their state. */
#include "mg_sd.h"

#include <stdio.h>
#include <string.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_metrics.h"
#include "mg_sd_dns.h"
#include "mg_sd_ec2.h"
#include "mg_sd_http.h"
#include "mg_sd_file.h"
#include "mg_sd_k8s.h"
#include "mg_sd_lua.h"

/* One line per provider; the table ends with NULL. */
static const mg_sd_ops_t *const providers[] = {
    &mg_sd_dns_ops,
    &mg_sd_ec2_ops,
    &mg_sd_http_ops,
    &mg_sd_kubernetes_ops,
    &mg_sd_file_ops,
    &mg_sd_lua_ops,
    NULL,
};

mg_conf_target_t *mg_sd_targets_add(mg_sd_targets_t *ts, const char *address) {
  if (ts->n == ts->cap) {
    size_t cap = ts->cap ? ts->cap * 2 : 8;
    mg_conf_target_t *v = mg_reallocarray(ts->v, cap, sizeof *v);
    if (!v) return NULL;
    ts->v = v;
    ts->cap = cap;
  }
  mg_conf_target_t *t = &ts->v[ts->n];
  memset(t, 0, sizeof *t);
  if (!(t->address = mg_strdup(address ? address : ""))) return NULL;
  ts->n++;
  return t;
}

void mg_sd_targets_cleanup(mg_sd_targets_t *ts) {
  if (!ts) return;
  for (size_t i = 0; i < ts->n; i++) {
    mg_free(ts->v[i].address);
    mg_kvs_cleanup(&ts->v[i].labels);
  }
  mg_free(ts->v);
  memset(ts, 0, sizeof *ts);
}

const mg_sd_ops_t *mg_sd_find(const char *kind) {
  if (!kind) return NULL;
  for (size_t i = 0; providers[i]; i++)
    if (strcmp(providers[i]->kind, kind) == 0) return providers[i];
  return NULL;
}

/* Fill *err for a source of job j; the message is one line. */
static int sd_fail(const mg_conf_t *c, const mg_conf_job_t *j, const mg_conf_sd_t *sd, mg_conf_error_t *err,
                   const char *what) {
  if (!err) return MG_ECONFIG;
  snprintf(err->file, sizeof err->file, "%s", c->path ? c->path : "");
  err->line = sd->line;
  snprintf(err->msg, sizeof err->msg, "job \"%.256s\": %s", j->name ? j->name : "", what);
  for (char *m = err->msg; *m; m++)
    if ((unsigned char)*m < 0x20 || *m == 0x7f) *m = '?';
  return MG_ECONFIG;
}

static int check_source(const mg_conf_t *c, const mg_conf_job_t *j, const mg_conf_sd_t *sd, mg_conf_error_t *err) {
  char why[400];
  const mg_sd_ops_t *ops = mg_sd_find(sd->kind);
  if (!ops) {
    snprintf(why, sizeof why, "unknown discovery kind \"%.64s\" (%.64s_sd_configs is not supported)",
             sd->kind ? sd->kind : "", sd->kind ? sd->kind : "");
    return sd_fail(c, j, sd, err, why);
  }
  why[0] = '\0';
  if (!ops->check || ops->check(sd, why, sizeof why) == 0) return 0;
  if (!why[0]) snprintf(why, sizeof why, "%s discovery: invalid options", ops->kind);
  return sd_fail(c, j, sd, err, why);
}

int mg_sd_check_plan(const mg_conf_t *c, mg_conf_error_t *err) {
  for (size_t j = 0; j < c->njobs; j++)
    for (size_t i = 0; i < c->jobs[j]->nsds; i++) {
      int rc = check_source(c, c->jobs[j], c->jobs[j]->sds[i], err);
      if (rc != 0) return rc;
    }
  return 0;
}

/* ---- runner ------------------------------------------------------------- */

typedef struct running {
  struct mg_sd_runner *r;
  const mg_sd_ops_t *ops;
  void *state;
  mg_sd_env_t env; /* providers may keep a pointer to it until stop */
  size_t job, source;
  mg_metric_t *failures;
} running_t;

struct mg_sd_runner {
  running_t *v;
  size_t n;
  mg_sd_sink_fn sink;
  void *ud;
};

static void on_update(void *ud, bool ok, const mg_sd_targets_t *ts) {
  running_t *p = ud;
  if (!ok || !ts) {
    mg_metric_inc(p->failures);
    return;
  }
  p->r->sink(p->r->ud, p->job, p->source, ts);
}

void mg_sd_runner_stop(mg_sd_runner_t *r) {
  if (!r) return;
  for (size_t i = r->n; i-- > 0;)
    if (r->v[i].state) r->v[i].ops->stop(r->v[i].state);
  mg_free(r->v);
  mg_free(r);
}

static int start_one(mg_sd_runner_t *r, const mg_sd_env_t *env, size_t j, size_t i) {
  const mg_conf_sd_t *sd = env->job->sds[i];
  running_t *p = &r->v[r->n];
  p->r = r;
  p->job = j;
  p->source = i;
  p->ops = mg_sd_find(sd->kind);
  if (!p->ops) return MG_EINVAL; /* mg_sd_check_plan refused it already */
  p->failures = mg_metrics_counter("moongate_sd_refresh_failures_total",
                                   "Discovery refreshes that failed (the previous targets stay).", "kind",
                                   p->ops->kind, NULL);
  if (!p->failures) p->failures = mg_metrics_dummy();
  p->env = *env;
  int rc = p->ops->start(&p->env, sd, on_update, p, &p->state);
  if (rc) {
    MG_ERROR("sd", "start_failed", "job=%s kind=%s err=%s", env->job->name, sd->kind, mg_err_name(rc));
    p->state = NULL;
    return rc;
  }
  r->n++;
  return 0;
}

int mg_sd_runner_start(uv_loop_t *loop, mg_http_client_t *http, const mg_conf_t *conf, void *lua, mg_sd_sink_fn sink,
                       void *ud, mg_sd_runner_t **out) {
  *out = NULL;
  size_t total = 0;
  for (size_t j = 0; j < conf->njobs; j++) total += conf->jobs[j]->nsds;
  if (!total) return 0;
  mg_sd_runner_t *r = mg_calloc(1, sizeof *r);
  /* Entries never move once started: providers hold pointers to them. */
  if (!r || !(r->v = mg_calloc(total, sizeof *r->v))) {
    mg_free(r);
    return MG_ENOMEM;
  }
  r->sink = sink;
  r->ud = ud;
  for (size_t j = 0; j < conf->njobs; j++) {
    mg_sd_env_t env = {loop, http, conf, conf->jobs[j], NULL};
    for (size_t i = 0; i < conf->jobs[j]->nsds; i++) {
      env.lua = strcmp(conf->jobs[j]->sds[i]->kind, "lua") == 0 ? lua : NULL;
      int rc = start_one(r, &env, j, i);
      if (rc) {
        mg_sd_runner_stop(r);
        return rc;
      }
    }
  }
  MG_INFO("sd", "started", "sources=%zu", r->n);
  *out = r;
  return 0;
}
