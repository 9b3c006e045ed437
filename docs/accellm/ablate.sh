#!/usr/bin/env bash
# Part of the reproduction in docs/accellm.md; run from the repository root with `accellm` on PATH.
set -euo pipefail
# usage: ablate.sh HARDWARE TRACE RATES VARIANT...
. docs/accellm/setup.sh
hw=$1; trace=$2; rates=$3; shift 3
for v in "$@"; do
  accellm simulate --config docs/accellm/knobs/$v.toml --hardware $hw --workload $trace $COMMON \
    --cluster-policy accellm --instance-policy vllm --sweep-rate $rates --json \
    | python3 docs/accellm/accellm_table.py "accellm $v"
done
