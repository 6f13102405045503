#!/usr/bin/env bash
# The installer against a live containerd (root): starts a private containerd (1.7 or 2.1 from
# the e2e test bed) on its own config, socket and directories, then
#   install  -> config patched, containerd restarted through --restart-command, the handlers
#               verified through the CRI Status call
#   install  -> nothing changes, no restart
#   uninstall-> config restored byte for byte, containerd restarted, the handlers gone.
# Usage: runtimeclass/live-test.sh [1.7|2.1]   (after `e2e/testbed.sh` has fetched containerd)
# Running a CRI pod with handler wasmtime on the patched containerd is the e2e suite's part.
set -euo pipefail
V=${1:-2.1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BED=${WASMPOD_TESTBED:-/var/tmp/wasmpod-testbed}
CTD=$BED/containerd-$V/usr/bin
INSTALLER=${WASMPOD_INSTALLER:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/wasmpod-installer}
[ -x "$CTD/containerd" ] || { echo "no containerd $V in $BED: run e2e/testbed.sh first" >&2; exit 1; }
[ -x "$INSTALLER" ] || { echo "build the installer first: cargo build -p wasmpod-installer" >&2; exit 1; }
case $V in 1.7) CV=2 PLUGIN='"io.containerd.grpc.v1.cri"' ;; 2.1) CV=3 PLUGIN="'io.containerd.cri.v1.runtime'" ;; *) echo "version 1.7 or 2.1" >&2; exit 2 ;; esac

D=$(mktemp -d /var/tmp/wasmpod-live.XXXXXX)
cleanup() {
	[ -f "$D/pid" ] && kill "$(cat "$D/pid")" 2>/dev/null && sleep 0.5
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

  [plugins.$PLUGIN.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.$PLUGIN.containerd.runtimes.runc.options]
      SystemdCgroup = false
TOML
cp "$D/config.toml" "$D/config.orig"

cat >"$D/restart.sh" <<SH
#!/bin/sh
# what systemctl restart would do: stop, start, wait for the socket
echo restart >> "$D/restarts"
if [ -f "$D/pid" ]; then kill \$(cat "$D/pid"); while kill -0 \$(cat "$D/pid") 2>/dev/null; do sleep 0.05; done; fi
rm -f "$D/containerd.sock"
PATH="$CTD:\$PATH" setsid "$CTD/containerd" --config "$D/config.toml" >>"$D/containerd.log" 2>&1 < /dev/null &
echo \$! > "$D/pid"
for i in \$(seq 200); do [ -S "$D/containerd.sock" ] && exit 0; sleep 0.05; done
echo "containerd did not start" >&2; tail -20 "$D/containerd.log" >&2; exit 1
SH
chmod +x "$D/restart.sh"
"$D/restart.sh" && rm "$D/restarts"

printf '\x7fELF placeholder shim (the CRI Status check does not run it)\n' >"$D/shim"
args=(--host-root / --containerd-config "$D/config.toml" --containerd-address "$D/containerd.sock"
	--bin-dir "$D/bin" --state-dir "$D/wasmpod-state" --shim "$D/shim"
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
grep -q 'SystemdCgroup = false' "$D/config.toml" || fail "SystemdCgroup"
echo "ok containerd $V: install patched the config, restarted once, handlers verified ($(( (t1 - t0) / 1000000 )) ms)"

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
# A node without a config file: the installer asks containerd (CRI Version) which version to write.
"$INSTALLER" install --host-root / --containerd-config "$D/absent/config.toml" --containerd-address "$D/containerd.sock" \
	--bin-dir "$D/bin2" --state-dir "$D/wasmpod-state2" --shim "$D/shim" --no-restart --skip-label >/dev/null 2>"$D/err4" ||
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
echo "6 passed, 0 failed"
