"""HTTP and DNS service discovery end to end, from a prometheus.yml:
http_sd against a Python HTTP server on loopback (auth and headers checked,
the list changed mid-test, a failing server keeping the targets), dns_sd
against a Python DNS server on loopback (SRV turned into addresses by
relabeling, A records with a port; a record moved, a server failing). The
receiver must get the series of discovered targets, and a target taken out
of a list must go stale. Timings from each change to its effect are
printed."""
import http.server
import json
import socket
import struct
import subprocess
import threading
import time

import mgtest as mt

INTERVAL_S = 0.5
SD_TOKEN = "sd-token-8f3a1c"


def stale(rx, name, **labels):
    """Timestamp of the first staleness marker of a series, or None."""
    for pts in rx.find(name, **labels).values():
        for t, v in pts:
            if mt.is_stale_nan(v):
                return t
    return None


def samples(rx, name, **labels):
    return sum(len(p) for p in rx.find(name, **labels).values())


def own_metric(mg, name, **labels):
    return mt.metric_sum(mt.fetch_own_metrics(mg.base), name, **labels) or 0


class SDServer:
    """An http_sd endpoint: GET /targets answers `groups` as JSON, or
    `status` when it is not 200; the headers of the last request are kept."""

    def __init__(self):
        self.groups = []
        self.status = 200
        self.requests = 0
        self.headers = {}
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                srv.requests += 1
                srv.headers = {k.lower(): v for k, v in self.headers.items()}
                if self.path != "/targets":
                    code, body = 404, b"not found\n"
                elif srv.status != 200:
                    code, body = srv.status, b"inventory unavailable\n"
                else:
                    code, body = 200, json.dumps(srv.groups).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if code == 200 else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/targets"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def dns_name(name):
    out = b""
    for part in name.rstrip(".").split("."):
        out += bytes([len(part)]) + part.encode()
    return out + b"\0"


class FakeDNS:
    """A DNS server on a loopback UDP port answering SRV and A questions
    from `records` {(name, "SRV"|"A"): [rdata, ...]} (SRV rdata: (priority,
    weight, port, target); A: "ip"); other names get NXDOMAIN, names in
    `servfail` get SERVFAIL."""

    TYPES = {1: "A", 33: "SRV"}

    def __init__(self):
        self.records = {}
        self.servfail = set()
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                q, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            a = self._answer(q)
            if a:
                self.queries += 1
                self.sock.sendto(a, peer)

    def _answer(self, q):
        if len(q) < 12:
            return None
        i, labels = 12, []
        while i < len(q) and q[i]:
            n = q[i]
            labels.append(q[i + 1:i + 1 + n].decode("ascii", "replace").lower())
            i += 1 + n
        if i + 5 > len(q):
            return None
        name = ".".join(labels)
        qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
        question = q[12:i + 5]
        rcode, answers = 0, []
        if name in self.servfail:
            rcode = 2
        elif not any(k[0] == name for k in self.records):
            rcode = 3
        else:
            for rd in self.records.get((name, self.TYPES.get(qtype)), []):
                if qtype == 33:
                    data = struct.pack("!HHH", rd[0], rd[1], rd[2]) + dns_name(rd[3])
                else:
                    data = socket.inet_aton(rd)
                answers.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, 5, len(data)) + data)
        head = q[:2] + struct.pack("!HHHHH", 0x8180 | rcode, 1, len(answers), 0, 0)
        return head + question + b"".join(answers)

    def stop(self):
        self.stopping = True
        self.sock.close()


def run(c, h):
    rx = h.add_server(mt.FakeReceiver())
    t1, t2, t3, t4, t5, t6 = (h.add_server(mt.FakeTarget("good")) for _ in range(6))
    sd = h.add_server(SDServer())
    dns = h.add_server(FakeDNS())
    sd.groups = [{"targets": [t1.addr, t2.addr], "labels": {"env": "prod"}}]
    dns.records[("_metrics._tcp.sd.test", "SRV")] = [(10, 5, t4.port, "t4.sd.test")]
    dns.records[("hosts.sd.test", "A")] = ["127.0.0.1"]
    ns = f"127.0.0.1:{dns.port}"
    yml = h.write("prometheus.yml", f"""
global:
  scrape_interval: {int(INTERVAL_S * 1000)}ms
  scrape_timeout: 400ms
scrape_configs:
  - job_name: http
    http_sd_configs:
      - url: {sd.url}
        refresh_interval: 1s
        authorization:
          credentials: {SD_TOKEN}
  - job_name: dns_srv
    dns_sd_configs:
      - names: [_metrics._tcp.sd.test]
        refresh_interval: 1s
        nameservers: ['{ns}']
    relabel_configs:
      # The fake names resolve nowhere else: scrape 127.0.0.1 on the SRV port.
      - source_labels: [__meta_dns_srv_record_port]
        target_label: __address__
        replacement: 127.0.0.1:$1
      - source_labels: [__meta_dns_srv_record_target]
        target_label: srv_target
  - job_name: dns_a
    dns_sd_configs:
      - names: [hosts.sd.test]
        type: A
        port: {t5.port}
        refresh_interval: 1s
        nameservers: ['{ns}']
remote_write:
  - url: {rx.write_url}
    queue_config: {{batch_send_deadline: 200ms}}
""")
    chk = subprocess.run([mt.MOONGATE_BIN, "check", yml], capture_output=True, text=True, timeout=30)
    c.check("check: the configuration is accepted", chk.returncode == 0, chk.stderr[-300:])
    c.check("check: the http_sd token is not printed", SD_TOKEN not in chk.stdout + chk.stderr)

    t0 = mt.now_ms()
    mg = mt.start_moongate(h, yml)
    ok = mt.poll_until(lambda: rx.find("good_requests_total", instance=t1.addr, env="prod")
                       and rx.find("good_requests_total", instance=t2.addr, env="prod"), 20)
    d_http = mt.now_ms() - t0
    c.check("http_sd: both targets are scraped, with the group's labels", bool(ok), f"{d_http} ms after start")
    k = next(iter(rx.find("up", instance=t1.addr)), ())
    c.check("http_sd: job label and no __meta_* label", dict(k).get("job") == "http"
            and not any(n.startswith("__meta") for n, _ in k), str(k))
    c.check("http_sd: the request carries the token, Accept and the refresh interval",
            sd.headers.get("authorization") == f"Bearer {SD_TOKEN}"
            and sd.headers.get("accept") == "application/json"
            and sd.headers.get("x-prometheus-refresh-interval-seconds") == "1", str(sd.headers))

    ok = mt.poll_until(lambda: rx.find("good_requests_total", instance=f"127.0.0.1:{t4.port}",
                                       srv_target="t4.sd.test."), 20)
    c.check("dns_sd: the SRV record's target is scraped (address from relabeling, meta label kept)", bool(ok))
    ok = mt.poll_until(lambda: rx.find("good_requests_total", instance=t5.addr, job="dns_a"), 20)
    c.check("dns_sd: the A record is scraped on the configured port", bool(ok))
    c.check("discovered targets: http 2, dns_srv 1, dns_a 1",
            [own_metric(mg, "moongate_sd_discovered_targets", job=j) for j in ("http", "dns_srv", "dns_a")]
            == [2, 1, 1])

    # The HTTP list changes: t1 goes, t3 comes.
    t0 = mt.now_ms()
    sd.groups = [{"targets": [t2.addr], "labels": {"env": "prod"}}, {"targets": [t3.addr]}]
    got3 = mt.poll_until(lambda: rx.find("up", instance=t3.addr, job="http"), 15)
    d3 = mt.now_ms() - t0
    st1 = mt.poll_until(lambda: stale(rx, "good_requests_total", instance=t1.addr), 15)
    d1 = (st1 - t0) if st1 else None
    c.check("http_sd: a target added to the list is scraped", bool(got3), f"{d3} ms after the change")
    c.check("http_sd: the target taken out goes stale", bool(st1), f"{d1} ms after the change")
    c.check("http_sd: the target that stayed has no staleness marker", stale(rx, "up", instance=t2.addr) is None)

    # The server fails: counted, logged once, targets kept.
    sd.status = 500
    failed = mt.poll_until(lambda: own_metric(mg, "moongate_sd_refresh_failures_total", kind="http") >= 2, 15)
    c.check("http_sd: failures count in moongate_sd_refresh_failures_total{kind=http}", bool(failed))
    n2, n3 = samples(rx, "up", instance=t2.addr), samples(rx, "up", instance=t3.addr)
    kept = mt.poll_until(lambda: samples(rx, "up", instance=t2.addr) >= n2 + 3
                         and samples(rx, "up", instance=t3.addr) >= n3 + 3, 15)
    c.check("http_sd: a failing server keeps the targets", bool(kept) and stale(rx, "up", instance=t3.addr) is None)
    logs = mt.log_events(mg.stderr(), "refresh_failed")
    nlog = len([e for e in logs if "HTTP 500" in e.get("err", "")])
    c.check("http_sd: the failure is logged once", nlog == 1, f"{nlog} lines")
    c.check("logs: the token never appears", SD_TOKEN not in mg.stderr())
    sd.status = 200

    # The SRV record moves from t4 to t6.
    t0 = mt.now_ms()
    dns.records[("_metrics._tcp.sd.test", "SRV")] = [(10, 5, t6.port, "t6.sd.test")]
    got6 = mt.poll_until(lambda: rx.find("up", instance=f"127.0.0.1:{t6.port}", srv_target="t6.sd.test."), 15)
    d6 = mt.now_ms() - t0
    st4 = mt.poll_until(lambda: stale(rx, "good_requests_total", instance=f"127.0.0.1:{t4.port}"), 15)
    d4 = (st4 - t0) if st4 else None
    c.check("dns_sd: the new SRV target is scraped", bool(got6), f"{d6} ms after the change")
    c.check("dns_sd: the old SRV target goes stale", bool(st4), f"{d4} ms after the change")

    # The DNS server fails for the A name: its target stays.
    dns.servfail.add("hosts.sd.test")
    failed = mt.poll_until(lambda: own_metric(mg, "moongate_sd_dns_lookup_failures_total") >= 2, 20)
    c.check("dns_sd: failed lookups count in moongate_sd_dns_lookup_failures_total", bool(failed))
    n5 = samples(rx, "up", instance=t5.addr)
    kept = mt.poll_until(lambda: samples(rx, "up", instance=t5.addr) >= n5 + 3, 15)
    c.check("dns_sd: a failing lookup keeps the name's targets", bool(kept) and stale(rx, "up", instance=t5.addr) is None)
    nlog = len([e for e in mt.log_events(mg.stderr(), "lookup_failed") if e.get("name") == "hosts.sd.test"])
    c.check("dns_sd: the failure is logged once", nlog == 1, f"{nlog} lines")

    rc, _ = mg.stop()
    c.check("exits 0 on SIGTERM", rc == 0, f"rc={rc}")
    c.check("no wire-format violations", rx.nviolations == 0, str(rx.violations[:3]))
    mt.log(f"figures: first http_sd targets scraped {d_http} ms after start; http_sd change -> new target "
           f"{d3} ms, staleness marker {d1} ms; SRV change -> new target {d6} ms, staleness marker {d4} ms "
           f"(refresh 1 s, interval {int(INTERVAL_S * 1000)} ms)")


def main():
    c = mt.Checks()
    with mt.Harness("sd_net") as h:
        try:
            run(c, h)
        except Exception as e:  # noqa: BLE001
            c.crashed("sd_net", e)
            h.dump_logs()
    c.finish()


if __name__ == "__main__":
    main()
