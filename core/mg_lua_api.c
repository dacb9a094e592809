/* mg_lua_api: the native half of `moongate`. lua/moongate.lua checks and
 * normalises every argument table; the builders here only map those plain
 * tables onto mg_conf (still checking types, so a library bug is an error,
 * never a crash). Owns the per-VM api state and the Destination handles.
 * Must not run Lua from the builders: they read tables with rawget. */
#include "mg_lua_api.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"

#define DEST_MT "moongate.Destination"
#define API_MT "moongate.api"

typedef struct pos {
  char *file; /* NULL when unknown or out of memory */
  uint32_t line;
} pos_t;

/* What a Destination handle points at. Lives as long as the VM: the api
 * state frees it when the state closes, and handles die with the state. */
typedef struct dest {
  char *name;
  mg_dest_kind_t kind;
  size_t index; /* in conf->dests */
  pos_t pos;
} dest_t;

typedef struct api {
  mg_lua_vm_t *vm;
  mg_conf_t *conf; /* the plan being built; NULL outside mg_lua_api_load */
  bool loaded;
  /* Set when a builder starts, cleared when it ends: still set afterwards
   * means a Lua error (out of memory) cut a builder short and the plan is
   * half-built, even if the script caught the error with pcall. */
  bool building;
  int failed; /* a builder failed (mg_err): the load fails */
  bool global_set;
  pos_t global_pos;
  pos_t *jobs; /* parallel to conf->jobs */
  size_t njobs, jobs_cap;
  dest_t **dests; /* parallel to conf->dests */
  size_t ndests, dests_cap;
} api_t;

static char key_api, key_dest_mt, key_module;

static api_t *api_of(lua_State *L) { return *(api_t **)lua_touserdata(L, lua_upvalueindex(1)); }

/* ---- source positions --------------------------------------------------- */

/* The innermost Lua frame outside the moongate library: the script line
 * that called mg.scrape, through any helper functions of the script. */
static bool caller(lua_State *L, api_t *api, lua_Debug *ar) {
  const char *dir = mg_lua_vm_lua_dir(api->vm);
  size_t dl = dir ? strlen(dir) : 0;
  for (int level = 1; lua_getstack(L, level, ar); level++) {
    if (!lua_getinfo(L, "Sl", ar) || ar->currentline <= 0) continue;
    if (dir && ar->source[0] == '@' && strncmp(ar->source + 1, dir, dl) == 0 && ar->source[1 + dl] == '/') continue;
    return true;
  }
  return false;
}

static void pos_set(lua_State *L, api_t *api, pos_t *p) {
  lua_Debug ar;
  p->file = NULL;
  p->line = 0;
  if (!caller(L, api, &ar)) return;
  p->file = mg_strdup(ar.source[0] == '@' ? ar.source + 1 : ar.short_src);
  p->line = (uint32_t)ar.currentline;
}

static void pos_cleanup(pos_t *p) { mg_free(p->file); }

/* ---- api state ---------------------------------------------------------- */

static void api_free(api_t *api) {
  if (!api) return;
  for (size_t i = 0; i < api->njobs; i++) pos_cleanup(&api->jobs[i]);
  mg_free(api->jobs);
  for (size_t i = 0; i < api->ndests; i++) {
    mg_free(api->dests[i]->name);
    pos_cleanup(&api->dests[i]->pos);
    mg_free(api->dests[i]);
  }
  mg_free(api->dests);
  pos_cleanup(&api->global_pos);
  mg_free(api);
}

static int api_gc(lua_State *L) {
  api_t **ud = lua_touserdata(L, 1);
  api_free(*ud);
  *ud = NULL;
  return 0;
}

static api_t *api_from_vm(mg_lua_vm_t *vm) {
  lua_State *L = mg_lua_vm_state(vm);
  lua_pushlightuserdata(L, &key_api);
  lua_rawget(L, LUA_REGISTRYINDEX);
  api_t **ud = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return ud ? *ud : NULL;
}

/* ---- reading the normalised tables -------------------------------------- */

/* Builder failures return (nil, message) to moongate.lua, which raises
 * them at the script's line. These are out-of-memory or library bugs. */
typedef struct rd {
  lua_State *L;
  api_t *api;
  int rc;
  char msg[300];
} rd_t;

__attribute__((format(printf, 3, 4))) static int rd_fail(rd_t *r, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->msg, sizeof r->msg, fmt, ap);
  va_end(ap);
  r->rc = rc;
  return rc;
}

static int rd_oom(rd_t *r) { return rd_fail(r, MG_ENOMEM, "out of memory while building the plan"); }

/* Push t[k] (raw: no metamethods run) and return its type. */
static int rd_get(rd_t *r, int t, const char *k) {
  lua_pushstring(r->L, k);
  lua_rawget(r->L, t);
  return lua_type(r->L, -1);
}

static int rd_type(rd_t *r, const char *k, const char *want) {
  return rd_fail(r, MG_EINVAL, "internal error: field '%s' is a %s, not a %s", k, luaL_typename(r->L, -1), want);
}

/* Push t[k]; return it if it is a string without NUL bytes, else NULL.
 * Borrowed while it stays on the stack: the builders read names this way
 * instead of copying, because any Lua call may raise (out of memory) and
 * a malloc'd copy held across it would leak. */
static const char *rd_peek(rd_t *r, int t, const char *k) {
  size_t n;
  if (rd_get(r, t, k) != LUA_TSTRING) return NULL;
  const char *s = lua_tolstring(r->L, -1, &n);
  return strlen(s) == n ? s : NULL;
}

static int rd_str(rd_t *r, int t, const char *k, char **slot, bool secret) {
  int ty = rd_get(r, t, k), rc = 0;
  if (ty == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(r->L, -1, &n);
    if (strlen(s) != n)
      rc = rd_fail(r, MG_EINVAL, "field '%s' contains a NUL byte", k);
    else if ((secret ? mg_conf_set_secret(slot, s) : mg_conf_set_str(slot, s)) < 0)
      rc = rd_oom(r);
  } else if (ty != LUA_TNIL) {
    rc = rd_type(r, k, "string");
  }
  lua_pop(r->L, 1);
  return rc;
}

static int rd_u64(rd_t *r, int t, const char *k, uint64_t max, uint64_t *out) {
  int ty = rd_get(r, t, k), rc = 0;
  if (ty == LUA_TNUMBER) {
    lua_Number v = lua_tonumber(r->L, -1);
    if (!(v >= 0 && v <= (lua_Number)max && floor(v) == v))
      rc = rd_fail(r, MG_EINVAL, "internal error: field '%s' out of range", k);
    else
      *out = (uint64_t)v;
  } else if (ty != LUA_TNIL) {
    rc = rd_type(r, k, "number");
  }
  lua_pop(r->L, 1);
  return rc;
}

static int rd_u32(rd_t *r, int t, const char *k, uint32_t *out) {
  uint64_t v = *out;
  int rc = rd_u64(r, t, k, UINT32_MAX, &v);
  if (rc == 0) *out = (uint32_t)v;
  return rc;
}

static int rd_bool(rd_t *r, int t, const char *k, bool *out) {
  int ty = rd_get(r, t, k), rc = 0;
  if (ty == LUA_TBOOLEAN)
    *out = lua_toboolean(r->L, -1);
  else if (ty != LUA_TNIL)
    rc = rd_type(r, k, "boolean");
  lua_pop(r->L, 1);
  return rc;
}

/* t[k] is a list of {name, value} pairs (moongate.lua sorts maps so the
 * plan does not depend on hash order). */
static int rd_pairs(rd_t *r, int t, const char *k, mg_kvs_t *kvs) {
  lua_State *L = r->L;
  int ty = rd_get(r, t, k), rc = 0;
  if (ty == LUA_TNIL) goto out;
  if (ty != LUA_TTABLE) {
    rc = rd_type(r, k, "table");
    goto out;
  }
  int list = lua_gettop(L);
  size_t n = lua_objlen(L, list);
  for (size_t i = 1; i <= n && rc == 0; i++) {
    lua_rawgeti(L, list, (int)i);
    if (!lua_istable(L, -1)) {
      rc = rd_type(r, k, "list of pairs");
    } else {
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, -2, 2);
      size_t nl, vl;
      const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nl) : NULL;
      const char *value = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &vl) : NULL;
      if (!name || !value || strlen(name) != nl || strlen(value) != vl)
        rc = rd_fail(r, MG_EINVAL, "internal error: field '%s' holds a bad pair", k);
      else if (mg_kvs_add(kvs, name, value) < 0)
        rc = rd_oom(r);
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
  }
out:
  lua_pop(L, 1);
  return rc;
}

/* Push the sub-table t[k]: returns 1 (pushed), 0 (absent, nothing pushed)
 * or a negative error. */
static int rd_sub(rd_t *r, int t, const char *k) {
  int ty = rd_get(r, t, k);
  if (ty == LUA_TTABLE) return 1;
  lua_pop(r->L, 1);
  return ty == LUA_TNIL ? 0 : rd_fail(r, MG_EINVAL, "internal error: field '%s' is not a table", k);
}

#define TRY(expr)                                                            \
  do {                                                                       \
    if ((expr) < 0) return r->rc;                                            \
  } while (0)

static int rd_auth(rd_t *r, int t, mg_conf_auth_t *a) {
  int has = rd_sub(r, t, "auth");
  if (has <= 0) return has;
  int s = lua_gettop(r->L);
  int rc = 0;
  if ((rc = rd_str(r, s, "basic_username", &a->basic_username, false)) == 0 &&
      (rc = rd_str(r, s, "basic_password", &a->basic_password, true)) == 0 &&
      (rc = rd_str(r, s, "basic_password_file", &a->basic_password_file, false)) == 0 &&
      (rc = rd_str(r, s, "type", &a->auth_type, false)) == 0 &&
      (rc = rd_str(r, s, "credentials", &a->credentials, true)) == 0)
    rc = rd_str(r, s, "credentials_file", &a->credentials_file, false);
  lua_pop(r->L, 1);
  return rc;
}

static int rd_tls(rd_t *r, int t, mg_conf_tls_t *tls) {
  int has = rd_sub(r, t, "tls");
  if (has <= 0) return has;
  int s = lua_gettop(r->L);
  int rc = 0;
  if ((rc = rd_str(r, s, "ca_file", &tls->ca_file, false)) == 0 &&
      (rc = rd_str(r, s, "cert_file", &tls->cert_file, false)) == 0 &&
      (rc = rd_str(r, s, "key_file", &tls->key_file, false)) == 0 &&
      (rc = rd_str(r, s, "server_name", &tls->server_name, false)) == 0)
    rc = rd_bool(r, s, "insecure_skip_verify", &tls->insecure_skip_verify);
  lua_pop(r->L, 1);
  return rc;
}

/* Common prologue of the builders: phase and argument checks. */
static api_t *builder_enter(lua_State *L, rd_t *r) {
  api_t *api = api_of(L);
  *r = (rd_t){.L = L, .api = api};
  if (!api || !api->conf) {
    rd_fail(r, MG_EINVAL, "load time only: declare the plan while the script runs at start, not from a hook");
    return NULL;
  }
  if (!lua_istable(L, 1)) {
    rd_fail(r, MG_EINVAL, "internal error: expected a table");
    return NULL;
  }
  lua_settop(L, 1);
  return api;
}

/* (nil, message); poisons the load when the plan may be half-built. */
static int builder_fail(lua_State *L, rd_t *r, bool poison) {
  if (poison && r->api && !r->api->failed) r->api->failed = r->rc ? r->rc : MG_EINVAL;
  if (r->api) r->api->building = false;
  lua_pushnil(L);
  lua_pushstring(L, r->msg);
  return 2;
}

static const char *where(const pos_t *p, char *buf, size_t n) {
  if (p->file)
    snprintf(buf, n, " at %s:%u", p->file, p->line);
  else
    buf[0] = '\0';
  return buf;
}

/* ---- builders ----------------------------------------------------------- */

static int global_build(rd_t *r, api_t *api) {
  mg_conf_t *c = api->conf;
  TRY(rd_u64(r, 1, "scrape_interval_ms", UINT64_MAX / 2, &c->scrape_interval_ms));
  TRY(rd_u64(r, 1, "scrape_timeout_ms", UINT64_MAX / 2, &c->scrape_timeout_ms));
  TRY(rd_pairs(r, 1, "external_labels", &c->external_labels));
  return 0;
}

/* core.global{scrape_interval_ms, scrape_timeout_ms, external_labels} */
static int l_global(lua_State *L) {
  rd_t r;
  api_t *api = builder_enter(L, &r);
  if (!api) return builder_fail(L, &r, false);
  if (api->global_set) {
    char w[300];
    rd_fail(&r, MG_EINVAL, "already called%s: declare the global settings once", where(&api->global_pos, w, sizeof w));
    return builder_fail(L, &r, false);
  }
  api->building = true;
  api->global_set = true;
  pos_set(L, api, &api->global_pos);
  if (global_build(&r, api) < 0) return builder_fail(L, &r, true);
  api->building = false;
  lua_pushboolean(L, 1);
  return 1;
}

static int targets_build(rd_t *r, mg_conf_job_t *j) {
  lua_State *L = r->L;
  int has = rd_sub(r, 1, "targets");
  if (has <= 0) return has;
  int list = lua_gettop(L);
  size_t n = lua_objlen(L, list);
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, list, (int)i);
    int e = lua_gettop(L);
    if (!lua_istable(L, e)) return rd_type(r, "targets[]", "table");
    const char *address = rd_peek(r, e, "address");
    if (!address) return rd_fail(r, MG_EINVAL, "internal error: target without address");
    mg_conf_target_t *t = mg_conf_job_add_target(j, address);
    lua_pop(L, 1);
    if (!t) return rd_oom(r);
    TRY(rd_pairs(r, e, "labels", &t->labels));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 0;
}

/* A list of relabel rules, already checked field by field by moongate.lua;
 * the engine compiles them (and mg_conf users see them as written). */
static int rd_relabels(rd_t *r, int t, const char *k, mg_conf_relabels_t *rs) {
  lua_State *L = r->L;
  int ty = rd_get(r, t, k), rc = 0;
  if (ty == LUA_TNIL) goto out;
  if (ty != LUA_TTABLE) {
    rc = rd_type(r, k, "list of rules");
    goto out;
  }
  int list = lua_gettop(L);
  size_t n = lua_objlen(L, list);
  for (size_t i = 1; i <= n && rc == 0; i++) {
    lua_rawgeti(L, list, (int)i);
    int e = lua_gettop(L);
    mg_conf_relabel_t *rule = lua_istable(L, e) ? mg_conf_relabels_add(rs) : NULL;
    if (!lua_istable(L, e)) rc = rd_type(r, k, "list of rules");
    else if (!rule) rc = rd_oom(r);
    if (rc == 0) {
      lua_getfield(L, e, "source_labels");
      size_t ns = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
      for (size_t x = 1; x <= ns && rc == 0; x++) {
        lua_rawgeti(L, -1, (int)x);
        const char *lbl = lua_tostring(L, -1);
        if (!lbl) rc = rd_type(r, "source_labels[]", "string");
        else if (mg_conf_relabel_add_source(rule, lbl) < 0) rc = rd_oom(r);
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
    if (rc == 0) rc = rd_str(r, e, "separator", &rule->separator, false);
    if (rc == 0) rc = rd_str(r, e, "regex", &rule->regex, false);
    if (rc == 0) rc = rd_u64(r, e, "modulus", UINT64_MAX / 2, &rule->modulus);
    if (rc == 0) rc = rd_str(r, e, "target_label", &rule->target_label, false);
    if (rc == 0) rc = rd_str(r, e, "replacement", &rule->replacement, false);
    if (rc == 0) rc = rd_str(r, e, "action", &rule->action, false);
    lua_settop(L, list);
  }
out:
  lua_pop(L, 1);
  return rc;
}

/* An option tree in moongate.lua's canonical form: a string, {list =
 * {...}} or {map = {{name, value}, ...}}, at idx. NULL with r->rc set on
 * error. */
static mg_conf_val_t *rd_val(rd_t *r, int idx, uint32_t line, int depth) {
  lua_State *L = r->L;
  if (depth > 32) return rd_fail(r, MG_EINVAL, "internal error: option tree too deep"), NULL;
  if (lua_type(L, idx) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (strlen(s) != n) return rd_fail(r, MG_EINVAL, "an option contains a NUL byte"), NULL;
    mg_conf_val_t *v = mg_conf_val_new(MG_CONF_VAL_SCALAR, s, line);
    if (!v) rd_oom(r);
    return v;
  }
  if (!lua_istable(L, idx)) return rd_fail(r, MG_EINVAL, "internal error: bad option tree"), NULL;
  bool is_map = rd_get(r, idx, "map") == LUA_TTABLE;
  if (!is_map) {
    lua_pop(L, 1);
    if (rd_get(r, idx, "list") != LUA_TTABLE) {
      lua_pop(L, 1);
      return rd_fail(r, MG_EINVAL, "internal error: bad option tree"), NULL;
    }
  }
  int items = lua_gettop(L);
  mg_conf_val_t *v = mg_conf_val_new(is_map ? MG_CONF_VAL_MAP : MG_CONF_VAL_LIST, NULL, line);
  if (!v) rd_oom(r);
  size_t n = lua_objlen(L, items);
  for (size_t i = 1; v && i <= n; i++) {
    lua_rawgeti(L, items, (int)i);
    int e = lua_gettop(L);
    const char *key = NULL;
    if (is_map) {
      lua_rawgeti(L, e, 1);
      lua_rawgeti(L, e, 2);
      key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    }
    mg_conf_val_t *item = is_map && !key ? NULL : rd_val(r, lua_gettop(L), line, depth + 1);
    if (is_map && !key) rd_fail(r, MG_EINVAL, "internal error: bad option name");
    int rc = !item ? r->rc : is_map ? mg_conf_val_put(v, key, item) : mg_conf_val_push(v, item);
    if (item && rc) rd_oom(r);
    if (rc) {
      mg_conf_val_free(v);
      v = NULL;
    }
    lua_settop(L, items);
  }
  lua_pop(L, 1);
  return v;
}

/* The discovery sources: sds = {{kind, opts}, ...}, in the job's line. */
static int sds_build(rd_t *r, mg_conf_job_t *j, uint32_t line) {
  lua_State *L = r->L;
  int has = rd_sub(r, 1, "sds");
  if (has <= 0) return has;
  int list = lua_gettop(L);
  size_t n = lua_objlen(L, list);
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, list, (int)i);
    int e = lua_gettop(L);
    if (!lua_istable(L, e)) return rd_type(r, "sds[]", "table");
    const char *kind = rd_peek(r, e, "kind");
    mg_conf_sd_t *sd = kind ? mg_conf_job_add_sd(j, kind) : NULL;
    if (!kind) return rd_fail(r, MG_EINVAL, "internal error: discovery source without a kind");
    if (!sd) return rd_oom(r);
    sd->line = line;
    rd_get(r, e, "opts");
    mg_conf_val_t *opts = rd_val(r, lua_gettop(L), line, 0);
    if (!opts) return r->rc;
    if (opts->type != MG_CONF_VAL_MAP) {
      mg_conf_val_free(opts);
      return rd_fail(r, MG_EINVAL, "internal error: discovery options are not a map");
    }
    mg_conf_val_free(sd->opts);
    sd->opts = opts;
    lua_settop(L, list);
  }
  lua_pop(L, 1);
  return 0;
}

/* Function targets: targets_fn = {fn, opts} becomes a "lua" source holding
 * a registry ref to the function (kept interpreted: it runs under the
 * hooks' instruction budget). */
static int fn_build(rd_t *r, mg_conf_job_t *j, uint32_t line) {
  lua_State *L = r->L;
  int has = rd_sub(r, 1, "targets_fn");
  if (has <= 0) return has;
  int t = lua_gettop(L);
  mg_conf_sd_t *sd = mg_conf_job_add_sd(j, "lua");
  if (!sd) return rd_oom(r);
  sd->line = line;
  rd_get(r, t, "opts");
  mg_conf_val_t *opts = rd_val(r, lua_gettop(L), line, 0);
  if (!opts) return r->rc;
  mg_conf_val_free(sd->opts);
  sd->opts = opts;
  lua_pop(L, 1);
  if (rd_get(r, t, "fn") != LUA_TFUNCTION) return rd_type(r, "targets_fn.fn", "function");
  mg_lua_jit_off(r->api->vm, lua_gettop(L));
  sd->lua_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  return 0;
}

static int job_build(rd_t *r, mg_conf_job_t *j) {
  TRY(rd_u64(r, 1, "interval_ms", UINT64_MAX / 2, &j->interval_ms));
  TRY(rd_u64(r, 1, "timeout_ms", UINT64_MAX / 2, &j->timeout_ms));
  TRY(rd_str(r, 1, "scheme", &j->scheme, false));
  TRY(rd_str(r, 1, "metrics_path", &j->metrics_path, false));
  TRY(rd_pairs(r, 1, "params", &j->params));
  TRY(rd_bool(r, 1, "honor_labels", &j->honor_labels));
  TRY(rd_bool(r, 1, "honor_timestamps", &j->honor_timestamps));
  TRY(rd_bool(r, 1, "enable_compression", &j->enable_compression));
  TRY(rd_auth(r, 1, &j->auth));
  TRY(rd_tls(r, 1, &j->tls));
  TRY(rd_u64(r, 1, "body_size_limit", UINT64_MAX / 2, &j->body_size_limit));
  TRY(rd_u64(r, 1, "sample_limit", UINT64_MAX / 2, &j->sample_limit));
  TRY(rd_u64(r, 1, "label_limit", UINT64_MAX / 2, &j->label_limit));
  TRY(rd_u64(r, 1, "label_name_length_limit", UINT64_MAX / 2, &j->label_name_length_limit));
  TRY(rd_u64(r, 1, "label_value_length_limit", UINT64_MAX / 2, &j->label_value_length_limit));
  TRY(targets_build(r, j));
  uint32_t line = r->api->njobs ? r->api->jobs[r->api->njobs - 1].line : 0;
  TRY(sds_build(r, j, line));
  TRY(fn_build(r, j, line));
  TRY(rd_relabels(r, 1, "relabel_configs", &j->relabel_configs));
  TRY(rd_relabels(r, 1, "metric_relabel_configs", &j->metric_relabel_configs));
  return 0;
}

/* core.scrape{job, interval_ms, ..., targets = {{address, labels}}} */
static int l_scrape(lua_State *L) {
  rd_t r;
  api_t *api = builder_enter(L, &r);
  if (!api) return builder_fail(L, &r, false);
  const char *name = rd_peek(&r, 1, "job"); /* stays at index 2 */
  if (!name) {
    rd_fail(&r, MG_EINVAL, "internal error: job without a name");
    return builder_fail(L, &r, true);
  }
  mg_conf_t *c = api->conf;
  for (size_t i = 0; i < c->njobs; i++)
    if (strcmp(c->jobs[i]->name, name) == 0) {
      char w[300];
      rd_fail(&r, MG_EINVAL, "field 'job': \"%.100s\" is already the name of the job declared%s", name,
              where(&api->jobs[i], w, sizeof w));
      return builder_fail(L, &r, false);
    }
  api->building = true;
  /* Grow the position array first so it stays parallel to conf->jobs. */
  if (api->njobs == api->jobs_cap) {
    size_t ncap = api->jobs_cap ? api->jobs_cap * 2 : 8;
    pos_t *p = mg_reallocarray(api->jobs, ncap, sizeof *p);
    if (!p) {
      rd_oom(&r);
      return builder_fail(L, &r, true);
    }
    api->jobs = p;
    api->jobs_cap = ncap;
  }
  mg_conf_job_t *j = mg_conf_add_job(c, name);
  if (!j) {
    rd_oom(&r);
    return builder_fail(L, &r, true);
  }
  pos_set(L, api, &api->jobs[api->njobs++]);
  if (job_build(&r, j) < 0) return builder_fail(L, &r, true);
  api->building = false;
  if (j->ntargets == 0 && j->nsds == 0) {
    /* Allowed (a computed list may come out empty) but rarely meant. */
    const pos_t *p = &api->jobs[api->njobs - 1];
    char src[300], qj[300], qs[320];
    int n = snprintf(src, sizeof src, "%s:%u", p->file ? p->file : "?", p->line);
    MG_WARN("lua", "job_without_targets", "job=%s src=%s", mg_log_q(qj, sizeof qj, j->name, strlen(j->name)),
            mg_log_q(qs, sizeof qs, src, n < 0 ? 0 : (size_t)n < sizeof src ? (size_t)n : sizeof src - 1));
  }
  lua_pushboolean(L, 1);
  return 1;
}

static const char *kind_name(mg_dest_kind_t k) {
  switch (k) {
  case MG_DEST_REMOTE_WRITE: return "remote_write";
  case MG_DEST_STDOUT: return "stdout";
  case MG_DEST_FILE: return "file";
  }
  return "unknown";
}

/* A credential source table from mg.aws.* (checked by moongate.lua). */
static int rd_creds(rd_t *r, int t, mg_conf_creds_t *c, int depth) {
  static const struct {
    const char *name;
    mg_creds_kind_t kind;
  } kinds[] = {{"chain", MG_CREDS_CHAIN},     {"static", MG_CREDS_STATIC},
               {"env", MG_CREDS_ENV},         {"profile", MG_CREDS_PROFILE},
               {"imds", MG_CREDS_IMDS},       {"ecs", MG_CREDS_ECS},
               {"web_identity", MG_CREDS_WEB_IDENTITY}, {"process", MG_CREDS_PROCESS},
               {"assume_role", MG_CREDS_ASSUME_ROLE}};
  lua_State *L = r->L;
  if (depth > 8) return rd_fail(r, MG_EINVAL, "credentials: assume_role sources nested too deeply");
  lua_getfield(L, t, "kind");
  const char *k = lua_tostring(L, -1);
  size_t i = 0;
  while (k && i < sizeof kinds / sizeof *kinds && strcmp(kinds[i].name, k) != 0) i++;
  lua_pop(L, 1);
  if (!k || i == sizeof kinds / sizeof *kinds) return rd_fail(r, MG_EINVAL, "internal error: bad credential kind");
  c->kind = kinds[i].kind;
  TRY(rd_str(r, t, "access_key_id", &c->access_key_id, false));
  TRY(rd_str(r, t, "secret_access_key", &c->secret_access_key, true));
  TRY(rd_str(r, t, "session_token", &c->session_token, true));
  TRY(rd_str(r, t, "profile", &c->profile, false));
  TRY(rd_str(r, t, "credentials_file", &c->credentials_file, false));
  TRY(rd_str(r, t, "config_file", &c->config_file, false));
  TRY(rd_str(r, t, "role_arn", &c->role_arn, false));
  TRY(rd_str(r, t, "external_id", &c->external_id, false));
  TRY(rd_str(r, t, "role_session_name", &c->role_session_name, false));
  TRY(rd_u64(r, t, "duration_s", 43200, &c->duration_s));
  TRY(rd_str(r, t, "sts_region", &c->sts_region, false));
  TRY(rd_str(r, t, "sts_endpoint", &c->sts_endpoint, false));
  TRY(rd_str(r, t, "web_identity_token_file", &c->web_identity_token_file, false));
  TRY(rd_str(r, t, "process", &c->process, false));
  lua_getfield(L, t, "source");
  int rc = 0;
  if (lua_istable(L, -1)) {
    mg_conf_creds_t *src = mg_conf_creds_add_source(c, MG_CREDS_CHAIN);
    rc = src ? rd_creds(r, lua_gettop(L), src, depth + 1) : rd_oom(r);
  }
  lua_pop(L, 1);
  return rc;
}

static int dest_build(rd_t *r, mg_conf_dest_t *d) {
  TRY(rd_str(r, 1, "url", &d->url, false));
  TRY(rd_str(r, 1, "path", &d->path, false));
  TRY(rd_pairs(r, 1, "headers", &d->headers));
  TRY(rd_auth(r, 1, &d->auth));
  TRY(rd_tls(r, 1, &d->tls));
  TRY(rd_u64(r, 1, "remote_timeout_ms", UINT64_MAX / 2, &d->remote_timeout_ms));
  TRY(rd_bool(r, 1, "send_metadata", &d->send_metadata));
  TRY(rd_u64(r, 1, "metadata_send_interval_ms", UINT64_MAX / 2, &d->metadata_send_interval_ms));
  TRY(rd_relabels(r, 1, "write_relabel_configs", &d->write_relabel_configs));
  int sig = rd_sub(r, 1, "sigv4");
  if (sig < 0) return sig;
  if (sig) {
    int sv = lua_gettop(r->L);
    d->sigv4.enabled = true;
    TRY(rd_str(r, sv, "region", &d->sigv4.region, false));
    TRY(rd_str(r, sv, "service", &d->sigv4.service, false));
    lua_getfield(r->L, sv, "credentials");
    int rc = lua_istable(r->L, -1) ? rd_creds(r, lua_gettop(r->L), &d->sigv4.creds, 0) : 0;
    lua_settop(r->L, sv - 1);
    if (rc) return rc;
  }
  int has = rd_sub(r, 1, "queue");
  if (has < 0) return has;
  if (has) {
    int q = lua_gettop(r->L);
    mg_conf_queue_t *qc = &d->queue;
    TRY(rd_u32(r, q, "capacity", &qc->capacity));
    TRY(rd_u32(r, q, "max_shards", &qc->max_shards));
    TRY(rd_u32(r, q, "min_shards", &qc->min_shards));
    TRY(rd_u32(r, q, "max_samples_per_send", &qc->max_samples_per_send));
    TRY(rd_u64(r, q, "batch_send_deadline_ms", UINT64_MAX / 2, &qc->batch_send_deadline_ms));
    TRY(rd_u64(r, q, "min_backoff_ms", UINT64_MAX / 2, &qc->min_backoff_ms));
    TRY(rd_u64(r, q, "max_backoff_ms", UINT64_MAX / 2, &qc->max_backoff_ms));
    TRY(rd_bool(r, q, "retry_on_http_429", &qc->retry_on_http_429));
    lua_pop(r->L, 1);
  }
  has = rd_sub(r, 1, "buffer");
  if (has < 0) return has;
  if (has) {
    int b = lua_gettop(r->L);
    TRY(rd_u64(r, b, "max_bytes", UINT64_MAX / 2, &d->buffer.max_bytes));
    TRY(rd_u64(r, b, "max_age_ms", UINT64_MAX / 2, &d->buffer.max_age_ms));
    TRY(rd_bool(r, b, "memory_only", &d->buffer.memory_only));
    lua_pop(r->L, 1);
  }
  return 0;
}

/* core.destination{kind, name, url | path, ...} -> Destination */
static int l_destination(lua_State *L) {
  rd_t r;
  api_t *api = builder_enter(L, &r);
  if (!api) return builder_fail(L, &r, false);
  const char *kind = rd_peek(&r, 1, "kind"); /* index 2 */
  const char *name = rd_peek(&r, 1, "name"); /* index 3 */
  mg_dest_kind_t k = MG_DEST_REMOTE_WRITE;
  bool known = kind && (strcmp(kind, "remote_write") == 0 || (strcmp(kind, "stdout") == 0 && (k = MG_DEST_STDOUT)) ||
                        (strcmp(kind, "file") == 0 && (k = MG_DEST_FILE)));
  if (!known || !name) {
    rd_fail(&r, MG_EINVAL, "internal error: destination without a known kind or a name");
    return builder_fail(L, &r, true);
  }
  for (size_t i = 0; i < api->ndests; i++)
    if (strcmp(api->dests[i]->name, name) == 0) {
      char w[300];
      rd_fail(&r, MG_EINVAL, "field 'name': \"%.100s\" is already the name of the destination declared%s", name,
              where(&api->dests[i]->pos, w, sizeof w));
      return builder_fail(L, &r, false);
    }
  api->building = true;
  /* The handle first: creating it may raise. From here to *ud = e only C
   * runs, so nothing allocated below can leak through a Lua error. */
  dest_t **ud = lua_newuserdata(L, sizeof *ud);
  *ud = NULL;
  lua_pushlightuserdata(L, &key_dest_mt);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_setmetatable(L, -2);
  if (api->ndests == api->dests_cap) {
    size_t ncap = api->dests_cap ? api->dests_cap * 2 : 4;
    dest_t **p = mg_reallocarray(api->dests, ncap, sizeof *p);
    if (!p) {
      rd_oom(&r);
      return builder_fail(L, &r, true);
    }
    api->dests = p;
    api->dests_cap = ncap;
  }
  dest_t *e = mg_calloc(1, sizeof *e);
  if (!e || !(e->name = mg_strdup(name))) {
    mg_free(e);
    rd_oom(&r);
    return builder_fail(L, &r, true);
  }
  e->kind = k;
  mg_conf_dest_t *d = mg_conf_add_dest(api->conf, name, k);
  if (!d) {
    mg_free(e->name);
    mg_free(e);
    rd_oom(&r);
    return builder_fail(L, &r, true);
  }
  e->index = api->conf->ndests - 1;
  api->dests[api->ndests++] = e;
  pos_set(L, api, &e->pos);
  *ud = e;
  if (dest_build(&r, d) < 0) return builder_fail(L, &r, true);
  api->building = false;
  return 1; /* the handle, still on top */
}

/* ---- the Destination handle --------------------------------------------- */

static dest_t *check_dest(lua_State *L, int idx) {
  dest_t **ud = luaL_checkudata(L, idx, DEST_MT);
  if (!*ud) luaL_error(L, "Destination used after release");
  return *ud;
}

static int dest_index(lua_State *L) {
  dest_t *d = check_dest(L, 1);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "name") == 0)
    lua_pushstring(L, d->name);
  else if (strcmp(k, "kind") == 0)
    lua_pushstring(L, kind_name(d->kind));
  else
    return luaL_error(L, "moongate.Destination has no field '%s' (it has name and kind)", k);
  return 1;
}

static int dest_newindex(lua_State *L) {
  check_dest(L, 1);
  return luaL_error(L, "moongate.Destination is read-only");
}

static int dest_tostring(lua_State *L) {
  dest_t *d = check_dest(L, 1);
  lua_pushfstring(L, "moongate.Destination(%s %s)", kind_name(d->kind), d->name);
  return 1;
}

static const luaL_Reg dest_meta[] = {
    {"__index", dest_index},
    {"__newindex", dest_newindex},
    {"__tostring", dest_tostring},
    {NULL, NULL},
};

/* Called from C, maybe outside a protected call: so no luaL_testudata
 * (its name lookup allocates); the metatable is found by a light key. */
int mg_lua_api_todest(lua_State *L, int idx, size_t *index) {
  dest_t **ud = lua_touserdata(L, idx);
  if (!ud || !lua_getmetatable(L, idx)) return MG_EINVAL;
  lua_pushlightuserdata(L, &key_dest_mt);
  lua_rawget(L, LUA_REGISTRYINDEX);
  bool same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  if (!same || !*ud) return MG_EINVAL;
  *index = (*ud)->index;
  return 0;
}

/* ---- helpers exposed to moongate.lua and scripts ------------------------ */

static int l_duration(lua_State *L) {
  uint64_t ms;
  if (mg_conf_parse_duration(luaL_checkstring(L, 1), &ms) < 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushnumber(L, (lua_Number)ms);
  return 1;
}

static int l_bytes(lua_State *L) {
  uint64_t n;
  if (mg_conf_parse_bytes(luaL_checkstring(L, 1), &n) < 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushnumber(L, (lua_Number)n);
  return 1;
}

/* mg.log(level, msg): scripts log through mg_log (mod=lua), with the
 * script line, quoted so a message cannot forge log fields. */
static int l_log(lua_State *L) {
  static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
  static const mg_log_level_t lv[] = {MG_LOG_DEBUG, MG_LOG_INFO, MG_LOG_WARN, MG_LOG_ERROR};
  int i = luaL_checkoption(L, 1, NULL, levels);
  size_t n;
  const char *msg = luaL_checklstring(L, 2, &n);
  if (lv[i] < mg_log_level_) return 0;
  luaL_where(L, 1);
  size_t wl;
  const char *w = lua_tolstring(L, -1, &wl);
  while (wl && (w[wl - 1] == ' ' || w[wl - 1] == ':')) wl--;
  char qs[300], qm[1100];
  mg_log_write(lv[i], "lua", "script_log", "src=%s msg=%s", mg_log_q(qs, sizeof qs, w, wl),
               mg_log_q(qm, sizeof qm, msg, n));
  return 0;
}

/* mg.env(name): the value of an environment variable, or nil. */
static int l_env(lua_State *L) {
  const char *v = getenv(luaL_checkstring(L, 1));
  if (v)
    lua_pushstring(L, v);
  else
    lua_pushnil(L);
  return 1;
}

/* moongate.lua hands its module table over, so that C can read the hooks
 * (mg.route, ...) a script stores in it. */
static int l_module(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushlightuserdata(L, &key_module);
  lua_pushvalue(L, 1);
  lua_rawset(L, LUA_REGISTRYINDEX);
  return 0;
}

int mg_lua_api_push_module(lua_State *L) {
  lua_pushlightuserdata(L, &key_module);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_istable(L, -1)) return 0;
  lua_pop(L, 1);
  return MG_ENOTFOUND;
}

static const luaL_Reg core_funcs[] = {
    {"global", l_global},     {"scrape", l_scrape}, {"destination", l_destination},
    {"duration", l_duration}, {"bytes", l_bytes},   {"log", l_log},
    {"env", l_env},           {"module", l_module}, {NULL, NULL},
};

/* The table moongate.lua receives as `...`. */
static int open_core(lua_State *L) {
  lua_pushlightuserdata(L, &key_api);
  lua_rawget(L, LUA_REGISTRYINDEX);
  api_t **ud = lua_touserdata(L, -1);
  lua_newtable(L);
  lua_insert(L, -2);
  luaL_setfuncs(L, core_funcs, 1);
  lua_pushliteral(L, MG_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushstring(L, mg_lua_vm_opts((*ud)->vm)->listen_address);
  lua_setfield(L, -2, "listen_address");
  return 1;
}

static int open_api(lua_State *L) {
  mg_lua_vm_t *vm = lua_touserdata(L, 1);
  api_t **ud = lua_newuserdata(L, sizeof *ud);
  *ud = NULL;
  luaL_newmetatable(L, API_MT);
  lua_pushcfunction(L, api_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushliteral(L, API_MT);
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
  if (!(*ud = mg_calloc(1, sizeof **ud))) return luaL_error(L, "out of memory");
  (*ud)->vm = vm;
  lua_pushlightuserdata(L, &key_api);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  luaL_newmetatable(L, DEST_MT);
  luaL_setfuncs(L, dest_meta, 0);
  /* getmetatable(handle) returns this string: scripts cannot swap methods. */
  lua_pushliteral(L, DEST_MT);
  lua_setfield(L, -2, "__metatable");
  lua_pushlightuserdata(L, &key_dest_mt);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  return 0;
}

int mg_lua_api_open(mg_lua_vm_t *vm) {
  if (lua_cpcall(mg_lua_vm_state(vm), open_api, vm) != 0) {
    lua_pop(mg_lua_vm_state(vm), 1);
    return MG_ENOMEM;
  }
  return mg_lua_vm_add_native(vm, "moongate", open_core);
}

/* ---- loading ------------------------------------------------------------ */

int mg_lua_api_load(mg_lua_vm_t *vm, const char *path, mg_conf_t **out, mg_conf_error_t *err) {
  *out = NULL;
  api_t *api = api_from_vm(vm);
  if (!api || api->loaded) {
    if (err) {
      snprintf(err->file, sizeof err->file, "%s", path);
      err->line = 0;
      snprintf(err->msg, sizeof err->msg, "internal error: %s", api ? "VM already ran a script" : "moongate API not opened");
    }
    return MG_EINVAL;
  }
  mg_conf_t *c = mg_conf_new(path, MG_CONF_LUA);
  if (!c) {
    if (err) {
      snprintf(err->file, sizeof err->file, "%s", path);
      err->line = 0;
      snprintf(err->msg, sizeof err->msg, "out of memory");
    }
    return MG_ENOMEM;
  }
  api->conf = c;
  api->loaded = true;
  int rc = mg_lua_run_file(vm, path, err);
  api->conf = NULL;
  if (rc == 0 && (api->failed || api->building)) {
    /* The script caught a builder failure with pcall and carried on. */
    rc = api->failed == MG_ENOMEM || !api->failed ? MG_ENOMEM : MG_ELUA;
    if (err) {
      snprintf(err->file, sizeof err->file, "%s", path);
      err->line = 0;
      snprintf(err->msg, sizeof err->msg, "building the plan failed (%s); the script went on after the error",
               mg_err_str(rc));
    }
  }
  if (rc < 0) {
    mg_conf_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

int mg_lua_api_finish(mg_lua_vm_t *vm, mg_conf_t *c, mg_conf_error_t *err) {
  mg_conf_at_t at = MG_CONF_AT_GLOBAL;
  size_t idx = 0;
  int rc = mg_conf_finish_at(c, err, &at, &idx);
  if (rc == 0 || !err) return rc;
  api_t *api = api_from_vm(vm);
  const pos_t *p = NULL;
  if (api && at == MG_CONF_AT_JOB && idx < api->njobs)
    p = &api->jobs[idx];
  else if (api && at == MG_CONF_AT_DEST && idx < api->ndests)
    p = &api->dests[idx]->pos;
  else if (api && at == MG_CONF_AT_GLOBAL && api->global_set && strncmp(err->msg, "global:", 7) == 0)
    p = &api->global_pos;
  if (p && p->file) {
    snprintf(err->file, sizeof err->file, "%s", p->file);
    err->line = p->line;
  }
  return rc;
}

int mg_lua_load_conf(const char *path, const mg_lua_opts_t *opts, mg_conf_t **out, mg_conf_error_t *err) {
  *out = NULL;
  mg_lua_vm_t *vm = NULL;
  int rc = mg_lua_vm_new(opts, &vm);
  if (rc == 0) rc = mg_lua_api_open(vm);
  if (rc < 0) {
    if (err) {
      snprintf(err->file, sizeof err->file, "%s", path);
      err->line = 0;
      snprintf(err->msg, sizeof err->msg, "cannot create the Lua VM: %s", mg_err_str(rc));
    }
    mg_lua_vm_free(vm);
    return rc;
  }
  rc = mg_lua_api_load(vm, path, out, err);
  mg_lua_vm_free(vm);
  return rc;
}
