//! wasmpod's containerd shim: the engine (wasmtime, knows nothing of containerd), image
//! handling (where a container's module comes from) and the pod host (containerd's task API,
//! one process per pod).

pub use wasmpod_engine as engine;
pub mod error;
pub use wasmpod_image as image;
pub mod logger;
pub mod podhost;
