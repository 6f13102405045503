//! Container limits through CRI, enforced inside the engine: memory through store limits
//! (ending like the kernel's OOM kill), CPU through the epoch-driven quota.
//!
//! CPU shares are measured from ContainerStats over a few seconds. The bounds are wide on
//! purpose (this is a noisy 2-core machine); `make bench` prints the precise figures. The
//! CPU tests hold a lock so they never compete with each other for the cores.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use wasmpod_e2e::*;

static CPU: Mutex<()> = Mutex::const_new(());
const WINDOW: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(60);

fn limited(
    name: &str,
    module: &str,
    args: &[&str],
    memory_bytes: i64,
    cpu_millis: i64,
) -> ContainerSpec {
    let mut c = ContainerSpec::wasm(name, module, args);
    c.resources = Some(Resources {
        memory_bytes,
        cpu_millis,
        ..Default::default()
    });
    c
}

#[tokio::test]
async fn memory_hog_is_oom_killed_and_its_neighbour_lives_on() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "oom", HANDLER).await.unwrap();
    let neighbour = cri
        .run(
            &pod,
            ContainerSpec::wasm("neighbour", "sleep.wasm", &["3600"]),
        )
        .await
        .unwrap();
    let hog = cri
        .run(&pod, limited("hog", "memhog.wasm", &[], 32 << 20, 0))
        .await
        .unwrap();
    let st = cri.wait_exited(&hog, WAIT).await.unwrap();
    assert_eq!(st.exit_code, 137, "{st:?} {}", pod.log_text("hog"));
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    let log = pod.log_text("hog");
    assert!(
        log.contains("allocated 24 MiB"),
        "the hog got close to its limit: {log}"
    );
    assert!(
        !log.contains("allocated 32 MiB"),
        "the hog stayed under its limit: {log}"
    );

    pod.wait_log("neighbour", "sleeping", WAIT).await.unwrap();
    let n = cri.status(&neighbour).await.unwrap();
    assert_eq!(
        n.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );
    assert_eq!(
        shim_processes(&pod.id).len(),
        1,
        "the pod's shim survived the OOM"
    );
    cri.stop(&neighbour, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
}

/// The kernel holds the pod host's whole process to the pod cgroup's limit (the containers'
/// limits plus the RuntimeClass overhead), and kills the whole shim, every container of the
/// pod with it, when that is full. The engine must deny the guest first: the hog alone ends
/// OOMKilled, its neighbour and the shim live on.
#[tokio::test]
async fn the_pod_cgroup_limit_stops_the_guest_not_the_shim() {
    let (bed, mut cri) = connect().await;
    // The chart's default overhead for the pod host.
    let cgroup = LimitedPodCgroup::new("oom-pod", (32 << 20) + (2 << 20));
    let pod = cri
        .run_pod_in(&bed, "oom-pod", HANDLER, &cgroup.parent)
        .await
        .unwrap();
    let neighbour = cri
        .run(
            &pod,
            ContainerSpec::wasm("neighbour", "sleep.wasm", &["3600"]),
        )
        .await
        .unwrap();
    let hog = cri
        .run(&pod, limited("hog", "memhog.wasm", &[], 32 << 20, 0))
        .await
        .unwrap();
    let st = cri.wait_exited(&hog, WAIT).await.unwrap();
    assert_eq!(st.exit_code, 137, "{st:?} {}", pod.log_text("hog"));
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert!(
        pod.log_text("hog").contains("allocated 8 MiB"),
        "the hog got memory: {}",
        pod.log_text("hog")
    );
    let n = cri.status(&neighbour).await.unwrap();
    assert_eq!(
        n.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32,
        "the neighbour lives on: {n:?}"
    );
    assert_eq!(shim_processes(&pod.id).len(), 1, "the pod's shim lives on");
    cri.stop(&neighbour, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
    assert_shim_gone(&pod.id).await;
}

/// A guest that leaks descriptors meets its container's `RLIMIT_NOFILE` (containerd's
/// default spec: 1024), not the shim's: its next open gets EMFILE, as from the kernel, and it
/// reports it and exits on its own; its neighbour in the pod, sharing the shim's
/// descriptors, keeps working.
#[tokio::test]
async fn a_descriptor_leak_meets_the_container_limit() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "fd-leak", HANDLER).await.unwrap();
    let neighbour = cri
        .run(
            &pod,
            ContainerSpec::wasm("neighbour", "sleep.wasm", &["3600"]),
        )
        .await
        .unwrap();
    let hog = cri
        .run(&pod, ContainerSpec::wasm("hog", "fdhog.wasm", &[]))
        .await
        .unwrap();
    let st = cri.wait_exited(&hog, WAIT).await.unwrap();
    let log = pod.log_text("hog");
    assert_eq!(
        st.exit_code, 3,
        "the guest's own exit, not a trap: {st:?} {log}"
    );
    assert!(
        log.contains("holding 768 files"),
        "the guest could open files: {log}"
    );
    assert!(!log.contains("holding 1024 files"), "the limit held: {log}");
    // wasi-libc's message for EMFILE (errno 33 in WASI).
    assert!(log.contains("(os error 33)"), "EMFILE: {log}");
    let n = cri.status(&neighbour).await.unwrap();
    assert_eq!(
        n.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );
    let after = cri
        .run(&pod, ContainerSpec::wasm("after", "hello.wasm", &[]))
        .await
        .unwrap();
    let st = cri.wait_exited(&after, WAIT).await.unwrap();
    assert_eq!(st.exit_code, 0, "{st:?} {}", pod.log_text("after"));
    cri.stop(&neighbour, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn memory_within_the_limit_is_fine() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "mem-ok", HANDLER).await.unwrap();
    let id = cri
        .run(&pod, limited("fits", "memhog.wasm", &["16"], 32 << 20, 0))
        .await
        .unwrap();
    pod.wait_log("fits", "holding 16 MiB", WAIT).await.unwrap();
    let st = cri.status(&id).await.unwrap();
    assert_eq!(
        st.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );
    cri.stop(&id, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn cpu_limits_hold_per_container() {
    let _cores = CPU.lock().await;
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "cpu", HANDLER).await.unwrap();
    let a = cri
        .run(&pod, limited("spin200", "spin.wasm", &[], 0, 200))
        .await
        .unwrap();
    let b = cri
        .run(&pod, limited("spin500", "spin.wasm", &[], 0, 500))
        .await
        .unwrap();
    pod.wait_log("spin200", "spinning", WAIT).await.unwrap();
    pod.wait_log("spin500", "spinning", WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shares = cri.cpu_share(&[&a, &b], WINDOW).await.unwrap();
    eprintln!(
        "cpu shares in one pod: 200m {:.3}, 500m {:.3}",
        shares[0], shares[1]
    );
    assert!(
        (0.12..0.30).contains(&shares[0]),
        "200m used {:.3} cores",
        shares[0]
    );
    assert!(
        (0.40..0.62).contains(&shares[1]),
        "500m used {:.3} cores",
        shares[1]
    );
    cri.stop(&a, 0).await.unwrap();
    cri.stop(&b, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
}

/// Three spinners and two guest threads: the threads are contended, so `cpu.shares` decides.
/// The heavy one (1000m requested) can use at most one thread; the light ones (250m each)
/// share the other. With equal weights each would get two thirds of a core.
#[tokio::test]
async fn cpu_shares_weigh_competing_containers() {
    let _cores = CPU.lock().await;
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "shares", HANDLER).await.unwrap();
    let mut ids = Vec::new();
    for (name, request) in [("heavy", 1000), ("light1", 250), ("light2", 250)] {
        let mut c = ContainerSpec::wasm(name, "spin.wasm", &[]);
        c.resources = Some(Resources {
            cpu_request_millis: request,
            ..Default::default()
        });
        ids.push(cri.run(&pod, c).await.unwrap());
        pod.wait_log(name, "spinning", WAIT).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let used = cri.cpu_share(&ids, WINDOW).await.unwrap();
    eprintln!(
        "cpu with shares 1024/256/256 on 2 threads: heavy {:.3}, light {:.3} and {:.3}",
        used[0], used[1], used[2]
    );
    let light = (used[1] + used[2]) / 2.0;
    assert!(
        used[0] > 1.4 * light,
        "heavy {:.3} vs light {light:.3}: shares not applied",
        used[0]
    );
    assert!(
        used.iter().sum::<f64>() > 1.4,
        "the threads stay busy while guests step aside: {used:?}"
    );
    for id in &ids {
        cri.stop(id, 0).await.unwrap();
    }
    cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn unlimited_spinner_gets_a_core() {
    let _cores = CPU.lock().await;
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "cpu-free", HANDLER).await.unwrap();
    let id = cri
        .run(&pod, ContainerSpec::wasm("spin", "spin.wasm", &[]))
        .await
        .unwrap();
    pod.wait_log("spin", "spinning", WAIT).await.unwrap();
    let share = cri.cpu_share(&[&id], WINDOW).await.unwrap()[0];
    eprintln!("cpu share unlimited: {share:.3}");
    assert!(share >= 0.7, "unlimited spinner used {share:.3} cores");

    // StopContainer with no grace period ends a spinning guest at its next epoch tick.
    let t = Instant::now();
    cri.stop(&id, 0).await.unwrap();
    let took = t.elapsed();
    eprintln!("StopContainer(timeout 0) of a spinning guest: {took:?}");
    let st = cri.status(&id).await.unwrap();
    assert_eq!(st.exit_code, 137);
    assert!(took < Duration::from_secs(1), "StopContainer took {took:?}");
    cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn resizing_a_running_container_changes_its_cpu() {
    let _cores = CPU.lock().await;
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "resize", HANDLER).await.unwrap();
    let id = cri
        .run(&pod, limited("spin", "spin.wasm", &[], 0, 200))
        .await
        .unwrap();
    pod.wait_log("spin", "spinning", WAIT).await.unwrap();
    let before = cri.cpu_share(&[&id], WINDOW).await.unwrap()[0];
    cri.update(
        &id,
        Resources {
            cpu_millis: 500,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = cri.cpu_share(&[&id], WINDOW).await.unwrap()[0];
    assert!(
        (0.12..0.30).contains(&before),
        "200m used {before:.3} cores"
    );
    assert!(
        (0.40..0.62).contains(&after),
        "resized to 500m, used {after:.3} cores"
    );
    cri.stop(&id, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
}

/// Context switches of every thread of a process so far.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// An idle pod costs the node nothing: while its guest sleeps in a host call, no thread of
/// the pod's shim wakes (the epoch ticker ran 100 times a second in every pod before).
#[tokio::test]
async fn an_idle_pod_wakes_no_thread() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "idle", HANDLER).await.unwrap();
    let id = cri
        .run(
            &pod,
            ContainerSpec::wasm("sleeper", "sleep.wasm", &["3600"]),
        )
        .await
        .unwrap();
    let shim = *shim_processes(&pod.id).first().expect("the pod's shim");
    pod.wait_log("sleeper", "sleeping", WAIT).await.unwrap();
    // Settle: containerd's own calls after the start.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = context_switches(shim);
    tokio::time::sleep(WINDOW).await;
    let woke = context_switches(shim) - before;
    eprintln!("idle pod's shim: {woke} context switches in {WINDOW:?}");
    assert!(
        woke < 30,
        "{woke} context switches in {WINDOW:?} while idle"
    );
    cri.stop(&id, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
}
