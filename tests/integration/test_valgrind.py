"""The end-to-end flow under valgrind memcheck: no invalid access, no use of
uninitialised memory, no leak (definite or indirect) on a clean exit.

moongate (a build without sanitizers: ASan and valgrind do not mix) runs
twice under memcheck on one --data-dir, scraping every second a real
node_exporter (FakeTarget("good") stands in when the package is missing)
and a FakeTarget, remote-writing to mgtest.FakeReceiver through the
durable buffer (the default):

1. prometheus.yml with relabel_configs, metric_relabel_configs and
   write_relabel_configs: first samples, SIGHUP (reload), a receiver outage
   (503 for a few seconds: retries, records read back from the WAL), then a
   second outage cut short by SIGTERM with a 1 s --drain-timeout, so the
   batches still queued stay in the WAL;
2. a Lua script with relabel rules and the relabel and route hooks (a
   second destination, mg.file, gets what the route hook sends there): the
   WAL of run 1 is replayed at start-up and delivered, then SIGHUP, an
   outage and SIGTERM, after which everything queued is delivered
   (--drain-timeout 20s) before the exit.

Each run must exit 0 (valgrind exits 99 on any error, leaks of kind
definite or indirect included) and its log must say "ERROR SUMMARY: 0
errors", "definitely lost: 0 bytes" and "indirectly lost: 0 bytes" (or
that no leak is possible). There is no suppression file beyond valgrind's
default one: an error in moongate or in a library it links fails the test.
Skips (exit 0, "skipped: ...") without valgrind or with a sanitizer build.
"""
import os
import re
import shutil
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402
from mgtest import log, wait_for  # noqa: E402

VALGRIND = os.environ.get("VALGRIND_BIN") or shutil.which("valgrind")
# Under memcheck moongate runs 20-50 times slower: waits are generous, every
# one still polls a condition.
SLOW = 60


class Outage:
    """Receiver policy: 503 while on; counts refusals and later successes."""

    def __init__(self):
        self.on = False
        self.refused = 0
        self.accepted_after = 0
        self.lock = threading.Lock()

    def start(self):
        with self.lock:
            self.on, self.refused, self.accepted_after = True, 0, 0

    def stop(self):
        with self.lock:
            self.on = False

    def __call__(self, n, body):
        with self.lock:
            if self.on:
                self.refused += 1
                return 503, {"Retry-After": "1"}, b"receiver down (moongate valgrind test)"
            self.accepted_after += 1
        return None


def valgrind_argv(logfile):
    argv = [VALGRIND, "--tool=memcheck", "--leak-check=full",
            "--show-leak-kinds=definite,indirect,possible",
            "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99",
            "--track-origins=no", "--num-callers=30", f"--log-file={logfile}"]
    return argv


def sanitizer_build(path):
    """True when the binary carries the ASan/UBSan runtime hooks."""
    with open(path, "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"__ubsan_handle" in data


def start_under_valgrind(h, name, config, data_dir, drain):
    port = mgtest.free_port()
    vlog = h.path(f"{name}.valgrind.log")
    argv = valgrind_argv(vlog) + [os.path.abspath(mgtest.MOONGATE_BIN), "run", config, "--listen", f"127.0.0.1:{port}",
                                  "--data-dir", data_dir, "--log-level", "info", "--drain-timeout", drain]
    pr = h.start(name, argv)
    pr.base = f"http://127.0.0.1:{port}"
    pr.vlog = vlog

    def ready():
        if not pr.alive():
            raise RuntimeError(f"{name} exited with {pr.p.poll()} before ready:\n{pr.tail(40)}")
        try:
            return mgtest.http_get(pr.base + "/-/ready", timeout=5)[0] == 200
        except OSError:
            return False
    end = time.monotonic() + SLOW
    while not ready():
        if time.monotonic() > end:
            raise mgtest.Deadline(f"{name} not ready after {SLOW}s:\n{pr.tail(40)}")
        time.sleep(0.2)
    return pr


def count_events(pr, event):
    return len(mgtest.log_events(pr.stderr(), event))


def scrapes(fake, n, name):
    """Wait until the fake target served n more scrapes (about n seconds)."""
    want = fake.requests + n
    wait_for(f"{name}: {n} more scrapes", lambda: fake.requests >= want, SLOW)


def received_values(rx):
    pts = [p for v in rx.find("good_requests_total", job="fake").values() for p in v]
    return {int(v) for _, v in pts}


def outage(c, name, rx, fake, pol):
    """503 for at least 5 scrapes, then heal: every value the fake target
    served during the outage arrives (retried, read back from the WAL)."""
    first = fake.requests + 1
    pol.start()
    scrapes(fake, 5, name)
    wait_for(f"{name}: 3 refused writes", lambda: pol.refused >= 3, SLOW)
    last = fake.requests
    pol.stop()
    want = set(range(first, last + 1))
    got = mgtest.poll_until(lambda: want <= received_values(rx), SLOW)
    c.check(f"{name}: outage refused {pol.refused} writes; the {len(want)} scrapes made during it arrived after",
            bool(got), f"missing {sorted(want - received_values(rx))[:10]}" if not got else "")


def reload(c, name, pr, rx, fake):
    before = count_events(pr, "reloaded")
    pr.signal(signal.SIGHUP)
    wait_for(f"{name}: reloaded", lambda: count_events(pr, "reloaded") > before, SLOW)
    n = fake.requests
    scrapes(fake, 3, name)
    got = mgtest.poll_until(lambda: max(received_values(rx), default=0) > n, SLOW)
    c.check(f"{name}: SIGHUP reloaded the configuration and scraping went on", bool(got))


def own_pages(c, name, pr):
    """The HTTP server's pages, served under memcheck too."""
    st_m, _, body = mgtest.http_get(pr.base + "/metrics", timeout=SLOW)
    st_s, _, _ = mgtest.http_get(pr.base + "/", timeout=SLOW)
    st_h, _, _ = mgtest.http_get(pr.base + "/-/healthy", timeout=SLOW)
    c.check(f"{name}: /metrics, / and /-/healthy answer 200", (st_m, st_s, st_h) == (200, 200, 200)
            and b"moongate_" in body, f"{st_m} {st_s} {st_h}")


def check_valgrind(c, name, pr, rc):
    """Exit code and the memcheck summary of one run."""
    try:
        with open(pr.vlog, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        c.check(f"{name}: valgrind log written", False, str(e))
        return
    errors = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    definite = re.search(r"definitely lost: ([\d,]+) bytes", text)
    indirect = re.search(r"indirectly lost: ([\d,]+) bytes", text)
    possible = re.search(r"possibly lost: ([\d,]+) bytes", text)
    no_leaks = "All heap blocks were freed -- no leaks are possible" in text
    suppressed = re.search(r"ERROR SUMMARY: \d+ errors from \d+ contexts \(suppressed: (\d+) from (\d+)\)", text)
    ok = c.check(f"{name}: exit code 0 under valgrind (99 = memcheck errors)", rc == 0, f"rc={rc}")
    ok &= c.check(f"{name}: ERROR SUMMARY: 0 errors", bool(errors) and errors.group(1) == "0",
                  errors.group(0) if errors else "no summary in the log")
    if no_leaks:
        c.check(f"{name}: no leaks possible (every heap block freed)", True)
    else:
        for what, m in (("definitely", definite), ("indirectly", indirect)):
            ok &= c.check(f"{name}: {what} lost: 0 bytes", bool(m) and m.group(1) == "0",
                          m.group(0) if m else "no leak summary in the log")
    log(f"{name}: possibly lost: {possible.group(1) if possible else 0} bytes (reported, not an error); "
        f"suppressed: {suppressed.group(1) if suppressed else 0} errors from "
        f"{suppressed.group(2) if suppressed else 0} contexts")
    if not ok:
        log(f"--- {name}: valgrind log (last 120 lines) ---")
        log("\n".join(text.splitlines()[-120:]))
        log(f"--- {name}: moongate log (last 30 lines) ---\n{pr.tail(30)}")


def yml_config(h, node, fake, rx):
    return h.write("moongate.yml", f"""# moongate valgrind test (generated)
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  external_labels:
    env: valgrind
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["{node}"]
    relabel_configs:
      - source_labels: [__address__]
        regex: "(.*):(\\\\d+)"
        target_label: host
        replacement: "$1"
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: "go_gc_.*"
        action: drop
      - regex: "fstype"
        action: labeldrop
  - job_name: fake
    static_configs:
      - targets: ["{fake}"]
        labels:
          team: core
remote_write:
  - url: {rx.write_url}
    name: rx
    queue_config:
      batch_send_deadline: 500ms
      min_backoff: 100ms
      max_backoff: 1s
    write_relabel_configs:
      - source_labels: [__name__]
        regex: "node_scrape_collector_.*"
        action: drop
""")


def lua_config(h, node, fake, rx, dump):
    return h.write("moongate.lua", f"""-- moongate valgrind test (generated)
local mg = require "moongate"
mg.global{{ scrape_interval = "1s", scrape_timeout = "900ms", external_labels = {{ env = "valgrind" }} }}
local rx = mg.remote_write{{ name = "rx", url = "{rx.write_url}",
  queue = {{ batch_send_deadline = "500ms", min_backoff = "100ms", max_backoff = "1s" }} }}
local dump = mg.file{{ name = "dump", path = "{dump}" }}
mg.scrape{{ job = "node", targets = {{ "{node}" }},
  relabel_configs = {{
    {{ source_labels = {{ "__address__" }}, regex = "(.*):(\\\\d+)", target_label = "host", replacement = "$1" }},
  }},
  metric_relabel_configs = {{
    {{ source_labels = {{ "__name__" }}, regex = "go_gc_.*", action = "drop" }},
    {{ regex = "fstype", action = "labeldrop" }},
  }} }}
mg.scrape{{ job = "fake", targets = {{ "{fake}" }} }}

local noisy = {{ "device_id", "container_id" }}
function mg.relabel(s)
  if s.name:match("^node_cpu_guest") then return false end
  local changed = false
  for _, l in ipairs(noisy) do
    if s.labels[l] then s.labels[l] = nil; changed = true end
  end
  if s.labels.job == "fake" then s.labels.team = "core"; changed = true end
  if changed then return s.labels end
end

function mg.route(s)
  if s.name == "good_requests_total" then return {{ rx, dump }} end
  if s.name:match("^process_") then return dump end
  return rx
end
""")


def run_yml(c, h, node, fake, rx, pol, data_dir):
    name = "yml"
    conf = yml_config(h, node, fake.addr, rx)
    pr = start_under_valgrind(h, "moongate-yml", conf, data_dir, "1s")
    wait_for("yml: node samples at the receiver", lambda: rx.find("up", job="node"), SLOW)
    wait_for("yml: fake samples at the receiver", lambda: rx.find("good_requests_total", job="fake"), SLOW)
    c.check("yml: both jobs delivered", True)
    scrapes(fake, 6, name)
    own_pages(c, name, pr)
    reload(c, name, pr, rx, fake)
    outage(c, name, rx, fake, pol)
    scrapes(fake, 2, name)
    # A second outage ends the run: the batches still refused at SIGTERM
    # stay in the WAL for run 2 (drain_persisted).
    pol.start()
    wait_for("yml: refused writes before SIGTERM", lambda: pol.refused >= 2, SLOW)
    rc, secs = pr.stop(timeout=SLOW)
    pol.stop()
    c.check("yml: queued batches persisted at shutdown", count_events(pr, "drain_persisted") >= 1,
            f"exit after {secs:.1f}s")
    check_valgrind(c, name, pr, rc)


def run_lua(c, h, node, fake, rx, pol, data_dir):
    name = "lua"
    dump = h.path("dump.prom")
    conf = lua_config(h, node, fake.addr, rx, dump)
    t_start = mgtest.now_ms()
    pr = start_under_valgrind(h, "moongate-lua", conf, data_dir, "20s")
    opened = [e for e in mgtest.log_events(pr.stderr(), "buffer_open") if e.get("destination") == "rx"]
    recovered = int(opened[0].get("recovered_samples", "0")) if opened else 0
    c.check("lua: the WAL left by run 1 is recovered at start-up", recovered > 0,
            f"recovered_samples={recovered}")

    def replayed():
        pts = [p for v in rx.find("good_requests_total", job="fake", team="core").values() for p in v]
        return any(t < t_start for t, _ in pts) and any(t >= t_start for t, _ in pts)
    wait_for("lua: run 1's buffered samples and run 2's own delivered", replayed, SLOW)
    c.check("lua: replayed and new samples delivered", True)
    scrapes(fake, 6, name)
    own_pages(c, name, pr)
    reload(c, name, pr, rx, fake)
    outage(c, name, rx, fake, pol)
    scrapes(fake, 2, name)
    rc, secs = pr.stop(timeout=SLOW)
    c.check("lua: drained and stopped on SIGTERM", count_events(pr, "drain_persisted") == 0, f"{secs:.1f}s")
    check_valgrind(c, name, pr, rc)
    with open(dump, encoding="utf-8", errors="replace") as f:
        text = f.read()
    c.check("lua: hooks ran (team label added, process_* routed to the file)",
            'team="core"' in text and "process_" in text)


def main():
    if not VALGRIND:
        print("skipped: valgrind not installed")
        return
    why = mgtest.moongate_usable()
    if why:
        print(f"skipped: {why}")
        return
    if sanitizer_build(mgtest.MOONGATE_BIN):
        print(f"skipped: {mgtest.MOONGATE_BIN} is a sanitizer build (valgrind needs a plain one)")
        return
    c = mgtest.Checks()
    t0 = time.monotonic()
    with mgtest.Harness("valgrind") as h:
        pol = Outage()
        rx = h.add_server(mgtest.FakeReceiver(policy=pol))
        fake = h.add_server(mgtest.FakeTarget("good"))
        if os.access(mgtest.NODE_EXPORTER_BIN, os.X_OK):
            node = mgtest.start_node_exporter(h).addr
        else:
            log(f"note: {mgtest.NODE_EXPORTER_BIN} missing, a FakeTarget stands in for node_exporter")
            node = h.add_server(mgtest.FakeTarget("good")).addr
        data_dir = h.path("data")
        os.makedirs(data_dir)
        for name, fn in (("yml", run_yml), ("lua", run_lua)):
            try:
                fn(c, h, node, fake, rx, pol, data_dir)
            except Exception as e:  # noqa: BLE001 - one run must not hide the next
                c.crashed(name, e)
                h.dump_logs(40)
        c.check("receiver saw only well-formed remote-write requests", rx.nviolations == 0,
                "; ".join(rx.violations[:3]))
    log(f"wall time {time.monotonic() - t0:.1f}s")
    c.finish()


if __name__ == "__main__":
    main()
