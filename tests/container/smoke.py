"""smoke.py: the container image end to end, driven from the host. Owns a
fake target and receiver on 127.0.0.1 (mgtest.py) and the containers it
starts (removed by ID, also on failure); must not publish beyond 127.0.0.1
or stop a container it did not start.

    python3 tests/container/smoke.py IMAGE      (CONTAINERS_CONF set by smoke.sh)

The main container runs with --network host so it can reach the fake peers,
which listen on the host's loopback only; moongate then listens on a free
127.0.0.1 port instead of the image's 0.0.0.0:9464. It also runs the way the
Kubernetes manifests run it: --read-only root, every capability dropped,
no-new-privileges. A second container checks the image's default command
behind a -p 127.0.0.1:PORT:9464 mapping. Ends with `N passed, M failed`.
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import mgtest  # noqa: E402
from mgtest import Checks, http_get, log, poll_until  # noqa: E402

PODMAN = os.environ.get("PODMAN", "podman")
DRAIN = "5s"


# Without systemd, podman cannot arm the healthcheck timer and says so on
# every run; harmless (the test runs `podman healthcheck run` itself).
NOISE = "unable to get systemd connection"


def podman(*args, timeout=60, check=False):
    """Run podman; return CompletedProcess (text, the systemd noise removed
    from stderr). Bounded by timeout."""
    p = subprocess.run([PODMAN, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    p.stderr = "".join(ln for ln in p.stderr.splitlines(True) if NOISE not in ln)
    if check and p.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} -> {p.returncode}: {p.stderr.strip()[-500:]}")
    return p


_names = []


def run_detached(*args):
    """podman run -d --name <unique> ARGS: the name lets cleanup remove the
    container even when run fails after creating it (e.g. an OCI error)."""
    name = f"moongate-smoke-{os.getpid()}-{len(_names)}"
    _names.append(name)
    return name, podman("run", "-d", "--name", name, *args, timeout=60)


def remove_all():
    for name in _names:
        podman("rm", "-f", "-v", "-t", "5", name, timeout=60)


def inspect_image(c, image):
    cfg = json.loads(podman("image", "inspect", image, check=True).stdout)[0]
    conf = cfg.get("Config") or {}
    c.check("image: USER is 10001:10001 (non-root)", conf.get("User") == "10001:10001", conf.get("User"))
    hc = (cfg.get("Healthcheck") or conf.get("Healthcheck") or {}).get("Test") or []
    c.check("image: HEALTHCHECK runs moongate-healthcheck", "/usr/local/bin/moongate-healthcheck" in hc, f"{hc}")
    c.check("image: EXPOSE 9464", "9464/tcp" in (conf.get("ExposedPorts") or {}), f"{conf.get('ExposedPorts')}")
    c.check("image: VOLUME /var/lib/moongate", "/var/lib/moongate" in (conf.get("Volumes") or {}),
            f"{conf.get('Volumes')}")
    c.check("image: STOPSIGNAL SIGTERM", conf.get("StopSignal") in ("SIGTERM", "15"), conf.get("StopSignal"))
    cmd = conf.get("Cmd") or []
    c.check("image: CMD runs /etc/moongate/moongate.lua on 0.0.0.0:9464",
            cmd[:2] == ["run", "/etc/moongate/moongate.lua"] and "0.0.0.0:9464" in cmd, f"{cmd}")
    size = cfg.get("Size") or 0
    log(f"image size: {size / 1e6:.1f} MB ({size} bytes)")
    return size


def one_shot(c, image, script):
    v = podman("run", "--rm", "--network", "none", image, "--version", timeout=60)
    c.check("podman run IMAGE --version", v.returncode == 0 and v.stdout.startswith("moongate "),
            (v.stdout + v.stderr).strip())
    ck = podman("run", "--rm", "--network", "none", "-v", f"{script}:/etc/moongate/moongate.lua:ro",
                image, "check", "/etc/moongate/moongate.lua", timeout=60)
    c.check("podman run IMAGE check /etc/moongate/moongate.lua (mounted script)",
            ck.returncode == 0 and "OK" in ck.stdout, (ck.stdout + ck.stderr).strip()[-300:])
    ldd = podman("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                 "ldd /usr/local/bin/moongate | grep 'not found' || true", timeout=60)
    c.check("every shared library of moongate is in the image (ldd)", ldd.returncode == 0 and not ldd.stdout.strip(),
            ldd.stdout.strip() or "all found")


def main_flow(c, h, image):
    tgt = h.add_server(mgtest.FakeTarget("good"))
    rx = h.add_server(mgtest.FakeReceiver())
    port = mgtest.free_port()
    script = h.write("moongate.lua", f"""local mg = require "moongate"
mg.global {{ scrape_interval = "1s", scrape_timeout = "900ms", external_labels = {{ cluster = "container-smoke" }} }}
mg.remote_write {{ name = "rx", url = "{rx.write_url}", queue = {{ batch_send_deadline = "500ms" }} }}
mg.scrape {{ job = "smoke", targets = {{ "{tgt.addr}" }} }}
""")
    os.chmod(script, 0o644)
    os.chmod(h.dir, 0o755)
    one_shot(c, image, script)

    cid, run = run_detached("--init", "--network", "host",
                            "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                            "-e", f"MOONGATE_HEALTH_ADDR=127.0.0.1:{port}",
                            "-v", f"{script}:/etc/moongate/moongate.lua:ro",
                            image, "run", "/etc/moongate/moongate.lua", "--listen", f"127.0.0.1:{port}",
                            "--data-dir", "/var/lib/moongate", "--drain-timeout", DRAIN)
    if not c.check("container starts (--network host, --read-only, --cap-drop ALL)", run.returncode == 0,
                   run.stderr.strip()[-300:]):
        return None
    t_start = time.monotonic()
    base = f"http://127.0.0.1:{port}"
    try:
        healthy = poll_until(lambda: http_get(base + "/-/healthy", timeout=2)[0] == 200, 20)
        c.check("GET /-/healthy from the host -> 200", bool(healthy),
                f"after {time.monotonic() - t_start:.1f}s" if healthy else podman("logs", cid).stderr[-500:])
        ready = poll_until(lambda: http_get(base + "/-/ready", timeout=2)[0] == 200, 20)
        c.check("GET /-/ready from the host -> 200", bool(ready))

        def delivered():
            got = rx.find("good_requests_total", job="smoke", instance=tgt.addr, cluster="container-smoke")
            pts = [p for v in got.values() for p in v]
            return pts if len(pts) >= 3 else None
        pts = poll_until(delivered, 30)
        c.check("receiver got good_requests_total{job=smoke,instance=<target>,cluster=container-smoke} (3 scrapes)",
                bool(pts), f"{len(pts or [])} samples; receiver saw {rx.requests} requests")
        up = rx.find("up", job="smoke", instance=tgt.addr)
        c.check("receiver got up == 1 for the target", any(v == 1 for s in up.values() for _, v in s), f"{up}")
        c.check("receiver saw no wire-format violations", rx.nviolations == 0, "; ".join(rx.violations))
        own = mgtest.fetch_own_metrics(base)
        sent = mgtest.metric_sum(own, "moongate_remote_write_samples_sent_total", destination="rx")
        c.check("moongate_remote_write_samples_sent_total{destination=rx} > 0", bool(sent), f"{sent}")

        uid = podman("exec", cid, "id", "-u", timeout=30)
        c.check("process runs as uid 10001", uid.stdout.strip() == "10001", (uid.stdout + uid.stderr).strip())
        ro = podman("exec", cid, "sh", "-c", "touch /etc/moongate/x 2>&1; touch /var/lib/moongate/probe && echo data-ok",
                    timeout=30)
        c.check("root filesystem read-only, data dir writable",
                "Read-only file system" in ro.stdout and "data-ok" in ro.stdout, ro.stdout.strip())
        hc = podman("healthcheck", "run", cid, timeout=30)
        c.check("podman healthcheck run -> healthy", hc.returncode == 0 and "unhealthy" not in hc.stdout,
                (hc.stdout + hc.stderr).strip() or f"rc={hc.returncode}")
        bad = podman("exec", "-e", f"MOONGATE_HEALTH_ADDR=127.0.0.1:{mgtest.free_port()}", cid,
                     "/usr/local/bin/moongate-healthcheck", timeout=30)
        c.check("moongate-healthcheck fails against a closed port", bad.returncode == 1,
                (bad.stdout + bad.stderr).strip())

        t0 = time.monotonic()
        st = podman("stop", "-t", "20", cid, timeout=60)
        secs = time.monotonic() - t0
        code = podman("inspect", "-f", "{{.State.ExitCode}}", cid, timeout=30).stdout.strip()
        c.check("podman stop (SIGTERM) -> exit code 0, well before the 20 s kill",
                st.returncode == 0 and code == "0" and secs < 15, f"exit {code} after {secs:.1f}s")
        logs = podman("logs", cid, timeout=30)
        text = logs.stdout + logs.stderr
        ev = {e.get("event"): e for e in mgtest.log_events(text)}
        c.check("log: event=started", "started" in ev, ev.get("started", {}).get("_raw", ""))
        c.check("log: event=stopping signal=15 (the drain starts)",
                ev.get("stopping", {}).get("signal") == "15", ev.get("stopping", {}).get("_raw", "none"))
        c.check("log: event=stopped exit=0 (drained)", ev.get("stopped", {}).get("exit") == "0",
                ev.get("stopped", {}).get("_raw", "none"))
        c.check("log: no drain_incomplete", "drain_incomplete" not in ev)
        if c.failed:
            log("--- container log (last 30 lines) ---\n" + "\n".join(text.splitlines()[-30:]))
    finally:
        podman("rm", "-f", "-v", "-t", "5", cid, timeout=60)
    return True


def default_cmd(c, image):
    """The image's own CMD (default script, 0.0.0.0:9464) behind a loopback
    port mapping: what `podman run -p 127.0.0.1:9464:9464 moongate` gives.
    Without --init, so moongate is PID 1 as in a Kubernetes pod and must
    handle SIGTERM itself."""
    hport = mgtest.free_port()
    cid, run = run_detached("-p", f"127.0.0.1:{hport}:9464", image)
    if run.returncode != 0:
        c.check("default CMD behind -p 127.0.0.1:H:9464 starts", False, run.stderr.strip()[-300:])
        return
    try:
        base = f"http://127.0.0.1:{hport}"
        ok = poll_until(lambda: http_get(base + "/-/healthy", timeout=2)[0] == 200, 20)
        c.check("default CMD: /-/healthy through the port mapping", bool(ok))

        def printed():
            out = podman("logs", cid, timeout=30).stdout
            return 'job="moongate"' in out and out
        out = poll_until(printed, 20)
        c.check("default CMD: default script prints its own series on stdout", bool(out),
                (out or "").splitlines()[0] if out else "nothing printed")
        hc = podman("healthcheck", "run", cid, timeout=30)
        c.check("default CMD: podman healthcheck run -> healthy", hc.returncode == 0, (hc.stdout + hc.stderr).strip())
        # SIGHUP from inside, as docs/kubernetes.md tells (no kill binary needed).
        podman("exec", cid, "sh", "-c", "kill -HUP 1", timeout=30)
        rl = poll_until(lambda: [e for e in mgtest.log_events(podman("logs", cid, timeout=30).stderr)
                                 if e.get("event") in ("reloaded", "reload_failed")], 15)
        c.check("default CMD: `sh -c 'kill -HUP 1'` in the container reloads the script",
                bool(rl) and rl[0].get("event") == "reloaded", rl[0]["_raw"] if rl else "no reload event")
        t0 = time.monotonic()
        st = podman("stop", "-t", "20", cid, timeout=60)
        secs = time.monotonic() - t0
        code = podman("inspect", "-f", "{{.State.ExitCode}}", cid, timeout=30).stdout.strip()
        c.check("default CMD: moongate as PID 1 (no --init): podman stop -> exit 0 before the kill",
                st.returncode == 0 and code == "0" and secs < 15, f"exit {code} after {secs:.1f}s")
    finally:
        podman("rm", "-f", "-v", "-t", "5", cid, timeout=60)


def main():
    if len(sys.argv) != 2:
        print("usage: smoke.py IMAGE", file=sys.stderr)
        return 2
    image = sys.argv[1]
    if not os.environ.get("CONTAINERS_CONF"):
        log("note: CONTAINERS_CONF is unset; on the CI VMs podman needs the containers.conf that "
            "podman-setup.sh writes (runc, lowered ulimits): run tests/container/smoke.sh instead")
    c = Checks()
    with mgtest.Harness("container-smoke") as h:
        steps = [("image", lambda: inspect_image(c, image)), ("main", lambda: main_flow(c, h, image))]
        # The default-CMD step uses podman's bridge network for its port
        # mapping; MG_SMOKE_BRIDGE=0 skips it (it leaves podman's empty
        # CNI/netavark iptables chains behind, see docs/container.md).
        if os.environ.get("MG_SMOKE_BRIDGE", "1") != "0":
            steps.append(("default CMD", lambda: default_cmd(c, image)))
        try:
            for name, fn in steps:
                t0 = time.monotonic()
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - one failure, the rest still runs
                    c.crashed(name, e)
                log(f"[{name}] {time.monotonic() - t0:.1f}s")
        finally:
            remove_all()
    c.finish()


if __name__ == "__main__":
    main()
