//! `containerd-shim-wasmtime-isolated-v1`: the isolated host (RuntimeClass `wasmtime-isolated`).
//!
//! runwasi's containerd-shimkit serves containerd's task API; every container, the sandbox
//! included, becomes its own process in its own cgroup through youki's libcontainer. A
//! container whose command is a WebAssembly module runs on wasmpod's engine inside that
//! process; a native executable (a sidecar, the pause container) is executed natively.

mod cgroup;
mod command;
mod container;
mod executor;
mod guest;
mod instance;
mod oom;

fn main() {
    containerd_shimkit::sandbox::cli::shim_main::<instance::Isolated>(
        instance::RUNTIME_NAME,
        containerd_shimkit::shim_version!(),
        None,
    );
}
