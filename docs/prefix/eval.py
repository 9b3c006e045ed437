#!/usr/bin/env python3
"""Simulated prefix-cache tables of docs/prefix-cache.md.

Usage: python3 docs/prefix/eval.py BINARY [chat|routing|replicas|all]
Each cell is one `simulate --json` run; the same seed gives every column the identical request
sequence.
"""
import json, os, subprocess, sys, tempfile

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/accellm"
WHAT = sys.argv[2] if len(sys.argv) > 2 else "all"
GPU = ["--model", "llama3-8b", "--hardware", "a100"]
CPU = ["--hardware-profile", "crates/engine/calibration/smollm2-q8padded-1t-cpu.toml"]
LIVE_CHAT = "chat:turns=uniform(2,5),user=lognormal(96,0.5),output=lognormal(48,0.5)"


def run(args, toml=None, hw=GPU):
    extra = []
    if toml:
        f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        f.write(toml)
        f.close()
        extra = ["--config", f.name]
    base = [*hw, "--slo-classes", "default", "--seed", "1"]
    out = subprocess.run([BIN, "simulate", "--json", *base, *extra, *args], capture_output=True, text=True)
    if toml:
        os.unlink(f.name)
    if out.returncode != 0:
        sys.exit(out.stderr)
    v = json.loads(out.stdout)
    s, p = v["summary"], v.get("prefix_cache") or {}
    return {
        "ttft50": s["ttft_ms"]["p50"],
        "ttft90": s["ttft_ms"]["p90"],
        "good": s["goodput_strict"],
        "att": s["slo_attainment_strict"],
        "hit": p.get("hit_rate", 0.0),
    }


def chat():
    print("### Multi-turn chat, cache on vs off\n")
    print("| engine | policy | req/s | TTFT p50 ms off → on | ratio | TTFT p90 ms off → on | hit rate | goodput off → on |")
    print("|---|---|---|---|---|---|---|---|")
    setups = [
        ("SmolLM2 CPU profile × 2 (the live server)", CPU, LIVE_CHAT, "2", (0.25, 0.5, 1), "120"),
        ("Llama-3-8B A100 × 4", GPU, "chat", "4", (8, 16, 24), "3000"),
    ]
    for name, hw, wl, n, rates, num in setups:
        for pol in (["least-load", "vllm"], ["accellm", "accelgen"]):
            for rate in rates:
                a = ["--workload", wl, "--instances", n, "--rate", str(rate), "--num-requests", num,
                     "--cluster-policy", pol[0], "--instance-policy", pol[1]]
                off = run(a + ["--prefix-cache", "off"], hw=hw)
                on = run(a + ["--prefix-cache", "on"], hw=hw)
                print(f"| {name} | {'/'.join(pol)} | {rate} | {off['ttft50']:.0f} → {on['ttft50']:.0f} | "
                      f"{off['ttft50'] / max(on['ttft50'], 1e-9):.2f}× | {off['ttft90']:.0f} → {on['ttft90']:.0f} | "
                      f"{on['hit']:.1%} | {off['good']:.2f} → {on['good']:.2f} |")
    print()


def routing():
    print("### Cache-aware routing, 16 instances\n")
    print("| workload | req/s | policy | prefix weight | hit rate | goodput req/s | TTFT p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for wl, rate in (("chat", 64), ("system-prompts:prompts=64,prefix=1024", 64)):
        for pol in (["least-load", "vllm"], ["accellm", "accelgen"]):
            for w in (0, 1, 4):
                r = run(["--workload", wl, "--instances", "16", "--rate", str(rate), "--num-requests", "8000",
                         "--cluster-policy", pol[0], "--instance-policy", pol[1], "--prefix-weight", str(w)])
                print(f"| `{wl}` | {rate} | {'/'.join(pol)} | {w} | {r['hit']:.1%} | {r['good']:.2f} | {r['ttft50']:.0f} |")
    print()


def replicas():
    print("### AcceLLM: replicas as cache (16 instances, prefix weight 4, the default)\n")
    print("| workload | req/s | replicas as cache | hit rate | goodput req/s | TTFT p50 ms |")
    print("|---|---|---|---|---|---|")
    for wl, rate in (("chat", 64), ("system-prompts:prompts=64,prefix=1024", 64)):
        for on in (False, True):
            r = run(["--workload", wl, "--instances", "16", "--rate", str(rate), "--num-requests", "8000",
                     "--cluster-policy", "accellm", "--instance-policy", "accelgen"],
                    toml=f"[cluster.accellm]\nreplicas_as_cache = {str(on).lower()}\n")
            print(f"| `{wl}` | {rate} | {'on' if on else 'off'} | {r['hit']:.1%} | {r['good']:.2f} | {r['ttft50']:.0f} |")
    print()


for name, f in (("chat", chat), ("routing", routing), ("replicas", replicas)):
    if WHAT in (name, "all"):
        f()
