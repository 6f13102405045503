#!/usr/bin/env bash
# wasmpod on a real single-node Kubernetes built from upstream sources (test-kind/cluster.sh),
# for each containerd version given (default 2.1 and 1.7), as root:
#   - the chart's RuntimeClasses without the installer: a Wasm pod stays Pending (no node has
#     the wasmpod.dev/wasmtime=ready label);
#   - the installer DaemonSet: edits the node's real containerd config, restarts containerd,
#     verifies the handlers through the CRI and only then labels the node; the Pending pod runs;
#   - the installer's credentials change its own node's wasmpod label and nothing else, and
#     the workloads and assertions shared with the kind test (test-kind/lib.sh);
#   - helm test; helm upgrade to a rebuilt shim while Wasm pods run; containerd restarted by
#     hand while Wasm pods run; helm uninstall restoring containerd's config byte for byte;
#   - cluster down leaves no process, mount, cgroup, bridge or iptables chain behind.
#
#   test-kind/cluster-test.sh [2.1] [1.7]
# Ends with "N passed, M failed" (one per containerd version); a failure prints the cluster's
# state and the last lines of every component's log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/test-kind
WORK=$ROOT/target/cluster-test
DRY_RUN=0
TB=${WASMPOD_TESTBED:-/var/tmp/wasmpod-testbed}
BIN=$TB/bin
RUN=$TB/run/cluster
CLUSTER="bash $HERE/cluster.sh"
NODE=wasmpod-node
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(2.1 1.7)

# shellcheck source=test-kind/lib.sh
. "$HERE/lib.sh"

export KUBECONFIG=$ROOT/target/cluster/kubeconfig PATH=$BIN:$PATH
node_sh() { sh -c "$1"; }
node_crictl() { crictl --config "$RUN/crictl.yaml" "$@"; }

restarts() { [ -f "$RUN/containerd-restarts" ] && wc -l <"$RUN/containerd-restarts" || echo 0; }

# The shim binary a running pod's shim process executes (containerd starts one per pod; its
# command line names the pod's sandbox id).
shim_exe_of_pod() {
	local sandbox pid
	sandbox=$(node_crictl pods -q --name "$1" --namespace "$2" | head -n1)
	[ -n "$sandbox" ] || fail "no sandbox for pod $2/$1"
	pid=$(pgrep -f -- "containerd-shim-wasmtime-v1 .*-id $sandbox" | head -n1)
	[ -n "$pid" ] || fail "no shim process for pod $2/$1 (sandbox $sandbox)"
	readlink "/proc/$pid/exe"
}

on_failure() {
	set +e
	step "failed: the cluster's state"
	kubectl get nodes,pods -A -o wide
	# Every pod that is not running or done, whole (its events say why), not the last lines
	# of all of them.
	local pod
	for pod in $(kubectl -n "$TNS" get pods -o name \
		--field-selector=status.phase!=Running,status.phase!=Succeeded 2>/dev/null); do
		kubectl -n "$TNS" describe "$pod"
	done
	kubectl -n "$NS" logs -l app.kubernetes.io/component=installer --tail 40
	local l
	for l in "$RUN"/logs/*.log; do
		echo "--- $l (last 25 lines)"
		tail -n 25 "$l"
	done
}

# Nothing of the cluster is left on the machine.
check_nothing_left() {
	local left
	left=$(pgrep -fa -- "$BIN/|$RUN/" || true)
	[ -z "$left" ] || fail "processes left after cluster down: $left"
	left=$(grep -F "$RUN" /proc/self/mounts || true)
	[ -z "$left" ] || fail "mounts left: $left"
	left=$(ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null || true)
	[ -z "$left" ] || fail "cgroups left: $left"
	! ip link show wasmpodk8s0 >/dev/null 2>&1 || fail "the bridge wasmpodk8s0 is left"
	left=$(iptables-save 2>/dev/null | grep -E '^:KUBE-' || true)
	[ -z "$left" ] || fail "kube-proxy's iptables chains are left: $left"
	ok "cluster down left no process, mount, cgroup, bridge or iptables chain"
}

one_version() {
	local v=$1
	step "containerd $v: a single-node cluster (test-kind/cluster.sh up --node-only)"
	CONTAINERD=$v $CLUSTER up --node-only
	local values
	mapfile -t values < <($CLUSTER helm-values 1)
	kubectl get nodes -o wide
	build_images
	push_images "${WASMPOD_REGISTRY:-127.0.0.1:5000}"

	step "the chart without the installer: RuntimeClasses, no label, a Wasm pod stays Pending"
	run helm install wasmpod charts/wasmpod -n "$NS" --create-namespace "${values[@]}" \
		--set installer.enabled=false --wait --timeout 5m
	run kubectl get runtimeclass wasmtime wasmtime-isolated
	expect "node label before the installer" "$(kubectl get node "$NODE" -o jsonpath='{.metadata.labels.wasmpod\.dev/wasmtime}')" ""
	run kubectl apply -f "$HERE/workloads/00-namespace.yaml"
	run kubectl -n "$TNS" run wasm-early --image=localhost:5001/wasmpod/workloads:1 --restart=Never \
		--overrides='{"spec":{"runtimeClassName":"wasmtime"}}' --command -- /hello.wasm
	run kubectl -n "$TNS" wait --for=jsonpath='{.status.conditions[?(@.type=="PodScheduled")].reason}'=Unschedulable \
		pod/wasm-early --timeout 60s
	sleep 5
	expect "wasm-early phase before the label" "$(kubectl -n "$TNS" get pod wasm-early -o jsonpath='{.status.phase}')" Pending
	cmp "$RUN/containerd-config.before.toml" "$RUN/containerd/config.toml" || fail "containerd config changed before the installer ran"

	step "the installer DaemonSet: config, restart, CRI check, then the label"
	run helm upgrade wasmpod charts/wasmpod -n "$NS" --reuse-values --set installer.enabled=true --wait --timeout 5m
	run kubectl -n "$NS" rollout status daemonset/wasmpod-installer --timeout 300s
	run kubectl wait --for=jsonpath='{.metadata.labels.wasmpod\.dev/wasmtime}'=ready "node/$NODE" --timeout 300s
	expect "containerd restarts by the installer" "$(restarts)" 1
	grep -q "runtimes.wasmtime-isolated" "$RUN/containerd/config.toml" || fail "no wasmpod runtimes in containerd's config"
	local ilog
	ilog=$(kubectl -n "$NS" logs -l app.kubernetes.io/component=installer --tail -1)
	local order=("containerd config updated" "config changed: restarting" "runtime handlers verified through the CRI" "node labeled wasmpod.dev/wasmtime=ready")
	local rest=$ilog w
	for w in "${order[@]}"; do
		case "$rest" in *"$w"*) rest=${rest#*"$w"} ;; *) fail "installer log lacks, in order, '$w': $ilog" ;; esac
	done
	ok "installer log: config updated, containerd restarted, handlers verified, then the node labelled"
	check_installer_rbac "$NODE"
	run kubectl -n "$TNS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/wasm-early --timeout 120s
	contains "wasm-early log (Pending until the label)" "$(kubectl -n "$TNS" logs wasm-early)" "hello from wasmpod"

	check_workloads

	step "helm test (the chart's default: the installer image's /hello.wasm)"
	run helm test wasmpod -n "$NS" --logs --timeout 5m

	step "helm upgrade to a rebuilt shim while Wasm pods run"
	local before_pods old_exe
	before_pods=$(kubectl -n "$TNS" get pods -l app=wasm-sleep -o jsonpath='{range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount} {end}')
	old_exe=$(shim_exe_of_pod "$(kubectl -n "$TNS" get pods -l app=wasm-sleep -o jsonpath='{.items[0].metadata.name}')" "$TNS")
	run env WASMPOD_BUILD_ID="cluster-test-$v-$$" cargo build -p wasmpod-shim
	$CLUSTER installer-image 2
	local r0
	r0=$(restarts)
	run helm upgrade wasmpod charts/wasmpod -n "$NS" --reuse-values --set-string image.tag=2 --wait --timeout 5m
	run kubectl -n "$NS" rollout status daemonset/wasmpod-installer --timeout 300s
	run kubectl wait --for=jsonpath='{.metadata.labels.wasmpod\.dev/wasmtime}'=ready "node/$NODE" --timeout 300s
	local installed
	installed=$(readlink -f "$RUN/wasmpod/bin/containerd-shim-wasmtime-v1")
	cmp -s "$installed" "$ROOT/target/debug/containerd-shim-wasmtime-v1" || fail "the installed shim ($installed) is not the rebuilt one"
	[ "$installed" != "$old_exe" ] || fail "the rebuilt shim was installed over the old path $old_exe"
	expect "containerd restarts by the upgrade (config unchanged)" "$(restarts)" "$r0"
	expect "wasm-sleep pods after the upgrade (same pods, no restarts)" \
		"$(kubectl -n "$TNS" get pods -l app=wasm-sleep -o jsonpath='{range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount} {end}')" "$before_pods"
	expect "a running pod's shim after the upgrade" \
		"$(shim_exe_of_pod "$(kubectl -n "$TNS" get pods -l app=wasm-sleep -o jsonpath='{.items[0].metadata.name}')" "$TNS")" "$old_exe"
	run kubectl -n "$TNS" run wasm-after-upgrade --image=localhost:5001/wasmpod/workloads:1 --restart=Never \
		--overrides='{"spec":{"runtimeClassName":"wasmtime"}}' --command -- /sleep.wasm 600
	run kubectl -n "$TNS" wait --for=condition=Ready pod/wasm-after-upgrade --timeout 120s
	expect "a new pod's shim after the upgrade" "$(shim_exe_of_pod wasm-after-upgrade "$TNS")" "$installed"

	step "containerd restarted by hand while Wasm pods run"
	before_pods=$(kubectl -n "$TNS" get pods -l 'app in (wasm-sleep,wasm-http)' -o jsonpath='{range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount} {end}')
	$CLUSTER restart-containerd
	# The kubelet's next relist sees the restarted containerd's view of the pods.
	sleep 5
	run kubectl wait --for=condition=Ready node/"$NODE" --timeout 60s
	run kubectl -n "$TNS" wait --for=condition=Ready pod -l 'app in (wasm-sleep,wasm-http)' --timeout 60s
	expect "Wasm pods after the containerd restart (same pods, no restarts)" \
		"$(kubectl -n "$TNS" get pods -l 'app in (wasm-sleep,wasm-http)' -o jsonpath='{range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount} {end}')" "$before_pods"
	local ip
	ip=$(kubectl -n "$TNS" get service wasm-http -o jsonpath='{.spec.clusterIP}')
	local n
	for n in 1 2 3 4; do
		curl -sS --max-time 5 "http://$ip/print" >/dev/null || fail "wasm-http did not answer after the containerd restart"
	done
	local logs=""
	for _ in $(seq 20); do
		logs=$(kubectl -n "$TNS" logs -l app=wasm-http --tail -1)
		case "$logs" in *"printed to stdout by /print"*) break ;; esac
		sleep 0.5
	done
	contains "wasm-http log after the containerd restart" "$logs" "printed to stdout by /print"

	delete_workloads

	step "helm uninstall: containerd's config byte for byte, the shims gone, the label gone"
	r0=$(restarts)
	uninstall_chart
	expect "node label after uninstall" "$(kubectl get node "$NODE" -o jsonpath='{.metadata.labels.wasmpod\.dev/wasmtime}')" ""
	cmp "$RUN/containerd-config.before.toml" "$RUN/containerd/config.toml" || fail "containerd config not restored byte for byte"
	ok "containerd config restored byte for byte"
	if [ -e "$RUN/wasmpod/bin/containerd-shim-wasmtime-v1" ] || [ -e "$RUN/wasmpod/bin/containerd-shim-wasmtime-isolated-v1" ]; then
		fail "shims left in $RUN/wasmpod/bin: $(ls -la "$RUN/wasmpod/bin")"
	fi
	ok "shims removed"
	expect "containerd restarts after uninstall (one more)" "$(restarts)" "$((r0 + 1))"

	step "cluster down"
	$CLUSTER down
	check_nothing_left
}

passed=0
failed=0
for v in "${VERSIONS[@]}"; do
	mkdir -p "$WORK"
	cd "$ROOT"
	# Not an `if` condition: bash ignores set -e inside one, and every step must stop the test.
	set +e
	(
		set -e
		# shellcheck disable=SC2154 # rc is assigned in the trap itself
		trap 'rc=$?; [ $rc = 0 ] || on_failure; exit $rc' EXIT
		one_version "$v"
	)
	rc=$?
	set -e
	if [ "$rc" = 0 ]; then
		passed=$((passed + 1))
		echo "ok: cluster test on containerd $v"
	else
		failed=$((failed + 1))
		echo "FAIL: cluster test on containerd $v"
		$CLUSTER down || true
	fi
done
# The shim rebuilt for the upgrade test goes back to the ordinary build.
cargo build -q -p wasmpod-shim
echo "cluster test on containerd ${VERSIONS[*]}:"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
