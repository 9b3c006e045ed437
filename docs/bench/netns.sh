#!/usr/bin/env bash
# Two "hosts" (network namespaces) joined by a veth pair shaped to 1 Gbit/s with tc tbf; worker 0
# and the front on host 1, worker 1 on host 2. Sends NUM prompts of PROMPT tokens and compares
# each iteration's measured replica copy time with the simulator's link model for the same bytes
# (Link::transfer_us: latency + bytes / bandwidth, --link 0.125gbps = 1 Gbit/s, 10 µs latency).
# Each replica copy's last layer is flushed at once, so its send-to-ack time is that layer's
# copy alone (earlier layers went while later ones computed). Root only.
# Usage: bash docs/bench/netns.sh [ACCELLM_BINARY]   NUM=12 PROMPT=512 RATE=1gbit SERVE_ARGS=...
#        TLS_ARGS="--tls-cert C --tls-key K --tls-ca CA" (mutual TLS on every link)
#        WORKER_ARGS="$TLS_ARGS --kv-wire f16" (both workers' flags; KV in half precision)
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
# KV links idle between iterations; without this, TCP restarts slow start before every layer burst.
ip netns exec $A sysctl -qw net.ipv4.tcp_slow_start_after_idle=0
ip netns exec $B sysctl -qw net.ipv4.tcp_slow_start_after_idle=0
tc -n $A qdisc add dev $VA root tbf rate "$RATE_BIT" burst 64kb latency ${TBF_LATENCY:-100ms}
tc -n $B qdisc add dev $VB root tbf rate "$RATE_BIT" burst 64kb latency ${TBF_LATENCY:-100ms}
# Prefill copies of one size: whole prompts (vLLM's policy), at most 1024 tokens per iteration.
printf '[instance.vllm]\nmax_num_batched_tokens = 1024\n' >"$DIR/serve.toml"
SERVE_ARGS="${SERVE_ARGS:---instance-policy vllm --config $DIR/serve.toml}"
# Plaintext by default (the namespaces' addresses are not loopback, hence --insecure);
# TLS_ARGS="--tls-cert C --tls-key K --tls-ca CA" runs every link over mutual TLS instead.
TLS_ARGS="${TLS_ARGS:-}"
if [ -n "$TLS_ARGS" ]; then WORKER_ARGS="${WORKER_ARGS:-$TLS_ARGS}"; else WORKER_ARGS="${WORKER_ARGS:---insecure}"; fi
RUST_LOG=info ip netns exec $A "$BIN" worker --listen 10.200.0.1:7001 $WORKER_ARGS 2>"$DIR/w0.log" & pids+=($!)
RUST_LOG=info ip netns exec $B "$BIN" worker --listen 10.200.0.2:7001 $WORKER_ARGS 2>"$DIR/w1.log" & pids+=($!)
ip netns exec $A "$BIN" serve $SERVE_ARGS $TLS_ARGS --port 18000 --workers 10.200.0.1:7001,10.200.0.2:7001 2>"$DIR/front.log" & pids+=($!)
for _ in $(seq 1 60); do grep -q "listening on" "$DIR/front.log" && break; sleep 1; done
ip netns exec $A "$BIN" bench --base-url http://127.0.0.1:18000 --num-prompts "${NUM:-12}" --rate 1 \
  --workload "synthetic:prompt=${PROMPT:-512},output=16" --no-progress --seed 1 >/dev/null 2>&1
echo "link $RATE_BIT (tbf), load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$DIR" "$RATE_BIT" <<'PY'
import re, sys, statistics, glob
d, rate = sys.argv[1], sys.argv[2]
bps = float(re.match(r'([0-9.]+)', rate).group(1)) * {'g': 1e9, 'm': 1e6}[re.search(r'([gm])bit', rate).group(1)] / 8
rows = []
ansi = re.compile(r'\x1b\[[0-9;]*m')
for f in glob.glob(f"{d}/w*.log"):
    for line in open(f):
        m = re.search(r'bytes=(\d+) ms=([0-9.]+) last_layer_bytes=(\d+) last_layer_ms=([0-9.]+)', ansi.sub('', line))
        if m and int(m.group(3)) > 0:
            rows.append(tuple(float(x) for x in m.groups()))
def pred_ms(b):  # accellm_core::cost::Link::transfer_us with 10 µs latency
    return (10 + b / bps * 1e6) / 1e3
def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]
print("| last layer per copy | iterations | KV per iteration MB (p50) | last layer KB (p50) | measured copy ms (p50) | link model ms (p50) | measured / model p10 · p50 · p90 |")
print("|---|---:|---:|---:|---:|---:|---|")
# tbf lets a burst (64 KB here) through at line rate: small layers beat the model.
for name, sel in (("≤ 64 KB", lambda r: r[2] <= 65536), ("> 64 KB", lambda r: r[2] > 65536)):
    g = [r for r in rows if sel(r)]
    if not g:
        print(f"| {name} | 0 | – | – | – | – | – |")
        continue
    ratio = [r[3] / pred_ms(r[2]) for r in g]
    print(f"| {name} | {len(g)} | {pct([r[0] for r in g], .5)/1e6:.2f} | {pct([r[2] for r in g], .5)/1e3:.0f} | "
          f"{pct([r[3] for r in g], .5):.2f} | {pct([pred_ms(r[2]) for r in g], .5):.2f} | "
          f"{pct(ratio, .1):.2f} · {pct(ratio, .5):.2f} · {pct(ratio, .9):.2f} |")
PY
echo "logs in $DIR"
