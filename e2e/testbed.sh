#!/usr/bin/env bash
# The end-to-end test bed: real containerd 1.7 and 2.1, runc, a registry and locally built
# images.
#
#   e2e/testbed.sh install        packages, containerd and registry .debs (private apt config,
#                                 unpacked under the test bed), Wasm targets
#   e2e/testbed.sh fetch          only the containerd and registry .debs (no root needed)
#   e2e/testbed.sh versions [V]   which containerd .deb each line (or V) has, pinned or not
#   e2e/testbed.sh lines          the containerd lines under test (1.7 2.1)
#   e2e/testbed.sh debian         which containerd versions Debian's suites carry today
#   e2e/testbed.sh images         pause, busybox and Wasm workload images (OCI archives)
#   e2e/testbed.sh config V       the containerd config `start V` writes, on stdout
#   e2e/testbed.sh start 1.7|2.1  start that containerd with the wasmtime handler and a registry
#                                 holding the registry images; prints env
#   e2e/testbed.sh stop 1.7|2.1   stop both by PID and remove their mounts and state
#   e2e/testbed.sh registry-start DIR | registry-stop DIR
#                                 only the registry with the registry images, its state and a
#                                 containerd certs.d for it under DIR (the local cluster's)
#
# Everything lives under $WASMPOD_TESTBED (default /var/tmp/wasmpod-testbed); the system's
# containerd, apt sources and /etc are never touched. Needs root (mounts, containerd). The
# registry listens on $WASMPOD_REGISTRY (default 127.0.0.1:5000), plain HTTP.
#
# Debian keeps only the current version of a package in a suite, so a pin disappears the day
# the suite moves on. The pins stay the preferred versions: a cached pinned .deb wins over
# anything in the archive; when a pin is gone, the suite's newest version of the same upstream
# minor line is taken, else the suite's newest version, and `install` and `fetch` say so in a
# "WARNING: test bed:" line (make test, e2e, demo and bench start with `install`). $WASMPOD_DEBIAN_MIRROR and $WASMPOD_APT_OPTIONS
# (the sources.list options, default the Debian keyring) point it at another archive; the
# fallback test (e2e/testbed-test.sh) points it at fake ones.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TB=${WASMPOD_TESTBED:-/var/tmp/wasmpod-testbed}
IMAGES=${WASMPOD_IMAGES:-$ROOT/target/e2e-images}
SHIM=${WASMPOD_SHIM:-$ROOT/target/debug/containerd-shim-wasmtime-v1}
ISOLATED_SHIM=${WASMPOD_ISOLATED_SHIM:-$ROOT/target/debug/containerd-shim-wasmtime-isolated-v1}
REGISTRY=${WASMPOD_REGISTRY:-127.0.0.1:5000}
MIRROR=${WASMPOD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
APT_OPTIONS=${WASMPOD_APT_OPTIONS:-signed-by=/usr/share/keyrings/debian-archive-keyring.gpg}

# containerd lines under test, in the order e2e/run.sh runs them: suite and pinned .deb version.
# A newer line (2.2, 2.3) joins when a reachable suite carries it (`$0 debian` says) and the
# whole suite passes on it; its config is the 2.x one.
LINES=(1.7 2.1)
declare -A SUITE=([1.7]=trixie [2.1]=sid)
declare -A DEB=([1.7]="1.7.24~ds1-6+deb13u1" [2.1]="2.1.9+ds1-5")
# Tools unpacked from .debs rather than installed: the registry package would start a
# system service. package=suite:version.
declare -A TOOLS=([docker-registry]="bookworm:2.8.2+ds1-1")
# Suites a newer containerd would come from first.
NEWER_SUITES=(sid experimental trixie-backports)
PACKAGES=(runc curl containernetworking-plugins wrk protobuf-compiler busybox-static gcc libc6-dev python3 pkg-config libseccomp-dev shellcheck
	# the local cluster (test-kind/cluster.sh): certificates, kube-proxy's iptables and conntrack
	openssl iptables conntrack)

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (containerd and its mounts need it)"; }

check_version() {
	if [ -z "${1:-}" ] || [ -z "${SUITE[${1:-}]+x}" ]; then
		die "containerd version must be one of ${LINES[*]}, got '${1:-}'"
	fi
}

apt_private() {
	# apt with its own sources, lists and cache, so the system's apt stays untouched.
	local tool=$1 suite=$2
	shift 2
	local d=$TB/apt/$suite
	mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
	echo "deb [$APT_OPTIONS] $MIRROR $suite main" >"$d/sources.list"
	"$tool" -q -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/dev/null \
		-o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" "$@"
}

# The versions of pkg that suite carries now, one a line (after an update of its lists).
suite_versions() {
	local pkg=$1 suite=$2 err
	err=$(apt_private apt-get "$suite" update 2>&1 >/dev/null | grep -v unsandboxed) || true
	# apt-get update exits 0 on some failed fetches: its E:/W: lines say what went wrong.
	if grep -q '^[EW]:' <<<"$err"; then log "apt update of Debian $suite: $err"; fi
	apt_private apt-cache "$suite" madison "$pkg" | awk -F'|' -v p="$pkg" '
		{ gsub(/ /, "", $1); gsub(/ /, "", $2) } $1 == p && $3 ~ /Packages/ { print $2 }'
}

# "major.minor" of a Debian version's upstream part: 1:2.1.9+ds1-5 -> 2.1.
upstream_minor() { sed -E 's/^[0-9]+://; s/^([0-9]+\.[0-9]+).*/\1/' <<<"$1"; }

# The newest of the versions on stdin, by Debian's ordering (~ sorts before everything).
newest() {
	local best="" v
	while read -r v; do
		[ -n "$v" ] || continue
		if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
	done
	[ -z "$best" ] || echo "$best"
}

cached_deb() {
	local f
	for f in "$TB/debs/${1}_${2/*:/}_"*.deb; do
		if [ -f "$f" ]; then echo "$f" && return; fi
	done
	return 0
}

# Unpacks pkg into dir: the pinned version if it is cached or still in the suite, else the
# fallback the header describes. Writes dir/.deb (pkg=version, what is unpacked) and, for a
# fallback, dir/.why (the warning). Nothing is fetched when the pinned .deb is cached.
fetch_deb() {
	local pkg=$1 pin=$2 suite=$3 dir=$4
	local version=$pin why="" deb
	deb=$(cached_deb "$pkg" "$pin")
	if [ -z "$deb" ]; then
		local versions
		versions=$(suite_versions "$pkg" "$suite")
		[ -n "$versions" ] || die "Debian $suite has no $pkg (pinned $pin); is $MIRROR reachable?"
		if ! grep -qxF "$pin" <<<"$versions"; then
			local minor same
			minor=$(upstream_minor "$pin")
			same=$(while read -r v; do
				[ "$(upstream_minor "$v")" != "$minor" ] || echo "$v"
			done <<<"$versions" | newest)
			if [ -n "$same" ]; then
				version=$same
				why="took $same, Debian $suite's current $minor.x"
			else
				version=$(newest <<<"$versions")
				why="took $version, Debian $suite's current version (it has no $minor.x any more)"
			fi
			why="$pkg is $version, not the pinned $pin: the pin is gone from Debian $suite; $why"
		fi
	fi
	if [ "$(cat "$dir/.deb" 2>/dev/null)" = "$pkg=$version" ]; then
		printf '%s' "$why" >"$dir/.why"
		return
	fi
	deb=$(cached_deb "$pkg" "$version")
	if [ -z "$deb" ]; then
		log "fetching $pkg $version from Debian $suite"
		mkdir -p "$TB/debs"
		(cd "$TB/debs" && { apt_private apt-get "$suite" download "$pkg=$version" 2>&1 | grep -v unsandboxed >&2 || true; })
		deb=$(cached_deb "$pkg" "$version")
		[ -n "$deb" ] || die "$pkg $version could not be downloaded from Debian $suite"
	fi
	rm -rf "$dir" && mkdir -p "$dir"
	dpkg-deb -x "$deb" "$dir"
	echo "$pkg=$version" >"$dir/.deb"
	printf '%s' "$why" >"$dir/.why"
}

# What is unpacked for a directory fetch_deb filled: its version, or nothing.
unpacked_version() { sed -n 's/^[^=]*=//p' "$1/.deb" 2>/dev/null || true; }

fetch_containerd() {
	fetch_deb containerd "${DEB[$1]}" "${SUITE[$1]}" "$TB/containerd-$1"
}

fetch_tool() {
	local spec=${TOOLS[$1]}
	fetch_deb "$1" "${spec#*:}" "${spec%%:*}" "$TB/tools/$1"
}

cmd_fetch() {
	local v t
	for v in "${LINES[@]}"; do fetch_containerd "$v"; done
	for t in "${!TOOLS[@]}"; do fetch_tool "$t"; done
	warnings
}

# One loud line per pin the test bed could not honour; nothing when every pin holds.
warnings() {
	local v t why
	for v in "${LINES[@]}"; do
		why=$(cat "$TB/containerd-$v/.why" 2>/dev/null || true)
		[ -z "$why" ] || printf 'WARNING: test bed: containerd %s line: %s\n' "$v" "$why" >&2
	done
	for t in "${!TOOLS[@]}"; do
		why=$(cat "$TB/tools/$t/.why" 2>/dev/null || true)
		[ -z "$why" ] || printf 'WARNING: test bed: %s\n' "$why" >&2
	done
}

# "LINE = VERSION (pinned|NOT the pin X)" per containerd line: what a run tests.
cmd_versions() {
	local vs=("$@") v got
	[ ${#vs[@]} -gt 0 ] || vs=("${LINES[@]}")
	for v in "${vs[@]}"; do
		check_version "$v"
		got=$(unpacked_version "$TB/containerd-$v")
		[ -n "$got" ] || die "containerd $v is not installed: run '$0 install'"
		if [ "$got" = "${DEB[$v]}" ]; then
			echo "$v = containerd $got (pinned)"
		else
			echo "$v = containerd $got (NOT the pinned ${DEB[$v]}, which Debian ${SUITE[$v]} no longer has)"
		fi
	done
}

# Whether Debian carries containerd beyond the lines under test (updates the private lists,
# downloads no .deb).
cmd_debian() {
	local s v
	for s in $(printf '%s\n' "${NEWER_SUITES[@]}" "${SUITE[@]}" | sort -u); do
		v=$(suite_versions containerd "$s" | paste -sd' ')
		echo "Debian $s: containerd ${v:-(none)}"
	done
}

cmd_install() {
	need_root
	local missing=()
	for p in "${PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get -q update >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get -q install -y "${missing[@]}" >/dev/null
	fi
	local targets
	targets=$(rustup target list --installed)
	for t in wasm32-wasip1 wasm32-wasip2; do
		grep -qx "$t" <<<"$targets" || rustup target add "$t"
	done
	otlp_venv
	cmd_fetch
}

# The test OTLP receiver's Python (e2e/otlp_receiver.py): a venv with OpenTelemetry's proto
# package, pinned; made again when the requirements change.
otlp_venv() {
	local venv=$TB/otlp-venv req=$ROOT/e2e/otlp-requirements.txt
	if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
		log "installing the OTLP receiver's Python packages"
		rm -rf "$venv"
		python3 -m venv "$venv"
		"$venv/bin/pip" install -q -r "$req"
		cp "$req" "$venv/requirements.txt"
	fi
}

cmd_images() {
	mkdir -p "$IMAGES/build"
	local b=$IMAGES/build py="python3 $ROOT/e2e/images/ociimage.py"
	log "building Wasm workloads"
	(cd "$ROOT" && cargo build -q --release -p wasmpod-workloads --target wasm32-wasip1 &&
		cargo build -q --release -p wasmpod-workloads --target wasm32-wasip2 --bin hello &&
		cargo build -q --release -p wasmpod-http-handler --target wasm32-wasip2)
	local w=$ROOT/target/wasm32-wasip1/release
	local files=()
	for f in "$w"/*.wasm; do files+=(--file "$f:/$(basename "$f")"); done
	# The large module, unoptimised (seconds to compile): for tests of what happens while a
	# module compiles.
	(cd "$ROOT" && cargo build -q --profile wasm-big -p wasmpod-workloads --target wasm32-wasip1 --bin big)
	cp "$ROOT/target/wasm32-wasip1/wasm-big/big.wasm" "$b/big.wasm"
	files+=(--file "$b/big.wasm:/slow-compile.wasm")
	cp "$ROOT/target/wasm32-wasip2/release/hello.wasm" "$b/hello-p2.wasm"
	gcc -static -O2 -o "$b/pause" "$ROOT/e2e/images/pause.c"
	printf 'this is not WebAssembly\n' >"$b/notwasm.wasm"
	printf '\0asm\1\0\0\0\1\377' >"$b/broken.wasm"
	printf 'hello from a read-only file\n' >"$b/greeting.txt"
	$py --out "$IMAGES/pause.tar" --name wasmpod.test/pause:1 --file "$b/pause:/pause" --entrypoint /pause
	$py --out "$IMAGES/busybox.tar" --name wasmpod.test/busybox:1 \
		--file /bin/busybox:/bin/busybox --entrypoint /bin/busybox --cmd echo --cmd hello
	$py --out "$IMAGES/workloads.tar" --name wasmpod.test/workloads:1 "${files[@]}" \
		--file "$b/hello-p2.wasm:/hello-p2.wasm" --file "$b/notwasm.wasm:/notwasm.wasm" \
		--file "$b/broken.wasm:/broken.wasm" \
		--file "$b/pause:/native" --file "$b/greeting.txt:/etc/greeting.txt" \
		--entrypoint /hello.wasm --annotation module.wasm.image/variant=compat
	$py --out "$IMAGES/http.tar" --name wasmpod.test/http:1 \
		--file "$ROOT/target/wasm32-wasip2/release/wasmpod_http_handler.wasm:/handler.wasm" \
		--entrypoint /handler.wasm --annotation module.wasm.image/variant=compat
	registry_images
	log "images in $IMAGES"
}

# Images the tests pull from the registry (CRI PullImage), one per way Wasm ships in OCI and
# one per kind of bad image. Each becomes $REGISTRY/wasmpod/NAME:1.
registry_images() {
	local b=$IMAGES/build r=$IMAGES/registry py="python3 $ROOT/e2e/images/ociimage.py"
	local w=$ROOT/target/wasm32-wasip1/release
	rm -rf "$r" && mkdir -p "$r"
	# Wasm OCI artifacts, one per layer media type, and one with several layers.
	$py --out "$r/hello-artifact.tar" --name wasmpod/hello-artifact:1 --wasm-layer "$w/hello.wasm"
	$py --out "$r/w3c-artifact.tar" --name wasmpod/w3c-artifact:1 \
		--wasm-layer "$w/hello.wasm:application/vnd.w3c.wasm.module.v1+wasm"
	$py --out "$r/component-artifact.tar" --name wasmpod/component-artifact:1 \
		--wasm-layer "$b/hello-p2.wasm:application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"
	$py --out "$r/multi-artifact.tar" --name wasmpod/multi-artifact:1 \
		--wasm-layer "$w/hello.wasm" --wasm-layer "$w/exit.wasm:application/vnd.w3c.wasm.module.v1+wasm"
	$py --out "$r/big-artifact.tar" --name wasmpod/big-artifact:1 --wasm-layer "$b/big.wasm"
	# Images with the module in the rootfs: compat-annotated, and the wasi/wasm platform
	# (a single manifest, and inside an index as multi-platform builds publish it).
	cp "$IMAGES/workloads.tar" "$r/compat.tar"
	$py --out "$r/wasi.tar" --name wasmpod/wasi:1 --platform wasi/wasm \
		--file "$w/hello.wasm:/hello.wasm" --entrypoint /hello.wasm
	$py --out "$r/wasi-index.tar" --name wasmpod/wasi-index:1 --platform wasi/wasm --image-index \
		--file "$w/hello.wasm:/hello.wasm" --entrypoint /hello.wasm
	# Bad images: no Wasm at all, an entrypoint that is not there, a layer that is not Wasm,
	# and an artifact the tests damage in containerd's content store.
	cp "$IMAGES/busybox.tar" "$r/native.tar"
	$py --out "$r/missing-entrypoint.tar" --name wasmpod/missing-entrypoint:1 \
		--file "$w/hello.wasm:/hello.wasm" --entrypoint /app/missing.wasm \
		--annotation module.wasm.image/variant=compat
	$py --out "$r/broken-artifact.tar" --name wasmpod/broken-artifact:1 --wasm-layer "$b/broken.wasm"
	$py --out "$r/damaged-artifact.tar" --name wasmpod/damaged-artifact:1 --wasm-layer "$w/echo.wasm"
	hostile_images
}

# Where the hostile image's links point on the node: e2e/tests/hostile.rs puts a module there
# that a shim following the links out of the image would run.
NODE_MODULE=/var/tmp/wasmpod-e2e-node/hello.wasm

# Images that try to make the shim read the node's files, block it or exhaust its memory
# (e2e/tests/hostile.rs): links out of the image (absolute, through a directory link to /,
# climbing with ..), a link to /dev/zero, a device node, a FIFO, a link loop, a module and an
# artifact layer larger than the container's memory limit.
hostile_images() {
	local b=$IMAGES/build r=$IMAGES/registry py="python3 $ROOT/e2e/images/ociimage.py"
	local w=$ROOT/target/wasm32-wasip1/release
	{ printf '\0asm\1\0\0\0'; head -c $((40 << 20)) /dev/zero; } >"$b/huge.wasm"
	{ printf '\0asm\1\0\0\0'; head -c $((24 << 20)) /dev/zero; } >"$b/huge-layer.wasm"
	$py --out "$r/hostile.tar" --name wasmpod/hostile:1 --file "$w/hello.wasm:/hello.wasm" \
		--symlink "/node.wasm:$NODE_MODULE" --symlink "/up.wasm:../../../../../..$NODE_MODULE" \
		--symlink /h:/ --symlink /hostname:/etc/hostname --symlink /shim:/proc/self/exe \
		--symlink /zero.wasm:/dev/zero --chardev /device.wasm:1:5 --fifo /fifo.wasm \
		--symlink /loop.wasm:/loop.wasm --file "$b/huge.wasm:/huge.wasm" \
		--entrypoint /hello.wasm --annotation module.wasm.image/variant=compat
	$py --out "$r/huge-artifact.tar" --name wasmpod/huge-artifact:1 --wasm-layer "$b/huge-layer.wasm"
}

run_dir() { echo "$TB/run/$1"; }

# The config format follows the containerd that is unpacked, not the line's name: after a
# fallback the 1.7 line may hold a 2.x.
write_config() {
	local v=$1 d major
	d=$(run_dir "$v")
	major=$(upstream_minor "$(unpacked_version "$TB/containerd-$v")")
	major=${major%%.*}
	[ -n "$major" ] || die "containerd $v is not installed: run '$0 install'"
	if [ "$major" = 1 ]; then
		cat <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$d/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "wasmpod.test/pause:1"
  # This VM refuses negative oom_score_adj even for root; CRI asks for -998 otherwise.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$d/certs.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]
      runtime_type = "io.containerd.wasmtime.v1"
      pod_annotations = ["wasmpod.dev/*"]
    # The same runtime with the systemd cgroup driver: containerd then gives the shim
    # cgroupsPath as slice:prefix:name, as on nodes whose kubelet uses systemd.
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime-systemd]
      runtime_type = "io.containerd.wasmtime.v1"
      pod_annotations = ["wasmpod.dev/*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime-systemd.options]
        SystemdCgroup = true
    # The isolated host (a process per container), cgroupfs and systemd's form: the latter
    # as kind nodes have it, with no systemd on D-Bus (these machines run none either).
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime-isolated]
      runtime_type = "io.containerd.wasmtime-isolated.v1"
      pod_annotations = ["wasmpod.dev/*"]
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime-isolated-systemd]
      runtime_type = "io.containerd.wasmtime-isolated.v1"
      pod_annotations = ["wasmpod.dev/*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime-isolated-systemd.options]
        SystemdCgroup = true
EOF
	else
		cat <<EOF
version = 3
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$d/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "wasmpod.test/pause:1"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$d/certs.d"
[plugins.'io.containerd.cri.v1.runtime']
  # This VM refuses negative oom_score_adj even for root; CRI asks for -998 otherwise.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$d/cni"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtime]
    runtime_type = "io.containerd.wasmtime.v1"
    pod_annotations = ["wasmpod.dev/*"]
  # The same runtime with the systemd cgroup driver: containerd then gives the shim
  # cgroupsPath as slice:prefix:name, as on nodes whose kubelet uses systemd.
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtime-systemd]
    runtime_type = "io.containerd.wasmtime.v1"
    pod_annotations = ["wasmpod.dev/*"]
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtime-systemd.options]
      SystemdCgroup = true
  # The isolated host (a process per container), cgroupfs and systemd's form: the latter
  # as kind nodes have it, with no systemd on D-Bus (these machines run none either).
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtime-isolated]
    runtime_type = "io.containerd.wasmtime-isolated.v1"
    pod_annotations = ["wasmpod.dev/*"]
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtime-isolated-systemd]
    runtime_type = "io.containerd.wasmtime-isolated.v1"
    pod_annotations = ["wasmpod.dev/*"]
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtime-isolated-systemd.options]
      SystemdCgroup = true
EOF
	fi
}

# The pod network for pods that ask for one (the host-network tests do not): a bridge with
# host-local addresses, state kept in the run directory. `stop` removes the bridge.
CNI_BRIDGE=wasmpod0
CNI_SUBNET=10.213.57.0/24
write_cni() {
	local d
	d=$(run_dir "$1")
	cat >"$d/cni/10-wasmpod-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "wasmpod-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$CNI_SUBNET"}]],
        "dataDir": "$d/cni-ipam"
      }
    }
  ]
}
EOF
}

ctr_() {
	local v=$1
	shift
	"$TB/containerd-$v/usr/bin/ctr" -a "$(run_dir "$v")/containerd.sock" "$@"
}

cmd_start() {
	need_root
	local v=${1:-}
	check_version "$v"
	local d
	d=$(run_dir "$v")
	[ -x "$TB/containerd-$v/usr/bin/containerd" ] || die "containerd $v is not installed: run '$0 install'"
	[ -x "$SHIM" ] || die "no shim at $SHIM: run 'cargo build -p wasmpod-shim'"
	[ -x "$ISOLATED_SHIM" ] || die "no isolated shim at $ISOLATED_SHIM: run 'make build'"
	[ -f "$IMAGES/http.tar" ] || die "no test images in $IMAGES: run '$0 images'"
	if [ -f "$d/containerd.pid" ] && kill -0 "$(cat "$d/containerd.pid")" 2>/dev/null; then
		die "containerd $v is already running (pid $(cat "$d/containerd.pid")); '$0 stop $v' first"
	fi
	rm -rf "$d" && mkdir -p "$d/bin" "$d/cni" "$d/certs.d" "$d/logs"
	cp "$SHIM" "$d/bin/containerd-shim-wasmtime-v1"
	cp "$ISOLATED_SHIM" "$d/bin/containerd-shim-wasmtime-isolated-v1"
	write_config "$v" >"$d/config.toml"
	write_cni "$v"
	log "starting containerd $v ($d)"
	# Shims inherit containerd's environment: this is where they keep compiled modules.
	WASMPOD_CACHE_DIR="$d/cache" PATH="$d/bin:$TB/containerd-$v/usr/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		setsid "$TB/containerd-$v/usr/bin/containerd" --config "$d/config.toml" --log-level debug \
		</dev/null >"$d/containerd.log" 2>&1 &
	echo $! >"$d/containerd.pid"
	for _ in $(seq 1 100); do
		ctr_ "$v" version >/dev/null 2>&1 && break
		kill -0 "$(cat "$d/containerd.pid")" 2>/dev/null || { tail -n 30 "$d/containerd.log" >&2; die "containerd $v exited"; }
		sleep 0.1
	done
	ctr_ "$v" version >/dev/null || die "containerd $v did not come up; see $d/containerd.log"
	for ns in k8s.io default; do
		for img in pause busybox workloads http; do
			ctr_ "$v" -n "$ns" images import --all-platforms "$IMAGES/$img.tar" >/dev/null
		done
	done
	start_registry "$d"
	local deb server
	deb=$(unpacked_version "$TB/containerd-$v")
	server=$(ctr_ "$v" version | awk '/^Server:/ {s=1} s && $1 == "Version:" {print $2; exit}')
	log "containerd $v is the .deb $deb, running $server"
	cat <<EOF
export WASMPOD_CONTAINERD_VERSION=$v
export WASMPOD_CONTAINERD_DEB=$deb
export WASMPOD_CONTAINERD_SERVER=$server
export WASMPOD_CONTAINERD_SOCKET=$d/containerd.sock
export WASMPOD_CTR=$TB/containerd-$v/usr/bin/ctr
export WASMPOD_RUN_DIR=$d
export WASMPOD_CACHE_DIR=$d/cache
export WASMPOD_REGISTRY=$REGISTRY
export WASMPOD_OTLP_PYTHON=$TB/otlp-venv/bin/python
EOF
}

# A registry filled with the registry images, its state in DIR/registry; a containerd whose
# registry config_path is DIR/certs.d pulls from it over plain HTTP.
start_registry() {
	local d=$1 reg
	reg=$d/registry
	[ -x "$TB/tools/docker-registry/usr/bin/docker-registry" ] || die "no registry: run '$0 install'"
	[ -d "$IMAGES/registry" ] || die "no registry images in $IMAGES/registry: run '$0 images'"
	if curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null; then
		die "something already serves $REGISTRY; stop it or set WASMPOD_REGISTRY=127.0.0.1:PORT"
	fi
	mkdir -p "$reg/data" "$d/certs.d/$REGISTRY"
	cat >"$reg/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $reg/data
http:
  addr: $REGISTRY
EOF
	printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
		"$REGISTRY" "$REGISTRY" >"$d/certs.d/$REGISTRY/hosts.toml"
	setsid "$TB/tools/docker-registry/usr/bin/docker-registry" serve "$reg/config.yml" \
		</dev/null >"$reg/registry.log" 2>&1 &
	echo $! >"$reg/registry.pid"
	for _ in $(seq 1 50); do
		curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null && break
		kill -0 "$(cat "$reg/registry.pid")" 2>/dev/null || { cat "$reg/registry.log" >&2; die "the registry exited"; }
		sleep 0.1
	done
	local t name
	for t in "$IMAGES"/registry/*.tar; do
		name=$(basename "$t" .tar)
		python3 "$ROOT/e2e/images/push.py" "$t" "$REGISTRY/wasmpod/$name:1" ||
			die "cannot push $name to the registry"
	done
	log "registry at $REGISTRY with $(ls "$IMAGES"/registry/*.tar | wc -l) images"
}

cmd_stop() {
	need_root
	local v=${1:-}
	check_version "$v"
	local d pid
	d=$(run_dir "$v")
	[ -d "$d" ] || return 0
	if [ -f "$d/containerd.pid" ]; then
		pid=$(cat "$d/containerd.pid")
		if kill -0 "$pid" 2>/dev/null; then
			# Tasks a failed test left behind: their shims were started by this containerd and
			# outlive it, so end them through it first.
			local ns t
			for ns in k8s.io default; do
				for t in $(ctr_ "$v" -n "$ns" tasks ls -q 2>/dev/null); do
					log "removing leftover task $ns/$t"
					ctr_ "$v" -n "$ns" tasks rm -f "$t" >/dev/null 2>&1 || true
				done
			done
			log "stopping containerd $v (pid $pid)"
			kill -TERM "$pid"
			for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
		fi
		rm -f "$d/containerd.pid"
	fi
	stop_registry "$d"
	# Parent cgroups of the test pods (runc and wasmpod leave parents, as the kubelet does,
	# and the limited pod cgroups a failed test made); rmdir takes only empty ones.
	find /sys/fs/cgroup/*/wasmpod-e2e -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null || true
	rmdir /sys/fs/cgroup/*/wasmpod-e2e /sys/fs/cgroup/*/wasmpod_e2e.slice /sys/fs/cgroup/*/k8s.io \
		/sys/fs/cgroup/*/default 2>/dev/null || true
	if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
		ip link del "$CNI_BRIDGE" 2>/dev/null || true
	fi
	# Mounts made under this containerd's root and state (snapshots, rootfs, shm), deepest first.
	{ grep -F " $d/" /proc/self/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done
}

stop_registry() {
	local d=$1 pid
	if [ -f "$d/registry/registry.pid" ]; then
		pid=$(cat "$d/registry/registry.pid")
		kill -0 "$pid" 2>/dev/null && kill -TERM "$pid"
		rm -f "$d/registry/registry.pid"
	fi
}

case "${1:-}" in
install) cmd_install ;;
registry-start)
	[ -n "${2:-}" ] || die "usage: $0 registry-start DIR"
	mkdir -p "$2" && start_registry "$2"
	;;
registry-stop) stop_registry "${2:?usage: $0 registry-stop DIR}" ;;
fetch) cmd_fetch ;;
versions) shift; cmd_versions "$@" ;;
lines) echo "${LINES[*]}" ;;
debian) cmd_debian ;;
config) check_version "${2:-}"; write_config "$2" ;;
images) cmd_images ;;
start) cmd_start "${2:-}" ;;
stop) cmd_stop "${2:-}" ;;
*) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
