/* mg_lua: the sandboxed LuaJIT VM. Owns the lua_State, its allocator (which
 * enforces the memory ceiling), the count hook (instruction and wall-clock
 * budgets), the sandbox environment and the restricted require. Must not
 * know the moongate module's contents: mg_lua_api registers them. */
#include "mg_lua.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>
#include <luajit.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_str.h"
#include "mg_metrics.h"

#ifndef MG_LUA_INSTALL_DIR
#define MG_LUA_INSTALL_DIR "/usr/local/share/moongate/lua"
#endif

/* Hook granularity: the hook runs every HOOK_STEP VM instructions, so the
 * budget overshoots by less than that and the clock is read once per step
 * (a vDSO call per ~1000 instructions: noise). */
#define HOOK_STEP 1000
/* Extra heap the traceback handler may use when the error came from
 * hitting the ceiling, so the report itself does not fail. */
#define ERR_HEADROOM ((size_t)64 << 10)
/* The memory budget is enforced twice: the count hook stops a call whose
 * heap passed the ceiling less this margin (an eighth of the ceiling, at
 * most 1 MiB), at an instruction boundary where raising an error is
 * always safe; the allocator refuses at the ceiling itself, for a single
 * allocation too large to wait for the hook. A script that eats memory a
 * little at a time (the usual runaway) thus never makes an allocation fail
 * inside the VM, where LuaJIT 2.1.0-beta3's handling of the failure is
 * fragile (test_lua's fault injection crashes it now and then under
 * AddressSanitizer; see the Makefile's test-asan). */
#define SOFT_MARGIN_MAX ((size_t)1 << 20)

typedef enum { R_NONE = 0, R_ERROR, R_INSTRUCTIONS, R_TIMEOUT, R_MEMORY } reason_t;

struct mg_lua_vm {
  lua_State *L;
  mg_lua_opts_t opts; /* strings point at the copies below */
  char *listen_address;
  char *lua_dir_opt;
  char *lua_dir; /* resolved, or NULL */
  char *script;  /* first file loaded: the script named in logs */

  size_t mem_used;
  size_t ceiling; /* current allocator ceiling (<= opts.mem_limit + headroom) */
  size_t soft;    /* the count hook stops the call past this (see SOFT_MARGIN_MAX) */
  bool mem_hit;   /* the allocator refused a request since the call began */
  bool bootstrap; /* inside lua_newstate: see vm_alloc */

  bool loading; /* mg_lua_run_file is running the script */
  int depth;    /* nesting of vm_pcall */
  uint64_t steps, max_steps;
  uint64_t call_start_ns, deadline_ns;
  int hook_step;
  reason_t exceeded;

  char err[512];  /* last error message */
  char tb[2048];  /* last traceback */
  unsigned long long log_window_ms; /* start of the current one-second window */
  unsigned log_in_window;
  uint64_t log_suppressed;
  uint64_t seen[64]; /* hashes of errors already logged (ring) */
  unsigned nseen;
};

/* Registry keys: addresses of these statics. The key_fn_* entries are C
 * functions created once at setup, so running them later allocates
 * nothing outside a protected call: in LuaJIT an allocation failure
 * outside lua_pcall is fatal (panic, then exit). */
static char key_template, key_loaded, key_native, key_loading;
static char key_fn_handler, key_fn_env, key_fn_prepare;

/* Push registry[key] (no allocation: light userdata key, existing value). */
static void push_reg(lua_State *L, void *key) {
  lua_pushlightuserdata(L, key);
  lua_rawget(L, LUA_REGISTRYINDEX);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- allocator: all Lua memory goes through mg_mem and is counted ------ */

static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  mg_lua_vm_t *vm = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    mg_free(ptr);
    vm->mem_used -= old;
    return NULL;
  }
  if (nsize > old && nsize - old > vm->ceiling - (vm->mem_used < vm->ceiling ? vm->mem_used : vm->ceiling)) {
    vm->mem_hit = true; /* LuaJIT raises LUA_ERRMEM ("not enough memory") */
    return NULL;
  }
  /* LuaJIT 2.1.0-beta3 (Debian 12) crashes when an allocation fails
   * inside lua_newstate after the first one: it closes the half-built
   * state. Those few allocations bypass mg_mem's fault injection so
   * torture runs test our code, not that bug; a real OOM there is as
   * fatal as before. Everything after lua_newstate is injectable. */
  void *np = vm->bootstrap ? realloc(ptr, nsize) : mg_realloc(ptr, nsize);
  if (!np) {
    if (nsize > old) return NULL;
    /* Lua requires shrinking to succeed; the old block is big enough.
     * Count it at the size Lua believes so the later free balances. */
    np = ptr;
  }
  vm->mem_used = vm->mem_used - old + nsize;
  return np;
}

mg_lua_vm_t *mg_lua_vm_from(lua_State *L) {
  void *ud = NULL;
  lua_getallocf(L, &ud);
  return ud;
}

/* ---- the sandbox -------------------------------------------------------- */

/* collectgarbage("count") only: scripts may watch their memory but not
 * drive the collector (a full collect per series would be a DoS). */
static int l_collectgarbage(lua_State *L) {
  const char *opt = luaL_optstring(L, 1, "collect");
  if (strcmp(opt, "count") != 0) return luaL_argerror(L, 1, "only \"count\" is allowed in moongate scripts");
  int kb = lua_gc(L, LUA_GCCOUNT, 0), rem = lua_gc(L, LUA_GCCOUNTB, 0);
  lua_pushnumber(L, (lua_Number)kb + (lua_Number)rem / 1024.0);
  return 1;
}

/* Append one value as print() would show it, without running Lua (no
 * __tostring: print must not be a way around budgets) and without
 * allocating (numbers are formatted here, not converted by Lua). */
static size_t print_value(lua_State *L, int i, char *out, size_t room) {
  int n;
  switch (lua_type(L, i)) {
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, i, &len);
    n = snprintf(out, room, "%.*s", (int)(len < room ? len : room), s);
    break;
  }
  case LUA_TNUMBER: n = snprintf(out, room, "%.14g", lua_tonumber(L, i)); break;
  case LUA_TBOOLEAN: n = snprintf(out, room, "%s", lua_toboolean(L, i) ? "true" : "false"); break;
  case LUA_TNIL: n = snprintf(out, room, "nil"); break;
  default: n = snprintf(out, room, "%s: %p", luaL_typename(L, i), lua_topointer(L, i)); break;
  }
  return n < 0 ? 0 : (size_t)n < room ? (size_t)n : room - 1;
}

/* print(...) goes to the log (stdout belongs to the stdout destination).
 * Fixed buffers: a Lua error (out of memory) may unwind through here. */
static int l_print(lua_State *L) {
  char text[1024], src[256], msg[1100];
  size_t len = 0;
  int n = lua_gettop(L);
  text[0] = '\0';
  for (int i = 1; i <= n && len + 1 < sizeof text; i++) {
    if (i > 1) text[len++] = '\t';
    len += print_value(L, i, text + len, sizeof text - len);
  }
  lua_Debug ar;
  int w = 0;
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
    w = snprintf(src, sizeof src, "%s:%d", ar.short_src, ar.currentline);
  char qs[300];
  MG_INFO("lua", "script_print", "src=%s msg=%s",
          mg_log_q(qs, sizeof qs, src, w > 0 ? ((size_t)w < sizeof src ? (size_t)w : sizeof src - 1) : 0),
          mg_log_q(msg, sizeof msg, text, len));
  return 0;
}

static int read_file(const char *path, char **out, size_t *outlen, char *why, size_t whysz);
static void env_new(lua_State *L);

static bool valid_modname(const char *s) {
  /* lowercase words separated by dots: no "..", no "/", nothing absolute */
  bool start = true;
  for (; *s; s++) {
    if (*s == '.') {
      if (start) return false;
      start = true;
    } else if ((*s >= 'a' && *s <= 'z') || *s == '_' || (!start && *s >= '0' && *s <= '9')) {
      start = false;
    } else {
      return false;
    }
  }
  return !start;
}

/* require(name): only modules of the moongate library directory, loaded in
 * text mode into a fresh sandbox. No C modules, no package.path. */
static int l_require(lua_State *L) {
  mg_lua_vm_t *vm = mg_lua_vm_from(L);
  const char *name = luaL_checkstring(L, 1);
  if (strlen(name) > 64 || !valid_modname(name))
    return luaL_argerror(L, 1, "module names are lowercase words separated by dots, like \"moongate\"");
  lua_settop(L, 1);
  lua_pushlightuserdata(L, &key_loaded);
  lua_rawget(L, LUA_REGISTRYINDEX); /* 2: loaded */
  lua_getfield(L, 2, name);
  if (lua_touserdata(L, -1) == &key_loading)
    return luaL_error(L, "require \"%s\": module requires itself (loop)", name);
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);
  /* Reading a file from a hook would block the loop. */
  if (!vm->loading)
    return luaL_error(L, "require \"%s\": load time only: require modules at the top of the script", name);
  if (!vm->lua_dir)
    return luaL_error(L, "require \"%s\": moongate's Lua library directory was not found (set MOONGATE_LUA_DIR)",
                      name);
  char path[PATH_MAX];
  int n = snprintf(path, sizeof path, "%s/%s.lua", vm->lua_dir, name);
  if (n < 0 || (size_t)n >= sizeof path) return luaL_error(L, "require \"%s\": path too long", name);
  for (char *p = path + strlen(vm->lua_dir) + 1; *p && strcmp(p, ".lua") != 0; p++)
    if (*p == '.') *p = '/';
  char *buf = NULL, why[128];
  size_t len = 0;
  int rc = read_file(path, &buf, &len, why, sizeof why);
  if (rc == MG_ENOTFOUND) return luaL_error(L, "require \"%s\": no such module (looked for %s)", name, path);
  if (rc < 0) return luaL_error(L, "require \"%s\": %s: %s", name, path, why);
  char chunkname[PATH_MAX + 1];
  snprintf(chunkname, sizeof chunkname, "@%s", path);
  int st = luaL_loadbufferx(L, buf, len, chunkname, "t");
  mg_free(buf);
  if (st != 0) return lua_error(L);
  env_new(L);
  lua_setfenv(L, -2); /* 3: chunk */
  lua_pushlightuserdata(L, &key_loading);
  lua_setfield(L, 2, name);
  lua_pushlightuserdata(L, &key_native);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  if (lua_iscfunction(L, -1)) {
    lua_call(L, 0, 1); /* the native half, passed as `...` */
  } else {
    lua_pop(L, 1);
    lua_pushstring(L, name);
  }
  if (lua_pcall(L, 1, 1, 0) != 0) {
    lua_pushnil(L);
    lua_setfield(L, 2, name); /* a later require may try again */
    return lua_error(L);
  }
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, 2, name);
  return 1;
}

static void copy_fields(lua_State *L, int from, int to) {
  lua_pushnil(L);
  while (lua_next(L, from)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, to);
  }
}

/* Push a fresh sandbox environment. Allocates: protected contexts only. */
static void env_new(lua_State *L) {
  lua_newtable(L);
  int env = lua_gettop(L);
  lua_pushlightuserdata(L, &key_template);
  lua_rawget(L, LUA_REGISTRYINDEX);
  int tpl = env + 1;
  lua_pushnil(L);
  while (lua_next(L, tpl)) {
    if (lua_istable(L, -1)) { /* libraries: a copy per environment */
      lua_newtable(L);
      copy_fields(L, lua_gettop(L) - 1, lua_gettop(L));
      lua_remove(L, -2);
    }
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, env);
  }
  lua_pop(L, 1); /* template */
  lua_pushvalue(L, env);
  lua_setfield(L, env, "_G");
}

static int fn_env(lua_State *L) {
  env_new(L);
  return 1;
}

/* prepare(chunk) -> chunk, with a fresh sandbox and the JIT off for it and
 * every function it defines. */
static int fn_prepare(lua_State *L) {
  lua_settop(L, 1);
  env_new(L);
  lua_setfenv(L, 1);
  luaJIT_setmode(L, 1, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_OFF);
  return 1;
}

int mg_lua_push_env(mg_lua_vm_t *vm) {
  push_reg(vm->L, &key_fn_env);
  if (lua_pcall(vm->L, 0, 1, 0) != 0) {
    lua_pop(vm->L, 1);
    return MG_ENOMEM;
  }
  return 0;
}

static const char *const base_names[] = {
    "assert", "error",    "getmetatable", "ipairs",   "next",     "pairs",  "pcall",  "rawequal",
    "rawget", "rawset",   "select",       "setmetatable", "tonumber", "tostring", "type", "unpack",
    "xpcall", "_VERSION", NULL,
};

static void open_lib(lua_State *L, lua_CFunction f, const char *name) {
  lua_pushcfunction(L, f);
  lua_pushstring(L, name);
  lua_call(L, 1, 0);
}

static int traceback_handler(lua_State *L);

/* Without a protected call around it, an error (out of memory while
 * pushing from C) ends the process; say why before LuaJIT exits. */
static int panic(lua_State *L) {
  const char *m = lua_tostring(L, -1);
  char q[600];
  MG_ERROR("lua", "lua_panic", "err=%s hint=\"unprotected Lua error, moongate exits\"",
           mg_log_q(q, sizeof q, m ? m : "?", strlen(m ? m : "?")));
  return 0;
}

/* Runs under lua_cpcall so an allocation failure is an error, not a panic. */
static int setup(lua_State *L) {
  mg_lua_vm_t *vm = lua_touserdata(L, 1);
  lua_settop(L, 0);
  open_lib(L, luaopen_base, "");
  open_lib(L, luaopen_string, LUA_STRLIBNAME);
  open_lib(L, luaopen_table, LUA_TABLIBNAME);
  open_lib(L, luaopen_math, LUA_MATHLIBNAME);
  open_lib(L, luaopen_os, LUA_OSLIBNAME);
  if (vm->opts.allow_unsafe) open_lib(L, luaopen_io, LUA_IOLIBNAME);
  /* The JIT is off in a state until the jit library initialises it. It
   * serves the trusted library; user code is kept interpreted. */
  open_lib(L, luaopen_jit, LUA_JITLIBNAME);

  lua_newtable(L);
  int tpl = lua_gettop(L);
  for (const char *const *n = base_names; *n; n++) {
    lua_getglobal(L, *n);
    lua_setfield(L, tpl, *n);
  }
  /* string.dump would hand out bytecode; it also sits behind ("").dump,
   * so it goes from the shared table, and the string metatable is locked
   * (getmetatable("") returns a string, not the table). */
  lua_getglobal(L, "string");
  lua_pushnil(L);
  lua_setfield(L, -2, "dump");
  lua_setfield(L, tpl, "string");
  lua_pushliteral(L, "");
  lua_getmetatable(L, -1);
  lua_pushliteral(L, "string");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 2);
  lua_getglobal(L, "table");
  lua_getglobal(L, "unpack");
  lua_setfield(L, -2, "unpack"); /* Lua 5.2 spelling, for portable scripts */
  lua_setfield(L, tpl, "table");
  lua_getglobal(L, "math");
  lua_setfield(L, tpl, "math");
  if (vm->opts.allow_unsafe) {
    lua_getglobal(L, "os");
    lua_setfield(L, tpl, "os");
    lua_getglobal(L, "io");
    lua_setfield(L, tpl, "io");
  } else {
    lua_newtable(L);
    lua_getglobal(L, "os");
    static const char *const os_safe[] = {"time", "date", "clock", "difftime", NULL};
    for (const char *const *n = os_safe; *n; n++) {
      lua_getfield(L, -1, *n);
      lua_setfield(L, -3, *n);
    }
    lua_pop(L, 1);
    lua_setfield(L, tpl, "os");
  }
  lua_pushcfunction(L, l_require);
  lua_setfield(L, tpl, "require");
  lua_pushcfunction(L, l_print);
  lua_setfield(L, tpl, "print");
  lua_pushcfunction(L, l_collectgarbage);
  lua_setfield(L, tpl, "collectgarbage");
  lua_pushlightuserdata(L, &key_template);
  lua_pushvalue(L, tpl);
  lua_rawset(L, LUA_REGISTRYINDEX);

  static const struct {
    char *key;
    lua_CFunction fn;
  } fns[] = {{&key_fn_handler, traceback_handler}, {&key_fn_env, fn_env}, {&key_fn_prepare, fn_prepare}};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    lua_pushlightuserdata(L, fns[i].key);
    lua_pushcfunction(L, fns[i].fn);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }

  lua_pushlightuserdata(L, &key_loaded);
  lua_newtable(L);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, &key_native);
  lua_newtable(L);
  lua_rawset(L, LUA_REGISTRYINDEX);

  /* Every chunk gets its own environment; the state's globals (with load,
   * dofile, getfenv, jit...) are replaced by an empty table so nothing can
   * reach them even through a function that escapes the sandbox. */
  lua_newtable(L);
  lua_replace(L, LUA_GLOBALSINDEX);
  return 0;
}

static char *dup_opt(const char *s, bool *oom) {
  if (!s) return NULL;
  char *d = mg_strdup(s);
  if (!d) *oom = true;
  return d;
}

int mg_lua_vm_new(const mg_lua_opts_t *opts, mg_lua_vm_t **out) {
  *out = NULL;
  mg_lua_vm_t *vm = mg_calloc(1, sizeof *vm);
  if (!vm) return MG_ENOMEM;
  if (opts) vm->opts = *opts;
  bool oom = false;
  vm->listen_address = dup_opt(vm->opts.listen_address ? vm->opts.listen_address : MG_LUA_DEFAULT_LISTEN, &oom);
  vm->lua_dir_opt = dup_opt(vm->opts.lua_dir, &oom);
  vm->opts.listen_address = vm->listen_address;
  vm->opts.lua_dir = vm->lua_dir_opt;
  if (!vm->opts.mem_limit) vm->opts.mem_limit = MG_LUA_DEFAULT_MEM_LIMIT;
  mg_lua_budget_t *lb = &vm->opts.load_budget;
  if (!lb->max_instructions) lb->max_instructions = MG_LUA_LOAD_MAX_INSTRUCTIONS;
  if (!lb->max_ms) lb->max_ms = MG_LUA_LOAD_MAX_MS;
  if (!lb->max_bytes || lb->max_bytes > vm->opts.mem_limit) lb->max_bytes = vm->opts.mem_limit;
  char dir[PATH_MAX];
  if (mg_lua_find_dir(&vm->opts, dir, sizeof dir) == 0) vm->lua_dir = dup_opt(dir, &oom);
  vm->ceiling = vm->opts.mem_limit;
  if (!oom) {
    vm->bootstrap = true;
    vm->L = lua_newstate(vm_alloc, vm);
    vm->bootstrap = false;
  }
  if (oom || !vm->L) {
    mg_lua_vm_free(vm);
    return MG_ENOMEM;
  }
  lua_atpanic(vm->L, panic);
  if (lua_cpcall(vm->L, setup, vm) != 0) {
    mg_lua_vm_free(vm);
    return MG_ENOMEM; /* setup only allocates */
  }
  *out = vm;
  return 0;
}

void mg_lua_vm_free(mg_lua_vm_t *vm) {
  if (!vm) return;
  if (vm->L) {
    vm->ceiling = SIZE_MAX; /* finalizers must be able to run */
    lua_close(vm->L);
  }
  mg_free(vm->listen_address);
  mg_free(vm->lua_dir_opt);
  mg_free(vm->lua_dir);
  mg_free(vm->script);
  mg_free(vm);
}

lua_State *mg_lua_vm_state(mg_lua_vm_t *vm) { return vm->L; }
const mg_lua_opts_t *mg_lua_vm_opts(const mg_lua_vm_t *vm) { return &vm->opts; }
const char *mg_lua_vm_lua_dir(const mg_lua_vm_t *vm) { return vm->lua_dir; }
size_t mg_lua_vm_mem(const mg_lua_vm_t *vm) { return vm->mem_used; }
const char *mg_lua_vm_error(const mg_lua_vm_t *vm) { return vm->err; }

typedef struct {
  const char *name;
  lua_CFunction open;
} native_arg_t;

static int add_native(lua_State *L) {
  native_arg_t *a = lua_touserdata(L, 1);
  lua_pushlightuserdata(L, &key_native);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushcfunction(L, a->open);
  lua_setfield(L, -2, a->name);
  return 0;
}

int mg_lua_vm_add_native(mg_lua_vm_t *vm, const char *name, lua_CFunction open) {
  native_arg_t a = {name, open};
  return lua_cpcall(vm->L, add_native, &a) == 0 ? 0 : MG_ENOMEM;
}

/* ---- finding the library ------------------------------------------------ */

static bool has_lib(const char *dir) {
  char p[PATH_MAX];
  int n = snprintf(p, sizeof p, "%s/moongate.lua", dir);
  return n > 0 && (size_t)n < sizeof p && access(p, R_OK) == 0;
}

static int put_dir(char *out, size_t outsz, const char *dir) {
  int n = snprintf(out, outsz, "%s", dir);
  return n < 0 || (size_t)n >= outsz ? MG_ETOOBIG : 0;
}

/* An explicit directory without the library is a mistake worth a line. */
static bool explicit_dir(const char *dir, const char *what) {
  if (has_lib(dir)) return true;
  char q[300];
  MG_WARN("lua", "lua_dir_ignored", "%s=%s hint=\"no readable moongate.lua there; searching the default places\"", what,
          mg_log_q(q, sizeof q, dir, strlen(dir)));
  return false;
}

int mg_lua_find_dir(const mg_lua_opts_t *opts, char *out, size_t outsz) {
  if (outsz) out[0] = '\0';
  const char *env = getenv("MOONGATE_LUA_DIR");
  if (env && *env && explicit_dir(env, "MOONGATE_LUA_DIR")) return put_dir(out, outsz, env);
  if (opts && opts->lua_dir && explicit_dir(opts->lua_dir, "lua_dir")) return put_dir(out, outsz, opts->lua_dir);
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) {
      char rel[PATH_MAX];
      *slash = '\0';
      int w = snprintf(rel, sizeof rel, "%s/../share/moongate/lua", exe);
      if (w > 0 && (size_t)w < sizeof rel && has_lib(rel)) return put_dir(out, outsz, rel);
    }
  }
#ifdef MG_LUA_DIR
  if (has_lib(MG_LUA_DIR)) return put_dir(out, outsz, MG_LUA_DIR);
#endif
  if (has_lib(MG_LUA_INSTALL_DIR)) return put_dir(out, outsz, MG_LUA_INSTALL_DIR);
  return MG_ENOTFOUND;
}

/* ---- loading ------------------------------------------------------------- */

/* Whole file into a NUL-terminated mg_malloc buffer, at most MG_LUA_MAX_FILE. */
static int read_file(const char *path, char **out, size_t *outlen, char *why, size_t whysz) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(why, whysz, "%s", strerror(errno));
    return errno == ENOENT ? MG_ENOTFOUND : MG_EIO;
  }
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    snprintf(why, whysz, "not a regular file");
    return MG_EIO;
  }
  if ((uint64_t)st.st_size > MG_LUA_MAX_FILE) {
    fclose(f);
    snprintf(why, whysz, "larger than %zu bytes", MG_LUA_MAX_FILE);
    return MG_ETOOBIG;
  }
  size_t cap = (size_t)st.st_size;
  char *buf = mg_malloc(cap + 1);
  if (!buf) {
    fclose(f);
    snprintf(why, whysz, "out of memory");
    return MG_ENOMEM;
  }
  size_t len = fread(buf, 1, cap, f);
  bool bad = ferror(f);
  fclose(f);
  if (bad) {
    mg_free(buf);
    snprintf(why, whysz, "read error");
    return MG_EIO;
  }
  buf[len] = '\0';
  *out = buf;
  *outlen = len;
  return 0;
}

static void set_err(mg_conf_error_t *err, const char *file, uint32_t line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set_err(mg_conf_error_t *err, const char *file, uint32_t line, const char *fmt, ...) {
  if (!err) return;
  snprintf(err->file, sizeof err->file, "%s", file ? file : "");
  err->line = line;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  va_end(ap);
}

void mg_lua_error_parse(const char *msg, const char *path, mg_conf_error_t *err) {
  if (!err) return;
  if (!msg) msg = "";
  /* The position is the first "src:digits:" in the message: nested
   * positions ("x.lua:5: moongate.lua:9: ...") belong to the outer caller. */
  for (const char *c = strchr(msg, ':'); c; c = strchr(c + 1, ':')) {
    const char *d = c + 1;
    uint32_t line = 0;
    while (*d >= '0' && *d <= '9' && line < 100000000u) line = line * 10 + (uint32_t)(*d++ - '0');
    if (d == c + 1 || *d != ':' || c == msg) continue;
    size_t srclen = (size_t)(c - msg);
    const char *text = d + 1;
    if (*text == ' ') text++;
    char src[sizeof err->file];
    snprintf(src, sizeof src, "%.*s", (int)(srclen < sizeof src ? srclen : sizeof src - 1), msg);
    /* Long "@path" sources are shortened to "...tail" by Lua. */
    if (path && strncmp(src, "...", 3) == 0) {
      size_t pl = strlen(path), tl = strlen(src + 3);
      if (tl <= pl && strcmp(path + pl - tl, src + 3) == 0) snprintf(src, sizeof src, "%s", path);
    }
    set_err(err, src, line, "%s", text);
    return;
  }
  set_err(err, path, 0, "%s", msg);
}

int mg_lua_load_file(mg_lua_vm_t *vm, const char *path, mg_conf_error_t *err) {
  lua_State *L = vm->L;
  char *buf = NULL, why[128];
  size_t len = 0;
  int rc = read_file(path, &buf, &len, why, sizeof why);
  if (rc < 0) {
    set_err(err, path, 0, "cannot read script: %s", why);
    return rc == MG_ENOTFOUND ? MG_EIO : rc;
  }
  if (!vm->script && !(vm->script = mg_strdup(path))) {
    mg_free(buf);
    set_err(err, path, 0, "out of memory");
    return MG_ENOMEM;
  }
  /* A "#!" first line (scripts run as executables) is blanked, not
   * removed, so line numbers stay true. */
  if (len && buf[0] == '#')
    for (size_t i = 0; i < len && buf[i] != '\n'; i++) buf[i] = ' ';
  char chunkname[PATH_MAX + 1];
  snprintf(chunkname, sizeof chunkname, "@%s", path);
  bool binary = len && buf[0] == LUA_SIGNATURE[0];
  int st = luaL_loadbufferx(L, buf, len, chunkname, "t");
  mg_free(buf);
  if (st != 0) {
    if (binary)
      set_err(err, path, 0, "precompiled bytecode is refused: give the Lua source (%s)", lua_tostring(L, -1));
    else
      mg_lua_error_parse(lua_tostring(L, -1), path, err);
    lua_pop(L, 1);
    return st == LUA_ERRMEM ? MG_ENOMEM : MG_ELUA;
  }
  push_reg(L, &key_fn_prepare);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 1, 0) != 0) {
    lua_pop(L, 1);
    set_err(err, path, 0, "out of memory");
    return MG_ENOMEM;
  }
  return 0;
}

/* ---- protected calls and budgets --------------------------------------- */

static const char *reason_name(reason_t r) {
  switch (r) {
  case R_NONE:
  case R_ERROR: return "error";
  case R_INSTRUCTIONS: return "instructions";
  case R_TIMEOUT: return "timeout";
  case R_MEMORY: return "memory";
  }
  return "error";
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  mg_lua_vm_t *vm = mg_lua_vm_from(L);
  if (!vm->exceeded) {
    vm->steps += (uint64_t)vm->hook_step;
    if (vm->max_steps && vm->steps >= vm->max_steps)
      vm->exceeded = R_INSTRUCTIONS;
    else if (vm->deadline_ns && now_ns() >= vm->deadline_ns)
      vm->exceeded = R_TIMEOUT;
    else if (vm->mem_used > vm->soft)
      vm->exceeded = R_MEMORY;
    else
      return;
    /* From now on every instruction raises, so a script cannot swallow
     * the stop with pcall and carry on. */
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
  }
  char where[300] = "";
  lua_Debug d;
  if (lua_getstack(L, 0, &d) && lua_getinfo(L, "Sl", &d) && d.currentline > 0)
    snprintf(where, sizeof where, "%s:%d: ", d.short_src, d.currentline);
  char msg[400];
  if (vm->exceeded == R_INSTRUCTIONS)
    snprintf(msg, sizeof msg, "%sinstruction budget exceeded (%" PRIu64 " instructions)", where, vm->max_steps);
  else if (vm->exceeded == R_MEMORY)
    snprintf(msg, sizeof msg, "%smemory budget exceeded (ceiling %zu bytes)", where, vm->ceiling);
  else
    snprintf(msg, sizeof msg, "%stime budget exceeded (%" PRIu64 " ms)",
             where, (vm->deadline_ns - vm->call_start_ns) / 1000000u);
  lua_pushstring(L, msg);
  lua_error(L);
}

/* Message handler: keeps the message and the traceback apart so logs can
 * show both and callers get the bare message. Runs no Lua (no __tostring):
 * after a budget stop every Lua instruction raises. */
static int traceback_handler(lua_State *L) {
  mg_lua_vm_t *vm = mg_lua_vm_from(L);
  if (vm->ceiling <= SIZE_MAX - ERR_HEADROOM) vm->ceiling += ERR_HEADROOM;
  int t = lua_type(L, 1);
  if (t == LUA_TSTRING || t == LUA_TNUMBER)
    snprintf(vm->err, sizeof vm->err, "%s", lua_tostring(L, 1));
  else
    snprintf(vm->err, sizeof vm->err, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, NULL, 1);
  snprintf(vm->tb, sizeof vm->tb, "%s", lua_tostring(L, -1));
  lua_pushstring(L, vm->err);
  return 1;
}

/* pcall with handler and budgets. Budgets are armed by the outermost call
 * only; nested calls share them. On error pops the message. */
static int vm_pcall(mg_lua_vm_t *vm, int nargs, int nresults, const mg_lua_budget_t *b, reason_t *reason) {
  lua_State *L = vm->L;
  int fn = lua_gettop(L) - nargs;
  bool outer = vm->depth == 0;
  size_t saved_ceiling = vm->ceiling;
  if (outer) {
    vm->err[0] = vm->tb[0] = '\0';
    vm->exceeded = R_NONE;
    vm->mem_hit = false;
    vm->steps = 0;
    vm->max_steps = b ? b->max_instructions : 0;
    vm->call_start_ns = now_ns();
    vm->deadline_ns = b && b->max_ms ? vm->call_start_ns + b->max_ms * 1000000u : 0;
    size_t ceiling = vm->opts.mem_limit;
    if (b && b->max_bytes && b->max_bytes < ceiling) ceiling = b->max_bytes;
    /* LuaJIT has no emergency collection: garbage left by earlier calls
     * would count against this one. Collect when close to the ceiling. */
    if (vm->mem_used > ceiling / 4 * 3) lua_gc(L, LUA_GCCOLLECT, 0);
    vm->ceiling = ceiling;
    vm->soft = ceiling - (ceiling / 8 < SOFT_MARGIN_MAX ? ceiling / 8 : SOFT_MARGIN_MAX);
    vm->hook_step = vm->max_steps && vm->max_steps < HOOK_STEP ? (int)vm->max_steps : HOOK_STEP;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, vm->hook_step);
  }
  push_reg(L, &key_fn_handler);
  lua_insert(L, fn);
  vm->depth++;
  int st = lua_pcall(L, nargs, nresults, fn);
  vm->depth--;
  lua_remove(L, fn);
  reason_t r = R_NONE;
  if (st != 0) {
    r = vm->exceeded ? vm->exceeded : R_ERROR;
    if (st == LUA_ERRMEM) {
      /* LuaJIT does not call the handler for memory errors. */
      if (vm->mem_hit) {
        r = R_MEMORY;
        snprintf(vm->err, sizeof vm->err, "memory budget exceeded (ceiling %zu bytes)", vm->ceiling);
      } else {
        snprintf(vm->err, sizeof vm->err, "not enough memory");
      }
      vm->tb[0] = '\0';
    } else if (st == LUA_ERRERR) {
      if (vm->mem_hit) r = R_MEMORY;
      snprintf(vm->err, sizeof vm->err, "error while reporting an error%s",
               vm->mem_hit ? " (memory budget exceeded)" : "");
      vm->tb[0] = '\0';
    }
    lua_pop(L, 1);
  }
  if (outer) {
    lua_sethook(L, NULL, 0, 0);
    vm->ceiling = vm->opts.mem_limit;
    vm->exceeded = R_NONE;
    vm->max_steps = 0;
    vm->deadline_ns = 0;
  } else {
    vm->ceiling = saved_ceiling;
  }
  *reason = r;
  return st;
}

int mg_lua_call(mg_lua_vm_t *vm, const char *what, int nargs, int nresults, const mg_lua_budget_t *budget) {
#ifndef NDEBUG
  int base = lua_gettop(vm->L) - nargs - 1;
#endif
  reason_t r;
  int st = vm_pcall(vm, nargs, nresults, budget, &r);
  if (st == 0) {
    assert(nresults == LUA_MULTRET || lua_gettop(vm->L) == base + nresults);
    return 0;
  }
  assert(lua_gettop(vm->L) == base);
  mg_metric_t *m = mg_metrics_counter("moongate_lua_errors_total",
                                      "Errors and budget stops in script functions called by moongate, by reason.",
                                      "reason", reason_name(r), NULL);
  mg_metric_inc(m ? m : mg_metrics_dummy());
  /* A broken hook fails once per new series: each distinct error is
   * logged once (the counter has the repeats), and at most 10 distinct
   * ones a second, for messages that embed changing values. */
  uint64_t h = mg_hash64(vm->err, strlen(vm->err), mg_hash64(what ? what : "", what ? strlen(what) : 0, r));
  for (unsigned i = 0; i < vm->nseen && i < 64; i++)
    if (vm->seen[i] == h) return vm->log_suppressed++, MG_ELUA;
  unsigned long long now_ms = now_ns() / 1000000u;
  if (now_ms - vm->log_window_ms >= 1000) vm->log_window_ms = now_ms, vm->log_in_window = 0;
  if (vm->log_in_window++ >= 10) return vm->log_suppressed++, MG_ELUA;
  vm->seen[vm->nseen++ % 64] = h;
  char qs[300], qf[100], qe[600], qt[2300];
  const char *script = vm->script ? vm->script : "";
  MG_ERROR("lua", "lua_error", "script=%s function=%s reason=%s err=%s traceback=%s suppressed=%" PRIu64,
           mg_log_q(qs, sizeof qs, script, strlen(script)), mg_log_q(qf, sizeof qf, what ? what : "?", strlen(what ? what : "?")),
           reason_name(r), mg_log_q(qe, sizeof qe, vm->err, strlen(vm->err)),
           mg_log_q(qt, sizeof qt, vm->tb, strlen(vm->tb)), vm->log_suppressed);
  vm->log_suppressed = 0;
  return MG_ELUA;
}

int mg_lua_run_file(mg_lua_vm_t *vm, const char *path, mg_conf_error_t *err) {
  int rc = mg_lua_load_file(vm, path, err);
  if (rc < 0) return rc;
  reason_t r;
  vm->loading = true;
  int st = vm_pcall(vm, 0, 0, &vm->opts.load_budget, &r);
  vm->loading = false;
  if (st != 0) {
    mg_lua_error_parse(vm->err, path, err);
    char qp[300], qt[2300];
    MG_DEBUG("lua", "script_failed", "script=%s reason=%s traceback=%s", mg_log_q(qp, sizeof qp, path, strlen(path)),
             reason_name(r), mg_log_q(qt, sizeof qt, vm->tb, strlen(vm->tb)));
    return MG_ELUA;
  }
  return 0;
}

int mg_lua_jit_off(mg_lua_vm_t *vm, int idx) {
  lua_State *L = vm->L;
  if (lua_type(L, idx) != LUA_TFUNCTION || lua_iscfunction(L, idx)) return MG_EINVAL;
  return luaJIT_setmode(L, idx, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_OFF) ? 0 : MG_EINVAL;
}
