#!/bin/bash
# moongate as a contender of ../shared/bench (see bench/README.md).
# Called as: moongate.sh CONFIG LISTEN_ADDR DATA_DIR; execs moongate in the foreground.
# MOONGATE_BIN: the binary (default: build/moongate of this repository).
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
if [ ! -x "$bin" ]; then
  echo "moongate.sh: binary '$bin' not found; build it (make build) or set MOONGATE_BIN" >&2
  exit 2
fi
exec "$bin" run "$config" --listen "$listen" --data-dir "$data" --log-level warn ${BENCH_EXTRA_FLAGS:-}
