#!/usr/bin/env bash
# Reproduces the end-to-end figures of BENCHMARKS.md on the embedded backends, on this machine:
#   1. the platform as six processes, one per service (`reco up --processes`), loaded with MovieLens
#      ml-latest-small when ../shared/datasets has it (generated data otherwise);
#   2. from another process: the feature service's user context and 200-item batch at 1,000 requests/s, Recommend
#      open loop at 200, 400 and 1,000/s, and the most Recommend throughput with p99 under 50 ms (closed loop,
#      1..64 workers).
# Each figure is printed and written as JSON under target/bench-results/. With --micro, the criterion benches of
# the hot paths run afterwards. Usage: scripts/bench.sh [--micro] [--duration SECS]
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

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target_dir/bench-results"
mkdir -p "$out"
cargo build --release -p reco-cli
reco="$target_dir/release/reco"

data=()
if [ -d ../shared/datasets/ml-latest-small ]; then
  data=(--dataset ../shared/datasets/ml-latest-small)
fi

# A base port with six free ports after it.
port=$(python3 -c 'import socket
for p in range(57051, 60000, 10):
    ok = True
    for q in range(p, p + 6):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", q))
        except OSError:
            ok = False
        finally:
            s.close()
    if ok:
        print(p)
        break')

echo "== machine"
nproc
grep -m1 "model name" /proc/cpuinfo || true
git rev-parse --short HEAD 2>/dev/null || true

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

run user-context --addr "127.0.0.1:$((port + 1))" --target user-context --rate 1000 --duration-secs "$duration"
run item-batch --addr "127.0.0.1:$((port + 1))" --target item-batch --rate 1000 --duration-secs "$duration"
run recommend-200 --addr "127.0.0.1:$port" --target recommend --rate 200 --duration-secs "$duration"
run recommend-400 --addr "127.0.0.1:$port" --target recommend --rate 400 --duration-secs "$duration"
run recommend-1000 --addr "127.0.0.1:$port" --target recommend --rate 1000 --duration-secs "$duration"
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
echo "results in $out"
