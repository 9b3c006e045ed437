#!/usr/bin/env python3
"""Summarises docs/bench/sweep.sh output: the mean of the alternated runs per policy and rate, and
the default's ratio to the best baseline (strict and mean goodput). Usage: python3 live_table.py
< sweep.md, or python3 live_table.py OUT_DIR for the JSON files of docs/bench/fidelity.sh (then
also the simulator's ratio on the same requests). DEFAULT=accellm/accelgen+knobs names the
default's row; other rows whose cluster policy is accellm with AccelGen (variants of it) are not
baselines."""
import glob
import json
import os
import re
import sys
from collections import defaultdict

DEFAULT = os.environ.get("DEFAULT", "accellm/accelgen")
runs = defaultdict(list)
predicted = {}
if len(sys.argv) > 1:
    for path in sorted(glob.glob(os.path.join(sys.argv[1], "*_r*_rep*.json"))):
        m = re.match(r"(.+)_r([0-9.]+)_rep(\d+)\.json", os.path.basename(path))
        d = json.load(open(path))
        key = (m.group(1).replace("_", "/", 1), float(m.group(2)))
        runs[key].append({
            "done": f"{d['completed']}/{d['num_prompts']}", "tok": d["output_throughput"],
            "ttft50": d["p50_ttft_ms"], "ttft99": d["p99_ttft_ms"], "tpot50": d["p50_tpot_ms"],
            "itl99": d["p99_itl_ms"], "strict": d["goodput_strict"], "mean": d["goodput_mean"],
        })
        if "fidelity" in d:
            p = d["fidelity"]["predicted"]
            predicted[key] = {"strict": p["goodput_strict"], "mean": p["goodput_mean"]}
for line in ([] if len(sys.argv) > 1 else sys.stdin):
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
if predicted:
    print("| rate req/s | default strict | best baseline strict | ratio | ratio predicted | default mean "
          "| best baseline mean | ratio | ratio predicted |")
    print("|---:|---:|---|---:|---:|---:|---|---:|---:|")
else:
    print("| rate req/s | default strict | best baseline strict | ratio | default mean | best baseline mean "
          "| ratio |")
    print("|---:|---:|---|---:|---:|---|---:|")
is_base = lambda p: not p.startswith("accellm/accelgen")
for r in sorted({r for _, r in runs}):
    base = [(p, xs) for (p, rr), xs in runs.items() if rr == r and is_base(p)]
    if (DEFAULT, r) not in runs or not base:
        continue
    d = runs[(DEFAULT, r)]
    row = [f"{r:g}"]
    for k in ("strict", "mean"):
        bp, bx = max(base, key=lambda b: avg(b[1], k))
        ours, best = avg(d, k), avg(bx, k)
        row += [f"{ours:.2f}", f"{best:.2f} ({bp})", f"{ours / best:.2f}x" if best > 0 else "-"]
        if predicted:
            pb = max(predicted[(p, r)][k] for p, _ in base)
            pd = predicted[(DEFAULT, r)][k]
            row += [f"{pd / pb:.2f}x" if pb > 0 else "-"]
    print("| " + " | ".join(row) + " |")
