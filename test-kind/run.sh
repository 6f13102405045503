#!/usr/bin/env bash
# wasmpod on a real kind cluster: build the installer image and the test images (lib.sh), create
# the cluster with a local registry, `helm install`, run the workloads and assertions shared
# with the local cluster test (lib.sh), `helm test`, then uninstall and check the worker is as
# it was.
#
#   test-kind/run.sh            run it (needs docker, kind, kubectl, helm, curl, cargo with
#                               the wasm32-wasip1/wasip2 targets, python3, /bin/busybox)
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
# Pinned by digest: registry:2.8.3's multi-arch index, as many public projects pin it (it could
# not be pulled from these machines, which reach no registry; a wrong digest fails the pull).
REGISTRY_IMAGE=registry:2.8.3@sha256:a3d8aaa63ed8681a604f1dea0aa03f100d5895b6a58ace528858a7b332415373
REGISTRY_NAME=$KIND_CLUSTER-registry
REGISTRY_PORT=5001 # the workload manifests name localhost:5001/...
ARTIFACT_IMAGE=localhost:$REGISTRY_PORT/wasmpod/hello-artifact:1
# shellcheck source=test-kind/lib.sh
. "$HERE/lib.sh"

# What lib.sh's checks need from the node that runs the Wasm pods.
node_sh() { docker exec "$WORKER" sh -c "$1"; }
node_crictl() { docker exec "$WORKER" crictl "$@"; }

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
build_images

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
push_images "localhost:$REGISTRY_PORT"

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

check_installer_rbac "$WORKER"
check_workloads
delete_workloads

step "helm test (the Wasm artifact as the test image)"
run helm test wasmpod -n "$NS" --logs --timeout 5m

step "uninstall (charts/wasmpod/README.md, Uninstall) and check the worker is as before"
uninstall_chart
label=$(out kubectl get node "$WORKER" -o jsonpath="{.metadata.labels.wasmpod\.dev/wasmtime}")
expect "$WORKER label $LABEL after uninstall" "$label" ""
save "$WORK/config.after.toml" docker exec "$WORKER" cat /etc/containerd/config.toml
run docker exec "$WORKER" sh -c '! ls /opt/wasmpod/bin/containerd-shim-wasmtime-v1 /opt/wasmpod/bin/containerd-shim-wasmtime-isolated-v1 2>/dev/null' 
if [ "$DRY_RUN" = 0 ]; then
	diff -u "$WORK/config.before.toml" "$WORK/config.after.toml" || fail "containerd config not restored"
	ok "containerd config restored byte for byte"
fi

step "all kind tests passed"
