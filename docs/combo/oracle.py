#!/usr/bin/env python3
"""Headroom of an adaptive pair: an offline oracle over the split and colocated AccelGen.

Usage: python3 docs/combo/oracle.py [ACCELLM_BINARY] [SETTING ...]   (settings of capacity.py)
WINDOW=<seconds> (default 30) is the oracle's window.

For each setting of docs/combo/capacity.py, at every rate of its ladder up to 1.5x the best
baseline's capacity, three runs on the identical request sequence write every finished request
(`simulate --requests-out`): the default (`accellm/accelgen`), the pair split (`accellm/accelgen`
with docs/accellm/knobs/colocated-never.toml: `colocate` and `both_prefill` "never") and colocated AccelGen (`least-load/accelgen`). The oracle takes, per
window of arrival time, whichever of split and colocated met more requests' SLOs (strict and mean
separately) and sums the windows: what a rule choosing the pair's mode once per window could
reach if the choice did not change the state the next window starts from (an estimate of the
headroom, not a bound). Figures are requests meeting the SLO, as a ratio to the best baseline of
capacity.py (Splitwise at its best split, `accellm/vllm` with its better knobs); capacities use
the same 90% strict rule.
"""
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import capacity as cap  # noqa: E402  (shares the settings, the binary and the argument rules)

WINDOW_US = float(os.environ.get("WINDOW", "30")) * 1e6
SPLIT = os.path.join(cap.ROOT, "docs/accellm/knobs/colocated-never.toml")


def runs(args, rates, policies, scale, extra):
    """Runs `policies` at `rates`; (policy, rate) -> (arrived, {window: [strict, mean]})."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as f:
        cmd = (f"{cap.BIN} simulate {args} --slo-classes default --slo-scale {scale} "
               f"--compare {','.join(policies)} --sweep-rate {','.join(map(str, rates))} --json "
               f"--requests-out {f.name} {extra}")
        out = json.loads(subprocess.run(cmd.split(), check=True, capture_output=True,
                                        text=True).stdout)
        arrived = {(f"{r['cluster_policy']}/{r['instance_policy']}", r["rate"]):
                   r["summary"]["arrived"] for r in (out if isinstance(out, list) else [out])}
        met = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        for line in open(f.name):
            r = json.loads(line)
            w = met[(r["policy"], r["rate"])][int(r["arrival_us"] // WINDOW_US)]
            w[0] += r["slo_met"]["strict"]
            w[1] += r["slo_met"]["mean"]
    return {k: (n, met[k]) for k, n in arrived.items()}


def total(windows, i):
    return sum(w[i] for w in windows.values())


def oracle(a, b, i):
    return sum(max(a.get(k, [0, 0])[i], b.get(k, [0, 0])[i]) for k in set(a) | set(b))


def run(name):
    args, rates, splits = cap.SETTINGS[name]
    if "@SLOW@" in args:
        args = args.replace("@SLOW@", cap.slow_prefill_profile(cap.CPU_PROFILE, cap.PREFILL_SLOWDOWN))
    for scale in cap.SCALES:
        light = cap.attainments(args, rates[:1], splits, scale)
        if max(v[0] for v in light.values()) >= 0.9:
            break
    base = runs(args, rates, [cap.OURS] + cap.BASELINES, scale, "")
    # Splitwise at its best split, accellm/vllm with its better knobs (as capacity.py), per rate
    # by strict then mean.
    variants = [("splitwise/vllm", f"--prefill-instances {k}") for k in splits]
    variants += [("accellm/vllm", v) for v in cap.ACCELLM_VLLM_VARIANTS]
    for policy, extra in variants:
        for key, v in runs(args, rates, [policy], scale, extra).items():
            old = base.get(key)
            if old is None or (total(v[1], 0), total(v[1], 1)) > (total(old[1], 0), total(old[1], 1)):
                base[key] = v
    split = runs(args, rates, [cap.OURS], scale, f"--config {SPLIT}")
    names = cap.BASELINES + ["splitwise/vllm"]
    rows, caps = [], defaultdict(lambda: None)
    for r in rates:
        r = float(r)
        n = base[(cap.OURS, r)][0]
        fig = {}
        for i in (0, 1):
            best = max(total(base[(b, r)][1], i) for b in names)
            d = total(base[(cap.OURS, r)][1], i)
            s = total(split[(cap.OURS, r)][1], i)
            c = total(base[("least-load/accelgen", r)][1], i)
            o = oracle(split[(cap.OURS, r)][1], base[("least-load/accelgen", r)][1], i)
            fig[i] = (best, d, s, c, o)
        for label, k in (("best", 0), ("default", 1), ("split", 2), ("colocated", 3), ("oracle", 4)):
            if fig[0][k] >= 0.9 * n:
                caps[label] = r
        rows.append((r, n, fig))
    top = 1.5 * caps["best"] if caps["best"] else rates[-1]
    q = lambda a, b: f"{a / b:.2f}x" if b else "-"
    print(f"\n### {name} (SLO scale {scale:g}x, window {WINDOW_US / 1e6:g} s)\n")
    print("| rate | best baseline strict (req met) | default | split | colocated | oracle | "
          "mean: default | split | colocated | oracle |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r, n, fig in rows:
        if r > top + 1e-9:
            continue
        (b0, d0, s0, c0, o0), (b1, d1, s1, c1, o1) = fig[0], fig[1]
        print(f"| {r:g} | {b0} of {n} | {q(d0, b0)} | {q(s0, b0)} | {q(c0, b0)} | {q(o0, b0)} | "
              f"{q(d1, b1)} | {q(s1, b1)} | {q(c1, b1)} | {q(o1, b1)} |")
    f = lambda c: "-" if c is None else f"{c:g}"
    ratio = lambda c: (c or 0) / caps["best"] if caps["best"] else float("nan")
    CAPS.append(f"| {name} | {f(caps['best'])} | {f(caps['default'])} ({ratio(caps['default']):.2f}x) | "
                f"{f(caps['split'])} | {f(caps['colocated'])} | {f(caps['oracle'])} "
                f"({ratio(caps['oracle']):.2f}x) |")
    return ratio(caps["oracle"]), ratio(caps["default"])


CAPS = []


def main():
    names = [a for a in cap.ARGS if a in cap.SETTINGS] or list(cap.SETTINGS)
    print(f"`{cap.BIN} simulate <setting> --slo-classes default --compare ... --sweep-rate ... "
          f"--requests-out FILE`, oracle window {WINDOW_US / 1e6:g} s")
    out = [run(n) for n in names]
    print("\nCapacity (highest rate with >= 90% strict), req/s:\n")
    print("| setting | best baseline | default | split | colocated | oracle |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(CAPS))
    print(f"\nOracle capacity >= 1.3x the best baseline's in {sum(o[0] >= 1.3 for o in out)} of "
          f"{len(out)} settings; the default's in {sum(o[1] >= 1.3 for o in out)}.")


if __name__ == "__main__":
    main()
