-- Cost control: keep what matters, drop what costs money.
--   * histogram buckets of chosen families are dropped (their _sum and
--     _count stay, so averages still work);
--   * high-cardinality labels (pod_template_hash, container_id) are removed;
--   * a staging workspace gets only an allow-list of families.
-- Try it: moongate test scripts/examples/cost_control.lua \
--           --input scripts/examples/cost_control.input.prom --target-label instance=10.0.0.7:8080
local mg = require "moongate"

local prod = mg.remote_write{ name = "prod", url = mg.env("PROD_URL") or "http://127.0.0.1:9090/api/v1/write" }
local staging = mg.remote_write{ name = "staging", url = mg.env("STAGING_URL") or "http://127.0.0.1:9091/api/v1/write" }

mg.scrape{ job = "app", interval = "30s", targets = { "10.0.0.7:8080" } }

local drop_buckets = { http_request_duration_seconds = true, rpc_latency_seconds = true }
local staging_allow = { up = true, http_requests_total = true, process_cpu_seconds_total = true }
local noisy_labels = { "pod_template_hash", "container_id" }

function mg.relabel(s)
  local family = s.name:match("^(.*)_bucket$")
  if family and drop_buckets[family] then return false end
  local changed = false
  for _, l in ipairs(noisy_labels) do
    if s.labels[l] then s.labels[l] = nil; changed = true end
  end
  if changed then return s.labels end
end

function mg.route(s)
  if staging_allow[s.name] then return { prod, staging } end
  return prod
end
