#!/usr/bin/env bash
# Part of the reproduction in docs/accellm.md; run from the repository root with `accellm` on PATH.
set -euo pipefail
# usage: main.sh HARDWARE TRACE SPLITWISE_PREFILL_INSTANCES RATES
. docs/accellm/setup.sh
accellm simulate --config docs/accellm/knobs/default.toml --hardware $1 --workload $2 $COMMON --prefill-instances $3 \
  --compare least-load/vllm,least-load/sarathi,splitwise/vllm,accellm/vllm,accellm/sarathi \
  --sweep-rate $4 --json | python3 docs/accellm/accellm_table.py
accellm simulate --config docs/accellm/knobs/backlog.toml --hardware $1 --workload $2 $COMMON \
  --cluster-policy accellm --instance-policy vllm --sweep-rate $4 --json \
  | python3 docs/accellm/accellm_table.py "accellm/vllm backlog-routing"
