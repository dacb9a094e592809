#!/usr/bin/python3
"""Draw the cost curve of a run-matrix result file as an SVG (standard
library only): CPU per sample and RSS against active series, one line per
contender, the mean of the repetitions at each size (every repetition is a
dot). Only runs without gzip/relabel are drawn unless --all.

    bench/plot.py results/FILE.jsonl docs/img/cost-curve.svg
"""
import json
import sys
from collections import defaultdict

W, H = 940, 380
PANEL_W, PANEL_H = 380, 260
COLORS = {"moongate": "#1b7f3b", "vmagent": "#1f5fbf", "prometheus-agent": "#c0392b"}
FALLBACK = ["#7d3c98", "#b9770e", "#17a589"]


def load(path, everything):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if not everything and (r.get("gzip") or r.get("relabel")):
                continue
            name = r["contender"].split("/")[-1].removesuffix(".sh")
            rows.append((name, r["active_series"], r["cpu_us_per_sample"], r["rss_mean_mib"]))
    return rows


def nice_max(v):
    for e in range(-3, 8):
        for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8):
            top = m * 10 ** e
            if top >= v:
                return top
    return v


def log_range(lo, hi):
    a, b = 0, 0
    while 10 ** a > lo:
        a -= 1
    while 10 ** a * 10 <= lo:
        a += 1
    b = a + 1
    while 10 ** b < hi:
        b += 1
    return a, b


def panel(out, x0, y0, title, unit, series, xs_max, ys_max, log=None):
    """series: {name: [(x, [y...])]}; log=(a, b): y on a log scale from
    10**a to 10**b (ys_max unused)."""
    def ypos(v):
        if log:
            import math
            return PANEL_H - PANEL_H * (math.log10(max(v, 10 ** log[0])) - log[0]) / (log[1] - log[0])
        return PANEL_H - PANEL_H * v / ys_max
    out.append(f'<g transform="translate({x0},{y0})">')
    out.append(f'<text x="{PANEL_W / 2}" y="-12" text-anchor="middle" font-weight="bold">{title}</text>')
    out.append(f'<line x1="0" y1="{PANEL_H}" x2="{PANEL_W}" y2="{PANEL_H}" stroke="#333"/>')
    out.append(f'<line x1="0" y1="0" x2="0" y2="{PANEL_H}" stroke="#333"/>')
    yticks = [10 ** e for e in range(log[0], log[1] + 1)] if log else [ys_max * i / 4 for i in range(5)]
    for yv in yticks:
        y = ypos(yv)
        out.append(f'<line x1="0" y1="{y:.1f}" x2="{PANEL_W}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="-6" y="{y + 4:.1f}" text-anchor="end" font-size="11">{yv:g}</text>')
    for i in range(5):
        xv = xs_max * i / 4
        x = PANEL_W * i / 4
        out.append(f'<text x="{x}" y="{PANEL_H + 16}" text-anchor="middle" font-size="11">{xv / 1000:g}k</text>')
    out.append(f'<text x="{PANEL_W / 2}" y="{PANEL_H + 34}" text-anchor="middle" font-size="12">active series</text>')
    out.append(f'<text transform="translate(-44,{PANEL_H / 2}) rotate(-90)" text-anchor="middle" '
               f'font-size="12">{unit}</text>')
    for k, (name, pts) in enumerate(sorted(series.items())):
        color = COLORS.get(name, FALLBACK[k % len(FALLBACK)])
        pts = sorted(pts)
        path = []
        for x, ys in pts:
            px = PANEL_W * x / xs_max
            mean = sum(ys) / len(ys)
            path.append(f"{px:.1f},{ypos(mean):.1f}")
            for y in ys:
                out.append(f'<circle cx="{px:.1f}" cy="{ypos(y):.1f}" r="3" fill="{color}"/>')
        out.append(f'<polyline points="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="2"/>')
    out.append("</g>")


def main(argv):
    everything = "--all" in argv
    args = [a for a in argv[1:] if a != "--all"]
    if len(args) != 2:
        sys.exit(__doc__)
    rows = load(args[0], everything)
    if not rows:
        sys.exit(f"{args[0]}: no runs to draw")
    cpu, rss = defaultdict(lambda: defaultdict(list)), defaultdict(lambda: defaultdict(list))
    for name, x, c, r in rows:
        cpu[name][x].append(c)
        rss[name][x].append(r)
    xs_max = nice_max(max(r[1] for r in rows))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="13"><rect width="100%" height="100%" fill="white"/>']
    panel(out, 70, 40, "CPU per sample (lower is better)", "µs of CPU per sample",
          {n: list(v.items()) for n, v in cpu.items()}, xs_max, nice_max(max(r[2] for r in rows)))
    panel(out, 70 + PANEL_W + 80, 40, "Resident memory (lower is better, log scale)", "RSS, MiB",
          {n: list(v.items()) for n, v in rss.items()}, xs_max, 0,
          log=log_range(min(r[3] for r in rows), max(r[3] for r in rows)))
    ly = H - 18
    for k, name in enumerate(sorted(cpu)):
        color = COLORS.get(name, FALLBACK[k % len(FALLBACK)])
        out.append(f'<rect x="{70 + k * 190}" y="{ly - 10}" width="14" height="4" fill="{color}"/>'
                   f'<text x="{90 + k * 190}" y="{ly - 4}">{name}</text>')
    out.append("</svg>")
    with open(args[1], "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"{args[1]}: {len(rows)} runs, {len(cpu)} contenders")


if __name__ == "__main__":
    main(sys.argv)
