"""End to end against real peers: node_exporter -> moongate ->
VictoriaMetrics single-node 1.79 (remote write at /api/v1/write), configured
by a Lua script.

Checks: series set and values equal the exporter's (read back through VM's
raw /api/v1/export), the synthetic per-target series, and what VM really does
with moongate's staleness markers once the exporter dies (it stores the
Prometheus stale NaN, which export shows, and queries stop returning the
series). MG_REFERENCE=prometheus runs the same flow with Prometheus as the
gateway (yml config), to validate this harness.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402


def main():
    c = mgtest.Checks()
    kind = "yml" if mgtest.reference_mode() else "lua"
    name = f"victoria/{kind}"
    why = None if mgtest.reference_mode() else mgtest.moongate_usable()
    if why:
        c.check(f"{name}: moongate binary usable", False, why)
    else:
        try:
            mgtest.e2e_flow(c, name, "victoria", kind)
        except Exception as e:  # noqa: BLE001
            c.crashed(name, e)
    c.finish()


if __name__ == "__main__":
    main()
