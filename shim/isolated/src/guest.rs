//! The container's process running a Wasm guest: youki has put it in the container's
//! namespaces and cgroup, made the image its root and wired stdio to containerd's FIFOs;
//! from here it is the engine's job, with the limits the kernel placed on this cgroup.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::Arc;

use oci_spec::runtime::Spec;
use tokio::signal::unix::{signal, SignalKind};
use wasmpod_engine::{
    Engine, EngineError, GuestContext, HttpConfig, HttpConfigError, Meter, Preopen, Program, Stop,
};

use crate::cgroup;
use crate::command;

/// Exit status of a guest the process could not start (the shim checked the module and the
/// settings already; this is for what can still fail here), as a shell's "cannot execute".
const CANNOT_RUN: i32 = 126;

/// What keeps the container's process from running its guest. The shim checked the image and
/// the settings before the container was created, so each of these is the node's trouble or
/// a shim that disagrees with its own container process; the message goes to the container's
/// stderr, where `kubectl logs` shows it.
#[derive(Debug, thiserror::Error)]
enum PrepareError {
    #[error("the shim passed no compiled module")]
    NoModule,
    #[error("{0}")]
    Http(#[source] HttpConfigError),
    #[error("{0}")]
    Engine(#[source] EngineError),
    #[error("loading the compiled module: {0}")]
    Load(#[source] EngineError),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot handle signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs the guest (the spec's command, compiled by the shim into `module`) to its end and
/// returns the process's exit status.
pub fn run(spec: &Spec, module: Option<&Vec<u8>>, oom_report: &OwnedFd) -> i32 {
    let mut stderr = dup_stdio(2);
    let started = prepare(spec, module).and_then(|prepared| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(PrepareError::Runtime)?;
        runtime.block_on(supervise(prepared, oom_report))
    });
    match started {
        Ok(status) => status,
        Err(e) => {
            if let Some(f) = &mut stderr {
                let _ = writeln!(f, "wasmpod: {e}");
            }
            CANNOT_RUN
        }
    }
}

struct Prepared {
    engine: Arc<Engine>,
    program: Program,
    ctx: GuestContext,
    http: HttpConfig,
}

fn prepare(spec: &Spec, module: Option<&Vec<u8>>) -> Result<Prepared, PrepareError> {
    let module = module.ok_or(PrepareError::NoModule)?;
    let env = command::env(spec);
    let http = HttpConfig::read(&env).map_err(PrepareError::Http)?;
    // The engine is this process's alone; the node's compile cache is not inside the
    // container, the shim compiled the module against it.
    let engine = Engine::uncached().map_err(PrepareError::Engine)?;
    // SAFETY: the artifact is the shim's `precompile` output (this same binary), handed over
    // through the zygote's fork.
    let program = unsafe { engine.load_precompiled(module) }.map_err(PrepareError::Load)?;
    let ctx = GuestContext {
        args: command::args(spec).to_vec(),
        env,
        cwd: Some(command::cwd(spec).to_string_lossy().into_owned()),
        stdin: dup_stdio(0),
        stdout: dup_stdio(1),
        stderr: dup_stdio(2),
        // The container's root with its mounts, as the kernel shows it to this process: a
        // read-only mount stays read-only for the guest.
        preopens: vec![Preopen {
            host: "/".into(),
            guest: "/".into(),
            read_only: false,
        }],
        open_files: command::open_files(spec),
        // runc (youki) made this process the container's user already.
        identity: None,
    };
    Ok(Prepared {
        engine: Arc::new(engine),
        program,
        ctx,
        http,
    })
}

/// Runs the guest until it ends or the container is stopped, and returns the process's exit
/// status. This process is PID 1 of its PID namespace unless the pod shares one, and PID 1
/// ignores signals it has no handler for, so SIGTERM and SIGINT are handed to the engine's
/// stop; SIGKILL needs none, the kernel ends the process.
async fn supervise(prepared: Prepared, oom_report: &OwnedFd) -> Result<i32, PrepareError> {
    let Prepared {
        engine,
        program,
        ctx,
        http,
    } = prepared;
    // The limits the kernel applies to this cgroup, minus what the engine itself already
    // holds: the guest's memory is denied in the engine (an OOM kill to users) before the
    // kernel would kill the whole process.
    let (mut limits, in_use) = cgroup::own_limits();
    limits.memory = limits
        .memory
        .map(|l| l.saturating_sub(in_use.unwrap_or(0)).max(1));
    let meter = Arc::new(Meter::new(limits));
    let (stop, stopped) = Stop::new(&program, meter.clone());
    forward_signals(stop)?;
    let ended = engine.run_to_end(&program, ctx, meter, http, stopped).await;
    if ended.oom {
        // Reported before the process ends, so the shim finds it once it sees the exit.
        crate::oom::report(oom_report);
    }
    Ok(ended.status)
}

/// Hands SIGTERM and SIGINT to the guest's stop for as long as the process runs: a second
/// SIGTERM to a draining server is no news, but must not end the process behind the engine's
/// back either.
fn forward_signals(stop: Stop) -> Result<(), PrepareError> {
    let mut term = signal(SignalKind::terminate()).map_err(PrepareError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(PrepareError::Signals)?;
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                Some(()) = term.recv() => libc::SIGTERM,
                Some(()) = int.recv() => libc::SIGINT,
                // The runtime is shutting down: the process is ending anyway.
                else => return,
            };
            stop.send(signal);
        }
    });
    Ok(())
}

/// A file for the container's stdio descriptor `fd`, if it is open.
fn dup_stdio(fd: i32) -> Option<File> {
    // SAFETY: 0-2 stay open for the life of the process; the borrow is only duplicated.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let owned: OwnedFd = borrowed.as_fd().try_clone_to_owned().ok()?;
    Some(File::from(owned))
}
