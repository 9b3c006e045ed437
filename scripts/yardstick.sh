#!/usr/bin/env bash
# accellm against llama.cpp's own llama-server on the same GGUF, same threads, same workload:
# output tokens/s and TPOT at 1, 4 and 16 concurrent streams (docs/benchmarks.md, "Yardstick").
#
#   bash scripts/yardstick.sh SERVER [SERVER ...]      SERVER: llama | accellm | accellm-2t
#
#   llama       llama-server -t $THREADS -np 16 (continuous batching), built by
#               scripts/build-llama-server.sh
#   accellm     `accellm serve` with its defaults (a pair of one-thread instances)
#   accellm-2t  `accellm serve` with one instance of $THREADS threads, vllm/round-robin policies
#
# Each server is started, measured with `accellm bench --workload synthetic:prompt=128,output=128
# --max-concurrency C --num-prompts 4C` for C in $STREAMS (closed loop, ignore_eos), and
# stopped; each run writes $OUT/<server>-c<C>-<stamp>.json and prints one table row. On a shared
# machine run it under a lock (`flock /work/live.lock bash scripts/yardstick.sh ...`) while nothing
# is compiling, and alternate servers (A B A B). Env: MODEL (default SmolLM2-135M Q4_1), THREADS (2), STREAMS
# ("1 4 16"), OUT (target/yardstick), ACCELLM (target/release/accellm), PORT (18990).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${MODEL:-$(bash scripts/fetch-model.sh)}"
THREADS="${THREADS:-2}"
STREAMS="${STREAMS:-1 4 16}"
OUT="${OUT:-target/yardstick}"
ACCELLM="${ACCELLM:-target/release/accellm}"
PORT="${PORT:-18990}"
mkdir -p "$OUT"
[[ -x "$ACCELLM" ]] || { echo "error: $ACCELLM missing (cargo build --release -p accellm)" >&2; exit 1; }

start_server() {
    case "$1" in
    llama)
        local bin
        bin="$(bash scripts/build-llama-server.sh)"
        # 16 slots of 512 tokens each (128-token prompt + 128 output, with margin).
        "$bin" -m "$MODEL" --host 127.0.0.1 --port "$PORT" -t "$THREADS" -tb "$THREADS" \
            -np 16 -c 8192 --no-webui --log-disable >"$OUT/$1.log" 2>&1 &
        ;;
    accellm)
        "$ACCELLM" serve --model "$MODEL" --port "$PORT" >"$OUT/$1.log" 2>&1 &
        ;;
    accellm-2t)
        "$ACCELLM" serve --model "$MODEL" --port "$PORT" --instances 1 \
            --threads-per-instance "$THREADS" --instance-policy vllm \
            --cluster-policy round-robin >"$OUT/$1.log" 2>&1 &
        ;;
    *) echo "unknown server $1 (llama, accellm, accellm-2t)" >&2; exit 2 ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 1 240); do
        if curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/$1.log" >&2; exit 1; }
        sleep 0.5
    done
    echo "error: $1 did not come up in 120 s" >&2
    exit 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}
trap stop_server EXIT

STAMP="$(date -u +%H%M%S)"
for server in "$@"; do
    start_server "$server"
    for c in $STREAMS; do
        json="$OUT/$server-c$c-$STAMP.json"
        "$ACCELLM" bench --base-url "http://127.0.0.1:$PORT" --model "$(basename "$MODEL" .gguf)" \
            --workload synthetic:prompt=128,output=128 --max-concurrency "$c" \
            --num-prompts $((4 * c)) --tokenizer "$MODEL" --seed 1 --timeout 120 \
            --no-progress --json "$json" >/dev/null
        python3 - "$server" "$c" "$json" <<'PY'
import json, os, sys
server, c, path = sys.argv[1], sys.argv[2], sys.argv[3]
s = json.load(open(path))  # vLLM-style keys, see crates/bench/src/metrics.rs `to_json`
load = os.getloadavg()[0]
print(f"{server:<11} streams {c:>2}: {s['completed']}/{s['num_prompts']} done, "
      f"output {s['output_throughput']:7.1f} tok/s, TPOT p50 {s['median_tpot_ms']:6.1f} ms, "
      f"TTFT p50 {s['median_ttft_ms']:7.1f} ms, load {load:.2f}", flush=True)
PY
    done
    stop_server
done
