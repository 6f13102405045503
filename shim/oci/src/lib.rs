//! What both wasmpod hosts read from a container's bundle and image, in one version so the
//! two cannot drift: files the image names (the command, the module), the spec's process,
//! image and memory limit ([`spec`]), and the systemd form of the cgroups path ([`cgroup`]).
//!
//! Images are untrusted and the shims run as root in the node's mount namespace, where the
//! container's root is only a directory. A path the image gives is therefore resolved here
//! the way the kernel resolves it inside the container: symbolic links are followed within
//! the root (an absolute target means the image's root, `..` stops at it), so no link leads
//! to the node's files. What is read must be a regular file (a FIFO would block the shim, a
//! device such as `/dev/zero` never ends) and is bounded in size before it is read.

pub mod cgroup;
pub mod pin;
pub mod spec;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Symbolic links followed before giving up, as the kernel's limit.
pub const MAX_LINKS: usize = 40;

/// The largest module a shim reads unless `WASMPOD_MODULE_MAX_BYTES` says otherwise. Real
/// modules are far smaller (CPython for WASI is 26 MB); this only keeps a hostile image from
/// making the shim allocate without end.
pub const DEFAULT_MODULE_MAX_BYTES: u64 = 256 << 20;
/// The environment variable (of the shim, inherited from containerd) that sets the bound.
pub const MODULE_MAX_BYTES_ENV: &str = "WASMPOD_MODULE_MAX_BYTES";

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{path} does not exist in the image")]
    NotFound { path: String },
    #[error("{path} has more than {MAX_LINKS} levels of symbolic links")]
    TooManyLinks { path: String },
    #[error("{path} is not a regular file (it is {kind})")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path} is {size} bytes, more than {bound}")]
    TooLarge {
        path: String,
        size: u64,
        bound: SizeBound,
    },
    #[error("cannot read {path} in the image: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How many bytes the shim reads for a container, and why that many (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeBound {
    pub bytes: u64,
    pub reason: &'static str,
}

impl fmt::Display for SizeBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} bytes {}", self.bytes, self.reason)
    }
}

impl SizeBound {
    /// The bound on a container's module (a file or an artifact layer): the node's maximum,
    /// and the container's memory limit when it has one, since the shim holds the module
    /// (and its compiled code) in the pod's cgroup on the container's behalf.
    pub fn for_module(memory_limit: Option<u64>) -> SizeBound {
        let configured = std::env::var(MODULE_MAX_BYTES_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|v| *v > 0);
        let node = SizeBound {
            bytes: configured.unwrap_or(DEFAULT_MODULE_MAX_BYTES),
            reason: if configured.is_some() {
                "WASMPOD_MODULE_MAX_BYTES allows"
            } else {
                "a module may have (WASMPOD_MODULE_MAX_BYTES)"
            },
        };
        match memory_limit {
            Some(limit) if limit < node.bytes => SizeBound {
                bytes: limit,
                reason: "of the container's memory limit",
            },
            _ => node,
        }
    }

    /// Refuses a size above the bound, before anything is read or allocated.
    pub fn check(&self, path: &str, size: u64) -> Result<(), LookupError> {
        if size > self.bytes {
            return Err(LookupError::TooLarge {
                path: path.to_string(),
                size,
                bound: *self,
            });
        }
        Ok(())
    }
}

/// A container's files as the node holds them: its root filesystem, and the directories
/// mounted into it (volumes, image volumes), each at its destination. A path of the container
/// is looked up the way the kernel would in the container: inside a mount from its
/// destination on, links included, so a module on a volume runs as it would from the image.
#[derive(Debug, Clone)]
pub struct Tree {
    root: PathBuf,
    /// (destination in the container, directory on the node), deepest destination first.
    mounts: Vec<(PathBuf, PathBuf)>,
}

impl Tree {
    /// The root filesystem alone.
    pub fn new(root: &Path) -> Tree {
        Tree {
            root: root.to_path_buf(),
            mounts: Vec::new(),
        }
    }

    /// The root filesystem with the directories the spec bind-mounts into it (the sources
    /// are containerd's and the kubelet's, not the image's).
    pub fn of_container(spec: &spec::Spec, root: &Path) -> Tree {
        let mut mounts: Vec<(PathBuf, PathBuf)> = spec::bind_mounts(spec)
            .into_iter()
            .filter(|m| m.destination != Path::new("/"))
            .map(|m| (m.destination, m.source))
            .collect();
        mounts.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        Tree {
            root: root.to_path_buf(),
            mounts,
        }
    }

    /// Where the resolved container path `in_container` is on the node.
    fn on_node(&self, in_container: &Path) -> PathBuf {
        for (destination, source) in &self.mounts {
            if let Ok(rest) = in_container.strip_prefix(destination) {
                return source.join(rest);
            }
        }
        on_node(&self.root, in_container)
    }

    /// `path` (as the container sees it) on the node, see [`within`].
    pub fn within(&self, path: &Path) -> Result<PathBuf, LookupError> {
        resolve(self, path)
    }

    /// Opens the regular file `path` names in the container, see [`open_regular`].
    pub fn open_regular(&self, path: &Path) -> Result<(File, u64), LookupError> {
        open_resolved(&path.display().to_string(), self.within(path)?)
    }

    /// The regular file `path` names in the container, read whole within `bound`.
    pub fn read_regular(&self, path: &Path, bound: &SizeBound) -> Result<Vec<u8>, LookupError> {
        let (file, size) = self.open_regular(path)?;
        read_bounded(file, size, &path.display().to_string(), bound)
    }
}

/// `path` (as the container sees it; relative paths start at `/`) as a path under `root` on
/// the node, with every symbolic link resolved inside `root`: an image's `/bin/sh ->
/// /bin/busybox` leads to the image's busybox, `/h -> /` to the image's root, and
/// `../../etc/passwd` to the image's `/etc/passwd`, never to the node's.
pub fn within(root: &Path, path: &Path) -> Result<PathBuf, LookupError> {
    resolve(&Tree::new(root), path)
}

fn resolve(tree: &Tree, path: &Path) -> Result<PathBuf, LookupError> {
    let shown = || path.display().to_string();
    let mut resolved = PathBuf::from("/");
    let mut pending: Vec<PathBuf> = parts(path);
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.components().next() {
            None | Some(Component::CurDir) => {}
            Some(Component::RootDir) => resolved = PathBuf::from("/"),
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            Some(Component::Normal(name)) => {
                let candidate = resolved.join(name);
                match std::fs::read_link(tree.on_node(&candidate)) {
                    Ok(target) => {
                        links += 1;
                        if links > MAX_LINKS {
                            return Err(LookupError::TooManyLinks { path: shown() });
                        }
                        pending.extend(parts(&target));
                    }
                    // Not a link (or not there: the open that follows says so).
                    Err(_) => resolved = candidate,
                }
            }
            Some(Component::Prefix(_)) => return Err(LookupError::NotFound { path: shown() }),
        }
    }
    Ok(tree.on_node(&resolved))
}

/// A path's components, last first, so that popping walks them in order.
fn parts(path: &Path) -> Vec<PathBuf> {
    path.components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect()
}

fn on_node(root: &Path, in_root: &Path) -> PathBuf {
    root.join(in_root.strip_prefix("/").unwrap_or(in_root))
}

/// Opens the regular file `path` names inside `root` (see [`within`]) and returns it with its
/// size. The open never blocks (a FIFO) and never follows a link (the path is resolved
/// already; a link there now was put in after the lookup).
pub fn open_regular(root: &Path, path: &Path) -> Result<(File, u64), LookupError> {
    Tree::new(root).open_regular(path)
}

fn open_resolved(shown: &str, on_node: PathBuf) -> Result<(File, u64), LookupError> {
    let shown = shown.to_string();
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&on_node)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => LookupError::NotFound {
                path: shown.clone(),
            },
            Some(libc::ELOOP) => LookupError::NotRegular {
                path: shown.clone(),
                kind: "a symbolic link",
            },
            _ => LookupError::Io {
                path: shown.clone(),
                source: e,
            },
        })?;
    let meta = file.metadata().map_err(|e| LookupError::Io {
        path: shown.clone(),
        source: e,
    })?;
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok((file, meta.len()));
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(LookupError::NotRegular { path: shown, kind })
}

/// Reads all of an opened regular file of `size` bytes, refused before reading when larger
/// than `bound`; a file that grows meanwhile is cut off at the bound and refused too.
pub fn read_bounded(
    file: File,
    size: u64,
    path: &str,
    bound: &SizeBound,
) -> Result<Vec<u8>, LookupError> {
    bound.check(path, size)?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(bound.bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| LookupError::Io {
            path: path.to_string(),
            source: e,
        })?;
    bound.check(path, bytes.len() as u64)?;
    Ok(bytes)
}

/// The regular file `path` names inside `root`, read whole within `bound`.
pub fn read_regular(root: &Path, path: &Path, bound: &SizeBound) -> Result<Vec<u8>, LookupError> {
    Tree::new(root).read_regular(path, bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const BIG: SizeBound = SizeBound {
        bytes: 1 << 20,
        reason: "for the test",
    };

    /// An image root with the links a hostile image would carry, next to a "node" file
    /// outside it.
    fn image() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node-secret.wasm");
        std::fs::write(&node, b"\0asm\x01\0\0\0 of the node").unwrap();
        let root = dir.path().join("rootfs");
        for d in ["bin", "app", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("bin/busybox"), b"\x7fELF....").unwrap();
        symlink("/bin/busybox", root.join("bin/sh")).unwrap();
        std::fs::write(root.join("app/hello.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(root.join("etc/hostname"), b"image\n").unwrap();
        symlink("../../../../etc/hostname", root.join("app/escape")).unwrap();
        symlink("/", root.join("h")).unwrap();
        symlink(&node, root.join("app/node.wasm")).unwrap();
        symlink("/dev/zero", root.join("app/zero.wasm")).unwrap();
        symlink("loop", root.join("app/loop")).unwrap();
        (dir, root)
    }

    fn with_mounts(mounts: &[(&Path, &str)]) -> spec::Spec {
        let mounts: Vec<String> = mounts
            .iter()
            .map(|(source, destination)| {
                format!(
                    r#"{{"destination": "{destination}", "type": "bind", "source": "{}",
                        "options": ["rbind", "ro"]}}"#,
                    source.display()
                )
            })
            .collect();
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "mounts": [{}]}}"#,
            mounts.join(",")
        ))
        .unwrap()
    }

    #[test]
    fn a_path_on_a_volume_is_looked_up_in_the_volume() {
        let (d, r) = image();
        let volume = d.path().join("volume");
        let inner = d.path().join("inner");
        std::fs::create_dir_all(volume.join("bin")).unwrap();
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::write(volume.join("bin/tool.wasm"), b"\0asm\x01\0\0\0 tool").unwrap();
        std::fs::write(inner.join("deep.wasm"), b"\0asm\x01\0\0\0 deep").unwrap();
        // Links on the volume mean paths of the container, as the kernel would have them.
        symlink("/app/hello.wasm", volume.join("image.wasm")).unwrap();
        symlink("/", volume.join("root")).unwrap();
        let spec = with_mounts(&[(&volume, "/tools"), (&inner, "/tools/bin/inner")]);
        let tree = Tree::of_container(&spec, &r);
        assert_eq!(
            tree.within(Path::new("/tools/bin/tool.wasm")).unwrap(),
            volume.join("bin/tool.wasm")
        );
        assert_eq!(
            tree.within(Path::new("/tools/bin/inner/deep.wasm"))
                .unwrap(),
            inner.join("deep.wasm"),
            "the deepest mount holds its destination"
        );
        assert_eq!(
            tree.within(Path::new("/tools/image.wasm")).unwrap(),
            r.join("app/hello.wasm")
        );
        assert_eq!(
            tree.within(Path::new("/tools/../app/hello.wasm")).unwrap(),
            r.join("app/hello.wasm")
        );
        assert_eq!(
            tree.within(Path::new("/tools/root/tools/root/etc/hostname"))
                .unwrap(),
            r.join("etc/hostname")
        );
        let bytes = tree
            .read_regular(Path::new("/tools/bin/tool.wasm"), &BIG)
            .unwrap();
        assert!(bytes.ends_with(b"tool"));
        // Without the mounts the path is the image's, where there is nothing.
        assert!(matches!(
            Tree::new(&r).open_regular(Path::new("/tools/bin/tool.wasm")),
            Err(LookupError::NotFound { .. })
        ));
    }

    #[test]
    fn links_stay_inside_the_image() {
        let (_d, r) = image();
        assert_eq!(
            within(&r, Path::new("/bin/sh")).unwrap(),
            r.join("bin/busybox")
        );
        // ../ above the image's root stays at its root, as in the container.
        assert_eq!(
            within(&r, Path::new("/app/escape")).unwrap(),
            r.join("etc/hostname")
        );
        assert_eq!(
            within(&r, Path::new("/../../app/hello.wasm")).unwrap(),
            r.join("app/hello.wasm")
        );
        // A directory link to / is the image's root.
        assert_eq!(
            within(&r, Path::new("/h/h/etc/hostname")).unwrap(),
            r.join("etc/hostname")
        );
        // An absolute link to a node file means that path in the image.
        let node = within(&r, Path::new("/app/node.wasm")).unwrap();
        assert!(node.starts_with(&r), "{}", node.display());
        assert!(matches!(
            within(&r, Path::new("/app/loop")),
            Err(LookupError::TooManyLinks { .. })
        ));
    }

    #[test]
    fn only_regular_files_of_the_image_are_read() {
        let (_d, r) = image();
        let read = |p: &str| read_regular(&r, Path::new(p), &BIG);
        assert_eq!(read("/app/hello.wasm").unwrap(), b"\0asm\x01\0\0\0");
        assert_eq!(read("/h/etc/hostname").unwrap(), b"image\n");
        // The node's module and /dev/zero are not in the image.
        for p in [
            "/app/node.wasm",
            "/app/zero.wasm",
            "/missing",
            "/etc/hostname/x",
        ] {
            let e = read(p).unwrap_err();
            assert!(matches!(e, LookupError::NotFound { .. }), "{p}: {e}");
            assert_eq!(e.to_string(), format!("{p} does not exist in the image"));
        }
        let e = read("/app").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/app is not a regular file (it is a directory)"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let (_d, r) = image();
        let fifo = r.join("app/fifo.wasm");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // No writer ever comes: a blocking open would hang the test.
        let e = read_regular(&r, Path::new("/app/fifo.wasm"), &BIG).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/app/fifo.wasm is not a regular file (it is a FIFO)"
        );
    }

    #[test]
    fn a_file_above_the_bound_is_refused_before_it_is_read() {
        let (_d, r) = image();
        let f = File::create(r.join("app/huge.wasm")).unwrap();
        // Sparse: 10 GB that take no disk, and would take 10 GB of memory to read.
        f.set_len(10 << 30).unwrap();
        let e = read_regular(&r, Path::new("/app/huge.wasm"), &BIG).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/app/huge.wasm is 10737418240 bytes, more than the 1048576 bytes for the test"
        );
    }

    #[test]
    fn the_bound_is_the_smaller_of_the_node_maximum_and_the_memory_limit() {
        let b = SizeBound::for_module(Some(32 << 20));
        assert_eq!(b.bytes, 32 << 20);
        assert_eq!(
            b.to_string(),
            "the 33554432 bytes of the container's memory limit"
        );
        assert_eq!(
            SizeBound::for_module(Some(1 << 40)).bytes,
            DEFAULT_MODULE_MAX_BYTES
        );
        assert_eq!(SizeBound::for_module(None).bytes, DEFAULT_MODULE_MAX_BYTES);
    }
}
