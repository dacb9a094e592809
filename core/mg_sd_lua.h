/* mg_sd_lua: targets computed by a Lua function of the plan's script
 * (mg.scrape{targets = function() ... end} or {fn = ..., refresh = "30s"}).
 * The function runs in the script's VM every refresh (first at start,
 * from the loop) under the hooks' budget, and returns a list whose entries
 * are "host:port" strings or {targets = {...}, labels = {...}} groups. An
 * error or a bad result keeps the previous list: errors are logged once
 * per distinct message and counted in moongate_lua_errors_total. Option:
 * refresh (duration, default 30s); the function is sd->lua_ref in the VM
 * given as env->lua. */
#ifndef MG_SD_LUA_H
#define MG_SD_LUA_H

#include "mg_sd.h"

#define MG_SD_LUA_DEFAULT_REFRESH_MS 30000

extern const mg_sd_ops_t mg_sd_lua_ops;

#endif
