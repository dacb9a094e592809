/* mg_sd_lua: the "lua" discovery provider. Calls the script's targets
 * function on a timer (inside lua_cpcall, through mg_lua_call) and turns
 * its result into a target list. Owns its timer; borrows the VM, which
 * outlives it (the plan keeps it). Frees itself in the close callback. */
#include "mg_sd_lua.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_lua.h"
#include "mg_lua_hooks.h"
#include "mg_mem.h"
#include "mg_metrics.h"
#include "mg_parse.h"

/* Options: refresh, and labels (the job's labels, for the function's
 * "host:port" entries; a MAP of texts). */
static int read_opts(const mg_conf_sd_t *sd, uint64_t *ms, mg_kvs_t *labels, char *why, size_t whylen) {
  const mg_conf_val_t *o = sd->opts;
  for (size_t i = 0; i < o->n; i++)
    if (strcmp(o->keys[i], "refresh") != 0 && strcmp(o->keys[i], "labels") != 0)
      return snprintf(why, whylen, "function targets: unknown option \"%.64s\" (use refresh)", o->keys[i]), MG_ECONFIG;
  *ms = MG_SD_LUA_DEFAULT_REFRESH_MS;
  const mg_conf_val_t *r = mg_conf_val_get(o, "refresh");
  if (r && (r->type != MG_CONF_VAL_SCALAR || mg_conf_parse_duration(r->s, ms) != 0 || !*ms))
    return snprintf(why, whylen, "function targets: refresh must be a duration above 0 (e.g. \"30s\")"), MG_ECONFIG;
  const mg_conf_val_t *l = mg_conf_val_get(o, "labels");
  if (l && l->type != MG_CONF_VAL_MAP)
    return snprintf(why, whylen, "function targets: labels must be a map"), MG_ECONFIG;
  for (size_t i = 0; l && i < l->n; i++) {
    if (l->v[i]->type != MG_CONF_VAL_SCALAR || !mg_parse_valid_label_name(mg_str(l->keys[i])))
      return snprintf(why, whylen, "function targets: labels must map label names to values"), MG_ECONFIG;
    if (labels && mg_kvs_add(labels, l->keys[i], l->v[i]->s) != 0) return MG_ENOMEM;
  }
  return 0;
}

static int lua_check(const mg_conf_sd_t *sd, char *why, size_t whylen) {
  if (sd->lua_ref < 0)
    return snprintf(why, whylen,
                    "lua discovery is a function in a Lua script (mg.scrape{targets = function ...}), "
                    "not a prometheus.yml section"),
           MG_ECONFIG;
  uint64_t ms;
  return read_opts(sd, &ms, NULL, why, whylen);
}

typedef struct sd_lua {
  const mg_sd_env_t *env;
  mg_lua_vm_t *vm;
  int ref;
  mg_sd_update_fn update;
  void *ud;
  uv_timer_t timer;
  bool closing;
  mg_lua_budget_t budget;
  char last_bad[256]; /* the result problem last logged; "" when the last call was good */
  mg_metric_t *m_bad;
  mg_kvs_t labels; /* for "host:port" entries */
} sd_lua_t;

typedef struct call {
  sd_lua_t *l;
  mg_sd_targets_t *out;
  char bad[256]; /* what is wrong with the result; "" when fine */
  bool failed;   /* the function raised or ran out of budget (mg_lua_call logged and counted it) */
} call_t;

__attribute__((format(printf, 2, 3))) static int bad(call_t *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->bad, sizeof c->bad, fmt, ap);
  va_end(ap);
  return -1;
}

/* A string without NUL bytes at idx, or NULL. Never allocates. */
static const char *text_at(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TSTRING) return NULL;
  size_t n;
  const char *s = lua_tolstring(L, idx, &n);
  return strlen(s) == n ? s : NULL;
}

/* Entries 1..n and nothing else: a list. */
static bool is_list(lua_State *L, int idx, size_t *n) {
  *n = lua_objlen(L, idx);
  size_t keys = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    keys++;
    lua_pop(L, 1);
  }
  return keys == *n;
}

static int add_target(call_t *c, const char *address, lua_State *L, int labels) {
  if (!*address) return bad(c, "an empty target address");
  if (c->out->n >= MG_CONF_MAX_TARGETS) return bad(c, "more than %d targets", MG_CONF_MAX_TARGETS);
  mg_conf_target_t *t = mg_sd_targets_add(c->out, address);
  if (!t) return bad(c, "out of memory");
  if (!labels) {
    for (size_t i = 0; i < c->l->labels.n; i++)
      if (mg_kvs_add(&t->labels, c->l->labels.v[i].name, c->l->labels.v[i].value) != 0) return bad(c, "out of memory");
    return 0;
  }
  lua_pushnil(L);
  while (lua_next(L, labels)) {
    const char *k = text_at(L, -2), *v = text_at(L, -1);
    if (!k || !v) return lua_pop(L, 2), bad(c, "labels must map string names to string values");
    if (!mg_parse_valid_label_name(mg_str(k))) return lua_pop(L, 2), bad(c, "invalid label name \"%.64s\"", k);
    if (strcmp(k, "__address__") != 0 && mg_kvs_set(&t->labels, k, v) != 0)
      return lua_pop(L, 2), bad(c, "out of memory");
    lua_pop(L, 1);
  }
  return 0;
}

/* One {targets = {...}, labels = {...}} entry at idx. */
static int read_group(call_t *c, lua_State *L, int idx, size_t pos) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *k = text_at(L, -2);
    lua_pop(L, 1);
    if (!k || (strcmp(k, "targets") != 0 && strcmp(k, "labels") != 0))
      return lua_pop(L, 1), bad(c, "entry %zu: a group has only targets and labels", pos);
  }
  lua_getfield(L, idx, "labels");
  int labels = lua_gettop(L);
  if (lua_isnil(L, labels))
    labels = 0;
  else if (!lua_istable(L, labels))
    return bad(c, "entry %zu: labels must be a table", pos);
  lua_getfield(L, idx, "targets");
  int list = lua_gettop(L);
  size_t n;
  if (!lua_istable(L, list) || !is_list(L, list, &n))
    return bad(c, "entry %zu: targets must be a list of \"host:port\"", pos);
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, list, (int)i);
    const char *a = text_at(L, -1);
    if (!a) return bad(c, "entry %zu: targets[%zu] is not a string", pos, i);
    if (add_target(c, a, L, labels) != 0) return -1;
    lua_pop(L, 1);
  }
  return 0;
}

static int read_result(call_t *c, lua_State *L, int res) {
  size_t n;
  if (!lua_istable(L, res) || !is_list(L, res, &n))
    return bad(c, "return a list: { \"host:port\", ... } or { {targets = {...}, labels = {...}}, ... }");
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, res, (int)i);
    int e = lua_gettop(L);
    const char *a = text_at(L, e);
    int rc = a                   ? add_target(c, a, L, 0)
             : lua_istable(L, e) ? read_group(c, L, e, i)
                                 : bad(c, "entry %zu: not a string or a group", i);
    if (rc) return rc;
    lua_settop(L, res);
  }
  return 0;
}

/* Building the result list allocates in Lua (the call) and reading it may
 * too: an allocation failure outside a protected call is fatal in LuaJIT. */
static int call_protected(lua_State *L) {
  call_t *c = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->l->ref);
  if (mg_lua_call(c->l->vm, "targets", 0, 1, &c->l->budget) != 0) {
    c->failed = true;
    return 0;
  }
  read_result(c, L, lua_gettop(L));
  return 0;
}

static void on_tick(uv_timer_t *h) {
  sd_lua_t *l = h->data;
  if (l->closing) return;
  mg_sd_targets_t ts = {0};
  call_t c = {.l = l, .out = &ts};
  lua_State *L = mg_lua_vm_state(l->vm);
  int top = lua_gettop(L);
  if (lua_cpcall(L, call_protected, &c) != 0) snprintf(c.bad, sizeof c.bad, "out of memory in the Lua VM");
  lua_settop(L, top);
  if (c.bad[0]) {
    mg_metric_inc(l->m_bad);
    if (strcmp(c.bad, l->last_bad) != 0) {
      char q[300];
      MG_WARN("lua", "targets_bad_result",
              "job=%s problem=%s hint=\"the previous targets are kept; see "
              "docs/lua-api.md, Function targets\"",
              l->env->job->name, mg_log_q(q, sizeof q, c.bad, strlen(c.bad)));
      snprintf(l->last_bad, sizeof l->last_bad, "%s", c.bad);
    }
  }
  if (c.failed || c.bad[0]) {
    mg_sd_targets_cleanup(&ts);
    l->update(l->ud, false, NULL);
    return;
  }
  l->last_bad[0] = '\0';
  l->update(l->ud, true, &ts);
  mg_sd_targets_cleanup(&ts);
}

static void on_closed(uv_handle_t *h) {
  sd_lua_t *l = h->data;
  mg_kvs_cleanup(&l->labels);
  mg_free(l);
}

static void lua_stop(void *state) {
  sd_lua_t *l = state;
  if (!l || l->closing) return;
  l->closing = true;
  uv_close((uv_handle_t *)&l->timer, on_closed);
}

static int lua_start(const mg_sd_env_t *env, const mg_conf_sd_t *sd, mg_sd_update_fn update, void *ud, void **state) {
  char why[300];
  uint64_t refresh_ms;
  if (!env->lua || sd->lua_ref < 0) return MG_EINVAL;
  sd_lua_t *l = mg_calloc(1, sizeof *l);
  if (!l) return MG_ENOMEM;
  int rc = read_opts(sd, &refresh_ms, &l->labels, why, sizeof why);
  if (rc) {
    mg_kvs_cleanup(&l->labels);
    mg_free(l);
    return rc == MG_ENOMEM ? rc : MG_EINVAL;
  }
  l->env = env;
  l->vm = env->lua;
  l->ref = sd->lua_ref;
  l->update = update;
  l->ud = ud;
  l->budget = (mg_lua_budget_t){MG_LUA_HOOK_MAX_INSTRUCTIONS, MG_LUA_HOOK_MAX_MS, 0};
  l->m_bad = mg_metrics_counter("moongate_lua_errors_total",
                                "Errors and budget stops in script functions called by moongate, by reason.", "reason",
                                "result", NULL);
  if (!l->m_bad) l->m_bad = mg_metrics_dummy();
  uv_timer_init(env->loop, &l->timer);
  l->timer.data = l;
  /* First call from the loop, never from inside start. */
  uv_timer_start(&l->timer, on_tick, 0, refresh_ms);
  *state = l;
  return 0;
}

const mg_sd_ops_t mg_sd_lua_ops = {"lua", lua_check, lua_start, lua_stop};
