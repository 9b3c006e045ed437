#!/usr/bin/env python3
"""Compare lm-evaluation-harness runs of one multiple-choice task item by item.

Usage: report.py NAME=DIR [NAME=DIR ...]

Each DIR is an `lm_eval --output_path DIR --log_samples` output (the newest samples_*.jsonl
under it is read) with a `seconds` file beside it (the run's wall time, written by
scripts/lm-eval.sh). Prints a Markdown table (acc, acc_norm, n, seconds per run), then, against
the first run, how many items each other run answers the same way and how far apart the
log-likelihoods are; the items answered differently are listed with each side's margin (the
log-likelihood gap between its two best choices), which tells a near-tie from a real
disagreement. Standard library only.
"""

import glob
import json
import math
import os
import sys


def load(directory):
    files = sorted(glob.glob(os.path.join(directory, "**", "samples_*.jsonl"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        return None
    items = {}
    with open(files[-1], encoding="utf-8") as f:
        for line in f:
            s = json.loads(line)
            ll = [float(r[0]) for r in s["filtered_resps"]]
            lengths = [float(len(c)) for c in s["doc"]["choices"]]
            items[s["doc_id"]] = {
                "target": int(s["target"]),
                "ll": ll,
                "acc": float(s["acc"]),
                "acc_norm": float(s["acc_norm"]),
                "pick": max(range(len(ll)), key=lambda i: ll[i]),
                "pick_norm": max(range(len(ll)), key=lambda i: ll[i] / lengths[i]),
                "question": s["doc"]["question"],
            }
    seconds = None
    path = os.path.join(directory, "seconds")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            seconds = float(f.read().strip())
    return items, seconds


def margin(ll):
    top = sorted(ll, reverse=True)
    return top[0] - top[1]


def stderr(p, n):
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def main():
    runs = []
    for arg in sys.argv[1:]:
        name, _, directory = arg.partition("=")
        if not directory:
            sys.exit(__doc__)
        loaded = load(directory)
        if loaded is None:
            print(f"({name}: no samples_*.jsonl under {directory}, left out)", file=sys.stderr)
            continue
        runs.append((name, *loaded))
    if not runs:
        sys.exit(__doc__)

    print("| server | acc | acc_norm | n | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for name, items, seconds in runs:
        n = len(items)
        acc = sum(i["acc"] for i in items.values()) / n
        norm = sum(i["acc_norm"] for i in items.values()) / n
        secs = f"{seconds:.1f}" if seconds is not None else "-"
        print(f"| {name} | {acc:.2f} ± {stderr(acc, n):.3f} | {norm:.2f} ± {stderr(norm, n):.3f} "
              f"| {n} | {secs} |")

    base_name, base, _ = runs[0]
    for name, items, _ in runs[1:]:
        common = sorted(set(base) & set(items))
        same = sum(base[d]["pick"] == items[d]["pick"] for d in common)
        same_norm = sum(base[d]["pick_norm"] == items[d]["pick_norm"] for d in common)
        diffs = sorted(abs(a - b) for d in common for a, b in zip(base[d]["ll"], items[d]["ll"]))
        print()
        print(f"{name} vs {base_name}: the same answer on {same}/{len(common)} items (acc), "
              f"{same_norm}/{len(common)} (acc_norm); |Δ log-likelihood| over "
              f"{len(diffs)} choices: median {diffs[len(diffs) // 2]:.4f}, "
              f"max {diffs[-1]:.4f} nats")
        for d in common:
            a, b = base[d], items[d]
            if a["pick"] != b["pick"] or a["pick_norm"] != b["pick_norm"]:
                print(f"- item {d} ({a['question']}): {base_name} picks {a['pick']}/{a['pick_norm']} "
                      f"(margin {margin(a['ll']):.3f}), {name} picks {b['pick']}/{b['pick_norm']} "
                      f"(margin {margin(b['ll']):.3f}), answer {a['target']} "
                      "(picks as acc/acc_norm; margin: gap between the two best log-likelihoods)")


if __name__ == "__main__":
    main()
