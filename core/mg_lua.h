/* mg_lua: the LuaJIT VM that runs user scripts: a sandboxed state, text-only
 * script loading with file:line errors, mg_lua_call (pcall + traceback, log,
 * count) and budgets (instructions, wall clock, memory). Owns the lua_State.
 * Knows nothing about the moongate module (mg_lua_api adds it) or the plan.
 *
 * Phase: a VM is created and used on the loop thread only; nothing here
 * blocks except reading the script and library files at load time. */
#ifndef MG_LUA_H
#define MG_LUA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "mg_conf.h" /* mg_conf_error_t */

/* Limits for one protected call. A zero field means "no limit of that kind"
 * in mg_lua_call, and "the default" in mg_lua_opts_t.load_budget. */
typedef struct mg_lua_budget {
  uint64_t max_instructions; /* VM instructions, counted by a count hook */
  uint64_t max_ms;           /* wall clock (CLOCK_MONOTONIC) */
  size_t max_bytes;          /* ceiling on the whole VM heap while the call runs,
                                capped by mg_lua_opts_t.mem_limit */
} mg_lua_budget_t;

/* Defaults for running a configuration script at load. Generous: a script
 * that computes a few thousand targets needs a few million instructions. */
#define MG_LUA_LOAD_MAX_INSTRUCTIONS 500000000ull
#define MG_LUA_LOAD_MAX_MS 10000ull
#define MG_LUA_DEFAULT_MEM_LIMIT ((size_t)256 << 20)
/* Largest script or library file read (bytes). */
#define MG_LUA_MAX_FILE ((size_t)16 << 20)
/* The address scripts see as mg.listen_address when the caller gives none. */
#define MG_LUA_DEFAULT_LISTEN "127.0.0.1:9464"

typedef struct mg_lua_opts {
  const char *listen_address; /* moongate's own HTTP server, "host:port";
                                 NULL = MG_LUA_DEFAULT_LISTEN. Copied. */
  bool allow_unsafe;          /* operator opt-in: scripts also get io and the
                                 whole os library (os.execute, os.remove...) */
  const char *lua_dir;        /* directory holding moongate.lua; NULL = search,
                                 see mg_lua_find_dir. Copied. */
  size_t mem_limit;           /* hard ceiling of the VM heap; 0 = MG_LUA_DEFAULT_MEM_LIMIT */
  mg_lua_budget_t load_budget; /* running the script at load; zero fields take
                                  MG_LUA_LOAD_MAX_INSTRUCTIONS / _MS / mem_limit */
} mg_lua_opts_t;

typedef struct mg_lua_vm mg_lua_vm_t;

/* Create a sandboxed VM (see docs/lua-api.md "Sandbox"): standard functions
 * limited to string, table, math, os.time/date/clock and a safe subset of
 * the base library; io/os added only with allow_unsafe. The JIT is on for
 * the library; every function of a user script runs interpreted (see
 * mg_lua_load_file). opts may be NULL. Returns 0, MG_ENOMEM. */
int mg_lua_vm_new(const mg_lua_opts_t *opts, mg_lua_vm_t **out);
/* Close the state (runs __gc of every object) and free the VM. NULL is fine. */
void mg_lua_vm_free(mg_lua_vm_t *vm);

/* The state, for mg_lua_api and callers pushing arguments. Borrowed until
 * mg_lua_vm_free. */
lua_State *mg_lua_vm_state(mg_lua_vm_t *vm);
/* The VM that owns L (any coroutine of it). */
mg_lua_vm_t *mg_lua_vm_from(lua_State *L);
/* The options the VM was created with; strings borrowed until free. */
const mg_lua_opts_t *mg_lua_vm_opts(const mg_lua_vm_t *vm);
/* The resolved library directory, or NULL when none was found. */
const char *mg_lua_vm_lua_dir(const mg_lua_vm_t *vm);
/* Bytes currently held by the Lua heap. */
size_t mg_lua_vm_mem(const mg_lua_vm_t *vm);
/* Message of the last failed mg_lua_call/mg_lua_run_file, without the
 * traceback. Borrowed until the next call. "" when none. */
const char *mg_lua_vm_error(const mg_lua_vm_t *vm);

/* Find the directory of the Lua half of the moongate module: the first of
 *   1. $MOONGATE_LUA_DIR
 *   2. opts->lua_dir
 *   3. <dir of the executable>/../share/moongate/lua   (relocatable install)
 *   4. MG_LUA_DIR, the source tree's lua/ (compile definition; development)
 *   5. MG_LUA_INSTALL_DIR (compile definition; default
 *      /usr/local/share/moongate/lua)
 * that contains a readable moongate.lua (a 1. or 2. without one is logged
 * as event=lua_dir_ignored). Writes it to out. Returns 0,
 * MG_ENOTFOUND (out then lists nothing), MG_ETOOBIG if out is too small. */
int mg_lua_find_dir(const mg_lua_opts_t *opts, char *out, size_t outsz);

/* Register a native part of a module: when a script first does
 * require(name), <lua dir>/<name>.lua is loaded and run with the value
 * returned by open(L) as its argument (`local core = ...`), so the Lua half
 * can wrap the C half without the C half being reachable from scripts.
 * Modules are read while mg_lua_run_file runs the script; later (from a
 * hook) require returns cached modules only, so no hook reads files.
 * Call before running the script. Returns 0, MG_ENOMEM. */
int mg_lua_vm_add_native(mg_lua_vm_t *vm, const char *name, lua_CFunction open);

/* Read path (at most MG_LUA_MAX_FILE bytes, a leading #! line ignored),
 * compile it in text mode (bytecode is refused) as chunk "@path", give it a
 * fresh sandbox environment and turn the JIT off for it and every function
 * defined in it (count hooks do not fire in compiled code, so budgets would
 * not hold). On success pushes the chunk and returns 0. On failure pushes
 * nothing, fills err (file, line, message without the "file:line:" prefix)
 * and returns MG_ELUA (syntax), MG_EIO (cannot read), MG_ETOOBIG. */
int mg_lua_load_file(mg_lua_vm_t *vm, const char *path, mg_conf_error_t *err);

/* mg_lua_load_file, then call the chunk with no arguments under
 * opts.load_budget. Results are dropped. Errors are not logged (the caller
 * prints err); the traceback goes to the debug log. Returns 0, MG_ELUA
 * (script error or budget exceeded), or a load_file error. */
int mg_lua_run_file(mg_lua_vm_t *vm, const char *path, mg_conf_error_t *err);

/* Call the function below nargs arguments on the stack, like lua_pcall
 * with a traceback handler, under budget (NULL = no limits beyond the VM
 * memory ceiling). what names the function in logs ("route", "filter").
 * On success leaves nresults values (LUA_MULTRET allowed) and returns 0.
 * On error pops function and arguments, pushes nothing, logs
 * `event=lua_error script=… function=… reason=… err=… traceback=…`
 * (rate-limited to one line per second, with a count of the rest), counts
 * moongate_lua_errors_total{reason="error"|"instructions"|"timeout"|"memory"}
 * and returns MG_ELUA; mg_lua_vm_error has the message. Never exits.
 * A budget is enforced through the VM-wide count hook: the function must
 * run interpreted (loaded by mg_lua_load_file, or mg_lua_jit_off). Nested
 * calls (C called from Lua calling back) run under the outer budget.
 * Out of memory: in LuaJIT an allocation failure outside a protected call
 * is fatal (logged as event=lua_panic, then the process exits). Pushing
 * existing values (lua_pushvalue, numbers, booleans, light userdata, refs)
 * never allocates; to build strings or tables as arguments, do it inside
 * a lua_CFunction run with lua_cpcall and call mg_lua_call from there. */
int mg_lua_call(mg_lua_vm_t *vm, const char *what, int nargs, int nresults, const mg_lua_budget_t *budget);

/* jit.off(fn, true) for the function at idx: flush its compiled traces and
 * keep it and every function defined inside it interpreted, so count hooks
 * (the instruction and time budgets) fire in it. Use on every hook
 * function a script hands to moongate. Returns 0, MG_EINVAL (not a Lua
 * function). */
int mg_lua_jit_off(mg_lua_vm_t *vm, int idx);

/* Push a fresh sandbox environment table (what a script sees as _G).
 * Returns 0, or MG_ENOMEM with nothing pushed. */
int mg_lua_push_env(mg_lua_vm_t *vm);

/* Split a Lua error message "src:line: text" into err. src is matched
 * against path so a "..."-shortened source name gives back the full path;
 * a message without a position gets file = path (may be NULL), line = 0. */
void mg_lua_error_parse(const char *msg, const char *path, mg_conf_error_t *err);

#endif
