//! What youki runs as the container's process once it is set up: the Wasm guest on the engine,
//! or the native command exactly as runc would (with the spec's environment).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor as Workload, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::Spec;

use crate::command::Kind;
use crate::guest;

#[derive(Clone)]
pub struct Executor {
    pub kind: Kind,
    /// A Wasm container's module, compiled by the shim.
    pub module: Option<Arc<Vec<u8>>>,
    /// The shim's pipe for OOM reports; close-on-exec, so a native command never has it.
    pub oom_report: Arc<OwnedFd>,
}

impl Workload for Executor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        match self.kind {
            Kind::Native => DefaultExecutor {}.exec(spec),
            Kind::Wasm => {
                std::process::exit(guest::run(spec, self.module.as_deref(), &self.oom_report))
            }
        }
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        match self.kind {
            Kind::Native => DefaultExecutor {}.validate(spec),
            // Checked by the shim before the container was created.
            Kind::Wasm => Ok(()),
        }
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        match self.kind {
            // A native process inherits the environment: it must be the spec's, not the
            // shim's.
            Kind::Native => DefaultExecutor {}.setup_envs(envs),
            // The guest gets the spec's environment from the engine; this process's own does
            // not reach it.
            Kind::Wasm => Ok(()),
        }
    }
}
