#!/usr/bin/env bash
# lm-evaluation-harness end to end (docs/lm-eval/README.md): the `local-completions` model runs
# the multiple-choice task docs/lm-eval/accellm_general_mc.yaml (100 questions from the JSONL
# file beside it) against `accellm serve`, then the same command against llama.cpp on the same
# GGUF, and prints both accuracies and how many items they answer alike.
#
# - lm-eval is installed once into a venv (${LM_EVAL_VENV:-~/.cache/accellm/lm-eval-venv}) from
#   the pinned docs/lm-eval/requirements.txt (no torch); it is reinstalled when that file changes.
# - Nothing is fetched from the Hugging Face hub at run time (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE):
#   the data set is the local JSONL file and the tokenizer lm-eval counts context tokens with is
#   written from the GGUF's own vocabulary by scripts/lm-eval/gguf_tokenizer.py. lm-eval sends
#   token ids, so both servers score exactly the same tokens.
# - llama-server cannot echo prompt logprobs, so the llama.cpp side is scripts/llama-loglik.cpp
#   (compiled here against the build of scripts/build-llama-server.sh, which is run first: a
#   no-op once built, 15-30 minutes the first time) behind scripts/lm-eval/llama_cpp_shim.py.
#
# Environment: ACCELLM (binary, default target/release/accellm), MODEL (GGUF, default
# scripts/fetch-model.sh's), PORT (accellm, 8123), LLAMA_PORT (llama.cpp shim, 8124),
# NUM_CONCURRENT (lm-eval's concurrent requests, 4), THREADS (llama.cpp threads, 2),
# ACCELLM_ARGS (extra `accellm serve` flags), SIDES ("accellm llama.cpp"; either alone reruns
# one side and reports with the other's last results), OUT (results, target/lm-eval), LOCK (a
# file: the measured part runs under `flock LOCK`, so timings do not overlap other measurements).
set -euo pipefail
cd "$(dirname "$0")/.."

ACCELLM="${ACCELLM:-target/release/accellm}"
PORT="${PORT:-8123}"
LLAMA_PORT="${LLAMA_PORT:-8124}"
NUM_CONCURRENT="${NUM_CONCURRENT:-4}"
THREADS="${THREADS:-2}"
SIDES="${SIDES:-accellm llama.cpp}"
OUT="${OUT:-target/lm-eval}"
VENV="${LM_EVAL_VENV:-$HOME/.cache/accellm/lm-eval-venv}"
LLAMA_DIR="${ACCELLM_LLAMA_DIR:-$HOME/.cache/accellm/llama-server}"
PYTHON="${PYTHON:-python3}"
REQS=docs/lm-eval/requirements.txt
TASK=accellm_general_mc

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HOME="${HF_HOME:-$HOME/.cache/accellm/lm-eval-hf}"

MODEL="${MODEL:-$(bash scripts/fetch-model.sh)}"
mkdir -p "$OUT"

# --- lm-eval, in its own venv ---------------------------------------------------------------
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/lm_eval" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "accellm: installing lm-eval into $VENV (about 1 GB, no torch) ..." >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip >&2
    "$VENV/bin/pip" install --quiet -r "$REQS" >&2
    echo "$want" >"$stamp"
fi

# --- the tokenizer lm-eval counts tokens with, from the GGUF ----------------------------------
TOKENIZER="$OUT/tokenizer"
"$VENV/bin/python" scripts/lm-eval/gguf_tokenizer.py "$MODEL" "$TOKENIZER"

# --- llama.cpp's scorer -----------------------------------------------------------------------
TOOL="$LLAMA_DIR/bin/llama-loglik"
if [[ "$SIDES" == *llama.cpp* ]]; then
    bash scripts/build-llama-server.sh >/dev/null
    if [[ ! -x "$TOOL" || scripts/llama-loglik.cpp -nt "$TOOL" ]]; then
        echo "accellm: compiling $TOOL ..." >&2
        # shellcheck disable=SC2046
        g++ -O2 -std=c++17 -I"$LLAMA_DIR/src/include" -I"$LLAMA_DIR/src/ggml/include" \
            scripts/llama-loglik.cpp -o "$TOOL" \
            -Wl,--start-group $(find "$LLAMA_DIR/build" -name '*.a') -Wl,--end-group \
            -lpthread -fopenmp -ldl
    fi
fi

# --- one evaluation ---------------------------------------------------------------------------
SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT

# wait_ready PORT: until GET /v1/models answers (at most two minutes); prints the model's name.
wait_ready() {
    local i
    for ((i = 0; i < 240; i++)); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "error: the server exited; see its log in $OUT" >&2
            return 1
        fi
        if curl -sf "http://127.0.0.1:$1/v1/models" -o "$OUT/models.json"; then
            "$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"][0]["id"])' \
                "$OUT/models.json"
            return 0
        fi
        sleep 0.5
    done
    echo "error: no answer on port $1" >&2
    return 1
}

# evaluate NAME PORT: the lm_eval command, timed, into $OUT/NAME.
evaluate() {
    local name="$1" port="$2" served start end
    served="$(wait_ready "$port")"
    rm -rf "${OUT:?}/$name" && mkdir -p "$OUT/$name"
    echo "accellm: lm_eval against $name ($served on port $port) ..." >&2
    start="$(date +%s.%N)"
    "$VENV/bin/lm_eval" --model local-completions \
        --model_args "model=$served,base_url=http://127.0.0.1:$port/v1/completions,tokenizer_backend=huggingface,tokenizer=$TOKENIZER,num_concurrent=$NUM_CONCURRENT,max_retries=1,timeout=600" \
        --include_path docs/lm-eval --tasks "$TASK" \
        --output_path "$OUT/$name" --log_samples >"$OUT/$name/lm_eval.log" 2>&1 || {
        tail -20 "$OUT/$name/lm_eval.log" >&2
        return 1
    }
    end="$(date +%s.%N)"
    "$PYTHON" -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))' \
        "$start" "$end" >"$OUT/$name/seconds"
    grep -F '|' "$OUT/$name/lm_eval.log" >&2 || true
}

measured() {
    if [[ "$SIDES" == *accellm* ]]; then
        # shellcheck disable=SC2086
        "$ACCELLM" serve --model "$MODEL" --port "$PORT" ${ACCELLM_ARGS:-} \
            >"$OUT/accellm.log" 2>&1 &
        SERVER_PID=$!
        evaluate accellm "$PORT"
        stop_server
    fi
    if [[ "$SIDES" == *llama.cpp* ]]; then
        "$PYTHON" scripts/lm-eval/llama_cpp_shim.py --tool "$TOOL" --model "$MODEL" \
            --port "$LLAMA_PORT" --threads "$THREADS" >"$OUT/llama.cpp.log" 2>&1 &
        SERVER_PID=$!
        evaluate llama.cpp "$LLAMA_PORT"
        stop_server
    fi
}

if [[ -n "${LOCK:-}" ]]; then
    exec 9>>"$LOCK"
    echo "accellm: waiting for $LOCK ..." >&2
    flock 9
fi
measured
if [[ -n "${LOCK:-}" ]]; then
    flock -u 9
fi

"$PYTHON" scripts/lm-eval/report.py accellm="$OUT/accellm" llama.cpp="$OUT/llama.cpp" |
    tee "$OUT/report.md"
