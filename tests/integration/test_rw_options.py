"""Per-workspace options of the Lua API, end to end:
- external_labels on one workspace: its series get them (after the global
  ones, only where a series has no such label, `$` kept literally); the
  other workspace's series do not;
- buffer: the default is a durable buffer in DATA_DIR/wal/<name>;
  memory_only = true makes none; max_size below 1MiB is refused by check.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402
from mgtest import wait_for  # noqa: E402


def run(c):
    with mgtest.Harness("rw-options") as h:
        ra = h.add_server(mgtest.FakeReceiver())
        rb = h.add_server(mgtest.FakeReceiver())
        tgt = h.add_server(mgtest.FakeTarget("good"))
        script = h.write("ws.lua", f"""local mg = require "moongate"
mg.global{{ external_labels = {{ region = "eu" }} }}
local a = mg.remote_write{{ name = "team-a", url = "{ra.write_url}",
  external_labels = {{ tenant = "x$1", kind = "ignored" }} }}
local b = mg.remote_write{{ name = "team-b", url = "{rb.write_url}", buffer = {{ memory_only = true }} }}
mg.scrape{{ job = "ws", interval = "1s", timeout = "900ms", targets = {{ "{tgt.addr}" }} }}
""")
        gw = mgtest.start_moongate(h, script)
        fa = wait_for("team-a gets good_gauge", lambda: ra.find("good_gauge") or None, 20)
        fb = wait_for("team-b gets good_gauge", lambda: rb.find("good_gauge") or None, 20)
        la = [dict(k) for k in fa]
        lb = [dict(k) for k in fb]
        c.check("team-a's series carry its external label (value with $ kept)",
                la and all(d.get("tenant") == "x$1" and d.get("region") == "eu" for d in la), f"{la[:1]}")
        c.check("a label the series already has is not overwritten (kind)",
                all(d.get("kind") in ("a", "b") for d in la), f"{sorted({d.get('kind') for d in la})}")
        c.check("team-b's series do not get team-a's labels",
                lb and all("tenant" not in d and d.get("region") == "eu" for d in lb), f"{lb[:1]}")
        data = h.path("moongate-data", "wal")
        c.check("team-a has a durable buffer, team-b (memory_only) none",
                os.path.isdir(os.path.join(data, "team-a")) and not os.path.exists(os.path.join(data, "team-b")),
                f"{sorted(os.listdir(data)) if os.path.isdir(data) else 'no wal dir'}")
        mgtest.stop_gateway(c, "exits 0 on SIGTERM", gw)

        bad = h.write("bad.lua", f"""local mg = require "moongate"
mg.remote_write{{ name = "x", url = "{ra.write_url}", buffer = {{ max_size = "512KiB" }} }}
mg.scrape{{ job = "ws", targets = {{ "{tgt.addr}" }} }}
""")
        p = subprocess.run([mgtest.MOONGATE_BIN, "check", bad], capture_output=True, text=True, timeout=30)
        c.check("check refuses buffer.max_size under 1MiB with the field named",
                p.returncode != 0 and "buffer.max_size" in p.stderr, f"rc={p.returncode} {p.stderr.strip()[:200]}")
        ok = h.write("ok.lua", f"""local mg = require "moongate"
mg.remote_write{{ name = "x", url = "{ra.write_url}", buffer = {{ max_size = "64MiB", max_age = "2h" }} }}
mg.scrape{{ job = "ws", targets = {{ "{tgt.addr}" }} }}
""")
        p = subprocess.run([mgtest.MOONGATE_BIN, "check", ok], capture_output=True, text=True, timeout=30)
        c.check("check prints the buffer settings", p.returncode == 0 and "max_size=67108864B max_age=2h" in p.stdout,
                f"rc={p.returncode} {[ln for ln in p.stdout.splitlines() if 'buffer' in ln]}")


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
