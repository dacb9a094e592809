"""The status page (GET /) as a person sees it: loaded in headless Chromium
(Debian's chromium), the rendered DOM shows the targets with their health
and errors, the destinations with queue and credentials, and the
configuration with its last reload result."""
import os
import re
import shutil
import subprocess
import tempfile

import mgtest as mt

CHROMIUM = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"


def render(url, tmp):
    """The DOM after Chromium ran the page (no scripts in it, but this is
    what a browser shows)."""
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp}", "--dump-dom", url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr[-500:]


def main():
    c = mt.Checks()
    with mt.Harness("status") as h:
        good = h.add_server(mt.FakeTarget("good"))
        bad = h.add_server(mt.FakeTarget("garbage"))
        rx = h.add_server(mt.FakeReceiver())
        script = h.write("moongate.lua", f"""local mg = require "moongate"
mg.remote_write{{ name = "local-prom", url = "{rx.write_url}", queue = {{ batch_send_deadline = "200ms" }} }}
mg.scrape{{ job = "web", interval = "500ms", timeout = "400ms", targets = {{ "{good.addr}", "{bad.addr}" }} }}
""")
        mg = mt.start_moongate(h, script)
        mt.wait_for("both targets scraped", lambda: rx.find("up", instance=bad.addr) and rx.find("up", instance=good.addr),
                    15)
        # A broken reload shows on the page.
        with open(script, "a") as f:
            f.write("mg.scrape{\n")
        mt.http_request(mg.base + "/-/reload", data=b"", method="POST")
        if not os.path.exists(CHROMIUM):
            c.check("chromium is installed (deps/apt-packages-test.txt)", False, CHROMIUM)
            c.finish()
        tmp = tempfile.mkdtemp(prefix="mg-chromium-")
        try:
            rc, dom, err = render(mg.base + "/", tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        c.check("chromium renders the page", rc == 0 and "<h1>moongate</h1>" in dom, f"rc={rc} {err}")
        c.check("targets table lists both endpoints", good.addr in dom and bad.addr in dom)
        c.check("the healthy target shows up, the broken one down with its parse error",
                'class="up">up<' in dom and 'class="down">down<' in dom and "line 3" in dom)
        c.check("destinations table shows the receiver and sent samples",
                "local-prom" in dom and rx.write_url.split("//")[1] in dom)
        m = re.search(r"last reload</th><td>(.*?)</td>", dom)
        c.check("the failed reload is shown with file:line",
                m and "failed" in m.group(1) and re.search(r"moongate\.lua:\d+:", m.group(1)), m and m.group(1))
        st, _, body = mt.http_get(mg.base + "/")
        c.check("GET / answers text/html directly too", st == 200 and body.startswith(b"<!DOCTYPE html>"))
        rc, _ = mg.stop()
        c.check("exits 0", rc == 0)
    c.finish()


if __name__ == "__main__":
    main()
