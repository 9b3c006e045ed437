#!/usr/bin/env bash
# The sweep workload (docs/bench/sweep.sh) against the default `accellm serve` (two in-process
# instances) and against a front driving two `accellm worker` processes on loopback, alternated.
# Usage: bash docs/bench/distributed.sh [ACCELLM_BINARY]   RATES="1 2" NUM=40 REPS=2 SERVE_ARGS=...
# (SERVE_ARGS="--cluster-policy least-load": no replica copies between the instances.)
# TLS_ARGS="--tls-cert C --tls-key K --tls-ca CA": mutual TLS on every worker link (front and
# workers); WORKER_ARGS: more flags for both workers (e.g. "--kv-local never").
set -euo pipefail
BIN="${1:-target/release/accellm}"
PORT=18910
WORKLOAD='synthetic:prompt=lognormal(256,0.5),output=lognormal(64,0.5)'
echo "| mode | rate | run | done | out tok/s | TTFT p50 | TTFT p99 | TPOT p50 | ITL p99 | goodput req/s (strict) | load |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
for rep in $(seq 1 "${REPS:-1}"); do
for rate in ${RATES:-1 2}; do
  for mode in ${MODES:-local workers}; do
    pids=()
    if [ "$mode" = workers ]; then
      "$BIN" worker --listen 127.0.0.1:$((PORT + 1)) ${TLS_ARGS:-} ${WORKER_ARGS:-} >/dev/null 2>&1 & pids+=($!)
      "$BIN" worker --listen 127.0.0.1:$((PORT + 2)) ${TLS_ARGS:-} ${WORKER_ARGS:-} >/dev/null 2>&1 & pids+=($!)
      "$BIN" serve --port $PORT ${SERVE_ARGS:-} ${TLS_ARGS:-} --workers "127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))" >/dev/null 2>&1 & pids+=($!)
    else
      "$BIN" serve --port $PORT ${SERVE_ARGS:-} >/dev/null 2>&1 & pids+=($!)
    fi
    for _ in $(seq 1 60); do curl -sf "localhost:$PORT/v1/models" >/dev/null 2>&1 && break; sleep 1; done
    out=$(mktemp)
    "$BIN" bench --base-url "http://127.0.0.1:$PORT" --workload "$WORKLOAD" --num-prompts "${NUM:-20}" \
      --rate "$rate" --slo classes --goodput ttft:2000 tpot:100 --timeout 120 --seed 1 \
      --json "$out" >/dev/null 2>&1 || true
    load=$(cut -d' ' -f1 /proc/loadavg)
    python3 - "$mode" "$rate" "$out" "$rep" "$load" <<'PY'
import json, sys
m, rate, path, rep, load = sys.argv[1:6]
d = json.load(open(path))
g = lambda k: d.get(k) if d.get(k) is not None else float('nan')
print(f"| {m} | {rate} | {rep} | {d.get('completed')}/{d.get('num_prompts', d.get('completed', 0) + len(d.get('errors') or []))} | {g('output_throughput'):.1f} | {g('median_ttft_ms'):.0f} | {g('p99_ttft_ms'):.0f} | {g('median_tpot_ms'):.1f} | {g('p99_itl_ms'):.1f} | {g('goodput_strict'):.2f} | {load} |")
PY
    rm -f "$out"
    cleanup; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  done
done
done
