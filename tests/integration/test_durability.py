"""The durable buffer end to end: moongate scrapes continuously while the
receiver (mgtest.FakeReceiver) answers 503 for a while, and nothing is lost:

1. a 60 s outage (MG_OUTAGE_S overrides): every scrape arrives once the
   receiver is back, values 1..N contiguous per target; retries back off (no
   storm); RSS stays bounded while 10k series a second pile up on disk;
2. kill -9 during an outage, restart on the same --data-dir: everything
   scraped before the kill arrives (at most the scrape in flight at the kill
   is missing);
3. SIGTERM during an outage with a short --drain-timeout: exit 0, the rest
   persists and is sent after the next start;
4. a disk that refuses writes (RLIMIT_FSIZE, SIGXFSZ ignored): the buffer
   degrades to memory with a metric and a log line, and still nothing is
   lost;
5. a receiver that takes 10 s to answer twice: waited for (remote_timeout
   30 s), not resent, nothing lost;
6. a memory-only queue (buffer.memory_only) during a 20 s outage: RSS grows
   by about what the queue reports holding (a queued batch keeps only its
   compressed bytes), and nothing is lost.
Every target serves good_requests_total = its request count, so a lost
scrape is a hole in the received values.
"""
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402
from mgtest import log, poll_until, wait_for  # noqa: E402

OUTAGE_S = float(os.environ.get("MG_OUTAGE_S", "60"))
BIG_LINE = len('big_metric{i="00000000"} 1\n')  # FakeTarget("big") cuts its body at big_bytes


class Outage:
    """503 while on; counts the requests it refused and when."""

    def __init__(self):
        self.on = False
        self.refused = []
        self.lock = threading.Lock()

    def __call__(self, n, body):
        with self.lock:
            if self.on:
                self.refused.append(time.monotonic())
                return 503, {}, b"receiver down (moongate durability test)"
        return None


def config(h, name, targets, rx, extra_targets=()):
    tl = ", ".join(f'"{t.addr}"' for t in targets)
    big = ""
    if extra_targets:
        big = f"""  - job_name: big
    scrape_interval: 1s
    scrape_timeout: 900ms
    static_configs:
      - targets: [{", ".join(f'"{t.addr}"' for t in extra_targets)}]
"""
    return h.write(name, f"""scrape_configs:
  - job_name: dur
    scrape_interval: 1s
    scrape_timeout: 900ms
    static_configs:
      - targets: [{tl}]
{big}remote_write:
  - url: {rx.write_url}
    name: amp
    queue_config:
      min_backoff: 100ms
      max_backoff: 2s
""")


def values(rx, tgt):
    pts = [p for v in rx.find("good_requests_total", job="dur", instance=tgt.addr).values() for p in v]
    return sorted(int(v) for _, v in pts)


def holes(vals, upto):
    have = set(vals)
    return [v for v in range(1, upto + 1) if v not in have]


def wait_delivered(rx, targets, upto, timeout, allowed=None):
    """Until every value 1..upto[t] arrived for each target (except the
    allowed ones); returns the seconds it took, or None."""
    t0 = time.monotonic()
    allowed = allowed or {}

    def done():
        return all(not [x for x in holes(values(rx, t), upto[t]) if x not in allowed.get(t, ())] for t in targets)
    return time.monotonic() - t0 if poll_until(done, timeout) else None


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def metric(gw, name, **lab):
    return mgtest.metric_sum(mgtest.fetch_own_metrics(gw.base), name, **lab)


def check_no_loss(c, what, rx, targets, upto, allowed=None, timeout=90):
    secs = wait_delivered(rx, targets, upto, timeout, allowed)
    detail = []
    for t in targets:
        v = values(rx, t)
        miss = [x for x in holes(v, upto[t]) if x not in (allowed or {}).get(t, ())]
        detail.append(f"{t.addr}: {len(set(v))} scrapes received, last {max(v) if v else None}, missing {miss[:10]}")
    c.check(what, secs is not None, "; ".join(detail))
    return secs


def outage_60s(c, h):
    out = Outage()
    rx = h.add_server(mgtest.FakeReceiver(policy=out))
    tg = [h.add_server(mgtest.FakeTarget("good")) for _ in range(2)]
    big = h.add_server(mgtest.FakeTarget("big", big_bytes=BIG_LINE * 10_000))  # 10k series a second
    gw = mgtest.start_moongate(h, config(h, "outage.yml", tg, rx, [big]), name="mg-outage")
    wait_for("first scrapes delivered", lambda: all(len(values(rx, t)) >= 2 for t in tg), 30)
    out.on = True
    t_on = time.monotonic()
    log(f"receiver down for {OUTAGE_S:.0f} s")
    rss = []
    while time.monotonic() - t_on < OUTAGE_S:
        time.sleep(min(5, max(0.1, OUTAGE_S - (time.monotonic() - t_on))))
        rss.append(rss_kib(gw.p.pid))
    buf = metric(gw, "moongate_remote_write_buffer_bytes", destination="amp")
    pend = metric(gw, "moongate_remote_write_samples_pending", destination="amp")
    upto = {t: t.requests - 1 for t in tg}
    out.on = False
    with out.lock:
        refused = list(out.refused)
    log(f"outage over: buffer {buf / 1e6:.1f} MB, {pend:.0f} samples pending, {len(refused)} requests refused, "
        f"RSS samples (MiB) {[round(r / 1024) for r in rss]}")
    c.check("the backlog is on disk during the outage (buffer_bytes > 40 kB per second down)",
            buf and buf > OUTAGE_S * 40e3, f"{buf}")
    # Backoff: with max_backoff 2s (jitter halves it at most) one shard
    # retries at most every second or so, never in a tight loop.
    gaps = [b - a for a, b in zip(refused, refused[1:])]
    late = [g for g in gaps[8:]]  # after the exponential ramp from 100 ms
    c.check("no retry storm: refused requests <= outage/0.9s + ramp",
            len(refused) <= OUTAGE_S / 0.9 + 10, f"{len(refused)} in {OUTAGE_S:.0f} s")
    c.check("backoff reaches max_backoff/2..max_backoff (gaps >= 0.95 s after the ramp)",
            late and min(late) >= 0.95, f"min gap {min(late) if late else None:.2f} s")
    c.check("RSS bounded while the backlog grows on disk (< 160 MiB, growth < 32 MiB)",
            max(rss) < 160 * 1024 and max(rss) - rss[0] < 32 * 1024,
            f"first {rss[0] / 1024:.0f} MiB, max {max(rss) / 1024:.0f} MiB")
    secs = check_no_loss(c, f"{OUTAGE_S:.0f} s outage: 0 scrapes lost", rx, tg, upto)
    if secs is not None:
        log(f"backlog of {pend:.0f} samples delivered {secs:.1f} s after the receiver came back")
    dropped = metric(gw, "moongate_remote_write_samples_dropped_total", destination="amp")
    c.check("nothing counted as dropped", not dropped, f"{dropped}")

    def accounted():
        m = mgtest.fetch_own_metrics(gw.base)
        v = [mgtest.metric_sum(m, f"moongate_remote_write_samples_{k}", destination="amp") or 0
             for k in ("in_total", "sent_total", "dropped_total", "pending")]
        return v if v[0] == v[1] + v[2] + v[3] else None
    v = poll_until(accounted, 10)
    c.check("metrics add up: samples in == sent + dropped + pending", v, f"{v}")
    mgtest.stop_gateway(c, "outage: exits 0 on SIGTERM", gw)


def kill9(c, h):
    out = Outage()
    rx = h.add_server(mgtest.FakeReceiver(policy=out))
    tg = [h.add_server(mgtest.FakeTarget("good")) for _ in range(2)]
    cfg = config(h, "kill9.yml", tg, rx)
    gw = mgtest.start_moongate(h, cfg, name="mg-kill9")
    wait_for("first scrapes delivered", lambda: all(len(values(rx, t)) >= 2 for t in tg), 30)
    out.on = True
    time.sleep(10)
    gw.p.send_signal(signal.SIGKILL)
    gw.p.wait(10)
    in_flight = {t: {t.requests} for t in tg}  # may have been served, not processed
    upto = {t: t.requests for t in tg}
    log(f"killed -9 during the outage; served so far {[t.requests for t in tg]}")
    gw2 = mgtest.start_moongate(h, cfg, name="mg-kill9")  # same name: same --data-dir
    rec = metric(gw2, "moongate_remote_write_buffer_recovered_samples_total", destination="amp")
    c.check("restart recovers the buffer (recovered_samples > 0)", rec and rec > 0, f"{rec}")
    time.sleep(3)
    out.on = False
    check_no_loss(c, "kill -9 during an outage: 0 scrapes lost (the one in flight at the kill aside)", rx, tg, upto,
                  allowed=in_flight)
    lost_inflight = sum(1 for t in tg for x in in_flight[t] if x in holes(values(rx, t), upto[t]))
    log(f"scrapes in flight at the kill and missing: {lost_inflight}")
    mgtest.stop_gateway(c, "kill -9: the restarted one exits 0 on SIGTERM", gw2)


def sigterm_persists(c, h):
    out = Outage()
    rx = h.add_server(mgtest.FakeReceiver(policy=out))
    tg = [h.add_server(mgtest.FakeTarget("good"))]
    cfg = config(h, "term.yml", tg, rx)
    gw = mgtest.start_moongate(h, cfg, name="mg-term", extra=["--drain-timeout", "1s"])
    wait_for("first scrapes delivered", lambda: len(values(rx, tg[0])) >= 2, 30)
    out.on = True
    time.sleep(5)
    rc, secs = gw.stop(timeout=15)
    upto = {tg[0]: tg[0].requests}
    c.check("SIGTERM during an outage: exit 0 after the drain deadline", rc == 0 and secs < 10, f"rc={rc} {secs:.1f}s")
    ev = mgtest.log_events(gw.stderr(), "drain_persisted")
    c.check("the undelivered rest is persisted (event=drain_persisted)", bool(ev), f"{ev[:1]}")
    dropped = [e for e in mgtest.log_events(gw.stderr(), "drain_incomplete")]
    c.check("nothing dropped at shutdown", not dropped, f"{dropped[:1]}")
    out.on = False
    gw2 = mgtest.start_moongate(h, cfg, name="mg-term")
    check_no_loss(c, "after SIGTERM + restart: 0 scrapes lost", rx, tg, upto)
    mgtest.stop_gateway(c, "SIGTERM: the restarted one exits 0", gw2)


def disk_full(c, h):
    out = Outage()
    rx = h.add_server(mgtest.FakeReceiver(policy=out))
    tg = [h.add_server(mgtest.FakeTarget("good"))]
    big = h.add_server(mgtest.FakeTarget("big", big_bytes=BIG_LINE * 4000))
    cfg = config(h, "full.yml", tg, rx, [big])
    # The process may write files of at most 64 KiB, and a write past that
    # fails with EFBIG instead of killing it: a disk that fills up.
    wrap = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); os.execv(sys.argv[1], sys.argv[1:])")
    port = mgtest.free_port()
    data = h.path("mg-full-data")
    os.makedirs(data)
    gw = h.start("mg-full", [sys.executable, "-c", wrap, mgtest.MOONGATE_BIN, "run", cfg, "--listen",
                             f"127.0.0.1:{port}", "--data-dir", data, "--log-level", "info"])
    gw.base = f"http://127.0.0.1:{port}"
    mgtest.wait_http(gw.base + "/-/ready", 30)
    wait_for("first scrapes delivered", lambda: len(values(rx, tg[0])) >= 2, 30)
    out.on = True
    deg = wait_for("buffer_degraded == 1", lambda: metric(gw, "moongate_remote_write_buffer_degraded",
                                                           destination="amp") == 1 or None, 40)
    errs = metric(gw, "moongate_remote_write_buffer_write_errors_total", destination="amp")
    c.check("a full disk degrades the buffer to memory (metric)", deg, "")
    c.check("write errors are counted", errs and errs > 0, f"{errs}")
    ev = mgtest.log_events(gw.stderr(), "append_failed")
    c.check("and logged", bool(ev), f"{ev[:1]}")
    time.sleep(3)
    upto = {tg[0]: tg[0].requests - 1}
    out.on = False
    check_no_loss(c, "full disk during an outage: 0 scrapes lost", rx, tg, upto)
    mgtest.stop_gateway(c, "full disk: exits 0", gw)


class Slow:
    """Requests 3 and 4 take 10 s to answer (well under remote_timeout)."""

    def __init__(self):
        self.slow = set()

    def __call__(self, n, body):
        if n in (3, 4):
            self.slow.add(n)
            time.sleep(10)
        return None


def slow_receiver(c, h):
    pol = Slow()
    rx = h.add_server(mgtest.FakeReceiver(policy=pol))
    tg = [h.add_server(mgtest.FakeTarget("good"))]
    gw = mgtest.start_moongate(h, config(h, "slow.yml", tg, rx), name="mg-slow")
    wait_for("two slow answers", lambda: pol.slow == {3, 4} or None, 60)
    time.sleep(2)
    upto = {tg[0]: tg[0].requests - 1}
    check_no_loss(c, "10 s slow responses: 0 scrapes lost", rx, tg, upto)
    with rx.lock:
        answers = list(rx.answers)
    bodies = [a[2] for a in answers]
    dup = len(bodies) - len(set(bodies))
    c.check("slow responses are waited for, not timed out and resent (no body sent twice)", dup == 0,
            f"{dup} repeated of {len(bodies)}")
    retries = metric(gw, "moongate_remote_write_retries_total", destination="amp")
    c.check("no retry while the receiver is merely slow", not retries, f"{retries}")
    mgtest.stop_gateway(c, "slow receiver: exits 0", gw)


def memory_queue(c, h):
    out = Outage()
    rx = h.add_server(mgtest.FakeReceiver(policy=out))
    tg = [h.add_server(mgtest.FakeTarget("good"))]
    big = h.add_server(mgtest.FakeTarget("big", big_bytes=BIG_LINE * 10_000))
    script = h.write("memq.lua", f"""local mg = require "moongate"
mg.remote_write{{ name = "amp", url = "{rx.write_url}", buffer = {{ memory_only = true }},
  queue = {{ min_backoff = "100ms", max_backoff = "2s" }} }}
mg.scrape{{ job = "dur", interval = "1s", timeout = "900ms", targets = {{ "{tg[0].addr}" }} }}
mg.scrape{{ job = "big", interval = "1s", timeout = "900ms", targets = {{ "{big.addr}" }} }}
""")
    gw = mgtest.start_moongate(h, script, name="mg-memq")
    wait_for("first scrapes delivered", lambda: len(values(rx, tg[0])) >= 3, 30)
    time.sleep(2)
    rss0 = rss_kib(gw.p.pid)
    out.on = True
    time.sleep(20)
    held = metric(gw, "moongate_remote_write_memory_bytes", destination="amp")
    pend = metric(gw, "moongate_remote_write_samples_pending", destination="amp")
    rss1 = rss_kib(gw.p.pid)
    upto = {tg[0]: tg[0].requests - 1}
    out.on = False
    log(f"memory queue: {pend:.0f} samples pending in {held / 1e6:.1f} MB, RSS {rss0 / 1024:.1f} -> "
        f"{rss1 / 1024:.1f} MiB")
    c.check("memory-only queue holds the outage's samples (> 150k pending)", pend and pend > 150e3, f"{pend}")
    grow = (rss1 - rss0) * 1024
    c.check("RSS grows by at most twice the queued bytes + 16 MiB", held and grow < 2 * held + (16 << 20),
            f"grew {grow / 1e6:.1f} MB, queue {held / 1e6:.1f} MB")
    check_no_loss(c, "memory-only queue, 20 s outage: 0 scrapes lost", rx, tg, upto)
    mgtest.stop_gateway(c, "memory queue: exits 0", gw)


def run(c):
    for scenario in (sigterm_persists, kill9, disk_full, slow_receiver, memory_queue, outage_60s):
        with mgtest.Harness(f"durability-{scenario.__name__}") as h:
            try:
                scenario(c, h)
            except Exception as e:  # noqa: BLE001
                c.crashed(scenario.__name__, e)
                h.dump_logs(60)


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
