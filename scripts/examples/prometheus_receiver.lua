-- prometheus_receiver.lua: scrape a node exporter and write to a Prometheus
-- server that accepts remote write, all on this machine. Start Prometheus
-- with the receiver enabled first:
--
--   prometheus --web.enable-remote-write-receiver      (Prometheus >= 2.33)
--   moongate run scripts/examples/prometheus_receiver.lua
--
-- Then query up{job="node"} in Prometheus at http://127.0.0.1:9090.
-- PROM_URL overrides the receiver URL (e.g. another host).
local mg = require "moongate"

mg.global {
  scrape_interval = "15s",
  scrape_timeout = "10s",
  external_labels = { replica = "moongate-1" },
}

mg.remote_write {
  name = "local-prometheus",
  url = mg.env("PROM_URL") or "http://127.0.0.1:9090/api/v1/write",
  remote_timeout = "30s",
  queue = {
    max_samples_per_send = 2000,
    batch_send_deadline = "5s",
    min_backoff = "30ms",
    max_backoff = "5s",
  },
  metadata = { send = true, send_interval = "1m" },
}

mg.scrape {
  job = "node",
  targets = {
    { targets = { "127.0.0.1:9100" }, labels = { instance_role = "workstation" } },
  },
}
