/* mg_lua_hooks: the per-series hooks a script defines on the module table
 * (mg.relabel, mg.filter, mg.route, and mg.fallback for when they fail),
 * turned into the mg_series_decide_fn the scrape engine calls once per
 * new series. Owns registry refs to the hook functions; borrows the VM,
 * which must outlive it. Never calls Lua per sample. */
#ifndef MG_LUA_HOOKS_H
#define MG_LUA_HOOKS_H

#include "mg_conf.h"
#include "mg_lua.h"
#include "mg_series.h"

typedef struct mg_lua_hooks mg_lua_hooks_t;

/* Budget of one hook call: hooks are cold (once per new series), so
 * these are generous for real logic and still stop a runaway loop fast. */
#define MG_LUA_HOOK_MAX_INSTRUCTIONS 1000000ull
#define MG_LUA_HOOK_MAX_MS 100ull

/* Read the hooks of the script loaded in vm (after mg_lua_api_load and
 * mg_lua_api_finish). *out = NULL when the script defines none. Returns
 * MG_ELUA with err filled (file = the script, line 0) when a hook field has
 * the wrong type (mg.route = 5) or mg.fallback is neither "drop", a
 * destination, nor a list of destinations. conf must be the plan the
 * script built. */
int mg_lua_hooks_new(mg_lua_vm_t *vm, const mg_conf_t *conf, mg_lua_hooks_t **out, mg_conf_error_t *err);
void mg_lua_hooks_free(mg_lua_hooks_t *h);

/* The mg_series_decide_fn (ud = the hooks). Order: relabel (returns a
 * label table to replace the labels, false to drop, nil/true to keep),
 * filter (falsy drops), route (a destination, a list of them, or nil to
 * drop; without a route hook every destination). A hook that raises,
 * exceeds its budget or returns something else is logged and counted
 * (moongate_lua_errors_total) and the series takes the fallback: by
 * default every destination with its labels unchanged (fail open). */
int mg_lua_hooks_decide(void *ud, const mg_series_view_t *in, mg_series_decision_t *out);

#endif
