#!/usr/bin/env bash
# Mixed-SLO rate sweep of `accellm serve` under several policy pairs (docs/benchmarks.md).
# Usage: bash docs/bench/sweep.sh [ACCELLM_BINARY]   (default: target/release/accellm)
# POLICIES="accellm/accelgen round-robin/vllm" RATES="1 2" choose the grid, NUM the requests per
# cell (20), REPS the runs per cell (1), alternated: every cell of a round runs before the next;
# SERVE_ARGS="--weight-format blocks" passes flags to every server; a policy written
# `accellm/accelgen+knobs.toml` also passes `--config knobs.toml` to its own server.
set -euo pipefail
BIN="${1:-target/release/accellm}"
PORT=18900
WORKLOAD='synthetic:prompt=lognormal(256,0.5),output=lognormal(64,0.5)'
echo "| policy (cluster/instance) | rate | run | done | out tok/s | TTFT p50 | TTFT p99 | TPOT p50 | ITL p99 | SLO attainment (strict) | SLO attainment (mean) | goodput req/s (strict) | goodput req/s (mean) | goodput ttft:2000 tpot:100 |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for rep in $(seq 1 "${REPS:-1}"); do
for rate in ${RATES:-1 2}; do
  for policy in ${POLICIES:-accellm/accelgen round-robin/vllm round-robin/sarathi}; do
    pair="${policy%%+*}"
    knobs=()
    [[ "$policy" == *+* ]] && knobs=(--config "${policy#*+}")
    # shellcheck disable=SC2086
    "$BIN" serve --port $PORT --cluster-policy "${pair%/*}" --instance-policy "${pair#*/}" "${knobs[@]}" ${SERVE_ARGS:-} >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 60); do curl -sf "localhost:$PORT/v1/models" >/dev/null 2>&1 && break; sleep 1; done
    out=$(mktemp)
    "$BIN" bench --base-url "http://127.0.0.1:$PORT" --workload "$WORKLOAD" --num-prompts "${NUM:-20}" \
      --rate "$rate" --slo classes --goodput ttft:2000 tpot:100 --timeout 120 --seed 1 \
      --json "$out" >/dev/null 2>&1 || true
    python3 - "$policy" "$rate" "$out" "$rep" <<'PY'
import json, sys
p, rate, path, rep = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
d = json.load(open(path))
g = lambda k: d.get(k) if d.get(k) is not None else float('nan')
print(f"| {p} | {rate} | {rep} | {d.get('completed')}/{d.get('num_prompts', d.get('completed', 0) + len(d.get('errors') or []))} | {g('output_throughput'):.1f} | {g('median_ttft_ms'):.0f} | {g('p99_ttft_ms'):.0f} | {g('median_tpot_ms'):.1f} | {g('p99_itl_ms'):.1f} "
      f"| {100*g('slo_attainment_strict'):.0f}% | {100*g('slo_attainment_mean'):.0f}% | {g('goodput_strict'):.2f} | {g('goodput_mean'):.2f} | {g('request_goodput'):.2f} |")
PY
    kill -TERM $pid; wait $pid 2>/dev/null || true
  done
done
done
