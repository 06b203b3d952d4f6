# Sourced by the end-to-end bench scripts: the release build of `reco`, the dataset to load, free ports.
# Sets target_dir, reco (the binary) and data (the --dataset arguments, empty when ../shared/datasets lacks
# MovieLens); free_base_ports N START prints N base ports from START up, each with six free ports after it.

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p reco-cli
reco="$target_dir/release/reco"

data=()
if [ -d ../shared/datasets/ml-latest-small ]; then
  data=(--dataset ../shared/datasets/ml-latest-small)
fi

free_base_ports() {
  python3 - "$1" "$2" <<'PY'
import socket, sys
want, start = int(sys.argv[1]), int(sys.argv[2])
found = []
for p in range(start, 60000, 10):
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
        found.append(p)
    if len(found) == want:
        break
print(*found)
PY
}
