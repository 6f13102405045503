//! Restarting containerd (or the distribution's service that runs it). Never installs anything
//! on the host: it runs the host's own `systemctl`, inside PID 1's namespaces when the
//! installer runs in a container (the chart's DaemonSet uses hostPID).

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Mutex;

use tracing::info;

use crate::{Error, Result};

/// Restarts a systemd unit on the host.
pub trait Restarter: Send + Sync {
    fn restart(&self, unit: &str) -> Result<()>;

    /// Whether `unit` runs now: `None` when this restarter cannot tell (a
    /// `--restart-command` that does not go through systemd).
    fn is_active(&self, _unit: &str) -> Result<Option<bool>> {
        Ok(None)
    }
}

/// `systemctl restart UNIT` on the host (see [`host_command`]). The field is the PID of a
/// process in the host's namespaces: 1 on every node; `--host-pid` for a machine whose PID 1
/// hides its namespaces (the repo's local test cluster runs on such a VM).
pub struct HostSystemd(pub u32);

/// Whether this process shares `pid`'s namespace `kind`. A namespace that cannot be read
/// counts as shared: the installer then runs where it is (by hand on the host, as root).
fn same_ns(pid: u32, kind: &str) -> bool {
    match (
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}")),
        std::fs::read_link(format!("/proc/self/ns/{kind}")),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => true,
    }
}

/// A command that runs on the host: when this process is not in the mount namespace of
/// `host_pid` (PID 1, seen from a pod with hostPID), the child enters that process's mount,
/// UTS, IPC and network namespaces (hostPID already shares its PID namespace), so it finds the
/// host's programs on the host's PATH and talks to the host's services. Entering the mount
/// namespace also moves the child's root and working directory to the host's root. Returns
/// the command and whether it enters.
fn host_command(host_pid: u32, program: &str) -> Result<(Command, bool)> {
    let mut cmd = Command::new(program);
    cmd.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    let enter = !same_ns(host_pid, "mnt");
    if enter {
        let fds = ["uts", "ipc", "net", "mnt"]
            .iter()
            .map(|k| {
                let p = format!("/proc/{host_pid}/ns/{k}");
                std::fs::File::open(&p).map_err(crate::io_err(&p))
            })
            .collect::<Result<Vec<_>>>()?;
        // SAFETY: runs in the forked child before exec; setns is async-signal-safe and
        // the child is single-threaded, which setns(CLONE_NEWNS) requires.
        unsafe {
            cmd.pre_exec(move || {
                for f in &fds {
                    nix::sched::setns(f, nix::sched::CloneFlags::empty())
                        .map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
    }
    Ok((cmd, enter))
}

fn run(mut cmd: Command, described: String) -> Result<()> {
    let out = cmd.output().map_err(|e| Error::Restart {
        command: described.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Restart {
            command: described,
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

fn in_host(host_pid: u32, enter: bool) -> String {
    if enter {
        format!("(in PID {host_pid}'s namespaces) ")
    } else {
        String::new()
    }
}

impl Restarter for HostSystemd {
    #[tracing::instrument(skip(self))]
    fn restart(&self, unit: &str) -> Result<()> {
        let (mut cmd, enter) = host_command(self.0, "systemctl")?;
        cmd.args(["restart", unit]);
        let described = format!("{}systemctl restart {unit}", in_host(self.0, enter));
        info!(command = %described, "restarting");
        run(cmd, described)
    }

    fn is_active(&self, unit: &str) -> Result<Option<bool>> {
        let (mut cmd, enter) = host_command(self.0, "systemctl")?;
        cmd.args(["is-active", unit]);
        let described = format!("{}systemctl is-active {unit}", in_host(self.0, enter));
        let out = cmd.output().map_err(|e| Error::Restart {
            command: described.clone(),
            message: e.to_string(),
        })?;
        // is-active exits non-zero for every state but "active", so the state it prints is
        // what counts; a unit still starting or reloading is the one that runs containerd.
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Some(unit_runs(&state)))
    }
}

/// Whether a state printed by `systemctl is-active` means the unit runs.
pub fn unit_runs(state: &str) -> bool {
    matches!(state, "active" | "activating" | "reloading")
}

/// Runs a command of the user's (`--restart-command`, through the host's `sh -c`, in the
/// host's namespaces like systemctl) instead of systemctl: for containerds not run by systemd
/// (the e2e test bed, the local test cluster, a custom node image). `$UNIT` holds the unit
/// that would have been restarted. The `u32` is the host process, as for [`HostSystemd`].
pub struct ShellRestarter(pub String, pub u32);

impl Restarter for ShellRestarter {
    #[tracing::instrument(skip(self))]
    fn restart(&self, unit: &str) -> Result<()> {
        let (mut cmd, enter) = host_command(self.1, "sh")?;
        cmd.args(["-c", &self.0]).env("UNIT", unit);
        let described = format!("{}{}", in_host(self.1, enter), self.0);
        info!(command = %described, "restarting with --restart-command");
        run(cmd, described)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_restarter_runs_the_command_with_the_unit() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("unit");
        let r = ShellRestarter(format!("printf %s \"$UNIT\" > {}", out.display()), 1);
        r.restart("k3s-agent").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "k3s-agent");
        let e = ShellRestarter("echo boom >&2; exit 3".into(), 1)
            .restart("x")
            .unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
    }

    #[test]
    fn running_states() {
        for s in ["active", "activating", "reloading"] {
            assert!(unit_runs(s), "{s}");
        }
        for s in ["inactive", "failed", "unknown", "deactivating", ""] {
            assert!(!unit_runs(s), "{s}");
        }
    }
}

/// A test double that records the units it was asked to restart, and answers which units
/// are active as told (by default it cannot tell, like a `--restart-command`).
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<String>>,
    active: Option<Vec<String>>,
}

impl Restarter for Recorder {
    fn restart(&self, unit: &str) -> Result<()> {
        self.calls.lock().unwrap().push(unit.to_string());
        Ok(())
    }

    fn is_active(&self, unit: &str) -> Result<Option<bool>> {
        Ok(self.active.as_ref().map(|a| a.iter().any(|u| u == unit)))
    }
}

impl Recorder {
    /// A recorder on a host where exactly `units` are active.
    pub fn with_active(units: &[&str]) -> Self {
        Recorder {
            calls: Mutex::default(),
            active: Some(units.iter().map(|u| u.to_string()).collect()),
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}
