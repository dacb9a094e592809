"""kubernetes_sd_configs end to end against a fake Kubernetes API server.

A loopback fake API (standard library http.server) answers pod lists and
holds watches open as chunked streams, sending ADDED/MODIFIED/DELETED
events when the test changes its pods, and checks the bearer token.
Its pods point at mgtest.FakeTargets (pod IP 127.0.0.1, container port =
the target's port). moongate runs a prometheus.yml with
kubernetes_sd_configs (role pod, api_server = the fake, bearer_token_file)
and the relabel_configs users write to keep annotated pods and copy pod
metadata into labels; it writes to mgtest.FakeReceiver.

Checks: the annotated pods are scraped and their series carry namespace,
pod, container and labelmap'ed pod labels; the pod without the annotation
is never scraped; list and watch carried the token, which never shows in
the logs; one list then a watch held open (no polling); a pod added
through the watch is scraped; a pod deleted through the watch stops being
scraped and its series get Prometheus's stale NaN; no discovery failures.
"""
import http.server
import json
import os
import re
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402
from mgtest import poll_until  # noqa: E402

TOKEN = "k8s-sa-token-4f9c2e7d"


def pod(name, port, scrape=True, app="web"):
    annotations = {"prometheus.io/scrape": "true"} if scrape else {}
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "shop", "uid": "uid-" + name,
                     "labels": {"app": app, "pod-template-hash": "5c9f"},
                     "annotations": annotations},
        "spec": {"nodeName": "node-a",
                 "containers": [{"name": "app", "image": "shop/web:1",
                                 "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1", "hostIP": "10.0.0.5",
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


class FakeKubeAPI:
    """Pods of one cluster: GET /api/v1/pods lists them; with watch=1 the
    answer is a chunked stream of events after the asked resourceVersion,
    kept open until timeoutSeconds or stop()."""

    def __init__(self, token):
        self.token = token
        self.lock = threading.Condition()
        self.rv = 1
        self.pods = {}
        self.events = []  # (rv, line)
        self.lists = 0
        self.watches = 0
        self.open_watches = 0
        self.auth_seen = set()
        self.paths = set()
        self.refused = 0
        self.stopping = False
        api = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                api._get(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _event(self, typ, obj):
        self.rv += 1
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, json.dumps({"type": typ, "object": obj}) + "\n"))
        self.lock.notify_all()
        return obj

    def put(self, p):
        with self.lock:
            typ = "MODIFIED" if p["metadata"]["name"] in self.pods else "ADDED"
            self.pods[p["metadata"]["name"]] = self._event(typ, p)

    def delete(self, name):
        with self.lock:
            self._event("DELETED", self.pods.pop(name))

    def _send(self, h, code, body, ctype="application/json"):
        data = body.encode()
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _get(self, h):
        u = urllib.parse.urlsplit(h.path)
        q = urllib.parse.parse_qs(u.query)
        auth = h.headers.get("Authorization", "")
        with self.lock:
            self.auth_seen.add(auth)
        if auth != "Bearer " + self.token:
            with self.lock:
                self.refused += 1
            self._send(h, 401, json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "message": "Unauthorized", "reason": "Unauthorized", "code": 401}))
            return
        with self.lock:
            self.paths.add(u.path)
        if u.path not in ("/api/v1/pods", "/api/v1/namespaces/shop/pods"):
            self._send(h, 404, json.dumps({"kind": "Status", "code": 404, "message": "not found"}))
            return
        if q.get("watch") != ["1"]:
            with self.lock:
                self.lists += 1
                body = json.dumps({"kind": "PodList", "apiVersion": "v1",
                                   "metadata": {"resourceVersion": str(self.rv)},
                                   "items": list(self.pods.values())})
            self._send(h, 200, body)
            return
        self._watch(h, int(q.get("resourceVersion", ["0"])[0] or 0), int(q.get("timeoutSeconds", ["60"])[0]))

    def _watch(self, h, rv, timeout_s):
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        end = time.monotonic() + min(timeout_s, 600)
        with self.lock:
            self.watches += 1
            self.open_watches += 1
        try:
            while True:
                with self.lock:
                    pending = [(r, line) for r, line in self.events if r > rv]
                    if not pending and not self.stopping and time.monotonic() < end:
                        self.lock.wait(0.2)
                        continue
                if pending:
                    data = "".join(line for _, line in pending).encode()
                    rv = pending[-1][0]
                    h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    h.wfile.flush()
                    continue
                h.wfile.write(b"0\r\n\r\n")  # timeoutSeconds passed, or stopping
                h.wfile.flush()
                return
        except OSError:
            return
        finally:
            with self.lock:
                self.open_watches -= 1

    def stop(self):
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


def config(api_url, token_file, write_url):
    return f"""# test_sd_k8s (generated)
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: kubernetes-pods
    kubernetes_sd_configs:
      - role: pod
        api_server: {api_url}
        bearer_token_file: {token_file}
        namespaces:
          names: [shop]
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        action: keep
        regex: "true"
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
      - source_labels: [__meta_kubernetes_pod_container_name]
        target_label: container
      - action: labelmap
        regex: __meta_kubernetes_pod_label_(.+)
remote_write:
  - url: {write_url}
    name: fake
    queue_config:
      batch_send_deadline: 1s
"""


def series_of(rx, pod_name):
    return rx.find("good_requests_total", pod=pod_name)


def run(c):
    with mgtest.Harness("sd-k8s") as h:
        rx = h.add_server(mgtest.FakeReceiver())
        targets = {n: h.add_server(mgtest.FakeTarget("good")) for n in ("web-1", "web-2", "web-3", "hidden")}
        api = h.add_server(FakeKubeAPI(TOKEN))
        api.put(pod("web-1", targets["web-1"].port))
        api.put(pod("web-2", targets["web-2"].port))
        api.put(pod("hidden", targets["hidden"].port, scrape=False))
        token_file = h.write("token", TOKEN + "\n")
        cfg = h.write("prometheus.yml", config(api.url, token_file, rx.write_url))

        check = h.start("check", [mgtest.MOONGATE_BIN, "check", cfg])
        check.wait(30)
        c.check("moongate check accepts kubernetes_sd_configs", check.p.returncode == 0,
                "" if check.p.returncode == 0 else check.tail(5))
        c.check("check output hides nothing secret", TOKEN not in check.stdout() + check.stderr())

        mg = mgtest.start_moongate(h, cfg)
        for name in ("web-1", "web-2"):
            got = poll_until(lambda n=name: series_of(rx, n), 30)
            c.check(f"{name} scraped with pod metadata", bool(got), f"{len(got or {})} series")
            if got:
                labels = dict(next(iter(got)))
                want = {"job": "kubernetes-pods", "instance": targets[name].addr, "namespace": "shop",
                        "pod": name, "container": "app", "app": "web", "pod_template_hash": "5c9f"}
                bad = {k: (labels.get(k), v) for k, v in want.items() if labels.get(k) != v}
                c.check(f"{name} labels", not bad, f"mismatched {bad}" if bad else "")
                c.check(f"{name} has no __meta labels", not any(k.startswith("__meta") for k in labels))
        c.check("the pod without the annotation is not scraped", targets["hidden"].requests == 0,
                f"{targets['hidden'].requests} requests")
        c.check("no rx wire violations", rx.nviolations == 0, "; ".join(rx.violations))

        with api.lock:
            auth = set(api.auth_seen)
        c.check("list and watch carried the bearer token", auth == {"Bearer " + TOKEN}, f"{len(auth)} distinct")
        with api.lock:
            paths = set(api.paths)
        c.check("namespaces.names asks for the namespace's pods", paths == {"/api/v1/namespaces/shop/pods"},
                f"{sorted(paths)}")
        held = poll_until(lambda: api.open_watches >= 1, 10)
        c.check("a watch is held open as a stream", bool(held))
        lists_before = api.lists

        # A pod added through the watch is scraped.
        api.put(pod("web-3", targets["web-3"].port))
        got = poll_until(lambda: series_of(rx, "web-3"), 20)
        c.check("a pod added by a watch event is scraped", bool(got))

        # A pod deleted through the watch: scraping stops, series go stale.
        api.delete("web-2")
        stale = poll_until(lambda: any(mgtest.is_stale_nan(v) for pts in series_of(rx, "web-2").values()
                                       for _, v in pts[-1:]), 20)
        c.check("the deleted pod's series get a stale NaN", bool(stale))
        n2 = targets["web-2"].requests
        time.sleep(0.1)
        later = poll_until(lambda: targets["web-2"].requests > n2 + 1, 4)
        c.check("the deleted pod is no longer scraped", not later, f"{targets['web-2'].requests - n2} more requests")
        c.check("changes came by watch, without relisting", api.lists == lists_before == 1,
                f"lists {api.lists}, watches {api.watches}")

        metrics = mgtest.fetch_own_metrics(mg.base)
        fails = mgtest.metric_sum(metrics, "moongate_sd_refresh_failures_total", kind="kubernetes")
        c.check("no discovery refresh failures", not fails, f"{fails}")
        logs = mg.stderr() + mg.stdout()
        c.check("the token never shows in logs", TOKEN not in logs)
        c.check("the provider logged its start", re.search(r"mod=sd_k8s event=started .*role=pod", logs) is not None)


def main():
    c = mgtest.Checks()
    why = mgtest.moongate_usable()
    if why:
        c.check("moongate binary usable", False, why)
    else:
        try:
            run(c)
        except Exception as e:  # noqa: BLE001
            c.crashed("sd-k8s", e)
    c.finish()


if __name__ == "__main__":
    main()
