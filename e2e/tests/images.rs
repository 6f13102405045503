//! Every way Wasm ships in OCI images, pulled as the kubelet pulls (CRI PullImage) from the
//! test registry that e2e/testbed.sh starts and fills, then run under the `wasmtime` handler.
//! Bad images must fail with a message in the container status and leave nothing behind.

use wasmpod_e2e::*;

const HELLO: &str = "hello from wasmpod";

/// Pulls a registry image (CRI PullImage); a container "app" of it.
async fn pulled(image: &str, command: &[&str], args: &[&str]) -> ContainerSpec {
    let (bed, mut cri) = connect().await;
    let reference = bed.image(image);
    cri.pull(&reference).await.expect("PullImage");
    ContainerSpec {
        name: "app".into(),
        image: reference,
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Pulls a registry image and runs it to its exit in a fresh pod.
async fn pull_and_run(image: &str, command: &[&str], args: &[&str]) -> (Pod, i32, String) {
    let spec = pulled(image, command, args).await;
    let (pod, status) = run_to_exit(image, spec).await;
    let log = pod.log_text("app");
    (pod, status.exit_code, log)
}

/// Pulls a registry image whose container must fail to start; the status message.
async fn pull_and_fail(image: &str, command: &[&str]) -> String {
    start_error(image, pulled(image, command, &[]).await).await
}

#[tokio::test]
async fn compat_image_runs_its_entrypoint() {
    let (_, code, log) = pull_and_run("compat", &[], &[]).await;
    assert_eq!((code, log.as_str()), (0, HELLO));
}

#[tokio::test]
async fn wasi_platform_image_runs_its_entrypoint() {
    let (_, code, log) = pull_and_run("wasi", &[], &[]).await;
    assert_eq!((code, log.as_str()), (0, HELLO));
}

/// A multi-platform index holding only `wasi/wasm` has nothing for a linux node's platform:
/// containerd's CRI refuses the pull (both versions; see docs/images.md).
#[tokio::test]
async fn wasi_platform_index_is_refused_by_the_cri_pull() {
    let (bed, mut cri) = connect().await;
    let err = cri
        .pull(&bed.image("wasi-index"))
        .await
        .expect_err("containerd pulls no wasi/wasm-only index for linux");
    let err = format!("{err:#}");
    assert!(err.contains("no match for platform"), "{err}");
}

/// containerd's CRI refuses an artifact container with no command before the shim is asked
/// (an artifact's config has no entrypoint), so artifact pods carry a command; the shim then
/// runs the artifact's module, the command being the guest's argv[0].
#[tokio::test]
async fn artifact_with_a_module_layer_runs() {
    let (_, code, log) = pull_and_run("hello-artifact", &["hello.wasm"], &[]).await;
    assert_eq!((code, log.as_str()), (0, HELLO));
}

#[tokio::test]
async fn artifact_with_a_w3c_module_layer_runs() {
    let (_, code, log) = pull_and_run("w3c-artifact", &["app"], &[]).await;
    assert_eq!((code, log.as_str()), (0, HELLO));
}

#[tokio::test]
async fn artifact_with_a_component_layer_runs() {
    let (_, code, log) = pull_and_run("component-artifact", &["hello-p2.wasm"], &[]).await;
    assert_eq!(code, 0, "{log}");
    assert_eq!(log, HELLO);
}

#[tokio::test]
async fn artifact_without_a_command_is_refused_by_cri() {
    let (bed, mut cri) = connect().await;
    let reference = bed.image("hello-artifact");
    cri.pull(&reference).await.expect("PullImage");
    let pod = cri.run_pod(&bed, "nocommand", HANDLER).await.unwrap();
    let spec = ContainerSpec {
        name: "app".into(),
        image: reference,
        ..Default::default()
    };
    let err = cri.create(&pod, spec).await.expect_err("no command");
    assert!(
        format!("{err:#}").contains("no command specified"),
        "{err:#}"
    );
    cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn several_layers_are_chosen_by_the_command() {
    let (_, code, _) = pull_and_run("multi-artifact", &["exit.wasm"], &["7"]).await;
    assert_eq!(code, 7, "by title");
    let (_, code, log) = pull_and_run("multi-artifact", &["/hello.wasm"], &[]).await;
    assert_eq!((code, log.as_str()), (0, HELLO), "by path");
    let exit = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/wasm32-wasip1/release/exit.wasm"),
    )
    .expect("exit.wasm built by e2e/testbed.sh images");
    let digest = format!("sha256:{}", sha256_hex(&exit));
    let (_, code, _) = pull_and_run("multi-artifact", &[&digest], &["9"]).await;
    assert_eq!(code, 9, "by digest");
    let err = pull_and_fail("multi-artifact", &["other.wasm"]).await;
    assert!(
        err.contains("2 Wasm layers") && err.contains("hello.wasm (sha256:"),
        "{err}"
    );
}

#[tokio::test]
async fn image_without_wasm_is_a_clear_start_error() {
    let err = pull_and_fail("native", &[]).await;
    let (bed, _) = connect().await;
    let expected = format!(
        "image {} has no Wasm module: /bin/busybox is not a WebAssembly module (it is a native ELF executable)",
        bed.image("native")
    );
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("runs only Wasm containers"), "{err}");
}

#[tokio::test]
async fn missing_entrypoint_is_a_clear_start_error() {
    let err = pull_and_fail("missing-entrypoint", &[]).await;
    assert!(
        err.contains("has no Wasm module: /app/missing.wasm does not exist in the image"),
        "{err}"
    );
}

#[tokio::test]
async fn artifact_layer_that_is_not_wasm_is_a_clear_start_error() {
    let err = pull_and_fail("broken-artifact", &["broken.wasm"]).await;
    assert!(
        err.contains("module broken.wasm: invalid WebAssembly"),
        "{err}"
    );
}

/// containerd verified the layer when it pulled it; a blob damaged afterwards on disk must not
/// run. The shim checks every layer it reads against the manifest's digest.
#[tokio::test]
async fn damaged_artifact_layer_is_refused() {
    let (bed, mut cri) = connect().await;
    let reference = bed.image("damaged-artifact");
    cri.pull(&reference).await.expect("PullImage");
    let echo = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/wasm32-wasip1/release/echo.wasm"),
    )
    .expect("echo.wasm");
    let blob = bed
        .run_dir
        .join("root/io.containerd.content.v1.content/blobs/sha256")
        .join(sha256_hex(&echo));
    let mut data = std::fs::read(&blob).expect("the pulled layer in the content store");
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&blob, data).unwrap();
    let err = pull_and_fail("damaged-artifact", &["echo.wasm"]).await;
    assert!(
        err.contains("layer echo.wasm: content does not match its digest"),
        "{err}"
    );
}
