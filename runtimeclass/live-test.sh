#!/usr/bin/env bash
# The installer against a live containerd (root): starts a private containerd (1.7 or 2.1 from
# the e2e test bed) on its own config, socket and directories, then
#   install  -> config patched, containerd restarted through --restart-command, the handlers
#               verified through the CRI Status call
#   install  -> nothing changes, no restart
#   uninstall-> config restored byte for byte, containerd restarted, the handlers gone;
#   install, another tool's runtime added, uninstall -> only wasmpod's runtimes taken out.
# Usage: runtimeclass/live-test.sh [1.7|2.1]   (after `e2e/testbed.sh` has fetched containerd)
# Running a CRI pod with handler wasmtime on the patched containerd is the e2e suite's part.
set -euo pipefail
V=${1:-2.1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BED=${WASMPOD_TESTBED:-/var/tmp/wasmpod-testbed}
CTD=$BED/containerd-$V/usr/bin
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
INSTALLER=${WASMPOD_INSTALLER:-$TARGET/debug/wasmpod-installer}
SHIM=${WASMPOD_SHIM:-$TARGET/debug/containerd-shim-wasmtime-v1}
ISOLATED_SHIM=${WASMPOD_ISOLATED_SHIM:-$TARGET/debug/containerd-shim-wasmtime-isolated-v1}
DEMO=$TARGET/debug/demo
IMAGES=${WASMPOD_IMAGES:-$TARGET/e2e-images}
[ -x "$CTD/containerd" ] || { echo "no containerd $V in $BED: run e2e/testbed.sh first" >&2; exit 1; }
[ -x "$INSTALLER" ] || { echo "build the installer first: cargo build -p wasmpod-installer" >&2; exit 1; }
[ -x "$SHIM" ] && [ -x "$ISOLATED_SHIM" ] && [ -x "$DEMO" ] && [ -f "$IMAGES/workloads.tar" ] ||
	{ echo "build the shim, the demo and the test images first: make e2e (or cargo build -p wasmpod-shim -p wasmpod-e2e; e2e/testbed.sh images)" >&2; exit 1; }
case $V in
# The sandbox (pause) image is the test bed's: no registry is reachable here.
1.7) CV=2 PLUGIN='"io.containerd.grpc.v1.cri"' SANDBOX_V2='sandbox_image = "wasmpod.test/pause:1"' SANDBOX_V3='' ;;
2.1) CV=3 PLUGIN="'io.containerd.cri.v1.runtime'" SANDBOX_V2='' SANDBOX_V3="[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = \"wasmpod.test/pause:1\"" ;;
*) echo "version 1.7 or 2.1" >&2; exit 2 ;;
esac

D=$(mktemp -d /var/tmp/wasmpod-live.XXXXXX)
cleanup() {
	# Pods a failed step left behind: their shims outlive containerd, so end them through it.
	if [ -S "$D/containerd.sock" ]; then
		for t in $("$CTD/ctr" -a "$D/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
			"$CTD/ctr" -a "$D/containerd.sock" -n k8s.io tasks rm -f "$t" >/dev/null 2>&1 || true
		done
	fi
	[ -f "$D/pid" ] && kill "$(cat "$D/pid")" 2>/dev/null && sleep 0.5
	{ grep -F " $D/" /proc/self/mounts || true; } | awk '{print $2}' | sort -r | xargs -r umount -l
	rm -rf "$D"
}
trap cleanup EXIT

cat >"$D/config.toml" <<TOML
# A private containerd $V for the installer's live test.
version = $CV
root = "$D/root"
state = "$D/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "$D/containerd.sock"

[plugins.$PLUGIN]
  # This VM refuses negative oom_score_adj even for root.
  restrict_oom_score_adj = true
  $SANDBOX_V2

  [plugins.$PLUGIN.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.$PLUGIN.containerd.runtimes.runc.options]
      SystemdCgroup = false
$SANDBOX_V3
TOML
cp "$D/config.toml" "$D/config.orig"

cat >"$D/restart.sh" <<SH
#!/bin/sh
# what systemctl restart would do: stop, start, wait for the socket
echo restart >> "$D/restarts"
if [ -f "$D/pid" ]; then kill \$(cat "$D/pid"); while kill -0 \$(cat "$D/pid") 2>/dev/null; do sleep 0.05; done; fi
rm -f "$D/containerd.sock"
WASMPOD_CACHE_DIR="$D/cache" PATH="$CTD:\$PATH" setsid "$CTD/containerd" --config "$D/config.toml" >>"$D/containerd.log" 2>&1 < /dev/null &
echo \$! > "$D/pid"
for i in \$(seq 200); do [ -S "$D/containerd.sock" ] && exit 0; sleep 0.05; done
echo "containerd did not start" >&2; tail -20 "$D/containerd.log" >&2; exit 1
SH
chmod +x "$D/restart.sh"
"$D/restart.sh" && rm "$D/restarts"

cp "$SHIM" "$D/shim"
cp "$ISOLATED_SHIM" "$D/isolated-shim"
args=(--host-root / --containerd-config "$D/config.toml" --containerd-address "$D/containerd.sock"
	--bin-dir "$D/bin" --state-dir "$D/wasmpod-state" --shim "$D/shim" --isolated-shim "$D/isolated-shim"
	--restart-command "$D/restart.sh" --verify-timeout 30)
restarts() { [ -f "$D/restarts" ] && wc -l <"$D/restarts" || echo 0; }
fail() { echo "FAIL: $*" >&2; tail -20 "$D/containerd.log" >&2; exit 1; }

# Before: containerd does not know the handlers.
if "$INSTALLER" verify "${args[@]}" --verify-timeout 0 >/dev/null 2>&1; then fail "handlers present before install"; fi

t0=$(date +%s%N)
"$INSTALLER" install "${args[@]}" --skip-label --verify >"$D/out1" 2>"$D/err1" || { cat "$D/err1"; fail "install"; }
t1=$(date +%s%N)
grep -q '"config_changed": true' "$D/out1" || fail "first install changed no config"
[ "$(restarts)" = 1 ] || fail "expected one restart, got $(restarts)"
"$INSTALLER" verify "${args[@]}" | grep -q 'verified' || fail "verify after install"
grep -q "runtime_path = \"$D/bin/containerd-shim-wasmtime-v1\"" "$D/config.toml" || fail "runtime_path"
grep -q "runtime_path = \"$D/bin/containerd-shim-wasmtime-isolated-v1\"" "$D/config.toml" || fail "isolated runtime_path"
grep -q 'SystemdCgroup = false' "$D/config.toml" || fail "SystemdCgroup"
echo "ok containerd $V: install patched the config, restarted once, handlers verified ($(( (t1 - t0) / 1000000 )) ms)"

# A pod with runtime handler wasmtime and a mixed pod with wasmtime-isolated through the
# patched config and the installed shims, driven over the CRI as the kubelet would (the e2e
# suite's demo client).
for img in pause workloads busybox; do
	"$CTD/ctr" -a "$D/containerd.sock" -n k8s.io images import --all-platforms "$IMAGES/$img.tar" >/dev/null
done
WASMPOD_CONTAINERD_VERSION=$V WASMPOD_CONTAINERD_SOCKET=$D/containerd.sock WASMPOD_CTR=$CTD/ctr \
	WASMPOD_RUN_DIR=$D WASMPOD_CACHE_DIR=$D/cache "$DEMO" >"$D/demo.out" 2>&1 ||
	{ cat "$D/demo.out"; fail "CRI pods with handlers wasmtime and wasmtime-isolated"; }
grep -q "log \[stdout\] hello from wasmpod" "$D/demo.out" || { cat "$D/demo.out"; fail "the pod's log"; }
grep -q "log \[stdout\] hello from a native sidecar" "$D/demo.out" || { cat "$D/demo.out"; fail "the sidecar's log"; }
echo "ok containerd $V: CRI pods with runtime handlers wasmtime and wasmtime-isolated (Wasm and a native sidecar) ran through the installed shims"

"$INSTALLER" install "${args[@]}" --skip-label --verify >"$D/out2" 2>"$D/err2" || { cat "$D/err2"; fail "second install"; }
grep -q '"config_changed": false' "$D/out2" || fail "second install changed the config"
[ "$(restarts)" = 1 ] || fail "second install restarted containerd"
echo "ok containerd $V: second install changed nothing and did not restart"

"$INSTALLER" uninstall "${args[@]}" --skip-label >"$D/out3" 2>"$D/err3" || { cat "$D/err3"; fail "uninstall"; }
cmp "$D/config.orig" "$D/config.toml" || fail "config not restored byte for byte"
[ "$(restarts)" = 2 ] || fail "uninstall did not restart"
[ ! -e "$D/bin" ] || fail "shim left behind"
if "$INSTALLER" verify "${args[@]}" --verify-timeout 2 >/dev/null 2>&1; then fail "handlers still there after uninstall"; fi
echo "ok containerd $V: uninstall restored the config byte for byte and the handlers are gone"
# Another tool adds a runtime after install: uninstall takes out only wasmpod's, and
# containerd starts on what is left (restart.sh fails the uninstall if it does not).
"$INSTALLER" install "${args[@]}" --skip-label --verify >/dev/null 2>"$D/err5" || { cat "$D/err5"; fail "install again"; }
other="
[plugins.$PLUGIN.containerd.runtimes.other]
  runtime_type = \"io.containerd.runc.v2\""
printf '%s\n' "$other" >>"$D/config.toml"
"$INSTALLER" uninstall "${args[@]}" --skip-label >/dev/null 2>"$D/err6" || { cat "$D/err6"; fail "uninstall after another tool's edit"; }
{ cat "$D/config.orig"; printf '%s\n' "$other"; } | cmp - "$D/config.toml" || fail "uninstall did not keep the other tool's runtime, or left wasmpod's"
if "$INSTALLER" verify "${args[@]}" --verify-timeout 2 >/dev/null 2>&1; then fail "handlers still there after the second uninstall"; fi
cp "$D/config.orig" "$D/config.toml" && "$D/restart.sh"
echo "ok containerd $V: uninstall after another tool's edit kept its runtime, took out wasmpod's, and containerd restarted on it"
# A node without a config file: the installer asks containerd (CRI Version) which version to write.
"$INSTALLER" install --host-root / --containerd-config "$D/absent/config.toml" --containerd-address "$D/containerd.sock" \
	--bin-dir "$D/bin2" --state-dir "$D/wasmpod-state2" --shim "$D/shim" --isolated-shim "$D/isolated-shim" --no-restart --skip-label >/dev/null 2>"$D/err4" ||
	{ cat "$D/err4"; fail "install without a config"; }
grep -q "^version = $CV\$" "$D/absent/config.toml" || fail "config version for a missing file"
"$INSTALLER" uninstall --host-root / --bin-dir "$D/bin2" --state-dir "$D/wasmpod-state2" --no-restart --skip-label >/dev/null 2>&1
[ ! -e "$D/absent/config.toml" ] || fail "created config not removed"
echo "ok containerd $V: a missing config is created as version $CV (asked over the CRI) and removed again"
# The DaemonSet's mode, `run`, against a stand-in API server (tests/mock_api.py: there is no
# Kubernetes API server on these machines): install, label only after the CRI check, hold the
# label, and on SIGTERM remove it (and, with --uninstall-on-stop, restore the config).
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 "$ROOT/runtimeclass/tests/mock_api.py" "$PORT" "$D/api.log" &
echo $! >"$D/api.pid"
cleanup_api() { kill "$(cat "$D/api.pid")" 2>/dev/null || true; }
trap 'cleanup_api; cleanup' EXIT
cat >"$D/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: mock, cluster: {server: "http://127.0.0.1:$PORT"}}]
users: [{name: u, user: {token: test}}]
contexts: [{name: c, context: {cluster: mock, user: u}}]
current-context: c
YAML
wait_log() { for _ in $(seq 300); do grep -q "$1" "$D/api.log" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
for mode in keep uninstall; do
	: >"$D/api.log"
	extra=(); [ $mode = uninstall ] && extra=(--uninstall-on-stop)
	KUBECONFIG="$D/kubeconfig" NODE_NAME=node-a "$INSTALLER" run "${args[@]}" --interval 1 "${extra[@]}" 2>"$D/run.err" &
	rp=$!
	wait_log '"wasmpod.dev/wasmtime": "ready"' || { cat "$D/run.err"; fail "run did not label the node"; }
	grep -q '"config_changed"' "$D/run.err" 2>/dev/null || true
	sleep 2.5 # a few check rounds: the label is held, not re-patched
	[ "$(grep -c PATCH "$D/api.log")" = 1 ] || fail "label patched more than once while ready"
	kill -TERM $rp
	wait $rp || { cat "$D/run.err"; fail "run exited non-zero on SIGTERM"; }
	tail -1 "$D/api.log" | grep -q '"wasmpod.dev/wasmtime": null' || fail "label not removed on SIGTERM"
	if [ $mode = keep ]; then
		grep -q 'runtimes.wasmtime' "$D/config.toml" || fail "config should stay for the next installer pod"
		echo "ok containerd $V: run labeled the node after the CRI check, held it, unlabeled on SIGTERM, kept the config"
	else
		cmp "$D/config.orig" "$D/config.toml" || fail "run --uninstall-on-stop did not restore the config"
		echo "ok containerd $V: run --uninstall-on-stop unlabeled the node, then restored the config byte for byte"
	fi
done
echo "8 passed, 0 failed"
