//! wasmpod's pod host, `containerd-shim-wasmtime-v1`: containerd's task API for a whole pod in
//! one process, every container an async task on one engine (`wasmpod-engine`), with modules
//! found by `wasmpod-image` and `wasmpod-oci`.
//!
//! containerd starts the binary with `start` for each container; containers of the same pod
//! (same `io.kubernetes.cri.sandbox-id`) get the address of the process that already serves the
//! pod, so the pod costs one process no matter how many containers it has.
//!
//! `shim.rs` is the daemon containerd starts; `task.rs` translates containerd's task calls to
//! the pod's state machine (`pod.rs`), which reaches the node, containerd's events and the
//! guests through the traits in `pod/outside.rs` (for real: `node.rs`, `events.rs`, `guest.rs`).

mod cgroup;
mod error;
mod events;
mod guest;
mod logger;
mod module;
mod node;
mod pod;
mod shim;
mod spec;
mod stdio;
mod task;
mod traces;

pub use shim::{PodShim, RUNTIME_TYPE};
pub use task::TaskService;
