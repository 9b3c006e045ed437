import json, sys
# Usage: accellm simulate ... --json | python3 accellm_table.py [LABEL]
# Prints one markdown row per run; LABEL replaces the policy name (for config variants).
# `SLO met` is the strict SLO attainment (every gap within the TBT SLO; crates/core/src/metrics.rs).
runs = json.load(sys.stdin)
runs = runs if isinstance(runs, list) else [runs]
label = sys.argv[1] if len(sys.argv) > 1 else None
print("| policy | rate | TTFT p50/p99 ms | TBT p50/p99 ms | JCT p50/p99 s | SLO met | idle | role sw. | copy GB | transfer GB | migr. free/transfer | replica evict. | preempt. |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
best = {}
for r in runs:
    s, c = r["summary"], r["counters"]
    name = label or f'{r["cluster_policy"]}/{r["instance_policy"]}'
    ok = s["slo_attainment_strict"] >= 0.9 and r["unfinished"] == 0
    if ok and r["rate"] is not None:
        best[name] = max(best.get(name, 0), r["rate"])
    best.setdefault(name, best.get(name, 0))
    print(f'| {name} | {r["rate"]} | {s["ttft_ms"]["p50"]:.0f} / {s["ttft_ms"]["p99"]:.0f} '
          f'| {s["tbt_ms"]["p50"]:.1f} / {s["tbt_ms"]["p99"]:.1f} '
          f'| {s["jct_ms"]["p50"]/1e3:.1f} / {s["jct_ms"]["p99"]/1e3:.1f} '
          f'| {100*s["slo_attainment_strict"]:.1f}% | {100*(1-r["busy_mean"]):.0f}% | {c["role_switches"]} '
          f'| {c["copy_bytes"]/1e9:.0f} | {c["transfer_bytes"]/1e9:.0f} '
          f'| {c["migrations_free"]}/{c["migrations_transfer"]} | {c["replica_evictions"]} | {c["preemptions"]} |')
print()
for name, rate in best.items():
    print(f"- {name}: highest swept rate with SLO met by >= 90% of requests: {rate or 'none'} req/s")
