import json, sys
# Usage: accellm simulate ... --json | python3 sync_table.py LABEL  (one markdown row per run)
runs = json.load(sys.stdin)
runs = runs if isinstance(runs, list) else [runs]
for r in runs:
    s, c = r["summary"], r["counters"]
    mixed = sum(i["mixed"] for i in r["instances"]) / max(1, len(r["instances"]))
    print(f'| {sys.argv[1]} | {r["rate"]} | {s["ttft_ms"]["p50"]:.0f} / {s["ttft_ms"]["p99"]:.0f} '
          f'| {s["tbt_ms"]["p50"]:.1f} / {s["tbt_ms"]["p99"]:.1f} '
          f'| {s["jct_ms"]["p50"]/1e3:.2f} / {s["jct_ms"]["p99"]/1e3:.2f} '
          f'| {100*s["slo_attainment_strict"]:.1f}% | {100*(1-r["busy_mean"]):.0f}% | {100*mixed:.1f}% '
          f'| {c["copy_bytes"]/1e9:.0f} | {c["transfer_bytes"]/1e9:.1f} '
          f'| {c["migrations_free"]}/{c["migrations_transfer"]}/{c["migrations_recompute"]} '
          f'| {c["recompute_tokens"]} | {c["replica_evictions"]} | {c["preemptions"]} | {r["unfinished"]} |')
