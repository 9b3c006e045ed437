#!/usr/bin/env python3
"""Summarises docs/bench/sweep.sh output: the mean of the alternated runs per policy and rate, and
the default's ratio to the best baseline (strict and mean goodput). Usage: python3 live_table.py
< sweep.md"""
import sys
from collections import defaultdict

DEFAULT = "accellm/accelgen"
runs = defaultdict(list)
for line in sys.stdin:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 14 or not cells[1].replace(".", "").isdigit():
        continue
    policy, rate = cells[0], float(cells[1])
    nums = lambda c: float(c.rstrip("%")) if c not in ("nan", "") else float("nan")
    runs[(policy, rate)].append({
        "done": cells[3], "tok": nums(cells[4]), "ttft50": nums(cells[5]), "ttft99": nums(cells[6]),
        "tpot50": nums(cells[7]), "itl99": nums(cells[8]), "strict": nums(cells[11]),
        "mean": nums(cells[12]),
    })
avg = lambda xs, k: sum(x[k] for x in xs) / len(xs)
print("| policy | rate req/s | runs | done | out tok/s | TTFT p50 / p99 ms | TPOT p50 ms | ITL p99 ms "
      "| goodput strict req/s | goodput mean req/s |")
print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
for (p, r), xs in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0] != DEFAULT, kv[0][0])):
    print(f"| {p} | {r:g} | {len(xs)} | {', '.join(x['done'] for x in xs)} | {avg(xs, 'tok'):.1f} "
          f"| {avg(xs, 'ttft50'):.0f} / {avg(xs, 'ttft99'):.0f} | {avg(xs, 'tpot50'):.1f} "
          f"| {avg(xs, 'itl99'):.0f} | {avg(xs, 'strict'):.2f} | {avg(xs, 'mean'):.2f} |")
print()
print("| rate req/s | default strict | best baseline strict | ratio | default mean | best baseline mean | ratio |")
print("|---:|---:|---|---:|---:|---|---:|")
for r in sorted({r for _, r in runs}):
    base = [(p, xs) for (p, rr), xs in runs.items() if rr == r and p != DEFAULT]
    if (DEFAULT, r) not in runs or not base:
        continue
    d = runs[(DEFAULT, r)]
    row = [f"{r:g}"]
    for k in ("strict", "mean"):
        bp, bx = max(base, key=lambda b: avg(b[1], k))
        ours, best = avg(d, k), avg(bx, k)
        row += [f"{ours:.2f}", f"{best:.2f} ({bp})", f"{ours / best:.2f}x" if best > 0 else "-"]
    print("| " + " | ".join(row) + " |")
