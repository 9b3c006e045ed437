#!/usr/bin/env bash
# Part of the reproduction in docs/accellm.md; run from the repository root with `accellm` on PATH.
set -euo pipefail
# usage: sync.sh HARDWARE TRACE RATES
for sync in eager lazy recompute; do
  accellm simulate --config docs/accellm/knobs/default.toml --hardware $1 --workload $2 --model llama2-70b --tp 8 --instances 16 \
    --num-requests 4000 --ttft-slo-ms 2000 --tbt-slo-ms 200 --cluster-policy accellm \
    --instance-policy vllm --sync $sync --sweep-rate $3 --json | python3 docs/accellm/sync_table.py "sync=$sync"
done
