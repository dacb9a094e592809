"""Targets that misbehave, next to one good target in the same job.

Python fake targets on loopback: a garbage body (parse error on line 3), a
50 MB body against the job's body_size_limit of 10MB, a body cut in the
middle (Content-Length larger than what is sent, then close), a hung
connection (accepts, never answers; scrape timeout 1s), a target that is
good and then turns to garbage, and a good one. moongate writes to a fake
remote-write receiver (mgtest.FakeReceiver) that decodes snappy + protobuf
and checks the wire format (headers, sorted labels, sane timestamps).

Checks: up=0 with job/instance for each bad target; a scrape_failed log line
naming it with a clear reason; the good target keeps being scraped (its
samples in the receiver and moongate_scrapes_total{result="success"} grow);
the target that went bad gets up=0 and an exact Prometheus stale NaN for its
series; moongate_targets counts; bounded memory despite the 50 MB body; a
clean exit on SIGTERM while a scrape hangs. MG_REFERENCE=prometheus runs the
flow with Prometheus as the gateway (no log or own-metric checks) to
validate this harness.
"""
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402
from mgtest import log, now_ms, poll_until, wait_for  # noqa: E402

JOB = "bad"
BAD = ("garbage", "big", "cut", "hung")
# What a clear reason looks like for each failure (case-insensitive).
REASONS = {
    "garbage": r"pars|syntax|invalid|unexpected|expected",
    "big": r"size|limit|too.?big|toobig|too.?large|exceed",
    "cut": r"eof|clos|reset|truncat|incomplete|short|premature|end of",
    "hung": r"timeout|timed.?out|deadline",
}


def line_number_of(rec):
    """The line number a scrape_failed record names, if any."""
    if rec.get("line"):
        return rec["line"]
    m = re.search(r"line\D{0,3}(\d+)", rec["_raw"]) or re.search(r":(\d+):\d*", rec.get("err", ""))
    return m.group(1) if m else None


def config(targets, write_url):
    tl = ", ".join(f'"{t.addr}"' for t in targets)
    return f"""# test_bad_targets (generated)
global:
  scrape_interval: 2s
  scrape_timeout: 1s
scrape_configs:
  - job_name: {JOB}
    scrape_interval: 2s
    scrape_timeout: 1s
    body_size_limit: 10MB
    static_configs:
      - targets: [{tl}]
remote_write:
  - url: {write_url}
    name: fake
    queue_config:
      batch_send_deadline: 1s
"""


def vm_hwm_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def run(c):
    ref = mgtest.reference_mode()
    with mgtest.Harness("bad-targets") as h:
        rx = h.add_server(mgtest.FakeReceiver("Prometheus/" if ref else "moongate/"))
        tg = {m: h.add_server(mgtest.FakeTarget(m)) for m in ("good", "flip") + BAD}
        cfg = h.write("bad.yml", config(tg.values(), rx.write_url))
        gw = mgtest.start_reference_prometheus(h, cfg) if ref else mgtest.start_moongate(h, cfg)
        log("targets: " + ", ".join(f"{m}={t.addr}" for m, t in tg.items()) + f"; receiver {rx.write_url}")

        def ups(m, since=0):
            pts = [p for v in rx.find("up", job=JOB, instance=tg[m].addr).values() for p in v]
            return [p for p in pts if p[0] >= since]

        wait_for("2 scrapes of every target in the receiver",
                 lambda: all(len(ups(m)) >= 2 for m in tg), 45)
        for m in BAD:
            pts = ups(m)
            c.check(f"{m}: up == 0 with job/instance in the receiver", pts and all(v == 0 for _, v in pts),
                    f"{len(pts)} up samples: {[v for _, v in pts][:6]}")
        for m in ("good", "flip"):
            pts = ups(m)
            c.check(f"{m}: up == 1", pts and all(v == 1 for _, v in pts), f"{[v for _, v in pts][:6]}")
        dur = [p for v in rx.find("scrape_duration_seconds", job=JOB, instance=tg["hung"].addr).values() for p in v]
        c.check("hung: scrape_duration_seconds shows the 1s timeout was enforced",
                dur and all(0.9 <= v <= 2.0 for _, v in dur), f"{[round(v, 3) for _, v in dur]}")
        bigs = rx.find("big_metric")
        c.check("big: no sample of the oversized body reached the receiver", not bigs, f"{len(bigs)} series")
        # Prometheus commits a scrape only when the whole body parsed: the
        # valid lines before the error must not be sent, nor staleness
        # markers for series that were never sent.
        garb = {k: v for k, v in rx.find_instance(tg["garbage"].addr).items()
                if dict(k)["__name__"] not in mgtest.SYNTHETIC}
        c.check("garbage: nothing of the failed body reached the receiver (not even stale markers)", not garb,
                "; ".join(f"{mgtest.key_str(k)}: {v[:3]}" for k, v in garb.items()))

        # The good target keeps being scraped.
        n1 = len(ups("good"))
        n2 = poll_until(lambda: (lambda n: n if n >= n1 + 2 else None)(len(ups("good"))), 15)
        c.check("good: its scrapes keep arriving in the receiver", n2 is not None and n2 >= n1 + 2,
                f"up samples {n1} -> {n2}")
        reqs = [p for v in rx.find("good_requests_total", job=JOB, instance=tg["good"].addr).values() for p in v]
        vals = [v for _, v in sorted(reqs)]
        c.check("good: good_requests_total increases scrape after scrape",
                len(vals) >= 3 and all(b > a for a, b in zip(vals, vals[1:])), f"{vals}")
        # Keep-alive, as Prometheus does: a new TCP connection per scrape or
        # per write request costs both sides a handshake and a TIME_WAIT.
        good = tg["good"]
        c.check("good: every scrape over one kept-alive connection", good.requests >= 3 and len(good.conns) == 1,
                f"{good.requests} requests over {len(good.conns)} connections")
        c.check("receiver: write requests reuse their connections", rx.requests >= 4 and
                rx.connections * 2 <= rx.requests, f"{rx.requests} requests over {rx.connections} connections")
        gg = rx.find("good_gauge", job=JOB, instance=tg["good"].addr)
        c.check("good: both good_gauge series with their values", sorted(
            (dict(k)["kind"], pts[-1][1]) for k, pts in gg.items()) == [("a", 1.5), ("b", -2.0)], f"{gg.keys()}")

        if not ref:
            m = mgtest.fetch_own_metrics(gw.base)
            s1 = mgtest.metric_sum(m, "moongate_scrapes_total", job=JOB, result="success") or 0
            f1 = mgtest.metric_sum(m, "moongate_scrapes_total", job=JOB, result="failure") or 0
            s2 = poll_until(lambda: (lambda v: v if v and v >= s1 + 2 else None)(
                mgtest.metric_sum(mgtest.fetch_own_metrics(gw.base), "moongate_scrapes_total", job=JOB, result="success")), 15)
            c.check('moongate_scrapes_total{result="success"} grows', s2 is not None and s1 > 0,
                    f"{s1} -> {s2}")
            c.check('moongate_scrapes_total{result="failure"} counts the bad targets', f1 >= 2 * len(BAD), f"{f1}")
            events = mgtest.log_events(gw.stderr(), "scrape_failed")
            for mode in BAD:
                recs = [e for e in events if tg[mode].addr in e["_raw"]]
                clear = [e for e in recs if re.search(REASONS[mode], e["_raw"], re.I)]
                c.check(f"{mode}: scrape_failed log line names the target with a clear reason", bool(clear),
                        (clear or recs or [{"_raw": f"no scrape_failed line for {tg[mode].addr}"}])[0]["_raw"])
                if mode == "garbage" and recs:
                    ln = line_number_of(recs[0])
                    c.check("garbage: the parse error names line 3", ln == "3", recs[0]["_raw"])
            others = [e for e in events if tg["good"].addr in e["_raw"]]
            c.check("good: never logged as failed", not others, others[0]["_raw"] if others else "")

        # A good target turns bad: up=0 and stale markers for what it had.
        fm = rx.find("flip_metric", job=JOB, instance=tg["flip"].addr)
        c.check("flip: flip_metric scraped while good", fm and all(v == 7 for p in fm.values() for _, v in p))
        tg["flip"].mode = "garbage"
        t_flip = now_ms()
        st = poll_until(lambda: [p for v in rx.find("flip_metric", instance=tg["flip"].addr).values()
                                 for p in v if p[0] >= t_flip - 2500 and math.isnan(p[1])], 12)
        c.check("flip: its series get a Prometheus staleness marker (exact stale NaN bits)",
                bool(st) and all(mgtest.is_stale_nan(v) for _, v in st), f"{st}")
        c.check("flip: up becomes 0",
                bool(poll_until(lambda: [p for p in ups("flip", t_flip) if p[1] == 0], 12)), f"{ups('flip', t_flip)}")
        # After two more failed scrapes: one marker per series, not one per failure.
        poll_until(lambda: len([p for p in ups("flip", t_flip) if p[1] == 0]) >= 3, 12)
        nan_pts = [p for v in rx.find("flip_metric", instance=tg["flip"].addr).values() for p in v if math.isnan(p[1])]
        c.check("flip: exactly one staleness marker, not one per failed scrape",
                len(nan_pts) == 1 and len([p for p in ups("flip", t_flip) if p[1] == 0]) >= 3,
                f"{len(nan_pts)} markers over {len(ups('flip', t_flip))} failed scrapes")
        good_stale = [k for k, pts in rx.find("good_requests_total").items() if any(math.isnan(v) for _, v in pts)]
        c.check("good: no staleness marker for a healthy target's series", not good_stale)
        if not ref:
            def targets_ok():
                mm = mgtest.fetch_own_metrics(gw.base)
                return (mgtest.metric_sum(mm, "moongate_targets", job=JOB, health="down") == len(BAD) + 1
                        and mgtest.metric_sum(mm, "moongate_targets", job=JOB, health="up") == 1)
            c.check(f'moongate_targets{{health="down"}} == {len(BAD) + 1}, {{health="up"}} == 1',
                    bool(poll_until(targets_ok, 10)))
            flips = [e for e in mgtest.log_events(gw.stderr(), "scrape_failed") if tg["flip"].addr in e["_raw"]]
            c.check("flip: scrape_failed logged once it turned bad", bool(flips))
            st_, _, _ = mgtest.http_get(gw.base + "/-/healthy")
            c.check("/-/healthy still 200", st_ == 200, f"{st_}")
            hwm = vm_hwm_mb(gw.pid)
            c.check("peak RSS stays bounded despite a 50 MB body (limit 10MB)", hwm is not None and hwm < 256,
                    f"VmHWM {hwm:.0f} MB" if hwm else "")

        with rx.lock:
            nreq, nser, nviol, viol = rx.requests, len(rx.samples), rx.nviolations, list(rx.violations)
        log(f"receiver: {nreq} requests, {nser} series, {nviol} wire-format violations")
        c.check("wire format: headers, sorted unique labels, snappy+protobuf, timestamps",
                nreq > 0 and nviol == 0, "; ".join(viol[:5]))
        hl = rx.headers_seen or {}
        log(f"last request headers: user-agent={hl.get('user-agent')!r} "
            f"content-type={hl.get('content-type')!r} content-encoding={hl.get('content-encoding')!r}")

        # SIGTERM right after the hung target got a request, so a scrape is
        # certainly in flight (mid-timeout) when shutdown starts.
        n = tg["hung"].requests
        wait_for("a new request to the hung target", lambda: tg["hung"].requests > n, 10, 0.01)
        mgtest.stop_gateway(c, "exits 0 on SIGTERM with a scrape hanging", gw)


# moongate's default body limit (core/mg_scrape.h MG_SCRAPE_DEFAULT_BODY_LIMIT,
# 100 MiB); Prometheus' default is no limit, so the reference run skips this.
DEFAULT_LIMIT = 100 << 20


def run_default_limit(c):
    """No body_size_limit in the job: a body just over moongate's default
    limit must fail with a size reason, without holding more than about one
    limit's worth of memory."""
    with mgtest.Harness("bad-default-limit") as h:
        rx = h.add_server(mgtest.FakeReceiver())
        t = h.add_server(mgtest.FakeTarget("big", big_bytes=DEFAULT_LIMIT + (4 << 20)))
        cfg = h.write("default.yml", f"""scrape_configs:
  - job_name: huge
    scrape_interval: 5s
    scrape_timeout: 4s
    static_configs:
      - targets: ["{t.addr}"]
remote_write:
  - url: {rx.write_url}
    name: fake
""")
        gw = mgtest.start_moongate(h, cfg)
        ups = wait_for("a scrape of the huge target", lambda: [
            p for v in rx.find("up", job="huge", instance=t.addr).values() for p in v], 30)
        c.check(f"default limit: a {(DEFAULT_LIMIT + (4 << 20)) >> 20} MiB body gives up == 0",
                all(v == 0 for _, v in ups), f"{ups}")
        recs = [e for e in mgtest.log_events(gw.stderr(), "scrape_failed") if t.addr in e["_raw"]]
        c.check("default limit: scrape_failed names the size limit",
                any(re.search(REASONS["big"], e["_raw"], re.I) for e in recs),
                recs[0]["_raw"] if recs else "no scrape_failed line")
        c.check("default limit: no sample of the body reached the receiver", not rx.find("big_metric"))
        hwm = vm_hwm_mb(gw.pid)
        c.check("default limit: peak RSS below 2x the limit", hwm is not None and hwm < 2 * (DEFAULT_LIMIT >> 20),
                f"VmHWM {hwm:.0f} MB" if hwm else "")
        mgtest.stop_gateway(c, "default limit: exits 0 on SIGTERM", gw)


def main():
    c = mgtest.Checks()
    why = None if mgtest.reference_mode() else mgtest.moongate_usable()
    if why:
        c.check("moongate binary usable", False, why)
    else:
        try:
            run(c)
        except Exception as e:  # noqa: BLE001
            c.crashed("bad targets", e)
        if not mgtest.reference_mode():
            try:
                run_default_limit(c)
            except Exception as e:  # noqa: BLE001
                c.crashed("default body limit", e)
    c.finish()


if __name__ == "__main__":
    main()
