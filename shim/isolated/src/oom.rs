//! Telling containerd that a container was OOM-killed, so CRI reports the reason `OOMKilled`
//! as for runc: containerd-shimkit publishes exits but knows nothing of OOM kills.

use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::protos::topics::TASK_OOM_EVENT_TOPIC;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

/// Whether a container was OOM-killed: the kernel killed a process in its memory cgroup, or
/// the engine denied a Wasm guest's memory and the container's process reported it. Its exit
/// status says nothing either way: a guest may `proc_exit(137)` by itself, a SIGKILL gives
/// 137 too.
pub fn was_oom_killed(kernel_oom_kills: u64, engine_denied: bool) -> bool {
    kernel_oom_kills > 0 || engine_denied
}

/// The container process's end of the report: one byte written when the engine denied the
/// guest's memory. The guest cannot reach it (a Wasm guest has no descriptors but its stdio
/// and preopens), so it cannot claim an OOM kill, nor make one of its own exit status.
pub fn report(pipe: &std::os::fd::OwnedFd) {
    let mut writer = std::fs::File::from(match pipe.try_clone() {
        Ok(fd) => fd,
        Err(_) => return,
    });
    let _ = std::io::Write::write_all(&mut writer, b"o");
}

/// Publishes a TaskOOM event for `container_id` to the containerd that started this shim.
pub fn publish(namespace: &str, container_id: &str) {
    let Ok(address) = std::env::var("TTRPC_ADDRESS") else {
        log::warn!("container {container_id} was OOM-killed; TTRPC_ADDRESS is unset, not reported");
        return;
    };
    let event = TaskOOM {
        container_id: container_id.to_string(),
        ..Default::default()
    };
    let sent = RemotePublisher::new(&address).and_then(|p| {
        p.publish(
            Context::default(),
            TASK_OOM_EVENT_TOPIC,
            namespace,
            Box::new(event),
        )
    });
    if let Err(e) = sent {
        log::warn!("container {container_id} was OOM-killed; reporting it failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_told_from_other_ends() {
        // The engine denied memory, and the container's process said so.
        assert!(was_oom_killed(0, true));
        // The kernel's OOM killer counted a kill in the container's cgroup.
        assert!(was_oom_killed(1, false));
        // A guest exiting 137 by itself, or our SIGKILL: neither says anything.
        assert!(!was_oom_killed(0, false));
    }
}
