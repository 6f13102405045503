//! What both hosts read the same way from a container's OCI runtime spec (the bundle's
//! `config.json`): the process (command, environment, working directory, descriptor limit),
//! the image it came from, its memory limit. On one oci-spec version, so that the two hosts
//! cannot read a field differently.

use std::path::{Path, PathBuf};

pub use oci_spec::runtime::Spec;
use oci_spec::runtime::{LinuxResources, PosixRlimitType};

/// The annotation CRI sets to the image a container was created from.
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

#[derive(Debug, thiserror::Error)]
#[error("cannot read OCI spec {}", path.display())]
pub struct SpecError {
    path: PathBuf,
    #[source]
    source: oci_spec::OciSpecError,
}

/// The bundle's `config.json`.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|source| SpecError { path, source })
}

/// `process.args`: the command and its arguments.
pub fn args(spec: &Spec) -> &[String] {
    spec.process()
        .as_ref()
        .and_then(|p| p.args().as_deref())
        .unwrap_or_default()
}

/// `process.env` as pairs, split at the first `=` (a bare name has an empty value).
pub fn env(spec: &Spec) -> Vec<(String, String)> {
    spec.process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .into_iter()
        .flatten()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

/// `process.cwd`; `/` where the spec gives none or a relative one (the runtime spec requires
/// an absolute path, and runc starts in `/` without one).
pub fn cwd(spec: &Spec) -> PathBuf {
    spec.process()
        .as_ref()
        .map(|p| p.cwd().clone())
        .filter(|c| c.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The container's descriptor limit (`RLIMIT_NOFILE`, soft), when its spec sets one.
pub fn open_files(spec: &Spec) -> Option<u64> {
    spec.process()
        .as_ref()?
        .rlimits()
        .as_ref()?
        .iter()
        .find(|r| r.typ() == PosixRlimitType::RlimitNofile)
        .map(|r| r.soft())
}

/// Mount types that describe kernel filesystems rather than data a guest can read.
const KERNEL_MOUNTS: &[&str] = &[
    "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "tmpfs", "shm",
];

/// A directory the spec bind-mounts into the container (a volume, an image volume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The directory on the node.
    pub source: PathBuf,
    /// Where the container sees it.
    pub destination: PathBuf,
    pub read_only: bool,
}

/// The spec's bind mounts of directories, in the spec's order. File bind mounts
/// (`/etc/hosts`, the termination log) are left out: they are neither WASI preopens nor
/// places a module is looked up in.
pub fn bind_mounts(spec: &Spec) -> Vec<BindMount> {
    let mut out = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let typ = m.typ().as_deref().unwrap_or("bind");
        let options = m.options().as_deref().unwrap_or_default();
        let is_bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if !is_bind || KERNEL_MOUNTS.contains(&typ) {
            continue;
        }
        let Some(source) = m.source() else { continue };
        if !source.is_dir() {
            continue;
        }
        out.push(BindMount {
            source: source.clone(),
            destination: m.destination().clone(),
            read_only: options.iter().any(|o| o == "ro"),
        });
    }
    out
}

/// The image a CRI container was created from, as CRI annotated it.
pub fn image_name(spec: &Spec) -> Option<String> {
    spec.annotations()
        .as_ref()?
        .get(IMAGE_NAME)
        .filter(|n| !n.is_empty())
        .cloned()
}

/// `linux.resources.memory.limit` in bytes; zero or negative means none, as in cgroups.
pub fn memory_limit(spec: &Spec) -> Option<u64> {
    resources_memory_limit(spec.linux().as_ref()?.resources().as_ref()?)
}

/// The memory limit of a resources block (the spec's, or an UpdateTask's), as
/// [`memory_limit`].
pub fn resources_memory_limit(r: &LinuxResources) -> Option<u64> {
    r.memory()
        .as_ref()?
        .limit()
        .filter(|l| *l > 0)
        .map(|l| l as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_process_as_the_spec_gives_it() {
        let s = spec(
            r#"{"ociVersion": "1.0.2",
                "process": {"args": ["/app.wasm", "x"], "env": ["A=1=2", "B"], "cwd": "/srv",
                            "user": {"uid": 0, "gid": 0},
                            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024}]},
                "annotations": {"io.kubernetes.cri.image-name": "registry/app:1"},
                "linux": {"resources": {"memory": {"limit": 33554432}}}}"#,
        );
        assert_eq!(args(&s), ["/app.wasm", "x"]);
        assert_eq!(
            env(&s),
            vec![("A".into(), "1=2".into()), ("B".into(), String::new())]
        );
        assert_eq!(cwd(&s), Path::new("/srv"));
        assert_eq!(open_files(&s), Some(512));
        assert_eq!(image_name(&s).as_deref(), Some("registry/app:1"));
        assert_eq!(memory_limit(&s), Some(32 << 20));
    }

    #[test]
    fn what_the_spec_leaves_out() {
        let s =
            spec(r#"{"ociVersion": "1.0.2", "linux": {"resources": {"memory": {"limit": -1}}}}"#);
        assert!(args(&s).is_empty());
        assert!(env(&s).is_empty());
        assert_eq!(cwd(&s), Path::new("/"));
        assert_eq!(open_files(&s), None);
        assert_eq!(image_name(&s), None);
        assert_eq!(memory_limit(&s), None);
    }

    #[test]
    fn a_bundle_without_a_spec_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
    }
}
