#!/usr/bin/env bash
# Builds the upstream parts of the local cluster from the Go module proxy, pinned by the go.mod
# and go.sum files under test-kind/components/ (one module per upstream project):
#   kubernetes  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
#               kubectl (k8s.io/kubernetes, staging modules mapped to their published v0.x)
#   etcd        etcd (go.etcd.io/etcd/server/v3)
#   helm        helm (helm.sh/helm/v4)
#   crictl      crictl (sigs.k8s.io/cri-tools)
# into $WASMPOD_TESTBED/bin (default /var/tmp/wasmpod-testbed/bin), once: a part is rebuilt only
# when its go.mod/go.sum or the Go version change. Go's module and build caches live under
# $WASMPOD_TESTBED/go, so a warm machine rebuilds in seconds. A cold build of everything takes
# about 15 minutes on 2 cores (Kubernetes is most of it).
#
#   test-kind/components.sh [PART...]   build what is missing or stale (default: all parts)
#   test-kind/components.sh --list      print each part's pin and whether it is built
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/test-kind/components
TB=${WASMPOD_TESTBED:-/var/tmp/wasmpod-testbed}
BIN=$TB/bin
export GOMODCACHE=$TB/go/mod GOCACHE=$TB/go/cache GOPATH=$TB/go/path
# The pinned go.mod files say `go 1.26.0`: never download another toolchain.
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0

PARTS=(kubernetes etcd helm crictl)
declare -A BINARIES=(
	[kubernetes]="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
	[etcd]="etcd"
	[helm]="helm"
	[crictl]="crictl"
)

log() { printf '[components] %s\n' "$*" >&2; }
die() { printf '[components] error: %s\n' "$*" >&2; exit 1; }

# The version a part pins: its main module's require line.
pin() {
	case $1 in
	kubernetes) (cd "$HERE/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes) ;;
	etcd) (cd "$HERE/etcd" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3) ;;
	helm) (cd "$HERE/helm" && go list -m -f '{{.Version}}' helm.sh/helm/v4) ;;
	crictl) (cd "$HERE/crictl" && go list -m -f '{{.Version}}' sigs.k8s.io/cri-tools) ;;
	esac
}

# What a build depends on: the pinned module files and the compiler.
stamp() {
	cat "$HERE/$1/go.mod" "$HERE/$1/go.sum" <(go version) | sha256sum | cut -d' ' -f1
}

built() {
	local b
	[ "$(cat "$BIN/.$1.stamp" 2>/dev/null)" = "$(stamp "$1")" ] || return 1
	for b in ${BINARIES[$1]}; do [ -x "$BIN/$b" ] || return 1; done
}

# Version strings the binaries report (kubectl version, the node's kubeletVersion, helm
# version): what upstream's release scripts set through the linker.
ldflags() {
	local v
	v=$(pin "$1")
	case $1 in
	kubernetes)
		local major=${v#v} minor
		minor=${major#*.}
		minor=${minor%%.*}
		major=${major%%.*}
		local x
		for x in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			printf -- '-X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitTreeState=clean ' \
				"$x" "$v" "$x" "$major" "$x" "$minor" "$x"
		done
		;;
	helm) printf -- '-X helm.sh/helm/v4/internal/version.version=%s' "$v" ;;
	crictl) printf -- '-X sigs.k8s.io/cri-tools/pkg/version.Version=%s' "$v" ;;
	esac
}

build() {
	local part=$1 start pid rc
	if built "$part"; then
		log "$part $(pin "$part"): up to date in $BIN"
		return
	fi
	mkdir -p "$BIN" "$GOMODCACHE" "$GOCACHE"
	log "building $part $(pin "$part") (${BINARIES[$part]}) into $BIN"
	start=$(date +%s)
	# A cold Kubernetes build is silent for minutes: say that it is still going.
	(while sleep 30; do log "  $part: still building, $(($(date +%s) - start)) s"; done) &
	pid=$!
	rc=0
	(cd "$HERE/$part" && go build -trimpath -ldflags "-s -w $(ldflags "$part")" -o "$BIN/" tool) || rc=$?
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	[ "$rc" = 0 ] || die "building $part failed (exit $rc)"
	# go names a binary after its package path's last element: etcd's is .../server/v3.
	[ "$part" != etcd ] || mv -f "$BIN/server" "$BIN/etcd"
	stamp "$part" >"$BIN/.$part.stamp"
	log "built $part in $(($(date +%s) - start)) s"
}

command -v go >/dev/null || die "go is needed (Go 1.26: the machine's toolchain)"
case "${1:-}" in
--list)
	for p in "${PARTS[@]}"; do
		if built "$p"; then s=built; else s="not built"; fi
		printf '%-11s %-9s %s (%s)\n' "$p" "$(pin "$p")" "$s" "${BINARIES[$p]}"
	done
	;;
-h | --help) sed -n '2,16p' "$0" ;;
*)
	[ $# -gt 0 ] || set -- "${PARTS[@]}"
	for p in "$@"; do
		[ -n "${BINARIES[$p]:-}" ] || die "unknown part '$p' (parts: ${PARTS[*]})"
		build "$p"
	done
	;;
esac
