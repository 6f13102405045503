//! The node's side of a pod, for real: its cgroup (`cgroup.rs`) and the containers' root
//! filesystems, mounted as containerd hands them over.

use std::path::Path;
use std::sync::{Arc, Mutex};

use containerd_shim::protos::types::mount::Mount;
use wasmpod_engine::ProcessMemory;

use crate::cgroup::{self, CgroupError, PodCgroup};
use crate::error::Error;
use crate::pod::Node;

#[derive(Default)]
pub struct Host {
    /// The pod's cgroup, once the shim has joined it.
    cgroup: Mutex<Option<PodCgroup>>,
}

impl Node for Host {
    fn join_cgroup(&self, path: &Path) -> Result<Option<Arc<ProcessMemory>>, CgroupError> {
        let c = cgroup::join(&path.to_string_lossy())?;
        let memory = c
            .memory_limits()
            .map(|limits| Arc::new(ProcessMemory::new(Box::new(limits))));
        *self.cgroup.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        Ok(memory)
    }

    fn leave_cgroup(&self) {
        if let Some(mut c) = self.cgroup.lock().unwrap_or_else(|e| e.into_inner()).take() {
            c.leave();
        }
    }

    fn mount_rootfs(&self, mounts: &[Mount], target: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(target).map_err(|source| Error::RootfsDir {
            path: target.to_path_buf(),
            source,
        })?;
        for m in mounts {
            containerd_shim::mount::mount_rootfs(
                Some(m.type_.as_str()).filter(|s| !s.is_empty()),
                Some(m.source.as_str()).filter(|s| !s.is_empty()),
                &m.options,
                target,
            )
            .map_err(|source| Error::Mount {
                path: target.to_path_buf(),
                source,
            })?;
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) {
        unmount(target)
    }
}

/// Unmounts a rootfs the shim mounted; one already gone is no error.
pub fn unmount(target: &Path) {
    if let Err(e) = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
            tracing::warn!("cannot unmount {}: {e}", target.display());
        }
    }
}
