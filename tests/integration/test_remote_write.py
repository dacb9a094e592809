"""remote_write delivery against a receiver that misbehaves on purpose
(mgtest.FakeReceiver with a response policy): 503s and 429s with
Retry-After are retried until delivered with no sample lost; a 400 is not
retried, its samples are counted as dropped (reason http_4xx) and the
receiver's message is logged; delivery goes on afterwards.
"""
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402
from mgtest import log, poll_until, wait_for  # noqa: E402

REJECT_MSG = b"out of order sample (moongate integration test)"


class Policy:
    """First 3 requests 503, next 2 429 with Retry-After: 1, then 204;
    after arm_reject(), the next request gets 400 once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reject_armed = False
        self.rejected_at = None

    def arm_reject(self):
        with self.lock:
            self.reject_armed = True

    def __call__(self, n, body):
        if n <= 3:
            return 503, {}, b"overloaded, try later"
        if n <= 5:
            return 429, {"Retry-After": "1"}, b"slow down"
        with self.lock:
            if self.reject_armed:
                self.reject_armed = False
                self.rejected_at = n
                return 400, {}, REJECT_MSG
        return None


def run(c):
    with mgtest.Harness("remote-write") as h:
        pol = Policy()
        rx = h.add_server(mgtest.FakeReceiver(policy=pol))
        tgt = h.add_server(mgtest.FakeTarget("good"))
        cfg = h.write("rw.yml", f"""scrape_configs:
  - job_name: rw
    scrape_interval: 1s
    scrape_timeout: 900ms
    static_configs:
      - targets: ["{tgt.addr}"]
remote_write:
  - url: {rx.write_url}
    name: flaky
    queue_config:
      batch_send_deadline: 500ms
      min_backoff: 50ms
      max_backoff: 2s
""")
        gw = mgtest.start_moongate(h, cfg)

        def values():
            pts = [p for v in rx.find("good_requests_total", job="rw", instance=tgt.addr).values() for p in v]
            return sorted(int(v) for _, v in pts)

        vals = wait_for("8 scrapes delivered after the 503s and 429s", lambda: (lambda v: v if len(v) >= 8 else None)(values()), 60)
        with rx.lock:
            answers = list(rx.answers)
        codes = [a[1] for a in answers]
        log(f"answers so far: {codes}")
        c.check("no sample lost through 3x503 and 2x429 (values 1..N contiguous, once each)",
                vals == list(range(1, len(vals) + 1)), f"{vals}")
        after429 = [(a, b) for a, b in zip(answers, answers[1:]) if a[1] == 429]
        gaps = [round(b[3] - a[3], 2) for a, b in after429]
        c.check("Retry-After: 1 is honoured (>= 0.9 s before the next attempt)",
                gaps and all(g >= 0.9 for g in gaps), f"gaps after 429: {gaps}")
        first = [a for a in answers if a[1] == 503][:1]
        c.check("the 503'd batch was resent", first and any(a[2] == first[0][2] and a[1] != 503 for a in answers),
                f"{codes}")
        met = mgtest.fetch_own_metrics(gw.base)
        r503 = mgtest.metric_sum(met, "moongate_remote_write_requests_total", destination="flaky", code="503")
        r429 = mgtest.metric_sum(met, "moongate_remote_write_requests_total", destination="flaky", code="429")
        retries = mgtest.metric_sum(met, "moongate_remote_write_retries_total", destination="flaky")
        dropped = mgtest.metric_sum(met, "moongate_remote_write_samples_dropped_total", destination="flaky")
        c.check('moongate_remote_write_requests_total{code="503"} == 3', r503 == 3, f"{r503}")
        c.check('moongate_remote_write_requests_total{code="429"} == 2', r429 == 2, f"{r429}")
        c.check("moongate_remote_write_retries_total >= 5", retries is not None and retries >= 5, f"{retries}")
        c.check("nothing dropped through retryable errors", not dropped, f"{dropped}")

        # A 400: dropped, not retried, logged with the receiver's message.
        pol.arm_reject()
        wait_for("the 400 answer", lambda: pol.rejected_at, 20)
        with rx.lock:
            bad = [a for a in rx.answers if a[1] == 400][0]
        nreq = wait_for("3 more requests after the 400", lambda: (lambda n: n if n >= pol.rejected_at + 3 else None)(rx.requests), 20)
        with rx.lock:
            resent = [a for a in rx.answers if a[2] == bad[2] and a[0] != bad[0]]
        c.check("the 400'd batch is not resent", not resent, f"resent as requests {[a[0] for a in resent]}")
        met = mgtest.fetch_own_metrics(gw.base)
        d4 = mgtest.metric_sum(met, "moongate_remote_write_samples_dropped_total", destination="flaky", reason="http_4xx")
        c.check('moongate_remote_write_samples_dropped_total{reason="http_4xx"} > 0', d4 is not None and d4 > 0, f"{d4}")
        r400 = mgtest.metric_sum(met, "moongate_remote_write_requests_total", destination="flaky", code="400")
        c.check('moongate_remote_write_requests_total{code="400"} == 1', r400 == 1, f"{r400}")
        lines = [ln for ln in gw.stderr().splitlines() if REJECT_MSG.decode() in ln]
        if not lines:
            log("moongate remote_write log lines:\n" + "\n".join(ln for ln in gw.stderr().splitlines() if "remote_write" in ln))
        c.check("the receiver's 400 message is logged", bool(lines), lines[0] if lines else "not in the log")
        top = max(values())
        more = poll_until(lambda: max(values()) >= top + 2, 10)
        c.check("delivery goes on after the 400", bool(more), f"max value {top} -> {max(values())}")
        with rx.lock:
            nviol, viol = rx.nviolations, list(rx.violations)
        c.check("wire format of every request", nviol == 0, "; ".join(viol[:5]))
        log(f"receiver: {nreq}+ requests, answers {[a[1] for a in rx.answers]}")
        mgtest.stop_gateway(c, "exits 0 on SIGTERM", gw)


def main():
    c = mgtest.Checks()
    why = mgtest.moongate_usable()
    if why:
        c.check("moongate binary usable", False, why)
    else:
        try:
            run(c)
        except Exception as e:  # noqa: BLE001
            c.crashed("remote write", e)
    c.finish()


if __name__ == "__main__":
    main()
