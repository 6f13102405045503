//! Wasm pods through containerd's CRI, called exactly as the kubelet calls it, with the
//! runtime handler `wasmtime`. Runs against the containerd that e2e/run.sh started.

use std::time::{Duration, Instant};

use wasmpod_e2e::*;

#[tokio::test]
async fn hello_reaches_the_cri_log() {
    let (pod, status) = run_to_exit("hello", ContainerSpec::wasm("hello", "hello.wasm", &[])).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert_eq!(status.reason, "Completed");
    assert_eq!(
        pod.log("hello"),
        vec![("stdout".to_string(), "hello from wasmpod".to_string())]
    );
}

#[tokio::test]
async fn image_entrypoint_runs_without_a_command() {
    let spec = ContainerSpec {
        name: "entry".into(),
        image: WORKLOADS.into(),
        ..Default::default()
    };
    let (pod, status) = run_to_exit("entry", spec).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert_eq!(pod.log_text("entry"), "hello from wasmpod");
}

#[tokio::test]
async fn exit_code_is_reported() {
    let (_, status) = run_to_exit("exit", ContainerSpec::wasm("exit", "exit.wasm", &["42"])).await;
    assert_eq!(status.exit_code, 42);
    assert_eq!(status.reason, "Error");
}

#[tokio::test]
async fn args_env_and_cwd_reach_the_guest() {
    let mut spec = ContainerSpec::wasm("echo", "echo.wasm", &["one", "two words"]);
    spec.env = vec![
        ("WASMPOD_GREETING".into(), "hi there".into()),
        ("WASMPOD_EMPTY".into(), String::new()),
    ];
    let (pod, status) = run_to_exit("echo", spec).await;
    assert_eq!(status.exit_code, 0, "{:?}", pod.log_text("echo"));
    let log = pod.log_text("echo");
    assert!(log.contains("args: one two words"), "{log}");
    assert!(log.contains("env: WASMPOD_GREETING=hi there"), "{log}");
    assert!(log.contains("env: WASMPOD_EMPTY="), "{log}");
    assert!(log.contains("cwd: /"), "{log}");
}

#[tokio::test]
async fn stderr_is_logged_as_stderr() {
    let (pod, status) =
        run_to_exit("stderr", ContainerSpec::wasm("stderr", "stderr.wasm", &[])).await;
    assert_eq!(status.exit_code, 0);
    let log = pod.log("stderr");
    assert!(
        log.contains(&("stdout".into(), "this goes to stdout".into())),
        "{log:?}"
    );
    assert!(
        log.contains(&("stderr".into(), "this goes to stderr".into())),
        "{log:?}"
    );
}

#[tokio::test]
async fn image_files_are_readable_from_the_rootfs() {
    let (pod, status) = run_to_exit(
        "rootfs",
        ContainerSpec::wasm("rootfs", "readfile.wasm", &["/etc/greeting.txt"]),
    )
    .await;
    assert_eq!(status.exit_code, 0, "{}", pod.log_text("rootfs"));
    assert_eq!(pod.log_text("rootfs"), "hello from a read-only file");
}

#[tokio::test]
async fn rootfs_is_read_only() {
    let (pod, status) = run_to_exit(
        "rootfs-ro",
        ContainerSpec::wasm("rootfs-ro", "writefile.wasm", &["/etc/new.txt", "x"]),
    )
    .await;
    assert_eq!(status.exit_code, 1, "{}", pod.log_text("rootfs-ro"));
    assert!(pod
        .log_text("rootfs-ro")
        .contains("cannot write /etc/new.txt"));
}

#[tokio::test]
async fn mounts_honour_read_only() {
    let bed = Bed::from_env();
    let data = bed.scratch("data");
    std::fs::write(data.join("in.txt"), "from the host\n").unwrap();
    let out = bed.scratch("out");

    let mut read = ContainerSpec::wasm("read", "readfile.wasm", &["/data/in.txt"]);
    read.mounts = vec![(data.clone(), "/data".into(), true)];
    let (pod, status) = run_to_exit("mount-read", read).await;
    assert_eq!(status.exit_code, 0, "{}", pod.log_text("read"));
    assert_eq!(pod.log_text("read"), "from the host");

    let mut write_ro = ContainerSpec::wasm("write-ro", "writefile.wasm", &["/data/new.txt", "x"]);
    write_ro.mounts = vec![(data.clone(), "/data".into(), true)];
    let (pod, status) = run_to_exit("mount-write-ro", write_ro).await;
    assert_eq!(status.exit_code, 1, "{}", pod.log_text("write-ro"));
    assert!(!data.join("new.txt").exists());

    let mut write = ContainerSpec::wasm("write", "writefile.wasm", &["/out/new.txt", "kept"]);
    write.mounts = vec![(out.clone(), "/out".into(), false)];
    let (pod, status) = run_to_exit("mount-write", write).await;
    assert_eq!(status.exit_code, 0, "{}", pod.log_text("write"));
    assert_eq!(
        std::fs::read_to_string(out.join("new.txt")).unwrap(),
        "kept"
    );
}

#[tokio::test]
async fn preview2_component_runs() {
    let (pod, status) = run_to_exit("p2", ContainerSpec::wasm("p2", "hello-p2.wasm", &[])).await;
    assert_eq!(status.exit_code, 0, "{}", pod.log_text("p2"));
    assert_eq!(pod.log_text("p2"), "hello from wasmpod");
}

#[tokio::test]
async fn trap_gives_nonzero_exit_and_message_on_stderr() {
    let (pod, status) = run_to_exit("trap", ContainerSpec::wasm("trap", "trap.wasm", &[])).await;
    assert_eq!(status.exit_code, 134, "{status:?}");
    let log = pod.log("trap");
    assert!(
        log.contains(&("stdout".into(), "about to trap".into())),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|(s, l)| s == "stderr" && l.contains("wasm trap")),
        "{log:?}"
    );
}

#[tokio::test]
async fn missing_module_is_a_clear_start_error() {
    let err = start_error("missing", ContainerSpec::wasm("missing", "nope.wasm", &[])).await;
    assert!(
        err.contains(
            "image wasmpod.test/workloads:1 has no Wasm module: /nope.wasm does not exist"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn non_wasm_file_is_a_clear_start_error() {
    let err = start_error(
        "notwasm",
        ContainerSpec::wasm("notwasm", "notwasm.wasm", &[]),
    )
    .await;
    assert!(
        err.contains("/notwasm.wasm is not a WebAssembly module"),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_module_is_a_clear_start_error() {
    let err = start_error("broken", ContainerSpec::wasm("broken", "broken.wasm", &[])).await;
    assert!(
        err.contains("module /broken.wasm: invalid WebAssembly"),
        "{err}"
    );
}

#[tokio::test]
async fn native_container_is_refused_with_a_clear_message() {
    let mut spec = ContainerSpec::wasm("native", "native", &[]);
    spec.command = vec!["/native".into()];
    let err = start_error("native", spec).await;
    assert!(err.contains("native ELF executable"), "{err}");
    assert!(err.contains("runs only Wasm containers"), "{err}");
}

#[tokio::test]
async fn two_containers_share_one_shim_process() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "shared", HANDLER).await.unwrap();
    let sleeper = cri
        .run(
            &pod,
            ContainerSpec::wasm("sleeper", "sleep.wasm", &["3600"]),
        )
        .await
        .unwrap();
    let hello = cri
        .run(&pod, ContainerSpec::wasm("hello", "hello.wasm", &[]))
        .await
        .unwrap();
    let st = cri.wait_exited(&hello, EXIT_WAIT).await.unwrap();
    assert_eq!(st.exit_code, 0);
    pod.wait_log("sleeper", "sleeping", EXIT_WAIT)
        .await
        .unwrap();

    // One process serves the pod (started for the sandbox); none for the containers.
    assert_eq!(shim_processes(&pod.id).len(), 1, "one shim for the pod");
    assert!(shim_processes(&sleeper).is_empty());
    assert!(shim_processes(&hello).is_empty());
    assert_eq!(
        cri.status(&sleeper).await.unwrap().state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );
    cri.stop(&sleeper, 10).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn stop_ends_a_sleeping_guest_with_sigterm() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "stop-sleep", HANDLER).await.unwrap();
    let id = cri
        .run(
            &pod,
            ContainerSpec::wasm("sleeper", "sleep.wasm", &["3600"]),
        )
        .await
        .unwrap();
    pod.wait_log("sleeper", "sleeping", EXIT_WAIT)
        .await
        .unwrap();
    let started = Instant::now();
    // A generous grace period: if SIGTERM did not stop the guest, CRI would wait all of it
    // before sending SIGKILL, and the exit code would be 137.
    cri.stop(&id, 30).await.unwrap();
    let took = started.elapsed();
    let st = cri.status(&id).await.unwrap();
    assert_eq!(st.exit_code, 143, "{st:?}");
    assert!(
        took < Duration::from_secs(10),
        "StopContainer took {took:?}"
    );
    cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn stop_with_no_grace_kills_a_spinning_guest() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "stop-spin", HANDLER).await.unwrap();
    let id = cri
        .run(&pod, ContainerSpec::wasm("spin", "spin.wasm", &[]))
        .await
        .unwrap();
    pod.wait_log("spin", "spinning", EXIT_WAIT).await.unwrap();
    cri.stop(&id, 0).await.unwrap();
    let st = cri.wait_exited(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(st.exit_code, 137, "{st:?}");
    cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn removing_the_pod_leaves_nothing_behind() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "cleanup", HANDLER).await.unwrap();
    let a = cri
        .run(&pod, ContainerSpec::wasm("done", "hello.wasm", &[]))
        .await
        .unwrap();
    let b = cri
        .run(
            &pod,
            ContainerSpec::wasm("sleeper", "sleep.wasm", &["3600"]),
        )
        .await
        .unwrap();
    cri.wait_exited(&a, EXIT_WAIT).await.unwrap();
    pod.wait_log("sleeper", "sleeping", EXIT_WAIT)
        .await
        .unwrap();
    assert_eq!(shim_processes(&pod.id).len(), 1);
    assert!(
        !mounts_mentioning(&b).is_empty(),
        "the running container's rootfs is mounted"
    );

    // The kubelet stops containers, then the sandbox, then removes it.
    cri.stop(&b, 10).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();

    assert!(
        eventually(Duration::from_secs(10), || shim_processes(&pod.id)
            .is_empty())
        .await,
        "shim still running after RemovePodSandbox"
    );
    for id in [&pod.id, &a, &b] {
        assert_eq!(
            mounts_mentioning(id),
            Vec::<String>::new(),
            "mounts of {id}"
        );
        assert_eq!(
            cgroups_mentioning(id),
            Vec::<std::path::PathBuf>::new(),
            "cgroups of {id}"
        );
    }
}

#[tokio::test]
async fn container_stats_come_from_the_engine() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "stats", HANDLER).await.unwrap();
    let id = cri
        .run(&pod, ContainerSpec::wasm("spin", "spin.wasm", &[]))
        .await
        .unwrap();
    pod.wait_log("spin", "spinning", EXIT_WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = cri
        .runtime
        .container_stats(k8s_cri::v1::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value)
        .unwrap_or(0);
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .unwrap_or(0);
    // The guest has spun for at least half a second and holds its linear memory.
    assert!(cpu >= 100_000_000, "cpu {cpu} ns");
    assert!(memory >= 64 * 1024, "memory {memory} bytes");
    cri.stop(&id, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
}

#[tokio::test]
async fn corrupt_compile_cache_entries_are_recompiled() {
    let bed = Bed::from_env();
    let (pod, status) =
        run_to_exit("cache-1", ContainerSpec::wasm("echo", "echo.wasm", &["a"])).await;
    assert_eq!(status.exit_code, 0, "{}", pod.log_text("echo"));
    let entries: Vec<_> = std::fs::read_dir(&bed.cache_dir)
        .expect("the shim keeps a compile cache")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert!(
        !entries.is_empty(),
        "no compiled modules in {}",
        bed.cache_dir.display()
    );
    for e in &entries {
        let mut data = std::fs::read(e).unwrap();
        for b in data.iter_mut().skip(64).step_by(97) {
            *b ^= 0x5a;
        }
        std::fs::write(e, data).unwrap();
    }
    let (pod, status) =
        run_to_exit("cache-2", ContainerSpec::wasm("echo", "echo.wasm", &["b"])).await;
    assert_eq!(status.exit_code, 0, "{}", pod.log_text("echo"));
    assert!(pod.log_text("echo").contains("args: b"));
}

/// Runs a pod with one sleeping container under `handler` with the given cgroup parent,
/// checks that the pod's shim sits in the cgroup `want(pod id)` in every hierarchy, ends the
/// pod and waits for the shim and the pod's cgroup to go.
async fn shim_cgroup_of_pod(handler: &str, parent: &str, want: impl Fn(&str) -> String) {
    let (bed, mut cri) = connect().await;
    let pod = cri
        .run_pod_in(&bed, "cgroup", handler, parent)
        .await
        .unwrap();
    let id = cri
        .run(
            &pod,
            ContainerSpec::wasm("sleeper", "sleep.wasm", &["3600"]),
        )
        .await
        .unwrap();
    pod.wait_log("sleeper", "sleeping", EXIT_WAIT)
        .await
        .unwrap();
    let shim = shim_processes(&pod.id);
    assert_eq!(shim.len(), 1);
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", shim[0])).unwrap();
    let want = want(&pod.id);
    assert!(
        cgroups.lines().all(|l| l.ends_with(&want)),
        "every hierarchy puts the shim in {want}:\n{cgroups}"
    );
    cri.stop(&id, 0).await.unwrap();
    cri.remove_pod(&pod).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || shim_processes(&pod.id)
            .is_empty())
        .await,
        "shim still running"
    );
    assert_eq!(
        cgroups_mentioning(&pod.id),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test]
async fn the_pod_shim_lives_in_the_pod_cgroup() {
    let top = unique("pod");
    let parent = format!("/wasmpod-e2e/{top}");
    shim_cgroup_of_pod(HANDLER, &parent, |pod| format!("{parent}/{pod}")).await;
    assert_eq!(
        cgroups_mentioning(&top),
        Vec::<std::path::PathBuf>::new(),
        "pod cgroup removed"
    );
}

/// With the systemd cgroup driver (runtime option `SystemdCgroup = true`), containerd gives the
/// shim `slice:prefix:name`; the shim joins the path systemd would give that scope, so pod
/// metrics and limits line up with the kubelet's on systemd nodes.
#[tokio::test]
async fn the_pod_shim_joins_the_systemd_form_of_the_pod_cgroup() {
    // '-' separates slice levels in systemd names, so the unique part has none.
    let slice = format!("wasmpod_e2e-pod{}.slice", unique("sd").replace('-', "_"));
    shim_cgroup_of_pod("wasmtime-systemd", &slice, |pod| {
        format!("/wasmpod_e2e.slice/{slice}/cri-containerd-{pod}.scope")
    })
    .await;
    assert_eq!(cgroups_mentioning(&slice), Vec::<std::path::PathBuf>::new());
}
