//! One installer at a time on a node. Two runs at once (a DaemonSet pod being replaced while
//! its successor starts, or a run by hand next to the chart's) would both read the original
//! config, both write and both restart containerd; install and uninstall therefore hold an
//! exclusive `flock(2)` on a lock file next to the state directory for their whole run.
//!
//! The lock file exists only while it is held: the holder removes it before unlocking, so a
//! refusal or an uninstall leaves nothing on the host. A waiter may thus win the lock on a
//! file that was removed meanwhile; it then checks that the path still names the file it
//! locked, and starts again if not.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::info;

use crate::{io_err, Error, Result};

/// How often a waiting installer tries the lock again.
const POLL: Duration = Duration::from_millis(100);

/// The held lock; dropping it removes the file and unlocks.
#[derive(Debug)]
pub struct NodeLock {
    // Held, never read; dropped (unlocked) only after `drop` below has removed the file.
    _file: Flock<File>,
    path: PathBuf,
}

impl NodeLock {
    /// Takes the lock at `path`, waiting (and saying so once) while another process holds it.
    pub async fn acquire(path: &Path) -> Result<NodeLock> {
        let mut waited = false;
        loop {
            match Self::try_acquire(path)? {
                Some(lock) => {
                    if waited {
                        info!(lock = %path.display(), "the other installer is done: going on");
                    }
                    return Ok(lock);
                }
                None if !waited => {
                    info!(
                        lock = %path.display(),
                        "another wasmpod-installer is installing or uninstalling on this node: waiting for it to finish"
                    );
                    waited = true;
                }
                None => {}
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Takes the lock if nobody holds it; `None` if somebody does.
    pub fn try_acquire(path: &Path) -> Result<Option<NodeLock>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        // Never through a link: the lock lives in a root-owned directory, and a link planted
        // there must not make the installer create or lock some other file.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err(path))?;
        Self::lock_opened(file, path)
    }

    /// Locks `file`, opened at `path` (perhaps a while ago).
    fn lock_opened(file: File, path: &Path) -> Result<Option<NodeLock>> {
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source: e.into(),
                })
            }
        };
        let held = file.metadata().map_err(io_err(path))?;
        let same = std::fs::symlink_metadata(path)
            .map(|m| m.dev() == held.dev() && m.ino() == held.ino())
            .unwrap_or(false);
        if !same {
            // The previous holder removed the file after this process opened it: this lock is
            // on a file nobody else will open again. Try the one that is there now (dropping
            // this Flock unlocks it; the file is not ours to remove).
            return Self::try_acquire(path);
        }
        Ok(Some(NodeLock {
            _file: file,
            path: path.to_path_buf(),
        }))
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        // Removed while still locked (the lock itself goes with `_file` right after), so
        // a waiter that wins it next sees the file gone and opens a new one.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_no_file_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.lock");
        let first = NodeLock::acquire(&path).await.unwrap();
        assert!(NodeLock::try_acquire(&path).unwrap().is_none());
        drop(first);
        assert!(!path.exists(), "the lock file goes with the lock");
        let again = NodeLock::try_acquire(&path).unwrap();
        assert!(again.is_some());
    }

    /// A waiter that opened the file before the holder removed it must not run beside a
    /// newcomer that created a fresh one.
    #[test]
    fn a_waiter_on_a_removed_file_does_not_run_beside_the_newcomer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.lock");
        let holder = NodeLock::try_acquire(&path).unwrap().unwrap();
        let waiters_file = File::open(&path).unwrap();
        drop(holder); // removes the file, then unlocks
        let newcomer = NodeLock::try_acquire(&path).unwrap().unwrap();
        // The waiter's old file is free to lock, but it is not the lock any more.
        let waiter = NodeLock::lock_opened(waiters_file, &path).unwrap();
        assert!(waiter.is_none(), "the waiter must wait for the newcomer");
        drop(newcomer);
        assert!(NodeLock::try_acquire(&path).unwrap().is_some());
    }
}
