#!/usr/bin/env bash
# Regenerate crates/engine/tests/fixtures/llama_cpp_logits.json: llama.cpp's logits on the tiny
# family models that crates/engine/tests/families.rs writes (the reference those tests compare
# with). Needs the llama.cpp build of scripts/build-llama-server.sh (run it first).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${ACCELLM_LLAMA_DIR:-$HOME/.cache/accellm/llama-server}"
SRC="$DIR/src"
BUILD="$DIR/build"
if [[ ! -d "$BUILD" ]]; then
    echo "error: no llama.cpp build in $BUILD; run scripts/build-llama-server.sh first" >&2
    exit 1
fi
TOOL="$DIR/bin/llama-logits"
cmake --build "$BUILD" --target llama >&2
if [[ ! -x "$TOOL" || scripts/llama-logits.cpp -nt "$TOOL" ]]; then
    mkdir -p "$DIR/bin"
    # shellcheck disable=SC2046
    g++ -O2 -std=c++17 -I"$SRC/include" -I"$SRC/ggml/include" scripts/llama-logits.cpp \
        -o "$TOOL" -Wl,--start-group $(find "$BUILD" -name '*.a') -Wl,--end-group \
        -lpthread -fopenmp -ldl
fi

MODELS="$(mktemp -d)"
trap 'rm -rf "$MODELS"' EXIT
ACCELLM_WRITE_FAMILY_MODELS="$MODELS" cargo test -q -p accellm-engine --test families \
    write_family_models >&2
read -r -a IDS <"$MODELS/prompt.txt"
OUT=crates/engine/tests/fixtures/llama_cpp_logits.json
mkdir -p "$(dirname "$OUT")"
{
    echo "{"
    first=1
    for model in "$MODELS"/*.gguf; do
        name="$(basename "$model" .gguf)"
        [[ $first == 1 ]] || echo ","
        first=0
        printf '"%s": ' "$name"
        "$TOOL" "$model" "${IDS[@]}"
    done
    echo "}"
} >"$OUT.partial"
mv "$OUT.partial" "$OUT"
echo "wrote $OUT" >&2
