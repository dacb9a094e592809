"""End to end against real peers: node_exporter -> moongate -> Prometheus 2.42
(remote-write receiver), once configured by a Lua script and once by a
prometheus.yml, each with a fresh receiver and exporter.

Checks: the receiver's series for job="node" equal the exporter's, label for
label (plus job, instance and the external label); values equal for series
stable across two direct scrapes; the synthetic per-target series; up=0 and
staleness once the exporter dies; moongate's own metrics, health endpoints and
a clean exit on SIGTERM. MG_REFERENCE=prometheus runs the yml flow with
Prometheus as the gateway, to validate this harness.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402


def main():
    c = mgtest.Checks()
    kinds = ["yml"] if mgtest.reference_mode() else ["lua", "yml"]
    why = None if mgtest.reference_mode() else mgtest.moongate_usable()
    for kind in kinds:
        name = f"prometheus/{kind}"
        if why:
            c.check(f"{name}: moongate binary usable", False, why)
            continue
        try:
            mgtest.e2e_flow(c, name, "prometheus", kind)
        except Exception as e:  # noqa: BLE001 - one sub-test must not hide the next
            c.crashed(name, e)
    c.finish()


if __name__ == "__main__":
    main()
