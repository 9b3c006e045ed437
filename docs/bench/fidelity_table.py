#!/usr/bin/env python3
"""Tables of docs/fidelity.md from the JSON files docs/bench/fidelity.sh writes.

Usage: python3 docs/bench/fidelity_table.py OUT_DIR
Each cell (policy pair, rate) was measured once per repetition; the prediction is the same for
every repetition (same requests, same profile). Errors are (predicted - measured) / measured of
the mean measured value; "spread" is the range of the measured values over the repetitions.
"""
import collections
import glob
import json
import os
import re
import sys

out = sys.argv[1]
cells = collections.defaultdict(list)
for path in sorted(glob.glob(os.path.join(out, "*_r*_rep*.json"))):
    m = re.match(r"(.+)_r([0-9.]+)_rep(\d+)\.json", os.path.basename(path))
    d = json.load(open(path))
    if "fidelity" not in d:
        continue
    policy = m.group(1).replace("_", "/", 1)
    cells[(policy, float(m.group(2)))].append(d["fidelity"])

loads = collections.defaultdict(list)
lp = os.path.join(out, "loads.txt")
if os.path.exists(lp):
    for line in open(lp):
        p, rate, rep, l0, l1 = line.split()[:5]
        loads[(p, float(rate))] += [float(l0), float(l1)]

METRICS = [("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("E2E", "e2e_ms")]


def good(side, kind="strict"):
    """Goodput of one side: `goodput_strict`/`goodput_mean` (older files: `goodput`, strict)."""
    if f"goodput_{kind}" in side:
        return side[f"goodput_{kind}"]
    g = side["goodput"]
    return g if isinstance(g, (int, float)) else g[kind]


def err(p, m):
    return float("nan") if m == 0 else (p - m) / m * 100


def fmt_err(e):
    return "n/a" if e != e else f"{e:+.0f}%"


policies = sorted({p for p, _ in cells}, key=lambda p: (p != "accellm/accelgen", p))
rates = sorted({r for _, r in cells})
hdr = "| policy | rate | load avg | " + " | ".join(
    f"{n} {q} pred / meas (err)" for n, _ in METRICS for q in ("p50", "p99")
) + " | goodput (strict) pred / meas |"
print(hdr)
print("|" + "---|" * (hdr.count("|") - 1))
within = collections.Counter()
for rate in rates:
    for policy in policies:
        fs = cells.get((policy, rate))
        if not fs:
            continue
        pred = fs[0]["predicted"]
        row = [policy, f"{rate:g}"]
        ld = loads.get((policy, rate))
        row.append(f"{min(ld):.1f}–{max(ld):.1f}" if ld else "")
        for _, k in METRICS:
            for q, bound in (("p50", 10), ("p99", 25)):
                ms = [f["measured"][k][q] for f in fs]
                mean = sum(ms) / len(ms)
                e = err(pred[k][q], mean)
                within[(q, abs(e) <= bound)] += 1
                spread = f"{min(ms):.0f}–{max(ms):.0f}" if len(ms) > 1 else f"{mean:.0f}"
                row.append(f"{pred[k][q]:.0f} / {spread} ({fmt_err(e)})")
        gm = [good(f["measured"]) for f in fs]
        row.append(f"{good(pred):.2f} / " + ("–".join(f"{g:.2f}" for g in sorted({min(gm), max(gm)}))))
        print("| " + " | ".join(row) + " |")

print()
print(f"p50 within 10%: {within[('p50', True)]} of {within[('p50', True)] + within[('p50', False)]}; "
      f"p99 within 25%: {within[('p99', True)]} of {within[('p99', True)] + within[('p99', False)]}")
for kind in ("strict", "mean"):
    print()
    print(f"| rate | ranking by predicted goodput ({kind}) | ranking by measured goodput ({kind}, mean of reps) | same |")
    print("|---|---|---|---|")
    for rate in rates:
        ps = [p for p in policies if (p, rate) in cells]
        if not ps or (kind == "mean" and "goodput_mean" not in cells[(ps[0], rate)][0]["predicted"]):
            continue
        pred = {p: good(cells[(p, rate)][0]["predicted"], kind) for p in ps}
        meas = {p: sum(good(f["measured"], kind) for f in cells[(p, rate)]) / len(cells[(p, rate)]) for p in ps}
        rp = sorted(ps, key=lambda p: -pred[p])
        rm = sorted(ps, key=lambda p: -meas[p])
        show = lambda r, v: " > ".join(f"{p} ({v[p]:.2f})" for p in r)
        print(f"| {rate:g} | {show(rp, pred)} | {show(rm, meas)} | {'yes' if rp == rm else 'no'} |")

print()
print("| policy | rate | iterations pred / meas | mean iteration ms pred / meas | counts equal (requests, prompt, output tokens) |")
print("|---|---|---|---|---|")
for rate in rates:
    for policy in policies:
        fs = cells.get((policy, rate))
        if not fs:
            continue
        pi = fs[0]["predicted_iterations"]
        mi = [f["measured_iterations"] for f in fs if f.get("measured_iterations")]
        eq = all(
            f["predicted"][k] == f["measured"][k]
            for f in fs
            for k in ("completed", "prompt_tokens", "output_tokens")
        )
        print(f"| {policy} | {rate:g} | {pi['count']} / " + ", ".join(str(m["count"]) for m in mi)
              + f" | {pi['mean_ms']:.1f} / " + ", ".join(f"{m['mean_ms']:.1f}" for m in mi)
              + f" | {'yes' if eq else 'no'} |")
