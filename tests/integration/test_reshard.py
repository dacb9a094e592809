"""Adaptive resharding: a receiver that takes 300 ms per request cannot
keep up with one shard at 10k samples a second, so moongate adds shards
(moongate_remote_write_shards goes up, a reshard is logged); when the load
goes away it gives them back. Through every change each series' samples
arrive in the order they were scraped (a receiver would reject the rest as
out of order) and no scrape is lost.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402
from mgtest import log, poll_until, wait_for  # noqa: E402

BIG_LINE = len('big_metric{i="00000000"} 1\n')


def shards(gw):
    return mgtest.metric_sum(mgtest.fetch_own_metrics(gw.base), "moongate_remote_write_shards", destination="slow")


def run(c):
    with mgtest.Harness("reshard") as h:
        rx = h.add_server(mgtest.FakeReceiver(delay=0.3))
        big = h.add_server(mgtest.FakeTarget("big", big_bytes=BIG_LINE * 10_000))
        good = h.add_server(mgtest.FakeTarget("good"))
        cfg = h.write("reshard.yml", f"""scrape_configs:
  - job_name: load
    scrape_interval: 1s
    scrape_timeout: 900ms
    static_configs:
      - targets: ["{big.addr}", "{good.addr}"]
remote_write:
  - url: {rx.write_url}
    name: slow
    queue_config:
      min_shards: 1
      max_shards: 8
""")
        gw = mgtest.start_moongate(h, cfg)
        up = wait_for("more than one shard", lambda: (lambda n: n if n and n > 1 else None)(shards(gw)), 60)
        ev = mgtest.log_events(gw.stderr(), "reshard")
        c.check("the slow receiver makes moongate add shards", up and up > 1, f"shards={up}; {ev[-1:]}")
        peak = up
        for _ in range(10):
            time.sleep(2)
            peak = max(peak, shards(gw) or 0)
        log(f"peak shard count {peak}")
        big.mode = "good"  # the load goes away: 4 samples a second remain
        down = poll_until(lambda: shards(gw) == 1, 90)
        c.check("and gives them back when the load goes away", down, f"shards={shards(gw)}")
        upto = good.requests - 1
        got = poll_until(lambda: all(v in {int(x) for _, x in p}
                                     for p in rx.find("good_requests_total", instance=good.addr).values()
                                     for v in range(1, upto + 1)), 60)
        vals = sorted({int(x) for p in rx.find("good_requests_total", instance=good.addr).values() for _, x in p})
        c.check("no scrape lost through the reshards", got, f"{len(vals)} of {upto}")
        with rx.lock:
            series = {k: list(v) for k, v in rx.samples.items()}
        nseries = len(series)
        disorder = [(mgtest.key_str(k), ts) for k, ts in series.items()
                    if any(b[0] <= a[0] for a, b in zip(ts, ts[1:]))]
        c.check(f"every series' samples arrived in order ({nseries} series)", not disorder, f"{disorder[:3]}")
        ev = mgtest.log_events(gw.stderr(), "reshard")
        log("reshards: " + "; ".join(f"{e.get('from')}->{e.get('to')}" for e in ev))
        with rx.lock:
            nviol, viol = rx.nviolations, list(rx.violations)
        c.check("wire format of every request", nviol == 0, "; ".join(viol[:5]))
        mgtest.stop_gateway(c, "exits 0 on SIGTERM", gw)


def main():
    c = mgtest.Checks()
    why = mgtest.moongate_usable()
    if why:
        c.check("moongate binary usable", False, why)
        return c.finish()
    run(c)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
