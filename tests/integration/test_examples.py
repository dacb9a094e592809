"""Every example under scripts/examples/ is checked: `moongate check` accepts
it, and where an input exposition file sits next to it
(NAME.input.prom, with extra arguments in NAME.args, one line per run),
`moongate test` prints exactly NAME.expected. Also runs scripts that throw
or loop forever in hooks: moongate must keep going and apply the fallback."""
import os
import subprocess
import sys
import tempfile

BIN = os.environ.get("MOONGATE_BIN", "build/moongate")
SRC = os.environ.get("MG_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
EXAMPLES = os.path.join(SRC, "scripts", "examples")

passed = failed = 0


def check(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   - {what}")
    else:
        failed += 1
        print(f"FAIL - {what}\n{detail}")


def run(args, **kw):
    return subprocess.run([BIN] + args, capture_output=True, text=True, timeout=60, **kw)


names = sorted(f for f in os.listdir(EXAMPLES) if f.endswith((".lua", ".yml", ".yaml")))
for f in names:
    path = os.path.join(EXAMPLES, f)
    r = run(["check", path])
    check(r.returncode == 0, f"check {f}", r.stderr)
    stem = f.rsplit(".", 1)[0]
    inp = os.path.join(EXAMPLES, stem + ".input.prom")
    if not os.path.exists(inp):
        continue
    # NAME.args: one line of arguments per run; NAME.expected holds the
    # outputs of the runs in that order (no .args: one run, no arguments).
    runs = [[]]
    if os.path.exists(os.path.join(EXAMPLES, stem + ".args")):
        runs = [ln.split() for ln in open(os.path.join(EXAMPLES, stem + ".args")) if ln.strip()]
    out, rc, err = "", 0, ""
    for args in runs:
        r = run(["test", path, "--input", inp] + args)
        out, rc, err = out + r.stdout, rc or r.returncode, err + r.stderr
    want = open(os.path.join(EXAMPLES, stem + ".expected")).read()
    check(rc == 0 and out == want, f"test {f} matches {stem}.expected",
          f"rc={rc}\n--- got\n{out}\n--- want\n{want}\n--- stderr\n{err}")

# Hooks that fail: an error, an endless loop, a bad result. Each series
# takes the fallback, the run completes, and each failure is logged.
with tempfile.TemporaryDirectory() as d:
    script = os.path.join(d, "broken.lua")
    with open(script, "w") as fh:
        fh.write('''local mg = require "moongate"
local a = mg.remote_write{ name = "a", url = "http://127.0.0.1:1/api/v1/write" }
local b = mg.remote_write{ name = "b", url = "http://127.0.0.1:2/api/v1/write" }
mg.scrape{ job = "j", targets = { "h:1" } }
mg.fallback = b
function mg.route(s)
  if s.name == "throws" then error("boom") end
  if s.name == "loops" then while true do end end
  if s.name == "weird" then return "not a destination" end
  return a
end
''')
    inp = os.path.join(d, "in.prom")
    with open(inp, "w") as fh:
        fh.write("throws 1\nloops 2\nweird 3\nfine 4\n")
    r = run(["test", script, "--input", inp])
    lines = r.stdout.splitlines()
    check(r.returncode == 0 and len(lines) == 4, "broken hooks: every series is still handled", r.stdout + r.stderr)
    check(all(l.endswith("-> b") for l in lines[:3]) and lines[3].endswith("-> a"),
          "broken hooks: failing series take mg.fallback, the good one its route", r.stdout)
    check("boom" in r.stderr and "instruction budget exceeded" in r.stderr and "hook_bad_result" in r.stderr,
          "broken hooks: error, endless loop and bad result are each logged", r.stderr)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
