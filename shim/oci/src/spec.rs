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

/// `PATH` when the spec's environment has none, as runc and execvp assume.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the container's command (`process.args[0]`) may be, as both hosts look it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command as the spec writes it, for messages.
    pub name: String,
    /// The files it may be, in order, as container paths: a name with a `/` is that one path
    /// (from the working directory); a bare name is each `PATH` directory's entry, as execvp
    /// looks, then the working directory's, where Wasm images often keep their module.
    pub candidates: Vec<PathBuf>,
    /// Whether the name has a `/` (then anything at that path but a regular file is an
    /// error, not "no such command").
    pub by_path: bool,
}

impl Command {
    /// Whether `candidate` is one execvp would find (the working directory is not).
    pub fn on_path(&self, index: usize) -> bool {
        self.by_path || index + 1 < self.candidates.len()
    }
}

/// The container's command, or None when `process.args` is empty.
pub fn command(spec: &Spec) -> Option<Command> {
    let name = args(spec).first().filter(|a| !a.is_empty())?.clone();
    let cwd = cwd(spec);
    if name.contains('/') {
        return Some(Command {
            candidates: vec![cwd.join(&name)],
            name,
            by_path: true,
        });
    }
    let env = env(spec);
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let candidates = path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new("/").join(d).join(&name))
        .chain([cwd.join(&name)])
        .collect();
    Some(Command {
        name,
        candidates,
        by_path: false,
    })
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
    fn a_command_is_looked_up_as_execvp_does_then_in_the_working_directory() {
        let s = spec(
            r#"{"ociVersion": "1.0.2",
                "process": {"args": ["app.wasm"], "env": ["PATH=/bin:/opt/tools"],
                            "cwd": "/srv", "user": {"uid": 0, "gid": 0}}}"#,
        );
        let c = command(&s).unwrap();
        assert_eq!(c.name, "app.wasm");
        let paths: Vec<&str> = c.candidates.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            paths,
            ["/bin/app.wasm", "/opt/tools/app.wasm", "/srv/app.wasm"]
        );
        assert!(
            c.on_path(1) && !c.on_path(2),
            "the working directory is not PATH"
        );
        let s = spec(
            r#"{"ociVersion": "1.0.2",
                "process": {"args": ["bin/app.wasm"], "cwd": "/srv", "user": {"uid": 0, "gid": 0}}}"#,
        );
        let c = command(&s).unwrap();
        assert_eq!(
            (c.candidates, c.by_path),
            (vec![PathBuf::from("/srv/bin/app.wasm")], true)
        );
        let s = spec(
            r#"{"ociVersion": "1.0.2", "process": {"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}}"#,
        );
        assert_eq!(command(&s), None);
        let s = spec(
            r#"{"ociVersion": "1.0.2", "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}}"#,
        );
        assert_eq!(
            command(&s).unwrap().candidates[0],
            Path::new("/usr/local/sbin/sh")
        );
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
