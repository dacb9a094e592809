"""moongate's command line: --version, --help, `check` on valid and broken
Lua scripts and prometheus.yml files, and `run` on missing or broken files.

Every error case must exit non-zero, quickly, with a message that names the
file and line (file:line: ...) or the field at fault; valid configs must
print the plan (job, target, destination).
"""
import os
import re
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402

TIMEOUT = 20  # seconds for any one CLI call


def mg(*args, timeout=TIMEOUT, cwd=None):
    """Run moongate; return (rc, stdout, stderr). rc None = hung (killed)."""
    p = subprocess.Popen([mgtest.MOONGATE_BIN, *args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=10)
        return None, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def short(s, n=300):
    s = s.strip().replace("\n", " | ")
    return s if len(s) <= n else s[:n] + "..."


def project_version():
    with open(os.path.join(mgtest.SOURCE_DIR, "CMakeLists.txt")) as f:
        m = re.search(r"project\(\s*moongate\s+VERSION\s+([0-9][^\s)]*)", f.read())
    return m.group(1) if m else None


VALID_LUA = """local mg = require "moongate"
mg.global{ scrape_interval = "15s", scrape_timeout = "5s", external_labels = { env = "cli" } }
local amp = mg.remote_write{ name = "amp", url = "http://127.0.0.1:9/api/v1/write", queue = { batch_send_deadline = "1s" } }
mg.scrape{ job = "nodejob", interval = "15s", timeout = "5s", targets = { "127.0.0.1:9100", "127.0.0.1:9101" } }
"""

VALID_YML = """global:
  scrape_interval: 15s
  scrape_timeout: 5s
  external_labels:
    env: cli
scrape_configs:
  - job_name: ymljob
    metrics_path: /metrics
    scheme: http
    body_size_limit: 10MB
    sample_limit: 5000
    static_configs:
      - targets: ["127.0.0.1:9100"]
        labels:
          team: infra
remote_write:
  - url: http://127.0.0.1:9/api/v1/write
    name: ympdest
    remote_timeout: 30s
    queue_config:
      batch_send_deadline: 5s
      max_samples_per_send: 2000
"""

# A Lua syntax error on line 4 (unclosed table constructor).
LUA_SYNTAX = """local mg = require "moongate"
mg.global{ scrape_interval = "15s" }
local x = 1
mg.scrape{ job = "a", targets = { "127.0.0.1:9100" }
local y = = 2
"""

# A runtime error raised on line 3.
LUA_RUNTIME = """local mg = require "moongate"
local t = nil
local n = t.field
"""

# Misuse of the API on line 3: a job without a name.
LUA_API_MISUSE = """local mg = require "moongate"
mg.remote_write{ name = "amp", url = "http://127.0.0.1:9/api/v1/write" }
mg.scrape{ interval = "15s", targets = { "127.0.0.1:9100" } }
"""

# The sandbox has no io library (STYLE.md, "Sandbox"): line 2 must fail.
LUA_SANDBOX = """local mg = require "moongate"
local f = io.open("/etc/hostname")
mg.remote_write{ name = "amp", url = "http://127.0.0.1:9/api/v1/write" }
mg.scrape{ job = "a", targets = { "127.0.0.1:9100" } }
"""

# YAML syntax error on line 5 (a mapping value where none is allowed).
YML_SYNTAX = """global:
  scrape_interval: 15s
scrape_configs:
  - job_name: a
    static_configs: - targets: [x]: y
remote_write:
  - url: http://127.0.0.1:9/api/v1/write
"""

# relabel_configs (non-empty) on line 5.
YML_RELABEL = """scrape_configs:
  - job_name: a
    static_configs:
      - targets: ["127.0.0.1:9100"]
    relabel_configs:
      - source_labels: [__address__]
        target_label: host
remote_write:
  - url: http://127.0.0.1:9/api/v1/write
"""

# A key Prometheus does not know either, on line 3.
YML_UNKNOWN = """scrape_configs:
  - job_name: a
    no_such_field: 1
    static_configs:
      - targets: ["127.0.0.1:9100"]
remote_write:
  - url: http://127.0.0.1:9/api/v1/write
"""

# scrape_timeout larger than scrape_interval (Prometheus refuses it too).
YML_TIMEOUT = """scrape_configs:
  - job_name: a
    scrape_interval: 2s
    scrape_timeout: 5s
    static_configs:
      - targets: ["127.0.0.1:9100"]
remote_write:
  - url: http://127.0.0.1:9/api/v1/write
"""


def expect_error(c, name, args, fname, line=None, words=()):
    """Non-zero exit within TIMEOUT; the message names fname (and :line),
    and each regex in words."""
    rc, out, err = mg(*args)
    both = out + err
    c.check(f"{name}: exits non-zero", rc not in (0, None), f"rc={rc}" + (" (hung, killed)" if rc is None else ""))
    if rc is not None and rc < 0:
        c.check(f"{name}: no crash", False, f"killed by signal {-rc}: {short(err)}")
    if line is not None:
        c.check(f"{name}: message has {fname}:{line}", re.search(re.escape(fname) + rf":{line}\b", both),
                short(both))
    else:
        c.check(f"{name}: message names {fname}", fname in both, short(both))
    for w in words:
        c.check(f"{name}: message mentions /{w}/", re.search(w, both, re.I), short(both))
    return rc, out, err


def run_checks(c):
    with mgtest.Harness("cli") as h:
        # --version / --help
        rc, out, err = mg("--version")
        m = re.fullmatch(r"moongate (\S+)\n?", out)
        c.check("--version: exit 0 and prints `moongate <version>`", rc == 0 and m, f"rc={rc} out={out!r}")
        pv = project_version()
        c.check("--version: version matches CMakeLists.txt", m and pv and m.group(1).startswith(pv),
                f"{m.group(1) if m else None} vs {pv}")
        rc, out, err = mg("--help")
        c.check("--help: exit 0", rc == 0, f"rc={rc}")
        for w in ("run", "check", "--listen", "--data-dir", "--log-level", "--version"):
            c.check(f"--help: mentions {w}", w in out + err, "" if w in out + err else short(out + err, 200))

        # check: valid configs print the plan.
        lua = h.write("valid.lua", VALID_LUA)
        rc, out, err = mg("check", lua)
        both = out + err
        c.check("check valid.lua: exit 0", rc == 0, f"rc={rc}: {short(both)}")
        for w in ("nodejob", "127.0.0.1:9100", "127.0.0.1:9101", "amp"):
            c.check(f"check valid.lua: plan shows {w}", w in out, short(out, 200))
        yml = h.write("valid.yml", VALID_YML)
        rc, out, err = mg("check", yml)
        both = out + err
        c.check("check valid.yml: exit 0", rc == 0, f"rc={rc}: {short(both)}")
        for w in ("ymljob", "127.0.0.1:9100", "ympdest"):
            c.check(f"check valid.yml: plan shows {w}", w in out, short(out, 200))
        yaml2 = h.write("valid2.yaml", VALID_YML)
        rc, out, err = mg("check", yaml2)
        c.check("check valid2.yaml (.yaml extension): exit 0", rc == 0, f"rc={rc}: {short(out + err)}")

        # check: broken configs.
        expect_error(c, "check lua syntax error", ["check", h.write("syntax.lua", LUA_SYNTAX)], "syntax.lua", 5)
        expect_error(c, "check lua runtime error", ["check", h.write("runtime.lua", LUA_RUNTIME)], "runtime.lua", 3)
        expect_error(c, "check lua api misuse (job without name)",
                     ["check", h.write("misuse.lua", LUA_API_MISUSE)], "misuse.lua", 3, [r"\bjob\b"])
        expect_error(c, "check lua sandbox (io is not available)",
                     ["check", h.write("sandbox.lua", LUA_SANDBOX)], "sandbox.lua", 2, [r"\bio\b"])
        expect_error(c, "check yml syntax error", ["check", h.write("syntax.yml", YML_SYNTAX)], "syntax.yml", 5)
        rel = h.write("relabel.yml", YML_RELABEL)
        rc, out, err = mg("check", rel)
        if rc == 0:
            # Once relabeling is imported, the rule must show in the plan, not vanish.
            c.check("check relabel.yml: supported, and the plan shows the rule", re.search("relabel", out, re.I),
                    short(out))
        else:
            expect_error(c, "check relabel.yml (unsupported field)", ["check", rel], "relabel.yml", 5,
                         [r"relabel_configs"])
        expect_error(c, "check unknown field", ["check", h.write("unknown.yml", YML_UNKNOWN)], "unknown.yml", 3,
                     [r"no_such_field"])
        expect_error(c, "check scrape_timeout > scrape_interval", ["check", h.write("timeout.yml", YML_TIMEOUT)],
                     "timeout.yml", None, [r"timeout"])
        expect_error(c, "check unknown file kind", ["check", h.write("conf.txt", VALID_YML)], "conf.txt", None,
                     [r"\.lua|lua script", r"\.ya?ml|prometheus"])

        # Missing files.
        missing = h.path("nope", "missing.lua")
        expect_error(c, "run missing.lua", ["run", missing, "--listen", f"127.0.0.1:{mgtest.free_port()}",
                                            "--data-dir", h.path("d1")], missing, None,
                     [r"no such file|not found|cannot (read|open)|does not exist|ENOENT"])
        expect_error(c, "check missing.yml", ["check", h.path("missing.yml")], "missing.yml", None,
                     [r"no such file|not found|cannot (read|open)|does not exist|ENOENT"])

        # run refuses a broken config (and does not start serving).
        expect_error(c, "run lua syntax error", ["run", h.path("syntax.lua"), "--listen",
                                                 f"127.0.0.1:{mgtest.free_port()}", "--data-dir", h.path("d2")],
                     "syntax.lua", 5)
        # run refuses a --listen address it cannot bind (here: taken).
        busy = socket.socket()
        try:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            addr = f"127.0.0.1:{busy.getsockname()[1]}"
            expect_error(c, "run with --listen on a busy port", ["run", lua, "--listen", addr,
                                                                 "--data-dir", h.path("d4")],
                         addr, None, [r"in use|EADDRINUSE|bind"])
        finally:
            busy.close()
        # Bad usage.
        expect_error(c, "unknown command", ["frobnicate"], "frobnicate", None, [r"usage"])
        expect_error(c, "bad --log-level", ["run", lua, "--log-level", "loud", "--data-dir", h.path("d3")],
                     "loud", None, [r"--log-level"])


def main():
    c = mgtest.Checks()
    why = mgtest.moongate_usable()
    if why:
        c.check("moongate binary usable", False, why)
    else:
        try:
            run_checks(c)
        except Exception as e:  # noqa: BLE001
            c.crashed("cli", e)
    c.finish()


if __name__ == "__main__":
    main()
