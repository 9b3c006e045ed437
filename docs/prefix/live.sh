#!/usr/bin/env bash
# Live prefix-cache table of docs/prefix-cache.md: the same multi-turn chat workload against
# `accellm serve` with the prefix cache off and on, alternated (off on off on ...).
# Usage: bash docs/prefix/live.sh [ACCELLM_BINARY]   RATE (0.5), NUM (60), REPS (1), POLICY
# (accellm/accelgen) choose the cell. Prints one markdown row per run.
set -euo pipefail
BIN="${1:-target/release/accellm}"
PORT=18950
POLICY="${POLICY:-accellm/accelgen}"
WORKLOAD="${WORKLOAD:-chat:turns=uniform(2,5),user=lognormal(96,0.5),output=lognormal(48,0.5)}"
echo "| policy | prefix cache | run | rate | done | TTFT p50 ms | TTFT p90 ms | TPOT p50 ms | hit rate (server) | goodput req/s (strict) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for rep in $(seq 1 "${REPS:-1}"); do
  for cache in off on; do
    "$BIN" serve --port $PORT --cluster-policy "${POLICY%/*}" --instance-policy "${POLICY#*/}" \
      --prefix-cache "$cache" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 90); do curl -sf "localhost:$PORT/v1/models" >/dev/null 2>&1 && break; sleep 1; done
    out=$(mktemp)
    "$BIN" bench --base-url "http://127.0.0.1:$PORT" --workload "$WORKLOAD" --num-prompts "${NUM:-60}" \
      --rate "${RATE:-0.5}" --slo classes --timeout 300 --seed 1 --no-progress \
      --json "$out" >/dev/null 2>&1 || true
    metrics=$(curl -sf "localhost:$PORT/metrics" || true)
    kill -TERM $pid; wait $pid 2>/dev/null || true
    python3 - "$POLICY" "$cache" "$rep" "${RATE:-0.5}" "$out" "$metrics" <<'PY'
import json, sys
pol, cache, rep, rate, path, metrics = sys.argv[1:7]
d = json.load(open(path))
g = lambda k: d.get(k) if d.get(k) is not None else float('nan')
m = {}
for line in metrics.splitlines():
    if line.startswith("vllm:prefix_cache_"):
        m[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
q, h = m.get("vllm:prefix_cache_queries_total", 0), m.get("vllm:prefix_cache_hits_total", 0)
hit = f"{h / q:.1%}" if q else "—"
print(f"| {pol} | {cache} | {rep} | {rate} | {d.get('completed')} | {g('median_ttft_ms'):.0f} | {g('p90_ttft_ms'):.0f} | {g('median_tpot_ms'):.1f} | {hit} | {g('goodput_strict'):.2f} |")
PY
  done
done
