#!/bin/bash
# moongate with a Lua route hook on every series, as a contender of
# ../shared/bench: the harness's prometheus.yml is turned into the same plan
# written as a Lua script. MG_BENCH_ROUTE picks the variant (the thin
# wrappers moongate-hook.sh and moongate-split.sh set it, so each variant
# is a contender of its own name):
#   route (default)  mg.route picks one of two workspaces by the parity of
#                    the metric name's length (both on the same sink URL);
#   hook             mg.route returns the one workspace for every series:
#                    the hook's own cost, against moongate.sh;
#   split            the same two-workspace split without Lua, by
#                    write_relabel_configs: what two destinations cost,
#                    against route.
# Decisions are cached per series, so the steady state runs no Lua
# (docs/performance.md). Called as: moongate-route.sh CONFIG LISTEN DATA_DIR.
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
mode=${MG_BENCH_ROUTE:-route}
case $mode in route|hook|split) ;; *) echo "moongate-route.sh: MG_BENCH_ROUTE=$mode (route, hook or split)" >&2; exit 2;; esac
awk -v out="$script" -v mode="$mode" '
  /scrape_interval:/ { iv = $2 }
  /^ *- 127\.0\.0\.1:[0-9]+$/ { t = t sprintf("%s\"%s\"", (t == "" ? "" : ", "), $2) }
  /^ *- url:/ { url = $3 }
  END {
    if (iv == "" || t == "" || url == "") { print "moongate-route.sh: unexpected prometheus.yml" > "/dev/stderr"; exit 2 }
    even = "\"^(..)*$\""
    printf "local mg = require \"moongate\"\n" > out
    printf "mg.global{ scrape_interval = \"%s\", scrape_timeout = \"%s\" }\n", iv, iv > out
    if (mode == "split") {
      printf "mg.remote_write{ name = \"even\", url = \"%s\", write_relabel_configs = {\n", url > out
      printf "  { source_labels = { \"__name__\" }, regex = %s, action = \"keep\" } } }\n", even > out
      printf "mg.remote_write{ name = \"odd\", url = \"%s\", write_relabel_configs = {\n", url > out
      printf "  { source_labels = { \"__name__\" }, regex = %s, action = \"drop\" } } }\n", even > out
    } else {
      printf "local a = mg.remote_write{ name = \"%s\", url = \"%s\" }\n", (mode == "hook" ? "amp" : "even"), url > out
      if (mode == "route") printf "local b = mg.remote_write{ name = \"odd\", url = \"%s\" }\n", url > out
    }
    printf "mg.scrape{ job = \"bench\", targets = { %s } }\n", t > out
    if (mode == "route") printf "function mg.route(s)\n  if #s.name %% 2 == 0 then return a end\n  return b\nend\n" > out
    if (mode == "hook") printf "function mg.route(s)\n  return a\nend\n" > out
  }' "$config"
exec "$bin" run "$script" --listen "$listen" --data-dir "$data" --log-level warn ${BENCH_EXTRA_FLAGS:-}
