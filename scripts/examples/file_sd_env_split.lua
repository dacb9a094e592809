-- Prod/staging split by target labels from file_sd: an inventory tool
-- keeps file_sd_env_split.targets.json (next to this script) up to date,
-- one target group per environment, each with an env label. moongate
-- reads the file again when it changes (added targets are scraped, removed
-- ones get staleness markers) and the route hook sends the series of
-- env="prod" targets to the production receiver, env="staging" to the
-- staging one; targets of any other env are scraped but not sent. (The
-- up and scrape_* series moongate writes about each target skip hooks, as
-- in Prometheus, and reach both receivers.)
-- Any remote-write endpoint works (Prometheus, Mimir, AMP through
-- mg.workspace); set PROD_WRITE_URL and STAGING_WRITE_URL.
local mg = require "moongate"

local prod = mg.remote_write{
  name = "prod",
  url = mg.env("PROD_WRITE_URL") or "http://127.0.0.1:9090/api/v1/write",
}
local staging = mg.remote_write{
  name = "staging",
  url = mg.env("STAGING_WRITE_URL") or "http://127.0.0.1:9091/api/v1/write",
}

mg.global{ scrape_interval = mg.env("SCRAPE_INTERVAL") or "15s" }
mg.scrape{
  job = "node",
  -- A relative path is taken from this script's directory.
  file_sd = { files = { "file_sd_env_split.targets.json" } },
}

local by_env = { prod = prod, staging = staging }

function mg.route(s)
  return by_env[s.target.env] -- nil: not sent
end
