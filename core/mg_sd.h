/* mg_sd: service discovery. A job's targets come from its static list plus
 * any number of discovery sources (mg_conf_sd_t: file, http, dns,
 * kubernetes, ec2, a Lua function). Each source is run by a provider that
 * watches or polls and reports the whole current target list of that
 * source whenever it changes; mg_sd hands the job's merged list to the
 * scrape engine, which starts new targets, retires vanished ones (with
 * staleness markers) and keeps the series tables of unchanged ones.
 * Owns the running providers; borrows the loop, HTTP client and plan. */
#ifndef MG_SD_H
#define MG_SD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "mg_conf.h"
#include "mg_http_client.h"

/* What a provider reports: every target of its source, each with its own
 * labels. address is __address__ (host:port); labels hold the group labels
 * and the provider's __meta_* labels (Prometheus names and values), never
 * __address__ itself. Providers build it with mg_sd_targets_add and free it
 * with mg_sd_targets_cleanup after the update callback returned (the
 * callback copies what it keeps). */
typedef struct mg_sd_targets {
  mg_conf_target_t *v;
  size_t n, cap;
} mg_sd_targets_t;

/* Append a target (address copied) and return it to add labels to with
 * mg_kvs_add; NULL on OOM. */
mg_conf_target_t *mg_sd_targets_add(mg_sd_targets_t *ts, const char *address);
void mg_sd_targets_cleanup(mg_sd_targets_t *ts);

/* A provider's report. ok = false means the refresh failed: the provider
 * logs why (once per distinct error, no secrets); the runner counts it in
 * moongate_sd_refresh_failures_total{kind} (providers do not count it
 * themselves) and the previous list stays, as in Prometheus; ts is NULL
 * then. Called on the loop thread, never from inside start. */
typedef void (*mg_sd_update_fn)(void *ud, bool ok, const mg_sd_targets_t *ts);

/* Everything a provider may use (http also serves cloud APIs and their
 * credential providers). The env passed to start stays valid until
 * stop returns (a provider may keep the pointer). */
typedef struct mg_sd_env {
  uv_loop_t *loop;
  mg_http_client_t *http;
  const mg_conf_t *conf;   /* the whole plan (external settings, paths) */
  const mg_conf_job_t *job;
  void *lua;               /* mg_lua_vm_t * for MG_SD_LUA sources, else NULL */
} mg_sd_env_t;

/* One kind of source. check validates the options at load time (for
 * `moongate check` and mg_conf_finish): 0, or MG_ECONFIG with a message
 * naming the field in why. start begins discovery and must report the
 * first list (or a failure) soon after; stop cancels everything, and the
 * update callback is never called after stop returns. */
typedef struct mg_sd_ops {
  const char *kind; /* as in mg_conf_sd_t.kind: "file", "http", "dns", "kubernetes", "ec2", "lua" */
  int (*check)(const mg_conf_sd_t *sd, char *why, size_t whylen);
  int (*start)(const mg_sd_env_t *env, const mg_conf_sd_t *sd, mg_sd_update_fn update, void *ud, void **state);
  void (*stop)(void *state);
} mg_sd_ops_t;

/* The provider for a kind, or NULL when there is none. */
const mg_sd_ops_t *mg_sd_find(const char *kind);

/* Validate every discovery source of a finished plan (unknown kind, bad
 * options): 0, or MG_ECONFIG with *err filled (file, the source's line).
 * Loaders' callers (run, check, test, reload) call it after mg_conf_finish;
 * mg_conf itself knows nothing of providers. */
int mg_sd_check_plan(const mg_conf_t *c, mg_conf_error_t *err);

/* The running providers of a plan: one per (job, source). */
typedef struct mg_sd_runner mg_sd_runner_t;

/* Where a runner delivers a source's whole current list: job and source
 * index into conf->jobs[job]->sds[source]. Not called for failures. ts is
 * borrowed for the call. */
typedef void (*mg_sd_sink_fn)(void *ud, size_t job, size_t source, const mg_sd_targets_t *ts);

/* Start every discovery source of a checked plan (lua: the plan's
 * mg_lua_vm_t *, may be NULL when no source is "lua"). 0 with *out set
 * (NULL when the plan has no sources), or the first provider's start
 * error (logged; the ones already started are stopped). conf, http, lua
 * and the sink's target must outlive the runner. */
int mg_sd_runner_start(uv_loop_t *loop, mg_http_client_t *http, const mg_conf_t *conf, void *lua, mg_sd_sink_fn sink,
                       void *ud, mg_sd_runner_t **out);
/* Stop every provider (the sink is not called afterwards) and free. */
void mg_sd_runner_stop(mg_sd_runner_t *r);

#endif
