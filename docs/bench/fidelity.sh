#!/usr/bin/env bash
# Fidelity sweep (docs/fidelity.md): `accellm bench --predict` against live `accellm serve`
# for several policy pairs and rates on the docs/bench/sweep.sh workload, each cell REPS times
# (repetitions alternate: the whole grid once, then again; at each rate every policy in turn),
# then the tables.
# Usage: bash docs/bench/fidelity.sh PROFILE [ACCELLM_BINARY] [OUT_DIR]
#   PROFILE is calibrated first (with one other instance busy, as in a loaded 2-instance
#   server) if the file does not exist yet.
#   LIVE=1: first fit OUT_DIR/live-profile.toml to the iterations of one calibration run
#   (round-robin/vllm at LIVE_RATE, default 1 req/s, seed 2: not the grid's requests) and
#   predict with that.
# POLICIES="accellm/accelgen round-robin/vllm" RATES="0.5 1" REPS=2 N=40 choose the grid (a policy
# written `accellm/accelgen+knobs.toml` also passes `--config knobs.toml` to its server);
# SERVE_ARGS are passed to every `accellm serve` and CAL_ARGS to `accellm calibrate` (for example
# SERVE_ARGS="--weight-format blocks" CAL_ARGS="--format blocks" for the engine of an AVX2 CPU).
set -euo pipefail
PROFILE="$1"
BIN="${2:-target/release/accellm}"
OUT="${3:-fidelity-out}"
PORT="${PORT:-19110}"
WORKLOAD='synthetic:prompt=lognormal(256,0.5),output=lognormal(64,0.5)'
MODEL="${ACCELLM_MODEL:-$HOME/.cache/accellm/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
mkdir -p "$OUT"
if [[ ! -f "$PROFILE" ]]; then
  # shellcheck disable=SC2086
  "$BIN" calibrate --threads 1 --reps 3 --background 1 ${CAL_ARGS:-} --out "$PROFILE" 2>/dev/null
fi
serve() {
  local pair="${1%%+*}" knobs=()
  [[ "$1" == *+* ]] && knobs=(--config "${1#*+}")
  # shellcheck disable=SC2086
  "$BIN" serve --port "$PORT" --cluster-policy "${pair%/*}" --instance-policy "${pair#*/}" "${knobs[@]}" ${SERVE_ARGS:-} \
    >"$OUT/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 60); do curl -sf "localhost:$PORT/v1/models" >/dev/null 2>&1 && break; sleep 1; done
}
bench() {  # rate seed profile json [extra flags]
  "$BIN" bench --base-url "http://127.0.0.1:$PORT" --tokenizer "$MODEL" --workload "$WORKLOAD" \
    --num-prompts "${N:-40}" --rate "$1" --slo classes --timeout 300 --seed "$2" --no-progress \
    --predict "$3" --json "$4" "${@:5}"
}
if [[ -n "${LIVE:-}" ]]; then
  serve round-robin/vllm
  bench "${LIVE_RATE:-1}" 2 "$PROFILE" "$OUT/calibration-run.json" --calibrate-out "$OUT/live-profile.toml" \
    >"$OUT/calibration-run.txt" 2>&1
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  PROFILE="$OUT/live-profile.toml"
fi
# A fresh server per cell: the simulator starts from an empty KV pool, and a server that already
# ran the same seed's prompts would answer them from its prefix cache.
for rep in $(seq 1 "${REPS:-2}"); do
  for rate in ${RATES:-0.5 1 1.5}; do
    for policy in ${POLICIES:-accellm/accelgen accellm/vllm round-robin/vllm round-robin/sarathi}; do
      # Each cell starts once the 1-minute load average is below QUIET (1.5), or after 90 s.
      for _ in $(seq 1 90); do
        awk -v q="${QUIET:-1.5}" '{exit !($1 < q)}' /proc/loadavg && break; sleep 1
      done
      serve "$policy"
      name="${policy%%+*}"
      [[ "$policy" == *+* ]] && name="$name+$(basename "${policy#*+}" .toml)"
      f="$OUT/${name/\//_}_r${rate}_rep${rep}.json"
      load0=$(cut -d' ' -f1 /proc/loadavg)
      bench "$rate" 1 "$PROFILE" "$f" >"${f%.json}.txt" 2>&1 || true
      echo "$name $rate $rep $load0 $(cut -d' ' -f1 /proc/loadavg) $(date -u +%H:%M:%S)" | tee -a "$OUT/loads.txt"
      kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    done
  done
done
python3 "$(dirname "$0")/fidelity_table.py" "$OUT"
