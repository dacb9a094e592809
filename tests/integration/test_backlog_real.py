"""A backlog delivered to real receivers: moongate scrapes while Prometheus
2.42 and VictoriaMetrics are not running yet, so every scrape waits in the
durable buffer as its own record; once they start, shards join waiting
records into larger requests (snappy blocks joined without decompressing,
mg_wire_snappy_join). The receivers' own decoders (Go) must accept every
joined request: nothing dropped, every scrape's sample stored, and fewer
requests than records.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402
from mgtest import log, poll_until, wait_for  # noqa: E402

JOB = "backlog"
SERIES = 300  # per scrape, so that records are tens of KiB and joined requests larger


def page(n):
    lines = [f"backlog_scrape_number {n}"]
    lines += [f'backlog_gauge{{shard="s{i % 7}",idx="{i}"}} {n * 1000 + i}' for i in range(SERIES)]
    return ("\n".join(lines) + "\n").encode()


def run(c):
    with mgtest.Harness("backlog-real") as h:
        tgt = h.add_server(mgtest.FakeTarget("static", body=page))
        pport, vport = mgtest.free_port(), mgtest.free_port()
        cfg = h.write("backlog.yml", f"""scrape_configs:
  - job_name: {JOB}
    scrape_interval: 500ms
    scrape_timeout: 400ms
    static_configs:
      - targets: ["{tgt.addr}"]
remote_write:
  - url: http://127.0.0.1:{pport}/api/v1/write
    name: prom
    queue_config:
      min_backoff: 50ms
      max_backoff: 500ms
  - url: http://127.0.0.1:{vport}/api/v1/write
    name: vm
    queue_config:
      min_backoff: 50ms
      max_backoff: 500ms
""")
        t0 = mgtest.now_ms()
        gw = mgtest.start_moongate(h, cfg)
        wait_for("12 scrapes while both receivers are down", lambda: tgt.requests >= 12, 30)
        mm = mgtest.fetch_own_metrics(gw.base)
        pend = {d: mgtest.metric_sum(mm, "moongate_remote_write_samples_pending", destination=d) for d in ("prom", "vm")}
        c.check("backlog: samples wait for both receivers", all(v and v >= 12 * SERIES for v in pend.values()),
                f"{pend}")
        prom = mgtest.start_prometheus_receiver(h, port=pport)
        vm = mgtest.start_victoria(h, port=vport)
        log(f"receivers up: prometheus {prom.base}, victoria {vm.base}")

        def drained():
            m = mgtest.fetch_own_metrics(gw.base)
            left = [mgtest.metric_sum(m, "moongate_remote_write_samples_pending", destination=d) for d in ("prom", "vm")]
            return m if all(v == 0 for v in left) else None
        m = poll_until(drained, 60)
        c.check("backlog: delivered to both (nothing pending)", m is not None)
        m = m or mgtest.fetch_own_metrics(gw.base)
        n_scrapes = tgt.requests
        for d in ("prom", "vm"):
            dropped = mgtest.metric_sum(m, "moongate_remote_write_samples_dropped_total", destination=d) or 0
            c.check(f"{d}: no sample dropped (no 4xx from the receiver's decoder)", dropped == 0, f"dropped {dropped}")
            reqs = mgtest.metric_sum(m, "moongate_remote_write_requests_total", destination=d) or 0
            ok = mgtest.metric_sum(m, "moongate_remote_write_requests_total", destination=d, code="204") or 0
            ok += mgtest.metric_sum(m, "moongate_remote_write_requests_total", destination=d, code="200") or 0
            log(f"{d}: {reqs} requests answered ({ok} 2xx) for {n_scrapes} scrapes")
            c.check(f"{d}: waiting records went out joined (fewer delivered requests than scrapes)",
                    0 < ok < n_scrapes * 0.8, f"{ok} 2xx requests, {n_scrapes} scrapes")
        # Every scrape number up to the drain is stored once, in order.
        t1 = mgtest.now_ms()
        if hasattr(vm.api, "flush"):
            vm.api.flush()
        for name, rx in (("prom", prom), ("vm", vm)):
            def numbers():
                got = rx.api.raw_samples(f'backlog_scrape_number{{job="{JOB}"}}', t0, t1)
                vals = sorted(v for pts in got.values() for _, v in pts)
                return vals if len(vals) >= 12 else None
            vals = poll_until(numbers, 20) or []
            contiguous = vals == [float(x) for x in range(int(vals[0]), int(vals[0]) + len(vals))] if vals else False
            c.check(f"{name}: every scrape of the backlog stored once, none missing", len(vals) >= 12 and contiguous,
                    f"{len(vals)} values: {vals[:3]}..{vals[-3:]}")
            got = rx.api.raw_samples(f'backlog_gauge{{job="{JOB}",idx="{SERIES - 1}"}}', t0, t1)
            pts = [p for v in got.values() for p in v]
            c.check(f"{name}: the last series of each page arrived too", len(pts) >= 12, f"{len(pts)} samples")
        mgtest.stop_gateway(c, "backlog: exits 0 on SIGTERM", gw)


def main():
    c = mgtest.Checks()
    why = mgtest.moongate_usable()
    if why:
        c.check("moongate binary usable", False, why)
    else:
        try:
            run(c)
        except Exception as e:  # noqa: BLE001
            c.crashed("backlog", e)
    c.finish()


if __name__ == "__main__":
    main()
