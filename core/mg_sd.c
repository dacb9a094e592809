/* mg_sd: the table of discovery providers, target lists they report, and
 * the load-time check of every discovery source of a plan. Owns only the
 * lists it builds; providers own their own state. */
#include "mg_sd.h"

#include <stdio.h>
#include <string.h>

#include "mg_err.h"
#include "mg_mem.h"

/* One line per provider; the table ends with NULL. */
static const mg_sd_ops_t *const providers[] = {
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
