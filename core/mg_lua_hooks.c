/* mg_lua_hooks: calls mg.relabel / mg.filter / mg.route for a new series.
 * The series table handed to Lua is built inside lua_cpcall (building
 * tables allocates, and an allocation failure outside a protected call is
 * fatal in LuaJIT); each hook runs through mg_lua_call under its budget. */
#include "mg_lua_hooks.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_lua_api.h"
#include "mg_mem.h"
#include "mg_metrics.h"
#include "mg_parse.h"

#define MAX_HOOK_LABELS 512
/* Bytes of label text one relabel hook may return. */
#define MAX_HOOK_LABEL_BYTES (64u << 10)

enum { HOOK_RELABEL, HOOK_FILTER, HOOK_ROUTE, NHOOKS };
static const char *const hook_names[NHOOKS] = {"relabel", "filter", "route"};

struct mg_lua_hooks {
  mg_lua_vm_t *vm;
  int ref[NHOOKS]; /* LUA_NOREF when the script has no such hook */
  size_t ndests;
  uint64_t all;
  bool fallback_set;
  uint64_t fallback; /* destination mask used when a hook fails */
  mg_lua_budget_t budget;
  mg_buf_t strings; /* label text returned by the relabel hook */
  mg_label_t labels[MAX_HOOK_LABELS];
  unsigned long long last_log_ms;
  mg_metric_t *m_bad_result;
};

typedef struct call_ctx {
  mg_lua_hooks_t *h;
  const mg_series_view_t *in;
  mg_series_decision_t *out;
  const char *failure; /* set when a hook failed: the fallback applies */
  bool logged;         /* mg_lua_call already logged and counted it */
} call_ctx_t;

static const char *kind_name(mg_metric_kind_t k) {
  switch (k) {
  case MG_MTYPE_COUNTER: return "counter";
  case MG_MTYPE_GAUGE: return "gauge";
  case MG_MTYPE_HISTOGRAM: return "histogram";
  case MG_MTYPE_GAUGEHISTOGRAM: return "gaugehistogram";
  case MG_MTYPE_SUMMARY: return "summary";
  case MG_MTYPE_INFO: return "info";
  case MG_MTYPE_STATESET: return "stateset";
  case MG_MTYPE_UNKNOWN: break;
  }
  return "unknown";
}

static void push_labels(lua_State *L, const mg_label_t *l, size_t n) {
  lua_createtable(L, 0, (int)n);
  for (size_t i = 0; i < n; i++) {
    lua_pushlstring(L, l[i].name.p, l[i].name.n);
    lua_pushlstring(L, l[i].value.p, l[i].value.n);
    lua_rawset(L, -3);
  }
}

/* Destination mask from a route result: one Destination or a list. */
static int route_mask(lua_State *L, int idx, mg_lua_hooks_t *h, uint64_t *mask) {
  size_t i;
  if (lua_isuserdata(L, idx)) {
    if (mg_lua_api_todest(L, idx, &i) != 0 || i >= h->ndests) return -1;
    *mask |= (uint64_t)1 << i;
    return 0;
  }
  if (!lua_istable(L, idx)) return -1;
  size_t n = lua_objlen(L, idx);
  for (size_t k = 1; k <= n; k++) {
    lua_rawgeti(L, idx, (int)k);
    int rc = lua_isuserdata(L, -1) && mg_lua_api_todest(L, -1, &i) == 0 && i < h->ndests ? 0 : -1;
    lua_pop(L, 1);
    if (rc) return -1;
    *mask |= (uint64_t)1 << i;
  }
  return 0;
}

static int label_cmp(const void *a, const void *b) {
  return mg_str_cmp(((const mg_label_t *)a)->name, ((const mg_label_t *)b)->name);
}

/* Copy a label table returned by the relabel hook into h: names must be
 * valid, values strings; empty values delete the label; __name__ must
 * remain. Returns NULL or the problem. */
static const char *take_labels(lua_State *L, int idx, mg_lua_hooks_t *h, size_t *n) {
  mg_buf_reset(&h->strings);
  if (mg_buf_reserve(&h->strings, MAX_HOOK_LABEL_BYTES) != 0) return "out of memory";
  size_t count = 0;
  bool has_name = false;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 2);
      return "relabel: labels must map string names to string values";
    }
    size_t kn, vn;
    const char *k = lua_tolstring(L, -2, &kn), *v = lua_tolstring(L, -1, &vn);
    if (!mg_parse_valid_label_name(mg_str_n(k, kn))) {
      lua_pop(L, 2);
      return "relabel: invalid label name";
    }
    if (vn) {
      if (count == MAX_HOOK_LABELS) {
        lua_pop(L, 2);
        return "relabel: too many labels";
      }
      if (h->strings.len + kn + vn > h->strings.cap) {
        lua_pop(L, 2);
        return "relabel: labels too long";
      }
      char *kp = h->strings.data + h->strings.len;
      memcpy(kp, k, kn);
      memcpy(kp + kn, v, vn);
      h->strings.len += kn + vn;
      h->labels[count++] = (mg_label_t){mg_str_n(kp, kn), mg_str_n(kp + kn, vn)};
      if (kn == 8 && memcmp(k, "__name__", 8) == 0) has_name = true;
    }
    lua_pop(L, 1);
  }
  if (!has_name) return "relabel: the result has no __name__";
  qsort(h->labels, count, sizeof *h->labels, label_cmp);
  *n = count;
  return NULL;
}

/* Run one hook with the series table at index s; leaves its result on top.
 * Returns 0, or -1 when the hook failed (already logged by mg_lua_call). */
static int run(lua_State *L, call_ctx_t *c, int which, int s) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->h->ref[which]);
  lua_pushvalue(L, s);
  if (mg_lua_call(c->h->vm, hook_names[which], 1, 1, &c->h->budget) == 0) return 0;
  c->logged = true;
  return -1;
}

static int decide_protected(lua_State *L) {
  call_ctx_t *c = lua_touserdata(L, 1);
  mg_lua_hooks_t *h = c->h;
  const mg_series_view_t *in = c->in;
  mg_series_decision_t *out = c->out;
  /* s = {name, labels, target, job, type, help} */
  lua_createtable(L, 0, 6);
  int s = lua_gettop(L);
  lua_pushlstring(L, in->name.p, in->name.n);
  lua_setfield(L, s, "name");
  push_labels(L, in->labels, in->nlabels);
  lua_setfield(L, s, "labels");
  push_labels(L, in->target_labels, in->ntarget_labels);
  lua_setfield(L, s, "target");
  lua_pushstring(L, in->job ? in->job : "");
  lua_setfield(L, s, "job");
  lua_pushstring(L, kind_name(in->type));
  lua_setfield(L, s, "type");
  lua_pushlstring(L, in->help.p ? in->help.p : "", in->help.n);
  lua_setfield(L, s, "help");

  if (h->ref[HOOK_RELABEL] != LUA_NOREF) {
    if (run(L, c, HOOK_RELABEL, s)) return c->failure = "relabel hook failed", 0;
    if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
      out->dests = 0;
      out->reason = "dropped by the relabel hook";
      return 0;
    }
    if (lua_istable(L, -1)) {
      size_t n;
      const char *why = take_labels(L, lua_gettop(L), h, &n);
      if (why) return c->failure = why, 0;
      out->labels = h->labels;
      out->nlabels = n;
      /* Later hooks see the new labels. */
      lua_pushvalue(L, -1);
      lua_setfield(L, s, "labels");
      lua_getfield(L, -1, "__name__");
      lua_setfield(L, s, "name");
    } else if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) {
      return c->failure = "relabel: return a label table, false (drop) or nil (keep)", 0;
    }
    lua_pop(L, 1);
  }
  if (h->ref[HOOK_FILTER] != LUA_NOREF) {
    if (run(L, c, HOOK_FILTER, s)) return c->failure = "filter hook failed", 0;
    if (!lua_toboolean(L, -1)) {
      out->dests = 0;
      out->reason = "dropped by the filter hook";
      return 0;
    }
    lua_pop(L, 1);
  }
  if (h->ref[HOOK_ROUTE] != LUA_NOREF) {
    if (run(L, c, HOOK_ROUTE, s)) return c->failure = "route hook failed", 0;
    if (lua_isnil(L, -1) || (lua_isboolean(L, -1) && !lua_toboolean(L, -1))) {
      out->dests = 0;
      out->reason = "dropped by the route hook (nil)";
      return 0;
    }
    uint64_t mask = 0;
    if (route_mask(L, lua_gettop(L), h, &mask) != 0)
      return c->failure = "route: return a destination, a list of destinations, or nil", 0;
    out->dests = mask;
    if (!mask) out->reason = "dropped by the route hook (empty list)";
  }
  return 0;
}

int mg_lua_hooks_decide(void *ud, const mg_series_view_t *in, mg_series_decision_t *out) {
  mg_lua_hooks_t *h = ud;
  lua_State *L = mg_lua_vm_state(h->vm);
  call_ctx_t c = {h, in, out, NULL, false};
  out->dests = h->all;
  out->labels = NULL;
  out->nlabels = 0;
  out->reason = NULL;
  int top = lua_gettop(L);
  if (lua_cpcall(L, decide_protected, &c) != 0) c.failure = "out of memory in the Lua VM";
  lua_settop(L, top);
  if (!c.failure) return 0;
  /* Hook errors were logged and counted by mg_lua_call; bad results are
   * ours to report. */
  if (!c.logged) {
    mg_metric_inc(h->m_bad_result);
    char q[96];
    MG_WARN("lua", "hook_bad_result", "series=%s problem=\"%s\" hint=\"see docs/lua-api.md, Hooks\"",
            mg_log_q(q, sizeof q, in->name.p, in->name.n), c.failure);
  }
  out->labels = NULL;
  out->nlabels = 0;
  out->dests = h->fallback_set ? h->fallback : h->all;
  out->reason = out->dests ? NULL : "hook failed; fallback is drop";
  return MG_ELUA;
}

static int fail(mg_conf_error_t *err, const mg_conf_t *conf, const char *msg) {
  memset(err, 0, sizeof *err);
  snprintf(err->file, sizeof err->file, "%s", conf->path ? conf->path : "");
  snprintf(err->msg, sizeof err->msg, "%s", msg);
  return MG_ELUA;
}

int mg_lua_hooks_new(mg_lua_vm_t *vm, const mg_conf_t *conf, mg_lua_hooks_t **out, mg_conf_error_t *err) {
  *out = NULL;
  lua_State *L = mg_lua_vm_state(vm);
  int top = lua_gettop(L);
  if (mg_lua_api_push_module(L) != 0) return 0;
  int m = lua_gettop(L);
  mg_lua_hooks_t *h = mg_calloc(1, sizeof *h);
  if (!h) return lua_settop(L, top), MG_ENOMEM;
  h->vm = vm;
  h->ndests = conf->ndests;
  h->all = conf->ndests >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << conf->ndests) - 1);
  h->budget = (mg_lua_budget_t){MG_LUA_HOOK_MAX_INSTRUCTIONS, MG_LUA_HOOK_MAX_MS, 0};
  mg_buf_init(&h->strings, MAX_HOOK_LABEL_BYTES);
  bool any = false;
  int rc = 0;
  char msg[160];
  for (int i = 0; i < NHOOKS && !rc; i++) {
    h->ref[i] = LUA_NOREF;
    lua_pushstring(L, hook_names[i]);
    lua_rawget(L, m);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
    } else if (!lua_isfunction(L, -1)) {
      snprintf(msg, sizeof msg, "mg.%s must be a function (it is a %s)", hook_names[i], luaL_typename(L, -1));
      rc = fail(err, conf, msg);
    } else {
      /* Hooks run under an instruction budget: keep them interpreted. */
      mg_lua_jit_off(vm, lua_gettop(L));
      h->ref[i] = luaL_ref(L, LUA_REGISTRYINDEX);
      any = true;
    }
  }
  if (!rc) {
    lua_pushliteral(L, "fallback");
    lua_rawget(L, m);
    if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "drop") == 0) {
      h->fallback_set = true;
      h->fallback = 0;
    } else if (!lua_isnil(L, -1)) {
      h->fallback_set = true;
      if (route_mask(L, lua_gettop(L), h, &h->fallback) != 0)
        rc = fail(err, conf, "mg.fallback must be \"drop\", a destination, or a list of destinations");
    }
    lua_pop(L, 1);
  }
  lua_settop(L, top);
  if (rc || !any) {
    mg_lua_hooks_free(h);
    return rc;
  }
  h->m_bad_result = mg_metrics_counter("moongate_lua_errors_total", "Script errors caught; the daemon kept running.",
                                       "reason", "result", NULL);
  if (!h->m_bad_result) h->m_bad_result = mg_metrics_dummy();
  *out = h;
  return 0;
}

void mg_lua_hooks_free(mg_lua_hooks_t *h) {
  if (!h) return;
  lua_State *L = mg_lua_vm_state(h->vm);
  for (int i = 0; i < NHOOKS; i++)
    if (h->ref[i] != LUA_NOREF && h->ref[i] != 0) luaL_unref(L, LUA_REGISTRYINDEX, h->ref[i]);
  mg_buf_cleanup(&h->strings);
  mg_free(h);
}
