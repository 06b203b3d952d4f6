#!/usr/bin/env bash
# Reproduces the end-to-end figures of BENCHMARKS.md on the embedded backends, on this machine:
#   1. the platform as six processes, one per service (`reco up --processes`), loaded with MovieLens
#      ml-latest-small when ../shared/datasets has it (generated data otherwise);
#   2. from another process: the feature service's user context and 200-item batch at 1,000 requests/s, Recommend
#      open loop at 200, 400 and 1,000/s, and the most Recommend throughput with p99 under 50 ms (closed loop,
#      1..64 workers).
# Each figure is printed and written as JSON under target/bench-results/. Each fixed-rate run also prints the CPU time
# every process (the six services and the load generator) spent per request over the run's middle third, and the
# machine's speed is checked before and after (the same fixed loop, timed): these shared machines change speed.
# With --micro, the criterion benches of the hot paths run afterwards.
# Usage: scripts/bench.sh [--micro] [--duration SECS]
set -euo pipefail
cd "$(dirname "$0")/.."

micro=0
duration=30
while [ $# -gt 0 ]; do
  case "$1" in
    --micro) micro=1 ;;
    --duration) duration="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

. scripts/bench-common.sh
out="$target_dir/bench-results"
mkdir -p "$out"

# A base port with six free ports after it.
port=$(free_base_ports 1 57051)

# The same CPU-bound loop every time: its time says how fast the machine is at the moment.
speed() {
  python3 -c 'import time
t = time.perf_counter()
sum(i * i for i in range(10**7))
print(f"speed check: a fixed loop took {time.perf_counter() - t:.2f} s (lower is faster)")'
}

echo "== machine"
nproc
grep -m1 "model name" /proc/cpuinfo || true
git rev-parse --short HEAD 2>/dev/null || true
speed

echo "== starting the platform on 127.0.0.1:$port (log: $out/up.log)"
"$reco" up --processes --base-port "$port" "${data[@]}" >"$out/up.log" 2>&1 &
platform=$!
trap 'kill $platform 2>/dev/null || true; wait $platform 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q "^serving" "$out/up.log" && break
  kill -0 $platform 2>/dev/null || { cat "$out/up.log"; exit 1; }
  sleep 0.5
done
grep -q "^serving" "$out/up.log" || { echo "the platform did not start"; exit 1; }

run() {
  local name="$1"
  shift
  echo "== $name"
  "$reco" bench "$@" "${data[@]}" --json | tee "$out/$name.txt"
  tail -n 1 "$out/$name.txt" >"$out/$name.json"
}

# CPU time (user + system, clock ticks) so far of each service process and of the process $1, a line each.
ticks() {
  local p name
  for p in $(pgrep -P $platform) "$1"; do
    [ -r "/proc/$p/stat" ] || continue
    # A service is the argument after `serve`; the other process is the load generator.
    name=$(tr '\0' ' ' <"/proc/$p/cmdline" |
      awk '{for (i = 1; i < NF; i++) if ($i == "serve") {print $(i + 1); exit} print "load-generator"}')
    echo "$name $(awk '{print $14 + $15}' "/proc/$p/stat")"
  done
}

# `run` at a fixed rate ($2 per second), with the CPU time each process spent per request over the middle third.
run_rate() {
  local name="$1" rate="$2"
  shift 2
  echo "== $name"
  "$reco" bench --rate "$rate" --duration-secs "$duration" "$@" "${data[@]}" --json >"$out/$name.txt" &
  local bench=$! third=$((duration / 3 > 1 ? duration / 3 : 1)) before after
  sleep "$third"
  before=$(ticks $bench)
  sleep "$third"
  after=$(ticks $bench)
  wait $bench
  cat "$out/$name.txt"
  tail -n 1 "$out/$name.txt" >"$out/$name.json"
  join <(sort <<<"$before") <(sort <<<"$after") |
    awk -v hz="$(getconf CLK_TCK)" -v n="$((rate * third))" '
      { ms = ($3 - $2) * 1000 / hz / n; total += ms; line = line sprintf("  %s %.3f", $1, ms) }
      END { printf "  cpu per request (ms, middle third):%s  total %.3f\n", line, total }' |
    tee -a "$out/$name.txt"
}

run_rate user-context 1000 --addr "127.0.0.1:$((port + 1))" --target user-context
run_rate item-batch 1000 --addr "127.0.0.1:$((port + 1))" --target item-batch
run_rate recommend-200 200 --addr "127.0.0.1:$port" --target recommend
run_rate recommend-400 400 --addr "127.0.0.1:$port" --target recommend
run_rate recommend-1000 1000 --addr "127.0.0.1:$port" --target recommend
run recommend-max --addr "127.0.0.1:$port" --target recommend --find-max --p99-limit-ms 50 \
  --duration-secs "$((duration / 3 > 5 ? duration / 3 : 5))"

if [ "$micro" = 1 ]; then
  kill $platform; wait $platform 2>/dev/null || true
  echo "== criterion benches"
  cargo bench -p reco-feature-store --bench items_200
  cargo bench -p reco-vector-index --bench knn
  cargo bench -p reco-gateway --bench merge
  cargo bench -p reco-ranker --bench score_500
  cargo bench -p reco-graph-store --bench walk
fi
speed
echo "results in $out"
