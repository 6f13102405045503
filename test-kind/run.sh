#!/usr/bin/env bash
# wasmpod on a real kind cluster: build the installer image and the Wasm images (a compat
# image, a Wasm OCI artifact, a wasi/wasm platform image), create the cluster with a local
# registry, `helm install`, run workloads that assert on real results, `helm test`, then
# uninstall and check the worker is as it was.
#
#   test-kind/run.sh            run it (needs docker, kind, kubectl, helm, curl, cargo with
#                               the wasm32-wasip1 target, python3)
#   test-kind/run.sh --dry-run  print the exact commands instead of running them
#
# Variables: KIND_NODE_IMAGE (another Kubernetes/containerd version; see kind-config.yaml),
# KIND_CLUSTER (name, default wasmpod), INSTALLER_IMAGE, SKIP_INSTALLER_BUILD=1 (use an
# INSTALLER_IMAGE already in docker, as repo:tag), KUBECTL_IMAGE (an image with kubectl and
# sh: helm test then also checks the Wasm pod's log),
# KEEP_CLUSTER=1 (no teardown), ARTIFACTS (where `kind export logs` writes on failure).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/test-kind
DRY_RUN=0
case "${1:-}" in
--dry-run) DRY_RUN=1 ;;
"") ;;
*) echo "usage: $0 [--dry-run]" >&2 && exit 2 ;;
esac

# Keep equal to kind-config.yaml's node image (check.sh verifies it).
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.32.2@sha256:f226345927d7e348497136874b6d207e0b32cc52154ad8323129352923a3142f}
KIND_CLUSTER=${KIND_CLUSTER:-wasmpod}
WORKER=$KIND_CLUSTER-worker
INSTALLER_IMAGE=${INSTALLER_IMAGE:-wasmpod/installer:kind}
KUBECTL_IMAGE=${KUBECTL_IMAGE:-}
ARTIFACTS=${ARTIFACTS:-$ROOT/target/kind-artifacts}
WORK=$ROOT/target/kind-test
# The registry: kind's documented pattern, a registry container on the kind network, published
# on the host at localhost:5001 (for pushing) and reached by the nodes by container name.
# Pinned by tag only: we have not verified a digest for it.
REGISTRY_IMAGE=registry:2.8.3
REGISTRY_NAME=$KIND_CLUSTER-registry
REGISTRY_PORT=5001 # the workload manifests name localhost:5001/...
WASM_IMAGE=localhost:$REGISTRY_PORT/wasmpod/workloads:1
ARTIFACT_IMAGE=localhost:$REGISTRY_PORT/wasmpod/hello-artifact:1
WASI_IMAGE=localhost:$REGISTRY_PORT/wasmpod/hello-wasi:1
NS=wasmpod
TNS=wasmpod-test
LABEL=wasmpod.dev/wasmtime

step() { printf '\n=== %s\n' "$*"; }
ok() { [ "$DRY_RUN" = 1 ] || printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# show CMD...: print a command the way a shell would take it back.
show() {
	printf '+'
	printf ' %q' "$@"
	printf '\n'
}

# run CMD...: print it, then run it unless --dry-run.
run() {
	show "$@"
	[ "$DRY_RUN" = 1 ] || "$@"
}

# out CMD...: like run, for commands whose output is checked: printed on stderr, so that
# $(out ...) captures only the command's output (nothing in --dry-run).
out() {
	show "$@" >&2
	[ "$DRY_RUN" = 1 ] || "$@"
}

# save FILE CMD...: like out, into FILE (not written in --dry-run).
save() {
	local f=$1
	shift
	printf '%s > %s\n' "$(show "$@")" "$f"
	[ "$DRY_RUN" = 1 ] || "$@" >"$f"
}

# gone SELECTOR: wait until no pod in $NS matches (older kubectl's wait --for=delete fails
# when the pods are already gone, which is the state we want).
gone() {
	show kubectl -n "$NS" get pods -l "$1" -o name
	[ "$DRY_RUN" = 1 ] && return 0
	local i
	for i in $(seq 150); do
		[ -n "$(kubectl -n "$NS" get pods -l "$1" -o name)" ] || return 0
		[ "$i" = 150 ] || sleep 2
	done
	fail "pods $1 still there after 300s"
}

# expect WHAT ACTUAL WANTED: equality check, skipped in --dry-run (there is no output).
expect() {
	[ "$DRY_RUN" = 1 ] && return 0
	[ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
	ok "$1 = $3"
}

# contains WHAT TEXT NEEDLE
contains() {
	[ "$DRY_RUN" = 1 ] && return 0
	case "$2" in *"$3"*) ok "$1 contains '$3'" ;; *) fail "$1 lacks '$3'; it was: $2" ;; esac
}

# Teardown removes only what this run created (never a cluster that was there before).
CLUSTER_CREATED=0
REGISTRY_STARTED=0
teardown() {
	local rc=$?
	set +e
	if [ "$rc" != 0 ] && [ "$CLUSTER_CREATED" = 1 ]; then
		step "failed (exit $rc): exporting kind logs to $ARTIFACTS"
		run kubectl get pods -A -o wide
		run kubectl -n "$TNS" describe pods
		run kind export logs "$ARTIFACTS" --name "$KIND_CLUSTER"
	fi
	if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
		step "KEEP_CLUSTER=1: leaving cluster $KIND_CLUSTER and $REGISTRY_NAME running"
	else
		step "teardown"
		[ "$CLUSTER_CREATED" = 0 ] || run kind delete cluster --name "$KIND_CLUSTER"
		[ "$REGISTRY_STARTED" = 0 ] || run docker rm -f "$REGISTRY_NAME"
	fi
	exit "$rc"
}
trap teardown EXIT

for tool in docker kind kubectl helm curl cargo python3; do
	[ "$DRY_RUN" = 1 ] || command -v "$tool" >/dev/null || fail "$tool is needed"
done
if [ "$DRY_RUN" = 0 ] && kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
	fail "a kind cluster named $KIND_CLUSTER exists: delete it or set KIND_CLUSTER"
fi
if [ "$DRY_RUN" = 0 ] && docker inspect "$REGISTRY_NAME" >/dev/null 2>&1; then
	fail "a container named $REGISTRY_NAME exists: remove it or set KIND_CLUSTER"
fi
run mkdir -p "$WORK" "$ARTIFACTS"
cd "$ROOT"

step "build the Wasm images (e2e/workloads, packed by e2e/images/ociimage.py)"
run cargo build --release --locked -p wasmpod-workloads --target wasm32-wasip1
w=target/wasm32-wasip1/release
files=()
for m in hello exit sleep memhog work readfile; do
	files+=(--file "$w/$m.wasm:/$m.wasm")
done
# A compat image: the modules in the rootfs, the entrypoint a .wasm file, the annotation.
run python3 e2e/images/ociimage.py --out "$WORK/workloads.tar" --name wasmpod.test/workloads:1 \
	"${files[@]}" --entrypoint /hello.wasm --annotation module.wasm.image/variant=compat
# A Wasm OCI artifact (module layer, no filesystem) and a wasi/wasm platform image (a single
# manifest: CRI pulls no index that lacks the node's platform).
run python3 e2e/images/ociimage.py --out "$WORK/hello-artifact.tar" --name wasmpod.test/hello-artifact:1 \
	--wasm-layer "$w/hello.wasm"
run python3 e2e/images/ociimage.py --out "$WORK/hello-wasi.tar" --name wasmpod.test/hello-wasi:1 \
	--platform wasi/wasm --file "$w/hello.wasm:/hello.wasm" --entrypoint /hello.wasm

if [ "${SKIP_INSTALLER_BUILD:-0}" != 1 ]; then
	step "build the installer image (runtimeclass/Dockerfile: installer + both shims, one architecture)"
	run env DOCKER_BUILDKIT=1 docker build -f runtimeclass/Dockerfile -t "$INSTALLER_IMAGE" .
fi

step "start the local registry $REGISTRY_NAME on localhost:$REGISTRY_PORT and push the images"
REGISTRY_STARTED=1
run docker run -d --restart=always -p "127.0.0.1:$REGISTRY_PORT:5000" --name "$REGISTRY_NAME" "$REGISTRY_IMAGE"
if [ "$DRY_RUN" = 0 ]; then
	for _ in $(seq 30); do curl -sf "http://localhost:$REGISTRY_PORT/v2/" >/dev/null && break; sleep 1; done
fi
# push.py speaks the registry API itself: manifests go up byte for byte, artifacts included.
run python3 e2e/images/push.py "$WORK/workloads.tar" "$WASM_IMAGE"
run python3 e2e/images/push.py "$WORK/hello-artifact.tar" "$ARTIFACT_IMAGE"
run python3 e2e/images/push.py "$WORK/hello-wasi.tar" "$WASI_IMAGE"

step "create kind cluster $KIND_CLUSTER ($KIND_NODE_IMAGE)"
CLUSTER_CREATED=1
run kind create cluster --name "$KIND_CLUSTER" --image "$KIND_NODE_IMAGE" \
	--config "$HERE/kind-config.yaml" --wait 180s
run kubectl config use-context "kind-$KIND_CLUSTER"
# Put the registry on the kind network (kind creates it) so nodes resolve it by name.
run docker network connect kind "$REGISTRY_NAME"
nodes=$(out kind get nodes --name "$KIND_CLUSTER")
if [ "$DRY_RUN" = 1 ]; then nodes="$KIND_CLUSTER-control-plane $WORKER"; fi
hosts_toml="[host.\"http://$REGISTRY_NAME:5000\"]"
for n in $nodes; do
	run docker exec "$n" mkdir -p "/etc/containerd/certs.d/localhost:$REGISTRY_PORT"
	printf '  (stdin: %s)\n' "$hosts_toml"
	run docker exec -i "$n" cp /dev/stdin "/etc/containerd/certs.d/localhost:$REGISTRY_PORT/hosts.toml" <<<"$hosts_toml"
done
run docker exec "$WORKER" containerd --version
# The config as kind left it; after uninstall the worker must have exactly this again.
save "$WORK/config.before.toml" docker exec "$WORKER" cat /etc/containerd/config.toml

step "install wasmpod with Helm"
run kind load docker-image "$INSTALLER_IMAGE" --name "$KIND_CLUSTER"
helm_set=(
	--set "image.repository=${INSTALLER_IMAGE%:*}" --set "image.tag=${INSTALLER_IMAGE##*:}"
	--set image.pullPolicy=Never --set "test.wasmImage=$ARTIFACT_IMAGE"
)
[ -z "$KUBECTL_IMAGE" ] || helm_set+=(--set "test.kubectlImage=$KUBECTL_IMAGE")
run helm install wasmpod charts/wasmpod -n "$NS" --create-namespace "${helm_set[@]}" --wait --timeout 5m
run kubectl -n "$NS" rollout status daemonset/wasmpod-installer --timeout 300s
run kubectl wait --for=jsonpath="{.metadata.labels.wasmpod\.dev/wasmtime}"=ready "node/$WORKER" --timeout 300s
ok "$WORKER is labelled $LABEL=ready"
cp_label=$(out kubectl get node "$KIND_CLUSTER-control-plane" -o jsonpath="{.metadata.labels.wasmpod\.dev/wasmtime}")
expect "control-plane label (no installer there)" "$cp_label" ""
run kubectl get runtimeclass wasmtime wasmtime-isolated

step "workloads"
run kubectl apply -f "$HERE/workloads/00-namespace.yaml"
run kubectl apply -f "$HERE/workloads/"

echo "-- Job wasm-hello: completes and prints the greeting"
run kubectl -n "$TNS" wait --for=condition=complete job/wasm-hello --timeout 180s
contains "wasm-hello log" "$(out kubectl -n "$TNS" logs job/wasm-hello)" "hello from wasmpod"

echo "-- Job wasm-exit: fails with the guest's exit code 3 in the pod status"
run kubectl -n "$TNS" wait --for=condition=failed job/wasm-exit --timeout 180s
code=$(out kubectl -n "$TNS" get pods -l job-name=wasm-exit \
	-o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.exitCode}')
expect "wasm-exit exitCode" "$code" 3

echo "-- Jobs wasm-format-*: each Wasm image format runs hello"
for f in compat artifact wasi; do
	run kubectl -n "$TNS" wait --for=condition=complete "job/wasm-format-$f" --timeout 180s
	contains "wasm-format-$f log" "$(out kubectl -n "$TNS" logs "job/wasm-format-$f")" "hello from wasmpod"
done

echo "-- Deployment wasm-sleep: 3 replicas Available, again after a rollout restart"
run kubectl -n "$TNS" rollout status deployment/wasm-sleep --timeout 180s
run kubectl -n "$TNS" wait --for=condition=available deployment/wasm-sleep --timeout 60s
old=$(out kubectl -n "$TNS" get pods -l app=wasm-sleep -o name)
run kubectl -n "$TNS" rollout restart deployment/wasm-sleep
run kubectl -n "$TNS" rollout status deployment/wasm-sleep --timeout 180s
# The grace period is 120 s: old pods gone within 30 s means SIGTERM ended their guests.
# shellcheck disable=SC2086 # one argument per pod
[ -z "$old" ] || run kubectl -n "$TNS" wait --for=delete $old --timeout 30s
avail=$(out kubectl -n "$TNS" get deployment wasm-sleep -o jsonpath='{.status.availableReplicas}')
expect "wasm-sleep availableReplicas after restart" "$avail" 3
sleep_log=""
for _ in 1 2 3 4 5; do
	sleep_log=$(out kubectl -n "$TNS" logs deployment/wasm-sleep)
	case "$sleep_log" in *"sleeping for"*) break ;; esac
	[ "$DRY_RUN" = 1 ] || sleep 1
done
contains "wasm-sleep log" "$sleep_log" "sleeping for"

echo "-- Pod wasm-memhog: 32Mi limit, ends OOMKilled"
run kubectl -n "$TNS" wait --for=jsonpath='{.status.containerStatuses[0].state.terminated.reason}'=OOMKilled \
	pod/wasm-memhog --timeout 180s
code=$(out kubectl -n "$TNS" get pod wasm-memhog -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}')
expect "wasm-memhog exitCode" "$code" 137

echo "-- Pods wasm-work-*: a 200m CPU limit slows the same work at least 3x"
run kubectl -n "$TNS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/wasm-work-free pod/wasm-work-limited --timeout 300s
free=$(out kubectl -n "$TNS" logs wasm-work-free)
limited=$(out kubectl -n "$TNS" logs wasm-work-limited)
if [ "$DRY_RUN" = 0 ]; then
	# "work: N ms (x)" -> N
	free_ms=$(sed -n 's/^work: \([0-9]*\) ms.*/\1/p' <<<"$free")
	limited_ms=$(sed -n 's/^work: \([0-9]*\) ms.*/\1/p' <<<"$limited")
	if [ -z "$free_ms" ] || [ -z "$limited_ms" ]; then fail "no 'work: N ms' line: '$free' / '$limited'"; fi
	[ "$limited_ms" -ge $((3 * free_ms)) ] || fail "200m limit: $limited_ms ms vs $free_ms ms unlimited (want >= 3x)"
	ok "200m limit: $limited_ms ms vs $free_ms ms unlimited"
fi

echo "-- Pod wasm-readfile: reads a mounted ConfigMap"
run kubectl -n "$TNS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/wasm-readfile --timeout 180s
contains "wasm-readfile log" "$(out kubectl -n "$TNS" logs wasm-readfile)" "hello from a ConfigMap"

echo "-- Pod wasm-isolated (wasmtime-isolated): a Wasm container and a native sidecar"
run kubectl -n "$TNS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/wasm-isolated --timeout 180s
contains "wasm-isolated app log" "$(out kubectl -n "$TNS" logs wasm-isolated -c app)" "args: hello isolated"
contains "wasm-isolated sidecar log" "$(out kubectl -n "$TNS" logs wasm-isolated -c sidecar)" \
	"hello from a native sidecar"

run kubectl delete namespace "$TNS" --wait --timeout 180s

step "helm test (the Wasm artifact as the test image)"
run helm test wasmpod -n "$NS" --logs --timeout 5m

step "uninstall (charts/wasmpod/README.md, Uninstall) and check the worker is as before"
# While the installer pods stop they remove the label and restore containerd's config; they
# need their RBAC for that, so the chart's documented order is followed.
run helm upgrade wasmpod charts/wasmpod -n "$NS" --reuse-values --set installer.uninstallOnStop=true --wait --timeout 5m
run helm upgrade wasmpod charts/wasmpod -n "$NS" --reuse-values --set installer.enabled=false --timeout 5m
gone app.kubernetes.io/component=installer
run helm uninstall wasmpod -n "$NS" --wait --timeout 5m
label=$(out kubectl get node "$WORKER" -o jsonpath="{.metadata.labels.wasmpod\.dev/wasmtime}")
expect "$WORKER label $LABEL after uninstall" "$label" ""
save "$WORK/config.after.toml" docker exec "$WORKER" cat /etc/containerd/config.toml
run docker exec "$WORKER" sh -c '! ls /opt/wasmpod/bin/containerd-shim-wasmtime-v1 /opt/wasmpod/bin/containerd-shim-wasmtime-isolated-v1 2>/dev/null' 
if [ "$DRY_RUN" = 0 ]; then
	diff -u "$WORK/config.before.toml" "$WORK/config.after.toml" || fail "containerd config not restored"
	ok "containerd config restored byte for byte"
fi

step "all kind tests passed"
