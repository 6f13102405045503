//! Whose file access a guest has. The pod host runs every guest of a pod in one process, as
//! root, so the container's user (`process.user` of its spec: `runAsUser`, `runAsGroup`,
//! supplementary groups) cannot be the process's. Linux checks file access against the
//! calling *thread's* filesystem uid and gid and its supplementary groups, and a thread whose
//! filesystem uid is not 0 has no filesystem capabilities (`CAP_DAC_OVERRIDE` and the
//! rest): so while a guest runs on a thread, the thread takes the guest's identity, and gives
//! it back before anything else runs there. Its WASI file operations run on that same thread
//! (`allow_blocking_current_thread`), not on a pool thread that would still be root's.

/// A container's user and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (`process.user.additionalGids`).
    pub groups: Vec<u32>,
}

impl Identity {
    /// Root's identity needs no change: the shim's own file access is root's.
    pub fn is_root(&self) -> bool {
        self.uid == 0 && self.gid == 0
    }
}

/// The calling thread checks file access as an identity until this is dropped.
pub(crate) struct AsIdentity {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

/// The thread's supplementary groups (the raw system call: glibc's would ask every thread).
fn thread_groups() -> std::io::Result<Vec<libc::gid_t>> {
    // SAFETY: with size 0 the call only counts; then it fills at most `n` entries.
    let n = unsafe { libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut groups = vec![0 as libc::gid_t; n as usize];
    // SAFETY: `groups` holds `n` entries.
    let n = unsafe { libc::syscall(libc::SYS_getgroups, n, groups.as_mut_ptr()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    groups.truncate(n as usize);
    Ok(groups)
}

/// Sets the calling thread's supplementary groups only (glibc's `setgroups` sets every
/// thread's).
fn set_thread_groups(groups: &[libc::gid_t]) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe `groups`.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `setfsuid`/`setfsgid` return the previous value and cannot report failure; asking again
/// with an impossible id tells whether the change took.
fn set_fsuid(uid: u32) -> std::io::Result<u32> {
    // SAFETY: plain system calls on the calling thread.
    let prev = unsafe { libc::setfsuid(uid) } as u32;
    let now = unsafe { libc::setfsuid(u32::MAX) } as u32;
    if now != uid {
        return Err(std::io::Error::other(format!(
            "cannot take file system uid {uid}"
        )));
    }
    Ok(prev)
}

fn set_fsgid(gid: u32) -> std::io::Result<u32> {
    // SAFETY: plain system calls on the calling thread.
    let prev = unsafe { libc::setfsgid(gid) } as u32;
    let now = unsafe { libc::setfsgid(u32::MAX) } as u32;
    if now != gid {
        return Err(std::io::Error::other(format!(
            "cannot take file system gid {gid}"
        )));
    }
    Ok(prev)
}

impl AsIdentity {
    /// Takes `identity` on the calling thread. Failing to is the guest's failure: it must not
    /// run with root's access instead.
    pub(crate) fn enter(identity: &Identity) -> std::io::Result<AsIdentity> {
        let groups = thread_groups()?;
        set_thread_groups(&identity.groups)?;
        let gid = match set_fsgid(identity.gid) {
            Ok(prev) => prev,
            Err(e) => {
                let _ = set_thread_groups(&groups);
                return Err(e);
            }
        };
        let uid = match set_fsuid(identity.uid) {
            Ok(prev) => prev,
            Err(e) => {
                let _ = set_fsgid(gid);
                let _ = set_thread_groups(&groups);
                return Err(e);
            }
        };
        Ok(AsIdentity { uid, gid, groups })
    }
}

impl Drop for AsIdentity {
    fn drop(&mut self) {
        // The uid first: back to 0, the thread has its capabilities again, which setting
        // the groups needs. A thread that cannot return to root's identity must not run
        // anything else.
        let restored = set_fsuid(self.uid)
            .and_then(|_| set_fsgid(self.gid))
            .and_then(|_| set_thread_groups(&self.groups));
        if let Err(e) = restored {
            tracing::error!("cannot give a guest thread back its identity: {e}; aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only root can change identities; elsewhere this test has nothing to show.
    fn root() -> bool {
        // SAFETY: a plain query.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_thread_takes_the_identity_and_gives_it_back() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::thread::spawn(move || {
            let before = thread_groups().unwrap();
            {
                let _as = AsIdentity::enter(&Identity {
                    uid: 65534,
                    gid: 65534,
                    groups: vec![],
                })
                .unwrap();
                let e = std::fs::read(&secret).unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
            }
            assert_eq!(std::fs::read(&secret).unwrap(), b"root only");
            assert_eq!(thread_groups().unwrap(), before);
        })
        .join()
        .unwrap();
    }
}
