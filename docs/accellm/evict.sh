#!/usr/bin/env bash
# Part of the reproduction in docs/accellm.md; run from the repository root with `accellm` on PATH.
set -euo pipefail
# usage: evict.sh RATES   (Llama-2-13B on one H100 per instance: KV runs short at 40 req/s)
for sync in eager recompute; do for ev in lru largest-first; do
  accellm simulate --config docs/accellm/knobs/default.toml --hardware h100 --workload azure-conv --model llama2-13b --tp 1 --instances 16 \
    --num-requests 4000 --ttft-slo-ms 2000 --tbt-slo-ms 200 --cluster-policy accellm \
    --instance-policy vllm --sync $sync --eviction $ev --sweep-rate $1 --json \
    | python3 docs/accellm/sync_table.py "sync=$sync eviction=$ev"
done; done
