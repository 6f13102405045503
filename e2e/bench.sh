#!/usr/bin/env bash
# `make bench`: builds the release shim, starts containerd 2.1 (or $WASMPOD_CONTAINERD) with
# it, and prints start-up and memory figures for wasmpod next to runc, and HTTP figures next
# to a native hyper server and `wasmtime serve` (when built), and the density table (DENSITY
# pods per runtime, 200 by default) with its plot in target/bench/. Root, Debian 12.
#
#   e2e/bench.sh [density | pod-charge]    (one section only)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
V=${WASMPOD_CONTAINERD:-2.1}
# `wasmtime serve` for the HTTP comparison, where `make bench-wasmtime` built it.
export WASMPOD_WASMTIME=${WASMPOD_WASMTIME:-${WASMPOD_TESTBED:-/var/tmp/wasmpod-testbed}/wasmtime-cli/bin/wasmtime}
bash e2e/testbed.sh install
cargo build -q --release -p wasmpod-shim
(cd shim/isolated && cargo build -q --release)
cargo build -q --release -p wasmpod-e2e --bin bench --bin hello-server
bash e2e/testbed.sh images
trap 'bash e2e/testbed.sh stop "$V"' EXIT
env_file=$(mktemp)
WASMPOD_SHIM=$ROOT/target/release/containerd-shim-wasmtime-v1 \
	WASMPOD_ISOLATED_SHIM=$ROOT/target/release/containerd-shim-wasmtime-isolated-v1 \
	bash e2e/testbed.sh start "$V" >"$env_file"
# shellcheck disable=SC1090
source "$env_file"
rm -f "$env_file"
# The figures belong to this exact containerd: a pin Debian dropped is replaced by another.
echo "bench: containerd $(bash e2e/testbed.sh versions "$V"), running $WASMPOD_CONTAINERD_SERVER"
rm -f target/bench/density.csv
target/release/bench "$@"
# The density curves as a PNG, with matplotlib in a venv of its own (pinned; made once).
PLOT_VENV=${WASMPOD_PLOT_VENV:-${WASMPOD_TESTBED:-/var/tmp/wasmpod-testbed}/plot-venv}
if [ -f target/bench/density.csv ]; then
	if ! "$PLOT_VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
		echo "bench: installing matplotlib for the plot into $PLOT_VENV"
		python3 -m venv "$PLOT_VENV"
		"$PLOT_VENV/bin/pip" install -q -r e2e/plot-requirements.txt
	fi
	"$PLOT_VENV/bin/python" e2e/plot_density.py target/bench/density.csv target/bench/density.png
fi
