-- default.lua: the first run, no AWS account needed. moongate scrapes its
-- own /metrics and a node exporter on this machine every 5 seconds and
-- prints every sample on the terminal, so series show up within seconds.
--
--   moongate run scripts/examples/default.lua
--
-- No node exporter running? The "node" job still appears, as up{job="node"} 0.
local mg = require "moongate"

mg.global {
  scrape_interval = "5s",
  scrape_timeout = "5s",
  external_labels = { env = "dev" },
}

local console = mg.stdout { name = "console" }

-- moongate's own HTTP server (where /metrics, /-/healthy and /-/ready live).
mg.scrape {
  job = "moongate",
  interval = "5s",
  targets = { mg.listen_address },
}

mg.scrape {
  job = "node",
  interval = "5s",
  targets = { "127.0.0.1:9100" },
}

mg.log("info", "default.lua: scraping moongate at " .. mg.listen_address .. " and a node exporter at 127.0.0.1:9100; samples go to " .. tostring(console))
