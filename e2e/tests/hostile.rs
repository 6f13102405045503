//! Hostile images, a hostile writer of the compile cache, and failures the shim must not paper
//! over. The shims run as root in the node's mount namespace: each of these must end in a
//! clear error for that one container (or pod), promptly, with nothing of the node's read or
//! run, and the shim still serving the pod's other containers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::ContainerState;
use tokio::sync::Mutex;
use wasmpod_e2e::*;

/// Where the hostile image's links point on the node (e2e/testbed.sh hostile_images): a real
/// module, so a shim that followed them out of the image would run it.
const NODE_MODULE: &str = "/var/tmp/wasmpod-e2e-node/hello.wasm";
const HELLO: &str = "hello from wasmpod";
/// How long a refusal may take: a FIFO or a device must not hold the shim.
const PROMPT: Duration = Duration::from_secs(10);

/// The cache tests change the cache directory and its entries; one at a time.
static CACHE: Mutex<()> = Mutex::const_new(());

fn workload(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip1/release")
        .join(name)
}

/// Creates and starts a container that must be refused; the status message and how long the
/// refusal took. A shim that hangs fails the test rather than hanging it.
async fn refused(cri: &mut Cri, pod: &Pod, spec: ContainerSpec) -> (String, Duration) {
    let name = spec.name.clone();
    let id = cri.create(pod, spec).await.expect("CreateContainer");
    let t = Instant::now();
    let started = tokio::time::timeout(3 * PROMPT, cri.start(&id))
        .await
        .unwrap_or_else(|_| panic!("StartContainer of {name} hung for {:?}", 3 * PROMPT));
    let took = t.elapsed();
    assert!(started.is_err(), "{name} must not start");
    let status = cri.status(&id).await.expect("status");
    assert_eq!(status.reason, "StartError", "{name}: {status:?}");
    (status.message, took)
}

/// The neighbour is still running, and the shim still starts new containers.
async fn pod_still_served(cri: &mut Cri, pod: &Pod, neighbour: &str, image: &str) {
    let s = cri.status(neighbour).await.unwrap();
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
    let spec = ContainerSpec {
        name: "after".into(),
        image: image.to_string(),
        command: vec!["/hello.wasm".into()],
        ..Default::default()
    };
    let id = cri.run(pod, spec).await.expect("a new container starts");
    let st = cri.wait_exited(&id, EXIT_WAIT).await.unwrap();
    assert_eq!(
        (st.exit_code, pod.log_text("after").as_str()),
        (0, HELLO),
        "{st:?}"
    );
}

/// Removes the pod as the kubelet does; its shim must be gone with it.
async fn remove(cri: &mut Cri, pod: &Pod) {
    cri.remove_pod(pod).await.unwrap();
    assert_shim_gone(&pod.id).await;
}

fn sleeper() -> ContainerSpec {
    ContainerSpec::wasm("sleeper", "sleep.wasm", &["3600"])
}

#[tokio::test]
async fn hostile_commands_get_a_start_error_and_nothing_of_the_node() {
    std::fs::create_dir_all(Path::new(NODE_MODULE).parent().unwrap()).unwrap();
    std::fs::copy(workload("hello.wasm"), NODE_MODULE).unwrap();
    let (bed, mut cri) = connect().await;
    let image = bed.image("hostile");
    cri.pull(&image).await.expect("PullImage");
    let missing = "does not exist in the image";
    let cases: &[(&str, &str)] = &[
        // Links to a module on the node: absolute, climbing with .., through a link to /.
        ("/node.wasm", missing),
        ("/up.wasm", missing),
        ("/h/var/tmp/wasmpod-e2e-node/hello.wasm", missing),
        // The node's files and the shim itself.
        ("/hostname", missing),
        ("/h/etc/hostname", missing),
        ("/shim", missing),
        ("/h/proc/self/exe", missing),
        // What would never end or never answer.
        ("/zero.wasm", missing),
        (
            "/device.wasm",
            "is not a regular file (it is a character device)",
        ),
        ("/fifo.wasm", "is not a regular file (it is a FIFO)"),
        ("/loop.wasm", "has more than 40 levels of symbolic links"),
    ];
    for handler in [HANDLER, ISOLATED] {
        let pod = cri
            .run_pod(&bed, &format!("hostile-{handler}"), handler)
            .await
            .unwrap();
        let neighbour = cri.run(&pod, sleeper()).await.unwrap();
        for (i, (command, expected)) in cases.iter().enumerate() {
            let spec = ContainerSpec {
                name: format!("c{i}"),
                image: image.clone(),
                command: vec![command.to_string()],
                ..Default::default()
            };
            let (message, took) = refused(&mut cri, &pod, spec).await;
            assert!(
                message.contains(&format!("{command} {expected}")),
                "{handler} {command}: {message}"
            );
            assert!(took < PROMPT, "{handler} {command}: refused after {took:?}");
        }
        // A module larger than the container may use is refused before it is read.
        let mut huge = ContainerSpec {
            name: "huge".into(),
            image: image.clone(),
            command: vec!["/huge.wasm".into()],
            ..Default::default()
        };
        huge.resources = Some(Resources {
            memory_bytes: 32 << 20,
            ..Default::default()
        });
        let (message, _) = refused(&mut cri, &pod, huge).await;
        assert!(
            message.contains(
                "/huge.wasm is 41943048 bytes, more than the 33554432 bytes of the container's \
                 memory limit"
            ),
            "{handler}: {message}"
        );
        pod_still_served(&mut cri, &pod, &neighbour, &image).await;
        remove(&mut cri, &pod).await;
    }
}

#[tokio::test]
async fn an_artifact_layer_larger_than_the_memory_limit_is_refused_unread() {
    let (bed, mut cri) = connect().await;
    let image = bed.image("huge-artifact");
    cri.pull(&image).await.expect("PullImage");
    for handler in [HANDLER, ISOLATED] {
        let pod = cri
            .run_pod(&bed, &format!("huge-artifact-{handler}"), handler)
            .await
            .unwrap();
        let spec = ContainerSpec {
            name: "huge".into(),
            image: image.clone(),
            command: vec!["huge-layer.wasm".into()],
            resources: Some(Resources {
                memory_bytes: 16 << 20,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (message, took) = refused(&mut cri, &pod, spec).await;
        assert!(
            message.contains(
                "layer huge-layer.wasm is 25165832 bytes, more than the 16777216 bytes of the \
                 container's memory limit"
            ),
            "{handler}: {message}"
        );
        assert!(took < PROMPT, "{handler}: refused after {took:?}");
        remove(&mut cri, &pod).await;
    }
}

/// The path of the network namespace CRI made for a pod, from PodSandboxStatus's verbose
/// info (the sandbox's runtime spec).
async fn netns_of(cri: &mut Cri, pod: &Pod) -> PathBuf {
    let info = cri
        .runtime
        .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod.id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let text: String = info.values().cloned().collect();
    let start = text
        .find("/var/run/netns/")
        .or_else(|| text.find("/run/netns/"))
        .unwrap_or_else(|| panic!("no netns path in the sandbox info: {text}"));
    let end = text[start..]
        .find(['"', '\\'])
        .map_or(text.len(), |e| start + e);
    PathBuf::from(&text[start..end])
}

/// A pod whose network namespace cannot be entered must not run its guests on the node's
/// network: the container fails to start.
#[tokio::test]
async fn a_network_namespace_that_cannot_be_entered_fails_the_container() {
    let (bed, mut cri) = connect().await;
    let pod = cri
        .run_pod_networked(&bed, "netns-gone", HANDLER)
        .await
        .unwrap();
    let netns = netns_of(&mut cri, &pod).await;
    // What is left at the path is an empty file, no namespace.
    let out = std::process::Command::new("umount")
        .arg(&netns)
        .output()
        .unwrap();
    assert!(out.status.success(), "umount {}: {out:?}", netns.display());
    let (message, _) = refused(
        &mut cri,
        &pod,
        ContainerSpec::wasm("app", "hello.wasm", &[]),
    )
    .await;
    assert!(
        message.contains("cannot enter the pod's network namespace"),
        "{message}"
    );
    remove(&mut cri, &pod).await;
}

/// A pod whose cgroup cannot be joined does not start, rather than run outside its limits.
#[tokio::test]
async fn a_pod_cgroup_that_cannot_be_joined_fails_the_pod() {
    let (bed, mut cri) = connect().await;
    // A cgroup parent under a file of every hierarchy's root: no cgroup can be made there.
    let err = cri
        .run_pod_in(&bed, "cgroup-refused", HANDLER, "/cgroup.procs")
        .await
        .err()
        .expect("RunPodSandbox must fail");
    let err = format!("{err:#}");
    assert!(err.contains("cannot join the pod's cgroup"), "{err}");
    assert!(err.contains("Not a directory"), "{err}");
}

/// HTTP settings the server cannot honour are StartErrors that name the variable, never a
/// panic of the pod's shim.
#[tokio::test]
async fn http_settings_out_of_range_are_clear_errors() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "http-settings", HANDLER).await.unwrap();
    let neighbour = cri.run(&pod, sleeper()).await.unwrap();
    for (i, (name, value, says)) in [
        (
            "WASMPOD_HTTP_REQUEST_TIMEOUT",
            "1e20",
            "not a positive duration",
        ),
        (
            "WASMPOD_HTTP_MAX_CONNECTIONS",
            "0",
            "not a whole number from 1",
        ),
        (
            "WASMPOD_HTTP_MAX_HEADER_BYTES",
            "10",
            "not a whole number from 1024",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut spec = ContainerSpec::wasm(&format!("app-{i}"), "hello.wasm", &[]);
        spec.env = vec![(name.into(), value.into())];
        let (message, took) = refused(&mut cri, &pod, spec).await;
        assert!(
            message.contains(&format!("{name}={value}: {says}")),
            "{message}"
        );
        assert!(took < PROMPT, "refused after {took:?}");
    }
    pod_still_served(&mut cri, &pod, &neighbour, WORKLOADS).await;
    remove(&mut cri, &pod).await;
}

/// The cache entry of a workload module (the cache names entries by the module's SHA-256).
fn entry_of(bed: &Bed, module: &str) -> Option<PathBuf> {
    let digest = sha256_hex(&std::fs::read(workload(module)).unwrap());
    std::fs::read_dir(&bed.cache_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "cwasm")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&digest))
        })
}

/// Runs echo.wasm (with `arg`) in a fresh pod; its log.
async fn echo(arg: &str) -> String {
    let (pod, status) = run_to_exit(
        "cache-echo",
        ContainerSpec::wasm("echo", "echo.wasm", &[arg]),
    )
    .await;
    let log = pod.log_text("echo");
    assert_eq!(status.exit_code, 0, "{log}");
    log
}

/// Both modules' genuine entries, by running them.
async fn entries(bed: &Bed) -> (PathBuf, PathBuf) {
    echo("first").await;
    let (_, status) = run_to_exit(
        "cache-exit",
        ContainerSpec::wasm("exit", "exit.wasm", &["5"]),
    )
    .await;
    assert_eq!(status.exit_code, 5);
    (
        entry_of(bed, "echo.wasm").expect("echo's entry"),
        entry_of(bed, "exit.wasm").expect("exit's entry"),
    )
}

/// Entries the shim did not write for that module are never run: another module's genuine
/// entry put in its place, a link to one, and a lock file linked to where the shim must not
/// write.
#[tokio::test]
async fn forged_and_linked_cache_entries_are_never_loaded() {
    let _one = CACHE.lock().await;
    let bed = Bed::from_env();
    let (echo_entry, exit_entry) = entries(&bed).await;
    // exit.wasm's code under echo.wasm's name: had it loaded, "echo" would exit 0 printing
    // "exiting with 0"... or not print "args:" at all.
    std::fs::copy(&exit_entry, &echo_entry).unwrap();
    let log = echo("swapped").await;
    assert!(log.contains("args: swapped"), "{log}");
    // A link to (a copy of) exit's entry.
    let scratch = bed.scratch("cache-link");
    let outside = scratch.join("exit.cwasm");
    std::fs::copy(&exit_entry, &outside).unwrap();
    std::fs::remove_file(&echo_entry).unwrap();
    std::os::unix::fs::symlink(&outside, &echo_entry).unwrap();
    let log = echo("linked").await;
    assert!(log.contains("args: linked"), "{log}");
    let entry = std::fs::symlink_metadata(&echo_entry).unwrap();
    assert!(
        entry.is_file(),
        "the link was replaced by the shim's own entry"
    );
    assert_eq!(
        std::fs::read(&outside).unwrap(),
        std::fs::read(&exit_entry).unwrap()
    );
    // A lock file linked to a path the shim would create if it followed the link.
    let victim = scratch.join("victim");
    let lock = echo_entry.with_extension("lock");
    let _ = std::fs::remove_file(&lock);
    std::fs::remove_file(&echo_entry).unwrap();
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let log = echo("locked").await;
    assert!(log.contains("args: locked"), "{log}");
    assert!(!victim.exists(), "the shim wrote through the linked lock");
    std::fs::remove_file(&lock).unwrap();
}

/// Puts the cache directory's owner and mode back however the test ends.
struct Restore(PathBuf);

impl Drop for Restore {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::os::unix::fs::chown(&self.0, Some(0), Some(0));
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700));
    }
}

/// A cache directory others could write is not used at all: not read (a planted entry stays
/// as it is, unrun) and not written.
#[tokio::test]
async fn a_cache_directory_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let _one = CACHE.lock().await;
    let bed = Bed::from_env();
    let (echo_entry, exit_entry) = entries(&bed).await;
    std::fs::copy(&exit_entry, &echo_entry).unwrap();
    let planted = std::fs::read(&echo_entry).unwrap();
    let _restore = Restore(bed.cache_dir.clone());
    let dir = &bed.cache_dir;
    for (how, change) in [
        ("world-writable", (0, 0o777)),
        ("group-writable", (0, 0o770)),
        ("owned by another user", (65534, 0o700)),
    ] {
        std::os::unix::fs::chown(dir, Some(change.0), None).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(change.1)).unwrap();
        let log = echo(how).await;
        assert!(log.contains(&format!("args: {how}")), "{how}: {log}");
        assert_eq!(
            std::fs::read(&echo_entry).unwrap(),
            planted,
            "{how}: the shim used the cache"
        );
    }
    drop(_restore);
    std::fs::remove_file(&echo_entry).unwrap();
    let log = echo("restored").await;
    assert!(log.contains("args: restored"), "{log}");
    assert!(
        entry_of(&bed, "echo.wasm").is_some(),
        "the cache is used again"
    );
}

/// Guests blocked reading a stdin nobody writes (`stdin: true`, nothing attached: containerd
/// holds the FIFO open) wait in the executor, not on its threads: two of them, as many as
/// the pod's guest threads on this machine, still leave room for a new container, and each
/// ends on StopContainer at once with SIGTERM's status, not at the end of the grace period.
#[tokio::test]
async fn guests_blocked_on_stdin_can_be_stopped_and_park_no_thread() {
    let (bed, mut cri) = connect().await;
    let pod = cri.run_pod(&bed, "stdin-block", HANDLER).await.unwrap();
    let mut readers = Vec::new();
    for name in ["reader-1", "reader-2"] {
        let mut spec = ContainerSpec::wasm(name, "cat.wasm", &[]);
        spec.stdin = true;
        readers.push(cri.run(&pod, spec).await.unwrap());
    }
    let hello = cri
        .run(&pod, ContainerSpec::wasm("hello", "hello.wasm", &[]))
        .await
        .unwrap();
    let st = cri.wait_exited(&hello, EXIT_WAIT).await.unwrap();
    assert_eq!(st.exit_code, 0, "{st:?} {}", pod.log_text("hello"));
    const GRACE: i64 = 20;
    for id in &readers {
        let s = cri.status(id).await.unwrap();
        assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
        let t = Instant::now();
        cri.stop(id, GRACE).await.unwrap();
        let took = t.elapsed();
        let s = cri.status(id).await.unwrap();
        assert_eq!(s.exit_code, 143, "{s:?}");
        assert!(
            took < Duration::from_secs(GRACE as u64 / 2),
            "StopContainer took {took:?}: the guest waited out the grace period"
        );
    }
    remove(&mut cri, &pod).await;
}

/// The unoptimised large module (e2e/workloads `big`, `/slow-compile.wasm` in the workloads
/// image): seconds to compile in a debug shim.
fn slow_module() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/wasm-big/big.wasm")
}

/// Removes the node's compiled entries of a module, so the next start compiles it.
fn forget_compiled(bed: &Bed, module: &Path) {
    let digest = sha256_hex(&std::fs::read(module).unwrap());
    for e in std::fs::read_dir(&bed.cache_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(&digest) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A Create that containerd gave up on (ctr's deadline passes while the module compiles;
/// containerd then deletes the task and asks the shim to shut down) is undone when the
/// compile ends: no container is left behind, unseen, keeping the shim alive.
#[tokio::test]
async fn a_create_containerd_gave_up_on_leaves_no_shim_behind() {
    let _one = CACHE.lock().await;
    let bed = Bed::from_env();
    forget_compiled(&bed, &slow_module());
    let id = unique("abandoned");
    let (code, _, err) = bed
        .ctr(
            "default",
            &[
                "--timeout",
                "2s",
                "run",
                "--runtime",
                "io.containerd.wasmtime.v1",
                WORKLOADS,
                &id,
                "/slow-compile.wasm",
            ],
        )
        .unwrap();
    let _ = bed.ctr("default", &["container", "rm", &id]);
    assert_ne!(
        code, 0,
        "the compile must outlast ctr's deadline for this test to mean anything: {err}"
    );
    assert!(
        eventually(Duration::from_secs(180), || shim_processes(&id).is_empty()).await,
        "the shim of the abandoned container is still running: {:?}",
        shim_processes(&id)
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&id), "a mount of {id} is left:\n{mounts}");
}

/// While modules compile, the shim keeps answering the pod's other calls: two starts of a
/// large module at once (as many as the shim has task-service threads here) do not hold up
/// the stats of a running neighbour.
#[tokio::test]
async fn compiling_does_not_hold_up_the_pod_s_other_calls() {
    let _one = CACHE.lock().await;
    let (bed, mut cri) = connect().await;
    forget_compiled(&bed, &slow_module());
    let pod = cri.run_pod(&bed, "compiling", HANDLER).await.unwrap();
    let neighbour = cri.run(&pod, sleeper()).await.unwrap();
    let t = Instant::now();
    let creates: Vec<_> = ["slow-1", "slow-2"]
        .into_iter()
        .map(|name| {
            let pod = pod.clone();
            tokio::spawn(async move {
                let (_, mut cri) = connect().await;
                // CRI creates the task, and so compiles, at StartContainer.
                cri.run(&pod, ContainerSpec::wasm(name, "slow-compile.wasm", &[]))
                    .await
                    .map(|_| Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    cri.cpu_ns(&neighbour).await.expect("ContainerStats");
    let answered = asked.elapsed();
    let mut compiled = Duration::ZERO;
    for c in creates {
        let done = c.await.unwrap().expect("the large module starts");
        compiled = compiled.max(done - t);
    }
    assert!(
        compiled > Duration::from_secs(2),
        "the compiles ({compiled:?}) must take long enough for this test to mean anything"
    );
    assert!(
        answered < compiled / 2,
        "ContainerStats took {answered:?} while the modules compiled for {compiled:?}"
    );
    remove(&mut cri, &pod).await;
}

/// A container with `runAsUser`/`runAsGroup` reads what that user may read, not what root
/// may: the pod host runs its guest's file operations with the container's identity.
#[tokio::test]
async fn a_non_root_container_has_its_user_s_file_access_only() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let (bed, mut cri) = connect().await;
    let dir = bed.scratch("run-as");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, owner) in [("root-only", 0), ("theirs", 4321)] {
        let f = dir.join(name);
        std::fs::write(&f, format!("{name} text\n")).unwrap();
        chown(&f, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let pod = cri.run_pod(&bed, "run-as", HANDLER).await.unwrap();
    for (i, (file, run_as, readable)) in [
        ("root-only", Some((4321, 4321)), false),
        ("theirs", Some((4321, 4321)), true),
        ("root-only", None, true),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("reader-{i}");
        let path = format!("/data/{file}");
        let mut spec = ContainerSpec::wasm(&name, "readfile.wasm", &[&path]);
        spec.mounts = vec![(dir.clone(), "/data".into(), true)];
        spec.run_as = run_as;
        let id = cri.run(&pod, spec).await.unwrap();
        let st = cri.wait_exited(&id, EXIT_WAIT).await.unwrap();
        let log = pod.log_text(&name);
        if readable {
            assert_eq!(st.exit_code, 0, "{file} as {run_as:?}: {log}");
            assert!(log.contains(&format!("{file} text")), "{log}");
        } else {
            assert_eq!(st.exit_code, 1, "{file} as {run_as:?}: {log}");
            assert!(log.contains("ermission denied"), "{log}");
        }
    }
    remove(&mut cri, &pod).await;
}
