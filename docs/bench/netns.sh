#!/usr/bin/env bash
# Two "hosts" (network namespaces) joined by a veth pair shaped to 1 Gbit/s with tc tbf; worker 0
# and the front on host 1, worker 1 on host 2. Sends NUM prompts of PROMPT tokens and compares
# each iteration's measured replica copy time with the simulator's link model for the same bytes
# (Link::transfer_us: latency + bytes / bandwidth, --link 0.125gbps = 1 Gbit/s, 10 µs latency).
# Root only. Usage: bash docs/bench/netns.sh [ACCELLM_BINARY]   NUM=12 PROMPT=512 RATE=mbit
set -euo pipefail
BIN="$(realpath "${1:-target/release/accellm}")"
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)"; exit 1; }
RATE_BIT="${RATE:-1gbit}"
A=aclbench$$a; B=aclbench$$b; VA=avb$$a; VB=avb$$b
DIR=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true
}
trap cleanup EXIT
ip netns add $A; ip netns add $B
ip link add $VA type veth peer name $VB
ip link set $VA netns $A; ip link set $VB netns $B
ip -n $A addr add 10.200.0.1/24 dev $VA; ip -n $B addr add 10.200.0.2/24 dev $VB
ip -n $A link set $VA up; ip -n $B link set $VB up; ip -n $A link set lo up; ip -n $B link set lo up
tc -n $A qdisc add dev $VA root tbf rate "$RATE_BIT" burst 64kb latency 10ms
tc -n $B qdisc add dev $VB root tbf rate "$RATE_BIT" burst 64kb latency 10ms
RUST_LOG=info ip netns exec $A "$BIN" worker --listen 10.200.0.1:7001 2>"$DIR/w0.log" & pids+=($!)
RUST_LOG=info ip netns exec $B "$BIN" worker --listen 10.200.0.2:7001 2>"$DIR/w1.log" & pids+=($!)
ip netns exec $A "$BIN" serve --port 18000 --workers 10.200.0.1:7001,10.200.0.2:7001 2>"$DIR/front.log" & pids+=($!)
for _ in $(seq 1 60); do grep -q "listening on" "$DIR/front.log" && break; sleep 1; done
ip netns exec $A "$BIN" bench --base-url http://127.0.0.1:18000 --num-prompts "${NUM:-12}" --rate 1 \
  --workload "synthetic:prompt=${PROMPT:-512},output=16" --no-progress --seed 1 >/dev/null 2>&1
echo "link $RATE_BIT (tbf), load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$DIR" "$RATE_BIT" <<'PY'
import re, sys, statistics, glob
d, rate = sys.argv[1], sys.argv[2]
bps = float(re.match(r'([0-9.]+)', rate).group(1)) * {'g': 1e9, 'm': 1e6}[re.search(r'([gm])bit', rate).group(1)] / 8
rows = []
for f in glob.glob(f"{d}/w*.log"):
    for line in open(f):
        m = re.search(r'bytes=(\d+) ms=([0-9.]+) last_layer_bytes=(\d+) last_layer_ms=([0-9.]+)', line)
        if m:
            rows.append(tuple(float(x) for x in m.groups()))
# Iterations whose copies carry at least 64 tokens of KV (46 KiB per token): prefill chunks.
big = [r for r in rows if r[0] >= 64 * 46080]
def pred_ms(b):  # accellm_core::cost::Link::transfer_us with 10 µs latency
    return (10 + b / bps * 1e6) / 1e3
print("| iterations | KV per iteration MB (mean) | last layer MB | measured last-layer copy ms (p50) | link model ms | ratio | whole iteration's copies, first layer to ack, ms (p50) | link model for all its bytes ms |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
if big:
    lb = statistics.mean(r[2] for r in big)
    meas = statistics.median(r[3] for r in big)
    allb = statistics.mean(r[0] for r in big)
    whole = statistics.median(r[1] for r in big)
    print(f"| {len(big)} | {allb/1e6:.2f} | {lb/1e6:.3f} | {meas:.1f} | {pred_ms(lb):.1f} | {meas/pred_ms(lb):.2f} | {whole:.0f} | {pred_ms(allb):.0f} |")
else:
    print("| 0 | – | – | – | – | – | – | – |")
PY
echo "logs in $DIR"
