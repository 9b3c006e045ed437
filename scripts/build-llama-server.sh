#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` (the yardstick of docs/benchmarks.md) and print its path.
#
# The source is the llama.cpp tree vendored in the PyPI sdist of `llama-cpp-python` 0.3.36
# (`vendor/llama.cpp`), fetched with pip (nothing installed). cmake and ninja come from PyPI when
# missing. The flags are explicit: a native build (-DGGML_NATIVE=ON) crashed with SIGILL in the AMX
# matmul path on an AVX-512 machine (see crates/engine/benches/llama_cpp_bench.py), so AMX is off
# and AVX-512 / VNNI are switched on only when /proc/cpuinfo lists them (an AVX2-only CPU gets
# SIGILL from an AVX-512 build before main). Takes 15-30 minutes on 2 cores; set JOBS to change the
# build parallelism (default 1, so other builds can share the machine). Running it again is a
# no-op once the binary exists in ${ACCELLM_LLAMA_DIR:-~/.cache/accellm/llama-server}.
set -euo pipefail

VERSION="0.3.36"
PACKAGE="llama-cpp-python"
DIR="${ACCELLM_LLAMA_DIR:-$HOME/.cache/accellm/llama-server}"
BIN="$DIR/bin/llama-server"
JOBS="${JOBS:-1}"
PYTHON="${PYTHON:-python3}"

if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$DIR"
for tool in cmake ninja; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "accellm: installing $tool from PyPI ..." >&2
        "$PYTHON" -m pip install --quiet "$tool" >&2
    fi
done

SDIST="$DIR/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -s "$SDIST" ]]; then
    echo "accellm: downloading the $PACKAGE $VERSION source package (about 75 MB) ..." >&2
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    "$PYTHON" -m pip download --quiet --no-deps --no-binary "$PACKAGE" -d "$TMP" \
        "$PACKAGE==$VERSION" >&2
    mv "$TMP/llama_cpp_python-$VERSION.tar.gz" "$SDIST"
fi

SRC="$DIR/src"
if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
    rm -rf "$DIR/extract" && mkdir -p "$DIR/extract"
    tar xzf "$SDIST" -C "$DIR/extract" "llama_cpp_python-$VERSION/vendor/llama.cpp"
    rm -rf "$SRC"
    mv "$DIR/extract/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC"
    rm -rf "$DIR/extract"
fi

has_flag() { grep -qw "$1" /proc/cpuinfo 2>/dev/null && echo ON || echo OFF; }
AVX512="$(has_flag avx512f)"
AVX512_VNNI="$(has_flag avx512_vnni)"

echo "accellm: building llama-server with $JOBS job(s) (15-30 minutes on 2 cores) ..." >&2
cmake -S "$SRC" -B "$DIR/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512="$AVX512" -DGGML_AVX512_VNNI="$AVX512_VNNI" \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF >&2
cmake --build "$DIR/build" --target llama-server -j "$JOBS" >&2
mkdir -p "$DIR/bin"
cp "$DIR/build/bin/llama-server" "$BIN.partial.$$"
mv "$BIN.partial.$$" "$BIN"
echo "accellm: llama-server built at $BIN" >&2
echo "$BIN"
