"""mgtest: shared pieces of moongate's end-to-end tests (stdlib only).

Owns: free ports, child processes with captured logs, HTTP polling, the
Prometheus / VictoriaMetrics query helpers, a Prometheus text-format parser,
a remote-write 1.0 decoder (snappy + protobuf) and a fake receiver.
Must not: touch anything but 127.0.0.1, sleep as an assertion, or leave a
process or temp dir behind (Harness stops and removes them, also on failure).
"""

import hashlib
import http.server
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("MG_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BUILD_DIR = os.environ.get("MG_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
MOONGATE_BIN = os.environ.get("MOONGATE_BIN") or os.path.join(BUILD_DIR, "moongate")

PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")
NODE_EXPORTER_BIN = os.environ.get("NODE_EXPORTER_BIN", "/usr/bin/prometheus-node-exporter")
VICTORIA_BIN = os.environ.get("VICTORIA_BIN", "/usr/bin/victoria-metrics")

# Prometheus' staleness marker: a NaN with this exact bit pattern.
STALE_NAN_BITS = 0x7FF0000000000002


def is_stale_nan(v):
    return struct.unpack("<Q", struct.pack("<d", v))[0] == STALE_NAN_BITS


def now_ms():
    return int(time.time() * 1000)


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------- results

class Checks:
    """Counts named checks; prints `ok`/`FAIL` per check and the closing
    `N passed, M failed` line the test runners read."""

    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failures = []

    def check(self, name, cond, detail=""):
        if cond:
            self.passed += 1
            log(f"ok   - {name}" + (f" ({detail})" if detail else ""))
        else:
            self.failed += 1
            self.failures.append(name)
            log(f"FAIL - {name}" + (f": {detail}" if detail else ""))
        return bool(cond)

    def crashed(self, name, exc):
        """A sub-test died with an exception: one failure, with the trace."""
        self.failed += 1
        self.failures.append(name)
        log(f"FAIL - {name}: aborted by {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stdout)

    def finish(self):
        if self.failures:
            log("failed checks: " + "; ".join(self.failures))
        log(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed else 0)


class Deadline(Exception):
    pass


def wait_for(what, fn, timeout, interval=0.2):
    """Poll fn() until it returns a truthy value; return it. Raise Deadline
    (with the last value/exception) after timeout seconds."""
    end = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last = v
        except Exception as e:  # noqa: BLE001 - the peer may not be up yet
            last = e
        if time.monotonic() >= end:
            raise Deadline(f"timed out after {timeout}s waiting for {what}; last={last!r:.300}")
        time.sleep(interval)


def poll_until(fn, timeout, interval=0.2):
    """Like wait_for but returns the last value instead of raising."""
    end = time.monotonic() + timeout
    v = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception:  # noqa: BLE001
            v = None
        if time.monotonic() >= end:
            return v
        time.sleep(interval)


# ---------------------------------------------------------------- network

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def http_request(url, data=None, method=None, headers=None, timeout=10):
    """Return (status, headers, body bytes); HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers or {}), e.read()


def http_get(url, timeout=10):
    return http_request(url, timeout=timeout)


def wait_http(url, timeout=30, status=200):
    def ok():
        st, _, _ = http_get(url, timeout=2)
        return st == status
    wait_for(f"GET {url} -> {status}", ok, timeout)


# ---------------------------------------------------------------- processes

class Proc:
    """A child process whose stdout/stderr go to files in the harness dir."""

    def __init__(self, name, argv, workdir, env=None):
        self.name = name
        self.argv = argv
        self.out_path = os.path.join(workdir, f"{name}.stdout")
        self.err_path = os.path.join(workdir, f"{name}.stderr")
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out,
                                  stderr=self._err, env=full_env, cwd=workdir)
        self.pid = self.p.pid
        self.returncode = None

    def alive(self):
        return self.p.poll() is None

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stdout(self):
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def signal(self, sig):
        if self.alive():
            self.p.send_signal(sig)

    def wait(self, timeout):
        """Return the exit code, or None if still running after timeout."""
        try:
            self.returncode = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL after timeout. Returns (exit code, seconds)."""
        t0 = time.monotonic()
        if self.alive():
            self.p.terminate()
            if self.wait(timeout) is None:
                self.p.kill()
                self.wait(10)
        self.returncode = self.p.poll()
        self._out.close()
        self._err.close()
        return self.returncode, time.monotonic() - t0

    def tail(self, n=25):
        lines = (self.stdout() + self.stderr()).splitlines()
        return "\n".join(lines[-n:])


class Harness:
    """Temp dir plus every process and server started by a test; closing it
    stops them all (by handle, never by name) and removes the dir."""

    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="mg-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name) + "-")
        self.procs = []
        self.servers = []

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        self.close(dump=et is not None)
        return False

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def write(self, name, text):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def start(self, name, argv, env=None):
        pr = Proc(name, argv, self.dir, env)
        self.procs.append(pr)
        return pr

    def add_server(self, srv):
        self.servers.append(srv)
        return srv

    def dump_logs(self, n=25):
        for pr in self.procs:
            log(f"--- last lines of {pr.name} (pid {pr.pid}, rc {pr.p.poll()}) ---")
            log(pr.tail(n))

    def close(self, dump=False):
        if dump:
            self.dump_logs()
        for srv in reversed(self.servers):
            try:
                srv.stop()
            except Exception as e:  # noqa: BLE001
                log(f"warning: stopping {srv!r}: {e}")
        for pr in reversed(self.procs):
            if pr.alive():
                pr.stop()
            else:
                pr.stop(0)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- peers

def start_node_exporter(h, name="node_exporter"):
    port = free_port()
    # Slow or host-dependent collectors are off: they add nothing to the test.
    argv = [NODE_EXPORTER_BIN, f"--web.listen-address=127.0.0.1:{port}",
            "--no-collector.hwmon", "--no-collector.thermal_zone", "--no-collector.rapl",
            "--no-collector.mdadm", "--no-collector.nfs", "--no-collector.nfsd",
            "--no-collector.zfs", "--no-collector.btrfs", "--no-collector.xfs",
            "--no-collector.infiniband", "--no-collector.fibrechannel", "--no-collector.tapestats",
            "--no-collector.bcache", "--no-collector.nvme", "--no-collector.powersupplyclass"]
    pr = h.start(name, argv)
    pr.addr = f"127.0.0.1:{port}"
    pr.url = f"http://{pr.addr}/metrics"
    wait_http(pr.url, 20)
    return pr


def start_prometheus_receiver(h, name="prom_receiver", port=None):
    """Prometheus 2.42 as a remote-write receiver with an empty config."""
    port = port or free_port()
    conf = h.write(f"{name}.yml", "# empty: receiver only\n")
    data = h.path(f"{name}-data")
    os.makedirs(data)
    pr = h.start(name, [PROMETHEUS_BIN, "--web.enable-remote-write-receiver",
                        f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{port}",
                        f"--config.file={conf}", "--log.level=warn"])
    pr.base = f"http://127.0.0.1:{port}"
    pr.write_url = pr.base + "/api/v1/write"
    pr.api = PromAPI(pr.base)
    wait_http(pr.base + "/-/ready", 60)
    return pr


def start_victoria(h, name="victoria", port=None):
    port = port or free_port()
    data = h.path(f"{name}-data")
    os.makedirs(data)
    pr = h.start(name, [VICTORIA_BIN, f"-httpListenAddr=127.0.0.1:{port}",
                        f"-storageDataPath={data}", "-retentionPeriod=1d",
                        "-search.latencyOffset=0s", "-search.disableCache",
                        "-loggerLevel=WARN"])
    pr.base = f"http://127.0.0.1:{port}"
    pr.write_url = pr.base + "/api/v1/write"
    pr.api = VictoriaAPI(pr.base)
    wait_http(pr.base + "/health", 60)
    return pr


def start_moongate(h, config_path, name="moongate", extra=None, ready=True):
    """moongate run CONFIG with its own listen port and data dir."""
    port = free_port()
    data = h.path(f"{name}-data")
    os.makedirs(data, exist_ok=True)
    argv = [MOONGATE_BIN, "run", config_path, "--listen", f"127.0.0.1:{port}",
            "--data-dir", data, "--log-level", "info"] + (extra or [])
    pr = h.start(name, argv)
    pr.base = f"http://127.0.0.1:{port}"
    if ready:
        try:
            wait_http(pr.base + "/-/ready", 30)
        except Deadline:
            if not pr.alive():
                raise RuntimeError(f"moongate exited with {pr.p.poll()} before ready:\n{pr.tail()}")
            raise
    return pr


def start_reference_prometheus(h, yml_path, name="prom_gateway"):
    """Prometheus as the scrape -> remote_write gateway: the reference that
    validates this harness (MG_REFERENCE=prometheus)."""
    port = free_port()
    data = h.path(f"{name}-data")
    os.makedirs(data)
    pr = h.start(name, [PROMETHEUS_BIN, f"--storage.tsdb.path={data}",
                        f"--web.listen-address=127.0.0.1:{port}", f"--config.file={yml_path}",
                        "--log.level=warn"])
    pr.base = f"http://127.0.0.1:{port}"
    wait_http(pr.base + "/-/ready", 60)
    return pr


def stop_gateway(c, name, gw, timeout=15):
    """SIGTERM the gateway; check it exits 0 within timeout; show its last
    log lines when it does not (sanitizer reports land there)."""
    rc, secs = gw.stop(timeout=timeout)
    ok = c.check(name, rc == 0 and secs < timeout, f"rc={rc} after {secs:.1f}s")
    if not ok:
        log(f"--- last lines of {gw.name} (rc={rc}) ---\n{gw.tail(60)}")
    return rc


def reference_mode():
    return os.environ.get("MG_REFERENCE", "") == "prometheus"


def moongate_usable():
    """None if the binary exists and answers --version, else the reason."""
    if not os.path.exists(MOONGATE_BIN):
        return f"{MOONGATE_BIN} does not exist (build it first)"
    if not os.access(MOONGATE_BIN, os.X_OK):
        return f"{MOONGATE_BIN} is not executable"
    return None


# ---------------------------------------------------------------- query APIs

def series_key(labels):
    """A hashable, order-free identity for a label set (incl. __name__)."""
    return tuple(sorted(labels.items()))


def key_str(key):
    d = dict(key)
    name = d.pop("__name__", "")
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(d.items())) + "}"


def _get_json(url, timeout=15):
    st, _, body = http_get(url, timeout=timeout)
    if st != 200:
        raise RuntimeError(f"GET {url} -> {st}: {body[:300]!r}")
    return json.loads(body)


class PromAPI:
    """Prometheus HTTP API (also works for VictoriaMetrics' compatible parts)."""

    def __init__(self, base):
        self.base = base

    def _api(self, path, params):
        q = urllib.parse.urlencode(params, doseq=True)
        doc = _get_json(f"{self.base}{path}?{q}")
        if doc.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {doc}")
        return doc["data"]

    def query(self, expr, t=None):
        """Instant query; returns the result list (vector or matrix)."""
        p = {"query": expr}
        if t is not None:
            p["time"] = f"{t:.3f}"
        return self._api("/api/v1/query", p)["result"]

    def query_range(self, expr, start, end, step):
        return self._api("/api/v1/query_range",
                         {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step})["result"]

    def series(self, match, start=None, end=None):
        p = {"match[]": match}
        if start is not None:
            p["start"] = f"{start:.3f}"
        if end is not None:
            p["end"] = f"{end:.3f}"
        return self._api("/api/v1/series", p)

    def raw_samples(self, selector, start_ms, end_ms):
        """{series_key: [(ts_ms, value), ...]} of stored samples with
        start_ms <= ts <= end_ms (a range selector evaluated at end)."""
        window = max(1, end_ms - start_ms + 1)
        res = self.query(f"{selector}[{window}ms]", end_ms / 1000.0)
        out = {}
        for s in res:
            pts = [(int(round(float(t) * 1000)), float(v)) for t, v in s.get("values", [])]
            pts = [p for p in pts if start_ms <= p[0] <= end_ms]
            if pts:
                out[series_key(s["metric"])] = pts
        return out

    def instant_values(self, expr, t=None):
        """{series_key: value} of an instant vector query."""
        return {series_key(s["metric"]): float(s["value"][1]) for s in self.query(expr, t)}


class VictoriaAPI(PromAPI):
    """VictoriaMetrics single-node: Prometheus-compatible queries plus the
    raw /api/v1/export, which shows exactly what was stored."""

    def flush(self):
        st, _, body = http_get(self.base + "/internal/force_flush")
        if st != 200:
            raise RuntimeError(f"force_flush -> {st} {body[:200]!r}")

    def export(self, selector, start_ms, end_ms):
        """{series_key: [(ts_ms, value), ...]} straight from storage (stale
        markers, if stored, show up as NaN values)."""
        self.flush()  # make just-ingested rows searchable now
        q = urllib.parse.urlencode({"match[]": selector, "start": f"{start_ms / 1000:.3f}",
                                    "end": f"{end_ms / 1000:.3f}"})
        st, _, body = http_get(f"{self.base}/api/v1/export?{q}", timeout=30)
        if st != 200:
            raise RuntimeError(f"export -> {st} {body[:300]!r}")
        out = {}
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            doc = json.loads(line)
            vals = [float(v) if v is not None else math.nan for v in doc["values"]]
            pts = [(int(t), v) for t, v in zip(doc["timestamps"], vals) if start_ms <= int(t) <= end_ms]
            if pts:
                k = series_key(doc["metric"])
                out.setdefault(k, []).extend(pts)
        for v in out.values():
            v.sort()
        return out

    def raw_samples(self, selector, start_ms, end_ms):
        return self.export(selector, start_ms, end_ms)


# ---------------------------------------------------------------- text format

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LNAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class ParseError(Exception):
    pass


def _parse_value(s):
    low = s.lower()
    if low in ("nan",):
        return math.nan
    if low in ("+inf", "inf"):
        return math.inf
    if low == "-inf":
        return -math.inf
    return float(s)


def parse_exposition(text):
    """Parse Prometheus text format 0.0.4. Returns a list of
    (labels dict incl. __name__, value, timestamp_ms or None).
    Empty label values are kept here (callers decide, see expected_labels)."""
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        m = _NAME_RE.match(line)
        if not m:
            raise ParseError(f"line {lineno}: no metric name: {line[:80]!r}")
        labels = {"__name__": m.group(0)}
        i = m.end()
        if i < len(line) and line[i] == "{":
            i += 1
            while True:
                while i < len(line) and line[i] in " \t":
                    i += 1
                if i < len(line) and line[i] == "}":
                    i += 1
                    break
                lm = _LNAME_RE.match(line, i)
                if not lm:
                    raise ParseError(f"line {lineno}: bad label name at {i}")
                i = lm.end()
                if line[i:i + 2] != '="':
                    raise ParseError(f"line {lineno}: expected =\" at {i}")
                i += 2
                val = []
                while True:
                    if i >= len(line):
                        raise ParseError(f"line {lineno}: unterminated label value")
                    c = line[i]
                    if c == "\\":
                        n = line[i + 1:i + 2]
                        val.append({"n": "\n", "\\": "\\", '"': '"'}.get(n, "\\" + n))
                        i += 2
                    elif c == '"':
                        i += 1
                        break
                    else:
                        val.append(c)
                        i += 1
                labels[lm.group(0)] = "".join(val)
                while i < len(line) and line[i] in " \t":
                    i += 1
                if i < len(line) and line[i] == ",":
                    i += 1
        rest = line[i:].split()
        if not rest or len(rest) > 2:
            raise ParseError(f"line {lineno}: expected value [timestamp]: {line[:80]!r}")
        value = _parse_value(rest[0])
        ts = int(rest[1]) if len(rest) == 2 else None
        out.append((labels, value, ts))
    return out


def scrape_direct(url, timeout=10):
    """Fetch and parse an exposition; returns (t_start_ms, t_end_ms, samples)."""
    t0 = now_ms()
    st, _, body = http_get(url, timeout=timeout)
    t1 = now_ms()
    if st != 200:
        raise RuntimeError(f"GET {url} -> {st}")
    return t0, t1, parse_exposition(body.decode("utf-8"))


def expected_labels(labels, job, instance, external=None):
    """The label set a Prometheus-compatible scraper stores for a scraped
    series: target labels added (job, instance, external labels where the
    series has none of its own), empty values removed."""
    out = {k: v for k, v in labels.items() if v != ""}
    out.setdefault("job", job)
    out.setdefault("instance", instance)
    for k, v in (external or {}).items():
        out.setdefault(k, v)
    return out


def same_value(a, b, rel_tol=0.0):
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if rel_tol:
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)
    return a == b


def parse_metrics_text(text):
    """{series_key: value} of moongate's own /metrics (strict parse)."""
    return {series_key(l): v for l, v, _ in parse_exposition(text)}


def metric_sum(metrics, name, **match):
    """Sum of samples named `name` whose labels include `match`; None if none."""
    tot = None
    for k, v in metrics.items():
        d = dict(k)
        if d.get("__name__") != name:
            continue
        if all(d.get(a) == b for a, b in match.items()):
            tot = (tot or 0.0) + v
    return tot


def fetch_own_metrics(base):
    st, _, body = http_get(base + "/metrics")
    if st != 200:
        raise RuntimeError(f"{base}/metrics -> {st}")
    return parse_metrics_text(body.decode("utf-8"))


# ---------------------------------------------------------------- remote write decoding

def snappy_decompress_py(data):
    """Snappy block format decoder (format_description.txt), for hosts
    without python3-snappy; cross-checked against it in self_test()."""
    pos, n, shift = 0, 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("snappy: truncated length")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 35:
            raise ValueError("snappy: length varint too long")
    out = bytearray()
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:
            ln = tag >> 2
            if ln >= 60:
                nb = ln - 59
                ln = int.from_bytes(data[pos:pos + nb], "little")
                pos += nb
            ln += 1
            if pos + ln > len(data):
                raise ValueError("snappy: literal past end")
            out += data[pos:pos + ln]
            pos += ln
            continue
        if kind == 1:
            ln = ((tag >> 2) & 7) + 4
            off = ((tag >> 5) << 8) | data[pos]
            pos += 1
        elif kind == 2:
            ln = (tag >> 2) + 1
            off = int.from_bytes(data[pos:pos + 2], "little")
            pos += 2
        else:
            ln = (tag >> 2) + 1
            off = int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        if off == 0 or off > len(out):
            raise ValueError("snappy: bad copy offset")
        start = len(out) - off
        if off >= ln:
            out += out[start:start + ln]
        else:
            for j in range(ln):
                out.append(out[start + j])
    if len(out) != n:
        raise ValueError(f"snappy: length {len(out)} != header {n}")
    return bytes(out)


try:
    import snappy as _snappy  # python3-snappy (Debian), optional

    def snappy_decompress(data):
        return _snappy.uncompress(data)
except ImportError:  # e.g. a python3 without Debian's dist-packages
    _snappy = None
    snappy_decompress = snappy_decompress_py


def _varint(buf, pos):
    r, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("protobuf: truncated varint")
        b = buf[pos]
        pos += 1
        r |= (b & 0x7F) << shift
        if b < 0x80:
            return r, pos
        shift += 7
        if shift > 63:
            raise ValueError("protobuf: varint too long")


def pb_fields(buf):
    """Yield (field number, wire type, value) of one protobuf message;
    value is int for varint/fixed, bytes for length-delimited."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        fno, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 1:
            if pos + 8 > len(buf):
                raise ValueError("protobuf: truncated fixed64")
            v = buf[pos:pos + 8]
            pos += 8
        elif wt == 2:
            ln, pos = _varint(buf, pos)
            if pos + ln > len(buf):
                raise ValueError("protobuf: truncated bytes")
            v = buf[pos:pos + ln]
            pos += ln
        elif wt == 5:
            v = buf[pos:pos + 4]
            pos += 4
        else:
            raise ValueError(f"protobuf: wire type {wt}")
        yield fno, wt, v


def _to_int64(u):
    return u - (1 << 64) if u >= (1 << 63) else u


def decode_write_request(raw):
    """prometheus.WriteRequest -> {"timeseries": [{"labels": [(n, v)...],
    "samples": [(value, ts_ms)...]}], "metadata": [dict]}. Labels keep wire
    order so callers can check sorting."""
    req = {"timeseries": [], "metadata": []}
    for fno, wt, v in pb_fields(raw):
        if fno == 1 and wt == 2:
            ts = {"labels": [], "samples": []}
            for f2, w2, v2 in pb_fields(v):
                if f2 == 1 and w2 == 2:
                    name = value = ""
                    for f3, w3, v3 in pb_fields(v2):
                        if f3 == 1 and w3 == 2:
                            name = v3.decode("utf-8")
                        elif f3 == 2 and w3 == 2:
                            value = v3.decode("utf-8")
                    ts["labels"].append((name, value))
                elif f2 == 2 and w2 == 2:
                    val, t = 0.0, 0
                    for f3, w3, v3 in pb_fields(v2):
                        if f3 == 1 and w3 == 1:
                            val = struct.unpack("<d", v3)[0]
                        elif f3 == 2 and w3 == 0:
                            t = _to_int64(v3)
                    ts["samples"].append((val, t))
            req["timeseries"].append(ts)
        elif fno == 3 and wt == 2:
            md = {}
            for f2, w2, v2 in pb_fields(v):
                if f2 == 1 and w2 == 0:
                    md["type"] = v2
                elif f2 == 2 and w2 == 2:
                    md["family"] = v2.decode()
                elif f2 == 4 and w2 == 2:
                    md["help"] = v2.decode()
                elif f2 == 5 and w2 == 2:
                    md["unit"] = v2.decode()
            req["metadata"].append(md)
    return req


def _pb_key(fno, wt):
    return _pb_varint((fno << 3) | wt)


def _pb_varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb_bytes(fno, b):
    return _pb_key(fno, 2) + _pb_varint(len(b)) + b


def encode_write_request(series):
    """[(labels dict, [(value, ts_ms)])] -> WriteRequest bytes (tests only)."""
    out = b""
    for labels, samples in series:
        ts = b""
        for n, v in sorted(labels.items()):
            ts += _pb_bytes(1, _pb_bytes(1, n.encode()) + _pb_bytes(2, v.encode()))
        for val, t in samples:
            ts += _pb_bytes(2, _pb_key(1, 1) + struct.pack("<d", val) + _pb_key(2, 0) + _pb_varint(t))
        out += _pb_bytes(1, ts)
    return out


# ---------------------------------------------------------------- fake receiver

class FakeReceiver:
    """A remote-write 1.0 endpoint on loopback that decodes every request,
    records wire-format violations, and keeps all samples by series."""

    def __init__(self, ua_prefix="moongate/", policy=None, delay=0.0):
        """policy(n, body) -> None (answer 204) or (code, headers, body) for
        the n-th request (1-based); samples are kept only for 2xx answers.
        self.answers lists (n, code, sha256 of the body, monotonic time).
        delay: seconds each request takes before it is handled (requests
        are served in parallel, so a sender gains by sending in parallel)."""
        self.ua_prefix = ua_prefix
        self.policy = policy
        self.delay = delay
        self.answers = []
        self.lock = threading.Lock()
        self.samples = {}       # series_key -> [(ts_ms, value)]
        self.requests = 0
        self.connections = 0    # TCP connections accepted
        self.violations = []    # first few wire-format problems
        self.nviolations = 0
        self.headers_seen = None
        recv = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with recv.lock:
                    recv.connections += 1

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if recv.delay:
                    time.sleep(recv.delay)
                code, hdrs, rbody = recv._handle(self.path, dict(self.headers), body)
                self.send_response(code)
                for k, v in hdrs.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(rbody)))
                self.end_headers()
                self.wfile.write(rbody)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.write_url = f"http://127.0.0.1:{self.port}/api/v1/write"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _violation(self, msg):
        self.nviolations += 1
        if len(self.violations) < 10:
            self.violations.append(msg)

    def _handle(self, path, headers, body):
        h = {k.lower(): v for k, v in headers.items()}
        with self.lock:
            self.requests += 1
            self.headers_seen = h
            answer = self.policy(self.requests, body) if self.policy else None
            code, rhdrs, rbody = answer or (204, {}, b"")
            self.answers.append((self.requests, code, hashlib.sha256(body).hexdigest(), time.monotonic()))
            if path != "/api/v1/write":
                self._violation(f"path {path}")
            want = {"content-encoding": "snappy", "content-type": "application/x-protobuf",
                    "x-prometheus-remote-write-version": "0.1.0"}
            for k, v in want.items():
                if h.get(k) != v:
                    self._violation(f"header {k}: {h.get(k)!r} != {v!r}")
            if not h.get("user-agent", "").startswith(self.ua_prefix):
                self._violation(f"user-agent {h.get('user-agent')!r}")
            try:
                req = decode_write_request(snappy_decompress(body))
            except Exception as e:  # noqa: BLE001
                self._violation(f"undecodable body ({len(body)} bytes): {e}")
                return 400, {}, b"undecodable"
            if not 200 <= code < 300:
                return code, rhdrs, rbody
            now = now_ms()
            for ts in req["timeseries"]:
                names = [n for n, _ in ts["labels"]]
                if names != sorted(names) or len(set(names)) != len(names):
                    self._violation(f"labels not sorted/unique: {names}")
                if "__name__" not in names:
                    self._violation(f"series without __name__: {ts['labels']}")
                if any(v == "" for _, v in ts["labels"]):
                    self._violation(f"empty label value: {ts['labels']}")
                if not ts["samples"]:
                    self._violation(f"series without samples: {ts['labels']}")
                key = tuple(sorted(ts["labels"]))
                lst = self.samples.setdefault(key, [])
                for v, t in ts["samples"]:
                    if abs(t - now) > 300_000:
                        self._violation(f"timestamp {t} is {t - now} ms from now")
                    lst.append((t, v))
        return code, rhdrs, rbody

    def find(self, name, **labels):
        """{series_key: [(ts, v)]} of series with this name and labels."""
        out = {}
        with self.lock:
            for k, pts in self.samples.items():
                d = dict(k)
                if d.get("__name__") == name and all(d.get(a) == b for a, b in labels.items()):
                    out[k] = sorted(pts)
        return out

    def find_instance(self, instance):
        """{series_key: [(ts, v)]} of every series with this instance label."""
        with self.lock:
            return {k: sorted(p) for k, p in self.samples.items() if dict(k).get("instance") == instance}

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- fake targets

_BIG_BODY = None


def big_body(nbytes):
    """A valid exposition of at least nbytes, unique series (cached)."""
    global _BIG_BODY
    if _BIG_BODY is None or len(_BIG_BODY) < nbytes:
        line_len = len('big_metric{i="00000000"} 1\n')
        n = nbytes // line_len + 1
        step = 100_000
        _BIG_BODY = b"".join(
            "".join([f'big_metric{{i="{i:08d}"}} 1\n' for i in range(lo, min(n, lo + step))]).encode()
            for lo in range(0, n, step))
    return _BIG_BODY


class FakeTarget:
    """A scrape target on its own loopback port, speaking raw HTTP/1.1 so it
    can misbehave. Modes:
      good     200, a small valid exposition; good_requests_total counts requests
      garbage  200, two valid lines then `this is not { exposition` (line 3)
      big      200, a valid body of `big_bytes` bytes
      cut      200, Content-Length 100000, 1000 bytes sent, then close
      hung     reads the request, never answers (keeps the socket open)
      slowloris  200 with Content-Length 100000, then one valid body byte
               every `trickle_s` seconds (at most 2000 bytes)
      badutf8  200, a valid line then a label value with invalid UTF-8 (line 2)
      dupes    200, the series dup_metric{a="1"} twice (values n, then n+1000),
               the second time with its labels in the same order
      reordered  as dupes, but the repeat lists its labels in another order
      static   200, `body` (bytes, or a function of the request number)
    `mode` may be changed while running (a good target going bad)."""

    GARBAGE = b"good_metric 1\nanother_metric 2\nthis is not { exposition\n"
    BAD_UTF8 = b'ok_metric 1\nbad_utf8{v="caf\xc3\x28"} 2\n'

    def __init__(self, mode, big_bytes=50 * 1000 * 1000, body=None, trickle_s=0.2):
        self.mode = mode
        self.big_bytes = big_bytes
        self.body = body
        self.trickle_s = trickle_s
        self.requests = 0
        self.stopping = False
        self.conns = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        if mode == "big":
            big_body(big_bytes)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def __repr__(self):
        return f"FakeTarget({self.mode}@{self.addr})"

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_request(self, conn, buf):
        while b"\r\n\r\n" not in buf:
            d = conn.recv(65536)
            if not d:
                return None, b""
            buf += d
        head, rest = buf.split(b"\r\n\r\n", 1)
        return head, rest

    def _serve(self, conn):
        buf = b""
        try:
            conn.settimeout(120)
            while not self.stopping:
                head, buf = self._read_request(conn, buf)
                if head is None:
                    return
                with self.lock:
                    self.requests += 1
                    n = self.requests
                mode = self.mode
                if mode == "hung":
                    while not self.stopping and conn.recv(65536):
                        pass
                    return
                if mode == "good":
                    body = (f"# HELP good_requests_total Requests served.\n# TYPE good_requests_total counter\n"
                            f"good_requests_total {n}\n"
                            f'good_gauge{{kind="a"}} 1.5\ngood_gauge{{kind="b"}} -2\n').encode()
                    self._respond(conn, body)
                elif mode == "flip":
                    self._respond(conn, b'flip_metric{side="x"} 7\n')
                elif mode == "garbage":
                    self._respond(conn, self.GARBAGE)
                elif mode == "big":
                    self._respond(conn, memoryview(big_body(self.big_bytes))[:self.big_bytes])
                elif mode == "cut":
                    body = big_body(1000)[:1000]
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                                 b"Content-Length: 100000\r\n\r\n" + body)
                    return
                elif mode == "slowloris":
                    self._trickle(conn)
                    return
                elif mode == "badutf8":
                    self._respond(conn, self.BAD_UTF8)
                elif mode in ("dupes", "reordered"):
                    again = 'dup_metric{b="2",a="1"}' if mode == "reordered" else 'dup_metric{a="1",b="2"}'
                    self._respond(conn, (f'dup_metric{{a="1",b="2"}} {n}\n{again} {n + 1000}\n'
                                         f"dup_other {n}\n").encode())
                elif mode == "static":
                    self._respond(conn, self.body(n) if callable(self.body) else self.body)
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _trickle(self, conn):
        """Headers at once, then the body one byte at a time (bounded)."""
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        body = big_body(2000)
        for i in range(2000):
            if self.stopping:
                return
            conn.sendall(body[i:i + 1])
            time.sleep(self.trickle_s)  # pacing the peer, not an assertion

    def _respond(self, conn, body):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode())
        mv = memoryview(body)
        for i in range(0, len(body), 1 << 20):
            if self.stopping:
                raise OSError("stopping")
            conn.sendall(mv[i:i + (1 << 20)])

    def stop(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    c.close()
                except OSError:
                    pass


# ---------------------------------------------------------------- logs

_LOGFMT_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line):
    out = {}
    for k, v in _LOGFMT_RE.findall(line):
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = re.sub(r'\\(.)', r'\1', v[1:-1])
        out[k] = v
    return out


def log_events(text, event=None):
    """logfmt records (dicts, with '_raw') from a log text, optionally one event."""
    out = []
    for line in text.splitlines():
        d = parse_logfmt(line)
        if event is None or d.get("event") == event:
            d["_raw"] = line
            out.append(d)
    return out


# ---------------------------------------------------------------- e2e flow

SYNTHETIC = ("up", "scrape_duration_seconds", "scrape_samples_scraped",
             "scrape_samples_post_metric_relabeling", "scrape_series_added")


def lua_config(target, write_url, interval="2s", timeout="1s", job="node", dest="rx"):
    return f"""-- moongate e2e test config (generated)
local mg = require "moongate"
mg.global{{ scrape_interval = "{interval}", scrape_timeout = "{timeout}", external_labels = {{ env = "test" }} }}
local rx = mg.remote_write{{ name = "{dest}", url = "{write_url}", queue = {{ batch_send_deadline = "1s" }} }}
mg.scrape{{ job = "{job}", interval = "{interval}", timeout = "{timeout}", targets = {{ "{target}" }} }}
"""


def yml_config(target, write_url, interval="2s", timeout="1s", job="node", dest="rx"):
    return f"""# moongate e2e test config (generated)
global:
  scrape_interval: {interval}
  scrape_timeout: {timeout}
  external_labels:
    env: test
scrape_configs:
  - job_name: {job}
    scrape_interval: {interval}
    scrape_timeout: {timeout}
    static_configs:
      - targets: ["{target}"]
remote_write:
  - url: {write_url}
    name: {dest}
    queue_config:
      batch_send_deadline: 1s
"""


# Gauges that measure the scraping itself (the scrapers' connections, file
# descriptors, goroutines and heap, host-wide socket and memory figures that
# the test's own processes move while they scrape, ingest and query): a
# direct scrape sees a different value than the gateway's scrape even when
# nothing else changed, so they are left out of the value comparison (they
# still count in the series-set comparison).
OBSERVER_DEPENDENT = re.compile(
    r"process_open_fds|process_resident_memory_bytes|process_virtual_memory_bytes|"
    r"go_goroutines|go_threads|go_memstats_.*|node_sockstat_.*|node_netstat_Tcp_CurrEstab|"
    r"node_filefd_allocated|node_procs_running|node_procs_blocked|node_memory_.*")


def _split_synthetic(samples):
    real, synth = {}, {}
    for k, pts in samples.items():
        (synth if dict(k).get("__name__") in SYNTHETIC else real)[k] = pts
    return real, synth


def _fmt_keys(keys, n=8):
    keys = sorted(keys)
    s = "; ".join(key_str(k) for k in keys[:n])
    return s + (f"; ... ({len(keys)} total)" if len(keys) > n else "")


def e2e_flow(c, prefix, receiver_kind, config_kind):
    """The end-to-end acceptance flow: node_exporter -> gateway -> receiver.

    receiver_kind: "prometheus" or "victoria"; config_kind: "lua" or "yml".
    With MG_REFERENCE=prometheus the gateway is Prometheus itself (yml
    only), which validates this harness against the reference behaviour."""
    ref = reference_mode()
    interval_s = 2.0
    job, dest, ext = "node", "rx", {"env": "test"}
    with Harness(f"{prefix}") as h:
        t_begin = now_ms()
        rx = start_prometheus_receiver(h) if receiver_kind == "prometheus" else start_victoria(h)
        api = rx.api
        ne = start_node_exporter(h)
        target = ne.addr
        text = (lua_config if config_kind == "lua" else yml_config)(target, rx.write_url, job=job, dest=dest)
        cfg = h.write(f"config.{config_kind}", text)
        if ref:
            gw = start_reference_prometheus(h, cfg)
        else:
            gw = start_moongate(h, cfg)
        log(f"[{prefix}] receiver={receiver_kind} {rx.base} exporter={target} gateway={gw.base} pid={gw.pid}")

        def raw(selector, start, end=None):
            return api.raw_samples(selector, start, end if end is not None else now_ms())

        up_sel = f'up{{job="{job}"}}'

        def up_samples(since):
            pts = [p for v in raw(up_sel, since).values() for p in v]
            return sorted(pts)

        # A few scrapes land in the receiver.
        pts = wait_for("3 scrapes of node in the receiver", lambda: (lambda p: p if len(p) >= 3 else None)(up_samples(t_begin)), 40)
        c.check(f"{prefix}: receiver has >= 3 scrapes of job={job}", len(pts) >= 3, f"{len(pts)} up samples")

        # Values: A, one more gateway scrape, B, compare the window [A.start, B.start).
        interval_ms = int(interval_s * 1000)

        def value_round(rnd):
            """Direct scrape A just before the gateway's next scrape and B
            just after it, so that a value equal in A and B is the value the
            gateway read (a narrow window leaves host gauges little room to
            move and come back)."""
            for attempt in range(4):
                seen = wait_for("gateway scrapes", lambda: up_samples(t_begin), 30)
                durs = [v for v in raw(f'scrape_duration_seconds{{job="{job}"}}', seen[-1][0] - 10_000).values()]
                dur_ms = int(max([v for pts in durs for _, v in pts] + [0.05]) * 1000)
                nxt = seen[-1][0] + interval_ms
                while nxt < now_ms() + 200:
                    nxt += interval_ms
                time.sleep(max(0.0, (nxt - 120 - now_ms()) / 1000.0))  # scheduling, not an assertion
                a0, a1, A = scrape_direct(ne.url)
                time.sleep(max(0.0, (nxt + 2 * dur_ms + 80 - now_ms()) / 1000.0))
                b0, b1, B = scrape_direct(ne.url)
                # Everything of the window has been sent once a later scrape is in.
                wait_for("a gateway scrape after direct scrape B",
                         lambda: any(t > b1 for t, _ in up_samples(b0)), 30)
                inside = [t for t, _ in up_samples(a0) if t < b0]
                log(f"[{prefix}] round {rnd}.{attempt}: A at {a0}..{a1}, gateway scrape(s) at {inside}, "
                    f"B at {b0}..{b1} (predicted {nxt}, scrape takes <= {dur_ms} ms)")
                if inside:
                    break
            else:
                raise RuntimeError("no gateway scrape fell between two direct scrapes in 4 attempts")
            ea = {series_key(expected_labels(l, job, target, ext)): v for l, v, _ in A}
            eb = {series_key(expected_labels(l, job, target, ext)): v for l, v, _ in B}
            # Batches of one scrape may arrive in any order: poll (with a
            # deadline) until the window holds every series of A and B.
            need = set(ea) & set(eb)

            def window():
                r, s = _split_synthetic(raw(f'{{job="{job}"}}', a0, b0 - 1))
                return (r, s) if need <= set(r) else None
            got = poll_until(window, 10) or _split_synthetic(raw(f'{{job="{job}"}}', a0, b0 - 1))
            real, synth = got
            return a0, b0, A, B, ea, eb, real, synth

        a0, b0, A, B, ea, eb, real, synth = value_round(1)
        both, either = set(ea) & set(eb), set(ea) | set(eb)
        missing = both - set(real)
        extra = set(real) - either
        log(f"[{prefix}] direct scrape A: {len(A)} samples, B: {len(B)} samples; "
            f"receiver window [{a0},{b0}): {len(real)} exporter series, {len(synth)} synthetic series")
        c.check(f"{prefix}: series set equals the exporter's (label for label)",
                not missing and not extra and len(real) > 0,
                f"{len(real)} series in receiver, {len(both)} in both A and B; missing {len(missing)}: "
                f"{_fmt_keys(missing)}; unexpected {len(extra)}: {_fmt_keys(extra)}")

        # Prometheus stores float64 bit for bit; VictoriaMetrics stores a
        # decimal mantissa and exponent, which may change the last digit
        # (7.0200000000000005 reads back as 7.02).
        tol = 0.0 if receiver_kind == "prometheus" else 1e-12

        def compare(ea, eb, real):
            compared, bad = 0, {}
            for k in set(ea) & set(eb):
                if not same_value(ea[k], eb[k]) or k not in real:
                    continue
                if OBSERVER_DEPENDENT.fullmatch(dict(k)["__name__"]):
                    continue
                compared += 1
                for t, v in real[k]:
                    if not same_value(v, ea[k], tol):
                        bad[k] = (ea[k], v, t)
                        break
            return compared, bad

        compared, bad = compare(ea, eb, real)
        nobs = sum(1 for k in set(ea) & set(eb) if OBSERVER_DEPENDENT.fullmatch(dict(k)["__name__"]))
        log(f"[{prefix}] value round 1: {compared} series compared, {len(bad)} mismatches "
            f"({nobs} observer-dependent series not compared; tolerance {tol or 'exact'})")
        if bad:
            # A gauge can move and come back between A and B: a real defect
            # shows again in a second round, a coincidence does not.
            for k, (want, gotv, t) in list(bad.items())[:10]:
                log(f"    round 1 mismatch {key_str(k)}: exporter {want!r}, receiver {gotv!r} at {t}")
            _, _, _, _, ea2, eb2, real2, _ = value_round(2)
            compared2, bad2 = compare(ea2, eb2, real2)
            persistent = set(bad) & set(bad2)
            log(f"[{prefix}] value round 2: {compared2} series compared, {len(bad2)} mismatches, "
                f"{len(persistent)} in both rounds")
            bad = {k: bad2[k] for k in persistent}
        c.check(f"{prefix}: values equal the exporter's", compared > 100 and not bad,
                f"{compared} series compared, {len(bad)} mismatches"
                + ("".join(f"; {key_str(k)} exporter={w!r} receiver={g!r}" for k, (w, g, _) in list(bad.items())[:5])))

        # Synthetic series at the scrapes inside the window.
        want_keys = {n: series_key({"__name__": n, "job": job, "instance": target, **ext}) for n in SYNTHETIC}
        for n in SYNTHETIC:
            c.check(f"{prefix}: synthetic {n} exists with job/instance labels", want_keys[n] in synth,
                    f"got {_fmt_keys([k for k in synth if dict(k)['__name__'] == n])}")
        s = {n: synth.get(want_keys[n], []) for n in SYNTHETIC}
        if s["up"]:
            c.check(f"{prefix}: up == 1 while the exporter runs", all(v == 1 for _, v in s["up"]), f"{s['up']}")
        if s["scrape_duration_seconds"]:
            c.check(f"{prefix}: 0 < scrape_duration_seconds < timeout",
                    all(0 < v < 1.0 for _, v in s["scrape_duration_seconds"]), f"{s['scrape_duration_seconds']}")
        if s["scrape_samples_scraped"]:
            lo, hi = min(len(A), len(B)), max(len(A), len(B))
            c.check(f"{prefix}: scrape_samples_scraped == samples the exporter exposes",
                    all(lo <= v <= hi for _, v in s["scrape_samples_scraped"]),
                    f"receiver {[v for _, v in s['scrape_samples_scraped']]}, direct A={len(A)} B={len(B)}")
            if s["scrape_samples_post_metric_relabeling"]:
                c.check(f"{prefix}: scrape_samples_post_metric_relabeling == scraped (no rules)",
                        dict(s["scrape_samples_post_metric_relabeling"]) == dict(s["scrape_samples_scraped"]),
                        f"{s['scrape_samples_post_metric_relabeling']} vs {s['scrape_samples_scraped']}")
        first = raw(f'{{__name__=~"scrape_series_added|scrape_samples_scraped",job="{job}"}}', t_begin)
        fa = sorted(first.get(want_keys["scrape_series_added"], []))
        fs = dict(first.get(want_keys["scrape_samples_scraped"], []))
        if fa and fa[0][0] in fs:
            c.check(f"{prefix}: first scrape_series_added == its scrape_samples_scraped",
                    fa[0][1] == fs[fa[0][0]] and fa[0][1] > 0, f"added {fa[0][1]}, scraped {fs[fa[0][0]]}")
        else:
            c.check(f"{prefix}: first scrape_series_added == its scrape_samples_scraped", False,
                    f"first scrape not found: added={fa[:2]}")

        # Endpoints and own metrics.
        for ep in ("/-/healthy", "/-/ready"):
            st, _, _ = http_get(gw.base + ep)
            c.check(f"{prefix}: GET {ep} -> 200", st == 200, f"got {st}")
        if not ref:
            m = fetch_own_metrics(gw.base)
            sent = metric_sum(m, "moongate_remote_write_samples_sent_total", destination=dest)
            c.check(f"{prefix}: moongate_remote_write_samples_sent_total{{destination={dest}}} > 0",
                    sent is not None and sent > 0, f"{sent}")
            nbytes = metric_sum(m, "moongate_remote_write_bytes_sent_total", destination=dest)
            c.check(f"{prefix}: moongate_remote_write_bytes_sent_total > 0", nbytes is not None and nbytes > 0, f"{nbytes}")
            ok2xx = sum(v for k, v in m.items() if dict(k).get("__name__") == "moongate_remote_write_requests_total"
                        and dict(k).get("destination") == dest and dict(k).get("code", "").startswith("2"))
            c.check(f"{prefix}: moongate_remote_write_requests_total{{code=2xx}} > 0", ok2xx > 0, f"{ok2xx}")
            dropped = metric_sum(m, "moongate_remote_write_samples_dropped_total")
            c.check(f"{prefix}: no dropped samples", not dropped, f"moongate_remote_write_samples_dropped_total={dropped}")
            okscr = metric_sum(m, "moongate_scrapes_total", job=job, result="success")
            c.check(f"{prefix}: moongate_scrapes_total{{result=success}} >= 3", okscr is not None and okscr >= 3, f"{okscr}")
            nscr = metric_sum(m, "moongate_scrape_samples_scraped_total", job=job)
            c.check(f"{prefix}: moongate_scrape_samples_scraped_total >= 3 scrapes' worth",
                    nscr is not None and nscr >= 3 * min(len(A), len(B)), f"{nscr}")
            tup = metric_sum(m, "moongate_targets", job=job, health="up")
            c.check(f"{prefix}: moongate_targets{{health=up}} == 1", tup == 1, f"{tup}")
            c.check(f"{prefix}: moongate_build_info present", metric_sum(m, "moongate_build_info") == 1)
            def drained():
                return metric_sum(fetch_own_metrics(gw.base), "moongate_remote_write_samples_pending",
                                  destination=dest) == 0
            c.check(f"{prefix}: moongate_remote_write_samples_pending{{destination={dest}}} drains to 0",
                    bool(poll_until(drained, 10, 0.05)),
                    f"{metric_sum(fetch_own_metrics(gw.base), 'moongate_remote_write_samples_pending', destination=dest)}")
            act = metric_sum(m, "moongate_series_active")
            c.check(f"{prefix}: moongate_series_active >= exporter series", act is not None and act >= len(both), f"{act}")

        # The exporter goes away: up=0, and its series go stale.
        probe = f'node_load1{{job="{job}"}}'
        c.check(f"{prefix}: {probe} present before the failure",
                len(api.query(probe, b0 / 1000.0)) == 1)
        ne.stop()
        t_fail = now_ms()
        log(f"[{prefix}] exporter stopped at {t_fail}")
        got0 = poll_until(lambda: [p for p in up_samples(t_fail) if p[1] == 0], 8 * interval_s)
        c.check(f"{prefix}: up becomes 0 within 4 scrape intervals", bool(got0),
                f"up samples after failure: {up_samples(t_fail)}")
        if receiver_kind == "prometheus":
            def gone():
                t = now_ms() / 1000.0
                return (not api.query(probe, t)
                        and not api.query(f'{{job="{job}",__name__!~"up|scrape_.*"}}', t)) and t
            t_gone = poll_until(gone, 8 * interval_s)
            c.check(f"{prefix}: exporter series are stale in the receiver after the failure",
                    bool(t_gone), f"{probe} at now -> {api.query(probe)}")
        else:
            victoria_staleness(c, prefix, api, job, t_fail, interval_s)
        if not ref:
            fails = [e for e in log_events(gw.stderr(), "scrape_failed") if target in e["_raw"]]
            c.check(f"{prefix}: scrape_failed log line names the target", bool(fails),
                    fails[0]["_raw"] if fails else "no event=scrape_failed line with " + target)
            m = fetch_own_metrics(gw.base)
            c.check(f"{prefix}: moongate_targets{{health=down}} == 1",
                    metric_sum(m, "moongate_targets", job=job, health="down") == 1)
            fl = metric_sum(m, "moongate_scrapes_total", job=job, result="failure")
            c.check(f"{prefix}: moongate_scrapes_total{{result=failure}} > 0", fl is not None and fl > 0, f"{fl}")

        stop_gateway(c, f"{prefix}: gateway exits 0 on SIGTERM", gw)


def victoria_staleness(c, prefix, api, job, t_fail, interval_s):
    """What VictoriaMetrics 1.79 does with Prometheus staleness markers:
    it stores them (the export API shows NaN after the last real value) and
    its queries stop returning the series after the marker."""
    probe = f'node_load1{{job="{job}"}}'

    def marker():
        ex = api.export(probe, t_fail - 60_000, now_ms())
        pts = [p for v in ex.values() for p in v]
        return [p for p in pts if p[0] >= t_fail - int(interval_s * 1000) and math.isnan(p[1])]
    m = poll_until(marker, 8 * interval_s)
    ex = api.export(probe, t_fail - 10_000, now_ms())
    pts = [p for v in ex.values() for p in v]
    c.check(f"{prefix}: VictoriaMetrics stores the staleness marker (export shows NaN) for {probe}",
            bool(m) and math.isnan(pts[-1][1]), f"export around the failure: {pts}")
    # Every exporter series got its marker, not only the probe.
    allx = api.export(f'{{job="{job}",__name__!~"up|scrape_.*"}}', t_fail - 10_000, now_ms())
    unmarked = [k for k, v in allx.items() if not math.isnan(v[-1][1])]
    c.check(f"{prefix}: every exporter series ends with a staleness marker in VictoriaMetrics",
            len(allx) > 100 and not unmarked, f"{len(allx)} series, {len(unmarked)} without marker: {_fmt_keys(unmarked)}")
    # VM's instant query honours the marker (last_over_time would still
    # return the last real value: VM 1.79 skips NaN there).
    c.check(f"{prefix}: VictoriaMetrics instant query returns nothing for {probe} after the failure",
            bool(poll_until(lambda: not api.query(probe, now_ms() / 1000.0), 8 * interval_s)),
            f"query -> {api.query(probe)}")


# ---------------------------------------------------------------- self test

def self_test():
    """Checks of the harness' own pieces that need no peer."""
    c = Checks()
    s = parse_exposition('# HELP x y\n# TYPE x gauge\nx{a="1",b="q\\"\\\\\\n"} 1.5e3 1700000000000\n'
                         'y NaN\nz +Inf\nw{} -Inf\nv{a="",} 3\n')
    c.check("parse: label escapes, timestamps, specials",
            s[0] == ({"__name__": "x", "a": "1", "b": 'q"\\\n'}, 1500.0, 1700000000000)
            and math.isnan(s[1][1]) and s[2][1] == math.inf and s[3][1] == -math.inf
            and s[4][0] == {"__name__": "v", "a": ""})
    for bad in ("this is not { exposition", 'x{a=1} 2', "x", "x 1 2 3"):
        try:
            parse_exposition(bad)
            c.check(f"parse rejects {bad!r}", False)
        except (ParseError, ValueError):
            c.check(f"parse rejects {bad!r}", True)
    series = [({"__name__": "m", "job": "j", "x": "y" * 300}, [(1.25, 1700000000123), (math.nan, -5)])]
    raw = encode_write_request(series)
    dec = decode_write_request(raw)
    ts = dec["timeseries"][0]
    c.check("protobuf round trip", ts["labels"] == sorted(series[0][0].items())
            and ts["samples"][0] == (1.25, 1700000000123) and ts["samples"][1][1] == -5)
    stale = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
    c.check("stale NaN bits", is_stale_nan(stale) and not is_stale_nan(math.nan))
    if _snappy is not None:
        blobs = [raw, b"", b"a" * 100000, os.urandom(5000), (b"abcdefgh" * 9000 + os.urandom(70)) * 3]
        ok = all(snappy_decompress_py(_snappy.compress(b)) == b for b in blobs)
        c.check("pure-python snappy matches python3-snappy", ok)
    else:
        log("note: python3-snappy not importable by this python; pure decoder in use")
    rec = parse_logfmt('ts=2024 level=warn mod=scrape event=scrape_failed target=127.0.0.1:9 err="parse error" line=3')
    c.check("logfmt", rec["event"] == "scrape_failed" and rec["err"] == "parse error" and rec["line"] == "3")
    c.finish()


if __name__ == "__main__":
    self_test()
