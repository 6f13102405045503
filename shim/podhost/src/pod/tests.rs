//! The pod's transitions and races, against recording doubles of what it needs from outside:
//! no root, containerd or wasmtime. Bundles are real `config.json` files in a temporary
//! directory, as containerd writes them.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::types::mount::Mount;
use tokio::sync::{watch, Notify};
use wasmpod_engine::{Meter, ProcessMemory};

use super::outside::Running;
use super::*;
use crate::cgroup::CgroupError;
use crate::task::code;
use containerd_shim::protos::ttrpc::Code;

const SIGTERM: u32 = libc::SIGTERM as u32;

/// Everything the pod did outside itself, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Recorder(Log);

#[async_trait]
impl Events for Recorder {
    async fn publish(&self, event: Event) {
        self.0.push(match event {
            Event::Created { id, .. } => format!("created {id}"),
            Event::ExecAdded { id, exec_id } => format!("exec-added {id} {exec_id}"),
            Event::Started { id, exec_id } => format!("started {}", who(&id, &exec_id)),
            Event::OutOfMemory { id } => format!("oom {id}"),
            Event::Exited {
                id,
                exec_id,
                status,
                ..
            } => format!("exited {} {status}", who(&id, &exec_id)),
            Event::Deleted { id, status, .. } => format!("deleted {id} {status}"),
        });
    }
}

/// A process as the tests' logs name it: `app`, or `app/e1` for an exec.
fn who(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        id.to_string()
    } else {
        format!("{id}/{exec_id}")
    }
}

struct FakeNode {
    log: Log,
    refuse_cgroup: bool,
}

impl Node for FakeNode {
    fn join_cgroup(
        &self,
        path: &Path,
    ) -> std::result::Result<Option<Arc<ProcessMemory>>, CgroupError> {
        if self.refuse_cgroup {
            return Err(CgroupError::NoHierarchy);
        }
        self.log.push(format!("join {}", path.display()));
        Ok(None)
    }
    fn leave_cgroup(&self) {
        self.log.push("leave".into());
    }
    fn mount_rootfs(&self, _: &[Mount], target: &Path) -> Result<()> {
        self.log.push(format!("mount {}", name(target)));
        Ok(())
    }
    fn unmount(&self, target: &Path) {
        self.log.push(format!("unmount {}", name(target)));
    }
}

/// The bundle directory's name, which the tests give the container's id.
fn name(rootfs: &Path) -> String {
    let bundle = rootfs.parent().unwrap();
    bundle.file_name().unwrap().to_string_lossy().into_owned()
}

/// A gate the test holds closed to catch the pod in the middle of a call.
#[derive(Clone)]
struct Gate {
    open: watch::Sender<bool>,
    entered: Arc<Notify>,
}

impl Gate {
    fn new() -> Self {
        Gate {
            open: watch::channel(true).0,
            entered: Arc::new(Notify::new()),
        }
    }
    fn close(&self) {
        self.open.send_replace(false);
    }
    fn open(&self) {
        self.open.send_replace(true);
    }
    async fn pass(&self) {
        self.entered.notify_one();
        let _ = self.open.subscribe().wait_for(|o| *o).await;
    }
}

/// A guest: ends by itself with `exit` (and OOM, if said), or runs until a signal.
#[derive(Clone, Copy, Default)]
struct Script {
    exit: Option<u32>,
    oom: bool,
    fail_prepare: bool,
}

struct FakeGuests {
    log: Log,
    script: Mutex<Script>,
    compile: Gate,
    ready: Gate,
}

#[async_trait]
impl Guests for FakeGuests {
    type Guest = Script;

    async fn prepare(
        &self,
        id: &str,
        _: &spec::Spec,
        _: &Path,
        _: &Stdio,
    ) -> Result<Prepared<Script>> {
        self.compile.pass().await;
        let script = *self.script.lock().unwrap();
        if script.fail_prepare {
            return Err(Error::NoCommand);
        }
        self.log.push(format!("compiled {id}"));
        Ok(Prepared { guest: script })
    }

    async fn prepare_exec(
        &self,
        name: &str,
        spec: &spec::Spec,
        _: &Path,
        _: &Stdio,
    ) -> Result<Prepared<Script>> {
        // The exec's first argument says how it ends: a status, or "wait" for a signal.
        let arg = spec::args(spec).first().cloned().unwrap_or_default();
        self.log.push(format!("compiled {name}"));
        Ok(Prepared {
            guest: Script {
                exit: arg.parse().ok(),
                ..Default::default()
            },
        })
    }

    async fn ready(&self, _: Option<&Path>) -> Result<()> {
        self.ready.pass().await;
        Ok(())
    }

    fn run(&self, guest: Script, _: Arc<Meter>) -> (Running, Box<dyn Stopper>) {
        self.log.push("run".into());
        let (stop, mut signals) = watch::channel(None);
        let log = self.log.clone();
        let running = Box::pin(async move {
            if let Some(status) = guest.exit {
                return Ended {
                    status,
                    oom: guest.oom,
                };
            }
            let signal = signals.wait_for(Option::is_some).await.unwrap().unwrap();
            log.push(format!("signalled {signal}"));
            Ended {
                status: 128 + signal,
                oom: false,
            }
        });
        (running, Box::new(FakeStop(stop)))
    }
}

/// The guest's end of a stop: the first signal sent.
struct FakeStop(watch::Sender<Option<u32>>);

impl Stopper for FakeStop {
    fn send(&self, signal: u32) {
        self.0
            .send_if_modified(|s| s.is_none() && s.replace(signal).is_none());
    }
}

struct Fixture {
    pod: Arc<Pod<FakeGuests>>,
    /// What the node and the guests saw.
    log: Log,
    /// What containerd was told.
    events: Log,
    exit: Arc<ExitSignal>,
    dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    fixture_with(false)
}

fn fixture_with(refuse_cgroup: bool) -> Fixture {
    let (log, events) = (Log::default(), Log::default());
    let exit = Arc::new(ExitSignal::default());
    let guests = FakeGuests {
        log: log.clone(),
        script: Mutex::new(Script::default()),
        compile: Gate::new(),
        ready: Gate::new(),
    };
    let pod = Pod::new(
        4242,
        Box::new(Recorder(events.clone())),
        Box::new(FakeNode {
            log: log.clone(),
            refuse_cgroup,
        }),
        guests,
        exit.clone(),
    );
    Fixture {
        pod: Arc::new(pod),
        log,
        events,
        exit,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Fixture {
    /// A bundle as CRI makes it, for the pod's sandbox or one of its app containers.
    fn create(&self, id: &str, sandbox: bool) -> Create {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let kind = if sandbox { "sandbox" } else { "container" };
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["/app.wasm"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "annotations": {
                "io.kubernetes.cri.container-type": kind,
                "io.kubernetes.cri.sandbox-id": "sb",
            },
            "linux": {"cgroupsPath": "/kubepods/pod1/sb"},
        });
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        Create {
            id: id.into(),
            bundle: bundle.to_string_lossy().into_owned(),
            rootfs: if sandbox {
                Vec::new()
            } else {
                vec![Mount {
                    type_: "overlay".into(),
                    ..Default::default()
                }]
            },
            ..Default::default()
        }
    }

    fn script(&self, script: Script) {
        *self.pod.guests.script.lock().unwrap() = script;
    }

    async fn exited(&self) -> bool {
        tokio::time::timeout(Duration::from_millis(50), self.exit.wait())
            .await
            .is_ok()
    }
}

fn phase(f: &Fixture, id: &str) -> Phase {
    f.pod.status(id, "").unwrap().phase
}

#[tokio::test]
async fn a_pod_runs_and_the_shim_goes_with_its_last_container() {
    let f = fixture();
    f.pod.create(f.create("sb", true)).await.unwrap();
    f.pod.start("sb", "").await.unwrap();
    f.script(Script {
        exit: Some(0),
        ..Default::default()
    });
    f.pod.create(f.create("app", false)).await.unwrap();
    f.pod.start("app", "").await.unwrap();
    assert_eq!(f.pod.wait("app", "").await.unwrap().status, 0);
    assert_eq!(phase(&f, "app"), Phase::Stopped);
    assert_eq!(
        f.log.take(),
        ["join /kubepods/pod1/sb", "mount app", "compiled app", "run"]
    );

    f.pod.delete("app", "").await.unwrap();
    assert_eq!(f.log.take(), ["unmount app"]);
    f.pod.exit_if_idle();
    assert!(!f.exited().await, "the sandbox still holds the pod");

    f.pod.kill("sb", "", libc::SIGKILL as u32).await.unwrap();
    assert_eq!(f.pod.delete("sb", "").await.unwrap().status, 137);
    f.pod.exit_if_idle();
    assert!(f.exited().await);
    assert_eq!(f.log.take(), ["leave"]);
    assert_eq!(
        f.events.take(),
        [
            "created sb",
            "started sb",
            "created app",
            "started app",
            "exited app 0",
            "deleted app 0",
            "exited sb 137",
            "deleted sb 137"
        ]
    );
}

#[tokio::test]
async fn a_running_command_stops_on_sigterm_and_only_then_can_be_deleted() {
    let f = fixture();
    f.pod.create(f.create("app", false)).await.unwrap();
    f.pod.start("app", "").await.unwrap();
    assert_eq!(phase(&f, "app"), Phase::Running);
    let e = f.pod.delete("app", "").await.unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION, "{e}");
    assert!(matches!(e, Error::StillRunning(_)));

    // Signals a guest cannot act on change nothing.
    for signal in [0, libc::SIGWINCH as u32, libc::SIGCHLD as u32] {
        f.pod.kill("app", "", signal).await.unwrap();
    }
    assert_eq!(phase(&f, "app"), Phase::Running);

    f.pod.kill("app", "", SIGTERM).await.unwrap();
    assert_eq!(f.pod.wait("app", "").await.unwrap().status, 143);
    assert!(f.log.take().contains(&"signalled 15".to_string()));
    let e = f.pod.kill("app", "", SIGTERM).await.unwrap_err();
    assert_eq!(
        code(&e),
        Code::NOT_FOUND,
        "containerd reads this as gone: {e}"
    );
    f.pod.delete("app", "").await.unwrap();
    let e = f.pod.status("app", "").unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND);
}

#[tokio::test]
async fn a_container_killed_before_start_ends_at_once_and_never_starts() {
    let f = fixture();
    f.pod.create(f.create("app", false)).await.unwrap();
    f.pod.kill("app", "", SIGTERM).await.unwrap();
    assert_eq!(f.pod.wait("app", "").await.unwrap().status, 143);
    let e = f.pod.start("app", "").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "container app cannot start: it is Stopped",
        "{e}"
    );
    assert_eq!(code(&e), Code::FAILED_PRECONDITION);
    assert_eq!(f.pod.delete("app", "").await.unwrap().status, 143);
    assert!(
        !f.log.take().contains(&"run".to_string()),
        "the guest never ran"
    );
    assert_eq!(
        f.events.take(),
        ["created app", "exited app 143", "deleted app 143"]
    );
}

#[tokio::test]
async fn a_create_containerd_gave_up_on_is_undone_when_it_ends() {
    let f = fixture();
    f.pod.guests.compile.close();
    let pod = f.pod.clone();
    let create = tokio::spawn({
        let req = f.create("app", false);
        async move { pod.create(req).await }
    });
    f.pod.guests.compile.entered.notified().await;
    // containerd's create timed out: it deletes what it asked for, then shuts the shim down.
    let e = f.pod.delete("app", "").await.unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND);
    f.pod.exit_if_idle();
    assert!(!f.exited().await, "a container is still being created");

    f.pod.guests.compile.open();
    let e = create.await.unwrap().unwrap_err();
    assert!(matches!(e, Error::DeletedWhileCreating(_)), "{e}");
    assert_eq!(f.log.take(), ["mount app", "compiled app", "unmount app"]);
    assert!(f.exited().await, "nothing is left to keep the shim");
    assert!(f.events.take().is_empty(), "containerd is told of nothing");
    assert_eq!(code(&f.pod.status("app", "").unwrap_err()), Code::NOT_FOUND);
}

#[tokio::test]
async fn a_delete_during_start_wins_and_the_guest_never_runs() {
    let f = fixture();
    f.pod.create(f.create("app", false)).await.unwrap();
    f.pod.guests.ready.close();
    let pod = f.pod.clone();
    let start = tokio::spawn(async move { pod.start("app", "").await });
    f.pod.guests.ready.entered.notified().await;
    f.pod.delete("app", "").await.unwrap();
    f.pod.guests.ready.open();
    let e = start.await.unwrap().unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
    assert_eq!(f.log.take(), ["mount app", "compiled app", "unmount app"]);
    assert_eq!(f.events.take(), ["created app", "deleted app 0"]);
}

#[tokio::test]
async fn a_failed_create_leaves_nothing_behind() {
    let f = fixture();
    f.script(Script {
        fail_prepare: true,
        ..Default::default()
    });
    let e = f.pod.create(f.create("app", false)).await.unwrap_err();
    assert_eq!(code(&e), Code::INVALID_ARGUMENT, "{e}");
    assert_eq!(f.log.take(), ["mount app", "unmount app"]);
    assert_eq!(code(&f.pod.status("app", "").unwrap_err()), Code::NOT_FOUND);
    // containerd may try the same id again.
    f.script(Script::default());
    f.pod.create(f.create("app", false)).await.unwrap();
}

#[tokio::test]
async fn twice_the_same_id_or_a_terminal_is_refused() {
    let f = fixture();
    f.pod.create(f.create("app", false)).await.unwrap();
    let e = f.pod.create(f.create("app", false)).await.unwrap_err();
    assert_eq!(code(&e), Code::ALREADY_EXISTS, "{e}");
    let mut tty = f.create("tty", false);
    tty.terminal = true;
    let e = f.pod.create(tty).await.unwrap_err();
    assert_eq!(code(&e), Code::INVALID_ARGUMENT, "{e}");
    assert!(e.to_string().contains("terminal"), "{e}");
}

#[tokio::test]
async fn a_pod_whose_cgroup_cannot_be_joined_is_not_started() {
    let f = fixture_with(true);
    let e = f.pod.create(f.create("sb", true)).await.unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION, "{e}");
    assert_eq!(
        e.to_string(),
        "cannot join the pod's cgroup /kubepods/pod1/sb: no cgroup hierarchy is mounted; the \
         pod is not started outside it"
    );
    f.pod.exit_if_idle();
    assert!(f.exited().await);
    assert!(f.log.take().is_empty(), "no cgroup to leave");
}

#[tokio::test]
async fn an_out_of_memory_end_is_told_before_the_exit() {
    let f = fixture();
    f.script(Script {
        exit: Some(137),
        oom: true,
        ..Default::default()
    });
    f.pod.create(f.create("app", false)).await.unwrap();
    f.pod.start("app", "").await.unwrap();
    assert_eq!(f.pod.wait("app", "").await.unwrap().status, 137);
    // The exit event is published after the state changes; wait for it.
    for _ in 0..100 {
        if f.events.0.lock().unwrap().len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        f.events.take(),
        ["created app", "started app", "oom app", "exited app 137"]
    );
}

#[tokio::test]
async fn a_wait_ends_when_the_container_is_deleted_instead() {
    let f = fixture();
    f.pod.create(f.create("app", false)).await.unwrap();
    let pod = f.pod.clone();
    let wait = tokio::spawn(async move { pod.wait("app", "").await });
    tokio::task::yield_now().await;
    f.pod.delete("app", "").await.unwrap();
    let e = wait.await.unwrap().unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
}

fn exec(id: &str, exec_id: &str, arg: &str) -> Exec {
    let process = serde_json::json!({"args": [arg], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    Exec {
        id: id.into(),
        exec_id: exec_id.into(),
        process: Some(serde_json::from_value(process).unwrap()),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_exec_runs_beside_the_container_and_is_deleted_on_its_own() {
    let f = fixture();
    f.pod.create(f.create("app", false)).await.unwrap();
    f.pod.start("app", "").await.unwrap();
    f.pod.exec(exec("app", "e1", "3")).await.unwrap();
    assert_eq!(f.pod.status("app", "e1").unwrap().phase, Phase::Created);
    f.pod.start("app", "e1").await.unwrap();
    assert_eq!(f.pod.wait("app", "e1").await.unwrap().status, 3);
    assert_eq!(phase(&f, "app"), Phase::Running, "the container runs on");

    f.pod.exec(exec("app", "e2", "wait")).await.unwrap();
    f.pod.start("app", "e2").await.unwrap();
    let e = f.pod.delete("app", "e2").await.unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION, "{e}");
    f.pod.kill("app", "e2", SIGTERM).await.unwrap();
    assert_eq!(f.pod.wait("app", "e2").await.unwrap().status, 143);
    assert_eq!(
        phase(&f, "app"),
        Phase::Running,
        "a signal to an exec is the exec's"
    );
    assert_eq!(f.pod.delete("app", "e2").await.unwrap().status, 143);
    let e = f.pod.status("app", "e2").unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
    assert_eq!(e.to_string(), "exec e2 of container app not found");
    assert_eq!(
        f.events.take(),
        [
            "created app",
            "started app",
            "exec-added app e1",
            "started app/e1",
            "exited app/e1 3",
            "exec-added app e2",
            "started app/e2",
            "exited app/e2 143",
        ]
    );
}

#[tokio::test]
async fn a_container_s_end_ends_its_execs() {
    let f = fixture();
    f.pod.create(f.create("app", false)).await.unwrap();
    f.pod.start("app", "").await.unwrap();
    f.pod.exec(exec("app", "e1", "wait")).await.unwrap();
    f.pod.start("app", "e1").await.unwrap();
    f.pod.exec(exec("app", "e2", "wait")).await.unwrap();
    f.pod.kill("app", "", SIGTERM).await.unwrap();
    assert_eq!(f.pod.wait("app", "").await.unwrap().status, 143);
    assert_eq!(f.pod.wait("app", "e1").await.unwrap().status, 137);
    let e = f.pod.start("app", "e2").await.unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION, "{e}");
    assert_eq!(e.to_string(), "container app is not running");
}

#[tokio::test]
async fn an_exec_needs_a_running_wasm_container_and_an_id_of_its_own() {
    let f = fixture();
    f.pod.create(f.create("sb", true)).await.unwrap();
    f.pod.start("sb", "").await.unwrap();
    let e = f.pod.exec(exec("sb", "e1", "0")).await.unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION, "{e}");

    f.pod.create(f.create("app", false)).await.unwrap();
    let e = f.pod.exec(exec("app", "e1", "0")).await.unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION, "not started yet: {e}");
    f.pod.start("app", "").await.unwrap();
    f.pod.exec(exec("app", "e1", "0")).await.unwrap();
    let e = f.pod.exec(exec("app", "e1", "0")).await.unwrap_err();
    assert_eq!(code(&e), Code::ALREADY_EXISTS, "{e}");
    let e = f.pod.exec(exec("nope", "e1", "0")).await.unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
    let mut tty = exec("app", "e3", "0");
    tty.terminal = true;
    let e = f.pod.exec(tty).await.unwrap_err();
    assert_eq!(code(&e), Code::INVALID_ARGUMENT, "{e}");
}
