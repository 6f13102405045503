//! A youki container held in a zygote process of its own (runwasi's pattern): youki forks, and
//! forking from the shim's multi-threaded runtime is unsafe, so every libcontainer call runs in
//! a single-threaded helper forked when the shim started.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use containerd_shimkit::sandbox::InstanceConfig;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as Youki;
use libcontainer::error::LibcontainerError;
use libcontainer::signal::{Signal, SignalError};
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};
use zygote::{WireError, WireFd, Zygote};

use crate::command::Kind;
use crate::executor::Executor;

thread_local! {
    /// The container, in its zygote process.
    static CONTAINER: RefCell<Option<Youki>> = const { RefCell::new(None) };
}

/// What the zygote needs to create the container.
#[derive(Serialize, Deserialize)]
pub struct Build {
    pub id: String,
    pub cfg: InstanceConfig,
    pub rootdir: PathBuf,
    pub kind: Kind,
    /// The compiled module of a Wasm container.
    #[serde(with = "serde_bytes_opt")]
    pub module: Option<Vec<u8>>,
    /// Where the container's process reports an OOM denial to the shim (`oom::report`).
    pub oom_report: WireFd<OwnedFd>,
}

/// Module artifacts as MessagePack binary, not as an array of numbers.
mod serde_bytes_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(serde_bytes::Bytes::new(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<serde_bytes::ByteBuf>::deserialize(d)?.map(|b| b.into_vec()))
    }
}

pub struct Container(Zygote);

impl Container {
    /// Creates the container: its init process waits in the container for `start`.
    pub fn build(build: Build) -> anyhow::Result<Self> {
        let zygote = Zygote::global().spawn();
        zygote
            .try_run(create, build)
            .map_err(|e| anyhow!(e))?
            .map_err(wire)?;
        Ok(Container(zygote))
    }

    pub fn pid(&self) -> anyhow::Result<i32> {
        self.call(
            |_| with(|c| c.pid().map(|p| p.as_raw()).ok_or(CallError::NoProcess)),
            (),
        )
    }

    pub fn start(&self) -> anyhow::Result<()> {
        self.call(|_| with(|c| Ok(c.start()?)), ())
    }

    pub fn kill(&self, signal: u32) -> anyhow::Result<()> {
        self.call(
            |signal: u32| {
                with(|c| {
                    let signal = Signal::try_from(signal as i32)?;
                    Ok(c.kill(signal, true)?)
                })
            },
            signal,
        )
    }

    pub fn delete(&self) -> anyhow::Result<()> {
        self.call(|_| with(|c| Ok(c.delete(true)?)), ())
    }

    fn call<A, T>(&self, f: fn(A) -> Result<T, WireError>, arg: A) -> anyhow::Result<T>
    where
        A: Serialize + for<'de> Deserialize<'de> + 'static,
        T: Serialize + for<'de> Deserialize<'de> + 'static,
    {
        self.0
            .try_run(f, arg)
            .map_err(|e| anyhow!(e))?
            .map_err(wire)
    }
}

/// What a call on the container fails with, in the zygote.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("container not created")]
    NotCreated,
    #[error("no process")]
    NoProcess,
    // Boxed: youki's error is large, and every call's result would carry its size.
    #[error("{0}")]
    Youki(#[source] Box<LibcontainerError>),
    #[error("{0}")]
    Signal(#[from] SignalError<i32>),
}

impl From<LibcontainerError> for CallError {
    fn from(e: LibcontainerError) -> Self {
        CallError::Youki(Box::new(e))
    }
}

/// Runs `f` on the container, in the zygote. The error reaches the shim as its text only:
/// the zygote is another process, and what crosses is a message (`wire` reads it back).
fn with<T>(f: impl FnOnce(&mut Youki) -> Result<T, CallError>) -> Result<T, WireError> {
    CONTAINER
        .with_borrow_mut(|c| match c.as_mut() {
            Some(c) => f(c),
            None => Err(CallError::NotCreated),
        })
        .map_err(|e| std::io::Error::other(e.to_string()).into())
}

fn create(b: Build) -> Result<(), WireError> {
    let mut builder = ContainerBuilder::new(b.id, SyscallType::Linux)
        .with_executor(Executor {
            kind: b.kind,
            module: b.module.map(Arc::new),
            oom_report: Arc::new(b.oom_report.into_inner()),
        })
        .with_root_path(b.rootdir)?;
    if let Ok(f) = b.cfg.open_stdin() {
        builder = builder.with_stdin(f);
    }
    if let Ok(f) = b.cfg.open_stdout() {
        builder = builder.with_stdout(f);
    }
    if let Ok(f) = b.cfg.open_stderr() {
        builder = builder.with_stderr(f);
    }
    let container = builder
        .as_init(&b.cfg.bundle)
        // The process is the shim's child, so the shim reaps it and learns its status.
        .as_sibling(true)
        .with_systemd(b.cfg.config.systemd_cgroup)
        .build()?;
    CONTAINER.with_borrow_mut(|c| *c = Some(container));
    Ok(())
}

fn wire(e: WireError) -> anyhow::Error {
    let mut message = e.description().to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(s.description());
        source = s.source();
    }
    anyhow!(message)
}
