"""Scale-out: N replicas with --shard K/N over M targets scrape each target
exactly once between them (Prometheus's hashmod of __address__, the same
in every replica); --ha-cluster/--ha-replica add the labels AMP uses to
deduplicate an HA pair."""
import collections

import mgtest as mt

N, M = 3, 12


def main():
    c = mt.Checks()
    with mt.Harness("shard") as h:
        targets = [h.add_server(mt.FakeTarget("good")) for _ in range(M)]
        receivers = [h.add_server(mt.FakeReceiver()) for _ in range(N)]
        addrs = ", ".join(f'"{t.addr}"' for t in targets)
        procs = []
        for k in range(N):
            script = h.write(f"s{k}.lua", f"""local mg = require "moongate"
mg.remote_write{{ name = "rx", url = "{receivers[k].write_url}", queue = {{ batch_send_deadline = "200ms" }} }}
mg.scrape{{ job = "fleet", interval = "500ms", timeout = "400ms", targets = {{ {addrs} }} }}
""")
            # K given as a StatefulSet pod name for one replica.
            shard = f"moongate-{k}/{N}" if k == 1 else f"{k}/{N}"
            procs.append(mt.start_moongate(h, script, name=f"moongate{k}",
                                           extra=["--shard", shard, "--ha-cluster", "eu1", "--ha-replica", f"r{k}"]))
        def instances():
            seen = collections.defaultdict(set)
            for k, rx in enumerate(receivers):
                for key in rx.find("up"):
                    seen[dict(key)["instance"]].add(k)
            return seen
        mt.wait_for("every target's up series delivered", lambda: len(instances()) == M, 20)
        # A few more intervals: a second replica scraping a target would show now.
        mt.wait_for("two more scrapes of every target", lambda: all(t.requests >= 3 for t in targets), 20)
        seen = instances()
        once = [a for a, ks in seen.items() if len(ks) == 1]
        c.check(f"{M} targets over {N} replicas: each scraped by exactly one",
                len(seen) == M and len(once) == M, {a: sorted(ks) for a, ks in seen.items()})
        per = [sum(1 for ks in seen.values() if k in ks) for k in range(N)]
        c.check("every replica has a share", all(per), f"targets per replica {per}")
        ok = all(dict(key).get("cluster") == "eu1" and dict(key).get("__replica__") == f"r{k}"
                 for k, rx in enumerate(receivers) for key in rx.find("up"))
        c.check("HA labels cluster and __replica__ on every series", ok)
        for k, p in enumerate(procs):
            rc, _ = p.stop()
            c.check(f"replica {k} exits 0", rc == 0, f"rc={rc}")
    c.finish()


if __name__ == "__main__":
    main()
