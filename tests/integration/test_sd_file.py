"""Service discovery end to end: file_sd from a prometheus.yml (targets from
a JSON file, a rewrite that drops one target and adds another, a broken
file that keeps the targets, a reload that keeps discovered series), Lua
function targets (a changing list, errors that keep the previous list),
and the file_sd prod/staging example run for real against two receivers.
Timings from each change to its effect are printed."""
import json
import os
import shutil
import signal
import time

import mgtest as mt

INTERVAL_S = 0.5


def stale(rx, name, **labels):
    """Timestamp of the first staleness marker of a series, or None."""
    for pts in rx.find(name, **labels).values():
        for t, v in pts:
            if mt.is_stale_nan(v):
                return t
    return None


def samples(rx, name, **labels):
    return sum(len(p) for p in rx.find(name, **labels).values())


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def own_metric(mg, name, **labels):
    return mt.metric_sum(mt.fetch_own_metrics(mg.base), name, **labels)


def groups(*targets, env="a"):
    return json.dumps([{"targets": [t.addr for t in targets], "labels": {"env": env}}])


def file_sd(c, h):
    rx = h.add_server(mt.FakeReceiver())
    t1, t2, t3 = (h.add_server(mt.FakeTarget("good")) for _ in range(3))
    os.makedirs(h.path("targets"))
    tfile = h.path("targets", "web.json")
    write_atomic(tfile, groups(t1, t2))
    yml = h.write("prometheus.yml", f"""
global:
  scrape_interval: {int(INTERVAL_S * 1000)}ms
  scrape_timeout: 400ms
scrape_configs:
  - job_name: web
    file_sd_configs:
      - files: ['targets/*.json']
        refresh_interval: 1h   # changes must be seen through file events
remote_write:
  - url: {rx.write_url}
    queue_config: {{batch_send_deadline: 200ms}}
""")
    mg = mt.start_moongate(h, yml)
    ok = mt.poll_until(lambda: rx.find("up", instance=t1.addr) and rx.find("up", instance=t2.addr), 15)
    c.check("file_sd: both targets of the file are scraped", bool(ok))
    k = next(iter(rx.find("good_requests_total", instance=t1.addr)), ())
    c.check("file_sd: group labels are target labels; __meta_filepath is not kept",
            dict(k).get("env") == "a" and not any(n.startswith("__meta") for n, _ in k))
    c.check("moongate_sd_discovered_targets{job=web} is 2",
            own_metric(mg, "moongate_sd_discovered_targets", job="web") == 2)

    # Rewrite: t1 goes, t3 comes, t2 stays.
    t0 = mt.now_ms()
    write_atomic(tfile, groups(t2, t3))
    got3 = mt.poll_until(lambda: rx.find("up", instance=t3.addr), 10)
    d3 = mt.now_ms() - t0
    st1 = mt.poll_until(lambda: stale(rx, "good_requests_total", instance=t1.addr), 10)
    d1 = (st1 - t0) if st1 else None
    c.check("file_sd: the added target is scraped", bool(got3), f"{d3} ms after the rewrite")
    c.check("file_sd: the dropped target's series get staleness markers (NaN)", bool(st1),
            f"{d1} ms after the rewrite")
    c.check("file_sd: the dropped target's up goes stale too", bool(stale(rx, "up", instance=t1.addr)))
    n1 = samples(rx, "up", instance=t1.addr)
    time.sleep(3 * INTERVAL_S)
    c.check("file_sd: the dropped target is not scraped any more",
            samples(rx, "up", instance=t1.addr) == n1)
    c.check("file_sd: the target that stayed has no staleness marker", stale(rx, "up", instance=t2.addr) is None)

    # Broken file: counted, targets kept.
    n2 = samples(rx, "up", instance=t2.addr)
    with open(tfile, "w") as f:
        f.write('[{"targets": ["' + t1.addr + '"],')
    failed = mt.poll_until(lambda: own_metric(mg, "moongate_sd_refresh_failures_total", kind="file") >= 1, 10)
    c.check("file_sd: a broken file counts in moongate_sd_refresh_failures_total{kind=file}", bool(failed))
    more = mt.poll_until(lambda: samples(rx, "up", instance=t2.addr) >= n2 + 3
                         and samples(rx, "up", instance=t3.addr) >= 3, 10)
    c.check("file_sd: a broken file keeps the previous targets", bool(more)
            and stale(rx, "up", instance=t2.addr) is None and stale(rx, "up", instance=t3.addr) is None
            and samples(rx, "up", instance=t1.addr) == n1)
    nlog = len([e for e in mt.log_events(mg.stderr(), "file_sd_read_failed") if e.get("file") == tfile])
    c.check("file_sd: the parse error is logged once, with the file", nlog == 1, f"{nlog} lines")

    # Reload with the same config: discovered targets keep their series.
    write_atomic(tfile, groups(t2, t3))
    mg.signal(signal.SIGHUP)
    mt.wait_for("reloaded", lambda: mt.log_events(mg.stderr(), "reloaded"), 10)
    n3 = samples(rx, "up", instance=t3.addr)
    mt.poll_until(lambda: samples(rx, "up", instance=t3.addr) >= n3 + 3, 10)
    c.check("reload: discovered targets of an unchanged source carry over without staleness",
            stale(rx, "up", instance=t3.addr) is None and stale(rx, "good_requests_total", instance=t2.addr) is None
            and samples(rx, "up", instance=t3.addr) >= n3 + 3)
    rc, _ = mg.stop()
    c.check("file_sd: exits 0 on SIGTERM", rc == 0, f"rc={rc}")
    c.check("file_sd: no wire-format violations", rx.nviolations == 0, str(rx.violations[:3]))
    mt.log(f"figures: file_sd rewrite -> new target's first sample {d3} ms, "
           f"dropped target's staleness marker {d1} ms (interval {int(INTERVAL_S * 1000)} ms)")


LUA = """local mg = require "moongate"
mg.remote_write{{ name = "rx", url = "{url}", queue = {{ batch_send_deadline = "200ms" }} }}
mg.global{{ scrape_interval = "500ms", scrape_timeout = "400ms" }}
local calls = 0
mg.scrape{{ job = "fn", labels = {{ team = "x" }}, targets = {{ refresh = "300ms", fn = function()
  calls = calls + 1
  if calls <= 4 then return {{ "{t1}", "{t2}" }} end
  if calls <= 6 then error("inventory unavailable") end
  return {{ "{t2}", {{ targets = {{ "{t3}" }}, labels = {{ tier = "new" }} }} }}
end }} }}
"""


def lua_targets(c, h):
    rx = h.add_server(mt.FakeReceiver())
    t1, t2, t3 = (h.add_server(mt.FakeTarget("good")) for _ in range(3))
    script = h.write("fn.lua", LUA.format(url=rx.write_url, t1=t1.addr, t2=t2.addr, t3=t3.addr))
    mg = mt.start_moongate(h, script, name="moongate_lua")
    ok = mt.poll_until(lambda: rx.find("up", instance=t1.addr, team="x") and rx.find("up", instance=t2.addr), 15)
    c.check("lua: the function's targets are scraped, with the job's labels", bool(ok))
    got3 = mt.poll_until(lambda: rx.find("up", instance=t3.addr, tier="new"), 15)
    c.check("lua: a changed list adds its new target (group labels kept)", bool(got3))
    st1 = mt.poll_until(lambda: stale(rx, "up", instance=t1.addr), 10)
    c.check("lua: the target left out goes stale", bool(st1))
    c.check("lua: the target that stayed has no staleness marker", stale(rx, "up", instance=t2.addr) is None)
    errs = mt.log_events(mg.stderr(), "lua_error")
    c.check("lua: the error is logged once although it happened twice",
            len([e for e in errs if "inventory unavailable" in e.get("err", "")]) == 1, f"{len(errs)} lines")
    c.check("lua: errors count in moongate_lua_errors_total{reason=error}",
            own_metric(mg, "moongate_lua_errors_total", reason="error") == 2)
    changes = [e for e in mt.log_events(mg.stderr(), "targets_discovered") if e.get("job") == "fn"]
    steps = [(e.get("added"), e.get("removed")) for e in changes]
    c.check("lua: errors kept the previous list (one change: +2, then +1/-1)", steps == [("2", "0"), ("1", "1")],
            str(steps))
    rc, _ = mg.stop()
    c.check("lua: exits 0 on SIGTERM", rc == 0, f"rc={rc}")


def example(c, h):
    """scripts/examples/file_sd_env_split.lua with its targets file written
    for three live targets: prod ones reach one receiver, staging the other,
    dev neither."""
    prod, staging = h.add_server(mt.FakeReceiver()), h.add_server(mt.FakeReceiver())
    tp, ts, td = (h.add_server(mt.FakeTarget("good")) for _ in range(3))
    src = os.path.join(mt.SOURCE_DIR, "scripts", "examples", "file_sd_env_split.lua")
    d = h.path("example")
    os.makedirs(d)
    script = os.path.join(d, "file_sd_env_split.lua")
    shutil.copy(src, script)
    write_atomic(os.path.join(d, "file_sd_env_split.targets.json"), json.dumps([
        {"targets": [tp.addr], "labels": {"env": "prod", "dc": "eu-1"}},
        {"targets": [ts.addr], "labels": {"env": "staging", "dc": "eu-1"}},
        {"targets": [td.addr], "labels": {"env": "dev"}},
    ]))
    env_backup = {k: os.environ.get(k) for k in ("PROD_WRITE_URL", "STAGING_WRITE_URL", "SCRAPE_INTERVAL")}
    os.environ.update(PROD_WRITE_URL=prod.write_url, STAGING_WRITE_URL=staging.write_url, SCRAPE_INTERVAL="500ms")
    try:
        mg = mt.start_moongate(h, script, name="moongate_example")
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    ok = mt.poll_until(lambda: prod.find("good_requests_total", instance=tp.addr)
                       and staging.find("good_requests_total", instance=ts.addr), 15)
    c.check("example: prod targets reach the prod receiver, staging the staging one", bool(ok))
    # Both receivers have had several batches: nothing else arrived.
    mt.poll_until(lambda: samples(prod, "up") >= 3 and samples(staging, "up") >= 3, 10)
    def inst(rx, synthetic):
        return {dict(k).get("instance") for k in rx.samples if (dict(k)["__name__"] in mt.SYNTHETIC) == synthetic}
    c.check("example: the prod receiver has scraped series of the prod target only", inst(prod, False) == {tp.addr},
            str(inst(prod, False)))
    c.check("example: the staging receiver has scraped series of the staging target only",
            inst(staging, False) == {ts.addr}, str(inst(staging, False)))
    c.check("example: the dev target is scraped, its series sent nowhere", td.requests > 0)
    c.check("example: up and scrape_* series of every target reach both (hooks skip them)",
            inst(prod, True) == inst(staging, True) == {tp.addr, ts.addr, td.addr})
    rc, _ = mg.stop()
    c.check("example: exits 0 on SIGTERM", rc == 0, f"rc={rc}")


def main():
    c = mt.Checks()
    for name, fn in (("sd_file", file_sd), ("sd_lua", lua_targets), ("sd_example", example)):
        with mt.Harness(name) as h:
            try:
                fn(c, h)
            except Exception as e:  # noqa: BLE001
                c.crashed(name, e)
                h.dump_logs()
    c.finish()


if __name__ == "__main__":
    main()
