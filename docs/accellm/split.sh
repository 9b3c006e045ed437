#!/usr/bin/env bash
# Part of the reproduction in docs/accellm.md; run from the repository root with `accellm` on PATH.
set -euo pipefail
# usage: split.sh HARDWARE TRACE RATE
. docs/accellm/setup.sh
for p in 4 6 8 10 12 14; do
  accellm simulate --hardware $1 --workload $2 $COMMON --cluster-policy splitwise \
    --instance-policy vllm --prefill-instances $p --rate $3 --json \
    | python3 docs/accellm/accellm_table.py "splitwise/vllm P=$p"
done
