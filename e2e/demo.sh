#!/usr/bin/env bash
# Sets up the test bed on this machine and runs one Wasm pod through containerd 2.1's CRI
# (RunPodSandbox with runtime handler `wasmtime`, CreateContainer, StartContainer, its log),
# then stops containerd again. Root, Debian 12.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
V=${WASMPOD_CONTAINERD:-2.1}
bash e2e/testbed.sh install
cargo build -q -p wasmpod-shim
(cd shim/isolated && cargo build -q)
bash e2e/testbed.sh images
cargo build -q -p wasmpod-e2e --bin demo
trap 'bash e2e/testbed.sh stop "$V"' EXIT
env_file=$(mktemp)
bash e2e/testbed.sh start "$V" >"$env_file"
# shellcheck disable=SC1090
source "$env_file"
rm -f "$env_file"
echo "demo: containerd $(bash e2e/testbed.sh versions "$V"), running $WASMPOD_CONTAINERD_SERVER"
target/debug/demo
