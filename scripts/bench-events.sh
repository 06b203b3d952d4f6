#!/usr/bin/env bash
# Events in real time, measured: a `reco up` platform (one process, embedded backends, MovieLens ml-latest-small
# when ../shared/datasets has it) and a moto server for the Kinesis API; the load generator is another process.
#   1. RecordEvents in batches of 100: open loop at 100 calls/s (10,000 events/s), then the most calls a second in
#      closed loop (1..64 workers) with p99 under 200 ms.
#   2. `reco bench-events`: the ingest service (in the bench process) recording a backlog put on a 2-shard stream
#      (events/s), then freshness: a click put on the stream until the user's next Recommend (result cache on) no
#      longer shows the item, p50/p99, at the consumer's default poll interval (200 ms) and at 50 ms.
# Usage: scripts/bench-events.sh [--duration SECS] [--samples N]
set -euo pipefail
cd "$(dirname "$0")/.."

duration=20
samples=200
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift ;;
    --samples) samples="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

. scripts/bench-common.sh
out="$target_dir/bench-results/events"
mkdir -p "$out"
moto="$(command -v moto_server || echo .tools/venv/bin/moto_server)"
[ -x "$moto" ] || { echo "no moto_server: run scripts/test.sh once (it installs one into .tools/)"; exit 1; }

read -r port moto_port < <(free_base_ports 2 57051)
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(git rev-parse --short HEAD 2>/dev/null)"

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"$moto" -H 127.0.0.1 -p "$moto_port" >"$out/moto.log" 2>&1 &
pids+=($!)
"$reco" up --base-port "$port" "${data[@]}" >"$out/up.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  grep -q "^serving" "$out/up.log" && break
  sleep 0.5
done
grep -q "^serving" "$out/up.log" || { cat "$out/up.log"; echo "the platform did not start"; exit 1; }
echo "== platform on 127.0.0.1:$port, moto on 127.0.0.1:$moto_port"

echo "== RecordEvents, batches of 100, open loop at 100 calls/s (10,000 events/s) for ${duration}s"
"$reco" bench --addr "127.0.0.1:$port" --target record-events "${data[@]}" --rate 100 \
  --duration-secs "$duration" --json | tee "$out/record-events-rate.txt"
echo "== RecordEvents, batches of 100, closed loop"
"$reco" bench --addr "127.0.0.1:$port" --target record-events "${data[@]}" --find-max --p99-limit-ms 200 \
  --duration-secs 10 | tee "$out/record-events-max.txt"

for poll in 200 50; do
  echo "== the Kinesis consumer, poll ${poll} ms"
  "$reco" bench-events --gateway-addr "127.0.0.1:$port" --cache-addr "127.0.0.1:$((port + 2))" \
    --kinesis-endpoint-url "http://127.0.0.1:$moto_port" --kinesis-region us-east-1 \
    --poll-ms "$poll" --samples "$samples" "${data[@]}" --json | tee "$out/ingest-poll-$poll.txt"
done
