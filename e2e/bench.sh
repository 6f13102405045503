#!/usr/bin/env bash
# `make bench`: builds the release shim, starts containerd 2.1 (or $WASMPOD_CONTAINERD) with
# it, and prints start-up and memory figures for wasmpod next to runc, and HTTP figures next
# to a native hyper server and `wasmtime serve` (when built). Root, Debian 12.
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
target/release/bench
