//! What can go wrong in the pod host. Each variant keeps its cause (`#[source]`); the message
//! containerd gets is the `Display`, which names the cause as well, since containerd shows
//! only the message (CRI puts a failed create's message in the container's waiting reason).
//! Which ttrpc code each variant becomes is decided in one place, `task::code`.

use std::path::PathBuf;

use wasmpod_engine::{EngineError, HttpConfigError};
use wasmpod_image::ImageError;
use wasmpod_oci::pin::PinError;
use wasmpod_oci::spec::SpecError;
use wasmpod_oci::LookupError;

use crate::cgroup::CgroupError;
use crate::pod::Phase;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- containerd asked about a container or exec this pod does not have (as it is) ---
    #[error("container {0} not found")]
    NotFound(String),
    #[error("exec {0} not found")]
    ExecNotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} is the pod's sandbox: it runs nothing to exec into")]
    NothingToExecInto(String),
    #[error("containerd sent an exec without a process")]
    NoExecProcess,
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("container {0} was deleted while it was being created")]
    DeletedWhileCreating(String),
    #[error("container {0} was deleted")]
    DeletedWhileWaiting(String),
    #[error("container {id} cannot start: it is {phase:?}")]
    NotStartable { id: String, phase: Phase },
    #[error("container {0} is still running; kill it first")]
    StillRunning(String),
    #[error("container {0}: process already finished")]
    AlreadyFinished(String),

    // --- what the pod or its image asked for cannot be run ---
    #[error("a terminal (tty: true) is not supported for Wasm containers")]
    Terminal,
    #[error("{}", chain(.0))]
    Spec(#[source] SpecError),
    #[error("no command: process.args is empty, so there is no module to run")]
    NoCommand,
    #[error(
        "a root container without CAP_DAC_OVERRIDE cannot run in the wasmtime class: its \
         pod's guests share one process's capabilities; run it as a non-root user \
         (securityContext.runAsUser) or in the wasmtime-isolated class"
    )]
    CapabilityDropped,
    #[error("{0}")]
    HttpSettings(#[source] HttpConfigError),
    #[error(
        "image {image} has no Wasm module: {name} is not a WebAssembly module ({what}); the \
         wasmtime runtime class runs only Wasm containers, run native ones in pods of another \
         runtime class (runc)"
    )]
    NotWasm {
        image: String,
        name: String,
        what: &'static str,
    },
    #[error("image {image}: cannot use {name} as the module: {source}")]
    Lookup {
        image: String,
        name: String,
        #[source]
        source: LookupError,
    },
    #[error("{0}")]
    Image(#[source] ImageError),
    #[error("{0}")]
    Pin(#[from] PinError),
    #[error("cannot exec {name}: it does not exist in the container")]
    ExecMissing { name: String },
    #[error(
        "cannot exec {name}: it is not a WebAssembly module ({what}); containers of the \
         wasmtime runtime class run only Wasm programs"
    )]
    ExecNotWasm { name: String, what: &'static str },
    #[error("cannot exec {name}: {source}")]
    ExecLookup {
        name: String,
        #[source]
        source: LookupError,
    },
    #[error("cannot parse the exec's process: {0}")]
    ExecProcess(#[source] serde_json::Error),
    #[error("module {name}: {source}")]
    Compile {
        name: String,
        #[source]
        source: EngineError,
    },
    #[error("stdio {0} is not supported by the wasmtime runtime; use a FIFO or file:// path")]
    StdioScheme(String),
    #[error("cannot parse resources: {0}")]
    Resources(#[source] serde_json::Error),

    // --- the node refused what the pod needs; nothing runs outside the pod's bounds ---
    #[error("cannot join the pod's cgroup {}: {source}; the pod is not started outside it", .path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: CgroupError,
    },
    #[error(
        "cannot enter the pod's network namespace {}: {source}; the container is not started \
         on the node's network instead", .path.display()
    )]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // --- the shim itself failed ---
    #[error("cannot create rootfs {}: {source}", .path.display())]
    RootfsDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount rootfs at {}: {source}", .path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: containerd_shim::Error,
    },
    #[error("cannot open {path}: {source}")]
    Stdio {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Engine(#[source] std::sync::Arc<EngineError>),
    #[error("cannot start guest runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

/// An error and its causes in one line, for errors whose own message does not name them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
