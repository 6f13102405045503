//! Runs one Wasm pod through containerd's CRI, the way the kubelet would, and prints what
//! happened: the main job of the README's first command.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wasmpod_e2e::*;

#[tokio::main]
async fn main() -> Result<()> {
    let bed = Bed::from_env();
    let mut cri = Cri::connect(&bed.socket).await?;
    let started = Instant::now();
    let pod = cri
        .run_pod(&bed, "demo", HANDLER)
        .await
        .context("RunPodSandbox with runtime handler wasmtime")?;
    let id = cri
        .run(&pod, ContainerSpec::wasm("hello", "hello.wasm", &[]))
        .await?;
    let status = cri.wait_exited(&id, Duration::from_secs(60)).await?;
    let took = started.elapsed();
    println!(
        "pod {} (runtime handler {HANDLER}, containerd {})",
        pod.id, bed.version
    );
    println!(
        "container hello: exit code {}, reason {}, {took:.1?} from RunPodSandbox to exit",
        status.exit_code, status.reason
    );
    for (stream, line) in pod.log("hello") {
        println!("  log [{stream}] {line}");
    }
    cri.remove_pod(&pod).await?;
    anyhow::ensure!(status.exit_code == 0, "the Wasm container failed");
    Ok(())
}
