//! What operators rely on once Wasm pods run, through the CRI on both hosts: pinned modules
//! (the pod says which module a container must run, by its digest), modules from volumes
//! and image volumes, and `kubectl exec` into a Wasm container.

use std::path::Path;

use k8s_cri::v1::ContainerState;
use sha2::{Digest, Sha256};
use wasmpod_e2e::*;

const HELLO: &str = "hello from wasmpod";

fn digest_of_hello() -> String {
    let module =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/release/hello.wasm");
    let bytes = std::fs::read(&module).expect("the hello workload is built");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hello(env: &[(&str, &str)]) -> ContainerSpec {
    let mut spec = ContainerSpec::wasm("app", "hello.wasm", &[]);
    spec.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spec
}

/// A pod pins its container's module by the annotation (containerd passes `wasmpod.dev/*`
/// through, as the installer configures it) or by `WASM_MODULE_HASH`: the right digest runs,
/// a wrong one is a StartError naming both digests and where the pin came from, and nothing
/// of the module runs.
async fn pins_hold(handler: &str) {
    let (bed, mut cri) = connect().await;
    let right = digest_of_hello();
    let wrong = "0".repeat(64);
    let key = "wasmpod.dev/module-sha256.app";

    for (annotation, env, ok) in [
        (Some(format!("sha256:{right}")), None, true),
        (None, Some(right.clone()), true),
        (Some(format!("sha256:{wrong}")), None, false),
        (None, Some(format!("sha256:{wrong}")), false),
    ] {
        let annotations: Vec<(&str, &str)> = annotation.iter().map(|a| (key, a.as_str())).collect();
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|e| ("WASM_MODULE_HASH", e.as_str()))
            .collect();
        let pod = cri
            .run_pod_annotated(&bed, "pinned", handler, &annotations)
            .await
            .expect("RunPodSandbox");
        let id = cri
            .create(&pod, hello(&env))
            .await
            .expect("CreateContainer");
        let started = cri.start(&id).await;
        if ok {
            started.expect("a module with the pinned digest starts");
            let st = cri.wait_exited(&id, EXIT_WAIT).await.unwrap();
            assert_eq!((st.exit_code, pod.log_text("app").as_str()), (0, HELLO));
        } else {
            assert!(
                started.is_err(),
                "a module that is not the pinned one must not start"
            );
            let status = cri.status(&id).await.unwrap();
            assert_eq!(status.reason, "StartError", "{status:?}");
            let origin = if annotations.is_empty() {
                "environment variable WASM_MODULE_HASH".to_string()
            } else {
                format!("annotation {key}")
            };
            for part in [
                format!("its digest is sha256:{right}"),
                format!("the pin is sha256:{wrong}"),
                origin,
            ] {
                assert!(status.message.contains(&part), "{part}: {}", status.message);
            }
            assert_eq!(pod.log_text("app"), "", "nothing of the module ran");
        }
        cri.remove_pod(&pod).await.unwrap();
    }
}

#[tokio::test]
async fn a_pinned_module_runs_and_any_other_is_refused() {
    pins_hold(HANDLER).await;
}

#[tokio::test]
async fn a_pinned_module_runs_and_any_other_is_refused_isolated() {
    pins_hold(ISOLATED).await;
}

/// A pin that is no digest is a clear error, not ignored.
#[tokio::test]
async fn a_malformed_pin_is_a_start_error() {
    let message = start_error("pin-bad", hello(&[("WASM_MODULE_HASH", "latest")])).await;
    assert!(
        message.contains("WASM_MODULE_HASH is latest, not a SHA-256 digest"),
        "{message}"
    );
}

fn on_volume(image: &str, module: &str) -> ContainerSpec {
    ContainerSpec {
        name: "app".into(),
        image: image.into(),
        command: vec![module.into()],
        ..Default::default()
    }
}

/// A command that names a module on a volume runs it, looked up in the volume as in the image
/// (links on it are the container's paths): here from an image with no Wasm at all.
async fn a_module_on_a_volume_runs(handler: &str) {
    let (bed, mut cri) = connect().await;
    let tools = bed.scratch(&format!("tools-{handler}"));
    std::fs::create_dir_all(tools.join("bin")).unwrap();
    let module =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/release/hello.wasm");
    std::fs::copy(&module, tools.join("bin/hello.wasm")).unwrap();
    std::os::unix::fs::symlink("/tools/bin/hello.wasm", tools.join("hello.wasm")).unwrap();
    let pod = cri.run_pod(&bed, "volume", handler).await.unwrap();
    let mut spec = on_volume(BUSYBOX, "/tools/hello.wasm");
    spec.mounts = vec![(tools.clone(), "/tools".into(), true)];
    let id = cri.run(&pod, spec).await.expect("create+start");
    let st = cri.wait_exited(&id, EXIT_WAIT).await.unwrap();
    assert_eq!((st.exit_code, pod.log_text("app").as_str()), (0, HELLO));
    cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn a_module_on_a_volume_runs_in_a_pod_host() {
    a_module_on_a_volume_runs(HANDLER).await;
}

#[tokio::test]
async fn a_module_on_a_volume_runs_isolated() {
    a_module_on_a_volume_runs(ISOLATED).await;
}

/// An image volume (`volumes[].image`, containerd 2.1 on) mounts an image into the pod; a
/// command inside it runs as from the container's own image.
#[tokio::test]
async fn a_module_in_an_image_volume_runs() {
    let (bed, mut cri) = connect().await;
    if bed.version.starts_with("1.") {
        eprintln!("containerd {} has no image volumes (2.1 on)", bed.version);
        return;
    }
    for handler in [HANDLER, ISOLATED] {
        let pod = cri.run_pod(&bed, "image-volume", handler).await.unwrap();
        let mut spec = on_volume(BUSYBOX, "/tools/hello.wasm");
        spec.image_mounts = vec![(WORKLOADS.into(), "/tools".into())];
        let id = cri.run(&pod, spec).await.expect("create+start");
        let st = cri.wait_exited(&id, EXIT_WAIT).await.unwrap();
        assert_eq!(
            (st.exit_code, pod.log_text("app").as_str()),
            (0, HELLO),
            "{handler}"
        );
        cri.remove_pod(&pod).await.unwrap();
    }
}

/// `kubectl exec` into a running Wasm container (pod host): another Wasm program of the
/// container's image runs with the exec's arguments and environment, sees the container's
/// files, and its exit code comes back; the container runs on. A native program or a path
/// that is not there is a clear error, and the container is not harmed.
#[tokio::test]
async fn kubectl_exec_runs_a_wasm_program_of_the_container() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "exec", HANDLER).await.unwrap();
    let id = cri
        .run(&pod, ContainerSpec::wasm("app", "sleep.wasm", &["300"]))
        .await
        .expect("create+start");

    let (code, out, _) = cri
        .exec_sync(&id, &["/echo.wasm", "one", "two"], 30)
        .await
        .expect("ExecSync echo");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("args: one two"), "{out}");
    let (code, out, _) = cri
        .exec_sync(&id, &["/readfile.wasm", "/etc/greeting.txt"], 30)
        .await
        .expect("ExecSync readfile");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hello from a read-only file"), "{out}");
    let (code, out, _) = cri
        .exec_sync(&id, &["/exit.wasm", "7"], 30)
        .await
        .expect("ExecSync exit");
    assert_eq!((code, out.trim()), (7, "exiting with 7"));

    let e = cri
        .exec_sync(&id, &["/native"], 30)
        .await
        .expect_err("a native program is not run");
    assert!(
        e.to_string().contains(
            "cannot exec /native: it is not a WebAssembly module (it is a native ELF executable)"
        ),
        "{e}"
    );
    let e = cri
        .exec_sync(&id, &["/tools/inspect.wasm"], 30)
        .await
        .expect_err("a missing program is an error");
    assert!(
        e.to_string()
            .contains("cannot exec /tools/inspect.wasm: it does not exist in the container"),
        "{e}"
    );
    let status = cri.status(&id).await.unwrap();
    assert_eq!(
        status.state,
        ContainerState::ContainerRunning as i32,
        "the container runs on: {status:?}"
    );
    cri.remove_pod(&pod).await.unwrap();
}

/// An exec that outlives ExecSync's timeout is stopped, and the container runs on.
#[tokio::test]
async fn an_exec_past_its_timeout_is_stopped() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "exec-timeout", HANDLER).await.unwrap();
    let id = cri
        .run(&pod, ContainerSpec::wasm("app", "sleep.wasm", &["300"]))
        .await
        .expect("create+start");
    let started = std::time::Instant::now();
    let result = cri.exec_sync(&id, &["/sleep.wasm", "120"], 2).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "ExecSync returned after {:?}: {result:?}",
        started.elapsed()
    );
    assert!(result.is_err(), "{result:?}");
    let (code, out, _) = cri
        .exec_sync(&id, &["/echo.wasm", "after"], 30)
        .await
        .expect("the container takes execs again");
    assert_eq!(code, 0);
    assert!(out.contains("args: after"), "{out}");
    cri.remove_pod(&pod).await.unwrap();
}

/// The test's OTLP receiver (`e2e/otlp_receiver.py`, checking every body against
/// OpenTelemetry's protobuf definitions), stopped when dropped.
struct Receiver {
    child: std::process::Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Receiver {
    fn start(bed: &Bed) -> Receiver {
        let python = std::env::var("WASMPOD_OTLP_PYTHON").expect("the test bed's env");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        // A directory of the test's own (scratch is made fresh for each caller).
        let out = bed.scratch("otlp").join("spans.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp_receiver.py");
        let mut child = std::process::Command::new(python)
            .arg(script)
            .args(["--port", &port.to_string(), "--out"])
            .arg(&out)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the OTLP receiver starts");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "listening");
        Receiver { child, port, out }
    }

    fn spans(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node's OTLP settings file, as the operator (or the installer) writes it; removed again
/// when dropped, also when the test fails.
struct NodeSettings;

impl NodeSettings {
    const PATH: &str = "/etc/wasmpod/otel.env";

    fn write(text: &str) -> NodeSettings {
        assert!(
            !Path::new(Self::PATH).exists(),
            "{} exists already: not the test's to replace",
            Self::PATH
        );
        std::fs::create_dir_all("/etc/wasmpod").unwrap();
        std::fs::write(Self::PATH, text).unwrap();
        NodeSettings
    }
}

impl Drop for NodeSettings {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Self::PATH);
        let _ = std::fs::remove_dir("/etc/wasmpod");
    }
}

/// With an OTLP endpoint configured for the node, a pod's lifecycle calls (create, start,
/// kill, delete), its container's compile (module, bytes, cache hit or miss) and its exit are
/// spans on a real OTLP receiver, each naming the container and the pod.
#[tokio::test]
async fn lifecycle_calls_and_compiles_are_exported_as_otlp_spans() {
    let (bed, mut cri) = connect().await;
    let receiver = Receiver::start(&bed);
    let _settings = NodeSettings::write(&format!(
        "# written by e2e/tests/operating.rs\nOTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{}\n\
         OTEL_RESOURCE_ATTRIBUTES=k8s.node.name=e2e-node\n",
        receiver.port
    ));
    let pod = cri.run_pod(&bed, "traced", HANDLER).await.unwrap();
    let id = cri
        .run(&pod, ContainerSpec::wasm("app", "hello.wasm", &[]))
        .await
        .expect("create+start");
    let st = cri.wait_exited(&id, EXIT_WAIT).await.unwrap();
    assert_eq!(st.exit_code, 0);
    cri.remove_pod(&pod).await.unwrap();
    // The shim sends what is left when the pod is gone.
    let ours = |s: &serde_json::Value| s["resource"]["wasmpod.sandbox.id"] == pod.id.as_str();
    let want = ["create", "compile", "start", "exit", "delete"];
    let complete = eventually(std::time::Duration::from_secs(20), || {
        let spans = receiver.spans();
        want.iter().all(|name| {
            spans
                .iter()
                .any(|s| ours(s) && s["name"] == *name && s["attributes"]["container.id"] == id)
        })
    })
    .await;
    let spans: Vec<_> = receiver.spans().into_iter().filter(ours).collect();
    assert!(complete, "spans of {id}: {spans:#?}");
    let app: Vec<_> = spans
        .iter()
        .filter(|s| s["attributes"]["container.id"] == id)
        .collect();
    let span = |name: &str| *app.iter().find(|s| s["name"] == name).unwrap();
    let compile = span("compile");
    assert_eq!(compile["attributes"]["module"], "/hello.wasm", "{compile}");
    let bytes: u64 = compile["attributes"]["bytes"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes > 1000, "{compile}");
    assert!(
        ["Hit", "Compiled"].contains(&compile["attributes"]["cache"].as_str().unwrap()),
        "{compile}"
    );
    // The compile is part of the create that asked for it.
    let create = span("create");
    assert_eq!(compile["traceId"], create["traceId"]);
    assert_eq!(compile["parentSpanId"], create["spanId"]);
    assert_eq!(span("exit")["attributes"]["status"], "0");
    for s in &app {
        assert_eq!(s["resource"]["k8s.pod.name"], "traced", "{s}");
        assert_eq!(s["resource"]["k8s.namespace.name"], "wasmpod-e2e", "{s}");
        assert_eq!(s["resource"]["k8s.node.name"], "e2e-node", "{s}");
        assert_eq!(s["resource"]["service.name"], "wasmpod-shim", "{s}");
        assert_eq!(s["status"]["code"], 1, "{s}");
        assert!(s["end"].as_u64() >= s["start"].as_u64(), "{s}");
    }
    // The sandbox's calls are there too.
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "kill" && s["attributes"]["container.id"] == pod.id.as_str()),
        "{spans:#?}"
    );
}
