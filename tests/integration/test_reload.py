"""Hot reload (POST /-/reload and SIGHUP): a good script is swapped in with
the queue kept, route decisions are made again for existing series, a
target that went away gets staleness markers, a broken script leaves the
running one in place (with file:line in the answer, log and metrics), and
the reload token is enforced."""
import signal
import time

import mgtest as mt

SCRIPT = """local mg = require "moongate"
local rx = mg.remote_write{{ name = "rx", url = "{url}", queue = {{ batch_send_deadline = "200ms" }} }}
mg.scrape{{ job = "{job}", interval = "500ms", timeout = "400ms", targets = {{ "{target}" }} }}
{hook}
"""

DROP_ALL = 'function mg.route(s) if s.name == "good_requests_total" then return nil end return rx end'


def reload(base, token=None):
    hdrs = {"Authorization": f"Bearer {token}"} if token else {}
    st, _, body = mt.http_request(base + "/-/reload", data=b"", method="POST", headers=hdrs)
    return st, body.decode()


def main():
    c = mt.Checks()
    with mt.Harness("reload") as h:
        rx = h.add_server(mt.FakeReceiver())
        t1 = h.add_server(mt.FakeTarget("good"))
        t2 = h.add_server(mt.FakeTarget("good"))
        token_file = h.write("token", "s3cret-token\n")
        script = h.path("moongate.lua")

        def write(job, target, hook=""):
            with open(script, "w") as f:
                f.write(SCRIPT.format(url=rx.write_url, job=job, target=target, hook=hook))

        write("a", t1.addr, DROP_ALL)
        mg = mt.start_moongate(h, script, extra=["--reload-token-file", token_file])
        mt.wait_for("first scrape of a", lambda: rx.find("up", job="a"), 15)
        c.check("route hook drops good_requests_total before the reload",
                not rx.find("good_requests_total", job="a"))

        # Same target, new rules: the series is decided again and now sent.
        write("a", t1.addr, "")
        st, body = reload(mg.base)
        c.check("reload without the token is refused with 401", st == 401, f"{st} {body!r}")
        st, body = reload(mg.base, "s3cret-token")
        c.check("reload with the token answers 200", st == 200, f"{st} {body!r}")
        got = mt.poll_until(lambda: rx.find("good_requests_total", job="a"), 15)
        c.check("existing series are decided again under the new rules", bool(got))

        # Another target: the old one is retired with staleness markers.
        write("b", t2.addr, "")
        mg.signal(signal.SIGHUP)
        mt.wait_for("first scrape of b", lambda: rx.find("up", job="b"), 15)

        def stale_of_a():
            s = rx.find("good_requests_total", job="a")
            return s and any(mt.is_stale_nan(v) for pts in s.values() for _, v in pts)
        c.check("the removed target's series get a staleness marker", bool(mt.poll_until(stale_of_a, 10)))
        up_a = rx.find("up", job="a")
        c.check("the removed target's up series is marked stale too",
                any(mt.is_stale_nan(v) for pts in up_a.values() for _, v in pts))

        # A broken script: refused, the running plan stays.
        with open(script, "a") as f:
            f.write("mg.scrape{ job = \n")
        st, body = reload(mg.base, "s3cret-token")
        c.check("a broken script is refused with 500 and file:line", st == 500 and "moongate.lua:6:" in body,
                f"{st} {body!r}")
        n0 = len(rx.find("up", job="b").popitem()[1]) if rx.find("up", job="b") else 0
        time.sleep(1.5)
        n1 = len(rx.find("up", job="b").popitem()[1]) if rx.find("up", job="b") else 0
        c.check("scraping goes on with the previous plan", n1 > n0, f"up samples {n0} -> {n1}")
        m = mt.fetch_own_metrics(mg.base)
        c.check("moongate_config_last_reload_successful is 0",
                mt.metric_sum(m, "moongate_config_last_reload_successful") == 0)
        c.check("moongate_config_reloads_failed_total counts it",
                mt.metric_sum(m, "moongate_config_reloads_failed_total") == 1)
        c.check("reload_failed is logged with file:line",
                any("moongate.lua:6:" in e.get("error", "") for e in mt.log_events(mg.stderr(), "reload_failed")))
        c.check("the token never appears in the log", "s3cret-token" not in mg.stderr())
        rc, _ = mg.stop()
        c.check("exits 0 on SIGTERM", rc == 0, f"rc={rc}")
        c.check("no wire-format violations", rx.nviolations == 0, str(rx.violations[:3]))
    c.finish()


if __name__ == "__main__":
    main()
