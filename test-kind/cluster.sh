#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, from upstream sources, for wasmpod (root):
# etcd and the control plane on the node's address with locally generated certificates, a
# kubelet (cgroupfs driver) and kube-proxy against the test bed's containerd, pods on a CNI
# bridge of their own, the test bed's registry on 127.0.0.1:5000 (nodes also reach it as
# localhost:5001, the name the workload manifests use), then wasmpod itself: the installer
# image built here, `helm install charts/wasmpod` with the real Helm CLI, and the node's
# wasmpod.dev/wasmtime=ready label.
#
#   test-kind/cluster.sh up [--node-only]   start it (CONTAINERD=2.1 by default, or 1.7);
#                                 --node-only stops before helm install (the cluster test's
#                                 own steps install the chart)
#   test-kind/cluster.sh down     helm uninstall, stop every process it started (by PID),
#                                 unmount and remove what it created
#   test-kind/cluster.sh status   what runs
#   test-kind/cluster.sh restart-containerd
#                                 restart the node's containerd as systemctl would (what the
#                                 installer's restartCommand runs, on the host)
#   test-kind/cluster.sh installer-image TAG
#                                 build the installer image from target/debug and push it as
#                                 localhost:5001/wasmpod/installer:TAG
#   test-kind/cluster.sh helm-values TAG
#                                 the chart values for this node (one argument a line)
#
# The admin kubeconfig is target/cluster/kubeconfig; logs are in target/cluster/logs. The
# components come from test-kind/components.sh (built once into the test bed cache).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TB=${WASMPOD_TESTBED:-/var/tmp/wasmpod-testbed}
BIN=$TB/bin
RUN=$TB/run/cluster
OUT=$ROOT/target/cluster
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
IMAGES=${WASMPOD_IMAGES:-$TARGET/e2e-images}
REGISTRY=${WASMPOD_REGISTRY:-127.0.0.1:5000}
NODE=wasmpod-node
# The node's own network: a bridge that holds the node address (the API server, the kubelet
# and kube-proxy listen there) and the pods' addresses. Kept apart from the e2e suite's.
BRIDGE=wasmpodk8s0
NODE_IP=10.213.58.1
POD_CIDR=10.213.58.0/24
SERVICE_CIDR=10.213.59.0/24
KUBERNETES_SERVICE_IP=10.213.59.1
ETCD_PORT=2379

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "run as root (containerd, the kubelet and their mounts need it)"; }

pid_alive() { [ -f "$RUN/pids/$1.pid" ] && kill -0 "$(cat "$RUN/pids/$1.pid")" 2>/dev/null; }
kubectl_() { "$BIN/kubectl" --kubeconfig "$OUT/kubeconfig" "$@"; }
ctr_() { "$RUN/containerd-bin/ctr" -a "$RUN/containerd/containerd.sock" "$@"; }

version() { cat "$RUN/containerd-version" 2>/dev/null || echo "${CONTAINERD:-2.1}"; }

# --- certificates ----------------------------------------------------------------------

# cert NAME CN [O] [SANS]: a key and a certificate signed by the cluster CA.
cert() {
	local name=$1 cn=$2 org=${3:-} sans=${4:-} subj p=$RUN/pki
	subj="/CN=$cn"
	[ -z "$org" ] || subj="$subj/O=$org"
	openssl genrsa -out "$p/$name.key" 2048 2>/dev/null
	openssl req -new -key "$p/$name.key" -subj "$subj" -out "$p/$name.csr" 2>/dev/null
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=clientAuth,serverAuth"
		[ -z "$sans" ] || echo "subjectAltName=$sans"
	} >"$p/$name.ext"
	openssl x509 -req -in "$p/$name.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
		-days 30 -sha256 -extfile "$p/$name.ext" -out "$p/$name.crt" 2>/dev/null
	rm -f "$p/$name.csr" "$p/$name.ext"
}

# kubeconfig FILE CERT: a kubeconfig for a client certificate.
kubeconfig() {
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: wasmpod
    cluster:
      server: https://$NODE_IP:6443
      certificate-authority: $RUN/pki/ca.crt
users:
  - name: $2
    user:
      client-certificate: $RUN/pki/$2.crt
      client-key: $RUN/pki/$2.key
contexts:
  - name: wasmpod
    context: {cluster: wasmpod, user: $2}
current-context: wasmpod
EOF
}

make_pki() {
	local p=$RUN/pki
	mkdir -p "$p"
	log "certificates in $p"
	openssl genrsa -out "$p/ca.key" 2048 2>/dev/null
	openssl req -x509 -new -key "$p/ca.key" -subj "/CN=wasmpod-cluster-ca" -days 30 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$p/ca.crt" 2>/dev/null
	cert apiserver kube-apiserver "" \
		"IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
	cert admin kubernetes-admin system:masters
	cert controller-manager system:kube-controller-manager
	cert scheduler system:kube-scheduler
	cert kube-proxy system:kube-proxy
	cert kubelet "system:node:$NODE" system:nodes "IP:$NODE_IP,DNS:$NODE"
	openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
	openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
	local k
	for k in admin controller-manager scheduler kube-proxy kubelet; do
		kubeconfig "$RUN/$k.kubeconfig" "$k"
	done
	mkdir -p "$OUT"
	cp "$RUN/admin.kubeconfig" "$OUT/kubeconfig"
}

# --- processes ---------------------------------------------------------------------------

# start NAME CMD...: a daemon in its own session, its log in logs/NAME.log, its PID recorded.
start() {
	local name=$1
	shift
	setsid "$@" </dev/null >>"$RUN/logs/$name.log" 2>&1 &
	echo $! >"$RUN/pids/$name.pid"
}

# wait_for WHAT SECONDS PROCESS CMD...: until CMD succeeds; fails early when PROCESS exits.
wait_for() {
	local what=$1 n=$2 proc=$3
	shift 3
	for _ in $(seq $((n * 5))); do
		"$@" >/dev/null 2>&1 && return 0
		if [ -n "$proc" ] && ! pid_alive "$proc"; then
			tail -n 30 "$RUN/logs/$proc.log" >&2
			die "$proc exited while waiting for $what (log: $RUN/logs/$proc.log)"
		fi
		sleep 0.2
	done
	[ -z "$proc" ] || tail -n 30 "$RUN/logs/$proc.log" >&2
	die "$what not ready after ${n}s"
}

# stop_pid NAME: SIGTERM, then SIGKILL after 15 s, for a process this script started.
stop_pid() {
	local f=$RUN/pids/$1.pid pid
	[ -f "$f" ] || return 0
	pid=$(cat "$f")
	if kill -0 "$pid" 2>/dev/null; then
		log "stopping $1 (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
	fi
	rm -f "$f"
}

# --- containerd ------------------------------------------------------------------------

# The node's containerd config as a fresh node has it: runc only (the installer adds wasmpod's
# runtimes), cgroupfs like the kubelet, the test bed's pause image, the registry host config
# and the pod network's CNI config: pods reach the node and, through it, the Services
# (kube-proxy's rules on the node); no default route, nothing beyond this machine.
write_containerd_config() {
	local v=$1 c=$RUN/containerd
	if [ "$v" = 1.7 ]; then
		cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$c/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "wasmpod.test/pause:1"
  # This VM refuses negative oom_score_adj even for root; CRI asks for -998 otherwise.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$c/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$c/certs.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
EOF
	else
		cat >"$c/config.toml" <<EOF
version = 3
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$c/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "wasmpod.test/pause:1"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$c/certs.d"
[plugins.'io.containerd.cri.v1.runtime']
  # This VM refuses negative oom_score_adj even for root; CRI asks for -998 otherwise.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$c/cni"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      SystemdCgroup = false
EOF
	fi
	mkdir -p "$c/cni" "$c/certs.d/localhost:5001"
	cat >"$c/cni/10-wasmpod-cluster.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "wasmpod-cluster",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "hairpinMode": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}],
        "dataDir": "$RUN/cni-ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
	# The manifests' localhost:5001 is the test bed's registry here (kind runs one there).
	printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
		"$REGISTRY" "$REGISTRY" >"$c/certs.d/localhost:5001/hosts.toml"
	cp "$c/config.toml" "$RUN/containerd-config.before.toml"
}

# containerd under a small supervisor, as systemd would run it: SIGUSR1 to the supervisor
# restarts containerd (the shims, and so the pods, keep running), SIGTERM stops it. Not
# SIGHUP: under `nohup make test` it is ignored from the start, and bash cannot trap a signal
# ignored on entry, so the restart would silently never happen.
cmd_supervise() {
	local cpid="" want=run
	trap 'want=restart; [ -z "$cpid" ] || kill -TERM "$cpid"' USR1
	trap 'want=stop; [ -z "$cpid" ] || kill -TERM "$cpid"' TERM
	while :; do
		WASMPOD_CACHE_DIR=$RUN/wasmpod-cache PATH="$RUN/containerd-bin:/usr/sbin:/usr/bin:/sbin:/bin" \
			"$RUN/containerd-bin/containerd" --config "$RUN/containerd/config.toml" </dev/null &
		cpid=$!
		echo "$cpid" >"$RUN/pids/containerd.pid"
		while kill -0 "$cpid" 2>/dev/null; do wait "$cpid" || true; done
		cpid=""
		case $want in
		stop) rm -f "$RUN/pids/containerd.pid" && exit 0 ;;
		restart) want=run && echo "$(date -u +%FT%TZ) restarted" >>"$RUN/containerd-restarts" ;;
		*) echo "containerd exited by itself; starting it again in 1 s" && sleep 1 ;;
		esac
	done
}

containerd_serves() { ctr_ version >/dev/null 2>&1; }

cmd_restart_containerd() {
	[ -f "$RUN/pids/containerd-supervisor.pid" ] || die "no cluster containerd runs"
	local old
	old=$(cat "$RUN/pids/containerd.pid" 2>/dev/null || true)
	log "restarting containerd (pid $old)"
	kill -USR1 "$(cat "$RUN/pids/containerd-supervisor.pid")"
	for _ in $(seq 300); do
		local now
		now=$(cat "$RUN/pids/containerd.pid" 2>/dev/null || true)
		if [ -n "$now" ] && [ "$now" != "$old" ] && containerd_serves; then
			log "containerd serves again (pid $now)"
			return 0
		fi
		sleep 0.1
	done
	die "containerd did not come back within 30 s (log: $RUN/logs/containerd.log)"
}

# --- up ------------------------------------------------------------------------------------

check_free() {
	local port
	for port in "$NODE_IP:6443" "127.0.0.1:$ETCD_PORT" "127.0.0.1:2380" "$NODE_IP:10250" 127.0.0.1:10248 \
		127.0.0.1:10257 127.0.0.1:10259 127.0.0.1:10249 127.0.0.1:10256; do
		if ss -Hltn "sport = :${port##*:}" | grep -q .; then
			die "port ${port##*:} is in use: another cluster or etcd runs here ($(ss -Hltnp "sport = :${port##*:}" | head -n1))"
		fi
	done
}

build_all() {
	log "components (test-kind/components.sh; a cold build takes ~15 min, later runs seconds)"
	bash "$ROOT/test-kind/components.sh"
	log "shims, installer and test images (cargo; the test bed's images)"
	# cargo's own progress shows: a cold build of the shims takes about 10 minutes.
	(cd "$ROOT" && cargo build -p wasmpod-shim -p wasmpod-installer && cd shim/isolated && cargo build)
	[ -f "$IMAGES/pause.tar" ] || bash "$ROOT/e2e/testbed.sh" images
}

# installer-image TAG: /wasmpod-installer and both shims from target/debug, plus /hello.wasm
# for `helm test` (the chart's default test runs the installer image's hello.wasm), in an image
# of nothing else. The installer is dynamically linked here, so the C libraries it needs come
# along (ldd); the release image (runtimeclass/Dockerfile) is static instead.
cmd_installer_image() {
	local tag=${1:?usage: $0 installer-image TAG} d=$OUT/installer-image f lib args=()
	rm -rf "$d" && mkdir -p "$d"
	local installer=$TARGET/debug/wasmpod-installer
	for f in "$installer" "$TARGET/debug/containerd-shim-wasmtime-v1" "$TARGET/debug/containerd-shim-wasmtime-isolated-v1"; do
		[ -x "$f" ] || die "no $f: cargo build -p wasmpod-shim -p wasmpod-installer, and in shim/isolated"
		args+=(--file "$f:/$(basename "$f")")
	done
	for lib in $(ldd "$installer" | grep -o '/[^ ]*'); do
		args+=(--file "$lib:$lib")
	done
	args+=(--file "$TARGET/wasm32-wasip1/release/hello.wasm:/hello.wasm")
	log "packing the installer image $tag (debug binaries: about a minute)"
	python3 "$ROOT/e2e/images/ociimage.py" --out "$d/installer.tar" --name "wasmpod.test/installer:$tag" \
		"${args[@]}" --entrypoint /wasmpod-installer
	python3 "$ROOT/e2e/images/push.py" "$d/installer.tar" "$REGISTRY/wasmpod/installer:$tag" >/dev/null
	log "installer image pushed as localhost:5001/wasmpod/installer:$tag"
}

cmd_up() {
	need_root
	local node_only=0
	[ "${1:-}" != --node-only ] || node_only=1
	local v=${CONTAINERD:-2.1}
	case $v in 1.7 | 2.1) ;; *) die "CONTAINERD must be 1.7 or 2.1, got '$v'" ;; esac
	if pid_alive kube-apiserver || pid_alive containerd-supervisor; then
		die "a cluster is already up ($RUN): '$0 down' first"
	fi
	local started=$SECONDS
	bash "$ROOT/e2e/testbed.sh" install
	build_all
	[ -x "$TB/containerd-$v/usr/bin/containerd" ] || die "containerd $v is not in the test bed"
	command -v iptables >/dev/null || die "iptables is needed for kube-proxy (apt-get install iptables)"
	check_free
	if iptables-save 2>/dev/null | grep -q '^:KUBE-'; then
		die "iptables already has KUBE-* chains: another Kubernetes runs (or ran) here; this cluster removes its chains at 'down' and would take those too"
	fi
	# What is left of an earlier cluster that was not brought down (a killed run).
	[ ! -d "$RUN" ] || cleanup_state
	mkdir -p "$RUN"/{pids,logs,containerd,etcd,kubelet,pod-logs,wasmpod} "$OUT"
	ln -sfn "$RUN/logs" "$OUT/logs"
	echo "$v" >"$RUN/containerd-version"
	# containerd's own binaries, copied so that the installer's config edits are all that
	# differs from a node's.
	cp -a "$TB/containerd-$v/usr/bin" "$RUN/containerd-bin"

	# A systemd host's / is a shared mount (systemd makes it so at boot), which the chart's
	# HostToContainer mount of / needs; this machine runs no systemd, so do what it would.
	findmnt -no PROPAGATION / >"$RUN/root-propagation"
	if [ "$(cat "$RUN/root-propagation")" = private ]; then
		log "making / a shared mount, as systemd does on every node (made private again at cluster down)"
		mount --make-shared /
	fi

	log "node network: bridge $BRIDGE, node address $NODE_IP, pods $POD_CIDR, services $SERVICE_CIDR"
	ip link add "$BRIDGE" type bridge
	ip addr add "$NODE_IP/24" dev "$BRIDGE"
	ip link set "$BRIDGE" up

	make_pki
	write_containerd_config "$v"
	printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\n' \
		"$RUN/containerd/containerd.sock" "$RUN/containerd/containerd.sock" >"$RUN/crictl.yaml"

	log "registry on $REGISTRY (the test bed's images; the cluster tests push theirs)"
	bash "$ROOT/e2e/testbed.sh" registry-start "$RUN" >/dev/null

	log "containerd $v"
	start containerd-supervisor bash "$0" _supervise
	# the supervisor writes containerd's output to its own log
	ln -sf containerd-supervisor.log "$RUN/logs/containerd.log"
	wait_for "containerd" 20 containerd-supervisor containerd_serves
	local img
	for img in pause busybox; do
		ctr_ -n k8s.io images import --all-platforms "$IMAGES/$img.tar" >/dev/null
	done

	log "etcd"
	start etcd "$BIN/etcd" --name wasmpod --data-dir "$RUN/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster wasmpod=http://127.0.0.1:2380 --listen-metrics-urls "" --log-level warn
	wait_for etcd 30 etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

	log "kube-apiserver"
	local p=$RUN/pki
	start kube-apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443 \
		--service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--client-ca-file "$p/ca.crt" --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
		--kubelet-client-certificate "$p/apiserver-kubelet-client.crt" --kubelet-client-key "$p/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types InternalIP \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
		--profiling=false
	wait_for kube-apiserver 120 kube-apiserver kubectl_ get --raw /readyz

	log "kube-controller-manager, kube-scheduler"
	start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$RUN/controller-manager.kubeconfig" \
		--authentication-kubeconfig "$RUN/controller-manager.kubeconfig" --authorization-kubeconfig "$RUN/controller-manager.kubeconfig" \
		--bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
		--root-ca-file "$p/ca.crt" --service-account-private-key-file "$p/sa.key" \
		--cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" --profiling=false
	start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$RUN/scheduler.kubeconfig" \
		--authentication-kubeconfig "$RUN/scheduler.kubeconfig" --authorization-kubeconfig "$RUN/scheduler.kubeconfig" \
		--bind-address 127.0.0.1 --leader-elect=false --profiling=false

	log "kubelet (cgroupfs; this machine's cgroup v1 allowed with failCgroupV1: false)"
	cat >"$RUN/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$RUN/containerd/containerd.sock
address: $NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
podLogsDir: $RUN/pod-logs
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $p/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $p/kubelet.crt
tlsPrivateKeyFile: $p/kubelet.key
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
maxPods: 250
serializeImagePulls: false
# A test machine's disk fills up with caches; never evict the test's pods for it.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
EOF
	start kubelet "$BIN/kubelet" --config "$RUN/kubelet-config.yaml" --kubeconfig "$RUN/kubelet.kubeconfig" \
		--root-dir "$RUN/kubelet" --hostname-override "$NODE" --node-ip "$NODE_IP" --cert-dir "$RUN/kubelet-pki"

	log "kube-proxy (iptables)"
	cat >"$RUN/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $RUN/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the kernel's conntrack table size alone (a VM may not allow changing it).
conntrack: {maxPerCore: 0}
EOF
	start kube-proxy "$BIN/kube-proxy" --config "$RUN/kube-proxy-config.yaml"

	wait_for "node $NODE Ready" 120 kubelet \
		kubectl_ wait --for=condition=Ready "node/$NODE" --timeout 1s
	log "node $NODE is Ready ($((SECONDS - started)) s)"
	cmd_installer_image 1
	if [ "$node_only" = 0 ]; then
		helm_install
		print_usage
	fi
}

# The chart's values for this node: its containerd config and socket, a restart command
# instead of systemctl (no systemd here), and wasmpod's host directories under the cluster's.
HELM_NODE_VALUES=()
node_values() {
	HELM_NODE_VALUES=(
		--set "image.repository=localhost:5001/wasmpod/installer" --set-string "image.tag=${1:-1}"
		--set "installer.containerdConfig=$RUN/containerd/config.toml"
		--set "installer.containerdAddress=$RUN/containerd/containerd.sock"
		--set "installer.restartCommand=bash $ROOT/test-kind/cluster.sh restart-containerd"
		--set "installer.binDir=$RUN/wasmpod/bin" --set "installer.stateDir=$RUN/wasmpod/state"
		--set installer.checkInterval=5
		# The pod's shim process lives in the pod's cgroup. The engine holds guests to its
		# headroom (the memhog ends OOMKilled with the chart's 4Mi too: tried), but compiling
		# is not bounded, and the debug shim's unoptimised Cranelift needs tens of MiB for
		# the HTTP handler: with 4Mi the kernel killed it mid-compile, every restart again
		# (CrashLoopBackOff). A release shim needs far less (README, Limits).
		--set-string runtimeClasses.wasmtime.overhead.memory=64Mi
		# This VM's PID 1 hides its namespaces; the supervisor that runs containerd is in the
		# host's, as systemd would be.
		--set "installer.hostPid=$(cat "$RUN/pids/containerd-supervisor.pid" 2>/dev/null || echo 1)"
	)
}

helm_() { KUBECONFIG=$OUT/kubeconfig "$BIN/helm" "$@"; }

helm_install() {
	node_values 1
	log "helm install wasmpod charts/wasmpod"
	helm_ install wasmpod "$ROOT/charts/wasmpod" -n wasmpod --create-namespace "${HELM_NODE_VALUES[@]}" \
		--wait --timeout 5m
	kubectl_ wait --for=jsonpath='{.metadata.labels.wasmpod\.dev/wasmtime}'=ready "node/$NODE" --timeout 300s
	log "node $NODE is labelled wasmpod.dev/wasmtime=ready"
}

print_usage() {
	cat <<EOF

A single-node Kubernetes $("$BIN/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])') runs here with wasmpod installed (containerd $(version)).

  export KUBECONFIG=$OUT/kubeconfig PATH=$BIN:\$PATH
  kubectl get nodes,runtimeclass
  kubectl run hello --image=localhost:5001/wasmpod/hello-artifact:1 --restart=Never \\
    --overrides='{"spec":{"runtimeClassName":"wasmtime"}}' --command -- /hello.wasm
  kubectl logs hello

Images: push to the registry on $REGISTRY (e2e/images/push.py, skopeo, oras); pods name them
localhost:5001/NAME or $REGISTRY/NAME. Logs: $OUT/logs. Stop it all: make cluster-down
EOF
}

# --- down ----------------------------------------------------------------------------------

cmd_down() {
	need_root
	[ -d "$RUN" ] || { log "no cluster"; return 0; }
	if pid_alive kube-apiserver; then
		# Pods first, through the kubelet (their volumes unmounted the ordinary way), and
		# while wasmpod's runtimes still exist: once uninstall takes them out of containerd's
		# config, containerd can no longer stop a running Wasm pod (it shows Unknown).
		log "deleting the pods (but the installer's)"
		kubectl_ delete namespace wasmpod-test --ignore-not-found --wait=true --timeout 120s >/dev/null 2>&1 || true
		kubectl_ delete pods -A --field-selector metadata.namespace!=wasmpod --wait=true --timeout 120s >/dev/null 2>&1 || true
	fi
	if pid_alive kube-apiserver && helm_ status wasmpod -n wasmpod >/dev/null 2>&1; then
		log "helm uninstall (the chart README's order: uninstall on stop, then the release)"
		helm_ upgrade wasmpod "$ROOT/charts/wasmpod" -n wasmpod --reuse-values --set installer.uninstallOnStop=true --wait --timeout 3m ||
			log "warning: could not turn on uninstallOnStop"
		helm_ upgrade wasmpod "$ROOT/charts/wasmpod" -n wasmpod --reuse-values --set installer.enabled=false --timeout 3m ||
			log "warning: could not remove the installer DaemonSet"
		kubectl_ -n wasmpod wait --for=delete pod -l app.kubernetes.io/component=installer --timeout 180s || true
		helm_ uninstall wasmpod -n wasmpod --wait --timeout 3m || log "warning: helm uninstall failed"
	fi
	if pid_alive kube-apiserver; then
		kubectl_ delete pods --all -A --wait=true --timeout 60s >/dev/null 2>&1 || true
	fi
	local c
	for c in kube-proxy kube-scheduler kube-controller-manager kubelet; do stop_pid "$c"; done
	if containerd_serves; then
		# Sandboxes the kubelet left: their shims outlive containerd, so end them through it.
		"$BIN/crictl" --config "$RUN/crictl.yaml" rmp -fa >/dev/null 2>&1 || true
		local t
		for t in $(ctr_ -n k8s.io tasks ls -q 2>/dev/null); do
			ctr_ -n k8s.io tasks rm -f "$t" >/dev/null 2>&1 || true
		done
	fi
	for c in kube-apiserver etcd containerd-supervisor; do stop_pid "$c"; done
	# Shims of this containerd that outlived their pods (a pod host shim ends when containerd
	# deletes its pod's last container; one that did not is a bug to see, not to keep).
	local pid
	for pid in $(pgrep -f -- "-address $RUN/containerd/containerd.sock" || true); do
		log "warning: ending a shim left after containerd: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
		kill -KILL "$pid" 2>/dev/null || true
	done
	bash "$ROOT/e2e/testbed.sh" registry-stop "$RUN"
	"$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
	remove_kube_chains
	cleanup_state
	log "cluster down"
}

# The kubelet's own iptables chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT),
# which kube-proxy --cleanup leaves. `up` refuses a machine that had KUBE-* chains before, so
# every one of them is this cluster's.
remove_kube_chains() {
	local ipt table chain rule
	for ipt in iptables ip6tables; do
		command -v "$ipt" >/dev/null || continue
		for table in filter nat mangle; do
			{ "$ipt-save" -t "$table" 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' || true; } | sed 's/^-A /-D /' |
				while read -r rule; do
					# shellcheck disable=SC2086 # a rule is words
					"$ipt" -t "$table" $rule 2>/dev/null || true
				done
			for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
				"$ipt" -t "$table" -F "$chain" 2>/dev/null || true
			done
			for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
				"$ipt" -t "$table" -X "$chain" 2>/dev/null || true
			done
		done
	done
}

# Mounts, cgroups, the bridge and the state directory of a cluster whose processes are gone.
cleanup_state() {
	# Mounts under the cluster's directories (kubelet volumes, snapshots, shm), deepest first.
	{ grep -F " $RUN/" /proc/self/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done
	# The kubelet's cgroups (cgroupfs: kubepods/... in every v1 hierarchy), deepest first.
	local h
	for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[ ! -d "$h" ] || find "$h" -depth -type d -exec rmdir {} + 2>/dev/null || log "warning: cgroups left under $h"
	done
	if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
	if [ "$(cat "$RUN/root-propagation" 2>/dev/null)" = private ]; then mount --make-private /; fi
	rm -rf "$RUN"
}

cmd_status() {
	local c
	for c in containerd-supervisor containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
		if pid_alive "$c"; then echo "$c: running (pid $(cat "$RUN/pids/$c.pid"))"; else echo "$c: not running"; fi
	done
	if pid_alive kube-apiserver; then kubectl_ get nodes -o wide; fi
}

case "${1:-}" in
up) shift && cmd_up "$@" ;;
down) cmd_down ;;
status) cmd_status ;;
restart-containerd) cmd_restart_containerd ;;
installer-image) cmd_installer_image "${2:-}" ;;
helm-values) node_values "${2:-1}" && printf '%s\n' "${HELM_NODE_VALUES[@]}" ;;
_supervise) cmd_supervise ;;
*) sed -n '2,27p' "$0" >&2 && exit 2 ;;
esac
