//! Runs Wasm pods through containerd's CRI, the way the kubelet would, and prints what
//! happened: the main job of the README's first command. First a Wasm pod on the pod host
//! (handler `wasmtime`), then a pod mixing Wasm and a native sidecar on the isolated host
//! (handler `wasmtime-isolated`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wasmpod_e2e::*;

#[tokio::main]
async fn main() -> Result<()> {
    let bed = Bed::from_env();
    let mut cri = Cri::connect(&bed.socket).await?;
    let wasm = ContainerSpec::wasm("hello", "hello.wasm", &[]);
    run(&bed, &mut cri, HANDLER, vec![wasm.clone()]).await?;
    let sidecar = ContainerSpec {
        name: "sidecar".into(),
        image: BUSYBOX.into(),
        command: vec!["/bin/busybox".into(), "echo".into()],
        args: vec!["hello from a native sidecar".into()],
        ..Default::default()
    };
    run(&bed, &mut cri, ISOLATED, vec![wasm, sidecar]).await
}

/// One pod with `containers` on `handler`, each run to its exit.
async fn run(
    bed: &Bed,
    cri: &mut Cri,
    handler: &str,
    containers: Vec<ContainerSpec>,
) -> Result<()> {
    let started = Instant::now();
    let pod = cri
        .run_pod(bed, "demo", handler)
        .await
        .with_context(|| format!("RunPodSandbox with runtime handler {handler}"))?;
    println!(
        "pod {} (runtime handler {handler}, containerd {})",
        pod.id, bed.version
    );
    let mut ids = Vec::new();
    for c in &containers {
        ids.push((c.name.clone(), cri.run(&pod, c.clone()).await?));
    }
    let mut failed = false;
    for (name, id) in ids {
        let status = cri.wait_exited(&id, Duration::from_secs(60)).await?;
        println!(
            "container {name}: exit code {}, reason {}, {:.1?} from RunPodSandbox to exit",
            status.exit_code,
            status.reason,
            started.elapsed()
        );
        for (stream, line) in pod.log(&name) {
            println!("  log [{stream}] {line}");
        }
        failed |= status.exit_code != 0;
    }
    cri.remove_pod(&pod).await?;
    anyhow::ensure!(!failed, "a container of the {handler} pod failed");
    Ok(())
}
