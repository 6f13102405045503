# shellcheck shell=bash
# What the two cluster tests share: one set of images, workloads and assertions, two ways to get
# a cluster (test-kind/run.sh: kind where Docker exists; test-kind/cluster-test.sh: a local
# single-node Kubernetes built from upstream sources). Sourced, not run.
#
# The sourcing script sets ROOT, HERE (test-kind/), WORK (a scratch directory), DRY_RUN (0/1)
# and defines two functions for what differs between the clusters:
#   node_sh CMD       run a shell command on the node that runs the Wasm pods
#   node_crictl ARGS  crictl on that node, against its containerd
# The workload manifests name their images localhost:5001/wasmpod/NAME:1; each cluster makes
# that name reach its registry (kind: a registry container; local: the test bed's registry
# through containerd's certs.d).

NS=${NS:-wasmpod}
TNS=wasmpod-test
# shellcheck disable=SC2034 # used by the scripts that source this
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

# until_ok SECONDS CMD...: retry CMD every second until it succeeds.
until_ok() {
	local n=$1
	shift
	show "$@"
	[ "$DRY_RUN" = 1 ] && return 0
	local i
	for i in $(seq "$n"); do
		"$@" >/dev/null 2>&1 && return 0
		[ "$i" = "$n" ] || sleep 1
	done
	"$@"
}

# build_images: the Wasm workloads (e2e/workloads, e2e/http-handler) packed by
# e2e/images/ociimage.py into $WORK: a compat image, a Wasm OCI artifact, a wasi/wasm platform
# image, the wasi:http handler and a native busybox image (busybox-static's /bin/busybox).
build_images() {
	run cargo build -q --release --locked -p wasmpod-workloads --target wasm32-wasip1
	run cargo build -q --release --locked -p wasmpod-http-handler --target wasm32-wasip2
	local w=target/wasm32-wasip1/release files=() m
	for m in hello exit sleep memhog work readfile echo; do
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
	run python3 e2e/images/ociimage.py --out "$WORK/http.tar" --name wasmpod.test/http:1 \
		--file "target/wasm32-wasip2/release/wasmpod_http_handler.wasm:/handler.wasm" \
		--entrypoint /handler.wasm --annotation module.wasm.image/variant=compat
	[ "$DRY_RUN" = 1 ] || [ -x /bin/busybox ] || fail "/bin/busybox is needed for the native sidecar image (apt-get install busybox-static)"
	run python3 e2e/images/ociimage.py --out "$WORK/busybox.tar" --name wasmpod.test/busybox:1 \
		--file /bin/busybox:/bin/busybox --entrypoint /bin/busybox
}

# push_images REGISTRY: push build_images' images as REGISTRY/wasmpod/NAME:1 (push.py speaks
# the registry API itself: manifests go up byte for byte, artifacts included).
push_images() {
	local reg=$1 name
	for name in workloads hello-artifact hello-wasi http busybox; do
		run python3 e2e/images/push.py "$WORK/$name.tar" "$reg/wasmpod/$name:1"
	done
}

# work_pods_ratio: runs wasm-work-free, then wasm-work-limited (200m), and succeeds when the
# limited one took at least 3x as long; WORK_RATIO says what was measured.
WORK_RATIO=""
work_pods_ratio() {
	local name free_ms limited_ms
	run kubectl -n "$TNS" delete pod wasm-work-free wasm-work-limited --ignore-not-found --wait
	for name in free limited; do
		run kubectl apply -f "$HERE/workloads/work-pods.yaml" -l "wasmpod.dev/work=$name"
		run kubectl -n "$TNS" wait --for=jsonpath='{.status.phase}'=Succeeded "pod/wasm-work-$name" --timeout 300s
	done
	[ "$DRY_RUN" = 0 ] || return 0
	# "work: N ms (x)" -> N
	free_ms=$(out kubectl -n "$TNS" logs wasm-work-free | sed -n 's/^work: \([0-9]*\) ms.*/\1/p')
	limited_ms=$(out kubectl -n "$TNS" logs wasm-work-limited | sed -n 's/^work: \([0-9]*\) ms.*/\1/p')
	if [ -z "$free_ms" ] || [ -z "$limited_ms" ]; then fail "no 'work: N ms' line in the wasm-work pods' logs"; fi
	WORK_RATIO="$limited_ms ms vs $free_ms ms unlimited"
	[ "$limited_ms" -ge $((3 * free_ms)) ]
}

# check_workloads: every workload in test-kind/workloads/ with assertions on real results.
check_workloads() {
	step "workloads"
	run kubectl apply -f "$HERE/workloads/00-namespace.yaml"
	# Everything but the CPU pods, which run later on a quiet node: started with the others,
	# the unlimited one is slowed by their start-up and the ratio says nothing of the limit.
	local w
	for w in "$HERE"/workloads/*.yaml; do
		[ "$(basename "$w")" = work-pods.yaml ] || run kubectl apply -f "$w"
	done

	echo "-- Job wasm-hello: completes and prints the greeting"
	run kubectl -n "$TNS" wait --for=condition=complete job/wasm-hello --timeout 180s
	contains "wasm-hello log" "$(out kubectl -n "$TNS" logs job/wasm-hello)" "hello from wasmpod"

	echo "-- Job wasm-exit: fails with the guest's exit code 3 in the pod status"
	run kubectl -n "$TNS" wait --for=condition=failed job/wasm-exit --timeout 180s
	local code
	code=$(out kubectl -n "$TNS" get pods -l job-name=wasm-exit \
		-o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.exitCode}')
	expect "wasm-exit exitCode" "$code" 3

	echo "-- Jobs wasm-format-*: each Wasm image format runs hello"
	local f
	for f in compat artifact wasi; do
		run kubectl -n "$TNS" wait --for=condition=complete "job/wasm-format-$f" --timeout 180s
		contains "wasm-format-$f log" "$(out kubectl -n "$TNS" logs "job/wasm-format-$f")" "hello from wasmpod"
	done

	echo "-- Deployment wasm-sleep: 3 replicas Available, again after a rollout restart"
	run kubectl -n "$TNS" rollout status deployment/wasm-sleep --timeout 180s
	run kubectl -n "$TNS" wait --for=condition=available deployment/wasm-sleep --timeout 60s
	local old
	old=$(out kubectl -n "$TNS" get pods -l app=wasm-sleep -o name)
	run kubectl -n "$TNS" rollout restart deployment/wasm-sleep
	run kubectl -n "$TNS" rollout status deployment/wasm-sleep --timeout 180s
	# The grace period is 120 s: old pods gone within 30 s means SIGTERM ended their guests.
	# shellcheck disable=SC2086 # one argument per pod
	[ -z "$old" ] || run kubectl -n "$TNS" wait --for=delete $old --timeout 30s
	local avail
	avail=$(out kubectl -n "$TNS" get deployment wasm-sleep -o jsonpath='{.status.availableReplicas}')
	expect "wasm-sleep availableReplicas after restart" "$avail" 3
	local sleep_log=""
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
	# One after the other, so the unlimited run's time is the work's and not the node's
	# contention; once more if the node was busy (pods of the steps before still ending).
	local attempt ratio_ok=0
	for attempt in 1 2; do
		work_pods_ratio && ratio_ok=1 && break
		echo "   (attempt $attempt: the node may have been busy; once more)"
	done
	[ "$ratio_ok" = 1 ] || fail "200m limit: $WORK_RATIO (want >= 3x)"
	ok "200m limit: $WORK_RATIO"

	echo "-- Pod wasm-readfile: reads a mounted ConfigMap"
	run kubectl -n "$TNS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/wasm-readfile --timeout 180s
	contains "wasm-readfile log" "$(out kubectl -n "$TNS" logs wasm-readfile)" "hello from a ConfigMap"

	echo "-- Deployment wasm-http: a wasi:http handler Ready through its HTTP probes, answering on its Service's ClusterIP"
	run kubectl -n "$TNS" rollout status deployment/wasm-http --timeout 180s
	local ip
	ip=$(out kubectl -n "$TNS" get service wasm-http -o jsonpath='{.spec.clusterIP}')
	[ "$DRY_RUN" = 1 ] && ip=CLUSTER_IP
	local reply
	reply=$(out node_sh "curl -sS --max-time 5 --retry 10 --retry-delay 1 --retry-all-errors http://$ip/")
	contains "wasm-http reply through the ClusterIP" "$reply" "hello from a wasmpod http handler"
	local ready restarts
	ready=$(out kubectl -n "$TNS" get pods -l app=wasm-http -o jsonpath='{.items[*].status.containerStatuses[0].ready}')
	expect "wasm-http readiness (HTTP probe)" "$ready" "true true"
	restarts=$(out kubectl -n "$TNS" get pods -l app=wasm-http -o jsonpath='{.items[*].status.containerStatuses[0].restartCount}')
	expect "wasm-http restarts (HTTP liveness probe passing)" "$restarts" "0 0"

	echo "-- Pod wasm-native: an image without Wasm, a clear StartError in kubectl describe"
	run kubectl -n "$TNS" wait --for=jsonpath='{.status.containerStatuses[0].state.terminated.reason}'=StartError \
		pod/wasm-native --timeout 180s
	contains "kubectl describe pod wasm-native" "$(out kubectl -n "$TNS" describe pod wasm-native)" \
		"has no Wasm module: /bin/busybox is not a WebAssembly module (it is a native ELF executable)"

	echo "-- Pod wasm-isolated (wasmtime-isolated): a Wasm container and a native sidecar"
	run kubectl -n "$TNS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/wasm-isolated --timeout 180s
	contains "wasm-isolated app log" "$(out kubectl -n "$TNS" logs wasm-isolated -c app)" "args: hello isolated"
	contains "wasm-isolated sidecar log" "$(out kubectl -n "$TNS" logs wasm-isolated -c sidecar)" \
		"hello from a native sidecar"

	echo "-- ContainerStats through the CRI (what kubectl top reads) for a running Wasm container"
	local pod id stats
	pod=$(out kubectl -n "$TNS" get pods -l app=wasm-sleep -o jsonpath='{.items[0].metadata.name}')
	id=$(out node_crictl ps -q --name sleep --label "io.kubernetes.pod.name=$pod")
	stats=$(out node_crictl stats -o json --id "$id")
	if [ "$DRY_RUN" = 0 ]; then
		local mem
		mem=$(python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"][0]; print(int(s["memory"]["workingSetBytes"]["value"]))' <<<"$stats") ||
			fail "no memory working set in the CRI stats: $stats"
		[ "$mem" -gt 0 ] || fail "CRI stats: working set $mem"
		ok "CRI ContainerStats of $pod: working set $mem bytes"
	fi
}

# The workload namespace goes before the chart is removed.
delete_workloads() {
	run kubectl delete namespace "$TNS" --wait --timeout 180s
}

# uninstall_chart: the chart README's documented order. While the installer pods stop they
# remove the label and restore containerd's config; they need their RBAC for that.
uninstall_chart() {
	run helm upgrade wasmpod charts/wasmpod -n "$NS" --reuse-values --set installer.uninstallOnStop=true --wait --timeout 5m
	run helm upgrade wasmpod charts/wasmpod -n "$NS" --reuse-values --set installer.enabled=false --timeout 5m
	gone app.kubernetes.io/component=installer
	run helm uninstall wasmpod -n "$NS" --wait --timeout 5m
}

# denied WHAT WANT CMD...: CMD must fail, its error saying WANT.
denied() {
	local what=$1 want=$2 msg
	shift 2
	show "$@"
	[ "$DRY_RUN" = 1 ] && return 0
	if msg=$("$@" 2>&1); then fail "$what was allowed: $msg"; fi
	contains "$what: denied" "$msg" "$want"
}

# as_installer ARGS: kubectl with the token in $WORK/installer.kubeconfig and nothing else (a
# client certificate of the admin's kubeconfig would win over a token).
as_installer() { kubectl --kubeconfig "$WORK/installer.kubeconfig" "$@"; }

# installer_kubeconfig TOKEN: the current cluster with TOKEN as the only credential.
installer_kubeconfig() {
	printf '+ (a kubeconfig for the current cluster with a service account token: %s)\n' "$WORK/installer.kubeconfig"
	[ "$DRY_RUN" = 1 ] && return 0
	local cfg=$WORK/installer.kubeconfig server
	server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
	kubectl config view --minify --raw --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' |
		base64 -d >"$WORK/cluster-ca.crt"
	rm -f "$cfg"
	kubectl config --kubeconfig "$cfg" set-cluster c --server "$server" \
		--certificate-authority "$WORK/cluster-ca.crt" --embed-certs >/dev/null
	kubectl config --kubeconfig "$cfg" set-credentials installer --token "$1" >/dev/null
	kubectl config --kubeconfig "$cfg" set-context c --cluster c --user installer >/dev/null
	kubectl config --kubeconfig "$cfg" use-context c >/dev/null
}

# check_installer_rbac NODE: with a token bound to NODE's installer pod (what the pod's own
# projected token is), the installer's service account sets and removes the label
# wasmpod.dev/wasmtime on NODE, and changes nothing else: no other label or annotation of NODE,
# no other node, nothing with a token bound to no pod (the chart's RBAC and its
# ValidatingAdmissionPolicy, charts/wasmpod/templates/admissionpolicy.yaml).
check_installer_rbac() {
	local node=$1 sa=wasmpod-installer policy=wasmpod-installer-own-node dummy=wasmpod-dummy-node pod
	step "the installer's credentials: its own node's wasmpod label, nothing else"
	run kubectl get validatingadmissionpolicy "$policy"
	run kubectl get validatingadmissionpolicybinding "$policy"
	pod=$(out kubectl -n "$NS" get pods -l app.kubernetes.io/component=installer \
		--field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
	[ "$DRY_RUN" = 1 ] && pod=INSTALLER_POD
	[ -n "$pod" ] || fail "no installer pod on $node"
	show kubectl -n "$NS" create token "$sa" --bound-object-kind Pod --bound-object-name "$pod" --duration 10m
	local token=""
	[ "$DRY_RUN" = 1 ] || token=$(kubectl -n "$NS" create token "$sa" --bound-object-kind Pod --bound-object-name "$pod" --duration 10m)
	installer_kubeconfig "$token"
	run as_installer label node "$node" "$LABEL-"
	run as_installer label node "$node" "$LABEL=ready" --overwrite
	expect "$node label set by the installer's token" \
		"$(out kubectl get node "$node" -o jsonpath='{.metadata.labels.wasmpod\.dev/wasmtime}')" ready
	ok "the installer's token removes and sets $LABEL on its own node"
	denied "another label on its own node" "may change only the label wasmpod.dev/wasmtime of its node, no other label" \
		as_installer label node "$node" wasmpod.dev/other=x
	denied "an annotation on its own node" "not its spec, status, annotations" \
		as_installer annotate node "$node" wasmpod.dev/note=x
	denied "a taint on its own node" "not its spec" \
		as_installer taint node "$node" wasmpod.dev/taint=x:NoSchedule
	# Another node, made by the admin for the test (no kubelet behind it, no installer pod:
	# it lacks the kubernetes.io/os label the DaemonSet selects on).
	show kubectl create -f - "(Node $dummy)"
	[ "$DRY_RUN" = 1 ] || kubectl create -f - <<<"{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {\"name\": \"$dummy\"}}"
	denied "the wasmpod label on another node" "may change only the node its pod runs on ($node), not $dummy" \
		as_installer label node "$dummy" "$LABEL=ready"
	run kubectl delete node "$dummy" --wait --timeout 60s
	# A token of the same account bound to no pod names no node.
	[ "$DRY_RUN" = 1 ] || token=$(kubectl -n "$NS" create token "$sa" --duration 10m)
	installer_kubeconfig "$token"
	denied "the wasmpod label with a token bound to no pod" "its token names no node" \
		as_installer label node "$node" "$LABEL-"
	expect "$node labels after the denied calls" \
		"$(out kubectl get node "$node" -o jsonpath='{.metadata.labels.wasmpod\.dev/other}{.metadata.annotations.wasmpod\.dev/note}')" ""
	[ "$DRY_RUN" = 1 ] || rm -f "$WORK/installer.kubeconfig" "$WORK/cluster-ca.crt"
}
