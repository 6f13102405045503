//! A guest's life from start to end, stopped by a signal: what both hosts do when containerd
//! (the pod host) or the kernel (the isolated host's container process) says a container
//! must stop, and the exit statuses users see for it.
//!
//! The stop is split in two because its two halves live in different places: the killer
//! (containerd's Kill call, a signal handler) holds a [`Stop`], the guest's task holds the
//! [`StopSignal`] that [`Engine::run_to_end`] waits on.

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use crate::{Engine, Exit, GuestContext, HttpConfig, Meter, Program};

/// The status of a process ended by `signal`, as a shell and the kubelet report it.
pub const fn signal_status(signal: i32) -> i32 {
    128 + signal
}

/// What a guest whose memory grow the engine denied ends with: the kernel's OOM kill is a
/// SIGKILL, and users expect the same 137 (reason OOMKilled) from a Wasm container.
pub const OOM_EXIT_STATUS: i32 = signal_status(libc::SIGKILL);

/// How a guest ended, as a host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The exit status: the guest's own code, [`signal_status`] of the signal that stopped
    /// it, [`OOM_EXIT_STATUS`], or [`crate::TRAP_EXIT_STATUS`].
    pub status: i32,
    /// The engine denied the guest memory at its limit: hosts report an OOM kill, which the
    /// status alone cannot say (a guest may exit 137 by itself).
    pub oom: bool,
    /// The signal that ended the guest, if one did. An HTTP handler that drained on SIGTERM
    /// ends with status 0 and says SIGTERM here.
    pub signal: Option<i32>,
}

impl Ended {
    fn exited(exit: &Exit, signal: Option<i32>) -> Ended {
        Ended {
            status: exit.status(),
            oom: *exit == Exit::OutOfMemory,
            signal,
        }
    }

    fn signalled(signal: i32) -> Ended {
        Ended {
            status: signal_status(signal),
            oom: false,
            signal: Some(signal),
        }
    }
}

/// The killer's half of a guest's stop.
pub struct Stop {
    signal: watch::Sender<Option<i32>>,
    meter: Arc<Meter>,
    /// An HTTP handler drains on any signal but SIGKILL.
    drains: bool,
}

/// The guest's half: what [`Engine::run_to_end`] waits on.
#[derive(Clone)]
pub struct StopSignal(watch::Receiver<Option<i32>>);

impl Stop {
    /// A stop for `program` running under `meter` (the meter given to
    /// [`Engine::run_to_end`]).
    pub fn new(program: &Program, meter: Arc<Meter>) -> (Stop, StopSignal) {
        let (tx, rx) = watch::channel(None);
        let stop = Stop {
            signal: tx,
            meter,
            drains: matches!(program, Program::Http(_)),
        };
        (stop, StopSignal(rx))
    }

    /// Stops the guest: a command ends at once with [`signal_status`]`(signal)`, an HTTP
    /// handler stops accepting and finishes the requests in flight, SIGKILL ends any guest
    /// now. Which signals should stop a container at all (not SIGWINCH, say) is the host's
    /// call; sent before the guest starts, the stop takes effect as it starts.
    pub fn send(&self, signal: i32) {
        // The first signal decides how the guest ends, except that SIGKILL overrides a drain
        // in progress and nothing overrides SIGKILL: were a SIGTERM to replace a SIGKILL the
        // guest's task has not seen yet, an HTTP handler would drain instead of ending.
        self.signal.send_if_modified(|s| match *s {
            Some(libc::SIGKILL) => false,
            Some(_) if signal != libc::SIGKILL => false,
            _ => {
                *s = Some(signal);
                true
            }
        });
        // A guest running Wasm holds its task's poll until an epoch tick lets it yield, and
        // only every tenth tick if nothing asks sooner: whoever ends it must ask, or the end
        // waits for that tenth tick. A draining handler keeps running, so it is not asked.
        if signal == libc::SIGKILL || !self.drains {
            self.meter.interrupt();
        }
    }
}

impl StopSignal {
    /// The first signal sent. Never resolves if the [`Stop`] is dropped unsent: the guest
    /// then runs to its own end.
    async fn any(&mut self) -> i32 {
        // The value is copied out first: the channel's read guard must not be held across
        // the await below, or the guest's future is not `Send` (the pod host spawns it).
        let sent = self.0.wait_for(Option::is_some).await.map(|s| *s);
        match sent {
            Ok(s) => s.unwrap_or(libc::SIGKILL),
            Err(_) => std::future::pending().await,
        }
    }

    /// The first signal sent if it asks a server to drain (anything but SIGKILL, which
    /// [`StopSignal::kill`] answers); as [`StopSignal::any`] if the stop is dropped.
    async fn drain(&mut self) -> i32 {
        let sent = self
            .0
            .wait_for(|s| s.is_some_and(|s| s != libc::SIGKILL))
            .await
            .map(|s| *s);
        match sent {
            Ok(s) => s.unwrap_or(libc::SIGTERM),
            Err(_) => std::future::pending().await,
        }
    }

    /// Resolves once SIGKILL is sent; as [`StopSignal::any`] if the stop is dropped.
    async fn kill(&mut self) {
        if self
            .0
            .wait_for(|s| *s == Some(libc::SIGKILL))
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
    }
}

impl Engine {
    /// Runs `program` until it ends by itself or `stop` ends it (see [`Stop::send`]): a
    /// command with [`Engine::run`], an HTTP handler with [`Engine::serve`] under `http`.
    /// `meter` must be the one the [`Stop`] was made with, or a kill waits for the guest's
    /// next yield.
    pub async fn run_to_end(
        self: &Arc<Self>,
        program: &Program,
        ctx: GuestContext,
        meter: Arc<Meter>,
        http: HttpConfig,
        mut stop: StopSignal,
    ) -> Ended {
        match program {
            Program::Http(pre) => {
                let drained = OnceLock::new();
                let mut signals = stop.clone();
                let drain = async {
                    let _ = drained.set(signals.drain().await);
                };
                // Dropping `serve` ends the requests in flight too: what SIGKILL asks. Were
                // SIGKILL to start a drain as well, a server with nothing in flight would have
                // drained (status 0) before the kill was looked at.
                tokio::select! {
                    biased;
                    () = stop.kill() => Ended::signalled(libc::SIGKILL),
                    exit = self.serve(pre, ctx, meter, http, drain) => {
                        Ended::exited(&exit, drained.get().copied())
                    }
                }
            }
            _ => tokio::select! {
                exit = self.run(program, ctx, meter) => Ended::exited(&exit, None),
                signal = stop.any() => Ended::signalled(signal),
            },
        }
    }
}
