#!/usr/bin/env bash
# Static checks for the kind test and the repository's scripts, for machines without Docker or
# a cluster: bash -n and shellcheck on every tracked script, YAML parse of the kind config,
# the workloads and the workflows, and run.sh --dry-run printing the commands it would run.
# Ends with "N passed, M failed"; exits non-zero on any failure.
set -uo pipefail # no -e: every check runs and is counted

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
# PyYAML from the chart tests' virtualenv (charts/test.sh creates it), else the system's.
PY=${WASMPOD_VENV:-/var/tmp/wasmpod-venv}/bin/python
[ -x "$PY" ] || PY=python3
passed=0
failed=0

# check NAME CMD...: run one check, print its result and, on failure, its output.
check() {
	local name=$1 outp
	shift
	if outp=$("$@" 2>&1); then
		passed=$((passed + 1))
		printf 'ok   %s\n' "$name"
	else
		failed=$((failed + 1))
		printf 'FAIL %s\n' "$name"
		printf '%s\n' "$outp" | sed 's/^/     /'
	fi
}

# yaml_ok FILE: every document parses (PyYAML); the kind test's files must not be empty.
yaml_ok() {
	"$PY" -c '
import sys, yaml
with open(sys.argv[1]) as f:
    docs = [d for d in yaml.safe_load_all(f) if d is not None]
if not docs:
    sys.exit(sys.argv[1] + ": no YAML documents")
for d in docs:
    if not isinstance(d, dict):
        sys.exit(sys.argv[1] + ": a document is not a mapping")
' "$1"
}

# k8s_ok FILE: every document names apiVersion, kind and metadata.name.
k8s_ok() {
	"$PY" -c '
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d is None:
        continue
    missing = [k for k in ("apiVersion", "kind") if k not in d]
    if "name" not in (d.get("metadata") or {}):
        missing.append("metadata.name")
    if missing:
        sys.exit("%s: %s %s lacks %s" % (sys.argv[1], d.get("kind"), (d.get("metadata") or {}).get("name"), missing))
' "$1"
}

# workflow_ok FILE: a GitHub Actions workflow with "on" and jobs that have steps.
workflow_ok() {
	"$PY" -c '
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
# YAML 1.1 reads the bare key "on" as True.
if "on" not in d and True not in d:
    sys.exit(sys.argv[1] + ": no on:")
jobs = d.get("jobs") or {}
if not jobs:
    sys.exit(sys.argv[1] + ": no jobs")
for name, job in jobs.items():
    if not job.get("runs-on") or not job.get("steps"):
        sys.exit("%s: job %s needs runs-on and steps" % (sys.argv[1], name))
' "$1"
}

# workflow_pinned FILE: every action is pinned by a full commit, every downloaded binary is
# checked against a sum written in the workflow (a .sha256 file fetched from the binary's own
# origin proves nothing if that origin is compromised), and node images carry a digest.
workflow_pinned() {
	"$PY" -c '
import re, sys, yaml
text = open(sys.argv[1]).read()
bad = []
for m in re.finditer(r"uses:\s*(\S+)", text):
    if not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", m.group(1)):
        bad.append("action not pinned by commit: " + m.group(1))
for m in re.finditer(r"https://\S+\.sha256(sum)?\b", text):
    bad.append("checksum fetched at run time: " + m.group(0))
for m in re.finditer(r"kindest/node:[^\s\"]+", text):
    if "@sha256:" not in m.group(0):
        bad.append("node image without a digest: " + m.group(0))
if bad:
    sys.exit("\n".join(sys.argv[1:2] + bad))
' "$1"
}

# registry_pinned: run.sh's registry image carries a digest.
registry_pinned() {
	grep -Eq '^REGISTRY_IMAGE=[^ ]+@sha256:[0-9a-f]{64}$' test-kind/run.sh
}

# same_node_image: run.sh's default KIND_NODE_IMAGE is the image in kind-config.yaml.
same_node_image() {
	local cfg rs
	cfg=$("$PY" -c '
import sys, yaml
print("\n".join(sorted({n["image"] for n in yaml.safe_load(open(sys.argv[1]))["nodes"]})))
' test-kind/kind-config.yaml) || return 1
	# shellcheck disable=SC2016 # a literal ${...} in run.sh is what is matched
	rs=$(sed -n 's/^KIND_NODE_IMAGE=\${KIND_NODE_IMAGE:-\(.*\)}$/\1/p' test-kind/run.sh)
	if [ -z "$rs" ] || [ "$cfg" != "$rs" ]; then
		echo "kind-config.yaml: '$cfg', run.sh: '$rs'"
		return 1
	fi
	case "$rs" in *@sha256:*) ;; *) echo "node image not pinned by digest: $rs"; return 1 ;; esac
}

# dry_run: run.sh --dry-run exits 0 and prints the commands that matter, in order.
dry_run() {
	local outp
	outp=$(env -u KIND_NODE_IMAGE test-kind/run.sh --dry-run 2>&1) || { echo "$outp"; return 1; }
	local want=(
		"docker build -f runtimeclass/Dockerfile"
		"+ python3 e2e/images/push.py"
		"+ kind create cluster --name wasmpod"
		"+ docker network connect kind"
		"+ kind load docker-image"
		"+ helm install wasmpod charts/wasmpod"
		"+ kubectl wait --for=jsonpath="
		"+ as_installer label node wasmpod-worker wasmpod.dev/other=x"
		"+ as_installer label node wasmpod-dummy-node wasmpod.dev/wasmtime=ready"
		"+ kubectl -n wasmpod-test wait --for=condition=complete job/wasm-hello"
		"+ kubectl -n wasmpod-test wait --for=condition=failed job/wasm-exit"
		"+ kubectl -n wasmpod-test rollout restart deployment/wasm-sleep"
		"OOMKilled"
		"+ helm test wasmpod"
		"+ helm uninstall wasmpod"
		"+ kind delete cluster --name wasmpod"
	)
	local w rest=$outp
	for w in "${want[@]}"; do
		# each expected line after the previous one: the order is part of the flow.
		case "$rest" in
		*"$w"*) rest=${rest#*"$w"} ;;
		*) echo "run.sh --dry-run lacks (in order): $w"; return 1 ;;
		esac
	done
	# --dry-run must not run anything: no kind/docker state would be touched.
	if grep -q '^ok: ' <<<"$outp"; then echo "dry run claimed results"; return 1; fi
}

command -v shellcheck >/dev/null || echo "note: shellcheck not installed (apt-get install shellcheck); its checks fail"
"$PY" -c 'import yaml' 2>/dev/null || echo "note: PyYAML missing (run charts/test.sh once, or pip install pyyaml); YAML checks fail"

# Every shellcheck severity for test-kind/ (ours); the other scripts fail only on warnings
# and errors: their info-level notes (SC2015 "A && B || C", SC2012 "ls | head" in
# e2e/testbed.sh and runtimeclass/live-test.sh) are intended there and left to their owners.
while IFS= read -r f; do
	check "bash -n $f" bash -n "$f"
	case $f in
	test-kind/*) check "shellcheck $f" shellcheck -x "$f" ;;
	*) check "shellcheck -S warning $f" shellcheck -x -S warning "$f" ;;
	esac
done < <(git ls-files '*.sh'; git ls-files --others --exclude-standard '*.sh')

for f in test-kind/*.yaml test-kind/workloads/*.yaml; do
	check "yaml $f" yaml_ok "$f"
done
for f in test-kind/workloads/*.yaml; do
	check "k8s objects $f" k8s_ok "$f"
done
for f in .github/workflows/*.yml; do
	[ -e "$f" ] || continue
	check "yaml $f" yaml_ok "$f"
	check "workflow $f" workflow_ok "$f"
	check "workflow $f pins actions, sums and images" workflow_pinned "$f"
done
check "run.sh pins the registry image by digest" registry_pinned
check "kind node image pinned, same in kind-config.yaml and run.sh" same_node_image
check "run.sh --dry-run" dry_run

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
