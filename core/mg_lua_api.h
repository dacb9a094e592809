/* mg_lua_api: the C half of the `moongate` module scripts require (the Lua
 * half is lua/moongate.lua): plan builders that turn mg.global, mg.scrape,
 * mg.remote_write, mg.workspace, mg.stdout and mg.file into an mg_conf_t,
 * the moongate.Destination userdata, mg.log, mg.env. Also the config
 * loader entry point, mg_lua_load_conf, kept under its CLI-facing name.
 * Script-facing reference: docs/lua-api.md. */
#ifndef MG_LUA_API_H
#define MG_LUA_API_H

#include <stddef.h>

#include "mg_conf.h"
#include "mg_lua.h"

/* The whole loader, for `moongate check` and `run`: create a sandboxed VM
 * (opts may be NULL), run the script at path, collect the plan it declares
 * into a new mg_conf_t (source MG_CONF_LUA; NOT finished: the caller runs
 * mg_conf_finish), close the VM. On success *out is owned by the caller.
 * On failure *out = NULL and err has file, line (0 when unknown) and the
 * message without the "file:line: " prefix; returns
 *   MG_ELUA     syntax or runtime error, bad argument table
 *               (`mg.scrape: field 'interval': invalid duration "5x"`, at
 *               the line of the mg.scrape call), budget exceeded;
 *   MG_EIO      the script cannot be read; MG_ETOOBIG over MG_LUA_MAX_FILE;
 *   MG_ENOMEM. */
int mg_lua_load_conf(const char *path, const mg_lua_opts_t *opts, mg_conf_t **out, mg_conf_error_t *err);

/* Make require "moongate" work in vm: registers the native half, which
 * <lua dir>/moongate.lua wraps. Once per VM, right after mg_lua_vm_new.
 * Returns 0, MG_ENOMEM. */
int mg_lua_api_open(mg_lua_vm_t *vm);

/* mg_lua_load_conf on a VM the caller keeps (hooks and routing will live
 * in it). Once per VM: a reload builds a new VM, runs the script there and
 * swaps only on success. The builders work only while this runs; called
 * later (from a hook) they raise "load time only". Same errors as
 * mg_lua_load_conf, plus MG_EINVAL when the VM was not opened with
 * mg_lua_api_open or has loaded a script already. */
int mg_lua_api_load(mg_lua_vm_t *vm, const char *path, mg_conf_t **out, mg_conf_error_t *err);

/* mg_conf_finish for a conf that mg_lua_api_load built in this VM: an
 * error about a job or destination gets the file:line of the mg.scrape or
 * mg.remote_write call that declared it (mg_conf_finish alone knows no
 * lines). Same returns as mg_conf_finish. */
int mg_lua_api_finish(mg_lua_vm_t *vm, mg_conf_t *c, mg_conf_error_t *err);

/* If the value at idx is a moongate.Destination (returned by
 * mg.remote_write and friends), store its position in conf->dests in
 * *index and return 0; otherwise MG_EINVAL. For routing hooks. */
int mg_lua_api_todest(lua_State *L, int idx, size_t *index);

/* Push the module table of the loaded script (what `require "moongate"`
 * returned; hooks such as mg.route live in it). Returns 0, or
 * MG_ENOTFOUND with nothing pushed when the script never required it.
 * Pushes an existing value: never allocates. */
int mg_lua_api_push_module(lua_State *L);

#endif
