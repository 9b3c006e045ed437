#!/usr/bin/env bash
# Regenerates the tables of docs/accelgen.md (markdown on stdout).
#
#   bash docs/accelgen/eval.sh single      # one instance: 7B/13B x A100/H100, rate sweep
#   bash docs/accelgen/eval.sh ablation    # AccelGen knobs on Llama-2-7B / A100
#   bash docs/accelgen/eval.sh cluster     # 4 instances: cluster policy x instance policy
#
# SIM overrides the simulator command (default: the accellm-sim example, no candle build).
set -euo pipefail
cd "$(dirname "$0")/../.."
SIM=${SIM:-"cargo run --release -q -p accellm-sim --example simulate --"}
N=${N:-1000}
W='mix:sharegpt*0.4@chat+sharegpt*0.3@code+arxiv*0.3@summarisation'
COMMON=(--workload "$W" --slo-classes per-source --num-requests "$N" --tp 1 --seed 0 --csv)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# sim LABEL ARGS...: CSV rows of one run, the first column replaced by LABEL.
sim() {
    local label=$1
    shift
    $SIM "${COMMON[@]}" "$@" | tail -n +2 | sed "s#^[^,]*,[^,]*,#${label},#"
}

# table FILE: markdown of the CSV rows in FILE (label,rate,...), grouped by rate.
table() {
    python3 - "$1" <<'EOF'
import csv, sys
cols = ("label,rate,model,hardware,instances,tp,arrived,completed,rejected,unfinished,"
        "ttft_ms_mean,ttft_ms_p50,ttft_ms_p90,ttft_ms_p99,tbt_ms_mean,tbt_ms_p50,tbt_ms_p90,tbt_ms_p99,"
        "jct_ms_mean,jct_ms_p50,jct_ms_p90,jct_ms_p99").split(",")
rows = []
for line in csv.reader(open(sys.argv[1])):
    d = dict(zip(cols, line))
    rest = line[len(cols):]
    for k, v in zip(["norm_ms_mean", "norm_ms_p50", "norm_ms_p90", "norm_ms_p99",
                     "request_throughput", "output_throughput", "slo_attainment", "goodput"], rest):  # strict
        d[k] = v
    rows.append(d)
print("| rate req/s | policy | throughput req/s | goodput req/s | SLO attainment | JCT p50 s | JCT p99 s | TBT p99 ms |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
rates = sorted({float(r["rate"]) for r in rows if r["rate"] not in ("", "-")})
best = {}
for rate in rates:
    group = [r for r in rows if r["rate"] not in ("", "-") and float(r["rate"]) == rate]
    for r in group:
        print(f"| {rate:g} | {r['label']} | {float(r['request_throughput']):.2f} | "
              f"{float(r['goodput']):.2f} | {100 * float(r['slo_attainment']):.1f}% | "
              f"{float(r['jct_ms_p50']) / 1e3:.1f} | {float(r['jct_ms_p99']) / 1e3:.1f} | "
              f"{float(r['tbt_ms_p99']):.1f} |")
    base = [r for r in group if not r["label"].startswith("accelgen") and r["label"] != "bound"]
    ag = [r for r in group if r["label"] == "accelgen"]
    if base and ag:
        a = ag[0]
        tb = max(float(r["request_throughput"]) for r in base)
        gb = max(float(r["goodput"]) for r in base)
        gmin = min(float(r["goodput"]) for r in base)
        best[rate] = (float(a["request_throughput"]) / tb,
                      float(a["goodput"]) / gb if gb > 0 else float("inf"),
                      float(a["goodput"]) / gmin if gmin > 0 else float("inf"))
if best:
    print()
    print("| rate req/s | accelgen / best baseline, throughput | accelgen / best baseline, goodput | accelgen / worst baseline, goodput |")
    print("|---:|---:|---:|---:|")
    for rate, (t, g, w) in best.items():
        print(f"| {rate:g} | {t:.2f}x | {g:.2f}x | {w:.2f}x |")
EOF
}

# bound FILE RATES...: goodput upper bound rows (see docs/accelgen.md, "Upper bound").
bound() {
    python3 - "$@" <<'EOF'
import csv, sys
f, alone, rates = sys.argv[1], float(sys.argv[2]), [float(x) for x in sys.argv[3:]]
cap = max(float(l[26]) for l in csv.reader(open(f)))  # request_throughput
print(f"Upper bound: min(rate x {100 * alone:.1f}% (best attainment served alone), "
      f"{cap:.2f} req/s (best throughput any policy reached)):")
print()
print("| rate req/s | " + " | ".join(f"{r:g}" for r in rates) + " |")
print("|---|" + "---:|" * len(rates))
print("| goodput bound req/s | " + " | ".join(f"{min(r * alone, cap):.2f}" for r in rates) + " |")
EOF
}

# alone MODEL HW: best SLO attainment over the policies at 0.02 req/s (requests hardly overlap).
alone() {
    $SIM "${COMMON[@]}" --model "$1" --hardware "$2" --instances 1 --rate 0.02 \
        --compare vllm,sarathi,accelgen | tail -n +2 |
        python3 -c 'import csv,sys; print(max(float(l[29]) for l in csv.reader(sys.stdin)))'  # slo_attainment_strict
}

single() {
    local model=$1 hw=$2 rates=$3 f="$TMP/$1-$2.csv"
    : >"$f"
    local args=(--model "$model" --hardware "$hw" --instances 1 --sweep-rate "$rates")
    sim vllm "${args[@]}" --instance-policy vllm >>"$f"
    sim sarathi-512 "${args[@]}" --instance-policy sarathi --chunk-size 512 >>"$f"
    sim sarathi-2048 "${args[@]}" --instance-policy sarathi --chunk-size 2048 >>"$f"
    sim accelgen "${args[@]}" --instance-policy accelgen >>"$f"
    echo "### $model on $hw (1 instance, TP1)"
    echo
    table "$f"
    echo
    # shellcheck disable=SC2046
    bound "$f" "$(alone "$model" "$hw")" $(tr , ' ' <<<"$rates")
    echo
}

case "${1:-single}" in
single)
    single llama2-7b a100 0.5,1,1.5,2,3
    single llama2-13b a100 0.25,0.5,0.75,1,1.5
    single llama2-7b h100 1,2,3,4,5
    single llama2-13b h100 0.5,1,1.5,2,3
    ;;
ablation)
    f="$TMP/ablation.csv"
    : >"$f"
    args=(--model llama2-7b --hardware a100 --instances 1 --sweep-rate 1,1.5,2,3 --instance-policy accelgen)
    sim sarathi-512 "${args[@]/accelgen/sarathi}" >>"$f"
    sim accelgen "${args[@]}" >>"$f"
    for c in admission overdue-first kappa2 no-skip no-packing; do
        sim "accelgen-$c" --config "docs/accelgen/$c.toml" "${args[@]}" >>"$f"
    done
    table "$f"
    ;;
cluster)
    f="$TMP/cluster.csv"
    : >"$f"
    args=(--model llama2-7b --hardware h100 --instances 4 --sweep-rate 8,12,16)
    for c in least-load accellm; do
        for i in sarathi accelgen; do
            sim "$c/$i" "${args[@]}" --cluster-policy "$c" --instance-policy "$i" >>"$f"
        done
    done
    table "$f"
    ;;
*)
    echo "usage: $0 single|ablation|cluster" >&2
    exit 2
    ;;
esac
