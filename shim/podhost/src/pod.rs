//! The pod's state machine: every container of one pod, from create to delete, and when the
//! shim may go. The sandbox (pause) container is only state; each Wasm container is a guest.
//! What it needs from outside (containerd's events, the node, the guests) is behind the traits
//! of `outside.rs`, so that its transitions and races are unit-tested (`pod/tests.rs`).
//!
//! A container's processes (its init, the container's command, and any execs: `kubectl exec`)
//! are each `Created`, then `Running`, then `Stopped`. A container is in `creating` (not yet in
//! `containers`) while its create runs, which may outlast containerd's patience. containerd
//! names a container's init by the empty exec id.

pub mod outside;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::types::mount::Mount;
use tokio::sync::watch;
use wasmpod_engine::{Limits, Meter, ProcessMemory};

use crate::error::Error;
use crate::spec;
pub use outside::{Ended, Event, Events, Guests, Node, Prepared, Stdio, Stopper};

type Result<T> = std::result::Result<T, Error>;

/// Signals a Wasm guest cannot act on and that do not end a process by default.
const IGNORED_SIGNALS: &[u32] = &[
    libc::SIGCHLD as u32,
    libc::SIGCONT as u32,
    libc::SIGURG as u32,
    libc::SIGWINCH as u32,
];
/// What ends a container's execs when the container ends.
const SIGKILL: u32 = libc::SIGKILL as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    pub status: u32,
    pub at: SystemTime,
}

/// A CreateTask, as the pod needs it.
#[derive(Debug, Clone, Default)]
pub struct Create {
    pub id: String,
    pub bundle: String,
    pub rootfs: Vec<Mount>,
    pub stdio: Stdio,
    pub terminal: bool,
}

/// What containerd's State call reports.
#[derive(Debug, Clone)]
pub struct Status {
    pub bundle: String,
    pub stdio: Stdio,
    pub phase: Phase,
    pub exited: Option<Exited>,
}

/// An exec (`kubectl exec`), as the pod needs it.
#[derive(Debug, Clone, Default)]
pub struct Exec {
    pub id: String,
    pub exec_id: String,
    /// The process to run (the OCI spec's `process`, from containerd).
    pub process: Option<oci_spec::runtime::Process>,
    pub stdio: Stdio,
    pub terminal: bool,
}

/// One process of a container: its init or an exec.
struct Process<G> {
    stdio: Stdio,
    /// The prepared guest, taken at start; a sandbox's init has none and runs nothing.
    guest: Option<G>,
    runs_guest: bool,
    phase: Phase,
    exit: watch::Sender<Option<Exited>>,
    /// A running guest's stop.
    stop: Option<Box<dyn Stopper>>,
}

impl<G> Process<G> {
    fn new(stdio: Stdio, guest: Option<Prepared<G>>) -> Self {
        let (exit, _) = watch::channel(None);
        Process {
            stdio,
            runs_guest: guest.is_some(),
            guest: guest.map(|g| g.guest),
            phase: Phase::Created,
            exit,
            stop: None,
        }
    }

    fn exited(&self) -> Option<Exited> {
        *self.exit.borrow()
    }

    fn startable(&self, name: &str) -> Result<()> {
        match self.phase {
            Phase::Created => Ok(()),
            phase => Err(Error::NotStartable {
                id: name.to_string(),
                phase,
            }),
        }
    }
}

struct Container<G> {
    bundle: String,
    /// The rootfs this shim mounted and must unmount on delete.
    mounted_rootfs: Option<PathBuf>,
    netns: Option<PathBuf>,
    meter: Arc<Meter>,
    /// What an exec runs in: the container's spec and root (Wasm containers).
    spec: Option<Arc<spec::Spec>>,
    rootfs: PathBuf,
    init: Process<G>,
    execs: HashMap<String, Process<G>>,
}

impl<G> Container<G> {
    /// The process containerd means: the init for an empty exec id.
    fn process(&self, id: &str, exec_id: &str) -> Result<&Process<G>> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| exec_not_found(id, exec_id))
    }

    fn process_mut(&mut self, id: &str, exec_id: &str) -> Result<&mut Process<G>> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| exec_not_found(id, exec_id))
    }
}

/// How messages name a process: the container's id, or `id exec exec_id`.
fn process_name(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        id.to_string()
    } else {
        format!("{id} exec {exec_id}")
    }
}

/// One pod: its containers and what the shim holds for it.
pub struct Pod<G: Guests> {
    /// The shim's pid: every container's "process" as containerd sees it.
    pid: u32,
    events: Box<dyn Events>,
    node: Box<dyn Node>,
    guests: G,
    /// Told when the shim may exit: no container left, none being created.
    exit: Arc<ExitSignal>,
    containers: Mutex<HashMap<String, Container<G::Guest>>>,
    /// Containers being created, and whether containerd deleted them meanwhile (it gives up
    /// on a create that takes too long, e.g. a long compile, and cleans up): such a container
    /// is undone when its create ends rather than kept, unseen, keeping the shim alive.
    creating: Mutex<HashMap<String, bool>>,
    /// Whether the shim is in the pod's cgroup (joined once, by the sandbox).
    joined: Mutex<bool>,
    /// The pod cgroup's memory limit, which every guest's grows are held to as well.
    pod_memory: OnceLock<Arc<ProcessMemory>>,
    /// The pod's network namespace, as the sandbox's spec names it.
    pod_netns: Mutex<Option<PathBuf>>,
}

/// A lock whose holder panicked still guards plain data: keep serving.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<G: Guests> Pod<G> {
    pub fn new(
        pid: u32,
        events: Box<dyn Events>,
        node: Box<dyn Node>,
        guests: G,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Pod {
            pid,
            events,
            node,
            guests,
            exit,
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashMap::new()),
            joined: Mutex::new(false),
            pod_memory: OnceLock::new(),
            pod_netns: Mutex::new(None),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Creates a container. The work runs on a task of its own: if containerd stops waiting
    /// for the answer, the create still ends here, and is undone if containerd deleted the
    /// container meanwhile.
    pub async fn create(self: &Arc<Self>, req: Create) -> Result<()> {
        {
            let containers = lock(&self.containers);
            let mut creating = lock(&self.creating);
            if containers.contains_key(&req.id) || creating.contains_key(&req.id) {
                return Err(Error::AlreadyExists(req.id));
            }
            creating.insert(req.id.clone(), false);
        }
        let pod = self.clone();
        let span = tracing::Span::current();
        let created = tokio::spawn(tracing::Instrument::instrument(
            async move { pod.finish_create(req).await },
            span,
        ));
        match created.await {
            Ok(result) => result,
            Err(e) => Err(Error::Internal(format!("create failed: {e}"))),
        }
    }

    async fn finish_create(&self, req: Create) -> Result<()> {
        let result = self.build(&req).await;
        let undone = {
            let mut containers = lock(&self.containers);
            let deleted = lock(&self.creating).remove(&req.id).unwrap_or(false);
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
        if let Some(container) = undone {
            tracing::warn!("containerd deleted the container while it was being created; undone");
            if let Some(r) = &container.mounted_rootfs {
                self.node.unmount(r);
            }
            drop(container);
            self.exit_if_idle();
            return Err(Error::DeletedWhileCreating(req.id));
        }
        self.events
            .publish(Event::Created {
                id: req.id,
                bundle: req.bundle,
                rootfs: req.rootfs,
                stdio: req.stdio,
                terminal: req.terminal,
            })
            .await;
        Ok(())
    }

    async fn build(&self, req: &Create) -> Result<Container<G::Guest>> {
        if req.terminal {
            return Err(Error::Terminal);
        }
        let bundle = Path::new(&req.bundle);
        let spec = spec::load(bundle)?;
        let mut container = Container {
            bundle: req.bundle.clone(),
            mounted_rootfs: None,
            netns: self.netns(&spec),
            meter: Arc::new(Meter::new(spec::limits(&spec))),
            spec: None,
            rootfs: spec::rootfs(&spec, bundle),
            init: Process::new(req.stdio.clone(), None),
            execs: HashMap::new(),
        };
        // The process belongs in the cgroup of the pod (or of a standalone container), not
        // of its app containers, which are no processes of their own.
        if spec::is_sandbox(&spec) || !spec::in_pod(&spec) {
            self.join_cgroup(&spec)?;
        }
        if spec::is_sandbox(&spec) {
            return Ok(container);
        }
        if let Some(pod) = self.pod_memory.get() {
            container.meter.set_process_memory(pod.clone());
        }

        let rootfs = container.rootfs.clone();
        if !req.rootfs.is_empty() {
            self.node.mount_rootfs(&req.rootfs, &rootfs)?;
            container.mounted_rootfs = Some(rootfs.clone());
        }
        // From here on, a failure must not leave the mount behind.
        match self
            .guests
            .prepare(&req.id, &spec, &rootfs, &req.stdio)
            .await
        {
            Ok(p) => {
                container.init = Process::new(req.stdio.clone(), Some(p));
                container.spec = Some(Arc::new(spec));
                Ok(container)
            }
            Err(e) => {
                if let Some(r) = &container.mounted_rootfs {
                    self.node.unmount(r);
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
        let mut pod = lock(&self.pod_netns);
        if spec::is_sandbox(spec) {
            pod.clone_from(&named);
            return named;
        }
        let own = PathBuf::from(format!("/proc/{}/ns/net", self.pid));
        match (&*pod, named) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(n)) if n == own => None,
            (None, n) => n,
        }
    }

    /// Joins the cgroup the spec names. Failing to is the pod's failure: a pod running outside
    /// its cgroup would escape the limits and accounting the kubelet set for it.
    fn join_cgroup(&self, spec: &spec::Spec) -> Result<()> {
        let mut joined = lock(&self.joined);
        if *joined {
            return Ok(());
        }
        let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
            return Ok(());
        };
        let memory = self
            .node
            .join_cgroup(&path)
            .map_err(|source| Error::Cgroup {
                path: path.clone(),
                source,
            })?;
        tracing::info!(path = %path.display(), "joined the pod cgroup");
        if let Some(memory) = memory {
            let _ = self.pod_memory.set(memory);
        }
        *joined = true;
        Ok(())
    }

    /// Adds an exec: another Wasm program of the container's image, run in the container's
    /// context (its root and mounts, its limits) with the process containerd gives.
    pub async fn exec(&self, req: Exec) -> Result<()> {
        let name = process_name(&req.id, &req.exec_id);
        if req.terminal {
            return Err(Error::Terminal);
        }
        let (spec, rootfs) = {
            let containers = lock(&self.containers);
            let c = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(name));
            }
            let Some(spec) = c.spec.clone() else {
                return Err(Error::NothingToExecInto(req.id));
            };
            if c.init.phase != Phase::Running {
                return Err(Error::NotRunning(req.id));
            }
            (spec, c.rootfs.clone())
        };
        let mut spec = (*spec).clone();
        spec.set_process(Some(req.process.ok_or(Error::NoExecProcess)?));
        let prepared = self
            .guests
            .prepare_exec(&name, &spec, &rootfs, &req.stdio)
            .await?;
        {
            let mut containers = lock(&self.containers);
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(name));
            }
            let exec = Process::new(req.stdio, Some(prepared));
            c.execs.insert(req.exec_id.clone(), exec);
        }
        self.events
            .publish(Event::ExecAdded {
                id: req.id,
                exec_id: req.exec_id,
            })
            .await;
        Ok(())
    }

    /// Starts a container's init or one of its execs.
    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<()> {
        let name = process_name(id, exec_id);
        let (runs_guest, netns) = {
            let containers = lock(&self.containers);
            let c = containers.get(id).ok_or_else(|| not_found(id))?;
            c.process(id, exec_id)?.startable(&name)?;
            (c.process(id, exec_id)?.runs_guest, c.netns.clone())
        };
        // What can fail is done before the process counts as running; containerd may delete
        // it meanwhile.
        if runs_guest {
            self.guests.ready(netns.as_deref()).await?;
        }
        let running = {
            let mut containers = lock(&self.containers);
            let c = containers.get_mut(id).ok_or_else(|| not_found(id))?;
            if !exec_id.is_empty() && c.init.phase != Phase::Running {
                return Err(Error::NotRunning(id.to_string()));
            }
            let meter = c.meter.clone();
            let p = c.process_mut(id, exec_id)?;
            p.startable(&name)?;
            p.phase = Phase::Running;
            p.guest.take().map(|g| {
                let (running, stop) = self.guests.run(g, meter);
                p.stop = Some(stop);
                running
            })
        };
        self.events
            .publish(Event::Started {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
            })
            .await;
        if let Some(running) = running {
            let pod = self.clone();
            let (id, exec_id) = (id.to_string(), exec_id.to_string());
            tokio::spawn(async move {
                let ended = running.await;
                let span = tracing::info_span!(
                    "exit",
                    id,
                    exec = exec_id,
                    status = ended.status,
                    oom = ended.oom
                );
                tracing::Instrument::instrument(
                    async {
                        if ended.oom {
                            pod.events
                                .publish(Event::OutOfMemory { id: id.clone() })
                                .await;
                        }
                        pod.finish(&id, &exec_id, ended.status).await;
                    },
                    span,
                )
                .await;
            });
        }
        Ok(())
    }

    /// Records a process's end and tells containerd, once. The init's end ends the container's
    /// execs too, as a PID namespace's init does.
    async fn finish(&self, id: &str, exec_id: &str, status: u32) {
        let at = SystemTime::now();
        {
            let mut containers = lock(&self.containers);
            let Some(c) = containers.get_mut(id) else {
                return;
            };
            let Ok(p) = c.process_mut(id, exec_id) else {
                return;
            };
            if p.exited().is_some() {
                return;
            }
            p.phase = Phase::Stopped;
            p.stop = None;
            p.exit.send_replace(Some(Exited { status, at }));
            if exec_id.is_empty() {
                for stop in c.execs.values().filter_map(|e| e.stop.as_ref()) {
                    stop.send(SIGKILL);
                }
            }
        }
        tracing::info!(id, exec_id, status, "process exited");
        self.events
            .publish(Event::Exited {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
                status,
                at,
            })
            .await;
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32) -> Result<()> {
        let ends_now = {
            let containers = lock(&self.containers);
            let c = containers.get(id).ok_or_else(|| not_found(id))?;
            let p = c.process(id, exec_id)?;
            if p.phase == Phase::Stopped {
                return Err(Error::AlreadyFinished(process_name(id, exec_id)));
            }
            if signal == 0 || IGNORED_SIGNALS.contains(&signal) {
                return Ok(());
            }
            match &p.stop {
                Some(stop) => {
                    stop.send(signal);
                    false
                }
                // A sandbox, or a process that never started, ends right away.
                None => true,
            }
        };
        if ends_now {
            self.finish(id, exec_id, 128 + signal).await;
        }
        Ok(())
    }

    /// Deletes a container, or one of its execs, that is not running. A container still being
    /// created is marked, and undone when its create ends.
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<Exited> {
        if !exec_id.is_empty() {
            let mut containers = lock(&self.containers);
            let c = containers.get_mut(id).ok_or_else(|| not_found(id))?;
            if c.process(id, exec_id)?.phase == Phase::Running {
                return Err(Error::StillRunning(process_name(id, exec_id)));
            }
            let exec = c.execs.remove(exec_id).expect("present");
            return Ok(exec.exited().unwrap_or(Exited {
                status: 0,
                at: SystemTime::now(),
            }));
        }
        let c = {
            let mut containers = lock(&self.containers);
            if !containers.contains_key(id) {
                if let Some(deleted) = lock(&self.creating).get_mut(id) {
                    *deleted = true;
                }
            }
            let c = containers.get(id).ok_or_else(|| not_found(id))?;
            if c.init.phase == Phase::Running {
                return Err(Error::StillRunning(id.to_string()));
            }
            containers.remove(id).expect("present")
        };
        if let Some(r) = &c.mounted_rootfs {
            self.node.unmount(r);
        }
        let exited = c.init.exited().unwrap_or(Exited {
            status: 0,
            at: SystemTime::now(),
        });
        self.events
            .publish(Event::Deleted {
                id: id.to_string(),
                status: exited.status,
                at: exited.at,
            })
            .await;
        Ok(exited)
    }

    pub fn status(&self, id: &str, exec_id: &str) -> Result<Status> {
        let containers = lock(&self.containers);
        let c = containers.get(id).ok_or_else(|| not_found(id))?;
        let p = c.process(id, exec_id)?;
        Ok(Status {
            bundle: c.bundle.clone(),
            stdio: p.stdio.clone(),
            phase: p.phase,
            exited: p.exited(),
        })
    }

    /// Waits for a process's end.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exited> {
        let mut rx = {
            let containers = lock(&self.containers);
            let c = containers.get(id).ok_or_else(|| not_found(id))?;
            c.process(id, exec_id)?.exit.subscribe()
        };
        let exited = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::DeletedWhileWaiting(process_name(id, exec_id)))?;
        Ok(exited.expect("waited for Some"))
    }

    /// The container's meter: its usage, for stats.
    pub fn meter(&self, id: &str) -> Result<Arc<Meter>> {
        let containers = lock(&self.containers);
        Ok(containers
            .get(id)
            .ok_or_else(|| not_found(id))?
            .meter
            .clone())
    }

    /// New limits (in-place pod resize): they apply to a running guest at its next epoch tick
    /// or grow.
    pub fn update(&self, id: &str, limits: Limits) -> Result<()> {
        let meter = self.meter(id)?;
        tracing::info!(?limits, "limits updated");
        meter.set_limits(limits);
        Ok(())
    }

    /// The shim serves the whole pod: it goes once no container is left or being created.
    pub fn exit_if_idle(&self) {
        let containers = lock(&self.containers);
        if !containers.is_empty() || !lock(&self.creating).is_empty() {
            return;
        }
        let mut joined = lock(&self.joined);
        if *joined {
            self.node.leave_cgroup();
            *joined = false;
        }
        self.exit.signal();
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound(id.to_string())
}

fn exec_not_found(id: &str, exec_id: &str) -> Error {
    Error::ExecNotFound(format!("{exec_id} of container {id}"))
}
