#!/usr/bin/env bash
# Partner-only partition: worker 0 and worker 1 on two hosts (network namespaces) joined through
# a third that routes between them and runs the front. A steady load (RATE req/s, Poisson) runs
# for PRE + CUT + POST seconds; the router stops forwarding PRE seconds in (the partners lose
# each other, the front still reaches both) and forwards again CUT seconds later. Prints the
# requests each worker completed before, during and after the cut, the failed ones, whether
# either worker was declared down, and how long after the link returned the pair re-formed
# (accellm_pair_linked back to 1, polled every 100 ms). Root only.
# Usage: bash docs/bench/partition.sh [ACCELLM_BINARY]   CUT=60 PRE=10 POST=20 RATE=1 OUT=64
set -euo pipefail
BIN="$(realpath "${1:-target/release/accellm}")"
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)"; exit 1; }
PRE="${PRE:-10}"; CUT="${CUT:-60}"; POST="${POST:-20}"; RATE="${RATE:-1}"
NUM=$(python3 -c "print(int($RATE * ($PRE + $CUT + $POST)))")
A=aclpart$$a; B=aclpart$$b; R=aclpart$$r
DIR=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for n in $A $B $R; do ip netns del $n 2>/dev/null || true; done
}
trap cleanup EXIT
for n in $A $B $R; do ip netns add $n; ip -n $n link set lo up; done
k=0
for h in $A $B; do
  net=$((201 + k))
  ip link add avp$$${k}h type veth peer name avp$$${k}r
  ip link set avp$$${k}h netns $h; ip link set avp$$${k}r netns $R
  ip -n $h addr add 10.$net.0.2/24 dev avp$$${k}h; ip -n $R addr add 10.$net.0.1/24 dev avp$$${k}r
  ip -n $h link set avp$$${k}h up; ip -n $R link set avp$$${k}r up
  ip -n $h route add default via 10.$net.0.1
  k=$((k + 1))
done
forward() { ip netns exec $R sysctl -qw net.ipv4.ip_forward="$1"; }
forward 1
W0=10.201.0.2:7001; W1=10.202.0.2:7001
RUST_LOG=info ip netns exec $A "$BIN" worker --listen $W0 --insecure 2>"$DIR/w0.log" & pids+=($!)
RUST_LOG=info ip netns exec $B "$BIN" worker --listen $W1 --insecure 2>"$DIR/w1.log" & pids+=($!)
RUST_LOG=info ip netns exec $R "$BIN" serve --port 18000 ${SERVE_ARGS:-} --workers $W0,$W1 2>"$DIR/front.log" & pids+=($!)
for _ in $(seq 1 120); do grep -q "listening on" "$DIR/front.log" && break; sleep 1; done
metrics() { ip netns exec $R curl -s localhost:18000/metrics; }
# Per worker: requests completed there (last token sampled there) and iterations run.
snap() {
  local m; m=$(metrics)
  echo "$m" | awk '/^accellm_instance_requests_completed_total\{/ {printf "%s ", $2}'
  echo "$m" | awk '/^accellm_instance_iterations_total\{/ {printf "%s ", $2}'
}
ip netns exec $R "$BIN" bench --base-url http://127.0.0.1:18000 --num-prompts "$NUM" --rate "$RATE" \
  --workload "synthetic:prompt=lognormal(128,0.5),output=${OUT:-64}" --no-progress --seed 1 \
  --timeout 600 --json "$DIR/bench.json" >"$DIR/bench.txt" 2>&1 &
bench=$!
sleep "$PRE"
s0=$(snap); forward 0; t_cut=$(date +%s.%N)
echo "link cut at ${PRE} s for ${CUT} s (load $(cut -d' ' -f1-3 /proc/loadavg))"
sleep "$CUT"
s1=$(snap); linked_before=$(metrics | awk -F' ' '/^accellm_pair_linked\{pair="0-1"\}/ {print $2}')
forward 1; t_back=$(date +%s.%N)
reformed=""
for _ in $(seq 1 300); do
  if [ "$(metrics | awk '/^accellm_pair_linked\{pair="0-1"\}/ {print $2}')" = 1 ]; then
    reformed=$(python3 -c "print(f'{$(date +%s.%N) - $t_back:.1f}')"); break
  fi
  sleep 0.1
done
echo "link back; pair_linked was ${linked_before} during the cut; re-formed after ${reformed:-more than 30} s (load $(cut -d' ' -f1-3 /proc/loadavg))"
wait $bench || true
s2=$(snap); up=$(metrics | awk '/^accellm_instance_up\{/ {printf "%s ", $2}')
rec=$(metrics | awk '/^accellm_requests_recovered_total\{/ {printf "%s ", $2}')
python3 - "$DIR" "$s0" "$s1" "$s2" "$up" "$rec" "$t_cut" <<'PY'
import json, re, sys, datetime
d, s0, s1, s2, up, rec, t_cut = sys.argv[1:]
b = json.load(open(f"{d}/bench.json"))
f = lambda s: [float(x) for x in s.split()]
s0, s1, s2 = f(s0), f(s1), f(s2)  # completed w0, w1, iterations w0, w1 (older builds: iterations only)
if len(s0) == 2:
    s0, s1, s2 = [float("nan")] * 2 + s0, [float("nan")] * 2 + s1, [float("nan")] * 2 + s2
# When the front first reacted to the cut (a copy that failed), from its log.
ansi = re.compile(r'\x1b\[[0-9;]*m')
for line in open(f"{d}/front.log"):
    line = ansi.sub('', line)
    if "KV copy to a partner failed" in line:
        t = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        print(f"cut detected {t - float(t_cut):.1f} s after it began (a KV copy's ack timed out)")
        break
print(f"bench: {b.get('completed')} completed, {b.get('failed')} failed of {b.get('num_prompts')}; "
      f"workers up at the end: {up.strip()}; recovered (replica, recompute): {rec.strip()}")
print("| worker | completed before the cut | completed during the cut | completed after | iterations during the cut |")
print("|---|---:|---:|---:|---:|")
for w in (0, 1):
    print(f"| {w} | {s0[w]:.0f} | {s1[w] - s0[w]:.0f} | {s2[w] - s1[w]:.0f} | {s1[2 + w] - s0[2 + w]:.0f} |")
PY
grep -h "partners cut off\|paired again\|instance down" "$DIR/front.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-220 || true
echo "logs in $DIR"
