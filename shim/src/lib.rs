//! wasmpod's pod host: containerd's task API for a whole pod in one process, on the engine
//! (`wasmpod-engine`) with modules found by `wasmpod-image` and `wasmpod-oci`.

pub mod error;
pub mod logger;
pub mod podhost;
