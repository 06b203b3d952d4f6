#!/usr/bin/env bash
# The one-process platform wired two ways, side by side in one run: the gateway calling the other services in
# process (`reco up`, the default) and over loopback gRPC (`reco up --over-grpc`). Both platforms run at once, each
# its own process loaded with the same data (MovieLens ml-latest-small when ../shared/datasets has it, generated
# data otherwise); the load generator is a third process. Recommend (a different user each call, result cache
# bypassed) is driven open loop at 200/s and at 1,000/s, the two wirings taking turns run by run (this machine's
# speed drifts, so each figure is the median of the rounds and the ratio is taken within a round), then the most
# throughput with p99 under 50 ms (closed loop, 1..64 workers), also in turns.
# Per run: p50 and p99, errors, and the CPU time the platform process spent per request (from /proc) over the run.
# Usage: scripts/bench-wirings.sh [--rounds N] [--duration SECS]
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
duration=20
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

. scripts/bench-common.sh
out="$target_dir/bench-results/wirings"
mkdir -p "$out"

# Two base ports, each with six free ports after it.
read -r port_a port_b < <(free_base_ports 2 56051)

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(git rev-parse --short HEAD 2>/dev/null)"

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
start() {
  local name="$1" port="$2"
  shift 2
  "$reco" up --base-port "$port" "${data[@]}" "$@" >"$out/up-$name.log" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
}
start in_process "$port_a"
start over_grpc "$port_b" --over-grpc
for name in in_process over_grpc; do
  for _ in $(seq 1 600); do
    grep -q "^serving" "$out/up-$name.log" && break
    sleep 0.5
  done
  grep -q "^serving" "$out/up-$name.log" || { cat "$out/up-$name.log"; echo "$name did not start"; exit 1; }
done
echo "== in process on 127.0.0.1:$port_a (pid $pid_in_process), over gRPC on 127.0.0.1:$port_b (pid $pid_over_grpc)"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
field() { python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print(d$2)" "$1"; }

# One open-loop run: prints "p50 p99 errors cpu_ms_per_request".
rate_run() {
  local name="$1" port="$2" pid="$3" rate="$4" file="$out/$1-$4-$5.txt"
  local before after
  "$reco" bench --addr "127.0.0.1:$port" --rate "$rate" --duration-secs "$duration" --warmup-secs 2 \
    "${data[@]}" --json >"$file" 2>&1 &
  local bench=$!
  sleep 2
  before=$(ticks "$pid")
  wait $bench
  after=$(ticks "$pid")
  # The ticks cover the measured part and the warm-up's tail; the requests are the rate times that time.
  python3 - "$file" "$before" "$after" "$rate" "$duration" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
f, before, after, rate, duration, hz = sys.argv[1], *map(float, sys.argv[2:])
d = json.loads(open(f).read().splitlines()[-1])
cpu = (after - before) * 1000 / hz / (d["sent"] or 1)
errors = sum(d["errors"].values())
print(f'{d["p50_ms"]:.2f} {d["p99_ms"]:.2f} {errors + d["degraded"]} {cpu:.3f}')
EOF
}

summary="$out/summary.txt"
: >"$summary"
for rate in 200 1000; do
  echo "== Recommend open loop at $rate/s, $rounds rounds of ${duration}s, alternated" | tee -a "$summary"
  printf '  %-6s %-11s %8s %8s %14s %10s\n' round wiring p50_ms p99_ms errors+degr cpu_ms/req | tee -a "$summary"
  for r in $(seq 1 "$rounds"); do
    # Which wiring goes first alternates too.
    order=(in_process over_grpc)
    [ $((r % 2)) -eq 0 ] && order=(over_grpc in_process)
    for name in "${order[@]}"; do
      if [ "$name" = in_process ]; then port=$port_a pid=$pid_in_process; else port=$port_b pid=$pid_over_grpc; fi
      read -r p50 p99 bad cpu < <(rate_run "$name" "$port" "$pid" "$rate" "$r")
      printf '  %-6s %-11s %8s %8s %14s %10s\n' "$r" "$name" "$p50" "$p99" "$bad" "$cpu" | tee -a "$summary"
    done
  done
done

echo "== most throughput with p99 under 50 ms (closed loop), alternated" | tee -a "$summary"
for r in $(seq 1 "$rounds"); do
  for name in in_process over_grpc; do
    if [ "$name" = in_process ]; then port=$port_a; else port=$port_b; fi
    file="$out/$name-max-$r.txt"
    "$reco" bench --addr "127.0.0.1:$port" --find-max --p99-limit-ms 50 --duration-secs 8 "${data[@]}" --json \
      >"$file" 2>&1
    echo "  $r $name: $(grep -m1 -E '^(most throughput|no concurrency)' "$file")" | tee -a "$summary"
  done
done
echo "== summary in $summary"
