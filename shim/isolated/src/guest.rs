//! The container's process running a Wasm guest: youki has put it in the container's
//! namespaces and cgroup, made the image its root and wired stdio to containerd's FIFOs;
//! from here it is the engine's job, with the limits the kernel placed on this cgroup.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::Arc;

use oci_spec::runtime::Spec;
use tokio::signal::unix::{signal, SignalKind};
use wasmpod_engine::{Engine, Exit, GuestContext, HttpConfig, Meter, Preopen, Program};

use crate::cgroup;
use crate::command;

/// Exit status of a guest the process could not start (the shim checked the module and the
/// settings already; this is for what can still fail here), as a shell's "cannot execute".
const CANNOT_RUN: i32 = 126;

/// Runs the guest (the spec's command, compiled by the shim into `module`) to its end and
/// returns the process's exit status.
pub fn run(spec: &Spec, module: Option<&Vec<u8>>, oom_report: &OwnedFd) -> i32 {
    let mut stderr = dup_stdio(2);
    match prepare(spec, module) {
        Ok((engine, program, ctx, http)) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail(&mut stderr, &format!("cannot start the runtime: {e}")),
            };
            runtime.block_on(supervise(engine, program, ctx, http, oom_report))
        }
        Err(message) => fail(&mut stderr, &message),
    }
}

fn fail(stderr: &mut Option<File>, message: &str) -> i32 {
    if let Some(f) = stderr {
        let _ = writeln!(f, "wasmpod: {message}");
    }
    CANNOT_RUN
}

type Prepared = (Arc<Engine>, Program, GuestContext, HttpConfig);

fn prepare(spec: &Spec, module: Option<&Vec<u8>>) -> Result<Prepared, String> {
    let module = module.ok_or("the shim passed no compiled module")?;
    let env = command::env(spec);
    let http = HttpConfig::from_env(&env)?;
    // The engine is this process's alone; the node's compile cache is not inside the
    // container, the shim compiled the module against it.
    let engine = Engine::uncached().map_err(|e| e.to_string())?;
    // SAFETY: the artifact is the shim's `precompile` output (this same binary), handed over
    // through the zygote's fork.
    let program = unsafe { engine.load_precompiled(module) }
        .map_err(|e| format!("loading the compiled module: {e}"))?;
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
    Ok((Arc::new(engine), program, ctx, http))
}

/// Runs the guest until it ends or the container is stopped. This process is PID 1 of its
/// PID namespace unless the pod shares one, and PID 1 ignores signals it has no handler for,
/// so SIGTERM and SIGINT are handled (a command ends at once with 128 + signal, an HTTP
/// server drains first); SIGKILL needs none.
async fn supervise(
    engine: Arc<Engine>,
    program: Program,
    ctx: GuestContext,
    http: HttpConfig,
    oom_report: &OwnedFd,
) -> i32 {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return CANNOT_RUN;
    };
    let stopped = async move {
        tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
        }
    };
    // The limits the kernel applies to this cgroup, minus what the engine itself already
    // holds: the guest's memory is denied in the engine (an OOM kill to users) before the
    // kernel would kill the whole process.
    let (mut limits, in_use) = cgroup::own_limits();
    limits.memory = limits
        .memory
        .map(|l| l.saturating_sub(in_use.unwrap_or(0)).max(1));
    let meter = Arc::new(Meter::new(limits));
    let exit = match &program {
        Program::Http(pre) => {
            engine
                .serve(pre, ctx, meter, http, async move {
                    stopped.await;
                })
                .await
        }
        _ => tokio::select! {
            exit = engine.run(&program, ctx, meter.clone()) => exit,
            signal = stopped => {
                meter.interrupt();
                return 128 + signal;
            }
        },
    };
    match exit {
        // Reported before the process ends, so the shim finds it once it sees the exit.
        Exit::OutOfMemory => {
            crate::oom::report(oom_report);
            crate::oom::WASM_OOM_STATUS
        }
        exit => exit.status(),
    }
}

/// A file for the container's stdio descriptor `fd`, if it is open.
fn dup_stdio(fd: i32) -> Option<File> {
    // SAFETY: 0-2 stay open for the life of the process; the borrow is only duplicated.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let owned: OwnedFd = borrowed.as_fd().try_clone_to_owned().ok()?;
    Some(File::from(owned))
}
