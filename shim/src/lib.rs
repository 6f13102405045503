//! wasmpod's containerd shim: the engine (wasmtime, knows nothing of containerd) and the pod
//! host (containerd's task API, one process per pod).

pub mod engine;
pub mod error;
pub mod logger;
pub mod podhost;
