//! What the pod's state machine needs from outside itself, as small traits: telling containerd
//! (events), the node (the pod's cgroup, the containers' root filesystems) and the guests
//! (finding and compiling a module, running it). The shim's own implementations are in
//! `events.rs`, `node.rs` and `guest.rs`; `pod/tests.rs` has recording doubles, so the pod's
//! transitions and races are tested without root, containerd or wasmtime.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::protos::types::mount::Mount;
use wasmpod_engine::{Meter, ProcessMemory};

use crate::cgroup::CgroupError;
use crate::error::Error;
use crate::spec::Spec;

/// What the pod tells containerd, in the order containerd expects: a container's create,
/// start, OOM, exit and delete; an exec's add, start and exit.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Created {
        id: String,
        bundle: String,
        rootfs: Vec<Mount>,
        stdio: Stdio,
        terminal: bool,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    /// A container's init (empty `exec_id`) or exec started.
    Started {
        id: String,
        exec_id: String,
    },
    OutOfMemory {
        id: String,
    },
    Exited {
        id: String,
        exec_id: String,
        status: u32,
        at: SystemTime,
    },
    Deleted {
        id: String,
        status: u32,
        at: SystemTime,
    },
}

/// The container's stdio as containerd names it (FIFOs or `file://` paths; empty: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

#[async_trait]
pub trait Events: Send + Sync + 'static {
    /// Publishes an event; failing to is logged, not the pod's failure.
    async fn publish(&self, event: Event);
}

/// The node's side of the pod.
pub trait Node: Send + Sync + 'static {
    /// Moves the shim into the pod's cgroup; the pod's memory limit comes back, when it has
    /// one, for every guest's grows to be held to.
    fn join_cgroup(&self, path: &Path) -> Result<Option<Arc<ProcessMemory>>, CgroupError>;
    /// Leaves the cgroup joined (the pod has ended); nothing when none was.
    fn leave_cgroup(&self);
    fn mount_rootfs(&self, mounts: &[Mount], target: &Path) -> Result<(), Error>;
    fn unmount(&self, target: &Path);
}

/// A Wasm container ready to start: what `Guests::prepare` made of it.
pub struct Prepared<G> {
    pub guest: G,
}

/// How a guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub status: u32,
    /// The engine denied the guest memory (containerd is told: OOMKilled).
    pub oom: bool,
}

/// Hands containerd's signals on to a running guest, which decides what each means (a command
/// ends, an HTTP handler drains, SIGKILL ends anything now).
pub trait Stopper: Send + Sync + 'static {
    fn send(&self, signal: u32);
}

/// A guest, ready to run to its end once awaited; dropped unawaited, it never runs.
pub type Running = Pin<Box<dyn Future<Output = Ended> + Send + 'static>>;

#[async_trait]
pub trait Guests: Send + Sync + 'static {
    type Guest: Send + 'static;

    /// A CreateContainer's slow part: finds the container's module (in its rootfs, else in
    /// its image), checks and compiles it, and reads the guest's context from the spec.
    async fn prepare(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        stdio: &Stdio,
    ) -> Result<Prepared<Self::Guest>, Error>;

    /// An exec's module (a file of the container's root or mounts, never an artifact layer),
    /// compiled, with the context of the exec's process (`spec` has it as its process).
    /// `name` is the process's name for messages.
    async fn prepare_exec(
        &self,
        name: &str,
        spec: &Spec,
        rootfs: &Path,
        stdio: &Stdio,
    ) -> Result<Prepared<Self::Guest>, Error>;

    /// What a StartContainer can fail at, done before the container counts as running: the
    /// pod's guest runtime in its network namespace, and the engine.
    async fn ready(&self, netns: Option<&Path>) -> Result<(), Error>;

    /// The guest, to run to its end when awaited (after `ready` succeeded), and how to stop
    /// it.
    fn run(&self, guest: Self::Guest, meter: Arc<Meter>) -> (Running, Box<dyn Stopper>);
}
