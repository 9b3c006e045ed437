#!/usr/bin/env bash
# Live multi-turn chat, two server binaries alternated (A B A B ...), the same conversations for
# each: `accellm bench --workload chat` sends each follow-up after the previous answer (plus the
# workload's think time) carrying the server's real answers (docs/prefix-cache.md).
# Usage: bash docs/prefix/chat_ab.sh A_BINARY B_BINARY
#   BENCH (B_BINARY) runs the client; RATE (0.5), NUM (40), REPS (2), SEED (1), WORKLOAD,
#   SERVE_ARGS choose the cell. A fresh server per run. Prints one markdown row per run.
set -euo pipefail
A="$1"
B="$2"
BENCH="${BENCH:-$B}"
PORT="${PORT:-18962}"
WORKLOAD="${WORKLOAD:-chat:turns=uniform(2,6),user=lognormal(128,0.6),output=lognormal(128,0.6),think_ms=lognormal(4000,0.5)}"
echo "| server | run | load avg | rate | done | failed | hit rate (server) | TTFT p50 ms | TTFT p90 ms | TPOT p50 ms | duration s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for rep in $(seq 1 "${REPS:-2}"); do
  for side in A B; do
    bin="$A"; [ "$side" = B ] && bin="$B"
    # shellcheck disable=SC2086
    "$bin" serve --port "$PORT" ${SERVE_ARGS:-} >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 120); do curl -sf "localhost:$PORT/v1/models" >/dev/null 2>&1 && break; sleep 1; done
    load=$(cut -d' ' -f1 /proc/loadavg)
    out=$(mktemp)
    "$BENCH" bench --base-url "http://127.0.0.1:$PORT" --endpoint /v1/chat/completions \
      --workload "$WORKLOAD" --num-prompts "${NUM:-40}" --rate "${RATE:-0.5}" --seed "${SEED:-1}" \
      --timeout 600 --no-progress --json "$out" >/dev/null 2>&1 || true
    load="$load-$(cut -d' ' -f1 /proc/loadavg)"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$side" "$rep" "$load" "${RATE:-0.5}" "$out" <<'PY'
import json, sys
side, rep, load, rate, path = sys.argv[1:6]
d = json.load(open(path))
g = lambda k: d.get(k) if d.get(k) is not None else float("nan")
hit = d.get("prefix_cache_hit_rate")
hit = f"{hit:.1%}" if hit is not None else "—"
print(f"| {side} | {rep} | {load} | {rate} | {d.get('completed')} | {d.get('failed')} | {hit} | "
      f"{g('median_ttft_ms'):.0f} | {g('p90_ttft_ms'):.0f} | {g('median_tpot_ms'):.1f} | {g('duration'):.0f} |")
PY
  done
done
