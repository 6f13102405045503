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
}

/// `systemctl restart UNIT` on the host. When this process is not in PID 1's mount namespace
/// (a pod with hostPID), the command runs in PID 1's mount, UTS, IPC and network namespaces
/// (hostPID already shares its PID namespace), so it is the host's systemctl, found on the
/// host's PATH, talking to the host's systemd. Entering the mount namespace also moves the
/// child's root and working directory to the host's root.
pub struct HostSystemd;

fn same_ns(kind: &str) -> bool {
    match (
        std::fs::read_link(format!("/proc/1/ns/{kind}")),
        std::fs::read_link(format!("/proc/self/ns/{kind}")),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => true,
    }
}

impl Restarter for HostSystemd {
    #[tracing::instrument(skip(self))]
    fn restart(&self, unit: &str) -> Result<()> {
        let mut cmd = Command::new("systemctl");
        cmd.args(["restart", unit]).env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        let enter = !same_ns("mnt");
        if enter {
            let fds = ["uts", "ipc", "net", "mnt"]
                .iter()
                .map(|k| {
                    let p = format!("/proc/1/ns/{k}");
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
        let described = format!(
            "{}systemctl restart {unit}",
            if enter {
                "(in PID 1's namespaces) "
            } else {
                ""
            }
        );
        info!(command = %described, "restarting");
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
}

/// Runs a command of the user's (`--restart-command`, through `sh -c`) instead of systemctl:
/// for containerds not run by systemd (the e2e test bed, a custom node image). `$UNIT` holds
/// the unit that would have been restarted.
pub struct ShellRestarter(pub String);

impl Restarter for ShellRestarter {
    #[tracing::instrument(skip(self))]
    fn restart(&self, unit: &str) -> Result<()> {
        info!(command = %self.0, "restarting with --restart-command");
        let out = Command::new("sh")
            .args(["-c", &self.0])
            .env("UNIT", unit)
            .output()
            .map_err(|e| Error::Restart {
                command: self.0.clone(),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(Error::Restart {
                command: self.0.clone(),
                message: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_restarter_runs_the_command_with_the_unit() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("unit");
        let r = ShellRestarter(format!("printf %s \"$UNIT\" > {}", out.display()));
        r.restart("k3s-agent").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "k3s-agent");
        let e = ShellRestarter("echo boom >&2; exit 3".into())
            .restart("x")
            .unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
    }
}

/// A test double that records the units it was asked to restart.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<String>>);

impl Restarter for Recorder {
    fn restart(&self, unit: &str) -> Result<()> {
        self.0.lock().unwrap().push(unit.to_string());
        Ok(())
    }
}

impl Recorder {
    pub fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}
