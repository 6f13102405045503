//! `make bench`'s density section: N sleeping pods started through the CRI as a kubelet would
//! (one after another, then 8 at a time), for wasmtime and for runc, with what each pod costs
//! the node once they all run: processes, PSS, system memory, containerd's growth, CPU while
//! idle, and the teardown. Writes the curves to `target/bench/density.csv` for the plot.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wasmpod_e2e::*;

use super::{children, median, pss_kib};

/// Pods started at once in the parallel run: what the kubelet's workers do.
const IN_FLIGHT: usize = 8;
/// runc pods beyond this take minutes and gigabytes and show nothing new.
const RUNC_MAX: usize = 200;
/// How long idle CPU is sampled once every pod runs.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// How long after the last start the idle figures are taken.
const SETTLE: Duration = Duration::from_secs(10);

pub struct Runtime {
    pub label: &'static str,
    pub handler: &'static str,
    pub shim: &'static str,
    pub spec: ContainerSpec,
}

/// What one runtime's density run measured.
struct Figures {
    pods: usize,
    serial_rate: f64,
    parallel_rate: f64,
    first_ms: f64,
    last_ms: f64,
    procs_per_pod: f64,
    pss_mib: f64,
    system_mib: f64,
    containerd_mib: f64,
    idle_core_pct: f64,
    teardown_s: f64,
    left: usize,
}

/// Runs the density section for `runtimes` at `n` pods each; returns the CSV of the curves.
pub async fn run(bed: &Bed, runtimes: &[Runtime], n: usize) -> Result<String> {
    println!();
    println!("density: sleeping pods, one container each, host network, started through the CRI");
    println!(
        "{:<18} {:>6} {:>9} {:>9} {:>8} {:>8} {:>7} {:>8} {:>8} {:>10} {:>10} {:>10} {:>5}",
        "runtime",
        "pods",
        "pods/s",
        "pods/s×8",
        "1st ms",
        "last ms",
        "procs",
        "PSS MiB",
        "sys MiB",
        "ctrd MiB",
        "idle %core",
        "teardown s",
        "left"
    );
    let mut csv = String::from("runtime,pods,start_ms,pss_mib_per_pod,system_mib_per_pod\n");
    for rt in runtimes {
        let count = if rt.handler == "runc" {
            n.min(RUNC_MAX)
        } else {
            n
        };
        let f = measure(bed, rt, count, &mut csv).await?;
        println!(
            "{:<18} {:>6} {:>9.1} {:>9.1} {:>8.1} {:>8.1} {:>7.1} {:>8.2} {:>8.2} {:>10.2} {:>10.4} {:>10.1} {:>5}",
            rt.label,
            f.pods,
            f.serial_rate,
            f.parallel_rate,
            f.first_ms,
            f.last_ms,
            f.procs_per_pod,
            f.pss_mib,
            f.system_mib,
            f.containerd_mib,
            f.idle_core_pct,
            f.teardown_s,
            f.left
        );
    }
    println!(
        "(pods/s: one after another; ×8: eight in flight. 1st/last ms: median start of the first \
         and last tenth. PSS and sys: per pod, all processes the pods added / MemTotal − \
         MemAvailable. idle %core: CPU of all the pods' processes per pod while they sleep. \
         left: pod processes still there 10 s after teardown)"
    );
    Ok(csv)
}

async fn measure(bed: &Bed, rt: &Runtime, n: usize, csv: &mut String) -> Result<Figures> {
    let mut cri = Cri::connect(&bed.socket).await?;
    let containerd = containerd_pid(bed);
    let sys0 = mem_used_kib();
    let ctrd0 = containerd.map(pss_kib).unwrap_or(0);
    let sample_every = (n / 10).max(1);

    let mut pods = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let t1 = Instant::now();
        let pod = cri.run_pod(bed, "density", rt.handler).await?;
        cri.run(&pod, rt.spec.clone())
            .await
            .with_context(|| format!("{} pod {i}", rt.label))?;
        let ms = t1.elapsed().as_secs_f64() * 1e3;
        starts.push(ms);
        pods.push(pod);
        let count = i + 1;
        if count % sample_every == 0 || count == n {
            // A thousand pods take minutes: say how far it is.
            eprintln!(
                "density: {} {count}/{n} pods started ({:.0} s)",
                rt.label,
                t.elapsed().as_secs_f64()
            );
            let (_, pss) = pod_processes(rt, &pods);
            let sys = mem_used_kib().saturating_sub(sys0);
            let _ = writeln!(
                csv,
                "{},{count},{ms:.2},{:.3},{:.3}",
                rt.label,
                pss as f64 / 1024.0 / count as f64,
                sys as f64 / 1024.0 / count as f64
            );
        } else {
            let _ = writeln!(csv, "{},{count},{ms:.2},,", rt.label);
        }
    }
    let serial_rate = n as f64 / t.elapsed().as_secs_f64();
    // Settled: the containers are asleep, containerd's work on the last starts is done.
    tokio::time::sleep(SETTLE).await;
    let (pids, pss) = pod_processes(rt, &pods);
    let system = mem_used_kib().saturating_sub(sys0);
    let ctrd = containerd.map(pss_kib).unwrap_or(0).saturating_sub(ctrd0);
    let cpu0 = cpu_ticks(&pids);
    tokio::time::sleep(IDLE_WINDOW).await;
    let cpu = cpu_ticks(&pids).saturating_sub(cpu0);
    let idle_core_pct = cpu as f64 / clock_ticks() / IDLE_WINDOW.as_secs_f64() / n as f64 * 100.0;

    let t = Instant::now();
    for pod in &pods {
        cri.remove_pod(pod).await?;
    }
    let teardown_s = t.elapsed().as_secs_f64();
    let tenth = (n / 10).max(1);
    drop(pods);
    let left = left_behind(&pids).await;

    let parallel_rate = parallel(bed, rt, n).await?;
    // Later runtimes start from a settled node.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(Figures {
        pods: n,
        serial_rate,
        parallel_rate,
        first_ms: median(&starts[..tenth]),
        last_ms: median(&starts[n - tenth..]),
        procs_per_pod: pids.len() as f64 / n as f64,
        pss_mib: pss as f64 / 1024.0 / n as f64,
        system_mib: system as f64 / 1024.0 / n as f64,
        containerd_mib: ctrd as f64 / 1024.0 / n as f64,
        idle_core_pct,
        teardown_s,
        left,
    })
}

/// `n` pods started by `IN_FLIGHT` workers with their own CRI connections, as the kubelet's
/// pod workers do; pods per second, then they are removed again.
async fn parallel(bed: &Bed, rt: &Runtime, n: usize) -> Result<f64> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (bed, next, handler, spec) = (bed.clone(), next.clone(), rt.handler, rt.spec.clone());
        workers.spawn(async move {
            let mut cri = Cri::connect(&bed.socket).await?;
            let mut pods = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let pod = cri.run_pod(&bed, "density", handler).await?;
                cri.run(&pod, spec.clone()).await?;
                pods.push(pod);
            }
            anyhow::Ok((cri, pods))
        });
    }
    let mut started = Vec::new();
    while let Some(r) = workers.join_next().await {
        started.push(r??);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    for (mut cri, pods) in started {
        for pod in &pods {
            cri.remove_pod(pod).await?;
        }
    }
    Ok(rate)
}

/// The processes serving `pods` (their shims and everything under them) and their PSS (KiB).
fn pod_processes(rt: &Runtime, pods: &[Pod]) -> (Vec<u32>, u64) {
    let procs = super::procs();
    let mut pids: Vec<u32> = procs
        .iter()
        .filter(|(_, args)| {
            args.first().is_some_and(|a| a.ends_with(rt.shim))
                && pods
                    .iter()
                    .any(|p| args.windows(2).any(|w| w[0] == "-id" && w[1] == p.id))
        })
        .map(|(pid, _)| *pid)
        .collect();
    let mut i = 0;
    while i < pids.len() {
        pids.extend(children(pids[i]));
        i += 1;
    }
    pids.sort_unstable();
    pids.dedup();
    let pss = pids.iter().map(|p| pss_kib(*p)).sum();
    (pids, pss)
}

/// How many of `pids` still exist 10 s after their pods were removed.
async fn left_behind(pids: &[u32]) -> usize {
    let alive = || {
        pids.iter()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    alive()
}

/// The test bed's containerd: the one whose command line names the bed's run directory.
fn containerd_pid(bed: &Bed) -> Option<u32> {
    let run_dir = bed.run_dir.to_string_lossy().into_owned();
    super::procs().into_iter().find_map(|(pid, args)| {
        (args.first().is_some_and(|a| a.ends_with("containerd"))
            && args.iter().any(|a| a.contains(&run_dir)))
        .then_some(pid)
    })
}

/// MemTotal − MemAvailable, in KiB.
fn mem_used_kib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:"))
}

/// User and system CPU of `pids` (all their threads), in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command.
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}
