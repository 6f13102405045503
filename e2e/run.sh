#!/usr/bin/env bash
# Runs the end-to-end suite against real containerd 1.7 and 2.1 (the test bed's lines, or the
# versions given): installs the test bed, builds the shim and the test images, then for each
# version starts containerd, runs the CRI and ctr tests, and stops it again, also when a test
# fails. The summary names the exact containerd each line was (a pin Debian dropped is
# replaced, and the test bed's WARNING line at the top says so).
#
#   e2e/run.sh [1.7] [2.1]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || read -ra VERSIONS <<<"$(bash e2e/testbed.sh lines)"

bash e2e/testbed.sh install
cargo build -q -p wasmpod-shim
(cd shim/isolated && cargo build -q)
bash e2e/testbed.sh images
cargo test -q -p wasmpod-e2e --no-run

running=""
cleanup() { [ -z "$running" ] || bash e2e/testbed.sh stop "$running"; }
trap cleanup EXIT

failed=()
tested=()
results=$(mktemp)
for v in "${VERSIONS[@]}"; do
	echo "=== e2e: containerd $v ==="
	env_file=$(mktemp)
	bash e2e/testbed.sh start "$v" >"$env_file"
	running=$v
	# shellcheck disable=SC1090
	source "$env_file"
	rm -f "$env_file"
	tested+=("$(bash e2e/testbed.sh versions "$v"), running $WASMPOD_CONTAINERD_SERVER")
	echo "containerd ${tested[-1]}"
	if ! cargo test -q -p wasmpod-e2e --tests -- --test-threads 2 2>&1 | tee -a "$results"; then
		failed+=("$v")
		echo "--- containerd $v log (last 40 lines) ---"
		tail -n 40 "$WASMPOD_RUN_DIR/containerd.log" || true
	fi
	bash e2e/testbed.sh stop "$v"
	running=""
done
passed=$(grep -o '[0-9]* passed' "$results" | awk '{s+=$1} END {print s+0}')
nfailed=$(grep -o '[0-9]* failed' "$results" | awk '{s+=$1} END {print s+0}')
rm -f "$results"
echo "e2e on containerd ${VERSIONS[*]}:"
printf '  %s\n' "${tested[@]}"
if [ ${#failed[@]} -gt 0 ]; then
	echo "e2e failed on containerd ${failed[*]}"
	echo "e2e: $passed passed, $nfailed failed"
	exit 1
fi
echo "$passed passed, $nfailed failed"
