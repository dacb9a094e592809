-- moongate.lua: the Lua half of the `moongate` module (local mg = require
-- "moongate"). Checks every argument table -- unknown fields, types,
-- durations, sizes, addresses -- and raises errors that name the field, at
-- the line of the script that made the call; then hands plain, normalised
-- tables to the C builders (core/mg_lua_api.c). Runs at load time only.
-- Reference: docs/lua-api.md.

local core = ...
if type(core) ~= "table" then
  error("moongate.lua is loaded by moongate's require, not on its own", 0)
end

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local select, error, pcall, setmetatable, getmetatable = select, error, pcall, setmetatable, getmetatable
local fmt, byte, sub, find, gsub, match = string.format, string.byte, string.sub, string.find, string.gsub, string.match
local sort, concat = table.sort, table.concat
local min = math.min

local M = {}
M.version = core.version
M.listen_address = core.listen_address
M.log = core.log
M.env = core.env

---------------------------------------------------------------------------
-- Errors. Checkers raise an Invalid object; api() turns it into
-- "mg.scrape: <message>" at the caller's line. Anything else (budget
-- stops, out of memory) passes through untouched.

local Invalid = {}

local function invalid(msg)
  error(setmetatable({ msg = msg }, Invalid), 0)
end

local function bad(path, f, ...)
  invalid(fmt("field '%s': ", path) .. fmt(f, ...))
end

local function quote(s)
  if #s > 80 then s = sub(s, 1, 77) .. "..." end
  return '"' .. gsub(s, '[%z\1-\31"\\\127]', function(c)
    if c == '"' or c == "\\" then return "\\" .. c end
    return fmt("\\%03d", byte(c))
  end) .. '"'
end

local function describe(v)
  local t = type(v)
  if t == "string" then return "string " .. quote(v) end
  if t == "number" or t == "boolean" then return t .. " " .. tostring(v) end
  if t == "userdata" and type(getmetatable(v)) == "string" then return getmetatable(v) end
  return t
end

local function api(name, fn)
  return function(...)
    local n, t = select("#", ...), ...
    if n ~= 1 or type(t) ~= "table" then
      local hint = (n == 2 and t == M) and " (call " .. name .. "{...} with a dot, not a colon)" or ""
      error(fmt("%s: expected one table argument, like %s{ ... }%s", name, name, hint), 2)
    end
    local ok, res = pcall(fn, t)
    if ok then return res end
    if getmetatable(res) == Invalid then error(name .. ": " .. res.msg, 2) end
    error(res, 0)
  end
end

---------------------------------------------------------------------------
-- Checkers: function(value, path) -> normalised value, or raise.

local function distance(a, b)
  if #a > 40 or #b > 40 then return 99 end
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = byte(a, i) == byte(b, j) and 0 or 1
      cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function str(v, path)
  if type(v) ~= "string" then bad(path, "expected a string, got %s", describe(v)) end
  if find(v, "%z") then bad(path, "contains a NUL byte") end
  return v
end

local function nonempty(v, path)
  str(v, path)
  if v == "" then bad(path, "must not be empty") end
  return v
end

-- One line of printable text: names, paths, header values.
local function text(v, path)
  nonempty(v, path)
  if find(v, "[%c]") then bad(path, "must not contain control characters (newlines, tabs)") end
  return v
end

local function name_str(v, path)
  text(v, path)
  if #v > 256 then bad(path, "longer than 256 bytes") end
  return v
end

local function bool(v, path)
  if type(v) ~= "boolean" then bad(path, "expected true or false, got %s", describe(v)) end
  return v
end

local function duration(v, path)
  if type(v) == "number" then
    bad(path, "expected a duration string like \"15s\", got number %s (write \"%ss\" for seconds)", tostring(v),
      tostring(v))
  end
  if type(v) ~= "string" then bad(path, "expected a duration string like \"15s\", got %s", describe(v)) end
  local ms = core.duration(v)
  if not ms then bad(path, "invalid duration %s (use ms, s, m, h, d, w, y: \"500ms\", \"15s\", \"1m30s\")", quote(v)) end
  -- 0 means "inherit the default" in the plan, so a written 0 is a mistake.
  if ms == 0 then bad(path, "must be longer than 0") end
  return ms
end

local function integer(lo, hi)
  return function(v, path)
    if type(v) ~= "number" or v ~= v or v % 1 ~= 0 then bad(path, "expected a whole number, got %s", describe(v)) end
    if v < lo or v > hi then bad(path, "must be from %d to %.0f, got %s", lo, hi, tostring(v)) end
    return v
  end
end
local count = integer(0, 2 ^ 53)
local positive32 = integer(1, 2 ^ 32 - 1)

local function bytes(v, path)
  if type(v) == "number" then return count(v, path) end
  if type(v) ~= "string" then bad(path, "expected a size like \"50MB\", got %s", describe(v)) end
  local n = core.bytes(v)
  if not n then bad(path, "invalid size %s (examples: \"512KiB\", \"50MB\", \"1GB\", \"1048576\")", quote(v)) end
  return n
end

local function oneof(...)
  local allowed = { ... }
  return function(v, path)
    for _, a in ipairs(allowed) do
      if v == a then return v end
    end
    bad(path, "expected %s, got %s", '"' .. concat(allowed, '" or "') .. '"', describe(v))
  end
end

-- Keys of a map table, sorted, all strings; entries of a list are refused.
local function map_keys(v, path, what)
  if type(v) ~= "table" then bad(path, "expected a table of %s, got %s", what, describe(v)) end
  local keys = {}
  for k in pairs(v) do
    if type(k) ~= "string" then bad(path, "expected %s, got a list entry [%s]", what, tostring(k)) end
    keys[#keys + 1] = k
  end
  sort(keys)
  return keys
end

local function label_name(k, path)
  if not find(k, "^[%a_][%w_]*$") then
    bad(path, "invalid label name %s (must match [a-zA-Z_][a-zA-Z0-9_]*)", quote(k))
  end
end

-- { name = "value" } -> { {name, value}, ... } sorted by name.
local function labels(v, path)
  local out = {}
  for _, k in ipairs(map_keys(v, path, 'name = "value" labels')) do
    label_name(k, path)
    local val = v[k]
    if type(val) ~= "string" then
      bad(path .. "." .. k, "expected a string, got %s (label values are strings)", describe(val))
    end
    str(val, path .. "." .. k)
    out[#out + 1] = { k, val }
  end
  return out
end

local function headers(v, path)
  local out = {}
  for _, k in ipairs(map_keys(v, path, 'Name = "value" headers')) do
    if not find(k, "^[!#$%%&'*+%-.^_`|~%w]+$") then bad(path, "invalid header name %s", quote(k)) end
    if k:lower() == "authorization" then
      bad(path .. "." .. k, "set it with basic_auth, authorization or bearer_token")
    end
    out[#out + 1] = { k, text(v[k], path .. "." .. k) }
  end
  return out
end

-- { module = "x" } or { module = { "x", "y" } } -> { {"module","x"}, ... }
local function params(v, path)
  local out = {}
  for _, k in ipairs(map_keys(v, path, 'name = "value" or name = { "value", ... } parameters')) do
    local val, p = v[k], path .. "." .. k
    if type(val) == "table" then
      for i = 1, #val do out[#out + 1] = { k, text(val[i], fmt("%s[%d]", p, i)) } end
      for kk in pairs(val) do
        if type(kk) ~= "number" or kk < 1 or kk > #val or kk % 1 ~= 0 then
          bad(p, "expected a list of strings")
        end
      end
    else
      out[#out + 1] = { k, text(val, p) }
    end
  end
  return out
end

-- A list (keys 1..n, no holes).
local function list(v, path, what)
  if type(v) ~= "table" then bad(path, "expected a list of %s, got %s", what, describe(v)) end
  local n = 0
  for k in pairs(v) do
    if type(k) ~= "number" then bad(path, "expected a list of %s, got a field %s", what, quote(tostring(k))) end
    n = n + 1
  end
  if n ~= #v then bad(path, "expected a list of %s without holes (nil entries)", what) end
  return v
end

-- Tables with known fields. fields: name -> checker, or { checker,
-- required = true }. aliases: Prometheus spellings -> moongate names.
local function record(fields, aliases)
  local names = {}
  for k in pairs(fields) do names[#names + 1] = k end
  sort(names)
  return function(v, path)
    local function at(k) return path and path .. "." .. k or k end
    if type(v) ~= "table" then bad(path, "expected a table { name = value, ... }, got %s", describe(v)) end
    local unknown = {}
    for k in pairs(v) do
      if type(k) ~= "string" then
        local m = fmt("expected name = value fields, got a list entry [%s]", tostring(k))
        if path then bad(path, "%s", m) else invalid(m) end
      end
      if fields[k] == nil then unknown[#unknown + 1] = k end
    end
    if #unknown > 0 then
      sort(unknown)
      local k = unknown[1]
      local hint = ""
      if aliases and aliases[k] then
        hint = fmt(" (moongate calls it '%s')", aliases[k])
      else
        local best, bd = nil, 3
        for _, n in ipairs(names) do
          local d = distance(k, n)
          if d < bd then best, bd = n, d end
        end
        if best and bd <= #k / 2 then hint = fmt(" (did you mean '%s'?)", best) end
      end
      invalid(fmt("unknown field '%s'%s", at(k), hint))
    end
    local out = {}
    for _, k in ipairs(names) do
      local spec, check, required = fields[k], fields[k], false
      if type(spec) == "table" then check, required = spec[1], spec.required end
      local x = v[k]
      if x == nil then
        if required then invalid(fmt("field '%s' is required", at(k))) end
      else
        out[k] = check(x, at(k))
      end
    end
    return out
  end
end

---------------------------------------------------------------------------
-- Shared shapes: authentication and TLS.

local tls_check = record {
  ca_file = text, cert_file = text, key_file = text, server_name = text, insecure_skip_verify = bool,
}
local function tls(v, path)
  local t = tls_check(v, path)
  if (t.cert_file == nil) ~= (t.key_file == nil) then
    bad(path, "cert_file and key_file go together (client certificate and its key)")
  end
  return t
end

local basic_check = record { username = str, password = str, password_file = text }
local function basic_auth(v, path)
  local b = basic_check(v, path)
  if b.password and b.password_file then bad(path, "set password or password_file, not both") end
  return b
end

local authz_check = record {
  type = text, credentials = str, credentials_file = text,
}
local function authorization(v, path)
  local a = authz_check(v, path)
  if a.credentials and a.credentials_file then bad(path, "set credentials or credentials_file, not both") end
  if a.type and a.type:lower() == "basic" then bad(path .. ".type", "use basic_auth for Basic authentication") end
  if a.type and not find(a.type, "^[%w!#$%%&'*+%-.^_`|~]+$") then
    bad(path .. ".type", "must be one word, like \"Bearer\"")
  end
  return a
end

local auth_fields = {
  basic_auth = basic_auth, authorization = authorization, bearer_token = str, bearer_token_file = text,
}

-- The validated record's auth fields -> the plan's auth table (or nil).
local function auth_of(a)
  local set = {}
  for _, k in ipairs { "basic_auth", "authorization", "bearer_token", "bearer_token_file" } do
    if a[k] ~= nil then set[#set + 1] = k end
  end
  if #set > 1 then invalid(fmt("fields '%s' and '%s' are both set: use one way to authenticate", set[1], set[2])) end
  local b, z = a.basic_auth, a.authorization
  if b then return { basic_username = b.username, basic_password = b.password, basic_password_file = b.password_file } end
  if z then return { type = z.type or "Bearer", credentials = z.credentials, credentials_file = z.credentials_file } end
  if a.bearer_token then return { type = "Bearer", credentials = a.bearer_token } end
  if a.bearer_token_file then return { type = "Bearer", credentials_file = a.bearer_token_file } end
  return nil
end

local function with(base, extra)
  local t = {}
  for k, v in pairs(base) do t[k] = v end
  for k, v in pairs(extra) do t[k] = v end
  return t
end

---------------------------------------------------------------------------
-- mg.global

local global_check = record({
  scrape_interval = duration, scrape_timeout = duration, external_labels = labels,
}, { interval = "scrape_interval", timeout = "scrape_timeout" })

local function timeout_fits(t, interval_field, timeout_field, ims, tms)
  if ims and tms and tms > ims then
    bad(timeout_field, "%s is longer than %s %s", quote(t[timeout_field]), interval_field, quote(t[interval_field]))
  end
end

M.global = api("mg.global", function(t)
  local g = global_check(t)
  timeout_fits(t, "scrape_interval", "scrape_timeout", g.scrape_interval, g.scrape_timeout)
  local ok, err = core.global {
    scrape_interval_ms = g.scrape_interval, scrape_timeout_ms = g.scrape_timeout, external_labels = g.external_labels,
  }
  if not ok then invalid(err) end
end)

---------------------------------------------------------------------------
-- mg.scrape

local function address(v, path)
  text(v, path)
  if find(v, "://", 1, true) then
    bad(path, "%s: give host:port without a scheme (set scheme = \"https\" for TLS)", quote(v))
  end
  if find(v, "/", 1, true) then bad(path, "%s: give host:port without a path (set path = \"/...\")", quote(v)) end
  local host, port = match(v, "^%[([%x:.]+)%]:(%d+)$")
  if not host then host, port = match(v, "^([%w%-_.]+):(%d+)$") end
  if not host then
    bad(path, "%s is not host:port (like \"10.0.0.5:9100\"; IPv6 as \"[::1]:9100\")", quote(v))
  end
  local p = tonumber(port)
  if p < 1 or p > 65535 then bad(path, "%s: port must be from 1 to 65535", quote(v)) end
  return v
end

local group_check = record { targets = { function(v, path)
  list(v, path, '"host:port" strings')
  for i = 1, #v do address(v[i], fmt("%s[%d]", path, i)) end
  return v
end, required = true }, labels = labels }

-- targets = { "a:1", { targets = {...}, labels = {...} }, ... }
-- -> { { address = "a:1", labels = <pairs or nil: the job's labels> }, ... }
local function targets(v, path)
  if type(v) == "string" then bad(path, "expected a list like { %s }, got a string", quote(v)) end
  if type(v) == "table" and v.targets ~= nil then
    bad(path, "this is one target group: put it in a list, targets = { { targets = {...}, labels = {...} } }")
  end
  list(v, path, '"host:port" strings or { targets = ..., labels = ... } groups')
  local out, seen = {}, {}
  local function add(a, l, p)
    if seen[a] then bad(p, "%s is listed twice", quote(a)) end
    seen[a] = true
    out[#out + 1] = { address = a, labels = l }
  end
  for i = 1, #v do
    local e, p = v[i], fmt("%s[%d]", path, i)
    if type(e) == "string" then
      add(address(e, p), nil, p)
    elseif type(e) == "table" then
      local g = group_check(e, p)
      for j, a in ipairs(g.targets) do add(a, g.labels or {}, fmt("%s.targets[%d]", p, j)) end
    else
      bad(p, "expected \"host:port\" or { targets = {...}, labels = {...} }, got %s", describe(e))
    end
  end
  return out
end

-- targets = function() ... end, or { fn = function() ... end, refresh = "30s" }:
-- the function is called every refresh (mg_sd_lua, docs/lua-api.md).
local fn_targets_check = record { fn = { function(v, path)
  if type(v) ~= "function" then bad(path, "expected a function, got %s", describe(v)) end
  return v
end, required = true }, refresh = duration }

local function targets_or_fn(v, path)
  if type(v) == "function" then return { fn = v } end
  if type(v) == "table" and v.fn ~= nil then return fn_targets_check(v, path) end
  return targets(v, path)
end

-- Options of a discovery source, kept as written for its provider, which
-- checks them: strings, numbers and booleans become text; lists and
-- name = value tables nest. Canonical form for the C side: a string, or
-- { list = { ... } }, or { map = { { name, value }, ... } } sorted by name
-- (so an unchanged source compares equal across reloads).
local function sd_value(v, path, depth)
  local t = type(v)
  if t == "string" then return str(v, path) end
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if v ~= v or v == 1 / 0 or v == -1 / 0 then bad(path, "expected a finite number") end
    return tostring(v)
  end
  if t ~= "table" then bad(path, "expected a string, number, boolean or table, got %s", describe(v)) end
  if depth > 16 then bad(path, "nested too deeply") end
  local keys, n = {}, 0
  for k in pairs(v) do
    n = n + 1
    if type(k) == "string" then keys[#keys + 1] = k end
  end
  if #keys == 0 and n == #v then
    local items = {}
    for i = 1, n do items[i] = sd_value(v[i], fmt("%s[%d]", path, i), depth + 1) end
    return { list = items }
  end
  if #keys ~= n then bad(path, "mixes list entries and name = value fields") end
  sort(keys)
  local m = {}
  for i, k in ipairs(keys) do m[i] = { k, sd_value(v[k], path .. "." .. k, depth + 1) } end
  return { map = m }
end

-- file_sd = { files = {...} } or a list of such tables -> option trees.
local function sd_configs(v, path)
  if type(v) ~= "table" then bad(path, "expected a table of options or a list of them, got %s", describe(v)) end
  local many = v[1] ~= nil
  if many then list(v, path, "tables of options") end
  local out = {}
  for i, o in ipairs(many and v or { v }) do
    local p = many and fmt("%s[%d]", path, i) or path
    if type(o) ~= "table" then bad(p, "expected a table of options, got %s", describe(o)) end
    local tree = sd_value(o, p, 1)
    if tree.list then
      if #tree.list > 0 then bad(p, "expected name = value options, got a list") end
      tree = { map = {} }
    end
    out[i] = tree
  end
  return out
end

-- Discovery fields of mg.scrape and their kinds (in this order in the plan).
local sd_fields = {
  { "file_sd", "file" }, { "http_sd", "http" }, { "dns_sd", "dns" }, { "kubernetes_sd", "kubernetes" },
  { "ec2_sd", "ec2" },
}

local function metrics_path(v, path)
  text(v, path)
  if sub(v, 1, 1) ~= "/" then bad(path, "%s must start with '/'", quote(v)) end
  if find(v, "[?#]") then bad(path, "%s: put query parameters in params = { ... }", quote(v)) end
  if find(v, " ", 1, true) then bad(path, "%s must not contain spaces", quote(v)) end
  return v
end

-- Relabel rules: the fields of Prometheus's relabel_config; the engine
-- checks them like Prometheus's loader (defaults, regex syntax, actions).
local relabel_rule = record {
  source_labels = function(v, path)
    if type(v) ~= "table" then bad(path, "expected a list of label names, got %s", describe(v)) end
    local out = {}
    for i, l in ipairs(v) do out[i] = text(l, fmt("%s[%d]", path, i)) end
    return out
  end,
  separator = str,
  regex = str,
  modulus = integer(1, 2 ^ 53),
  target_label = str,
  replacement = str,
  action = str,
}

local function relabels(v, path)
  if type(v) ~= "table" then bad(path, "expected a list of rules { {action = ...}, ... }, got %s", describe(v)) end
  local out = {}
  for i, r in ipairs(v) do out[i] = relabel_rule(r, fmt("%s[%d]", path, i)) end
  return out
end

local scrape_check = record(with(auth_fields, {
  job = { name_str, required = true },
  interval = duration,
  timeout = duration,
  scheme = oneof("http", "https"),
  path = metrics_path,
  params = params,
  honor_labels = bool,
  honor_timestamps = bool,
  enable_compression = bool,
  targets = targets_or_fn,
  file_sd = sd_configs,
  http_sd = sd_configs,
  dns_sd = sd_configs,
  kubernetes_sd = sd_configs,
  ec2_sd = sd_configs,
  labels = labels,
  tls = tls,
  body_size_limit = bytes,
  sample_limit = count,
  label_limit = count,
  label_name_length_limit = count,
  label_value_length_limit = count,
  relabel_configs = relabels,
  metric_relabel_configs = relabels,
}), {
  job_name = "job", scrape_interval = "interval", scrape_timeout = "timeout", metrics_path = "path",
  static_configs = "targets", tls_config = "tls", file_sd_configs = "file_sd", http_sd_configs = "http_sd",
  dns_sd_configs = "dns_sd", kubernetes_sd_configs = "kubernetes_sd", ec2_sd_configs = "ec2_sd",
})

M.scrape = api("mg.scrape", function(t)
  local s = scrape_check(t)
  timeout_fits(t, "interval", "timeout", s.interval, s.timeout)
  local sds, fn = {}, nil
  for _, f in ipairs(sd_fields) do
    for _, opts in ipairs(s[f[1]] or {}) do sds[#sds + 1] = { kind = f[2], opts = opts } end
  end
  if s.targets and s.targets.fn then
    -- Job labels go to the function's "host:port" entries, as to static ones.
    local o = {}
    if s.targets.refresh then o[#o + 1] = { "refresh", t.targets.refresh } end -- as written, checked
    if s.labels then
      local l = {}
      for i, kv in ipairs(s.labels) do l[i] = { kv[1], kv[2] } end
      o[#o + 1] = { "labels", { map = l } }
    end
    sort(o, function(a, b) return a[1] < b[1] end)
    fn, s.targets = { fn = s.targets.fn, opts = { map = o } }, {}
  elseif s.targets == nil then
    if #sds == 0 then
      invalid("field 'targets' is required (a list, a function, or a discovery source: file_sd, http_sd, dns_sd, "
        .. "kubernetes_sd, ec2_sd)")
    end
    s.targets = {}
  end
  for _, tg in ipairs(s.targets) do
    if tg.labels == nil then tg.labels = s.labels end
  end
  local ok, err = core.scrape {
    job = s.job, interval_ms = s.interval, timeout_ms = s.timeout, scheme = s.scheme, metrics_path = s.path,
    params = s.params, honor_labels = s.honor_labels, honor_timestamps = s.honor_timestamps,
    enable_compression = s.enable_compression, auth = auth_of(s), tls = s.tls,
    body_size_limit = s.body_size_limit, sample_limit = s.sample_limit, label_limit = s.label_limit,
    label_name_length_limit = s.label_name_length_limit, label_value_length_limit = s.label_value_length_limit,
    targets = s.targets, relabel_configs = s.relabel_configs, metric_relabel_configs = s.metric_relabel_configs,
    sds = sds, targets_fn = fn,
  }
  if not ok then invalid(err) end
end)

---------------------------------------------------------------------------
-- Destinations: mg.remote_write, mg.workspace, mg.stdout, mg.file

local function url(v, path)
  text(v, path)
  -- Messages never echo the URL: it may carry a token in its query.
  local rest = match(v, "^https?://(.*)$")
  if not rest then bad(path, "must start with http:// or https://") end
  local authority = match(rest, "^[^/?#]*")
  if authority == "" then bad(path, "has no host") end
  if find(authority, "@", 1, true) then
    bad(path, "must not contain user:password@ (use basic_auth: URLs end up in logs)")
  end
  if find(v, " ", 1, true) then bad(path, "must not contain spaces") end
  return v
end

local queue = record({
  capacity = positive32,
  max_shards = positive32,
  min_shards = positive32,
  max_samples_per_send = positive32,
  batch_send_deadline = duration,
  min_backoff = duration,
  max_backoff = duration,
  retry_on_http_429 = bool,
}, { retry_on_http429 = "retry_on_http_429" })

local metadata = record { send = bool, send_interval = duration }

-- The durable buffer under --data-dir (docs/durability.md).
local buffer = record { max_size = bytes, max_age = duration, memory_only = bool }

local rw_fields = with(auth_fields, {
  name = { name_str, required = true },
  url = { url, required = true },
  headers = headers,
  tls = tls,
  remote_timeout = duration,
  queue = queue,
  metadata = metadata,
  buffer = buffer,
  external_labels = labels,
  write_relabel_configs = relabels,
})
local rw_aliases = { queue_config = "queue", metadata_config = "metadata", tls_config = "tls" }
local rw_check = record(rw_fields, rw_aliases)

local function destination(d)
  local h, err = core.destination(d)
  if not h then invalid(err) end
  return h
end

local function remote_write(r)
  local q = r.queue or {}
  if q.min_shards and q.max_shards and q.min_shards > q.max_shards then
    bad("queue.min_shards", "%d is more than max_shards %d", q.min_shards, q.max_shards)
  end
  if q.min_backoff and q.max_backoff and q.min_backoff > q.max_backoff then
    bad("queue.min_backoff", "is longer than max_backoff")
  end
  local m = r.metadata or {}
  local b = r.buffer or {}
  if b.max_size and b.max_size < 1048576 then bad("buffer.max_size", "must be at least 1MiB") end
  -- This workspace's external labels: set where a series has no such label
  -- (as global external labels), before its write_relabel_configs. A rule
  -- per label: a missing or empty label matches regex "".
  local rules = {}
  for _, kv in ipairs(r.external_labels or {}) do
    rules[#rules + 1] = { source_labels = { kv[1] }, regex = "", target_label = kv[1],
      replacement = (gsub(kv[2], "%$", "%$%$")), action = "replace" }
  end
  for _, rule in ipairs(r.write_relabel_configs or {}) do rules[#rules + 1] = rule end
  return destination {
    kind = "remote_write", name = r.name, url = r.url, headers = r.headers, auth = auth_of(r), tls = r.tls,
    remote_timeout_ms = r.remote_timeout,
    queue = r.queue and {
      capacity = q.capacity, max_shards = q.max_shards, min_shards = q.min_shards,
      max_samples_per_send = q.max_samples_per_send, batch_send_deadline_ms = q.batch_send_deadline,
      min_backoff_ms = q.min_backoff, max_backoff_ms = q.max_backoff, retry_on_http_429 = q.retry_on_http_429,
    },
    send_metadata = m.send, metadata_send_interval_ms = m.send_interval,
    buffer = r.buffer and { max_bytes = b.max_size, max_age_ms = b.max_age, memory_only = b.memory_only },
    write_relabel_configs = rules, sigv4 = r.sigv4,
  }
end

M.remote_write = api("mg.remote_write", function(t)
  return remote_write(rw_check(t))
end)

---------------------------------------------------------------------------
-- AWS credentials (mg.aws.*) and mg.workspace: AMP endpoints signed with
-- SigV4. A credential source is a plain table marked as ours, so a typo
-- such as credentials = "chain" is caught here.

local CREDS = {}
local function creds(kind, fields)
  fields = fields or {}
  fields.kind = kind
  fields[CREDS] = true
  return fields
end

local function is_creds(v) return type(v) == "table" and v[CREDS] == true end

local function creds_arg(v, path)
  if not is_creds(v) then
    bad(path, "expected a credential source such as mg.aws.chain() or mg.aws.file{...}, got %s", describe(v))
  end
  return v
end

local aws = {}
aws.chain = function() return creds("chain") end
aws.env = function() return creds("env") end
aws.imds = function() return creds("imds") end
aws.ecs = function() return creds("ecs") end

local static_check = record {
  access_key_id = { text, required = true }, secret_access_key = { text, required = true }, session_token = text,
}
aws.static = api("mg.aws.static", function(t)
  local c = static_check(t)
  return creds("static", c)
end)

local file_creds_check = record({ path = text, profile = text, config_file = text },
  { credentials_file = "path" })
aws.file = api("mg.aws.file", function(t)
  local c = file_creds_check(t or {})
  return creds("profile", { credentials_file = c.path, profile = c.profile, config_file = c.config_file })
end)
aws.profile = api("mg.aws.profile", function(t)
  if type(t) == "string" then t = { name = t } end
  local c = record { name = text, credentials_file = text, config_file = text } (t or {})
  return creds("profile", { profile = c.name, credentials_file = c.credentials_file, config_file = c.config_file })
end)

local web_identity_check = record { role_arn = text, token_file = text, session_name = text, sts_region = text,
  sts_endpoint = text }
aws.web_identity = api("mg.aws.web_identity", function(t)
  local c = web_identity_check(t or {})
  return creds("web_identity", { role_arn = c.role_arn, web_identity_token_file = c.token_file,
    role_session_name = c.session_name, sts_region = c.sts_region, sts_endpoint = c.sts_endpoint })
end)

aws.process = api("mg.aws.process", function(t)
  if type(t) == "string" then t = { command = t } end
  local c = record { command = { text, required = true } } (t)
  return creds("process", { process = c.command })
end)

local assume_role_check = record {
  role_arn = { text, required = true }, external_id = text, session_name = text,
  duration = duration, sts_region = text, sts_endpoint = text, source = creds_arg,
}
aws.assume_role = api("mg.aws.assume_role", function(t)
  local c = assume_role_check(t)
  if c.duration and (c.duration < 900000 or c.duration > 43200000) then
    bad("duration", "must be between 15m and 12h (STS limits)")
  end
  return creds("assume_role", { role_arn = c.role_arn, external_id = c.external_id,
    role_session_name = c.session_name, duration_s = c.duration and math.floor(c.duration / 1000) or nil,
    sts_region = c.sts_region, sts_endpoint = c.sts_endpoint, source = c.source })
end)
M.aws = aws

local ws_check = record(with(rw_fields, {
  region = text,
  service = text,
  credentials = creds_arg,
}), rw_aliases)
M.workspace = api("mg.workspace", function(t)
  local w = ws_check(t)
  for _, k in ipairs { "basic_auth", "authorization", "bearer_token", "bearer_token_file" } do
    if w[k] ~= nil then bad(k, "a workspace is signed with SigV4: use credentials = mg.aws...") end
  end
  w.sigv4 = { region = w.region, service = w.service, credentials = w.credentials or aws.chain() }
  return remote_write(w)
end)

local stdout_check = record { name = name_str }
M.stdout = api("mg.stdout", function(t)
  local s = stdout_check(t)
  return destination { kind = "stdout", name = s.name or "stdout" }
end)

local file_check = record { name = name_str, path = { text, required = true } }
M.file = api("mg.file", function(t)
  local f = file_check(t)
  return destination { kind = "file", name = f.name or "file", path = f.path }
end)

---------------------------------------------------------------------------
-- Reading a name the module does not have is an error with a suggestion
-- (mg.scarpe{...} would otherwise be "attempt to call a nil value").
-- Scripts may still add their own fields (hooks such as mg.route).

local exported = {}
for k in pairs(M) do exported[#exported + 1] = k end
sort(exported)

core.module(M)

return setmetatable(M, {
  __index = function(_, k)
    local hint = ""
    if type(k) == "string" then
      for _, n in ipairs(exported) do
        if distance(k, n) <= 2 then
          hint = fmt(" (did you mean mg.%s?)", n)
          break
        end
      end
    end
    error(fmt("moongate has no field %s%s", type(k) == "string" and quote(k) or tostring(k), hint), 2)
  end,
  __metatable = "moongate",
})
