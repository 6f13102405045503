//! Telling containerd that a container was OOM-killed, so CRI reports the reason `OOMKilled`
//! as for runc: containerd-shimkit publishes exits but knows nothing of OOM kills.

use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::protos::topics::TASK_OOM_EVENT_TOPIC;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

/// The exit status of a Wasm container whose memory grow the engine denied at the cgroup's
/// limit: 137, what the kernel's OOM kill gives a native process.
pub const WASM_OOM_STATUS: i32 = 128 + libc::SIGKILL;

/// Whether a container that ended with `status` was OOM-killed: the kernel killed a process
/// in its memory cgroup, or the engine denied a Wasm guest's memory (a status of 137 that no
/// SIGKILL of ours explains).
pub fn was_oom_killed(status: u32, wasm: bool, sigkill_sent: bool, kernel_oom_kills: u64) -> bool {
    kernel_oom_kills > 0 || (wasm && !sigkill_sent && status == WASM_OOM_STATUS as u32)
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
        // The engine denied memory.
        assert!(was_oom_killed(137, true, false, 0));
        // Our SIGKILL (the kubelet's grace period ran out) is not an OOM kill.
        assert!(!was_oom_killed(137, true, true, 0));
        // A native process exiting 137 by itself is not one either.
        assert!(!was_oom_killed(137, false, false, 0));
        // The kernel's OOM killer counted a kill in the container's cgroup.
        assert!(was_oom_killed(137, false, true, 1));
        assert!(!was_oom_killed(0, true, false, 0));
    }
}
