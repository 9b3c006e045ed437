#!/usr/bin/env bash
# Kill test: two `accellm worker` processes and a front on loopback, NUM requests sent at once,
# worker 1 SIGKILLed KILL_AT seconds in. Prints failed requests, recoveries by kind and their
# recovery time (failure detected to the request's next token) p50/p99, from the front's log.
# Usage: bash docs/bench/kill.sh [ACCELLM_BINARY]   NUM=200 KILL_AT=15 OUT=64 SERVE_ARGS=...
# (SERVE_ARGS="--cluster-policy least-load": no replicas, so every recovery is a recompute.)
# TLS_ARGS="--tls-cert C --tls-key K --tls-ca CA": every link (front and worker to worker) over
# mutual TLS.
set -euo pipefail
BIN="${1:-target/release/accellm}"
PORT=18930
NUM="${NUM:-200}"
DIR=$(mktemp -d)
pids=()
# Waits for the processes to be gone, so a run right after this one finds its ports free.
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
TLS_ARGS="${TLS_ARGS:-}"
"$BIN" worker --listen 127.0.0.1:$((PORT + 1)) --kv-blocks 4096 $TLS_ARGS 2>"$DIR/w0.log" & pids+=($!)
"$BIN" worker --listen 127.0.0.1:$((PORT + 2)) --kv-blocks 4096 $TLS_ARGS 2>"$DIR/w1.log" & w1=$!; pids+=($w1)
RUST_LOG=info "$BIN" serve --port $PORT --kv-blocks 4096 --max-waiting 0 ${SERVE_ARGS:-} $TLS_ARGS \
  --workers "127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))" 2>"$DIR/front.log" & pids+=($!)
for _ in $(seq 1 60); do curl -sf "localhost:$PORT/v1/models" >/dev/null 2>&1 && break; sleep 1; done
curl -sf "localhost:$PORT/v1/models" >/dev/null || { echo "the front did not come up:" >&2; tail -20 "$DIR"/*.log >&2; exit 1; }
"$BIN" bench --base-url "http://127.0.0.1:$PORT" --num-prompts "$NUM" --arrivals all-at-once \
  --workload "synthetic:prompt=lognormal(128,0.5),output=${OUT:-64}" --temperature 0 \
  --timeout 600 --seed 1 --json "$DIR/bench.json" >"$DIR/bench.txt" 2>&1 &
bench=$!
sleep "${KILL_AT:-15}"
in_flight=$(curl -s "localhost:$PORT/metrics" | awk '/^vllm:num_requests_(running|waiting)\{/ {s += $2} END {print s}')
kill -KILL "$w1"
echo "killed worker 1 at ${KILL_AT:-15} s with $in_flight requests in flight (load $(cut -d' ' -f1-3 /proc/loadavg))"
wait $bench || true
python3 - "$DIR" <<'PY'
import json, re, sys, statistics
d = sys.argv[1]
b = json.load(open(f"{d}/bench.json"))
print(f"requests: {b.get('completed')} completed, {b.get('failed')} failed of {b.get('num_prompts')}; "
      f"TPOT p50 {b.get('median_tpot_ms', 0):.0f} ms, {b.get('duration', 0):.0f} s in all")
rec = {"Replica": [], "Recompute": []}
ansi = re.compile(r'\x1b\[[0-9;]*m')
for line in open(f"{d}/front.log"):
    line = ansi.sub('', line)
    m = re.search(r'kind=(\w+) recovery_ms=([0-9.]+)', line)
    if m:
        rec[m.group(1)].append(float(m.group(2)))
def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]
print("| recovered by | requests | recovery p50 ms | recovery p99 ms |")
print("|---|---:|---:|---:|")
for k, v in rec.items():
    if v:
        print(f"| {k.lower()} | {len(v)} | {pct(v, .5):.0f} | {pct(v, .99):.0f} |")
    else:
        print(f"| {k.lower()} | 0 | – | – |")
PY
echo "logs in $DIR"
