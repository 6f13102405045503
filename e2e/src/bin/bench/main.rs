//! `make bench`: start-up time and memory of Wasm pods under wasmpod, next to runc on the
//! same machine and the same containerd. Prints a table; asserts nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wasmpod_e2e::*;

const RUNS: usize = 20;
const WARMUP: usize = 2;
/// Idle pods measured together for the memory figure.
const PODS: usize = 10;
/// Pods per runtime in the density section, unless `DENSITY` says otherwise.
const DENSITY: usize = 200;

mod density;

#[tokio::main]
async fn main() -> Result<()> {
    let bed = Bed::from_env();
    let mut cri = Cri::connect(&bed.socket).await?;
    cri.poll = Duration::from_millis(2);
    // `bench pod-charge`: only the pod cgroup figure (what the chart's overhead is set from).
    if std::env::args().nth(1).as_deref() == Some("pod-charge") {
        return pod_cgroup_charge(&bed, &mut cri).await;
    }
    // `bench density`: only the density section (`make bench-density DENSITY=1000`).
    if std::env::args().nth(1).as_deref() == Some("density") {
        return density_section(&bed).await;
    }
    println!(
        "wasmpod bench: containerd {}, {RUNS} runs each after {WARMUP} warm-up runs",
        bed.version
    );
    println!("{:<48} {:>10} {:>10}", "measure", "median", "p90");

    let wasm = ctr_run_times(&bed, "io.containerd.wasmtime.v1", WORKLOADS, &[])?;
    row("ctr run --rm hello: wasmtime (wasmpod)", &wasm);
    let runc = ctr_run_times(&bed, "io.containerd.runc.v2", BUSYBOX, &[])?;
    row("ctr run --rm hello: runc (busybox echo)", &runc);

    let wasm_cri = cri_times(
        &bed,
        &mut cri,
        HANDLER,
        ContainerSpec::wasm("hello", "hello.wasm", &[]),
    )
    .await?;
    row("CRI RunPodSandbox -> exited: wasmtime", &wasm_cri);
    let busybox = ContainerSpec {
        name: "hello".into(),
        image: BUSYBOX.into(),
        command: vec!["/bin/busybox".into()],
        args: vec!["echo".into(), "hello".into()],
        ..Default::default()
    };
    let runc_cri = cri_times(&bed, &mut cri, "runc", busybox).await?;
    row("CRI RunPodSandbox -> exited: runc", &runc_cri);
    let isolated_cri = cri_times(
        &bed,
        &mut cri,
        ISOLATED,
        ContainerSpec::wasm("hello", "hello.wasm", &[]),
    )
    .await?;
    row(
        "CRI RunPodSandbox -> exited: wasmtime-isolated",
        &isolated_cri,
    );
    println!(
        "speed-up vs runc (median): ctr run {:.1}x, CRI {:.1}x (wasmtime), {:.1}x (wasmtime-isolated)",
        median(&runc) / median(&wasm),
        median(&runc_cri) / median(&wasm_cri),
        median(&runc_cri) / median(&isolated_cri)
    );

    let artifact = bed.image("hello-artifact");
    cri.pull(&artifact).await?;
    let from_artifact = ContainerSpec {
        name: "hello".into(),
        image: artifact,
        command: vec!["hello.wasm".into()],
        ..Default::default()
    };
    let artifact_cri = cri_times(&bed, &mut cri, HANDLER, from_artifact).await?;
    row(
        "CRI ... exited: wasmtime, hello as Wasm artifact",
        &artifact_cri,
    );

    let (cold, warm) = big_module_starts(&bed, &mut cri).await?;
    row("CRI ... exited: 3.6 MB module, cache cold", &cold);
    row("CRI ... exited: 3.6 MB module, cache warm", &warm);
    println!(
        "compile cache: second start of the large module {:.1}x faster than the first",
        median(&cold) / median(&warm)
    );

    let free = work_ms(&bed, &mut cri, None).await?;
    let limited = work_ms(&bed, &mut cri, Some(4000)).await?;
    println!(
        "CPU-bound guest, median of 5: {:.0} ms without limits, {:.0} ms with a 4-core quota that never binds ({:+.1} % for the quota checks at each epoch tick)",
        median(&free),
        median(&limited),
        (median(&limited) / median(&free) - 1.0) * 100.0
    );

    http_bench(&bed, &mut cri).await?;

    let (wasm_pss, wasm_procs) = idle_pod_pss(
        &bed,
        &mut cri,
        HANDLER,
        ContainerSpec::wasm("idle", "sleep.wasm", &["3600"]),
        "containerd-shim-wasmtime-v1",
    )
    .await?;
    let sleeper = ContainerSpec {
        name: "idle".into(),
        image: BUSYBOX.into(),
        command: vec!["/bin/busybox".into()],
        args: vec!["sleep".into(), "3600".into()],
        ..Default::default()
    };
    let (isolated_pss, isolated_procs) = idle_pod_pss(
        &bed,
        &mut cri,
        ISOLATED,
        ContainerSpec::wasm("idle", "sleep.wasm", &["3600"]),
        "containerd-shim-wasmtime-isolated-v1",
    )
    .await?;
    let (runc_pss, runc_procs) =
        idle_pod_pss(&bed, &mut cri, "runc", sleeper, "containerd-shim-runc-v2").await?;
    println!(
        "memory (PSS) per idle pod, {PODS} pods running: wasmtime {:.2} MiB in {wasm_procs} process(es) per pod; wasmtime-isolated {:.2} MiB in {isolated_procs}; runc {:.2} MiB in {runc_procs}",
        wasm_pss as f64 / 1024.0,
        isolated_pss as f64 / 1024.0,
        runc_pss as f64 / 1024.0
    );
    pod_cgroup_charge(&bed, &mut cri).await?;
    density_section(&bed).await
}

/// The density table for wasmtime, wasmtime-isolated and runc, and its CSV for the plot.
async fn density_section(bed: &Bed) -> Result<()> {
    let n = match std::env::var("DENSITY") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("DENSITY={v}: not a pod count"))?,
        Err(_) => DENSITY,
    };
    let sleeping = ContainerSpec::wasm("idle", "sleep.wasm", &["3600"]);
    let runtimes = [
        density::Runtime {
            label: "wasmtime",
            handler: HANDLER,
            shim: "containerd-shim-wasmtime-v1",
            spec: sleeping.clone(),
        },
        density::Runtime {
            label: "wasmtime-isolated",
            handler: ISOLATED,
            shim: "containerd-shim-wasmtime-isolated-v1",
            spec: sleeping,
        },
        density::Runtime {
            label: "runc",
            handler: "runc",
            shim: "containerd-shim-runc-v2",
            spec: ContainerSpec {
                name: "idle".into(),
                image: BUSYBOX.into(),
                command: vec!["/bin/busybox".into()],
                args: vec!["sleep".into(), "3600".into()],
                ..Default::default()
            },
        },
    ];
    let csv = density::run(bed, &runtimes, n).await?;
    let out = Path::new("target/bench");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("density.csv"), csv)?;
    println!("density curves: {}", out.join("density.csv").display());
    Ok(())
}

/// What the pod host charges to a pod's cgroup beyond its guests' memory: what the
/// RuntimeClass's `overhead.podFixed.memory` must cover (the kubelet sets the pod cgroup's
/// limit to the containers' limits plus it). One pod with an idle container and one holding
/// 16 MiB; the guests' own memory is what ContainerStats reports for them.
async fn pod_cgroup_charge(bed: &Bed, cri: &mut Cri) -> Result<()> {
    let cgroup = LimitedPodCgroup::new("charge", 1 << 30);
    let pod = cri
        .run_pod_in(bed, "charge", HANDLER, &cgroup.parent)
        .await?;
    let idle = cri
        .run(&pod, ContainerSpec::wasm("idle", "sleep.wasm", &["3600"]))
        .await?;
    pod.wait_log("idle", "sleeping", Duration::from_secs(30))
        .await?;
    let (idle_usage, _) = cgroup.memory_usage()?;
    let idle_guest = cri.memory_bytes(&idle).await?;
    let hog = cri
        .run(&pod, ContainerSpec::wasm("hog", "memhog.wasm", &["16"]))
        .await?;
    pod.wait_log("hog", "holding 16 MiB", Duration::from_secs(30))
        .await?;
    let (usage, peak) = cgroup.memory_usage()?;
    let guests = idle_guest + cri.memory_bytes(&hog).await?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "pod cgroup charge of the pod host beyond its guests' memory (what overhead.podFixed.memory must cover): {:.2} MiB with one idle container, {:.2} MiB with a second holding 16 MiB (peak {:.2} MiB)",
        mib(idle_usage.saturating_sub(idle_guest)),
        mib(usage.saturating_sub(guests)),
        mib(peak.saturating_sub(guests)),
    );
    cri.remove_pod(&pod).await?;
    Ok(())
}

/// wrk against the wasi:http test handler in a Wasm pod, a native hyper server and (when a
/// `wasmtime` binary is found: $WASMPOD_WASMTIME or PATH) `wasmtime serve` on the same
/// component. The native and `wasmtime serve` servers run inside the Wasm pod's network
/// namespace (nsenter), so all three are reached over the same bridge and veth.
async fn http_bench(bed: &Bed, cri: &mut Cri) -> Result<()> {
    let pod = cri.run_pod_networked(bed, "bench-http", HANDLER).await?;
    let spec = ContainerSpec {
        name: "server".into(),
        image: HTTP_HANDLER.into(),
        ..Default::default()
    };
    let id = cri.run(&pod, spec).await?;
    let ip = cri.pod_ip(&pod).await?;
    let netns = pod_netns(bed, &pod)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut servers = vec![("wasmpod (wasi:http pod)", format!("{ip}:8080"))];
    // Ended on every way out of this function, errors included.
    let mut children = Children(Vec::new());
    let native = root.join("target/release/hello-server");
    children.0.push(
        std::process::Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .arg(&native)
            .arg("0.0.0.0:8081")
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", native.display()))?,
    );
    servers.push(("native hyper", format!("{ip}:8081")));
    let wasmtime = std::env::var("WASMPOD_WASMTIME")
        .ok()
        .filter(|p| Path::new(p).exists())
        .or_else(|| which("wasmtime"));
    match &wasmtime {
        Some(bin) => {
            children.0.push(
                std::process::Command::new("nsenter")
                    .arg(format!("--net={netns}"))
                    .arg(bin)
                    .args(["serve", "-Scli", "--addr", "0.0.0.0:8082"])
                    .arg(root.join("target/wasm32-wasip2/release/wasmpod_http_handler.wasm"))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .context("starting wasmtime serve")?,
            );
            servers.push(("wasmtime serve", format!("{ip}:8082")));
        }
        None => println!(
            "wasmtime serve: no wasmtime binary (set WASMPOD_WASMTIME; `make bench-wasmtime` builds wasmtime-cli 48)"
        ),
    }
    let mut results = Vec::new();
    for (name, addr) in &servers {
        let deadline = Instant::now() + Duration::from_secs(30);
        while wasmpod_e2e::http::get(addr, "/")
            .await
            .map(|r| r.status)
            .ok()
            != Some(200)
        {
            if Instant::now() > deadline {
                bail!("{name} at {addr} never answered");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Warm up (compile caches, connection pools), then measure.
        wrk(addr, 2)?;
        let (rps, p99) = wrk(addr, 10)?;
        println!(
            "HTTP hello, wrk 1 thread 32 connections 10 s: {name:<26} {rps:>9.0} req/s  p99 {p99}"
        );
        results.push(rps);
    }
    if let Some(shim) = shim_processes(&pod.id).first() {
        println!(
            "memory (PSS) of the serving Wasm pod after the load: {:.2} MiB",
            pss_kib(*shim) as f64 / 1024.0
        );
    }
    println!("wasi:http vs native hyper: {:.2}x", results[0] / results[1]);
    if results.len() > 2 {
        println!(
            "wasi:http vs wasmtime serve: {:.2}x",
            results[0] / results[2]
        );
    }
    drop(children);
    cri.stop(&id, 10).await?;
    cri.remove_pod(&pod).await?;
    Ok(())
}

/// Processes the benchmark started, killed (by PID) and reaped when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The network namespace CNI made for a pod, from the sandbox's spec.
fn pod_netns(bed: &Bed, pod: &Pod) -> Result<String> {
    let (_, out, err) = bed.ctr("k8s.io", &["containers", "info", &pod.id])?;
    let info: serde_json::Value = serde_json::from_str(&out).with_context(|| err.clone())?;
    info["Spec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
        .and_then(|n| n["path"].as_str())
        .map(str::to_string)
        .context("the pod has no network namespace path")
}

/// Runs wrk for `seconds`; requests per second and the p99 latency as wrk prints it.
fn wrk(addr: &str, seconds: u32) -> Result<(f64, String)> {
    let out = std::process::Command::new("wrk")
        .args(["-t1", "-c32", "--latency"])
        .arg(format!("-d{seconds}s"))
        .arg(format!("http://{addr}/"))
        .output()
        .context("running wrk (Debian package wrk; e2e/testbed.sh install)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    if text.contains("Non-2xx") {
        bail!("{addr} answered errors under load: {text}");
    }
    Ok((rps, p99))
}

fn which(name: &str) -> Option<String> {
    std::env::var("PATH").ok()?.split(':').find_map(|d| {
        let p = Path::new(d).join(name);
        p.exists().then(|| p.to_string_lossy().into_owned())
    })
}

/// CRI start-to-exit of the large module (`big-artifact`, e2e/workloads `big`): with the
/// node's compile cache emptied first, then again with the entry the first start wrote.
async fn big_module_starts(bed: &Bed, cri: &mut Cri) -> Result<(Vec<f64>, Vec<f64>)> {
    let image = bed.image("big-artifact");
    cri.pull(&image).await?;
    let spec = ContainerSpec {
        name: "hello".into(),
        image,
        command: vec!["big.wasm".into()],
        ..Default::default()
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for entry in std::fs::read_dir(&bed.cache_dir)?.flatten() {
            std::fs::remove_file(entry.path())?;
        }
        cold.extend(cri_times_n(bed, cri, HANDLER, spec.clone(), 0, 1).await?);
        warm.extend(cri_times_n(bed, cri, HANDLER, spec.clone(), 0, 1).await?);
    }
    Ok((cold, warm))
}

/// Guest-measured run time of `work.wasm`, five runs.
async fn work_ms(bed: &Bed, cri: &mut Cri, cpu_millis: Option<i64>) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..5 {
        let mut spec = ContainerSpec::wasm("work", "work.wasm", &["3000"]);
        spec.resources = cpu_millis.map(|m| Resources {
            memory_bytes: 0,
            cpu_millis: m,
            ..Default::default()
        });
        let pod = cri.run_pod(bed, "work", HANDLER).await?;
        let id = cri.run(&pod, spec).await?;
        cri.wait_exited(&id, Duration::from_secs(120)).await?;
        let log = pod.log_text("work");
        cri.remove_pod(&pod).await?;
        let ms: f64 = log
            .strip_prefix("work: ")
            .and_then(|l| l.split(' ').next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no timing in {log:?}"))?;
        out.push(ms);
    }
    Ok(out)
}

fn row(name: &str, ms: &[f64]) {
    println!(
        "{name:<48} {:>8.1}ms {:>8.1}ms",
        median(ms),
        percentile(ms, 0.9)
    );
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

fn ctr_run_times(bed: &Bed, runtime: &str, image: &str, args: &[&str]) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for i in 0..WARMUP + RUNS {
        let id = unique("bench-ctr");
        let mut cmd = vec!["run", "--rm", "--runtime", runtime, image, &id];
        cmd.extend_from_slice(args);
        let t = Instant::now();
        let (code, out, err) = bed.ctr("default", &cmd)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if code != 0 || !out.contains("hello") {
            bail!("ctr run with {runtime} failed ({code}): {out}{err}");
        }
        if i >= WARMUP {
            times.push(ms);
        }
    }
    Ok(times)
}

async fn cri_times(
    bed: &Bed,
    cri: &mut Cri,
    handler: &str,
    spec: ContainerSpec,
) -> Result<Vec<f64>> {
    cri_times_n(bed, cri, handler, spec, WARMUP, RUNS).await
}

/// RunPodSandbox to container exit, `runs` times after `warmup` unmeasured runs.
async fn cri_times_n(
    bed: &Bed,
    cri: &mut Cri,
    handler: &str,
    spec: ContainerSpec,
    warmup: usize,
    runs: usize,
) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for i in 0..warmup + runs {
        let t = Instant::now();
        let pod = cri.run_pod(bed, "bench", handler).await?;
        let id = cri.run(&pod, spec.clone()).await?;
        let st = cri.wait_exited(&id, Duration::from_secs(60)).await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        cri.remove_pod(&pod).await?;
        if st.exit_code != 0 {
            bail!(
                "{handler} pod exited {}: {}",
                st.exit_code,
                pod.log_text("hello")
            );
        }
        if i >= warmup {
            times.push(ms);
        }
    }
    Ok(times)
}

/// PSS (KiB) per pod of `PODS` idle pods running at once: the shims serving them and the
/// shims' children (pause and the container's processes, for runc), divided by the pods.
/// Shared pages (the shim's code) are split between the pods, as the kernel's PSS does, so
/// this is what one more pod costs on a node that already runs some.
async fn idle_pod_pss(
    bed: &Bed,
    cri: &mut Cri,
    handler: &str,
    spec: ContainerSpec,
    shim: &str,
) -> Result<(u64, usize)> {
    let mut pods = Vec::new();
    for _ in 0..PODS {
        let pod = cri.run_pod(bed, "idle", handler).await?;
        cri.run(&pod, spec.clone()).await?;
        pods.push(pod);
    }
    // Let the containers settle into their sleep before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut pids = Vec::new();
    for pod in &pods {
        let shim_pid = find_process(shim, &pod.id).with_context(|| format!("no {shim} for pod"))?;
        let first = pids.len();
        pids.push(shim_pid);
        let mut i = first;
        while i < pids.len() {
            pids.extend(children(pids[i]));
            i += 1;
        }
    }
    let pss: u64 = pids.iter().map(|p| pss_kib(*p)).sum();
    for pod in &pods {
        cri.remove_pod(pod).await?;
    }
    Ok((pss / PODS as u64, pids.len() / PODS))
}

fn find_process(binary: &str, id: &str) -> Option<u32> {
    procs().into_iter().find_map(|(pid, args)| {
        (args.first().is_some_and(|a| a.ends_with(binary))
            && args.windows(2).any(|w| w[0] == "-id" && w[1] == id))
        .then_some(pid)
    })
}

fn procs() -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, args));
    }
    out
}

fn children(pid: u32) -> Vec<u32> {
    procs()
        .into_iter()
        .filter(|(p, _)| ppid(*p) == Some(pid))
        .map(|(p, _)| p)
        .collect()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields after the closing paren are fixed.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn pss_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/smaps_rollup");
    std::fs::read_to_string(Path::new(&path))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
