//! The pod's guests, for real: modules compiled on the shared engine, run on a runtime whose
//! threads sit in the pod's network namespace.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use wasmpod_engine::{signal_status, Engine, GuestContext, HttpConfig, Meter, Program, Stop};
use wasmpod_image::Containerd;

use crate::error::Error;
use crate::module;
use crate::pod::outside::Running;
use crate::pod::{Ended, Guests, Prepared, Stdio, Stopper};
use crate::spec::{self, Spec};
use crate::stdio::{open_output, open_stdin};

/// A Wasm container ready to start.
pub struct Guest {
    program: Program,
    ctx: GuestContext,
    /// How an HTTP handler serves (from the container's environment).
    http: HttpConfig,
}

pub struct Wasm {
    containerd: Containerd,
    /// Made by the pod's first Wasm container; an error is kept, not retried per container.
    engine: OnceLock<Result<Arc<Engine>, Arc<wasmpod_engine::EngineError>>>,
    runtime: OnceLock<tokio::runtime::Handle>,
}

impl Wasm {
    pub fn new(containerd: Containerd) -> Self {
        Wasm {
            containerd,
            engine: OnceLock::new(),
            runtime: OnceLock::new(),
        }
    }

    fn engine(&self) -> Result<Arc<Engine>, Error> {
        self.engine
            .get_or_init(|| Engine::new().map(Arc::new).map_err(Arc::new))
            .clone()
            .map_err(Error::Engine)
    }

    /// Compiles a module (seconds for a large one: on a thread of its own, so that the task
    /// service keeps answering the pod's other calls meanwhile) and reads the guest's
    /// context from the spec.
    async fn compile(
        &self,
        id: &str,
        name: String,
        bytes: Vec<u8>,
        spec: &Spec,
        rootfs: &Path,
        stdio: &Stdio,
    ) -> Result<Prepared<Guest>, Error> {
        let engine = self.engine()?;
        let span = tracing::info_span!(
            "compile",
            id,
            module = %name,
            bytes = bytes.len(),
            cache = tracing::field::Empty
        );
        let compiled = tracing::Instrument::instrument(
            tokio::task::spawn_blocking(move || engine.compile_cached(&bytes)),
            span.clone(),
        )
        .await;
        if let Ok(Ok((_, outcome))) = &compiled {
            span.record("cache", tracing::field::debug(outcome));
        }
        drop(span);
        let (program, outcome) = compiled
            .map_err(|e| Error::Internal(format!("compiling module {name}: {e}")))?
            .map_err(|source| Error::Compile {
                name: name.clone(),
                source,
            })?;
        tracing::debug!(id, module = %name, kind = program.kind(), ?outcome, "module ready");
        let env = spec::env(spec);
        let http = spec::http_config(&env).map_err(Error::HttpSettings)?;
        let ctx = GuestContext {
            args: spec::args(spec).to_vec(),
            env,
            cwd: Some(spec::cwd(spec).to_string_lossy().into_owned()),
            stdin: open_stdin(&stdio.stdin)?,
            stdout: open_output(&stdio.stdout)?,
            stderr: open_output(&stdio.stderr)?,
            preopens: spec::preopens(spec, rootfs),
            open_files: spec::open_files(spec),
            identity: spec::identity(spec)?,
        };
        Ok(Prepared {
            guest: Guest { program, ctx, http },
        })
    }

    /// The runtime guests run on. Its threads enter the pod's network namespace as they start,
    /// so sockets a guest opens belong to the pod. Created by the first Wasm container's start;
    /// every container of a pod shares the sandbox's namespace.
    fn runtime(&self, netns: Option<&Path>) -> Result<tokio::runtime::Handle, Error> {
        if let Some(h) = self.runtime.get() {
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
            .map_err(Error::Runtime)?;
        let handle = runtime.handle().clone();
        // The guest runtime lives as long as the process; dropping it from inside the ttrpc
        // runtime at shutdown would panic, so it is deliberately never dropped.
        std::mem::forget(runtime);
        Ok(self.runtime.get_or_init(|| handle).clone())
    }
}

#[async_trait]
impl Guests for Wasm {
    type Guest = Guest;

    async fn prepare(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        stdio: &Stdio,
    ) -> Result<Prepared<Guest>, Error> {
        let (name, bytes) = module::find(&self.containerd, id, spec, rootfs).await?;
        wasmpod_oci::pin::check(&wasmpod_oci::pin::pins(spec)?, &name, &bytes)?;
        self.compile(id, name, bytes, spec, rootfs, stdio).await
    }

    async fn prepare_exec(
        &self,
        name: &str,
        spec: &Spec,
        rootfs: &Path,
        stdio: &Stdio,
    ) -> Result<Prepared<Guest>, Error> {
        let (module, bytes) = module::find_exec(spec, rootfs)?;
        self.compile(name, module, bytes, spec, rootfs, stdio).await
    }

    async fn ready(&self, netns: Option<&Path>) -> Result<(), Error> {
        self.runtime(netns)?;
        self.engine()?;
        Ok(())
    }

    fn run(&self, guest: Guest, meter: Arc<Meter>) -> (Running, Box<dyn Stopper>) {
        let (stop, signal) = Stop::new(&guest.program, meter.clone());
        let (Some(runtime), Some(Ok(engine))) = (self.runtime.get(), self.engine.get()) else {
            // `ready` made both, and the pod runs nothing before it succeeded.
            tracing::error!("a guest was started before its runtime and engine were ready");
            let ended = Ended {
                status: signal_status(libc::SIGKILL) as u32,
                oom: false,
            };
            return (
                Box::pin(std::future::ready(ended)),
                Box::new(EngineStop(stop)),
            );
        };
        let engine = engine.clone();
        let task = runtime.spawn(async move {
            let Guest { program, ctx, http } = guest;
            engine.run_to_end(&program, ctx, meter, http, signal).await
        });
        let running = Box::pin(async move {
            match task.await {
                Ok(ended) => Ended {
                    status: ended.status as u32,
                    oom: ended.oom,
                },
                Err(e) => {
                    tracing::error!("the guest's task failed: {e}");
                    Ended {
                        status: signal_status(libc::SIGKILL) as u32,
                        oom: false,
                    }
                }
            }
        });
        (running, Box::new(EngineStop(stop)))
    }
}

/// containerd's signals, handed to the engine, which knows what each means for this guest.
struct EngineStop(Stop);

impl Stopper for EngineStop {
    fn send(&self, signal: u32) {
        self.0.send(signal as i32);
    }
}

/// Opens the pod's network namespace and proves it can be entered, on a thread of its own,
/// before any guest depends on it: if it cannot, the container fails to start rather than
/// run on the node's network.
fn open_netns(path: &Path) -> Result<Arc<File>, Error> {
    let refused = |source: std::io::Error| Error::Netns {
        path: path.to_path_buf(),
        source,
    };
    let ns = Arc::new(File::open(path).map_err(refused)?);
    let probe = ns.clone();
    std::thread::spawn(move || {
        nix::sched::setns(probe.as_ref(), nix::sched::CloneFlags::CLONE_NEWNET)
    })
    .join()
    .map_err(|_| refused(std::io::Error::other("the probe thread panicked")))?
    .map_err(|e| refused(e.into()))?;
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
