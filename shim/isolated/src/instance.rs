//! containerd-shimkit's `Instance`: one container of the pod, a process of its own.

use std::io::{PipeReader, Read as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use containerd_shim::monitor::{monitor_subscribe, Subject, Topic, MONITOR};
use containerd_shimkit::sandbox::sync::WaitableCell;
use containerd_shimkit::sandbox::{Error, Instance, InstanceConfig};
use oci_spec::runtime::Spec;
use tracing::instrument;
use wasmpod_engine::{Engine, EngineError, HttpConfig, HttpConfigError};
use wasmpod_image::{Containerd, ImageError};
use wasmpod_oci::cgroup::SystemdPathError;
use wasmpod_oci::pin::PinError;
use wasmpod_oci::{LookupError, SizeBound};

use crate::cgroup;
use crate::command::{self, Command, CommandError, Kind};
use crate::container::{Build, Container};
use crate::oom;

/// The runtime's name: containerd's `io.containerd.wasmtime-isolated.v1`, youki's state
/// directory `/run/containerd/wasmtime-isolated`.
pub const RUNTIME_NAME: &str = "wasmtime-isolated";

/// The status reported when the process's end could not be observed (as a SIGKILL).
const UNKNOWN_EXIT: u32 = wasmpod_engine::signal_status(libc::SIGKILL) as u32;

pub struct Isolated {
    id: String,
    namespace: String,
    container: Container,
    exit: WaitableCell<(u32, DateTime<Utc>)>,
    /// Where a Wasm container's process says that the engine denied its memory (see
    /// `oom::report`): its exit status alone cannot, a guest may exit 137 by itself.
    oom_report: std::sync::Arc<PipeReader>,
}

impl Instance for Isolated {
    #[instrument(skip(cfg), fields(bundle = %cfg.bundle.display()))]
    async fn new(id: String, cfg: &InstanceConfig) -> Result<Self, Error> {
        let spec = Spec::load(cfg.bundle.join("config.json"))?;
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| PathBuf::from("rootfs"));
        let root = cfg.bundle.join(root);
        let (kind, module) = what_runs(&id, &spec, &root, cfg).await?;
        log::info!("container {id}: {kind:?}");
        let rootdir = cfg.determine_rootdir(RUNTIME_NAME)?;
        let cfg = &cgroupfs_for_systemd(&spec, cfg)?;
        let (reader, writer) = std::io::pipe()?;
        nix::fcntl::fcntl(
            &reader,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|source| CreateError::OomPipe {
            id: id.clone(),
            source,
        })?;
        let container = Container::build(Build {
            id: id.clone(),
            cfg: cfg.clone(),
            rootdir,
            kind,
            module,
            oom_report: OwnedFd::from(writer).into(),
        })?;
        Ok(Isolated {
            id,
            namespace: cfg.namespace.clone(),
            container,
            exit: WaitableCell::new(),
            oom_report: reader.into(),
        })
    }

    #[instrument(skip(self), fields(id = %self.id))]
    async fn start(&self) -> Result<u32, Error> {
        // Whatever happens below, waiters get a status.
        let guard = self
            .exit
            .clone()
            .set_guard_with(|| (UNKNOWN_EXIT, Utc::now()));
        let pid = self.container.pid()?;
        // Subscribed before the process can run, so its exit cannot be missed. containerd-shim's
        // reaper collects every child of the shim and announces its status here.
        let exits = monitor_subscribe(Topic::Pid)?;
        let oom_file = cgroup::oom_events_file(pid);
        let kills_before = oom_file.as_deref().map_or(0, cgroup::oom_kills);
        if let Err(e) = self.container.start() {
            unsubscribe(exits.id);
            return Err(e.into());
        }
        let exit = self.exit.clone();
        let (id, namespace) = (self.id.clone(), self.namespace.clone());
        let oom_report = self.oom_report.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let mut status = None;
            while status.is_none() {
                match exits.rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(e) if matches!(e.subject, Subject::Pid(p) if p == pid) => {
                        status = Some(e.exit_code as u32)
                    }
                    Ok(_) => {}
                    // A process gone without an event (reaped before the subscription).
                    Err(_) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                        log::warn!("container {id}: process {pid} ended unobserved");
                        status = Some(UNKNOWN_EXIT);
                    }
                    Err(_) => {}
                }
            }
            unsubscribe(exits.id);
            let status = status.unwrap_or(UNKNOWN_EXIT);
            let kernel_kills = oom_file
                .as_deref()
                .map_or(0, |f| cgroup::oom_kills(f).saturating_sub(kills_before));
            // The process wrote its report before it exited, so it is in the pipe by now.
            let engine_denied = matches!((&*oom_report).read(&mut [0u8; 1]), Ok(1));
            if oom::was_oom_killed(kernel_kills, engine_denied) {
                log::info!("container {id}: OOM-killed");
                oom::publish(&namespace, &id);
            }
            log::info!("container {id}: exited with {status}");
            let _ = exit.set((status, Utc::now()));
        });
        Ok(pid as u32)
    }

    #[instrument(skip(self), fields(id = %self.id))]
    async fn kill(&self, signal: u32) -> Result<(), Error> {
        self.container.kill(signal)?;
        Ok(())
    }

    #[instrument(skip(self), fields(id = %self.id))]
    async fn delete(&self) -> Result<(), Error> {
        self.container.delete()?;
        Ok(())
    }

    async fn wait(&self) -> (u32, DateTime<Utc>) {
        *self.exit.wait().await
    }
}

/// Why a container cannot be created: what its image or spec got wrong, or what failed on
/// the node. The texts are the container's StartError, byte for byte what users have seen so
/// far (the e2e tests compare them): a cause's text is part of its message, containerd shows
/// nothing else.
#[derive(Debug, thiserror::Error)]
enum CreateError {
    #[error("container {id}: {source}")]
    Command {
        id: String,
        #[source]
        source: CommandError,
    },
    #[error("container {id}: module {name}: {source}")]
    ReadModule {
        id: String,
        name: String,
        #[source]
        source: LookupError,
    },
    #[error("container {id}: {source}")]
    Pin {
        id: String,
        #[source]
        source: PinError,
    },
    #[error("container {id}: {source}")]
    Http {
        id: String,
        #[source]
        source: HttpConfigError,
    },
    #[error("container {id}: module {name}: {source}")]
    Compile {
        id: String,
        name: String,
        #[source]
        source: EngineError,
    },
    #[error("{0}")]
    Engine(#[source] &'static EngineError),
    #[error("container {id}: {source}")]
    Artifact {
        id: String,
        #[source]
        source: ImageError,
    },
    #[error("container {id}: the OOM report pipe: {source}")]
    OomPipe {
        id: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{0}")]
    CgroupPath(#[source] SystemdPathError),
}

impl From<CreateError> for Error {
    /// containerd reports the code with the message (InvalidArgument as "...: invalid
    /// argument"): InvalidArgument says the image or the spec is the user's to fix, Others
    /// that the node failed (the engine, containerd, a pipe) and a retry may do.
    fn from(e: CreateError) -> Error {
        let theirs = match &e {
            CreateError::Command { .. }
            | CreateError::ReadModule { .. }
            | CreateError::Pin { .. }
            | CreateError::Http { .. }
            | CreateError::Compile { .. }
            | CreateError::CgroupPath(_) => true,
            CreateError::Artifact { source, .. } => matches!(source, ImageError::Invalid(_)),
            CreateError::Engine(_) | CreateError::OomPipe { .. } => false,
        };
        if theirs {
            Error::InvalidArgument(e.to_string())
        } else {
            Error::Others(e.to_string())
        }
    }
}

/// The shim's engine, with the node's compile cache (`WASMPOD_CACHE_DIR`, default
/// `/var/lib/wasmpod/cache`), shared with the pod host's shims.
static ENGINE: LazyLock<Result<Engine, EngineError>> = LazyLock::new(Engine::new);

/// How the container's command runs and, for Wasm, its module compiled by the shim.
async fn what_runs(
    id: &str,
    spec: &Spec,
    root: &Path,
    cfg: &InstanceConfig,
) -> Result<(Kind, Option<Vec<u8>>), CreateError> {
    let classified = command::classify(spec, root).map_err(|source| CreateError::Command {
        id: id.to_string(),
        source,
    })?;
    let (name, bytes) = match classified {
        Some(Command {
            kind: Kind::Native, ..
        }) => return Ok((Kind::Native, None)),
        Some(Command {
            name, file, size, ..
        }) => {
            let bytes = wasmpod_oci::read_bounded(file, size, &name, &module_bound(spec)).map_err(
                |source| CreateError::ReadModule {
                    id: id.to_string(),
                    name: name.clone(),
                    source,
                },
            )?;
            (name, bytes)
        }
        None => artifact_module(id, spec, cfg).await?,
    };
    Ok((Kind::Wasm, Some(precompile(id, spec, &name, &bytes)?)))
}

/// The module of a container whose command names no file in its image: the image may be a
/// Wasm OCI artifact, whose module is a layer in containerd's content store.
async fn artifact_module(
    id: &str,
    spec: &Spec,
    cfg: &InstanceConfig,
) -> Result<(String, Vec<u8>), CreateError> {
    let containerd = Containerd::new(Path::new(&cfg.containerd_address), &cfg.namespace);
    let image = containerd
        .image_name(id, wasmpod_oci::spec::image_name(spec))
        .await;
    let command = command::args(spec).first().cloned().unwrap_or_default();
    let missing = format!("the command {command} does not exist in the image");
    match containerd
        .artifact_module(&image, &command, &missing, &module_bound(spec))
        .await
    {
        Ok(layer) => Ok((layer.name, layer.bytes)),
        Err(source) => Err(CreateError::Artifact {
            id: id.to_string(),
            source,
        }),
    }
}

/// How large a module this container may have: the shim holds it (and its compiled code)
/// on the container's behalf.
fn module_bound(spec: &Spec) -> SizeBound {
    SizeBound::for_module(wasmpod_oci::spec::memory_limit(spec))
}

/// youki's systemd cgroup driver creates the container's scope over D-Bus, which many nodes
/// (kind's among them) do not run. Like the pod host, the isolated host makes the directory
/// systemd would give the unit instead: the spec's `slice:prefix:name` becomes that path in the
/// bundle's config.json and youki's cgroupfs driver creates it, on the kubelet's pod slice.
fn cgroupfs_for_systemd(spec: &Spec, cfg: &InstanceConfig) -> Result<InstanceConfig, Error> {
    let mut cfg = cfg.clone();
    let Some(mut linux) = spec.linux().clone() else {
        return Ok(cfg);
    };
    let systemd_form = linux
        .cgroups_path()
        .as_ref()
        .and_then(|p| p.to_str())
        .filter(|p| wasmpod_oci::cgroup::is_systemd_form(p))
        .map(str::to_string);
    let (true, Some(form)) = (cfg.config.systemd_cgroup, systemd_form) else {
        return Ok(cfg);
    };
    let path = wasmpod_oci::cgroup::systemd_path(&form).map_err(CreateError::CgroupPath)?;
    linux.set_cgroups_path(Some(PathBuf::from(path)));
    let mut spec = spec.clone();
    spec.set_linux(Some(linux));
    spec.save(cfg.bundle.join("config.json"))?;
    cfg.config.systemd_cgroup = false;
    Ok(cfg)
}

/// Compiles the container's module here, where the compile cache is, so a module that does
/// not compile (or a bad setting) fails StartContainer as in the pod host, and the container's
/// process only loads the artifact.
fn precompile(id: &str, spec: &Spec, name: &str, bytes: &[u8]) -> Result<Vec<u8>, CreateError> {
    wasmpod_oci::pin::pins(spec)
        .and_then(|pins| wasmpod_oci::pin::check(&pins, name, bytes))
        .map_err(|source| CreateError::Pin {
            id: id.to_string(),
            source,
        })?;
    HttpConfig::read(&command::env(spec)).map_err(|source| CreateError::Http {
        id: id.to_string(),
        source,
    })?;
    let engine = ENGINE.as_ref().map_err(CreateError::Engine)?;
    let (artifact, outcome) = engine
        .precompile(bytes)
        .map_err(|source| CreateError::Compile {
            id: id.to_string(),
            name: name.to_string(),
            source,
        })?;
    log::debug!("container {id}: module {name}: {outcome:?}");
    Ok(artifact)
}

/// Stops exit announcements to a subscription, which would otherwise collect every exit of the
/// pod (and log a warning for each) once its receiver is gone.
fn unsubscribe(id: i64) {
    if let Ok(mut monitor) = MONITOR.lock() {
        let _ = monitor.unsubscribe(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(e: CreateError) -> (&'static str, String) {
        match Error::from(e) {
            Error::InvalidArgument(m) => ("invalid", m),
            Error::Others(m) => ("others", m),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn what_the_image_got_wrong_is_an_invalid_argument_and_the_node_failing_is_not() {
        let id = || "c1".to_string();
        assert_eq!(
            shown(CreateError::Command {
                id: id(),
                source: CommandError::NoCommand
            }),
            (
                "invalid",
                "container c1: the container has no command (set command or args, or an \
                 image entrypoint)"
                    .into()
            )
        );
        assert_eq!(
            shown(CreateError::Http {
                id: id(),
                source: HttpConfig::read(&[("WASMPOD_HTTP_MAX_REQUESTS".into(), "0".into())])
                    .unwrap_err()
            }),
            (
                "invalid",
                "container c1: WASMPOD_HTTP_MAX_REQUESTS=0: not a whole number from 1 to 1048576"
                    .into()
            )
        );
        assert_eq!(
            shown(CreateError::Artifact {
                id: id(),
                source: ImageError::Invalid("image i has no Wasm module: gone".into())
            }),
            (
                "invalid",
                "container c1: image i has no Wasm module: gone".into()
            )
        );
        assert_eq!(
            shown(CreateError::Artifact {
                id: id(),
                source: ImageError::Unanswered("image i: no answer".into())
            }),
            ("others", "container c1: image i: no answer".into())
        );
        assert_eq!(
            shown(CreateError::OomPipe {
                id: id(),
                source: nix::errno::Errno::EBADF
            }),
            (
                "others",
                format!(
                    "container c1: the OOM report pipe: {}",
                    nix::errno::Errno::EBADF
                )
            )
        );
        // The cause stays reachable for logs that want the chain.
        let e = CreateError::Command {
            id: id(),
            source: CommandError::NoCommand,
        };
        assert!(std::error::Error::source(&e).is_some());
    }
}
