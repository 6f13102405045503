//! `wasmpod-installer`: puts the wasmpod shim on a Kubernetes node, registers its runtime
//! handlers in containerd's configuration (the way each distribution keeps it), restarts
//! containerd only when something changed, verifies the handlers through the CRI and only then
//! labels the node `wasmpod.dev/wasmtime=ready`. It also renders the RuntimeClass objects.
//!
//! Host access goes through traits ([`restart::Restarter`], [`node::Nodes`],
//! [`verify::Verifier`]) so tests use doubles; everything that decides what to write is a pure
//! function on strings ([`config`]). Installer runs on one node take turns ([`lock`]).

use std::path::{Path, PathBuf};

pub mod config;
pub mod distro;
pub mod install;
pub mod lock;
pub mod manifests;
pub mod node;
pub mod restart;
pub mod runtimeclass;
pub mod shim;
pub mod verify;

/// The pod host's shim binary (handler `wasmtime`).
pub const SHIM_BINARY: &str = "containerd-shim-wasmtime-v1";
/// The isolated host's shim binary (handler `wasmtime-isolated`).
pub const ISOLATED_SHIM_BINARY: &str = "containerd-shim-wasmtime-isolated-v1";
/// Both shim binaries.
pub const SHIM_BINARIES: [&str; 2] = [SHIM_BINARY, ISOLATED_SHIM_BINARY];
/// containerd's `runtime_type` for the pod host.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmtime.v1";
/// containerd's `runtime_type` for the isolated host.
pub const RUNTIME_TYPE_ISOLATED: &str = "io.containerd.wasmtime-isolated.v1";
/// The in-process handler (the default RuntimeClass).
pub const HANDLER: &str = "wasmtime";
/// The process-per-container handler.
pub const HANDLER_ISOLATED: &str = "wasmtime-isolated";
/// Both handlers, in the order they are written.
pub const HANDLERS: [&str; 2] = [HANDLER, HANDLER_ISOLATED];
/// The handlers registered when none are named.
pub const DEFAULT_HANDLERS: [&str; 2] = HANDLERS;

/// The shim binary and containerd `runtime_type` a handler runs on.
pub fn runtime_of(handler: &str) -> (&'static str, &'static str) {
    if handler == HANDLER_ISOLATED {
        (ISOLATED_SHIM_BINARY, RUNTIME_TYPE_ISOLATED)
    } else {
        (SHIM_BINARY, RUNTIME_TYPE)
    }
}
/// The node label set once the handlers are verified.
pub const READY_LABEL_KEY: &str = "wasmpod.dev/wasmtime";
/// Its value.
pub const READY_LABEL_VALUE: &str = "ready";
/// Where the shim goes on the host unless `--bin-dir` says otherwise.
pub const DEFAULT_BIN_DIR: &str = "/opt/wasmpod/bin";
/// Where backups and the install record go on the host.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/wasmpod";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML, refusing to edit it (nothing was changed): {message}")]
    Toml { path: PathBuf, message: String },
    #[error(
        "{path}: containerd config version {version} is not supported (nothing was changed); \
         wasmpod understands versions {}. Migrate the file with `containerd config migrate`, \
         or add the runtime by hand (deploy/containerd/ has snippets)",
        crate::config::KNOWN_VERSIONS
    )]
    UnknownVersion { path: PathBuf, version: String },
    #[error(
        "cannot tell which containerd config version to write for {path} (the file does not \
         exist and containerd's CRI did not answer): pass --config-version 2 (containerd 1.x) \
         or 3 (containerd 2.x)"
    )]
    VersionUnknown { path: PathBuf },
    #[error(
        "{os} is an immutable host: a DaemonSet cannot install a containerd shim on it \
         (nothing was changed). {guidance}"
    )]
    ImmutableHost { os: String, guidance: String },
    #[error(
        "{path} is read-only on this host (nothing was changed): {source}. Choose a writable \
         directory with --bin-dir (and the chart's installer.binDir), or configure the node \
         image itself"
    )]
    ReadOnly {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "backup {backup} differs from {path}, and {path} does not carry wasmpod's runtimes: \
         the config was changed since the backup was taken. Refusing to overwrite the backup \
         (nothing was changed); inspect both and remove the backup if {path} is the new original"
    )]
    BackupDiffers { backup: PathBuf, path: PathBuf },
    #[error(
        "{path}: k3s/RKE2 registered its own `wasmtime` handler (it found a \
         containerd-shim-wasmtime-v1 at {binary}); its runtime_type {runtime_type} makes \
         containerd start {runs}, not wasmpod's shim, and wasmpod will not collide with it \
         (nothing was changed). Remove {binary} and restart k3s/RKE2 so that it drops its \
         handler (wasmpod's shim lives in its own directory, where k3s does not look), or \
         leave wasmpod's `wasmtime` handler out (--handlers wasmtime-isolated; the chart's \
         runtimeClasses.wasmtime.enabled=false)"
    )]
    K3sHandlerConflict {
        path: PathBuf,
        binary: String,
        runtime_type: String,
        runs: String,
    },
    #[error(
        "{path}: the runtime handler `{handler}` ([{table}], {found}) is another project's, and \
         wasmpod does not overwrite it (nothing was changed). {hint}"
    )]
    HandlerTaken {
        path: PathBuf,
        handler: String,
        table: String,
        found: String,
        hint: String,
    },
    #[error("{path}: {reason} (nothing was changed)")]
    UnsupportedTemplate { path: PathBuf, reason: String },
    #[error("the shim to install was not found at {path}; pass {flag} (nothing was changed)")]
    ShimMissing { path: PathBuf, flag: &'static str },
    #[error(
        "none of the units {units:?} is active, so wasmpod cannot tell which one runs \
         containerd on this node, and restarting the wrong one would start it (a server on an \
         agent node) (nothing was changed). Check `systemctl status {}`; install with \
         --no-restart and restart the right unit yourself if this node runs it otherwise",
        units.join(" ")
    )]
    NoActiveUnit { units: Vec<String> },
    #[error(
        "the units {units:?} are all active, so wasmpod cannot tell which one runs this node's \
         containerd (nothing was changed). They conflict with each other: stop and disable the \
         one this node is not, or install with --no-restart and restart the right one yourself"
    )]
    SeveralActiveUnits { units: Vec<String> },
    #[error("restarting containerd with `{command}` failed: {message}")]
    Restart { command: String, message: String },
    #[error("containerd's CRI at {address}: {message}")]
    Cri { address: String, message: String },
    #[error("the runtime handler(s) {missing:?} are not registered in containerd at {address} (it has {present:?})")]
    HandlerMissing {
        address: String,
        missing: Vec<String>,
        present: Vec<String>,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{context}: {source}")]
    Yaml {
        context: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the path to an IO error.
pub(crate) fn io_err(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.as_ref().to_path_buf();
    move |source| Error::Io { path, source }
}

/// `host_root` joined with an absolute host path.
pub fn host_path(host_root: &Path, path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    host_root.join(path.strip_prefix("/").unwrap_or(path))
}
