//! The isolated host (handler `wasmtime-isolated`) through CRI: a process per container, Wasm on
//! the same engine as the pod host, native containers (sidecars) run natively in the same pod,
//! and limits read from each container's cgroup.

use std::time::{Duration, Instant};

use k8s_cri::v1::ContainerState;
use tokio::sync::Mutex;
use wasmpod_e2e::http::get;
use wasmpod_e2e::*;

static CPU: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(60);

fn sidecar(name: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: BUSYBOX.into(),
        command: vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            script.into(),
        ],
        env: vec![("GREETING".into(), "hello from the sidecar".into())],
        ..Default::default()
    }
}

/// Nothing of the pod is left: no shim, no container process, no cgroup, no mount.
async fn assert_gone(pod: &Pod, containers: &[&str]) {
    assert_shim_gone(&pod.id).await;
    for id in containers.iter().chain([&pod.id.as_str()]) {
        assert!(
            eventually(Duration::from_secs(10), || {
                processes_in_cgroups_mentioning(id).is_empty()
            })
            .await,
            "processes of {id} left: {:?}",
            processes_in_cgroups_mentioning(id)
        );
        assert_eq!(cgroups_mentioning(id), Vec::<std::path::PathBuf>::new());
        assert_eq!(mounts_mentioning(id), Vec::<String>::new());
    }
}

/// CPU time used by the container's cgroup, in nanoseconds (v1 cpuacct or v2 cpu.stat).
fn cgroup_cpu_ns(container: &str) -> u64 {
    let pid = processes_in_cgroups_mentioning(container)[0];
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "cpuacct") {
            let f = format!("/sys/fs/cgroup/{controllers}/{path}/cpuacct.usage");
            return std::fs::read_to_string(f).unwrap().trim().parse().unwrap();
        }
        if controllers.is_empty() {
            let f = format!("/sys/fs/cgroup/{path}/cpu.stat");
            if let Ok(stat) = std::fs::read_to_string(f) {
                if let Some(us) = stat.lines().find_map(|l| l.strip_prefix("usage_usec ")) {
                    return us.trim().parse::<u64>().unwrap() * 1000;
                }
            }
        }
    }
    panic!("no CPU accounting for {container}: {cgroups}");
}

#[tokio::test]
async fn wasm_and_a_native_sidecar_share_a_pod() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "mixed", ISOLATED).await.unwrap();
    let side = cri
        .run(
            &pod,
            sidecar("side", "echo \"$GREETING\"; exec /bin/busybox sleep 3600"),
        )
        .await
        .unwrap();
    let mut app = ContainerSpec::wasm("app", "echo.wasm", &["one", "two"]);
    app.env = vec![("WASMPOD_WHO".into(), "isolated".into())];
    let app = cri.run(&pod, app).await.unwrap();
    let st = cri.wait_exited(&app, WAIT).await.unwrap();
    assert_eq!(st.exit_code, 0, "{st:?} {}", pod.log_text("app"));
    let log = pod.log_text("app");
    assert!(
        log.contains("args: one two"),
        "the Wasm output is in its log: {log:?}"
    );
    assert!(log.contains("env: WASMPOD_WHO=isolated"), "{log:?}");
    // The sidecar got the spec's environment, not the shim's.
    pod.wait_log("side", "hello from the sidecar", WAIT)
        .await
        .unwrap();
    let s = cri.status(&side).await.unwrap();
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
    cri.stop(&side, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
    assert_gone(&pod, &[&app, &side]).await;
}

#[tokio::test]
async fn each_container_is_a_process_of_its_own() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "procs", ISOLATED).await.unwrap();
    let a = cri
        .run(&pod, ContainerSpec::wasm("a", "sleep.wasm", &["3600"]))
        .await
        .unwrap();
    let b = cri
        .run(&pod, ContainerSpec::wasm("b", "sleep.wasm", &["3600"]))
        .await
        .unwrap();
    pod.wait_log("a", "sleeping", WAIT).await.unwrap();
    pod.wait_log("b", "sleeping", WAIT).await.unwrap();
    let (pa, pb) = (
        processes_in_cgroups_mentioning(&a),
        processes_in_cgroups_mentioning(&b),
    );
    assert_eq!(pa.len(), 1, "one process in a's cgroup: {pa:?}");
    assert_eq!(pb.len(), 1, "one process in b's cgroup: {pb:?}");
    assert_ne!(pa, pb);
    // StopContainer without a grace period is SIGKILL: 137, and not an OOM kill.
    cri.stop(&a, 0).await.unwrap();
    let st = cri.status(&a).await.unwrap();
    assert_eq!((st.exit_code, st.reason.as_str()), (137, "Error"), "{st:?}");
    let s = cri.status(&b).await.unwrap();
    assert_eq!(
        s.state,
        ContainerState::ContainerRunning as i32,
        "b lives on: {s:?}"
    );
    cri.stop(&b, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
    assert_gone(&pod, &[&a, &b]).await;
}

#[tokio::test]
async fn stop_ends_a_sleeping_guest_with_sigterm() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "stop", ISOLATED).await.unwrap();
    let id = cri
        .run(
            &pod,
            ContainerSpec::wasm("sleeper", "sleep.wasm", &["3600"]),
        )
        .await
        .unwrap();
    pod.wait_log("sleeper", "sleeping", WAIT).await.unwrap();
    let t = Instant::now();
    cri.stop(&id, 30).await.unwrap();
    let took = t.elapsed();
    let st = cri.status(&id).await.unwrap();
    assert_eq!(st.exit_code, 143, "{st:?}");
    assert!(
        took < Duration::from_secs(10),
        "StopContainer took {took:?}"
    );
    cri.remove_pod(&pod).await.unwrap();
    assert_gone(&pod, &[&id]).await;
}

/// 137 is what an OOM kill gives, but a Wasm container ends with it in other ways too: a
/// SIGKILL from someone else on the node is no OOM kill. (`proc_exit(137)` cannot give it:
/// wasmtime refuses exit statuses of 126 and above, a trap, 134.)
#[tokio::test]
async fn a_wasm_container_ending_with_137_is_not_oom_killed() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "exit137", ISOLATED).await.unwrap();
    let limited = |mut c: ContainerSpec| {
        c.resources = Some(Resources {
            memory_bytes: 64 << 20,
            ..Default::default()
        });
        c
    };
    let exits = cri
        .run(
            &pod,
            limited(ContainerSpec::wasm("exits", "exit.wasm", &["137"])),
        )
        .await
        .unwrap();
    let st = cri.wait_exited(&exits, WAIT).await.unwrap();
    assert_ne!(st.reason, "OOMKilled", "{st:?} {}", pod.log_text("exits"));
    let killed = cri
        .run(
            &pod,
            limited(ContainerSpec::wasm("killed", "sleep.wasm", &["3600"])),
        )
        .await
        .unwrap();
    pod.wait_log("killed", "sleeping", WAIT).await.unwrap();
    for pid in processes_in_cgroups_mentioning(&killed) {
        let out = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "kill {pid}: {out:?}");
    }
    let st = cri.wait_exited(&killed, WAIT).await.unwrap();
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_ne!(st.reason, "OOMKilled", "{st:?}");
    cri.remove_pod(&pod).await.unwrap();
    assert_gone(&pod, &[&exits, &killed]).await;
}

#[tokio::test]
async fn memory_hog_is_oom_killed() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "oom", ISOLATED).await.unwrap();
    let mut hog = ContainerSpec::wasm("hog", "memhog.wasm", &[]);
    hog.resources = Some(Resources {
        memory_bytes: 64 << 20,
        ..Default::default()
    });
    let hog = cri.run(&pod, hog).await.unwrap();
    let st = cri.wait_exited(&hog, WAIT).await.unwrap();
    let log = pod.log_text("hog");
    assert_eq!(st.exit_code, 137, "{st:?} {log}");
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    // The engine denied the grow (its message), leaving the guest most of the cgroup's limit
    // after what the process itself holds; the kernel did not have to kill anything.
    assert!(log.contains("out of memory"), "{log}");
    assert!(
        log.contains("allocated 40 MiB"),
        "the hog got close to its limit: {log}"
    );
    assert!(
        !log.contains("allocated 64 MiB"),
        "the hog stayed under its limit: {log}"
    );
    cri.remove_pod(&pod).await.unwrap();
    assert_gone(&pod, &[&hog]).await;
}

#[tokio::test]
async fn cpu_limit_holds() {
    let _cores = CPU.lock().await;
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "cpu", ISOLATED).await.unwrap();
    let mut spin = ContainerSpec::wasm("spin200", "spin.wasm", &[]);
    spin.resources = Some(Resources {
        cpu_millis: 200,
        ..Default::default()
    });
    let id = cri.run(&pod, spin).await.unwrap();
    pod.wait_log("spin200", "spinning", WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // From the cgroup: containerd-shim's stats collector reads only v2's cpu.stat, and these
    // machines are v1.
    let before = (Instant::now(), cgroup_cpu_ns(&id));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cgroup_cpu_ns(&id) - before.1;
    let share = used as f64 / before.0.elapsed().as_nanos() as f64;
    eprintln!("isolated cpu share, 200m: {share:.3}");
    assert!((0.12..0.30).contains(&share), "200m used {share:.3} cores");
    cri.stop(&id, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
    assert_gone(&pod, &[&id]).await;
}

#[tokio::test]
async fn a_command_that_is_neither_wasm_nor_native_is_refused() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "neither", ISOLATED).await.unwrap();
    let c = ContainerSpec::wasm("text", "etc/greeting.txt", &[]);
    let id = cri.create(&pod, c).await.unwrap();
    let err = cri.start(&id).await.expect_err("StartContainer must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("/etc/greeting.txt is neither a WebAssembly module nor a native executable"),
        "{msg}"
    );
    let c = ContainerSpec::wasm("missing", "missing.wasm", &[]);
    let id2 = cri.create(&pod, c).await.unwrap();
    let err = cri.start(&id2).await.expect_err("StartContainer must fail");
    assert!(
        format!("{err:#}").contains("/missing.wasm does not exist in the image"),
        "{err:#}"
    );
    cri.remove_pod(&pod).await.unwrap();
    assert_gone(&pod, &[&id, &id2]).await;
}

#[tokio::test]
async fn serves_http_on_the_pod_ip_and_drains_on_stop() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod_networked(&bed, "http", ISOLATED).await.unwrap();
    let spec = ContainerSpec {
        name: "server".into(),
        image: HTTP_HANDLER.into(),
        ..Default::default()
    };
    let id = cri.run(&pod, spec).await.unwrap();
    let addr = format!("{}:8080", cri.pod_ip(&pod).await.unwrap());
    let deadline = Instant::now() + WAIT;
    let reply = loop {
        match get(&addr, "/").await {
            Ok(r) => break r,
            Err(e) if Instant::now() > deadline => {
                panic!("{addr}: {e:#}; log: {}", pod.log_text("server"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "hello from a wasmpod http handler\n");
    cri.stop(&id, 10).await.unwrap();
    let st = cri.status(&id).await.unwrap();
    assert_eq!(st.exit_code, 0, "a drained server ends cleanly: {st:?}");
    cri.remove_pod(&pod).await.unwrap();
    assert_gone(&pod, &[&id]).await;
}

#[tokio::test]
async fn a_broken_module_or_setting_fails_the_start() {
    // The shim compiles the module before the container's process exists, as the pod host
    // does: the reason is in the start error (what `kubectl describe pod` shows).
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "broken", ISOLATED).await.unwrap();
    let id = cri
        .create(&pod, ContainerSpec::wasm("broken", "broken.wasm", &[]))
        .await
        .unwrap();
    let err = cri.start(&id).await.expect_err("StartContainer must fail");
    assert!(
        format!("{err:#}").contains("module /broken.wasm: invalid WebAssembly"),
        "{err:#}"
    );
    let mut bad = ContainerSpec::wasm("badenv", "hello.wasm", &[]);
    bad.env = vec![("WASMPOD_HTTP_ADDRESS".into(), "nowhere".into())];
    let bad = cri.create(&pod, bad).await.unwrap();
    let err = cri.start(&bad).await.expect_err("StartContainer must fail");
    assert!(
        format!("{err:#}").contains("WASMPOD_HTTP_ADDRESS=nowhere"),
        "{err:#}"
    );
    cri.remove_pod(&pod).await.unwrap();
    assert_gone(&pod, &[&id, &bad]).await;
}

#[tokio::test]
async fn a_wasm_artifact_runs_next_to_a_native_sidecar() {
    // The module is a layer in containerd's content store, not a file: the shim reads it
    // through containerd's API as the pod host does.
    let (bed, mut cri) = connect().await;
    let artifact = bed.image("hello-artifact");
    cri.pull(&artifact).await.expect("PullImage");
    let pod = cri.run_pod(&bed, "artifact", ISOLATED).await.unwrap();
    let side = cri
        .run(&pod, sidecar("side", "echo \"$GREETING\""))
        .await
        .unwrap();
    let app = ContainerSpec {
        name: "app".into(),
        image: artifact,
        command: vec!["hello.wasm".into()],
        ..Default::default()
    };
    let app = cri.run(&pod, app).await.unwrap();
    let st = cri.wait_exited(&app, WAIT).await.unwrap();
    assert_eq!(st.exit_code, 0, "{st:?} {}", pod.log_text("app"));
    assert_eq!(pod.log_text("app"), "hello from wasmpod");
    let st = cri.wait_exited(&side, WAIT).await.unwrap();
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(pod.log_text("side"), "hello from the sidecar");
    cri.remove_pod(&pod).await.unwrap();
    assert_gone(&pod, &[&app, &side]).await;
}

/// With `SystemdCgroup = true` (kind's nodes, the kubelet's systemd driver) containerd gives
/// the isolated host `slice:prefix:name`. These machines, like kind's nodes, have no systemd on
/// D-Bus: each container's process must still run, in the path systemd would give its scope.
#[tokio::test]
async fn systemd_cgroup_paths_work_without_dbus() {
    let (bed, mut cri) = connect().await;
    // '-' separates slice levels in systemd names, so the unique part has none.
    let slice = format!("wasmpod_e2e-pod{}.slice", unique("isd").replace('-', "_"));
    let pod = cri
        .run_pod_in(&bed, "systemd", "wasmtime-isolated-systemd", &slice)
        .await
        .unwrap();
    let side = cri
        .run(
            &pod,
            sidecar("side", "echo \"$GREETING\"; exec /bin/busybox sleep 3600"),
        )
        .await
        .unwrap();
    let app = cri
        .run(&pod, ContainerSpec::wasm("app", "sleep.wasm", &["3600"]))
        .await
        .unwrap();
    pod.wait_log("app", "sleeping", WAIT).await.unwrap();
    pod.wait_log("side", "hello from the sidecar", WAIT)
        .await
        .unwrap();
    for id in [&app, &side] {
        let pids = processes_in_cgroups_mentioning(id);
        assert!(!pids.is_empty(), "no process in a cgroup of {id}");
        let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap();
        let want = format!("/wasmpod_e2e.slice/{slice}/cri-containerd-{id}.scope");
        // Controller hierarchies; youki's cgroupfs driver joins no named one (name=systemd).
        assert!(
            cgroups
                .lines()
                .filter(|l| !l.starts_with("0::") && !l.contains(":name="))
                .all(|l| l.ends_with(&want)),
            "every v1 controller puts {id} in {want}:\n{cgroups}"
        );
    }
    cri.stop(&app, 0).await.unwrap();
    cri.stop(&side, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
    assert_gone(&pod, &[&app, &side]).await;
    // The pod's slice is the kubelet's to remove; here the test plays the kubelet.
    for dir in cgroups_mentioning(&slice).iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}
