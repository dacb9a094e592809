#!/bin/bash
# moongate with a Lua route hook on every series, as a contender of
# ../shared/bench: the harness's prometheus.yml is turned into the same plan
# written as a Lua script whose mg.route picks a workspace by label for each
# new series (two destinations on the same sink URL). Compared with
# moongate.sh in one run-matrix, it shows what the hook costs in the steady
# state (decisions are cached per series; see docs/performance.md).
# Called as: moongate-route.sh CONFIG LISTEN_ADDR DATA_DIR.
# bench-metric scraped_samples moongate_scrape_samples_scraped_total
# bench-metric scrapes moongate_scrapes_total
# bench-metric sent_samples moongate_remote_write_samples_sent_total
# bench-metric sent_bytes moongate_remote_write_bytes_sent_total
# bench-metric sent_requests moongate_remote_write_requests_total
# bench-metric send_errors moongate_remote_write_samples_dropped_total
# bench-metric pending_samples moongate_remote_write_samples_pending
# bench-metric active_series moongate_series_active
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${MOONGATE_BIN:-$here/../build/moongate}
if [ "${1:-}" = --version ]; then "$bin" --version 2>/dev/null || echo "moongate (not built)"; exit 0; fi
config=$1 listen=$2 data=$3
[ -x "$bin" ] || { echo "moongate-route.sh: binary '$bin' not found; set MOONGATE_BIN" >&2; exit 2; }
script=$data/route.lua
# The generated prometheus.yml has one job with static targets, a global
# interval and one remote_write URL (run.sh writes it); nothing else is read.
awk -v out="$script" '
  /scrape_interval:/ { iv = $2 }
  /^ *- 127\.0\.0\.1:[0-9]+$/ { t = t sprintf("%s\"%s\"", (t == "" ? "" : ", "), $2) }
  /^ *- url:/ { url = $3 }
  END {
    if (iv == "" || t == "" || url == "") { print "moongate-route.sh: unexpected prometheus.yml" > "/dev/stderr"; exit 2 }
    printf "local mg = require \"moongate\"\n" > out
    printf "mg.global{ scrape_interval = \"%s\", scrape_timeout = \"%s\" }\n", iv, iv > out
    printf "local a = mg.remote_write{ name = \"even\", url = \"%s\" }\n", url > out
    printf "local b = mg.remote_write{ name = \"odd\", url = \"%s\" }\n", url > out
    printf "mg.scrape{ job = \"bench\", targets = { %s } }\n", t > out
    printf "function mg.route(s)\n  if #s.name %% 2 == 0 then return a end\n  return b\nend\n" > out
  }' "$config"
exec "$bin" run "$script" --listen "$listen" --data-dir "$data" --log-level warn ${BENCH_EXTRA_FLAGS:-}
