//! The task service of the pod host: every container of one pod lives in this process. The
//! sandbox (pause) container is only state; each Wasm container is an async task on the shared
//! engine, run on a guest runtime whose threads sit in the pod's network namespace.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, KillRequest, PidsRequest, PidsResponse, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::Result as TtrpcResult;
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::util::convert_to_any;
use containerd_shim::Context;
use oci_spec::runtime::LinuxResources;
use tokio::sync::watch;

use super::cgroup::{self, PodCgroup};
use super::spec;
use crate::error::Error;
use wasmpod_engine::{Engine, Exit, GuestContext, HttpConfig, Meter, ProcessMemory, Program};
use wasmpod_image::{Containerd, ImageError};
use wasmpod_oci::{LookupError, SizeBound, Tree};

type Result<T> = std::result::Result<T, Error>;

/// Signals a Wasm guest cannot act on and that do not end a process by default.
const IGNORED_SIGNALS: &[u32] = &[
    libc::SIGCHLD as u32,
    libc::SIGCONT as u32,
    libc::SIGURG as u32,
    libc::SIGWINCH as u32,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone, Copy)]
struct Exited {
    status: u32,
    at: SystemTime,
}

enum Kind {
    /// The pod's pause container: it holds the pod, runs nothing.
    Sandbox,
    /// A Wasm container; the compiled program and its context are taken at start.
    Wasm(Option<Box<Prepared>>),
}

/// A Wasm container ready to start.
struct Prepared {
    program: Program,
    ctx: GuestContext,
    /// How an HTTP handler serves (from the container's environment).
    http: HttpConfig,
}

struct Container {
    bundle: String,
    stdin: String,
    stdout: String,
    stderr: String,
    /// The rootfs this shim mounted and must unmount on delete.
    mounted_rootfs: Option<PathBuf>,
    /// The pod's network namespace, from the spec.
    netns: Option<PathBuf>,
    kind: Kind,
    state: State,
    exit: watch::Sender<Option<Exited>>,
    kill: Option<watch::Sender<Option<u32>>>,
    meter: Arc<Meter>,
    /// An HTTP handler: SIGTERM drains it rather than ending it.
    serves_http: bool,
}

impl Container {
    fn exited(&self) -> Option<Exited> {
        *self.exit.borrow()
    }
}

/// The containerd task service for one pod.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    containerd: Containerd,
    pid: u32,
    engine: OnceLock<std::result::Result<Arc<Engine>, String>>,
    guests: OnceLock<tokio::runtime::Handle>,
    containers: Mutex<HashMap<String, Container>>,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    /// The pod's cgroup, once the shim has joined it.
    cgroup: Mutex<Option<PodCgroup>>,
    /// The pod cgroup's memory limit, which every guest's grows are held to as well.
    pod_memory: OnceLock<Arc<ProcessMemory>>,
    /// Containers being created, and whether containerd deleted them meanwhile (it gives up
    /// on a Create that takes too long, e.g. a long compile, and cleans up): such a container
    /// is undone when its Create ends rather than kept, unseen, keeping the shim alive.
    creating: Mutex<HashMap<String, bool>>,
    /// The pod's network namespace, as the sandbox's spec names it.
    pod_netns: Mutex<Option<PathBuf>>,
}

impl Service {
    pub fn new(
        namespace: &str,
        address: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Service {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                containerd: Containerd::new(Path::new(address), namespace),
                pid: std::process::id(),
                engine: OnceLock::new(),
                guests: OnceLock::new(),
                containers: Mutex::new(HashMap::new()),
                publisher,
                exit,
                cgroup: Mutex::new(None),
                pod_memory: OnceLock::new(),
                creating: Mutex::new(HashMap::new()),
                pod_netns: Mutex::new(None),
            }),
        }
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn engine(&self) -> Result<Arc<Engine>> {
        self.inner
            .engine
            .get_or_init(|| Engine::new().map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Internal)
    }

    /// The runtime guests run on. Its threads enter the pod's network namespace as they start,
    /// so sockets a guest opens belong to the pod. Created by the first Wasm container; every
    /// container of a pod shares the sandbox's namespace.
    fn guests(&self, netns: Option<&Path>) -> Result<tokio::runtime::Handle> {
        if let Some(h) = self.inner.guests.get() {
            return Ok(h.clone());
        }
        let ns = netns.map(open_netns).transpose()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            // A guest's poll lasts up to an epoch tick; check timers (throttled guests waking)
            // after every poll instead of every 61.
            .event_interval(1)
            .thread_name("wasmpod-guest")
            .enable_all()
            .on_thread_start(move || {
                if let Some(ns) = &ns {
                    if let Err(e) =
                        nix::sched::setns(ns.as_ref(), nix::sched::CloneFlags::CLONE_NEWNET)
                    {
                        // `open_netns` entered this very namespace already, so this cannot
                        // happen short of the kernel refusing; a guest thread on the node's
                        // network would be worse than losing the pod's process.
                        tracing::error!(
                            "guest thread cannot enter the pod network namespace: {e}; aborting"
                        );
                        std::process::abort();
                    }
                }
            })
            .build()
            .map_err(|e| Error::Internal(format!("cannot start guest runtime: {e}")))?;
        let handle = runtime.handle().clone();
        // The guest runtime lives as long as the process; dropping it from inside the ttrpc
        // runtime at shutdown would panic, so it is deliberately never dropped.
        std::mem::forget(runtime);
        Ok(self.inner.guests.get_or_init(|| handle).clone())
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .inner
            .publisher
            .publish(Context::default(), topic, &self.inner.namespace, event)
            .await
        {
            tracing::warn!("cannot publish {topic}: {e}");
        }
    }

    /// Records a container's end and tells containerd.
    async fn finish(&self, id: &str, status: u32) {
        let at = SystemTime::now();
        {
            let mut containers = self.containers();
            let Some(c) = containers.get_mut(id) else {
                return;
            };
            if c.exited().is_some() {
                return;
            }
            c.state = State::Stopped;
            c.kill = None;
            c.exit.send_replace(Some(Exited { status, at }));
        }
        tracing::info!(id, status, "container exited");
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.to_string(),
                id: id.to_string(),
                pid: self.inner.pid,
                exit_status: status,
                exited_at: MessageField::some(timestamp(at)),
                ..Default::default()
            }),
        )
        .await;
    }

    fn creating(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.inner
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    async fn finish_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let result = self.do_create(&req).await;
        let container = {
            let mut containers = self.containers();
            let deleted = self.creating().remove(&req.id).unwrap_or(false);
            match result {
                Ok(container) if !deleted => {
                    containers.insert(req.id.clone(), container);
                    None
                }
                Ok(container) => Some(container),
                Err(e) => {
                    tracing::warn!("create failed: {e}");
                    drop(containers);
                    if deleted {
                        self.exit_if_idle();
                    }
                    return Err(e);
                }
            }
        };
        if let Some(container) = container {
            tracing::warn!("containerd deleted the container while it was being created; undone");
            if let Some(r) = &container.mounted_rootfs {
                unmount(r);
            }
            drop(container);
            self.exit_if_idle();
            return Err(Error::NotFound(format!(
                "container {} was deleted while it was being created",
                req.id
            )));
        }
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: self.inner.pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(CreateTaskResponse {
            pid: self.inner.pid,
            ..Default::default()
        })
    }

    /// The shim serves the whole pod: it goes once no container is left or being created.
    fn exit_if_idle(&self) {
        let containers = self.containers();
        if !containers.is_empty() || !self.creating().is_empty() {
            return;
        }
        if let Some(mut c) = self
            .inner
            .cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            c.leave();
        }
        self.inner.exit.signal();
    }

    async fn do_create(&self, req: &CreateTaskRequest) -> Result<Container> {
        if req.terminal {
            return Err(Error::InvalidArgument(
                "a terminal (tty: true) is not supported for Wasm containers".into(),
            ));
        }
        let bundle = Path::new(&req.bundle);
        let spec = spec::load(bundle)?;
        let (exit, _) = watch::channel(None);
        let mut container = Container {
            bundle: req.bundle.clone(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            mounted_rootfs: None,
            netns: self.netns(&spec),
            kind: Kind::Sandbox,
            state: State::Created,
            exit,
            kill: None,
            meter: Arc::new(Meter::new(spec::limits(&spec))),
            serves_http: false,
        };
        // The process belongs in the cgroup of the pod (or of a standalone container), not
        // of its app containers, which are no processes of their own.
        if spec::is_sandbox(&spec) || !spec::in_pod(&spec) {
            self.join_cgroup(&spec)?;
        }
        if spec::is_sandbox(&spec) {
            return Ok(container);
        }
        if let Some(pod) = self.inner.pod_memory.get() {
            container.meter.set_process_memory(pod.clone());
        }

        let rootfs = spec::rootfs(&spec, bundle);
        if !req.rootfs.is_empty() {
            mount_rootfs(&req.rootfs, &rootfs)?;
            container.mounted_rootfs = Some(rootfs.clone());
        }
        // From here on, a failure must not leave the mount behind.
        let prepared = self.prepare(&req.id, &spec, &rootfs, req).await;
        match prepared {
            Ok(p) => {
                container.serves_http = matches!(p.program, Program::Http(_));
                container.kind = Kind::Wasm(Some(Box::new(p)));
                Ok(container)
            }
            Err(e) => {
                if let Some(r) = &container.mounted_rootfs {
                    unmount(r);
                }
                Err(e)
            }
        }
    }

    /// The network namespace a container's guests run in. The sandbox's spec names the pod's
    /// (CNI's `/var/run/netns/cni-…`); app containers get `/proc/<sandbox pid>/ns/net` from
    /// containerd, and the sandbox "process" is this shim, in the host's namespace. So app
    /// containers use the namespace their sandbox named.
    fn netns(&self, spec: &spec::Spec) -> Option<PathBuf> {
        let named = spec::netns(spec);
        let mut pod = self
            .inner
            .pod_netns
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if spec::is_sandbox(spec) {
            pod.clone_from(&named);
            return named;
        }
        let own = PathBuf::from(format!("/proc/{}/ns/net", self.inner.pid));
        match (&*pod, named) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(n)) if n == own => None,
            (None, n) => n,
        }
    }

    /// Joins the cgroup the spec names. Failing to is the pod's failure: a pod running outside
    /// its cgroup would escape the limits and accounting the kubelet set for it.
    fn join_cgroup(&self, spec: &spec::Spec) -> Result<()> {
        let mut slot = self.inner.cgroup.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
            return Ok(());
        };
        let c = cgroup::join(&path.to_string_lossy()).map_err(|e| {
            Error::FailedPrecondition(format!(
                "cannot join the pod's cgroup {}: {e}; the pod is not started outside it",
                path.display()
            ))
        })?;
        tracing::info!(path = %path.display(), "joined the pod cgroup");
        if let Some(limits) = c.memory_limits() {
            let _ = self
                .inner
                .pod_memory
                .set(Arc::new(ProcessMemory::new(Box::new(limits))));
        }
        *slot = Some(c);
        Ok(())
    }

    async fn prepare(
        &self,
        id: &str,
        spec: &spec::Spec,
        rootfs: &Path,
        req: &CreateTaskRequest,
    ) -> Result<Prepared> {
        let (name, bytes) = self.module(id, spec, rootfs).await?;
        wasmpod_oci::pin::pins(spec)
            .and_then(|pins| wasmpod_oci::pin::check(&pins, &name, &bytes))
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        // Compiling takes seconds for a large module: on a thread of its own, so that the task
        // service keeps answering the pod's other calls meanwhile.
        let engine = self.engine()?;
        let (program, outcome) = tokio::task::spawn_blocking(move || engine.compile_cached(&bytes))
            .await
            .map_err(|e| Error::Internal(format!("compiling module {name}: {e}")))?
            .map_err(|e| Error::InvalidArgument(format!("module {name}: {e}")))?;
        tracing::debug!(id, module = %name, kind = program.kind(), ?outcome, "module ready");
        let env = spec::env(spec);
        let http = spec::http_config(&env).map_err(Error::InvalidArgument)?;
        let ctx = GuestContext {
            args: spec::args(spec).to_vec(),
            env,
            cwd: Some(spec::cwd(spec).to_string_lossy().into_owned()),
            stdin: open_stdin(&req.stdin)?,
            stdout: open_output(&req.stdout)?,
            stderr: open_output(&req.stderr)?,
            preopens: spec::preopens(spec, rootfs),
            open_files: spec::open_files(spec),
            identity: spec::identity(spec).map_err(Error::InvalidArgument)?,
        };
        Ok(Prepared { program, ctx, http })
    }

    /// The module to run and its name for messages. A file named by the command in the rootfs
    /// (compat and wasi/wasm images) is read without asking containerd anything; only when
    /// there is no such file is the image asked whether it is a Wasm artifact, whose module is
    /// a layer in containerd's content store.
    async fn module(
        &self,
        id: &str,
        spec: &spec::Spec,
        rootfs: &Path,
    ) -> Result<(String, Vec<u8>)> {
        // The shim holds the module (and its compiled code) for the container, in the pod's
        // cgroup: it may not be larger than the container may use.
        let bound = SizeBound::for_module(wasmpod_oci::spec::memory_limit(spec));
        let missing = match spec::module_path(spec) {
            Ok((name, path)) => {
                match Tree::of_container(spec, rootfs).read_regular(&path, &bound) {
                    Ok(bytes) if wasmpod_engine::wasm_kind(&bytes).is_some() => {
                        return Ok((name, bytes))
                    }
                    Ok(bytes) => {
                        let image = self.image_name(id, spec).await;
                        return Err(Error::InvalidArgument(format!(
                            "image {image} has no Wasm module: {name} is not a WebAssembly module \
                         ({}); the wasmtime runtime class runs only Wasm containers, run native \
                         ones in pods of another runtime class (runc)",
                            describe(&bytes)
                        )));
                    }
                    Err(LookupError::NotFound { .. }) => {
                        format!("{name} does not exist in the image")
                    }
                    Err(e) => {
                        let image = self.image_name(id, spec).await;
                        return Err(Error::InvalidArgument(format!(
                            "image {image}: cannot use {name} as the module: {e}"
                        )));
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        let image = self.image_name(id, spec).await;
        let command = spec::args(spec).first().cloned().unwrap_or_default();
        match self
            .inner
            .containerd
            .artifact_module(&image, &command, &missing, &bound)
            .await
        {
            Ok(layer) => Ok((layer.name, layer.bytes)),
            Err(ImageError::Invalid(m)) => Err(Error::InvalidArgument(m)),
            Err(e) => Err(Error::Internal(e.to_string())),
        }
    }

    async fn image_name(&self, id: &str, spec: &spec::Spec) -> String {
        let annotated = spec::image_name(spec);
        self.inner.containerd.image_name(id, annotated).await
    }

    async fn do_start(&self, id: &str) -> Result<u32> {
        let (is_wasm, netns) = {
            let containers = self.containers();
            let c = containers.get(id).ok_or_else(|| not_found(id))?;
            startable(id, c)?;
            (matches!(c.kind, Kind::Wasm(_)), c.netns.clone())
        };
        // What can fail is done before the container counts as running.
        let runner = if is_wasm {
            Some((self.guests(netns.as_deref())?, self.engine()?))
        } else {
            None
        };
        let (prepared, mut kill_rx, meter) = {
            let mut containers = self.containers();
            let c = containers.get_mut(id).ok_or_else(|| not_found(id))?;
            startable(id, c)?;
            c.state = State::Running;
            let prepared = match &mut c.kind {
                Kind::Sandbox => None,
                Kind::Wasm(p) => p.take(),
            };
            let (kill_tx, kill_rx) = watch::channel(None);
            c.kill = Some(kill_tx);
            (prepared, kill_rx, c.meter.clone())
        };
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id.to_string(),
                pid: self.inner.pid,
                ..Default::default()
            }),
        )
        .await;
        let (Some(prepared), Some((guests, engine))) = (prepared, runner) else {
            return Ok(self.inner.pid);
        };

        let service = self.clone();
        let id = id.to_string();
        guests.spawn(async move {
            let Prepared { program, ctx, http } = *prepared;
            // Dropping the guest's future is how a kill stops it: the guest yields at the next
            // epoch tick once interrupted, and at every host call, so this takes one tick. An
            // HTTP server drains on any signal but SIGKILL: it stops accepting and finishes the
            // requests in flight, within the grace period the kubelet gives before SIGKILL.
            let exit = match &program {
                Program::Http(pre) => {
                    let mut signalled = kill_rx.clone();
                    let drain = async move {
                        let _ = signalled.wait_for(Option::is_some).await;
                    };
                    tokio::select! {
                        exit = engine.serve(pre, ctx, meter, http, drain) => Ok(exit),
                        Ok(_) = kill_rx.wait_for(|s| *s == Some(libc::SIGKILL as u32)) => {
                            Err(libc::SIGKILL as u32)
                        }
                    }
                }
                _ => tokio::select! {
                    exit = engine.run(&program, ctx, meter) => Ok(exit),
                    Ok(sig) = kill_rx.wait_for(Option::is_some) => {
                        Err(sig.unwrap_or(libc::SIGKILL as u32))
                    }
                },
            };
            let status = match exit {
                Ok(exit) => {
                    if exit == Exit::OutOfMemory {
                        let oom = TaskOOM {
                            container_id: id.clone(),
                            ..Default::default()
                        };
                        service
                            .publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(oom))
                            .await;
                    }
                    exit.status() as u32
                }
                Err(signal) => 128 + signal,
            };
            service.finish(&id, status).await;
        });
        Ok(self.inner.pid)
    }

    async fn do_kill(&self, id: &str, signal: u32) -> Result<()> {
        let terminate = {
            let containers = self.containers();
            let c = containers.get(id).ok_or_else(|| not_found(id))?;
            if c.state == State::Stopped {
                return Err(Error::NotFound(format!(
                    "container {id}: process already finished"
                )));
            }
            if signal == 0 || IGNORED_SIGNALS.contains(&signal) {
                return Ok(());
            }
            match (&c.kind, &c.kill) {
                (Kind::Wasm(_), Some(kill)) => {
                    kill.send_replace(Some(signal));
                    // A guest that ends must give its future back at the next tick to be
                    // dropped; an HTTP server that drains keeps serving meanwhile.
                    if signal == libc::SIGKILL as u32 || !c.serves_http {
                        c.meter.interrupt();
                    }
                    false
                }
                // A sandbox, or a container that never started, ends right away.
                _ => true,
            }
        };
        if terminate {
            self.finish(id, 128 + signal).await;
        }
        Ok(())
    }

    async fn do_delete(&self, id: &str) -> Result<DeleteResponse> {
        let c = {
            let mut containers = self.containers();
            if !containers.contains_key(id) {
                if let Some(deleted) = self.creating().get_mut(id) {
                    *deleted = true;
                }
            }
            let c = containers.get(id).ok_or_else(|| not_found(id))?;
            if c.state == State::Running {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is still running; kill it first"
                )));
            }
            containers.remove(id).expect("present")
        };
        if let Some(r) = &c.mounted_rootfs {
            unmount(r);
        }
        let exited = c.exited().unwrap_or(Exited {
            status: 0,
            at: SystemTime::now(),
        });
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.to_string(),
                id: id.to_string(),
                pid: self.inner.pid,
                exit_status: exited.status,
                exited_at: MessageField::some(timestamp(exited.at)),
                ..Default::default()
            }),
        )
        .await;
        Ok(DeleteResponse {
            pid: self.inner.pid,
            exit_status: exited.status,
            exited_at: MessageField::some(timestamp(exited.at)),
            ..Default::default()
        })
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("container {id} not found"))
}

/// Only a created container can start; asked before and again after the fallible setup.
fn startable(id: &str, c: &Container) -> Result<()> {
    if c.state == State::Created {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "container {id} cannot start: it is {:?}",
            c.state
        )))
    }
}

fn no_exec(exec_id: &str) -> Result<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(Error::NotFound(format!("exec {exec_id} not found")))
    }
}

#[async_trait]
impl Task for Service {
    #[tracing::instrument(skip_all, fields(id = %req.id))]
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        {
            let containers = self.containers();
            let mut creating = self.creating();
            if containers.contains_key(&req.id) || creating.contains_key(&req.id) {
                return Err(
                    Error::AlreadyExists(format!("container {} already exists", req.id)).into(),
                );
            }
            creating.insert(req.id.clone(), false);
        }
        // On a task of its own: if containerd stops waiting for the answer, the creation
        // still ends here, and is undone if containerd deleted the container meanwhile.
        let this = self.clone();
        let span = tracing::Span::current();
        let created = tokio::spawn(tracing::Instrument::instrument(
            async move { this.finish_create(req).await },
            span,
        ));
        match created.await {
            Ok(result) => Ok(result?),
            Err(e) => Err(Error::Internal(format!("create failed: {e}")).into()),
        }
    }

    #[tracing::instrument(skip_all, fields(id = %req.id))]
    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        no_exec(&req.exec_id)?;
        let pid = self.do_start(&req.id).await?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    // containerd polls this: at debug, so that the shim's log keeps to what happens.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %req.id))]
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        no_exec(&req.exec_id)?;
        let containers = self.containers();
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let exited = c.exited();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid: self.inner.pid,
            status: match c.state {
                State::Created => Status::CREATED,
                State::Running => Status::RUNNING,
                State::Stopped => Status::STOPPED,
            }
            .into(),
            stdin: c.stdin.clone(),
            stdout: c.stdout.clone(),
            stderr: c.stderr.clone(),
            exit_status: exited.map(|e| e.status).unwrap_or_default(),
            exited_at: exited
                .map(|e| MessageField::some(timestamp(e.at)))
                .unwrap_or_default(),
            ..Default::default()
        })
    }

    // containerd polls this: at debug, so that the shim's log keeps to what happens.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %req.id))]
    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        no_exec(&req.exec_id)?;
        let mut rx = {
            let containers = self.containers();
            let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            c.exit.subscribe()
        };
        let exited = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::NotFound(format!("container {} was deleted", req.id)))?
            .expect("waited for Some");
        Ok(WaitResponse {
            exit_status: exited.status,
            exited_at: MessageField::some(timestamp(exited.at)),
            ..Default::default()
        })
    }

    #[tracing::instrument(skip_all, fields(id = %req.id, signal = req.signal))]
    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        no_exec(&req.exec_id)?;
        self.do_kill(&req.id, req.signal).await?;
        Ok(Empty::new())
    }

    #[tracing::instrument(skip_all, fields(id = %req.id))]
    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        no_exec(&req.exec_id)?;
        Ok(self.do_delete(&req.id).await?)
    }

    // containerd polls this: at debug, so that the shim's log keeps to what happens.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %req.id))]
    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        if !self.containers().contains_key(&req.id) {
            return Err(not_found(&req.id).into());
        }
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: self.inner.pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    // containerd polls this: at debug, so that the shim's log keeps to what happens.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %req.id))]
    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        use containerd_shim::protos::cgroups::metrics::{
            CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics,
        };
        let usage = {
            let containers = self.containers();
            let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            c.meter.clone()
        };
        let memory = usage.memory_bytes();
        let metrics = Metrics {
            cpu: MessageField::some(CPUStat {
                usage: MessageField::some(CPUUsage {
                    total: usage.cpu_ns(),
                    user: usage.cpu_ns(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: MessageField::some(MemoryEntry {
                    usage: memory,
                    ..Default::default()
                }),
                rss: memory,
                total_rss: memory,
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = convert_to_any(Box::new(metrics)).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    // containerd polls this: at debug, so that the shim's log keeps to what happens.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %req.id))]
    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let _ = req;
        Ok(ConnectResponse {
            shim_pid: self.inner.pid,
            task_pid: self.inner.pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    /// UpdateContainerResources (in-place pod resize): new limits apply to the running guest at
    /// its next epoch tick or grow.
    #[tracing::instrument(skip_all, fields(id = %req.id))]
    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources: LinuxResources = serde_json::from_slice(&req.resources.value)
            .map_err(|e| Error::InvalidArgument(format!("cannot parse resources: {e}")))?;
        let limits = spec::resource_limits(&resources);
        let containers = self.containers();
        let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        tracing::info!(?limits, "limits updated");
        c.meter.set_limits(limits);
        Ok(Empty::new())
    }

    #[tracing::instrument(skip_all)]
    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.exit_if_idle();
        Ok(Empty::new())
    }
}

/// Opens the pod's network namespace and proves it can be entered, on a thread of its own,
/// before any guest depends on it: if it cannot, the container fails to start rather than
/// run on the node's network.
fn open_netns(path: &Path) -> Result<Arc<File>> {
    let refused = |e: &dyn std::fmt::Display| {
        Error::FailedPrecondition(format!(
            "cannot enter the pod's network namespace {}: {e}; the container is not started \
             on the node's network instead",
            path.display()
        ))
    };
    let ns = Arc::new(File::open(path).map_err(|e| refused(&e))?);
    let probe = ns.clone();
    std::thread::spawn(move || {
        nix::sched::setns(probe.as_ref(), nix::sched::CloneFlags::CLONE_NEWNET)
    })
    .join()
    .map_err(|_| refused(&"the probe thread panicked"))?
    .map_err(|e| refused(&e))?;
    Ok(ns)
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

fn mount_rootfs(mounts: &[Mount], target: &Path) -> Result<()> {
    std::fs::create_dir_all(target)
        .map_err(|e| Error::Internal(format!("cannot create rootfs {}: {e}", target.display())))?;
    for m in mounts {
        containerd_shim::mount::mount_rootfs(
            Some(m.type_.as_str()).filter(|s| !s.is_empty()),
            Some(m.source.as_str()).filter(|s| !s.is_empty()),
            &m.options,
            target,
        )
        .map_err(|e| {
            Error::Internal(format!("cannot mount rootfs at {}: {e}", target.display()))
        })?;
    }
    Ok(())
}

pub(super) fn unmount(target: &Path) {
    if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
            tracing::warn!("cannot unmount {}: {e}", target.display());
        }
    }
}

/// Strips the `file://` scheme containerd uses for log files; other schemes (logging
/// binaries) need a process to run and are refused.
fn io_path(uri: &str) -> Result<Option<&str>> {
    if uri.is_empty() {
        return Ok(None);
    }
    if let Some(p) = uri.strip_prefix("file://") {
        return Ok(Some(p));
    }
    if uri.contains("://") {
        return Err(Error::InvalidArgument(format!(
            "stdio {uri} is not supported by the wasmtime runtime; use a FIFO or file:// path"
        )));
    }
    Ok(Some(uri))
}

/// Opens stdout/stderr. A FIFO is opened read-write so the open never blocks waiting for a
/// reader; containerd's copier still sees EOF once the guest's handles close.
fn open_output(uri: &str) -> Result<Option<File>> {
    let Some(path) = io_path(uri)? else {
        return Ok(None);
    };
    let is_fifo = std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    let mut opts = OpenOptions::new();
    if is_fifo {
        opts.read(true).write(true);
    } else {
        opts.append(true).create(true);
    }
    opts.open(path)
        .map(Some)
        .map_err(|e| Error::Internal(format!("cannot open {path}: {e}")))
}

/// Opens stdin without waiting for a writer, then makes reads blocking again.
fn open_stdin(uri: &str) -> Result<Option<File>> {
    let Some(path) = io_path(uri)? else {
        return Ok(None);
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::Internal(format!("cannot open {path}: {e}")))?;
    let flags = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| Error::Internal(format!("fcntl {path}: {e}")))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(|e| Error::Internal(format!("fcntl {path}: {e}")))?;
    Ok(Some(file))
}

/// A short description of what a non-Wasm file is, for error messages.
fn describe(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x7fELF") {
        "it is a native ELF executable"
    } else if bytes.starts_with(b"#!") {
        "it is a script"
    } else if bytes.is_empty() {
        "it is empty"
    } else {
        "it does not start with the Wasm magic bytes"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uris() {
        assert_eq!(io_path("").unwrap(), None);
        assert_eq!(io_path("/run/x/stdout").unwrap(), Some("/run/x/stdout"));
        assert_eq!(io_path("file:///var/log/x").unwrap(), Some("/var/log/x"));
        assert!(io_path("binary:///usr/bin/logger").is_err());
    }

    #[test]
    fn a_network_namespace_that_cannot_be_entered_is_an_error() {
        let file = std::env::current_exe().unwrap();
        let e = open_netns(&file).unwrap_err().to_string();
        assert!(
            e.contains("cannot enter the pod's network namespace"),
            "{e}"
        );
        assert!(open_netns(Path::new("/nonexistent/netns")).is_err());
    }

    #[test]
    fn describes_native_binaries() {
        assert_eq!(describe(b"\x7fELF\x02"), "it is a native ELF executable");
        assert_eq!(describe(b"#!/bin/sh"), "it is a script");
    }
}
