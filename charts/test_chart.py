"""Chart tests with the real Helm v4 engine (helm-python-sdk): lint, render with default and
non-default values, check each rendered object parses into its k8s-openapi type unchanged
(`wasmpod-installer check-manifests`), and check deploy/ is the chart rendered with defaults.
No cluster is needed (nor available on these machines)."""

import os
import pathlib
import subprocess

import helm_python as helm
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "wasmpod"
DEPLOY = ROOT / "deploy" / "wasmpod.yaml"
INSTALLER = os.environ.get("WASMPOD_INSTALLER", str(ROOT / "target/debug/wasmpod-installer"))

CUSTOM = {
    "image": {"repository": "registry.example.com/wasmpod/installer",
              "digest": "sha256:" + "ab" * 32, "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "runtimeClasses": {
        "isolated": {"enabled": False},
        "wasmtime": {"overhead": {"cpu": "20m", "memory": "4Mi"}},
        "tolerations": [{"key": "wasm", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "installer": {
        "binDir": "/usr/local/wasmpod/bin",
        "containerdConfig": "/etc/containerd/custom.toml",
        "configVersion": "3",
        "containerdAddress": "/run/custom/containerd.sock",
        "uninstallOnStop": True,
        "takeOverHandlers": True,
        "architectures": ["amd64"],
        "nodeSelector": {"pool": "wasm"},
        "tolerations": [{"operator": "Exists"}],
        "affinity": {"nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a"]}]}}],
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["wasm"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}},
        "priorityClassName": "",
    },
    "serviceAccount": {"name": "wasm-installer"},
    "rbac": {"nodeAdmissionPolicy": "always"},
    "test": {"enabled": False},
}


def render(values=None, name="wasmpod", namespace="wasmpod"):
    return helm.Chart.load(str(CHART)).render(values=values or {}, name=name, namespace=namespace)


def objects(files):
    out = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        out += [d for d in yaml.safe_load_all(text) if d]
    return out


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def check_manifests(tmp_path, files):
    """Writes the rendered files and has the Rust checker parse each object."""
    paths = []
    for i, (path, text) in enumerate(sorted(files.items())):
        if path.endswith("NOTES.txt"):
            continue
        p = tmp_path / f"{i}-{pathlib.Path(path).name}"
        p.write_text(text)
        paths.append(str(p))
        for o in yaml.safe_load_all(text):
            if o and o["kind"] == "ConfigMap":  # the helm test's embedded Wasm pod
                for key, embedded in o.get("data", {}).items():
                    if key.endswith(".yaml"):
                        e = tmp_path / f"{i}-embedded-{key}"
                        e.write_text(embedded)
                        paths.append(str(e))
    r = subprocess.run([INSTALLER, "check-manifests", *paths], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("values", [None, CUSTOM], ids=["default", "custom"])
def test_lint_is_clean(values):
    r = helm.lint(str(CHART), values=values, strict=True)
    assert r["errors"] == []
    assert [m for m in r["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("bad", [
    {"installer": {"binDir": "relative/bin"}},
    {"installer": {"configVersion": "4"}},
    {"rbac": {"nodeAdmissionPolicy": "yes"}},
    {"runtimeClasses": {"tolerations": [{"effect": "Sometimes"}]}},
    {"typo": True},
])
def test_schema_rejects_bad_values(bad):
    with pytest.raises(helm.HelmError):
        render(bad)


def test_renders_as_a_subchart():
    """A parent chart passes `global` to every subchart, and usually `enabled` (its dependency
    condition `wasmpod.enabled`): the schema must let both through."""
    files = render({"global": {"imageRegistry": "registry.example.com"}, "enabled": True})
    assert by_kind(objects(files), "DaemonSet")
    r = helm.lint(str(CHART), values={"global": {}, "enabled": False}, strict=True)
    assert r["errors"] == []


def test_notes_say_the_default_image_is_an_example():
    notes = next(t for p, t in render().items() if p.endswith("NOTES.txt"))
    assert "wasmpod/installer is an example name" in notes, notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes, notes
    notes = next(t for p, t in render(CUSTOM).items() if p.endswith("NOTES.txt"))
    assert "example name" not in notes, notes


def test_default_render(tmp_path):
    files = render()
    out = check_manifests(tmp_path, files)
    objs = objects(files)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(["RuntimeClass", "RuntimeClass", "DaemonSet", "ServiceAccount",
                            "ClusterRole", "ClusterRoleBinding", "Pod"]), kinds
    assert out.count("ok ") == len(objs)

    rcs = {rc["metadata"]["name"]: rc for rc in by_kind(objs, "RuntimeClass")}
    assert set(rcs) == {"wasmtime", "wasmtime-isolated"}
    for name, rc in rcs.items():
        assert rc["handler"] == name
        assert rc["scheduling"]["nodeSelector"] == {"wasmpod.dev/wasmtime": "ready"}
        assert "tolerations" not in rc["scheduling"]
    assert rcs["wasmtime"]["overhead"]["podFixed"] == {"cpu": "5m", "memory": "4Mi"}
    assert rcs["wasmtime-isolated"]["overhead"]["podFixed"]["memory"] != "4Mi"

    (ds,) = by_kind(objs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    (c,) = pod["containers"]
    assert c["securityContext"] == {"privileged": True}
    assert c["args"][0] == "run" and "--host-root=/host" in c["args"]
    assert "--handlers=wasmtime,wasmtime-isolated" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["WASMPOD_UNINSTALL_ON_STOP"]["value"] == "false"
    assert pod["volumes"] == [{"name": "host", "hostPath": {"path": "/", "type": "Directory"}}]
    assert c["volumeMounts"][0]["mountPath"] == "/host"
    assert c["image"] == "wasmpod/installer:0.1.0"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["amd64", "arm64"]
    assert "tolerations" not in pod

    (role,) = by_kind(objs, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    # `auto`: offline, Helm's capabilities do not list the admission policy API, so it is left
    # out (against an API server that serves it, `helm install` renders it: test-kind).
    assert not by_kind(objs, "ValidatingAdmissionPolicy")
    assert "--take-over-handlers" not in c["args"]
    (binding,) = by_kind(objs, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"] == "wasmpod-installer"

    # helm test: by default the Wasm pod itself is the hook (no kubectl image needed)
    (test_pod,) = [p for p in by_kind(objs, "Pod") if p["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    assert test_pod["spec"]["runtimeClassName"] == "wasmtime"
    assert test_pod["spec"]["restartPolicy"] == "Never"
    assert test_pod["spec"]["containers"][0]["command"] == ["/hello.wasm"]
    assert not by_kind(objs, "ConfigMap")


def test_helm_test_checks_the_log_with_a_kubectl_image(tmp_path):
    files = render({"test": {"kubectlImage": "registry.example.com/tools/kubectl-sh:1.33"}})
    check_manifests(tmp_path, files)
    objs = objects(files)
    (checker,) = [p for p in by_kind(objs, "Pod") if p["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    assert checker["spec"]["containers"][0]["image"] == "registry.example.com/tools/kubectl-sh:1.33"
    (cm,) = by_kind(objs, "ConfigMap")
    wasm = yaml.safe_load(cm["data"]["wasm-pod.yaml"])
    assert wasm["spec"]["runtimeClassName"] == "wasmtime"
    assert wasm["spec"]["containers"][0]["command"] == ["/hello.wasm"]
    assert '"hello from wasmpod"' in cm["data"]["check.sh"]


def test_custom_render(tmp_path):
    files = render(CUSTOM, name="edge", namespace="wasm-system")
    check_manifests(tmp_path, files)
    objs = objects(files)
    rcs = by_kind(objs, "RuntimeClass")
    assert [rc["metadata"]["name"] for rc in rcs] == ["wasmtime"]
    assert rcs[0]["scheduling"]["tolerations"] == CUSTOM["runtimeClasses"]["tolerations"]
    assert rcs[0]["overhead"]["podFixed"] == {"cpu": "20m", "memory": "4Mi"}
    (ds,) = by_kind(objs, "DaemonSet")
    assert ds["metadata"]["name"] == "edge-wasmpod-installer"
    assert ds["metadata"]["namespace"] == "wasm-system"
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example.com/wasmpod/installer@sha256:" + "ab" * 32
    assert c["imagePullPolicy"] == "Always"
    for arg in ["--handlers=wasmtime", "--bin-dir=/usr/local/wasmpod/bin", "--take-over-handlers",
                "--containerd-config=/etc/containerd/custom.toml", "--config-version=3",
                "--containerd-address=/host/run/custom/containerd.sock"]:
        assert arg in c["args"], c["args"]
    assert {e["name"]: e.get("value") for e in c["env"]}["WASMPOD_UNINSTALL_ON_STOP"] == "true"
    # Helm merges maps with the defaults: the os selector stays unless set to null
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "wasm"}
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert "priorityClassName" not in pod
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    na = pod["affinity"]["nodeAffinity"]
    arch = {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
    assert na["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["wasm"]}, arch]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}],
         "matchExpressions": [arch]}]
    assert na["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 1
    assert pod["serviceAccountName"] == "wasm-installer"
    (binding,) = by_kind(objs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "wasm-installer",
                                    "namespace": "wasm-system"}]
    assert not [o for o in objs if o["metadata"].get("annotations", {}).get("helm.sh/hook")]
    (policy,) = by_kind(objs, "ValidatingAdmissionPolicy")
    assert policy["spec"]["matchConditions"][0]["expression"] == \
        "request.userInfo.username == 'system:serviceaccount:wasm-system:wasm-installer'"


def test_node_admission_policy(tmp_path):
    """The policy that keeps the installer to its own node's label: keyed on the node name in a
    pod-bound token's user info, matching only the installer's service account, denying."""
    files = render({"rbac": {"nodeAdmissionPolicy": "always"}})
    check_manifests(tmp_path, files)
    objs = objects(files)
    (policy,) = by_kind(objs, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(objs, "ValidatingAdmissionPolicyBinding")
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["operations"] == ["UPDATE"] and "nodes" in rule["resources"]
    assert spec["matchConditions"][0]["expression"] == \
        "request.userInfo.username == 'system:serviceaccount:wasmpod:wasmpod-installer'"
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert "'authentication.kubernetes.io/node-name'" in variables["tokenNode"]
    assert variables["key"] == "'wasmpod.dev/wasmtime'"
    checks = " ".join(v["expression"] for v in spec["validations"])
    assert "variables.tokenNode == [object.metadata.name]" in checks
    for part in ("oldObject.metadata", "object.spec == oldObject.spec", "annotations"):
        assert part in checks, part
    for values in ({"rbac": {"nodeAdmissionPolicy": "never"}},
                   {"rbac": {"create": False, "nodeAdmissionPolicy": "always"}}):
        assert not by_kind(objects(render(values)), "ValidatingAdmissionPolicy"), values


def test_installer_disabled_keeps_runtimeclasses():
    objs = objects(render({"installer": {"enabled": False}, "test": {"enabled": False}}))
    assert sorted(o["kind"] for o in objs) == ["ClusterRole", "ClusterRoleBinding",
                                                "RuntimeClass", "RuntimeClass", "ServiceAccount"]


def deploy_text():
    # With the admission policy: offline, `auto` cannot see the API server, and every
    # supported Kubernetes (1.30+) serves admissionregistration.k8s.io/v1.
    files = render({"rbac": {"nodeAdmissionPolicy": "always"}})
    parts = [text.strip() + "\n" for path, text in sorted(files.items())
             if "/tests/" not in path and not path.endswith("NOTES.txt") and text.strip()]
    header = ("# wasmpod: charts/wasmpod rendered with default values (and rbac.nodeAdmissionPolicy=always),\n"
              "# release `wasmpod` in namespace `wasmpod`. Generated by `UPDATE=1 charts/test.sh`; the chart\n"
              "# tests fail when it drifts. Needs Kubernetes 1.30+ (ValidatingAdmissionPolicy).\n"
              "#   kubectl create namespace wasmpod && kubectl apply -f deploy/wasmpod.yaml\n")
    return header + "".join(p if p.startswith("---") else "---\n" + p for p in parts)


def test_deploy_matches_the_chart(tmp_path):
    want = deploy_text()
    if os.environ.get("UPDATE") == "1":
        DEPLOY.write_text(want)
    assert DEPLOY.read_text() == want, "deploy/wasmpod.yaml drifted from the chart: run UPDATE=1 charts/test.sh"
    check_manifests(tmp_path, {"deploy/wasmpod.yaml": want})


def test_deploy_examples_parse():
    examples = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    r = subprocess.run([INSTALLER, "check-manifests", *map(str, examples)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    objs = [o for p in examples for o in yaml.safe_load_all(p.read_text()) if o]
    assert {o["kind"] for o in objs} >= {"Job", "Deployment", "Pod"}
    for o in objs:
        spec = o["spec"] if o["kind"] == "Pod" else o["spec"]["template"]["spec"]
        assert spec["runtimeClassName"] in ("wasmtime", "wasmtime-isolated"), o["metadata"]["name"]


def test_runtimeclass_subcommand_agrees_with_the_chart():
    r = subprocess.run([INSTALLER, "runtimeclass", "--overhead-cpu", "5m", "--overhead-memory", "4Mi",
                        "--handlers", "wasmtime"], capture_output=True, text=True, check=True)
    (cli,) = [d for d in yaml.safe_load_all(r.stdout) if d]
    (chart,) = [rc for rc in by_kind(objects(render()), "RuntimeClass") if rc["metadata"]["name"] == "wasmtime"]
    for key in ("apiVersion", "kind", "handler", "scheduling", "overhead"):
        assert cli[key] == chart[key], key


def test_every_value_is_documented_and_typed():
    """Each key of values.yaml that the schema describes has a comment right above it, and the
    schema describes every key (down to free-form maps such as resources)."""
    import json
    import re
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack = []  # (indent, key)
    seen = set()
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [m.group(2)]
        stack.append((indent, m.group(2)))
        node = schema
        for k in path[:-1]:
            node = node.get("properties", {}).get(k, {})
        if "properties" not in node:
            continue  # inside a free-form value (resources, updateStrategy, ...)
        assert path[-1] in node["properties"], f"values.yaml {'.'.join(path)} is not in the schema"
        assert node["properties"][path[-1]].get("description"), f"{'.'.join(path)}: no description"
        prev = next(l for l in reversed(lines[:i]) if l.strip())
        assert prev.strip().startswith("#"), f"values.yaml {'.'.join(path)} has no comment"
        seen.add(".".join(path))

    def keys(node, prefix=""):
        for k, v in node.get("properties", {}).items():
            yield prefix + k
            yield from keys(v, prefix + k + ".")
    missing = set(keys(schema)) - seen
    # keys the schema allows but values.yaml leaves out on purpose: what a parent chart passes
    # when this one is its subchart
    assert missing == {"global", "enabled"}, f"in the schema but not in values.yaml: {sorted(missing)}"
