#!/bin/bash
# The "split" variant of moongate-route.sh as a contender of its own name
# (see there).
# bench-metric scraped_samples moongate_scrape_samples_scraped_total
# bench-metric scrapes moongate_scrapes_total
# bench-metric sent_samples moongate_remote_write_samples_sent_total
# bench-metric sent_bytes moongate_remote_write_bytes_sent_total
# bench-metric sent_requests moongate_remote_write_requests_total
# bench-metric send_errors moongate_remote_write_samples_dropped_total
# bench-metric pending_samples moongate_remote_write_samples_pending
# bench-metric active_series moongate_series_active
MG_BENCH_ROUTE=split exec "$(dirname "$0")/moongate-route.sh" "$@"
